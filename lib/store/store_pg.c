/*
 * store_pg - the PostgreSQL backend of the store (implements store_impl.h), for a server
 * run by one or several postboxd nodes sharing one database.
 *
 * Design:
 *  - Connections: a bounded pool (POOL_MAX) of libpq connections, made on demand and kept.
 *    A call takes one for its duration (waiting on a condvar when all are busy). Each
 *    connection sets its session once (synchronous_commit from the options: full = on,
 *    normal = local, off = off; lock_timeout = busy_timeout_ms; UTC) and prepares each
 *    statement once, on first use, with the parameter types of that use (int8 and bytea
 *    sent binary, text as text; results come back binary).
 *  - Writes: one transaction per write call on the caller's thread; it returns PB_OK
 *    only after the commit answered, i.e. after the commit record was flushed. A call of
 *    several statements runs BEGIN ... COMMIT; a call of one statement runs it alone (its
 *    own transaction, saving two round trips). The statements applying a received batch
 *    are sent pipelined (one round trip per PIPE_CHUNK). Concurrent callers on their own
 *    connections get PostgreSQL's group commit. A failed statement rolls the whole call
 *    back. Reads are single statements (their own snapshot) and take no locks.
 *  - Errors: SQLSTATE classes map to pb_err: unique violation PB_ERR_EXISTS, other
 *    integrity violations and bad data PB_ERR_INVAL; serialization failure, deadlock, lock
 *    timeout, lost connection, insufficient resources, server shutdown PB_ERR_STORE;
 *    disk_full (53100) PB_ERR_DISK_FULL; data/index corruption PB_ERR_CORRUPT. Failures
 *    that make the store unavailable (and failed connects) are logged through the
 *    store-health tracker (util/health.h), which keeps an outage to a few lines. A broken
 * connection leaves the pool (the next call connects anew); a pooled connection found dead (the
 * server restarted) is replaced before use, and a call whose connection broke before COMMIT was
 * sent is retried once on a new one. A broken COMMIT, or a single-statement write that broke, is
 * PB_ERR_STORE without a retry (it may have committed).
 *  - Several nodes (store.h "outbound ownership"):
 *    . outbox_append is one statement: an upsert of the peer row that reserves n
 *      sequence numbers (next_seq += n ... RETURNING, under the row lock held to commit)
 *      and inserts the events with them: appends to one peer serialise there, on any
 *      node, and never read the queue.
 *    . receive locks the sender's row (the upsert of its peers row holds the row lock to
 *      commit) before it reads the (sender, epoch) row for the dedupe check: two nodes
 *      given the same batch apply it once, and a sender's epoch rows (their upsert and
 *      pruning) change under that lock only.
 *    . inbox seqs come from the one counter row inbox_seq, locked (UPDATE ... RETURNING)
 *      as the last step before the inbox rows are inserted and held until commit, so
 *      inbox rows commit in seq order and a reader following the cursor never skips a row
 *      that commits later with a smaller seq. Inbox appends serialise server-wide on that
 *      row (about one per WAL flush); the rest of a receive runs before it is taken.
 *    . the outbox is never read under lock: a peer's queue has one reader, the node
 *      holding its lease (one INSERT ... ON CONFLICT DO UPDATE ... WHERE holder = node OR
 *      expired). pb_store_outbox_peers is a loose index scan of outbox's primary key.
 *    . an append with a submission ID is one transaction: INSERT ... ON CONFLICT DO
 *      NOTHING RETURNING claims the ID (a concurrent claimer of the same ID, on any node,
 *      waits for the owner's commit and then finds its record), then one statement
 *      appends, records the first seq and prunes expired IDs (FOR UPDATE SKIP LOCKED, so
 *      appends never wait on each other's pruning).
 *    . pb_store_peer_new_epoch is one upsert given two different random epochs: the row
 *      takes the one that differs from its current value (under the row lock), so each
 *      of several concurrent calls leaves a fresh non-zero epoch.
 *    . renames_in: one statement per write; the UNIQUE index on new_id makes a second
 *      old ID claiming the same new ID (any node) wait for the first and then fail.
 *    . migrations run in one transaction under pg_advisory_xact_lock, so nodes that start
 *      together migrate once.
 *
 * Schema (version 8, the same logical schema and versions as store_sqlite.c, except its
 * model log: version 7 changes nothing here): meta, peers (with delivery and sequence
 * columns, send_epoch and the queue counter `queued`; recv_seq unused since version 5),
 * recv_epochs PK (peer, epoch), outbox PK (peer, seq), inbox PK seq plus the inbox_seq
 * counter row, guilds, invites, renames_out, renames_in (old_id PK, new_id UNIQUE,
 * created_at indexed); guilds and invites keyed by user only (a rename scans them), leases,
 * submissions (id PK, peer, first_seq, count, created_at, indexed by created_at), and
 * schema_version. Text keys are COLLATE "C" (bytewise order, as SQLite's); times and IDs are
 * bigint; uint64 values are stored as their int64 bit pattern (uint64 order done in SQL); events
 * are bytea holding pb_wire_event_encode bytes.
 *
 * Untrusted input: none directly (callers validate server IDs; events were decoded by the
 * wire module). The URI comes from the operator and is never logged (it may hold a
 * password). Stored values read back are checked (a key of the wrong length, an
 * undecodable event, a bad mode or a value of an unexpected size is PB_ERR_CORRUPT).
 */
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/buf.h"
#include "util/health.h"
#include "util/log.h"
#include "util/mem.h"
#include "store/store_impl.h"
#include "wire/wire.h"

#define POOL_MAX 8
#define MAX_ARGS 10
#define CONNECT_TIMEOUT_S "10"
/* pg_advisory_xact_lock key serialising migrations: "postbox" in ASCII, 0x706f7374626f78 */
#define MIGRATION_LOCK_KEY "31647739056123768"

/* type OIDs (pg_type.h) of the parameters this file sends */
#define OID_INT8 20
#define OID_TEXT 25
#define OID_BYTEA 17
#define OID_BYTEA_ARRAY 1001

/* ---- schema ----------------------------------------------------------------------------- */

/* Forward migrations: migrations[i] takes the schema from version i to i + 1 (the same
 * numbering as store_sqlite.c). Never edit a released step; append a new one. */
static const char *const migrations[] = {
    /* 1: identity facts and peers with their keys */
    "CREATE TABLE meta ("
    "  key text COLLATE \"C\" PRIMARY KEY,"
    "  value text NOT NULL"
    ");"
    "CREATE TABLE peers ("
    "  server_id text COLLATE \"C\" PRIMARY KEY,"
    "  first_seen bigint NOT NULL,"
    "  last_contact bigint NOT NULL DEFAULT 0,"
    "  pubkey bytea NULL CHECK (pubkey IS NULL OR length(pubkey) = 32),"
    "  key_fetched_at bigint NOT NULL DEFAULT 0"
    ");",
    /* 2: delivery engine state */
    "ALTER TABLE peers"
    "  ADD COLUMN mode smallint NOT NULL DEFAULT 0 CHECK (mode BETWEEN 0 AND 2),"
    "  ADD COLUMN attempts bigint NOT NULL DEFAULT 0,"
    "  ADD COLUMN next_attempt_at bigint NOT NULL DEFAULT 0,"
    "  ADD COLUMN last_error text NULL,"
    "  ADD COLUMN parked_seq bigint NOT NULL DEFAULT 0,"
    "  ADD COLUMN next_seq bigint NOT NULL DEFAULT 1 CHECK (next_seq >= 1),"
    "  ADD COLUMN recv_seq bigint NOT NULL DEFAULT 0;"
    "CREATE TABLE outbox ("
    "  peer text COLLATE \"C\" NOT NULL,"
    "  seq bigint NOT NULL CHECK (seq >= 1),"
    "  event bytea NOT NULL,"
    "  created_at bigint NOT NULL,"
    "  PRIMARY KEY (peer, seq)"
    ");"
    "CREATE TABLE inbox ("
    "  seq bigint PRIMARY KEY CHECK (seq >= 1),"
    "  from_id text NOT NULL,"
    "  event bytea NULL,"
    "  old_id text NULL,"
    "  new_id text NULL,"
    "  received_at bigint NOT NULL,"
    "  CHECK ((event IS NOT NULL AND old_id IS NULL AND new_id IS NULL) OR"
    "         (event IS NULL AND old_id IS NOT NULL AND new_id IS NOT NULL))"
    ");"
    "CREATE TABLE inbox_seq ("
    "  id integer PRIMARY KEY CHECK (id = 1),"
    "  last bigint NOT NULL CHECK (last >= 0)"
    ");"
    "INSERT INTO inbox_seq(id, last) VALUES (1, 0);"
    "CREATE TABLE guilds ("
    "  user_id bigint NOT NULL,"
    "  server_id text COLLATE \"C\" NOT NULL,"
    "  guild_id bigint NOT NULL,"
    "  PRIMARY KEY (user_id, server_id, guild_id)"
    ");"
    "CREATE INDEX guilds_by_server ON guilds(server_id);"
    "CREATE TABLE invites ("
    "  user_id bigint NOT NULL,"
    "  server_id text COLLATE \"C\" NOT NULL,"
    "  invite_id text COLLATE \"C\" NOT NULL,"
    "  inviter_id bigint NOT NULL,"
    "  PRIMARY KEY (user_id, server_id, invite_id)"
    ");"
    "CREATE INDEX invites_by_server ON invites(server_id);"
    "CREATE TABLE renames_out ("
    "  peer text COLLATE \"C\" PRIMARY KEY,"
    "  old_id text NOT NULL,"
    "  new_id text NOT NULL,"
    "  attempts bigint NOT NULL DEFAULT 0,"
    "  next_attempt_at bigint NOT NULL DEFAULT 0,"
    "  last_error text NULL"
    ");",
    /* 3: outbound ownership among several nodes */
    "CREATE TABLE leases ("
    "  peer text COLLATE \"C\" PRIMARY KEY,"
    "  holder text NOT NULL,"
    "  expires_at bigint NOT NULL"
    ");",
    /* 4: client-chosen submission IDs (store.h pb_store_outbox_submit); first_seq is 0
     * only inside the transaction that claims the ID */
    "CREATE TABLE submissions ("
    "  id text COLLATE \"C\" PRIMARY KEY,"
    "  peer text COLLATE \"C\" NOT NULL,"
    "  first_seq bigint NOT NULL CHECK (first_seq >= 0),"
    "  count bigint NOT NULL CHECK (count >= 1),"
    "  created_at bigint NOT NULL"
    ");"
    "CREATE INDEX submissions_by_age ON submissions(created_at);",
    /* 5: sequence epochs: the sender epoch of every peer (0, the legacy epoch, for the
     * rows that exist now; new rows get a random one), the receive state per (sender,
     * epoch) taking over peers.recv_seq as epoch 0, and pending incoming renames */
    "ALTER TABLE peers ADD COLUMN send_epoch bigint NOT NULL DEFAULT 0;"
    "CREATE TABLE recv_epochs ("
    "  peer text COLLATE \"C\" NOT NULL,"
    "  epoch bigint NOT NULL,"
    "  recv_seq bigint NOT NULL,"
    "  updated_at bigint NOT NULL,"
    "  PRIMARY KEY (peer, epoch)"
    ");"
    "INSERT INTO recv_epochs(peer, epoch, recv_seq, updated_at)"
    "  SELECT server_id, 0, recv_seq, 0 FROM peers WHERE recv_seq <> 0;"
    "CREATE TABLE renames_in ("
    "  old_id text COLLATE \"C\" PRIMARY KEY,"
    "  new_id text COLLATE \"C\" NOT NULL UNIQUE,"
    "  created_at bigint NOT NULL"
    ");"
    "CREATE INDEX renames_in_by_age ON renames_in(created_at);",
    /* 6: no index of guilds and invites by server (see store_sqlite.c) */
    "DROP INDEX IF EXISTS guilds_by_server; DROP INDEX IF EXISTS invites_by_server;",
    /* 7: SQLite's model log; PostgreSQL applies received changes to the tables directly
     * (store_sqlite.c "model log"): nothing, so that both keep the same version numbers */
    "SELECT 1",
    /* 8: each peer's queue length kept with the queue (appends add, deletions subtract in
     * the same statement), so that reading it never counts the queue */
    "ALTER TABLE peers ADD COLUMN queued bigint NOT NULL DEFAULT 0;"
    "UPDATE peers p SET queued = c.n FROM (SELECT peer, count(*) AS n FROM outbox GROUP BY peer) c"
    " WHERE c.peer = p.server_id;",
};
#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

/* ---- prepared statements ---------------------------------------------------------------- */

