/*
 * statuspage_test - the status page (GET / on the admin listener) in a real browser:
 * Debian's headless Chromium driven through chromedriver's WebDriver HTTP API (libcurl +
 * jansson; nothing downloaded, no network beyond 127.0.0.1).
 *
 * A (admin token set) sends to B (up), to P (answers every Push with 400: parked) and to
 * 64 peers that are down (queued: 1, 2, 3, 4 events for the first four, 1 for the others).
 * Then, in the browser:
 *   token     the page asks for the admin token, and loads once it is given
 *   renames   A renames itself: the new ID, and 64 pending rename notices (6 rows shown)
 *   numbers   server ID and key, the summary (peers, queued, parked, queued events), the
 *             chart, a first page of 50 peer rows with the right mode and queue depth, the
 *             parked row with its sequence number, the page counter
 *   controls  sorting by queue depth, filtering by a server ID, the next page
 *   queue     a queued peer's Flush tries it now (logged); its Drop dismissed changes
 *             nothing, confirmed empties its queue (the row shows 0, a queueDropped notice
 *             in A's inbox)
 *   buttons   Drop with the confirmation dismissed changes nothing; Retry confirmed (P now
 *             accepts) turns P back to push, in the API and on the page
 * and writes screenshots of the page with queued and parked peers to
 * BUILD_DIR/status-page.png, and of its peers table with the queue controls to
 * BUILD_DIR/status-page-peers.png, for people to look at.
 *
 * Needs /usr/bin/chromedriver and Chromium (Debian packages chromium-driver and chromium,
 * installed by scripts/bootstrap test): without them the test fails, saying so.
 */
#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <sodium.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "crypto/auth.h"
#include "harness.h"
#include "util/buf.h"
#include "wire/wire.h"

#define TOKEN "status-page-test-token-42"
#define NDOWN 64
#define WD_ELEMENT "element-6066-11e4-a52e-4f735466cecf"

static uint16_t g_wd_port;
static char g_session[128];

/* ---- WebDriver over libcurl ---------------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    pb_buf_append(ud, p, size * n);
    return size * n;
}

/* One WebDriver call (path relative to the session when it starts with '/' after
 * "session"); body (stolen) may be NULL. Returns the answer's "value" (new reference) or
 * NULL, with *status the HTTP status. */
static json_t *wd(const char *method, const char *path, json_t *body, long *status)
{
    char url[1024];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", g_wd_port, path);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    pb_buf out = PB_BUF_INIT;
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 90000L);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &out);
    if (!strcmp(method, "POST")) curl_easy_setopt(c, CURLOPT_POSTFIELDS, text ? text : "{}");
    long st = 0;
    if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &st);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    free(text);
    json_t *j = out.len ? json_loadb((const char *)out.data, out.len, 0, NULL) : NULL;
    pb_buf_free(&out);
    json_t *v = json_incref(json_object_get(j, "value"));
    json_decref(j);
    if (status) *status = st;
    return v;
}

/* A call on the current session: "/url" -> "/session/ID/url". */
static json_t *wds(const char *method, const char *sub, json_t *body, long *status)
{
    char path[512];
    snprintf(path, sizeof path, "/session/%s%s", g_session, sub);
    return wd(method, path, body, status);
}

/* Runs script (a function body; arguments as `arguments`) in the page; its JSON result. */
static json_t *run(const char *script)
{
    long st;
    json_t *v =
        wds("POST", "/execute/sync", json_pack("{s:s,s:[]}", "script", script, "args"), &st);
    if (st != 200) {
        char *t = v ? json_dumps(v, JSON_COMPACT) : NULL;
        fprintf(stderr, "script failed (%ld): %s\n  %s\n", st, t ? t : "", script);
        free(t);
    }
    return v;
}

/* The result of script as a string (caller frees; "" when not a string). */
static char *run_str(const char *script)
{
    json_t *v = run(script);
    char *s = strdup(json_is_string(v) ? json_string_value(v) : "");
    json_decref(v);
    return s;
}

struct page_wait {
    const char *script; /* returns true when the condition holds */
};

static bool page_true(void *vctx)
{
    struct page_wait *w = vctx;
    json_t *v = run(w->script);
    bool ok = json_is_true(v);
    json_decref(v);
    return ok;
}

