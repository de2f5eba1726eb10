/*
 * forgetbatch_test - the sender's cross-peer forget batch (lib/delivery/delivery.c
 * forget_batch_*): one commit forgets what many peers acknowledged. A crash before that
 * commit loses nothing: the events it would have forgotten are pushed again after the
 * restart, in order, and a foreign peer (which has no sequence check) may receive them a
 * second time, which PROTOCOL.md section 5 allows (applying an event twice has the effect
 * of applying it once).
 *
 * Set-up: sender A (postboxd-faults) and NPEERS healthy foreign peers served by the peer
 * farm (one event per Push, no acknowledgement extension). A starts with the fault point
 * delivery.crash-in-forget-batch, which aborts A just before the commit of the first forget
 * batch that holds two peers or more. Each peer gets EVENTS events in one submission (with
 * a submission_id, so a submission A may or may not have stored when it crashed is retried
 * after the restart without being queued twice); once A crashed it is restarted without the
 * fault and the rest is submitted. Checked, per peer, from the farm's record:
 *   - every event arrived (nothing lost);
 *   - in order: the record, with repeats of events the peer had already received removed,
 *     is guild 1, 2, ..., EVENTS (a replay goes on from the head that was not forgotten);
 *   - the crash happened in a batch (A's log) and at least one event was received twice
 *     (the batch's forget was really lost, so the replay is seen, not assumed).
 * Bounded: every wait is at most PBT_BOUND_MS; about 10 s. Runs on both stores
 * (forgetbatch_test_pg).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "farm.h"
#include "harness.h"

#define NPEERS 24
#define EVENTS 20
#define FAULT "delivery.crash-in-forget-batch"

/* Submits EVENTS events (userAddedToGuild{user = i + 1, guild = 1..EVENTS}) to peer i;
 * true on 202 (also as a repeat of an earlier submission). */
static bool submit(const pbt_daemon *a, const pbt_farm *f, size_t i)
{
    json_t *evs = json_array();
    for (int g = 1; g <= EVENTS; g++) {
        char u[24], gs[24];
        snprintf(u, sizeof u, "%zu", i + 1);
        snprintf(gs, sizeof gs, "%d", g);
        json_array_append_new(
            evs, json_pack("{s:{s:s,s:s}}", "userAddedToGuild", "userId", u, "guildId", gs));
    }
    char sid[48];
    snprintf(sid, sizeof sid, "forgetbatch-%zu", i);
    long st = 0;
    json_t *r = pbt_admin(
        a, "POST", "/v1/outbox",
        json_pack("{s:s,s:o,s:s}", "to", f->ids[i], "events", evs, "submission_id", sid), &st);
    json_decref(r);
    return st == 202;
}

struct tally {
    const pbt_farm *f;
    long dups, disorder, missing;
    char first_bad[256];
};

/* Reads the farm's record; true when every peer holds all its events (counting anomalies
 * in t). */
static bool complete(void *vctx)
{
    struct tally *t = vctx;
    json_t *st = pbt_farm_get(t->f, "/stats"), *id;
    if (!st) return false;
    t->dups = t->disorder = t->missing = 0;
    size_t i;
    json_array_foreach(json_object_get(st, "ids"), i, id)
    {
        const char *name = json_string_value(json_object_get(id, "id"));
        size_t peer = 0;
        for (; peer < t->f->count && strcmp(t->f->ids[peer], name ? name : ""); peer++)
            ;
        long high = 0; /* the highest guild received so far */
        json_t *e;
        size_t k;
        json_array_foreach(json_object_get(id, "events"), k, e)
        {
            long user = (long)json_integer_value(json_array_get(e, 3));
            long guild = (long)json_integer_value(json_array_get(e, 4));
            if (guild <= high) { /* a repeat of an event received before: allowed */
                t->dups++;
            } else if (guild != high + 1 || user != (long)peer + 1) {
                if (!t->disorder)
                    snprintf(t->first_bad, sizeof t->first_bad,
                             "%s: event %zu is user %ld guild %ld after guild %ld", name, k, user,
                             guild, high);
                t->disorder++;
                high = guild;
            } else {
                high = guild;
            }
        }
        t->missing += EVENTS - high;
    }
    json_decref(st);
    return t->missing == 0;
}

int main(void)
{
    char cnt[16];
    snprintf(cnt, sizeof cnt, "%d", NPEERS);
    const char *fargs[] = {"--count", cnt, NULL};
    pbt_farm *f = pbt_farm_start("fbfarm", fargs);
    CHECKF(f && f->count == NPEERS, "the peer farm serves %d peers", NPEERS);
    if (!f || f->count != NPEERS) {
        pbt_farm_free(f);
        return pbt_finish();
    }
    pbt_daemon *a = pbt_daemon_new("fbA", NULL);
    setenv("PB_FAULTS", FAULT, 1);
    bool up = pbt_daemon_start(a);
    unsetenv("PB_FAULTS");
    CHECKF(up, "A starts with the fault point %s", FAULT);
    bool accepted[NPEERS] = {0};
    bool crashed = false;
    for (size_t i = 0; up && i < NPEERS; i++) {
        accepted[i] = submit(a, f, i);
        if (!accepted[i]) break; /* A crashed meanwhile */
    }
    if (up) crashed = pbt_daemon_wait_exit(a, PBT_BOUND_MS);
    CHECKF(crashed, "A crashed before the commit of a forget batch");
    if (!crashed) pbt_daemon_kill(a);
    CHECKF(pbt_log_count(a, "fault point " FAULT ": crashing", NULL) == 1,
           "A's log shows the crash at %s", FAULT);
    CHECKF(pbt_daemon_start(a), "A restarts without the fault");
    for (size_t i = 0; i < NPEERS; i++)
        if (!accepted[i])
            CHECKF(submit(a, f, i), "peer %zu's events accepted after the restart", i);
    struct tally t = {.f = f};
    bool all = pbt_wait_for(complete, &t, PBT_BOUND_MS);
    complete(&t);
    CHECKF(all && t.missing == 0, "every event arrived (%ld missing)", t.missing);
    CHECKF(t.disorder == 0, "in order (%ld out of order; first: %s)", t.disorder, t.first_bad);
    CHECKF(t.dups > 0, "the lost batch's events were pushed again (%ld repeats)", t.dups);
    fprintf(stderr, "forgetbatch: %ld repeats after the crash, %ld out of order, %ld missing\n",
            t.dups, t.disorder, t.missing);
    CHECKF(pbt_daemon_stop(a) == 0, "A stops cleanly");
    pbt_daemon_free(a);
    pbt_farm_free(f);
    return pbt_finish();
}
