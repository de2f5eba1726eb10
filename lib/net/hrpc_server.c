/*
 * hrpc_server - unary hRPC server on libmicrohttpd (see hrpc_server.h).
 *
 * Design: libmicrohttpd calls on_request first with the headers only; every refusal that
 * does not need the body (path, method, headers, declared length, overload) is queued
 * right then, so libmicrohttpd never reads that body and closes the connection after the
 * answer. Otherwise the body is copied into a per-request buffer that may never exceed
 * max_body, then authentication and the handler run on the final call. Its threads poll
 * with epoll; over TLS a handshake waiting for the client is parked (below).
 *
 * Slow clients and the connection limit: libmicrohttpd's own timeout only measures
 * inactivity, so a client sending one byte per second would hold a connection (and an
 * in-flight slot) forever. Each connection therefore gets a record (libmicrohttpd's socket
 * context, created by the connection notification) carrying a request deadline: the
 * request must be read completely within conn_timeout_s of the connection's start or of
 * the previous answer. A sweeper thread shuts down the socket of a connection past its
 * deadline (libmicrohttpd then reads EOF and closes it); body data arriving late is also
 * refused in on_request. The deadline is disarmed while a complete request is handled and
 * answered. The same records count open connections: past max_connections a new
 * connection is shut down at once (the client sees EOF or a reset) instead of waiting in
 * the listen backlog, which is what libmicrohttpd does when its own limit is reached; its
 * limit is set a little higher as a hard bound. A socket is shut down only under the lock
 * that the close notification takes, and libmicrohttpd closes a socket only after that
 * notification, so a shutdown never hits a reused descriptor.
 * Per client address: one address (an IPv4 address, or an IPv6 /64, what one host usually
 * gets) may hold at most max_conns_per_addr counted connections; past that its new
 * connections are shut down the same way, so one client cannot take every place under
 * max_connections from the others. The counts live in a chained hash table under conns_mu,
 * keyed with SipHash and a per-process random key (a client cannot aim its addresses at one
 * chain); an entry lives while its address holds a connection.
 * Request slots and body memory: a complete request takes an answered slot (max_inflight)
 * before it is authenticated and handled; when it must wait (a key being fetched, a
 * handler's deferral) park() moves it to a suspended slot (max_suspended), a pool of its
 * own, and back when it runs again (whatever the limits then: it was admitted). So requests
 * waiting on something remote never take the slots of requests answered at once: a
 * request whose sender's key we hold is never refused because others wait for theirs.
 * Body bytes are charged as they arrive (body_memory). Each pool and the body bytes also
 * have a share per client address, kept in the same per-address entries as the connection
 * counts (an entry lives while it holds a connection, a slot or a body byte); the shares
 * apply only when the per-address connection limit does (max_connections_per_ip not 0:
 * behind a proxy every client has the proxy's address). Past a limit or a share: 503 with
 * RetryInfo (a suspension refused is answered at once and its waker dropped: the holder's
 * later wake does nothing), counted by reason in postbox_requests_refused_total, and
 * logged at most once per 10 s per reason. All these counts are under conns_mu (body_bytes
 * is also read without it).
 * Limits (libmicrohttpd 0.9.75 offers no hook for more): a connection cut or refused this
 * way gets no HTTP answer (no 408 or 503; a response can be queued only once the headers
 * are in); the deadline counts from the connection's start or last answer, as the first
 * byte of a request is not visible; it is checked every SWEEP_MS; it does not cover the
 * answer (a client reading slowly is bounded by the idle timeout only).
 *
 * Metrics (opts.metrics): libmicrohttpd calls `measured`, which notes when a request's
 * headers arrived and which status send_reply queued (a thread-local set during that
 * call); the completion notification records the request (record()).
 *
 * TLS and reload: the certificate is not handed to libmicrohttpd once. GnuTLS asks cert_cb
 * for it at each handshake, and cert_cb parses a fresh copy of the current chain and key (PEM
 * texts under a read lock) that GnuTLS frees with the session, so pb_hrpc_server_set_tls can
 * replace them for new connections while open ones keep theirs. Session tickets are enabled
 * on every session as its connection starts (a random ticket key per listener, replaced with
 * the certificate), so a client's new connection resumes instead of a full handshake; each
 * connection's handshake is counted, full or resumed, at its first request
 * (postbox_tls_handshakes_total). The limits a reload may
 * change (max_body, max_inflight, max_suspended, body_memory, their per-address shares,
 * conn_timeout_s) are read and written atomically (LIM); max_connections and the
 * per-address connection limit under conns_mu, as before.
 *
 * Identities (auth_step): a token from a server ID whose key we did not hold, verified with a
 * freshly fetched key, would create a peer: auth.admit_new decides first (per key and per
 * client address, the delivery engine's counts; A_LIMITED: 429), and only then is the key
 * stored. The handler gets the key that verified the token and the client's address key
 * (pb_hrpc_request.peer_key, client_addr; the address only while per-address limits are
 * on) for the receive budgets.
 *
 * Handshakes parked: libmicrohttpd 0.9.75's epoll mode (and its master as of 2026) clears a
 * connection's read-ready flag only when a record read finds no data, never during the
 * TLS handshake, so a connection waiting for the client's next handshake flight stays on
 * its ready list and its thread calls gnutls_handshake in a loop: a core for each peer's
 * round trip (100 ms for a peer 100 ms away), and for as long as a hostile client keeps
 * its handshake open. poll(2) instead costs O(connections of the thread) per wake-up,
 * which thousands of idle connections (peers' kept connections, or a few addresses'
 * worth of hostile ones) turn into a tenfold cost per request. So the listener keeps
 * epoll, and each TLS session reads through tls_pull: when a read finds nothing before
 * the connection's first request (the handshake, or the wait for the first request),
 * tls_pull suspends the connection (MHD_suspend_connection, from its own thread, inside
 * gnutls_handshake) and hands its socket to the park thread's epoll (one-shot); when the
 * socket becomes readable or is shut down (the sweeper's deadline), the park thread
 * resumes it, and the handshake goes on. A parked connection costs no thread and no CPU.
 * Only the park thread resumes a parked connection (also at stop, before
 * MHD_stop_daemon), so it never sees an event for a connection already resumed and
 * freed. libmicrohttpd documents suspension from the access handler; what this relies on
 * in 0.9.75 is that a suspension takes the connection off its lists and epoll set at
 * once, and that the handshake's callers (handle_read and handle_idle, the event-loop
 * update) leave a suspended connection alone until it is resumed (tls_test).
 *
 * Lingering close (RFC 9112 section 9.6): a refusal answered from the headers alone (a
 * declared body over max_body, a wrong path or type) leaves the client still sending a body
 * we will not read; closing then would make the kernel reset the connection, and the
 * client could lose the answer. So when libmicrohttpd closes such a connection (it has
 * sent the answer and a FIN), we keep a duplicate of the socket and read and discard what
 * the client still sends, up to LINGER_BYTES or LINGER_MS, then close (linger thread; at
 * most LINGER_MAX sockets at once, past that they close at once).
 *
 * Untrusted input: the whole HTTP request. Sizes are checked before anything is buffered;
 * the Authorization header is passed to auth.c, which bounds it again.
 */
#include "net/hrpc_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <sodium.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "net/keyfetch.h"
#include "util/addrclass.h"
#include "util/fault.h"
#include "util/log.h"
#include "util/mem.h"
#include "wire/wire.h"

#define ID_BAD_REQUEST "hrpc.http.bad-unary-request"
#define ID_NOT_FOUND "hrpc.not-found"
#define ID_EXHAUSTED "hrpc.resource-exhausted"
#define ID_UNAVAILABLE "hrpc.unavailable"
#define ID_INTERNAL "hrpc.internal-server-error"

/* File descriptors kept free for everything else (store, peer connections, admin). */
#define FD_RESERVE 64
/* How often the sweeper looks for connections past their request deadline and for
 * suspended requests past theirs. */
#define SWEEP_MS 100
/* Default longest wait for a key being fetched (PROTOCOL.md 7.3: under a second, sweep
 * granularity included). */
#define KEY_WAIT_MS 850
/* Limits a reload may change (pb_hrpc_server_set_limits) are read and written atomically. */
#define LIM(s, field) __atomic_load_n(&(s)->opts.field, __ATOMIC_RELAXED)
/* Most certificates in the chain of tls_cert. */
#define TLS_MAX_CHAIN 16
/* Lingering close: what is read and discarded from a refused client at most. */
#define LINGER_BYTES (4u << 20)
#define LINGER_MS 3000
#define LINGER_MAX 256
/* Buckets of the per-address connection counts (a power of two). */
#define ADDR_BUCKETS 4096

/* What one client address (IPv4 as ::ffff:a.b.c.d, IPv6 as its /64) holds: counted
 * connections, request slots (answered and suspended) and body bytes (see "Request slots
 * and body memory"). Lives while any of them is not 0. Under conns_mu. */
struct addr_count {
    struct addr_count *next;
    uint8_t key[16];
    unsigned n;
    unsigned active, waiting; /* request slots */
    size_t body;              /* request body bytes charged */
};

/* Why a request was refused for want of a slot or of body memory (index of
 * refusal_reason, the reason label of postbox_requests_refused_total). */
enum refusal {
    REF_NONE,
    REF_INFLIGHT,
    REF_INFLIGHT_ADDR,
    REF_SUSPENDED,
    REF_SUSPENDED_ADDR,
    REF_BODY,
    REF_BODY_ADDR,
    REF_COUNT
};
static const char *const refusal_reason[REF_COUNT] = {NULL,
                                                      "inflight",
                                                      "inflight_per_address",
                                                      "suspended",
                                                      "suspended_per_address",
                                                      "body_memory",
                                                      "body_memory_per_address"};
/* the setting a refusal names */
static const char *const refusal_setting[REF_COUNT] = {NULL,
                                                       "max_inflight",
                                                       "max_inflight_per_ip",
                                                       "max_suspended",
                                                       "max_suspended_per_ip",
                                                       "body_memory",
                                                       "body_memory_per_ip"};

struct route {
    char *path;
    bool with_auth;
    pb_hrpc_handler_fn fn;
    void *ctx;
};

struct pb_hrpc_server {
    pb_hrpc_server_opts opts; /* strings owned */
    pb_hrpc_auth auth;
    bool has_auth;
    struct route *routes;
    size_t nroutes;
    struct MHD_Daemon *mhd;
    char *tls_cert, *tls_key;  /* PEM texts served to new connections, under tls_mu */
    gnutls_datum_t ticket_key; /* session ticket key (GnuTLS), under tls_mu; a new one with
                                  each certificate */
    pthread_rwlock_t tls_mu;
    bool tls_swappable; /* served through cert_cb (pb_hrpc_server_set_tls works) */
    bool tls_on;        /* serves TLS (set before the listener starts) */
    unsigned conns_cap; /* max_conns at start: the most pb_hrpc_server_set_limits may set */
    /* request slots (under conns_mu): answered requests being handled, suspended ones */
    unsigned active, waiting;
    atomic_size_t body_bytes; /* request body bytes held, charged as they arrive (conns_mu) */
    uint64_t nslot_refused[REF_COUNT]; /* totals, for logs (conns_mu) */
    int64_t slot_logged_ms[REF_COUNT]; /* last warning of each refusal (conns_mu) */
    atomic_bool stopping;
    /* open connections (see the file comment) */
    pthread_mutex_t conns_mu;
    pthread_cond_t sweep_cv;
    struct conn *conns;
    unsigned nconns;         /* counted (not refused) connections */
    unsigned max_conns;      /* effective limit (max_connections, clamped by RLIMIT_NOFILE) */
    uint64_t ncut, nrefused; /* totals, for logs */
    int64_t refused_logged_ms;
    struct addr_count **addrs; /* ADDR_BUCKETS chains: counts per client address */
    unsigned max_per_addr;     /* UINT_MAX: no limit */
    uint64_t naddr_refused;
    int64_t addr_logged_ms;
    uint8_t addr_hkey[crypto_shorthash_KEYBYTES];
    bool sweeper_started, sweeper_stop;
    pthread_t sweeper;
    /* lingering closes: sockets whose refused client may still be sending */
    pthread_mutex_t linger_mu;
    int linger_ev; /* eventfd: a socket was added, or stop */
    struct lingerer {
        int fd;
        int64_t until;
        size_t read;
    } lingering[LINGER_MAX];
    unsigned nlinger;
    bool linger_started, linger_stop;
    pthread_t linger_thread;
    /* suspended requests (see "Waiting without a thread"), under wake_mu */
    pthread_mutex_t wake_mu;
    struct pb_hrpc_waker *suspended;
    /* TLS connections parked until their socket is readable ("Handshakes parked"),
     * under park_mu */
    pthread_mutex_t park_mu;
    int park_ep;         /* epoll of the parked sockets (and park_ev); -1: none */
    int park_ev;         /* eventfd: stop */
    struct conn *parked; /* list */
    unsigned nparked;
    bool park_closed; /* stopping: no more parking */
    bool park_started;
    pthread_t park_thread;
};

