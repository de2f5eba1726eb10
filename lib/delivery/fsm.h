/*
 * fsm - the sending side of one peer as a pure state machine (PROTOCOL.md 4.1, 4.2, 6,
 * 7.5, 7.6): inputs are events and completions, outputs are actions; no I/O, no clock,
 * no randomness of its own (the caller passes `now` and a random number), so every
 * transition is unit-tested by a table (tests/unit/fsm_test.c).
 *
 * States (pb_fsm_state) and the persisted mode (pb_peer_mode):
 *   IDLE        nothing in flight: the outbox is empty, or the peer is QUEUED and waits for
 *               its drain probe (timer), or PARKED and waits for the operator
 *   READING     the outbox head is being read (ACT_READ)
 *   PUSHING     a Push is in flight (ACT_PUSH): one per peer, so order holds
 *   RETRY_WAIT  a Push failed in push mode: a short jittered retry is due (timer)
 *   EPOCH       a too-high acknowledgement: the store's epoch is being checked or renewed
 * Push mode pushes as events come; after push_retries failed retries the peer becomes
 * QUEUED (its events wait for its Pull, and a probe runs with jittered exponential
 * backoff from backoff_min to backoff_max, reset by any authenticated contact); the first
 * successful probe drains the queue in order and returns to PUSH. A refusal that will not
 * heal parks the peer (PARKED) until the operator retries or drops the event.
 *
 * Batches: a receiver that answered with the acknowledgement extension (in our epoch) is
 * a postbox of this project and gets up to batch_max events per Push (the engine reads at
 * most `limit` events); a 413 halves the batch, and a refusal of a batch of several is
 * retried one event at a time before anything is parked, so only the refused event parks.
 *
 * Untrusted input: push results (status, identifier, RetryInfo, acknowledgement) come from
 * the peer; every value is bounded here (retry_after capped at backoff_max).
 */
#ifndef PB_FSM_H
#define PB_FSM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

typedef enum pb_fsm_state {
    PB_FSM_IDLE = 0,
    PB_FSM_READING,
    PB_FSM_PUSHING,
    PB_FSM_RETRY_WAIT,
    PB_FSM_EPOCH,
} pb_fsm_state;

typedef struct pb_fsm_cfg {
    unsigned push_retries;  /* retries after the first Push before QUEUED (default 5) */
    unsigned retry_base_ms; /* first short retry, doubling (100) */
    unsigned backoff_min_ms, backoff_max_ms; /* queued probes (5 s .. 900 s) */
    unsigned batch_max; /* events per Push to a postbox of this project (256) */
} pb_fsm_cfg;

typedef struct pb_fsm {
    pb_fsm_state st;
    pb_peer_mode mode;
    uint32_t tries;        /* failed tries of the head in push mode */
    uint32_t attempts;     /* failed probes while queued (the backoff exponent) */
    int64_t next_at;       /* monotonic ms of the pending timer, 0 = none */
    bool has_work;         /* the outbox may hold events */
    bool reread;           /* work came while the head was read: an empty read reads again */
    bool postbox;          /* the receiver acknowledges in our epoch: batches allowed */
    uint32_t batch;        /* current batch limit for a postbox (halved on 413) */
    uint64_t single_until; /* isolating a refused batch: one event per Push up to here */
    uint64_t epoch;        /* our epoch towards this peer */
    uint64_t max_assigned; /* highest sequence number known assigned to this peer */
    uint64_t acked;        /* everything up to here is delivered (200, ack or Pull) */
    uint64_t forgotten;    /* the store was told to forget up to here */
    uint64_t first, last;  /* the batch read / in flight */
    size_t n;              /* its size */
    uint64_t parked_seq;
} pb_fsm;

typedef enum pb_fsm_result {
    PB_PUSH_OK,        /* 200 */
    PB_PUSH_TRANSIENT, /* retry with backoff (PROTOCOL.md 7.5) */
    PB_PUSH_TOO_BIG,   /* 413: the batch exceeds the receiver's limit */
    PB_PUSH_REFUSED,   /* parks (every other 4xx) */
    PB_PUSH_STOPPED,   /* shutting down: nothing happened */
} pb_fsm_result;

/* The classes of PROTOCOL.md 7.5 from a call's outcome: err is the client's pb_err, status
 * the HTTP status (0: none), identifier the hRPC identifier (may be NULL). */
pb_fsm_result pb_fsm_classify(pb_err err, long status, const char *identifier);

