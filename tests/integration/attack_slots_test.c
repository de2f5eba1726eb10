/*
 * attack_slots_test - the federation listener's request slots and body memory under attack
 * from several addresses of 127.0.0.0/8 (issue 18, attacks 1 and 2), while a real peer
 * postboxd P pushes events to the postboxd R under attack. The attackers are
 * tests/tools/hostile (roles hang, flood, stall); daemons are started by the harness.
 *
 *   suspended   4 addresses x 80 keep-alive connections send forged Pushes (up to 1000 a
 *               second for 10 s), each token naming one of 40 server IDs whose Key
 *               endpoint accepts and never answers: each such request waits for its key,
 *               suspended. Suspended requests have a pool of their own (max_suspended) and
 *               a share per address (max_suspended_per_ip), so they never take the slots
 *               that answered requests need.
 *   body-memory 2 addresses x 256 connections send 65,535 bytes of a 65,536-byte Push
 *               body and stall, 2 more addresses x 256 connections send 1 byte of it and
 *               stall, for 10 s: without a share per address (body_memory_per_ip) they hold
 *               every byte of body_memory (32 MiB) and every body from another address is
 *               refused 503.
 *
 *   reload      body_memory_per_ip and max_connections_per_ip changed by a reload: a
 *               second stalled body from one address is refused over a 64 KiB share while
 *               another address's is held; after a reload to 1 MiB the first address's
 *               next body is held; after max_connections_per_ip = 0 the shares are off.
 *
 * What must hold in the attacks, with R's default settings: P's events, submitted while the
 * attack lasts, arrive at R while it still lasts; P's Pushes are all accepted (its
 * postbox_events_pushed_total has no retried, queued or parked event); nothing is lost or
 * duplicated (R's inbox holds exactly what P was given, in order); R's Key endpoint
 * answers 200 to every probe made during the attack; no forged Push is accepted. The
 * figures (probes, attack counts, how long P's events took) go to stderr.
 *
 * PBT_ONLY=name runs one case; PBT_KEEP=1 keeps the directories.
 */
#include <curl/curl.h>
#include <errno.h>
#include <signal.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "hostile_tools.h"

#define KEY "/protocol.auth.v1.AuthService/Key"

#define ATTACK_SECONDS "10"
#define FROM4 "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5"
/* events P is given for R during an attack: BATCHES submissions of BATCH events */
#define BATCHES 4
#define BATCH 2
#define BATCH_EVERY_MS 1500

/* ---- probes ---------------------------------------------------------------------------------- */

struct probes {
    int n, ok;
    int64_t worst_ms;
    long last_bad;
};

