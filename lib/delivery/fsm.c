/*
 * fsm - the sending side of one peer as a pure state machine (see fsm.h for the model).
 *
 * Every input is handled by one function below; they share try_start (IDLE with work:
 * read the head unless parked or a probe is not due) and the delay helpers. Inputs that
 * do not belong to the current state (a stale completion, a timer after a contact already
 * started a probe) change nothing.
 */
#include "delivery/fsm.h"

#include <string.h>

#include "util/log.h"

/* A limit past which a RetryInfo is not believed (PROTOCOL.md 7.5 says honour it; a peer
 * asking us to wait a week is asking to be probed at the normal backoff cap). */
static int64_t retry_after_ms(const pb_fsm_cfg *cfg, uint32_t s)
{
    int64_t ms = (int64_t)s * 1000;
    return ms > (int64_t)cfg->backoff_max_ms ? (int64_t)cfg->backoff_max_ms : ms;
}

static int64_t uniform(int64_t lo, int64_t hi, uint32_t rnd)
{
    if (hi <= lo) return lo;
    uint64_t span = (uint64_t)(hi - lo) + 1;
    return lo + (int64_t)(((uint64_t)rnd * span) >> 32);
}

int64_t pb_fsm_backoff_ms(const pb_fsm_cfg *cfg, uint32_t attempts, uint32_t rnd)
{
    int64_t max = cfg->backoff_max_ms, v = cfg->backoff_min_ms;
    for (uint32_t i = 0; i < attempts && v < max; i++)
        v *= 2;
    if (v > max) v = max;
    int64_t hi = v + v / 2;
    return uniform(v, hi < max ? hi : max, rnd);
}

/* The short retry of push mode: base * 2^(tries-1), uniform in [d/2, d]. */
static int64_t retry_ms(const pb_fsm_cfg *cfg, uint32_t tries, uint32_t rnd)
{
    int64_t d = cfg->retry_base_ms;
    for (uint32_t i = 1; i < tries && d < (int64_t)cfg->backoff_max_ms; i++)
        d *= 2;
    return uniform(d / 2, d, rnd);
}

const char *pb_fsm_state_name(pb_fsm_state st)
{
    switch (st) {
    case PB_FSM_IDLE:
        return "idle";
    case PB_FSM_READING:
        return "reading";
    case PB_FSM_PUSHING:
        return "pushing";
    case PB_FSM_RETRY_WAIT:
        return "retry-wait";
    case PB_FSM_EPOCH:
        return "epoch";
    }
    return "?";
}

pb_fsm_result pb_fsm_classify(pb_err err, long status, const char *identifier)
{
    switch (err) {
    case PB_OK:
        return PB_PUSH_OK;
    case PB_ERR_SHUTDOWN:
        return PB_PUSH_STOPPED;
    case PB_ERR_PEER:
    case PB_ERR_PROTO:
        break;
    default: /* no connection, timeout, TLS, our response budget, a refused address */
        return PB_PUSH_TRANSIENT;
    }
    if (status < 400 || status >= 500) return PB_PUSH_TRANSIENT; /* 5xx, odd 2xx/3xx */
    if (status == 408 || status == 429) return PB_PUSH_TRANSIENT;
    if (status == 413) return PB_PUSH_TOO_BIG;
    if (status == 401 && identifier &&
        (strcmp(identifier, "h.bad-time") == 0 || strcmp(identifier, "h.bad-token-signature") == 0))
        return PB_PUSH_TRANSIENT; /* clock skew; the peer re-fetching our key */
    return PB_PUSH_REFUSED;
}

void pb_fsm_init(pb_fsm *f, pb_peer_mode mode, uint32_t attempts, int64_t next_at, uint64_t epoch,
                 uint64_t max_assigned, bool has_work)
{
    memset(f, 0, sizeof *f);
    f->mode = mode;
    f->attempts = attempts;
    f->next_at = mode == PB_MODE_QUEUED ? next_at : 0;
    f->epoch = epoch;
    f->max_assigned = max_assigned;
    f->has_work = has_work;
}

/* ---- actions ---------------------------------------------------------------------------- */

typedef struct out {
    pb_fsm_action *a;
    size_t n;
} out_t;

static void emit(out_t *o, pb_fsm_action a)
{
    if (o->n < PB_FSM_MAX_ACTIONS) o->a[o->n++] = a;
}

static size_t batch_limit(const pb_fsm *f, const pb_fsm_cfg *cfg)
{
    if (!f->postbox || f->acked < f->single_until) return 1;
    size_t b = f->batch ? f->batch : cfg->batch_max;
    return b ? b : 1;
}

static void read_head(pb_fsm *f, const pb_fsm_cfg *cfg, out_t *o)
{
    f->st = PB_FSM_READING;
    f->reread = false;
    emit(o, (pb_fsm_action){
                .kind = PB_FSM_ACT_READ, .from = f->acked + 1, .limit = batch_limit(f, cfg)});
}

static void note(out_t *o, pb_fsm_note n)
{
    emit(o, (pb_fsm_action){.kind = PB_FSM_ACT_NOTE, .note = n});
}

