/*
 * store_ops - every store operation (store_impl.h), its SQL, transaction and logic written
 * once over the driver interface (store_driver.h) that store_sqlite.c and store_pg.c
 * implement.
 *
 * Design:
 *  - A store is {driver, engine handle}. A read runs its statement on a pooled connection
 *    (d->read); a write runs its steps in one transaction (d->write: SQLite's writer
 *    groups concurrent writes into one commit, a savepoint each; PostgreSQL commits each
 *    call on the caller's thread, a call of one statement without BEGIN/COMMIT). Values
 *    the writer needs (encoded events, random sender epochs) are made on the caller's
 *    thread before the write is queued. Both drivers keep their connections in a pb_pool
 *    (below) and their fault state in a pb_store_faults.
 *  - The statements: one table, one SQL text per statement where the engines agree; a
 *    pair where they differ (placeholders are $n for both), and NULL for an engine that
 *    has no such step (the logic skips it): SQLite's model log, PostgreSQL's locking
 *    reads, inbox counter and data-modifying WITH statements that save round trips.
 *  - Where an operation's shape differs by engine it says so next to the statements: an
 *    append is one statement on PostgreSQL (a bytea[] of events, the peer row's seqs
 *    reserved under its row lock) and one insert per event on SQLite (its writer is the
 *    only one); a receive applies events to the guild and invite tables on PostgreSQL and
 *    to SQLite's model log (whose merging is store_sqlite.c's), and takes PostgreSQL's
 *    inbox counter last (held to commit, so inbox rows commit in seq order).
 *  - Several PostgreSQL nodes share one database (store.h "outbound ownership"): appends
 *    serialise on the peer row; receive locks the sender's row (its peers upsert) before
 *    it reads the (sender, epoch) row; a submission ID is claimed by INSERT ... ON
 *    CONFLICT DO NOTHING (a concurrent claimer waits for the owner's commit); a rename
 *    locks both peer rows; leases are one upsert. See store_pg.c.
 *  - Schema: store_schema.c; the tables and their reasons: docs/DESIGN.md "Store schema".
 *    uint64 values are stored as their int64 bit pattern, uint64 order is done in SQL;
 *    events as pb_wire_event_encode bytes.
 *
 * Adding an operation: declare it in store.h, add its member to store_impl.h and its
 * dispatch to store.c, then write it here once: its statements in the table (an engine
 * variant only where the SQL must differ) and a function over d->read or d->write.
 *
 * Untrusted input: none directly (callers validate server IDs; events were decoded by the
 * wire module). Stored values read back are checked (a key of the wrong length, an
 * undecodable event, a bad mode or a non-integer is PB_ERR_CORRUPT).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "util/fault.h"
#include "util/health.h"
#include "util/log.h"
#include "util/mem.h"
#include "store/store_driver.h"
#include "wire/wire.h"

/* ---- statements ------------------------------------------------------------------------- */

#define BOTH(s)                                                                                    \
    {                                                                                              \
        s, s                                                                                       \
    }
#define SQ(s)                                                                                      \
    {                                                                                              \
        s, NULL                                                                                    \
    }
#define PG(s)                                                                                      \
    {                                                                                              \
        NULL, s                                                                                    \
    }

/* A sender's epoch rows, most recently updated first (ties: the highest recv_seq, then
 * the highest epoch, both as uint64): the first is the latest (store.h). */
#define RECV_LATEST_ORDER                                                                          \
    " ORDER BY e.updated_at DESC, e.recv_seq < 0 DESC, e.recv_seq DESC, e.epoch < 0 DESC,"         \
    " e.epoch DESC"
#define RECV_LATEST_OF_PEER                                                                        \
    " FROM recv_epochs e WHERE e.peer = p.server_id" RECV_LATEST_ORDER " LIMIT 1)"
/* The peer's delivery state with its queue statistics, each bounded to its (peer, seq)
 * primary key range, and its latest receive epoch (bounded to the peer's epoch rows). */
#define PEER_STATE_SELECT                                                                          \
    "SELECT p.server_id, p.mode, p.attempts, p.next_attempt_at, p.last_error, p.parked_seq,"       \
    " p.next_seq, (SELECT e.recv_seq" RECV_LATEST_OF_PEER ", p.last_contact, p.queued,"            \
    " (SELECT o.created_at FROM outbox o WHERE o.peer = p.server_id ORDER BY o.seq LIMIT 1),"      \
    " (SELECT e.epoch" RECV_LATEST_OF_PEER ", p.send_epoch FROM peers p"
/* PostgreSQL's append: creates the peer row or takes its lock and reserves $3 seqs
 * (next_seq += $3), then inserts the events ($4, one bytea[]) with them */
#define PG_APPEND(epoch)                                                                           \
    "WITH s AS (INSERT INTO peers(server_id, first_seen, next_seq, send_epoch, queued)"            \
    " VALUES ($1, $2, 1 + $3, " epoch ", $3) ON CONFLICT(server_id) DO UPDATE SET"                 \
    " next_seq = peers.next_seq + $3, queued = peers.queued + $3 RETURNING next_seq),"             \
    " ins AS (INSERT INTO outbox(peer, seq, event, created_at) SELECT $1, s.next_seq - $3 + t.i"   \
    " - 1, t.ev, $5 FROM s, unnest($4::bytea[]) WITH ORDINALITY AS t(ev, i) RETURNING seq)"
/* the deletions and the peer's counter in one statement (PostgreSQL); the rows updated
 * are 1 or 0 */
#define PG_DEQUEUE(cond)                                                                           \
    "WITH d AS (DELETE FROM outbox WHERE peer = $1 AND seq " cond " $2 RETURNING 1)"               \
    " UPDATE peers SET queued = queued - (SELECT count(*) FROM d)"                                 \
    " WHERE server_id = $1 AND EXISTS (SELECT 1 FROM d)"
/* the _DROP steps make room as an UPDATE OR REPLACE would: OLD's row wins */
#define RENAME_DROP(table, key)                                                                    \
    "DELETE FROM " table " AS n WHERE n." key " = $2 AND EXISTS (SELECT 1 FROM " table " o"        \
    " WHERE o." key " = $1"
#define LOG_INSERT(cols, vals)                                                                     \
    "INSERT INTO model_log(user_id, server_id, " cols ") VALUES ($1, $2, " vals ")"
/* SQLite's multi-row inserts of a receive (RECV_ROWS rows, or RECV_ROWS_SMALL): the first row
 * numbers its parameters, each further row's anonymous ones take the next numbers (SQLite's
 * rule), ?1 (and ?2) are shared by every row */
#define X2(s) s s
#define X4(s) X2(X2(s))
#define X8(s) X2(X4(s))
#define X16(s) X2(X8(s))
#define X32(s) X2(X16(s))
#define X7(s) X4(s) X2(s) s
#define X63(s) X32(s) X16(s) X8(s) X7(s)
#define INBOX_ROWS(more)                                                                           \
    "INSERT INTO inbox(from_id, received_at, event) VALUES (?1, ?2, ?3)" more(", (?1, ?2, ?)")
#define LOG_ROWS(more)                                                                             \
    "INSERT INTO model_log(server_id, user_id, op, guild_id, invite_id, inviter_id, seq)"          \
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)" more(", (?1, ?, ?, ?, ?, ?, ?)")
#define AGE(cond) " count(CASE WHEN " cond " THEN 1 END),"
/* a drop (ST_DROP_PEER) leaves the peer nothing to wait for: its queue is empty, or it was
 * parked on an event now deleted (column values are the row's before the update) */
#define DROP_CLEARS                                                                                \
    "(queued = $2 OR (mode = 2 AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.peer = $1 AND"       \
    " o.seq = peers.parked_seq)))"

