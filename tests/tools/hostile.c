/*
 * hostile - hostile and fake federation peers on 127.0.0.1, for the hostile-peer tests
 * (tests/integration/hostile_test.c). Test tool, never part of the daemon.
 *
 *   hostile serve    [--listen N] [--seed HEX] [--serve-key HEX] [--record FILE]
 *                    [--pull-events N] [--push-to PORT] [--ready FILE] [--seconds S]
 *       A fake Harmony server on N ports of 127.0.0.1 (server IDs 127.0.0.1:PORT).
 *       Answers AuthService/Key with the public key of --seed (random when absent), or
 *       with --serve-key (32 bytes, hex: any public key, e.g. another server's); Push with
 *       200 and postbox_seq_ack = the request's postbox_seq (a postbox-looking receiver);
 *       Pull with a PullResponse of --pull-events tiny events (default 0: empty), without
 *       sequence numbers; NotifyNewId with 200. With --record, every request is appended
 *       to FILE as one JSON line {"port", "path", "authorization" (null when absent),
 *       "body" (hex)}, so a test can replay what a peer sent.
 *   hostile hang     [--listen N] [--ready FILE] [--seconds S]
 *       Listens on N ports, accepts every connection and never reads nor answers (held
 *       open until the tool stops; past 4096 held connections the oldest is closed).
 *       Logs "hang: accept 127.0.0.1:PORT" for each connection.
 *   hostile pullbomb [--listen N] [--seed HEX] [--answer-bytes B] [--max-answers M]
 *                    [--push-to PORT] [--push-every-ms MS] [--push-max K]
 *                    [--ready FILE] [--stats FILE] [--seconds S]
 *       As serve (Key, Push, NotifyNewId), but every Pull is answered with a
 *       PullResponse of about B bytes (default 16 MiB - 64 KiB) of tiny, all distinct
 *       UserAddedToGuild events (small IDs, no sequence numbers), for M answers (default
 *       1000), then empty answers. Logs one line per answer; --stats gets
 *       {"answers", "events", "bytes"} at exit.
 *   hostile idents   [--listen N] [--seed HEX] [--key-per-id 1] --push-to PORT
 *                    [--push-max K] [--push-every-ms MS] [--from A,B,...] [--stats FILE]
 *                    [--ready FILE] [--parallel 1] [--go-file FILE] [--seconds S]
 *       Many identities: as serve on N ports (server IDs 127.0.0.1:PORT), all serving the
 *       key of --seed (one key, as wildcard DNS gives), or with --key-per-id 1 each its own
 *       key (derived from --seed and the port's index). Once listening, each ID in turn
 *       pushes one UserAddedToGuild event (a foreign peer's Push) to 127.0.0.1:PORT, K
 *       rounds (default 1) --push-every-ms apart, ID i from the --from address i mod
 *       their number; then serves
 *       on (Pulls are answered empty and logged) until --seconds or a signal. Logs and
 *       writes to --stats the answers: {"ok", "budget" (429 receive budget), "new_peers"
 *       (429 too many new peers), "other", "ok_ids" (IDs with at least one 200)}.
 *       --parallel 1: every round after the first sends its Pushes all at once, each on a
 *       connection of its own (many peers pushing together); --go-file FILE: the second
 *       round waits (at most 60 s) until FILE exists. Logs "idents: round K done".
 *   hostile flood    --target PORT --ids-file FILE [--rate R] [--seconds S]
 *                    [--timeout-ms T] [--stats FILE]
 *       Sends R (default 100, at most 1000) forged Pushes per second for S seconds
 *       (default 10, at most 120) to 127.0.0.1:PORT, without waiting for answers. Each
 *       token names the next server ID 127.0.0.1:P, P taken in turn from FILE (one port a
 *       line, e.g. a hang's --ready file), with the current time and a random 64-byte
 *       signature. Each request gives up after T ms (default 3000). Logs, and writes to
 *       --stats, the counts of answers by status, the requests without an answer and
 *       the slowest answer. --from A,B,... (up to 8 addresses of 127.0.0.0/8) sends the
 *       requests from those source addresses in turn, as several attacking hosts would.
 *       --conns N: each source address has at most N requests in flight, each on a
 *       keep-alive connection of its own (N connections per address, reused); a request
 *       due while its address holds N waits for one of them to be answered. No request is
 *       started after S seconds (a capped flood may send fewer than R x S); without
 *       --conns every request due before S seconds is sent, late if the machine is slow.
 *   hostile stall    --target PORT [--from A,B,...] [--conns N] [--declare D] [--send B]
 *                    [--seconds S]
 *       Opens N (default 16, at most 256) connections from each --from address (default
 *       127.0.0.1) to 127.0.0.1:PORT; on each sends the headers of a Push declaring a
 *       body of D bytes (default 65536) and then B bytes of it (default D - 1; 0 < B < D),
 *       and holds the connection, never sending the rest, for S seconds (default 10, at
 *       most 120) or until stopped. --ready gets the number of connections once every
 *       connection has sent its bytes; logs, and writes to --stats, the connections made,
 *       the body bytes sent and the connections the server closed before the end.
 *
 * Common options: --ready FILE gets the listening ports, one a line, once all listen
 * (written whole: a reader sees it complete or not at all). --seconds bounds the life of
 * the listening roles (default 300, at most 3600); they also stop on SIGTERM/SIGINT (as
 * do flood and stall).
 * --push-to PORT (serve, pullbomb): once listening, push one UserAddedToGuild event to
 * 127.0.0.1:PORT as the first port's server ID, signed with --seed's key, logging the
 * answer's status; pullbomb repeats it every --push-every-ms (0: once), --push-max times.
 *
 * Messages and tokens are made with the library's wire, keys and auth modules, base64 by
 * libsodium, HTTP served by libmicrohttpd and sent by libcurl (stall writes its requests on
 * plain sockets). Only 127.0.0.1 is ever addressed (from addresses of 127.0.0.0/8), and
 * every loop that sends traffic is bounded in count and time.
 *
 * Untrusted input: requests to the listening roles (bodies capped at 1 MiB and decoded by
 * the wire module; nothing in them is acted upon beyond recording and answering).
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "crypto/auth.h"
#include "crypto/keys.h"
#include "net/hrpc_client.h"
#include "util/buf.h"
#include "wire/wire.h"

#define PATH_PUSH "/protocol.sync.v1.PostboxService/Push"
#define PATH_PULL "/protocol.sync.v1.PostboxService/Pull"
#define PATH_NOTIFY "/protocol.sync.v1.PostboxService/NotifyNewId"
#define PATH_KEY "/protocol.auth.v1.AuthService/Key"

#define MAX_PORTS 256
#define BODY_MAX (1024 * 1024)
#define MAX_HELD 4096

enum role { R_SERVE, R_HANG, R_PULLBOMB, R_FLOOD, R_STALL, R_IDENTS };

static struct {
    enum role role;
    long listen, seconds, pull_events, answer_bytes, max_answers, push_every_ms, push_max;
    long rate, timeout_ms;
    long conns, declare, send; /* flood --conns; stall --conns, --declare, --send */
    uint16_t push_to, target;
    const char *ready, *record, *stats, *ids_file, *go_file;
    bool parallel;    /* idents: rounds after the first sent at once */
    char from[8][16]; /* flood: source addresses in 127/8, cycled per request */
    int nfrom;
    bool has_seed, has_serve_key, key_per_id;
    uint8_t seed[PB_SEED_LEN];
    uint8_t serve_key[PB_PUBKEY_LEN];
} opt = {.listen = 1,
         .seconds = -1,
         .answer_bytes = 16 * 1024 * 1024 - 64 * 1024,
         .max_answers = 1000,
         .push_max = 1,
         .rate = 100,
         .timeout_ms = 3000,
         .declare = 65536,
         .send = -1};

