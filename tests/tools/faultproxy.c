/*
 * faultproxy - a fault-injecting proxy for the hRPC traffic between two postboxd on
 * 127.0.0.1 (test tool, never part of the daemon).
 *
 *   faultproxy LISTEN_PORT TARGET_PORT SEED [options]
 *
 * It accepts TCP connections on 127.0.0.1:LISTEN_PORT and gives each its own upstream
 * connection to 127.0.0.1:TARGET_PORT. Requests are forwarded one at a time (HTTP/1.1,
 * keep-alive); a seeded random schedule decides, for every connection and every request,
 * whether to inject a fault:
 *
 *   refuse        (per connection) reset the connection at once (SO_LINGER 0)
 *   reset-before  reset the client's connection without forwarding the request
 *   reset-after   forward the request, read the whole answer, then reset the client's
 *                 connection: the request took effect (a Push was stored) but its answer
 *                 is lost
 *   delay         forward, read the answer, hold it for --delay-ms (past the client's
 *                 timeout), then send it and close
 *   http500/http503/http429
 *                 answer the request itself with that status and an hrpc.v1.Error body
 *                 (503/429 with RetryInfo 1 s), without forwarding it
 *   blackhole     for --blackhole-ms, every request on any connection is read and never
 *                 answered nor forwarded; its connection is reset when the period ends
 *
 * Balancing (not a fault): with --also-target PORT (repeatable) the client connections go
 * to TARGET_PORT and the further ports in turn, one upstream per client connection, as an
 * L4 load balancer without stickiness spreads them over the nodes of one server.
 *
 * Latency (not a fault): with --latency-ms L and --jitter-ms J every forwarded request is
 * held L ms plus a random 0..J ms (seeded) before it goes upstream, so that requests on
 * different connections (a sender's window of Pushes) overtake each other.
 *
 * Rates are per mille (--KIND PM, or --all PM for every kind). Delays and blackholes are
 * the expensive faults: --slow-gap-ms keeps that long between them. Decisions are drawn in
 * arrival order from one generator seeded with SEED, so a failing run is replayed by the
 * same SEED and options (request timing may still differ between runs).
 *
 * HTTP framing: the proxy must know where a request and an answer end (to reset "after
 * the answer", to hold an answer back). It reads the head up to CRLFCRLF and the body by
 * Content-Length only, which postboxd and libcurl always send here; an answer without one
 * is read to EOF, a chunked message is refused by closing the connection. Nothing else of
 * HTTP is interpreted: the bytes are forwarded unchanged.
 *
 * Output: the seed and options at start, "listening on ..." once accepting, one line per
 * injected fault, and at exit (SIGTERM/SIGINT) the count of injected faults by kind on
 * stderr and, with --stats FILE, as JSON in FILE.
 *
 * Untrusted input: the bytes of both sides; heads are capped at 64 KiB and bodies at
 * 64 MiB, every read and wait is bounded.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "util/buf.h"
#include "wire/wire.h"

#define HEAD_MAX (64 * 1024)
#define BODY_MAX ((size_t)64 * 1024 * 1024)
#define IDLE_MS 120000   /* an idle client connection is closed after this */
#define ANSWER_MS 60000  /* upstream must answer within this */
#define REQUEST_MS 30000 /* a started request must be complete within this */

enum kind {
    K_REFUSE,
    K_RESET_BEFORE,
    K_RESET_AFTER,
    K_DELAY,
    K_HTTP500,
    K_HTTP503,
    K_HTTP429,
    K_BLACKHOLE,
    K__COUNT,
    K_PASS = K__COUNT,
};

static const char *const kind_names[K__COUNT] = {
    "refuse", "reset-before", "reset-after", "delay", "http500", "http503", "http429", "blackhole",
};

static struct {
    uint16_t listen_port, target_port;
    uint16_t targets[8]; /* TARGET_PORT, then the --also-target ports */
    unsigned ntargets;
    uint64_t seed;
    double pm[K__COUNT]; /* per mille */
    int delay_ms, blackhole_ms, slow_gap_ms, max_conns, latency_ms, jitter_ms;
    const char *stats_path;
} opt = {.delay_ms = 4000, .blackhole_ms = 3000, .max_conns = 512};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t g_rng;          /* splitmix64 state, under g_mu */
static int64_t g_blackhole_end; /* monotonic ms, under g_mu */
static int64_t g_slow_until;    /* no slow fault before this, under g_mu */
static atomic_long g_faults[K__COUNT];
static atomic_long g_conns, g_requests, g_swallowed, g_upstream_errors, g_overflow;
static atomic_int g_active;
static volatile sig_atomic_t g_stop;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n > sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t w = write(2, line, (size_t)n);
    (void)w;
}

