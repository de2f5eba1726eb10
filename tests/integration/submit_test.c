/*
 * submit_test - idempotent admin submissions (POST /v1/outbox with "submission_id")
 * against real postboxd processes:
 *   - shapes: the first submission answers {"accepted": N, "duplicate": false}, a repeat
 *     {"accepted": N, "duplicate": true} and queues nothing (the peer's queue counts each
 *     event once); the ID reused with another "to" or another number of events is a 409;
 *     an invalid ID (empty, 129 characters, not a string, a NUL, non-ASCII) is a 400;
 *     without an ID the answer keeps its old shape {"accepted": N};
 *   - delivery: a submission repeated before and after its delivery reaches the peer's
 *     inbox exactly once (checked behind a later sentinel event, which arrives after
 *     anything queued before it);
 *   - the crash suite's case (SQLite, through the test-only failing VFS): a submission
 *     refused with 503 because its commit's fsync failed, then SIGKILL and restart, then
 *     the homeserver's retry with the same ID: the event is queued exactly once, whether
 *     or not SQLite's recovery kept the refused commit.
 *   - concurrent submissions: 64 clients each submit 3 events (their own user) at once
 *     through the admin listener, behind a slow disk (fault point store.slow-commit:
 *     100 ms before each SQLite commit): every one is accepted with its own 3 seqs, B's
 *     inbox holds each submission's events once and in order, and (SQLite) the commits
 *     hold more than 4 writes on average (postbox_store_commit_batch_writes): more than
 *     the admin listener's 4 threads could group while each waited for its commit.
 *   - a submission's events handed to the engine with its commit (delivery.c, "stage"):
 *     single events to an idle peer are served from them (the metric
 *     postbox_outbox_head_reads_total{source="submission"} counts it; never with
 *     PostgreSQL, where several nodes may share the queue); and while the engine
 *     is slow to take the news (fault point delivery.slow-stage: 300 ms), the operator
 *     drops the peer's queue: the dropped event is not pushed from the copy (B receives the
 *     events before and after it, not it).
 *   - a submission committed while the peer's head is being read by a read that looked
 *     before that commit (fault point delivery.slow-read): it is pushed without waiting for
 *     another submission.
 * Shapes, delivery, concurrency and the staged events run on the store PBT_STORE names
 * (CTest runs both).
 * Every wait is a bounded poll.
 */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "harness.h"

static json_t *event(unsigned guild)
{
    char g[24];
    snprintf(g, sizeof g, "%u", guild);
    return json_pack("{s:{s:s,s:s}}", "userAddedToGuild", "userId", "1", "guildId", g);
}

static json_t *events(unsigned first, unsigned n)
{
    json_t *a = json_array();
    for (unsigned i = 0; i < n; i++)
        json_array_append_new(a, event(first + i));
    return a;
}

/* POST /v1/outbox {"to": to, "events": evs (stolen), "submission_id": id (NULL: none)};
 * returns the answer (caller decrefs) and sets *st. */
static json_t *submit(const pbt_daemon *d, const char *to, json_t *evs, json_t *id, long *st)
{
    json_t *body = json_pack("{s:s,s:o}", "to", to, "events", evs);
    if (id) json_object_set_new(body, "submission_id", id);
    return pbt_admin(d, "POST", "/v1/outbox", body, st);
}

/* The answer is 202 {"accepted": n, "duplicate": dup} exactly. */
static bool accepted(json_t *r, long st, long n, bool dup)
{
    json_int_t first = json_integer_value(json_object_get(r, "first_seq")),
               last = json_integer_value(json_object_get(r, "last_seq"));
    return st == 202 && json_object_size(r) == 4 &&
           json_integer_value(json_object_get(r, "accepted")) == n && first >= 1 &&
           last - first + 1 == n && json_is_boolean(json_object_get(r, "duplicate")) &&
           json_boolean_value(json_object_get(r, "duplicate")) == dup;
}

static long long queued_for(const pbt_daemon *d, const char *peer)
{
    long st;
    long long q = -1;
    json_t *r = pbt_admin(d, "GET", "/v1/peers", NULL, &st), *it;
    size_t i;
    json_array_foreach(json_object_get(r, "peers"), i, it)
    {
        if (!strcmp(json_string_value(json_object_get(it, "server_id")), peer))
            q = json_integer_value(json_object_get(it, "queued"));
    }
    json_decref(r);
    return q;
}

