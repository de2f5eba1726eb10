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

#include "util/hash.h"
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

/* The senders seen lately on one client address (pb_wgate_window). */
struct addr_entry {
    struct addr_entry *next;
    uint8_t addr[16];
    int64_t seen;                        /* the latest Push answered from it */
    uint64_t who[PB_WGATE_ADDR_SENDERS]; /* FNV-1a of the sender ID */
    int64_t at[PB_WGATE_ADDR_SENDERS];   /* when; 0: a free slot */
};

struct pb_wgate {
    pthread_mutex_t mu;
    unsigned per_sender, total;
    bool ordered;
    unsigned held, nsenders, naddrs;
    int64_t next_expiry; /* no waiter's deadline is before it (INT64_MAX: none waits) */
    struct sender *buckets[NBUCKETS];
    struct addr_entry *abuckets[NBUCKETS];
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
    return (size_t)(pb_hash_str(id) % NBUCKETS);
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
    g->next_expiry = INT64_MAX;
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
        struct addr_entry *a = g->abuckets[b];
        while (a) {
            struct addr_entry *next = a->next;
            free(a);
            a = next;
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

/* Wakes and forgets the waiters past their deadline, everywhere, once one may be: a waiter
 * whose request was refused at its deadline stays here until then, and must not count
 * against the bounds (a sender that flooded and went away would fill `total` for good). */
static void expire(pb_wgate *g, int64_t now, wakelist *l)
{
    if (!g->held || now < g->next_expiry) return;
    int64_t next = INT64_MAX;
    for (size_t b = 0; b < NBUCKETS; b++)
        for (struct sender *s = g->buckets[b]; s; s = s->next) {
            if (!s->nwaiting) continue;
            release(g, s, now, l);
            for (const struct waiter *w = s->waiting; w; w = w->next)
                if (w->deadline < next) next = w->deadline;
        }
    g->next_expiry = next;
}

bool pb_wgate_room(pb_wgate *g, const char *sender, int64_t now_ms)
{
    wakelist l = {0};
    pthread_mutex_lock(&g->mu);
    expire(g, now_ms, &l);
    struct sender *s = find(g, sender);
    bool ok = g->held < g->total && (!s || s->nwaiting < g->per_sender);
    pthread_mutex_unlock(&g->mu);
    wl_wake(&l);
    return ok;
}

pb_wgate_verdict pb_wgate_wait(pb_wgate *g, const char *sender, uint64_t epoch, uint64_t after,
                               pb_hrpc_waker *w, int64_t now_ms, int wait_ms)
{
    wakelist l = {0};
    pb_wgate_verdict v = PB_WGATE_FULL;
    pthread_mutex_lock(&g->mu);
    expire(g, now_ms, &l);
    struct sender *s = get(g, sender);
    if (!s) goto out;
    release(g, s, now_ms, &l);
    if (is_ready(g, s, epoch, after)) {
        v = PB_WGATE_READY;
        goto out;
    }
    if (g->held >= g->total || s->nwaiting >= g->per_sender) goto out;
    struct waiter *x = pb_xcalloc(1, sizeof *x);
    x->w = w;
    x->epoch = epoch;
    x->after = after;
    x->deadline = now_ms + wait_ms;
    if (x->deadline < g->next_expiry) g->next_expiry = x->deadline;
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

/* The entry of addr (found, or made, or an idle one reused); NULL when every entry is in
 * use lately. */
static struct addr_entry *addr_get(pb_wgate *g, const uint8_t *addr, int64_t now)
{
    size_t b = (size_t)(pb_hash(addr, 16) % NBUCKETS);
    for (struct addr_entry *a = g->abuckets[b]; a; a = a->next)
        if (memcmp(a->addr, addr, 16) == 0) return a;
    struct addr_entry *a = NULL;
    if (g->naddrs < PB_WGATE_ADDRS_MAX) {
        a = pb_xcalloc(1, sizeof *a);
        g->naddrs++;
    } else { /* an address not seen lately gives its entry */
        for (size_t i = 0; i < NBUCKETS && !a; i++) {
            for (struct addr_entry **pp = &g->abuckets[(b + i) % NBUCKETS]; *pp;
                 pp = &(*pp)->next) {
                if (now - (*pp)->seen > PB_WGATE_ADDR_RECENT_MS) {
                    a = *pp;
                    *pp = a->next;
                    memset(a, 0, sizeof *a);
                    break;
                }
            }
        }
        if (!a) return NULL;
    }
    memcpy(a->addr, addr, 16);
    a->next = g->abuckets[b];
    g->abuckets[b] = a;
    return a;
}

unsigned pb_wgate_window(pb_wgate *g, const uint8_t *addr, const char *sender, unsigned window,
                         int64_t now_ms)
{
    if (!addr || window <= 1) return window ? window : 1;
    uint64_t who = pb_hash_str(sender);
    unsigned n = 0;
    pthread_mutex_lock(&g->mu);
    struct addr_entry *a = addr_get(g, addr, now_ms);
    if (!a) {
        pthread_mutex_unlock(&g->mu);
        return window; /* not tracked: the full window, as before the sharing */
    }
    a->seen = now_ms;
    int mine = -1, free_slot = -1;
    for (int i = 0; i < PB_WGATE_ADDR_SENDERS; i++) {
        bool recent = a->at[i] && now_ms - a->at[i] <= PB_WGATE_ADDR_RECENT_MS;
        if (a->at[i] && a->who[i] == who) {
            mine = i;
        } else if (recent) {
            n++;
        } else if (free_slot < 0) {
            free_slot = i;
        }
    }
    if (mine < 0) mine = free_slot; /* none free: more senders than slots, n is at its top */
    if (mine >= 0) {
        a->who[mine] = who;
        a->at[mine] = now_ms ? now_ms : 1;
    }
    n++; /* this sender */
    pthread_mutex_unlock(&g->mu);
    unsigned w = window / n;
    return w ? w : 1;
}

unsigned pb_wgate_held(pb_wgate *g, int64_t now_ms)
{
    wakelist l = {0};
    pthread_mutex_lock(&g->mu);
    expire(g, now_ms, &l);
    unsigned n = g->held;
    pthread_mutex_unlock(&g->mu);
    wl_wake(&l);
    return n;
}
