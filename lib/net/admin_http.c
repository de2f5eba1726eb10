/*
 * admin_http - JSON-over-HTTP listener for the admin API (see admin_http.h).
 *
 * Request life cycle: refusals that need no body are decided on the first call; the body
 * is then read and dropped (up to DISCARD_MAX: a client still sending would otherwise get
 * a reset instead of the answer; the admin API's clients are local) and the refusal sent
 * after it. Otherwise the body is buffered up to max_body and parsed once, then the
 * route's handler runs.
 *
 * Request deadline: libmicrohttpd's timeout only measures inactivity, so each connection
 * gets a record (its socket context) with a deadline: a request must arrive completely
 * within request_timeout_s of the connection's start or its previous answer; a sweeper
 * thread shuts down the socket of a connection past it. The deadline is off while a
 * request is handled (an inbox long-poll may wait a minute).
 *
 * Waiting without a thread: a handler with nothing to answer yet (an inbox long-poll)
 * sets wait_ms; the request is then suspended (libmicrohttpd's suspend/resume) on the
 * waiting list, and resumed by pb_admin_http_wake (every waiting request: they are few) or
 * by the sweeper at its deadline, and its handler runs again. A wake counter read before
 * the handler runs closes the gap between its look and the suspension. An in-process
 * dispatch waits on a condition variable instead.
 *
 * Waiting for one completion (a submission's commit): the handler takes a ticket
 * (pb_admin_req_suspend; at most max_pending of them wait at once), starts the work and
 * returns without an answer; the request is suspended on the waiting list with no
 * deadline, pb_admin_http_wake passes it by, and only pb_admin_ticket_done (the work's
 * completion, any thread) resumes it; the handler then runs again from the ticket's
 * state. A completion that came before the suspension makes the handler run again at
 * once. The ticket is refcounted (the request, the completion): the completion may come
 * after the client left or after the stop, which resumes every waiting request (the
 * handler answers that the outcome is unknown); pb_admin_http_free waits for every
 * completion.
 *
 * Browsers: the status page makes a browser a client of this listener, so a web page the
 * operator visits could try to use it too. On TCP listeners a Host header must name an
 * address, not a DNS name (a page cannot rebind a name of its own to 127.0.0.1 and read the
 * answers), a request that changes something must not come from another origin (Origin
 * header), and a body must be application/json (no cross-site form posts).
 */
#include "net/admin_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <strings.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "util/buf.h"
#include "net/hrpc_server.h"
#include "util/log.h"
#include "util/mem.h"

struct aroute {
    char *method;
    char *pattern;
    pb_admin_fn fn;
    void *ctx;
    bool public_; /* served without the bearer token */
};

/* The status page's policy: its own inline script and style, requests to this listener. */
#define HTML_CSP                                                                                   \
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "                  \
    "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "                     \
    "frame-ancestors 'none'"

/* One open connection (libmicrohttpd's socket context), under conns_mu. */
struct aconn {
    struct aconn *prev, *next;
    int fd;
    int64_t deadline_ms; /* monotonic; 0 while a complete request is handled */
    bool cut;
};

/* The longest body of a request refused from its headers that is read (and dropped) so
 * that the client gets the answer (see refuse); loopback clients only. */
#define DISCARD_MAX (64u << 20)

struct areq;

struct pb_admin_http {
    char *name;
    /* waiting requests (wait_mu) */
    pthread_mutex_t wait_mu;
    pthread_cond_t wait_cv; /* in-process dispatches wait on it */
    uint64_t wake_gen;
    struct areq *waiting;
    bool stopping;
    unsigned max_pending, pending; /* tickets whose completion has not come */
    unsigned request_timeout_s;
    pthread_mutex_t conns_mu;
    pthread_cond_t sweep_cv;
    struct aconn *conns;
    bool sweeper_started, sweeper_stop;
    pthread_t sweeper;
    char *listen;
    pthread_mutex_t token_mu; /* token may be replaced while serving (reload) */
    char *token;
    size_t max_body;
    unsigned threads;
    struct aroute *routes;
    size_t nroutes;
    struct MHD_Daemon *mhd;
    int unix_fd;
    char *unix_path;
};

struct areq {
    pb_buf body;
    bool too_big;
    /* refused from its headers while its body still comes: the body is read and dropped
     * (DISCARD_MAX at most), then this answer is sent */
    int refuse_status;
    const char *refuse_msg; /* static */
    uint64_t discarded;
    /* a handler's wait (wait_mu for the list and the flags the sweeper sets) */
    struct areq *wprev, *wnext;
    bool listed, resumed, timed_out;
    int64_t wait_until; /* monotonic ms; 0 until it first waits */
    struct MHD_Connection *conn;
    pb_admin_ticket *ticket; /* its handler waits for one completion (one reference) */
};

