/*
 * store_test - the durable store (store.h), on the backend named by the one argument:
 *
 *   store_test sqlite      a SQLite file per case in a temporary directory
 *   store_test postgres    a fresh PostgreSQL database per case on the server named by
 *                          PB_TEST_PG_URL (scripts/pg-start); fails when it is unset
 *
 * The same cases run on both: open/migrate/reopen, option and spec errors, nodes opening
 * a new store at once, meta and peers, group commit under concurrent writers, one failing
 * write in a batch, fault injection, close draining queued writes, and crash safety (a
 * writer process SIGKILLed mid-stream loses no write it reported committed). Delivery
 * engine state: outbox append/read/ack/remove, the outbox change count
 * (pb_store_outbox_quiet: acknowledgements, removals, drops, new epochs and renames count,
 * failed ones too; appends, reads and the engine's forgets do not; a held one is under
 * way), per-peer state, receive with and without
 * sequence numbers (dedupe, apply rules, atomicity), inbox, guild lists and invites, peer
 * and self renames, migration from schema version 1. Sequence epochs: every call that
 * creates a peer row gives it a random non-zero send_epoch of its own, other writes keep
 * it, pb_store_peer_new_epoch changes only it; receive deduplicates per (sender, epoch)
 * and reports the acknowledgement (duplicate-only, empty and foreign calls included), the
 * latest epoch and its ties, at most 8 epochs per sender (least recently updated dropped,
 * never the one just written, never another sender's), the peer rename re-labelling every
 * epoch, and migration from schema version 4 (legacy epoch 0 on both sides). Pending
 * incoming renames: add, replace, a new ID pending twice, find, remove, list order,
 * expiry, completion by the peer rename. Submission IDs: first append,
 * duplicate, conflicting reuse (another peer or count), retention and bounded pruning
 * (with old times given as `now`), atomicity (an append failing inside its transaction or
 * refused by a fault records nothing), and one ID submitted at once through two handles
 * appended once. Asynchronous submissions: many queued at once share one SQLite commit
 * (PostgreSQL: run 4 at once), each calls back once with its seq, a repeated ID is a
 * duplicate, a fault reaches the callback, close commits and calls back what is queued.
 * Several nodes (two handles on one
 * store): concurrent appends keep per-peer seqs gapless and ordered, a batch received by
 * two nodes at once is applied once, an inbox reader following the cursor never skips a
 * row, leases (take, renew, expiry, release, rename, races) and the outbox peer list.
 * Monitoring: the queue shape (age buckets and their edges, order, acknowledged events
 * gone), peers by mode and the unread inbox after a cursor.
 * PostgreSQL only: a call after the server dropped the pooled connections succeeds.
 * Where the backends differ by design (SQLite batches concurrent writes into one
 * transaction, PostgreSQL commits each on its own) the case says so.
 */
#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/buf.h"
#include "util/log.h"
#include "harness.h"
#include "store/store.h"
#include "store/store_driver.h"

#define SCHEMA_CURRENT 10
/* the sender epoch the cases that are not about epochs receive in */
#define EP 0x1234567890abcdefULL

static bool g_pg;       /* the backend under test: PostgreSQL, else SQLite */
static char *tmp;       /* the temporary directory (SQLite files) */
static char *g_dbs[64]; /* PostgreSQL: the databases made, dropped at the end */
static int g_ndbs;

static char *db_path(const char *name)
{
    size_t n = strlen(tmp) + strlen(name) + 2;
    char *p = malloc(n);
    if (!p) abort();
    snprintf(p, n, "%s/%s", tmp, name);
    return p;
}

/* A new, empty store location for one case ([a-z0-9_] name) as a pb_store_open spec
 * (caller frees): "sqlite:TMP/name.db", or the URI of a new PostgreSQL database. NULL
 * (a failed check) when the database cannot be made. */
static char *spec_for(const char *name)
{
    char *spec = NULL;
    if (!g_pg) {
        if (asprintf(&spec, "sqlite:%s/%s.db", tmp, name) < 0) abort();
        return spec;
    }
    char db[64];
    snprintf(db, sizeof db, "pbt_st_%d_%s", (int)getpid(), name);
    spec = pbt_pg_create_db(db);
    CHECKF(spec != NULL, "cannot create PostgreSQL database %s", db);
    if (spec && g_ndbs < (int)(sizeof g_dbs / sizeof g_dbs[0])) g_dbs[g_ndbs++] = strdup(db);
    return spec;
}

/* Runs sql on the store's database behind its back; false (and a message) on error. */
static bool raw_exec(const char *spec, const char *sql)
{
    bool ok = false;
    if (!g_pg) {
        sqlite3 *db = NULL;
        char *msg = NULL;
        if (sqlite3_open(spec + 7, &db) == SQLITE_OK &&
            sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK)
            ok = true;
        if (!ok) fprintf(stderr, "raw sql: %s: %s\n", sql, msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        sqlite3_close(db);
        return ok;
    }
    PGconn *c = PQconnectdb(spec);
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok) fprintf(stderr, "raw sql: %s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    return ok;
}

/* The integer in the first column of sql's first row, behind the store's back; false on
 * error or no row. */
static bool raw_int(const char *spec, const char *sql, long long *out)
{
    bool ok = false;
    if (!g_pg) {
        sqlite3 *db = NULL;
        sqlite3_stmt *q = NULL;
        if (sqlite3_open(spec + 7, &db) == SQLITE_OK &&
            sqlite3_prepare_v2(db, sql, -1, &q, NULL) == SQLITE_OK &&
            sqlite3_step(q) == SQLITE_ROW) {
            *out = sqlite3_column_int64(q, 0);
            ok = true;
        }
        sqlite3_finalize(q);
        sqlite3_close(db);
        return ok;
    }
    PGconn *c = PQconnectdb(spec);
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0)) {
        *out = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        ok = true;
    }
    PQclear(r);
    PQfinish(c);
    return ok;
}

/* The schema at version v as this build's store writes it (store_schema.c), with its
 * schema_version row (caller frees). */
static char *schema_sql(int v)
{
    pb_buf b = PB_BUF_INIT;
    pb_buf_append_str(&b, "CREATE TABLE schema_version (id INTEGER PRIMARY KEY CHECK (id = 1),"
                          " version INTEGER NOT NULL);");
    for (int k = 1; k <= v; k++) {
        char *step = pb_store_schema_step(g_pg ? PB_ENGINE_PG : PB_ENGINE_SQLITE, k);
        pb_buf_append_str(&b, step);
        free(step);
    }
    char row[80];
    snprintf(row, sizeof row, "INSERT INTO schema_version VALUES (1, %d);", v);
    pb_buf_append_str(&b, row);
    pb_buf_append(&b, "", 1);
    return (char *)pb_buf_steal(&b, NULL);
}

/* Every peer's queue counter (peers.queued) equals the rows of its queue. */
static void check_queue_counters(const char *spec, int line)
{
    long long bad = -1;
    bool ok = raw_int(spec,
                      "SELECT count(*) FROM peers p WHERE p.queued <>"
                      " (SELECT count(*) FROM outbox o WHERE o.peer = p.server_id)",
                      &bad);
    CHECKF(ok && bad == 0, "queue counters (line %d): %lld peers differ from their queue", line,
           bad);
}
#define CHECK_QUEUE_COUNTERS(spec) check_queue_counters(spec, __LINE__)

static void fill_key(uint8_t key[PB_PUBKEY_LEN], uint8_t seed)
{
    for (int i = 0; i < PB_PUBKEY_LEN; i++)
        key[i] = (uint8_t)(seed + i);
}

/* True when key reads back as want. */
static bool meta_is(pb_store *s, const char *key, const char *want)
{
    char *v = NULL;
    if (pb_store_meta_get(s, key, &v) != PB_OK) return false;
    bool ok = strcmp(v, want) == 0;
    free(v);
    return ok;
}

/* ---- open / options / migrate ----------------------------------------------------------- */

/* SQLite, synchronous FULL: the WAL written out ahead at open (store_sqlite.c), so that
 * commits write over blocks already written; a crash leaves the zeros behind the last
 * commit's frames and recovery stops at them; a failure to write it ahead (a file size
 * limit standing in for a full disk) gives the space back and changes nothing else. */
static long long wal_size(const char *spec)
{
    char *w = NULL;
    if (asprintf(&w, "%s-wal", spec + 7) < 0) abort();
    struct stat st;
    long long n = stat(w, &st) == 0 ? (long long)st.st_size : -1;
    free(w);
    return n;
}

static void test_wal_prewrite(void)
{
    char *spec = spec_for("walahead");
    pb_store *s = NULL;
    CHECK_OK(pb_store_open(spec, NULL, &s));
    CHECKF(wal_size(spec) >= 40LL << 20, "WAL written out ahead: %lld bytes", wal_size(spec));
    if (s) CHECK_OK(pb_store_meta_set(s, "k", "before"));
    pb_store_close(s);
    s = NULL;

    /* a crash after a commit: the next open recovers it from before the zeros */
    pid_t pid = fork();
    if (pid == 0) {
        pb_store *c = NULL;
        if (pb_store_open(spec, NULL, &c) != PB_OK) _exit(1);
        if (pb_store_meta_set(c, "k", "after") != PB_OK) _exit(2);
        _exit(0); /* no close: the WAL keeps the commit, then the zeros */
    }
    int status = -1;
    waitpid(pid, &status, 0);
    CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    CHECK_OK(pb_store_open(spec, NULL, &s));
    if (s) {
        CHECK(meta_is(s, "k", "after"));
        CHECK_OK(pb_store_integrity_check(s));
        CHECK_OK(pb_store_meta_set(s, "k", "again"));
        CHECK(meta_is(s, "k", "again"));
    }
    pb_store_close(s);
    s = NULL;
    free(spec);

    /* synchronous NORMAL: commits do not sync the WAL, nothing written ahead */
    spec = spec_for("walnormal");
    pb_store_opts o;
    pb_store_opts_default(&o);
    o.sync = PB_SYNC_NORMAL;
    CHECK_OK(pb_store_open(spec, &o, &s));
    CHECKF(wal_size(spec) < 1LL << 20, "no WAL written out ahead: %lld bytes", wal_size(spec));
    pb_store_close(s);
    s = NULL;
    free(spec);

    /* it cannot be written (files limited to 4 MiB): the store opens and works, the space
     * is given back */
    spec = spec_for("walfull");
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 4 << 20;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    CHECK_OK(pb_store_open(spec, NULL, &s));
    long long after = wal_size(spec);
    CHECKF(after >= 0 && after < 1LL << 20, "the space written ahead given back: %lld bytes",
           after);
    if (s) {
        CHECK_OK(pb_store_meta_set(s, "k", "v"));
        CHECK(meta_is(s, "k", "v"));
    }
    pb_store_close(s);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    free(spec);
}

/* Checkpoints off the commit path (store_sqlite.c "checkpoints"), 32 pages the threshold:
 * without an executor the writer checkpoints itself; with one, the checkpoint runs there
 * and not on the writer; with the executor's one thread held, the writer takes over once
 * the WAL holds four times the threshold, so the WAL stays bounded. Every value written
 * reads back after a reopen. */
struct held {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool started, release;
};

static void hold_task(void *arg)
{
    struct held *h = arg;
    pthread_mutex_lock(&h->mu);
    h->started = true;
    pthread_cond_broadcast(&h->cv);
    while (!h->release)
        pthread_cond_wait(&h->cv, &h->mu);
    pthread_mutex_unlock(&h->mu);
}

/* One row per page (3,000 bytes): each write adds about three WAL pages (its new leaf, the
 * interior page above it, the header's page count). */
static bool ck_write(pb_store *s, int i)
{
    char key[32], val[3000];
    snprintf(key, sizeof key, "ck%05d", i);
    memset(val, 'a' + i % 26, sizeof val - 1);
    val[sizeof val - 1] = '\0';
    return pb_store_meta_set(s, key, val) == PB_OK;
}

/* Reopens spec and checks the n values ck_write wrote and the database's integrity; the
 * store (NULL when it did not open) is the caller's. */
static pb_store *ck_reopen_check(const char *spec, const pb_store_opts *o, int n)
{
    pb_store *s = NULL;
    CHECK_OK(pb_store_open(spec, o, &s));
    for (int i = 0; s && i < n; i++) {
        char key[32], *v = NULL;
        snprintf(key, sizeof key, "ck%05d", i);
        CHECK_OK(pb_store_meta_get(s, key, &v));
        CHECKF(v && strlen(v) == 2999 && v[0] == 'a' + i % 26, "value %d", i);
        free(v);
    }
    if (s) CHECK_OK(pb_store_integrity_check(s));
    return s;
}

#ifdef PB_FAULTS
/* The log lines written to fd since it was last emptied; emptied. Owned by the caller. */
static char *take_lines(int fd)
{
    off_t n = lseek(fd, 0, SEEK_END);
    char *t = calloc(1, (size_t)(n > 0 ? n : 0) + 1);
    if (n > 0 && pread(fd, t, (size_t)n, 0) != n) t[0] = 0;
    CHECK(ftruncate(fd, 0) == 0);
    lseek(fd, 0, SEEK_SET);
    return t;
}

/* Writes until st->checkpoints moves or `most` writes; false when it did not move. */
static bool write_until_checkpoint(pb_store *s, int *n, int most, pb_store_stats *st)
{
    pb_store_stats st0;
    pb_store_stats_get(s, &st0);
    for (int k = 0; k < most; k++) {
        CHECK(ck_write(s, (*n)++));
        pb_store_stats_get(s, st);
        if (st->checkpoints > st0.checkpoints) return true;
    }
    return false;
}

/* Checkpoints that fail: the writes go on and read back, a warning names the failure, and
 * the next checkpoint is tried a second later: once the fault is gone it runs. The
 * checkpoint connection failing to open: a warning, and the writer takes over at four
 * times the threshold, so the WAL stays within what was written ahead. */
static void test_checkpoint_faults(void)
{
    char *spec = spec_for("ckfault");
    pb_store_opts o = {.checkpoint_pages = 32};
    pb_store *s = NULL;
    pb_exec *e = NULL;
    char path[] = "/tmp/pb-store-test-log-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0) goto out;
    unlink(path);
    CHECK_OK(pb_store_open(spec, &o, &s));
    if (!s) goto out;
    long long wal0 = wal_size(spec);
    int n = 0;
    pb_store_stats st = {0};
    pb_log_set_fd(fd);

    /* no executor, every checkpoint failing: 100 writes (some 300 pages, 9 x the
     * threshold) all commit; one warning; no checkpoint counted */
    pb_store_fault_checkpoint(s, PB_STORE_CK_FAIL);
    CHECK(!write_until_checkpoint(s, &n, 100, &st));
    char *t = take_lines(fd);
    CHECKF(strstr(t, "checkpoint of") && strstr(t, "failed") &&
               strstr(t, "tried again in a second"),
           "the failure is logged: %s", t);
    CHECKF(st.checkpoints == 0, "%llu checkpoints", (unsigned long long)st.checkpoints);
    free(t);
    /* the fault gone: within a second and a half of writes the retry runs */
    pb_store_fault_checkpoint(s, 0);
    bool ran = false;
    int64_t t0 = pbt_now_ms();
    while (!ran && pbt_now_ms() - t0 < 5000) {
        ran = write_until_checkpoint(s, &n, 5, &st);
        if (!ran) nanosleep(&(struct timespec){0, 50 * 1000 * 1000}, NULL);
    }
    CHECKF(ran, "a checkpoint ran once the fault was gone (after %lld ms)",
           (long long)(pbt_now_ms() - t0));

    /* an executor whose checkpoint connection does not open: a warning; the writer
     * checkpoints at four times the threshold, so the WAL (grown while checkpoints failed)
     * does not grow further with more writes than it holds pages for */
    e = pb_exec_new(1);
    pb_store_set_executor(s, e);
    pb_store_fault_checkpoint(s, PB_STORE_CK_NO_CONN);
    pb_store_stats before;
    pb_store_stats_get(s, &before);
    long long wal1 = wal_size(spec);
    int more = (int)(wal1 / 4096 / 3) + 40;
    for (int k = 0; k < more; k++)
        CHECK(ck_write(s, n++));
    pb_store_stats_get(s, &st);
    t = take_lines(fd);
    CHECKF(strstr(t, "no connection for checkpoints"), "the missing connection is logged: %s", t);
    free(t);
    CHECKF(
        st.checkpoints > before.checkpoints && st.checkpoints_handed == before.checkpoints_handed,
        "the writer checkpointed (%llu -> %llu), none handed (%llu -> %llu)",
        (unsigned long long)before.checkpoints, (unsigned long long)st.checkpoints,
        (unsigned long long)before.checkpoints_handed, (unsigned long long)st.checkpoints_handed);
    CHECKF(wal1 > wal0 && wal_size(spec) == wal1, "WAL bounded: %lld, %lld, then %lld bytes", wal0,
           wal1, wal_size(spec));
    pb_store_fault_checkpoint(s, 0);
    pb_store_set_executor(s, NULL);
    pb_exec_free(e);
    e = NULL;
    pb_store_close(s);
    s = NULL;

    s = ck_reopen_check(spec, &o, n);
out:
    pb_log_set_fd(2);
    if (fd >= 0) close(fd);
    pb_store_close(s);
    pb_exec_free(e);
    free(spec);
}
#endif

static void test_checkpoints(void)
{
    char *spec = spec_for("ckpt");
    pb_store_opts o = {.checkpoint_pages = 32};
    pb_store *s = NULL;
    CHECK_OK(pb_store_open(spec, &o, &s));
    if (!s) goto out;
    long long wal0 = wal_size(spec);
    CHECKF(wal0 == 1LL << 20, "WAL written out ahead to the threshold's MiB: %lld", wal0);
    int n = 0;
    pb_store_stats st = {0}, st0;

    /* no executor: the writer */
    while (n < 400 && st.checkpoints == 0) {
        CHECK(ck_write(s, n++));
        pb_store_stats_get(s, &st);
    }
    CHECKF(st.checkpoints >= 1 && st.checkpoints_handed == 0, "%llu checkpoints, %llu handed",
           (unsigned long long)st.checkpoints, (unsigned long long)st.checkpoints_handed);

    /* an executor: 20 writes (some 60 WAL pages: past 32, far under four times 32, however
     * late the executor runs) make one due; it runs there, and the writer runs at most one
     * after each (the pages committed while it ran) */
    pb_exec *e = pb_exec_new(1);
    pb_store_set_executor(s, e);
    st0 = st;
    for (int k = 0; k < 20; k++)
        CHECK(ck_write(s, n++));
    for (int t = 0; t < 1000 && st.checkpoints_handed == st0.checkpoints_handed; t++) {
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
        pb_store_stats_get(s, &st);
    }
    CHECKF(st.checkpoints_handed > st0.checkpoints_handed &&
               st.checkpoints - st.checkpoints_handed -
                       (st0.checkpoints - st0.checkpoints_handed) <=
                   st.checkpoints_handed - st0.checkpoints_handed,
           "handed %llu -> %llu, by the writer %llu -> %llu",
           (unsigned long long)st0.checkpoints_handed, (unsigned long long)st.checkpoints_handed,
           (unsigned long long)(st0.checkpoints - st0.checkpoints_handed),
           (unsigned long long)(st.checkpoints - st.checkpoints_handed));

    /* the executor's thread held: past 4 x 32 pages the writer checkpoints after all, and
     * the WAL stays within what was written ahead */
    struct held h = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false};
    pb_exec_run(e, hold_task, &h);
    pthread_mutex_lock(&h.mu);
    while (!h.started)
        pthread_cond_wait(&h.cv, &h.mu);
    pthread_mutex_unlock(&h.mu);
    st0 = st;
    for (int k = 0; k < 300; k++)
        CHECK(ck_write(s, n++));
    pb_store_stats_get(s, &st);
    CHECKF(st.checkpoints - st.checkpoints_handed > st0.checkpoints - st0.checkpoints_handed,
           "the writer checkpointed: %llu -> %llu",
           (unsigned long long)(st0.checkpoints - st0.checkpoints_handed),
           (unsigned long long)(st.checkpoints - st.checkpoints_handed));
    CHECKF(wal_size(spec) == wal0, "WAL bounded: %lld bytes", wal_size(spec));
    pthread_mutex_lock(&h.mu);
    h.release = true;
    pthread_cond_broadcast(&h.cv);
    pthread_mutex_unlock(&h.mu);
    pb_store_set_executor(s, NULL);
    pb_exec_free(e);
    pb_store_close(s);
    s = NULL;

    s = ck_reopen_check(spec, &o, n);
out:
    pb_store_close(s);
    free(spec);
}

