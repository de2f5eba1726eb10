/*
 * store_test - the durable store (store.h) on its SQLite backend: open/migrate/reopen,
 * option and spec errors, meta and peers, group commit under concurrent writers, one
 * failing write in a batch, fault injection, close draining queued writes, and crash
 * safety (a writer process SIGKILLed mid-stream loses no write it reported committed).
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "store.h"

static char *tmp;

static char *db_path(const char *name)
{
    size_t n = strlen(tmp) + strlen(name) + 2;
    char *p = malloc(n);
    if (!p) abort();
    snprintf(p, n, "%s/%s", tmp, name);
    return p;
}

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

static void test_options(void)
{
    pb_store_opts o;
    pb_store_opts_default(&o);
    CHECK_INT(o.sync, PB_SYNC_FULL);
    CHECK_INT(o.busy_timeout_ms, 5000);
    CHECK_INT(o.max_batch, 256);
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

    char *p = db_path("opts.db");
    pb_store *s = NULL;
    pb_store_opts bad = {.max_batch = -1};
    CHECK_ERR(pb_store_open(p, &bad, &s), PB_ERR_CONFIG);
    bad = (pb_store_opts){.busy_timeout_ms = -5};
    CHECK_ERR(pb_store_open(p, &bad, &s), PB_ERR_CONFIG);
    bad = (pb_store_opts){.sync = (pb_store_sync)42};
    CHECK_ERR(pb_store_open(p, &bad, &s), PB_ERR_CONFIG);
    CHECK(s == NULL);
    CHECK_ERR(pb_store_open("sqlite:", NULL, &s), PB_ERR_CONFIG);
    CHECK_ERR(pb_store_open("postgres://db/postbox", NULL, &s), PB_ERR_CONFIG);
    CHECK_ERR(pb_store_open(":memory:", NULL, &s), PB_ERR_CONFIG);
    char *missing = db_path("no/such/dir/x.db");
    CHECK_ERR(pb_store_open(missing, NULL, &s), PB_ERR_CONFIG);
    CHECK(s == NULL);
    CHECK(access(p, F_OK) != 0); /* refused options created nothing */

    /* zero-initialised options are the defaults; sync off works */
    pb_store_opts zero = {0};
    CHECK_OK(pb_store_open(p, &zero, &s));
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
    char *p = db_path("main.db");
    char *spec = malloc(strlen(p) + 8);
    if (!spec) abort();
    sprintf(spec, "sqlite:%s", p);

    pb_store *s = NULL;
    CHECK_OK(pb_store_open(spec, NULL, &s));
    if (!s) goto out;
    struct stat st;
    CHECK(stat(p, &st) == 0 && (st.st_mode & 0777) == 0600);
    int v1 = -1, v2 = -2;
    CHECK_OK(pb_store_schema_version(s, &v1));
    CHECK(v1 >= 1);
    CHECK_OK(pb_store_ping(s));
    CHECK_OK(pb_store_integrity_check(s));
    CHECK_OK(pb_store_meta_set(s, "server_id", "alpha.example:443"));
    pb_store_close(s);
    s = NULL;

    /* reopen with a plain path: same version, data survived, no second migration */
    CHECK_OK(pb_store_open(p, NULL, &s));
    if (!s) goto out;
    CHECK_OK(pb_store_schema_version(s, &v2));
    CHECK_INT(v2, v1);
    CHECK(meta_is(s, "server_id", "alpha.example:443"));
    pb_store_close(s);
    s = NULL;

    /* a database from a newer postbox is refused and left alone */
    sqlite3 *db = NULL;
    CHECK(sqlite3_open(p, &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "UPDATE schema_version SET version = 999", NULL, NULL, NULL) ==
          SQLITE_OK);
    sqlite3_close(db);
    CHECK_ERR(pb_store_open(p, NULL, &s), PB_ERR_CONFIG);
    CHECK(s == NULL);
    db = NULL;
    CHECK(sqlite3_open(p, &db) == SQLITE_OK);
    sqlite3_stmt *q = NULL;
    CHECK(sqlite3_prepare_v2(db, "SELECT version FROM schema_version", -1, &q, NULL) == SQLITE_OK);
    CHECK(sqlite3_step(q) == SQLITE_ROW && sqlite3_column_int(q, 0) == 999);
    sqlite3_finalize(q);
    sqlite3_close(db);

    /* a file that is not a database */
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
out:
    free(spec);
    free(p);
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
    CHECKF(commits < writes, "%llu commits, %llu writes", (unsigned long long)commits,
           (unsigned long long)writes);
    CHECK(commits > 0);
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

/* One batch of 8 writes, the 4th of which breaks a constraint after writing: exactly one
 * commit, seven writes present, nothing of the bad one. */
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
    CHECK_INT(st1.commits - st0.commits, 1);
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
    char *p = db_path("drain.db");
    pb_store *s = NULL;
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
    char *p = db_path("crash.db");
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

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    tmp = pbt_tmpdir("store");
    test_options();
    test_open_migrate_reopen();

    char *p = db_path("ops.db");
    pb_store *s = NULL;
    CHECK_OK(pb_store_open(p, NULL, &s));
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
    test_sigkill();

    pbt_rmrf(tmp);
    free(tmp);
    return pbt_finish();
}
