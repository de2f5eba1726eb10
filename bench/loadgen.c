/*
 * pbbench_loadgen - the client side of the HTTP ceiling: N keep-alive connections on
 * 127.0.0.1, each posting a fixed ~100-byte body back to back for a fixed time, timing
 * every request.
 *
 * Design: one thread per connection, each with its own libcurl easy handle (so its
 * connection is reused, as postbox's delivery workers reuse theirs). Every thread first
 * makes one untimed request (connect), then all start together on a barrier and loop until
 * the deadline or --max-requests. Latencies are kept per thread (bounded array) and merged
 * at the end. Prints one line:
 *   requests N errors E seconds S rps R p50_us A p99_us B max_us C
 *
 * Usage: pbbench_loadgen --url URL [--conns N] [--seconds S] [--body-bytes B]
 *                        [--max-requests N] [--template T] [--header H]...
 *                        [--body-file F] [--multi-ports FIRST:N [--handles reused|fresh]
 *                        [--per-port K] [--cainfo CA]]
 *
 * --multi-ports FIRST:N: instead of threads, one thread and libcurl's multi interface
 * (CURLMOPT_SOCKETFUNCTION on epoll, as postboxd's I/O loop) against N servers on
 * 127.0.0.1 ports FIRST.. (the peer farm's IDs, --url's path), one request in flight to
 * each, each server's connection kept: what libcurl can do talking to many peers from one
 * thread, the federation fan-out's client ceiling. The handles are spread over 8 multi
 * handles by port (libcurl 7.88 walks a multi's whole connection cache on every
 * curl_multi_remove_handle); each request's easy handle is reused, or with
 * --handles fresh made and freed per request as postboxd does. The line printed also
 * gives cpu_us_per_req (this process's user + system CPU per request).
 *
 * --per-port K (with --multi-ports): a cold run in the fan-out scenario's pattern instead
 * of a timed one: exactly K requests to each server, one in flight to each, the clock
 * started before the first connection is made (so every first contact, and over TLS every
 * full handshake, is inside it) and stopped when the last is answered. An https --url
 * reaches the servers over TLS (peer and host verified, CA file --cainfo), as postboxd does.
 *
 * --body-file F: every request's body is F's bytes (at most 65,536).
 *
 * --template T: every request's body is T with its "%N" replaced by a number unique over
 * the run (1, 2, ...: all connections draw from one counter), e.g. one admin submission
 * per call, each a new event: '{"to":"ID","event":{"userAddedToGuild":{"userId":%N,
 * "guildId":1}}}'. --header H (up to 8) adds a request header (default Content-Type:
 * application/hrpc). A request counts as done when answered 2xx.
 *
 * Untrusted input: the server's answers (status read, body discarded).
 */
#include <curl/curl.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES_PER_CONN 2000000u

struct conn {
    pthread_t th;
    CURL *h;
    struct curl_slist *hdrs;
    uint32_t *lat_us; /* owned */
    char *body;       /* --template: this connection's current body, owned */
    size_t n, cap;
    long errors;
};