static void test_options(void)
{
    pb_store_opts o;
    pb_store_opts_default(&o);
    CHECK_INT(o.sync, PB_SYNC_FULL);
    CHECK_INT(o.busy_timeout_ms, 5000);
    CHECK_INT(o.max_batch, 256);
    CHECK_INT(o.model_log_rows, 100000);
    CHECK_INT(o.checkpoint_pages, 10000);
    pb_store_sync sy;
    CHECK_OK(pb_store_sync_parse("off", &sy));
    CHECK_INT(sy, PB_SYNC_OFF);
    CHECK_OK(pb_store_sync_parse("normal", &sy));
    CHECK_INT(sy, PB_SYNC_NORMAL);
    CHECK_OK(pb_store_sync_parse("full", &sy));
    CHECK_INT(sy, PB_SYNC_FULL);
    CHECK_ERR(pb_store_sync_parse("FULLY", &sy), PB_ERR_INVAL);
    CHECK_STR(pb_store_sync_name(PB_SYNC_NORMAL), "normal");
    CHECK_STR(pb_store_sync_name(PB_SYNC_DEFAULT), "full");

    /* what may be logged of a spec */
    static const char *const redact[][2] = {
        {"postgresql://u:secret@db.example:5432/pb", "postgresql://u:***@db.example:5432/pb"},
        {"postgres://u:p@ss@h/db?sslmode=require", "postgres://u:***@h/db?sslmode=require"},
        {"postgresql://u@h/db?password=secret&sslmode=require",
         "postgresql://u@h/db?password=***&sslmode=require"},
        {"postgresql://h/db?a=1&password=x", "postgresql://h/db?a=1&password=***"},
        {"postgresql://h/db", "postgresql://h/db"},
        {"sqlite:/var/lib/postbox/postbox.db", "sqlite:/var/lib/postbox/postbox.db"},
    };
    for (size_t i = 0; i < sizeof redact / sizeof redact[0]; i++) {
        char *r = pb_store_spec_redact(redact[i][0]);
        CHECK_STR(r, redact[i][1]);
        free(r);
    }

    char *p = spec_for("opts");
    if (!p) return;
    pb_store *s = NULL;
    pb_store_opts bad = {.max_batch = -1};
    CHECK_ERR(pb_store_open(p, &bad, &s), PB_ERR_CONFIG);
    bad = (pb_store_opts){.busy_timeout_ms = -5};
    CHECK_ERR(pb_store_open(p, &bad, &s), PB_ERR_CONFIG);
    bad = (pb_store_opts){.sync = (pb_store_sync)42};
    CHECK_ERR(pb_store_open(p, &bad, &s), PB_ERR_CONFIG);
    bad = (pb_store_opts){.model_log_rows = -1};
    CHECK_ERR(pb_store_open(p, &bad, &s), PB_ERR_CONFIG);
    bad = (pb_store_opts){.model_log_rows = PB_STORE_MODEL_LOG_LIMIT + 1};
    CHECK_ERR(pb_store_open(p, &bad, &s), PB_ERR_CONFIG);
    bad = (pb_store_opts){.checkpoint_pages = -1};
    CHECK_ERR(pb_store_open(p, &bad, &s), PB_ERR_CONFIG);
    bad = (pb_store_opts){.checkpoint_pages = PB_STORE_CHECKPOINT_PAGES_LIMIT + 1};
    CHECK_ERR(pb_store_open(p, &bad, &s), PB_ERR_CONFIG);
    CHECK(s == NULL);
    CHECK_ERR(pb_store_open("sqlite:", NULL, &s), PB_ERR_CONFIG);
    CHECK_ERR(pb_store_open("postgres:db", NULL, &s), PB_ERR_CONFIG); /* not a URI */
    CHECK_ERR(pb_store_open("postgresql://127.0.0.1/db?no_such_option=1", NULL, &s), PB_ERR_CONFIG);
    CHECK_ERR(pb_store_open(":memory:", NULL, &s), PB_ERR_CONFIG);
    char *missing = db_path("no/such/dir/x.db");
    CHECK_ERR(pb_store_open(missing, NULL, &s), PB_ERR_CONFIG);
    CHECK(s == NULL);
    long long tables = -1;
    if (!g_pg) {
        CHECK(access(p + 7, F_OK) != 0); /* refused options created nothing */
    } else {
        /* nor touched the database */
        CHECK(raw_int(p, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", &tables));
        CHECK_INT(tables, 0);
        /* a server that cannot be reached: the store cannot be opened now */
        CHECK_ERR(
            pb_store_open("postgresql://postbox@127.0.0.1:1/postbox?connect_timeout=5", NULL, &s),
            PB_ERR_STORE);
        CHECK(s == NULL);
    }

    /* zero-initialised options are the defaults; sync off works */
    pb_store_opts zero = {0};
    CHECK_OK(pb_store_open(p, &zero, &s));
    if (s) CHECK_STR(pb_store_backend(s), g_pg ? "postgres" : "sqlite");
    pb_store_close(s);
    s = NULL;
    pb_store_opts off = {.sync = PB_SYNC_OFF, .max_batch = 1};
    CHECK_OK(pb_store_open(p, &off, &s));
    CHECK_OK(pb_store_meta_set(s, "k", "v"));
    CHECK(meta_is(s, "k", "v"));
    pb_store_close(s);
    pb_store_close(NULL);
    free(missing);
    free(p);
}

static void test_open_migrate_reopen(void)
{
    char *spec = spec_for("main");
    if (!spec) return;

    pb_store *s = NULL;
    CHECK_OK(pb_store_open(spec, NULL, &s));
    if (!s) goto out;
    struct stat st;
    if (!g_pg) CHECK(stat(spec + 7, &st) == 0 && (st.st_mode & 0777) == 0600);
    int v1 = -1, v2 = -2;
    CHECK_OK(pb_store_schema_version(s, &v1));
    CHECK_INT(v1, SCHEMA_CURRENT);
    CHECK_OK(pb_store_ping(s));
    CHECK_OK(pb_store_integrity_check(s));
    CHECK_OK(pb_store_meta_set(s, "server_id", "alpha.example:443"));
    pb_store_close(s);
    s = NULL;

    /* reopen (SQLite: with a plain path): same version, data survived, no second
     * migration */
    CHECK_OK(pb_store_open(g_pg ? spec : spec + 7, NULL, &s));
    if (!s) goto out;
    CHECK_OK(pb_store_schema_version(s, &v2));
    CHECK_INT(v2, v1);
    CHECK(meta_is(s, "server_id", "alpha.example:443"));
    pb_store_close(s);
    s = NULL;

    /* a database from a newer postbox is refused and left alone */
    CHECK(raw_exec(spec, "UPDATE schema_version SET version = 999"));
    CHECK_ERR(pb_store_open(spec, NULL, &s), PB_ERR_CONFIG);
    CHECK(s == NULL);
    long long v = 0;
    CHECK(raw_int(spec, "SELECT version FROM schema_version", &v) && v == 999);

    /* SQLite: a file that is not a database */
    if (!g_pg) {
        char *junk = db_path("junk.db");
        FILE *f = fopen(junk, "w");
        CHECK(f != NULL);
        if (f) {
            for (int i = 0; i < 256; i++)
                fputs("this is not an SQLite database file. ", f);
            fclose(f);
        }
        CHECK_ERR(pb_store_open(junk, NULL, &s), PB_ERR_CORRUPT);
        CHECK(s == NULL);
        free(junk);
    }
out:
    free(spec);
}

/* Several nodes starting at once on a new store: each opens it, it is migrated once. */
#define OPEN_THREADS 4

struct open_arg {
    const char *spec;
    pthread_barrier_t *start;
    pb_err err;
    pb_store *s;
};

static void *open_thread(void *p)
{
    struct open_arg *a = p;
    pthread_barrier_wait(a->start);
    a->err = pb_store_open(a->spec, NULL, &a->s);
    return NULL;
}

static void test_concurrent_open(void)
{
    char *spec = spec_for("copen");
    if (!spec) return;
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, OPEN_THREADS);
    pthread_t th[OPEN_THREADS];
    struct open_arg args[OPEN_THREADS];
    for (int i = 0; i < OPEN_THREADS; i++) {
        args[i] = (struct open_arg){.spec = spec, .start = &start};
        CHECK(pthread_create(&th[i], NULL, open_thread, &args[i]) == 0);
    }
    for (int i = 0; i < OPEN_THREADS; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < OPEN_THREADS; i++) {
        CHECK_OK(args[i].err);
        int v = 0;
        if (args[i].s) CHECK_OK(pb_store_schema_version(args[i].s, &v));
        CHECK_INT(v, SCHEMA_CURRENT);
    }
    if (args[0].s) CHECK_OK(pb_store_meta_set(args[0].s, "node", "0"));
    if (args[OPEN_THREADS - 1].s) CHECK(meta_is(args[OPEN_THREADS - 1].s, "node", "0"));
    for (int i = 0; i < OPEN_THREADS; i++)
        pb_store_close(args[i].s);
    pthread_barrier_destroy(&start);
    free(spec);
}

/* ---- meta and peers --------------------------------------------------------------------- */

static void test_meta(pb_store *s)
{
    char *v = (char *)"untouched";
    CHECK_ERR(pb_store_meta_get(s, "nope", &v), PB_ERR_NOT_FOUND);
    CHECK_STR(v, "untouched");
    CHECK_OK(pb_store_meta_set(s, "a", "1"));
    CHECK(meta_is(s, "a", "1"));
    CHECK_OK(pb_store_meta_set(s, "a", "two"));
    CHECK(meta_is(s, "a", "two"));
    CHECK_OK(pb_store_meta_set(s, "empty", ""));
    CHECK(meta_is(s, "empty", ""));
    CHECK_ERR(pb_store_meta_set(s, "", "x"), PB_ERR_INVAL);
    CHECK_ERR(pb_store_meta_set(s, "a", NULL), PB_ERR_INVAL);
    CHECK(meta_is(s, "a", "two"));
}

static void test_peers(pb_store *s)
{
    uint8_t k1[PB_PUBKEY_LEN], k2[PB_PUBKEY_LEN], got[PB_PUBKEY_LEN];
    fill_key(k1, 1);
    fill_key(k2, 100);
    int64_t before = (int64_t)time(NULL);

    pb_peer_info *list = NULL;
    size_t n = 99;
    CHECK_OK(pb_store_peer_list(s, &list, &n));
    CHECK_INT(n, 0);
    pb_peer_info_free_array(list, n);

    CHECK_OK(pb_store_peer_touch(s, "b.example:443", 0));
    CHECK_OK(pb_store_peer_touch(s, "a.example:443", 100));
    CHECK_ERR(pb_store_peer_key_get(s, "a.example:443", got), PB_ERR_NOT_FOUND);
    CHECK_ERR(pb_store_peer_key_get(s, "zzz.example:443", got), PB_ERR_NOT_FOUND);
    CHECK_OK(pb_store_peer_key_set(s, "c.example:443", k1, 50)); /* creates the row */
    CHECK_OK(pb_store_peer_key_set(s, "a.example:443", k1, 60));
    CHECK_OK(pb_store_peer_key_set(s, "a.example:443", k2, 70)); /* replaces */
    CHECK_OK(pb_store_peer_key_get(s, "a.example:443", got));
    CHECK_MEM(got, sizeof got, k2, sizeof k2);
    CHECK_OK(pb_store_peer_touch(s, "a.example:443", 0)); /* keeps last_contact */
    CHECK_OK(pb_store_peer_touch(s, "b.example:443", 300));
    CHECK_ERR(pb_store_peer_touch(s, "", 1), PB_ERR_INVAL);

    list = NULL;
    n = 0;
    CHECK_OK(pb_store_peer_list(s, &list, &n));
    CHECK_INT(n, 3);
    if (n == 3) {
        CHECK_STR(list[0].server_id, "a.example:443");
        CHECK_STR(list[1].server_id, "b.example:443");
        CHECK_STR(list[2].server_id, "c.example:443");
        CHECK(list[0].has_key);
        CHECK_MEM(list[0].key, PB_PUBKEY_LEN, k2, PB_PUBKEY_LEN);
        CHECK_INT(list[0].key_fetched_at, 70);
        CHECK_INT(list[0].last_contact, 100);
        CHECK(!list[1].has_key);
        CHECK_INT(list[1].key_fetched_at, 0);
        CHECK_INT(list[1].last_contact, 300);
        CHECK(list[2].has_key);
        CHECK_MEM(list[2].key, PB_PUBKEY_LEN, k1, PB_PUBKEY_LEN);
        CHECK_INT(list[2].last_contact, 0);
        for (size_t i = 0; i < n; i++)
            CHECKF(list[i].first_seen >= before && list[i].first_seen <= (int64_t)time(NULL),
                   "first_seen %lld", (long long)list[i].first_seen);
    }
    pb_peer_info_free_array(list, n);
}

/* ---- group commit ----------------------------------------------------------------------- */

#define NTHREADS 16
#define NWRITES 200

struct writer_arg {
    pb_store *s;
    int id;
    int failures;   /* writes that did not return PB_OK */
    int unreadable; /* writes not visible to a read right after they returned */
};

static void *writer_thread(void *p)
{
    struct writer_arg *a = p;
    char key[64], val[64];
    for (int i = 0; i < NWRITES; i++) {
        snprintf(key, sizeof key, "t%d.%d", a->id, i);
        snprintf(val, sizeof val, "v%d", i * 7 + a->id);
        if (pb_store_meta_set(a->s, key, val) != PB_OK) {
            a->failures++;
            continue;
        }
        if (!meta_is(a->s, key, val)) a->unreadable++;
    }
    return NULL;
}

static void test_concurrent(pb_store *s)
{
    pb_store_stats st0, st1;
    pb_store_stats_get(s, &st0);
    pthread_t th[NTHREADS];
    struct writer_arg args[NTHREADS];
    int64_t t0 = pbt_now_ms();
    for (int i = 0; i < NTHREADS; i++) {
        args[i] = (struct writer_arg){.s = s, .id = i};
        CHECK(pthread_create(&th[i], NULL, writer_thread, &args[i]) == 0);
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    int64_t ms = pbt_now_ms() - t0;
    pb_store_stats_get(s, &st1);
    uint64_t commits = st1.commits - st0.commits, writes = st1.writes - st0.writes;
    printf("concurrent: %d writes by %d threads in %lld ms: %llu commits for %llu writes\n",
           NTHREADS * NWRITES, NTHREADS, (long long)ms, (unsigned long long)commits,
           (unsigned long long)writes);
    for (int i = 0; i < NTHREADS; i++) {
        CHECK_INT(args[i].failures, 0);
        CHECK_INT(args[i].unreadable, 0);
    }
    CHECK_INT(writes, NTHREADS * NWRITES);
    if (g_pg) {
        /* one transaction per write call; PostgreSQL groups the commits' WAL flushes */
        CHECK_INT(commits, writes);
    } else {
        /* the writer batched concurrent writes into fewer transactions */
        CHECKF(commits < writes, "%llu commits, %llu writes", (unsigned long long)commits,
               (unsigned long long)writes);
        CHECK(commits > 0);
    }
    int missing = 0;
    char key[64], val[64];
    for (int t = 0; t < NTHREADS; t++) {
        for (int i = 0; i < NWRITES; i++) {
            snprintf(key, sizeof key, "t%d.%d", t, i);
            snprintf(val, sizeof val, "v%d", i * 7 + t);
            if (!meta_is(s, key, val)) missing++;
        }
    }
    CHECK_INT(missing, 0);
}

#ifdef PB_FAULTS
struct job_arg {
    pb_store *s;
    char key[32];
    bool bad;
    pb_err result;
};

static void *one_write(void *p)
{
    struct job_arg *a = p;
    a->result =
        a->bad ? pb_store_fault_bad_write(a->s, a->key) : pb_store_meta_set(a->s, a->key, "good");
    return NULL;
}

/* Waits (bounded) until n writes are queued behind the held writer. */
static bool wait_queued(pb_store *s, size_t n)
{
    int64_t deadline = pbt_now_ms() + 20000;
    while (pb_store_fault_queued(s) < n) {
        if (pbt_now_ms() > deadline) return false;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return true;
}

#define NBATCH 8

/* One batch of 8 writes, the 4th of which breaks a constraint after writing: seven writes
 * present, nothing of the bad one; SQLite commits them in exactly one transaction,
 * PostgreSQL in seven. */
static void test_failing_job_in_batch(pb_store *s)
{
    pthread_t th[NBATCH];
    struct job_arg args[NBATCH];
    pb_store_stats st0, st1;
    pb_store_fault_hold(s, true);
    pb_store_stats_get(s, &st0);
    for (int i = 0; i < NBATCH; i++) {
        args[i] = (struct job_arg){.s = s, .bad = i == 3};
        snprintf(args[i].key, sizeof args[i].key, "batch.%d", i);
        CHECK(pthread_create(&th[i], NULL, one_write, &args[i]) == 0);
    }
    CHECK(wait_queued(s, NBATCH));
    pb_store_fault_hold(s, false);
    for (int i = 0; i < NBATCH; i++)
        pthread_join(th[i], NULL);
    pb_store_stats_get(s, &st1);
    CHECK_INT(st1.commits - st0.commits, g_pg ? NBATCH - 1 : 1);
    CHECK_INT(st1.writes - st0.writes, NBATCH - 1);
    char *v = NULL;
    for (int i = 0; i < NBATCH; i++) {
        if (args[i].bad) {
            CHECK_ERR(args[i].result, PB_ERR_INVAL);
            CHECK_ERR(pb_store_meta_get(s, args[i].key, &v), PB_ERR_NOT_FOUND);
        } else {
            CHECK_OK(args[i].result);
            CHECK(meta_is(s, args[i].key, "good"));
        }
    }
    CHECK_ERR(pb_store_meta_get(s, "batch.3.x", &v), PB_ERR_NOT_FOUND);
    CHECK_OK(pb_store_integrity_check(s));
}

static void test_fault(pb_store *s)
{
    uint8_t k[PB_PUBKEY_LEN], got[PB_PUBKEY_LEN];
    fill_key(k, 9);
    pb_store_stats st0, st1;
    pb_store_stats_get(s, &st0);
    pb_store_fault_set(s, PB_ERR_STORE);
    CHECK_ERR(pb_store_meta_set(s, "fault.k", "v"), PB_ERR_STORE);
    CHECK_ERR(pb_store_peer_touch(s, "fault.example:443", 5), PB_ERR_STORE);
    CHECK_ERR(pb_store_peer_key_set(s, "fault.example:443", k, 5), PB_ERR_STORE);
    CHECK_ERR(pb_store_ping(s), PB_ERR_STORE);
    char *v = NULL;
    CHECK_ERR(pb_store_meta_get(s, "fault.k", &v), PB_ERR_NOT_FOUND); /* reads still work */
    CHECK_ERR(pb_store_peer_key_get(s, "fault.example:443", got), PB_ERR_NOT_FOUND);
    pb_store_stats_get(s, &st1);
    CHECK_INT(st1.commits, st0.commits);
    CHECK_INT(st1.writes, st0.writes);

    pb_store_fault_set(s, PB_OK);
    CHECK_OK(pb_store_meta_set(s, "fault.k", "v"));
    CHECK(meta_is(s, "fault.k", "v"));
    CHECK_OK(pb_store_peer_key_set(s, "fault.example:443", k, 5));
    CHECK_OK(pb_store_peer_key_get(s, "fault.example:443", got));
    CHECK_MEM(got, sizeof got, k, sizeof k);
    CHECK_OK(pb_store_ping(s));
}

/* close() commits writes that were queued behind a held writer. */
static void test_close_drains(void)
{
    char *p = spec_for("drain");
    pb_store *s = NULL;
    if (!p) return;
    CHECK_OK(pb_store_open(p, NULL, &s));
    if (!s) goto out;
    pthread_t th[4];
    struct job_arg args[4];
    pb_store_fault_hold(s, true);
    for (int i = 0; i < 4; i++) {
        args[i] = (struct job_arg){.s = s};
        snprintf(args[i].key, sizeof args[i].key, "drain.%d", i);
        CHECK(pthread_create(&th[i], NULL, one_write, &args[i]) == 0);
    }
    CHECK(wait_queued(s, 4));
    pb_store_close(s); /* returns only after the queued writes' callers have their result */
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK_OK(args[i].result);
    }
    s = NULL;
    CHECK_OK(pb_store_open(p, NULL, &s));
    if (!s) goto out;
    for (int i = 0; i < 4; i++)
        CHECK(meta_is(s, args[i].key, "good"));
    pb_store_close(s);
out:
    free(p);
}
#endif

/* ---- delivery engine state -------------------------------------------------------------- */

static pb_event ev_added(uint64_t user, uint64_t guild)
{
    return (pb_event){.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = user, .guild_id = guild};
}

static pb_event ev_removed(uint64_t user, uint64_t guild)
{
    return (pb_event){.kind = PB_EV_USER_REMOVED_FROM_GUILD, .user_id = user, .guild_id = guild};
}

static pb_event ev_invited(uint64_t user, uint64_t inviter, const char *invite)
{
    return (pb_event){.kind = PB_EV_USER_INVITED,
                      .user_id = user,
                      .inviter_id = inviter,
                      .invite_id = (char *)invite};
}

static pb_event ev_rejected(uint64_t user, uint64_t guild, const char *invite)
{
    return (pb_event){.kind = PB_EV_USER_REJECTED_INVITE,
                      .user_id = user,
                      .guild_id = guild,
                      .invite_id = (char *)invite};
}

/* Opens a fresh store for one case; *spec (may be NULL) gets its spec (caller frees). */
static pb_store *open_fresh(const char *name, char **spec)
{
    char *p = spec_for(name);
    pb_store *s = NULL;
    if (p) CHECK_OK(pb_store_open(p, NULL, &s));
    if (spec) {
        *spec = p;
    } else {
        free(p);
    }
    return s;
}

static uint64_t next_seq_of(pb_store *s, const char *peer)
{
    pb_peer_state st;
    if (pb_store_peer_state_get(s, peer, &st) != PB_OK) return 0;
    uint64_t v = st.next_seq;
    pb_peer_state_clear(&st);
    return v;
}

static uint64_t inbox_last(pb_store *s)
{
    uint64_t v = 0;
    CHECK_OK(pb_store_inbox_last_seq(s, &v));
    return v;
}

static size_t outbox_count(pb_store *s, const char *peer)
{
    pb_outbox_item *it = NULL;
    size_t n = 0;
    if (pb_store_outbox_read(s, peer, 1, 1000000, SIZE_MAX, &it, &n) != PB_OK) return (size_t)-1;
    pb_outbox_items_free(it, n);
    return n;
}

static void test_outbox(void)
{
    char *spec = NULL;
    pb_store *s = open_fresh("outbox", &spec);
    if (!s) {
        free(spec);
        return;
    }
    const char *p1 = "p1.example:443", *p2 = "p2.example:443";
    pb_event e[4] = {ev_added(1, 10), ev_invited(2, 3, "inv-1"), ev_removed(4, 5),
                     ev_rejected(6, 7, "inv-2")};
    uint64_t last = 0;
    CHECK_OK(pb_store_outbox_append(s, p1, e, 3, 1000, &last));
    CHECK_INT(last, 3);
    CHECK_OK(pb_store_outbox_append(s, p2, e + 1, 2, 1100, &last));
    CHECK_INT(last, 2); /* per-peer numbering */
    CHECK_OK(pb_store_outbox_append(s, p1, e + 3, 1, 1200, &last));
    CHECK_INT(last, 4);
    CHECK_OK(pb_store_outbox_append(s, p2, e, 1, 1300, NULL));
    CHECK_INT(next_seq_of(s, p2), 4);

    /* refused appends write nothing */
    CHECK_ERR(pb_store_outbox_append(s, p1, e, 0, 1, &last), PB_ERR_INVAL);
    pb_event bad[2] = {ev_added(1, 1), {.kind = PB_EV_NONE}};
    CHECK_ERR(pb_store_outbox_append(s, p1, bad, 2, 1, &last), PB_ERR_INVAL);
    pb_event noinv = ev_invited(1, 2, NULL);
    CHECK_ERR(pb_store_outbox_append(s, p1, &noinv, 1, 1, &last), PB_ERR_INVAL);
    CHECK_INT(next_seq_of(s, p1), 5);
    CHECK_INT(outbox_count(s, p1), 4);

    pb_outbox_item *it = NULL;
    size_t n = 0;
    CHECK_OK(pb_store_outbox_read(s, p1, 1, 100, SIZE_MAX, &it, &n));
    CHECK_INT(n, 4);
    size_t sizes[4] = {0};
    if (n == 4) {
        const pb_event *want[4] = {&e[0], &e[1], &e[2], &e[3]};
        const int64_t at[4] = {1000, 1000, 1000, 1200};
        for (size_t i = 0; i < 4; i++) {
            CHECK_INT(it[i].seq, i + 1);
            CHECK_INT(it[i].created_at, at[i]);
            CHECK(pb_event_equal(&it[i].ev, want[i]));
            CHECK(it[i].size > 0);
            sizes[i] = it[i].size;
        }
    }
    pb_outbox_items_free(it, n);

    /* from a cursor */
    CHECK_OK(pb_store_outbox_read(s, p1, 3, 100, SIZE_MAX, &it, &n));
    CHECK(n == 2 && it[0].seq == 3 && it[1].seq == 4);
    pb_outbox_items_free(it, n);
    /* max_items */
    CHECK_OK(pb_store_outbox_read(s, p1, 1, 2, SIZE_MAX, &it, &n));
    CHECK(n == 2 && it[0].seq == 1 && it[1].seq == 2);
    pb_outbox_items_free(it, n);
    /* max_bytes: exactly two fit; one byte less: one; zero: still one */
    CHECK_OK(pb_store_outbox_read(s, p1, 1, 100, sizes[0] + sizes[1], &it, &n));
    CHECK_INT(n, 2);
    pb_outbox_items_free(it, n);
    CHECK_OK(pb_store_outbox_read(s, p1, 1, 100, sizes[0] + sizes[1] - 1, &it, &n));
    CHECK_INT(n, 1);
    pb_outbox_items_free(it, n);
    CHECK_OK(pb_store_outbox_read(s, p1, 2, 100, 0, &it, &n));
    CHECK(n == 1 && it[0].seq == 2);
    pb_outbox_items_free(it, n);
    /* nothing there */
    it = (pb_outbox_item *)&n;
    CHECK_OK(pb_store_outbox_read(s, p1, 5, 100, SIZE_MAX, &it, &n));
    CHECK(n == 0 && it == NULL);
    CHECK_OK(pb_store_outbox_read(s, "nobody.example:443", 1, 100, SIZE_MAX, &it, &n));
    CHECK(n == 0 && it == NULL);
    CHECK_OK(pb_store_outbox_read(s, p1, UINT64_MAX, 100, SIZE_MAX, &it, &n));
    CHECK(n == 0 && it == NULL);
    CHECK_ERR(pb_store_outbox_read(s, p1, 1, 0, SIZE_MAX, &it, &n), PB_ERR_INVAL);

    /* ack up to a seq; only that peer */
    CHECK_OK(pb_store_outbox_ack(s, p1, 2));
    CHECK_OK(pb_store_outbox_read(s, p1, 1, 100, SIZE_MAX, &it, &n));
    CHECK(n == 2 && it[0].seq == 3 && it[1].seq == 4);
    pb_outbox_items_free(it, n);
    CHECK_INT(outbox_count(s, p2), 3);
    CHECK_OK(pb_store_outbox_ack(s, p1, 2)); /* again: no-op */

    /* remove one */
    CHECK_OK(pb_store_outbox_remove(s, p1, 3));
    CHECK_ERR(pb_store_outbox_remove(s, p1, 3), PB_ERR_NOT_FOUND);
    CHECK_ERR(pb_store_outbox_remove(s, p2, 99), PB_ERR_NOT_FOUND);
    CHECK_ERR(pb_store_outbox_remove(s, p2, UINT64_MAX), PB_ERR_NOT_FOUND);
    CHECK_OK(pb_store_outbox_read(s, p1, 1, 100, SIZE_MAX, &it, &n));
    CHECK(n == 1 && it[0].seq == 4);
    pb_outbox_items_free(it, n);

    /* sequence numbers are never reused */
    CHECK_OK(pb_store_outbox_append(s, p1, e, 1, 1400, &last));
    CHECK_INT(last, 5);
    CHECK_OK(pb_store_outbox_ack(s, p1, UINT64_MAX));
    CHECK_INT(outbox_count(s, p1), 0);
    CHECK_OK(pb_store_outbox_append(s, p1, e, 1, 1500, &last));
    CHECK_INT(last, 6);
    CHECK_INT(outbox_count(s, p2), 3);
    CHECK_OK(pb_store_integrity_check(s));
    CHECK_QUEUE_COUNTERS(spec);
    pb_store_close(s);

    /* a stored event that does not decode is corruption, not an empty read */
    CHECK(raw_exec(spec, g_pg ? "INSERT INTO outbox(peer, seq, event, created_at)"
                                " VALUES ('p1.example:443', 7, decode('ffff', 'hex'), 1)"
                              : "INSERT INTO outbox(peer, seq, event, created_at)"
                                " VALUES ('p1.example:443', 7, x'ffff', 1)"));
    s = NULL;
    CHECK_OK(pb_store_open(spec, NULL, &s));
    free(spec);
    if (!s) return;
    it = (pb_outbox_item *)&n;
    CHECK_ERR(pb_store_outbox_read(s, p1, 1, 100, SIZE_MAX, &it, &n), PB_ERR_CORRUPT);
    CHECK(it == (pb_outbox_item *)&n);                              /* out-params untouched */
    CHECK_OK(pb_store_outbox_read(s, p1, 1, 1, SIZE_MAX, &it, &n)); /* seq 6 is fine */
    CHECK(n == 1 && it[0].seq == 6);
    pb_outbox_items_free(it, n);
    pb_store_close(s);
}

/* pb_store_outbox_ack_many: many peers' acknowledgements in one transaction (the delivery
 * engine's forget batch): one commit, each peer only up to its own number, all or nothing. */
static void test_outbox_ack_many(void)
{
    char *spec = NULL;
    pb_store *s = open_fresh("ackmany", &spec);
    if (!s) {
        free(spec);
        return;
    }
    const char *p[3] = {"a.example:443", "b.example:443", "c.example:443"};
    pb_event e[3] = {ev_added(1, 10), ev_added(2, 11), ev_removed(3, 12)};
    for (int i = 0; i < 3; i++)
        CHECK_OK(pb_store_outbox_append(s, p[i], e, 3, 1000, NULL));
    CHECK_OK(pb_store_outbox_append(s, "d.example:443", e, 2, 1000, NULL));
    pb_store_stats st0, st1;
    pb_store_stats_get(s, &st0);
    const char *const ids[3] = {p[0], p[1], p[2]};
    const uint64_t upto[3] = {2, 1, UINT64_MAX};
    CHECK_OK(pb_store_outbox_ack_many(s, ids, upto, 3));
    pb_store_stats_get(s, &st1);
    if (!g_pg) CHECK_INT(st1.commits - st0.commits, 1); /* one commit for the three */
    CHECK_INT(outbox_count(s, p[0]), 1);
    CHECK_INT(outbox_count(s, p[1]), 2);
    CHECK_INT(outbox_count(s, p[2]), 0);
    CHECK_INT(outbox_count(s, "d.example:443"), 2); /* not named: untouched */
    pb_outbox_item *it = NULL;
    size_t n = 0;
    CHECK_OK(pb_store_outbox_read(s, p[1], 1, 100, SIZE_MAX, &it, &n));
    CHECK(n == 2 && it[0].seq == 2 && it[1].seq == 3);
    pb_outbox_items_free(it, n);
    /* again, and below what is gone: no-ops; none at all: PB_OK */
    CHECK_OK(pb_store_outbox_ack_many(s, ids, upto, 3));
    CHECK_OK(pb_store_outbox_ack_many(s, NULL, NULL, 0));
    CHECK_INT(outbox_count(s, p[0]), 1);
    /* an invalid ID refuses the whole call: nothing forgotten */
    const char *const bad[2] = {p[0], ""};
    const uint64_t all[2] = {UINT64_MAX, UINT64_MAX};
    CHECK_ERR(pb_store_outbox_ack_many(s, bad, all, 2), PB_ERR_INVAL);
    CHECK_INT(outbox_count(s, p[0]), 1);
    /* a failing write: nothing forgotten, then it goes through */
    pb_store_fault_set(s, PB_ERR_STORE);
    CHECK_ERR(pb_store_outbox_ack_many(s, ids, all, 2), PB_ERR_STORE);
    pb_store_fault_set(s, PB_OK);
    CHECK_INT(outbox_count(s, p[0]), 1);
    CHECK_INT(outbox_count(s, p[1]), 2);
    CHECK_OK(pb_store_outbox_ack_many(s, ids, all, 2));
    CHECK_INT(outbox_count(s, p[0]), 0);
    CHECK_INT(outbox_count(s, p[1]), 0);
    CHECK_QUEUE_COUNTERS(spec);
    pb_store_close(s);
    free(spec);
}

/* The outbox's change count (pb_store_outbox_quiet): what it counts and what it does not. */
static int64_t quiet_gen(pb_store *s)
{
    uint64_t g = 0;
    return pb_store_outbox_quiet(s, &g) ? (int64_t)g : -1;
}

#ifdef PB_FAULTS
static void *drop_thread(void *arg)
{
    pb_drop_result r;
    CHECK_OK(pb_store_outbox_drop(arg, "q1.example:443", INT64_MAX, "operator", 2000, false, &r));
    return NULL;
}
#endif

static void test_outbox_quiet(void)
{
    pb_store *s = open_fresh("quiet", NULL);
    if (!s) return;
    const char *p1 = "q1.example:443", *p2 = "q2.example:443";
    pb_event e[2] = {ev_added(1, 10), ev_added(2, 11)};
    int64_t g = quiet_gen(s);
    CHECK(g >= 0);
    /* not counted: appends, reads, the engine's forgets, an invalid call */
    CHECK_OK(pb_store_outbox_append(s, p1, e, 2, 1000, NULL));
    CHECK_OK(pb_store_outbox_append(s, p2, e, 2, 1000, NULL));
    pb_outbox_item *it = NULL;
    size_t n = 0;
    CHECK_OK(pb_store_outbox_read(s, p1, 1, 10, SIZE_MAX, &it, &n));
    pb_outbox_items_free(it, n);
    const char *const ids[1] = {p2};
    const uint64_t upto[1] = {1};
    CHECK_OK(pb_store_outbox_ack_many(s, ids, upto, 1));
    CHECK_ERR(pb_store_outbox_ack(s, "", 1), PB_ERR_INVAL);
    CHECK_INT(quiet_gen(s), g);
    /* counted, each once, whether it succeeds or not */
    uint8_t key[PB_PUBKEY_LEN];
    fill_key(key, 7);
    uint64_t epoch = 0;
    pb_drop_result r;
    CHECK_OK(pb_store_outbox_ack(s, p1, 1));
    CHECK_INT(quiet_gen(s), g + 1);
    CHECK_ERR(pb_store_outbox_remove(s, p1, 99), PB_ERR_NOT_FOUND);
    CHECK_INT(quiet_gen(s), g + 2);
    CHECK_OK(pb_store_outbox_drop(s, p2, INT64_MAX, "operator", 2000, false, &r));
    CHECK_INT(quiet_gen(s), g + 3);
    CHECK_OK(pb_store_peer_new_epoch(s, p1, &epoch));
    CHECK_INT(quiet_gen(s), g + 4);
    CHECK_OK(pb_store_peer_rename(s, p2, "q3.example:443", key, 3000));
    CHECK_INT(quiet_gen(s), g + 5);
    CHECK_OK(pb_store_self_rename(s, "me.example:443", "me2.example:443", 3000));
    CHECK_INT(quiet_gen(s), g + 6);
#ifdef PB_FAULTS
    /* while one is under way: not quiet */
    pb_store_fault_hold(s, true);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, drop_thread, s) == 0);
    CHECK(wait_queued(s, 1));
    uint64_t now = 0;
    CHECK(!pb_store_outbox_quiet(s, &now));
    CHECK_INT(now, g + 7);
    pb_store_fault_hold(s, false);
    pthread_join(th, NULL);
    CHECK_INT(quiet_gen(s), g + 7);
#endif
    pb_store_close(s);
}

