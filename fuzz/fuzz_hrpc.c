/*
 * fuzz_hrpc - the federation request path as a whole: a real pb_hrpc_server (started
 * once, in LLVMFuzzerInitialize, on 127.0.0.1 port 0) with the daemon's four routes and
 * handlers (Key, and the delivery engine's Push, Pull, NotifyNewId), authentication with
 * the real key source (keyfetch over the store), over a SQLite store (fuzz_env). Each
 * input becomes one HTTP/1.1 request sent over a loopback socket; the answer is read
 * back and checked.
 *
 * Why a socket and not the handlers directly: it is fast enough (measured 3,000 to 4,800
 * requests/s with ASan on a shared 2-core machine, far above the 100/s floor we set) and
 * it fuzzes what a peer really controls: libmicrohttpd's parsing feeding our transport
 * checks (path, method, Content-Type, Hrpc-Version, sizes, chunked bodies), then auth,
 * then the handler. The delivery workers run as in the daemon (their calls to peers fail
 * at once, fuzz_util.h); initialisation waits until their start-up Pull from alpha is
 * over, since Pushes from alpha are held (then refused with 503) while it lasts.
 *
 * Input: "METHOD PATH\n", header lines "Name: value\n", an empty line, then the body.
 * CR and NUL are removed from the head. The harness adds Host, "Connection: close" and
 * the framing (Content-Length from the real body size), and drops the fuzzer's own
 * Content-Length / Transfer-Encoding / Connection / Host headers: a declared length
 * longer than the body would only make both sides wait. Two pseudo-headers steer it:
 *   X-Fuzz-Sign: ID   adds an Authorization header with a fresh token naming ID (empty:
 *                     alpha.example.org:2289), signed with alpha's key, which the store
 *                     holds: inputs get past authentication to the handlers (other IDs
 *                     exercise the key lookup and fetch, which fail);
 *   X-Fuzz-Chunk: N   sends the body chunked, N bytes per chunk.
 * The server's body limit is 1 KiB here so that 413 is reachable.
 *
 * Invariants checked: the server answers every request with a well-formed request line
 * within 60 s (libmicrohttpd may close silently on a malformed one); every answer of
 * ours (Content-Type application/hrpc) carries Hrpc-Version 1, a status from the
 * documented set and never 500; failures carry a decodable hrpc.v1.Error with an
 * identifier, and 503 a RetryInfo; a 200 to Push is a valid PushResponse, to Pull a
 * valid PullResponse, to Key our public key.
 *
 * Untrusted input: the fuzz input, as a peer's HTTP request.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "crypto/auth.h"
#include "util/buf.h"
#include "fuzz_util.h"
#include "delivery/inbound.h"
#include "net/hrpc_server.h"
#include "util/mem.h"
#include "wire/wire.h"

#define PATH_KEY "/protocol.auth.v1.AuthService/Key"
#define PATH_PULL "/protocol.sync.v1.PostboxService/Pull"
#define PATH_PUSH "/protocol.sync.v1.PostboxService/Push"
#define PATH_NOTIFY "/protocol.sync.v1.PostboxService/NotifyNewId"
/* A hang detector, not a latency check: the server's own bounds (conn_timeout_s 5 s, a key
 * wait under 1 s) end every request in seconds, but a sanitizer build on a loaded shared
 * machine was seen taking over 10 s for one answer; a wall-clock deadline must sit far
 * above anything load can cause (libFuzzer's -timeout, fuzz/run.sh, is above this one). */
#define ANSWER_TIMEOUT_MS 60000
#define MAX_HEADERS 32

static fuzz_env env;
static pb_hrpc_server *srv;
static uint16_t port;

/* The daemon's Key handler (lib/daemon.c, static there). */
static void h_key(void *ctx, const pb_hrpc_request *req, pb_hrpc_reply *rep)
{
    (void)ctx;
    if (pb_wire_empty_decode(req->body, req->body_len) != PB_OK) {
        pb_hrpc_reply_error(rep, 400, "hrpc.http.bad-unary-request", "body is not a KeyRequest");
        return;
    }
    pb_wire_key_resp_encode(pb_keys_public(env.self_keys), &rep->body);
}

static void wait_startup_pull(void);

