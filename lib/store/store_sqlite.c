/*
 * store_sqlite - the SQLite driver of the store (store_driver.h): what is SQLite's own.
 * The operations, their SQL and the schema are shared (store_ops.c, store_schema.c).
 *
 * Design:
 *  - One database file in WAL mode, PRAGMA synchronous from the options (FULL by default),
 *    foreign_keys on, a busy timeout.
 *  - Checkpoints off the commit path: SQLite's automatic checkpoint would copy the WAL's
 *    pages into the database inside the COMMIT that crossed its threshold (40 MiB of WAL:
 *    20 to 45 ms on the bench disk, half a second seen under load), and every write
 *    queued meanwhile would wait. Instead a WAL hook on the write connection notes the
 *    WAL's size after each commit; once it holds opts.checkpoint_pages pages, the
 *    writer, after answering the batch's callers, hands a
 *    PASSIVE checkpoint to the executor the owner gave (pb_store_set_executor: the
 *    delivery engine's store threads), which runs it on a connection of its own while the
 *    writer goes on committing (WAL: a checkpoint does not take the write lock). One is
 *    queued at a time. After it, the writer copies the few pages committed meanwhile
 *    itself (checkpoint_due), so that its next transaction starts the WAL over. Without
 *    an executor, or once the WAL holds four times the threshold (a checkpoint that
 *    cannot keep up), the writer checkpoints itself, after answering its callers, so the
 *    WAL stays bounded. A failed checkpoint is logged and tried again a second later; the
 *    WAL grows meanwhile.
 *  - Group commit: exactly one writer thread owns the write connection. A write call
 *    packages its work as a job (fn + context on the caller's stack), enqueues it and
 *    waits (an asynchronous write, write_async: the job on the heap with a callback, and
 *    returns at once). The writer takes every queued job (up to max_batch), runs BEGIN IMMEDIATE,
 * each job inside its own SAVEPOINT (released on success, rolled back on failure so one job does
 * not fail the others; a job alone in its batch runs without one), COMMIT, then wakes every caller
 * with its own result (asynchronous jobs: their callbacks run on the writer thread, outside its
 * mutex, before it takes the next batch). A failed COMMIT (or an error that made SQLite abandon the
 * transaction) fails the whole batch with PB_ERR_STORE (PB_ERR_CORRUPT if the file is corrupt,
 * PB_ERR_DISK_FULL if the disk is full: SQLITE_FULL, or an I/O error with ENOSPC); the writer keeps
 * running. Unavailable-store failures are logged through the store-health tracker (util/health.h).
 *  - The WAL written out ahead (synchronous FULL): at open, after the migrations and before
 *    the writer thread starts, the WAL file is extended with zeros to what it grows to
 *    between two checkpoints (opts.checkpoint_pages). Appending a commit to a growing file
 *    makes each fdatasync also commit the file system's journal (the new size and
 *    blocks); writing over blocks already written does not (this disk: p50 211 against 94
 *    us for 20 KiB). Zeros past the WAL's valid frames are what SQLite leaves there after
 *    every restart of the log anyway (frames of an old salt): recovery stops at them. A
 *    clean close truncates the WAL (the TRUNCATE checkpoint), so each start writes it
 *    again (40 MiB, under 0.1 s here). A failure (a full disk) gives the space back and
 *    only costs the speed.
 *  - Reads use a bounded pool of read-only connections (created on demand), so under WAL
 *    they see the last commit and never wait for the writer's fsync.
 *  - Every connection caches its prepared statements (prepared once, $n read as ?n, reset
 *    after use); parameters beyond a statement's own are not bound.
 *  - The model log: a received event does not touch guilds or invites (PostgreSQL applies
 *    it there): it appends its change to model_log (op 1 guild added, 2 removed, 3
 *    invited; seq = its inbox seq), in user order within the call (the inbox and log rows of
 *    a receive go 64 to a statement, store_ops.c receive_rows). Inserting at scattered
 *    keys of a table larger than the page cache costs a page read and write per event
 *    (measured: the pull drain of 1,000,000 events ran at a third of the 10,000 rate);
 *    appending costs a page per ~40 events. Reads (guilds, invites) take, per key, the log
 *    row of the highest seq over the table row. Once the log holds opts.model_log_rows
 *    rows the writer runs a merge cycle in steps between batches, while no write waits
 *    (past twice that many rows, also while writes wait, at the pace of what they add:
 *    log_merge): the rows present at the cycle's start (id <= log_upto), users in int64
 *    order, about a 32nd of the threshold's rows per step, applied to the tables in key
 *    order (the last change of a key wins) in the step's own transaction; then steps of
 *    twice as many rows delete the cycle's rows in id order (the log's primary key; all
 *    at once, 100,000 rows took 78 ms, which a write waited for). A merged row left in the
 *    log reads the same over the table, so a step, a crash or a restart in between changes
 *    no answer. A peer's rename merges the whole log first.
 *  - Tables are WITHOUT ROWID where they are read by key ranges (outbox clustered by peer,
 *    guilds and invites by user); the inbox seq is AUTOINCREMENT (never reused).
 *
 * Untrusted input: none (the path comes from the operator's configuration).
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

#include "util/fault.h"
#include "util/health.h"
#include "util/log.h"
#include "util/mem.h"
#include "store/store_driver.h"

#define READ_POOL_MAX 8
/* The WAL's size at which the writer checkpoints itself though an executor was given. */
#define CK_INLINE_FACTOR 4
/* A checkpoint task's passes, and the frames committed during one that make another. */
#define CK_PASSES 4
#define CK_CATCH_UP 256
/* After a failed checkpoint, none is tried for this long (one warning a second at most). */
#define CK_RETRY_S 1.0

