/*
 * store - postbox's durable state behind one narrow interface. Two backends implement it
 * through the ops table in store_impl.h: SQLite (store_sqlite.c; one node) and PostgreSQL
 * (store_pg.c; several nodes of one server may share it). Callers never see SQL or which
 * backend runs.
 *
 * Durability contract: a write function returns PB_OK only after its transaction is
 * committed with the configured synchronous level (FULL by default: on disk). Writes are
 * group-committed: on SQLite concurrent callers are batched into one transaction by a
 * single writer, each caller waiting for the commit that contains its change, and one
 * caller's failure (a constraint) does not fail the others in its batch; on PostgreSQL
 * every write call is its own transaction and the server batches concurrent commits into
 * one WAL flush.
 *
 * Errors: PB_ERR_STORE is a store that cannot take the write now (I/O error, locked,
 * server unreachable), PB_ERR_DISK_FULL the same because its disk is full: the caller
 * answers 503 and may retry later (with backoff: util/health.h); nothing of the failed
 * call was written. The backends report both to the store-health tracker
 * (pb_health_store()), which logs an outage calmly. PB_ERR_CORRUPT is broken local
 * state: fatal.
 *
 * What it holds: meta (this server's identity and key metadata), peers (every server
 * this one federated with) with their public keys, per-peer delivery state and sender
 * epoch, the per-peer outbox queue with the client-chosen submission IDs that made it
 * idempotent, what was received from each sender per sequence epoch, the inbox, local
 * users' guild lists and pending invites, pending renames of this server, and pending
 * renames of peers that still await their proof. Queues follow one pattern: append, read
 * in order from a cursor, delete/ack up to a sequence.
 *
 * Untrusted input: none directly; callers validate server IDs before they get here.
 */
#ifndef PB_STORE_H
#define PB_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto/keys.h"
#include "postbox.h"
#include "util/exec.h"
#include "util/metrics_std.h"

typedef struct pb_store pb_store;

typedef enum pb_store_sync {
    PB_SYNC_DEFAULT = 0, /* zero-initialised opts: means PB_SYNC_FULL */
    PB_SYNC_OFF = 1,
    PB_SYNC_NORMAL = 2,
    PB_SYNC_FULL = 3,
} pb_store_sync;

typedef struct pb_store_opts {
    pb_store_sync sync;   /* SQLite PRAGMA synchronous / PostgreSQL synchronous_commit
                             (full: on, normal: local, off: off); FULL by default */
    int busy_timeout_ms;  /* lock wait before PB_ERR_STORE (PostgreSQL: lock_timeout);
                             default 5000 (0 = default) */
    int max_batch;        /* SQLite: most writes in one group commit; default 256 (0 =
                             default); PostgreSQL: unused */
    int model_log_rows;   /* SQLite: received guild and invite changes kept in the model log
                             before they are merged into the tables (store_sqlite.c "model
                             log"); default 100000 (0 = default); PostgreSQL: unused */
    int checkpoint_pages; /* SQLite: WAL pages (4 KiB) that make a checkpoint due; default
                             10000, about 40 MiB (0 = default); PostgreSQL: unused */
    /* Where write transactions are measured (commit latency; SQLite: writes per group
     * commit), or NULL. Borrowed: it must outlive the store. */
    const pb_metrics_std *metrics;
} pb_store_opts;

#define PB_STORE_BUSY_TIMEOUT_DEFAULT 5000
#define PB_STORE_MAX_BATCH_DEFAULT 256
#define PB_STORE_MAX_BATCH_LIMIT 100000
#define PB_STORE_MODEL_LOG_DEFAULT 100000
#define PB_STORE_MODEL_LOG_LIMIT 10000000
#define PB_STORE_CHECKPOINT_PAGES_DEFAULT 10000
#define PB_STORE_CHECKPOINT_PAGES_LIMIT 1000000

/* Zero-initialised opts mean the defaults; this fills them in explicitly. Negative
 * values, a max_batch over PB_STORE_MAX_BATCH_LIMIT, a model_log_rows over
 * PB_STORE_MODEL_LOG_LIMIT or a checkpoint_pages over PB_STORE_CHECKPOINT_PAGES_LIMIT make
 * pb_store_open fail with PB_ERR_CONFIG. */
void pb_store_opts_default(pb_store_opts *o);
pb_err pb_store_sync_parse(const char *s, pb_store_sync *out); /* off|normal|full */
const char *pb_store_sync_name(pb_store_sync s);

/*
 * Opens (creating and migrating as needed) the store named by spec:
 *   "sqlite:/path/to/postbox.db" or a plain path: SQLite. The parent directory must
 *   exist; a new database file is created with mode 0600.
 *   "postgres://..." or "postgresql://..." (a libpq connection URI): PostgreSQL. The
 *   database must exist; the tables are created in it (in the connection's schema). Nodes
 *   opening it at the same time migrate it once.
 * opts may be NULL (defaults). On PB_OK *out is owned by the caller: pb_store_close.
 * Errors: PB_ERR_CONFIG for a bad spec or options, a missing directory, or a database
 * whose schema is newer than this build knows (logged); PB_ERR_CORRUPT for a file that
 * is not a database; PB_ERR_IO / PB_ERR_STORE when it cannot be opened or migrated (a
 * PostgreSQL server that cannot be reached).
 */