static volatile sig_atomic_t g_stop;
static pb_keys *g_keys;
static pb_keys *g_id_keys[MAX_PORTS]; /* idents --key-per-id: port i's key */
static uint16_t g_ports[MAX_PORTS];
static FILE *g_record;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t g_next_event;                    /* pullbomb: next tiny event, under g_mu */
static atomic_long g_answers, g_events, g_bytes; /* pullbomb answers served */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n > sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t w = write(2, line, (size_t)n);
    (void)w;
}

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

/* ---- files -------------------------------------------------------------------------------- */

/* Writes text to path through a temporary file and a rename. */
static bool write_whole(const char *path, const char *text)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        logf_("hostile: cannot write %s: %s", tmp, strerror(errno));
        return false;
    }
    fputs(text, f);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        logf_("hostile: cannot write %s: %s", path, strerror(errno));
        return false;
    }
    return true;
}

static bool write_ready(int n)
{
    pb_buf b = PB_BUF_INIT;
    for (int i = 0; i < n; i++) {
        char line[16];
        snprintf(line, sizeof line, "%u\n", g_ports[i]);
        pb_buf_append_str(&b, line);
    }
    pb_buf_append(&b, "", 1);
    bool ok = !opt.ready || write_whole(opt.ready, (const char *)b.data);
    pb_buf_free(&b);
    return ok;
}

static void write_stats(json_t *j)
{
    if (opt.stats) {
        char *s = json_dumps(j, JSON_COMPACT);
        write_whole(opt.stats, s);
        free(s);
    }
    json_decref(j);
}

/* ---- events ------------------------------------------------------------------------------- */

/* Tiny event number k: all distinct, small IDs. */
static void tiny_event(uint64_t k, pb_event *ev)
{
    memset(ev, 0, sizeof *ev);
    ev->kind = PB_EV_USER_ADDED_TO_GUILD;
    ev->user_id = 1 + k % 97;
    ev->guild_id = 1 + k / 97;
}

/* A PullResponse of tiny events, at most max_bytes long (no sequence numbers). */
static void tiny_answer(size_t max_events, size_t max_bytes, pb_buf *out, size_t *events)
{
    *events = 0;
    pthread_mutex_lock(&g_mu);
    pb_event ev;
    while (*events < max_events && out->len + 32 <= max_bytes) {
        tiny_event(g_next_event++, &ev);
        if (pb_wire_pull_resp_append_event(&ev, out) != PB_OK) break;
        (*events)++;
    }
    pthread_mutex_unlock(&g_mu);
}

/* ---- the listening roles (serve, pullbomb) ------------------------------------------------ */

struct port_ctx {
    uint16_t port;
    int index;
    struct MHD_Daemon *mhd;
};

/* The key the i-th port serves and signs with. */
static const pb_keys *port_keys(int i)
{
    return opt.key_per_id && g_id_keys[i] ? g_id_keys[i] : g_keys;
}

struct conn_state {
    pb_buf body;
    bool too_big;
};

static enum MHD_Result answer(struct MHD_Connection *conn, unsigned status, pb_buf *body)
{
    size_t len = 0;
    uint8_t *data = pb_buf_steal(body, &len);
    struct MHD_Response *r =
        data ? MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE)
             : MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(r, "Content-Type", "application/hrpc");
    MHD_add_response_header(r, "Hrpc-Version", "1");
    enum MHD_Result res = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return res;
}

static enum MHD_Result answer_error(struct MHD_Connection *conn, unsigned status, const char *id,
                                    const char *msg)
{
    pb_buf b = PB_BUF_INIT;
    pb_wire_error_encode(id, msg, NULL, 0, &b);
    return answer(conn, status, &b);
}

