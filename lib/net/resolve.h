/*
 * resolve - host names to addresses on the I/O loop, without threads (c-ares).
 *
 * libcurl as Debian builds it resolves a name on a thread of its own per new connection;
 * with thousands of peers, some of whose names a hostile DNS answers slowly, that would be
 * a thread per peer. Instead the client (hrpc_client.c) asks this module, which runs
 * c-ares on the loop's epoll set and timers, and hands libcurl the address with
 * CURLOPT_CONNECT_TO: libcurl then never resolves. The connected address is still checked
 * against the address classes by the client (allow_private_peers).
 *
 * Cache: a name's addresses are kept for their DNS TTL (between 5 s and ttl_max_s), a
 * failure for 10 s; at most max_entries names (the oldest entry goes first). Lookups of
 * one name share one query (the share of one name, or server ID, is one query); at most
 * max_pending names are looked up at once (more: refused at once with PB_ERR_BUSY, the
 * caller retries later).
 *
 * Shares of the pending queries (each refused at once with PB_ERR_BUSY, counted in
 * postbox_dns_lookups_refused_total{reason}):
 *   - lookups for clients (pb_resolver_lookup_for: a key fetch a client's token asked
 *     for) take at most for_clients of them, so the rest stays for our own deliveries
 *     (pushes, pulls, notices) whatever clients make us look up;
 *   - one client address (an IPv4 address or IPv6 /64) at most per_client;
 *   - names under one domain at most per_domain, for every lookup, ours included: a
 *     wildcard domain gives an attacker any number of names (and so of verified server
 *     IDs), whose DNS it can then stall. The domain is the name's last two labels, or
 *     three when they look like a country's second level (a two-letter last label and a
 *     second-to-last of at most three letters: co.uk, com.au); there is no public suffix
 *     list, so this is an approximation that errs on the side of wider domains.
 * Of several addresses the
 * first is used (c-ares sorts them by RFC 6724); pb_resolver_failed moves a name on to its
 * next address after a failed connection.
 *
 * Threads: the loop thread only (lookups, callbacks), except pb_resolver_new and
 * pb_resolver_free (before the loop runs, or after it stopped; free also works while it
 * runs, through pb_ioloop_call). When the loop stops, every lookup still waiting ends with
 * PB_ERR_SHUTDOWN before the loop finishes its transfers.
 *
 * Untrusted input: the DNS answers, parsed by c-ares; a name is whatever a server ID held
 * (validated by serverid.c before it gets here).
 */
#ifndef PB_RESOLVE_H
#define PB_RESOLVE_H

#include <stddef.h>

#include <stdbool.h>
#include <stdint.h>

#include "net/ioloop.h"
#include "postbox.h"
#include "util/metrics_std.h"

typedef struct pb_resolver pb_resolver;

typedef struct pb_resolver_opts {
    const char *servers;           /* "IP[:PORT],..." or NULL: the system's (/etc/resolv.conf) */
    int timeout_ms;                /* first try; c-ares doubles it per round; default 2000 */
    int tries;                     /* default 2 */
    unsigned max_pending;          /* names looked up at once; default 256 */
    unsigned ttl_max_s;            /* longest an answer is kept; default 300 */
    size_t max_entries;            /* names cached; default 16384 */
    unsigned for_clients;          /* queries for clients; default max_pending / 2 */
    unsigned per_client;           /* queries for one client address; 0: no share */
    unsigned per_domain;           /* queries of names under one domain; 0: no share */
    const pb_metrics_std *metrics; /* refusals; may be NULL */
} pb_resolver_opts;

/* opts may be NULL. PB_ERR_CONFIG for servers c-ares refuses, PB_ERR_INTERNAL when c-ares
 * cannot start. Caller frees with pb_resolver_free (NULL is a no-op). */
pb_err pb_resolver_new(pb_ioloop *loop, const pb_resolver_opts *opts, pb_resolver **out);
void pb_resolver_free(pb_resolver *r);

/* cb(ctx, err, addr, why): PB_OK with addr (numeric IPv4 or IPv6 text, borrowed for the
 * call); PB_ERR_NET with why (borrowed) when the name does not resolve; PB_ERR_BUSY when too
 * many names are being looked up; PB_ERR_SHUTDOWN when the loop stops. */
typedef void (*pb_resolve_fn)(void *ctx, pb_err err, const char *addr, const char *why);
/* Looks host up (loop thread). cb runs exactly once, always later (a posted task for a
 * cached answer), never inside this call. */
void pb_resolver_lookup(pb_resolver *r, const char *host, pb_resolve_fn cb, void *ctx);
/* The same on a client's behalf (a key fetch its token asked for): the lookup counts in
 * the clients' share and, when client_addr is not NULL (16 bytes, pb_addr_client_key), in
 * that address's. */
void pb_resolver_lookup_for(pb_resolver *r, const char *host, const uint8_t *client_addr,
                            pb_resolve_fn cb, void *ctx);
/* New shares (a configuration reload; any thread): 0 leaves for_clients unchanged and
 * turns per_client or per_domain off. */
void pb_resolver_set_shares(pb_resolver *r, unsigned for_clients, unsigned per_client,
                            unsigned per_domain);
/* The domain a name's lookups are counted under (see above), into out. */
void pb_resolver_domain(const char *host, char *out, size_t cap);
/* A connection to addr for host failed: the next lookup of host returns its next address
 * (loop thread). */
void pb_resolver_failed(pb_resolver *r, const char *host, const char *addr);
/* Names cached, lookups running (tests). */
size_t pb_resolver_cached(const pb_resolver *r);
size_t pb_resolver_running(const pb_resolver *r);

#endif