pb_err pb_store_open(const char *spec, const pb_store_opts *opts, pb_store **out);
/* The spec as it may be logged or shown: a PostgreSQL URI's password (user:PASSWORD@ and
 * a password= parameter) replaced by "***"; other specs unchanged. The result is a new
 * string the caller frees. */
char *pb_store_spec_redact(const char *spec);
/* Commits the writes already queued (their callers get their results), stops the
 * writer, closes. No call may start once close has begun. NULL is a no-op. */
void pb_store_close(pb_store *s);

/* Cheap liveness check for /healthz: a read and a no-op write path check. */
pb_err pb_store_ping(pb_store *s);
/* Current schema version (tests, --check-config). */
pb_err pb_store_schema_version(pb_store *s, int *version);
/* Full consistency check (SQLite integrity_check): PB_OK or PB_ERR_CORRUPT. */
pb_err pb_store_integrity_check(pb_store *s);
/* A consistent copy of a running store (SQLite: the online backup API, one snapshot, while
 * writes go on), written to a temporary file beside the database that is removed again
 * before this returns: on PB_OK *fd (the caller closes it) reads the copy's *size bytes
 * from its start. PB_ERR_INVAL for a backend without one (PostgreSQL: pg_dump, PITR);
 * PB_ERR_IO when the file cannot be made; PB_ERR_STORE when the copy failed. */
pb_err pb_store_backup(pb_store *s, int *fd, uint64_t *size);

/* Counters since open, for tests and benchmarks to see group commit: commits is the
 * number of write transactions committed, writes the number of write calls (jobs) that
 * succeeded in them (pb_store_ping's write check included). writes / commits is the mean
 * batch size. */
typedef struct pb_store_stats {
    uint64_t commits;
    uint64_t writes;
    /* SQLite: WAL checkpoints run (failed and busy ones not counted), and of them those
     * that ran on the executor given to pb_store_set_executor. */
    uint64_t checkpoints;
    uint64_t checkpoints_handed;
} pb_store_stats;
void pb_store_stats_get(pb_store *s, pb_store_stats *out);

/* Hands the store's upkeep to e's threads, so that no write waits for it. SQLite: the WAL
 * checkpoint (copying the pages of the WAL's commits into the database file, due every
 * checkpoint_pages pages) then runs as a task on e, on a connection of its own, while the
 * writer goes on committing; without an executor (or with the WAL past four times
 * checkpoint_pages, a checkpoint that cannot keep up) the writer runs it itself after
 * answering a batch's callers, and writes queued meanwhile wait for it. e is borrowed:
 * call this with NULL before freeing e, and free e (which runs the tasks already queued)
 * before closing the store. PostgreSQL: nothing (the server checkpoints). */
void pb_store_set_executor(pb_store *s, pb_exec *e);

/* The backend's name: "sqlite" or "postgres" (a static string). */
const char *pb_store_backend(pb_store *s);

/* ---- meta: small key/value facts about this server ------------------------------------ */

/* *val is a string the caller frees. PB_ERR_NOT_FOUND when unset. */
pb_err pb_store_meta_get(pb_store *s, const char *key, char **val);
pb_err pb_store_meta_set(pb_store *s, const char *key, const char *val);

/* ---- peers and their keys ------------------------------------------------------------- */

typedef struct pb_peer_info {
    char *server_id; /* normalised; owned */
    bool has_key;
    uint8_t key[PB_PUBKEY_LEN];
    int64_t key_fetched_at; /* Unix seconds, 0 when no key */
    int64_t first_seen;     /* Unix seconds */
    int64_t last_contact;   /* last authenticated contact from the peer, 0 = never */
} pb_peer_info;

/* Records that this server has federated with server_id (creates the row if needed) and,
 * when contact_at > 0, sets last_contact to it. */
pb_err pb_store_peer_touch(pb_store *s, const char *server_id, int64_t contact_at);
/* PB_ERR_NOT_FOUND when no key is stored for server_id. */
pb_err pb_store_peer_key_get(pb_store *s, const char *server_id, uint8_t key[PB_PUBKEY_LEN]);
/* Stores (or replaces) the peer's key, creating the peer row if needed. */
pb_err pb_store_peer_key_set(pb_store *s, const char *server_id, const uint8_t key[PB_PUBKEY_LEN],
                             int64_t fetched_at);
/* All peers, ordered by server_id. *peers is an array the caller frees with
 * pb_peer_info_free_array. */
pb_err pb_store_peer_list(pb_store *s, pb_peer_info **peers, size_t *count);
void pb_peer_info_free_array(pb_peer_info *peers, size_t count);

/* ==== delivery engine state ==============================================================
 * Times below are Unix milliseconds unless named _s or said to be seconds. uint64 IDs
 * (users, guilds, inviters) and received sequence numbers are stored bit-for-bit (SQLite
 * INTEGER is signed: cast through int64_t). Outbox and inbox sequence numbers are
 * assigned here from 1 and stay below 2^63. Every write below is one transaction.
 */

