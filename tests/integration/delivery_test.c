/*
 * delivery_test - the delivery engine end to end: real postboxd processes on 127.0.0.1
 * (plain HTTP between them), driven only through the admin API and the wire.
 *
 *   stream     N events of all four kinds A->B arrive in order, once, intact (max uint64,
 *              non-ASCII invite IDs); B's guild lists and invites equal a model
 *   catch-up   B stopped: A queues; B restarted: its start-up Pull and A's drain deliver
 *              everything once, in order; a Push during B's start-up Pull waits for it
 *   long-backlog  B down, then 200 events pulled by B alone: more than one contact's rounds
 *              and more than its receive budget, contact after contact, in order, once
 *   pull-pipeline  a pipelined Pull drain of 2,000 events in answers of 40, B killed
 *              (SIGKILL) mid-drain, then A: every event once, in order; the model holds
 *   pull-old-sender  the same with A answering as a postbox without postbox_from_seq:
 *              B notices and pulls one round at a time
 *   pull-ack   the pipelined drain's last answer is acknowledged at once (B refusing
 *              Pushes): A's queue empties without waiting for B's next Pull
 *   isolation  C pulls A with its own token: only its own (empty) queue; a token naming B
 *              signed by C's key is refused
 *   rename     A renames: B and C re-label; events B queued for A reach A under the new
 *              ID; forged renames are refused and change nothing
 *   parked     a peer answering 400: the event is parked, shown in peers and in /metrics
 *              (postbox_peer_parked{peer}), retried and
 *              dropped only by the admin calls
 *   bad admin  malformed admin requests get a 4xx and store nothing
 *
 * The kill-and-restart stream is in crash_test.c.
 */
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "crypto/auth.h"
#include "harness.h"
#include "store/store.h"
#include "net/hrpc_client.h"
#include "crypto/keys.h"
#include "wire/wire.h"

#define U64MAX "18446744073709551615"

/* ---- events and the model ---------------------------------------------------------------- */

/* Deterministic event i of a stream: all four kinds, extreme values, non-ASCII IDs. */
static json_t *gen_event(unsigned i)
{
    static const char *users[] = {"1", "2", "42", U64MAX};
    static const char *guilds[] = {"7", "99", U64MAX};
    const char *u = users[i % 4];
    const char *g = guilds[(i / 4) % 3];
    char inv[64];
    if (i % 3 == 0)
        snprintf(inv, sizeof inv, "приглашение-✓-%u", i % 17);
    else
        snprintf(inv, sizeof inv, "inv-%u", i % 13);
    switch (i % 5) {
    case 0:
    case 1:
        return json_pack("{s:{s:s,s:s}}", "userAddedToGuild", "userId", u, "guildId", g);
    case 2:
        return json_pack("{s:{s:s,s:s}}", "userRemovedFromGuild", "userId", u, "guildId", g);
    case 3:
        return json_pack("{s:{s:s,s:s,s:s}}", "userInvited", "userId", u, "inviterId", U64MAX,
                         "inviteId", inv);
    default:
        return json_pack("{s:{s:s,s:s,s:s}}", "userRejectedInvite", "guildId", g, "userId", u,
                         "inviteId", inv);
    }
}

/* Submits events [from, to) of the stream A->dest in batches; returns false on refusal. */
static bool submit_range(const pbt_daemon *a, const char *dest, unsigned from, unsigned to,
                         json_t *all)
{
    while (from < to) {
        unsigned end = from + 500 < to ? from + 500 : to;
        json_t *evs = json_array();
        for (unsigned i = from; i < end; i++) {
            json_t *e = gen_event(i);
            json_array_append(evs, e);
            if (all) json_array_append(all, e);
            json_decref(e);
        }
        long st;
        json_t *r = pbt_admin(a, "POST", "/v1/outbox",
                              json_pack("{s:s,s:o}", "to", dest, "events", evs), &st);
        bool ok = st == 202 &&
                  json_integer_value(json_object_get(r, "accepted")) == (json_int_t)(end - from);
        json_decref(r);
        CHECKF(ok, "submit %u..%u to %s: status %ld", from, end, dest, st);
        if (!ok) return false;
        from = end;
    }
    return true;
}

struct count_wait {
    const pbt_daemon *d;
    const char *from;
    size_t want;
    size_t have;
};

static bool have_count(void *vctx)
{
    struct count_wait *w = vctx;
    json_t *evs = pbt_inbox_events_from(w->d, w->from);
    w->have = json_array_size(evs);
    json_decref(evs);
    return w->have >= w->want;
}

/* Waits until d's inbox holds `want` events from `from`; then checks they equal `sent`
 * exactly: nothing lost, nothing duplicated, nothing reordered, values intact. */
static void expect_delivered(const pbt_daemon *d, const char *from, json_t *sent, int timeout_ms,
                             const char *what)
{
    struct count_wait w = {d, from, json_array_size(sent), 0};
    bool ok = pbt_wait_for(have_count, &w, timeout_ms);
    CHECKF(ok, "%s: %zu of %zu events arrived in %d ms", what, w.have, w.want, timeout_ms);
    json_t *got = pbt_inbox_events_from(d, from);
    size_t n = json_array_size(got), m = json_array_size(sent);
    size_t bad = 0, first_bad = 0;
    for (size_t i = 0; i < n && i < m; i++) {
        if (!json_equal(json_array_get(got, i), json_array_get(sent, i))) {
            if (!bad) first_bad = i;
            bad++;
        }
    }
    CHECKF(n == m, "%s: %zu events in the inbox, %zu sent (duplicates or loss)", what, n, m);
    CHECKF(bad == 0, "%s: %zu events differ or are out of order, first at %zu", what, bad,
           first_bad);
    json_decref(got);
}

