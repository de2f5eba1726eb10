/*
 * monitor_test - what an operator sees, on real postboxd processes (run on both stores:
 * PBT_STORE=postgres for the _pg variant):
 *
 *   metrics    A (json logs, metrics_listen, top 2 peers) sends to B and to three peers
 *              that are down; B gets a Push without a token and a request to an unknown
 *              path; a submission is repeated with its submission_id. The counters fed by
 *              this code moved by exactly the right amounts (events submitted,
 *              duplicate submissions, server-side Push answers and latency by method and
 *              status, token refusals by identifier, store commits and group commits),
 *              the store gauges say the truth (peers by mode, queued events, the top-N
 *              peers by oldest backlog, inbox last seq and unread after the reader's
 *              cursor), the delivery engine's families exist and were 0 before any
 *              traffic, and `promtool check metrics` accepts the scrapes of A and B
 *   access     /metrics needs the admin token on the admin listener, not on
 *              metrics_listen (which serves nothing else); the status page is public
 *   history    /v1/stats/history holds samples that follow the queue
 *   peers      /v1/peers pages, sorts and filters; without parameters the old shape
 *   qshape     /v1/qshape and `postboxctl qshape` (table, --top, --json)
 *   logs       every line A wrote with log_format = json parses as one object with ts,
 *              level, msg and peer
 *   process    the process_* series hold A's figures; the delivery latency histogram
 *              counted the events A delivered
 *   dashboard  every query of docs/monitoring/grafana-postbox.json (its variables given
 *              values) passes `promtool check rules` as a recording rule, and every
 *              postbox_ and process_ metric it names is in A's scrape
 */
#include <ctype.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdlib.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "util/buf.h"

extern char **environ;

#define TOKEN "monitor-test-token-0123456789"

static bool g_pg;

/* ---- scraping ------------------------------------------------------------------------ */

/* GET path on port with an optional bearer token; the body as a string (caller frees). */
static char *get_text(uint16_t port, const char *path, const char *token, long *status,
                      char **ctype)
{
    char auth[160];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token ? token : "");
    const char *hdrs[] = {auth, NULL};
    pbt_http h;
    pbt_http_do("http", port, "GET", path, token ? hdrs : NULL, NULL, 0, NULL, &h);
    *status = h.status;
    char *s = calloc(1, h.body_len + 1);
    if (!s) abort();
    if (h.body_len) memcpy(s, h.body, h.body_len);
    if (ctype) *ctype = h.ctype ? strdup(h.ctype) : NULL;
    pbt_http_clear(&h);
    return s;
}

static char *scrape(const pbt_daemon *d)
{
    long st;
    char *t = get_text(d->admin_port, "/metrics", d->token[0] ? d->token : NULL, &st, NULL);
    CHECKF(st == 200, "GET /metrics on %s: %ld", d->server_id, st);
    return t;
}

/* The exposition as {"name{labels}": value}; new reference. */
static json_t *parse(const char *text)
{
    json_t *m = json_object();
    char *copy = strdup(text), *save = NULL;
    for (char *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        if (l[0] == '#') continue;
        char *sp = strrchr(l, ' ');
        if (!sp) continue;
        *sp = '\0';
        json_object_set_new(m, l, json_real(strtod(sp + 1, NULL)));
    }
    free(copy);
    return m;
}

static bool has(const json_t *m, const char *key)
{
    return json_object_get(m, key) != NULL;
}

static double val(const json_t *m, const char *key)
{
    return json_real_value(json_object_get(m, key));
}

/* after[key] - before[key], with a missing series as 0 */
static double moved(const json_t *before, const json_t *after, const char *key)
{
    return val(after, key) - val(before, key);
}

#define CHECK_MOVED(b, a, key, want)                                                               \
    CHECKF(moved(b, a, key) == (want), "%s moved by %g, want %g", key, moved(b, a, key),           \
           (double)(want))
#define CHECK_VAL(m, key, want)                                                                    \
    CHECKF(has(m, key) && val(m, key) == (want), "%s = %g (present: %d), want %g", key,            \
           val(m, key), has(m, key), (double)(want))

/* Runs promtool with args (argv[1..], NULL-terminated) and text on stdin; true when it
 * exits 0 (what it said is printed when not). */
static bool promtool_run(char *const *args, const char *text, const char *what);

/* Runs `promtool check metrics` on text; true when it accepts it. */
static bool promtool_ok(const char *text, const char *what)
{
    char *args[] = {"check", "metrics", NULL};
    return promtool_run(args, text, what);
}

