/*
 * pbbench - the postbox benchmark driver (`make bench`, see docs/PERFORMANCE.md).
 *
 * It starts real postboxd processes on 127.0.0.1 with temporary data directories, drives
 * them only through the admin API, and measures the scenarios of docs/PERFORMANCE.md:
 * one pair (synchronous FULL and NORMAL), 16 -> 1, 1 -> 16, pull drain, latency, memory;
 * and one pair FULL and 16 -> 1 again with every daemon on PostgreSQL (pair_full_pg,
 * fanin_pg: a fresh database per daemon on the server of PB_TEST_PG_URL, through the
 * harness's PBT_STORE=postgres; scripts/bench starts a throw-away server when none is set).
 * In the same run it measures the ceilings the results are compared with: a plain HTTP
 * server answering 200 to a ~100-byte POST over 1 and 16 keep-alive connections
 * (pbbench_httpnull, libmicrohttpd; and Debian's nginx with `return 200` when available),
 * write+fdatasync of 100 bytes, and SQLite's batched insert of 100-byte rows.
 *
 * Design: every measurement is repeated BENCH_RUNS times (default 3); the runs are
 * interleaved (run 1 of everything, then run 2, ...) so that a change in the machine's
 * load hits results and ceilings alike. Each figure is reported as the median with the
 * min..max spread; a ratio is median(result) / median(ceiling). Every wait is bounded by
 * BENCH_TIME_LIMIT seconds; a scenario that does not finish reports the rate it reached
 * and is marked "timed out". Sizes are scaled by environment variables (see usage()),
 * BENCH_QUICK=1 gives a smoke run of well under two minutes.
 *
 * The table goes to stdout and, as Markdown, to BENCH_OUT (default
 * bench/results/latest.md under the source tree).
 *
 * Untrusted input: none (the daemons' admin answers are parsed with jansson and checked).
 */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/buf.h"
#include "harness.h"
#include "micro.h"
#include "wire/wire.h"

#define MAX_RUNS 9
#define MAX_SIZES 6
#define FAN 16
#define ADMIN_MAX_BODY (1000 * 1000) /* stay under the admin API's 1 MiB */
#define ADMIN_MAX_EVENTS 10000
#define LAT_WAIT_S 2 /* the latency scenario's inbox long-poll wait */

/* ---- options ----------------------------------------------------------------------------- */

static struct {
    bool quick;
    int runs;
    long pair_events;
    long fan_events; /* total over the 16 peers */
    long drain_events;
    long rss_sizes[MAX_SIZES];
    int nrss;
    int lat_samples;
    double http_seconds;
    double disk_seconds;
    int time_limit_s;
    int push_bytes; /* target size of one PushRequest body */
    long users;     /* events go to users 1..users, round robin */
    const char *scenarios;
    const char *out;
    const char *nginx;
    const char *wrap; /* command prefix for postboxd (profiling), "{tag}" = daemon tag */
} O;

static long env_long(const char *name, long dflt)
{
    const char *s = getenv(name);
    return s && *s ? strtol(s, NULL, 10) : dflt;
}

static double env_double(const char *name, double dflt)
{
    const char *s = getenv(name);
    return s && *s ? strtod(s, NULL) : dflt;
}

static bool want(const char *name)
{
    if (!O.scenarios || !*O.scenarios || !strcmp(O.scenarios, "all")) return true;
    size_t n = strlen(name);
    for (const char *p = O.scenarios; (p = strstr(p, name)) != NULL; p += n)
        if ((p == O.scenarios || p[-1] == ',') && (p[n] == '\0' || p[n] == ',')) return true;
    return false;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: pbbench   (settings are environment variables)\n"
            "  BENCH_QUICK=1          smoke run (< 1 min): small sizes, short ceilings\n"
            "  BENCH_RUNS=N           runs per measurement (default 3, at most %d)\n"
            "  BENCH_PAIR_EVENTS=N    one pair, events per run (default 20000)\n"
            "  BENCH_FAN_EVENTS=N     16->1 and 1->16, events per run in total (default 16000)\n"
            "  BENCH_DRAIN_EVENTS=N   pull drain backlog (default 100000)\n"
            "  BENCH_RSS_SIZES=a,b,c  memory scenario queue sizes (default 10000,100000,1000000)\n"
            "  BENCH_LAT_SAMPLES=N    latency samples per run (default 1000)\n"
            "  BENCH_HTTP_SECONDS=S   each HTTP ceiling measurement (default 3)\n"
            "  BENCH_DISK_SECONDS=S   each disk ceiling measurement (default 3)\n"
            "  BENCH_TIME_LIMIT=S     bound of one wait (default 300)\n"
            "  BENCH_USERS=N          events are spread over N receiving users (default 1000)\n"
            "  BENCH_PUSH_BYTES=N     size of one PushRequest body (default 100)\n"
            "  BENCH_SCENARIOS=list   any of ceilings,pair_full,pair_normal,fanin,fanout,drain,\n"
            "                         latency,memory,pair_full_pg,fanin_pg (default all; the\n"
            "                         _pg ones need PB_TEST_PG_URL, see scripts/pg-start)\n"
            "  BENCH_OUT=FILE         Markdown result (default bench/results/latest.md)\n"
            "  BENCH_NGINX=PATH       nginx binary for the HTTP ceiling (default: nginx in PATH;\n"
            "                         none: libmicrohttpd only)\n"
            "  BENCH_WRAP='cmd ...'   run postboxd under cmd (profiling); {tag} = daemon tag\n",
            MAX_RUNS);
}

static void parse_sizes(const char *s)
{
    O.nrss = 0;
    while (s && *s && O.nrss < MAX_SIZES) {
        char *end;
        long v = strtol(s, &end, 10);
        if (v > 0) O.rss_sizes[O.nrss++] = v;
        if (*end != ',') break;
        s = end + 1;
    }
}

static char *find_in_path(const char *prog)
{
    const char *path = getenv("PATH");
    char buf[4096];
    while (path && *path) {
        size_t n = strcspn(path, ":");
        snprintf(buf, sizeof buf, "%.*s/%s", (int)n, path, prog);
        if (access(buf, X_OK) == 0) return strdup(buf);
        path += n + (path[n] == ':');
    }
    for (const char *d = "/usr/sbin"; d; d = NULL) {
        snprintf(buf, sizeof buf, "%s/%s", d, prog);
        if (access(buf, X_OK) == 0) return strdup(buf);
    }
    return NULL;
}