/* The model of B's guild lists and invites after `sent` from `server`. */
static void check_model(const pbt_daemon *b, const char *server, json_t *sent)
{
    static const char *users[] = {"1", "2", "42", U64MAX};
    for (int u = 0; u < 4; u++) {
        /* guilds: apply adds/removes in order */
        json_t *guilds = json_object(), *invites = json_object();
        size_t i;
        json_t *e;
        json_array_foreach(sent, i, e)
        {
            void *iter = json_object_iter(e);
            const char *kind = json_object_iter_key(iter);
            json_t *f = json_object_iter_value(iter);
            if (strcmp(json_string_value(json_object_get(f, "userId")), users[u])) continue;
            const char *g = json_string_value(json_object_get(f, "guildId"));
            if (!strcmp(kind, "userAddedToGuild")) json_object_set_new(guilds, g, json_true());
            if (!strcmp(kind, "userRemovedFromGuild")) json_object_del(guilds, g);
            if (!strcmp(kind, "userInvited"))
                json_object_set(invites, json_string_value(json_object_get(f, "inviteId")),
                                json_object_get(f, "inviterId"));
        }
        char path[128];
        snprintf(path, sizeof path, "/v1/users/%s/guilds", users[u]);
        long st;
        json_t *r = pbt_admin(b, "GET", path, NULL, &st);
        json_t *list = json_object_get(r, "guilds");
        CHECKF(json_array_size(list) == json_object_size(guilds), "user %s: %zu guilds, model %zu",
               users[u], json_array_size(list), json_object_size(guilds));
        json_array_foreach(list, i, e)
        {
            const char *g = json_string_value(json_object_get(e, "guildId"));
            CHECKF(json_object_get(guilds, g) != NULL, "user %s: unexpected guild %s", users[u], g);
            CHECK_STR(json_string_value(json_object_get(e, "serverId")), server);
        }
        json_decref(r);
        snprintf(path, sizeof path, "/v1/users/%s/invites", users[u]);
        r = pbt_admin(b, "GET", path, NULL, &st);
        list = json_object_get(r, "pendingInvites");
        CHECKF(json_array_size(list) == json_object_size(invites),
               "user %s: %zu invites, model %zu", users[u], json_array_size(list),
               json_object_size(invites));
        json_array_foreach(list, i, e)
        {
            const char *id = json_string_value(json_object_get(e, "inviteId"));
            json_t *inviter = json_object_get(invites, id);
            CHECKF(inviter && json_equal(inviter, json_object_get(e, "inviterId")),
                   "user %s: invite %s", users[u], id);
            CHECK_STR(json_string_value(json_object_get(e, "serverId")), server);
        }
        json_decref(r);
        json_decref(guilds);
        json_decref(invites);
    }
}

/* The peers entry for id on d (new reference) or NULL. */
static json_t *peer_entry(const pbt_daemon *d, const char *id)
{
    long st;
    json_t *r = pbt_admin(d, "GET", "/v1/peers", NULL, &st), *found = NULL;
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(r, "peers"), i, p)
    {
        if (!strcmp(json_string_value(json_object_get(p, "server_id")), id)) {
            found = p;
            json_incref(found);
        }
    }
    json_decref(r);
    return found;
}

struct queue_wait {
    const pbt_daemon *d;
    const char *peer;
    long long queued;
};

/* d's queue for the peer is empty: d has forgotten everything the peer acknowledged,
 * which it does after the peer's answer, so after the events are in the peer's inbox. */
static bool queue_empty(void *vctx)
{
    struct queue_wait *w = vctx;
    json_t *p = peer_entry(w->d, w->peer);
    w->queued = p ? json_integer_value(json_object_get(p, "queued")) : -1;
    json_decref(p);
    return w->queued == 0;
}

struct mode_wait {
    const pbt_daemon *d;
    const char *peer;
    const char *mode;
};

static bool peer_in_mode(void *vctx)
{
    struct mode_wait *w = vctx;
    json_t *p = peer_entry(w->d, w->peer);
    bool ok = p && !strcmp(json_string_value(json_object_get(p, "mode")), w->mode);
    json_decref(p);
    return ok;
}

/* Lines of d's log (all its runs) holding every one of the two needles (b may be NULL). */
static int log_count(const pbt_daemon *d, const char *a, const char *b)
{
    FILE *f = fopen(d->log_path, "r");
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, a) && (!b || strstr(line, b))) n++;
    if (f) fclose(f);
    return n;
}

static bool log_has(const pbt_daemon *d, const char *needle)
{
    return log_count(d, needle, NULL) > 0;
}

struct count_lines {
    const pbt_daemon *d;
    const char *a, *b;
    int more_than;
};

static bool log_grew(void *vctx)
{
    struct count_lines *c = vctx;
    return log_count(c->d, c->a, c->b) > c->more_than;
}

struct log_wait {
    const pbt_daemon *d;
    const char *needle;
};

static bool log_wait_has(void *vctx)
{
    struct log_wait *w = vctx;
    return log_has(w->d, w->needle);
}

static pbt_daemon *start(const char *tag, const char *const *extra)
{
    pbt_daemon *d = pbt_daemon_new(tag, extra);
    CHECKF(pbt_daemon_start(d), "%s starts", tag);
    return d;
}

