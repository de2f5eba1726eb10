/*
 * delivery - the delivery engine: PROTOCOL.md sections 4 to 7 on top of the store, the
 * I/O loop and the hRPC client.
 *
 * Sending (this server S, peer R): every submitted event is first appended to R's outbox
 * in the store (durable, numbered per peer from 1), then R's state machine (fsm.h) pushes
 * the outbox head, one Push in flight per peer, in order; to a postbox of this project a
 * Push carries a batch. Transfers wait for a slot (sched.h: a global cap, round-robin among
 * peers with due work, pulls in a class of their own) and run on the I/O loop (ioloop.h):
 * no thread per peer, so hung peers cost a slot each until their timeout, never a thread,
 * and never delay the others. Events leave the outbox only when R has them: a 200 to Push
 * (and, between postboxes, the acknowledged sequence number), an acknowledged Pull, or a
 * Pull answer fully written (foreign peers).
 *
 * Receiving (this server R, sender S): Push and Pull answers are applied and appended to
 * the inbox in one store transaction, deduplicated by (sender, epoch, sequence number)
 * when the token is bound to us, within the receive budgets (budget.h) of S, of the key
 * that signed S's token and of the client address. At start-up every known peer is pulled,
 * most recently active first, except those we never sent anything to that were idle for
 * peer_idle_s before the last contact the store records (forgotten: see below); a Push from S waits
 * (suspended, no thread held) while a Pull from S is in progress, and promotes that Pull to the
 * front; S is pulled again pull_interval after its last Push. NotifyNewId: see inbound.h.
 *
 * Identities are free (one key and wildcard DNS give any number of verified server IDs):
 * a key and a client address may each add a bounded number of new peers per hour
 * (pb_delivery_admit_new, the hRPC server's admit_new hook), and a peer record with no
 * contact, no queued events, no rename notice and nothing in progress for peer_idle_s is
 * freed from the engine (a sweep on the loop). Forgetting keeps the store row: its key
 * (pinned: a returning peer is not re-fetched), its send and receive sequence state (a
 * sender relies on our recv_seq to drop what it sends again; we rely on its for ours) and
 * its history; a later Push or submission recreates the record from it. Peers we sent
 * events to (our users chose them) are always pulled at start-up; a forgotten sender we
 * never sent to that queued events for us while we were down probes us (backoff, at
 * most backoff_max) and its queue arrives then.
 *
 * Threads and state: the engine's per-peer state machines, timers and transfers live on
 * the I/O loop thread; store reads and commits run on an executor (exec.h) and complete
 * back on the loop. What other threads need (the listener's pull gate and foreign-Pull
 * claim, the admin API's view of modes and timers, our IDs) is kept in the peer records
 * under one mutex. With several nodes (node_id set), sending to a peer needs its lease in
 * the shared store, and a timer polls the store for work submitted through other nodes.
 *
 * Untrusted input: Pull answers from peers (size- and count-capped, peeked at for the next
 * pipelined range and decoded by wire, applied within the sender's budget only when they
 * are the range asked for), push results (classified by fsm.h); inbound
 * requests are inbound.c's.
 */
#ifndef PB_DELIVERY_H
#define PB_DELIVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto/auth.h"
#include "crypto/keys.h"
#include "delivery/budget.h"
#include "net/hrpc_client.h"
#include "net/hrpc_server.h"
#include "net/keyfetch.h"
#include "postbox.h"
#include "store/store.h"
#include "util/metrics_std.h"

typedef struct pb_delivery pb_delivery;