/* Expects 202 {"accepted": n, "first_seq", "last_seq" (n numbers), "duplicate": dup}. */
static void expect(const pbt_daemon *d, const char *to, json_t *evs, const char *id, long n,
                   bool dup, const char *what)
{
    long st;
    json_t *r = submit(d, to, evs, json_string(id), &st);
    char *text = r ? json_dumps(r, JSON_COMPACT) : NULL;
    CHECKF(accepted(r, st, n, dup), "%s: want 202 accepted %ld duplicate %d, got %ld %s", what, n,
           dup, st, text ? text : "(none)");
    free(text);
    json_decref(r);
}

/* Expects status `want` with an {"error": ...} body. */
static void expect_error(const pbt_daemon *d, const char *to, json_t *evs, json_t *id, long want,
                         const char *what)
{
    long st;
    json_t *r = submit(d, to, evs, id, &st);
    CHECKF(st == want && json_is_string(json_object_get(r, "error")), "%s: want %ld, got %ld", what,
           want, st);
    json_decref(r);
}

static void test_shapes(const pbt_daemon *d, const char *dead)
{
    char other[64];
    snprintf(other, sizeof other, "127.0.0.1:%u", pbt_free_port());
    expect(d, dead, events(1, 2), "hs-1", 2, false, "first submission");
    expect(d, dead, events(1, 2), "hs-1", 2, true, "repeat");
    expect(d, dead, events(1, 2), "hs-1", 2, true, "second repeat");
    /* the single-event form */
    long st;
    json_t *r = pbt_admin(d, "POST", "/v1/outbox",
                          json_pack("{s:s,s:o,s:s}", "to", dead, "event", event(3), "submission_id",
                                    "hs-2 with spaces & \"quotes\""),
                          &st);
    CHECKF(accepted(r, st, 1, false), "single event with an ID: %ld", st);
    json_decref(r);
    r = pbt_admin(d, "POST", "/v1/outbox",
                  json_pack("{s:s,s:o,s:s}", "to", dead, "event", event(3), "submission_id",
                            "hs-2 with spaces & \"quotes\""),
                  &st);
    CHECKF(accepted(r, st, 1, true), "single event repeated: %ld", st);
    json_decref(r);

    /* reuse for another submission */
    expect_error(d, other, events(1, 2), json_string("hs-1"), 409, "same ID, another \"to\"");
    expect_error(d, dead, events(1, 3), json_string("hs-1"), 409, "same ID, 3 events, not 2");
    expect_error(d, dead, events(1, 1), json_string("hs-1"), 409, "same ID, 1 event, not 2");
    CHECKF(queued_for(d, other) == -1, "a refused reuse creates no peer");

    /* invalid IDs */
    char big[130];
    memset(big, 'x', 129);
    big[129] = '\0';
    expect_error(d, dead, events(1, 1), json_string(""), 400, "empty ID");
    expect_error(d, dead, events(1, 1), json_string(big), 400, "129-character ID");
    expect_error(d, dead, events(1, 1), json_integer(7), 400, "numeric ID");
    expect_error(d, dead, events(1, 1), json_null(), 400, "null ID");
    expect_error(d, dead, events(1, 1), json_stringn("a\0b", 3), 400, "ID with a NUL");
    expect_error(d, dead, events(1, 1), json_string("caf\xc3\xa9"), 400, "non-ASCII ID");
    big[128] = '\0';
    expect(d, dead, events(10, 1), big, 1, false, "128-character ID");

    /* without an ID: no "duplicate", no deduplication: each call gets new numbers */
    json_int_t prev_last = 0;
    for (int i = 0; i < 2; i++) {
        r = submit(d, dead, events(1, 2), NULL, &st);
        json_int_t first = json_integer_value(json_object_get(r, "first_seq")),
                   last = json_integer_value(json_object_get(r, "last_seq"));
        CHECKF(st == 202 && json_object_size(r) == 3 &&
                   json_integer_value(json_object_get(r, "accepted")) == 2 && last == first + 1 &&
                   (i == 0 || first == prev_last + 1),
               "no ID: 202 {\"accepted\": 2, \"first_seq\", \"last_seq\"}, got %ld", st);
        prev_last = last;
        json_decref(r);
    }
    /* 2 (hs-1) + 1 (hs-2) + 1 (128 chars) + 2 + 2 (no ID) */
    CHECKF(queued_for(d, dead) == 8, "the dead peer's queue holds each event once: %lld",
           queued_for(d, dead));
}