static const char *g_url;
static char *g_body;
static size_t g_body_len;
static double g_seconds = 3.0;
static const char *g_tpl_pre, *g_tpl_post; /* --template around its "%N" */
static size_t g_tpl_pre_len;
static _Atomic unsigned long long g_unique;
static long g_max_requests = 0;            /* per connection; 0 = none */
static pthread_barrier_t g_ready, g_start; /* connected; deadline set */
static int64_t g_deadline_us;              /* written by main between the barriers */

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static size_t discard(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

static bool one_request(struct conn *c)
{
    long status = 0;
    if (g_tpl_pre) {
        unsigned long long n = ++g_unique;
        int len = snprintf(c->body, 65536 + 32, "%.*s%llu%s", (int)g_tpl_pre_len, g_tpl_pre, n,
                           g_tpl_post);
        curl_easy_setopt(c->h, CURLOPT_POSTFIELDS, c->body);
        curl_easy_setopt(c->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    }
    if (curl_easy_perform(c->h) != CURLE_OK) return false;
    curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, &status);
    return status >= 200 && status < 300;
}

static void *run(void *arg)
{
    struct conn *c = arg;
    if (!one_request(c)) c->errors++; /* connect, untimed */
    pthread_barrier_wait(&g_ready);
    pthread_barrier_wait(&g_start);
    for (long i = 0; g_max_requests == 0 || i < g_max_requests; i++) {
        int64_t t0 = now_us();
        if (t0 >= g_deadline_us || c->n >= MAX_SAMPLES_PER_CONN) break;
        bool ok = one_request(c);
        int64_t dt = now_us() - t0;
        if (!ok) {
            c->errors++;
            continue;
        }
        if (c->n == c->cap) {
            c->cap = c->cap ? 2 * c->cap : 65536;
            c->lat_us = realloc(c->lat_us, c->cap * sizeof *c->lat_us);
            if (!c->lat_us) abort();
        }
        c->lat_us[c->n++] = dt > UINT32_MAX ? UINT32_MAX : (uint32_t)dt;
    }
    return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- --multi-ports: one thread, libcurl's multi interface ------------------------------ */

#define M_SHARDS 8

struct mshard {
    CURLM *m;
    int64_t deadline_us; /* -1: none */
    bool acted;
};

struct mconn {
    CURL *h;
    char url[96];
    unsigned shard;
    int64_t t0;
    long done; /* requests answered (--per-port) */
};

static int g_epfd = -1;
static struct mshard g_sh[M_SHARDS];
static struct curl_slist *g_mhdrs;
static bool g_fresh;
static long g_per_port;      /* --per-port: requests per server, cold clock; 0: timed */
static const char *g_cainfo; /* --cainfo */
static const char *g_scheme = "http";

static int m_on_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)e;
    struct mshard *sh = userp;
    if (what == CURL_POLL_REMOVE) {
        if (socketp) epoll_ctl(g_epfd, EPOLL_CTL_DEL, s, NULL);
        curl_multi_assign(sh->m, s, NULL);
        return 0;
    }
    struct epoll_event ev = {0};
    ev.data.u64 = (uint64_t)(uint32_t)s | ((uint64_t)(sh - g_sh) << 32);
    if (what & CURL_POLL_IN) ev.events |= EPOLLIN;
    if (what & CURL_POLL_OUT) ev.events |= EPOLLOUT;
    epoll_ctl(g_epfd, socketp ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s, &ev);
    if (!socketp) curl_multi_assign(sh->m, s, (void *)1);
    return 0;
}

static int m_on_timer(CURLM *m, long ms, void *userp)
{
    (void)m;
    struct mshard *sh = userp;
    sh->deadline_us = ms < 0 ? -1 : now_us() + ms * 1000;
    return 0;
}