static bool promtool_run(char *const *args, const char *text, const char *what)
{
    const char *prog = NULL;
    static const char *const paths[] = {"/usr/bin/promtool", "/usr/local/bin/promtool"};
    for (size_t i = 0; i < 2 && !prog; i++)
        if (access(paths[i], X_OK) == 0) prog = paths[i];
    CHECKF(prog != NULL, "promtool not found: install the Debian package prometheus "
                         "(scripts/bootstrap test)");
    if (!prog) return false;
    char *dir = pbt_tmpdir("promtool");
    char in[512], out[512];
    snprintf(in, sizeof in, "%s/scrape.txt", dir);
    snprintf(out, sizeof out, "%s/out.txt", dir);
    FILE *f = fopen(in, "w");
    fputs(text, f);
    fclose(f);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, in, O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    char *argv[8] = {(char *)prog};
    for (int i = 0; args[i] && i < 6; i++)
        argv[i + 1] = args[i];
    pid_t pid;
    int st = -1;
    if (posix_spawn(&pid, prog, &fa, NULL, argv, environ) == 0) waitpid(pid, &st, 0);
    posix_spawn_file_actions_destroy(&fa);
    char said[4096] = "";
    f = fopen(out, "r");
    if (f) {
        size_t n = fread(said, 1, sizeof said - 1, f);
        said[n] = '\0';
        fclose(f);
    }
    bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    CHECKF(ok, "promtool %s %s on %s: status %d: %s", args[0], args[1], what, st, said);
    printf("promtool %s %s (%s): %s%s\n", args[0], args[1], what, ok ? "ok" : "FAILED", said);
    pbt_rmrf(dir);
    free(dir);
    return ok;
}

/* ---- the Grafana dashboard ---------------------------------------------------------------- */

/* Appends the query of every target of every panel (rows' panels included) to out. */
static void collect_exprs(const json_t *panels, json_t *out)
{
    size_t i, k;
    const json_t *p, *t;
    json_array_foreach(panels, i, p)
    {
        json_array_foreach(json_object_get(p, "targets"), k, t)
        {
            const char *e = json_string_value(json_object_get(t, "expr"));
            if (e) json_array_append_new(out, json_string(e));
        }
        collect_exprs(json_object_get(p, "panels"), out);
    }
}

/* e with Grafana's variables given values a rule can hold: $__rate_interval 5m, $job .+ */
static char *concrete(const char *e)
{
    pb_buf b = PB_BUF_INIT;
    while (*e) {
        if (!strncmp(e, "$__rate_interval", 16)) {
            pb_buf_append_str(&b, "5m");
            e += 16;
        } else if (!strncmp(e, "$job", 4)) {
            pb_buf_append_str(&b, ".+");
            e += 4;
        } else {
            pb_buf_append(&b, e++, 1);
        }
    }
    pb_buf_append(&b, "", 1);
    return (char *)b.data;
}

static void test_dashboard(const char *scrape_text)
{
    const char *path = PB_SOURCE_DIR "/docs/monitoring/grafana-postbox.json";
    json_error_t jerr;
    json_t *dash = json_load_file(path, 0, &jerr);
    CHECKF(dash != NULL, "%s: %s", path, jerr.text);
    json_t *exprs = json_array();
    collect_exprs(json_object_get(dash, "panels"), exprs);
    CHECKF(json_array_size(exprs) >= 20, "%zu queries in the dashboard", json_array_size(exprs));
    pb_buf rules = PB_BUF_INIT;
    pb_buf_append_str(&rules, "groups:\n  - name: grafana-postbox\n    rules:\n");
    size_t i, names = 0;
    const json_t *e;
    json_array_foreach(exprs, i, e)
    {
        char *c = concrete(json_string_value(e));
        json_t *q = json_string(c);
        char *quoted = json_dumps(q, JSON_ENCODE_ANY); /* a JSON string is a YAML scalar */
        char line[96];
        snprintf(line, sizeof line, "      - record: dashboard:query_%zu\n        expr: ", i);
        pb_buf_append_str(&rules, line);
        pb_buf_append_str(&rules, quoted);
        pb_buf_append_str(&rules, "\n");
        free(quoted);
        json_decref(q);
        /* every postbox_ and process_ name is served */
        for (const char *p = c; *p; p++) {
            if ((strncmp(p, "postbox_", 8) && strncmp(p, "process_", 8)) ||
                (p > c && (isalnum((unsigned char)p[-1]) || p[-1] == '_' || p[-1] == ':')))
                continue;
            size_t n =
                strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:");
            char name[128], want[160];
            snprintf(name, sizeof name, "%.*s", (int)n, p);
            static const char *const sfx[] = {"_bucket", "_sum", "_count"};
            for (size_t k = 0; k < 3; k++) {
                size_t l = strlen(name), sl = strlen(sfx[k]);
                if (l > sl && !strcmp(name + l - sl, sfx[k])) {
                    snprintf(want, sizeof want, "# TYPE %.*s histogram\n", (int)(l - sl), name);
                    if (strstr(scrape_text, want)) name[l - sl] = '\0';
                }
            }
            snprintf(want, sizeof want, "# TYPE %s ", name);
            CHECKF(strstr(scrape_text, want) != NULL, "the dashboard uses %s, not in /metrics",
                   name);
            names++;
            p += n - 1;
        }
        free(c);
    }
    CHECKF(names >= 20, "%zu metric names checked", names);
    pb_buf_append(&rules, "", 1);
    /* promtool reads the rules from a file */
    char *dir = pbt_tmpdir("dashrules");
    char file[512];
    snprintf(file, sizeof file, "%s/dashboard-rules.yml", dir);
    FILE *f = fopen(file, "w");
    fputs((const char *)rules.data, f);
    fclose(f);
    char *args[] = {"check", "rules", file, NULL};
    promtool_run(args, "", "the dashboard's queries");
    printf("dashboard: %zu queries, %zu metric names checked\n", json_array_size(exprs), names);
    pbt_rmrf(dir);
    free(dir);
    pb_buf_free(&rules);
    json_decref(exprs);
    json_decref(dash);
}

