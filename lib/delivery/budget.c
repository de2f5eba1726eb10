/*
 * budget - per-sender token buckets (see budget.h). A chained hash of senders, keys and
 * addresses (one table: a key's entry is named "#k" and its hex, an address's "#a" and its
 * hex, names no server ID can have) with an LRU list for eviction, under one mutex; a
 * bucket refills at capacity / interval per millisecond from its last update, its capacity
 * a sender's times its factor (1 for a sender).
 */
#include "delivery/budget.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/hash.h"
#include "util/mem.h"
#include "util/serverid.h"

#define NBUCKETS 4096

struct sender {
    char id[PB_SERVER_ID_MAX];
    double ev, by; /* tokens left (may be negative) */
    int64_t at;    /* last refill, monotonic ms */
    struct sender *hnext, *prev, *next;
};

struct pb_budget {
    pb_budget_opts o;
    pthread_mutex_t mu;
    struct sender *buckets[NBUCKETS];
    struct sender *lru_head, *lru_tail;
    unsigned count;
};

pb_budget *pb_budget_new(const pb_budget_opts *opts)
{
    pb_budget *b = pb_xcalloc(1, sizeof *b);
    if (opts) b->o = *opts;
    if (!b->o.events) b->o.events = 100000;
    if (!b->o.bytes) b->o.bytes = 32u << 20;
    if (!b->o.interval_s) b->o.interval_s = 60;
    if (!b->o.max_senders) b->o.max_senders = 65536;
    if (b->o.max_senders < 3) b->o.max_senders = 3; /* one request's three buckets */
    if (!b->o.key_factor) b->o.key_factor = 1;
    pthread_mutex_init(&b->mu, NULL);
    return b;
}

void pb_budget_free(pb_budget *b)
{
    if (!b) return;
    for (struct sender *s = b->lru_head, *next; s; s = next) {
        next = s->next;
        free(s);
    }
    pthread_mutex_destroy(&b->mu);
    free(b);
}

static size_t hash(const char *id)
{
    return (size_t)(pb_hash_str(id) % NBUCKETS);
}

static void lru_unlink(pb_budget *b, struct sender *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        b->lru_head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else
        b->lru_tail = s->prev;
    s->prev = s->next = NULL;
}

static void lru_front(pb_budget *b, struct sender *s)
{
    s->next = b->lru_head;
    if (b->lru_head) b->lru_head->prev = s;
    b->lru_head = s;
    if (!b->lru_tail) b->lru_tail = s;
}

static void forget_oldest(pb_budget *b)
{
    struct sender *s = b->lru_tail;
    if (!s) return;
    lru_unlink(b, s);
    struct sender **pp = &b->buckets[hash(s->id)];
    while (*pp != s)
        pp = &(*pp)->hnext;
    *pp = s->hnext;
    b->count--;
    free(s);
}

/* The bucket of id (capacity: f senders' budgets), refilled up to now; created full.
 * With b->mu held. */
static struct sender *get_f(pb_budget *b, const char *id, double f, int64_t now)
{
    struct sender *s = b->buckets[hash(id)];
    while (s && strcmp(s->id, id) != 0)
        s = s->hnext;
    if (!s) {
        if (b->count >= b->o.max_senders) forget_oldest(b);
        s = pb_xcalloc(1, sizeof *s);
        snprintf(s->id, sizeof s->id, "%s", id);
        s->ev = f * (double)b->o.events;
        s->by = f * (double)b->o.bytes;
        s->at = now;
        size_t h = hash(id);
        s->hnext = b->buckets[h];
        b->buckets[h] = s;
        b->count++;
    } else {
        lru_unlink(b, s);
        double ms = (double)(now > s->at ? now - s->at : 0), per = b->o.interval_s * 1000.0;
        double cev = f * (double)b->o.events, cby = f * (double)b->o.bytes;
        s->ev += ms * cev / per;
        s->by += ms * cby / per;
        if (s->ev > cev) s->ev = cev;
        if (s->by > cby) s->by = cby;
        s->at = now;
    }
    lru_front(b, s);
    return s;
}

