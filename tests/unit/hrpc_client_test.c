/*
 * hrpc_client_test - the hRPC client against an in-test libmicrohttpd server on
 * 127.0.0.1 whose behaviour depends on the path: good answers, wrong content types, hRPC
 * errors with and without RetryInfo, garbage, oversized and slow answers, a redirect, the
 * Key endpoint; plus connection reuse, LRU eviction, concurrency and TLS verification
 * with a CA and server certificate made by the openssl CLI at test time.
 *
 * The server records the last request (headers, body) so that the test can check what
 * the client sent. Answers are encoded with the protobuf-c generated code, independently
 * of the wire module the client decodes with.
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.pb-c.h"
#include "util/buf.h"
#include "harness.h"
#include "hrpc.pb-c.h"
#include "net/hrpc_client.h"
#include "util/log.h"

#define KEY_PATH "/protocol.auth.v1.AuthService/Key"
#define SERVER_MAX_BODY (4 * 1024 * 1024)

struct srv {
    struct MHD_Daemon *d;
    uint16_t port;
    char id[64]; /* "127.0.0.1:<port>" */
    atomic_int connections;
    atomic_int echo_hits;
    atomic_size_t big_len; /* size of the /t.S/Big* answers */
    atomic_size_t key_len; /* size of the key in the KeyResponse */

    pthread_mutex_t mu; /* guards the last request and `release` */
    pthread_cond_t cv;
    bool release; /* lets /t.S/Slow answer */
    char *last_path, *last_method, *last_ct, *last_ver, *last_auth, *last_expect;
    uint8_t *last_body;
    size_t last_body_len;
};

