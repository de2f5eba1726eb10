/*
 * store_schema - the store's schema history, written once for every engine, and the
 * migration that applies it (store_driver.h pb_store_migrate).
 *
 * Design: steps[i] takes the schema from version i to i + 1. A step is one SQL text in
 * which the few words the engines spell differently are tokens (below), plus an engine's
 * own addition where a table exists in one engine only (PostgreSQL's inbox_seq counter,
 * SQLite's model log) or a change is made differently (tokens count there too). Opening
 * applies the missing steps in order inside one transaction (PostgreSQL: under an advisory
 * lock, so nodes that start together migrate once) and refuses a database newer than this
 * build. Never edit a released step (an old database must end at the same schema as a new
 * one); append a new one. The tests build old databases from these steps
 * (pb_store_schema_step).
 *
 * Tokens: @K a text key (bytewise order: PostgreSQL's COLLATE "C"), @T text, @I integer
 * (int64), @S a small integer, @B bytes, @W WITHOUT ROWID (SQLite's clustered tables),
 * @Q the inbox's seq column, @F the least first_seq of a submission (PostgreSQL claims an
 * ID with 0 inside the appending transaction), @N the time now in Unix ms.
 *
 * The tables (version 10):
 *  - peers(server_id PK, first_seen, last_contact (s), pubkey, key_fetched_at (s), mode,
 *    attempts, next_attempt_at, last_error, parked_seq, next_seq, recv_seq (unused since
 *    version 5), send_epoch, queued): one row per peer, as receiver of our outbox
 *    (next_seq: the seq the next appended event gets, so an append never counts the
 *    queue; queued: the rows of its outbox, kept in the transactions that change them;
 *    send_epoch: our epoch towards it, random and non-zero for every row created since
 *    version 5, 0 for older ones).
 *  - recv_epochs(peer, epoch, recv_seq, updated_at (ms)) PK (peer, epoch): the peer as
 *    sender to us, per its epoch; at most PB_STORE_RECV_EPOCHS_MAX rows a sender.
 *  - outbox(peer, seq, event, created_at) PK (peer, seq): read, acknowledged and counted
 *    as range scans of one peer's keys; pb_store_outbox_peers is a loose index scan.
 *  - inbox(seq PK, from_id, event, old_id, new_id, received_at, notice): an event row, a
 *    rename row (old_id, new_id) or a notice row (notice: JSON text, e.g. a queue
 *    dropped); seqs consecutive and never reused.
 *  - guilds(user_id, server_id, guild_id) and invites(user_id, server_id, invite_id,
 *    inviter_id), keys starting with user_id; no index on server_id (a peer's rename, rare,
 *    scans them; every received event would otherwise insert into a second B-tree).
 *  - renames_out(peer PK, old_id, new_id, attempts, next_attempt_at, last_error,
 *    renamed_at (ms): when the peer's old_id stopped being ours, the start of its grace);
 *    renames_in(old_id, new_id UNIQUE, created_at (ms) indexed) PK (old_id, new_id): at
 *    most PB_STORE_RENAMES_IN_MAX rows an old ID; leases(peer PK, holder, expires_at (ms));
 *    flushes(peer PK, requested_at (ms)); submissions(id PK, peer, first_seq, count,
 *    created_at (ms) indexed); meta(key PK, value); schema_version. No foreign keys: a
 *    rename re-labels every table explicitly in one transaction.
 *
 * Untrusted input: none (the stored version number is checked).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "util/mem.h"
#include "store/store_driver.h"

static const char *const tokens[][PB_ENGINE__COUNT + 1] = {
    {"@K", "TEXT", "text COLLATE \"C\""},
    {"@T", "TEXT", "text"},
    {"@I", "INTEGER", "bigint"},
    {"@S", "INTEGER", "smallint"},
    {"@B", "BLOB", "bytea"},
    {"@W", " WITHOUT ROWID", ""},
    {"@Q", "INTEGER PRIMARY KEY AUTOINCREMENT", "bigint PRIMARY KEY CHECK (seq >= 1)"},
    {"@F", "1", "0"},
    {"@N", "(CAST(strftime('%s', 'now') AS INTEGER) * 1000)",
     "(floor(extract(epoch FROM now()) * 1000))::bigint"},
};

/* The inbox's rows since version 9: an event, a rename, or a notice. */
#define INBOX_SHAPES                                                                               \
    "((event IS NOT NULL AND old_id IS NULL AND new_id IS NULL AND notice IS NULL) OR"             \
    " (event IS NULL AND old_id IS NOT NULL AND new_id IS NOT NULL AND notice IS NULL) OR"         \
    " (event IS NULL AND old_id IS NULL AND new_id IS NULL AND notice IS NOT NULL))"