typedef struct pb_delivery_opts {
    const char *server_id;         /* this server's current ID */
    const pb_keys *keys;           /* borrowed */
    pb_store *store;               /* borrowed */
    pb_client *client;             /* borrowed; its I/O loop runs the engine */
    pb_keyfetch *keyfetch;         /* borrowed */
    const pb_auth_policy *policy;  /* borrowed: NotifyNewId's own check */
    const pb_metrics_std *metrics; /* borrowed; NULL: none */
    unsigned store_threads;        /* executor threads for store work, default 4 */
    unsigned push_retries;         /* retries after the first Push, default 5 */
    unsigned retry_base_ms;        /* first short retry delay, default 100 (doubling) */
    unsigned backoff_min_s;        /* first drain probe delay when queued, default 5 */
    unsigned backoff_max_s;        /* cap, default 900 */
    unsigned pull_interval_s;      /* pull a sender this long after its last Push, 60 */
    unsigned pull_batch;           /* most events in one Pull answer we give, default 10000 */
    size_t pull_max_bytes;         /* byte cap of one Pull answer we give, default 2 MiB */
    unsigned push_wait_ms;         /* a Push waits this long for a Pull in progress, 10000 */
    unsigned max_transfers;        /* transfers to peers at once (the connection cap), 1024 */
    unsigned batch_max;            /* events per Push to a postbox of this project, 512 */
    /* Windowed Push (PROTOCOL.md 5): batches in flight at once to a postbox that announced
     * a window, at most (1: one Push in flight, as to every other receiver); and the window
     * we announce as a receiver (batches we hold ahead of a gap per sender, + 1; 0 or 1:
     * none announced), at most window_hold_total held in all, each at most
     * window_hold_ms. 0: the defaults (push_window 24, announce = push_window, total 128,
     * 5000 ms). */
    unsigned push_window;
    unsigned window_announce;
    unsigned window_hold_total;
    unsigned window_hold_ms;
    size_t push_max_bytes;         /* bytes of events per Push (under peers' body limit), 60 KiB */
    size_t pull_read_max_bytes;    /* largest Pull answer read, default 2 MiB */
    unsigned pull_read_max_events; /* most events in one Pull answer read, default 10000 */
    unsigned pull_rounds;          /* most answers pulled per contact, default 16 */
    unsigned push_max_events;      /* most events accepted in one Push, default 1000 */
    pb_budget_opts budget;         /* per-sender, per-key and per-address receive budget */
    /* Identities are free: peers (server IDs) a verified key, or a client address, may add
     * per hour (pb_delivery_admit_new; 0: no limit), and how long a peer record with no
     * contact, nothing queued and nothing in progress is kept (seconds; 0: forever). A
     * forgotten peer is freed from the engine and not pulled at start-up; its store row
     * (key, sequence state, history) stays. */
    unsigned new_peers_per_key, new_peers_per_address;
    unsigned peer_idle_s;
    /* Several nodes sharing one store (PostgreSQL): this node's unique ID. Then a peer is
     * delivered only by the node holding its lease (pb_store_lease_*), a timer finds work
     * and renames made by other nodes, and the other nodes take a dead node's peers over
     * once its leases expire. NULL: the only node (no leases). */
    const char *node_id;
    unsigned max_queue_age_s;   /* queued events older than this expire (a notice in the inbox,
                                   a new epoch); 0: never (the default) */
    unsigned former_id_grace_s; /* a former ID of ours is accepted from a peer that has not
                                   confirmed our rename for this long after it; 0: the
                                   default, PB_DELIVERY_FORMER_ID_GRACE_S (30 days) */
    unsigned lease_ttl_ms;      /* default 10000 */
    unsigned scan_interval_ms;  /* default 1000 */
} pb_delivery_opts;

/* Loads peer state from the store; every known peer is due for its start-up Pull (Pushes
 * from a peer wait for it from now on). Caller frees with pb_delivery_free. */
pb_err pb_delivery_new(const pb_delivery_opts *opts, pb_delivery **out);
/* Starts delivering on the client's I/O loop: the start-up Pulls (most recently active
 * peers first) and the queues. Call once the federation listener serves our Key endpoint,
 * so that peers asked for their queues can fetch our key. */
pb_err pb_delivery_start(pb_delivery *d);
/* Stops: no new transfer starts, Pushes waiting for a Pull are answered, store work in
 * flight ends. Call before the I/O loop stops. Idempotent. */
void pb_delivery_stop(pb_delivery *d);
void pb_delivery_free(pb_delivery *d); /* after the loop stopped; NULL is a no-op */

/* This server's current ID into out. */
void pb_delivery_server_id(pb_delivery *d, char out[PB_SERVER_ID_MAX]);
/* pb_auth_policy.is_self over a pb_delivery (ctx): our current ID, or the former one that
 * this peer still knows us by (it has not confirmed learning our rename; PROTOCOL.md 7)
 * while the rename is younger than former_id_grace_s. Any thread. */