/* ---- waiting ----------------------------------------------------------------------------- */

struct inbox_wait {
    const pbt_daemon *d;
    size_t want;
};

static bool inbox_has(void *vctx)
{
    struct inbox_wait *w = vctx;
    long st;
    json_t *r = pbt_admin(w->d, "GET", "/v1/inbox?after=0&limit=1000", NULL, &st);
    size_t n = json_array_size(json_object_get(r, "events"));
    json_decref(r);
    return n >= w->want;
}

struct queued_wait {
    const pbt_daemon *d;
    int want;
};

/* The peers in queued mode reach `want`. */
static bool queued_peers(void *vctx)
{
    struct queued_wait *w = vctx;
    long st;
    json_t *r = pbt_admin(w->d, "GET", "/v1/peers?mode=queued", NULL, &st);
    bool ok = json_integer_value(json_object_get(r, "total")) >= w->want;
    json_decref(r);
    return ok;
}

struct forgot_wait {
    const pbt_daemon *d;
    const char *peer;
};

/* d holds nothing for peer: what it delivered is forgotten (a postbox's forgets may wait
 * up to a second after the delivery). */
static bool forgot(void *vctx)
{
    struct forgot_wait *w = vctx;
    long st;
    json_t *r = pbt_admin(w->d, "GET", "/v1/peers", NULL, &st);
    json_t *peers = json_object_get(r, "peers"), *p;
    size_t i;
    bool ok = false;
    json_array_foreach(peers, i, p)
    {
        if (!strcmp(json_string_value(json_object_get(p, "server_id")), w->peer))
            ok = json_integer_value(json_object_get(p, "queued")) == 0;
    }
    json_decref(r);
    return ok;
}

struct samples_wait {
    const pbt_daemon *d;
    json_int_t queued;
};

/* The newest history sample shows `queued` events. */
static bool sample_shows(void *vctx)
{
    struct samples_wait *w = vctx;
    long st;
    json_t *r = pbt_admin(w->d, "GET", "/v1/stats/history", NULL, &st);
    json_t *s = json_object_get(r, "samples");
    json_t *last = json_array_get(s, json_array_size(s) - 1);
    /* the whole state the test then checks: a sample may see the events queued while the
     * down peers are still being retried (push mode), before all three are queued */
    bool ok = json_integer_value(json_object_get(last, "queued_events")) == w->queued &&
              json_integer_value(json_object_get(last, "queued_peers")) == 3 &&
              json_integer_value(json_object_get(last, "peers_queued")) == 3 &&
              json_integer_value(json_object_get(last, "peers_push")) == 1;
    json_decref(r);
    return ok;
}

static bool submit(const pbt_daemon *a, const char *to, int n, const char *sid)
{
    json_t *evs = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(
            evs, json_pack("{s:{s:s,s:s}}", "userAddedToGuild", "userId", "7", "guildId", "42"));
    json_t *body = json_pack("{s:s,s:o}", "to", to, "events", evs);
    if (sid) json_object_set_new(body, "submission_id", json_string(sid));
    long st;
    json_t *r = pbt_admin(a, "POST", "/v1/outbox", body, &st);
    json_decref(r);
    CHECKF(st == 202, "submit %d to %s: %ld", n, to, st);
    return st == 202;
}

/* Runs postboxctl with args against d; its stdout (caller frees). */
static char *ctl(const pbt_daemon *d, const char *args, int *rc)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s --admin %s %s 2>&1", PB_POSTBOXCTL, d->admin, args);
    FILE *p = popen(cmd, "r");
    char *out = calloc(1, 65536);
    if (!p || !out) abort();
    size_t n = fread(out, 1, 65535, p);
    out[n] = '\0';
    int st = pclose(p);
    *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return out;
}

/* ---- the cases ----------------------------------------------------------------------------- */

