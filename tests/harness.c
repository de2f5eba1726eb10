/*
 * harness - test helpers (see harness.h).
 */
#include "harness.h"
#include "wire/wire.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <errno.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdlib.h>
#include <time.h>
#include <strings.h>
#include <unistd.h>

int pbt_passed, pbt_failed;

void pbt_check(bool ok, const char *file, int line, const char *expr, const char *fmt, ...)
{
    if (ok) {
        pbt_passed++;
        return;
    }
    pbt_failed++;
    fprintf(stderr, "FAIL %s:%d: %s", file, line, expr);
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        fputs(": ", stderr);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
    }
    fputc('\n', stderr);
}

int pbt_finish(void)
{
    printf("%d passed, %d failed\n", pbt_passed, pbt_failed);
    fflush(stdout);
    return pbt_failed == 0 && pbt_passed > 0 ? 0 : 1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

uint8_t *pbt_hex(const char *hex, size_t *len)
{
    size_t n = strlen(hex) / 2;
    uint8_t *out = malloc(n ? n : 1);
    if (!out) abort();
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            fprintf(stderr, "bad hex in test data: %s\n", hex);
            abort();
        }
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    *len = n;
    return out;
}

char *pbt_tohex(const uint8_t *p, size_t n)
{
    char *s = malloc(2 * n + 1);
    if (!s) abort();
    for (size_t i = 0; i < n; i++)
        sprintf(s + 2 * i, "%02x", p[i]);
    s[2 * n] = '\0';
    return s;
}

json_t *pbt_vectors(void)
{
    json_error_t err;
    json_t *v = json_load_file(PB_VECTORS_FILE, 0, &err);
    if (!v) {
        fprintf(stderr, "cannot read %s: %s\n", PB_VECTORS_FILE, err.text);
        exit(2);
    }
    return v;
}

char *pbt_tmpdir(const char *tag)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    char *path = NULL;
    if (asprintf(&path, "%s/postbox-%s-XXXXXX", base, tag ? tag : "test") < 0) abort();
    if (!mkdtemp(path)) {
        fprintf(stderr, "mkdtemp %s: %s\n", path, strerror(errno));
        exit(2);
    }
    return path;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

bool pbt_copy_file(const char *from, const char *to)
{
    int in = open(from, O_RDONLY | O_CLOEXEC);
    int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    bool ok = in >= 0 && out >= 0 && fchmod(out, 0600) == 0;
    char buf[4096];
    ssize_t n;
    while (ok && (n = read(in, buf, sizeof buf)) != 0) {
        if (n < 0 && errno == EINTR) continue;
        ok = n > 0 && write(out, buf, (size_t)n) == n;
    }
    if (in >= 0) close(in);
    if (out >= 0 && close(out) != 0) ok = false;
    return ok;
}

void pbt_rmrf(const char *path)
{
    if (path) nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int64_t pbt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- integration helpers ----------------------------------------------------------------- */

/* Whether a listener could bind 127.0.0.1:port now. */
static bool port_bindable(unsigned port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0) close(fd);
    return ok;
}

/* Ports come from a window outside the kernel's ephemeral range (no outgoing connection of
 * any process takes one between the pick and postboxd's bind; bind(0) would pick from that
 * range), each at most once per process (tests create several daemons before starting any),
 * from a start that differs per process, and only when a bind to it succeeds now. */
