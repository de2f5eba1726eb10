/*
 * store_sqlite - the SQLite backend of the store (implements store_impl.h).
 *
 * Design:
 *  - One database file in WAL mode, PRAGMA synchronous from the options (FULL by default),
 *    foreign_keys on, a busy timeout. The schema is versioned: `migrations` is an array of
 *    SQL steps; opening applies the missing ones in order inside one transaction, and
 *    refuses (PB_ERR_CONFIG, logged) a database newer than this build.
 *  - Group commit: exactly one writer thread owns the write connection. A write call
 *    packages its work as a job (job_fn + context on the caller's stack), enqueues it and
 *    waits. The writer takes every queued job (up to max_batch), runs BEGIN IMMEDIATE, each
 *    job inside its own SAVEPOINT (released on success, rolled back on failure so one job
 *    does not fail the others), COMMIT, then wakes every caller with its own result. A
 *    failed COMMIT (or an error that made SQLite abandon the transaction) fails the whole
 *    batch with PB_ERR_STORE (PB_ERR_CORRUPT if the file is corrupt, PB_ERR_DISK_FULL if
 *    the disk is full: SQLITE_FULL, or an I/O error with ENOSPC); the writer keeps
 *    running. New write operations are a job_fn plus a call to job_run().
 *  - Reads use a bounded pool of read-only connections (created on demand), so under WAL
 *    they see the last commit and never wait for the writer's fsync.
 *  - Every connection caches its prepared statements (prepared once, reset after use).
 *
 * Schema (version 8; migration 1 created meta and peers, 3 added leases, 4 submissions,
 * 5 sequence epochs and renames_in, 6 dropped the server_id indexes of guilds and invites,
 * 7 added the model log, 8 the queue counters):
 *  - peers(server_id PK, first_seen, last_contact (s), pubkey, key_fetched_at (s),
 *    mode, attempts, next_attempt_at, last_error, parked_seq, next_seq DEFAULT 1,
 *    recv_seq DEFAULT 0, send_epoch DEFAULT 0, queued DEFAULT 0): one row per peer, as
 *    receiver R of our outbox (delivery fields, next_seq = the seq the next appended event
 *    gets, so an append never counts the queue, queued = the rows of its outbox, added to
 *    by appends and taken from by deletions in their transaction, so that reading a queue's
 *    length never counts it, send_epoch = our epoch towards it). Every statement
 *    that can create the row binds a random non-zero send_epoch drawn on the caller's
 *    thread (used only when the row is new); rows from before version 5 keep 0.
 *    recv_seq is unused since version 5 (migrated into recv_epochs, never read or
 *    written since).
 *  - recv_epochs(peer, epoch, recv_seq, updated_at (ms)) PK (peer, epoch) WITHOUT ROWID:
 *    the peer as sender S to us, per its epoch (recv_seq = highest seq applied in it). A
 *    receive reads its row, applies, upserts it, and when it created the row deletes the
 *    sender's rows beyond PB_STORE_RECV_EPOCHS_MAX (least recently updated first), all in
 *    its job. The latest row (ORDER BY updated_at, recv_seq, epoch: RECV_LATEST_ORDER) is
 *    found by correlated subqueries bounded to the peer's few keys.
 *  - outbox(peer, seq, event, created_at) PK (peer, seq) WITHOUT ROWID: the queue is
 *    stored clustered by peer, so read/ack/count are range scans of one peer's keys.
 *  - inbox(seq INTEGER PK AUTOINCREMENT, from_id, event, old_id, new_id, received_at):
 *    AUTOINCREMENT so a cursor value is never reused; an event row or (event NULL) a
 *    rename row, enforced by a CHECK.
 *  - guilds(user_id, server_id, guild_id) and invites(user_id, server_id, invite_id,
 *    inviter_id), PKs starting with user_id (WITHOUT ROWID). No index on server_id: a
 *    peer's rename (rare) scans both tables; every received event would otherwise insert
 *    into a second, scattered B-tree.
 *  - The model log: model_log(id INTEGER PK, seq, user_id, op, server_id, guild_id,
 *    invite_id, inviter_id) indexed by user_id. A received event does not touch guilds or
 *    invites: it appends its change (op 1 guild added, 2 removed, 3 invited; seq = its
 *    inbox seq), in user order within the call. Inserting at scattered keys of a table
 *    larger than the page cache costs a page read and write per event (measured: the pull
 *    drain of 1,000,000 events ran at a third of the 10,000 rate); appending costs a page per
 *    ~40 events. Reads (pb_store_guilds, pb_store_invites) take, per key, the log row of the
 *    highest seq over the table row. Once the log holds opts.model_log_rows rows the writer
 *    runs a merge cycle in steps between batches, while no write waits (past twice that
 *    many rows, also while writes wait, at the pace of what they add: log_merge): the rows
 *    present at the cycle's start (id <= log_upto), users in int64 order, about a 32nd of
 *    the threshold's rows per step, applied to the tables in key order (the last change
 *    of a key wins) in the step's own transaction; the last step deletes the cycle's rows,
 *    a range of the log's primary key. A merged row left in the log reads the same over
 *    the table, so a step, a crash or a restart in between changes no answer. A peer's
 *    rename merges the whole log first. PostgreSQL applies events to the tables directly.
 *  - The writer checkpoints the WAL every WAL_AUTOCHECKPOINT pages; a job alone in its
 *    batch runs without a savepoint.
 *  - renames_out(peer PK, old_id, new_id, attempts, next_attempt_at, last_error).
 *  - renames_in(old_id PK, new_id UNIQUE, created_at (ms)) indexed by created_at: pending
 *    incoming renames; the UNIQUE constraint refuses a new_id pending for another old_id
 *    (PB_ERR_EXISTS).
 *  - leases(peer PK, holder, expires_at (ms)) WITHOUT ROWID: which node delivers to the
 *    peer (store.h "outbound ownership"); one upsert takes or renews a lease.
 *  - submissions(id PK, peer, first_seq, count, created_at (ms)) WITHOUT ROWID, indexed by
 *    created_at: client-chosen submission IDs (store.h pb_store_outbox_submit), recorded
 *    in the append's job; the same job prunes at most PB_STORE_SUBMISSION_PRUNE_MAX expired
 *    rows through the index. A peer rename leaves them alone.
 *  pb_store_outbox_peers is a loose index scan of outbox's primary key (a recursive query
 *  that seeks to the next peer after each one found), never a scan of the queue.
 *  No foreign keys: a rename re-labels every table explicitly in one job.
 *  Events are stored as pb_wire_event_encode bytes (encoded on the caller's thread before
 *  the job is queued); a stored event that does not decode is PB_ERR_CORRUPT. uint64
 *  values are stored as their int64 bit pattern; uint64 ordering is done in SQL.
 *
 * Untrusted input: none directly (callers validate server IDs; events were decoded by the
 * wire module). Stored values read back are checked (a key blob of the wrong length, an
 * undecodable event or a bad mode is PB_ERR_CORRUPT).
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util/buf.h"
#include "util/health.h"
#include "util/log.h"
#include "util/mem.h"
#include "store/store_impl.h"
#include "wire/wire.h"

#define READ_POOL_MAX 8
/* WAL pages between checkpoints (SQLite's default is 1,000): about 40 MiB of WAL. */
#define WAL_AUTOCHECKPOINT 10000
#define PB_STR_(x) #x
#define PB_STR(x) PB_STR_(x)

/* ---- schema ----------------------------------------------------------------------------- */

/* Forward migrations: migrations[i] takes the schema from version i to i + 1. Never edit a
 * released step; append a new one. */
static const char *const migrations[] = {
    /* 1: identity facts and peers with their keys */
    "CREATE TABLE meta ("
    "  key TEXT PRIMARY KEY,"
    "  value TEXT NOT NULL"
    ");"
    "CREATE TABLE peers ("
    "  server_id TEXT PRIMARY KEY,"
    "  first_seen INTEGER NOT NULL,"
    "  last_contact INTEGER NOT NULL DEFAULT 0,"
    "  pubkey BLOB NULL CHECK (pubkey IS NULL OR length(pubkey) = 32),"
    "  key_fetched_at INTEGER NOT NULL DEFAULT 0"
    ");",
    /* 2: delivery engine state: per-peer delivery/sequence columns, outbox, inbox, local
     * users' guild lists and pending invites, pending renames of this server */
    "ALTER TABLE peers ADD COLUMN mode INTEGER NOT NULL DEFAULT 0 CHECK (mode BETWEEN 0 AND 2);"
    "ALTER TABLE peers ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE peers ADD COLUMN next_attempt_at INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE peers ADD COLUMN last_error TEXT NULL;"
    "ALTER TABLE peers ADD COLUMN parked_seq INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE peers ADD COLUMN next_seq INTEGER NOT NULL DEFAULT 1 CHECK (next_seq >= 1);"
    "ALTER TABLE peers ADD COLUMN recv_seq INTEGER NOT NULL DEFAULT 0;"
    "CREATE TABLE outbox ("
    "  peer TEXT NOT NULL,"
    "  seq INTEGER NOT NULL CHECK (seq >= 1),"
    "  event BLOB NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  PRIMARY KEY (peer, seq)"
    ") WITHOUT ROWID;"
    "CREATE TABLE inbox ("
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  from_id TEXT NOT NULL,"
    "  event BLOB NULL,"
    "  old_id TEXT NULL,"
    "  new_id TEXT NULL,"
    "  received_at INTEGER NOT NULL,"
    "  CHECK ((event IS NOT NULL AND old_id IS NULL AND new_id IS NULL) OR"
    "         (event IS NULL AND old_id IS NOT NULL AND new_id IS NOT NULL))"
    ");"
    "CREATE TABLE guilds ("
    "  user_id INTEGER NOT NULL,"
    "  server_id TEXT NOT NULL,"
    "  guild_id INTEGER NOT NULL,"
    "  PRIMARY KEY (user_id, server_id, guild_id)"
    ") WITHOUT ROWID;"
    "CREATE INDEX guilds_by_server ON guilds(server_id);"
    "CREATE TABLE invites ("
    "  user_id INTEGER NOT NULL,"
    "  server_id TEXT NOT NULL,"
    "  invite_id TEXT NOT NULL,"
    "  inviter_id INTEGER NOT NULL,"
    "  PRIMARY KEY (user_id, server_id, invite_id)"
    ") WITHOUT ROWID;"
    "CREATE INDEX invites_by_server ON invites(server_id);"
    "CREATE TABLE renames_out ("
    "  peer TEXT PRIMARY KEY,"
    "  old_id TEXT NOT NULL,"
    "  new_id TEXT NOT NULL,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  next_attempt_at INTEGER NOT NULL DEFAULT 0,"
    "  last_error TEXT NULL"
    ");",
    /* 3: outbound ownership among several nodes (store.h "outbound ownership") */
    "CREATE TABLE leases ("
    "  peer TEXT PRIMARY KEY,"
    "  holder TEXT NOT NULL,"
    "  expires_at INTEGER NOT NULL"
    ") WITHOUT ROWID;",
    /* 4: client-chosen submission IDs (store.h pb_store_outbox_submit) */
    "CREATE TABLE submissions ("
    "  id TEXT PRIMARY KEY,"
    "  peer TEXT NOT NULL,"
    "  first_seq INTEGER NOT NULL CHECK (first_seq >= 1),"
    "  count INTEGER NOT NULL CHECK (count >= 1),"
    "  created_at INTEGER NOT NULL"
    ") WITHOUT ROWID;"
    "CREATE INDEX submissions_by_age ON submissions(created_at);",
    /* 5: sequence epochs (store.h "sequence epochs"): the sender epoch of every peer (0,
     * the legacy epoch, for the rows that exist now; new rows get a random one), the
     * receive state per (sender, epoch) taking over peers.recv_seq as epoch 0, and
     * pending incoming renames */
    "ALTER TABLE peers ADD COLUMN send_epoch INTEGER NOT NULL DEFAULT 0;"
    "CREATE TABLE recv_epochs ("
    "  peer TEXT NOT NULL,"
    "  epoch INTEGER NOT NULL,"
    "  recv_seq INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  PRIMARY KEY (peer, epoch)"
    ") WITHOUT ROWID;"
    "INSERT INTO recv_epochs(peer, epoch, recv_seq, updated_at)"
    "  SELECT server_id, 0, recv_seq, 0 FROM peers WHERE recv_seq <> 0;"
    "CREATE TABLE renames_in ("
    "  old_id TEXT PRIMARY KEY,"
    "  new_id TEXT NOT NULL UNIQUE,"
    "  created_at INTEGER NOT NULL"
    ");"
    "CREATE INDEX renames_in_by_age ON renames_in(created_at);",
    /* 6: no index of guilds and invites by server: it doubled the pages each received
     * event dirties (a scattered insert into a second B-tree), for the sake of a peer's
     * rename, which now scans the two tables once */
    "DROP INDEX IF EXISTS guilds_by_server; DROP INDEX IF EXISTS invites_by_server;",
    /* 7: the model log: received guild and invite changes, merged into guilds and invites
     * in key order (see "model log" above); seq is the event's inbox seq */
    "CREATE TABLE model_log ("
    "  id INTEGER PRIMARY KEY,"
    "  seq INTEGER NOT NULL CHECK (seq >= 1),"
    "  user_id INTEGER NOT NULL,"
    "  op INTEGER NOT NULL CHECK (op BETWEEN 1 AND 3),"
    "  server_id TEXT NOT NULL,"
    "  guild_id INTEGER NULL,"
    "  invite_id TEXT NULL,"
    "  inviter_id INTEGER NULL,"
    "  CHECK ((op < 3 AND guild_id IS NOT NULL AND invite_id IS NULL) OR"
    "         (op = 3 AND guild_id IS NULL AND invite_id IS NOT NULL AND inviter_id IS NOT NULL))"
    ");"
    "CREATE INDEX model_log_by_user ON model_log(user_id);",
    /* 8: each peer's queue length kept with the queue (appends add, deletions subtract in
     * the same transaction), so that reading it never counts the queue */
    ("ALTER TABLE peers ADD COLUMN queued INTEGER NOT NULL DEFAULT 0;"
     "UPDATE peers SET queued = (SELECT count(*) FROM outbox o WHERE o.peer = peers.server_id);"),
};
#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

/* ---- cached statements ------------------------------------------------------------------ */

