/*
 * wgate - the receiver's gate for windowed Pushes (see wgate.h for the model).
 *
 * A hash table of senders (chained, PB_WGATE_SENDERS_MAX at most), each with the epoch it
 * was last seen in, the highest numbers known applied and queued there, and a list of the
 * requests waiting for a number. Every function takes the one mutex; wakers are woken
 * after it is released (pb_hrpc_wake may resume the request on another thread at once).
 */
#include "delivery/wgate.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/mem.h"
#include "util/serverid.h"

#define NBUCKETS 1024

struct waiter {
    struct waiter *next;
    pb_hrpc_waker *w;
    uint64_t epoch, after;
    int64_t deadline;
};

struct sender {
    struct sender *next;
    char id[PB_SERVER_ID_MAX];
    uint64_t epoch, applied, queued; /* queued >= applied */
    bool known;                      /* applied comes from a commit in this epoch */
    struct waiter *waiting;
    unsigned nwaiting;
};

struct pb_wgate {
    pthread_mutex_t mu;
    unsigned per_sender, total;
    bool ordered;
    unsigned held, nsenders;
    struct sender *buckets[NBUCKETS];
};

/* wakers collected under the lock, woken after it */
typedef struct wakelist {
    pb_hrpc_waker **w;
    size_t n, cap;
} wakelist;

static void wl_add(wakelist *l, pb_hrpc_waker *w)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 8;
        l->w = pb_xrealloc(l->w, l->cap * sizeof *l->w);
    }
    l->w[l->n++] = w;
}

static void wl_wake(wakelist *l)
{
    for (size_t i = 0; i < l->n; i++)
        pb_hrpc_wake(l->w[i]);
    free(l->w);
}

static size_t bucket_of(const char *id)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)id; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return (size_t)(h % NBUCKETS);
}

static struct sender *find(pb_wgate *g, const char *id)
{
    for (struct sender *s = g->buckets[bucket_of(id)]; s; s = s->next)
        if (strcmp(s->id, id) == 0) return s;
    return NULL;
}

/* Forgets senders with nothing waiting in id's bucket, then anywhere, until there is room. */
static void make_room(pb_wgate *g, size_t b)
{
    for (size_t i = 0; i < NBUCKETS && g->nsenders >= PB_WGATE_SENDERS_MAX; i++) {
        struct sender **pp = &g->buckets[(b + i) % NBUCKETS];
        while (*pp && g->nsenders >= PB_WGATE_SENDERS_MAX) {
            if ((*pp)->nwaiting == 0) {
                struct sender *s = *pp;
                *pp = s->next;
                free(s);
                g->nsenders--;
            } else {
                pp = &(*pp)->next;
            }
        }
    }
}

static struct sender *get(pb_wgate *g, const char *id)
{
    struct sender *s = find(g, id);
    if (s) return s;
    size_t b = bucket_of(id);
    if (g->nsenders >= PB_WGATE_SENDERS_MAX) make_room(g, b);
    if (g->nsenders >= PB_WGATE_SENDERS_MAX) return NULL; /* every one has waiters */
    s = pb_xcalloc(1, sizeof *s);
    snprintf(s->id, sizeof s->id, "%s", id);
    s->next = g->buckets[b];
    g->buckets[b] = s;
    g->nsenders++;
    return s;
}

/* Is `after` of (s, epoch) applied, or queued in a store that keeps the order? */
static bool is_ready(const pb_wgate *g, const struct sender *s, uint64_t epoch, uint64_t after)
{
    return s->epoch == epoch && (s->applied >= after || (g->ordered && s->queued >= after));
}

/* Wakes (into l) the waiters of s that are applicable now or past their deadline. */
static void release(pb_wgate *g, struct sender *s, int64_t now, wakelist *l)
{
    struct waiter **pp = &s->waiting;
    while (*pp) {
        struct waiter *w = *pp;
        bool ok = is_ready(g, s, w->epoch, w->after);
        if (ok || w->deadline <= now) {
            *pp = w->next;
            wl_add(l, w->w);
            free(w);
            s->nwaiting--;
            g->held--;
        } else {
            pp = &w->next;
        }
    }
}

pb_wgate *pb_wgate_new(unsigned per_sender, unsigned total, bool ordered)
{
    pb_wgate *g = pb_xcalloc(1, sizeof *g);
    pthread_mutex_init(&g->mu, NULL);
    g->per_sender = per_sender;
    g->total = total;
    g->ordered = ordered;
    return g;
}

void pb_wgate_wake_all(pb_wgate *g)
{
    if (!g) return;
    wakelist l = {0};
    pthread_mutex_lock(&g->mu);
    for (size_t b = 0; b < NBUCKETS; b++)
        for (struct sender *s = g->buckets[b]; s; s = s->next)
            release(g, s, INT64_MAX, &l);
    pthread_mutex_unlock(&g->mu);
    wl_wake(&l);
}