static const char *const stmt_sql[ST__COUNT][PB_ENGINE__COUNT] = {
    [ST_BEGIN] = SQ("BEGIN IMMEDIATE"),
    [ST_COMMIT] = SQ("COMMIT"),
    [ST_ROLLBACK] = SQ("ROLLBACK"),
    [ST_SAVEPOINT] = SQ("SAVEPOINT job"),
    [ST_RELEASE] = SQ("RELEASE job"),
    [ST_ROLLBACK_TO] = SQ("ROLLBACK TO job"),
    [ST_PING] = BOTH("SELECT 1"),
    [ST_SCHEMA_VERSION] = BOTH("SELECT version FROM schema_version WHERE id = 1"),
    [ST_INTEGRITY] = SQ("PRAGMA integrity_check"),
    /* what PostgreSQL's schema cannot express (it checks its own pages) */
    [ST_CHECK_OUTBOX] = PG("SELECT count(*) FROM outbox o LEFT JOIN peers p ON p.server_id ="
                           " o.peer WHERE p.server_id IS NULL OR o.seq >= p.next_seq"),
    [ST_CHECK_INBOX] = PG("SELECT CASE WHEN (SELECT last FROM inbox_seq WHERE id = 1)"
                          " >= coalesce((SELECT max(seq) FROM inbox), 0) THEN 0 ELSE 1 END"),
    [ST_CHECK_SUBMISSIONS] = PG("SELECT count(*) FROM submissions WHERE first_seq < 1"),
    [ST_META_GET] = BOTH("SELECT value FROM meta WHERE key = $1"),
    [ST_META_SET] = BOTH("INSERT INTO meta(key, value) VALUES ($1, $2)"
                         " ON CONFLICT(key) DO UPDATE SET value = excluded.value"),
    [ST_BAD_WRITE] = BOTH("INSERT INTO meta(key, value) VALUES ($1 || '.x', NULL)"),
    /* every statement that can create a peer row binds a random send_epoch for it */
    [ST_PEER_TOUCH] = BOTH("INSERT INTO peers(server_id, first_seen, last_contact, send_epoch)"
                           " VALUES ($1, $2, $3, $4) ON CONFLICT(server_id) DO UPDATE SET"
                           " last_contact = CASE WHEN $3 > 0 THEN $3 ELSE peers.last_contact END"),
    [ST_PEER_KEY_GET] = BOTH("SELECT pubkey FROM peers WHERE server_id = $1"),
    [ST_PEER_KEY_SET] =
        BOTH("INSERT INTO peers(server_id, first_seen, pubkey, key_fetched_at, send_epoch)"
             " VALUES ($1, $2, $3, $4, $5) ON CONFLICT(server_id) DO UPDATE SET"
             " pubkey = excluded.pubkey, key_fetched_at = excluded.key_fetched_at"),
    [ST_PEER_LIST] = BOTH("SELECT server_id, first_seen, last_contact, pubkey, key_fetched_at"
                          " FROM peers ORDER BY server_id"),
    [ST_PEER_LOCK] = {"SELECT 1 FROM peers WHERE server_id = $1",
                      "SELECT 1 FROM peers WHERE server_id = $1 FOR UPDATE"},
    /* SQLite's append (its writer is alone; an upsert with RETURNING costs it ~100 us):
     * the row made, its next_seq read, the events inserted, next_seq advanced */
    [ST_PEER_ENSURE] = SQ("INSERT INTO peers(server_id, first_seen, send_epoch)"
                          " VALUES ($1, $2, $3) ON CONFLICT(server_id) DO NOTHING"),
    [ST_PEER_NEXT_SEQ] = SQ("SELECT next_seq FROM peers WHERE server_id = $1"),
    [ST_PEER_ADVANCE] =
        SQ("UPDATE peers SET next_seq = next_seq + $2, queued = queued + $2 WHERE server_id = $1"),
    [ST_PEER_DEQUEUED] = SQ("UPDATE peers SET queued = queued - $2 WHERE server_id = $1"),
    [ST_PEER_STATE_SET] =
        BOTH("INSERT INTO peers(server_id, first_seen, mode, attempts, next_attempt_at,"
             " last_error, parked_seq, send_epoch) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
             " ON CONFLICT(server_id) DO UPDATE SET mode = excluded.mode,"
             " attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at,"
             " last_error = excluded.last_error, parked_seq = excluded.parked_seq"),
    [ST_PEER_STATE_GET] = BOTH(PEER_STATE_SELECT " WHERE p.server_id = $1"),
    [ST_PEER_STATE_LIST] = BOTH(PEER_STATE_SELECT " ORDER BY p.server_id"),
    /* $3 and $4 are two different random non-zero epochs: the row gets one that differs
     * from its current one (under its row lock) */
    [ST_PEER_NEW_EPOCH] =
        BOTH("INSERT INTO peers(server_id, first_seen, send_epoch) VALUES ($1, $2, $3)"
             " ON CONFLICT(server_id) DO UPDATE SET send_epoch ="
             " CASE WHEN peers.send_epoch = $3 THEN $4 ELSE $3 END RETURNING send_epoch"),
    [ST_RECV_EPOCH_GET] = BOTH("SELECT recv_seq FROM recv_epochs WHERE peer = $1 AND epoch = $2"),
    [ST_RECV_EPOCH_SET] = BOTH("INSERT INTO recv_epochs(peer, epoch, recv_seq, updated_at)"
                               " VALUES ($1, $2, $3, $4) ON CONFLICT(peer, epoch) DO UPDATE SET"
                               " recv_seq = excluded.recv_seq, updated_at = excluded.updated_at"),
    /* keeps epoch $2 (just written) and the $3 latest others of the sender */
    [ST_RECV_EPOCH_PRUNE] = BOTH("DELETE FROM recv_epochs WHERE peer = $1 AND epoch <> $2 AND"
                                 " epoch NOT IN (SELECT e.epoch FROM recv_epochs e WHERE e.peer ="
                                 " $1 AND e.epoch <> $2" RECV_LATEST_ORDER " LIMIT $3)"),
    [ST_RECV_LATEST] =
        BOTH("SELECT e.epoch, e.recv_seq FROM recv_epochs e WHERE e.peer = $1" RECV_LATEST_ORDER
             " LIMIT 1"),
    [ST_OUTBOX_APPEND] = PG(PG_APPEND("$6") " SELECT max(seq) FROM ins"),
    /* PG_APPEND, then the claimed record ($6) gets its first seq and at most $8 records
     * older than $7 are deleted (rows another transaction holds are skipped, so appends
     * never wait on each other's pruning); answers the last seq and the records updated */
    [ST_OUTBOX_SUBMIT] = PG(
        PG_APPEND("$9") ", rec AS (UPDATE submissions SET first_seq = s.next_seq - $3 FROM s"
                        " WHERE submissions.id = $6 RETURNING 1), old AS (DELETE FROM"
                        " submissions WHERE id IN (SELECT id FROM submissions WHERE created_at"
                        " < $7 AND id <> $6 ORDER BY created_at LIMIT $8 FOR UPDATE SKIP"
                        " LOCKED)) SELECT (SELECT max(seq) FROM ins), (SELECT count(*) FROM rec)"),
    [ST_OUTBOX_INSERT] =
        SQ("INSERT INTO outbox(peer, seq, event, created_at) VALUES ($1, $2, $3, $4)"),
    [ST_OUTBOX_READ] = BOTH("SELECT seq, created_at, event FROM outbox"
                            " WHERE peer = $1 AND seq >= $2 ORDER BY seq LIMIT $3"),
    [ST_OUTBOX_ACK] = {"DELETE FROM outbox WHERE peer = $1 AND seq <= $2", PG_DEQUEUE("<=")},
    [ST_OUTBOX_REMOVE] = {"DELETE FROM outbox WHERE peer = $1 AND seq = $2", PG_DEQUEUE("=")},
    /* loose index scan: each step seeks the first key of the next peer */
    [ST_OUTBOX_PEERS] = BOTH("WITH RECURSIVE t(peer) AS ("
                             " SELECT (SELECT peer FROM outbox ORDER BY peer LIMIT 1) UNION ALL"
                             " SELECT (SELECT o.peer FROM outbox o WHERE o.peer > t.peer"
                             " ORDER BY o.peer LIMIT 1) FROM t WHERE t.peer IS NOT NULL)"
                             " SELECT peer FROM t WHERE peer IS NOT NULL"),
    /* A row back: this transaction owns the ID. PostgreSQL records it (first_seq 0 until
     * the append sets it): a concurrent claimer (any node) waits until the owner's
     * transaction ends. SQLite's writer is the only one: the ID is free. */
    [ST_SUBMISSION_CLAIM] = {"SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM submissions WHERE id = $1)",
                             "INSERT INTO submissions(id, peer, first_seq, count, created_at)"
                             " VALUES ($1, $2, 0, $3, $4) ON CONFLICT(id) DO NOTHING RETURNING 1"},
    [ST_SUBMISSION_GET] = BOTH("SELECT peer, first_seq, count FROM submissions WHERE id = $1"),
    [ST_SUBMISSION_INSERT] = SQ("INSERT INTO submissions(id, peer, first_seq, count, created_at)"
                                " VALUES ($1, $2, $3, $4, $5)"),
    /* bounded: the oldest $2 expired records, found through submissions_by_age */
    [ST_SUBMISSION_PRUNE] = SQ("DELETE FROM submissions WHERE id IN (SELECT id FROM submissions"
                               " WHERE created_at < $1 ORDER BY created_at LIMIT $2)"),
    /* PostgreSQL's inbox seqs: locks the counter row until commit */
    [ST_INBOX_RESERVE] = PG("UPDATE inbox_seq SET last = last + $1 WHERE id = 1 RETURNING last"),
    [ST_INBOX_INSERT] = SQ("INSERT INTO inbox(from_id, event, received_at) VALUES ($1, $2, $3)"),
    [ST_INBOX_INSERT_EVENTS] = PG("INSERT INTO inbox(seq, from_id, event, received_at)"
                                  " SELECT $1 + t.i - 1, $2, t.ev, $4"
                                  " FROM unnest($3::bytea[]) WITH ORDINALITY AS t(ev, i)"),
    /* seq 0: SQLite's AUTOINCREMENT picks it */
    [ST_INBOX_INSERT_RENAME] = BOTH("INSERT INTO inbox(seq, from_id, event, old_id, new_id,"
                                    " received_at) VALUES (nullif($1, 0), $2, NULL, $3, $4, $5)"),
    [ST_INBOX_READ] =
        BOTH("SELECT seq, from_id, event, old_id, new_id, received_at, notice FROM inbox"
             " WHERE seq > $1 ORDER BY seq LIMIT $2"),
    [ST_INBOX_LAST] = BOTH("SELECT coalesce(max(seq), 0) FROM inbox"),
    /* a received event's change (PROTOCOL.md section 5): SQLite appends it to the model
     * log ($4 or $5: its inbox seq), PostgreSQL applies it (idempotent) */
    [ST_APPLY_ADD] = {LOG_INSERT("guild_id, seq, op", "$3, $4, 1"),
                      "INSERT INTO guilds(user_id, server_id, guild_id) VALUES ($1, $2, $3)"
                      " ON CONFLICT DO NOTHING"},
    [ST_APPLY_REMOVE] = {LOG_INSERT("guild_id, seq, op", "$3, $4, 2"),
                         "DELETE FROM guilds WHERE user_id = $1 AND server_id = $2"
                         " AND guild_id = $3"},
    [ST_APPLY_INVITE] = {LOG_INSERT("invite_id, inviter_id, seq, op", "$3, $4, $5, 3"),
                         "INSERT INTO invites(user_id, server_id, invite_id, inviter_id)"
                         " VALUES ($1, $2, $3, $4) ON CONFLICT(user_id, server_id, invite_id)"
                         " DO UPDATE SET inviter_id = excluded.inviter_id"},
    [ST_GUILD_ADD] = SQ("INSERT INTO guilds(user_id, server_id, guild_id) VALUES ($1, $2, $3)"
                        " ON CONFLICT DO NOTHING"),
    [ST_GUILD_REMOVE] =
        SQ("DELETE FROM guilds WHERE user_id = $1 AND server_id = $2 AND guild_id = $3"),
    /* guild_id < 0 sorts the IDs >= 2^63 (stored negative) after the others: uint64
     * order. SQLite reads the model log's rows of the user over the table's: per key, the
     * row of the highest seq (the bare column op comes from the row of max(seq)). */
    [ST_GUILD_LIST] = {"SELECT guild_id, server_id FROM (SELECT guild_id, server_id, op, max(seq)"
                       " FROM (SELECT guild_id, server_id, 1 AS op, 0 AS seq FROM guilds"
                       " WHERE user_id = $1 UNION ALL SELECT guild_id, server_id, op, seq FROM"
                       " model_log WHERE user_id = $1 AND op < 3) GROUP BY server_id, guild_id)"
                       " WHERE op = 1 ORDER BY server_id, guild_id < 0, guild_id",
                       "SELECT guild_id, server_id FROM guilds WHERE user_id = $1"
                       " ORDER BY server_id, guild_id < 0, guild_id"},
    [ST_INVITE_LIST] = {"SELECT invite_id, server_id, inviter_id, max(seq) FROM (SELECT"
                        " invite_id, server_id, inviter_id, 0 AS seq FROM invites WHERE user_id"
                        " = $1 UNION ALL SELECT invite_id, server_id, inviter_id, seq FROM"
                        " model_log WHERE user_id = $1 AND op = 3)"
                        " GROUP BY server_id, invite_id ORDER BY server_id, invite_id",
                        "SELECT invite_id, server_id, inviter_id FROM invites WHERE user_id = $1"
                        " ORDER BY server_id, invite_id"},
    [ST_RENAME_PEER] = BOTH("UPDATE peers SET server_id = $2, pubkey = $3, key_fetched_at = $4"
                            " WHERE server_id = $1"),
    [ST_RENAME_OUTBOX] = BOTH("UPDATE outbox SET peer = $2 WHERE peer = $1"),
    [ST_RENAME_GUILDS_DROP] =
        BOTH(RENAME_DROP("guilds", "server_id") " AND o.user_id = n.user_id"
                                                " AND o.guild_id = n.guild_id)"),
    [ST_RENAME_GUILDS] = BOTH("UPDATE guilds SET server_id = $2 WHERE server_id = $1"),
    [ST_RENAME_INVITES_DROP] =
        BOTH(RENAME_DROP("invites", "server_id") " AND o.user_id = n.user_id"
                                                 " AND o.invite_id = n.invite_id)"),
    [ST_RENAME_INVITES] = BOTH("UPDATE invites SET server_id = $2 WHERE server_id = $1"),
    [ST_RENAME_RENAMES_OUT] = BOTH("UPDATE renames_out SET peer = $2 WHERE peer = $1"),
    [ST_RENAME_LEASES_DROP] = BOTH(RENAME_DROP("leases", "peer") ")"),
    [ST_RENAME_LEASES] = BOTH("UPDATE leases SET peer = $2 WHERE peer = $1"),
    [ST_RENAME_RECV_EPOCHS_DROP] =
        BOTH(RENAME_DROP("recv_epochs", "peer") " AND o.epoch = n.epoch)"),
    [ST_RENAME_RECV_EPOCHS] = BOTH("UPDATE recv_epochs SET peer = $2 WHERE peer = $1"),
    /* WHERE true: lets SQLite parse the ON CONFLICT of an INSERT ... SELECT */
    /* a peer that still knows us by an older ID keeps it, and the time we left it */
    [ST_SELF_RENAME_UPSERT] =
        BOTH("INSERT INTO renames_out(peer, old_id, new_id, attempts, next_attempt_at, last_error,"
             " renamed_at) SELECT server_id, $1, $2, 0, $3, NULL, $3 FROM peers WHERE true"
             " ON CONFLICT(peer) DO UPDATE SET new_id = excluded.new_id, attempts = 0,"
             " next_attempt_at = excluded.next_attempt_at, last_error = NULL"),
    [ST_SELF_RENAME_DROP] = BOTH("DELETE FROM renames_out WHERE old_id = new_id"),
    [ST_RENAME_OUT_LIST] = BOTH("SELECT peer, old_id, new_id, attempts, next_attempt_at,"
                                " last_error, renamed_at FROM renames_out ORDER BY peer"),
    [ST_RENAME_OUT_DONE] = BOTH("DELETE FROM renames_out WHERE peer = $1 AND new_id = $2"),
    [ST_RENAME_OUT_FAILED] = BOTH("UPDATE renames_out SET attempts = $2, next_attempt_at = $3,"
                                  " last_error = $4 WHERE peer = $1"),
    /* the old ID's other pending renames, and whether new_id is pending for another one */
    [ST_RENAME_IN_COUNT] =
        BOTH("SELECT (SELECT count(*) FROM renames_in WHERE old_id = $1 AND new_id <> $2),"
             " (SELECT count(*) FROM renames_in WHERE new_id = $2 AND old_id <> $1)"),
    [ST_RENAME_IN_ADD] =
        BOTH("INSERT INTO renames_in(old_id, new_id, created_at) VALUES ($1, $2, $3)"
             " ON CONFLICT(old_id, new_id) DO UPDATE SET created_at = excluded.created_at"),
    [ST_RENAME_IN_FIND] = BOTH("SELECT old_id, created_at FROM renames_in WHERE new_id = $1"),
    [ST_RENAME_IN_REMOVE] = BOTH("DELETE FROM renames_in WHERE old_id = $1"),
    [ST_RENAME_IN_LIST] = BOTH("SELECT old_id, new_id, created_at FROM renames_in"
                               " ORDER BY old_id, new_id"),
    [ST_RENAME_IN_EXPIRE] = BOTH("DELETE FROM renames_in WHERE created_at < $1"),
    /* one row changed when taken or renewed, none when the WHERE kept another's lease */
    [ST_LEASE_ACQUIRE] =
        BOTH("INSERT INTO leases(peer, holder, expires_at) VALUES ($1, $2, $3 + $4)"
             " ON CONFLICT(peer) DO UPDATE SET holder = excluded.holder,"
             " expires_at = excluded.expires_at"
             " WHERE leases.holder = excluded.holder OR leases.expires_at <= $3"),
    [ST_LEASE_RELEASE] = BOTH("DELETE FROM leases WHERE peer = $1 AND holder = $2"),
    /* ages a = now - created_at (ms) counted in the PB_QSHAPE_EDGES_MIN buckets */
    [ST_QSHAPE] =
        BOTH("SELECT peer, count(*), min(created_at)," AGE("a < 300000")
                 AGE("a >= 300000 AND a < 600000") AGE("a >= 600000 AND a < 1200000")
                     AGE("a >= 1200000 AND a < 2400000") AGE("a >= 2400000 AND a < 4800000")
                         AGE("a >= 4800000 AND a < 9600000") " count(CASE WHEN a >= 9600000 THEN 1 "
                                                             "END) FROM (SELECT peer, created_at,"
                                                             " $1 - created_at AS a FROM outbox) o "
                                                             "GROUP BY peer"
                                                             " ORDER BY count(*) DESC, peer"),
    [ST_QUEUE_SUMMARY] = BOTH("SELECT p.server_id, p.queued, (SELECT o.created_at FROM outbox o"
                              " WHERE o.peer = p.server_id ORDER BY o.seq LIMIT 1), 0, 0, 0, 0,"
                              " 0, 0, 0 FROM peers p WHERE p.queued > 0"
                              " ORDER BY p.queued DESC, p.server_id"),
    [ST_PEER_MODE_COUNTS] = BOTH("SELECT mode, count(*) FROM peers GROUP BY mode"),
    /* the inbox is append-only with consecutive seqs (rolled back with their transaction):
     * the rows after $1 are max(seq) - $1, counted without reading them */
    [ST_INBOX_UNREAD] = BOTH("SELECT CASE WHEN m > $1 THEN m - $1 ELSE 0 END, (SELECT"
                             " received_at FROM inbox WHERE seq > $1 ORDER BY seq LIMIT 1)"
                             " FROM (SELECT coalesce(max(seq), 0) AS m FROM inbox) t"),
    /* SQLite's model log (store_sqlite.c) */
    [ST_LOG_COUNT] = SQ("SELECT count(*) FROM model_log"),
    [ST_LOG_CHUNK_END] = SQ("SELECT user_id FROM model_log WHERE user_id >= $1"
                            " ORDER BY user_id LIMIT 1 OFFSET $2"),
    /* the last change of each (user, server, guild) of a user range, in key order */
    [ST_LOG_GUILD_FINAL] = SQ("SELECT user_id, server_id, guild_id, op, max(seq) FROM model_log"
                              " WHERE user_id BETWEEN $1 AND $2 AND id <= $3 AND op < 3"
                              " GROUP BY user_id, server_id, guild_id"
                              " ORDER BY user_id, server_id, guild_id"),
    /* in key order, the later of two changes of one invite last */
    [ST_MERGE_INVITES] = SQ("INSERT INTO invites(user_id, server_id, invite_id, inviter_id)"
                            " SELECT user_id, server_id, invite_id, inviter_id FROM model_log"
                            " WHERE user_id BETWEEN $1 AND $2 AND id <= $3 AND op = 3"
                            " ORDER BY user_id, server_id, invite_id, seq"
                            " ON CONFLICT(user_id, server_id, invite_id)"
                            " DO UPDATE SET inviter_id = excluded.inviter_id"),
    [ST_LOG_DELETE] = SQ("DELETE FROM model_log WHERE id <= $1"),
    /* the first $2 rows of a merged range, by id */
    [ST_LOG_DELETE_FIRST] = SQ("DELETE FROM model_log WHERE id IN (SELECT id FROM model_log"
                               " WHERE id <= $1 ORDER BY id LIMIT $2)"),
    [ST_LOG_LAST] = SQ("SELECT coalesce(max(id), 0) FROM model_log"),
    /* queue control (store.h): $1 NULL flushes every queued peer */
    [ST_FLUSH] = BOTH("UPDATE peers SET attempts = 0, next_attempt_at = $2"
                      " WHERE mode = 1 AND ($1 IS NULL OR server_id = $1) RETURNING server_id"),
    [ST_FLUSH_RECORD] =
        BOTH("INSERT INTO flushes(peer, requested_at) VALUES ($1, $2)"
             " ON CONFLICT(peer) DO UPDATE SET requested_at = excluded.requested_at"),
    [ST_FLUSH_LIST] = BOTH("SELECT peer, requested_at FROM flushes ORDER BY peer"),
    [ST_FLUSH_DONE] = BOTH("DELETE FROM flushes WHERE peer = $1 AND requested_at <= $2"),
    /* what a drop of the events created before $2 deletes, and the queue's length */
    [ST_DROP_STATS] = BOTH("SELECT count(*), coalesce(min(seq), 0), coalesce(max(seq), 0),"
                           " coalesce(min(created_at), 0), (SELECT queued FROM peers WHERE"
                           " server_id = $1) FROM outbox WHERE peer = $1 AND created_at < $2"),
    [ST_DROP_DELETE] = BOTH("DELETE FROM outbox WHERE peer = $1 AND created_at < $2"),
    /* after the deletion of $2 events: a new epoch ($3 or $4, as ST_PEER_NEW_EPOCH) and,
     * when the queue is empty or the parked event gone, push mode with a clean slate */
    [ST_DROP_PEER] = BOTH("UPDATE peers SET send_epoch = CASE WHEN send_epoch = $3 THEN $4 ELSE $3"
                          " END, queued = queued - $2, mode = CASE WHEN " DROP_CLEARS " THEN 0"
                          " ELSE mode END, attempts = CASE WHEN " DROP_CLEARS " THEN 0 ELSE"
                          " attempts END, next_attempt_at = CASE WHEN " DROP_CLEARS " THEN 0 ELSE"
                          " next_attempt_at END, last_error = CASE WHEN " DROP_CLEARS " THEN NULL"
                          " ELSE last_error END, parked_seq = CASE WHEN " DROP_CLEARS " THEN 0"
                          " ELSE parked_seq END WHERE server_id = $1 RETURNING send_epoch"),
    /* seq 0: SQLite's AUTOINCREMENT picks it */
    [ST_INBOX_INSERT_NOTICE] = BOTH("INSERT INTO inbox(seq, from_id, notice, received_at)"
                                    " VALUES (nullif($1, 0), $2, $3, $4) RETURNING seq"),
    /* a rename forgets the peer's recorded flush (its effect is in the peer row) */
    [ST_RENAME_FLUSHES] = BOTH("DELETE FROM flushes WHERE peer = $1 OR peer = $2"),
    [ST_INBOX_INSERT_ROWS] = SQ(INBOX_ROWS(X63)),
    [ST_INBOX_INSERT_ROWS_SMALL] = SQ(INBOX_ROWS(X7)),
    [ST_LOG_INSERT_ROWS] = SQ(LOG_ROWS(X63)),
    [ST_LOG_INSERT_ROWS_SMALL] = SQ(LOG_ROWS(X7)),
    [ST_EXPIRED_PEERS] = BOTH("SELECT p.server_id FROM peers p WHERE p.queued > 0 AND (SELECT"
                              " o.created_at FROM outbox o WHERE o.peer = p.server_id ORDER BY"
                              " o.seq LIMIT 1) < $1 ORDER BY p.server_id"),
};