static void options(void)
{
    O.quick = env_long("BENCH_QUICK", 0) != 0;
    O.runs = (int)env_long("BENCH_RUNS", 3);
    if (O.runs < 1) O.runs = 1;
    if (O.runs > MAX_RUNS) O.runs = MAX_RUNS;
    O.pair_events = env_long("BENCH_PAIR_EVENTS", O.quick ? 2000 : 20000);
    O.fan_events = env_long("BENCH_FAN_EVENTS", O.quick ? 1600 : 16000);
    O.drain_events = env_long("BENCH_DRAIN_EVENTS", O.quick ? 10000 : 100000);
    parse_sizes(getenv("BENCH_RSS_SIZES") ? getenv("BENCH_RSS_SIZES")
                : O.quick                 ? "1000,10000"
                                          : "10000,100000,1000000");
    O.lat_samples = (int)env_long("BENCH_LAT_SAMPLES", O.quick ? 100 : 1000);
    O.http_seconds = env_double("BENCH_HTTP_SECONDS", O.quick ? 1 : 3);
    O.disk_seconds = env_double("BENCH_DISK_SECONDS", O.quick ? 1 : 3);
    O.time_limit_s = (int)env_long("BENCH_TIME_LIMIT", O.quick ? 60 : 300);
    O.push_bytes = (int)env_long("BENCH_PUSH_BYTES", 100);
    if (O.push_bytes < 40) O.push_bytes = 40;
    if (O.push_bytes > 200) O.push_bytes = 200;
    O.users = env_long("BENCH_USERS", 1000);
    if (O.users < 1) O.users = 1;
    O.scenarios = getenv("BENCH_SCENARIOS");
    O.out = getenv("BENCH_OUT");
    if (!O.out || !*O.out) O.out = PB_BENCH_SRC "/results/latest.md";
    O.nginx = getenv("BENCH_NGINX");
    if (O.nginx && !strcmp(O.nginx, "none"))
        O.nginx = NULL;
    else if (!O.nginx || !*O.nginx)
        O.nginx = find_in_path("nginx");
    O.wrap = getenv("BENCH_WRAP");
    if (O.wrap && !*O.wrap) O.wrap = NULL;
    if (O.pair_events < 1) O.pair_events = 1;
    if (O.fan_events < FAN) O.fan_events = FAN;
    if (O.drain_events < 1) O.drain_events = 1;
    if (O.lat_samples < 1) O.lat_samples = 1;
}

/* ---- metrics ----------------------------------------------------------------------------- */

typedef struct metric {
    double v[MAX_RUNS];
    int n;
    bool timed_out; /* at least one run did not finish within the time limit */
} metric;

static void m_add(metric *m, double v)
{
    if (m->n < MAX_RUNS && v >= 0 && !isnan(v)) m->v[m->n++] = v;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double m_median(const metric *m)
{
    if (!m->n) return NAN;
    double s[MAX_RUNS];
    memcpy(s, m->v, sizeof s);
    qsort(s, (size_t)m->n, sizeof *s, cmp_double);
    return m->n % 2 ? s[m->n / 2] : (s[m->n / 2 - 1] + s[m->n / 2]) / 2;
}

static double m_min(const metric *m)
{
    double r = NAN;
    for (int i = 0; i < m->n; i++)
        if (isnan(r) || m->v[i] < r) r = m->v[i];
    return r;
}

static double m_max(const metric *m)
{
    double r = NAN;
    for (int i = 0; i < m->n; i++)
        if (isnan(r) || m->v[i] > r) r = m->v[i];
    return r;
}

/* Every figure the run produces. */
static struct {
    /* ceilings */
    metric http1[2], http16[2];        /* [0] libmicrohttpd, [1] nginx: requests/s */
    metric http1_p50[2], http1_p99[2]; /* us */
    metric http16_p99[2];              /* us */
    metric fsync;                      /* 100-byte write+fdatasync per second */
    metric sqlite_full, sqlite_normal; /* rows/s, batches of 1000 */
    /* scenarios */
    metric pair_full, pair_normal, fanin, fanout, drain; /* events/s */
    metric pair_full_pg, fanin_pg;                       /* events/s, PostgreSQL store */
    metric lat_p50, lat_p99, lat_max;                    /* us */
    int lat_stalls; /* samples that took the whole long-poll wait */
    metric rss_sender[MAX_SIZES], rss_sender_now[MAX_SIZES], rss_receiver[MAX_SIZES]; /* KiB */
    metric rss_sender_after[MAX_SIZES];
    metric rss_drain_rate[MAX_SIZES];
    bool nginx_ok;
    char notes[4096];
} R;

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "pbbench: note: %s\n", line);
    size_t n = strlen(R.notes);
    snprintf(R.notes + n, sizeof R.notes - n, "%s\n", line);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- a keep-alive HTTP client for the admin API ---------------------------------------- */

typedef struct hc {
    CURL *h;
    struct curl_slist *hdrs;
    uint16_t port;
    pb_buf resp;
} hc;

static size_t hc_write(char *p, size_t size, size_t n, void *ud)
{
    pb_buf_append(ud, p, size * n);
    return size * n;
}

static void hc_init(hc *c, uint16_t port)
{
    memset(c, 0, sizeof *c);
    c->h = curl_easy_init();
    c->hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    c->hdrs = curl_slist_append(c->hdrs, "Expect:");
    c->port = port;
}

static void hc_free(hc *c)
{
    if (c->h) curl_easy_cleanup(c->h);
    curl_slist_free_all(c->hdrs);
    pb_buf_free(&c->resp);
    memset(c, 0, sizeof *c);
}

/* One request; returns the HTTP status (0: no answer). The body is in c->resp. */
static long hc_do(hc *c, const char *method, const char *path, const char *body, size_t len,
                  long timeout_ms)
{
    char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", c->port, path);
    pb_buf_reset(&c->resp);
    curl_easy_setopt(c->h, CURLOPT_URL, url);
    curl_easy_setopt(c->h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c->h, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
    curl_easy_setopt(c->h, CURLOPT_HTTPHEADER, c->hdrs);
    curl_easy_setopt(c->h, CURLOPT_WRITEFUNCTION, hc_write);
    curl_easy_setopt(c->h, CURLOPT_WRITEDATA, &c->resp);
    if (!strcmp(method, "POST")) {
        curl_easy_setopt(c->h, CURLOPT_POST, 1L);
        curl_easy_setopt(c->h, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(c->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? len : 0));
    } else {
        curl_easy_setopt(c->h, CURLOPT_HTTPGET, 1L);
    }
    long status = 0;
    if (curl_easy_perform(c->h) == CURLE_OK)
        curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, &status);
    return status;
}

static json_t *hc_json(hc *c)
{
    return c->resp.len ? json_loadb((const char *)c->resp.data, c->resp.len, 0, NULL) : NULL;
}

/* ---- daemons ------------------------------------------------------------------------------ */

typedef struct bd {
    pbt_daemon *d;
    hc adm;
    char tag[16];
    bool pg; /* its store is a fresh PostgreSQL database (PBT_STORE=postgres) */
} bd;

/* pbt_daemon_new with PBT_STORE set to postgres (pg) or sqlite for this one call, the
 * caller's environment restored afterwards. */
static pbt_daemon *daemon_new(const char *tag, const char *const *args, bool pg)
{
    const char *cur = getenv("PBT_STORE");
    char *saved = cur ? strdup(cur) : NULL;
    setenv("PBT_STORE", pg ? "postgres" : "sqlite", 1);
    pbt_daemon *d = pbt_daemon_new(tag, args);
    if (saved)
        setenv("PBT_STORE", saved, 1);
    else
        unsetenv("PBT_STORE");
    free(saved);
    return d;
}

/* A daemon description: fresh data dir and ports, log level info, plus extra settings;
 * on PostgreSQL (a fresh database of its own) when pg. */