enum stmt_id {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_SAVEPOINT,
    ST_RELEASE,
    ST_ROLLBACK_TO,
    ST_PING,
    ST_SCHEMA_VERSION,
    ST_INTEGRITY,
    ST_META_GET,
    ST_META_SET,
    ST_PEER_TOUCH,
    ST_PEER_KEY_GET,
    ST_PEER_KEY_SET,
    ST_PEER_LIST,
    ST_PEER_ENSURE,
    ST_PEER_EXISTS,
    ST_PEER_SEQS,
    ST_PEER_NEXT_SEQ_SET,
    ST_PEER_DEQUEUED,
    ST_PEER_STATE_SET,
    ST_PEER_STATE_GET,
    ST_PEER_STATE_LIST,
    ST_PEER_NEW_EPOCH,
    ST_RECV_EPOCH_GET,
    ST_RECV_EPOCH_SET,
    ST_RECV_EPOCH_PRUNE,
    ST_RECV_LATEST,
    ST_OUTBOX_INSERT,
    ST_OUTBOX_READ,
    ST_OUTBOX_ACK,
    ST_OUTBOX_REMOVE,
    ST_INBOX_INSERT,
    ST_INBOX_READ,
    ST_INBOX_LAST,
    ST_GUILD_ADD,
    ST_GUILD_REMOVE,
    ST_GUILD_LIST,
    ST_INVITE_LIST,
    ST_RENAME_PEER,
    ST_RENAME_OUTBOX,
    ST_RENAME_GUILDS,
    ST_RENAME_INVITES,
    ST_RENAME_RENAMES_OUT,
    ST_RENAME_RECV_EPOCHS,
    ST_SELF_RENAME_UPSERT,
    ST_SELF_RENAME_DROP,
    ST_RENAME_OUT_LIST,
    ST_RENAME_OUT_DONE,
    ST_RENAME_OUT_FAILED,
    ST_RENAME_IN_ADD,
    ST_RENAME_IN_FIND,
    ST_RENAME_IN_REMOVE,
    ST_RENAME_IN_LIST,
    ST_RENAME_IN_EXPIRE,
    ST_RENAME_LEASES,
    ST_LEASE_ACQUIRE,
    ST_LEASE_RELEASE,
    ST_OUTBOX_PEERS,
    ST_SUBMISSION_GET,
    ST_SUBMISSION_INSERT,
    ST_SUBMISSION_PRUNE,
    ST_QSHAPE,
    ST_QUEUE_SUMMARY,
    ST_PEER_MODE_COUNTS,
    ST_INBOX_UNREAD,
    ST_LOG_GUILD,
    ST_LOG_INVITE,
    ST_LOG_COUNT,
    ST_LOG_CHUNK_END,
    ST_LOG_GUILD_FINAL,
    ST_MERGE_INVITES,
    ST_LOG_DELETE,
    ST_LOG_LAST,
    ST__COUNT
};

/* A sender's epoch rows, most recently updated first (ties: the highest recv_seq, then
 * the highest epoch, both as uint64): the first is the latest (store.h). */
#define RECV_LATEST_ORDER                                                                          \
    " ORDER BY e.updated_at DESC, e.recv_seq < 0 DESC, e.recv_seq DESC, e.epoch < 0 DESC,"         \
    " e.epoch DESC"
/* The rest of a subquery selecting a column of the peer's latest epoch row (NULL reads
 * as 0). */
#define RECV_LATEST_OF_PEER                                                                        \
    " FROM recv_epochs e WHERE e.peer = p.server_id" RECV_LATEST_ORDER " LIMIT 1)"

/* The peer's delivery state with its queue statistics, each bounded to its (peer, seq)
 * primary key range, and its latest receive epoch (bounded to the peer's epoch rows). */
#define PEER_STATE_SELECT                                                                          \
    "SELECT p.server_id, p.mode, p.attempts, p.next_attempt_at, p.last_error, p.parked_seq,"       \
    " p.next_seq, (SELECT e.recv_seq" RECV_LATEST_OF_PEER ", p.last_contact, p.queued,"            \
    " (SELECT o.created_at FROM outbox o WHERE o.peer = p.server_id ORDER BY o.seq LIMIT 1),"      \
    " (SELECT e.epoch" RECV_LATEST_OF_PEER ", p.send_epoch"                                        \
    " FROM peers p"

static const char *const stmt_sql[ST__COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_SAVEPOINT] = "SAVEPOINT job",
    [ST_RELEASE] = "RELEASE job",
    [ST_ROLLBACK_TO] = "ROLLBACK TO job",
    [ST_PING] = "SELECT 1",
    [ST_SCHEMA_VERSION] = "SELECT version FROM schema_version WHERE id = 1",
    [ST_INTEGRITY] = "PRAGMA integrity_check",
    [ST_META_GET] = "SELECT value FROM meta WHERE key = ?1",
    [ST_META_SET] = "INSERT INTO meta(key, value) VALUES (?1, ?2)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    [ST_PEER_TOUCH] = "INSERT INTO peers(server_id, first_seen, last_contact, send_epoch)"
                      " VALUES (?1, ?2, ?3, ?4)"
                      " ON CONFLICT(server_id) DO UPDATE SET last_contact ="
                      " CASE WHEN ?3 > 0 THEN ?3 ELSE last_contact END",
    [ST_PEER_KEY_GET] = "SELECT pubkey FROM peers WHERE server_id = ?1",
    [ST_PEER_KEY_SET] =
        "INSERT INTO peers(server_id, first_seen, pubkey, key_fetched_at,"
        " send_epoch) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(server_id) DO UPDATE SET"
        " pubkey = excluded.pubkey, key_fetched_at = excluded.key_fetched_at",
    [ST_PEER_LIST] = "SELECT server_id, first_seen, last_contact, pubkey, key_fetched_at"
                     " FROM peers ORDER BY server_id",
    [ST_PEER_ENSURE] = "INSERT INTO peers(server_id, first_seen, send_epoch) VALUES (?1, ?2, ?3)"
                       " ON CONFLICT(server_id) DO NOTHING",
    [ST_PEER_EXISTS] = "SELECT 1 FROM peers WHERE server_id = ?1",
    [ST_PEER_SEQS] = "SELECT next_seq FROM peers WHERE server_id = ?1",
    [ST_PEER_NEXT_SEQ_SET] =
        "UPDATE peers SET next_seq = ?2, queued = queued + ?3 WHERE server_id = ?1",
    [ST_PEER_DEQUEUED] = "UPDATE peers SET queued = queued - ?2 WHERE server_id = ?1",
    [ST_PEER_STATE_SET] =
        "INSERT INTO peers(server_id, first_seen, mode, attempts, next_attempt_at, last_error,"
        " parked_seq, send_epoch) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        " ON CONFLICT(server_id) DO UPDATE SET"
        " mode = excluded.mode, attempts = excluded.attempts,"
        " next_attempt_at = excluded.next_attempt_at, last_error = excluded.last_error,"
        " parked_seq = excluded.parked_seq",
    [ST_PEER_STATE_GET] = PEER_STATE_SELECT " WHERE p.server_id = ?1",
    [ST_PEER_STATE_LIST] = PEER_STATE_SELECT " ORDER BY p.server_id",
    /* ?3 and ?4 are two different random non-zero epochs: the row gets one that differs
     * from its current one */
    [ST_PEER_NEW_EPOCH] = "INSERT INTO peers(server_id, first_seen, send_epoch) VALUES (?1, ?2, ?3)"
                          " ON CONFLICT(server_id) DO UPDATE SET send_epoch ="
                          " CASE WHEN send_epoch = ?3 THEN ?4 ELSE ?3 END RETURNING send_epoch",
    [ST_RECV_EPOCH_GET] = "SELECT recv_seq FROM recv_epochs WHERE peer = ?1 AND epoch = ?2",
    [ST_RECV_EPOCH_SET] = "INSERT INTO recv_epochs(peer, epoch, recv_seq, updated_at)"
                          " VALUES (?1, ?2, ?3, ?4) ON CONFLICT(peer, epoch) DO UPDATE SET"
                          " recv_seq = excluded.recv_seq, updated_at = excluded.updated_at",
    /* keeps epoch ?2 (just written) and the ?3 latest others of the sender */
    [ST_RECV_EPOCH_PRUNE] = "DELETE FROM recv_epochs WHERE peer = ?1 AND epoch <> ?2 AND epoch"
                            " NOT IN (SELECT e.epoch FROM recv_epochs e WHERE e.peer = ?1"
                            " AND e.epoch <> ?2" RECV_LATEST_ORDER " LIMIT ?3)",
    [ST_RECV_LATEST] =
        "SELECT e.epoch, e.recv_seq FROM recv_epochs e WHERE e.peer = ?1" RECV_LATEST_ORDER
        " LIMIT 1",
    [ST_OUTBOX_INSERT] = "INSERT INTO outbox(peer, seq, event, created_at) VALUES (?1, ?2, ?3, ?4)",
    [ST_OUTBOX_READ] = "SELECT seq, created_at, event FROM outbox"
                       " WHERE peer = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
    [ST_OUTBOX_ACK] = "DELETE FROM outbox WHERE peer = ?1 AND seq <= ?2",
    [ST_OUTBOX_REMOVE] = "DELETE FROM outbox WHERE peer = ?1 AND seq = ?2",
    [ST_INBOX_INSERT] = "INSERT INTO inbox(from_id, event, old_id, new_id, received_at)"
                        " VALUES (?1, ?2, ?3, ?4, ?5)",
    [ST_INBOX_READ] = "SELECT seq, from_id, event, old_id, new_id, received_at FROM inbox"
                      " WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    [ST_INBOX_LAST] = "SELECT max(seq) FROM inbox",
    [ST_GUILD_ADD] = "INSERT INTO guilds(user_id, server_id, guild_id) VALUES (?1, ?2, ?3)"
                     " ON CONFLICT DO NOTHING",
    [ST_GUILD_REMOVE] =
        "DELETE FROM guilds WHERE user_id = ?1 AND server_id = ?2 AND guild_id = ?3",
    /* guild_id < 0 sorts the IDs >= 2^63 (stored negative) after the others: uint64 order */
    [ST_GUILD_LIST] = "SELECT guild_id, server_id FROM ("
                      "  SELECT guild_id, server_id, op, max(seq) FROM ("
                      "    SELECT guild_id, server_id, 1 AS op, 0 AS seq FROM guilds"
                      "     WHERE user_id = ?1"
                      "    UNION ALL SELECT guild_id, server_id, op, seq FROM model_log"
                      "     WHERE user_id = ?1 AND op < 3)"
                      "  GROUP BY server_id, guild_id)"
                      " WHERE op = 1 ORDER BY server_id, guild_id < 0, guild_id",
    [ST_INVITE_LIST] = "SELECT invite_id, server_id, inviter_id, max(seq) FROM ("
                       "  SELECT invite_id, server_id, inviter_id, 0 AS seq FROM invites"
                       "   WHERE user_id = ?1"
                       "  UNION ALL SELECT invite_id, server_id, inviter_id, seq FROM model_log"
                       "   WHERE user_id = ?1 AND op = 3)"
                       " GROUP BY server_id, invite_id ORDER BY server_id, invite_id",
    [ST_RENAME_PEER] = "UPDATE peers SET server_id = ?2, pubkey = ?3, key_fetched_at = ?4"
                       " WHERE server_id = ?1",
    [ST_RENAME_OUTBOX] = "UPDATE outbox SET peer = ?2 WHERE peer = ?1",
    [ST_RENAME_GUILDS] = "UPDATE OR REPLACE guilds SET server_id = ?2 WHERE server_id = ?1",
    [ST_RENAME_INVITES] = "UPDATE OR REPLACE invites SET server_id = ?2 WHERE server_id = ?1",
    [ST_RENAME_RENAMES_OUT] = "UPDATE renames_out SET peer = ?2 WHERE peer = ?1",
    [ST_RENAME_RECV_EPOCHS] = "UPDATE OR REPLACE recv_epochs SET peer = ?2 WHERE peer = ?1",
    /* WHERE true: lets SQLite parse the ON CONFLICT of an INSERT ... SELECT */
    [ST_SELF_RENAME_UPSERT] =
        "INSERT INTO renames_out(peer, old_id, new_id, attempts, next_attempt_at, last_error)"
        " SELECT server_id, ?1, ?2, 0, ?3, NULL FROM peers WHERE true"
        " ON CONFLICT(peer) DO UPDATE SET new_id = excluded.new_id, attempts = 0,"
        " next_attempt_at = excluded.next_attempt_at, last_error = NULL",
    [ST_SELF_RENAME_DROP] = "DELETE FROM renames_out WHERE old_id = new_id",
    [ST_RENAME_OUT_LIST] = "SELECT peer, old_id, new_id, attempts, next_attempt_at, last_error"
                           " FROM renames_out ORDER BY peer",
    [ST_RENAME_OUT_DONE] = "DELETE FROM renames_out WHERE peer = ?1 AND new_id = ?2",
    [ST_RENAME_OUT_FAILED] = "UPDATE renames_out SET attempts = ?2, next_attempt_at = ?3,"
                             " last_error = ?4 WHERE peer = ?1",
    /* a new_id pending for another old_id violates its UNIQUE constraint: PB_ERR_EXISTS */
    [ST_RENAME_IN_ADD] = "INSERT INTO renames_in(old_id, new_id, created_at) VALUES (?1, ?2, ?3)"
                         " ON CONFLICT(old_id) DO UPDATE SET new_id = excluded.new_id,"
                         " created_at = excluded.created_at",
    [ST_RENAME_IN_FIND] = "SELECT old_id, created_at FROM renames_in WHERE new_id = ?1",
    [ST_RENAME_IN_REMOVE] = "DELETE FROM renames_in WHERE old_id = ?1",
    [ST_RENAME_IN_LIST] = "SELECT old_id, new_id, created_at FROM renames_in ORDER BY old_id",
    [ST_RENAME_IN_EXPIRE] = "DELETE FROM renames_in WHERE created_at < ?1",
    [ST_RENAME_LEASES] = "UPDATE OR REPLACE leases SET peer = ?2 WHERE peer = ?1",
    /* changes() is 1 when the row was inserted or updated, 0 when the WHERE kept it */
    [ST_LEASE_ACQUIRE] = "INSERT INTO leases(peer, holder, expires_at) VALUES (?1, ?2, ?3 + ?4)"
                         " ON CONFLICT(peer) DO UPDATE SET holder = excluded.holder,"
                         " expires_at = excluded.expires_at"
                         " WHERE leases.holder = excluded.holder OR leases.expires_at <= ?3",
    [ST_LEASE_RELEASE] = "DELETE FROM leases WHERE peer = ?1 AND holder = ?2",
    /* loose index scan: each step seeks the first key of the next peer */
    [ST_OUTBOX_PEERS] = "WITH RECURSIVE t(peer) AS ("
                        " SELECT (SELECT peer FROM outbox ORDER BY peer LIMIT 1)"
                        " UNION ALL"
                        " SELECT (SELECT o.peer FROM outbox o WHERE o.peer > t.peer"
                        " ORDER BY o.peer LIMIT 1) FROM t WHERE t.peer IS NOT NULL)"
                        " SELECT peer FROM t WHERE peer IS NOT NULL",
    [ST_SUBMISSION_GET] = "SELECT peer, first_seq, count FROM submissions WHERE id = ?1",
    [ST_SUBMISSION_INSERT] = "INSERT INTO submissions(id, peer, first_seq, count, created_at)"
                             " VALUES (?1, ?2, ?3, ?4, ?5)",
    /* bounded: the oldest ?2 expired records, found through submissions_by_age */
    [ST_SUBMISSION_PRUNE] = "DELETE FROM submissions WHERE id IN (SELECT id FROM submissions"
                            " WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)",
    /* ages a = now - created_at (ms) counted in the PB_QSHAPE_EDGES_MIN buckets */
    [ST_QSHAPE] = "SELECT peer, count(*), min(created_at), sum(a < 300000),"
                  " sum(a >= 300000 AND a < 600000), sum(a >= 600000 AND a < 1200000),"
                  " sum(a >= 1200000 AND a < 2400000), sum(a >= 2400000 AND a < 4800000),"
                  " sum(a >= 4800000 AND a < 9600000), sum(a >= 9600000)"
                  " FROM (SELECT peer, created_at, ?1 - created_at AS a FROM outbox)"
                  " GROUP BY peer ORDER BY count(*) DESC, peer",
    [ST_QUEUE_SUMMARY] = "SELECT p.server_id, p.queued, (SELECT o.created_at FROM outbox o"
                         " WHERE o.peer = p.server_id ORDER BY o.seq LIMIT 1), 0, 0, 0, 0, 0, 0, 0"
                         " FROM peers p WHERE p.queued > 0 ORDER BY p.queued DESC, p.server_id",
    [ST_PEER_MODE_COUNTS] = "SELECT mode, count(*) FROM peers GROUP BY mode",
    /* the inbox is append-only with consecutive seqs (AUTOINCREMENT, rolled back with its
     * transaction): the rows after ?1 are max(seq) - ?1, counted without reading them */
    [ST_INBOX_UNREAD] = "SELECT max(0, coalesce((SELECT max(seq) FROM inbox), 0) - ?1),"
                        " (SELECT received_at FROM inbox WHERE seq > ?1 ORDER BY seq LIMIT 1)",
    /* the model log (see "model log" above); ?1 = op 1 add, 2 remove; ?5 = the event's
     * inbox seq */
    [ST_LOG_GUILD] = "INSERT INTO model_log(user_id, seq, op, server_id, guild_id)"
                     " VALUES (?2, ?5, ?1, ?3, ?4)",
    [ST_LOG_INVITE] = "INSERT INTO model_log(user_id, seq, op, server_id, invite_id, inviter_id)"
                      " VALUES (?1, ?5, 3, ?2, ?3, ?4)",
    [ST_LOG_COUNT] = "SELECT count(*) FROM model_log",
    [ST_LOG_CHUNK_END] = "SELECT user_id FROM model_log WHERE user_id >= ?1"
                         " ORDER BY user_id LIMIT 1 OFFSET ?2",
    /* the last change of each (user, server, guild) of a user range, in key order: the
     * bare column op comes from the row of max(seq) */
    [ST_LOG_GUILD_FINAL] = "SELECT user_id, server_id, guild_id, op, max(seq) FROM model_log"
                           " WHERE user_id BETWEEN ?1 AND ?2 AND id <= ?3 AND op < 3"
                           " GROUP BY user_id, server_id, guild_id"
                           " ORDER BY user_id, server_id, guild_id",
    /* in key order, the later of two changes of one invite last */
    [ST_MERGE_INVITES] = "INSERT INTO invites(user_id, server_id, invite_id, inviter_id)"
                         " SELECT user_id, server_id, invite_id, inviter_id FROM model_log"
                         " WHERE user_id BETWEEN ?1 AND ?2 AND id <= ?3 AND op = 3"
                         " ORDER BY user_id, server_id, invite_id, seq"
                         " ON CONFLICT(user_id, server_id, invite_id)"
                         " DO UPDATE SET inviter_id = excluded.inviter_id",
    [ST_LOG_DELETE] = "DELETE FROM model_log WHERE id <= ?1",
    [ST_LOG_LAST] = "SELECT max(id) FROM model_log",
};