/* One open connection: libmicrohttpd's socket context. Fields under conns_mu. */
struct conn {
    struct conn *prev, *next;
    int fd;
    int64_t deadline_ms;     /* monotonic; 0 while a complete request is handled and answered */
    bool counted;            /* holds a place under max_conns */
    struct addr_count *addr; /* its address's count, which it is part of (counted only) */
    bool cut;                /* socket shut down (deadline passed or over the limit) */
    bool linger;             /* answered before its body was read: close in stages */
    bool tls_counted;        /* its TLS handshake is counted (postbox_tls_handshakes_total) */
    /* TLS only: parking ("Handshakes parked") */
    pb_hrpc_server *srv;
    struct MHD_Connection *mhd;
    gnutls_session_t tls;
    bool hs_done;               /* its first request came: no more parking (its own thread) */
    bool parked;                /* suspended, its socket in park_ep (park_mu) */
    struct conn *pprev, *pnext; /* the parked list (park_mu) */
};

/*
 * A suspended request's waker. Two references: the server's (dropped when the request
 * runs again) and the holder's (dropped by pb_hrpc_wake). The state moves ARMED ->
 * SUSPENDED -> FIRED, or ARMED -> FIRED when the wake comes before the suspension (the
 * request then simply goes on); fields under the server's wake_mu. MHD_suspend_connection
 * and MHD_resume_connection are called under wake_mu only, so a resume never precedes
 * its suspension and happens once.
 */
enum wstate { W_ARMED, W_SUSPENDED, W_FIRED };

struct pb_hrpc_waker {
    atomic_int refs;
    pb_hrpc_server *s;
    struct MHD_Connection *conn;
    enum wstate state;
    bool timed_out;
    int64_t deadline; /* monotonic ms */
    struct pb_hrpc_waker *prev, *next;
    bool local; /* pb_hrpc_defer_local: the request keeps its answered slot */
    /* a key wait's result, set before the wake */
    bool key_done;
    pb_err key_err;
    uint8_t key[PB_PUBKEY_LEN];
};

/* Per-request state, libmicrohttpd's con_cls. */
struct req {
    const struct route *route;
    pb_buf body;
    bool too_big;
    bool overloaded;       /* body bytes over body_memory or the address's share: discarded, 503 */
    enum refusal overload; /* ... which of them */
    enum { SLOT_NONE, SLOT_ACTIVE, SLOT_WAITING } slot; /* the request slot it holds */
    struct addr_count *addr; /* its client address's entry (NULL: none), for shares */
    size_t charged;          /* bytes of body charged to body_bytes (and to addr) */
    void (*on_done)(void *ctx, bool sent_ok);
    void *on_done_ctx;
    /* authentication, across suspensions */
    bool authed, bound;
    char peer[PB_SERVER_ID_MAX];
    uint8_t peer_key[PB_PUBKEY_LEN]; /* the key that verified the token */
    uint8_t ckey[16];                /* the client's address key, when has_ckey */
    bool has_ckey;
    bool key_wait;      /* suspended waiting for a key */
    bool refreshing;    /* the stored key failed: waiting for / using a re-fetched one */
    bool refresh_tried; /* at most once per request */
    /* a handler's deferral */
    bool resumed, timed_out;
    pb_hrpc_waker *w; /* while suspended, or fired before it could be */
    void *hstate;     /* the handler's (pb_hrpc_set_state), freed with hstate_free */
    void (*hstate_free)(void *);
    pb_hrpc_server *srv;
    struct MHD_Connection *conn;
    /* for metrics: when the headers arrived, and the answer queued (status 0: none) */
    double started;
    int status;
    const char *identifier;
};

/* The answer queued during the current on_request call of this thread (see measured). */
static __thread int tl_status;
static __thread const char *tl_identifier;

void pb_hrpc_reply_error(pb_hrpc_reply *rep, int status, const char *identifier, const char *fmt,
                         ...)
{
    rep->status = status;
    rep->identifier = identifier;
    free(rep->message);
    rep->message = NULL;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&rep->message, fmt, ap) < 0) abort();
        va_end(ap);
    }
}

static void reply_clear(pb_hrpc_reply *rep)
{
    pb_buf_free(&rep->body);
    free(rep->message);
    memset(rep, 0, sizeof *rep);
}

/* Queues `rep` on the connection, building the hrpc.v1.Error body for failures. */
static enum MHD_Result send_reply(struct MHD_Connection *conn, pb_hrpc_reply *rep)
{
    pb_buf out = PB_BUF_INIT;
    if (rep->status >= 200 && rep->status < 300) {
        out = rep->body;
        rep->body = (pb_buf)PB_BUF_INIT;
    } else {
        pb_buf details = PB_BUF_INIT;
        if (rep->retry_after > 0) pb_wire_retry_info_encode(rep->retry_after, &details);
        const char *ident = rep->identifier ? rep->identifier : ID_INTERNAL;
        if (pb_wire_error_encode(ident, rep->message ? rep->message : "", details.data, details.len,
                                 &out) != PB_OK) {
            /* The message echoes input that is not UTF-8 (or was cut inside a
             * character): replace the non-ASCII bytes rather than send no Error. */
            for (char *p = rep->message; p && *p; p++)
                if ((unsigned char)*p >= 0x80) *p = '?';
            pb_wire_error_encode(ident, rep->message ? rep->message : "", details.data, details.len,
                                 &out);
        }
        pb_buf_free(&details);
    }
    size_t len = 0;
    uint8_t *data = pb_buf_steal(&out, &len);
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, data ? data : (void *)"", data ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(data);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/hrpc");
    MHD_add_response_header(resp, "Hrpc-Version", "1");
    tl_status = rep->status;
    tl_identifier = rep->identifier ? rep->identifier : ID_INTERNAL;
    enum MHD_Result r = MHD_queue_response(conn, (unsigned)rep->status, resp);
    MHD_destroy_response(resp);
    return r;
}

static enum MHD_Result send_error(struct MHD_Connection *conn, int status, const char *identifier,
                                  uint32_t retry_after, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static enum MHD_Result send_error(struct MHD_Connection *conn, int status, const char *identifier,
                                  uint32_t retry_after, const char *fmt, ...)
{
    pb_hrpc_reply rep = {0};
    rep.status = status;
    rep.identifier = identifier;
    rep.retry_after = retry_after;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&rep.message, fmt, ap) < 0) abort();
    va_end(ap);
    enum MHD_Result r = send_reply(conn, &rep);
    reply_clear(&rep);
    return r;
}

static const struct route *find_route(const pb_hrpc_server *s, const char *path)
{
    for (size_t i = 0; i < s->nroutes; i++)
        if (strcmp(s->routes[i].path, path) == 0) return &s->routes[i];
    return NULL;
}

/* Content-Type must be exactly application/hrpc, case-insensitively, no parameters. */
static bool content_type_ok(const char *ct)
{
    return ct && strcasecmp(ct, "application/hrpc") == 0;
}

static bool parse_size(const char *s, uint64_t *out)
{
    if (!s || !*s) return false;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return false;
        if (v > (UINT64_MAX - 9) / 10) return false;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return true;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct conn *conn_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* Arms (the next request must be read within conn_timeout_s) or disarms the deadline. */
static void conn_set_deadline(pb_hrpc_server *s, struct MHD_Connection *conn, bool arm)
{
    struct conn *c = conn_of(conn);
    if (!c) return;
    pthread_mutex_lock(&s->conns_mu);
    c->deadline_ms = arm ? mono_ms() + (int64_t)LIM(s, conn_timeout_s) * 1000 : 0;
    pthread_mutex_unlock(&s->conns_mu);
}

static bool conn_past_deadline(pb_hrpc_server *s, struct MHD_Connection *conn)
{
    struct conn *c = conn_of(conn);
    if (!c) return false;
    pthread_mutex_lock(&s->conns_mu);
    bool late = c->cut || (c->deadline_ms && mono_ms() >= c->deadline_ms);
    pthread_mutex_unlock(&s->conns_mu);
    return late;
}

/* ---- TLS: the certificate is chosen per handshake, so a reload can replace it ------------ */

/*
 * GnuTLS asks cert_cb for the certificate of each new TLS session but passes it no pointer
 * of ours, only the credentials the session uses: libmicrohttpd's, one set per listener. A
 * process-wide table maps them to their server; each connection registers its listener's
 * set when it starts (libmicrohttpd's notification), before its handshake. A stopped server
 * leaves the table.
 */
#define TLS_CREDS_MAX 64
static pthread_mutex_t g_creds_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    const void *cred;
    pb_hrpc_server *s;
} g_creds[TLS_CREDS_MAX];

static void tls_session_start(pb_hrpc_server *s, struct MHD_Connection *conn)
{
    if (!s->tls_on) return;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    if (!ci || !ci->tls_session) return;
    /* Session tickets (RFC 8446 4.6.1, RFC 5077), so that a client's next connection
     * resumes instead of paying a full handshake; GnuTLS copies the key into the session
     * and rotates the key it encrypts with over time. */
    pthread_rwlock_rdlock(&s->tls_mu);
    if (s->ticket_key.data) gnutls_session_ticket_enable_server(ci->tls_session, &s->ticket_key);
    pthread_rwlock_unlock(&s->tls_mu);
    void *cred = NULL;
    if (!s->tls_swappable ||
        gnutls_credentials_get(ci->tls_session, GNUTLS_CRD_CERTIFICATE, &cred) < 0 || !cred)
        return;
    pthread_mutex_lock(&g_creds_mu);
    int slot = -1;
    for (int i = 0; i < TLS_CREDS_MAX; i++) {
        if (g_creds[i].cred == cred) {
            slot = i;
            break;
        }
        if (!g_creds[i].cred && slot < 0) slot = i;
    }
    if (slot >= 0) {
        g_creds[slot].cred = cred;
        g_creds[slot].s = s;
    }
    pthread_mutex_unlock(&g_creds_mu);
    if (slot < 0) PB_ERROR(NULL, "too many TLS listeners in this process: handshakes will fail");
}

static void tls_unbind(pb_hrpc_server *s)
{
    pthread_mutex_lock(&g_creds_mu);
    for (int i = 0; i < TLS_CREDS_MAX; i++) {
        if (g_creds[i].s != s) continue;
        g_creds[i].cred = NULL;
        g_creds[i].s = NULL;
    }
    pthread_mutex_unlock(&g_creds_mu);
}

