/*
 * logline_test - the delivery log lines an operator follows, like Postfix's one line per
 * delivery (issue 19):
 *
 *   - one delivery: POST /v1/outbox answers the sequence numbers it assigned
 *     (first_seq, last_seq); the sender then logs exactly one info line naming the peer
 *     ("push sent" with that range, the count, the duration and status=sent) and the
 *     receiver exactly one ("push received" with the sender and the same range); the
 *     receiver logs in json, every line of its log parses as JSON, a refused reload
 *     included; with log_deliveries = debug neither side writes the line at info;
 *   - a dead peer: the peer's lines stay bounded whatever is submitted: one when it
 *     starts failing, one when it is queued, then one per drain probe with its backoff,
 *     never one per event or per retry. The backoff is shortened (backoff_min 1 s,
 *     backoff_max 64 s, 12 s of failure) so that the test takes 12 s: in that time the
 *     probes come at about 1, 2, 4 and 8 s (jittered), as with the defaults (5 s, 900 s)
 *     they come at about 5, 10, 20 and 40 s of a minute. The peer answers one Push and is
 *     killed; 30 events are submitted in 30 submissions along the way. It is then one of
 *     the top-N peers in /metrics, with the time of its last successful Push.
 */
#include "harness.h"

#include <signal.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

/* Lines of the log at path holding a and b (b may be NULL). */
static int count(const char *path, const char *a, const char *b)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, a) && (!b || strstr(line, b))) n++;
    if (f) fclose(f);
    return n;
}

/* The one line of the log holding a and b, copied into out; false unless exactly one. */
static bool the_line(const char *path, const char *a, const char *b, char *out, size_t len)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, a) && (!b || strstr(line, b)) && n++ == 0) snprintf(out, len, "%s", line);
    if (f) fclose(f);
    return n == 1;
}

struct wait_line {
    const char *path, *a, *b;
    int more_than;
};

static bool line_grew(void *ctx)
{
    struct wait_line *w = ctx;
    return count(w->path, w->a, w->b) > w->more_than;
}

/* Every line of the log parses as a JSON object; returns the number of lines. */
static int all_json(const char *path)
{
    FILE *f = fopen(path, "r");
    char line[8192];
    int n = 0;
    while (f && fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        CHECKF(json_is_object(j), "not a JSON line: %s", line);
        json_decref(j);
        n++;
    }
    if (f) fclose(f);
    return n;
}

static json_t *submit(const pbt_daemon *from, const char *to, unsigned user)
{
    json_t *body = json_pack("{s:s,s:{s:{s:I,s:I}}}", "to", to, "event", "userAddedToGuild",
                             "userId", (json_int_t)user, "guildId", (json_int_t)7);
    long st = 0;
    json_t *j = pbt_admin(from, "POST", "/v1/outbox", body, &st);
    CHECKF(st == 202, "POST /v1/outbox: %ld", st);
    return j;
}

