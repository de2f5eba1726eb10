/*
 * resolve - c-ares on the I/O loop (see resolve.h).
 *
 * c-ares tells us which sockets it wants watched (ARES_OPT_SOCK_STATE_CB): they join the
 * loop's epoll set through pb_ioloop_watch, and one loop timer follows ares_timeout. A name
 * is an entry in a hash table and an LRU list: its addresses or its failure, when they
 * expire, and while a query runs the callers waiting for it. Answers are handed to the
 * waiters by a posted task, so that no callback runs inside pb_resolver_lookup (c-ares may
 * answer at once, from /etc/hosts).
 *
 * Shares: a query is charged, while it runs, to its domain, and when asked for a client to
 * the clients' count and that client's address; the charges are small arrays searched
 * linearly (at most max_pending entries each). The share settings may change on reload
 * from another thread: they are read and written atomically.
 */
#include "net/resolve.h"

#include <arpa/inet.h>
#include <ares.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "util/hash.h"
#include "util/log.h"
#include "util/mem.h"
#include "util/serverid.h"

#define NBUCKETS 4096
#define TTL_MIN_S 5
#define NEGATIVE_TTL_S 10
#define MAX_ADDRS 8

struct waiter {
    struct waiter *next;
    pb_resolve_fn cb;
    void *ctx;
};

struct entry {
    struct entry *hnext;       /* hash chain */
    struct entry *prev, *next; /* LRU: head is the most recently used */
    char host[PB_SERVER_ID_MAX];
    char addrs[MAX_ADDRS][INET6_ADDRSTRLEN];
    size_t naddrs, cur;
    int64_t expires;                    /* monotonic ms; 0 while the first query runs */
    char why[PB_SERVER_ID_MAX + 96];    /* the failure, when naddrs is 0 */
    bool running;                       /* a query or a delivery is under way: not evicted */
    bool charged, for_client, has_addr; /* the query's charges (see struct charge) */
    uint8_t addr[16];
    char domain[PB_SERVER_ID_MAX];
    struct waiter *waiters;
    pb_resolver *r;
};

/* Queries running per domain or per client address. */
struct charge {
    char key[PB_SERVER_ID_MAX]; /* a domain, or the 16 address bytes */
    unsigned n;
};
struct charges {
    struct charge *v;
    unsigned n, cap;
};

struct pb_resolver {
    pb_ioloop *loop;
    struct charges domains, addrs;
    unsigned for_clients_now; /* queries for clients running */
    ares_channel ch;
    bool channel_ok, stopping;
    pb_timer timer;
    pb_resolver_opts o;
    struct entry *buckets[NBUCKETS];
    struct entry *lru_head, *lru_tail;
    size_t nentries, running;
};

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_init_rc = ARES_ENOTINITIALIZED;

static void global_init(void)
{
    g_init_rc = ares_library_init(ARES_LIB_INIT_ALL);
}

static unsigned hash_of(const char *s)
{
    return (unsigned)(pb_hash_str(s) % NBUCKETS);
}

/* ---- the entry table ------------------------------------------------------------------------ */