uint16_t pbt_free_port(void)
{
    static unsigned wlo, whi, next;
    if (!wlo) {
        unsigned lo = 32768, hi = 60999;
        FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
        if (f) {
            if (fscanf(f, "%u %u", &lo, &hi) != 2) lo = 32768, hi = 60999;
            fclose(f);
        }
        if (lo >= 12000) {
            wlo = 10000, whi = lo - 1;
        } else if (hi <= 64535) {
            wlo = hi + 1, whi = 65535;
        } else {
            fprintf(stderr,
                    "pbt_free_port: the ephemeral range %u-%u leaves no room for test "
                    "ports\n",
                    lo, hi);
            exit(2);
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        next = wlo + (unsigned)(((unsigned long)getpid() * 7919u + (unsigned long)ts.tv_nsec) %
                                (whi - wlo + 1));
    }
    for (unsigned tries = 0; tries <= whi - wlo; tries++) {
        unsigned p = next++;
        if (next > whi) next = wlo;
        if (port_bindable(p)) return (uint16_t)p;
    }
    fprintf(stderr, "pbt_free_port: no free port left in %u-%u\n", wlo, whi);
    exit(2);
}

/* ---- PostgreSQL --------------------------------------------------------------------------- */

const char *pbt_pg_url(void)
{
    const char *u = getenv("PB_TEST_PG_URL");
    if (u && *u) return u;
    fprintf(stderr, "PB_TEST_PG_URL is not set: the PostgreSQL tests need a server. Start a "
                    "throw-away one with  eval \"$(scripts/pg-start)\"  (scripts/pg-stop "
                    "\"$PB_TEST_PG_DIR\" stops it); make test does this itself.\n");
    return NULL;
}

/* The server URL with its database replaced by name (caller frees). */
static char *pg_url_with_db(const char *url, const char *name)
{
    const char *auth = strstr(url, "://");
    if (!auth) return NULL;
    auth += 3;
    size_t end = strcspn(auth, "/?"); /* end of user:password@host:port */
    const char *rest = auth + end;
    const char *query = strchr(rest, '?');
    char *out = NULL;
    if (asprintf(&out, "%.*s/%s%s", (int)(rest - url), url, name, query ? query : "") < 0) abort();
    return out;
}

static void pg_quiet(void *ud, const char *msg)
{
    (void)ud;
    (void)msg; /* "database ... does not exist, skipping" and the like */
}

/* Runs one statement on the database of PB_TEST_PG_URL; false (message printed) on error. */
static bool pg_admin_exec(const char *sql)
{
    const char *url = pbt_pg_url();
    if (!url) return false;
    PGconn *c = PQconnectdb(url);
    bool ok = false;
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "cannot connect to PB_TEST_PG_URL: %s", PQerrorMessage(c));
    } else {
        PQsetNoticeProcessor(c, pg_quiet, NULL);
        PGresult *r = PQexec(c, sql);
        ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok) fprintf(stderr, "%s: %s", sql, PQresultErrorMessage(r));
        PQclear(r);
    }
    PQfinish(c);
    return ok;
}

static bool pg_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 63) return false;
    for (size_t i = 0; i < n; i++)
        if (!(islower((unsigned char)name[i]) || isdigit((unsigned char)name[i]) || name[i] == '_'))
            return false;
    return true;
}

char *pbt_pg_create_db(const char *name)
{
    if (!pg_name_ok(name)) {
        fprintf(stderr, "pbt_pg_create_db: bad database name \"%s\"\n", name);
        return NULL;
    }
    const char *url = pbt_pg_url();
    if (!url) return NULL;
    char sql[160];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
    if (!pg_admin_exec(sql)) return NULL;
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
    if (!pg_admin_exec(sql)) return NULL;
    char *out = pg_url_with_db(url, name);
    if (!out) fprintf(stderr, "PB_TEST_PG_URL is not a postgresql:// URL\n");
    return out;
}

void pbt_pg_drop_db(const char *name)
{
    if (!name || !pg_name_ok(name)) return;
    char sql[160];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
    pg_admin_exec(sql);
}

/* The daemons made and not yet freed, so a test that must give up (its store cannot be
 * made) leaves no process behind. */
static pbt_daemon *g_live[64];

static void live_add(pbt_daemon *d)
{
    for (size_t i = 0; i < sizeof g_live / sizeof g_live[0]; i++) {
        if (!g_live[i]) {
            g_live[i] = d;
            return;
        }
    }
}

static void live_remove(pbt_daemon *d)
{
    for (size_t i = 0; i < sizeof g_live / sizeof g_live[0]; i++)
        if (g_live[i] == d) g_live[i] = NULL;
}

static void give_up(void)
{
    for (size_t i = 0; i < sizeof g_live / sizeof g_live[0]; i++) {
        if (!g_live[i]) continue;
        pbt_daemon_kill(g_live[i]);
        pbt_rmrf(g_live[i]->dir);
        pbt_pg_drop_db(g_live[i]->pg_db);
    }
    exit(2);
}

