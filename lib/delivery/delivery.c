/*
 * delivery - the delivery engine (see delivery.h for the model).
 *
 * In memory there is one `struct peer` per known peer, in an array of pointers guarded by
 * d->mu. The store is the truth; the peer struct caches what scheduling needs (mode,
 * backoff, pull and rename timers) and who owns the peer right now. Only the owner talks
 * to the peer for sending (push, drain probe, rename notice) or pulls from it, so there is
 * never more than one Push in flight per peer, and a foreign peer's Pull (which deletes
 * what it is answered) claims the same ownership so that it never races a Push.
 *
 * Ordering argument: a peer's outbox is only ever consumed from its head, and an event
 * leaves it only once the receiver has it. Between postboxes of this project the receiver
 * keeps, per sender, the highest sequence number applied and skips anything not above it,
 * so a retried Push, a late stale attempt, or an event that arrives both by Pull and by
 * Push is applied exactly once and never out of order.
 */
#include "delivery/delivery.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>
#include <time.h>

#include "util/fault.h"
#include "util/log.h"
#include "util/mem.h"
#include "util/sdnotify.h"
#include "util/serverid.h"
#include "wire/wire.h"

#define PATH_PULL "/protocol.sync.v1.PostboxService/Pull"
#define PATH_PUSH "/protocol.sync.v1.PostboxService/Push"
#define PATH_NOTIFY "/protocol.sync.v1.PostboxService/NotifyNewId"
#define PUSH_BATCH 64
#define MAX_PULL_ROUNDS 100000

struct peer {
    char id[PB_SERVER_ID_MAX];
    bool owned; /* a worker (or a foreign Pull being answered) works on this peer */
    /* sending */
    bool has_work; /* the outbox may hold events */
    uint64_t gen;  /* bumped whenever work is added */
    pb_peer_mode mode;
    uint32_t attempts;
    int64_t next_attempt; /* wall ms, QUEUED only */
    uint64_t acked_upto;  /* outbox known empty up to here (skips no-op acks) */
    /* receiving */
    bool pulling;    /* a Pull from this peer is due at start-up or in progress */
    int64_t pull_at; /* wall ms, 0 = none */
    /* rename notice towards this peer */
    bool rename_pending;
    char rename_old[PB_SERVER_ID_MAX];
    char rename_new[PB_SERVER_ID_MAX];
    uint32_t rename_attempts;
    int64_t rename_at;
    uint64_t rename_tries; /* attempts made, for waiters */
    char rename_err[256];
    /* several nodes */
    int64_t lease_wait_until; /* another node holds the lease: do not ask before this */
};

struct pb_delivery {
    pb_delivery_opts o;
    pb_auth_signer *signer; /* one signed token per second and identity */
    char self[PB_SERVER_ID_MAX];
    pthread_mutex_t mu;
    pthread_cond_t work_cv;  /* workers: new work or a timer */
    pthread_cond_t state_cv; /* handlers and admin: a pull or a rename attempt finished */
    pthread_cond_t inbox_cv; /* inbox long-polls */
    uint64_t inbox_gen;      /* bumped under mu whenever the inbox grows */
    uint64_t scanned_inbox;  /* several nodes: the inbox's last seq at the last scan */
    struct peer **peers;
    size_t npeers;
    size_t rr; /* round-robin start for fairness */
    pthread_t *threads;
    unsigned nthreads;
    pthread_t scanner;
    bool has_scanner;
    bool stopping;
};

enum task { T_NONE, T_PUSH, T_PULL, T_RENAME };

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Uniform in [lo, hi]. */
static int64_t jitter(int64_t lo, int64_t hi)
{
    if (hi <= lo) return lo;
    return lo + (int64_t)randombytes_uniform(
                    (uint32_t)((hi - lo + 1) > 0x7fffffff ? 0x7fffffff : (hi - lo + 1)));
}

/* Jittered exponential backoff for a queued peer's drain probes: v = min * 2^attempts,
 * then a uniform delay in [v, 1.5 v], never below min nor above max. */
static int64_t backoff_ms(const pb_delivery *d, uint32_t attempts)
{
    int64_t max = (int64_t)d->o.backoff_max_s * 1000;
    int64_t v = (int64_t)d->o.backoff_min_s * 1000;
    for (uint32_t i = 0; i < attempts && v < max; i++)
        v *= 2;
    if (v > max) v = max;
    int64_t hi = v + v / 2;
    return jitter(v, hi < max ? hi : max);
}

static void abs_deadline(struct timespec *ts, int64_t wall_ms)
{
    ts->tv_sec = wall_ms / 1000;
    ts->tv_nsec = (wall_ms % 1000) * 1000000;
}

/* Waits on cv until wall time `until` (ms) or a broadcast. Called with d->mu held. */
static void wait_until(pb_delivery *d, pthread_cond_t *cv, int64_t until)
{
    struct timespec ts;
    abs_deadline(&ts, until);
    pthread_cond_timedwait(cv, &d->mu, &ts);
}

/* ---- the peer table ------------------------------------------------------------------- */

static struct peer *peer_find(pb_delivery *d, const char *id)
{
    for (size_t i = 0; i < d->npeers; i++)
        if (strcmp(d->peers[i]->id, id) == 0) return d->peers[i];
    return NULL;
}

/* With d->mu held. */
static struct peer *peer_get(pb_delivery *d, const char *id)
{
    struct peer *p = peer_find(d, id);
    if (p) return p;
    p = pb_xcalloc(1, sizeof *p);
    snprintf(p->id, sizeof p->id, "%s", id);
    d->peers = pb_xrealloc(d->peers, (d->npeers + 1) * sizeof *d->peers);
    d->peers[d->npeers++] = p;
    return p;
}

/* The ID this peer knows us by: the old one while it has not confirmed our rename. */
static void token_id_for(pb_delivery *d, const struct peer *p, char out[PB_SERVER_ID_MAX])
{
    snprintf(out, PB_SERVER_ID_MAX, "%s", p->rename_pending ? p->rename_old : d->self);
}

static void release(pb_delivery *d, struct peer *p)
{
    pthread_mutex_lock(&d->mu);
    p->owned = false;
    pthread_cond_broadcast(&d->work_cv);
    pthread_cond_broadcast(&d->state_cv);
    pthread_mutex_unlock(&d->mu);
}

static void persist_state(pb_delivery *d, const char *peer, pb_peer_mode mode, uint32_t attempts,
                          int64_t next_attempt, const char *err, uint64_t parked_seq)
{
    pb_err e =
        pb_store_peer_state_set(d->o.store, peer, mode, attempts, next_attempt, err, parked_seq);
    if (e != PB_OK) PB_ERROR(peer, "cannot record delivery state: %s", pb_strerror(e));
}