static void test_peer_state(void)
{
    pb_store *s = open_fresh("state", NULL);
    if (!s) return;
    const char *a = "a.example:443", *b = "b.example:443";
    pb_peer_state st = {.server_id = (char *)"untouched"};
    CHECK_ERR(pb_store_peer_state_get(s, a, &st), PB_ERR_NOT_FOUND);
    CHECK_STR(st.server_id, "untouched");

    CHECK_OK(pb_store_peer_state_set(s, b, PB_MODE_QUEUED, 3, 12345, "timeout", 0));
    CHECK_OK(pb_store_peer_state_get(s, b, &st));
    CHECK_STR(st.server_id, b);
    CHECK_INT(st.mode, PB_MODE_QUEUED);
    CHECK_INT(st.attempts, 3);
    CHECK_INT(st.next_attempt_at, 12345);
    CHECK_STR(st.last_error, "timeout");
    CHECK_INT(st.parked_seq, 0);
    CHECK_INT(st.queued, 0);
    CHECK_INT(st.oldest_queued_at, 0);
    CHECK_INT(st.next_seq, 1);
    CHECK_INT(st.recv_seq, 0);
    pb_peer_state_clear(&st);

    pb_event e[2] = {ev_added(1, 2), ev_removed(1, 2)};
    CHECK_OK(pb_store_outbox_append(s, b, e, 2, 1000, NULL));
    CHECK_OK(pb_store_outbox_append(s, b, e, 1, 2000, NULL));
    CHECK_OK(pb_store_outbox_append(s, a, e, 1, 3000, NULL));
    CHECK_OK(pb_store_peer_state_set(s, b, PB_MODE_PARKED, 0, 0, NULL, 3));
    CHECK_OK(pb_store_outbox_ack(s, b, 1));
    CHECK_OK(pb_store_peer_touch(s, b, 77));
    CHECK_OK(pb_store_peer_state_get(s, b, &st));
    CHECK_INT(st.mode, PB_MODE_PARKED);
    CHECK(st.last_error == NULL);
    CHECK_INT(st.parked_seq, 3);
    CHECK_INT(st.queued, 2);
    CHECK_INT(st.oldest_queued_at, 1000); /* seq 2 */
    CHECK_INT(st.next_seq, 4);
    CHECK_INT(st.last_contact, 77);
    pb_peer_state_clear(&st);
    CHECK_OK(pb_store_outbox_ack(s, b, 2));
    CHECK_OK(pb_store_peer_state_get(s, b, &st));
    CHECK_INT(st.queued, 1);
    CHECK_INT(st.oldest_queued_at, 2000);
    pb_peer_state_clear(&st);

    CHECK_ERR(pb_store_peer_state_set(s, a, (pb_peer_mode)7, 0, 0, NULL, 0), PB_ERR_INVAL);
    CHECK_ERR(pb_store_peer_state_set(s, "", PB_MODE_PUSH, 0, 0, NULL, 0), PB_ERR_INVAL);

    pb_peer_state *list = NULL;
    size_t n = 0;
    CHECK_OK(pb_store_peer_state_list(s, &list, &n));
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_STR(list[0].server_id, a);
        CHECK_INT(list[0].mode, PB_MODE_PUSH);
        CHECK_INT(list[0].queued, 1);
        CHECK_INT(list[0].oldest_queued_at, 3000);
        CHECK_INT(list[0].next_seq, 2);
        CHECK_STR(list[1].server_id, b);
        CHECK_INT(list[1].mode, PB_MODE_PARKED);
        CHECK_INT(list[1].queued, 1);
        CHECK_INT(list[1].parked_seq, 3);
    }
    pb_peer_state_free_array(list, n);
    pb_peer_state_clear(NULL);
    pb_peer_state_free_array(NULL, 0);
    pb_store_close(s);
}

/* Checks the user's guild list is exactly want (n pairs of guild_id, server_id). */
static void check_guilds(pb_store *s, uint64_t user, size_t n, const uint64_t *gids,
                         const char *const *servers, int line)
{
    pb_guild_entry *g = NULL;
    size_t got = 0;
    pb_err err = pb_store_guilds(s, user, &g, &got);
    bool ok = err == PB_OK && got == n;
    for (size_t i = 0; ok && i < n; i++)
        ok = g[i].guild_id == gids[i] && strcmp(g[i].server_id, servers[i]) == 0;
    CHECKF(ok, "guild list of user %llu (line %d): err %s, %zu entries", (unsigned long long)user,
           line, pb_strerror(err), got);
    pb_guild_entries_free(g, got);
}
#define CHECK_GUILDS(s, user, n, gids, servers) check_guilds(s, user, n, gids, servers, __LINE__)

static void test_receive(void)
{
    pb_store *s = open_fresh("receive", NULL);
    if (!s) return;
    const char *s1 = "s1.example:443", *s2 = "s2.example:443", *fo = "foreign.example:443";
    const char *uni = "inv-\xc3\xbc-\xe2\x82\xac-\xf0\x9f\x8e\x89"; /* ü € 🎉 */
    pb_recv_result r = {99, 99, 99, 99};

    pb_event b1[2] = {ev_added(1, 10), ev_invited(1, UINT64_MAX, uni)};
    uint64_t q1[2] = {1, 2};
    CHECK_OK(pb_store_receive(s, s1, EP, b1, q1, 2, 5000, &r));
    CHECK_INT(r.applied, 2);
    CHECK_INT(r.duplicates, 0);
    pb_peer_state st;
    CHECK_OK(pb_store_peer_state_get(s, s1, &st)); /* the sender's row was created */
    CHECK_INT(st.recv_seq, 2);
    CHECK_INT(st.last_contact, 5);
    CHECK_INT(st.next_seq, 1);
    pb_peer_state_clear(&st);
    CHECK_INT(inbox_last(s), 2);
    CHECK_GUILDS(s, 1, 1, ((uint64_t[]){10}), ((const char *[]){s1}));
    pb_invite_entry *inv = NULL;
    size_t n = 0;
    CHECK_OK(pb_store_invites(s, 1, &inv, &n));
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_STR(inv[0].invite_id, uni);
        CHECK_STR(inv[0].server_id, s1);
        CHECK(inv[0].inviter_id == UINT64_MAX);
    }
    pb_invite_entries_free(inv, n);

    /* the same batch again, then an older seq: duplicates, nothing applied */
    CHECK_OK(pb_store_receive(s, s1, EP, b1, q1, 2, 6000, &r));
    CHECK_INT(r.applied, 0);
    CHECK_INT(r.duplicates, 2);
    pb_event old = ev_added(1, 11);
    uint64_t q_old = 1;
    CHECK_OK(pb_store_receive(s, s1, EP, &old, &q_old, 1, 6000, &r));
    CHECK(r.applied == 0 && r.duplicates == 1);
    CHECK_INT(inbox_last(s), 2);
    CHECK_GUILDS(s, 1, 1, ((uint64_t[]){10}), ((const char *[]){s1}));
    CHECK_OK(pb_store_peer_state_get(s, s1, &st));
    CHECK_INT(st.recv_seq, 2);
    CHECK_INT(st.last_contact, 6); /* contact is recorded even for duplicates */
    pb_peer_state_clear(&st);

    /* add twice -> one entry; uint64 ids; uint64 ordering; a second sender */
    pb_event b2[4] = {ev_added(1, 10), ev_added(1, 5), ev_added(1, 1ull << 63), ev_added(1, 20)};
    uint64_t q2[4] = {3, 4, 5, 6};
    CHECK_OK(pb_store_receive(s, s1, EP, b2, q2, 4, 7000, &r));
    CHECK(r.applied == 4 && r.duplicates == 0);
    pb_event b3[2] = {ev_added(1, 1), ev_added(UINT64_MAX, UINT64_MAX)};
    uint64_t q3[2] = {1, 2};
    CHECK_OK(pb_store_receive(s, s2, EP, b3, q3, 2, 7000, &r));
    CHECK_INT(r.applied, 2);
    CHECK_GUILDS(s, 1, 5, ((uint64_t[]){5, 10, 20, 1ull << 63, 1}),
                 ((const char *[]){s1, s1, s1, s1, s2}));
    CHECK_GUILDS(s, UINT64_MAX, 1, ((uint64_t[]){UINT64_MAX}), ((const char *[]){s2}));

    /* remove; reject changes no state; gaps and an out-of-order seq within a batch */
    pb_event b4[3] = {ev_removed(1, 10), ev_rejected(1, 10, "nope"), ev_removed(1, 5)};
    uint64_t q4[3] = {10, 9, 11};
    CHECK_OK(pb_store_receive(s, s1, EP, b4, q4, 3, 8000, &r));
    CHECK(r.applied == 2 && r.duplicates == 1);
    CHECK_GUILDS(s, 1, 3, ((uint64_t[]){20, 1ull << 63, 1}), ((const char *[]){s1, s1, s2}));
    pb_event rej = ev_rejected(1, 20, "nope");
    uint64_t q5 = 12;
    CHECK_OK(pb_store_receive(s, s1, EP, &rej, &q5, 1, 8000, &r));
    CHECK(r.applied == 1 && r.duplicates == 0);
    CHECK_GUILDS(s, 1, 3, ((uint64_t[]){20, 1ull << 63, 1}), ((const char *[]){s1, s1, s2}));
    CHECK_OK(pb_store_invites(s, 1, &inv, &n));
    CHECK_INT(n, 1); /* unchanged */
    pb_invite_entries_free(inv, n);
    CHECK_OK(pb_store_peer_state_get(s, s1, &st));
    CHECK_INT(st.recv_seq, 12);
    pb_peer_state_clear(&st);

    /* invites ordered by server_id then invite_id; a repeat keeps one entry */
    pb_event b6[3] = {ev_invited(1, 4, "b"), ev_invited(1, 4, "a"), ev_invited(1, 4, "a")};
    CHECK_OK(pb_store_receive(s, s2, EP, b6, NULL, 3, 9000, &r));
    CHECK(r.applied == 3 && r.duplicates == 0);
    CHECK_OK(pb_store_invites(s, 1, &inv, &n));
    CHECK_INT(n, 3);
    if (n == 3) {
        CHECK(strcmp(inv[0].invite_id, uni) == 0 && strcmp(inv[0].server_id, s1) == 0);
        CHECK(strcmp(inv[1].invite_id, "a") == 0 && strcmp(inv[1].server_id, s2) == 0);
        CHECK(strcmp(inv[2].invite_id, "b") == 0 && strcmp(inv[2].server_id, s2) == 0);
        CHECK_INT(inv[1].inviter_id, 4);
    }
    pb_invite_entries_free(inv, n);

    /* without seqs (a foreign peer): applied every time, state idempotent, inbox gets both */
    uint64_t before = inbox_last(s);
    pb_event f = ev_added(2, 30);
    CHECK_OK(pb_store_receive(s, fo, EP, &f, NULL, 1, 9500, &r));
    CHECK(r.applied == 1 && r.duplicates == 0);
    CHECK_OK(pb_store_receive(s, fo, EP, &f, NULL, 1, 9600, &r));
    CHECK(r.applied == 1 && r.duplicates == 0);
    CHECK_INT(inbox_last(s), before + 2);
    CHECK_GUILDS(s, 2, 1, ((uint64_t[]){30}), ((const char *[]){fo}));
    CHECK_OK(pb_store_peer_state_get(s, fo, &st));
    CHECK_INT(st.recv_seq, 0);
    pb_peer_state_clear(&st);
    CHECK_OK(pb_store_receive(s, fo, EP, NULL, NULL, 0, 9700, &r)); /* nothing: contact only */
    CHECK(r.applied == 0 && r.duplicates == 0);

    /* an event the wire refuses fails the whole batch */
    before = inbox_last(s);
    pb_event badb[2] = {ev_added(3, 3), ev_invited(3, 3, NULL)};
    CHECK_ERR(pb_store_receive(s, s2, EP, badb, NULL, 2, 9800, &r), PB_ERR_INVAL);
    CHECK_INT(inbox_last(s), before);
    CHECK_GUILDS(s, 3, 0, NULL, NULL);

#ifdef PB_FAULTS
    /* atomicity: a failing receive writes nothing (no inbox, state, recv_seq, contact) */
    pb_event fb[3] = {ev_added(4, 40), ev_invited(4, 1, "x"), ev_removed(1, 20)};
    uint64_t fq[3] = {13, 14, 15};
    pb_store_fault_set(s, PB_ERR_STORE);
    r = (pb_recv_result){99, 99, 99, 99};
    CHECK_ERR(pb_store_receive(s, s1, EP, fb, fq, 3, 99000, &r), PB_ERR_STORE);
    CHECK(r.applied == 99 && r.duplicates == 99);
    CHECK_ERR(pb_store_receive(s, "new.example:443", EP, fb, NULL, 1, 99000, &r), PB_ERR_STORE);
    pb_store_fault_set(s, PB_OK);
    CHECK_INT(inbox_last(s), before);
    CHECK_GUILDS(s, 4, 0, NULL, NULL);
    CHECK_GUILDS(s, 1, 3, ((uint64_t[]){20, 1ull << 63, 1}), ((const char *[]){s1, s1, s2}));
    CHECK_OK(pb_store_invites(s, 4, &inv, &n));
    CHECK_INT(n, 0);
    pb_invite_entries_free(inv, n);
    CHECK_OK(pb_store_peer_state_get(s, s1, &st));
    CHECK_INT(st.recv_seq, 12);
    CHECK_INT(st.last_contact, 8);
    pb_peer_state_clear(&st);
    CHECK_ERR(pb_store_peer_state_get(s, "new.example:443", &st), PB_ERR_NOT_FOUND);
    /* and the same batch succeeds afterwards */
    CHECK_OK(pb_store_receive(s, s1, EP, fb, fq, 3, 99000, &r));
    CHECK(r.applied == 3 && r.duplicates == 0);
    CHECK_GUILDS(s, 4, 1, ((uint64_t[]){40}), ((const char *[]){s1}));
#endif

    /* the inbox: every applied event once, in order */
    pb_inbox_item *in = NULL;
    size_t ni = 0;
    CHECK_OK(pb_store_inbox_read(s, 0, 1000, &in, &ni));
    CHECK_INT(ni, inbox_last(s));
    bool seq_ok = true;
    for (size_t i = 0; i < ni; i++)
        seq_ok = seq_ok && in[i].seq == i + 1 && !in[i].is_rename && in[i].ev.kind != PB_EV_NONE;
    CHECK(seq_ok);
    if (ni >= 2) {
        CHECK_STR(in[0].from, s1);
        CHECK(pb_event_equal(&in[0].ev, &b1[0]));
        CHECK(pb_event_equal(&in[1].ev, &b1[1]));
        CHECK_INT(in[1].received_at, 5000);
        CHECK(in[1].old_id == NULL && in[1].new_id == NULL);
    }
    if (ni >= 9) { /* b2 gave seqs 3..6, b3 7..8, then b4's first removal */
        CHECK(pb_event_equal(&in[2].ev, &b2[0]));
        CHECK_STR(in[6].from, s2);
        CHECK(pb_event_equal(&in[8].ev, &b4[0]));
    }
    pb_inbox_items_free(in, ni);
    CHECK_OK(pb_store_inbox_read(s, 3, 2, &in, &ni));
    CHECK(ni == 2 && in[0].seq == 4 && in[1].seq == 5);
    if (ni == 2) CHECK(pb_event_equal(&in[0].ev, &b2[1]));
    pb_inbox_items_free(in, ni);
    in = (pb_inbox_item *)&ni;
    CHECK_OK(pb_store_inbox_read(s, inbox_last(s), 10, &in, &ni));
    CHECK(ni == 0 && in == NULL);
    CHECK_OK(pb_store_inbox_read(s, UINT64_MAX, 10, &in, &ni));
    CHECK(ni == 0 && in == NULL);
    CHECK_ERR(pb_store_inbox_read(s, 0, 0, &in, &ni), PB_ERR_INVAL);
    CHECK_OK(pb_store_integrity_check(s));
    pb_store_close(s);

    /* an empty inbox */
    s = open_fresh("inbox_empty", NULL);
    if (!s) return;
    CHECK_INT(inbox_last(s), 0);
    CHECK_OK(pb_store_inbox_read(s, 0, 10, &in, &ni));
    CHECK(ni == 0 && in == NULL);
    pb_store_close(s);
}

/* ---- the model log (SQLite: received changes merged into the tables later) --------------- */

#define ML_USERS 5
#define ML_SERVERS 3
#define ML_GUILDS 4
#define ML_INVITES 3
static const uint64_t ml_users[ML_USERS] = {1, 2, 3, (1ULL << 63) + 5, UINT64_MAX};
static const uint64_t ml_guilds[ML_GUILDS] = {10, 11, 12, (1ULL << 63) + 1};
static const char *const ml_invites[ML_INVITES] = {"i1", "i2", "i10"};
/* the servers in bytewise order; the last one only ever appears through the rename */
static const char *const ml_servers[ML_SERVERS] = {"a.example:443", "b.example:443",
                                                   "c.example:443"};

struct ml_model {
    bool guild[ML_USERS][ML_SERVERS][ML_GUILDS];
    uint64_t inviter[ML_USERS][ML_SERVERS][ML_INVITES]; /* 0: no invite */
};

static int ml_invite_order[ML_INVITES] = {0, 2, 1}; /* "i1" < "i10" < "i2" */

/* Every user's guild list and invites equal the model's, in the documented order. */
static bool ml_check(pb_store *s, const struct ml_model *m, int line)
{
    bool all = true;
    for (int u = 0; u < ML_USERS; u++) {
        pb_guild_entry *g = NULL;
        size_t n = 0, k = 0;
        bool ok = pb_store_guilds(s, ml_users[u], &g, &n) == PB_OK;
        for (int sv = 0; ok && sv < ML_SERVERS; sv++)
            for (int gi = 0; ok && gi < ML_GUILDS; gi++) {
                if (!m->guild[u][sv][gi]) continue;
                ok = k < n && g[k].guild_id == ml_guilds[gi] &&
                     strcmp(g[k].server_id, ml_servers[sv]) == 0;
                k++;
            }
        ok = ok && k == n;
        pb_guild_entries_free(g, n);
        pb_invite_entry *iv = NULL;
        size_t ni = 0;
        k = 0;
        ok = ok && pb_store_invites(s, ml_users[u], &iv, &ni) == PB_OK;
        for (int sv = 0; ok && sv < ML_SERVERS; sv++)
            for (int o = 0; ok && o < ML_INVITES; o++) {
                int ii = ml_invite_order[o];
                if (!m->inviter[u][sv][ii]) continue;
                ok = k < ni && strcmp(iv[k].invite_id, ml_invites[ii]) == 0 &&
                     strcmp(iv[k].server_id, ml_servers[sv]) == 0 &&
                     iv[k].inviter_id == m->inviter[u][sv][ii];
                k++;
            }
        ok = ok && k == ni;
        pb_invite_entries_free(iv, ni);
        CHECKF(ok, "model log (line %d): user %d differs from the model", line, u);
        all = all && ok;
    }
    return all;
}

/* Random guild and invite changes from two senders, received in batches of 1..12 into a
 * store whose model log merges past 40 rows (steps of about 5), checked against a model
 * after every batch: the lists read the log over the tables, merges keep the last change
 * of each key, user IDs >= 2^63 (negative in SQLite) are merged like the others, the log
 * survives a reopen, and a rename re-labels what is still in the log. PostgreSQL has no
 * log and must give the same answers. */
static void test_model_log(void)
{
    char *spec = spec_for("modellog");
    if (!spec) return;
    pb_store_opts o = {.model_log_rows = 40};
    pb_store *s = NULL;
    CHECK_OK(pb_store_open(spec, &o, &s));
    struct ml_model *m = calloc(1, sizeof *m);
    if (!s || !m) abort();
    uint64_t seq[ML_SERVERS] = {0, 0, 0}, rnd = 42;
    int live[2] = {0, 1}; /* the two senders; a becomes c at the rename */
    bool failed = false;
    long long logged_max = 0;
    for (int round = 0; round < 600 && !failed; round++) {
        if (round == 200 || round == 400) {
            pb_store_close(s);
            s = NULL;
            CHECK_OK(pb_store_open(spec, &o, &s));
            if (!s) break;
        }
        if (round == 300) {
            uint8_t key[PB_PUBKEY_LEN] = {7};
            CHECK_OK(pb_store_peer_rename(s, ml_servers[0], ml_servers[2], key, 5000));
            for (int u = 0; u < ML_USERS; u++) {
                memcpy(m->guild[u][2], m->guild[u][0], sizeof m->guild[u][0]);
                memset(m->guild[u][0], 0, sizeof m->guild[u][0]);
                memcpy(m->inviter[u][2], m->inviter[u][0], sizeof m->inviter[u][0]);
                memset(m->inviter[u][0], 0, sizeof m->inviter[u][0]);
            }
            live[0] = 2;
            seq[2] = seq[0];
            failed = !ml_check(s, m, __LINE__);
            continue;
        }
        rnd = rnd * 6364136223846793005ULL + 1442695040888963407ULL;
        int sv = live[(rnd >> 33) % 2], n = 1 + (int)((rnd >> 40) % 12);
        pb_event ev[12];
        uint64_t q[12];
        for (int i = 0; i < n; i++) {
            rnd = rnd * 6364136223846793005ULL + 1442695040888963407ULL;
            int u = (int)((rnd >> 33) % ML_USERS), kind = (int)((rnd >> 40) % 3);
            int gi = (int)((rnd >> 45) % ML_GUILDS), ii = (int)((rnd >> 50) % ML_INVITES);
            uint64_t inviter = 1 + (rnd >> 55) % 3;
            if (kind == 0) {
                ev[i] = ev_added(ml_users[u], ml_guilds[gi]);
                m->guild[u][sv][gi] = true;
            } else if (kind == 1) {
                ev[i] = ev_removed(ml_users[u], ml_guilds[gi]);
                m->guild[u][sv][gi] = false;
            } else {
                ev[i] = ev_invited(ml_users[u], inviter, ml_invites[ii]);
                m->inviter[u][sv][ii] = inviter;
            }
            q[i] = ++seq[sv];
        }
        pb_recv_result r;
        CHECK_OK(pb_store_receive(s, ml_servers[sv], EP, ev, q, (size_t)n, 1000 + round, &r));
        failed = !ml_check(s, m, __LINE__);
        long long rows = 0;
        if (!g_pg && raw_int(spec, "SELECT count(*) FROM model_log", &rows) && rows > logged_max)
            logged_max = rows;
    }
    if (!g_pg) {
        /* merges ran (the log never held everything) and kept it within its bound (below
         * about 4 x 40 rows, store_sqlite.c log_merge), however the steps interleave with
         * the batches */
        CHECKF(logged_max >= 40 && logged_max < 4 * 40 + 12, "model log peaked at %lld rows",
               logged_max);
    }
    pb_store_close(s);
    free(m);
    free(spec);
}

/* Big received batches (SQLite inserts their inbox and model-log rows 64 or 8 per
 * statement, the rest one by one): random changes, rejected invites among them, in
 * batches of sizes around those steps from one sender, into a log that merges past 100
 * rows: the lists equal the model after every batch, and the inbox holds every event once,
 * in order, with consecutive seqs. PostgreSQL must give the same answers. */
static void test_receive_rows(void)
{
    char *spec = spec_for("recvrows");
    if (!spec) return;
    pb_store_opts o = {.model_log_rows = 100};
    pb_store *s = NULL;
    CHECK_OK(pb_store_open(spec, &o, &s));
    struct ml_model *m = calloc(1, sizeof *m);
    static const size_t sizes[] = {150, 1, 73, 64, 9, 8, 7, 200, 65, 71};
    enum { MAXN = 200, TOTAL = 648 };
    pb_event *ev = calloc(TOTAL, sizeof *ev);
    if (!s || !m || !ev) abort();
    uint64_t q[MAXN], rnd = 7, seq = 0;
    size_t at = 0;
    bool failed = false;
    for (size_t b = 0; b < sizeof sizes / sizeof *sizes && !failed; b++) {
        size_t n = sizes[b];
        for (size_t i = 0; i < n; i++) {
            rnd = rnd * 6364136223846793005ULL + 1442695040888963407ULL;
            int u = (int)((rnd >> 33) % ML_USERS), kind = (int)((rnd >> 40) % 4);
            int gi = (int)((rnd >> 45) % ML_GUILDS), ii = (int)((rnd >> 50) % ML_INVITES);
            uint64_t inviter = 1 + (rnd >> 55) % 3;
            pb_event *e = &ev[at + i];
            if (kind == 0) {
                *e = ev_added(ml_users[u], ml_guilds[gi]);
                m->guild[u][0][gi] = true;
            } else if (kind == 1) {
                *e = ev_removed(ml_users[u], ml_guilds[gi]);
                m->guild[u][0][gi] = false;
            } else if (kind == 2) {
                *e = ev_invited(ml_users[u], inviter, ml_invites[ii]);
                m->inviter[u][0][ii] = inviter;
            } else {
                *e = ev_rejected(ml_users[u], ml_guilds[gi], ml_invites[ii]);
            }
            q[i] = ++seq;
        }
        pb_recv_result r;
        CHECK_OK(pb_store_receive(s, ml_servers[0], EP, ev + at, q, n, 1000 + (int64_t)b, &r));
        CHECK_INT(r.applied, n);
        at += n;
        failed = !ml_check(s, m, __LINE__);
    }
    CHECK_INT(at, TOTAL);
    pb_inbox_item *in = NULL;
    size_t ni = 0;
    CHECK_OK(pb_store_inbox_read(s, 0, 1000, &in, &ni));
    CHECK_INT(ni, TOTAL);
    bool same = ni == TOTAL;
    for (size_t i = 0; same && i < ni; i++)
        same = in[i].seq == i + 1 && pb_event_equal(&in[i].ev, &ev[i]) &&
               strcmp(in[i].from, ml_servers[0]) == 0;
    CHECK(same);
    pb_inbox_items_free(in, ni);
    free(ev); /* the invite IDs are static */
    pb_store_close(s);
    free(m);
    free(spec);
}