const char *pb_store_sql(enum pb_engine e, int id)
{
    return id >= 0 && id < ST__COUNT ? stmt_sql[id][e] : NULL;
}

/* ---- statement helpers ------------------------------------------------------------------ */

/* Threads running asynchronous writes for a driver without write_async (PostgreSQL):
 * enough for concurrent commits to share the server's WAL flushes, few enough to leave
 * connections of its pool to the callers' own reads and writes. */
#define ASYNC_THREADS 4

/* One asynchronous write waiting for a thread (drivers without write_async). */
typedef struct ajob {
    pb_db_fn fn;
    void *ctx;
    bool one;
    void (*done)(void *ctx, pb_err result);
    struct ajob *next;
} ajob;

typedef struct st {
    const pb_store_driver *d;
    void *eng;
    /* asynchronous writes of a driver without write_async: a queue and up to
     * ASYNC_THREADS threads, started as the queue needs them (amu guards the rest) */
    pthread_mutex_t amu;
    pthread_cond_t acv;
    ajob *ahead, *atail;
    pthread_t athr[ASYNC_THREADS];
    int nthr, idle;
    bool astop;
} st;

pb_err pb_db_exec(const pb_store_driver *d, pb_db *db, int id, const pb_arg *a, int n,
                  int64_t *changes)
{
    pb_cur cur;
    pb_err err = d->query(db, id, a, n, &cur);
    if (err != PB_OK) return err;
    bool row = true;
    while (err == PB_OK && row)
        err = d->step(&cur, &row);
    if (err == PB_OK && changes) *changes = d->changes(&cur);
    d->done(&cur);
    return err;
}

pb_err pb_db_ints(const pb_store_driver *d, pb_db *db, int id, const pb_arg *a, int n, int64_t *out,
                  int cols)
{
    pb_cur cur;
    bool row = false, bad = false, first = true;
    pb_err err = d->query(db, id, a, n, &cur);
    if (err != PB_OK) return err;
    while ((err = d->step(&cur, &row)) == PB_OK && row) {
        for (int k = 0; first && k < cols; k++)
            out[k] = d->col_int(&cur, k, &bad);
        first = false;
    }
    d->done(&cur);
    return err == PB_OK && bad ? PB_ERR_CORRUPT : err;
}

void pb_pool_init(pb_pool *p, int max)
{
    *p = (pb_pool){.max = max};
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cond, NULL);
}

pb_db *pb_pool_take(pb_pool *p)
{
    pthread_mutex_lock(&p->mu);
    while (!p->free && p->count >= p->max)
        pthread_cond_wait(&p->cond, &p->mu);
    pb_db *c = p->free;
    if (c) {
        p->free = ((pb_db_head *)c)->next;
    } else {
        p->count++;
    }
    pthread_mutex_unlock(&p->mu);
    return c;
}

void pb_pool_put(pb_pool *p, pb_db *c)
{
    pthread_mutex_lock(&p->mu);
    if (c) {
        ((pb_db_head *)c)->next = p->free;
        p->free = c;
    } else {
        p->count--;
    }
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->mu);
}

pb_db *pb_pool_drain(pb_pool *p)
{
    pb_db *c = p->free;
    if (c) {
        p->free = ((pb_db_head *)c)->next;
        return c;
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cond);
    return NULL;
}

#define EXEC(db, id, changes, ...) DB_EXEC(D, (db), (id), (changes), __VA_ARGS__)
#define QINT(db, id, out, ...)                                                                     \
    pb_db_ints(D, (db), (id), (const pb_arg[]){__VA_ARGS__}, NARGS(__VA_ARGS__), (out), 1)
/* the driver of a connection (store_driver.h: its struct begins with it) */
#define D (*(const pb_store_driver *const *)(const void *)db)

/* Clamps a uint64 (a cursor or a count) to what an int64 column compares correctly. */
static int64_t clamp64(uint64_t v)
{
    return v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v;
}

/* A column's text copied into a new string; NULL for SQL NULL. */
static char *col_str(const pb_store_driver *d, const pb_cur *c, int col)
{
    size_t n = 0;
    const char *p = d->col_bytes(c, col, &n);
    return p ? pb_xstrndup(p, n) : NULL;
}

/* Decodes a stored Event; anything that does not decode is PB_ERR_CORRUPT. */
static pb_err col_event(const pb_store_driver *d, const pb_cur *c, int col, const char *what,
                        pb_event *ev)
{
    size_t n = 0;
    const uint8_t *p = d->col_bytes(c, col, &n);
    if (!p || n == 0 || pb_wire_event_decode(p, n, ev) != PB_OK) {
        PB_ERROR(NULL, "store: a stored %s event does not decode (database corrupt)", what);
        return PB_ERR_CORRUPT;
    }
    return PB_OK;
}

/* A stored public key: PB_ERR_NOT_FOUND for NULL, PB_ERR_CORRUPT for a wrong length. */
static pb_err col_key(const pb_store_driver *d, const pb_cur *c, int col, const char *who,
                      uint8_t key[PB_PUBKEY_LEN])
{
    size_t n = 0;
    const void *p = d->col_bytes(c, col, &n);
    if (!p) return PB_ERR_NOT_FOUND;
    if (n != PB_PUBKEY_LEN) {
        PB_ERROR(who, "store: stored key has %zu bytes", n);
        return PB_ERR_CORRUPT;
    }
    memcpy(key, p, PB_PUBKEY_LEN);
    return PB_OK;
}

static pb_err encode_events(const pb_event *evs, size_t n, pb_encoded *e)
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

static void encoded_free(pb_encoded *e)
{
    pb_buf_free(&e->buf);
    free(e->off);
}

#define ENC_ARG(e, i) A_BLOB((e)->buf.data + (e)->off[i], (e)->off[(i) + 1] - (e)->off[i])

/* ---- reads ------------------------------------------------------------------------------ */

/* A row callback's answer that ends the read before the current row (never an error). */
#define ROW_STOP PB_ERR__COUNT

/* Fills the zeroed *elem from the current row (index i of the read): PB_OK,
 * PB_ERR_CORRUPT for a bad row (the element still counts, for free_arr), or ROW_STOP. */
typedef pb_err (*row_fn)(const pb_store_driver *d, const pb_cur *c, void *elem, size_t i,
                         void *ctx);

/* How a list reader turns its statement's rows into an array. */
typedef struct rows_spec {
    int id;
    size_t size; /* of one element */
    row_fn row;
    void (*free_arr)(void *arr, size_t n); /* frees n elements and the array */
} rows_spec;

typedef struct read_ctx {
    const pb_store_driver *d;
    const rows_spec *s; /* a list; NULL: one row into elem */
    int id;
    const pb_arg *a;
    int na;
    row_fn row;
    void *ctx;
    unsigned char *arr; /* out (list) */
    size_t n;
    void *elem; /* one row */
    bool found; /* out (one row) */
} read_ctx;

static pb_err read_fn(pb_db *db, void *vctx)
{
    read_ctx *r = vctx;
    const pb_store_driver *d = r->d;
    size_t size = r->s ? r->s->size : 0, cap = 0;
    pb_cur cur;
    bool row = false;
    r->arr = NULL;
    r->n = 0;
    r->found = false;
    pb_err err = d->query(db, r->s ? r->s->id : r->id, r->a, r->na, &cur);
    if (err != PB_OK) return err;
    while ((err = d->step(&cur, &row)) == PB_OK && row) {
        void *elem = r->elem;
        if (r->s) {
            if (r->n == cap) {
                cap = cap ? 2 * cap : 16;
                r->arr = pb_xrealloc(r->arr, cap * size);
            }
            elem = r->arr + r->n * size;
            memset(elem, 0, size);
        }
        err = r->row(d, &cur, elem, r->n, r->ctx);
        if (err == ROW_STOP) {
            err = PB_OK;
            break;
        }
        r->n++;
        r->found = true;
        if (err != PB_OK || !r->s) break;
    }
    d->done(&cur);
    if (err != PB_OK && r->s) {
        r->s->free_arr(r->arr, r->n);
        r->arr = NULL;
        r->n = 0;
    }
    return err;
}

/* Runs s->id with parameters a[0..na) as a read and collects its rows. On PB_OK *out
 * (NULL when empty) is the caller's, to free as s->free_arr does. */
static pb_err read_rows(st *s, const rows_spec *spec, const pb_arg *a, int na, void *ctx, void *out,
                        size_t *count)
{
    read_ctx r = {.d = s->d, .s = spec, .a = a, .na = na, .row = spec->row, .ctx = ctx};
    pb_err err = s->d->read(s->eng, read_fn, &r);
    if (err != PB_OK) return err;
    if (r.n == 0) {
        free(r.arr);
        r.arr = NULL;
    }
    *(void **)out = r.arr;
    *count = r.n;
    return PB_OK;
}

/* The first row of statement id into *elem by row(); PB_ERR_NOT_FOUND when there is none. */
static pb_err read_one(st *s, int id, const pb_arg *a, int na, row_fn row, void *elem, void *ctx)
{
    read_ctx r = {.d = s->d, .id = id, .a = a, .na = na, .row = row, .ctx = ctx, .elem = elem};
    pb_err err = s->d->read(s->eng, read_fn, &r);
    return err == PB_OK && !r.found ? PB_ERR_NOT_FOUND : err;
}

#define READ_ONE(s, id, row, elem, ctx, ...)                                                       \
    read_one((s), (id), (const pb_arg[]){__VA_ARGS__}, NARGS(__VA_ARGS__), (row), (elem), (ctx))

/* Row callbacks of single values: int64 columns 0..n-1 (n = (size_t)ctx) into an int64[]. */
static pb_err ints_row(const pb_store_driver *d, const pb_cur *c, void *elem, size_t i, void *ctx)
{
    (void)i;
    bool bad = false;
    for (size_t k = 0; k < (size_t)(uintptr_t)ctx; k++)
        ((int64_t *)elem)[k] = d->col_int(c, (int)k, &bad);
    return bad ? PB_ERR_CORRUPT : PB_OK;
}

static pb_err str_row(const pb_store_driver *d, const pb_cur *c, void *elem, size_t i, void *ctx)
{
    (void)i;
    (void)ctx;
    *(char **)elem = col_str(d, c, 0);
    return *(char **)elem ? PB_OK : PB_ERR_CORRUPT;
}

