/*
 * store_driver - the contract between the shared store (store_ops.c: every operation of
 * store_impl.h, written once; store_schema.c: the schema history) and a database engine
 * (store_sqlite.c, store_pg.c). Library-internal.
 *
 * A driver is one const pb_store_driver: how to open and close the engine, how to run a
 * read (a pooled connection) and a write (a transaction that returns PB_OK only after its
 * commit; optionally one that queues and calls back after it), and statement access on a
 * connection: prepare (cached per connection) and bind by statement id, step, column access, rows
 * changed, errors mapped to pb_err. The SQL is shared: pb_store_sql(engine, id) answers each
 * engine's text of a statement (the same text for both, or an engine's own variant, or NULL when
 * the engine has no such step). Shared SQL numbers its parameters $1..$n (PostgreSQL's form; the
 * SQLite driver reads them as ?1..?n) and may leave some unused.
 *
 * Adding an engine: a driver (this table) in its own store_<engine>.c, a column in
 * pb_store_sql's table where its SQL differs, its variant of each migration step in
 * store_schema.c, and its spec prefix in store.c.
 */
#ifndef PB_STORE_DRIVER_H
#define PB_STORE_DRIVER_H

#include <pthread.h>

#include "store/store_impl.h"
#include "util/buf.h"

enum pb_engine { PB_ENGINE_SQLITE, PB_ENGINE_PG, PB_ENGINE__COUNT };

/* The shared statements (SQL in store_ops.c). */
/* clang-format off */
enum pb_stmt {
    ST_BEGIN, ST_COMMIT, ST_ROLLBACK, ST_SAVEPOINT, ST_RELEASE, ST_ROLLBACK_TO, ST_PING,
    ST_SCHEMA_VERSION, ST_INTEGRITY, ST_CHECK_OUTBOX, ST_CHECK_INBOX, ST_CHECK_SUBMISSIONS,
    ST_META_GET, ST_META_SET, ST_BAD_WRITE, ST_PEER_TOUCH, ST_PEER_KEY_GET, ST_PEER_KEY_SET,
    ST_PEER_LIST, ST_PEER_LOCK, ST_PEER_ENSURE, ST_PEER_NEXT_SEQ, ST_PEER_ADVANCE, ST_PEER_DEQUEUED, ST_PEER_STATE_SET,
    ST_PEER_STATE_GET, ST_PEER_STATE_LIST, ST_PEER_NEW_EPOCH, ST_RECV_EPOCH_GET,
    ST_RECV_EPOCH_SET, ST_RECV_EPOCH_PRUNE, ST_RECV_LATEST, ST_OUTBOX_APPEND, ST_OUTBOX_SUBMIT,
    ST_OUTBOX_INSERT, ST_OUTBOX_READ, ST_OUTBOX_ACK, ST_OUTBOX_REMOVE, ST_OUTBOX_PEERS,
    ST_SUBMISSION_CLAIM, ST_SUBMISSION_GET, ST_SUBMISSION_INSERT, ST_SUBMISSION_PRUNE,
    ST_INBOX_RESERVE, ST_INBOX_INSERT, ST_INBOX_INSERT_EVENTS, ST_INBOX_INSERT_RENAME,
    ST_INBOX_READ, ST_INBOX_LAST, ST_APPLY_ADD, ST_APPLY_REMOVE, ST_APPLY_INVITE, ST_GUILD_ADD,
    ST_GUILD_REMOVE, ST_GUILD_LIST, ST_INVITE_LIST, ST_RENAME_PEER, ST_RENAME_OUTBOX,
    ST_RENAME_GUILDS_DROP, ST_RENAME_GUILDS, ST_RENAME_INVITES_DROP, ST_RENAME_INVITES,
    ST_RENAME_RENAMES_OUT, ST_RENAME_LEASES_DROP, ST_RENAME_LEASES, ST_RENAME_RECV_EPOCHS_DROP,
    ST_RENAME_RECV_EPOCHS, ST_SELF_RENAME_UPSERT, ST_SELF_RENAME_DROP, ST_RENAME_OUT_LIST,
    ST_RENAME_OUT_DONE, ST_RENAME_OUT_FAILED, ST_RENAME_IN_COUNT, ST_RENAME_IN_ADD, ST_RENAME_IN_FIND,
    ST_RENAME_IN_REMOVE, ST_RENAME_IN_LIST, ST_RENAME_IN_EXPIRE, ST_LEASE_ACQUIRE,
    ST_LEASE_RELEASE, ST_QSHAPE, ST_QUEUE_SUMMARY, ST_PEER_MODE_COUNTS, ST_INBOX_UNREAD,
    /* SQLite's model log (store_sqlite.c) */
    ST_LOG_COUNT, ST_LOG_CHUNK_END, ST_LOG_GUILD_FINAL, ST_MERGE_INVITES, ST_LOG_DELETE,
    ST_LOG_DELETE_FIRST, ST_LOG_LAST, ST_FLUSH, ST_FLUSH_RECORD, ST_FLUSH_LIST, ST_FLUSH_DONE,
    ST_DROP_STATS, ST_DROP_DELETE, ST_DROP_PEER, ST_INBOX_INSERT_NOTICE, ST_EXPIRED_PEERS,
    ST_RENAME_FLUSHES,
    /* SQLite's receive: RECV_ROWS (or RECV_ROWS_SMALL) inbox or model-log rows per statement */
    ST_INBOX_INSERT_ROWS, ST_INBOX_INSERT_ROWS_SMALL, ST_LOG_INSERT_ROWS, ST_LOG_INSERT_ROWS_SMALL, ST__COUNT
};
/* clang-format on */