struct req {
    pb_buf body;
};

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void record(struct srv *s, struct MHD_Connection *conn, const char *url, const char *method,
                   const struct req *r)
{
    pthread_mutex_lock(&s->mu);
    free(s->last_path);
    free(s->last_method);
    free(s->last_ct);
    free(s->last_ver);
    free(s->last_auth);
    free(s->last_expect);
    free(s->last_body);
    s->last_path = dup_or_null(url);
    s->last_method = dup_or_null(method);
    s->last_ct = dup_or_null(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type"));
    s->last_ver = dup_or_null(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Hrpc-Version"));
    s->last_auth = dup_or_null(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization"));
    s->last_expect = dup_or_null(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Expect"));
    s->last_body_len = r->body.len;
    s->last_body = malloc(r->body.len + 1);
    if (r->body.len) memcpy(s->last_body, r->body.data, r->body.len);
    pthread_mutex_unlock(&s->mu);
}

static void srv_forget(struct srv *s)
{
    pthread_mutex_lock(&s->mu);
    free(s->last_path);
    free(s->last_method);
    free(s->last_ct);
    free(s->last_ver);
    free(s->last_auth);
    free(s->last_expect);
    free(s->last_body);
    s->last_path = s->last_method = s->last_ct = s->last_ver = s->last_auth = NULL;
    s->last_expect = NULL;
    s->last_body = NULL;
    s->last_body_len = 0;
    pthread_mutex_unlock(&s->mu);
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *ct,
                             const void *p, size_t n)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(n, (void *)p, MHD_RESPMEM_MUST_COPY);
    if (ct) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ct);
    MHD_add_response_header(resp, "Hrpc-Version", "1");
    enum MHD_Result ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* An hrpc.v1.Error answer; retry_after < 0: no details. */
static enum MHD_Result reply_error(struct MHD_Connection *conn, unsigned status, const char *ident,
                                   const char *msg, int retry_after)
{
    uint8_t det[16];
    size_t det_len = 0;
    if (retry_after >= 0) {
        Hrpc__V1__RetryInfo ri = HRPC__V1__RETRY_INFO__INIT;
        ri.retry_after = (uint32_t)retry_after;
        det_len = hrpc__v1__retry_info__pack(&ri, det);
    }
    Hrpc__V1__Error e = HRPC__V1__ERROR__INIT;
    e.identifier = (char *)ident;
    e.human_message = (char *)msg;
    e.details.data = det;
    e.details.len = det_len;
    size_t n = hrpc__v1__error__get_packed_size(&e);
    uint8_t *buf = malloc(n + 1);
    hrpc__v1__error__pack(&e, buf);
    enum MHD_Result ret = reply(conn, status, "application/hrpc", buf, n);
    free(buf);
    return ret;
}

static ssize_t chunked_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    size_t total = *(size_t *)cls;
    if (pos >= total) return MHD_CONTENT_READER_END_OF_STREAM;
    size_t n = total - (size_t)pos;
    if (n > max) n = max;
    if (n > 100) n = 100; /* several chunks */
    memset(buf, 'c', n);
    return (ssize_t)n;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **req_cls)
{
    struct srv *s = cls;
    struct req *r = *req_cls;
    if (!r) {
        *req_cls = calloc(1, sizeof *r);
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (r->body.len + *upload_data_size <= SERVER_MAX_BODY)
            pb_buf_append(&r->body, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    record(s, conn, url, method, r);

    if (strcmp(url, "/t.S/Echo") == 0) {
        atomic_fetch_add(&s->echo_hits, 1);
        return reply(conn, 200, "application/hrpc", r->body.data, r->body.len);
    }
    if (strcmp(url, "/t.S/Upper") == 0) return reply(conn, 200, "Application/HRPC", "up", 2);
    if (strcmp(url, "/t.S/Text") == 0) return reply(conn, 200, "text/plain", "hello", 5);
    if (strcmp(url, "/t.S/Charset") == 0)
        return reply(conn, 200, "application/hrpc; charset=utf-8", "x", 1);
    if (strcmp(url, "/t.S/NoType") == 0) return reply(conn, 200, NULL, "x", 1);
    if (strcmp(url, "/t.S/Bad") == 0)
        return reply_error(conn, 400, "hrpc.http.bad-unary-request", "nope", -1);
    if (strcmp(url, "/t.S/Busy") == 0)
        return reply_error(conn, 503, "hrpc.unavailable", "later", 7);
    if (strcmp(url, "/t.S/Limit") == 0)
        return reply_error(conn, 429, "hrpc.resource-exhausted", "slow down", 3);
    if (strcmp(url, "/t.S/Fault") == 0)
        return reply_error(conn, 500, "hrpc.internal-server-error", "oops", 9);
    if (strcmp(url, "/t.S/Garbage") == 0)
        return reply(conn, 500, "application/hrpc", "\xff\xff\xff\xff\xff", 5);
    if (strcmp(url, "/t.S/Empty500") == 0) return reply(conn, 500, "application/hrpc", "", 0);
    if (strcmp(url, "/t.S/Big") == 0) {
        size_t n = atomic_load(&s->big_len);
        char *b = malloc(n + 1);
        memset(b, 'b', n);
        enum MHD_Result ret = reply(conn, 200, "application/hrpc", b, n);
        free(b);
        return ret;
    }
    if (strcmp(url, "/t.S/BigChunked") == 0) {
        size_t *total = malloc(sizeof *total);
        *total = atomic_load(&s->big_len);
        struct MHD_Response *resp =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, chunked_reader, total, free);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/hrpc");
        enum MHD_Result ret = MHD_queue_response(conn, 200, resp);
        MHD_destroy_response(resp);
        return ret;
    }
    if (strcmp(url, "/t.S/Slow") == 0) {
        /* Holds the answer until the test releases it (at most 10 s). */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 10;
        pthread_mutex_lock(&s->mu);
        while (!s->release) {
            if (pthread_cond_timedwait(&s->cv, &s->mu, &until) != 0) break;
        }
        pthread_mutex_unlock(&s->mu);
        return reply(conn, 200, "application/hrpc", "late", 4);
    }
    if (strcmp(url, "/t.S/Redirect") == 0) {
        struct MHD_Response *resp = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, "/t.S/Echo");
        enum MHD_Result ret = MHD_queue_response(conn, 302, resp);
        MHD_destroy_response(resp);
        return ret;
    }
    if (strcmp(url, KEY_PATH) == 0) {
        uint8_t key[64];
        for (size_t i = 0; i < sizeof key; i++)
            key[i] = (uint8_t)(0xa0 + i);
        Protocol__Auth__V1__KeyResponse kr = PROTOCOL__AUTH__V1__KEY_RESPONSE__INIT;
        kr.key.data = key;
        kr.key.len = atomic_load(&s->key_len);
        uint8_t buf[128];
        size_t n = protocol__auth__v1__key_response__pack(&kr, buf);
        return reply(conn, 200, "application/hrpc", buf, n);
    }
    return reply_error(conn, 404, "hrpc.not-found", "no such method", -1);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct req *r = *req_cls;
    if (!r) return;
    pb_buf_free(&r->body);
    free(r);
    *req_cls = NULL;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct srv *s = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) atomic_fetch_add(&s->connections, 1);
}

/* key/cert NULL: plain HTTP. */
static bool srv_start(struct srv *s, const char *key_pem, const char *cert_pem)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    atomic_store(&s->key_len, 32);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_THREAD_PER_CONNECTION; /* quiet: peers here misbehave on purpose */
    if (key_pem) {
        s->d =
            MHD_start_daemon(flags | MHD_USE_TLS, 0, NULL, NULL, handler, s, MHD_OPTION_SOCK_ADDR,
                             &sa, MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
                             MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_HTTPS_MEM_KEY,
                             key_pem, MHD_OPTION_HTTPS_MEM_CERT, cert_pem, MHD_OPTION_END);
    } else {
        s->d = MHD_start_daemon(flags, 0, NULL, NULL, handler, s, MHD_OPTION_SOCK_ADDR, &sa,
                                MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
                                MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_END);
    }
    if (!s->d) return false;
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info ? info->port : 0;
    snprintf(s->id, sizeof s->id, "127.0.0.1:%u", (unsigned)s->port);
    return s->port != 0;
}

