/*
 * hrpc_server - unary hRPC over HTTP/1.1 on libmicrohttpd (PROTOCOL.md section 1).
 *
 * Routes `POST /<package>.<Service>/<Method>` to registered handlers. Before a handler
 * runs, the server has already answered every transport refusal itself: unknown path
 * 404 hrpc.not-found, method other than POST 405, Content-Type other than
 * application/hrpc (or Hrpc-Version other than 1) 400 hrpc.http.bad-unary-request, a
 * body over max_body 413 hrpc.resource-exhausted (refused from Content-Length before
 * any byte is read, or as soon as a chunked body passes the limit, discarding the rest),
 * too many requests being handled or suspended, or too many body bytes held (in all, or
 * from one client address: see below), 503 hrpc.unavailable with RetryInfo, and, for routes that
 * need it, token authentication (auth.h) with its own statuses. Every answer carries
 * Content-Type: application/hrpc and Hrpc-Version: 1; failures carry an hrpc.v1.Error.
 *
 * Slow or too many clients: a request must arrive completely within conn_timeout_s
 * (a client trickling its headers or body is cut then, not kept alive by each byte);
 * past max_connections a new connection is closed at once rather than left waiting.
 *
 * Request slots and body memory: a complete request holds an answered slot (max_inflight)
 * while it is handled; while it is suspended (below) it holds a suspended slot instead
 * (max_suspended), a pool of its own, so requests waiting for something remote never take
 * the slots that requests we can answer at once need. Each pool and the body bytes held
 * (body_memory) also have a share per client address (an IPv4 address or an IPv6 /64, as
 * max_conns_per_addr counts), so no address takes a whole pool. Past a limit or a share the
 * request is answered 503 (a suspension refused: 503 at once instead of waiting) and
 * counted in postbox_requests_refused_total{reason}.
 *
 * Waiting without a thread: a request that must wait for something remote (the sender's
 * key being fetched, a Pull from the sender in progress) is suspended (libmicrohttpd's
 * suspend/resume): it holds no listener thread while it waits, and is resumed by a waker
 * (any thread) or by its deadline, whichever comes first. Authentication waits at most
 * auth.key_wait_ms for a key (then 503 with RetryInfo; the fetch goes on); a handler
 * chooses its own deadline (pb_hrpc_defer). A handler that queued local work (a Push's
 * commit) waits the same way, keeping its answered slot (pb_hrpc_defer_local), so that
 * requests from many peers share commits however few the threads are.
 *
 * Threads: libmicrohttpd's internal polling thread pool (opts.threads); handlers run on
 * those threads and may block on local work only (store commits), never on the network;
 * one sweeper thread enforces the request deadline and the suspended requests' deadlines.
 *
 * Untrusted input: the HTTP request (method, path, headers, body). libmicrohttpd parses
 * HTTP and bounds header size (connection memory limit); this module bounds the body
 * before buffering it; handlers decode the body with the wire module.
 */
#ifndef PB_HRPC_SERVER_H
#define PB_HRPC_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto/auth.h"
#include "util/buf.h"
#include "util/metrics_std.h"
#include "postbox.h"

typedef struct pb_hrpc_server pb_hrpc_server;

typedef struct pb_hrpc_server_opts {
    const char *listen;          /* "127.0.0.1:2289", "[::1]:2289", "0.0.0.0:2289"; port 0 = any */
    size_t max_body;             /* default 64 KiB */
    unsigned max_connections;    /* default 1024; past it new connections are closed at once
                                    (clamped to what RLIMIT_NOFILE allows, with a warning) */
    unsigned max_conns_per_addr; /* counted connections one client address (an IPv4
                                    address, or an IPv6 /64) may hold; past it its new
                                    connections are closed at once. 0 or UINT_MAX: no limit */
    unsigned conn_timeout_s;     /* default 15: an idle connection is cut after this, and so is
                                    one whose request (headers and body) is not complete this
                                    long after the connection opened or the last answer */
    unsigned threads;            /* default 16 */
    unsigned max_inflight;       /* complete requests being handled at once, suspended ones
                                    not included; default 256. Requests still arriving are
                                    not counted: a hung sender holds no slot, only its bytes */
    unsigned max_inflight_per_addr;  /* ... of them from one client address; default 64 */
    unsigned max_suspended;          /* requests suspended at once (waiting for a key, a Pull,
                                        a long poll: see "Waiting without a thread"), a pool of
                                        their own; default 256 */
    unsigned max_suspended_per_addr; /* ... of them from one client address; default 32 */
    size_t body_memory;              /* bytes of request bodies held at once across all
                                        connections (what arrived, not what was declared);
                                        default 32 MiB, at least max_body */
    size_t body_memory_per_addr;     /* ... of them from one client address; default 2 MiB, at
                                        least max_body. The per-address shares apply only with a
                                        per-address connection limit (max_conns_per_addr not 0 or
                                        UINT_MAX): behind a proxy every client has its address */
    const char *tls_cert_file;       /* both set: HTTPS */
    const char *tls_key_file;
    /* Where each answered request is recorded when it completes (latency and status by
     * method, token refusals by identifier), or NULL. Borrowed: must outlive the server. */
    const pb_metrics_std *metrics;
} pb_hrpc_server_opts;

