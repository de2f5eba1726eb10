/*
 * hungpeers_test - hung and refusing peers must not delay delivery to a healthy one.
 *
 * Set-up: sender A and healthy receiver B, real postboxd processes with the default
 * delivery settings (30 s peer timeout, 5 retries), and 16 bad peers served by the peer
 * farm (tests/tools/peerfarm.c): 4 that accept connections and never answer, 4 that
 * listen and never accept (hung too, from A's side), 8 whose port is closed (refusing).
 *
 * After one warm-up event A -> B, the test submits 20 events to each of the 17 peers,
 * alternating between them (one admin call per event; in each round the 8 first bad
 * peers come before B, the 8 others after), and checks:
 *   - every event for B arrives in B's inbox, in order, nothing lost, nothing duplicated;
 *   - promptly: each within BOUND_MS (5 s) of its submission at A. A Push to B takes about
 *     a millisecond; 5 s leaves room for a loaded machine and stays far below what one
 *     hung peer costs a blocking sender (a 30 s timeout per try, 6 tries);
 *   - the bad peers' events stay queued at A (GET /v1/peers: 20 each, not parked);
 *   - A really tried the hung peers (the farm accepted connections from it), so a pass is
 *     not a sender that ignored them.
 * B's events are waited for at most WAIT_MS (20 s) after the last submission; the whole
 * test takes about 30 s. Runs on both stores (PBT_STORE=postgres: integration/
 * hungpeers_test_pg).
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "farm.h"
#include "harness.h"

#define EVENTS 20
#define NBAD 16
#define BOUND_MS 5000
#define WAIT_MS 20000

static pbt_daemon *start(const char *tag)
{
    pbt_daemon *d = pbt_daemon_new(tag, NULL);
    CHECKF(pbt_daemon_start(d), "%s starts", tag);
    return d;
}

/* One event for `to`; true when A answered 202 (durable at A). */
static bool submit_one(const pbt_daemon *a, const char *to, json_t *event)
{
    long st;
    json_t *r =
        pbt_admin(a, "POST", "/v1/outbox", json_pack("{s:s,s:O}", "to", to, "event", event), &st);
    json_decref(r);
    return st == 202;
}

/* Events in d's inbox from `from`, in inbox order (new reference). */
static json_t *events_from(const pbt_daemon *d, const char *from)
{
    json_t *out = json_array();
    long long after = 0;
    for (int guard = 0; guard < 100; guard++) {
        char path[128];
        snprintf(path, sizeof path, "/v1/inbox?after=%lld&limit=1000", after);
        long st;
        json_t *r = pbt_admin(d, "GET", path, NULL, &st), *it;
        json_t *items = json_object_get(r, "events");
        size_t i, n = json_array_size(items);
        json_array_foreach(items, i, it)
        {
            const char *f = json_string_value(json_object_get(it, "from"));
            if (f && !strcmp(f, from)) json_array_append(out, json_object_get(it, "event"));
        }
        if (n) after = json_integer_value(json_object_get(r, "next"));
        json_decref(r);
        if (st != 200 || n == 0) break;
    }
    return out;
}

/* Polls B's inbox and notes when each event was first seen. */
struct arrivals {
    const pbt_daemon *b;
    const char *from;
    size_t want;
    int64_t seen_ms[EVENTS + 1]; /* first seen, by position in B's inbox; 0 = not yet */
    size_t have;
};

static bool all_arrived(void *vctx)
{
    struct arrivals *w = vctx;
    json_t *got = events_from(w->b, w->from);
    int64_t now = pbt_now_ms();
    w->have = json_array_size(got);
    for (size_t i = 0; i < w->have && i <= EVENTS; i++)
        if (!w->seen_ms[i]) w->seen_ms[i] = now;
    json_decref(got);
    return w->have >= w->want;
}

/* A's /v1/peers entry for id (new reference) or NULL. */
static json_t *peer_entry(const pbt_daemon *a, const char *id)
{
    long st;
    json_t *r = pbt_admin(a, "GET", "/v1/peers", NULL, &st), *p, *found = NULL;
    size_t i;
    json_array_foreach(json_object_get(r, "peers"), i, p)
    {
        const char *sid = json_string_value(json_object_get(p, "server_id"));
        if (sid && !strcmp(sid, id)) found = json_incref(p);
    }
    json_decref(r);
    return found;
}

