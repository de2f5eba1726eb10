/*
 * pbbench - the postbox benchmark driver (`make bench`, see docs/PERFORMANCE.md).
 *
 * It starts real postboxd processes on 127.0.0.1 with temporary data directories, drives
 * them only through the admin API, and measures the scenarios of docs/PERFORMANCE.md:
 * one pair (synchronous FULL and NORMAL), 16 -> 1, 1 -> 16, pull drain, latency, memory;
 * and one pair FULL and 16 -> 1 again with every daemon on PostgreSQL (pair_full_pg,
 * fanin_pg: a fresh database per daemon on the server of PB_TEST_PG_URL, through the
 * harness's PBT_STORE=postgres; scripts/bench starts a throw-away server when none is set);
 * and the federation-scale scenarios against the peer farm (tests/tools/peerfarm.c, many
 * fake peers on 127.0.0.1 ports, some hung or refusing): fanout_1000 (one sender, 1,000
 * receivers, 10 % hung and 10 % refusing, against the same run with all healthy),
 * startup_10k (a restart with 10,000 known peers), pair_batch (one pair against the HTTP
 * 1-connection ceiling) and the drain's rate at 1,000,000 queued against 10,000; and the
 * field patterns: submit_concurrent (64 admin connections, one new event per call, against
 * the null server with the same client) and pair_rtt (a pair whose server IDs are
 * pbbench_delayproxy addresses, at 0, 50, 100 and 200 ms RTT); and over TLS: pair_tls,
 * pair_rtt_tls (100 ms) and fanout_1000_tls (the all-healthy run), each against the same
 * scenario over plain HTTP measured right beside it (the order alternating between runs),
 * with a test CA and a certificate for 127.0.0.1 made by the openssl CLI at start.
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
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "crypto/auth.h"
#include "crypto/keys.h"
#include "farm.h"
#include "harness.h"
#include "micro.h"
#include "net/hrpc_client.h"
#include "store/store.h"
#include "util/buf.h"
#include "wire/wire.h"

#define MAX_RUNS 9
#define MAX_SIZES 6
#define FAN 16
#define ADMIN_MAX_BODY (1000 * 1000) /* stay under the admin API's 1 MiB */
#define ADMIN_MAX_EVENTS 10000
#define LAT_WAIT_S 2        /* the latency scenario's inbox long-poll wait */
#define SCALE_ROUNDS 5      /* fanout_1000: each receiver's events are submitted in 5 calls */
#define SCALE_SUBMITTERS 4  /* fanout_1000: admin clients submitting at once */
#define DAEMON_NOFILE 65536 /* RLIMIT_NOFILE of the scale scenarios' daemons */
#define SUBC_CONNS 64       /* submit_concurrent: admin connections */
#define RTT_N 4
static const int RTT_MS[RTT_N] = {0, 50, 100, 200}; /* pair_rtt: round-trip times */
#define RTT_LAT_SAMPLES 20 /* pair_rtt: single events timed one after the other */

/* ---- options ----------------------------------------------------------------------------- */

static struct {
    bool quick;
    int runs;
    long pair_events;
    long rtt_events; /* pair_rtt and pair_rtt_tls */
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
    /* federation scale */
    long scale_peers;   /* fanout_1000: receivers */
    long scale_events;  /* fanout_1000: events per receiver */
    long startup_peers; /* startup_10k: known peers */
    long batch_events;  /* pair_batch: events per run */
    int scale_limit_s;  /* bound of the scale scenarios' waits */
    unsigned farm_port; /* first port of the peer farm */
} O;

/* TLS scenarios: a test CA and one certificate for 127.0.0.1 (IP SAN), made at the first
 * TLS scenario (make_test_ca); g_tls_on while a scenario runs over TLS: the daemons made
 * then (bd_new_store) serve TLS, reach peers over https trusting the CA, and the peer farm
 * (farm_start) serves TLS. */
static struct {
    char *dir;
    char ca[600], cert[600], key[600];
    bool made, failed;
} g_ca;
static bool g_tls_on;

/* "--allow-private-peers yes" when this postboxd has the setting (peers here are on
 * 127.0.0.1); detected from `postboxd --help` at start. */
static bool g_allow_private;

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

static bool listed(const char *name)
{
    size_t n = strlen(name);
    for (const char *p = O.scenarios; (p = strstr(p, name)) != NULL; p += n)
        if ((p == O.scenarios || p[-1] == ',') && (p[n] == '\0' || p[n] == ',')) return true;
    return false;
}

/* Is scenario `name` selected? "scale" selects the federation-scale group: ceilings,
 * fanout_1000, startup_10k, pair_batch and drain. */
static bool want(const char *name)
{
    if (!O.scenarios || !*O.scenarios || !strcmp(O.scenarios, "all")) return true;
    if (listed(name)) return true;
    static const char *const scale[] = {"ceilings", "fanout_1000", "startup_10k", "pair_batch",
                                        "drain"};
    for (size_t i = 0; i < sizeof scale / sizeof scale[0]; i++)
        if (!strcmp(name, scale[i]) && listed("scale")) return true;
    return false;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: pbbench   (settings are environment variables)\n"
            "  BENCH_QUICK=1          smoke run (< 1 min): small sizes, short ceilings\n"
            "  BENCH_RUNS=N           runs per measurement (default 3, at most %d)\n"
            "  BENCH_PAIR_EVENTS=N    one pair, events per run (default 20000)\n"
            "  BENCH_RTT_EVENTS=N     pair_rtt and pair_rtt_tls, events per run (default 100000)\n"
            "  BENCH_FAN_EVENTS=N     16->1 and 1->16, events per run in total (default 16000)\n"
            "  BENCH_DRAIN_EVENTS=N   pull drain backlog (default 100000)\n"
            "  BENCH_RSS_SIZES=a,b,c  memory and drain queue sizes (default 10000,100000,1000000)\n"
            "  BENCH_LAT_SAMPLES=N    latency samples per run (default 1000)\n"
            "  BENCH_HTTP_SECONDS=S   each HTTP ceiling measurement (default 3)\n"
            "  BENCH_DISK_SECONDS=S   each disk ceiling measurement (default 3)\n"
            "  BENCH_TIME_LIMIT=S     bound of one wait (default 300)\n"
            "  BENCH_USERS=N          events are spread over N receiving users (default 1000)\n"
            "  BENCH_PUSH_BYTES=N     size of one PushRequest body (default 100)\n"
            "  BENCH_SCENARIOS=list   any of ceilings,pair_full,pair_normal,fanin,fanout,drain,\n"
            "                         latency,memory,pair_full_pg,fanin_pg,fanout_1000,\n"
            "                         startup_10k,pair_batch,submit_concurrent,pair_rtt,\n"
            "                         pair_tls,pair_rtt_tls,fanout_1000_tls (TLS: need the\n"
            "                         openssl CLI);\n"
            "                         scale = ceilings,fanout_1000,\n"
            "                         startup_10k,pair_batch,drain (default all; the _pg ones\n"
            "                         need PB_TEST_PG_URL, see scripts/pg-start)\n"
            "  BENCH_SCALE_PEERS=N    fanout_1000: receivers (default 1000; 10%% hung, 10%%\n"
            "                         refusing)\n"
            "  BENCH_SCALE_EVENTS=N   fanout_1000: events per receiver (default 50)\n"
            "  BENCH_STARTUP_PEERS=N  startup_10k: known peers (default 10000; 10%% hung)\n"
            "  BENCH_BATCH_EVENTS=N   pair_batch: events per run (default 50000)\n"
            "  BENCH_SCALE_LIMIT=S    bound of a fanout_1000 or startup_10k run (default 90)\n"
            "  BENCH_FARM_PORT=P      first port of the peer farm (default 20000)\n"
            "  BENCH_SCALE_MIXED=0    fanout_1000: the all-healthy run only (profiling)\n"
            "  BENCH_FAN_WARM=all     fanout_1000: warm every receiver, not only the first\n"
            "                         (first contacts, TLS handshakes, outside the window)\n"
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
    O.pair_events = env_long("BENCH_PAIR_EVENTS", O.quick ? 2000 : 100000);
    /* at 200 ms RTT 20,000 events last a few round trips, mostly the window's growth: the
     * throughput at a distance is the steady state's */
    O.rtt_events = env_long("BENCH_RTT_EVENTS", O.quick ? 2000 : 100000);
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
    if (O.rtt_events < 1) O.rtt_events = 1;
    if (O.fan_events < FAN) O.fan_events = FAN;
    if (O.drain_events < 1) O.drain_events = 1;
    if (O.lat_samples < 1) O.lat_samples = 1;
    O.scale_peers = env_long("BENCH_SCALE_PEERS", O.quick ? 200 : 1000);
    O.scale_events = env_long("BENCH_SCALE_EVENTS", O.quick ? 10 : 50);
    O.startup_peers = env_long("BENCH_STARTUP_PEERS", O.quick ? 1000 : 10000);
    O.batch_events = env_long("BENCH_BATCH_EVENTS", O.quick ? 5000 : 50000);
    O.scale_limit_s = (int)env_long("BENCH_SCALE_LIMIT", O.quick ? 30 : 90);
    O.farm_port = (unsigned)env_long("BENCH_FARM_PORT", 20000);
    if (O.scale_peers < 20) O.scale_peers = 20;
    if (O.scale_peers > 20000) O.scale_peers = 20000;
    if (O.scale_events < SCALE_ROUNDS) O.scale_events = SCALE_ROUNDS;
    if (O.startup_peers < 20) O.startup_peers = 20;
    if (O.startup_peers > 20000) O.startup_peers = 20000;
    if (O.batch_events < 1) O.batch_events = 1;
    if (O.scale_limit_s < 5) O.scale_limit_s = 5;
    if (O.farm_port < 1024 || O.farm_port > 60000) O.farm_port = 20000;
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
    metric fsync_p50, fsync_p99;       /* ... one's duration, us */
    metric fsync_two_p99;              /* ... two in a row, p99, us */
    metric sqlite_full, sqlite_normal; /* rows/s, batches of 1000 */
    /* scenarios */
    metric pair_full, pair_normal, fanin, fanout, drain; /* events/s */
    metric pair_full_pg, fanin_pg;                       /* events/s, PostgreSQL store */
    metric lat_p50, lat_p99, lat_max;                    /* us */
    int lat_stalls; /* samples that took the whole long-poll wait */
    metric rss_sender[MAX_SIZES], rss_sender_now[MAX_SIZES], rss_receiver[MAX_SIZES]; /* KiB */
    metric rss_sender_after[MAX_SIZES];
    metric rss_drain_rate[MAX_SIZES];
    /* federation scale */
    metric sc_time_base, sc_time_mixed; /* fanout_1000: s until every healthy event arrived */
    metric sc_p99_base, sc_p99_mixed;   /* fanout_1000: healthy delivery latency p99, ms */
    metric sc_threads, sc_rss;          /* fanout_1000 (mixed): sender threads, VmHWM KiB */
    metric sc_pushes;                   /* fanout_1000 all healthy: Pushes/s (one event per Push) */
    metric sc_curl, sc_curl_cpu; /* ... libcurl multi alone to the same farm: req/s, us CPU */
    metric sc_cpu_push;          /* ... sender CPU time (user + system) per Push, us */
    metric sc_loop_cpu;          /* ... the sender's busiest thread (its I/O loop), % of a core */
    metric sc_sender_cpu;        /* ... the whole sender, % of a core */
    metric sc_farm_cpu;          /* ... the peer farm, % of a core (is it the bottleneck?) */
    metric st_push, st_pulls;    /* startup_10k: s from start */
    metric st_threads, st_rss;   /* startup_10k: the restarted server */
    metric pair_batch;           /* events/s */
    /* field patterns (issue 20) */
    metric subc_rps, subc_p99;           /* submit_concurrent: submissions/s, p99 us */
    metric subc_null_rps, subc_null_p99; /* the null server, same client, same run */
    metric rtt_rate[4], rtt_lat_p99[4];  /* pair_rtt at RTT_MS[i]: events/s, latency p99 ms */
    /* TLS (issue 20 item 4): [0] plain HTTP, [1] TLS, measured side by side */
    metric tls_pair[2];                /* pair_tls: events/s */
    metric tls_rtt[2], tls_rtt_p99[2]; /* pair_rtt_tls (100 ms): events/s, p99 ms */
    metric tls_fan[2], tls_fan_p99[2]; /* fanout_1000_tls (all healthy): events/s, ms */
    metric tls_fan_curl[2];            /* ... libcurl alone in the same pattern, cold: Pushes/s */
    metric tls_fan_cpu[2];             /* ... CPU per event, the sender's and the farm's: us */
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
    bool pg;     /* its store is a fresh PostgreSQL database (PBT_STORE=postgres) */
    bool nofile; /* raise its RLIMIT_NOFILE to DAEMON_NOFILE (scale scenarios) */
    bool tls;    /* serves TLS and reaches peers over https (g_ca) */
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
    if (g_allow_private) {
        args[n++] = "--allow-private-peers";
        args[n++] = "yes";
    }
    for (int i = 0; extra && extra[i] && n < 31; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    bd *b = calloc(1, sizeof *b);
    if (!b) abort();
    char t[40];
    snprintf(t, sizeof t, "bench-%s", tag);
    b->d = daemon_new(t, args, pg);
    b->pg = pg;
    b->tls = g_tls_on;
    snprintf(b->tag, sizeof b->tag, "%s", tag);
    hc_init(&b->adm, b->d->admin_port);
    return b;
}

static bd *bd_new(const char *tag, const char *const *extra)
{
    return bd_new_store(tag, extra, false);
}

/* Raises this process's RLIMIT_NOFILE to `want` (the hard limit too, when allowed: root). */
static void raise_nofile(rlim_t want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want) return;
    struct rlimit r = {want, rl.rlim_max > want ? rl.rlim_max : want};
    if (setrlimit(RLIMIT_NOFILE, &r) != 0) {
        r.rlim_cur = r.rlim_max = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &r);
    }
}