/* What the page and the browser say, for a wait that failed: the page's state, what it
 * fetched (with status and time), its text, and Chromium's console. */
static void page_diag(void)
{
    json_t *v = run("var b = document.body;"
                    "return JSON.stringify({href: location.href, ready: document.readyState,"
                    " state: b ? b.dataset.state : null,"
                    " updated: (document.getElementById('updated') || {}).textContent,"
                    " fetched: performance.getEntriesByType('resource').map(function (e) {"
                    "   return e.name + ' ' + (e.responseStatus || '?') + ' ' +"
                    "          Math.round(e.duration) + ' ms'; }),"
                    " text: b ? b.innerText.slice(0, 600) : null});");
    fprintf(stderr, "statuspage_test: the page: %s\n",
            json_is_string(v) ? json_string_value(v) : "(no answer)");
    json_decref(v);
    long st;
    json_t *log = wds("POST", "/se/log", json_pack("{s:s}", "type", "browser"), &st);
    size_t i;
    json_t *e;
    fprintf(stderr, "statuspage_test: the browser's console (%ld, %zu entries):\n", st,
            json_array_size(log));
    json_array_foreach(log, i, e)
    {
        fprintf(stderr, "  %s %s\n", json_string_value(json_object_get(e, "level")),
                json_string_value(json_object_get(e, "message")));
    }
    json_decref(log);
}

static bool wait_page(const char *script, int timeout_ms)
{
    struct page_wait w = {script};
    bool ok = pbt_wait_for(page_true, &w, timeout_ms);
    CHECKF(ok, "the page never satisfied: %s", script);
    if (!ok) page_diag();
    return ok;
}

/* The WebDriver ID of the element matching css, or NULL (caller frees); *st (may be NULL)
 * gets the HTTP status. */
static char *find_quiet(const char *css, long *st)
{
    long s;
    json_t *v =
        wds("POST", "/element", json_pack("{s:s,s:s}", "using", "css selector", "value", css), &s);
    const char *id = json_string_value(json_object_get(v, WD_ELEMENT));
    char *out = s == 200 && id ? strdup(id) : NULL;
    json_decref(v);
    if (st) *st = s;
    return out;
}

static char *find(const char *css)
{
    long st;
    char *out = find_quiet(css, &st);
    CHECKF(out != NULL, "element %s: %ld", css, st);
    return out;
}

/* Clicks the element matching css. The page re-renders its tables (every refresh, and
 * after each action), which makes an element found just before stale (404): it is then
 * found again and clicked, within a bound. */
static bool click(const char *css)
{
    long st = 0;
    int64_t until = pbt_now_ms() + PBT_BOUND_MS;
    do {
        char *id = find_quiet(css, &st);
        if (id) {
            char sub[256];
            snprintf(sub, sizeof sub, "/element/%s/click", id);
            json_decref(wds("POST", sub, json_object(), &st));
            free(id);
        }
        if (st == 200) return true;
        usleep(50 * 1000);
    } while (st == 404 && pbt_now_ms() < until);
    CHECKF(st == 200, "click %s: %ld", css, st);
    return false;
}

static bool type_into(const char *css, const char *text)
{
    char *id = find(css);
    if (!id) return false;
    char sub[256];
    snprintf(sub, sizeof sub, "/element/%s/value", id);
    long st;
    json_decref(wds("POST", sub, json_pack("{s:s}", "text", text), &st));
    free(id);
    CHECKF(st == 200, "type into %s: %ld", css, st);
    return st == 200;
}

/* Lines of the log at path holding a and b. */
static int count_in(const char *path, const char *a, const char *b)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, a) && strstr(line, b)) n++;
    if (f) fclose(f);
    return n;
}

/* The confirmation dialog's text (caller frees), then accept or dismiss it. */
static char *answer_confirm(bool accept)
{
    long st;
    char *text = NULL;
    for (int i = 0; i < 100 && !text; i++) { /* the dialog opens right after the click */
        json_t *v = wds("GET", "/alert/text", NULL, &st);
        if (st == 200 && json_is_string(v)) text = strdup(json_string_value(v));
        json_decref(v);
        if (!text) usleep(50 * 1000);
    }
    CHECKF(text != NULL, "a confirmation dialog opened");
    json_decref(wds("POST", accept ? "/alert/accept" : "/alert/dismiss", json_object(), &st));
    CHECKF(st == 200, "answer the dialog: %ld", st);
    return text;
}