static struct sender *get(pb_budget *b, const char *id, int64_t now)
{
    return get_f(b, id, 1, now);
}

/* Seconds until the bucket (capacity f senders') holds `need` events and `nbytes` bytes
 * (at least 1). */
static uint32_t wait_f(const pb_budget *b, const struct sender *s, double f, double need,
                       double nbytes)
{
    double per = b->o.interval_s * 1000.0, ms = 0;
    if (s->ev < need) ms = (need - s->ev) * per / (f * (double)b->o.events);
    if (s->by < nbytes) {
        double m2 = (nbytes - s->by) * per / (f * (double)b->o.bytes);
        if (m2 > ms) ms = m2;
    }
    double sec = ms / 1000.0 + 1;
    return sec > b->o.interval_s ? b->o.interval_s : (uint32_t)sec;
}

static uint32_t wait_s(const pb_budget *b, const struct sender *s, double need, double nbytes)
{
    return wait_f(b, s, 1, need, nbytes);
}

bool pb_budget_take(pb_budget *b, const char *sender, uint64_t events, uint64_t bytes, int64_t now,
                    uint32_t *retry_after_s)
{
    pthread_mutex_lock(&b->mu);
    struct sender *s = get(b, sender, now);
    bool ok = s->ev >= (double)events && s->by >= (double)bytes;
    if (ok) {
        s->ev -= (double)events;
        s->by -= (double)bytes;
    } else {
        *retry_after_s = wait_s(b, s, (double)events, (double)bytes);
    }
    pthread_mutex_unlock(&b->mu);
    return ok;
}

void pb_budget_charge(pb_budget *b, const char *sender, uint64_t events, uint64_t bytes,
                      int64_t now)
{
    pthread_mutex_lock(&b->mu);
    struct sender *s = get(b, sender, now);
    s->ev -= (double)events;
    s->by -= (double)bytes;
    pthread_mutex_unlock(&b->mu);
}

uint64_t pb_budget_events_left(pb_budget *b, const char *sender, int64_t now)
{
    pthread_mutex_lock(&b->mu);
    struct sender *s = get(b, sender, now);
    uint64_t n = s->ev >= 1 && s->by >= 1 ? (uint64_t)s->ev : 0;
    pthread_mutex_unlock(&b->mu);
    return n;
}

bool pb_budget_available(pb_budget *b, const char *sender, int64_t now, uint32_t *retry_after_s)
{
    pthread_mutex_lock(&b->mu);
    struct sender *s = get(b, sender, now);
    bool ok = s->ev >= 1 && s->by >= 1;
    if (!ok) *retry_after_s = wait_s(b, s, 1, 1);
    pthread_mutex_unlock(&b->mu);
    return ok;
}

/* ---- per sender, key and address ------------------------------------------------------------ */

const char *pb_budget_scope_name(pb_budget_scope sc)
{
    switch (sc) {
    case PB_BUDGET_SENDER:
        return "sender";
    case PB_BUDGET_KEY:
        return "key";
    case PB_BUDGET_ADDRESS:
        return "address";
    default:
        return "";
    }
}

/* who's buckets (at most 3) with their factors and scopes; with b->mu held. */
static size_t buckets_of(pb_budget *b, const pb_budget_who *who, int64_t now, struct sender *out[3],
                         double f[3], pb_budget_scope sc[3])
{
    size_t n = 0;
    char name[2 + 64 + 1];
    out[n] = get(b, who->sender, now);
    f[n] = 1;
    sc[n++] = PB_BUDGET_SENDER;
    if (who->key) {
        name[0] = '#';
        name[1] = 'k';
        for (size_t i = 0; i < 32; i++)
            snprintf(name + 2 + 2 * i, 3, "%02x", who->key[i]);
        f[n] = (double)b->o.key_factor;
        out[n] = get_f(b, name, f[n], now);
        sc[n++] = PB_BUDGET_KEY;
    }
    if (who->addr && b->o.addr_factor) {
        name[0] = '#';
        name[1] = 'a';
        for (size_t i = 0; i < 16; i++)
            snprintf(name + 2 + 2 * i, 3, "%02x", who->addr[i]);
        f[n] = (double)b->o.addr_factor;
        out[n] = get_f(b, name, f[n], now);
        sc[n++] = PB_BUDGET_ADDRESS;
    }
    return n; /* none evicted another: each went to the front, and the table holds >= 3 */
}

