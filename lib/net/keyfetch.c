/*
 * keyfetch - bounded, asynchronous peer key fetches (see keyfetch.h for the rules).
 *
 * State per server ID lives in one table under one mutex: a chained hash for lookup and
 * an LRU list for eviction past cache_max (entries with a fetch queued or running, or
 * waiters, are never evicted; there are at most max_concurrent + max_queued of those).
 * An entry carries the candidate key and its expiry, the failure's expiry, the time of
 * the last fetch (the per-ID rate limit of first fetches), the last re-fetches by client
 * address (REFETCH_SLOTS of them: the per-(ID, address) rate limit of re-fetches), the
 * fetch state, the client address it is charged to, and the waiters' callbacks.
 * Fetches start on the loop thread (a posted "pump" starts queued ones while slots are
 * free); their completion updates the entry, then calls the waiters outside the lock.
 *
 * Per-address share: a fetch queued on behalf of a client address is charged to it until
 * it ends; the charges live in a small array (at most max_concurrent + max_queued
 * addresses hold one), searched linearly. A re-fetch record pushed out of its entry's
 * slots by other addresses only gives that address its allowance back early: the limit
 * can be loosened by an attacker, never turned against a genuine peer.
 */
#include "net/keyfetch.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crypto/keys.h"
#include "util/hash.h"
#include "util/log.h"
#include "util/mem.h"
#include "util/serverid.h"

#define NBUCKETS 4096
#define CANDIDATE_TTL_MS (10 * 60 * 1000)
#define REFETCH_SLOTS 8

/* The client address of fetches asked for on no client's behalf (NULL): one bucket. */
static const uint8_t NO_ADDR[PB_KEYFETCH_ADDR_LEN];

enum state { E_IDLE, E_QUEUED, E_RUNNING };

struct waiter {
    pb_keyfetch_cb cb;
    void *ctx;
};

struct entry {
    char id[PB_SERVER_ID_MAX];
    enum state state;
    bool has_key;
    uint8_t key[32];
    int64_t key_until, fail_until, last_fetch; /* monotonic ms; 0 = none */
    struct refetch {
        uint8_t addr[PB_KEYFETCH_ADDR_LEN];
        int64_t at; /* monotonic ms; 0: free */
    } refetch[REFETCH_SLOTS];
    bool charged; /* queued or running on behalf of `owner` */
    uint8_t owner[PB_KEYFETCH_ADDR_LEN];
    struct waiter *waiters;
    unsigned nwaiters;
    struct entry *hnext;
    struct entry *lru_prev, *lru_next;
    struct entry *q_next;
    pb_keyfetch *kf;
};

struct pb_keyfetch {
    pb_keyfetch_opts o;
    pthread_mutex_t mu;
    struct entry *buckets[NBUCKETS];
    struct entry *lru_head, *lru_tail;
    unsigned count;
    struct entry *q_head, *q_tail;
    unsigned running, queued;
    bool pump_posted;
    pb_keyfetch_stats stats;
    struct charge {
        uint8_t addr[PB_KEYFETCH_ADDR_LEN];
        unsigned n;
    } * charges; /* addresses with fetches queued or running */
    unsigned ncharges, charges_cap;
};

static int64_t now_ms(void)
{
    return pb_ioloop_now_ms();
}

static size_t bucket_of(const char *id)
{
    return (size_t)(pb_hash_str(id) % NBUCKETS);
}

pb_keyfetch *pb_keyfetch_new(const pb_keyfetch_opts *opts)
{
    pb_keyfetch *kf = pb_xcalloc(1, sizeof *kf);
    kf->o = *opts;
    if (!kf->o.max_concurrent) kf->o.max_concurrent = 8;
    if (!kf->o.max_queued) kf->o.max_queued = 64;
    if (kf->o.negative_s <= 0) kf->o.negative_s = 30;
    if (kf->o.refetch_s <= 0) kf->o.refetch_s = 30;
    if (kf->o.timeout_ms <= 0) kf->o.timeout_ms = 5000;
    if (!kf->o.cache_max) kf->o.cache_max = 4096;
    pthread_mutex_init(&kf->mu, NULL);
    return kf;
}

void pb_keyfetch_free(pb_keyfetch *kf)
{
    if (!kf) return;
    for (size_t i = 0; i < NBUCKETS; i++) {
        struct entry *e = kf->buckets[i];
        while (e) {
            struct entry *next = e->hnext;
            free(e->waiters);
            free(e);
            e = next;
        }
    }
    pthread_mutex_destroy(&kf->mu);
    free(kf->charges);
    free(kf);
}

/* ---- the table (with kf->mu held) ------------------------------------------------------------ */