/* ---- calls to peers --------------------------------------------------------------------- */

/* One signed hRPC call to peer as `as_id`. */
static pb_err call_peer(pb_delivery *d, const char *peer, const char *as_id, const char *path,
                        const pb_buf *body, pb_client_answer *ans)
{
    char *authz = pb_auth_header_cached(d->signer, as_id, (uint64_t)time(NULL));
    pb_err err = pb_client_call(d->o.client, peer, path, authz, body->data, body->len, ans);
    free(authz);
    return err;
}

/* A failure that retrying will not heal: a 4xx other than 408 and 429. */
static bool permanent(pb_err err, const pb_client_answer *ans)
{
    if (err != PB_ERR_PEER && err != PB_ERR_PROTO) return false;
    return ans->status >= 400 && ans->status < 500 && ans->status != 408 && ans->status != 429;
}

static void describe(pb_err err, const pb_client_answer *ans, char *out, size_t n)
{
    if (ans->status)
        snprintf(out, n, "HTTP %ld %s%s%s", ans->status, ans->identifier ? ans->identifier : "",
                 ans->message ? ": " : "", ans->message ? ans->message : "");
    else
        snprintf(out, n, "%s%s%s", pb_strerror(err), ans->message ? ": " : "",
                 ans->message ? ans->message : "");
}

/* ---- sending ----------------------------------------------------------------------------- */

enum push_result { PUSH_OK, PUSH_EXHAUSTED, PUSH_PARK, PUSH_STOPPED };

/* Pushes one event, retrying per mode. err receives the last failure's description. */
static enum push_result push_one(pb_delivery *d, struct peer *p, const char *peer,
                                 const pb_outbox_item *it, pb_peer_mode mode, bool *lazy,
                                 char *errtxt, size_t errlen)
{
    *lazy = false;
    pb_buf body = PB_BUF_INIT;
    enum push_result res = PUSH_EXHAUSTED;
    if (pb_wire_push_encode(&it->ev, it->seq, &body) != PB_OK) {
        snprintf(errtxt, errlen, "event %llu cannot be encoded", (unsigned long long)it->seq);
        res = PUSH_PARK;
        goto out;
    }
    unsigned tries = mode == PB_MODE_PUSH ? 1 + d->o.push_retries : 1;
    for (unsigned i = 0; i < tries; i++) {
        if (i > 0) {
            int64_t base = (int64_t)d->o.retry_base_ms << (i - 1);
            int64_t until = now_ms() + jitter(base / 2, base);
            pthread_mutex_lock(&d->mu);
            while (!d->stopping && now_ms() < until)
                wait_until(d, &d->work_cv, until);
            bool stop = d->stopping;
            pthread_mutex_unlock(&d->mu);
            if (stop) {
                res = PUSH_STOPPED;
                goto out;
            }
        }
        char as[PB_SERVER_ID_MAX];
        pthread_mutex_lock(&d->mu);
        token_id_for(d, p, as);
        pthread_mutex_unlock(&d->mu);
        pb_client_answer ans;
        pb_err err = call_peer(d, peer, as, PATH_PUSH, &body, &ans);
        if (err == PB_OK) {
            uint64_t seq_ack = 0;
            if (pb_wire_push_resp_decode(ans.body, ans.body_len, &seq_ack) == PB_OK)
                *lazy = seq_ack >= it->seq;
            pb_client_answer_clear(&ans);
            res = PUSH_OK;
            goto out;
        }
        if (err == PB_ERR_SHUTDOWN) {
            pb_client_answer_clear(&ans);
            res = PUSH_STOPPED;
            goto out;
        }
        describe(err, &ans, errtxt, errlen);
        bool perm = permanent(err, &ans);
        pb_client_answer_clear(&ans);
        PB_DEBUG(peer, "push of %llu failed (try %u/%u): %s", (unsigned long long)it->seq, i + 1,
                 tries, errtxt);
        if (perm) {
            res = PUSH_PARK;
            goto out;
        }
    }
out:
    pb_buf_free(&body);
    return res;
}

/* ---- leases (several nodes) ---------------------------------------------------------------- */

/* Takes or renews this node's lease on peer; true when held (always with one node). */
static bool lease_take(pb_delivery *d, struct peer *p, const char *peer)
{
    if (!d->o.node_id) return true;
    bool held = false;
    pb_err err =
        pb_store_lease_acquire(d->o.store, peer, d->o.node_id, now_ms(), d->o.lease_ttl_ms, &held);
    if (err != PB_OK) PB_WARN(peer, "cannot take the delivery lease: %s", pb_strerror(err));
    if (!held) {
        pthread_mutex_lock(&d->mu);
        p->lease_wait_until = now_ms() + d->o.scan_interval_ms;
        pthread_mutex_unlock(&d->mu);
    }
    return err == PB_OK && held;
}

static void lease_give(pb_delivery *d, const char *peer)
{
    if (!d->o.node_id) return;
    pb_err err = pb_store_lease_release(d->o.store, peer, d->o.node_id);
    if (err != PB_OK) PB_WARN(peer, "cannot release the delivery lease: %s", pb_strerror(err));
}

/* With the lease just taken: the shared store's delivery state wins over ours (another
 * node may have queued, drained or parked the peer). False when nothing is due now. */
static bool lease_sync_state(pb_delivery *d, struct peer *p, const char *peer)
{
    if (!d->o.node_id) return true;
    pb_peer_state st;
    if (pb_store_peer_state_get(d->o.store, peer, &st) != PB_OK) return true;
    pthread_mutex_lock(&d->mu);
    p->mode = st.mode;
    p->attempts = st.attempts;
    p->next_attempt = st.next_attempt_at;
    bool due = st.queued > 0 && (st.mode == PB_MODE_PUSH ||
                                 (st.mode == PB_MODE_QUEUED && st.next_attempt_at <= now_ms()));
    if (st.queued == 0) p->has_work = false;
    pthread_mutex_unlock(&d->mu);
    pb_peer_state_clear(&st);
    return due;
}

/* Forgets delivered events up to `upto` (no-op for 0). */
static void forget(pb_delivery *d, const char *peer, uint64_t upto)
{
    if (!upto) return;
    pb_err err = pb_store_outbox_ack(d->o.store, peer, upto);
    if (err != PB_OK) PB_ERROR(peer, "cannot forget delivered events: %s", pb_strerror(err));
}

/*
 * Delivers the outbox head of p in order until it is empty, the peer fails, or we stop.
 * When the receiver confirms it dedupes (PushResponse.postbox_seq_ack), delivered events
 * are forgotten once per batch instead of once per event: a crash in between replays at
 * most a batch, which the receiver recognises. A foreign receiver's events are forgotten
 * one by one, right after each 200.
 */
