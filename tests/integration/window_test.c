/*
 * window_test - the Push window between two postboxes (PROTOCOL.md 5, "Windows"): several
 * batches in flight, a receiver that holds a batch arriving ahead of a gap, and nothing
 * lost, duplicated or reordered when answers are lost, batches overtake each other, the
 * receiver refuses (429, 503), or either side is killed with a window in flight.
 *
 * Set-up: A pushes to B through tests/tools/faultproxy, which holds every request 20 ms
 * plus a random 0..40 ms before forwarding it (seeded): A's window batches travel on
 * different connections and overtake each other at B. B's server ID is the proxy's
 * address. Parts, each on the same pair and stream, each followed by a check of B's whole
 * inbox (every event once, in submission order):
 *   start     every request held 3 s by the proxy: once B's first answer is in, one event
 *             alone is in flight 3 s with nothing queued behind it, and A's CPU time over
 *             those 3 s stays under a fifth of them (A once read its outbox for the next
 *             window batch again and again while the head was in flight: a core busy);
 *             then A's first window is the one B announced, not one batch (the head
 *             and at least 4 window batches go before any answer); then the stream
 *             arrives whole and in order
 *   window    no fault: A sends window batches (postbox_push_window_batches_total) and B
 *             holds some that arrived ahead of a gap, then applies them
 *             (postbox_push_ahead_of_gap_total{result="applied"})
 *   faults    the proxy also drops answers after B stored the Push (reset-after), answers
 *             429 and 503 itself and resets connections before forwarding
 *   kills     SIGKILL of A, then of B, while a window is in flight (B's inbox partly there);
 *             then B crashes between its commit and its answer (fault point
 *             delivery.crash-after-commit) with A's window in flight
 *   failed    B restarted with one receive failing on its own inside a group commit (and
 *             slow commits): the stream arrives whole, and (SQLite) a batch queued behind
 *             the failed one is refused 503 and sent again
 *   nodes     (PostgreSQL) a second receiver, two nodes on one database behind a balancer
 *             alternating connections between them: the stream arrives whole and in order
 *             and no batch is refused because the other node applied its predecessor
 * PBT_SEED=N replays the proxy schedules and kill timing. Runs on SQLite and (window_test_pg)
 * PostgreSQL.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#define PART 2000 /* events per part */

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) abort();
    va_end(ap);
    return s;
}

/* Event i of the stream: an invite whose ID carries i. */
static json_t *gen_event(unsigned i)
{
    char inv[32], u[16];
    snprintf(inv, sizeof inv, "w-%u", i);
    snprintf(u, sizeof u, "%u", i % 50 + 1);
    return json_pack("{s:{s:s,s:s,s:s}}", "userInvited", "userId", u, "inviterId", "7", "inviteId",
                     inv);
}

static bool submit(const pbt_daemon *a, const char *to, unsigned from, unsigned n)
{
    json_t *evs = json_array();
    for (unsigned i = from; i < from + n; i++)
        json_array_append_new(evs, gen_event(i));
    long st;
    json_t *r =
        pbt_admin(a, "POST", "/v1/outbox", json_pack("{s:s,s:o}", "to", to, "events", evs), &st);
    json_decref(r);
    return st == 202;
}