enum stmt_id {
    ST_PING,
    ST_RECOVERY,
    ST_SCHEMA_VERSION,
    ST_CHECK_OUTBOX,
    ST_CHECK_INBOX,
    ST_CHECK_SUBMISSIONS,
    ST_META_GET,
    ST_META_SET,
    ST_PEER_TOUCH,
    ST_PEER_KEY_GET,
    ST_PEER_KEY_SET,
    ST_PEER_LIST,
    ST_PEER_LOCK,
    ST_PEER_STATE_SET,
    ST_PEER_STATE_GET,
    ST_PEER_STATE_LIST,
    ST_PEER_NEW_EPOCH,
    ST_RECV_EPOCH_GET,
    ST_RECV_EPOCH_SET,
    ST_RECV_EPOCH_PRUNE,
    ST_RECV_LATEST,
    ST_OUTBOX_APPEND,
    ST_SUBMISSION_CLAIM,
    ST_SUBMISSION_GET,
    ST_OUTBOX_SUBMIT,
    ST_OUTBOX_READ,
    ST_OUTBOX_ACK,
    ST_OUTBOX_REMOVE,
    ST_OUTBOX_PEERS,
    ST_INBOX_RESERVE,
    ST_INBOX_INSERT_EVENTS,
    ST_INBOX_INSERT_RENAME,
    ST_INBOX_READ,
    ST_INBOX_LAST,
    ST_GUILD_ADD,
    ST_GUILD_REMOVE,
    ST_GUILD_LIST,
    ST_INVITE_ADD,
    ST_INVITE_LIST,
    ST_RENAME_PEER,
    ST_RENAME_OUTBOX,
    ST_RENAME_GUILDS_DROP,
    ST_RENAME_GUILDS,
    ST_RENAME_INVITES_DROP,
    ST_RENAME_INVITES,
    ST_RENAME_RENAMES_OUT,
    ST_RENAME_RECV_EPOCHS_DROP,
    ST_RENAME_RECV_EPOCHS,
    ST_RENAME_LEASES_DROP,
    ST_RENAME_LEASES,
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
    ST_LEASE_ACQUIRE,
    ST_LEASE_RELEASE,
    ST_QSHAPE,
    ST_QUEUE_SUMMARY,
    ST_PEER_MODE_COUNTS,
    ST_INBOX_UNREAD,
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
    [ST_PING] = "SELECT 1::bigint",
    [ST_RECOVERY] = "SELECT pg_is_in_recovery()",
    [ST_SCHEMA_VERSION] = "SELECT version::bigint FROM schema_version WHERE id = 1",
    [ST_CHECK_OUTBOX] = "SELECT count(*) FROM outbox o LEFT JOIN peers p ON p.server_id = o.peer"
                        " WHERE p.server_id IS NULL OR o.seq >= p.next_seq",
    /* 1 when the counter row is missing or behind the inbox */
    [ST_CHECK_INBOX] = "SELECT CASE WHEN (SELECT last FROM inbox_seq WHERE id = 1)"
                       " >= coalesce((SELECT max(seq) FROM inbox), 0) THEN 0 ELSE 1 END::bigint",
    /* a committed claim whose append never set first_seq */
    [ST_CHECK_SUBMISSIONS] = "SELECT count(*) FROM submissions WHERE first_seq < 1",
    [ST_META_GET] = "SELECT value FROM meta WHERE key = $1",
    [ST_META_SET] = "INSERT INTO meta(key, value) VALUES ($1, $2)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    [ST_PEER_TOUCH] = "INSERT INTO peers(server_id, first_seen, last_contact, send_epoch)"
                      " VALUES ($1, $2, $3, $4)"
                      " ON CONFLICT(server_id) DO UPDATE SET last_contact ="
                      " CASE WHEN $3 > 0 THEN $3 ELSE peers.last_contact END",
    [ST_PEER_KEY_GET] = "SELECT pubkey FROM peers WHERE server_id = $1",
    [ST_PEER_KEY_SET] =
        "INSERT INTO peers(server_id, first_seen, pubkey, key_fetched_at,"
        " send_epoch) VALUES ($1, $2, $3, $4, $5) ON CONFLICT(server_id) DO UPDATE SET"
        " pubkey = excluded.pubkey, key_fetched_at = excluded.key_fetched_at",
    [ST_PEER_LIST] = "SELECT server_id, first_seen, last_contact, pubkey, key_fetched_at"
                     " FROM peers ORDER BY server_id",
    [ST_PEER_LOCK] = "SELECT 1 FROM peers WHERE server_id = $1 FOR UPDATE",
    [ST_PEER_STATE_SET] =
        "INSERT INTO peers(server_id, first_seen, mode, attempts, next_attempt_at, last_error,"
        " parked_seq, send_epoch) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT(server_id) DO UPDATE SET"
        " mode = excluded.mode, attempts = excluded.attempts,"
        " next_attempt_at = excluded.next_attempt_at, last_error = excluded.last_error,"
        " parked_seq = excluded.parked_seq",
    [ST_PEER_STATE_GET] = PEER_STATE_SELECT " WHERE p.server_id = $1",
    [ST_PEER_STATE_LIST] = PEER_STATE_SELECT " ORDER BY p.server_id",
    /* $3 and $4 are two different random non-zero epochs: the row gets one that differs
     * from its current one */
    [ST_PEER_NEW_EPOCH] = "INSERT INTO peers(server_id, first_seen, send_epoch) VALUES ($1, $2, $3)"
                          " ON CONFLICT(server_id) DO UPDATE SET send_epoch ="
                          " CASE WHEN peers.send_epoch = $3 THEN $4 ELSE $3 END"
                          " RETURNING send_epoch",
    [ST_RECV_EPOCH_GET] = "SELECT recv_seq FROM recv_epochs WHERE peer = $1 AND epoch = $2",
    [ST_RECV_EPOCH_SET] = "INSERT INTO recv_epochs(peer, epoch, recv_seq, updated_at)"
                          " VALUES ($1, $2, $3, $4) ON CONFLICT(peer, epoch) DO UPDATE SET"
                          " recv_seq = excluded.recv_seq, updated_at = excluded.updated_at",
    /* keeps epoch $2 (just written) and the $3 latest others of the sender */
    [ST_RECV_EPOCH_PRUNE] = "DELETE FROM recv_epochs WHERE peer = $1 AND epoch <> $2 AND epoch"
                            " NOT IN (SELECT e.epoch FROM recv_epochs e WHERE e.peer = $1"
                            " AND e.epoch <> $2" RECV_LATEST_ORDER " LIMIT $3)",
    [ST_RECV_LATEST] =
        "SELECT e.epoch, e.recv_seq FROM recv_epochs e WHERE e.peer = $1" RECV_LATEST_ORDER
        " LIMIT 1",
    /* One statement: creates the peer row or takes its lock and reserves $3 seqs
     * (next_seq += $3), then inserts the events ($4, one bytea[]) with the reserved seqs;
     * answers the last seq. The row lock orders appends to the peer from every node. */
    [ST_OUTBOX_APPEND] = "WITH s AS (INSERT INTO peers(server_id, first_seen, next_seq, send_epoch,"
                         " queued) VALUES ($1, $2, 1 + $3, $6, $3)"
                         " ON CONFLICT(server_id) DO UPDATE SET next_seq = peers.next_seq + $3,"
                         " queued = peers.queued + $3 RETURNING next_seq),"
                         " ins AS (INSERT INTO outbox(peer, seq, event, created_at)"
                         " SELECT $1, s.next_seq - $3 + t.i - 1, t.ev, $5"
                         " FROM s, unnest($4::bytea[]) WITH ORDINALITY AS t(ev, i) RETURNING seq)"
                         " SELECT max(seq) FROM ins",
    /* Records the submission ID unless it exists: a row back means this transaction owns
     * it. A concurrent claimer of the same ID (any node) waits here until the owner's
     * transaction ends, then finds the row (committed) or takes the ID (rolled back). */
    [ST_SUBMISSION_CLAIM] = "INSERT INTO submissions(id, peer, first_seq, count, created_at)"
                            " VALUES ($1, $2, 0, $3, $4) ON CONFLICT(id) DO NOTHING RETURNING 1",
    [ST_SUBMISSION_GET] = "SELECT peer, first_seq, count FROM submissions WHERE id = $1",
    /* ST_OUTBOX_APPEND, then the claimed record ($6) gets its first seq, and at most $8
     * records older than $7 are deleted (oldest first; rows another transaction holds are
     * skipped, so concurrent appends never wait on each other here). Answers the last seq
     * and the number of records updated (1). */
    [ST_OUTBOX_SUBMIT] = "WITH s AS (INSERT INTO peers(server_id, first_seen, next_seq, send_epoch,"
                         " queued) VALUES ($1, $2, 1 + $3, $9, $3)"
                         " ON CONFLICT(server_id) DO UPDATE SET next_seq = peers.next_seq + $3,"
                         " queued = peers.queued + $3 RETURNING next_seq),"
                         " ins AS (INSERT INTO outbox(peer, seq, event, created_at)"
                         " SELECT $1, s.next_seq - $3 + t.i - 1, t.ev, $5"
                         " FROM s, unnest($4::bytea[]) WITH ORDINALITY AS t(ev, i) RETURNING seq),"
                         " rec AS (UPDATE submissions SET first_seq = s.next_seq - $3 FROM s"
                         " WHERE submissions.id = $6 RETURNING 1),"
                         " old AS (DELETE FROM submissions WHERE id IN (SELECT id FROM submissions"
                         " WHERE created_at < $7 AND id <> $6 ORDER BY created_at LIMIT $8"
                         " FOR UPDATE SKIP LOCKED))"
                         " SELECT (SELECT max(seq) FROM ins), (SELECT count(*) FROM rec)",
    [ST_OUTBOX_READ] = "SELECT seq, created_at, event FROM outbox"
                       " WHERE peer = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
    /* the deletions and the peer's counter in one statement; the peer's row is updated
     * (and locked) only when something was deleted: the rows updated are 1 or 0 */
    [ST_OUTBOX_ACK] = "WITH d AS (DELETE FROM outbox WHERE peer = $1 AND seq <= $2 RETURNING 1)"
                      " UPDATE peers SET queued = queued - (SELECT count(*) FROM d)"
                      " WHERE server_id = $1 AND EXISTS (SELECT 1 FROM d)",
    [ST_OUTBOX_REMOVE] = "WITH d AS (DELETE FROM outbox WHERE peer = $1 AND seq = $2 RETURNING 1)"
                         " UPDATE peers SET queued = queued - (SELECT count(*) FROM d)"
                         " WHERE server_id = $1 AND EXISTS (SELECT 1 FROM d)",
    /* loose index scan: each step seeks the first key of the next peer */
    [ST_OUTBOX_PEERS] = "WITH RECURSIVE t(peer) AS ("
                        " SELECT (SELECT peer FROM outbox ORDER BY peer LIMIT 1)"
                        " UNION ALL"
                        " SELECT (SELECT o.peer FROM outbox o WHERE o.peer > t.peer"
                        " ORDER BY o.peer LIMIT 1) FROM t WHERE t.peer IS NOT NULL)"
                        " SELECT peer FROM t WHERE peer IS NOT NULL",
    /* locks the counter row until commit: inbox rows commit in seq order */
    [ST_INBOX_RESERVE] = "UPDATE inbox_seq SET last = last + $1 WHERE id = 1 RETURNING last",
    [ST_INBOX_INSERT_EVENTS] = "INSERT INTO inbox(seq, from_id, event, received_at)"
                               " SELECT $1 + t.i - 1, $2, t.ev, $4"
                               " FROM unnest($3::bytea[]) WITH ORDINALITY AS t(ev, i)",
    [ST_INBOX_INSERT_RENAME] = "INSERT INTO inbox(seq, from_id, event, old_id, new_id, received_at)"
                               " VALUES ($1, $2, NULL, $3, $4, $5)",
    [ST_INBOX_READ] = "SELECT seq, from_id, event, old_id, new_id, received_at FROM inbox"
                      " WHERE seq > $1 ORDER BY seq LIMIT $2",
    [ST_INBOX_LAST] = "SELECT coalesce(max(seq), 0) FROM inbox",
    [ST_GUILD_ADD] = "INSERT INTO guilds(user_id, server_id, guild_id) VALUES ($1, $2, $3)"
                     " ON CONFLICT DO NOTHING",
    [ST_GUILD_REMOVE] =
        "DELETE FROM guilds WHERE user_id = $1 AND server_id = $2 AND guild_id = $3",
    /* guild_id < 0 sorts the IDs >= 2^63 (stored negative) after the others: uint64 order */
    [ST_GUILD_LIST] = "SELECT guild_id, server_id FROM guilds WHERE user_id = $1"
                      " ORDER BY server_id, guild_id < 0, guild_id",
    [ST_INVITE_ADD] = "INSERT INTO invites(user_id, server_id, invite_id, inviter_id)"
                      " VALUES ($1, $2, $3, $4) ON CONFLICT(user_id, server_id, invite_id)"
                      " DO UPDATE SET inviter_id = excluded.inviter_id",
    [ST_INVITE_LIST] = "SELECT invite_id, server_id, inviter_id FROM invites WHERE user_id = $1"
                       " ORDER BY server_id, invite_id",
    [ST_RENAME_PEER] = "UPDATE peers SET server_id = $2, pubkey = $3, key_fetched_at = $4"
                       " WHERE server_id = $1",
    [ST_RENAME_OUTBOX] = "UPDATE outbox SET peer = $2 WHERE peer = $1",
    /* the _DROP steps make room as SQLite's UPDATE OR REPLACE does: OLD's row wins */
    [ST_RENAME_GUILDS_DROP] = "DELETE FROM guilds n WHERE n.server_id = $2 AND EXISTS"
                              " (SELECT 1 FROM guilds o WHERE o.server_id = $1"
                              " AND o.user_id = n.user_id AND o.guild_id = n.guild_id)",
    [ST_RENAME_GUILDS] = "UPDATE guilds SET server_id = $2 WHERE server_id = $1",
    [ST_RENAME_INVITES_DROP] = "DELETE FROM invites n WHERE n.server_id = $2 AND EXISTS"
                               " (SELECT 1 FROM invites o WHERE o.server_id = $1"
                               " AND o.user_id = n.user_id AND o.invite_id = n.invite_id)",
    [ST_RENAME_INVITES] = "UPDATE invites SET server_id = $2 WHERE server_id = $1",
    [ST_RENAME_RENAMES_OUT] = "UPDATE renames_out SET peer = $2 WHERE peer = $1",
    [ST_RENAME_RECV_EPOCHS_DROP] = "DELETE FROM recv_epochs n WHERE n.peer = $2 AND EXISTS"
                                   " (SELECT 1 FROM recv_epochs o WHERE o.peer = $1"
                                   " AND o.epoch = n.epoch)",
    [ST_RENAME_RECV_EPOCHS] = "UPDATE recv_epochs SET peer = $2 WHERE peer = $1",
    [ST_RENAME_LEASES_DROP] = "DELETE FROM leases WHERE peer = $2 AND EXISTS"
                              " (SELECT 1 FROM leases WHERE peer = $1)",
    [ST_RENAME_LEASES] = "UPDATE leases SET peer = $2 WHERE peer = $1",
    [ST_SELF_RENAME_UPSERT] =
        "INSERT INTO renames_out(peer, old_id, new_id, attempts, next_attempt_at, last_error)"
        " SELECT server_id, $1, $2, 0, $3, NULL FROM peers"
        " ON CONFLICT(peer) DO UPDATE SET new_id = excluded.new_id, attempts = 0,"
        " next_attempt_at = excluded.next_attempt_at, last_error = NULL",
    [ST_SELF_RENAME_DROP] = "DELETE FROM renames_out WHERE old_id = new_id",
    [ST_RENAME_OUT_LIST] = "SELECT peer, old_id, new_id, attempts, next_attempt_at, last_error"
                           " FROM renames_out ORDER BY peer",
    [ST_RENAME_OUT_DONE] = "DELETE FROM renames_out WHERE peer = $1 AND new_id = $2",
    [ST_RENAME_OUT_FAILED] = "UPDATE renames_out SET attempts = $2, next_attempt_at = $3,"
                             " last_error = $4 WHERE peer = $1",
    /* a new_id pending for another old_id violates its UNIQUE constraint: PB_ERR_EXISTS */
    [ST_RENAME_IN_ADD] = "INSERT INTO renames_in(old_id, new_id, created_at) VALUES ($1, $2, $3)"
                         " ON CONFLICT(old_id) DO UPDATE SET new_id = excluded.new_id,"
                         " created_at = excluded.created_at",
    [ST_RENAME_IN_FIND] = "SELECT old_id, created_at FROM renames_in WHERE new_id = $1",
    [ST_RENAME_IN_REMOVE] = "DELETE FROM renames_in WHERE old_id = $1",
    [ST_RENAME_IN_LIST] = "SELECT old_id, new_id, created_at FROM renames_in ORDER BY old_id",
    [ST_RENAME_IN_EXPIRE] = "DELETE FROM renames_in WHERE created_at < $1",
    /* one row changed when taken or renewed; none when the WHERE kept another's lease */
    [ST_LEASE_ACQUIRE] = "INSERT INTO leases(peer, holder, expires_at) VALUES ($1, $2, $3 + $4)"
                         " ON CONFLICT(peer) DO UPDATE SET holder = excluded.holder,"
                         " expires_at = excluded.expires_at"
                         " WHERE leases.holder = excluded.holder OR leases.expires_at <= $3",
    [ST_LEASE_RELEASE] = "DELETE FROM leases WHERE peer = $1 AND holder = $2",
    /* ages a = now - created_at (ms) counted in the PB_QSHAPE_EDGES_MIN buckets */
    [ST_QSHAPE] = "SELECT peer, count(*), min(created_at),"
                  " count(*) FILTER (WHERE a < 300000),"
                  " count(*) FILTER (WHERE a >= 300000 AND a < 600000),"
                  " count(*) FILTER (WHERE a >= 600000 AND a < 1200000),"
                  " count(*) FILTER (WHERE a >= 1200000 AND a < 2400000),"
                  " count(*) FILTER (WHERE a >= 2400000 AND a < 4800000),"
                  " count(*) FILTER (WHERE a >= 4800000 AND a < 9600000),"
                  " count(*) FILTER (WHERE a >= 9600000)"
                  " FROM (SELECT peer, created_at, $1 - created_at AS a FROM outbox) o"
                  " GROUP BY peer ORDER BY count(*) DESC, peer",
    [ST_QUEUE_SUMMARY] = "SELECT p.server_id, p.queued, (SELECT o.created_at FROM outbox o"
                         " WHERE o.peer = p.server_id ORDER BY o.seq LIMIT 1), 0, 0, 0, 0, 0, 0, 0"
                         " FROM peers p WHERE p.queued > 0 ORDER BY p.queued DESC, p.server_id",
    [ST_PEER_MODE_COUNTS] = "SELECT mode, count(*) FROM peers GROUP BY mode",
    /* the inbox is append-only with consecutive seqs (the inbox_seq counter, rolled back
     * with its transaction): the rows after $1 are max(seq) - $1, counted without reading */
    [ST_INBOX_UNREAD] = "SELECT greatest(0, coalesce((SELECT max(seq) FROM inbox), 0) - $1),"
                        " (SELECT received_at FROM inbox WHERE seq > $1 ORDER BY seq LIMIT 1)",
};