static bool screenshot(const char *path)
{
    long st;
    json_t *v = wds("GET", "/screenshot", NULL, &st);
    const char *b64 = json_string_value(v);
    bool ok = false;
    if (st == 200 && b64) {
        size_t cap = strlen(b64), len = 0;
        unsigned char *png = malloc(cap);
        if (png && sodium_base642bin(png, cap, b64, strlen(b64), NULL, &len, NULL,
                                     sodium_base64_VARIANT_ORIGINAL) == 0) {
            FILE *f = fopen(path, "wb");
            ok = f && fwrite(png, 1, len, f) == len && len > 8 && !memcmp(png, "\x89PNG", 4);
            if (f) fclose(f);
        }
        free(png);
    }
    json_decref(v);
    CHECKF(ok, "screenshot written to %s", path);
    if (ok) printf("statuspage_test: screenshot in %s\n", path);
    return ok;
}

/* ---- chromedriver ---------------------------------------------------------------------------- */

static pid_t start_driver(const char *logdir)
{
    const char *driver = "/usr/bin/chromedriver";
    if (access(driver, X_OK) != 0) {
        CHECKF(false,
               "%s is missing: install the Debian packages chromium and chromium-driver "
               "(scripts/bootstrap test)",
               driver);
        return 0;
    }
    g_wd_port = pbt_free_port();
    char port[32], log[600];
    snprintf(port, sizeof port, "--port=%u", g_wd_port);
    snprintf(log, sizeof log, "%s/chromedriver.log", logdir);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) abort();
    if (pid == 0) {
        setpgid(0, 0); /* the driver and its browser form one process group */
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(driver, driver, port, "--allowed-ips=127.0.0.1", (char *)NULL);
        _exit(127);
    }
    setpgid(pid, pid);
    for (int64_t until = pbt_now_ms() + 20000; pbt_now_ms() < until;) {
        long st;
        json_t *v = wd("GET", "/status", NULL, &st);
        bool ready = st == 200 && json_is_true(json_object_get(v, "ready"));
        json_decref(v);
        if (ready) return pid;
        usleep(50 * 1000);
    }
    CHECKF(false, "chromedriver did not become ready (see %s)", log);
    kill(-pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return 0;
}