static void tls_ticket_key_free(gnutls_datum_t *k)
{
    if (!k->data) return;
    gnutls_memset(k->data, 0, k->size);
    gnutls_free(k->data);
    k->data = NULL;
    k->size = 0;
}

/* A connection's first request: its handshake is done; count it, full or resumed. */
static void tls_count_handshake(pb_hrpc_server *s, struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    if (!ci || !ci->tls_session) return;
    pb_counter_inc(pb_metric_get(PB_METRIC(s->opts.metrics, tls_handshakes),
                                 gnutls_session_is_resumed(ci->tls_session) ? "resumed" : "full"));
}

/* Parses a copy of the chain and key (PEM) that GnuTLS may own: on 0, *list (n entries,
 * gnutls_malloc'd) and *key are the caller's; on -1 nothing is left allocated. */
static int tls_parse(const char *cert, const char *key, gnutls_pcert_st **list, unsigned *n,
                     gnutls_privkey_t *k)
{
    gnutls_datum_t c = {(unsigned char *)cert, (unsigned)strlen(cert)};
    gnutls_datum_t kd = {(unsigned char *)key, (unsigned)strlen(key)};
    *list = gnutls_calloc(TLS_MAX_CHAIN, sizeof **list);
    *n = TLS_MAX_CHAIN;
    *k = NULL;
    if (!*list) return -1;
    if (gnutls_pcert_list_import_x509_raw(*list, n, &c, GNUTLS_X509_FMT_PEM, 0) < 0) {
        gnutls_free(*list);
        *list = NULL;
        return -1;
    }
    if (gnutls_privkey_init(k) < 0 ||
        gnutls_privkey_import_x509_raw(*k, &kd, GNUTLS_X509_FMT_PEM, NULL, 0) < 0) {
        for (unsigned i = 0; i < *n; i++)
            gnutls_pcert_deinit(&(*list)[i]);
        gnutls_free(*list);
        *list = NULL;
        if (*k) gnutls_privkey_deinit(*k);
        *k = NULL;
        return -1;
    }
    return 0;
}

/*
 * gnutls_certificate_retrieve_function3: a fresh copy of the current certificate chain and
 * key for this session, parsed from the PEM texts under a read lock; GnuTLS frees them with
 * the session (GNUTLS_CERT_RETR_DEINIT_ALL), so a swap never frees what a session uses.
 */
static int cert_cb(gnutls_session_t session, const struct gnutls_cert_retr_st *info,
                   gnutls_pcert_st **certs, unsigned int *ncerts, gnutls_ocsp_data_st **ocsp,
                   unsigned int *nocsp, gnutls_privkey_t *key, unsigned int *flags)
{
    (void)session;
    pb_hrpc_server *s = NULL;
    pthread_mutex_lock(&g_creds_mu);
    for (int i = 0; i < TLS_CREDS_MAX && !s; i++)
        if (g_creds[i].cred && g_creds[i].cred == (const void *)info->cred) s = g_creds[i].s;
    pthread_mutex_unlock(&g_creds_mu);
    if (!s) return -1;
    gnutls_pcert_st *list = NULL;
    gnutls_privkey_t k = NULL;
    unsigned n = 0;
    pthread_rwlock_rdlock(&s->tls_mu);
    int rc = tls_parse(s->tls_cert, s->tls_key, &list, &n, &k);
    pthread_rwlock_unlock(&s->tls_mu);
    if (rc != 0) {
        PB_WARN(NULL, "TLS handshake refused: the certificate or key does not load");
        return -1;
    }
    *certs = list;
    *ncerts = n;
    *ocsp = NULL;
    *nocsp = 0;
    *key = k;
    *flags = GNUTLS_CERT_RETR_DEINIT_ALL;
    return 0;
}

/* ---- lingering close ------------------------------------------------------------------------ */

/* Keeps a duplicate of fd (libmicrohttpd is about to close its own) to drain. */
static void linger_add(pb_hrpc_server *s, int fd)
{
    if (s->linger_ev < 0) return;
    int dupfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dupfd < 0) return;
    bool added = false;
    pthread_mutex_lock(&s->linger_mu);
    if (s->nlinger < LINGER_MAX && !s->linger_stop) {
        s->lingering[s->nlinger++] =
            (struct lingerer){.fd = dupfd, .until = mono_ms() + LINGER_MS, .read = 0};
        added = true;
    }
    pthread_mutex_unlock(&s->linger_mu);
    if (!added) {
        close(dupfd);
        return;
    }
    uint64_t one = 1;
    ssize_t w = write(s->linger_ev, &one, sizeof one);
    (void)w;
}

/* Reads and discards from the lingering sockets until each is done (EOF, an error, its
 * byte or time bound), then closes it. */
static void *linger_main(void *arg)
{
    pthread_setname_np(pthread_self(), "pb-fed-linger");
    pb_hrpc_server *s = arg;
    struct pollfd pfd[LINGER_MAX + 1];
    char sink[16384];
    for (;;) {
        pthread_mutex_lock(&s->linger_mu);
        bool stop = s->linger_stop;
        unsigned n = s->nlinger;
        for (unsigned i = 0; i < n; i++)
            pfd[i] = (struct pollfd){.fd = s->lingering[i].fd, .events = POLLIN};
        pthread_mutex_unlock(&s->linger_mu);
        pfd[n] = (struct pollfd){.fd = s->linger_ev, .events = POLLIN};
        if (stop) break;
        int rc = poll(pfd, n + 1, 100);
        if (rc > 0 && (pfd[n].revents & POLLIN)) {
            uint64_t v;
            ssize_t r = read(s->linger_ev, &v, sizeof v);
            (void)r;
        }
        int64_t now = mono_ms();
        pthread_mutex_lock(&s->linger_mu);
        /* entries below n are the ones polled (only this thread removes entries; new ones
         * are appended) */
        unsigned keep = 0;
        for (unsigned i = 0; i < s->nlinger; i++) {
            struct lingerer l = s->lingering[i];
            bool done = now >= l.until;
            if (!done && i < n && (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))) {
                ssize_t got = recv(l.fd, sink, sizeof sink, MSG_DONTWAIT);
                if (got > 0)
                    l.read += (size_t)got;
                else if (got == 0 || (errno != EAGAIN && errno != EINTR))
                    done = true;
                if (l.read >= LINGER_BYTES) done = true;
            }
            if (done)
                close(l.fd);
            else
                s->lingering[keep++] = l;
        }
        s->nlinger = keep;
        pthread_mutex_unlock(&s->linger_mu);
    }
    pthread_mutex_lock(&s->linger_mu);
    for (unsigned i = 0; i < s->nlinger; i++)
        close(s->lingering[i].fd);
    s->nlinger = 0;
    pthread_mutex_unlock(&s->linger_mu);
    return NULL;
}

/* Whether a repeated warning is due: at most one per 10 s, *last its time (0: never). */
static bool warn_due(int64_t *last, int64_t now)
{
    if (*last != 0 && now - *last < 10000) return false;
    *last = now;
    return true;
}

/* The chain head of key (under conns_mu). */
static struct addr_count **addr_chain(pb_hrpc_server *s, const uint8_t key[16])
{
    uint8_t h[crypto_shorthash_BYTES];
    crypto_shorthash(h, key, 16, s->addr_hkey);
    uint32_t v;
    memcpy(&v, h, sizeof v);
    return &s->addrs[v & (ADDR_BUCKETS - 1)];
}

/* Frees e when it holds nothing any more: no connection, slot or body byte (under
 * conns_mu). */
static void addr_put(pb_hrpc_server *s, struct addr_count *e)
{
    if (e->n || e->active || e->waiting || e->body) return;
    for (struct addr_count **pp = addr_chain(s, e->key); *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    }
    free(e);
}

/* Drops one connection from its address's count (under conns_mu). */
static void addr_release(pb_hrpc_server *s, struct addr_count *e)
{
    e->n--;
    addr_put(s, e);
}

/* ---- request slots and body memory ---------------------------------------------------------- */

/* Whether the per-address shares apply (under conns_mu): only with a per-address
 * connection limit; without one (behind a proxy) every client has the proxy's address. */
static bool shares_on(const pb_hrpc_server *s, const struct addr_count *e)
{
    return e && s->max_per_addr != UINT_MAX;
}

/* Counts a refusal (under conns_mu); true when a warning is due. */
static bool slot_refused(pb_hrpc_server *s, enum refusal why, int64_t now)
{
    s->nslot_refused[why]++;
    return warn_due(&s->slot_logged_ms[why], now);
}

/* After a refusal (not under conns_mu): the metric, and at most one warning per 10 s per
 * reason. */
static void refusal_note(pb_hrpc_server *s, enum refusal why, bool log, const struct req *r,
                         size_t limit)
{
    pb_counter_inc(
        pb_metric_get(PB_METRIC(s->opts.metrics, requests_refused), refusal_reason[why]));
    if (!log) return;
    char who[INET6_ADDRSTRLEN + 8] = "";
    if (r->addr) pb_addr_client_text(r->addr->key, who, sizeof who);
    pthread_mutex_lock(&s->conns_mu);
    uint64_t total = s->nslot_refused[why];
    pthread_mutex_unlock(&s->conns_mu);
    const char *what = why == REF_INFLIGHT || why == REF_INFLIGHT_ADDR ? "requests being handled"
                       : why == REF_SUSPENDED || why == REF_SUSPENDED_ADDR
                           ? "requests waiting (suspended)"
                           : "request body bytes";
    if (why == REF_INFLIGHT_ADDR || why == REF_SUSPENDED_ADDR || why == REF_BODY_ADDR)
        PB_WARN(NULL,
                "%s holds its share of %s (%s %zu): its further requests are refused 503 "
                "(%llu refused over a share so far)",
                who, what, refusal_setting[why], limit, (unsigned long long)total);
    else
        PB_WARN(NULL, "limit of %s reached (%s %zu): requests are refused 503 (%llu so far)", what,
                refusal_setting[why], limit, (unsigned long long)total);
}

/* An answered request's slot: false (and *why) past max_inflight or the address's share. */
static bool slot_take(pb_hrpc_server *s, struct req *r, enum refusal *why, unsigned *limit,
                      bool *log)
{
    unsigned max = LIM(s, max_inflight), share = LIM(s, max_inflight_per_addr);
    bool ok = false;
    pthread_mutex_lock(&s->conns_mu);
    struct addr_count *e = r->addr;
    if (s->active >= max) {
        *why = REF_INFLIGHT;
        *limit = max;
    } else if (shares_on(s, e) && e->active >= share) {
        *why = REF_INFLIGHT_ADDR;
        *limit = share;
    } else {
        s->active++;
        if (e) e->active++;
        r->slot = SLOT_ACTIVE;
        ok = true;
    }
    if (!ok) *log = slot_refused(s, *why, mono_ms());
    pthread_mutex_unlock(&s->conns_mu);
    return ok;
}

/* The request is about to be suspended: its answered slot becomes a suspended one; false
 * (and *why) past max_suspended or the address's share (it keeps its answered slot). */