/* {SQL of every engine, SQLite's addition, PostgreSQL's addition} (NULL: none) */
static const char *const steps[][1 + PB_ENGINE__COUNT] = {
    /* 1: identity facts and peers with their keys */
    {"CREATE TABLE meta (key @K PRIMARY KEY, value @T NOT NULL);"
     "CREATE TABLE peers (server_id @K PRIMARY KEY, first_seen @I NOT NULL,"
     "  last_contact @I NOT NULL DEFAULT 0,"
     "  pubkey @B NULL CHECK (pubkey IS NULL OR length(pubkey) = 32),"
     "  key_fetched_at @I NOT NULL DEFAULT 0);"},
    /* 2: delivery engine state: per-peer delivery/sequence columns, outbox, inbox, local
     * users' guild lists and pending invites, pending renames of this server */
    {"ALTER TABLE peers ADD COLUMN mode @S NOT NULL DEFAULT 0 CHECK (mode BETWEEN 0 AND 2);"
     "ALTER TABLE peers ADD COLUMN attempts @I NOT NULL DEFAULT 0;"
     "ALTER TABLE peers ADD COLUMN next_attempt_at @I NOT NULL DEFAULT 0;"
     "ALTER TABLE peers ADD COLUMN last_error @T NULL;"
     "ALTER TABLE peers ADD COLUMN parked_seq @I NOT NULL DEFAULT 0;"
     "ALTER TABLE peers ADD COLUMN next_seq @I NOT NULL DEFAULT 1 CHECK (next_seq >= 1);"
     "ALTER TABLE peers ADD COLUMN recv_seq @I NOT NULL DEFAULT 0;"
     "CREATE TABLE outbox (peer @K NOT NULL, seq @I NOT NULL CHECK (seq >= 1),"
     "  event @B NOT NULL, created_at @I NOT NULL, PRIMARY KEY (peer, seq))@W;"
     "CREATE TABLE inbox (seq @Q, from_id @T NOT NULL, event @B NULL, old_id @T NULL,"
     "  new_id @T NULL, received_at @I NOT NULL,"
     "  CHECK ((event IS NOT NULL AND old_id IS NULL AND new_id IS NULL) OR"
     "         (event IS NULL AND old_id IS NOT NULL AND new_id IS NOT NULL)));"
     "CREATE TABLE guilds (user_id @I NOT NULL, server_id @K NOT NULL, guild_id @I NOT NULL,"
     "  PRIMARY KEY (user_id, server_id, guild_id))@W;"
     "CREATE INDEX guilds_by_server ON guilds(server_id);"
     "CREATE TABLE invites (user_id @I NOT NULL, server_id @K NOT NULL,"
     "  invite_id @K NOT NULL, inviter_id @I NOT NULL,"
     "  PRIMARY KEY (user_id, server_id, invite_id))@W;"
     "CREATE INDEX invites_by_server ON invites(server_id);"
     "CREATE TABLE renames_out (peer @K PRIMARY KEY, old_id @T NOT NULL, new_id @T NOT NULL,"
     "  attempts @I NOT NULL DEFAULT 0, next_attempt_at @I NOT NULL DEFAULT 0,"
     "  last_error @T NULL);",
     /* PostgreSQL's inbox seqs come from one counter row (store_pg.c) */
     NULL,
     "CREATE TABLE inbox_seq (id integer PRIMARY KEY CHECK (id = 1),"
     "  last bigint NOT NULL CHECK (last >= 0));"
     "INSERT INTO inbox_seq(id, last) VALUES (1, 0);"},
    /* 3: outbound ownership among several nodes (store.h "outbound ownership") */
    {"CREATE TABLE leases (peer @K PRIMARY KEY, holder @T NOT NULL, expires_at @I NOT NULL)@W;"},
    /* 4: client-chosen submission IDs (store.h pb_store_outbox_submit) */
    {"CREATE TABLE submissions (id @K PRIMARY KEY, peer @K NOT NULL,"
     "  first_seq @I NOT NULL CHECK (first_seq >= @F), count @I NOT NULL CHECK (count >= 1),"
     "  created_at @I NOT NULL)@W;"
     "CREATE INDEX submissions_by_age ON submissions(created_at);"},
    /* 5: sequence epochs (store.h "sequence epochs"): the sender epoch of every peer (0,
     * the legacy epoch, for the rows that exist now; new rows get a random one), the
     * receive state per (sender, epoch) taking over peers.recv_seq as epoch 0, and
     * pending incoming renames */
    {"ALTER TABLE peers ADD COLUMN send_epoch @I NOT NULL DEFAULT 0;"
     "CREATE TABLE recv_epochs (peer @K NOT NULL, epoch @I NOT NULL, recv_seq @I NOT NULL,"
     "  updated_at @I NOT NULL, PRIMARY KEY (peer, epoch))@W;"
     "INSERT INTO recv_epochs(peer, epoch, recv_seq, updated_at)"
     "  SELECT server_id, 0, recv_seq, 0 FROM peers WHERE recv_seq <> 0;"
     "CREATE TABLE renames_in (old_id @K PRIMARY KEY, new_id @K NOT NULL UNIQUE,"
     "  created_at @I NOT NULL);"
     "CREATE INDEX renames_in_by_age ON renames_in(created_at);"},
    /* 6: no index of guilds and invites by server: it doubled the pages each received
     * event dirties (a scattered insert into a second B-tree), for the sake of a peer's
     * rename, which now scans the two tables once */
    {"DROP INDEX IF EXISTS guilds_by_server; DROP INDEX IF EXISTS invites_by_server;"},
    /* 7: SQLite's model log: received guild and invite changes, merged into guilds and
     * invites in key order (store_sqlite.c); seq is the event's inbox seq. PostgreSQL
     * applies them to the tables directly: nothing (the versions stay the same). */
    {"", "CREATE TABLE model_log (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL CHECK (seq >= 1),"
         "  user_id INTEGER NOT NULL, op INTEGER NOT NULL CHECK (op BETWEEN 1 AND 3),"
         "  server_id TEXT NOT NULL, guild_id INTEGER NULL, invite_id TEXT NULL,"
         "  inviter_id INTEGER NULL,"
         "  CHECK ((op < 3 AND guild_id IS NOT NULL AND invite_id IS NULL) OR"
         "   (op = 3 AND guild_id IS NULL AND invite_id IS NOT NULL AND inviter_id IS NOT NULL)));"
         "CREATE INDEX model_log_by_user ON model_log(user_id);"},
    /* 8: each peer's queue length kept with the queue (appends add, deletions subtract in
     * the same transaction), so that reading it never counts the queue */
    {"ALTER TABLE peers ADD COLUMN queued @I NOT NULL DEFAULT 0;"
     "UPDATE peers SET queued = (SELECT count(*) FROM outbox o WHERE o.peer = peers.server_id);"},
    /* 9: queue control (store.h "queue control"): flushes, an operator's flush of a queued
     * peer waiting for the node that holds the peer's lease; the inbox's notice rows (a
     * queue dropped or expired: event, old_id and new_id NULL, notice its JSON text), for
     * which its check is widened: SQLite rebuilds the table (ALTER TABLE RENAME carries its
     * AUTOINCREMENT counter along), PostgreSQL replaces the constraint. Its statements
     * succeed again over themselves (tests set the version back). */
    {"CREATE TABLE IF NOT EXISTS flushes (peer @K PRIMARY KEY, requested_at @I NOT NULL)@W;",
     "CREATE TABLE inbox_new (seq INTEGER PRIMARY KEY AUTOINCREMENT, from_id TEXT NOT NULL,"
     "  event BLOB NULL, old_id TEXT NULL, new_id TEXT NULL, received_at INTEGER NOT NULL,"
     "  notice TEXT NULL, CONSTRAINT inbox_check CHECK " INBOX_SHAPES ");"
     "INSERT INTO inbox_new(seq, from_id, event, old_id, new_id, received_at)"
     "  SELECT seq, from_id, event, old_id, new_id, received_at FROM inbox ORDER BY seq;"
     "DROP TABLE inbox; ALTER TABLE inbox_new RENAME TO inbox;",
     "ALTER TABLE inbox ADD COLUMN IF NOT EXISTS notice text NULL;"
     "ALTER TABLE inbox DROP CONSTRAINT IF EXISTS inbox_check;"
     "ALTER TABLE inbox ADD CONSTRAINT inbox_check CHECK " INBOX_SHAPES ";"},
    /* 10: several pending incoming renames per old ID (a later unproven notice no longer
     * replaces one: the key is (old_id, new_id)), and the time of our own rename that each
     * peer has still to learn (renamed_at: its former ID is accepted from that peer for a
     * bounded time after it; the rows that exist now get the time of the upgrade). SQLite
     * rebuilds both tables, PostgreSQL replaces the key and adds the column. Its
     * statements succeed again over themselves (tests set the version back). */
    {"",
     "CREATE TABLE renames_in_new (old_id TEXT NOT NULL, new_id TEXT NOT NULL UNIQUE,"
     "  created_at INTEGER NOT NULL, PRIMARY KEY (old_id, new_id)) WITHOUT ROWID;"
     "INSERT INTO renames_in_new(old_id, new_id, created_at)"
     "  SELECT old_id, new_id, created_at FROM renames_in;"
     "DROP TABLE renames_in; ALTER TABLE renames_in_new RENAME TO renames_in;"
     "CREATE INDEX renames_in_by_age ON renames_in(created_at);"
     "CREATE TABLE renames_out_new (peer TEXT PRIMARY KEY, old_id TEXT NOT NULL,"
     "  new_id TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
     "  next_attempt_at INTEGER NOT NULL DEFAULT 0, last_error TEXT NULL,"
     "  renamed_at INTEGER NOT NULL DEFAULT 0);"
     "INSERT INTO renames_out_new(peer, old_id, new_id, attempts, next_attempt_at, last_error,"
     "  renamed_at) SELECT peer, old_id, new_id, attempts, next_attempt_at, last_error, @N"
     "  FROM renames_out;"
     "DROP TABLE renames_out; ALTER TABLE renames_out_new RENAME TO renames_out;",
     "ALTER TABLE renames_in DROP CONSTRAINT IF EXISTS renames_in_pkey;"
     "ALTER TABLE renames_in ADD CONSTRAINT renames_in_pkey PRIMARY KEY (old_id, new_id);"
     "ALTER TABLE renames_out ADD COLUMN IF NOT EXISTS renamed_at bigint NOT NULL DEFAULT 0;"
     "UPDATE renames_out SET renamed_at = @N WHERE renamed_at = 0;"},
};

