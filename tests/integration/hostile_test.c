/*
 * hostile_test - hostile federation peers against real postboxd processes: each attack of
 * a peer that replays tokens, names any server ID or answers anything, and what must hold
 * afterwards. The peers are tests/tools/hostile (roles serve, hang, pullbomb, flood);
 * daemons are started by the harness on 127.0.0.1.
 *
 *   replay-push     S pushes to T (a hostile tool that looks like a postbox and records
 *                   S's Authorization header); T replays S's token to R's Push with
 *                   postbox_seq 2^63: refused 401 h.bad-token-audience; then S's genuine
 *                   events for R all arrive at R, once, in order, and nothing else from S
 *   replay-pull     R pulls T (after T pushed to R), T keeps R's token; S holds a queue for
 *                   the stopped R; R's token replayed to S's Pull with postbox_next_seq
 *                   2^63: refused 401 h.bad-token-audience, S still holds the whole queue,
 *                   and R gets it, in order, when it comes back
 *   rename-replay   S's token (kept by T) replayed to R's NotifyNewId{NEW}, NEW serving S's
 *                   public key: refused 401 h.bad-token-audience; S's guild entries and
 *                   invites at R stay under S, R still has S as a peer, and S's later
 *                   events still arrive from S
 *   rename-pending  a foreign S (a tool with its own key, tokens without audience) sends
 *                   NotifyNewId{NEW} without the proof of possession: nothing is
 *                   re-labelled and R keeps accepting S; S's token replayed to NotifyNewId
 *                   naming four other hosts that serve S's key: the first three are kept
 *                   pending beside NEW (never replacing it), the fourth gets 429; a later
 *                   Push whose token names NEW, signed with S's key, completes the rename:
 *                   S's guild entries and invites are then under NEW, NEW replaced S in the
 *                   peers, and S's other pending renames are gone
 *   former-id       R renames itself while P1 (a hostile serve) confirms and P2 (stopped)
 *                   cannot: a Push from P1 bound to R's former ID is refused 401
 *                   h.bad-token-audience, P2's is accepted (it still knows R by that ID);
 *                   R restarted with former_id_grace = 1 s refuses P2's too
 *   flood           100 forged Pushes a second for 10 s, each naming one of 100 server IDs
 *                   on 127.0.0.1 whose ports accept and never answer, random signatures:
 *                   meanwhile the unauthenticated Key endpoint and genuine Pushes from a
 *                   peer whose key R holds are answered 200, each within 1 s; no forged
 *                   request is accepted
 *   private         a daemon without allow_private_peers never connects to a loopback
 *                   address because of a forged token naming it, nor to push to it; with
 *                   allow_private_peers it does fetch the named key (so the probe works)
 *   failed-auth     a token naming X (which serves P's key, P a peer of R) signed with
 *                   another key: 401 h.bad-token-signature, and afterwards R holds no peer
 *                   record and no key for X (admin API, and every table of the SQLite store),
 *                   does not pull X when it restarts (it does pull its genuine peer Y), and
 *                   when P renames itself to X, R accepts it (instead of 409
 *                   h.new-id-in-use)
 *   pullbomb        R federated with a peer whose every Pull answer is ~16 MiB of tiny
 *                   events and which pushes every second, R pulling 1 s after each Push:
 *                   over 20 s R's RSS (sampled every 100 ms, and VmHWM) stays under
 *                   128 MiB and it stores at most BOMB_STORED_MAX events from that peer
 *
 * Settings assumed (the daemon refuses to start without them, which fails the test):
 * allow_private_peers (private), recv_budget_events, recv_budget_bytes and
 * recv_budget_interval (pullbomb). PBT_ONLY=name runs one case; PBT_KEEP=1 keeps the
 * directories. The SQLite store is read directly (failed-auth), so PBT_STORE is ignored.
 * Under valgrind (PBT_MEMCHECK, scripts/memcheck) and AddressSanitizer the RSS bound is
 * 512 MiB, and under valgrind the latency bound is 5 s: what they distort is measured
 * against a bound that still catches the attack.
 */
#include <curl/curl.h>
#include <errno.h>
#include <signal.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "crypto/auth.h"
#include "crypto/keys.h"
#include "harness.h"
#include "hostile_tools.h"
#include "wire/wire.h"

#define PUSH "/protocol.sync.v1.PostboxService/Push"
#define PULL "/protocol.sync.v1.PostboxService/Pull"
#define NOTIFY "/protocol.sync.v1.PostboxService/NotifyNewId"
#define KEY "/protocol.auth.v1.AuthService/Key"

#define SEQ_HUGE (UINT64_C(1) << 63)

/* flood */
#define FLOOD_IDS "100"
#define FLOOD_RATE 100
#define FLOOD_SECONDS 10
/* pullbomb: R's receive budget, and what R may store from the bomb in BOMB_SECONDS. The
 * budget is 1000 events per 60 s; the bound allows it once, plus what a budget refilled
 * continuously over the 20 s would add (333), plus the events of the answer being stored
 * when the budget ran out, taken to be at most one budget's worth again (1000): the
 * receiver is assumed to charge the budget while it stores an answer, not only between
 * answers (a whole ~16 MiB answer of the bomb is ~1.7 million events). */
#define BOMB_BUDGET_EVENTS "1000"
#define BOMB_BUDGET_BYTES "262144"
#define BOMB_BUDGET_INTERVAL "60"
#define BOMB_STORED_MAX 2333
#define BOMB_SECONDS 20

/* What valgrind's and the sanitizers' overheads distort is measured against wider bounds. */
#if defined(__SANITIZE_ADDRESS__)
#define RSS_BOUND_DEFAULT_MIB 512
#else
#define RSS_BOUND_DEFAULT_MIB 128
#endif
static long rss_bound_kib(void)
{
    return (getenv("PBT_MEMCHECK") ? 512L : RSS_BOUND_DEFAULT_MIB) * 1024;
}

static int64_t latency_bound_ms(void)
{
    return getenv("PBT_MEMCHECK") ? 5000 : 1000;
}

/* ---- keys and tokens ------------------------------------------------------------------------- */

/* A new random key pair; its seed in hex (for the tool's --seed) into seed_hex. */
static pb_keys *new_key(char seed_hex[2 * PB_SEED_LEN + 1])
{
    uint8_t seed[PB_SEED_LEN];
    randombytes_buf(seed, sizeof seed);
    sodium_bin2hex(seed_hex, 2 * PB_SEED_LEN + 1, seed, sizeof seed);
    pb_keys *k = NULL;
    if (pb_keys_from_seed(seed, &k) != PB_OK) abort();
    sodium_memzero(seed, sizeof seed);
    return k;
}

/* An Authorization value for a token naming `as`, now, signed by k, as a peer that knows
 * nothing of this project's extensions signs it (the tokens postboxd signs are made by
 * postboxd itself and only ever replayed here). Caller frees. */
static char *token_for(const pb_keys *k, const char *as)
{
    return pb_auth_header_make(k, as, NULL, (uint64_t)time(NULL));
}

/* ---- the hostile tool ------------------------------------------------------------------------ */

/* Connections the hang tool accepted on port. */
static int accepted_on(const struct tool *hang, uint16_t port)
{
    char needle[64];
    snprintf(needle, sizeof needle, "hang: accept 127.0.0.1:%u\n", port);
    return tool_log_count(hang, needle);
}