/* A request's wait for one completion (wait_mu guards all but state). */
struct pb_admin_ticket {
    pb_admin_http *a;
    int refs;         /* the request's and the completion's */
    bool done;        /* the completion came */
    struct areq *req; /* suspended on it (on the waiting list); NULL: not, or gone */
    _Alignas(max_align_t) unsigned char state[];
};

/* Where a handler's ticket goes (one handler run). */
struct pb_admin_slot {
    pb_admin_http *a;
    pb_admin_ticket *t;
};

/* Drops a reference (wait_mu held). */
static void ticket_unref_locked(pb_admin_ticket *t)
{
    if (--t->refs == 0) free(t);
}

pb_admin_ticket *pb_admin_req_suspend(const pb_admin_req *req, size_t size)
{
    struct pb_admin_slot *slot = req->slot;
    if (!slot || slot->t) return NULL;
    pb_admin_http *a = slot->a;
    pthread_mutex_lock(&a->wait_mu);
    bool room = !a->stopping && a->pending < a->max_pending;
    if (room) a->pending++;
    pthread_mutex_unlock(&a->wait_mu);
    if (!room) return NULL;
    pb_admin_ticket *t = pb_xcalloc(1, sizeof *t + size);
    t->a = a;
    t->refs = 2;
    slot->t = t;
    return t;
}

void *pb_admin_ticket_state(pb_admin_ticket *t)
{
    return t->state;
}

static void resume_locked(pb_admin_http *a, struct areq *r, bool timed_out);

void pb_admin_ticket_done(pb_admin_ticket *t)
{
    pb_admin_http *a = t->a;
    pthread_mutex_lock(&a->wait_mu);
    t->done = true;
    a->pending--;
    if (t->req && t->req->listed) resume_locked(a, t->req, false);
    pthread_cond_broadcast(&a->wait_cv); /* in-process dispatches, and free */
    ticket_unref_locked(t);
    pthread_mutex_unlock(&a->wait_mu);
}

/* Whether a handler run left no answer. */
static bool unanswered(const pb_admin_resp *r)
{
    return !r->body && !r->text && !r->file && !r->wait_ms;
}

const char *pb_admin_req_arg(const pb_admin_req *req, const char *name)
{
    return req->arg ? req->arg(req->arg_ctx, name) : NULL;
}

static const char *mhd_arg(void *ctx, const char *name)
{
    return MHD_lookup_connection_value(ctx, MHD_GET_ARGUMENT_KIND, name);
}

static const char *list_arg(void *ctx, const char *name)
{
    const char *const *args = ctx;
    for (size_t i = 0; args && args[i] && args[i + 1]; i += 2)
        if (strcmp(args[i], name) == 0) return args[i + 1];
    return NULL;
}

/* {"error": msg}. A message that echoes input may not be UTF-8 (or may be cut inside a
 * character), which JSON cannot carry: its non-ASCII bytes are then replaced by '?'
 * rather than answering without a body. */
static json_t *error_object(const char *msg)
{
    json_t *j = json_pack("{s:s}", "error", msg);
    if (j) return j;
    char safe[512];
    snprintf(safe, sizeof safe, "%s", msg);
    for (char *p = safe; *p; p++)
        if ((unsigned char)*p >= 0x80) *p = '?';
    return json_pack("{s:s}", "error", safe);
}

void pb_admin_resp_error(pb_admin_resp *resp, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    resp->status = status;
    if (resp->body) json_decref(resp->body);
    resp->body = error_object(msg);
}

/* Queues text (taken; may be NULL) with its Content-Type and the common headers. */
static enum MHD_Result send_text(struct MHD_Connection *conn, int status, char *text, size_t len,
                                 const char *ctype)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, text ? (void *)text : (void *)"",
                                        text ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    if (text && ctype) MHD_add_response_header(resp, "Content-Type", ctype);
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    if (ctype && strncmp(ctype, "text/html", 9) == 0)
        MHD_add_response_header(resp, "Content-Security-Policy", HTML_CSP);
    enum MHD_Result r = MHD_queue_response(conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return r;
}