static void srv_release_slow(struct srv *s)
{
    pthread_mutex_lock(&s->mu);
    s->release = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void srv_stop(struct srv *s)
{
    srv_release_slow(s);
    if (s->d) MHD_stop_daemon(s->d);
    srv_forget(s);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
}

static pb_client *client(bool plain, const char *ca_file, long timeout_ms, size_t max_response,
                         long max_connections)
{
    pb_client_opts o = {.plain_http = plain,
                        .ca_file = ca_file,
                        .connect_timeout_ms = 2000,
                        .timeout_ms = timeout_ms,
                        .max_response = max_response,
                        .allow_private = true, /* every test server is on 127.0.0.1 */
                        .max_connections = max_connections};
    pb_client *c = NULL;
    CHECK_OK(pb_client_new(&o, &c));
    if (!c) abort();
    return c;
}

/* Shorthand for pb_client_call (the body as void *). */
static pb_err call(pb_client *c, const char *id, const char *path, const char *auth,
                   const void *body, size_t len, pb_client_answer *a)
{
    return pb_client_call(c, id, path, auth, body, len, a);
}

static void test_answers(struct srv *s)
{
    pb_client *c = client(true, NULL, 5000, 0, 0);
    pb_client_answer a;

    /* good answer; the server saw exactly what was sent */
    const uint8_t body[] = {0x0a, 0x00, 0x0d, 0xff, 0x01};
    CHECK_OK(call(c, s->id, "/t.S/Echo", "dG9rZW4=", body, sizeof body, &a));
    CHECK_INT(a.status, 200);
    CHECK_MEM(a.body, a.body_len, body, sizeof body);
    CHECK(a.identifier == NULL);
    pb_client_answer_clear(&a);
    pthread_mutex_lock(&s->mu);
    CHECK_STR(s->last_method, "POST");
    CHECK_STR(s->last_path, "/t.S/Echo");
    CHECK_STR(s->last_ct, "application/hrpc");
    CHECK_STR(s->last_ver, "1");
    CHECK_STR(s->last_auth, "dG9rZW4=");
    CHECK(s->last_expect == NULL);
    CHECK_MEM(s->last_body, s->last_body_len, body, sizeof body);
    pthread_mutex_unlock(&s->mu);

    /* no Authorization, empty body: an empty answer */
    CHECK_OK(call(c, s->id, "/t.S/Echo", NULL, NULL, 0, &a));
    CHECK(a.body == NULL);
    CHECK_INT(a.body_len, 0);
    pb_client_answer_clear(&a);
    pthread_mutex_lock(&s->mu);
    CHECK(s->last_auth == NULL);
    CHECK_INT(s->last_body_len, 0);
    CHECK_STR(s->last_ct, "application/hrpc");
    pthread_mutex_unlock(&s->mu);

    /* a 2 MiB body arrives whole, without an Expect: 100-continue round trip */
    size_t big = 2 * 1024 * 1024 + 1;
    uint8_t *bigbody = malloc(big);
    for (size_t i = 0; i < big; i++)
        bigbody[i] = (uint8_t)(i * 7);
    CHECK_OK(call(c, s->id, "/t.S/Echo", NULL, bigbody, big, &a));
    CHECK_MEM(a.body, a.body_len, bigbody, big);
    pb_client_answer_clear(&a);
    pthread_mutex_lock(&s->mu);
    CHECK(s->last_expect == NULL);
    CHECK_MEM(s->last_body, s->last_body_len, bigbody, big);
    pthread_mutex_unlock(&s->mu);
    free(bigbody);

    /* upper-case server ID is normalised */
    char upper[80];
    snprintf(upper, sizeof upper, "LOCALHOST:%u", (unsigned)s->port);
    CHECK_OK(call(c, upper, "/t.S/Echo", NULL, "z", 1, &a));
    pb_client_answer_clear(&a);

    /* Content-Type compared case-insensitively; exact type only */
    CHECK_OK(call(c, s->id, "/t.S/Upper", NULL, NULL, 0, &a));
    CHECK_MEM(a.body, a.body_len, "up", 2);
    pb_client_answer_clear(&a);
    CHECK_ERR(call(c, s->id, "/t.S/Text", NULL, NULL, 0, &a), PB_ERR_PROTO);
    CHECK_INT(a.status, 200);
    CHECK(a.body == NULL);
    CHECK(a.message && strstr(a.message, "text/plain"));
    pb_client_answer_clear(&a);
    CHECK_ERR(call(c, s->id, "/t.S/Charset", NULL, NULL, 0, &a), PB_ERR_PROTO);
    CHECK_INT(a.status, 200);
    CHECK(a.body == NULL);
    pb_client_answer_clear(&a);
    CHECK_ERR(call(c, s->id, "/t.S/NoType", NULL, NULL, 0, &a), PB_ERR_PROTO);
    pb_client_answer_clear(&a);

    /* hRPC errors */
    CHECK_ERR(call(c, s->id, "/t.S/Bad", NULL, NULL, 0, &a), PB_ERR_PEER);
    CHECK_INT(a.status, 400);
    CHECK_STR(a.identifier, "hrpc.http.bad-unary-request");
    CHECK_STR(a.message, "nope");
    CHECK(!a.has_retry_after);
    CHECK(a.body == NULL);
    pb_client_answer_clear(&a);
    CHECK_ERR(call(c, s->id, "/t.S/Busy", NULL, NULL, 0, &a), PB_ERR_PEER);
    CHECK_INT(a.status, 503);
    CHECK_STR(a.identifier, "hrpc.unavailable");
    CHECK_STR(a.message, "later");
    CHECK(a.has_retry_after);
    CHECK_INT(a.retry_after, 7);
    pb_client_answer_clear(&a);
    CHECK_ERR(call(c, s->id, "/t.S/Limit", NULL, NULL, 0, &a), PB_ERR_PEER);
    CHECK_INT(a.status, 429);
    CHECK_STR(a.identifier, "hrpc.resource-exhausted");
    CHECK(a.has_retry_after);
    CHECK_INT(a.retry_after, 3);
    pb_client_answer_clear(&a);
    CHECK_ERR(call(c, s->id, "/t.S/Fault", NULL, NULL, 0, &a), PB_ERR_PEER);
    CHECK_INT(a.status, 500);
    CHECK_STR(a.identifier, "hrpc.internal-server-error");
    CHECK(!a.has_retry_after); /* RetryInfo counts only with 429/503 */
    pb_client_answer_clear(&a);
    CHECK_ERR(call(c, s->id, "/t.S/Nowhere", NULL, NULL, 0, &a), PB_ERR_PEER);
    CHECK_INT(a.status, 404);
    CHECK_STR(a.identifier, "hrpc.not-found");
    pb_client_answer_clear(&a);

    /* non-2xx answers that are not hrpc.v1.Error */
    CHECK_ERR(call(c, s->id, "/t.S/Garbage", NULL, NULL, 0, &a), PB_ERR_PROTO);
    CHECK_INT(a.status, 500);
    CHECK(a.identifier == NULL);
    CHECK(a.message != NULL);
    pb_client_answer_clear(&a);
    CHECK_ERR(call(c, s->id, "/t.S/Empty500", NULL, NULL, 0, &a), PB_ERR_PROTO);
    CHECK_INT(a.status, 500);
    CHECK(a.identifier == NULL);
    pb_client_answer_clear(&a);

    /* redirects are not followed */
    int hits = atomic_load(&s->echo_hits);
    CHECK_ERR(call(c, s->id, "/t.S/Redirect", NULL, "r", 1, &a), PB_ERR_PROTO);
    CHECK_INT(a.status, 302);
    CHECK_INT(atomic_load(&s->echo_hits), hits);
    pb_client_answer_clear(&a);

    /* refused before any traffic */
    int conns = atomic_load(&s->connections);
    hits = atomic_load(&s->echo_hits);
    CHECK_ERR(call(c, "127.0.0.1", "/t.S/Echo", NULL, NULL, 0, &a), PB_ERR_INVAL);
    CHECK(a.message != NULL);
    CHECK_INT(a.status, 0);
    pb_client_answer_clear(&a);
    CHECK_ERR(call(c, "127.0.0.1:0", "/t.S/Echo", NULL, NULL, 0, &a), PB_ERR_INVAL);
    pb_client_answer_clear(&a);
    CHECK_ERR(call(c, s->id, "t.S/Echo", NULL, NULL, 0, &a), PB_ERR_INVAL);
    pb_client_answer_clear(&a);
    CHECK_ERR(call(c, s->id, "/t.S/Echo?\r\nX: y", NULL, NULL, 0, &a), PB_ERR_INVAL);
    pb_client_answer_clear(&a);
    CHECK_ERR(call(c, s->id, "/t.S/Echo", "abc\r\nX-Injected: 1", NULL, 0, &a), PB_ERR_INVAL);
    pb_client_answer_clear(&a);
    CHECK_INT(atomic_load(&s->echo_hits), hits);
    CHECK_INT(atomic_load(&s->connections), conns);

    /* the debug line names the peer, the status and the result */
    char *dir = pbt_tmpdir("hrpc-log");
    char *logpath = NULL;
    if (asprintf(&logpath, "%s/log", dir) < 0) abort();
    FILE *lf = fopen(logpath, "w+");
    CHECK(lf != NULL);
    if (lf) {
        pb_log_set_level(PB_LOG_DEBUG);
        pb_log_set_fd(fileno(lf));
        CHECK_OK(call(c, s->id, "/t.S/Echo", NULL, NULL, 0, &a));
        pb_client_answer_clear(&a);
        /* The loop thread writes its round's lines when it next waits, which may be just
         * after the call returned here: the file is read until the line is in (5 s). */
        char want[128];
        snprintf(want, sizeof want, "debug peer=%s POST /t.S/Echo: success, HTTP 200", s->id);
        char line[2048] = "";
        for (int64_t until = pbt_now_ms() + 5000; pbt_now_ms() < until;) {
            size_t n = (size_t)pread(fileno(lf), line, sizeof line - 1, 0);
            line[n < sizeof line ? n : 0] = '\0';
            if (strstr(line, want)) break;
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        pb_log_set_fd(2);
        pb_log_set_level(PB_LOG_INFO);
        CHECKF(strstr(line, want) != NULL, "log: %s", line);
        fclose(lf);
    }
    free(logpath);
    pbt_rmrf(dir);
    free(dir);

    /* the client still works after all these */
    CHECK_OK(call(c, s->id, "/t.S/Echo", NULL, "ok", 2, &a));
    CHECK_MEM(a.body, a.body_len, "ok", 2);
    pb_client_answer_clear(&a);
    pb_client_free(c);
}

static void test_key(struct srv *s)
{
    pb_client *c = client(true, NULL, 5000, 0, 0);
    pb_client_answer a;
    uint8_t key[32], want[32];
    for (size_t i = 0; i < 32; i++)
        want[i] = (uint8_t)(0xa0 + i);
    memset(key, 0, sizeof key);
    CHECK_OK(pb_client_fetch_key(c, s->id, key, &a));
    CHECK_MEM(key, 32, want, 32);
    pb_client_answer_clear(&a);
    pthread_mutex_lock(&s->mu);
    CHECK_STR(s->last_path, KEY_PATH);
    CHECK_STR(s->last_method, "POST");
    CHECK_STR(s->last_ct, "application/hrpc");
    CHECK_STR(s->last_ver, "1");
    CHECK(s->last_auth == NULL);
    CHECK_INT(s->last_body_len, 0);
    pthread_mutex_unlock(&s->mu);

    /* a key of the wrong size is refused and the output left alone */
    atomic_store(&s->key_len, 31);
    memset(key, 0x55, sizeof key);
    uint8_t untouched[32];
    memset(untouched, 0x55, sizeof untouched);
    CHECK_ERR(pb_client_fetch_key(c, s->id, key, &a), PB_ERR_PROTO);
    CHECK_MEM(key, 32, untouched, 32);
    CHECK(a.message != NULL);
    pb_client_answer_clear(&a);
    atomic_store(&s->key_len, 32);
    pb_client_free(c);
}

static void test_limits(struct srv *s)
{
    pb_client *c = client(true, NULL, 5000, 1000, 0);
    pb_client_answer a;
    const char *paths[] = {"/t.S/Big", "/t.S/BigChunked"};
    for (int i = 0; i < 2; i++) {
        atomic_store(&s->big_len, 1000);
        CHECKF(call(c, s->id, paths[i], NULL, NULL, 0, &a) == PB_OK, "%s", paths[i]);
        CHECK_INT(a.body_len, 1000);
        pb_client_answer_clear(&a);
        atomic_store(&s->big_len, 1001);
        CHECK_ERR(call(c, s->id, paths[i], NULL, NULL, 0, &a), PB_ERR_PROTO);
        CHECKF(a.message && strstr(a.message, "too large"), "%s: %s", paths[i],
               a.message ? a.message : "(null)");
        CHECK(a.body == NULL);
        pb_client_answer_clear(&a);
        atomic_store(&s->big_len, 200 * 1024);
        CHECK_ERR(call(c, s->id, paths[i], NULL, NULL, 0, &a), PB_ERR_PROTO);
        CHECK(a.body == NULL);
        pb_client_answer_clear(&a);
    }
    CHECK_OK(call(c, s->id, "/t.S/Echo", NULL, "x", 1, &a));
    pb_client_answer_clear(&a);
    pb_client_free(c);
}

static void test_timeout_and_net(struct srv *s)
{
    pb_client *c = client(true, NULL, 300, 0, 0);
    pb_client_answer a;
    int64_t t0 = pbt_now_ms();
    CHECK_ERR(call(c, s->id, "/t.S/Slow", NULL, NULL, 0, &a), PB_ERR_TIMEOUT);
    int64_t took = pbt_now_ms() - t0;
    CHECKF(took >= 250 && took < 5000, "took %lld ms", (long long)took);
    CHECK(a.message != NULL);
    CHECK(a.body == NULL);
    pb_client_answer_clear(&a);
    srv_release_slow(s);

    /* a port that is bound but not listening: connection refused */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    socklen_t sl = sizeof sa;
    CHECK(getsockname(fd, (struct sockaddr *)&sa, &sl) == 0);
    char id[64];
    snprintf(id, sizeof id, "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    CHECK_ERR(call(c, id, "/t.S/Echo", NULL, NULL, 0, &a), PB_ERR_NET);
    CHECK_INT(a.status, 0);
    CHECK(a.message != NULL && a.message[0] != '\0');
    pb_client_answer_clear(&a);
    close(fd);
    pb_client_free(c);
}

/* Returns once the monotonic clock has moved on by 2 ms or more (libcurl stamps a
 * connection's last use in milliseconds). */
static void later_ms(void)
{
    int64_t t0 = pbt_now_ms();
    while (pbt_now_ms() < t0 + 2) {
    }
}

static void test_reuse(struct srv *s, struct srv *s2)
{
    pb_client *c = client(true, NULL, 5000, 0, 0);
    pb_client_answer a;
    int before = atomic_load(&s->connections);
    int ok = 0;
    for (int i = 0; i < 20; i++) {
        char b[16];
        int n = snprintf(b, sizeof b, "seq-%d", i);
        if (call(c, s->id, "/t.S/Echo", NULL, b, (size_t)n, &a) == PB_OK &&
            a.body_len == (size_t)n && memcmp(a.body, b, (size_t)n) == 0)
            ok++;
        pb_client_answer_clear(&a);
    }
    CHECK_INT(ok, 20);
    CHECK_INT(atomic_load(&s->connections) - before, 1);
    pb_client_free(c);

    /* The connection cache: with room for one connection, calling another peer drops the
     * first one's connection; with room for two, both are reused. */
    const int expect_new[2] = {2, 1};
    for (long max_peers = 1; max_peers <= 2; max_peers++) {
        c = client(true, NULL, 5000, 0, max_peers);
        before = atomic_load(&s->connections);
        int before2 = atomic_load(&s2->connections);
        CHECK_OK(call(c, s->id, "/t.S/Echo", NULL, NULL, 0, &a));
        pb_client_answer_clear(&a);
        later_ms(); /* libcurl closes the least recently used: one clearly older */
        CHECK_OK(call(c, s2->id, "/t.S/Echo", NULL, NULL, 0, &a));
        pb_client_answer_clear(&a);
        CHECK_OK(call(c, s->id, "/t.S/Echo", NULL, NULL, 0, &a));
        pb_client_answer_clear(&a);
        CHECKF(atomic_load(&s->connections) - before == expect_new[max_peers - 1],
               "max_connections %ld: %d connections", max_peers,
               atomic_load(&s->connections) - before);
        CHECK_INT(atomic_load(&s2->connections) - before2, 1);
        pb_client_free(c);
    }

    /* A large cache is split over several multi handles (shards, by peer): each peer's
     * calls still find its connection, whichever peer was called in between. */
    c = client(true, NULL, 5000, 0, 8192);
    before = atomic_load(&s->connections);
    int before2 = atomic_load(&s2->connections);
    for (int i = 0; i < 10; i++) {
        CHECK_OK(call(c, i % 2 ? s2->id : s->id, "/t.S/Echo", NULL, NULL, 0, &a));
        pb_client_answer_clear(&a);
    }
    CHECK_INT(atomic_load(&s->connections) - before, 1);
    CHECK_INT(atomic_load(&s2->connections) - before2, 1);
    pb_client_free(c);
}

struct worker {
    pb_client *c;
    const char *id;
    int n;
    int ok;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < 20; i++) {
        char b[32];
        int len = snprintf(b, sizeof b, "thread-%d-call-%d", w->n, i);
        pb_client_answer a;
        if (pb_client_call(w->c, w->id, "/t.S/Echo", "auth", (const uint8_t *)b, (size_t)len, &a) ==
                PB_OK &&
            a.body_len == (size_t)len && memcmp(a.body, b, (size_t)len) == 0)
            w->ok++;
        pb_client_answer_clear(&a);
    }
    return NULL;
}

static void test_threads(struct srv *s)
{
    pb_client *c = client(true, NULL, 10000, 0, 0);
    struct worker w[8];
    pthread_t t[8];
    for (int i = 0; i < 8; i++) {
        w[i] = (struct worker){.c = c, .id = s->id, .n = i, .ok = 0};
        CHECK(pthread_create(&t[i], NULL, worker_main, &w[i]) == 0);
    }
    int ok = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        ok += w[i].ok;
    }
    CHECK_INT(ok, 160);
    pb_client_free(c);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = calloc(1, 64 * 1024);
    size_t n = fread(buf, 1, 64 * 1024 - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static bool write_file(const char *dir, const char *name, const char *text)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", dir, name) < 0) abort();
    FILE *f = fopen(p, "w");
    free(p);
    if (!f) return false;
    fputs(text, f);
    return fclose(f) == 0;
}

/* A CA and a server certificate for IP 127.0.0.1 signed by it, made with the openssl CLI. */
static bool make_certs(const char *dir)
{
    if (!write_file(dir, "ca.cnf",
                    "[req]\ndistinguished_name=dn\nprompt=no\nx509_extensions=v3\n"
                    "[dn]\nCN=postbox test CA\n"
                    "[v3]\nbasicConstraints=critical,CA:TRUE\n"
                    "keyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n") ||
        !write_file(dir, "srv.cnf",
                    "[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=127.0.0.1\n") ||
        !write_file(dir, "ext.cnf",
                    "[v3]\nsubjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                    "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                    "authorityKeyIdentifier=keyid\n"))
        return false;
    char *cmd = NULL;
    if (asprintf(&cmd,
                 "cd '%s' && ( "
                 "openssl req -x509 -config ca.cnf -newkey ec -pkeyopt "
                 "ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 && "
                 "openssl req -new -config srv.cnf -newkey ec -pkeyopt "
                 "ec_paramgen_curve:prime256v1 -nodes -keyout srv.key -out srv.csr && "
                 "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -set_serial 2 "
                 "-days 2 -extfile ext.cnf -extensions v3 -out srv.pem ) >openssl.log 2>&1 || "
                 "{ cat openssl.log >&2; false; }",
                 dir) < 0)
        abort();
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "openssl failed (%d): %s\n", rc, cmd);
    free(cmd);
    return rc == 0;
}

/* Whether `path` was opened since the last look, by an inotify watch made by ca_watch
 * (IN_OPEN), read without waiting: the kernel queues the event inside the open(2) itself.
 * (Opens in a row with none read between are merged into one event: so look after each
 * call.) */
static int ca_watch(const char *path)
{
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    CHECK(fd >= 0);
    if (fd >= 0 && inotify_add_watch(fd, path, IN_OPEN) < 0) {
        CHECKF(false, "inotify_add_watch %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static bool ca_opened(int fd)
{
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    int n = 0;
    ssize_t len;
    while (fd >= 0 && (len = read(fd, buf, sizeof buf)) > 0)
        for (char *p = buf; p < buf + len;
             p += sizeof(struct inotify_event) + ((struct inotify_event *)(void *)p)->len)
            n += (((struct inotify_event *)(void *)p)->mask & IN_OPEN) != 0;
    return n > 0;
}

/* Each new TLS connection is a new OpenSSL context; the CA bundle is read once and its
 * store kept, not parsed again per connection (the system bundle: 23 ms of CPU each).
 * With room for one connection, calls alternating between two servers connect anew each
 * time. Both the configured CA file and, without one, the system's bundle. */
static void test_ca_read_once(const char *ca, struct srv *s, struct srv *s2)
{
    enum { CALLS = 8 };
    pb_client_answer a;
    pb_client *c = client(false, ca, 5000, 0, 1);
    int w = ca_watch(ca), opens = 0;
    int before = atomic_load(&s->connections) + atomic_load(&s2->connections);
    for (int i = 0; i < CALLS; i++) {
        later_ms(); /* libcurl closes the least recently used: one clearly older */
        CHECK_OK(call(c, i % 2 ? s2->id : s->id, "/t.S/Echo", NULL, "x", 1, &a));
        pb_client_answer_clear(&a);
        opens += ca_opened(w);
    }
    CHECK_INT(atomic_load(&s->connections) + atomic_load(&s2->connections) - before, CALLS);
    CHECKF(opens == 1, "the CA file was read by %d of %d connections", opens, CALLS);
    if (w >= 0) close(w);
    pb_client_free(c);

    /* without ca_file: libcurl's default bundle, read once as well (the test CA is not in
     * it, so each call fails verification, after loading it) */
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    CHECKF(v->cainfo && access(v->cainfo, R_OK) == 0,
           "libcurl's default CA bundle %s is not readable (package ca-certificates)",
           v->cainfo ? v->cainfo : "(none)");
    if (!v->cainfo || access(v->cainfo, R_OK) != 0) return;
    c = client(false, NULL, 5000, 0, 1);
    w = ca_watch(v->cainfo);
    opens = 0;
    for (int i = 0; i < CALLS; i++) {
        CHECK_ERR(call(c, i % 2 ? s2->id : s->id, "/t.S/Echo", NULL, "x", 1, &a), PB_ERR_TLS);
        pb_client_answer_clear(&a);
        opens += ca_opened(w);
    }
    CHECKF(opens == 1, "the system bundle %s was read by %d of %d connections", v->cainfo, opens,
           CALLS);
    if (w >= 0) close(w);
    pb_client_free(c);
}

static void test_tls(struct srv *plain)
{
    char *dir = pbt_tmpdir("hrpc-tls");
    CHECK(make_certs(dir));
    char *ca = NULL, *keyp = NULL, *certp = NULL;
    if (asprintf(&ca, "%s/ca.pem", dir) < 0 || asprintf(&keyp, "%s/srv.key", dir) < 0 ||
        asprintf(&certp, "%s/srv.pem", dir) < 0)
        abort();
    char *key_pem = slurp(keyp), *cert_pem = slurp(certp);
    CHECK(key_pem && cert_pem);
    struct srv s, s2;
    if (key_pem && cert_pem && srv_start(&s, key_pem, cert_pem)) {
        if (srv_start(&s2, key_pem, cert_pem)) {
            test_ca_read_once(ca, &s, &s2);
            srv_stop(&s2);
        } else {
            CHECK(!"second TLS server did not start");
        }
        pb_client_answer a;
        /* verified against the configured CA */
        pb_client *c = client(false, ca, 5000, 0, 0);
        CHECK_OK(call(c, s.id, "/t.S/Echo", "tok", "secret", 6, &a));
        CHECK_MEM(a.body, a.body_len, "secret", 6);
        pb_client_answer_clear(&a);
        pthread_mutex_lock(&s.mu);
        CHECK_STR(s.last_auth, "tok");
        CHECK_STR(s.last_ct, "application/hrpc");
        pthread_mutex_unlock(&s.mu);
        /* the TLS connection is reused too */
        int before = atomic_load(&s.connections);
        for (int i = 0; i < 5; i++) {
            CHECK_OK(call(c, s.id, "/t.S/Echo", NULL, "again", 5, &a));
            pb_client_answer_clear(&a);
        }
        CHECK_INT(atomic_load(&s.connections) - before, 0);
        uint8_t key[32];
        CHECK_OK(pb_client_fetch_key(c, s.id, key, &a));
        pb_client_answer_clear(&a);
        /* a name the certificate does not carry */
        char byname[64];
        snprintf(byname, sizeof byname, "localhost:%u", (unsigned)s.port);
        CHECK_ERR(call(c, byname, "/t.S/Echo", NULL, NULL, 0, &a), PB_ERR_TLS);
        pb_client_answer_clear(&a);
        pb_client_free(c);

        /* the system CAs do not know the test CA */
        int hits = atomic_load(&s.echo_hits);
        c = client(false, NULL, 5000, 0, 0);
        CHECK_ERR(call(c, s.id, "/t.S/Echo", "tok", "secret", 6, &a), PB_ERR_TLS);
        CHECK(a.message != NULL && a.message[0] != '\0');
        CHECK_INT(a.status, 0);
        pb_client_answer_clear(&a);
        CHECK_INT(atomic_load(&s.echo_hits), hits);

        /* https to a plain-HTTP server fails; it is not downgraded */
        hits = atomic_load(&plain->echo_hits);
        CHECK_ERR(call(c, plain->id, "/t.S/Echo", NULL, NULL, 0, &a), PB_ERR_TLS);
        pb_client_answer_clear(&a);
        CHECK_INT(atomic_load(&plain->echo_hits), hits);
        pb_client_free(c);
        srv_stop(&s);
    } else {
        CHECK(!"TLS server did not start");
    }
    /* an unreadable CA file is a configuration error */
    pb_client_opts o = {.ca_file = "/nonexistent/ca.pem"};
    pb_client *bad = NULL;
    CHECK_ERR(pb_client_new(&o, &bad), PB_ERR_CONFIG);
    CHECK(bad == NULL);
    free(key_pem);
    free(cert_pem);
    free(ca);
    free(keyp);
    free(certp);
    pbt_rmrf(dir);
    free(dir);
}

/* libcurl honours http_proxy / ALL_PROXY from the environment unless told otherwise; a
 * proxy would make the private-address check see only the proxy's address. Peers are
 * reached directly whatever the environment says: a proxy at a closed port changes
 * nothing. */
static void test_no_env_proxy(struct srv *s)
{
    setenv("http_proxy", "http://127.0.0.1:1", 1);
    setenv("ALL_PROXY", "http://127.0.0.1:1", 1);
    pb_client *c = client(true, NULL, 5000, 0, 0);
    pb_client_answer a;
    const uint8_t body[] = {0x0a, 0x00};
    CHECK_OK(call(c, s->id, "/t.S/Echo", NULL, body, sizeof body, &a));
    CHECK_INT(a.status, 200);
    pb_client_answer_clear(&a);
    pb_client_free(c);
    unsetenv("http_proxy");
    unsetenv("ALL_PROXY");
}

/* A proxy only through the explicit setting: a listener standing in for an HTTP proxy
 * records the request line it gets and answers 200. The client names a peer by a name
 * that no resolver here knows (the proxy resolves it), and does not allow private
 * addresses: the proxy on 127.0.0.1, which the operator named, is still reached. */
struct fake_proxy {
    int fd;
    uint16_t port;
    pthread_t th;
    char line[512], host[256];
};

static void *fake_proxy_main(void *arg)
{
    struct fake_proxy *p = arg;
    struct pollfd pf = {.fd = p->fd, .events = POLLIN};
    if (poll(&pf, 1, 10000) != 1) return NULL;
    int c = accept(p->fd, NULL, NULL);
    if (c < 0) return NULL;
    char buf[8192];
    size_t len = 0;
    char *end = NULL;
    while (!end && len < sizeof buf - 1) { /* the headers (the body is left unread) */
        pf = (struct pollfd){.fd = c, .events = POLLIN};
        if (poll(&pf, 1, 10000) != 1) break;
        ssize_t n = read(c, buf + len, sizeof buf - 1 - len);
        if (n <= 0) break;
        len += (size_t)n;
        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    if (end) {
        char *eol = strstr(buf, "\r\n");
        snprintf(p->line, sizeof p->line, "%.*s", (int)(eol - buf), buf);
        char *h = strcasestr(buf, "\r\nHost: ");
        if (h) {
            h += 8;
            snprintf(p->host, sizeof p->host, "%.*s", (int)strcspn(h, "\r"), h);
        }
        static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: application/hrpc\r\n"
                                 "Hrpc-Version: 1\r\nContent-Length: 0\r\n"
                                 "Connection: close\r\n\r\n";
        if (write(c, ok, sizeof ok - 1) < 0) { /* the client sees the failure */
        }
    }
    close(c);
    return NULL;
}

static void test_proxy_setting(void)
{
    struct fake_proxy p = {.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    CHECK(p.fd >= 0 && bind(p.fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(p.fd, 4) == 0 &&
          getsockname(p.fd, (struct sockaddr *)&a, &alen) == 0);
    p.port = ntohs(a.sin_port);
    CHECK(pthread_create(&p.th, NULL, fake_proxy_main, &p) == 0);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u", p.port);
    pb_client_opts o = {.plain_http = true, .timeout_ms = 5000, .proxy = url};
    pb_client *c = NULL;
    CHECK_OK(pb_client_new(&o, &c));
    pb_client_answer ans;
    const uint8_t body[] = {0x0a, 0x00};
    pb_err err = c ? call(c, "peer.invalid:1234", "/t.S/Echo", NULL, body, sizeof body, &ans)
                   : PB_ERR_INTERNAL;
    pthread_join(p.th, NULL);
    close(p.fd);
    fprintf(stderr, "proxy: the call answered %s %ld; the proxy got \"%s\" (Host: %s)\n",
            pb_strerror(err), c ? ans.status : 0L, p.line, p.host);
    CHECKF(err == PB_OK && ans.status == 200, "the call through the proxy: %s %ld",
           pb_strerror(err), ans.status);
    CHECK_STR(p.line, "POST http://peer.invalid:1234/t.S/Echo HTTP/1.1");
    CHECK_STR(p.host, "peer.invalid:1234");
    if (c) pb_client_answer_clear(&ans);
    pb_client_free(c);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    unsetenv("http_proxy");
    unsetenv("https_proxy");
    unsetenv("HTTPS_PROXY");
    unsetenv("ALL_PROXY");
    unsetenv("all_proxy");

    pb_client_free(NULL);
    pb_client_answer_clear(NULL);

    struct srv s, s2;
    CHECK(srv_start(&s, NULL, NULL));
    CHECK(srv_start(&s2, NULL, NULL));
    if (s.d && s2.d) {
        test_answers(&s);
        test_key(&s);
        test_limits(&s);
        test_timeout_and_net(&s);
        test_reuse(&s, &s2);
        test_threads(&s);
        test_no_env_proxy(&s);
        test_proxy_setting();
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) == MHD_YES)
            test_tls(&s);
        else
            CHECK(!"libmicrohttpd without TLS support");
    }
    srv_stop(&s);
    srv_stop(&s2);
    return pbt_finish();
}
