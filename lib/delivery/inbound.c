/*
 * inbound - the PostboxService handlers (see inbound.h for the rules).
 *
 * Handlers run on listener threads and do local work only (store reads and commits); a
 * wait on something remote (a Pull from the sender, the key served at a new ID) defers
 * the request (pb_hrpc_defer), and the handler runs again from the top when woken, so
 * everything before the deferral is idempotent and nothing is stored before it. A Push's
 * commit is queued instead of waited for on the thread (pb_hrpc_defer_local, the job kept
 * as the request's state: struct push_job), so that Pushes from many peers share commits
 * however few the listener threads are; the handler's next run answers it.
 */
#include "delivery/inbound.h"

#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "delivery/wgate.h"
#include "util/fault.h"
#include "util/health.h"
#include "util/log.h"
#include "util/mem.h"
#include "util/serverid.h"
#include "wire/wire.h"

#define ID_BAD "hrpc.http.bad-unary-request"
#define ID_UNAVAILABLE "hrpc.unavailable"
#define ID_EXHAUSTED "hrpc.resource-exhausted"
#define ID_INTERNAL "hrpc.internal-server-error"

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A store failure's answer. An unavailable store (a full disk included, which peers are
 * not told) is a 503 with RetryInfo, reported to the store-health tracker instead of a
 * line per refused request. */
static void store_failure(pb_hrpc_reply *rep, pb_err err, const char *what)
{
    if (pb_health_unavailable(err)) {
        pb_hrpc_reply_error(rep, 503, ID_UNAVAILABLE, "%s: store unavailable, try again", what);
        rep->retry_after = 1;
        rep->logged = true;
        pb_health_fail(pb_health_store(), err, NULL, "%s refused: %s", what, pb_strerror(err));
    } else {
        pb_hrpc_reply_error(rep, 500, ID_INTERNAL, "%s: %s", what, pb_strerror(err));
    }
}

void pb_inbound_contact(void *ctx, const char *peer, bool bound)
{
    pb_delivery_contact(ctx, peer);
}

/* ---- Push ------------------------------------------------------------------------------------ */

/* A batch of a window (postbox_after): is everything before it applied? The gate knows
 * what this process committed; the store is asked when the gate knows nothing of that
 * sender's epoch, or (ask) when the batch already waited once. *seen (may be NULL): the
 * store's last applied sequence number of the batch's epoch when the store was asked (else
 * left as it was). */
static bool window_ready(pb_delivery *d, const pb_hrpc_request *req, const pb_push_req *pr,
                         bool ask, uint64_t *seen)
{
    pb_wgate *g = pb_delivery_wgate(d);
    bool known = false;
    if (pb_wgate_ready(g, req->peer, pr->epoch, pr->after, &known)) return true;
    if (known && !ask) return false;
    uint64_t ep = 0, rs = 0;
    if (pb_store_recv_latest(pb_delivery_options(d)->store, req->peer, &ep, &rs) != PB_OK)
        return false; /* not known to be applicable: it waits or is refused */
    if (ep == pr->epoch && rs) pb_wgate_applied(g, req->peer, ep, rs, pb_ioloop_now_ms());
    if (seen && ep == pr->epoch) *seen = rs;
    return pb_wgate_ready(g, req->peer, pr->epoch, pr->after, NULL);
}

/* On a node of several (node_id), another node may apply the batches in front of a held
 * one, and this node's gate hears only of its own commits: a held batch asks the store
 * after HOLD_POLL_MS, then at doubling intervals up to HOLD_POLL_MAX_MS, until its hold
 * (window_hold_ms) ends. The batches in front were sent before it and normally arrive
 * within milliseconds; one still missing after a second is probably lost, and asking
 * every 20 ms (synchronous store reads on a listener thread) would let a sender's held
 * batches cost the store 50 reads a second each. But while the store shows the batches in
 * front being applied (by the other nodes, each also holding its batch for the one before
 * it), the interval starts again at HOLD_POLL_MS: a chain of batches spread over the nodes
 * moves one link per short poll, not per doubled one (with the doubling, 16 batches
 * alternating between two nodes took 5 s, and the last were refused at window_hold_ms).
 * The hold's end, next interval and the store's point last seen are kept with the request
 * (its state, until a commit's job replaces it). */