pb_budget_scope pb_budget_take_who(pb_budget *b, const pb_budget_who *who, uint64_t events,
                                   uint64_t bytes, int64_t now, uint32_t *retry_after_s)
{
    struct sender *s[3];
    double f[3];
    pb_budget_scope sc[3], refused = PB_BUDGET_OK;
    pthread_mutex_lock(&b->mu);
    size_t n = buckets_of(b, who, now, s, f, sc);
    for (size_t i = 0; i < n && refused == PB_BUDGET_OK; i++) {
        if (s[i]->ev < (double)events || s[i]->by < (double)bytes) {
            refused = sc[i];
            *retry_after_s = wait_f(b, s[i], f[i], (double)events, (double)bytes);
        }
    }
    for (size_t i = 0; i < n && refused == PB_BUDGET_OK; i++) {
        s[i]->ev -= (double)events;
        s[i]->by -= (double)bytes;
    }
    pthread_mutex_unlock(&b->mu);
    return refused;
}

void pb_budget_charge_who(pb_budget *b, const pb_budget_who *who, uint64_t events, uint64_t bytes,
                          int64_t now)
{
    struct sender *s[3];
    double f[3];
    pb_budget_scope sc[3];
    pthread_mutex_lock(&b->mu);
    size_t n = buckets_of(b, who, now, s, f, sc);
    for (size_t i = 0; i < n; i++) {
        s[i]->ev -= (double)events;
        s[i]->by -= (double)bytes;
    }
    pthread_mutex_unlock(&b->mu);
}

bool pb_budget_available_who(pb_budget *b, const pb_budget_who *who, int64_t now,
                             uint32_t *retry_after_s)
{
    struct sender *s[3];
    double f[3];
    pb_budget_scope sc[3];
    bool ok = true;
    pthread_mutex_lock(&b->mu);
    size_t n = buckets_of(b, who, now, s, f, sc);
    for (size_t i = 0; i < n && ok; i++) {
        ok = s[i]->ev >= 1 && s[i]->by >= 1;
        if (!ok) *retry_after_s = wait_f(b, s[i], f[i], 1, 1);
    }
    pthread_mutex_unlock(&b->mu);
    return ok;
}

uint64_t pb_budget_events_left_who(pb_budget *b, const pb_budget_who *who, int64_t now)
{
    struct sender *s[3];
    double f[3];
    pb_budget_scope sc[3];
    uint64_t least = UINT64_MAX;
    pthread_mutex_lock(&b->mu);
    size_t n = buckets_of(b, who, now, s, f, sc);
    for (size_t i = 0; i < n; i++) {
        uint64_t left = s[i]->ev >= 1 && s[i]->by >= 1 ? (uint64_t)s[i]->ev : 0;
        if (left < least) least = left;
    }
    pthread_mutex_unlock(&b->mu);
    return least;
}

void pb_budget_set_factors(pb_budget *b, unsigned key_factor, unsigned addr_factor)
{
    pthread_mutex_lock(&b->mu);
    b->o.key_factor = key_factor ? key_factor : 1;
    b->o.addr_factor = addr_factor;
    pthread_mutex_unlock(&b->mu);
}

void pb_budget_set_rate(pb_budget *b, uint64_t events, uint64_t bytes)
{
    pthread_mutex_lock(&b->mu);
    if (events) b->o.events = events;
    if (bytes) b->o.bytes = bytes;
    pthread_mutex_unlock(&b->mu);
}