/* ---- per-peer delivery state (this server as sender S, the peer as receiver R) -------- */

typedef enum pb_peer_mode {
    PB_MODE_PUSH = 0,   /* events are pushed as they come */
    PB_MODE_QUEUED = 1, /* Push failed 1+5 times: events wait in the queue for R's Pull or
                           S's backoff drain; no new Push until the queue is empty */
    PB_MODE_PARKED = 2, /* R refused an event for good: delivery paused for the operator */
} pb_peer_mode;

typedef struct pb_peer_state {
    char *server_id; /* owned */
    pb_peer_mode mode;
    uint32_t attempts;        /* failed drain attempts since queued (backoff exponent) */
    int64_t next_attempt_at;  /* next drain attempt (queued), 0 = none */
    char *last_error;         /* owned, NULL when none */
    uint64_t parked_seq;      /* the refused event (PARKED), else 0 */
    uint64_t queued;          /* events in this peer's outbox */
    int64_t oldest_queued_at; /* created_at of the oldest outbox event, 0 when empty */
    uint64_t next_seq;        /* sequence number the next appended event gets (from 1) */
    uint64_t send_epoch;      /* our sequence epoch towards this peer (PROTOCOL.md 7.6): random
                                 and non-zero for rows created since schema version 5, 0
                                 (legacy) for rows that existed before */
    uint64_t recv_seq;        /* highest sequence applied from this peer as sender in
                                 recv_epoch, 0 = none */
    uint64_t recv_epoch;      /* the peer's sender epoch we most recently received in (the
                                 most recently updated pb_store_receive epoch row), 0 when
                                 none or legacy */
    int64_t last_contact;     /* last authenticated contact (seconds, as in pb_peer_info) */
} pb_peer_state;

void pb_peer_state_clear(pb_peer_state *st);
void pb_peer_state_free_array(pb_peer_state *sts, size_t count);
/* On PB_OK *out is the caller's (pb_peer_state_clear). PB_ERR_NOT_FOUND when the peer is
 * unknown. One row read: `queued` is a counter kept with the queue, not a count of it. */
pb_err pb_store_peer_state_get(pb_store *s, const char *server_id, pb_peer_state *out);
/* Every known peer (ordered by server_id), with queue statistics. *out is the caller's
 * (pb_peer_state_free_array). */
pb_err pb_store_peer_state_list(pb_store *s, pb_peer_state **out, size_t *count);
/* Sets the sender-side delivery fields (mode, attempts, next_attempt_at, last_error (NULL
 * clears), parked_seq), creating the peer row if needed. PB_ERR_INVAL for a mode out of
 * range. */
pb_err pb_store_peer_state_set(pb_store *s, const char *server_id, pb_peer_mode mode,
                               uint32_t attempts, int64_t next_attempt_at, const char *last_error,
                               uint64_t parked_seq);

/* ---- sequence epochs (PROTOCOL.md 7.6) ------------------------------------------------
 * Every sequence number travels with its sender's epoch. This server's epoch towards a
 * peer is the peer row's send_epoch: a random non-zero uint64 (libsodium randombytes_buf)
 * given to every peer row when it is created, whichever call creates it. Rows that
 * existed before schema version 5 keep epoch 0, the legacy epoch, so that an upgrade does
 * not make receivers apply our events again. */

/* Starts a new epoch towards peer, in one transaction: sets its send_epoch to a fresh
 * random non-zero value different from the current one, creating the peer row if needed,
 * and returns it in *epoch. next_seq and the outbox are left as they are (sequence
 * numbers are not reset). For when an acknowledgement shows that our store went back. */
pb_err pb_store_peer_new_epoch(pb_store *s, const char *peer, uint64_t *epoch);

/* ---- outbox: the per-peer queue of events to deliver -------------------------------------- */

/* Appends n (>= 1) events for peer in one transaction, creating the peer row if needed;
 * they get consecutive sequence numbers from the peer's next_seq (never reused, even after
 * an ack). *last_seq (may be NULL) receives the last one assigned. Each event is stored as
 * pb_wire_event_encode bytes: one the encoder refuses (PB_ERR_INVAL) fails the call with
 * nothing written. Cost O(n), independent of the queue's length. */
pb_err pb_store_outbox_append(pb_store *s, const char *peer, const pb_event *evs, size_t n,
                              int64_t now, uint64_t *last_seq);

/* Submission IDs: 1..PB_SUBMISSION_ID_MAX printable ASCII characters (0x20..0x7e), chosen
 * by the client (the homeserver) so that a submission it retries is queued once. */
#define PB_SUBMISSION_ID_MAX 128
/* A recorded submission ID is kept at least this long (ms) after its append. */
#define PB_STORE_SUBMISSION_KEEP_MS (24LL * 60 * 60 * 1000)
/* Most expired submission records one recording append deletes (bounded work). */
#define PB_STORE_SUBMISSION_PRUNE_MAX 100

/* True when id (may be NULL: false) is a valid submission ID. */
bool pb_store_submission_id_valid(const char *id);

