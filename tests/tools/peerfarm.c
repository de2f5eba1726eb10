/*
 * peerfarm - many fake federation peers in one process (test and benchmark tool, never
 * part of the daemon): a load target for a postboxd that delivers to thousands of servers.
 *
 *   peerfarm --count N [--first-port P] [--hung SPEC] [--unaccepted SPEC]
 *            [--refusing SPEC] [--key-file FILE] [--threads T] [--backlog B] [--conn-timeout S]
 *            [--ready FILE] [--stats FILE] [--tls-cert FILE --tls-key FILE]
 *
 * Server ID i (0 <= i < N) is 127.0.0.1:PORT_i, one port per ID: from P upwards, skipping
 * ports in use (P = 0, the default: ports chosen by the kernel). Each ID is in one mode:
 *
 *   ok          serves protocol.auth.v1.AuthService/Key (every ID its own Ed25519 key, as
 *               real servers have: derived from the farm's key, --key-file, else a fresh
 *               one, by pbt_farm_id_key) and protocol.sync.v1.PostboxService:
 *               Push is answered at once with 200 and an empty PushResponse (the farm is a
 *               foreign peer: no extension fields, so a postbox sends it one event per
 *               Push), Pull with an empty PullResponse, NotifyNewId with 200. Tokens are
 *               not verified (a load target).
 *   hung        (--hung SPEC) connections are accepted and read, never answered
 *   unaccepted  (--unaccepted SPEC) listening, never accepting: connections wait in the
 *               kernel's backlog (--backlog, default 128), then SYNs go unanswered
 *   refusing    (--refusing SPEC) the port is bound but not listening: connection refused
 *
 * With --tls-cert and --tls-key (PEM) every ID serves HTTPS with that certificate (one for
 * all: their addresses are all 127.0.0.1) and issues TLS session tickets, as a web server
 * in front of a real peer does; the control endpoint stays plain HTTP.
 *
 * SPEC is a comma-separated list of indices "7", ranges "0-99" and residues "%10=9"
 * (every i with i % 10 == 9). An index in two SPECs is refused.
 *
 * What it records, per ID: every event pushed (decoded with lib/wire: arrival time,
 * postbox_seq, kind, user_id, guild_id) in arrival order, so the sender's order can be
 * checked; the number of Pulls with the first and last arrival time; Key and NotifyNewId
 * requests; refused requests. Times are CLOCK_MONOTONIC microseconds (the same clock as
 * the harness's pbt_now_ms and the bench's, on this machine).
 *
 * How to read it: a control HTTP endpoint on 127.0.0.1 (its port is in the ready file):
 *   GET /summary           {"now_us", "pushes", "pulls", "keys", "notifies", "bad",
 *                           "ids_pushed", "ids_pulled", "connections" (to the IDs),
 * "hung_connections", "tls_full", "tls_resumed" (handshakes of closed connections)} GET
 * /stats[?events=0]  {"now_us", "ids": [{"id", "mode", "pushes", "pulls", "first_pull_us",
 * "last_pull_us", "keys", "notifies", "bad", "events": [[t_us, seq, kind, user_id, guild_id],
 * ...]}]} and the /stats document written to --stats FILE on SIGUSR1 and at exit (SIGTERM, SIGINT).
 * kind is pb_event_kind (1 removed, 2 added, 3 invited, 4 rejected); guild_id is 0 for an invite;
 * uint64 values are written as their int64 bit pattern. --ready FILE is written (atomically, by
 * rename) once every socket is open: {"control_port", "public_key" (hex, the farm's key), "ids":
 * [{"id", "port", "mode", "public_key" (hex, the ID's)}]}.
 *
 * Design: one thread waits with epoll on every listening socket, the hung connections and
 * a signalfd; it accepts, keeps hung connections itself (reading and discarding), and hands
 * every other accepted socket to one of T libmicrohttpd daemons (--threads, default 2)
 * created with MHD_USE_NO_LISTEN_SOCKET (epoll; poll over TLS), through MHD_add_connection. A
 * request finds the ID it was addressed to from its socket's local port (getsockname). So N IDs
 * cost N sockets and 1 + T threads.
 *
 * Untrusted input: HTTP requests from the daemon under test. libmicrohttpd parses HTTP;
 * bodies are capped at 1 MiB before buffering (413); Push and Pull bodies are decoded by
 * lib/wire, and what does not decode is answered 400 and counted as bad.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "crypto/keys.h"
#include "farm.h"
#include "util/buf.h"
#include "util/mem.h"
#include "wire/wire.h"

#define MAX_IDS 30000
#define MAX_BODY (1024 * 1024)
#define MAX_THREADS 16
#define CONTROL (-2)
#define NO_ID (-1)

#define PATH_KEY "/protocol.auth.v1.AuthService/Key"
#define PATH_PUSH "/protocol.sync.v1.PostboxService/Push"
#define PATH_PULL "/protocol.sync.v1.PostboxService/Pull"
#define PATH_NOTIFY "/protocol.sync.v1.PostboxService/NotifyNewId"

/* epoll tags (high 32 bits of epoll_event.data.u64) */
enum { TAG_LISTEN = 1, TAG_HUNG_CONN = 2, TAG_SIGNAL = 3 };

