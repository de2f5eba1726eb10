/*
 * crash_test - no event lost, duplicated or reordered when the sender or the receiver is
 * killed with SIGKILL at random points of a stream, and at the two worst moments:
 *   - the receiver between its store commit and its answer (fault point
 *     delivery.crash-after-commit): the sender never hears the 200 and pushes again;
 *   - the sender between the receiver's 200 and forgetting the event (fault point
 *     delivery.crash-before-forget): after the restart it pushes the event again.
 * Both replays must be recognised by the receiver's per-sender sequence check.
 *
 * Usage: crash_test [EVENTS [KILLS]] (default 10000 events, 10 kills). The seed is
 * printed; PBT_SEED=N replays a run.
 */
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static json_t *gen_event(unsigned i)
{
    char inv[48];
    snprintf(inv, sizeof inv, "inv-%u-é", i);
    char u[24], g[24];
    snprintf(u, sizeof u, "%u", i % 97);
    snprintf(g, sizeof g, "%u", i);
    switch (i % 4) {
    case 0:
        return json_pack("{s:{s:s,s:s}}", "userAddedToGuild", "userId", u, "guildId", g);
    case 1:
        return json_pack("{s:{s:s,s:s}}", "userRemovedFromGuild", "userId", u, "guildId", g);
    case 2:
        return json_pack("{s:{s:s,s:s,s:s}}", "userInvited", "userId", u, "inviterId", g,
                         "inviteId", inv);
    default:
        return json_pack("{s:{s:s,s:s,s:s}}", "userRejectedInvite", "guildId", g, "userId", u,
                         "inviteId", inv);
    }
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

/* Reads B's whole inbox and checks it against the stream: returns events seen. */
static long verify(const pbt_daemon *b, const char *from, unsigned n, bool final)
{
    long long after = 0;
    unsigned next = 0;
    long dups = 0, wrong = 0, others = 0;
    for (int guard = 0; guard < 100000; guard++) {
        char path[128];
        snprintf(path, sizeof path, "/v1/inbox?after=%lld&limit=1000", after);
        long st;
        json_t *r = pbt_admin(b, "GET", path, NULL, &st);
        json_t *evs = json_object_get(r, "events");
        size_t i;
        json_t *it;
        json_array_foreach(evs, i, it)
        {
            if (strcmp(json_string_value(json_object_get(it, "from")), from)) {
                others++;
                continue;
            }
            json_t *want = next < n ? gen_event(next) : NULL;
            if (want && json_equal(want, json_object_get(it, "event"))) {
                next++;
            } else {
                /* not the next expected one: a duplicate of an earlier one, or out of order */
                if (next > 0) {
                    json_t *prev = gen_event(next - 1);
                    if (json_equal(prev, json_object_get(it, "event")))
                        dups++;
                    else
                        wrong++;
                    json_decref(prev);
                } else {
                    wrong++;
                }
            }
            json_decref(want);
        }
        size_t cnt = json_array_size(evs);
        if (cnt) after = json_integer_value(json_object_get(r, "next"));
        json_decref(r);
        if (st != 200 || cnt == 0) break;
    }
    if (final) {
        fprintf(stderr, "crash_test: %u of %u arrived in order; %ld duplicates, %ld out of order\n",
                next, n, dups, wrong);
        CHECKF(next == n, "lost: %u of %u events arrived", next, n);
        CHECKF(dups == 0, "%ld duplicated events", dups);
        CHECKF(wrong == 0, "%ld events out of order or altered", wrong);
        CHECK_INT(others, 0);
    }
    return dups || wrong ? -1 : (long)next;
}

struct done_ctx {
    const pbt_daemon *b;
    const char *from;
    unsigned n;
};

static bool all_arrived(void *vctx)
{
    struct done_ctx *c = vctx;
    long got = verify(c->b, c->from, c->n, false);
    return got < 0 || got >= (long)c->n;
}

static void restart(pbt_daemon *d)
{
    CHECKF(pbt_daemon_start(d), "%s restarts", d->server_id);
}

/* Restarts d with a fault point that makes it abort at its first hit (it may even hit
 * it before it is seen healthy), waits for that crash, then restarts it normally. */
static void crash_at(pbt_daemon *d, const char *fault)
{
    setenv("PB_FAULTS", fault, 1);
    pbt_daemon_start(d);
    unsetenv("PB_FAULTS");
    CHECKF(pbt_daemon_wait_exit(d, 60000), "%s: crashed at %s", d->server_id, fault);
    char needle[128];
    snprintf(needle, sizeof needle, "fault point %s: crashing", fault);
    FILE *f = fopen(d->log_path, "r");
    char line[2048];
    bool seen = false;
    while (f && fgets(line, sizeof line, f))
        seen = seen || strstr(line, needle) != NULL;
    if (f) fclose(f);
    CHECKF(seen, "%s: the crash happened at %s", d->server_id, fault);
    restart(d);
}

int main(int argc, char **argv)
{
    unsigned n = argc > 1 ? (unsigned)atoi(argv[1]) : 10000;
    unsigned kills = argc > 2 ? (unsigned)atoi(argv[2]) : 10;
    unsigned seed = getenv("PBT_SEED") ? (unsigned)atoi(getenv("PBT_SEED")) : (unsigned)time(NULL);
    fprintf(stderr, "crash_test: %u events, %u kills, seed %u (PBT_SEED=%u replays)\n", n, kills,
            seed, seed);
    srand(seed);

    const char *ax[] = {"--push-retries",
                        "2",
                        "--retry-base-ms",
                        "20",
                        "--backoff-min",
                        "1",
                        "--backoff-max",
                        "2",
                        "--peer-timeout-ms",
                        "3000",
                        NULL};
    pbt_daemon *a = pbt_daemon_new("crashA", ax);
    pbt_daemon *b = pbt_daemon_new("crashB", NULL);
    if (!pbt_daemon_start(a) || !pbt_daemon_start(b)) {
        CHECK(!"daemons start");
        return pbt_finish();
    }
    unsigned batch = 250, batches = (n + batch - 1) / batch;
    unsigned every = kills ? (batches / (kills + 2) ? batches / (kills + 2) : 1) : batches + 1;
    unsigned killed = 0, submitted = 0;
    int64_t t0 = pbt_now_ms();
    for (unsigned k = 0; k < batches; k++) {
        unsigned m = n - submitted < batch ? n - submitted : batch;
        bool ok = false;
        for (int tries = 0; tries < 100 && !ok; tries++) {
            ok = submit(a, b->server_id, submitted, m);
            if (!ok) {
                struct timespec ts = {0, 50 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
        }
        CHECKF(ok, "batch %u accepted", k);
        if (!ok) break;
        submitted += m;
        if (killed < kills && k % every == every - 1) {
            struct timespec ts = {0, (long)(rand() % 300) * 1000 * 1000};
            nanosleep(&ts, NULL);
            pbt_daemon *victim = killed % 2 ? b : a;
            pbt_daemon_kill(victim);
            killed++;
            fprintf(stderr, "crash_test: SIGKILL %s after batch %u\n",
                    victim == a ? "sender" : "receiver", k);
            /* the two worst moments, once each */
            const char *fault = NULL;
            if (killed == 1) fault = "delivery.crash-before-forget";
            if (killed == 2) fault = "delivery.crash-after-commit";
            if (fault)
                crash_at(victim, fault);
            else
                restart(victim);
        }
    }
    struct done_ctx dc = {b, a->server_id, n};
    pbt_wait_for(all_arrived, &dc, 600000);
    verify(b, a->server_id, n, true);
    fprintf(stderr, "crash_test: %u events, %u kills in %lld ms\n", n, killed,
            (long long)(pbt_now_ms() - t0));
    if (pbt_failed) {
        pbt_daemon_dump_log(a);
        pbt_daemon_dump_log(b);
    }
    pbt_daemon_free(a);
    pbt_daemon_free(b);
    return pbt_finish();
}