/* ---- the backend ------------------------------------------------------------------------ */

typedef struct pgc {
    PGconn *pg;
    bool prepared[ST__COUNT];
    bool broken; /* the connection failed: it leaves the pool */
    struct pgc *next;
} pgc;

typedef struct pgs {
    char *uri;   /* never logged: it may hold a password */
    char *where; /* "host:port/db" for log lines */
    pb_store_opts opts;

    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t pool_cond;
    pthread_cond_t gate; /* held writes, and close waiting for callers */
    pgc *free;
    int count; /* connections in existence */
    int callers;
    bool stop;
    uint64_t commits, writes;
    pb_series *m_commit; /* commit latency; NULL: none */
#ifdef PB_FAULTS
    pb_err fault;
    bool hold;
    size_t queued;
#endif
} pgs;

/* ---- errors ----------------------------------------------------------------------------- */

static pb_err map_sqlstate(const char *st)
{
    if (!st || strlen(st) != 5) return PB_ERR_STORE; /* client-side: connection lost */
    if (strcmp(st, "23505") == 0) return PB_ERR_EXISTS;
    if (strncmp(st, "23", 2) == 0) return PB_ERR_INVAL; /* not null, check, foreign key */
    if (strncmp(st, "22", 2) == 0) return PB_ERR_INVAL; /* data exception (out of range) */
    if (strcmp(st, "XX001") == 0 || strcmp(st, "XX002") == 0) return PB_ERR_CORRUPT;
    if (strcmp(st, "53100") == 0) return PB_ERR_DISK_FULL; /* disk_full */
    if (strncmp(st, "54", 2) == 0) return PB_ERR_TOO_BIG;
    if (strncmp(st, "08", 2) == 0 || strncmp(st, "40", 2) == 0 || strncmp(st, "53", 2) == 0 ||
        strncmp(st, "57", 2) == 0 || strncmp(st, "58", 2) == 0 || strcmp(st, "55P03") == 0 ||
        strcmp(st, "25006") == 0 || strcmp(st, "25P03") == 0)
        return PB_ERR_STORE;
    return PB_ERR_INTERNAL;
}

/* Logs a failed libpq call (r may be NULL) and returns its pb_err; marks the connection
 * broken when it is gone. */
static pb_err fail(pgc *c, const PGresult *r, const char *what)
{
    const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    pb_err err = map_sqlstate(st);
    if (PQstatus(c->pg) != CONNECTION_OK) {
        c->broken = true;
        err = PB_ERR_STORE;
    }
    const char *msg = r ? PQresultErrorMessage(r) : "";
    if (!msg || !*msg) msg = PQerrorMessage(c->pg);
    int len = (int)strcspn(msg, "\n");
    if (err == PB_ERR_CORRUPT) {
        PB_ERROR(NULL, "store: %s: %.*s (database corrupt)", what, len, msg);
    } else if (err == PB_ERR_EXISTS || err == PB_ERR_INVAL) {
        PB_DEBUG(NULL, "store: %s: [%s] %.*s", what, st ? st : "-", len, msg);
    } else if (pb_health_unavailable(err)) { /* logged calmly through the tracker */
        pb_health_fail(pb_health_store(), err, NULL, "store: %s: [%s] %.*s", what, st ? st : "-",
                       len, msg);
    } else {
        PB_WARN(NULL, "store: %s: [%s] %.*s", what, st ? st : "-", len, msg);
    }
    return err;
}

/* ---- parameters and results ------------------------------------------------------------- */

/* One parameter: an int8, a text (NULL sends SQL NULL), a bytea or a bytea[] (binary). */
typedef struct arg {
    char type; /* 'i', 't', 'b', 'a' */
    int64_t i;
    const void *p;
    size_t n;
} arg;

#define A_INT(v) ((arg){'i', (int64_t)(v), NULL, 0})
#define A_TEXT(s) ((arg){'t', 0, (s), 0})
#define A_BLOB(ptr, len) ((arg){'b', 0, (ptr), (len)})
#define A_ARRAY(buf) ((arg){'a', 0, (buf)->data, (buf)->len})
#define NARGS(...) ((int)(sizeof((const arg[]){__VA_ARGS__}) / sizeof(arg)))
/* Runs statement id; *res (may be NULL) gets the result, *changes (may be NULL) the rows
 * it changed. */
#define RUN(c, id, res, changes, ...)                                                              \
    run((c), (id), (const arg[]){__VA_ARGS__}, NARGS(__VA_ARGS__), (res), (changes))

static void be64(uint8_t out[8], uint64_t v)
{
    for (int k = 7; k >= 0; k--) {
        out[k] = (uint8_t)v;
        v >>= 8;
    }
}

static void be32_append(pb_buf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    pb_buf_append(b, x, 4);
}

/* A statement's parameters in libpq's form; the pointers refer to the args and ints. */
typedef struct params {
    const char *vals[MAX_ARGS];
    int lens[MAX_ARGS], fmts[MAX_ARGS];
    Oid types[MAX_ARGS];
    uint8_t ints[MAX_ARGS][8];
    char name[16];
} params;

static pb_err params_set(enum stmt_id id, const arg *a, int n, params *p)
{
    if (n > MAX_ARGS) return PB_ERR_INTERNAL;
    for (int k = 0; k < n; k++) {
        switch (a[k].type) {
        case 'i':
            be64(p->ints[k], (uint64_t)a[k].i);
            p->vals[k] = (const char *)p->ints[k];
            p->lens[k] = 8;
            p->fmts[k] = 1;
            p->types[k] = OID_INT8;
            break;
        case 't':
            p->vals[k] = a[k].p;
            p->lens[k] = 0;
            p->fmts[k] = 0;
            p->types[k] = OID_TEXT;
            break;
        default:
            if (a[k].n > (size_t)INT32_MAX) return PB_ERR_TOO_BIG;
            p->vals[k] = a[k].p ? a[k].p : "";
            p->lens[k] = (int)a[k].n;
            p->fmts[k] = 1;
            p->types[k] = a[k].type == 'a' ? OID_BYTEA_ARRAY : OID_BYTEA;
            break;
        }
    }
    snprintf(p->name, sizeof p->name, "pb%d", (int)id);
    return PB_OK;
}

/* Prepares statement id on this connection the first time it is used there, with the
 * parameter types of that use. */
static pb_err prepare(pgc *c, enum stmt_id id, const params *p, int n)
{
    if (c->prepared[id]) return PB_OK;
    PGresult *r = PQprepare(c->pg, p->name, stmt_sql[id], n, p->types);
    pb_err err = PB_OK;
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        err = fail(c, r, "prepare");
    } else {
        c->prepared[id] = true;
    }
    PQclear(r);
    return err;
}

/* Checks a statement's result; logs and maps a failure. */
static pb_err result_ok(pgc *c, enum stmt_id id, const PGresult *r)
{
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return PB_OK;
    char what[48];
    snprintf(what, sizeof what, "%.40s", stmt_sql[id]);
    return fail(c, r, what);
}

static pb_err run(pgc *c, enum stmt_id id, const arg *a, int n, PGresult **res, int *changes)
{
    params p;
    pb_err err = params_set(id, a, n, &p);
    if (err == PB_OK) err = prepare(c, id, &p, n);
    if (err != PB_OK) return err;
    PGresult *r = PQexecPrepared(c->pg, p.name, n, p.vals, p.lens, p.fmts, 1);
    err = result_ok(c, id, r);
    if (err != PB_OK) {
        PQclear(r);
        return err;
    }
    if (changes) *changes = atoi(PQcmdTuples(r));
    if (res) {
        *res = r;
    } else {
        PQclear(r);
    }
    return PB_OK;
}

/* One statement of a pipeline (its result is only checked). */
typedef struct pstmt {
    enum stmt_id id;
    arg a[4];
    int n;
} pstmt;

#define PIPE_CHUNK 256 /* statements per sync: bounds the answers waiting unread */

/* Runs q[0..n) in order in pipeline mode: one round trip per PIPE_CHUNK statements
 * instead of one each. Stops at the first failure (the rest are skipped by the server). */
static pb_err run_pipeline(pgc *c, const pstmt *q, size_t n)
{
    pb_err err = PB_OK;
    for (size_t start = 0; start < n && err == PB_OK; start += PIPE_CHUNK) {
        size_t end = n - start > PIPE_CHUNK ? start + PIPE_CHUNK : n;
        params p;
        for (size_t i = start; i < end && err == PB_OK; i++) {
            err = params_set(q[i].id, q[i].a, q[i].n, &p);
            if (err == PB_OK) err = prepare(c, q[i].id, &p, q[i].n);
        }
        if (err != PB_OK) break;
        if (!PQenterPipelineMode(c->pg)) return fail(c, NULL, "pipeline");
        size_t sent = 0;
        for (size_t i = start; i < end; i++, sent++) {
            params_set(q[i].id, q[i].a, q[i].n, &p);
            if (!PQsendQueryPrepared(c->pg, p.name, q[i].n, p.vals, p.lens, p.fmts, 1)) break;
        }
        if (sent < end - start || !PQpipelineSync(c->pg)) {
            err = fail(c, NULL, "pipeline send");
            c->broken = true; /* results of a half-sent pipeline cannot be matched up */
            break;
        }
        for (size_t i = start; i < end; i++) {
            PGresult *r = PQgetResult(c->pg);
            if (!r) {
                err = fail(c, NULL, "pipeline result");
                c->broken = true;
                break;
            }
            if (err == PB_OK && PQresultStatus(r) != PGRES_PIPELINE_ABORTED)
                err = result_ok(c, q[i].id, r);
            PQclear(r);
            PQclear(PQgetResult(c->pg)); /* the NULL ending this statement's results */
        }
        if (c->broken) break;
        PGresult *r = PQgetResult(c->pg);
        if (PQresultStatus(r) != PGRES_PIPELINE_SYNC) {
            c->broken = true;
            if (err == PB_OK) err = fail(c, r, "pipeline sync");
        }
        PQclear(r);
        if (c->broken || !PQexitPipelineMode(c->pg)) {
            c->broken = true;
            if (err == PB_OK) err = PB_ERR_STORE;
        }
    }
    return err;
}