#define D (&pb_store_sqlite_driver)

typedef struct pb_db {
    pb_db_head head; /* first (store_driver.h) */
    sqlite3 *db;
    sqlite3_stmt *stmt[ST__COUNT];
    /* the model log, on the write connection only (writer thread) */
    int64_t log_rows;   /* rows in model_log (an estimate after a lost batch) */
    int64_t log_upto;   /* the merge cycle in progress takes id <= log_upto; 0: none */
    int64_t log_cursor; /* first user_id of the cycle's next merge step */
    bool log_deleting;  /* the cycle's rows are merged: its steps now delete them */
    bool log_stale;     /* log_rows to be counted again */
} conn;

/* One queued write: on the waiting caller's stack, or (an asynchronous one: cb set) on
 * the heap, freed by the writer after calling cb. */
typedef struct job {
    pb_db_fn fn;
    void *ctx;
    pb_err result;
    bool done;
    void (*cb)(void *ctx, pb_err result); /* asynchronous: called once after its commit */
    struct job *next;
} job;

typedef struct sq {
    char *path;
    pb_store_opts opts;
    conn *wconn; /* owned by the writer thread once it runs */
    pthread_t writer;
    bool writer_started;
    pthread_mutex_t mu; /* guards the queue, stop, counters and faults */
    pthread_cond_t work, done;
    job *head, *tail;
    int callers; /* threads inside job_run: close waits for them to leave */
    bool stop;
    uint64_t commits, writes;
    pb_series *m_commit, *m_writes; /* commit latency, writes per commit; NULL: none */
    pb_store_faults f;              /* PB_FAULTS builds; f.queued: the jobs queued */
    pb_pool readers;
    /* checkpoints (see the design above) */
    int wal_frames;       /* writer thread: the WAL's frames after its last commit */
    pb_exec *ck_exec;     /* under mu: where checkpoints go; NULL: the writer runs them */
    bool ck_queued;       /* under mu: a checkpoint task is queued or running */
    bool ck_ran;          /* under mu: the last checkpoint was the task's */
    double ck_after;      /* under mu: no checkpoint before this (pb_metrics_clock): one failed */
    double ck_hand_after; /* under mu: none handed before this: the task's connection failed */
    uint64_t ck_count;    /* under mu: checkpoints run */
    uint64_t ck_handed;   /* under mu: of them, on ck_exec */
    conn *ck_conn;        /* the checkpoint task's connection (one task at a time) */
    pb_series *m_ckpt;    /* checkpoint duration; NULL: none */
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
        PB_ERROR(NULL, "store: %.60s: %s (database corrupt)", what, msg);
    } else if ((rc & 0xff) == SQLITE_CONSTRAINT) {
        PB_DEBUG(NULL, "store: %.60s: %s", what, msg);
    } else if (pb_health_unavailable(err)) {
        pb_health_fail(pb_health_store(), err, NULL, "store: %.60s: %s", what, msg);
    } else {
        PB_WARN(NULL, "store: %.60s: %s", what, msg);
    }
    return err;
}

/* ---- statements ------------------------------------------------------------------------- */

static pb_err sq_query(pb_db *c, int id, const pb_arg *a, int n, pb_cur *cur)
{
    sqlite3_stmt *st = c->stmt[id];
    int rc = SQLITE_OK;
    if (!st) {
        const char *sql = pb_store_sql(PB_ENGINE_SQLITE, id);
        if (!sql) return PB_ERR_INTERNAL;
        char *t = pb_xstrdup(sql); /* $n: ?n */
        for (char *p = t; (p = strchr(p, '$')) != NULL; p++)
            if (p[1] >= '0' && p[1] <= '9') *p = '?';
        rc = sqlite3_prepare_v3(c->db, t, -1, SQLITE_PREPARE_PERSISTENT, &c->stmt[id], NULL);
        free(t);
        if (rc != SQLITE_OK) return fail(c->db, rc, sql);
        st = c->stmt[id];
    }
    int np = sqlite3_bind_parameter_count(st);
    for (int k = 0; k < n && k < np && rc == SQLITE_OK; k++) {
        switch (a[k].type) {
        case 'i':
            rc = sqlite3_bind_int64(st, k + 1, a[k].i);
            break;
        case 't':
            rc = a[k].p ? sqlite3_bind_text(st, k + 1, a[k].p, -1, SQLITE_STATIC)
                        : sqlite3_bind_null(st, k + 1);
            break;
        default:
            rc = sqlite3_bind_blob64(st, k + 1, a[k].p ? a[k].p : "", a[k].n, SQLITE_STATIC);
            break;
        }
    }
    *cur = (pb_cur){c, id, st, 0, 0};
    if (rc != SQLITE_OK) {
        pb_err err = fail(c->db, rc, pb_store_sql(PB_ENGINE_SQLITE, id));
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        return err;
    }
    return PB_OK;
}