static void persist(out_t *o)
{
    emit(o, (pb_fsm_action){.kind = PB_FSM_ACT_PERSIST});
}

static void timer(pb_fsm *f, out_t *o, int64_t at)
{
    f->next_at = at;
    emit(o, (pb_fsm_action){.kind = PB_FSM_ACT_TIMER, .at = at});
}

/* IDLE with work: start reading unless parked or a queued probe is not due yet. */
static void try_start(pb_fsm *f, const pb_fsm_cfg *cfg, int64_t now, out_t *o)
{
    if (f->st != PB_FSM_IDLE || !f->has_work || f->mode == PB_MODE_PARKED) return;
    if (f->mode == PB_MODE_QUEUED && f->next_at > now) {
        timer(f, o, f->next_at); /* make sure the probe is armed */
        return;
    }
    f->next_at = 0;
    read_head(f, cfg, o);
}

/* ---- inputs ------------------------------------------------------------------------------ */

static void on_read(pb_fsm *f, const pb_fsm_cfg *cfg, const pb_fsm_input *in, out_t *o)
{
    if (f->st != PB_FSM_READING) return;
    if (in->n == 0 && f->reread) {
        /* the read may have looked before the commit that brought the work: again */
        read_head(f, cfg, o);
        return;
    }
    if (in->n == 0) {
        f->has_work = false;
        f->st = PB_FSM_IDLE;
        f->single_until = 0;
        /* a postbox's forgets may wait (its sequence check makes a replay harmless): the
         * next submission's commit does not queue behind this one */
        if (f->acked)
            emit(o,
                 (pb_fsm_action){.kind = PB_FSM_ACT_FORGET, .upto = f->acked, .lazy = f->postbox});
        if (f->mode == PB_MODE_QUEUED) {
            f->mode = PB_MODE_PUSH;
            f->attempts = f->tries = 0;
            timer(f, o, 0);
            persist(o);
            note(o, PB_NOTE_DRAINED);
        }
        return;
    }
    f->first = in->first;
    f->last = in->last;
    f->n = in->n;
    if (in->last > f->max_assigned) f->max_assigned = in->last;
    f->st = PB_FSM_PUSHING;
    emit(o, (pb_fsm_action){.kind = PB_FSM_ACT_PUSH, .from = in->first, .upto = in->last});
}

static void failed(pb_fsm *f, const pb_fsm_cfg *cfg, const pb_fsm_input *in, out_t *o)
{
    int64_t ra = retry_after_ms(cfg, in->retry_after_s);
    if (f->mode == PB_MODE_PUSH) {
        f->tries++;
        if (f->tries <= cfg->push_retries) {
            int64_t d = retry_ms(cfg, f->tries, in->rnd);
            f->st = PB_FSM_RETRY_WAIT;
            timer(f, o, in->now + (d > ra ? d : ra));
            note(o, PB_NOTE_RETRY);
            return;
        }
        f->mode = PB_MODE_QUEUED;
        f->tries = 0;
        f->attempts = 0;
        note(o, PB_NOTE_QUEUED);
    } else {
        f->attempts++;
        note(o, PB_NOTE_PROBE_FAILED);
    }
    int64_t d = pb_fsm_backoff_ms(cfg, f->attempts, in->rnd);
    f->st = PB_FSM_IDLE;
    timer(f, o, in->now + (d > ra ? d : ra));
    persist(o);
}

static void on_pushed(pb_fsm *f, const pb_fsm_cfg *cfg, const pb_fsm_input *in, out_t *o)
{
    if (f->st != PB_FSM_PUSHING) return;
    switch (in->result) {
    case PB_PUSH_OK: {
        bool ours = in->ack != 0 && in->ack_epoch == f->epoch;
        if (ours && in->ack > f->max_assigned) {
            /* The receiver holds more of this epoch than we ever assigned: our store went
             * back (PROTOCOL.md 7.6). Nothing was applied; check, renew, push again. */
            f->st = PB_FSM_EPOCH;
            emit(o, (pb_fsm_action){.kind = PB_FSM_ACT_EPOCH, .upto = in->ack});
            note(o, PB_NOTE_ROLLBACK);
            return;
        }
        uint64_t upto = f->last;
        if (ours && in->ack < f->last) {
            if (in->ack < f->first) { /* nothing of this batch taken: try again */
                pb_fsm_input t = *in;
                t.result = PB_PUSH_TRANSIENT;
                failed(f, cfg, &t, o);
                return;
            }
            upto = in->ack; /* a postbox that takes one event per Push */
            f->batch = 1;
        }
        f->postbox = ours;
        if (upto > f->acked) f->acked = upto;
        f->tries = 0;
        emit(o, (pb_fsm_action){.kind = PB_FSM_ACT_FORGET, .upto = f->acked, .lazy = ours});
        if (f->mode == PB_MODE_QUEUED) {
            f->mode = PB_MODE_PUSH;
            f->attempts = 0;
            timer(f, o, 0);
            persist(o);
            note(o, PB_NOTE_ANSWERS);
        }
        read_head(f, cfg, o);
        return;
    }
    case PB_PUSH_TRANSIENT:
        failed(f, cfg, in, o);
        return;
    case PB_PUSH_TOO_BIG:
        if (f->n > 1) {
            f->batch = (uint32_t)(f->n / 2);
            note(o, PB_NOTE_SHRINK);
            read_head(f, cfg, o);
            return;
        }
        /* one event over the receiver's limit: refused like any other */
        __attribute__((fallthrough));
    case PB_PUSH_REFUSED:
        if (f->n > 1) { /* which event? one at a time until the refused one is alone */
            f->single_until = f->last;
            note(o, PB_NOTE_ISOLATE);
            read_head(f, cfg, o);
            return;
        }
        f->mode = PB_MODE_PARKED;
        f->parked_seq = f->first;
        f->tries = f->attempts = 0;
        f->st = PB_FSM_IDLE;
        timer(f, o, 0);
        persist(o);
        note(o, PB_NOTE_PARKED);
        return;
    case PB_PUSH_STOPPED:
        f->st = PB_FSM_IDLE;
        return;
    }
}

