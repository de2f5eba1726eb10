/*
 * store_pg - the PostgreSQL driver of the store (store_driver.h), for a server run by one
 * or several postboxd nodes sharing one database: what is PostgreSQL's own. The
 * operations, their SQL (with PostgreSQL's variants: locking reads, the inbox counter,
 * data-modifying WITH statements) and the schema are shared (store_ops.c,
 * store_schema.c).
 *
 * Design:
 *  - Connections: a bounded pool (POOL_MAX) of libpq connections, made on demand and kept.
 *    A call takes one for its duration (waiting on a condvar when all are busy). Each
 *    connection sets its session once (synchronous_commit from the options: full = on,
 *    normal = local, off = off; lock_timeout = busy_timeout_ms; UTC) and prepares each
 *    statement once, on first use, with the parameter types of that use (int8, bytea and
 *    bytea[] sent binary, text as text; results come back binary).
 *  - Writes: one transaction per write call on the caller's thread; it returns PB_OK
 *    only after the commit answered, i.e. after the commit record was flushed. A call of
 *    several statements runs BEGIN ... COMMIT; a call of one statement runs it alone (its
 *    own transaction, saving two round trips). A batch of statements (a receive's
 *    changes) is sent pipelined (one round trip per PIPE_CHUNK). Concurrent callers on
 *    their own connections get PostgreSQL's group commit. A failed statement rolls the
 *    whole call back. Reads are single statements (their own snapshot) and take no locks.
 *  - Errors: SQLSTATE classes map to pb_err: unique violation PB_ERR_EXISTS, other
 *    integrity violations and bad data PB_ERR_INVAL; serialization failure, deadlock, lock
 *    timeout, lost connection, insufficient resources, server shutdown, a read-only
 *    server PB_ERR_STORE; data/index corruption PB_ERR_CORRUPT. A broken connection
 *    leaves the pool (the next call connects anew); a pooled connection found dead (the
 *    server restarted) is replaced before use, and a call whose connection broke before
 *    COMMIT was sent is retried once on a new one. A broken COMMIT, or a single-statement
 *    write that broke, is PB_ERR_STORE without a retry (it may have committed).
 *  - Several nodes: row locks order what must be ordered (store_ops.c); the inbox seqs
 *    come from the one counter row inbox_seq, locked as the last step of a receive and
 *    held until commit, so inbox rows commit in seq order and a reader following the
 *    cursor never skips a row that commits later with a smaller seq. Text keys are
 *    COLLATE "C" (bytewise order, as SQLite's).
 *
 * Untrusted input: none directly. The URI comes from the operator and is never logged (it
 * may hold a password).
 */
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "util/mem.h"
#include "store/store_driver.h"

#define POOL_MAX 8
#define MAX_ARGS 10
#define PIPE_CHUNK 256 /* statements per sync: bounds the answers waiting unread */
#define CONNECT_TIMEOUT_S "10"
/* type OIDs (pg_type.h) of the parameters this file sends */
#define OID_INT8 20
#define OID_TEXT 25
#define OID_BYTEA 17
#define OID_BYTEA_ARRAY 1001

typedef struct pb_db {
    pb_db_head head; /* first (store_driver.h) */
    PGconn *pg;
    bool prepared[ST__COUNT];
    bool broken; /* the connection failed: it leaves the pool */
} pgc;

typedef struct pgs {
    char *uri;   /* never logged: it may hold a password */
    char *where; /* "host:port/db" for log lines */
    pb_store_opts opts;
    pb_pool pool;
    pthread_mutex_t mu;  /* guards everything below */
    pthread_cond_t gate; /* held writes, and close waiting for callers */
    int callers;
    bool stop;
    uint64_t commits, writes;
    pb_series *m_commit; /* commit latency; NULL: none */
    pb_store_faults f;   /* PB_FAULTS builds; f.queued: the writes held */
} pgs;

/* ---- errors ----------------------------------------------------------------------------- */

static pb_err map_sqlstate(const char *st)
{
    if (!st || strlen(st) != 5) return PB_ERR_STORE; /* client-side: connection lost */
    if (strcmp(st, "23505") == 0) return PB_ERR_EXISTS;
    if (strncmp(st, "23", 2) == 0) return PB_ERR_INVAL; /* not null, check, foreign key */
    if (strncmp(st, "22", 2) == 0) return PB_ERR_INVAL; /* data exception (out of range) */
    if (strcmp(st, "XX001") == 0 || strcmp(st, "XX002") == 0) return PB_ERR_CORRUPT;
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
        PB_ERROR(NULL, "store: %.40s: %.*s (database corrupt)", what, len, msg);
    } else if (err == PB_ERR_EXISTS || err == PB_ERR_INVAL) {
        PB_DEBUG(NULL, "store: %.40s: [%s] %.*s", what, st ? st : "-", len, msg);
    } else {
        PB_WARN(NULL, "store: %.40s: [%s] %.*s", what, st ? st : "-", len, msg);
    }
    return err;
}