/* Does `postboxd --help` list the setting allow-private-peers? */
static bool postboxd_has_allow_private(void)
{
    FILE *p = popen("'" PB_POSTBOXD "' --help 2>&1", "r");
    if (!p) return false;
    char line[512];
    bool found = false;
    while (fgets(line, sizeof line, p))
        if (strstr(line, "--allow-private-peers")) found = true;
    pclose(p);
    return found;
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
    argv[n++] = b->tls ? "https" : "http";
    if (b->tls) {
        argv[n++] = "--tls-cert";
        argv[n++] = g_ca.cert;
        argv[n++] = "--tls-key";
        argv[n++] = g_ca.key;
        argv[n++] = "--ca-file";
        argv[n++] = g_ca.ca;
    }
    for (int i = 0; i < d->nargs; i++)
        argv[n++] = d->args[i];
    argv[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) abort();
    if (pid == 0) {
        if (O.wrap) setpgid(0, 0); /* bd_stop signals the wrapper and postboxd together */
        if (b->nofile) raise_nofile(DAEMON_NOFILE);
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
    pbb_fsync_lat fl;
    double f = pbb_fdatasync_rate(dir, O.disk_seconds, 100, &fl);
    m_add(&R.fsync, f);
    if (fl.p50_us > 0) {
        m_add(&R.fsync_p50, fl.p50_us);
        m_add(&R.fsync_p99, fl.p99_us);
        m_add(&R.fsync_two_p99, fl.two_p99_us);
    }
    double s = pbb_sqlite_insert_rate(dir, O.disk_seconds, 100, 1000, "FULL");
    m_add(&R.sqlite_full, s);
    double sn = pbb_sqlite_insert_rate(dir, O.disk_seconds, 100, 1000, "NORMAL");
    m_add(&R.sqlite_normal, sn);
    pbt_rmrf(dir);
    free(dir);
    printf("  fdatasync 100 B: %.0f/s (p50 %.0f us, p99 %.0f us, two in a row p99 %.0f us)   "
           "sqlite insert (batch 1000, FULL): %.0f rows/s, NORMAL: %.0f rows/s\n",
           f, fl.p50_us, fl.p99_us, fl.two_p99_us, s, sn);
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

/* 1. one pair, sequential: A -> B, n events submitted in batches of 1000; both daemons on
 * PostgreSQL when pg. (9. pair_batch is the same with BENCH_BATCH_EVENTS events.) */
static void scenario_pair(const char *sync, metric *m, int run, bool pg, long n)
{
    const char *extra[] = {"--sync", sync, NULL};
    const char *store = pg ? " PG" : g_tls_on ? " TLS" : "";
    bd *a = bd_new_store(pg ? "pgpairA" : "pairA", extra, pg);
    bd *b = bd_new_store(pg ? "pgpairB" : "pairB", extra, pg);
    bd *both[] = {a, b};
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
    printf("  run %d %s %-6s%s: %ld events in %.2f s = %.0f events/s (submit took %.2f "
           "s)%s\n",
           run, m == &R.pair_batch ? "pair_batch" : "one pair", sync, store, got, dt,
           (double)got / dt, t_sub, done ? "" : " TIMED OUT");
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
 * the queue, B's peak RSS after the drain, and A's after serving it. B's receive budget is
 * raised out of the way (it would set the rate of a backlog past it).
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
    /* The receive budget is a policy limit (100,000 events a minute per sender by
     * default) that would set the rate of any backlog past it: the drain measures the
     * engine and the store, so B's budget is out of the way. */
    const char *extra_b[] = {"--recv-budget-events", "100000000", "--recv-budget-bytes",
                             "100000000000", NULL};
    bd *a = bd_new("drainA", extra_a), *b = bd_new("drainB", extra_b);
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
    const char *dump = getenv("BENCH_LAT_DUMP");
    if (dump && *dump) { /* every sample in the order taken, one per line (microseconds) */
        char name[4096];
        snprintf(name, sizeof name, "%s.%d", dump, run);
        FILE *f = fopen(name, "w");
        for (int i = 0; f && i < got; i++)
            fprintf(f, "%d %.0f\n", i, lat[i]);
        if (f) fclose(f);
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

/* ---- federation scale (peer farm) ----------------------------------------------------------- */

/* Threads of a process (/proc/PID/status), -1 when unreadable. */
static long proc_threads(pid_t pid)
{
    char path[64], line[256];
    long n = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "Threads:", 8)) n = strtol(line + 8, NULL, 10);
    fclose(f);
    return n;
}

/* utime + stime of /proc/PID/stat (or /proc/PID/task/TID/stat), in seconds; -1 when
 * unreadable. */
static double proc_cpu_s(const char *stat_path)
{
    char buf[1024];
    FILE *f = fopen(stat_path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command may hold spaces */
    unsigned long long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double pid_cpu_s(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    return proc_cpu_s(path);
}

/* postboxd's own pid: `pid` itself, or under BENCH_WRAP its child named postboxd. */
static pid_t postboxd_pid(pid_t pid)
{
    char path[64], comm[64] = "";
    snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
    FILE *f = fopen(path, "r");
    if (f) {
        if (!fgets(comm, sizeof comm, f)) comm[0] = '\0';
        fclose(f);
    }
    if (!O.wrap || !strncmp(comm, "postboxd", 8)) return pid;
    char cmd[128], line[32];
    snprintf(cmd, sizeof cmd, "pgrep -P %d -x postboxd", (int)pid);
    FILE *pg = popen(cmd, "r");
    pid_t found = pid;
    if (pg) {
        if (fgets(line, sizeof line, pg)) found = (pid_t)strtol(line, NULL, 10);
        pclose(pg);
    }
    return found;
}

/* CPU seconds of each thread of pid, up to max; returns the count (tids in tid[]). */
static size_t thread_cpu(pid_t pid, pid_t *tid, double *cpu, size_t max)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *dir = opendir(path);
    size_t n = 0;
    if (!dir) return 0;
    for (struct dirent *e; n < max && (e = readdir(dir));) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char sp[320];
        snprintf(sp, sizeof sp, "/proc/%d/task/%s/stat", (int)pid, e->d_name);
        double c = proc_cpu_s(sp);
        if (c < 0) continue;
        tid[n] = (pid_t)strtol(e->d_name, NULL, 10);
        cpu[n++] = c;
    }
    closedir(dir);
    return n;
}

/* The largest CPU time a thread of pid gained since the sample (tid0, cpu0, n0). */
static double busiest_thread_s(pid_t pid, const pid_t *tid0, const double *cpu0, size_t n0)
{
    pid_t tid[256];
    double cpu[256], best = 0;
    size_t n = thread_cpu(pid, tid, cpu, 256);
    for (size_t i = 0; i < n; i++) {
        double before = 0;
        for (size_t k = 0; k < n0; k++)
            if (tid0[k] == tid[i]) before = cpu0[k];
        if (cpu[i] - before > best) best = cpu[i] - before;
    }
    return best;
}

/* Submits userAddedToGuild{user, guild} for guilds [first, first + count) to `to`. */
static bool submit_guilds(hc *c, const char *to, long user, long first, long count)
{
    pb_buf b = PB_BUF_INIT;
    char item[160];
    snprintf(item, sizeof item, "{\"to\":\"%s\",\"events\":[", to);
    pb_buf_append_str(&b, item);
    for (long g = first; g < first + count; g++) {
        snprintf(item, sizeof item,
                 "%s{\"userAddedToGuild\":{\"userId\":\"%ld\",\"guildId\":\"%ld\"}}",
                 g > first ? "," : "", user, g + 1); /* guild IDs from 1: 0 is refused */
        pb_buf_append_str(&b, item);
    }
    pb_buf_append_str(&b, "]}");
    long st = hc_do(c, "POST", "/v1/outbox", (const char *)b.data, b.len, 120000);
    pb_buf_free(&b);
    if (st != 202)
        fprintf(stderr, "pbbench: submit to %s: HTTP %ld %.*s\n", to, st, (int)c->resp.len,
                c->resp.data ? (const char *)c->resp.data : "");
    return st == 202;
}

/* The farm's counter `name` from /summary, -1 when it does not answer. */
static long farm_counter(const pbt_farm *f, const char *name)
{
    json_t *j = pbt_farm_get(f, "/summary");
    long v = j ? (long)json_integer_value(json_object_get(j, name)) : -1;
    json_decref(j);
    return v;
}

/* Starts a peer farm of n IDs from O.farm_port; `bad` are further peerfarm options (may be
 * NULL). NULL (and a note) when it did not start. */
static pbt_farm *farm_start(long n, const char *const *bad)
{
    char cnt[24], port[24];
    snprintf(cnt, sizeof cnt, "%ld", n);
    snprintf(port, sizeof port, "%u", O.farm_port);
    const char *args[28] = {"--count", cnt, "--first-port", port, "--threads", "2"};
    int k = 6;
    if (g_tls_on) {
        args[k++] = "--tls-cert";
        args[k++] = g_ca.cert;
        args[k++] = "--tls-key";
        args[k++] = g_ca.key;
    }
    for (int i = 0; bad && bad[i] && k < 27; i++)
        args[k++] = bad[i];
    args[k] = NULL;
    pbt_farm *f = pbt_farm_start("bench-farm", args);
    if (!f || (long)f->count != n) {
        note("the peer farm (%s) did not start with %ld IDs", pbt_farm_program(), n);
        pbt_farm_free(f);
        return NULL;
    }
    return f;
}

/*
 * 7. fanout_1000: one sender S, O.scale_peers receivers in the peer farm, O.scale_events
 * events for each (userAddedToGuild{user = receiver index + 1, guild = 1, 2, ...}, so the
 * farm's record shows order and loss). Mixed run: 5 % of the receivers hung (accepting,
 * never answering), 5 % never accepting, 10 % refusing; baseline: all healthy. The events
 * are submitted in SCALE_ROUNDS calls per receiver, round-robin over the receivers, by
 * SCALE_SUBMITTERS admin clients at once. Measured: the time from the first submission
 * until the farm holds every healthy receiver's events; each healthy event's delay from
 * the return of its admin call to its arrival at the farm (p99; an event that never
 * arrived counts as later than any); S's peak thread count (sampled every 50 ms) and
 * VmHWM. The mixed run's waits end after O.scale_limit_s: the time is then a lower bound.
 */
struct fan_sub {
    hc c;
    pbt_farm *farm;
    long first, step; /* receivers first, first + step, ... */
    double *done_at;  /* [receiver * SCALE_ROUNDS + round]: when its admin call returned */
    bool ok;
};

static long fan_per_call(void)
{
    return O.scale_events / SCALE_ROUNDS;
}

static void *fan_sub_thread(void *arg)
{
    struct fan_sub *j = arg;
    long per = fan_per_call();
    j->ok = true;
    for (int r = 0; r < SCALE_ROUNDS && j->ok; r++) {
        long first = 1 + r * per;
        long count = r == SCALE_ROUNDS - 1 ? O.scale_events - r * per : per;
        for (long i = j->first; i < (long)j->farm->count && j->ok; i += j->step) {
            j->ok = submit_guilds(&j->c, j->farm->ids[i], i + 1, first, count);
            j->done_at[i * SCALE_ROUNDS + r] = now_s();
        }
    }
    return NULL;
}

struct fan_result {
    double time_ms, p99_ms;
    long threads, hwm_kib, rss_kib; /* sender: peak and at the end (connections kept) */
    long delivered, expected;
    long disorder, dups, foreign; /* anomalies in the farm's record, of which duplicates and
                                     events recorded at another receiver */
    bool timed_out;
    /* from the first submission until the farm held every healthy event (or the bound) */
    long pushes;         /* Pushes the farm answered (healthy IDs: one event each) */
    long conns;          /* connections the farm accepted meanwhile (kept ones: about P) */
    double window_s;     /* how long */
    double sender_cpu_s; /* postboxd's user + system CPU time meanwhile */
    double loop_cpu_s;   /* of which its busiest thread (the I/O loop) */
    double farm_cpu_s;   /* the peer farm's */
    double submit_s;     /* until the last admin submission returned */
    /* the all-healthy run only: libcurl's multi interface from one thread, alone, against
     * the same farm (pbbench_loadgen --multi-ports): what libcurl allows in this pattern */
    double curl_rps, curl_cpu_us, curl_farm_pct;
    /* with g_fan_cold: libcurl alone in this run's own pattern (P receivers x E Pushes,
     * cold, over TLS when the run was), after the sender stopped */
    double cold_rps, cold_cpu_us, cold_farm_pct;
};
static bool g_fan_cold; /* fanout_scale_run measures libcurl alone cold after its run */

/* Runs pbbench_loadgen --multi-ports against the farm's n IDs, one Push of one event to
 * each in flight, over TLS when g_tls_on: timed (per_port 0: O.http_seconds, every
 * connection made first) or cold (per_port K: K Pushes to each, first contacts inside the
 * clock, the fan-out scenario's own pattern). Fills *rps, *cpu_us (per request) and
 * *farm_pct; false when the IDs' ports are not consecutive or it failed. */
static bool curl_alone(const pbt_farm *f, long n, long per_port, double *rps, double *cpu_us,
                       double *farm_pct)
{
    unsigned first = 0;
    for (long i = 0; i < n; i++) {
        const char *c = strrchr(f->ids[i], ':');
        unsigned port = c ? (unsigned)atoi(c + 1) : 0;
        if (i == 0) first = port;
        if (!port || port != first + (unsigned)i) return false;
    }
    pb_event ev = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 1, .guild_id = 777};
    pb_buf body = PB_BUF_INIT;
    char *dir = pbt_tmpdir("bench-curl"), file[512], args[4096], extra[1400] = "";
    snprintf(file, sizeof file, "%s/push.bin", dir);
    bool ok = false;
    FILE *fp = NULL;
    if (pb_wire_push_encode(&ev, NULL, 1, 0, &body) != PB_OK || !(fp = fopen(file, "wb"))) goto out;
    ok = fwrite(body.data, 1, body.len, fp) == body.len;
    if (fclose(fp) != 0 || !ok) {
        ok = false;
        goto out;
    }
    ok = false;
    if (per_port > 0)
        snprintf(extra, sizeof extra, " --handles fresh --per-port %ld%s%s%s", per_port,
                 g_tls_on ? " --cainfo '" : "", g_tls_on ? g_ca.ca : "", g_tls_on ? "'" : "");
    snprintf(args, sizeof args,
             "'%s' --url %s://127.0.0.1/protocol.sync.v1.PostboxService/Push "
             "--body-file '%s' --seconds %.2f --multi-ports %u:%ld%s",
             PB_BENCH_LOADGEN, g_tls_on ? "https" : "http", file, O.http_seconds, first, n, extra);
    double fcpu0 = pid_cpu_s(f->pid), t0 = now_s();
    FILE *p = popen(args, "r");
    if (!p) goto out;
    char line[512] = "";
    if (!fgets(line, sizeof line, p)) line[0] = '\0';
    int rc = pclose(p);
    double wall = now_s() - t0;
    unsigned long long nreq = 0;
    long errors = 0;
    double secs = 0;
    unsigned p50, p99, max;
    if (sscanf(line,
               "requests %llu errors %ld seconds %lf rps %lf p50_us %u p99_us %u max_us %u "
               "cpu_us_per_req %lf",
               &nreq, &errors, &secs, rps, &p50, &p99, &max, cpu_us) != 8 ||
        rc != 0 || errors) {
        fprintf(stderr, "pbbench: loadgen --multi-ports failed (rc %d): %s", rc, line);
        goto out;
    }
    /* the farm's CPU over the whole call (connections and warm-up included): a bound */
    *farm_pct = wall > 0 ? 100 * (pid_cpu_s(f->pid) - fcpu0) / wall : 0;
    ok = true;
out:
    pb_buf_free(&body);
    pbt_rmrf(dir);
    free(dir);
    return ok;
}

static bool fanout_scale_run(bool mixed, int run, struct fan_result *res)
{
    static const char *const bad[] = {"--hung", "%20=8", "--unaccepted", "%20=18", "--refusing",
                                      "%10=9",  NULL};
    memset(res, 0, sizeof *res);
    long P = O.scale_peers, E = O.scale_events;
    pbt_farm *f = farm_start(P, mixed ? bad : NULL);
    bd *s = bd_new("scaleS", NULL);
    s->nofile = true;
    bool ok = false;
    double *done_at = calloc((size_t)P * SCALE_ROUNDS, sizeof *done_at);
    double *lat = calloc((size_t)P * (size_t)E, sizeof *lat);
    bool *seen = calloc((size_t)E, sizeof *seen);
    struct fan_sub subs[SCALE_SUBMITTERS];
    pthread_t th[SCALE_SUBMITTERS];
    int started = 0;
    if (!done_at || !lat || !seen) abort();
    if (!f || !bd_start_all(&s, 1)) goto out;
    long healthy = 0;
    for (long i = 0; i < P; i++)
        healthy += !strcmp(f->modes[i], "ok");
    /* Warm-up: one event to receiver 0 (healthy in both runs), guild 0, not counted; with
     * BENCH_FAN_WARM=all to every healthy receiver (a diagnostic: their first contacts,
     * TLS handshakes included, then fall outside the measured window). */
    const char *warm_env = getenv("BENCH_FAN_WARM");
    bool warm_all = warm_env && !strcmp(warm_env, "all");
    long warm = 0;
    for (long i = 0; i < (warm_all ? P : 1); i++) {
        if (strcmp(f->modes[i], "ok") != 0) continue;
        if (!submit_guilds(&s->adm, f->ids[i], i + 1, 0, 1)) goto out;
        warm++;
    }
    for (double dl = now_s() + 30; farm_counter(f, "pushes") < warm; sleep_ms(10)) {
        if (now_s() > dl) {
            fprintf(stderr, "pbbench: fanout_1000 warm-up event did not arrive\n");
            goto out;
        }
    }
    pid_t spid = postboxd_pid(s->d->pid);
    static pid_t tid0[256];
    static double tcpu0[256];
    size_t nt0 = thread_cpu(spid, tid0, tcpu0, 256);
    double scpu0 = pid_cpu_s(spid), fcpu0 = pid_cpu_s(f->pid);
    long pushes0 = farm_counter(f, "pushes"), conns0 = farm_counter(f, "connections");
    double t0 = now_s(), deadline = t0 + O.scale_limit_s;
    for (int k = 0; k < SCALE_SUBMITTERS; k++) {
        subs[k] =
            (struct fan_sub){.farm = f, .first = k, .step = SCALE_SUBMITTERS, .done_at = done_at};
        hc_init(&subs[k].c, s->d->admin_port);
        pthread_create(&th[k], NULL, fan_sub_thread, &subs[k]);
        started++;
    }
    res->expected = healthy * E;
    long got = 0;
    for (;;) {
        long t = proc_threads(s->d->pid);
        if (t > res->threads) res->threads = t;
        got = farm_counter(f, "pushes") - warm;
        if (got >= res->expected) break;
        if (now_s() >= deadline) {
            res->timed_out = true;
            break;
        }
        sleep_ms(50);
    }
    double t_end = now_s();
    res->window_s = t_end - t0;
    res->sender_cpu_s = pid_cpu_s(spid) - scpu0;
    res->loop_cpu_s = busiest_thread_s(spid, tid0, tcpu0, nt0);
    res->farm_cpu_s = pid_cpu_s(f->pid) - fcpu0;
    res->pushes = farm_counter(f, "pushes") - pushes0;
    res->conns = farm_counter(f, "connections") - conns0;
    bool subs_ok = true;
    for (int k = 0; k < started; k++) {
        pthread_join(th[k], NULL);
        subs_ok = subs_ok && subs[k].ok;
        hc_free(&subs[k].c);
    }
    started = 0;
    for (long i = 0; i < P * SCALE_ROUNDS; i++)
        if (done_at[i] - t0 > res->submit_s) res->submit_s = done_at[i] - t0;
    proc_rss(postboxd_pid(s->d->pid), &res->hwm_kib, &res->rss_kib);
    if (!subs_ok) goto out;
    /* Per healthy receiver: its events in order, and each one's delay. */
    json_t *st = pbt_farm_get(f, "/stats"), *ids = json_object_get(st, "ids"), *id;
    size_t i;
    size_t nlat = 0;
    double last = t0;
    long per = fan_per_call();
    json_array_foreach(ids, i, id)
    {
        if (strcmp(json_string_value(json_object_get(id, "mode")), "ok") != 0) continue;
        json_t *evs = json_object_get(id, "events"), *e;
        size_t k;
        long next = 1;
        memset(seen, 0, (size_t)E);
        json_array_foreach(evs, k, e)
        {
            long user = (long)json_integer_value(json_array_get(e, 3));
            /* submit_guilds sends guild g + 1 for event g (g from 1; the warm-up is g 0) */
            long guild = (long)json_integer_value(json_array_get(e, 4)) - 1;
            if (guild == 0) continue; /* the warm-up */
            double t = (double)json_integer_value(json_array_get(e, 0)) / 1e6;
            bool dup = guild >= 1 && guild <= E && seen[guild - 1];
            if (guild >= 1 && guild <= E) seen[guild - 1] = true;
            const char *kind = user != (long)i + 1 ? "for another receiver"
                               : dup               ? "a duplicate"
                               : guild != next     ? "out of order"
                                                   : NULL;
            if (kind) {
                if (!res->disorder)
                    note("fanout_1000 run %d (%s): first anomaly at %s: its event %zu (user %ld, "
                         "guild %ld, postbox_seq %lld) is %s; expected user %ld guild %ld",
                         run, mixed ? "mixed" : "healthy",
                         json_string_value(json_object_get(id, "id")), k, user, guild,
                         (long long)json_integer_value(json_array_get(e, 1)), kind, (long)i + 1,
                         next);
                res->disorder++;
                res->dups += dup;
                res->foreign += user != (long)i + 1;
            }
            next = guild + 1;
            if (guild < 1 || guild > E || nlat >= (size_t)P * (size_t)E) continue;
            long r = (guild - 1) / per;
            if (r >= SCALE_ROUNDS) r = SCALE_ROUNDS - 1;
            double d = t - done_at[(long)i * SCALE_ROUNDS + r];
            lat[nlat++] = d > 0 ? d * 1e3 : 0;
            if (t > last) last = t;
        }
    }
    json_decref(st);
    res->delivered = (long)nlat;
    bool all = (long)nlat >= res->expected;
    res->time_ms = ((all ? last : t_end) - t0) * 1e3;
    qsort(lat, nlat, sizeof *lat, cmp_double);
    size_t idx = res->expected > 0 ? (size_t)((double)(res->expected - 1) * 0.99) : 0;
    /* Events that never arrived are later than any: past them, the wait is a lower bound. */
    res->p99_ms = idx < nlat ? lat[idx] : (t_end - t0) * 1e3;
    if (!all) res->timed_out = true;
    printf("  run %d fanout_1000 %s: %ld of %ld healthy events (%ld receivers x %ld) in %.1f "
           "s%s; latency p99 %.0f ms%s; sender %ld threads, VmHWM %.1f MiB, VmRSS at the end %.1f "
           "MiB%s\n",
           run, mixed ? "mixed  " : "healthy", res->delivered, res->expected, healthy, E,
           res->time_ms / 1e3, all ? "" : " TIMED OUT (a lower bound)", res->p99_ms,
           idx < nlat ? "" : " (a lower bound)", res->threads, (double)res->hwm_kib / 1024,
           (double)res->rss_kib / 1024, res->disorder ? " OUT OF ORDER OR DUPLICATED" : "");
    printf("  run %d fanout_1000 %s: %ld Pushes in %.1f s = %.0f Pushes/s (submissions done "
           "after %.1f s); sender CPU %.1f s (%.0f us per Push, %.0f %% of a core; busiest thread "
           "%.0f %%), peer farm CPU %.0f %% of a core, %ld connections accepted\n",
           run, mixed ? "mixed  " : "healthy", res->pushes, res->window_s,
           res->window_s > 0 ? (double)res->pushes / res->window_s : 0, res->submit_s,
           res->sender_cpu_s, res->pushes > 0 ? res->sender_cpu_s * 1e6 / (double)res->pushes : 0,
           res->window_s > 0 ? 100 * res->sender_cpu_s / res->window_s : 0,
           res->window_s > 0 ? 100 * res->loop_cpu_s / res->window_s : 0,
           res->window_s > 0 ? 100 * res->farm_cpu_s / res->window_s : 0, res->conns);
    if (res->disorder)
        note("fanout_1000 run %d (%s): %ld anomalies in the receivers' record: %ld duplicates, "
             "%ld at another receiver, the rest out of order",
             run, mixed ? "mixed" : "healthy", res->disorder, res->dups, res->foreign);
    ok = true;
    if (!mixed && !res->timed_out && g_fan_cold) { /* the sender stopped, the same farm,
                                                     libcurl alone in the same pattern */
        bd_stop(s);
        if (curl_alone(f, P, E, &res->cold_rps, &res->cold_cpu_us, &res->cold_farm_pct))
            printf("  run %d fanout_1000 healthy%s: libcurl multi alone, one thread, the same "
                   "pattern (%ld receivers x %ld Pushes, first contacts in the clock): %.0f "
                   "Pushes/s, %.1f us CPU per Push, peer farm %.0f %% of a core\n",
                   run, g_tls_on ? " TLS" : "", P, E, res->cold_rps, res->cold_cpu_us,
                   res->cold_farm_pct);
        else
            note("fanout_1000 run %d: libcurl alone (cold) was not measured (see stderr, or the "
                 "farm's ports are not consecutive)",
                 run);
    } else if (!mixed && !res->timed_out && !g_tls_on) { /* the sender stopped, the same farm,
                                                            libcurl alone (plain HTTP) */
        bd_stop(s);
        if (curl_alone(f, P, 0, &res->curl_rps, &res->curl_cpu_us, &res->curl_farm_pct))
            printf("  run %d fanout_1000 healthy: libcurl multi alone, one thread, the same %ld "
                   "receivers: %.0f Pushes/s, %.1f us CPU per Push, peer farm %.0f %% of a "
                   "core\n",
                   run, P, res->curl_rps, res->curl_cpu_us, res->curl_farm_pct);
        else
            note("fanout_1000 run %d: the libcurl multi ceiling was not measured (see stderr, "
                 "or the farm's ports are not consecutive)",
                 run);
    }
out:
    for (int k = 0; k < started; k++) {
        pthread_join(th[k], NULL);
        hc_free(&subs[k].c);
    }
    free(done_at);
    free(lat);
    free(seen);
    bd_free(s);
    pbt_farm_free(f);
    return ok;
}

static void scenario_fanout_scale(int run)
{
    struct fan_result base, mixed;
    if (!fanout_scale_run(false, run, &base)) {
        note("fanout_1000 (all healthy), run %d: failed before measuring (see stderr)", run);
        return;
    }
    m_add(&R.sc_time_base, base.time_ms);
    m_add(&R.sc_p99_base, base.p99_ms);
    if (base.window_s > 0 && base.pushes > 0) {
        m_add(&R.sc_pushes, (double)base.pushes / base.window_s);
        m_add(&R.sc_cpu_push, base.sender_cpu_s * 1e6 / (double)base.pushes);
        m_add(&R.sc_sender_cpu, 100 * base.sender_cpu_s / base.window_s);
        m_add(&R.sc_loop_cpu, 100 * base.loop_cpu_s / base.window_s);
        m_add(&R.sc_farm_cpu, 100 * base.farm_cpu_s / base.window_s);
    }
    if (base.curl_rps > 0) {
        m_add(&R.sc_curl, base.curl_rps);
        m_add(&R.sc_curl_cpu, base.curl_cpu_us);
    }
    if (base.timed_out) R.sc_pushes.timed_out = true;
    if (!env_long("BENCH_SCALE_MIXED", 1)) return; /* profiling the healthy run alone */
    if (base.timed_out) R.sc_time_base.timed_out = R.sc_p99_base.timed_out = true;
    if (!fanout_scale_run(true, run, &mixed)) {
        note("fanout_1000 (mixed), run %d: failed before measuring (see stderr)", run);
        return;
    }
    m_add(&R.sc_time_mixed, mixed.time_ms);
    m_add(&R.sc_p99_mixed, mixed.p99_ms);
    m_add(&R.sc_threads, (double)mixed.threads);
    m_add(&R.sc_rss, (double)mixed.hwm_kib);
    if (mixed.timed_out) R.sc_time_mixed.timed_out = R.sc_p99_mixed.timed_out = true;
    printf("  run %d fanout_1000: time x%.2f of all-healthy (target <= 1.5), p99 x%.2f (target "
           "<= 2), %ld threads (target <= 32), %.1f MiB (target <= 128)\n",
           run, mixed.time_ms / base.time_ms, mixed.p99_ms / (base.p99_ms > 0 ? base.p99_ms : 1),
           mixed.threads, (double)mixed.hwm_kib / 1024);
}

/*
 * 8. startup_10k: server X knows O.startup_peers peers (the farm's IDs, 5 % hung and 5 %
 * never accepting), written into its stopped SQLite store with the store API (each with
 * its own key, as real servers have: pbt_farm_id_key; and a last contact spread over the
 * last hours, well within peer_idle_forget's default 7 days, so that every one is pulled),
 * and restarts. The pusher signs with its own ID's key. From the
 * fork of X: (a) a healthy peer pushes at once and again every 20 ms until X answers 200
 * (applied: the answer follows the commit; X's inbox is checked); the peer chosen is the
 * healthy one with the oldest last contact; (b) the farm's record of the first Pull of
 * every healthy ID gives the moment the last healthy start-up Pull was done. Both waits end
 * after O.scale_limit_s. X's RLIMIT_NOFILE is raised to DAEMON_NOFILE.
 */
struct st_push {
    const char *target, *as;
    const pb_keys *k;
    double deadline;
    double applied_at; /* now_s() of the 200, 0 = never */
    long attempts, last_status;
};

static void *st_push_thread(void *arg)
{
    struct st_push *j = arg;
    pb_client *cl = NULL;
    pb_client_opts co = {
        .plain_http = true, .connect_timeout_ms = 1000, .timeout_ms = 15000, .allow_private = true};
    pb_event ev = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 1, .guild_id = 777};
    pb_buf body = PB_BUF_INIT;
    if (pb_client_new(&co, &cl) != PB_OK || pb_wire_push_encode(&ev, NULL, 1, 0, &body) != PB_OK)
        goto out;
    while (now_s() < j->deadline) {
        char *authz = pb_auth_header_make(j->k, j->as, NULL, (uint64_t)time(NULL));
        pb_client_answer ans;
        pb_err err = pb_client_call(cl, j->target, "/protocol.sync.v1.PostboxService/Push", authz,
                                    body.data, body.len, &ans);
        free(authz);
        j->attempts++;
        j->last_status = ans.status;
        pb_client_answer_clear(&ans);
        if (err == PB_OK) {
            j->applied_at = now_s();
            break;
        }
        sleep_ms(20);
    }
out:
    pb_buf_free(&body);
    pb_client_free(cl);
    return NULL;
}