/* Requests the tool recorded on port for path; the Authorization of the last one into
 * *auth (caller frees; NULL when none or when it had none) if auth is not NULL. */
static int recorded(const struct tool *t, uint16_t port, const char *path, char **auth)
{
    if (auth) *auth = NULL;
    FILE *f = fopen(t->record, "r");
    if (!f) return 0;
    char *line = NULL;
    size_t cap = 0;
    int n = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *j = json_loads(line, 0, NULL);
        const char *p = json_string_value(json_object_get(j, "path"));
        if (p && !strcmp(p, path) && json_integer_value(json_object_get(j, "port")) == port) {
            n++;
            const char *a = json_string_value(json_object_get(j, "authorization"));
            if (auth) {
                free(*auth);
                *auth = a ? strdup(a) : NULL;
            }
        }
        json_decref(j);
    }
    free(line);
    fclose(f);
    return n;
}

struct record_wait {
    const struct tool *t;
    uint16_t port;
    const char *path;
    int more_than;
};

static bool record_grew(void *vctx)
{
    struct record_wait *w = vctx;
    return recorded(w->t, w->port, w->path, NULL) > w->more_than;
}

/* ---- hRPC calls ------------------------------------------------------------------------------ */

/* Checks a refusal: status and identifier (reported at the caller's line). */
#define expect_refusal(...) expect_refusal_at(__FILE__, __LINE__, __VA_ARGS__)
static void expect_refusal_at(const char *file, int line, const struct answer *a, long status,
                              const char *identifier, const char *what)
{
    pbt_check(a->status == status && a->identifier && !strcmp(a->identifier, identifier), file,
              line, "expect_refusal", "%s: answered %ld %s, want %ld %s", what, a->status,
              a->identifier ? a->identifier : "(no identifier)", status, identifier);
}

/* A Push of ev (postbox_seq seq, 0: none) to d as `as`, signed by k, given up after
 * timeout_ms. */
static void push_within(const pbt_daemon *d, const pb_keys *k, const char *as, const pb_event *ev,
                        uint64_t seq, long timeout_ms, struct answer *a)
{
    pb_buf body = PB_BUF_INIT;
    pb_wire_push_encode(ev, seq ? &seq : NULL, 1, 0, &body);
    char *tok = token_for(k, as);
    call(d->port, PUSH, tok, &body, timeout_ms, a);
    free(tok);
    pb_buf_free(&body);
}

static void push_as(const pbt_daemon *d, const pb_keys *k, const char *as, const pb_event *ev,
                    uint64_t seq, struct answer *a)
{
    push_within(d, k, as, ev, seq, 15000, a);
}

/* ---- the admin side -------------------------------------------------------------------------- */

static json_t *ev_invited(unsigned user, unsigned inviter, const char *invite)
{
    char u[16], i[16];
    snprintf(u, sizeof u, "%u", user);
    snprintf(i, sizeof i, "%u", inviter);
    return json_pack("{s:{s:s,s:s,s:s}}", "userInvited", "userId", u, "inviterId", i, "inviteId",
                     invite);
}

/* d's inbox holds exactly `sent` from `from`: nothing lost, added, duplicated or reordered. */
#define expect_exactly(...) expect_exactly_at(__FILE__, __LINE__, __VA_ARGS__)
static void expect_exactly_at(const char *file, int line, const pbt_daemon *d, const char *from,
                              json_t *sent, const char *what)
{
    json_t *got = events_from(d, from, (size_t)-1);
    bool same = json_equal(got, sent);
    pbt_check(same, file, line, "expect_exactly",
              "%s: %zu events from %s in %s's inbox, want exactly the %zu sent, in order", what,
              json_array_size(got), from, d->server_id, json_array_size(sent));
    if (!same) {
        char *a = json_dumps(got, JSON_COMPACT);
        fprintf(stderr, "  got: %.600s\n", a);
        free(a);
    }
    json_decref(got);
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
        const char *s = json_string_value(json_object_get(p, "server_id"));
        if (s && !strcmp(s, id)) {
            found = p;
            json_incref(found);
        }
    }
    json_decref(r);
    return found;
}

static bool has_peer(const pbt_daemon *d, const char *id)
{
    json_t *p = peer_entry(d, id);
    json_decref(p);
    return p != NULL;
}

struct queue_wait {
    const pbt_daemon *d;
    const char *peer;
    const char *mode;
    long queued;
};

/* d's peer entry for `peer` is in `mode` with `queued` events. */
static bool queue_is(void *vctx)
{
    struct queue_wait *w = vctx;
    json_t *p = peer_entry(w->d, w->peer);
    const char *m = json_string_value(json_object_get(p, "mode"));
    bool ok = p && m && !strcmp(m, w->mode) &&
              json_integer_value(json_object_get(p, "queued")) == w->queued;
    json_decref(p);
    return ok;
}

static long queued_for(const pbt_daemon *d, const char *peer)
{
    json_t *p = peer_entry(d, peer);
    long n = p ? (long)json_integer_value(json_object_get(p, "queued")) : -1;
    json_decref(p);
    return n;
}

/* The serverId of the entry `id` (its `idkey` field) in user's list `list` (the answer's
 * array `array`) (caller frees), or NULL. */
static char *entry_server(const pbt_daemon *d, unsigned user, const char *list, const char *array,
                          const char *idkey, const char *id)
{
    char path[96];
    snprintf(path, sizeof path, "/v1/users/%u/%s", user, list);
    long st;
    json_t *r = pbt_admin(d, "GET", path, NULL, &st);
    char *out = NULL;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(r, array), i, e)
    {
        const char *eid = json_string_value(json_object_get(e, idkey));
        const char *sid = json_string_value(json_object_get(e, "serverId"));
        if (eid && sid && !strcmp(eid, id)) out = strdup(sid);
    }
    json_decref(r);
    return out;
}

/* The serverId of user's guild list entry for guild (caller frees), or NULL. */
static char *guild_server(const pbt_daemon *d, unsigned user, unsigned guild)
{
    char g[16];
    snprintf(g, sizeof g, "%u", guild);
    return entry_server(d, user, "guilds", "guilds", "guildId", g);
}

/* The serverId of user's pending invite invite_id (caller frees), or NULL. */
static char *invite_server(const pbt_daemon *d, unsigned user, const char *invite_id)
{
    return entry_server(d, user, "invites", "pendingInvites", "inviteId", invite_id);
}

#define expect_guild(...) expect_guild_at(__FILE__, __LINE__, __VA_ARGS__)
static void expect_guild_at(const char *file, int line, const pbt_daemon *d, unsigned user,
                            unsigned guild, const char *server, const char *what)
{
    char *s = guild_server(d, user, guild);
    pbt_check(s && !strcmp(s, server), file, line, "expect_guild",
              "%s: user %u's guild %u is under %s, want %s", what, user, guild,
              s ? s : "(no entry)", server);
    free(s);
}

#define expect_invite(...) expect_invite_at(__FILE__, __LINE__, __VA_ARGS__)
static void expect_invite_at(const char *file, int line, const pbt_daemon *d, unsigned user,
                             const char *invite, const char *server, const char *what)
{
    char *s = invite_server(d, user, invite);
    pbt_check(s && !strcmp(s, server), file, line, "expect_invite",
              "%s: user %u's invite %s is under %s, want %s", what, user, invite,
              s ? s : "(no entry)", server);
    free(s);
}