enum mode { M_OK = 0, M_HUNG, M_UNACCEPTED, M_REFUSING, M__COUNT };
static const char *const mode_names[M__COUNT] = {"ok", "hung", "unaccepted", "refusing"};

struct rec { /* one pushed event */
    int64_t t_us;
    uint64_t seq;
    uint64_t user_id;
    uint64_t guild_id;
    uint8_t kind;
};

struct fid { /* one server ID */
    uint16_t port;
    uint8_t mode;
    int fd;
    /* under g_mu */
    uint64_t pulls, keys, notifies, bad;
    int64_t first_pull_us, last_pull_us;
    struct rec *evs;
    size_t nevs, cap;
};

static struct {
    size_t count;
    unsigned first_port;
    const char *spec[M__COUNT];
    const char *key_file, *ready, *stats;
    const char *tls_cert, *tls_key;
    unsigned threads;
    unsigned conn_timeout; /* seconds an idle connection is kept */
    int backlog;
} opt = {.threads = 2, .backlog = 128, .conn_timeout = 120};

static struct fid *g_ids;
static int32_t g_port_idx[65536];
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pb_keys *g_keys;
static uint8_t (*g_pubs)[PB_PUBKEY_LEN]; /* each ID's public key (pbt_farm_id_key) */
static struct MHD_Daemon *g_mhd[MAX_THREADS];
static struct MHD_Daemon *g_ctl_mhd; /* with TLS: the control endpoint's (plain HTTP) */
static char *g_tls_cert, *g_tls_key; /* PEM texts */
static gnutls_datum_t g_ticket_key;  /* session ticket key */
static uint16_t g_control_port;
static int g_control_fd = -1;
static atomic_ulong g_conns, g_hung_conns, g_next_mhd;
static atomic_ulong g_tls_full, g_tls_resumed; /* handshakes of closed TLS connections */

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("peerfarm: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: peerfarm --count N [options]\n"
            "  --count N          server IDs 127.0.0.1:PORT, one port each (1..%d)\n"
            "  --first-port P     ports from P upwards, skipping ports in use (default 0:\n"
            "                     chosen by the kernel)\n"
            "  --hung SPEC        IDs that accept connections and never answer\n"
            "  --unaccepted SPEC  IDs that listen and never accept\n"
            "  --refusing SPEC    IDs whose port is closed (connection refused)\n"
            "                     SPEC: comma-separated 7, 0-99, %%10=9 (i %% 10 == 9)\n"
            "  --key-file FILE    Ed25519 key (postboxd's key file format) served by every\n"
            "                     ID (default: a fresh key)\n"
            "  --threads T        libmicrohttpd threads (default 2, at most %d)\n"
            "  --backlog B        listen backlog (default 128)\n"
            "  --conn-timeout S   close a connection idle S seconds (default 120)\n"
            "  --ready FILE       written once listening: control port, key, IDs (JSON)\n"
            "  --stats FILE       per-ID statistics (JSON), written on SIGUSR1 and at exit\n"
            "  --tls-cert FILE    serve HTTPS with this certificate (PEM; with --tls-key)\n"
            "  --tls-key FILE     its private key (PEM)\n"
            "control endpoint (127.0.0.1, port in the ready file): GET /summary, GET /stats\n"
            "[?events=0]\n",
            MAX_IDS, MAX_THREADS);
}

/* ---- options ------------------------------------------------------------------------------ */

static bool parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v > max || s[0] == '-') return false;
    *out = v;
    return true;
}

/* Applies SPEC to modes[]: false (with a message) on a syntax error, an index out of range
 * or an index already given another mode. */
