/*
 * hostile_tools.h - what the attack integration tests share (hostile_test, attack_slots_test,
 * attack_keys_test, attack_ident_test): running tests/tools/hostile (fork/exec with --ready,
 * --record and --stats, waiting until it is ready, stopping it, its log and its stats), hRPC
 * calls to a daemon's federation port, and driving real peer postboxd processes through
 * their admin API (starting them, submitting events, counting and waiting for the events
 * that reached an inbox, metrics, log lines, reloads). Untrusted input: the tool's ready,
 * stats and log files and the daemons' answers, read with fixed-size buffers. static
 * inline: each test uses what it needs.
 */
#ifndef PB_TESTS_HOSTILE_TOOLS_H
#define PB_TESTS_HOSTILE_TOOLS_H

#include <curl/curl.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "wire/wire.h"

static inline char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) abort();
    va_end(ap);
    return s;
}

static inline void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- the hostile tool ------------------------------------------------------------------------ */

#define TOOL_MAX_PORTS 128

struct tool {
    pid_t pid;
    char *dir, *log, *ready, *record, *stats;
    uint16_t ports[TOOL_MAX_PORTS];
    int nports;
    char id[TOOL_MAX_PORTS][32]; /* "127.0.0.1:PORT" of each port */
};

/* The hostile program: $PBT_HOSTILE, else beside postboxd in the build directory. */
static inline char *tool_path(void)
{
    return pbt_tool_path("PBT_HOSTILE", "hostile");
}

/* The tool wrote its ready file (it writes it whole, by a rename): a listening role's ports,
 * one a line, into t->ports and t->id; a stall's connection count is its one line. */
static inline bool tool_ready(void *vctx)
{
    struct tool *t = vctx;
    FILE *f = fopen(t->ready, "r");
    if (!f) return false;
    char line[32];
    t->nports = 0;
    while (t->nports < TOOL_MAX_PORTS && fgets(line, sizeof line, f)) {
        long p = strtol(line, NULL, 10);
        if (p > 0 && p < 65536) {
            t->ports[t->nports] = (uint16_t)p;
            snprintf(t->id[t->nports], sizeof t->id[0], "127.0.0.1:%ld", p);
            t->nports++;
        }
    }
    fclose(f);
    return true;
}

static inline bool tool_exited(void *vctx)
{
    struct tool *t = vctx;
    if (t->pid && waitpid(t->pid, NULL, WNOHANG) == t->pid) t->pid = 0;
    return t->pid == 0;
}

/* Stops (SIGTERM, bounded wait, then SIGKILL); returns the exit status or -1. */
static inline int tool_stop(struct tool *t)
{
    if (!t || !t->pid) return -1;
    kill(t->pid, SIGTERM);
    int64_t deadline = pbt_now_ms() + PBT_BOUND_MS;
    int st = 0;
    while (pbt_now_ms() < deadline) {
        if (waitpid(t->pid, &st, WNOHANG) == t->pid) {
            t->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        }
        sleep_ms(10);
    }
    kill(t->pid, SIGKILL);
    waitpid(t->pid, NULL, 0);
    t->pid = 0;
    return -1;
}

static inline void tool_free(struct tool *t)
{
    if (!t) return;
    tool_stop(t);
    if (!getenv("PBT_KEEP")) pbt_rmrf(t->dir);
    free(t->dir);
    free(t->log);
    free(t->ready);
    free(t->record);
    free(t->stats);
    free(t);
}

/* The last 40 lines of the tool's log, to stderr. */
static inline void tool_dump_log(const struct tool *t)
{
    FILE *f = fopen(t->log, "r");
    if (!f) return;
    char line[1024];
    long n = 0;
    while (fgets(line, sizeof line, f))
        n++;
    rewind(f);
    fprintf(stderr, "---- %s ----\n", t->log);
    for (long i = 0; fgets(line, sizeof line, f); i++)
        if (i >= n - 40) fputs(line, stderr);
    fclose(f);
}

