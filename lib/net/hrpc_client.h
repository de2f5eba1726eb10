/*
 * hrpc_client - unary hRPC calls to peers over libcurl (PROTOCOL.md section 1), as
 * non-blocking transfers on an I/O loop (ioloop.h).
 *
 * A server ID `domain:port` becomes `<scheme>://domain:port/<package>.<Service>/<Method>`;
 * the scheme is https unless the operator configured http (loopback tests, a TLS
 * proxy). Connections are reused through the loop's libcurl connection cache. TLS peers
 * are verified against the system CAs or the configured CA file. Unless the operator
 * allows private peers, a connection to an address that is not public unicast (loopback,
 * private, link-local, ...: addrclass.h) is refused on the address actually connected to,
 * so a DNS answer cannot redirect us there (PROTOCOL.md 7.3). A proxy is used only when
 * the operator names one (proxy, the peer_proxy setting; never http_proxy or ALL_PROXY
 * from the environment); through it the proxy resolves names and connects, so that check
 * is not applied: which addresses are reached is the proxy's policy.
 *
 * Two ways to call: pb_client_start on the loop thread, completing through a callback
 * there (the delivery engine and the key fetcher), and pb_client_call, which blocks the
 * calling thread (never the loop thread) until the answer is in (tools, tests).
 *
 * Memory: each answer is capped while it is received (max_response), and all answers
 * being received at once share one budget (response_budget): a transfer that would pass
 * it is aborted (PB_ERR_BUSY), so no number of peers answering at once can exhaust memory.
 *
 * Untrusted input: peer answers. A 2xx counts only with Content-Type application/hrpc,
 * and a non-2xx body is decoded as hrpc.v1.Error (with RetryInfo in details for 429/503).
 */
#ifndef PB_HRPC_CLIENT_H
#define PB_HRPC_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/ioloop.h"
#include "postbox.h"
#include "util/metrics_std.h"

typedef struct pb_client pb_client;

typedef struct pb_client_opts {
    bool plain_http;         /* http:// instead of https:// (operator's choice) */
    const char *ca_file;     /* NULL: the system's CAs */
    long connect_timeout_ms; /* default 5000 */
    long timeout_ms;         /* whole call, default 30000 */
    size_t max_response;     /* largest answer body accepted, default 16 MiB */
    size_t response_budget;  /* bytes of answers being received at once, default 64 MiB */
    bool allow_private;      /* connect to loopback/private/... addresses (allow_private_peers) */
    const char *proxy;       /* every connection through this proxy URL (peer_proxy); NULL or
                                "": none, whatever the environment says */
    pb_ioloop *loop;         /* borrowed; NULL: the client runs a loop of its own */
    long max_connections;    /* own loop only: connection cache size, default 1024 */
    const char *dns_servers; /* "IP[:PORT],..." for host names; NULL: the system's */
    int dns_timeout_ms;      /* a name's first query; default 2000 (resolve.h) */
    unsigned dns_lookups;    /* names looked up at once; default 256 (resolve.h) */
    unsigned dns_for_clients, dns_per_client, dns_per_domain; /* its shares (resolve.h) */
    const pb_metrics_std *metrics;                            /* lookups refused; may be NULL */
} pb_client_opts;

/*
 * opts may be NULL (defaults; a 0 field also means its default); strings are copied.
 * PB_ERR_CONFIG when ca_file cannot be read, PB_ERR_INTERNAL when libcurl cannot be
 * initialised. Caller frees with pb_client_free (after the loop stopped, for a borrowed
 * loop: every transfer must have completed).
 */
pb_err pb_client_new(const pb_client_opts *opts, pb_client **out);
void pb_client_free(pb_client *c); /* NULL is a no-op */
/* Makes every later call fail at once with PB_ERR_SHUTDOWN, and aborts the blocking calls
 * in flight (used when the daemon stops). */
void pb_client_shutdown(pb_client *c);
/* New shares of the name lookups (resolve.h, pb_resolver_set_shares); any thread. */
void pb_client_set_dns_shares(pb_client *c, unsigned for_clients, unsigned per_client,
                              unsigned per_domain);