size_t pb_fsm_step(pb_fsm *f, const pb_fsm_cfg *cfg, const pb_fsm_input *in, pb_fsm_action *actions)
{
    out_t o = {actions, 0};
    switch (in->kind) {
    case PB_FSM_IN_WORK:
        if (in->assigned > f->max_assigned) f->max_assigned = in->assigned;
        f->has_work = true;
        if (f->st == PB_FSM_READING) f->reread = true;
        try_start(f, cfg, in->now, &o);
        break;
    case PB_FSM_IN_READ:
        on_read(f, cfg, in, &o);
        break;
    case PB_FSM_IN_READ_FAILED:
        if (f->st != PB_FSM_READING) break;
        f->st = PB_FSM_RETRY_WAIT;
        timer(f, &o, in->now + (in->retry_ms > 1000 ? in->retry_ms : 1000));
        break;
    case PB_FSM_IN_PUSHED:
        on_pushed(f, cfg, in, &o);
        break;
    case PB_FSM_IN_TIMER:
        if (f->st == PB_FSM_RETRY_WAIT) {
            f->st = PB_FSM_IDLE;
            f->next_at = 0;
            if (f->mode == PB_MODE_PARKED) break;
            read_head(f, cfg, &o);
        } else if (f->st == PB_FSM_IDLE && f->mode == PB_MODE_QUEUED && f->next_at &&
                   f->next_at <= in->now) {
            f->next_at = 0;
            try_start(f, cfg, in->now, &o);
        }
        break;
    case PB_FSM_IN_CONTACT:
        /* the peer is alive: probe now rather than at the end of a long backoff (but not
         * more often than backoff_min, however often it calls) */
        if (f->st == PB_FSM_IDLE && f->mode == PB_MODE_QUEUED && f->has_work &&
            f->next_at > in->now + (int64_t)cfg->backoff_min_ms) {
            f->attempts = 0;
            f->next_at = 0;
            try_start(f, cfg, in->now, &o);
        }
        break;
    case PB_FSM_IN_ACKED:
        if (in->ack > f->acked) f->acked = in->ack;
        break;
    case PB_FSM_IN_EPOCH:
        if (f->st != PB_FSM_EPOCH) break;
        f->epoch = in->epoch;
        if (in->assigned > f->max_assigned) f->max_assigned = in->assigned;
        f->postbox = false; /* learn it again in the new epoch */
        read_head(f, cfg, &o);
        break;
    case PB_FSM_IN_OPERATOR:
        if (f->mode != PB_MODE_PARKED) break;
        f->mode = PB_MODE_PUSH;
        f->tries = f->attempts = 0;
        f->parked_seq = 0;
        f->has_work = true;
        persist(&o);
        if (f->st == PB_FSM_IDLE) try_start(f, cfg, in->now, &o);
        break;
    case PB_FSM_IN_RELOAD:
        /* a drop or an expiry started a new epoch: the receiver learns it with the next
         * Push (batches again once it acknowledges in it) */
        if (in->epoch != f->epoch) {
            f->epoch = in->epoch;
            f->postbox = false;
            f->single_until = 0;
        }
        if (in->mode == PB_MODE_PARKED) break;            /* retry and drop-parked are for that */
        if (f->mode == PB_MODE_PARKED) f->parked_seq = 0; /* its parked event was dropped */
        f->mode = in->mode;
        f->attempts = in->attempts;
        f->tries = 0;
        if (in->n > 0) f->has_work = true;
        if (f->st == PB_FSM_IDLE) {
            f->next_at = in->mode == PB_MODE_QUEUED ? in->next_at : 0;
            if (f->has_work) {
                try_start(f, cfg, in->now, &o);
            } else {
                timer(f, &o, f->next_at);
            }
        }
        break;
    case PB_FSM_IN_LOADED:
        if (f->st != PB_FSM_IDLE) break;
        f->mode = in->mode;
        f->attempts = in->attempts;
        f->next_at = in->mode == PB_MODE_QUEUED ? in->next_at : 0;
        try_start(f, cfg, in->now, &o);
        break;
    }
    return o.n;
}