static void record(uint16_t port, const char *path, const char *auth, const pb_buf *body)
{
    if (!g_record) return;
    char *hex = malloc(body->len * 2 + 1);
    if (!hex) abort();
    sodium_bin2hex(hex, body->len * 2 + 1, body->data ? body->data : (const uint8_t *)"",
                   body->len);
    json_t *j = json_pack("{s:i,s:s,s:s?,s:s}", "port", (int)port, "path", path, "authorization",
                          auth, "body", hex);
    char *line = json_dumps(j, JSON_COMPACT);
    pthread_mutex_lock(&g_mu);
    fprintf(g_record, "%s\n", line);
    fflush(g_record);
    pthread_mutex_unlock(&g_mu);
    free(line);
    json_decref(j);
    free(hex);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    (void)version;
    struct port_ctx *pc = cls;
    struct conn_state *cs = *con_cls;
    if (!cs) {
        cs = calloc(1, sizeof *cs);
        if (!cs) abort();
        *con_cls = cs;
        return MHD_YES;
    }
    if (*upload_size) {
        if (cs->too_big || cs->body.len + *upload_size > BODY_MAX)
            cs->too_big = true;
        else
            pb_buf_append(&cs->body, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    const char *auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (cs->too_big) return answer_error(conn, 413, "hrpc.resource-exhausted", "body too large");
    record(pc->port, url, auth, &cs->body);
    if (strcmp(method, "POST") != 0)
        return answer_error(conn, 405, "hrpc.http.bad-unary-request", "POST only");
    pb_buf out = PB_BUF_INIT;
    if (!strcmp(url, PATH_KEY)) {
        pb_wire_key_resp_encode(
            opt.has_serve_key ? opt.serve_key : pb_keys_public(port_keys(pc->index)), &out);
        return answer(conn, 200, &out);
    }
    if (!strcmp(url, PATH_PUSH)) {
        pb_push_req pr;
        if (pb_wire_push_decode(cs->body.data, cs->body.len, 100000, &pr) != PB_OK)
            return answer_error(conn, 400, "hrpc.http.bad-unary-request", "not a PushRequest");
        /* acknowledge like a postbox of the project: the last sequence number, same epoch */
        uint64_t seq = pr.seqs ? pr.seqs[pr.n - 1] : 0;
        pb_wire_push_resp_encode(seq, pr.epoch, &out);
        pb_push_req_clear(&pr);
        logf_("hostile: %u: Push (postbox_seq %llu) answered 200", pc->port,
              (unsigned long long)seq);
        return answer(conn, 200, &out);
    }
    if (!strcmp(url, PATH_PULL)) {
        size_t n = 0;
        if (opt.role == R_PULLBOMB) {
            long k = atomic_fetch_add(&g_answers, 1) + 1;
            if (k <= opt.max_answers) {
                tiny_answer(SIZE_MAX, (size_t)opt.answer_bytes, &out, &n);
                atomic_fetch_add(&g_events, (long)n);
                atomic_fetch_add(&g_bytes, (long)out.len);
            }
            logf_("pullbomb: %u: answer %ld: %zu events, %zu bytes", pc->port, k, n, out.len);
        } else {
            if (opt.pull_events > 0)
                tiny_answer((size_t)opt.pull_events, PB_WIRE_MAX_MESSAGE, &out, &n);
            logf_("hostile: %u: Pull answered with %zu events", pc->port, n);
        }
        return answer(conn, 200, &out);
    }
    if (!strcmp(url, PATH_NOTIFY)) {
        logf_("hostile: %u: NotifyNewId answered 200", pc->port);
        return answer(conn, 200, &out);
    }
    return answer_error(conn, 404, "hrpc.not-found", "no such method here");
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    struct conn_state *cs = *con_cls;
    if (cs) {
        pb_buf_free(&cs->body);
        free(cs);
        *con_cls = NULL;
    }
}

/* Pushes one event to 127.0.0.1:opt.push_to as 127.0.0.1:g_ports[0], signed with g_keys. */
static void push_once(pb_client *cl, unsigned i)
{
    char as[32], to[32];
    snprintf(as, sizeof as, "127.0.0.1:%u", g_ports[0]);
    snprintf(to, sizeof to, "127.0.0.1:%u", opt.push_to);
    pb_event ev = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 1, .guild_id = 1000000000u + i};
    pb_buf body = PB_BUF_INIT;
    pb_wire_push_encode(&ev, NULL, 1, 0, &body);
    char *tok = pb_auth_header_make(g_keys, as, NULL, (uint64_t)time(NULL));
    pb_client_answer ans;
    pb_err err = pb_client_call(cl, to, PATH_PUSH, tok, body.data, body.len, &ans);
    logf_("hostile: push-to %s as %s: status %ld (%s%s%s)", to, as, ans.status, pb_strerror(err),
          ans.identifier ? " " : "", ans.identifier ? ans.identifier : "");
    pb_client_answer_clear(&ans);
    free(tok);
    pb_buf_free(&body);
}

static size_t keep_body(char *p, size_t size, size_t n, void *ud)
{
    pb_buf *b = ud;
    if (b->len < 4096) pb_buf_append(b, p, size * n);
    return size * n;
}

/* One idents Push: its easy handle and what it owns. */
struct ipush {
    CURL *h;
    struct curl_slist *hs;
    char *tok;
    pb_buf body, ans;
    char ifc[32];
    long status;
};

/* Sets up port i's Push of round `round` on p->h (a fresh handle). */
static void ipush_prep(struct ipush *p, int i, long round, const char *url)
{
    char as[32];
    snprintf(as, sizeof as, "127.0.0.1:%u", g_ports[i]);
    pb_event ev = {.kind = PB_EV_USER_ADDED_TO_GUILD,
                   .user_id = 7,
                   .guild_id = 2000000000u + (uint64_t)round * MAX_PORTS + (uint64_t)i};
    p->body = (pb_buf)PB_BUF_INIT;
    p->ans = (pb_buf)PB_BUF_INIT;
    p->status = 0;
    pb_wire_push_encode(&ev, NULL, 1, 0, &p->body);
    p->tok = pb_auth_header_make(port_keys(i), as, NULL, (uint64_t)time(NULL));
    char hdr[1024];
    snprintf(hdr, sizeof hdr, "Authorization: %s", p->tok);
    p->hs = curl_slist_append(NULL, hdr);
    p->hs = curl_slist_append(p->hs, "Content-Type: application/hrpc");
    p->hs = curl_slist_append(p->hs, "Hrpc-Version: 1");
    curl_easy_reset(p->h);
    curl_easy_setopt(p->h, CURLOPT_URL, url);
    curl_easy_setopt(p->h, CURLOPT_POST, 1L);
    curl_easy_setopt(p->h, CURLOPT_POSTFIELDS, (const char *)p->body.data);
    curl_easy_setopt(p->h, CURLOPT_POSTFIELDSIZE, (long)p->body.len);
    curl_easy_setopt(p->h, CURLOPT_HTTPHEADER, p->hs);
    curl_easy_setopt(p->h, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(p->h, CURLOPT_WRITEFUNCTION, keep_body);
    curl_easy_setopt(p->h, CURLOPT_WRITEDATA, &p->ans);
    if (opt.nfrom) {
        snprintf(p->ifc, sizeof p->ifc, "host!%s", opt.from[i % opt.nfrom]);
        curl_easy_setopt(p->h, CURLOPT_INTERFACE, p->ifc);
    }
}

static void ipush_clear(struct ipush *p)
{
    curl_slist_free_all(p->hs);
    p->hs = NULL;
    free(p->tok);
    p->tok = NULL;
    pb_buf_free(&p->body);
    pb_buf_free(&p->ans);
}

/* idents --go-file: waits (at most 60 s) for the file to exist. */
static void wait_go(void)
{
    for (int k = 0; opt.go_file && k < 6000 && !g_stop && access(opt.go_file, F_OK) != 0; k++)
        sleep_ms(10);
}

/* idents: each port's ID pushes one event to opt.push_to, opt.push_max rounds, from the
 * --from addresses; the answers counted (bounded: n * push_max requests of at most 10 s).
 * With --parallel 1 every round after the first sends its n Pushes at once (a connection
 * each), and --go-file holds the second round until the file exists. */
static void idents_push(int n)
{
    long ok = 0, budget = 0, newp = 0, other = 0, ok_ids = 0;
    bool *got = calloc((size_t)n, sizeof *got);
    struct ipush *ps = calloc((size_t)n, sizeof *ps);
    CURLM *multi = curl_multi_init();
    if (!got || !ps || !multi) abort();
    for (int i = 0; i < n; i++)
        if (!(ps[i].h = curl_easy_init())) abort();
    char url[64], to[32];
    snprintf(url, sizeof url, "http://127.0.0.1:%u" PATH_PUSH, opt.push_to);
    snprintf(to, sizeof to, "127.0.0.1:%u", opt.push_to);
    for (long round = 0; round < opt.push_max && !g_stop; round++) {
        if (round && opt.push_every_ms) sleep_ms(opt.push_every_ms);
        if (round == 1) wait_go();
        bool par = opt.parallel && round > 0;
        if (par) {
            for (int i = 0; i < n; i++) {
                ipush_prep(&ps[i], i, round, url);
                curl_multi_add_handle(multi, ps[i].h);
            }
            int running = n;
            int64_t end = now_ms() + 15000; /* each transfer gives up after 10 s */
            while (running > 0 && now_ms() < end) {
                curl_multi_perform(multi, &running);
                if (running > 0) curl_multi_poll(multi, NULL, 0, 100, NULL);
            }
            for (int i = 0; i < n; i++) {
                curl_easy_getinfo(ps[i].h, CURLINFO_RESPONSE_CODE, &ps[i].status);
                curl_multi_remove_handle(multi, ps[i].h);
            }
            logf_("idents: round %ld: %d Pushes sent at once", round + 1, n);
        }
        for (int i = 0; i < n && !g_stop; i++) {
            struct ipush *p = &ps[i];
            if (!par) {
                ipush_prep(p, i, round, url);
                if (curl_easy_perform(p->h) == CURLE_OK)
                    curl_easy_getinfo(p->h, CURLINFO_RESPONSE_CODE, &p->status);
            }
            pb_buf_append(&p->ans, "", 1);
            long status = p->status;
            if (status == 200) {
                ok++;
                if (!got[i]) ok_ids++;
                got[i] = true;
            } else if (status == 429 && strstr((const char *)p->ans.data, "new server IDs")) {
                newp++;
            } else if (status == 429 && strstr((const char *)p->ans.data, "receive budget")) {
                budget++;
            } else {
                other++;
                logf_("idents: push as 127.0.0.1:%u to %s: status %ld", g_ports[i], to, status);
            }
            ipush_clear(p);
        }
        logf_("idents: round %ld done", round + 1);
    }
    for (int i = 0; i < n; i++)
        curl_easy_cleanup(ps[i].h);
    curl_multi_cleanup(multi);
    free(ps);
    free(got);
    logf_("idents: pushed as %d IDs, %ld rounds: %ld ok (%ld IDs), %ld over a budget, %ld new "
          "peers refused, %ld other",
          n, opt.push_max, ok, ok_ids, budget, newp, other);
    write_stats(json_pack("{s:I,s:I,s:I,s:I,s:I}", "ok", (json_int_t)ok, "budget",
                          (json_int_t)budget, "new_peers", (json_int_t)newp, "other",
                          (json_int_t)other, "ok_ids", (json_int_t)ok_ids));
}

static int run_servers(void)
{
    struct port_ctx pcs[MAX_PORTS];
    int n = (int)opt.listen;
    if (opt.record) {
        g_record = fopen(opt.record, "a");
        if (!g_record) {
            logf_("hostile: cannot open %s: %s", opt.record, strerror(errno));
            return 1;
        }
    }
    for (int i = 0; i < n; i++) {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        pcs[i].mhd = MHD_start_daemon(
            MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO, 0, NULL, NULL, on_request, &pcs[i],
            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
            NULL, MHD_OPTION_CONNECTION_TIMEOUT, 60u, MHD_OPTION_END);
        const union MHD_DaemonInfo *info =
            pcs[i].mhd ? MHD_get_daemon_info(pcs[i].mhd, MHD_DAEMON_INFO_BIND_PORT) : NULL;
        if (!info || !info->port) {
            logf_("hostile: cannot listen on 127.0.0.1");
            return 1;
        }
        pcs[i].port = g_ports[i] = info->port;
        pcs[i].index = i;
        if (opt.key_per_id) { /* the seed with the index in its last two bytes */
            uint8_t seed[PB_SEED_LEN];
            memcpy(seed, opt.seed, sizeof seed);
            seed[PB_SEED_LEN - 2] ^= (uint8_t)(i >> 8);
            seed[PB_SEED_LEN - 1] ^= (uint8_t)i;
            if (pb_keys_from_seed(seed, &g_id_keys[i]) != PB_OK) return 1;
        }
    }
    char hex[2 * PB_PUBKEY_LEN + 1];
    pb_keys_hex(opt.has_serve_key ? opt.serve_key : pb_keys_public(g_keys), hex);
    logf_("hostile: %s on 127.0.0.1:%u%s (%d ports), serving key %s",
          opt.role == R_PULLBOMB ? "pullbomb"
          : opt.role == R_IDENTS ? "idents"
                                 : "serve",
          g_ports[0], n > 1 ? "..." : "", n, hex);
    if (!write_ready(n)) return 1;

    if (opt.role == R_IDENTS) idents_push(n);
    pb_client *cl = NULL;
    if (opt.push_to && opt.role != R_IDENTS) {
        pb_client_opts co = {.plain_http = true, .timeout_ms = 15000, .allow_private = true};
        if (pb_client_new(&co, &cl) != PB_OK) return 1;
    }
    int64_t end = now_ms() + opt.seconds * 1000;
    int64_t next_push = now_ms();
    long pushes = 0;
    while (!g_stop && now_ms() < end) {
        if (cl && pushes < opt.push_max && now_ms() >= next_push) {
            push_once(cl, (unsigned)pushes);
            pushes++;
            next_push = opt.push_every_ms > 0 ? now_ms() + opt.push_every_ms : INT64_MAX;
        }
        sleep_ms(50);
    }
    pb_client_free(cl);
    for (int i = 0; i < n; i++) {
        MHD_stop_daemon(pcs[i].mhd);
        pb_keys_free(g_id_keys[i]);
    }
    if (g_record) fclose(g_record);
    if (opt.role == R_PULLBOMB) {
        logf_("pullbomb: %ld answers, %ld events, %ld bytes", atomic_load(&g_answers),
              atomic_load(&g_events), atomic_load(&g_bytes));
        write_stats(json_pack("{s:I,s:I,s:I}", "answers", (json_int_t)atomic_load(&g_answers),
                              "events", (json_int_t)atomic_load(&g_events), "bytes",
                              (json_int_t)atomic_load(&g_bytes)));
    }
    return 0;
}

/* ---- hang -------------------------------------------------------------------------------------
 */

static int run_hang(void)
{
    int n = (int)opt.listen;
    struct pollfd pf[MAX_PORTS];
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    long cap = MAX_HELD;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && (long)rl.rlim_cur - n - 32 < cap)
        cap = (long)rl.rlim_cur - n - 32;
    if (cap < 1) cap = 1;
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof sa;
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 1024) != 0 ||
            getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
            logf_("hostile: hang cannot listen: %s", strerror(errno));
            return 1;
        }
        g_ports[i] = ntohs(sa.sin_port);
        pf[i] = (struct pollfd){fd, POLLIN, 0};
    }
    logf_("hang: %d ports from 127.0.0.1:%u", n, g_ports[0]);
    if (!write_ready(n)) return 1;
    int *held = calloc((size_t)cap, sizeof *held);
    if (!held) abort();
    long nheld = 0, next = 0, accepted = 0;
    int64_t end = now_ms() + opt.seconds * 1000;
    while (!g_stop && now_ms() < end) {
        if (poll(pf, (nfds_t)n, 200) <= 0) continue;
        for (int i = 0; i < n; i++) {
            if (!(pf[i].revents & POLLIN)) continue;
            int fd;
            while ((fd = accept4(pf[i].fd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
                accepted++;
                logf_("hang: accept 127.0.0.1:%u", g_ports[i]);
                if (nheld == cap)
                    close(held[next]); /* the oldest goes */
                else
                    nheld++;
                held[next] = fd;
                next = (next + 1) % cap;
            }
        }
    }
    for (long i = 0; i < nheld; i++)
        close(held[i]);
    for (int i = 0; i < n; i++)
        close(pf[i].fd);
    free(held);
    logf_("hang: %ld connections accepted", accepted);
    return 0;
}

/* ---- flood --------------------------------------------------------------------------------- */

/* "Authorization: <base64 Token>" naming id, current time, random signature. */
static char *forged_header(const char *id)
{
    pb_buf data = PB_BUF_INIT, tok = PB_BUF_INIT;
    pb_wire_authdata_encode(id, (uint64_t)time(NULL), NULL, &data);
    uint8_t sig[PB_SIG_LEN];
    randombytes_buf(sig, sizeof sig);
    pb_wire_token_encode(sig, sizeof sig, data.data, data.len, &tok);
    size_t b64 = sodium_base64_encoded_len(tok.len, sodium_base64_VARIANT_ORIGINAL);
    const char *prefix = "Authorization: ";
    char *out = malloc(strlen(prefix) + b64);
    if (!out) abort();
    strcpy(out, prefix);
    sodium_bin2base64(out + strlen(prefix), b64, tok.data, tok.len, sodium_base64_VARIANT_ORIGINAL);
    pb_buf_free(&data);
    pb_buf_free(&tok);
    return out;
}

struct xfer {
    struct xfer *prev, *next; /* the transfers in flight */
    CURL *h;
    struct curl_slist *hdrs;
    char *auth;
    int64_t t0;
    int from; /* index in opt.from (0 without --from) */
};

/* --conns: the source address (index in opt.from, 0 without --from) for the next request,
 * taken in turn from `turn` and skipping those holding --conns requests in flight; -1 when
 * every one does. Without --conns simply the next in turn. */
static int flood_pick_from(const long *inflight_per_from, long turn)
{
    int n = opt.nfrom ? opt.nfrom : 1;
    for (int i = 0; i < n; i++) {
        int f = (int)((turn + i) % n);
        if (!opt.conns || inflight_per_from[f] < opt.conns) return f;
    }
    return -1;
}

static void xfer_free(CURLM *m, struct xfer *x, struct xfer **head)
{
    if (x->prev)
        x->prev->next = x->next;
    else
        *head = x->next;
    if (x->next) x->next->prev = x->prev;
    curl_multi_remove_handle(m, x->h);
    curl_easy_cleanup(x->h);
    curl_slist_free_all(x->hdrs);
    free(x->auth);
    free(x);
}

static size_t discard(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

static int run_flood(void)
{
    if (!opt.target || !opt.ids_file) {
        logf_("hostile: flood needs --target and --ids-file");
        return 2;
    }
    FILE *f = fopen(opt.ids_file, "r");
    if (!f) {
        logf_("hostile: cannot read %s: %s", opt.ids_file, strerror(errno));
        return 1;
    }
    char(*ids)[32] = calloc(MAX_PORTS, sizeof *ids);
    if (!ids) abort();
    int nids = 0;
    char line[64];
    while (nids < MAX_PORTS && fgets(line, sizeof line, f)) {
        long p = strtol(line, NULL, 10);
        if (p > 0 && p < 65536) snprintf(ids[nids++], sizeof ids[0], "127.0.0.1:%ld", p);
    }
    fclose(f);
    if (!nids) {
        logf_("hostile: no ports in %s", opt.ids_file);
        free(ids);
        return 1;
    }
    pb_event ev = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 1, .guild_id = 2};
    pb_buf body = PB_BUF_INIT;
    pb_wire_push_encode(&ev, NULL, 1, 0, &body);
    char url[96];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", opt.target, PATH_PUSH);

    long total = opt.rate * opt.seconds;
    long sent = 0, inflight = 0, answered = 0, s2xx = 0, s401 = 0, s403 = 0, s429 = 0, s503 = 0,
         sother = 0, none = 0;
    int64_t slowest = 0;
    CURLM *m = curl_multi_init();
    long per_from[8] = {0};
    /* --conns: keep every address's connections open between its requests */
    if (opt.conns)
        curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, opt.conns * (opt.nfrom ? opt.nfrom : 1));
    struct xfer *head = NULL;
    int64_t start = now_ms();
    int64_t hard_end = start + opt.seconds * 1000 + opt.timeout_ms + 5000;
    logf_("flood: %ld forged Pushes to 127.0.0.1:%u, %ld a second for %ld s, naming %d IDs", total,
          opt.target, opt.rate, opt.seconds, nids);
    int64_t send_end = start + opt.seconds * 1000; /* no request is started after it */
    while (((sent < total && (!opt.conns || now_ms() < send_end)) || inflight > 0) && !g_stop &&
           now_ms() < hard_end) {
        int64_t now = now_ms();
        /* A request due before S seconds is started even when the loop wakes late (a
         * loaded machine); a capped flood (--conns) starts none after S seconds. */
        while (sent < total && now >= start + sent * 1000 / opt.rate &&
               (opt.conns ? now < send_end : start + sent * 1000 / opt.rate < send_end)) {
            int from = flood_pick_from(per_from, sent);
            if (from < 0) break; /* --conns: every address holds its connections' worth */
            struct xfer *x = calloc(1, sizeof *x);
            if (!x) abort();
            x->from = from;
            per_from[from]++;
            x->h = curl_easy_init();
            x->auth = forged_header(ids[sent % nids]);
            x->hdrs = curl_slist_append(NULL, "Content-Type: application/hrpc");
            x->hdrs = curl_slist_append(x->hdrs, "Hrpc-Version: 1");
            x->hdrs = curl_slist_append(x->hdrs, "Expect:");
            x->hdrs = curl_slist_append(x->hdrs, x->auth);
            x->t0 = now;
            curl_easy_setopt(x->h, CURLOPT_URL, url);
            if (opt.nfrom) {
                char ifc[24];
                snprintf(ifc, sizeof ifc, "host!%s", opt.from[from]);
                curl_easy_setopt(x->h, CURLOPT_INTERFACE, ifc);
            }
            curl_easy_setopt(x->h, CURLOPT_NOSIGNAL, 1L);
            curl_easy_setopt(x->h, CURLOPT_TIMEOUT_MS, opt.timeout_ms);
            curl_easy_setopt(x->h, CURLOPT_HTTPHEADER, x->hdrs);
            curl_easy_setopt(x->h, CURLOPT_POSTFIELDS, body.data);
            curl_easy_setopt(x->h, CURLOPT_POSTFIELDSIZE, (long)body.len);
            curl_easy_setopt(x->h, CURLOPT_WRITEFUNCTION, discard);
            curl_easy_setopt(x->h, CURLOPT_PRIVATE, x);
            curl_multi_add_handle(m, x->h);
            x->next = head;
            if (head) head->prev = x;
            head = x;
            sent++;
            inflight++;
        }
        int running = 0;
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        int q;
        while ((msg = curl_multi_info_read(m, &q))) {
            if (msg->msg != CURLMSG_DONE) continue;
            struct xfer *x = NULL;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
            long status = 0;
            if (msg->data.result == CURLE_OK) {
                curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
                answered++;
                int64_t ms = now_ms() - x->t0;
                if (ms > slowest) slowest = ms;
                if (status >= 200 && status < 300)
                    s2xx++;
                else if (status == 401)
                    s401++;
                else if (status == 403)
                    s403++;
                else if (status == 429)
                    s429++;
                else if (status == 503)
                    s503++;
                else
                    sother++;
            } else {
                none++;
            }
            per_from[x->from]--;
            xfer_free(m, x, &head);
            inflight--;
        }
        int64_t wait = 50;
        if (sent < total && flood_pick_from(per_from, sent) >= 0) {
            int64_t due = start + sent * 1000 / opt.rate - now_ms();
            if (due < wait) wait = due > 0 ? due : 0;
        }
        curl_multi_poll(m, NULL, 0, (int)wait, NULL);
    }
    /* anything still in flight (only at the hard end or on a signal) counts as unanswered */
    none += inflight;
    while (head)
        xfer_free(m, head, &head);
    curl_multi_cleanup(m);
    logf_("flood: sent %ld in %lld ms; answered %ld (2xx %ld, 401 %ld, 403 %ld, 429 %ld, 503 %ld, "
          "other %ld), no answer %ld, slowest answer %lld ms",
          sent, (long long)(now_ms() - start), answered, s2xx, s401, s403, s429, s503, sother, none,
          (long long)slowest);
    write_stats(json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "sent", (json_int_t)sent,
                          "answered", (json_int_t)answered, "status_2xx", (json_int_t)s2xx,
                          "status_401", (json_int_t)s401, "status_403", (json_int_t)s403,
                          "status_429", (json_int_t)s429, "status_503", (json_int_t)s503,
                          "status_other", (json_int_t)sother, "no_answer", (json_int_t)none,
                          "slowest_ms", (json_int_t)slowest));
    pb_buf_free(&body);
    free(ids);
    return 0;
}