static void push_loop(pb_delivery *d, struct peer *p, const char *leased);

static void task_push(pb_delivery *d, struct peer *p)
{
    char peer[PB_SERVER_ID_MAX];
    pthread_mutex_lock(&d->mu);
    snprintf(peer, sizeof peer, "%s", p->id);
    pthread_mutex_unlock(&d->mu);
    if (!lease_take(d, p, peer)) return;
    if (lease_sync_state(d, p, peer)) push_loop(d, p, peer);
    lease_give(d, peer);
}

static void push_loop(pb_delivery *d, struct peer *p, const char *leased)
{
    char peer[PB_SERVER_ID_MAX] = "";
    uint64_t cursor = 1, lazy_upto = 0;
    int64_t lease_renewed = now_ms();
    for (;;) {
        forget(d, peer, lazy_upto);
        lazy_upto = 0;
        if (d->o.node_id && now_ms() - lease_renewed > (int64_t)d->o.lease_ttl_ms / 3) {
            if (!lease_take(d, p, leased)) {
                PB_WARN(leased, "lost the delivery lease to another node");
                return;
            }
            lease_renewed = now_ms();
        }
        pthread_mutex_lock(&d->mu);
        snprintf(peer, sizeof peer, "%s", p->id);
        uint64_t gen = p->gen;
        pb_peer_mode mode = p->mode;
        uint32_t attempts = p->attempts;
        bool stop = d->stopping;
        pthread_mutex_unlock(&d->mu);
        if (stop || mode == PB_MODE_PARKED) return;

        pb_outbox_item *items = NULL;
        size_t n = 0;
        pb_err err =
            pb_store_outbox_read(d->o.store, peer, cursor, PUSH_BATCH, SIZE_MAX, &items, &n);
        if (err != PB_OK) {
            PB_ERROR(peer, "cannot read the outbox: %s", pb_strerror(err));
            pthread_mutex_lock(&d->mu);
            p->next_attempt = now_ms() + 1000;
            if (p->mode == PB_MODE_PUSH) p->mode = PB_MODE_QUEUED;
            pthread_mutex_unlock(&d->mu);
            return;
        }
        if (n == 0) {
            pthread_mutex_lock(&d->mu);
            if (p->gen == gen) p->has_work = false;
            bool was_queued = p->mode == PB_MODE_QUEUED;
            if (was_queued) {
                p->mode = PB_MODE_PUSH;
                p->attempts = 0;
            }
            pthread_mutex_unlock(&d->mu);
            if (was_queued) {
                persist_state(d, peer, PB_MODE_PUSH, 0, 0, NULL, 0);
                PB_INFO(peer, "queue drained: back to push mode");
            }
            return;
        }
        for (size_t i = 0; i < n; i++) {
            /* The peer may have acknowledged it by Pull meanwhile: nothing to push. */
            pthread_mutex_lock(&d->mu);
            bool acked = items[i].seq <= p->acked_upto;
            pthread_mutex_unlock(&d->mu);
            if (acked) {
                cursor = items[i].seq + 1;
                continue;
            }
            char errtxt[512] = "";
            bool lazy = false;
            enum push_result r =
                push_one(d, p, peer, &items[i], mode, &lazy, errtxt, sizeof errtxt);
            if (r == PUSH_STOPPED) {
                forget(d, peer, lazy_upto);
                pb_outbox_items_free(items, n);
                return;
            }
            if (r == PUSH_OK) {
                pb_fault_crash("delivery.crash-before-forget");
                if (lazy) {
                    lazy_upto = items[i].seq;
                } else {
                    forget(d, peer, lazy_upto);
                    lazy_upto = 0;
                    forget(d, peer, items[i].seq);
                }
                cursor = items[i].seq + 1;
                if (mode == PB_MODE_QUEUED) {
                    /* The peer answers again: drain the rest as in push mode. */
                    mode = PB_MODE_PUSH;
                    pthread_mutex_lock(&d->mu);
                    p->mode = PB_MODE_PUSH;
                    p->attempts = 0;
                    pthread_mutex_unlock(&d->mu);
                    persist_state(d, peer, PB_MODE_PUSH, 0, 0, NULL, 0);
                    PB_INFO(peer, "peer answers again: draining the queue");
                }
                continue;
            }
            forget(d, peer, lazy_upto);
            lazy_upto = 0;
            if (r == PUSH_PARK) {
                pthread_mutex_lock(&d->mu);
                p->mode = PB_MODE_PARKED;
                pthread_mutex_unlock(&d->mu);
                persist_state(d, peer, PB_MODE_PARKED, 0, 0, errtxt, items[i].seq);
                PB_ERROR(peer, "event %llu refused, delivery parked until an operator acts: %s",
                         (unsigned long long)items[i].seq, errtxt);
                pb_outbox_items_free(items, n);
                return;
            }
            /* exhausted: queue (or stay queued with a longer backoff) */
            uint32_t na = mode == PB_MODE_QUEUED ? attempts + 1 : 0;
            int64_t next = now_ms() + backoff_ms(d, na);
            pthread_mutex_lock(&d->mu);
            p->mode = PB_MODE_QUEUED;
            p->attempts = na;
            p->next_attempt = next;
            pthread_mutex_unlock(&d->mu);
            persist_state(d, peer, PB_MODE_QUEUED, na, next, errtxt, 0);
            if (mode == PB_MODE_PUSH)
                PB_WARN(peer, "push failed %u times, queueing for the peer's Pull: %s",
                        1 + d->o.push_retries, errtxt);
            else
                PB_INFO(peer, "drain attempt failed, next in %lld s: %s",
                        (long long)(next - now_ms()) / 1000, errtxt);
            pb_outbox_items_free(items, n);
            return;
        }
        pb_outbox_items_free(items, n);
    }
}

/* ---- pulling (this server as R) --------------------------------------------------------- */

static void inbox_bump(pb_delivery *d)
{
    pthread_mutex_lock(&d->mu);
    d->inbox_gen++;
    pthread_cond_broadcast(&d->inbox_cv);
    pthread_mutex_unlock(&d->mu);
}

