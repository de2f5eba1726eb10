/*
 * attack_keys_test - forged tokens against the key fetches of real postboxd processes
 * (issue 18, attacks 3 and 4): the attackers are tests/tools/hostile (roles hang and flood,
 * the flood sent from several addresses of 127/8), the genuine peers a real postboxd P and
 * in-test identities (tests/harness.h, pbt_ident) whose Key endpoints answer at once.
 *
 *   fetch-slots  R's key fetches against a flood of forged Pushes from 8 addresses
 *                (127.0.0.2-9), 100 a second for FETCH_SECONDS s, each naming one of 64
 *                server IDs whose Key endpoint accepts and never answers (every fetch
 *                runs to its 5 s timeout). While the flood lasts: a Pull signed by a new,
 *                genuine key server (a fresh identity each time, so each needs a key
 *                fetch) is answered 200 every time; the Key endpoint answers every probe
 *                200; and the events a real peer P submits for R (P's key must be fetched
 *                too: P never contacted R before) arrive, all of them, before the flood
 *                ends. Before the fix the 8 fetch slots belonged to the attacker: such
 *                Pulls got 503 hrpc.unavailable ("the sender's public key cannot be
 *                obtained now").
 *   rotation     R with key_refetch_interval 10 holds P's key (P pushed once). A flood of
 *                forged Pushes naming P from 4 addresses (127.0.0.2-5), 10 a second for
 *                ROT_SECONDS s, each failing P's stored key and so asking for a re-fetch.
 *                While it lasts P is restarted with a new key (its key file removed) and
 *                submits an event for R: it arrives before the flood ends (R re-fetched P's
 *                key for P's own request; the flood is then stopped early), and no forged
 *                Push is accepted. Before the fix
 *                each forged token used P's one re-fetch per interval and P's Pushes got
 *                401 h.bad-token-signature for as long as the flood lasted.
 *
 * Figures (probes, answers, time to arrival) go to stderr. PBT_ONLY=name runs one case;
 * PBT_KEEP=1 keeps the directories. Every traffic loop is bounded in count and time.
 */
#include <curl/curl.h>
#include <signal.h>
#include <sodium.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "crypto/auth.h"
#include "crypto/keys.h"
#include "harness.h"
#include "hostile_tools.h"
#include "wire/wire.h"

#define PULL "/protocol.sync.v1.PostboxService/Pull"
#define KEY "/protocol.auth.v1.AuthService/Key"

#define FETCH_HUNG_IDS "64"
#define FETCH_RATE "100"
#define FETCH_SECONDS 12
#define FETCH_FROM "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9"
#define FETCH_EVENTS 10

#define ROT_RATE "10"
#define ROT_SECONDS 25
#define ROT_FROM "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5"

/* ---- the hostile tool (run by tests/hostile_tools.h) ----------------------------------------- */

/* The flood's answer counts (its --stats file), once it ended. */
static void flood_figures(const struct tool *fl, long *sent, long *accepted, long *s401, long *s503)
{
    json_t *fs = json_load_file(fl->stats, 0, NULL);
    *sent = (long)json_integer_value(json_object_get(fs, "sent"));
    *accepted = (long)json_integer_value(json_object_get(fs, "status_2xx"));
    *s401 = (long)json_integer_value(json_object_get(fs, "status_401"));
    *s503 = (long)json_integer_value(json_object_get(fs, "status_503"));
    json_decref(fs);
}

/* ---- fetch-slots ----------------------------------------------------------------------------- */

/* The hang tool holds at least 8 connections (8 key fetches running). */
static bool hung_fetches(void *vctx)
{
    return tool_log_count(vctx, "hang: accept") >= 8;
}

/* A Pull to d signed by a new identity (a key server R never heard of, answering at once),
 * kept in *keep until the caller frees it: while it lives its port (its server ID) cannot
 * go to the next identity, which R would take for this one with a new key (a rotation
 * within R's re-fetch interval: 401). */
static void new_sender_pull(const pbt_daemon *d, struct answer *a, pbt_ident **keep)
{
    memset(a, 0, sizeof *a);
    pbt_ident *id = *keep = pbt_ident_new(NULL);
    if (!id) return;
    pb_pull_req pr = {.max_events = 10};
    pb_buf body = PB_BUF_INIT;
    pb_wire_pull_req_encode(&pr, &body);
    char *tok = pb_auth_header_make(id->keys, id->server_id, d->server_id, (uint64_t)time(NULL));
    call(d->port, PULL, tok, &body, 10000, a);
    free(tok);
    pb_buf_free(&body);
}