/* Queues a file answer: fd (taken) streamed from its start for len bytes. */
static enum MHD_Result send_file(struct MHD_Connection *conn, int status, int fd, uint64_t len,
                                 const char *ctype)
{
    struct MHD_Response *resp = MHD_create_response_from_fd64(len, fd);
    if (!resp) {
        close(fd);
        return MHD_NO;
    }
    if (ctype) MHD_add_response_header(resp, "Content-Type", ctype);
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    enum MHD_Result r = MHD_queue_response(conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return r;
}

static enum MHD_Result send_json(struct MHD_Connection *conn, int status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    if (body) json_decref(body);
    return send_text(conn, status, text, text ? strlen(text) : 0, "application/json");
}

static enum MHD_Result send_error(struct MHD_Connection *conn, int status, const char *msg)
{
    return send_json(conn, status, json_pack("{s:s}", "error", msg));
}

/* Matches path against pattern segment by segment; `*` captures one segment. */
static bool match(const char *pattern, const char *path, pb_admin_req *req)
{
    req->nsegs = 0;
    static __thread char caps[8][256];
    while (*pattern && *path) {
        if (*pattern != '/' || *path != '/') return false;
        pattern++;
        path++;
        const char *pe = strchrnul(pattern, '/'), *se = strchrnul(path, '/');
        if (pe - pattern == 1 && *pattern == '*') {
            size_t n = (size_t)(se - path);
            if (n == 0 || n >= sizeof caps[0] || req->nsegs >= 8) return false;
            memcpy(caps[req->nsegs], path, n);
            caps[req->nsegs][n] = '\0';
            req->segs[req->nsegs] = caps[req->nsegs];
            req->nsegs++;
        } else if (pe - pattern != se - path || memcmp(pattern, path, (size_t)(pe - pattern))) {
            return false;
        }
        pattern = pe;
        path = se;
    }
    return *pattern == '\0' && *path == '\0';
}

/* Whether a public route serves method and path. */
static bool public_route(const pb_admin_http *a, const char *method, const char *path)
{
    pb_admin_req req = {0};
    for (size_t i = 0; i < a->nroutes; i++)
        if (a->routes[i].public_ && strcmp(a->routes[i].method, method) == 0 &&
            match(a->routes[i].pattern, path, &req))
            return true;
    return false;
}

static bool token_ok(pb_admin_http *a, struct MHD_Connection *conn)
{
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    pthread_mutex_lock(&a->token_mu);
    bool ok = !a->token;
    if (!ok && h && strncmp(h, "Bearer ", 7) == 0) {
        h += 7;
        size_t n = strlen(h), m = strlen(a->token);
        ok = n == m && sodium_memcmp(h, a->token, n) == 0;
    }
    pthread_mutex_unlock(&a->token_mu);
    return ok;
}

void pb_admin_http_set_token(pb_admin_http *a, const char *token)
{
    char *fresh = token && *token ? pb_xstrdup(token) : NULL;
    pthread_mutex_lock(&a->token_mu);
    char *old = a->token;
    a->token = fresh;
    pthread_mutex_unlock(&a->token_mu);
    if (old) sodium_memzero(old, strlen(old));
    free(old);
}

static json_t *error_json(int *status, int code, const char *msg)
{
    *status = code;
    return error_object(msg);
}

/* route_request's work: returns the JSON answer (new reference or NULL); a handler's
 * text answer and the status are left in *resp. */
static json_t *route_json(pb_admin_http *a, const char *method, const char *url,
                          const char *(*arg)(void *, const char *), void *arg_ctx,
                          const char *body_text, size_t body_len, bool resumed, bool timed_out,
                          struct pb_admin_slot *slot, pb_admin_resp *resp)
{
    int *status = &resp->status;
    pb_admin_req req = {.method = method,
                        .path = url,
                        .arg = arg,
                        .arg_ctx = arg_ctx,
                        .resumed = resumed,
                        .timed_out = timed_out,
                        .state = slot->t ? slot->t->state : NULL,
                        .slot = slot};
    const struct aroute *route = NULL;
    bool path_known = false;
    for (size_t i = 0; i < a->nroutes; i++) {
        if (!match(a->routes[i].pattern, url, &req)) continue;
        path_known = true;
        if (strcmp(a->routes[i].method, method) == 0) {
            route = &a->routes[i];
            break;
        }
    }
    if (!route) {
        if (path_known) return error_json(status, 405, "method not allowed on this path");
        return error_json(status, 404, "no such endpoint");
    }
    if (!match(route->pattern, url, &req)) return error_json(status, 500, "routing error");
    json_t *body = NULL;
    if (body_len > 0) {
        json_error_t jerr;
        body = json_loadb(body_text, body_len, JSON_REJECT_DUPLICATES, &jerr);
        if (!body) {
            char msg[300];
            snprintf(msg, sizeof msg, "malformed JSON: %s (at byte %d)", jerr.text, jerr.position);
            return error_json(status, 400, msg);
        }
    }
    req.body = body;
    pb_admin_resp r = {.status = 200};
    route->fn(route->ctx, &req, &r);
    if (body) json_decref(body);
    *status = r.status;
    resp->text = r.text;
    resp->text_len = r.text_len;
    resp->content_type = r.content_type;
    resp->file = r.file;
    resp->file_fd = r.file_fd;
    resp->file_len = r.file_len;
    resp->wait_ms = !r.text && !r.body && !r.file && r.wait_ms > 0 ? r.wait_ms : 0;
    if (r.text || r.file) {
        json_decref(r.body);
        return NULL;
    }
    return r.body;
}

/* Routes one request; fills *out (its body or text is the caller's; wait_ms > 0: nothing
 * yet, the handler asked to run again later). */
static void route_request(pb_admin_http *a, const char *method, const char *url,
                          const char *(*arg)(void *, const char *), void *arg_ctx,
                          const char *body_text, size_t body_len, bool resumed, bool timed_out,
                          struct pb_admin_slot *slot, pb_admin_resp *out)
{
    *out = (pb_admin_resp){.status = 200};
    out->body = route_json(a, method, url, arg, arg_ctx, body_text, body_len, resumed, timed_out,
                           slot, out);
}

static int64_t mono_ms(void);

static uint64_t wake_gen(pb_admin_http *a)
{
    pthread_mutex_lock(&a->wait_mu);
    uint64_t g = a->wake_gen;
    pthread_mutex_unlock(&a->wait_mu);
    return g;
}

void pb_admin_http_dispatch(pb_admin_http *a, const char *method, const char *path,
                            const char *const *args, const char *body, size_t body_len, int *status,
                            char **answer)
{
    pb_admin_resp r;
    bool resumed = false, timed_out = false;
    int64_t until = 0;
    struct pb_admin_slot slot = {a, NULL};
    bool waited = false;
    for (;;) { /* in process: a handler's wait is a wait on wait_cv */
        uint64_t gen = wake_gen(a);
        route_request(a, method, path, list_arg, (void *)args, body, body_len, resumed, timed_out,
                      &slot, &r);
        if (slot.t && !waited && unanswered(&r)) { /* wait for its completion */
            waited = true;
            pthread_mutex_lock(&a->wait_mu);
            while (!slot.t->done && !a->stopping)
                pthread_cond_wait(&a->wait_cv, &a->wait_mu);
            timed_out = !slot.t->done;
            pthread_mutex_unlock(&a->wait_mu);
            resumed = true;
            continue;
        }
        if (!r.wait_ms || timed_out) break;
        if (!until) until = mono_ms() + r.wait_ms;
        pthread_mutex_lock(&a->wait_mu);
        while (a->wake_gen == gen && !a->stopping && mono_ms() < until) {
            struct timespec ts = {.tv_sec = until / 1000, .tv_nsec = (until % 1000) * 1000000};
            pthread_cond_timedwait(&a->wait_cv, &a->wait_mu, &ts);
        }
        timed_out = a->stopping || mono_ms() >= until;
        pthread_mutex_unlock(&a->wait_mu);
        resumed = true;
    }
    if (slot.t) {
        pthread_mutex_lock(&a->wait_mu);
        ticket_unref_locked(slot.t);
        pthread_mutex_unlock(&a->wait_mu);
    }
    *status = r.status;
    if (r.file) { /* in process: the file's bytes as the answer */
        pb_buf b = PB_BUF_INIT;
        char chunk[65536];
        ssize_t n;
        while (b.len < r.file_len && (n = read(r.file_fd, chunk, sizeof chunk)) > 0)
            pb_buf_append(&b, chunk, (size_t)n);
        close(r.file_fd);
        pb_buf_append(&b, "", 1);
        *answer = (char *)pb_buf_steal(&b, NULL);
        return;
    }
    if (r.text) {
        *answer = pb_xstrndup(r.text, r.text_len);
        free(r.text);
        return;
    }
    *answer = r.body ? json_dumps(r.body, JSON_COMPACT) : NULL;
    if (r.body) json_decref(r.body);
}

/* ---- the request deadline --------------------------------------------------------------- */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct aconn *aconn_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

static void set_deadline(pb_admin_http *a, struct MHD_Connection *conn, bool arm)
{
    struct aconn *c = aconn_of(conn);
    if (!c) return;
    pthread_mutex_lock(&a->conns_mu);
    c->deadline_ms = arm ? mono_ms() + (int64_t)a->request_timeout_s * 1000 : 0;
    pthread_mutex_unlock(&a->conns_mu);
}

static bool past_deadline(pb_admin_http *a, struct MHD_Connection *conn)
{
    struct aconn *c = aconn_of(conn);
    if (!c) return false;
    pthread_mutex_lock(&a->conns_mu);
    bool late = c->cut || (c->deadline_ms && mono_ms() >= c->deadline_ms);
    pthread_mutex_unlock(&a->conns_mu);
    return late;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    pb_admin_http *a = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        struct aconn *c = pb_xcalloc(1, sizeof *c);
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        c->fd = ci ? ci->connect_fd : -1;
        c->deadline_ms = mono_ms() + (int64_t)a->request_timeout_s * 1000;
        pthread_mutex_lock(&a->conns_mu);
        c->next = a->conns;
        if (a->conns) a->conns->prev = c;
        a->conns = c;
        pthread_mutex_unlock(&a->conns_mu);
        *socket_context = c;
        return;
    }
    struct aconn *c = *socket_context;
    if (!c) return;
    pthread_mutex_lock(&a->conns_mu); /* no shutdown of this fd after this point */
    if (c->prev)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    pthread_mutex_unlock(&a->conns_mu);
    free(c);
    *socket_context = NULL;
}