static void test_one_delivery(void)
{
    char *dir = pbt_tmpdir("logline-conf");
    char conf[600];
    snprintf(conf, sizeof conf, "%s/postbox.conf", dir);
    FILE *f = fopen(conf, "w");
    fputs("log_format = json\n", f);
    fclose(f);
    const char *ea[] = {"--log-level", "info", NULL};
    const char *eb[] = {"-c", conf, "--log-level", "info", NULL};
    pbt_daemon *a = pbt_daemon_new("loglineA", ea), *b = pbt_daemon_new("loglineB", eb);
    CHECK(pbt_daemon_start(a) && pbt_daemon_start(b));

    json_t *j = submit(a, b->server_id, 5);
    json_int_t first = json_integer_value(json_object_get(j, "first_seq"));
    json_int_t last = json_integer_value(json_object_get(j, "last_seq"));
    CHECKF(first == 1 && last == 1, "first_seq %lld, last_seq %lld", (long long)first,
           (long long)last);
    json_decref(j);

    char peer_b[80], peer_a[80], range[80], jrange[80], line[4096];
    snprintf(peer_b, sizeof peer_b, "peer=%s ", b->server_id);
    snprintf(peer_a, sizeof peer_a, "\"peer\":\"%s\"", a->server_id);
    snprintf(range, sizeof range, "first_seq=%lld last_seq=%lld events=1 ", (long long)first,
             (long long)last);
    snprintf(jrange, sizeof jrange, "\"first_seq\":%lld,\"last_seq\":%lld,\"events\":1",
             (long long)first, (long long)last);
    struct wait_line ws = {a->log_path, "push sent", peer_b, 0};
    struct wait_line wr = {b->log_path, "push received", peer_a, 0};
    CHECKF(pbt_wait_for(line_grew, &ws, 20000), "the sender logs the delivery");
    CHECKF(pbt_wait_for(line_grew, &wr, 20000), "the receiver logs the delivery");

    /* the sender: one info line about the delivery (besides, once per peer, the key it
     * learnt on first contact) */
    CHECKF(
        count(a->log_path, " info ", peer_b) - count(a->log_path, "learnt public key", peer_b) == 1,
        "%d info lines name %s on the sender", count(a->log_path, " info ", peer_b), b->server_id);
    CHECK(the_line(a->log_path, " info ", "kind=push", line, sizeof line));
    CHECKF(strstr(line, "push sent") && strstr(line, range) && strstr(line, "status=sent") &&
               strstr(line, "duration_ms=") && strstr(line, "kind=push"),
           "sender: %s", line);
    /* the receiver (json): one info line about the sender, the same range */
    CHECKF(count(b->log_path, "\"level\":\"info\"", peer_a) -
                   count(b->log_path, "learnt public key", peer_a) ==
               1,
           "%d info lines name %s on the receiver",
           count(b->log_path, "\"level\":\"info\"", peer_a), a->server_id);
    CHECK(the_line(b->log_path, "\"level\":\"info\"", "\"kind\":\"push\"", line, sizeof line));
    CHECKF(strstr(line, "\"msg\":\"push received\"") && strstr(line, jrange) &&
               strstr(line, "\"status\":\"accepted\""),
           "receiver: %s", line);
    fprintf(stderr, "sender:   %s", "");
    the_line(a->log_path, "push sent", peer_b, line, sizeof line);
    fprintf(stderr, "%s", line);
    the_line(b->log_path, "push received", peer_a, line, sizeof line);
    fprintf(stderr, "receiver: %s", line);

    /* a refused reload is logged as JSON too */
    f = fopen(conf, "w");
    fputs("log_format = json\nworkers = many\n", f);
    fclose(f);
    struct wait_line wrl = {b->log_path, "reload refused", NULL, 0};
    kill(b->pid, SIGHUP);
    CHECKF(pbt_wait_for(line_grew, &wrl, 20000), "the reload is refused");
    CHECKF(all_json(b->log_path) >= 3, "the receiver's log is JSON");

    /* log_deliveries = debug: the delivery lines leave the info log */
    f = fopen(conf, "w");
    fputs("log_format = json\nlog_deliveries = debug\n", f);
    fclose(f);
    struct wait_line wok = {b->log_path, "configuration reloaded", NULL, 0};
    kill(b->pid, SIGHUP);
    CHECKF(pbt_wait_for(line_grew, &wok, 20000), "the reload applies log_deliveries");
    int before = count(b->log_path, "push received", NULL);
    pbt_daemon_stop(a);
    const char *ea2[] = {"--log-level", "info", "--log-deliveries", "debug", NULL};
    for (int i = 0; ea2[i]; i++)
        a->args[a->nargs++] = strdup(ea2[i]);
    CHECK(pbt_daemon_start(a));
    j = submit(a, b->server_id, 6);
    CHECK_INT(json_integer_value(json_object_get(j, "first_seq")), 2);
    json_decref(j);
    /* delivered: B's inbox holds it */
    long st = 0;
    int64_t until = pbt_now_ms() + 20000;
    size_t have = 0;
    while (pbt_now_ms() < until && have < 2) {
        json_t *in = pbt_admin(b, "GET", "/v1/inbox?after=0&wait=1", NULL, &st);
        have = json_array_size(json_object_get(in, "events"));
        json_decref(in);
    }
    CHECK_INT(have, 2);
    CHECK_INT(count(b->log_path, "push received", NULL), before);
    CHECK_INT(count(a->log_path, "push sent", peer_b), 1);
    CHECK(all_json(b->log_path) > 0);

    pbt_daemon_free(a);
    pbt_daemon_free(b);
    pbt_rmrf(dir);
    free(dir);
}