void pb_wgate_free(pb_wgate *g)
{
    if (!g) return;
    pb_wgate_wake_all(g);
    for (size_t b = 0; b < NBUCKETS; b++) {
        struct sender *s = g->buckets[b];
        while (s) {
            struct sender *next = s->next;
            free(s);
            s = next;
        }
    }
    pthread_mutex_destroy(&g->mu);
    free(g);
}

bool pb_wgate_ready(pb_wgate *g, const char *sender, uint64_t epoch, uint64_t after, bool *known)
{
    pthread_mutex_lock(&g->mu);
    struct sender *s = find(g, sender);
    bool ok = s && is_ready(g, s, epoch, after);
    if (known) *known = s && s->epoch == epoch && s->known;
    pthread_mutex_unlock(&g->mu);
    return ok;
}

/* Expired waiters everywhere (when the total looks full: some may be past their time). */
static void purge_all(pb_wgate *g, int64_t now, wakelist *l)
{
    for (size_t b = 0; b < NBUCKETS; b++)
        for (struct sender *s = g->buckets[b]; s; s = s->next)
            if (s->nwaiting) release(g, s, now, l);
}

bool pb_wgate_room(pb_wgate *g, const char *sender)
{
    pthread_mutex_lock(&g->mu);
    struct sender *s = find(g, sender);
    bool ok = g->held < g->total && (!s || s->nwaiting < g->per_sender);
    pthread_mutex_unlock(&g->mu);
    return ok;
}

pb_wgate_verdict pb_wgate_wait(pb_wgate *g, const char *sender, uint64_t epoch, uint64_t after,
                               pb_hrpc_waker *w, int64_t now_ms, int wait_ms)
{
    wakelist l = {0};
    pb_wgate_verdict v = PB_WGATE_FULL;
    pthread_mutex_lock(&g->mu);
    struct sender *s = get(g, sender);
    if (!s) goto out;
    release(g, s, now_ms, &l);
    if (is_ready(g, s, epoch, after)) {
        v = PB_WGATE_READY;
        goto out;
    }
    if (g->held >= g->total) purge_all(g, now_ms, &l);
    if (g->held >= g->total || s->nwaiting >= g->per_sender) goto out;
    struct waiter *x = pb_xcalloc(1, sizeof *x);
    x->w = w;
    x->epoch = epoch;
    x->after = after;
    x->deadline = now_ms + wait_ms;
    x->next = s->waiting;
    s->waiting = x;
    s->nwaiting++;
    g->held++;
    v = PB_WGATE_WAIT;
out:
    pthread_mutex_unlock(&g->mu);
    wl_wake(&l);
    return v;
}

void pb_wgate_applied(pb_wgate *g, const char *sender, uint64_t epoch, uint64_t applied,
                      int64_t now_ms)
{
    wakelist l = {0};
    pthread_mutex_lock(&g->mu);
    struct sender *s = get(g, sender);
    if (s) {
        if (s->epoch != epoch) { /* another epoch: what we knew of the old one is moot */
            s->epoch = epoch;
            s->applied = s->queued = applied;
        } else if (applied > s->applied) {
            s->applied = applied;
            if (applied > s->queued) s->queued = applied;
        }
        s->known = true;
        release(g, s, now_ms, &l);
    }
    pthread_mutex_unlock(&g->mu);
    wl_wake(&l);
}

void pb_wgate_queued(pb_wgate *g, const char *sender, uint64_t epoch, uint64_t last, int64_t now_ms)
{
    if (!g->ordered) return; /* only a commit makes a batch applicable */
    wakelist l = {0};
    pthread_mutex_lock(&g->mu);
    struct sender *s = get(g, sender);
    if (s) {
        if (s->epoch != epoch) { /* a new epoch: what is applied in it only the store says */
            s->epoch = epoch;
            s->applied = 0;
            s->known = false;
            s->queued = last;
        } else if (last > s->queued) {
            s->queued = last;
        }
        release(g, s, now_ms, &l);
    }
    pthread_mutex_unlock(&g->mu);
    wl_wake(&l);
}

void pb_wgate_failed(pb_wgate *g, const char *sender, uint64_t epoch)
{
    pthread_mutex_lock(&g->mu);
    struct sender *s = find(g, sender);
    if (s && s->epoch == epoch) s->queued = s->applied;
    pthread_mutex_unlock(&g->mu);
}

unsigned pb_wgate_held(pb_wgate *g)
{
    pthread_mutex_lock(&g->mu);
    unsigned n = g->held;
    pthread_mutex_unlock(&g->mu);
    return n;
}