typedef struct pb_hrpc_request {
    const char *path;
    const uint8_t *body;
    size_t body_len;
    const char *peer; /* authenticated, normalised server ID; NULL on routes without auth */
    bool bound;       /* the token names this server as its audience (PROTOCOL.md 7.1):
                         only then may the handler honour the project's extension fields */
    const char *authorization; /* the raw Authorization header or NULL */
    /* the public key that verified the token (PB_PUBKEY_LEN bytes); NULL on routes without
     * auth */
    const uint8_t *peer_key;
    /* the client's address key (pb_addr_client_key: an IPv4 address or an IPv6 /64, 16
     * bytes); NULL when unknown or when per-address limits are off (max_conns_per_addr
     * unlimited: behind a proxy every client has the proxy's address) */
    const uint8_t *client_addr;
    bool resumed;   /* the handler deferred this request (pb_hrpc_defer) and runs again */
    bool timed_out; /* ... and the deferral's deadline passed before a wake */
    void *state;    /* what the handler kept across its runs (pb_hrpc_set_state), or NULL */
    void *internal; /* the server's */
} pb_hrpc_request;

/* What a handler fills. status 200 with `body` the response message, or an error status
 * with identifier/message (and retry_after > 0 to attach RetryInfo). */
typedef struct pb_hrpc_reply {
    int status;
    pb_buf body;
    const char *identifier; /* static string */
    char *message;          /* owned by the reply (freed by the server); may be NULL */
    uint32_t retry_after;
    /* The handler reported this failure itself (to the store-health tracker, which logs
     * an outage calmly): the server does not log the error reply. */
    bool logged;
    /* Called once the exchange is over, with sent_ok true when the whole answer was
     * written to the connection (e.g. to forget events a foreign peer pulled). May be
     * NULL. Runs on a server thread. */
    void (*on_done)(void *ctx, bool sent_ok);
    void *on_done_ctx;
} pb_hrpc_reply;

/* Sets an error reply (message is copied). */
void pb_hrpc_reply_error(pb_hrpc_reply *rep, int status, const char *identifier, const char *fmt,
                         ...) __attribute__((format(printf, 4, 5)));

typedef void (*pb_hrpc_handler_fn)(void *ctx, const pb_hrpc_request *req, pb_hrpc_reply *rep);

/*
 * Deferring: a handler that must wait (for something that another thread will finish)
 * calls pb_hrpc_defer and returns without filling rep. The server suspends the request
 * and calls the handler again with req->resumed set once pb_hrpc_wake is called, or with
 * req->timed_out also set when timeout_ms passed first. The waker returned belongs to the
 * caller until it hands it to pb_hrpc_wake, which it must do exactly once (late is fine:
 * a wake after the deadline does nothing). A handler may defer once per run. When the
 * suspended requests' pool (max_suspended) or the client address's share of it is full,
 * the server answers 503 at once instead and does not call the handler again (the waker
 * must still be woken once; that wake does nothing).
 */
typedef struct pb_hrpc_waker pb_hrpc_waker;
pb_hrpc_waker *pb_hrpc_defer(const pb_hrpc_request *req, int timeout_ms);
/*
 * Deferring for local work (a commit queued by the handler): as pb_hrpc_defer, but the
 * request keeps the answered slot it holds (max_inflight and its address's share) rather
 * than taking a suspended one, so it is never refused for want of one and the wait holds
 * no listener thread. For waits that end by themselves (the store answers), not for waits
 * on a peer.
 */
pb_hrpc_waker *pb_hrpc_defer_local(const pb_hrpc_request *req, int timeout_ms);
void pb_hrpc_wake(pb_hrpc_waker *w);
/* Keeps `state` with the request for the handler's next runs (req->state); the server
 * calls free_fn(state) once the exchange is over (also when it ends without the handler
 * running again: a deadline at shutdown, a closed connection). A later call replaces the
 * state, freeing the previous one. */
void pb_hrpc_set_state(const pb_hrpc_request *req, void *state, void (*free_fn)(void *));

struct pb_keyfetch;

