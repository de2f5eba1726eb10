/*
 * queuectl_nodes_test - queue control with several nodes of one server on one PostgreSQL
 * database (server A: nodes n0 and n1; receivers on SQLite). One node holds a peer's
 * delivery lease; an operator's command may reach the other:
 *
 *   - flush through the node that does not hold the lease: the holder, which would wait
 *     its backoff (600 s), tries the peer within its 1 s scan (the flushes row);
 *   - drop through the other node: the queue is gone, one notice in the (shared) inbox,
 *     and the next event reaches the peer once it is up (the holder re-read the new epoch);
 *   - max_queue_age on both nodes (switched on by a reload): the events expire once (the
 *     expiry is a transaction under the peer's row lock): one notice, and the nodes'
 *     postbox_events_expired_total add up to the events.
 * Needs PB_TEST_PG_URL (scripts/pg-start); fails without it, never skips.
 */
#include <fcntl.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include "crypto/keys.h"
#include "harness.h"
#include "queuectl.h"

struct holder_wait {
    const char *url, *peer;
    int node; /* out: the holder's index, -1 none */
};

static bool lease_held(void *ctx)
{
    struct holder_wait *w = ctx;
    char *h = pbt_pg_lease_holder(w->url, w->peer);
    w->node = h && h[0] == 'n' ? atoi(h + 1) : -1;
    free(h);
    return w->node == 0 || w->node == 1;
}

struct two_nodes {
    const pbt_daemon *a, *b;
    double sum; /* out */
};

/* the nodes' postbox_events_expired_total add up to 4 (or more) */
static bool expired_sum(void *ctx)
{
    struct two_nodes *t = ctx;
    t->sum = pbt_metric(t->a, "postbox_events_expired_total") +
             pbt_metric(t->b, "postbox_events_expired_total");
    return t->sum >= 4;
}

static void set_age(const char *conf, int age)
{
    FILE *f = fopen(conf, "w");
    fprintf(f, "max_queue_age = %d\n", age);
    fclose(f);
}