/* Pulls from p until an answer is empty (the last request acknowledges what we stored). */
static void task_pull(pb_delivery *d, struct peer *p)
{
    char peer[PB_SERVER_ID_MAX], as[PB_SERVER_ID_MAX];
    pthread_mutex_lock(&d->mu);
    snprintf(peer, sizeof peer, "%s", p->id);
    token_id_for(d, p, as);
    pthread_mutex_unlock(&d->mu);
    size_t total = 0;
    for (int round = 0; round < MAX_PULL_ROUNDS; round++) {
        pb_peer_state st;
        uint64_t recv_seq = 0;
        if (pb_store_peer_state_get(d->o.store, peer, &st) == PB_OK) {
            recv_seq = st.recv_seq;
            pb_peer_state_clear(&st);
        }
        pb_buf req = PB_BUF_INIT;
        pb_wire_pull_req_encode(recv_seq + 1, &req);
        pb_client_answer ans;
        pb_err err = call_peer(d, peer, as, PATH_PULL, &req, &ans);
        pb_buf_free(&req);
        if (err != PB_OK) {
            char why[512];
            describe(err, &ans, why, sizeof why);
            PB_INFO(peer, "pull failed: %s", why);
            pb_client_answer_clear(&ans);
            break;
        }
        pb_event *evs = NULL;
        uint64_t *seqs = NULL;
        size_t n = 0;
        err = pb_wire_pull_resp_decode(ans.body, ans.body_len, &evs, &seqs, &n);
        pb_client_answer_clear(&ans);
        if (err != PB_OK) {
            PB_WARN(peer, "pull answer does not decode: %s", pb_strerror(err));
            break;
        }
        pb_recv_result rr = {0};
        if (n > 0) err = pb_store_receive(d->o.store, peer, evs, seqs, n, now_ms(), &rr);
        for (size_t i = 0; i < n; i++)
            pb_event_clear(&evs[i]);
        free(evs);
        free(seqs);
        if (n == 0) break;
        if (err != PB_OK) {
            PB_ERROR(peer, "cannot store pulled events: %s", pb_strerror(err));
            break;
        }
        total += rr.applied;
        if (rr.applied) inbox_bump(d);
    }
    PB_INFO(peer, "pull finished: %zu new events", total);
    pthread_mutex_lock(&d->mu);
    p->pulling = false;
    pthread_cond_broadcast(&d->state_cv);
    pthread_mutex_unlock(&d->mu);
}

/* ---- rename notices (this server renamed itself) ----------------------------------------- */

static void task_rename(pb_delivery *d, struct peer *p)
{
    char peer[PB_SERVER_ID_MAX], old[PB_SERVER_ID_MAX], nid[PB_SERVER_ID_MAX];
    pthread_mutex_lock(&d->mu);
    snprintf(peer, sizeof peer, "%s", p->id);
    snprintf(old, sizeof old, "%s", p->rename_old);
    snprintf(nid, sizeof nid, "%s", p->rename_new);
    uint32_t attempts = p->rename_attempts;
    pthread_mutex_unlock(&d->mu);

    pb_buf body = PB_BUF_INIT;
    pb_wire_notify_encode(nid, &body);
    pb_client_answer ans;
    pb_err err = call_peer(d, peer, old, PATH_NOTIFY, &body, &ans);
    pb_buf_free(&body);
    char why[256] = "";
    if (err != PB_OK) describe(err, &ans, why, sizeof why);
    pb_client_answer_clear(&ans);
    if (err == PB_ERR_SHUTDOWN) return;

    if (err == PB_OK) {
        pb_err e = pb_store_rename_out_done(d->o.store, peer, nid);
        if (e != PB_OK) PB_ERROR(peer, "cannot record the rename notice: %s", pb_strerror(e));
        PB_INFO(peer, "peer accepted our new ID %s", nid);
    } else {
        attempts++;
        int64_t next = now_ms() + backoff_ms(d, attempts - 1);
        pb_store_rename_out_failed(d->o.store, peer, attempts, next, why);
        PB_WARN(peer, "rename notice failed (attempt %u): %s", attempts, why);
        pthread_mutex_lock(&d->mu);
        p->rename_at = next;
        pthread_mutex_unlock(&d->mu);
    }
    pthread_mutex_lock(&d->mu);
    if (err == PB_OK && strcmp(p->rename_new, nid) == 0) {
        p->rename_pending = false;
        p->rename_err[0] = '\0';
    } else if (err != PB_OK) {
        p->rename_attempts = attempts;
        snprintf(p->rename_err, sizeof p->rename_err, "%s", why);
    }
    p->rename_tries++;
    pthread_cond_broadcast(&d->state_cv);
    pthread_mutex_unlock(&d->mu);
}

/* ---- workers ---------------------------------------------------------------------------- */

/* With d->mu held: the next due task, or T_NONE and the time of the next timer. */
static enum task pick(pb_delivery *d, struct peer **out, int64_t *wake)
{
    int64_t now = now_ms();
    *wake = now + 1000;
    for (size_t k = 0; k < d->npeers; k++) {
        size_t i = (d->rr + k) % d->npeers;
        struct peer *p = d->peers[i];
        if (p->owned) continue;
        enum task t = T_NONE;
        if (p->rename_pending) {
            if (p->rename_at <= now)
                t = T_RENAME;
            else if (p->rename_at < *wake)
                *wake = p->rename_at;
        }
        if (t == T_NONE && p->pull_at) {
            if (p->pull_at <= now)
                t = T_PULL;
            else if (p->pull_at < *wake)
                *wake = p->pull_at;
        }
        if (t == T_NONE && p->has_work) {
            if (p->mode == PB_MODE_PUSH)
                t = T_PUSH;
            else if (p->mode == PB_MODE_QUEUED) {
                if (p->next_attempt <= now)
                    t = T_PUSH;
                else if (p->next_attempt < *wake)
                    *wake = p->next_attempt;
            }
        }
        if (t != T_NONE) {
            d->rr = i + 1;
            *out = p;
            return t;
        }
    }
    return T_NONE;
}