/* Submits events [from, from + n) in calls of 500, retrying while A does not answer. */
static void feed(const pbt_daemon *a, const char *to, unsigned from, unsigned n)
{
    for (unsigned i = from; i < from + n;) {
        unsigned m = from + n - i < 500 ? from + n - i : 500;
        bool ok = false;
        for (int tries = 0; tries < 100 && !ok; tries++) {
            ok = submit(a, to, i, m);
            if (!ok) {
                struct timespec ts = {0, 50 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
        }
        CHECKF(ok, "events %u.. accepted", i);
        if (!ok) return;
        i += m;
    }
}

/* What B's inbox holds of the stream (read incrementally). */
struct scan {
    const pbt_daemon *b;
    const char *from;
    unsigned n;
    long long after;
    unsigned char *seen;
    long distinct, dups, reordered, others, max_idx;
};

static void scan_init(struct scan *s, const pbt_daemon *b, const char *from, unsigned n)
{
    free(s->seen);
    *s = (struct scan){.b = b, .from = from, .n = n, .max_idx = -1};
    s->seen = calloc(n ? n : 1, 1);
}

static void scan_more(struct scan *s)
{
    for (int guard = 0; guard < 10000; guard++) {
        char path[128];
        snprintf(path, sizeof path, "/v1/inbox?after=%lld&limit=1000", s->after);
        long st;
        json_t *r = pbt_admin(s->b, "GET", path, NULL, &st);
        json_t *evs = json_object_get(r, "events");
        size_t i;
        json_t *it;
        json_array_foreach(evs, i, it)
        {
            const char *from = json_string_value(json_object_get(it, "from"));
            const char *inv = json_string_value(json_object_get(
                json_object_get(json_object_get(it, "event"), "userInvited"), "inviteId"));
            unsigned long idx = inv && !strncmp(inv, "w-", 2) ? strtoul(inv + 2, NULL, 10) : 0;
            if (!from || strcmp(from, s->from) || !inv || idx >= s->n) {
                s->others++;
            } else if (s->seen[idx]) {
                s->dups++;
            } else {
                s->seen[idx] = 1;
                s->distinct++;
                if ((long)idx < s->max_idx) s->reordered++;
                if ((long)idx > s->max_idx) s->max_idx = (long)idx;
            }
        }
        size_t cnt = json_array_size(evs);
        if (cnt) s->after = json_integer_value(json_object_get(r, "next"));
        json_decref(r);
        if (st != 200 || cnt == 0) break;
    }
}

static bool arrived(void *vctx)
{
    struct scan *s = vctx;
    scan_more(s);
    return s->dups || s->reordered || s->others || s->distinct >= (long)s->n;
}

/* Waits for the first n events of the stream at B, then checks B's whole inbox. */
static void verify(const char *part, const pbt_daemon *b, const char *from, unsigned n)
{
    struct scan s = {0};
    scan_init(&s, b, from, n);
    bool done = pbt_wait_for(arrived, &s, 120000);
    CHECKF(done, "%s: the stream arrives (%ld of %u)", part, s.distinct, n);
    scan_init(&s, b, from, n);
    scan_more(&s);
    fprintf(stderr,
            "window_test: %s: %ld of %u arrived; %ld lost, %ld duplicated, %ld out of order, "
            "%ld others\n",
            part, s.distinct, n, (long)n - s.distinct, s.dups, s.reordered, s.others);
    CHECKF(s.distinct == (long)n, "%s: %ld of %u events arrived", part, s.distinct, n);
    CHECKF(s.dups == 0, "%s: %ld duplicated", part, s.dups);
    CHECKF(s.reordered == 0, "%s: %ld out of order", part, s.reordered);
    CHECKF(s.others == 0, "%s: %ld unexpected items", part, s.others);
    free(s.seen);
}

/* ---- the proxy ------------------------------------------------------------------------------ */

struct proxy {
    pid_t pid;
    uint16_t port, target;
    uint16_t also; /* a second upstream (0: none): connections alternate between the two */
    char *dir, *log;
};

static char *proxy_path(void)
{
    return pbt_tool_path("PBT_FAULTPROXY", "faultproxy");
}

static bool proxy_listening(void *vctx)
{
    struct proxy *p = vctx;
    FILE *f = fopen(p->log, "r");
    char line[2048];
    bool seen = false;
    while (f && !seen && fgets(line, sizeof line, f))
        seen = strstr(line, "faultproxy: listening on") != NULL;
    if (f) fclose(f);
    return seen;
}

static void proxy_stop(struct proxy *p)
{
    if (!p->pid) return;
    kill(p->pid, SIGTERM);
    int st = 0;
    for (int i = 0; i < 500 && waitpid(p->pid, &st, WNOHANG) != p->pid; i++) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
        if (i == 499) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, NULL, 0);
        }
    }
    p->pid = 0;
}

/* (Re)starts the proxy on p->port towards p->target with these fault options. */
static bool proxy_start(struct proxy *p, unsigned seed, const char *const *faults)
{
    proxy_stop(p);
    if (!p->dir) p->dir = pbt_tmpdir("winproxy");
    free(p->log);
    p->log = xasprintf("%s/faultproxy-%u.log", p->dir, seed);
    char *prog = proxy_path();
    char lp[16], tp[16], sd[24];
    snprintf(lp, sizeof lp, "%u", p->port);
    snprintf(tp, sizeof tp, "%u", p->target);
    snprintf(sd, sizeof sd, "%u", seed);
    char ap[16];
    snprintf(ap, sizeof ap, "%u", p->also);
    const char *argv[48] = {prog, lp, tp, sd, "--latency-ms", "20", "--jitter-ms", "40"};
    int n = 8;
    if (p->also) {
        argv[n++] = "--also-target";
        argv[n++] = ap;
    }
    for (int i = 0; faults && faults[i] && n < 46; i++)
        argv[n++] = faults[i];
    argv[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) abort();
    if (pid == 0) {
        int fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        execv(prog, (char *const *)argv);
        _exit(127);
    }
    p->pid = pid;
    free(prog);
    bool ok = pbt_wait_for(proxy_listening, p, PBT_BOUND_MS);
    CHECKF(ok, "faultproxy listens on %u", p->port);
    return ok;
}