/* The loop the client's transfers run on (its own or the borrowed one). */
pb_ioloop *pb_client_loop(pb_client *c);

typedef struct pb_client_answer {
    long status;   /* HTTP status, 0 when no answer arrived */
    uint8_t *body; /* 2xx: the response message bytes (owned; may be NULL if empty) */
    size_t body_len;
    char *identifier;     /* non-2xx: hrpc.v1.Error.identifier (owned) or NULL */
    char *message;        /* non-2xx: human_message, or transport error text (owned) */
    bool has_retry_after; /* RetryInfo found in details */
    uint32_t retry_after; /* seconds */
    int64_t elapsed_ms;   /* from start to completion */
} pb_client_answer;

void pb_client_answer_clear(pb_client_answer *a);

/*
 * Results (the `err` of a completion, or pb_client_call's return):
 *   PB_OK          2xx with Content-Type application/hrpc; ans->body is the message
 *   PB_ERR_PEER    non-2xx with an hrpc.v1.Error body (status, identifier, message set)
 *   PB_ERR_PROTO   an answer that is not valid hRPC, or over max_response (message says)
 *   PB_ERR_NET, PB_ERR_TIMEOUT, PB_ERR_TLS   no usable answer (message says why; a
 *                  refused private address is PB_ERR_NET)
 *   PB_ERR_BUSY    the shared response budget was exhausted: try again later
 *   PB_ERR_INVAL   server_id is not a valid server ID, path does not start with '/', or
 *                  path or authorization holds a control character (header injection)
 *   PB_ERR_SHUTDOWN the client or its loop is stopping
 */
typedef struct pb_client_req {
    const char *server_id;     /* copied */
    const char *path;          /* "/protocol.sync.v1.PostboxService/Push"; copied */
    const char *authorization; /* header value or NULL; copied */
    const uint8_t *body;       /* copied; may be NULL when body_len is 0 */
    size_t body_len;
    long timeout_ms;            /* 0: the client's */
    size_t max_response;        /* 0: the client's */
    bool one_shot;              /* close the connection after the answer (a contact not repeated
                                   soon: Pulls, key fetches, notices); pushes keep theirs */
    bool for_client;            /* on a client's behalf (a key fetch): its name lookup
                                   counts in the clients' share (resolve.h) */
    const uint8_t *client_addr; /* that client's address (16 bytes, copied) or NULL */
} pb_client_req;

/* Completion, on the loop thread. ans is the callee's: it clears it. */
typedef void (*pb_client_done_fn)(void *ctx, pb_err err, pb_client_answer *ans);

/* Starts a call; loop thread only. done runs exactly once, always later (never inside
 * this call), also for a request refused before anything was sent. */
void pb_client_start(pb_client *c, const pb_client_req *req, pb_client_done_fn done, void *ctx);

/* A blocking call from any thread but the loop's (PB_ERR_INTERNAL there). In every case
 * *ans is filled (clear it with pb_client_answer_clear). */
pb_err pb_client_call(pb_client *c, const char *server_id, const char *path,
                      const char *authorization, const uint8_t *body, size_t body_len,
                      pb_client_answer *ans);

/* Decodes a KeyResponse answer body into key: PB_OK, or PB_ERR_PROTO (message set in ans)
 * when it is not a KeyResponse with a 32-byte key. */
pb_err pb_client_key_from_answer(pb_client_answer *ans, uint8_t key[32]);

/*
 * Fetches a peer's public key (protocol.auth.v1.AuthService/Key, no Authorization),
 * blocking. Results as pb_client_call; a 2xx answer that is not a KeyResponse with a
 * 32-byte key is PB_ERR_PROTO. key is written only on PB_OK.
 */
pb_err pb_client_fetch_key(pb_client *c, const char *server_id, uint8_t key[32],
                           pb_client_answer *ans);

#define PB_CLIENT_KEY_PATH "/protocol.auth.v1.AuthService/Key"

#endif