/* The SQL of statement id for engine e; NULL when the engine has no such step. */
const char *pb_store_sql(enum pb_engine e, int id);

/* One bound parameter: an int8, a text (NULL binds SQL NULL), a blob, or (engines with
 * arrays) the events idx[0..n) of an encoded batch as one bytea[]. */
typedef struct pb_encoded pb_encoded;
typedef struct pb_arg {
    char type; /* 'i', 't', 'b', 'a' */
    int64_t i;
    const void *p;
    size_t n;
    const size_t *idx; /* 'a': the events taken, NULL: all */
} pb_arg;

#define A_INT(v) ((pb_arg){'i', (int64_t)(v), NULL, 0, NULL})
#define A_TEXT(s) ((pb_arg){'t', 0, (s), 0, NULL})
#define A_BLOB(ptr, len) ((pb_arg){'b', 0, (ptr), (len), NULL})
#define A_EVENTS(enc, ix, cnt) ((pb_arg){'a', 0, (enc), (cnt), (ix)})
#define NARGS(...) ((int)(sizeof((const pb_arg[]){__VA_ARGS__}) / sizeof(pb_arg)))

/* Events encoded on the caller's thread: one buffer, event i at [off[i], off[i + 1]). */
struct pb_encoded {
    pb_buf buf;
    size_t *off;
};

/* One connection of a driver: the driver's struct, which begins with a pb_db_head. */
typedef struct pb_db pb_db;
typedef struct pb_db_head {
    const struct pb_store_driver *drv; /* the driver itself */
    pb_db *next;                       /* its pool's free list */
} pb_db_head;

/* A bounded pool of a driver's connections: take answers a free one, or NULL after
 * reserving a place for one the caller makes (at most max exist; take waits while all
 * are taken); put gives one back, or the place when c is NULL (not made, or closed). */
typedef struct pb_pool {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    pb_db *free;
    int count, max;
} pb_pool;

void pb_pool_init(pb_pool *p, int max);
pb_db *pb_pool_take(pb_pool *p);
void pb_pool_put(pb_pool *p, pb_db *c);
/* The free connections, one per call (NULL: none left), then destroys the pool: close. */
pb_db *pb_pool_drain(pb_pool *p);

/* A statement in progress on a connection (on the caller's stack). */
typedef struct pb_cur {
    pb_db *db;
    int id;
    void *h;       /* the driver's: sqlite3_stmt *, PGresult * */
    int row, rows; /* drivers that fetch whole results: the current row and their number */
} pb_cur;

typedef pb_err (*pb_db_fn)(pb_db *db, void *ctx);

/* Test-only fault points (PB_FAULTS builds) a driver keeps under its mutex mu: its writes
 * fail with fault; while hold, they wait (queued: how many) and cond is broadcast when
 * hold changes; its checkpoints fail as checkpoint says. Zero: no fault. */
typedef struct pb_store_faults {
    pthread_mutex_t *mu;
    pthread_cond_t *cond;
    pb_err fault;
    bool hold;
    size_t queued;
    int checkpoint; /* SQLite: PB_STORE_CK_FAIL or PB_STORE_CK_NO_CONN (store.h) */
} pb_store_faults;

/* One statement of a batch (pb_store_driver.batch). */
typedef struct pb_batch_stmt {
    int id;
    pb_arg a[5];
    int n;
} pb_batch_stmt;