static bool slot_wait(pb_hrpc_server *s, struct req *r, enum refusal *why, unsigned *limit,
                      bool *log)
{
    unsigned max = LIM(s, max_suspended), share = LIM(s, max_suspended_per_addr);
    bool ok = false;
    pthread_mutex_lock(&s->conns_mu);
    struct addr_count *e = r->addr;
    if (s->waiting >= max) {
        *why = REF_SUSPENDED;
        *limit = max;
    } else if (shares_on(s, e) && e->waiting >= share) {
        *why = REF_SUSPENDED_ADDR;
        *limit = share;
    } else {
        if (r->slot == SLOT_ACTIVE) {
            s->active--;
            if (e) e->active--;
        }
        s->waiting++;
        if (e) e->waiting++;
        r->slot = SLOT_WAITING;
        ok = true;
    }
    if (!ok) *log = slot_refused(s, *why, mono_ms());
    pthread_mutex_unlock(&s->conns_mu);
    return ok;
}

/* A suspended request runs again: back to an answered slot (taken whatever the limits: it
 * was admitted already, and answers now). */
static void slot_resume(pb_hrpc_server *s, struct req *r)
{
    pthread_mutex_lock(&s->conns_mu);
    if (r->slot == SLOT_WAITING) {
        s->waiting--;
        s->active++;
        if (r->addr) {
            r->addr->waiting--;
            r->addr->active++;
        }
        r->slot = SLOT_ACTIVE;
    }
    pthread_mutex_unlock(&s->conns_mu);
}

/* Gives back the request's slot, whichever it holds. */
static void slot_release(pb_hrpc_server *s, struct req *r)
{
    if (r->slot == SLOT_NONE) return;
    pthread_mutex_lock(&s->conns_mu);
    struct addr_count *e = r->addr;
    if (r->slot == SLOT_ACTIVE) {
        s->active--;
        if (e) e->active--;
    } else {
        s->waiting--;
        if (e) e->waiting--;
    }
    r->slot = SLOT_NONE;
    if (e) addr_put(s, e);
    pthread_mutex_unlock(&s->conns_mu);
}

/* ---- handshakes parked (see the file comment) -------------------------------------------- */

/* Parks c: its socket into park_ep (one-shot), then the connection suspended; false (and
 * nothing done) when stopping or the socket cannot be watched. On c's own thread. */
static bool tls_park(struct conn *c)
{
    pb_hrpc_server *s = c->srv;
    bool ok = false;
    pthread_mutex_lock(&s->park_mu);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT, .data.ptr = c};
    /* watched first: an event that comes at once waits for park_mu, and finds c parked */
    if (!s->park_closed && epoll_ctl(s->park_ep, EPOLL_CTL_ADD, c->fd, &ev) == 0) {
        MHD_suspend_connection(c->mhd);
        c->parked = true;
        c->pprev = NULL;
        c->pnext = s->parked;
        if (s->parked) s->parked->pprev = c;
        s->parked = c;
        s->nparked++;
        ok = true;
    }
    pthread_mutex_unlock(&s->park_mu);
    return ok;
}

/* Resumes parked c (park_mu held; the park thread only). */
static void tls_unpark_locked(pb_hrpc_server *s, struct conn *c)
{
    if (!c->parked) return;
    (void)epoll_ctl(s->park_ep, EPOLL_CTL_DEL, c->fd, NULL);
    if (c->pprev)
        c->pprev->pnext = c->pnext;
    else
        s->parked = c->pnext;
    if (c->pnext) c->pnext->pprev = c->pprev;
    c->parked = false;
    s->nparked--;
    MHD_resume_connection(c->mhd);
}

/* The park thread: resumes each parked connection when its socket becomes readable (data,
 * EOF, or shut down by the sweeper); at stop, every one still parked, then ends. */
static void *park_main(void *arg)
{
    pthread_setname_np(pthread_self(), "pb-fed-tlspark");
    pb_hrpc_server *s = arg;
    struct epoll_event evs[64];
    bool failing = false;
    for (;;) {
        int n;
        if (pb_fault("hrpc.park-wait-fails")) { /* tls_test: as if the descriptor broke */
            n = -1;
            errno = EBADF;
        } else {
            n = epoll_wait(s->park_ep, evs, 64, failing ? 100 : -1);
        }
        /* Only a broken descriptor fails here (a bug). Nothing parked could be woken:
         * every parked connection goes back to its thread, whose handshake reads again
         * (and parks again, or fails), every 100 ms until the wait works; logged once. */
        bool failed = n < 0 && errno != EINTR;
        if (failed && !failing)
            PB_ERROR(NULL,
                     "federation listener: epoll_wait of parked TLS handshakes: %s; waiting "
                     "handshakes are retried every 100 ms instead",
                     strerror(errno));
        else if (!failed && failing && n >= 0)
            PB_INFO(NULL, "federation listener: epoll_wait of parked TLS handshakes works again");
        if (n >= 0) failing = false;
        if (failed) failing = true;
        if (n < 0) n = 0;
        pthread_mutex_lock(&s->park_mu);
        for (int i = 0; i < n; i++)
            if (evs[i].data.ptr) tls_unpark_locked(s, evs[i].data.ptr);
        bool stop = s->park_closed;
        if (stop || failed)
            while (s->parked)
                tls_unpark_locked(s, s->parked);
        pthread_mutex_unlock(&s->park_mu);
        if (stop) return NULL;
        if (failed) nanosleep(&(struct timespec){0, 100 * 1000 * 1000}, NULL);
    }
}

/* GnuTLS's read of a TLS connection (its transport's receive pointer is the record): before
 * the connection's first request, a read that finds nothing parks it instead of leaving it
 * on libmicrohttpd's ready list. Runs on the connection's thread. */
static ssize_t tls_pull(gnutls_transport_ptr_t p, void *buf, size_t len)
{
    struct conn *c = p;
    ssize_t n = recv(c->fd, buf, len, 0);
    if (n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK) || c->hs_done) return n;
    /* stopping (or no watch): the handshake fails and the connection closes */
    errno = tls_park(c) ? EAGAIN : ECONNRESET;
    return -1;
}

static int tls_pull_timeout(gnutls_transport_ptr_t p, unsigned int ms)
{
    struct conn *c = p;
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    int rc = poll(&pfd, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : ms > INT_MAX ? INT_MAX : (int)ms);
    return rc < 0 ? -1 : rc;
}

/* Reads c's TLS session through tls_pull (sends stay GnuTLS's own, on the descriptor). */
static void park_attach(pb_hrpc_server *s, struct conn *c, struct MHD_Connection *conn)
{
    if (!s->tls_on || s->park_ep < 0 || c->fd < 0) return;
    const union MHD_ConnectionInfo *ti =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    if (!ti || !ti->tls_session) return;
    c->srv = s;
    c->mhd = conn;
    c->tls = ti->tls_session;
    gnutls_transport_set_ptr2(c->tls, c, (gnutls_transport_ptr_t)(intptr_t)c->fd);
    gnutls_transport_set_pull_function(c->tls, tls_pull);
    gnutls_transport_set_pull_timeout_function(c->tls, tls_pull_timeout);
}

/* Starts the park thread (TLS only); false when it cannot. */
static bool park_start(pb_hrpc_server *s)
{
    s->park_closed = false;
    s->park_ep = epoll_create1(EPOLL_CLOEXEC);
    s->park_ev = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (s->park_ep < 0 || s->park_ev < 0 ||
        epoll_ctl(s->park_ep, EPOLL_CTL_ADD, s->park_ev, &ev) != 0 ||
        pthread_create(&s->park_thread, NULL, park_main, s) != 0) {
        if (s->park_ep >= 0) close(s->park_ep);
        if (s->park_ev >= 0) close(s->park_ev);
        s->park_ep = s->park_ev = -1;
        return false;
    }
    s->park_started = true;
    return true;
}

/* Resumes every parked connection (their handshakes then fail) and ends the park thread:
 * before MHD_stop_daemon, which must find no connection suspended. */
static void park_stop(pb_hrpc_server *s)
{
    if (!s->park_started) return;
    pthread_mutex_lock(&s->park_mu);
    s->park_closed = true;
    pthread_mutex_unlock(&s->park_mu);
    uint64_t one = 1;
    ssize_t w = write(s->park_ev, &one, sizeof one);
    (void)w;
    pthread_join(s->park_thread, NULL);
    s->park_started = false;
    pthread_mutex_lock(&s->park_mu); /* tls_park() reads them only while not closed */
    close(s->park_ep);
    close(s->park_ev);
    s->park_ep = s->park_ev = -1;
    pthread_mutex_unlock(&s->park_mu);
}

/* Connection opened or closed (libmicrohttpd's notification; runs on its threads). */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    pb_hrpc_server *s = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        tls_session_start(s, conn);
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        const union MHD_ConnectionInfo *ai =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        uint8_t key[16];
        bool keyed = ai && ai->client_addr && pb_addr_client_key(ai->client_addr, key);
        struct conn *c = pb_xcalloc(1, sizeof *c);
        c->fd = ci ? (int)ci->connect_fd : -1;
        enum { OPEN, OVER_LIMIT, OVER_ADDR } verdict = OPEN;
        bool log_refusal = false;
        uint64_t refused = 0;
        unsigned limit = 0;
        pthread_mutex_lock(&s->conns_mu);
        struct addr_count **chain = keyed ? addr_chain(s, key) : NULL, *e = NULL;
        for (e = chain ? *chain : NULL; e && memcmp(e->key, key, 16) != 0; e = e->next)
            ;
        int64_t now = mono_ms();
        if (s->nconns >= s->max_conns) {
            verdict = OVER_LIMIT;
            refused = ++s->nrefused;
            limit = s->max_conns;
            log_refusal = warn_due(&s->refused_logged_ms, now);
        } else if (e && e->n >= s->max_per_addr) {
            verdict = OVER_ADDR;
            refused = ++s->naddr_refused;
            limit = s->max_per_addr;
            log_refusal = warn_due(&s->addr_logged_ms, now);
        }
        if (verdict != OPEN) {
            c->cut = true;
            if (c->fd >= 0) shutdown(c->fd, SHUT_RDWR);
        } else {
            c->counted = true;
            s->nconns++;
            c->deadline_ms = now + (int64_t)LIM(s, conn_timeout_s) * 1000;
            if (chain && !e) {
                e = pb_xcalloc(1, sizeof *e);
                memcpy(e->key, key, 16);
                e->next = *chain;
                *chain = e;
            }
            if (e) e->n++;
            c->addr = e;
        }
        c->next = s->conns;
        if (s->conns) s->conns->prev = c;
        s->conns = c;
        pthread_mutex_unlock(&s->conns_mu);
        if (verdict == OPEN) park_attach(s, c, conn);
        *socket_context = c;
        if (verdict != OPEN)
            pb_counter_inc(pb_metric_get(PB_METRIC(s->opts.metrics, connections_refused),
                                         verdict == OVER_LIMIT ? "limit" : "per_address"));
        if (log_refusal && verdict == OVER_LIMIT)
            PB_WARN(NULL,
                    "connection limit of %u reached: new connections are closed (%llu so far)",
                    limit, (unsigned long long)refused);
        if (log_refusal && verdict == OVER_ADDR) {
            char who[INET6_ADDRSTRLEN + 8];
            pb_addr_client_text(key, who, sizeof who);
            PB_WARN(NULL,
                    "%s holds the per-address limit of %u connections (max_connections_per_ip):"
                    " its new connections are closed (%llu refused from over-limit addresses "
                    "so far)",
                    who, limit, (unsigned long long)refused);
        }
        return;
    }
    struct conn *c = *socket_context;
    if (!c) return;
    pthread_mutex_lock(&s->conns_mu);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    if (c->counted) s->nconns--;
    if (c->addr) addr_release(s, c->addr);
    bool linger = c->linger && !c->cut && c->fd >= 0;
    pthread_mutex_unlock(&s->conns_mu);
    if (linger) linger_add(s, c->fd);
    free(c);
    *socket_context = NULL;
}

