/*
 * store - postbox's durable state behind one narrow interface. Two backends implement it
 * (store_sqlite.c now, a PostgreSQL one later) through the ops table in store_impl.h;
 * callers never see SQL or which backend runs.
 *
 * Durability contract: a write function returns PB_OK only after its transaction is
 * committed with the configured synchronous level (FULL by default: on disk). Writes are
 * group-committed: concurrent callers are batched into one transaction by a single
 * writer, each caller waiting for the commit that contains its change; one caller's
 * failure (a constraint) does not fail the others in its batch.
 *
 * Errors: PB_ERR_STORE is a store that cannot take the write now (disk full, I/O error,
 * locked): the caller answers 503 and may retry later; nothing of the failed call was
 * written. PB_ERR_CORRUPT is broken local state: fatal.
 *
 * What it holds now: meta (this server's identity and key metadata), peers (every
 * server this one federated with) and their public keys. The delivery engine adds the
 * per-peer outbox queue, the inbox and per-peer delivery state behind the same pattern:
 * append, read in order from a cursor, delete/ack up to a sequence, per-peer state.
 *
 * Untrusted input: none directly; callers validate server IDs before they get here.
 */
#ifndef PB_STORE_H
#define PB_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keys.h"
#include "postbox.h"

typedef struct pb_store pb_store;

typedef enum pb_store_sync {
    PB_SYNC_DEFAULT = 0, /* zero-initialised opts: means PB_SYNC_FULL */
    PB_SYNC_OFF = 1,
    PB_SYNC_NORMAL = 2,
    PB_SYNC_FULL = 3,
} pb_store_sync;

typedef struct pb_store_opts {
    pb_store_sync sync;  /* SQLite PRAGMA synchronous; FULL by default */
    int busy_timeout_ms; /* lock wait before PB_ERR_STORE; default 5000 (0 = default) */
    int max_batch;       /* most writes in one group commit; default 256 (0 = default) */
} pb_store_opts;

#define PB_STORE_BUSY_TIMEOUT_DEFAULT 5000
#define PB_STORE_MAX_BATCH_DEFAULT 256
#define PB_STORE_MAX_BATCH_LIMIT 100000

/* Zero-initialised opts mean the defaults; this fills them in explicitly. Negative
 * values or a max_batch over PB_STORE_MAX_BATCH_LIMIT make pb_store_open fail with
 * PB_ERR_CONFIG. */
void pb_store_opts_default(pb_store_opts *o);
pb_err pb_store_sync_parse(const char *s, pb_store_sync *out); /* off|normal|full */
const char *pb_store_sync_name(pb_store_sync s);

/*
 * Opens (creating and migrating as needed) the store named by spec:
 *   "sqlite:/path/to/postbox.db" or a plain path: SQLite. The parent directory must
 *   exist; a new database file is created with mode 0600.
 * opts may be NULL (defaults). On PB_OK *out is owned by the caller: pb_store_close.
 * Errors: PB_ERR_CONFIG for a bad spec or options, a missing directory, or a database
 * whose schema is newer than this build knows (logged); PB_ERR_CORRUPT for a file that
 * is not a database; PB_ERR_IO / PB_ERR_STORE when it cannot be opened or migrated.
 */
pb_err pb_store_open(const char *spec, const pb_store_opts *opts, pb_store **out);
/* Commits the writes already queued (their callers get their results), stops the
 * writer, closes. No call may start once close has begun. NULL is a no-op. */
void pb_store_close(pb_store *s);

/* Cheap liveness check for /healthz: a read and a no-op write path check. */
pb_err pb_store_ping(pb_store *s);
/* Current schema version (tests, --check-config). */
pb_err pb_store_schema_version(pb_store *s, int *version);
/* Full consistency check (SQLite integrity_check): PB_OK or PB_ERR_CORRUPT. */
pb_err pb_store_integrity_check(pb_store *s);

/* Counters since open, for tests and benchmarks to see group commit: commits is the
 * number of write transactions committed, writes the number of write calls (jobs) that
 * succeeded in them (pb_store_ping's write check included). writes / commits is the mean
 * batch size. */
typedef struct pb_store_stats {
    uint64_t commits;
    uint64_t writes;
} pb_store_stats;
void pb_store_stats_get(pb_store *s, pb_store_stats *out);

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

/* ---- test-only fault points (PB_FAULTS builds) ----------------------------------------- */
#ifdef PB_FAULTS
/* From now on every write call fails with err (e.g. PB_ERR_STORE for a full disk)
 * without touching the database, until called again with PB_OK. Reads are unaffected. */
void pb_store_fault_set(pb_store *s, pb_err err);
/* hold=true: the writer takes no queued write until called with false (or the store is
 * closed), so a test can gather a known set of writes into one group commit. */
void pb_store_fault_hold(pb_store *s, bool hold);
/* Number of write calls queued and not yet taken by the writer. */
size_t pb_store_fault_queued(pb_store *s);
/* A write call that sets meta key to "partial" and then violates a constraint in the
 * same job: returns the constraint's error (PB_ERR_INVAL) and must leave nothing behind,
 * while the other writes of its batch commit. */
pb_err pb_store_fault_bad_write(pb_store *s, const char *key);
#endif

#endif