static bd *bd_new_store(const char *tag, const char *const *extra, bool pg)
{
    const char *args[32];
    int n = 0;
    args[n++] = "--log-level";
    args[n++] = "info";
    for (int i = 0; extra && extra[i] && n < 31; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    bd *b = calloc(1, sizeof *b);
    if (!b) abort();
    char t[40];
    snprintf(t, sizeof t, "bench-%s", tag);
    b->d = daemon_new(t, args, pg);
    b->pg = pg;
    snprintf(b->tag, sizeof b->tag, "%s", tag);
    hc_init(&b->adm, b->d->admin_port);
    return b;
}

static bd *bd_new(const char *tag, const char *const *extra)
{
    return bd_new_store(tag, extra, false);
}

/* Forks and execs postboxd (under O.wrap when set); does not wait for it. */
static void bd_spawn(bd *b)
{
    pbt_daemon *d = b->d;
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%u", d->port);
    const char *argv[96];
    char *wrapcopy = NULL, *subst[40];
    int n = 0, nsubst = 0;
    if (O.wrap) {
        /* split on spaces; replace {tag} */
        wrapcopy = strdup(O.wrap);
        for (char *save = NULL, *w = strtok_r(wrapcopy, " ", &save); w && n < 40;
             w = strtok_r(NULL, " ", &save)) {
            char *t = strstr(w, "{tag}");
            if (t) {
                char *x = NULL;
                if (asprintf(&x, "%.*s%s%s", (int)(t - w), w, b->tag, t + 5) < 0) abort();
                argv[n++] = subst[nsubst++] = x;
            } else {
                argv[n++] = w;
            }
        }
    }
    argv[n++] = PB_POSTBOXD;
    argv[n++] = "--data-dir";
    argv[n++] = d->dir;
    argv[n++] = "--listen";
    argv[n++] = listen;
    argv[n++] = "--admin-listen";
    argv[n++] = d->admin;
    argv[n++] = "--peer-scheme";
    argv[n++] = "http";
    for (int i = 0; i < d->nargs; i++)
        argv[n++] = d->args[i];
    argv[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) abort();
    if (pid == 0) {
        if (O.wrap) setpgid(0, 0); /* bd_stop signals the wrapper and postboxd together */
        int fd = open(d->log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    if (O.wrap) setpgid(pid, pid); /* as the child does: whichever runs first */
    for (int i = 0; i < nsubst; i++)
        free(subst[i]);
    free(wrapcopy);
    d->pid = pid;
}

/* Waits (bounded) until the daemon's /healthz answers 200. */
static bool bd_wait_healthy(bd *b)
{
    double deadline = now_s() + (O.wrap ? 120 : 30);
    while (now_s() < deadline) {
        int st;
        if (waitpid(b->d->pid, &st, WNOHANG) == b->d->pid) {
            b->d->pid = 0;
            fprintf(stderr, "pbbench: postboxd %s exited during start-up\n", b->tag);
            pbt_daemon_dump_log(b->d);
            return false;
        }
        if (hc_do(&b->adm, "GET", "/healthz", NULL, 0, 2000) == 200) return true;
        sleep_ms(5);
    }
    fprintf(stderr, "pbbench: postboxd %s did not become healthy\n", b->tag);
    pbt_daemon_dump_log(b->d);
    return false;
}

/* Gives a daemon that never ran new ports and a fresh data directory: a port that
 * pbt_free_port() found free can be taken by another process before postboxd binds it
 * (other tests run on this machine). */
static void bd_renew(bd *b)
{
    pbt_daemon *old = b->d;
    char t[40];
    snprintf(t, sizeof t, "bench-%s", b->tag);
    /* old's arguments without the --store the harness added for its database (dropped
     * with it): the new daemon gets a fresh database of its own. */
    const char *args[33];
    int n = 0;
    for (int i = 0; i < old->nargs; i++) {
        if (old->pg_db && !strcmp(old->args[i], "--store") && i + 1 < old->nargs) {
            i++;
            continue;
        }
        args[n++] = old->args[i];
    }
    args[n] = NULL;
    b->d = daemon_new(t, args, b->pg);
    pbt_daemon_free(old);
    hc_free(&b->adm);
    hc_init(&b->adm, b->d->admin_port);
}

/* Waits for a spawned daemon; if it exited during start-up (a port taken meanwhile),
 * retries with new ports, at most 3 times. Only for daemons that never ran before. */
static bool bd_wait_first(bd *b)
{
    for (int attempt = 0;; attempt++) {
        if (bd_wait_healthy(b)) return true;
        if (b->d->pid || attempt == 3) return false; /* hung, or out of retries */
        fprintf(stderr, "pbbench: retrying %s with new ports\n", b->tag);
        bd_renew(b);
        bd_spawn(b);
    }
}

static bool bd_start(bd *b)
{
    bd_spawn(b);
    return bd_wait_healthy(b);
}

/* Starts n new daemons at once and waits for all. */
static bool bd_start_all(bd **bs, int n)
{
    for (int i = 0; i < n; i++)
        bd_spawn(bs[i]);
    bool ok = true;
    for (int i = 0; i < n; i++)
        ok = bd_wait_first(bs[i]) && ok;
    return ok;
}

static void bd_stop(bd *b)
{
    if (!b || !b->d->pid) return;
    if (O.wrap) kill(-b->d->pid, SIGTERM); /* the wrapper's process group */
    pbt_daemon_stop(b->d);
}

static void bd_free(bd *b)
{
    if (!b) return;
    bd_stop(b);
    hc_free(&b->adm);
    pbt_daemon_free(b->d);
    free(b);
}

/* VmHWM and VmRSS of a process, KiB (-1 when unreadable). */
static void proc_rss(pid_t pid, long *hwm, long *rss)
{
    char path[64], line[256];
    *hwm = *rss = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "VmHWM:", 6)) *hwm = strtol(line + 6, NULL, 10);
        if (!strncmp(line, "VmRSS:", 6)) *rss = strtol(line + 6, NULL, 10);
    }
    fclose(f);
}

/* ---- events -------------------------------------------------------------------------------- */

static int g_pad; /* length of the invite ID, chosen so that a PushRequest is O.push_bytes */

/* Event i of a stream as admin JSON: a userInvited with a unique invite ID. */
static int event_json(char *out, size_t cap, unsigned stream, long i)
{
    char id[256];
    int k = snprintf(id, sizeof id, "b%u-%ld-", stream, i);
    while (k < g_pad && k < (int)sizeof id - 1)
        id[k++] = 'x';
    id[k] = '\0';
    return snprintf(
        out, cap, "{\"userInvited\":{\"userId\":\"%ld\",\"inviterId\":\"%u\",\"inviteId\":\"%s\"}}",
        1 + i % O.users, 7 + stream, id);
}

/* Picks g_pad so that the PushRequest of a typical event is O.push_bytes long. */
static size_t choose_pad(void)
{
    size_t len = 0;
    for (g_pad = 8; g_pad < 200; g_pad++) {
        char id[256];
        int k = snprintf(id, sizeof id, "b%u-%ld-", 1u, 5000L);
        while (k < g_pad)
            id[k++] = 'x';
        id[k] = '\0';
        pb_event ev = {
            .kind = PB_EV_USER_INVITED, .user_id = 500, .inviter_id = 8, .invite_id = id};
        pb_buf b = PB_BUF_INIT;
        pb_wire_push_encode(&ev, &(uint64_t){5000}, 1, 0, &b);
        len = b.len;
        pb_buf_free(&b);
        if ((int)len >= O.push_bytes) break;
    }
    return len;
}