static bool apply_spec(const char *spec, enum mode m, uint8_t *modes, size_t n)
{
    char *copy = pb_xstrdup(spec);
    bool ok = true;
    for (char *save = NULL, *item = strtok_r(copy, ",", &save); item && ok;
         item = strtok_r(NULL, ",", &save)) {
        unsigned long a = 0, b = 0, mod = 0, rem = 0;
        char *dash = strchr(item, '-'), *eq = strchr(item, '=');
        if (item[0] == '%' && eq) {
            *eq = '\0';
            ok = parse_uint(item + 1, MAX_IDS, &mod) && mod > 0 &&
                 parse_uint(eq + 1, MAX_IDS, &rem) && rem < mod;
            a = 0;
            b = n ? n - 1 : 0;
        } else if (dash) {
            *dash = '\0';
            ok = parse_uint(item, MAX_IDS, &a) && parse_uint(dash + 1, MAX_IDS, &b) && a <= b;
            mod = 1;
        } else {
            ok = parse_uint(item, MAX_IDS, &a);
            b = a;
            mod = 1;
        }
        if (!ok) {
            say("bad --%s item \"%s\"", mode_names[m], item);
            break;
        }
        if (b >= n) {
            say("--%s: index %lu out of range (--count %zu)", mode_names[m], b, n);
            ok = false;
            break;
        }
        for (unsigned long i = a; i <= b; i++) {
            if (i % mod != rem) continue;
            if (modes[i] != M_OK && modes[i] != m) {
                say("ID %lu is both %s and %s", i, mode_names[modes[i]], mode_names[m]);
                ok = false;
                break;
            }
            modes[i] = (uint8_t)m;
        }
    }
    free(copy);
    return ok;
}

static bool parse_args(int argc, char **argv)
{
    static const struct option longopts[] = {{"count", required_argument, NULL, 'n'},
                                             {"first-port", required_argument, NULL, 'p'},
                                             {"hung", required_argument, NULL, 'h'},
                                             {"unaccepted", required_argument, NULL, 'u'},
                                             {"refusing", required_argument, NULL, 'r'},
                                             {"key-file", required_argument, NULL, 'k'},
                                             {"threads", required_argument, NULL, 't'},
                                             {"backlog", required_argument, NULL, 'b'},
                                             {"conn-timeout", required_argument, NULL, 'T'},
                                             {"ready", required_argument, NULL, 'R'},
                                             {"stats", required_argument, NULL, 'S'},
                                             {"tls-cert", required_argument, NULL, 'C'},
                                             {"tls-key", required_argument, NULL, 'K'},
                                             {NULL, 0, NULL, 0}};
    int c;
    unsigned long v;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'n':
            if (!parse_uint(optarg, MAX_IDS, &v) || v == 0) return false;
            opt.count = v;
            break;
        case 'p':
            if (!parse_uint(optarg, 65535, &v)) return false;
            opt.first_port = (unsigned)v;
            break;
        case 'h':
            opt.spec[M_HUNG] = optarg;
            break;
        case 'u':
            opt.spec[M_UNACCEPTED] = optarg;
            break;
        case 'r':
            opt.spec[M_REFUSING] = optarg;
            break;
        case 'k':
            opt.key_file = optarg;
            break;
        case 't':
            if (!parse_uint(optarg, MAX_THREADS, &v) || v == 0) return false;
            opt.threads = (unsigned)v;
            break;
        case 'b':
            if (!parse_uint(optarg, 65535, &v) || v == 0) return false;
            opt.backlog = (int)v;
            break;
        case 'T':
            if (!parse_uint(optarg, 3600, &v) || v == 0) return false;
            opt.conn_timeout = (unsigned)v;
            break;
        case 'R':
            opt.ready = optarg;
            break;
        case 'S':
            opt.stats = optarg;
            break;
        case 'C':
            opt.tls_cert = optarg;
            break;
        case 'K':
            opt.tls_key = optarg;
            break;
        default:
            return false;
        }
    }
    return optind == argc && opt.count > 0 && !opt.tls_cert == !opt.tls_key;
}

/* The whole of a small file, NUL-terminated; NULL when unreadable. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    pb_buf b = PB_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        pb_buf_append(&b, chunk, n);
    fclose(f);
    pb_buf_append(&b, "", 1);
    return (char *)pb_buf_steal(&b, NULL);
}

/* A TLS connection starts: session tickets on, before its handshake. When it closes, its
 * handshake is counted, resumed or full (one that did not complete counts as full). */