/* Puts r, on conn, at the head of the waiting list and suspends conn (wait_mu held). */
static void suspend_listed(pb_admin_http *a, struct areq *r, struct MHD_Connection *conn)
{
    r->conn = conn;
    r->listed = true;
    r->wprev = NULL;
    r->wnext = a->waiting;
    if (a->waiting) a->waiting->wprev = r;
    a->waiting = r;
    MHD_suspend_connection(conn);
}

/* Takes r off the waiting list (wait_mu held). */
static void unlink_locked(pb_admin_http *a, struct areq *r)
{
    if (r->wprev)
        r->wprev->wnext = r->wnext;
    else
        a->waiting = r->wnext;
    if (r->wnext) r->wnext->wprev = r->wprev;
    r->wprev = r->wnext = NULL;
    r->listed = false;
}

/* Takes r off the waiting list (wait_mu held) and lets libmicrohttpd run it again. */
static void resume_locked(pb_admin_http *a, struct areq *r, bool timed_out)
{
    unlink_locked(a, r);
    r->resumed = true;
    r->timed_out = r->timed_out || timed_out;
    MHD_resume_connection(r->conn);
}

/* Resumes the waiting requests: all of them (all), or those past their deadline at now. */
static void resume_waiting(pb_admin_http *a, bool all, int64_t now)
{
    pthread_mutex_lock(&a->wait_mu);
    for (struct areq *r = a->waiting, *next; r; r = next) {
        next = r->wnext;
        bool late = now >= r->wait_until;
        if (all || late) resume_locked(a, r, late || a->stopping);
    }
    pthread_mutex_unlock(&a->wait_mu);
}