/* Lines of d's log (all its runs) holding both needles. */
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

/* ---- 1. replayed tokens: silent loss --------------------------------------------------------- */

static void test_replay_push(void)
{
    int failed0 = pbt_failed;
    char tseed[65];
    pb_keys *tk = new_key(tseed);
    const char *targs[] = {"--seed", tseed, NULL};
    struct tool *t = tool_run("serve", targs);
    pbt_daemon *s = start("rpushS", NULL), *r = start("rpushR", NULL);
    json_t *sent = json_array(), *one = json_array();
    char *auth = NULL;
    if (!t || !s || !r) goto out;

    /* S pushes to T: T holds a token S signed, valid for the time window */
    json_array_append_new(one, ev_added(1, 1));
    submit(s, t->id[0], one);
    struct record_wait rw = {t, t->ports[0], PUSH, 0};
    CHECKF(pbt_wait_for(record_grew, &rw, PBT_BOUND_MS), "S pushed to T");
    recorded(t, t->ports[0], PUSH, &auth);
    CHECKF(auth != NULL, "T recorded S's Authorization header");
    if (!auth) goto out;

    /* T pushes to R as S, with S's token and postbox_seq 2^63 */
    pb_event forged = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 666, .guild_id = 666};
    pb_buf body = PB_BUF_INIT;
    pb_wire_push_encode(&forged, &(uint64_t){SEQ_HUGE}, 1, 0, &body);
    struct answer a;
    call(r->port, PUSH, auth, &body, 15000, &a);
    pb_buf_free(&body);
    expect_refusal(&a, 401, "h.bad-token-audience", "S's token (bound to T) replayed to R's Push");
    answer_clear(&a);

    /* S's genuine events for R: all arrive, once, in order, and nothing else from S */
    for (unsigned i = 0; i < 20; i++)
        json_array_append_new(sent, ev_added(1 + i % 4, 100 + i));
    submit(s, r->server_id, sent);
    struct queue_wait qw = {s, r->server_id, "push", 0};
    CHECKF(pbt_wait_for(queue_is, &qw, 30000),
           "S delivered its 20 events to R (its queue for R "
           "is empty, %ld left)",
           queued_for(s, r->server_id));
    struct count_wait cw = {r, s->server_id, 20, 0};
    pbt_wait_for(have_count, &cw, 30000);
    expect_exactly(r, s->server_id, sent, "after the replayed Push");
out:
    if (pbt_failed > failed0 && r) pbt_daemon_dump_log(r);
    free(auth);
    json_decref(sent);
    json_decref(one);
    pbt_daemon_free(s);
    pbt_daemon_free(r);
    tool_free(t);
    pb_keys_free(tk);
}

static void test_replay_pull(void)
{
    int failed0 = pbt_failed;
    char tseed[65];
    pb_keys *tk = new_key(tseed);
    const char *targs[] = {"--seed", tseed, NULL};
    struct tool *t = tool_run("serve", targs);
    /* S queues for R at the first failure and does not drain by itself during the test */
    const char *sx[] = {"--push-retries", "0", "--backoff-min", "3600", "--backoff-max",
                        "3600",           NULL};
    const char *rx[] = {"--pull-interval", "1", NULL};
    pbt_daemon *s = start("rpullS", sx), *r = start("rpullR", rx);
    json_t *one = json_array(), *sent = json_array();
    char *auth = NULL;
    if (!t || !s || !r) goto out;

    /* R -> S once, so that S holds R's key */
    json_array_append_new(one, ev_added(2, 2));
    submit(r, s->server_id, one);
    struct count_wait cw = {s, r->server_id, 1, 0};
    CHECKF(pbt_wait_for(have_count, &cw, 30000), "R's event reached S");

    /* T pushes to R; R pulls T a second later with a token T keeps */
    pb_event ev = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 3, .guild_id = 3};
    struct answer a;
    push_as(r, tk, t->id[0], &ev, 0, &a);
    CHECKF(a.status == 200, "T's Push to R: %ld", a.status);
    answer_clear(&a);
    struct record_wait rw = {t, t->ports[0], PULL, 0};
    CHECKF(pbt_wait_for(record_grew, &rw, PBT_BOUND_MS), "R pulled T");
    recorded(t, t->ports[0], PULL, &auth);
    CHECKF(auth != NULL, "T recorded R's Authorization header");
    if (!auth) goto out;

    /* R goes away; S queues R's events */
    CHECK_INT(pbt_daemon_stop(r), 0);
    for (unsigned i = 0; i < 10; i++)
        json_array_append_new(sent, ev_added(4, 200 + i));
    submit(s, r->server_id, sent);
    struct queue_wait qw = {s, r->server_id, "queued", 10};
    CHECKF(pbt_wait_for(queue_is, &qw, 30000), "S queued 10 events for the stopped R (%ld)",
           queued_for(s, r->server_id));

    /* T pulls S as R with R's token and postbox_next_seq 2^63 */
    pb_buf body = PB_BUF_INIT;
    pb_wire_pull_req_encode(&(pb_pull_req){.next_seq = SEQ_HUGE}, &body);
    call(s->port, PULL, auth, &body, 15000, &a);
    pb_buf_free(&body);
    expect_refusal(&a, 401, "h.bad-token-audience", "R's token (bound to T) replayed to S's Pull");
    answer_clear(&a);
    CHECKF(queued_for(s, r->server_id) == 10,
           "S still holds the 10 events it queued for R after the replayed Pull (%ld)",
           queued_for(s, r->server_id));

    /* R comes back and pulls S at start-up: everything, once, in order */
    char peer_s[96];
    snprintf(peer_s, sizeof peer_s, "peer=%s ", s->server_id);
    int pulls_before = log_count(r, peer_s, "pull finished");
    CHECK(pbt_daemon_start(r));
    struct count_wait cw2 = {r, s->server_id, 10, 0};
    int64_t deadline = pbt_now_ms() + 30000;
    while (pbt_now_ms() < deadline && !have_count(&cw2) &&
           log_count(r, peer_s, "pull finished") == pulls_before)
        sleep_ms(50);
    expect_exactly(r, s->server_id, sent, "R after its start-up Pull of S");
out:
    if (pbt_failed > failed0 && s) pbt_daemon_dump_log(s);
    free(auth);
    json_decref(one);
    json_decref(sent);
    pbt_daemon_free(s);
    pbt_daemon_free(r);
    tool_free(t);
    pb_keys_free(tk);
}

/* ---- 2. server-ID hijack through NotifyNewId ------------------------------------------------- */

