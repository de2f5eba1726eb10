/*
 * metrics_std - the standard families (see metrics_std.h for who feeds each).
 */
#include "util/metrics_std.h"

#include <stdlib.h>

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

#define N(a) (sizeof(a) / sizeof((a)[0]))

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

    s->events_pushed = pb_metrics_counter(
        reg, "postbox_events_pushed_total",
        "Push attempts of one event, by outcome: ok (delivered), retried (failed, retried "
        "soon), queued (failed, the peer is queued), parked (refused for good)",
        "result");
    s->events_received = pb_metrics_counter(
        reg, "postbox_events_received_total",
        "Events received and applied, by event kind and path (push or pull)", "kind,path");
    s->events_duplicate = pb_metrics_counter(
        reg, "postbox_events_duplicate_total",
        "Events received again and skipped (sequence number already applied), by path", "path");
    s->client_duration = pb_metrics_histogram(
        reg, "postbox_hrpc_client_request_duration_seconds",
        "Calls to peers from request start to answer (or failure), by hRPC method", "method",
        latency_bounds, N(latency_bounds));
    s->key_fetches = pb_metrics_counter(
        reg, "postbox_key_fetches_total",
        "Peer key fetches, by result: ok, error, rate_limited (not tried: fetched too recently)",
        "result");

    s->store_commit_duration = pb_metrics_histogram(
        reg, "postbox_store_commit_duration_seconds",
        "Store write transactions from BEGIN to durable COMMIT (SQLite: one group commit)", NULL,
        commit_bounds, N(commit_bounds));
    s->store_commit_writes =
        pb_metrics_histogram(reg, "postbox_store_commit_batch_writes",
                             "Write calls committed together in one SQLite group commit", NULL,
                             batch_bounds, N(batch_bounds));

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
    s->open_connections = pb_metrics_gauge(reg, "postbox_open_connections",
                                           "Open connections per listener", "listener");
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

    /* the fixed label values, at 0 from the start */
    static const char *const results[] = {"ok", "retried", "queued", "parked"};
    static const char *const paths[] = {"push", "pull"};
    static const char *const methods[] = {"Push", "Pull"};
    static const char *const fetch[] = {"ok", "error", "rate_limited"};
    static const char *const modes[] = {"push", "queued", "parked"};
    static const char *const refusals[] = {"limit", "per_address"};
    for (size_t i = 0; i < N(results); i++)
        pb_metric_get(s->events_pushed, results[i]);
    for (size_t p = 0; p < N(paths); p++) {
        for (int k = PB_EV_USER_REMOVED_FROM_GUILD; k <= PB_EV_USER_REJECTED_INVITE; k++)
            pb_metric_get(s->events_received, pb_event_kind_name((pb_event_kind)k), paths[p]);
        pb_metric_get(s->events_duplicate, paths[p]);
    }
    for (size_t i = 0; i < N(methods); i++) {
        pb_metric_get(s->client_duration, methods[i]);
        pb_metric_get(s->server_duration, methods[i]);
    }
    for (size_t i = 0; i < N(fetch); i++)
        pb_metric_get(s->key_fetches, fetch[i]);
    for (size_t i = 0; i < N(modes); i++)
        pb_metric_get(s->peers, modes[i]);
    for (size_t i = 0; i < N(refusals); i++)
        pb_metric_get(s->connections_refused, refusals[i]);
    return s;
}

void pb_metrics_std_free(pb_metrics_std *std)
{
    free(std);
}