/* splitmix64; with g_mu held. Uniform in [0, 1). */
static double rnd(void)
{
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (double)(z >> 11) / 9007199254740992.0;
}

/* The fault for the next connection (K_REFUSE or K_PASS). */
static enum kind decide_conn(void)
{
    pthread_mutex_lock(&g_mu);
    double r = rnd() * 1000.0;
    pthread_mutex_unlock(&g_mu);
    return r < opt.pm[K_REFUSE] ? K_REFUSE : K_PASS;
}

/* The fault for the next request: one draw per request, in arrival order. A blackhole in
 * progress swallows the request (K_BLACKHOLE, not counted as a new fault: *in_period). */
static enum kind decide_request(bool *in_period)
{
    pthread_mutex_lock(&g_mu);
    int64_t now = now_ms();
    double r = rnd() * 1000.0;
    *in_period = now < g_blackhole_end;
    enum kind k = K_PASS;
    if (*in_period) {
        k = K_BLACKHOLE;
    } else {
        double acc = 0;
        for (int i = K_RESET_BEFORE; i < K__COUNT; i++) {
            acc += opt.pm[i];
            if (r < acc) {
                k = (enum kind)i;
                break;
            }
        }
        if ((k == K_DELAY || k == K_BLACKHOLE) && now < g_slow_until) k = K_PASS;
        if (k == K_DELAY) g_slow_until = now + opt.delay_ms + opt.slow_gap_ms;
        if (k == K_BLACKHOLE) {
            g_blackhole_end = now + opt.blackhole_ms;
            g_slow_until = g_blackhole_end + opt.slow_gap_ms;
        }
    }
    pthread_mutex_unlock(&g_mu);
    return k;
}

/* ---- sockets ----------------------------------------------------------------------------- */

static void reset_close(int fd)
{
    if (fd < 0) return;
    struct linger l = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
}

/* The upstream of client connection `id`: the targets in turn. */
static int connect_target(long id)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons(opt.targets[(unsigned long)id % opt.ntargets]),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static bool send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    int64_t deadline = now_ms() + REQUEST_MS;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            c += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (now_ms() > deadline || g_stop) return false;
            struct pollfd pf = {fd, POLLOUT, 0};
            poll(&pf, 1, 200);
            continue;
        }
        return false;
    }
    return true;
}

/* An input side: bytes read but not consumed yet. */
struct in {
    int fd;
    pb_buf buf;
};

/* Reads more bytes into in->buf, waiting at most until `deadline` (monotonic ms).
 * 1 = got bytes, 0 = EOF, -1 = error or timeout or stop. */
static int fill(struct in *in, int64_t deadline)
{
    for (;;) {
        if (g_stop) return -1;
        int64_t left = deadline - now_ms();
        if (left <= 0) return -1;
        struct pollfd pf = {in->fd, POLLIN, 0};
        int pr = poll(&pf, 1, left > 200 ? 200 : (int)left);
        if (pr < 0 && errno != EINTR) return -1;
        if (pr <= 0) continue;
        char tmp[16384];
        ssize_t r = recv(in->fd, tmp, sizeof tmp, 0);
        if (r > 0) {
            pb_buf_append(&in->buf, tmp, (size_t)r);
            return 1;
        }
        if (r == 0) return 0;
        if (errno != EINTR && errno != EAGAIN) return -1;
    }
}

/* Drops the first n bytes of in->buf. */
static void consume(struct in *in, size_t n)
{
    memmove(in->buf.data, in->buf.data + n, in->buf.len - n);
    in->buf.len -= n;
}

/* The value of header `name` in the head [p, p+n), or NULL. */
static const char *header(const char *head, size_t n, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    const char *end = head + n;
    const char *line = memchr(head, '\n', n);
    while (line && line + 1 < end) {
        line++;
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol) break;
        if ((size_t)(eol - line) > nl && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        line = eol;
    }
    return NULL;
}