static void *worker(void *arg)
{
    pb_delivery *d = arg;
    pthread_mutex_lock(&d->mu);
    while (!d->stopping) {
        pb_sdnotify_watchdog_kick(); /* systemd's watchdog; pick() wakes us at least every 1 s */
        struct peer *p = NULL;
        int64_t wake;
        enum task t = pick(d, &p, &wake);
        if (t == T_NONE) {
            wait_until(d, &d->work_cv, wake);
            continue;
        }
        p->owned = true;
        if (t == T_PULL) {
            p->pull_at = 0;
            p->pulling = true;
        }
        pthread_mutex_unlock(&d->mu);
        switch (t) {
        case T_PUSH:
            task_push(d, p);
            break;
        case T_PULL:
            task_pull(d, p);
            break;
        case T_RENAME:
            task_rename(d, p);
            break;
        default:
            break;
        }
        release(d, p);
        pthread_mutex_lock(&d->mu);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* ---- several nodes: the scanner ------------------------------------------------------------ */

/* Every scan_interval_ms: peers with queued events (submitted through any node) get work,
 * and a rename of this server made through another node is taken up. */
static void *scanner(void *arg)
{
    pb_delivery *d = arg;
    pthread_mutex_lock(&d->mu);
    while (!d->stopping) {
        pthread_mutex_unlock(&d->mu);
        char **peers = NULL, *self = NULL;
        size_t n = 0;
        pb_err err = pb_store_outbox_peers(d->o.store, &peers, &n);
        if (err != PB_OK) PB_WARN(NULL, "scanner: %s", pb_strerror(err));
        if (pb_store_meta_get(d->o.store, "server_id", &self) != PB_OK) self = NULL;
        uint64_t inbox_last = 0;
        pb_store_inbox_last_seq(d->o.store, &inbox_last);
        pthread_mutex_lock(&d->mu);
        if (inbox_last != d->scanned_inbox) { /* events received by other nodes */
            d->scanned_inbox = inbox_last;
            d->inbox_gen++;
            pthread_cond_broadcast(&d->inbox_cv);
        }
        for (size_t i = 0; i < n; i++) {
            struct peer *p = peer_get(d, peers[i]);
            if (!p->owned) {
                p->has_work = true;
                p->gen++;
            }
        }
        if (self && strcmp(self, d->self) != 0) {
            PB_INFO(NULL, "this server was renamed to %s (by another node)", self);
            snprintf(d->self, sizeof d->self, "%s", self);
        }
        if (n) pthread_cond_broadcast(&d->work_cv);
        free(self);
        pb_store_strings_free(peers, n);
        wait_until(d, &d->work_cv, now_ms() + d->o.scan_interval_ms);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* ---- life cycle ---------------------------------------------------------------------------- */

pb_err pb_delivery_new(const pb_delivery_opts *opts, pb_delivery **out)
{
    pb_delivery *d = pb_xcalloc(1, sizeof *d);
    d->o = *opts;
    if (!d->o.workers) d->o.workers = 4;
    if (!d->o.retry_base_ms) d->o.retry_base_ms = 100;
    if (!d->o.backoff_min_s) d->o.backoff_min_s = 5;
    if (!d->o.backoff_max_s) d->o.backoff_max_s = 900;
    if (d->o.backoff_max_s < d->o.backoff_min_s) d->o.backoff_max_s = d->o.backoff_min_s;
    if (!d->o.pull_interval_s) d->o.pull_interval_s = 60;
    if (!d->o.pull_batch) d->o.pull_batch = 1000;
    if (!d->o.pull_max_bytes) d->o.pull_max_bytes = 1024 * 1024;
    if (!d->o.push_wait_ms) d->o.push_wait_ms = 10000;
    if (!d->o.lease_ttl_ms) d->o.lease_ttl_ms = 10000;
    if (!d->o.scan_interval_ms) d->o.scan_interval_ms = 1000;
    d->o.node_id = opts->node_id ? pb_xstrdup(opts->node_id) : NULL;
    snprintf(d->self, sizeof d->self, "%s", opts->server_id);
    d->signer = pb_auth_signer_new(opts->keys);
    pthread_mutex_init(&d->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_REALTIME);
    pthread_cond_init(&d->work_cv, &ca);
    pthread_cond_init(&d->state_cv, &ca);
    pthread_cond_init(&d->inbox_cv, &ca);
    pthread_condattr_destroy(&ca);

    pb_peer_state *sts = NULL;
    size_t n = 0;
    pb_err err = pb_store_peer_state_list(d->o.store, &sts, &n);
    if (err != PB_OK) goto fail;
    for (size_t i = 0; i < n; i++) {
        struct peer *p = peer_get(d, sts[i].server_id);
        p->mode = sts[i].mode;
        p->attempts = sts[i].attempts;
        p->next_attempt = sts[i].next_attempt_at;
        p->has_work = sts[i].queued > 0;
    }
    pb_peer_state_free_array(sts, n);
    pb_rename_out *rs = NULL;
    err = pb_store_rename_out_list(d->o.store, &rs, &n);
    if (err != PB_OK) goto fail;
    for (size_t i = 0; i < n; i++) {
        struct peer *p = peer_get(d, rs[i].peer);
        p->rename_pending = true;
        snprintf(p->rename_old, sizeof p->rename_old, "%s", rs[i].old_id);
        snprintf(p->rename_new, sizeof p->rename_new, "%s", rs[i].new_id);
        p->rename_attempts = rs[i].attempts;
        p->rename_at = rs[i].next_attempt_at;
        if (rs[i].last_error) snprintf(p->rename_err, sizeof p->rename_err, "%s", rs[i].last_error);
    }
    pb_rename_outs_free(rs, n);
    /* Every known peer is pulled at start-up; Pushes from it wait for that first Pull,
     * from the moment the listener accepts them. */
    for (size_t i = 0; i < d->npeers; i++) {
        d->peers[i]->pulling = true;
        d->peers[i]->pull_at = now_ms();
    }
    *out = d;
    return PB_OK;
fail:
    pb_delivery_free(d);
    return err;
}

pb_err pb_delivery_start(pb_delivery *d)
{
    d->threads = pb_xcalloc(d->o.workers, sizeof *d->threads);
    for (unsigned i = 0; i < d->o.workers; i++) {
        if (pthread_create(&d->threads[i], NULL, worker, d) != 0) {
            PB_ERROR(NULL, "cannot start delivery workers");
            pb_delivery_stop(d);
            return PB_ERR_INTERNAL;
        }
        d->nthreads++;
    }
    if (d->o.node_id) {
        if (pthread_create(&d->scanner, NULL, scanner, d) != 0) {
            PB_ERROR(NULL, "cannot start the scanner");
            pb_delivery_stop(d);
            return PB_ERR_INTERNAL;
        }
        d->has_scanner = true;
    }
    PB_INFO(NULL, "delivery engine: %u workers, %zu known peers%s%s", d->nthreads, d->npeers,
            d->o.node_id ? ", node " : "", d->o.node_id ? d->o.node_id : "");
    return PB_OK;
}

void pb_delivery_stop(pb_delivery *d)
{
    if (!d) return;
    pthread_mutex_lock(&d->mu);
    d->stopping = true;
    pthread_cond_broadcast(&d->work_cv);
    pthread_cond_broadcast(&d->state_cv);
    pthread_cond_broadcast(&d->inbox_cv);
    pthread_mutex_unlock(&d->mu);
    for (unsigned i = 0; i < d->nthreads; i++)
        pthread_join(d->threads[i], NULL);
    d->nthreads = 0;
}

void pb_delivery_free(pb_delivery *d)
{
    if (!d) return;
    pb_delivery_stop(d);
    for (size_t i = 0; i < d->npeers; i++)
        free(d->peers[i]);
    free(d->peers);
    free(d->threads);
    pb_auth_signer_free(d->signer);
    free((char *)d->o.node_id);
    pthread_cond_destroy(&d->work_cv);
    pthread_cond_destroy(&d->state_cv);
    pthread_cond_destroy(&d->inbox_cv);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

void pb_delivery_server_id(pb_delivery *d, char out[PB_SERVER_ID_MAX])
{
    pthread_mutex_lock(&d->mu);
    snprintf(out, PB_SERVER_ID_MAX, "%s", d->self);
    pthread_mutex_unlock(&d->mu);
}

/* ---- hRPC handlers ------------------------------------------------------------------------ */

#define ID_BAD "hrpc.http.bad-unary-request"
#define ID_UNAVAILABLE "hrpc.unavailable"
#define ID_INTERNAL "hrpc.internal-server-error"

static void store_failure(pb_hrpc_reply *rep, pb_err err, const char *what)
{
    if (err == PB_ERR_STORE) {
        pb_hrpc_reply_error(rep, 503, ID_UNAVAILABLE, "%s: store unavailable, try again", what);
        rep->retry_after = 1;
    } else {
        pb_hrpc_reply_error(rep, 500, ID_INTERNAL, "%s: %s", what, pb_strerror(err));
    }
}

void pb_delivery_on_contact(void *ctx, const char *peer)
{
    pb_delivery *d = ctx;
    pthread_mutex_lock(&d->mu);
    struct peer *p = peer_find(d, peer);
    if (p && p->mode == PB_MODE_QUEUED && p->next_attempt > now_ms()) {
        p->attempts = 0;
        p->next_attempt = now_ms();
        pthread_cond_broadcast(&d->work_cv);
    }
    if (p && p->rename_pending && p->rename_at > now_ms()) {
        p->rename_at = now_ms();
        pthread_cond_broadcast(&d->work_cv);
    }
    pthread_mutex_unlock(&d->mu);
}

void pb_delivery_on_push(void *ctx, const pb_hrpc_request *req, pb_hrpc_reply *rep)
{
    pb_delivery *d = ctx;
    pb_event ev = {0};
    uint64_t seq = 0;
    pb_err err = pb_wire_push_decode(req->body, req->body_len, &ev, &seq);
    if (err != PB_OK) {
        pb_hrpc_reply_error(rep, 400, ID_BAD, "body is not a valid PushRequest: %s",
                            pb_strerror(err));
        return;
    }
    if (pb_fault("delivery.refuse-push-400")) {
        pb_hrpc_reply_error(rep, 400, "h.test-refusal", "refused by a test fault point");
        goto out;
    }
    if (pb_fault("delivery.unavailable-push")) {
        pb_hrpc_reply_error(rep, 503, ID_UNAVAILABLE, "unavailable by a test fault point");
        rep->retry_after = 1;
        goto out;
    }
    /* A Push arriving while we pull from its sender is processed after that Pull. */
    pthread_mutex_lock(&d->mu);
    struct peer *p = peer_get(d, req->peer);
    int64_t until = now_ms() + d->o.push_wait_ms;
    bool waited = p->pulling;
    while (p->pulling && !d->stopping && now_ms() < until)
        wait_until(d, &d->state_cv, until);
    bool busy = p->pulling;
    p->pull_at = now_ms() + (int64_t)d->o.pull_interval_s * 1000;
    pthread_mutex_unlock(&d->mu);
    if (busy) {
        pb_hrpc_reply_error(rep, 503, ID_UNAVAILABLE, "a Pull from you is in progress");
        rep->retry_after = 1;
        goto out;
    }
    if (waited)
        PB_INFO(req->peer, "push of %llu processed after our Pull from this peer",
                (unsigned long long)seq);
    pb_recv_result rr = {0};
    err = pb_store_receive(d->o.store, req->peer, &ev, seq ? &seq : NULL, 1, now_ms(), &rr);
    if (err != PB_OK) {
        store_failure(rep, err, "Push");
        goto out;
    }
    pb_fault_crash("delivery.crash-after-commit");
    if (rr.applied) inbox_bump(d);
    if (rr.duplicates)
        PB_DEBUG(req->peer, "duplicate push of %llu acknowledged", (unsigned long long)seq);
    /* A sender of this project learns that we hold its events up to seq. */
    pb_wire_push_resp_encode(seq, &rep->body);
out:
    pb_event_clear(&ev);
}

/* A foreign peer's Pull: the events it was answered are forgotten once the answer is
 * written, and the peer's ownership held meanwhile is released. */
struct foreign_pull {
    pb_delivery *d;
    struct peer *p;
    char peer[PB_SERVER_ID_MAX];
    uint64_t last_seq;
};

static void foreign_pull_done(void *ctx, bool sent_ok)
{
    struct foreign_pull *fp = ctx;
    if (sent_ok && fp->last_seq) {
        pb_err err = pb_store_outbox_ack(fp->d->o.store, fp->peer, fp->last_seq);
        if (err != PB_OK) PB_ERROR(fp->peer, "cannot forget pulled events: %s", pb_strerror(err));
    }
    lease_give(fp->d, fp->peer);
    pthread_mutex_lock(&fp->d->mu);
    fp->p->has_work = true; /* the worker finds out whether anything is left */
    fp->p->gen++;
    pthread_mutex_unlock(&fp->d->mu);
    release(fp->d, fp->p);
    free(fp);
}

void pb_delivery_on_pull(void *ctx, const pb_hrpc_request *req, pb_hrpc_reply *rep)
{
    pb_delivery *d = ctx;
    uint64_t next_seq = 0;
    pb_err err = pb_wire_pull_req_decode(req->body, req->body_len, &next_seq);
    if (err != PB_OK) {
        pb_hrpc_reply_error(rep, 400, ID_BAD, "body is not a valid PullRequest");
        return;
    }
    pthread_mutex_lock(&d->mu);
    struct peer *p = peer_get(d, req->peer);
    pb_peer_mode mode = p->mode;
    uint64_t acked = p->acked_upto;
    bool claimed = false;
    if (next_seq == 0) {
        /* Foreign puller: only a queue that nobody else is draining is answered. */
        if (p->owned || mode != PB_MODE_QUEUED) {
            pthread_mutex_unlock(&d->mu);
            return; /* empty PullResponse */
        }
        p->owned = claimed = true;
    }
    pthread_mutex_unlock(&d->mu);
    if (claimed && !lease_take(d, p, req->peer)) {
        release(d, p); /* another node delivers this peer: its queue is not ours to answer */
        return;
    }
    if (mode == PB_MODE_PARKED && !claimed) return; /* paused for the operator */
    if (pb_fault("delivery.slow-pull-answer")) {
        struct timespec ts = {2, 0};
        nanosleep(&ts, NULL);
    }

    if (next_seq > 1 && next_seq - 1 > acked) {
        err = pb_store_outbox_ack(d->o.store, req->peer, next_seq - 1);
        if (err != PB_OK) {
            store_failure(rep, err, "Pull");
            return;
        }
        pthread_mutex_lock(&d->mu);
        if (p->acked_upto < next_seq - 1) p->acked_upto = next_seq - 1;
        pthread_mutex_unlock(&d->mu);
    }
    pb_outbox_item *items = NULL;
    size_t n = 0;
    err = pb_store_outbox_read(d->o.store, req->peer, next_seq ? next_seq : 1, d->o.pull_batch,
                               d->o.pull_max_bytes, &items, &n);
    if (err != PB_OK) {
        if (claimed) {
            lease_give(d, req->peer);
            release(d, p);
        }
        store_failure(rep, err, "Pull");
        return;
    }
    uint64_t *seqs = next_seq ? pb_xcalloc(n ? n : 1, sizeof *seqs) : NULL;
    for (size_t i = 0; i < n; i++) {
        pb_wire_pull_resp_append_event(&items[i].ev, &rep->body);
        if (seqs) seqs[i] = items[i].seq;
    }
    if (seqs) pb_wire_pull_resp_append_seqs(seqs, n, &rep->body);
    if (claimed) {
        struct foreign_pull *fp = pb_xcalloc(1, sizeof *fp);
        fp->d = d;
        fp->p = p;
        snprintf(fp->peer, sizeof fp->peer, "%s", req->peer);
        fp->last_seq = n ? items[n - 1].seq : 0;
        rep->on_done = foreign_pull_done;
        rep->on_done_ctx = fp;
    }
    if (n) PB_DEBUG(req->peer, "answered a Pull with %zu events", n);
    free(seqs);
    pb_outbox_items_free(items, n);
}

static pb_err stored_key_only(void *ctx, const char *server_id, bool refresh, uint8_t key[32],
                              bool *fresh)
{
    pb_delivery *d = ctx;
    *fresh = false;
    if (refresh) return PB_ERR_BUSY;
    return pb_store_peer_key_get(d->o.store, server_id, key);
}

/* True when the Authorization header holds a token that verifies with key. */
static bool header_verifies(const char *header, const uint8_t key[32])
{
    uint8_t *tok = NULL;
    size_t len = 0;
    if (!header || pb_auth_header_decode(header, &tok, &len) != PB_OK) return false;
    bool ok = pb_auth_token_verify(tok, len, key);
    free(tok);
    return ok;
}

void pb_delivery_on_notify(void *ctx, const pb_hrpc_request *req, pb_hrpc_reply *rep)
{
    pb_delivery *d = ctx;
    char *raw = NULL, new_id[PB_SERVER_ID_MAX];
    pb_auth_result ar;
    /* The token names the old ID and must verify with the key we hold for it. */
    pb_auth_check(req->authorization, (uint64_t)time(NULL), d->o.policy, stored_key_only, d, &ar);
    if (pb_wire_notify_decode(req->body, req->body_len, &raw) != PB_OK ||
        pb_serverid_normalize(raw, new_id) != PB_OK) {
        if (ar.verdict == PB_AUTH_OK || ar.verdict == PB_AUTH_KEY_UNAVAILABLE) {
            pb_hrpc_reply_error(rep, 400, ID_BAD, "new_server_id is not a valid server ID");
            goto out;
        }
        new_id[0] = '\0';
    }
    if (ar.verdict == PB_AUTH_KEY_UNAVAILABLE) {
        /* Unknown old ID: unless this is a repeat of a rename we already made. */
        uint8_t key[32];
        if (new_id[0] && pb_store_peer_key_get(d->o.store, new_id, key) == PB_OK &&
            header_verifies(req->authorization, key)) {
            PB_INFO(ar.server_id, "repeated rename notice to %s acknowledged", new_id);
            goto out;
        }
        pb_hrpc_reply_error(rep, 403, "h.host-not-allowed", "unknown server %s", ar.server_id);
        goto out;
    }
    if (ar.verdict != PB_AUTH_OK) {
        pb_hrpc_reply_error(rep, pb_auth_verdict_status(ar.verdict),
                            pb_auth_verdict_identifier(ar.verdict), "%s",
                            pb_auth_verdict_message(ar.verdict));
        goto out;
    }
    if (strcmp(new_id, ar.server_id) == 0) {
        pb_hrpc_reply_error(rep, 400, ID_BAD, "new_server_id equals the current ID");
        goto out;
    }
    uint8_t old_key[32], new_key[32];
    pb_err err = pb_store_peer_key_get(d->o.store, ar.server_id, old_key);
    if (err != PB_OK) {
        store_failure(rep, err, "NotifyNewId");
        goto out;
    }
    err = pb_peerkeys_fetch_remote(d->o.peerkeys, new_id, new_key);
    if (err != PB_OK) {
        pb_hrpc_reply_error(rep, 503, ID_UNAVAILABLE, "cannot fetch the key served at %s: %s",
                            new_id, pb_strerror(err));
        rep->retry_after = 30;
        goto out;
    }
    if (sodium_memcmp(old_key, new_key, 32) != 0) {
        PB_WARN(ar.server_id, "rename to %s refused: the key served there differs", new_id);
        pb_hrpc_reply_error(rep, 403, "h.bad-new-id", "the key served at %s is not yours", new_id);
        goto out;
    }
    err = pb_store_peer_rename(d->o.store, ar.server_id, new_id, new_key, now_ms());
    if (err == PB_ERR_EXISTS) {
        pb_hrpc_reply_error(rep, 409, "h.new-id-in-use", "%s is already a known server", new_id);
        goto out;
    }
    if (err == PB_ERR_NOT_FOUND) {
        pb_hrpc_reply_error(rep, 403, "h.host-not-allowed", "unknown server %s", ar.server_id);
        goto out;
    }
    if (err != PB_OK) {
        store_failure(rep, err, "NotifyNewId");
        goto out;
    }
    pthread_mutex_lock(&d->mu);
    struct peer *p = peer_find(d, ar.server_id);
    if (p) snprintf(p->id, sizeof p->id, "%s", new_id);
    d->inbox_gen++;
    pthread_cond_broadcast(&d->inbox_cv);
    pthread_mutex_unlock(&d->mu);
    PB_INFO(ar.server_id, "peer renamed itself to %s: everything re-labelled", new_id);
out:
    free(raw);
}

/* ---- operations ------------------------------------------------------------------------------ */

pb_err pb_delivery_submit(pb_delivery *d, const char *to, const pb_event *evs, size_t n,
                          const char *submission_id, bool *duplicate)
{
    char self[PB_SERVER_ID_MAX];
    pb_delivery_server_id(d, self);
    if (strcmp(to, self) == 0) return PB_ERR_INVAL;
    bool dup = false;
    pb_err err =
        pb_store_outbox_submit(d->o.store, to, evs, n, now_ms(), submission_id, NULL, &dup);
    if (err != PB_OK) return err;
    if (duplicate) *duplicate = dup;
    if (dup) return PB_OK; /* queued before: the worker knows */
    pthread_mutex_lock(&d->mu);
    struct peer *p = peer_get(d, to);
    p->has_work = true;
    p->gen++;
    pthread_cond_broadcast(&d->work_cv);
    pthread_mutex_unlock(&d->mu);
    return PB_OK;
}

static pb_err parked_action(pb_delivery *d, const char *peer, bool drop)
{
    pb_peer_state st;
    pb_err err = pb_store_peer_state_get(d->o.store, peer, &st);
    if (err != PB_OK) return err;
    uint64_t seq = st.parked_seq;
    pb_peer_mode mode = st.mode;
    pb_peer_state_clear(&st);
    if (mode != PB_MODE_PARKED) return PB_ERR_INVAL;
    if (drop) {
        err = pb_store_outbox_remove(d->o.store, peer, seq);
        if (err != PB_OK && err != PB_ERR_NOT_FOUND) return err;
        PB_WARN(peer, "operator dropped parked event %llu", (unsigned long long)seq);
    } else {
        PB_INFO(peer, "operator retries parked event %llu", (unsigned long long)seq);
    }
    err = pb_store_peer_state_set(d->o.store, peer, PB_MODE_PUSH, 0, 0, NULL, 0);
    if (err != PB_OK) return err;
    pthread_mutex_lock(&d->mu);
    struct peer *p = peer_get(d, peer);
    p->mode = PB_MODE_PUSH;
    p->attempts = 0;
    p->has_work = true;
    p->gen++;
    pthread_cond_broadcast(&d->work_cv);
    pthread_mutex_unlock(&d->mu);
    return PB_OK;
}

pb_err pb_delivery_retry_parked(pb_delivery *d, const char *peer)
{
    return parked_action(d, peer, false);
}

pb_err pb_delivery_drop_parked(pb_delivery *d, const char *peer)
{
    return parked_action(d, peer, true);
}

int64_t pb_delivery_next_attempt_in_s(pb_delivery *d, const char *peer)
{
    int64_t r = -1;
    pthread_mutex_lock(&d->mu);
    struct peer *p = peer_find(d, peer);
    if (p && p->mode == PB_MODE_QUEUED) {
        int64_t ms = p->next_attempt - now_ms();
        r = ms > 0 ? (ms + 999) / 1000 : 0;
    }
    pthread_mutex_unlock(&d->mu);
    return r;
}

void pb_delivery_inbox_wait(pb_delivery *d, uint64_t after, int timeout_ms)
{
    int64_t until = now_ms() + timeout_ms;
    for (;;) {
        /* Read the generation before looking at the store: a bump after this read wakes
         * the wait below, so no arrival between the check and the wait is missed. */
        pthread_mutex_lock(&d->mu);
        uint64_t gen = d->inbox_gen;
        pthread_mutex_unlock(&d->mu);
        uint64_t last = 0;
        if (pb_store_inbox_last_seq(d->o.store, &last) != PB_OK || last > after) return;
        pthread_mutex_lock(&d->mu);
        while (d->inbox_gen == gen && !d->stopping && now_ms() < until)
            wait_until(d, &d->inbox_cv, until);
        bool done = d->stopping || now_ms() >= until;
        pthread_mutex_unlock(&d->mu);
        if (done) return;
    }
}

void pb_rename_reports_free(pb_rename_report *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(r[i].peer);
        free(r[i].error);
    }
    free(r);
}

pb_err pb_delivery_rename(pb_delivery *d, const char *new_id, int wait_ms,
                          pb_rename_report **reports, size_t *nreports)
{
    char old[PB_SERVER_ID_MAX];
    pb_delivery_server_id(d, old);
    *reports = NULL;
    *nreports = 0;
    if (strcmp(old, new_id) == 0) return PB_ERR_INVAL;
    pb_err err = pb_store_self_rename(d->o.store, old, new_id, now_ms());
    if (err != PB_OK) return err;
    pb_rename_out *rs = NULL;
    size_t n = 0;
    err = pb_store_rename_out_list(d->o.store, &rs, &n);
    if (err != PB_OK) return err;
    uint64_t *before = pb_xcalloc(n ? n : 1, sizeof *before);
    pthread_mutex_lock(&d->mu);
    snprintf(d->self, sizeof d->self, "%s", new_id);
    for (size_t i = 0; i < n; i++) {
        struct peer *p = peer_get(d, rs[i].peer);
        p->rename_pending = true;
        snprintf(p->rename_old, sizeof p->rename_old, "%s", rs[i].old_id);
        snprintf(p->rename_new, sizeof p->rename_new, "%s", rs[i].new_id);
        p->rename_attempts = 0;
        p->rename_at = now_ms();
        before[i] = p->rename_tries;
    }
    pthread_cond_broadcast(&d->work_cv);
    PB_INFO(NULL, "renamed %s -> %s; telling %zu peers", old, new_id, n);
    /* Wait for each peer's first answer (bounded). */
    int64_t until = now_ms() + wait_ms;
    for (;;) {
        bool all = true;
        for (size_t i = 0; i < n; i++) {
            struct peer *p = peer_find(d, rs[i].peer);
            if (p && p->rename_tries == before[i] && p->rename_pending) all = false;
        }
        if (all || d->stopping || now_ms() >= until) break;
        wait_until(d, &d->state_cv, until);
    }
    pb_rename_report *out = pb_xcalloc(n ? n : 1, sizeof *out);
    for (size_t i = 0; i < n; i++) {
        struct peer *p = peer_find(d, rs[i].peer);
        out[i].peer = pb_xstrdup(rs[i].peer);
        out[i].ok = p && !p->rename_pending;
        if (!out[i].ok)
            out[i].error =
                pb_xstrdup(p && p->rename_err[0] ? p->rename_err : "not answered yet; retrying");
    }
    pthread_mutex_unlock(&d->mu);
    free(before);
    pb_rename_outs_free(rs, n);
    *reports = out;
    *nreports = n;
    return PB_OK;
}

bool pb_delivery_rename_pending(pb_delivery *d, const char *peer, char *err, size_t errlen)
{
    bool pending = false;
    pthread_mutex_lock(&d->mu);
    struct peer *p = peer_find(d, peer);
    if (p && p->rename_pending) {
        pending = true;
        snprintf(err, errlen, "%s", p->rename_err);
    }
    pthread_mutex_unlock(&d->mu);
    return pending;
}
