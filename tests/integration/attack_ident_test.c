/*
 * attack_ident_test - identities cost something (issue 18, attack 6): one key and wildcard
 * DNS give any number of verified server IDs, and several addresses of 127/8 any number
 * of keys; what each may make a real postboxd R store, and keep in memory, is bounded.
 * The attackers are tests/tools/hostile (role idents): N fake servers 127.0.0.1:PORT, each
 * pushing one tiny event per round to R from a source address of 127/8, as a foreign peer.
 *
 * While they push, a real postboxd S submits its events for R (and the Key endpoint is
 * probed):
 *
 *   one-key     group A: 24 IDs signed with one key, pushing from 127.0.0.2-5, 10 rounds
 *               (400 ms apart): at most new_peers_per_key (8) of them become peers (the
 *               others 429, too many new peers), and together they store at most one
 *               sender's budget (recv_budget_events = 40 per 60 s, key factor 1; 429
 *               beyond), instead of 40 per ID
 *   one-address group B: 20 IDs each with its own key, all from 127.0.0.6, one round: at
 *               most new_peers_per_address (12) become peers
 *   real peer   S's 20 events all arrive at R, once, while group A still pushes, none of its
 *               Pushes refused (no 503, no 429 in S's log); Key answers every probe 200
 *   forgetting  with peer_idle_forget = 3 and pull_interval = 1, the attackers' peer
 *               records are freed (postbox_peers_forgotten_total), and after S pushes
 *               again and R restarts, R pulls none of the attackers at start-up (their
 *               ports record no Pull) while it holds S's events
 *   reload      new_peers_per_key (from R's configuration file) is live: after the restart
 *               12 new IDs of A's key get 8 admitted; after a reload with 0 (no limit), 4
 *               more are all admitted
 *
 * Figures (accepted, refused, forgotten) are printed. PBT_BASE_POSTBOXD=path runs R with
 * another postboxd (e.g. one built before the fix) and without the settings it would not
 * know, to see the test fail there. PBT_KEEP=1 keeps the directories.
 */
#include <curl/curl.h>
#include <signal.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "hostile_tools.h"

#define KEY "/protocol.auth.v1.AuthService/Key"
#define PULL "/protocol.sync.v1.PostboxService/Pull"

#define A_IDS 24
#define A_ROUNDS 10
#define B_IDS 20
#define BUDGET_EVENTS 40
#define PER_KEY 8
#define PER_ADDR 12
#define S_EVENTS 20

/* ---- the hostile tool (run by tests/hostile_tools.h) ----------------------------------------- */

static bool tool_done(void *vctx)
{
    struct tool *t = vctx;
    struct stat st;
    return stat(t->stats, &st) == 0 && st.st_size > 0;
}

/* Pull requests the tool's ports received (its record), from byte `from` of the record. */
static long pulls_recorded(const struct tool *t, long from, long *size)
{
    FILE *f = fopen(t->record, "r");
    long n = 0;
    if (!f) return 0;
    fseek(f, from, SEEK_SET);
    char line[4096];
    while (fgets(line, sizeof line, f))
        if (strstr(line, PULL)) n++;
    if (size) *size = ftell(f);
    fclose(f);
    return n;
}

/* ---- the daemons ----------------------------------------------------------------------------- */

static bool key_answers(uint16_t port)
{
    pbt_http h = {0};
    const char *hdrs[] = {"Content-Type: application/hrpc", NULL};
    pbt_http_do("http", port, "POST", KEY, hdrs, "", 0, NULL, &h);
    bool ok = h.status == 200;
    pbt_http_clear(&h);
    return ok;
}