int main(void)
{
    if (!pbt_pg_url()) {
        CHECK(!"PB_TEST_PG_URL is set (scripts/pg-start)");
        return pbt_finish();
    }
    char dbname[64];
    snprintf(dbname, sizeof dbname, "pb_qctlnodes_%d", (int)getpid());
    char *url = pbt_pg_create_db(dbname);
    if (!url) {
        CHECK(!"a database for the nodes");
        return pbt_finish();
    }
    char *keydir = pbt_tmpdir("qnkey"), keypath[600], hex[65], conf[600];
    snprintf(keypath, sizeof keypath, "%s/key", keydir);
    snprintf(conf, sizeof conf, "%s/postbox.conf", keydir);
    set_age(conf, 0);
    bool created;
    CHECK_OK(pb_keygen(keypath, hex, &created));
    pbt_daemon *n[2];
    char sid[64] = "";
    for (int i = 0; i < 2; i++) {
        char node[16], tag[16];
        snprintf(node, sizeof node, "n%d", i);
        snprintf(tag, sizeof tag, "qn%d", i);
        n[i] = pbt_daemon_new(tag, NULL);
        if (i == 0) snprintf(sid, sizeof sid, "%s", n[0]->server_id);
        const char *extra[] = {"-c",
                               conf,
                               "--store",
                               url,
                               "--server-id",
                               sid,
                               "--node-id",
                               node,
                               "--lease-ttl",
                               "3",
                               "--push-retries",
                               "0",
                               "--backoff-min",
                               "600",
                               "--backoff-max",
                               "900",
                               NULL};
        for (int k = 0; extra[k]; k++)
            n[i]->args[n[i]->nargs++] = strdup(extra[k]);
        char dst[600];
        snprintf(dst, sizeof dst, "%s/key", n[i]->dir);
        CHECK(pbt_copy_file(keypath, dst));
        CHECKF(pbt_daemon_start(n[i]), "node %d starts", i);
    }
    pbt_daemon *p = pbt_daemon_new("qnP", NULL);
    char path[256];
    long st = 0;

    /* ---- flush through the node without the lease */
    submit(n[0], p->server_id, 7, 3);
    struct peer_mode qp = {n[0], p->server_id, "queued"};
    CHECKF(pbt_wait_for(in_mode, &qp, 20000), "P queued");
    struct holder_wait hw = {url, p->server_id, -1};
    CHECKF(pbt_wait_for(lease_held, &hw, 20000), "a node holds P's lease");
    int holder = hw.node < 0 ? 0 : hw.node, other = 1 - holder;
    CHECK(pbt_daemon_start(p));
    snprintf(path, sizeof path, "/v1/peers/%s/flush", p->server_id);
    json_t *j = pbt_admin(n[other], "POST", path, NULL, &st);
    CHECKF(st == 200 && json_is_true(json_object_get(j, "flushed")), "flush via n%d: %ld", other,
           st);
    json_decref(j);
    int64_t t0 = pbt_now_ms();
    struct inbox_wait ib = {p, 3};
    CHECKF(pbt_wait_for(inbox_has, &ib, 20000), "P has the 3 events after the flush");
    fprintf(stderr, "nodes: flush through n%d, delivered by n%d %lld ms later (backoff 600 s)\n",
            other, holder, (long long)(pbt_now_ms() - t0));

    /* ---- drop through the node without the lease */
    struct queue_wait qw = {n[other], p->server_id, 0};
    CHECKF(pbt_wait_for(queued_is, &qw, 20000), "the delivered events leave the queue");
    CHECK_INT(pbt_daemon_stop(p), 0);
    submit(n[0], p->server_id, 8, 2);
    CHECKF(pbt_wait_for(in_mode, &qp, 20000), "P queued again");
    CHECKF(pbt_wait_for(lease_held, &hw, 20000), "a node holds P's lease");
    holder = hw.node < 0 ? 0 : hw.node;
    other = 1 - holder;
    snprintf(path, sizeof path, "/v1/peers/%s/drop", p->server_id);
    j = pbt_admin(n[other], "POST", path, json_pack("{s:b}", "confirm", 1), &st);
    CHECKF(st == 200 && json_integer_value(json_object_get(j, "dropped")) == 2 &&
               !strcmp(json_string_value(json_object_get(j, "first_seq")), "4"),
           "drop via n%d: %ld", other, st);
    json_decref(j);
    char cnt[24] = "";
    CHECKF(notices(n[holder], p->server_id, "operator", cnt) == 1 && !strcmp(cnt, "2"),
           "one notice, seen through either node");
    struct peer_mode pp = {n[holder], p->server_id, "push"};
    CHECKF(pbt_wait_for(in_mode, &pp, 20000), "P in push mode");
    CHECK(pbt_daemon_start(p));
    submit(n[holder], p->server_id, 9, 1);
    ib.want = 4;
    CHECKF(pbt_wait_for(inbox_has, &ib, 20000), "P receives the event after the drop");
    /* ... and the nodes know it (P's Pull acknowledges it, or a Push): else the expiry
     * below counts it too */
    CHECKF(pbt_wait_for(queued_is, &qw, 20000), "the delivered event leaves the queue");

    /* ---- max_queue_age on both nodes */
    CHECK_INT(pbt_daemon_stop(p), 0);
    submit(n[1], p->server_id, 10, 4);
    CHECKF(pbt_wait_for(in_mode, &qp, 20000), "P queued for the expiry");
    set_age(conf, 1);
    kill(n[0]->pid, SIGHUP);
    kill(n[1]->pid, SIGHUP);
    struct two_nodes tn = {n[0], n[1], 0};
    pbt_wait_for(expired_sum, &tn, 20000);
    double sum = tn.sum;
    CHECKF(sum == 4, "the nodes expired %g events (4 queued)", sum);
    CHECKF(notices(n[0], p->server_id, "max_queue_age", cnt) == 1 && !strcmp(cnt, "4"),
           "one expiry notice (count %s)", cnt);

    if (pbt_failed)
        for (int i = 0; i < 2; i++)
            pbt_daemon_dump_log(n[i]);
    for (int i = 0; i < 2; i++)
        pbt_daemon_free(n[i]);
    pbt_daemon_free(p);
    pbt_pg_drop_db(dbname);
    free(url);
    pbt_rmrf(keydir);
    free(keydir);
    return pbt_finish();
}