static void strings_free(void *arr, size_t n)
{
    pb_store_strings_free(arr, n);
}

/* ---- writes ----------------------------------------------------------------------------- */

static pb_err write_tx(st *s, pb_db_fn fn, void *ctx, bool one)
{
    return s->d->write(s->eng, fn, ctx, one);
}

static void *async_main(void *arg)
{
    pthread_setname_np(pthread_self(), "pb-store-async");
    st *s = arg;
    pthread_mutex_lock(&s->amu);
    for (;;) {
        s->idle++;
        while (!s->ahead && !s->astop)
            pthread_cond_wait(&s->acv, &s->amu);
        s->idle--;
        ajob *j = s->ahead;
        if (!j) break; /* stopping and drained */
        s->ahead = j->next;
        if (!s->ahead) s->atail = NULL;
        pthread_mutex_unlock(&s->amu);
        pb_err err = s->d->write(s->eng, j->fn, j->ctx, j->one);
        j->done(j->ctx, err);
        free(j);
        pthread_mutex_lock(&s->amu);
    }
    pthread_mutex_unlock(&s->amu);
    return NULL;
}

/* The driver's write_async, or write on this store's threads (store_driver.h). */
static pb_err write_async(st *s, pb_db_fn fn, void *ctx, bool one,
                          void (*done)(void *ctx, pb_err result))
{
    if (s->d->write_async) return s->d->write_async(s->eng, fn, ctx, one, done);
    ajob *j = pb_xmalloc(sizeof *j);
    *j = (ajob){fn, ctx, one, done, NULL};
    pthread_mutex_lock(&s->amu);
    if (s->astop) {
        pthread_mutex_unlock(&s->amu);
        free(j);
        return PB_ERR_SHUTDOWN;
    }
    if (s->atail) {
        s->atail->next = j;
    } else {
        s->ahead = j;
    }
    s->atail = j;
    if (s->idle == 0 && s->nthr < ASYNC_THREADS &&
        pthread_create(&s->athr[s->nthr], NULL, async_main, s) == 0)
        s->nthr++;
    pthread_cond_signal(&s->acv);
    bool none = s->nthr == 0; /* no thread could be started */
    if (none) {
        s->ahead = s->atail = NULL;
        free(j);
    }
    pthread_mutex_unlock(&s->amu);
    if (none) PB_ERROR(NULL, "store: cannot start a thread for asynchronous writes");
    return none ? PB_ERR_INTERNAL : PB_OK;
}

/* A write of one statement with fixed arguments (most writes). */
typedef struct one_ctx {
    int id;
    pb_arg a[8];
    int n;
    int64_t changes; /* out */
} one_ctx;

static pb_err one_fn(pb_db *db, void *ctx)
{
    one_ctx *o = ctx;
    return pb_db_exec(D, db, o->id, o->a, o->n, &o->changes);
}

#define WRITE1(s, id, changes, ...)                                                                \
    write_one((s), &(one_ctx){(id), {__VA_ARGS__}, NARGS(__VA_ARGS__), 0}, (changes))

static pb_err write_one(st *s, one_ctx *o, int64_t *changes)
{
    pb_err err = write_tx(s, one_fn, o, true);
    if (err == PB_OK && changes) *changes = o->changes;
    return err;
}

/* ---- open / close / status -------------------------------------------------------------- */

static pb_err op_open(const pb_store_driver *d, const char *location, const pb_store_opts *opts,
                      void **impl)
{
    void *eng = NULL;
    pb_err err = d->open(location, opts, &eng);
    if (err != PB_OK) return err;
    st *s = pb_xcalloc(1, sizeof *s);
    s->d = d;
    s->eng = eng;
    pthread_mutex_init(&s->amu, NULL);
    pthread_cond_init(&s->acv, NULL);
    *impl = s;
    return PB_OK;
}

static pb_err sqlite_open(const char *location, const pb_store_opts *opts, void **impl)
{
    return op_open(&pb_store_sqlite_driver, location, opts, impl);
}

static pb_err pg_open(const char *location, const pb_store_opts *opts, void **impl)
{
    return op_open(&pb_store_pg_driver, location, opts, impl);
}

/* The asynchronous writes queued on this store's threads run (a fault hold is released,
 * as the drivers' close does) and get their callbacks, then the driver closes (draining
 * its own queue). */
static void op_close(void *impl)
{
    st *s = impl;
    if (!s) return;
    pthread_mutex_lock(&s->amu);
    s->astop = true;
    pthread_cond_broadcast(&s->acv);
    pthread_mutex_unlock(&s->amu);
    if (s->nthr > 0) {
        pb_store_faults *f = s->d->faults(s->eng);
        pthread_mutex_lock(f->mu);
        f->hold = false;
        pthread_cond_broadcast(f->cond);
        pthread_mutex_unlock(f->mu);
    }
    for (int i = 0; i < s->nthr; i++)
        pthread_join(s->athr[i], NULL);
    s->d->close(s->eng);
    pthread_mutex_destroy(&s->amu);
    pthread_cond_destroy(&s->acv);
    free(s);
}

static pb_err op_meta_set(void *impl, const char *key, const char *val)
{
    return WRITE1(impl, ST_META_SET, NULL, A_TEXT(key), A_TEXT(val));
}

static pb_err op_ping(void *impl)
{
    int64_t one = 0;
    pb_err err = read_one(impl, ST_PING, NULL, 0, ints_row, &one, (void *)1);
    if (err != PB_OK) return err;
    /* A real write (and sync): an empty transaction would not notice a full disk or a
     * read-only server. The value changes on every call (SQLite skips an unchanged row). */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char now[48];
    snprintf(now, sizeof now, "%lld.%09ld", (long long)ts.tv_sec, ts.tv_nsec);
    return op_meta_set(impl, "health_checked_at", now);
}

static pb_err op_schema_version(void *impl, int *version)
{
    int64_t v = -1;
    pb_err err = read_one(impl, ST_SCHEMA_VERSION, NULL, 0, ints_row, &v, (void *)1);
    if (err == PB_ERR_NOT_FOUND || (err == PB_OK && (v < 0 || v > 1000000))) return PB_ERR_CORRUPT;
    if (err == PB_OK) *version = (int)v;
    return err;
}

/* SQLite's integrity_check: one row "ok", else rows naming the damage. */
static pb_err integrity_row(const pb_store_driver *d, const pb_cur *c, void *elem, size_t i,
                            void *ctx)
{
    (void)elem;
    (void)ctx;
    size_t n = 0;
    const char *t = d->col_bytes(c, 0, &n);
    if (i == 0 && t && n == 2 && memcmp(t, "ok", 2) == 0) return PB_OK;
    if (i < 5) PB_ERROR(NULL, "store: integrity_check: %.*s", t ? (int)n : 6, t ? t : "(null)");
    return PB_ERR_CORRUPT;
}

static void nothing_free(void *arr, size_t n)
{
    (void)n;
    free(arr);
}

static pb_err op_integrity_check(void *impl)
{
    st *s = impl;
    int v = 0;
    pb_err err = op_schema_version(impl, &v);
    if (err == PB_OK && v != pb_store_schema_current) {
        PB_ERROR(NULL, "store: integrity check: schema version %d, want %d", v,
                 pb_store_schema_current);
        err = PB_ERR_CORRUPT;
    }
    if (err == PB_OK && pb_store_sql(s->d->engine, ST_INTEGRITY)) {
        static const rows_spec spec = {ST_INTEGRITY, 1, integrity_row, nothing_free};
        void *arr = NULL;
        size_t n = 0;
        err = read_rows(s, &spec, NULL, 0, NULL, &arr, &n);
        free(arr);
        if (err != PB_OK && !pb_health_unavailable(err)) err = PB_ERR_CORRUPT;
    }
    /* counts that must be zero: what the engine's schema cannot express */
    static const int checks[] = {ST_CHECK_OUTBOX, ST_CHECK_INBOX, ST_CHECK_SUBMISSIONS};
    for (size_t k = 0; k < sizeof checks / sizeof checks[0] && err == PB_OK; k++) {
        int64_t n = -1;
        if (!pb_store_sql(s->d->engine, checks[k])) continue;
        err = read_one(s, checks[k], NULL, 0, ints_row, &n, (void *)1);
        if (err == PB_OK && n != 0) {
            PB_ERROR(NULL, "store: integrity check: %.60s (%lld)",
                     pb_store_sql(s->d->engine, checks[k]), (long long)n);
            err = PB_ERR_CORRUPT;
        }
    }
    return err;
}

static void op_stats_get(void *impl, pb_store_stats *out)
{
    st *s = impl;
    s->d->stats(s->eng, out);
}

static void op_set_executor(void *impl, pb_exec *e)
{
    st *s = impl;
    if (s->d->set_executor) s->d->set_executor(s->eng, e);
}

/* An online copy is the engine's own (SQLite: the backup API); PostgreSQL has none. */
static pb_err op_backup(void *impl, int *fd, uint64_t *size)
{
    st *s = impl;
    return s->d->backup ? s->d->backup(s->eng, fd, size) : PB_ERR_INVAL;
}

/* ---- meta and peers --------------------------------------------------------------------- */

static pb_err op_meta_get(void *impl, const char *key, char **val)
{
    return READ_ONE(impl, ST_META_GET, str_row, val, NULL, A_TEXT(key));
}

static pb_err op_peer_touch(void *impl, const char *server_id, int64_t contact_at)
{
    return WRITE1(impl, ST_PEER_TOUCH, NULL, A_TEXT(server_id), A_INT(time(NULL)),
                  A_INT(contact_at), A_INT(pb_store_epoch_random(0)));
}

static pb_err op_peer_key_set(void *impl, const char *server_id, const uint8_t key[PB_PUBKEY_LEN],
                              int64_t fetched_at)
{
    return WRITE1(impl, ST_PEER_KEY_SET, NULL, A_TEXT(server_id), A_INT(time(NULL)),
                  A_BLOB(key, PB_PUBKEY_LEN), A_INT(fetched_at), A_INT(pb_store_epoch_random(0)));
}

static pb_err key_row(const pb_store_driver *d, const pb_cur *c, void *elem, size_t i, void *ctx)
{
    (void)i;
    return col_key(d, c, 0, ctx, elem);
}

static pb_err op_peer_key_get(void *impl, const char *server_id, uint8_t key[PB_PUBKEY_LEN])
{
    return READ_ONE(impl, ST_PEER_KEY_GET, key_row, key, (void *)server_id, A_TEXT(server_id));
}

static pb_err peer_info_row(const pb_store_driver *d, const pb_cur *c, void *elem, size_t i,
                            void *ctx)
{
    (void)i;
    (void)ctx;
    pb_peer_info *p = elem;
    bool bad = false;
    p->server_id = col_str(d, c, 0);
    if (!p->server_id) return PB_ERR_CORRUPT;
    p->first_seen = d->col_int(c, 1, &bad);
    p->last_contact = d->col_int(c, 2, &bad);
    pb_err err = col_key(d, c, 3, p->server_id, p->key);
    if (err == PB_OK) {
        p->has_key = true;
        p->key_fetched_at = d->col_int(c, 4, &bad);
    }
    if (err == PB_ERR_NOT_FOUND) err = PB_OK;
    return bad ? PB_ERR_CORRUPT : err;
}

static void peer_infos_free(void *arr, size_t n)
{
    pb_peer_info_free_array(arr, n);
}

static const rows_spec peer_rows = {ST_PEER_LIST, sizeof(pb_peer_info), peer_info_row,
                                    peer_infos_free};

static pb_err op_peer_list(void *impl, pb_peer_info **peers, size_t *count)
{
    return read_rows(impl, &peer_rows, NULL, 0, NULL, peers, count);
}

/* ---- per-peer delivery state ------------------------------------------------------------ */

/* Fills *elem (a pb_peer_state) from a PEER_STATE_SELECT row. */
static pb_err peer_state_row(const pb_store_driver *d, const pb_cur *c, void *elem, size_t i,
                             void *ctx)
{
    (void)i;
    (void)ctx;
    pb_peer_state *p = elem;
    bool bad = false;
    memset(p, 0, sizeof *p);
    p->server_id = col_str(d, c, 0);
    int64_t mode = d->col_int(c, 1, &bad);
    if (!p->server_id || mode < PB_MODE_PUSH || mode > PB_MODE_PARKED) {
        PB_ERROR(p->server_id, "store: bad peer row (mode %lld)", (long long)mode);
        return PB_ERR_CORRUPT;
    }
    p->mode = (pb_peer_mode)mode;
    p->attempts = (uint32_t)d->col_int(c, 2, &bad);
    p->next_attempt_at = d->col_int(c, 3, &bad);
    p->last_error = col_str(d, c, 4);
    p->parked_seq = (uint64_t)d->col_int(c, 5, &bad);
    p->next_seq = (uint64_t)d->col_int(c, 6, &bad);
    p->recv_seq = (uint64_t)d->col_int(c, 7, &bad);
    p->last_contact = d->col_int(c, 8, &bad);
    p->queued = (uint64_t)d->col_int(c, 9, &bad);
    p->oldest_queued_at = d->col_int(c, 10, &bad);     /* NULL (empty queue) reads as 0 */
    p->recv_epoch = (uint64_t)d->col_int(c, 11, &bad); /* NULL (no epoch row) reads as 0 */
    p->send_epoch = (uint64_t)d->col_int(c, 12, &bad);
    return bad ? PB_ERR_CORRUPT : PB_OK;
}