static void test_idents(void)
{
    int failed0 = pbt_failed;
    const char *base = getenv("PBT_BASE_POSTBOXD");
    const char *rargs_new[] = {"--recv-budget-events",
                               "40",
                               "--recv-budget-interval",
                               "60",
                               "--pull-interval",
                               "1",
                               "--new-peers-per-address",
                               "12",
                               "--recv-budget-key-factor",
                               "1",
                               "--recv-budget-address-factor",
                               "4",
                               "--peer-idle-forget",
                               "3",
                               NULL};
    const char *rargs_base[] = {
        "--recv-budget-events", "40", "--recv-budget-interval", "60", "--pull-interval", "1", NULL};
    pbt_daemon *r = pbt_daemon_new("identR", base ? rargs_base : rargs_new);
    if (base) r->prog = base;
    /* new_peers_per_key comes from a file, so that a reload can change it (flags win) */
    char *conf = xasprintf("%s/ident.conf", r->dir);
    write_text(conf, "new_peers_per_key = 8\n");
    if (!base) {
        r->args[r->nargs++] = strdup("-c");
        r->args[r->nargs++] = strdup(conf);
    }
    pbt_daemon *s = pbt_daemon_new("identS", NULL);
    struct tool *a = NULL, *b = NULL, *c = NULL, *dd = NULL;
    char seed_a[65], seed_b[65];
    uint8_t raw[32];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(seed_a, sizeof seed_a, raw, sizeof raw);
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(seed_b, sizeof seed_b, raw, sizeof raw);
    if (!pbt_daemon_start(r) || !pbt_daemon_start(s)) {
        CHECKF(false, "the daemons start");
        goto out;
    }
    char target[16], a_ids[8], a_rounds[8], b_ids[8];
    snprintf(target, sizeof target, "%u", r->port);
    snprintf(a_ids, sizeof a_ids, "%d", A_IDS);
    snprintf(a_rounds, sizeof a_rounds, "%d", A_ROUNDS);
    snprintf(b_ids, sizeof b_ids, "%d", B_IDS);
    const char *aargs[] = {"--listen",
                           a_ids,
                           "--seed",
                           seed_a,
                           "--push-to",
                           target,
                           "--push-max",
                           a_rounds,
                           "--from",
                           "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5",
                           "--push-every-ms",
                           "400",
                           NULL};
    const char *bargs[] = {"--listen",     b_ids,       "--seed",    seed_b,
                           "--key-per-id", "1",         "--push-to", target,
                           "--from",       "127.0.0.6", NULL};
    int64_t t0 = pbt_now_ms();
    a = tool_run("idents", aargs);
    b = tool_run("idents", bargs);
    if (!a || !b) goto out;

    /* the real peer S, while the attack lasts: its events, and Key probes */
    int key_probes = 0, key_ok = 0, sent = 0;
    bool during = true;
    for (int i = 0; i < S_EVENTS; i++) {
        sent += submit_one(s, r->server_id, 5, 100 + (unsigned)i);
        key_probes++;
        key_ok += key_answers(r->port);
        sleep_ms(50);
    }
    struct count_wait hs = {r, s->server_id, S_EVENTS, 0};
    bool arrived = pbt_wait_for(have_count, &hs, 30000);
    during = !tool_done(a);
    long s_got = (long)count_from(r, s->server_id);
    CHECKF(sent == S_EVENTS, "S accepted %d of %d submissions", sent, S_EVENTS);
    CHECKF(arrived && s_got == S_EVENTS, "S's events at R: %ld of %d", s_got, S_EVENTS);
    fprintf(stderr, "real peer: %ld of %d events arrived %s the attack; Key %d of %d probes\n",
            s_got, S_EVENTS, during ? "during" : "after", key_ok, key_probes);
    CHECKF(during, "S's events arrived while group A still pushed");
    CHECKF(key_ok == key_probes, "Key answered %d of %d probes", key_ok, key_probes);
    /* none of S's Pushes was refused (overload, budget, new peers) */
    int s_refused = pbt_log_count(s, "HTTP 503", NULL) + pbt_log_count(s, "HTTP 429", NULL);
    CHECKF(s_refused == 0, "S's log shows %d refused Pushes", s_refused);

    CHECKF(pbt_wait_for(tool_done, a, 60000), "group A finished pushing");
    CHECKF(pbt_wait_for(tool_done, b, 60000), "group B finished pushing");
    int64_t attack_end = pbt_now_ms();
    double secs = (double)(pbt_now_ms() - t0) / 1000.0;
    long a_ok = stat_of(a, "ok"), a_ids_ok = stat_of(a, "ok_ids"), a_budget = stat_of(a, "budget"),
         a_new = stat_of(a, "new_peers"), a_other = stat_of(a, "other");
    long b_ok = stat_of(b, "ok"), b_new = stat_of(b, "new_peers"), b_other = stat_of(b, "other");
    fprintf(stderr,
            "group A (%d IDs, one key, 4 addresses, %d rounds): %ld Pushes stored from %ld IDs, "
            "%ld refused by a budget, %ld as new peers, %ld other (%.1f s)\n",
            A_IDS, A_ROUNDS, a_ok, a_ids_ok, a_budget, a_new, a_other, secs);
    fprintf(stderr,
            "group B (%d IDs, a key each, one address): %ld stored, %ld refused as new peers, "
            "%ld other\n",
            B_IDS, b_ok, b_new, b_other);
    /* one sender's budget, plus what it refills over the run, plus one */
    long budget_max = BUDGET_EVENTS + (long)(BUDGET_EVENTS * secs / 60.0) + 1;
    CHECKF(a_ids_ok <= PER_KEY, "group A: %ld IDs stored events, want at most %d (per key)",
           a_ids_ok, PER_KEY);
    CHECKF(a_ok <= budget_max, "group A stored %ld events, want at most %ld (one key's budget)",
           a_ok, budget_max);
    CHECKF(a_budget > 0 && a_new > 0, "group A refused: %ld by budget, %ld as new peers", a_budget,
           a_new);
    CHECKF(a_other == 0 && b_other == 0, "other answers: A %ld, B %ld", a_other, b_other);
    CHECKF(b_ok <= PER_ADDR && b_new >= B_IDS - PER_ADDR,
           "group B: %ld stored, %ld refused as new peers, want at most %d stored", b_ok, b_new,
           PER_ADDR);
    CHECKF(pbt_metric(r, "postbox_new_peers_refused_total{scope=\"key\"}") > 0 &&
               pbt_metric(r, "postbox_new_peers_refused_total{scope=\"address\"}") > 0 &&
               pbt_metric(r, "postbox_receive_budget_refusals_total{scope=\"key\"}") > 0,
           "refusal counters: new peers key %.0f, address %.0f; budget key %.0f",
           pbt_metric(r, "postbox_new_peers_refused_total{scope=\"key\"}"),
           pbt_metric(r, "postbox_new_peers_refused_total{scope=\"address\"}"),
           pbt_metric(r, "postbox_receive_budget_refusals_total{scope=\"key\"}"));

    /* forgetting: the attackers' records (and S's, idle too) are freed */
    long admitted = a_ids_ok + b_ok;
    struct metric_wait mw = {r, "postbox_peers_forgotten_total", (double)admitted, 0};
    bool forgot = pbt_wait_for(metric_reached, &mw, 30000);
    double forgotten = pbt_metric(r, "postbox_peers_forgotten_total");
    fprintf(stderr, "forgetting: %.0f peer records forgotten (%ld attackers admitted)\n", forgotten,
            admitted);
    CHECKF(forgot, "%.0f peer records forgotten, want at least %ld", forgotten, admitted);

    /* S pushes again (its last contact is now the latest by more than peer_idle_forget),
     * R restarts: no attacker is pulled at start-up; S's events are all there, once */
    /* last_contact is kept in seconds: S's last Push comes peer_idle_forget + 2 s after the
     * attackers' last one (a clock condition, not a synchronisation) */
    while (pbt_now_ms() < attack_end + 5000)
        sleep_ms(100);
    CHECK(submit_one(s, r->server_id, 5, 999));
    hs.want = S_EVENTS + 1;
    CHECKF(pbt_wait_for(have_count, &hs, 30000), "S's last event arrived");
    long a_size = 0, b_size = 0;
    pulls_recorded(a, 0, &a_size);
    pulls_recorded(b, 0, &b_size);
    CHECK_INT(pbt_daemon_stop(r), 0);
    CHECK(pbt_daemon_start(r));
    /* an absence: watched for a bounded window (R pulls its known peers at once) */
    int64_t until = pbt_now_ms() + 3000;
    long pulled = 0;
    while (pbt_now_ms() < until && pulled == 0) {
        pulled = pulls_recorded(a, a_size, NULL) + pulls_recorded(b, b_size, NULL);
        sleep_ms(100);
    }
    int skipped = pbt_log_count(r, "idle peers forgotten", "not pulled at start-up");
    fprintf(stderr, "restart: %ld Pulls of attackers at start-up; skip line %d\n", pulled, skipped);
    CHECKF(pulled == 0, "R pulled attackers %ld times at start-up", pulled);
    CHECKF(skipped == 1, "R logged the idle peers it did not pull (%d lines)", skipped);
    s_got = (long)count_from(r, s->server_id);
    CHECKF(s_got == S_EVENTS + 1, "R holds S's %d events once (%ld)", S_EVENTS + 1, s_got);

    /* live on reload: 12 more IDs of A's key (the counts start again after the restart)
     * get 8 admitted; new_peers_per_key = 0 (no limit) by a reload, and 4 more all are */
    if (!base) {
        const char *cargs[] = {"--listen", "12",     "--seed",    seed_a, "--push-to",
                               target,     "--from", "127.0.0.2", NULL};
        c = tool_run("idents", cargs);
        CHECKF(c && pbt_wait_for(tool_done, c, 60000), "group C pushed");
        long c_ids = c ? stat_of(c, "ok_ids") : -1, c_new = c ? stat_of(c, "new_peers") : -1;
        write_text(conf, "new_peers_per_key = 0\n");
        int reloads = pbt_log_count(r, "configuration reloaded", NULL);
        kill(r->pid, SIGHUP);
        struct logwait lw = {r, "configuration reloaded", reloads};
        CHECKF(pbt_wait_for(logged_more, &lw, PBT_BOUND_MS), "R reloaded");
        const char *dargs[] = {"--listen", "4",      "--seed",    seed_a, "--push-to",
                               target,     "--from", "127.0.0.3", NULL};
        dd = tool_run("idents", dargs);
        CHECKF(dd && pbt_wait_for(tool_done, dd, 60000), "group D pushed");
        long d_ids = dd ? stat_of(dd, "ok_ids") : -1, d_new = dd ? stat_of(dd, "new_peers") : -1;
        fprintf(stderr,
                "reload: before, %ld of 12 new IDs of the key admitted (%ld refused); after "
                "new_peers_per_key = 0, %ld of 4 (%ld refused)\n",
                c_ids, c_new, d_ids, d_new);
        CHECKF(c_ids == PER_KEY && c_new == 12 - PER_KEY, "before the reload: %ld admitted", c_ids);
        CHECKF(d_ids == 4 && d_new == 0, "after the reload: %ld of 4 admitted, %ld refused", d_ids,
               d_new);
    }
out:
    if (pbt_failed > failed0) {
        if (r) pbt_daemon_dump_log(r);
        if (a) tool_dump_log(a);
        if (b) tool_dump_log(b);
    }
    tool_free(a);
    tool_free(b);
    tool_free(c);
    tool_free(dd);
    pbt_daemon_free(s);
    pbt_daemon_free(r);
    free(conf);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return 2;
    test_idents();
    curl_global_cleanup();
    return pbt_finish();
}