/*
 * pb_store_outbox_append with an idempotency key. submission_id NULL: exactly
 * pb_store_outbox_append (*duplicate false). Otherwise, in one transaction:
 *   - an ID not recorded: the events are appended and the ID is recorded with (peer,
 *     first seq, n, now); *duplicate false;
 *   - an ID recorded with the same peer and the same n: nothing is appended, *duplicate is
 *     true and *last_seq the last seq the first submission got (those events may have been
 *     delivered and deleted since);
 *   - an ID recorded with another peer or another n: PB_ERR_EXISTS, nothing changes.
 * Only peer and n are compared, not the events. Concurrent calls with one ID (several
 * nodes included) append once. A recording append also deletes up to
 * PB_STORE_SUBMISSION_PRUNE_MAX records (oldest first) whose time is older than
 * now - PB_STORE_SUBMISSION_KEEP_MS, so an ID is remembered at least that long (by the
 * callers' clocks) and then forgotten at some later append. A peer rename does not
 * re-label records: a retry names the peer as its first attempt did. PB_ERR_INVAL for an
 * invalid ID (and as pb_store_outbox_append). last_seq and duplicate may be NULL.
 */
pb_err pb_store_outbox_submit(pb_store *s, const char *peer, const pb_event *evs, size_t n,
                              int64_t now, const char *submission_id, uint64_t *last_seq,
                              bool *duplicate);

/* An asynchronous submission's outcome: result as pb_store_outbox_submit's; on PB_OK
 * last_seq and duplicate as its out-parameters (0 and false otherwise). */
typedef void (*pb_store_submit_cb)(void *arg, pb_err result, uint64_t last_seq, bool duplicate);
/*
 * pb_store_outbox_submit without waiting for the commit: the events are encoded and the
 * arguments copied on the caller's thread, the write is queued (it shares a commit with
 * the writes queued beside it), and the call returns. PB_OK: cb(arg, ...) is called
 * exactly once, after the commit that holds the write (or its failure), on one of the
 * store's threads and outside its locks: it must be quick (hand the result on) and must
 * not close the store. Any other result (PB_ERR_INVAL as pb_store_outbox_submit,
 * PB_ERR_SHUTDOWN once pb_store_close began): nothing was queued and cb is never called.
 * pb_store_close runs every write queued before it and calls its callback before it
 * returns.
 */
pb_err pb_store_outbox_submit_async(pb_store *s, const char *peer, const pb_event *evs, size_t n,
                                    int64_t now, const char *submission_id, pb_store_submit_cb cb,
                                    void *arg);

typedef struct pb_outbox_item {
    uint64_t seq;
    int64_t created_at;
    size_t size; /* encoded Event bytes */
    pb_event ev; /* owned */
} pb_outbox_item;
void pb_outbox_items_free(pb_outbox_item *items, size_t n);

/* Reads the peer's events with seq >= from_seq in order: at most max_items (>= 1, else
 * PB_ERR_INVAL), and stopping before the encoded sizes would pass max_bytes (but at least
 * one item when any exists). *items (caller frees with pb_outbox_items_free) is NULL when
 * none. A stored event that does not decode is PB_ERR_CORRUPT. */
pb_err pb_store_outbox_read(pb_store *s, const char *peer, uint64_t from_seq, size_t max_items,
                            size_t max_bytes, pb_outbox_item **items, size_t *n);
/* Deletes the peer's events with seq <= upto (an acknowledgement); PB_OK also when there
 * were none. */
pb_err pb_store_outbox_ack(pb_store *s, const char *peer, uint64_t upto);
/* pb_store_outbox_ack for n peers in ONE transaction (one commit): peer i's events with
 * seq <= upto[i] are deleted. All or nothing: on an error nothing is forgotten. The peers
 * are taken in the given order (callers sort them, so that two such calls lock rows in one
 * order); a peer may not appear twice. n 0 is PB_OK. */
pb_err pb_store_outbox_ack_many(pb_store *s, const char *const *peers, const uint64_t *upto,
                                size_t n);
/* Deletes one event; PB_ERR_NOT_FOUND when it is not there. */
pb_err pb_store_outbox_remove(pb_store *s, const char *peer, uint64_t seq);
/* Whether any call through s that may delete or re-label queued events (outbox_ack,
 * outbox_remove, outbox_drop, peer_new_epoch, peer_rename, self_rename: not appends, not
 * outbox_ack_many) is under way: false while one is. *gen counts those started. A caller
 * that saw true and gen before an append, and sees true and the same gen later, knows
 * that no such call of this process touched the appended events in between (another
 * process sharing the store is not seen). Any thread. */
bool pb_store_outbox_quiet(pb_store *s, uint64_t *gen);

/* ---- receiving (this server as R) ------------------------------------------------------------ */

typedef struct pb_recv_result {
    size_t applied;    /* events applied and appended to the inbox */
    size_t duplicates; /* events skipped: sequence number <= the recv_seq of (from, epoch) */
    uint64_t ack;      /* with seqs: the recv_seq of (from, epoch) after the call (the
                          acknowledgement to send back); without seqs: 0 */
    uint64_t epoch;    /* with seqs: the epoch of the call; without seqs: 0 */
} pb_recv_result;

/* Most epochs whose receive state is kept per sender (the least recently updated beyond
 * this are forgotten). */
#define PB_STORE_RECV_EPOCHS_MAX 8