static pb_err sq_step(pb_cur *cur, bool *row)
{
    int rc = sqlite3_step(cur->h);
    *row = rc == SQLITE_ROW;
    if (rc == SQLITE_ROW || rc == SQLITE_DONE) return PB_OK;
    return fail(cur->db->db, rc, pb_store_sql(PB_ENGINE_SQLITE, cur->id));
}

static void sq_done(pb_cur *cur)
{
    sqlite3_reset(cur->h);
    sqlite3_clear_bindings(cur->h);
}

static int64_t sq_changes(const pb_cur *cur)
{
    return sqlite3_changes(cur->db->db);
}

static bool sq_is_null(const pb_cur *cur, int col)
{
    return sqlite3_column_type(cur->h, col) == SQLITE_NULL;
}

static int64_t sq_col_int(const pb_cur *cur, int col, bool *bad)
{
    int t = sqlite3_column_type(cur->h, col);
    if (t != SQLITE_INTEGER && t != SQLITE_NULL) *bad = true;
    return sqlite3_column_int64(cur->h, col);
}

static const void *sq_col_bytes(const pb_cur *cur, int col, size_t *len)
{
    int t = sqlite3_column_type(cur->h, col);
    if (t == SQLITE_NULL) return NULL;
    const void *p = t == SQLITE_BLOB ? sqlite3_column_blob(cur->h, col)
                                     : (const void *)sqlite3_column_text(cur->h, col);
    *len = (size_t)sqlite3_column_bytes(cur->h, col);
    return p ? p : "";
}

static pb_err sq_script(pb_db *c, const char *sql, const char *what)
{
    int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? PB_OK : fail(c->db, rc, what);
}

static int64_t sq_last_id(pb_db *c)
{
    return sqlite3_last_insert_rowid(c->db);
}

/* Runs a cached statement of the transaction control. */
static pb_err stmt_exec(conn *c, int id)
{
    return pb_db_exec(D, c, id, NULL, 0, NULL);
}

/* ---- connections ------------------------------------------------------------------------ */

/* Runs a one-row PRAGMA and copies its text answer into buf. */
static pb_err pragma_text(sqlite3 *db, const char *sql, char *buf, size_t size)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    /* Switching the journal mode can answer SQLITE_BUSY without calling the busy handler
     * (another connection opening the same new file): retry for a bounded while. */
    for (int tries = 0; rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_BUSY && tries < 100;
         tries++) {
        sqlite3_reset(st);
        rc = SQLITE_OK;
        nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
    }
    pb_err err = rc == SQLITE_ROW ? PB_OK : rc == SQLITE_DONE ? PB_ERR_INTERNAL : fail(db, rc, sql);
    if (err == PB_OK) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(buf, size, "%s", t ? (const char *)t : "");
    }
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
    c->head.drv = D;
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
        err = sq_script(c,
                        b->opts.sync == PB_SYNC_OFF      ? "PRAGMA synchronous=OFF"
                        : b->opts.sync == PB_SYNC_NORMAL ? "PRAGMA synchronous=NORMAL"
                                                         : "PRAGMA synchronous=FULL",
                        "PRAGMA synchronous");
        /* No automatic checkpoint: the write connection's WAL hook replaces it (and the
         * checkpoint connection never writes). */
        if (err == PB_OK) err = sq_script(c, "PRAGMA wal_autocheckpoint=0", "PRAGMA wal");
    }
    if (err == PB_OK) err = sq_script(c, "PRAGMA foreign_keys=ON", "PRAGMA foreign_keys");
out:
    if (err != PB_OK) {
        conn_close(c);
        return err;
    }
    *out = c;
    return PB_OK;
}

/* ---- reads ------------------------------------------------------------------------------ */