static void test_rename_replay(void)
{
    int failed0 = pbt_failed;
    char tseed[65];
    pb_keys *tk = new_key(tseed);
    const char *targs[] = {"--seed", tseed, NULL};
    struct tool *t = tool_run("serve", targs), *nt = NULL;
    pbt_daemon *s = start("renS", NULL), *r = start("renR", NULL);
    json_t *first = json_array(), *later = json_array(), *one = json_array();
    char *auth = NULL;
    if (!t || !s || !r) goto out;

    /* NEW serves S's public key (public keys are public) */
    long st;
    json_t *k = pbt_admin(s, "GET", "/v1/key", NULL, &st);
    const char *pub = json_string_value(json_object_get(k, "public_key"));
    const char *nargs[] = {"--serve-key", pub ? pub : "", NULL};
    nt = tool_run("serve", nargs);
    json_decref(k);
    if (!nt) goto out;

    /* S's events create a guild entry and an invite at R */
    json_array_append_new(first, ev_added(5, 77));
    json_array_append_new(first, ev_invited(5, 1, "inv-s"));
    submit(s, r->server_id, first);
    struct count_wait cw = {r, s->server_id, 2, 0};
    CHECKF(pbt_wait_for(have_count, &cw, 30000), "S's first events reached R");

    /* S pushes to T: T keeps S's token */
    json_array_append_new(one, ev_added(1, 1));
    submit(s, t->id[0], one);
    struct record_wait rw = {t, t->ports[0], PUSH, 0};
    CHECKF(pbt_wait_for(record_grew, &rw, PBT_BOUND_MS), "S pushed to T");
    recorded(t, t->ports[0], PUSH, &auth);
    CHECKF(auth != NULL, "T recorded S's Authorization header");
    if (!auth) goto out;

    /* T tells R, as S, that S is now NEW */
    pb_buf body = PB_BUF_INIT;
    pb_wire_notify_encode(nt->id[0], NULL, 0, &body);
    struct answer a;
    call(r->port, NOTIFY, auth, &body, 15000, &a);
    pb_buf_free(&body);
    expect_refusal(&a, 401, "h.bad-token-audience",
                   "S's token (bound to T) replayed to R's NotifyNewId");
    answer_clear(&a);

    /* nothing re-labelled */
    expect_guild(r, 5, 77, s->server_id, "after the replayed NotifyNewId");
    expect_invite(r, 5, "inv-s", s->server_id, "after the replayed NotifyNewId");
    CHECKF(has_peer(r, s->server_id), "R still has S as a peer");
    CHECKF(!has_peer(r, nt->id[0]), "R has no peer NEW");
    expect_exactly(r, s->server_id, first, "after the replayed NotifyNewId");

    /* S's later events still reach R from S */
    json_array_append_new(later, ev_added(6, 88));
    submit(s, r->server_id, later);
    struct queue_wait qw = {s, r->server_id, "push", 0};
    CHECKF(pbt_wait_for(queue_is, &qw, 30000), "S delivered its later event to R");
    json_array_extend(first, later);
    struct count_wait cw2 = {r, s->server_id, 3, 0};
    pbt_wait_for(have_count, &cw2, 30000);
    expect_exactly(r, s->server_id, first, "S's later event");
    expect_guild(r, 6, 88, s->server_id, "S's later event");
out:
    if (pbt_failed > failed0 && r) pbt_daemon_dump_log(r);
    free(auth);
    json_decref(first);
    json_decref(later);
    json_decref(one);
    pbt_daemon_free(s);
    pbt_daemon_free(r);
    tool_free(t);
    tool_free(nt);
    pb_keys_free(tk);
}

struct relabel_wait {
    const pbt_daemon *r;
    const char *new_id, *old_id;
};

static bool relabelled(void *vctx)
{
    struct relabel_wait *w = vctx;
    bool ok = true;
    const unsigned guilds[] = {70, 71, 72};
    for (int i = 0; i < 3 && ok; i++) {
        char *g = guild_server(w->r, 7, guilds[i]);
        ok = g && !strcmp(g, w->new_id);
        free(g);
    }
    char *inv = invite_server(w->r, 7, "inv-f");
    ok = ok && inv && !strcmp(inv, w->new_id) && has_peer(w->r, w->new_id) &&
         !has_peer(w->r, w->old_id);
    free(inv);
    return ok;
}

/* Whether R's GET /v1/peers lists the pending incoming rename old -> new. */
static bool rename_in_listed(pbt_daemon *d, const char *old_id, const char *new_id)
{
    long st = 0;
    json_t *r = pbt_admin(d, "GET", "/v1/peers", NULL, &st);
    bool found = false;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(r, "renames_in"), i, e)
    {
        const char *o = json_string_value(json_object_get(e, "old_id"));
        const char *n = json_string_value(json_object_get(e, "new_id"));
        found = found || (o && n && !strcmp(o, old_id) && !strcmp(n, new_id) &&
                          json_is_integer(json_object_get(e, "since")));
    }
    json_decref(r);
    return found;
}

static void test_rename_pending(void)
{
    int failed0 = pbt_failed;
    char sseed[65];
    pb_keys *sk = new_key(sseed);
    /* a foreign S: six IDs serving the one key it signs with: S, NEW, and four hosts an
     * attacker names in replays of S's token (any host can serve S's public key) */
    const char *sargs[] = {"--listen", "6", "--seed", sseed, NULL};
    struct tool *fs = tool_run("serve", sargs);
    pbt_daemon *r = start("pendR", NULL);
    if (!fs || !r) goto out;
    const char *S = fs->id[0], *NEW = fs->id[1];

    struct answer a;
    pb_event e70 = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 7, .guild_id = 70};
    pb_event inv = {
        .kind = PB_EV_USER_INVITED, .user_id = 7, .inviter_id = 2, .invite_id = "inv-f"};
    push_as(r, sk, S, &e70, 0, &a);
    CHECKF(a.status == 200, "S's first Push: %ld", a.status);
    answer_clear(&a);
    push_as(r, sk, S, &inv, 0, &a);
    CHECKF(a.status == 200, "S's invite: %ld", a.status);
    answer_clear(&a);

    /* NotifyNewId{NEW} from S, genuinely signed, but without the proof of possession */
    pb_buf body = PB_BUF_INIT;
    pb_wire_notify_encode(NEW, NULL, 0, &body);
    char *tok = token_for(sk, S);
    call(r->port, NOTIFY, tok, &body, 15000, &a);
    pb_buf_free(&body);
    fprintf(stderr, "rename-pending: NotifyNewId without proof answered %ld %s\n", a.status,
            a.identifier ? a.identifier : "");
    answer_clear(&a);
    expect_guild(r, 7, 70, S, "rename without proof");
    expect_invite(r, 7, "inv-f", S, "rename without proof");
    CHECKF(has_peer(r, S), "rename without proof: R still has S as a peer");
    CHECKF(rename_in_listed(r, S, NEW), "rename without proof: GET /v1/peers lists it pending");

    /* S's token (unbound: anyone who saw it may replay it within its window) replayed to
     * NotifyNewId naming other hosts that serve S's key: each is kept beside NEW, none
     * replaces it; past PB_STORE_RENAMES_IN_MAX (4) pending renames of S: 429, and the
     * earlier ones are kept */
    long rst[4];
    for (int i = 0; i < 4; i++) {
        pb_wire_notify_encode(fs->id[2 + i], NULL, 0, &body);
        call(r->port, NOTIFY, tok, &body, 15000, &a);
        pb_buf_free(&body);
        rst[i] = a.status;
        answer_clear(&a);
    }
    free(tok);
    bool new_kept = rename_in_listed(r, S, NEW), x_kept = rename_in_listed(r, S, fs->id[2]);
    fprintf(stderr,
            "rename-pending: replays naming 4 other hosts answered %ld %ld %ld %ld; S -> NEW "
            "still pending: %s; S -> X1 pending: %s\n",
            rst[0], rst[1], rst[2], rst[3], new_kept ? "yes" : "no", x_kept ? "yes" : "no");
    CHECKF(new_kept, "the replays did not replace the pending rename S -> NEW");
    CHECKF(rst[0] == 200 && rst[1] == 200 && rst[2] == 200 && x_kept,
           "the first 3 replays are pending beside it: %ld %ld %ld", rst[0], rst[1], rst[2]);
    CHECKF(rst[3] == 429, "a fifth pending rename of S is refused 429: %ld", rst[3]);

    /* R keeps answering S meanwhile */
    pb_event e71 = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 7, .guild_id = 71};
    push_as(r, sk, S, &e71, 0, &a);
    CHECKF(a.status == 200, "S's Push while the rename is pending: %ld", a.status);
    answer_clear(&a);
    expect_guild(r, 7, 71, S, "S's Push while the rename is pending");
    expect_guild(r, 7, 70, S, "S's Push while the rename is pending");

    /* a request whose token names NEW, signed with S's key: the proof; the rename is done */
    pb_event e72 = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 7, .guild_id = 72};
    push_as(r, sk, NEW, &e72, 0, &a);
    CHECKF(a.status == 200, "NEW's Push (token naming NEW, S's key): %ld", a.status);
    answer_clear(&a);
    struct relabel_wait rw = {r, NEW, S};
    bool done = pbt_wait_for(relabelled, &rw, 30000);
    CHECKF(done, "after the proof, S's guild entries and invite are under NEW and NEW replaced S "
                 "in the peers");
    if (!done) {
        const unsigned guilds[] = {70, 71, 72};
        for (int i = 0; i < 3; i++)
            expect_guild(r, 7, guilds[i], NEW, "after the proof");
        expect_invite(r, 7, "inv-f", NEW, "after the proof");
        CHECKF(has_peer(r, NEW), "after the proof: NEW is a peer");
        CHECKF(!has_peer(r, S), "after the proof: S is no longer a peer");
    }
    CHECKF(!rename_in_listed(r, S, NEW), "after the proof: no longer listed as pending");
    for (int i = 0; i < 3; i++)
        CHECKF(!rename_in_listed(r, S, fs->id[2 + i]),
               "after the proof: S's other pending renames are dropped (%s)", fs->id[2 + i]);