/*
 * Receives n events from sender `from` in one transaction, in order. With seqs (a peer of
 * this project), sequence numbers are deduplicated per (from, epoch) (PROTOCOL.md 7.6):
 * an event whose seqs[i] <= the recv_seq of (from, epoch) (0 when that epoch has no row)
 * is a duplicate and skipped; otherwise it is applied and that recv_seq becomes seqs[i].
 * Every call with seqs writes the (from, epoch) row (recv_seq, updated_at = now), creating
 * it if needed, also when every event was a duplicate or n is 0. A sender keeps at most
 * PB_STORE_RECV_EPOCHS_MAX epoch rows: a call that creates one deletes, in the same
 * transaction, the sender's other rows beyond the PB_STORE_RECV_EPOCHS_MAX - 1 most
 * recently updated (ties: the higher recv_seq stays), never the row just written. The
 * state of a forgotten epoch is 0 again if the sender uses it later. res->ack is the
 * recv_seq of (from, epoch) after the call and res->epoch the epoch. Without seqs (a
 * foreign peer) every event is applied, epoch is ignored, no epoch row is touched and
 * res->ack = res->epoch = 0. Applying (PROTOCOL.md section 5, idempotent):
 *   UserAddedToGuild      guild list of user_id gets {guild_id, from} (if absent)
 *   UserRemovedFromGuild  that entry is removed
 *   UserInvited           pending invites of user_id get {invite_id, from, inviter_id}
 *   UserRejectedInvite    no state change
 * and every applied event is appended to the inbox. Creates the peer row if needed and sets
 * last_contact (seconds) to now/1000 (also when every event was a duplicate, or n is 0).
 * Nothing is written on failure; an event the wire encoder refuses fails the whole call
 * (PB_ERR_INVAL). A pending invite received again takes the new inviter_id. *res (may be
 * NULL) is filled on PB_OK.
 */
pb_err pb_store_receive(pb_store *s, const char *from, uint64_t epoch, const pb_event *evs,
                        const uint64_t *seqs, size_t n, int64_t now, pb_recv_result *res);

/* An asynchronous receive's outcome: result as pb_store_receive's; res (on PB_OK, else
 * NULL) is borrowed for the call. */
typedef void (*pb_store_recv_cb)(void *arg, pb_err result, const pb_recv_result *res);
/*
 * pb_store_receive without waiting for the commit: the events are encoded and `from` copied
 * on the caller's thread, the write is queued (it shares a commit with the writes queued
 * beside it) and the call returns. evs and seqs are read by the write itself: the caller
 * keeps them, unchanged, until cb is called. PB_OK: cb(arg, ...) is called exactly once,
 * after the commit that holds the write (or its failure), on one of the store's threads and
 * outside its locks (as pb_store_outbox_submit_async's). Any other result (PB_ERR_INVAL as
 * pb_store_receive, PB_ERR_SHUTDOWN once pb_store_close began): nothing was queued and cb is
 * never called.
 *
 * after (with seqs; 0: none) is a window batch's postbox_after (PROTOCOL.md 5): the write
 * applies only if the recv_seq of (from, epoch) is at least `after` when it runs, else it
 * fails with PB_ERR_BUSY and writes nothing (the batches before it are not here: it would
 * apply across a gap). With pb_store_receives_ordered, the writes queued by one caller run
 * in the order it queued them, so a batch may be queued right behind the one before it.
 */
pb_err pb_store_receive_async(pb_store *s, const char *from, uint64_t epoch, uint64_t after,
                              const pb_event *evs, const uint64_t *seqs, size_t n, int64_t now,
                              pb_store_recv_cb cb, void *arg);
/* Do asynchronous receives run in the order they were queued (one writer: SQLite)? With
 * PostgreSQL they run on several threads at once, in any order. */
bool pb_store_receives_ordered(const pb_store *s);

/* The sender's most recently updated epoch row (ties: the highest recv_seq, then the
 * highest epoch): *epoch and *recv_seq, both 0 (and PB_OK) when it has none (unknown,
 * foreign, or nothing received with sequence numbers). */
pb_err pb_store_recv_latest(pb_store *s, const char *from, uint64_t *epoch, uint64_t *recv_seq);

/* ---- inbox: what the homeserver reads -------------------------------------------------------- */

typedef struct pb_inbox_item {
    uint64_t seq; /* inbox cursor, from 1, increasing */
    char *from;   /* sender server ID at the time (owned) */
    int64_t received_at;
    bool is_rename; /* a peer renamed itself: old_id -> new_id; ev is empty */
    char *notice;   /* owned, a notice of our own (pb_store_outbox_drop): its JSON text;
                       ev is empty and is_rename false; NULL for the other items */
    pb_event ev;    /* owned */
    char *old_id;   /* owned, rename only */
    char *new_id;   /* owned, rename only */
} pb_inbox_item;
void pb_inbox_items_free(pb_inbox_item *items, size_t n);

/* Items with seq > after, in order, at most limit (>= 1, else PB_ERR_INVAL). *items (caller
 * frees with pb_inbox_items_free) is NULL when none. PB_ERR_CORRUPT for an undecodable
 * stored event. */