static void on_tls_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                              enum MHD_ConnectionNotificationCode code)
{
    (void)cls;
    (void)socket_context;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    if (!ci || !ci->tls_session) return;
    if (code == MHD_CONNECTION_NOTIFY_CLOSED)
        atomic_fetch_add(gnutls_session_is_resumed(ci->tls_session) ? &g_tls_resumed : &g_tls_full,
                         1);
    else if (code == MHD_CONNECTION_NOTIFY_STARTED && g_ticket_key.data)
        gnutls_session_ticket_enable_server(ci->tls_session, &g_ticket_key);
}

/* ---- statistics ------------------------------------------------------------------------------ */

/* The /stats document (new reference). With g_mu held. */
static json_t *stats_json(bool with_events)
{
    json_t *ids = json_array();
    for (size_t i = 0; i < opt.count; i++) {
        struct fid *f = &g_ids[i];
        char id[32];
        snprintf(id, sizeof id, "127.0.0.1:%u", f->port);
        json_t *o = json_pack(
            "{s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "id", id, "mode", mode_names[f->mode],
            "pushes", (json_int_t)f->nevs, "pulls", (json_int_t)f->pulls, "first_pull_us",
            (json_int_t)f->first_pull_us, "last_pull_us", (json_int_t)f->last_pull_us, "keys",
            (json_int_t)f->keys, "notifies", (json_int_t)f->notifies, "bad", (json_int_t)f->bad);
        if (with_events) {
            json_t *evs = json_array();
            for (size_t k = 0; k < f->nevs; k++) {
                const struct rec *r = &f->evs[k];
                json_array_append_new(
                    evs, json_pack("[I,I,i,I,I]", (json_int_t)r->t_us, (json_int_t)r->seq,
                                   (int)r->kind, (json_int_t)r->user_id, (json_int_t)r->guild_id));
            }
            json_object_set_new(o, "events", evs);
        }
        json_array_append_new(ids, o);
    }
    return json_pack("{s:I,s:o}", "now_us", (json_int_t)now_us(), "ids", ids);
}

static json_t *summary_json(void)
{
    uint64_t pushes = 0, pulls = 0, keys = 0, notifies = 0, bad = 0, pushed = 0, pulled = 0;
    pthread_mutex_lock(&g_mu);
    for (size_t i = 0; i < opt.count; i++) {
        const struct fid *f = &g_ids[i];
        pushes += f->nevs;
        pulls += f->pulls;
        keys += f->keys;
        notifies += f->notifies;
        bad += f->bad;
        pushed += f->nevs > 0;
        pulled += f->pulls > 0;
    }
    pthread_mutex_unlock(&g_mu);
    return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "now_us",
                     (json_int_t)now_us(), "pushes", (json_int_t)pushes, "pulls", (json_int_t)pulls,
                     "keys", (json_int_t)keys, "notifies", (json_int_t)notifies, "bad",
                     (json_int_t)bad, "ids_pushed", (json_int_t)pushed, "ids_pulled",
                     (json_int_t)pulled, "connections", (json_int_t)atomic_load(&g_conns),
                     "hung_connections", (json_int_t)atomic_load(&g_hung_conns), "tls_full",
                     (json_int_t)atomic_load(&g_tls_full), "tls_resumed",
                     (json_int_t)atomic_load(&g_tls_resumed));
}

/* Writes j to path atomically (path.tmp, then rename); false on failure (message said). */
static bool write_json(const char *path, json_t *j)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (json_dump_file(j, tmp, JSON_COMPACT) != 0 || rename(tmp, path) != 0) {
        say("cannot write %s: %s", path, strerror(errno));
        return false;
    }
    return true;
}

static void write_stats(void)
{
    if (!opt.stats) return;
    pthread_mutex_lock(&g_mu);
    json_t *j = stats_json(true);
    pthread_mutex_unlock(&g_mu);
    write_json(opt.stats, j);
    json_decref(j);
}

/* ---- requests ------------------------------------------------------------------------------- */

struct req {
    int idx; /* ID index, CONTROL, or NO_ID */
    pb_buf body;
    bool too_big;
};

static enum MHD_Result answer(struct MHD_Connection *conn, unsigned status, const char *ctype,
                              pb_buf *body)
{
    size_t len = 0;
    uint8_t *data = pb_buf_steal(body, &len);
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, data ? (void *)data : (void *)"",
                                        data ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(data);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    if (!strcmp(ctype, "application/hrpc")) MHD_add_response_header(r, "Hrpc-Version", "1");
    enum MHD_Result res = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return res;
}

static enum MHD_Result hrpc_error(struct MHD_Connection *conn, unsigned status, const char *ident,
                                  const char *msg)
{
    pb_buf b = PB_BUF_INIT;
    pb_wire_error_encode(ident, msg, NULL, 0, &b);
    return answer(conn, status, "application/hrpc", &b);
}