typedef struct conn {
    sqlite3 *db;
    sqlite3_stmt *stmt[ST__COUNT];
    struct conn *next; /* read pool free list */
    /* the model log, on the write connection only (writer thread) */
    int64_t log_rows;   /* rows in model_log (an estimate after a lost batch) */
    int64_t log_upto;   /* the merge cycle in progress takes id <= log_upto; 0: none */
    int64_t log_cursor; /* first user_id of the cycle's next merge step */
    bool log_stale;     /* log_rows to be counted again */
} conn;

/* ---- the backend ------------------------------------------------------------------------ */

typedef pb_err (*job_fn)(conn *c, void *ctx);

/* One queued write; lives on the waiting caller's stack. */
typedef struct job {
    job_fn fn;
    void *ctx;
    pb_err result;
    bool done;
    struct job *next;
} job;

typedef struct sq {
    char *path;
    pb_store_opts opts;

    conn *wconn; /* owned by the writer thread once it runs */
    pthread_t writer;
    bool writer_started;
    pthread_mutex_t mu; /* guards the queue, stop, counters and faults */
    pthread_cond_t work;
    pthread_cond_t done;
    job *head, *tail;
    size_t queued;
    int callers; /* threads inside job_run: close waits for them to leave */
    bool stop;
    uint64_t commits, writes;
    pb_series *m_commit, *m_writes; /* commit latency, writes per commit; NULL: none */
#ifdef PB_FAULTS
    pb_err fault;
    bool hold;
#endif

    pthread_mutex_t rmu; /* guards the read pool */
    pthread_cond_t rcond;
    conn *rfree;
    int rcount; /* read connections in existence */
} sq;

/* ---- errors ----------------------------------------------------------------------------- */

static pb_err map_rc(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
        return PB_OK;
    case SQLITE_FULL:
        return PB_ERR_DISK_FULL;
    case SQLITE_IOERR:
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_NOMEM:
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_PROTOCOL:
    case SQLITE_INTERRUPT:
        return PB_ERR_STORE;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return PB_ERR_CORRUPT;
    case SQLITE_CONSTRAINT:
        return rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE ? PB_ERR_EXISTS
                                                                                    : PB_ERR_INVAL;
    case SQLITE_TOOBIG:
        return PB_ERR_TOO_BIG;
    default:
        return PB_ERR_INTERNAL;
    }
}

/* Logs a failed SQLite call and returns its pb_err. An unavailable store (a full disk: an
 * I/O error whose errno is ENOSPC counts as one) is reported to the store-health tracker,
 * which logs it calmly (util/health.h). */
static pb_err fail(sqlite3 *db, int rc, const char *what)
{
    pb_err err = map_rc(rc);
    if (err == PB_ERR_STORE && db && (rc & 0xff) == SQLITE_IOERR &&
        sqlite3_system_errno(db) == ENOSPC)
        err = PB_ERR_DISK_FULL;
    const char *msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    if (err == PB_ERR_CORRUPT) {
        PB_ERROR(NULL, "store: %s: %s (database corrupt)", what, msg);
    } else if ((rc & 0xff) == SQLITE_CONSTRAINT) {
        PB_DEBUG(NULL, "store: %s: %s", what, msg);
    } else if (pb_health_unavailable(err)) {
        pb_health_fail(pb_health_store(), err, NULL, "store: %s: %s", what, msg);
    } else {
        PB_WARN(NULL, "store: %s: %s", what, msg);
    }
    return err;
}

/* ---- connections ------------------------------------------------------------------------ */

static pb_err stmt_get(conn *c, enum stmt_id id, sqlite3_stmt **out)
{
    if (!c->stmt[id]) {
        int rc = sqlite3_prepare_v3(c->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                                    &c->stmt[id], NULL);
        if (rc != SQLITE_OK) return fail(c->db, rc, "prepare");
    }
    *out = c->stmt[id];
    return PB_OK;
}

static void stmt_done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* Runs a cached statement that takes no parameters and returns no rows. */
static pb_err stmt_exec(conn *c, enum stmt_id id)
{
    sqlite3_stmt *st = NULL;
    pb_err err = stmt_get(c, id, &st);
    if (err != PB_OK) return err;
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) err = fail(c->db, rc, stmt_sql[id]);
    stmt_done(st);
    return err;
}

/* Runs a one-row PRAGMA and copies its text answer into buf. */
static pb_err pragma_text(sqlite3 *db, const char *sql, char *buf, size_t size)
{
    sqlite3_stmt *st = NULL;
    pb_err err = PB_OK;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        err = fail(db, rc, sql);
        goto out;
    }
    /* Switching the journal mode can answer SQLITE_BUSY without calling the busy handler
     * (another connection opening the same new file): retry for a bounded while. */
    for (int tries = 0; (rc = sqlite3_step(st)) == SQLITE_BUSY && tries < 100; tries++) {
        sqlite3_reset(st);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (rc != SQLITE_ROW) {
        err = rc == SQLITE_DONE ? PB_ERR_INTERNAL : fail(db, rc, sql);
        goto out;
    }
    const unsigned char *t = sqlite3_column_text(st, 0);
    snprintf(buf, size, "%s", t ? (const char *)t : "");
out:
    sqlite3_finalize(st);
    return err;
}

static void conn_close(conn *c)
{
    if (!c) return;
    for (int i = 0; i < ST__COUNT; i++)
        sqlite3_finalize(c->stmt[i]);
    int rc = sqlite3_close(c->db);
    if (rc != SQLITE_OK) PB_WARN(NULL, "store: close: %s", sqlite3_errstr(rc));
    free(c);
}

static pb_err conn_open(sq *b, bool readonly, conn **out)
{
    conn *c = pb_xcalloc(1, sizeof *c);
    pb_err err = PB_OK;
    char mode[32];
    int flags = (readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(b->path, &c->db, flags, NULL);
    if (rc != SQLITE_OK) {
        PB_ERROR(NULL, "store: cannot open %s: %s", b->path,
                 c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
        err = (rc & 0xff) == SQLITE_CANTOPEN ? PB_ERR_IO : map_rc(rc);
        goto out;
    }
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_busy_timeout(c->db, b->opts.busy_timeout_ms);
    if (!readonly) {
        err = pragma_text(c->db, "PRAGMA journal_mode=WAL", mode, sizeof mode);
        if (err != PB_OK) goto out;
        if (strcmp(mode, "wal") != 0) {
            PB_ERROR(NULL, "store: %s: cannot enable WAL (journal_mode is %s)", b->path, mode);
            err = PB_ERR_STORE;
            goto out;
        }
        const char *sync = b->opts.sync == PB_SYNC_OFF      ? "PRAGMA synchronous=OFF"
                           : b->opts.sync == PB_SYNC_NORMAL ? "PRAGMA synchronous=NORMAL"
                                                            : "PRAGMA synchronous=FULL";
        rc = sqlite3_exec(c->db, sync, NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            err = fail(c->db, rc, sync);
            goto out;
        }
        /* Checkpoint every WAL_AUTOCHECKPOINT pages rather than SQLite's 1,000: a page
         * changed by several commits in between is copied into the database once. */
        rc = sqlite3_exec(c->db, "PRAGMA wal_autocheckpoint=" PB_STR(WAL_AUTOCHECKPOINT), NULL,
                          NULL, NULL);
        if (rc != SQLITE_OK) {
            err = fail(c->db, rc, "PRAGMA wal_autocheckpoint");
            goto out;
        }
    }
    rc = sqlite3_exec(c->db, "PRAGMA foreign_keys=ON", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        err = fail(c->db, rc, "PRAGMA foreign_keys");
        goto out;
    }
out:
    if (err != PB_OK) {
        conn_close(c);
        return err;
    }
    *out = c;
    return PB_OK;
}

/* ---- read pool -------------------------------------------------------------------------- */

static pb_err reader_get(sq *b, conn **out)
{
    pthread_mutex_lock(&b->rmu);
    for (;;) {
        if (b->rfree) {
            conn *c = b->rfree;
            b->rfree = c->next;
            c->next = NULL;
            pthread_mutex_unlock(&b->rmu);
            *out = c;
            return PB_OK;
        }
        if (b->rcount < READ_POOL_MAX) break;
        pthread_cond_wait(&b->rcond, &b->rmu);
    }
    b->rcount++;
    pthread_mutex_unlock(&b->rmu);

    conn *c = NULL;
    pb_err err = conn_open(b, true, &c);
    if (err != PB_OK) {
        pthread_mutex_lock(&b->rmu);
        b->rcount--;
        pthread_cond_signal(&b->rcond);
        pthread_mutex_unlock(&b->rmu);
        return err;
    }
    *out = c;
    return PB_OK;
}

static void reader_put(sq *b, conn *c)
{
    pthread_mutex_lock(&b->rmu);
    c->next = b->rfree;
    b->rfree = c;
    pthread_cond_signal(&b->rcond);
    pthread_mutex_unlock(&b->rmu);
}

/* ---- the writer ------------------------------------------------------------------------- */

/* The error a job gets when its batch's transaction is lost. */
static pb_err batch_error(pb_err cause)
{
    return cause == PB_ERR_CORRUPT || cause == PB_ERR_DISK_FULL ? cause : PB_ERR_STORE;
}

/* Runs one batch in one transaction; sets every job's result. Returns whether it
 * committed. */
static bool run_batch(sq *b, job **batch, size_t n)
{
    conn *c = b->wconn;
    pb_err err = stmt_exec(c, ST_BEGIN);
    size_t i;
    if (err != PB_OK) {
        for (i = 0; i < n; i++)
            batch[i]->result = batch_error(err);
        return false;
    }
    /* A job alone in its batch needs no savepoint (its transaction is one), and a
     * savepoint costs a statement journal: a copy of every page the job changes. */
    bool savepoints = n > 1;
    for (i = 0; i < n; i++) {
        job *j = batch[i];
        if (savepoints) {
            err = stmt_exec(c, ST_SAVEPOINT);
            if (err != PB_OK) goto abort;
        }
        j->result = j->fn(c, j->ctx);
        if (sqlite3_get_autocommit(c->db)) {
            /* The failure made SQLite roll back the whole transaction (I/O error, full
             * disk, out of memory): everything of this batch is lost. */
            err = j->result != PB_OK ? j->result : PB_ERR_STORE;
            goto abort;
        }
        if (!savepoints) {
            if (j->result == PB_OK) continue;
            stmt_exec(c, ST_ROLLBACK); /* the job failed on its own: it keeps its error */
            return false;
        }
        if (j->result == PB_OK) {
            err = stmt_exec(c, ST_RELEASE);
            if (err != PB_OK) goto abort;
        } else {
            err = stmt_exec(c, ST_ROLLBACK_TO);
            if (err == PB_OK) err = stmt_exec(c, ST_RELEASE);
            if (err != PB_OK) goto abort;
        }
    }
    err = stmt_exec(c, ST_COMMIT);
    if (err == PB_OK) return true;
    i = n;
abort:
    if (!sqlite3_get_autocommit(c->db)) stmt_exec(c, ST_ROLLBACK);
    /* Jobs before i that failed on their own keep their error; the rest lose the batch. */
    for (size_t k = 0; k < n; k++)
        if (k >= i || batch[k]->result == PB_OK) batch[k]->result = batch_error(err);
    return false;
}

static void log_merge(sq *b, int64_t added);
static pb_err log_recount(conn *c);

static void *writer_main(void *arg)
{
    sq *b = arg;
    job **batch = pb_xmalloc((size_t)b->opts.max_batch * sizeof *batch);
    pthread_mutex_lock(&b->mu);
    for (;;) {
#ifdef PB_FAULTS
        while (!b->stop && (!b->head || b->hold))
            pthread_cond_wait(&b->work, &b->mu);
#else
        while (!b->stop && !b->head)
            pthread_cond_wait(&b->work, &b->mu);
#endif
        if (!b->head) break; /* stopping and drained */
        size_t n = 0;
        while (b->head && n < (size_t)b->opts.max_batch) {
            batch[n++] = b->head;
            b->head = b->head->next;
        }
        if (!b->head) b->tail = NULL;
        b->queued -= n;
        pb_err fault = PB_OK;
#ifdef PB_FAULTS
        fault = b->fault;
#endif
        pthread_mutex_unlock(&b->mu);

        bool committed = false;
        int64_t log_before = b->wconn->log_rows;
        if (fault != PB_OK) {
            for (size_t i = 0; i < n; i++)
                batch[i]->result = fault;
        } else {
            double t0 = pb_metrics_clock();
            committed = run_batch(b, batch, n);
            for (size_t i = 0; i < n; i++) /* its log rows were rolled back: count again */
                if (batch[i]->result != PB_OK) b->wconn->log_stale = true;
            if (committed) {
                pb_histogram_observe(b->m_commit, pb_metrics_clock() - t0);
                pb_histogram_observe(b->m_writes, (double)n);
            }
        }

        pthread_mutex_lock(&b->mu);
        if (committed) {
            b->commits++;
            for (size_t i = 0; i < n; i++)
                b->writes += batch[i]->result == PB_OK;
        }
        /* After done is set the job's memory may go away with its caller's stack. */
        for (size_t i = 0; i < n; i++)
            batch[i]->done = true;
        pthread_cond_broadcast(&b->done);
        if (committed && (b->wconn->log_upto || b->wconn->log_rows >= b->opts.model_log_rows)) {
            /* the callers are answered; merge steps run while no write waits */
            pthread_mutex_unlock(&b->mu);
            log_merge(b, b->wconn->log_rows - log_before);
            pthread_mutex_lock(&b->mu);
        }
    }
    pthread_mutex_unlock(&b->mu);
    free(batch);
    return NULL;
}

/* Queues fn(ctx) for the writer and waits for the commit that contains it. fn runs on the
 * writer thread inside a savepoint of the write connection; it must reset every statement
 * it steps and must not call job_run itself. */
static pb_err job_run(sq *b, job_fn fn, void *ctx)
{
    job j = {.fn = fn, .ctx = ctx, .result = PB_ERR_INTERNAL};
    pthread_mutex_lock(&b->mu);
    if (b->stop) {
        pthread_mutex_unlock(&b->mu);
        return PB_ERR_SHUTDOWN;
    }
    b->callers++;
    if (b->tail) {
        b->tail->next = &j;
    } else {
        b->head = &j;
    }
    b->tail = &j;
    b->queued++;
    pthread_cond_signal(&b->work);
    while (!j.done)
        pthread_cond_wait(&b->done, &b->mu);
    if (--b->callers == 0 && b->stop) pthread_cond_broadcast(&b->done);
    pthread_mutex_unlock(&b->mu);
    return j.result;
}

/* ---- open / migrate / close ------------------------------------------------------------- */

static pb_err migrate(conn *c, const char *path)
{
    sqlite3 *db = c->db;
    sqlite3_stmt *st = NULL;
    pb_err err = PB_OK;
    int version = 0, rc;
    char *sql = NULL;

    rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK) return fail(db, rc, "migrate: begin");
    rc = sqlite3_exec(db,
                      "CREATE TABLE IF NOT EXISTS schema_version ("
                      " id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)",
                      NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        err = fail(db, rc, "migrate: schema_version");
        goto out;
    }
    rc = sqlite3_prepare_v2(db, stmt_sql[ST_SCHEMA_VERSION], -1, &st, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        version = sqlite3_column_int(st, 0);
    } else if (rc != SQLITE_DONE) {
        err = fail(db, rc, "migrate: read version");
        goto out;
    }
    sqlite3_reset(st); /* not active while the steps run: a DROP would find the table locked */
    if (version < 0 || version > SCHEMA_VERSION) {
        PB_ERROR(NULL,
                 "store: %s has schema version %d but this build knows only up to %d; "
                 "refusing to open (use a newer postbox)",
                 path, version, SCHEMA_VERSION);
        err = PB_ERR_CONFIG;
        goto out;
    }
    for (int v = version; v < SCHEMA_VERSION; v++) {
        rc = sqlite3_exec(db, migrations[v], NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            err = fail(db, rc, "migrate: step");
            goto out;
        }
    }
    if (version < SCHEMA_VERSION) {
        sql = pb_xasprintf("INSERT INTO schema_version(id, version) VALUES (1, %d)"
                           " ON CONFLICT(id) DO UPDATE SET version = excluded.version",
                           SCHEMA_VERSION);
        rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            err = fail(db, rc, "migrate: set version");
            goto out;
        }
    }
    sqlite3_finalize(st);
    st = NULL;
    rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        err = fail(db, rc, "migrate: commit");
        goto out;
    }
    if (version < SCHEMA_VERSION)
        PB_INFO(NULL, "store: %s: schema migrated from version %d to %d", path, version,
                SCHEMA_VERSION);