/* PBT_STORE=postgres: a database named after the data directory, passed as --store. */
static void daemon_use_postgres(pbt_daemon *d)
{
    const char *base = strrchr(d->dir, '/');
    base = base ? base + 1 : d->dir;
    char name[64];
    int n = snprintf(name, sizeof name, "pbt_%s", base);
    if (n < 0 || (size_t)n >= sizeof name) n = (int)sizeof name - 1;
    for (int i = 0; i < n; i++)
        name[i] = isalnum((unsigned char)name[i]) ? (char)tolower((unsigned char)name[i]) : '_';
    char *url = pbt_pg_create_db(name);
    if (!url) {
        fprintf(stderr, "PBT_STORE=postgres: cannot create database %s for %s\n", name, d->dir);
        give_up();
    }
    d->pg_db = strdup(name);
    if (d->nargs <= 30) {
        d->args[d->nargs++] = strdup("--store");
        d->args[d->nargs++] = url;
    } else {
        fprintf(stderr, "PBT_STORE=postgres: too many daemon arguments\n");
        give_up();
    }
}

pbt_daemon *pbt_daemon_new(const char *tag, const char *const *extra)
{
    pbt_daemon *d = calloc(1, sizeof *d);
    if (!d) abort();
    d->dir = pbt_tmpdir(tag);
    d->port = pbt_free_port();
    do {
        d->admin_port = pbt_free_port();
    } while (d->admin_port == d->port);
    snprintf(d->server_id, sizeof d->server_id, "127.0.0.1:%u", d->port);
    snprintf(d->admin, sizeof d->admin, "127.0.0.1:%u", d->admin_port);
    if (asprintf(&d->log_path, "%s/postboxd.log", d->dir) < 0) abort();
    for (int i = 0; extra && extra[i] && d->nargs < 31; i++)
        d->args[d->nargs++] = strdup(extra[i]);
    live_add(d);
    const char *store = getenv("PBT_STORE");
    if (store && strcmp(store, "postgres") == 0) {
        daemon_use_postgres(d);
    } else if (store && *store && strcmp(store, "sqlite") != 0) {
        fprintf(stderr, "PBT_STORE=%s: want sqlite or postgres\n", store);
        give_up();
    }
    return d;
}

void pbt_daemon_set_token(pbt_daemon *d, const char *token)
{
    char path[600];
    snprintf(path, sizeof path, "%s/admin-token", d->dir);
    FILE *f = fopen(path, "w");
    if (!f || fprintf(f, "%s\n", token) < 0 || fclose(f) != 0) abort();
    if (chmod(path, 0600) != 0) abort(); /* postboxd refuses a token others can read */
    snprintf(d->token, sizeof d->token, "%s", token);
    if (d->nargs + 2 <= 31) {
        d->args[d->nargs++] = strdup("--admin-token-file");
        d->args[d->nargs++] = strdup(path);
    }
}

static bool healthz(const pbt_daemon *d)
{
    pbt_http h;
    char auth[160];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", d->token);
    const char *hdrs[] = {auth, NULL};
    pbt_http_do("http", d->admin_port, "GET", "/healthz", d->token[0] ? hdrs : NULL, NULL, 0, NULL,
                &h);
    bool ok = h.status == 200;
    pbt_http_clear(&h);
    return ok;
}

void pbt_daemon_dump_log(const pbt_daemon *d)
{
    FILE *f = fopen(d->log_path, "r");
    if (!f) return;
    char line[2048];
    fprintf(stderr, "---- %s (%s) ----\n", d->log_path, d->server_id);
    long n = 0;
    while (fgets(line, sizeof line, f))
        n++;
    rewind(f);
    long skip = n > 60 ? n - 60 : 0;
    for (long i = 0; fgets(line, sizeof line, f); i++)
        if (i >= skip) fputs(line, stderr);
    fclose(f);
}

/* The settings a federation of daemons on 127.0.0.1 needs beyond --peer-scheme http, given
 * to every daemon whose public_only is not set (a test of what a daemon on the open internet
 * refuses sets it). */
static const char *const pbt_loopback_args[] = {"--allow-private-peers", "yes", NULL};

bool pbt_daemon_start_faults(pbt_daemon *d, const char *faults)
{
    setenv("PB_FAULTS", faults, 1);
    bool up = pbt_daemon_start(d);
    unsetenv("PB_FAULTS");
    return up;
}