pb_err pb_store_inbox_read(pb_store *s, uint64_t after, size_t limit, pb_inbox_item **items,
                           size_t *n);
/* Highest inbox seq, 0 when empty. */
pb_err pb_store_inbox_last_seq(pb_store *s, uint64_t *seq);

/* ---- local users' federated state ----------------------------------------------------------- */

typedef struct pb_guild_entry {
    uint64_t guild_id;
    char *server_id; /* owned */
} pb_guild_entry;
void pb_guild_entries_free(pb_guild_entry *e, size_t n);
/* The user's guild list, ordered by server_id (bytewise) then guild_id (as uint64). *out is
 * the caller's (pb_guild_entries_free); NULL when empty. */
pb_err pb_store_guilds(pb_store *s, uint64_t user_id, pb_guild_entry **out, size_t *n);

typedef struct pb_invite_entry {
    char *invite_id; /* owned */
    char *server_id; /* owned */
    uint64_t inviter_id;
} pb_invite_entry;
void pb_invite_entries_free(pb_invite_entry *e, size_t n);
/* The user's pending invites, ordered by server_id then invite_id (bytewise). *out is the
 * caller's (pb_invite_entries_free); NULL when empty. */
pb_err pb_store_invites(pb_store *s, uint64_t user_id, pb_invite_entry **out, size_t *n);

/* ---- renames ----------------------------------------------------------------------------------
 */

/*
 * A peer renamed itself OLD -> NEW (NotifyNewId accepted): in one transaction re-labels
 * everything held for OLD as NEW: the peer row with its key (set to new_key) and
 * delivery/sequence state (send_epoch included), its receive state of every epoch, its
 * outbox events, guild list entries and pending invites, and pending renames_out rows and
 * its outbound lease; forgets a recorded flush of either ID (pb_store_peer_flush); deletes the
 * pending incoming renames of OLD (renames_in), all of them; then appends a rename item (from NEW)
 * to the inbox. The key's key_fetched_at becomes now/1000; last_contact and the inbox history from
 * OLD are kept. PB_ERR_NOT_FOUND when OLD is unknown; PB_ERR_EXISTS when NEW is already a known
 * peer (also when NEW equals OLD); nothing changes then.
 */
pb_err pb_store_peer_rename(pb_store *s, const char *old_id, const char *new_id,
                            const uint8_t new_key[PB_PUBKEY_LEN], int64_t now);

/*
 * This server renames itself OLD -> NEW: in one transaction sets meta "server_id" to NEW
 * and records, for every known peer, that it must be told (renames_out). A peer that has
 * a pending rename from an earlier change keeps its old_id (the ID it still knows us by)
 * and gets the new new_id, keeping its renamed_at (the time it stopped being ours); a new
 * row's renamed_at is now. Every touched row restarts: attempts 0, next_attempt_at now,
 * no last_error. A row whose old_id equals the new new_id (renamed back) is dropped:
 * that peer has nothing to learn.
 */
pb_err pb_store_self_rename(pb_store *s, const char *old_id, const char *new_id, int64_t now);

typedef struct pb_rename_out {
    char *peer;   /* owned */
    char *old_id; /* owned: the ID this peer knows us by */
    char *new_id; /* owned */
    uint32_t attempts;
    int64_t next_attempt_at;
    char *last_error;   /* owned or NULL */
    int64_t renamed_at; /* Unix ms: when we stopped being old_id (the row's creation) */
} pb_rename_out;
void pb_rename_outs_free(pb_rename_out *r, size_t n);
/* Every pending rename, ordered by peer. *out is the caller's (pb_rename_outs_free); NULL
 * when none. */
pb_err pb_store_rename_out_list(pb_store *s, pb_rename_out **out, size_t *n);
/* The peer confirmed: deletes its row if its new_id is still new_id (PB_OK either way). */
pb_err pb_store_rename_out_done(pb_store *s, const char *peer, const char *new_id);
/* Records a failed attempt (error may be NULL); PB_ERR_NOT_FOUND when the peer has no
 * pending rename. */
pb_err pb_store_rename_out_failed(pb_store *s, const char *peer, uint32_t attempts,
                                  int64_t next_attempt_at, const char *error);

/* ---- pending incoming renames (PROTOCOL.md 7.2) ----------------------------------------
 * A peer's rename notice OLD -> NEW that came without a proof of possession is recorded
 * here, nothing re-labelled, and completed (pb_store_peer_rename) when a later request
 * whose token names NEW verifies with OLD's key. Up to PB_STORE_RENAMES_IN_MAX pending
 * renames per old ID (a later notice never replaces an earlier one: anyone may replay an
 * unbound token of OLD's within its time window, naming a host that serves OLD's key; the
 * one proven first wins and the others of OLD go with it), and a new ID is pending for at
 * most one old ID. Times are Unix ms. */
#define PB_STORE_RENAMES_IN_MAX 4

typedef struct pb_rename_in {
    char *old_id; /* owned */
    char *new_id; /* owned */
    int64_t created_at;
} pb_rename_in;
void pb_rename_ins_free(pb_rename_in *r, size_t n);