struct msg {
    pb_buf raw;     /* head + body, as received */
    int status;     /* answers: the status code */
    bool to_eof;    /* answer delimited by the end of the connection */
    char path[128]; /* requests: the request target, for the log */
};

static void msg_clear(struct msg *m)
{
    pb_buf_free(&m->raw);
    memset(m, 0, sizeof *m);
}

/*
 * Reads one HTTP message from `in` into m. first_deadline bounds the wait for its first
 * byte (idle time), then REQUEST_MS (requests) or ANSWER_MS (answers) the rest.
 * 1 = a message, 0 = clean EOF before any byte, -1 = error, timeout or bad framing.
 */
static int read_msg(struct in *in, bool answer, int64_t first_deadline, struct msg *m)
{
    memset(m, 0, sizeof *m);
    int64_t deadline = first_deadline;
    char *hend = NULL;
    for (;;) {
        if (in->buf.len) {
            hend = memmem(in->buf.data, in->buf.len, "\r\n\r\n", 4);
            if (hend) break;
            if (in->buf.len > HEAD_MAX) return -1;
            int64_t rest = now_ms() + (answer ? ANSWER_MS : REQUEST_MS);
            if (deadline > rest) deadline = rest;
        }
        int r = fill(in, deadline);
        if (r == 0) return in->buf.len ? -1 : 0;
        if (r < 0) return -1;
    }
    const char *head = (const char *)in->buf.data;
    size_t hlen = (size_t)(hend - head) + 4;
    size_t vlen;
    const char *v = header(head, hlen, "Transfer-Encoding", &vlen);
    if (v) return -1; /* chunked: not spoken here */
    uint64_t clen = 0;
    bool has_len = false;
    v = header(head, hlen, "Content-Length", &vlen);
    if (v) {
        char num[32];
        if (vlen == 0 || vlen >= sizeof num) return -1;
        memcpy(num, v, vlen);
        num[vlen] = '\0';
        char *e;
        errno = 0;
        clen = strtoull(num, &e, 10);
        if (*e || errno || clen > BODY_MAX) return -1;
        has_len = true;
    }
    if (answer) {
        if (hlen < 12 || strncmp(head, "HTTP/1.", 7) != 0) return -1;
        m->status = atoi(head + 9);
        if (!has_len && m->status >= 200 && m->status != 204 && m->status != 304) m->to_eof = true;
    } else {
        const char *sp = memchr(head, ' ', hlen);
        if (sp) {
            size_t i = 0;
            for (sp++; i < sizeof m->path - 1 && sp < head + hlen && *sp != ' ' && *sp != '\r';)
                m->path[i++] = *sp++;
            m->path[i] = '\0';
        }
    }
    deadline = now_ms() + (answer ? ANSWER_MS : REQUEST_MS);
    if (m->to_eof) {
        for (;;) {
            if (in->buf.len > HEAD_MAX + BODY_MAX) return -1;
            int r = fill(in, deadline);
            if (r == 0) break;
            if (r < 0) return -1;
        }
        clen = in->buf.len - hlen;
    }
    while (in->buf.len < hlen + clen) {
        if (fill(in, deadline) != 1) return -1;
    }
    pb_buf_append(&m->raw, in->buf.data, hlen + (size_t)clen);
    consume(in, hlen + (size_t)clen);
    return 1;
}

/* The proxy's own hRPC error answer. */
static bool send_error(int fd, int status, const char *reason, uint32_t retry_after)
{
    pb_buf details = PB_BUF_INIT, body = PB_BUF_INIT;
    if (retry_after) pb_wire_retry_info_encode(retry_after, &details);
    const char *id = status == 429   ? "hrpc.resource-exhausted"
                     : status == 503 ? "hrpc.unavailable"
                                     : "hrpc.internal-server-error";
    pb_wire_error_encode(id, "injected by faultproxy", details.data, details.len, &body);
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/hrpc\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     status, reason, body.len);
    bool ok = send_all(fd, head, (size_t)n) && send_all(fd, body.data, body.len);
    pb_buf_free(&details);
    pb_buf_free(&body);
    return ok;
}