bool pbt_daemon_start(pbt_daemon *d)
{
    char listen[64], datadir[512];
    snprintf(listen, sizeof listen, "127.0.0.1:%u", d->port);
    snprintf(datadir, sizeof datadir, "%s", d->dir);
    const char *argv[64];
    int n = 0;
    /* Fault points exist only in the test build of the daemon (never in postboxd). */
    const char *prog =
        (getenv("PB_FAULTS") || getenv("PB_FAULT_VFS_DIR")) ? PB_POSTBOXD_FAULTS : PB_POSTBOXD;
    if (d->prog) prog = d->prog;
    argv[n++] = prog;
    argv[n++] = "--data-dir";
    argv[n++] = datadir;
    argv[n++] = "--listen";
    argv[n++] = listen;
    argv[n++] = "--admin-listen";
    argv[n++] = d->admin;
    argv[n++] = "--peer-scheme";
    argv[n++] = "http";
    argv[n++] = "--log-level";
    argv[n++] = "debug";
    for (int i = 0; !d->public_only && pbt_loopback_args[i]; i++)
        argv[n++] = pbt_loopback_args[i];
    for (int i = 0; i < d->nargs; i++)
        argv[n++] = d->args[i];
    argv[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) abort();
    if (pid == 0) {
        int fd = open(d->log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        execv(prog, (char *const *)argv);
        _exit(127);
    }
    d->pid = pid;
    d->exit_status = 0;
    /* A bound on a positive condition: far above a start under load (a start was seen
     * taking over 20 s, with an empty log, on a loaded shared 2-core machine). */
    int64_t deadline = pbt_now_ms() + PBT_DAEMON_BOUND_MS;
    while (pbt_now_ms() < deadline) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            d->pid = 0;
            d->exit_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            fprintf(stderr, "postboxd %s exited during start-up (status %d)\n", d->server_id,
                    d->exit_status);
            pbt_daemon_dump_log(d);
            return false;
        }
        if (healthz(d)) return true;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "postboxd %s did not become healthy in %d s\n", d->server_id,
            PBT_DAEMON_BOUND_MS / 1000);
    pbt_daemon_dump_log(d);
    /* not left running: a later start of d would be a second daemon on its ports and data */
    pbt_daemon_kill(d);
    return false;
}

int pbt_log_count(const pbt_daemon *d, const char *a, const char *b)
{
    FILE *f = fopen(d->log_path, "r");
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, a) && (!b || strstr(line, b))) n++;
    if (f) fclose(f);
    return n;
}

int pbt_daemon_stop(pbt_daemon *d)
{
    if (!d->pid) return -1;
    kill(d->pid, SIGTERM);
    int64_t deadline = pbt_now_ms() + PBT_DAEMON_BOUND_MS;
    int st = 0;
    while (pbt_now_ms() < deadline) {
        if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
            d->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    pbt_daemon_kill(d);
    return -1;
}

bool pbt_daemon_wait_exit(pbt_daemon *d, int timeout_ms)
{
    if (!d->pid) return true;
    int64_t deadline = pbt_now_ms() + timeout_ms;
    while (pbt_now_ms() < deadline) {
        if (waitpid(d->pid, NULL, WNOHANG) == d->pid) {
            d->pid = 0;
            return true;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return false;
}

void pbt_daemon_kill(pbt_daemon *d)
{
    if (!d->pid) return;
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    d->pid = 0;
}

void pbt_daemon_free(pbt_daemon *d)
{
    if (!d) return;
    live_remove(d);
    pbt_daemon_stop(d);
    if (!getenv("PBT_KEEP")) {
        pbt_rmrf(d->dir);
        pbt_pg_drop_db(d->pg_db);
    }
    free(d->pg_db);
    free(d->dir);
    free(d->log_path);
    for (int i = 0; i < d->nargs; i++)
        free(d->args[i]);
    free(d);
}

struct hdrs {
    char **ctype, **ver;
};

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    struct hdrs *h = ud;
    size_t len = size * n;
    char line[512];
    if (len >= sizeof line) return len;
    memcpy(line, p, len);
    line[len] = '\0';
    line[strcspn(line, "\r\n")] = '\0';
    char **dst = NULL;
    if (!strncasecmp(line, "Content-Type:", 13))
        dst = h->ctype;
    else if (!strncasecmp(line, "Hrpc-Version:", 13))
        dst = h->ver;
    if (dst) {
        const char *v = line + 13;
        while (*v == ' ')
            v++;
        free(*dst);
        *dst = strdup(v);
    }
    return len;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    pbt_http *h = ud;
    h->body = realloc(h->body, h->body_len + size * n + 1);
    memcpy(h->body + h->body_len, p, size * n);
    h->body_len += size * n;
    h->body[h->body_len] = 0;
    return size * n;
}

void pbt_http_do(const char *scheme, uint16_t port, const char *method, const char *path,
                 const char *const *headers, const void *body, size_t body_len, const char *ca_file,
                 pbt_http *out)
{
    memset(out, 0, sizeof *out);
    CURL *c = curl_easy_init();
    char url[512];
    snprintf(url, sizeof url, "%s://127.0.0.1:%u%s", scheme, port, path);
    struct curl_slist *sl = curl_slist_append(NULL, "Expect:");
    for (int i = 0; headers && headers[i]; i++)
        sl = curl_slist_append(sl, headers[i]);
    struct hdrs hh = {&out->ctype, &out->hrpc_version};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 15000L);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, sl);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &hh);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    if (ca_file) curl_easy_setopt(c, CURLOPT_CAINFO, ca_file);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)body_len);
    } else if (!strcmp(method, "POST")) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
    }
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    curl_slist_free_all(sl);
    curl_easy_cleanup(c);
}