/* A statement failing in the middle of a received batch (a constraint added behind the
 * store's back) fails the whole call with nothing written, also past the first few
 * hundred events of a big batch; the store works on. */
static void test_receive_failure(void)
{
    char *spec = NULL;
    pb_store *s = open_fresh("recvfail", &spec);
    if (!s) {
        free(spec);
        return;
    }
    CHECK(
        raw_exec(spec, g_pg ? "ALTER TABLE guilds ADD CONSTRAINT no666 CHECK (guild_id <> 666)"
                            : "CREATE TRIGGER no666 BEFORE INSERT ON model_log"
                              " WHEN NEW.guild_id = 666 BEGIN SELECT RAISE(ABORT, 'no 666'); END"));
    const char *from = "f.example:443";
    pb_event b[4] = {ev_added(1, 1), ev_invited(1, 2, "i"), ev_added(1, 666), ev_added(1, 3)};
    uint64_t q[4] = {1, 2, 3, 4};
    pb_recv_result r = {99, 99, 99, 99};
    CHECK_ERR(pb_store_receive(s, from, EP, b, q, 4, 1000, &r), PB_ERR_INVAL);
    CHECK(r.applied == 99 && r.duplicates == 99);
    CHECK_INT(inbox_last(s), 0);
    CHECK_GUILDS(s, 1, 0, NULL, NULL);
    pb_invite_entry *inv = NULL;
    size_t n = 9;
    CHECK_OK(pb_store_invites(s, 1, &inv, &n));
    CHECK_INT(n, 0);
    pb_peer_state st;
    CHECK_ERR(pb_store_peer_state_get(s, from, &st), PB_ERR_NOT_FOUND);

    pb_event ok[3] = {b[0], b[1], b[3]};
    uint64_t okq[3] = {1, 2, 4};
    CHECK_OK(pb_store_receive(s, from, EP, ok, okq, 3, 1000, &r));
    CHECK(r.applied == 3 && r.duplicates == 0);
    CHECK_GUILDS(s, 1, 2, ((uint64_t[]){1, 3}), ((const char *[]){from, from}));

    /* big batches: one failing in its 400th event, then the same without it */
    enum { BIG = 600 };
    pb_event *big = calloc(BIG, sizeof *big);
    uint64_t *bq = calloc(BIG, sizeof *bq);
    if (!big || !bq) abort();
    for (int i = 0; i < BIG; i++) {
        big[i] = ev_added(2, (uint64_t)(i == 399 ? 666 : 1000 + i));
        bq[i] = (uint64_t)(5 + i);
    }
    CHECK_ERR(pb_store_receive(s, from, EP, big, bq, BIG, 2000, &r), PB_ERR_INVAL);
    CHECK_INT(inbox_last(s), 3);
    CHECK_GUILDS(s, 2, 0, NULL, NULL);
    big[399] = ev_added(2, 1399);
    CHECK_OK(pb_store_receive(s, from, EP, big, bq, BIG, 2000, &r));
    CHECK(r.applied == BIG && r.duplicates == 0);
    pb_guild_entry *g = NULL;
    CHECK_OK(pb_store_guilds(s, 2, &g, &n));
    CHECK_INT(n, BIG);
    pb_guild_entries_free(g, n);
    CHECK_INT(inbox_last(s), 3 + BIG);
    CHECK_OK(pb_store_peer_state_get(s, from, &st));
    CHECK_INT(st.recv_seq, 4 + BIG);
    pb_peer_state_clear(&st);
    free(big);
    free(bq);
    pb_store_close(s);
    free(spec);
}

/* ---- sequence epochs -------------------------------------------------------------------- */

static uint64_t send_epoch_of(pb_store *s, const char *peer)
{
    pb_peer_state st;
    if (pb_store_peer_state_get(s, peer, &st) != PB_OK) return 0;
    uint64_t v = st.send_epoch;
    pb_peer_state_clear(&st);
    return v;
}

/* Checks pb_store_recv_latest and the peer state's recv_epoch/recv_seq agree with want. */
static void check_latest(pb_store *s, const char *from, uint64_t epoch, uint64_t seq, int line)
{
    uint64_t e = 99, q = 99;
    pb_err err = pb_store_recv_latest(s, from, &e, &q);
    CHECKF(err == PB_OK && e == epoch && q == seq,
           "recv_latest of %s (line %d): %s, epoch %#llx seq %llu, want %#llx %llu", from, line,
           pb_strerror(err), (unsigned long long)e, (unsigned long long)q,
           (unsigned long long)epoch, (unsigned long long)seq);
    pb_peer_state st;
    if (pb_store_peer_state_get(s, from, &st) == PB_OK) {
        CHECKF(st.recv_epoch == epoch && st.recv_seq == seq,
               "peer state of %s (line %d): recv_epoch %#llx recv_seq %llu", from, line,
               (unsigned long long)st.recv_epoch, (unsigned long long)st.recv_seq);
        pb_peer_state_clear(&st);
    }
}
#define CHECK_LATEST(s, from, epoch, seq) check_latest(s, from, epoch, seq, __LINE__)

/* Receives one event (guild_id = seq) with seq in epoch at now; returns the result (applied
 * 99 when the call failed). */
static pb_recv_result recv1(pb_store *s, const char *from, uint64_t epoch, uint64_t seq,
                            int64_t now)
{
    pb_event e = ev_added(9, seq);
    pb_recv_result r = {99, 99, 99, 99};
    pb_err err = pb_store_receive(s, from, epoch, &e, &seq, 1, now, &r);
    CHECKF(err == PB_OK, "receive from %s: %s", from, pb_strerror(err));
    return r;
}

/* The number of epoch rows the store keeps for a sender, behind its back. */
static long long epoch_rows(const char *spec, const char *from)
{
    char sql[256];
    long long n = -1;
    snprintf(sql, sizeof sql, "SELECT count(*) FROM recv_epochs WHERE peer = '%s'", from);
    if (!raw_int(spec, sql, &n)) return -1;
    return n;
}

/* Sender side: every way a peer row comes to be gives it a random non-zero send_epoch of
 * its own; other writes keep it; pb_store_peer_new_epoch changes it and nothing else. */
static void test_send_epochs(void)
{
    char *spec = NULL;
    pb_store *s = open_fresh("sepoch", &spec);
    if (!s) {
        free(spec);
        return;
    }
    enum { NP = 8 };
    const char *peers[NP] = {"touch.example:443",   "key.example:443",    "state.example:443",
                             "append.example:443",  "submit.example:443", "recv.example:443",
                             "foreign.example:443", "new.example:443"};
    uint8_t k[PB_PUBKEY_LEN];
    fill_key(k, 7);
    pb_event e[3] = {ev_added(1, 1), ev_added(1, 2), ev_added(1, 3)};
    uint64_t q = 1, ep = 0;
    CHECK_OK(pb_store_peer_touch(s, peers[0], 0));
    CHECK_OK(pb_store_peer_key_set(s, peers[1], k, 100));
    CHECK_OK(pb_store_peer_state_set(s, peers[2], PB_MODE_QUEUED, 1, 2, "x", 0));
    CHECK_OK(pb_store_outbox_append(s, peers[3], e, 3, 1000, NULL));
    CHECK_OK(pb_store_outbox_submit(s, peers[4], e, 1, 1000, "sub-1", NULL, NULL));
    CHECK_OK(pb_store_receive(s, peers[5], EP, e, &q, 1, 1000, NULL));
    CHECK_OK(pb_store_receive(s, peers[6], EP, e, NULL, 1, 1000, NULL));
    CHECK_OK(pb_store_peer_new_epoch(s, peers[7], &ep));
    uint64_t got[NP];
    for (int i = 0; i < NP; i++) {
        got[i] = send_epoch_of(s, peers[i]);
        CHECKF(got[i] != 0, "%s has send_epoch 0", peers[i]);
        for (int j = 0; j < i; j++)
            CHECKF(got[i] != got[j], "%s and %s share send_epoch %#llx", peers[i], peers[j],
                   (unsigned long long)got[i]);
    }
    CHECK(ep == got[7]);
    /* the list says the same */
    pb_peer_state *ps = NULL;
    size_t n = 0;
    CHECK_OK(pb_store_peer_state_list(s, &ps, &n));
    CHECK_INT(n, NP);
    for (size_t i = 0; i < n; i++)
        for (int j = 0; j < NP; j++)
            if (strcmp(ps[i].server_id, peers[j]) == 0) CHECK(ps[i].send_epoch == got[j]);
    pb_peer_state_free_array(ps, n);

    /* writes to existing rows keep it */
    for (int round = 0; round < 2; round++) {
        CHECK_OK(pb_store_peer_touch(s, peers[3], 5));
        CHECK_OK(pb_store_peer_key_set(s, peers[3], k, 200));
        CHECK_OK(pb_store_peer_state_set(s, peers[3], PB_MODE_PUSH, 0, 0, NULL, 0));
        CHECK_OK(pb_store_outbox_append(s, peers[3], e, 1, 2000, NULL));
        CHECK_OK(
            pb_store_outbox_submit(s, peers[3], e, 1, 2000, round ? "sub-3" : "sub-2", NULL, NULL));
        q = 10 + (uint64_t)round;
        CHECK_OK(pb_store_receive(s, peers[3], EP, e, &q, 1, 2000, NULL));
        CHECK(send_epoch_of(s, peers[3]) == got[3]);
    }
    CHECK_INT(next_seq_of(s, peers[3]), 8);

    /* a new epoch: fresh, non-zero, different each time; seqs and queue untouched */
    pb_outbox_item *before = NULL, *after = NULL;
    size_t nb = 0, na = 0;
    CHECK_OK(pb_store_outbox_read(s, peers[3], 1, 100, SIZE_MAX, &before, &nb));
    uint64_t prev = got[3];
    for (int i = 0; i < 20; i++) {
        uint64_t fresh = 0;
        CHECK_OK(pb_store_peer_new_epoch(s, peers[3], &fresh));
        CHECK(fresh != 0 && fresh != prev);
        CHECK(send_epoch_of(s, peers[3]) == fresh);
        prev = fresh;
    }
    CHECK_INT(next_seq_of(s, peers[3]), 8);
    CHECK_OK(pb_store_outbox_read(s, peers[3], 1, 100, SIZE_MAX, &after, &na));
    CHECK_INT(na, nb);
    for (size_t i = 0; i < na && i < nb; i++)
        CHECK(after[i].seq == before[i].seq && pb_event_equal(&after[i].ev, &before[i].ev));
    pb_outbox_items_free(before, nb);
    pb_outbox_items_free(after, na);
    uint64_t last = 0;
    CHECK_OK(pb_store_outbox_append(s, peers[3], e, 1, 3000, &last));
    CHECK_INT(last, 8);
    for (int i = 0; i < NP; i++)
        if (i != 3) CHECK(send_epoch_of(s, peers[i]) == got[i]); /* only that peer */

    /* stored bit for bit: a legacy row (0) and one with the top bit set */
    CHECK(raw_exec(spec, "UPDATE peers SET send_epoch = 0 WHERE server_id = 'touch.example:443'"));
    CHECK(raw_exec(spec, "UPDATE peers SET send_epoch = -1 WHERE server_id = 'key.example:443'"));
    CHECK(send_epoch_of(s, peers[0]) == 0);
    CHECK(send_epoch_of(s, peers[1]) == UINT64_MAX);
    uint64_t fresh = 0;
    CHECK_OK(pb_store_peer_new_epoch(s, peers[0], &fresh)); /* leaving the legacy epoch */
    CHECK(fresh != 0 && send_epoch_of(s, peers[0]) == fresh);
    CHECK_OK(pb_store_peer_new_epoch(s, peers[1], &fresh));
    CHECK(fresh != 0 && fresh != UINT64_MAX && send_epoch_of(s, peers[1]) == fresh);

    CHECK_ERR(pb_store_peer_new_epoch(s, "", &fresh), PB_ERR_INVAL);
    CHECK_ERR(pb_store_peer_new_epoch(s, peers[0], NULL), PB_ERR_INVAL);
    CHECK_ERR(pb_store_peer_new_epoch(NULL, peers[0], &fresh), PB_ERR_INVAL);
#ifdef PB_FAULTS
    uint64_t cur = send_epoch_of(s, peers[0]);
    pb_store_fault_set(s, PB_ERR_STORE);
    fresh = 42;
    CHECK_ERR(pb_store_peer_new_epoch(s, peers[0], &fresh), PB_ERR_STORE);
    CHECK_ERR(pb_store_peer_new_epoch(s, "never.example:443", &fresh), PB_ERR_STORE);
    pb_store_fault_set(s, PB_OK);
    CHECK_INT(fresh, 42);
    CHECK(send_epoch_of(s, peers[0]) == cur);
    pb_peer_state st;
    CHECK_ERR(pb_store_peer_state_get(s, "never.example:443", &st), PB_ERR_NOT_FOUND);
#endif
    CHECK_OK(pb_store_integrity_check(s));
    pb_store_close(s);
    free(spec);
}

/* Receiver side: dedupe per (sender, epoch), the acknowledgement, the latest epoch, at
 * most PB_STORE_RECV_EPOCHS_MAX epochs per sender. */
static void test_recv_epochs(void)
{
    char *spec = NULL;
    pb_store *s = open_fresh("repoch", &spec);
    if (!s) {
        free(spec);
        return;
    }
    const char *s1 = "s1.example:443", *s2 = "s2.example:443", *fo = "foreign.example:443";
    const uint64_t A = 0xaaaa, B = 1ull << 63, C = UINT64_MAX;
    pb_recv_result r;

    /* nothing yet */
    CHECK_LATEST(s, s1, 0, 0);
    uint64_t e = 1, q = 1;
    CHECK_ERR(pb_store_recv_latest(s, s1, NULL, &q), PB_ERR_INVAL);
    CHECK_ERR(pb_store_recv_latest(s, s1, &e, NULL), PB_ERR_INVAL);
    CHECK_ERR(pb_store_recv_latest(s, "", &e, &q), PB_ERR_INVAL);

    /* two epochs of one sender are deduplicated independently */
    pb_event ea[2] = {ev_added(1, 101), ev_added(1, 102)};
    uint64_t qa[2] = {1, 2};
    CHECK_OK(pb_store_receive(s, s1, A, ea, qa, 2, 1000, &r));
    CHECK(r.applied == 2 && r.duplicates == 0 && r.ack == 2 && r.epoch == A);
    CHECK_LATEST(s, s1, A, 2);
    pb_event eb[2] = {ev_added(1, 201), ev_added(1, 202)};
    CHECK_OK(pb_store_receive(s, s1, B, eb, qa, 2, 2000, &r)); /* the same seqs, epoch B */
    CHECK(r.applied == 2 && r.duplicates == 0 && r.ack == 2 && r.epoch == B);
    CHECK_LATEST(s, s1, B, 2);
    CHECK_GUILDS(s, 1, 4, ((uint64_t[]){101, 102, 201, 202}), ((const char *[]){s1, s1, s1, s1}));
    r = recv1(s, s1, A, 3, 3000);
    CHECK(r.applied == 1 && r.ack == 3 && r.epoch == A);
    CHECK_LATEST(s, s1, A, 3);
    /* a duplicate-only call acknowledges what that epoch holds, and makes it the latest */
    r = recv1(s, s1, B, 1, 4000);
    CHECK(r.applied == 0 && r.duplicates == 1 && r.ack == 2 && r.epoch == B);
    CHECK_LATEST(s, s1, B, 2);
    CHECK_OK(pb_store_receive(s, s1, A, ea, qa, 2, 5000, &r));
    CHECK(r.applied == 0 && r.duplicates == 2 && r.ack == 3 && r.epoch == A);
    CHECK_LATEST(s, s1, A, 3);
    /* n = 0 with seqs: the ack alone; in a new epoch that is 0, and it becomes the latest */
    CHECK_OK(pb_store_receive(s, s1, B, NULL, qa, 0, 6000, &r));
    CHECK(r.applied == 0 && r.duplicates == 0 && r.ack == 2 && r.epoch == B);
    CHECK_OK(pb_store_receive(s, s1, C, NULL, qa, 0, 7000, &r));
    CHECK(r.applied == 0 && r.ack == 0 && r.epoch == C);
    CHECK_LATEST(s, s1, C, 0);
    r = recv1(s, s1, C, 5, 8000); /* the first seq seen in an epoch need not be 1 */
    CHECK(r.applied == 1 && r.ack == 5 && r.epoch == C);
    r = recv1(s, s1, C, 5, 8100);
    CHECK(r.applied == 0 && r.duplicates == 1 && r.ack == 5);
    /* the legacy epoch 0 is an epoch like the others */
    r = recv1(s, s1, 0, 1, 8200);
    CHECK(r.applied == 1 && r.ack == 1 && r.epoch == 0);
    CHECK_LATEST(s, s1, 0, 1);
    CHECK_INT(epoch_rows(spec, s1), 4);

    /* without seqs (a foreign peer): everything applied, ack 0, no epoch row touched */
    pb_event f = ev_added(2, 1);
    r = (pb_recv_result){99, 99, 99, 99};
    CHECK_OK(pb_store_receive(s, fo, A, &f, NULL, 1, 9000, &r));
    CHECK(r.applied == 1 && r.duplicates == 0 && r.ack == 0 && r.epoch == 0);
    CHECK_OK(pb_store_receive(s, fo, A, &f, NULL, 1, 9000, &r));
    CHECK(r.applied == 1 && r.ack == 0 && r.epoch == 0);
    CHECK_OK(pb_store_receive(s, fo, A, NULL, NULL, 0, 9000, &r));
    CHECK(r.applied == 0 && r.ack == 0 && r.epoch == 0);
    CHECK_LATEST(s, fo, 0, 0);
    CHECK_INT(epoch_rows(spec, fo), 0);
    CHECK_OK(pb_store_receive(s, s1, A, &f, NULL, 1, 9100, &r)); /* s1 unseq'd: s1's epochs */
    CHECK(r.applied == 1 && r.ack == 0);                         /* are left alone */
    CHECK_LATEST(s, s1, 0, 1);

    /* ties in updated_at: the highest recv_seq is the latest */
    recv1(s, s2, A, 5, 10000);
    recv1(s, s2, B, 9, 10000);
    CHECK_LATEST(s, s2, B, 9);
    recv1(s, s2, A, 6, 10000);
    CHECK_LATEST(s, s2, B, 9);
    recv1(s, s2, A, 6, 10001); /* a duplicate, later */
    CHECK_LATEST(s, s2, A, 6);

    /* a failed receive changes no epoch row */
    pb_event fe = ev_added(1, 999);
    uint64_t fq = 100;
#ifdef PB_FAULTS
    pb_store_fault_set(s, PB_ERR_STORE);
    CHECK_ERR(pb_store_receive(s, s2, B, &fe, &fq, 1, 20000, &r), PB_ERR_STORE);
    CHECK_ERR(pb_store_receive(s, s2, 77, &fe, &fq, 1, 20000, &r), PB_ERR_STORE);
    pb_store_fault_set(s, PB_OK);
    CHECK_LATEST(s, s2, A, 6);
    CHECK_INT(epoch_rows(spec, s2), 2);
#endif
    pb_event bad = ev_invited(3, 3, NULL); /* refused by the wire encoder */
    fq = 1;
    CHECK_ERR(pb_store_receive(s, s2, 77, &bad, &fq, 1, 20000, &r), PB_ERR_INVAL);
    CHECK_INT(epoch_rows(spec, s2), 2);
    CHECK_LATEST(s, s2, A, 6);
    CHECK_OK(pb_store_integrity_check(s));
    pb_store_close(s);
    free(spec);
}

/* At most PB_STORE_RECV_EPOCHS_MAX epochs per sender: a new one makes the least recently
 * updated (ties: the lowest recv_seq) forgotten, never the one just written, never
 * another sender's. */
static void test_recv_epochs_bounded(void)
{
    char *spec = NULL;
    pb_store *s = open_fresh("repochmax", &spec);
    if (!s) {
        free(spec);
        return;
    }
    const char *a = "a.example:443", *b = "b.example:443", *c = "c.example:443";
    const char *d = "d.example:443";
    CHECK_INT(PB_STORE_RECV_EPOCHS_MAX, 8);
    recv1(s, b, 1, 1, 500); /* another sender's state */

    /* epochs 1..8 fit; 1 is refreshed, so 9 makes 2 the one forgotten */
    for (uint64_t ep = 1; ep <= 8; ep++) {
        pb_recv_result r = recv1(s, a, ep, 10 * ep, 1000 + (int64_t)ep);
        CHECK(r.applied == 1 && r.ack == 10 * ep);
    }
    CHECK_INT(epoch_rows(spec, a), 8);
    for (uint64_t ep = 1; ep <= 8; ep++)
        CHECK_INT(recv1(s, a, ep, 10 * ep, 1100 + (int64_t)(ep == 1 ? 100 : 0)).duplicates, 1);
    /* now: epoch 1 at 1200, 2..8 at 1100 with recv_seqs 20..80: 2 is the oldest */
    pb_recv_result r = recv1(s, a, 9, 90, 1300);
    CHECK(r.applied == 1 && r.ack == 90);
    CHECK_INT(epoch_rows(spec, a), 8);
    CHECK_INT(recv1(s, a, 1, 10, 1400).duplicates, 1); /* kept */
    CHECK_INT(recv1(s, a, 9, 90, 1400).duplicates, 1);
    r = recv1(s, a, 2, 20, 1500); /* forgotten: applied again, and 3 goes */
    CHECK(r.applied == 1 && r.ack == 20);
    CHECK_INT(epoch_rows(spec, a), 8);
    r = recv1(s, a, 3, 30, 1600);
    CHECK(r.applied == 1 && r.ack == 30);
    CHECK_INT(epoch_rows(spec, b), 1); /* other senders untouched */
    CHECK_INT(recv1(s, b, 1, 1, 1700).duplicates, 1);

    /* a sender cycling through many epochs stays bounded */
    for (uint64_t ep = 100; ep < 150; ep++)
        recv1(s, a, ep, 1, 2000 + (int64_t)ep);
    CHECK_INT(epoch_rows(spec, a), 8);
    CHECK_LATEST(s, a, 149, 1);

    /* ties in updated_at: the lowest recv_seq goes first */
    for (uint64_t ep = 1; ep <= 8; ep++)
        recv1(s, c, ep, ep, 5000);
    recv1(s, c, 9, 1, 5000);
    CHECK_INT(epoch_rows(spec, c), 8);
    CHECK_INT(recv1(s, c, 2, 2, 5000).duplicates, 1);
    CHECK_INT(recv1(s, c, 1, 1, 5000).applied, 1); /* epoch 1 (recv_seq 1) was dropped */

    /* the epoch just written stays even when the clock went back */
    for (uint64_t ep = 1; ep <= 8; ep++)
        recv1(s, d, ep, 5, 9000);
    recv1(s, d, 9, 5, 100);
    CHECK_INT(epoch_rows(spec, d), 8);
    CHECK_INT(recv1(s, d, 9, 5, 100).duplicates, 1);
    CHECK_OK(pb_store_integrity_check(s));
    pb_store_close(s);
    free(spec);
}

/* ---- pending incoming renames ----------------------------------------------------------- */

/* Checks the pending renames are exactly want (n triples old, new, created_at). */
static void check_renames_in(pb_store *s, size_t n, const char *const *olds,
                             const char *const *news, const int64_t *ats, int line)
{
    pb_rename_in *r = NULL;
    size_t got = 99;
    pb_err err = pb_store_rename_in_list(s, &r, &got);
    bool ok = err == PB_OK && got == n && (n > 0 || r == NULL);
    for (size_t i = 0; ok && i < n; i++)
        ok = strcmp(r[i].old_id, olds[i]) == 0 && strcmp(r[i].new_id, news[i]) == 0 &&
             r[i].created_at == ats[i];
    CHECKF(ok, "pending renames (line %d): err %s, %zu rows", line, pb_strerror(err), got);
    pb_rename_ins_free(r, got);
}
#define CHECK_RENAMES_IN(s, n, olds, news, ats) check_renames_in(s, n, olds, news, ats, __LINE__)

