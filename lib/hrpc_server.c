/*
 * hrpc_server - unary hRPC server on libmicrohttpd (see hrpc_server.h).
 *
 * Design: libmicrohttpd calls on_request first with the headers only; every refusal that
 * does not need the body (path, method, headers, declared length, overload) is queued
 * right then, so libmicrohttpd never reads that body and closes the connection after the
 * answer. Otherwise the body is copied into a per-request buffer that may never exceed
 * max_body, then authentication and the handler run on the final call.
 *
 * Untrusted input: the whole HTTP request. Sizes are checked before anything is buffered;
 * the Authorization header is passed to auth.c, which bounds it again.
 */
#include "hrpc_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fault.h"
#include "log.h"
#include "mem.h"
#include "wire.h"

#define ID_BAD_REQUEST "hrpc.http.bad-unary-request"
#define ID_NOT_FOUND "hrpc.not-found"
#define ID_EXHAUSTED "hrpc.resource-exhausted"
#define ID_UNAVAILABLE "hrpc.unavailable"
#define ID_INTERNAL "hrpc.internal-server-error"

struct route {
    char *path;
    bool with_auth;
    pb_hrpc_handler_fn fn;
    void *ctx;
};

struct pb_hrpc_server {
    pb_hrpc_server_opts opts; /* strings owned */
    pb_hrpc_auth auth;
    bool has_auth;
    struct route *routes;
    size_t nroutes;
    struct MHD_Daemon *mhd;
    char *tls_cert, *tls_key; /* file contents */
    atomic_uint inflight;
    atomic_bool stopping;
};

/* Per-request state, libmicrohttpd's con_cls. */
struct req {
    const struct route *route;
    pb_buf body;
    bool too_big;
    bool counted; /* holds an inflight slot */
    void (*on_done)(void *ctx, bool sent_ok);
    void *on_done_ctx;
};

void pb_hrpc_reply_error(pb_hrpc_reply *rep, int status, const char *identifier, const char *fmt,
                         ...)
{
    rep->status = status;
    rep->identifier = identifier;
    free(rep->message);
    rep->message = NULL;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&rep->message, fmt, ap) < 0) abort();
        va_end(ap);
    }
}

static void reply_clear(pb_hrpc_reply *rep)
{
    pb_buf_free(&rep->body);
    free(rep->message);
    memset(rep, 0, sizeof *rep);
}

/* Queues `rep` on the connection, building the hrpc.v1.Error body for failures. */
static enum MHD_Result send_reply(struct MHD_Connection *conn, pb_hrpc_reply *rep)
{
    pb_buf out = PB_BUF_INIT;
    if (rep->status >= 200 && rep->status < 300) {
        out = rep->body;
        rep->body = (pb_buf)PB_BUF_INIT;
    } else {
        pb_buf details = PB_BUF_INIT;
        if (rep->retry_after > 0) pb_wire_retry_info_encode(rep->retry_after, &details);
        pb_wire_error_encode(rep->identifier ? rep->identifier : ID_INTERNAL,
                             rep->message ? rep->message : "", details.data, details.len, &out);
        pb_buf_free(&details);
    }
    size_t len = 0;
    uint8_t *data = pb_buf_steal(&out, &len);
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, data ? data : (void *)"", data ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(data);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/hrpc");
    MHD_add_response_header(resp, "Hrpc-Version", "1");
    enum MHD_Result r = MHD_queue_response(conn, (unsigned)rep->status, resp);
    MHD_destroy_response(resp);
    return r;
}

static enum MHD_Result send_error(struct MHD_Connection *conn, int status, const char *identifier,
                                  uint32_t retry_after, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static enum MHD_Result send_error(struct MHD_Connection *conn, int status, const char *identifier,
                                  uint32_t retry_after, const char *fmt, ...)
{
    pb_hrpc_reply rep = {0};
    rep.status = status;
    rep.identifier = identifier;
    rep.retry_after = retry_after;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&rep.message, fmt, ap) < 0) abort();
    va_end(ap);
    enum MHD_Result r = send_reply(conn, &rep);
    reply_clear(&rep);
    return r;
}