bool pb_delivery_is_self(void *ctx, const char *peer, const char *id);
#define PB_DELIVERY_FORMER_ID_GRACE_S (30u * 24 * 60 * 60)
/* The former_id_grace setting, live (seconds; 0: the default). */
void pb_delivery_set_former_id_grace(pb_delivery *d, unsigned seconds);

/* ---- operations (the admin API's); any thread but the loop's ----------------------------- */

/* Stores events for `to` durably, then wakes its state machine. submission_id (may be
 * NULL) is the client's idempotency key (pb_store_outbox_submit): a repeat of an earlier
 * submission stores nothing and sets *duplicate (may be NULL). *last_seq (may be NULL)
 * receives the sequence number of the last event (the n events have last_seq - n + 1 to
 * last_seq; a duplicate: those of the first submission). PB_ERR_INVAL when `to` is this
 * server or the ID is invalid; PB_ERR_EXISTS when the ID was used for another peer or
 * another number of events. */
pb_err pb_delivery_submit(pb_delivery *d, const char *to, const pb_event *evs, size_t n,
                          const char *submission_id, bool *duplicate, uint64_t *last_seq);
/* An asynchronous submission's outcome (pb_delivery_submit's result and out-values). */
typedef void (*pb_delivery_submit_cb)(void *arg, pb_err result, bool duplicate, uint64_t last_seq);
/* pb_delivery_submit without waiting for the commit (concurrent submissions then share
 * commits: store.h pb_store_outbox_submit_async). PB_OK: cb(arg, ...) is called exactly
 * once, on a store thread after the commit (the peer's state machine already woken): it
 * must be quick and must not call back into the engine's stop. Any other result
 * (PB_ERR_INVAL as pb_delivery_submit; PB_ERR_SHUTDOWN): nothing was stored and cb is not
 * called. pb_delivery_stop waits for every submission's callback. pb_delivery_submit is
 * this call and a wait. */
pb_err pb_delivery_submit_async(pb_delivery *d, const char *to, const pb_event *evs, size_t n,
                                const char *submission_id, pb_delivery_submit_cb cb, void *arg);
/* A Push received (inbound.c): pb_store_receive_async of the engine's store (after: the
 * batch's postbox_after, 0 for none), now, counted so that pb_delivery_stop waits for its
 * callback as for a submission's. evs and seqs stay the caller's, unchanged until cb. When
 * the commit applied events, the inbox hook is called (on the store thread) before cb. */
pb_err pb_delivery_receive_async(pb_delivery *d, const char *from, uint64_t epoch, uint64_t after,
                                 const pb_event *evs, const uint64_t *seqs, size_t n,
                                 pb_store_recv_cb cb, void *arg);
/* Wall time (Unix seconds) of the last successful Push to peer by this node, 0 when none
 * (or an unknown peer). Any thread. */
int64_t pb_delivery_last_success_s(pb_delivery *d, const char *peer);
/* Parked peer: retry the parked event (retry) or drop it (drop). PB_ERR_NOT_FOUND for an
 * unknown peer, PB_ERR_INVAL when the peer is not parked. */
pb_err pb_delivery_retry_parked(pb_delivery *d, const char *peer);
pb_err pb_delivery_drop_parked(pb_delivery *d, const char *peer);
/* ---- queue control (README "Queue control") ---------------------------------------------
 * flush: every queued peer (peer NULL) or peer is tried now with its backoff reset
 * (postqueue -f); peers in push mode have nothing to flush, parked ones are retry's and
 * drop-parked's. *peers (may be NULL; caller frees with pb_store_strings_free) receives
 * the peers flushed and *n their number. PB_ERR_NOT_FOUND for an unknown peer,
 * PB_ERR_INVAL when peer is parked. With several nodes the lease holder applies it within
 * a scan interval. */
pb_err pb_delivery_flush(pb_delivery *d, const char *peer, char ***peers, size_t *n);
/* drop: deletes peer's whole queue (pb_store_outbox_drop, reason "operator": a new epoch,
 * a notice in our inbox, push mode), logs it and counts it (postbox_events_dropped_total).
 * *r tells what was deleted (count 0: nothing was queued). PB_ERR_NOT_FOUND for an unknown
 * peer. */