#define HOLD_POLL_MS 20
#define HOLD_POLL_MAX_MS 1000

/* What a Push request keeps across its runs (its state): a hold, then its commit's job. */
enum push_state_kind { PUSH_HOLD = 1, PUSH_JOB };

struct push_hold {
    enum push_state_kind kind; /* PUSH_HOLD */
    int64_t until_ms;          /* pb_ioloop_now_ms() at which the hold ends */
    int poll_ms;               /* the next wait before asking the store again */
    unsigned polls;            /* the store asked so far (debug log) */
    uint64_t seen;             /* the store's last applied sequence number at the last poll */
    bool full;                 /* the gate had no room: refused at the next run */
};

/* Suspends a batch that is not applicable yet until this node applies what is in front of
 * it or its wait ends (on a node of several: a poll, hold set or made). False: it cannot
 * wait (no room, its hold is over) and is to be refused. */
static bool window_hold(pb_delivery *d, const pb_hrpc_request *req, const pb_push_req *pr,
                        struct push_hold *hold)
{
    const pb_delivery_opts *o = pb_delivery_options(d);
    pb_wgate *g = pb_delivery_wgate(d);
    int64_t now = pb_ioloop_now_ms();
    int wait = (int)o->window_hold_ms;
    if (hold && hold->full) return false;
    if (!hold && !pb_wgate_room(g, req->peer, now)) return false;
    if (o->node_id) {
        if (!hold) {
            hold = pb_xcalloc(1, sizeof *hold);
            hold->kind = PUSH_HOLD;
            hold->until_ms = now + o->window_hold_ms;
            hold->poll_ms = HOLD_POLL_MS;
            pb_hrpc_set_state(req, hold, free);
        }
        int64_t left = hold->until_ms - now;
        if (left <= 0) return false;
        wait = left < hold->poll_ms ? (int)left : hold->poll_ms;
        hold->poll_ms = hold->poll_ms * 2 < HOLD_POLL_MAX_MS ? hold->poll_ms * 2 : HOLD_POLL_MAX_MS;
    }
    pb_hrpc_waker *w = pb_hrpc_defer(req, wait);
    pb_wgate_verdict v = pb_wgate_wait(g, req->peer, pr->epoch, pr->after, w, now, wait);
    if (v != PB_WGATE_WAIT) { /* applicable after all, or no room: runs again at once */
        if (v == PB_WGATE_FULL && hold) hold->full = true;
        pb_hrpc_wake(w);
    }
    return true;
}

static void window_refuse(const pb_delivery_opts *o, pb_hrpc_reply *rep, const pb_push_req *pr)
{
    if (o->metrics) pb_counter_inc(pb_metric_get(o->metrics->push_ahead, "refused"));
    pb_hrpc_reply_error(rep, 503, ID_UNAVAILABLE,
                        "events up to %llu (before this batch) are not here yet: send them "
                        "first, then this batch again",
                        (unsigned long long)pr->after);
    rep->retry_after = 1;
    rep->logged = true; /* the sender's window shrinks; not an error of ours */
}

/* A Push whose commit is queued (pb_delivery_receive_async): the request waits for it,
 * holding its answered slot and no thread, and runs again once the store answered
 * (push_answer). Two references: the request's (freed with it) and the store job's. The
 * store's callback fills err and rr before `done` (release), read after it (acquire). */
struct push_job {
    enum push_state_kind kind; /* PUSH_JOB (first: the request's state is a hold or a job) */
    atomic_int refs;
    atomic_bool done;
    pb_push_req pr; /* decoded; its events are read by the commit */
    bool held;      /* a batch of a window that waited for the batches before it */
    pb_hrpc_waker *w;
    pb_err err;
    pb_recv_result rr;
};

/* Longest a received Push waits for its commit before a retryable 503 (the store's own
 * failures answer sooner: an unavailable store fails its writes). */
#define PUSH_COMMIT_WAIT_MS 60000

static void push_job_unref(void *arg)
{
    struct push_job *j = arg;
    if (atomic_fetch_sub(&j->refs, 1) != 1) return;
    pb_push_req_clear(&j->pr);
    free(j);
}