static pb_err sq_read(void *eng, pb_db_fn fn, void *ctx)
{
    sq *b = eng;
    conn *c = pb_pool_take(&b->readers);
    pb_err err = c ? PB_OK : conn_open(b, true, &c);
    if (err == PB_OK) err = fn(c, ctx);
    pb_pool_put(&b->readers, c);
    return err;
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
        err = stmt_exec(c, j->result == PB_OK ? ST_RELEASE : ST_ROLLBACK_TO);
        if (err == PB_OK && j->result != PB_OK) err = stmt_exec(c, ST_RELEASE);
        if (err != PB_OK) goto abort;
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

/* ---- checkpoints ------------------------------------------------------------------------ */

/* The write connection's WAL hook (writer thread, after each commit): frames is the
 * WAL's size in pages. Replaces SQLite's automatic checkpoint. */
static int on_wal(void *arg, sqlite3 *db, const char *name, int frames)
{
    (void)db;
    (void)name;
    ((sq *)arg)->wal_frames = frames;
    return SQLITE_OK;
}

/* The checkpoint fault point's mode (pb_store_fault_checkpoint): tests, PB_FAULTS builds;
 * 0 in others. */
static int ck_fault(sq *b)
{
    int mode = 0;
#ifdef PB_FAULTS
    pthread_mutex_lock(&b->mu);
    mode = b->f.checkpoint;
    pthread_mutex_unlock(&b->mu);
#else
    (void)b;
#endif
    return mode;
}

/* One PASSIVE checkpoint on db (copies what no reader still needs; never waits for the
 * writer), measured and logged; handed: on the executor. Answers the WAL frames now in the
 * database (SQLite's count since the WAL started over), or -1 when it did not run. */
static int checkpoint(sq *b, sqlite3 *db, bool handed)
{
    double t0 = pb_metrics_clock();
    int log = 0, copied = 0;
    bool fail = ck_fault(b) == PB_STORE_CK_FAIL;
    int rc = fail ? SQLITE_IOERR
                  : sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &copied);
    double s = pb_metrics_clock() - t0;
    pthread_mutex_lock(&b->mu);
    if (rc == SQLITE_OK) {
        b->ck_count++;
        b->ck_handed += handed;
        b->ck_ran = handed;
    } else if ((rc & 0xff) != SQLITE_BUSY) {
        b->ck_after = pb_metrics_clock() + CK_RETRY_S;
    }
    pthread_mutex_unlock(&b->mu);
    if (rc == SQLITE_OK) {
        pb_histogram_observe(b->m_ckpt, s);
        PB_DEBUG(NULL, "store: checkpoint%s: %d of %d WAL pages in the database, %.1f ms",
                 handed ? "" : " by the writer", copied, log, s * 1e3);
    } else if ((rc & 0xff) == SQLITE_BUSY) { /* another one runs: it does the work */
        PB_DEBUG(NULL, "store: checkpoint: busy");
    } else {
        PB_WARN(NULL,
                "store: checkpoint of %s failed: %s (%s); the WAL grows until one "
                "succeeds, tried again in a second",
                b->path, sqlite3_errstr(rc), sqlite3_errmsg(db));
    }
    return rc == SQLITE_OK ? copied : -1;
}

/* The executor's task: checkpoints on the task's own connection, again while the commits
 * made during the last one add CK_CATCH_UP frames or more (at most CK_PASSES), so that
 * what the writer copies after it (checkpoint_due) is a few pages. */
static void checkpoint_task(void *arg)
{
    sq *b = arg;
    bool no_conn = ck_fault(b) == PB_STORE_CK_NO_CONN;
    if (no_conn || (!b->ck_conn && conn_open(b, false, &b->ck_conn) != PB_OK)) {
        PB_WARN(NULL, "store: no connection for checkpoints; tried again in a second (the "
                      "writer checkpoints meanwhile if the WAL reaches four times the threshold)");
        pthread_mutex_lock(&b->mu);
        b->ck_hand_after = pb_metrics_clock() + CK_RETRY_S;
    } else {
        for (int pass = 0, before = -1, now; pass < CK_PASSES; pass++, before = now) {
            now = checkpoint(b, b->ck_conn->db, true);
            if (now < 0 || (before >= 0 && now - before < CK_CATCH_UP)) break;
        }
        pthread_mutex_lock(&b->mu);
    }
    b->ck_queued = false;
    pthread_cond_broadcast(&b->done);
    pthread_mutex_unlock(&b->mu);
}

/* Writer thread, with mu held, the batch's callers answered: the WAL holds the threshold
 * or more. Queues the checkpoint (one at a time), or runs it here: without an executor, at
 * four times the threshold, and right after a handed one, whose copy the commits since
 * have outrun. That last one copies only their pages, and it ends before the writer's
 * next transaction begins, which then starts the WAL over (SQLite does so only when a
 * write transaction begins with every frame copied; a checkpoint running beside the
 * commits rarely leaves it so). */
static void checkpoint_due(sq *b)
{
    double now = pb_metrics_clock();
    if (b->ck_after > 0 && now < b->ck_after) return;
    b->ck_after = 0;
    if (b->ck_exec && b->wal_frames < CK_INLINE_FACTOR * b->opts.checkpoint_pages) {
        if (b->ck_queued || now < b->ck_hand_after) return;
        if (!b->ck_ran) {
            b->ck_queued = true;
            pb_exec_run(b->ck_exec, checkpoint_task, b);
            return;
        }
    }
    b->ck_ran = false;
    pthread_mutex_unlock(&b->mu);
    checkpoint(b, b->wconn->db, false);
    pthread_mutex_lock(&b->mu);
}

