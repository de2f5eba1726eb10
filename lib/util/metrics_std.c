/*
 * metrics_std - the standard families (see metrics_std.h for who feeds each).
 */
#include "util/metrics_std.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "postbox.h"
#include "util/mem.h"

/* Request latencies, seconds: 1 ms to 30 s (a Push waits up to push_wait_ms). */
static const double latency_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                        0.25,  0.5,    1,     2.5,  5,     10,   30};
/* Store commits, seconds: 0.1 ms (no fsync) to 2.5 s (a disk in trouble). */
static const double commit_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                       0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5};
/* Writes per group commit: powers of two up to the largest default batch and beyond. */
static const double batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};

/* Submission to acknowledgement, seconds: a Push round trip (10 ms) to a peer queued for
 * a day. */
static const double delivery_bounds[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5,  1,     2.5,   5,
                                         10,   30,    60,   300, 900,  3600, 14400, 43200, 86400};

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* ---- process_* (Linux) ------------------------------------------------------------------ */

/* Open descriptors: the entries of /proc/self/fd but the directory's own. -1 if unknown. */
static double open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return (double)(n - 1);
}

/* Resident set size from /proc/self/statm (pages), bytes; -1 if unknown. */
static double resident_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long size = 0, rss = 0;
    int got = f ? fscanf(f, "%llu %llu", &size, &rss) : 0;
    if (f) fclose(f);
    return got == 2 ? (double)rss * (double)sysconf(_SC_PAGESIZE) : -1;
}

/* When this process started, Unix seconds: its start in clock ticks after boot
 * (/proc/self/stat field 22) plus the boot time (/proc/stat btime). 0 if unknown. */
static double process_start(void)
{
    char buf[2048];
    unsigned long long start = 0, btime = 0;
    FILE *f = fopen("/proc/self/stat", "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (!p) return 0;
    p++;
    for (int field = 3; field < 22 && p; field++) /* p: the space before field 22 */
        p = strchr(p + 1, ' ');
    if (!p || sscanf(p, " %llu", &start) != 1) return 0;
    f = fopen("/proc/stat", "r");
    if (!f) return 0;
    char line[256];
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "btime %llu", &btime) == 1) break;
    fclose(f);
    long hz = sysconf(_SC_CLK_TCK);
    return btime && hz > 0 ? (double)btime + (double)start / (double)hz : 0;
}

static void process_hook(void *ctx)
{
    const pb_metrics_std *s = ctx;
    double fds = open_fds(), rss = resident_bytes();
    if (fds >= 0) pb_gauge_set(pb_metric_series(s->process_open_fds, NULL), fds);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        pb_gauge_set(pb_metric_series(s->process_max_fds, NULL),
                     rl.rlim_cur == RLIM_INFINITY ? 1e308 : (double)rl.rlim_cur);
    if (rss >= 0) pb_gauge_set(pb_metric_series(s->process_resident_memory, NULL), rss);
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        pb_counter_set_sampled(pb_metric_series(s->process_cpu_seconds, NULL),
                               (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
                                   ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) /
                                       1e6);
}