static void count(enum kind k, long conn, long req, const char *path)
{
    atomic_fetch_add(&g_faults[k], 1);
    logf_("faultproxy: conn %ld request %ld %s: %s", conn, req, path[0] ? path : "-",
          kind_names[k]);
}

/* ---- one client connection ------------------------------------------------------------------ */

struct conn {
    int down;
    long id;
};

/* Waits until the client has a request (1), closed (0), or the upstream went away or
 * something failed (-1). */
static int wait_request(struct in *din, int up)
{
    int64_t deadline = now_ms() + IDLE_MS;
    while (!g_stop && now_ms() < deadline) {
        if (din->buf.len) return 1;
        struct pollfd pf[2] = {{din->fd, POLLIN, 0}, {up, POLLIN, 0}};
        int pr = poll(pf, up >= 0 ? 2 : 1, 200);
        if (pr < 0 && errno != EINTR) return -1;
        if (pr <= 0) continue;
        if (up >= 0 && pf[1].revents) return -1; /* upstream closed (or spoke unasked) */
        if (pf[0].revents) return 1;
    }
    return -1;
}

static void *conn_main(void *arg)
{
    struct conn *c = arg;
    struct in din = {.fd = c->down, .buf = PB_BUF_INIT};
    struct in uin = {.fd = -1, .buf = PB_BUF_INIT};
    struct msg req = {0}, ans = {0};
    bool reset = true; /* how the client connection ends */
    long nreq = 0;
    for (;;) {
        int w = wait_request(&din, uin.fd);
        if (w <= 0) {
            reset = w < 0;
            break;
        }
        int r = read_msg(&din, false, now_ms() + REQUEST_MS, &req);
        if (r <= 0) {
            reset = r < 0;
            break;
        }
        nreq++;
        atomic_fetch_add(&g_requests, 1);
        bool in_period = false;
        enum kind k = decide_request(&in_period);
        if (k == K_BLACKHOLE) {
            if (!in_period) count(K_BLACKHOLE, c->id, nreq, req.path);
            atomic_fetch_add(&g_swallowed, 1);
            for (;;) {
                pthread_mutex_lock(&g_mu);
                int64_t end = g_blackhole_end;
                pthread_mutex_unlock(&g_mu);
                if (g_stop || now_ms() >= end) break;
                sleep_ms(50);
            }
            break; /* reset */
        }
        if (k == K_RESET_BEFORE) {
            count(k, c->id, nreq, req.path);
            break;
        }
        if (k == K_HTTP500 || k == K_HTTP503 || k == K_HTTP429) {
            count(k, c->id, nreq, req.path);
            bool ok = k == K_HTTP500   ? send_error(c->down, 500, "Internal Server Error", 0)
                      : k == K_HTTP503 ? send_error(c->down, 503, "Service Unavailable", 1)
                                       : send_error(c->down, 429, "Too Many Requests", 1);
            msg_clear(&req);
            if (!ok) break;
            continue;
        }
        /* forward (after the latency, if any) */
        if (opt.latency_ms || opt.jitter_ms) {
            pthread_mutex_lock(&g_mu);
            int hold = opt.latency_ms + (int)(rnd() * (opt.jitter_ms + 1));
            pthread_mutex_unlock(&g_mu);
            sleep_ms(hold);
        }
        if (uin.fd < 0) {
            uin.fd = connect_target(c->id);
            if (uin.fd < 0) {
                atomic_fetch_add(&g_upstream_errors, 1);
                break;
            }
        }
        if (!send_all(uin.fd, req.raw.data, req.raw.len)) {
            atomic_fetch_add(&g_upstream_errors, 1);
            break;
        }
        /* the answer (forwarding interim 1xx answers as they come) */
        bool got = false;
        for (int guard = 0; guard < 8; guard++) {
            r = read_msg(&uin, true, now_ms() + ANSWER_MS, &ans);
            if (r <= 0) break;
            if (ans.status >= 200) {
                got = true;
                break;
            }
            if (!send_all(c->down, ans.raw.data, ans.raw.len)) break;
            msg_clear(&ans);
        }
        if (!got) {
            atomic_fetch_add(&g_upstream_errors, 1);
            break;
        }
        if (k == K_RESET_AFTER) {
            count(k, c->id, nreq, req.path);
            break;
        }
        if (k == K_DELAY) {
            count(k, c->id, nreq, req.path);
            int64_t until = now_ms() + opt.delay_ms;
            while (!g_stop && now_ms() < until)
                sleep_ms(50);
            send_all(c->down, ans.raw.data, ans.raw.len);
            reset = false;
            break; /* the client has given up on this connection */
        }
        if (!send_all(c->down, ans.raw.data, ans.raw.len)) break;
        bool eof = ans.to_eof;
        msg_clear(&req);
        msg_clear(&ans);
        if (eof) {
            reset = false;
            break;
        }
    }
    if (reset)
        reset_close(c->down);
    else
        close(c->down);
    if (uin.fd >= 0) close(uin.fd);
    pb_buf_free(&din.buf);
    pb_buf_free(&uin.buf);
    msg_clear(&req);
    msg_clear(&ans);
    free(c);
    atomic_fetch_sub(&g_active, 1);
    return NULL;
}