/* Records the pending rename old_id -> new_id created at now; the same pair again only
 * gets the new created_at. PB_ERR_EXISTS when new_id is already pending for another old
 * ID; PB_ERR_TOO_BIG when old_id has PB_STORE_RENAMES_IN_MAX other pending renames (the
 * earlier ones are kept: they expire, or a proof completes one); PB_ERR_INVAL when the
 * IDs are equal; nothing changes then. */
pb_err pb_store_rename_in_add(pb_store *s, const char *old_id, const char *new_id, int64_t now);
/* The pending rename to new_id: *old_id (a new string the caller frees) and *created_at
 * (may be NULL). PB_ERR_NOT_FOUND when none. */
pb_err pb_store_rename_in_find(pb_store *s, const char *new_id, char **old_id, int64_t *created_at);
/* Deletes every pending rename of old_id; PB_OK also when there is none. */
pb_err pb_store_rename_in_remove(pb_store *s, const char *old_id);
/* Every pending rename, ordered by old_id then new_id (bytewise). *out is the caller's
 * (pb_rename_ins_free); NULL when none. */
pb_err pb_store_rename_in_list(pb_store *s, pb_rename_in **out, size_t *n);
/* Deletes the pending renames created before `before` (the engine passes now - 24 h);
 * *removed (may be NULL) gets how many. */
pb_err pb_store_rename_in_expire(pb_store *s, int64_t before, size_t *removed);

/* ---- outbound ownership: several nodes of one server ---------------------------------------
 *
 * Exactly one node at a time delivers a peer's outbox: the one holding the peer's lease,
 * a row (peer, holder, expires_at). Nodes identify themselves with a node_id unique among
 * the nodes sharing the store. Expiry is judged with the callers' wall clocks (Unix ms),
 * so the nodes' clocks must agree to well within the lease time. With one node (SQLite)
 * the lease is always free or its own.
 */

/* Takes or renews the lease on peer for node_id, atomically (one statement): when there
 * is none, it has expired (expires_at <= now_ms) or node_id holds it already, it becomes
 * node_id's with expires_at = now_ms + ttl_ms and *held is true; otherwise nothing changes
 * and *held is false. PB_ERR_INVAL for empty strings, now_ms < 0, ttl_ms <= 0 or an
 * overflowing now_ms + ttl_ms. A write: committed before it returns. */
pb_err pb_store_lease_acquire(pb_store *s, const char *peer, const char *node_id, int64_t now_ms,
                              int64_t ttl_ms, bool *held);
/* Gives the lease on peer up if node_id holds it (PB_OK also when it does not), so
 * another node may take it at once. */
pb_err pb_store_lease_release(pb_store *s, const char *peer, const char *node_id);
/* The peers that have at least one outbox event, ordered by server_id (bytewise), so a
 * node finds work appended by other nodes. Cost: one primary-key probe per such peer
 * (a loose index scan), never a scan of the queue. *peers (caller frees with
 * pb_store_strings_free) is NULL when none. */
pb_err pb_store_outbox_peers(pb_store *s, char ***peers, size_t *n);
void pb_store_strings_free(char **v, size_t n);

/* ---- queue control: flush, drop, expiry (operators) ------------------------------------
 * A flush resets a queued peer's backoff so that it is tried now (postqueue -f). With
 * several nodes the node holding the peer's lease may be another one: the flush is also
 * recorded in the flushes table, which every node reads on its scan (pb_store_flush_list)
 * and the lease holder applies and clears (pb_store_flush_done). A drop (all of a peer's
 * queue) or an expiry (its events older than max_queue_age) deletes events, starts a new
 * sequence epoch towards the peer and appends a notice to our own inbox saying what was
 * deleted, in one transaction. */

/* Every queued peer (peer NULL) or peer when it is queued gets attempts 0 and
 * next_attempt_at now, in one transaction; with record each flushed peer also gets a
 * flushes row (peer, now) for the node holding its lease. Peers in push or parked mode are
 * left alone. *peers (may be NULL) receives the names of the peers flushed (caller frees
 * with pb_store_strings_free; NULL when none), *n their number. */
pb_err pb_store_peer_flush(pb_store *s, const char *peer, int64_t now, bool record, char ***peers,
                           size_t *n);

typedef struct pb_flush_req {
    char *peer; /* owned */
    int64_t requested_at;
} pb_flush_req;
void pb_flush_reqs_free(pb_flush_req *r, size_t n);
/* The recorded flushes, ordered by peer. *out is the caller's (pb_flush_reqs_free); NULL
 * when none. */
pb_err pb_store_flush_list(pb_store *s, pb_flush_req **out, size_t *n);
/* Deletes peer's flushes row if it was requested at or before requested_at (a newer
 * flush stays); PB_OK also when there is none. */
pb_err pb_store_flush_done(pb_store *s, const char *peer, int64_t requested_at);

typedef struct pb_drop_result {
    uint64_t count;               /* events deleted */
    uint64_t first_seq, last_seq; /* the lowest and highest deleted, 0 when none */
    int64_t oldest_at;            /* created_at (ms) of the oldest deleted, 0 when none */
    uint64_t remaining;           /* events still queued for the peer */
    uint64_t epoch;               /* the peer's new send epoch, 0 when nothing was deleted */
    uint64_t notice_seq;          /* the inbox notice's seq, 0 when nothing was deleted */
} pb_drop_result;

