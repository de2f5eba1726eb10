/*
 * budget - how much each sender may make us store (PROTOCOL.md 7.4): a token bucket per
 * sender for events and one for bytes, refilled continuously so that a sender gets at most
 * `events` events and `bytes` bytes per `interval_s` seconds on average, with bursts up to
 * one interval's worth. A Push that does not fit is answered 429 with RetryInfo and stores
 * nothing; a Pull answer already received is charged whole (the bucket may go below zero:
 * the debt delays that sender's next Pull and Push), and no Pull round starts while the
 * bucket is empty. So what one sender can make us store is bounded by its budget plus one
 * Pull answer, whatever it sends.
 *
 * The table of senders is bounded (max_senders, least recently used forgotten first;
 * only authenticated senders reach it). Thread-safe.
 *
 * Untrusted input: none (counts and sizes measured by the caller).
 */
#ifndef PB_BUDGET_H
#define PB_BUDGET_H

#include <stdbool.h>
#include <stdint.h>

typedef struct pb_budget pb_budget;

typedef struct pb_budget_opts {
    uint64_t events;      /* per interval; default 100000 */
    uint64_t bytes;       /* per interval; default 32 MiB */
    unsigned interval_s;  /* default 60 */
    unsigned max_senders; /* default 65536 */
} pb_budget_opts;

/* opts may be NULL (defaults). Caller frees with pb_budget_free. */
pb_budget *pb_budget_new(const pb_budget_opts *opts);
void pb_budget_free(pb_budget *b); /* NULL is a no-op */

/* Takes events and bytes from sender's budget (now: monotonic ms): true when they fit;
 * false, with nothing taken and *retry_after_s the seconds until they would, when not. */
bool pb_budget_take(pb_budget *b, const char *sender, uint64_t events, uint64_t bytes, int64_t now,
                    uint32_t *retry_after_s);
/* Charges what was stored anyway (a Pull answer); the budget may go below zero. */
void pb_budget_charge(pb_budget *b, const char *sender, uint64_t events, uint64_t bytes,
                      int64_t now);
/* Whole events sender may still send now (0 when its budget is used or in debt). */
uint64_t pb_budget_events_left(pb_budget *b, const char *sender, int64_t now);
/* True when sender has budget left; else *retry_after_s says when it will. */
bool pb_budget_available(pb_budget *b, const char *sender, int64_t now, uint32_t *retry_after_s);

#endif
