/*
 * admin_http - the admin API's HTTP/JSON listener on libmicrohttpd: loopback TCP or a Unix
 * socket, never the federation port. Routes match a method and a path pattern where `*`
 * matches one path segment (e.g. "/v1/peers/STAR/retry"); handlers get the parsed JSON body
 * and fill a JSON answer, a text answer with its own Content-Type (the metrics
 * exposition, the status page), or a file streamed from a descriptor (the store backup).
 * An optional bearer token is compared in constant time; routes registered with
 * pb_admin_http_route_public are served without it (the status page, which then asks the
 * user for the token). Every answer carries X-Content-Type-Options: nosniff and
 * Cache-Control: no-store; an HTML answer also a Content-Security-Policy that allows only
 * its own inline script and style and requests to the listener itself.
 *
 * Untrusted input: the HTTP request. Bodies are bounded (max_body, refused with 413 from
 * Content-Length or while reading), parsed by jansson; refusals answer
 * {"error": "clear message"}.
 */
#ifndef PB_ADMIN_HTTP_H
#define PB_ADMIN_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "postbox.h"

typedef struct pb_admin_http pb_admin_http;
/* A request waiting for one completion (pb_admin_req_suspend). */
typedef struct pb_admin_ticket pb_admin_ticket;
struct pb_admin_slot;

typedef struct pb_admin_req {
    const char *method;
    const char *path;
    const char *segs[8]; /* values matched by `*` in the route, in order */
    size_t nsegs;
    json_t *body; /* parsed body or NULL when empty; borrowed */
    /* query-string lookup (libmicrohttpd's, or an in-process caller's list) */
    const char *(*arg)(void *arg_ctx, const char *name);
    void *arg_ctx;
    /* a handler that asked to wait (pb_admin_resp.wait_ms) runs again: timed_out says
     * whether its wait is over (answer with what there is) or it was woken early. A
     * handler that waited for its ticket (pb_admin_req_suspend) runs again with state set
     * to the ticket's state: timed_out false, the completion came (state holds what it
     * wrote); true, the listener stops before it came (state must not be read). */
    bool resumed, timed_out;
    void *state;
    struct pb_admin_slot *slot; /* the listener's; NULL: this request cannot wait */
} pb_admin_req;

/* A query-string argument, or NULL. The string is owned by the request. */
const char *pb_admin_req_arg(const pb_admin_req *req, const char *name);

typedef struct pb_admin_resp {
    int status;   /* default 200 */
    json_t *body; /* reference stolen by the server; NULL = empty body */
    /* A non-JSON answer instead of body: text (owned: freed by the server) of text_len
     * bytes, sent with content_type (a static string). */
    char *text;
    size_t text_len;
    const char *content_type;
    /* A file answer instead (file set): file_fd (owned: closed by the server) is read from
     * its start for file_len bytes and streamed, sent with content_type. */
    bool file;
    int file_fd;
    uint64_t file_len;
    /* Nothing to answer yet (no body or text set): run the handler again when
     * pb_admin_http_wake is called or after wait_ms (counted from the first time it asked),
     * whichever comes first. The request waits suspended: it holds no thread. */
    int wait_ms;
} pb_admin_resp;

/* Sets {"error": message} with status. */
void pb_admin_resp_error(pb_admin_resp *resp, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

typedef void (*pb_admin_fn)(void *ctx, const pb_admin_req *req, pb_admin_resp *resp);

/*
 * Waiting for one completion: in a handler, lets the request wait for one piece of work
 * (a store commit) without holding a thread. Returns a ticket with size zeroed bytes of
 * state (pb_admin_ticket_state) shared by the handler and the completion, or NULL when
 * the request cannot wait (the listener holds max_pending tickets whose completion has
 * not come, or it stops, or the request already has one): the handler then does the work
 * on its own thread as before. With a ticket, the handler starts the work and returns
 * without an answer; the work's completion writes the state and calls
 * pb_admin_ticket_done exactly once, from any thread (a handler that fails to start the
 * work calls it itself and answers at once). The request is suspended meanwhile (no
 * thread, no request deadline: the work must complete) and only this completion resumes
 * it; its handler then runs again (pb_admin_req resumed, state, timed_out). A completion
 * may come after the client left or the listener stopped: the ticket lives until both the
 * request and the completion are done with it, and pb_admin_http_free waits for every
 * completion. An in-process dispatch waits for it on a condition variable.
 */
pb_admin_ticket *pb_admin_req_suspend(const pb_admin_req *req, size_t size);
void *pb_admin_ticket_state(pb_admin_ticket *t);
void pb_admin_ticket_done(pb_admin_ticket *t);

typedef struct pb_admin_http_opts {
    const char *listen;         /* "127.0.0.1:2290", "[::1]:2290" or "unix:/path" */
    const char *token;          /* bearer token, NULL = none required */
    size_t max_body;            /* default 1 MiB */
    unsigned threads;           /* default 4 (a waiting request holds none) */
    const char *name;           /* names the listener in logs; default "admin" */
    unsigned request_timeout_s; /* a request must arrive within this; default 30 */
    unsigned max_pending;       /* tickets waiting for their completion; default 256 */
} pb_admin_http_opts;

/*
 * Runs one request through the routes without HTTP (the in-process form of the API, and
 * what the listener itself uses). args is a NULL-terminated list of name, value pairs
 * (may be NULL). On return *status is set and *answer is the answer text: JSON, or the
 * route's text answer (caller frees; NULL for an empty answer).
 */
void pb_admin_http_dispatch(pb_admin_http *a, const char *method, const char *path,
                            const char *const *args, const char *body, size_t body_len, int *status,
                            char **answer);

/* Creates the listener (not started). Strings are copied. Caller frees. */
pb_admin_http *pb_admin_http_new(const pb_admin_http_opts *opts);
void pb_admin_http_route(pb_admin_http *a, const char *method, const char *pattern, pb_admin_fn fn,
                         void *ctx);
/* A route served without the bearer token (for what holds no secret: the status page). */
void pb_admin_http_route_public(pb_admin_http *a, const char *method, const char *pattern,
                                pb_admin_fn fn, void *ctx);
/* Open connections (0 when not started). */
unsigned pb_admin_http_connections(pb_admin_http *a);
/* Binds and serves. PB_ERR_CONFIG for a non-loopback or malformed address, PB_ERR_IO when
 * it cannot bind. */
pb_err pb_admin_http_start(pb_admin_http *a);
/* Replaces the bearer token (copied; NULL or "" = none required) for the requests that
 * arrive from now on. Thread-safe. */
void pb_admin_http_set_token(pb_admin_http *a, const char *token);
/* Runs the handler of every waiting request again (pb_admin_resp.wait_ms). Any thread. */
void pb_admin_http_wake(pb_admin_http *a);
void pb_admin_http_stop(pb_admin_http *a);
void pb_admin_http_free(pb_admin_http *a); /* NULL is a no-op */

/* Whether `listen` is something an admin listener named `name` ("admin", "metrics") may
 * serve on: a loopback IP:PORT or unix:/path (logging why not). PB_OK or PB_ERR_CONFIG. */
pb_err pb_admin_http_check_listen(const char *name, const char *listen);

#endif