static void test_renames_in(void)
{
    pb_store *s = open_fresh("renin", NULL);
    if (!s) return;
    const char *a = "a.example:443", *b = "b.example:443", *cz = "Z.example:443";
    const char *x = "x.example:443", *y = "y.example:443", *z = "z.example:443";
    CHECK_RENAMES_IN(s, 0, NULL, NULL, NULL);
    char *old = (char *)"untouched";
    int64_t at = 7;
    CHECK_ERR(pb_store_rename_in_find(s, x, &old, &at), PB_ERR_NOT_FOUND);
    CHECK_STR(old, "untouched");
    CHECK_INT(at, 7);

    CHECK_OK(pb_store_rename_in_add(s, b, y, 2000));
    CHECK_OK(pb_store_rename_in_add(s, a, x, 1000));
    CHECK_OK(pb_store_rename_in_find(s, x, &old, &at));
    CHECK_STR(old, a);
    CHECK_INT(at, 1000);
    free(old);
    CHECK_OK(pb_store_rename_in_find(s, y, &old, NULL));
    CHECK_STR(old, b);
    free(old);
    CHECK_RENAMES_IN(s, 2, ((const char *[]){a, b}), ((const char *[]){x, y}),
                     ((int64_t[]){1000, 2000}));

    /* a second notice for the same old ID (anyone can replay an unbound token of A's,
     * naming a host that serves A's key) does not replace the first: both are pending */
    CHECK_OK(pb_store_rename_in_add(s, a, z, 3000));
    CHECK_OK(pb_store_rename_in_find(s, x, &old, &at));
    CHECK_STR(old, a);
    CHECK_INT(at, 1000);
    free(old);
    CHECK_OK(pb_store_rename_in_find(s, z, &old, &at));
    CHECK_STR(old, a);
    CHECK_INT(at, 3000);
    free(old);
    CHECK_OK(pb_store_rename_in_add(s, a, z, 3500)); /* the same again: its time only */
    CHECK_RENAMES_IN(s, 3, ((const char *[]){a, a, b}), ((const char *[]){x, z, y}),
                     ((int64_t[]){1000, 3500, 2000}));
    /* at most PB_STORE_RENAMES_IN_MAX per old ID: more are refused, the earlier kept */
    const char *more[] = {"m1.example:443", "m2.example:443", "m3.example:443"};
    CHECK_OK(pb_store_rename_in_add(s, a, more[0], 3600));
    CHECK_OK(pb_store_rename_in_add(s, a, more[1], 3700));
    CHECK_ERR(pb_store_rename_in_add(s, a, more[2], 3800), PB_ERR_TOO_BIG);
    CHECK_OK(pb_store_rename_in_add(s, a, more[1], 3750));  /* a repeat still refreshes */
    CHECK_OK(pb_store_rename_in_add(s, cz, more[2], 3800)); /* another old ID has room */
    CHECK_RENAMES_IN(s, 6, ((const char *[]){cz, a, a, a, a, b}),
                     ((const char *[]){more[2], more[0], more[1], x, z, y}),
                     ((int64_t[]){3800, 3600, 3750, 1000, 3500, 2000}));
    /* the proven one wins: the rename to Z re-labels A, and A's other pending ones go */
    uint8_t akey[PB_PUBKEY_LEN];
    fill_key(akey, 9);
    CHECK_OK(pb_store_peer_key_set(s, a, akey, 3900));
    CHECK_OK(pb_store_peer_rename(s, a, z, akey, 3950));
    CHECK_ERR(pb_store_rename_in_find(s, x, &old, &at), PB_ERR_NOT_FOUND);
    CHECK_RENAMES_IN(s, 2, ((const char *[]){cz, b}), ((const char *[]){more[2], y}),
                     ((int64_t[]){3800, 2000}));
    CHECK_OK(pb_store_rename_in_remove(s, cz));
    CHECK_OK(pb_store_rename_in_add(s, a, z, 3500));
    CHECK_RENAMES_IN(s, 2, ((const char *[]){a, b}), ((const char *[]){z, y}),
                     ((int64_t[]){3500, 2000}));

    /* a new ID pending for another old ID: refused, nothing changes */
    CHECK_ERR(pb_store_rename_in_add(s, cz, y, 4000), PB_ERR_EXISTS);
    CHECK_ERR(pb_store_rename_in_add(s, a, y, 4000), PB_ERR_EXISTS);
    CHECK_ERR(pb_store_rename_in_add(s, a, a, 4000), PB_ERR_INVAL);
    CHECK_ERR(pb_store_rename_in_add(s, "", x, 4000), PB_ERR_INVAL);
    CHECK_ERR(pb_store_rename_in_add(s, a, NULL, 4000), PB_ERR_INVAL);
    CHECK_ERR(pb_store_rename_in_find(s, x, NULL, &at), PB_ERR_INVAL);
    CHECK_ERR(pb_store_rename_in_find(s, "", &old, &at), PB_ERR_INVAL);
    CHECK_ERR(pb_store_rename_in_remove(s, ""), PB_ERR_INVAL);
    size_t nn = 0;
    CHECK_ERR(pb_store_rename_in_list(s, NULL, &nn), PB_ERR_INVAL);
#ifdef PB_FAULTS
    pb_store_fault_set(s, PB_ERR_STORE);
    CHECK_ERR(pb_store_rename_in_add(s, cz, x, 4000), PB_ERR_STORE);
    CHECK_ERR(pb_store_rename_in_remove(s, a), PB_ERR_STORE);
    size_t gone = 99;
    CHECK_ERR(pb_store_rename_in_expire(s, INT64_MAX, &gone), PB_ERR_STORE);
    CHECK_INT(gone, 99);
    pb_store_fault_set(s, PB_OK);
#endif
    CHECK_RENAMES_IN(s, 2, ((const char *[]){a, b}), ((const char *[]){z, y}),
                     ((int64_t[]){3500, 2000}));

    /* ordered by old ID, bytewise ('Z' < 'a') */
    CHECK_OK(pb_store_rename_in_add(s, cz, x, 5000));
    CHECK_RENAMES_IN(s, 3, ((const char *[]){cz, a, b}), ((const char *[]){x, z, y}),
                     ((int64_t[]){5000, 3500, 2000}));

    /* remove: also when absent */
    CHECK_OK(pb_store_rename_in_remove(s, b));
    CHECK_OK(pb_store_rename_in_remove(s, b));
    CHECK_OK(pb_store_rename_in_remove(s, "nobody.example:443"));
    CHECK_ERR(pb_store_rename_in_find(s, y, &old, &at), PB_ERR_NOT_FOUND);
    CHECK_OK(pb_store_rename_in_add(s, b, y, 2000)); /* y is free again */

    /* expire: strictly before */
    size_t removed = 99;
    CHECK_OK(pb_store_rename_in_expire(s, 2000, &removed));
    CHECK_INT(removed, 0);
    CHECK_OK(pb_store_rename_in_expire(s, 3500, &removed));
    CHECK_INT(removed, 1); /* b (2000) */
    CHECK_RENAMES_IN(s, 2, ((const char *[]){cz, a}), ((const char *[]){x, z}),
                     ((int64_t[]){5000, 3500}));
    CHECK_OK(pb_store_rename_in_expire(s, 5001, NULL));
    CHECK_RENAMES_IN(s, 0, NULL, NULL, NULL);
    CHECK_OK(pb_store_rename_in_expire(s, INT64_MAX, &removed));
    CHECK_INT(removed, 0);
    pb_rename_ins_free(NULL, 0);
    CHECK_OK(pb_store_integrity_check(s));
    pb_store_close(s);
}

/* A database of schema version 4 (the last one before sequence epochs) migrates to 5:
 * its peers keep the legacy send_epoch 0, and what they had received moves into epoch 0
 * (a recv_seq of 0 leaves no row), so that nothing is applied twice after the upgrade. */
static void test_migrate_from_v4(void)
{
    char *p = spec_for("v4");
    if (!p) return;
    /* schema version 4 as the store's own migration steps write it */
    char *v4 = schema_sql(4);
    const char *a = "a.example:443", *b = "b.example:443", *c = "c.example:443";
    CHECK(raw_exec(p, v4));
    free(v4);
    CHECK(raw_exec(p, "INSERT INTO meta VALUES ('server_id', 'v4.example:443');"
                      "INSERT INTO peers(server_id, first_seen, last_contact, mode, attempts,"
                      " next_seq, recv_seq) VALUES ('a.example:443', 1, 50, 1, 2, 4, 5);"
                      "INSERT INTO peers(server_id, first_seen) VALUES ('b.example:443', 2);"
                      "INSERT INTO peers(server_id, first_seen, recv_seq)"
                      " VALUES ('c.example:443', 3, -1);"
                      "INSERT INTO renames_out(peer, old_id, new_id)"
                      " VALUES ('b.example:443', 'v3.example:443', 'v4.example:443');"));

    pb_store *s = NULL;
    CHECK_OK(pb_store_open(p, NULL, &s));
    if (!s) goto out;
    int v = 0;
    CHECK_OK(pb_store_schema_version(s, &v));
    CHECK_INT(v, SCHEMA_CURRENT);
    CHECK(meta_is(s, "server_id", "v4.example:443"));
    pb_peer_state *ps = NULL;
    size_t n = 0;
    CHECK_OK(pb_store_peer_state_list(s, &ps, &n));
    CHECK_INT(n, 3);
    for (size_t i = 0; i < n; i++) {
        CHECK(ps[i].send_epoch == 0); /* legacy */
        CHECK(ps[i].recv_epoch == 0);
    }
    if (n == 3) {
        CHECK_INT(ps[0].mode, PB_MODE_QUEUED);
        CHECK_INT(ps[0].attempts, 2);
        CHECK_INT(ps[0].next_seq, 4);
        CHECK_INT(ps[0].last_contact, 50);
        CHECK_INT(ps[0].recv_seq, 5);
        CHECK_INT(ps[1].recv_seq, 0);
        CHECK(ps[2].recv_seq == UINT64_MAX);
    }
    pb_peer_state_free_array(ps, n);
    CHECK_INT(epoch_rows(p, a), 1);
    CHECK_INT(epoch_rows(p, b), 0);
    CHECK_INT(epoch_rows(p, c), 1);
    CHECK_LATEST(s, a, 0, 5);
    CHECK_LATEST(s, b, 0, 0);
    CHECK_LATEST(s, c, 0, UINT64_MAX);
    pb_rename_out *ro = NULL;
    CHECK_OK(pb_store_rename_out_list(s, &ro, &n));
    CHECK(n == 1 && strcmp(ro[0].peer, b) == 0);
    pb_rename_outs_free(ro, n);

    /* a sender still in the legacy epoch is deduplicated as before the upgrade */
    pb_recv_result r = recv1(s, a, 0, 5, 60000);
    CHECK(r.applied == 0 && r.duplicates == 1 && r.ack == 5 && r.epoch == 0);
    r = recv1(s, a, 0, 6, 60000);
    CHECK(r.applied == 1 && r.ack == 6);
    r = recv1(s, c, 0, 7, 60000);
    CHECK(r.duplicates == 1 && r.ack == UINT64_MAX);
    /* and one that moved to an epoch of its own starts afresh there */
    r = recv1(s, a, EP, 1, 61000);
    CHECK(r.applied == 1 && r.ack == 1 && r.epoch == EP);
    CHECK_LATEST(s, a, EP, 1);
    r = recv1(s, b, EP, 3, 61000);
    CHECK(r.applied == 1 && r.ack == 3);

    /* our side: legacy until we start an epoch; new peers get one at once */
    CHECK(send_epoch_of(s, a) == 0);
    uint64_t last = 0, ep = 0;
    pb_event e = ev_added(1, 2);
    CHECK_OK(pb_store_outbox_append(s, a, &e, 1, 62000, &last));
    CHECK_INT(last, 4);
    CHECK(send_epoch_of(s, a) == 0);
    CHECK_OK(pb_store_peer_new_epoch(s, a, &ep));
    CHECK(ep != 0 && send_epoch_of(s, a) == ep);
    CHECK_INT(next_seq_of(s, a), 5);
    CHECK_OK(pb_store_peer_touch(s, "d.example:443", 0));
    CHECK(send_epoch_of(s, "d.example:443") != 0);
    CHECK_OK(pb_store_rename_in_add(s, c, "c2.example:443", 63000));
    CHECK_OK(pb_store_integrity_check(s));
    pb_store_close(s);

    /* reopening does not migrate again */
    s = NULL;
    CHECK_OK(pb_store_open(p, NULL, &s));
    if (!s) goto out;
    CHECK_OK(pb_store_schema_version(s, &v));
    CHECK_INT(v, SCHEMA_CURRENT);
    CHECK_LATEST(s, a, EP, 1);
    CHECK_INT(epoch_rows(p, a), 2);
    CHECK(send_epoch_of(s, a) == ep);
    char *old = NULL;
    CHECK_OK(pb_store_rename_in_find(s, "c2.example:443", &old, NULL));
    CHECK_STR(old, c);
    free(old);
    pb_store_close(s);
out:
    free(p);
}

/* Everything held for a peer, for before/after comparisons. */
static char *snapshot(pb_store *s)
{
    pb_buf b = PB_BUF_INIT;
    pb_peer_state *ps = NULL;
    size_t n = 0;
    char line[512];
    if (pb_store_peer_state_list(s, &ps, &n) == PB_OK) {
        for (size_t i = 0; i < n; i++) {
            uint8_t k[PB_PUBKEY_LEN] = {0};
            pb_err ke = pb_store_peer_key_get(s, ps[i].server_id, k);
            snprintf(
                line, sizeof line,
                "peer %s m%d a%u n%lld e%s p%llu q%llu o%lld s%llu se%llx r%llu re%llx k%d%u\n",
                ps[i].server_id, ps[i].mode, ps[i].attempts, (long long)ps[i].next_attempt_at,
                ps[i].last_error ? ps[i].last_error : "-", (unsigned long long)ps[i].parked_seq,
                (unsigned long long)ps[i].queued, (long long)ps[i].oldest_queued_at,
                (unsigned long long)ps[i].next_seq, (unsigned long long)ps[i].send_epoch,
                (unsigned long long)ps[i].recv_seq, (unsigned long long)ps[i].recv_epoch, ke, k[0]);
            pb_buf_append_str(&b, line);
            pb_outbox_item *it = NULL;
            size_t m = 0;
            if (pb_store_outbox_read(s, ps[i].server_id, 1, 1000, SIZE_MAX, &it, &m) == PB_OK) {
                for (size_t j = 0; j < m; j++) {
                    snprintf(line, sizeof line, " out %llu %d\n", (unsigned long long)it[j].seq,
                             it[j].ev.kind);
                    pb_buf_append_str(&b, line);
                }
                pb_outbox_items_free(it, m);
            }
        }
        pb_peer_state_free_array(ps, n);
    }
    for (uint64_t u = 1; u <= 3; u++) {
        pb_guild_entry *g = NULL;
        if (pb_store_guilds(s, u, &g, &n) == PB_OK) {
            for (size_t i = 0; i < n; i++) {
                snprintf(line, sizeof line, "guild %llu %llu %s\n", (unsigned long long)u,
                         (unsigned long long)g[i].guild_id, g[i].server_id);
                pb_buf_append_str(&b, line);
            }
            pb_guild_entries_free(g, n);
        }
        pb_invite_entry *iv = NULL;
        if (pb_store_invites(s, u, &iv, &n) == PB_OK) {
            for (size_t i = 0; i < n; i++) {
                snprintf(line, sizeof line, "invite %llu %s %s\n", (unsigned long long)u,
                         iv[i].invite_id, iv[i].server_id);
                pb_buf_append_str(&b, line);
            }
            pb_invite_entries_free(iv, n);
        }
    }
    pb_rename_out *ro = NULL;
    if (pb_store_rename_out_list(s, &ro, &n) == PB_OK) {
        for (size_t i = 0; i < n; i++) {
            snprintf(line, sizeof line, "rename_out %s %s %s\n", ro[i].peer, ro[i].old_id,
                     ro[i].new_id);
            pb_buf_append_str(&b, line);
        }
        pb_rename_outs_free(ro, n);
    }
    pb_rename_in *ri = NULL;
    if (pb_store_rename_in_list(s, &ri, &n) == PB_OK) {
        for (size_t i = 0; i < n; i++) {
            snprintf(line, sizeof line, "rename_in %s %s %lld\n", ri[i].old_id, ri[i].new_id,
                     (long long)ri[i].created_at);
            pb_buf_append_str(&b, line);
        }
        pb_rename_ins_free(ri, n);
    }
    snprintf(line, sizeof line, "inbox %llu\n", (unsigned long long)inbox_last(s));
    pb_buf_append_str(&b, line);
    pb_buf_append(&b, "", 1);
    return (char *)b.data;
}

static void test_peer_rename(void)
{
    char *spec = NULL;
    pb_store *s = open_fresh("rename", &spec);
    if (!s) {
        free(spec);
        return;
    }
    const char *old = "old.example:443", *nw = "new.example:443", *other = "other.example:443";
    uint8_t k1[PB_PUBKEY_LEN], k2[PB_PUBKEY_LEN], k3[PB_PUBKEY_LEN], got[PB_PUBKEY_LEN];
    fill_key(k1, 1);
    fill_key(k2, 2);
    fill_key(k3, 3);
    CHECK_OK(pb_store_peer_key_set(s, old, k1, 100));
    CHECK_OK(pb_store_peer_key_set(s, other, k3, 100));
    pb_event out[2] = {ev_added(7, 70), ev_removed(7, 70)};
    CHECK_OK(pb_store_outbox_append(s, old, out, 2, 1000, NULL));
    CHECK_OK(pb_store_outbox_append(s, other, out, 1, 1000, NULL));
    CHECK_OK(pb_store_peer_state_set(s, old, PB_MODE_QUEUED, 2, 5555, "refused", 0));
    pb_event in[3] = {ev_added(1, 100), ev_invited(1, 9, "i1"), ev_added(2, 200)};
    uint64_t q[3] = {1, 2, 3};
    pb_recv_result r;
    CHECK_OK(pb_store_receive(s, old, EP, in, q, 3, 2000, &r));
    pb_event oin = ev_added(1, 300);
    CHECK_OK(pb_store_receive(s, other, EP, &oin, NULL, 1, 2000, &r));
    CHECK_OK(pb_store_self_rename(s, "me.example:443", "me2.example:443", 3000));
    /* a second epoch of old's (the latest), and leftover epoch rows under new's name (as
     * if from before new was forgotten): old's win where both have an epoch */
    const uint64_t E2 = 0xe2;
    CHECK_INT(recv1(s, old, E2, 7, 2500).applied, 1);
    CHECK(raw_exec(spec, "INSERT INTO recv_epochs(peer, epoch, recv_seq, updated_at) VALUES"
                         " ('new.example:443', 226, 99, 1), ('new.example:443', 77, 5, 1)"));
    uint64_t old_epoch = send_epoch_of(s, old);
    CHECK(old_epoch != 0);
    /* pending incoming renames: old's is completed by the rename, another's stays */
    CHECK_OK(pb_store_rename_in_add(s, old, nw, 2600));
    CHECK_OK(pb_store_rename_in_add(s, other, "other2.example:443", 2700));
    uint64_t last0 = inbox_last(s);

    CHECK_OK(pb_store_peer_rename(s, old, nw, k2, 9000000));
    pb_peer_state st;
    CHECK_ERR(pb_store_peer_state_get(s, old, &st), PB_ERR_NOT_FOUND);
    CHECK_ERR(pb_store_peer_key_get(s, old, got), PB_ERR_NOT_FOUND);
    CHECK_OK(pb_store_peer_key_get(s, nw, got));
    CHECK_MEM(got, sizeof got, k2, sizeof k2);
    CHECK_OK(pb_store_peer_state_get(s, nw, &st));
    CHECK_INT(st.mode, PB_MODE_QUEUED);
    CHECK_INT(st.attempts, 2);
    CHECK_INT(st.next_attempt_at, 5555);
    CHECK_STR(st.last_error, "refused");
    CHECK_INT(st.queued, 2);
    CHECK_INT(st.next_seq, 3);
    CHECK(st.send_epoch == old_epoch);
    CHECK(st.recv_epoch == E2);
    CHECK_INT(st.recv_seq, 7);
    pb_peer_state_clear(&st);
    CHECK_INT(epoch_rows(spec, old), 0);
    CHECK_INT(epoch_rows(spec, nw), 3); /* EP, E2 (old's) and 77 */
    CHECK_LATEST(s, nw, E2, 7);
    uint64_t re = 9, rq = 9;
    CHECK_OK(pb_store_recv_latest(s, old, &re, &rq));
    CHECK(re == 0 && rq == 0);
    char *pending = NULL;
    CHECK_ERR(pb_store_rename_in_find(s, nw, &pending, NULL), PB_ERR_NOT_FOUND);
    CHECK_OK(pb_store_rename_in_find(s, "other2.example:443", &pending, NULL));
    CHECK_STR(pending, other);
    free(pending);
    pb_peer_info *pl = NULL;
    size_t n = 0;
    CHECK_OK(pb_store_peer_list(s, &pl, &n));
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_STR(pl[0].server_id, nw);
        CHECK_INT(pl[0].key_fetched_at, 9000);
        CHECK_STR(pl[1].server_id, other);
    }
    pb_peer_info_free_array(pl, n);
    CHECK_INT(outbox_count(s, old), 0);
    CHECK_INT(outbox_count(s, nw), 2);
    CHECK_INT(outbox_count(s, other), 1);
    CHECK_GUILDS(s, 1, 2, ((uint64_t[]){100, 300}), ((const char *[]){nw, other}));
    CHECK_GUILDS(s, 2, 1, ((uint64_t[]){200}), ((const char *[]){nw}));
    pb_invite_entry *inv = NULL;
    CHECK_OK(pb_store_invites(s, 1, &inv, &n));
    CHECK(n == 1 && strcmp(inv[0].server_id, nw) == 0 && strcmp(inv[0].invite_id, "i1") == 0);
    pb_invite_entries_free(inv, n);
    pb_rename_out *ro = NULL;
    CHECK_OK(pb_store_rename_out_list(s, &ro, &n));
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_STR(ro[0].peer, nw);
        CHECK_STR(ro[0].old_id, "me.example:443");
        CHECK_STR(ro[0].new_id, "me2.example:443");
        CHECK_STR(ro[1].peer, other);
    }
    pb_rename_outs_free(ro, n);
    CHECK_INT(inbox_last(s), last0 + 1);
    pb_inbox_item *it = NULL;
    CHECK_OK(pb_store_inbox_read(s, last0, 10, &it, &n));
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK(it[0].is_rename);
        CHECK_STR(it[0].from, nw);
        CHECK_STR(it[0].old_id, old);
        CHECK_STR(it[0].new_id, nw);
        CHECK_INT(it[0].received_at, 9000000);
        CHECK_INT(it[0].ev.kind, PB_EV_NONE);
    }
    pb_inbox_items_free(it, n);
    /* the sequence state moved with it, every epoch: seq 3 again is a duplicate */
    uint64_t q3 = 3;
    CHECK_OK(pb_store_receive(s, nw, EP, &in[2], &q3, 1, 9100000, &r));
    CHECK(r.applied == 0 && r.duplicates == 1 && r.ack == 3);
    r = recv1(s, nw, E2, 7, 9100000);
    CHECK(r.duplicates == 1 && r.ack == 7);
    r = recv1(s, nw, 77, 5, 9100000);
    CHECK(r.duplicates == 1 && r.ack == 5);
    uint64_t last = 0;
    CHECK_OK(pb_store_outbox_append(s, nw, out, 1, 9100000, &last));
    CHECK_INT(last, 3);

    /* refusals change nothing */
    char *before = snapshot(s);
    CHECK_ERR(pb_store_peer_rename(s, "nobody.example:443", "x.example:443", k1, 1),
              PB_ERR_NOT_FOUND);
    CHECK_ERR(pb_store_peer_rename(s, old, "x.example:443", k1, 1), PB_ERR_NOT_FOUND);
    CHECK_ERR(pb_store_peer_rename(s, nw, other, k1, 1), PB_ERR_EXISTS);
    CHECK_ERR(pb_store_peer_rename(s, nw, nw, k1, 1), PB_ERR_EXISTS);
    CHECK_ERR(pb_store_peer_rename(s, nw, "", k1, 1), PB_ERR_INVAL);
    char *after = snapshot(s);
    CHECK_STR(after, before);
    free(before);
    free(after);
#ifdef PB_FAULTS
    before = snapshot(s);
    pb_store_fault_set(s, PB_ERR_STORE);
    CHECK_ERR(pb_store_peer_rename(s, nw, "x.example:443", k1, 1), PB_ERR_STORE);
    CHECK_ERR(pb_store_self_rename(s, "me2.example:443", "me3.example:443", 1), PB_ERR_STORE);
    CHECK_ERR(pb_store_outbox_append(s, nw, out, 2, 1, NULL), PB_ERR_STORE);
    CHECK_ERR(pb_store_outbox_ack(s, nw, 10), PB_ERR_STORE);
    CHECK_ERR(pb_store_outbox_remove(s, nw, 1), PB_ERR_STORE);
    CHECK_ERR(pb_store_peer_state_set(s, nw, PB_MODE_PUSH, 0, 0, NULL, 0), PB_ERR_STORE);
    CHECK_ERR(pb_store_rename_out_done(s, nw, "me2.example:443"), PB_ERR_STORE);
    CHECK_ERR(pb_store_rename_out_failed(s, nw, 1, 1, "x"), PB_ERR_STORE);
    pb_store_fault_set(s, PB_OK);
    after = snapshot(s);
    CHECK_STR(after, before);
    CHECK(meta_is(s, "server_id", "me2.example:443"));
    free(before);
    free(after);
#endif
    CHECK_OK(pb_store_integrity_check(s));
    CHECK_QUEUE_COUNTERS(spec);
    pb_store_close(s);
    free(spec);
}

static void test_self_rename(void)
{
    pb_store *s = open_fresh("self", NULL);
    if (!s) return;
    const char *p1 = "p1.example:443", *p2 = "p2.example:443", *p3 = "p3.example:443";
    pb_rename_out *ro = NULL;
    size_t n = 99;
    CHECK_OK(pb_store_rename_out_list(s, &ro, &n));
    CHECK_INT(n, 0);
    pb_rename_outs_free(ro, n);
    CHECK_OK(pb_store_peer_touch(s, p2, 0));
    CHECK_OK(pb_store_peer_touch(s, p1, 0));

    CHECK_OK(pb_store_self_rename(s, "a.example:443", "b.example:443", 100));
    CHECK(meta_is(s, "server_id", "b.example:443"));
    CHECK_OK(pb_store_rename_out_list(s, &ro, &n));
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_STR(ro[0].peer, p1);
        CHECK_STR(ro[1].peer, p2);
        for (size_t i = 0; i < 2; i++) {
            CHECK_STR(ro[i].old_id, "a.example:443");
            CHECK_STR(ro[i].new_id, "b.example:443");
            CHECK_INT(ro[i].attempts, 0);
            CHECK_INT(ro[i].next_attempt_at, 100);
            CHECK(ro[i].last_error == NULL);
        }
    }
    pb_rename_outs_free(ro, n);

    CHECK_OK(pb_store_rename_out_failed(s, p1, 3, 500, "refused"));
    CHECK_ERR(pb_store_rename_out_failed(s, p3, 1, 1, "x"), PB_ERR_NOT_FOUND);
    CHECK_OK(pb_store_rename_out_list(s, &ro, &n));
    if (n >= 1) {
        CHECK_INT(ro[0].attempts, 3);
        CHECK_INT(ro[0].next_attempt_at, 500);
        CHECK_STR(ro[0].last_error, "refused");
    }
    pb_rename_outs_free(ro, n);

    /* a second rename before the peers heard of the first: they still know us as a */
    CHECK_OK(pb_store_self_rename(s, "b.example:443", "c.example:443", 200));
    CHECK(meta_is(s, "server_id", "c.example:443"));
    CHECK_OK(pb_store_rename_out_list(s, &ro, &n));
    CHECK_INT(n, 2);
    for (size_t i = 0; i < n; i++) {
        CHECK_STR(ro[i].old_id, "a.example:443");
        CHECK_STR(ro[i].new_id, "c.example:443");
        CHECK_INT(ro[i].attempts, 0);
        CHECK_INT(ro[i].next_attempt_at, 200);
        CHECK(ro[i].last_error == NULL);
    }
    pb_rename_outs_free(ro, n);

    /* done only for the current new_id */
    CHECK_OK(pb_store_rename_out_done(s, p1, "b.example:443"));
    CHECK_OK(pb_store_rename_out_list(s, &ro, &n));
    CHECK_INT(n, 2);
    pb_rename_outs_free(ro, n);
    CHECK_OK(pb_store_rename_out_done(s, p1, "c.example:443"));
    CHECK_OK(pb_store_rename_out_done(s, p3, "c.example:443")); /* none: fine */
    CHECK_OK(pb_store_rename_out_list(s, &ro, &n));
    CHECK(n == 1 && strcmp(ro[0].peer, p2) == 0);
    pb_rename_outs_free(ro, n);

    /* renaming back to the ID a peer still knows: nothing left to tell it */
    CHECK_OK(pb_store_peer_touch(s, p3, 0));
    CHECK_OK(pb_store_self_rename(s, "c.example:443", "a.example:443", 300));
    CHECK_OK(pb_store_rename_out_list(s, &ro, &n));
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_STR(ro[0].peer, p1); /* p1 knew us as c */
        CHECK_STR(ro[0].old_id, "c.example:443");
        CHECK_STR(ro[0].new_id, "a.example:443");
        CHECK_STR(ro[1].peer, p3);
        CHECK_STR(ro[1].old_id, "c.example:443");
    }
    pb_rename_outs_free(ro, n);
    pb_store_close(s);
}