static const struct route *find_route(const pb_hrpc_server *s, const char *path)
{
    for (size_t i = 0; i < s->nroutes; i++)
        if (strcmp(s->routes[i].path, path) == 0) return &s->routes[i];
    return NULL;
}

/* Content-Type must be exactly application/hrpc, case-insensitively, no parameters. */
static bool content_type_ok(const char *ct)
{
    return ct && strcasecmp(ct, "application/hrpc") == 0;
}

static bool parse_size(const char *s, uint64_t *out)
{
    if (!s || !*s) return false;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return false;
        if (v > (UINT64_MAX - 9) / 10) return false;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return true;
}

/* First call of a request: everything that can be refused from the headers. */
static enum MHD_Result on_headers(pb_hrpc_server *s, struct MHD_Connection *conn, const char *url,
                                  const char *method, struct req *r)
{
    r->route = find_route(s, url);
    if (!r->route) return send_error(conn, 404, ID_NOT_FOUND, 0, "no such method: %.200s", url);
    if (strcmp(method, "POST") != 0)
        return send_error(conn, 405, ID_BAD_REQUEST, 0, "method %.16s not allowed: use POST",
                          method);
    const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
    if (!content_type_ok(ct))
        return send_error(conn, 400, ID_BAD_REQUEST, 0,
                          "Content-Type must be application/hrpc, got %.100s", ct ? ct : "none");
    const char *ver = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Hrpc-Version");
    if (ver && strcmp(ver, "1") != 0)
        return send_error(conn, 400, ID_BAD_REQUEST, 0, "unsupported Hrpc-Version %.20s", ver);
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    uint64_t declared = 0;
    if (cl && parse_size(cl, &declared) && declared > s->opts.max_body)
        return send_error(conn, 413, ID_EXHAUSTED, 0, "body of %llu bytes over the limit of %zu",
                          (unsigned long long)declared, s->opts.max_body);
    if (atomic_load(&s->stopping))
        return send_error(conn, 503, ID_UNAVAILABLE, 5, "server is shutting down");
    unsigned n = atomic_fetch_add(&s->inflight, 1);
    r->counted = true;
    if (n >= s->opts.max_inflight)
        return send_error(conn, 503, ID_UNAVAILABLE, 1, "overloaded: %u requests in flight", n);
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    pb_hrpc_server *s = cls;
    struct req *r = *con_cls;
    if (!r) {
        r = pb_xcalloc(1, sizeof *r);
        *con_cls = r;
        return on_headers(s, conn, url, method, r);
    }
    if (*upload_data_size > 0) {
        if (!r->too_big && r->body.len + *upload_data_size <= s->opts.max_body) {
            pb_buf_append(&r->body, upload_data, *upload_data_size);
        } else {
            r->too_big = true;
            pb_buf_free(&r->body);
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (r->too_big)
        return send_error(conn, 413, ID_EXHAUSTED, 0, "body over the limit of %zu bytes",
                          s->opts.max_body);

    pb_hrpc_request hreq = {.path = url, .body = r->body.data, .body_len = r->body.len};
    hreq.authorization =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    pb_auth_result ares;
    if (r->route->with_auth) {
        const char *authz =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        if (!s->has_auth)
            return send_error(conn, 500, ID_INTERNAL, 0, "authentication not configured");
        pb_auth_check(authz, (uint64_t)time(NULL), s->auth.policy, s->auth.key_fn, s->auth.key_ctx,
                      &ares);
        if (ares.verdict != PB_AUTH_OK) {
            PB_INFO(ares.server_id[0] ? ares.server_id : NULL, "%s refused: %s (%s)", url,
                    pb_auth_verdict_message(ares.verdict),
                    pb_auth_verdict_identifier(ares.verdict));
            uint32_t ra = 0;
            if (ares.verdict == PB_AUTH_KEY_UNAVAILABLE)
                ra = s->auth.policy->key_retry_after_s ? s->auth.policy->key_retry_after_s : 30;
            return send_error(conn, (unsigned)pb_auth_verdict_status(ares.verdict),
                              pb_auth_verdict_identifier(ares.verdict), ra, "%s",
                              pb_auth_verdict_message(ares.verdict));
        }
        hreq.peer = ares.server_id;
        if (s->auth.on_authenticated) s->auth.on_authenticated(s->auth.cb_ctx, ares.server_id);
    }

    pb_hrpc_reply rep = {0};
    rep.status = 200;
    if (pb_fault("hrpc.internal"))
        pb_hrpc_reply_error(&rep, 500, ID_INTERNAL, "injected fault");
    else
        r->route->fn(r->route->ctx, &hreq, &rep);
    if (rep.status >= 500)
        PB_WARN(hreq.peer, "%s answered %d %s: %s", url, rep.status,
                rep.identifier ? rep.identifier : "", rep.message ? rep.message : "");
    r->on_done = rep.on_done;
    r->on_done_ctx = rep.on_done_ctx;
    enum MHD_Result res = send_reply(conn, &rep);
    reply_clear(&rep);
    return res;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    pb_hrpc_server *s = cls;
    struct req *r = *con_cls;
    if (!r) return;
    if (r->on_done) r->on_done(r->on_done_ctx, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK);
    if (r->counted) atomic_fetch_sub(&s->inflight, 1);
    pb_buf_free(&r->body);
    free(r);
    *con_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    PB_DEBUG(NULL, "http: %s", msg);
}

pb_err pb_hrpc_parse_listen(const char *listen, struct sockaddr_storage *ss, unsigned *len)
{
    char host[128];
    const char *colon = strrchr(listen, ':');
    if (!colon || colon == listen) return PB_ERR_CONFIG;
    size_t hl = (size_t)(colon - listen);
    if (hl >= sizeof host) return PB_ERR_CONFIG;
    memcpy(host, listen, hl);
    host[hl] = '\0';
    uint64_t port;
    if (!parse_size(colon + 1, &port) || port > 65535) return PB_ERR_CONFIG;
    memset(ss, 0, sizeof *ss);
    if (host[0] == '[') {
        if (hl < 3 || host[hl - 1] != ']') return PB_ERR_CONFIG;
        host[hl - 1] = '\0';
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, host + 1, &a6->sin6_addr) != 1) return PB_ERR_CONFIG;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof *a6;
        return PB_OK;
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    if (strcmp(host, "localhost") == 0) strcpy(host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &a4->sin_addr) != 1) return PB_ERR_CONFIG;
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    *len = sizeof *a4;
    return PB_OK;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    pb_buf b = PB_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0 && b.len < (1u << 20))
        pb_buf_append(&b, chunk, n);
    fclose(f);
    pb_buf_append(&b, "", 1);
    return (char *)pb_buf_steal(&b, NULL);
}