/* Submits events [first, first + count) of `stream` to `to` through b's admin API, in
 * calls of at most `batch` events (and under the admin body limit). */
static bool submit(hc *c, const char *to, unsigned stream, long first, long count, long batch)
{
    char *body = malloc(ADMIN_MAX_BODY + 4096);
    bool ok = false;
    if (!body) abort();
    if (batch > ADMIN_MAX_EVENTS) batch = ADMIN_MAX_EVENTS;
    long i = first, end = first + count;
    while (i < end) {
        size_t n = (size_t)snprintf(body, 256, "{\"to\":\"%s\",\"events\":[", to);
        long k = 0;
        while (i < end && k < batch && n + 512 < ADMIN_MAX_BODY) {
            if (k) body[n++] = ',';
            n += (size_t)event_json(body + n, 512, stream, i);
            i++;
            k++;
        }
        n += (size_t)snprintf(body + n, 8, "]}");
        long st = hc_do(c, "POST", "/v1/outbox", body, n, 120000);
        if (st != 202) {
            fprintf(stderr, "pbbench: submit to %s: HTTP %ld %.*s\n", to, st, (int)c->resp.len,
                    c->resp.data ? (const char *)c->resp.data : "");
            goto out;
        }
    }
    ok = true;
out:
    free(body);
    return ok;
}

/* True when d's inbox holds an item with seq >= n (inbox seqs are 1, 2, ...). */
static int inbox_has(hc *c, long n)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/inbox?after=%ld&limit=1", n - 1);
    if (hc_do(c, "GET", path, NULL, 0, 10000) != 200) return -1;
    json_t *j = hc_json(c);
    int r = json_array_size(json_object_get(j, "events")) > 0;
    json_decref(j);
    return r;
}

/* The number of inbox items (binary search over inbox_has). */
static long inbox_count(hc *c)
{
    long lo = 0, hi = 1;
    while (inbox_has(c, hi) == 1 && hi < (1L << 40))
        hi *= 2;
    while (hi - lo > 1) { /* inbox_has(lo) or lo == 0; !inbox_has(hi) */
        long mid = lo + (hi - lo) / 2;
        if (inbox_has(c, mid) == 1)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* Polls (every 5 ms) until c's inbox holds n items or the deadline (absolute now_s()). */
static bool wait_inbox(hc *c, long n, double deadline)
{
    for (;;) {
        if (inbox_has(c, n) == 1) return true;
        if (now_s() >= deadline) return false;
        sleep_ms(5);
    }
}

/* ---- ceilings ------------------------------------------------------------------------------ */

struct child {
    pid_t pid;
    uint16_t port;
    char *dir;
};

static void child_stop(struct child *c)
{
    if (c->pid > 0) {
        kill(c->pid, SIGTERM);
        double deadline = now_s() + 10;
        while (waitpid(c->pid, NULL, WNOHANG) == 0) {
            if (now_s() > deadline) {
                kill(c->pid, SIGKILL);
                waitpid(c->pid, NULL, 0);
                break;
            }
            sleep_ms(10);
        }
    }
    if (c->dir) pbt_rmrf(c->dir);
    free(c->dir);
    memset(c, 0, sizeof *c);
}

static bool http_ready(uint16_t port)
{
    hc c;
    hc_init(&c, port);
    bool ok = false;
    for (int i = 0; i < 500 && !ok; i++) {
        ok = hc_do(&c, "POST", "/", "x", 1, 1000) == 200;
        if (!ok) sleep_ms(10);
    }
    hc_free(&c);
    return ok;
}

static bool start_httpnull(struct child *c)
{
    memset(c, 0, sizeof *c);
    c->port = pbt_free_port();
    char port[16];
    snprintf(port, sizeof port, "%u", c->port);
    fflush(NULL);
    c->pid = fork();
    if (c->pid < 0) abort();
    if (c->pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) dup2(fd, 1);
        execl(PB_BENCH_HTTPNULL, PB_BENCH_HTTPNULL, "--port", port, "--threads", "4", (char *)0);
        _exit(127);
    }
    return http_ready(c->port);
}

static bool start_nginx(struct child *c)
{
    memset(c, 0, sizeof *c);
    c->dir = pbt_tmpdir("bench-nginx");
    c->port = pbt_free_port();
    char conf[4096], errlog[4096];
    snprintf(conf, sizeof conf, "%s/nginx.conf", c->dir);
    snprintf(errlog, sizeof errlog, "%s/error.log", c->dir);
    FILE *f = fopen(conf, "w");
    if (!f) return false;
    fprintf(f,
            "worker_processes auto;\n"
            "daemon off;\n"
            "pid %s/nginx.pid;\n"
            "error_log %s warn;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            "  access_log off;\n"
            "  client_body_temp_path %s/body;\n"
            "  proxy_temp_path %s/proxy;\n"
            "  fastcgi_temp_path %s/fastcgi;\n"
            "  uwsgi_temp_path %s/uwsgi;\n"
            "  scgi_temp_path %s/scgi;\n"
            "  keepalive_requests 100000000;\n"
            "  keepalive_timeout 60s;\n"
            "  server {\n"
            "    listen 127.0.0.1:%u;\n"
            "    location / { return 200; }\n"
            "  }\n"
            "}\n",
            c->dir, errlog, c->dir, c->dir, c->dir, c->dir, c->dir, c->port);
    fclose(f);
    fflush(NULL);
    c->pid = fork();
    if (c->pid < 0) abort();
    if (c->pid == 0) {
        int fd = open(errlog, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(O.nginx, O.nginx, "-p", c->dir, "-c", conf, "-e", errlog, (char *)0);
        _exit(127);
    }
    if (!http_ready(c->port)) {
        fprintf(stderr, "pbbench: nginx (%s) did not answer; see %s\n", O.nginx, errlog);
        return false;
    }
    return true;
}

struct load_result {
    double rps;
    double p50_us, p99_us, max_us;
};

/* Runs pbbench_loadgen against port; false when it failed. */
static bool loadgen(uint16_t port, int conns, struct load_result *r)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "'%s' --url http://127.0.0.1:%u/protocol.sync.v1.PostboxService/Push --conns %d "
             "--seconds %.2f --body-bytes %d",
             PB_BENCH_LOADGEN, port, conns, O.http_seconds, O.push_bytes);
    FILE *p = popen(cmd, "r");
    if (!p) return false;
    char line[512] = "";
    if (!fgets(line, sizeof line, p)) line[0] = '\0';
    int rc = pclose(p);
    unsigned long long n = 0;
    long errors = 0;
    double secs = 0;
    unsigned p50 = 0, p99 = 0, max = 0;
    if (sscanf(line, "requests %llu errors %ld seconds %lf rps %lf p50_us %u p99_us %u max_us %u",
               &n, &errors, &secs, &r->rps, &p50, &p99, &max) != 7 ||
        rc != 0 || errors) {
        fprintf(stderr, "pbbench: loadgen failed (rc %d): %s", rc, line);
        return false;
    }
    r->p50_us = p50;
    r->p99_us = p99;
    r->max_us = max;
    return true;
}