static enum MHD_Result json_answer(struct MHD_Connection *conn, unsigned status, json_t *j)
{
    pb_buf b = PB_BUF_INIT;
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (text) pb_buf_append_str(&b, text);
    free(text);
    return answer(conn, status, "application/json", &b);
}

/* The ID a connection was addressed to, from its socket's local port. */
static int conn_index(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    if (!ci || getsockname(ci->connect_fd, (struct sockaddr *)&a, &len) != 0 ||
        a.sin_family != AF_INET)
        return NO_ID;
    return g_port_idx[ntohs(a.sin_port)];
}

static enum MHD_Result control(struct MHD_Connection *conn, const char *method, const char *url)
{
    if (strcmp(method, "GET") != 0)
        return json_answer(conn, 405, json_pack("{s:s}", "error", "GET only"));
    if (!strcmp(url, "/summary")) return json_answer(conn, 200, summary_json());
    if (!strcmp(url, "/stats")) {
        const char *ev = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "events");
        pthread_mutex_lock(&g_mu);
        json_t *j = stats_json(!ev || strcmp(ev, "0") != 0);
        pthread_mutex_unlock(&g_mu);
        return json_answer(conn, 200, j);
    }
    return json_answer(conn, 404, json_pack("{s:s}", "error", "unknown path"));
}

static void record_bad(struct fid *f)
{
    pthread_mutex_lock(&g_mu);
    f->bad++;
    pthread_mutex_unlock(&g_mu);
}

static enum MHD_Result serve(struct MHD_Connection *conn, struct fid *f, const char *method,
                             const char *url, const pb_buf *body)
{
    pb_buf out = PB_BUF_INIT;
    if (strcmp(method, "POST") != 0) {
        record_bad(f);
        return hrpc_error(conn, 405, "hrpc.http.bad-unary-request", "POST only");
    }
    if (!strcmp(url, PATH_PUSH)) {
        pb_push_req req = {0};
        if (pb_wire_push_decode(body->data, body->len, 1000, &req) != PB_OK) {
            record_bad(f);
            return hrpc_error(conn, 400, "hrpc.http.bad-unary-request", "not a PushRequest");
        }
        int64_t t = now_us();
        pthread_mutex_lock(&g_mu);
        for (size_t i = 0; i < req.n; i++) {
            const pb_event *ev = &req.evs[i];
            struct rec r = {.t_us = t,
                            .seq = req.seqs ? req.seqs[i] : 0,
                            .user_id = ev->user_id,
                            .kind = (uint8_t)ev->kind};
            if (ev->kind != PB_EV_USER_INVITED) r.guild_id = ev->guild_id;
            if (f->nevs == f->cap) {
                f->cap = f->cap ? 2 * f->cap : 64;
                f->evs = pb_xrealloc(f->evs, f->cap * sizeof *f->evs);
            }
            f->evs[f->nevs++] = r;
        }
        pthread_mutex_unlock(&g_mu);
        pb_push_req_clear(&req);
        pb_wire_push_resp_encode(0, 0, &out); /* foreign receiver: no postbox_seq_ack */
    } else if (!strcmp(url, PATH_PULL)) {
        pb_pull_req preq;
        if (pb_wire_pull_req_decode(body->data, body->len, &preq) != PB_OK) {
            record_bad(f);
            return hrpc_error(conn, 400, "hrpc.http.bad-unary-request", "not a PullRequest");
        }
        int64_t t = now_us();
        pthread_mutex_lock(&g_mu);
        if (!f->pulls) f->first_pull_us = t;
        f->last_pull_us = t;
        f->pulls++;
        pthread_mutex_unlock(&g_mu);
        pb_wire_pull_resp_encode(NULL, NULL, 0, 0, &out);
    } else if (!strcmp(url, PATH_KEY)) {
        pthread_mutex_lock(&g_mu);
        f->keys++;
        pthread_mutex_unlock(&g_mu);
        pb_wire_key_resp_encode(g_pubs[f - g_ids], &out);
    } else if (!strcmp(url, PATH_NOTIFY)) {
        pthread_mutex_lock(&g_mu);
        f->notifies++;
        pthread_mutex_unlock(&g_mu);
    } else {
        record_bad(f);
        return hrpc_error(conn, 404, "hrpc.not-found", "unknown path");
    }
    return answer(conn, 200, "application/hrpc", &out);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *data_size, void **con_cls)
{
    struct req *rq = *con_cls;
    if (!rq) {
        rq = pb_xcalloc(1, sizeof *rq);
        rq->idx = conn_index(conn);
        *con_cls = rq;
        return MHD_YES;
    }
    if (*data_size) {
        if (rq->body.len + *data_size > MAX_BODY)
            rq->too_big = true;
        else
            pb_buf_append(&rq->body, data, *data_size);
        *data_size = 0;
        return MHD_YES;
    }
    if (rq->idx == CONTROL) return control(conn, method, url);
    if (rq->idx < 0) return hrpc_error(conn, 404, "hrpc.not-found", "no server ID on this port");
    struct fid *f = &g_ids[rq->idx];
    if (rq->too_big) {
        record_bad(f);
        return hrpc_error(conn, 413, "hrpc.resource-exhausted", "body over 1 MiB");
    }
    return serve(conn, f, method, url, &rq->body);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct req *rq = *con_cls;
    if (!rq) return;
    pb_buf_free(&rq->body);
    free(rq);
    *con_cls = NULL;
}