static void sq_set_executor(void *eng, pb_exec *e)
{
    sq *b = eng;
    pthread_mutex_lock(&b->mu);
    b->ck_exec = e;
    pthread_mutex_unlock(&b->mu);
}

static void *writer_main(void *arg)
{
    pthread_setname_np(pthread_self(), "pb-writer");
    sq *b = arg;
    job **batch = pb_xmalloc((size_t)b->opts.max_batch * sizeof *batch);
    pthread_mutex_lock(&b->mu);
    for (;;) {
        while (!b->stop && (!b->head || b->f.hold))
            pthread_cond_wait(&b->work, &b->mu);
        if (!b->head) break; /* stopping and drained */
        size_t n = 0;
        while (b->head && n < (size_t)b->opts.max_batch) {
            batch[n++] = b->head;
            b->head = b->head->next;
        }
        if (!b->head) b->tail = NULL;
        b->f.queued -= n;
        pb_err fault = b->f.fault;
        pthread_mutex_unlock(&b->mu);

        bool committed = false;
        int64_t log_before = b->wconn->log_rows;
        if (fault != PB_OK) {
            for (size_t i = 0; i < n; i++)
                batch[i]->result = fault;
        } else {
            if (pb_fault("store.slow-commit")) /* tests: writes queue up behind a slow disk */
                nanosleep(&(struct timespec){0, 100 * 1000 * 1000}, NULL);
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
        /* After done is set the job's memory may go away with its caller's stack: the
         * asynchronous jobs are taken first (to the front of batch). */
        size_t nasync = 0;
        for (size_t i = 0; i < n; i++) {
            if (batch[i]->cb) {
                batch[nasync++] = batch[i];
            } else {
                batch[i]->done = true;
            }
        }
        pthread_cond_broadcast(&b->done);
        if (nasync > 0) { /* outside the mutex: a callback may queue another write */
            pthread_mutex_unlock(&b->mu);
            for (size_t i = 0; i < nasync; i++) {
                batch[i]->cb(batch[i]->ctx, batch[i]->result);
                free(batch[i]);
            }
            pthread_mutex_lock(&b->mu);
        }
        if (committed && (b->wconn->log_upto || b->wconn->log_rows >= b->opts.model_log_rows)) {
            /* the callers are answered; merge steps run while no write waits */
            pthread_mutex_unlock(&b->mu);
            log_merge(b, b->wconn->log_rows - log_before);
            pthread_mutex_lock(&b->mu);
        }
        if (committed && b->wal_frames >= b->opts.checkpoint_pages)
            checkpoint_due(b);
        else if (committed) /* the WAL started over: the next due one is the task's again */
            b->ck_ran = false;
    }
    pthread_mutex_unlock(&b->mu);
    free(batch);
    return NULL;
}

/* Queues fn(ctx) for the writer and waits for the commit that contains it. fn runs on the
 * writer thread inside a savepoint of the write connection; it must reset every statement
 * it steps. */
/* Appends j to the queue (mu held). */
static void enqueue(sq *b, job *j)
{
    if (b->tail) {
        b->tail->next = j;
    } else {
        b->head = j;
    }
    b->tail = j;
    b->f.queued++;
    pthread_cond_signal(&b->work);
}

static pb_err sq_write(void *eng, pb_db_fn fn, void *ctx, bool one)
{
    (void)one;
    sq *b = eng;
    job j = {.fn = fn, .ctx = ctx, .result = PB_ERR_INTERNAL};
    pthread_mutex_lock(&b->mu);
    if (b->stop) {
        pthread_mutex_unlock(&b->mu);
        return PB_ERR_SHUTDOWN;
    }
    b->callers++;
    enqueue(b, &j);
    while (!j.done)
        pthread_cond_wait(&b->done, &b->mu);
    if (--b->callers == 0 && b->stop) pthread_cond_broadcast(&b->done);
    pthread_mutex_unlock(&b->mu);
    return j.result;
}

/* As sq_write without waiting: the job goes on the heap, in the same queue (so it shares
 * a commit with whatever is queued beside it), and the writer calls cb(ctx, result) after
 * that commit, outside mu. Close lets the writer drain the queue first, so every job
 * queued before it runs and gets its callback. */
static pb_err sq_write_async(void *eng, pb_db_fn fn, void *ctx, bool one,
                             void (*cb)(void *ctx, pb_err result))
{
    (void)one;
    sq *b = eng;
    job *j = pb_xcalloc(1, sizeof *j);
    *j = (job){.fn = fn, .ctx = ctx, .result = PB_ERR_INTERNAL, .cb = cb};
    pthread_mutex_lock(&b->mu);
    if (b->stop) {
        pthread_mutex_unlock(&b->mu);
        free(j);
        return PB_ERR_SHUTDOWN;
    }
    enqueue(b, j);
    pthread_mutex_unlock(&b->mu);
    return PB_OK;
}

static void sq_stats(void *eng, pb_store_stats *out)
{
    sq *b = eng;
    pthread_mutex_lock(&b->mu);
    out->commits = b->commits;
    out->writes = b->writes;
    out->checkpoints = b->ck_count;
    out->checkpoints_handed = b->ck_handed;
    pthread_mutex_unlock(&b->mu);
}

/* ---- the model log ---------------------------------------------------------------------- */

#define QINT(c, id, out, ...)                                                                      \
    pb_db_ints(D, (c), (id), (const pb_arg[]){__VA_ARGS__}, NARGS(__VA_ARGS__), (out), 1)
#define EXEC(c, id, changes, ...) DB_EXEC(D, (c), (id), (changes), __VA_ARGS__)

static void sq_applied(pb_db *c, int64_t rows)
{
    c->log_rows += rows;
}

/* Counts the log again (at open, after a rename merged it, after a lost merge). */
static pb_err log_recount(conn *c)
{
    pb_err err = pb_db_int(D, c, ST_LOG_COUNT, NULL, 0, &c->log_rows);
    if (err == PB_OK) c->log_stale = false;
    return err;
}

/* Merges the log rows of users lo..hi (int64 order, both included) with id <= upto into
 * guilds and invites, in key order, inside the caller's transaction. The rows stay in the
 * log (log_merge_step deletes a cycle's rows at its end): read over the tables they give
 * what the tables now hold. */
static pb_err log_merge_range(conn *c, int64_t lo, int64_t hi, int64_t upto)
{
    pb_cur cur;
    bool row = false, bad = false;
    pb_err err = sq_query(c, ST_LOG_GUILD_FINAL,
                          (const pb_arg[]){A_INT(lo), A_INT(hi), A_INT(upto)}, 3, &cur);
    if (err != PB_OK) return err;
    while (err == PB_OK && (err = sq_step(&cur, &row)) == PB_OK && row) {
        int64_t user = sq_col_int(&cur, 0, &bad), guild = sq_col_int(&cur, 2, &bad);
        const char *server = (const char *)sqlite3_column_text(cur.h, 1);
        if (!server || bad) {
            err = PB_ERR_CORRUPT;
            break;
        }
        err = EXEC(c, sq_col_int(&cur, 3, &bad) == 1 ? ST_GUILD_ADD : ST_GUILD_REMOVE, NULL,
                   A_INT(user), A_TEXT(server), A_INT(guild));
    }
    sq_done(&cur);
    if (err == PB_OK) err = EXEC(c, ST_MERGE_INVITES, NULL, A_INT(lo), A_INT(hi), A_INT(upto));
    return err;
}

/* Merges the whole log and empties it, inside the caller's transaction (a peer's rename);
 * the cycle in progress is abandoned (its rows are merged again: merging is idempotent). */
static pb_err sq_rename_prepare(pb_db *c)
{
    pb_err err = log_merge_range(c, INT64_MIN, INT64_MAX, INT64_MAX);
    if (err == PB_OK) err = EXEC(c, ST_LOG_DELETE, NULL, A_INT(INT64_MAX));
    c->log_upto = 0;
    c->log_deleting = false;
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
 * the step's last user taken); once they are merged, its next steps delete them from the
 * log, twice a chunk each, in id order (deleting a cycle's 100,000 rows at once took 78 ms
 * here, which a write arriving meanwhile waited for). False when it failed (logged;
 * nothing changed, the cycle starts again). */
static bool log_merge_step(sq *b)
{
    conn *c = b->wconn;
    int64_t lo = c->log_cursor, hi = INT64_MAX, upto = c->log_upto, deleted = 0;
    const int64_t del_chunk = 2 * (int64_t)log_chunk(b);
    double t0 = pb_metrics_clock();
    pb_err err = stmt_exec(c, ST_BEGIN);
    if (c->log_deleting) {
        if (err == PB_OK)
            err = EXEC(c, ST_LOG_DELETE_FIRST, &deleted, A_INT(upto), A_INT(del_chunk));
    } else {
        if (err == PB_OK && !upto) {
            lo = INT64_MIN;
            err = pb_db_int(D, c, ST_LOG_LAST, NULL, 0, &upto);
        }
        if (err == PB_OK) /* no row: the rest of the users */
            err = QINT(c, ST_LOG_CHUNK_END, &hi, A_INT(lo), A_INT(log_chunk(b) - 1));
        if (err == PB_OK) err = log_merge_range(c, lo, hi, upto);
    }
    if (err == PB_OK) err = stmt_exec(c, ST_COMMIT);
    if (err != PB_OK) {
        if (!sqlite3_get_autocommit(c->db)) stmt_exec(c, ST_ROLLBACK);
        PB_ERROR(NULL, "store: merging the model log failed (%s); retried later", pb_strerror(err));
        c->log_upto = 0;
        c->log_deleting = false;
        c->log_stale = true;
        return false;
    }
    PB_DEBUG(NULL, "store: model log %s, %.1f ms",
             c->log_deleting ? "merged rows deleted" : "merge step",
             (pb_metrics_clock() - t0) * 1e3);
    if (c->log_deleting) {
        c->log_rows -= deleted;
        if (c->log_rows < 0) c->log_stale = true;
        if (deleted < del_chunk) { /* the cycle's last */
            c->log_upto = 0;
            c->log_deleting = false;
        }
    } else {
        c->log_upto = upto;
        c->log_deleting = hi == INT64_MAX; /* every user merged: the deleting steps next */
        if (!c->log_deleting) c->log_cursor = hi + 1;
    }
    return true;
}

/* After a committed batch that added `added` log rows: merge steps while a cycle is in
 * progress or the log holds model_log_rows or more, as long as no write waits (merging
 * fills the writer's idle time). With twice that or more, steps run even when writes wait,
 * three per chunk the batch added and one more: a cycle of M rows takes M / chunk merge
 * steps and M / (2 chunk) deleting ones, so it ends before the log has grown by more than
 * half of the M rows it took, and the log stays below about four times model_log_rows
 * however busy the writer is. */
static void log_merge(sq *b, int64_t added)
{
    conn *c = b->wconn;
    int64_t owed = 3 * added / log_chunk(b) + 1;
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

/* ---- open / close ----------------------------------------------------------------------- */

/* Checks the parent directory and creates the file with mode 0600 if it is missing. */
static pb_err prepare_file(const char *path)
{
    pb_err err = PB_OK;
    char *copy = pb_xstrdup(path);
    const char *dir = dirname(copy);
    struct stat stt;
    int fd = -1;
    if (stat(dir, &stt) != 0 || !S_ISDIR(stt.st_mode)) {
        PB_ERROR(NULL, "store: directory %s of %s does not exist", dir, path);
        err = PB_ERR_CONFIG;
    } else if ((fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) >= 0) {
        close(fd);
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
    } else if (errno != EEXIST) {
        PB_ERROR(NULL, "store: cannot create %s: %s", path, strerror(errno));
        err = errno == ENOSPC ? PB_ERR_DISK_FULL : PB_ERR_IO;
    }
    free(copy);
    return err;
}

static void sq_close(void *eng)
{
    sq *b = eng;
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    b->stop = true;
    pthread_cond_broadcast(&b->work);
    pthread_mutex_unlock(&b->mu);
    if (b->writer_started) pthread_join(b->writer, NULL);
    /* Writes queued before close are committed now; let their callers leave. */
    pthread_mutex_lock(&b->mu);
    while (b->callers > 0 || b->ck_queued) /* ck_queued: an executor not freed yet (store.h) */
        pthread_cond_wait(&b->done, &b->mu);
    pthread_mutex_unlock(&b->mu);
    conn_close(b->ck_conn);
    for (conn *c; (c = pb_pool_drain(&b->readers)) != NULL;)
        conn_close(c);
    if (b->wconn) {
        int rc =
            sqlite3_wal_checkpoint_v2(b->wconn->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        if (rc != SQLITE_OK) fail(b->wconn->db, rc, "checkpoint on close");
        conn_close(b->wconn);
    }
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->work);
    pthread_cond_destroy(&b->done);
    free(b->path);
    free(b);
}

/* Extends the WAL with zeros to what it holds when a checkpoint is due (see the design
 * above): a 32-byte header and checkpoint_pages frames of a 24-byte header and a 4 KiB
 * page (SQLite's default page size), rounded up to a MiB. Called while nothing else
 * writes it: the write connection is idle and the writer not started. */
static void wal_prewrite(const sq *b)
{
    const off_t want = ((off_t)32 + (off_t)b->opts.checkpoint_pages * (24 + 4096) + (1 << 20) - 1) &
                       ~(off_t)((1 << 20) - 1);
    /* static, not allocated: a freed 1 MiB block would raise glibc's mmap threshold and
     * change where every later large allocation of the process goes */
    static const uint8_t zero[64 * 1024];
    char *path = pb_xasprintf("%s-wal", b->path);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size >= want) goto out;
    off_t at = st.st_size;
    int e = 0;
    while (at < want && !e) {
        size_t n = want - at < (off_t)sizeof zero ? (size_t)(want - at) : sizeof zero;
        ssize_t w = pwrite(fd, zero, n, at);
        if (w > 0)
            at += w;
        else if (w < 0 && errno != EINTR)
            e = errno;
        else if (w == 0)
            e = EIO;
    }
    if (!e && fdatasync(fd) != 0) e = errno;
    if (e) {
        PB_WARN(NULL,
                "store: cannot write %s out ahead (%s): commits append to it instead (slower "
                "fsyncs until its first checkpoint)",
                path, strerror(e));
        if (ftruncate(fd, st.st_size) != 0)
            PB_WARN(NULL, "store: cannot give back the space written ahead in %s: %s", path,
                    strerror(errno));
    }
out:
    if (fd >= 0) close(fd);
    free(path);
}

static pb_err sq_open(const char *location, const pb_store_opts *opts, void **eng)
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
    b->m_ckpt = pb_metric_series(PB_METRIC(opts->metrics, store_checkpoint_duration), NULL);
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->work, NULL);
    pthread_cond_init(&b->done, NULL);
    pb_pool_init(&b->readers, READ_POOL_MAX);
    b->f = (pb_store_faults){.mu = &b->mu, .cond = &b->work};

    err = conn_open(b, false, &b->wconn);
    if (err == PB_OK) sqlite3_wal_hook(b->wconn->db, on_wal, b);
    if (err == PB_OK) err = pb_store_migrate(D, b->wconn, b->path);
    if (err == PB_OK) err = log_recount(b->wconn);
    if (err == PB_OK && b->opts.sync == PB_SYNC_FULL) wal_prewrite(b);
    if (err == PB_OK && pthread_create(&b->writer, NULL, writer_main, b) != 0) {
        PB_ERROR(NULL, "store: cannot start the writer thread");
        err = PB_ERR_INTERNAL;
    }
    if (err != PB_OK) {
        sq_close(b);
        return err;
    }
    b->writer_started = true;
    *eng = b;
    return PB_OK;
}