/* The events from `from` in d's inbox, in order (new reference). */
static json_t *inbox_from(const pbt_daemon *d, const char *from)
{
    json_t *out = json_array();
    long long after = 0;
    for (int guard = 0; guard < 100; guard++) {
        char path[96];
        snprintf(path, sizeof path, "/v1/inbox?after=%lld&limit=1000", after);
        long st;
        json_t *r = pbt_admin(d, "GET", path, NULL, &st), *it;
        size_t i, n = json_array_size(json_object_get(r, "events"));
        json_array_foreach(json_object_get(r, "events"), i, it)
        {
            if (!strcmp(json_string_value(json_object_get(it, "from")), from))
                json_array_append(out, json_object_get(it, "event"));
        }
        if (n) after = json_integer_value(json_object_get(r, "next"));
        json_decref(r);
        if (st != 200 || n == 0) break;
    }
    return out;
}

struct arrival {
    const pbt_daemon *b;
    const char *from;
    json_t *sentinel;
};

/* The sentinel event is in B's inbox. */
static bool sentinel_arrived(void *vctx)
{
    struct arrival *a = vctx;
    json_t *got = inbox_from(a->b, a->from), *it;
    size_t i;
    bool found = false;
    json_array_foreach(got, i, it) found = found || json_equal(it, a->sentinel);
    json_decref(got);
    return found;
}

/* A submits to B with an ID, repeats it, waits for it to arrive, repeats it again; then a
 * sentinel without ID. Once the sentinel is there, B holds the submission exactly once. */
static void test_delivered_once(const pbt_daemon *a, const pbt_daemon *b)
{
    expect(a, b->server_id, events(100, 3), "d-1", 3, false, "delivery: first");
    expect(a, b->server_id, events(100, 3), "d-1", 3, true, "delivery: repeat");
    struct arrival arr = {b, a->server_id, event(102)};
    CHECKF(pbt_wait_for(sentinel_arrived, &arr, 30000), "delivery: the submission arrives");
    json_decref(arr.sentinel);
    expect(a, b->server_id, events(100, 3), "d-1", 3, true, "delivery: repeat after delivery");
    long st;
    json_decref(submit(a, b->server_id, events(999, 1), NULL, &st));
    CHECK_INT(st, 202);
    arr.sentinel = event(999);
    CHECKF(pbt_wait_for(sentinel_arrived, &arr, 30000), "delivery: the sentinel arrives");
    json_decref(arr.sentinel);
    json_t *got = inbox_from(b, a->server_id), *want = events(100, 3);
    json_array_append_new(want, event(999));
    char *text = json_dumps(got, JSON_COMPACT);
    CHECKF(json_equal(got, want), "delivery: B holds the submission once, then the sentinel: %s",
           text);
    free(text);
    json_decref(got);
    json_decref(want);
}

#define NCONC 64

struct conc_arg {
    const pbt_daemon *a;
    const char *to;
    int i;
    long st;
    json_int_t first, last;
};

static void *conc_submit(void *p)
{
    struct conc_arg *c = p;
    json_t *evs = json_array();
    char user[16], id[16];
    snprintf(user, sizeof user, "%d", 1000 + c->i);
    snprintf(id, sizeof id, "conc-%d", c->i);
    for (int g = 1; g <= 3; g++)
        json_array_append_new(evs, json_pack("{s:{s:s,s:s}}", "userAddedToGuild", "userId", user,
                                             "guildId",
                                             g == 1   ? "1"
                                             : g == 2 ? "2"
                                                      : "3"));
    json_t *r = submit(c->a, c->to, evs, json_string(id), &c->st);
    c->first = json_integer_value(json_object_get(r, "first_seq"));
    c->last = json_integer_value(json_object_get(r, "last_seq"));
    json_decref(r);
    return NULL;
}