out:
    sqlite3_finalize(st);
    free(sql);
    if (err != PB_OK && !sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return err;
}

/* Checks the parent directory and creates the file with mode 0600 if it is missing. */
static pb_err prepare_file(const char *path)
{
    pb_err err = PB_OK;
    char *copy = pb_xstrdup(path);
    const char *dir = dirname(copy);
    struct stat stt;
    if (stat(dir, &stt) != 0 || !S_ISDIR(stt.st_mode)) {
        PB_ERROR(NULL, "store: directory %s of %s does not exist", dir, path);
        err = PB_ERR_CONFIG;
        goto out;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
        close(fd);
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
    } else if (errno != EEXIST) {
        PB_ERROR(NULL, "store: cannot create %s: %s", path, strerror(errno));
        err = errno == ENOSPC ? PB_ERR_DISK_FULL : PB_ERR_IO;
        goto out;
    }
out:
    free(copy);
    return err;
}

static void sq_close(void *impl)
{
    sq *b = impl;
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    b->stop = true;
    pthread_cond_broadcast(&b->work);
    pthread_mutex_unlock(&b->mu);
    if (b->writer_started) pthread_join(b->writer, NULL);
    /* Writes queued before close are committed now; let their callers leave. */
    pthread_mutex_lock(&b->mu);
    while (b->callers > 0)
        pthread_cond_wait(&b->done, &b->mu);
    pthread_mutex_unlock(&b->mu);

    while (b->rfree) {
        conn *c = b->rfree;
        b->rfree = c->next;
        conn_close(c);
    }
    if (b->wconn) {
        int rc =
            sqlite3_wal_checkpoint_v2(b->wconn->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        if (rc != SQLITE_OK) fail(b->wconn->db, rc, "checkpoint on close");
        conn_close(b->wconn);
    }
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->work);
    pthread_cond_destroy(&b->done);
    pthread_mutex_destroy(&b->rmu);
    pthread_cond_destroy(&b->rcond);
    free(b->path);
    free(b);
}

static pb_err sq_open(const char *location, const pb_store_opts *opts, void **impl)
{
    if (strcmp(location, ":memory:") == 0) {
        PB_ERROR(NULL, "store: an in-memory SQLite database is not durable; give a path");
        return PB_ERR_CONFIG;
    }
    pb_err err = prepare_file(location);
    if (err != PB_OK) return err;

    sq *b = pb_xcalloc(1, sizeof *b);
    b->path = pb_xstrdup(location);
    b->opts = *opts;
    b->m_commit = pb_metric_series(PB_METRIC(opts->metrics, store_commit_duration), NULL);
    b->m_writes = pb_metric_series(PB_METRIC(opts->metrics, store_commit_writes), NULL);
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->work, NULL);
    pthread_cond_init(&b->done, NULL);
    pthread_mutex_init(&b->rmu, NULL);
    pthread_cond_init(&b->rcond, NULL);

    err = conn_open(b, false, &b->wconn);
    if (err != PB_OK) goto out;
    err = migrate(b->wconn, b->path);
    if (err != PB_OK) goto out;
    err = log_recount(b->wconn);
    if (err != PB_OK) goto out;
    if (pthread_create(&b->writer, NULL, writer_main, b) != 0) {
        PB_ERROR(NULL, "store: cannot start the writer thread");
        err = PB_ERR_INTERNAL;
        goto out;
    }
    b->writer_started = true;
out:
    if (err != PB_OK) {
        sq_close(b);
        return err;
    }
    *impl = b;
    return PB_OK;
}

/* ---- status ----------------------------------------------------------------------------- */

static pb_err sq_meta_set(void *impl, const char *key, const char *val);

static pb_err sq_ping(void *impl)
{
    sq *b = impl;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    pb_err err = reader_get(b, &c);
    if (err != PB_OK) return err;
    err = stmt_get(c, ST_PING, &st);
    if (err == PB_OK) {
        int rc = sqlite3_step(st);
        if (rc != SQLITE_ROW) err = fail(c->db, rc, "ping");
        stmt_done(st);
    }
    reader_put(b, c);
    if (err != PB_OK) return err;
    /* A real write (and fsync): an empty transaction would not notice a full disk. */
    /* The value changes on every call (SQLite skips writing an unchanged row). */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char now[48];
    snprintf(now, sizeof now, "%lld.%09ld", (long long)ts.tv_sec, ts.tv_nsec);
    return sq_meta_set(impl, "health_checked_at", now);
}

static pb_err sq_schema_version(void *impl, int *version)
{
    sq *b = impl;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    pb_err err = reader_get(b, &c);
    if (err != PB_OK) return err;
    err = stmt_get(c, ST_SCHEMA_VERSION, &st);
    if (err != PB_OK) goto out;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *version = sqlite3_column_int(st, 0);
    } else {
        err = rc == SQLITE_DONE ? PB_ERR_CORRUPT : fail(c->db, rc, "schema version");
    }
    stmt_done(st);
out:
    reader_put(b, c);
    return err;
}

static pb_err sq_integrity_check(void *impl)
{
    sq *b = impl;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    pb_err err = reader_get(b, &c);
    if (err != PB_OK) return err;
    err = stmt_get(c, ST_INTEGRITY, &st);
    if (err != PB_OK) goto out;
    int rc, rows = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(st, 0);
        if (rows == 0 && t && strcmp(t, "ok") == 0) continue;
        if (rows++ < 5) PB_ERROR(NULL, "store: integrity_check: %s", t ? t : "(null)");
        err = PB_ERR_CORRUPT;
    }
    if (rc != SQLITE_DONE) {
        err = fail(c->db, rc, "integrity_check");
        if (!pb_health_unavailable(err)) err = PB_ERR_CORRUPT;
    }
    stmt_done(st);
out:
    reader_put(b, c);
    return err;
}

static void sq_stats_get(void *impl, pb_store_stats *out)
{
    sq *b = impl;
    pthread_mutex_lock(&b->mu);
    out->commits = b->commits;
    out->writes = b->writes;
    pthread_mutex_unlock(&b->mu);
}

/* ---- meta ------------------------------------------------------------------------------- */

static pb_err sq_meta_get(void *impl, const char *key, char **val)
{
    sq *b = impl;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    pb_err err = reader_get(b, &c);
    if (err != PB_OK) return err;
    err = stmt_get(c, ST_META_GET, &st);
    if (err != PB_OK) goto out;
    int rc = sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        if (t) {
            *val = pb_xstrndup((const char *)t, (size_t)sqlite3_column_bytes(st, 0));
        } else {
            err = PB_ERR_CORRUPT;
        }
    } else if (rc == SQLITE_DONE) {
        err = PB_ERR_NOT_FOUND;
    } else {
        err = fail(c->db, rc, "meta get");
    }
    stmt_done(st);
out:
    reader_put(b, c);
    return err;
}

struct meta_set_ctx {
    const char *key, *val;
};

static pb_err meta_set_job(conn *c, void *ctx)
{
    struct meta_set_ctx *m = ctx;
    sqlite3_stmt *st = NULL;
    pb_err err = stmt_get(c, ST_META_SET, &st);
    if (err != PB_OK) return err;
    int rc = sqlite3_bind_text(st, 1, m->key, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_bind_text(st, 2, m->val, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) err = fail(c->db, rc, "meta set");
    stmt_done(st);
    return err;
}

static pb_err sq_meta_set(void *impl, const char *key, const char *val)
{
    struct meta_set_ctx m = {key, val};
    return job_run(impl, meta_set_job, &m);
}

/* ---- peers ------------------------------------------------------------------------------ */

struct peer_ctx {
    const char *server_id;
    int64_t at; /* contact_at or fetched_at */
    const uint8_t *key;
    uint64_t epoch; /* send_epoch of a row created now */
};

static pb_err peer_touch_job(conn *c, void *ctx)
{
    struct peer_ctx *p = ctx;
    sqlite3_stmt *st = NULL;
    pb_err err = stmt_get(c, ST_PEER_TOUCH, &st);
    if (err != PB_OK) return err;
    int rc = sqlite3_bind_text(st, 1, p->server_id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 2, (sqlite3_int64)time(NULL));
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 3, p->at);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 4, (sqlite3_int64)p->epoch);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) err = fail(c->db, rc, "peer touch");
    stmt_done(st);
    return err;
}

static pb_err sq_peer_touch(void *impl, const char *server_id, int64_t contact_at)
{
    struct peer_ctx p = {server_id, contact_at, NULL, pb_store_epoch_random(0)};
    return job_run(impl, peer_touch_job, &p);
}

static pb_err peer_key_set_job(conn *c, void *ctx)
{
    struct peer_ctx *p = ctx;
    sqlite3_stmt *st = NULL;
    pb_err err = stmt_get(c, ST_PEER_KEY_SET, &st);
    if (err != PB_OK) return err;
    int rc = sqlite3_bind_text(st, 1, p->server_id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 2, (sqlite3_int64)time(NULL));
    if (rc == SQLITE_OK) rc = sqlite3_bind_blob(st, 3, p->key, PB_PUBKEY_LEN, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 4, p->at);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 5, (sqlite3_int64)p->epoch);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) err = fail(c->db, rc, "peer key set");
    stmt_done(st);
    return err;
}

static pb_err sq_peer_key_set(void *impl, const char *server_id, const uint8_t key[PB_PUBKEY_LEN],
                              int64_t fetched_at)
{
    struct peer_ctx p = {server_id, fetched_at, key, pb_store_epoch_random(0)};
    return job_run(impl, peer_key_set_job, &p);
}

