/*
 * queuectl_test - queue control against real daemons (issue 19 item 3; README "Queue
 * control"), on SQLite and (queuectl_test_pg) PostgreSQL:
 *
 *   - queue: the events queued for a peer that is not up, paged (sequence number, age,
 *     kind, the event as JSON), from the API and from postboxctl;
 *   - flush: a queued peer with a long backoff (backoff_min 600 s) that has come up is
 *     tried at once (its events arrive within seconds, not minutes); a peer in push mode
 *     has nothing to flush; an unknown one is a 404; flush --all names the queued peers;
 *   - drop: refused without the confirmation (API 400, postboxctl exit 2); with it the
 *     queue is gone, one log line names it, a queueDropped notice is in our own inbox,
 *     postbox_events_dropped_total counts it, and the peer, once up, receives the next
 *     event (its sequence numbers go on, in a new epoch: nothing waits on the gap);
 *   - max_queue_age: switched on by a reload (live), it expires the old events the same way
 *     (log line, notice with reason max_queue_age, postbox_events_expired_total).
 * The peers "not up" are daemons described (ports chosen) but not started yet, so that
 * nothing but the flush can make the sender try them before its backoff ends.
 */
#include "harness.h"
#include "queuectl.h"

#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static int run(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int run(char **out, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    FILE *p = popen(cmd, "r");
    size_t cap = 1 << 16, len = 0, n;
    char *buf = calloc(1, cap);
    while (p && (n = fread(buf + len, 1, cap - len - 1, p)) > 0)
        len += n;
    int st = p ? pclose(p) : -1;
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int count_lines(const char *path, const char *a, const char *b)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, a) && (!b || strstr(line, b))) n++;
    if (f) fclose(f);
    return n;
}

struct metric_wait {
    const pbt_daemon *d;
    const char *series;
    double want;
};

static bool metric_is(void *ctx)
{
    struct metric_wait *w = ctx;
    return pbt_metric(w->d, w->series) == w->want;
}