static void m_start(struct mconn *c)
{
    if (!c->h) {
        c->h = curl_easy_init();
        curl_easy_setopt(c->h, CURLOPT_URL, c->url);
        curl_easy_setopt(c->h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c->h, CURLOPT_POST, 1L);
        curl_easy_setopt(c->h, CURLOPT_POSTFIELDS, g_body);
        curl_easy_setopt(c->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)g_body_len);
        curl_easy_setopt(c->h, CURLOPT_HTTPHEADER, g_mhdrs);
        curl_easy_setopt(c->h, CURLOPT_WRITEFUNCTION, discard);
        curl_easy_setopt(c->h, CURLOPT_TIMEOUT_MS, 10000L);
        curl_easy_setopt(c->h, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
        curl_easy_setopt(c->h, CURLOPT_PRIVATE, (char *)c);
        if (!strcmp(g_scheme, "https")) {
            curl_easy_setopt(c->h, CURLOPT_SSL_VERIFYPEER, 1L);
            curl_easy_setopt(c->h, CURLOPT_SSL_VERIFYHOST, 2L);
            curl_easy_setopt(c->h, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
            if (g_cainfo) { /* the bundle alone, its store kept (as postboxd) */
                curl_easy_setopt(c->h, CURLOPT_CAINFO, g_cainfo);
                curl_easy_setopt(c->h, CURLOPT_CAPATH, NULL);
            }
        }
    }
    c->t0 = now_us();
    curl_multi_add_handle(g_sh[c->shard].m, c->h);
}

/* Runs the multi mode; fills the latencies of every request finished after `start`. */
static int run_multi(const char *spec)
{
    unsigned first = 0, n = 0;
    if (sscanf(spec, "%u:%u", &first, &n) != 2 || n < 1 || n > 10000 || first < 1 ||
        first + n > 65536) {
        fprintf(stderr, "--multi-ports FIRST:N (N 1..10000)\n");
        return 2;
    }
    if (!strncmp(g_url, "https://", 8)) g_scheme = "https";
    const char *path = strstr(g_url, "://");
    path = path ? strchr(path + 3, '/') : NULL;
    if (!path) path = "/";
    g_epfd = epoll_create1(EPOLL_CLOEXEC);
    g_mhdrs = curl_slist_append(NULL, "Expect:");
    g_mhdrs = curl_slist_append(g_mhdrs, "Content-Type: application/hrpc");
    for (unsigned i = 0; i < M_SHARDS; i++) {
        g_sh[i].m = curl_multi_init();
        g_sh[i].deadline_us = -1;
        curl_multi_setopt(g_sh[i].m, CURLMOPT_SOCKETFUNCTION, m_on_socket);
        curl_multi_setopt(g_sh[i].m, CURLMOPT_SOCKETDATA, &g_sh[i]);
        curl_multi_setopt(g_sh[i].m, CURLMOPT_TIMERFUNCTION, m_on_timer);
        curl_multi_setopt(g_sh[i].m, CURLMOPT_TIMERDATA, &g_sh[i]);
        curl_multi_setopt(g_sh[i].m, CURLMOPT_MAXCONNECTS, (long)(2 * n / M_SHARDS + 16));
    }
    struct mconn *cs = calloc(n, sizeof *cs);
    if (!cs) abort();
    size_t cap = 1 << 20, nlat = 0;
    uint32_t *lat = malloc(cap * sizeof *lat);
    if (!lat) abort();
    long errors = 0, warm = 0;
    int64_t start = -1, deadline = -1;
    struct rusage ru0 = {0};
    if (g_per_port > 0) { /* cold: the clock runs from the first connection */
        start = now_us();
        getrusage(RUSAGE_SELF, &ru0);
    }
    for (unsigned i = 0; i < n; i++) {
        snprintf(cs[i].url, sizeof cs[i].url, "%s://127.0.0.1:%u%s", g_scheme, first + i, path);
        cs[i].shard = (first + i) % M_SHARDS;
        m_start(&cs[i]);
    }
    /* timed: every connection made (each server answered once) before the clock starts */
    unsigned inflight = n;
    struct epoll_event evs[256];
    while (inflight > 0) {
        int64_t now = now_us(), until = now + 100000;
        for (unsigned i = 0; i < M_SHARDS; i++)
            if (g_sh[i].deadline_us >= 0 && g_sh[i].deadline_us < until)
                until = g_sh[i].deadline_us;
        int ne = epoll_wait(g_epfd, evs, 256, until > now ? (int)((until - now + 999) / 1000) : 0);
        int running;
        for (int i = 0; i < ne; i++) {
            struct mshard *sh = &g_sh[evs[i].data.u64 >> 32];
            int mask = 0;
            if (evs[i].events & EPOLLIN) mask |= CURL_CSELECT_IN;
            if (evs[i].events & EPOLLOUT) mask |= CURL_CSELECT_OUT;
            if (evs[i].events & (EPOLLERR | EPOLLHUP)) mask |= CURL_CSELECT_ERR;
            curl_multi_socket_action(sh->m, (curl_socket_t)(uint32_t)evs[i].data.u64, mask,
                                     &running);
            sh->acted = true;
        }
        now = now_us();
        for (unsigned i = 0; i < M_SHARDS; i++)
            if (g_sh[i].deadline_us >= 0 && g_sh[i].deadline_us <= now) {
                g_sh[i].deadline_us = -1;
                curl_multi_socket_action(g_sh[i].m, CURL_SOCKET_TIMEOUT, 0, &running);
                g_sh[i].acted = true;
            }
        for (unsigned i = 0; i < M_SHARDS; i++) {
            if (!g_sh[i].acted) continue;
            g_sh[i].acted = false;
            CURLMsg *msg;
            int left;
            while ((msg = curl_multi_info_read(g_sh[i].m, &left))) {
                if (msg->msg != CURLMSG_DONE) continue;
                struct mconn *c = NULL;
                long status = 0;
                curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&c);
                curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
                bool ok = msg->data.result == CURLE_OK && status >= 200 && status < 300;
                int64_t t = now_us();
                curl_multi_remove_handle(g_sh[i].m, c->h);
                if (g_fresh) {
                    curl_easy_cleanup(c->h);
                    c->h = NULL;
                }
                inflight--;
                if (start < 0) {
                    if (!ok) errors++;
                    if (++warm == (long)n) { /* all connected: the clock starts */
                        start = now_us();
                        deadline = start + (int64_t)(g_seconds * 1e6);
                        getrusage(RUSAGE_SELF, &ru0);
                    }
                } else if (!ok) {
                    errors++;
                } else if (c->t0 >= start) {
                    if (nlat == cap) {
                        cap *= 2;
                        lat = realloc(lat, cap * sizeof *lat);
                        if (!lat) abort();
                    }
                    int64_t d = t - c->t0;
                    lat[nlat++] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
                }
                c->done++;
                if (g_per_port > 0 ? c->done < g_per_port : deadline < 0 || t < deadline) {
                    m_start(c);
                    inflight++;
                }
            }
        }
        if (start < 0 && warm < (long)n) continue;
    }
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);
    double secs = (double)(now_us() - start) / 1e6;
    double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru1.ru_stime.tv_sec -
                          ru0.ru_stime.tv_sec) *
                     1e6 +
                 (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru1.ru_stime.tv_usec -
                          ru0.ru_stime.tv_usec);
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    printf("requests %zu errors %ld seconds %.3f rps %.1f p50_us %u p99_us %u max_us %u "
           "cpu_us_per_req %.1f\n",
           nlat, errors, secs, secs > 0 ? (double)nlat / secs : 0.0, nlat ? lat[(nlat - 1) / 2] : 0,
           nlat ? lat[(size_t)((double)(nlat - 1) * 0.99)] : 0, nlat ? lat[nlat - 1] : 0,
           nlat ? cpu / (double)nlat : 0.0);
    for (unsigned i = 0; i < n; i++)
        if (cs[i].h) curl_easy_cleanup(cs[i].h);
    for (unsigned i = 0; i < M_SHARDS; i++)
        curl_multi_cleanup(g_sh[i].m);
    curl_slist_free_all(g_mhdrs);
    close(g_epfd);
    free(cs);
    free(lat);
    return errors ? 1 : 0;
}