void pbt_http_clear(pbt_http *h)
{
    free(h->body);
    free(h->ctype);
    free(h->hrpc_version);
    memset(h, 0, sizeof *h);
}

struct metric_want {
    const pbt_daemon *d;
    const char *series;
    double want;
};

static bool metric_at_least(void *vctx)
{
    const struct metric_want *m = vctx;
    return pbt_metric(m->d, m->series) >= m->want;
}

bool pbt_wait_metric(const pbt_daemon *d, const char *series, double want, int ms)
{
    struct metric_want m = {d, series, want};
    return pbt_wait_for(metric_at_least, &m, ms);
}

double pbt_metric(const pbt_daemon *d, const char *series)
{
    char auth[160];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", d->token);
    const char *hdrs[] = {auth, NULL};
    pbt_http h;
    pbt_http_do("http", d->admin_port, "GET", "/metrics", d->token[0] ? hdrs : NULL, NULL, 0, NULL,
                &h);
    double v = -1;
    char *text = h.status == 200 && h.body ? strndup((const char *)h.body, h.body_len) : NULL;
    size_t n = strlen(series);
    for (char *l = text; l && *l;) {
        char *end = strchr(l, '\n');
        if (end) *end = '\0';
        if (!strncmp(l, series, n) && l[n] == ' ') {
            v = strtod(l + n + 1, NULL);
            break;
        }
        l = end ? end + 1 : NULL;
    }
    free(text);
    pbt_http_clear(&h);
    return v;
}

json_t *pbt_admin(const pbt_daemon *d, const char *method, const char *path, json_t *body,
                  long *status)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    if (body) json_decref(body);
    char auth[160];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", d->token);
    const char *hdrs[] = {"Content-Type: application/json", d->token[0] ? auth : NULL, NULL};
    pbt_http h;
    pbt_http_do("http", d->admin_port, method, path, hdrs, text, text ? strlen(text) : 0, NULL, &h);
    free(text);
    *status = h.status;
    json_t *j = NULL;
    if (h.body_len) j = json_loadb((const char *)h.body, h.body_len, 0, NULL);
    pbt_http_clear(&h);
    return j;
}

json_t *pbt_inbox_all(const pbt_daemon *d, long *status)
{
    json_t *all = json_array();
    long long after = 0;
    long st = 0;
    for (int guard = 0; guard < 10000; guard++) {
        char path[128];
        snprintf(path, sizeof path, "/v1/inbox?after=%lld&limit=1000", after);
        json_t *r = pbt_admin(d, "GET", path, NULL, &st);
        json_t *evs = json_object_get(r, "events");
        size_t n = json_array_size(evs);
        json_array_extend(all, evs);
        if (n) after = json_integer_value(json_object_get(r, "next"));
        json_decref(r);
        if (st != 200 || n == 0) break;
    }
    if (status) *status = st;
    return all;
}

json_t *pbt_inbox_events_from(const pbt_daemon *d, const char *from)
{
    json_t *all = pbt_inbox_all(d, NULL), *out = json_array();
    size_t i;
    json_t *it;
    json_array_foreach(all, i, it)
    {
        json_t *ev = json_object_get(it, "event");
        const char *f = json_string_value(json_object_get(it, "from"));
        if (f && !strcmp(f, from) && !json_object_get(ev, "serverRenamed"))
            json_array_append(out, ev);
    }
    json_decref(all);
    return out;
}