/* A database created by the first release (schema version 1) opens, migrates to the
 * current version in place and keeps its data. */
/* The migration that added the queue counters counts the queues that exist: a store of
 * the previous version (the column dropped, the version set back) is opened again. */
static void test_migrate_queue_counters(void)
{
    char *spec = NULL;
    pb_store *s = open_fresh("qcount", &spec);
    if (!s) {
        free(spec);
        return;
    }
    pb_event e[3] = {ev_added(1, 2), ev_added(1, 3), ev_added(1, 4)};
    CHECK_OK(pb_store_outbox_append(s, "a.example:1", e, 3, 1000, NULL));
    CHECK_OK(pb_store_outbox_append(s, "b.example:1", e, 2, 1000, NULL));
    CHECK_OK(pb_store_outbox_ack(s, "b.example:1", 1));
    CHECK_OK(pb_store_peer_touch(s, "c.example:1", 5));
    pb_store_close(s);
    s = NULL;
    char sql[160];
    snprintf(sql, sizeof sql,
             "ALTER TABLE peers DROP COLUMN queued; UPDATE schema_version SET version = %d", 7);
    CHECK(raw_exec(spec, sql));
    CHECK_OK(pb_store_open(spec, NULL, &s));
    if (s) {
        static const char *const peers[3] = {"a.example:1", "b.example:1", "c.example:1"};
        const uint64_t want[3] = {3, 1, 0};
        for (int i = 0; i < 3; i++) {
            pb_peer_state st;
            CHECK_OK(pb_store_peer_state_get(s, peers[i], &st));
            CHECKF(st.queued == want[i], "%s: queued %llu after the migration", peers[i],
                   (unsigned long long)st.queued);
            pb_peer_state_clear(&st);
        }
        CHECK_QUEUE_COUNTERS(spec);
    }
    pb_store_close(s);
    free(spec);
}

/* Queue control (store.h): a flush resets queued peers only and is recorded for the lease
 * holder; a drop deletes what was created before its time, starts a new epoch, appends a
 * notice to the inbox and clears the peer's mode when nothing is left to wait for; the
 * expired peers are those whose head is older. */
static void test_queue_control(void)
{
    char *spec = NULL;
    pb_store *s = open_fresh("qcontrol", &spec);
    if (!s) {
        free(spec);
        return;
    }
    const char *p1 = "p1.example:443", *p2 = "p2.example:443", *p3 = "p3.example:443";
    pb_event e[3] = {ev_added(1, 10), ev_invited(2, 3, "inv-1"), ev_removed(4, 5)};
    CHECK_OK(pb_store_outbox_append(s, p1, e, 3, 1000, NULL));
    CHECK_OK(pb_store_outbox_append(s, p1, e, 2, 5000, NULL));
    CHECK_OK(pb_store_outbox_append(s, p2, e, 1, 1000, NULL));
    CHECK_OK(pb_store_peer_state_set(s, p1, PB_MODE_QUEUED, 4, 99999, "refused", 0));

    /* flush: the queued peer only, recorded when asked */
    char **names = NULL;
    size_t n = 0;
    CHECK_OK(pb_store_peer_flush(s, p2, 7000, true, &names, &n));
    CHECK_INT(n, 0);
    CHECK(names == NULL);
    CHECK_OK(pb_store_peer_flush(s, NULL, 7000, true, &names, &n));
    CHECK_INT(n, 1);
    if (n == 1) CHECK_STR(names[0], p1);
    pb_store_strings_free(names, n);
    pb_peer_state st;
    CHECK_OK(pb_store_peer_state_get(s, p1, &st));
    CHECK_INT(st.mode, PB_MODE_QUEUED);
    CHECK_INT(st.attempts, 0);
    CHECK_INT(st.next_attempt_at, 7000);
    uint64_t epoch0 = st.send_epoch;
    pb_peer_state_clear(&st);
    pb_flush_req *fr = NULL;
    CHECK_OK(pb_store_flush_list(s, &fr, &n));
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK_STR(fr[0].peer, p1);
        CHECK_INT(fr[0].requested_at, 7000);
    }
    pb_flush_reqs_free(fr, n);
    CHECK_OK(pb_store_flush_done(s, p1, 6999)); /* an older flush's holder: stays */
    CHECK_OK(pb_store_flush_list(s, &fr, &n));
    CHECK_INT(n, 1);
    pb_flush_reqs_free(fr, n);
    CHECK_OK(pb_store_flush_done(s, p1, 7000));
    CHECK_OK(pb_store_flush_list(s, &fr, &n));
    CHECK_INT(n, 0);
    CHECK(fr == NULL);
    CHECK_OK(pb_store_peer_flush(s, p1, 7100, false, NULL, &n)); /* not recorded */
    CHECK_INT(n, 1);
    CHECK_OK(pb_store_flush_list(s, &fr, &n));
    CHECK_INT(n, 0);

    /* expiry: the heads older than the cutoff */
    CHECK_OK(pb_store_outbox_expired_peers(s, 1000, &names, &n));
    CHECK_INT(n, 0);
    CHECK_OK(pb_store_outbox_expired_peers(s, 1001, &names, &n));
    CHECK_INT(n, 2);
    pb_store_strings_free(names, n);

    /* a drop of the events before 2000: 1..3 */
    uint64_t inbox0 = inbox_last(s);
    pb_drop_result r;
    CHECK_OK(pb_store_outbox_drop(s, p1, 2000, "max_queue_age", 8000, true, &r));
    CHECK_INT(r.count, 3);
    CHECK_INT(r.first_seq, 1);
    CHECK_INT(r.last_seq, 3);
    CHECK_INT(r.oldest_at, 1000);
    CHECK_INT(r.remaining, 2);
    CHECK(r.epoch != 0 && r.epoch != epoch0);
    CHECK_INT(r.notice_seq, inbox0 + 1);
    CHECK_INT(inbox_last(s), inbox0 + 1);
    CHECK_OK(pb_store_flush_list(s, &fr, &n)); /* recorded for the lease holder */
    CHECK_INT(n, 1);
    if (n == 1) CHECK_INT(fr[0].requested_at, 8000);
    pb_flush_reqs_free(fr, n);
    CHECK_OK(pb_store_peer_state_get(s, p1, &st));
    CHECK_INT(st.mode, PB_MODE_QUEUED); /* events left: still waiting for the peer */
    CHECK_INT(st.queued, 2);
    CHECK_INT(st.send_epoch, r.epoch);
    CHECK_INT(st.next_seq, 6);
    pb_peer_state_clear(&st);
    CHECK_INT(outbox_count(s, p1), 2);
    pb_inbox_item *it = NULL;
    CHECK_OK(pb_store_inbox_read(s, inbox0, 10, &it, &n));
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK(!it[0].is_rename && it[0].notice);
        CHECK_STR(it[0].from, p1);
        CHECK_INT(it[0].received_at, 8000);
        CHECK(it[0].notice && strstr(it[0].notice, "\"queueDropped\"") &&
              strstr(it[0].notice, "\"reason\":\"max_queue_age\"") &&
              strstr(it[0].notice, "\"count\":\"3\"") &&
              strstr(it[0].notice, "\"firstSeq\":\"1\"") &&
              strstr(it[0].notice, "\"lastSeq\":\"3\""));
    }
    pb_inbox_items_free(it, n);

    /* the whole queue: the peer is back in push mode with a clean slate */
    CHECK_OK(pb_store_outbox_drop(s, p1, INT64_MAX, "operator", 9000, false, &r));
    CHECK_INT(r.count, 2);
    CHECK_INT(r.first_seq, 4);
    CHECK_INT(r.last_seq, 5);
    CHECK_INT(r.remaining, 0);
    CHECK_OK(pb_store_peer_state_get(s, p1, &st));
    CHECK_INT(st.mode, PB_MODE_PUSH);
    CHECK_INT(st.attempts, 0);
    CHECK_INT(st.next_attempt_at, 0);
    CHECK(st.last_error == NULL);
    CHECK_INT(st.queued, 0);
    CHECK_INT(st.send_epoch, r.epoch);
    pb_peer_state_clear(&st);
    /* nothing left: nothing written */
    uint64_t inbox1 = inbox_last(s);
    CHECK_OK(pb_store_outbox_drop(s, p1, INT64_MAX, "operator", 9500, false, &r));
    CHECK_INT(r.count, 0);
    CHECK_INT(r.notice_seq, 0);
    CHECK_INT(r.epoch, 0);
    CHECK_INT(inbox_last(s), inbox1);
    CHECK_ERR(pb_store_outbox_drop(s, p3, INT64_MAX, "operator", 9500, false, &r),
              PB_ERR_NOT_FOUND);
    /* sequence numbers go on */
    uint64_t last = 0;
    CHECK_OK(pb_store_outbox_append(s, p1, e, 1, 9600, &last));
    CHECK_INT(last, 6);

    /* a parked peer whose parked event is dropped is no longer parked */
    CHECK_OK(pb_store_outbox_append(s, p3, e, 1, 1000, NULL));
    CHECK_OK(pb_store_outbox_append(s, p3, e, 1, 3000, NULL));
    CHECK_OK(pb_store_peer_state_set(s, p3, PB_MODE_PARKED, 0, 0, "refused", 1));
    CHECK_OK(pb_store_outbox_drop(s, p3, 2000, "operator", 9700, false, &r));
    CHECK_INT(r.count, 1);
    CHECK_INT(r.remaining, 1);
    CHECK_OK(pb_store_peer_state_get(s, p3, &st));
    CHECK_INT(st.mode, PB_MODE_PUSH);
    CHECK_INT(st.parked_seq, 0);
    pb_peer_state_clear(&st);
    /* a rename forgets the flush recorded by the first drop */
    CHECK_OK(pb_store_flush_list(s, &fr, &n));
    CHECK_INT(n, 1);
    pb_flush_reqs_free(fr, n);
    uint8_t key[PB_PUBKEY_LEN] = {1};
    CHECK_OK(pb_store_peer_rename(s, p1, "p1b.example:443", key, 9900));
    CHECK_OK(pb_store_flush_list(s, &fr, &n));
    CHECK_INT(n, 0);
    CHECK_QUEUE_COUNTERS(spec);
    pb_store_close(s);
    free(spec);
}

/* A fixture file's text (caller frees); NULL (a failed check) when it cannot be read. */
static char *read_fixture(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", PB_STORE_FIXTURES, name);
    FILE *f = fopen(path, "rb");
    CHECKF(f != NULL, "%s: %s", path, strerror(errno));
    if (!f) return NULL;
    pb_buf b = PB_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        pb_buf_append(&b, chunk, n);
    fclose(f);
    pb_buf_append(&b, "", 1);
    return (char *)pb_buf_steal(&b, NULL);
}

/* Stores written by the code before the store was written once (tests/fixtures/store,
 * made by its make-fixtures from that code's own migration steps), at each schema
 * version it had: opened by this build, each is upgraded and reads back what it held. */
static void test_migrate_fixtures(void)
{
    for (int v = 1; v <= 9; v++) { /* the versions that code had, and 9 */
        char name[32], file[32];
        snprintf(name, sizeof name, "fixture_v%d", v);
        snprintf(file, sizeof file, "%s-v%d.sql", g_pg ? "pg" : "sqlite", v);
        char *p = spec_for(name), *sql = read_fixture(file);
        pb_store *s = NULL;
        CHECKF(p && sql && raw_exec(p, sql), "%s loaded", file);
        if (p && sql) CHECK_OK(pb_store_open(p, NULL, &s));
        free(sql);
        if (!s) {
            free(p);
            continue;
        }
        int got = 0;
        uint8_t key[PB_PUBKEY_LEN], want_key[PB_PUBKEY_LEN];
        memset(want_key, 1, sizeof want_key);
        CHECK_OK(pb_store_schema_version(s, &got));
        CHECKF(got == SCHEMA_CURRENT, "v%d: version %d", v, got);
        CHECK(meta_is(s, "server_id", "fx.example:443"));
        CHECK_OK(pb_store_peer_key_get(s, "a.example:443", key));
        CHECK_MEM(key, sizeof key, want_key, sizeof want_key);
        pb_peer_state a = {0}, b = {0};
        CHECK_OK(pb_store_peer_state_get(s, "a.example:443", &a));
        CHECK_OK(pb_store_peer_state_get(s, "b.example:443", &b));
        CHECKF(a.mode == (v >= 2 ? PB_MODE_QUEUED : PB_MODE_PUSH) &&
                   a.next_seq == (v >= 2 ? 4 : 1) && a.queued == (v >= 2 ? 2 : 0) &&
                   a.attempts == (v >= 2 ? 2 : 0) && a.recv_seq == (v >= 2 ? 5 : 0) &&
                   a.recv_epoch == 0 && a.send_epoch == 0,
               "v%d: peer a: mode %d next_seq %llu queued %llu recv_seq %llu", v, (int)a.mode,
               (unsigned long long)a.next_seq, (unsigned long long)a.queued,
               (unsigned long long)a.recv_seq);
        CHECK(v < 2 || (a.last_error && strcmp(a.last_error, "boom") == 0));
        CHECKF(b.send_epoch == (v >= 5 ? 77u : 0u) && b.recv_epoch == (v >= 5 ? 9u : 0u),
               "v%d: peer b: send_epoch %llu recv_epoch %llu", v, (unsigned long long)b.send_epoch,
               (unsigned long long)b.recv_epoch);
        pb_peer_state_clear(&a);
        pb_peer_state_clear(&b);
        pb_outbox_item *items = NULL;
        pb_inbox_item *in = NULL;
        pb_guild_entry *gs = NULL;
        pb_invite_entry *is = NULL;
        pb_rename_out *ro = NULL;
        size_t n = 0, nin = 0, ng = 0, ni = 0, nro = 0;
        CHECK_OK(pb_store_outbox_read(s, "a.example:443", 1, 10, 1 << 20, &items, &n));
        CHECK_INT(n, v >= 2 ? 2 : 0);
        if (n == 2) CHECK(items[0].seq == 2 && items[0].ev.guild_id == 70 && items[1].seq == 3);
        pb_outbox_items_free(items, n);
        CHECK_OK(pb_store_inbox_read(s, 0, 10, &in, &nin));
        CHECK_INT(nin, v >= 2 ? 2 : 0);
        if (nin == 2) CHECK(in[0].ev.guild_id == 70 && in[1].is_rename);
        pb_inbox_items_free(in, nin);
        CHECK_OK(pb_store_guilds(s, 7, &gs, &ng));
        CHECK_INT(ng, v >= 7 ? 2 : v >= 2 ? 1 : 0);
        if (ng > 0) CHECK(gs[0].guild_id == 70);
        if (ng > 1) CHECK(gs[1].guild_id == 71);
        pb_guild_entries_free(gs, ng);
        CHECK_OK(pb_store_invites(s, 7, &is, &ni));
        CHECK_INT(ni, v >= 2 ? 1 : 0);
        if (ni == 1) CHECK(is[0].inviter_id == 8 && strcmp(is[0].invite_id, "inv1") == 0);
        pb_invite_entries_free(is, ni);
        CHECK_OK(pb_store_rename_out_list(s, &ro, &nro));
        CHECK_INT(nro, v >= 2 ? 1 : 0);
        /* a rename from before version 10: its grace starts at the upgrade */
        if (nro == 1)
            CHECKF(!strcmp(ro[0].old_id, "fx.example:443") && ro[0].attempts == 1 &&
                       ro[0].renamed_at >= (int64_t)time(NULL) * 1000 - 600000 &&
                       ro[0].renamed_at <= (int64_t)time(NULL) * 1000 + 1000,
                   "v%d: renamed_at %lld", v, (long long)ro[0].renamed_at);
        pb_rename_outs_free(ro, nro);
        pb_flush_req *fl = NULL;
        size_t nfl = 0;
        CHECK_OK(pb_store_flush_list(s, &fl, &nfl));
        CHECKF(nfl == (v >= 9 ? 1u : 0u) && (nfl == 0 || fl[0].requested_at == 4000),
               "v%d: %zu flushes", v, nfl);
        pb_flush_reqs_free(fl, nfl);
        bool held = true;
        CHECK_OK(pb_store_lease_acquire(s, "a.example:443", "node2", 1000, 10, &held));
        CHECKF(held == (v < 3), "v%d: lease held %d", v, held);
        char *old = NULL;
        int64_t at = 0;
        pb_err err = pb_store_rename_in_find(s, "b.example:443", &old, &at);
        CHECKF(v >= 5 ? err == PB_OK && old && strcmp(old, "old.example:443") == 0 && at == 1234
                      : err == PB_ERR_NOT_FOUND,
               "v%d: rename_in_find %s", v, pb_strerror(err));
        free(old);
        old = NULL;
        /* version 10: a second pending rename of the same old ID is kept beside it */
        CHECK_OK(pb_store_rename_in_add(s, "old.example:443", "new2.example:443", 1300));
        CHECK_OK(pb_store_rename_in_find(s, "new2.example:443", &old, &at));
        free(old);
        old = NULL;
        err = pb_store_rename_in_find(s, "b.example:443", &old, &at);
        CHECKF(v >= 5 ? err == PB_OK : err == PB_ERR_NOT_FOUND, "v%d: both pending: %s", v,
               pb_strerror(err));
        free(old);
        pb_event e[2] = {ev_added(7, 70), ev_added(7, 72)};
        uint64_t last = 0;
        bool dup = false;
        CHECK_OK(pb_store_outbox_submit(s, "a.example:443", e, 2, 2000, "sub1", &last, &dup));
        CHECKF(dup == (v >= 4) && last == (v >= 4   ? 3
                                           : v >= 2 ? 5
                                                    : 2),
               "v%d: submit %d %llu", v, dup, (unsigned long long)last);
        pb_recv_result res;
        CHECK_OK(pb_store_receive(s, "b.example:443", 0, e, NULL, 1, 3000, &res));
        CHECK_OK(pb_store_inbox_last_seq(s, &last));
        CHECK_INT(last, v >= 2 ? 3 : 1);
        CHECK_OK(pb_store_integrity_check(s));
        CHECK_QUEUE_COUNTERS(p);
        pb_store_close(s);
        free(p);
    }
}

static void test_migrate_from_v1(void)
{
    char *p = spec_for("v1");
    if (!p) return;
    uint8_t k[PB_PUBKEY_LEN], got[PB_PUBKEY_LEN];
    fill_key(k, 42);
    char *hex = pbt_tohex(k, sizeof k);
    /* schema version 1 as the store's own migration step writes it */
    char *v1 = schema_sql(1);
    char *sql = NULL;
    if (asprintf(
            &sql,
            "%sINSERT INTO meta VALUES ('server_id', 'v1.example:443');"
            "INSERT INTO peers(server_id, first_seen, last_contact) VALUES ('b.example:443', 5, 6);"
            "INSERT INTO peers(server_id, first_seen, pubkey, key_fetched_at)"
            " VALUES ('a.example:443', 1, %s'%s'%s, 2);",
            v1, g_pg ? "decode(" : "x", hex, g_pg ? ", 'hex')" : "") < 0)
        abort();
    CHECK(raw_exec(p, sql));
    free(sql);
    free(v1);
    free(hex);

    pb_store *s = NULL;
    CHECK_OK(pb_store_open(p, NULL, &s));
    if (!s) goto out;
    int v = 0;
    CHECK_OK(pb_store_schema_version(s, &v));
    CHECK_INT(v, SCHEMA_CURRENT);
    CHECK(meta_is(s, "server_id", "v1.example:443"));
    CHECK_OK(pb_store_peer_key_get(s, "a.example:443", got));
    CHECK_MEM(got, sizeof got, k, sizeof k);
    pb_peer_state *ps = NULL;
    size_t n = 0;
    CHECK_OK(pb_store_peer_state_list(s, &ps, &n));
    CHECK_INT(n, 2);
    for (size_t i = 0; i < n; i++) {
        CHECK_INT(ps[i].mode, PB_MODE_PUSH);
        CHECK_INT(ps[i].next_seq, 1);
        CHECK_INT(ps[i].recv_seq, 0);
        CHECK(ps[i].send_epoch == 0 && ps[i].recv_epoch == 0);
        CHECK_INT(ps[i].queued, 0);
        CHECK(ps[i].last_error == NULL);
    }
    if (n == 2) CHECK_INT(ps[1].last_contact, 6);
    pb_peer_state_free_array(ps, n);
    pb_event e = ev_added(1, 2);
    uint64_t last = 0;
    CHECK_OK(pb_store_outbox_append(s, "a.example:443", &e, 1, 10, &last));
    CHECK_INT(last, 1);
    CHECK_OK(pb_store_integrity_check(s));
    pb_store_close(s);

    /* reopening does not migrate again */
    s = NULL;
    CHECK_OK(pb_store_open(p, NULL, &s));
    if (!s) goto out;
    CHECK_OK(pb_store_schema_version(s, &v));
    CHECK_INT(v, SCHEMA_CURRENT);
    CHECK_INT(outbox_count(s, "a.example:443"), 1);
    pb_store_close(s);
out:
    free(p);
}

/* Two nodes (two handles on one store), 8 threads, append concurrently to 4 peers: every
 * peer's seqs are 1..N with no gap or duplicate, and each thread's events keep their
 * order. */
#define OB_THREADS 8
#define OB_PEERS 4
#define OB_APPENDS 40

struct ob_arg {
    pb_store *s;
    int id;
    int failures;
    uint64_t per_peer[OB_PEERS]; /* events this thread appended to each peer */
};

static const char *ob_peer(int i)
{
    static const char *const names[OB_PEERS] = {"c0.example:443", "c1.example:443",
                                                "c2.example:443", "c3.example:443"};
    return names[i];
}

static void *ob_thread(void *p)
{
    struct ob_arg *a = p;
    uint64_t counter = 0;
    for (int i = 0; i < OB_APPENDS; i++) {
        int peer = (i + a->id) % OB_PEERS;
        size_t n = 1 + (size_t)(i % 3);
        pb_event evs[3];
        for (size_t k = 0; k < n; k++)
            evs[k] = ev_added((uint64_t)a->id, ++counter); /* guild_id: this thread's order */
        if (pb_store_outbox_append(a->s, ob_peer(peer), evs, n, 1, NULL) != PB_OK) {
            a->failures++;
            continue;
        }
        a->per_peer[peer] += n;
    }
    return NULL;
}

static void test_outbox_concurrent(void)
{
    char *spec = NULL;
    pb_store *s = open_fresh("outbox_mt", &spec), *s2 = NULL;
    if (s) CHECK_OK(pb_store_open(spec, NULL, &s2));
    free(spec);
    if (!s || !s2) {
        pb_store_close(s);
        pb_store_close(s2);
        return;
    }
    pthread_t th[OB_THREADS];
    struct ob_arg args[OB_THREADS];
    for (int i = 0; i < OB_THREADS; i++) {
        args[i] = (struct ob_arg){.s = i % 2 ? s2 : s, .id = i};
        CHECK(pthread_create(&th[i], NULL, ob_thread, &args[i]) == 0);
    }
    for (int i = 0; i < OB_THREADS; i++)
        pthread_join(th[i], NULL);
    for (int p = 0; p < OB_PEERS; p++) {
        uint64_t want = 0;
        for (int t = 0; t < OB_THREADS; t++)
            want += args[t].per_peer[p];
        pb_outbox_item *it = NULL;
        size_t n = 0;
        CHECK_OK(pb_store_outbox_read(s, ob_peer(p), 1, 100000, SIZE_MAX, &it, &n));
        CHECK_INT(n, want);
        bool consecutive = true, ordered = true;
        uint64_t last_of[OB_THREADS] = {0};
        for (size_t i = 0; i < n; i++) {
            consecutive = consecutive && it[i].seq == i + 1;
            uint64_t t = it[i].ev.user_id;
            if (t >= OB_THREADS || it[i].ev.guild_id <= last_of[t]) {
                ordered = false;
                continue;
            }
            last_of[t] = it[i].ev.guild_id;
        }
        CHECKF(consecutive, "peer %d: seqs not 1..%zu", p, n);
        CHECKF(ordered, "peer %d: a thread's events out of order", p);
        pb_outbox_items_free(it, n);
        CHECK_INT(next_seq_of(s, ob_peer(p)), want + 1);
        pb_peer_state st;
        CHECK_OK(pb_store_peer_state_get(s2, ob_peer(p), &st));
        CHECK_INT(st.queued, want); /* the counter, kept by both handles' appends */
        pb_peer_state_clear(&st);
    }
    for (int i = 0; i < OB_THREADS; i++)
        CHECK_INT(args[i].failures, 0);
    pb_store_close(s);
    pb_store_close(s2);
}

/* ---- asynchronous submissions (pb_store_outbox_submit_async) ------------------------------ */

#ifdef PB_FAULTS
#define NASYNC 64

/* What the callbacks of one case saw (any store thread). */
struct async_seen {
    atomic_int calls[NASYNC];
    atomic_int total;
    pb_err err[NASYNC];
    uint64_t last[NASYNC];
    bool dup[NASYNC];
};

struct async_tag {
    struct async_seen *seen;
    int i;
};

static void async_cb(void *arg, pb_err result, uint64_t last_seq, bool duplicate)
{
    struct async_tag *t = arg;
    t->seen->err[t->i] = result;
    t->seen->last[t->i] = last_seq;
    t->seen->dup[t->i] = duplicate;
    atomic_fetch_add(&t->seen->calls[t->i], 1);
    atomic_fetch_add(&t->seen->total, 1); /* last: the waiter reads the rest after it */
}