static void check_families_zero(const json_t *m, const char *who)
{
    static const char *const zero[] = {
        "postbox_events_submitted_total",
        "postbox_submissions_duplicate_total",
        "postbox_events_pushed_total{result=\"ok\"}",
        "postbox_events_pushed_total{result=\"retried\"}",
        "postbox_events_pushed_total{result=\"queued\"}",
        "postbox_events_pushed_total{result=\"parked\"}",
        "postbox_events_received_total{kind=\"userAddedToGuild\",path=\"push\"}",
        "postbox_events_received_total{kind=\"userRejectedInvite\",path=\"pull\"}",
        "postbox_events_duplicate_total{path=\"push\"}",
        "postbox_events_duplicate_total{path=\"pull\"}",
        "postbox_hrpc_client_request_duration_seconds_count{method=\"Push\"}",
        "postbox_hrpc_client_request_duration_seconds_count{method=\"Pull\"}",
        "postbox_key_fetches_total{result=\"ok\"}",
        "postbox_key_fetches_total{result=\"error\"}",
        "postbox_key_fetches_total{result=\"rate_limited\"}",
        "postbox_hrpc_server_request_duration_seconds_count{method=\"Push\"}",
        "postbox_queued_events",
        "postbox_queued_peers",
        "postbox_oldest_queued_age_seconds",
        "postbox_peers{mode=\"queued\"}",
        "postbox_peers{mode=\"parked\"}",
        "postbox_inbox_last_seq",
        "postbox_inbox_unread_events",
        "postbox_inbox_oldest_unread_age_seconds",
    };
    for (size_t i = 0; i < sizeof zero / sizeof zero[0]; i++)
        CHECKF(has(m, zero[i]) && val(m, zero[i]) == 0, "%s before traffic: %s = %g (present %d)",
               who, zero[i], val(m, zero[i]), has(m, zero[i]));
}

/* Returns once the wall clock's millisecond has moved on (bounded: the clock ticks). */
static void next_ms(void)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_REALTIME, &t0);
    do
        clock_gettime(CLOCK_REALTIME, &t);
    while (t.tv_sec == t0.tv_sec && t.tv_nsec / 1000000 == t0.tv_nsec / 1000000);
}

