/*
 * resolve_test - host names on the I/O loop without threads (lib/net/resolve.h), against
 * a DNS server played by the test on 127.0.0.1 (UDP): one that answers A queries with the
 * addresses the test chose, or one that never answers.
 *
 *   answers     a name resolves to its first address; a second lookup comes from the cache
 *               (no new query); pb_resolver_failed moves the name on to its next address
 *   hung DNS    50 names whose server never answers: every lookup fails within the
 *               timeout, the process runs no more threads meanwhile (no thread per lookup),
 *               and a repeated lookup fails at once from the negative cache (no new query)
 *   pending     beyond max_pending names at once, lookups are refused with PB_ERR_BUSY
 *   stop        lookups still waiting when the loop stops end with PB_ERR_SHUTDOWN
 *   shares      (issue 18, attack 6) 20 names under one domain whose DNS stalls take at
 *               most per_domain of the pending lookups: a real peer's name in another
 *               domain is still looked up (not refused "too many names being resolved at
 *               once"); lookups for clients take at most for_clients, one client address
 *               at most per_client, and our own lookups still run when clients' are full;
 *               pb_resolver_domain groups names by their last two labels (three for
 *               co.uk-like ones). PBT_PER_DOMAIN=0 runs it with the domain's share off,
 *               as the resolver was before it had one: the real peer's name is refused
 *   client      hrpc_client reaches a server by a name the fake DNS resolves
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "net/hrpc_client.h"
#include "net/ioloop.h"
#include "net/resolve.h"

/* ---- a DNS server on 127.0.0.1 ------------------------------------------------------------- */

struct dns {
    int fd;
    uint16_t port;
    bool answer;         /* false: never answers */
    uint8_t addrs[4][4]; /* IPv4 answers to A queries */
    atomic_int naddrs;
    atomic_int queries; /* datagrams received */
    atomic_bool stop;
    pthread_t thr;
};

/* Answers q (n bytes) into out: its question, and for an A query the chosen addresses
 * (other types: no records). Returns the answer's length, 0 to drop it. */
static size_t dns_answer(const struct dns *d, const uint8_t *q, size_t n, uint8_t *out)
{
    if (n < 12) return 0;
    size_t i = 12;
    while (i < n && q[i]) /* QNAME labels */
        i += (size_t)q[i] + 1;
    if (i + 5 > n) return 0;
    size_t qend = i + 5; /* the zero label, QTYPE, QCLASS */
    uint16_t qtype = (uint16_t)(q[i + 1] << 8 | q[i + 2]);
    int an = qtype == 1 ? atomic_load(&d->naddrs) : 0;
    memcpy(out, q, qend);
    out[2] = 0x81; /* response, recursion desired */
    out[3] = 0x80; /* recursion available, NOERROR */
    out[4] = 0, out[5] = 1;
    out[6] = 0, out[7] = (uint8_t)an;
    out[8] = out[9] = out[10] = out[11] = 0;
    size_t o = qend;
    for (int k = 0; k < an; k++) {
        static const uint8_t rr[] = {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4};
        memcpy(out + o, rr, sizeof rr);
        memcpy(out + o + sizeof rr, d->addrs[k], 4);
        o += sizeof rr + 4;
    }
    return o;
}

static void *dns_main(void *arg)
{
    struct dns *d = arg;
    while (!atomic_load(&d->stop)) {
        struct pollfd p = {.fd = d->fd, .events = POLLIN};
        if (poll(&p, 1, 50) != 1) continue;
        uint8_t q[512], a[1024];
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(d->fd, q, sizeof q, 0, (struct sockaddr *)&from, &fl);
        if (n <= 0) continue;
        atomic_fetch_add(&d->queries, 1);
        if (!d->answer) continue;
        size_t len = dns_answer(d, q, (size_t)n, a);
        if (len) sendto(d->fd, a, len, 0, (struct sockaddr *)&from, fl);
    }
    return NULL;
}

