/*
 * wgate - the receiver's gate for windowed Pushes (PROTOCOL.md 5, "Windows").
 *
 * A sender of this project that was told our window (PushResponse.postbox_window) keeps
 * several batches in flight; each batch after the first of its window carries
 * postbox_after, the number just below its first, and may arrive before the batches in
 * front of it (they travel on different connections). Such a batch is applied only once
 * this sender's events up to postbox_after (in the batch's epoch) are applied: until then
 * its request waits suspended (pb_hrpc_defer, no thread), woken by the commit that makes
 * it applicable, or refused with a retryable error when its wait ends or the bounds below
 * are reached. The store's sequence check (pb_store_receive) still decides what is a
 * duplicate, and the store itself refuses a batch whose postbox_after it does not hold
 * (pb_store_receive_async's `after`): the gate decides when a batch is worth queueing.
 *
 * With a store whose receives run in queue order (pb_store_receives_ordered: SQLite's one
 * writer), a batch is applicable as soon as the batch before it is queued for its commit,
 * not only once that commit is done: it is queued right behind it and the two share a
 * commit (or run in consecutive ones), instead of one sender's window committing one batch
 * per commit. Should the batch in front fail, the store refuses the one behind it (its
 * predecessors are not there) and the sender sends it again. With PostgreSQL (receives on
 * several threads in any order) a batch waits for the commit before it.
 *
 * State, under one mutex (any listener thread): per sender, the epoch, the highest number
 * known applied in it (raised by every commit the handler makes, and read from the store
 * when a batch finds it too low: it only ever lags the store), the highest number queued
 * in it (ordered stores), and the batches waiting. Bounds: waiting batches per sender
 * (per_sender, the window we announce) and in all (total); each waits at most its
 * deadline. The suspended requests also count in the listener's suspended pool and its
 * per-address share, and their bodies in body_memory (hrpc_server.h): the announced
 * window is sized to fit those shares.
 *
 * The window announced to a sender is shared by the senders of its client address: the
 * per-address shares (max_inflight_per_ip, max_suspended_per_ip, body_memory_per_ip) hold
 * one sender's full window, not sixteen's, and senders behind one address (a NAT, shared
 * hosting) that each took the full window would be refused 503 and wait their RetryInfo
 * second. So pb_wgate_window divides it by the senders seen on that address in the last
 * PB_WGATE_ADDR_RECENT_MS (at least one batch each).
 *
 * Memory: at most PB_WGATE_SENDERS_MAX senders remembered (a sender with nothing waiting is
 * forgotten first: the store holds the truth), and PB_WGATE_ADDRS_MAX addresses of
 * PB_WGATE_ADDR_SENDERS senders each (an address not seen lately is reused; past that the
 * full window is announced, as before the sharing).
 *
 * Untrusted input: sender IDs (authenticated), epochs and numbers from bound Pushes, client
 * addresses (a hostile sender naming many IDs from its address shrinks only the windows
 * announced on that address).
 */
#ifndef PB_WGATE_H
#define PB_WGATE_H

#include <stdbool.h>
#include <stdint.h>

#include "net/hrpc_server.h"

#define PB_WGATE_SENDERS_MAX 16384
#define PB_WGATE_ADDRS_MAX 4096
#define PB_WGATE_ADDR_SENDERS 32
#define PB_WGATE_ADDR_RECENT_MS 10000

typedef struct pb_wgate pb_wgate;

/* ordered: the store runs receives in queue order (pb_store_receives_ordered). */
pb_wgate *pb_wgate_new(unsigned per_sender, unsigned total, bool ordered);
/* Wakes every waiting request (their handlers then refuse them), frees. NULL: no-op. */
void pb_wgate_free(pb_wgate *g);
/* Wakes every waiting request (shutting down): their handlers refuse them. */
void pb_wgate_wake_all(pb_wgate *g);

/* Is `after` applied for (sender, epoch), or (ordered) queued, as far as the gate knows?
 * *known (may be NULL): the gate has seen a commit of that sender in that epoch (else only
 * the store can say what is applied). */
bool pb_wgate_ready(pb_wgate *g, const char *sender, uint64_t epoch, uint64_t after, bool *known);

typedef enum pb_wgate_verdict {
    PB_WGATE_READY, /* applicable now: the caller wakes w itself (runs again at once) */
    PB_WGATE_WAIT,  /* w is kept and woken once the batch is applicable or its time is up */
    PB_WGATE_FULL,  /* too many batches wait (per sender or in all): the caller wakes w */
} pb_wgate_verdict;

/* Registers a deferred request (waker w, deadline now_ms + wait_ms) for `after` of
 * (sender, epoch). */
pb_wgate_verdict pb_wgate_wait(pb_wgate *g, const char *sender, uint64_t epoch, uint64_t after,
                               pb_hrpc_waker *w, int64_t now_ms, int wait_ms);
/* Would a new waiting batch of sender fit the bounds? (Waiters past their deadline do not
 * count: they are woken and forgotten first.) */
bool pb_wgate_room(pb_wgate *g, const char *sender, int64_t now_ms);

/* (sender, epoch) holds everything up to `applied` (a commit's acknowledgement): raises
 * what the gate knows and wakes the batches that became applicable; also wakes (and
 * forgets) batches past their deadline. */
void pb_wgate_applied(pb_wgate *g, const char *sender, uint64_t epoch, uint64_t applied,
                      int64_t now_ms);

/* (sender, epoch)'s events up to `last` were queued for a commit (a Push with sequence
 * numbers, after pb_delivery_receive_async returned PB_OK): with an ordered store, wakes
 * the batches waiting for them. */
void pb_wgate_queued(pb_wgate *g, const char *sender, uint64_t epoch, uint64_t last,
                     int64_t now_ms);
/* A queued Push of (sender, epoch) failed: what was queued after the last commit may not
 * be applied (the batches queued behind it fail in the store too). */
void pb_wgate_failed(pb_wgate *g, const char *sender, uint64_t epoch);

/* The window to announce to `sender` (a Push answered now) from client address `addr`
 * (pb_hrpc_request.client_addr, 16 bytes; NULL: per-address shares off): `window` divided
 * by the senders seen on that address in the last PB_WGATE_ADDR_RECENT_MS, this one
 * included, at least 1. Records the sender. */
unsigned pb_wgate_window(pb_wgate *g, const uint8_t *addr, const char *sender, unsigned window,
                         int64_t now_ms);

/* Batches waiting now (their deadline not passed), in all (metrics, tests). */
unsigned pb_wgate_held(pb_wgate *g, int64_t now_ms);

#endif