static void lru_unlink(pb_resolver *r, struct entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        r->lru_head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        r->lru_tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_front(pb_resolver *r, struct entry *e)
{
    e->next = r->lru_head;
    if (r->lru_head) r->lru_head->prev = e;
    r->lru_head = e;
    if (!r->lru_tail) r->lru_tail = e;
}

static struct entry *find(pb_resolver *r, const char *host)
{
    for (struct entry *e = r->buckets[hash_of(host)]; e; e = e->hnext)
        if (!strcmp(e->host, host)) return e;
    return NULL;
}

static void drop(pb_resolver *r, struct entry *e)
{
    struct entry **pp = &r->buckets[hash_of(e->host)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(r, e);
    r->nentries--;
    free(e);
}

/* Makes room for one more entry: the least recently used one not running goes. */
static void evict(pb_resolver *r)
{
    for (struct entry *e = r->lru_tail; e && r->nentries >= r->o.max_entries; e = e->prev)
        if (!e->running) {
            drop(r, e);
            return;
        }
}

/* ---- shares ---------------------------------------------------------------------------------- */

#define SHARE(r, f) __atomic_load_n(&(r)->o.f, __ATOMIC_RELAXED)

void pb_resolver_domain(const char *host, char *out, size_t cap)
{
    size_t n = strlen(host);
    while (n && host[n - 1] == '.')
        n--;
    const char *dots[3] = {NULL, NULL, NULL}; /* the last three dots, last first */
    for (size_t i = n; i-- > 0;)
        if (host[i] == '.') {
            if (!dots[0])
                dots[0] = host + i;
            else if (!dots[1])
                dots[1] = host + i;
            else if (!dots[2]) {
                dots[2] = host + i;
                break;
            }
        }
    const char *start = host;
    if (dots[1]) {
        start = dots[1] + 1; /* two labels */
        size_t tld = (size_t)(host + n - dots[0] - 1), sld = (size_t)(dots[0] - dots[1] - 1);
        if (tld == 2 && sld <= 3) start = dots[2] ? dots[2] + 1 : host;
    }
    size_t len = (size_t)(host + n - start);
    if (len >= cap) len = cap - 1;
    memcpy(out, start, len);
    out[len] = '\0';
}

static struct charge *charge_find(struct charges *c, const char *key, size_t klen)
{
    for (unsigned i = 0; i < c->n; i++)
        if (!memcmp(c->v[i].key, key, klen)) return &c->v[i];
    return NULL;
}

static unsigned charge_count(struct charges *c, const char *key, size_t klen)
{
    struct charge *ch = charge_find(c, key, klen);
    return ch ? ch->n : 0;
}

static void charge_add(struct charges *c, const char *key, size_t klen)
{
    struct charge *ch = charge_find(c, key, klen);
    if (!ch) {
        if (c->n == c->cap) {
            c->cap = c->cap ? 2 * c->cap : 16;
            c->v = pb_xrealloc(c->v, c->cap * sizeof *c->v);
        }
        ch = &c->v[c->n++];
        memset(ch->key, 0, sizeof ch->key);
        memcpy(ch->key, key, klen);
        ch->n = 0;
    }
    ch->n++;
}

static void charge_drop(struct charges *c, const char *key, size_t klen)
{
    struct charge *ch = charge_find(c, key, klen);
    if (ch && --ch->n == 0) *ch = c->v[--c->n];
}

/* The key of a domain in the charges: its text, zero-padded. */
static void domain_key(const char *domain, char key[PB_SERVER_ID_MAX])
{
    memset(key, 0, PB_SERVER_ID_MAX);
    snprintf(key, PB_SERVER_ID_MAX, "%s", domain);
}

static void uncharge(pb_resolver *r, struct entry *e)
{
    if (!e->charged) return;
    e->charged = false;
    char key[PB_SERVER_ID_MAX];
    domain_key(e->domain, key);
    charge_drop(&r->domains, key, sizeof key);
    if (e->for_client) r->for_clients_now--;
    if (e->has_addr) charge_drop(&r->addrs, (const char *)e->addr, sizeof e->addr);
}

static void count_refusal(pb_resolver *r, const char *reason)
{
    if (r->o.metrics) pb_counter_inc(pb_metric_get(r->o.metrics->dns_refused, reason));
}

void pb_resolver_set_shares(pb_resolver *r, unsigned for_clients, unsigned per_client,
                            unsigned per_domain)
{
    if (for_clients) __atomic_store_n(&r->o.for_clients, for_clients, __ATOMIC_RELAXED);
    __atomic_store_n(&r->o.per_client, per_client, __ATOMIC_RELAXED);
    __atomic_store_n(&r->o.per_domain, per_domain, __ATOMIC_RELAXED);
}

/* ---- c-ares on the loop --------------------------------------------------------------------- */

static void arm_timer(pb_resolver *r)
{
    struct timeval tv, *t = r->channel_ok ? ares_timeout(r->ch, NULL, &tv) : NULL;
    if (!t) {
        pb_ioloop_timer_cancel(r->loop, &r->timer);
        return;
    }
    int64_t ms = (int64_t)t->tv_sec * 1000 + t->tv_usec / 1000;
    pb_ioloop_timer_arm(r->loop, &r->timer, pb_ioloop_now_ms() + ms);
}

static void on_fd(void *ctx, int fd, int events)
{
    pb_resolver *r = ctx;
    if (!r->channel_ok) return;
    ares_process_fd(r->ch, (events & (PB_IOLOOP_IN | PB_IOLOOP_ERR)) ? fd : ARES_SOCKET_BAD,
                    (events & PB_IOLOOP_OUT) ? fd : ARES_SOCKET_BAD);
    arm_timer(r);
}

static void on_timer(void *ctx)
{
    pb_resolver *r = ctx;
    if (!r->channel_ok) return;
    ares_process_fd(r->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    arm_timer(r);
}

static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    pb_resolver *r = data;
    int events = (readable ? PB_IOLOOP_IN : 0) | (writable ? PB_IOLOOP_OUT : 0);
    pb_ioloop_watch(r->loop, fd, events, on_fd, r);
}

/* ---- answers to the waiters -------------------------------------------------------------------
 */

/* Hands e's answer to every waiter (loop thread, not inside a lookup call). */
static void deliver(void *arg)
{
    struct entry *e = arg;
    pb_resolver *r = e->r;
    struct waiter *w = e->waiters;
    e->waiters = NULL;
    e->running = false;
    r->running--;
    uncharge(r, e);
    char addr[INET6_ADDRSTRLEN] = "", why[sizeof e->why];
    pb_err err = PB_ERR_NET;
    if (r->stopping) {
        err = PB_ERR_SHUTDOWN;
        snprintf(why, sizeof why, "shutting down");
    } else if (e->naddrs) {
        err = PB_OK;
        snprintf(addr, sizeof addr, "%s", e->addrs[e->cur % e->naddrs]);
    }
    if (err == PB_ERR_NET) snprintf(why, sizeof why, "%s", e->why);
    if (r->stopping) drop(r, e); /* nobody asks again */
    while (w) {
        struct waiter *next = w->next;
        w->cb(w->ctx, err, err == PB_OK ? addr : NULL, err == PB_OK ? NULL : why);
        free(w);
        w = next;
    }
}

static void on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
    (void)timeouts;
    struct entry *e = arg;
    pb_resolver *r = e->r;
    int64_t now = pb_ioloop_now_ms();
    e->naddrs = e->cur = 0;
    unsigned ttl = r->o.ttl_max_s;
    if (status == ARES_SUCCESS && ai) {
        for (struct ares_addrinfo_node *n = ai->nodes; n && e->naddrs < MAX_ADDRS; n = n->ai_next) {
            const void *a = n->ai_family == AF_INET6
                                ? (const void *)&((struct sockaddr_in6 *)n->ai_addr)->sin6_addr
                                : (const void *)&((struct sockaddr_in *)n->ai_addr)->sin_addr;
            if ((n->ai_family != AF_INET && n->ai_family != AF_INET6) ||
                !inet_ntop(n->ai_family, a, e->addrs[e->naddrs], sizeof e->addrs[0]))
                continue;
            e->naddrs++;
            if (n->ai_ttl >= 0 && (unsigned)n->ai_ttl < ttl) ttl = (unsigned)n->ai_ttl;
        }
    }
    if (ai) ares_freeaddrinfo(ai);
    if (e->naddrs) {
        if (ttl < TTL_MIN_S) ttl = TTL_MIN_S;
        e->expires = now + (int64_t)ttl * 1000;
    } else {
        snprintf(e->why, sizeof e->why, "cannot resolve %s: %s", e->host,
                 status == ARES_SUCCESS ? "no address" : ares_strerror(status));
        e->expires = now + NEGATIVE_TTL_S * 1000;
    }
    if (r->stopping)
        deliver(e); /* ares_destroy at the loop's stop: the loop thread, no lookup call */
    else
        pb_ioloop_post(r->loop, deliver, e);
}

/* ---- the API ------------------------------------------------------------------------------------
 */

/* Refusals that never had an entry: handed over by a posted task as well. */
struct refusal {
    pb_resolve_fn cb;
    void *ctx;
    pb_err err;
    char why[PB_SERVER_ID_MAX + 96];
};

static void refuse_task(void *arg)
{
    struct refusal *f = arg;
    f->cb(f->ctx, f->err, NULL, f->why);
    free(f);
}

static void refuse(pb_resolver *r, pb_err err, pb_resolve_fn cb, void *ctx, const char *why)
{
    struct refusal *f = pb_xcalloc(1, sizeof *f);
    f->cb = cb;
    f->ctx = ctx;
    f->err = err;
    snprintf(f->why, sizeof f->why, "%s", why);
    pb_ioloop_post(r->loop, refuse_task, f);
}

static void lookup(pb_resolver *r, const char *host, bool for_client, const uint8_t *client_addr,
                   pb_resolve_fn cb, void *ctx)
{
    if (r->stopping || !r->channel_ok) {
        refuse(r, PB_ERR_SHUTDOWN, cb, ctx, "shutting down");
        return;
    }
    if (strlen(host) >= PB_SERVER_ID_MAX) {
        refuse(r, PB_ERR_INVAL, cb, ctx, "name too long");
        return;
    }
    struct entry *e = find(r, host);
    int64_t now = pb_ioloop_now_ms();
    if (e && !e->running && e->expires <= now) { /* expired: look it up again */
        drop(r, e);
        e = NULL;
    }
    char domain[PB_SERVER_ID_MAX] = "", dkey[PB_SERVER_ID_MAX] = "";
    if (!e) {
        pb_resolver_domain(host, domain, sizeof domain);
        domain_key(domain, dkey);
        unsigned per_domain = SHARE(r, per_domain), per_client = SHARE(r, per_client);
        const char *why = NULL, *reason = NULL;
        if (r->running >= r->o.max_pending) {
            why = "too many names being resolved at once";
            reason = "total";
        } else if (per_domain && charge_count(&r->domains, dkey, sizeof dkey) >= per_domain) {
            why = "too many names under this domain being resolved at once";
            reason = "per_domain";
        } else if (for_client && r->for_clients_now >= SHARE(r, for_clients)) {
            why = "too many names being resolved for clients at once";
            reason = "clients";
        } else if (for_client && client_addr && per_client &&
                   charge_count(&r->addrs, (const char *)client_addr, 16) >= per_client) {
            why = "too many names being resolved for this client address at once";
            reason = "per_address";
        }
        if (why) {
            count_refusal(r, reason);
            char msg[PB_SERVER_ID_MAX + 96];
            snprintf(msg, sizeof msg, "cannot resolve %s now: %s", host, why);
            refuse(r, PB_ERR_BUSY, cb, ctx, msg);
            return;
        }
        evict(r);
        e = pb_xcalloc(1, sizeof *e);
        e->r = r;
        snprintf(e->host, sizeof e->host, "%s", host);
        unsigned b = hash_of(host);
        e->hnext = r->buckets[b];
        r->buckets[b] = e;
        r->nentries++;
        lru_front(r, e);
    } else {
        lru_unlink(r, e);
        lru_front(r, e);
    }
    struct waiter *w = pb_xcalloc(1, sizeof *w);
    w->cb = cb;
    w->ctx = ctx;
    w->next = e->waiters;
    e->waiters = w;
    if (e->running) return; /* joins the query or delivery under way */
    e->running = true;
    r->running++;
    if (e->expires > now) { /* cached: answered by a posted task */
        pb_ioloop_post(r->loop, deliver, e);
        return;
    }
    /* a query: charged to its domain, and to the client it runs for */
    e->charged = true;
    snprintf(e->domain, sizeof e->domain, "%s", domain);
    charge_add(&r->domains, dkey, sizeof dkey);
    e->for_client = for_client;
    if (for_client) r->for_clients_now++;
    e->has_addr = for_client && client_addr;
    if (e->has_addr) {
        memcpy(e->addr, client_addr, sizeof e->addr);
        charge_add(&r->addrs, (const char *)e->addr, sizeof e->addr);
    }
    struct ares_addrinfo_hints hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    ares_getaddrinfo(r->ch, e->host, NULL, &hints, on_addrinfo, e);
    arm_timer(r);
}

void pb_resolver_lookup(pb_resolver *r, const char *host, pb_resolve_fn cb, void *ctx)
{
    lookup(r, host, false, NULL, cb, ctx);
}

void pb_resolver_lookup_for(pb_resolver *r, const char *host, const uint8_t *client_addr,
                            pb_resolve_fn cb, void *ctx)
{
    lookup(r, host, true, client_addr, cb, ctx);
}

void pb_resolver_failed(pb_resolver *r, const char *host, const char *addr)
{
    struct entry *e = find(r, host);
    if (e && e->naddrs > 1 && !strcmp(e->addrs[e->cur % e->naddrs], addr))
        e->cur = (e->cur + 1) % e->naddrs;
}

size_t pb_resolver_cached(const pb_resolver *r)
{
    return r->nentries;
}

size_t pb_resolver_running(const pb_resolver *r)
{
    return r->running;
}

/* The loop stops (on its thread): every query ends, its waiters get PB_ERR_SHUTDOWN. */
static void on_loop_stop(void *ctx)
{
    pb_resolver *r = ctx;
    r->stopping = true;
    if (r->channel_ok) {
        r->channel_ok = false;
        ares_destroy(r->ch); /* calls on_addrinfo for every query: delivered at once */
    }
    pb_ioloop_timer_cancel(r->loop, &r->timer);
}

pb_err pb_resolver_new(pb_ioloop *loop, const pb_resolver_opts *opts, pb_resolver **out)
{
    pthread_once(&g_once, global_init);
    if (g_init_rc != ARES_SUCCESS) {
        PB_ERROR(NULL, "c-ares cannot start: %s", ares_strerror(g_init_rc));
        return PB_ERR_INTERNAL;
    }
    pb_resolver *r = pb_xcalloc(1, sizeof *r);
    r->loop = loop;
    if (opts) r->o = *opts;
    if (r->o.timeout_ms <= 0) r->o.timeout_ms = 2000;
    if (r->o.tries <= 0) r->o.tries = 2;
    if (!r->o.max_pending) r->o.max_pending = 256;
    if (!r->o.ttl_max_s) r->o.ttl_max_s = 300;
    if (!r->o.max_entries) r->o.max_entries = 16384;
    if (!r->o.for_clients || r->o.for_clients > r->o.max_pending)
        r->o.for_clients = r->o.max_pending / 2 ? r->o.max_pending / 2 : 1;
    struct ares_options ao = {.sock_state_cb = on_sock_state,
                              .sock_state_cb_data = r,
                              .timeout = r->o.timeout_ms,
                              .tries = r->o.tries};
    int rc = ares_init_options(&r->ch, &ao,
                               ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
    if (rc != ARES_SUCCESS) {
        PB_ERROR(NULL, "c-ares cannot start: %s", ares_strerror(rc));
        free(r);
        return PB_ERR_INTERNAL;
    }
    r->channel_ok = true;
    if (r->o.servers && *r->o.servers) {
        rc = ares_set_servers_ports_csv(r->ch, r->o.servers);
        if (rc != ARES_SUCCESS) {
            PB_ERROR(NULL, "dns_servers %s: %s", r->o.servers, ares_strerror(rc));
            ares_destroy(r->ch);
            free(r);
            return PB_ERR_CONFIG;
        }
    }
    pb_timer_init(&r->timer, on_timer, r);
    pb_ioloop_on_stop(loop, on_loop_stop, r);
    *out = r;
    return PB_OK;
}

static void free_on_loop(void *ctx)
{
    pb_resolver *r = ctx;
    pb_ioloop_off_stop(r->loop, on_loop_stop, r);
    on_loop_stop(r);
    for (size_t b = 0; b < NBUCKETS; b++)
        while (r->buckets[b]) {
            struct entry *e = r->buckets[b];
            r->buckets[b] = e->hnext;
            struct waiter *w = e->waiters;
            while (w) { /* cannot happen once the loop stopped; no callback this late */
                struct waiter *next = w->next;
                free(w);
                w = next;
            }
            free(e);
        }
}

void pb_resolver_free(pb_resolver *r)
{
    if (!r) return;
    pb_ioloop_call(r->loop, free_on_loop, r);
    free(r->domains.v);
    free(r->addrs.v);
    free(r);
}