void pb_admin_http_wake(pb_admin_http *a)
{
    if (!a) return;
    pthread_mutex_lock(&a->wait_mu);
    a->wake_gen++;
    pthread_cond_broadcast(&a->wait_cv);
    for (struct areq *r = a->waiting, *next; r; r = next) {
        next = r->wnext;
        if (!r->ticket) resume_locked(a, r, false); /* a ticket's: only its completion */
    }
    pthread_mutex_unlock(&a->wait_mu);
}

/* Shuts down every connection whose request did not arrive in time, and resumes the
 * waiting requests past their deadline, until stopped. */
static void *sweeper_main(void *arg)
{
    pthread_setname_np(pthread_self(), "pb-adm-sweeper");
    pb_admin_http *a = arg;
    pthread_mutex_lock(&a->conns_mu);
    while (!a->sweeper_stop) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += 200 * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&a->sweep_cv, &a->conns_mu, &until);
        int64_t now = mono_ms();
        for (struct aconn *c = a->conns; c; c = c->next) {
            if (c->cut || !c->deadline_ms || now < c->deadline_ms) continue;
            c->cut = true;
            if (c->fd >= 0) shutdown(c->fd, SHUT_RDWR);
        }
        pthread_mutex_unlock(&a->conns_mu);
        resume_waiting(a, false, now);
        pthread_mutex_lock(&a->conns_mu);
    }
    pthread_mutex_unlock(&a->conns_mu);
    return NULL;
}

/* ---- browsers ------------------------------------------------------------------------------ */

/* A Host header naming an address (IPv4, [IPv6]) or localhost, with or without a port. */
static bool host_ok(const char *host)
{
    char h[128];
    size_t n = strlen(host);
    if (n == 0 || n >= sizeof h) return false;
    if (host[0] == '[') {
        const char *close = strchr(host, ']');
        if (!close) return false;
        size_t len = (size_t)(close - host - 1);
        memcpy(h, host + 1, len);
        h[len] = '\0';
        unsigned char b[16];
        return inet_pton(AF_INET6, h, b) == 1 && (close[1] == '\0' || close[1] == ':');
    }
    const char *colon = strchr(host, ':');
    size_t len = colon ? (size_t)(colon - host) : n;
    memcpy(h, host, len);
    h[len] = '\0';
    unsigned char b[4];
    return strcasecmp(h, "localhost") == 0 || inet_pton(AF_INET, h, b) == 1;
}