/* ---- scenarios ------------------------------------------------------------------------------ */

static void test_stream(unsigned n)
{
    pbt_daemon *a = start("streamA", NULL), *b = start("streamB", NULL);
    json_t *sent = json_array();
    int64_t t0 = pbt_now_ms();
    submit_range(a, b->server_id, 0, n, sent);
    expect_delivered(b, a->server_id, sent, 240000, "stream");
    fprintf(stderr, "stream: %u events A->B in %lld ms\n", n, (long long)(pbt_now_ms() - t0));
    check_model(b, a->server_id, sent);
    /* A forgets what B has: its queue for B empties (B commits, then answers; A forgets
     * after the answer, so the queue may still hold the last batch when B's inbox has it) */
    struct queue_wait qw = {a, b->server_id, -1};
    CHECKF(pbt_wait_for(queue_empty, &qw, PBT_BOUND_MS), "A's queue for B empty: %lld", qw.queued);
    json_t *p = peer_entry(a, b->server_id);
    CHECKF(p && !strcmp(json_string_value(json_object_get(p, "mode")), "push"), "push mode");
    json_decref(p);
    /* each inbox item carries the notice the homeserver passes on */
    json_t *all = pbt_inbox_all(b, NULL);
    json_t *first = json_array_get(all, 0);
    CHECK(json_object_get(json_object_get(first, "notice"), "guildAddedToList") != NULL);
    json_decref(all);
    json_decref(sent);
    pbt_daemon_free(a);
    pbt_daemon_free(b);
}

static void test_catch_up(void)
{
    const char *ax[] = {"--push-retries",
                        "2",
                        "--retry-base-ms",
                        "10",
                        "--backoff-min",
                        "1",
                        "--backoff-max",
                        "2",
                        NULL};
    setenv("PB_FAULTS", "delivery.slow-pull-answer", 1);
    pbt_daemon *a = start("catchA", ax);
    unsetenv("PB_FAULTS");
    pbt_daemon *b = start("catchB", NULL);
    json_t *sent = json_array();
    submit_range(a, b->server_id, 0, 10, sent);
    expect_delivered(b, a->server_id, sent, 30000, "before the stop");

    CHECK_INT(pbt_daemon_stop(b), 0);
    submit_range(a, b->server_id, 10, 310, sent);
    struct mode_wait mw = {a, b->server_id, "queued"};
    CHECKF(pbt_wait_for(peer_in_mode, &mw, 30000), "A queues for the stopped B");
    json_t *p = peer_entry(a, b->server_id);
    CHECKF(p && json_integer_value(json_object_get(p, "queued")) >= 290, "queued count");
    CHECKF(p && json_is_string(json_object_get(p, "last_error")), "last_error shown");
    json_decref(p);

    CHECK(pbt_daemon_start(b));
    expect_delivered(b, a->server_id, sent, 60000, "after the restart");
    struct log_wait lw = {b, "processed after our Pull"};
    CHECKF(pbt_wait_for(log_wait_has, &lw, PBT_BOUND_MS),
           "a Push that arrived during B's start-up Pull waited for it");
    submit_range(a, b->server_id, 310, 360, sent);
    expect_delivered(b, a->server_id, sent, 30000, "new events after the catch-up");
    mw.mode = "push";
    CHECKF(pbt_wait_for(peer_in_mode, &mw, 30000), "A back in push mode");
    json_decref(sent);
    pbt_daemon_free(a);
    pbt_daemon_free(b);
}

/* A backlog larger than one Pull contact and than B's receive budget drains by B's Pulls
 * alone (A has given up pushing for an hour): contact after contact, and again each time the
 * budget refills, in order and once. */
static void test_long_backlog(void)
{
    const char *ax[] = {"--push-retries",
                        "0",
                        "--backoff-min",
                        "3600",
                        "--backoff-max",
                        "3600",
                        "--pull-batch",
                        "10",
                        NULL};
    const char *bx[] = {
        "--pull-rounds", "2", "--recv-budget-events", "60", "--recv-budget-interval", "2", NULL};
    pbt_daemon *a = start("backlogA", ax), *b = start("backlogB", bx);
    json_t *sent = json_array();
    submit_range(a, b->server_id, 0, 1, sent);
    expect_delivered(b, a->server_id, sent, 30000, "before the stop");
    CHECK_INT(pbt_daemon_stop(b), 0);
    submit_range(a, b->server_id, 1, 201, sent);
    struct mode_wait mw = {a, b->server_id, "queued"};
    CHECKF(pbt_wait_for(peer_in_mode, &mw, 30000), "A queues for the stopped B");
    /* 200 events: 10 contacts of 2 answers of 10, and the budget of 60 refills 3 times */
    int64_t t0 = pbt_now_ms();
    CHECK(pbt_daemon_start(b));
    expect_delivered(b, a->server_id, sent, 30000, "the backlog after B's restart");
    fprintf(stderr, "long backlog: 200 events pulled in %lld ms\n", (long long)(pbt_now_ms() - t0));
    struct log_wait lw = {b, "receive budget used"};
    CHECKF(pbt_wait_for(log_wait_has, &lw, PBT_BOUND_MS), "B's budget was used on the way");
    json_decref(sent);
    pbt_daemon_free(a);
    pbt_daemon_free(b);
}