static pb_err sq_peer_key_get(void *impl, const char *server_id, uint8_t key[PB_PUBKEY_LEN])
{
    sq *b = impl;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    pb_err err = reader_get(b, &c);
    if (err != PB_OK) return err;
    err = stmt_get(c, ST_PEER_KEY_GET, &st);
    if (err != PB_OK) goto out;
    int rc = sqlite3_bind_text(st, 1, server_id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        if (sqlite3_column_type(st, 0) == SQLITE_NULL) {
            err = PB_ERR_NOT_FOUND;
        } else if (sqlite3_column_bytes(st, 0) != PB_PUBKEY_LEN) {
            PB_ERROR(server_id, "store: stored key has %d bytes", sqlite3_column_bytes(st, 0));
            err = PB_ERR_CORRUPT;
        } else {
            memcpy(key, sqlite3_column_blob(st, 0), PB_PUBKEY_LEN);
        }
    } else if (rc == SQLITE_DONE) {
        err = PB_ERR_NOT_FOUND;
    } else {
        err = fail(c->db, rc, "peer key get");
    }
    stmt_done(st);
out:
    reader_put(b, c);
    return err;
}

/* ---- statement helpers for the delivery state ------------------------------------------- */

/* One bound parameter: an integer, a text (NULL binds SQL NULL) or a blob. */
typedef struct arg {
    char type; /* 'i', 't', 'b' */
    int64_t i;
    const void *p;
    int n;
} arg;

#define A_INT(v) ((arg){'i', (int64_t)(v), NULL, 0})
#define A_TEXT(s) ((arg){'t', 0, (s), -1})
#define A_BLOB(ptr, len) ((arg){'b', 0, (ptr), (int)(len)})
#define NARGS(...) ((int)(sizeof((const arg[]){__VA_ARGS__}) / sizeof(arg)))
/* Runs a cached statement that returns no rows with the given parameters. */
#define EXEC(c, id, changes, ...)                                                                  \
    exec_args((c), (id), (const arg[]){__VA_ARGS__}, NARGS(__VA_ARGS__), (changes))

static int bind_args(sqlite3_stmt *st, const arg *a, int n)
{
    int rc = SQLITE_OK;
    for (int k = 0; k < n && rc == SQLITE_OK; k++) {
        switch (a[k].type) {
        case 'i':
            rc = sqlite3_bind_int64(st, k + 1, a[k].i);
            break;
        case 't':
            rc = a[k].p ? sqlite3_bind_text(st, k + 1, a[k].p, -1, SQLITE_STATIC)
                        : sqlite3_bind_null(st, k + 1);
            break;
        default:
            rc = sqlite3_bind_blob(st, k + 1, a[k].p ? a[k].p : "", a[k].n, SQLITE_STATIC);
            break;
        }
    }
    return rc;
}

/* Gets a cached statement and binds its parameters; on PB_OK the caller steps it and
 * finishes with stmt_done. */
static pb_err stmt_bind(conn *c, enum stmt_id id, const arg *a, int n, sqlite3_stmt **out)
{
    sqlite3_stmt *st = NULL;
    pb_err err = stmt_get(c, id, &st);
    if (err != PB_OK) return err;
    int rc = bind_args(st, a, n);
    if (rc != SQLITE_OK) {
        err = fail(c->db, rc, stmt_sql[id]);
        stmt_done(st);
        return err;
    }
    *out = st;
    return PB_OK;
}

/* Runs statement id (no result rows); *changes (may be NULL) gets the rows it changed. */
static pb_err exec_args(conn *c, enum stmt_id id, const arg *a, int n, int *changes)
{
    sqlite3_stmt *st = NULL;
    pb_err err = stmt_bind(c, id, a, n, &st);
    if (err != PB_OK) return err;
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) {
        err = fail(c->db, rc, stmt_sql[id]);
    } else if (changes) {
        *changes = sqlite3_changes(c->db);
    }
    stmt_done(st);
    return err;
}

/* Clamps a uint64 (a cursor or a count) to what an SQLite INTEGER compares correctly. */
static int64_t clamp64(uint64_t v)
{
    return v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v;
}

/* A column's text copied into a new string; NULL for SQL NULL. */
static char *col_strdup(sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    return t ? pb_xstrndup((const char *)t, (size_t)sqlite3_column_bytes(st, col)) : NULL;
}

/* Decodes a stored Event blob; anything that does not decode is PB_ERR_CORRUPT. */
static pb_err col_event(sqlite3_stmt *st, int col, const char *what, pb_event *ev)
{
    const uint8_t *p = sqlite3_column_blob(st, col);
    int n = sqlite3_column_bytes(st, col);
    if (sqlite3_column_type(st, col) != SQLITE_BLOB || n <= 0 ||
        pb_wire_event_decode(p, (size_t)n, ev) != PB_OK) {
        PB_ERROR(NULL, "store: a stored %s event does not decode (database corrupt)", what);
        return PB_ERR_CORRUPT;
    }
    return PB_OK;
}

/* Events encoded before they are handed to the writer (so the writer thread only runs
 * SQL): one buffer, event i at bytes [off[i], off[i + 1]). */
typedef struct encoded {
    pb_buf buf;
    size_t *off;
} encoded;

static pb_err encode_events(const pb_event *evs, size_t n, encoded *e)
{
    e->buf = (pb_buf)PB_BUF_INIT;
    e->off = pb_xcalloc(n + 1, sizeof *e->off);
    for (size_t i = 0; i < n; i++) {
        pb_err err = pb_wire_event_encode(&evs[i], &e->buf);
        if (err != PB_OK) return err;
        e->off[i + 1] = e->buf.len;
        if (e->off[i + 1] - e->off[i] > PB_WIRE_MAX_MESSAGE) return PB_ERR_TOO_BIG;
    }
    return PB_OK;
}

static void encoded_free(encoded *e)
{
    pb_buf_free(&e->buf);
    free(e->off);
}

#define ENC_ARG(e, i) A_BLOB((e)->buf.data + (e)->off[i], (e)->off[(i) + 1] - (e)->off[i])

/* ---- list readers ----------------------------------------------------------------------- */

/* A row callback's answer that ends the read before the current row (never an error). */
#define ROW_STOP PB_ERR__COUNT

/* How a list reader turns its statement's rows into an array. */
typedef struct rows_spec {
    enum stmt_id id;
    const char *what; /* names the read in the error log */
    size_t size;      /* of one element */
    /* Fills the zeroed element from the current row: PB_OK, PB_ERR_CORRUPT for a bad row
     * (the element still counts, for free_arr), or ROW_STOP. */
    pb_err (*row)(sqlite3_stmt *st, void *elem, void *ctx);
    void (*free_arr)(void *arr, size_t n); /* frees n elements and the array */
} rows_spec;

/* Runs s->id with parameters a[0..na) on a reader connection and collects its rows. On
 * PB_OK *out (NULL when empty) is the caller's, to free as s->free_arr does. */
static pb_err read_rows(sq *b, const rows_spec *s, const arg *a, int na, void *ctx, void **out,
                        size_t *count)
{
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    unsigned char *arr = NULL;
    size_t n = 0, cap = 0;
    pb_err err = reader_get(b, &c);
    if (err != PB_OK) return err;
    err = stmt_bind(c, s->id, a, na, &st);
    if (err != PB_OK) goto out;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            arr = pb_xrealloc(arr, cap * s->size);
        }
        void *elem = arr + n * s->size;
        memset(elem, 0, s->size);
        err = s->row(st, elem, ctx);
        if (err == ROW_STOP) {
            err = PB_OK;
            break;
        }
        n++;
        if (err != PB_OK) break;
    }
    /* rc is SQLITE_ROW here only when a row callback stopped the read */
    if (err == PB_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) err = fail(c->db, rc, s->what);
    stmt_done(st);
out:
    reader_put(b, c);
    if (err != PB_OK) {
        s->free_arr(arr, n);
        return err;
    }
    if (n == 0) {
        free(arr);
        arr = NULL;
    }
    *out = arr;
    *count = n;
    return PB_OK;
}

/* ---- peer list -------------------------------------------------------------------------- */

static pb_err peer_info_row(sqlite3_stmt *st, void *elem, void *ctx)
{
    (void)ctx;
    pb_peer_info *p = elem;
    const unsigned char *id = sqlite3_column_text(st, 0);
    if (!id) return PB_ERR_CORRUPT;
    p->server_id = pb_xstrdup((const char *)id);
    p->first_seen = sqlite3_column_int64(st, 1);
    p->last_contact = sqlite3_column_int64(st, 2);
    if (sqlite3_column_type(st, 3) != SQLITE_NULL) {
        if (sqlite3_column_bytes(st, 3) != PB_PUBKEY_LEN) {
            PB_ERROR(p->server_id, "store: stored key has %d bytes", sqlite3_column_bytes(st, 3));
            return PB_ERR_CORRUPT;
        }
        memcpy(p->key, sqlite3_column_blob(st, 3), PB_PUBKEY_LEN);
        p->has_key = true;
        p->key_fetched_at = sqlite3_column_int64(st, 4);
    }
    return PB_OK;
}

static void peer_infos_free(void *arr, size_t n)
{
    pb_peer_info_free_array(arr, n);
}

static const rows_spec peer_rows = {ST_PEER_LIST, "peer list", sizeof(pb_peer_info), peer_info_row,
                                    peer_infos_free};

static pb_err sq_peer_list(void *impl, pb_peer_info **peers, size_t *count)
{
    void *arr = NULL;
    pb_err err = read_rows(impl, &peer_rows, NULL, 0, NULL, &arr, count);
    if (err == PB_OK) *peers = arr;
    return err;
}

/* ---- per-peer delivery state ------------------------------------------------------------ */

/* Fills *elem (a pb_peer_state) from a PEER_STATE_SELECT row; ctx is unused. */
static pb_err peer_state_row(sqlite3_stmt *st, void *elem, void *ctx)
{
    (void)ctx;
    pb_peer_state *p = elem;
    memset(p, 0, sizeof *p);
    p->server_id = col_strdup(st, 0);
    int64_t mode = sqlite3_column_int64(st, 1);
    if (!p->server_id || mode < PB_MODE_PUSH || mode > PB_MODE_PARKED) {
        PB_ERROR(p->server_id, "store: bad peer row (mode %lld)", (long long)mode);
        return PB_ERR_CORRUPT;
    }
    p->mode = (pb_peer_mode)mode;
    p->attempts = (uint32_t)sqlite3_column_int64(st, 2);
    p->next_attempt_at = sqlite3_column_int64(st, 3);
    p->last_error = col_strdup(st, 4);
    p->parked_seq = (uint64_t)sqlite3_column_int64(st, 5);
    p->next_seq = (uint64_t)sqlite3_column_int64(st, 6);
    p->recv_seq = (uint64_t)sqlite3_column_int64(st, 7);
    p->last_contact = sqlite3_column_int64(st, 8);
    p->queued = (uint64_t)sqlite3_column_int64(st, 9);
    p->oldest_queued_at = sqlite3_column_int64(st, 10);     /* NULL (empty queue) reads as 0 */
    p->recv_epoch = (uint64_t)sqlite3_column_int64(st, 11); /* NULL (no epoch row) reads as 0 */
    p->send_epoch = (uint64_t)sqlite3_column_int64(st, 12);
    return PB_OK;
}

static pb_err sq_peer_state_get(void *impl, const char *server_id, pb_peer_state *out)
{
    sq *b = impl;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    pb_peer_state p = {0};
    pb_err err = reader_get(b, &c);
    if (err != PB_OK) return err;
    err = stmt_bind(c, ST_PEER_STATE_GET, (const arg[]){A_TEXT(server_id)}, 1, &st);
    if (err != PB_OK) goto out;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        err = peer_state_row(st, &p, NULL);
    } else if (rc == SQLITE_DONE) {
        err = PB_ERR_NOT_FOUND;
    } else {
        err = fail(c->db, rc, "peer state get");
    }
    stmt_done(st);
out:
    reader_put(b, c);
    if (err != PB_OK) {
        pb_peer_state_clear(&p);
        return err;
    }
    *out = p;
    return PB_OK;
}

static void peer_states_free(void *arr, size_t n)
{
    pb_peer_state_free_array(arr, n);
}

static const rows_spec peer_state_rows = {ST_PEER_STATE_LIST, "peer state list",
                                          sizeof(pb_peer_state), peer_state_row, peer_states_free};

static pb_err sq_peer_state_list(void *impl, pb_peer_state **out, size_t *count)
{
    void *arr = NULL;
    pb_err err = read_rows(impl, &peer_state_rows, NULL, 0, NULL, &arr, count);
    if (err == PB_OK) *out = arr;
    return err;
}

struct peer_state_ctx {
    const char *server_id;
    pb_peer_mode mode;
    uint32_t attempts;
    int64_t next_attempt_at;
    const char *last_error;
    uint64_t parked_seq;
    uint64_t epoch; /* send_epoch of a row created now */
};

static pb_err peer_state_set_job(conn *c, void *ctx)
{
    struct peer_state_ctx *p = ctx;
    return EXEC(c, ST_PEER_STATE_SET, NULL, A_TEXT(p->server_id), A_INT(time(NULL)), A_INT(p->mode),
                A_INT(p->attempts), A_INT(p->next_attempt_at), A_TEXT(p->last_error),
                A_INT(p->parked_seq), A_INT(p->epoch));
}

static pb_err sq_peer_state_set(void *impl, const char *server_id, pb_peer_mode mode,
                                uint32_t attempts, int64_t next_attempt_at, const char *last_error,
                                uint64_t parked_seq)
{
    uint64_t epoch = pb_store_epoch_random(0);
    struct peer_state_ctx p = {server_id,  mode,       attempts, next_attempt_at,
                               last_error, parked_seq, epoch};
    return job_run(impl, peer_state_set_job, &p);
}

struct new_epoch_ctx {
    const char *peer;
    uint64_t e1, e2; /* two different random non-zero epochs (ST_PEER_NEW_EPOCH) */
    uint64_t epoch;  /* out */
};

static pb_err peer_new_epoch_job(conn *c, void *ctx)
{
    struct new_epoch_ctx *e = ctx;
    sqlite3_stmt *st = NULL;
    pb_err err = stmt_bind(
        c, ST_PEER_NEW_EPOCH,
        (const arg[]){A_TEXT(e->peer), A_INT(time(NULL)), A_INT(e->e1), A_INT(e->e2)}, 4, &st);
    if (err != PB_OK) return err;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        e->epoch = (uint64_t)sqlite3_column_int64(st, 0);
        rc = sqlite3_step(st);
    }
    if (rc != SQLITE_DONE) {
        err = fail(c->db, rc, "peer new epoch");
    } else if (e->epoch == 0) {
        err = PB_ERR_INTERNAL; /* no row came back */
    }
    stmt_done(st);
    return err;
}

static pb_err sq_peer_new_epoch(void *impl, const char *peer, uint64_t *epoch)
{
    struct new_epoch_ctx e = {peer, pb_store_epoch_random(0), 0, 0};
    e.e2 = pb_store_epoch_random(e.e1);
    pb_err err = job_run(impl, peer_new_epoch_job, &e);
    if (err == PB_OK) *epoch = e.epoch;
    return err;
}

