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
 *    batch with PB_ERR_STORE (PB_ERR_CORRUPT if the file is corrupt); the writer keeps
 *    running. New write operations are a job_fn plus a call to job_run().
 *  - Reads use a bounded pool of read-only connections (created on demand), so under WAL
 *    they see the last commit and never wait for the writer's fsync.
 *  - Every connection caches its prepared statements (prepared once, reset after use).
 *
 * Untrusted input: none directly (callers validate server IDs). Stored values read back
 * are checked (a key blob of the wrong length is PB_ERR_CORRUPT).
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

#include "log.h"
#include "mem.h"
#include "store_impl.h"

#define READ_POOL_MAX 8

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
    ST__COUNT
};

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
    [ST_PEER_TOUCH] = "INSERT INTO peers(server_id, first_seen, last_contact) VALUES (?1, ?2, ?3)"
                      " ON CONFLICT(server_id) DO UPDATE SET last_contact ="
                      " CASE WHEN ?3 > 0 THEN ?3 ELSE last_contact END",
    [ST_PEER_KEY_GET] = "SELECT pubkey FROM peers WHERE server_id = ?1",
    [ST_PEER_KEY_SET] = "INSERT INTO peers(server_id, first_seen, pubkey, key_fetched_at)"
                        " VALUES (?1, ?2, ?3, ?4) ON CONFLICT(server_id) DO UPDATE SET"
                        " pubkey = excluded.pubkey, key_fetched_at = excluded.key_fetched_at",
    [ST_PEER_LIST] = "SELECT server_id, first_seen, last_contact, pubkey, key_fetched_at"
                     " FROM peers ORDER BY server_id",
};

typedef struct conn {
    sqlite3 *db;
    sqlite3_stmt *stmt[ST__COUNT];
    struct conn *next; /* read pool free list */
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

/* Logs a failed SQLite call and returns its pb_err. */
static pb_err fail(sqlite3 *db, int rc, const char *what)
{
    pb_err err = map_rc(rc);
    const char *msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    if (err == PB_ERR_CORRUPT) {
        PB_ERROR(NULL, "store: %s: %s (database corrupt)", what, msg);
    } else if ((rc & 0xff) == SQLITE_CONSTRAINT) {
        PB_DEBUG(NULL, "store: %s: %s", what, msg);
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
    rc = sqlite3_step(st);
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
    return cause == PB_ERR_CORRUPT ? PB_ERR_CORRUPT : PB_ERR_STORE;
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
    for (i = 0; i < n; i++) {
        job *j = batch[i];
        err = stmt_exec(c, ST_SAVEPOINT);
        if (err != PB_OK) goto abort;
        j->result = j->fn(c, j->ctx);
        if (sqlite3_get_autocommit(c->db)) {
            /* The failure made SQLite roll back the whole transaction (I/O error, full
             * disk, out of memory): everything of this batch is lost. */
            err = j->result != PB_OK ? j->result : PB_ERR_STORE;
            goto abort;
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
        if (fault != PB_OK) {
            for (size_t i = 0; i < n; i++)
                batch[i]->result = fault;
        } else {
            committed = run_batch(b, batch, n);
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
        err = PB_ERR_IO;
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
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->work, NULL);
    pthread_cond_init(&b->done, NULL);
    pthread_mutex_init(&b->rmu, NULL);
    pthread_cond_init(&b->rcond, NULL);

    err = conn_open(b, false, &b->wconn);
    if (err != PB_OK) goto out;
    err = migrate(b->wconn, b->path);
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

static pb_err noop_job(conn *c, void *ctx)
{
    return PB_OK;
}

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
    return job_run(b, noop_job, NULL);
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
        if (err != PB_ERR_STORE) err = PB_ERR_CORRUPT;
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
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) err = fail(c->db, rc, "peer touch");
    stmt_done(st);
    return err;
}

static pb_err sq_peer_touch(void *impl, const char *server_id, int64_t contact_at)
{
    struct peer_ctx p = {server_id, contact_at, NULL};
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
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) err = fail(c->db, rc, "peer key set");
    stmt_done(st);
    return err;
}

static pb_err sq_peer_key_set(void *impl, const char *server_id, const uint8_t key[PB_PUBKEY_LEN],
                              int64_t fetched_at)
{
    struct peer_ctx p = {server_id, fetched_at, key};
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

static pb_err sq_peer_list(void *impl, pb_peer_info **peers, size_t *count)
{
    sq *b = impl;
    conn *c = NULL;
    sqlite3_stmt *st = NULL;
    pb_peer_info *arr = NULL;
    size_t n = 0, cap = 0;
    pb_err err = reader_get(b, &c);
    if (err != PB_OK) return err;
    err = stmt_get(c, ST_PEER_LIST, &st);
    if (err != PB_OK) goto out;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *id = sqlite3_column_text(st, 0);
        if (!id) {
            err = PB_ERR_CORRUPT;
            break;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            arr = pb_xrealloc(arr, cap * sizeof *arr);
        }
        pb_peer_info *p = &arr[n];
        memset(p, 0, sizeof *p);
        p->server_id = pb_xstrdup((const char *)id);
        n++;
        p->first_seen = sqlite3_column_int64(st, 1);
        p->last_contact = sqlite3_column_int64(st, 2);
        if (sqlite3_column_type(st, 3) != SQLITE_NULL) {
            if (sqlite3_column_bytes(st, 3) != PB_PUBKEY_LEN) {
                PB_ERROR(p->server_id, "store: stored key has %d bytes",
                         sqlite3_column_bytes(st, 3));
                err = PB_ERR_CORRUPT;
                break;
            }
            memcpy(p->key, sqlite3_column_blob(st, 3), PB_PUBKEY_LEN);
            p->has_key = true;
            p->key_fetched_at = sqlite3_column_int64(st, 4);
        }
    }
    if (err == PB_OK && rc != SQLITE_DONE) err = fail(c->db, rc, "peer list");
    stmt_done(st);
out:
    reader_put(b, c);
    if (err != PB_OK) {
        pb_peer_info_free_array(arr, n);
        return err;
    }
    *peers = arr;
    *count = n;
    return PB_OK;
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
#ifdef PB_FAULTS
    .fault_set = sq_fault_set,
    .fault_hold = sq_fault_hold,
    .fault_queued = sq_fault_queued,
    .fault_bad_write = sq_fault_bad_write,
#endif
};