static void test_fetch_slots(void)
{
    int failed0 = pbt_failed;
    const char *hargs[] = {"--listen", FETCH_HUNG_IDS, NULL};
    struct tool *hang = tool_run("hang", hargs), *fl = NULL;
    pbt_daemon *r = start("slotsR", NULL), *p = start("slotsP", NULL);
    if (!hang || !r || !p) goto out;

    char rate[16], secs[16], target[16];
    snprintf(rate, sizeof rate, "%s", FETCH_RATE);
    snprintf(secs, sizeof secs, "%d", FETCH_SECONDS);
    snprintf(target, sizeof target, "%u", r->port);
    const char *fargs[] = {"--target",     target,      "--ids-file", hang->ready, "--rate",
                           rate,           "--seconds", secs,         "--from",    FETCH_FROM,
                           "--timeout-ms", "8000",      NULL};
    fl = tool_run("flood", fargs);
    int64_t t0 = pbt_now_ms();
    /* the attack takes hold: R's fetches of hung keys are running (held by the hang tool) */
    CHECKF(pbt_wait_for(hung_fetches, hang, 5000), "R fetches the keys the forged tokens name");

    /* P, a real postboxd R never heard of, sends events while the flood lasts */
    unsigned sent = 0;
    int64_t all_at = 0; /* when all of P's events were at R, from the flood's start */
    struct probes {
        int n, ok;
        long last_bad;
        char last_id[64];
        int64_t worst_ms;
    } pull = {0}, key = {0};
    int64_t end = t0 + (FETCH_SECONDS - 2) * 1000;
    pbt_ident *idents[200] = {0};
    while (pbt_now_ms() < end && !tool_exited(fl) && pull.n < 200) {
        if (sent < FETCH_EVENTS && submit_one(p, r->server_id, 7, 100 + sent)) sent++;
        struct answer a;
        new_sender_pull(r, &a, &idents[pull.n]);
        pull.n++;
        if (a.status == 200) {
            pull.ok++;
        } else {
            pull.last_bad = a.status;
            snprintf(pull.last_id, sizeof pull.last_id, "%s", a.identifier ? a.identifier : "");
        }
        if (a.ms > pull.worst_ms) pull.worst_ms = a.ms;
        answer_clear(&a);
        call(r->port, KEY, NULL, NULL, 5000, &a);
        key.n++;
        if (a.status == 200) key.ok++;
        if (a.ms > key.worst_ms) key.worst_ms = a.ms;
        answer_clear(&a);
        if (!all_at && sent == FETCH_EVENTS && count_from(r, p->server_id) >= sent)
            all_at = pbt_now_ms() - t0;
        sleep_ms(200);
    }
    for (int i = 0; i < pull.n; i++)
        pbt_ident_free(idents[i]);
    /* P's events arrive while the flood still lasts */
    struct count_wait cw = {r, p->server_id, sent, 0};
    int64_t flood_left_ms = t0 + FETCH_SECONDS * 1000 - pbt_now_ms();
    bool arrived = pbt_wait_for(have_count, &cw, flood_left_ms > 0 ? (int)flood_left_ms : 1);
    int64_t arrived_at = all_at ? all_at : pbt_now_ms() - t0;
    bool during = !tool_exited(fl) && arrived_at < FETCH_SECONDS * 1000;
    size_t have = count_from(r, p->server_id);
    pbt_wait_for(tool_exited, fl, PBT_BOUND_MS);
    long fsent, faccepted, f401, f503;
    flood_figures(fl, &fsent, &faccepted, &f401, &f503);
    fprintf(stderr,
            "fetch-slots: flood of %ld forged Pushes from 8 addresses (%ld accepted, %ld 401, "
            "%ld 503); Pulls by new key servers: %d probes, %d answered 200 (last refusal %ld "
            "%s), slowest %lld ms; Key: %d probes, %d answered 200, slowest %lld ms; P's "
            "events: %zu of %u at R after %lld ms%s; R's key fetches: %.0f ok, %.0f error, "
            "%.0f refused\n",
            fsent, faccepted, f401, f503, pull.n, pull.ok, pull.last_bad, pull.last_id,
            (long long)pull.worst_ms, key.n, key.ok, (long long)key.worst_ms, have, sent,
            (long long)arrived_at, during ? " (during the flood)" : " (NOT during the flood)",
            pbt_metric(r, "postbox_key_fetches_total{result=\"ok\"}"),
            pbt_metric(r, "postbox_key_fetches_total{result=\"error\"}"),
            pbt_metric(r, "postbox_key_fetches_total{result=\"rate_limited\"}") +
                pbt_metric(r, "postbox_key_fetches_total{result=\"per_address\"}") +
                pbt_metric(r, "postbox_key_fetches_total{result=\"busy\"}"));
    CHECKF(faccepted == 0, "%ld forged Pushes were accepted", faccepted);
    CHECKF(pull.n >= 10, "Pulls by new key servers made during the flood: %d", pull.n);
    CHECKF(pull.ok == pull.n,
           "Pulls by new key servers during the flood: %d of %d answered 200 (last: %ld %s)",
           pull.ok, pull.n, pull.last_bad, pull.last_id);
    CHECKF(key.ok == key.n, "Key during the flood: %d of %d answered 200", key.ok, key.n);
    CHECKF(sent == FETCH_EVENTS, "P submitted %u events", sent);
    CHECKF(arrived && during, "P's %u events arrived at R while the flood lasted (%zu there)", sent,
           have);
    CHECKF(have == sent, "R holds exactly P's %u events (%zu)", sent, have);
out:
    if (pbt_failed > failed0 && r) pbt_daemon_dump_log(r);
    if (pbt_failed > failed0 && fl) tool_dump_log(fl);
    tool_free(fl);
    tool_free(hang);
    pbt_daemon_free(p);
    pbt_daemon_free(r);
}

