/*
 * delivery - the delivery engine: PROTOCOL.md sections 4 to 6 on top of the store, the
 * hRPC client and the key source.
 *
 * Sending (this server S, peer R): every submitted event is first appended to R's
 * outbox in the store (durable, numbered per peer from 1), then a worker that owns R
 * pushes the outbox head, one Push in flight per peer, in order. A failed Push is retried
 * push_retries times with short jittered backoff; then R's mode becomes QUEUED: the
 * events wait for R's Pull, and a worker probes R with jittered exponential backoff
 * (persisted, reset by any authenticated contact from R) and drains the queue in order
 * once R answers. A refusal that will not heal (4xx other than 408/429) parks the event:
 * delivery to R pauses until the operator retries or drops it. Events leave the outbox
 * only when R has them: a 200 to Push, an acknowledged Pull (our peers), or a Pull answer
 * fully written (foreign peers).
 *
 * Receiving (this server R, sender S): Push and Pull answers are applied and appended to
 * the inbox in one store transaction, deduplicated by the sender's sequence number
 * (extension field) when it has one. At start-up every known peer is pulled, and Pushes
 * from S wait while a Pull from S is in progress; S is pulled again pull_interval after
 * the last Push from S. NotifyNewId is verified with the key held for the old ID and the
 * key served at the new ID, then everything is re-labelled in one transaction.
 *
 * Threads: `workers` threads share one table of peers (one mutex); a worker takes a peer
 * that has due work (push, drain probe, pull, rename notice), owns it while it works, and
 * releases it. hRPC handlers run on the listener's threads and only touch the table
 * under the mutex. With several nodes (node_id set), owning a peer for sending also
 * needs its lease in the shared store, and a scanner thread polls the store for work
 * submitted through other nodes.
 *
 * Untrusted input: Push/Pull/NotifyNewId bodies from peers (decoded by wire, bounded by
 * the listener), Pull answers from peers (bounded by the client), admin submissions (the
 * caller validated them).
 */
#ifndef PB_DELIVERY_H
#define PB_DELIVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto/auth.h"
#include "net/hrpc_client.h"
#include "net/hrpc_server.h"
#include "crypto/keys.h"
#include "net/keyfetch.h"
#include "postbox.h"
#include "store/store.h"

typedef struct pb_delivery pb_delivery;

typedef struct pb_delivery_opts {
    const char *server_id;        /* this server's current ID */
    const pb_keys *keys;          /* borrowed */
    pb_store *store;              /* borrowed */
    pb_client *client;            /* borrowed */
    pb_keyfetch *keyfetch;        /* borrowed */
    const pb_auth_policy *policy; /* borrowed: NotifyNewId's own check */
    unsigned workers;             /* default 4 */
    unsigned push_retries;        /* retries after the first Push, default 5 */
    unsigned retry_base_ms;       /* first short retry delay, default 100 (doubling) */
    unsigned backoff_min_s;       /* first drain probe delay when queued, default 5 */
    unsigned backoff_max_s;       /* cap, default 900 */
    unsigned pull_interval_s;     /* pull a sender this long after its last Push, 60 */
    unsigned pull_batch;          /* most events in one Pull answer, default 1000 */
    size_t pull_max_bytes;        /* byte cap of one Pull answer, default 1 MiB */
    unsigned push_wait_ms;        /* a Push waits this long for a Pull in progress, 10000 */
    /* Several nodes sharing one store (PostgreSQL): this node's unique ID. Then a peer is
     * delivered only by the node holding its lease (pb_store_lease_*), a scanner thread
     * finds work and renames made by other nodes, and the other nodes take a dead node's
     * peers over once its leases expire. NULL: the only node (no leases). */
    const char *node_id;
    unsigned lease_ttl_ms;     /* default 10000 */
    unsigned scan_interval_ms; /* default 1000 */
} pb_delivery_opts;

/* Loads peer state from the store and schedules the start-up Pull of every known peer
 * (Pushes from a peer wait for it). Caller frees with pb_delivery_free. */
pb_err pb_delivery_new(const pb_delivery_opts *opts, pb_delivery **out);
/* Starts the workers. Call once the federation listener serves our Key endpoint, so that
 * peers asked for their queues at start-up can fetch our key. */
pb_err pb_delivery_start(pb_delivery *d);
/* Stops the workers (an in-flight call finishes or times out). Idempotent. */
void pb_delivery_stop(pb_delivery *d);
void pb_delivery_free(pb_delivery *d); /* stops first; NULL is a no-op */

/* This server's current ID into out. */
void pb_delivery_server_id(pb_delivery *d, char out[PB_SERVER_ID_MAX]);

/* ---- hRPC handlers (ctx = pb_delivery) ----------------------------------------------- */
void pb_delivery_on_push(void *ctx, const pb_hrpc_request *req, pb_hrpc_reply *rep);
void pb_delivery_on_pull(void *ctx, const pb_hrpc_request *req, pb_hrpc_reply *rep);
void pb_delivery_on_notify(void *ctx, const pb_hrpc_request *req, pb_hrpc_reply *rep);
/* Any authenticated request from peer: resets its drain backoff. */
void pb_delivery_on_contact(void *ctx, const char *peer, bool bound);

/* ---- operations (the admin API's) ------------------------------------------------------ */

/* Stores events for `to` durably, then wakes its worker. submission_id (may be NULL) is
 * the client's idempotency key (pb_store_outbox_submit): a repeat of an earlier submission
 * stores nothing and sets *duplicate (may be NULL). PB_ERR_INVAL when `to` is this server
 * or the ID is invalid; PB_ERR_EXISTS when the ID was used for another peer or another
 * number of events. */
pb_err pb_delivery_submit(pb_delivery *d, const char *to, const pb_event *evs, size_t n,
                          const char *submission_id, bool *duplicate);
/* Parked peer: retry the parked event (retry) or drop it (drop). PB_ERR_NOT_FOUND for an
 * unknown peer, PB_ERR_INVAL when the peer is not parked. */
pb_err pb_delivery_retry_parked(pb_delivery *d, const char *peer);
pb_err pb_delivery_drop_parked(pb_delivery *d, const char *peer);
/* Seconds until the next drain probe of a queued peer, or -1. */
int64_t pb_delivery_next_attempt_in_s(pb_delivery *d, const char *peer);
/* Waits until the inbox has an item with seq > after, or timeout_ms passes. */
void pb_delivery_inbox_wait(pb_delivery *d, uint64_t after, int timeout_ms);

typedef struct pb_rename_report {
    char *peer; /* owned */
    bool ok;
    char *error; /* owned or NULL */
} pb_rename_report;
void pb_rename_reports_free(pb_rename_report *r, size_t n);
/* Renames this server to new_id (stored atomically), tells every known peer with
 * NotifyNewId, waits for each peer's first answer (bounded by wait_ms), and reports it.
 * Peers not told yet are retried durably with backoff. */
pb_err pb_delivery_rename(pb_delivery *d, const char *new_id, int wait_ms,
                          pb_rename_report **reports, size_t *n);
/* pb_auth_policy.is_self over a pb_delivery (ctx): our current ID, or a former one that a
 * peer has not yet confirmed learning the rename of. */
bool pb_delivery_is_self(void *ctx, const char *id);
/* Pending rename notice towards peer: true and its last error (copied into err, may be
 * empty) when one is pending. */
bool pb_delivery_rename_pending(pb_delivery *d, const char *peer, char *err, size_t errlen);

#endif
