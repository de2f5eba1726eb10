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
 * Identities are free (one key and wildcard DNS give any number of verified server IDs),
 * so the same buckets are also kept per verified public key (every ID signed with one key
 * shares one budget, key_factor times a sender's) and per client address (an IPv4 address
 * or an IPv6 /64: addr_factor times a sender's, a few, so that a hosting address with
 * several servers still works; 0 = off). pb_budget_take_who takes from all three or from
 * none and says which one was used up.

 * The table is bounded (max_senders entries, senders, keys and addresses together, least
 * recently used forgotten first; only authenticated senders reach it). Thread-safe.
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
    unsigned key_factor;  /* a key's budget, in senders' budgets; default 1 */
    unsigned addr_factor; /* a client address's budget, in senders' budgets; 0: off */
} pb_budget_opts;

/* Whose budget: the sender's server ID, and when known the verified public key (32 bytes)
 * and the client address key (16 bytes, pb_addr_client_key); either may be NULL. */
typedef struct pb_budget_who {
    const char *sender;
    const uint8_t *key;
    const uint8_t *addr;
} pb_budget_who;

/* Which budget refused (PB_BUDGET_OK: none). */
typedef enum { PB_BUDGET_OK, PB_BUDGET_SENDER, PB_BUDGET_KEY, PB_BUDGET_ADDRESS } pb_budget_scope;
/* "sender", "key", "address" (metric label values); "" for PB_BUDGET_OK. */
const char *pb_budget_scope_name(pb_budget_scope sc);

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

/* As pb_budget_take for every budget of who (sender, key, address): all take, or none
 * does and the first that cannot is returned with *retry_after_s. */
pb_budget_scope pb_budget_take_who(pb_budget *b, const pb_budget_who *who, uint64_t events,
                                   uint64_t bytes, int64_t now, uint32_t *retry_after_s);
/* As pb_budget_charge for every budget of who. */
void pb_budget_charge_who(pb_budget *b, const pb_budget_who *who, uint64_t events, uint64_t bytes,
                          int64_t now);
/* As pb_budget_available for every budget of who: true when each has budget left; else
 * *retry_after_s says when the first used one will. */
bool pb_budget_available_who(pb_budget *b, const pb_budget_who *who, int64_t now,
                             uint32_t *retry_after_s);
/* As pb_budget_events_left: the least of who's budgets. */
uint64_t pb_budget_events_left_who(pb_budget *b, const pb_budget_who *who, int64_t now);
/* Changes key_factor and addr_factor (live; key_factor 0 means 1): buckets refill up to
 * their new capacity from now on. */
void pb_budget_set_factors(pb_budget *b, unsigned key_factor, unsigned addr_factor);
/* Changes a sender's events and bytes per interval (live; 0 keeps the value). */
void pb_budget_set_rate(pb_budget *b, uint64_t events, uint64_t bytes);

#endif