/* ---- sockets ----------------------------------------------------------------------------------
 */

/* A TCP socket bound to 127.0.0.1:port (0: any); -1 when the port is taken. */
static int bind_port(uint16_t port, uint16_t *bound)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        close(fd);
        return -1;
    }
    *bound = ntohs(a.sin_port);
    return fd;
}

/* Opens every ID's socket (listening unless refusing) and the control socket. */
static bool open_sockets(int ep)
{
    unsigned next = opt.first_port;
    size_t i = 0;
    while (i < opt.count) {
        struct fid *f = &g_ids[i];
        int fd = -1;
        uint16_t port = 0;
        if (!opt.first_port) {
            fd = bind_port(0, &port);
        } else {
            while (fd < 0 && next <= 65535)
                fd = bind_port((uint16_t)next++, &port);
        }
        if (fd < 0) {
            say("cannot bind a port for ID %zu (from %u): %s", i, opt.first_port, strerror(errno));
            return false;
        }
        /* With SO_REUSEADDR a merely bound socket may share its port with another one,
         * a listener cannot: listen now (refusing: stay bound, which keeps the port closed
         * to others' listeners). If someone listens there already, take the next port. */
        if (f->mode != M_REFUSING && listen(fd, opt.backlog) != 0) {
            close(fd);
            if (!opt.first_port) return false;
            continue;
        }
        f->fd = fd;
        f->port = port;
        g_port_idx[port] = (int32_t)i;
        if (f->mode == M_OK || f->mode == M_HUNG) {
            struct epoll_event e = {.events = EPOLLIN,
                                    .data.u64 = (uint64_t)TAG_LISTEN << 32 | (uint32_t)i};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) != 0) return false;
        }
        i++;
    }
    g_control_fd = bind_port(0, &g_control_port);
    if (g_control_fd < 0 || listen(g_control_fd, 128) != 0) return false;
    g_port_idx[g_control_port] = CONTROL;
    struct epoll_event e = {.events = EPOLLIN,
                            .data.u64 = (uint64_t)TAG_LISTEN << 32 | (uint32_t)0xffffffffu};
    return epoll_ctl(ep, EPOLL_CTL_ADD, g_control_fd, &e) == 0;
}

static void accept_all(int ep, int lfd, bool hung, bool control)
{
    for (;;) {
        struct sockaddr_storage sa;
        socklen_t len = sizeof sa;
        int fd =
            accept4(lfd, (struct sockaddr *)&sa, &len, SOCK_CLOEXEC | (hung ? SOCK_NONBLOCK : 0));
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) {
                static int64_t last;
                if (now_us() - last > 1000000) say("accept: %s", strerror(errno));
                last = now_us();
                struct timespec ts = {0, 1000000};
                nanosleep(&ts, NULL);
            }
            return;
        }
        if (hung) {
            atomic_fetch_add(&g_hung_conns, 1);
            struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP,
                                    .data.u64 = (uint64_t)TAG_HUNG_CONN << 32 | (uint32_t)fd};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) != 0) close(fd);
            continue;
        }
        if (!control) atomic_fetch_add(&g_conns, 1); /* the IDs' connections only */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        unsigned k = (unsigned)(atomic_fetch_add(&g_next_mhd, 1) % opt.threads);
        /* On failure libmicrohttpd closes the socket itself. */
        MHD_add_connection(control && g_ctl_mhd ? g_ctl_mhd : g_mhd[k], fd, (struct sockaddr *)&sa,
                           len);
    }
}