pb_metrics_std *pb_metrics_std_new(pb_metrics *reg)
{
    pb_metrics_std *s = pb_xcalloc(1, sizeof *s);
    s->reg = reg;

    s->events_submitted =
        pb_metrics_counter(reg, "postbox_events_submitted_total",
                           "Events accepted by POST /v1/outbox and queued for a peer", NULL);
    s->submissions_duplicate = pb_metrics_counter(
        reg, "postbox_submissions_duplicate_total",
        "Submissions repeating an earlier submission_id (nothing new queued)", NULL);

    s->events_expired = pb_metrics_counter(
        reg, "postbox_events_expired_total",
        "Queued events deleted unsent because they were older than max_queue_age", NULL);
    s->events_dropped = pb_metrics_counter(
        reg, "postbox_events_dropped_total",
        "Queued events deleted unsent by an operator's drop of a peer's queue", NULL);

    s->server_duration = pb_metrics_histogram(
        reg, "postbox_hrpc_server_request_duration_seconds",
        "Federation requests from headers received to answer sent, by hRPC method", "method",
        latency_bounds, N(latency_bounds));
    s->server_requests = pb_metrics_counter(
        reg, "postbox_hrpc_server_requests_total",
        "Federation requests answered, by hRPC method and HTTP status", "method,code");
    s->auth_refusals = pb_metrics_counter(reg, "postbox_auth_refusals_total",
                                          "Requests refused by token authentication, by hRPC "
                                          "error identifier",
                                          "identifier");
    s->connections_refused = pb_metrics_counter(
        reg, "postbox_connections_refused_total",
        "Federation connections closed on arrival, by reason: limit (max_connections "
        "reached), per_address (the client's address holds max_connections_per_ip)",
        "reason");
    s->tls_handshakes = pb_metrics_counter(
        reg, "postbox_tls_handshakes_total",
        "TLS handshakes completed on the federation listener (counted at a connection's "
        "first request), by kind: full, or resumed (a session ticket from an earlier "
        "connection: no certificate, no key exchange signature)",
        "kind");
    s->requests_refused = pb_metrics_counter(
        reg, "postbox_requests_refused_total",
        "Federation requests refused 503 for want of a request slot or of body memory, by "
        "reason: inflight, suspended, body_memory (max_inflight, max_suspended, body_memory "
        "reached), or the same with _per_address (the client's address holds its share: "
        "max_inflight_per_ip, max_suspended_per_ip, body_memory_per_ip)",
        "reason");

    s->events_pushed = pb_metrics_counter(
        reg, "postbox_events_pushed_total",
        "Push attempts of one event, by outcome: ok (delivered), retried (failed, retried "
        "soon), queued (failed, the peer is queued), parked (refused for good)",
        "result");
    s->receive_refused = pb_metrics_counter(
        reg, "postbox_receive_budget_refusals_total",
        "Pushes refused (429) by a receive budget, by scope: sender (the server ID's), key "
        "(every ID signed with one key shares recv_budget_key_factor budgets), address (the "
        "client address's recv_budget_address_factor budgets)",
        "scope");
    s->new_peers_refused = pb_metrics_counter(
        reg, "postbox_new_peers_refused_total",
        "Requests refused (429) from a new server ID because its key (new_peers_per_key) or "
        "its client address (new_peers_per_address) added its peers for this hour",
        "scope");
    s->peers_forgotten = pb_metrics_counter(
        reg, "postbox_peers_forgotten_total",
        "Peer records freed from the delivery engine after peer_idle_forget seconds without "
        "contact, queue or work (the store keeps their row)",
        NULL);
    s->events_received = pb_metrics_counter(
        reg, "postbox_events_received_total",
        "Events received and applied, by event kind and path (push or pull)", "kind,path");
    s->events_duplicate = pb_metrics_counter(
        reg, "postbox_events_duplicate_total",
        "Events received again and skipped (sequence number already applied), by path", "path");
    s->outbox_reads = pb_metrics_counter(
        reg, "postbox_outbox_head_reads_total",
        "Reads of a peer's outbox head for its next Push, by source: the store, the events "
        "read ahead of the last Push (read_ahead), or a submission's events handed over with "
        "its commit (submission)",
        "source");
    s->push_window_batches = pb_metrics_counter(
        reg, "postbox_push_window_batches_total",
        "Pushes sent to a postbox of this project while the Push before them was unanswered "
        "(the window, push_window)",
        NULL);
    s->push_ahead = pb_metrics_counter(
        reg, "postbox_push_ahead_of_gap_total",
        "Received Pushes of a sender's window that arrived before the batches in front of "
        "them, by result: applied (held until those were applied), refused (503: not there "
        "in time, or too many held)",
        "result");
    s->client_duration = pb_metrics_histogram(
        reg, "postbox_hrpc_client_request_duration_seconds",
        "Calls to peers from request start to answer (or failure), by hRPC method", "method",
        latency_bounds, N(latency_bounds));
    s->key_fetches = pb_metrics_counter(
        reg, "postbox_key_fetches_total",
        "Peer key fetches, by result: ok, error; and requests that started none: rate_limited "
        "(fetched too recently, or failed recently), per_address (the client's address holds "
        "key_fetches_per_ip fetches), busy (every queue place or waiter place taken)",
        "result");
    s->dns_refused = pb_metrics_counter(
        reg, "postbox_dns_lookups_refused_total",
        "Name lookups refused at once, by reason: total (dns_lookups pending), clients "
        "(dns_lookups_for_clients pending on behalf of clients), per_address (the client's "
        "address holds dns_lookups_per_ip), per_domain (names under one domain hold "
        "dns_lookups_per_domain)",
        "reason");
    s->delivery_latency = pb_metrics_histogram(
        reg, "postbox_delivery_latency_seconds",
        "Events from their submission (POST /v1/outbox) to the peer's acknowledgement of the "
        "Push that carried them",
        NULL, delivery_bounds, N(delivery_bounds));

    s->store_commit_duration = pb_metrics_histogram(
        reg, "postbox_store_commit_duration_seconds",
        "Store write transactions from BEGIN to durable COMMIT (SQLite: one group commit)", NULL,
        commit_bounds, N(commit_bounds));
    s->store_commit_writes =
        pb_metrics_histogram(reg, "postbox_store_commit_batch_writes",
                             "Write calls committed together in one SQLite group commit", NULL,
                             batch_bounds, N(batch_bounds));
    s->store_checkpoint_duration = pb_metrics_histogram(
        reg, "postbox_store_checkpoint_duration_seconds",
        "SQLite WAL checkpoints (the WAL's pages copied into the database file), beside the "
        "commits",
        NULL, commit_bounds, N(commit_bounds));

    s->peers =
        pb_metrics_gauge(reg, "postbox_peers", "Known peers by delivery mode (store)", "mode");
    s->queued_events = pb_metrics_gauge(reg, "postbox_queued_events",
                                        "Events waiting in every peer's outbox (store)", NULL);
    s->queued_peers = pb_metrics_gauge(reg, "postbox_queued_peers",
                                       "Peers with at least one event waiting (store)", NULL);
    s->oldest_queued_age =
        pb_metrics_gauge(reg, "postbox_oldest_queued_age_seconds",
                         "Age of the oldest event waiting for any peer, 0 when none (store)", NULL);
    s->peer_queued_events =
        pb_metrics_gauge(reg, "postbox_peer_queued_events",
                         "Events waiting for one peer; only the peers with the oldest backlog "
                         "(metrics_top_peers) have a series",
                         "peer");
    s->peer_oldest_queued_age =
        pb_metrics_gauge(reg, "postbox_peer_oldest_queued_age_seconds",
                         "Age of the oldest event waiting for one peer; only the peers with "
                         "the oldest backlog (metrics_top_peers) have a series",
                         "peer");
    s->peer_last_success = pb_metrics_gauge(
        reg, "postbox_peer_last_success_timestamp_seconds",
        "Unix time of the last successful Push to one peer as this node saw it; only the "
        "peers with the oldest backlog (metrics_top_peers) that had one have a series",
        "peer");
    s->peer_parked = pb_metrics_gauge(
        reg, "postbox_peer_parked",
        "1 for a parked peer (an event refused for good waits for an operator); at most "
        "metrics_top_peers parked peers have a series, postbox_peers{mode=\"parked\"} counts all",
        "peer");
    s->open_connections = pb_metrics_gauge(reg, "postbox_open_connections",
                                           "Open connections per listener", "listener");
    s->request_body_bytes = pb_metrics_gauge(
        reg, "postbox_request_body_bytes",
        "Request body bytes the federation listener holds (bodies arriving or being handled); "
        "past body_memory new bodies are refused with 503",
        NULL);
    s->tls_waiting = pb_metrics_gauge(
        reg, "postbox_tls_handshakes_waiting",
        "TLS connections on the federation listener waiting for their client before their "
        "first request (the handshake, or the first request after it); they hold no thread",
        NULL);
    s->push_held_batches = pb_metrics_gauge(
        reg, "postbox_push_held_batches",
        "Received window batches waiting now because they arrived before the batches in "
        "front of them (each at most 5 s; postbox_push_ahead_of_gap_total counts how they end)",
        NULL);
    s->inbox_last_seq =
        pb_metrics_gauge(reg, "postbox_inbox_last_seq",
                         "Sequence number of the newest inbox item; its rate is the inbox rate "
                         "(store)",
                         NULL);
    s->inbox_unread_events = pb_metrics_gauge(
        reg, "postbox_inbox_unread_events",
        "Inbox items after the highest cursor the homeserver read from (store)", NULL);
    s->inbox_oldest_unread_age = pb_metrics_gauge(
        reg, "postbox_inbox_oldest_unread_age_seconds",
        "Age of the oldest inbox item the homeserver has not read, 0 when none (store)", NULL);
    s->build_info = pb_metrics_gauge(
        reg, "postbox_build_info", "Always 1: the version and the store backend", "version,store");
    s->start_time = pb_metrics_gauge(reg, "postbox_start_time_seconds",
                                     "Unix time at which this daemon started", NULL);
    s->store_up = pb_metrics_gauge(
        reg, "postbox_store_up",
        "1 while the store answers, 0 from a failure that made it unavailable (disk full, "
        "database down) until a write succeeds again",
        NULL);
    pb_gauge_set(pb_metric_series(s->store_up, NULL), 1);

    s->process_open_fds =
        pb_metrics_gauge(reg, "process_open_fds", "Number of open file descriptors", NULL);
    s->process_max_fds = pb_metrics_gauge(
        reg, "process_max_fds", "Maximum number of open file descriptors (soft limit)", NULL);
    s->process_resident_memory = pb_metrics_gauge(reg, "process_resident_memory_bytes",
                                                  "Resident memory size in bytes", NULL);
    s->process_cpu_seconds = pb_metrics_counter_sampled(
        reg, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds", NULL);
    s->process_start_time =
        pb_metrics_gauge(reg, "process_start_time_seconds",
                         "Start time of the process since unix epoch in seconds", NULL);
    double started = process_start();
    if (started <= 0) started = (double)time(NULL);
    pb_gauge_set(pb_metric_series(s->process_start_time, NULL), started);
    pb_metrics_hook_add(reg, process_hook, s);

    /* the fixed label values, at 0 from the start */
    static const char *const results[] = {"ok", "retried", "queued", "parked"};
    static const char *const paths[] = {"push", "pull"};
    static const char *const methods[] = {"Push", "Pull"};
    static const char *const fetch[] = {"ok", "error", "rate_limited", "per_address", "busy"};
    static const char *const dns[] = {"total", "clients", "per_address", "per_domain"};
    static const char *const modes[] = {"push", "queued", "parked"};
    static const char *const refusals[] = {"limit", "per_address"};
    for (size_t i = 0; i < N(results); i++)
        pb_metric_get(s->events_pushed, results[i]);
    for (size_t p = 0; p < N(paths); p++) {
        for (int k = PB_EV_USER_REMOVED_FROM_GUILD; k <= PB_EV_USER_REJECTED_INVITE; k++)
            pb_metric_get(s->events_received, pb_event_kind_name((pb_event_kind)k), paths[p]);
        pb_metric_get(s->events_duplicate, paths[p]);
    }
    pb_metric_series(s->push_window_batches, NULL);
    pb_metric_get(s->outbox_reads, "store");
    pb_metric_get(s->outbox_reads, "read_ahead");
    pb_metric_get(s->outbox_reads, "submission");
    pb_metric_get(s->push_ahead, "applied");
    pb_metric_get(s->push_ahead, "refused");
    for (size_t i = 0; i < N(methods); i++) {
        pb_metric_get(s->client_duration, methods[i]);
        pb_metric_get(s->server_duration, methods[i]);
    }
    for (size_t i = 0; i < N(fetch); i++)
        pb_metric_get(s->key_fetches, fetch[i]);
    for (size_t i = 0; i < N(dns); i++)
        pb_metric_get(s->dns_refused, dns[i]);
    for (size_t i = 0; i < N(modes); i++)
        pb_metric_get(s->peers, modes[i]);
    for (size_t i = 0; i < N(refusals); i++)
        pb_metric_get(s->connections_refused, refusals[i]);
    pb_metric_get(s->tls_handshakes, "full");
    pb_metric_get(s->tls_handshakes, "resumed");
    static const char *const req_refusals[] = {"inflight",    "inflight_per_address",
                                               "suspended",   "suspended_per_address",
                                               "body_memory", "body_memory_per_address"};
    for (size_t i = 0; i < N(req_refusals); i++)
        pb_metric_get(s->requests_refused, req_refusals[i]);
    static const char *const scopes[] = {"sender", "key", "address"};
    for (size_t i = 0; i < N(scopes); i++) {
        pb_metric_get(s->receive_refused, scopes[i]);
        if (i) pb_metric_get(s->new_peers_refused, scopes[i]);
    }
    return s;
}

void pb_metrics_std_free(pb_metrics_std *std)
{
    if (!std) return;
    pb_metrics_hook_remove(std->reg, process_hook, std);
    free(std);
}