/* Refusals for browsers (see the file comment); NULL when the request may go on. */
static const char *browser_refusal(pb_admin_http *a, struct MHD_Connection *conn,
                                   const char *method, int *status)
{
    const char *host = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Host");
    if (a->unix_fd < 0 && host && !host_ok(host)) {
        *status = 403;
        return "Host header not accepted: reach this listener by its address";
    }
    if (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0) return NULL;
    const char *origin = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
    if (origin) {
        bool same =
            host &&
            ((strncasecmp(origin, "http://", 7) == 0 && strcasecmp(origin + 7, host) == 0) ||
             (strncasecmp(origin, "https://", 8) == 0 && strcasecmp(origin + 8, host) == 0));
        if (!same) {
            *status = 403;
            return "cross-origin request refused";
        }
    }
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Transfer-Encoding");
    const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
    bool body = (cl && strtoull(cl, NULL, 10) > 0) || te;
    if (body && (!ct || strncasecmp(ct, "application/json", 16) != 0 ||
                 (ct[16] != '\0' && ct[16] != ';'))) {
        *status = 415;
        return "the body must be application/json";
    }
    return NULL;
}

/* A refusal decided from the headers. When a body follows (a length up to DISCARD_MAX, or
 * chunked), it is read and dropped first and the answer sent after it: answered at once,
 * the connection would be closed with the body still arriving, and a client still sending
 * then gets a reset rather than the answer. A longer body is refused at once. */
static enum MHD_Result refuse(struct MHD_Connection *conn, struct areq *r, int status,
                              const char *why)
{
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Transfer-Encoding");
    uint64_t declared = cl ? strtoull(cl, NULL, 10) : 0;
    if ((declared > 0 || (te && !cl)) && declared <= DISCARD_MAX) {
        r->refuse_status = status;
        r->refuse_msg = why;
        return MHD_YES;
    }
    return send_error(conn, status, why);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    pb_admin_http *a = cls;
    struct areq *r = *con_cls;
    if (!r) {
        r = pb_xcalloc(1, sizeof *r);
        *con_cls = r;
        int bst = 0;
        const char *why = browser_refusal(a, conn, method, &bst);
        if (why) return refuse(conn, r, bst, why);
        if (!token_ok(a, conn) && !public_route(a, method, url))
            return refuse(conn, r, 401, "missing or wrong bearer token");
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > a->max_body)
            return refuse(conn, r, 413, "body over the size limit");
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (past_deadline(a, conn)) return MHD_NO; /* a body trickling in: cut */
        if (r->refuse_status) { /* dropped; a chunked one only up to DISCARD_MAX */
            r->discarded += *upload_data_size;
            *upload_data_size = 0;
            return r->discarded > DISCARD_MAX ? MHD_NO : MHD_YES;
        }
        if (!r->too_big && r->body.len + *upload_data_size <= a->max_body) {
            pb_buf_append(&r->body, upload_data, *upload_data_size);
        } else {
            r->too_big = true;
            pb_buf_free(&r->body);
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    set_deadline(a, conn, false); /* complete: no deadline while it is handled */
    if (r->refuse_status) return send_error(conn, r->refuse_status, r->refuse_msg);
    if (r->too_big) return send_error(conn, 413, "body over the size limit");

    for (;;) {
        uint64_t gen = wake_gen(a);
        pthread_mutex_lock(&a->wait_mu);
        bool resumed = r->resumed, timed_out = r->timed_out || a->stopping;
        if (r->ticket) timed_out = !r->ticket->done; /* only run again when done or stopping */
        pthread_mutex_unlock(&a->wait_mu);
        pb_admin_resp resp;
        struct pb_admin_slot slot = {a, r->ticket};
        route_request(a, method, url, mhd_arg, conn, (const char *)r->body.data, r->body.len,
                      resumed, timed_out, &slot, &resp);
        if (slot.t && !r->ticket && unanswered(&resp)) {
            /* suspended until its completion (or the listener's stop) resumes it */
            r->ticket = slot.t;
            pb_buf_free(&r->body); /* the handler runs again from its ticket's state */
            pthread_mutex_lock(&a->wait_mu);
            if (r->ticket->done || a->stopping) { /* already: run it again now */
                r->resumed = true;
                pthread_mutex_unlock(&a->wait_mu);
                continue;
            }
            r->ticket->req = r;
            r->wait_until = INT64_MAX; /* no deadline: the completion comes */
            suspend_listed(a, r, conn);
            pthread_mutex_unlock(&a->wait_mu);
            return MHD_YES;
        }
        if (slot.t && !r->ticket) r->ticket = slot.t; /* answered at once: released below */
        if (resp.wait_ms && !timed_out && !r->ticket) {
            if (!r->wait_until) r->wait_until = mono_ms() + resp.wait_ms;
            pthread_mutex_lock(&a->wait_mu);
            if (a->wake_gen != gen || a->stopping) { /* woken while it looked: again */
                r->resumed = true;
                pthread_mutex_unlock(&a->wait_mu);
                continue;
            }
            suspend_listed(a, r, conn);
            pthread_mutex_unlock(&a->wait_mu);
            return MHD_YES;
        }
        if (resp.file)
            return send_file(conn, resp.status, resp.file_fd, resp.file_len, resp.content_type);
        if (resp.text)
            return send_text(conn, resp.status, resp.text, resp.text_len, resp.content_type);
        return send_json(conn, resp.status, resp.body);
    }
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    set_deadline(cls, conn, true); /* the next request on it has its time from now */
    struct areq *r = *con_cls;
    if (!r) return;
    pb_admin_http *a = cls;
    pthread_mutex_lock(&a->wait_mu); /* a request that ended while waiting (shutdown) */
    if (r->listed) unlink_locked(a, r);
    if (r->ticket) { /* its completion may still come: it finds the request gone */
        r->ticket->req = NULL;
        ticket_unref_locked(r->ticket);
    }
    pthread_mutex_unlock(&a->wait_mu);
    pb_buf_free(&r->body);
    free(r);
    *con_cls = NULL;
}

pb_admin_http *pb_admin_http_new(const pb_admin_http_opts *opts)
{
    pb_admin_http *a = pb_xcalloc(1, sizeof *a);
    a->name = pb_xstrdup(opts->name ? opts->name : "admin");
    a->listen = pb_xstrdup(opts->listen ? opts->listen : "127.0.0.1:2290");
    pthread_mutex_init(&a->token_mu, NULL);
    a->token = opts->token && *opts->token ? pb_xstrdup(opts->token) : NULL;
    a->max_body = opts->max_body ? opts->max_body : 1024 * 1024;
    a->threads = opts->threads ? opts->threads : 4;
    pthread_mutex_init(&a->wait_mu, NULL);
    a->request_timeout_s = opts->request_timeout_s ? opts->request_timeout_s : 30;
    a->max_pending = opts->max_pending ? opts->max_pending : 256;
    a->unix_fd = -1;
    pthread_mutex_init(&a->conns_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->sweep_cv, &ca);
    pthread_cond_init(&a->wait_cv, &ca);
    pthread_condattr_destroy(&ca);
    return a;
}

static void add_route(pb_admin_http *a, const char *method, const char *pattern, pb_admin_fn fn,
                      void *ctx, bool public_)
{
    a->routes = pb_xrealloc(a->routes, (a->nroutes + 1) * sizeof *a->routes);
    a->routes[a->nroutes++] =
        (struct aroute){pb_xstrdup(method), pb_xstrdup(pattern), fn, ctx, public_};
}

void pb_admin_http_route(pb_admin_http *a, const char *method, const char *pattern, pb_admin_fn fn,
                         void *ctx)
{
    add_route(a, method, pattern, fn, ctx, false);
}

void pb_admin_http_route_public(pb_admin_http *a, const char *method, const char *pattern,
                                pb_admin_fn fn, void *ctx)
{
    add_route(a, method, pattern, fn, ctx, true);
}

unsigned pb_admin_http_connections(pb_admin_http *a)
{
    if (!a || !a->mhd) return 0;
    const union MHD_DaemonInfo *i =
        MHD_get_daemon_info(a->mhd, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    return i ? i->num_connections : 0;
}

static bool is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)ss;
        return (ntohl(a4->sin_addr.s_addr) >> 24) == 127;
    }
    const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)ss;
    return IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr);
}