int main(void)
{
    const char *ea[] = {
        "--push-retries", "0", "--backoff-min", "600", "--backoff-max", "900", NULL};
    pbt_daemon *a = pbt_daemon_new("qctlA", ea);
    pbt_daemon *b = pbt_daemon_new("qctlB", NULL), *c = pbt_daemon_new("qctlC", NULL);
    CHECK(pbt_daemon_start(a));
    char path[256], *out = NULL;
    long st = 0;

    /* ---- queue: B is not up: its 3 events wait, A tries again in 10 minutes */
    submit(a, b->server_id, 7, 3);
    struct peer_mode qb = {a, b->server_id, "queued"};
    CHECKF(pbt_wait_for(in_mode, &qb, 20000), "B queued");
    snprintf(path, sizeof path, "/v1/peers/%s/queue?limit=2", b->server_id);
    json_t *j = pbt_admin(a, "GET", path, NULL, &st);
    CHECKF(st == 200, "GET queue: %ld", st);
    json_t *evs = json_object_get(j, "events");
    CHECK(json_array_size(evs) == 2);
    CHECK(json_integer_value(json_object_get(j, "queued")) == 3);
    CHECK(!strcmp(json_string_value(json_object_get(j, "mode")), "queued"));
    CHECK(!strcmp(json_string_value(json_object_get(j, "next_from")), "3"));
    json_t *e0 = json_array_get(evs, 0);
    CHECK(!strcmp(json_string_value(json_object_get(e0, "seq")), "1"));
    CHECK(!strcmp(json_string_value(json_object_get(e0, "kind")), "userAddedToGuild"));
    CHECK(json_integer_value(json_object_get(e0, "age_s")) >= 0);
    CHECK(
        !strcmp(json_string_value(json_object_get(
                    json_object_get(json_object_get(e0, "event"), "userAddedToGuild"), "guildId")),
                "100"));
    json_decref(j);
    snprintf(path, sizeof path, "/v1/peers/%s/queue?from=3", b->server_id);
    j = pbt_admin(a, "GET", path, NULL, &st);
    CHECK(json_array_size(json_object_get(j, "events")) == 1);
    CHECK(json_is_null(json_object_get(j, "next_from")));
    json_decref(j);
    int rc = run(&out, "%s --admin %s queue %s", PB_POSTBOXCTL, a->admin, b->server_id);
    CHECKF(rc == 0 && strstr(out, "3 events queued (queued mode)") && strstr(out, "SEQ") &&
               strstr(out, "{\"userAddedToGuild\""),
           "postboxctl queue: %d\n%s", rc, out);
    free(out);
    rc = run(&out, "%s --admin %s queue %s --limit 1", PB_POSTBOXCTL, a->admin, b->server_id);
    CHECKF(rc == 0 && strstr(out, "(more: --from 2)"), "postboxctl queue --limit 1: %s", out);
    free(out);

    /* ---- flush: B comes up (it does not know A: no Pull, no contact); without the flush
     * A would wait 10 minutes */
    CHECK(pbt_daemon_start(b));
    rc = run(&out, "%s --admin %s flush %s", PB_POSTBOXCTL, a->admin, b->server_id);
    CHECKF(rc == 0 && strstr(out, "flushed: backoff reset, trying now"), "flush: %d %s", rc, out);
    free(out);
    int64_t t0 = pbt_now_ms();
    struct inbox_wait ib = {b, 3};
    CHECKF(pbt_wait_for(inbox_has, &ib, 20000), "B has the 3 events after the flush");
    fprintf(stderr, "flush: delivered %lld ms after the flush (backoff was 600 s)\n",
            (long long)(pbt_now_ms() - t0));
    struct peer_mode pb = {a, b->server_id, "push"};
    CHECKF(pbt_wait_for(in_mode, &pb, 20000), "B back in push mode");
    struct queue_wait qw = {a, b->server_id, 0};
    CHECKF(pbt_wait_for(queued_is, &qw, 20000), "the delivered events leave the queue");
    snprintf(path, sizeof path, "/v1/peers/%s/flush", b->server_id);
    j = pbt_admin(a, "POST", path, NULL, &st);
    CHECKF(st == 200 && json_is_false(json_object_get(j, "flushed")), "flush push mode: %ld", st);
    json_decref(j);
    j = pbt_admin(a, "POST", "/v1/peers/nobody.example:1/flush", NULL, &st);
    CHECKF(st == 404, "flush unknown: %ld", st);
    json_decref(j);

    /* ---- flush --all and drop: C is not up */
    submit(a, c->server_id, 8, 2);
    struct peer_mode qc = {a, c->server_id, "queued"};
    CHECKF(pbt_wait_for(in_mode, &qc, 20000), "C queued");
    j = pbt_admin(a, "POST", "/v1/flush", NULL, &st);
    CHECKF(st == 200 && json_integer_value(json_object_get(j, "count")) == 1 &&
               !strcmp(json_string_value(json_array_get(json_object_get(j, "flushed"), 0)),
                       c->server_id),
           "flush all: %ld", st);
    json_decref(j);
    CHECKF(pbt_wait_for(in_mode, &qc, 20000), "C queued again after the flush's probe");
    rc = run(&out, "%s --admin %s drop %s 2>&1", PB_POSTBOXCTL, a->admin, c->server_id);
    CHECKF(rc == 2 && strstr(out, "--yes"), "drop without --yes: %d %s", rc, out);
    free(out);
    snprintf(path, sizeof path, "/v1/peers/%s/drop", c->server_id);
    j = pbt_admin(a, "POST", path, json_pack("{s:b}", "confirm", 0), &st);
    CHECKF(st == 400, "drop without confirm: %ld", st);
    json_decref(j);
    rc = run(&out, "%s --admin %s drop %s --yes", PB_POSTBOXCTL, a->admin, c->server_id);
    CHECKF(rc == 0 && strstr(out, "2 events dropped (seq 1..2); new sequence epoch ") &&
               strstr(out, "in the inbox"),
           "drop: %d %s", rc, out);
    free(out);
    char cnt[24] = "";
    CHECKF(notices(a, c->server_id, "operator", cnt) == 1 && !strcmp(cnt, "2"),
           "one queueDropped notice (count %s) in A's inbox", cnt);
    CHECKF(count_lines(a->log_path, "queued events dropped by the operator", c->server_id) == 1,
           "one log line for the drop");
    CHECKF(pbt_metric(a, "postbox_events_dropped_total") == 2, "dropped_total %g",
           pbt_metric(a, "postbox_events_dropped_total"));
    snprintf(path, sizeof path, "/v1/peers/%s/queue", c->server_id);
    j = pbt_admin(a, "GET", path, NULL, &st);
    CHECK(json_array_size(json_object_get(j, "events")) == 0);
    CHECK(!strcmp(json_string_value(json_object_get(j, "mode")), "push"));
    json_decref(j);
    rc = run(&out, "%s --admin %s inbox", PB_POSTBOXCTL, a->admin);
    CHECKF(rc == 0 && strstr(out, "queueDropped") && strstr(out, "reason=operator"),
           "postboxctl inbox shows the notice: %s", out);
    free(out);
    /* C comes up; the next event (seq 3, a new epoch) arrives */
    CHECK(pbt_daemon_start(c));
    submit(a, c->server_id, 9, 1);
    struct inbox_wait ic = {c, 1};
    CHECKF(pbt_wait_for(inbox_has, &ic, 20000), "C receives the event after the drop");
    j = inbox(c);
    CHECK(json_array_size(json_object_get(j, "events")) == 1);
    json_decref(j);
    pbt_daemon_stop(c);

    /* ---- max_queue_age, switched on by a reload */
    char *dir = pbt_tmpdir("qctl-conf");
    char conf[600];
    snprintf(conf, sizeof conf, "%s/postbox.conf", dir);
    FILE *f = fopen(conf, "w");
    fputs("max_queue_age = 0\n", f);
    fclose(f);
    const char *ed[] = {"-c", conf, "--push-retries", "0", "--backoff-min", "600", NULL};
    pbt_daemon *d = pbt_daemon_new("qctlD", ed), *e = pbt_daemon_new("qctlE", NULL);
    CHECK(pbt_daemon_start(d));
    submit(d, e->server_id, 10, 4);
    struct peer_mode qe = {d, e->server_id, "queued"};
    CHECKF(pbt_wait_for(in_mode, &qe, 20000), "E queued");
    CHECK(pbt_metric(d, "postbox_events_expired_total") == 0);
    f = fopen(conf, "w");
    fputs("max_queue_age = 1\n", f);
    fclose(f);
    kill(d->pid, SIGHUP);
    struct metric_wait me = {d, "postbox_events_expired_total", 4};
    CHECKF(pbt_wait_for(metric_is, &me, 20000), "4 events expired (%g)",
           pbt_metric(d, "postbox_events_expired_total"));
    CHECKF(notices(d, e->server_id, "max_queue_age", cnt) == 1 && !strcmp(cnt, "4"),
           "one expiry notice (count %s)", cnt);
    CHECKF(count_lines(d->log_path, "queued events expired unsent", e->server_id) == 1,
           "one log line for the expiry");
    struct peer_mode pe = {d, e->server_id, "push"};
    CHECKF(pbt_wait_for(in_mode, &pe, 20000), "E back in push mode");

    if (pbt_failed) {
        pbt_daemon_dump_log(a);
        pbt_daemon_dump_log(d);
    }
    pbt_daemon_free(a);
    pbt_daemon_free(b);
    pbt_daemon_free(c);
    pbt_daemon_free(d);
    pbt_daemon_free(e);
    pbt_rmrf(dir);
    free(dir);
    return pbt_finish();
}