static struct entry *find(pb_keyfetch *kf, const char *id)
{
    for (struct entry *e = kf->buckets[bucket_of(id)]; e; e = e->hnext)
        if (strcmp(e->id, id) == 0) return e;
    return NULL;
}

static void lru_unlink(pb_keyfetch *kf, struct entry *e)
{
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        kf->lru_head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        kf->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_front(pb_keyfetch *kf, struct entry *e)
{
    lru_unlink(kf, e);
    e->lru_next = kf->lru_head;
    if (kf->lru_head) kf->lru_head->lru_prev = e;
    kf->lru_head = e;
    if (!kf->lru_tail) kf->lru_tail = e;
}

static void remove_entry(pb_keyfetch *kf, struct entry *e)
{
    struct entry **pp = &kf->buckets[bucket_of(e->id)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(kf, e);
    kf->count--;
    free(e->waiters);
    free(e);
}

/* Forgets least recently used idle entries past cache_max. */
static void evict(pb_keyfetch *kf)
{
    struct entry *e = kf->lru_tail;
    while (kf->count > kf->o.cache_max && e) {
        struct entry *prev = e->lru_prev;
        if (e->state == E_IDLE && e->nwaiters == 0) remove_entry(kf, e);
        e = prev;
    }
}

static struct entry *get_entry(pb_keyfetch *kf, const char *id)
{
    struct entry *e = find(kf, id);
    if (!e) {
        e = pb_xcalloc(1, sizeof *e);
        snprintf(e->id, sizeof e->id, "%s", id);
        e->kf = kf;
        size_t b = bucket_of(id);
        e->hnext = kf->buckets[b];
        kf->buckets[b] = e;
        kf->count++;
    }
    lru_front(kf, e);
    evict(kf);
    return e;
}

/* ---- per-address shares (with kf->mu held) ----------------------------------------------------
 */

static struct charge *charge_find(pb_keyfetch *kf, const uint8_t addr[PB_KEYFETCH_ADDR_LEN])
{
    for (unsigned i = 0; i < kf->ncharges; i++)
        if (memcmp(kf->charges[i].addr, addr, PB_KEYFETCH_ADDR_LEN) == 0) return &kf->charges[i];
    return NULL;
}

static void charge_add(pb_keyfetch *kf, struct entry *e, const uint8_t addr[PB_KEYFETCH_ADDR_LEN])
{
    struct charge *c = charge_find(kf, addr);
    if (!c) {
        if (kf->ncharges == kf->charges_cap) {
            kf->charges_cap = kf->charges_cap ? 2 * kf->charges_cap : 16;
            kf->charges = pb_xrealloc(kf->charges, kf->charges_cap * sizeof *kf->charges);
        }
        c = &kf->charges[kf->ncharges++];
        memcpy(c->addr, addr, PB_KEYFETCH_ADDR_LEN);
        c->n = 0;
    }
    c->n++;
    e->charged = true;
    memcpy(e->owner, addr, PB_KEYFETCH_ADDR_LEN);
}

static void charge_drop(pb_keyfetch *kf, struct entry *e)
{
    if (!e->charged) return;
    e->charged = false;
    struct charge *c = charge_find(kf, e->owner);
    if (c && --c->n == 0) *c = kf->charges[--kf->ncharges];
}

/* The time addr last re-fetched e's key (0: not within memory). */
static int64_t refetch_at(const struct entry *e, const uint8_t addr[PB_KEYFETCH_ADDR_LEN])
{
    for (unsigned i = 0; i < REFETCH_SLOTS; i++)
        if (e->refetch[i].at && !memcmp(e->refetch[i].addr, addr, PB_KEYFETCH_ADDR_LEN))
            return e->refetch[i].at;
    return 0;
}

/* Notes that addr re-fetches e's key now, in its own slot or over the oldest one. */
static void refetch_note(struct entry *e, const uint8_t addr[PB_KEYFETCH_ADDR_LEN], int64_t now)
{
    unsigned pick = 0;
    for (unsigned i = 0; i < REFETCH_SLOTS; i++) {
        if (e->refetch[i].at && !memcmp(e->refetch[i].addr, addr, PB_KEYFETCH_ADDR_LEN)) {
            pick = i;
            break;
        }
        if (e->refetch[i].at < e->refetch[pick].at) pick = i;
    }
    memcpy(e->refetch[pick].addr, addr, PB_KEYFETCH_ADDR_LEN);
    e->refetch[pick].at = now;
}

static void refused(pb_keyfetch *kf, const char *why)
{
    kf->stats.refused++;
    if (kf->o.metrics) pb_counter_inc(pb_metric_get(kf->o.metrics->key_fetches, why));
}

/* ---- fetches --------------------------------------------------------------------------------- */

static void pump(void *arg);

static void fetch_done(void *ctx, pb_err err, pb_client_answer *ans)
{
    struct entry *e = ctx;
    pb_keyfetch *kf = e->kf;
    uint8_t key[32];
    if (err == PB_OK) err = pb_client_key_from_answer(ans, key);
    if (err != PB_OK && err != PB_ERR_SHUTDOWN)
        PB_WARN(e->id, "key fetch failed: %s%s%s", pb_strerror(err), ans->message ? ": " : "",
                ans->message ? ans->message : "");
    pb_client_answer_clear(ans);
    pthread_mutex_lock(&kf->mu);
    int64_t now = now_ms();
    e->state = E_IDLE;
    /* refused by our own limits (a lookup share, the answers' memory budget): nothing was
     * asked of the peer, nothing to remember against it */
    bool ours = err == PB_ERR_BUSY;
    if (!ours) e->last_fetch = now;
    kf->running--;
    charge_drop(kf, e);
    if (err == PB_OK) {
        e->has_key = true;
        memcpy(e->key, key, 32);
        e->key_until = now + CANDIDATE_TTL_MS;
        e->fail_until = 0;
        kf->stats.ok++;
    } else {
        if (!ours) e->fail_until = now + (int64_t)kf->o.negative_s * 1000;
        kf->stats.failed++;
    }
    if (kf->o.metrics && err != PB_ERR_SHUTDOWN)
        pb_counter_inc(pb_metric_get(kf->o.metrics->key_fetches, err == PB_OK ? "ok" : "error"));
    struct waiter *ws = e->waiters;
    unsigned nw = e->nwaiters;
    e->waiters = NULL;
    e->nwaiters = 0;
    bool more = kf->q_head != NULL;
    pthread_mutex_unlock(&kf->mu);
    if (err == PB_OK) {
        char hex[65];
        pb_keys_hex(key, hex);
        PB_DEBUG(e->id, "fetched key %s (a candidate until it verifies a signature)", hex);
    }
    for (unsigned i = 0; i < nw; i++)
        ws[i].cb(ws[i].ctx, err, err == PB_OK ? key : NULL);
    free(ws);
    if (more) pump(kf);
}

/* Starts queued fetches while slots are free (loop thread). */
static void pump(void *arg)
{
    pb_keyfetch *kf = arg;
    for (;;) {
        pthread_mutex_lock(&kf->mu);
        kf->pump_posted = false;
        struct entry *e = NULL;
        if (kf->running < kf->o.max_concurrent && kf->q_head) {
            e = kf->q_head;
            kf->q_head = e->q_next;
            if (!kf->q_head) kf->q_tail = NULL;
            e->q_next = NULL;
            kf->queued--;
            kf->running++;
            e->state = E_RUNNING;
            kf->stats.started++;
        }
        pthread_mutex_unlock(&kf->mu);
        if (!e) return;
        pb_client_req req = {.server_id = e->id, /* a running entry is never freed */
                             .path = PB_CLIENT_KEY_PATH,
                             .timeout_ms = kf->o.timeout_ms,
                             .max_response = 1024,
                             .one_shot = true,
                             .for_client = true};
        uint8_t owner[PB_KEYFETCH_ADDR_LEN];
        pthread_mutex_lock(&kf->mu);
        bool charged = e->charged;
        memcpy(owner, e->owner, sizeof owner);
        pthread_mutex_unlock(&kf->mu);
        if (charged && memcmp(owner, NO_ADDR, sizeof owner) != 0) req.client_addr = owner;
        pb_client_start(kf->o.client, &req, fetch_done, e);
    }
}

pb_err pb_keyfetch_get(pb_keyfetch *kf, const char *server_id, bool refresh,
                       const uint8_t client[PB_KEYFETCH_ADDR_LEN], uint8_t key[32], bool *stored,
                       pb_keyfetch_cb cb, void *ctx, uint32_t *retry_after_s)
{
    const uint8_t *addr = client ? client : NO_ADDR;
    *stored = false;
    *retry_after_s = 0;
    if (!refresh) {
        pb_err err = pb_store_peer_key_get(kf->o.store, server_id, key);
        if (err == PB_OK) {
            *stored = true;
            return PB_OK;
        }
        if (err != PB_ERR_NOT_FOUND) return err == PB_ERR_CORRUPT ? err : PB_ERR_STORE;
    }
    pb_err rc = PB_ERR_BUSY;
    bool post = false;
    pthread_mutex_lock(&kf->mu);
    int64_t now = now_ms();
    struct entry *e = find(kf, server_id);
    if (!refresh && e && e->has_key && now < e->key_until) {
        memcpy(key, e->key, 32);
        lru_front(kf, e);
        rc = PB_OK;
        goto out;
    }
    if (e && e->state != E_IDLE) goto wait;
    /* The rate limit: a first fetch once per refetch_s per ID, and not while a failure is
     * remembered; a re-fetch (the held key failed) once per refetch_s per ID and client
     * address, failures or not, so that tokens forged from other addresses cannot use up a
     * genuine peer's re-fetch (nor make it fail while the peer restarts with a new key). */
    int64_t until = 0, last = 0, interval = (int64_t)kf->o.refetch_s * 1000;
    if (e && !refresh && now < e->fail_until) until = e->fail_until;
    if (e) last = refresh ? refetch_at(e, addr) : e->last_fetch;
    if (last && now < last + interval && last + interval > until) until = last + interval;
    if (until) {
        *retry_after_s = (uint32_t)((until - now + 999) / 1000);
        refused(kf, "rate_limited");
        rc = PB_ERR_NOT_FOUND;
        goto out;
    }
    /* shares: the queue, and the fetches one client address may have queued or running */
    struct charge *ch = client ? charge_find(kf, client) : NULL;
    if (client && kf->o.per_client && ch && ch->n >= kf->o.per_client) {
        *retry_after_s = 1;
        refused(kf, "per_address");
        rc = PB_ERR_NOT_FOUND;
        goto out;
    }
    if (kf->queued >= kf->o.max_queued) {
        *retry_after_s = 1;
        refused(kf, "busy");
        rc = PB_ERR_NOT_FOUND;
        goto out;
    }
    e = get_entry(kf, server_id);
    if (refresh) refetch_note(e, addr, now);
    charge_add(kf, e, addr);
    e->state = E_QUEUED;
    e->has_key = false;
    if (kf->q_tail)
        kf->q_tail->q_next = e;
    else
        kf->q_head = e;
    kf->q_tail = e;
    kf->queued++;
    if (!kf->pump_posted) kf->pump_posted = post = true;
wait:
    if (cb) {
        if (e->nwaiters >= PB_KEYFETCH_MAX_WAITERS) {
            *retry_after_s = 1;
            refused(kf, "busy");
            rc = PB_ERR_NOT_FOUND;
            goto out;
        }
        e->waiters = pb_xrealloc(e->waiters, (e->nwaiters + 1) * sizeof *e->waiters);
        e->waiters[e->nwaiters++] = (struct waiter){cb, ctx};
    }
    rc = PB_ERR_BUSY;
out:
    pthread_mutex_unlock(&kf->mu);
    if (post) pb_ioloop_post(pb_client_loop(kf->o.client), pump, kf);
    return rc;
}

pb_err pb_keyfetch_stored(pb_keyfetch *kf, const char *server_id, uint8_t key[32])
{
    return pb_store_peer_key_get(kf->o.store, server_id, key);
}

pb_err pb_keyfetch_verified(pb_keyfetch *kf, const char *server_id, const uint8_t key[32])
{
    uint8_t held[32];
    pb_err err = pb_store_peer_key_get(kf->o.store, server_id, held);
    if (err != PB_OK || memcmp(held, key, 32) != 0) {
        err = pb_store_peer_key_set(kf->o.store, server_id, key, (int64_t)time(NULL));
        if (err != PB_OK) {
            PB_WARN(server_id, "cannot store the verified key: %s", pb_strerror(err));
            return err;
        }
        char hex[65];
        pb_keys_hex(key, hex);
        PB_INFO(server_id, "learnt public key %s", hex);
    }
    pthread_mutex_lock(&kf->mu);
    struct entry *e = find(kf, server_id);
    if (e) e->has_key = false;
    pthread_mutex_unlock(&kf->mu);
    return PB_OK;
}

void pb_keyfetch_set_limits(pb_keyfetch *kf, unsigned max_concurrent, unsigned per_client,
                            int refetch_s)
{
    pthread_mutex_lock(&kf->mu);
    if (max_concurrent) kf->o.max_concurrent = max_concurrent;
    kf->o.per_client = per_client;
    if (refetch_s > 0) kf->o.refetch_s = kf->o.negative_s = refetch_s;
    bool post = kf->q_head && kf->running < kf->o.max_concurrent && !kf->pump_posted;
    if (post) kf->pump_posted = true;
    pthread_mutex_unlock(&kf->mu);
    if (post) pb_ioloop_post(pb_client_loop(kf->o.client), pump, kf);
}

void pb_keyfetch_stats_get(pb_keyfetch *kf, pb_keyfetch_stats *out)
{
    pthread_mutex_lock(&kf->mu);
    *out = kf->stats;
    out->running = kf->running;
    out->queued = kf->queued;
    pthread_mutex_unlock(&kf->mu);
}