/* The store's callback (a store thread), or the handler's when nothing could be queued. */
static void push_committed(void *arg, pb_err result, const pb_recv_result *res)
{
    struct push_job *j = arg;
    j->err = result;
    if (res) j->rr = *res;
    pb_hrpc_waker *w = j->w;
    atomic_store_explicit(&j->done, true, memory_order_release);
    pb_hrpc_wake(w);
    push_job_unref(j);
}

/* The Push's answer once its commit is done: what the commit changed is announced (held
 * window batches, metrics, the log line) and the sender acknowledged. */
static void push_answer(pb_delivery *d, const pb_hrpc_request *req, pb_hrpc_reply *rep,
                        struct push_job *j)
{
    const pb_delivery_opts *o = pb_delivery_options(d);
    if (!atomic_load_explicit(&j->done, memory_order_acquire)) {
        pb_hrpc_reply_error(rep, 503, ID_UNAVAILABLE,
                            "Push: the store did not answer in time, try again");
        rep->retry_after = 1;
        return;
    }
    const pb_push_req *pr = &j->pr;
    if (j->err != PB_OK) {
        /* what was queued behind this batch will fail too: none may follow it at once */
        if (pr->seqs) pb_wgate_failed(pb_delivery_wgate(d), req->peer, pr->epoch);
        if (j->err == PB_ERR_BUSY) /* queued behind a batch that failed: not applicable */
            window_refuse(o, rep, pr);
        else
            store_failure(rep, j->err, "Push");
        return;
    }
    const pb_recv_result rr = j->rr;
    pb_fault_crash("delivery.crash-after-commit");
    /* batches of this sender's window held behind this one may go now */
    if (pr->seqs && rr.ack)
        pb_wgate_applied(pb_delivery_wgate(d), req->peer, rr.epoch, rr.ack, pb_ioloop_now_ms());
    /* the inbox's waiters were woken by the commit's callback (pb_delivery_receive_async) */
    if (o->metrics && j->held) pb_counter_inc(pb_metric_get(o->metrics->push_ahead, "applied"));
    if (o->metrics) {
        for (size_t i = rr.duplicates; i < pr->n; i++) /* duplicates are the lowest numbers */
            pb_counter_inc(pb_metric_get(o->metrics->events_received,
                                         pb_event_kind_name(pr->evs[i].kind), "push"));
        pb_counter_add(pb_metric_get(o->metrics->events_duplicate, "push"), rr.duplicates);
    }
    /* the receiver's one line per accepted Push: the sender's sequence numbers (as its
     * own "push sent" line and its submission answer name them); a Push of nothing new
     * (events we pulled already) at debug */
    pb_log_level lv = rr.duplicates < pr->n ? pb_log_delivery_level() : PB_LOG_DEBUG;
    if (pr->seqs)
        pb_log_kv_write(lv, req->peer,
                        PB_KVS(PB_KV_STR("kind", "push"), PB_KV_NUM("first_seq", pr->seqs[0]),
                               PB_KV_NUM("last_seq", pr->seqs[pr->n - 1]),
                               PB_KV_NUM("events", pr->n - rr.duplicates),
                               PB_KV_NUM("duplicates", rr.duplicates),
                               PB_KV_STR("status", "accepted")),
                        "push received");
    else
        pb_log_kv_write(
            lv, req->peer,
            PB_KVS(PB_KV_STR("kind", "push"), PB_KV_NUM("events", pr->n - rr.duplicates),
                   PB_KV_NUM("duplicates", rr.duplicates), PB_KV_STR("status", "accepted")),
            "push received");
    pb_delivery_push_seen(d, req->peer);
    /* A sender of this project learns what we hold of its stream. */
    if (pr->seqs) {
        /* the window, shared with the other senders of its address (wgate.h) */
        unsigned w = pb_wgate_window(pb_delivery_wgate(d), req->client_addr, req->peer,
                                     o->window_announce, pb_ioloop_now_ms());
        pb_wire_push_resp_encode_win(rr.ack, pr->epoch, w > 1 ? w : 0, &rep->body);
    }
}