/* Does d's inbox hold an item past seq k (more than k items, none ever removed)? */
static bool inbox_past(const pbt_daemon *d, long long k)
{
    char path[96];
    snprintf(path, sizeof path, "/v1/inbox?after=%lld&limit=1", k);
    long st;
    json_t *r = pbt_admin(d, "GET", path, NULL, &st);
    bool past = st == 200 && json_array_size(json_object_get(r, "events")) > 0;
    json_decref(r);
    return past;
}

struct past_wait {
    const pbt_daemon *d;
    long long k;
};

static bool past_wait_fn(void *ctx)
{
    struct past_wait *w = ctx;
    return inbox_past(w->d, w->k);
}

/* A of the Pull scenarios: never pushes again once B is down (only B's Pulls drain it),
 * answers Pulls 40 events at a time. */
static const char *const PULL_A[] = {"--push-retries",
                                     "0",
                                     "--backoff-min",
                                     "3600",
                                     "--backoff-max",
                                     "3600",
                                     "--pull-batch",
                                     "40",
                                     NULL};

/* A pipelined Pull drain (PROTOCOL.md 5 "Pull answers": the next range asked for before
 * the previous answer is applied) of a queue of n events, in answers of 40: B is killed
 * (SIGKILL) mid-drain and restarted, then A is, and B's next start-up Pull finishes it.
 * Every event arrives once, in order, and B's guild lists and invites equal the model.
 * old_sender: A answers as a postbox that does not know postbox_from_seq (a fault point):
 * B notices it from the answers' numbers and pulls one round at a time. B applies each
 * answer 30 ms slowly (a fault point), so that the kills land mid-drain. */
static void test_pull_pipeline(unsigned n, bool old_sender)
{
    const char *a_faults = old_sender ? "delivery.pull-ignore-from" : "";
    setenv("PB_FAULTS", a_faults, 1);
    pbt_daemon *a = start(old_sender ? "pipeOldA" : "pipeA", PULL_A);
    setenv("PB_FAULTS", "delivery.slow-pull-apply", 1);
    pbt_daemon *b = start(old_sender ? "pipeOldB" : "pipeB", NULL);
    json_t *sent = json_array();
    submit_range(a, b->server_id, 0, 1, sent);
    expect_delivered(b, a->server_id, sent, 30000, "before the stop");
    CHECK_INT(pbt_daemon_stop(b), 0);
    submit_range(a, b->server_id, 1, n + 1, sent);
    struct mode_wait mw = {a, b->server_id, "queued"};
    CHECKF(pbt_wait_for(peer_in_mode, &mw, 30000), "A queues for the stopped B");

    /* B's start-up Pull drains A; B is killed a quarter of the way */
    CHECK(pbt_daemon_start(b));
    struct past_wait pw = {b, 1 + n / 4};
    CHECKF(pbt_wait_for(past_wait_fn, &pw, 60000), "B pulled a quarter");
    CHECKF(!inbox_past(b, n), "B was killed mid-drain (not after it)");
    pbt_daemon_kill(b);
    CHECK(pbt_daemon_start(b));
    /* ... and A (the sender) half of the way; B's next start-up Pull goes on */
    pw.k = 1 + n / 2;
    CHECKF(pbt_wait_for(past_wait_fn, &pw, 60000), "B pulled half");
    CHECKF(!inbox_past(b, n), "A was killed mid-drain (not after it)");
    setenv("PB_FAULTS", a_faults, 1);
    pbt_daemon_kill(a);
    CHECK(pbt_daemon_start(a));
    setenv("PB_FAULTS", "delivery.slow-pull-apply", 1);
    CHECK_INT(pbt_daemon_stop(b), 0);
    CHECK(pbt_daemon_start(b));
    unsetenv("PB_FAULTS");
    expect_delivered(b, a->server_id, sent, 120000, "the pipelined drain");
    check_model(b, a->server_id, sent);
    /* the pipelined path was taken, or (old sender) it was noticed and left */
    int piped = pbt_log_count(a, "pipelined pull: answered from", NULL);
    int noticed = pbt_log_count(b, "an older postbox", NULL);
    if (old_sender) {
        CHECKF(piped == 0 && noticed > 0, "old sender: %d pipelined answers, noticed %d times",
               piped, noticed);
    } else {
        CHECKF(piped > 0 && noticed == 0, "%d pipelined answers, %d older-sender notices", piped,
               noticed);
    }
    json_decref(sent);
    pbt_daemon_free(a);
    pbt_daemon_free(b);
}

/* The end of a pipelined drain is acknowledged: B, restarted refusing every Push (a fault point),
 * can tell A what it holds only with its Pulls. A queues 100 events; B's start-up Pull takes them
 * in answers of 40; the request after the last answer leaves before that answer is applied
 * (so it cannot acknowledge it) and is answered empty. A must forget the last answer's
 * events at once, not at B's next Pull (pull_interval, 60 s) or through a Push: a queue
 * left holding delivered events counts them as dropped or expired if the operator drops or
 * the age limit comes first (seen in queuectl_nodes_test: "expired 5 events (4 queued)"). */