struct one_arrival {
    const pbt_daemon *b;
    const char *from;
    size_t want;
};

/* B holds at least `want` events from `from`. */
static bool arrived_n(void *vctx)
{
    struct one_arrival *c = vctx;
    json_t *got = inbox_from(c->b, c->from);
    size_t n = json_array_size(got);
    json_decref(got);
    return n >= c->want;
}

/* 64 submissions of 3 events at once, A's SQLite commits slowed: each accepted with its own
 * seqs, delivered once and in order; SQLite grouped more than 4 per commit. */
static void test_concurrent(const pbt_daemon *b, bool pg)
{
    pbt_daemon *a = pbt_daemon_new("subConc", NULL);
    bool up = pbt_daemon_start_faults(a, "store.slow-commit");
    CHECKF(up, "concurrent: daemon started");
    if (!up) goto out;
    const char *count = "postbox_store_commit_batch_writes_count",
               *sum = "postbox_store_commit_batch_writes_sum";
    double c0 = pbt_metric(a, count), w0 = pbt_metric(a, sum);
    pthread_t th[NCONC];
    struct conc_arg args[NCONC];
    for (int i = 0; i < NCONC; i++) {
        args[i] = (struct conc_arg){.a = a, .to = b->server_id, .i = i};
        CHECK(pthread_create(&th[i], NULL, conc_submit, &args[i]) == 0);
    }
    for (int i = 0; i < NCONC; i++)
        pthread_join(th[i], NULL);
    double commits = pbt_metric(a, count) - c0, writes = pbt_metric(a, sum) - w0;
    fprintf(stderr, "submit_test: %d concurrent submissions: %.0f commits for %.0f writes\n", NCONC,
            commits, writes);
    bool seq_used[3 * NCONC + 1] = {false}, seqs_ok = true;
    for (int i = 0; i < NCONC; i++) {
        CHECKF(args[i].st == 202, "concurrent: submission %d answered %ld", i, args[i].st);
        if (args[i].first < 1 || args[i].last != args[i].first + 2 || args[i].last > 3 * NCONC) {
            seqs_ok = false;
            continue;
        }
        for (json_int_t s = args[i].first; s <= args[i].last; s++) {
            seqs_ok = seqs_ok && !seq_used[s];
            seq_used[s] = true;
        }
    }
    CHECKF(seqs_ok, "concurrent: the submissions got seqs 1..%d, 3 each, none twice", 3 * NCONC);
    if (!pg)
        CHECKF(commits > 0 && writes > 4 * commits,
               "concurrent: more than 4 writes per commit (%.0f commits, %.0f writes)", commits,
               writes);
    struct one_arrival cc = {b, a->server_id, 3 * NCONC};
    CHECKF(pbt_wait_for(arrived_n, &cc, 30000), "concurrent: B gets every event");
    json_t *got = inbox_from(b, a->server_id), *it;
    int next[NCONC] = {0}; /* guilds of each user seen so far, in order */
    bool in_order = json_array_size(got) == 3 * NCONC;
    size_t k;
    json_array_foreach(got, k, it)
    {
        json_t *e = json_object_get(it, "userAddedToGuild");
        long user = strtol(json_string_value(json_object_get(e, "userId")) ?: "0", NULL, 10);
        long guild = strtol(json_string_value(json_object_get(e, "guildId")) ?: "0", NULL, 10);
        if (user < 1000 || user >= 1000 + NCONC || guild != next[user - 1000] + 1) {
            in_order = false;
            continue;
        }
        next[user - 1000]++;
    }
    CHECKF(in_order, "concurrent: B holds each submission's 3 events once and in order (%zu)",
           json_array_size(got));
    json_decref(got);
out:
    if (pbt_failed) pbt_daemon_dump_log(a);
    pbt_daemon_free(a);
}

/* Single events to an idle peer are pushed from the copy their commit handed over; not
 * with PostgreSQL, where another node may change the queue unseen. */