/* ---- kills ------------------------------------------------------------------------------------
 */

struct partial {
    const pbt_daemon *b;
    double want;
};

static bool some_arrived(void *vctx)
{
    struct partial *p = vctx;
    return pbt_metric(p->b, "postbox_inbox_last_seq") >= p->want;
}

/* Submits n events from `from`, waits until B holds about a third of them (A's window is
 * then in flight), SIGKILLs victim and restarts it. */
static void kill_mid_window(pbt_daemon *a, const pbt_daemon *b, pbt_daemon *victim, const char *to,
                            unsigned from, unsigned n)
{
    double base = pbt_metric(b, "postbox_inbox_last_seq");
    feed(a, to, from, n);
    struct partial pt = {b, base + n / 3};
    CHECKF(pbt_wait_for(some_arrived, &pt, PBT_BOUND_MS), "B receives part of the stream");
    double at = pbt_metric(b, "postbox_inbox_last_seq");
    pbt_daemon_kill(victim);
    fprintf(stderr, "window_test: SIGKILL %s mid-window (B at %.0f of %.0f)\n",
            victim == a ? "the sender" : "the receiver", at, base + n);
    CHECKF(pbt_daemon_start(victim), "%s restarts", victim->server_id);
}

/* start: the window after the receiver's first acknowledgement (the announced window, in
 * delivery.c's push_done). Events [0, PART). */
static bool initial_window(pbt_daemon *a, const pbt_daemon *b, struct proxy *px, unsigned seed,
                           const char *b_id)
{
    const char *slow[] = {"--latency-ms", "3000", "--jitter-ms", "0", NULL};
    /* (seeds of their own: a restart's log must not hold the previous "listening") */
    if (!proxy_start(px, seed + 10, slow)) return false;
    const char *ok = "postbox_events_pushed_total{result=\"ok\"}",
               *cpu = "process_cpu_seconds_total";
    feed(a, b_id, 0, 1);
    CHECKF(pbt_wait_metric(a, ok, 1, PBT_BOUND_MS), "A's first Push is answered");
    /* B announced its window: one event in flight, nothing behind it */
    double c0 = pbt_metric(a, cpu), t0 = (double)pbt_now_ms();
    feed(a, b_id, 1, 1);
    CHECKF(pbt_wait_metric(a, ok, 2, PBT_BOUND_MS), "A's second Push is answered");
    double busy = pbt_metric(a, cpu) - c0, wall = ((double)pbt_now_ms() - t0) / 1000;
    fprintf(stderr, "window_test: start: A used %.3f s of CPU in %.3f s with one Push in flight\n",
            busy, wall);
    CHECKF(wall >= 2.5 && busy < wall / 5, "A idles while its head is in flight (%.3f s in %.3f s)",
           busy, wall);
    const char *wb = "postbox_push_window_batches_total";
    double w0 = pbt_metric(a, wb);
    unsigned burst = 6 * 256; /* 6 batches of push_batch: the head and up to 5 behind it */
    feed(a, b_id, 2, burst);
    /* no answer to any of them can come back within 3 s of the head being sent */
    pbt_wait_metric(a, wb, w0 + 4, 2500);
    double sent = pbt_metric(a, wb) - w0;
    fprintf(stderr, "window_test: start: %.0f window batches sent before any answer\n", sent);
    CHECKF(sent >= 4, "A's first window holds at least 4 batches behind the head (%.0f)", sent);
    if (!proxy_start(px, seed + 11, NULL)) return false; /* in flight: reset, retried */
    feed(a, b_id, 2 + burst, PART - 2 - burst);
    verify("start", b, a->server_id, PART);
    return true;
}

/* nodes (PostgreSQL only): the receiver is two nodes of one server on one database behind a
 * balancer that spreads connections over them (the proxy alternates its upstreams): a
 * batch whose predecessor the other node applied is applied without waiting out its hold
 * and being refused (each node's gate sees only its own commits; it asks the store). */