static pb_err op_peer_state_get(void *impl, const char *server_id, pb_peer_state *out)
{
    pb_peer_state p = {0};
    pb_err err = READ_ONE(impl, ST_PEER_STATE_GET, peer_state_row, &p, NULL, A_TEXT(server_id));
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

static pb_err op_peer_state_list(void *impl, pb_peer_state **out, size_t *count)
{
    return read_rows(impl, &peer_state_rows, NULL, 0, NULL, out, count);
}

static pb_err op_peer_state_set(void *impl, const char *server_id, pb_peer_mode mode,
                                uint32_t attempts, int64_t next_attempt_at, const char *last_error,
                                uint64_t parked_seq)
{
    return WRITE1(impl, ST_PEER_STATE_SET, NULL, A_TEXT(server_id), A_INT(time(NULL)), A_INT(mode),
                  A_INT(attempts), A_INT(next_attempt_at), A_TEXT(last_error), A_INT(parked_seq),
                  A_INT(pb_store_epoch_random(0)));
}

struct new_epoch_ctx {
    const char *peer;
    uint64_t e1, e2; /* two different random non-zero epochs (ST_PEER_NEW_EPOCH) */
    int64_t epoch;   /* out */
};

static pb_err peer_new_epoch_tx(pb_db *db, void *ctx)
{
    struct new_epoch_ctx *e = ctx;
    e->epoch = 0;
    pb_err err = QINT(db, ST_PEER_NEW_EPOCH, &e->epoch, A_TEXT(e->peer), A_INT(time(NULL)),
                      A_INT(e->e1), A_INT(e->e2));
    return err == PB_OK && e->epoch == 0 ? PB_ERR_INTERNAL : err; /* no row came back */
}

static pb_err op_peer_new_epoch(void *impl, const char *peer, uint64_t *epoch)
{
    struct new_epoch_ctx e = {peer, pb_store_epoch_random(0), 0, 0};
    e.e2 = pb_store_epoch_random(e.e1);
    pb_err err = write_tx(impl, peer_new_epoch_tx, &e, true);
    if (err == PB_OK) *epoch = (uint64_t)e.epoch;
    return err;
}

/* ---- outbox ----------------------------------------------------------------------------- */

uint64_t pb_store_epoch_random(uint64_t avoid)
{
    static _Thread_local uint64_t pool[32];
    static _Thread_local size_t left;
    uint64_t e = 0;
    while (e == 0 || e == avoid) {
        if (left == 0) {
            randombytes_buf(pool, sizeof pool);
            left = sizeof pool / sizeof pool[0];
        }
        e = pool[--left];
        pool[left] = 0;
    }
    return e;
}

struct append_ctx {
    const char *peer;
    const pb_encoded *enc;
    size_t n;
    int64_t now;
    const char *sub; /* submission ID, NULL: none */
    uint64_t epoch;  /* send_epoch of a peer row created now */
    uint64_t last;   /* out */
    bool duplicate;  /* out */
};

/* The submission ID is recorded (by another transaction, committed): PB_OK with
 * a->duplicate and a->last set when it is this very submission again, PB_ERR_EXISTS when
 * it was used for another peer or number of events. */
static pb_err submission_row(const pb_store_driver *d, const pb_cur *c, void *elem, size_t i,
                             void *ctx)
{
    (void)i;
    (void)ctx;
    struct append_ctx *a = elem;
    bool bad = false;
    size_t len = 0;
    const char *peer = d->col_bytes(c, 0, &len);
    int64_t first = d->col_int(c, 1, &bad), count = d->col_int(c, 2, &bad);
    if (bad || !peer || first < 1 || count < 1 || first > INT64_MAX - count) {
        PB_ERROR(NULL, "store: bad submissions row");
        return PB_ERR_CORRUPT;
    }
    if (len != strlen(a->peer) || memcmp(peer, a->peer, len) != 0 || (uint64_t)count != a->n)
        return PB_ERR_EXISTS;
    a->duplicate = true;
    a->last = (uint64_t)(first + count - 1);
    return PB_OK;
}

/* O(n): the peer row keeps next_seq, so an append never looks at the queue; its row lock
 * orders appends to the peer from every node. With a submission ID: claimed first (lock
 * order: the ID, then the peer row), then recorded and a bounded number of expired ones
 * pruned in the same transaction. PostgreSQL does the rest in one statement (a bytea[] of
 * the events); SQLite reads next_seq, inserts each event, then advances next_seq. */
static pb_err append_tx(pb_db *db, void *ctx)
{
    struct append_ctx *a = ctx;
    const pb_store_driver *d = D;
    int64_t n = (int64_t)a->n, claimed = 0, next = 0, res[2] = {0, 1};
    pb_err err = PB_OK;
    a->duplicate = false;
    if (a->sub) {
        err = QINT(db, ST_SUBMISSION_CLAIM, &claimed, A_TEXT(a->sub), A_TEXT(a->peer), A_INT(n),
                   A_INT(a->now));
        if (err != PB_OK) return err;
        if (!claimed) {
            pb_cur cur;
            bool row = false;
            err = d->query(db, ST_SUBMISSION_GET, &A_TEXT(a->sub), 1, &cur);
            if (err != PB_OK) return err;
            err = d->step(&cur, &row);
            if (err == PB_OK && row) err = submission_row(d, &cur, a, 0, NULL);
            d->done(&cur);
            if (err == PB_OK && !row) { /* pruned meanwhile: the caller may retry */
                PB_WARN(NULL, "store: submission record vanished while checked; retry");
                err = PB_ERR_STORE;
            }
            return err;
        }
    }
    if (d->arrays) {
        pb_arg ev = A_EVENTS(a->enc, NULL, a->n);
        if (a->sub)
            err = pb_db_ints(
                d, db, ST_OUTBOX_SUBMIT,
                (const pb_arg[]){A_TEXT(a->peer), A_INT(a->now / 1000), A_INT(n), ev, A_INT(a->now),
                                 A_TEXT(a->sub), A_INT(pb_store_submission_cutoff(a->now)),
                                 A_INT(PB_STORE_SUBMISSION_PRUNE_MAX), A_INT(a->epoch)},
                9, res, 2);
        else
            err = QINT(db, ST_OUTBOX_APPEND, res, A_TEXT(a->peer), A_INT(a->now / 1000), A_INT(n),
                       ev, A_INT(a->now), A_INT(a->epoch));
        if (err == PB_OK && (res[0] < n || res[1] != 1)) err = PB_ERR_INTERNAL; /* rolled back */
        if (err == PB_OK) a->last = (uint64_t)res[0];
        return err;
    }
    err = EXEC(db, ST_PEER_ENSURE, NULL, A_TEXT(a->peer), A_INT(a->now / 1000), A_INT(a->epoch));
    if (err == PB_OK) err = QINT(db, ST_PEER_NEXT_SEQ, &next, A_TEXT(a->peer));
    if (err == PB_OK && (next < 1 || next > INT64_MAX - n)) err = PB_ERR_CORRUPT;
    next += n; /* as PostgreSQL's RETURNING: the next_seq after the append */
    for (size_t i = 0; i < a->n && err == PB_OK; i++)
        err = EXEC(db, ST_OUTBOX_INSERT, NULL, A_TEXT(a->peer), A_INT(next - n + (int64_t)i),
                   ENC_ARG(a->enc, i), A_INT(a->now));
    if (err == PB_OK) err = EXEC(db, ST_PEER_ADVANCE, NULL, A_TEXT(a->peer), A_INT(n));
    if (err == PB_OK && a->sub) {
        err = EXEC(db, ST_SUBMISSION_INSERT, NULL, A_TEXT(a->sub), A_TEXT(a->peer), A_INT(next - n),
                   A_INT(n), A_INT(a->now));
        if (err == PB_OK)
            err = EXEC(db, ST_SUBMISSION_PRUNE, NULL, A_INT(pb_store_submission_cutoff(a->now)),
                       A_INT(PB_STORE_SUBMISSION_PRUNE_MAX));
    }
    if (err == PB_OK) a->last = (uint64_t)(next - 1);
    return err;
}

static pb_err op_outbox_append(void *impl, const char *peer, const pb_event *evs, size_t n,
                               int64_t now, const char *submission_id, uint64_t *last_seq,
                               bool *duplicate)
{
    st *s = impl;
    pb_encoded enc;
    pb_err err = encode_events(evs, n, &enc);
    if (err == PB_OK) {
        struct append_ctx a = {peer, &enc, n, now, submission_id, pb_store_epoch_random(0),
                               0,    false};
        err = write_tx(s, append_tx, &a, s->d->arrays && !submission_id);
        if (err == PB_OK) {
            *last_seq = a.last;
            *duplicate = a.duplicate;
        }
    }
    encoded_free(&enc);
    return err;
}

/* An asynchronous append: what append_tx needs, copied from the caller. */
struct append_async {
    struct append_ctx a;
    pb_encoded enc;
    char *peer, *sub;
    pb_store_submit_cb cb;
    void *arg;
};

static void append_async_free(struct append_async *x)
{
    encoded_free(&x->enc);
    free(x->peer);
    free(x->sub);
    free(x);
}

static void append_done(void *ctx, pb_err err)
{
    struct append_async *x = ctx;
    x->cb(x->arg, err, err == PB_OK ? x->a.last : 0, err == PB_OK && x->a.duplicate);
    append_async_free(x);
}

static pb_err op_outbox_append_async(void *impl, const char *peer, const pb_event *evs, size_t n,
                                     int64_t now, const char *submission_id, pb_store_submit_cb cb,
                                     void *arg)
{
    st *s = impl;
    struct append_async *x = pb_xcalloc(1, sizeof *x);
    pb_err err = encode_events(evs, n, &x->enc);
    x->peer = pb_xstrdup(peer);
    x->sub = submission_id ? pb_xstrdup(submission_id) : NULL;
    x->cb = cb;
    x->arg = arg;
    x->a =
        (struct append_ctx){x->peer, &x->enc, n, now, x->sub, pb_store_epoch_random(0), 0, false};
    if (err == PB_OK)
        err = write_async(s, append_tx, &x->a, s->d->arrays && !submission_id, append_done);
    if (err != PB_OK) append_async_free(x);
    return err;
}

/* the first item always; later ones while the total stays within max_bytes */
static pb_err outbox_row(const pb_store_driver *d, const pb_cur *c, void *elem, size_t i, void *ctx)
{
    size_t *budget = ctx; /* [0] max_bytes, [1] bytes taken */
    pb_outbox_item *it = elem;
    bool bad = false;
    size_t size = 0;
    d->col_bytes(c, 2, &size);
    if (i == 0) budget[1] = 0;
    if (i > 0 && (budget[1] > budget[0] || size > budget[0] - budget[1])) return ROW_STOP;
    pb_err err = col_event(d, c, 2, "outbox", &it->ev);
    if (err != PB_OK) return err;
    it->seq = (uint64_t)d->col_int(c, 0, &bad);
    it->created_at = d->col_int(c, 1, &bad);
    it->size = size;
    budget[1] += size;
    return bad ? PB_ERR_CORRUPT : PB_OK;
}

static void outbox_items_free(void *arr, size_t n)
{
    pb_outbox_items_free(arr, n);
}

static const rows_spec outbox_rows = {ST_OUTBOX_READ, sizeof(pb_outbox_item), outbox_row,
                                      outbox_items_free};

static pb_err op_outbox_read(void *impl, const char *peer, uint64_t from_seq, size_t max_items,
                             size_t max_bytes, pb_outbox_item **items, size_t *count)
{
    if (from_seq > (uint64_t)INT64_MAX) { /* no stored seq is that large */
        *items = NULL;
        *count = 0;
        return PB_OK;
    }
    size_t budget[2] = {max_bytes, 0};
    return read_rows(impl, &outbox_rows,
                     (const pb_arg[]){A_TEXT(peer), A_INT(from_seq), A_INT(clamp64(max_items))}, 3,
                     budget, items, count);
}

struct dequeue_ctx {
    int id;
    const char *peer;
    int64_t seq;
    int64_t changes; /* out */
};

/* Deletes from the queue and takes the rows from the peer's counter: one statement where
 * the engine has ST_OUTBOX_ACK do both (changes: 1 or 0), else two. */
static pb_err dequeue_tx(pb_db *db, void *ctx)
{
    struct dequeue_ctx *q = ctx;
    pb_err err = EXEC(db, q->id, &q->changes, A_TEXT(q->peer), A_INT(q->seq));
    if (err == PB_OK && q->changes > 0 && pb_store_sql(D->engine, ST_PEER_DEQUEUED))
        err = EXEC(db, ST_PEER_DEQUEUED, NULL, A_TEXT(q->peer), A_INT(q->changes));
    return err;
}

static pb_err dequeue(st *s, int id, const char *peer, int64_t seq, int64_t *changes)
{
    struct dequeue_ctx q = {id, peer, seq, 0};
    pb_err err = write_tx(s, dequeue_tx, &q, !pb_store_sql(s->d->engine, ST_PEER_DEQUEUED));
    *changes = q.changes;
    return err;
}

static pb_err op_outbox_ack(void *impl, const char *peer, uint64_t upto)
{
    int64_t changes = 0;
    return dequeue(impl, ST_OUTBOX_ACK, peer, clamp64(upto), &changes);
}

struct dequeue_many_ctx {
    const char *const *peers;
    const uint64_t *upto;
    size_t n;
};

/* Every peer's acknowledgement in one transaction (the delivery engine's forget batch). */
static pb_err dequeue_many_tx(pb_db *db, void *ctx)
{
    struct dequeue_many_ctx *m = ctx;
    pb_err err = PB_OK;
    for (size_t i = 0; i < m->n && err == PB_OK; i++) {
        struct dequeue_ctx q = {ST_OUTBOX_ACK, m->peers[i], clamp64(m->upto[i]), 0};
        err = dequeue_tx(db, &q);
    }
    return err;
}

static pb_err op_outbox_ack_many(void *impl, const char *const *peers, const uint64_t *upto,
                                 size_t n)
{
    st *s = impl;
    struct dequeue_many_ctx m = {peers, upto, n};
    bool one = n == 1 && !pb_store_sql(s->d->engine, ST_PEER_DEQUEUED);
    return write_tx(s, dequeue_many_tx, &m, one);
}

static pb_err op_outbox_remove(void *impl, const char *peer, uint64_t seq)
{
    int64_t changes = 0;
    if (seq > (uint64_t)INT64_MAX) return PB_ERR_NOT_FOUND;
    pb_err err = dequeue(impl, ST_OUTBOX_REMOVE, peer, (int64_t)seq, &changes);
    return err == PB_OK && changes == 0 ? PB_ERR_NOT_FOUND : err;
}

static pb_err op_outbox_peers(void *impl, char ***out, size_t *count)
{
    static const rows_spec spec = {ST_OUTBOX_PEERS, sizeof(char *), str_row, strings_free};
    return read_rows(impl, &spec, NULL, 0, NULL, out, count);
}

/* ---- receiving -------------------------------------------------------------------------- */

/* An event applied: its user (the model log's index order), inbox seq and index. */
struct applied {
    int64_t user, seq;
    size_t index;
};

static int applied_cmp(const void *a, const void *b)
{
    const struct applied *x = a, *y = b;
    if (x->user != y->user) return x->user < y->user ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

struct receive_ctx {
    const char *from;
    uint64_t epoch; /* the sender's (with seqs) */
    uint64_t after; /* a window batch's postbox_after (with seqs; 0: none) */
    const pb_event *evs;
    const pb_encoded *enc;
    const uint64_t *seqs;
    size_t n;
    int64_t now;
    uint64_t new_epoch;   /* send_epoch of a peer row created now */
    struct applied *ap;   /* scratch, n entries */
    size_t *idx;          /* scratch, n entries */
    pb_batch_stmt *batch; /* scratch, n entries */
    pb_recv_result res;   /* out */
};

/* The statement applying one event to the local users' state (PROTOCOL.md section 5);
 * false when the event changes no state (a rejected invite: the homeserver learns it from
 * the inbox). */
static bool apply_stmt(const char *from, const pb_event *ev, int64_t seq, pb_batch_stmt *q)
{
    switch (ev->kind) {
    case PB_EV_USER_ADDED_TO_GUILD:
    case PB_EV_USER_REMOVED_FROM_GUILD:
        *q = (pb_batch_stmt){ev->kind == PB_EV_USER_ADDED_TO_GUILD ? ST_APPLY_ADD : ST_APPLY_REMOVE,
                             {A_INT(ev->user_id), A_TEXT(from), A_INT(ev->guild_id), A_INT(seq)},
                             4};
        return true;
    case PB_EV_USER_INVITED:
        *q = (pb_batch_stmt){ST_APPLY_INVITE,
                             {A_INT(ev->user_id), A_TEXT(from), A_TEXT(ev->invite_id),
                              A_INT(ev->inviter_id), A_INT(seq)},
                             5};
        return true;
    case PB_EV_USER_REJECTED_INVITE:
    case PB_EV_NONE: /* encode_events refused it already */
        break;
    }
    return false;
}

/* SQLite's receive rows per statement: RECV_ROWS, then RECV_ROWS_SMALL, then one */
#define RECV_ROWS 64
#define RECV_ROWS_SMALL 8

static size_t rows_chunk(size_t left)
{
    return left >= RECV_ROWS ? RECV_ROWS : left >= RECV_ROWS_SMALL ? RECV_ROWS_SMALL : 1;
}

/* SQLite: the inbox rows of the events ap[0..na) in their order (their seqs into ap: the
 * rowids of one statement are consecutive, the last is last_id), then their model-log
 * rows in user order (*nq: how many), up to RECV_ROWS rows per statement. */
static pb_err receive_rows(pb_db *db, struct receive_ctx *r, size_t na, size_t *nq)
{
    const pb_store_driver *d = D;
    pb_arg *a = pb_xmalloc((1 + 6 * RECV_ROWS) * sizeof *a);
    pb_err err = PB_OK;
    for (size_t k = 0, c; k < na && err == PB_OK; k += c) {
        c = rows_chunk(na - k);
        a[0] = A_TEXT(r->from);
        a[1] = A_INT(r->now);
        for (size_t j = 0; j < c; j++)
            a[2 + j] = ENC_ARG(r->enc, r->ap[k + j].index);
        if (c == 1)
            err = EXEC(db, ST_INBOX_INSERT, NULL, a[0], a[2], a[1]);
        else
            err = pb_db_exec(d, db,
                             c == RECV_ROWS ? ST_INBOX_INSERT_ROWS : ST_INBOX_INSERT_ROWS_SMALL, a,
                             (int)(2 + c), NULL);
        int64_t last = err == PB_OK ? d->last_id(db) : 0;
        for (size_t j = 0; j < c; j++)
            r->ap[k + j].seq = last - (int64_t)(c - 1 - j);
    }
    qsort(r->ap, na, sizeof *r->ap, applied_cmp);
    size_t m = 0; /* the events that change state (apply_stmt) */
    for (size_t k = 0; k < na; k++) {
        pb_event_kind kind = r->evs[r->ap[k].index].kind;
        if (kind == PB_EV_USER_ADDED_TO_GUILD || kind == PB_EV_USER_REMOVED_FROM_GUILD ||
            kind == PB_EV_USER_INVITED)
            r->ap[m++] = r->ap[k];
    }
    for (size_t k = 0, c; k < m && err == PB_OK; k += c) {
        c = rows_chunk(m - k);
        if (c == 1) {
            pb_batch_stmt q;
            if (apply_stmt(r->from, &r->evs[r->ap[k].index], r->ap[k].seq, &q))
                err = pb_db_exec(d, db, q.id, q.a, q.n, NULL);
            continue;
        }
        a[0] = A_TEXT(r->from);
        for (size_t j = 0; j < c; j++) {
            const pb_event *ev = &r->evs[r->ap[k + j].index];
            pb_arg *p = a + 1 + 6 * j;
            p[0] = A_INT(ev->user_id);
            if (ev->kind == PB_EV_USER_INVITED) {
                p[1] = A_INT(3);
                p[2] = A_TEXT(NULL);
                p[3] = A_TEXT(ev->invite_id);
                p[4] = A_INT(ev->inviter_id);
            } else {
                p[1] = A_INT(ev->kind == PB_EV_USER_ADDED_TO_GUILD ? 1 : 2);
                p[2] = A_INT(ev->guild_id);
                p[3] = A_TEXT(NULL);
                p[4] = A_TEXT(NULL);
            }
            p[5] = A_INT(r->ap[k + j].seq);
        }
        err = pb_db_exec(d, db, c == RECV_ROWS ? ST_LOG_INSERT_ROWS : ST_LOG_INSERT_ROWS_SMALL, a,
                         (int)(1 + 6 * c), NULL);
    }
    *nq = m;
    free(a);
    return err;
}

/* The sender's peers upsert comes first: on PostgreSQL it locks the sender's row until
 * commit (one receive per sender at a time, every node), so the (sender, epoch) row read
 * next cannot change before this one commits. The events not yet received go to the
 * inbox (SQLite: one row each, AUTOINCREMENT; PostgreSQL: seqs reserved from the locked
 * counter row as the last step, one statement) and are applied by user (the order of the
 * model log's index; events of one user keep their order). With seqs, the (sender, epoch)
 * row is written last, and when it is new the sender's epochs beyond
 * PB_STORE_RECV_EPOCHS_MAX are pruned. */
/* tests: the first receive of a sender's numbered batch fails on its own (fault point
 * store.fail-receive-once): with SQLite the batches queued behind it in the same group
 * commit find their predecessor missing */
static atomic_bool g_failed_once;

static pb_err receive_tx(pb_db *db, void *ctx)
{
    struct receive_ctx *r = ctx;
    const pb_store_driver *d = D;
    if (r->seqs && pb_fault("store.fail-receive-once") && !atomic_exchange(&g_failed_once, true)) {
        PB_WARN(r->from, "fault point store.fail-receive-once: this receive fails");
        return PB_ERR_STORE;
    }
    int64_t now_s = r->now / 1000, recv = 0, known = 0, first = 0;
    pb_recv_result res = {0, 0, 0, 0};
    pb_err err = EXEC(db, ST_PEER_TOUCH, NULL, A_TEXT(r->from), A_INT(now_s), A_INT(now_s),
                      A_INT(r->new_epoch));
    if (err == PB_OK && r->seqs) {
        pb_cur cur;
        bool bad = false, found = false;
        err = d->query(db, ST_RECV_EPOCH_GET, (const pb_arg[]){A_TEXT(r->from), A_INT(r->epoch)}, 2,
                       &cur);
        if (err != PB_OK) return err;
        err = d->step(&cur, &found);
        if (err == PB_OK && found) recv = d->col_int(&cur, 0, &bad);
        d->done(&cur);
        known = found;
        if (err == PB_OK && bad) err = PB_ERR_CORRUPT;
        /* a window batch never applies across a gap (store.h pb_store_receive_async) */
        if (err == PB_OK && r->after > (uint64_t)recv) err = PB_ERR_BUSY;
    }
    if (err != PB_OK) return err;
    size_t na = 0, nq = 0;
    for (size_t i = 0; i < r->n; i++) {
        if (r->seqs && r->seqs[i] <= (uint64_t)recv) {
            res.duplicates++;
            continue;
        }
        r->idx[na] = i;
        r->ap[na++] = (struct applied){(int64_t)r->evs[i].user_id, 0, i};
        if (r->seqs) recv = (int64_t)r->seqs[i];
    }
    res.applied = na;
    bool rows = !d->arrays && d->last_id && pb_store_sql(d->engine, ST_INBOX_INSERT_ROWS);
    if (rows) err = receive_rows(db, r, na, &nq);
    for (size_t k = 0; k < na && err == PB_OK && !d->arrays && !rows; k++) {
        err = EXEC(db, ST_INBOX_INSERT, NULL, A_TEXT(r->from), ENC_ARG(r->enc, r->ap[k].index),
                   A_INT(r->now));
        r->ap[k].seq = d->last_id ? d->last_id(db) : 0;
    }
    if (err != PB_OK) return err;
    if (!rows) qsort(r->ap, na, sizeof *r->ap, applied_cmp);
    for (size_t k = 0; k < na && err == PB_OK && !rows; k++) { /* one statement each */
        pb_batch_stmt one, *q = d->batch ? &r->batch[nq] : &one;
        if (!apply_stmt(r->from, &r->evs[r->ap[k].index], r->ap[k].seq, q)) continue;
        nq++;
        if (!d->batch) err = pb_db_exec(d, db, q->id, q->a, q->n, NULL);
    }
    if (err == PB_OK && d->batch) err = d->batch(db, r->batch, nq);
    if (err == PB_OK && d->applied) d->applied(db, (int64_t)nq);
    if (err == PB_OK && r->seqs) {
        err = EXEC(db, ST_RECV_EPOCH_SET, NULL, A_TEXT(r->from), A_INT(r->epoch), A_INT(recv),
                   A_INT(r->now));
        if (err == PB_OK && !known)
            err = EXEC(db, ST_RECV_EPOCH_PRUNE, NULL, A_TEXT(r->from), A_INT(r->epoch),
                       A_INT(PB_STORE_RECV_EPOCHS_MAX - 1));
        res.ack = (uint64_t)recv;
        res.epoch = r->epoch;
    }
    if (err == PB_OK && na > 0 && d->arrays) { /* last: the counter row is locked to commit */
        err = QINT(db, ST_INBOX_RESERVE, &first, A_INT(na));
        if (err == PB_OK && first < (int64_t)na) {
            PB_ERROR(NULL, "store: inbox_seq counter row missing or bad");
            err = PB_ERR_CORRUPT;
        }
        if (err == PB_OK)
            err = EXEC(db, ST_INBOX_INSERT_EVENTS, NULL, A_INT(first - (int64_t)na + 1),
                       A_TEXT(r->from), A_EVENTS(r->enc, r->idx, na), A_INT(r->now));
    }
    if (err == PB_OK) r->res = res;
    return err;
}

/* receive_tx's context with its scratch arrays in one block (ap, idx, and batch for a
 * driver that batches); the caller frees r->ap. */
static void receive_ctx_init(st *s, struct receive_ctx *r, const char *from, uint64_t epoch,
                             const pb_event *evs, const pb_encoded *enc, const uint64_t *seqs,
                             size_t n, int64_t now)
{
    size_t m = n ? n : 1, batch = s->d->batch ? sizeof(pb_batch_stmt) : 0;
    struct applied *scratch = pb_xmalloc(m * (sizeof(struct applied) + sizeof(size_t) + batch));
    *r = (struct receive_ctx){.from = from,
                              .epoch = epoch,
                              .evs = evs,
                              .enc = enc,
                              .seqs = seqs,
                              .n = n,
                              .now = now,
                              .new_epoch = pb_store_epoch_random(0),
                              .ap = scratch,
                              .idx = (size_t *)(scratch + m)};
    r->batch = batch ? (pb_batch_stmt *)(r->idx + m) : NULL;
}

static pb_err op_receive(void *impl, const char *from, uint64_t epoch, const pb_event *evs,
                         const uint64_t *seqs, size_t n, int64_t now, pb_recv_result *res)
{
    pb_encoded enc;
    pb_err err = encode_events(evs, n, &enc);
    if (err == PB_OK) {
        struct receive_ctx r;
        receive_ctx_init(impl, &r, from, epoch, evs, &enc, seqs, n, now);
        err = write_tx(impl, receive_tx, &r, false);
        if (err == PB_OK) *res = r.res;
        free(r.ap);
    }
    encoded_free(&enc);
    return err;
}

/* An asynchronous receive: receive_tx's context, the encoded events and `from` owned. */
struct receive_async {
    struct receive_ctx r;
    pb_encoded enc;
    char *from;
    pb_store_recv_cb cb;
    void *arg;
};

static void receive_async_free(struct receive_async *x)
{
    encoded_free(&x->enc);
    free(x->r.ap);
    free(x->from);
    free(x);
}

static void receive_done(void *ctx, pb_err err)
{
    struct receive_async *x = ctx;
    x->cb(x->arg, err, err == PB_OK ? &x->r.res : NULL);
    receive_async_free(x);
}

static pb_err op_receive_async(void *impl, const char *from, uint64_t epoch, uint64_t after,
                               const pb_event *evs, const uint64_t *seqs, size_t n, int64_t now,
                               pb_store_recv_cb cb, void *arg)
{
    st *s = impl;
    struct receive_async *x = pb_xcalloc(1, sizeof *x);
    pb_err err = encode_events(evs, n, &x->enc);
    x->from = pb_xstrdup(from);
    x->cb = cb;
    x->arg = arg;
    receive_ctx_init(s, &x->r, x->from, epoch, evs, &x->enc, seqs, n, now);
    x->r.after = after;
    if (err == PB_OK) err = write_async(s, receive_tx, &x->r, false, receive_done);
    if (err != PB_OK) receive_async_free(x);
    return err;
}

static pb_err op_recv_latest(void *impl, const char *from, uint64_t *epoch, uint64_t *recv_seq)
{
    int64_t v[2] = {0, 0};
    pb_err err = READ_ONE(impl, ST_RECV_LATEST, ints_row, v, (void *)2, A_TEXT(from));
    if (err != PB_OK && err != PB_ERR_NOT_FOUND) return err;
    *epoch = (uint64_t)v[0];
    *recv_seq = (uint64_t)v[1];
    return PB_OK;
}

/* ---- inbox ------------------------------------------------------------------------------ */

static pb_err inbox_row(const pb_store_driver *d, const pb_cur *c, void *elem, size_t i, void *ctx)
{
    (void)i;
    (void)ctx;
    pb_inbox_item *it = elem;
    pb_err err = PB_OK;
    bool bad = false;
    it->seq = (uint64_t)d->col_int(c, 0, &bad);
    it->from = col_str(d, c, 1);
    it->received_at = d->col_int(c, 5, &bad);
    if (!d->is_null(c, 6)) {
        it->notice = col_str(d, c, 6);
        if (!d->is_null(c, 2)) err = PB_ERR_CORRUPT;
    } else if (d->is_null(c, 2)) {
        it->is_rename = true;
        it->old_id = col_str(d, c, 3);
        it->new_id = col_str(d, c, 4);
        if (!it->old_id || !it->new_id) err = PB_ERR_CORRUPT;
    } else {
        err = col_event(d, c, 2, "inbox", &it->ev);
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

static pb_err op_inbox_read(void *impl, uint64_t after, size_t limit, pb_inbox_item **items,
                            size_t *count)
{
    if (after >= (uint64_t)INT64_MAX) { /* no stored seq is larger */
        *items = NULL;
        *count = 0;
        return PB_OK;
    }
    return read_rows(impl, &inbox_rows, (const pb_arg[]){A_INT(after), A_INT(clamp64(limit))}, 2,
                     NULL, items, count);
}

static pb_err op_inbox_last_seq(void *impl, uint64_t *seq)
{
    int64_t v = 0;
    pb_err err = read_one(impl, ST_INBOX_LAST, NULL, 0, ints_row, &v, (void *)1);
    if (err == PB_OK) *seq = (uint64_t)v;
    return err == PB_ERR_NOT_FOUND ? PB_ERR_CORRUPT : err;
}

/* ---- local users' federated state ------------------------------------------------------- */

static pb_err guild_row(const pb_store_driver *d, const pb_cur *c, void *elem, size_t i, void *ctx)
{
    (void)i;
    (void)ctx;
    pb_guild_entry *e = elem;
    bool bad = false;
    e->guild_id = (uint64_t)d->col_int(c, 0, &bad);
    e->server_id = col_str(d, c, 1);
    return e->server_id && !bad ? PB_OK : PB_ERR_CORRUPT;
}

static void guilds_free(void *arr, size_t n)
{
    pb_guild_entries_free(arr, n);
}

static pb_err op_guilds(void *impl, uint64_t user_id, pb_guild_entry **out, size_t *count)
{
    static const rows_spec spec = {ST_GUILD_LIST, sizeof(pb_guild_entry), guild_row, guilds_free};
    return read_rows(impl, &spec, (const pb_arg[]){A_INT(user_id)}, 1, NULL, out, count);
}

static pb_err invite_row(const pb_store_driver *d, const pb_cur *c, void *elem, size_t i, void *ctx)
{
    (void)i;
    (void)ctx;
    pb_invite_entry *e = elem;
    bool bad = false;
    e->invite_id = col_str(d, c, 0);
    e->server_id = col_str(d, c, 1);
    e->inviter_id = (uint64_t)d->col_int(c, 2, &bad);
    return e->invite_id && e->server_id && !bad ? PB_OK : PB_ERR_CORRUPT;
}

static void invites_free(void *arr, size_t n)
{
    pb_invite_entries_free(arr, n);
}

static pb_err op_invites(void *impl, uint64_t user_id, pb_invite_entry **out, size_t *count)
{
    static const rows_spec spec = {ST_INVITE_LIST, sizeof(pb_invite_entry), invite_row,
                                   invites_free};
    return read_rows(impl, &spec, (const pb_arg[]){A_INT(user_id)}, 1, NULL, out, count);
}

/* ---- renames ---------------------------------------------------------------------------- */

/* PB_OK when server_id has a peers row (PostgreSQL: now locked until commit),
 * PB_ERR_NOT_FOUND when not. */
static pb_err peer_lock(pb_db *db, const char *server_id)
{
    int64_t found = 0;
    pb_err err = QINT(db, ST_PEER_LOCK, &found, A_TEXT(server_id));
    return err == PB_OK && !found ? PB_ERR_NOT_FOUND : err;
}

struct rename_ctx {
    const char *old_id, *new_id;
    const uint8_t *key;
    int64_t now;
};

/* Re-labels every table explicitly (no foreign keys); a NEW row created meanwhile by
 * another node makes the peers update a unique violation: PB_ERR_EXISTS. */
static pb_err peer_rename_tx(pb_db *db, void *ctx)
{
    static const int steps[] = {
        ST_RENAME_OUTBOX,       ST_RENAME_GUILDS_DROP, ST_RENAME_GUILDS,
        ST_RENAME_INVITES_DROP, ST_RENAME_INVITES,     ST_RENAME_RENAMES_OUT,
        ST_RENAME_LEASES_DROP,  ST_RENAME_LEASES,      ST_RENAME_RECV_EPOCHS_DROP,
        ST_RENAME_RECV_EPOCHS,  ST_RENAME_FLUSHES,
    };
    struct rename_ctx *r = ctx;
    int64_t seq = 0;
    pb_err err = peer_lock(db, r->old_id);
    if (err != PB_OK) return err;
    err = peer_lock(db, r->new_id);
    if (err == PB_OK) return PB_ERR_EXISTS;
    if (err != PB_ERR_NOT_FOUND) return err;
    err = EXEC(db, ST_RENAME_PEER, NULL, A_TEXT(r->old_id), A_TEXT(r->new_id),
               A_BLOB(r->key, PB_PUBKEY_LEN), A_INT(r->now / 1000));
    /* the tables alone hold the state to re-label (SQLite merges its model log) */
    if (err == PB_OK && D->rename_prepare) err = D->rename_prepare(db);
    for (size_t k = 0; k < sizeof steps / sizeof steps[0] && err == PB_OK; k++)
        err = EXEC(db, steps[k], NULL, A_TEXT(r->old_id), A_TEXT(r->new_id));
    if (err == PB_OK) err = EXEC(db, ST_RENAME_IN_REMOVE, NULL, A_TEXT(r->old_id));
    if (err == PB_OK && pb_store_sql(D->engine, ST_INBOX_RESERVE))
        err = QINT(db, ST_INBOX_RESERVE, &seq, A_INT(1));
    if (err == PB_OK)
        err = EXEC(db, ST_INBOX_INSERT_RENAME, NULL, A_INT(seq), A_TEXT(r->new_id),
                   A_TEXT(r->old_id), A_TEXT(r->new_id), A_INT(r->now));
    return err;
}

static pb_err op_peer_rename(void *impl, const char *old_id, const char *new_id,
                             const uint8_t new_key[PB_PUBKEY_LEN], int64_t now)
{
    struct rename_ctx r = {old_id, new_id, new_key, now};
    return write_tx(impl, peer_rename_tx, &r, false);
}

static pb_err self_rename_tx(pb_db *db, void *ctx)
{
    struct rename_ctx *r = ctx;
    pb_err err = EXEC(db, ST_META_SET, NULL, A_TEXT("server_id"), A_TEXT(r->new_id));
    if (err == PB_OK)
        err = EXEC(db, ST_SELF_RENAME_UPSERT, NULL, A_TEXT(r->old_id), A_TEXT(r->new_id),
                   A_INT(r->now));
    /* renamed back to the ID a peer still knows: nothing to tell it */
    if (err == PB_OK) err = pb_db_exec(D, db, ST_SELF_RENAME_DROP, NULL, 0, NULL);
    return err;
}

static pb_err op_self_rename(void *impl, const char *old_id, const char *new_id, int64_t now)
{
    struct rename_ctx r = {old_id, new_id, NULL, now};
    return write_tx(impl, self_rename_tx, &r, false);
}

static pb_err rename_out_row(const pb_store_driver *d, const pb_cur *c, void *elem, size_t i,
                             void *ctx)
{
    (void)i;
    (void)ctx;
    pb_rename_out *o = elem;
    bool bad = false;
    o->peer = col_str(d, c, 0);
    o->old_id = col_str(d, c, 1);
    o->new_id = col_str(d, c, 2);
    o->attempts = (uint32_t)d->col_int(c, 3, &bad);
    o->next_attempt_at = d->col_int(c, 4, &bad);
    o->last_error = col_str(d, c, 5);
    o->renamed_at = d->col_int(c, 6, &bad);
    return o->peer && o->old_id && o->new_id && !bad ? PB_OK : PB_ERR_CORRUPT;
}

static void rename_outs_free(void *arr, size_t n)
{
    pb_rename_outs_free(arr, n);
}

static pb_err op_rename_out_list(void *impl, pb_rename_out **out, size_t *count)
{
    static const rows_spec spec = {ST_RENAME_OUT_LIST, sizeof(pb_rename_out), rename_out_row,
                                   rename_outs_free};
    return read_rows(impl, &spec, NULL, 0, NULL, out, count);
}

static pb_err op_rename_out_done(void *impl, const char *peer, const char *new_id)
{
    return WRITE1(impl, ST_RENAME_OUT_DONE, NULL, A_TEXT(peer), A_TEXT(new_id));
}

static pb_err op_rename_out_failed(void *impl, const char *peer, uint32_t attempts,
                                   int64_t next_attempt_at, const char *error)
{
    int64_t changes = 0;
    pb_err err = WRITE1(impl, ST_RENAME_OUT_FAILED, &changes, A_TEXT(peer), A_INT(attempts),
                        A_INT(next_attempt_at), A_TEXT(error));
    return err == PB_OK && changes == 0 ? PB_ERR_NOT_FOUND : err;
}

/* ---- pending incoming renames ----------------------------------------------------------- */

/* Under the old ID's peer row lock (PostgreSQL: nodes adding at once count in turn). */
static pb_err rename_in_add_tx(pb_db *db, void *ctx)
{
    struct rename_ctx *r = ctx;
    int64_t n[2] = {0, 0};
    pb_err err = peer_lock(db, r->old_id);
    if (err != PB_OK && err != PB_ERR_NOT_FOUND) return err;
    err = pb_db_ints(D, db, ST_RENAME_IN_COUNT,
                     (const pb_arg[]){A_TEXT(r->old_id), A_TEXT(r->new_id)}, 2, n, 2);
    if (err != PB_OK) return err;
    if (n[1] > 0) return PB_ERR_EXISTS;
    if (n[0] >= PB_STORE_RENAMES_IN_MAX) return PB_ERR_TOO_BIG;
    return EXEC(db, ST_RENAME_IN_ADD, NULL, A_TEXT(r->old_id), A_TEXT(r->new_id), A_INT(r->now));
}

static pb_err op_rename_in_add(void *impl, const char *old_id, const char *new_id, int64_t now)
{
    struct rename_ctx r = {old_id, new_id, NULL, now};
    return write_tx(impl, rename_in_add_tx, &r, false);
}

struct rename_in_found {
    char *old_id;
    int64_t at;
};

static pb_err rename_in_found_row(const pb_store_driver *d, const pb_cur *c, void *elem, size_t i,
                                  void *ctx)
{
    (void)i;
    (void)ctx;
    struct rename_in_found *f = elem;
    bool bad = false;
    f->at = d->col_int(c, 1, &bad);
    f->old_id = bad ? NULL : col_str(d, c, 0);
    return f->old_id ? PB_OK : PB_ERR_CORRUPT;
}

static pb_err op_rename_in_find(void *impl, const char *new_id, char **old_id, int64_t *created_at)
{
    struct rename_in_found f = {NULL, 0};
    pb_err err = READ_ONE(impl, ST_RENAME_IN_FIND, rename_in_found_row, &f, NULL, A_TEXT(new_id));
    if (err == PB_OK) {
        *old_id = f.old_id;
        *created_at = f.at;
    }
    return err;
}

static pb_err op_rename_in_remove(void *impl, const char *old_id)
{
    return WRITE1(impl, ST_RENAME_IN_REMOVE, NULL, A_TEXT(old_id));
}

static pb_err rename_in_row(const pb_store_driver *d, const pb_cur *c, void *elem, size_t i,
                            void *ctx)
{
    (void)i;
    (void)ctx;
    pb_rename_in *o = elem;
    bool bad = false;
    o->old_id = col_str(d, c, 0);
    o->new_id = col_str(d, c, 1);
    o->created_at = d->col_int(c, 2, &bad);
    return o->old_id && o->new_id && !bad ? PB_OK : PB_ERR_CORRUPT;
}

static void rename_ins_free(void *arr, size_t n)
{
    pb_rename_ins_free(arr, n);
}

static pb_err op_rename_in_list(void *impl, pb_rename_in **out, size_t *count)
{
    static const rows_spec spec = {ST_RENAME_IN_LIST, sizeof(pb_rename_in), rename_in_row,
                                   rename_ins_free};
    return read_rows(impl, &spec, NULL, 0, NULL, out, count);
}

static pb_err op_rename_in_expire(void *impl, int64_t before, size_t *removed)
{
    int64_t changes = 0;
    pb_err err = WRITE1(impl, ST_RENAME_IN_EXPIRE, &changes, A_INT(before));
    if (err == PB_OK) *removed = (size_t)changes;
    return err;
}

/* ---- outbound ownership ----------------------------------------------------------------- */

static pb_err op_lease_acquire(void *impl, const char *peer, const char *node_id, int64_t now_ms,
                               int64_t ttl_ms, bool *held)
{
    int64_t changes = 0;
    pb_err err = WRITE1(impl, ST_LEASE_ACQUIRE, &changes, A_TEXT(peer), A_TEXT(node_id),
                        A_INT(now_ms), A_INT(ttl_ms));
    if (err == PB_OK) *held = changes > 0;
    return err;
}

static pb_err op_lease_release(void *impl, const char *peer, const char *node_id)
{
    return WRITE1(impl, ST_LEASE_RELEASE, NULL, A_TEXT(peer), A_TEXT(node_id));
}

/* ---- queue control ---------------------------------------------------------------------- */

struct flush_ctx {
    const char *peer; /* NULL: every queued peer */
    int64_t now;
    bool record;
    char **peers; /* out */
    size_t n, cap;
};

static pb_err flush_tx(pb_db *db, void *ctx)
{
    struct flush_ctx *f = ctx;
    const pb_store_driver *d = D;
    pb_cur cur;
    bool row = false;
    pb_store_strings_free(f->peers, f->n); /* a retried transaction starts again */
    f->peers = NULL;
    f->n = f->cap = 0;
    pb_err err = d->query(db, ST_FLUSH, (const pb_arg[]){A_TEXT(f->peer), A_INT(f->now)}, 2, &cur);
    if (err != PB_OK) return err;
    while ((err = d->step(&cur, &row)) == PB_OK && row) {
        char *id = col_str(d, &cur, 0);
        if (!id) {
            err = PB_ERR_CORRUPT;
            break;
        }
        if (f->n == f->cap) {
            f->cap = f->cap ? 2 * f->cap : 8;
            f->peers = pb_xrealloc(f->peers, f->cap * sizeof *f->peers);
        }
        f->peers[f->n++] = id;
    }
    d->done(&cur);
    for (size_t i = 0; f->record && i < f->n && err == PB_OK; i++)
        err = EXEC(db, ST_FLUSH_RECORD, NULL, A_TEXT(f->peers[i]), A_INT(f->now));
    return err;
}

static pb_err op_peer_flush(void *impl, const char *peer, int64_t now, bool record, char ***peers,
                            size_t *n)
{
    struct flush_ctx f = {peer, now, record, NULL, 0, 0};
    pb_err err = write_tx(impl, flush_tx, &f, false);
    if (err != PB_OK) {
        pb_store_strings_free(f.peers, f.n);
        return err;
    }
    *peers = f.peers;
    *n = f.n;
    return PB_OK;
}

static pb_err flush_row(const pb_store_driver *d, const pb_cur *c, void *elem, size_t i, void *ctx)
{
    (void)i;
    (void)ctx;
    pb_flush_req *r = elem;
    bool bad = false;
    r->peer = col_str(d, c, 0);
    r->requested_at = d->col_int(c, 1, &bad);
    return r->peer && !bad ? PB_OK : PB_ERR_CORRUPT;
}

static void flush_reqs_free(void *arr, size_t n)
{
    pb_flush_reqs_free(arr, n);
}

static pb_err op_flush_list(void *impl, pb_flush_req **out, size_t *count)
{
    static const rows_spec spec = {ST_FLUSH_LIST, sizeof(pb_flush_req), flush_row, flush_reqs_free};
    return read_rows(impl, &spec, NULL, 0, NULL, out, count);
}

static pb_err op_flush_done(void *impl, const char *peer, int64_t requested_at)
{
    return WRITE1(impl, ST_FLUSH_DONE, NULL, A_TEXT(peer), A_INT(requested_at));
}

struct drop_ctx {
    const char *peer;
    int64_t before;
    const char *reason;
    int64_t now;
    bool record;
    uint64_t e1, e2;  /* two different random non-zero epochs (ST_DROP_PEER) */
    pb_drop_result r; /* out */
};

/* The peer row locked first (as an append does), so that the statistics, the deletion
 * and the counter agree with concurrent appends and acknowledgements of every node. */
static pb_err drop_tx(pb_db *db, void *ctx)
{
    struct drop_ctx *x = ctx;
    int64_t v[5] = {0, 0, 0, 0, 0}, epoch = 0, seq = 0;
    x->r = (pb_drop_result){0, 0, 0, 0, 0, 0, 0};
    pb_err err = peer_lock(db, x->peer);
    if (err == PB_OK)
        err = pb_db_ints(D, db, ST_DROP_STATS, (const pb_arg[]){A_TEXT(x->peer), A_INT(x->before)},
                         2, v, 5);
    if (err != PB_OK) return err;
    if (v[0] < 0 || v[4] < v[0]) return PB_ERR_CORRUPT;
    x->r.remaining = (uint64_t)(v[4] - v[0]);
    if (v[0] == 0) return PB_OK;
    err = EXEC(db, ST_DROP_DELETE, NULL, A_TEXT(x->peer), A_INT(x->before));
    if (err == PB_OK)
        err = QINT(db, ST_DROP_PEER, &epoch, A_TEXT(x->peer), A_INT(v[0]), A_INT(x->e1),
                   A_INT(x->e2));
    if (err != PB_OK) return err;
    char count[24], first[24], last[24];
    snprintf(count, sizeof count, "%lld", (long long)v[0]);
    snprintf(first, sizeof first, "%lld", (long long)v[1]);
    snprintf(last, sizeof last, "%lld", (long long)v[2]);
    json_t *j = json_pack("{s:{s:s,s:s,s:s,s:s,s:s,s:I}}", "queueDropped", "peer", x->peer,
                          "reason", x->reason, "count", count, "firstSeq", first, "lastSeq", last,
                          "oldestCreatedAt", (json_int_t)v[3]);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text) return PB_ERR_INVAL; /* a reason or peer that is not UTF-8 */
    if (pb_store_sql(D->engine, ST_INBOX_RESERVE)) err = QINT(db, ST_INBOX_RESERVE, &seq, A_INT(1));
    if (err == PB_OK)
        err = QINT(db, ST_INBOX_INSERT_NOTICE, &seq, A_INT(seq), A_TEXT(x->peer), A_TEXT(text),
                   A_INT(x->now));
    free(text);
    if (err == PB_OK && x->record)
        err = EXEC(db, ST_FLUSH_RECORD, NULL, A_TEXT(x->peer), A_INT(x->now));
    if (err != PB_OK) return err;
    x->r.count = (uint64_t)v[0];
    x->r.first_seq = (uint64_t)v[1];
    x->r.last_seq = (uint64_t)v[2];
    x->r.oldest_at = v[3];
    x->r.epoch = (uint64_t)epoch;
    x->r.notice_seq = (uint64_t)seq;
    return PB_OK;
}

static pb_err op_outbox_drop(void *impl, const char *peer, int64_t before, const char *reason,
                             int64_t now, bool record, pb_drop_result *res)
{
    struct drop_ctx x = {peer, before, reason, now, record, pb_store_epoch_random(0), 0, {0}};
    x.e2 = pb_store_epoch_random(x.e1);
    pb_err err = write_tx(impl, drop_tx, &x, false);
    if (err == PB_OK) *res = x.r;
    return err;
}

static pb_err op_outbox_expired_peers(void *impl, int64_t before, char ***out, size_t *count)
{
    static const rows_spec spec = {ST_EXPIRED_PEERS, sizeof(char *), str_row, strings_free};
    return read_rows(impl, &spec, (const pb_arg[]){A_INT(before)}, 1, NULL, out, count);
}

/* ---- monitoring ------------------------------------------------------------------------- */

_Static_assert(PB_QSHAPE_BUCKETS == 7, "ST_QSHAPE counts seven buckets");

static pb_err qshape_row(const pb_store_driver *d, const pb_cur *c, void *elem, size_t i, void *ctx)
{
    (void)i;
    (void)ctx;
    pb_qshape_row *q = elem;
    bool bad = false;
    q->peer = col_str(d, c, 0);
    q->total = (uint64_t)d->col_int(c, 1, &bad);
    q->oldest_at = d->col_int(c, 2, &bad);
    for (int k = 0; k < PB_QSHAPE_BUCKETS; k++)
        q->counts[k] = (uint64_t)d->col_int(c, 3 + k, &bad);
    return q->peer && !bad ? PB_OK : PB_ERR_CORRUPT;
}

static void qshape_rows_free(void *arr, size_t n)
{
    pb_qshape_rows_free(arr, n);
}

static pb_err op_qshape(void *impl, int64_t now_ms, bool buckets, pb_qshape_row **rows, size_t *n)
{
    static const rows_spec shape = {ST_QSHAPE, sizeof(pb_qshape_row), qshape_row, qshape_rows_free};
    static const rows_spec summary = {ST_QUEUE_SUMMARY, sizeof(pb_qshape_row), qshape_row,
                                      qshape_rows_free};
    return buckets ? read_rows(impl, &shape, (const pb_arg[]){A_INT(now_ms)}, 1, NULL, rows, n)
                   : read_rows(impl, &summary, NULL, 0, NULL, rows, n);
}

static pb_err mode_count_row(const pb_store_driver *d, const pb_cur *c, void *elem, size_t i,
                             void *ctx)
{
    (void)elem;
    (void)i;
    uint64_t *counts = ctx;
    bool bad = false;
    int64_t mode = d->col_int(c, 0, &bad);
    if (bad || mode < PB_MODE_PUSH || mode > PB_MODE_PARKED) {
        PB_ERROR(NULL, "store: bad peer mode %lld", (long long)mode);
        return PB_ERR_CORRUPT;
    }
    counts[mode] = (uint64_t)d->col_int(c, 1, &bad);
    return bad ? PB_ERR_CORRUPT : PB_OK;
}

static pb_err op_peer_mode_counts(void *impl, uint64_t counts[3])
{
    uint64_t c[3] = {0, 0, 0};
    void *arr = NULL;
    size_t n = 0;
    const rows_spec spec = {ST_PEER_MODE_COUNTS, 1, mode_count_row, nothing_free};
    pb_err err = read_rows(impl, &spec, NULL, 0, c, &arr, &n);
    free(arr);
    if (err == PB_OK) memcpy(counts, c, sizeof c);
    return err;
}

static pb_err op_inbox_unread(void *impl, uint64_t after, uint64_t *count, int64_t *oldest_at)
{
    int64_t v[2] = {0, 0}; /* oldest_at: NULL (none) reads as 0 */
    pb_err err = READ_ONE(impl, ST_INBOX_UNREAD, ints_row, v, (void *)2, A_INT(clamp64(after)));
    if (err == PB_OK) {
        *count = (uint64_t)v[0];
        *oldest_at = v[1];
    }
    return err == PB_ERR_NOT_FOUND ? PB_ERR_CORRUPT : err;
}

/* ---- test-only fault points ------------------------------------------------------------- */

#ifdef PB_FAULTS
static void op_fault_set(void *impl, pb_err err)
{
    pb_store_faults *f = ((st *)impl)->d->faults(((st *)impl)->eng);
    pthread_mutex_lock(f->mu);
    f->fault = err;
    pthread_mutex_unlock(f->mu);
}

static void op_fault_hold(void *impl, bool hold)
{
    pb_store_faults *f = ((st *)impl)->d->faults(((st *)impl)->eng);
    pthread_mutex_lock(f->mu);
    f->hold = hold;
    pthread_cond_broadcast(f->cond);
    pthread_mutex_unlock(f->mu);
}

static size_t op_fault_queued(void *impl)
{
    pb_store_faults *f = ((st *)impl)->d->faults(((st *)impl)->eng);
    pthread_mutex_lock(f->mu);
    size_t n = f->queued;
    pthread_mutex_unlock(f->mu);
    return n;
}

static void op_fault_checkpoint(void *impl, int mode)
{
    pb_store_faults *f = ((st *)impl)->d->faults(((st *)impl)->eng);
    pthread_mutex_lock(f->mu);
    f->checkpoint = mode;
    pthread_mutex_unlock(f->mu);
}

/* Writes the key, then breaks the NOT NULL constraint in the same transaction. */
static pb_err bad_write_tx(pb_db *db, void *ctx)
{
    pb_err err = EXEC(db, ST_META_SET, NULL, A_TEXT(ctx), A_TEXT("partial"));
    if (err == PB_OK) err = EXEC(db, ST_BAD_WRITE, NULL, A_TEXT(ctx));
    return err == PB_OK ? PB_ERR_INTERNAL : err;
}

static pb_err op_fault_bad_write(void *impl, const char *key)
{
    return write_tx(impl, bad_write_tx, (void *)key, false);
}
#endif

#define PB_STORE_OPS(engine)                                                                       \
    {                                                                                              \
        .name = engine##_name, .open = engine##_open, .close = op_close, .ping = op_ping,          \
        .schema_version = op_schema_version, .integrity_check = op_integrity_check,                \
        .backup = op_backup, .stats_get = op_stats_get, .set_executor = op_set_executor,           \
        .meta_get = op_meta_get, .meta_set = op_meta_set, .peer_touch = op_peer_touch,             \
        .peer_key_get = op_peer_key_get, .peer_key_set = op_peer_key_set,                          \
        .peer_list = op_peer_list, .peer_state_get = op_peer_state_get,                            \
        .peer_state_list = op_peer_state_list, .peer_state_set = op_peer_state_set,                \
        .outbox_append = op_outbox_append, .outbox_append_async = op_outbox_append_async,          \
        .outbox_read = op_outbox_read, .outbox_ack = op_outbox_ack,                                \
        .outbox_ack_many = op_outbox_ack_many, .outbox_remove = op_outbox_remove,                  \
        .receive = op_receive, .receive_async = op_receive_async, .inbox_read = op_inbox_read,     \
        .inbox_last_seq = op_inbox_last_seq, .guilds = op_guilds, .invites = op_invites,           \
        .peer_rename = op_peer_rename, .self_rename = op_self_rename,                              \
        .rename_out_list = op_rename_out_list, .rename_out_done = op_rename_out_done,              \
        .rename_out_failed = op_rename_out_failed, .lease_acquire = op_lease_acquire,              \
        .lease_release = op_lease_release, .outbox_peers = op_outbox_peers, .qshape = op_qshape,   \
        .peer_mode_counts = op_peer_mode_counts, .inbox_unread = op_inbox_unread,                  \
        .peer_new_epoch = op_peer_new_epoch, .recv_latest = op_recv_latest,                        \
        .rename_in_add = op_rename_in_add, .rename_in_find = op_rename_in_find,                    \
        .rename_in_remove = op_rename_in_remove, .rename_in_list = op_rename_in_list,              \
        .rename_in_expire = op_rename_in_expire, .peer_flush = op_peer_flush,                      \
        .flush_list = op_flush_list, .flush_done = op_flush_done, .outbox_drop = op_outbox_drop,   \
        .outbox_expired_peers = op_outbox_expired_peers, .fault_set = FAULT(op_fault_set),         \
        .fault_hold = FAULT(op_fault_hold), .fault_queued = FAULT(op_fault_queued),                \
        .fault_bad_write = FAULT(op_fault_bad_write),                                              \
        .fault_checkpoint = FAULT(op_fault_checkpoint), .ordered_receives = engine##_ordered,      \
    }

#ifdef PB_FAULTS
#define FAULT(f) f
#else
#define FAULT(f) NULL
#endif

static const char sqlite_name[] = "sqlite", pg_name[] = "postgres";
#define sqlite_ordered true /* one writer thread takes the queue in order */
#define pg_ordered false    /* ASYNC_THREADS threads, each its own transaction */
const pb_store_ops pb_store_sqlite_ops = PB_STORE_OPS(sqlite);
const pb_store_ops pb_store_pg_ops = PB_STORE_OPS(pg);
