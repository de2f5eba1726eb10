/*
 * micro - the disk ceilings of the benchmark: how often this machine can make 100 bytes
 * durable with write+fdatasync, and how fast SQLite inserts 100-byte rows in batched
 * transactions with the store's settings. Both work in a directory the caller gives (the
 * same file system as the daemons' data) and are bounded in time and count.
 */
#ifndef PB_BENCH_MICRO_H
#define PB_BENCH_MICRO_H

#include <stddef.h>

/* How long one write+fdatasync took (microseconds): the median, the 99th percentile, and
 * the 99th percentile of two in a row (the sum of consecutive pairs: what a path that
 * waits for two commits one after the other sees at its p99). */
typedef struct pbb_fsync_lat {
    double p50_us, p99_us, two_p99_us;
} pbb_fsync_lat;

/* Appends `bytes` bytes and fdatasync()s, repeatedly for about `seconds` (at most
 * 1,000,000 times), in a new file under dir (removed afterwards). Returns operations per
 * second, or -1 on an I/O error (printed); fills *lat when not NULL (zeros on an error). */
double pbb_fdatasync_rate(const char *dir, double seconds, size_t bytes, pbb_fsync_lat *lat);

/* Inserts rows (INTEGER PRIMARY KEY, `bytes`-byte BLOB) in transactions of `batch` rows
 * into a new database under dir (WAL, synchronous=`sync`: "FULL" or "NORMAL"), for about
 * `seconds` (at most 5,000,000 rows). Returns rows per second, or -1 on an error
 * (printed). */
double pbb_sqlite_insert_rate(const char *dir, double seconds, size_t bytes, int batch,
                              const char *sync);

#endif