/* Runs SQL without parameters (transaction control, session settings, migrations). */
static pb_err simple(pgc *c, const char *sql, const char *what)
{
    PGresult *r = PQexec(c->pg, sql);
    ExecStatusType st = PQresultStatus(r);
    pb_err err = PB_OK;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) err = fail(c, r, what);
    PQclear(r);
    return err;
}

/* A binary integer column (int2, int4 or int8) as int64; SQL NULL reads as 0. */
static int64_t col_i64(const PGresult *r, int row, int col, bool *bad)
{
    if (PQgetisnull(r, row, col)) return 0;
    const uint8_t *p = (const uint8_t *)PQgetvalue(r, row, col);
    int len = PQgetlength(r, row, col);
    if (len != 2 && len != 4 && len != 8) {
        *bad = true;
        return 0;
    }
    uint64_t v = 0;
    for (int k = 0; k < len; k++)
        v = v << 8 | p[k];
    if (len == 2) return (int16_t)v;
    if (len == 4) return (int32_t)v;
    return (int64_t)v;
}

/* A text column copied into a new string; NULL for SQL NULL. */
static char *col_str(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col)) return NULL;
    return pb_xstrndup(PQgetvalue(r, row, col), (size_t)PQgetlength(r, row, col));
}

/* Decodes a stored Event (bytea); anything that does not decode is PB_ERR_CORRUPT. */
static pb_err col_event(const PGresult *r, int row, int col, const char *what, pb_event *ev)
{
    int n = PQgetlength(r, row, col);
    if (PQgetisnull(r, row, col) || n <= 0 ||
        pb_wire_event_decode((const uint8_t *)PQgetvalue(r, row, col), (size_t)n, ev) != PB_OK) {
        PB_ERROR(NULL, "store: a stored %s event does not decode (database corrupt)", what);
        return PB_ERR_CORRUPT;
    }
    return PB_OK;
}

/* Events encoded on the caller's thread: one buffer, event i at [off[i], off[i + 1]). */
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

/* PostgreSQL's binary form of a one-dimensional bytea[] holding events idx[0..n) (all of
 * them, in order, when idx is NULL). */
static void bytea_array(const encoded *e, const size_t *idx, size_t n, pb_buf *out)
{
    *out = (pb_buf)PB_BUF_INIT;
    be32_append(out, 1);         /* dimensions */
    be32_append(out, 0);         /* no NULLs */
    be32_append(out, OID_BYTEA); /* element type */
    be32_append(out, (uint32_t)n);
    be32_append(out, 1); /* lower bound */
    for (size_t k = 0; k < n; k++) {
        size_t i = idx ? idx[k] : k;
        size_t len = e->off[i + 1] - e->off[i];
        be32_append(out, (uint32_t)len);
        pb_buf_append(out, e->buf.data + e->off[i], len);
    }
}

/* Clamps a uint64 (a cursor or a count) to what a bigint compares correctly. */
static int64_t clamp64(uint64_t v)
{
    return v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v;
}

/* ---- connections ------------------------------------------------------------------------ */

static void on_notice(void *ud, const char *msg)
{
    (void)ud;
    PB_DEBUG(NULL, "store: postgres: %.*s", (int)strcspn(msg, "\n"), msg);
}

static void conn_close(pgc *c)
{
    if (!c) return;
    PQfinish(c->pg);
    free(c);
}

static pb_err conn_open(pgs *b, pgc **out)
{
    /* the URI's own settings win over these defaults (expand_dbname) */
    const char *const keys[] = {"connect_timeout", "fallback_application_name", "dbname", NULL};
    const char *const vals[] = {CONNECT_TIMEOUT_S, "postboxd", b->uri, NULL};
    pgc *c = pb_xcalloc(1, sizeof *c);
    pb_err err = PB_OK;
    c->pg = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(c->pg) != CONNECTION_OK) {
        const char *msg = PQerrorMessage(c->pg);
        pb_health_fail(pb_health_store(), PB_ERR_STORE, NULL,
                       "store: cannot connect to PostgreSQL %s: %.*s", b->where,
                       (int)strcspn(msg, "\n"), msg);
        err = PB_ERR_STORE;
        goto out;
    }
    PQsetNoticeProcessor(c->pg, on_notice, NULL);
    if (PQsetClientEncoding(c->pg, "UTF8") != 0) {
        err = fail(c, NULL, "client encoding");
        goto out;
    }
    const char *sync = b->opts.sync == PB_SYNC_OFF      ? "off"
                       : b->opts.sync == PB_SYNC_NORMAL ? "local"
                                                        : "on";
    char set[256];
    snprintf(set, sizeof set,
             "SET synchronous_commit TO %s; SET lock_timeout TO %d;"
             " SET TIME ZONE 'UTC'; SET client_min_messages TO warning",
             sync, b->opts.busy_timeout_ms);
    err = simple(c, set, "session settings");
out:
    if (err != PB_OK) {
        conn_close(c);
        return err;
    }
    *out = c;
    return PB_OK;
}

/* False when a pooled connection was closed by the server while it sat idle (a restart);
 * costs one poll() when nothing happened. */
static bool conn_alive(pgc *c)
{
    if (PQstatus(c->pg) != CONNECTION_OK) return false;
    struct pollfd p = {.fd = PQsocket(c->pg), .events = POLLIN};
    if (poll(&p, 1, 0) <= 0) return true;
    if (!PQconsumeInput(c->pg)) return false;
    PGnotify *n;
    while ((n = PQnotifies(c->pg)) != NULL)
        PQfreemem(n);
    return PQstatus(c->pg) == CONNECTION_OK && !PQisBusy(c->pg);
}

static pb_err conn_get(pgs *b, pgc **out)
{
    pgc *c = NULL;
    pthread_mutex_lock(&b->mu);
    for (;;) {
        if (b->free) {
            c = b->free;
            b->free = c->next;
            c->next = NULL;
            break;
        }
        if (b->count < POOL_MAX) {
            b->count++;
            break;
        }
        pthread_cond_wait(&b->pool_cond, &b->mu);
    }
    pthread_mutex_unlock(&b->mu);
    if (c && conn_alive(c)) {
        *out = c;
        return PB_OK;
    }
    if (c) {
        PB_INFO(NULL, "store: a pooled PostgreSQL connection was closed; reconnecting");
        conn_close(c);
        c = NULL;
    }
    pb_err err = conn_open(b, &c);
    if (err != PB_OK) {
        pthread_mutex_lock(&b->mu);
        b->count--;
        pthread_cond_signal(&b->pool_cond);
        pthread_mutex_unlock(&b->mu);
        return err;
    }
    *out = c;
    return PB_OK;
}

static void conn_put(pgs *b, pgc *c)
{
    if (!c) return;
    if (c->broken) {
        conn_close(c);
        c = NULL;
    }
    pthread_mutex_lock(&b->mu);
    if (c) {
        c->next = b->free;
        b->free = c;
    } else {
        b->count--;
    }
    pthread_cond_signal(&b->pool_cond);
    pthread_mutex_unlock(&b->mu);
}

/* ---- calls ------------------------------------------------------------------------------ */

/* Every call enters (refused once close has begun) and leaves; close waits for callers. */
static pb_err call_enter(pgs *b)
{
    pthread_mutex_lock(&b->mu);
    if (b->stop) {
        pthread_mutex_unlock(&b->mu);
        return PB_ERR_SHUTDOWN;
    }
    b->callers++;
    pthread_mutex_unlock(&b->mu);
    return PB_OK;
}

static void call_leave(pgs *b)
{
    pthread_mutex_lock(&b->mu);
    if (--b->callers == 0 && b->stop) pthread_cond_broadcast(&b->gate);
    pthread_mutex_unlock(&b->mu);
}

/* A read: one statement on a pooled connection, retried once on a new connection when
 * the first one broke. On PB_OK *res is the caller's (PQclear). */
static pb_err read_query(pgs *b, enum stmt_id id, const arg *a, int n, PGresult **res)
{
    pb_err err = call_enter(b);
    if (err != PB_OK) return err;
    for (int attempt = 0;; attempt++) {
        pgc *c = NULL;
        err = conn_get(b, &c);
        if (err != PB_OK) break;
        err = run(c, id, a, n, res, NULL);
        bool retry = err != PB_OK && c->broken && attempt == 0;
        conn_put(b, c);
        if (!retry) break;
    }
    call_leave(b);
    return err;
}

#define READ(b, id, res, ...)                                                                      \
    read_query((b), (id), (const arg[]){__VA_ARGS__}, NARGS(__VA_ARGS__), (res))

typedef pb_err (*tx_fn)(pgc *c, void *ctx);

/* A write: fn(c, ctx) inside BEGIN ... COMMIT; PB_OK only once COMMIT answered. A call
 * whose connection broke before COMMIT was sent runs again once on a new connection (the
 * server rolled the first attempt back), so fn must only set ctx's outputs. single: fn
 * runs exactly one statement, which is its own transaction (no BEGIN/COMMIT round trips;
 * it commits, durably, before its answer comes) and is never retried. */
static pb_err write_run(pgs *b, tx_fn fn, void *ctx, bool single)
{
    pb_err err = call_enter(b);
    if (err != PB_OK) return err;
#ifdef PB_FAULTS
    pthread_mutex_lock(&b->mu);
    if (b->hold && !b->stop) {
        b->queued++;
        while (b->hold && !b->stop)
            pthread_cond_wait(&b->gate, &b->mu);
        b->queued--;
    }
    err = b->fault;
    pthread_mutex_unlock(&b->mu);
    if (err != PB_OK) {
        call_leave(b);
        return err;
    }
#endif
    double t0 = 0;
    for (int attempt = 0;; attempt++) {
        pgc *c = NULL;
        bool commit_sent = single;
        err = conn_get(b, &c);
        if (err != PB_OK) break;
        t0 = pb_metrics_clock();
        if (single) {
            err = fn(c, ctx);
        } else if ((err = simple(c, "BEGIN", "begin")) == PB_OK) {
            err = fn(c, ctx);
            if (err == PB_OK) {
                commit_sent = true;
                PGresult *r = PQexec(c->pg, "COMMIT");
                if (PQresultStatus(r) != PGRES_COMMAND_OK) {
                    err = fail(c, r, "commit");
                } else if (strcmp(PQcmdStatus(r), "COMMIT") != 0) {
                    PB_ERROR(NULL, "store: commit answered %s", PQcmdStatus(r));
                    err = PB_ERR_INTERNAL; /* a failed statement went unnoticed: a bug */
                }
                PQclear(r);
            } else if (!c->broken) {
                simple(c, "ROLLBACK", "rollback");
            }
        }
        bool retry = err != PB_OK && c->broken && !commit_sent && attempt == 0;
        conn_put(b, c);
        if (!retry) break;
    }
    if (err == PB_OK) pb_histogram_observe(b->m_commit, pb_metrics_clock() - t0);
    pthread_mutex_lock(&b->mu);
    if (err == PB_OK) {
        b->commits++;
        b->writes++;
    }
    pthread_mutex_unlock(&b->mu);
    call_leave(b);
    return err;
}

static pb_err tx_run(pgs *b, tx_fn fn, void *ctx)
{
    return write_run(b, fn, ctx, false);
}

static pb_err stmt_run(pgs *b, tx_fn fn, void *ctx)
{
    return write_run(b, fn, ctx, true);
}

/* ---- open / migrate / close ------------------------------------------------------------- */

static pb_err migrate(pgc *c, const char *where)
{
    PGresult *r = NULL;
    int version = 0;
    /* other nodes wait here (no lock_timeout) until this one has migrated */
    pb_err err = simple(c,
                        "BEGIN; SET LOCAL lock_timeout TO 0;"
                        " SELECT pg_advisory_xact_lock(" MIGRATION_LOCK_KEY ");"
                        " CREATE TABLE IF NOT EXISTS schema_version ("
                        " id integer PRIMARY KEY CHECK (id = 1), version integer NOT NULL)",
                        "migrate: begin");
    if (err != PB_OK) goto out;
    r = PQexecParams(c->pg, stmt_sql[ST_SCHEMA_VERSION], 0, NULL, NULL, NULL, NULL, 1);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        err = fail(c, r, "migrate: read version");
        goto out;
    }
    if (PQntuples(r) == 1) {
        bool bad = false;
        int64_t v = col_i64(r, 0, 0, &bad);
        version = bad || v > 1000000 ? -1 : (int)v;
    }
    if (version < 0 || version > SCHEMA_VERSION) {
        PB_ERROR(NULL,
                 "store: %s has schema version %d but this build knows only up to %d; "
                 "refusing to open (use a newer postbox)",
                 where, version, SCHEMA_VERSION);
        err = PB_ERR_CONFIG;
        goto out;
    }
    for (int v = version; v < SCHEMA_VERSION && err == PB_OK; v++)
        err = simple(c, migrations[v], "migrate: step");
    if (err != PB_OK) goto out;
    if (version < SCHEMA_VERSION) {
        char sql[160];
        snprintf(sql, sizeof sql,
                 "INSERT INTO schema_version(id, version) VALUES (1, %d)"
                 " ON CONFLICT(id) DO UPDATE SET version = excluded.version",
                 SCHEMA_VERSION);
        err = simple(c, sql, "migrate: set version");
        if (err != PB_OK) goto out;
    }
    err = simple(c, "COMMIT", "migrate: commit");
    if (err == PB_OK && version < SCHEMA_VERSION)
        PB_INFO(NULL, "store: %s: schema migrated from version %d to %d", where, version,
                SCHEMA_VERSION);