pb_err pb_admin_http_check_listen(const char *name, const char *listen)
{
    if (strncmp(listen, "unix:", 5) == 0) {
        struct sockaddr_un sun;
        if (listen[5] != '/' || strlen(listen + 5) >= sizeof sun.sun_path) {
            PB_ERROR(NULL, "%s_listen %s: want unix: and an absolute path of at most %zu bytes",
                     name, listen, sizeof sun.sun_path - 1);
            return PB_ERR_CONFIG;
        }
        return PB_OK;
    }
    struct sockaddr_storage ss;
    unsigned sslen = 0;
    if (pb_hrpc_parse_listen(listen, &ss, &sslen) != PB_OK || !is_loopback(&ss)) {
        PB_ERROR(NULL,
                 "%s_listen %s: want a loopback IP:PORT (127.0.0.1:PORT, [::1]:PORT) or "
                 "unix:/path: the %s listener is never served on other addresses",
                 name, listen, name);
        return PB_ERR_CONFIG;
    }
    return PB_OK;
}

static pb_err open_unix(pb_admin_http *a, const char *path)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sun.sun_path) return PB_ERR_CONFIG;
    strcpy(sun.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return PB_ERR_IO;
    unlink(path); /* a stale socket from an earlier run */
    mode_t old = umask(0077);
    int rc = bind(fd, (struct sockaddr *)&sun, sizeof sun);
    umask(old);
    if (rc != 0 || listen(fd, 64) != 0) {
        PB_ERROR(NULL, "cannot listen on unix:%s: %s", path, strerror(errno));
        close(fd);
        return PB_ERR_IO;
    }
    a->unix_fd = fd;
    a->unix_path = pb_xstrdup(path);
    return PB_OK;
}