static void shutdown_all(void)
{
    pb_hrpc_server_free(srv);
    srv = NULL;
    fuzz_env_close(&env);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_log();
    fuzz_env_open(&env, true);
    pb_hrpc_auth auth = {.policy = &env.policy,
                         .keys = env.keyfetch,
                         .rename_key = pb_inbound_rename_key,
                         .rename_proven = pb_inbound_rename_proven,
                         .on_authenticated = pb_inbound_contact,
                         .cb_ctx = env.delivery};
    pb_hrpc_server_opts o = {.listen = "127.0.0.1:0",
                             .max_body = 1024,
                             .threads = 2,
                             .conn_timeout_s = 5,
                             .max_inflight = 64};
    if (pb_hrpc_server_new(&o, &auth, &srv) != PB_OK) abort();
    pb_hrpc_server_route(srv, PATH_KEY, false, h_key, NULL);
    pb_hrpc_server_route(srv, PATH_PULL, true, pb_inbound_pull, env.delivery);
    pb_hrpc_server_route(srv, PATH_PUSH, true, pb_inbound_push, env.delivery);
    pb_hrpc_server_route(srv, PATH_NOTIFY, false, pb_inbound_notify, env.delivery);
    if (pb_hrpc_server_start(srv) != PB_OK) abort();
    port = pb_hrpc_server_port(srv);
    atexit(shutdown_all);
    wait_startup_pull();
    return 0;
}

/* Copies s[0..n) without CR and NUL into a new string. */
static char *clean_line(const char *s, size_t n)
{
    char *o = pb_xmalloc(n + 1), *w = o;
    for (size_t i = 0; i < n; i++)
        if (s[i] != '\r' && s[i] != '\0') *w++ = s[i];
    *w = '\0';
    return o;
}

static bool header_is(const char *line, const char *name)
{
    size_t n = strlen(name);
    return strncasecmp(line, name, n) == 0 && line[n] == ':';
}

static const char *header_value(const char *line)
{
    const char *v = strchr(line, ':') + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    return v;
}

struct request {
    char *method, *path;
    char *headers[MAX_HEADERS];
    size_t nheaders;
    char *sign_as; /* X-Fuzz-Sign, or NULL */
    size_t chunk;  /* X-Fuzz-Chunk, 0 = Content-Length */
    const uint8_t *body;
    size_t body_len;
};

static void request_parse(const uint8_t *data, size_t size, struct request *r)
{
    memset(r, 0, sizeof *r);
    const char *p = (const char *)data, *end = p + size;
    const char *nl = memchr(p, '\n', size);
    char *line = clean_line(p, nl ? (size_t)(nl - p) : size);
    char *sp = strchr(line, ' ');
    r->method = pb_xstrdup(line);
    if (sp) {
        r->method[sp - line] = '\0';
        r->path = pb_xstrdup(sp + 1);
    } else {
        r->path = pb_xstrdup("/");
    }
    free(line);
    p = nl ? nl + 1 : end;
    while (p < end) {
        nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        line = clean_line(p, n);
        p = nl ? nl + 1 : end;
        if (line[0] == '\0') { /* end of the head */
            free(line);
            r->body = (const uint8_t *)p;
            r->body_len = (size_t)(end - p);
            return;
        }
        if (header_is(line, "X-Fuzz-Sign")) {
            free(r->sign_as);
            r->sign_as = pb_xstrdup(header_value(line));
        } else if (header_is(line, "X-Fuzz-Chunk")) {
            r->chunk = strtoul(header_value(line), NULL, 10) % 4096;
        } else if (!header_is(line, "Content-Length") && !header_is(line, "Transfer-Encoding") &&
                   !header_is(line, "Connection") && !header_is(line, "Host") &&
                   r->nheaders < MAX_HEADERS) {
            r->headers[r->nheaders++] = line;
            continue;
        }
        free(line);
    }
}

static void request_free(struct request *r)
{
    free(r->method);
    free(r->path);
    for (size_t i = 0; i < r->nheaders; i++)
        free(r->headers[i]);
    free(r->sign_as);
}

static void request_bytes(const struct request *r, pb_buf *out)
{
    /* The fuzzer's header lines go between Host and the harness's own headers: a line of
     * theirs that starts with a space (obsolete line folding) can then extend Host or
     * another fuzzer header, never Connection or the framing. */
    char *s = pb_xasprintf("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n", r->method, r->path);
    pb_buf_append_str(out, s);
    free(s);
    for (size_t i = 0; i < r->nheaders; i++) {
        pb_buf_append_str(out, r->headers[i]);
        pb_buf_append_str(out, "\r\n");
    }
    if (r->sign_as) {
        /* bound to us, so the extension fields (sequence numbers, batches) are honoured */
        char *tok = pb_auth_header_make(env.peer_keys, r->sign_as[0] ? r->sign_as : FUZZ_PEER_ID,
                                        FUZZ_SELF_ID, (uint64_t)time(NULL));
        if (tok) {
            s = pb_xasprintf("Authorization: %s\r\n", tok);
            pb_buf_append_str(out, s);
            free(s);
            free(tok);
        }
    }
    pb_buf_append_str(out, "Connection: close\r\n");
    if (r->chunk) {
        pb_buf_append_str(out, "Transfer-Encoding: chunked\r\n\r\n");
        for (size_t off = 0; off < r->body_len; off += r->chunk) {
            size_t n = r->body_len - off < r->chunk ? r->body_len - off : r->chunk;
            s = pb_xasprintf("%zx\r\n", n);
            pb_buf_append_str(out, s);
            free(s);
            pb_buf_append(out, r->body + off, n);
            pb_buf_append_str(out, "\r\n");
        }
        pb_buf_append_str(out, "0\r\n\r\n");
    } else {
        s = pb_xasprintf("Content-Length: %zu\r\n\r\n", r->body_len);
        pb_buf_append_str(out, s);
        free(s);
        pb_buf_append(out, r->body, r->body_len);
    }
}