static void test_metrics(pbt_daemon *a, pbt_daemon *b, uint16_t mport, const char *down[3])
{
    char *ta = scrape(a), *tb = scrape(b);
    json_t *a0 = parse(ta), *b0 = parse(tb);
    free(ta);
    free(tb);
    check_families_zero(a0, "A");
    check_families_zero(b0, "B");
    char key[256];
    snprintf(key, sizeof key, "postbox_build_info{version=\"%s\",store=\"%s\"}", PB_VERSION,
             g_pg ? "postgres" : "sqlite");
    CHECK_VAL(a0, key, 1);
    CHECKF(val(a0, "postbox_start_time_seconds") > 1.7e9, "start time %g",
           val(a0, "postbox_start_time_seconds"));

    /* traffic: 6 events A->B (one repeated submission), 6 to three peers that are down */
    submit(a, b->server_id, 3, NULL);
    submit(a, b->server_id, 2, NULL);
    submit(a, b->server_id, 1, "sub-1");
    submit(a, b->server_id, 1, "sub-1"); /* a repeat: nothing queued */
    struct inbox_wait iw = {b, 6};
    CHECKF(pbt_wait_for(inbox_has, &iw, 30000), "B received the 6 events");
    struct forgot_wait fw = {a, b->server_id};
    CHECKF(pbt_wait_for(forgot, &fw, 30000), "A forgot what B received");
    /* in three different milliseconds: the top-2 order is by the oldest event's time */
    submit(a, down[0], 2, NULL);
    next_ms();
    submit(a, down[1], 3, NULL);
    next_ms();
    submit(a, down[2], 1, NULL);
    struct queued_wait qw = {a, 3};
    CHECKF(pbt_wait_for(queued_peers, &qw, 30000), "the three peers that are down are queued");
    /* a Push without a token and a request to an unknown path, at B */
    const char *hdrs[] = {"Content-Type: application/hrpc", NULL};
    pbt_http h;
    pbt_http_do("http", b->port, "POST", "/protocol.sync.v1.PostboxService/Push", hdrs, "", 0, NULL,
                &h);
    CHECK_INT(h.status, 401);
    pbt_http_clear(&h);
    pbt_http_do("http", b->port, "POST", "/protocol.sync.v1.PostboxService/Nope", hdrs, "", 0, NULL,
                &h);
    CHECK_INT(h.status, 404);
    pbt_http_clear(&h);
    /* B's reader has read up to 4 */
    long st;
    json_decref(pbt_admin(b, "GET", "/v1/inbox?after=4", NULL, &st));

    ta = scrape(a);
    tb = scrape(b);
    json_t *a1 = parse(ta), *b1 = parse(tb);
    CHECK_MOVED(a0, a1, "postbox_events_submitted_total", 12);
    CHECK_MOVED(a0, a1, "postbox_submissions_duplicate_total", 1);
    /* A pushed the 6 events to B, B received them by Push (batched: 1 to 6 Pushes answered
     * 200), one Push got 401 (token refused), one request went to an unknown path */
    CHECK_MOVED(a0, a1, "postbox_events_pushed_total{result=\"ok\"}", 6);
    CHECK_MOVED(b0, b1, "postbox_events_received_total{kind=\"userAddedToGuild\",path=\"push\"}",
                6);
    double pushes =
        moved(b0, b1, "postbox_hrpc_server_requests_total{method=\"Push\",code=\"200\"}");
    CHECKF(pushes >= 1 && pushes <= 6, "%g Pushes answered 200 for 6 events", pushes);
    CHECK_MOVED(b0, b1, "postbox_hrpc_server_requests_total{method=\"Push\",code=\"401\"}", 1);
    CHECK_MOVED(b0, b1, "postbox_hrpc_server_requests_total{method=\"other\",code=\"404\"}", 1);
    CHECK_MOVED(b0, b1, "postbox_hrpc_server_request_duration_seconds_count{method=\"Push\"}",
                pushes + 1);
    CHECKF(moved(a0, a1, "postbox_hrpc_client_request_duration_seconds_count{method=\"Push\"}") >=
               pushes,
           "A timed its Pushes");
    CHECK_MOVED(b0, b1, "postbox_auth_refusals_total{identifier=\"h.bad-auth\"}", 1);
    /* A served B's key fetch */
    CHECKF(val(a1, "postbox_hrpc_server_requests_total{method=\"Key\",code=\"200\"}") >= 1,
           "A served its key");
    /* store: every write is a commit; SQLite counts writes per group commit */
    double commits = moved(a0, a1, "postbox_store_commit_duration_seconds_count");
    CHECKF(commits >= 7, "A committed %g transactions (7 submissions at least)", commits);
    CHECK_MOVED(a0, a1, "postbox_store_commit_duration_seconds_bucket{le=\"+Inf\"}", commits);
    if (g_pg)
        CHECK_VAL(a1, "postbox_store_commit_batch_writes_count", 0);
    else
        CHECK_MOVED(a0, a1, "postbox_store_commit_batch_writes_count", commits);
    /* store gauges */
    CHECK_VAL(a1, "postbox_queued_events", 6);
    CHECK_VAL(a1, "postbox_queued_peers", 3);
    CHECK_VAL(a1, "postbox_peers{mode=\"queued\"}", 3);
    CHECK_VAL(a1, "postbox_peers{mode=\"push\"}", 1);
    CHECK_VAL(a1, "postbox_peers{mode=\"parked\"}", 0);
    CHECKF(val(a1, "postbox_oldest_queued_age_seconds") > 0, "oldest age %g",
           val(a1, "postbox_oldest_queued_age_seconds"));
    /* top 2 by oldest backlog: the first two peers that are down, not the third */
    snprintf(key, sizeof key, "postbox_peer_queued_events{peer=\"%s\"}", down[0]);
    CHECK_VAL(a1, key, 2);
    snprintf(key, sizeof key, "postbox_peer_queued_events{peer=\"%s\"}", down[1]);
    CHECK_VAL(a1, key, 3);
    snprintf(key, sizeof key, "postbox_peer_queued_events{peer=\"%s\"}", down[2]);
    CHECKF(!has(a1, key), "no series for the third peer");
    snprintf(key, sizeof key, "postbox_peer_oldest_queued_age_seconds{peer=\"%s\"}", down[0]);
    CHECKF(has(a1, key) && val(a1, key) >= val(a1, "postbox_oldest_queued_age_seconds") - 1, "%s",
           key);
    CHECK_VAL(b1, "postbox_inbox_last_seq", 6);
    CHECK_VAL(b1, "postbox_inbox_unread_events", 2);
    CHECKF(val(b1, "postbox_inbox_oldest_unread_age_seconds") > 0, "oldest unread age %g",
           val(b1, "postbox_inbox_oldest_unread_age_seconds"));
    CHECK(has(a1, "postbox_open_connections{listener=\"federation\"}"));
    CHECKF(val(a1, "postbox_open_connections{listener=\"admin\"}") >= 1, "the scrape's own");
    CHECK(has(a1, "postbox_open_connections{listener=\"metrics\"}"));
    CHECK(!has(b1, "postbox_open_connections{listener=\"metrics\"}"));
    promtool_ok(ta, "A under traffic");
    promtool_ok(tb, "B under traffic");
    test_dashboard(ta);
    /* process_* (this daemon's own figures) and the delivery latency of A's 6 events */
    CHECKF(val(a1, "process_open_fds") >= 5 &&
               val(a1, "process_open_fds") < val(a1, "process_max_fds"),
           "process_open_fds %g of %g", val(a1, "process_open_fds"), val(a1, "process_max_fds"));
    CHECKF(val(a1, "process_resident_memory_bytes") > 1e6, "rss %g",
           val(a1, "process_resident_memory_bytes"));
    CHECKF(has(a1, "process_cpu_seconds_total"), "process_cpu_seconds_total");
    double started = val(a1, "process_start_time_seconds");
    CHECKF(started > (double)time(NULL) - 600 && started <= (double)time(NULL) + 1,
           "process_start_time_seconds %g", started);
    CHECK_MOVED(a0, a1, "postbox_delivery_latency_seconds_count", 6);
    /* the top-N peers never had a successful Push: no last-success series for them */
    snprintf(key, sizeof key, "postbox_peer_last_success_timestamp_seconds{peer=\"%s\"}", down[0]);
    CHECKF(!has(a1, key), "%s", key);
    free(ta);
    free(tb);

    /* the reader catches up: nothing unread */
    json_decref(pbt_admin(b, "GET", "/v1/inbox?after=6", NULL, &st));
    tb = scrape(b);
    json_t *b2 = parse(tb);
    CHECK_VAL(b2, "postbox_inbox_unread_events", 0);
    CHECK_VAL(b2, "postbox_inbox_oldest_unread_age_seconds", 0);
    free(tb);

    /* metrics_listen: the same exposition without a token, and nothing else */
    char *ctype = NULL;
    char *tm = get_text(mport, "/metrics", NULL, &st, &ctype);
    CHECK_INT(st, 200);
    CHECKF(ctype && !strcmp(ctype, "text/plain; version=0.0.4; charset=utf-8"), "ctype %s",
           ctype ? ctype : "(none)");
    CHECK(strstr(tm, "postbox_queued_events 6\n") != NULL);
    free(tm);
    free(ctype);
    free(get_text(mport, "/v1/peers", NULL, &st, NULL));
    CHECK_INT(st, 404);
    free(get_text(mport, "/", NULL, &st, NULL));
    CHECK_INT(st, 404);
    json_decref(a0);
    json_decref(a1);
    json_decref(b0);
    json_decref(b1);
    json_decref(b2);
}