out:
    if (pbt_failed > failed0 && r) pbt_daemon_dump_log(r);
    pbt_daemon_free(r);
    tool_free(fs);
    pb_keys_free(sk);
}

/* ---- former IDs: per peer, and for a bounded time ----------------------------------------- */

static bool rename_accepted_by(json_t *report, const char *peer, char *why, size_t wlen);

/* A Push of ev to d as `as`, signed by k, bound to audience `aud` (as a postbox signs). */
static void push_bound(const pbt_daemon *d, const pb_keys *k, const char *as, const char *aud,
                       const pb_event *ev, struct answer *a)
{
    pb_buf body = PB_BUF_INIT;
    pb_wire_push_encode(ev, NULL, 1, 0, &body);
    char *tok = pb_auth_header_make(k, as, aud, (uint64_t)time(NULL));
    call(d->port, PUSH, tok, &body, 15000, a);
    free(tok);
    pb_buf_free(&body);
}

struct bound_wait {
    const pbt_daemon *d;
    const pb_keys *k;
    const char *as, *aud;
    long status;
};

/* A Push bound to w->aud is answered w->status. */
static bool bound_answered(void *vctx)
{
    struct bound_wait *w = vctx;
    pb_event ev = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 9, .guild_id = 90};
    struct answer a;
    push_bound(w->d, w->k, w->as, w->aud, &ev, &a);
    bool ok = a.status == w->status;
    answer_clear(&a);
    return ok;
}

static void test_former_id(void)
{
    int failed0 = pbt_failed;
    char s1[65], s2[65];
    pb_keys *k1 = new_key(s1), *k2 = new_key(s2);
    const char *a1[] = {"--listen", "1", "--seed", s1, NULL};
    const char *a2[] = {"--listen", "1", "--seed", s2, NULL};
    struct tool *p1 = tool_run("serve", a1), *p2 = tool_run("serve", a2);
    pbt_daemon *r = start("formerR", NULL);
    json_t *rep = NULL;
    if (!p1 || !p2 || !r) goto out;
    char old_id[64], new_id[64], why[256];
    snprintf(old_id, sizeof old_id, "%s", r->server_id);
    snprintf(new_id, sizeof new_id, "localhost:%u", r->port); /* the same listener */
    const char *P1 = p1->id[0], *P2 = p2->id[0];
    pb_event ev = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 9, .guild_id = 90};
    struct answer a;
    push_bound(r, k1, P1, old_id, &ev, &a);
    CHECKF(a.status == 200, "P1's first Push: %ld", a.status);
    answer_clear(&a);
    push_bound(r, k2, P2, old_id, &ev, &a);
    CHECKF(a.status == 200, "P2's first Push: %ld", a.status);
    answer_clear(&a);

    /* P2 goes away: R's rename notice cannot reach it, so P2 still knows R by its old ID;
     * P1 confirms the rename */
    tool_stop(p2);
    long st = 0;
    rep = pbt_admin(r, "POST", "/v1/rename", json_pack("{s:s}", "new_server_id", new_id), &st);
    CHECKF(st == 200, "R renames itself to %s: %ld", new_id, st);
    CHECKF(rename_accepted_by(rep, P1, why, sizeof why), "P1 confirmed the rename (%s)", why);
    CHECKF(!rename_accepted_by(rep, P2, why, sizeof why), "P2 did not confirm it");

    /* the former ID: still good from P2, which has not confirmed; no longer from P1 */
    long s_p2 = 0, s_p1 = 0, s_p1new = 0;
    push_bound(r, k2, P2, old_id, &ev, &a);
    s_p2 = a.status;
    answer_clear(&a);
    push_bound(r, k1, P1, old_id, &ev, &a);
    s_p1 = a.status;
    char *p1_id = a.identifier ? strdup(a.identifier) : NULL;
    answer_clear(&a);
    push_bound(r, k1, P1, new_id, &ev, &a);
    s_p1new = a.status;
    answer_clear(&a);
    fprintf(stderr,
            "former-id: Pushes bound to the former ID: from P2 (not confirmed) %ld, from P1 "
            "(confirmed) %ld %s; P1's bound to the new ID %ld\n",
            s_p2, s_p1, p1_id ? p1_id : "", s_p1new);
    CHECKF(s_p2 == 200, "P2 (not confirmed) may still name the former ID: %ld", s_p2);
    CHECKF(s_p1 == 401 && p1_id && !strcmp(p1_id, "h.bad-token-audience"),
           "P1 (confirmed) may no longer name the former ID: %ld %s", s_p1, p1_id ? p1_id : "");
    CHECKF(s_p1new == 200, "P1's Push bound to the new ID: %ld", s_p1new);
    free(p1_id);

    /* for a bounded time: R restarted with former_id_grace = 1 s refuses P2's too, once the
     * rename is older than that (the rename's time is kept in the store) */
    CHECK_INT(pbt_daemon_stop(r), 0);
    r->args[r->nargs++] = strdup("--former-id-grace");
    r->args[r->nargs++] = strdup("1");
    if (!pbt_daemon_start(r)) {
        CHECK(false);
        goto out;
    }
    struct bound_wait w = {r, k2, P2, old_id, 401};
    int64_t t0 = pbt_now_ms();
    bool refused = pbt_wait_for(bound_answered, &w, 20000);
    fprintf(stderr,
            "former-id: with former_id_grace = 1, P2's Push bound to the former ID: %s "
            "(%lld ms after the restart)\n",
            refused ? "refused 401" : "still accepted", (long long)(pbt_now_ms() - t0));
    CHECKF(refused, "past former_id_grace the former ID is refused from P2 too");
    w.aud = new_id;
    w.status = 200;
    CHECKF(bound_answered(&w), "P2's Push bound to the new ID is accepted");