static void test_staged_used(const pbt_daemon *a, const pbt_daemon *b, bool pg)
{
    const char *m = "postbox_outbox_head_reads_total{source=\"submission\"}";
    double before = pbt_metric(a, m);
    json_t *got = inbox_from(b, a->server_id);
    struct one_arrival c = {b, a->server_id, json_array_size(got)};
    json_decref(got);
    /* the state machine may still wait for the answer to the Push before: a few tries */
    for (int i = 0; i < (pg ? 3 : 20) && pbt_metric(a, m) <= before; i++) {
        long st;
        json_decref(submit(a, b->server_id, events(2000 + (unsigned)i, 1), NULL, &st));
        CHECK_INT(st, 202);
        c.want++;
        CHECKF(pbt_wait_for(arrived_n, &c, 30000), "staged: single event %d arrives", i);
    }
    if (pg)
        CHECKF(pbt_metric(a, m) == 0, "staged: never with PostgreSQL (%s)", m);
    else
        CHECKF(pbt_metric(a, m) > before,
               "staged: a single event to an idle peer was pushed from its submission's copy (%s)",
               m);
}

/* The operator drops the queue between a submission's commit and the engine taking its
 * news: the event is not pushed from the submission's copy. */
static void test_staged_dropped(const pbt_daemon *b)
{
    pbt_daemon *a = pbt_daemon_new("subStage", NULL);
    bool up = pbt_daemon_start_faults(a, "delivery.slow-stage,delivery.slow-drop-notice");
    CHECKF(up, "staged drop: daemon started");
    if (!up) goto out;
    long st;
    json_decref(submit(a, b->server_id, events(3001, 1), NULL, &st));
    CHECK_INT(st, 202);
    struct arrival arr = {b, a->server_id, event(3001)};
    CHECKF(pbt_wait_for(sentinel_arrived, &arr, 30000), "staged drop: the first event arrives");
    json_decref(arr.sentinel);
    /* committed; the engine takes the news 300 ms later */
    json_decref(submit(a, b->server_id, events(3002, 1), NULL, &st));
    CHECK_INT(st, 202);
    char path[128];
    snprintf(path, sizeof path, "/v1/peers/%s/drop", b->server_id);
    json_t *r = pbt_admin(a, "POST", path, json_pack("{s:b}", "confirm", 1), &st);
    CHECKF(st == 200 && json_integer_value(json_object_get(r, "dropped")) == 1,
           "staged drop: the operator dropped the event before the engine took it (%ld, %lld)", st,
           (long long)json_integer_value(json_object_get(r, "dropped")));
    json_decref(r);
    json_decref(submit(a, b->server_id, events(3003, 1), NULL, &st));
    CHECK_INT(st, 202);
    arr.sentinel = event(3003);
    CHECKF(pbt_wait_for(sentinel_arrived, &arr, 30000), "staged drop: the sentinel arrives");
    json_decref(arr.sentinel);
    json_t *got = inbox_from(b, a->server_id), *want = json_array();
    json_array_append_new(want, event(3001));
    json_array_append_new(want, event(3003));
    char *text = json_dumps(got, JSON_COMPACT);
    CHECKF(json_equal(got, want),
           "staged drop: B holds the events before and after the dropped "
           "one, not it: %s",
           text);
    free(text);
    json_decref(got);
    json_decref(want);
out:
    if (pbt_failed) pbt_daemon_dump_log(a);
    pbt_daemon_free(a);
}

/* A submission committed while the peer's head is read, by a read that looked before
 * that commit (fault point delivery.slow-read: each outbox read answers 300 ms late):
 * the event is pushed, not left for the next submission. */
static void test_work_during_read(const pbt_daemon *b)
{
    pbt_daemon *a = pbt_daemon_new("subRead", NULL);
    bool up = pbt_daemon_start_faults(a, "delivery.slow-read");
    CHECKF(up, "read race: daemon started");
    if (!up) goto out;
    for (unsigned i = 0; i < 3; i++) {
        long st;
        json_decref(submit(a, b->server_id, events(4001 + i, 1), NULL, &st));
        CHECK_INT(st, 202);
        /* the next one is submitted as soon as this one is in: A reads its head again now */
        struct arrival arr = {b, a->server_id, event(4001 + i)};
        CHECKF(pbt_wait_for(sentinel_arrived, &arr, 10000),
               "read race: event %u arrives without another submission after it", i);
        json_decref(arr.sentinel);
    }
out:
    if (pbt_failed) pbt_daemon_dump_log(a);
    pbt_daemon_free(a);
}

