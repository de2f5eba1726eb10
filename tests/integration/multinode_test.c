/*
 * multinode_test - several postboxd nodes serving one server ID on one PostgreSQL
 * database (server A), a receiver B on SQLite.
 *
 *   - events submitted alternately through every node arrive at B once, in submission
 *     order (the order the shared store assigned);
 *   - B goes away mid-stream; the node holding B's delivery lease (it keeps it while it
 *     retries) is killed with SIGKILL; B comes back: another node takes over within
 *     lease_ttl plus slack, and B still sees 0 lost, 0 duplicated, 0 reordered;
 *   - a Pull from B is answered by any node.
 * Needs PB_TEST_PG_URL (scripts/pg-start); fails without it, never skips.
 */
#include <fcntl.h>
#include <libpq-fe.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crypto/auth.h"
#include "harness.h"
#include "net/hrpc_client.h"
#include "crypto/keys.h"
#include "wire/wire.h"

#define NODES 3
#define BATCHES 30
#define BATCH 50
#define LEASE_TTL_S 3

struct holder_wait {
    const char *url, *peer;
    char *holder; /* the lease holder found (caller frees) */
};

static bool lease_held(void *vctx)
{
    struct holder_wait *w = vctx;
    free(w->holder);
    w->holder = pbt_pg_lease_holder(w->url, w->peer);
    return w->holder != NULL;
}

static json_t *gen_event(unsigned i)
{
    char u[24], g[24];
    snprintf(u, sizeof u, "%u", i % 31 + 1); /* IDs from 1: the admin API refuses 0 */
    snprintf(g, sizeof g, "%u", i + 1);
    return json_pack("{s:{s:s,s:s}}", i % 2 ? "userRemovedFromGuild" : "userAddedToGuild", "userId",
                     u, "guildId", g);
}

/* Number of events from `from` in d's inbox, checking they are exactly the stream's first
 * ones in order; -1 on a duplicate or reordering. */
static long in_order(const pbt_daemon *d, const char *from)
{
    long long after = 0;
    unsigned next = 0;
    bool bad = false;
    for (int guard = 0; guard < 1000; guard++) {
        char path[128];
        snprintf(path, sizeof path, "/v1/inbox?after=%lld&limit=1000", after);
        long st;
        json_t *r = pbt_admin(d, "GET", path, NULL, &st);
        json_t *evs = json_object_get(r, "events");
        size_t i;
        json_t *it;
        json_array_foreach(evs, i, it)
        {
            if (strcmp(json_string_value(json_object_get(it, "from")), from)) continue;
            json_t *want = gen_event(next);
            if (json_equal(want, json_object_get(it, "event")))
                next++;
            else
                bad = true;
            json_decref(want);
        }
        size_t n = json_array_size(evs);
        if (n) after = json_integer_value(json_object_get(r, "next"));
        json_decref(r);
        if (st != 200 || n == 0) break;
    }
    return bad ? -1 : (long)next;
}

struct wait_ctx {
    const pbt_daemon *b;
    const char *from;
    long want;
    long have;
};

static bool reached(void *vctx)
{
    struct wait_ctx *w = vctx;
    w->have = in_order(w->b, w->from);
    return w->have < 0 || w->have >= w->want;
}