/* ---- backup ----------------------------------------------------------------------------- */

/*
 * The online backup API from a read connection: one step copies every page inside one
 * read transaction, so the copy is one snapshot (the last commit when it began) while the
 * writer goes on (WAL). The copy goes to a new file beside the database (same file
 * system and permissions; mode 0600), named DB.backup-XXXXXX, opened for reading and
 * unlinked before returning, so no copy is left behind whatever the caller does with the
 * descriptor (a crash in between leaves that one file, which nothing reads).
 */
static pb_err sq_backup(void *eng, int *fd_out, uint64_t *size)
{
    sq *b = eng;
    sqlite3 *dst = NULL;
    sqlite3_backup *bk = NULL;
    int tfd = -1, fd = -1;
    char *tmp = pb_xasprintf("%s.backup-XXXXXX", b->path);
    conn *c = pb_pool_take(&b->readers);
    pb_err err = c ? PB_OK : conn_open(b, true, &c);
    if (err != PB_OK) goto out;
    tfd = mkstemp(tmp);
    if (tfd < 0) {
        PB_ERROR(NULL, "store: backup: cannot create %s: %s", tmp, strerror(errno));
        err = PB_ERR_IO;
        goto out;
    }
    int rc = sqlite3_open_v2(tmp, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_exec(dst, "PRAGMA synchronous=OFF", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        err = fail(dst, rc, "backup: open the copy");
        goto out;
    }
    bk = sqlite3_backup_init(dst, "main", c->db, "main");
    if (!bk) {
        err = fail(dst, sqlite3_errcode(dst), "backup: start");
        goto out;
    }
    rc = sqlite3_backup_step(bk, -1);
    int frc = sqlite3_backup_finish(bk);
    if (rc != SQLITE_DONE || frc != SQLITE_OK) {
        err = fail(dst, rc != SQLITE_DONE ? rc : frc, "backup: copy");
        if (err == PB_ERR_CORRUPT) err = PB_ERR_STORE; /* the copy's trouble, not the store's */
        goto out;
    }
    rc = sqlite3_close(dst);
    dst = NULL;
    if (rc != SQLITE_OK) {
        err = fail(NULL, rc, "backup: close the copy");
        goto out;
    }
    fd = open(tmp, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        PB_ERROR(NULL, "store: backup: cannot read %s back: %s", tmp, strerror(errno));
        err = PB_ERR_IO;
        goto out;
    }
    *fd_out = fd;
    *size = (uint64_t)st.st_size;
    fd = -1;
out:
    if (dst) sqlite3_close(dst);
    if (fd >= 0) close(fd);
    if (tfd >= 0) {
        close(tfd);
        unlink(tmp);
        char *j = pb_xasprintf("%s-journal", tmp);
        unlink(j);
        free(j);
    }
    if (c) pb_pool_put(&b->readers, c);
    free(tmp);
    return err;
}

static pb_store_faults *sq_faults(void *eng)
{
    return &((sq *)eng)->f;
}

const pb_store_driver pb_store_sqlite_driver = {
    .name = "sqlite",
    .engine = PB_ENGINE_SQLITE,
    .arrays = false,
    .open = sq_open,
    .close = sq_close,
    .read = sq_read,
    .write = sq_write,
    .write_async = sq_write_async,
    .stats = sq_stats,
    .query = sq_query,
    .step = sq_step,
    .done = sq_done,
    .changes = sq_changes,
    .is_null = sq_is_null,
    .col_int = sq_col_int,
    .col_bytes = sq_col_bytes,
    .script = sq_script,
    .last_id = sq_last_id,
    .rename_prepare = sq_rename_prepare,
    .applied = sq_applied,
    .backup = sq_backup,
    .set_executor = sq_set_executor,
    .faults = sq_faults,
};