static void nodes_part(pbt_daemon *a, unsigned seed)
{
    pbt_daemon *n1 = pbt_daemon_new("winN1", NULL), *n2 = pbt_daemon_new("winN2", NULL);
    struct proxy px = {.port = pbt_free_port(), .target = n1->port, .also = n2->port};
    char id[64], key[600];
    snprintf(id, sizeof id, "127.0.0.1:%u", px.port);
    /* one database (n1's), one key, one server ID, two node IDs */
    for (int i = 0; i < n2->nargs; i++)
        if (!strcmp(n2->args[i], "--store") && i + 1 < n2->nargs)
            for (int k = 0; k + 1 < n1->nargs; k++)
                if (!strcmp(n1->args[k], "--store")) {
                    free(n2->args[i + 1]);
                    n2->args[i + 1] = strdup(n1->args[k + 1]);
                }
    pbt_daemon *nodes[2] = {n1, n2};
    for (int i = 0; i < 2; i++) {
        const char *extra[] = {"--server-id", id, "--node-id", i ? "n2" : "n1", NULL};
        for (int k = 0; extra[k]; k++)
            nodes[i]->args[nodes[i]->nargs++] = strdup(extra[k]);
    }
    bool ok = pbt_daemon_start(n1);
    snprintf(key, sizeof key, "%s/key", n2->dir);
    char *src = xasprintf("%s/key", n1->dir);
    ok = ok && pbt_copy_file(src, key);
    free(src);
    ok = ok && pbt_daemon_start(n2) && proxy_start(&px, seed + 20, NULL);
    CHECKF(ok, "two receiver nodes and their balancer start");
    if (ok) {
        int64_t t0 = pbt_now_ms();
        feed(a, id, 0, 2 * PART);
        verify("nodes", n1, a->server_id, 2 * PART);
        fprintf(stderr, "window_test: nodes: %u events through the two nodes in %.1f s\n", 2 * PART,
                (double)(pbt_now_ms() - t0) / 1000);
        const char *refused = "postbox_push_ahead_of_gap_total{result=\"refused\"}";
        double r1 = pbt_metric(n1, refused), r2 = pbt_metric(n2, refused);
        int p1 = pbt_log_count(n1, "push received", NULL),
            p2 = pbt_log_count(n2, "push received", NULL);
        fprintf(
            stderr,
            "window_test: nodes: Pushes received %d and %d, refused ahead of a gap %.0f and %.0f\n",
            p1, p2, r1, r2);
        CHECKF(p1 > 0 && p2 > 0, "both nodes received Pushes (%d, %d)", p1, p2);
        CHECKF(r1 + r2 == 0, "no batch was refused for a gap another node had filled (%.0f)",
               r1 + r2);
    }
    proxy_stop(&px);
    if (px.dir && !getenv("PBT_KEEP")) pbt_rmrf(px.dir);
    free(px.dir);
    free(px.log);
    if (pbt_failed) {
        pbt_daemon_dump_log(n1);
        pbt_daemon_dump_log(n2);
    }
    CHECK_INT(pbt_daemon_stop(n1), 0);
    CHECK_INT(pbt_daemon_stop(n2), 0);
    pbt_daemon_free(n1);
    pbt_daemon_free(n2);
}