static void fire_locked(pb_hrpc_server *s, pb_hrpc_waker *w, bool timed_out);

/* Shuts down every connection whose request was not read in time, and resumes every
 * suspended request past its deadline, until stopped. */
static void *sweeper_main(void *arg)
{
    pthread_setname_np(pthread_self(), "pb-fed-sweeper");
    pb_hrpc_server *s = arg;
    pthread_mutex_lock(&s->conns_mu);
    while (!s->sweeper_stop) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += SWEEP_MS * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&s->sweep_cv, &s->conns_mu, &until);
        int64_t now = mono_ms();
        unsigned cut = 0;
        for (struct conn *c = s->conns; c; c = c->next) {
            if (c->cut || !c->deadline_ms || now < c->deadline_ms) continue;
            c->cut = true;
            if (c->fd >= 0) shutdown(c->fd, SHUT_RDWR);
            cut++;
        }
        s->ncut += cut;
        pthread_mutex_lock(&s->wake_mu);
        for (pb_hrpc_waker *w = s->suspended, *next; w; w = next) {
            next = w->next;
            if (now >= w->deadline) fire_locked(s, w, true);
        }
        pthread_mutex_unlock(&s->wake_mu);
        if (cut) {
            uint64_t total = s->ncut;
            pthread_mutex_unlock(&s->conns_mu);
            PB_INFO(NULL,
                    "closed %u connection(s) whose request was not complete within %u s "
                    "(%llu so far)",
                    cut, LIM(s, conn_timeout_s), (unsigned long long)total);
            pthread_mutex_lock(&s->conns_mu);
        }
    }
    pthread_mutex_unlock(&s->conns_mu);
    return NULL;
}

/* ---- suspension ---------------------------------------------------------------------------- */

static pb_hrpc_waker *waker_new(pb_hrpc_server *s, struct MHD_Connection *conn, int timeout_ms)
{
    pb_hrpc_waker *w = pb_xcalloc(1, sizeof *w);
    atomic_init(&w->refs, 2);
    w->s = s;
    w->conn = conn;
    w->state = W_ARMED;
    w->deadline = mono_ms() + (timeout_ms > 0 ? timeout_ms : 1);
    return w;
}

static void waker_unref(pb_hrpc_waker *w)
{
    if (atomic_fetch_sub(&w->refs, 1) == 1) free(w);
}

/* With wake_mu held: takes w off the suspended list and resumes its connection. */
static void fire_locked(pb_hrpc_server *s, pb_hrpc_waker *w, bool timed_out)
{
    if (w->state == W_FIRED) return;
    if (w->state == W_SUSPENDED) {
        if (w->prev)
            w->prev->next = w->next;
        else
            s->suspended = w->next;
        if (w->next) w->next->prev = w->prev;
        w->prev = w->next = NULL;
        w->state = W_FIRED;
        w->timed_out = timed_out;
        MHD_resume_connection(w->conn);
        return;
    }
    w->state = W_FIRED;
    w->timed_out = timed_out;
}

void pb_hrpc_wake(pb_hrpc_waker *w)
{
    if (!w) return;
    pb_hrpc_server *s = w->s;
    pthread_mutex_lock(&s->wake_mu);
    fire_locked(s, w, false);
    pthread_mutex_unlock(&s->wake_mu);
    waker_unref(w);
}

pb_hrpc_waker *pb_hrpc_defer(const pb_hrpc_request *req, int timeout_ms)
{
    struct req *r = req->internal;
    if (r->w) abort(); /* a handler defers at most once per run: a bug */
    r->w = waker_new(r->srv, r->conn, timeout_ms);
    return r->w;
}

pb_hrpc_waker *pb_hrpc_defer_local(const pb_hrpc_request *req, int timeout_ms)
{
    pb_hrpc_waker *w = pb_hrpc_defer(req, timeout_ms);
    w->local = true;
    return w;
}

static void hstate_drop(struct req *r)
{
    if (r->hstate && r->hstate_free) r->hstate_free(r->hstate);
    r->hstate = NULL;
    r->hstate_free = NULL;
}

void pb_hrpc_set_state(const pb_hrpc_request *req, void *state, void (*free_fn)(void *))
{
    struct req *r = req->internal;
    if (r->hstate != state) hstate_drop(r);
    r->hstate = state;
    r->hstate_free = free_fn;
}

/* Suspends the request unless its waker fired already; true when suspended. */
static bool suspend(pb_hrpc_server *s, struct req *r)
{
    pb_hrpc_waker *w = r->w;
    pthread_mutex_lock(&s->wake_mu);
    bool go_on = w->state == W_FIRED;
    if (!go_on) {
        w->state = W_SUSPENDED;
        w->next = s->suspended;
        if (s->suspended) s->suspended->prev = w;
        s->suspended = w;
        MHD_suspend_connection(w->conn);
    }
    pthread_mutex_unlock(&s->wake_mu);
    return !go_on;
}

/* The request runs again: takes over what its waker learnt and drops the server's
 * reference. */
static void take_waker(pb_hrpc_server *s, struct req *r)
{
    pb_hrpc_waker *w = r->w;
    if (!w) return;
    pthread_mutex_lock(&s->wake_mu);
    r->timed_out = w->timed_out;
    pthread_mutex_unlock(&s->wake_mu);
    r->w = NULL;
    waker_unref(w);
}

static enum MHD_Result send_refusal(pb_hrpc_server *s, struct MHD_Connection *conn,
                                    enum refusal why);

/* The request must wait (r->w armed): it moves to a suspended slot and is suspended, 1; or
 * its waker fired already and it goes on at once, 0; or the suspended requests' pool or
 * its address's share is full, -1: the waker is dropped (its holder's wake will do
 * nothing) and the 503 queued in *res. */
static int park(pb_hrpc_server *s, struct MHD_Connection *conn, struct req *r, enum MHD_Result *res)
{
    enum refusal why;
    unsigned limit = 0;
    bool log = false;
    pthread_mutex_lock(&s->wake_mu);
    bool fired = r->w->state == W_FIRED;
    pthread_mutex_unlock(&s->wake_mu);
    if (fired) return 0;                           /* woken already: no wait, no suspended slot */
    if (r->w->local) return suspend(s, r) ? 1 : 0; /* keeps its answered slot */
    if (!slot_wait(s, r, &why, &limit, &log)) {
        pthread_mutex_lock(&s->wake_mu);
        fire_locked(s, r->w, true);
        pthread_mutex_unlock(&s->wake_mu);
        take_waker(s, r);
        r->key_wait = false;
        refusal_note(s, why, log, r, limit);
        *res = send_refusal(s, conn, why);
        return -1;
    }
    if (suspend(s, r)) return 1;
    slot_resume(s, r);
    return 0;
}

/* First call of a request: everything that can be refused from the headers. */
static enum MHD_Result on_headers(pb_hrpc_server *s, struct MHD_Connection *conn, const char *url,
                                  const char *method, struct req *r)
{
    r->route = find_route(s, url);
    if (!r->route) return send_error(conn, 404, ID_NOT_FOUND, 0, "no such method: %.200s", url);
    if (strcmp(method, "POST") != 0)
        return send_error(conn, 405, ID_BAD_REQUEST, 0, "method %.16s not allowed: use POST",
                          method);
    const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
    if (!content_type_ok(ct))
        return send_error(conn, 400, ID_BAD_REQUEST, 0,
                          "Content-Type must be application/hrpc, got %.100s", ct ? ct : "none");
    const char *ver = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Hrpc-Version");
    if (ver && strcmp(ver, "1") != 0)
        return send_error(conn, 400, ID_BAD_REQUEST, 0, "unsupported Hrpc-Version %.20s", ver);
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    uint64_t declared = 0;
    if (cl && parse_size(cl, &declared) && declared > LIM(s, max_body))
        return send_error(conn, 413, ID_EXHAUSTED, 0, "body of %llu bytes over the limit of %zu",
                          (unsigned long long)declared, LIM(s, max_body));
    if (atomic_load(&s->stopping))
        return send_error(conn, 503, ID_UNAVAILABLE, 5, "server is shutting down");
    return MHD_YES;
}

/* Gives back what a request's body holds. */
static void body_release(pb_hrpc_server *s, struct req *r)
{
    if (r->charged) {
        pthread_mutex_lock(&s->conns_mu);
        atomic_fetch_sub(&s->body_bytes, r->charged);
        if (r->addr) {
            r->addr->body -= r->charged;
            addr_put(s, r->addr);
        }
        pthread_mutex_unlock(&s->conns_mu);
    }
    r->charged = 0;
    pb_buf_free(&r->body);
}

/* Takes in n more body bytes, charged to body_bytes and to the client address; over
 * max_body, body_memory or the address's share (body_memory_per_addr) the body is dropped
 * and the rest of it discarded (answered 413 or 503 once complete). */
static void body_take(pb_hrpc_server *s, struct req *r, const char *data, size_t n)
{
    if (r->too_big || r->overloaded) return;
    size_t max_body = LIM(s, max_body);
    if (r->body.len + n > max_body) {
        r->too_big = true;
        body_release(s, r);
        return;
    }
    /* at least one body of max_body fits, in all and in a share */
    size_t cap = LIM(s, body_memory), share = LIM(s, body_memory_per_addr);
    if (cap < max_body) cap = max_body;
    if (share > cap) share = cap;
    if (share < max_body) share = max_body;
    enum refusal why = REF_NONE;
    bool log = false;
    pthread_mutex_lock(&s->conns_mu);
    struct addr_count *e = r->addr;
    if (atomic_load(&s->body_bytes) + n > cap)
        why = REF_BODY;
    else if (shares_on(s, e) && e->body + n > share)
        why = REF_BODY_ADDR;
    if (why != REF_NONE) {
        log = slot_refused(s, why, mono_ms());
    } else {
        atomic_fetch_add(&s->body_bytes, n);
        if (e) e->body += n;
        r->charged += n;
    }
    pthread_mutex_unlock(&s->conns_mu);
    if (why != REF_NONE) {
        r->overloaded = true;
        r->overload = why;
        body_release(s, r);
        refusal_note(s, why, log, r, why == REF_BODY ? cap : share);
        return;
    }
    pb_buf_append(&r->body, data, n);
}

/* ---- authentication ------------------------------------------------------------------------- */

/* keyfetch callback (loop thread): the key a suspended request waits for. */
static void key_ready(void *ctx, pb_err err, const uint8_t key[32])
{
    pb_hrpc_waker *w = ctx;
    pthread_mutex_lock(&w->s->wake_mu);
    w->key_done = true;
    w->key_err = err;
    if (err == PB_OK) memcpy(w->key, key, PB_PUBKEY_LEN);
    pthread_mutex_unlock(&w->s->wake_mu);
    pb_hrpc_wake(w);
}

enum astep { A_OK, A_WAIT, A_REFUSED, A_LIMITED };

/* The client address of conn as the per-address limits count it (into key): false when
 * those limits are off (max_connections_per_ip = 0: behind a proxy, every client would
 * share the proxy's address) or the address is unknown. */
static bool client_key(pb_hrpc_server *s, struct MHD_Connection *conn, uint8_t key[16])
{
    pthread_mutex_lock(&s->conns_mu);
    bool on = s->max_per_addr != UINT_MAX;
    pthread_mutex_unlock(&s->conns_mu);
    const union MHD_ConnectionInfo *ai =
        on ? MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS) : NULL;
    return ai && ai->client_addr && pb_addr_client_key(ai->client_addr, key);
}

/* The client's address key into r->ckey (r->has_ckey), as client_key says. */
static void client_addr_of(pb_hrpc_server *s, struct MHD_Connection *conn, struct req *r)
{
    r->has_ckey = client_key(s, conn, r->ckey);
}