void pb_inbound_push(void *ctx, const pb_hrpc_request *req, pb_hrpc_reply *rep)
{
    pb_delivery *d = ctx;
    const pb_delivery_opts *o = pb_delivery_options(d);
    const enum push_state_kind *kind = req->state;
    if (kind && *kind == PUSH_JOB) { /* its commit is done (or its wait is over) */
        push_answer(d, req, rep, req->state);
        return;
    }
    /* a held window batch on a node of several (window_hold); invalid once a job replaces it */
    struct push_hold *hold = kind ? req->state : NULL;
    pb_push_req pr = {0};
    pb_err err = pb_wire_push_decode(req->body, req->body_len, o->push_max_events, &pr);
    if (err == PB_ERR_TOO_BIG) {
        pb_hrpc_reply_error(rep, 413, ID_EXHAUSTED, "more than %u events in one Push",
                            o->push_max_events);
        return;
    }
    if (err != PB_OK) {
        pb_hrpc_reply_error(rep, 400, ID_BAD, "body is not a valid PushRequest: %s",
                            pb_strerror(err));
        return;
    }
    if (!req->bound) {
        /* Not bound to us: exactly a foreign peer's Push (PROTOCOL.md 7.1). */
        for (size_t i = 1; i < pr.n; i++)
            pb_event_clear(&pr.evs[i]);
        pr.n = 1;
        free(pr.seqs);
        pr.seqs = NULL;
        pr.epoch = 0;
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
    if (!req->resumed && pb_delivery_pull_gate(d, req->peer, NULL)) {
        pb_hrpc_waker *w = pb_hrpc_defer(req, (int)o->push_wait_ms);
        if (!pb_delivery_pull_gate(d, req->peer, w)) pb_hrpc_wake(w); /* it just ended */
        goto out;
    }
    /* A batch of a window (PROTOCOL.md 5) whose predecessors are not all applied: wait for
     * them (suspended, bounded in time and number: wgate.h), else a retryable refusal. */
    /* (honoured even when we announce no window: applying across a gap would lose events) */
    /* On a node of several the store is asked whenever the gate does not know the batch
     * applicable, and a held batch asks it again at each poll (window_hold). */
    bool windowed = pr.seqs && pr.after, polled = windowed && hold;
    if (polled && req->timed_out)
        PB_DEBUG(req->peer, "window batch after %llu held: asking the store (poll %u)",
                 (unsigned long long)pr.after, ++hold->polls);
    uint64_t seen = hold ? hold->seen : 0;
    if (req->timed_out && !(polled && window_ready(d, req, &pr, true, &seen))) {
        if (polled) {
            if (seen > hold->seen) { /* the batches in front move: ask again soon */
                hold->seen = seen;
                hold->poll_ms = HOLD_POLL_MS;
            }
            if (!window_hold(d, req, &pr, hold)) window_refuse(o, rep, &pr);
        } else if (windowed) {
            window_refuse(o, rep, &pr);
        } else {
            pb_hrpc_reply_error(rep, 503, ID_UNAVAILABLE, "a Pull from you is in progress");
            rep->retry_after = 1;
        }
        goto out;
    }
    if (!req->timed_out && windowed &&
        !window_ready(d, req, &pr, req->resumed || o->node_id != NULL, NULL)) {
        if ((req->resumed && !polled) || !window_hold(d, req, &pr, hold))
            window_refuse(o, rep, &pr);
        goto out;
    }
    if (req->resumed && !windowed)
        PB_INFO(req->peer, "push processed after our Pull from this peer");
    uint32_t ra = 0;
    /* the sender's budget, its key's (many IDs, one key) and its address's */
    pb_budget_who who = {.sender = req->peer, .key = req->peer_key, .addr = req->client_addr};
    pb_budget_scope sc = pb_budget_take_who(pb_delivery_budget(d), &who, pr.n, req->body_len,
                                            pb_ioloop_now_ms(), &ra);
    if (sc != PB_BUDGET_OK) {
        const char *scope = pb_budget_scope_name(sc);
        PB_WARN(req->peer,
                "push of %zu events refused: the %s's receive budget is used (retry "
                "in %u s)",
                pr.n, scope, ra);
        if (o->metrics) pb_counter_inc(pb_metric_get(o->metrics->receive_refused, scope));
        pb_hrpc_reply_error(rep, 429, ID_EXHAUSTED,
                            "receive budget of this %s used: a sender may store at most %llu "
                            "events and %llu bytes per %u s",
                            scope, (unsigned long long)o->budget.events,
                            (unsigned long long)o->budget.bytes, o->budget.interval_s);
        rep->retry_after = ra;
        goto out;
    }
    /* The commit is queued and the request waits for it without a thread (keeping its
     * answered slot), so that Pushes from many peers share commits. */
    struct push_job *j = pb_xcalloc(1, sizeof *j);
    j->kind = PUSH_JOB;
    atomic_init(&j->refs, 2);
    atomic_init(&j->done, false);
    j->pr = pr;
    pr = (pb_push_req){0};
    j->held = windowed && req->resumed;
    pb_hrpc_set_state(req, j, push_job_unref);
    j->w = pb_hrpc_defer_local(req, PUSH_COMMIT_WAIT_MS);
    uint64_t epoch = j->pr.epoch, last = j->pr.seqs && j->pr.n ? j->pr.seqs[j->pr.n - 1] : 0;
    err = pb_delivery_receive_async(d, req->peer, epoch, windowed ? j->pr.after : 0, j->pr.evs,
                                    j->pr.seqs, j->pr.n, push_committed, j);
    if (err != PB_OK) {
        push_committed(j, err, NULL); /* answered at once */
    } else if (last) {
        /* the batches of this window behind it may be queued now (ordered stores) */
        pb_wgate_queued(pb_delivery_wgate(d), req->peer, epoch, last, pb_ioloop_now_ms());
    }
out:
    pb_push_req_clear(&pr);
}

/* ---- Pull -------------------------------------------------------------------------------------
 */

/* A foreign peer's Pull: the events it was answered are forgotten once the answer is
 * written, and the claim on the peer is released. */
struct foreign_pull {
    pb_delivery *d;
    char peer[PB_SERVER_ID_MAX];
    uint64_t last_seq;
};

static void foreign_pull_done(void *ctx, bool sent_ok)
{
    struct foreign_pull *fp = ctx;
    const pb_delivery_opts *o = pb_delivery_options(fp->d);
    if (sent_ok && fp->last_seq) {
        pb_err err = pb_store_outbox_ack(o->store, fp->peer, fp->last_seq);
        if (pb_health_unavailable(err))
            pb_health_fail(pb_health_store(), err, fp->peer, "cannot forget pulled events: %s",
                           pb_strerror(err));
        else if (err != PB_OK)
            PB_ERROR(fp->peer, "cannot forget pulled events: %s", pb_strerror(err));
        pb_delivery_pull_acked(fp->d, fp->peer, fp->last_seq);
    }
    pb_delivery_release_foreign(fp->d, fp->peer);
    free(fp);
}

static void answer_pull(pb_delivery *d, const char *peer, uint64_t from, size_t max_items,
                        size_t max_bytes, bool with_seqs, uint64_t epoch, pb_hrpc_reply *rep,
                        uint64_t *last_seq)
{
    const pb_delivery_opts *o = pb_delivery_options(d);
    pb_outbox_item *items = NULL;
    size_t n = 0;
    *last_seq = 0;
    pb_err err = pb_store_outbox_read(o->store, peer, from, max_items, max_bytes, &items, &n);
    if (err != PB_OK) {
        store_failure(rep, err, "Pull");
        return;
    }
    uint64_t *seqs = pb_xcalloc(n ? n : 1, sizeof *seqs);
    for (size_t i = 0; i < n; i++) {
        pb_wire_pull_resp_append_event(&items[i].ev, &rep->body);
        seqs[i] = items[i].seq;
    }
    if (with_seqs) pb_wire_pull_resp_append_seqs(seqs, n, epoch, &rep->body);
    if (n) { /* the sender's one line per Pull answer that moved events */
        *last_seq = items[n - 1].seq;
        pb_log_kv_write(pb_log_delivery_level(), peer,
                        PB_KVS(PB_KV_STR("kind", "pull"), PB_KV_NUM("first_seq", items[0].seq),
                               PB_KV_NUM("last_seq", items[n - 1].seq), PB_KV_NUM("events", n),
                               PB_KV_STR("status", "answered")),
                        "pull answered");
    }
    free(seqs);
    pb_outbox_items_free(items, n);
}

void pb_inbound_pull(void *ctx, const pb_hrpc_request *req, pb_hrpc_reply *rep)
{
    pb_delivery *d = ctx;
    const pb_delivery_opts *o = pb_delivery_options(d);
    pb_pull_req pr = {0};
    if (pb_wire_pull_req_decode(req->body, req->body_len, &pr) != PB_OK) {
        pb_hrpc_reply_error(rep, 400, ID_BAD, "body is not a valid PullRequest");
        return;
    }
    if (!req->bound) pr = (pb_pull_req){0}; /* a foreign peer's Pull (PROTOCOL.md 7.1) */
    if (pb_fault("delivery.slow-pull-answer")) {
        struct timespec ts = {2, 0};
        nanosleep(&ts, NULL);
    }
    uint64_t last = 0;
    if (pr.next_seq == 0) {
        /* Foreign puller: only a queue that nobody else is draining is answered. */
        if (!pb_delivery_claim_foreign(d, req->peer)) return; /* empty PullResponse */
        if (o->node_id) {
            bool held = false;
            pb_store_lease_acquire(o->store, req->peer, o->node_id, wall_ms(), o->lease_ttl_ms,
                                   &held);
            if (!held) { /* another node delivers this peer: not ours to answer */
                pb_delivery_release_foreign(d, req->peer);
                return;
            }
        }
        answer_pull(d, req->peer, 1, o->pull_batch, o->pull_max_bytes, false, 0, rep, &last);
        struct foreign_pull *fp = pb_xcalloc(1, sizeof *fp);
        fp->d = d;
        snprintf(fp->peer, sizeof fp->peer, "%s", req->peer);
        fp->last_seq = rep->status == 200 ? last : 0;
        rep->on_done = foreign_pull_done;
        rep->on_done_ctx = fp;
        return;
    }
    /* A postbox of this project: it acknowledges what it holds in our epoch. */
    pb_peer_state st;
    pb_err err = pb_store_peer_state_get(o->store, req->peer, &st);
    if (err == PB_ERR_NOT_FOUND) return; /* nothing was ever queued for it */
    if (err != PB_OK) {
        store_failure(rep, err, "Pull");
        return;
    }
    uint64_t epoch = st.send_epoch, assigned = st.next_seq ? st.next_seq - 1 : 0, from = 1;
    pb_peer_mode mode = st.mode;
    pb_peer_state_clear(&st);
    if (pr.epoch == epoch) {
        uint64_t upto = pr.next_seq - 1;
        if (upto > assigned) {
            /* it holds more of this epoch than we assigned: our store went back */
            err = pb_store_peer_new_epoch(o->store, req->peer, &epoch);
            if (err != PB_OK) {
                store_failure(rep, err, "Pull");
                return;
            }
            PB_WARN(req->peer,
                    "the puller acknowledges %llu but this store assigned only up to %llu "
                    "(restored from a backup?): new epoch %016llx",
                    (unsigned long long)upto, (unsigned long long)assigned,
                    (unsigned long long)epoch);
        } else {
            if (upto > 0) {
                err = pb_store_outbox_ack(o->store, req->peer, upto);
                if (err != PB_OK) {
                    store_failure(rep, err, "Pull");
                    return;
                }
                pb_delivery_pull_acked(d, req->peer, upto);
            }
            from = pr.next_seq;
            /* a pipelined Pull (PROTOCOL.md 5): the puller holds what is below from_seq in
             * memory, not yet applied; it still acknowledges only up to next_seq - 1. A
             * test fault point answers as a sender that does not know the field. */
            if (pr.from_seq > from && !pb_fault("delivery.pull-ignore-from")) {
                PB_DEBUG(req->peer, "pipelined pull: answered from %llu (acknowledged up to %llu)",
                         (unsigned long long)pr.from_seq, (unsigned long long)upto);
                from = pr.from_seq;
            }
        }
    }
    if (mode == PB_MODE_PARKED) return; /* paused for the operator: an empty answer */
    size_t max_items = o->pull_batch, max_bytes = o->pull_max_bytes;
    if (pr.max_events && pr.max_events < max_items) max_items = (size_t)pr.max_events;
    if (pr.max_bytes && pr.max_bytes < max_bytes) max_bytes = (size_t)pr.max_bytes;
    answer_pull(d, req->peer, from, max_items ? max_items : 1, max_bytes, true, epoch, rep, &last);
}

/* ---- NotifyNewId -------------------------------------------------------------------------- */

static void key_ready(void *ctx, pb_err err, const uint8_t key[32])
{
    pb_hrpc_wake(ctx);
}

void pb_inbound_notify(void *ctx, const pb_hrpc_request *req, pb_hrpc_reply *rep)
{
    pb_delivery *d = ctx;
    const pb_delivery_opts *o = pb_delivery_options(d);
    char *raw = NULL, new_id[PB_SERVER_ID_MAX] = "";
    uint8_t *proof = NULL, old_key[32], new_key[32];
    size_t proof_len = 0;
    pb_auth_claims c = {0};
    uint64_t now = (uint64_t)time(NULL);
    /* The token names the old ID and must verify with the key we hold for it. */
    pb_auth_verdict v = pb_auth_precheck(req->authorization, now, o->policy, &c);
    bool body_ok =
        pb_wire_notify_decode(req->body, req->body_len, &raw, &proof, &proof_len) == PB_OK &&
        pb_serverid_normalize(raw, new_id) == PB_OK;
    if (v != PB_AUTH_OK) {
        pb_hrpc_reply_error(rep, pb_auth_verdict_status(v), pb_auth_verdict_identifier(v), "%s",
                            pb_auth_verdict_message(v));
        goto out;
    }
    pb_err err = pb_keyfetch_stored(o->keyfetch, c.server_id, old_key);
    if (err == PB_ERR_NOT_FOUND) {
        /* Unknown old ID: unless this repeats a rename we made already. */
        if (body_ok && pb_keyfetch_stored(o->keyfetch, new_id, new_key) == PB_OK &&
            pb_auth_claims_verify(o->policy, &c, new_key)) {
            PB_INFO(c.server_id, "repeated rename notice to %s acknowledged", new_id);
            goto out;
        }
        pb_hrpc_reply_error(rep, 403, "h.host-not-allowed", "unknown server %s", c.server_id);
        goto out;
    }
    if (err != PB_OK) {
        store_failure(rep, err, "NotifyNewId");
        goto out;
    }
    if (!pb_auth_claims_verify(o->policy, &c, old_key)) {
        pb_hrpc_reply_error(rep, 401, "h.bad-token-signature", "%s",
                            pb_auth_verdict_message(PB_AUTH_BAD_SIGNATURE));
        goto out;
    }
    pb_delivery_contact(d, c.server_id);
    if (!body_ok) {
        pb_hrpc_reply_error(rep, 400, ID_BAD, "new_server_id is not a valid server ID");
        goto out;
    }
    if (strcmp(new_id, c.server_id) == 0) {
        pb_hrpc_reply_error(rep, 400, ID_BAD, "new_server_id equals the current ID");
        goto out;
    }
    if (req->timed_out) {
        pb_hrpc_reply_error(rep, 503, ID_UNAVAILABLE, "the key served at %s is being fetched",
                            new_id);
        rep->retry_after = 1;
        goto out;
    }
    /* The key served at the new ID (the one we hold when it is a known peer; else fetched
     * off this thread, bounded). */
    bool stored = false;
    uint32_t ra = 0;
    pb_hrpc_waker *w = req->resumed ? NULL : pb_hrpc_defer(req, 900);
    err = pb_keyfetch_get(o->keyfetch, new_id, false, NULL, new_key, &stored, w ? key_ready : NULL,
                          w, &ra);
    if (err == PB_ERR_BUSY) {
        if (!w) { /* woken, and still not there */
            pb_hrpc_reply_error(rep, 503, ID_UNAVAILABLE, "the key served at %s is being fetched",
                                new_id);
            rep->retry_after = 1;
        }
        goto out; /* deferred: runs again when the fetch ends */
    }
    if (w) pb_hrpc_wake(w); /* not needed: runs again at once */
    if (w) goto out;
    if (err != PB_OK) {
        pb_hrpc_reply_error(rep, 503, ID_UNAVAILABLE, "cannot fetch the key served at %s: %s",
                            new_id, pb_strerror(err));
        rep->retry_after = ra ? ra : 30;
        goto out;
    }
    if (sodium_memcmp(old_key, new_key, 32) != 0) {
        PB_WARN(c.server_id, "rename to %s refused: the key served there differs", new_id);
        pb_hrpc_reply_error(rep, 403, "h.bad-new-id", "the key served at %s is not yours", new_id);
        goto out;
    }
    /* Proof of possession (PROTOCOL.md 7.2), honoured only in a request bound to us. */
    bool proven = false;
    if (c.bound && proof) {
        proven =
            pb_auth_proof_check(proof, proof_len, c.server_id, new_id, old_key, now, o->policy);
        if (!proven) {
            PB_WARN(c.server_id, "rename to %s refused: the proof of possession does not verify",
                    new_id);
            pb_hrpc_reply_error(rep, 403, "h.bad-new-id",
                                "the proof of possession of %s does not verify", new_id);
            goto out;
        }
    }
    if (!proven) {
        if (stored) { /* the rename would fail: the new ID is a peer of its own */
            pb_hrpc_reply_error(rep, 409, "h.new-id-in-use", "%s is already a known server",
                                new_id);
            goto out;
        }
        err = pb_store_rename_in_add(o->store, c.server_id, new_id, wall_ms());
        if (err == PB_ERR_EXISTS) {
            pb_hrpc_reply_error(rep, 409, "h.new-id-in-use",
                                "a rename to %s is pending for another server", new_id);
            goto out;
        }
        if (err == PB_ERR_TOO_BIG) { /* the earlier ones are kept: one of them may be genuine */
            pb_hrpc_reply_error(rep, 429, ID_EXHAUSTED,
                                "%d renames of %s are pending already; prove one (a request "
                                "whose token names the new ID) or retry when they expire",
                                PB_STORE_RENAMES_IN_MAX, c.server_id);
            rep->retry_after = 3600;
            goto out;
        }
        if (err != PB_OK) {
            store_failure(rep, err, "NotifyNewId");
            goto out;
        }
        PB_WARN(c.server_id,
                "rename to %s pending: it takes effect once a request signed with this key "
                "names %s (expires in 24 h)",
                new_id, new_id);
        goto out;
    }
    err = pb_store_peer_rename(o->store, c.server_id, new_id, new_key, wall_ms());
    if (err == PB_ERR_EXISTS) {
        pb_hrpc_reply_error(rep, 409, "h.new-id-in-use", "%s is already a known server", new_id);
        goto out;
    }
    if (err == PB_ERR_NOT_FOUND) {
        pb_hrpc_reply_error(rep, 403, "h.host-not-allowed", "unknown server %s", c.server_id);
        goto out;
    }
    if (err != PB_OK) {
        store_failure(rep, err, "NotifyNewId");
        goto out;
    }
    pb_delivery_peer_renamed(d, c.server_id, new_id);
    PB_INFO(c.server_id, "peer renamed itself to %s (proof verified): everything re-labelled",
            new_id);
out:
    pb_auth_claims_clear(&c);
    free(raw);
    free(proof);
}

/* ---- pending renames: completed by the first request naming the new ID ----------------------- */

bool pb_inbound_rename_key(void *ctx, const char *server_id, uint8_t key[32])
{
    pb_delivery *d = ctx;
    const pb_delivery_opts *o = pb_delivery_options(d);
    char *old = NULL;
    int64_t created = 0;
    bool ok = pb_store_rename_in_find(o->store, server_id, &old, &created) == PB_OK &&
              created >= wall_ms() - 24LL * 60 * 60 * 1000 &&
              pb_store_peer_key_get(o->store, old, key) == PB_OK;
    free(old);
    return ok;
}

pb_err pb_inbound_rename_proven(void *ctx, const char *server_id)
{
    pb_delivery *d = ctx;
    const pb_delivery_opts *o = pb_delivery_options(d);
    char *old = NULL;
    int64_t created = 0;
    uint8_t key[32];
    pb_err err = pb_store_rename_in_find(o->store, server_id, &old, &created);
    if (err == PB_OK) err = pb_store_peer_key_get(o->store, old, key);
    if (err == PB_OK) err = pb_store_peer_rename(o->store, old, server_id, key, wall_ms());
    if (err == PB_OK) {
        pb_delivery_peer_renamed(d, old, server_id);
        PB_INFO(old, "peer proved its new ID %s: everything re-labelled", server_id);
    } else {
        PB_WARN(server_id, "cannot complete the pending rename: %s", pb_strerror(err));
    }
    free(old);
    return err;
}