const int pb_store_schema_current = (int)(sizeof steps / sizeof steps[0]);

char *pb_store_schema_step(enum pb_engine e, int v)
{
    if (v < 1 || v > pb_store_schema_current) return NULL;
    const char *const *s = steps[v - 1];
    pb_buf out = PB_BUF_INIT;
    const char *parts[2] = {s[0], s[1 + e]}; /* the common text, then the engine's own */
    for (int i = 0; i < 2; i++)
        for (const char *p = parts[i]; p && *p;) {
            size_t k = 0, nt = sizeof tokens / sizeof tokens[0];
            if (*p == '@')
                while (k < nt && strncmp(p, tokens[k][0], 2) != 0)
                    k++;
            if (*p == '@' && k < nt) {
                pb_buf_append_str(&out, tokens[k][1 + e]);
                p += 2;
            } else {
                pb_buf_append(&out, p++, 1);
            }
        }
    pb_buf_append(&out, "", 1);
    return (char *)pb_buf_steal(&out, NULL);
}

/* Migration transactions: PostgreSQL nodes wait (no lock_timeout) on an advisory lock
 * ("postbox" in ASCII) until the first one has migrated. */
static const char *const migrate_begin[PB_ENGINE__COUNT] = {
    "BEGIN IMMEDIATE",
    "BEGIN; SET LOCAL lock_timeout TO 0; SELECT pg_advisory_xact_lock(31647739056123768)",
};