/*
 * The token check of PROTOCOL.md 3 with the key found asynchronously. A_OK: r->peer and
 * r->bound are set. A_WAIT: r->w is armed; run again once it fired. A_REFUSED: *verdict
 * and *retry_after say what to answer. A_LIMITED: a new peer this client may not add now
 * (auth.admit_new): 429 with *retry_after. Key fetches are asked for on behalf of the
 * client's address (its share, and its own re-fetch allowance: keyfetch.h). A signature
 * that does not verify is answered 401 without RetryInfo: when a re-fetch could be made
 * again is no business of whoever sent it (a genuine peer retries on its own backoff).
 */
static enum astep auth_step(pb_hrpc_server *s, struct MHD_Connection *conn, struct req *r,
                            pb_auth_verdict *verdict, uint32_t *retry_after)
{
    const char *hdr =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    pb_auth_claims c;
    enum astep step = A_REFUSED;
    uint8_t key[PB_PUBKEY_LEN];
    bool have = false, stored = false, via_rename = false;
    *retry_after = 0;
    *verdict = pb_auth_precheck(hdr, (uint64_t)time(NULL), s->auth.policy, &c);
    snprintf(r->peer, sizeof r->peer, "%s", c.server_id);
    if (*verdict != PB_AUTH_OK) goto out;

    if (r->key_wait) { /* back from waiting for a fetch */
        r->key_wait = false;
        pb_hrpc_waker *w = r->w;
        /* test: the key arrives after the wait's deadline fired, before this rerun */
        for (int i = 0; i < 500 && pb_fault("hrpc.key-late-rerun"); i++) {
            pthread_mutex_lock(&s->wake_mu);
            bool arrived = w->key_done;
            pthread_mutex_unlock(&s->wake_mu);
            if (arrived) break;
            nanosleep(&(struct timespec){0, 10000000}, NULL);
        }
        pthread_mutex_lock(&s->wake_mu);
        bool done = w->key_done;
        pb_err kerr = w->key_err;
        if (done && kerr == PB_OK) memcpy(key, w->key, PB_PUBKEY_LEN);
        pthread_mutex_unlock(&s->wake_mu);
        take_waker(s, r);
        /* the key wait's deadline is not the handler's: a key that came after it fired
         * (and before this rerun) is used, and the handler must not see a timed-out wait */
        r->timed_out = false;
        if (done && kerr == PB_OK) {
            have = true;
        } else {
            *verdict = r->refreshing ? PB_AUTH_BAD_SIGNATURE : PB_AUTH_KEY_UNAVAILABLE;
            *retry_after = r->refreshing ? 0
                           : done        ? (uint32_t)(s->auth.policy->key_retry_after_s
                                                          ? s->auth.policy->key_retry_after_s
                                                          : 30)
                                         : 1;
            goto out;
        }
    }
    /* a server ID whose key we do not hold may be the new ID of a pending rename */
    if (!have && !r->refreshing && s->auth.rename_key && s->auth.keys &&
        pb_keyfetch_stored(s->auth.keys, c.server_id, key) == PB_ERR_NOT_FOUND &&
        s->auth.rename_key(s->auth.cb_ctx, c.server_id, key))
        have = via_rename = true;
    uint8_t ckey[16];
    bool keyed = false, keyed_done = false;
    for (;;) {
        if (!have) {
            if (!keyed_done) keyed = client_key(s, conn, ckey);
            keyed_done = true;
            pb_hrpc_waker *w = waker_new(s, conn, s->auth.key_wait_ms);
            pb_err err = s->auth.keys ? pb_keyfetch_get(s->auth.keys, c.server_id, r->refreshing,
                                                        keyed ? ckey : NULL, key, &stored,
                                                        key_ready, w, retry_after)
                                      : PB_ERR_NOT_FOUND;
            if (err == PB_ERR_BUSY) {
                r->w = w;
                r->key_wait = true;
                step = A_WAIT;
                goto out;
            }
            waker_unref(w); /* neither reference is used */
            waker_unref(w);
            if (err != PB_OK) {
                *verdict = r->refreshing ? PB_AUTH_BAD_SIGNATURE : PB_AUTH_KEY_UNAVAILABLE;
                if (r->refreshing)
                    *retry_after = 0;
                else if (!*retry_after)
                    *retry_after = 1;
                goto out;
            }
            have = true;
        }
        if (pb_auth_claims_verify(s->auth.policy, &c, key)) break;
        /* A stored key that fails: the peer may have rotated it; fetch once more. */
        if (!stored || r->refresh_tried) {
            *verdict = PB_AUTH_BAD_SIGNATURE;
            goto out;
        }
        r->refresh_tried = r->refreshing = true;
        have = stored = false;
    }
    if (via_rename) {
        pb_err err = s->auth.rename_proven(s->auth.cb_ctx, c.server_id);
        if (err != PB_OK) {
            *verdict = PB_AUTH_KEY_UNAVAILABLE;
            *retry_after = 1;
            goto out;
        }
    } else if (!stored) {
        /* a server ID we held no key for (not a re-fetch after a rotation): a new peer */
        if (!r->refresh_tried && s->auth.admit_new) {
            client_addr_of(s, conn, r);
            if (!s->auth.admit_new(s->auth.cb_ctx, c.server_id, key, r->has_ckey ? r->ckey : NULL,
                                   retry_after)) {
                step = A_LIMITED;
                goto out;
            }
        }
        pb_keyfetch_verified(s->auth.keys, c.server_id, key);
    }
    memcpy(r->peer_key, key, PB_PUBKEY_LEN);
    r->authed = true;
    r->bound = c.bound;
    *verdict = PB_AUTH_OK;
    step = A_OK;
    if (s->auth.on_authenticated) s->auth.on_authenticated(s->auth.cb_ctx, r->peer, r->bound);
out:
    pb_auth_claims_clear(&c);
    return step;
}

/* ---- the request ----------------------------------------------------------------------------- */

/* The request is complete (or resumed): authenticate, run the handler, answer; or suspend
 * and come back here. */
static enum MHD_Result process(pb_hrpc_server *s, struct MHD_Connection *conn, const char *url,
                               struct req *r)
{
    for (;;) {
        if (r->route->with_auth && !r->authed) {
            if (!s->has_auth)
                return send_error(conn, 500, ID_INTERNAL, 0, "authentication not configured");
            pb_auth_verdict v;
            uint32_t ra;
            enum astep st = auth_step(s, conn, r, &v, &ra);
            if (st == A_WAIT) {
                enum MHD_Result res;
                int parked = park(s, conn, r, &res);
                if (parked > 0) return MHD_YES;
                if (parked < 0) return res;
                continue; /* the key came before we could wait for it */
            }
            if (st == A_LIMITED) {
                PB_INFO(r->peer, "%s refused: too many new peers from this key or address", url);
                return send_error(conn, 429, ID_EXHAUSTED, ra ? ra : 1,
                                  "too many new server IDs from this key or address: try later");
            }
            if (st == A_REFUSED) {
                PB_INFO(r->peer[0] ? r->peer : NULL, "%s refused: %s (%s)", url,
                        pb_auth_verdict_message(v), pb_auth_verdict_identifier(v));
                return send_error(conn, (unsigned)pb_auth_verdict_status(v),
                                  pb_auth_verdict_identifier(v), ra, "%s",
                                  pb_auth_verdict_message(v));
            }
        }
        if (r->w) { /* back from a handler's deferral */
            take_waker(s, r);
            r->resumed = true;
        }
        pb_hrpc_request hreq = {.path = url,
                                .body = r->body.data,
                                .body_len = r->body.len,
                                .peer = r->route->with_auth ? r->peer : NULL,
                                .bound = r->route->with_auth && r->bound,
                                .peer_key = r->route->with_auth ? r->peer_key : NULL,
                                .resumed = r->resumed,
                                .timed_out = r->timed_out,
                                .state = r->hstate,
                                .internal = r};
        hreq.authorization =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        if (r->route->with_auth) {
            client_addr_of(s, conn, r);
            hreq.client_addr = r->has_ckey ? r->ckey : NULL;
        }
        if (atomic_load(&s->stopping) && r->resumed)
            return send_error(conn, 503, ID_UNAVAILABLE, 5, "server is shutting down");
        pb_hrpc_reply rep = {0};
        rep.status = 200;
        if (pb_fault("hrpc.internal"))
            pb_hrpc_reply_error(&rep, 500, ID_INTERNAL, "injected fault");
        else
            r->route->fn(r->route->ctx, &hreq, &rep);
        if (r->w) { /* deferred */
            reply_clear(&rep);
            r->timed_out = false;
            enum MHD_Result res;
            int parked = park(s, conn, r, &res);
            if (parked > 0) return MHD_YES;
            if (parked < 0) return res;
            continue; /* woken already */
        }
        if (rep.status >= 500 && !rep.logged)
            PB_WARN(hreq.peer, "%s answered %d %s: %s", url, rep.status,
                    rep.identifier ? rep.identifier : "", rep.message ? rep.message : "");
        r->on_done = rep.on_done;
        r->on_done_ctx = rep.on_done_ctx;
        enum MHD_Result res = send_reply(conn, &rep);
        reply_clear(&rep);
        return res;
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    pb_hrpc_server *s = cls;
    struct req *r = *con_cls;
    if (!r) {
        r = pb_xcalloc(1, sizeof *r);
        r->srv = s;
        r->conn = conn;
        *con_cls = r;
        struct conn *c = conn_of(conn);
        bool first = false;
        if (c) {
            pthread_mutex_lock(&s->conns_mu);
            r->addr = c->addr; /* alive while the connection is; then while r holds a part */
            first = !c->tls_counted;
            c->tls_counted = true;
            pthread_mutex_unlock(&s->conns_mu);
            c->hs_done = true; /* read on this thread only (tls_pull) */
        }
        if (first && s->tls_on) tls_count_handshake(s, conn);
        enum MHD_Result res = on_headers(s, conn, url, method, r);
        /* refused from the headers while a body may still be coming: close in stages */
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Transfer-Encoding");
        if (tl_status && ((cl && strcmp(cl, "0") != 0) || te)) {
            if (c) {
                pthread_mutex_lock(&s->conns_mu);
                c->linger = true;
                pthread_mutex_unlock(&s->conns_mu);
            }
        }
        return res;
    }
    if (r->w) { /* resumed */
        slot_resume(s, r);
        return process(s, conn, url, r);
    }
    if (*upload_data_size > 0) {
        /* A body still arriving after the deadline: close without an answer. */
        if (conn_past_deadline(s, conn)) return MHD_NO;
        body_take(s, r, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    /* The request is complete: no deadline while it is handled and answered. */
    conn_set_deadline(s, conn, false);
    if (r->too_big)
        return send_error(conn, 413, ID_EXHAUSTED, 0, "body over the limit of %zu bytes",
                          LIM(s, max_body));
    if (r->overloaded) return send_refusal(s, conn, r->overload);
    /* Only a complete request takes a slot: one still arriving (a hung sender) holds
     * nothing but its bytes. */
    enum refusal why;
    unsigned limit = 0;
    bool log = false;
    if (!slot_take(s, r, &why, &limit, &log)) {
        refusal_note(s, why, log, r, limit);
        return send_refusal(s, conn, why);
    }
    return process(s, conn, url, r);
}

/* The 503 of a refusal for want of a slot or of body memory (RetryInfo: 1 s). */
static enum MHD_Result send_refusal(pb_hrpc_server *s, struct MHD_Connection *conn,
                                    enum refusal why)
{
    switch (why) {
    case REF_INFLIGHT:
        return send_error(conn, 503, ID_UNAVAILABLE, 1, "overloaded: %u requests in flight",
                          LIM(s, max_inflight));
    case REF_INFLIGHT_ADDR:
        return send_error(conn, 503, ID_UNAVAILABLE, 1,
                          "overloaded: %u requests in flight from your address",
                          LIM(s, max_inflight_per_addr));
    case REF_SUSPENDED:
        return send_error(conn, 503, ID_UNAVAILABLE, 1, "overloaded: %u requests waiting",
                          LIM(s, max_suspended));
    case REF_SUSPENDED_ADDR:
        return send_error(conn, 503, ID_UNAVAILABLE, 1,
                          "overloaded: %u requests waiting from your address",
                          LIM(s, max_suspended_per_addr));
    case REF_BODY_ADDR:
        return send_error(conn, 503, ID_UNAVAILABLE, 1,
                          "overloaded: request bodies from your address over %zu bytes held",
                          LIM(s, body_memory_per_addr));
    default:
        return send_error(conn, 503, ID_UNAVAILABLE, 1,
                          "overloaded: request bodies over %zu bytes held", LIM(s, body_memory));
    }
}

/* on_request, noting when a request's headers arrived and which answer it queued. */
static enum MHD_Result measured(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version, const char *upload_data,
                                size_t *upload_data_size, void **con_cls)
{
    bool first = *con_cls == NULL;
    double t0 = first ? pb_metrics_clock() : 0;
    tl_status = 0;
    enum MHD_Result res =
        on_request(cls, conn, url, method, version, upload_data, upload_data_size, con_cls);
    struct req *r = *con_cls;
    if (r && first) r->started = t0;
    if (r && tl_status) {
        r->status = tl_status;
        r->identifier = tl_identifier;
        /* answered: the work is done, its slot and body are free for the next request
         * (not only once libmicrohttpd has sent the answer and noted the completion) */
        slot_release(cls, r);
        body_release(cls, r);
    }
    return res;
}

/* Records an answered request: latency and status by method (the route's last path
 * segment, "other" for unknown paths), token refusals (401/403 on a route that checks
 * the token) by identifier. */
static void record(pb_hrpc_server *s, const struct req *r)
{
    const pb_metrics_std *m = s->opts.metrics;
    if (!m || !r->status) return;
    const char *method = r->route ? strrchr(r->route->path, '/') : NULL;
    method = method && method[1] ? method + 1 : "other";
    char code[8];
    snprintf(code, sizeof code, "%d", r->status);
    pb_histogram_observe(pb_metric_get(m->server_duration, method),
                         pb_metrics_clock() - r->started);
    pb_counter_inc(pb_metric_get(m->server_requests, method, code));
    if (r->route && r->route->with_auth && (r->status == 401 || r->status == 403))
        pb_counter_inc(pb_metric_get(m->auth_refusals, r->identifier));
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    pb_hrpc_server *s = cls;
    /* The next request on this connection has conn_timeout_s to arrive completely. */
    conn_set_deadline(s, conn, true);
    struct req *r = *con_cls;
    if (!r) return;
    if (r->w) take_waker(s, r); /* a request that ended while woken (shutdown) */
    hstate_drop(r);
    if (r->on_done) r->on_done(r->on_done_ctx, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK);
    record(s, r);
    slot_release(s, r);
    body_release(s, r);
    free(r);
    *con_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    PB_DEBUG(NULL, "http: %s", msg);
}

pb_err pb_hrpc_parse_listen(const char *listen, struct sockaddr_storage *ss, unsigned *len)
{
    char host[128];
    const char *colon = strrchr(listen, ':');
    if (!colon || colon == listen) return PB_ERR_CONFIG;
    size_t hl = (size_t)(colon - listen);
    if (hl >= sizeof host) return PB_ERR_CONFIG;
    memcpy(host, listen, hl);
    host[hl] = '\0';
    uint64_t port;
    if (!parse_size(colon + 1, &port) || port > 65535) return PB_ERR_CONFIG;
    memset(ss, 0, sizeof *ss);
    if (host[0] == '[') {
        if (hl < 3 || host[hl - 1] != ']') return PB_ERR_CONFIG;
        host[hl - 1] = '\0';
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, host + 1, &a6->sin6_addr) != 1) return PB_ERR_CONFIG;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof *a6;
        return PB_OK;
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    if (strcmp(host, "localhost") == 0) strcpy(host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &a4->sin_addr) != 1) return PB_ERR_CONFIG;
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    *len = sizeof *a4;
    return PB_OK;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    pb_buf b = PB_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0 && b.len < (1u << 20))
        pb_buf_append(&b, chunk, n);
    fclose(f);
    pb_buf_append(&b, "", 1);
    return (char *)pb_buf_steal(&b, NULL);
}