/* ---- main ------------------------------------------------------------------------------------ */

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void report(void)
{
    char line[1024];
    int n = snprintf(line, sizeof line,
                     "faultproxy: seed %llu: %ld connections, %ld requests, %ld swallowed by "
                     "blackholes, %ld upstream errors; injected",
                     (unsigned long long)opt.seed, atomic_load(&g_conns), atomic_load(&g_requests),
                     atomic_load(&g_swallowed), atomic_load(&g_upstream_errors));
    long total = 0;
    for (int i = 0; i < K__COUNT && n > 0 && (size_t)n < sizeof line; i++) {
        total += atomic_load(&g_faults[i]);
        n += snprintf(line + n, sizeof line - (size_t)n, " %s=%ld", kind_names[i],
                      atomic_load(&g_faults[i]));
    }
    if (n > 0 && (size_t)n < sizeof line)
        snprintf(line + n, sizeof line - (size_t)n, " total=%ld", total);
    logf_("%s", line);
    if (!opt.stats_path) return;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", opt.stats_path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        logf_("faultproxy: cannot write %s: %s", tmp, strerror(errno));
        return;
    }
    fprintf(f,
            "{\"seed\": %llu, \"connections\": %ld, \"requests\": %ld, \"swallowed\": %ld, "
            "\"upstream_errors\": %ld, \"overflow\": %ld, \"total\": %ld, \"faults\": {",
            (unsigned long long)opt.seed, atomic_load(&g_conns), atomic_load(&g_requests),
            atomic_load(&g_swallowed), atomic_load(&g_upstream_errors), atomic_load(&g_overflow),
            total);
    for (int i = 0; i < K__COUNT; i++)
        fprintf(f, "%s\"%s\": %ld", i ? ", " : "", kind_names[i], atomic_load(&g_faults[i]));
    fprintf(f, "}}\n");
    if (fclose(f) == 0) rename(tmp, opt.stats_path);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: faultproxy LISTEN_PORT TARGET_PORT SEED [options]\n"
            "  --all PM            every fault kind at PM per mille\n"
            "  --refuse PM         per connection\n"
            "  --reset-before PM, --reset-after PM, --delay PM, --http500 PM, --http503 PM,\n"
            "  --http429 PM, --blackhole PM    per request\n"
            "  --delay-ms N        how long a delayed answer is held (4000)\n"
            "  --blackhole-ms N    how long a blackhole lasts (3000)\n"
            "  --slow-gap-ms N     least time between two delays/blackholes (0)\n"
            "  --max-conns N       client connections at once (512)\n"
            "  --latency-ms N, --jitter-ms N  hold each forwarded request N ms + 0..J ms\n"
            "  --also-target PORT  one more upstream (repeatable): connections go to each in turn\n"
            "  --stats FILE        write the counts as JSON at exit\n");
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
    char *e;
    errno = 0;
    long v = strtol(s, &e, 10);
    if (!*s || *e || errno || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static bool parse_args(int argc, char **argv)
{
    long v;
    if (argc < 4) return false;
    if (!parse_long(argv[1], 1, 65535, &v)) return false;
    opt.listen_port = (uint16_t)v;
    if (!parse_long(argv[2], 1, 65535, &v)) return false;
    opt.target_port = (uint16_t)v;
    opt.targets[opt.ntargets++] = (uint16_t)v;
    char *e;
    errno = 0;
    opt.seed = strtoull(argv[3], &e, 10);
    if (!*argv[3] || *e || errno) return false;
    for (int i = 4; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) return false;
        const char *val = argv[++i];
        if (!strcmp(a, "--stats")) {
            opt.stats_path = val;
            continue;
        }
        if (!strcmp(a, "--also-target")) {
            if (opt.ntargets >= sizeof opt.targets / sizeof opt.targets[0] ||
                !parse_long(val, 1, 65535, &v))
                return false;
            opt.targets[opt.ntargets++] = (uint16_t)v;
            continue;
        }
        int *ip = !strcmp(a, "--delay-ms")       ? &opt.delay_ms
                  : !strcmp(a, "--blackhole-ms") ? &opt.blackhole_ms
                  : !strcmp(a, "--slow-gap-ms")  ? &opt.slow_gap_ms
                  : !strcmp(a, "--max-conns")    ? &opt.max_conns
                  : !strcmp(a, "--latency-ms")   ? &opt.latency_ms
                  : !strcmp(a, "--jitter-ms")    ? &opt.jitter_ms
                                                 : NULL;
        if (ip) {
            if (!parse_long(val, 0, 3600000, &v)) return false;
            *ip = (int)v;
            continue;
        }
        double pm = strtod(val, &e);
        if (!*val || *e || pm < 0 || pm > 1000) return false;
        bool found = false;
        for (int k = 0; k < K__COUNT; k++) {
            if (!strcmp(a, "--all") ||
                (a[0] == '-' && a[1] == '-' && !strcmp(a + 2, kind_names[k]))) {
                opt.pm[k] = pm;
                found = true;
            }
        }
        if (!found) return false;
    }
    double sum = 0;
    for (int k = K_RESET_BEFORE; k < K__COUNT; k++)
        sum += opt.pm[k];
    return sum <= 1000;
}