/* Deletes peer's outbox events created before `before` (Unix ms; INT64_MAX: the whole
 * queue) in one transaction that, when it deleted any, also starts a new send epoch
 * towards peer (as pb_store_peer_new_epoch; sequence numbers go on), puts the peer back
 * in push mode (attempts 0, no next attempt, no error, not parked) when its queue is now
 * empty or its parked event was deleted, and appends a notice to the inbox, from peer at
 * now: {"queueDropped": {"peer", "reason", "count", "firstSeq", "lastSeq",
 * "oldestCreatedAt"}} (uint64 as decimal strings, the time in ms). reason is a short
 * ASCII word ("operator", "max_queue_age"). With record (several nodes) the peer also gets
 * a flushes row (peer, now), so that the node holding its lease re-reads its state. *res
 * is filled on PB_OK (all 0 but remaining when nothing matched: nothing written).
 * PB_ERR_NOT_FOUND for an unknown peer. */
pb_err pb_store_outbox_drop(pb_store *s, const char *peer, int64_t before, const char *reason,
                            int64_t now, bool record, pb_drop_result *res);
/* The peers whose queue's head (its lowest seq) was created before `before` (ms), ordered
 * by server_id: what an expiry looks at. Cost O(peers with a queue). *peers (caller frees
 * with pb_store_strings_free) is NULL when none. */
pb_err pb_store_outbox_expired_peers(pb_store *s, int64_t before, char ***peers, size_t *n);

/* ---- monitoring: queue shape, peers by mode, unread inbox ------------------------------------ */

/* Age buckets of pb_store_qshape, in minutes: [0,5) [5,10) [10,20) [20,40) [40,80) [80,160)
 * and 160 or more (an event dated in the future counts as age 0). */
#define PB_QSHAPE_BUCKETS 7
#define PB_QSHAPE_EDGES_MIN                                                                        \
    {                                                                                              \
        5, 10, 20, 40, 80, 160                                                                     \
    }

typedef struct pb_qshape_row {
    char *peer; /* owned */
    uint64_t total;
    int64_t oldest_at;                  /* created_at (ms) of the peer's oldest event */
    uint64_t counts[PB_QSHAPE_BUCKETS]; /* events by age bucket */
} pb_qshape_row;
void pb_qshape_rows_free(pb_qshape_row *rows, size_t n);

/* One row per peer with at least one queued event, ordered by total (descending) then
 * peer, with its events counted by age (now_ms - created_at). One query that reads every
 * queued event's created_at (cost O(queued)). *rows (caller frees with
 * pb_qshape_rows_free) is NULL when nothing is queued. */
pb_err pb_store_qshape(pb_store *s, int64_t now_ms, pb_qshape_row **rows, size_t *n);
/* The same rows with counts all 0, from each peer's queue counter (total) and the first
 * key of its queue (oldest_at: the created_at of the event at the queue's head, the
 * oldest unless clocks went back): cost O(peers), whatever is queued. What monitoring
 * reads. */
pb_err pb_store_queue_summary(pb_store *s, pb_qshape_row **rows, size_t *n);
/* Known peers by delivery mode: counts[PB_MODE_PUSH], [PB_MODE_QUEUED], [PB_MODE_PARKED]. */
pb_err pb_store_peer_mode_counts(pb_store *s, uint64_t counts[3]);
/* Inbox items with seq > after: how many, and the received_at (ms) of the first of them
 * (0 when none). Two key lookups: the inbox is append-only with consecutive seqs. */
pb_err pb_store_inbox_unread(pb_store *s, uint64_t after, uint64_t *count, int64_t *oldest_at);

/* ---- test-only fault points (PB_FAULTS builds) ----------------------------------------- */

/* Modes of pb_store_fault_checkpoint. */
enum { PB_STORE_CK_FAIL = 1, PB_STORE_CK_NO_CONN = 2 };

#ifdef PB_FAULTS
/* From now on every write call fails with err (e.g. PB_ERR_STORE for a full disk)
 * without touching the database, until called again with PB_OK. Reads are unaffected. */
void pb_store_fault_set(pb_store *s, pb_err err);
/* hold=true: no queued write starts until called with false (or the store is closed),
 * so a test can gather a known set of writes into one group commit (SQLite) or start
 * them at once (PostgreSQL). */
void pb_store_fault_hold(pb_store *s, bool hold);
/* Number of write calls queued and not yet started (held). */
size_t pb_store_fault_queued(pb_store *s);
/* A write call that sets meta key to "partial" and then violates a constraint in the
 * same transaction or job: returns the constraint's error (PB_ERR_INVAL) and must leave
 * nothing behind, while the other writes (of its batch) commit. */
pb_err pb_store_fault_bad_write(pb_store *s, const char *key);
/* SQLite's checkpoints from now on: PB_STORE_CK_FAIL, each fails (as an I/O error would);
 * PB_STORE_CK_NO_CONN, the checkpoint connection does not open; 0, as normal. */
void pb_store_fault_checkpoint(pb_store *s, int mode);
#endif

#endif