/*
 * Reads the certificate chain and key files and checks that GnuTLS accepts them as a pair.
 * On PB_OK *cert and *key hold the PEM texts (caller frees) and the certificate's subject,
 * serial number and expiry are logged. Changes nothing else.
 */
static pb_err tls_load(const char *cert_file, const char *key_file, char **cert, char **key)
{
    *cert = read_file(cert_file);
    *key = read_file(key_file);
    gnutls_certificate_credentials_t cred = NULL;
    gnutls_x509_crt_t crt = NULL;
    gnutls_datum_t dn = {NULL, 0};
    pb_err err = PB_ERR_CONFIG;
    if (!*cert || !*key) {
        PB_ERROR(NULL, "cannot read TLS certificate %s or key %s", cert_file, key_file);
        goto out;
    }
    gnutls_datum_t c = {(unsigned char *)*cert, (unsigned)strlen(*cert)};
    gnutls_datum_t k = {(unsigned char *)*key, (unsigned)strlen(*key)};
    int rc = gnutls_certificate_allocate_credentials(&cred);
    if (rc >= 0)
        rc = gnutls_certificate_set_x509_key_mem2(cred, &c, &k, GNUTLS_X509_FMT_PEM, NULL, 0);
    if (rc < 0) {
        PB_ERROR(NULL, "TLS certificate %s with key %s: %s", cert_file, key_file,
                 gnutls_strerror(rc));
        goto out;
    }
    gnutls_pcert_st *list = NULL;
    gnutls_privkey_t pk = NULL;
    unsigned n = 0;
    if (tls_parse(*cert, *key, &list, &n, &pk) != 0) { /* what cert_cb will do */
        PB_ERROR(NULL, "TLS certificate %s: more than %d certificates, or unreadable", cert_file,
                 TLS_MAX_CHAIN);
        goto out;
    }
    for (unsigned i = 0; i < n; i++)
        gnutls_pcert_deinit(&list[i]);
    gnutls_free(list);
    gnutls_privkey_deinit(pk);
    unsigned char serial[64];
    size_t slen = sizeof serial;
    char hex[2 * sizeof serial + 1] = "?";
    if (gnutls_x509_crt_init(&crt) >= 0 &&
        gnutls_x509_crt_import(crt, &c, GNUTLS_X509_FMT_PEM) >= 0 &&
        gnutls_x509_crt_get_dn3(crt, &dn, 0) >= 0 &&
        gnutls_x509_crt_get_serial(crt, serial, &slen) >= 0) {
        for (size_t i = 0; i < slen; i++)
            snprintf(hex + 2 * i, 3, "%02x", serial[i]);
        time_t until = gnutls_x509_crt_get_expiration_time(crt);
        struct tm tm;
        char when[32] = "?";
        if (gmtime_r(&until, &tm)) strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
        PB_INFO(NULL, "TLS certificate %s: subject %s, serial %s, valid until %s", cert_file,
                (const char *)dn.data, hex, when);
    }
    err = PB_OK;
out:
    gnutls_free(dn.data);
    if (crt) gnutls_x509_crt_deinit(crt);
    if (cred) gnutls_certificate_free_credentials(cred);
    if (err != PB_OK) {
        if (*key) memset(*key, 0, strlen(*key));
        free(*key);
        free(*cert);
        *cert = *key = NULL;
    }
    return err;
}

pb_err pb_hrpc_tls_check(const char *cert_file, const char *key_file)
{
    char *cert = NULL, *key = NULL;
    pb_err err = tls_load(cert_file, key_file, &cert, &key);
    if (key) memset(key, 0, strlen(key));
    free(key);
    free(cert);
    return err;
}