out:
    PQclear(r);
    if (err != PB_OK && !c->broken && PQtransactionStatus(c->pg) != PQTRANS_IDLE)
        simple(c, "ROLLBACK", "migrate: rollback");
    return err;
}

static void pg_close(void *impl)
{
    pgs *b = impl;
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    b->stop = true;
    pthread_cond_broadcast(&b->gate); /* held writes go on and commit */
    while (b->callers > 0)
        pthread_cond_wait(&b->gate, &b->mu);
    pthread_mutex_unlock(&b->mu);
    while (b->free) {
        pgc *c = b->free;
        b->free = c->next;
        conn_close(c);
    }
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->pool_cond);
    pthread_cond_destroy(&b->gate);
    free(b->uri);
    free(b->where);
    free(b);
}

/* "host:port/db" from the URI, for log lines (never the password). */
static char *describe(PQconninfoOption *opts)
{
    const char *host = "localhost", *port = "5432", *db = "(default)";
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (!o->val || !*o->val) continue;
        if (strcmp(o->keyword, "host") == 0) host = o->val;
        if (strcmp(o->keyword, "port") == 0) port = o->val;
        if (strcmp(o->keyword, "dbname") == 0) db = o->val;
    }
    return pb_xasprintf("%s:%s/%s", host, port, db);
}

static pb_err pg_open(const char *location, const pb_store_opts *opts, void **impl)
{
    char *why = NULL;
    PQconninfoOption *ci = PQconninfoParse(location, &why);
    if (!ci) {
        PB_ERROR(NULL, "store: bad PostgreSQL URI: %.*s", why ? (int)strcspn(why, "\n") : 0,
                 why ? why : "");
        PQfreemem(why);
        return PB_ERR_CONFIG;
    }
    for (int i = 0; i < ST__COUNT; i++) {
        if (!stmt_sql[i]) { /* a statement added to the enum without its SQL */
            PQconninfoFree(ci);
            PB_ERROR(NULL, "store: statement %d has no SQL", i);
            return PB_ERR_INTERNAL;
        }
    }
    if (!PQisthreadsafe()) {
        PQconninfoFree(ci);
        PB_ERROR(NULL, "store: this libpq is not thread-safe");
        return PB_ERR_CONFIG;
    }
    pgs *b = pb_xcalloc(1, sizeof *b);
    b->uri = pb_xstrdup(location);
    b->where = describe(ci);
    PQconninfoFree(ci);
    b->opts = *opts;
    b->m_commit = pb_metric_series(PB_METRIC(opts->metrics, store_commit_duration), NULL);
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->pool_cond, NULL);
    pthread_cond_init(&b->gate, NULL);

    pgc *c = NULL;
    pb_err err = conn_get(b, &c);
    if (err == PB_OK) err = migrate(c, b->where);
    conn_put(b, c);
    if (err != PB_OK) {
        pg_close(b);
        return err;
    }
    PB_INFO(NULL, "store: PostgreSQL %s (schema version %d)", b->where, SCHEMA_VERSION);
    *impl = b;
    return PB_OK;
}

/* ---- status ----------------------------------------------------------------------------- */

/* The write path: a transaction on a server that accepts writes (not a standby). */
static pb_err ping_job(pgc *c, void *ctx)
{
    PGresult *r = NULL;
    pb_err err = run(c, ST_RECOVERY, NULL, 0, &r, NULL);
    if (err != PB_OK) return err;
    if (PQntuples(r) != 1 || PQgetlength(r, 0, 0) != 1) {
        err = PB_ERR_INTERNAL;
    } else if (PQgetvalue(r, 0, 0)[0]) {
        err = PB_ERR_STORE;
        pb_health_fail(pb_health_store(), err, NULL,
                       "store: the PostgreSQL server is in recovery (read-only)");
    }
    PQclear(r);
    return err;
}

static pb_err pg_ping(void *impl)
{
    PGresult *r = NULL;
    pb_err err = read_query(impl, ST_PING, NULL, 0, &r);
    if (err != PB_OK) return err;
    PQclear(r);
    return tx_run(impl, ping_job, NULL);
}

static pb_err pg_schema_version(void *impl, int *version)
{
    PGresult *r = NULL;
    pb_err err = read_query(impl, ST_SCHEMA_VERSION, NULL, 0, &r);
    if (err != PB_OK) return err;
    bool bad = false;
    int64_t v = PQntuples(r) == 1 ? col_i64(r, 0, 0, &bad) : -1;
    PQclear(r);
    if (bad || v < 0 || v > 1000000) return PB_ERR_CORRUPT;
    *version = (int)v;
    return PB_OK;
}

/* One count(*) that must be zero. */
static pb_err check_zero(pgs *b, enum stmt_id id, const char *what)
{
    PGresult *r = NULL;
    pb_err err = read_query(b, id, NULL, 0, &r);
    if (err != PB_OK) return err;
    bool bad = false;
    int64_t n = PQntuples(r) == 1 ? col_i64(r, 0, 0, &bad) : -1;
    PQclear(r);
    if (bad || n != 0) {
        PB_ERROR(NULL, "store: integrity check: %s (%lld)", what, (long long)n);
        return PB_ERR_CORRUPT;
    }
    return PB_OK;
}

/* PostgreSQL checks its own pages; this checks what the schema cannot express. */
static pb_err pg_integrity_check(void *impl)
{
    int v = 0;
    pb_err err = pg_schema_version(impl, &v);
    if (err == PB_OK && v != SCHEMA_VERSION) {
        PB_ERROR(NULL, "store: integrity check: schema version %d, want %d", v, SCHEMA_VERSION);
        err = PB_ERR_CORRUPT;
    }
    if (err == PB_OK)
        err = check_zero(impl, ST_CHECK_OUTBOX, "outbox events without a peer or past next_seq");
    if (err == PB_OK)
        err = check_zero(impl, ST_CHECK_INBOX, "inbox seq counter missing or behind the inbox");
    if (err == PB_OK)
        err = check_zero(impl, ST_CHECK_SUBMISSIONS, "submission records without a first seq");
    return err;
}

static void pg_stats_get(void *impl, pb_store_stats *out)
{
    pgs *b = impl;
    pthread_mutex_lock(&b->mu);
    out->commits = b->commits;
    out->writes = b->writes;
    pthread_mutex_unlock(&b->mu);
}

/* ---- meta ------------------------------------------------------------------------------- */

static pb_err pg_meta_get(void *impl, const char *key, char **val)
{
    PGresult *r = NULL;
    pb_err err = READ(impl, ST_META_GET, &r, A_TEXT(key));
    if (err != PB_OK) return err;
    if (PQntuples(r) == 0) {
        err = PB_ERR_NOT_FOUND;
    } else {
        char *v = col_str(r, 0, 0);
        if (v) {
            *val = v;
        } else {
            err = PB_ERR_CORRUPT;
        }
    }
    PQclear(r);
    return err;
}

struct meta_set_ctx {
    const char *key, *val;
};

static pb_err meta_set_job(pgc *c, void *ctx)
{
    struct meta_set_ctx *m = ctx;
    return RUN(c, ST_META_SET, NULL, NULL, A_TEXT(m->key), A_TEXT(m->val));
}

static pb_err pg_meta_set(void *impl, const char *key, const char *val)
{
    struct meta_set_ctx m = {key, val};
    return stmt_run(impl, meta_set_job, &m);
}

/* ---- peers ------------------------------------------------------------------------------ */

struct peer_ctx {
    const char *server_id;
    int64_t at; /* contact_at or fetched_at */
    const uint8_t *key;
    uint64_t epoch; /* send_epoch of a row created now */
};

static pb_err peer_touch_job(pgc *c, void *ctx)
{
    struct peer_ctx *p = ctx;
    return RUN(c, ST_PEER_TOUCH, NULL, NULL, A_TEXT(p->server_id), A_INT(time(NULL)), A_INT(p->at),
               A_INT(p->epoch));
}

static pb_err pg_peer_touch(void *impl, const char *server_id, int64_t contact_at)
{
    struct peer_ctx p = {server_id, contact_at, NULL, pb_store_epoch_random(0)};
    return stmt_run(impl, peer_touch_job, &p);
}

static pb_err peer_key_set_job(pgc *c, void *ctx)
{
    struct peer_ctx *p = ctx;
    return RUN(c, ST_PEER_KEY_SET, NULL, NULL, A_TEXT(p->server_id), A_INT(time(NULL)),
               A_BLOB(p->key, PB_PUBKEY_LEN), A_INT(p->at), A_INT(p->epoch));
}

static pb_err pg_peer_key_set(void *impl, const char *server_id, const uint8_t key[PB_PUBKEY_LEN],
                              int64_t fetched_at)
{
    struct peer_ctx p = {server_id, fetched_at, key, pb_store_epoch_random(0)};
    return stmt_run(impl, peer_key_set_job, &p);
}

static pb_err pg_peer_key_get(void *impl, const char *server_id, uint8_t key[PB_PUBKEY_LEN])
{
    PGresult *r = NULL;
    pb_err err = READ(impl, ST_PEER_KEY_GET, &r, A_TEXT(server_id));
    if (err != PB_OK) return err;
    if (PQntuples(r) == 0 || PQgetisnull(r, 0, 0)) {
        err = PB_ERR_NOT_FOUND;
    } else if (PQgetlength(r, 0, 0) != PB_PUBKEY_LEN) {
        PB_ERROR(server_id, "store: stored key has %d bytes", PQgetlength(r, 0, 0));
        err = PB_ERR_CORRUPT;
    } else {
        memcpy(key, PQgetvalue(r, 0, 0), PB_PUBKEY_LEN);
    }
    PQclear(r);
    return err;
}

/* ---- list readers ----------------------------------------------------------------------- */

/* A row callback's answer that ends the read before the current row (never an error). */
#define ROW_STOP PB_ERR__COUNT

/* How a list reader turns its statement's result rows into an array. */
typedef struct rows_spec {
    enum stmt_id id;
    size_t size; /* of one element */
    /* Fills the zeroed element from row i: PB_OK, PB_ERR_CORRUPT for a bad row (the
     * element still counts, for free_arr), or ROW_STOP. */
    pb_err (*row)(const PGresult *r, int i, void *elem, void *ctx);
    void (*free_arr)(void *arr, size_t n); /* frees n elements and the array */
} rows_spec;

/* Runs s->id with parameters a[0..na) as a read and collects its rows. On PB_OK *out (NULL
 * when empty) is the caller's, to free as s->free_arr does. */