/* One Key request to R from 127.0.0.1 (no body, no token). */
static void key_probe(const pbt_daemon *r, struct probes *p)
{
    CURL *c = curl_easy_init();
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", r->port, KEY);
    struct curl_slist *hl = curl_slist_append(NULL, "Content-Type: application/hrpc");
    hl = curl_slist_append(hl, "Hrpc-Version: 1");
    hl = curl_slist_append(hl, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
    FILE *null = fopen("/dev/null", "w");
    curl_easy_setopt(c, CURLOPT_WRITEDATA, null);
    long status = 0;
    int64_t t0 = pbt_now_ms();
    if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    int64_t ms = pbt_now_ms() - t0;
    if (null) fclose(null);
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    p->n++;
    if (status == 200)
        p->ok++;
    else
        p->last_bad = status;
    if (ms > p->worst_ms) p->worst_ms = ms;
}

/* ---- P and R --------------------------------------------------------------------------------- */

/* Gives P `n` new events for R (guilds *guild, *guild + 1, ...), appended to *sent. */
static bool submit_batch(const pbt_daemon *p, const pbt_daemon *r, unsigned *guild, int n,
                         json_t *sent)
{
    json_t *evs = json_array();
    for (int i = 0; i < n; i++) {
        json_t *ev = ev_added(7, (*guild)++);
        json_array_append(sent, ev);
        json_array_append_new(evs, ev);
    }
    bool ok = submit(p, r->server_id, evs);
    json_decref(evs);
    return ok;
}

struct arrival {
    const pbt_daemon *r, *p;
    json_t *sent;
    size_t have;
};

static bool all_arrived(void *vctx)
{
    struct arrival *a = vctx;
    json_t *got = events_from(a->r, a->p->server_id, (size_t)-1);
    a->have = json_array_size(got);
    bool same = json_equal(got, a->sent);
    json_decref(got);
    return same;
}

/* P's Pushes that failed (retried, queued, parked), from its metrics. */
static double push_failures(const pbt_daemon *p)
{
    const char *r[] = {"retried", "queued", "parked"};
    double sum = 0;
    for (int i = 0; i < 3; i++) {
        char series[96];
        snprintf(series, sizeof series, "postbox_events_pushed_total{result=\"%s\"}", r[i]);
        double v = pbt_metric(p, series);
        if (v > 0) sum += v;
    }
    return sum;
}

/*
 * While `attack` runs: a Key probe to R every 200 ms, and every BATCH_EVERY_MS a batch of
 * BATCH events given to P for R (BATCHES of them), watching R's inbox for them. Then the
 * checks of the file comment. `what` names the case in the messages.
 */
static void under_attack(const char *what, pbt_daemon *r, pbt_daemon *p, struct tool *attack,
                         unsigned *guild, json_t *sent)
{
    struct probes key = {0};
    struct arrival arr = {.r = r, .p = p, .sent = sent};
    int batches = 0;
    int64_t t0 = pbt_now_ms(), next = t0, last_submit = 0, arrived = 0;
    bool arrived_during = false;
    int64_t end = t0 + PBT_BOUND_MS;
    while (!tool_exited(attack) && pbt_now_ms() < end) {
        key_probe(r, &key);
        int64_t now = pbt_now_ms();
        if (batches < BATCHES && now >= next) {
            submit_batch(p, r, guild, BATCH, sent);
            batches++;
            last_submit = now;
            next += BATCH_EVERY_MS;
            arrived = 0;
        }
        if (batches == BATCHES && !arrived && all_arrived(&arr)) {
            arrived = pbt_now_ms();
            arrived_during = !tool_exited(attack);
        }
        sleep_ms(200);
    }
    int64_t attack_ms = pbt_now_ms() - t0;
    CHECKF(tool_exited(attack), "%s: the attack ended", what);
    /* nothing lost: every event arrives, now or once the attack is over */
    bool all = pbt_wait_for(all_arrived, &arr, PBT_BOUND_MS);
    int64_t all_ms = (arrived ? arrived : pbt_now_ms()) - last_submit;
    double failures = push_failures(p);
    int p503 = pbt_log_count(p, "http=503", NULL);
    fprintf(stderr,
            "%s: Key %d probes, %d answered 200, slowest %lld ms; P's %d events: the last "
            "batch arrived %s (%lld ms after it was given, attack watched for %lld ms); P's "
            "failed Push attempts %g (log lines with http=503: %d)\n",
            what, key.n, key.ok, (long long)key.worst_ms, batches * BATCH,
            arrived_during ? "during the attack" : "only after the attack", (long long)all_ms,
            (long long)attack_ms, failures, p503);
    CHECKF(batches == BATCHES, "%s: P was given its %d batches during the attack (%d)", what,
           BATCHES, batches);
    CHECKF(arrived_during, "%s: P's events arrived at R while the attack lasted", what);
    CHECKF(all, "%s: R holds exactly P's %zu events, in order (it has %zu)", what,
           json_array_size(sent), arr.have);
    CHECKF(failures == 0, "%s: none of P's Pushes refused (%g failed attempts)", what, failures);
    CHECKF(p503 == 0, "%s: no Push of P answered 503 (%d in its log)", what, p503);
    CHECKF(key.n >= 10, "%s: Key probes made during the attack: %d", what, key.n);
    CHECKF(key.ok == key.n, "%s: Key answered %d of %d probes 200 (last failure: %ld)", what,
           key.ok, key.n, key.last_bad);
}

/* P and R federated: P's first event reached R (R holds P's key from then on). */
static bool federate(pbt_daemon *r, pbt_daemon *p, unsigned *guild, json_t *sent)
{
    if (!submit_batch(p, r, guild, 1, sent)) return false;
    struct arrival arr = {.r = r, .p = p, .sent = sent};
    bool ok = pbt_wait_for(all_arrived, &arr, PBT_BOUND_MS);
    CHECKF(ok, "P's first event reaches R");
    return ok;
}

/* ---- 1. suspended requests ------------------------------------------------------------------- */

/* R's postbox_requests_refused_total{reason} */
static double refused(const pbt_daemon *r, const char *reason)
{
    char series[96];
    snprintf(series, sizeof series, "postbox_requests_refused_total{reason=\"%s\"}", reason);
    return pbt_metric(r, series);
}

static void test_suspended(void)
{
    int failed0 = pbt_failed;
    json_t *sent = json_array();
    unsigned guild = 1;
    const char *hargs[] = {"--listen", "40", "--seconds", "120", NULL};
    struct tool *hang = tool_run("hang", hargs), *fl = NULL;
    pbt_daemon *r = start("slotsR", NULL), *p = start("slotsP", NULL);
    if (!hang || !r || !p || !federate(r, p, &guild, sent)) goto out;

    char target[16];
    snprintf(target, sizeof target, "%u", r->port);
    const char *fargs[] = {"--target",  target,         "--ids-file",   hang->ready, "--rate",
                           "1000",      "--conns",      "80",           "--from",    FROM4,
                           "--seconds", ATTACK_SECONDS, "--timeout-ms", "5000",      NULL};
    fl = tool_run("flood", fargs);
    /* the attack holds R's waits: forged Pushes are being answered 503 */
    struct metric_wait mw = {r, "postbox_hrpc_server_requests_total{method=\"Push\",code=\"503\"}",
                             300, 0};
    bool on = pbt_wait_for(metric_reached, &mw, PBT_BOUND_MS);
    CHECKF(on, "the flood reaches R: %g forged Pushes answered 503", mw.value);
    if (!on) goto out;
    under_attack("suspended", r, p, fl, &guild, sent);
    fprintf(stderr,
            "suspended: the flood sent %ld forged Pushes (%ld answered: 2xx %ld, 401 %ld, 503 "
            "%ld; no answer %ld)\n",
            stat_of(fl, "sent"), stat_of(fl, "answered"), stat_of(fl, "status_2xx"),
            stat_of(fl, "status_401"), stat_of(fl, "status_503"), stat_of(fl, "no_answer"));
    CHECKF(stat_of(fl, "status_2xx") == 0, "no forged Push accepted");
    double share = refused(r, "suspended_per_address"), total = refused(r, "suspended");
    fprintf(stderr, "suspended: R refused %g requests over an address's share, %g over the pool\n",
            share, total);
    CHECKF(share > 0, "the attackers' suspensions were bounded by their share (%g refused)", share);
out:
    if (pbt_failed > failed0 && r) pbt_daemon_dump_log(r);
    if (pbt_failed > failed0 && fl) tool_dump_log(fl);
    tool_free(fl);
    tool_free(hang);
    pbt_daemon_free(r);
    pbt_daemon_free(p);
    json_decref(sent);
}

/* ---- 2. body memory -------------------------------------------------------------------------- */

static void test_body_memory(void)
{
    int failed0 = pbt_failed;
    json_t *sent = json_array();
    unsigned guild = 1;
    struct tool *full = NULL, *one = NULL;
    pbt_daemon *r = start("bodyR", NULL), *p = start("bodyP", NULL);
    if (!r || !p || !federate(r, p, &guild, sent)) goto out;

    char target[16];
    snprintf(target, sizeof target, "%u", r->port);
    const char *a1[] = {"--target", target,  "--from",    "127.0.0.2,127.0.0.3", "--conns", "256",
                        "--send",   "65535", "--seconds", ATTACK_SECONDS,        NULL};
    const char *a2[] = {"--target", target, "--from",    "127.0.0.4,127.0.0.5", "--conns", "256",
                        "--send",   "1",    "--seconds", ATTACK_SECONDS,        NULL};
    full = tool_run("stall", a1);
    one = tool_run("stall", a2);
    if (!full || !one) goto out;
    /* R holds the stalled bodies: all 32 MiB without shares, each address's share with */
    struct metric_wait mw = {r, "postbox_request_body_bytes", 3.8 * 1024 * 1024, 0};
    bool on = pbt_wait_for(metric_reached, &mw, PBT_BOUND_MS);
    CHECKF(on, "R holds the stalled bodies: %g bytes", mw.value);
    if (!on) goto out;
    fprintf(stderr, "body-memory: R holds %g body bytes of the stalled connections\n", mw.value);
    under_attack("body-memory", r, p, full, &guild, sent);
    CHECKF(pbt_wait_for(tool_exited, one, PBT_BOUND_MS), "the 1-byte stalls ended");
    double share = refused(r, "body_memory_per_address"), total = refused(r, "body_memory");
    fprintf(stderr, "body-memory: R refused %g bodies over an address's share, %g over the pool\n",
            share, total);
    CHECKF(share > 0, "the stalled bodies were bounded by their addresses' shares (%g refused)",
           share);
    fprintf(stderr,
            "body-memory: %ld + %ld connections stalled (%ld + %ld body bytes sent; %ld + %ld "
            "closed by R before the end)\n",
            stat_of(full, "conns"), stat_of(one, "conns"), stat_of(full, "body_bytes"),
            stat_of(one, "body_bytes"), stat_of(full, "closed_early"),
            stat_of(one, "closed_early"));
out:
    if (pbt_failed > failed0 && r) pbt_daemon_dump_log(r);
    tool_free(full);
    tool_free(one);
    pbt_daemon_free(r);
    pbt_daemon_free(p);
    json_decref(sent);
}

/* ---- 3. shares applied by a reload ----------------------------------------------------------- */

static bool reload_with(const pbt_daemon *d, const char *conf, const char *text)
{
    write_text(conf, text);
    struct logwait w = {d, "configuration reloaded",
                        pbt_log_count(d, "configuration reloaded", NULL)};
    kill(d->pid, SIGHUP);
    return pbt_wait_for(logged_more, &w, PBT_BOUND_MS);
}

/* A connection from src sending 40,000 bytes of a 65,536-byte Push body, held; -1 when it
 * cannot connect. */
static int stalled_body(const char *src, uint16_t port)
{
    int fd = pbt_connect_from(src, port);
    if (fd < 0) return -1;
    char head[256];
    int n = snprintf(head, sizeof head,
                     "POST /protocol.sync.v1.PostboxService/Push HTTP/1.1\r\nHost: x\r\n"
                     "Content-Type: application/hrpc\r\nContent-Length: 65536\r\n\r\n");
    static char body[40000];
    bool ok = write(fd, head, (size_t)n) == n && write(fd, body, sizeof body) == sizeof body;
    CHECKF(ok, "a stalled body from %s is sent", src);
    return fd;
}

static void test_reload(void)
{
    int failed0 = pbt_failed;
    pbt_daemon *r = pbt_daemon_new("reloadR", NULL);
    char conf[600];
    snprintf(conf, sizeof conf, "%s/postbox.conf", r->dir);
    write_text(conf, "body_memory_per_ip = 65536\n");
    r->args[r->nargs++] = strdup("-c");
    r->args[r->nargs++] = strdup(conf);
    int fds[5] = {-1, -1, -1, -1, -1};
    bool ok = pbt_daemon_start(r);
    CHECKF(ok, "postboxd reloadR starts");
    if (!ok) goto out;
    struct metric_wait held = {r, "postbox_request_body_bytes", 40000, 0};
    struct metric_wait over = {
        r, "postbox_requests_refused_total{reason=\"body_memory_per_address\"}", 1, 0};

    fds[0] = stalled_body("127.0.0.2", r->port);
    CHECKF(pbt_wait_for(metric_reached, &held, PBT_BOUND_MS), "the first body is held: %g",
           held.value);
    fds[1] = stalled_body("127.0.0.2", r->port);
    CHECKF(pbt_wait_for(metric_reached, &over, PBT_BOUND_MS),
           "a second body from 127.0.0.2 is over its 64 KiB share: %g refused", over.value);
    fds[2] = stalled_body("127.0.0.3", r->port);
    held.at_least = 80000;
    CHECKF(pbt_wait_for(metric_reached, &held, PBT_BOUND_MS),
           "another address's body is held beside it: %g", held.value);

    CHECK(reload_with(r, conf, "body_memory_per_ip = 1048576\n"));
    fds[3] = stalled_body("127.0.0.2", r->port);
    held.at_least = 120000;
    CHECKF(pbt_wait_for(metric_reached, &held, PBT_BOUND_MS),
           "after the reload to 1 MiB: 127.0.0.2's next body is held: %g", held.value);

    CHECK(reload_with(r, conf, "body_memory_per_ip = 65536\nmax_connections_per_ip = 0\n"));
    fds[4] = stalled_body("127.0.0.3", r->port);
    held.at_least = 160000;
    CHECKF(pbt_wait_for(metric_reached, &held, PBT_BOUND_MS),
           "with max_connections_per_ip = 0 the shares are off: %g held", held.value);
    CHECKF(pbt_metric(r, "postbox_requests_refused_total{reason=\"body_memory_per_address\"}") ==
               over.value,
           "no further refusal over a share");
    CHECKF(pbt_log_count(r, "holds its share of request body bytes", NULL) >= 1,
           "the refusal over a share is logged");
out:
    for (int i = 0; i < 5; i++)
        if (fds[i] >= 0) close(fds[i]);
    if (pbt_failed > failed0) pbt_daemon_dump_log(r);
    pbt_daemon_free(r);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return 2;
    const char *only = getenv("PBT_ONLY");
#define RUN(name, fn)                                                                              \
    if (!only || !strcmp(only, name)) fn()
    RUN("suspended", test_suspended);
    RUN("body-memory", test_body_memory);
    RUN("reload", test_reload);
    curl_global_cleanup();
    return pbt_finish();
}