/* True when ans holds a whole answer: the head and Content-Length bytes of body. */
static bool answer_complete(const pb_buf *ans)
{
    if (ans->len < 4) return false;
    char *text = fuzz_cstr(ans->data, ans->len);
    char *sep = strstr(text, "\r\n\r\n");
    bool done = false;
    if (sep) {
        *sep = '\0';
        char *cl = strcasestr(text, "\r\nContent-Length:");
        if (cl) {
            size_t head = (size_t)(sep - text) + 4;
            done = ans->len >= head + strtoul(cl + 17, NULL, 10);
        }
    }
    free(text);
    return done;
}

/* Sends req and reads the answer until it is complete or the server closes. False when
 * the exchange was cut by a reset (the server refused early and closed with our bytes
 * unread). */
static bool exchange(const pb_buf *req, pb_buf *ans)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    FUZZ_ASSERT(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* Out of ephemeral ports (TIME_WAIT sockets of other runs on this machine): wait. */
    int rc = -1;
    for (int tries = 0; tries < 250; tries++) {
        rc = connect(fd, (struct sockaddr *)&a, sizeof a);
        if (rc != 0 && errno == EINTR) {
            /* a signal (libFuzzer's timers) interrupted it: the connection goes on in the
             * background; wait for it and take its outcome */
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            int err = 0;
            socklen_t len = sizeof err;
            while (poll(&pfd, 1, ANSWER_TIMEOUT_MS) < 0 && errno == EINTR) {
            }
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0)
                rc = 0;
            else
                errno = err ? err : ETIMEDOUT;
        }
        if (rc == 0 || errno != EADDRNOTAVAIL) break;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (rc != 0) {
        char why[128];
        snprintf(why, sizeof why, "connect to the server: %s", strerror(errno));
        fuzz_fail(__FILE__, __LINE__, why);
    }
    bool ok = true;
    for (size_t off = 0; off < req->len;) {
        ssize_t w = send(fd, req->data + off, req->len - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            ok = false; /* the server answered and closed before reading everything */
            break;
        }
        off += (size_t)w;
    }
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, ANSWER_TIMEOUT_MS);
        if (pr < 0 && errno == EINTR) continue;
        if (pr == 0) fuzz_fail(__FILE__, __LINE__, "no answer within 60 s");
        uint8_t buf[4096];
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            ok = false;
            break;
        }
        if (n == 0) break;
        pb_buf_append(ans, buf, (size_t)n);
        if (answer_complete(ans)) break;
    }
    /* Close with a reset, not a FIN: a connection per input would otherwise leave
     * hundreds of thousands of TIME_WAIT sockets and run out of ephemeral ports. */
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    return ok;
}

/* Finds header `name` in the answer head; returns its value (copied into out) or NULL. */
static const char *answer_header(const char *head, const char *name, char *out, size_t outlen)
{
    size_t n = strlen(name);
    for (const char *l = strstr(head, "\r\n"); l && l[2] != '\r'; l = strstr(l + 2, "\r\n")) {
        const char *line = l + 2;
        if (strncasecmp(line, name, n) == 0 && line[n] == ':') {
            const char *v = line + n + 1, *e = strstr(v, "\r\n");
            while (*v == ' ')
                v++;
            size_t len = e ? (size_t)(e - v) : strlen(v);
            if (len >= outlen) len = outlen - 1;
            memcpy(out, v, len);
            out[len] = '\0';
            return out;
        }
    }
    return NULL;
}

/* A request line libmicrohttpd must answer: a method of token characters and an
 * origin-form path without spaces or control characters. */
static bool well_formed_line(const struct request *r)
{
    if (!r->method[0] || r->path[0] != '/') return false;
    for (const char *p = r->method; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f ||
            strchr("()<>@,;:\\\"/[]?={}", *p))
            return false;
    for (const char *p = r->path; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f) return false;
    return true;
}