/* A hung connection is read and never answered; closed when the client closes it. */
static void drain_hung(int ep, int fd)
{
    char buf[16384];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0) continue;
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
        close(fd);
        return;
    }
}

/* Raises RLIMIT_NOFILE to hold every socket (the hard limit too when allowed). */
static void raise_nofile(void)
{
    rlim_t need = (rlim_t)opt.count * 3 + 1024;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= need) return;
    struct rlimit want = {need, rl.rlim_max > need ? rl.rlim_max : need};
    if (setrlimit(RLIMIT_NOFILE, &want) != 0) {
        want.rlim_cur = rl.rlim_max;
        want.rlim_max = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &want);
        say("open-file limit %llu (wanted %llu): many connections may be refused",
            (unsigned long long)rl.rlim_max, (unsigned long long)need);
    }
}

static bool load_key(void)
{
    pb_err err = opt.key_file ? pb_keys_load(opt.key_file, &g_keys) : pb_keys_generate(&g_keys);
    if (err != PB_OK) say("key %s: %s", opt.key_file ? opt.key_file : "(new)", pb_strerror(err));
    if (err != PB_OK) return false;
    g_pubs = pb_xcalloc(opt.count ? opt.count : 1, sizeof *g_pubs);
    for (size_t i = 0; i < opt.count && err == PB_OK; i++) {
        pb_keys *k = NULL;
        err = pbt_farm_id_key(g_keys, i, &k);
        if (err == PB_OK) memcpy(g_pubs[i], pb_keys_public(k), PB_PUBKEY_LEN);
        pb_keys_free(k);
    }
    if (err != PB_OK) say("keys of the IDs: %s", pb_strerror(err));
    return err == PB_OK;
}

static bool write_ready(void)
{
    if (!opt.ready) return true;
    char hex[2 * PB_PUBKEY_LEN + 1];
    pb_keys_hex(pb_keys_public(g_keys), hex);
    json_t *ids = json_array();
    for (size_t i = 0; i < opt.count; i++) {
        char id[32];
        snprintf(id, sizeof id, "127.0.0.1:%u", g_ids[i].port);
        char idhex[2 * PB_PUBKEY_LEN + 1];
        pb_keys_hex(g_pubs[i], idhex);
        json_array_append_new(ids,
                              json_pack("{s:s,s:i,s:s,s:s}", "id", id, "port", g_ids[i].port,
                                        "mode", mode_names[g_ids[i].mode], "public_key", idhex));
    }
    json_t *j =
        json_pack("{s:i,s:s,s:o}", "control_port", g_control_port, "public_key", hex, "ids", ids);
    bool ok = write_json(opt.ready, j);
    json_decref(j);
    return ok;
}