/* Reads the peer's next_seq; the row must exist. */
static pb_err peer_next_seq(conn *c, const char *peer, uint64_t *next_seq)
{
    sqlite3_stmt *st = NULL;
    pb_err err = stmt_bind(c, ST_PEER_SEQS, (const arg[]){A_TEXT(peer)}, 1, &st);
    if (err != PB_OK) return err;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        int64_t next = sqlite3_column_int64(st, 0);
        if (next < 1) {
            PB_ERROR(peer, "store: bad next_seq %lld", (long long)next);
            err = PB_ERR_CORRUPT;
        }
        *next_seq = (uint64_t)next;
    } else {
        err = rc == SQLITE_DONE ? PB_ERR_INTERNAL : fail(c->db, rc, "peer seqs");
    }
    stmt_done(st);
    return err;
}

/* ---- outbox ----------------------------------------------------------------------------- */

struct outbox_append_ctx {
    const char *peer;
    const encoded *enc;
    size_t n;
    int64_t now;
    const char *submission_id; /* NULL: none */
    uint64_t epoch;            /* send_epoch of a peer row created now */
    uint64_t last_seq;         /* out */
    bool duplicate;            /* out */
};

/* The submission ID's record, if any: PB_ERR_NOT_FOUND when there is none; PB_OK with
 * a->duplicate and a->last_seq set when it is this very submission again; PB_ERR_EXISTS
 * when it was used for another peer or number of events. */
static pb_err submission_check(conn *c, struct outbox_append_ctx *a)
{
    sqlite3_stmt *st = NULL;
    pb_err err = stmt_bind(c, ST_SUBMISSION_GET, (const arg[]){A_TEXT(a->submission_id)}, 1, &st);
    if (err != PB_OK) return err;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const unsigned char *peer = sqlite3_column_text(st, 0);
        int64_t first = sqlite3_column_int64(st, 1), count = sqlite3_column_int64(st, 2);
        if (!peer || first < 1 || count < 1 || first > INT64_MAX - count) {
            PB_ERROR(NULL, "store: bad submissions row");
            err = PB_ERR_CORRUPT;
        } else if (strcmp((const char *)peer, a->peer) != 0 || (uint64_t)count != a->n) {
            err = PB_ERR_EXISTS;
        } else {
            a->duplicate = true;
            a->last_seq = (uint64_t)(first + count - 1);
        }
    } else {
        err = rc == SQLITE_DONE ? PB_ERR_NOT_FOUND : fail(c->db, rc, "submission get");
    }
    stmt_done(st);
    return err;
}

/* O(n): the peer row keeps next_seq, so appending never looks at the queue. With a
 * submission ID: one primary-key probe first (the writer is the only one, so nothing can
 * record the ID between the probe and the insert), then the record and a bounded prune. */
static pb_err outbox_append_job(conn *c, void *ctx)
{
    struct outbox_append_ctx *a = ctx;
    uint64_t next = 0;
    pb_err err;
    if (a->submission_id) {
        err = submission_check(c, a);
        if (err != PB_ERR_NOT_FOUND) return err; /* a duplicate, a conflict or a failure */
    }
    err = EXEC(c, ST_PEER_ENSURE, NULL, A_TEXT(a->peer), A_INT(a->now / 1000), A_INT(a->epoch));
    if (err == PB_OK) err = peer_next_seq(c, a->peer, &next);
    if (err != PB_OK) return err;
    if (next > (uint64_t)INT64_MAX - a->n) return PB_ERR_INTERNAL; /* never in practice */
    for (size_t i = 0; i < a->n; i++) {
        err = EXEC(c, ST_OUTBOX_INSERT, NULL, A_TEXT(a->peer), A_INT(next + i), ENC_ARG(a->enc, i),
                   A_INT(a->now));
        if (err != PB_OK) return err;
    }
    err = EXEC(c, ST_PEER_NEXT_SEQ_SET, NULL, A_TEXT(a->peer), A_INT(next + a->n), A_INT(a->n));
    if (err == PB_OK && a->submission_id) {
        err = EXEC(c, ST_SUBMISSION_INSERT, NULL, A_TEXT(a->submission_id), A_TEXT(a->peer),
                   A_INT(next), A_INT(a->n), A_INT(a->now));
        if (err == PB_OK)
            err = EXEC(c, ST_SUBMISSION_PRUNE, NULL, A_INT(pb_store_submission_cutoff(a->now)),
                       A_INT(PB_STORE_SUBMISSION_PRUNE_MAX));
    }
    if (err == PB_OK) a->last_seq = next + a->n - 1;
    return err;
}

static pb_err sq_outbox_append(void *impl, const char *peer, const pb_event *evs, size_t n,
                               int64_t now, const char *submission_id, uint64_t *last_seq,
                               bool *duplicate)
{
    encoded enc;
    pb_err err = encode_events(evs, n, &enc);
    if (err == PB_OK) {
        uint64_t epoch = pb_store_epoch_random(0);
        struct outbox_append_ctx a = {peer, &enc, n, now, submission_id, epoch, 0, false};
        err = job_run(impl, outbox_append_job, &a);
        if (err == PB_OK) {
            *last_seq = a.last_seq;
            *duplicate = a.duplicate;
        }
    }
    encoded_free(&enc);
    return err;
}

struct outbox_rows {
    size_t max_bytes, bytes, taken;
};

static pb_err outbox_row(sqlite3_stmt *st, void *elem, void *ctx)
{
    struct outbox_rows *o = ctx;
    pb_outbox_item *it = elem;
    size_t size = (size_t)sqlite3_column_bytes(st, 2);
    /* the first item always; later ones while the total stays within max_bytes */
    if (o->taken > 0 && (o->bytes > o->max_bytes || size > o->max_bytes - o->bytes))
        return ROW_STOP;
    pb_err err = col_event(st, 2, "outbox", &it->ev);
    if (err != PB_OK) return err;
    it->seq = (uint64_t)sqlite3_column_int64(st, 0);
    it->created_at = sqlite3_column_int64(st, 1);
    it->size = size;
    o->bytes += size;
    o->taken++;
    return PB_OK;
}

static void outbox_items_free(void *arr, size_t n)
{
    pb_outbox_items_free(arr, n);
}

static const rows_spec outbox_rows_spec = {ST_OUTBOX_READ, "outbox read", sizeof(pb_outbox_item),
                                           outbox_row, outbox_items_free};

static pb_err sq_outbox_read(void *impl, const char *peer, uint64_t from_seq, size_t max_items,
                             size_t max_bytes, pb_outbox_item **items, size_t *count)
{
    if (from_seq > (uint64_t)INT64_MAX) { /* no stored seq is that large */
        *items = NULL;
        *count = 0;
        return PB_OK;
    }
    struct outbox_rows o = {max_bytes, 0, 0};
    void *arr = NULL;
    pb_err err = read_rows(impl, &outbox_rows_spec,
                           (const arg[]){A_TEXT(peer), A_INT(from_seq), A_INT(clamp64(max_items))},
                           3, &o, &arr, count);
    if (err == PB_OK) *items = arr;
    return err;
}

struct outbox_del_ctx {
    const char *peer;
    uint64_t seq;
};

static pb_err outbox_ack_job(conn *c, void *ctx)
{
    struct outbox_del_ctx *d = ctx;
    int changes = 0;
    pb_err err = EXEC(c, ST_OUTBOX_ACK, &changes, A_TEXT(d->peer), A_INT(clamp64(d->seq)));
    if (err == PB_OK && changes > 0)
        err = EXEC(c, ST_PEER_DEQUEUED, NULL, A_TEXT(d->peer), A_INT(changes));
    return err;
}

static pb_err sq_outbox_ack(void *impl, const char *peer, uint64_t upto)
{
    struct outbox_del_ctx d = {peer, upto};
    return job_run(impl, outbox_ack_job, &d);
}

static pb_err outbox_remove_job(conn *c, void *ctx)
{
    struct outbox_del_ctx *d = ctx;
    int changes = 0;
    if (d->seq > (uint64_t)INT64_MAX) return PB_ERR_NOT_FOUND;
    pb_err err = EXEC(c, ST_OUTBOX_REMOVE, &changes, A_TEXT(d->peer), A_INT(d->seq));
    if (err == PB_OK && changes == 0) err = PB_ERR_NOT_FOUND;
    if (err == PB_OK) err = EXEC(c, ST_PEER_DEQUEUED, NULL, A_TEXT(d->peer), A_INT(changes));
    return err;
}

static pb_err sq_outbox_remove(void *impl, const char *peer, uint64_t seq)
{
    struct outbox_del_ctx d = {peer, seq};
    return job_run(impl, outbox_remove_job, &d);
}

/* ---- receiving -------------------------------------------------------------------------- */

struct receive_ctx {
    const char *from;
    uint64_t epoch; /* the sender's (with seqs) */
    const pb_event *evs;
    const encoded *enc;
    const uint64_t *seqs;
    size_t n;
    int64_t now;
    uint64_t new_epoch; /* send_epoch of a peer row created now */
    pb_recv_result res; /* out */
};

/* Applies one event to the local users' state (PROTOCOL.md section 5): a row of the model
 * log, keyed by the event's inbox seq (see "model log"). */
static pb_err apply_event(conn *c, const char *from, const pb_event *ev, int64_t seq)
{
    pb_err err = PB_ERR_INVAL; /* encode_events refused it already */
    switch (ev->kind) {
    case PB_EV_USER_ADDED_TO_GUILD:
    case PB_EV_USER_REMOVED_FROM_GUILD:
        err = EXEC(c, ST_LOG_GUILD, NULL, A_INT(ev->kind == PB_EV_USER_ADDED_TO_GUILD ? 1 : 2),
                   A_INT(ev->user_id), A_TEXT(from), A_INT(ev->guild_id), A_INT(seq));
        break;
    case PB_EV_USER_INVITED:
        err = EXEC(c, ST_LOG_INVITE, NULL, A_INT(ev->user_id), A_TEXT(from), A_TEXT(ev->invite_id),
                   A_INT(ev->inviter_id), A_INT(seq));
        break;
    case PB_EV_USER_REJECTED_INVITE:
        return PB_OK; /* the homeserver learns it from the inbox; no state here */
    case PB_EV_NONE:
        break;
    }
    if (err == PB_OK) c->log_rows++;
    return err;
}

/* ---- the model log ---------------------------------------------------------------------- */

/* The first column of the first row of statement id as an int64 (NULL reads as 0); *out
 * is left as it was when there is no row. */
static pb_err query_int(conn *c, enum stmt_id id, const arg *a, int n, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    pb_err err = stmt_bind(c, id, a, n, &st);
    if (err != PB_OK) return err;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
    } else if (rc != SQLITE_DONE) {
        err = fail(c->db, rc, stmt_sql[id]);
    }
    stmt_done(st);
    return err;
}

/* Counts the log again (at open, after a rename merged it, after a lost merge). */
static pb_err log_recount(conn *c)
{
    pb_err err = query_int(c, ST_LOG_COUNT, NULL, 0, &c->log_rows);
    if (err == PB_OK) c->log_stale = false;
    return err;
}

/* Merges the log rows of users lo..hi (int64 order, both included) with id <= upto into
 * guilds and invites, in key order, inside the caller's transaction. The rows stay in the
 * log (log_merge_step deletes a cycle's rows at its end): read over the tables they give
 * what the tables now hold. */
static pb_err log_merge_range(conn *c, int64_t lo, int64_t hi, int64_t upto)
{
    sqlite3_stmt *st = NULL;
    int rc = SQLITE_DONE;
    pb_err err =
        stmt_bind(c, ST_LOG_GUILD_FINAL, (const arg[]){A_INT(lo), A_INT(hi), A_INT(upto)}, 3, &st);
    if (err != PB_OK) return err;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t user = sqlite3_column_int64(st, 0), guild = sqlite3_column_int64(st, 2);
        const char *server = (const char *)sqlite3_column_text(st, 1);
        if (!server) {
            err = PB_ERR_CORRUPT;
            break;
        }
        err = sqlite3_column_int(st, 3) == 1
                  ? EXEC(c, ST_GUILD_ADD, NULL, A_INT(user), A_TEXT(server), A_INT(guild))
                  : EXEC(c, ST_GUILD_REMOVE, NULL, A_INT(user), A_TEXT(server), A_INT(guild));
        if (err != PB_OK) break;
    }
    if (err == PB_OK && rc != SQLITE_DONE) err = fail(c->db, rc, "model log merge");
    stmt_done(st);
    if (err == PB_OK) err = EXEC(c, ST_MERGE_INVITES, NULL, A_INT(lo), A_INT(hi), A_INT(upto));
    return err;
}

/* Merges the whole log and empties it, inside the caller's transaction (a peer's rename);
 * the cycle in progress is abandoned (its rows are merged again: merging is idempotent). */
static pb_err log_merge_all(conn *c)
{
    pb_err err = log_merge_range(c, INT64_MIN, INT64_MAX, INT64_MAX);
    if (err == PB_OK) err = EXEC(c, ST_LOG_DELETE, NULL, A_INT(INT64_MAX));
    c->log_upto = 0;
    c->log_stale = true;
    return err;
}

/* Log rows per merge step: a 32nd of the threshold (a write that comes during a step
 * waits for it), at least 1. */
static int log_chunk(const sq *b)
{
    return b->opts.model_log_rows / 32 > 0 ? b->opts.model_log_rows / 32 : 1;
}

/* One merge step, in its own transaction. A cycle takes the rows present when it starts
 * (id <= log_upto), users in int64 order, about a chunk of rows per step (every row of
 * the step's last user taken); its last step also deletes them from the log. False when
 * it failed (logged; nothing changed, the cycle starts again). */
static bool log_merge_step(sq *b)
{
    conn *c = b->wconn;
    int64_t lo = c->log_cursor, hi = INT64_MAX, upto = c->log_upto;
    int chunk = log_chunk(b), deleted = 0;
    pb_err err = stmt_exec(c, ST_BEGIN);
    if (err == PB_OK && !upto) {
        lo = INT64_MIN;
        err = query_int(c, ST_LOG_LAST, NULL, 0, &upto);
    }
    if (err == PB_OK) /* no row: the rest of the users */
        err = query_int(c, ST_LOG_CHUNK_END, (const arg[]){A_INT(lo), A_INT(chunk - 1)}, 2, &hi);
    if (err == PB_OK) err = log_merge_range(c, lo, hi, upto);
    if (err == PB_OK && hi == INT64_MAX) err = EXEC(c, ST_LOG_DELETE, &deleted, A_INT(upto));
    if (err == PB_OK) err = stmt_exec(c, ST_COMMIT);
    if (err != PB_OK) {
        if (!sqlite3_get_autocommit(c->db)) stmt_exec(c, ST_ROLLBACK);
        PB_ERROR(NULL, "store: merging the model log failed (%s); retried later", pb_strerror(err));
        c->log_upto = 0;
        c->log_stale = true;
        return false;
    }
    if (hi == INT64_MAX) {
        c->log_upto = 0;
        c->log_rows -= deleted;
        if (c->log_rows < 0) c->log_stale = true;
    } else {
        c->log_upto = upto;
        c->log_cursor = hi + 1;
    }
    return true;
}

