/*
 * micro - disk ceilings for the benchmark (see micro.h).
 *
 * fdatasync: one file opened O_APPEND, one write of the payload then fdatasync per
 * operation, so each operation makes new data (and the file size) durable, as a WAL
 * append does. SQLite: the same pragmas as the store (journal_mode=WAL, synchronous as
 * given), one prepared INSERT, BEGIN/COMMIT around every `batch` rows.
 *
 * Untrusted input: none.
 */
#include "micro.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define FSYNC_MAX_OPS 1000000

double pbb_fdatasync_rate(const char *dir, double seconds, size_t bytes, pbb_fsync_lat *lat)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/fdatasync.bin", dir);
    if (lat) *lat = (pbb_fsync_lat){0, 0, 0};
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
    if (fd < 0) {
        perror(path);
        return -1;
    }
    uint8_t buf[4096];
    if (bytes > sizeof buf) bytes = sizeof buf;
    memset(buf, 'd', bytes);
    double *d = malloc(FSYNC_MAX_OPS * sizeof *d), *two = NULL;
    if (!d) abort();
    double rate = -1, t0 = now_s(), t = t0;
    long n = 0;
    while (n < FSYNC_MAX_OPS && (t = now_s()) - t0 < seconds) {
        if (write(fd, buf, bytes) != (ssize_t)bytes || fdatasync(fd) != 0) {
            perror("write+fdatasync");
            goto out;
        }
        d[n++] = (now_s() - t) * 1e6;
    }
    rate = (double)n / (t - t0);
    if (lat && n >= 2) {
        two = malloc((size_t)(n - 1) * sizeof *two);
        if (!two) abort();
        for (long i = 0; i + 1 < n; i++)
            two[i] = d[i] + d[i + 1];
        qsort(two, (size_t)(n - 1), sizeof *two, cmp_double);
        qsort(d, (size_t)n, sizeof *d, cmp_double);
        lat->p50_us = d[(n - 1) / 2];
        lat->p99_us = d[(long)((double)(n - 1) * 0.99)];
        lat->two_p99_us = two[(long)((double)(n - 2) * 0.99)];
    }
out:
    free(two);
    free(d);
    close(fd);
    unlink(path);
    return rate;
}

static int exec_ok(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK) return 1;
    fprintf(stderr, "sqlite: %s: %s\n", sql, msg ? msg : "?");
    sqlite3_free(msg);
    return 0;
}

double pbb_sqlite_insert_rate(const char *dir, double seconds, size_t bytes, int batch,
                              const char *sync)
{
    char path[4096], pragma[64];
    snprintf(path, sizeof path, "%s/insert.db", dir);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    double rate = -1;
    uint8_t blob[4096];
    if (bytes > sizeof blob) bytes = sizeof blob;
    memset(blob, 'r', bytes);
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        fprintf(stderr, "sqlite: cannot open %s\n", path);
        goto out;
    }
    snprintf(pragma, sizeof pragma, "PRAGMA synchronous=%s", sync);
    if (!exec_ok(db, "PRAGMA journal_mode=WAL") || !exec_ok(db, pragma) ||
        !exec_ok(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB NOT NULL)"))
        goto out;
    if (sqlite3_prepare_v2(db, "INSERT INTO t (id, body) VALUES (?, ?)", -1, &st, NULL) !=
        SQLITE_OK) {
        fprintf(stderr, "sqlite: prepare: %s\n", sqlite3_errmsg(db));
        goto out;
    }
    double t0 = now_s(), t = t0;
    long n = 0;
    while (n < 5000000 && (t = now_s()) - t0 < seconds) {
        if (!exec_ok(db, "BEGIN")) goto out;
        for (int i = 0; i < batch; i++) {
            sqlite3_bind_int64(st, 1, ++n);
            sqlite3_bind_blob(st, 2, blob, (int)bytes, SQLITE_STATIC);
            if (sqlite3_step(st) != SQLITE_DONE) {
                fprintf(stderr, "sqlite: insert: %s\n", sqlite3_errmsg(db));
                goto out;
            }
            sqlite3_reset(st);
        }
        if (!exec_ok(db, "COMMIT")) goto out;
    }
    t = now_s();
    rate = (double)n / (t - t0);
out:
    sqlite3_finalize(st);
    sqlite3_close(db);
    unlink(path);
    char side[4200];
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);
    return rate;
}