static void test_access(void)
{
    pbt_daemon *c = pbt_daemon_new("monC", NULL);
    pbt_daemon_set_token(c, TOKEN);
    CHECK(pbt_daemon_start(c));
    long st;
    char *ctype = NULL, *t = get_text(c->admin_port, "/metrics", NULL, &st, NULL);
    CHECK_INT(st, 401);
    free(t);
    t = get_text(c->admin_port, "/metrics", "wrong-token-0123456789", &st, NULL);
    CHECK_INT(st, 401);
    free(t);
    t = get_text(c->admin_port, "/metrics", TOKEN, &st, NULL);
    CHECK_INT(st, 200);
    CHECK(strstr(t, "# TYPE postbox_queued_events gauge\n") != NULL);
    free(t);
    t = get_text(c->admin_port, "/v1/stats/history", NULL, &st, NULL);
    CHECK_INT(st, 401);
    free(t);
    /* the status page holds no secret: served without the token (it asks for it) */
    t = get_text(c->admin_port, "/", NULL, &st, &ctype);
    CHECK_INT(st, 200);
    CHECKF(ctype && !strncmp(ctype, "text/html", 9), "ctype %s", ctype ? ctype : "(none)");
    CHECK(strstr(t, "<html") != NULL && strstr(t, "</html>") != NULL);
    free(t);
    free(ctype);
    t = get_text(c->admin_port, "/v1/qshape", TOKEN, &st, NULL);
    CHECK_INT(st, 200);
    free(t);
    pbt_daemon_free(c);
}

static void test_history(pbt_daemon *a)
{
    struct samples_wait w = {a, 6};
    CHECKF(pbt_wait_for(sample_shows, &w, 20000),
           "a sample shows the 6 queued events of the 3 queued peers");
    long st;
    json_t *r = pbt_admin(a, "GET", "/v1/stats/history", NULL, &st);
    CHECK_INT(st, 200);
    CHECK_INT(json_integer_value(json_object_get(r, "interval_s")), 1);
    json_t *s = json_object_get(r, "samples"), *x;
    size_t i;
    CHECKF(json_array_size(s) >= 2, "%zu samples", json_array_size(s));
    json_int_t prev = 0;
    json_array_foreach(s, i, x)
    {
        json_int_t t = json_integer_value(json_object_get(x, "t"));
        CHECKF(t >= prev, "samples in time order");
        prev = t;
    }
    x = json_array_get(s, json_array_size(s) - 1);
    CHECK_INT(json_integer_value(json_object_get(x, "queued_peers")), 3);
    CHECK_INT(json_integer_value(json_object_get(x, "peers_queued")), 3);
    CHECK_INT(json_integer_value(json_object_get(x, "peers_push")), 1);
    CHECK(json_integer_value(json_object_get(x, "oldest_queued_age_s")) >= 0);
    json_decref(r);
}