pb_err pb_hrpc_server_new(const pb_hrpc_server_opts *opts, const pb_hrpc_auth *auth,
                          pb_hrpc_server **out)
{
    pb_hrpc_server *s = pb_xcalloc(1, sizeof *s);
    s->opts = *opts;
    s->opts.listen = pb_xstrdup(opts->listen ? opts->listen : "127.0.0.1:2289");
    s->opts.tls_cert_file = opts->tls_cert_file ? pb_xstrdup(opts->tls_cert_file) : NULL;
    s->opts.tls_key_file = opts->tls_key_file ? pb_xstrdup(opts->tls_key_file) : NULL;
    if (!s->opts.max_body) s->opts.max_body = 64 * 1024;
    if (!s->opts.max_connections) s->opts.max_connections = 1024;
    if (!s->opts.conn_timeout_s) s->opts.conn_timeout_s = 15;
    if (!s->opts.threads) s->opts.threads = 16;
    if (!s->opts.max_inflight) s->opts.max_inflight = 256;
    if (!s->opts.max_inflight_per_addr) s->opts.max_inflight_per_addr = 64;
    if (!s->opts.max_suspended) s->opts.max_suspended = 256;
    if (!s->opts.max_suspended_per_addr) s->opts.max_suspended_per_addr = 32;
    if (!s->opts.body_memory) s->opts.body_memory = 32u << 20;
    if (!s->opts.body_memory_per_addr) s->opts.body_memory_per_addr = 2u << 20;
    s->max_per_addr = s->opts.max_conns_per_addr ? s->opts.max_conns_per_addr : UINT_MAX;
    s->addrs = pb_xcalloc(ADDR_BUCKETS, sizeof *s->addrs);
    if (sodium_init() < 0) abort(); /* no randomness: nothing here can work */
    randombytes_buf(s->addr_hkey, sizeof s->addr_hkey);
    pthread_mutex_init(&s->conns_mu, NULL);
    pthread_mutex_init(&s->wake_mu, NULL);
    pthread_mutex_init(&s->linger_mu, NULL);
    s->linger_ev = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_mutex_init(&s->park_mu, NULL);
    s->park_ep = s->park_ev = -1;
    pthread_rwlock_init(&s->tls_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->sweep_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (auth) {
        s->auth = *auth;
        s->has_auth = true;
        if (s->auth.key_wait_ms <= 0) s->auth.key_wait_ms = KEY_WAIT_MS;
    }
    *out = s;
    return PB_OK;
}

void pb_hrpc_server_route(pb_hrpc_server *s, const char *path, bool with_auth,
                          pb_hrpc_handler_fn fn, void *ctx)
{
    s->routes = pb_xrealloc(s->routes, (s->nroutes + 1) * sizeof *s->routes);
    s->routes[s->nroutes++] =
        (struct route){.path = pb_xstrdup(path), .with_auth = with_auth, .fn = fn, .ctx = ctx};
}

pb_err pb_hrpc_server_start(pb_hrpc_server *s)
{
    struct sockaddr_storage ss;
    unsigned sslen;
    if (pb_hrpc_parse_listen(s->opts.listen, &ss, &sslen) != PB_OK) {
        PB_ERROR(NULL, "invalid listen address %s (want IP:PORT or [IPv6]:PORT)", s->opts.listen);
        return PB_ERR_CONFIG;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG | MHD_USE_ITC |
                     MHD_ALLOW_SUSPEND_RESUME;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    bool tls = s->opts.tls_cert_file && s->opts.tls_key_file;
    /* epoll; over TLS, waiting handshakes are parked ("Handshakes parked") */
    flags |= MHD_USE_AUTO;
    if (tls) {
        if (tls_load(s->opts.tls_cert_file, s->opts.tls_key_file, &s->tls_cert, &s->tls_key) !=
            PB_OK)
            return PB_ERR_CONFIG;
        flags |= MHD_USE_TLS;
        s->tls_on = true;
        if (gnutls_session_ticket_key_generate(&s->ticket_key) < 0) {
            PB_WARN(NULL, "no TLS session ticket key: every connection pays a full handshake");
            s->ticket_key = (gnutls_datum_t){NULL, 0};
        }
        /* The certificate callback lets a reload replace the certificate; a libmicrohttpd
         * without it gets the certificate once (a new one then needs a restart). */
        s->tls_swappable = MHD_is_feature_supported(MHD_FEATURE_HTTPS_CERT_CALLBACK2) == MHD_YES;
    }
    struct MHD_OptionItem tls_opts[] = {
        {MHD_OPTION_END, 0, NULL},
        {MHD_OPTION_END, 0, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    if (tls && s->tls_swappable) {
        tls_opts[0] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_CERT_CALLBACK2, 0, (void *)cert_cb};
    } else if (tls) {
        tls_opts[0] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, s->tls_key};
        tls_opts[1] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, s->tls_cert};
    }
    /* Our limit closes connections past max_connections; libmicrohttpd's, a little higher,
     * is the hard bound (it splits it between its threads and, once there, stops
     * accepting). Both must fit in the descriptors this process may open. */
    unsigned limit = s->opts.max_connections;
    unsigned margin = 16 + limit / 16;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        (rlim_t)limit + margin + FD_RESERVE > rl.rlim_cur) {
        unsigned fit = rl.rlim_cur > (rlim_t)(FD_RESERVE + 32 + 4)
                           ? (unsigned)((rl.rlim_cur - FD_RESERVE - 16) * 16 / 17)
                           : 4;
        PB_WARN(NULL,
                "max_connections %u does not fit in the open-file limit of %llu: using %u "
                "(raise ulimit -n)",
                limit, (unsigned long long)rl.rlim_cur, fit);
        limit = fit;
        margin = 16 + limit / 16;
    }
    s->max_conns = s->conns_cap = limit;
    /* (the fault point stands in for pthread_create failing) */
    if (tls && (pb_fault("hrpc.no-tls-park") || !park_start(s))) {
        PB_ERROR(NULL, "cannot start the federation listener's TLS handshake thread");
        return PB_ERR_INTERNAL;
    }
    s->mhd = MHD_start_daemon(
        flags, 0, NULL, NULL, measured, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)s->opts.threads, MHD_OPTION_CONNECTION_LIMIT, limit + margin,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->opts.conn_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)16384, MHD_OPTION_LISTEN_BACKLOG_SIZE, 256u,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_NOTIFY_CONNECTION, on_connection,
        s, MHD_OPTION_ARRAY, tls_opts, MHD_OPTION_END);
    if (!s->mhd) {
        int e = errno;
        park_stop(s);
        PB_ERROR(NULL,
                 "cannot listen on %s (listen): %s: is another postboxd or another program "
                 "serving there? Stop it, or change listen",
                 s->opts.listen, strerror(e));
        return PB_ERR_IO;
    }
    s->sweeper_stop = false;
    if (pthread_create(&s->sweeper, NULL, sweeper_main, s) != 0) {
        PB_ERROR(NULL, "cannot start the connection sweeper thread");
        park_stop(s);
        MHD_stop_daemon(s->mhd);
        s->mhd = NULL;
        return PB_ERR_INTERNAL;
    }
    s->sweeper_started = true;
    s->linger_stop = false;
    if (s->linger_ev >= 0 && pthread_create(&s->linger_thread, NULL, linger_main, s) == 0)
        s->linger_started = true;
    PB_INFO(NULL, "federation listener on %s (%s), port %u", s->opts.listen, tls ? "https" : "http",
            pb_hrpc_server_port(s));
    return PB_OK;
}

uint16_t pb_hrpc_server_port(const pb_hrpc_server *s)
{
    if (!s->mhd) return 0;
    const union MHD_DaemonInfo *i = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
    return i ? i->port : 0;
}

unsigned pb_hrpc_server_connections(pb_hrpc_server *s)
{
    pthread_mutex_lock(&s->conns_mu);
    unsigned n = s->nconns;
    pthread_mutex_unlock(&s->conns_mu);
    return n;
}

unsigned pb_hrpc_server_tls_waiting(pb_hrpc_server *s)
{
    pthread_mutex_lock(&s->park_mu);
    unsigned n = s->nparked;
    pthread_mutex_unlock(&s->park_mu);
    return n;
}

size_t pb_hrpc_server_body_bytes(pb_hrpc_server *s)
{
    return atomic_load(&s->body_bytes);
}

void pb_hrpc_server_stop(pb_hrpc_server *s)
{
    if (!s || !s->mhd) return;
    atomic_store(&s->stopping, true);
    /* Stop accepting, wake every suspended request (they answer 503), then let in-flight
     * requests finish (bounded: 10 s). */
    MHD_socket fd = MHD_quiesce_daemon(s->mhd);
    pthread_mutex_lock(&s->wake_mu);
    while (s->suspended)
        fire_locked(s, s->suspended, true);
    pthread_mutex_unlock(&s->wake_mu);
    for (int i = 0; i < 1000; i++) {
        pthread_mutex_lock(&s->conns_mu);
        bool busy = s->active + s->waiting > 0;
        pthread_mutex_unlock(&s->conns_mu);
        if (!busy) break;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    park_stop(s); /* no connection may stay suspended (MHD_stop_daemon) */
    MHD_stop_daemon(s->mhd);
    if (fd != MHD_INVALID_SOCKET) close(fd);
    s->mhd = NULL;
    tls_unbind(s);
    if (s->sweeper_started) {
        pthread_mutex_lock(&s->conns_mu);
        s->sweeper_stop = true;
        pthread_cond_signal(&s->sweep_cv);
        pthread_mutex_unlock(&s->conns_mu);
        pthread_join(s->sweeper, NULL);
        s->sweeper_started = false;
    }
    if (s->linger_started) {
        pthread_mutex_lock(&s->linger_mu);
        s->linger_stop = true;
        pthread_mutex_unlock(&s->linger_mu);
        uint64_t one = 1;
        ssize_t w = write(s->linger_ev, &one, sizeof one);
        (void)w;
        pthread_join(s->linger_thread, NULL);
        s->linger_started = false;
    }
}

void pb_hrpc_server_free(pb_hrpc_server *s)
{
    if (!s) return;
    pb_hrpc_server_stop(s);
    for (size_t i = 0; i < s->nroutes; i++)
        free(s->routes[i].path);
    free(s->routes);
    free((char *)s->opts.listen);
    free((char *)s->opts.tls_cert_file);
    free((char *)s->opts.tls_key_file);
    if (s->tls_key) {
        memset(s->tls_key, 0, strlen(s->tls_key));
        free(s->tls_key);
    }
    free(s->tls_cert);
    tls_ticket_key_free(&s->ticket_key);
    pthread_rwlock_destroy(&s->tls_mu);
    pthread_cond_destroy(&s->sweep_cv);
    pthread_mutex_destroy(&s->conns_mu);
    pthread_mutex_destroy(&s->wake_mu);
    pthread_mutex_destroy(&s->linger_mu);
    pthread_mutex_destroy(&s->park_mu);
    if (s->linger_ev >= 0) close(s->linger_ev);
    for (unsigned i = 0; i < ADDR_BUCKETS; i++) {
        for (struct addr_count *e = s->addrs[i], *next; e; e = next) {
            next = e->next;
            free(e);
        }
    }
    free(s->addrs);
    free(s);
}

/* ---- reload: limits and certificate of a running server -------------------------------- */

pb_err pb_hrpc_server_set_tls(pb_hrpc_server *s, const char *cert_file, const char *key_file)
{
    if (!s->tls_cert || !cert_file || !key_file) {
        PB_ERROR(NULL, "the federation listener %s: switching TLS on or off needs a restart",
                 s->tls_cert ? "serves TLS" : "serves plain HTTP");
        return PB_ERR_CONFIG;
    }
    if (!s->tls_swappable) {
        PB_ERROR(NULL, "this libmicrohttpd cannot replace a certificate: a new one needs a "
                       "restart");
        return PB_ERR_CONFIG;
    }
    char *cert = NULL, *key = NULL;
    pb_err err = tls_load(cert_file, key_file, &cert, &key);
    if (err != PB_OK) return err;
    /* A new ticket key with the new certificate: a ticket issued under the old one no longer
     * resumes (its session was authenticated with the old certificate). */
    gnutls_datum_t tk = {NULL, 0};
    if (gnutls_session_ticket_key_generate(&tk) < 0) tk = (gnutls_datum_t){NULL, 0};
    pthread_rwlock_wrlock(&s->tls_mu);
    char *old_cert = s->tls_cert, *old_key = s->tls_key;
    gnutls_datum_t old_tk = s->ticket_key;
    s->tls_cert = cert;
    s->tls_key = key;
    s->ticket_key = tk;
    pthread_rwlock_unlock(&s->tls_mu);
    tls_ticket_key_free(&old_tk);
    memset(old_key, 0, strlen(old_key));
    free(old_key);
    free(old_cert);
    return PB_OK;
}

void pb_hrpc_server_set_limits(pb_hrpc_server *s, const pb_hrpc_server_opts *lim)
{
    if (lim->max_body) __atomic_store_n(&s->opts.max_body, lim->max_body, __ATOMIC_RELAXED);
    if (lim->max_inflight)
        __atomic_store_n(&s->opts.max_inflight, lim->max_inflight, __ATOMIC_RELAXED);
    if (lim->body_memory)
        __atomic_store_n(&s->opts.body_memory, lim->body_memory, __ATOMIC_RELAXED);
    if (lim->max_inflight_per_addr)
        __atomic_store_n(&s->opts.max_inflight_per_addr, lim->max_inflight_per_addr,
                         __ATOMIC_RELAXED);
    if (lim->max_suspended)
        __atomic_store_n(&s->opts.max_suspended, lim->max_suspended, __ATOMIC_RELAXED);
    if (lim->max_suspended_per_addr)
        __atomic_store_n(&s->opts.max_suspended_per_addr, lim->max_suspended_per_addr,
                         __ATOMIC_RELAXED);
    if (lim->body_memory_per_addr)
        __atomic_store_n(&s->opts.body_memory_per_addr, lim->body_memory_per_addr,
                         __ATOMIC_RELAXED);
    if (lim->conn_timeout_s)
        __atomic_store_n(&s->opts.conn_timeout_s, lim->conn_timeout_s, __ATOMIC_RELAXED);
    if (lim->max_conns_per_addr) {
        pthread_mutex_lock(&s->conns_mu);
        s->max_per_addr = lim->max_conns_per_addr;
        pthread_mutex_unlock(&s->conns_mu);
    }
    if (!lim->max_connections) return;
    pthread_mutex_lock(&s->conns_mu);
    unsigned cap = s->conns_cap ? s->conns_cap : lim->max_connections;
    unsigned want = lim->max_connections;
    s->max_conns = want < cap ? want : cap;
    pthread_mutex_unlock(&s->conns_mu);
    if (want > cap)
        PB_WARN(NULL,
                "max_connections %u is over the %u this listener started with: using %u "
                "until a restart",
                want, cap, cap);
}
