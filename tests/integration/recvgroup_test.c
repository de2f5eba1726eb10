/*
 * recvgroup_test - Pushes received from many peers at once share commits: a received
 * Push's commit is queued and waited for without a listener thread (inbound.c, struct
 * push_job; pb_hrpc_defer_local), so that the number of listener threads does not bound
 * how many Pushes a commit holds.
 *
 * R runs with one federation listener thread (--threads 1) and, on SQLite, a slow disk
 * (fault point store.slow-commit: 100 ms before each commit). `hostile idents` plays N
 * peers, each with its own key: in round 1 each pushes one event in turn (R fetches and
 * stores its key: the peers become known); then, once the test has read R's commit
 * counters, round 2 sends the N Pushes at once, one connection each. Checked: every Push
 * of both rounds answered 200, R's inbox holds all 2 x N events, and (SQLite) round 2's
 * commits held more than 4 writes on average (postbox_store_commit_batch_writes); with the
 * Push committed on the listener thread, one thread means one Push per commit. On
 * PostgreSQL (PBT_STORE=postgres: each write its own transaction) the same Pushes are all
 * answered and stored. Every wait is a bounded poll.
 */
#include <stdlib.h>
#include <unistd.h>

#include "harness.h"
#include "hostile_tools.h"

#include <sodium.h>

#define NPEERS 24

struct log_wait {
    const struct tool *t;
    const char *needle;
};

static bool logged(void *vctx)
{
    struct log_wait *w = vctx;
    return tool_log_count(w->t, w->needle) > 0;
}

int main(void)
{
    const char *store = getenv("PBT_STORE");
    bool pg = store && !strcmp(store, "postgres");
    fprintf(stderr, "recvgroup_test: store %s\n", pg ? "postgres" : "sqlite");
    const char *rargs[] = {"--threads", "1", NULL};
    pbt_daemon *r = pbt_daemon_new("grpR", rargs);
    struct tool *t = NULL;
    char *go = NULL;
    setenv("PB_FAULTS", "store.slow-commit", 1);
    bool up = pbt_daemon_start(r);
    unsetenv("PB_FAULTS");
    CHECKF(up, "R starts");
    if (!up) goto out;
    char target[16], ids[8], seed[65];
    uint8_t raw[32];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(seed, sizeof seed, raw, sizeof raw);
    snprintf(target, sizeof target, "%u", r->port);
    snprintf(ids, sizeof ids, "%d", NPEERS);
    go = xasprintf("%s/go", r->dir);
    const char *targs[] = {"--listen",   ids,         "--seed",    seed,         "--key-per-id",
                           "1",          "--push-to", target,      "--push-max", "2",
                           "--parallel", "1",         "--go-file", go,           NULL};
    t = tool_run("idents", targs);
    if (!t) goto out;
    struct log_wait w1 = {t, "idents: round 1 done"}, w2 = {t, "idents: round 2 done"};
    CHECKF(pbt_wait_for(logged, &w1, PBT_BOUND_MS), "round 1 (one Push after the other) ends");
    const char *count = "postbox_store_commit_batch_writes_count",
               *sum = "postbox_store_commit_batch_writes_sum";
    double c0 = pbt_metric(r, count), w0 = pbt_metric(r, sum);
    int64_t t0 = pbt_now_ms();
    write_text(go, "go\n");
    CHECKF(pbt_wait_for(logged, &w2, PBT_BOUND_MS), "round 2 (%d Pushes at once) ends", NPEERS);
    int64_t dt = pbt_now_ms() - t0;
    double commits = pbt_metric(r, count) - c0, writes = pbt_metric(r, sum) - w0;
    CHECK_INT(tool_stop(t), 0);
    long ok = stat_of(t, "ok"), other = stat_of(t, "other");
    fprintf(stderr,
            "recvgroup_test: round 2: %d Pushes at once to one listener thread: %.0f commits "
            "for %.0f writes, done in %lld ms; both rounds: %ld answered 200, %ld other\n",
            NPEERS, commits, writes, (long long)dt, ok, other);
    CHECKF(ok == 2 * NPEERS, "every Push answered 200 (%ld of %d)", ok, 2 * NPEERS);
    size_t held = 0;
    for (int i = 0; i < 200 && held < 2 * NPEERS; i++) {
        long st;
        json_t *inbox = pbt_admin(r, "GET", "/v1/inbox?after=0&limit=1000", NULL, &st);
        held = json_array_size(json_object_get(inbox, "events"));
        json_decref(inbox);
        if (held < 2 * NPEERS) sleep_ms(50);
    }
    CHECKF(held == 2 * NPEERS, "R's inbox holds every event (%zu of %d)", held, 2 * NPEERS);
    if (!pg)
        CHECKF(commits > 0 && writes > 4 * commits,
               "round 2: more than 4 writes per commit with one listener thread (%.0f commits, "
               "%.0f writes)",
               commits, writes);
    CHECK_INT(pbt_daemon_stop(r), 0);
out:
    if (pbt_failed) {
        if (t) tool_dump_log(t);
        pbt_daemon_dump_log(r);
    }
    tool_free(t);
    free(go);
    pbt_daemon_free(r);
    return pbt_finish();
}