int main(void)
{
    unsigned seed = getenv("PBT_SEED") ? (unsigned)atoi(getenv("PBT_SEED")) : (unsigned)time(NULL);
    fprintf(stderr, "window_test: seed %u (PBT_SEED=%u replays)\n", seed, seed);
    srand(seed);
    /* fast retries and probes, so that faults cost little time */
    const char *ax[] = {"--push-batch",
                        "256", /* the batches the parts count (whatever the default) */
                        "--push-retries",
                        "3",
                        "--retry-base-ms",
                        "20",
                        "--backoff-min",
                        "1",
                        "--backoff-max",
                        "2",
                        "--peer-timeout-ms",
                        "5000",
                        NULL};
    const char *bx[] = {"--peer-timeout-ms", "5000", NULL};
    pbt_daemon *a = pbt_daemon_new("winA", ax), *b = pbt_daemon_new("winB", bx);
    struct proxy px = {.port = pbt_free_port(), .target = b->port};
    char b_id[64];
    snprintf(b_id, sizeof b_id, "127.0.0.1:%u", px.port);
    b->args[b->nargs++] = strdup("--server-id");
    b->args[b->nargs++] = strdup(b_id);
    if (!proxy_start(&px, seed, NULL) || !pbt_daemon_start(a) || !pbt_daemon_start(b)) {
        CHECK(!"proxy and daemons start");
        goto out;
    }

    if (!initial_window(a, b, &px, seed, b_id)) goto out;

    /* window: batches in flight at once, overtaking each other, held and applied in order */
    feed(a, b_id, PART, PART);
    verify("window", b, a->server_id, 2 * PART);
    double sent = pbt_metric(a, "postbox_push_window_batches_total");
    double held = pbt_metric(b, "postbox_push_ahead_of_gap_total{result=\"applied\"}");
    fprintf(stderr, "window_test: %.0f window batches sent, %.0f held ahead of a gap\n", sent,
            held);
    CHECKF(sent >= 2, "A sent batches in a window (%.0f)", sent);
    CHECKF(held >= 1, "B held a batch that arrived ahead of a gap (%.0f)", held);

    /* faults: lost answers, 429 and 503 from the proxy, resets before forwarding */
    const char *faults[] = {"--reset-after",  "40", "--http429", "30", "--http503", "30",
                            "--reset-before", "20", NULL};
    if (!proxy_start(&px, seed + 1, faults)) goto out;
    feed(a, b_id, 2 * PART, PART);
    verify("faults", b, a->server_id, 3 * PART);
    CHECKF(pbt_metric(a, "postbox_push_window_batches_total") > sent,
           "A still sends windows under faults");

    /* kills: the sender, then the receiver, with a window in flight */
    if (!proxy_start(&px, seed + 2, NULL)) goto out;
    kill_mid_window(a, b, a, b_id, 3 * PART, PART);
    verify("sender killed", b, a->server_id, 4 * PART);
    kill_mid_window(a, b, b, b_id, 4 * PART, PART);
    verify("receiver killed", b, a->server_id, 5 * PART);
    /* the receiver crashes between its commit and its answer, a window in flight */
    pbt_daemon_stop(b);
    setenv("PB_FAULTS", "delivery.crash-after-commit", 1);
    bool started = pbt_daemon_start(b);
    unsetenv("PB_FAULTS");
    CHECKF(started, "B starts with the crash fault point");
    feed(a, b_id, 5 * PART, PART);
    CHECKF(pbt_daemon_wait_exit(b, PBT_BOUND_MS), "B crashed at its fault point");
    int crashes = pbt_log_count(b, "fault point delivery.crash-after-commit: crashing", NULL);
    CHECKF(crashes == 1, "the crash happened after a commit, once (%d)", crashes);
    CHECKF(pbt_daemon_start(b), "B restarts");
    verify("receiver crashed after a commit", b, a->server_id, 6 * PART);
    /* one receive fails on its own inside a group commit (slow commits: the window's
     * batches queue up behind it); those behind it find their predecessor missing */
    CHECK_INT(pbt_daemon_stop(b), 0);
    setenv("PB_FAULTS", "store.fail-receive-once,store.slow-commit", 1);
    started = pbt_daemon_start(b);
    unsetenv("PB_FAULTS");
    CHECKF(started, "B starts with a receive that fails");
    feed(a, b_id, 6 * PART, PART);
    verify("a receive failed", b, a->server_id, 7 * PART);
    CHECKF(pbt_log_count(b, "fault point store.fail-receive-once", NULL) == 1,
           "one receive failed");
    const char *store = getenv("PBT_STORE");
    bool pg = store && !strcmp(store, "postgres");
    if (!pg) { /* SQLite: receives run in queue order, the next is queued right behind */
        double r = pbt_metric(b, "postbox_push_ahead_of_gap_total{result=\"refused\"}");
        fprintf(stderr, "window_test: a receive failed: %.0f batches behind it refused\n", r);
        CHECKF(r >= 1, "a batch queued behind the failed one was refused, retryable (%.0f)", r);
        CHECKF(pbt_log_count(b, "answered 500", NULL) == 0,
               "no Push was answered 500 (a batch behind the failed one is not an error)");
    }
    if (pg) nodes_part(a, seed);
    CHECK_INT(pbt_daemon_stop(a), 0);
    CHECK_INT(pbt_daemon_stop(b), 0);
out:
    if (pbt_failed) {
        fprintf(stderr, "window_test: FAILED with seed %u: PBT_SEED=%u replays\n", seed, seed);
        pbt_daemon_dump_log(a);
        pbt_daemon_dump_log(b);
    }
    proxy_stop(&px);
    if (px.dir && !getenv("PBT_KEEP")) pbt_rmrf(px.dir);
    free(px.dir);
    free(px.log);
    pbt_daemon_free(a);
    pbt_daemon_free(b);
    return pbt_finish();
}