int main(void)
{
    const char *fargs[] = {"--count", "16",         "--hung", "0-3", "--unaccepted",
                           "4-7",     "--refusing", "8-15",   NULL};
    pbt_farm *farm = pbt_farm_start("hungfarm", fargs);
    CHECKF(farm && farm->count == NBAD, "the peer farm serves %d bad peers", NBAD);
    if (!farm || farm->count != NBAD) {
        pbt_farm_free(farm);
        return pbt_finish();
    }
    pbt_daemon *a = start("hungA"), *b = start("hungB");

    /* Warm-up: B fetches A's key; the delay without bad peers, for comparison. */
    json_t *sent = json_array();
    json_t *ev = json_pack("{s:{s:s,s:s}}", "userAddedToGuild", "userId", "7", "guildId", "1");
    int64_t t0 = pbt_now_ms();
    CHECK(submit_one(a, b->server_id, ev));
    json_array_append_new(sent, ev);
    struct arrivals w = {.b = b, .from = a->server_id, .want = 1};
    CHECKF(pbt_wait_for(all_arrived, &w, PBT_BOUND_MS), "warm-up event A -> B arrives");
    fprintf(stderr, "hungpeers: warm-up event A -> B arrived after %lld ms (no bad peers yet)\n",
            (long long)(w.seen_ms[0] - t0));

    /* 20 rounds; in each, one event for every bad peer and for B. */
    int64_t submitted_ms[EVENTS + 1] = {0};
    bool sub_ok = true;
    for (int i = 0; i < EVENTS && sub_ok; i++) {
        for (int k = 0; k <= NBAD && sub_ok; k++) {
            if (k == NBAD / 2) {
                char g[16];
                snprintf(g, sizeof g, "%d", 100 + i);
                json_t *e =
                    json_pack("{s:{s:s,s:s}}", "userAddedToGuild", "userId", "7", "guildId", g);
                sub_ok = submit_one(a, b->server_id, e);
                submitted_ms[i + 1] = pbt_now_ms();
                json_array_append_new(sent, e);
            } else {
                int bad = k < NBAD / 2 ? k : k - 1;
                char u[16], g[16];
                snprintf(u, sizeof u, "%d", 1000 + bad);
                snprintf(g, sizeof g, "%d", 100 + i);
                json_t *e =
                    json_pack("{s:{s:s,s:s}}", "userAddedToGuild", "userId", u, "guildId", g);
                sub_ok = submit_one(a, farm->ids[bad], e);
                json_decref(e);
            }
        }
        /* note B's arrivals while submitting, so a delay is measured, not bounded above */
        w.want = i + 2;
        all_arrived(&w);
    }
    CHECKF(sub_ok, "A accepted all %d submissions", EVENTS * (NBAD + 1));

    /* B's events: every one, within BOUND_MS of its submission. */
    w.want = EVENTS + 1;
    bool all = pbt_wait_for(all_arrived, &w, WAIT_MS);
    int late = 0, missing = 0;
    int64_t worst = 0;
    char detail[1024] = "";
    size_t dn = 0;
    for (int i = 1; i <= EVENTS; i++) {
        int64_t lat = w.seen_ms[i] ? w.seen_ms[i] - submitted_ms[i] : -1;
        if (lat < 0)
            missing++;
        else if (lat > BOUND_MS)
            late++;
        if (lat > worst) worst = lat;
        if (dn < sizeof detail - 16)
            dn += (size_t)snprintf(detail + dn, sizeof detail - dn, " %lld",
                                   (long long)(lat < 0 ? -1 : lat));
    }
    fprintf(stderr, "hungpeers: delay of each event for B, ms (-1: not arrived in %d s):%s\n",
            WAIT_MS / 1000, detail);
    CHECKF(all,
           "all %d events for B arrive while the bad peers hang: %zu of %d within %d s of "
           "the last submission",
           EVENTS, w.have ? w.have - 1 : 0, EVENTS, WAIT_MS / 1000);
    CHECKF(late == 0 && missing == 0,
           "each event for B arrives within %d ms of its submission: %d late, %d never "
           "arrived, slowest %lld ms",
           BOUND_MS, late, missing, (long long)worst);
    json_t *got = events_from(b, a->server_id);
    CHECKF(json_equal(got, sent),
           "B's inbox holds exactly the %zu events sent, in order (it holds %zu)",
           json_array_size(sent), json_array_size(got));
    json_decref(got);

    /* The bad peers' events wait at A, none lost, none parked. */
    int queued_ok = 0;
    for (int k = 0; k < NBAD; k++) {
        json_t *p = peer_entry(a, farm->ids[k]);
        const char *mode = json_string_value(json_object_get(p, "mode"));
        json_int_t q = json_integer_value(json_object_get(p, "queued"));
        bool ok = p && q == EVENTS && mode && strcmp(mode, "parked") != 0;
        CHECKF(ok, "A keeps the %d events of bad peer %s (%s): queued %lld, mode %s", EVENTS,
               farm->ids[k], farm->modes[k], (long long)q, mode ? mode : "(none)");
        queued_ok += ok;
        json_decref(p);
    }
    fprintf(stderr, "hungpeers: %d of %d bad peers show their %d events queued at A\n", queued_ok,
            NBAD, EVENTS);
    json_t *sum = pbt_farm_get(farm, "/summary");
    json_int_t hung_conns = json_integer_value(json_object_get(sum, "hung_connections"));
    CHECKF(hung_conns >= 1, "A connected to the hung peers (%lld connections accepted)",
           (long long)hung_conns);
    json_decref(sum);

    if (pbt_failed) {
        pbt_daemon_dump_log(a);
        pbt_farm_dump_log(farm);
    }
    CHECKF(pbt_daemon_stop(a) == 0, "A stops cleanly with Pushes to hung peers in flight");
    CHECK_INT(pbt_daemon_stop(b), 0);
    CHECKF(pbt_farm_stop(farm), "the peer farm exits cleanly");
    json_decref(sent);
    pbt_daemon_free(a);
    pbt_daemon_free(b);
    pbt_farm_free(farm);
    return pbt_finish();
}