static long contact_age_s(long i, long n)
{
    return (i * 7919) % n; /* a permutation of 0..n-1 for n not a multiple of 7919 */
}

static void scenario_startup(int run)
{
    static const char *const bad[] = {"--hung", "%20=9", "--unaccepted", "%20=19", NULL};
    long N = O.startup_peers;
    pbt_farm *f = farm_start(N, bad);
    bd *x = bd_new("startX", NULL);
    x->nofile = true;
    pb_keys *k = NULL, *pk = NULL;
    pb_store *st = NULL;
    bool measured = false;
    if (!f || !bd_start_all(&x, 1)) goto out;
    bd_stop(x);
    if (pb_keys_load(f->key_path, &k) != PB_OK) goto out;
    char spec[600];
    snprintf(spec, sizeof spec, "sqlite:%s/postbox.db", x->d->dir);
    pb_store_opts so = {.sync = PB_SYNC_OFF};
    if (pb_store_open(spec, &so, &st) != PB_OK) goto out;
    int64_t now = (int64_t)time(NULL);
    long healthy = 0, pusher = -1;
    for (long i = 0; i < N; i++) {
        pb_keys *ik = NULL; /* each ID has its own key, as real servers have */
        pb_err kerr = pbt_farm_id_key(k, (size_t)i, &ik);
        if (kerr == PB_OK) kerr = pb_store_peer_key_set(st, f->ids[i], pb_keys_public(ik), now);
        pb_keys_free(ik);
        if (kerr != PB_OK ||
            pb_store_peer_touch(st, f->ids[i], now - 60 - contact_age_s(i, N)) != PB_OK) {
            fprintf(stderr, "pbbench: cannot write peer %s into %s\n", f->ids[i], spec);
            goto out;
        }
        if (strcmp(f->modes[i], "ok") != 0) continue;
        healthy++;
        if (pusher < 0 || contact_age_s(i, N) > contact_age_s(pusher, N)) pusher = i;
    }
    pb_store_close(st);
    st = NULL;
    if (pbt_farm_id_key(k, (size_t)pusher, &pk) != PB_OK) goto out;

    double t0 = now_s(), deadline = t0 + O.scale_limit_s;
    struct st_push pj = {
        .target = x->d->server_id, .as = f->ids[pusher], .k = pk, .deadline = deadline};
    bd_spawn(x);
    pthread_t th;
    pthread_create(&th, NULL, st_push_thread, &pj);
    long pulled = 0, threads = 0;
    bool all_pulled = false;
    while (now_s() < deadline) {
        long t = proc_threads(x->d->pid);
        if (t > threads) threads = t;
        pulled = farm_counter(f, "ids_pulled");
        if (pulled >= healthy) {
            all_pulled = true;
            break;
        }
        sleep_ms(100);
    }
    double t_end = now_s();
    pthread_join(th, NULL);
    long hwm = -1, dummy;
    proc_rss(x->d->pid, &hwm, &dummy);
    int64_t last_pull_us = 0;
    pulled = 0;
    json_t *sj = pbt_farm_get(f, "/stats?events=0"), *id;
    size_t i;
    json_array_foreach(json_object_get(sj, "ids"), i, id)
    {
        if (strcmp(json_string_value(json_object_get(id, "mode")), "ok") != 0) continue;
        if (json_integer_value(json_object_get(id, "pulls")) < 1) continue;
        pulled++;
        int64_t t = json_integer_value(json_object_get(id, "first_pull_us"));
        if (t > last_pull_us) last_pull_us = t;
    }
    json_decref(sj);
    all_pulled = pulled >= healthy;
    double pulls_ms = ((all_pulled ? (double)last_pull_us / 1e6 : t_end) - t0) * 1e3;
    double push_ms = ((pj.applied_at > 0 ? pj.applied_at : t_end) - t0) * 1e3;
    int in_inbox = pj.applied_at > 0 ? inbox_has(&x->adm, 1) : 0;
    if (pj.applied_at > 0 && in_inbox != 1)
        note("startup_10k run %d: X answered the Push 200 but its inbox does not hold it", run);
    m_add(&R.st_push, push_ms);
    m_add(&R.st_pulls, pulls_ms);
    m_add(&R.st_threads, (double)threads);
    m_add(&R.st_rss, (double)hwm);
    if (pj.applied_at <= 0) R.st_push.timed_out = true;
    if (!all_pulled) R.st_pulls.timed_out = true;
    printf("  run %d startup_10k (%ld peers, %ld healthy): first Push from %s applied after "
           "%.2f s%s (%ld attempts, last HTTP %ld; target <= 2 s); %ld of %ld healthy "
           "start-up Pulls done after %.1f s%s (target <= 30 s); %ld threads, VmHWM %.1f MiB\n",
           run, N, healthy, f->ids[pusher], push_ms / 1e3,
           pj.applied_at > 0 ? "" : " NOT APPLIED (a lower bound)", pj.attempts, pj.last_status,
           pulled, healthy, pulls_ms / 1e3, all_pulled ? "" : " TIMED OUT (a lower bound)", threads,
           (double)hwm / 1024);
    measured = true;
out:
    if (!measured) note("startup_10k, run %d: failed before measuring (see stderr)", run);
    pb_store_close(st);
    pb_keys_free(k);
    pb_keys_free(pk);
    bd_free(x);
    pbt_farm_free(f);
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

/* "met", "MISSED", or "" (no target or no figure). A timed-out time or delay is a lower
 * bound: under its target it proves nothing ("timed out"). */
static const char *verdict_of(double v, const metric *res, const char *target, double limit,
                              bool lower_is_better)
{
    if (isnan(v) || !target) return "";
    if (lower_is_better ? v > limit : v < limit) return "MISSED";
    return lower_is_better && res->timed_out ? "timed out" : "met";
}

/* ---- field patterns (issue 20) --------------------------------------------------------- */

/* Runs pbbench_loadgen with `args` (after --url URL --conns N --seconds S); false when it
 * failed or any request did. */
static bool loadgen_ex(const char *url, int conns, double secs, const char *args,
                       struct load_result *r)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' --url '%s' --conns %d --seconds %.2f %s", PB_BENCH_LOADGEN, url,
             conns, secs, args);
    FILE *p = popen(cmd, "r");
    if (!p) return false;
    char line[512] = "";
    if (!fgets(line, sizeof line, p)) line[0] = '\0';
    int rc = pclose(p);
    unsigned long long n = 0;
    long errors = 0;
    double s = 0;
    unsigned p50 = 0, p99 = 0, max = 0;
    if (sscanf(line, "requests %llu errors %ld seconds %lf rps %lf p50_us %u p99_us %u max_us %u",
               &n, &errors, &s, &r->rps, &p50, &p99, &max) != 7 ||
        rc != 0 || errors) {
        fprintf(stderr, "pbbench: loadgen failed (rc %d): %s", rc, line);
        return false;
    }
    r->p50_us = p50;
    r->p99_us = p99;
    r->max_us = max;
    return true;
}