static void test_pull_ack(void)
{
    pbt_daemon *a = start("ackA", PULL_A), *b = start("ackB", NULL);
    json_t *sent = json_array();
    submit_range(a, b->server_id, 0, 1, sent); /* B knows A: it pulls A at start-up */
    expect_delivered(b, a->server_id, sent, 30000, "before the stop");
    CHECK_INT(pbt_daemon_stop(b), 0);
    submit_range(a, b->server_id, 1, 101, sent);
    struct mode_wait mw = {a, b->server_id, "queued"};
    CHECKF(pbt_wait_for(peer_in_mode, &mw, 30000), "A queues for the stopped B");
    int pushes = log_count(b, "push received", NULL);
    setenv("PB_FAULTS", "delivery.unavailable-push,delivery.slow-pull-apply", 1);
    CHECK(pbt_daemon_start(b));
    unsetenv("PB_FAULTS");
    expect_delivered(b, a->server_id, sent, 30000, "the drain");
    CHECKF(log_count(a, "pipelined pull: answered from", NULL) > 0, "the drain was pipelined");
    struct queue_wait qw = {a, b->server_id, -1};
    CHECKF(pbt_wait_for(queue_empty, &qw, 10000),
           "A forgot every pulled event once B applied them: %lld still queued", qw.queued);
    CHECKF(log_count(b, "push received", NULL) == pushes,
           "no Push was applied at B after its restart (the fault refused them)");
    json_decref(sent);
    pbt_daemon_free(a);
    pbt_daemon_free(b);
}

static pb_keys *keys_of(const pbt_daemon *d)
{
    char path[600];
    snprintf(path, sizeof path, "%s/key", d->dir);
    pb_keys *k = NULL;
    CHECK_OK(pb_keys_load(path, &k));
    return k;
}

/* A raw hRPC call to d with a token naming `as`, signed by k. */
static pb_err raw_call(const pbt_daemon *d, const pb_keys *k, const char *as, const char *path,
                       const pb_buf *body, pb_client_answer *ans)
{
    pb_client *cl = NULL;
    pb_client_opts co = {.plain_http = true, .allow_private = true};
    pb_client_new(&co, &cl);
    char *t = pb_auth_header_make(k, as, NULL, (uint64_t)time(NULL));
    pb_err err = pb_client_call(cl, d->server_id, path, t, body->data, body->len, ans);
    free(t);
    pb_client_free(cl);
    return err;
}

static size_t pull_count(const pbt_daemon *a, const pb_keys *k, const char *as, long *status)
{
    pb_buf req = PB_BUF_INIT;
    pb_wire_pull_req_encode(&(pb_pull_req){.next_seq = 1},
                            &req); /* next_seq 1: acknowledges nothing, deletes nothing */
    pb_client_answer ans;
    pb_err err = raw_call(a, k, as, "/protocol.sync.v1.PostboxService/Pull", &req, &ans);
    pb_buf_free(&req);
    *status = ans.status;
    size_t n = 0;
    if (err == PB_OK) {
        pb_event *evs = NULL;
        uint64_t *seqs = NULL;
        if (pb_wire_pull_resp_decode(ans.body, ans.body_len, &evs, &seqs, &n, &(uint64_t){0}) ==
            PB_OK) {
            for (size_t i = 0; i < n; i++)
                pb_event_clear(&evs[i]);
            free(evs);
            free(seqs);
        }
    }
    pb_client_answer_clear(&ans);
    return n;
}

static void test_isolation(void)
{
    const char *ax[] = {"--push-retries", "0", "--backoff-min", "3600", "--backoff-max",
                        "3600",           NULL};
    pbt_daemon *a = start("isoA", ax), *b = start("isoB", NULL), *c = start("isoC", NULL);
    /* B -> A once, so that A holds B's key */
    json_t *one = json_array();
    submit_range(b, a->server_id, 0, 1, one);
    expect_delivered(a, b->server_id, one, 30000, "B->A");
    json_decref(one);
    CHECK_INT(pbt_daemon_stop(b), 0);
    submit_range(a, b->server_id, 0, 20, NULL);
    struct mode_wait mw = {a, b->server_id, "queued"};
    CHECK(pbt_wait_for(peer_in_mode, &mw, 30000));

    pb_keys *kb = keys_of(b), *kc = keys_of(c);
    long st;
    CHECK_INT(pull_count(a, kc, c->server_id, &st), 0);
    CHECKF(st == 200, "C's own Pull: %ld", st);
    size_t n = pull_count(a, kc, b->server_id, &st);
    CHECKF(st == 401 && n == 0, "token naming B signed by C: %ld", st);
    n = pull_count(a, kb, b->server_id, &st);
    CHECKF(st == 200 && n == 20, "B's own Pull gets B's 20 events: %ld, %zu", st, n);
    pb_keys_free(kb);
    pb_keys_free(kc);
    pbt_daemon_free(a);
    pbt_daemon_free(b);
    pbt_daemon_free(c);
}

/* libcurl refuses every transfer (fault point ioloop.add-refused, as curl_multi_add_handle
 * out of memory): A's Pushes to B fail as a network failure would, the events stay in A's
 * queue (B's peer record goes to queued), the log says why, A stops cleanly; started
 * again without the fault, A delivers all of them, once. */
static void test_transfers_refused(void)
{
    const char *ax[] = {"--push-retries", "0", "--backoff-min", "1", "--backoff-max", "1", NULL};
    pbt_daemon *b = start("refB", NULL);
    setenv("PB_FAULTS", "ioloop.add-refused", 1);
    pbt_daemon *a = start("refA", ax);
    unsetenv("PB_FAULTS");
    json_t *sent = json_array();
    submit_range(a, b->server_id, 0, 5, sent);
    struct mode_wait mw = {a, b->server_id, "queued"};
    CHECK(pbt_wait_for(peer_in_mode, &mw, 30000));
    CHECK(log_has(a, "curl_multi_add_handle: Out of memory"));
    json_t *inbox = pbt_inbox_all(b, NULL);
    CHECKF(inbox && json_array_size(inbox) == 0, "nothing reached B");
    json_decref(inbox);
    CHECK_INT(pbt_daemon_stop(a), 0);
    CHECK(pbt_daemon_start(a));
    expect_delivered(b, a->server_id, sent, 30000, "A->B once libcurl takes transfers again");
    json_decref(sent);
    pbt_daemon_free(a);
    pbt_daemon_free(b);
}