/* ---- rotation -------------------------------------------------------------------------------- */

static bool refetch_used(void *vctx)
{
    const pbt_daemon *r = vctx;
    return pbt_metric(r, "postbox_key_fetches_total{result=\"rate_limited\"}") >= 8;
}

static void test_rotation(void)
{
    int failed0 = pbt_failed;
    const char *rargs[] = {"--key-refetch-interval", "10", NULL};
    pbt_daemon *r = start("rotR", rargs), *p = start("rotP", NULL), *p2 = NULL;
    struct tool *fl = NULL;
    char *idsdir = pbt_tmpdir("rotids"), *ids = xasprintf("%s/ids", idsdir);
    if (!r || !p) goto out;

    /* R learns P's first key */
    struct count_wait cw = {r, p->server_id, 1, 0};
    if (!submit_one(p, r->server_id, 8, 1)) goto out;
    CHECKF(pbt_wait_for(have_count, &cw, PBT_BOUND_MS), "P's first event arrives at R");

    /* forged Pushes naming P from 4 addresses, each failing P's stored key */
    FILE *f = fopen(ids, "w");
    if (!f) abort();
    fprintf(f, "%u\n", p->port);
    fclose(f);
    char secs[16], target[16];
    snprintf(secs, sizeof secs, "%d", ROT_SECONDS);
    snprintf(target, sizeof target, "%u", r->port);
    const char *fargs[] = {"--target",  target, "--ids-file", ids,      "--rate", ROT_RATE,
                           "--seconds", secs,   "--from",     ROT_FROM, NULL};
    fl = tool_run("flood", fargs);
    int64_t t0 = pbt_now_ms();
    /* the forged tokens use up the re-fetches they can (8 refusals counted as rate_limited:
     * each of the 4 addresses has had its turn) */
    CHECKF(pbt_wait_for(refetch_used, r, 5000), "forged tokens ask R to re-fetch P's key");

    /* P rotates its key: P stops, and a server with a new key takes its server ID (its
     * port), as P itself would with a new key (a store is bound to its key) */
    pbt_daemon_stop(p);
    p2 = pbt_daemon_new("rotP2", NULL);
    p2->port = p->port;
    snprintf(p2->server_id, sizeof p2->server_id, "%s", p->server_id);
    bool up = pbt_daemon_start(p2);
    CHECKF(up, "P restarts with a new key");
    int64_t t1 = pbt_now_ms();
    if (!up || !submit_one(p2, r->server_id, 8, 2)) goto out;
    cw.want = 2;
    int64_t left = t0 + ROT_SECONDS * 1000 - pbt_now_ms();
    bool arrived = pbt_wait_for(have_count, &cw, left > 0 ? (int)left : 1);
    int64_t took = pbt_now_ms() - t1;
    bool during = !tool_exited(fl);
    tool_stop(fl); /* SIGTERM: the flood stops early and writes its figures */
    long fsent, faccepted, f401, f503;
    flood_figures(fl, &fsent, &faccepted, &f401, &f503);
    fprintf(stderr,
            "rotation: flood of %ld forged Pushes naming P from 4 addresses (%ld accepted, %ld "
            "401, %ld 503); P's event after its new key: %s %lld ms after P restarted%s; R's "
            "key fetches: %.0f ok, %.0f refused; R logged %d 'learnt public key' for P\n",
            fsent, faccepted, f401, f503, arrived ? "arrived" : "NOT arrived", (long long)took,
            during ? " (during the flood)" : " (the flood had ended)",
            pbt_metric(r, "postbox_key_fetches_total{result=\"ok\"}"),
            pbt_metric(r, "postbox_key_fetches_total{result=\"rate_limited\"}"),
            pbt_log_count(r, "learnt public key", p->server_id));
    CHECKF(faccepted == 0, "%ld forged Pushes were accepted", faccepted);
    CHECKF(fsent >= 10, "the flood sent %ld forged Pushes", fsent);
    CHECKF(arrived && during, "P's event signed with its new key arrived while the flood lasted");
    CHECKF(count_from(r, p->server_id) == 2, "R holds exactly P's 2 events");
out:
    if (pbt_failed > failed0 && r) pbt_daemon_dump_log(r);
    if (pbt_failed > failed0 && p2) pbt_daemon_dump_log(p2);
    if (pbt_failed > failed0 && fl) tool_dump_log(fl);
    tool_free(fl);
    pbt_daemon_free(p2);
    pbt_daemon_free(p);
    pbt_daemon_free(r);
    if (!getenv("PBT_KEEP")) pbt_rmrf(idsdir);
    free(idsdir);
    free(ids);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return 2;
    const char *only = getenv("PBT_ONLY");
#define RUN(name, fn)                                                                              \
    if (!only || !strcmp(only, name)) fn()
    RUN("fetch-slots", test_fetch_slots);
    RUN("rotation", test_rotation);
    curl_global_cleanup();
    return pbt_finish();
}