pb_err pb_store_migrate(const pb_store_driver *d, pb_db *db, const char *where)
{
    int64_t version = 0;
    char *sql = NULL;
    pb_err err = d->script(db, migrate_begin[d->engine], "migrate: begin");
    if (err != PB_OK) return err;
    err = d->script(db,
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    " id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)",
                    "migrate: schema_version");
    if (err == PB_OK) err = pb_db_int(d, db, ST_SCHEMA_VERSION, NULL, 0, &version);
    if (err != PB_OK) goto out;
    if (version < 0 || version > pb_store_schema_current) {
        PB_ERROR(NULL,
                 "store: %s has schema version %lld but this build knows only up to %d; "
                 "refusing to open (use a newer postbox)",
                 where, (long long)version, pb_store_schema_current);
        err = PB_ERR_CONFIG;
        goto out;
    }
    for (int v = (int)version + 1; v <= pb_store_schema_current && err == PB_OK; v++) {
        sql = pb_store_schema_step(d->engine, v);
        if (*sql) err = d->script(db, sql, "migrate: step");
        free(sql);
    }
    sql = NULL;
    if (err == PB_OK && version < pb_store_schema_current) {
        sql = pb_xasprintf("INSERT INTO schema_version(id, version) VALUES (1, %d)"
                           " ON CONFLICT(id) DO UPDATE SET version = excluded.version",
                           pb_store_schema_current);
        err = d->script(db, sql, "migrate: set version");
    }
    if (err == PB_OK) err = d->script(db, "COMMIT", "migrate: commit");
    if (err == PB_OK && version < pb_store_schema_current)
        PB_INFO(NULL, "store: %s: schema migrated from version %lld to %d", where,
                (long long)version, pb_store_schema_current);
out:
    free(sql);
    if (err != PB_OK) d->script(db, "ROLLBACK", "migrate: rollback");
    return err;
}