static void test_rename(void)
{
    pbt_daemon *a = start("renA", NULL);
    const char *bx[] = {"--push-retries", "0", "--backoff-min", "3600", "--backoff-max",
                        "3600",           NULL};
    pbt_daemon *b = start("renB", bx), *c = start("renC", NULL);
    json_t *to_b = json_array(), *to_c = json_array();
    submit_range(a, b->server_id, 0, 20, to_b);
    submit_range(a, c->server_id, 0, 5, to_c);
    expect_delivered(b, a->server_id, to_b, 30000, "A->B before the rename");
    expect_delivered(c, a->server_id, to_c, 30000, "A->C before the rename");

    /* A refuses Pushes for a while: B's events for A wait in B's queue. A's start-up Pull
     * of B must be over first, or it would fetch them. */
    char peer_b[80];
    snprintf(peer_b, sizeof peer_b, "peer=%s ", b->server_id);
    struct count_lines cl = {a, peer_b, "pull finished", 0};
    CHECK_INT(pbt_daemon_stop(a), 0);
    cl.more_than = log_count(a, peer_b, "pull finished");
    setenv("PB_FAULTS", "delivery.unavailable-push", 1);
    CHECK(pbt_daemon_start(a));
    unsetenv("PB_FAULTS");
    CHECKF(pbt_wait_for(log_grew, &cl, 30000), "A's start-up Pull of B finished");
    json_t *b_to_a = json_array();
    submit_range(b, a->server_id, 100, 105, b_to_a);
    struct mode_wait mw = {b, a->server_id, "queued"};
    CHECK(pbt_wait_for(peer_in_mode, &mw, 30000));

    /* forged renames first: each refused, nothing changes at B */
    json_t *inbox_before = pbt_inbox_all(b, NULL);
    pb_keys *ka = keys_of(a), *kx = NULL;
    pb_keys_generate(&kx);
    pb_buf body = PB_BUF_INIT;
    pb_wire_notify_encode(c->server_id, NULL, 0, &body); /* C serves another key */
    pb_client_answer ans;
    raw_call(b, ka, a->server_id, "/protocol.sync.v1.PostboxService/NotifyNewId", &body, &ans);
    CHECKF(ans.status == 403, "rename to an ID serving another key: %ld", ans.status);
    pb_client_answer_clear(&ans);
    raw_call(b, kx, "127.0.0.1:1", "/protocol.sync.v1.PostboxService/NotifyNewId", &body, &ans);
    CHECKF(ans.status == 403, "rename from an unknown ID: %ld", ans.status);
    pb_client_answer_clear(&ans);
    raw_call(b, kx, a->server_id, "/protocol.sync.v1.PostboxService/NotifyNewId", &body, &ans);
    CHECKF(ans.status == 401, "rename with a token A did not sign: %ld", ans.status);
    pb_client_answer_clear(&ans);
    pb_buf_free(&body);
    json_t *inbox_after = pbt_inbox_all(b, NULL);
    CHECK(json_equal(inbox_before, inbox_after));
    json_decref(inbox_after);
    json_t *p = peer_entry(b, a->server_id);
    CHECKF(p != NULL, "B still knows A under its old ID");
    json_decref(p);

    /* the real rename */
    char new_id[64];
    snprintf(new_id, sizeof new_id, "localhost:%u", a->port);
    long st;
    json_t *r =
        pbt_admin(a, "POST", "/v1/rename", json_pack("{s:s}", "new_server_id", new_id), &st);
    CHECKF(st == 200, "rename: %ld", st);
    CHECK_STR(json_string_value(json_object_get(r, "server_id")), new_id);
    size_t i;
    json_t *e;
    size_t oks = 0;
    json_array_foreach(json_object_get(r, "peers"), i, e) oks +=
        json_is_true(json_object_get(e, "ok"));
    CHECKF(oks == 2, "both peers accepted the rename (%zu)", oks);
    json_decref(r);

    /* B and C re-labelled */
    p = peer_entry(b, a->server_id);
    CHECKF(p == NULL, "B forgot the old ID");
    json_decref(p);
    p = peer_entry(b, new_id);
    CHECKF(p && json_integer_value(json_object_get(p, "queued")) == 5, "B's queue moved");
    json_decref(p);
    p = peer_entry(c, new_id);
    CHECK(p != NULL);
    json_decref(p);
    check_model(b, new_id, to_b);
    json_t *all = pbt_inbox_all(b, NULL);
    json_t *last = json_array_get(all, json_array_size(all) - 1);
    json_t *rn = json_object_get(json_object_get(last, "event"), "serverRenamed");
    CHECK_STR(json_string_value(json_object_get(rn, "oldServerId")), a->server_id);
    CHECK_STR(json_string_value(json_object_get(rn, "newServerId")), new_id);
    json_decref(all);

    /* A restarts without the fault (its config still names the old ID): the events B
     * queued before the rename reach A under the new ID */
    CHECK_INT(pbt_daemon_stop(a), 0);
    CHECK(pbt_daemon_start(a));
    r = pbt_admin(a, "GET", "/v1/key", NULL, &st);
    CHECK_STR(json_string_value(json_object_get(r, "server_id")), new_id);
    json_decref(r);
    expect_delivered(a, b->server_id, b_to_a, 30000, "B's queued events reach the renamed A");
    /* and A's new events reach B from the new ID */
    json_t *more = json_array();
    submit_range(a, b->server_id, 500, 510, more);
    expect_delivered(b, new_id, more, 30000, "A->B after the rename");

    json_decref(more);
    json_decref(b_to_a);
    json_decref(to_b);
    json_decref(to_c);
    json_decref(inbox_before);
    pb_keys_free(ka);
    pb_keys_free(kx);
    pbt_daemon_free(a);
    pbt_daemon_free(b);
    pbt_daemon_free(c);
}