/* Authentication for routes registered with auth: the policy and the key source. The
 * server keeps pointers: they must outlive it. */
typedef struct pb_hrpc_auth {
    const pb_auth_policy *policy;
    struct pb_keyfetch *keys; /* stored keys and bounded fetches (keyfetch.h) */
    int key_wait_ms;          /* longest a request waits for a key being fetched; 900 */
    /* A pending rename (PROTOCOL.md 7.2): when server_id is the new ID of a rename that
     * waits for its proof, fills key with the old ID's key and returns true; after a token
     * naming server_id verified with it, rename_proven completes the rename (its error is
     * answered as a store failure). Both may be NULL. */
    bool (*rename_key)(void *ctx, const char *server_id, uint8_t key[32]);
    pb_err (*rename_proven)(void *ctx, const char *server_id);
    /* A token from a server ID we hold no key for verified with a freshly fetched key: the
     * peer record would be created now. admit_new (may be NULL) decides whether this client
     * may add one more peer (client_addr as in pb_hrpc_request, may be NULL); when it
     * returns false the request is answered 429 hrpc.resource-exhausted with RetryInfo
     * *retry_after_s and the key is not stored. */
    bool (*admit_new)(void *ctx, const char *server_id, const uint8_t key[32],
                      const uint8_t *client_addr, uint32_t *retry_after_s);
    /* Called after a successful authentication (e.g. to record contact); may be NULL. */
    void (*on_authenticated)(void *ctx, const char *peer, bool bound);
    void *cb_ctx;
} pb_hrpc_auth;

/* Creates a server (not listening yet). opts strings are copied. Caller frees with
 * pb_hrpc_server_free. auth may be NULL when no route needs it. */
pb_err pb_hrpc_server_new(const pb_hrpc_server_opts *opts, const pb_hrpc_auth *auth,
                          pb_hrpc_server **out);
/* Registers a handler for an exact path; with_auth: the token is checked first. */
void pb_hrpc_server_route(pb_hrpc_server *s, const char *path, bool with_auth,
                          pb_hrpc_handler_fn fn, void *ctx);
/* Binds and starts serving. PB_ERR_IO when the address cannot be bound, PB_ERR_CONFIG
 * for a bad address or unreadable TLS files. */
pb_err pb_hrpc_server_start(pb_hrpc_server *s);
/*
 * Reload (thread-safe while serving). set_tls reads and checks a new certificate chain and
 * key; on PB_OK new TLS connections get them while open ones keep theirs. On failure (files
 * unreadable, not a matching pair, a listener started without TLS, or a libmicrohttpd
 * without the certificate callback) nothing changes. set_limits applies max_body,
 * max_inflight, max_suspended, body_memory and their per-address shares, conn_timeout_s,
 * max_connections and max_conns_per_addr of lim
 * (0 = unchanged; UINT_MAX per address = no limit) to new requests and connections; max_connections
 * cannot go above the value the listener started with. The idle timeout of a connection whose
 * client is slow to read an answer stays the one of the start (libmicrohttpd's own).
 */
pb_err pb_hrpc_server_set_tls(pb_hrpc_server *s, const char *cert_file, const char *key_file);
void pb_hrpc_server_set_limits(pb_hrpc_server *s, const pb_hrpc_server_opts *lim);
/* The bound port (after start). */
uint16_t pb_hrpc_server_port(const pb_hrpc_server *s);
/* Open connections counted against max_connections (0 when not started). */
unsigned pb_hrpc_server_connections(pb_hrpc_server *s);
/* Request body bytes held now (bodies still arriving or being handled), the figure held
 * under body_memory. */
size_t pb_hrpc_server_body_bytes(pb_hrpc_server *s);
/* TLS connections waiting for their client before their first request (the handshake, or
 * the first request after it), parked: held by no thread (postbox_tls_handshakes_waiting). */
unsigned pb_hrpc_server_tls_waiting(pb_hrpc_server *s);
/* Stops accepting, lets in-flight requests finish, stops threads. Idempotent. */
void pb_hrpc_server_stop(pb_hrpc_server *s);
void pb_hrpc_server_free(pb_hrpc_server *s); /* stops first; NULL is a no-op */

/* Parses "host:port", "[v6]:port" into a socket address (numeric hosts only). */
struct sockaddr_storage;
/* Reads a TLS certificate chain and key file and checks that they load and match, as the
 * listener will (logging why not, and the certificate's subject and expiry); changes
 * nothing. PB_OK or PB_ERR_CONFIG. */
pb_err pb_hrpc_tls_check(const char *cert_file, const char *key_file);
pb_err pb_hrpc_parse_listen(const char *listen, struct sockaddr_storage *ss, unsigned *len);

#endif