/* ---- parameters and statements ---------------------------------------------------------- */

static void be32_append(pb_buf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    pb_buf_append(b, x, 4);
}

/* PostgreSQL's binary form of a one-dimensional bytea[] holding events idx[0..n) (all of
 * them, in order, when idx is NULL). */
static void bytea_array(const pb_encoded *e, const size_t *idx, size_t n, pb_buf *out)
{
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

/* A statement's parameters in libpq's form; the pointers refer to the args, ints and
 * array. */
typedef struct params {
    const char *vals[MAX_ARGS];
    int lens[MAX_ARGS], fmts[MAX_ARGS];
    Oid types[MAX_ARGS];
    uint8_t ints[MAX_ARGS][8];
    pb_buf array;
    char name[16];
} params;

static pb_err params_set(int id, const pb_arg *a, int n, params *p)
{
    p->array = (pb_buf)PB_BUF_INIT;
    if (n > MAX_ARGS) return PB_ERR_INTERNAL;
    for (int k = 0; k < n; k++) {
        p->fmts[k] = 1;
        switch (a[k].type) {
        case 'i':
            for (int b = 0; b < 8; b++)
                p->ints[k][b] = (uint8_t)((uint64_t)a[k].i >> (56 - 8 * b));
            p->vals[k] = (const char *)p->ints[k];
            p->lens[k] = 8;
            p->types[k] = OID_INT8;
            break;
        case 't':
            p->vals[k] = a[k].p;
            p->lens[k] = 0;
            p->fmts[k] = 0;
            p->types[k] = OID_TEXT;
            break;
        case 'a':
            bytea_array(a[k].p, a[k].idx, a[k].n, &p->array);
            if (p->array.len > (size_t)INT32_MAX) return PB_ERR_TOO_BIG;
            p->vals[k] = (const char *)p->array.data;
            p->lens[k] = (int)p->array.len;
            p->types[k] = OID_BYTEA_ARRAY;
            break;
        default:
            if (a[k].n > (size_t)INT32_MAX) return PB_ERR_TOO_BIG;
            p->vals[k] = a[k].p ? a[k].p : "";
            p->lens[k] = (int)a[k].n;
            p->types[k] = OID_BYTEA;
            break;
        }
    }
    snprintf(p->name, sizeof p->name, "pb%d", id);
    return PB_OK;
}

/* Prepares statement id on this connection the first time it is used there, with the
 * parameter types of that use. */
static pb_err prepare(pgc *c, int id, const params *p, int n)
{
    if (c->prepared[id]) return PB_OK;
    const char *sql = pb_store_sql(PB_ENGINE_PG, id);
    if (!sql) return PB_ERR_INTERNAL;
    PGresult *r = PQprepare(c->pg, p->name, sql, n, p->types);
    pb_err err = PQresultStatus(r) == PGRES_COMMAND_OK ? PB_OK : fail(c, r, "prepare");
    c->prepared[id] = err == PB_OK;
    PQclear(r);
    return err;
}

/* Checks a statement's result; logs and maps a failure. */
static pb_err result_ok(pgc *c, int id, const PGresult *r)
{
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return PB_OK;
    return fail(c, r, pb_store_sql(PB_ENGINE_PG, id));
}

static pb_err pg_query(pb_db *c, int id, const pb_arg *a, int n, pb_cur *cur)
{
    params p;
    PGresult *r = NULL;
    pb_err err = params_set(id, a, n, &p);
    if (err == PB_OK) err = prepare(c, id, &p, n);
    if (err == PB_OK) {
        r = PQexecPrepared(c->pg, p.name, n, p.vals, p.lens, p.fmts, 1);
        err = result_ok(c, id, r);
    }
    pb_buf_free(&p.array);
    if (err != PB_OK) {
        PQclear(r);
        return err;
    }
    *cur = (pb_cur){c, id, r, -1, PQntuples(r)};
    return PB_OK;
}

static pb_err pg_step(pb_cur *cur, bool *row)
{
    if (cur->row < cur->rows) cur->row++;
    *row = cur->row < cur->rows;
    return PB_OK;
}

static void pg_done(pb_cur *cur)
{
    PQclear(cur->h);
}

static int64_t pg_changes(const pb_cur *cur)
{
    return atoll(PQcmdTuples(cur->h));
}

static bool pg_is_null(const pb_cur *cur, int col)
{
    return PQgetisnull(cur->h, cur->row, col);
}

/* A binary integer column (int2, int4 or int8) as int64; SQL NULL reads as 0. */
static int64_t pg_col_int(const pb_cur *cur, int col, bool *bad)
{
    if (col >= PQnfields(cur->h)) {
        *bad = true;
        return 0;
    }
    if (PQgetisnull(cur->h, cur->row, col)) return 0;
    const uint8_t *p = (const uint8_t *)PQgetvalue(cur->h, cur->row, col);
    int len = PQgetlength(cur->h, cur->row, col);
    if (len != 2 && len != 4 && len != 8) {
        *bad = true;
        return 0;
    }
    uint64_t v = 0;
    for (int k = 0; k < len; k++)
        v = v << 8 | p[k];
    return len == 2 ? (int16_t)v : len == 4 ? (int32_t)v : (int64_t)v;
}

static const void *pg_col_bytes(const pb_cur *cur, int col, size_t *len)
{
    if (PQgetisnull(cur->h, cur->row, col)) return NULL;
    *len = (size_t)PQgetlength(cur->h, cur->row, col);
    return PQgetvalue(cur->h, cur->row, col);
}

/* Runs SQL without parameters (transaction control, session settings, migrations). */
static pb_err pg_script(pb_db *c, const char *sql, const char *what)
{
    PGresult *r = PQexec(c->pg, sql);
    ExecStatusType st = PQresultStatus(r);
    pb_err err = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? PB_OK : fail(c, r, what);
    PQclear(r);
    return err;
}

/* Runs q[0..n) in order in pipeline mode: one round trip per PIPE_CHUNK statements
 * instead of one each. Stops at the first failure (the rest are skipped by the server). */
static pb_err pg_batch(pb_db *c, const pb_batch_stmt *q, size_t n)
{
    pb_err err = PB_OK;
    for (size_t start = 0; start < n && err == PB_OK; start += PIPE_CHUNK) {
        size_t end = n - start > PIPE_CHUNK ? start + PIPE_CHUNK : n, sent = start;
        params p;
        for (size_t i = start; i < end && err == PB_OK; i++) {
            err = params_set(q[i].id, q[i].a, q[i].n, &p);
            if (err == PB_OK) err = prepare(c, q[i].id, &p, q[i].n);
        }
        if (err != PB_OK) break;
        if (!PQenterPipelineMode(c->pg)) return fail(c, NULL, "pipeline");
        for (; sent < end; sent++) {
            params_set(q[sent].id, q[sent].a, q[sent].n, &p); /* no arrays: nothing to free */
            if (!PQsendQueryPrepared(c->pg, p.name, q[sent].n, p.vals, p.lens, p.fmts, 1)) break;
        }
        if (sent < end || !PQpipelineSync(c->pg)) {
            err = fail(c, NULL, "pipeline send");
            c->broken = true; /* results of a half-sent pipeline cannot be matched up */
            break;
        }
        for (size_t i = start; i < end && !c->broken; i++) {
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
    c->head.drv = &pb_store_pg_driver;
    pb_err err = PB_OK;
    c->pg = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(c->pg) != CONNECTION_OK) {
        const char *msg = PQerrorMessage(c->pg);
        PB_ERROR(NULL, "store: cannot connect to PostgreSQL %s: %.*s", b->where,
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
    err = pg_script(c, set, "session settings");
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
    pgc *c = pb_pool_take(&b->pool);
    if (c && !conn_alive(c)) {
        PB_INFO(NULL, "store: a pooled PostgreSQL connection was closed; reconnecting");
        conn_close(c);
        c = NULL;
    }
    pb_err err = c ? PB_OK : conn_open(b, &c);
    if (err == PB_OK) *out = c;
    if (err != PB_OK) pb_pool_put(&b->pool, NULL);
    return err;
}

static void conn_put(pgs *b, pgc *c)
{
    if (!c) return;
    if (c->broken) {
        conn_close(c);
        c = NULL;
    }
    pb_pool_put(&b->pool, c);
}

/* ---- calls ------------------------------------------------------------------------------ */

/* Every call enters (refused once close has begun) and leaves; close waits for callers.
 * A write waits while writes are held and then fails with the fault set (PB_FAULTS). */
static pb_err call_enter(pgs *b, bool write)
{
    pb_err err = PB_OK;
    pthread_mutex_lock(&b->mu);
    if (b->stop) {
        pthread_mutex_unlock(&b->mu);
        return PB_ERR_SHUTDOWN;
    }
    b->callers++;
    if (write && b->f.hold && !b->stop) {
        b->f.queued++;
        while (b->f.hold && !b->stop)
            pthread_cond_wait(&b->gate, &b->mu);
        b->f.queued--;
    }
    if (write) err = b->f.fault;
    pthread_mutex_unlock(&b->mu);
    return err;
}

/* committed: a write that committed at t0. */
static void call_leave(pgs *b, bool committed, double t0)
{
    if (committed) pb_histogram_observe(b->m_commit, pb_metrics_clock() - t0);
    pthread_mutex_lock(&b->mu);
    if (committed) {
        b->commits++;
        b->writes++;
    }
    if (--b->callers == 0 && b->stop) pthread_cond_broadcast(&b->gate);
    pthread_mutex_unlock(&b->mu);
}

/* A read: fn on a pooled connection, retried once on a new connection when the first
 * one broke. */
static pb_err pg_read(void *eng, pb_db_fn fn, void *ctx)
{
    pgs *b = eng;
    pb_err err = call_enter(b, false);
    if (err != PB_OK) return err;
    for (int attempt = 0;; attempt++) {
        pgc *c = NULL;
        err = conn_get(b, &c);
        if (err != PB_OK) break;
        err = fn(c, ctx);
        bool retry = err != PB_OK && c->broken && attempt == 0;
        conn_put(b, c);
        if (!retry) break;
    }
    call_leave(b, false, 0);
    return err;
}

/* A write: fn inside BEGIN ... COMMIT; PB_OK only once COMMIT answered. A call whose
 * connection broke before COMMIT was sent runs again once on a new connection (the server
 * rolled the first attempt back). one: fn runs exactly one statement, which is its own
 * transaction (no BEGIN/COMMIT round trips; it commits, durably, before its answer
 * comes) and is never retried. */
static pb_err pg_write(void *eng, pb_db_fn fn, void *ctx, bool one)
{
    pgs *b = eng;
    double t0 = 0;
    pb_err err = call_enter(b, true);
    if (err == PB_ERR_SHUTDOWN) return err;
    for (int attempt = 0; err == PB_OK; attempt++) {
        pgc *c = NULL;
        bool commit_sent = one;
        err = conn_get(b, &c);
        if (err != PB_OK) break;
        t0 = pb_metrics_clock();
        if (one) {
            err = fn(c, ctx);
        } else if ((err = pg_script(c, "BEGIN", "begin")) == PB_OK) {
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
                pg_script(c, "ROLLBACK", "rollback");
            }
        }
        bool retry = err != PB_OK && c->broken && !commit_sent && attempt == 0;
        conn_put(b, c);
        if (!retry) break;
        err = PB_OK;
    }
    call_leave(b, err == PB_OK, t0);
    return err;
}

static void pg_stats(void *eng, pb_store_stats *out)
{
    pgs *b = eng;
    pthread_mutex_lock(&b->mu);
    out->commits = b->commits;
    out->writes = b->writes;
    pthread_mutex_unlock(&b->mu);
}

/* ---- open / close ----------------------------------------------------------------------- */

static void pg_close(void *eng)
{
    pgs *b = eng;
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    b->stop = true;
    pthread_cond_broadcast(&b->gate); /* held writes go on and commit */
    while (b->callers > 0)
        pthread_cond_wait(&b->gate, &b->mu);
    pthread_mutex_unlock(&b->mu);
    for (pgc *c; (c = pb_pool_drain(&b->pool)) != NULL;)
        conn_close(c);
    pthread_mutex_destroy(&b->mu);
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

static pb_err pg_open(const char *location, const pb_store_opts *opts, void **eng)
{
    char *why = NULL;
    PQconninfoOption *ci = PQconninfoParse(location, &why);
    if (!ci) {
        PB_ERROR(NULL, "store: bad PostgreSQL URI: %.*s", why ? (int)strcspn(why, "\n") : 0,
                 why ? why : "");
        PQfreemem(why);
        return PB_ERR_CONFIG;
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
    pb_pool_init(&b->pool, POOL_MAX);
    pthread_cond_init(&b->gate, NULL);
    b->f = (pb_store_faults){.mu = &b->mu, .cond = &b->gate};

    pgc *c = NULL;
    pb_err err = conn_get(b, &c);
    if (err == PB_OK) err = pb_store_migrate(&pb_store_pg_driver, c, b->where);
    conn_put(b, c);
    if (err != PB_OK) {
        pg_close(b);
        return err;
    }
    PB_INFO(NULL, "store: PostgreSQL %s (schema version %d)", b->where, pb_store_schema_current);
    *eng = b;
    return PB_OK;
}

static pb_store_faults *pg_faults(void *eng)
{
    return &((pgs *)eng)->f;
}

const pb_store_driver pb_store_pg_driver = {
    .name = "postgres",
    .engine = PB_ENGINE_PG,
    .arrays = true,
    .open = pg_open,
    .close = pg_close,
    .read = pg_read,
    .write = pg_write,
    .stats = pg_stats,
    .query = pg_query,
    .step = pg_step,
    .done = pg_done,
    .changes = pg_changes,
    .is_null = pg_is_null,
    .col_int = pg_col_int,
    .col_bytes = pg_col_bytes,
    .script = pg_script,
    .batch = pg_batch,
    .faults = pg_faults,
};