out:
    if (pbt_failed > failed0 && r) pbt_daemon_dump_log(r);
    json_decref(rep);
    pbt_daemon_free(r);
    tool_free(p1);
    tool_free(p2);
    pb_keys_free(k1);
    pb_keys_free(k2);
}

/* ---- 3. listener exhaustion and SSRF with forged tokens -------------------------------------- */

struct probes {
    int n, ok;
    int64_t worst_ms;
    long last_bad;
};

static void probe_note(struct probes *p, const struct answer *a)
{
    p->n++;
    if (a->status == 200)
        p->ok++;
    else
        p->last_bad = a->status;
    if (a->ms > p->worst_ms) p->worst_ms = a->ms;
}

static void test_flood(void)
{
    int failed0 = pbt_failed;
    char lseed[65];
    pb_keys *lk = new_key(lseed);
    const char *hargs[] = {"--listen", FLOOD_IDS, NULL};
    const char *largs[] = {"--seed", lseed, NULL};
    struct tool *hang = tool_run("hang", hargs), *l = tool_run("serve", largs), *fl = NULL;
    pbt_daemon *r = start("floodR", NULL);
    if (!hang || !l || !r) goto out;

    /* a genuine peer L whose key R holds */
    unsigned guild = 1;
    pb_event ev = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 9, .guild_id = guild++};
    struct answer a;
    push_as(r, lk, l->id[0], &ev, 0, &a);
    CHECKF(a.status == 200, "L's first Push: %ld", a.status);
    answer_clear(&a);

    char rate[16], secs[16], target[16];
    snprintf(rate, sizeof rate, "%d", FLOOD_RATE);
    snprintf(secs, sizeof secs, "%d", FLOOD_SECONDS);
    snprintf(target, sizeof target, "%u", r->port);
    const char *fargs[] = {"--target",  target, "--ids-file",   hang->ready, "--rate", rate,
                           "--seconds", secs,   "--timeout-ms", "3000",      NULL};
    fl = tool_run("flood", fargs);

    /* legitimate requests while the flood lasts: the Key endpoint and L's Pushes */
    int64_t bound = latency_bound_ms();
    long timeout = getenv("PBT_MEMCHECK") ? 15000 : 5000;
    struct probes key = {0}, push = {0};
    int64_t end = pbt_now_ms() + (FLOOD_SECONDS + 20) * 1000;
    while (!tool_exited(fl) && pbt_now_ms() < end) {
        call(r->port, KEY, NULL, NULL, timeout, &a);
        probe_note(&key, &a);
        answer_clear(&a);
        ev.guild_id = guild++;
        push_within(r, lk, l->id[0], &ev, 0, timeout, &a);
        probe_note(&push, &a);
        answer_clear(&a);
        sleep_ms(100);
    }
    CHECKF(tool_exited(fl), "the flood ended");
    json_t *fs = json_load_file(fl->stats, 0, NULL);
    long sent = (long)json_integer_value(json_object_get(fs, "sent"));
    long accepted = (long)json_integer_value(json_object_get(fs, "status_2xx"));
    fprintf(stderr,
            "flood: %ld forged Pushes sent (%ld accepted); Key: %d probes, %d answered 200, "
            "slowest %lld ms; L's Push: %d probes, %d answered 200, slowest %lld ms\n",
            sent, accepted, key.n, key.ok, (long long)key.worst_ms, push.n, push.ok,
            (long long)push.worst_ms);
    CHECKF(sent == FLOOD_RATE * FLOOD_SECONDS, "the flood sent %ld forged Pushes, want %d", sent,
           FLOOD_RATE * FLOOD_SECONDS);
    CHECKF(accepted == 0, "%ld forged Pushes were accepted", accepted);
    json_decref(fs);
    CHECKF(key.n >= 10 && push.n >= 10, "probes made during the flood: %d Key, %d Push", key.n,
           push.n);
    CHECKF(key.ok == key.n, "Key during the flood: %d of %d answered 200 (last failure: %ld)",
           key.ok, key.n, key.last_bad);
    CHECKF(push.ok == push.n,
           "L's Push during the flood: %d of %d answered 200 (last failure: %ld)", push.ok, push.n,
           push.last_bad);
    CHECKF(key.worst_ms < bound, "Key during the flood: slowest answer %lld ms, want < %lld",
           (long long)key.worst_ms, (long long)bound);
    CHECKF(push.worst_ms < bound, "L's Push during the flood: slowest answer %lld ms, want < %lld",
           (long long)push.worst_ms, (long long)bound);
    json_t *got = events_from(r, l->id[0], (size_t)-1);
    CHECKF(json_array_size(got) == (size_t)push.ok + 1,
           "R holds L's %d accepted Pushes (it has %zu)", push.ok + 1, json_array_size(got));
    json_decref(got);
out:
    if (pbt_failed > failed0 && r) pbt_daemon_dump_log(r);
    if (pbt_failed > failed0 && fl) tool_dump_log(fl);
    tool_free(fl);
    tool_free(hang); /* first: R's waits on the hung hosts end */
    pbt_daemon_free(r);
    tool_free(l);
    pb_keys_free(lk);
}

struct accept_wait {
    const struct tool *hang;
    uint16_t port;
};

static bool connected(void *vctx)
{
    struct accept_wait *w = vctx;
    return accepted_on(w->hang, w->port) > 0;
}

/* One forged Push to d naming 127.0.0.1:port (the flood tool, once). */
static void forged_push(const pbt_daemon *d, uint16_t port)
{
    char *dir = pbt_tmpdir("forged");
    char *ids = xasprintf("%s/ids", dir);
    FILE *f = fopen(ids, "w");
    if (f) {
        fprintf(f, "%u\n", port);
        fclose(f);
    }
    char target[16];
    snprintf(target, sizeof target, "%u", d->port);
    const char *args[] = {"--target", target,      "--ids-file", ids, "--rate",
                          "1",        "--seconds", "1",          NULL};
    struct tool *t = tool_run("flood", args);
    CHECKF(pbt_wait_for(tool_exited, t, 20000), "the forged Push naming 127.0.0.1:%u was sent",
           port);
    tool_free(t);
    pbt_rmrf(dir);
    free(ids);
    free(dir);
}