static void test_peers(pbt_daemon *a, pbt_daemon *b, const char *down[3])
{
    long st;
    json_t *r = pbt_admin(a, "GET", "/v1/peers", NULL, &st);
    CHECK_INT(st, 200);
    CHECK_INT(json_array_size(json_object_get(r, "peers")), 4);
    /* the unpaged shape: the peers and the renames peers announced without proof */
    CHECK(json_object_size(r) == 3 && json_is_array(json_object_get(r, "renames_in")) &&
          json_integer_value(json_object_get(r, "renames_in_total")) == 0);
    json_decref(r);

    r = pbt_admin(a, "GET", "/v1/peers?sort=queued&order=desc&limit=2", NULL, &st);
    CHECK_INT(st, 200);
    json_t *p = json_object_get(r, "peers");
    CHECK_INT(json_array_size(p), 2);
    CHECK_INT(json_integer_value(json_object_get(r, "total")), 4);
    CHECK_STR(json_string_value(json_object_get(json_array_get(p, 0), "server_id")), down[1]);
    CHECK_STR(json_string_value(json_object_get(json_array_get(p, 1), "server_id")), down[0]);
    json_t *counts = json_object_get(r, "counts");
    CHECK_INT(json_integer_value(json_object_get(counts, "queued")), 3);
    CHECK_INT(json_integer_value(json_object_get(counts, "push")), 1);
    CHECK_INT(json_integer_value(json_object_get(r, "queued_events")), 6);
    CHECK(json_integer_value(json_object_get(r, "oldest_queued_age_s")) >= 0 &&
          json_is_integer(json_object_get(r, "oldest_queued_age_s")));
    json_decref(r);

    r = pbt_admin(a, "GET", "/v1/peers?sort=queued&order=desc&limit=2&offset=2", NULL, &st);
    p = json_object_get(r, "peers");
    CHECK_INT(json_array_size(p), 2);
    CHECK_STR(json_string_value(json_object_get(json_array_get(p, 0), "server_id")), down[2]);
    CHECK_STR(json_string_value(json_object_get(json_array_get(p, 1), "server_id")), b->server_id);
    json_decref(r);

    r = pbt_admin(a, "GET", "/v1/peers?mode=push", NULL, &st);
    p = json_object_get(r, "peers");
    CHECK_INT(json_integer_value(json_object_get(r, "total")), 1);
    CHECK_STR(json_string_value(json_object_get(json_array_get(p, 0), "server_id")), b->server_id);
    json_decref(r);

    char path[256];
    snprintf(path, sizeof path, "/v1/peers?q=%s", strchr(down[2], ':') + 1);
    r = pbt_admin(a, "GET", path, NULL, &st);
    CHECK_INT(json_integer_value(json_object_get(r, "total")), 1);
    json_decref(r);
    r = pbt_admin(a, "GET", "/v1/peers?q=COULDN", NULL, &st); /* last_error, any case */
    CHECK_INT(json_integer_value(json_object_get(r, "total")), 3);
    json_decref(r);
    r = pbt_admin(a, "GET", "/v1/peers?rename_pending=false&sort=oldest_queued_age_s", NULL, &st);
    CHECK_INT(json_integer_value(json_object_get(r, "total")), 4);
    json_decref(r);

    static const char *const bad[] = {"/v1/peers?limit=0",         "/v1/peers?limit=1001",
                                      "/v1/peers?offset=x",        "/v1/peers?sort=nope",
                                      "/v1/peers?order=up",        "/v1/peers?mode=lost",
                                      "/v1/peers?rename_pending=2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = pbt_admin(a, "GET", bad[i], NULL, &st);
        CHECKF(st == 400 && json_string_value(json_object_get(r, "error")), "%s: %ld", bad[i], st);
        json_decref(r);
    }
}