pb_err pb_hrpc_server_new(const pb_hrpc_server_opts *opts, const pb_hrpc_auth *auth,
                          pb_hrpc_server **out)
{
    pb_hrpc_server *s = pb_xcalloc(1, sizeof *s);
    s->opts = *opts;
    s->opts.listen = pb_xstrdup(opts->listen ? opts->listen : "127.0.0.1:2289");
    s->opts.tls_cert_file = opts->tls_cert_file ? pb_xstrdup(opts->tls_cert_file) : NULL;
    s->opts.tls_key_file = opts->tls_key_file ? pb_xstrdup(opts->tls_key_file) : NULL;
    if (!s->opts.max_body) s->opts.max_body = 64 * 1024;
    if (!s->opts.max_connections) s->opts.max_connections = 1024;
    if (!s->opts.conn_timeout_s) s->opts.conn_timeout_s = 15;
    if (!s->opts.threads) s->opts.threads = 4;
    if (!s->opts.max_inflight) s->opts.max_inflight = 256;
    if (auth) {
        s->auth = *auth;
        s->has_auth = true;
    }
    *out = s;
    return PB_OK;
}

void pb_hrpc_server_route(pb_hrpc_server *s, const char *path, bool with_auth,
                          pb_hrpc_handler_fn fn, void *ctx)
{
    s->routes = pb_xrealloc(s->routes, (s->nroutes + 1) * sizeof *s->routes);
    s->routes[s->nroutes++] =
        (struct route){.path = pb_xstrdup(path), .with_auth = with_auth, .fn = fn, .ctx = ctx};
}