static void test_private(void)
{
    int failed0 = pbt_failed;
    const char *hargs[] = {"--listen", "2", NULL};
    struct tool *hang = tool_run("hang", hargs);
    pbt_daemon *pub = NULL, *priv = NULL;
    if (!hang) return;

    /* without allow_private_peers: no connection to a loopback address named by a peer's
     * token, nor to push to it */
    pub = pbt_daemon_new("privPub", NULL);
    pub->public_only = true;
    if (pbt_daemon_start(pub)) {
        forged_push(pub, hang->ports[0]);
        /* an event for 127.0.0.1:A: refused by the admin API or accepted, it must not make
         * the daemon connect there */
        long st;
        json_t *evs = json_array();
        json_array_append_new(evs, ev_added(1, 1));
        json_decref(pbt_admin(pub, "POST", "/v1/outbox",
                              json_pack("{s:s,s:o}", "to", hang->id[0], "events", evs), &st));
        fprintf(stderr, "private: an event for %s submitted: status %ld\n", hang->id[0], st);
        struct accept_wait w = {hang, hang->ports[0]};
        bool conn = pbt_wait_for(connected, &w, 3000);
        CHECKF(!conn,
               "postboxd without allow_private_peers connected %d times to 127.0.0.1:%u (named "
               "by a forged token, and as the destination of an event)",
               accepted_on(hang, hang->ports[0]), hang->ports[0]);
    } else {
        CHECKF(false, "postboxd without allow_private_peers starts");
    }

    /* with it: the named key is fetched, so the probe above would have seen a connection */
    const char *ax[] = {"--allow-private-peers", "yes", NULL};
    priv = pbt_daemon_new("privPriv", ax);
    priv->public_only = true; /* the setting is given explicitly here */
    bool up = pbt_daemon_start(priv);
    CHECKF(up, "postboxd starts with --allow-private-peers yes");
    if (up) {
        forged_push(priv, hang->ports[1]);
        struct accept_wait w = {hang, hang->ports[1]};
        CHECKF(pbt_wait_for(connected, &w, 30000),
               "postboxd with allow_private_peers fetched the key of 127.0.0.1:%u, named by a "
               "forged token",
               hang->ports[1]);
    }
    if (pbt_failed > failed0 && pub && pub->pid) pbt_daemon_dump_log(pub);
    tool_free(hang);
    pbt_daemon_free(pub);
    pbt_daemon_free(priv);
}

/* ---- 4. no durable peer from a failed authentication ----------------------------------------- */

/* Cells of every table of the SQLite store at path equal to text (as text), or to blob (as a
 * blob, or as its hex in text); the "table.column" of each into where. */
static int db_find(const char *path, const char *text, const uint8_t *blob, size_t blen,
                   char *where, size_t wlen)
{
    sqlite3 *db = NULL;
    int found = 0;
    where[0] = '\0';
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        CHECKF(false, "open %s: %s", path, sqlite3_errmsg(db));
        sqlite3_close(db);
        return -1;
    }
    sqlite3_busy_timeout(db, 5000);
    char hex[2 * 64 + 1] = "";
    if (blob && blen <= 64) sodium_bin2hex(hex, sizeof hex, blob, blen);
    sqlite3_stmt *tables = NULL;
    sqlite3_prepare_v2(db, "SELECT name FROM sqlite_master WHERE type = 'table'", -1, &tables,
                       NULL);
    while (tables && sqlite3_step(tables) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(tables, 0);
        char *sql = sqlite3_mprintf("SELECT * FROM \"%w\"", name);
        sqlite3_stmt *rows = NULL;
        if (sqlite3_prepare_v2(db, sql, -1, &rows, NULL) == SQLITE_OK) {
            while (sqlite3_step(rows) == SQLITE_ROW) {
                for (int c = 0; c < sqlite3_column_count(rows); c++) {
                    int type = sqlite3_column_type(rows, c);
                    bool hit = false;
                    if (type == SQLITE_TEXT) {
                        const char *v = (const char *)sqlite3_column_text(rows, c);
                        hit = (text && !strcmp(v, text)) || (hex[0] && !strcasecmp(v, hex));
                    } else if (type == SQLITE_BLOB && blob) {
                        hit = (size_t)sqlite3_column_bytes(rows, c) == blen &&
                              !memcmp(sqlite3_column_blob(rows, c), blob, blen);
                    }
                    if (hit) {
                        found++;
                        size_t used = strlen(where);
                        snprintf(where + used, wlen - used, " %s.%s", name,
                                 sqlite3_column_name(rows, c));
                    }
                }
            }
        }
        sqlite3_finalize(rows);
        sqlite3_free(sql);
    }
    sqlite3_finalize(tables);
    sqlite3_close(db);
    return found;
}

/* A peer's report in a POST /v1/rename answer: true when it accepted the rename; its error
 * into why. */
static bool rename_accepted_by(json_t *report, const char *peer, char *why, size_t wlen)
{
    size_t i;
    json_t *e;
    snprintf(why, wlen, "not in the report");
    json_array_foreach(json_object_get(report, "peers"), i, e)
    {
        const char *id = json_string_value(json_object_get(e, "server_id"));
        if (!id || strcmp(id, peer)) continue;
        const char *err = json_string_value(json_object_get(e, "error"));
        snprintf(why, wlen, "%s", err ? err : "");
        return json_is_true(json_object_get(e, "ok"));
    }
    return false;
}