/* The mode d's store holds for peer (d stopped), or -1. */
static int stored_mode(const pbt_daemon *d, const char *peer)
{
    char spec[4096];
    snprintf(spec, sizeof spec, "sqlite:%s/postbox.db", d->dir);
    for (int i = 0; i + 1 < d->nargs; i++)
        if (!strcmp(d->args[i], "--store")) snprintf(spec, sizeof spec, "%s", d->args[i + 1]);
    pb_store *s = NULL;
    int mode = -1;
    pb_peer_state st;
    if (pb_store_open(spec, NULL, &s) == PB_OK && pb_store_peer_state_get(s, peer, &st) == PB_OK) {
        mode = (int)st.mode;
        pb_peer_state_clear(&st);
    }
    pb_store_close(s);
    return mode;
}

static void test_parked(void)
{
    const char *ax[] = {"--retry-base-ms", "10", NULL};
    /* A's writes of "pushing" take 1 s more: the retry's write of it must still not land
     * after the "parked" that follows it (they were once concurrent, and the store kept the
     * older state under load) */
    setenv("PB_FAULTS", "delivery.slow-persist-push", 1);
    pbt_daemon *a = start("parkA", ax);
    setenv("PB_FAULTS", "delivery.refuse-push-400", 1);
    pbt_daemon *b = start("parkB", NULL);
    unsetenv("PB_FAULTS");
    json_t *sent = json_array();
    submit_range(a, b->server_id, 0, 3, sent);
    struct mode_wait mw = {a, b->server_id, "parked"};
    CHECK(pbt_wait_for(peer_in_mode, &mw, 30000));
    json_t *p = peer_entry(a, b->server_id);
    const char *err = json_string_value(json_object_get(p, "last_error"));
    CHECKF(err && strstr(err, "h.test-refusal"), "last_error names the refusal: %s",
           err ? err : "(null)");
    CHECK_INT(json_integer_value(json_object_get(p, "queued")), 3);
    json_decref(p);
    /* /metrics names the parked peer (the PostboxPeerParked alert's series) */
    char series[160];
    snprintf(series, sizeof series, "postbox_peer_parked{peer=\"%s\"}", b->server_id);
    CHECKF(pbt_metric(a, series) == 1, "%s = %g", series, pbt_metric(a, series));
    /* retry while B still refuses: parked again, nothing delivered, nothing dropped */
    long st;
    json_t *r;
    char path[128];
    snprintf(path, sizeof path, "/v1/peers/%s/retry", b->server_id);
    r = pbt_admin(a, "POST", path, NULL, &st);
    CHECKF(st == 200, "retry: %ld", st);
    json_decref(r);
    if (!pbt_wait_for(peer_in_mode, &mw, 30000)) {
        CHECK(!"parked again after the retry");
        p = peer_entry(a, b->server_id);
        char *txt = p ? json_dumps(p, JSON_COMPACT) : NULL;
        fprintf(stderr, "A's view of B: %s\n", txt ? txt : "(none)");
        free(txt);
        json_decref(p);
        pbt_daemon_dump_log(a);
        pbt_daemon_dump_log(b);
    }
    p = peer_entry(a, b->server_id);
    CHECK_INT(json_integer_value(json_object_get(p, "queued")), 3);
    json_decref(p);
    json_t *got = pbt_inbox_events_from(b, a->server_id);
    CHECK_INT(json_array_size(got), 0);
    json_decref(got);
    /* what A's store kept is what A decided last (a stop waits for A's writes): B parked,
     * read from the store itself while A is stopped */
    CHECK_INT(pbt_daemon_stop(a), 0);
    CHECKF(stored_mode(a, b->server_id) == PB_MODE_PARKED, "A's store holds B parked (mode %d)",
           (int)stored_mode(a, b->server_id));
    CHECK(pbt_daemon_start(a));

    /* drop the parked first event; B accepts again: the other two arrive, in order */
    CHECK_INT(pbt_daemon_stop(b), 0);
    CHECK(pbt_daemon_start(b));
    snprintf(path, sizeof path, "/v1/peers/%s/drop-parked", b->server_id);
    r = pbt_admin(a, "POST", path, NULL, &st);
    CHECKF(st == 200, "drop-parked: %ld", st);
    json_decref(r);
    json_array_remove(sent, 0);
    expect_delivered(b, a->server_id, sent, 30000, "after drop-parked");
    r = pbt_admin(a, "POST", path, NULL, &st);
    CHECKF(st == 409, "drop-parked when not parked: %ld", st);
    json_decref(r);
    CHECKF(pbt_metric(a, series) == -1, "no %s once it is not parked", series);
    json_decref(sent);
    pbt_daemon_free(a);
    pbt_daemon_free(b);
}