/*
 * Runs `hostile ROLE --ready R --record F --stats S ARGS...` (its output in its log). Every
 * role but flood is waited for until its ready file is written (bounded); NULL, after a
 * failed check, when it did not come up. The tool dies with this process (PR_SET_PDEATHSIG).
 */
static inline struct tool *tool_run(const char *role, const char *const *args)
{
    struct tool *t = calloc(1, sizeof *t);
    if (!t) abort();
    t->dir = pbt_tmpdir("hostile");
    t->log = xasprintf("%s/tool.log", t->dir);
    t->ready = xasprintf("%s/ready", t->dir);
    t->record = xasprintf("%s/record.jsonl", t->dir);
    t->stats = xasprintf("%s/stats.json", t->dir);
    char *prog = tool_path();
    const char *argv[48];
    int n = 0;
    argv[n++] = prog;
    argv[n++] = role;
    argv[n++] = "--ready";
    argv[n++] = t->ready;
    argv[n++] = "--record";
    argv[n++] = t->record;
    argv[n++] = "--stats";
    argv[n++] = t->stats;
    for (int i = 0; args && args[i] && n < 46; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) abort();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        int fd = open(t->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(prog, (char *const *)argv);
        _exit(127);
    }
    free(prog);
    t->pid = pid;
    if (!strcmp(role, "flood")) return t;
    bool ok = pbt_wait_for(tool_ready, t, PBT_BOUND_MS);
    CHECKF(ok, "hostile %s is ready (build the target hostile, or set PBT_HOSTILE)", role);
    if (!ok) {
        tool_dump_log(t);
        tool_free(t);
        return NULL;
    }
    return t;
}

/* Lines of the tool's log holding needle. */
static inline int tool_log_count(const struct tool *t, const char *needle)
{
    FILE *f = fopen(t->log, "r");
    char line[1024];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, needle)) n++;
    if (f) fclose(f);
    return n;
}

/* A figure of the tool's --stats file (written when it ends); -1 when there is none yet. */
static inline long stat_of(const struct tool *t, const char *key)
{
    json_t *j = json_load_file(t->stats, 0, NULL);
    long v = j ? (long)json_integer_value(json_object_get(j, key)) : -1;
    json_decref(j);
    return v;
}

/* ---- hRPC calls ------------------------------------------------------------------------------ */

struct answer {
    long status; /* 0: no answer within the timeout */
    char *identifier;
    int64_t ms;
};

static inline void answer_clear(struct answer *a)
{
    free(a->identifier);
    memset(a, 0, sizeof *a);
}

static inline size_t collect(char *p, size_t size, size_t n, void *ud)
{
    pb_buf_append(ud, p, size * n);
    return size * n;
}

/* POSTs an hRPC request to 127.0.0.1:port with Authorization `auth` (NULL: none); the
 * answer's status, hrpc.v1.Error identifier and time taken into *a. */
static inline void call(uint16_t port, const char *path, const char *auth, const pb_buf *body,
                        long timeout_ms, struct answer *a)
{
    memset(a, 0, sizeof *a);
    CURL *c = curl_easy_init();
    char url[160];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", port, path);
    struct curl_slist *hl = curl_slist_append(NULL, "Content-Type: application/hrpc");
    hl = curl_slist_append(hl, "Hrpc-Version: 1");
    hl = curl_slist_append(hl, "Expect:");
    char *ah = auth ? xasprintf("Authorization: %s", auth) : NULL;
    if (ah) hl = curl_slist_append(hl, ah);
    pb_buf got = PB_BUF_INIT;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body && body->data ? (char *)body->data : "");
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, body ? (long)body->len : 0L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &got);
    int64_t t0 = pbt_now_ms();
    if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &a->status);
    a->ms = pbt_now_ms() - t0;
    if (a->status && (a->status < 200 || a->status > 299)) {
        char *msg = NULL;
        uint8_t *details = NULL;
        size_t dlen = 0;
        if (pb_wire_error_decode(got.data, got.len, &a->identifier, &msg, &details, &dlen) != PB_OK)
            a->identifier = NULL;
        free(msg);
        free(details);
    }
    pb_buf_free(&got);
    free(ah);
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
}