bool pbt_wait_for(bool (*cond)(void *ctx), void *ctx, int timeout_ms)
{
    int64_t deadline = pbt_now_ms() + timeout_ms;
    for (;;) {
        if (cond(ctx)) return true;
        if (pbt_now_ms() >= deadline) return false;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* ---- in-test identities ------------------------------------------------------------------- */

#define PBT_KEY_PATH "/protocol.auth.v1.AuthService/Key"

static enum MHD_Result ident_request(void *cls, struct MHD_Connection *conn, const char *url,
                                     const char *method, const char *version, const char *upload,
                                     size_t *upload_size, void **con_cls)
{
    (void)version;
    (void)upload;
    pbt_ident *id = cls;
    if (!*con_cls) {
        *con_cls = id; /* headers only: wait for the (empty) body */
        return MHD_YES;
    }
    if (*upload_size) {
        *upload_size = 0;
        return MHD_YES;
    }
    pb_buf body = PB_BUF_INIT;
    unsigned status = 200;
    if (!strcmp(url, PBT_KEY_PATH) && !strcmp(method, "POST")) {
        pb_wire_key_resp_encode(id->serve, &body);
    } else {
        status = 503;
        pb_wire_error_encode("hrpc.unavailable", "test identity: only Key is served", NULL, 0,
                             &body);
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(
        body.len, body.data ? body.data : (void *)"", MHD_RESPMEM_MUST_COPY);
    pb_buf_free(&body);
    MHD_add_response_header(r, "Content-Type", "application/hrpc");
    MHD_add_response_header(r, "Hrpc-Version", "1");
    enum MHD_Result res = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return res;
}

pbt_ident *pbt_ident_new(const uint8_t *serve)
{
    pbt_ident *id = calloc(1, sizeof *id);
    if (!id || pb_keys_generate(&id->keys) != PB_OK) abort();
    memcpy(id->serve, serve ? serve : pb_keys_public(id->keys), 32);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    id->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO, 0, NULL, NULL,
                               ident_request, id, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                               MHD_OPTION_END);
    const union MHD_DaemonInfo *i =
        id->mhd ? MHD_get_daemon_info(id->mhd, MHD_DAEMON_INFO_BIND_PORT) : NULL;
    CHECKF(i && i->port, "in-test identity serves its key");
    if (!i || !i->port) {
        pbt_ident_free(id);
        return NULL;
    }
    snprintf(id->server_id, sizeof id->server_id, "127.0.0.1:%u", i->port);
    return id;
}

void pbt_ident_free(pbt_ident *id)
{
    if (!id) return;
    if (id->mhd) MHD_stop_daemon(id->mhd);
    pb_keys_free(id->keys);
    free(id);
}

/* ---- a process seen from outside, raw connections ------------------------------------------ */

long pbt_proc_kib(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long v = -1;
    size_t n = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':') v = strtol(line + n + 1, NULL, 10);
    if (f) fclose(f);
    return v;
}

long pbt_proc_cpu_ms(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the name may hold spaces */
    if (!p) return -1;
    unsigned long ut = 0, st = 0;
    /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
     */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (long)((ut + st) * 1000 / (unsigned long)sysconf(_SC_CLK_TCK));
}

int pbt_proc_entries(pid_t pid, const char *dir)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, dir);
    DIR *d = opendir(path);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

int pbt_connect_from(const char *src, uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in from = {.sin_family = AF_INET};
    struct sockaddr_in to = {
        .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0) return -1;
    if (inet_pton(AF_INET, src, &from.sin_addr) != 1 ||
        bind(fd, (struct sockaddr *)&from, sizeof from) != 0 ||
        connect(fd, (struct sockaddr *)&to, sizeof to) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int pbt_connect_local(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in sa = {
        .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

char *pbt_pg_lease_holder(const char *url, const char *peer)
{
    PGconn *c = PQconnectdb(url);
    char *holder = NULL;
    if (PQstatus(c) == CONNECTION_OK) {
        const char *params[] = {peer};
        PGresult *r = PQexecParams(c, "SELECT holder FROM leases WHERE peer = $1", 1, NULL, params,
                                   NULL, NULL, 0);
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
            holder = strdup(PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    PQfinish(c);
    return holder;
}

char *pbt_tool_path(const char *env, const char *name)
{
    const char *v = getenv(env);
    if (v && *v) return strdup(v);
    const char *slash = strrchr(PB_POSTBOXD, '/');
    char *out = NULL;
    if (!slash) {
        if (asprintf(&out, "./%s", name) < 0) abort();
    } else if (asprintf(&out, "%.*s/%s", (int)(slash - PB_POSTBOXD), PB_POSTBOXD, name) < 0) {
        abort();
    }
    return out;
}