static void test_bad_admin(void)
{
    pbt_daemon *a = start("badA", NULL);
    struct {
        const char *method, *path, *body;
        long status;
    } rows[] = {
        {"POST", "/v1/outbox", "{not json", 400},
        {"POST", "/v1/outbox", "[]", 400},
        {"POST", "/v1/outbox", "{\"to\":\"b.example:1\"}", 400},
        {"POST", "/v1/outbox", "{\"to\":\"no port\",\"event\":{\"userAddedToGuild\":{}}}", 400},
        {"POST", "/v1/outbox", "{\"to\":\"b.example:1\",\"event\":{\"userExploded\":{}}}", 400},
        {"POST", "/v1/outbox",
         "{\"to\":\"b.example:1\",\"event\":{\"userAddedToGuild\":{\"userId\":\"-1\"}}}", 400},
        {"POST", "/v1/outbox",
         "{\"to\":\"b.example:1\",\"events\":[{\"userAddedToGuild\":{}},{\"nope\":{}}]}", 400},
        {"POST", "/v1/outbox", "{\"to\":\"b.example:1\",\"events\":[]}", 400},
        {"POST", "/v1/outbox",
         "{\"to\":\"b.example:1\",\"event\":{\"userAddedToGuild\":{}},\"extra\":1}", 400},
        {"POST", "/v1/outbox",
         "{\"to\":\"b.example:1\",\"event\":{\"userAddedToGuild\":{}},"
         "\"events\":[]}",
         400},
        {"GET", "/v1/outbox", NULL, 405},
        {"GET", "/v1/nothing", NULL, 404},
        {"GET", "/v1/users/abc/guilds", NULL, 400},
        {"GET", "/v1/users/-1/invites", NULL, 400},
        {"GET", "/v1/inbox?limit=0", NULL, 400},
        {"GET", "/v1/inbox?wait=9999", NULL, 400},
        {"GET", "/v1/inbox?after=x", NULL, 400},
        {"POST", "/v1/rename", "{\"new_server_id\":\"bad id\"}", 400},
        {"POST", "/v1/rename", "{}", 400},
        {"POST", "/v1/peers/nope/retry", NULL, 400},
        {"POST", "/v1/peers/unknown.example:1/retry", NULL, 404},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const char *hdrs[] = {"Content-Type: application/json", NULL};
        pbt_http h;
        pbt_http_do("http", a->admin_port, rows[i].method, rows[i].path, hdrs, rows[i].body,
                    rows[i].body ? strlen(rows[i].body) : 0, NULL, &h);
        CHECKF(h.status == rows[i].status, "%s %s %s: %ld, want %ld", rows[i].method, rows[i].path,
               rows[i].body ? rows[i].body : "", h.status, rows[i].status);
        json_t *j = h.body_len ? json_loadb((char *)h.body, h.body_len, 0, NULL) : NULL;
        CHECKF(json_is_string(json_object_get(j, "error")), "%s %s: {\"error\": ...}",
               rows[i].method, rows[i].path);
        json_decref(j);
        pbt_http_clear(&h);
    }
    /* sending to itself, and a body over the limit */
    char body[256];
    snprintf(body, sizeof body,
             "{\"to\":\"%s\",\"event\":{\"userAddedToGuild\":{\"userId\":\"1\"}}}", a->server_id);
    const char *hdrs[] = {"Content-Type: application/json", NULL};
    pbt_http h;
    pbt_http_do("http", a->admin_port, "POST", "/v1/outbox", hdrs, body, strlen(body), NULL, &h);
    CHECKF(h.status == 400, "send to itself: %ld", h.status);
    pbt_http_clear(&h);
    size_t big = 2 * 1024 * 1024;
    char *blob = malloc(big);
    memset(blob, ' ', big);
    blob[0] = '{';
    blob[big - 1] = '}';
    pbt_http_do("http", a->admin_port, "POST", "/v1/outbox", hdrs, blob, big, NULL, &h);
    CHECKF(h.status == 413, "body over the limit: %ld", h.status);
    pbt_http_clear(&h);
    free(blob);
    /* nothing was stored */
    long st;
    json_t *r = pbt_admin(a, "GET", "/v1/peers", NULL, &st);
    CHECKF(json_array_size(json_object_get(r, "peers")) == 0, "no peer was created");
    json_decref(r);
    pbt_daemon_free(a);
}

int main(int argc, char **argv)
{
    unsigned n = argc > 1 ? (unsigned)atoi(argv[1]) : 5000;
    const char *only = getenv("PBT_ONLY"); /* run one scenario: PBT_ONLY=rename */
#define RUN(name, call)                                                                            \
    if (!only || !strcmp(only, name)) call
    RUN("bad-admin", test_bad_admin());
    RUN("parked", test_parked());
    RUN("isolation", test_isolation());
    RUN("transfers-refused", test_transfers_refused());
    RUN("catch-up", test_catch_up());
    RUN("long-backlog", test_long_backlog());
    RUN("pull-pipeline", test_pull_pipeline(2000, false));
    RUN("pull-old-sender", test_pull_pipeline(2000, true));
    RUN("pull-ack", test_pull_ack());
    RUN("rename", test_rename());
    RUN("stream", test_stream(n));
    return pbt_finish();
}