/* A pbbench_delayproxy on a free port of 127.0.0.1 forwarding to target with delay_ms each
 * way; its port in c->port once it listens. */
static bool start_delayproxy(struct child *c, uint16_t target, int delay_ms)
{
    memset(c, 0, sizeof *c);
    c->port = pbt_free_port();
    char t[16], d[16], pt[16];
    snprintf(t, sizeof t, "%u", target);
    snprintf(d, sizeof d, "%d", delay_ms);
    snprintf(pt, sizeof pt, "%u", c->port);
    int fds[2];
    if (pipe(fds) != 0) return false;
    fflush(NULL);
    c->pid = fork();
    if (c->pid < 0) abort();
    if (c->pid == 0) {
        close(fds[0]);
        dup2(fds[1], 1);
        execl(PB_BENCH_DELAYPROXY, PB_BENCH_DELAYPROXY, "--target", t, "--delay-ms", d, "--port",
              pt, (char *)0);
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    char line[64] = "";
    bool ok = f && fgets(line, sizeof line, f) && !strncmp(line, "port ", 5);
    if (f) fclose(f);
    if (!ok) fprintf(stderr, "pbbench: the delay proxy did not start\n");
    return ok;
}

/* 10. submit_concurrent: SUBC_CONNS keep-alive admin connections each submitting one new
 * event per call to A (FULL), whose one peer B is healthy; against the null server driven
 * by the same client with a body of the same size. */
static void scenario_submit_concurrent(int run)
{
    const char *extra[] = {"--sync", "full", NULL};
    bd *a = bd_new("subcA", extra), *b = bd_new("subcB", extra);
    bd *both[] = {a, b};
    struct child null = {0};
    bool measured = false;
    if (!bd_start_all(both, 2) || !warm_up(a, b, 1, 1)) goto out;
    char tpl[512], args[1024], url[128];
    snprintf(tpl, sizeof tpl,
             "{\"to\":\"%s\",\"event\":{\"userInvited\":{\"userId\":\"%%N\",\"inviterId\":\"7\","
             "\"inviteId\":\"subc-%%N\"}}}",
             b->d->server_id);
    snprintf(args, sizeof args, "--header 'Content-Type: application/json' --template '%s'", tpl);
    snprintf(url, sizeof url, "http://127.0.0.1:%u/v1/outbox", a->d->admin_port);
    struct load_result r, rn;
    bool ok = loadgen_ex(url, SUBC_CONNS, O.http_seconds, args, &r);
    if (ok && start_httpnull(&null)) {
        snprintf(url, sizeof url, "http://127.0.0.1:%u/", null.port);
        if (loadgen_ex(url, SUBC_CONNS, O.http_seconds, args, &rn)) {
            m_add(&R.subc_null_rps, rn.rps);
            m_add(&R.subc_null_p99, rn.p99_us);
        }
    }
    if (!ok) goto out;
    m_add(&R.subc_rps, r.rps);
    m_add(&R.subc_p99, r.p99_us);
    printf("  run %d submit_concurrent: %.0f submissions/s, p50 %.0f us, p99 %.0f us (null "
           "server: %.0f req/s, p99 %.0f us)\n",
           run, r.rps, r.p50_us, r.p99_us, m_median(&R.subc_null_rps), m_median(&R.subc_null_p99));
    measured = true;
out:
    if (!measured) note("submit_concurrent, run %d: failed before measuring (see stderr)", run);
    child_stop(&null);
    bd_free(a);
    bd_free(b);
}

/* 11. pair_rtt: one pair, FULL, each daemon's server ID the address of a delay proxy in
 * front of it (every byte between them delayed RTT/2 each way): O.rtt_events events in
 * batches of 1000, then RTT_LAT_SAMPLES single events timed one after the other. */
static void scenario_pair_rtt(int i, int run, metric *rate, metric *p99)
{
    const char *extra[] = {"--sync", "full", NULL};
    bd *a = bd_new("rttA", extra), *b = bd_new("rttB", extra);
    bd *both[] = {a, b};
    struct child px[2] = {{0}, {0}};
    bool measured = false;
    bd *behind[2] = {a, b};
    for (int k = 0; k < 2; k++) {
        if (!start_delayproxy(&px[k], behind[k]->d->port, RTT_MS[i] / 2)) goto out;
        pbt_daemon *d = behind[k]->d;
        snprintf(d->server_id, sizeof d->server_id, "127.0.0.1:%u", px[k].port);
        d->args[d->nargs++] = strdup("--server-id");
        d->args[d->nargs++] = strdup(d->server_id);
    }
    /* started one by one: a port taken meanwhile would need a new server ID too */
    if (!bd_start(a) || !bd_start(b) || !warm_up(a, b, 1, 1)) goto out;
    (void)both;
    long n = O.rtt_events;
    double t0 = now_s();
    if (!submit(&a->adm, b->d->server_id, 1, 1, n, 1000)) goto out;
    bool done = wait_inbox(&b->adm, n + 1, deadline_from_now());
    double dt = now_s() - t0;
    long got = done ? n : inbox_count(&b->adm) - 1;
    if (!done) rate->timed_out = true;
    m_add(rate, (double)got / dt);
    double lat[RTT_LAT_SAMPLES];
    int nl = 0;
    for (int k = 0; done && k < RTT_LAT_SAMPLES; k++) {
        double t1 = now_s();
        if (!submit(&a->adm, b->d->server_id, 2, k, 1, 1) ||
            !wait_inbox(&b->adm, n + 2 + k, now_s() + 30))
            break;
        lat[nl++] = (now_s() - t1) * 1e3;
    }
    qsort(lat, (size_t)nl, sizeof lat[0], cmp_double);
    if (nl) m_add(p99, lat[(size_t)((nl - 1) * 0.99)]);
    printf("  run %d pair_rtt%s %3d ms: %ld events in %.2f s = %.0f events/s; single events: p50 "
           "%.1f ms, p99 %.1f ms (%d samples)%s\n",
           run, g_tls_on ? " TLS" : "", RTT_MS[i], got, dt, (double)got / dt,
           nl ? lat[(nl - 1) / 2] : -1.0, nl ? lat[(size_t)((nl - 1) * 0.99)] : -1.0, nl,
           done ? "" : " TIMED OUT");
    measured = true;
out:
    if (!measured)
        note("pair_rtt %d ms, run %d: failed before measuring (see stderr)", RTT_MS[i], run);
    bd_free(a);
    bd_free(b);
    child_stop(&px[0]);
    child_stop(&px[1]);
}

/* ---- TLS (issue 20 item 4) ----------------------------------------------------------------- */

/* The test CA (P-256, 2 days) and one server certificate for 127.0.0.1 (IP SAN) signed by
 * it, made with the openssl CLI once per bench run in a temporary directory; false (and a
 * note) when openssl failed. The same certificate serves every daemon and the farm: all
 * listen on 127.0.0.1. */
static bool make_test_ca(void)
{
    if (g_ca.made || g_ca.failed) return g_ca.made;
    g_ca.dir = pbt_tmpdir("bench-ca");
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && ( "
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
             "-subj /CN=postbox-bench-ca -keyout ca.key -out ca.pem && "
             "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 "
             "-keyout server.key -out server.csr && "
             "printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext.cnf && "
             "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
             "-extfile ext.cnf -out server.pem ) >openssl.log 2>&1",
             g_ca.dir);
    if (system(cmd) != 0) {
        note("TLS scenarios skipped: the openssl CLI could not make the test CA (see "
             "%s/openssl.log)",
             g_ca.dir);
        g_ca.failed = true;
        return false;
    }
    snprintf(g_ca.ca, sizeof g_ca.ca, "%s/ca.pem", g_ca.dir);
    snprintf(g_ca.cert, sizeof g_ca.cert, "%s/server.pem", g_ca.dir);
    snprintf(g_ca.key, sizeof g_ca.key, "%s/server.key", g_ca.dir);
    g_ca.made = true;
    return true;
}

/* 12. pair_tls: one pair FULL (as 1.), plain HTTP and TLS side by side; odd runs plain
 * first, even runs TLS first. */
static void scenario_pair_tls(int run)
{
    if (!make_test_ca()) return;
    for (int k = 0; k < 2; k++) {
        int tls = (k + run + 1) % 2; /* run 1: plain first */
        g_tls_on = tls;
        scenario_pair("full", &R.tls_pair[tls], run, false, O.pair_events);
    }
    g_tls_on = false;
}

/* 12. pair_rtt_tls: pair_rtt at 100 ms RTT (the delay proxy relays TLS unchanged: it is
 * TCP-level), plain HTTP and TLS side by side. */
static void scenario_pair_rtt_tls(int run)
{
    if (!make_test_ca()) return;
    for (int k = 0; k < 2; k++) {
        int tls = (k + run + 1) % 2;
        g_tls_on = tls;
        scenario_pair_rtt(2, run, &R.tls_rtt[tls], &R.tls_rtt_p99[tls]);
    }
    g_tls_on = false;
}

/* 12. fanout_1000_tls: fanout_1000's all-healthy run (one sender, the farm's receivers),
 * plain HTTP and TLS side by side: healthy events delivered per second, latency p99. */
static void scenario_fanout_tls(int run)
{
    if (!make_test_ca()) return;
    g_fan_cold = true;
    for (int k = 0; k < 2; k++) {
        int tls = (k + run + 1) % 2;
        g_tls_on = tls;
        struct fan_result res;
        if (!fanout_scale_run(false, run, &res)) {
            note("fanout_1000_tls (%s), run %d: failed before measuring (see stderr)",
                 tls ? "TLS" : "plain HTTP", run);
            continue;
        }
        double rate = res.time_ms > 0 ? (double)res.delivered / (res.time_ms / 1e3) : 0;
        m_add(&R.tls_fan[tls], rate);
        m_add(&R.tls_fan_p99[tls], res.p99_ms);
        if (res.cold_rps > 0) m_add(&R.tls_fan_curl[tls], res.cold_rps);
        if (res.delivered > 0)
            m_add(&R.tls_fan_cpu[tls],
                  (res.sender_cpu_s + res.farm_cpu_s) * 1e6 / (double)res.delivered);
        if (res.timed_out) R.tls_fan[tls].timed_out = R.tls_fan_p99[tls].timed_out = true;
        printf("  run %d fanout_1000_tls, %s: %.0f events/s, latency p99 %.0f ms; CPU: sender "
               "%.1f s (%.0f us per event), farm %.1f s\n",
               run, tls ? "TLS" : "plain HTTP", rate, res.p99_ms, res.sender_cpu_s,
               res.delivered ? res.sender_cpu_s * 1e6 / (double)res.delivered : 0, res.farm_cpu_s);
    }
    g_tls_on = g_fan_cold = false;
}

/* One result line; `c` is the ceiling as printed, ceil its value (0: none) for the ratio. */
static void row_text(const char *name, const metric *res, double rscale, const char *runit,
                     const char *c, double ceil, const char *target, double want,
                     bool lower_is_better)
{
    char a[128];
    fmt_metric(a, sizeof a, res, rscale, runit);
    double ratio = res->n && ceil > 0 ? m_median(res) / ceil : NAN;
    const char *verdict = verdict_of(ratio, res, target, want, lower_is_better);
    char r[32];
    if (!isnan(ratio))
        snprintf(r, sizeof r, "%.3f", ratio);
    else
        snprintf(r, sizeof r, "-");
    printf("%-30s %-36s %-34s %-7s %-10s %s\n", name, a, c, r, target ? target : "", verdict);
    fprintf(g_md, "| %s | %s | %s | %s | %s | %s |\n", name, a, c, r, target ? target : "",
            verdict);
}

static void row(const char *name, const metric *res, double rscale, const char *runit,
                const char *ceil_name, double ceil, const char *target, double want,
                bool lower_is_better)
{
    char c[96];
    if (ceil > 0)
        snprintf(c, sizeof c, "%s %.0f", ceil_name, ceil);
    else
        snprintf(c, sizeof c, "%s", ceil_name ? ceil_name : "");
    row_text(name, res, rscale, runit, c, ceil, target, want, lower_is_better);
}

/* A result against a ceiling that is another figure of this run (median, scaled). */
static void row_vs(const char *name, const metric *res, const metric *ceil, double scale,
                   const char *unit, const char *ceil_name, const char *target, double want,
                   bool lower_is_better)
{
    char c[128], v[96];
    fmt_metric(v, sizeof v, ceil, scale, unit);
    snprintf(c, sizeof c, "%s %s", ceil_name, ceil->n ? v : "n/a");
    row_text(name, res, scale, unit, c, ceil->n ? m_median(ceil) : 0, target, want,
             lower_is_better);
}

/* A result against an absolute target: median * scale compared with limit. */
static void row_abs(const char *name, const metric *res, double scale, const char *unit,
                    const char *target, double limit, bool lower_is_better)
{
    char a[128];
    fmt_metric(a, sizeof a, res, scale, unit);
    double v = res->n ? m_median(res) * scale : NAN;
    const char *verdict = verdict_of(v, res, target, limit, lower_is_better);
    printf("%-30s %-36s %-34s %-7s %-10s %s\n", name, a, "", "-", target ? target : "", verdict);
    fprintf(g_md, "| %s | %s | | - | %s | %s |\n", name, a, target ? target : "", verdict);
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
        "- sizes: pair %ld events, pair_rtt %ld events, 16->1 and 1->16 %ld events, drain %ld "
        "events, latency %d "
        "samples; PushRequest body %zu bytes (userInvited events to %ld users)\n"
        "- federation scale: fanout_1000 %ld receivers x %ld events, startup_10k %ld known "
        "peers, pair_batch %ld events; their waits bounded at %d s; postboxd "
        "--allow-private-peers: %s\n"
        "- HTTP ceiling used for the ratios: %s\n"
        "- source: %s\n\n",
        stamp, u.sysname, u.release, sysconf(_SC_NPROCESSORS_ONLN), load_before, load_after, O.runs,
        O.quick ? "BENCH_QUICK smoke run: sizes scaled down, figures indicative only" : "full run",
        elapsed, O.pair_events, O.rtt_events, O.fan_events, O.drain_events, O.lat_samples, push_len,
        O.users, O.scale_peers, O.scale_events, O.startup_peers, O.batch_events, O.scale_limit_s,
        g_allow_private ? "passed" : "not supported, not passed",
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
    ceiling_row("write+fdatasync 100 B p50", &R.fsync_p50, 1, "us");
    ceiling_row("write+fdatasync 100 B p99", &R.fsync_p99, 1, "us");
    ceiling_row("two write+fdatasync in a row, p99", &R.fsync_two_p99, 1, "us");
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
    if (want("pair_full"))
        row("1. one pair, FULL", &R.pair_full, 1, "ev/s", cn, fmin, ">= 0.5", 0.5, false);
    if (want("pair_full_pg"))
        row("1. one pair, FULL, PostgreSQL", &R.pair_full_pg, 1, "ev/s", cn, fmin, NULL, 0, false);
    snprintf(cn, sizeof cn, "HTTP1 %s", hname);
    if (want("pair_normal"))
        row("1. one pair, NORMAL", &R.pair_normal, 1, "ev/s", cn, h1, ">= 0.4", 0.4, false);
    snprintf(cn, sizeof cn, "HTTP16 %s", hname);
    if (want("fanin"))
        row("2. 16 -> 1, FULL", &R.fanin, 1, "ev/s", cn, h16, ">= 0.25", 0.25, false);
    if (want("fanin_pg"))
        row("2. 16 -> 1, FULL, PostgreSQL", &R.fanin_pg, 1, "ev/s", cn, h16, NULL, 0, false);
    if (want("fanout")) row("3. 1 -> 16, FULL", &R.fanout, 1, "ev/s", cn, h16, NULL, 0, false);
    if (want("drain"))
        row("4. pull drain", &R.drain, 1, "ev/s", "SQLite insert FULL", sq, ">= 0.3", 0.3, false);
    snprintf(cn, sizeof cn, "HTTP1 p99 %s", hname);
    if (want("latency")) row("5. latency p50", &R.lat_p50, 1, "us", NULL, 0, NULL, 0, true);
    if (want("latency")) row("5. latency p99", &R.lat_p99, 1, "us", cn, h1p99, "<= 10", 10, true);
    if (want("latency")) {
        /* the floor of one delivery: a commit at each end and an HTTP exchange each way */
        double floor_us = fs > 0 && h1p99 > 0 ? 2 * (1e6 / fs) + 2 * h1p99 : 0;
        snprintf(cn, sizeof cn, "2 x fdatasync + 2 x HTTP1 p99 %s", hname);
        row("5. latency p99 vs floor", &R.lat_p99, 1, "us", cn, floor_us, "<= 2", 2, true);
        /* the same floor with the disk's own tail: the p99 of two commits one after the
         * other as this disk made them (the floor above takes the mean fdatasync) */
        double two = m_median(&R.fsync_two_p99);
        double tail_us = two > 0 && h1p99 > 0 ? two + 2 * h1p99 : 0;
        snprintf(cn, sizeof cn, "2 x fdatasync at p99 + 2 x HTTP1 p99 %s", hname);
        row("5. latency p99 vs disk tail", &R.lat_p99, 1, "us", cn, tail_us, NULL, 0, true);
    }
    if (want("latency")) row("5. latency max", &R.lat_max, 1, "us", NULL, 0, NULL, 0, true);
    if (O.nrss >= 2 && (want("drain") || want("memory"))) {
        char nm[64], cnm[64];
        snprintf(nm, sizeof nm, "4b. pull drain, %ld", O.rss_sizes[O.nrss - 1]);
        snprintf(cnm, sizeof cnm, "drain %ld", O.rss_sizes[0]);
        row_vs(nm, &R.rss_drain_rate[O.nrss - 1], &R.rss_drain_rate[0], 1, "ev/s", cnm, ">= 0.8",
               0.8, false);
    }
    if (want("fanout_1000")) {
        snprintf(cn, sizeof cn, "HTTP16 %s", hname);
        row("7. fanout_1000 all healthy", &R.sc_pushes, 1, "Pushes/s", cn, h16, ">= 0.5", 0.5,
            false);
        row_abs("7. healthy: sender CPU/Push", &R.sc_cpu_push, 1, "us", NULL, 0, true);
        row_abs("7. healthy: latency p99", &R.sc_p99_base, 1e-3, "s", NULL, 0, true);
        row_abs("7. healthy: sender CPU", &R.sc_sender_cpu, 1, "% core", NULL, 0, true);
        row_abs("7. healthy: sender I/O loop", &R.sc_loop_cpu, 1, "% core", NULL, 0, true);
        row_abs("7. healthy: peer farm CPU", &R.sc_farm_cpu, 1, "% core", NULL, 0, true);
        /* what libcurl (the HTTP client postbox must use) does alone in this pattern: the
         * same 1,000 receivers, one request in flight to each, from one thread */
        row_vs("7. healthy vs libcurl alone", &R.sc_pushes, &R.sc_curl, 1, "Pushes/s",
               "libcurl multi", NULL, 0, false);
        row_abs("7. libcurl alone: CPU/request", &R.sc_curl_cpu, 1, "us", NULL, 0, true);
        /* the same ratio as the target's, for the client alone: where the target stands
         * against what libcurl itself does in this pattern on this machine */
        if (R.sc_curl.n)
            row("7. libcurl alone vs HTTP16", &R.sc_curl, 1, "Pushes/s", cn, h16, NULL, 0, false);
        row_vs("7. fanout_1000 time", &R.sc_time_mixed, &R.sc_time_base, 1e-3, "s", "all healthy",
               "<= 1.5", 1.5, true);
        row_vs("7. fanout_1000 latency p99", &R.sc_p99_mixed, &R.sc_p99_base, 1e-3, "s",
               "all healthy", "<= 2", 2, true);
        row_abs("7. fanout_1000 sender threads", &R.sc_threads, 1, "", "<= 32", 32, true);
        row_abs("7. fanout_1000 sender RSS", &R.sc_rss, 1.0 / 1024, "MiB", "<= 128 MiB", 128, true);
    }
    if (want("startup_10k")) {
        row_abs("8. startup_10k first Push", &R.st_push, 1e-3, "s", "<= 2 s", 2, true);
        row_abs("8. startup_10k healthy Pulls", &R.st_pulls, 1e-3, "s", "<= 30 s", 30, true);
        row_abs("8. startup_10k threads", &R.st_threads, 1, "", NULL, 0, true);
        row_abs("8. startup_10k RSS", &R.st_rss, 1.0 / 1024, "MiB", NULL, 0, true);
    }
    if (want("pair_batch")) {
        snprintf(cn, sizeof cn, "HTTP1 %s", hname);
        row("9. pair_batch, FULL", &R.pair_batch, 1, "ev/s", cn, h1, ">= 3.0", 3.0, false);
    }
    if (want("submit_concurrent")) {
        row_vs("10. submit_concurrent, 64 conns", &R.subc_rps, &R.subc_null_rps, 1, "req/s",
               "null server, same client", ">= 0.3", 0.3, false);
        row_vs("10. submit_concurrent p99", &R.subc_p99, &R.subc_null_p99, 1, "us",
               "null server p99", "<= 5", 5, true);
    }
    if (want("pair_rtt")) {
        for (int i = 1; i < RTT_N; i++) {
            char nm[64], tg[32];
            snprintf(nm, sizeof nm, "11. pair_rtt %d ms RTT", RTT_MS[i]);
            double tgt = RTT_MS[i] <= 100 ? 0.5 : 0.3;
            snprintf(tg, sizeof tg, ">= %.1f", tgt);
            row_vs(nm, &R.rtt_rate[i], &R.rtt_rate[0], 1, "ev/s", "same pair, proxy at 0 ms", tg,
                   tgt, false);
        }
        for (int i = 1; i < RTT_N; i++) {
            char nm[64], tg[32];
            snprintf(nm, sizeof nm, "11. pair_rtt %d ms latency p99", RTT_MS[i]);
            snprintf(tg, sizeof tg, "<= %.0f ms", 1.1 * RTT_MS[i]);
            row_abs(nm, &R.rtt_lat_p99[i], 1, "ms", tg, 1.1 * RTT_MS[i], true);
        }
    }
    if (want("pair_tls"))
        row_vs("12. pair_tls, FULL", &R.tls_pair[1], &R.tls_pair[0], 1, "ev/s",
               "same pair, plain HTTP", ">= 0.9", 0.9, false);
    if (want("pair_rtt_tls")) {
        row_vs("12. pair_rtt_tls 100 ms RTT", &R.tls_rtt[1], &R.tls_rtt[0], 1, "ev/s",
               "same pair, plain HTTP", ">= 0.9", 0.9, false);
        row_vs("12. pair_rtt_tls latency p99", &R.tls_rtt_p99[1], &R.tls_rtt_p99[0], 1, "ms",
               "plain HTTP", NULL, 0, true);
    }
    if (want("fanout_1000_tls")) {
        row_vs("12. fanout_1000_tls", &R.tls_fan[1], &R.tls_fan[0], 1, "ev/s",
               "all healthy, plain HTTP", ">= 0.9", 0.9, false);
        row_vs("12. fanout_1000_tls p99", &R.tls_fan_p99[1], &R.tls_fan_p99[0], 1e-3, "s",
               "plain HTTP", NULL, 0, true);
        /* the bound: both twins keep the machine's cores busy (sender and farm), so their
         * ratio is that of the CPU each spends per event; TLS's share of it is mostly the
         * first contacts' handshakes (see PERFORMANCE.md) */
        row_vs("12. fanout_1000_tls CPU/event", &R.tls_fan_cpu[1], &R.tls_fan_cpu[0], 1, "us",
               "sender + farm, plain HTTP", NULL, 0, true);
        /* libcurl alone (no store, no daemon) in the same pattern, first contacts included,
         * TLS against plain; and TLS's added time per Push in each */
        if (R.tls_fan_curl[0].n && R.tls_fan_curl[1].n) {
            row_vs("12. libcurl alone, same pattern", &R.tls_fan_curl[1], &R.tls_fan_curl[0], 1,
                   "Pushes/s", "libcurl alone, plain HTTP", NULL, 0, false);
            double pb = 1e6 / m_median(&R.tls_fan[1]) - 1e6 / m_median(&R.tls_fan[0]);
            double cu = 1e6 / m_median(&R.tls_fan_curl[1]) - 1e6 / m_median(&R.tls_fan_curl[0]);
            printf("  fanout_1000_tls: TLS adds %.1f us per Push to postbox, %.1f us to libcurl "
                   "alone (medians)\n",
                   pb, cu);
            fprintf(g_md,
                    "\nfanout_1000_tls: TLS adds %.1f us per Push to postbox, %.1f us to "
                    "libcurl alone in the same pattern (medians).\n",
                    pb, cu);
        }
    }

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
    g_allow_private = postboxd_has_allow_private();
    printf("pbbench: %d runs%s; PushRequest body %zu bytes; nginx: %s; postboxd "
           "--allow-private-peers: %s\n",
           O.runs, O.quick ? " (BENCH_QUICK)" : "", push_len, O.nginx ? O.nginx : "not found",
           g_allow_private ? "yes (passed to every daemon)" : "not supported (not passed)");
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
        if (want("pair_full")) scenario_pair("full", &R.pair_full, run, false, O.pair_events);
        if (pg && want("pair_full_pg"))
            scenario_pair("full", &R.pair_full_pg, run, true, O.pair_events);
        if (want("pair_normal")) scenario_pair("normal", &R.pair_normal, run, false, O.pair_events);
        if (want("pair_batch")) scenario_pair("full", &R.pair_batch, run, false, O.batch_events);
        if (want("fanin")) scenario_fanin(&R.fanin, run, false);
        if (pg && want("fanin_pg")) scenario_fanin(&R.fanin_pg, run, true);
        if (want("fanout")) scenario_fanout(run);
        if (want("latency")) scenario_latency(run);
        if (want("fanout_1000")) scenario_fanout_scale(run);
        if (want("startup_10k")) scenario_startup(run);
        if (want("submit_concurrent")) scenario_submit_concurrent(run);
        for (int i = 0; i < RTT_N && want("pair_rtt"); i++)
            scenario_pair_rtt(i, run, &R.rtt_rate[i], &R.rtt_lat_p99[i]);
        if (want("pair_tls")) scenario_pair_tls(run);
        if (want("pair_rtt_tls")) scenario_pair_rtt_tls(run);
        if (want("fanout_1000_tls")) scenario_fanout_tls(run);
        struct drain_result dr;
        /* The drain runs at every size (4b. compares the largest with the smallest); the
         * memory figures come from the same runs. */
        bool mem = want("memory") || want("drain");
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
        if (want("drain") && drain_idx < 0 && run_drain(O.drain_events, run, &dr)) {
            m_add(&R.drain, dr.rate);
            if (dr.timed_out) R.drain.timed_out = true;
        }
        fflush(stdout);
    }
    report(now_s() - t0, push_len, load_before);
    if (g_ca.dir) {
        pbt_rmrf(g_ca.dir);
        free(g_ca.dir);
    }
    curl_global_cleanup();
    return 0;
}