static void ceiling_http(int which, struct child *srv)
{
    struct load_result r;
    if (loadgen(srv->port, 1, &r)) {
        m_add(&R.http1[which], r.rps);
        m_add(&R.http1_p50[which], r.p50_us);
        m_add(&R.http1_p99[which], r.p99_us);
        printf("  http %-6s 1 conn : %9.0f req/s  p50 %5.0f us  p99 %5.0f us\n",
               which ? "nginx" : "mhd", r.rps, r.p50_us, r.p99_us);
    }
    if (loadgen(srv->port, FAN, &r)) {
        m_add(&R.http16[which], r.rps);
        m_add(&R.http16_p99[which], r.p99_us);
        printf("  http %-6s 16 conn: %9.0f req/s  p99 %5.0f us\n", which ? "nginx" : "mhd", r.rps,
               r.p99_us);
    }
}

static void run_ceilings(void)
{
    struct child c;
    if (start_httpnull(&c))
        ceiling_http(0, &c);
    else
        note("the libmicrohttpd ceiling server did not start");
    child_stop(&c);
    if (O.nginx) {
        if (start_nginx(&c)) {
            R.nginx_ok = true;
            ceiling_http(1, &c);
        } else if (!R.nginx_ok) {
            note("nginx (%s) did not start; the HTTP ceiling is libmicrohttpd's", O.nginx);
        }
        child_stop(&c);
    }
    char *dir = pbt_tmpdir("bench-disk");
    double f = pbb_fdatasync_rate(dir, O.disk_seconds, 100);
    m_add(&R.fsync, f);
    double s = pbb_sqlite_insert_rate(dir, O.disk_seconds, 100, 1000, "FULL");
    m_add(&R.sqlite_full, s);
    double sn = pbb_sqlite_insert_rate(dir, O.disk_seconds, 100, 1000, "NORMAL");
    m_add(&R.sqlite_normal, sn);
    pbt_rmrf(dir);
    free(dir);
    printf("  fdatasync 100 B: %.0f/s   sqlite insert (batch 1000, FULL): %.0f rows/s, "
           "NORMAL: %.0f rows/s\n",
           f, s, sn);
}

/* ---- scenarios ------------------------------------------------------------------------------ */

static double deadline_from_now(void)
{
    return now_s() + O.time_limit_s;
}

/* One event from `from` to `to`, waited for in to's inbox (establishes keys and
 * connections; excluded from every measurement). The inbox then holds `expect` items. */
static bool warm_up(bd *from, bd *to, unsigned stream, long expect)
{
    if (!submit(&from->adm, to->d->server_id, stream, 0, 1, 1)) return false;
    if (!wait_inbox(&to->adm, expect, now_s() + 30)) {
        fprintf(stderr, "pbbench: warm-up event %s -> %s did not arrive\n", from->tag, to->tag);
        pbt_daemon_dump_log(from->d);
        pbt_daemon_dump_log(to->d);
        return false;
    }
    return true;
}

/* 1. one pair, sequential: A -> B, events submitted in batches of 1000; both daemons on
 * PostgreSQL when pg. */
static void scenario_pair(const char *sync, metric *m, int run, bool pg)
{
    const char *extra[] = {"--sync", sync, NULL};
    const char *store = pg ? " PG" : "";
    bd *a = bd_new_store(pg ? "pgpairA" : "pairA", extra, pg);
    bd *b = bd_new_store(pg ? "pgpairB" : "pairB", extra, pg);
    bd *both[] = {a, b};
    long n = O.pair_events;
    bool measured = false;
    if (!bd_start_all(both, 2) || !warm_up(a, b, 1, 1)) goto out;
    double t0 = now_s();
    if (!submit(&a->adm, b->d->server_id, 1, 1, n, 1000)) goto out;
    double t_sub = now_s() - t0;
    bool done = wait_inbox(&b->adm, n + 1, deadline_from_now());
    double dt = now_s() - t0;
    long got = done ? n : inbox_count(&b->adm) - 1;
    if (!done) m->timed_out = true;
    m_add(m, (double)got / dt);
    printf("  run %d one pair %-6s%s: %ld events in %.2f s = %.0f events/s (submit took %.2f "
           "s)%s\n",
           run, sync, store, got, dt, (double)got / dt, t_sub, done ? "" : " TIMED OUT");
    measured = true;
out:
    if (!measured)
        note("one pair %s%s, run %d: failed before measuring (see stderr)", sync, store, run);
    bd_free(a);
    bd_free(b);
}

struct sub_job {
    hc *c;
    const char *to;
    unsigned stream;
    long count;
    bool ok;
};

static void *sub_thread(void *arg)
{
    struct sub_job *j = arg;
    j->ok = submit(j->c, j->to, j->stream, 1, j->count, 1000);
    return NULL;
}

/* 2. 16 -> 1: 16 senders push to one receiver at once (synchronous FULL); every daemon
 * on PostgreSQL when pg. */
static void scenario_fanin(metric *m, int run, bool pg)
{
    const char *store = pg ? " PG" : "";
    bd *r = bd_new_store(pg ? "pgfanR" : "fanR", NULL, pg), *s[FAN] = {0};
    bd *all[FAN + 1];
    all[0] = r;
    for (int i = 0; i < FAN; i++) {
        char tag[16];
        snprintf(tag, sizeof tag, "%sfanS%d", pg ? "pg" : "", i);
        s[i] = all[i + 1] = bd_new_store(tag, NULL, pg);
    }
    long per = O.fan_events / FAN, n = per * FAN;
    pthread_t th[FAN];
    struct sub_job jobs[FAN];
    bool measured = false;
    if (!bd_start_all(all, FAN + 1)) goto out;
    for (int i = 0; i < FAN; i++)
        if (!warm_up(s[i], r, (unsigned)i + 1, i + 1)) goto out;
    double t0 = now_s();
    for (int i = 0; i < FAN; i++) {
        jobs[i] = (struct sub_job){&s[i]->adm, r->d->server_id, (unsigned)i + 1, per, false};
        pthread_create(&th[i], NULL, sub_thread, &jobs[i]);
    }
    bool subs_ok = true;
    for (int i = 0; i < FAN; i++) {
        pthread_join(th[i], NULL);
        subs_ok = subs_ok && jobs[i].ok;
    }
    if (!subs_ok) goto out;
    bool done = wait_inbox(&r->adm, FAN + n, deadline_from_now());
    double dt = now_s() - t0;
    long got = done ? n : inbox_count(&r->adm) - FAN;
    if (!done) m->timed_out = true;
    m_add(m, (double)got / dt);
    printf("  run %d 16 -> 1%-6s: %ld events in %.2f s = %.0f events/s%s\n", run, store, got, dt,
           (double)got / dt, done ? "" : " TIMED OUT");
    measured = true;
out:
    if (!measured) note("16 -> 1%s, run %d: failed before measuring (see stderr)", store, run);
    for (int i = 0; i <= FAN; i++)
        bd_free(all[i]);
}