/* ---- stall -------------------------------------------------------------------------------- */

/* A blocking TCP connection from src (an address of 127/8) to 127.0.0.1:port, with a 5 s
 * send timeout (a server that stops reading cannot hold the tool); -1 on failure. */
static int stall_connect(const char *src, uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET};
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (inet_pton(AF_INET, src, &a.sin_addr) != 1 || bind(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Writes all of p, or fails (false). */
static bool stall_write(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

static int run_stall(void)
{
    if (!opt.target) {
        logf_("hostile: stall needs --target");
        return 2;
    }
    if (!opt.nfrom) {
        strcpy(opt.from[0], "127.0.0.1");
        opt.nfrom = 1;
    }
    long conns = opt.conns ? opt.conns : 16;
    long send_n = opt.send >= 0 ? opt.send : opt.declare - 1;
    if (send_n < 1 || send_n >= opt.declare) {
        logf_("hostile: stall wants 0 < --send < --declare");
        return 2;
    }
    char head[512];
    int hl = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nContent-Type: application/hrpc\r\n"
                      "Hrpc-Version: 1\r\nContent-Length: %ld\r\n\r\n",
                      PATH_PUSH, opt.target, opt.declare);
    char *body = calloc(1, (size_t)send_n);
    struct pollfd *fds = calloc((size_t)(conns * opt.nfrom), sizeof *fds);
    if (!body || !fds) abort();
    int n = 0;
    long failed = 0, bytes = 0;
    int64_t start = now_ms(), end = start + opt.seconds * 1000;
    for (long i = 0; i < conns && !g_stop && now_ms() < end; i++) {
        for (int f = 0; f < opt.nfrom && !g_stop; f++) {
            int fd = stall_connect(opt.from[f], opt.target);
            if (fd < 0 || !stall_write(fd, head, (size_t)hl) ||
                !stall_write(fd, body, (size_t)send_n)) {
                if (fd >= 0) close(fd);
                failed++;
                continue;
            }
            bytes += send_n;
            fds[n++] = (struct pollfd){.fd = fd, .events = POLLIN};
        }
    }
    logf_("stall: %d connections from %d address(es) to 127.0.0.1:%u each sent %ld of %ld body "
          "bytes in %lld ms (%ld failed); holding them",
          n, opt.nfrom, opt.target, send_n, opt.declare, (long long)(now_ms() - start), failed);
    char line[32];
    snprintf(line, sizeof line, "%d\n", n);
    if (opt.ready) write_whole(opt.ready, line);
    /* hold until the end, noting the connections the server closes (EOF or an answer) */
    long closed = 0;
    while (!g_stop && now_ms() < end) {
        int64_t left = end - now_ms();
        int rc = poll(fds, (nfds_t)n, left < 200 ? (int)left : 200);
        for (int i = 0; rc > 0 && i < n; i++) {
            if (fds[i].fd < 0 || !fds[i].revents) continue;
            char sink[4096];
            ssize_t r = recv(fds[i].fd, sink, sizeof sink, MSG_DONTWAIT);
            if (r > 0 || (r < 0 && (errno == EAGAIN || errno == EINTR))) continue;
            close(fds[i].fd);
            fds[i].fd = -1;
            closed++;
        }
    }
    for (int i = 0; i < n; i++)
        if (fds[i].fd >= 0) close(fds[i].fd);
    logf_("stall: released %d connections after %lld ms, %ld of them closed by the server before",
          n, (long long)(now_ms() - start), closed);
    write_stats(json_pack("{s:I,s:I,s:I,s:I}", "conns", (json_int_t)n, "failed", (json_int_t)failed,
                          "body_bytes", (json_int_t)bytes, "closed_early", (json_int_t)closed));
    free(fds);
    free(body);
    return 0;
}

/* ---- arguments ------------------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr,
            "usage: hostile serve|hang|pullbomb|flood|stall|idents [options] (see the opening "
            "comment of "
            "tests/tools/hostile.c)\n"
            "  serve     --listen N --seed HEX --serve-key HEX --record FILE --pull-events N\n"
            "            --push-to PORT --ready FILE --seconds S\n"
            "  hang      --listen N --ready FILE --seconds S\n"
            "  pullbomb  --listen N --seed HEX --answer-bytes B --max-answers M --push-to PORT\n"
            "            --push-every-ms MS --push-max K --ready FILE --stats FILE --seconds S\n"
            "  flood     --target PORT --ids-file FILE --rate R --seconds S --timeout-ms T\n"
            "            --from ADDR[,ADDR...] --conns N --stats FILE\n"
            "  stall     --target PORT --from ADDR[,ADDR...] --conns N --declare D --send B\n"
            "            --seconds S --ready FILE --stats FILE\n"
            "  idents    --listen N --seed HEX --key-per-id 1 --push-to PORT --push-max K\n"
            "            --from ADDR[,ADDR...] --stats FILE --ready FILE --seconds S\n");
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
    char *e;
    errno = 0;
    long v = strtol(s, &e, 10);
    if (!*s || *e || errno || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static bool parse_hex32(const char *s, uint8_t out[32])
{
    size_t len = 0;
    return strlen(s) == 64 && sodium_hex2bin(out, 32, s, 64, NULL, &len, NULL) == 0 && len == 32;
}

/* "127.0.0.2,127.0.0.3": up to 8 addresses, each in 127.0.0.0/8 (tests only use loopback). */
static bool parse_from(const char *v)
{
    char tmp[256];
    if (strlen(v) >= sizeof tmp) return false;
    strcpy(tmp, v);
    opt.nfrom = 0;
    for (char *save = NULL, *a = strtok_r(tmp, ",", &save); a; a = strtok_r(NULL, ",", &save)) {
        struct in_addr in;
        if (opt.nfrom == 8 || inet_pton(AF_INET, a, &in) != 1 || (ntohl(in.s_addr) >> 24) != 127)
            return false;
        snprintf(opt.from[opt.nfrom++], sizeof opt.from[0], "%s", a);
    }
    return opt.nfrom > 0;
}

static bool parse_args(int argc, char **argv)
{
    if (argc < 2) return false;
    const char *r = argv[1];
    if (!strcmp(r, "serve"))
        opt.role = R_SERVE;
    else if (!strcmp(r, "hang"))
        opt.role = R_HANG;
    else if (!strcmp(r, "pullbomb"))
        opt.role = R_PULLBOMB;
    else if (!strcmp(r, "flood"))
        opt.role = R_FLOOD;
    else if (!strcmp(r, "stall"))
        opt.role = R_STALL;
    else if (!strcmp(r, "idents"))
        opt.role = R_IDENTS;
    else
        return false;
    for (int i = 2; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
        if (!v) return false;
        if (!strcmp(a, "--ready"))
            opt.ready = v;
        else if (!strcmp(a, "--record"))
            opt.record = v;
        else if (!strcmp(a, "--stats"))
            opt.stats = v;
        else if (!strcmp(a, "--ids-file"))
            opt.ids_file = v;
        else if (!strcmp(a, "--go-file"))
            opt.go_file = v;
        else if (!strcmp(a, "--parallel"))
            opt.parallel = !strcmp(v, "1");
        else if (!strcmp(a, "--from")) {
            if (!parse_from(v)) return false;
        } else if (!strcmp(a, "--seed")) {
            if (!parse_hex32(v, opt.seed)) return false;
            opt.has_seed = true;
        } else if (!strcmp(a, "--key-per-id")) {
            opt.key_per_id = !strcmp(v, "1");
        } else if (!strcmp(a, "--serve-key")) {
            if (!parse_hex32(v, opt.serve_key)) return false;
            opt.has_serve_key = true;
        } else if (!strcmp(a, "--listen") && parse_long(v, 1, MAX_PORTS, &n))
            opt.listen = n;
        else if (!strcmp(a, "--seconds") && parse_long(v, 1, 3600, &n))
            opt.seconds = n;
        else if (!strcmp(a, "--pull-events") && parse_long(v, 0, 1000000, &n))
            opt.pull_events = n;
        else if (!strcmp(a, "--answer-bytes") && parse_long(v, 64, PB_WIRE_MAX_MESSAGE, &n))
            opt.answer_bytes = n;
        else if (!strcmp(a, "--max-answers") && parse_long(v, 0, 100000, &n))
            opt.max_answers = n;
        else if (!strcmp(a, "--push-every-ms") && parse_long(v, 0, 3600000, &n))
            opt.push_every_ms = n;
        else if (!strcmp(a, "--push-max") && parse_long(v, 0, 10000, &n))
            opt.push_max = n;
        else if (!strcmp(a, "--rate") && parse_long(v, 1, 1000, &n))
            opt.rate = n;
        else if (!strcmp(a, "--timeout-ms") && parse_long(v, 10, 60000, &n))
            opt.timeout_ms = n;
        else if (!strcmp(a, "--push-to") && parse_long(v, 1, 65535, &n))
            opt.push_to = (uint16_t)n;
        else if (!strcmp(a, "--target") && parse_long(v, 1, 65535, &n))
            opt.target = (uint16_t)n;
        else if (!strcmp(a, "--conns") && parse_long(v, 1, 256, &n))
            opt.conns = n;
        else if (!strcmp(a, "--declare") && parse_long(v, 2, 16 * 1024 * 1024, &n))
            opt.declare = n;
        else if (!strcmp(a, "--send") && parse_long(v, 1, 16 * 1024 * 1024, &n))
            opt.send = n;
        else
            return false;
    }
    bool timed = opt.role == R_FLOOD || opt.role == R_STALL;
    if (opt.seconds < 0) opt.seconds = timed ? 10 : 300;
    if (timed && opt.seconds > 120) return false;
    if (opt.role == R_IDENTS && !opt.push_to) return false;
    return true;
}

int main(int argc, char **argv)
{
    if (!parse_args(argc, argv)) {
        usage();
        return 2;
    }
    if (sodium_init() < 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return 1;
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    pb_err err = opt.has_seed ? pb_keys_from_seed(opt.seed, &g_keys) : pb_keys_generate(&g_keys);
    if (err != PB_OK) {
        logf_("hostile: no key: %s", pb_strerror(err));
        return 1;
    }
    int rc;
    switch (opt.role) {
    case R_HANG:
        rc = run_hang();
        break;
    case R_FLOOD:
        rc = run_flood();
        break;
    case R_STALL:
        rc = run_stall();
        break;
    default:
        rc = run_servers();
        break;
    }
    pb_keys_free(g_keys);
    curl_global_cleanup();
    return rc;
}
