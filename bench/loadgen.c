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
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

int main(int argc, char **argv)
{
    int conns = 1, nhdrs = 0;
    const char *hdrs[8], *tpl = NULL;
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
        else
            g_url = NULL, i = argc;
    }
    if (!g_url || conns < 1 || conns > 256 || g_seconds <= 0 || g_seconds > 600 ||
        g_body_len > 65536 || (tpl && (!strstr(tpl, "%N") || strlen(tpl) > 65536))) {
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