static pb_err read_rows(pgs *b, const rows_spec *s, const arg *a, int na, void *ctx, void **out,
                        size_t *count)
{
    PGresult *r = NULL;
    pb_err err = read_query(b, s->id, a, na, &r);
    if (err != PB_OK) return err;
    size_t rows = (size_t)PQntuples(r), n = 0;
    unsigned char *arr = rows ? pb_xcalloc(rows, s->size) : NULL;
    for (; n < rows; n++) {
        err = s->row(r, (int)n, arr + n * s->size, ctx);
        if (err == ROW_STOP) {
            err = PB_OK;
            break;
        }
        if (err != PB_OK) {
            n++;
            break;
        }
    }
    PQclear(r);
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

static pb_err peer_info_row(const PGresult *r, int i, void *elem, void *ctx)
{
    (void)ctx;
    pb_peer_info *p = elem;
    bool bad = false;
    p->server_id = col_str(r, i, 0);
    p->first_seen = col_i64(r, i, 1, &bad);
    p->last_contact = col_i64(r, i, 2, &bad);
    if (!PQgetisnull(r, i, 3)) {
        if (PQgetlength(r, i, 3) != PB_PUBKEY_LEN) {
            PB_ERROR(p->server_id, "store: stored key has %d bytes", PQgetlength(r, i, 3));
            bad = true;
        } else {
            memcpy(p->key, PQgetvalue(r, i, 3), PB_PUBKEY_LEN);
            p->has_key = true;
            p->key_fetched_at = col_i64(r, i, 4, &bad);
        }
    }
    return p->server_id && !bad ? PB_OK : PB_ERR_CORRUPT;
}

static void peer_infos_free(void *arr, size_t n)
{
    pb_peer_info_free_array(arr, n);
}

static const rows_spec peer_rows = {ST_PEER_LIST, sizeof(pb_peer_info), peer_info_row,
                                    peer_infos_free};

static pb_err pg_peer_list(void *impl, pb_peer_info **peers, size_t *count)
{
    void *arr = NULL;
    pb_err err = read_rows(impl, &peer_rows, NULL, 0, NULL, &arr, count);
    if (err == PB_OK) *peers = arr;
    return err;
}

/* ---- per-peer delivery state ------------------------------------------------------------ */

/* Fills *elem (a pb_peer_state) from row i of a PEER_STATE_SELECT result; ctx is unused. */
static pb_err peer_state_row(const PGresult *r, int i, void *elem, void *ctx)
{
    (void)ctx;
    pb_peer_state *p = elem;
    bool bad = false;
    memset(p, 0, sizeof *p);
    p->server_id = col_str(r, i, 0);
    int64_t mode = col_i64(r, i, 1, &bad);
    if (!p->server_id || mode < PB_MODE_PUSH || mode > PB_MODE_PARKED) {
        PB_ERROR(p->server_id, "store: bad peer row (mode %lld)", (long long)mode);
        return PB_ERR_CORRUPT;
    }
    p->mode = (pb_peer_mode)mode;
    p->attempts = (uint32_t)col_i64(r, i, 2, &bad);
    p->next_attempt_at = col_i64(r, i, 3, &bad);
    p->last_error = col_str(r, i, 4);
    p->parked_seq = (uint64_t)col_i64(r, i, 5, &bad);
    p->next_seq = (uint64_t)col_i64(r, i, 6, &bad);
    p->recv_seq = (uint64_t)col_i64(r, i, 7, &bad);
    p->last_contact = col_i64(r, i, 8, &bad);
    p->queued = (uint64_t)col_i64(r, i, 9, &bad);
    p->oldest_queued_at = col_i64(r, i, 10, &bad);     /* NULL (empty queue) reads as 0 */
    p->recv_epoch = (uint64_t)col_i64(r, i, 11, &bad); /* NULL (no epoch row) reads as 0 */
    p->send_epoch = (uint64_t)col_i64(r, i, 12, &bad);
    return bad ? PB_ERR_CORRUPT : PB_OK;
}

static pb_err pg_peer_state_get(void *impl, const char *server_id, pb_peer_state *out)
{
    PGresult *r = NULL;
    pb_peer_state p = {0};
    pb_err err = READ(impl, ST_PEER_STATE_GET, &r, A_TEXT(server_id));
    if (err != PB_OK) return err;
    err = PQntuples(r) == 0 ? PB_ERR_NOT_FOUND : peer_state_row(r, 0, &p, NULL);
    PQclear(r);
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

static const rows_spec peer_state_rows = {ST_PEER_STATE_LIST, sizeof(pb_peer_state), peer_state_row,
                                          peer_states_free};

static pb_err pg_peer_state_list(void *impl, pb_peer_state **out, size_t *count)
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

static pb_err peer_state_set_job(pgc *c, void *ctx)
{
    struct peer_state_ctx *p = ctx;
    return RUN(c, ST_PEER_STATE_SET, NULL, NULL, A_TEXT(p->server_id), A_INT(time(NULL)),
               A_INT(p->mode), A_INT(p->attempts), A_INT(p->next_attempt_at), A_TEXT(p->last_error),
               A_INT(p->parked_seq), A_INT(p->epoch));
}

static pb_err pg_peer_state_set(void *impl, const char *server_id, pb_peer_mode mode,
                                uint32_t attempts, int64_t next_attempt_at, const char *last_error,
                                uint64_t parked_seq)
{
    uint64_t epoch = pb_store_epoch_random(0);
    struct peer_state_ctx p = {server_id,  mode,       attempts, next_attempt_at,
                               last_error, parked_seq, epoch};
    return stmt_run(impl, peer_state_set_job, &p);
}

struct new_epoch_ctx {
    const char *peer;
    uint64_t e1, e2; /* two different random non-zero epochs (ST_PEER_NEW_EPOCH) */
    uint64_t epoch;  /* out */
};

static pb_err peer_new_epoch_job(pgc *c, void *ctx)
{
    struct new_epoch_ctx *e = ctx;
    PGresult *r = NULL;
    pb_err err = RUN(c, ST_PEER_NEW_EPOCH, &r, NULL, A_TEXT(e->peer), A_INT(time(NULL)),
                     A_INT(e->e1), A_INT(e->e2));
    if (err != PB_OK) return err;
    bool bad = PQntuples(r) != 1;
    uint64_t epoch = bad ? 0 : (uint64_t)col_i64(r, 0, 0, &bad);
    PQclear(r);
    if (bad || epoch == 0) return PB_ERR_INTERNAL; /* committed, but not as asked */
    e->epoch = epoch;
    return PB_OK;
}

static pb_err pg_peer_new_epoch(void *impl, const char *peer, uint64_t *epoch)
{
    struct new_epoch_ctx e = {peer, pb_store_epoch_random(0), 0, 0};
    e.e2 = pb_store_epoch_random(e.e1);
    pb_err err = stmt_run(impl, peer_new_epoch_job, &e);
    if (err == PB_OK) *epoch = e.epoch;
    return err;
}

/* ---- outbox ----------------------------------------------------------------------------- */

struct outbox_append_ctx {
    const char *peer;
    const pb_buf *events; /* bytea[] */
    size_t n;
    int64_t now;
    const char *submission_id; /* NULL: none */
    uint64_t epoch;            /* send_epoch of a peer row created now */
    uint64_t last_seq;         /* out */
    bool duplicate;            /* out */
};

/* O(n): the peer row keeps next_seq; its row lock orders appends from every node. */
static pb_err outbox_append_job(pgc *c, void *ctx)
{
    struct outbox_append_ctx *a = ctx;
    PGresult *r = NULL;
    pb_err err = RUN(c, ST_OUTBOX_APPEND, &r, NULL, A_TEXT(a->peer), A_INT(a->now / 1000),
                     A_INT((int64_t)a->n), A_ARRAY(a->events), A_INT(a->now), A_INT(a->epoch));
    if (err != PB_OK) return err;
    bool bad = PQntuples(r) != 1 || PQgetisnull(r, 0, 0);
    int64_t last = bad ? 0 : col_i64(r, 0, 0, &bad);
    PQclear(r);
    if (bad || last < (int64_t)a->n) return PB_ERR_INTERNAL; /* committed, but not as asked */
    a->last_seq = (uint64_t)last;
    return PB_OK;
}

/* The submission ID is recorded by another transaction (committed): PB_OK with
 * a->duplicate and a->last_seq set when it is this very submission again, PB_ERR_EXISTS
 * when it was used for another peer or number of events. */
static pb_err submission_check(pgc *c, struct outbox_append_ctx *a)
{
    PGresult *r = NULL;
    pb_err err = RUN(c, ST_SUBMISSION_GET, &r, NULL, A_TEXT(a->submission_id));
    if (err != PB_OK) return err;
    if (PQntuples(r) != 1) { /* pruned between the claim and here: the caller may retry */
        PQclear(r);
        PB_WARN(NULL, "store: submission record vanished while checked; retry");
        return PB_ERR_STORE;
    }
    bool bad = PQgetisnull(r, 0, 0);
    int64_t first = col_i64(r, 0, 1, &bad), count = col_i64(r, 0, 2, &bad);
    if (bad || first < 1 || count < 1 || first > INT64_MAX - count) {
        err = PB_ERR_CORRUPT;
        PB_ERROR(NULL, "store: bad submissions row");
    } else if (strcmp(PQgetvalue(r, 0, 0), a->peer) != 0 || (uint64_t)count != a->n) {
        err = PB_ERR_EXISTS;
    } else {
        a->duplicate = true;
        a->last_seq = (uint64_t)(first + count - 1);
    }
    PQclear(r);
    return err;
}

/* With a submission ID: claim it (waiting for a concurrent claimer to finish), then either
 * answer from the existing record or append, record the first seq and prune, all in one
 * transaction. Lock order: the submission ID, then the peer row. */
static pb_err outbox_submit_job(pgc *c, void *ctx)
{
    struct outbox_append_ctx *a = ctx;
    PGresult *r = NULL;
    a->duplicate = false;
    pb_err err = RUN(c, ST_SUBMISSION_CLAIM, &r, NULL, A_TEXT(a->submission_id), A_TEXT(a->peer),
                     A_INT((int64_t)a->n), A_INT(a->now));
    if (err != PB_OK) return err;
    bool claimed = PQntuples(r) == 1;
    PQclear(r);
    if (!claimed) return submission_check(c, a);
    err = RUN(c, ST_OUTBOX_SUBMIT, &r, NULL, A_TEXT(a->peer), A_INT(a->now / 1000),
              A_INT((int64_t)a->n), A_ARRAY(a->events), A_INT(a->now), A_TEXT(a->submission_id),
              A_INT(pb_store_submission_cutoff(a->now)), A_INT(PB_STORE_SUBMISSION_PRUNE_MAX),
              A_INT(a->epoch));
    if (err != PB_OK) return err;
    bool bad = PQntuples(r) != 1 || PQgetisnull(r, 0, 0);
    int64_t last = bad ? 0 : col_i64(r, 0, 0, &bad);
    int64_t recorded = bad ? 0 : col_i64(r, 0, 1, &bad);
    PQclear(r);
    if (bad || last < (int64_t)a->n || recorded != 1) return PB_ERR_INTERNAL; /* rolled back */
    a->last_seq = (uint64_t)last;
    return PB_OK;
}

static pb_err pg_outbox_append(void *impl, const char *peer, const pb_event *evs, size_t n,
                               int64_t now, const char *submission_id, uint64_t *last_seq,
                               bool *duplicate)
{
    encoded enc;
    pb_err err = encode_events(evs, n, &enc);
    if (err == PB_OK) {
        pb_buf arr;
        bytea_array(&enc, NULL, n, &arr);
        uint64_t epoch = pb_store_epoch_random(0);
        struct outbox_append_ctx a = {peer, &arr, n, now, submission_id, epoch, 0, false};
        if (submission_id)
            err = tx_run(impl, outbox_submit_job, &a);
        else
            err = stmt_run(impl, outbox_append_job, &a);
        if (err == PB_OK) {
            *last_seq = a.last_seq;
            *duplicate = a.duplicate;
        }
        pb_buf_free(&arr);
    }
    encoded_free(&enc);
    return err;
}

struct outbox_rows {
    size_t max_bytes, bytes;
};

static pb_err outbox_row(const PGresult *r, int i, void *elem, void *ctx)
{
    struct outbox_rows *o = ctx;
    pb_outbox_item *it = elem;
    bool bad = false;
    size_t size = (size_t)PQgetlength(r, i, 2);
    /* the first item always; later ones while the total stays within max_bytes */
    if (i > 0 && (o->bytes > o->max_bytes || size > o->max_bytes - o->bytes)) return ROW_STOP;
    pb_err err = col_event(r, i, 2, "outbox", &it->ev);
    if (err != PB_OK) return err;
    it->seq = (uint64_t)col_i64(r, i, 0, &bad);
    it->created_at = col_i64(r, i, 1, &bad);
    it->size = size;
    o->bytes += size;
    return bad ? PB_ERR_CORRUPT : PB_OK;
}

static void outbox_items_free(void *arr, size_t n)
{
    pb_outbox_items_free(arr, n);
}

static const rows_spec outbox_rows_spec = {ST_OUTBOX_READ, sizeof(pb_outbox_item), outbox_row,
                                           outbox_items_free};

static pb_err pg_outbox_read(void *impl, const char *peer, uint64_t from_seq, size_t max_items,
                             size_t max_bytes, pb_outbox_item **items, size_t *count)
{
    if (from_seq > (uint64_t)INT64_MAX) { /* no stored seq is that large */
        *items = NULL;
        *count = 0;
        return PB_OK;
    }
    struct outbox_rows o = {max_bytes, 0};
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

static pb_err outbox_ack_job(pgc *c, void *ctx)
{
    struct outbox_del_ctx *d = ctx;
    return RUN(c, ST_OUTBOX_ACK, NULL, NULL, A_TEXT(d->peer), A_INT(clamp64(d->seq)));
}

static pb_err pg_outbox_ack(void *impl, const char *peer, uint64_t upto)
{
    struct outbox_del_ctx d = {peer, upto};
    return stmt_run(impl, outbox_ack_job, &d);
}

static pb_err outbox_remove_job(pgc *c, void *ctx)
{
    struct outbox_del_ctx *d = ctx;
    int changes = 0;
    if (d->seq > (uint64_t)INT64_MAX) return PB_ERR_NOT_FOUND;
    pb_err err = RUN(c, ST_OUTBOX_REMOVE, NULL, &changes, A_TEXT(d->peer), A_INT(d->seq));
    if (err == PB_OK && changes == 0) err = PB_ERR_NOT_FOUND;
    return err;
}

static pb_err pg_outbox_remove(void *impl, const char *peer, uint64_t seq)
{
    struct outbox_del_ctx d = {peer, seq};
    return stmt_run(impl, outbox_remove_job, &d);
}

static pb_err outbox_peer_row(const PGresult *r, int i, void *elem, void *ctx)
{
    (void)ctx;
    char **peer = elem;
    *peer = col_str(r, i, 0);
    return *peer ? PB_OK : PB_ERR_CORRUPT;
}

static void strings_free(void *arr, size_t n)
{
    pb_store_strings_free(arr, n);
}

static const rows_spec outbox_peer_rows = {ST_OUTBOX_PEERS, sizeof(char *), outbox_peer_row,
                                           strings_free};

static pb_err pg_outbox_peers(void *impl, char ***out, size_t *count)
{
    void *arr = NULL;
    pb_err err = read_rows(impl, &outbox_peer_rows, NULL, 0, NULL, &arr, count);
    if (err == PB_OK) *out = arr;
    return err;
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
    uint64_t new_epoch;  /* send_epoch of a peer row created now */
    size_t *applied_idx; /* scratch, n entries */
    pstmt *applies;      /* scratch, n entries */
    pb_recv_result res;  /* out */
};

/* The statement applying one event to the local users' state (PROTOCOL.md section 5;
 * idempotent); false when the event changes no state. */
static bool apply_stmt(const char *from, const pb_event *ev, pstmt *q)
{
    switch (ev->kind) {
    case PB_EV_USER_ADDED_TO_GUILD:
    case PB_EV_USER_REMOVED_FROM_GUILD:
        *q = (pstmt){ev->kind == PB_EV_USER_ADDED_TO_GUILD ? ST_GUILD_ADD : ST_GUILD_REMOVE,
                     {A_INT(ev->user_id), A_TEXT(from), A_INT(ev->guild_id)},
                     3};
        return true;
    case PB_EV_USER_INVITED:
        *q = (pstmt){
            ST_INVITE_ADD,
            {A_INT(ev->user_id), A_TEXT(from), A_TEXT(ev->invite_id), A_INT(ev->inviter_id)},
            4};
        return true;
    case PB_EV_USER_REJECTED_INVITE: /* the homeserver learns it from the inbox */
    case PB_EV_NONE:                 /* encode_events refused it already */
        break;
    }
    return false;
}

/* Reserves n inbox seqs (locking the counter row until commit); *first gets the first. */
static pb_err inbox_reserve(pgc *c, size_t n, int64_t *first)
{
    PGresult *r = NULL;
    pb_err err = RUN(c, ST_INBOX_RESERVE, &r, NULL, A_INT((int64_t)n));
    if (err != PB_OK) return err;
    bool bad = PQntuples(r) != 1;
    int64_t last = bad ? 0 : col_i64(r, 0, 0, &bad);
    PQclear(r);
    if (bad || last < (int64_t)n) {
        PB_ERROR(NULL, "store: inbox_seq counter row missing or bad");
        return PB_ERR_CORRUPT;
    }
    *first = last - (int64_t)n + 1;
    return PB_OK;
}

/* The recv_seq of (peer, epoch): *known false and *recv_seq 0 when it has no row. */
static pb_err recv_epoch_get(pgc *c, const char *peer, uint64_t epoch, uint64_t *recv_seq,
                             bool *known)
{
    PGresult *r = NULL;
    pb_err err = RUN(c, ST_RECV_EPOCH_GET, &r, NULL, A_TEXT(peer), A_INT(epoch));
    if (err != PB_OK) return err;
    bool bad = false;
    *known = PQntuples(r) == 1;
    *recv_seq = *known ? (uint64_t)col_i64(r, 0, 0, &bad) : 0;
    PQclear(r);
    return bad ? PB_ERR_CORRUPT : PB_OK;
}

static pb_err receive_job(pgc *c, void *ctx)
{
    struct receive_ctx *r = ctx;
    int64_t now_s = r->now / 1000;
    uint64_t recv = 0;
    bool known = false;
    pb_recv_result out = {0, 0, 0, 0};
    /* the upsert locks the sender's row until commit: one receive per sender at a time
     * (every node), so the epoch row read next cannot change before this one commits */
    pb_err err = RUN(c, ST_PEER_TOUCH, NULL, NULL, A_TEXT(r->from), A_INT(now_s), A_INT(now_s),
                     A_INT(r->new_epoch));
    if (err == PB_OK && r->seqs) err = recv_epoch_get(c, r->from, r->epoch, &recv, &known);
    if (err != PB_OK) return err;
    size_t nq = 0;
    for (size_t i = 0; i < r->n; i++) {
        if (r->seqs && r->seqs[i] <= recv) {
            out.duplicates++;
            continue;
        }
        if (apply_stmt(r->from, &r->evs[i], &r->applies[nq])) nq++;
        r->applied_idx[out.applied++] = i;
        if (r->seqs) recv = r->seqs[i];
    }
    err = run_pipeline(c, r->applies, nq);
    if (err != PB_OK) return err;
    if (r->seqs) {
        err = RUN(c, ST_RECV_EPOCH_SET, NULL, NULL, A_TEXT(r->from), A_INT(r->epoch), A_INT(recv),
                  A_INT(r->now));
        if (err == PB_OK && !known)
            err = RUN(c, ST_RECV_EPOCH_PRUNE, NULL, NULL, A_TEXT(r->from), A_INT(r->epoch),
                      A_INT(PB_STORE_RECV_EPOCHS_MAX - 1));
        if (err != PB_OK) return err;
        out.ack = recv;
        out.epoch = r->epoch;
    }
    if (out.applied > 0) { /* last: the counter row stays locked only until commit */
        int64_t first = 0;
        err = inbox_reserve(c, out.applied, &first);
        if (err != PB_OK) return err;
        pb_buf arr;
        bytea_array(r->enc, r->applied_idx, out.applied, &arr);
        err = RUN(c, ST_INBOX_INSERT_EVENTS, NULL, NULL, A_INT(first), A_TEXT(r->from),
                  A_ARRAY(&arr), A_INT(r->now));
        pb_buf_free(&arr);
        if (err != PB_OK) return err;
    }
    r->res = out;
    return PB_OK;
}

static pb_err pg_receive(void *impl, const char *from, uint64_t epoch, const pb_event *evs,
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
        r.applied_idx = pb_xcalloc(n ? n : 1, sizeof *r.applied_idx);
        r.applies = pb_xcalloc(n ? n : 1, sizeof *r.applies);
        err = tx_run(impl, receive_job, &r);
        if (err == PB_OK) *res = r.res;
        free(r.applied_idx);
        free(r.applies);
    }
    encoded_free(&enc);
    return err;
}

static pb_err pg_recv_latest(void *impl, const char *from, uint64_t *epoch, uint64_t *recv_seq)
{
    PGresult *r = NULL;
    pb_err err = READ(impl, ST_RECV_LATEST, &r, A_TEXT(from));
    if (err != PB_OK) return err;
    bool bad = false;
    uint64_t e = 0, q = 0;
    if (PQntuples(r) == 1) {
        e = (uint64_t)col_i64(r, 0, 0, &bad);
        q = (uint64_t)col_i64(r, 0, 1, &bad);
    }
    PQclear(r);
    if (bad) return PB_ERR_CORRUPT;
    *epoch = e;
    *recv_seq = q;
    return PB_OK;
}

/* ---- inbox ------------------------------------------------------------------------------ */

static pb_err inbox_row(const PGresult *r, int i, void *elem, void *ctx)
{
    (void)ctx;
    pb_inbox_item *it = elem;
    pb_err err = PB_OK;
    bool bad = false;
    it->seq = (uint64_t)col_i64(r, i, 0, &bad);
    it->from = col_str(r, i, 1);
    it->received_at = col_i64(r, i, 5, &bad);
    if (PQgetisnull(r, i, 2)) {
        it->is_rename = true;
        it->old_id = col_str(r, i, 3);
        it->new_id = col_str(r, i, 4);
        if (!it->old_id || !it->new_id) err = PB_ERR_CORRUPT;
    } else {
        err = col_event(r, i, 2, "inbox", &it->ev);
    }
    if (!it->from || bad) err = PB_ERR_CORRUPT;
    if (err != PB_OK) PB_ERROR(NULL, "store: bad inbox row %llu", (unsigned long long)it->seq);
    return err;
}

static void inbox_items_free(void *arr, size_t n)
{
    pb_inbox_items_free(arr, n);
}

static const rows_spec inbox_rows = {ST_INBOX_READ, sizeof(pb_inbox_item), inbox_row,
                                     inbox_items_free};

static pb_err pg_inbox_read(void *impl, uint64_t after, size_t limit, pb_inbox_item **items,
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

static pb_err pg_inbox_last_seq(void *impl, uint64_t *seq)
{
    PGresult *r = NULL;
    pb_err err = read_query(impl, ST_INBOX_LAST, NULL, 0, &r);
    if (err != PB_OK) return err;
    bool bad = PQntuples(r) != 1;
    int64_t v = bad ? 0 : col_i64(r, 0, 0, &bad);
    PQclear(r);
    if (bad) return PB_ERR_CORRUPT;
    *seq = (uint64_t)v;
    return PB_OK;
}

/* ---- local users' federated state ------------------------------------------------------- */

static pb_err guild_row(const PGresult *r, int i, void *elem, void *ctx)
{
    (void)ctx;
    pb_guild_entry *e = elem;
    bool bad = false;
    e->guild_id = (uint64_t)col_i64(r, i, 0, &bad);
    e->server_id = col_str(r, i, 1);
    return e->server_id && !bad ? PB_OK : PB_ERR_CORRUPT;
}

static void guilds_free(void *arr, size_t n)
{
    pb_guild_entries_free(arr, n);
}

static const rows_spec guild_rows = {ST_GUILD_LIST, sizeof(pb_guild_entry), guild_row, guilds_free};

static pb_err pg_guilds(void *impl, uint64_t user_id, pb_guild_entry **out, size_t *count)
{
    void *arr = NULL;
    pb_err err = read_rows(impl, &guild_rows, (const arg[]){A_INT(user_id)}, 1, NULL, &arr, count);
    if (err == PB_OK) *out = arr;
    return err;
}

static pb_err invite_row(const PGresult *r, int i, void *elem, void *ctx)
{
    (void)ctx;
    pb_invite_entry *e = elem;
    bool bad = false;
    e->invite_id = col_str(r, i, 0);
    e->server_id = col_str(r, i, 1);
    e->inviter_id = (uint64_t)col_i64(r, i, 2, &bad);
    return e->invite_id && e->server_id && !bad ? PB_OK : PB_ERR_CORRUPT;
}

static void invites_free(void *arr, size_t n)
{
    pb_invite_entries_free(arr, n);
}

static const rows_spec invite_rows = {ST_INVITE_LIST, sizeof(pb_invite_entry), invite_row,
                                      invites_free};

static pb_err pg_invites(void *impl, uint64_t user_id, pb_invite_entry **out, size_t *count)
{
    void *arr = NULL;
    pb_err err = read_rows(impl, &invite_rows, (const arg[]){A_INT(user_id)}, 1, NULL, &arr, count);
    if (err == PB_OK) *out = arr;
    return err;
}

/* ---- renames ---------------------------------------------------------------------------- */

/* PB_OK when server_id has a peers row (now locked until commit), PB_ERR_NOT_FOUND when
 * not. */
static pb_err peer_lock(pgc *c, const char *server_id)
{
    PGresult *r = NULL;
    pb_err err = RUN(c, ST_PEER_LOCK, &r, NULL, A_TEXT(server_id));
    if (err != PB_OK) return err;
    if (PQntuples(r) == 0) err = PB_ERR_NOT_FOUND;
    PQclear(r);
    return err;
}

struct rename_ctx {
    const char *old_id, *new_id;
    const uint8_t *key;
    int64_t now;
};

static pb_err peer_rename_job(pgc *c, void *ctx)
{
    struct rename_ctx *r = ctx;
    pb_err err = peer_lock(c, r->old_id);
    if (err != PB_OK) return err;
    err = peer_lock(c, r->new_id);
    if (err == PB_OK) return PB_ERR_EXISTS;
    if (err != PB_ERR_NOT_FOUND) return err;
    /* a NEW row created meanwhile by another node makes this a unique violation: EXISTS */
    err = RUN(c, ST_RENAME_PEER, NULL, NULL, A_TEXT(r->old_id), A_TEXT(r->new_id),
              A_BLOB(r->key, PB_PUBKEY_LEN), A_INT(r->now / 1000));
    static const enum stmt_id steps[] = {
        ST_RENAME_OUTBOX,       ST_RENAME_GUILDS_DROP, ST_RENAME_GUILDS,
        ST_RENAME_INVITES_DROP, ST_RENAME_INVITES,     ST_RENAME_RENAMES_OUT,
        ST_RENAME_LEASES_DROP,  ST_RENAME_LEASES,      ST_RENAME_RECV_EPOCHS_DROP,
        ST_RENAME_RECV_EPOCHS,
    };
    for (size_t k = 0; k < sizeof steps / sizeof steps[0] && err == PB_OK; k++)
        err = RUN(c, steps[k], NULL, NULL, A_TEXT(r->old_id), A_TEXT(r->new_id));
    if (err == PB_OK) err = RUN(c, ST_RENAME_IN_REMOVE, NULL, NULL, A_TEXT(r->old_id));
    int64_t seq = 0;
    if (err == PB_OK) err = inbox_reserve(c, 1, &seq);
    if (err == PB_OK)
        err = RUN(c, ST_INBOX_INSERT_RENAME, NULL, NULL, A_INT(seq), A_TEXT(r->new_id),
                  A_TEXT(r->old_id), A_TEXT(r->new_id), A_INT(r->now));
    return err;
}

static pb_err pg_peer_rename(void *impl, const char *old_id, const char *new_id,
                             const uint8_t new_key[PB_PUBKEY_LEN], int64_t now)
{
    struct rename_ctx r = {old_id, new_id, new_key, now};
    return tx_run(impl, peer_rename_job, &r);
}

static pb_err self_rename_job(pgc *c, void *ctx)
{
    struct rename_ctx *r = ctx;
    pb_err err = RUN(c, ST_META_SET, NULL, NULL, A_TEXT("server_id"), A_TEXT(r->new_id));
    if (err == PB_OK)
        err = RUN(c, ST_SELF_RENAME_UPSERT, NULL, NULL, A_TEXT(r->old_id), A_TEXT(r->new_id),
                  A_INT(r->now));
    /* renamed back to the ID a peer still knows: nothing to tell it */
    if (err == PB_OK) err = run(c, ST_SELF_RENAME_DROP, NULL, 0, NULL, NULL);
    return err;
}

static pb_err pg_self_rename(void *impl, const char *old_id, const char *new_id, int64_t now)
{
    struct rename_ctx r = {old_id, new_id, NULL, now};
    return tx_run(impl, self_rename_job, &r);
}

static pb_err rename_out_row(const PGresult *r, int i, void *elem, void *ctx)
{
    (void)ctx;
    pb_rename_out *o = elem;
    bool bad = false;
    o->peer = col_str(r, i, 0);
    o->old_id = col_str(r, i, 1);
    o->new_id = col_str(r, i, 2);
    o->attempts = (uint32_t)col_i64(r, i, 3, &bad);
    o->next_attempt_at = col_i64(r, i, 4, &bad);
    o->last_error = col_str(r, i, 5);
    return o->peer && o->old_id && o->new_id && !bad ? PB_OK : PB_ERR_CORRUPT;
}

static void rename_outs_free(void *arr, size_t n)
{
    pb_rename_outs_free(arr, n);
}

static const rows_spec rename_out_rows = {ST_RENAME_OUT_LIST, sizeof(pb_rename_out), rename_out_row,
                                          rename_outs_free};

static pb_err pg_rename_out_list(void *impl, pb_rename_out **out, size_t *count)
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

static pb_err rename_out_done_job(pgc *c, void *ctx)
{
    struct rename_out_ctx *r = ctx;
    return RUN(c, ST_RENAME_OUT_DONE, NULL, NULL, A_TEXT(r->peer), A_TEXT(r->new_id));
}

static pb_err pg_rename_out_done(void *impl, const char *peer, const char *new_id)
{
    struct rename_out_ctx r = {.peer = peer, .new_id = new_id};
    return stmt_run(impl, rename_out_done_job, &r);
}

static pb_err rename_out_failed_job(pgc *c, void *ctx)
{
    struct rename_out_ctx *r = ctx;
    int changes = 0;
    pb_err err = RUN(c, ST_RENAME_OUT_FAILED, NULL, &changes, A_TEXT(r->peer), A_INT(r->attempts),
                     A_INT(r->next_attempt_at), A_TEXT(r->error));
    if (err == PB_OK && changes == 0) err = PB_ERR_NOT_FOUND;
    return err;
}

static pb_err pg_rename_out_failed(void *impl, const char *peer, uint32_t attempts,
                                   int64_t next_attempt_at, const char *error)
{
    struct rename_out_ctx r = {
        .peer = peer, .error = error, .attempts = attempts, .next_attempt_at = next_attempt_at};
    return stmt_run(impl, rename_out_failed_job, &r);
}

/* ---- pending incoming renames ----------------------------------------------------------- */

struct rename_in_ctx {
    const char *old_id, *new_id;
    int64_t at;     /* created_at, or the expiry cutoff */
    size_t removed; /* out (expire) */
};

static pb_err rename_in_add_job(pgc *c, void *ctx)
{
    struct rename_in_ctx *r = ctx;
    return RUN(c, ST_RENAME_IN_ADD, NULL, NULL, A_TEXT(r->old_id), A_TEXT(r->new_id), A_INT(r->at));
}

static pb_err pg_rename_in_add(void *impl, const char *old_id, const char *new_id, int64_t now)
{
    struct rename_in_ctx r = {old_id, new_id, now, 0};
    return stmt_run(impl, rename_in_add_job, &r);
}

static pb_err pg_rename_in_find(void *impl, const char *new_id, char **old_id, int64_t *created_at)
{
    PGresult *r = NULL;
    pb_err err = READ(impl, ST_RENAME_IN_FIND, &r, A_TEXT(new_id));
    if (err != PB_OK) return err;
    if (PQntuples(r) == 0) {
        err = PB_ERR_NOT_FOUND;
    } else {
        bool bad = false;
        int64_t at = col_i64(r, 0, 1, &bad);
        char *old = bad ? NULL : col_str(r, 0, 0);
        if (old) {
            *old_id = old;
            *created_at = at;
        } else {
            err = PB_ERR_CORRUPT;
        }
    }
    PQclear(r);
    return err;
}

static pb_err rename_in_remove_job(pgc *c, void *ctx)
{
    struct rename_in_ctx *r = ctx;
    return RUN(c, ST_RENAME_IN_REMOVE, NULL, NULL, A_TEXT(r->old_id));
}

static pb_err pg_rename_in_remove(void *impl, const char *old_id)
{
    struct rename_in_ctx r = {old_id, NULL, 0, 0};
    return stmt_run(impl, rename_in_remove_job, &r);
}

static pb_err rename_in_row(const PGresult *r, int i, void *elem, void *ctx)
{
    (void)ctx;
    pb_rename_in *o = elem;
    bool bad = false;
    o->old_id = col_str(r, i, 0);
    o->new_id = col_str(r, i, 1);
    o->created_at = col_i64(r, i, 2, &bad);
    return o->old_id && o->new_id && !bad ? PB_OK : PB_ERR_CORRUPT;
}

static void rename_ins_free(void *arr, size_t n)
{
    pb_rename_ins_free(arr, n);
}

static const rows_spec rename_in_rows = {ST_RENAME_IN_LIST, sizeof(pb_rename_in), rename_in_row,
                                         rename_ins_free};

static pb_err pg_rename_in_list(void *impl, pb_rename_in **out, size_t *count)
{
    void *arr = NULL;
    pb_err err = read_rows(impl, &rename_in_rows, NULL, 0, NULL, &arr, count);
    if (err == PB_OK) *out = arr;
    return err;
}

static pb_err rename_in_expire_job(pgc *c, void *ctx)
{
    struct rename_in_ctx *r = ctx;
    int changes = 0;
    pb_err err = RUN(c, ST_RENAME_IN_EXPIRE, NULL, &changes, A_INT(r->at));
    if (err == PB_OK) r->removed = (size_t)changes;
    return err;
}

static pb_err pg_rename_in_expire(void *impl, int64_t before, size_t *removed)
{
    struct rename_in_ctx r = {NULL, NULL, before, 0};
    pb_err err = stmt_run(impl, rename_in_expire_job, &r);
    if (err == PB_OK) *removed = r.removed;
    return err;
}

/* ---- outbound ownership ----------------------------------------------------------------- */

struct lease_ctx {
    const char *peer, *node_id;
    int64_t now_ms, ttl_ms;
    bool held; /* out */
};

static pb_err lease_acquire_job(pgc *c, void *ctx)
{
    struct lease_ctx *l = ctx;
    int changes = 0;
    pb_err err = RUN(c, ST_LEASE_ACQUIRE, NULL, &changes, A_TEXT(l->peer), A_TEXT(l->node_id),
                     A_INT(l->now_ms), A_INT(l->ttl_ms));
    if (err == PB_OK) l->held = changes > 0;
    return err;
}

static pb_err pg_lease_acquire(void *impl, const char *peer, const char *node_id, int64_t now_ms,
                               int64_t ttl_ms, bool *held)
{
    struct lease_ctx l = {peer, node_id, now_ms, ttl_ms, false};
    pb_err err = stmt_run(impl, lease_acquire_job, &l);
    if (err == PB_OK) *held = l.held;
    return err;
}

static pb_err lease_release_job(pgc *c, void *ctx)
{
    struct lease_ctx *l = ctx;
    return RUN(c, ST_LEASE_RELEASE, NULL, NULL, A_TEXT(l->peer), A_TEXT(l->node_id));
}

static pb_err pg_lease_release(void *impl, const char *peer, const char *node_id)
{
    struct lease_ctx l = {peer, node_id, 0, 0, false};
    return stmt_run(impl, lease_release_job, &l);
}

/* ---- monitoring ------------------------------------------------------------------------- */

_Static_assert(PB_QSHAPE_BUCKETS == 7, "ST_QSHAPE counts seven buckets");

static pb_err qshape_row(const PGresult *r, int i, void *elem, void *ctx)
{
    (void)ctx;
    pb_qshape_row *q = elem;
    bool bad = false;
    q->peer = col_str(r, i, 0);
    q->total = (uint64_t)col_i64(r, i, 1, &bad);
    q->oldest_at = col_i64(r, i, 2, &bad);
    for (int k = 0; k < PB_QSHAPE_BUCKETS; k++)
        q->counts[k] = (uint64_t)col_i64(r, i, 3 + k, &bad);
    return q->peer && !bad ? PB_OK : PB_ERR_CORRUPT;
}

static void qshape_rows_free(void *arr, size_t n)
{
    pb_qshape_rows_free(arr, n);
}

static const rows_spec qshape_rows = {ST_QSHAPE, sizeof(pb_qshape_row), qshape_row,
                                      qshape_rows_free};

static const rows_spec summary_rows = {ST_QUEUE_SUMMARY, sizeof(pb_qshape_row), qshape_row,
                                       qshape_rows_free};

static pb_err pg_qshape(void *impl, int64_t now_ms, bool buckets, pb_qshape_row **rows, size_t *n)
{
    void *arr = NULL;
    pb_err err = buckets
                     ? read_rows(impl, &qshape_rows, (const arg[]){A_INT(now_ms)}, 1, NULL, &arr, n)
                     : read_rows(impl, &summary_rows, NULL, 0, NULL, &arr, n);
    if (err == PB_OK) *rows = arr;
    return err;
}

static pb_err pg_peer_mode_counts(void *impl, uint64_t counts[3])
{
    PGresult *r = NULL;
    pb_err err = read_query(impl, ST_PEER_MODE_COUNTS, NULL, 0, &r);
    if (err != PB_OK) return err;
    uint64_t c[3] = {0, 0, 0};
    bool bad = false;
    for (int i = 0; i < PQntuples(r) && !bad; i++) {
        int64_t mode = col_i64(r, i, 0, &bad);
        if (mode < PB_MODE_PUSH || mode > PB_MODE_PARKED) {
            PB_ERROR(NULL, "store: bad peer mode %lld", (long long)mode);
            bad = true;
            break;
        }
        c[mode] = (uint64_t)col_i64(r, i, 1, &bad);
    }
    PQclear(r);
    if (bad) return PB_ERR_CORRUPT;
    memcpy(counts, c, sizeof c);
    return PB_OK;
}

static pb_err pg_inbox_unread(void *impl, uint64_t after, uint64_t *count, int64_t *oldest_at)
{
    PGresult *r = NULL;
    pb_err err = read_query(impl, ST_INBOX_UNREAD, (const arg[]){A_INT(clamp64(after))}, 1, &r);
    if (err != PB_OK) return err;
    bool bad = PQntuples(r) != 1;
    int64_t n = bad ? 0 : col_i64(r, 0, 0, &bad);
    int64_t at = bad ? 0 : col_i64(r, 0, 1, &bad); /* NULL (none) reads as 0 */
    PQclear(r);
    if (bad) return PB_ERR_CORRUPT;
    *count = (uint64_t)n;
    *oldest_at = at;
    return PB_OK;
}

/* ---- test-only fault points ------------------------------------------------------------- */

#ifdef PB_FAULTS
static void pg_fault_set(void *impl, pb_err err)
{
    pgs *b = impl;
    pthread_mutex_lock(&b->mu);
    b->fault = err;
    pthread_mutex_unlock(&b->mu);
}

static void pg_fault_hold(void *impl, bool hold)
{
    pgs *b = impl;
    pthread_mutex_lock(&b->mu);
    b->hold = hold;
    pthread_cond_broadcast(&b->gate);
    pthread_mutex_unlock(&b->mu);
}

static size_t pg_fault_queued(void *impl)
{
    pgs *b = impl;
    pthread_mutex_lock(&b->mu);
    size_t n = b->queued;
    pthread_mutex_unlock(&b->mu);
    return n;
}

/* Writes the key, then breaks the NOT NULL constraint in the same transaction. */
static pb_err bad_write_job(pgc *c, void *ctx)
{
    struct meta_set_ctx m = {ctx, "partial"};
    pb_err err = meta_set_job(c, &m);
    if (err != PB_OK) return err;
    const char *vals[1] = {ctx};
    PGresult *r =
        PQexecParams(c->pg, "INSERT INTO meta(key, value) VALUES ($1::text || '.x', NULL)", 1, NULL,
                     vals, NULL, NULL, 0);
    err = PQresultStatus(r) == PGRES_COMMAND_OK ? PB_ERR_INTERNAL : fail(c, r, "bad write");
    PQclear(r);
    return err;
}

static pb_err pg_fault_bad_write(void *impl, const char *key)
{
    return tx_run(impl, bad_write_job, (void *)key);
}
#endif

const pb_store_ops pb_store_pg_ops = {
    .name = "postgres",
    .open = pg_open,
    .close = pg_close,
    .ping = pg_ping,
    .schema_version = pg_schema_version,
    .integrity_check = pg_integrity_check,
    .stats_get = pg_stats_get,
    .meta_get = pg_meta_get,
    .meta_set = pg_meta_set,
    .peer_touch = pg_peer_touch,
    .peer_key_get = pg_peer_key_get,
    .peer_key_set = pg_peer_key_set,
    .peer_list = pg_peer_list,
    .peer_state_get = pg_peer_state_get,
    .peer_state_list = pg_peer_state_list,
    .peer_state_set = pg_peer_state_set,
    .outbox_append = pg_outbox_append,
    .outbox_read = pg_outbox_read,
    .outbox_ack = pg_outbox_ack,
    .outbox_remove = pg_outbox_remove,
    .receive = pg_receive,
    .inbox_read = pg_inbox_read,
    .inbox_last_seq = pg_inbox_last_seq,
    .guilds = pg_guilds,
    .invites = pg_invites,
    .peer_rename = pg_peer_rename,
    .self_rename = pg_self_rename,
    .rename_out_list = pg_rename_out_list,
    .rename_out_done = pg_rename_out_done,
    .rename_out_failed = pg_rename_out_failed,
    .lease_acquire = pg_lease_acquire,
    .lease_release = pg_lease_release,
    .outbox_peers = pg_outbox_peers,
    .qshape = pg_qshape,
    .peer_mode_counts = pg_peer_mode_counts,
    .inbox_unread = pg_inbox_unread,
    .peer_new_epoch = pg_peer_new_epoch,
    .recv_latest = pg_recv_latest,
    .rename_in_add = pg_rename_in_add,
    .rename_in_find = pg_rename_in_find,
    .rename_in_remove = pg_rename_in_remove,
    .rename_in_list = pg_rename_in_list,
    .rename_in_expire = pg_rename_in_expire,
#ifdef PB_FAULTS
    .fault_set = pg_fault_set,
    .fault_hold = pg_fault_hold,
    .fault_queued = pg_fault_queued,
    .fault_bad_write = pg_fault_bad_write,
#endif
};