static void run_backend(const char *store)
{
    fprintf(stderr, "submit_test: store %s\n", store);
    setenv("PBT_STORE", store, 1);
    const char *ax[] = {"--push-retries", "0", "--backoff-min", "3600", "--backoff-max",
                        "3600",           NULL};
    pbt_daemon *a = pbt_daemon_new("subA", ax), *b = pbt_daemon_new("subB", NULL);
    bool up = pbt_daemon_start(a) && pbt_daemon_start(b);
    CHECKF(up, "%s: daemons started", store);
    if (up) {
        char dead[64];
        snprintf(dead, sizeof dead, "127.0.0.1:%u", pbt_free_port());
        test_shapes(a, dead);
        test_delivered_once(a, b);
        test_staged_used(a, b, !strcmp(store, "postgres"));
        test_staged_dropped(b);
        test_work_during_read(b);
        test_concurrent(b, !strcmp(store, "postgres"));
    }
    if (pbt_failed) {
        pbt_daemon_dump_log(a);
        pbt_daemon_dump_log(b);
    }
    pbt_daemon_free(a);
    pbt_daemon_free(b);
    unsetenv("PBT_STORE");
}

static void flag(const char *dir, bool on)
{
    char p[600];
    snprintf(p, sizeof p, "%s/fsync", dir);
    if (on) {
        FILE *f = fopen(p, "w");
        CHECKF(f != NULL, "create %s", p);
        if (f) fclose(f);
    } else {
        CHECKF(unlink(p) == 0, "remove %s", p);
    }
}

/* The crash suite's case: 503 after a failed fsync, SIGKILL, restart, retry. */
static void test_fsync_crash_retry(void)
{
    pbt_daemon *d = pbt_daemon_new("subC", NULL);
    char *flags = pbt_tmpdir("subflags");
    const char *nobody = "127.0.0.1:1";
    setenv("PB_FAULT_VFS_DIR", flags, 1);
    bool up = pbt_daemon_start(d);
    CHECK(up);
    if (!up) goto out;
    flag(flags, true);
    long st;
    json_decref(submit(d, nobody, events(7, 1), json_string("c-1"), &st));
    CHECKF(st == 503, "fsync failing: the submission is refused with 503 (%ld)", st);
    pbt_daemon_kill(d);
    flag(flags, false);
    up = pbt_daemon_start(d);
    CHECK(up);
    if (!up) goto out;
    json_t *r = submit(d, nobody, events(7, 1), json_string("c-1"), &st);
    CHECKF(st == 202 && json_integer_value(json_object_get(r, "accepted")) == 1 &&
               json_is_boolean(json_object_get(r, "duplicate")),
           "the retry after the restart is accepted (%ld)", st);
    fprintf(stderr, "submit_test: after the crash the retry was %s\n",
            json_is_true(json_object_get(r, "duplicate")) ? "a duplicate (the refused commit "
                                                            "survived)"
                                                          : "new (the refused commit was lost)");
    json_decref(r);
    CHECKF(queued_for(d, nobody) == 1, "the event is queued exactly once: %lld",
           queued_for(d, nobody));
    expect(d, nobody, events(7, 1), "c-1", 1, true, "another retry");
out:
    unsetenv("PB_FAULT_VFS_DIR");
    if (pbt_failed) pbt_daemon_dump_log(d);
    pbt_daemon_free(d);
    pbt_rmrf(flags);
    free(flags);
}

int main(void)
{
    /* CTest runs this once per store: submit_test (SQLite) and submit_test_pg
     * (PBT_STORE=postgres). The fsync failure is SQLite's (lib/faultvfs.c). */
    const char *store = getenv("PBT_STORE");
    bool pg = store && !strcmp(store, "postgres");
    run_backend(pg ? "postgres" : "sqlite");
    if (!pg) test_fsync_crash_retry();
    return pbt_finish();
}