static void dns_start(struct dns *d, bool answer)
{
    d->answer = answer;
    d->fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    CHECK(bind(d->fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
          getsockname(d->fd, (struct sockaddr *)&sa, &sl) == 0);
    d->port = ntohs(sa.sin_port);
    pthread_create(&d->thr, NULL, dns_main, d);
}

static void dns_stop(struct dns *d)
{
    atomic_store(&d->stop, true);
    pthread_join(d->thr, NULL);
    close(d->fd);
}

/* ---- lookups from the test thread -------------------------------------------------------------
 */

struct result {
    atomic_bool done;
    pb_err err;
    char addr[64];
    char why[256];
    int64_t at;
};

static void on_result(void *ctx, pb_err err, const char *addr, const char *why)
{
    struct result *r = ctx;
    r->err = err;
    snprintf(r->addr, sizeof r->addr, "%s", addr ? addr : "");
    snprintf(r->why, sizeof r->why, "%s", why ? why : "");
    r->at = pbt_now_ms();
    atomic_store(&r->done, true);
}

struct lookup {
    pb_resolver *r;
    const char *host;
    struct result *res;
    bool for_client;
    const uint8_t *addr;
};

static void lookup_on_loop(void *arg)
{
    struct lookup *l = arg;
    if (l->for_client)
        pb_resolver_lookup_for(l->r, l->host, l->addr, on_result, l->res);
    else
        pb_resolver_lookup(l->r, l->host, on_result, l->res);
}

/* A lookup on behalf of the client address addr (16 bytes, or NULL). */
static void lookup_for(pb_ioloop *loop, pb_resolver *r, const char *host, const uint8_t *addr,
                       struct result *res)
{
    memset(res, 0, sizeof *res);
    struct lookup l = {r, host, res, true, addr};
    pb_ioloop_call(loop, lookup_on_loop, &l);
}

static void lookup(pb_ioloop *loop, pb_resolver *r, const char *host, struct result *res)
{
    memset(res, 0, sizeof *res);
    struct lookup l = {r, host, res, false, NULL};
    pb_ioloop_call(loop, lookup_on_loop, &l);
}

static bool all_done(struct result *rs, int n, int timeout_ms)
{
    for (int64_t end = pbt_now_ms() + timeout_ms;;) {
        int k = 0;
        while (k < n && atomic_load(&rs[k].done))
            k++;
        if (k == n) return true;
        if (pbt_now_ms() > end) return false;
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

struct failed {
    pb_resolver *r;
    const char *host, *addr;
};

static void failed_on_loop(void *arg)
{
    struct failed *f = arg;
    pb_resolver_failed(f->r, f->host, f->addr);
}

static pb_ioloop *new_loop(void)
{
    pb_ioloop *loop = NULL;
    CHECK_OK(pb_ioloop_new(NULL, &loop));
    CHECK_OK(pb_ioloop_start(loop));
    return loop;
}

static void test_answers(void)
{
    struct dns d = {.naddrs = 2, .addrs = {{127, 0, 0, 7}, {127, 0, 0, 8}}};
    dns_start(&d, true);
    char servers[64];
    snprintf(servers, sizeof servers, "127.0.0.1:%u", d.port);
    pb_ioloop *loop = new_loop();
    pb_resolver *r = NULL;
    pb_resolver_opts o = {.servers = servers, .timeout_ms = 500, .tries = 1};
    CHECK_OK(pb_resolver_new(loop, &o, &r));
    struct result res;
    lookup(loop, r, "peer.test", &res);
    CHECK(all_done(&res, 1, 5000));
    CHECKF(res.err == PB_OK && !strcmp(res.addr, "127.0.0.7"), "peer.test: %s %s %s",
           pb_strerror(res.err), res.addr, res.why);
    int q = atomic_load(&d.queries);
    CHECKF(q >= 1, "the DNS server was asked (%d queries)", q);
    /* again: from the cache, no query */
    lookup(loop, r, "peer.test", &res);
    CHECK(all_done(&res, 1, 5000));
    CHECK(res.err == PB_OK && !strcmp(res.addr, "127.0.0.7"));
    CHECK_INT(atomic_load(&d.queries), q);
    /* the first address failed: the next one */
    struct failed f = {r, "peer.test", "127.0.0.7"};
    pb_ioloop_call(loop, failed_on_loop, &f);
    lookup(loop, r, "peer.test", &res);
    CHECK(all_done(&res, 1, 5000));
    CHECKF(res.err == PB_OK && !strcmp(res.addr, "127.0.0.8"), "after a failure: %s", res.addr);
    CHECK_INT(pb_resolver_cached(r), 1);
    pb_resolver_free(r);
    pb_ioloop_free(loop);
    dns_stop(&d);
}

#define NHUNG 50

static void test_hung_dns(void)
{
    struct dns d = {0};
    dns_start(&d, false);
    char servers[64];
    snprintf(servers, sizeof servers, "127.0.0.1:%u", d.port);
    pb_ioloop *loop = new_loop();
    pb_resolver *r = NULL;
    pb_resolver_opts o = {.servers = servers, .timeout_ms = 300, .tries = 1};
    CHECK_OK(pb_resolver_new(loop, &o, &r));
    int threads0 = pbt_proc_entries(getpid(), "task");
    static struct result rs[NHUNG];
    static char names[NHUNG][64];
    int64_t t0 = pbt_now_ms();
    for (int i = 0; i < NHUNG; i++) {
        snprintf(names[i], sizeof names[i], "n%d.hung.test", i);
        lookup(loop, r, names[i], &rs[i]);
    }
    int threads_max = pbt_proc_entries(getpid(), "task");
    bool done = false;
    while (!done && pbt_now_ms() < t0 + 10000) {
        int t = pbt_proc_entries(getpid(), "task");
        if (t > threads_max) threads_max = t;
        done = all_done(rs, NHUNG, 10);
    }
    int64_t took = pbt_now_ms() - t0;
    CHECKF(done, "every lookup of a hung DNS ended (%lld ms)", (long long)took);
    int failed = 0;
    for (int i = 0; i < NHUNG; i++)
        failed += rs[i].err == PB_ERR_NET && strstr(rs[i].why, names[i]) != NULL;
    CHECKF(failed == NHUNG, "%d of %d failed with PB_ERR_NET naming the host (first: %s %s)",
           failed, NHUNG, pb_strerror(rs[0].err), rs[0].why);
    CHECKF(threads_max == threads0, "threads %d before, %d at most during %d lookups", threads0,
           threads_max, NHUNG);
    fprintf(stderr,
            "resolve: %d lookups of a DNS that never answers ended in %lld ms, %d threads\n", NHUNG,
            (long long)took, threads_max);
    CHECKF(atomic_load(&d.queries) >= NHUNG, "%d queries sent", atomic_load(&d.queries));
    /* again: the failure is cached */
    int q = atomic_load(&d.queries);
    struct result res;
    int64_t t1 = pbt_now_ms();
    lookup(loop, r, names[0], &res);
    CHECK(all_done(&res, 1, 5000));
    CHECKF(res.err == PB_ERR_NET && res.at - t1 < 200, "cached failure: %s in %lld ms",
           pb_strerror(res.err), (long long)(res.at - t1));
    CHECK_INT(atomic_load(&d.queries), q);
    pb_resolver_free(r);
    pb_ioloop_free(loop);
    dns_stop(&d);
}

static void test_pending_and_stop(void)
{
    struct dns d = {0};
    dns_start(&d, false);
    char servers[64];
    snprintf(servers, sizeof servers, "127.0.0.1:%u", d.port);
    pb_ioloop *loop = new_loop();
    pb_resolver *r = NULL;
    pb_resolver_opts o = {.servers = servers, .timeout_ms = 5000, .tries = 1, .max_pending = 4};
    CHECK_OK(pb_resolver_new(loop, &o, &r));
    static struct result rs[8];
    static char names[8][64];
    for (int i = 0; i < 8; i++) {
        snprintf(names[i], sizeof names[i], "p%d.hung.test", i);
        lookup(loop, r, names[i], &rs[i]);
    }
    CHECK(all_done(rs + 4, 4, 2000));
    for (int i = 4; i < 8; i++)
        CHECKF(rs[i].err == PB_ERR_BUSY, "lookup %d beyond max_pending: %s", i,
               pb_strerror(rs[i].err));
    for (int i = 0; i < 4; i++)
        CHECKF(!atomic_load(&rs[i].done), "lookup %d still waits", i);
    pb_ioloop_stop(loop); /* ends the 4 waiting lookups */
    CHECK(all_done(rs, 4, 2000));
    for (int i = 0; i < 4; i++)
        CHECKF(rs[i].err == PB_ERR_SHUTDOWN, "lookup %d at the stop: %s", i,
               pb_strerror(rs[i].err));
    pb_resolver_free(r);
    pb_ioloop_free(loop);
    dns_stop(&d);
}

static void expect_domain(const char *host, const char *want)
{
    char got[256];
    pb_resolver_domain(host, got, sizeof got);
    CHECKF(!strcmp(got, want), "domain of %s: %s, want %s", host, got, want);
}

static void test_shares(void)
{
    expect_domain("a.b.evil.test", "evil.test");
    expect_domain("evil.test", "evil.test");
    expect_domain("localhost", "localhost");
    expect_domain("x.y.example.co.uk", "example.co.uk");
    expect_domain("example.co.uk", "example.co.uk");
    expect_domain("peer.example.de", "example.de");
    expect_domain("a.b.c.d.example.com.", "example.com");

    struct dns d = {0};
    dns_start(&d, false); /* every query stalls */
    char servers[64];
    snprintf(servers, sizeof servers, "127.0.0.1:%u", d.port);
    pb_ioloop *loop = new_loop();
    pb_resolver *r = NULL;
    const char *share_env = getenv("PBT_PER_DOMAIN"); /* 0: the share off, as before it */
    pb_resolver_opts o = {.servers = servers,
                          .timeout_ms = 10000,
                          .tries = 1,
                          .max_pending = 16,
                          .for_clients = 6,
                          .per_client = 2,
                          .per_domain = share_env ? (unsigned)atoi(share_env) : 4};
    CHECK_OK(pb_resolver_new(loop, &o, &r));

    /* our deliveries to 20 verified IDs under one wildcard domain whose DNS stalls */
    static struct result evil[20], real, marker;
    static char names[20][64];
    for (int i = 0; i < 20; i++) {
        snprintf(names[i], sizeof names[i], "id%d.evil.test", i);
        lookup(loop, r, names[i], &evil[i]);
    }
    /* then a real peer's name: the refusals above and a marker refused after it are handed
     * over in order by posted tasks, so once the marker is done, so would be a refusal */
    lookup(loop, r, "postbox.good.test", &real);
    lookup(loop, r, "id99.evil.test", &marker);
    CHECK(all_done(&marker, 1, 5000));
    int waiting = 0, refused = 0;
    for (int i = 0; i < 20; i++) {
        if (!atomic_load(&evil[i].done))
            waiting++;
        else if (evil[i].err == PB_ERR_BUSY)
            refused++;
    }
    fprintf(stderr,
            "shares: 20 stalled names of evil.test: %d pending, %d refused; the real "
            "peer's name: %s%s%s%s\n",
            waiting, refused, atomic_load(&real.done) ? "refused, " : "pending (looked up)",
            atomic_load(&real.done) ? pb_strerror(real.err) : "",
            atomic_load(&real.done) ? ": " : "", atomic_load(&real.done) ? real.why : "");
    CHECKF(waiting == 4 && refused == 16, "per_domain 4: %d pending, %d refused", waiting, refused);
    CHECKF(!atomic_load(&real.done), "the real peer's name is looked up, not refused (%s: %s)",
           pb_strerror(real.err), real.why);
    CHECKF(marker.err == PB_ERR_BUSY && strstr(marker.why, "domain"), "over the domain's share: %s",
           marker.why);

    /* lookups for clients (key fetches their tokens asked for): addresses A, B, C */
    uint8_t a[16] = {1}, b[16] = {2}, c[16] = {3};
    static struct result fa[3], fb[2], fc[2], fd, own;
    static char cn[8][64];
    for (int i = 0; i < 8; i++)
        snprintf(cn[i], sizeof cn[i], "k%d.d%d.test", i, i);
    lookup_for(loop, r, cn[0], a, &fa[0]);
    lookup_for(loop, r, cn[1], a, &fa[1]);
    lookup_for(loop, r, cn[2], a, &fa[2]); /* A's third */
    lookup_for(loop, r, cn[3], b, &fb[0]);
    lookup_for(loop, r, cn[4], b, &fb[1]);
    lookup_for(loop, r, cn[5], c, &fc[0]);
    lookup_for(loop, r, cn[6], c, &fc[1]); /* the clients' sixth */
    lookup_for(loop, r, cn[7], NULL, &fd); /* a seventh for clients */
    lookup(loop, r, "own.d8.test", &own);  /* ours */
    lookup(loop, r, "id98.evil.test", &marker);
    CHECK(all_done(&marker, 1, 5000));
    CHECKF(atomic_load(&fa[2].done) && fa[2].err == PB_ERR_BUSY && strstr(fa[2].why, "address"),
           "A's third lookup: refused for the address (%s)", fa[2].why);
    CHECKF(atomic_load(&fd.done) && fd.err == PB_ERR_BUSY && strstr(fd.why, "clients"),
           "the seventh lookup for clients: refused (%s)", fd.why);
    const struct result *pend[] = {&fa[0], &fa[1], &fb[0], &fb[1], &fc[0], &fc[1], &own};
    for (size_t i = 0; i < sizeof pend / sizeof pend[0]; i++)
        CHECKF(!atomic_load(&pend[i]->done), "lookup %zu within its shares is pending (%s)", i,
               pend[i]->why);
    pb_ioloop_stop(loop);
    pb_resolver_free(r);
    pb_ioloop_free(loop);
    dns_stop(&d);
}

/* hrpc_client reaches a server by a name: 127.0.0.2 (nothing listens there) then
 * 127.0.0.1, the Key endpoint of a real server being a libmicrohttpd identity. */
static void test_client(void)
{
    pbt_ident *id = pbt_ident_new(NULL);
    if (!id) return;
    char host[64];
    uint16_t port = 0;
    sscanf(id->server_id, "127.0.0.1:%hu", &port);
    struct dns d = {.naddrs = 2, .addrs = {{127, 0, 0, 2}, {127, 0, 0, 1}}};
    dns_start(&d, true);
    char servers[64];
    snprintf(servers, sizeof servers, "127.0.0.1:%u", d.port);
    pb_client *c = NULL;
    pb_client_opts co = {.plain_http = true, .allow_private = true, .dns_servers = servers};
    CHECK_OK(pb_client_new(&co, &c));
    snprintf(host, sizeof host, "named.test:%u", port);
    pb_client_answer a;
    pb_err err = pb_client_call(c, host, PB_CLIENT_KEY_PATH, NULL, NULL, 0, &a);
    CHECKF(err == PB_OK && a.status == 200, "Key at %s: %s %ld %s", host, pb_strerror(err),
           a.status, a.message ? a.message : "");
    pb_client_answer_clear(&a);
    /* a name that does not resolve: a clear error */
    atomic_store(&d.naddrs, 0);
    err = pb_client_call(c, "nowhere.test:443", PB_CLIENT_KEY_PATH, NULL, NULL, 0, &a);
    CHECKF(err == PB_ERR_NET && a.message && strstr(a.message, "nowhere.test"),
           "unresolvable name: %s %s", pb_strerror(err), a.message ? a.message : "");
    pb_client_answer_clear(&a);
    pb_client_free(c);
    dns_stop(&d);
    pbt_ident_free(id);
}

int main(void)
{
    test_answers();
    test_hung_dns();
    test_pending_and_stop();
    test_shares();
    test_client();
    return pbt_finish();
}