static void test_failed_auth(void)
{
    int failed0 = pbt_failed;
    char yseed[65];
    pb_keys *yk = new_key(yseed), *other = NULL;
    pb_keys_generate(&other);
    pbt_daemon *r = start("authR", NULL), *p = start("authP", NULL);
    struct tool *x = NULL, *y = NULL;
    json_t *one = json_array();
    if (!r || !p) goto out;

    /* X serves P's public key: the ID P will later rename itself to. Y is a genuine peer. */
    long st;
    json_t *k = pbt_admin(p, "GET", "/v1/key", NULL, &st);
    const char *pub = json_string_value(json_object_get(k, "public_key"));
    const char *xargs[] = {"--serve-key", pub ? pub : "", NULL};
    const char *yargs[] = {"--seed", yseed, NULL};
    x = tool_run("serve", xargs);
    y = tool_run("serve", yargs);
    json_decref(k);
    if (!x || !y) goto out;
    const char *X = x->id[0], *Y = y->id[0];

    /* R federates with P and Y */
    json_array_append_new(one, ev_added(8, 79));
    submit(p, r->server_id, one);
    struct count_wait cw = {r, p->server_id, 1, 0};
    CHECKF(pbt_wait_for(have_count, &cw, 30000), "P's event reached R");
    struct answer a;
    pb_event ev = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 8, .guild_id = 80};
    push_as(r, yk, Y, &ev, 0, &a);
    CHECKF(a.status == 200, "Y's Push: %ld", a.status);
    answer_clear(&a);

    /* a token naming X, signed with another key: R fetches the key served at X, which does
     * not verify it */
    ev.guild_id = 81;
    push_as(r, other, X, &ev, 0, &a);
    expect_refusal(&a, 401, "h.bad-token-signature", "a token naming X signed with another key");
    answer_clear(&a);
    CHECKF(recorded(x, x->ports[0], KEY, NULL) >= 1, "R fetched X's key to check the token");

    /* nothing of X is kept */
    CHECKF(!has_peer(r, X), "R's peers do not list X after the failed authentication");
    CHECKF(has_peer(r, Y), "R's peers list its genuine peer Y");
    char db[600], where[512];
    snprintf(db, sizeof db, "%s/postbox.db", r->dir);
    /* (X's key is P's key, which R rightly holds for P: the scan looks for X's ID) */
    int nx = db_find(db, X, NULL, 0, where, sizeof where);
    CHECKF(nx == 0, "R's store names X in %d places:%s", nx, where);
    int ny = db_find(db, Y, NULL, 0, where, sizeof where);
    int nyk = db_find(db, NULL, pb_keys_public(yk), PB_PUBKEY_LEN, where, sizeof where);
    CHECKF(ny > 0 && nyk > 0, "the store scan finds the genuine peer Y (%d) and its key (%d)", ny,
           nyk);
    sqlite3 *sq = NULL;
    sqlite3_stmt *stp = NULL;
    long peers_x = -1;
    if (sqlite3_open_v2(db, &sq, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_busy_timeout(sq, 5000) == SQLITE_OK &&
        sqlite3_prepare_v2(sq, "SELECT count(*) FROM peers WHERE server_id = ?", -1, &stp, NULL) ==
            SQLITE_OK) {
        sqlite3_bind_text(stp, 1, X, -1, SQLITE_STATIC);
        if (sqlite3_step(stp) == SQLITE_ROW) peers_x = sqlite3_column_int64(stp, 0);
    }
    sqlite3_finalize(stp);
    sqlite3_close(sq);
    CHECKF(peers_x == 0, "rows for X in R's peers table: %ld", peers_x);

    /* R restarts: it pulls Y, not X */
    int y_pulls = recorded(y, y->ports[0], PULL, NULL);
    CHECK_INT(pbt_daemon_stop(r), 0);
    CHECK(pbt_daemon_start(r));
    struct record_wait yw = {y, y->ports[0], PULL, y_pulls};
    CHECKF(pbt_wait_for(record_grew, &yw, PBT_BOUND_MS), "R pulled its genuine peer Y at start-up");
    struct record_wait xw = {x, x->ports[0], PULL, 0};
    CHECKF(!pbt_wait_for(record_grew, &xw, 2000), "R pulled X at start-up (%d Pulls)",
           recorded(x, x->ports[0], PULL, NULL));

    /* X is free: P renames itself to X (X serves P's key) and R accepts it */
    json_t *rep = pbt_admin(p, "POST", "/v1/rename", json_pack("{s:s}", "new_server_id", X), &st);
    CHECKF(st == 200, "P renames itself to X: %ld", st);
    char why[256];
    bool ok = rename_accepted_by(rep, r->server_id, why, sizeof why);
    CHECKF(ok, "R accepted P's rename to X (%s)", why);
    json_decref(rep);
    CHECKF(has_peer(r, X) && !has_peer(r, p->server_id),
           "after P's rename R knows P as X (X a peer: %d, old ID a peer: %d)", has_peer(r, X),
           has_peer(r, p->server_id));
out:
    if (pbt_failed > failed0 && r) pbt_daemon_dump_log(r);
    json_decref(one);
    pbt_daemon_free(r);
    pbt_daemon_free(p);
    tool_free(x);
    tool_free(y);
    pb_keys_free(yk);
    pb_keys_free(other);
}

/* ---- 5. pull bomb ---------------------------------------------------------------------------- */

static void test_pull_bomb(void)
{
    int failed0 = pbt_failed;
    const char *rx[] = {"--pull-interval",
                        "1",
                        "--recv-budget-events",
                        BOMB_BUDGET_EVENTS,
                        "--recv-budget-bytes",
                        BOMB_BUDGET_BYTES,
                        "--recv-budget-interval",
                        BOMB_BUDGET_INTERVAL,
                        NULL};
    pbt_daemon *r = start("bombR", rx);
    struct tool *b = NULL;
    char bseed[65];
    pb_keys *bk = new_key(bseed);
    if (!r) goto out;
    char to[16];
    snprintf(to, sizeof to, "%u", r->port);
    /* it pushes every second (so R pulls it again a second later), 25 times at most */
    const char *bargs[] = {"--seed",          bseed,  "--push-to",  to,
                           "--push-every-ms", "1000", "--push-max", "25",
                           "--max-answers",   "200",  NULL};
    b = tool_run("pullbomb", bargs);
    if (!b) goto out;
    const char *S = b->id[0];
    char ok_line[96];
    snprintf(ok_line, sizeof ok_line, "as %s: status 200", S);

    long bound = rss_bound_kib(), max_rss = 0;
    int64_t end = pbt_now_ms() + BOMB_SECONDS * 1000, over_at = -1;
    int64_t t0 = pbt_now_ms();
    bool alive = true;
    while (pbt_now_ms() < end) {
        long rss = pbt_proc_kib(r->pid, "VmRSS");
        if (rss < 0) {
            alive = false;
            break;
        }
        if (rss > max_rss) max_rss = rss;
        if (rss >= bound) { /* failed already: spare the machine the rest */
            over_at = pbt_now_ms() - t0;
            break;
        }
        sleep_ms(100);
    }
    long hwm = pbt_proc_kib(r->pid, "VmHWM");
    int answers = tool_log_count(b, ": answer ");
    int pushes_ok = tool_log_count(b, ok_line);
    json_t *stored = events_from(r, S, BOMB_STORED_MAX + 1);
    size_t nstored = json_array_size(stored);
    json_decref(stored);
    fprintf(stderr,
            "pullbomb: %d Pull answers served, %d Pushes accepted; R: max VmRSS %ld KiB, VmHWM "
            "%ld KiB%s, %s%zu events from the bomb stored\n",
            answers, pushes_ok, max_rss, hwm, over_at >= 0 ? " (stopped at the bound)" : "",
            nstored > BOMB_STORED_MAX ? "more than " : "",
            nstored > BOMB_STORED_MAX ? (size_t)BOMB_STORED_MAX : nstored);
    CHECKF(alive, "R is still running after the pull bomb");
    CHECKF(pushes_ok >= 1, "the bomb's first Push was accepted, so R knows it");
    CHECKF(answers >= 1, "R pulled the bomb (%d answers served)", answers);
    CHECKF(max_rss < bound && (hwm < 0 || hwm < bound),
           "R's RSS under the pull bomb: max sampled %ld KiB, VmHWM %ld KiB, want < %ld KiB%s",
           max_rss, hwm, bound, over_at >= 0 ? " (bound passed, bomb stopped early)" : "");
    CHECKF(nstored <= BOMB_STORED_MAX,
           "R stored %s%zu events from the bomb in %d s, want at most %d (budget %s per %s s)",
           nstored > BOMB_STORED_MAX ? "more than " : "",
           nstored > BOMB_STORED_MAX ? (size_t)BOMB_STORED_MAX : nstored, BOMB_SECONDS,
           BOMB_STORED_MAX, BOMB_BUDGET_EVENTS, BOMB_BUDGET_INTERVAL);
out:
    tool_free(b);
    if (pbt_failed > failed0 && r) pbt_daemon_dump_log(r);
    pbt_daemon_free(r);
    pb_keys_free(bk);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return 2;
    unsetenv("PBT_STORE"); /* failed-auth reads the SQLite store itself */
    const char *only = getenv("PBT_ONLY");
#define RUN(name, fn)                                                                              \
    if (!only || !strcmp(only, name)) fn()
    RUN("replay-push", test_replay_push);
    RUN("replay-pull", test_replay_pull);
    RUN("rename-replay", test_rename_replay);
    RUN("rename-pending", test_rename_pending);
    RUN("former-id", test_former_id);
    RUN("flood", test_flood);
    RUN("private", test_private);
    RUN("failed-auth", test_failed_auth);
    RUN("pullbomb", test_pull_bomb);
    curl_global_cleanup();
    return pbt_finish();
}