/* 3. 1 -> 16: one sender fans out to 16 receivers. */
static void scenario_fanout(int run)
{
    bd *s = bd_new("fanoutS", NULL), *r[FAN] = {0};
    bd *all[FAN + 1];
    all[0] = s;
    for (int i = 0; i < FAN; i++) {
        char tag[16];
        snprintf(tag, sizeof tag, "fanoutR%d", i);
        r[i] = all[i + 1] = bd_new(tag, NULL);
    }
    long per = O.fan_events / FAN, n = per * FAN;
    bool measured = false;
    if (!bd_start_all(all, FAN + 1)) goto out;
    for (int i = 0; i < FAN; i++)
        if (!warm_up(s, r[i], 1, 1)) goto out;
    double t0 = now_s();
    /* Round-robin batches so that every receiver has work from the start. */
    for (long done_n = 0; done_n < per; done_n += 250) {
        long k = per - done_n < 250 ? per - done_n : 250;
        for (int i = 0; i < FAN; i++)
            if (!submit(&s->adm, r[i]->d->server_id, 1, 1 + done_n, k, 250)) goto out;
    }
    double deadline = deadline_from_now();
    bool done = true;
    long got = 0;
    for (int i = 0; i < FAN; i++) {
        if (done && !wait_inbox(&r[i]->adm, per + 1, deadline)) done = false;
    }
    double dt = now_s() - t0;
    if (done)
        got = n;
    else
        for (int i = 0; i < FAN; i++)
            got += inbox_count(&r[i]->adm) - 1;
    if (!done) R.fanout.timed_out = true;
    m_add(&R.fanout, (double)got / dt);
    printf("  run %d 1 -> 16      : %ld events in %.2f s = %.0f events/s%s\n", run, got, dt,
           (double)got / dt, done ? "" : " TIMED OUT");
    measured = true;
out:
    if (!measured) note("1 -> 16, run %d: failed before measuring (see stderr)", run);
    for (int i = 0; i <= FAN; i++)
        bd_free(all[i]);
}

/*
 * 4 and 6. Pull drain and memory: A holds n events queued for B while B is down (A pushes
 * once, fails, and backs off for a day); then B starts and its start-up Pull drains A.
 * Measures the drain from B's start to B's inbox holding them all, A's peak RSS holding
 * the queue, B's peak RSS after the drain, and A's after serving it.
 */
/* Waits (bounded) until a's peers list shows `peer` in mode "queued". */
static bool wait_queued(bd *a, const char *peer)
{
    double deadline = now_s() + 30;
    while (now_s() < deadline) {
        if (hc_do(&a->adm, "GET", "/v1/peers", NULL, 0, 10000) == 200) {
            json_t *j = hc_json(&a->adm), *p;
            size_t i;
            bool queued = false;
            json_array_foreach(json_object_get(j, "peers"), i, p)
            {
                const char *id = json_string_value(json_object_get(p, "server_id"));
                const char *mode = json_string_value(json_object_get(p, "mode"));
                if (id && mode && !strcmp(id, peer) && !strcmp(mode, "queued")) queued = true;
            }
            json_decref(j);
            if (queued) return true;
        }
        sleep_ms(10);
    }
    fprintf(stderr, "pbbench: %s never showed %s as queued\n", a->tag, peer);
    return false;
}

struct drain_result {
    double rate;
    long a_hwm, a_rss, b_hwm, a_hwm_after;
    bool timed_out;
};

static bool run_drain(long n, int run, struct drain_result *res)
{
    const char *extra_a[] = {"--push-retries", "0", "--backoff-min", "86400", "--backoff-max",
                             "86400",          NULL};
    bd *a = bd_new("drainA", extra_a), *b = bd_new("drainB", NULL);
    bd *both[] = {a, b};
    bool ok = false;
    memset(res, 0, sizeof *res);
    /* B -> A as well, so that A holds B's key before B's start-up Pull: otherwise A
     * fetches it from B at that moment, racing B's federation listener start-up. */
    if (!bd_start_all(both, 2) || !warm_up(a, b, 1, 1) || !warm_up(b, a, 2, 1)) goto out;
    bd_stop(b);
    double t_sub = now_s();
    if (!submit(&a->adm, b->d->server_id, 1, 1, n, ADMIN_MAX_EVENTS)) goto out;
    t_sub = now_s() - t_sub;
    if (!wait_queued(a, b->d->server_id)) goto out;
    proc_rss(a->d->pid, &res->a_hwm, &res->a_rss);
    double t0 = now_s();
    if (!bd_start(b)) goto out;
    bool done = wait_inbox(&b->adm, n + 1, deadline_from_now());
    double dt = now_s() - t0;
    long got = done ? n : inbox_count(&b->adm) - 1;
    res->timed_out = !done;
    res->rate = (double)got / dt;
    long dummy;
    proc_rss(b->d->pid, &res->b_hwm, &dummy);
    proc_rss(a->d->pid, &res->a_hwm_after, &dummy);
    printf("  run %d drain %7ld: queued in %.1f s; drained %ld in %.2f s = %.0f events/s%s; "
           "peak RSS A %ld KiB (now %ld), B %ld KiB, A after %ld KiB\n",
           run, n, t_sub, got, dt, res->rate, done ? "" : " TIMED OUT", res->a_hwm, res->a_rss,
           res->b_hwm, res->a_hwm_after);
    ok = true;
out:
    bd_free(a);
    bd_free(b);
    return ok;
}

/* 5. latency: one event at a time, from before its submission at A until B's inbox
 * long-poll returns it. */
static void scenario_latency(int run)
{
    bd *a = bd_new("latA", NULL), *b = bd_new("latB", NULL);
    bd *both[] = {a, b};
    int k = O.lat_samples;
    double *lat = calloc((size_t)k, sizeof *lat);
    if (!lat) abort();
    int got = 0, stalls = 0;
    if (!bd_start_all(both, 2) || !warm_up(a, b, 1, 1)) goto out;
    double deadline = deadline_from_now();
    for (int i = 0; i < k && now_s() < deadline; i++) {
        char path[128];
        snprintf(path, sizeof path, "/v1/inbox?after=%d&limit=1&wait=%d", i + 1, LAT_WAIT_S);
        double t0 = now_s();
        if (!submit(&a->adm, b->d->server_id, 1, i + 1, 1, 1)) goto out;
        long st = hc_do(&b->adm, "GET", path, NULL, 0, 15000);
        double t1 = now_s();
        json_t *j = hc_json(&b->adm);
        bool arrived = st == 200 && json_array_size(json_object_get(j, "events")) == 1;
        json_decref(j);
        if (!arrived) {
            fprintf(stderr, "pbbench: latency sample %d did not arrive in %d s\n", i, LAT_WAIT_S);
            R.lat_max.timed_out = true;
            break;
        }
        lat[got++] = (t1 - t0) * 1e6;
        if (t1 - t0 >= LAT_WAIT_S * 0.95) stalls++;
    }
    if (stalls) {
        R.lat_stalls += stalls;
        note("latency run %d: %d of %d samples took the whole long-poll wait (%d s): the "
             "inbox long-poll missed the wake-up",
             run, stalls, got, LAT_WAIT_S);
    }
    qsort(lat, (size_t)got, sizeof *lat, cmp_double);
    if (got) {
        double p50 = lat[(got - 1) / 2], p99 = lat[(int)((got - 1) * 0.99)], max = lat[got - 1];
        m_add(&R.lat_p50, p50);
        m_add(&R.lat_p99, p99);
        m_add(&R.lat_max, max);
        printf("  run %d latency (%d samples): p50 %.0f us  p99 %.0f us  max %.0f us\n", run, got,
               p50, p99, max);
    }
out:
    if (!got) note("latency, run %d: no sample measured (see stderr)", run);
    free(lat);
    bd_free(a);
    bd_free(b);
}

