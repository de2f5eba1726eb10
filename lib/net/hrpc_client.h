/*
 * hrpc_client - unary hRPC calls to peers over libcurl (PROTOCOL.md section 1).
 *
 * A server ID `domain:port` becomes `<scheme>://domain:port/<package>.<Service>/<Method>`;
 * the scheme is https unless the operator configured http (loopback tests, a TLS
 * proxy). Connections are reused per peer (one cached easy handle per peer server ID;
 * a second concurrent call to the same peer uses a temporary handle). TLS peers are
 * verified against the system CAs or the configured CA file.
 *
 * Untrusted input: peer answers. The body is size-capped while it is received
 * (max_response), a 2xx counts only with Content-Type application/hrpc, and a non-2xx
 * body is decoded as hrpc.v1.Error (with RetryInfo in details for 429/503).
 */
#ifndef PB_HRPC_CLIENT_H
#define PB_HRPC_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "postbox.h"

typedef struct pb_client pb_client;

typedef struct pb_client_opts {
    bool plain_http;         /* http:// instead of https:// (operator's choice) */
    const char *ca_file;     /* NULL: the system's CAs */
    long connect_timeout_ms; /* default 5000 */
    long timeout_ms;         /* whole call, default 30000 */
    size_t max_response;     /* largest answer body accepted, default 16 MiB */
    size_t max_peers;        /* peers with a cached connection (LRU beyond), default 1024 */
} pb_client_opts;

/*
 * opts may be NULL (defaults; a 0 field also means its default); strings are copied.
 * PB_ERR_CONFIG when ca_file cannot be read, PB_ERR_INTERNAL when libcurl cannot be
 * initialised. Thread-safe: any number of threads may call through one client. Caller
 * frees with pb_client_free once no call is in flight.
 */
pb_err pb_client_new(const pb_client_opts *opts, pb_client **out);
void pb_client_free(pb_client *c); /* NULL is a no-op */
/* Makes every call in flight, and every later call, fail at once with PB_ERR_SHUTDOWN
 * (used when the daemon stops, so that no worker waits out a peer timeout). */
void pb_client_shutdown(pb_client *c);

typedef struct pb_client_answer {
    long status;   /* HTTP status, 0 when no answer arrived */
    uint8_t *body; /* 2xx: the response message bytes (owned; may be NULL if empty) */
    size_t body_len;
    char *identifier;     /* non-2xx: hrpc.v1.Error.identifier (owned) or NULL */
    char *message;        /* non-2xx: human_message, or transport error text (owned) */
    bool has_retry_after; /* RetryInfo found in details */
    uint32_t retry_after; /* seconds */
} pb_client_answer;

void pb_client_answer_clear(pb_client_answer *a);

/*
 * POSTs body to `path` ("/protocol.sync.v1.PostboxService/Push") on server_id, with
 * Authorization: `authorization` when not NULL. Returns:
 *   PB_OK          2xx with Content-Type application/hrpc; ans->body is the message
 *   PB_ERR_PEER    non-2xx with an hrpc.v1.Error body (status, identifier, message set)
 *   PB_ERR_PROTO   an answer that is not valid hRPC (status set, message says why)
 *   PB_ERR_NET, PB_ERR_TIMEOUT, PB_ERR_TLS   no usable answer (message says why)
 *   PB_ERR_INVAL   server_id is not a valid server ID, path does not start with '/', or
 *                  path or authorization holds a control character (header injection)
 * In every case *ans is filled (clear it with pb_client_answer_clear).
 */
pb_err pb_client_call(pb_client *c, const char *server_id, const char *path,
                      const char *authorization, const uint8_t *body, size_t body_len,
                      pb_client_answer *ans);

/*
 * Fetches a peer's public key (protocol.auth.v1.AuthService/Key, no Authorization).
 * Results as pb_client_call; a 2xx answer that is not a KeyResponse with a 32-byte key
 * is PB_ERR_PROTO. key is written only on PB_OK.
 */
pb_err pb_client_fetch_key(pb_client *c, const char *server_id, uint8_t key[32],
                           pb_client_answer *ans);

#endif