typedef enum pb_fsm_input_kind {
    PB_FSM_IN_WORK,        /* events were appended (or may be there) */
    PB_FSM_IN_READ,        /* the head was read: n events first..last (n 0: empty) */
    PB_FSM_IN_READ_FAILED, /* the store could not be read */
    PB_FSM_IN_PUSHED,      /* the Push ended: result, retry_after_s, ack, ack_epoch */
    PB_FSM_IN_TIMER,       /* next_at came */
    PB_FSM_IN_CONTACT,     /* an authenticated request from the peer */
    PB_FSM_IN_ACKED,       /* the peer acknowledged up to `ack` by Pull */
    PB_FSM_IN_EPOCH,       /* the epoch check ended: epoch (maybe new), max_assigned */
    PB_FSM_IN_OPERATOR,    /* retry or drop of the parked event (the engine dropped it) */
    PB_FSM_IN_LOADED,      /* mode/attempts/next_at re-read from the store (several nodes) */
    PB_FSM_IN_RELOAD,      /* an operator changed the peer's queue (flush, drop, expiry):
                              mode, attempts, next_at, epoch and n (events queued) re-read */
} pb_fsm_input_kind;

typedef struct pb_fsm_input {
    pb_fsm_input_kind kind;
    int64_t now;  /* monotonic ms */
    uint32_t rnd; /* uniform random 32 bits, for jitter */
    /* IN_READ */
    size_t n;
    /* IN_READ_FAILED: retry the read after this long (ms; 0 = 1 s): the store's backoff */
    int64_t retry_ms;
    uint64_t first, last;
    /* IN_WORK: highest sequence number assigned, when known (0: unknown) */
    uint64_t assigned;
    /* IN_PUSHED */
    pb_fsm_result result;
    uint32_t retry_after_s; /* RetryInfo, 0 = none */
    uint64_t ack, ack_epoch;
    /* IN_ACKED: ack; IN_EPOCH: epoch and assigned; IN_LOADED: mode, attempts, next_at */
    uint64_t epoch;
    pb_peer_mode mode;
    uint32_t attempts;
    int64_t next_at;
} pb_fsm_input;

typedef enum pb_fsm_action_kind {
    PB_FSM_ACT_READ,    /* read the outbox from `from`, at most `limit` events */
    PB_FSM_ACT_PUSH,    /* push the events read (first..last) */
    PB_FSM_ACT_FORGET,  /* the store may forget up to `upto` (lazy: may be coalesced) */
    PB_FSM_ACT_PERSIST, /* store mode, attempts, next_at, parked_seq and the error */
    PB_FSM_ACT_TIMER,   /* arm the peer's send timer at `at` (0: cancel) */
    PB_FSM_ACT_EPOCH,   /* an ack above max_assigned: check the store, renew the epoch */
    PB_FSM_ACT_NOTE,    /* a log-worthy transition (note) */
} pb_fsm_action_kind;

typedef enum pb_fsm_note {
    PB_NOTE_NONE = 0,
    PB_NOTE_QUEUED,       /* push mode gave up: queued for the peer's Pull */
    PB_NOTE_PROBE_FAILED, /* a drain probe failed */
    PB_NOTE_ANSWERS,      /* a queued peer answers again: draining */
    PB_NOTE_DRAINED,      /* the queue is empty: back to push */
    PB_NOTE_PARKED,       /* refused for good */
    PB_NOTE_RETRY,        /* a short retry is scheduled */
    PB_NOTE_ISOLATE,      /* a batch was refused: one at a time to find the event */
    PB_NOTE_SHRINK,       /* 413: smaller batches */
    PB_NOTE_ROLLBACK,     /* the receiver holds more than we assigned: new epoch */
} pb_fsm_note;

typedef struct pb_fsm_action {
    pb_fsm_action_kind kind;
    uint64_t from, upto;
    size_t limit;
    bool lazy;
    int64_t at;
    pb_fsm_note note;
} pb_fsm_action;

#define PB_FSM_MAX_ACTIONS 6

/* A peer loaded from the store: mode, attempts and (monotonic) next_at as persisted, its
 * epoch and the highest sequence number assigned. */
void pb_fsm_init(pb_fsm *f, pb_peer_mode mode, uint32_t attempts, int64_t next_at, uint64_t epoch,
                 uint64_t max_assigned, bool has_work);

/* Applies one input; writes at most PB_FSM_MAX_ACTIONS actions, returns how many. */
size_t pb_fsm_step(pb_fsm *f, const pb_fsm_cfg *cfg, const pb_fsm_input *in, pb_fsm_action *out);

/* Delay of the next drain probe after `attempts` failures: min * 2^attempts capped at max,
 * then uniform in [v, 1.5 v] (but never above max), using rnd. */
int64_t pb_fsm_backoff_ms(const pb_fsm_cfg *cfg, uint32_t attempts, uint32_t rnd);

const char *pb_fsm_state_name(pb_fsm_state st);

#endif