static void check_answer(const struct request *r, const pb_buf *ans)
{
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "---- answer:\n%.*s\n----\n", (int)ans->len, (const char *)ans->data);
    /* libmicrohttpd closes without a word on some malformed request lines; anything
     * else must be answered. */
    if (ans->len == 0 && !well_formed_line(r)) return;
    FUZZ_ASSERT(ans->len > 12 && memcmp(ans->data, "HTTP/1.", 7) == 0);
    char *text = fuzz_cstr(ans->data, ans->len);
    int status = atoi(text + 9);
    char *sep = strstr(text, "\r\n\r\n");
    FUZZ_ASSERT(sep != NULL);
    sep[2] = '\0'; /* head ends with its last line's CRLF */
    const uint8_t *body = ans->data + (size_t)(sep - text) + 4;
    size_t body_len = ans->len - (size_t)(sep - text) - 4;
    char ct[128], ver[32], cl[32];
    /* A request libmicrohttpd split in two gets two answers: look at the first. */
    if (answer_header(text, "Content-Length", cl, sizeof cl)) {
        size_t n = strtoul(cl, NULL, 10);
        FUZZ_ASSERT(n <= body_len);
        body_len = n;
    }
    if (answer_header(text, "Content-Type", ct, sizeof ct) && strcmp(ct, "application/hrpc") == 0) {
        /* One of ours. */
        FUZZ_ASSERT(answer_header(text, "Hrpc-Version", ver, sizeof ver) && strcmp(ver, "1") == 0);
        FUZZ_ASSERT(status == 200 || status == 400 || status == 401 || status == 403 ||
                    status == 404 || status == 405 || status == 409 || status == 413 ||
                    status == 503);
        if (status != 200) {
            char *id = NULL, *msg = NULL;
            uint8_t *det = NULL;
            size_t dlen = 0;
            FUZZ_ASSERT(pb_wire_error_decode(body, body_len, &id, &msg, &det, &dlen) == PB_OK);
            FUZZ_ASSERT(id[0] != '\0');
            if (status == 503) {
                uint32_t ra = 0;
                FUZZ_ASSERT(dlen > 0 && pb_wire_retry_info_decode(det, dlen, &ra) == PB_OK);
                FUZZ_ASSERT(ra > 0);
            }
            free(id);
            free(msg);
            free(det);
        } else if (strcmp(r->path, PATH_PUSH) == 0) {
            uint64_t ack = 0, epoch = 0;
            FUZZ_ASSERT(pb_wire_push_resp_decode(body, body_len, &ack, &epoch) == PB_OK);
        } else if (strcmp(r->path, PATH_PULL) == 0) {
            pb_event *evs = NULL;
            uint64_t *seqs = NULL;
            size_t n = 0;
            uint64_t epoch = 0;
            FUZZ_ASSERT(pb_wire_pull_resp_decode(body, body_len, &evs, &seqs, &n, &epoch) == PB_OK);
            for (size_t i = 0; i < n; i++)
                pb_event_clear(&evs[i]);
            free(evs);
            free(seqs);
        } else if (strcmp(r->path, PATH_KEY) == 0) {
            uint8_t key[32];
            FUZZ_ASSERT(pb_wire_key_resp_decode(body, body_len, key) == PB_OK);
            FUZZ_ASSERT(memcmp(key, pb_keys_public(env.self_keys), 32) == 0);
        }
    }
    free(text);
}

/* Polls with a signed Push from alpha until it is no longer held by the start-up Pull
 * (bounded: 200 tries 50 ms apart, each answered or failed within ANSWER_TIMEOUT_MS). */
static void wait_startup_pull(void)
{
    pb_event ev = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 1, .guild_id = 1};
    pb_buf body = PB_BUF_INIT;
    pb_wire_push_encode(&ev, NULL, 1, 0, &body);
    struct request r = {.method = pb_xstrdup("POST"),
                        .path = pb_xstrdup(PATH_PUSH),
                        .headers = {pb_xstrdup("Content-Type: application/hrpc")},
                        .nheaders = 1,
                        .sign_as = pb_xstrdup(""),
                        .body = body.data,
                        .body_len = body.len};
    bool ready = false;
    for (int i = 0; i < 200 && !ready; i++) {
        pb_buf req = PB_BUF_INIT, ans = PB_BUF_INIT;
        request_bytes(&r, &req);
        ready = exchange(&req, &ans) && ans.len > 12 && memcmp(ans.data + 9, "200", 3) == 0;
        pb_buf_free(&req);
        pb_buf_free(&ans);
        if (!ready) {
            struct timespec ts = {0, 50 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    if (!ready) fprintf(stderr, "fuzz_hrpc: the start-up Pull did not end after 200 tries\n");
    request_free(&r);
    pb_buf_free(&body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct request r;
    request_parse(data, size, &r);
    pb_buf req = PB_BUF_INIT, ans = PB_BUF_INIT;
    request_bytes(&r, &req);
    if (exchange(&req, &ans)) check_answer(&r, &ans);
    pb_buf_free(&req);
    pb_buf_free(&ans);
    request_free(&r);
    return 0;
}