int main(void)
{
    if (!pbt_pg_url()) {
        CHECK(!"PB_TEST_PG_URL is set (scripts/pg-start)");
        return pbt_finish();
    }
    char dbname[64];
    snprintf(dbname, sizeof dbname, "pb_multinode_%d", (int)getpid());
    char *url = pbt_pg_create_db(dbname);
    if (!url) {
        CHECK(!"a database for the nodes");
        return pbt_finish();
    }
    char *keydir = pbt_tmpdir("mnkey"), keypath[600], hex[65];
    snprintf(keypath, sizeof keypath, "%s/key", keydir);
    bool created;
    CHECK_OK(pb_keygen(keypath, hex, &created));

    pbt_daemon *n[NODES];
    char sid[64] = "", ttl[16];
    snprintf(ttl, sizeof ttl, "%d", LEASE_TTL_S);
    for (int i = 0; i < NODES; i++) {
        char node[16], tag[16];
        snprintf(node, sizeof node, "n%d", i);
        snprintf(tag, sizeof tag, "mn%d", i);
        n[i] = pbt_daemon_new(tag, NULL);
        if (i == 0) snprintf(sid, sizeof sid, "%s", n[0]->server_id);
        const char *extra[] = {"--store",
                               url,
                               "--server-id",
                               sid,
                               "--node-id",
                               node,
                               "--lease-ttl",
                               ttl,
                               "--push-retries",
                               "1",
                               "--retry-base-ms",
                               "10",
                               "--backoff-min",
                               "1",
                               "--backoff-max",
                               "2",
                               NULL};
        for (int k = 0; extra[k]; k++)
            n[i]->args[n[i]->nargs++] = strdup(extra[k]);
        char dst[600];
        snprintf(dst, sizeof dst, "%s/key", n[i]->dir);
        CHECK(pbt_copy_file(keypath, dst));
        CHECKF(pbt_daemon_start(n[i]), "node %d starts", i);
    }
    pbt_daemon *b = pbt_daemon_new("mnB", NULL);
    CHECK(pbt_daemon_start(b));

    /* every node speaks for the same server */
    for (int i = 0; i < NODES; i++) {
        long st;
        json_t *r = pbt_admin(n[i], "GET", "/v1/key", NULL, &st);
        CHECK_STR(json_string_value(json_object_get(r, "server_id")), sid);
        CHECK_STR(json_string_value(json_object_get(r, "public_key")), hex);
        json_decref(r);
    }

    bool dead[NODES] = {false};
    int64_t killed_at = 0;
    long at_kill = 0;
    unsigned sent = 0;
    for (unsigned k = 0; k < BATCHES; k++) {
        int via = (int)(k % NODES);
        while (dead[via])
            via = (via + 1) % NODES;
        if (k == BATCHES / 3) { /* B goes away: what follows cannot be delivered at once */
            at_kill = in_order(b, sid);
            CHECK_INT(pbt_daemon_stop(b), 0);
        }
        json_t *evs = json_array();
        for (unsigned i = 0; i < BATCH; i++)
            json_array_append_new(evs, gen_event(sent + i));
        long st;
        json_t *r = pbt_admin(n[via], "POST", "/v1/outbox",
                              json_pack("{s:s,s:o}", "to", b->server_id, "events", evs), &st);
        CHECKF(st == 202, "batch %u through node %d: %ld", k, via, st);
        json_decref(r);
        sent += BATCH;
        if (k == BATCHES / 3) {
            /* the node delivering to B keeps the lease while it retries: kill it */
            struct holder_wait hw = {url, b->server_id, NULL};
            CHECKF(pbt_wait_for(lease_held, &hw, PBT_BOUND_MS), "a node holds B's lease");
            char *holder = hw.holder;
            int victim = holder && holder[0] == 'n' ? atoi(holder + 1) : -1;
            CHECKF(victim >= 0 && victim < NODES, "a node holds B's lease (%s)",
                   holder ? holder : "none");
            if (victim >= 0 && victim < NODES) {
                pbt_daemon_kill(n[victim]);
                dead[victim] = true;
                killed_at = pbt_now_ms();
                fprintf(stderr, "multinode: killed %s (lease holder) with %ld of %u delivered\n",
                        holder, at_kill, sent);
            }
            free(holder);
        }
    }
    /* a surviving node takes B over once the dead node's lease expires */
    if (killed_at) {
        struct holder_wait hw = {url, b->server_id, NULL};
        bool taken = false;
        int64_t until = pbt_now_ms() + LEASE_TTL_S * 1000 + 10000;
        while (!taken && pbt_now_ms() < until) {
            if (pbt_wait_for(lease_held, &hw, 1000) && hw.holder[0] == 'n') {
                int who = atoi(hw.holder + 1);
                taken = who >= 0 && who < NODES && !dead[who];
            }
        }
        CHECKF(taken, "a live node took B's lease over after the kill (holder: %s)",
               hw.holder ? hw.holder : "none");
        if (taken)
            fprintf(stderr, "multinode: %s took B over %lld ms after the kill\n", hw.holder,
                    (long long)(pbt_now_ms() - killed_at));
        free(hw.holder);
    }
    CHECK(pbt_daemon_start(b)); /* back: its start-up Pull and the new lease holder deliver */
    struct wait_ctx w = {b, sid, (long)sent, 0};
    CHECK(pbt_wait_for(reached, &w, 120000));
    long got = in_order(b, sid);
    CHECKF(got == (long)sent, "B holds %ld of %u events in order (-1: duplicate or reordered)", got,
           sent);
    if (killed_at) {
        fprintf(stderr, "multinode: all %u delivered %lld ms after the kill\n", sent,
                (long long)(pbt_now_ms() - killed_at));
        char *holder = pbt_pg_lease_holder(url, b->server_id);
        CHECKF(holder == NULL || holder[0] == 'n', "lease after takeover: %s",
               holder ? holder : "released");
        free(holder);
    }

    /* a Pull from B is answered by any live node */
    char bkey[600];
    snprintf(bkey, sizeof bkey, "%s/key", b->dir);
    pb_keys *kb = NULL;
    CHECK_OK(pb_keys_load(bkey, &kb));
    pb_client *cl = NULL;
    pb_client_opts co = {.plain_http = true, .allow_private = true};
    CHECK_OK(pb_client_new(&co, &cl));
    for (int i = 0; i < NODES; i++) {
        if (dead[i]) continue;
        pb_buf req = PB_BUF_INIT;
        pb_wire_pull_req_encode(&(pb_pull_req){.next_seq = 1}, &req);
        char *t = pb_auth_header_make(kb, b->server_id, NULL, (uint64_t)time(NULL));
        pb_client_answer ans;
        pb_err err = pb_client_call(cl, n[i]->server_id, "/protocol.sync.v1.PostboxService/Pull", t,
                                    req.data, req.len, &ans);
        CHECKF(err == PB_OK && ans.status == 200, "node %d answers B's Pull: %ld", i, ans.status);
        pb_client_answer_clear(&ans);
        free(t);
        pb_buf_free(&req);
    }
    pb_client_free(cl);
    pb_keys_free(kb);

    /* One live node per node_id: a second node started as n<live> is refused once the
     * live one's heartbeat has been renewed for lease_ttl; a node restarted right after a
     * SIGKILL waits out its former self's heartbeat and starts. */
    int live = 0;
    while (live < NODES && dead[live])
        live++;
    if (live < NODES) {
        char node[16];
        snprintf(node, sizeof node, "n%d", live);
        pbt_daemon *dup = pbt_daemon_new("mndup", NULL);
        for (int k = 0; k < n[live]->nargs; k++)
            dup->args[dup->nargs++] = strdup(n[live]->args[k]);
        char dst[600];
        snprintf(dst, sizeof dst, "%s/key", dup->dir);
        CHECK(pbt_copy_file(keypath, dst));
        int64_t t0 = pbt_now_ms();
        CHECKF(!pbt_daemon_start(dup), "a second live %s is refused", node);
        int64_t took = pbt_now_ms() - t0;
        CHECK_INT(dup->exit_status, 1);
        CHECKF(pbt_log_count(dup, "another live postboxd runs with node_id", node) == 1,
               "the refusal names node_id %s", node);
        CHECKF(took >= LEASE_TTL_S * 1000, "refused after waiting out lease_ttl (%lld ms)",
               (long long)took);
        pbt_daemon_free(dup);

        pbt_daemon_kill(n[live]);
        CHECKF(pbt_daemon_start(n[live]), "%s restarts after a SIGKILL", node);
        CHECKF(pbt_log_count(n[live], "holds a heartbeat in the store", "waiting up to") == 1,
               "%s said why it waited", node);
        long st;
        json_t *r = pbt_admin(n[live], "GET", "/v1/key", NULL, &st);
        CHECK_INT(st, 200);
        json_decref(r);
    }

    if (pbt_failed)
        for (int i = 0; i < NODES; i++)
            pbt_daemon_dump_log(n[i]);
    for (int i = 0; i < NODES; i++)
        pbt_daemon_free(n[i]);
    pbt_daemon_free(b);
    pbt_pg_drop_db(dbname);
    free(url);
    pbt_rmrf(keydir);
    free(keydir);
    return pbt_finish();
}