/* ---- report -------------------------------------------------------------------------------- */

static void fmt_metric(char *out, size_t cap, const metric *m, double scale, const char *unit)
{
    if (!m->n) {
        snprintf(out, cap, "n/a");
        return;
    }
    int prec = scale < 1 ? 1 : 0; /* MiB with one decimal */
    if (m->n == 1)
        snprintf(out, cap, "%.*f %s%s", prec, m_median(m) * scale, unit,
                 m->timed_out ? " (timed out)" : "");
    else
        snprintf(out, cap, "%.*f %s [%.*f..%.*f]%s", prec, m_median(m) * scale, unit, prec,
                 m_min(m) * scale, prec, m_max(m) * scale, m->timed_out ? " (timed out)" : "");
}

static FILE *g_md;

static void row(const char *name, const metric *res, double rscale, const char *runit,
                const char *ceil_name, double ceil, const char *target, double want,
                bool lower_is_better)
{
    char a[128];
    fmt_metric(a, sizeof a, res, rscale, runit);
    double ratio = res->n && ceil > 0 ? m_median(res) / ceil : NAN;
    const char *verdict = isnan(ratio) || !target                             ? ""
                          : (lower_is_better ? ratio <= want : ratio >= want) ? "met"
                                                                              : "MISSED";
    char c[96], r[32];
    if (ceil > 0)
        snprintf(c, sizeof c, "%s %.0f", ceil_name, ceil);
    else
        snprintf(c, sizeof c, "%s", ceil_name ? ceil_name : "");
    if (!isnan(ratio))
        snprintf(r, sizeof r, "%.3f", ratio);
    else
        snprintf(r, sizeof r, "-");
    printf("%-30s %-36s %-34s %-7s %-10s %s\n", name, a, c, r, target ? target : "", verdict);
    fprintf(g_md, "| %s | %s | %s | %s | %s | %s |\n", name, a, c, r, target ? target : "",
            verdict);
}

static void ceiling_row(const char *name, const metric *m, double scale, const char *unit)
{
    char a[128];
    fmt_metric(a, sizeof a, m, scale, unit);
    printf("%-44s %s\n", name, a);
    fprintf(g_md, "| %s | %s |\n", name, a);
}