int main(int argc, char **argv)
{
    if (!parse_args(argc, argv)) {
        usage();
        return 2;
    }
    g_rng = opt.seed;
    char rates[512];
    int n = 0;
    for (int k = 0; k < K__COUNT; k++)
        n += snprintf(rates + n, sizeof rates - (size_t)n, " %s=%g", kind_names[k], opt.pm[k]);
    logf_("faultproxy: 127.0.0.1:%u -> 127.0.0.1:%u seed %llu (same seed and options replay the "
          "schedule); per mille:%s; delay %d ms, blackhole %d ms, slow gap %d ms",
          opt.listen_port, opt.target_port, (unsigned long long)opt.seed, rates, opt.delay_ms,
          opt.blackhole_ms, opt.slow_gap_ms);

    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons(opt.listen_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 128) != 0) {
        logf_("faultproxy: cannot listen on 127.0.0.1:%u: %s", opt.listen_port, strerror(errno));
        return 1;
    }
    logf_("faultproxy: listening on 127.0.0.1:%u", opt.listen_port);

    while (!g_stop) {
        struct pollfd pf = {lfd, POLLIN, 0};
        if (poll(&pf, 1, 200) <= 0) continue;
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) continue;
        long id = atomic_fetch_add(&g_conns, 1) + 1;
        if (decide_conn() == K_REFUSE) {
            atomic_fetch_add(&g_faults[K_REFUSE], 1);
            logf_("faultproxy: conn %ld: refuse", id);
            reset_close(fd);
            continue;
        }
        if (atomic_load(&g_active) >= opt.max_conns) {
            atomic_fetch_add(&g_overflow, 1);
            reset_close(fd);
            continue;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) abort();
        c->down = fd;
        c->id = id;
        atomic_fetch_add(&g_active, 1);
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&at, 256 * 1024);
        if (pthread_create(&t, &at, conn_main, c) != 0) {
            atomic_fetch_sub(&g_active, 1);
            reset_close(fd);
            free(c);
        }
        pthread_attr_destroy(&at);
    }
    close(lfd);
    /* Give connection threads a moment to notice the stop (bounded), then report. */
    for (int i = 0; i < 50 && atomic_load(&g_active) > 0; i++)
        sleep_ms(20);
    report();
    return 0;
}