static bool async_wait(struct async_seen *seen, int n)
{
    int64_t deadline = pbt_now_ms() + 20000;
    while (atomic_load(&seen->total) < n) {
        if (pbt_now_ms() > deadline) return false;
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    return true;
}

/* Queues submission i (one event, user i, submission ID "a<i>" or id). */
static pb_err async_submit(pb_store *s, struct async_tag *tags, struct async_seen *seen, int i,
                           const char *id)
{
    char sid[16];
    snprintf(sid, sizeof sid, "a%d", i);
    pb_event e = ev_added((uint64_t)i + 1, 7);
    tags[i] = (struct async_tag){seen, i};
    return pb_store_outbox_submit_async(s, "async.example:443", &e, 1, 1000, id ? id : sid,
                                        async_cb, &tags[i]);
}

/* 64 submissions queued behind a held writer without a thread each: SQLite commits them in
 * one transaction (PostgreSQL: one each, ASYNC_THREADS of them at once); every callback
 * runs once with the seq its event got; a repeated ID is a duplicate; a refused call never
 * calls back; a fault reaches the callback. Then close with submissions queued: each is
 * committed and called back before close returns. */
static void test_outbox_async(void)
{
    char *spec = NULL;
    pb_store *s = open_fresh("async", &spec);
    struct async_seen *seen = calloc(1, sizeof *seen);
    struct async_tag tags[NASYNC];
    if (!s) goto out;
    pb_event e = ev_added(1, 1);
    CHECK_ERR(pb_store_outbox_submit_async(s, "async.example:443", &e, 1, 1000, "bad\n", async_cb,
                                           &tags[0]),
              PB_ERR_INVAL);
    pb_store_stats st0, st1;
    pb_store_stats_get(s, &st0);
    pb_store_fault_hold(s, true);
    for (int i = 0; i < NASYNC; i++)
        CHECK_OK(async_submit(s, tags, seen, i, i == NASYNC - 1 ? "a0" : NULL));
    /* PostgreSQL: the store's threads each hold one, the rest wait in its queue */
    CHECK(wait_queued(s, g_pg ? 4 : NASYNC));
    CHECK_INT(atomic_load(&seen->total), 0);
    pb_store_fault_hold(s, false);
    CHECK(async_wait(seen, NASYNC));
    pb_store_stats_get(s, &st1);
    uint64_t commits = st1.commits - st0.commits, writes = st1.writes - st0.writes;
    printf("async: %d submissions: %llu commits for %llu writes\n", NASYNC,
           (unsigned long long)commits, (unsigned long long)writes);
    CHECK_INT(writes, NASYNC);
    if (g_pg)
        CHECK_INT(commits, NASYNC); /* one transaction each; the server shares WAL flushes */
    else
        CHECK_INT(commits, 1);
    bool seqs[NASYNC] = {false}, once = true;
    int dups = 0;
    for (int i = 0; i < NASYNC; i++) {
        once = once && atomic_load(&seen->calls[i]) == 1;
        CHECK_OK(seen->err[i]);
        dups += seen->dup[i];
        if (i < NASYNC - 1 && seen->last[i] >= 1 && seen->last[i] <= NASYNC - 1)
            seqs[seen->last[i] - 1] = true;
    }
    CHECK(once);
    /* the two submissions with ID "a0": one is stored, the other is its duplicate (which
     * one depends on the order the store runs them: PostgreSQL runs several at once) */
    CHECK_INT(dups, 1);
    CHECK(seen->dup[NASYNC - 1] != seen->dup[0]);
    CHECK_INT(seen->last[NASYNC - 1], seen->last[0]);
    for (int i = 0; i < NASYNC - 1; i++)
        CHECKF(seqs[i], "no submission got seq %d", i + 1);
    CHECK_INT(outbox_count(s, "async.example:443"), NASYNC - 1);

    /* a fault reaches the callback; nothing is stored */
    memset(seen, 0, sizeof *seen);
    pb_store_fault_set(s, PB_ERR_STORE);
    CHECK_OK(async_submit(s, tags, seen, 0, "fault"));
    CHECK(async_wait(seen, 1));
    CHECK_ERR(seen->err[0], PB_ERR_STORE);
    pb_store_fault_set(s, PB_OK);
    CHECK_INT(outbox_count(s, "async.example:443"), NASYNC - 1);

    /* close with submissions queued behind the held writer */
    memset(seen, 0, sizeof *seen);
    pb_store_fault_hold(s, true);
    for (int i = 0; i < 16; i++) {
        char sid[16];
        snprintf(sid, sizeof sid, "close%d", i);
        CHECK_OK(async_submit(s, tags, seen, i, sid));
    }
    CHECK(wait_queued(s, g_pg ? 4 : 16));
    pb_store_close(s);
    s = NULL;
    CHECK_INT(atomic_load(&seen->total), 16);
    for (int i = 0; i < 16; i++) {
        CHECK_INT(atomic_load(&seen->calls[i]), 1);
        CHECK_OK(seen->err[i]);
    }
    CHECK_OK(pb_store_open(spec, NULL, &s));
    if (s) CHECK_INT(outbox_count(s, "async.example:443"), NASYNC - 1 + 16);
out:
    pb_store_close(s);
    free(seen);
    free(spec);
}
#endif

#ifdef PB_FAULTS
/* ---- asynchronous receives (pb_store_receive_async) --------------------------------------- */

#define NRECV 32

struct recv_seen {
    atomic_int calls[NRECV + 1];
    atomic_int total;
    pb_err err[NRECV + 1];
    pb_recv_result res[NRECV + 1];
};

struct recv_tag {
    struct recv_seen *seen;
    int i;
};

static void recv_cb(void *arg, pb_err result, const pb_recv_result *res)
{
    struct recv_tag *t = arg;
    t->seen->err[t->i] = result;
    if (res) t->seen->res[t->i] = *res;
    atomic_fetch_add(&t->seen->calls[t->i], 1);
    atomic_fetch_add(&t->seen->total, 1); /* last: the waiter reads the rest after it */
}

/* 32 senders' batches (2 events each, seqs 1-2) and a repeat of sender 0's queued behind a
 * held writer: SQLite commits them in one transaction (PostgreSQL: one each); each callback
 * runs once; 64 events applied, the repeat's 2 are duplicates (whichever of the two runs
 * second: PostgreSQL runs several at once); the sender's acknowledgement is 2; a refused
 * call never calls back; a fault reaches the callback and stores nothing. */
static void test_receive_async(void)
{
    pb_store *s = open_fresh("recvasync", NULL);
    struct recv_seen *seen = calloc(1, sizeof *seen);
    struct recv_tag tags[NRECV + 1];
    char ids[NRECV][32];
    pb_event evs[NRECV][2];
    uint64_t seqs[2] = {1, 2};
    if (!s) goto out;
    CHECK_ERR(
        pb_store_receive_async(s, "bad id\n", EP, 0, evs[0], seqs, 2, 5000, recv_cb, &tags[0]),
        PB_ERR_INVAL);
    pb_store_stats st0, st1;
    pb_store_stats_get(s, &st0);
    pb_store_fault_hold(s, true);
    for (int i = 0; i <= NRECV; i++) {
        int k = i < NRECV ? i : 0; /* the last one repeats sender 0's batch */
        snprintf(ids[k], sizeof ids[k], "r%d.example:443", k);
        evs[k][0] = ev_added((uint64_t)k + 1, 100);
        evs[k][1] = ev_added((uint64_t)k + 1, 101);
        tags[i] = (struct recv_tag){seen, i};
        CHECK_OK(
            pb_store_receive_async(s, ids[k], EP, 0, evs[k], seqs, 2, 5000, recv_cb, &tags[i]));
    }
    CHECK(wait_queued(s, g_pg ? 4 : NRECV + 1));
    CHECK_INT(atomic_load(&seen->total), 0);
    pb_store_fault_hold(s, false);
    int64_t deadline = pbt_now_ms() + 20000;
    while (atomic_load(&seen->total) < NRECV + 1 && pbt_now_ms() < deadline)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    CHECK_INT(atomic_load(&seen->total), NRECV + 1);
    pb_store_stats_get(s, &st1);
    uint64_t commits = st1.commits - st0.commits;
    printf("receive async: %d receives: %llu commits\n", NRECV + 1, (unsigned long long)commits);
    CHECK_INT(commits, g_pg ? NRECV + 1 : 1);
    size_t applied = 0, dups = 0;
    for (int i = 0; i <= NRECV; i++) {
        CHECK_INT(atomic_load(&seen->calls[i]), 1);
        CHECK_OK(seen->err[i]);
        applied += seen->res[i].applied;
        dups += seen->res[i].duplicates;
        CHECK_INT(seen->res[i].ack, 2);
        CHECK_INT(seen->res[i].epoch, EP);
    }
    CHECK_INT(applied, 2 * NRECV);
    CHECK_INT(dups, 2);
    CHECK_INT(inbox_last(s), 2 * NRECV);

    /* a fault reaches the callback; nothing is stored */
    memset(seen, 0, sizeof *seen);
    pb_store_fault_set(s, PB_ERR_STORE);
    uint64_t more[2] = {3, 4};
    CHECK_OK(pb_store_receive_async(s, ids[1], EP, 0, evs[1], more, 2, 6000, recv_cb, &tags[0]));
    deadline = pbt_now_ms() + 20000;
    while (atomic_load(&seen->total) < 1 && pbt_now_ms() < deadline)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    CHECK_INT(atomic_load(&seen->total), 1);
    CHECK_ERR(seen->err[0], PB_ERR_STORE);
    pb_store_fault_set(s, PB_OK);
    CHECK_INT(inbox_last(s), 2 * NRECV);
out:
    pb_store_close(s);
    free(seen);
}

/* Waits (20 s at most) until `seen` counted n callbacks. */
static bool recv_wait(struct recv_seen *seen, int n)
{
    int64_t deadline = pbt_now_ms() + 20000;
    while (atomic_load(&seen->total) < n && pbt_now_ms() < deadline)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    return atomic_load(&seen->total) == n;
}

/* Window batches (`after`, PROTOCOL.md 5): queued back to back behind a held writer, batch
 * 1-2, then 3-4 after 2, then 7-8 after 6 (across a gap). SQLite runs them in queue order
 * (pb_store_receives_ordered): the first two apply, the third is refused PB_ERR_BUSY and
 * stores nothing. PostgreSQL runs them in any order: the second may be refused too (then
 * it applies when sent again). Then 5-6 after 4 and 7-8 again apply (ack 8), and 3-4 after
 * 2 once more is a duplicate. */
static void test_receive_after(void)
{
    pb_store *s = open_fresh("recvafter", NULL);
    struct recv_seen *seen = calloc(1, sizeof *seen);
    struct recv_tag tags[3] = {{seen, 0}, {seen, 1}, {seen, 2}};
    const char *w = "w.example:443";
    pb_event evs[2] = {ev_added(1, 100), ev_added(1, 101)};
    uint64_t b1[2] = {1, 2}, b2[2] = {3, 4}, b3[2] = {5, 6}, b4[2] = {7, 8};
    if (!s) goto out;
    CHECK_INT(pb_store_receives_ordered(s), !g_pg);
    pb_store_fault_hold(s, true);
    CHECK_OK(pb_store_receive_async(s, w, EP, 0, evs, b1, 2, 5000, recv_cb, &tags[0]));
    CHECK_OK(pb_store_receive_async(s, w, EP, 2, evs, b2, 2, 5000, recv_cb, &tags[1]));
    CHECK_OK(pb_store_receive_async(s, w, EP, 6, evs, b4, 2, 5000, recv_cb, &tags[2]));
    pb_store_fault_hold(s, false);
    CHECK(recv_wait(seen, 3));
    CHECK_OK(seen->err[0]);
    CHECK_ERR(seen->err[2], PB_ERR_BUSY);
    if (g_pg && seen->err[1] == PB_ERR_BUSY) { /* ran before the first: sent again */
        memset(seen, 0, sizeof *seen);
        CHECK_OK(pb_store_receive_async(s, w, EP, 2, evs, b2, 2, 5000, recv_cb, &tags[1]));
        CHECK(recv_wait(seen, 1));
    }
    CHECK_OK(seen->err[1]);
    CHECK_INT(seen->res[1].ack, 4);
    CHECK_INT(seen->res[1].applied, 2);
    CHECK_INT(inbox_last(s), 4);
    uint64_t ep = 0, rs = 0;
    CHECK_OK(pb_store_recv_latest(s, w, &ep, &rs));
    CHECK_INT(rs, 4);

    memset(seen, 0, sizeof *seen);
    CHECK_OK(pb_store_receive_async(s, w, EP, 4, evs, b3, 2, 6000, recv_cb, &tags[0]));
    CHECK(recv_wait(seen, 1));
    CHECK_OK(pb_store_receive_async(s, w, EP, 6, evs, b4, 2, 6000, recv_cb, &tags[1]));
    CHECK(recv_wait(seen, 2));
    CHECK_OK(pb_store_receive_async(s, w, EP, 2, evs, b2, 2, 6000, recv_cb, &tags[2]));
    CHECK(recv_wait(seen, 3));
    CHECK_OK(seen->err[0]);
    CHECK_OK(seen->err[1]);
    CHECK_INT(seen->res[1].ack, 8);
    CHECK_OK(seen->err[2]);
    CHECK_INT(seen->res[2].duplicates, 2);
    CHECK_INT(seen->res[2].ack, 8);
    CHECK_INT(inbox_last(s), 8);
out:
    pb_store_close(s);
    free(seen);
}
#endif

/* ---- submission IDs (pb_store_outbox_submit) ---------------------------------------------- */

/* One submission: the result, whether it was a duplicate and the last seq it reported. */
struct sub_res {
    pb_err err;
    bool dup;
    uint64_t last;
};

static struct sub_res submit(pb_store *s, const char *peer, const pb_event *e, size_t n,
                             int64_t now, const char *id)
{
    struct sub_res r = {PB_ERR_INTERNAL, true, 12345};
    r.err = pb_store_outbox_submit(s, peer, e, n, now, id, &r.last, &r.dup);
    return r;
}

/* Submission records behind the store's back: how many match the SQL condition. */
static long long sub_rows(const char *spec, const char *where)
{
    char sql[256];
    long long v = -1;
    snprintf(sql, sizeof sql, "SELECT count(*) FROM submissions WHERE %s", where);
    if (!raw_int(spec, sql, &v)) return -1;
    return v;
}

static void test_submission_ids(void)
{
    char big[PB_SUBMISSION_ID_MAX + 2];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    CHECK(!pb_store_submission_id_valid(big)); /* 129 */
    big[PB_SUBMISSION_ID_MAX] = '\0';
    CHECK(pb_store_submission_id_valid(big)); /* 128 */
    CHECK(pb_store_submission_id_valid("a"));
    CHECK(pb_store_submission_id_valid(" !~\"\\"));
    CHECK(!pb_store_submission_id_valid(NULL));
    CHECK(!pb_store_submission_id_valid(""));
    CHECK(!pb_store_submission_id_valid("a\tb"));
    CHECK(!pb_store_submission_id_valid("a\x7f"));
    CHECK(!pb_store_submission_id_valid("caf\xc3\xa9"));

    char *spec = NULL;
    pb_store *s = open_fresh("submit", &spec);
    if (!s) {
        free(spec);
        return;
    }
    const char *p1 = "p1.example:443", *p2 = "p2.example:443";
    pb_event e[3] = {ev_added(1, 10), ev_invited(2, 3, "inv-1"), ev_removed(4, 5)};
    const int64_t t0 = 1000000;

    /* an invalid ID is refused and writes nothing */
    CHECK_ERR(submit(s, p1, e, 1, t0, "").err, PB_ERR_INVAL);
    CHECK_ERR(submit(s, p1, e, 1, t0, "tab\there").err, PB_ERR_INVAL);
    CHECK_ERR(submit(s, p1, e, 1, t0, "x\x01").err, PB_ERR_INVAL);
    big[PB_SUBMISSION_ID_MAX] = 'x'; /* 129 again */
    CHECK_ERR(submit(s, p1, e, 1, t0, big).err, PB_ERR_INVAL);
    CHECK_INT(next_seq_of(s, p1), 0); /* no peer row */

    /* first time: appended and recorded; a repeat appends nothing and reports the seqs
     * the first one got */
    struct sub_res r = submit(s, p1, e, 2, t0, "s-1");
    CHECK_OK(r.err);
    CHECK(!r.dup);
    CHECK_INT(r.last, 2);
    r = submit(s, p1, e, 2, t0 + 5, "s-1");
    CHECK_OK(r.err);
    CHECK(r.dup);
    CHECK_INT(r.last, 2);
    CHECK_OK(pb_store_outbox_submit(s, p1, e, 2, t0 + 6, "s-1", NULL, NULL));
    CHECK_INT(outbox_count(s, p1), 2);
    CHECK_INT(next_seq_of(s, p1), 3);
    CHECK_INT(sub_rows(spec, "id = 's-1' AND peer = 'p1.example:443' AND first_seq = 1"
                             " AND count = 2 AND created_at = 1000000"),
              1);

    /* the ID reused for another peer or another number of events: refused, nothing
     * changes (p2 does not even get a peer row) */
    CHECK_ERR(submit(s, p2, e, 2, t0, "s-1").err, PB_ERR_EXISTS);
    CHECK_ERR(submit(s, p1, e, 3, t0, "s-1").err, PB_ERR_EXISTS);
    CHECK_ERR(submit(s, p1, e, 1, t0, "s-1").err, PB_ERR_EXISTS);
    pb_peer_state st;
    CHECK_ERR(pb_store_peer_state_get(s, p2, &st), PB_ERR_NOT_FOUND);
    CHECK_INT(next_seq_of(s, p1), 3);

    /* without an ID, or with another ID, the same events are appended again */
    uint64_t last = 0;
    CHECK_OK(pb_store_outbox_append(s, p1, e, 1, t0, &last));
    CHECK_INT(last, 3);
    r = submit(s, p1, e, 1, t0, NULL);
    CHECK(r.err == PB_OK && !r.dup && r.last == 4);
    r = submit(s, p1, e, 2, t0, "s-2");
    CHECK(r.err == PB_OK && !r.dup && r.last == 6);
    r = submit(s, p2, e, 3, t0, "S-1"); /* IDs are case-sensitive */
    CHECK(r.err == PB_OK && !r.dup && r.last == 3);

    /* remembered after the events were delivered (acked) and after a reopen */
    CHECK_OK(pb_store_outbox_ack(s, p1, UINT64_MAX));
    r = submit(s, p1, e, 2, t0 + 7, "s-1");
    CHECK(r.err == PB_OK && r.dup && r.last == 2);
    pb_store_close(s);
    s = NULL;
    CHECK_OK(pb_store_open(spec, NULL, &s));
    if (!s) goto out;
    r = submit(s, p1, e, 2, t0 + 8, "s-2");
    CHECK(r.err == PB_OK && r.dup && r.last == 6);
    CHECK_INT(outbox_count(s, p1), 0);

    /* retention: exactly 24 h old is still remembered; older records go with the next
     * recording append, and the ID is then new again */
    const int64_t keep = PB_STORE_SUBMISSION_KEEP_MS;
    r = submit(s, p2, e, 1, t0 + keep, "s-keep"); /* cutoff t0: s-1, s-2, S-1 stay */
    CHECK(r.err == PB_OK && !r.dup);
    CHECK_INT(sub_rows(spec, "created_at = 1000000"), 3);
    r = submit(s, p1, e, 2, t0 + keep, "s-1");
    CHECK(r.err == PB_OK && r.dup && r.last == 2);
    r = submit(s, p2, e, 1, t0 + keep + 1, "s-prune"); /* cutoff t0 + 1 */
    CHECK(r.err == PB_OK && !r.dup);
    CHECK_INT(sub_rows(spec, "created_at = 1000000"), 0);
    CHECK_INT(sub_rows(spec, "1 = 1"), 2);         /* s-keep, s-prune */
    r = submit(s, p1, e, 1, t0 + keep + 2, "s-1"); /* forgotten: a new submission */
    CHECK(r.err == PB_OK && !r.dup && r.last == 7);
    /* a plain append prunes nothing */
    CHECK_OK(pb_store_outbox_append(s, p1, e, 1, t0 + 10 * keep, NULL));
    CHECK_INT(sub_rows(spec, "1 = 1"), 3);

    /* bounded work: one recording append deletes at most PRUNE_MAX expired records */
    CHECK(raw_exec(spec, g_pg ? "INSERT INTO submissions(id, peer, first_seq, count, created_at)"
                                " SELECT 'bulk-' || i, 'p9.example:443', i, 1, i"
                                " FROM generate_series(1, 250) AS i"
                              : "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
                                " WHERE i < 250) INSERT INTO submissions(id, peer, first_seq,"
                                " count, created_at) SELECT 'bulk-' || i, 'p9.example:443', i,"
                                " 1, i FROM n"));
    CHECK_OK(submit(s, p2, e, 1, t0 + 3 * keep, "s-b1").err);
    CHECK_INT(sub_rows(spec, "id LIKE 'bulk-%'"), 250 - PB_STORE_SUBMISSION_PRUNE_MAX);
    /* oldest first */
    CHECK_INT(sub_rows(spec, "id LIKE 'bulk-%' AND created_at <= 100"), 0);
    CHECK_OK(submit(s, p2, e, 1, t0 + 3 * keep, "s-b2").err);
    CHECK_INT(sub_rows(spec, "id LIKE 'bulk-%'"), 250 - 2 * PB_STORE_SUBMISSION_PRUNE_MAX);
    /* the rest of the bulk and the older s-* records go with the third */
    CHECK_OK(submit(s, p2, e, 1, t0 + 3 * keep, "s-b3").err);
    CHECK_INT(sub_rows(spec, "1 = 1"), 3); /* s-b1, s-b2, s-b3 */

    /* atomicity: an append that fails after the ID was checked records nothing. A row
     * planted at p1's next seq makes the insert fail inside the transaction. */
    uint64_t next = next_seq_of(s, p1);
    char sql[256];
    snprintf(sql, sizeof sql,
             "INSERT INTO outbox(peer, seq, event, created_at) VALUES ('p1.example:443', %llu, %s,"
             " 1)",
             (unsigned long long)next + 1, g_pg ? "decode('0801', 'hex')" : "x'0801'");
    CHECK(raw_exec(spec, sql));
    CHECK(submit(s, p1, e, 2, t0 + 3 * keep, "s-atom").err != PB_OK);
    CHECK_INT(sub_rows(spec, "id = 's-atom'"), 0);
    CHECK_INT(next_seq_of(s, p1), next);
    snprintf(sql, sizeof sql, "DELETE FROM outbox WHERE peer = 'p1.example:443' AND seq = %llu",
             (unsigned long long)next + 1);
    CHECK(raw_exec(spec, sql));
    r = submit(s, p1, e, 2, t0 + 3 * keep, "s-atom");
    CHECK(r.err == PB_OK && !r.dup && r.last == next + 1);
#ifdef PB_FAULTS
    /* a write refused by the store (disk full) records nothing either */
    pb_store_fault_set(s, PB_ERR_STORE);
    CHECK_ERR(submit(s, p1, e, 1, t0 + 3 * keep, "s-fault").err, PB_ERR_STORE);
    pb_store_fault_set(s, PB_OK);
    CHECK_INT(sub_rows(spec, "id = 's-fault'"), 0);
    r = submit(s, p1, e, 1, t0 + 3 * keep, "s-fault");
    CHECK(r.err == PB_OK && !r.dup && r.last == next + 2);
#endif
    CHECK_OK(pb_store_integrity_check(s));
out:
    pb_store_close(s);
    free(spec);
}

#ifdef PB_FAULTS
/* Two nodes (two handles), 8 threads submitting one ID at once, held so that they start
 * together (SQLite: in one batch per handle; PostgreSQL: concurrent transactions): the
 * events are appended once, one caller gets duplicate false, the rest true. */
#define SUB_THREADS 8

struct sub_arg {
    pb_store *s;
    struct sub_res r;
};

static void *sub_thread(void *p)
{
    struct sub_arg *a = p;
    pb_event e[3] = {ev_added(1, 1), ev_added(1, 2), ev_added(1, 3)};
    a->r = submit(a->s, "race.example:443", e, 3, 5000, "one-id");
    return NULL;
}

static void test_submission_race(void)
{
    char *spec = NULL;
    pb_store *s = open_fresh("submit_mt", &spec), *s2 = NULL;
    if (s) CHECK_OK(pb_store_open(spec, NULL, &s2));
    free(spec);
    if (!s || !s2) {
        pb_store_close(s);
        pb_store_close(s2);
        return;
    }
    pthread_t th[SUB_THREADS];
    struct sub_arg args[SUB_THREADS];
    pb_store_fault_hold(s, true);
    pb_store_fault_hold(s2, true);
    for (int i = 0; i < SUB_THREADS; i++) {
        args[i] = (struct sub_arg){.s = i % 2 ? s2 : s};
        CHECK(pthread_create(&th[i], NULL, sub_thread, &args[i]) == 0);
    }
    CHECK(wait_queued(s, SUB_THREADS / 2));
    CHECK(wait_queued(s2, SUB_THREADS / 2));
    pb_store_fault_hold(s, false);
    pb_store_fault_hold(s2, false);
    int fresh = 0, dups = 0;
    for (int i = 0; i < SUB_THREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK_OK(args[i].r.err);
        CHECK_INT(args[i].r.last, 3);
        if (args[i].r.err != PB_OK) continue;
        if (args[i].r.dup)
            dups++;
        else
            fresh++;
    }
    CHECK_INT(fresh, 1);
    CHECK_INT(dups, SUB_THREADS - 1);
    CHECK_INT(outbox_count(s, "race.example:443"), 3);
    CHECK_INT(next_seq_of(s, "race.example:443"), 4);
    CHECK_OK(pb_store_integrity_check(s));
    pb_store_close(s);
    pb_store_close(s2);
}
#endif

/* ---- several nodes: leases, the outbox peer list, receiving and the inbox ---------------- */

static bool lease(pb_store *s, const char *peer, const char *node, int64_t now, int64_t ttl)
{
    bool held = false;
    pb_err err = pb_store_lease_acquire(s, peer, node, now, ttl, &held);
    CHECKF(err == PB_OK, "lease_acquire(%s, %s, %lld): %s", peer, node, (long long)now,
           pb_strerror(err));
    return held;
}

static void test_leases(void)
{
    pb_store *s = open_fresh("leases", NULL);
    if (!s) return;
    const char *p = "p.example:443", *q = "q.example:443";
    CHECK(lease(s, p, "A", 1000, 500));  /* free: A's until 1500 */
    CHECK(!lease(s, p, "B", 1499, 500)); /* not expired */
    CHECK(lease(s, p, "A", 1400, 500));  /* renewed: A's until 1900 */
    CHECK(!lease(s, p, "B", 1500, 500));
    CHECK(!lease(s, p, "B", 1899, 500));
    CHECK(lease(s, p, "B", 1900, 500)); /* expired: B's until 2400 */
    CHECK(!lease(s, p, "A", 2000, 500));
    CHECK(lease(s, q, "A", 2000, 500));          /* leases are per peer */
    CHECK_OK(pb_store_lease_release(s, p, "A")); /* not A's: nothing happens */
    CHECK(!lease(s, p, "A", 2000, 500));
    CHECK_OK(pb_store_lease_release(s, p, "B")); /* given up: free at once */
    CHECK(lease(s, p, "A", 2001, 500));
    CHECK_OK(pb_store_lease_release(s, "nobody.example:443", "A"));

    bool held = true;
    CHECK_ERR(pb_store_lease_acquire(s, "", "A", 1, 1, &held), PB_ERR_INVAL);
    CHECK_ERR(pb_store_lease_acquire(s, p, "", 1, 1, &held), PB_ERR_INVAL);
    CHECK_ERR(pb_store_lease_acquire(s, p, "A", -1, 1, &held), PB_ERR_INVAL);
    CHECK_ERR(pb_store_lease_acquire(s, p, "A", 1, 0, &held), PB_ERR_INVAL);
    CHECK_ERR(pb_store_lease_acquire(s, p, "A", INT64_MAX, 1, &held), PB_ERR_INVAL);
    CHECK_ERR(pb_store_lease_acquire(s, p, "A", 1, 1, NULL), PB_ERR_INVAL);
    CHECK_ERR(pb_store_lease_release(s, p, ""), PB_ERR_INVAL);
    CHECK(held);                         /* untouched by refused calls */
    CHECK(!lease(s, p, "B", 2400, 500)); /* and they changed nothing: A's until 2501 */

    /* a renamed peer's lease moves with it */
    uint8_t k[PB_PUBKEY_LEN];
    fill_key(k, 5);
    const char *old = "old.example:443", *nw = "new.example:443";
    CHECK_OK(pb_store_peer_key_set(s, old, k, 1));
    CHECK(lease(s, old, "A", 3000, 500));
    CHECK_OK(pb_store_peer_rename(s, old, nw, k, 3100));
    CHECK(!lease(s, nw, "B", 3200, 500));
    CHECK(lease(s, nw, "A", 3200, 500));
    CHECK(lease(s, old, "B", 3200, 500)); /* nothing left under OLD */
#ifdef PB_FAULTS
    pb_store_fault_set(s, PB_ERR_STORE);
    held = true;
    CHECK_ERR(pb_store_lease_acquire(s, "r.example:443", "A", 1, 1, &held), PB_ERR_STORE);
    CHECK(held);
    CHECK_ERR(pb_store_lease_release(s, nw, "A"), PB_ERR_STORE);
    pb_store_fault_set(s, PB_OK);
    CHECK(!lease(s, nw, "B", 3300, 500)); /* the failed release changed nothing */
#endif
    pb_store_close(s);
}

/* The peers list is exactly want (n names, in order). */
static void check_outbox_peers(pb_store *s, size_t n, const char *const *want, int line)
{
    char **got = (char **)&n;
    size_t m = 99;
    pb_err err = pb_store_outbox_peers(s, &got, &m);
    bool ok = err == PB_OK && m == n && (n > 0 || got == NULL);
    for (size_t i = 0; ok && i < n; i++)
        ok = strcmp(got[i], want[i]) == 0;
    CHECKF(ok, "outbox peers (line %d): err %s, %zu names", line, pb_strerror(err), m);
    if (err == PB_OK) pb_store_strings_free(got, m);
}
#define CHECK_OUTBOX_PEERS(s, n, want) check_outbox_peers(s, n, want, __LINE__)

static void test_outbox_peers(void)
{
    pb_store *s = open_fresh("opeers", NULL);
    if (!s) return;
    pb_event e[2] = {ev_added(1, 2), ev_removed(1, 2)};
    CHECK_OUTBOX_PEERS(s, 0, NULL);
    CHECK_OK(pb_store_outbox_append(s, "b.example:443", e, 2, 1, NULL));
    CHECK_OK(pb_store_outbox_append(s, "a.example:443", e, 1, 1, NULL));
    CHECK_OK(pb_store_outbox_append(s, "c.example:443", e, 2, 1, NULL));
    CHECK_OK(pb_store_outbox_append(s, "B.example:443", e, 1, 1, NULL));
    CHECK_OK(pb_store_peer_touch(s, "d.example:443", 5)); /* a peer with nothing queued */
    CHECK_OUTBOX_PEERS(
        s, 4,
        ((const char *[]){"B.example:443", "a.example:443", "b.example:443", "c.example:443"}));
    CHECK_OK(pb_store_outbox_ack(s, "c.example:443", 1));
    CHECK_OUTBOX_PEERS(
        s, 4,
        ((const char *[]){"B.example:443", "a.example:443", "b.example:443", "c.example:443"}));
    CHECK_OK(pb_store_outbox_ack(s, "c.example:443", 2));
    CHECK_OK(pb_store_outbox_remove(s, "B.example:443", 1));
    CHECK_OUTBOX_PEERS(s, 2, ((const char *[]){"a.example:443", "b.example:443"}));
    uint8_t k[PB_PUBKEY_LEN];
    fill_key(k, 7);
    CHECK_OK(pb_store_peer_rename(s, "b.example:443", "e.example:443", k, 10));
    CHECK_OUTBOX_PEERS(s, 2, ((const char *[]){"a.example:443", "e.example:443"}));
    CHECK_ERR(pb_store_outbox_peers(s, NULL, NULL), PB_ERR_INVAL);
    pb_store_strings_free(NULL, 0);
    pb_store_close(s);
}

static void test_monitoring(void)
{
    pb_store *s = open_fresh("monitor", NULL);
    if (!s) return;
    const int64_t now = 10000000000LL, min = 60000;
    pb_qshape_row *rows = NULL;
    size_t n = 7;
    uint64_t modes[3] = {9, 9, 9}, unread = 9;
    int64_t oldest = 9;
    CHECK_OK(pb_store_qshape(s, now, &rows, &n));
    CHECK(rows == NULL && n == 0);
    CHECK_OK(pb_store_peer_mode_counts(s, modes));
    CHECK(modes[0] == 0 && modes[1] == 0 && modes[2] == 0);
    CHECK_OK(pb_store_inbox_unread(s, 0, &unread, &oldest));
    CHECK(unread == 0 && oldest == 0);

    pb_event e[3] = {ev_added(1, 2), ev_removed(1, 2), ev_added(3, 4)};
    const char *p1 = "p1.example:1", *p2 = "p2.example:1", *p3 = "p3.example:1";
    CHECK_OK(pb_store_outbox_append(s, p1, e, 1, now - 300 * min, NULL));     /* 160+ */
    CHECK_OK(pb_store_outbox_append(s, p1, e, 2, now - 7 * min, NULL));       /* 5-10 */
    CHECK_OK(pb_store_outbox_append(s, p1, e, 3, now - 1 * min, NULL));       /* 0-5 */
    CHECK_OK(pb_store_outbox_append(s, p2, e, 1, now - 5 * min, NULL));       /* edge: 5-10 */
    CHECK_OK(pb_store_outbox_append(s, p2, e, 1, now - 5 * min + 1, NULL));   /* 0-5 */
    CHECK_OK(pb_store_outbox_append(s, p2, e, 1, now + 1000, NULL));          /* future: 0-5 */
    CHECK_OK(pb_store_outbox_append(s, p2, e, 1, now - 160 * min, NULL));     /* edge: 160+ */
    CHECK_OK(pb_store_outbox_append(s, p2, e, 1, now - 160 * min + 1, NULL)); /* 80-160 */
    CHECK_OK(pb_store_outbox_append(s, p2, e, 1, now - 20 * min, NULL));      /* 20-40 */
    CHECK_OK(pb_store_outbox_append(s, p3, e, 2, now - 45 * min, NULL));
    CHECK_OK(pb_store_outbox_ack(s, p3, 2)); /* delivered: gone from the shape */
    CHECK_OK(pb_store_qshape(s, now, &rows, &n));
    CHECK_INT(n, 2);
    if (n == 2) {
        /* p1 has 6, p2 has 6: equal totals in peer order */
        CHECK_STR(rows[0].peer, p1);
        CHECK_INT(rows[0].total, 6);
        CHECK_INT(rows[0].oldest_at, now - 300 * min);
        const uint64_t w1[PB_QSHAPE_BUCKETS] = {3, 2, 0, 0, 0, 0, 1};
        const uint64_t w2[PB_QSHAPE_BUCKETS] = {2, 1, 0, 1, 0, 1, 1};
        for (int i = 0; i < PB_QSHAPE_BUCKETS; i++) {
            CHECKF(rows[0].counts[i] == w1[i], "p1 bucket %d: %llu", i,
                   (unsigned long long)rows[0].counts[i]);
            CHECKF(rows[1].counts[i] == w2[i], "p2 bucket %d: %llu", i,
                   (unsigned long long)rows[1].counts[i]);
        }
        CHECK_STR(rows[1].peer, p2);
        CHECK_INT(rows[1].total, 6);
        CHECK_INT(rows[1].oldest_at, now - 160 * min);
    }
    /* the summary monitoring reads: the same totals, no buckets, and the time of each
     * queue's head (p2's events above were appended with times out of order) */
    pb_qshape_row *sum = NULL;
    size_t ns = 9;
    CHECK_OK(pb_store_queue_summary(s, &sum, &ns));
    CHECK_INT(ns, n);
    const int64_t head_at[2] = {now - 300 * min, now - 5 * min};
    for (size_t i = 0; i < ns && i < n && i < 2; i++) {
        CHECK_STR(sum[i].peer, rows[i].peer);
        CHECK_INT(sum[i].total, rows[i].total);
        CHECK_INT(sum[i].oldest_at, head_at[i]);
        for (int k = 0; k < PB_QSHAPE_BUCKETS; k++)
            CHECK_INT(sum[i].counts[k], 0);
    }
    pb_qshape_rows_free(sum, ns);
    pb_qshape_rows_free(rows, n);
    CHECK_OK(pb_store_outbox_ack(s, p1, 1));
    CHECK_OK(pb_store_qshape(s, now, &rows, &n));
    CHECK(n == 2 && !strcmp(rows[0].peer, p2) && rows[1].total == 5 &&
          rows[1].oldest_at == now - 7 * min);
    pb_qshape_rows_free(rows, n);
    CHECK_OK(pb_store_queue_summary(s, &rows, &n));
    CHECK(n == 2 && !strcmp(rows[0].peer, p2) && rows[0].total == 6 && rows[1].total == 5 &&
          rows[1].oldest_at == now - 7 * min);
    pb_qshape_rows_free(rows, n);
    CHECK_ERR(pb_store_queue_summary(s, NULL, &n), PB_ERR_INVAL);
    CHECK_ERR(pb_store_qshape(s, now, NULL, &n), PB_ERR_INVAL);

    CHECK_OK(pb_store_peer_state_set(s, p1, PB_MODE_QUEUED, 1, now, "down", 0));
    CHECK_OK(pb_store_peer_state_set(s, p2, PB_MODE_PARKED, 0, 0, "refused", 3));
    CHECK_OK(pb_store_peer_touch(s, "p4.example:1", 5));
    CHECK_OK(pb_store_peer_mode_counts(s, modes));
    CHECK_INT(modes[PB_MODE_PUSH], 2); /* p3, p4 */
    CHECK_INT(modes[PB_MODE_QUEUED], 1);
    CHECK_INT(modes[PB_MODE_PARKED], 1);
    CHECK_ERR(pb_store_peer_mode_counts(s, NULL), PB_ERR_INVAL);

    const uint64_t seqs[3] = {1, 2, 3};
    CHECK_OK(pb_store_receive(s, "s.example:1", 0, e, seqs, 2, now - 10 * min, NULL));
    CHECK_OK(pb_store_receive(s, "s.example:1", 0, e + 2, seqs + 2, 1, now - 2 * min, NULL));
    CHECK_OK(pb_store_inbox_unread(s, 0, &unread, &oldest));
    CHECK_INT(unread, 3);
    CHECK_INT(oldest, now - 10 * min);
    CHECK_OK(pb_store_inbox_unread(s, 2, &unread, &oldest));
    CHECK_INT(unread, 1);
    CHECK_INT(oldest, now - 2 * min);
    CHECK_OK(pb_store_inbox_unread(s, 3, &unread, &oldest));
    CHECK(unread == 0 && oldest == 0);
    CHECK_OK(pb_store_inbox_unread(s, UINT64_MAX, &unread, &oldest));
    CHECK(unread == 0 && oldest == 0);
    CHECK_ERR(pb_store_inbox_unread(s, 0, NULL, &oldest), PB_ERR_INVAL);
    pb_store_close(s);
}

/* Two nodes: senders' batches each delivered to both nodes at the same moment (a
 * retried Push reaching another node), while a reader follows the inbox cursor. */
#define TN_SENDERS 4
#define TN_ROUNDS 25
#define TN_BATCH 4
#define TN_TOTAL (TN_SENDERS * TN_ROUNDS * TN_BATCH)

struct tn_recv {
    pb_store *s;
    int sender;
    pthread_barrier_t *pair; /* the two threads delivering this sender's batches */
    int failures;
    pb_recv_result sum;
};

static void tn_sender_name(int i, char *out, size_t size)
{
    snprintf(out, size, "s%d.example:443", i);
}

static void *tn_receiver(void *p)
{
    struct tn_recv *a = p;
    char from[64];
    tn_sender_name(a->sender, from, sizeof from);
    for (int r = 0; r < TN_ROUNDS; r++) {
        pb_event evs[TN_BATCH];
        uint64_t seqs[TN_BATCH];
        for (int k = 0; k < TN_BATCH; k++) {
            seqs[k] = (uint64_t)(r * TN_BATCH + k + 1);
            evs[k] = ev_added((uint64_t)a->sender, seqs[k]); /* guild_id = seq */
        }
        pthread_barrier_wait(a->pair);
        pb_recv_result res = {0, 0, 0, 0};
        if (pb_store_receive(a->s, from, EP, evs, seqs, TN_BATCH, 1000, &res) != PB_OK) {
            a->failures++;
            continue;
        }
        a->sum.applied += res.applied;
        a->sum.duplicates += res.duplicates;
    }
    return NULL;
}

struct tn_follow {
    pb_store *s;
    atomic_bool *done;
    uint64_t cursor;
    size_t seen, gaps, disorder, errors;
};

/* Reads the inbox from its cursor until every row was seen: each row read must be the
 * cursor's next (a row committed later with a smaller seq would show as a gap). */
static void *tn_follower(void *p)
{
    struct tn_follow *f = p;
    uint64_t last_guild[TN_SENDERS] = {0};
    int64_t deadline = pbt_now_ms() + 120000;
    while (f->cursor < TN_TOTAL && pbt_now_ms() < deadline) {
        bool finished = atomic_load(f->done);
        pb_inbox_item *it = NULL;
        size_t n = 0;
        if (pb_store_inbox_read(f->s, f->cursor, 7, &it, &n) != PB_OK) {
            f->errors++;
            break;
        }
        for (size_t i = 0; i < n; i++) {
            if (it[i].seq != f->cursor + 1) f->gaps++;
            f->cursor = it[i].seq;
            f->seen++;
            uint64_t snd = it[i].ev.user_id;
            if (snd >= TN_SENDERS || it[i].ev.guild_id <= last_guild[snd]) {
                f->disorder++;
            } else {
                last_guild[snd] = it[i].ev.guild_id;
            }
        }
        pb_inbox_items_free(it, n);
        if (n == 0 && finished) break; /* everything committed and read */
        if (n == 0) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

static void test_two_nodes_receive(void)
{
    char *spec = NULL;
    pb_store *s = open_fresh("two", &spec), *s2 = NULL;
    if (s) CHECK_OK(pb_store_open(spec, NULL, &s2));
    free(spec);
    if (!s || !s2) {
        pb_store_close(s);
        pb_store_close(s2);
        return;
    }
    pthread_barrier_t pairs[TN_SENDERS];
    pthread_t th[2 * TN_SENDERS], ft;
    struct tn_recv args[2 * TN_SENDERS];
    atomic_bool done = false;
    struct tn_follow f = {.s = s2, .done = &done};
    CHECK(pthread_create(&ft, NULL, tn_follower, &f) == 0);
    for (int i = 0; i < TN_SENDERS; i++)
        pthread_barrier_init(&pairs[i], NULL, 2);
    for (int i = 0; i < 2 * TN_SENDERS; i++) {
        args[i] = (struct tn_recv){
            .s = i < TN_SENDERS ? s : s2, .sender = i % TN_SENDERS, .pair = &pairs[i % TN_SENDERS]};
        CHECK(pthread_create(&th[i], NULL, tn_receiver, &args[i]) == 0);
    }
    for (int i = 0; i < 2 * TN_SENDERS; i++)
        pthread_join(th[i], NULL);
    atomic_store(&done, true);
    pthread_join(ft, NULL);
    for (int i = 0; i < TN_SENDERS; i++) {
        pthread_barrier_destroy(&pairs[i]);
        CHECK_INT(args[i].failures + args[i + TN_SENDERS].failures, 0);
        /* each batch was applied by exactly one node and skipped by the other */
        CHECK_INT(args[i].sum.applied + args[i + TN_SENDERS].sum.applied, TN_ROUNDS * TN_BATCH);
        CHECK_INT(args[i].sum.duplicates + args[i + TN_SENDERS].sum.duplicates,
                  TN_ROUNDS * TN_BATCH);
        char from[64];
        tn_sender_name(i, from, sizeof from);
        pb_peer_state st;
        CHECK_OK(pb_store_peer_state_get(s, from, &st));
        CHECK_INT(st.recv_seq, TN_ROUNDS * TN_BATCH);
        pb_peer_state_clear(&st);
        pb_guild_entry *g = NULL;
        size_t n = 0;
        CHECK_OK(pb_store_guilds(s2, (uint64_t)i, &g, &n));
        CHECK_INT(n, TN_ROUNDS * TN_BATCH);
        pb_guild_entries_free(g, n);
    }
    CHECK_INT(f.errors, 0);
    CHECK_INT(f.gaps, 0);
    CHECK_INT(f.disorder, 0);
    CHECK_INT(f.seen, TN_TOTAL);
    CHECK_INT(inbox_last(s), TN_TOTAL);
    CHECK_OK(pb_store_integrity_check(s));
    pb_store_close(s);
    pb_store_close(s2);
}

/* Nodes racing for one free (then expired) lease: exactly one wins each time. */
#define LR_THREADS 8

struct lr_arg {
    pb_store *s;
    char node[16];
    pthread_barrier_t *start;
    int64_t now;
    pb_err err;
    bool held;
};

static void *lr_thread(void *p)
{
    struct lr_arg *a = p;
    pthread_barrier_wait(a->start);
    a->err = pb_store_lease_acquire(a->s, "race.example:443", a->node, a->now, 1000, &a->held);
    return NULL;
}

static void test_lease_race(void)
{
    char *spec = NULL;
    pb_store *s = open_fresh("lrace", &spec), *s2 = NULL;
    if (s) CHECK_OK(pb_store_open(spec, NULL, &s2));
    free(spec);
    if (!s || !s2) {
        pb_store_close(s);
        pb_store_close(s2);
        return;
    }
    for (int round = 0; round < 2; round++) {
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, LR_THREADS);
        pthread_t th[LR_THREADS];
        struct lr_arg args[LR_THREADS];
        for (int i = 0; i < LR_THREADS; i++) {
            args[i] =
                (struct lr_arg){.s = i % 2 ? s2 : s, .start = &start, .now = 5000 + round * 1000};
            snprintf(args[i].node, sizeof args[i].node, "node%d.%d", round, i);
            CHECK(pthread_create(&th[i], NULL, lr_thread, &args[i]) == 0);
        }
        int winners = 0;
        for (int i = 0; i < LR_THREADS; i++) {
            pthread_join(th[i], NULL);
            CHECK_OK(args[i].err);
            winners += args[i].err == PB_OK && args[i].held;
        }
        CHECKF(winners == 1, "round %d: %d nodes hold the lease", round, winners);
        pthread_barrier_destroy(&start);
    }
    pb_store_close(s);
    pb_store_close(s2);
}

/* PostgreSQL: the server drops every connection of the pool (a restart, an
 * administrator): the next calls reconnect and succeed. */
static void test_reconnect(void)
{
    char *spec = NULL;
    pb_store *s = open_fresh("reconnect", &spec);
    if (!s) {
        free(spec);
        return;
    }
    CHECK_OK(pb_store_meta_set(s, "before", "1"));
    CHECK(meta_is(s, "before", "1"));
    long long killed = 0;
    CHECK(raw_int(spec,
                  "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                  " WHERE datname = current_database() AND pid <> pg_backend_pid()",
                  &killed));
    CHECKF(killed >= 1, "terminated %lld sessions", killed);
    CHECK(meta_is(s, "before", "1"));
    CHECK_OK(pb_store_meta_set(s, "after", "2"));
    CHECK(meta_is(s, "after", "2"));
    CHECK_OK(pb_store_ping(s));
    pb_store_close(s);
    free(spec);
}

/* PostgreSQL: the integrity check finds what the schema cannot express (the inbox
 * counter behind the inbox, an outbox event without its peer or past next_seq). */
static void test_pg_integrity(void)
{
    char *spec = NULL;
    pb_store *s = open_fresh("integrity", &spec);
    if (!s) {
        free(spec);
        return;
    }
    pb_event e[2] = {ev_added(1, 1), ev_added(1, 2)};
    CHECK_OK(pb_store_receive(s, "f.example:443", EP, e, NULL, 2, 1000, NULL));
    CHECK_OK(pb_store_outbox_append(s, "t.example:443", e, 2, 1000, NULL));
    CHECK_OK(pb_store_integrity_check(s));
    CHECK(raw_exec(spec, "UPDATE inbox_seq SET last = 1"));
    CHECK_ERR(pb_store_integrity_check(s), PB_ERR_CORRUPT);
    CHECK(raw_exec(spec, "UPDATE inbox_seq SET last = 2"));
    CHECK_OK(pb_store_integrity_check(s));
    CHECK(raw_exec(spec, "UPDATE peers SET next_seq = 2 WHERE server_id = 't.example:443'"));
    CHECK_ERR(pb_store_integrity_check(s), PB_ERR_CORRUPT);
    CHECK(raw_exec(spec, "UPDATE peers SET next_seq = 3 WHERE server_id = 't.example:443'"));
    CHECK_OK(pb_store_integrity_check(s));
    CHECK(raw_exec(spec, "INSERT INTO outbox VALUES ('ghost.example:443', 1, '\\x08'::bytea, 1)"));
    CHECK_ERR(pb_store_integrity_check(s), PB_ERR_CORRUPT);
    pb_store_close(s);
    free(spec);
}

/* ---- crash safety ----------------------------------------------------------------------- */

#define CRASH_THREADS 4
#define CRASH_MIN 200
#define CRASH_MAX_PER_THREAD 50000

struct crash_arg {
    pb_store *s;
    int id;
    int fd;
};

static void *crash_writer(void *p)
{
    struct crash_arg *a = p;
    char key[64];
    for (uint32_t i = 0; i < CRASH_MAX_PER_THREAD; i++) {
        snprintf(key, sizeof key, "crash.%d.%u", a->id, (unsigned)i);
        if (pb_store_meta_set(a->s, key, "committed") != PB_OK) break;
        uint32_t rec = (uint32_t)a->id << 24 | i;
        if (write(a->fd, &rec, sizeof rec) != (ssize_t)sizeof rec) break;
    }
    return NULL;
}

/* The child: opens the store and commits writes from several threads, reporting each
 * committed write over the pipe, until it is killed (or a bound is hit). */
static void crash_child(const char *path, int fd)
{
    pb_store *s = NULL;
    if (pb_store_open(path, NULL, &s) != PB_OK) _exit(2);
    pthread_t th[CRASH_THREADS];
    struct crash_arg args[CRASH_THREADS];
    for (int i = 0; i < CRASH_THREADS; i++) {
        args[i] = (struct crash_arg){s, i, fd};
        if (pthread_create(&th[i], NULL, crash_writer, &args[i]) != 0) _exit(3);
    }
    for (int i = 0; i < CRASH_THREADS; i++)
        pthread_join(th[i], NULL);
    _exit(4); /* the parent should have killed us long before */
}

static void test_sigkill(void)
{
    char *p = spec_for("crash");
    if (!p) return;
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        crash_child(p, fds[1]);
    }
    close(fds[1]);
    CHECK(pid > 0);

    /* reported[t][i]: thread t reported write i committed */
    uint8_t *reported = calloc((size_t)CRASH_THREADS * CRASH_MAX_PER_THREAD, 1);
    if (!reported) abort();
    size_t count = 0, bad_records = 0;
    bool killed = false, eof = false;
    int64_t deadline = pbt_now_ms() + 120000;
    uint8_t partial[4];
    size_t plen = 0;
    while (!eof && pbt_now_ms() < deadline) {
        if (!killed && count >= CRASH_MIN) {
            kill(pid, SIGKILL);
            killed = true;
        }
        struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
        int r = poll(&pfd, 1, 1000);
        if (r <= 0) continue;
        uint8_t buf[4096];
        ssize_t n = read(fds[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            eof = true;
            break;
        }
        for (ssize_t i = 0; i < n; i++) {
            partial[plen++] = buf[i];
            if (plen < 4) continue;
            plen = 0;
            uint32_t rec;
            memcpy(&rec, partial, 4);
            uint32_t t = rec >> 24, w = rec & 0xffffff;
            if (t >= CRASH_THREADS || w >= CRASH_MAX_PER_THREAD) {
                bad_records++;
                continue;
            }
            reported[t * CRASH_MAX_PER_THREAD + w] = 1;
            count++;
        }
    }
    if (!killed) kill(pid, SIGKILL); /* timed out or the child died early: stop it anyway */
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECKF(killed && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
           "killed=%d status=%#x count=%zu", killed, status, count);
    CHECK(eof);
    CHECK_INT(bad_records, 0);
    CHECK(count >= CRASH_MIN);
    close(fds[0]);
    printf("sigkill: child reported %zu committed writes before SIGKILL\n", count);

    pb_store *s = NULL;
    CHECK_OK(pb_store_open(p, NULL, &s));
    if (s) {
        CHECK_OK(pb_store_integrity_check(s));
        size_t lost = 0;
        char key[64];
        for (int t = 0; t < CRASH_THREADS; t++) {
            for (int w = 0; w < CRASH_MAX_PER_THREAD; w++) {
                if (!reported[t * CRASH_MAX_PER_THREAD + w]) continue;
                snprintf(key, sizeof key, "crash.%d.%d", t, w);
                if (!meta_is(s, key, "committed")) lost++;
            }
        }
        CHECK_INT(lost, 0);
        CHECK_OK(pb_store_meta_set(s, "after.crash", "ok")); /* still writable */
        pb_store_close(s);
    }
    free(reported);
    free(p);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    const char *which = argc == 2 ? argv[1] : "";
    if (strcmp(which, "postgres") == 0) {
        g_pg = true;
    } else if (strcmp(which, "sqlite") != 0) {
        fprintf(stderr, "usage: %s sqlite|postgres\n", argv[0]);
        return 2;
    }
    if (g_pg && !pbt_pg_url()) {
        CHECKF(false, "store_test postgres needs PB_TEST_PG_URL (see above)");
        return pbt_finish();
    }
    printf("store_test: backend %s\n", which);
    tmp = pbt_tmpdir("store");
    test_options();
    test_open_migrate_reopen();
    test_concurrent_open();
    if (!g_pg) test_wal_prewrite();
    if (!g_pg) test_checkpoints();
#ifdef PB_FAULTS
    if (!g_pg) test_checkpoint_faults();
#endif

    char *p = spec_for("ops");
    pb_store *s = NULL;
    if (p) CHECK_OK(pb_store_open(p, NULL, &s));
    if (s) {
        test_meta(s);
        test_peers(s);
        test_concurrent(s);
#ifdef PB_FAULTS
        test_failing_job_in_batch(s);
        test_fault(s);
#endif
        CHECK_OK(pb_store_integrity_check(s));
        pb_store_close(s);
    }
    free(p);
#ifdef PB_FAULTS
    test_close_drains();
#endif
    test_outbox();
    test_outbox_ack_many();
    test_outbox_quiet();
    test_peer_state();
    test_receive();
    test_receive_failure();
    test_model_log();
    test_receive_rows();
    test_send_epochs();
    test_recv_epochs();
    test_recv_epochs_bounded();
    test_renames_in();
    test_peer_rename();
    test_self_rename();
    test_migrate_from_v1();
    test_migrate_queue_counters();
    test_queue_control();
    test_migrate_from_v4();
    test_migrate_fixtures();
    test_outbox_concurrent();
    test_submission_ids();
#ifdef PB_FAULTS
    test_outbox_async();
    test_receive_async();
    test_receive_after();
    test_submission_race();
#endif
    test_leases();
    test_outbox_peers();
    test_monitoring();
    test_two_nodes_receive();
    test_lease_race();
    if (g_pg) {
        test_reconnect();
        test_pg_integrity();
    }
    test_sigkill();

    if (!getenv("PBT_KEEP")) {
        pbt_rmrf(tmp);
        for (int i = 0; i < g_ndbs; i++)
            pbt_pg_drop_db(g_dbs[i]);
    }
    for (int i = 0; i < g_ndbs; i++)
        free(g_dbs[i]);
    free(tmp);
    return pbt_finish();
}