static void test_qshape(pbt_daemon *a, const char *down[3])
{
    long st;
    json_t *r = pbt_admin(a, "GET", "/v1/qshape", NULL, &st);
    CHECK_INT(st, 200);
    json_t *total = json_object_get(r, "total"), *peers = json_object_get(r, "peers");
    CHECK_INT(json_integer_value(json_object_get(total, "total")), 6);
    CHECK_INT(json_integer_value(json_array_get(json_object_get(total, "counts"), 0)), 6);
    CHECK_INT(json_array_size(json_object_get(r, "buckets_min")), 7);
    CHECK_INT(json_integer_value(json_object_get(r, "queued_peers")), 3);
    CHECK_INT(json_array_size(peers), 3);
    CHECK_STR(json_string_value(json_object_get(json_array_get(peers, 0), "server_id")), down[1]);
    json_decref(r);
    r = pbt_admin(a, "GET", "/v1/qshape?top=1", NULL, &st);
    CHECK_INT(json_array_size(json_object_get(r, "peers")), 1);
    CHECK_INT(json_integer_value(json_object_get(json_object_get(r, "total"), "total")), 6);
    json_decref(r);
    r = pbt_admin(a, "GET", "/v1/qshape?top=0", NULL, &st);
    CHECK_INT(st, 400);
    json_decref(r);

    int rc;
    char *out = ctl(a, "qshape", &rc), want[256];
    CHECK_INT(rc, 0);
    /* header, TOTAL, then the peers by size */
    CHECKF(!strncmp(out, "PEER", 4) && strstr(out, "T  5  10  20  40  80  160  160+\n"), "%s", out);
    char *l1 = strchr(out, '\n'), *l2 = l1 ? strchr(l1 + 1, '\n') : NULL;
    CHECKF(l1 && !strncmp(l1 + 1, "TOTAL ", 6), "%s", out);
    CHECKF(l2 && !strncmp(l2 + 1, down[1], strlen(down[1])), "largest queue first: %s", out);
    snprintf(want, sizeof want, "%s  3  3   0   0   0   0    0     0\n", down[1]);
    CHECKF(strstr(out, want) != NULL, "want \"%s\" in\n%s", want, out);
    free(out);
    out = ctl(a, "qshape --top 2", &rc);
    CHECK_INT(rc, 0);
    CHECKF(strstr(out, "(2 of 3 peers with queued events shown)") && !strstr(out, down[2]), "%s",
           out);
    free(out);
    out = ctl(a, "qshape --json", &rc);
    CHECK_INT(rc, 0);
    json_t *j = json_loads(out, 0, NULL);
    CHECKF(j && json_integer_value(json_object_get(json_object_get(j, "total"), "total")) == 6,
           "--json: %s", out);
    json_decref(j);
    free(out);
    out = ctl(a, "qshape --top 0", &rc);
    CHECK_INT(rc, 2);
    free(out);
}

static void test_json_log(const pbt_daemon *a)
{
    FILE *f = fopen(a->log_path, "r");
    CHECK(f != NULL);
    if (!f) return;
    char line[8192];
    int lines = 0, good = 0, with_peer = 0;
    while (fgets(line, sizeof line, f)) {
        lines++;
        json_t *j = json_loads(line, 0, NULL);
        bool ok = json_is_object(j) && json_is_string(json_object_get(j, "ts")) &&
                  json_is_string(json_object_get(j, "level")) &&
                  json_is_string(json_object_get(j, "msg")) && json_object_get(j, "peer");
        if (ok)
            good++;
        else if (good == lines - 1)
            CHECKF(false, "not a json log line: %s", line);
        with_peer += json_is_string(json_object_get(j, "peer"));
        json_decref(j);
    }
    fclose(f);
    CHECKF(lines >= 5 && good == lines, "%d of %d lines are json objects", good, lines);
    CHECKF(with_peer >= 1, "some lines name a peer");
}

int main(void)
{
    const char *store = getenv("PBT_STORE");
    g_pg = store && !strcmp(store, "postgres");
    uint16_t mport = pbt_free_port();
    char mlisten[64], d0[64], d1[64], d2[64];
    snprintf(mlisten, sizeof mlisten, "127.0.0.1:%u", mport);
    const char *ax[] = {"--log-format",
                        "json",
                        "--metrics-listen",
                        mlisten,
                        "--metrics-top-peers",
                        "2",
                        "--push-retries",
                        "0",
                        "--retry-base-ms",
                        "10",
                        "--backoff-min",
                        "600",
                        "--stats-interval",
                        "1",
                        NULL};
    pbt_daemon *a = pbt_daemon_new("monA", ax), *b = pbt_daemon_new("monB", NULL);
    /* three peers that are down: free ports, distinct, none of them a daemon's */
    uint16_t used[8] = {mport, a->port, a->admin_port, b->port, b->admin_port};
    char *dn[3] = {d0, d1, d2};
    for (int i = 0; i < 3; i++) {
        bool dup;
        do {
            used[5 + i] = pbt_free_port();
            dup = false;
            for (int k = 0; k < 5 + i; k++)
                dup = dup || used[k] == used[5 + i];
        } while (dup);
        snprintf(dn[i], 64, "127.0.0.1:%u", used[5 + i]);
    }
    const char *down[3] = {d0, d1, d2};
    if (!pbt_daemon_start(a) || !pbt_daemon_start(b)) {
        CHECKF(false, "daemons start");
        pbt_daemon_free(a);
        pbt_daemon_free(b);
        return pbt_finish();
    }
    test_metrics(a, b, mport, down);
    test_history(a);
    test_peers(a, b, down);
    test_qshape(a, down);
    test_access();
    CHECK_INT(pbt_daemon_stop(a), 0);
    test_json_log(a);
    if (pbt_failed) {
        pbt_daemon_dump_log(a);
        pbt_daemon_dump_log(b);
    }
    pbt_daemon_free(a);
    pbt_daemon_free(b);
    return pbt_finish();
}
