/*
 * health - how the store is doing, as its results show it, and the one place that logs a
 * store outage (util layer: the store backends, the listeners, the delivery engine and the
 * admin API all report here).
 *
 * A tracker is up until a failure that means "the store cannot take this now"
 * (pb_health_unavailable: PB_ERR_STORE, PB_ERR_DISK_FULL) is reported with pb_health_fail;
 * it is then down until pb_health_ok reports a success that proves the store works again
 * (a ping: a real write; a read that succeeds on a full disk proves nothing, so callers
 * report only those). Logging while down is calm whatever the failure rate:
 *
 *   - one warning when the store becomes unavailable (the failure's own message);
 *   - then at most one line per PB_HEALTH_REPORT_MS (30 s) with the number of failures
 *     since the last line and the last failure's message;
 *   - one line when it is back, with how long it was down and how many failures it cost.
 *
 * A store that flaps (down again within 30 s of the last line) is not announced again:
 * its failures go into the next 30 s line. So an outage of any length writes a handful of
 * lines, not one per failed call.
 *
 * Retry pacing: pb_health_backoff_ms is the delay before a path that failed retries store
 * work: 100 ms doubling with each failure reported while down, at most 5 s; 0 while up.
 *
 * One tracker per process for the store (pb_health_store(): the daemon runs one store, as
 * it has one logger); pb_health_new makes others (unit tests, with their own clock).
 * Thread-safe. Untrusted input: none (messages are formatted by the callers).
 */
#ifndef PB_HEALTH_H
#define PB_HEALTH_H

#include <stdbool.h>
#include <stdint.h>

#include "postbox.h"

#define PB_HEALTH_REPORT_MS 30000
#define PB_HEALTH_BACKOFF_MIN_MS 100
#define PB_HEALTH_BACKOFF_MAX_MS 5000

typedef struct pb_health pb_health;

/* The process's store tracker: static, never freed, up at start. */
pb_health *pb_health_store(void);

/* A tracker named `what` (used in its lines: "store unavailable"), reading the time from
 * clock_ms (monotonic milliseconds; NULL: CLOCK_MONOTONIC). The caller frees it with
 * pb_health_free (NULL is a no-op). */
pb_health *pb_health_new(const char *what, int64_t (*clock_ms)(void));
void pb_health_free(pb_health *h);

/* Whether err means the store cannot take the call now (retry later): PB_ERR_STORE and
 * PB_ERR_DISK_FULL. */
bool pb_health_unavailable(pb_err err);

/* Reports a failed store call. Errors other than pb_health_unavailable ones are ignored
 * (the caller logs them as it did). The message (printf format) says what failed; it is
 * logged (with the peer, which may be NULL) only as the rules above allow. */
void pb_health_fail(pb_health *h, pb_err err, const char *peer, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Reports a call that proves the store works (a ping, a write). */
void pb_health_ok(pb_health *h);

/* Whether it is up (true before any report). */
bool pb_health_up(pb_health *h);
/* While down: the error of the last failure (PB_ERR_DISK_FULL names a full disk);
 * PB_OK while up. */
pb_err pb_health_error(pb_health *h);
/* While down: how long since it went down (ms); 0 while up. */
int64_t pb_health_down_ms(pb_health *h);
/* The delay before retrying failed store work (see above); 0 while up. */
int64_t pb_health_backoff_ms(pb_health *h);
/* Failures reported since the tracker was made (tests). */
uint64_t pb_health_failures(pb_health *h);

#endif