static bool new_session(const char *profile)
{
    const char *bin = access("/usr/lib/chromium/chromium", X_OK) == 0 ? "/usr/lib/chromium/chromium"
                                                                      : "/usr/bin/chromium";
    char udd[700];
    snprintf(udd, sizeof udd, "--user-data-dir=%s", profile);
    json_t *args = json_pack(
        "[s,s,s,s,s,s,s,s,s,s,s]", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1000", udd);
    /* the console kept for page_diag */
    json_t *caps = json_pack("{s:{s:{s:s,s:{s:s,s:o},s:{s:s}}}}", "capabilities", "alwaysMatch",
                             "browserName", "chrome", "goog:chromeOptions", "binary", bin, "args",
                             args, "goog:loggingPrefs", "browser", "ALL");
    long st;
    json_t *v = wd("POST", "/session", caps, &st);
    const char *id = json_string_value(json_object_get(v, "sessionId"));
    if (st == 200 && id) snprintf(g_session, sizeof g_session, "%s", id);
    char *t = v ? json_dumps(v, JSON_COMPACT) : NULL;
    CHECKF(st == 200 && id, "new browser session: %ld %.300s", st, t ? t : "");
    free(t);
    json_decref(v);
    return g_session[0] != 0;
}

/* ---- the postboxes -----------------------------------------------------------------------------
 */

static void submit(const pbt_daemon *a, const char *to, int n)
{
    json_t *evs = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(
            evs, json_pack("{s:{s:s,s:s}}", "userAddedToGuild", "userId", "9", "guildId", "1000"));
    long st;
    json_decref(
        pbt_admin(a, "POST", "/v1/outbox", json_pack("{s:s,s:o}", "to", to, "events", evs), &st));
    CHECKF(st == 202, "submit to %s: %ld", to, st);
}

struct mode_wait {
    const pbt_daemon *a;
    const char *query; /* /v1/peers?... */
    json_int_t total;
};

static bool peers_total(void *vctx)
{
    struct mode_wait *w = vctx;
    long st;
    json_t *r = pbt_admin(w->a, "GET", w->query, NULL, &st);
    bool ok = json_integer_value(json_object_get(r, "total")) == w->total;
    json_decref(r);
    return ok;
}

static bool wait_peers(const pbt_daemon *a, const char *query, json_int_t total)
{
    struct mode_wait w = {a, query, total};
    bool ok = pbt_wait_for(peers_total, &w, 30000);
    CHECKF(ok, "%s: total %lld", query, (long long)total);
    return ok;
}

/* B announces a rename to another ID of its own (localhost:PORT, which serves its key) the
 * way a foreign server does, without a proof of possession: A records it as pending and
 * shows it. */
static char g_announced[64];
static bool a_has_inbox(void *vctx)
{
    const pbt_daemon *a = vctx;
    long st;
    json_t *r = pbt_admin(a, "GET", "/v1/inbox?after=0&limit=1", NULL, &st);
    bool ok = json_array_size(json_object_get(r, "events")) == 1;
    json_decref(r);
    return ok;
}

static void announce_rename(const pbt_daemon *a, const pbt_daemon *b)
{
    /* first B pushes to A, so that A holds B's key */
    submit(b, a->server_id, 1);
    CHECKF(pbt_wait_for(a_has_inbox, (void *)a, 30000), "B's event reached A");
    snprintf(g_announced, sizeof g_announced, "localhost:%u", b->port);
    char path[600];
    snprintf(path, sizeof path, "%s/key", b->dir);
    pb_keys *k = NULL;
    CHECK_OK(pb_keys_load(path, &k));
    if (!k) return;
    char *authz = pb_auth_header_make(k, b->server_id, NULL, (uint64_t)time(NULL));
    char hdr[1024];
    snprintf(hdr, sizeof hdr, "Authorization: %s", authz);
    const char *hdrs[] = {"Content-Type: application/hrpc", hdr, NULL};
    pb_buf body = PB_BUF_INIT;
    pb_wire_notify_encode(g_announced, NULL, 0, &body);
    pbt_http h;
    pbt_http_do("http", a->port, "POST", "/protocol.sync.v1.PostboxService/NotifyNewId", hdrs,
                body.data, body.len, NULL, &h);
    CHECKF(h.status == 200, "B's rename notice without proof: %ld", h.status);
    pbt_http_clear(&h);
    pb_buf_free(&body);
    free(authz);
    pb_keys_free(k);
}

/* ---- the test -------------------------------------------------------------------------------- */

static void browse(pbt_daemon *a, pbt_daemon *p, const char *b_id, char down[][64])
{
    long st;
    json_t *key = pbt_admin(a, "GET", "/v1/key", NULL, &st);
    char url[128], js[1024];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/", a->admin_port);
    json_decref(wds("POST", "/url", json_pack("{s:s}", "url", url), &st));
    CHECKF(st == 200, "navigate to %s: %ld", url, st);

    /* the admin token is set: the page asks for it */
    if (!wait_page("return document.body.dataset.state === 'token';", PBT_BOUND_MS)) goto out;
    char *shown =
        run_str("return document.getElementById('token-box').offsetParent ? 'shown' : '';");
    CHECK_STR(shown, "shown");
    free(shown);
    type_into("#token-input", TOKEN);
    click("#token-submit");
    if (!wait_page("return document.body.dataset.state === 'ready';", PBT_BOUND_MS)) goto out;

    /* identity and summary */
    char *s = run_str("return document.getElementById('server-id').textContent;");
    CHECK_STR(s, a->server_id);
    free(s);
    s = run_str("return document.getElementById('public-key').textContent;");
    CHECKF(strstr(s, json_string_value(json_object_get(key, "public_key"))) != NULL, "key: %s", s);
    free(s);
    /* A renames itself: B and P confirm, the 64 peers that are down cannot (pending) */
    char new_id[64];
    snprintf(new_id, sizeof new_id, "localhost:%u", a->port);
    json_t *rn =
        pbt_admin(a, "POST", "/v1/rename", json_pack("{s:s}", "new_server_id", new_id), &st);
    CHECKF(st == 200, "rename: %ld", st);
    json_decref(rn);
    snprintf(js, sizeof js,
             "return document.getElementById('server-id').textContent === '%s' &&"
             " document.getElementById('renames-count').textContent === '64 (first 6 shown)' &&"
             " document.querySelectorAll('#renames-body tr').length === 6;",
             new_id);
    wait_page(js, PBT_BOUND_MS);
    s = run_str("return Array.prototype.map.call(document.querySelectorAll('#renames-body tr'),"
                " function (r) { return r.dataset.peer; }).join(' ');");
    for (int i = 0; i < NDOWN; i++) /* every row names a peer that is down */
        if (strstr(s, down[i])) memset(strstr(s, down[i]), ' ', strlen(down[i]));
    CHECKF(strspn(s, " ") == strlen(s), "rename rows name only peers that are down: %s", s);
    free(s);
    /* B's announced rename, waiting for proof */
    snprintf(js, sizeof js,
             "var r = document.querySelectorAll('#renames-in-body tr');"
             " return r.length === 1 && r[0].dataset.old === '%s' &&"
             " r[0].children[1].textContent === '%s' &&"
             " document.getElementById('renames-in-count').textContent === '1';",
             b_id, g_announced);
    CHECKF(wait_page(js, PBT_BOUND_MS), "the page shows B's rename to %s waiting for proof",
           g_announced);

    static const struct {
        const char *id, *want;
    } cards[] = {{"count-peers", "66"},      {"count-push", "1"},     {"count-queued", "64"},
                 {"count-parked", "1"},      {"queued-events", "72"}, {"peers-count", "66"},
                 {"page-info", "1–50 of 66"}};
    for (size_t i = 0; i < sizeof cards / sizeof cards[0]; i++) {
        snprintf(js, sizeof js, "return document.getElementById('%s').textContent;", cards[i].id);
        s = run_str(js);
        CHECKF(!strcmp(s, cards[i].want), "#%s shows \"%s\", want \"%s\"", cards[i].id, s,
               cards[i].want);
        free(s);
    }
    s = run_str("return String(document.querySelectorAll('#peers-body tr').length);");
    CHECK_STR(s, "50");
    free(s);
    s = run_str("return String(document.querySelectorAll('#chart svg polyline').length);");
    CHECK_STR(s, "1");
    free(s);
    /* the parked P */
    snprintf(js, sizeof js,
             "var r = document.querySelector('#parked-body tr[data-peer=\"%s\"]');"
             "return r ? r.children[1].textContent + ' ' + r.children[2].textContent + ' ' +"
             " r.querySelectorAll('button.retry, button.drop').length : 'missing';",
             p->server_id);
    s = run_str(js);
    CHECK_STR(s, "1 2 2"); /* parked seq 1, 2 queued, Retry and Drop */
    free(s);
    s = run_str("return document.querySelector('#parked-body .err').textContent;");
    CHECKF(strstr(s, "h.test-refusal") != NULL, "refusal shown: %s", s);
    free(s);

    /* the screenshot: queued and parked peers, for people */
    char png[600];
    snprintf(png, sizeof png, "%s/status-page.png", PB_BUILD_DIR);
    screenshot(png);
    /* and the peers table with its queue controls (Flush, Drop), further down the page */
    free(run_str("document.getElementById('peers-table').scrollIntoView(); return '';"));
    snprintf(png, sizeof png, "%s/status-page-peers.png", PB_BUILD_DIR);
    screenshot(png);
    free(run_str("window.scrollTo(0, 0); return '';"));

    /* sorting by queue depth: the largest queue first, with its mode and depth */
    click("#peers-table th[data-sort=\"queued\"]");
    snprintf(js, sizeof js,
             "var r = document.querySelectorAll('#peers-body tr');"
             "return r.length === 50 && r[0].dataset.peer === '%s' &&"
             " r[0].querySelector('.c-mode').textContent === 'queued' &&"
             " r[0].querySelector('.c-queued').textContent === '4' &&"
             " r[1].dataset.peer === '%s' && r[1].querySelector('.c-queued').textContent === '3';",
             down[3], down[2]);
    wait_page(js, PBT_BOUND_MS);
    /* the next page */
    click("#next");
    wait_page("return document.getElementById('page-info').textContent === '51–66 of 66';",
              PBT_BOUND_MS);
    s = run_str("return String(document.querySelectorAll('#peers-body tr').length);");
    CHECK_STR(s, "16");
    free(s);
    /* filtering by a server ID */
    type_into("#filter", strchr(down[2], ':') + 1);
    snprintf(js, sizeof js,
             "var r = document.querySelectorAll('#peers-body tr');"
             "return r.length === 1 && r[0].dataset.peer === '%s' &&"
             " document.getElementById('page-info').textContent === '1–1 of 1';",
             down[2]);
    wait_page(js, PBT_BOUND_MS);

    /* queue control on the filtered row (down[2]: 3 events queued): Flush tries it now
     * (one "operator flush" log line); Drop dismissed changes nothing, Drop confirmed
     * empties the queue, with a notice in A's inbox */
    snprintf(js, sizeof js, "#peers-body tr[data-peer=\"%s\"] button.flush", down[2]);
    click(js);
    wait_page("return document.getElementById('notice').textContent.indexOf('flushed, trying"
              " now') >= 0;",
              10000);
    CHECKF(count_in(a->log_path, "operator flush", down[2]) == 1, "the flush is logged");
    snprintf(js, sizeof js, "#peers-body tr[data-peer=\"%s\"] button.dropq", down[2]);
    click(js);
    char *dq = answer_confirm(false);
    CHECKF(dq && strstr(dq, "Drop the 3 queued events of") && strstr(dq, down[2]), "dialog: %s",
           dq ? dq : "");
    free(dq);
    char dpath[160];
    snprintf(dpath, sizeof dpath, "/v1/peers?q=%s", down[2]);
    json_t *dr = pbt_admin(a, "GET", dpath, NULL, &st);
    CHECK_INT(json_integer_value(
                  json_object_get(json_array_get(json_object_get(dr, "peers"), 0), "queued")),
              3);
    json_decref(dr);
    click(js);
    dq = answer_confirm(true);
    free(dq);
    snprintf(js, sizeof js,
             "var r = document.querySelector('#peers-body tr[data-peer=\"%s\"]');"
             "return document.getElementById('notice').textContent.indexOf('3 queued events"
             " dropped') >= 0 && !!r && r.querySelector('.c-queued').textContent === '0' &&"
             " !r.querySelector('button.dropq');",
             down[2]);
    wait_page(js, 15000);
    dr = pbt_admin(a, "GET", "/v1/inbox?limit=1000", NULL, &st);
    bool noticed = false;
    size_t di;
    json_t *it;
    json_array_foreach(json_object_get(dr, "events"), di, it)
    {
        json_t *qd = json_object_get(json_object_get(it, "notice"), "queueDropped");
        noticed =
            noticed || (qd && !strcmp(json_string_value(json_object_get(qd, "peer")), down[2]));
    }
    json_decref(dr);
    CHECKF(noticed, "the drop's notice is in A's inbox");

    /* Drop, dismissed: nothing changes */
    snprintf(js, sizeof js, "#parked-body tr[data-peer=\"%s\"] button.drop", p->server_id);
    click(js);
    char *q = answer_confirm(false);
    CHECKF(q && strstr(q, "Drop the parked event of") && strstr(q, p->server_id), "dialog: %s",
           q ? q : "");
    free(q);
    char path[128];
    snprintf(path, sizeof path, "/v1/peers?q=%s", p->server_id);
    json_t *r = pbt_admin(a, "GET", path, NULL, &st);
    json_t *pp = json_array_get(json_object_get(r, "peers"), 0);
    CHECK_STR(json_string_value(json_object_get(pp, "mode")), "parked");
    CHECK_INT(json_integer_value(json_object_get(pp, "queued")), 2);
    json_decref(r);

    /* P accepts again; Retry, confirmed: P is back to push and its queue drains */
    CHECK_INT(pbt_daemon_stop(p), 0);
    CHECK(pbt_daemon_start(p));
    snprintf(js, sizeof js, "#parked-body tr[data-peer=\"%s\"] button.retry", p->server_id);
    click(js);
    q = answer_confirm(true);
    CHECKF(q && strstr(q, "Retry the parked event of") && strstr(q, p->server_id), "dialog: %s",
           q ? q : "");
    free(q);
    char query[160];
    snprintf(query, sizeof query, "/v1/peers?mode=push&q=%s", p->server_id);
    wait_peers(a, query, 1);
    /* the page follows: no parked row, P shown in push mode (filter on P) */
    wait_page("return document.querySelectorAll('#parked-body tr').length === 0 &&"
              " document.getElementById('count-parked').textContent === '0';",
              PBT_BOUND_MS);
    s = run_str("return document.getElementById('notice').textContent;");
    CHECKF(strstr(s, "retrying") != NULL, "notice: %s", s);
    free(s);
    json_t *ids = json_pack("{s:s}", "id", p->server_id);
    char *idq = json_dumps(ids, JSON_COMPACT);
    json_decref(ids);
    snprintf(js, sizeof js,
             "var f = document.getElementById('filter'); f.value = %s.id;"
             "f.dispatchEvent(new Event('input')); return true;",
             idq);
    free(idq);
    json_decref(run(js));
    snprintf(js, sizeof js,
             "var r = document.querySelector('#peers-body tr[data-peer=\"%s\"]');"
             "return !!r && r.querySelector('.c-mode').textContent === 'push' &&"
             " r.querySelector('.c-queued').textContent === '0';",
             p->server_id);
    wait_page(js, PBT_BOUND_MS);
out:
    json_decref(key);
}

int main(void)
{
    char *tmp = pbt_tmpdir("statuspage");
    /* clang-format off */
    const char *ax[] = {"--push-retries", "0", "--retry-base-ms", "10", "--backoff-min", "600",
                        "--stats-interval", "1", "--rename-wait-ms", "1000", NULL};
    /* clang-format on */
    pbt_daemon *a = pbt_daemon_new("pageA", ax), *b = pbt_daemon_new("pageB", NULL);
    pbt_daemon_set_token(a, TOKEN);
    setenv("PB_FAULTS", "delivery.refuse-push-400", 1);
    pbt_daemon *p = pbt_daemon_new("pageP", NULL);
    bool up = pbt_daemon_start(p);
    unsetenv("PB_FAULTS");
    up = up && pbt_daemon_start(a) && pbt_daemon_start(b);
    pid_t driver = up ? start_driver(tmp) : 0;
    char profile[600];
    snprintf(profile, sizeof profile, "%s/profile", tmp);
    if (!up || !driver || !new_session(profile)) {
        CHECKF(up, "daemons start");
        goto out;
    }

    /* peers that are down: free ports, distinct, none of them a daemon's */
    static char down[NDOWN][64];
    uint16_t used[NDOWN + 8] = {a->port, a->admin_port, b->port,  b->admin_port,
                                p->port, p->admin_port, g_wd_port};
    size_t nused = 7;
    for (int i = 0; i < NDOWN; i++) {
        uint16_t port;
        bool dup;
        do {
            port = pbt_free_port();
            dup = false;
            for (size_t k = 0; k < nused; k++)
                dup = dup || used[k] == port;
        } while (dup);
        used[nused++] = port;
        snprintf(down[i], sizeof down[i], "127.0.0.1:%u", port);
    }
    submit(a, b->server_id, 2);
    submit(a, p->server_id, 2);
    for (int i = 0; i < NDOWN; i++)
        submit(a, down[i], i < 4 ? i + 1 : 1);
    wait_peers(a, "/v1/peers?mode=queued", NDOWN);
    wait_peers(a, "/v1/peers?mode=parked", 1);
    wait_peers(a, "/v1/peers?mode=push", 1);
    announce_rename(a, b);
    browse(a, p, b->server_id, down);

out:
    if (g_session[0]) {
        long st;
        json_decref(wds("DELETE", "", NULL, &st)); /* quits the browser */
    }
    if (driver) {
        kill(-driver, SIGTERM);
        waitpid(driver, NULL, 0);
    }
    if (pbt_failed) {
        pbt_daemon_dump_log(a);
        char log[700];
        snprintf(log, sizeof log, "%s/chromedriver.log", tmp);
        fprintf(stderr, "(chromedriver's log: %s, kept)\n", log);
    } else {
        pbt_rmrf(tmp);
    }
    free(tmp);
    pbt_daemon_free(a);
    pbt_daemon_free(b);
    pbt_daemon_free(p);
    return pbt_finish();
}
