/*
 * keyfetch - peers' public keys for the token check, fetched off the request path and
 * bounded (PROTOCOL.md 3 and 7.3).
 *
 * A key comes from the store (learnt before, verified) or from a fetch of the peer's
 * protocol.auth.v1.AuthService/Key. Fetches are what an attacker can make us do by naming
 * any server ID in a token, so they are bounded every way:
 *   - they run as transfers on the I/O loop, never on a listener thread: a caller that has
 *     no key gets PB_ERR_BUSY and a callback when the fetch ends (the listener suspends its
 *     request meanwhile, for at most about a second);
 *   - at most max_concurrent fetches run at once, at most max_queued wait for a slot, and
 *     at most PB_KEYFETCH_MAX_WAITERS requests wait on one fetch; past that, PB_ERR_NOT_FOUND
 *     at once (the caller answers 503 with RetryInfo);
 *   - the share of one client address (the caller passes the address of the connection
 *     whose token named the server ID: an IPv4 address, or an IPv6 /64): at most
 *     per_client fetches queued or running on its behalf; past that, PB_ERR_NOT_FOUND at
 *     once. So a few addresses naming hung key servers cannot take every slot from a
 *     genuine new peer. The share of one server ID is one fetch (a request naming an ID
 *     being fetched waits on that fetch, within PB_KEYFETCH_MAX_WAITERS);
 *   - a failed fetch is remembered per server ID for `negative_s` (same answer, no fetch;
 *     a re-fetch is bounded by its own allowance alone);
 *   - one server ID is fetched at most once per `refetch_s`; a re-fetch (the held key
 *     failed to verify: the peer may have rotated it) at most once per `refetch_s` per
 *     server ID and client address, so that forged tokens sent from other addresses do not
 *     use up the genuine peer's re-fetch;
 *   - a fetched key is only a candidate, kept in memory (bounded), until it verified a
 *     request's signature: only then pb_keyfetch_verified stores it (and the peer record)
 *     durably. A token that fails verification leaves nothing behind.
 * The connections themselves go through the client, which refuses private addresses
 * unless allowed.
 *
 * Threads: every function may be called from any thread; callbacks run on the I/O loop.
 *
 * Untrusted input: KeyResponse answers (decoded by hrpc_client/wire: exactly 32 bytes).
 */
#ifndef PB_KEYFETCH_H
#define PB_KEYFETCH_H

#include <stdbool.h>
#include <stdint.h>

#include "net/hrpc_client.h"
#include "store/store.h"
#include "util/metrics_std.h"

#define PB_KEYFETCH_MAX_WAITERS 256
/* A client address as pb_addr_client_key makes it (IPv4 mapped, IPv6 cut to its /64). */
#define PB_KEYFETCH_ADDR_LEN 16

typedef struct pb_keyfetch pb_keyfetch;

typedef struct pb_keyfetch_opts {
    pb_store *store;               /* borrowed */
    pb_client *client;             /* borrowed; its loop runs the fetches */
    unsigned max_concurrent;       /* default 8 */
    unsigned max_queued;           /* default 64 */
    unsigned per_client;           /* fetches queued or running per client address; 0: no share */
    int negative_s;                /* a failure is remembered this long; default 30 */
    int refetch_s;                 /* least seconds between two fetches of one ID; default 30 */
    long timeout_ms;               /* one fetch, default 5000 */
    unsigned cache_max;            /* server IDs remembered (candidates, failures); default 4096 */
    const pb_metrics_std *metrics; /* key fetches by result; may be NULL */
} pb_keyfetch_opts;

/* Caller frees with pb_keyfetch_free, after the client's loop has stopped. */
pb_keyfetch *pb_keyfetch_new(const pb_keyfetch_opts *opts);
void pb_keyfetch_free(pb_keyfetch *kf); /* NULL is a no-op */

/* Called on the loop thread when a fetch this caller waits for ends: PB_OK with the key
 * (a candidate, not stored), or the failure. */
typedef void (*pb_keyfetch_cb)(void *ctx, pb_err err, const uint8_t key[32]);

/*
 * The key to check server_id's token with.
 * refresh=false: the stored key (*stored true), else a candidate fetched earlier (*stored
 * false): PB_OK. refresh=true: the stored key failed to verify, so the peer may have
 * rotated it: a new fetch is wanted (allowed once per refetch_s).
 * client: the client address on whose behalf (its token named server_id), charged with the
 * fetch until it ends, and whose re-fetch allowance a refresh uses; NULL when there is no
 * such address (per-address shares off): then one shared allowance, no share.
 * Otherwise:
 *   PB_ERR_BUSY       a fetch is running or queued for it: cb(ctx, ...) will be called
 *                     exactly once, on the loop thread
 *   PB_ERR_NOT_FOUND  no key now and none coming for this caller (a recent failure, the
 *                     rate limit, or every slot taken); *retry_after_s says when to retry
 *   PB_ERR_STORE      the store could not be read
 * cb may be NULL (no waiting: PB_ERR_BUSY then means "being fetched, try again").
 */
pb_err pb_keyfetch_get(pb_keyfetch *kf, const char *server_id, bool refresh,
                       const uint8_t client[PB_KEYFETCH_ADDR_LEN], uint8_t key[32], bool *stored,
                       pb_keyfetch_cb cb, void *ctx, uint32_t *retry_after_s);

/* New limits (a configuration reload; any thread): max_concurrent (0: unchanged), the
 * per-address share (0: none), refetch_s (also negative_s; <= 0: unchanged). */
void pb_keyfetch_set_limits(pb_keyfetch *kf, unsigned max_concurrent, unsigned per_client,
                            int refetch_s);

/* The stored key of server_id only (no fetch): PB_OK, PB_ERR_NOT_FOUND, or a store error. */
pb_err pb_keyfetch_stored(pb_keyfetch *kf, const char *server_id, uint8_t key[32]);

/* key verified a request's signature from server_id: store it (and so the peer record)
 * unless the store holds it already, and forget the candidate. */
pb_err pb_keyfetch_verified(pb_keyfetch *kf, const char *server_id, const uint8_t key[32]);

/* Counters since start, for logs, metrics and tests. */
typedef struct pb_keyfetch_stats {
    uint64_t started; /* fetches started */
    uint64_t ok;      /* ended with a key */
    uint64_t failed;  /* ended without */
    uint64_t refused; /* requests answered NOT_FOUND at once (failure remembered, limits,
                         shares) */
    unsigned running; /* now */
    unsigned queued;  /* now */
} pb_keyfetch_stats;
void pb_keyfetch_stats_get(pb_keyfetch *kf, pb_keyfetch_stats *out);

#endif
