/*
 * delivery - the delivery engine (see delivery.h for the model).
 *
 * One `struct peer` per known peer, in a hash table and an array. Its fields come in two
 * groups: the shared ones (pull gate, foreign-Pull claim, the admin API's view) under d->mu,
 * and the engine's (state machine, timers, transfers, pull and rename-notice progress)
 * touched only on the I/O loop thread. The table itself changes only on the loop thread,
 * under d->mu; other threads find a record under d->mu and keep no pointer to it past the
 * lock. A record is freed (the idle sweep, peer_idle_s) only on the loop thread, when
 * nothing refers to it: no store op (p->refs), no transfer, timer, scheduler item, waiter,
 * foreign-Pull claim or Pull answer, nothing queued and no rename notice.
 *
 * Store work runs on an executor: an `op` carries a `work` function (executor thread:
 * blocking store calls) and a `done` function (loop thread), so the loop never waits on a
 * disk. Transfers start only when the scheduler grants a slot and complete on the loop.
 *
 * Ordering argument: a peer's outbox is only ever consumed from its head, one Push (one
 * batch) in flight per peer as the state machine sees it (a window's later batches, to a
 * receiver that announced one, carry postbox_after and are applied by the receiver only
 * after the batches before them: see "The Push window" below), and an event leaves the
 * outbox only once the receiver has it.
 * Between postboxes of this project the receiver keeps, per (sender, epoch), the highest
 * sequence number applied and skips anything not above it, so a retried Push, a late
 * stale attempt, or an event that arrives both by Pull and by Push is applied exactly
 * once and never out of order; only a token bound to the receiver can carry sequence
 * numbers (PROTOCOL.md 7.1), so no third party can skip a sender's stream. Pulls are
 * pipelined (see "pulling" below): a sender's answers are applied one at a time in the
 * order asked for, and one that is not the range asked for or not applied whole drops
 * those after it, so no answer is applied past a gap.
 */
#include "delivery/delivery.h"

#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "delivery/fsm.h"
#include "delivery/sched.h"
#include "delivery/wgate.h"
#include "net/ioloop.h"
#include "util/exec.h"
#include "util/fault.h"
#include "util/hash.h"
#include "util/health.h"
#include "util/log.h"
#include "util/mem.h"
#include "util/sdnotify.h"
#include "util/serverid.h"
#include "wire/wire.h"

#define PATH_PULL "/protocol.sync.v1.PostboxService/Pull"
#define PATH_PUSH "/protocol.sync.v1.PostboxService/Push"
#define PATH_NOTIFY "/protocol.sync.v1.PostboxService/NotifyNewId"
#define NBUCKETS 16384
/* Delivered events are forgotten in batches of this many for a postbox receiver (a crash
 * replays at most this many, which the receiver recognises). */
#define LAZY_FORGET 64
/* ... or this long after the first of them was delivered, when fewer come (ms). */
#define LAZY_FORGET_MS 200
/* Peers whose delivered events one transaction forgets at most (forget_batch_start). */
#define FORGET_BATCH_MAX 1024
/* Read-ahead for a peer pushed one event at a time (a foreign peer): one store read takes
 * up to this many events of its head, and its next Pushes are served from them... */
#define READ_AHEAD 32
/* ... up to this many bytes of events per peer, and this many over every peer (past it a
 * read takes one event, as without read-ahead). */
#define READ_AHEAD_BYTES (16u << 10)
#define READ_AHEAD_TOTAL (16u << 20)
/* A submission of at most this many events, within this many bytes, hands its events to
 * the loop with its commit's news ("stage" below)... */
#define STAGE_MAX 64
#define STAGE_BYTES (64u << 10)
/* ... and the submissions one loop wake-up takes for one peer, at most this many. */
#define STAGE_MERGED_MAX 256
/* Pull answers applied at once (each may decode to tens of MB in the worst case). */
#define MAX_APPLYING 1
/* Pull answers of one peer received and waiting to be applied (pipelined rounds: the next
 * range is asked for while these wait); one more may be being applied. */
#define PULL_AHEAD 2
/* Bytes of received Pull answers waiting to be applied: past it no new Pull round starts
 * (the peer waits in apply_wait) until applying makes room. With the client's response
 * budget (answers being received) this bounds the memory that pulls take. */
#define APPLY_BYTES_MAX (32u << 20)
#define RENAME_IN_TTL_MS (24LL * 60 * 60 * 1000)
#define EXPIRE_EVERY_MS (60LL * 60 * 1000)
/* The new-peer buckets count peers only: a byte allowance never used up. */
#define NEWPEER_BYTES (1ull << 40)

enum busy { BUSY_NONE, BUSY_SEND, BUSY_FOREIGN };
enum pull_st { PULL_IDLE, PULL_WAIT, PULL_RUN };

/* A Pull answer decoded ahead of its apply (decode_work). */
struct pull_dec {
    pb_event *evs;
    uint64_t *seqs;
    size_t n;
    uint64_t epoch;
    pb_err err; /* the decode's, or PB_ERR_TOO_BIG */
    bool stale; /* a pipelined answer that is not the range asked for: dropped */
};

enum { HELD_RAW, HELD_DECODING, HELD_DECODED };

/* A Pull answer received, waiting to be applied, with what its request asked for. */
struct pull_held {
    pb_client_answer ans; /* HELD_RAW: the body; moved to the decode op */
    uint64_t from, epoch; /* postbox_from_seq (0: not pipelined) and postbox_epoch asked */
    size_t count;         /* its events (pb_wire_pull_resp_peek) */
    size_t bytes;         /* its body's length: counted in apply_bytes until applied */
    int st;               /* HELD_* */
    struct pull_dec *dec; /* HELD_DECODED */
};

struct peer {
    /* ---- shared: under d->mu ---- */
    char id[PB_SERVER_ID_MAX];
    struct peer *hnext;
    bool dead;    /* replaced by another record (a rename onto a known ID) */
    bool pulling; /* a Pull from it is due at start-up or running: its Pushes wait */
    pb_hrpc_waker **waiters;
    size_t nwaiters, capwaiters;
    bool urgent_posted;
    int busy;
    bool send_blocked;      /* the engine wanted to send while a foreign Pull held it */
    pb_peer_mode v_mode;    /* view for the admin API */
    int64_t v_next_wall_ms; /* next drain probe, wall ms; 0 none */
    bool v_notice;          /* our rename notice pending */
    char v_notice_err[256];
    char v_notice_old[PB_SERVER_ID_MAX];
    int64_t v_notice_since; /* wall ms: when we stopped being v_notice_old (its grace) */
    int64_t seen_push_ms;   /* last push_seen post (monotonic), to debounce */
    int64_t contact_ms;     /* last contact post (monotonic), to debounce */
    int64_t v_last_ok_s;    /* wall time of the last successful Push; 0 none (metrics) */
    uint64_t v_acked;       /* delivered up to here (the state machine's acked), for a drop */

    /* ---- the engine's: loop thread only ---- */
    pb_delivery *d;
    bool loaded, loading; /* the state machine holds the store's state (epoch, mode, ...) */
    pb_fsm fsm;
    pb_timer send_timer;
    pb_timer forget_timer; /* flushes lazy forgets (LAZY_FORGET_MS) */
    pb_sched_item send_item;
    pb_outbox_item *items; /* the head batch read, until its Push starts */
    size_t nitems;
    /* read-ahead (READ_AHEAD): events of the head read past the one being pushed,
     * ra[ra_off..nra); valid only while the engine holds the peer (BUSY_SEND) and nothing
     * but its own Pushes changed its queue (ra_drop) */
    pb_outbox_item *ra;
    size_t nra, ra_off, ra_bytes;
    bool ra_posted;            /* a read served from ra is on its way to read_done_ra */
    uint32_t read_gen, ra_gen; /* reads asked for; the one ra_posted serves */
    size_t ra_limit;           /* the events the read ra_posted serves may take */
    /* events a submission just committed, offered for the read its news starts (stage);
     * set only while pending_work_on_loop feeds that news */
    pb_outbox_item *stg;
    size_t nstg;
    uint64_t stg_gen; /* pb_store_outbox_quiet's count before the submission */
    /* the Push window (PROTOCOL.md 5): the head batch's transfer (the state machine's),
     * the window batches after it (in order, contiguous), and the window's state */
    struct flight *head_fl;
    struct flight **win;
    size_t nwin, capwin;
    unsigned cwnd;               /* batches in flight allowed now, the head's included (>= 1) */
    int64_t rtt_min, rtt_min_at; /* the quickest delivered answer lately (ms), and when */
    uint32_t rwin;               /* the window the receiver announced (0: none) */
    unsigned orphans;            /* window transfers still in flight after a reset */
    bool win_reading;            /* a window batch is being read */
    bool win_dry;     /* the last window read found nothing new: none until the next input */
    uint64_t inputs;  /* state machine inputs fed (a window read that found nothing saw none) */
    bool win_stop;    /* a window batch failed: none is added until the window restarts */
    bool adopted;     /* the state machine's batch is a window batch already sent */
    uint64_t win_gen; /* bumped by a reset: a read completing after it is dropped */
    pb_sched_item win_item;
    bool has_pend; /* an input for the state machine, fed after the current one's actions */
    pb_fsm_input pend;
    bool failing; /* Pushes fail since the last success: further failures log at debug */
    char last_error[256];
    uint64_t forget_sent, forget_want;
    bool forget_busy;                 /* in the forget batch being committed */
    bool forget_queued;               /* in d->forget_q, waiting for the next batch */
    bool persist_busy, persist_again; /* one state write at a time: the last state wins */
    int64_t forget_hold; /* after a store failure, forgets wait until then (monotonic ms) */
    int64_t last_contact_s;
    unsigned refs;     /* store ops and Push transfers in flight that point to it */
    int64_t active_ms; /* last engine activity for it (monotonic): the idle sweep's clock */
    /* pulling from it */
    enum pull_st pull_st;
    bool pull_urgent, pull_startup;
    pb_sched_class pull_cls;
    pb_sched_item pull_item;
    pb_timer pull_timer;
    unsigned pull_round; /* requests made in this contact */
    size_t pull_total;
    bool pull_busy;                      /* a request being made or in flight (one at a time) */
    bool pull_applying;                  /* one of its answers is being applied */
    struct pull_held pull_q[PULL_AHEAD]; /* received, to be applied in this order */
    size_t pull_nq;
    size_t pull_held_events;                /* of the answers in pull_q and being applied */
    unsigned pull_gen, pull_req_gen;        /* the chain; the one the request in flight is of */
    bool pull_pipe;                         /* the next request asks from pull_from (pipelined) */
    uint64_t pull_from, pull_epoch;         /* after the last answer received, in its epoch */
    uint64_t pull_req_from, pull_req_epoch; /* what the request in flight asked for */
    uint64_t pull_req_ack, pull_req_ack_epoch; /* and acknowledged (postbox_next_seq) */
    uint64_t held_epoch, held_seq;             /* what we hold from it (store, or last apply) */
    bool pull_nopipe; /* it answered a pipelined Pull from postbox_next_seq: an older postbox */
    bool pull_ended;  /* the contact ends once nothing of it is in flight or waiting */
    char pull_why[256];
    int64_t pull_again_ms;
    /* our rename notice */
    bool notice;
    char notice_old[PB_SERVER_ID_MAX], notice_new[PB_SERVER_ID_MAX];
    uint32_t notice_attempts;
    bool notice_running;
    uint64_t notice_tries;
    pb_sched_item notice_item;
    pb_timer notice_timer;
    /* queue control: re-reading the state an operator changed (reload_want) */
    bool reload_busy, reload_again;
    /* the lease (several nodes) */
    bool lease_held, lease_busy;
    int64_t lease_renew_at;
    int64_t lease_hold; /* after a store failure, lease calls wait until then */
    pb_timer lease_timer;
};

struct pb_delivery {
    pb_delivery_opts o;
    pb_fsm_cfg fcfg;
    pb_ioloop *loop;
    pb_exec *exec;
    pb_auth_signer *signer;
    pb_budget *budget;
    pb_sched sched;
    pb_wgate *wgate; /* receiving windowed Pushes: batches held ahead of a gap */

    pthread_mutex_t mu;
    pthread_cond_t notice_cv; /* rename reports */
    /* asynchronous submissions waiting for their commit (submit_mu, never held with mu:
     * their completions run on a store thread, which must not wait for mu) */
    pthread_mutex_t submit_mu;
    pthread_cond_t submit_cv; /* the last one completed */
    /* something was appended to the inbox (submit_mu: a received Push's commit calls it
     * on the store thread) */
    void (*inbox_hook)(void *ctx);
    void *inbox_hook_ctx;
    size_t submits;
    /* committed submissions' work for the loop, one entry per peer (the highest sequence
     * number), taken by the one message posted for them all (work_posted; submit_mu) */
    struct pending_work *work;
    size_t nwork, capwork;
    bool work_posted;
    char self[PB_SERVER_ID_MAX];
    struct peer *buckets[NBUCKETS];
    struct peer **all;
    size_t npeers, cap;
    bool stopping, started;

    /* loop thread only */
    struct peer **apply_q; /* peers with a Pull answer waiting to be applied */
    size_t napply_q, capapply_q;
    size_t apply_bytes;         /* of the answers in apply_q and being applied */
    unsigned decoding, decoded; /* answers being decoded ahead; decoded, not yet applied */
    struct peer **apply_wait;   /* peers whose next Pull round waits for apply room */
    size_t napply_wait, capapply_wait;
    unsigned applying;
    struct peer **forget_q; /* peers waiting for the next forget batch (each a ref) */
    size_t nforget_q, capforget_q;
    bool forget_running;   /* a forget batch's transaction is running */
    size_t ra_bytes;       /* bytes of events held in every peer's read-ahead */
    uint64_t jitter_state; /* jitter_random */
    pb_timer scan_timer, expire_timer, beat_timer, age_timer;
    uint64_t ops_done, beat_ops; /* store work completed; at the last heartbeat */
    uint64_t scanned_inbox;
    bool scan_busy;
    /* the store's health (util/health.h): failures are reported there, and while it is
     * down a probe (a ping: a real write) runs with backoff until one succeeds */
    pb_health *health;
    pb_timer probe_timer;
    bool probe_busy;
    _Atomic unsigned max_queue_age_s;   /* live (pb_delivery_set_max_queue_age); 0: off */
    _Atomic unsigned former_id_grace_s; /* live (pb_delivery_set_former_id_grace) */
    /* identities (pb_delivery_set_ident_limits): new peers per hour, per key and per
     * address (token buckets of one event each, refilled over an hour), and the idle
     * sweep that forgets peer records */
    pb_budget *newkeys, *newaddrs;
    _Atomic unsigned new_per_key, new_per_addr, peer_idle_s;
    pb_timer idle_timer;
};

/* ---- small helpers ---------------------------------------------------------------------- */

/* Random bits for the state machine's jitter (loop thread): splitmix64 seeded from
 * libsodium at start, so that each input does not cost a getrandom system call. Jitter
 * needs no secrecy, only spread between peers and between servers. */