int main(int argc, char **argv)
{
    int conns = 1, nhdrs = 0;
    const char *hdrs[8], *tpl = NULL, *multi = NULL, *body_file = NULL;
    g_body_len = 100;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--url"))
            g_url = argv[i + 1];
        else if (!strcmp(argv[i], "--conns"))
            conns = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds"))
            g_seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--body-bytes"))
            g_body_len = (size_t)strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--max-requests"))
            g_max_requests = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--template"))
            tpl = argv[i + 1];
        else if (!strcmp(argv[i], "--header") && nhdrs < 8)
            hdrs[nhdrs++] = argv[i + 1];
        else if (!strcmp(argv[i], "--body-file"))
            body_file = argv[i + 1];
        else if (!strcmp(argv[i], "--multi-ports"))
            multi = argv[i + 1];
        else if (!strcmp(argv[i], "--per-port"))
            g_per_port = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--cainfo"))
            g_cainfo = argv[i + 1];
        else if (!strcmp(argv[i], "--handles") && !strcmp(argv[i + 1], "fresh"))
            g_fresh = true;
        else if (!strcmp(argv[i], "--handles") && !strcmp(argv[i + 1], "reused"))
            g_fresh = false;
        else
            g_url = NULL, i = argc;
    }
    if (!g_url || conns < 1 || conns > 256 || g_per_port < 0 || g_per_port > 1000000 ||
        g_seconds <= 0 || g_seconds > 600 || g_body_len > 65536 ||
        (tpl && (!strstr(tpl, "%N") || strlen(tpl) > 65536))) {
        fprintf(stderr,
                "usage: %s --url URL [--conns 1..256] [--seconds S<=600] "
                "[--body-bytes B<=65536] [--max-requests N] [--template T] [--header H]\n",
                argv[0]);
        return 2;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    g_body = malloc(g_body_len + 1);
    if (!g_body) abort();
    memset(g_body, 'x', g_body_len);
    if (body_file) { /* the body's bytes, at most 65,536 */
        FILE *f = fopen(body_file, "rb");
        if (!f) {
            perror(body_file);
            return 2;
        }
        free(g_body);
        if (!(g_body = malloc(65537))) abort();
        g_body_len = fread(g_body, 1, 65537, f);
        fclose(f);
        if (g_body_len > 65536) {
            fprintf(stderr, "%s: more than 65,536 bytes\n", body_file);
            return 2;
        }
    }
    if (multi) {
        int rc = run_multi(multi);
        free(g_body);
        curl_global_cleanup();
        return rc;
    }
    if (tpl) {
        const char *at = strstr(tpl, "%N");
        g_tpl_pre = tpl;
        g_tpl_pre_len = (size_t)(at - tpl);
        g_tpl_post = at + 2;
    }
    struct conn *cs = calloc((size_t)conns, sizeof *cs);
    if (!cs) abort();
    pthread_barrier_init(&g_ready, NULL, (unsigned)conns + 1);
    pthread_barrier_init(&g_start, NULL, (unsigned)conns + 1);
    for (int i = 0; i < conns; i++) {
        struct conn *c = &cs[i];
        c->h = curl_easy_init();
        c->hdrs = curl_slist_append(NULL, "Expect:");
        for (int j = 0; j < nhdrs; j++)
            c->hdrs = curl_slist_append(c->hdrs, hdrs[j]);
        if (!nhdrs) c->hdrs = curl_slist_append(c->hdrs, "Content-Type: application/hrpc");
        if (tpl && !(c->body = malloc(65536 + 32))) abort();
        curl_easy_setopt(c->h, CURLOPT_URL, g_url);
        curl_easy_setopt(c->h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c->h, CURLOPT_POST, 1L);
        curl_easy_setopt(c->h, CURLOPT_POSTFIELDS, g_body);
        curl_easy_setopt(c->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)g_body_len);
        curl_easy_setopt(c->h, CURLOPT_HTTPHEADER, c->hdrs);
        if (g_cainfo) { /* https: the bundle alone (as postboxd) */
            curl_easy_setopt(c->h, CURLOPT_CAINFO, g_cainfo);
            curl_easy_setopt(c->h, CURLOPT_CAPATH, NULL);
        }
        curl_easy_setopt(c->h, CURLOPT_WRITEFUNCTION, discard);
        curl_easy_setopt(c->h, CURLOPT_TIMEOUT_MS, 10000L);
        curl_easy_setopt(c->h, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    }
    for (int i = 0; i < conns; i++)
        if (pthread_create(&cs[i].th, NULL, run, &cs[i]) != 0) abort();
    pthread_barrier_wait(&g_ready);
    int64_t t0 = now_us();
    g_deadline_us = t0 + (int64_t)(g_seconds * 1e6);
    pthread_barrier_wait(&g_start);
    for (int i = 0; i < conns; i++)
        pthread_join(cs[i].th, NULL);
    double secs = (double)(now_us() - t0) / 1e6;

    size_t total = 0;
    long errors = 0;
    for (int i = 0; i < conns; i++) {
        total += cs[i].n;
        errors += cs[i].errors;
    }
    uint32_t *all = malloc((total ? total : 1) * sizeof *all);
    if (!all) abort();
    size_t k = 0;
    for (int i = 0; i < conns; i++) {
        if (cs[i].n) memcpy(all + k, cs[i].lat_us, cs[i].n * sizeof *all);
        k += cs[i].n;
    }
    qsort(all, total, sizeof *all, cmp_u32);
    uint32_t p50 = total ? all[(total - 1) / 2] : 0;
    uint32_t p99 = total ? all[(size_t)((double)(total - 1) * 0.99)] : 0;
    uint32_t max = total ? all[total - 1] : 0;
    printf("requests %zu errors %ld seconds %.3f rps %.1f p50_us %u p99_us %u max_us %u\n", total,
           errors, secs, secs > 0 ? (double)total / secs : 0.0, p50, p99, max);
    for (int i = 0; i < conns; i++) {
        curl_easy_cleanup(cs[i].h);
        curl_slist_free_all(cs[i].hdrs);
        free(cs[i].lat_us);
        free(cs[i].body);
    }
    free(cs);
    free(all);
    free(g_body);
    curl_global_cleanup();
    return errors ? 1 : 0;
}