pb_err pb_delivery_drop(pb_delivery *d, const char *peer, pb_drop_result *r);
/* The max_queue_age setting, live (0: off). */
void pb_delivery_set_max_queue_age(pb_delivery *d, unsigned seconds);
/* The identity settings, live: the budget factors (pb_budget_set_factors), the new peers per
 * hour per key and per address, and the idle time after which peers are forgotten. */
void pb_delivery_set_ident_limits(pb_delivery *d, unsigned key_factor, unsigned addr_factor,
                                  unsigned new_per_key, unsigned new_per_address,
                                  unsigned peer_idle_s);
/* pb_hrpc_auth.admit_new over a pb_delivery (ctx): a new server ID verified with key from
 * client_addr (may be NULL) is admitted while that key and that address have added fewer
 * than their limits of peers in the last hour; else false with *retry_after_s, counted in
 * postbox_new_peers_refused_total{scope}. Any thread. */
bool pb_delivery_admit_new(void *ctx, const char *server_id, const uint8_t key[32],
                           const uint8_t *client_addr, uint32_t *retry_after_s);
/* Seconds until the next drain probe of a queued peer, or -1. */
int64_t pb_delivery_next_attempt_in_s(pb_delivery *d, const char *peer);
/* Something was appended to the inbox: calls the hook (any thread, a store thread's
 * callback too: it takes no lock a store call may be made under). */
void pb_delivery_inbox_bump(pb_delivery *d);
/* The hook the inbox long-polls are woken by (the admin listener's wake), or NULL. */
void pb_delivery_set_inbox_hook(pb_delivery *d, void (*fn)(void *ctx), void *ctx);

typedef struct pb_rename_report {
    char *peer; /* owned */
    bool ok;
    char *error; /* owned or NULL */
} pb_rename_report;
void pb_rename_reports_free(pb_rename_report *r, size_t n);
/* Renames this server to new_id (stored atomically), tells every known peer with
 * NotifyNewId (with the proof of PROTOCOL.md 7.2), waits for each peer's first answer
 * (bounded by wait_ms), and reports it. Peers not told yet are retried durably with
 * backoff. */
pb_err pb_delivery_rename(pb_delivery *d, const char *new_id, int wait_ms,
                          pb_rename_report **reports, size_t *n);
/* Pending rename notice towards peer: true and its last error (copied into err, may be
 * empty) when one is pending. */
bool pb_delivery_rename_pending(pb_delivery *d, const char *peer, char *err, size_t errlen);

/* ---- for the inbound handlers (inbound.c); any thread --------------------------------- */

/* The receive budget. */
pb_budget *pb_delivery_budget(pb_delivery *d);
/* The receiver's gate for windowed Pushes (wgate.h). */
struct pb_wgate *pb_delivery_wgate(pb_delivery *d);
const pb_delivery_opts *pb_delivery_options(pb_delivery *d);
/* An authenticated request from peer (any thread): resets its drain backoff. */
void pb_delivery_contact(pb_delivery *d, const char *peer);
/* Pushes from `from` must wait for a Pull from it in progress (or not started yet): true
 * when one is, and then `w` (unless NULL: just asking) will be woken when it ends (the Pull
 * is moved to the front). False: go on (w untouched). */
bool pb_delivery_pull_gate(pb_delivery *d, const char *from, pb_hrpc_waker *w);
/* A Push from `from` was stored: pull it again pull_interval from now. */
void pb_delivery_push_seen(pb_delivery *d, const char *from);
/* A foreign peer's Pull may be answered only from a queue that nobody is draining: true
 * when the claim on peer succeeded (release it with pb_delivery_release_foreign). */
bool pb_delivery_claim_foreign(pb_delivery *d, const char *peer);
void pb_delivery_release_foreign(pb_delivery *d, const char *peer);
/* The peer acknowledged our events up to `upto` by Pull. */
void pb_delivery_pull_acked(pb_delivery *d, const char *peer, uint64_t upto);
/* peer renamed itself OLD -> NEW and the store re-labelled everything: follow. */
void pb_delivery_peer_renamed(pb_delivery *d, const char *old_id, const char *new_id);
/* The delivery state of a peer as the admin API shows it: mode. */
bool pb_delivery_peer_mode(pb_delivery *d, const char *peer, pb_peer_mode *mode);

#endif