int main(int argc, char **argv)
{
    int rc = 1, ep = -1, sfd = -1;
    if (!parse_args(argc, argv)) {
        usage();
        return 2;
    }
    for (size_t i = 0; i < sizeof g_port_idx / sizeof g_port_idx[0]; i++)
        g_port_idx[i] = NO_ID;
    uint8_t *modes = pb_xcalloc(opt.count, 1);
    for (int m = M_HUNG; m < M__COUNT; m++)
        if (opt.spec[m] && !apply_spec(opt.spec[m], (enum mode)m, modes, opt.count)) {
            free(modes);
            return 2;
        }
    g_ids = pb_xcalloc(opt.count, sizeof *g_ids);
    size_t per_mode[M__COUNT] = {0};
    for (size_t i = 0; i < opt.count; i++) {
        g_ids[i].mode = modes[i];
        g_ids[i].fd = -1;
        per_mode[modes[i]]++;
    }
    free(modes);
    if (!load_key()) goto out;
    raise_nofile();

    /* Signals go to the signalfd only: block them before any thread starts. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    ep = epoll_create1(EPOLL_CLOEXEC);
    sfd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
    struct epoll_event se = {.events = EPOLLIN, .data.u64 = (uint64_t)TAG_SIGNAL << 32};
    if (ep < 0 || sfd < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &se) != 0) {
        say("epoll/signalfd: %s", strerror(errno));
        goto out;
    }
    if (!open_sockets(ep)) {
        say("cannot open the sockets: %s", strerror(errno));
        goto out;
    }
    /* Over TLS poll(2), not epoll: libmicrohttpd's epoll mode spins on a connection whose
     * handshake waits for the client (see lib/net/hrpc_server.c), which cost the farm a
     * millisecond of CPU per handshake on loopback. */
    unsigned base = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC;
    struct MHD_OptionItem tls[] = {{MHD_OPTION_END, 0, NULL},
                                   {MHD_OPTION_END, 0, NULL},
                                   {MHD_OPTION_END, 0, NULL},
                                   {MHD_OPTION_END, 0, NULL}};
    if (opt.tls_cert) {
        g_tls_cert = slurp(opt.tls_cert);
        g_tls_key = slurp(opt.tls_key);
        if (!g_tls_cert || !g_tls_key) {
            say("cannot read %s or %s", opt.tls_cert, opt.tls_key);
            goto out;
        }
        if (gnutls_session_ticket_key_generate(&g_ticket_key) < 0)
            g_ticket_key = (gnutls_datum_t){NULL, 0};
        tls[0] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, g_tls_cert};
        tls[1] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, g_tls_key};
        tls[2] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_CONNECTION,
                                         (intptr_t)(void *)on_tls_connection, NULL};
        g_ctl_mhd = MHD_start_daemon(base | MHD_USE_EPOLL, 0, NULL, NULL, on_request, NULL,
                                     MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                                     MHD_OPTION_CONNECTION_TIMEOUT, 120u, MHD_OPTION_END);
        if (!g_ctl_mhd) {
            say("cannot start libmicrohttpd (control)");
            goto out;
        }
    }
    for (unsigned k = 0; k < opt.threads; k++) {
        g_mhd[k] = MHD_start_daemon(
            base | (opt.tls_cert ? MHD_USE_TLS | MHD_USE_POLL : MHD_USE_EPOLL), 0, NULL, NULL,
            on_request, NULL, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
            MHD_OPTION_CONNECTION_LIMIT, (unsigned)(opt.count * 2 + 1024),
            MHD_OPTION_CONNECTION_TIMEOUT, opt.conn_timeout, MHD_OPTION_ARRAY, tls, MHD_OPTION_END);
        if (!g_mhd[k]) {
            say("cannot start libmicrohttpd%s", opt.tls_cert ? " with TLS (certificate?)" : "");
            goto out;
        }
    }
    if (!write_ready()) goto out;
    say("%zu IDs on 127.0.0.1, %s port %u, last %u (ok %zu, hung %zu, unaccepted %zu, "
        "refusing %zu), control 127.0.0.1:%u, %u threads: ready",
        opt.count, opt.first_port ? "ports upwards from" : "kernel-chosen ports: first",
        g_ids[0].port, g_ids[opt.count - 1].port, per_mode[M_OK], per_mode[M_HUNG],
        per_mode[M_UNACCEPTED], per_mode[M_REFUSING], g_control_port, opt.threads);

    bool stop = false;
    struct epoll_event evs[256];
    while (!stop) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0 && errno != EINTR) {
            say("epoll_wait: %s", strerror(errno));
            goto out;
        }
        for (int i = 0; i < n; i++) {
            uint32_t tag = (uint32_t)(evs[i].data.u64 >> 32), v = (uint32_t)evs[i].data.u64;
            if (tag == TAG_SIGNAL) {
                struct signalfd_siginfo si;
                while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                    if (si.ssi_signo == SIGUSR1)
                        write_stats();
                    else
                        stop = true;
                }
            } else if (tag == TAG_LISTEN) {
                if (v == 0xffffffffu)
                    accept_all(ep, g_control_fd, false, true);
                else
                    accept_all(ep, g_ids[v].fd, g_ids[v].mode == M_HUNG, false);
            } else if (tag == TAG_HUNG_CONN) {
                drain_hung(ep, (int)v);
            }
        }
    }
    rc = 0;
out:
    for (unsigned k = 0; k < opt.threads; k++)
        if (g_mhd[k]) MHD_stop_daemon(g_mhd[k]);
    if (g_ctl_mhd) MHD_stop_daemon(g_ctl_mhd);
    if (g_ticket_key.data) gnutls_free(g_ticket_key.data);
    free(g_tls_cert);
    free(g_tls_key);
    if (rc == 0) {
        write_stats();
        say("stopped: %lu connections served, %lu hung", atomic_load(&g_conns),
            atomic_load(&g_hung_conns));
    }
    for (size_t i = 0; g_ids && i < opt.count; i++) {
        if (g_ids[i].fd >= 0) close(g_ids[i].fd);
        free(g_ids[i].evs);
    }
    free(g_ids);
    if (g_control_fd >= 0) close(g_control_fd);
    if (sfd >= 0) close(sfd);
    if (ep >= 0) close(ep);
    pb_keys_free(g_keys);
    free(g_pubs);
    return rc;
}