typedef struct pb_store_driver {
    const char *name; /* "sqlite", "postgres" */
    enum pb_engine engine;
    /* The engine stores a batch of events with one statement given a bytea[] (A_EVENTS);
     * false: one statement per event. */
    bool arrays;

    /* location: the spec without its prefix. Opens, migrates (pb_store_migrate), starts
     * the engine's threads. On PB_OK *eng is the caller's, freed with close. */
    pb_err (*open)(const char *location, const pb_store_opts *opts, void **eng);
    /* Drains queued writes, waits for callers, releases everything. */
    void (*close)(void *eng);
    /* fn(db, ctx) on a connection that sees the last commit; fn may run twice (a broken
     * connection is retried once), so it must only set ctx's outputs. */
    pb_err (*read)(void *eng, pb_db_fn fn, void *ctx);
    /* fn(db, ctx) inside a write transaction; PB_OK only once it committed. fn may run
     * twice (as read). one: fn runs a single statement (an engine may then skip BEGIN and
     * COMMIT). A failed fn changes nothing. */
    pb_err (*write)(void *eng, pb_db_fn fn, void *ctx, bool one);
    /* Optional: write without waiting. PB_OK: fn(db, ctx) is queued and done(ctx, result)
     * is called exactly once with write's result, after the commit that holds it (or its
     * failure), on an engine thread and outside the engine's locks; ctx must live until
     * then. PB_ERR_SHUTDOWN (done never called) once close began; close runs every job
     * queued before it and calls its done. NULL: store_ops.c runs write on a small pool
     * of its own threads (concurrent calls still share the engine's commits). */
    pb_err (*write_async)(void *eng, pb_db_fn fn, void *ctx, bool one,
                          void (*done)(void *ctx, pb_err result));
    void (*stats)(void *eng, pb_store_stats *out);

    /* Gets statement id prepared on db (once per connection) with a[0..n) bound, into
     * *cur. The caller steps it and ends with done. */
    pb_err (*query)(pb_db *db, int id, const pb_arg *a, int n, pb_cur *cur);
    /* *row true: a row is current; false: the statement finished. */
    pb_err (*step)(pb_cur *cur, bool *row);
    void (*done)(pb_cur *cur);
    /* Rows the finished statement inserted, updated or deleted. */
    int64_t (*changes)(const pb_cur *cur);
    bool (*is_null)(const pb_cur *cur, int col);
    /* An integer column (SQL NULL reads as 0); *bad set when it is not an integer. */
    int64_t (*col_int)(const pb_cur *cur, int col, bool *bad);
    /* A text or blob column's bytes (valid until the next step); NULL for SQL NULL. */
    const void *(*col_bytes)(const pb_cur *cur, int col, size_t *len);
    /* Several statements without parameters (migrations). */
    pb_err (*script)(pb_db *db, const char *sql, const char *what);
    /* Optional: the rowid of the last row db inserted (SQLite's inbox seq). */
    int64_t (*last_id)(pb_db *db);
    /* Optional: runs q[0..n) in order (PostgreSQL: pipelined), stopping at a failure. */
    pb_err (*batch)(pb_db *db, const pb_batch_stmt *q, size_t n);
    /* Optional: before a peer's rename re-labels guilds and invites (SQLite: merges its
     * model log into them). */
    pb_err (*rename_prepare)(pb_db *db);
    /* Optional: a receive applied rows events (SQLite: rows added to its model log). */
    void (*applied)(pb_db *db, int64_t rows);

    /* Optional: a consistent copy of the running store (store.h pb_store_backup). */
    pb_err (*backup)(void *eng, int *fd, uint64_t *size);
    /* Optional: the engine's upkeep goes to e's threads (store.h pb_store_set_executor). */
    void (*set_executor)(void *eng, pb_exec *e);

    /* The engine's test-only fault state (store_impl.h fault points). */
    pb_store_faults *(*faults)(void *eng);
} pb_store_driver;

extern const pb_store_driver pb_store_sqlite_driver;
extern const pb_store_driver pb_store_pg_driver;

/* ---- shared helpers (store_ops.c) ----------------------------------------------------- */

/* Runs statement id to its end; *changes (may be NULL) gets the rows it changed. */
pb_err pb_db_exec(const pb_store_driver *d, pb_db *db, int id, const pb_arg *a, int n,
                  int64_t *changes);
#define DB_EXEC(d, db, id, changes, ...)                                                           \
    pb_db_exec((d), (db), (id), (const pb_arg[]){__VA_ARGS__}, NARGS(__VA_ARGS__), (changes))
/* Columns 0..cols-1 of the first row of statement id as int64s (NULL reads as 0); out is
 * left as it was when there is no row. The statement runs to its end. */
pb_err pb_db_ints(const pb_store_driver *d, pb_db *db, int id, const pb_arg *a, int n, int64_t *out,
                  int cols);
#define pb_db_int(d, db, id, a, n, out) pb_db_ints((d), (db), (id), (a), (n), (out), 1)

/* ---- the schema (store_schema.c) ------------------------------------------------------ */

/* The schema version this build writes. */
extern const int pb_store_schema_current;
/* Engine e's SQL taking the schema from version v - 1 to v (1 <= v <= current; else
 * NULL), a new string the caller frees. */
char *pb_store_schema_step(enum pb_engine e, int v);
/* Inside the caller's open: creates or upgrades the schema on db in one transaction;
 * refuses (PB_ERR_CONFIG, logged) a database newer than this build. where names it in
 * log lines. */
pb_err pb_store_migrate(const pb_store_driver *d, pb_db *db, const char *where);

#endif