pb_err pb_hrpc_server_start(pb_hrpc_server *s)
{
    struct sockaddr_storage ss;
    unsigned sslen;
    if (pb_hrpc_parse_listen(s->opts.listen, &ss, &sslen) != PB_OK) {
        PB_ERROR(NULL, "invalid listen address %s (want IP:PORT or [IPv6]:PORT)", s->opts.listen);
        return PB_ERR_CONFIG;
    }
    unsigned flags =
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG | MHD_USE_ITC;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    bool tls = s->opts.tls_cert_file && s->opts.tls_key_file;
    if (tls) {
        s->tls_cert = read_file(s->opts.tls_cert_file);
        s->tls_key = read_file(s->opts.tls_key_file);
        if (!s->tls_cert || !s->tls_key) {
            PB_ERROR(NULL, "cannot read TLS certificate %s or key %s", s->opts.tls_cert_file,
                     s->opts.tls_key_file);
            return PB_ERR_CONFIG;
        }
        flags |= MHD_USE_TLS;
    }
    struct MHD_OptionItem tls_opts[] = {
        {tls ? MHD_OPTION_HTTPS_MEM_KEY : MHD_OPTION_END, 0, s->tls_key},
        {MHD_OPTION_HTTPS_MEM_CERT, 0, s->tls_cert},
        {MHD_OPTION_END, 0, NULL},
    };
    s->mhd = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)s->opts.threads, MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->opts.max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->opts.conn_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)32768, MHD_OPTION_LISTEN_BACKLOG_SIZE, 256u,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_ARRAY, tls_opts, MHD_OPTION_END);
    if (!s->mhd) {
        PB_ERROR(NULL, "cannot listen on %s: %s", s->opts.listen, strerror(errno));
        return PB_ERR_IO;
    }
    PB_INFO(NULL, "federation listener on %s (%s), port %u", s->opts.listen, tls ? "https" : "http",
            pb_hrpc_server_port(s));
    return PB_OK;
}

uint16_t pb_hrpc_server_port(const pb_hrpc_server *s)
{
    if (!s->mhd) return 0;
    const union MHD_DaemonInfo *i = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
    return i ? i->port : 0;
}

void pb_hrpc_server_stop(pb_hrpc_server *s)
{
    if (!s || !s->mhd) return;
    atomic_store(&s->stopping, true);
    /* Stop accepting, then let in-flight requests finish (bounded: 10 s). */
    MHD_socket fd = MHD_quiesce_daemon(s->mhd);
    for (int i = 0; i < 1000 && atomic_load(&s->inflight) > 0; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(s->mhd);
    if (fd != MHD_INVALID_SOCKET) close(fd);
    s->mhd = NULL;
}

void pb_hrpc_server_free(pb_hrpc_server *s)
{
    if (!s) return;
    pb_hrpc_server_stop(s);
    for (size_t i = 0; i < s->nroutes; i++)
        free(s->routes[i].path);
    free(s->routes);
    free((char *)s->opts.listen);
    free((char *)s->opts.tls_cert_file);
    free((char *)s->opts.tls_key_file);
    if (s->tls_key) {
        memset(s->tls_key, 0, strlen(s->tls_key));
        free(s->tls_key);
    }
    free(s->tls_cert);
    free(s);
}