/* ---- real peers: the admin side -------------------------------------------------------------- */

static inline pbt_daemon *start(const char *tag, const char *const *extra)
{
    pbt_daemon *d = pbt_daemon_new(tag, extra);
    bool ok = pbt_daemon_start(d);
    CHECKF(ok, "postboxd %s starts (%s)", tag, d->server_id);
    if (!ok) {
        pbt_daemon_free(d);
        return NULL;
    }
    return d;
}

static inline json_t *ev_added(unsigned user, unsigned guild)
{
    char u[16], g[16];
    snprintf(u, sizeof u, "%u", user);
    snprintf(g, sizeof g, "%u", guild);
    return json_pack("{s:{s:s,s:s}}", "userAddedToGuild", "userId", u, "guildId", g);
}

/* Submits the events (an array, borrowed) to d's outbox for `to`. */
static inline bool submit(const pbt_daemon *d, const char *to, json_t *events)
{
    long st;
    json_t *r =
        pbt_admin(d, "POST", "/v1/outbox", json_pack("{s:s,s:O}", "to", to, "events", events), &st);
    json_decref(r);
    CHECKF(st == 202, "submit %zu events from %s to %s: status %ld", json_array_size(events),
           d->server_id, to, st);
    return st == 202;
}

/* Submits one event (user added to guild) to d's outbox for `to`. */
static inline bool submit_one(const pbt_daemon *d, const char *to, unsigned user, unsigned guild)
{
    json_t *evs = json_pack("[o]", ev_added(user, guild));
    bool ok = submit(d, to, evs);
    json_decref(evs);
    return ok;
}

/* Inbox items of d from `from` (serverRenamed notices left out), as their event objects;
 * at most cap of them are collected (the paging stops there). New reference. */
static inline json_t *events_from(const pbt_daemon *d, const char *from, size_t cap)
{
    json_t *out = json_array();
    long long after = 0;
    for (int guard = 0; guard < 100000 && json_array_size(out) < cap; guard++) {
        char path[128];
        snprintf(path, sizeof path, "/v1/inbox?after=%lld&limit=1000", after);
        long st;
        json_t *r = pbt_admin(d, "GET", path, NULL, &st);
        json_t *evs = json_object_get(r, "events");
        size_t n = json_array_size(evs), i;
        json_t *it;
        json_array_foreach(evs, i, it)
        {
            json_t *ev = json_object_get(it, "event");
            const char *f = json_string_value(json_object_get(it, "from"));
            if (f && !strcmp(f, from) && !json_object_get(ev, "serverRenamed") &&
                json_array_size(out) < cap)
                json_array_append(out, ev);
        }
        if (n) after = json_integer_value(json_object_get(r, "next"));
        json_decref(r);
        if (st != 200 || n == 0) break;
    }
    return out;
}

/* How many events d's inbox holds from `from` (serverRenamed notices left out). */
static inline size_t count_from(const pbt_daemon *d, const char *from)
{
    json_t *evs = events_from(d, from, (size_t)-1);
    size_t n = json_array_size(evs);
    json_decref(evs);
    return n;
}

struct count_wait {
    const pbt_daemon *d;
    const char *from;
    size_t want, have;
};

static inline bool have_count(void *vctx)
{
    struct count_wait *w = vctx;
    w->have = count_from(w->d, w->from);
    return w->have >= w->want;
}

struct metric_wait {
    const pbt_daemon *d;
    const char *series;
    double at_least, value;
};

static inline bool metric_reached(void *vctx)
{
    struct metric_wait *w = vctx;
    w->value = pbt_metric(w->d, w->series);
    return w->value >= w->at_least;
}

struct logwait {
    const pbt_daemon *d;
    const char *needle;
    int before;
};

/* d's log holds more lines with needle than before. */
static inline bool logged_more(void *vctx)
{
    struct logwait *w = vctx;
    return pbt_log_count(w->d, w->needle, NULL) > w->before;
}

static inline void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) abort();
}

#endif
