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
 * one name share one query; at most max_pending names are looked up at once (more:
 * refused at once with PB_ERR_BUSY, the caller retries later). Of several addresses the
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

#include "net/ioloop.h"
#include "postbox.h"

typedef struct pb_resolver pb_resolver;

typedef struct pb_resolver_opts {
    const char *servers;  /* "IP[:PORT],..." or NULL: the system's (/etc/resolv.conf) */
    int timeout_ms;       /* first try; c-ares doubles it per round; default 2000 */
    int tries;            /* default 2 */
    unsigned max_pending; /* names looked up at once; default 256 */
    unsigned ttl_max_s;   /* longest an answer is kept; default 300 */
    size_t max_entries;   /* names cached; default 16384 */
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
/* A connection to addr for host failed: the next lookup of host returns its next address
 * (loop thread). */
void pb_resolver_failed(pb_resolver *r, const char *host, const char *addr);
/* Names cached, lookups running (tests). */
size_t pb_resolver_cached(const pb_resolver *r);
size_t pb_resolver_running(const pb_resolver *r);

#endif