static uint32_t jitter_random(pb_delivery *d)
{
    uint64_t z = (d->jitter_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}

static int64_t mono_ms(void)
{
    return pb_ioloop_now_ms();
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Converts between the store's wall-clock times and the loop's monotonic ones. */
static int64_t wall_to_mono(int64_t wall)
{
    return wall ? mono_ms() + (wall - wall_ms()) : 0;
}

static int64_t mono_to_wall(int64_t mono)
{
    return mono ? wall_ms() + (mono - mono_ms()) : 0;
}

static size_t bucket_of(const char *id)
{
    return (size_t)(pb_hash_str(id) % NBUCKETS);
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

static void probe_want(pb_delivery *d);

/* Store work of an engine path failed with err: an unavailable store is reported to the
 * health tracker (which logs it calmly) and the path retries after the tracker's backoff
 * (returned); anything else is logged here and retried after a second. */
static int64_t store_failed(pb_delivery *d, pb_err err, const char *peer, const char *what)
{
    if (pb_health_unavailable(err)) {
        pb_health_fail(d->health, err, peer, "%s: %s", what, pb_strerror(err));
        probe_want(d);
        return pb_health_backoff_ms(d->health);
    }
    PB_ERROR(peer, "%s: %s", what, pb_strerror(err));
    return 1000;
}

/* ---- the peer table ------------------------------------------------------------------------ */

/* With d->mu held (or on the loop thread, which alone changes the table). */
static struct peer *peer_find(pb_delivery *d, const char *id)
{
    for (struct peer *p = d->buckets[bucket_of(id)]; p; p = p->hnext)
        if (strcmp(p->id, id) == 0) return p;
    return NULL;
}

static void send_timer_fired(void *arg);
static void forget_timer_fired(void *arg);
static void pull_timer_fired(void *arg);
static void notice_timer_fired(void *arg);
static void lease_timer_fired(void *arg);

/* Creates the record; with d->mu held. */
static struct peer *peer_new_locked(pb_delivery *d, const char *id)
{
    struct peer *p = pb_xcalloc(1, sizeof *p);
    snprintf(p->id, sizeof p->id, "%s", id);
    p->d = d;
    p->active_ms = pb_ioloop_now_ms();
    pb_fsm_init(&p->fsm, PB_MODE_PUSH, 0, 0, 0, 0, false);
    pb_timer_init(&p->send_timer, send_timer_fired, p);
    pb_timer_init(&p->forget_timer, forget_timer_fired, p);
    pb_timer_init(&p->pull_timer, pull_timer_fired, p);
    pb_timer_init(&p->notice_timer, notice_timer_fired, p);
    pb_timer_init(&p->lease_timer, lease_timer_fired, p);
    size_t b = bucket_of(id);
    p->hnext = d->buckets[b];
    d->buckets[b] = p;
    if (d->npeers == d->cap) {
        d->cap = d->cap ? 2 * d->cap : 64;
        d->all = pb_xrealloc(d->all, d->cap * sizeof *d->all);
    }
    d->all[d->npeers++] = p;
    return p;
}

/* Loop thread: the record for id, created when missing. */
static struct peer *peer_get(pb_delivery *d, const char *id)
{
    struct peer *p = peer_find(d, id);
    if (p) return p;
    pthread_mutex_lock(&d->mu);
    p = peer_new_locked(d, id);
    pthread_mutex_unlock(&d->mu);
    return p;
}

static void unhash_locked(pb_delivery *d, struct peer *p)
{
    struct peer **pp = &d->buckets[bucket_of(p->id)];
    while (*pp && *pp != p)
        pp = &(*pp)->hnext;
    if (*pp) *pp = p->hnext;
    p->hnext = NULL;
}

/* The ID this peer knows us by: the old one while it has not confirmed our rename. */
static void as_id_for(pb_delivery *d, const struct peer *p, char out[PB_SERVER_ID_MAX])
{
    pthread_mutex_lock(&d->mu);
    snprintf(out, PB_SERVER_ID_MAX, "%s", p->notice ? p->notice_old : d->self);
    pthread_mutex_unlock(&d->mu);
}

/* A former ID is good only from the peer that still knows us by it (its rename notice is
 * pending: it has not confirmed), and only for the grace after the rename: a token bound
 * to it from anyone else (a peer that confirmed, or one that never knew that ID) may have
 * been meant for whoever holds that ID now. */
bool pb_delivery_is_self(void *ctx, const char *peer, const char *id)
{
    pb_delivery *d = ctx;
    int64_t grace_ms = (int64_t)atomic_load(&d->former_id_grace_s) * 1000;
    int64_t now = wall_ms();
    pthread_mutex_lock(&d->mu);
    bool self = strcmp(id, d->self) == 0;
    if (!self && peer) {
        const struct peer *p = peer_find(d, peer);
        self = p && !p->dead && p->v_notice && strcmp(p->v_notice_old, id) == 0 &&
               now - p->v_notice_since < grace_ms;
    }
    pthread_mutex_unlock(&d->mu);
    return self;
}

void pb_delivery_set_former_id_grace(pb_delivery *d, unsigned seconds)
{
    atomic_store(&d->former_id_grace_s, seconds ? seconds : PB_DELIVERY_FORMER_ID_GRACE_S);
}

void pb_delivery_server_id(pb_delivery *d, char out[PB_SERVER_ID_MAX])
{
    pthread_mutex_lock(&d->mu);
    snprintf(out, PB_SERVER_ID_MAX, "%s", d->self);
    pthread_mutex_unlock(&d->mu);
}

/* ---- store work on the executor ---------------------------------------------------------------
 */

struct op;
typedef void (*op_fn)(struct op *o);

struct op {
    pb_delivery *d;
    struct peer *p;
    op_fn work; /* executor thread */
    op_fn done; /* loop thread */
    pb_err err;
    /* arguments and results, by use */
    uint64_t u1, u2, u3, u4, u5;
    void *ptr;
    int64_t i1;
    bool b1;
    char *s1;
    char id[PB_SERVER_ID_MAX];
    pb_outbox_item *items;
    size_t n;
    pb_peer_state st;
    pb_client_answer ans;
    pb_recv_result rr;
    char **strs;
    size_t nstrs;
    pb_flush_req *fl; /* the scan: flushes recorded by operators */
    size_t nfl;
    uint64_t *u64s;   /* a forget batch: upto per peer (strs: their IDs) */
    struct peer **ps; /* ... the peers (each holds a reference: refs) */
};

static void op_done_on_loop(void *arg)
{
    struct op *o = arg;
    o->d->ops_done++;
    o->done(o);
    if (o->p) o->p->refs--;
    pb_outbox_items_free(o->items, o->n);
    pb_peer_state_clear(&o->st);
    pb_client_answer_clear(&o->ans);
    pb_store_strings_free(o->strs, o->nstrs);
    pb_flush_reqs_free(o->fl, o->nfl);
    free(o->u64s);
    free(o->ps);
    free(o->s1);
    free(o);
}

static void op_work(void *arg)
{
    struct op *o = arg;
    o->work(o);
    pb_ioloop_post(o->d->loop, op_done_on_loop, o);
}

static struct op *op_new(pb_delivery *d, struct peer *p, op_fn work, op_fn done)
{
    struct op *o = pb_xcalloc(1, sizeof *o);
    o->d = d;
    o->p = p;
    o->work = work;
    o->done = done;
    if (p) {
        snprintf(o->id, sizeof o->id, "%s", p->id);
        p->refs++;
        p->active_ms = mono_ms();
    }
    return o;
}

static void op_run(struct op *o)
{
    pb_exec_run(o->d->exec, op_work, o);
}

/* Background store work (a start-up or periodic Pull's): behind every other op, so that
 * thousands of peers being pulled do not delay a Push's commit or a Pull a Push waits for. */
static void op_run_low(struct op *o)
{
    pb_exec_run_low(o->d->exec, op_work, o);
}

/* ---- the scheduler ------------------------------------------------------------------------- */

enum { TAG_SEND = 1, TAG_PULL, TAG_NOTICE, TAG_WIN };

static void send_start_push(struct peer *p);
static void win_send(struct peer *p);
static void pull_start(struct peer *p);
static void notice_start(struct peer *p);

/* Starts every transfer that has a slot now (loop thread). */
static void dispatch(pb_delivery *d)
{
    pb_sched_item *it;
    pb_sched_class cls;
    while (!d->stopping && (it = pb_sched_next(&d->sched, &cls))) {
        switch (it->tag) {
        case TAG_SEND:
            send_start_push((struct peer *)((char *)it - offsetof(struct peer, send_item)));
            break;
        case TAG_PULL: {
            struct peer *p = (struct peer *)((char *)it - offsetof(struct peer, pull_item));
            p->pull_cls = cls;
            pull_start(p);
            break;
        }
        case TAG_NOTICE:
            notice_start((struct peer *)((char *)it - offsetof(struct peer, notice_item)));
            break;
        case TAG_WIN:
            win_send((struct peer *)((char *)it - offsetof(struct peer, win_item)));
            break;
        default:
            pb_sched_done(&d->sched, cls);
            break;
        }
    }
}

/* ---- sending ----------------------------------------------------------------------------------
 */

static void fsm_feed(struct peer *p, pb_fsm_input *in);
static void lease_want(struct peer *p);
static void reload_want(struct peer *p, int64_t requested_at);

/* The admin API's view of the peer (under d->mu). */
static void update_view(struct peer *p)
{
    pb_delivery *d = p->d;
    pthread_mutex_lock(&d->mu);
    p->v_mode = p->fsm.mode;
    p->v_acked = p->fsm.acked;
    p->v_next_wall_ms =
        p->fsm.mode == PB_MODE_QUEUED && p->fsm.next_at ? mono_to_wall(p->fsm.next_at) : 0;
    pthread_mutex_unlock(&d->mu);
}

static void send_work(struct peer *p, uint64_t assigned);

static void load_work(struct op *o)
{
    o->err = pb_store_peer_state_get(o->d->o.store, o->id, &o->st);
}

/* A record made at run time (a submission, a scan) learns the store's state first. */
static void load_done(struct op *o)
{
    struct peer *p = o->p;
    p->loading = false;
    if (o->d->stopping) return;
    if (o->err != PB_OK && o->err != PB_ERR_NOT_FOUND) {
        int64_t delay = store_failed(o->d, o->err, p->id, "cannot read the delivery state");
        /* an unavailable store: tried again then (send_timer_fired); in any case by the
         * next submission or scan */
        if (pb_health_unavailable(o->err))
            pb_ioloop_timer_arm(o->d->loop, &p->send_timer, mono_ms() + delay);
        return;
    }
    if (o->err == PB_OK && p->fsm.st == PB_FSM_IDLE) {
        bool work = p->fsm.has_work || o->st.queued > 0;
        pb_fsm_init(&p->fsm, o->st.mode, o->st.attempts, wall_to_mono(o->st.next_attempt_at),
                    o->st.send_epoch, o->st.next_seq ? o->st.next_seq - 1 : 0, work);
        p->fsm.parked_seq = o->st.parked_seq;
        if (o->st.last_error) snprintf(p->last_error, sizeof p->last_error, "%s", o->st.last_error);
    }
    p->loaded = true;
    send_work(p, o->u1);
}

/* There is (or may be) work for p: feed it to the state machine, once it holds the store's
 * state and, when several nodes share the store, the lease is ours. */
static void send_work(struct peer *p, uint64_t assigned)
{
    pb_delivery *d = p->d;
    if (d->stopping || p->dead) return;
    if (!p->loaded) {
        if (assigned > p->fsm.max_assigned) p->fsm.max_assigned = assigned;
        p->fsm.has_work = true;
        if (!p->loading) {
            p->loading = true;
            struct op *o = op_new(d, p, load_work, load_done);
            o->u1 = assigned;
            op_run(o);
        }
        return;
    }
    if (d->o.node_id && !p->lease_held) {
        p->fsm.has_work = true;
        if (assigned > p->fsm.max_assigned) p->fsm.max_assigned = assigned;
        lease_want(p);
        return;
    }
    pb_fsm_input in = {.kind = PB_FSM_IN_WORK, .assigned = assigned};
    fsm_feed(p, &in);
}

/* Forgets p's read-ahead (anything but its own Pushes may have changed its queue). */
static void ra_drop(struct peer *p)
{
    if (!p->ra) return;
    p->d->ra_bytes -= p->ra_bytes;
    pb_outbox_items_free(p->ra, p->nra);
    p->ra = NULL;
    p->nra = p->ra_off = p->ra_bytes = 0;
}

static void read_work(struct op *o)
{
    /* b1: read ahead (one event wanted, READ_AHEAD taken, within READ_AHEAD_BYTES) */
    o->err =
        pb_store_outbox_read(o->d->o.store, o->id, o->u1, o->b1 ? READ_AHEAD : (size_t)o->u2,
                             o->b1 ? READ_AHEAD_BYTES : o->d->o.push_max_bytes, &o->items, &o->n);
    if (pb_fault("delivery.slow-read")) /* submit_test: a commit lands while a read is late */
        nanosleep(&(struct timespec){0, 300 * 1000000L}, NULL);
}

/* Moves the first events of a read-ahead into p->items: up to limit of them, more than one
 * only within push_max_bytes (as the store's read), keeping the rest in p->ra. */
static void ra_take(struct peer *p, size_t limit)
{
    size_t k = 0, bytes = 0, max = p->d->o.push_max_bytes;
    while (p->ra_off + k < p->nra && k < limit) {
        size_t sz = p->ra[p->ra_off + k].size;
        if (k > 0 && (bytes > max || sz > max - bytes)) break;
        bytes += sz;
        k++;
    }
    pb_outbox_items_free(p->items, p->nitems);
    p->items = pb_xcalloc(k, sizeof *p->items);
    memcpy(p->items, &p->ra[p->ra_off], k * sizeof *p->items);
    memset(&p->ra[p->ra_off], 0, k * sizeof *p->items);
    p->nitems = k;
    p->d->ra_bytes -= bytes;
    p->ra_bytes -= bytes;
    p->ra_off += k;
    if (p->ra_off == p->nra) ra_drop(p);
}

static void read_fed(struct peer *p)
{
    pb_fsm_input in = {.kind = PB_FSM_IN_READ, .n = p->nitems};
    if (p->nitems) {
        in.first = p->items[0].seq;
        in.last = p->items[p->nitems - 1].seq;
    }
    fsm_feed(p, &in);
}

static void read_done(struct op *o)
{
    struct peer *p = o->p;
    if (o->d->stopping) return;
    if (o->err != PB_OK) {
        pb_fsm_input in = {.kind = PB_FSM_IN_READ_FAILED};
        in.retry_ms = store_failed(o->d, o->err, p->id, "cannot read the outbox");
        fsm_feed(p, &in);
        return;
    }
    ra_drop(p);
    pb_outbox_items_free(p->items, p->nitems);
    p->items = NULL;
    p->nitems = 0;
    if (o->b1 && o->n > 1 && p->fsm.st == PB_FSM_READING) { /* keep the rest for later */
        p->ra = o->items;
        p->nra = o->n;
        p->ra_off = 0;
        for (size_t i = 0; i < o->n; i++)
            p->ra_bytes += o->items[i].size;
        o->d->ra_bytes += p->ra_bytes;
        o->items = NULL;
        o->n = 0;
        ra_take(p, 1);
    } else if (o->b1 && o->n > 1) { /* the state machine moved on: as a read of one */
        p->items = pb_xcalloc(1, sizeof *p->items);
        p->items[0] = o->items[0];
        memset(&o->items[0], 0, sizeof o->items[0]);
        p->nitems = 1;
    } else {
        p->items = o->items;
        p->nitems = o->n;
        o->items = NULL;
        o->n = 0;
    }
    read_fed(p);
}

/* A read served from the read-ahead completes here (posted: never inside the state
 * machine's step that asked for it). A later read (read_gen) supersedes it. */
static void read_done_ra(void *arg)
{
    struct peer *p = arg;
    p->ra_posted = false;
    p->refs--;
    if (p->d->stopping || p->ra_gen != p->read_gen || p->fsm.st != PB_FSM_READING) return;
    if (!p->ra || p->ra[p->ra_off].seq != p->fsm.acked + 1) { /* dropped meanwhile */
        ra_drop(p);
        struct op *o = op_new(p->d, p, read_work, read_done);
        o->u1 = p->fsm.acked + 1;
        o->u2 = p->ra_limit;
        op_run(o);
        return;
    }
    ra_take(p, p->ra_limit);
    read_fed(p);
}

static void stage_drop(struct peer *p)
{
    pb_outbox_items_free(p->stg, p->nstg);
    p->stg = NULL;
    p->nstg = 0;
}

/*
 * The read a submission's news starts, served from the events it committed. A submission
 * copies its events (at most STAGE_MAX, STAGE_BYTES) and pb_store_outbox_quiet's count
 * before its append; its commit's callback hands them to the loop with the news
 * (pending_work_add), and the read that news starts takes them instead of asking the
 * store (one executor round trip and a read fewer for an idle peer: two thread hand-offs
 * of a single event's latency) when they are exactly the head asked for: they start at
 * `from`, and no call that deletes or re-labels queued events (a foreign Pull's or a
 * postbox's acknowledgement, a drop or expiry, a rename, a new epoch) was under way or
 * started since before the append. Then they are what the store's read would return
 * first, and from here on they are a read-ahead like any other (valid while the engine
 * holds the peer; counted in READ_AHEAD_TOTAL). Only with one node: another node's
 * changes are not seen.
 */
static bool stage_take(struct peer *p, uint64_t from)
{
    uint64_t gen = 0;
    size_t bytes = 0;
    for (size_t i = 0; i < p->nstg; i++)
        bytes += p->stg[i].size;
    if (!p->ra && p->stg[0].seq == from && p->d->ra_bytes + bytes <= READ_AHEAD_TOTAL &&
        pb_store_outbox_quiet(p->d->o.store, &gen) && gen == p->stg_gen) {
        p->ra = p->stg;
        p->nra = p->nstg;
        p->ra_off = 0;
        p->ra_bytes = bytes;
        p->d->ra_bytes += bytes;
        p->stg = NULL;
        p->nstg = 0;
        return true;
    }
    stage_drop(p);
    return false;
}

/* ACT_READ: claim the peer against foreign Pulls (and hold the lease), then read: from
 * the read-ahead when it holds the event wanted, else from the store. */
static void do_read(struct peer *p, uint64_t from, size_t limit)
{
    pb_delivery *d = p->d;
    bool ok = true;
    pthread_mutex_lock(&d->mu);
    if (p->busy == BUSY_FOREIGN) {
        p->send_blocked = true;
        ok = false;
    } else {
        p->busy = BUSY_SEND;
    }
    pthread_mutex_unlock(&d->mu);
    if (ok && d->o.node_id && !p->lease_held) {
        ok = false;
        lease_want(p);
    }
    if (!ok) { /* the state machine retries the read shortly */
        ra_drop(p);
        pb_fsm_input in = {.kind = PB_FSM_IN_READ_FAILED};
        fsm_feed(p, &in);
        return;
    }
    p->read_gen++;
    bool staged = p->stg && !p->ra_posted && stage_take(p, from);
    if (p->ra && p->ra[p->ra_off].seq == from && !p->ra_posted) {
        if (d->o.metrics)
            pb_counter_inc(
                pb_metric_get(d->o.metrics->outbox_reads, staged ? "submission" : "read_ahead"));
        p->ra_posted = true;
        p->ra_gen = p->read_gen;
        p->ra_limit = limit;
        p->refs++;
        pb_ioloop_post(d->loop, read_done_ra, p);
        return;
    }
    ra_drop(p);
    if (d->o.metrics) pb_counter_inc(pb_metric_get(d->o.metrics->outbox_reads, "store"));
    struct op *o = op_new(d, p, read_work, read_done);
    o->u1 = from;
    o->u2 = limit;
    o->b1 = limit == 1 && d->ra_bytes < READ_AHEAD_TOTAL;
    op_run(o);
}

/*
 * Forgetting delivered events: one commit for many peers. A peer with something to forget
 * (forget_want above forget_sent) joins d->forget_q; while one batch's transaction runs,
 * the next batch gathers every peer acknowledged meanwhile, so under load each commit
 * forgets what hundreds of peers acknowledged (a group commit; with one peer it is one
 * forget per commit, as before, and nothing waits for a timer). A forget still follows
 * its 200 (or acknowledgement), and a peer's next Push never waits for it. A crash before
 * a batch commits sends its events again: a postbox recognises them by sequence number;
 * a foreign peer receives them twice, at most what its peer was acknowledged during one
 * commit (as with a forget per peer), and applying an event twice has the effect of
 * applying it once (PROTOCOL.md 5).
 */
static void forget_batch_done(struct op *o);

static void forget_batch_work(struct op *o)
{
    if (o->nstrs > 1) pb_fault_crash("delivery.crash-in-forget-batch"); /* forgetbatch_test */
    o->err =
        pb_store_outbox_ack_many(o->d->o.store, (const char *const *)o->strs, o->u64s, o->nstrs);
}

static int by_peer_id(const void *a, const void *b)
{
    const struct peer *x = *(struct peer *const *)a, *y = *(struct peer *const *)b;
    return strcmp(x->id, y->id);
}

/* Starts the next batch when none runs: up to FORGET_BATCH_MAX peers of the queue, in ID
 * order (the rows are locked in one order whoever commits). */
static void forget_batch_start(pb_delivery *d)
{
    if (d->forget_running || !d->nforget_q || d->stopping) return;
    size_t n = d->nforget_q < FORGET_BATCH_MAX ? d->nforget_q : FORGET_BATCH_MAX;
    struct op *o = op_new(d, NULL, forget_batch_work, forget_batch_done);
    o->ps = pb_xcalloc(n, sizeof *o->ps);
    memcpy(o->ps, d->forget_q, n * sizeof *o->ps);
    memmove(d->forget_q, d->forget_q + n, (d->nforget_q - n) * sizeof *d->forget_q);
    d->nforget_q -= n;
    qsort(o->ps, n, sizeof *o->ps, by_peer_id);
    o->strs = pb_xcalloc(n, sizeof *o->strs);
    o->u64s = pb_xcalloc(n, sizeof *o->u64s);
    o->nstrs = n;
    for (size_t i = 0; i < n; i++) {
        struct peer *p = o->ps[i];
        p->forget_queued = false;
        p->forget_busy = true; /* the queue's reference on p is now the batch's */
        o->strs[i] = pb_xstrdup(p->id);
        o->u64s[i] = p->forget_want;
    }
    d->forget_running = true;
    op_run(o);
}

/* Forgets delivered events up to p->forget_want: p joins the next batch. */
static void forget_kick(struct peer *p)
{
    pb_delivery *d = p->d;
    if (p->forget_busy || p->forget_queued || p->forget_want <= p->forget_sent || d->stopping)
        return;
    if (mono_ms() < p->forget_hold) { /* backing off after a store failure */
        if (!pb_timer_armed(&p->forget_timer))
            pb_ioloop_timer_arm(d->loop, &p->forget_timer, p->forget_hold);
        return;
    }
    if (d->nforget_q == d->capforget_q) {
        d->capforget_q = d->capforget_q ? 2 * d->capforget_q : 64;
        d->forget_q = pb_xrealloc(d->forget_q, d->capforget_q * sizeof *d->forget_q);
    }
    d->forget_q[d->nforget_q++] = p;
    p->forget_queued = true;
    p->refs++;
    forget_batch_start(d);
}

static void forget_timer_fired(void *arg)
{
    forget_kick(arg);
}

static void forget_batch_done(struct op *o)
{
    pb_delivery *d = o->d;
    d->forget_running = false;
    int64_t hold = 0;
    if (o->err != PB_OK)
        hold = mono_ms() + store_failed(d, o->err, o->nstrs == 1 ? o->strs[0] : NULL,
                                        "cannot forget delivered events");
    else
        pb_health_ok(d->health); /* a write went through */
    for (size_t i = 0; i < o->nstrs; i++) {
        struct peer *p = o->ps[i];
        p->forget_busy = false;
        p->refs--;
        if (o->err != PB_OK)
            p->forget_hold = hold;
        else if (o->u64s[i] > p->forget_sent)
            p->forget_sent = o->u64s[i];
        forget_kick(p);
    }
    forget_batch_start(d);
}

static void persist_work(struct op *o)
{
    if (o->u1 == PB_MODE_PUSH && pb_fault("delivery.slow-persist-push")) {
        struct timespec ts = {1, 0}; /* tests: a write that loses a race with a later one */
        PB_INFO(o->id, "fault point delivery.slow-persist-push: writing push mode 1 s late");
        nanosleep(&ts, NULL);
    }
    o->err = pb_store_peer_state_set(o->d->o.store, o->id, (pb_peer_mode)o->u1, (uint32_t)o->u2,
                                     o->i1, o->s1, o->u3);
}

static void do_persist(struct peer *p);

static void persist_done(struct op *o)
{
    struct peer *p = o->p;
    p->persist_busy = false;
    if (o->err != PB_OK) store_failed(o->d, o->err, o->id, "cannot record the delivery state");
    if (p->persist_again && !o->d->stopping) do_persist(p);
}

/* Writes the state machine's mode, attempts, next attempt and parked event. One write per
 * peer is in flight at a time (the executor's workers could otherwise apply two out of
 * order, leaving the store with the older state: a parked peer recorded as pushing); a
 * change meanwhile is written once that one is done, with the state as it is then. */
static void do_persist(struct peer *p)
{
    if (p->persist_busy) {
        p->persist_again = true;
        return;
    }
    p->persist_busy = true;
    p->persist_again = false;
    struct op *o = op_new(p->d, p, persist_work, persist_done);
    o->u1 = p->fsm.mode;
    o->u2 = p->fsm.attempts;
    o->i1 = p->fsm.mode == PB_MODE_QUEUED ? mono_to_wall(p->fsm.next_at) : 0;
    o->u3 = p->fsm.mode == PB_MODE_PARKED ? p->fsm.parked_seq : 0;
    o->s1 = p->fsm.mode == PB_MODE_PUSH || !p->last_error[0] ? NULL : pb_xstrdup(p->last_error);
    op_run(o);
}

static void epoch_work(struct op *o)
{
    /* Is the acknowledgement above anything we assigned? Then our store went back (a
     * restored backup): a new epoch for this peer, and push the head again in it. */
    pb_peer_state st;
    o->err = pb_store_peer_state_get(o->d->o.store, o->id, &st);
    if (o->err != PB_OK) return;
    o->u2 = st.next_seq ? st.next_seq - 1 : 0;
    o->u3 = st.send_epoch;
    pb_peer_state_clear(&st);
    if (o->u1 > o->u2) o->err = pb_store_peer_new_epoch(o->d->o.store, o->id, &o->u3);
}

static void epoch_done(struct op *o)
{
    struct peer *p = o->p;
    if (o->d->stopping) return;
    if (o->err != PB_OK) {
        store_failed(o->d, o->err, p->id, "cannot renew the sequence epoch");
        p->fsm.st = PB_FSM_IDLE; /* try again with the next work */
        return;
    }
    if (o->u1 > o->u2)
        PB_WARN(p->id,
                "the peer acknowledges sequence number %llu but this store assigned only up to "
                "%llu (restored from a backup?): new epoch %016llx, pushing again",
                (unsigned long long)o->u1, (unsigned long long)o->u2, (unsigned long long)o->u3);
    pb_fsm_input in = {.kind = PB_FSM_IN_EPOCH, .epoch = o->u3, .assigned = o->u2};
    fsm_feed(p, &in);
}

static const char *note_text(pb_fsm_note n)
{
    switch (n) {
    case PB_NOTE_QUEUED:
        return "push failed every retry: queueing for the peer's Pull, probing with backoff";
    case PB_NOTE_PROBE_FAILED:
        return "drain probe failed";
    case PB_NOTE_ANSWERS:
        return "peer answers again: draining the queue";
    case PB_NOTE_DRAINED:
        return "queue drained: back to push mode";
    case PB_NOTE_PARKED:
        return "event refused: delivery parked until an operator acts";
    case PB_NOTE_RETRY:
        return "push failed: retrying soon";
    case PB_NOTE_ISOLATE:
        return "a batch was refused: pushing one event at a time to find the refused one";
    case PB_NOTE_SHRINK:
        return "batch over the peer's body limit: smaller batches";
    case PB_NOTE_ROLLBACK:
        return "acknowledgement above the sequence numbers assigned: checking the epoch";
    default:
        return "";
    }
}

static void do_note(struct peer *p, pb_fsm_note n)
{
    int64_t in_s = p->fsm.next_at ? (p->fsm.next_at - mono_ms() + 999) / 1000 : 0;
    /* the error text may quote the peer: a field (quoted in text logs), not the message */
    switch (n) {
    case PB_NOTE_QUEUED:
        PB_WARN_KV(p->id, PB_KVS(PB_KV_NUM("next_in_s", in_s), PB_KV_STR("error", p->last_error)),
                   "%s (next in %lld s)", note_text(n), (long long)in_s);
        break;
    case PB_NOTE_PROBE_FAILED:
        PB_INFO_KV(p->id, PB_KVS(PB_KV_NUM("next_in_s", in_s), PB_KV_STR("error", p->last_error)),
                   "%s, next in %lld s", note_text(n), (long long)in_s);
        break;
    case PB_NOTE_PARKED:
        PB_ERROR_KV(p->id,
                    PB_KVS(PB_KV_NUM("seq", p->fsm.parked_seq), PB_KV_STR("error", p->last_error)),
                    "%s: event %llu", note_text(n), (unsigned long long)p->fsm.parked_seq);
        break;
    case PB_NOTE_RETRY:
        PB_DEBUG_KV(p->id, PB_KVS(PB_KV_STR("error", p->last_error)), "%s", note_text(n));
        break;
    default:
        PB_INFO(p->id, "%s", note_text(n));
        break;
    }
}

/*
 * The Push window (PROTOCOL.md 5). A Push is a `flight`: the head batch's (the state
 * machine's: send_start_push) or a window batch's (win_send). Window batches are read
 * from the outbox after the last batch in flight, while the head is in flight, the peer
 * is in push mode, acknowledges in our epoch (a postbox of this project) and announced a
 * window; each carries postbox_after = its first number - 1, so that the receiver applies
 * it only after the batches before it. Their answers are kept until the state machine
 * reads the outbox from their first number: then the batch is adopted (the state machine
 * takes it as its head batch, already sent) instead of read, and its answer fed to the
 * state machine as the head's; so the state machine still sees one batch at a time, in
 * order, and its retry, backoff, queue and park rules apply to every batch. A read from
 * any other number (the head failed, a partial acknowledgement, a smaller batch) resets
 * the window: batches still in flight become orphans whose answers are only counted (the
 * events are sent again from the state machine's acknowledgement; the receiver's sequence
 * check makes a copy it already holds a duplicate). The window (cwnd) starts at the
 * window the receiver announced (room it holds for this sender: wgate.h shares it among the
 * senders of one address; one batch before any announcement), grows by one batch
 * per answer that delivered in time (at most 4 x the quickest answer of the last 10 s
 * + 100 ms: a later one waited long behind the batches before it, the receiver's commits
 * being the bound), up to push_window and the receiver's announced window, and halves on a
 * failure (a timeout: back to 1); a failed window batch stops new ones until
 * the window restarts. Orphans count in the window until they end.
 */
struct flight {
    struct peer *p;
    pb_outbox_item *items;
    size_t n;
    uint64_t first, last;
    int64_t started;
    bool sent, done, orphan;
    pb_fsm_input res; /* once done: the state machine's IN_PUSHED */
    char err[256];    /* a failure's description */
};

static void flight_free(struct flight *fl)
{
    if (!fl) return;
    if (fl->items) pb_outbox_items_free(fl->items, fl->n);
    free(fl);
}

static void win_kick(struct peer *p);

/* Forgets the window: unsent and answered batches are freed, those in flight orphaned. */
static void win_reset(struct peer *p)
{
    for (size_t i = 0; i < p->nwin; i++) {
        struct flight *fl = p->win[i];
        if (fl->sent && !fl->done) {
            fl->orphan = true;
            p->orphans++;
        } else {
            flight_free(fl);
        }
    }
    p->nwin = 0;
    p->win_gen++;
    p->win_stop = false;
    p->win_dry = false;
    if (pb_sched_waiting(&p->win_item)) pb_sched_cancel(&p->d->sched, &p->win_item);
}

/* ACT_READ from `from`: the window batch starting there, already sent, becomes the state
 * machine's batch (its IN_READ is fed once the current actions are done). */
static bool win_adopt(struct peer *p, uint64_t from)
{
    if (!p->nwin || p->win[0]->first != from || !p->win[0]->sent) return false;
    struct flight *fl = p->win[0];
    memmove(p->win, p->win + 1, (p->nwin - 1) * sizeof *p->win);
    p->nwin--;
    p->head_fl = fl;
    p->adopted = true;
    p->has_pend = true;
    p->pend =
        (pb_fsm_input){.kind = PB_FSM_IN_READ, .n = fl->n, .first = fl->first, .last = fl->last};
    return true;
}

/* ACT_PUSH of an adopted batch: nothing to send; its answer, if in, is fed now. */
static void win_adopted_push(struct peer *p)
{
    p->adopted = false;
    struct flight *fl = p->head_fl;
    if (!fl || !fl->done) return; /* push_done feeds it */
    p->head_fl = NULL;
    if (fl->res.result != PB_PUSH_OK) snprintf(p->last_error, sizeof p->last_error, "%s", fl->err);
    p->has_pend = true;
    p->pend = fl->res;
    flight_free(fl);
}

static unsigned win_limit(const struct peer *p)
{
    unsigned w = p->cwnd ? p->cwnd : 1;
    if (w > p->d->o.push_window) w = p->d->o.push_window;
    if (w > p->rwin) w = p->rwin;
    return w ? w : 1;
}

/* May a window batch be added now? */
static bool win_allowed(const struct peer *p)
{
    const pb_fsm *f = &p->fsm;
    return !p->d->stopping && !p->dead && !p->win_stop && p->d->o.push_window > 1 && p->rwin > 1 &&
           p->head_fl && !p->head_fl->done && f->st == PB_FSM_PUSHING && f->mode == PB_MODE_PUSH &&
           f->postbox && f->acked >= f->single_until && f->batch != 1 &&
           (!p->d->o.node_id || p->lease_held);
}

static void win_read_done(struct op *o)
{
    struct peer *p = o->p;
    p->win_reading = false;
    if (o->d->stopping) return;
    if (o->err != PB_OK || o->u3 != p->win_gen || o->n == 0 || o->items[0].seq != o->u1 ||
        !win_allowed(p)) {
        if (o->err != PB_OK) p->win_stop = true; /* the head's own read reports it */
        /* Nothing new queued: the next read waits for an input (a submission, an answer),
         * else the loop would read the outbox again and again while the head is in
         * flight. An input fed during the read may have brought events: read again. */
        if (o->err == PB_OK && o->u3 == p->win_gen && o->u4 == p->inputs) p->win_dry = true;
        win_kick(p);
        return;
    }
    struct flight *fl = pb_xcalloc(1, sizeof *fl);
    fl->p = p;
    fl->items = o->items;
    fl->n = o->n;
    o->items = NULL;
    o->n = 0;
    fl->first = fl->items[0].seq;
    fl->last = fl->items[fl->n - 1].seq;
    if (fl->last > p->fsm.max_assigned) p->fsm.max_assigned = fl->last;
    if (p->nwin == p->capwin) {
        p->capwin = p->capwin ? p->capwin * 2 : 8;
        p->win = pb_xrealloc(p->win, p->capwin * sizeof *p->win);
    }
    p->win[p->nwin++] = fl;
    p->win_item.tag = TAG_WIN;
    pb_sched_want(&p->d->sched, &p->win_item, PB_SCHED_HIGH);
    dispatch(p->d);
}

/* Reads the next window batch when the window has room (one read, one unsent at a time). */
static void win_kick(struct peer *p)
{
    if (p->win_reading || p->win_dry || pb_sched_waiting(&p->win_item) || !win_allowed(p)) return;
    if (p->nwin && !p->win[p->nwin - 1]->sent) return;
    if (1 + p->nwin + p->orphans >= win_limit(p)) return;
    struct op *o = op_new(p->d, p, read_work, win_read_done);
    o->u1 = (p->nwin ? p->win[p->nwin - 1]->last : p->head_fl->last) + 1;
    o->u2 = p->fsm.batch ? p->fsm.batch : p->d->fcfg.batch_max;
    o->u3 = p->win_gen;
    o->u4 = p->inputs;
    p->win_reading = true;
    op_run(o);
}

static void push_done(void *ctx, pb_err err, pb_client_answer *ans);

/* Starts fl's Push (after: postbox_after, 0 for the head). false: not encodable. */
static bool flight_start(struct flight *fl, uint64_t after)
{
    struct peer *p = fl->p;
    pb_delivery *d = p->d;
    pb_buf body = PB_BUF_INIT;
    pb_event *evs = pb_xcalloc(fl->n ? fl->n : 1, sizeof *evs);
    uint64_t *seqs = pb_xcalloc(fl->n ? fl->n : 1, sizeof *seqs);
    for (size_t i = 0; i < fl->n; i++) {
        evs[i] = fl->items[i].ev; /* borrowed */
        seqs[i] = fl->items[i].seq;
    }
    pb_err err = fl->n ? pb_wire_push_encode_after(evs, seqs, fl->n, p->fsm.epoch, after, &body)
                       : PB_ERR_INVAL;
    free(evs);
    free(seqs);
    fl->started = mono_ms();
    if (err != PB_OK) {
        pb_buf_free(&body);
        return false;
    }
    char as[PB_SERVER_ID_MAX];
    as_id_for(d, p, as);
    char *authz = pb_auth_header_cached(d->signer, as, p->id, (uint64_t)time(NULL));
    pb_client_req req = {.server_id = p->id,
                         .path = PATH_PUSH,
                         .authorization = authz,
                         .body = body.data,
                         .body_len = body.len,
                         .max_response = 64 * 1024};
    fl->sent = true;
    p->refs++; /* the transfer points to the peer */
    pb_client_start(d->o.client, &req, push_done, fl);
    free(authz);
    pb_buf_free(&body);
    return true;
}

/* A slot for the window batch read last. */
static void win_send(struct peer *p)
{
    pb_delivery *d = p->d;
    struct flight *fl = p->nwin ? p->win[p->nwin - 1] : NULL;
    if (!fl || fl->sent || !win_allowed(p)) {
        pb_sched_done(&d->sched, PB_SCHED_HIGH);
        if (fl && !fl->sent) { /* not sent after all: dropped (the head path reads it again) */
            p->nwin--;
            flight_free(fl);
        }
        win_kick(p);
        return;
    }
    if (!flight_start(fl, fl->first - 1)) { /* an event we cannot encode: the head finds it */
        pb_sched_done(&d->sched, PB_SCHED_HIGH);
        p->nwin--;
        flight_free(fl);
        p->win_stop = true;
        return;
    }
    if (d->o.metrics) pb_counter_inc(pb_metric_series(d->o.metrics->push_window_batches, NULL));
    win_kick(p);
}

static void do_actions(struct peer *p, const pb_fsm_action *a, size_t n)
{
    pb_delivery *d = p->d;
    for (size_t i = 0; i < n; i++) {
        switch (a[i].kind) {
        case PB_FSM_ACT_READ:
            if (win_adopt(p, a[i].from)) break;
            win_reset(p);
            do_read(p, a[i].from, a[i].limit);
            break;
        case PB_FSM_ACT_PUSH:
            if (p->adopted) {
                win_adopted_push(p);
                break;
            }
            p->send_item.tag = TAG_SEND;
            pb_sched_want(&d->sched, &p->send_item, PB_SCHED_HIGH);
            dispatch(d);
            break;
        case PB_FSM_ACT_FORGET:
            if (a[i].upto > p->forget_want) p->forget_want = a[i].upto;
            if (!a[i].lazy || p->forget_want >= p->forget_sent + LAZY_FORGET) {
                pb_ioloop_timer_cancel(d->loop, &p->forget_timer);
                forget_kick(p);
            } else if (!pb_timer_armed(&p->forget_timer)) {
                pb_ioloop_timer_arm(d->loop, &p->forget_timer, mono_ms() + LAZY_FORGET_MS);
            }
            break;
        case PB_FSM_ACT_PERSIST:
            do_persist(p);
            break;
        case PB_FSM_ACT_TIMER:
            if (a[i].at)
                pb_ioloop_timer_arm(d->loop, &p->send_timer, a[i].at);
            else
                pb_ioloop_timer_cancel(d->loop, &p->send_timer);
            break;
        case PB_FSM_ACT_EPOCH: {
            struct op *o = op_new(d, p, epoch_work, epoch_done);
            o->u1 = a[i].upto;
            op_run(o);
            break;
        }
        case PB_FSM_ACT_NOTE:
            do_note(p, a[i].note);
            break;
        }
    }
}

static void fsm_feed(struct peer *p, pb_fsm_input *in)
{
    pb_delivery *d = p->d;
    if (d->stopping) return;
    pb_fsm_input cur = *in;
    p->inputs++;
    p->win_dry = false; /* the input may have brought events: the window may read again */
    for (;;) {
        cur.now = mono_ms();
        p->active_ms = cur.now;
        cur.rnd = jitter_random(d);
        /* the read-ahead holds the queue's head as our own Pushes leave it: anything else
         * (a failure, an operator, a Pull's acknowledgement, a reload) reads the store again */
        if (!(cur.kind == PB_FSM_IN_READ || cur.kind == PB_FSM_IN_WORK ||
              cur.kind == PB_FSM_IN_CONTACT ||
              (cur.kind == PB_FSM_IN_PUSHED && cur.result == PB_PUSH_OK)))
            ra_drop(p);
        pb_fsm_action acts[PB_FSM_MAX_ACTIONS];
        size_t n = pb_fsm_step(&p->fsm, &d->fcfg, &cur, acts);
        do_actions(p, acts, n);
        /* an adopted window batch: its read, then its answer, one input at a time */
        if (!p->has_pend || d->stopping) break;
        p->has_pend = false;
        cur = p->pend;
    }
    p->has_pend = false;
    if (p->fsm.st != PB_FSM_PUSHING && p->fsm.st != PB_FSM_READING) {
        win_reset(p); /* waiting (retry, probe, operator, epoch): the window restarts */
        if (p->head_fl && !p->head_fl->sent) {
            flight_free(p->head_fl);
            p->head_fl = NULL;
        }
    }
    if (p->fsm.st == PB_FSM_IDLE) {
        ra_drop(p); /* not ours any more: a foreign Pull may take the head */
        pthread_mutex_lock(&d->mu);
        if (p->busy == BUSY_SEND) p->busy = BUSY_NONE;
        pthread_mutex_unlock(&d->mu);
        /* with nothing more to do, another node may have this peer */
        if (d->o.node_id && p->lease_held && !p->fsm.has_work) lease_want(p);
    }
    update_view(p);
    win_kick(p);
}

static void send_timer_fired(void *arg)
{
    struct peer *p = arg;
    if (!p->loaded) { /* loading the state failed: again, if there is work */
        if (p->fsm.has_work) send_work(p, 0);
        return;
    }
    pb_fsm_input in = {.kind = PB_FSM_IN_TIMER};
    fsm_feed(p, &in);
}

/*
 * The one line of a Push's outcome, like Postfix's status=sent/deferred/bounced: a Push
 * that delivered logs at the delivery level (log_deliveries, info by default) with the
 * sequence range, count and duration. Failures log when the peer starts failing (the
 * first failed Push after a success, at info); the retries and probes after it log at
 * debug here, the state machine's notes saying when the peer is queued and each probe
 * with its backoff (do_note). A refused event logs as the parked note (error). A window
 * batch logs when its answer comes (an orphan's failure at debug).
 */
static void log_push(struct peer *p, const struct flight *fl, const pb_client_answer *ans,
                     int64_t ms, bool bad_time)
{
    pb_fsm_result r = fl->res.result;
    bool ok = r == PB_PUSH_OK;
    const char *status = ok ? "sent" : r == PB_PUSH_REFUSED && fl->n == 1 ? "bounced" : "deferred";
    pb_log_level lv = ok                                    ? pb_log_delivery_level()
                      : !p->failing && r != PB_PUSH_REFUSED ? PB_LOG_INFO
                                                            : PB_LOG_DEBUG;
    if (!ok && fl->orphan) lv = PB_LOG_DEBUG;
    if (bad_time && !p->failing)
        PB_WARN(p->id, "the peer refuses our token's time (h.bad-time): check this server's "
                       "clock (NTP)");
    if (!fl->orphan || ok) p->failing = !ok;
    if (ok) {
        pb_log_kv_write(lv, p->id,
                        PB_KVS(PB_KV_STR("kind", "push"), PB_KV_NUM("first_seq", fl->first),
                               PB_KV_NUM("last_seq", fl->last), PB_KV_NUM("events", fl->n),
                               PB_KV_NUM("duration_ms", ms), PB_KV_NUM("http", ans->status),
                               PB_KV_STR("status", status)),
                        "push sent");
    } else {
        pb_log_kv_write(lv, p->id,
                        PB_KVS(PB_KV_STR("kind", "push"), PB_KV_NUM("first_seq", fl->first),
                               PB_KV_NUM("last_seq", fl->last), PB_KV_NUM("events", fl->n),
                               PB_KV_NUM("duration_ms", ms), PB_KV_NUM("http", ans->status),
                               PB_KV_STR("status", status), PB_KV_STR("error", fl->err)),
                        "push %s%s", status, lv == PB_LOG_INFO ? " (the peer starts failing)" : "");
    }
}

static void push_done(void *ctx, pb_err err, pb_client_answer *ans)
{
    struct flight *fl = ctx;
    struct peer *p = fl->p;
    pb_delivery *d = p->d;
    p->refs--;
    pb_sched_done(&d->sched, PB_SCHED_HIGH);
    int64_t ms = mono_ms() - fl->started;
    pb_fsm_input in = {.kind = PB_FSM_IN_PUSHED};
    uint32_t rwin = 0;
    in.result = pb_fsm_classify(err, ans->status, ans->identifier);
    if (in.result == PB_PUSH_OK) {
        pb_fault_crash("delivery.crash-before-forget");
        if (pb_wire_push_resp_decode_win(ans->body, ans->body_len, &in.ack, &in.ack_epoch, &rwin) !=
            PB_OK)
            in.ack = in.ack_epoch = 0; /* a 200 is a 200; only the extension is not believed */
    } else if (ans->has_retry_after) {
        in.retry_after_s = ans->retry_after;
    }
    if (in.result != PB_PUSH_OK && in.result != PB_PUSH_STOPPED)
        describe(err, ans, fl->err, sizeof fl->err);
    fl->res = in;
    fl->done = true;
    bool is_head = fl == p->head_fl;
    /* the window: grows with each answer that delivered, halves on a failure (a timeout:
     * back to one), learns the receiver's window from an acknowledgement in our epoch */
    if (in.result == PB_PUSH_OK) {
        if (in.ack && in.ack_epoch == p->fsm.epoch) {
            p->rwin = rwin;
            /* the first window of this peer is what the receiver announced room for (every
             * growth step opens connections, a TLS handshake round trip each: starting at
             * 4 cost 0.3 s per burst at 100 ms); after a timeout it restarts at one */
            if (p->cwnd < 1) p->cwnd = rwin > 1 ? rwin : 1;
            /* in time: at most 4 x the quickest answer of the last 10 s + 100 ms; a later
             * one waited long behind the batches before it at the receiver (its commits are
             * the bound, not the round trip): more batches in flight would only wait there
             * (2 x + 10 ms was measured to stop the window too early at 200 ms RTT) */
            int64_t now = mono_ms();
            if (!p->rtt_min || ms < p->rtt_min || now - p->rtt_min_at > 10000) {
                p->rtt_min = ms > 0 ? ms : 1;
                p->rtt_min_at = now;
            }
            if (ms <= 4 * p->rtt_min + 100 && p->cwnd < d->o.push_window) p->cwnd++;
        }
    } else if (in.result != PB_PUSH_STOPPED) {
        p->cwnd = err == PB_ERR_TIMEOUT ? 1 : (p->cwnd > 1 ? p->cwnd / 2 : 1);
        if (!is_head && !fl->orphan) p->win_stop = true;
    }
    bool bad_time = in.result == PB_PUSH_TRANSIENT && ans->status == 401 && ans->identifier &&
                    strcmp(ans->identifier, "h.bad-time") == 0;
    const pb_metrics_std *m = d->o.metrics;
    if (m) {
        pb_histogram_observe(pb_metric_get(m->client_duration, "Push"), (double)ms / 1000.0);
        const char *r = in.result == PB_PUSH_OK                      ? "ok"
                        : !is_head                                   ? "retried"
                        : in.result == PB_PUSH_REFUSED && fl->n == 1 ? "parked"
                        : p->fsm.mode == PB_MODE_PUSH && p->fsm.tries < d->fcfg.push_retries
                            ? "retried"
                            : "queued";
        if (in.result != PB_PUSH_STOPPED) pb_counter_add(pb_metric_get(m->events_pushed, r), fl->n);
    }
    if (in.result == PB_PUSH_OK) {
        int64_t now = wall_ms();
        pb_series *lat = m ? pb_metric_series(m->delivery_latency, NULL) : NULL;
        for (size_t i = 0; lat && i < fl->n; i++)
            pb_histogram_observe(lat, now > fl->items[i].created_at
                                          ? (double)(now - fl->items[i].created_at) / 1000.0
                                          : 0);
        pthread_mutex_lock(&d->mu);
        p->v_last_ok_s = now / 1000;
        pthread_mutex_unlock(&d->mu);
    }
    if (in.result != PB_PUSH_STOPPED) log_push(p, fl, ans, ms, bad_time);
    pb_client_answer_clear(ans);
    pb_outbox_items_free(fl->items, fl->n);
    fl->items = NULL; /* fl->n stays: the state machine reads it when it adopts fl */
    if (fl->orphan) { /* a window reset left it: only counted */
        p->orphans--;
        flight_free(fl);
        if (!d->stopping) {
            win_kick(p);
            dispatch(d);
        }
        return;
    }
    if (!is_head) { /* a window batch: its answer waits for the state machine */
        if (!d->stopping) {
            win_kick(p);
            dispatch(d);
        }
        return;
    }
    p->head_fl = NULL;
    if (in.result != PB_PUSH_OK && in.result != PB_PUSH_STOPPED)
        snprintf(p->last_error, sizeof p->last_error, "%s", fl->err);
    flight_free(fl);
    if (in.result == PB_PUSH_STOPPED || d->stopping) {
        p->fsm.st = PB_FSM_IDLE;
        return;
    }
    fsm_feed(p, &in);
    dispatch(d);
}

/* A slot was granted: push the head batch read. */
static void send_start_push(struct peer *p)
{
    pb_delivery *d = p->d;
    struct flight *fl = pb_xcalloc(1, sizeof *fl);
    fl->p = p;
    fl->items = p->items;
    fl->n = p->nitems;
    p->items = NULL;
    p->nitems = 0;
    fl->first = fl->n ? fl->items[0].seq : 0;
    fl->last = fl->n ? fl->items[fl->n - 1].seq : 0;
    flight_free(p->head_fl); /* none: one head at a time */
    p->head_fl = fl;
    if (!flight_start(fl, 0)) { /* a stored event we cannot encode: refuse it for good */
        pb_sched_done(&d->sched, PB_SCHED_HIGH);
        snprintf(p->last_error, sizeof p->last_error, "event %llu cannot be encoded",
                 (unsigned long long)fl->first);
        p->head_fl = NULL;
        flight_free(fl);
        pb_fsm_input in = {.kind = PB_FSM_IN_PUSHED, .result = PB_PUSH_REFUSED};
        fsm_feed(p, &in);
        return;
    }
}

/* ---- pulling (this server as R) ----------------------------------------------------------------
 * A contact is a chain of rounds: the first asks from what we hold (the store's receive
 * state: latest_work); once an answer of a postbox of this project is received, the next
 * range is asked for at once (postbox_from_seq, PROTOCOL.md 5 "Pull answers"), before that
 * answer is applied: one request in flight per peer, at most PULL_AHEAD answers held
 * waiting, applied strictly in the order they were asked for (one apply at a time; the
 * next answer in apply_q is decoded on the executor while one is applied). Each
 * request acknowledges only what was applied (held_seq). An answer that is not the range
 * asked for (an older sender answering from postbox_next_seq, a new epoch at the sender),
 * one applied only in part (the receive budget) or not at all breaks the chain: the
 * answers after it are dropped unapplied (the sender still has them: nothing past
 * held_seq was acknowledged) and the contact goes on with a round from the store's state.
 * The empty answer that ends a pipelined chain was asked for before the answers ahead of
 * it were applied: one more round from the store's state, after the applies, acknowledges
 * them, and only its answer (empty) ends the contact.
 */

static void pull_dec_free(struct pull_dec *dc)
{
    if (!dc) return;
    for (size_t i = 0; i < dc->n; i++)
        pb_event_clear(&dc->evs[i]);
    free(dc->evs);
    free(dc->seqs);
    free(dc);
}

/* Drops a held answer (a decode in progress finds it gone: decode_done). */
static void pull_held_free(pb_delivery *d, struct peer *p, struct pull_held *h)
{
    d->apply_bytes -= h->bytes;
    p->pull_held_events -= h->count;
    if (h->st == HELD_DECODED) d->decoded--;
    pb_client_answer_clear(&h->ans);
    pull_dec_free(h->dec);
    h->dec = NULL;
}

static void apply_room(pb_delivery *d);

/* The chain breaks: answers held and the one in flight are dropped unapplied; the next
 * round asks from the store's state. */
static void pull_chain_break(struct peer *p)
{
    pb_delivery *d = p->d;
    p->pull_gen++;
    p->pull_pipe = false;
    if (!p->pull_nq) return;
    for (size_t i = 0; i < p->pull_nq; i++)
        pull_held_free(d, p, &p->pull_q[i]);
    p->pull_nq = 0;
    size_t k = 0;
    for (size_t i = 0; i < d->napply_q; i++)
        if (d->apply_q[i] != p) d->apply_q[k++] = d->apply_q[i];
    d->napply_q = k;
    apply_room(d);
}

/* The held answer the i-th entry of apply_q stands for: a peer's entries in apply_q are its
 * answers in pull_q, in order. */
static struct pull_held *apply_q_entry(pb_delivery *d, size_t i)
{
    struct peer *p = d->apply_q[i];
    size_t k = 0;
    for (size_t j = 0; j < i; j++)
        k += d->apply_q[j] == p;
    return &p->pull_q[k];
}

static void pull_due(struct peer *p, bool urgent)
{
    pb_delivery *d = p->d;
    if (d->stopping || p->dead) return;
    if (urgent) p->pull_urgent = true;
    if (p->pull_st == PULL_IDLE) {
        p->pull_st = PULL_WAIT;
        p->pull_item.tag = TAG_PULL;
        pb_sched_want(&d->sched, &p->pull_item, urgent ? PB_SCHED_HIGH : PB_SCHED_LOW);
    } else if (p->pull_st == PULL_WAIT && urgent) {
        pb_sched_promote(&d->sched, &p->pull_item);
    }
    dispatch(d);
}

/* The Pull from p ended (or cannot start): its waiting Pushes go on. */
static void pull_finish(struct peer *p, const char *why)
{
    pb_delivery *d = p->d;
    /* a Pull that brought nothing is routine (every pull_interval): debug */
    pb_log_level lv = p->pull_total ? PB_LOG_INFO : PB_LOG_DEBUG;
    if (why)
        pb_log(lv, p->id, "pull finished: %zu new events (%s)", p->pull_total, why);
    else
        pb_log(lv, p->id, "pull finished: %zu new events", p->pull_total);
    p->pull_st = PULL_IDLE;
    p->active_ms = mono_ms();
    p->pull_urgent = p->pull_startup = false;
    p->pull_round = 0;
    p->pull_total = 0;
    p->pull_ended = false;
    p->pull_pipe = false;
    p->pull_gen++;
    pthread_mutex_lock(&d->mu);
    p->pulling = false;
    p->urgent_posted = false;
    pb_hrpc_waker **ws = p->waiters;
    size_t nw = p->nwaiters;
    p->waiters = NULL;
    p->nwaiters = p->capwaiters = 0;
    pthread_mutex_unlock(&d->mu);
    for (size_t i = 0; i < nw; i++)
        pb_hrpc_wake(ws[i]);
    free(ws);
}

static void pull_apply_next(pb_delivery *d);

/* A contact ended with events left at the sender (rounds or budget used): the next Pull is
 * in delay_ms (the budget's refill), or, for 0, as soon as the transfer slots allow (queued
 * behind every other peer's work, so a long backlog is drained without starving anyone). */
static void pull_again_in(struct peer *p, int64_t delay_ms)
{
    pb_delivery *d = p->d;
    int64_t at = mono_ms() + delay_ms;
    if (pb_timer_armed(&p->pull_timer) && p->pull_timer.at <= at) return;
    pb_ioloop_timer_arm(d->loop, &p->pull_timer, at);
}

/* The contact ends once nothing of it is in flight or waiting: then pull_finish (with the
 * reason of the first end), and the next contact in again_ms (< 0: none planned). */
static void pull_settle(struct peer *p)
{
    if (!p->pull_ended || p->pull_busy || p->pull_applying || p->pull_nq) return;
    int64_t again = p->pull_again_ms;
    char why[sizeof p->pull_why];
    memcpy(why, p->pull_why, sizeof why);
    pull_finish(p, why[0] ? why : NULL);
    if (again >= 0) pull_again_in(p, again);
}

static void pull_end(struct peer *p, const char *why, int64_t again_ms)
{
    if (!p->pull_ended) {
        p->pull_ended = true;
        size_t l = why ? strlen(why) : 0; /* truncated to fit */
        if (l >= sizeof p->pull_why) l = sizeof p->pull_why - 1;
        if (l) memcpy(p->pull_why, why, l);
        p->pull_why[l] = '\0';
        p->pull_again_ms = again_ms;
    } else if (again_ms >= 0 && (p->pull_again_ms < 0 || again_ms > p->pull_again_ms)) {
        p->pull_again_ms = again_ms;
    }
    pull_settle(p);
}

/* What comes next in p's contact, once no request is in flight: the next range at once
 * (pipelined), or a round from the store's state once every answer is applied, or the
 * end (rounds or receive budget used). Loop thread; the caller dispatches. */
static void pull_next(struct peer *p)
{
    pb_delivery *d = p->d;
    if (p->pull_st != PULL_RUN || p->pull_busy || d->stopping) return;
    if (p->pull_ended) {
        pull_settle(p);
        return;
    }
    if (!p->pull_pipe && (p->pull_applying || p->pull_nq)) return; /* after the applies */
    if (p->pull_pipe && p->pull_nq >= PULL_AHEAD) return;          /* apply_done calls again */
    if (p->pull_round >= d->o.pull_rounds) {
        pull_end(p, "rounds per contact used: the rest comes with the next pull", 0);
        return;
    }
    uint32_t ra = 0;
    if (!pb_budget_available(d->budget, p->id, mono_ms(), &ra)) {
        char why[128];
        snprintf(why, sizeof why, "receive budget used: next pull in %u s", ra);
        pull_end(p, why, (int64_t)ra * 1000);
        return;
    }
    /* a range asked for now is applied only after those held: the budget must cover them
     * too, or it would be dropped; else it waits for the applies (and is then decided on
     * the budget left) */
    if (p->pull_pipe &&
        pb_budget_events_left(d->budget, p->id, mono_ms()) <= (uint64_t)p->pull_held_events)
        return;
    p->pull_busy = true;
    p->pull_round++;
    pb_sched_want(&d->sched, &p->pull_item, p->pull_urgent ? PB_SCHED_HIGH : p->pull_cls);
}

static void pull_answered(void *ctx, pb_err err, pb_client_answer *ans)
{
    struct peer *p = ctx;
    pb_delivery *d = p->d;
    pb_sched_done(&d->sched, p->pull_cls);
    p->pull_busy = false;
    if (d->o.metrics)
        pb_histogram_observe(pb_metric_get(d->o.metrics->client_duration, "Pull"),
                             (double)ans->elapsed_ms / 1000.0);
    if (d->stopping) {
        pb_client_answer_clear(ans);
        return;
    }
    if (err != PB_OK) {
        char why[512];
        describe(err, ans, why, sizeof why);
        pb_client_answer_clear(ans);
        pull_end(p, why, -1);
        dispatch(d);
        return;
    }
    if (p->pull_req_gen != p->pull_gen) { /* asked for by a chain that broke meanwhile */
        pb_client_answer_clear(ans);
        pull_next(p);
        dispatch(d);
        return;
    }
    size_t cnt = 0;
    uint64_t first = 0, last = 0, ep = 0;
    bool peeked =
        pb_wire_pull_resp_peek(ans->body, ans->body_len, &cnt, &first, &last, &ep) == PB_OK;
    if (peeked && cnt == 0) { /* nothing more queued for us: the contact ends */
        pb_client_answer_clear(ans);
        /* ... once the sender knows what we hold: a pipelined request left before the
         * answers ahead of it were applied, so it acknowledged less than we hold (or will,
         * once those held are applied). One more round, after the applies, from the
         * store's state acknowledges it all; else the sender would keep (and count as
         * queued, dropped or expired) what we have until our next contact. */
        if (p->pull_req_from &&
            (p->pull_nq || p->pull_applying || p->held_epoch != p->pull_req_ack_epoch ||
             p->held_seq + 1 != p->pull_req_ack)) {
            p->pull_pipe = false;
            pull_next(p);
            dispatch(d);
            return;
        }
        pull_end(p, NULL, -1);
        dispatch(d);
        return;
    }
    if (peeked && p->pull_req_from && ep == p->pull_req_epoch && first < p->pull_req_from) {
        /* answered from postbox_next_seq: a sender that does not know postbox_from_seq.
         * Its answer repeats what we hold in memory: dropped; one round at a time from
         * now on (for as long as its record lives). */
        PB_INFO(p->id, "pull: the sender answers from the acknowledged number, not the one "
                       "asked for (an older postbox): one round at a time");
        p->pull_nopipe = true;
        p->pull_pipe = false;
        pb_client_answer_clear(ans);
        pull_next(p);
        dispatch(d);
        return;
    }
    /* the next range is asked for now unless the answer is not the range asked for (a new
     * epoch: dropped by apply_work) or not one a postbox of this project gives */
    bool pipe = peeked && last && ep && !p->pull_nopipe &&
                (!p->pull_req_from || (ep == p->pull_req_epoch && first >= p->pull_req_from));
    struct pull_held *h = &p->pull_q[p->pull_nq++];
    *h = (struct pull_held){.ans = *ans,
                            .from = p->pull_req_from,
                            .epoch = p->pull_req_epoch,
                            .count = cnt,
                            .bytes = ans->body_len,
                            .st = HELD_RAW};
    memset(ans, 0, sizeof *ans);
    p->pull_held_events += cnt;
    d->apply_bytes += h->bytes;
    p->pull_pipe = pipe;
    if (pipe) {
        p->pull_from = last + 1;
        p->pull_epoch = ep;
    }
    if (d->napply_q == d->capapply_q) {
        d->capapply_q = d->capapply_q ? 2 * d->capapply_q : 16;
        d->apply_q = pb_xrealloc(d->apply_q, d->capapply_q * sizeof *d->apply_q);
    }
    if (p->pull_urgent) {
        /* a Push waits for this Pull: its answer is applied first, after the ones decoded
         * or being decoded already (they lead the queue: decode_next takes the first raw
         * one, and a raw one ahead of a decoded one would wait for it forever) */
        size_t at = 0;
        while (at < d->napply_q && apply_q_entry(d, at)->st != HELD_RAW)
            at++;
        memmove(d->apply_q + at + 1, d->apply_q + at, (d->napply_q - at) * sizeof *d->apply_q);
        d->apply_q[at] = p;
        d->napply_q++;
    } else {
        d->apply_q[d->napply_q++] = p;
    }
    pull_apply_next(d);
    pull_next(p);
    dispatch(d);
}

/* Decodes an answer ahead of its apply (executor): while the answer before it is applied. */
static void decode_work(struct op *o)
{
    pb_delivery *d = o->d;
    struct pull_dec *dc = pb_xcalloc(1, sizeof *dc);
    dc->err = pb_wire_pull_resp_decode(o->ans.body, o->ans.body_len, &dc->evs, &dc->seqs, &dc->n,
                                       &dc->epoch);
    pb_client_answer_clear(&o->ans);
    if (dc->err == PB_OK) {
        if (o->u4 && (!dc->seqs || dc->epoch != o->u5 || (dc->n && dc->seqs[0] < o->u4)))
            dc->stale = true; /* a pipelined answer that is not the range asked for */
        else if (dc->n > d->o.pull_read_max_events)
            dc->err = PB_ERR_TOO_BIG;
    }
    o->ptr = dc;
}

static void decode_done(struct op *o)
{
    pb_delivery *d = o->d;
    struct peer *p = o->p;
    struct pull_dec *dc = o->ptr;
    struct pull_held *h = NULL;
    d->decoding--;
    /* its answer is still held unless the chain broke meanwhile (one decode at a time:
     * the peer's only answer being decoded) */
    for (size_t i = 0; !d->stopping && p->pull_gen == o->u1 && i < p->pull_nq; i++)
        if (p->pull_q[i].st == HELD_DECODING) h = &p->pull_q[i];
    if (!h) {
        pull_dec_free(dc);
    } else {
        h->dec = dc;
        h->st = HELD_DECODED;
        d->decoded++;
    }
    o->ptr = NULL;
    pull_apply_next(d);
}

/* Applies a decoded answer (executor), within the sender's budget. */
static void apply_work(struct op *o)
{
    pb_delivery *d = o->d;
    struct pull_dec *dc = o->ptr;
    pb_event *evs = dc->evs;
    uint64_t *seqs = dc->seqs, epoch = dc->epoch;
    size_t n = dc->n;
    o->err = dc->err;
    o->n = 0;
    o->u1 = n;
    o->u2 = n;
    if (o->err != PB_OK) {
        o->u2 = 0;
    } else if (dc->stale) {
        o->b1 = true; /* dropped */
        o->u2 = 0;
    } else if (n > 0) {
        /* Within the sender's budget: a postbox of this project (sequence numbers) keeps
         * what we do not take and sends it again; a foreign sender forgot what it answered,
         * so its answer is stored whole (and charged: the debt holds back its next ones). */
        size_t take = n;
        /* the budget of the key that signs for this sender too (many IDs, one key) */
        uint8_t key[32];
        pb_budget_who who = {.sender = o->id};
        if (pb_store_peer_key_get(d->o.store, o->id, key) == PB_OK) who.key = key;
        if (seqs) {
            uint64_t left = pb_budget_events_left_who(d->budget, &who, mono_ms());
            if (left < take) take = left ? (size_t)left : 1;
        }
        o->u2 = take;
        if (pb_fault("delivery.slow-pull-apply")) { /* tests: a drain that takes a while */
            struct timespec ts = {0, 30 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        /* our Pull is always bound to the sender, so its sequence numbers count */
        o->err = pb_store_receive(d->o.store, o->id, epoch, evs, seqs, take, wall_ms(), &o->rr);
        if (o->err == PB_OK) {
            pb_budget_charge_who(d->budget, &who, o->rr.applied, o->u3, mono_ms());
            if (d->o.metrics) {
                /* applied events by kind: the duplicates were the lowest sequence numbers */
                size_t skip = o->rr.duplicates;
                for (size_t i = skip; i < take; i++)
                    pb_counter_inc(pb_metric_get(d->o.metrics->events_received,
                                                 pb_event_kind_name(evs[i].kind), "pull"));
                pb_counter_add(pb_metric_get(d->o.metrics->events_duplicate, "pull"),
                               o->rr.duplicates);
            }
            if (o->rr.applied) pb_delivery_inbox_bump(d);
        }
    }
    pull_dec_free(dc);
    o->ptr = NULL;
}

static void pull_round(struct peer *p);

/* Applying made room: the Pull rounds that waited for it go on, in their order. */
static void apply_room(pb_delivery *d)
{
    size_t i = 0;
    for (; i < d->napply_wait && d->apply_bytes < APPLY_BYTES_MAX; i++) {
        struct peer *w = d->apply_wait[i];
        pb_sched_want(&d->sched, &w->pull_item, w->pull_urgent ? PB_SCHED_HIGH : PB_SCHED_LOW);
    }
    if (i) memmove(d->apply_wait, d->apply_wait + i, (d->napply_wait - i) * sizeof *d->apply_wait);
    d->napply_wait -= i;
}

static void apply_done(struct op *o)
{
    struct peer *p = o->p;
    pb_delivery *d = o->d;
    d->applying--;
    d->apply_bytes -= (size_t)o->u3;
    p->pull_applying = false;
    p->pull_held_events -= (size_t)o->i1;
    if (d->stopping) return;
    apply_room(d);
    if (o->err != PB_OK) {
        char why[128];
        snprintf(why, sizeof why, "answer not stored: %s", pb_strerror(o->err));
        if (o->err == PB_ERR_TOO_BIG)
            snprintf(why, sizeof why, "answer of %llu events over the limit of %u: refused",
                     (unsigned long long)o->u1, d->o.pull_read_max_events);
        int64_t again = -1;
        if (pb_health_unavailable(o->err)) /* pulled again once the store takes it */
            again = store_failed(d, o->err, p->id, "cannot store a pull answer");
        else
            PB_WARN(p->id, "pull answer refused: %s", why);
        pull_chain_break(p);
        pull_end(p, why, again);
    } else if (o->b1) {
        PB_DEBUG(p->id, "pull answer dropped: not the range asked for (a new epoch?)");
        pull_chain_break(p);
    } else {
        p->pull_total += o->rr.applied;
        if (o->rr.epoch) { /* what we hold now: the next requests acknowledge it */
            p->held_epoch = o->rr.epoch;
            p->held_seq = o->rr.ack;
        }
        if (o->u2 < o->u1) pull_chain_break(p); /* the rest is beyond the budget */
    }
    pull_apply_next(d);
    pull_next(p);
    dispatch(d);
}

/* Applies the answers held, in the order they were received (each peer's in the order
 * asked for), one at a time; the next one is decoded while one is applied (at most one
 * decoded ahead, so at most two decoded answers in memory). */
static void pull_apply_next(pb_delivery *d)
{
    if (d->stopping) return;
    struct peer *p = d->napply_q ? d->apply_q[0] : NULL;
    if (p && d->applying < MAX_APPLYING && !p->pull_applying && p->pull_nq &&
        p->pull_q[0].st == HELD_DECODED) {
        memmove(d->apply_q, d->apply_q + 1, (d->napply_q - 1) * sizeof *d->apply_q);
        d->napply_q--;
        struct pull_held h = p->pull_q[0];
        memmove(p->pull_q, p->pull_q + 1, (p->pull_nq - 1) * sizeof *p->pull_q);
        p->pull_nq--;
        d->decoded--;
        struct op *o = op_new(d, p, apply_work, apply_done);
        o->ptr = h.dec;
        o->u3 = h.bytes;          /* given back to apply_bytes by apply_done */
        o->i1 = (int64_t)h.count; /* given back to pull_held_events */
        p->pull_applying = true;
        d->applying++;
        if (p->pull_urgent)
            op_run(o);
        else
            op_run_low(o);
    }
    if (d->decoding || d->decoded) return;
    for (size_t i = 0; i < d->napply_q; i++) { /* the first raw one */
        struct pull_held *h = apply_q_entry(d, i);
        if (h->st != HELD_RAW) continue;
        struct peer *q = d->apply_q[i];
        h->st = HELD_DECODING;
        struct op *o = op_new(d, q, decode_work, decode_done);
        o->ans = h->ans;
        memset(&h->ans, 0, sizeof h->ans);
        o->u1 = q->pull_gen;
        o->u4 = h->from;
        o->u5 = h->epoch;
        d->decoding++;
        if (q->pull_urgent)
            op_run(o);
        else
            op_run_low(o);
        return;
    }
}

static void latest_work(struct op *o)
{
    pb_delivery *d = o->d;
    o->err = pb_store_recv_latest(d->o.store, o->id, &o->u1, &o->u2);
    /* every ID a key signs for shares the key's budget: a round starts only with budget
     * left there too (many IDs of one key are pulled, each with its own budget full) */
    uint8_t key[32];
    uint32_t ra = 0;
    pb_budget_who who = {.sender = o->id};
    if (o->err == PB_OK && pb_store_peer_key_get(d->o.store, o->id, key) == PB_OK) {
        who.key = key;
        if (!pb_budget_available_who(d->budget, &who, mono_ms(), &ra)) {
            o->b1 = true;
            o->i1 = ra;
        }
    }
}

/* Sends the request of a round (a transfer slot is held): from what we hold
 * (held_epoch, held_seq), and, pipelined, from the range after the last answer. */
static void pull_send(struct peer *p)
{
    pb_delivery *d = p->d;
    pb_pull_req pr = {.next_seq = p->held_seq + 1,
                      .epoch = p->held_epoch,
                      .max_bytes = d->o.pull_read_max_bytes,
                      .max_events = d->o.pull_read_max_events};
    if (p->pull_pipe) {
        /* we hold nothing in the answers' epoch yet: 1 acknowledges nothing */
        pr.next_seq = p->held_epoch == p->pull_epoch ? p->held_seq + 1 : 1;
        pr.epoch = p->pull_epoch;
        pr.from_seq = p->pull_from > pr.next_seq ? p->pull_from : 0;
    }
    p->pull_req_from = pr.from_seq;
    p->pull_req_epoch = pr.epoch;
    p->pull_req_ack = pr.next_seq;
    p->pull_req_ack_epoch = pr.epoch;
    p->pull_req_gen = p->pull_gen;
    pb_buf body = PB_BUF_INIT;
    pb_wire_pull_req_encode(&pr, &body);
    char as[PB_SERVER_ID_MAX];
    as_id_for(d, p, as);
    char *authz = pb_auth_header_cached(d->signer, as, p->id, (uint64_t)time(NULL));
    pb_client_req req = {.server_id = p->id,
                         .path = PATH_PULL,
                         .authorization = authz,
                         .body = body.data,
                         .body_len = body.len,
                         .max_response = d->o.pull_read_max_bytes,
                         /* most contacts are one round (nothing or little queued): keep
                          * the connection only for the rounds of a backlog */
                         .one_shot = p->pull_round <= 1};
    pb_client_start(d->o.client, &req, pull_answered, p);
    free(authz);
    pb_buf_free(&body);
}

static void latest_done(struct op *o)
{
    struct peer *p = o->p;
    pb_delivery *d = o->d;
    if (d->stopping) {
        pb_sched_done(&d->sched, p->pull_cls);
        return;
    }
    if (o->err != PB_OK) {
        pb_sched_done(&d->sched, p->pull_cls);
        p->pull_busy = false;
        pull_end(p, "store unavailable",
                 store_failed(d, o->err, p->id, "cannot read the receive state"));
        dispatch(d);
        return;
    }
    if (o->b1) { /* the key's budget (or the sender's) is used: as in pull_start */
        pb_sched_done(&d->sched, p->pull_cls);
        p->pull_busy = false;
        pull_end(p, "receive budget of its key used", o->i1 * 1000);
        dispatch(d);
        return;
    }
    p->held_epoch = o->u1;
    p->held_seq = o->u2;
    p->pull_pipe = false;
    pull_send(p);
}

/* One round (a transfer slot is held, p->pull_busy set): pipelined, the request at once;
 * else what we hold from p (epoch, last sequence number), then the request. Unless the
 * answers already received fill APPLY_BYTES_MAX: then the round waits for room
 * (apply_room) without holding a transfer slot. */
static void pull_round(struct peer *p)
{
    pb_delivery *d = p->d;
    if (d->apply_bytes >= APPLY_BYTES_MAX) {
        pb_sched_done(&d->sched, p->pull_cls);
        if (d->napply_wait == d->capapply_wait) {
            d->capapply_wait = d->capapply_wait ? 2 * d->capapply_wait : 16;
            d->apply_wait = pb_xrealloc(d->apply_wait, d->capapply_wait * sizeof *d->apply_wait);
        }
        d->apply_wait[d->napply_wait++] = p;
        return;
    }
    if (p->pull_pipe) {
        pull_send(p);
        return;
    }
    struct op *o = op_new(p->d, p, latest_work, latest_done);
    if (p->pull_urgent)
        op_run(o);
    else
        op_run_low(o);
}

static void pull_start(struct peer *p)
{
    pb_delivery *d = p->d;
    uint32_t ra = 0;
    if (p->pull_st == PULL_WAIT) {
        p->pull_st = PULL_RUN;
        p->pull_round = 0;
        p->pull_total = 0;
        p->pull_pipe = p->pull_ended = false;
        if (!pb_budget_available(d->budget, p->id, mono_ms(), &ra)) {
            pb_sched_done(&d->sched, p->pull_cls);
            pull_end(p, "receive budget used", (int64_t)ra * 1000);
            return;
        }
        p->pull_busy = true;
        p->pull_round = 1;
    }
    pull_round(p);
}

static void pull_timer_fired(void *arg)
{
    pull_due(arg, false);
}

/* ---- rename notices (this server renamed itself) ------------------------------------------ */

static void notice_view(struct peer *p, const char *err)
{
    pb_delivery *d = p->d;
    pthread_mutex_lock(&d->mu);
    p->v_notice = p->notice;
    snprintf(p->v_notice_old, sizeof p->v_notice_old, "%s", p->notice_old);
    if (err) snprintf(p->v_notice_err, sizeof p->v_notice_err, "%s", err);
    if (!p->notice) p->v_notice_err[0] = '\0';
    p->notice_tries++;
    pthread_cond_broadcast(&d->notice_cv);
    pthread_mutex_unlock(&d->mu);
}

static void notice_want(struct peer *p)
{
    pb_delivery *d = p->d;
    if (!p->notice || p->notice_running || d->stopping || p->dead) return;
    p->notice_item.tag = TAG_NOTICE;
    pb_sched_want(&d->sched, &p->notice_item, PB_SCHED_HIGH);
    dispatch(d);
}

static void notice_timer_fired(void *arg)
{
    notice_want(arg);
}

static void notice_ok_work(struct op *o)
{
    o->err = pb_store_rename_out_done(o->d->o.store, o->id, o->s1);
}

static void notice_fail_work(struct op *o)
{
    o->err = pb_store_rename_out_failed(o->d->o.store, o->id, (uint32_t)o->u1, o->i1, o->s1);
}

static void notice_store_done(struct op *o)
{
    if (o->err != PB_OK && o->err != PB_ERR_NOT_FOUND)
        store_failed(o->d, o->err, o->id, "cannot record the rename notice");
}

static void notice_done(void *ctx, pb_err err, pb_client_answer *ans)
{
    struct peer *p = ctx;
    pb_delivery *d = p->d;
    pb_sched_done(&d->sched, PB_SCHED_HIGH);
    p->notice_running = false;
    char why[256] = "";
    if (err != PB_OK) describe(err, ans, why, sizeof why);
    pb_client_answer_clear(ans);
    if (err == PB_ERR_SHUTDOWN || d->stopping) return;
    if (err == PB_OK) {
        PB_INFO(p->id, "peer accepted our new ID %s", p->notice_new);
        struct op *o = op_new(d, p, notice_ok_work, notice_store_done);
        o->s1 = pb_xstrdup(p->notice_new);
        op_run(o);
        p->notice = false;
        p->notice_attempts = 0;
        notice_view(p, NULL);
    } else {
        p->notice_attempts++;
        int64_t delay = pb_fsm_backoff_ms(&d->fcfg, p->notice_attempts - 1, randombytes_random());
        PB_WARN(p->id, "rename notice failed (attempt %u, next in %lld s): %s", p->notice_attempts,
                (long long)delay / 1000, why);
        struct op *o = op_new(d, p, notice_fail_work, notice_store_done);
        o->u1 = p->notice_attempts;
        o->i1 = wall_ms() + delay;
        o->s1 = pb_xstrdup(why);
        op_run(o);
        pb_ioloop_timer_arm(d->loop, &p->notice_timer, mono_ms() + delay);
        notice_view(p, why);
    }
    dispatch(d);
}

static void notice_start(struct peer *p)
{
    pb_delivery *d = p->d;
    if (!p->notice) {
        pb_sched_done(&d->sched, PB_SCHED_HIGH);
        return;
    }
    p->notice_running = true;
    uint64_t now = (uint64_t)time(NULL);
    /* The proof of possession (PROTOCOL.md 7.2): a token naming the new ID, for this peer. */
    pb_buf proof = PB_BUF_INIT, body = PB_BUF_INIT;
    pb_auth_token_make(d->o.keys, p->notice_new, p->id, now, &proof);
    pb_wire_notify_encode(p->notice_new, proof.data, proof.len, &body);
    char *authz = pb_auth_header_cached(d->signer, p->notice_old, p->id, now);
    pb_client_req req = {.server_id = p->id,
                         .path = PATH_NOTIFY,
                         .authorization = authz,
                         .body = body.data,
                         .body_len = body.len,
                         .max_response = 64 * 1024,
                         .one_shot = true};
    pb_client_start(d->o.client, &req, notice_done, p);
    free(authz);
    pb_buf_free(&proof);
    pb_buf_free(&body);
}

/* ---- queue control: an operator's flush, drop or expiry ------------------------------------
 * The store holds the change (pb_store_peer_flush, pb_store_outbox_drop); the node that
 * delivers the peer (the only one, or the lease holder) re-reads the peer's state into its
 * state machine (PB_FSM_IN_RELOAD): a reset backoff, a new epoch, push mode. Other nodes
 * learn it from the flushes row on their scan (scan_done).
 */

static void reload_work(struct op *o)
{
    pb_delivery *d = o->d;
    o->err = pb_store_peer_state_get(d->o.store, o->id, &o->st);
    if (o->b1) { /* the flushes row seen by the scan */
        pb_err e = pb_store_flush_done(d->o.store, o->id, o->i1);
        if (e != PB_OK) PB_WARN(o->id, "cannot clear the flush request: %s", pb_strerror(e));
    }
}

static void reload_done(struct op *o)
{
    struct peer *p = o->p;
    pb_delivery *d = o->d;
    p->reload_busy = false;
    if (d->stopping) return;
    if (o->err != PB_OK) {
        if (o->err != PB_ERR_NOT_FOUND)
            PB_WARN(p->id, "cannot re-read the delivery state: %s", pb_strerror(o->err));
    } else if (!p->loaded || (d->o.node_id && !p->lease_held)) {
        /* not ours to deliver now: loading or taking the lease reads the store */
        if (o->st.queued > 0) send_work(p, 0);
    } else {
        if (o->st.mode == PB_MODE_PUSH && !o->st.last_error) p->last_error[0] = '\0';
        pb_fsm_input in = {.kind = PB_FSM_IN_RELOAD,
                           .mode = o->st.mode,
                           .attempts = o->st.attempts,
                           .next_at = wall_to_mono(o->st.next_attempt_at),
                           .epoch = o->st.send_epoch,
                           .n = (size_t)o->st.queued};
        fsm_feed(p, &in);
        if (d->o.node_id) lease_want(p);
    }
    if (p->reload_again) {
        p->reload_again = false;
        reload_want(p, 0);
    }
}

/* Re-reads p's state (loop thread); requested_at > 0: also clears its flushes row up to
 * that time. */
static void reload_want(struct peer *p, int64_t requested_at)
{
    pb_delivery *d = p->d;
    ra_drop(p); /* an operator changed the queue */
    if (d->stopping || p->dead) return;
    if (p->reload_busy) {
        p->reload_again = true;
        return;
    }
    p->reload_busy = true;
    struct op *o = op_new(d, p, reload_work, reload_done);
    o->b1 = requested_at > 0;
    o->i1 = requested_at;
    op_run(o);
}

/* ---- leases (several nodes) --------------------------------------------------------------------
 */

static void lease_work(struct op *o)
{
    pb_delivery *d = o->d;
    if (o->b1) { /* release */
        o->err = pb_store_lease_release(d->o.store, o->id, d->o.node_id);
        return;
    }
    bool held = false;
    o->err = pb_store_lease_acquire(d->o.store, o->id, d->o.node_id, wall_ms(), d->o.lease_ttl_ms,
                                    &held);
    o->u1 = held;
    /* newly ours: the shared store's delivery state wins over what we remember */
    if (o->err == PB_OK && held && !o->u2) {
        pb_err e = pb_store_peer_state_get(d->o.store, o->id, &o->st);
        o->u3 = e == PB_OK;
    }
}

static void lease_done(struct op *o)
{
    struct peer *p = o->p;
    pb_delivery *d = o->d;
    p->lease_busy = false;
    if (d->stopping) return;
    int64_t delay = d->o.scan_interval_ms;
    if (o->err != PB_OK) {
        int64_t back = store_failed(d, o->err, p->id,
                                    o->b1 ? "cannot release the delivery lease"
                                          : "cannot take the delivery lease");
        p->lease_hold = mono_ms() + back;
        if (back > delay) delay = back;
    } else {
        pb_health_ok(d->health); /* a write went through */
    }
    if (o->b1) {
        lease_want(p); /* work may have come meanwhile */
        return;
    }
    bool was = p->lease_held;
    p->lease_held = o->err == PB_OK && o->u1;
    if (!p->lease_held) {
        if (was && o->err == PB_OK) PB_WARN(p->id, "lost the delivery lease to another node");
        /* another node delivers this peer (or the store failed); look again later */
        pb_ioloop_timer_arm(d->loop, &p->lease_timer, mono_ms() + delay);
        return;
    }
    p->lease_renew_at = mono_ms() + d->o.lease_ttl_ms / 3;
    pb_ioloop_timer_arm(d->loop, &p->lease_timer, p->lease_renew_at);
    if (!was && o->u3) {
        pb_fsm_input in = {.kind = PB_FSM_IN_LOADED,
                           .mode = o->st.mode,
                           .attempts = o->st.attempts,
                           .next_at = wall_to_mono(o->st.next_attempt_at)};
        if (o->st.send_epoch != p->fsm.epoch && p->fsm.st == PB_FSM_IDLE)
            p->fsm.epoch = o->st.send_epoch;
        if (o->st.next_seq && o->st.next_seq - 1 > p->fsm.max_assigned)
            p->fsm.max_assigned = o->st.next_seq - 1;
        if (o->st.queued == 0) p->fsm.has_work = false;
        fsm_feed(p, &in);
    }
    if (p->fsm.has_work) send_work(p, 0);
}

/* Takes, renews or gives up the lease as the peer's activity needs. */
static void lease_want(struct peer *p)
{
    pb_delivery *d = p->d;
    if (!d->o.node_id || p->lease_busy || d->stopping) return;
    if (mono_ms() < p->lease_hold) { /* backing off after a store failure */
        if (!pb_timer_armed(&p->lease_timer))
            pb_ioloop_timer_arm(d->loop, &p->lease_timer, p->lease_hold);
        return;
    }
    bool active = p->fsm.has_work || p->fsm.st != PB_FSM_IDLE;
    if (p->lease_held && !active) { /* give it up */
        p->lease_held = false;
        pb_ioloop_timer_cancel(d->loop, &p->lease_timer);
        p->lease_busy = true;
        struct op *o = op_new(d, p, lease_work, lease_done);
        o->b1 = true;
        op_run(o);
        return;
    }
    if (!active) return;
    if (p->lease_held && mono_ms() < p->lease_renew_at) return;
    p->lease_busy = true;
    struct op *o = op_new(d, p, lease_work, lease_done);
    o->u2 = p->lease_held;
    op_run(o);
}

static void lease_timer_fired(void *arg)
{
    lease_want(arg);
}

/* ---- several nodes: the scan ----------------------------------------------------------------- */

static void scan_work(struct op *o)
{
    pb_delivery *d = o->d;
    o->err = pb_store_outbox_peers(d->o.store, &o->strs, &o->nstrs);
    if (o->err != PB_OK) return;
    if (pb_store_flush_list(d->o.store, &o->fl, &o->nfl) != PB_OK) o->nfl = 0;
    if (pb_store_meta_get(d->o.store, "server_id", &o->s1) != PB_OK) o->s1 = NULL;
    o->b1 = pb_store_inbox_last_seq(d->o.store, &o->u1) == PB_OK;
}

static void scan_done(struct op *o)
{
    pb_delivery *d = o->d;
    d->scan_busy = false;
    if (d->stopping) return;
    int64_t delay = d->o.scan_interval_ms;
    if (o->err != PB_OK) {
        int64_t back = store_failed(d, o->err, NULL, "scan for work");
        if (back > delay) delay = back;
    }
    if (o->b1 && o->u1 != d->scanned_inbox) { /* events received by other nodes */
        d->scanned_inbox = o->u1;
        pb_delivery_inbox_bump(d);
    }
    for (size_t i = 0; i < o->nstrs; i++) {
        struct peer *p = peer_get(d, o->strs[i]);
        if (p->fsm.st == PB_FSM_IDLE && !p->lease_busy) send_work(p, 0);
    }
    /* an operator's flush or drop on any node: the lease holder re-reads the peer's state
     * and clears the row; a row nobody cleared within a lease time (no node held the
     * lease: the next holder reads the store anyway) is cleared by whoever sees it */
    for (size_t i = 0; i < o->nfl; i++) {
        struct peer *p = peer_get(d, o->fl[i].peer);
        if (p->lease_held || wall_ms() - o->fl[i].requested_at > (int64_t)d->o.lease_ttl_ms)
            reload_want(p, o->fl[i].requested_at);
    }
    if (o->s1) {
        pthread_mutex_lock(&d->mu);
        bool renamed = strcmp(o->s1, d->self) != 0;
        if (renamed) snprintf(d->self, sizeof d->self, "%s", o->s1);
        pthread_mutex_unlock(&d->mu);
        if (renamed) PB_INFO(NULL, "this server was renamed to %s (by another node)", o->s1);
    }
    pb_ioloop_timer_arm(d->loop, &d->scan_timer, mono_ms() + delay);
}

static void scan_timer_fired(void *arg)
{
    pb_delivery *d = arg;
    if (d->scan_busy || d->stopping) return;
    d->scan_busy = true;
    op_run(op_new(d, NULL, scan_work, scan_done));
}

/* ---- pending renames of peers expire ----------------------------------------------------------
 */

static void expire_work(struct op *o)
{
    size_t removed = 0;
    o->err = pb_store_rename_in_expire(o->d->o.store, wall_ms() - RENAME_IN_TTL_MS, &removed);
    o->n = 0;
    o->u1 = removed;
}

static void expire_done(struct op *o)
{
    if (o->err != PB_OK)
        store_failed(o->d, o->err, NULL, "cannot expire pending renames");
    else if (o->u1)
        PB_INFO(NULL, "%llu pending peer rename(s) expired without proof",
                (unsigned long long)o->u1);
    if (!o->d->stopping)
        pb_ioloop_timer_arm(o->d->loop, &o->d->expire_timer, mono_ms() + EXPIRE_EVERY_MS);
}

/* ---- the store's health: the probe ------------------------------------------------------- */

static void probe_work(struct op *o)
{
    o->err = pb_store_ping(o->d->o.store);
}

static void probe_done(struct op *o)
{
    pb_delivery *d = o->d;
    d->probe_busy = false;
    if (o->err == PB_OK)
        pb_health_ok(d->health); /* the paths waiting in backoff go on at their timers */
    else if (pb_health_unavailable(o->err))
        pb_health_fail(d->health, o->err, NULL, "store: probe: %s", pb_strerror(o->err));
    probe_want(d);
}

static void probe_timer_fired(void *arg)
{
    pb_delivery *d = arg;
    if (d->probe_busy || d->stopping || pb_health_up(d->health)) return;
    d->probe_busy = true;
    op_run(op_new(d, NULL, probe_work, probe_done));
}

/* While the store is down, one probe at a time, at the tracker's backoff: it notices the
 * store's return even when no other work would (loop thread). */
static void probe_want(pb_delivery *d)
{
    if (d->probe_busy || d->stopping || pb_health_up(d->health)) return;
    int64_t at = mono_ms() + pb_health_backoff_ms(d->health);
    if (pb_timer_armed(&d->probe_timer) && d->probe_timer.at <= at) return;
    pb_ioloop_timer_arm(d->loop, &d->probe_timer, at);
}

/* ---- the service manager's watchdog ------------------------------------------------------ */

/* Every second on the loop: the engine is alive when the loop runs this and its store work
 * moves (nothing waits, or something finished since the last beat). A stalled loop or a
 * wedged store stops the keep-alives, and the service manager restarts the daemon. */
static void beat_timer_fired(void *arg)
{
    pb_delivery *d = arg;
    if (d->stopping) return;
    if (pb_exec_pending(d->exec) == 0 || d->ops_done != d->beat_ops) pb_sdnotify_watchdog_kick();
    d->beat_ops = d->ops_done;
    probe_want(d); /* the store went down in a listener or the admin API: probe it too */
    pb_ioloop_timer_arm(d->loop, &d->beat_timer, mono_ms() + 1000);
}

static void expire_timer_fired(void *arg)
{
    pb_delivery *d = arg;
    if (!d->stopping) op_run(op_new(d, NULL, expire_work, expire_done));
}

/* ---- max_queue_age: expiry of events queued too long ------------------------------------------
 * Every node sweeps (a peer's queue head older than the limit: pb_store_outbox_expired_peers,
 * O(peers with a queue)); each expiry is one transaction under the peer's row lock, so two
 * nodes sweeping at once expire an event once. The period follows the setting (a quarter
 * of it, 250 ms to 30 s) and re-reads it each time, so a reload applies it. */

static pb_err drop_events(pb_delivery *d, const char *peer, int64_t before, bool expiry,
                          pb_drop_result *r);

static int64_t age_period_ms(unsigned age_s)
{
    int64_t ms = age_s ? (int64_t)age_s * 250 : 5000;
    return ms < 250 ? 250 : ms > 30000 ? 30000 : ms;
}

static void age_work(struct op *o)
{
    pb_delivery *d = o->d;
    unsigned age_s = (unsigned)o->u1;
    char **peers = NULL;
    size_t n = 0;
    int64_t before = wall_ms() - (int64_t)age_s * 1000;
    o->err = pb_store_outbox_expired_peers(d->o.store, before, &peers, &n);
    for (size_t i = 0; i < n && o->err == PB_OK; i++) {
        pb_drop_result r;
        pb_err err = drop_events(d, peers[i], before, true, &r);
        if (err != PB_OK && err != PB_ERR_NOT_FOUND) o->err = err;
    }
    pb_store_strings_free(peers, n);
}

static void age_done(struct op *o)
{
    pb_delivery *d = o->d;
    if (d->stopping) return;
    int64_t delay = age_period_ms(atomic_load(&d->max_queue_age_s));
    if (o->err != PB_OK) {
        int64_t back = store_failed(d, o->err, NULL, "cannot expire old queued events");
        if (back > delay) delay = back;
    }
    pb_ioloop_timer_arm(d->loop, &d->age_timer, mono_ms() + delay);
}

static void age_timer_fired(void *arg)
{
    pb_delivery *d = arg;
    if (d->stopping) return;
    unsigned age_s = atomic_load(&d->max_queue_age_s);
    if (!age_s) {
        pb_ioloop_timer_arm(d->loop, &d->age_timer, mono_ms() + age_period_ms(0));
        return;
    }
    struct op *o = op_new(d, NULL, age_work, age_done);
    o->u1 = age_s;
    op_run(o);
}

/* ---- life cycle -------------------------------------------------------------------------------
 */

/* ---- identities: forgetting idle peer records ---------------------------------------------- */

/* Nothing refers to the record and nothing is left to do for it (loop thread). */
static bool peer_forgettable(pb_delivery *d, struct peer *p)
{
    if (p->refs || p->loading || p->forget_busy || p->forget_queued || p->reload_busy ||
        p->lease_busy || p->lease_held || p->notice || p->notice_running ||
        p->pull_st != PULL_IDLE || p->pull_nq || p->pull_applying || p->pull_busy || p->nitems ||
        p->ra || p->ra_posted || p->forget_sent != p->forget_want || p->head_fl || p->nwin ||
        p->orphans || p->win_reading || pb_sched_waiting(&p->win_item) ||
        p->fsm.st != PB_FSM_IDLE || p->fsm.has_work || p->fsm.mode != PB_MODE_PUSH ||
        pb_timer_armed(&p->send_timer) || pb_timer_armed(&p->forget_timer) ||
        pb_timer_armed(&p->pull_timer) || pb_timer_armed(&p->notice_timer) ||
        pb_timer_armed(&p->lease_timer) || pb_sched_waiting(&p->send_item) ||
        pb_sched_waiting(&p->pull_item) || pb_sched_waiting(&p->notice_item))
        return false;
    for (size_t i = 0; i < d->napply_q; i++)
        if (d->apply_q[i] == p) return false;
    for (size_t i = 0; i < d->napply_wait; i++)
        if (d->apply_wait[i] == p) return false;
    /* the shared fields: no Push waiting, no foreign Pull, nothing shown queued */
    return !p->pulling && !p->nwaiters && p->busy == BUSY_NONE && !p->v_notice &&
           p->v_mode == PB_MODE_PUSH;
}

static int64_t idle_period_ms(unsigned idle_s)
{
    int64_t ms = (int64_t)idle_s * 1000 / 4;
    return ms < 500 ? 500 : ms > 60000 ? 60000 : ms;
}

static void idle_timer_fired(void *arg)
{
    pb_delivery *d = arg;
    if (d->stopping) return;
    unsigned idle_s = atomic_load(&d->peer_idle_s);
    size_t forgotten = 0;
    if (idle_s) {
        int64_t now = mono_ms(), idle_ms = (int64_t)idle_s * 1000;
        for (size_t i = 0; i < d->npeers;) {
            struct peer *p = d->all[i];
            if (now - p->active_ms < idle_ms) {
                i++;
                continue;
            }
            pthread_mutex_lock(&d->mu);
            bool go = peer_forgettable(d, p);
            if (go) {
                if (!p->dead) unhash_locked(d, p);
                d->all[i] = d->all[--d->npeers];
            }
            pthread_mutex_unlock(&d->mu);
            if (!go) {
                i++;
                continue;
            }
            PB_DEBUG(p->id, "peer record forgotten: idle for %u s", idle_s);
            pb_outbox_items_free(p->items, p->nitems);
            free(p->win);
            free(p->waiters);
            free(p);
            forgotten++;
        }
    }
    if (forgotten && d->o.metrics)
        pb_counter_add(pb_metric_series(d->o.metrics->peers_forgotten, NULL), forgotten);
    if (forgotten) PB_INFO(NULL, "%zu idle peer records forgotten", forgotten);
    pb_ioloop_timer_arm(d->loop, &d->idle_timer, mono_ms() + idle_period_ms(idle_s));
}

void pb_delivery_set_ident_limits(pb_delivery *d, unsigned key_factor, unsigned addr_factor,
                                  unsigned new_per_key, unsigned new_per_address,
                                  unsigned peer_idle_s)
{
    pb_budget_set_factors(d->budget, key_factor, addr_factor);
    if (new_per_key) pb_budget_set_rate(d->newkeys, new_per_key, NEWPEER_BYTES);
    if (new_per_address) pb_budget_set_rate(d->newaddrs, new_per_address, NEWPEER_BYTES);
    atomic_store(&d->new_per_key, new_per_key);
    atomic_store(&d->new_per_addr, new_per_address);
    atomic_store(&d->peer_idle_s, peer_idle_s);
}

/* The new-peer bucket of a key or address: its name ("#" and the hex, no server ID's). */
static void newpeer_name(const uint8_t *v, size_t len, char out[1 + 64 + 1])
{
    out[0] = '#';
    for (size_t i = 0; i < len; i++)
        snprintf(out + 1 + 2 * i, 3, "%02x", v[i]);
}

bool pb_delivery_admit_new(void *ctx, const char *server_id, const uint8_t key[32],
                           const uint8_t *client_addr, uint32_t *retry_after_s)
{
    pb_delivery *d = ctx;
    (void)server_id;
    char kname[66], aname[66];
    newpeer_name(key, 32, kname);
    if (client_addr) newpeer_name(client_addr, 16, aname);
    bool by_key = atomic_load(&d->new_per_key) > 0,
         by_addr = client_addr && atomic_load(&d->new_per_addr) > 0;
    int64_t now = pb_ioloop_now_ms();
    const char *scope = NULL;
    /* both checked before either is taken, so a refusal costs neither */
    if (by_key && !pb_budget_available(d->newkeys, kname, now, retry_after_s))
        scope = "key";
    else if (by_addr && !pb_budget_available(d->newaddrs, aname, now, retry_after_s))
        scope = "address";
    if (!scope) {
        uint32_t ra;
        if (by_key) pb_budget_take(d->newkeys, kname, 1, 0, now, &ra);
        if (by_addr) pb_budget_take(d->newaddrs, aname, 1, 0, now, &ra);
        return true;
    }
    if (d->o.metrics) pb_counter_inc(pb_metric_get(d->o.metrics->new_peers_refused, scope));
    return false;
}

pb_err pb_delivery_new(const pb_delivery_opts *opts, pb_delivery **out)
{
    pb_delivery *d = pb_xcalloc(1, sizeof *d);
    randombytes_buf(&d->jitter_state, sizeof d->jitter_state);
    d->o = *opts;
    if (!d->o.store_threads) d->o.store_threads = 8;
    if (!d->o.retry_base_ms) d->o.retry_base_ms = 100;
    if (!d->o.backoff_min_s) d->o.backoff_min_s = 5;
    if (!d->o.backoff_max_s) d->o.backoff_max_s = 900;
    if (d->o.backoff_max_s < d->o.backoff_min_s) d->o.backoff_max_s = d->o.backoff_min_s;
    if (!d->o.pull_interval_s) d->o.pull_interval_s = 60;
    if (!d->o.pull_batch) d->o.pull_batch = 10000;
    if (!d->o.pull_max_bytes) d->o.pull_max_bytes = 2 * 1024 * 1024;
    if (!d->o.push_wait_ms) d->o.push_wait_ms = 10000;
    if (!d->o.max_transfers) d->o.max_transfers = 1024;
    if (!d->o.batch_max) d->o.batch_max = 512;
    if (!d->o.push_window) d->o.push_window = 24;
    if (!d->o.window_announce) d->o.window_announce = d->o.push_window;
    if (!d->o.window_hold_total) d->o.window_hold_total = 128;
    if (!d->o.window_hold_ms) d->o.window_hold_ms = 5000;
    if (!d->o.push_max_bytes) d->o.push_max_bytes = 60 * 1024;
    if (!d->o.pull_read_max_bytes) d->o.pull_read_max_bytes = 2 * 1024 * 1024;
    if (!d->o.pull_read_max_events) d->o.pull_read_max_events = 10000;
    if (!d->o.pull_rounds) d->o.pull_rounds = 16;
    if (!d->o.push_max_events) d->o.push_max_events = 1000;
    if (!d->o.lease_ttl_ms) d->o.lease_ttl_ms = 10000;
    if (!d->o.scan_interval_ms) d->o.scan_interval_ms = 1000;
    d->o.node_id = opts->node_id ? pb_xstrdup(opts->node_id) : NULL;
    d->fcfg = (pb_fsm_cfg){.push_retries = d->o.push_retries,
                           .retry_base_ms = d->o.retry_base_ms,
                           .backoff_min_ms = d->o.backoff_min_s * 1000,
                           .backoff_max_ms = d->o.backoff_max_s * 1000,
                           .batch_max = d->o.batch_max};
    snprintf(d->self, sizeof d->self, "%s", opts->server_id);
    d->loop = pb_client_loop(opts->client);
    d->signer = pb_auth_signer_new(opts->keys);
    d->budget = pb_budget_new(&d->o.budget);
    d->wgate = pb_wgate_new(d->o.window_announce > 1 ? d->o.window_announce - 1 : 0,
                            d->o.window_hold_total, pb_store_receives_ordered(d->o.store));
    d->newkeys = pb_budget_new(
        &(pb_budget_opts){.events = d->o.new_peers_per_key ? d->o.new_peers_per_key : 1,
                          .bytes = NEWPEER_BYTES,
                          .interval_s = 3600});
    d->newaddrs = pb_budget_new(
        &(pb_budget_opts){.events = d->o.new_peers_per_address ? d->o.new_peers_per_address : 1,
                          .bytes = NEWPEER_BYTES,
                          .interval_s = 3600});
    atomic_store(&d->new_per_key, d->o.new_peers_per_key);
    atomic_store(&d->new_per_addr, d->o.new_peers_per_address);
    atomic_store(&d->peer_idle_s, d->o.peer_idle_s);
    pb_timer_init(&d->idle_timer, idle_timer_fired, d);
    /* at most 3/4 of the slots for Pulls, so pushes always find room */
    pb_sched_init(&d->sched, d->o.max_transfers, d->o.max_transfers - d->o.max_transfers / 4);
    pthread_mutex_init(&d->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&d->notice_cv, &ca);
    pthread_cond_init(&d->submit_cv, NULL);
    pthread_mutex_init(&d->submit_mu, NULL);
    pthread_condattr_destroy(&ca);
    pb_timer_init(&d->scan_timer, scan_timer_fired, d);
    pb_timer_init(&d->probe_timer, probe_timer_fired, d);
    d->health = pb_health_store();
    pb_timer_init(&d->expire_timer, expire_timer_fired, d);
    pb_timer_init(&d->age_timer, age_timer_fired, d);
    atomic_store(&d->max_queue_age_s, d->o.max_queue_age_s);
    pb_delivery_set_former_id_grace(d, d->o.former_id_grace_s);
    pb_timer_init(&d->beat_timer, beat_timer_fired, d);

    pb_peer_state *sts = NULL;
    size_t n = 0;
    pb_err err = pb_store_peer_state_list(d->o.store, &sts, &n);
    if (err != PB_OK) goto fail;
    /* Peers idle for peer_idle_s before the last contact the store records (about when this
     * server last ran, so a long stop forgets nobody) are forgotten: no record, no start-up
     * Pull. Only those we never sent anything to (no sequence number assigned: a peer of
     * our users may hold a queue for us and be waiting for this Pull, and only our users
     * choose them), with nothing queued and in push mode. */
    int64_t latest_contact = 0;
    size_t skipped = 0;
    for (size_t i = 0; i < n; i++)
        if (sts[i].last_contact > latest_contact) latest_contact = sts[i].last_contact;
    pthread_mutex_lock(&d->mu);
    for (size_t i = 0; i < n; i++) {
        if (d->o.peer_idle_s && sts[i].mode == PB_MODE_PUSH && sts[i].queued == 0 &&
            sts[i].next_seq <= 1 &&
            sts[i].last_contact + (int64_t)d->o.peer_idle_s < latest_contact) {
            skipped++;
            continue;
        }
        struct peer *p = peer_new_locked(d, sts[i].server_id);
        p->loaded = true;
        pb_fsm_init(&p->fsm, sts[i].mode, sts[i].attempts, wall_to_mono(sts[i].next_attempt_at),
                    sts[i].send_epoch, sts[i].next_seq ? sts[i].next_seq - 1 : 0,
                    sts[i].queued > 0);
        p->fsm.parked_seq = sts[i].parked_seq;
        if (sts[i].last_error)
            snprintf(p->last_error, sizeof p->last_error, "%s", sts[i].last_error);
        p->last_contact_s = sts[i].last_contact;
        p->v_mode = sts[i].mode;
        p->v_next_wall_ms = sts[i].mode == PB_MODE_QUEUED ? sts[i].next_attempt_at : 0;
        /* every known peer is pulled at start-up; its Pushes wait for that Pull from the
         * moment the listener accepts them */
        p->pulling = true;
        p->pull_startup = true;
    }
    pthread_mutex_unlock(&d->mu);
    pb_peer_state_free_array(sts, n);
    if (skipped)
        PB_INFO(NULL,
                "%zu idle peers forgotten (no contact for %u s before the last one): not "
                "pulled at start-up",
                skipped, d->o.peer_idle_s);

    pb_rename_out *rs = NULL;
    err = pb_store_rename_out_list(d->o.store, &rs, &n);
    if (err != PB_OK) goto fail;
    pthread_mutex_lock(&d->mu);
    for (size_t i = 0; i < n; i++) {
        struct peer *p = peer_find(d, rs[i].peer);
        if (!p) p = peer_new_locked(d, rs[i].peer);
        p->notice = p->v_notice = true;
        snprintf(p->notice_old, sizeof p->notice_old, "%s", rs[i].old_id);
        snprintf(p->v_notice_old, sizeof p->v_notice_old, "%s", rs[i].old_id);
        p->v_notice_since = rs[i].renamed_at;
        snprintf(p->notice_new, sizeof p->notice_new, "%s", rs[i].new_id);
        p->notice_attempts = rs[i].attempts;
        if (rs[i].last_error)
            snprintf(p->v_notice_err, sizeof p->v_notice_err, "%s", rs[i].last_error);
    }
    pthread_mutex_unlock(&d->mu);
    pb_rename_outs_free(rs, n);
    d->exec = pb_exec_new(d->o.store_threads);
    /* the store's checkpoints run on the store threads too, beside the commits */
    pb_store_set_executor(d->o.store, d->exec);
    *out = d;
    return PB_OK;
fail:
    pb_delivery_free(d);
    return err;
}

static int by_recent_contact(const void *a, const void *b)
{
    const struct peer *x = *(struct peer *const *)a, *y = *(struct peer *const *)b;
    return (y->last_contact_s > x->last_contact_s) - (y->last_contact_s < x->last_contact_s);
}

static void start_on_loop(void *arg)
{
    pb_delivery *d = arg;
    /* start-up Pulls, most recently active peers first; then the queues and notices */
    size_t n = d->npeers;
    struct peer **order = pb_xcalloc(n ? n : 1, sizeof *order);
    if (n) { /* d->all is NULL when there are no peers */
        memcpy(order, d->all, n * sizeof *order);
        qsort(order, n, sizeof *order, by_recent_contact);
    }
    for (size_t i = 0; i < n; i++)
        if (order[i]->pull_startup) pull_due(order[i], false);
    for (size_t i = 0; i < n; i++) {
        struct peer *p = order[i];
        if (p->fsm.has_work || p->fsm.mode == PB_MODE_QUEUED) send_work(p, 0);
        if (p->notice) notice_want(p);
    }
    free(order);
    if (d->o.node_id) pb_ioloop_timer_arm(d->loop, &d->scan_timer, mono_ms());
    pb_ioloop_timer_arm(d->loop, &d->expire_timer, mono_ms() + 1000);
    pb_ioloop_timer_arm(d->loop, &d->age_timer, mono_ms() + age_period_ms(d->o.max_queue_age_s));
    pb_ioloop_timer_arm(d->loop, &d->idle_timer,
                        mono_ms() + idle_period_ms(atomic_load(&d->peer_idle_s)));
    beat_timer_fired(d);
    dispatch(d);
}

pb_err pb_delivery_start(pb_delivery *d)
{
    pthread_mutex_lock(&d->mu);
    d->started = true;
    size_t n = d->npeers;
    pthread_mutex_unlock(&d->mu);
    pb_ioloop_post(d->loop, start_on_loop, d);
    PB_INFO(NULL, "delivery engine: %zu known peers, %u transfers at once, %u store threads%s%s", n,
            d->o.max_transfers, d->o.store_threads, d->o.node_id ? ", node " : "",
            d->o.node_id ? d->o.node_id : "");
    return PB_OK;
}

static void stop_on_loop(void *arg)
{
    pb_delivery *d = arg;
    pthread_mutex_lock(&d->mu);
    d->stopping = true;
    pthread_cond_broadcast(&d->notice_cv);
    pthread_mutex_unlock(&d->mu);
    pb_ioloop_timer_cancel(d->loop, &d->scan_timer);
    pb_ioloop_timer_cancel(d->loop, &d->expire_timer);
    pb_ioloop_timer_cancel(d->loop, &d->age_timer);
    pb_ioloop_timer_cancel(d->loop, &d->idle_timer);
    pb_ioloop_timer_cancel(d->loop, &d->beat_timer);
    pb_ioloop_timer_cancel(d->loop, &d->probe_timer);
    for (size_t i = 0; i < d->npeers; i++) {
        struct peer *p = d->all[i];
        pb_ioloop_timer_cancel(d->loop, &p->send_timer);
        pb_ioloop_timer_cancel(d->loop, &p->forget_timer);
        pb_ioloop_timer_cancel(d->loop, &p->pull_timer);
        pb_ioloop_timer_cancel(d->loop, &p->notice_timer);
        pb_ioloop_timer_cancel(d->loop, &p->lease_timer);
        pb_sched_cancel(&d->sched, &p->send_item);
        pb_sched_cancel(&d->sched, &p->win_item);
        pb_sched_cancel(&d->sched, &p->pull_item);
        pb_sched_cancel(&d->sched, &p->notice_item);
        /* Pushes waiting for a Pull go on (and are answered) */
        pthread_mutex_lock(&d->mu);
        pb_hrpc_waker **ws = p->waiters;
        size_t nw = p->nwaiters;
        p->waiters = NULL;
        p->nwaiters = p->capwaiters = 0;
        p->pulling = false;
        pthread_mutex_unlock(&d->mu);
        for (size_t k = 0; k < nw; k++)
            pb_hrpc_wake(ws[k]);
        free(ws);
    }
    pb_wgate_wake_all(d->wgate); /* batches held ahead of a gap are answered (503) */
}

void pb_delivery_stop(pb_delivery *d)
{
    if (!d) return;
    pthread_mutex_lock(&d->mu);
    bool was = d->stopping;
    pthread_mutex_unlock(&d->mu);
    if (was) return;
    /* the store completes every submission it took (store.h); their completions post to
     * the loop, which still runs */
    pthread_mutex_lock(&d->submit_mu);
    while (d->submits > 0)
        pthread_cond_wait(&d->submit_cv, &d->submit_mu);
    pthread_mutex_unlock(&d->submit_mu);
    pb_ioloop_call(d->loop, stop_on_loop, d);
    /* store work in flight ends; its completions run on the loop and see `stopping` */
    if (d->exec) pb_store_set_executor(d->o.store, NULL);
    pb_exec_free(d->exec);
    d->exec = NULL;
}

void pb_delivery_free(pb_delivery *d)
{
    if (!d) return;
    if (d->loop) pb_delivery_stop(d);
    if (d->exec) pb_store_set_executor(d->o.store, NULL);
    pb_exec_free(d->exec);
    for (size_t i = 0; i < d->npeers; i++) {
        struct peer *p = d->all[i];
        pb_outbox_items_free(p->items, p->nitems);
        for (size_t k = 0; k < p->pull_nq; k++) {
            pb_client_answer_clear(&p->pull_q[k].ans);
            pull_dec_free(p->pull_q[k].dec);
        }
        pb_outbox_items_free(p->ra, p->nra);
        flight_free(p->head_fl);
        for (size_t k = 0; k < p->nwin; k++)
            flight_free(p->win[k]);
        free(p->win);
        free(p->waiters);
        free(p);
    }
    free(d->all);
    free(d->apply_q);
    free(d->apply_wait);
    free(d->forget_q);
    free(d->work);
    pb_auth_signer_free(d->signer);
    pb_budget_free(d->budget);
    pb_wgate_free(d->wgate);
    pb_budget_free(d->newkeys);
    pb_budget_free(d->newaddrs);
    free((char *)d->o.node_id);
    pthread_cond_destroy(&d->notice_cv);
    pthread_cond_destroy(&d->submit_cv);
    pthread_mutex_destroy(&d->submit_mu);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

/* ---- operations (admin API; any thread but the loop's) ------------------------------------- */

struct work_msg {
    pb_delivery *d;
    char id[PB_SERVER_ID_MAX];
    uint64_t seq;
    int kind;
};

enum { MSG_WORK, MSG_CONTACT, MSG_PUSH_SEEN, MSG_URGENT_PULL, MSG_ACKED, MSG_OPERATOR, MSG_RELOAD };

static void msg_on_loop(void *arg)
{
    struct work_msg *m = arg;
    pb_delivery *d = m->d;
    if (!d->stopping) {
        struct peer *p = peer_get(d, m->id);
        p->active_ms = mono_ms();
        switch (m->kind) {
        case MSG_WORK:
            send_work(p, m->seq);
            break;
        case MSG_CONTACT: {
            pb_fsm_input in = {.kind = PB_FSM_IN_CONTACT};
            fsm_feed(p, &in);
            /* a peer we are telling about our rename is back: tell it now */
            if (p->notice && !p->notice_running && pb_timer_armed(&p->notice_timer)) {
                pb_ioloop_timer_cancel(d->loop, &p->notice_timer);
                notice_want(p);
            }
            break;
        }
        case MSG_PUSH_SEEN:
            pb_ioloop_timer_arm(d->loop, &p->pull_timer,
                                mono_ms() + (int64_t)d->o.pull_interval_s * 1000);
            break;
        case MSG_URGENT_PULL:
            pull_due(p, true);
            break;
        case MSG_ACKED: {
            pb_fsm_input in = {.kind = PB_FSM_IN_ACKED, .ack = m->seq};
            fsm_feed(p, &in);
            break;
        }
        case MSG_OPERATOR: {
            pb_fsm_input in = {.kind = PB_FSM_IN_OPERATOR};
            fsm_feed(p, &in);
            break;
        }
        case MSG_RELOAD:
            reload_want(p, 0);
            break;
        }
    }
    free(m);
}

static void post_msg(pb_delivery *d, const char *id, int kind, uint64_t seq)
{
    struct work_msg *m = pb_xcalloc(1, sizeof *m);
    m->d = d;
    snprintf(m->id, sizeof m->id, "%s", id);
    m->kind = kind;
    m->seq = seq;
    pb_ioloop_post(d->loop, msg_on_loop, m);
}

/* Work committed for one peer, waiting for the loop. */
struct pending_work {
    char id[PB_SERVER_ID_MAX];
    uint64_t seq;
    /* the events committed, when every submission merged here handed its own and they
     * follow each other (stage) */
    pb_outbox_item *items;
    size_t nitems;
    uint64_t gen;
    bool no_stage;
};

/* Loop: the work of every submission committed since the last call, one MSG_WORK's worth
 * per peer (the highest sequence number stands for the lower ones). */
static void pending_work_on_loop(void *arg)
{
    pb_delivery *d = arg;
    pthread_mutex_lock(&d->submit_mu);
    struct pending_work *w = d->work;
    size_t n = d->nwork;
    d->work = NULL;
    d->nwork = d->capwork = 0;
    d->work_posted = false;
    pthread_mutex_unlock(&d->submit_mu);
    if (n && pb_fault("delivery.slow-stage")) /* submit_test: a change of the queue meanwhile */
        nanosleep(&(struct timespec){0, 300 * 1000000L}, NULL);
    for (size_t i = 0; i < n; i++) {
        if (d->stopping) {
            pb_outbox_items_free(w[i].items, w[i].nitems);
            continue;
        }
        struct peer *p = peer_get(d, w[i].id);
        p->active_ms = mono_ms();
        /* the events committed, for the read this news starts (stage_take), if the state
         * machine asks for one now */
        if (w[i].items && p->loaded) {
            p->stg = w[i].items;
            p->nstg = w[i].nitems;
            p->stg_gen = w[i].gen;
        } else {
            pb_outbox_items_free(w[i].items, w[i].nitems);
        }
        send_work(p, w[i].seq);
        stage_drop(p);
    }
    free(w);
}

/* A store thread: work for peer `to` up to seq; the loop is told once for all the work
 * added before it takes it (a batch of commits' callbacks costs one message). items
 * (taken; may be NULL): the n events committed, up to seq, and gen their submission's
 * pb_store_outbox_quiet count. */
static void pending_work_add(pb_delivery *d, const char *to, uint64_t seq, pb_outbox_item *items,
                             size_t n, uint64_t gen)
{
    bool post = false;
    pthread_mutex_lock(&d->submit_mu);
    size_t i = 0;
    while (i < d->nwork && strcmp(d->work[i].id, to) != 0)
        i++;
    if (i == d->nwork) {
        if (d->nwork == d->capwork) {
            d->capwork = d->capwork ? d->capwork * 2 : 4;
            d->work = pb_xrealloc(d->work, d->capwork * sizeof *d->work);
        }
        struct pending_work *w = &d->work[i];
        snprintf(w->id, sizeof w->id, "%s", to);
        w->seq = seq;
        w->items = items;
        w->nitems = items ? n : 0;
        w->gen = gen;
        w->no_stage = !items;
        items = NULL;
        d->nwork++;
    } else {
        struct pending_work *w = &d->work[i];
        if (seq > w->seq) w->seq = seq;
        /* staged only while the events handed follow each other from the first */
        if (!w->no_stage && items && gen == w->gen && w->nitems + n <= STAGE_MERGED_MAX &&
            items[0].seq == w->items[w->nitems - 1].seq + 1) {
            w->items = pb_xrealloc(w->items, (w->nitems + n) * sizeof *w->items);
            memcpy(&w->items[w->nitems], items, n * sizeof *items);
            w->nitems += n;
            free(items);
            items = NULL;
        } else if (!w->no_stage) {
            pb_outbox_items_free(w->items, w->nitems);
            w->items = NULL;
            w->nitems = 0;
            w->no_stage = true;
        }
    }
    if (!d->work_posted) post = d->work_posted = true;
    pthread_mutex_unlock(&d->submit_mu);
    pb_outbox_items_free(items, n);
    if (post) pb_ioloop_post(d->loop, pending_work_on_loop, d);
}

/* A store job of the engine's callers (a submission, a received Push) begins and ends:
 * pb_delivery_stop waits until none is left. */
static void store_job_begin(pb_delivery *d)
{
    pthread_mutex_lock(&d->submit_mu);
    d->submits++;
    pthread_mutex_unlock(&d->submit_mu);
}

static void store_job_end(pb_delivery *d)
{
    pthread_mutex_lock(&d->submit_mu);
    if (--d->submits == 0) pthread_cond_broadcast(&d->submit_cv);
    pthread_mutex_unlock(&d->submit_mu);
}

/* One asynchronous submission waiting for its commit. */
struct submit_op {
    pb_delivery *d;
    char to[PB_SERVER_ID_MAX];
    pb_delivery_submit_cb cb;
    void *arg;
    pb_outbox_item *stg; /* a copy of its events (stage), or NULL */
    size_t nstg;
    uint64_t stg_gen;
};

/* A copy of a submission's events as the store's read would return them (but for their
 * numbers, known after the commit), for stage_take; NULL when too many or too large. */
static pb_outbox_item *stage_copy(const pb_event *evs, size_t n, int64_t now)
{
    if (n == 0 || n > STAGE_MAX) return NULL;
    pb_outbox_item *items = pb_xcalloc(n, sizeof *items);
    pb_buf b = PB_BUF_INIT;
    size_t bytes = 0, i = 0;
    for (; i < n; i++) {
        pb_buf_reset(&b);
        /* decoded from the bytes the store keeps, as its read would return it */
        if (pb_wire_event_encode(&evs[i], &b) != PB_OK || b.len > STAGE_BYTES - bytes ||
            pb_wire_event_decode(b.data, b.len, &items[i].ev) != PB_OK)
            break;
        bytes += b.len;
        items[i].size = b.len;
        items[i].created_at = now;
    }
    pb_buf_free(&b);
    if (i < n) {
        pb_outbox_items_free(items, i);
        return NULL;
    }
    return items;
}

/* A store thread, after the commit (or its failure). */
static void submit_done(void *arg, pb_err result, uint64_t last_seq, bool duplicate)
{
    struct submit_op *op = arg;
    pb_delivery *d = op->d;
    if (result == PB_OK && !duplicate) {
        for (size_t i = 0; i < op->nstg; i++)
            op->stg[i].seq = last_seq - op->nstg + 1 + i;
        pending_work_add(d, op->to, last_seq, op->stg, op->nstg, op->stg_gen);
        op->stg = NULL;
    }
    pb_outbox_items_free(op->stg, op->nstg);
    op->cb(op->arg, result, duplicate, last_seq);
    free(op);
    store_job_end(d);
}

pb_err pb_delivery_submit_async(pb_delivery *d, const char *to, const pb_event *evs, size_t n,
                                const char *submission_id, pb_delivery_submit_cb cb, void *arg)
{
    char self[PB_SERVER_ID_MAX];
    pb_delivery_server_id(d, self);
    if (strcmp(to, self) == 0 || strlen(to) >= PB_SERVER_ID_MAX) return PB_ERR_INVAL;
    struct submit_op *op = pb_xcalloc(1, sizeof *op);
    op->d = d;
    snprintf(op->to, sizeof op->to, "%s", to);
    op->cb = cb;
    op->arg = arg;
    int64_t now = wall_ms();
    /* with one node only: another node's changes of the queue are not seen (stage_take) */
    if (!d->o.node_id && evs && pb_store_outbox_quiet(d->o.store, &op->stg_gen)) {
        op->stg = stage_copy(evs, n, now);
        op->nstg = op->stg ? n : 0;
    }
    store_job_begin(d);
    pb_err err =
        pb_store_outbox_submit_async(d->o.store, to, evs, n, now, submission_id, submit_done, op);
    if (err != PB_OK) {
        pb_outbox_items_free(op->stg, op->nstg);
        free(op);
        store_job_end(d);
    }
    return err;
}

/* One asynchronous receive waiting for its commit. */
struct recv_op {
    pb_delivery *d;
    pb_store_recv_cb cb;
    void *arg;
};

static void recv_done(void *arg, pb_err result, const pb_recv_result *res)
{
    struct recv_op *op = arg;
    pb_delivery *d = op->d;
    /* the inbox's long-polls first, from here: not one thread hand-off later, when the
     * Push's handler runs again to answer its sender */
    if (result == PB_OK && res && res->applied) pb_delivery_inbox_bump(d);
    op->cb(op->arg, result, res);
    free(op);
    store_job_end(d);
}

pb_err pb_delivery_receive_async(pb_delivery *d, const char *from, uint64_t epoch, uint64_t after,
                                 const pb_event *evs, const uint64_t *seqs, size_t n,
                                 pb_store_recv_cb cb, void *arg)
{
    struct recv_op *op = pb_xcalloc(1, sizeof *op);
    op->d = d;
    op->cb = cb;
    op->arg = arg;
    store_job_begin(d);
    pb_err err = pb_store_receive_async(d->o.store, from, epoch, after, evs, seqs, n, wall_ms(),
                                        recv_done, op);
    if (err != PB_OK) {
        free(op);
        store_job_end(d);
    }
    return err;
}

/* pb_delivery_submit's wait for its asynchronous submission. */
struct submit_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done, dup;
    pb_err err;
    uint64_t last;
};

static void submit_waited(void *arg, pb_err result, bool duplicate, uint64_t last_seq)
{
    struct submit_wait *w = arg;
    pthread_mutex_lock(&w->mu);
    w->err = result;
    w->dup = duplicate;
    w->last = last_seq;
    w->done = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

pb_err pb_delivery_submit(pb_delivery *d, const char *to, const pb_event *evs, size_t n,
                          const char *submission_id, bool *duplicate, uint64_t *last_seq)
{
    struct submit_wait w = {.err = PB_ERR_INTERNAL};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    pb_err err = pb_delivery_submit_async(d, to, evs, n, submission_id, submit_waited, &w);
    if (err == PB_OK) {
        pthread_mutex_lock(&w.mu);
        while (!w.done)
            pthread_cond_wait(&w.cv, &w.mu);
        pthread_mutex_unlock(&w.mu);
        err = w.err;
    }
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
    if (err != PB_OK) return err;
    if (duplicate) *duplicate = w.dup;
    if (last_seq) *last_seq = w.last;
    return PB_OK;
}

int64_t pb_delivery_last_success_s(pb_delivery *d, const char *peer)
{
    pthread_mutex_lock(&d->mu);
    struct peer *p = peer_find(d, peer);
    int64_t t = p ? p->v_last_ok_s : 0;
    pthread_mutex_unlock(&d->mu);
    return t;
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
    struct peer *p = peer_find(d, peer);
    if (p) p->v_mode = PB_MODE_PUSH;
    pthread_mutex_unlock(&d->mu);
    post_msg(d, peer, MSG_OPERATOR, 0);
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

pb_err pb_delivery_flush(pb_delivery *d, const char *peer, char ***peers, size_t *n)
{
    *n = 0;
    if (peers) *peers = NULL;
    if (peer) {
        pb_peer_state st;
        pb_err err = pb_store_peer_state_get(d->o.store, peer, &st);
        if (err != PB_OK) return err;
        pb_peer_mode mode = st.mode;
        pb_peer_state_clear(&st);
        if (mode == PB_MODE_PARKED) return PB_ERR_INVAL;
    }
    char **names = NULL;
    size_t k = 0;
    pb_err err = pb_store_peer_flush(d->o.store, peer, wall_ms(), d->o.node_id != NULL, &names, &k);
    if (err != PB_OK) return err;
    for (size_t i = 0; i < k; i++) {
        PB_INFO(names[i], "operator flush: backoff reset, trying the queue now");
        post_msg(d, names[i], MSG_RELOAD, 0);
    }
    if (peers) {
        *peers = names;
    } else {
        pb_store_strings_free(names, k);
    }
    *n = k;
    return PB_OK;
}

/* The drop or expiry itself, on the calling thread (the admin API's or an executor's):
 * the store's transaction, then its log line, metric, the inbox's waiters and the state
 * machine (or, on another node, the lease holder's scan). */
static pb_err drop_events(pb_delivery *d, const char *peer, int64_t before, bool expiry,
                          pb_drop_result *r)
{
    const char *reason = expiry ? "max_queue_age" : "operator";
    /* events this node delivered whose (lazy) deletion is still pending are not dropped:
     * they are deleted first, as delivered */
    pthread_mutex_lock(&d->mu);
    struct peer *dp = peer_find(d, peer);
    uint64_t acked = dp ? dp->v_acked : 0;
    pthread_mutex_unlock(&d->mu);
    if (acked) {
        pb_err e = pb_store_outbox_ack(d->o.store, peer, acked);
        if (e != PB_OK) return e;
    }
    pb_err err =
        pb_store_outbox_drop(d->o.store, peer, before, reason, wall_ms(), d->o.node_id != NULL, r);
    if (err != PB_OK || r->count == 0) return err;
    char epoch[20];
    snprintf(epoch, sizeof epoch, "%016llx", (unsigned long long)r->epoch);
    pb_log_kv_write(PB_LOG_WARN, peer,
                    PB_KVS(PB_KV_STR("reason", reason), PB_KV_NUM("first_seq", r->first_seq),
                           PB_KV_NUM("last_seq", r->last_seq), PB_KV_NUM("events", r->count),
                           PB_KV_NUM("remaining", r->remaining),
                           PB_KV_NUM("oldest_age_s", (wall_ms() - r->oldest_at) / 1000),
                           PB_KV_STR("epoch", epoch), PB_KV_NUM("inbox_seq", r->notice_seq)),
                    expiry ? "queued events expired unsent"
                           : "queued events dropped by the operator");
    if (d->o.metrics)
        pb_counter_add(
            pb_metric_series(expiry ? d->o.metrics->events_expired : d->o.metrics->events_dropped,
                             NULL),
            r->count);
    pb_delivery_inbox_bump(d);
    pthread_mutex_lock(&d->mu);
    struct peer *p = peer_find(d, peer);
    if (p && r->remaining == 0) {
        p->v_mode = PB_MODE_PUSH;
        p->v_next_wall_ms = 0;
    }
    pthread_mutex_unlock(&d->mu);
    /* submit_test: the state machine hears of the drop late (the store changed first) */
    if (pb_fault("delivery.slow-drop-notice"))
        nanosleep(&(struct timespec){0, 600 * 1000000L}, NULL);
    post_msg(d, peer, MSG_RELOAD, 0);
    return PB_OK;
}

pb_err pb_delivery_drop(pb_delivery *d, const char *peer, pb_drop_result *r)
{
    return drop_events(d, peer, INT64_MAX, false, r);
}

void pb_delivery_set_max_queue_age(pb_delivery *d, unsigned seconds)
{
    atomic_store(&d->max_queue_age_s, seconds);
}

int64_t pb_delivery_next_attempt_in_s(pb_delivery *d, const char *peer)
{
    int64_t r = -1;
    pthread_mutex_lock(&d->mu);
    struct peer *p = peer_find(d, peer);
    if (p && p->v_mode == PB_MODE_QUEUED && p->v_next_wall_ms) {
        int64_t ms = p->v_next_wall_ms - wall_ms();
        r = ms > 0 ? (ms + 999) / 1000 : 0;
    }
    pthread_mutex_unlock(&d->mu);
    return r;
}

bool pb_delivery_peer_mode(pb_delivery *d, const char *peer, pb_peer_mode *mode)
{
    pthread_mutex_lock(&d->mu);
    struct peer *p = peer_find(d, peer);
    if (p) *mode = p->v_mode;
    pthread_mutex_unlock(&d->mu);
    return p != NULL;
}

static void abs_mono(struct timespec *ts, int64_t ms)
{
    ts->tv_sec = ms / 1000;
    ts->tv_nsec = (ms % 1000) * 1000000;
}

void pb_delivery_set_inbox_hook(pb_delivery *d, void (*fn)(void *ctx), void *ctx)
{
    pthread_mutex_lock(&d->submit_mu);
    d->inbox_hook = fn;
    d->inbox_hook_ctx = ctx;
    pthread_mutex_unlock(&d->submit_mu);
}

void pb_delivery_inbox_bump(pb_delivery *d)
{
    pthread_mutex_lock(&d->submit_mu);
    void (*fn)(void *) = d->inbox_hook;
    void *ctx = d->inbox_hook_ctx;
    pthread_mutex_unlock(&d->submit_mu);
    if (fn) fn(ctx);
}

void pb_rename_reports_free(pb_rename_report *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(r[i].peer);
        free(r[i].error);
    }
    free(r);
}

struct rename_msg {
    pb_delivery *d;
    const char *new_id;
    pb_rename_out *rs;
    size_t n;
    uint64_t *before;
};

static void rename_on_loop(void *arg)
{
    struct rename_msg *m = arg;
    pb_delivery *d = m->d;
    for (size_t i = 0; i < m->n; i++) {
        struct peer *p = peer_get(d, m->rs[i].peer);
        pthread_mutex_lock(&d->mu);
        m->before[i] = p->notice_tries;
        pthread_mutex_unlock(&d->mu);
        p->notice = true;
        snprintf(p->notice_old, sizeof p->notice_old, "%s", m->rs[i].old_id);
        snprintf(p->notice_new, sizeof p->notice_new, "%s", m->rs[i].new_id);
        p->notice_attempts = 0;
        pb_ioloop_timer_cancel(d->loop, &p->notice_timer);
        pthread_mutex_lock(&d->mu);
        p->v_notice = true;
        snprintf(p->v_notice_old, sizeof p->v_notice_old, "%s", p->notice_old);
        p->v_notice_since = m->rs[i].renamed_at;
        p->v_notice_err[0] = '\0';
        pthread_mutex_unlock(&d->mu);
    }
    /* only now: a peer's tokens bound to the old ID never meet a moment when neither its
     * notice nor our own ID accepts them */
    pthread_mutex_lock(&d->mu);
    snprintf(d->self, sizeof d->self, "%s", m->new_id);
    pthread_mutex_unlock(&d->mu);
    for (size_t i = 0; i < m->n; i++)
        notice_want(peer_get(d, m->rs[i].peer));
}

pb_err pb_delivery_rename(pb_delivery *d, const char *new_id, int wait_ms,
                          pb_rename_report **reports, size_t *nreports)
{
    char old[PB_SERVER_ID_MAX];
    pb_delivery_server_id(d, old);
    *reports = NULL;
    *nreports = 0;
    if (strcmp(old, new_id) == 0) return PB_ERR_INVAL;
    pb_err err = pb_store_self_rename(d->o.store, old, new_id, wall_ms());
    if (err != PB_OK) return err;
    pb_rename_out *rs = NULL;
    size_t n = 0;
    err = pb_store_rename_out_list(d->o.store, &rs, &n);
    if (err != PB_OK) return err;
    PB_INFO(NULL, "renamed %s -> %s; telling %zu peers", old, new_id, n);
    struct rename_msg m = {d, new_id, rs, n, pb_xcalloc(n ? n : 1, sizeof(uint64_t))};
    pb_ioloop_call(d->loop, rename_on_loop, &m);
    /* Wait for each peer's first answer (bounded). */
    int64_t until = mono_ms() + wait_ms;
    pb_rename_report *out = pb_xcalloc(n ? n : 1, sizeof *out);
    pthread_mutex_lock(&d->mu);
    for (;;) {
        bool all = true;
        for (size_t i = 0; i < n && all; i++) {
            struct peer *p = peer_find(d, rs[i].peer);
            if (p && p->v_notice && p->notice_tries == m.before[i]) all = false;
        }
        if (all || d->stopping || mono_ms() >= until) break;
        struct timespec ts;
        abs_mono(&ts, until);
        pthread_cond_timedwait(&d->notice_cv, &d->mu, &ts);
    }
    for (size_t i = 0; i < n; i++) {
        struct peer *p = peer_find(d, rs[i].peer);
        out[i].peer = pb_xstrdup(rs[i].peer);
        out[i].ok = p && !p->v_notice;
        if (!out[i].ok)
            out[i].error = pb_xstrdup(p && p->v_notice_err[0] ? p->v_notice_err
                                                              : "not answered yet; retrying");
    }
    pthread_mutex_unlock(&d->mu);
    free(m.before);
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
    if (p && p->v_notice) {
        pending = true;
        snprintf(err, errlen, "%s", p->v_notice_err);
    }
    pthread_mutex_unlock(&d->mu);
    return pending;
}

/* ---- for the inbound handlers ---------------------------------------------------------------- */

pb_budget *pb_delivery_budget(pb_delivery *d)
{
    return d->budget;
}

pb_wgate *pb_delivery_wgate(pb_delivery *d)
{
    return d->wgate;
}

const pb_delivery_opts *pb_delivery_options(pb_delivery *d)
{
    return &d->o;
}

void pb_delivery_contact(pb_delivery *d, const char *peer)
{
    /* only what the engine can act on, at most once a second per peer */
    bool post = false;
    int64_t now = mono_ms();
    pthread_mutex_lock(&d->mu);
    struct peer *p = peer_find(d, peer);
    if (p && (p->v_mode == PB_MODE_QUEUED || p->v_notice) && now - p->contact_ms >= 1000) {
        p->contact_ms = now;
        post = true;
    }
    pthread_mutex_unlock(&d->mu);
    if (post) post_msg(d, peer, MSG_CONTACT, 0);
}

bool pb_delivery_pull_gate(pb_delivery *d, const char *from, pb_hrpc_waker *w)
{
    bool wait = false, urgent = false;
    pthread_mutex_lock(&d->mu);
    struct peer *p = peer_find(d, from);
    if (p && p->pulling && !d->stopping && !w) {
        wait = true;
    } else if (p && p->pulling && !d->stopping) {
        if (p->nwaiters == p->capwaiters) {
            p->capwaiters = p->capwaiters ? 2 * p->capwaiters : 4;
            p->waiters = pb_xrealloc(p->waiters, p->capwaiters * sizeof *p->waiters);
        }
        p->waiters[p->nwaiters++] = w;
        wait = true;
        if (!p->urgent_posted) urgent = p->urgent_posted = true;
    }
    pthread_mutex_unlock(&d->mu);
    if (urgent) post_msg(d, from, MSG_URGENT_PULL, 0);
    return wait;
}

void pb_delivery_push_seen(pb_delivery *d, const char *from)
{
    int64_t now = mono_ms();
    bool post = true;
    pthread_mutex_lock(&d->mu);
    struct peer *p = peer_find(d, from);
    if (p) {
        post = now - p->seen_push_ms >= 1000;
        if (post) p->seen_push_ms = now;
    }
    pthread_mutex_unlock(&d->mu);
    if (post) post_msg(d, from, MSG_PUSH_SEEN, 0);
}

bool pb_delivery_claim_foreign(pb_delivery *d, const char *peer)
{
    bool ok = false;
    pthread_mutex_lock(&d->mu);
    struct peer *p = peer_find(d, peer);
    if (p && p->v_mode == PB_MODE_QUEUED && p->busy == BUSY_NONE) {
        p->busy = BUSY_FOREIGN;
        ok = true;
    }
    pthread_mutex_unlock(&d->mu);
    return ok;
}

void pb_delivery_release_foreign(pb_delivery *d, const char *peer)
{
    pthread_mutex_lock(&d->mu);
    struct peer *p = peer_find(d, peer);
    if (p && p->busy == BUSY_FOREIGN) p->busy = BUSY_NONE;
    pthread_mutex_unlock(&d->mu);
    post_msg(d, peer, MSG_WORK, 0); /* the engine finds out whether anything is left */
}

void pb_delivery_pull_acked(pb_delivery *d, const char *peer, uint64_t upto)
{
    post_msg(d, peer, MSG_ACKED, upto);
}

struct renamed_msg {
    pb_delivery *d;
    char old_id[PB_SERVER_ID_MAX], new_id[PB_SERVER_ID_MAX];
};

static void renamed_on_loop(void *arg)
{
    struct renamed_msg *m = arg;
    pb_delivery *d = m->d;
    pthread_mutex_lock(&d->mu);
    struct peer *p = peer_find(d, m->old_id), *q = peer_find(d, m->new_id);
    if (p) {
        ra_drop(p);        /* its queue was relabelled: read it again */
        if (q && q != p) { /* an empty record for the new ID: the renamed one replaces it */
            unhash_locked(d, q);
            q->dead = true;
        }
        unhash_locked(d, p);
        snprintf(p->id, sizeof p->id, "%s", m->new_id);
        size_t b = bucket_of(p->id);
        p->hnext = d->buckets[b];
        d->buckets[b] = p;
    }
    pthread_mutex_unlock(&d->mu);
    free(m);
}

void pb_delivery_peer_renamed(pb_delivery *d, const char *old_id, const char *new_id)
{
    struct renamed_msg *m = pb_xcalloc(1, sizeof *m);
    m->d = d;
    snprintf(m->old_id, sizeof m->old_id, "%s", old_id);
    snprintf(m->new_id, sizeof m->new_id, "%s", new_id);
    pb_ioloop_call(d->loop, renamed_on_loop, m);
    pb_delivery_inbox_bump(d);
}