static void test_dead_peer(void)
{
    const char *ea[] = {"--log-level",
                        "info",
                        "--backoff-min",
                        "1",
                        "--backoff-max",
                        "64",
                        "--retry-base-ms",
                        "20",
                        "--push-retries",
                        "5",
                        "--peer-connect-timeout-ms",
                        "500",
                        NULL};
    pbt_daemon *a = pbt_daemon_new("loglineDead", ea), *p = pbt_daemon_new("loglinePeer", NULL);
    CHECK(pbt_daemon_start(a) && pbt_daemon_start(p));
    char dead[64], peer[80];
    snprintf(dead, sizeof dead, "%s", p->server_id);
    snprintf(peer, sizeof peer, "peer=%s ", dead);
    /* the peer answers once, then dies */
    json_decref(submit(a, dead, 99));
    struct wait_line ws = {a->log_path, "push sent", peer, 0};
    CHECKF(pbt_wait_for(line_grew, &ws, 20000), "the first event is delivered");
    int64_t ok_at = (int64_t)time(NULL);
    pbt_daemon_kill(p);
    int before = count(a->log_path, peer, NULL);
    int64_t t0 = pbt_now_ms();
    for (int i = 0; i < 30; i++) {
        json_decref(submit(a, dead, 100 + (unsigned)i));
        /* spread the submissions over the 12 s (bounded sleep: the test's clock) */
        usleep(400 * 1000);
    }
    while (pbt_now_ms() - t0 < 12000)
        usleep(100 * 1000);
    int lines = count(a->log_path, peer, NULL) - before;
    int starts = count(a->log_path, peer, "the peer starts failing");
    int queued = count(a->log_path, peer, "queueing for the peer's Pull");
    int probes = count(a->log_path, peer, "drain probe failed");
    double attempts = pbt_metric(a, "postbox_events_pushed_total{result=\"queued\"}") +
                      pbt_metric(a, "postbox_events_pushed_total{result=\"retried\"}");
    fprintf(stderr,
            "dead peer for 12 s, 30 events: %d lines (%d starts failing, %d queued, %d probes); "
            "%.0f failed event pushes\n",
            lines, starts, queued, probes, attempts);
    CHECK_INT(starts, 1);
    CHECK_INT(queued, 1);
    /* probes at ~1, 2, 4, 8 s, each jittered: at most 6 in 12 s */
    CHECKF(probes >= 2 && probes <= 6, "%d probe lines", probes);
    CHECKF(lines == starts + queued + probes, "%d lines name the peer", lines);
    CHECKF(attempts > lines, "fewer lines (%d) than failed event pushes (%.0f)", lines, attempts);
    /* the queued peer is a top-N peer, with the time of its last success */
    char series[160];
    snprintf(series, sizeof series, "postbox_peer_last_success_timestamp_seconds{peer=\"%s\"}",
             dead);
    double ok = pbt_metric(a, series);
    CHECKF(ok >= (double)ok_at - 30 && ok <= (double)ok_at + 1, "%s = %g, delivered at %lld",
           series, ok, (long long)ok_at);
    snprintf(series, sizeof series, "postbox_peer_queued_events{peer=\"%s\"}", dead);
    CHECK_INT(pbt_metric(a, series), 30);
    pbt_daemon_free(p);
    pbt_daemon_free(a);
}

int main(void)
{
    test_one_delivery();
    test_dead_peer();
    return pbt_finish();
}