/* After a committed batch that added `added` log rows: merge steps while a cycle is in
 * progress or the log holds model_log_rows or more, as long as no write waits (merging
 * fills the writer's idle time). With twice that or more, steps run even when writes wait,
 * two per chunk the batch added and one more: the cycle's cursor then passes at least
 * twice the rows the batch added, so the cycle ends before the log has grown by more than
 * the two times model_log_rows it held, and the log stays below about four times
 * model_log_rows however busy the writer is. */
static void log_merge(sq *b, int64_t added)
{
    conn *c = b->wconn;
    int64_t owed = 2 * added / log_chunk(b) + 1;
    for (;; owed--) {
        if (c->log_stale && log_recount(c) != PB_OK) return;
        if (!c->log_upto && c->log_rows < b->opts.model_log_rows) return;
        pthread_mutex_lock(&b->mu);
        bool waiting = b->head != NULL || b->stop;
        pthread_mutex_unlock(&b->mu);
        if (waiting && (owed <= 0 || c->log_rows < 2 * (int64_t)b->opts.model_log_rows)) return;
        if (!log_merge_step(b)) return;
    }
}

/* The recv_seq of (peer, epoch): *known false and *recv_seq 0 when it has no row. */
static pb_err recv_epoch_get(conn *c, const char *peer, uint64_t epoch, uint64_t *recv_seq,
                             bool *known)
{
    sqlite3_stmt *st = NULL;
    pb_err err = stmt_bind(c, ST_RECV_EPOCH_GET, (const arg[]){A_TEXT(peer), A_INT(epoch)}, 2, &st);
    if (err != PB_OK) return err;
    int rc = sqlite3_step(st);
    *known = rc == SQLITE_ROW;
    *recv_seq = rc == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) err = fail(c->db, rc, "recv epoch get");
    stmt_done(st);
    return err;
}

/* An event to log: its user (the log index's order, int64), inbox seq and index. */
struct logged {
    int64_t user, seq;
    size_t index;
};

static int logged_cmp(const void *a, const void *b)
{
    const struct logged *x = a, *y = b;
    if (x->user != y->user) return x->user < y->user ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* With seqs, the (from, epoch) row is read first and written last (recv_seq, updated_at);
 * when the row is new the sender's epochs beyond PB_STORE_RECV_EPOCHS_MAX are pruned. */
static pb_err receive_job(conn *c, void *ctx)
{
    struct receive_ctx *r = ctx;
    int64_t now_s = r->now / 1000;
    uint64_t recv = 0;
    bool known = false;
    pb_recv_result res = {0, 0, 0, 0};
    pb_err err = EXEC(c, ST_PEER_TOUCH, NULL, A_TEXT(r->from), A_INT(now_s), A_INT(now_s),
                      A_INT(r->new_epoch));
    if (err == PB_OK && r->seqs) err = recv_epoch_get(c, r->from, r->epoch, &recv, &known);
    if (err != PB_OK) return err;
    /* the inbox rows in the events' order, then their model log rows by user (the order of
     * the log's index, so that each of its pages is visited once however users interleave) */
    struct logged *lg = pb_xmalloc((r->n ? r->n : 1) * sizeof *lg);
    size_t nlg = 0;
    for (size_t i = 0; i < r->n; i++) {
        if (r->seqs && r->seqs[i] <= recv) {
            res.duplicates++;
            continue;
        }
        err = EXEC(c, ST_INBOX_INSERT, NULL, A_TEXT(r->from), ENC_ARG(r->enc, i), A_TEXT(NULL),
                   A_TEXT(NULL), A_INT(r->now));
        if (err != PB_OK) goto out;
        lg[nlg++] =
            (struct logged){(int64_t)r->evs[i].user_id, sqlite3_last_insert_rowid(c->db), i};
        res.applied++;
        if (r->seqs) recv = r->seqs[i];
    }
    qsort(lg, nlg, sizeof *lg, logged_cmp);
    for (size_t k = 0; k < nlg && err == PB_OK; k++)
        err = apply_event(c, r->from, &r->evs[lg[k].index], lg[k].seq);
    if (err != PB_OK) goto out;
    if (r->seqs) {
        err = EXEC(c, ST_RECV_EPOCH_SET, NULL, A_TEXT(r->from), A_INT(r->epoch), A_INT(recv),
                   A_INT(r->now));
        if (err == PB_OK && !known)
            err = EXEC(c, ST_RECV_EPOCH_PRUNE, NULL, A_TEXT(r->from), A_INT(r->epoch),
                       A_INT(PB_STORE_RECV_EPOCHS_MAX - 1));
        res.ack = recv;
        res.epoch = r->epoch;
    }
    if (err == PB_OK) r->res = res;
out:
    free(lg);
    return err;
}

static pb_err sq_receive(void *impl, const char *from, uint64_t epoch, const pb_event *evs,
                         const uint64_t *seqs, size_t n, int64_t now, pb_recv_result *res)
{
    encoded enc;
    pb_err err = encode_events(evs, n, &enc);
    if (err == PB_OK) {
        struct receive_ctx r = {.from = from,
                                .epoch = epoch,
                                .evs = evs,
                                .enc = &enc,
                                .seqs = seqs,
                                .n = n,
                                .now = now,
                                .new_epoch = pb_store_epoch_random(0)};
        err = job_run(impl, receive_job, &r);
        if (err == PB_OK) *res = r.res;
    }
    encoded_free(&enc);
    return err;
}

static pb_err sq_recv_latest(void *impl, const char *from, uint64_t *epoch, uint64_t *recv_seq)
{
    sq *b = impl;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    pb_err err = reader_get(b, &c);
    if (err != PB_OK) return err;
    err = stmt_bind(c, ST_RECV_LATEST, (const arg[]){A_TEXT(from)}, 1, &st);
    if (err != PB_OK) goto out;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *epoch = (uint64_t)sqlite3_column_int64(st, 0);
        *recv_seq = (uint64_t)sqlite3_column_int64(st, 1);
    } else if (rc == SQLITE_DONE) {
        *epoch = *recv_seq = 0;
    } else {
        err = fail(c->db, rc, "recv latest");
    }
    stmt_done(st);
out:
    reader_put(b, c);
    return err;
}

/* ---- inbox ------------------------------------------------------------------------------ */

static pb_err inbox_row(sqlite3_stmt *st, void *elem, void *ctx)
{
    (void)ctx;
    pb_inbox_item *it = elem;
    pb_err err = PB_OK;
    it->seq = (uint64_t)sqlite3_column_int64(st, 0);
    it->from = col_strdup(st, 1);
    it->received_at = sqlite3_column_int64(st, 5);
    if (sqlite3_column_type(st, 2) == SQLITE_NULL) {
        it->is_rename = true;
        it->old_id = col_strdup(st, 3);
        it->new_id = col_strdup(st, 4);
        if (!it->old_id || !it->new_id) err = PB_ERR_CORRUPT;
    } else {
        err = col_event(st, 2, "inbox", &it->ev);
    }
    if (!it->from) err = PB_ERR_CORRUPT;
    if (err != PB_OK) PB_ERROR(NULL, "store: bad inbox row %llu", (unsigned long long)it->seq);
    return err;
}

static void inbox_items_free(void *arr, size_t n)
{
    pb_inbox_items_free(arr, n);
}

static const rows_spec inbox_rows = {ST_INBOX_READ, "inbox read", sizeof(pb_inbox_item), inbox_row,
                                     inbox_items_free};

static pb_err sq_inbox_read(void *impl, uint64_t after, size_t limit, pb_inbox_item **items,
                            size_t *count)
{
    if (after >= (uint64_t)INT64_MAX) { /* no stored seq is larger */
        *items = NULL;
        *count = 0;
        return PB_OK;
    }
    void *arr = NULL;
    pb_err err = read_rows(impl, &inbox_rows, (const arg[]){A_INT(after), A_INT(clamp64(limit))}, 2,
                           NULL, &arr, count);
    if (err == PB_OK) *items = arr;
    return err;
}

static pb_err sq_inbox_last_seq(void *impl, uint64_t *seq)
{
    sq *b = impl;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    pb_err err = reader_get(b, &c);
    if (err != PB_OK) return err;
    err = stmt_get(c, ST_INBOX_LAST, &st);
    if (err != PB_OK) goto out;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *seq = (uint64_t)sqlite3_column_int64(st, 0); /* NULL (empty) reads as 0 */
    } else {
        err = fail(c->db, rc, "inbox last seq");
    }
    stmt_done(st);
out:
    reader_put(b, c);
    return err;
}

/* ---- local users' federated state ------------------------------------------------------- */

static pb_err guild_row(sqlite3_stmt *st, void *elem, void *ctx)
{
    (void)ctx;
    pb_guild_entry *e = elem;
    e->guild_id = (uint64_t)sqlite3_column_int64(st, 0);
    e->server_id = col_strdup(st, 1);
    return e->server_id ? PB_OK : PB_ERR_CORRUPT;
}

static void guilds_free(void *arr, size_t n)
{
    pb_guild_entries_free(arr, n);
}

static const rows_spec guild_rows = {ST_GUILD_LIST, "guild list", sizeof(pb_guild_entry), guild_row,
                                     guilds_free};

static pb_err sq_guilds(void *impl, uint64_t user_id, pb_guild_entry **out, size_t *count)
{
    void *arr = NULL;
    pb_err err = read_rows(impl, &guild_rows, (const arg[]){A_INT(user_id)}, 1, NULL, &arr, count);
    if (err == PB_OK) *out = arr;
    return err;
}

static pb_err invite_row(sqlite3_stmt *st, void *elem, void *ctx)
{
    (void)ctx;
    pb_invite_entry *e = elem;
    e->invite_id = col_strdup(st, 0);
    e->server_id = col_strdup(st, 1);
    e->inviter_id = (uint64_t)sqlite3_column_int64(st, 2);
    return e->invite_id && e->server_id ? PB_OK : PB_ERR_CORRUPT;
}

static void invites_free(void *arr, size_t n)
{
    pb_invite_entries_free(arr, n);
}

static const rows_spec invite_rows = {ST_INVITE_LIST, "invite list", sizeof(pb_invite_entry),
                                      invite_row, invites_free};

static pb_err sq_invites(void *impl, uint64_t user_id, pb_invite_entry **out, size_t *count)
{
    void *arr = NULL;
    pb_err err = read_rows(impl, &invite_rows, (const arg[]){A_INT(user_id)}, 1, NULL, &arr, count);
    if (err == PB_OK) *out = arr;
    return err;
}

/* ---- renames ---------------------------------------------------------------------------- */

/* PB_OK when server_id has a peers row, PB_ERR_NOT_FOUND when not. */
static pb_err peer_exists(conn *c, const char *server_id)
{
    sqlite3_stmt *st = NULL;
    pb_err err = stmt_bind(c, ST_PEER_EXISTS, (const arg[]){A_TEXT(server_id)}, 1, &st);
    if (err != PB_OK) return err;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        err = PB_ERR_NOT_FOUND;
    } else if (rc != SQLITE_ROW) {
        err = fail(c->db, rc, "peer exists");
    }
    stmt_done(st);
    return err;
}

struct rename_ctx {
    const char *old_id, *new_id;
    const uint8_t *key;
    int64_t now;
};

static pb_err peer_rename_job(conn *c, void *ctx)
{
    struct rename_ctx *r = ctx;
    pb_err err = peer_exists(c, r->old_id);
    if (err != PB_OK) return err;
    err = peer_exists(c, r->new_id);
    if (err == PB_OK) return PB_ERR_EXISTS;
    if (err != PB_ERR_NOT_FOUND) return err;
    err = EXEC(c, ST_RENAME_PEER, NULL, A_TEXT(r->old_id), A_TEXT(r->new_id),
               A_BLOB(r->key, PB_PUBKEY_LEN), A_INT(r->now / 1000));
    if (err == PB_OK) err = EXEC(c, ST_RENAME_OUTBOX, NULL, A_TEXT(r->old_id), A_TEXT(r->new_id));
    /* the whole model log first, so that the tables alone hold the state to re-label */
    if (err == PB_OK) err = log_merge_all(c);
    if (err == PB_OK) err = EXEC(c, ST_RENAME_GUILDS, NULL, A_TEXT(r->old_id), A_TEXT(r->new_id));
    if (err == PB_OK) err = EXEC(c, ST_RENAME_INVITES, NULL, A_TEXT(r->old_id), A_TEXT(r->new_id));
    if (err == PB_OK)
        err = EXEC(c, ST_RENAME_RENAMES_OUT, NULL, A_TEXT(r->old_id), A_TEXT(r->new_id));
    if (err == PB_OK) err = EXEC(c, ST_RENAME_LEASES, NULL, A_TEXT(r->old_id), A_TEXT(r->new_id));
    if (err == PB_OK)
        err = EXEC(c, ST_RENAME_RECV_EPOCHS, NULL, A_TEXT(r->old_id), A_TEXT(r->new_id));
    if (err == PB_OK) err = EXEC(c, ST_RENAME_IN_REMOVE, NULL, A_TEXT(r->old_id));
    if (err == PB_OK)
        err = EXEC(c, ST_INBOX_INSERT, NULL, A_TEXT(r->new_id), A_TEXT(NULL), A_TEXT(r->old_id),
                   A_TEXT(r->new_id), A_INT(r->now));
    return err;
}

static pb_err sq_peer_rename(void *impl, const char *old_id, const char *new_id,
                             const uint8_t new_key[PB_PUBKEY_LEN], int64_t now)
{
    struct rename_ctx r = {old_id, new_id, new_key, now};
    return job_run(impl, peer_rename_job, &r);
}

static pb_err self_rename_job(conn *c, void *ctx)
{
    struct rename_ctx *r = ctx;
    pb_err err = EXEC(c, ST_META_SET, NULL, A_TEXT("server_id"), A_TEXT(r->new_id));
    if (err == PB_OK)
        err = EXEC(c, ST_SELF_RENAME_UPSERT, NULL, A_TEXT(r->old_id), A_TEXT(r->new_id),
                   A_INT(r->now));
    /* renamed back to the ID a peer still knows: nothing to tell it */
    if (err == PB_OK) err = stmt_exec(c, ST_SELF_RENAME_DROP);
    return err;
}

static pb_err sq_self_rename(void *impl, const char *old_id, const char *new_id, int64_t now)
{
    struct rename_ctx r = {old_id, new_id, NULL, now};
    return job_run(impl, self_rename_job, &r);
}

static pb_err rename_out_row(sqlite3_stmt *st, void *elem, void *ctx)
{
    (void)ctx;
    pb_rename_out *r = elem;
    r->peer = col_strdup(st, 0);
    r->old_id = col_strdup(st, 1);
    r->new_id = col_strdup(st, 2);
    r->attempts = (uint32_t)sqlite3_column_int64(st, 3);
    r->next_attempt_at = sqlite3_column_int64(st, 4);
    r->last_error = col_strdup(st, 5);
    return r->peer && r->old_id && r->new_id ? PB_OK : PB_ERR_CORRUPT;
}