pb_err pb_admin_http_start(pb_admin_http *a)
{
    unsigned flags =
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ITC | MHD_ALLOW_SUSPEND_RESUME;
    struct sockaddr_storage ss;
    unsigned sslen = 0;
    pb_err err;
    if (strncmp(a->listen, "unix:", 5) == 0) {
        if ((err = open_unix(a, a->listen + 5)) != PB_OK) return err;
    } else {
        if (pb_hrpc_parse_listen(a->listen, &ss, &sslen) != PB_OK || !is_loopback(&ss)) {
            PB_ERROR(NULL, "%s_listen %s: want a loopback IP:PORT or unix:/path", a->name,
                     a->listen);
            return PB_ERR_CONFIG;
        }
        if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    }
    if (a->unix_fd >= 0) {
        a->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, a, MHD_OPTION_LISTEN_SOCKET,
                                  a->unix_fd, MHD_OPTION_THREAD_POOL_SIZE, a->threads,
                                  MHD_OPTION_CONNECTION_TIMEOUT, 120u, MHD_OPTION_NOTIFY_COMPLETED,
                                  on_completed, a, MHD_OPTION_NOTIFY_CONNECTION, on_connection, a,
                                  MHD_OPTION_END);
    } else {
        a->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, a, MHD_OPTION_SOCK_ADDR,
                                  (struct sockaddr *)&ss, MHD_OPTION_THREAD_POOL_SIZE, a->threads,
                                  MHD_OPTION_CONNECTION_TIMEOUT, 120u, MHD_OPTION_NOTIFY_COMPLETED,
                                  on_completed, a, MHD_OPTION_NOTIFY_CONNECTION, on_connection, a,
                                  MHD_OPTION_END);
    }
    if (!a->mhd) {
        PB_ERROR(NULL,
                 "cannot start %s listener on %s: %s: is another postboxd or another program "
                 "serving there? Stop it, or change %s_listen",
                 a->name, a->listen, strerror(errno), a->name);
        return PB_ERR_IO;
    }
    a->sweeper_stop = false;
    if (pthread_create(&a->sweeper, NULL, sweeper_main, a) != 0) {
        PB_ERROR(NULL, "cannot start the %s listener's sweeper thread", a->name);
        MHD_stop_daemon(a->mhd);
        a->mhd = NULL;
        return PB_ERR_INTERNAL;
    }
    a->sweeper_started = true;
    PB_INFO(NULL, "%s listener on %s", a->name, a->listen);
    return PB_OK;
}

void pb_admin_http_stop(pb_admin_http *a)
{
    if (!a || !a->mhd) return;
    /* the waiting requests answer with what they have (libmicrohttpd wants every
     * suspended connection resumed before it stops) */
    pthread_mutex_lock(&a->wait_mu);
    a->stopping = true;
    pthread_cond_broadcast(&a->wait_cv);
    pthread_mutex_unlock(&a->wait_mu);
    resume_waiting(a, true, mono_ms());
    for (int i = 0; i < 200; i++) { /* bounded: 2 s for them to be answered */
        pthread_mutex_lock(&a->wait_mu);
        bool none = !a->waiting;
        pthread_mutex_unlock(&a->wait_mu);
        if (none) break;
        resume_waiting(a, true, mono_ms());
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    MHD_stop_daemon(a->mhd);
    a->mhd = NULL;
    if (a->sweeper_started) {
        pthread_mutex_lock(&a->conns_mu);
        a->sweeper_stop = true;
        pthread_cond_signal(&a->sweep_cv);
        pthread_mutex_unlock(&a->conns_mu);
        pthread_join(a->sweeper, NULL);
        a->sweeper_started = false;
    }
    if (a->unix_fd >= 0) {
        close(a->unix_fd);
        a->unix_fd = -1;
        unlink(a->unix_path);
    }
}

void pb_admin_http_free(pb_admin_http *a)
{
    if (!a) return;
    pb_admin_http_stop(a);
    pthread_mutex_lock(&a->wait_mu); /* completions still to come use a */
    while (a->pending > 0)
        pthread_cond_wait(&a->wait_cv, &a->wait_mu);
    pthread_mutex_unlock(&a->wait_mu);
    for (size_t i = 0; i < a->nroutes; i++) {
        free(a->routes[i].method);
        free(a->routes[i].pattern);
    }
    free(a->routes);
    free(a->listen);
    free(a->name);
    if (a->token) sodium_memzero(a->token, strlen(a->token));
    free(a->token);
    pthread_mutex_destroy(&a->token_mu);
    pthread_cond_destroy(&a->sweep_cv);
    pthread_cond_destroy(&a->wait_cv);
    pthread_mutex_destroy(&a->wait_mu);
    pthread_mutex_destroy(&a->conns_mu);
    free(a->unix_path);
    free(a);
}