static void report(double elapsed, size_t push_len, const char *load_before)
{
    char stamp[64], load_after[128] = "";
    time_t t = time(NULL);
    strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S UTC", gmtime(&t));
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
        if (!fgets(load_after, sizeof load_after, la)) load_after[0] = '\0';
        fclose(la);
        load_after[strcspn(load_after, "\n")] = '\0';
    }
    struct utsname u;
    uname(&u);
    g_md = fopen(O.out, "w");
    if (!g_md) {
        fprintf(stderr, "pbbench: cannot write %s: %s\n", O.out, strerror(errno));
        g_md = fopen("/dev/null", "w");
    }
    int hw = R.nginx_ok && R.http1[1].n ? 1 : 0;
    const char *hname = hw ? "nginx" : "mhd";
    double h1 = m_median(&R.http1[hw]), h16 = m_median(&R.http16[hw]);
    double h1p99 = m_median(&R.http1_p99[hw]), fs = m_median(&R.fsync);
    double sq = m_median(&R.sqlite_full);

    fprintf(g_md, "# postbox benchmark results\n\n");
    fprintf(g_md, "Produced by `make bench` (bench/bench.c); see docs/PERFORMANCE.md for what "
                  "each line measures.\n\n");
    fprintf(
        g_md,
        "- date: %s; host: %s %s, %ld CPUs; load average before: %s, after: %s\n"
        "- runs per figure: %d (median [min..max]); %s; took %.0f s\n"
        "- sizes: pair %ld events, 16->1 and 1->16 %ld events, drain %ld events, latency %d "
        "samples; PushRequest body %zu bytes (userInvited events to %ld users)\n"
        "- HTTP ceiling used for the ratios: %s\n"
        "- source: %s\n\n",
        stamp, u.sysname, u.release, sysconf(_SC_NPROCESSORS_ONLN), load_before, load_after, O.runs,
        O.quick ? "BENCH_QUICK smoke run: sizes scaled down, figures indicative only" : "full run",
        elapsed, O.pair_events, O.fan_events, O.drain_events, O.lat_samples, push_len, O.users,
        hw ? "nginx (Debian, `return 200`)" : "libmicrohttpd empty handler (pbbench_httpnull)",
        getenv("BENCH_REV") ? getenv("BENCH_REV") : "unknown revision");

    printf("\n==== ceilings ====\n");
    fprintf(g_md, "## Ceilings\n\n| ceiling | median [min..max] |\n|---|---|\n");
    ceiling_row("HTTP 1 conn, libmicrohttpd", &R.http1[0], 1, "req/s");
    ceiling_row("HTTP 1 conn p99, libmicrohttpd", &R.http1_p99[0], 1, "us");
    ceiling_row("HTTP 16 conn, libmicrohttpd", &R.http16[0], 1, "req/s");
    if (R.http1[1].n) {
        ceiling_row("HTTP 1 conn, nginx", &R.http1[1], 1, "req/s");
        ceiling_row("HTTP 1 conn p99, nginx", &R.http1_p99[1], 1, "us");
        ceiling_row("HTTP 16 conn, nginx", &R.http16[1], 1, "req/s");
    }
    ceiling_row("write+fdatasync 100 B", &R.fsync, 1, "/s");
    ceiling_row("SQLite insert 100 B rows, batch 1000, FULL", &R.sqlite_full, 1, "rows/s");
    ceiling_row("SQLite insert 100 B rows, batch 1000, NORMAL", &R.sqlite_normal, 1, "rows/s");

    printf("\n==== results (ratio = median result / median ceiling) ====\n");
    printf("%-30s %-36s %-34s %-7s %-10s %s\n", "scenario", "result", "ceiling", "ratio", "target",
           "");
    fprintf(g_md, "\n## Results\n\nratio = median result / median ceiling, both from this run."
                  "\n\n| scenario | result: median [min..max] | ceiling | ratio | target | |\n"
                  "|---|---|---|---|---|---|\n");
    char cn[64];
    double fmin = h1 < fs ? h1 : fs;
    snprintf(cn, sizeof cn, "min(HTTP1 %s, fdatasync)", hname);
    row("1. one pair, FULL", &R.pair_full, 1, "ev/s", cn, fmin, ">= 0.5", 0.5, false);
    if (want("pair_full_pg"))
        row("1. one pair, FULL, PostgreSQL", &R.pair_full_pg, 1, "ev/s", cn, fmin, NULL, 0, false);
    snprintf(cn, sizeof cn, "HTTP1 %s", hname);
    row("1. one pair, NORMAL", &R.pair_normal, 1, "ev/s", cn, h1, ">= 0.4", 0.4, false);
    snprintf(cn, sizeof cn, "HTTP16 %s", hname);
    row("2. 16 -> 1, FULL", &R.fanin, 1, "ev/s", cn, h16, ">= 0.25", 0.25, false);
    if (want("fanin_pg"))
        row("2. 16 -> 1, FULL, PostgreSQL", &R.fanin_pg, 1, "ev/s", cn, h16, NULL, 0, false);
    row("3. 1 -> 16, FULL", &R.fanout, 1, "ev/s", cn, h16, NULL, 0, false);
    row("4. pull drain", &R.drain, 1, "ev/s", "SQLite insert FULL", sq, ">= 0.3", 0.3, false);
    snprintf(cn, sizeof cn, "HTTP1 p99 %s", hname);
    row("5. latency p50", &R.lat_p50, 1, "us", NULL, 0, NULL, 0, true);
    row("5. latency p99", &R.lat_p99, 1, "us", cn, h1p99, "<= 10", 10, true);
    row("5. latency max", &R.lat_max, 1, "us", NULL, 0, NULL, 0, true);

    printf("\n==== memory (peak RSS, VmHWM) ====\n");
    fprintf(g_md, "\n## Memory\n\nVmHWM from /proc. Sender: after its queue was submitted "
                  "(peer down); receiver: after pulling the whole queue; sender after: after "
                  "serving the Pulls.\n\n"
                  "| queued events | sender holding them | sender RSS now | receiver pulling | "
                  "sender after the drain | drain rate |\n|---|---|---|---|---|---|\n");
    for (int i = 0; i < O.nrss; i++) {
        char s1[96], s2[96], s3[96], s4[96], s5[96];
        fmt_metric(s1, sizeof s1, &R.rss_sender[i], 1.0 / 1024, "MiB");
        fmt_metric(s2, sizeof s2, &R.rss_sender_now[i], 1.0 / 1024, "MiB");
        fmt_metric(s3, sizeof s3, &R.rss_receiver[i], 1.0 / 1024, "MiB");
        fmt_metric(s4, sizeof s4, &R.rss_sender_after[i], 1.0 / 1024, "MiB");
        fmt_metric(s5, sizeof s5, &R.rss_drain_rate[i], 1, "ev/s");
        printf("%9ld queued: sender %s (now %s), receiver %s, sender after %s; drain %s\n",
               O.rss_sizes[i], s1, s2, s3, s4, s5);
        fprintf(g_md, "| %ld | %s | %s | %s | %s | %s |\n", O.rss_sizes[i], s1, s2, s3, s4, s5);
    }
    if (O.nrss >= 2 && R.rss_sender[0].n && R.rss_sender[O.nrss - 1].n) {
        double small = m_median(&R.rss_sender[0]), big = m_median(&R.rss_sender[O.nrss - 1]);
        bool cap = big <= 64 * 1024, flat = big <= small * 1.10;
        char line[512];
        snprintf(line, sizeof line,
                 "RSS target (sender, %ld queued): %.1f MiB <= 64 MiB: %s; %.1f MiB <= 1.10 x "
                 "%.1f MiB (%ld queued) = %.1f MiB: %s (x%.2f)%s",
                 O.rss_sizes[O.nrss - 1], big / 1024, cap ? "met" : "MISSED", big / 1024,
                 small / 1024, O.rss_sizes[0], small * 1.1 / 1024, flat ? "met" : "MISSED",
                 big / small,
                 O.rss_sizes[O.nrss - 1] == 1000000 && O.rss_sizes[0] == 10000
                     ? ""
                     : " [target is for 1,000,000 vs 10,000; sizes scaled here]");
        printf("%s\n", line);
        fprintf(g_md, "\n%s\n", line);
    }
    if (R.notes[0]) {
        printf("\nnotes:\n%s", R.notes);
        fprintf(g_md, "\n## Notes\n\n");
        for (char *p = R.notes, *nl; *p; p = nl + 1) {
            nl = strchr(p, '\n');
            if (!nl) break;
            fprintf(g_md, "- %.*s\n", (int)(nl - p), p);
        }
    }
    fclose(g_md);
    printf("\nwritten: %s\n", O.out);
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        usage();
        return strcmp(argv[1], "--help") && strcmp(argv[1], "-h") ? 2 : 0;
    }
    options();
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    size_t push_len = choose_pad();
    char load_before[128] = "";
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
        if (!fgets(load_before, sizeof load_before, la)) load_before[0] = '\0';
        fclose(la);
        load_before[strcspn(load_before, "\n")] = '\0';
    }
    printf("pbbench: %d runs%s; PushRequest body %zu bytes; nginx: %s\n", O.runs,
           O.quick ? " (BENCH_QUICK)" : "", push_len, O.nginx ? O.nginx : "not found");
    const char *pg_url = getenv("PB_TEST_PG_URL");
    bool pg = pg_url && *pg_url;
    if (!pg && (want("pair_full_pg") || want("fanin_pg")))
        note("pair_full_pg and fanin_pg skipped: PB_TEST_PG_URL is unset (scripts/bench starts "
             "a throw-away server with scripts/pg-start)");
    double t0 = now_s();
    long drain_idx = -1;
    for (int i = 0; i < O.nrss; i++)
        if (O.rss_sizes[i] == O.drain_events) drain_idx = i;
    for (int run = 1; run <= O.runs; run++) {
        printf("---- run %d of %d (%.0f s so far)\n", run, O.runs, now_s() - t0);
        fflush(stdout);
        if (want("ceilings")) run_ceilings();
        if (want("pair_full")) scenario_pair("full", &R.pair_full, run, false);
        if (pg && want("pair_full_pg")) scenario_pair("full", &R.pair_full_pg, run, true);
        if (want("pair_normal")) scenario_pair("normal", &R.pair_normal, run, false);
        if (want("fanin")) scenario_fanin(&R.fanin, run, false);
        if (pg && want("fanin_pg")) scenario_fanin(&R.fanin_pg, run, true);
        if (want("fanout")) scenario_fanout(run);
        if (want("latency")) scenario_latency(run);
        struct drain_result dr;
        bool mem = want("memory");
        for (int i = 0; mem && i < O.nrss; i++) {
            if (!run_drain(O.rss_sizes[i], run, &dr)) {
                note("drain of %ld, run %d: failed before measuring (see stderr)", O.rss_sizes[i],
                     run);
                continue;
            }
            m_add(&R.rss_sender[i], (double)dr.a_hwm);
            m_add(&R.rss_sender_now[i], (double)dr.a_rss);
            m_add(&R.rss_receiver[i], (double)dr.b_hwm);
            m_add(&R.rss_sender_after[i], (double)dr.a_hwm_after);
            m_add(&R.rss_drain_rate[i], dr.rate);
            if (dr.timed_out) R.rss_drain_rate[i].timed_out = true;
            if (i == drain_idx && want("drain")) {
                m_add(&R.drain, dr.rate);
                if (dr.timed_out) R.drain.timed_out = true;
            }
        }
        if (want("drain") && (drain_idx < 0 || !mem) && run_drain(O.drain_events, run, &dr)) {
            m_add(&R.drain, dr.rate);
            if (dr.timed_out) R.drain.timed_out = true;
        }
        fflush(stdout);
    }
    report(now_s() - t0, push_len, load_before);
    curl_global_cleanup();
    return 0;
}