static void rename_outs_free(void *arr, size_t n)
{
    pb_rename_outs_free(arr, n);
}

static const rows_spec rename_out_rows = {ST_RENAME_OUT_LIST, "rename_out list",
                                          sizeof(pb_rename_out), rename_out_row, rename_outs_free};

static pb_err sq_rename_out_list(void *impl, pb_rename_out **out, size_t *count)
{
    void *arr = NULL;
    pb_err err = read_rows(impl, &rename_out_rows, NULL, 0, NULL, &arr, count);
    if (err == PB_OK) *out = arr;
    return err;
}

struct rename_out_ctx {
    const char *peer, *new_id, *error;
    uint32_t attempts;
    int64_t next_attempt_at;
};

static pb_err rename_out_done_job(conn *c, void *ctx)
{
    struct rename_out_ctx *r = ctx;
    return EXEC(c, ST_RENAME_OUT_DONE, NULL, A_TEXT(r->peer), A_TEXT(r->new_id));
}

static pb_err sq_rename_out_done(void *impl, const char *peer, const char *new_id)
{
    struct rename_out_ctx r = {.peer = peer, .new_id = new_id};
    return job_run(impl, rename_out_done_job, &r);
}

static pb_err rename_out_failed_job(conn *c, void *ctx)
{
    struct rename_out_ctx *r = ctx;
    int changes = 0;
    pb_err err = EXEC(c, ST_RENAME_OUT_FAILED, &changes, A_TEXT(r->peer), A_INT(r->attempts),
                      A_INT(r->next_attempt_at), A_TEXT(r->error));
    if (err == PB_OK && changes == 0) err = PB_ERR_NOT_FOUND;
    return err;
}

static pb_err sq_rename_out_failed(void *impl, const char *peer, uint32_t attempts,
                                   int64_t next_attempt_at, const char *error)
{
    struct rename_out_ctx r = {
        .peer = peer, .error = error, .attempts = attempts, .next_attempt_at = next_attempt_at};
    return job_run(impl, rename_out_failed_job, &r);
}

/* ---- pending incoming renames ----------------------------------------------------------- */

struct rename_in_ctx {
    const char *old_id, *new_id;
    int64_t at;     /* created_at, or the expiry cutoff */
    size_t removed; /* out (expire) */
};

static pb_err rename_in_add_job(conn *c, void *ctx)
{
    struct rename_in_ctx *r = ctx;
    return EXEC(c, ST_RENAME_IN_ADD, NULL, A_TEXT(r->old_id), A_TEXT(r->new_id), A_INT(r->at));
}

static pb_err sq_rename_in_add(void *impl, const char *old_id, const char *new_id, int64_t now)
{
    struct rename_in_ctx r = {old_id, new_id, now, 0};
    return job_run(impl, rename_in_add_job, &r);
}

static pb_err sq_rename_in_find(void *impl, const char *new_id, char **old_id, int64_t *created_at)
{
    sq *b = impl;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    pb_err err = reader_get(b, &c);
    if (err != PB_OK) return err;
    err = stmt_bind(c, ST_RENAME_IN_FIND, (const arg[]){A_TEXT(new_id)}, 1, &st);
    if (err != PB_OK) goto out;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        char *old = col_strdup(st, 0);
        if (old) {
            *old_id = old;
            *created_at = sqlite3_column_int64(st, 1);
        } else {
            err = PB_ERR_CORRUPT;
        }
    } else {
        err = rc == SQLITE_DONE ? PB_ERR_NOT_FOUND : fail(c->db, rc, "rename_in find");
    }
    stmt_done(st);
out:
    reader_put(b, c);
    return err;
}

static pb_err rename_in_remove_job(conn *c, void *ctx)
{
    struct rename_in_ctx *r = ctx;
    return EXEC(c, ST_RENAME_IN_REMOVE, NULL, A_TEXT(r->old_id));
}

static pb_err sq_rename_in_remove(void *impl, const char *old_id)
{
    struct rename_in_ctx r = {old_id, NULL, 0, 0};
    return job_run(impl, rename_in_remove_job, &r);
}

static pb_err rename_in_row(sqlite3_stmt *st, void *elem, void *ctx)
{
    (void)ctx;
    pb_rename_in *r = elem;
    r->old_id = col_strdup(st, 0);
    r->new_id = col_strdup(st, 1);
    r->created_at = sqlite3_column_int64(st, 2);
    return r->old_id && r->new_id ? PB_OK : PB_ERR_CORRUPT;
}

static void rename_ins_free(void *arr, size_t n)
{
    pb_rename_ins_free(arr, n);
}

static const rows_spec rename_in_rows = {ST_RENAME_IN_LIST, "rename_in list", sizeof(pb_rename_in),
                                         rename_in_row, rename_ins_free};

static pb_err sq_rename_in_list(void *impl, pb_rename_in **out, size_t *count)
{
    void *arr = NULL;
    pb_err err = read_rows(impl, &rename_in_rows, NULL, 0, NULL, &arr, count);
    if (err == PB_OK) *out = arr;
    return err;
}

static pb_err rename_in_expire_job(conn *c, void *ctx)
{
    struct rename_in_ctx *r = ctx;
    int changes = 0;
    pb_err err = EXEC(c, ST_RENAME_IN_EXPIRE, &changes, A_INT(r->at));
    if (err == PB_OK) r->removed = (size_t)changes;
    return err;
}

static pb_err sq_rename_in_expire(void *impl, int64_t before, size_t *removed)
{
    struct rename_in_ctx r = {NULL, NULL, before, 0};
    pb_err err = job_run(impl, rename_in_expire_job, &r);
    if (err == PB_OK) *removed = r.removed;
    return err;
}

/* ---- outbound ownership ----------------------------------------------------------------- */

struct lease_ctx {
    const char *peer, *node_id;
    int64_t now_ms, ttl_ms;
    bool held; /* out */
};

static pb_err lease_acquire_job(conn *c, void *ctx)
{
    struct lease_ctx *l = ctx;
    int changes = 0;
    pb_err err = EXEC(c, ST_LEASE_ACQUIRE, &changes, A_TEXT(l->peer), A_TEXT(l->node_id),
                      A_INT(l->now_ms), A_INT(l->ttl_ms));
    if (err == PB_OK) l->held = changes > 0;
    return err;
}

static pb_err sq_lease_acquire(void *impl, const char *peer, const char *node_id, int64_t now_ms,
                               int64_t ttl_ms, bool *held)
{
    struct lease_ctx l = {peer, node_id, now_ms, ttl_ms, false};
    pb_err err = job_run(impl, lease_acquire_job, &l);
    if (err == PB_OK) *held = l.held;
    return err;
}

static pb_err lease_release_job(conn *c, void *ctx)
{
    struct lease_ctx *l = ctx;
    return EXEC(c, ST_LEASE_RELEASE, NULL, A_TEXT(l->peer), A_TEXT(l->node_id));
}

static pb_err sq_lease_release(void *impl, const char *peer, const char *node_id)
{
    struct lease_ctx l = {peer, node_id, 0, 0, false};
    return job_run(impl, lease_release_job, &l);
}

static pb_err outbox_peer_row(sqlite3_stmt *st, void *elem, void *ctx)
{
    (void)ctx;
    char **peer = elem;
    *peer = col_strdup(st, 0);
    return *peer ? PB_OK : PB_ERR_CORRUPT;
}

static void strings_free(void *arr, size_t n)
{
    pb_store_strings_free(arr, n);
}

static const rows_spec outbox_peer_rows = {ST_OUTBOX_PEERS, "outbox peers", sizeof(char *),
                                           outbox_peer_row, strings_free};

static pb_err sq_outbox_peers(void *impl, char ***out, size_t *count)
{
    void *arr = NULL;
    pb_err err = read_rows(impl, &outbox_peer_rows, NULL, 0, NULL, &arr, count);
    if (err == PB_OK) *out = arr;
    return err;
}

/* ---- monitoring ------------------------------------------------------------------------- */

_Static_assert(PB_QSHAPE_BUCKETS == 7, "ST_QSHAPE counts seven buckets");

static pb_err qshape_row(sqlite3_stmt *st, void *elem, void *ctx)
{
    (void)ctx;
    pb_qshape_row *r = elem;
    r->peer = col_strdup(st, 0);
    r->total = (uint64_t)sqlite3_column_int64(st, 1);
    r->oldest_at = sqlite3_column_int64(st, 2);
    for (int i = 0; i < PB_QSHAPE_BUCKETS; i++)
        r->counts[i] = (uint64_t)sqlite3_column_int64(st, 3 + i);
    return r->peer ? PB_OK : PB_ERR_CORRUPT;
}

static void qshape_rows_free(void *arr, size_t n)
{
    pb_qshape_rows_free(arr, n);
}

static const rows_spec qshape_rows = {ST_QSHAPE, "queue shape", sizeof(pb_qshape_row), qshape_row,
                                      qshape_rows_free};

static const rows_spec summary_rows = {ST_QUEUE_SUMMARY, "queue summary", sizeof(pb_qshape_row),
                                       qshape_row, qshape_rows_free};

static pb_err sq_qshape(void *impl, int64_t now_ms, bool buckets, pb_qshape_row **rows, size_t *n)
{
    void *arr = NULL;
    pb_err err = buckets
                     ? read_rows(impl, &qshape_rows, (const arg[]){A_INT(now_ms)}, 1, NULL, &arr, n)
                     : read_rows(impl, &summary_rows, NULL, 0, NULL, &arr, n);
    if (err == PB_OK) *rows = arr;
    return err;
}

static pb_err sq_peer_mode_counts(void *impl, uint64_t counts[3])
{
    sq *b = impl;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    pb_err err = reader_get(b, &c);
    if (err != PB_OK) return err;
    err = stmt_get(c, ST_PEER_MODE_COUNTS, &st);
    if (err != PB_OK) goto out;
    counts[0] = counts[1] = counts[2] = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t mode = sqlite3_column_int64(st, 0);
        if (mode < PB_MODE_PUSH || mode > PB_MODE_PARKED) {
            PB_ERROR(NULL, "store: bad peer mode %lld", (long long)mode);
            err = PB_ERR_CORRUPT;
            break;
        }
        counts[mode] = (uint64_t)sqlite3_column_int64(st, 1);
    }
    if (err == PB_OK && rc != SQLITE_DONE) err = fail(c->db, rc, "peer mode counts");
    stmt_done(st);
out:
    reader_put(b, c);
    return err;
}

static pb_err sq_inbox_unread(void *impl, uint64_t after, uint64_t *count, int64_t *oldest_at)
{
    sq *b = impl;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    pb_err err = reader_get(b, &c);
    if (err != PB_OK) return err;
    err = stmt_bind(c, ST_INBOX_UNREAD, (const arg[]){A_INT(clamp64(after))}, 1, &st);
    if (err != PB_OK) goto out;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *count = (uint64_t)sqlite3_column_int64(st, 0);
        *oldest_at = sqlite3_column_int64(st, 1); /* NULL (none) reads as 0 */
    } else {
        err = fail(c->db, rc, "inbox unread");
    }
    stmt_done(st);
out:
    reader_put(b, c);
    return err;
}

/* ---- test-only fault points ------------------------------------------------------------- */

#ifdef PB_FAULTS
static void sq_fault_set(void *impl, pb_err err)
{
    sq *b = impl;
    pthread_mutex_lock(&b->mu);
    b->fault = err;
    pthread_mutex_unlock(&b->mu);
}

static void sq_fault_hold(void *impl, bool hold)
{
    sq *b = impl;
    pthread_mutex_lock(&b->mu);
    b->hold = hold;
    pthread_cond_broadcast(&b->work);
    pthread_mutex_unlock(&b->mu);
}

static size_t sq_fault_queued(void *impl)
{
    sq *b = impl;
    pthread_mutex_lock(&b->mu);
    size_t n = b->queued;
    pthread_mutex_unlock(&b->mu);
    return n;
}

/* Writes the key, then breaks the NOT NULL constraint in the same job. */
static pb_err bad_write_job(conn *c, void *ctx)
{
    struct meta_set_ctx m = {ctx, "partial"};
    pb_err err = meta_set_job(c, &m);
    if (err != PB_OK) return err;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(c->db, "INSERT INTO meta(key, value) VALUES (?1 || '.x', NULL)", -1,
                                &st, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_bind_text(st, 1, ctx, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    err = rc == SQLITE_DONE ? PB_ERR_INTERNAL : fail(c->db, rc, "bad write");
    sqlite3_finalize(st);
    return err;
}

static pb_err sq_fault_bad_write(void *impl, const char *key)
{
    return job_run(impl, bad_write_job, (void *)key);
}
#endif

const pb_store_ops pb_store_sqlite_ops = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .ping = sq_ping,
    .schema_version = sq_schema_version,
    .integrity_check = sq_integrity_check,
    .stats_get = sq_stats_get,
    .meta_get = sq_meta_get,
    .meta_set = sq_meta_set,
    .peer_touch = sq_peer_touch,
    .peer_key_get = sq_peer_key_get,
    .peer_key_set = sq_peer_key_set,
    .peer_list = sq_peer_list,
    .peer_state_get = sq_peer_state_get,
    .peer_state_list = sq_peer_state_list,
    .peer_state_set = sq_peer_state_set,
    .outbox_append = sq_outbox_append,
    .outbox_read = sq_outbox_read,
    .outbox_ack = sq_outbox_ack,
    .outbox_remove = sq_outbox_remove,
    .receive = sq_receive,
    .inbox_read = sq_inbox_read,
    .inbox_last_seq = sq_inbox_last_seq,
    .guilds = sq_guilds,
    .invites = sq_invites,
    .peer_rename = sq_peer_rename,
    .self_rename = sq_self_rename,
    .rename_out_list = sq_rename_out_list,
    .rename_out_done = sq_rename_out_done,
    .rename_out_failed = sq_rename_out_failed,
    .lease_acquire = sq_lease_acquire,
    .lease_release = sq_lease_release,
    .outbox_peers = sq_outbox_peers,
    .qshape = sq_qshape,
    .peer_mode_counts = sq_peer_mode_counts,
    .inbox_unread = sq_inbox_unread,
    .peer_new_epoch = sq_peer_new_epoch,
    .recv_latest = sq_recv_latest,
    .rename_in_add = sq_rename_in_add,
    .rename_in_find = sq_rename_in_find,
    .rename_in_remove = sq_rename_in_remove,
    .rename_in_list = sq_rename_in_list,
    .rename_in_expire = sq_rename_in_expire,
#ifdef PB_FAULTS
    .fault_set = sq_fault_set,
    .fault_hold = sq_fault_hold,
    .fault_queued = sq_fault_queued,
    .fault_bad_write = sq_fault_bad_write,
#endif
};
