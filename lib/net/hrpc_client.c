/*
 * hrpc_client - unary hRPC calls to peers as libcurl transfers on an I/O loop (see
 * hrpc_client.h).
 *
 * Design: every call is one `struct xfer` owning a fresh easy handle, its URL, headers,
 * a copy of the body and the answer buffer; it is handed to the loop's transfer thread
 * (pb_ioloop_add), where its libcurl callbacks run (on_data, on_progress, on_open_socket:
 * they touch only the xfer and atomics), and finishes in on_done on the loop thread,
 * which turns libcurl's result and the HTTP answer into a pb_err and a pb_client_answer.
 * Connections outlive the easy handles in the multi handle's cache, so a peer's connection is
 * reused across calls. A request refused before it is sent (bad server ID, header injection, client
 * shutting down) completes through a task posted to the loop, so that a completion never runs
 * inside pb_client_start.
 *
 * Names: a server ID naming a host is resolved by net/resolve (c-ares on the loop, no
 * thread) before the transfer is added, and libcurl is given the address with
 * CURLOPT_CONNECT_TO, so it never resolves itself (its resolver would use a thread per new
 * connection). The URL keeps the name: Host header and TLS name checks are the peer's.
 *
 * Private addresses: CURLOPT_OPENSOCKETFUNCTION sees every address libcurl is about to
 * connect to (after DNS, for each address it tries); a refused one gets no socket and the
 * reason is kept for the error message.
 *
 * TLS sessions: a new connection to a peer resumes the session of an earlier one (a
 * session ticket: no certificate exchange, no signature) instead of a full handshake. The
 * sessions are kept in libcurl TLS session caches (CURLSH with CURL_LOCK_DATA_SSL_SESSION,
 * locked by the share's callbacks: handles are made and freed on the loop thread and run
 * on the transfer thread). One
 * libcurl 7.88 cache holds the 8 most recently used sessions, which with more than 8 peers
 * contacted in turn keeps none of them; so there are TLS_SHARES caches, made when first
 * needed, and a peer's transfers use the one its ID hashes to (keyed: a peer cannot aim at
 * another's cache): up to 8 peers per cache keep their sessions. Connections themselves
 * stay open in the multi handle's cache, so a handshake is paid only when one was closed.
 *
 * Trusted CAs: one bundle file, the operator's ca_file or else libcurl's default bundle
 * (Debian: /etc/ssl/certs/ca-certificates.crt), and no CA directory. libcurl builds a new
 * OpenSSL context per connection; it keeps the certificate store built from a bundle file
 * across connections (per multi handle, CA_CACHE_S) only when no CA directory is set, and
 * Debian's libcurl sets /etc/ssl/certs by default. With it, every new TLS connection
 * parsed the whole system bundle again: 23 ms of CPU each against 1.4 ms. An operator's
 * ca_file is then also the only trust: the system's CAs in the directory no longer count
 * beside it. Without a default bundle file (a libcurl built with only a directory), the
 * directory is used as libcurl would.
 *
 * Proxy: only the operator's (peer_proxy), never the environment's. Through it, names are
 * not resolved here (the proxy resolves them) and every connection is to the proxy, which
 * the check above cannot see past: it is not applied, and the proxy decides which
 * addresses it reaches.
 *
 * Untrusted input: the peer's answer. The body is capped at max_response while it is
 * received (CURLOPT_MAXFILESIZE for an announced length, the write callback otherwise)
 * and counted against the shared response budget; a 2xx counts only with Content-Type
 * exactly application/hrpc (case-insensitive, no parameters); a non-2xx body must decode
 * as hrpc.v1.Error with an identifier. Redirects are never followed and only the
 * configured scheme is allowed.
 */
#include "net/hrpc_client.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/resolve.h"
#include "util/addrclass.h"
#include "util/buf.h"
#include "util/fault.h"
#include "util/hash.h"
#include "util/log.h"
#include "util/mem.h"
#include "util/serverid.h"
#include "wire/wire.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 5000L
#define DEFAULT_TIMEOUT_MS 30000L
#define DEFAULT_MAX_RESPONSE (16u * 1024u * 1024u)
#define DEFAULT_RESPONSE_BUDGET (64u * 1024u * 1024u)
/* How long a certificate store built from the CA bundle is kept for new connections: a
 * bundle rewritten in place (update-ca-certificates, a renewed private CA) is read again
 * within this long. */
#define CA_CACHE_S 300L

struct pb_client {
    bool plain_http;
    bool allow_private;
    char *ca_file; /* the bundle (the operator's, or libcurl's default); NULL: libcurl's
                      defaults (it has no default bundle file) */
    char *proxy;   /* peer_proxy; NULL: none */
    long connect_timeout_ms;
    long timeout_ms;
    size_t max_response;
    size_t response_budget;
    pb_ioloop *loop;
    bool own_loop;
    pb_resolver *resolver;
    CURLSH **shares; /* TLS session caches by a hash of the peer's ID (TLS_SHARES; made when
                        first used, under shares_mu; NULL with plain HTTP) */
    bool shares_off; /* libcurl refused a share: no resumption across connections */
    pthread_mutex_t shares_mu;
    pthread_mutex_t share_mu[CURL_LOCK_DATA_LAST]; /* the shares' locks, one per data kind */
    atomic_bool shutting_down;
    atomic_size_t buffered; /* answer bytes held by transfers in flight: added on the
                               transfer thread (on_data), given back on the loop thread */
};

struct xfer {
    pb_client *c;
    CURL *h;
    struct curl_slist *hdrs;
    char *url;
    uint8_t *body;
    size_t body_len;
    pb_buf sink;
    size_t max;
    bool too_big, over_budget;
    char errbuf[CURL_ERROR_SIZE];
    char refused[96]; /* the private address refused, for the message */
    char id[PB_SERVER_ID_MAX];
    char host[PB_SERVER_ID_MAX]; /* a name to resolve, "" for an address */
    char addr[INET6_ADDRSTRLEN]; /* what it resolved to */
    uint16_t port;
    struct curl_slist *connect_to;     /* CURLOPT_CONNECT_TO: host:port:addr:port */
    char first_addr[INET6_ADDRSTRLEN]; /* the first address tried: no lap around the list */
    int tries;                         /* addresses tried */
    long connects;                     /* new connections the transfer opened (debug line) */
    bool for_client, has_client_addr;  /* its name lookups: on a client's behalf (resolve.h) */
    uint8_t client_addr[16];
    char *path;
    int64_t t0;
    pb_client_done_fn done;
    void *ctx;
    /* refused before sending */
    pb_err early_err;
    char *early_msg;
};

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *ud)
{
    (void)h;
    (void)access;
    pb_client *c = ud;
    if ((unsigned)data < CURL_LOCK_DATA_LAST) pthread_mutex_lock(&c->share_mu[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *ud)
{
    (void)h;
    pb_client *c = ud;
    if ((unsigned)data < CURL_LOCK_DATA_LAST) pthread_mutex_unlock(&c->share_mu[data]);
}

/* TLS session caches (see the file comment): 1,024 of up to 8 sessions each, so that up
 * to a few thousand peers keep theirs. A cache costs about 2 KiB once made; a session a
 * few KiB while kept. */
#define TLS_SHARES 1024

static void share_init(pb_client *c)
{
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_init(&c->share_mu[i], NULL);
    pthread_mutex_init(&c->shares_mu, NULL);
    if (!c->plain_http) c->shares = pb_xcalloc(TLS_SHARES, sizeof *c->shares);
}

/* The TLS session cache of peer `id` (made now if it is the first of its slot); NULL, and
 * no resumption across connections, with plain HTTP or when libcurl refuses a share (no
 * TLS support). */
static CURLSH *share_for(pb_client *c, const char *id)
{
    if (!c->shares) return NULL;
    CURLSH **slot = &c->shares[pb_hash_str(id) % TLS_SHARES];
    pthread_mutex_lock(&c->shares_mu);
    if (!*slot && !c->shares_off) {
        /* (the fault point stands in for a libcurl without TLS session sharing) */
        CURLSH *sh = pb_fault("hrpc.no-tls-share") ? NULL : curl_share_init();
        if (!sh || curl_share_setopt(sh, CURLSHOPT_LOCKFUNC, share_lock) != CURLSHE_OK ||
            curl_share_setopt(sh, CURLSHOPT_UNLOCKFUNC, share_unlock) != CURLSHE_OK ||
            curl_share_setopt(sh, CURLSHOPT_USERDATA, c) != CURLSHE_OK ||
            curl_share_setopt(sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) != CURLSHE_OK) {
            if (sh) curl_share_cleanup(sh);
            c->shares_off = true;
            PB_WARN(NULL, "libcurl keeps no TLS sessions: every connection a full handshake");
        } else {
            *slot = sh;
        }
    }
    CURLSH *sh = *slot;
    pthread_mutex_unlock(&c->shares_mu);
    return sh;
}

static void share_free(pb_client *c)
{
    /* Every transfer has ended (the loop stopped, or the client's own loop is freed): no
     * easy handle uses a share any more. */
    for (size_t i = 0; c->shares && i < TLS_SHARES; i++)
        if (c->shares[i] && curl_share_cleanup(c->shares[i]) != CURLSHE_OK)
            PB_ERROR(NULL, "a TLS session cache is still in use: not freed");
    free(c->shares);
    c->shares = NULL;
    pthread_mutex_destroy(&c->shares_mu);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_destroy(&c->share_mu[i]);
}

pb_err pb_client_new(const pb_client_opts *opts, pb_client **out)
{
    pb_client_opts o = {0};
    if (opts) o = *opts;
    if (o.ca_file && access(o.ca_file, R_OK) != 0) {
        PB_ERROR(NULL, "CA file %s cannot be read", o.ca_file);
        return PB_ERR_CONFIG;
    }
    pb_client *c = pb_xcalloc(1, sizeof *c);
    c->plain_http = o.plain_http;
    c->allow_private = o.allow_private;
    if (o.ca_file) {
        c->ca_file = pb_xstrdup(o.ca_file);
    } else if (!o.plain_http) { /* libcurl's default bundle, as one file (file comment) */
        const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
        if (v && v->cainfo && access(v->cainfo, R_OK) == 0) c->ca_file = pb_xstrdup(v->cainfo);
    }
    c->proxy = o.proxy && *o.proxy ? pb_xstrdup(o.proxy) : NULL;
    c->connect_timeout_ms =
        o.connect_timeout_ms > 0 ? o.connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
    c->timeout_ms = o.timeout_ms > 0 ? o.timeout_ms : DEFAULT_TIMEOUT_MS;
    c->max_response = o.max_response > 0 ? o.max_response : DEFAULT_MAX_RESPONSE;
    c->response_budget = o.response_budget > 0 ? o.response_budget : DEFAULT_RESPONSE_BUDGET;
    if (c->response_budget < c->max_response) c->response_budget = c->max_response;
    share_init(c);
    c->loop = o.loop;
    if (!c->loop) {
        pb_ioloop_opts lo = {.max_connections = o.max_connections};
        pb_err err = pb_ioloop_new(&lo, &c->loop);
        if (err == PB_OK) err = pb_ioloop_start(c->loop);
        if (err != PB_OK) {
            pb_ioloop_free(c->loop);
            share_free(c);
            free(c->ca_file);
            free(c->proxy);
            free(c);
            return err;
        }
        c->own_loop = true;
    }
    pb_resolver_opts ro = {.servers = o.dns_servers,
                           .timeout_ms = o.dns_timeout_ms,
                           .max_pending = o.dns_lookups,
                           .for_clients = o.dns_for_clients,
                           .per_client = o.dns_per_client,
                           .per_domain = o.dns_per_domain,
                           .metrics = o.metrics};
    pb_err err = pb_resolver_new(c->loop, &ro, &c->resolver);
    if (err != PB_OK) {
        if (c->own_loop) pb_ioloop_free(c->loop);
        share_free(c);
        free(c->ca_file);
        free(c->proxy);
        free(c);
        return err;
    }
    *out = c;
    return PB_OK;
}

void pb_client_free(pb_client *c)
{
    if (!c) return;
    if (c->own_loop) pb_ioloop_stop(c->loop); /* ends the lookups still waiting */
    pb_resolver_free(c->resolver);
    if (c->own_loop) pb_ioloop_free(c->loop);
    share_free(c);
    free(c->ca_file);
    free(c->proxy);
    free(c);
}

void pb_client_shutdown(pb_client *c)
{
    atomic_store(&c->shutting_down, true);
}

void pb_client_set_dns_shares(pb_client *c, unsigned for_clients, unsigned per_client,
                              unsigned per_domain)
{
    pb_resolver_set_shares(c->resolver, for_clients, per_client, per_domain);
}

pb_ioloop *pb_client_loop(pb_client *c)
{
    return c->loop;
}

void pb_client_answer_clear(pb_client_answer *a)
{
    if (!a) return;
    free(a->body);
    free(a->identifier);
    free(a->message);
    memset(a, 0, sizeof *a);
}

/* ---- libcurl callbacks ------------------------------------------------------------------ */

static size_t on_data(char *p, size_t size, size_t nmemb, void *ud)
{
    struct xfer *x = ud;
    size_t n = size * nmemb;
    if (n > x->max - x->sink.len) {
        x->too_big = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (atomic_load(&x->c->buffered) + n > x->c->response_budget) {
        x->over_budget = true;
        return 0;
    }
    pb_buf_append(&x->sink, p, n);
    atomic_fetch_add(&x->c->buffered, n); /* the only adder: a check that held still holds */
    return n;
}

/* Aborts a transfer once the client is shutting down. */
static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    const struct xfer *x = ud;
    return atomic_load(&x->c->shutting_down) ? 1 : 0;
}

static void addr_text(const struct sockaddr *sa, char *out, size_t n)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ip, sizeof ip);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof ip);
    snprintf(out, n, "%s", ip);
}

/* Every address libcurl connects to passes here: the check of PROTOCOL.md 7.3. Through a
 * proxy every connection is to the proxy the operator named: not checked (the proxy
 * decides which addresses it reaches). */
static curl_socket_t on_open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a)
{
    struct xfer *x = ud;
    if (!x->c->allow_private && !x->c->proxy) {
        const char *why = pb_addr_refusal(&a->addr);
        if (why) {
            char ip[INET6_ADDRSTRLEN];
            addr_text(&a->addr, ip, sizeof ip);
            snprintf(x->refused, sizeof x->refused, "%s (%s)", ip, why);
            return CURL_SOCKET_BAD;
        }
    }
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* ---- results ------------------------------------------------------------------------------ */

static pb_err map_curl(CURLcode cc)
{
    switch (cc) {
    case CURLE_OPERATION_TIMEDOUT:
        return PB_ERR_TIMEOUT;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_USE_SSL_FAILED:
#if LIBCURL_VERSION_NUM >= 0x074d00
    case CURLE_SSL_CLIENTCERT:
#endif
        return PB_ERR_TLS;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_BAD_CONTENT_ENCODING:
        return PB_ERR_PROTO;
    default: /* COULDNT_CONNECT, COULDNT_RESOLVE_HOST, SEND/RECV_ERROR, GOT_NOTHING, ... */
        return PB_ERR_NET;
    }
}

/* A non-2xx answer: PB_ERR_PEER when the body is an hrpc.v1.Error with an identifier. */
static pb_err decode_error_answer(const pb_buf *b, pb_client_answer *ans)
{
    char *ident = NULL, *msg = NULL;
    uint8_t *details = NULL;
    size_t details_len = 0;
    const uint8_t *p = b->data ? b->data : (const uint8_t *)"";
    if (pb_wire_error_decode(p, b->len, &ident, &msg, &details, &details_len) != PB_OK) {
        ans->message =
            pb_xasprintf("HTTP %ld answer whose body is not an hrpc.v1.Error", ans->status);
        return PB_ERR_PROTO;
    }
    pb_err rc = PB_ERR_PEER;
    if (!ident || !*ident) {
        ans->message =
            pb_xasprintf("HTTP %ld answer with an hrpc.v1.Error without identifier", ans->status);
        rc = PB_ERR_PROTO;
        goto out;
    }
    ans->identifier = ident;
    ans->message = msg ? msg : pb_xstrdup("");
    ident = msg = NULL;
    uint32_t ra;
    if ((ans->status == 429 || ans->status == 503) && details_len > 0 &&
        pb_wire_retry_info_decode(details, details_len, &ra) == PB_OK) {
        ans->has_retry_after = true;
        ans->retry_after = ra;
    }
out:
    free(ident);
    free(msg);
    free(details);
    return rc;
}

static void xfer_free(struct xfer *x)
{
    if (x->h) curl_easy_cleanup(x->h);
    curl_slist_free_all(x->hdrs);
    curl_slist_free_all(x->connect_to);
    free(x->url);
    free(x->body);
    free(x->path);
    free(x->early_msg);
    pb_buf_free(&x->sink);
    free(x);
}

static void finish(struct xfer *x, pb_err rc, pb_client_answer *ans)
{
    ans->elapsed_ms = pb_ioloop_now_ms() - x->t0;
    PB_DEBUG(x->id[0] ? x->id : NULL, "POST %s: %s, HTTP %ld, %lld ms%s%s%s%s%s", x->path,
             pb_strerror(rc), ans->status, (long long)ans->elapsed_ms,
             x->connects > 0 ? ", new connection" : "", ans->identifier ? " " : "",
             ans->identifier ? ans->identifier : "", ans->message ? ": " : "",
             ans->message ? ans->message : "");
    pb_client_done_fn done = x->done;
    void *ctx = x->ctx;
    xfer_free(x);
    done(ctx, rc, ans);
}

static void on_resolved(void *ctx, pb_err err, const char *addr, const char *why);

/* Looks x's host up, on its client's behalf when it has one. */
static void resolve(struct xfer *x)
{
    if (x->for_client)
        pb_resolver_lookup_for(x->c->resolver, x->host, x->has_client_addr ? x->client_addr : NULL,
                               on_resolved, x);
    else
        pb_resolver_lookup(x->c->resolver, x->host, on_resolved, x);
}

static void on_done(void *ud, CURLcode cc)
{
    struct xfer *x = ud;
    pb_client *c = x->c;
    /* A name's address refused the connection (nothing was sent): the next address, as
     * libcurl would have done had it resolved the name itself. */
    if (x->host[0] && cc == CURLE_COULDNT_CONNECT && !x->refused[0] && x->tries < 4 &&
        !atomic_load(&c->shutting_down)) {
        pb_resolver_failed(c->resolver, x->host, x->addr);
        curl_slist_free_all(x->connect_to);
        x->connect_to = NULL;
        x->errbuf[0] = '\0';
        resolve(x);
        return;
    }
    atomic_fetch_sub(&c->buffered, x->sink.len);
    pb_client_answer ans = {0};
    pb_err rc;
    long status = 0;
    char *ctype = NULL;
    curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(x->h, CURLINFO_CONTENT_TYPE, &ctype);
    curl_easy_getinfo(x->h, CURLINFO_NUM_CONNECTS, &x->connects);
    ans.status = status;
    if (x->too_big || cc == CURLE_FILESIZE_EXCEEDED) {
        ans.message = pb_xasprintf("answer too large (over %zu bytes)", x->max);
        rc = PB_ERR_PROTO;
    } else if (x->over_budget) {
        ans.message = pb_xasprintf("answers being received exceed the memory budget of %zu bytes",
                                   c->response_budget);
        rc = PB_ERR_BUSY;
    } else if (cc == CURLE_ABORTED_BY_CALLBACK) {
        ans.message = pb_xstrdup("call aborted: shutting down");
        rc = PB_ERR_SHUTDOWN;
    } else if (cc != CURLE_OK) {
        if (x->host[0] && cc == CURLE_OPERATION_TIMEDOUT)
            pb_resolver_failed(c->resolver, x->host, x->addr);
        if (x->refused[0] && cc == CURLE_COULDNT_CONNECT)
            ans.message = pb_xasprintf("refused to connect to %s: private peers are not "
                                       "allowed (allow_private_peers)",
                                       x->refused);
        else
            ans.message = pb_xstrdup(x->errbuf[0] ? x->errbuf : curl_easy_strerror(cc));
        rc = map_curl(cc);
    } else if (status < 200 || status > 299) {
        rc = decode_error_answer(&x->sink, &ans);
    } else if (!ctype || strcasecmp(ctype, "application/hrpc") != 0) {
        ans.message = pb_xasprintf("HTTP %ld answer with Content-Type \"%.100s\", not "
                                   "application/hrpc",
                                   status, ctype ? ctype : "");
        rc = PB_ERR_PROTO;
    } else {
        ans.body = pb_buf_steal(&x->sink, &ans.body_len);
        rc = PB_OK;
    }
    finish(x, rc, &ans);
}

static void early_done(void *ud)
{
    struct xfer *x = ud;
    pb_client_answer ans = {0};
    ans.message = x->early_msg;
    x->early_msg = NULL;
    finish(x, x->early_err, &ans);
}

static void fail_early(struct xfer *x, pb_err err, const char *msg)
{
    x->early_err = err;
    x->early_msg = pb_xstrdup(msg);
    pb_ioloop_post(x->c->loop, early_done, x);
}

/* True when s holds a control character (or, with no_space, a space). */
static bool has_ctl(const char *s, bool no_space)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch < 0x20 || ch == 0x7f || (no_space && ch == ' ')) return true;
    }
    return false;
}

static struct curl_slist *slist_add(struct curl_slist *l, const char *s)
{
    struct curl_slist *r = curl_slist_append(l, s);
    if (!r) {
        PB_ERROR(NULL, "curl_slist_append failed: out of memory");
        abort();
    }
    return r;
}

/* The name of x resolved (loop thread): the transfer goes to that address. */
static void on_resolved(void *ctx, pb_err err, const char *addr, const char *why)
{
    struct xfer *x = ctx;
    if (err != PB_OK) {
        pb_client_answer ans = {0};
        ans.message = pb_xstrdup(why ? why : pb_strerror(err));
        finish(x,
               err == PB_ERR_SHUTDOWN ? err
               : err == PB_ERR_BUSY   ? PB_ERR_BUSY
                                      : PB_ERR_NET,
               &ans);
        return;
    }
    if (x->tries > 0 && !strcmp(addr, x->first_addr)) { /* every address tried */
        pb_client_answer ans = {0};
        ans.message = pb_xasprintf("cannot connect to %s: none of its addresses answered "
                                   "(last %s)",
                                   x->host, x->addr);
        finish(x, PB_ERR_NET, &ans);
        return;
    }
    if (x->tries++ == 0) snprintf(x->first_addr, sizeof x->first_addr, "%s", addr);
    snprintf(x->addr, sizeof x->addr, "%s", addr);
    bool v6 = strchr(addr, ':') != NULL;
    char *ct = pb_xasprintf("%s:%u:%s%s%s:%u", x->host, (unsigned)x->port, v6 ? "[" : "", addr,
                            v6 ? "]" : "", (unsigned)x->port);
    x->connect_to = slist_add(NULL, ct);
    free(ct);
    curl_easy_setopt(x->h, CURLOPT_CONNECT_TO, x->connect_to);
    pb_err e = pb_ioloop_add(x->c->loop, x->h, x->id, on_done, x);
    if (e != PB_OK) {
        pb_client_answer ans = {0};
        ans.message = pb_xstrdup("I/O loop stopping");
        finish(x, e, &ans);
    }
}

void pb_client_start(pb_client *c, const pb_client_req *req, pb_client_done_fn done, void *ctx)
{
    struct xfer *x = pb_xcalloc(1, sizeof *x);
    x->c = c;
    x->done = done;
    x->ctx = ctx;
    x->t0 = pb_ioloop_now_ms();
    x->sink = (pb_buf)PB_BUF_INIT;
    x->path = pb_xstrdup(req->path ? req->path : "");
    x->max = req->max_response ? req->max_response : c->max_response;
    x->for_client = req->for_client;
    if (req->client_addr) {
        x->has_client_addr = true;
        memcpy(x->client_addr, req->client_addr, sizeof x->client_addr);
    }
    if (atomic_load(&c->shutting_down)) {
        fail_early(x, PB_ERR_SHUTDOWN, "client shutting down");
        return;
    }
    if (!req->server_id || pb_serverid_normalize(req->server_id, x->id) != PB_OK) {
        x->id[0] = '\0';
        fail_early(x, PB_ERR_INVAL, "invalid server ID");
        return;
    }
    if (!req->path || req->path[0] != '/' || has_ctl(req->path, true)) {
        fail_early(x, PB_ERR_INVAL, "invalid hRPC path");
        return;
    }
    if (req->authorization && has_ctl(req->authorization, false)) {
        fail_early(x, PB_ERR_INVAL, "Authorization value holds a control character");
        return;
    }
    char host[PB_SERVER_ID_MAX];
    unsigned char bin[16];
    if (pb_serverid_split(x->id, host, &x->port) == PB_OK && inet_pton(AF_INET, host, bin) != 1 &&
        inet_pton(AF_INET6, host, bin) != 1)
        snprintf(x->host, sizeof x->host, "%s", host);
    x->url = pb_xasprintf("%s://%s%s", c->plain_http ? "http" : "https", x->id, req->path);
    x->hdrs = slist_add(NULL, "Content-Type: application/hrpc");
    x->hdrs = slist_add(x->hdrs, "Hrpc-Version: 1");
    x->hdrs = slist_add(x->hdrs, "Expect:"); /* no 100-continue round trip */
    if (req->authorization) {
        char *a = pb_xasprintf("Authorization: %s", req->authorization);
        x->hdrs = slist_add(x->hdrs, a);
        free(a);
    }
    if (req->body_len) {
        x->body = pb_xmalloc(req->body_len);
        memcpy(x->body, req->body, req->body_len);
        x->body_len = req->body_len;
    }
    x->h = curl_easy_init();
    if (!x->h) {
        PB_ERROR(NULL, "curl_easy_init failed: out of memory");
        abort();
    }
    CURL *h = x->h;
    CURLcode sc = CURLE_OK;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (sc == CURLE_OK) sc = curl_easy_setopt(h, opt, val);                                    \
    } while (0)
    SET(CURLOPT_ERRORBUFFER, x->errbuf);
    SET(CURLOPT_URL, x->url);
#if LIBCURL_VERSION_NUM >= 0x075500
    SET(CURLOPT_PROTOCOLS_STR, c->plain_http ? "http" : "https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, c->plain_http ? "http" : "https");
#else
    SET(CURLOPT_PROTOCOLS, c->plain_http ? (long)CURLPROTO_HTTP : (long)CURLPROTO_HTTPS);
    SET(CURLOPT_REDIR_PROTOCOLS, c->plain_http ? (long)CURLPROTO_HTTP : (long)CURLPROTO_HTTPS);
#endif
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    if (req->one_shot) SET(CURLOPT_FORBID_REUSE, 1L);
    /* No DNS cache: libcurl 7.88 walks its whole cache to prune it before every name
     * resolution, which with thousands of peers cost half of the loop's time. Pushes keep
     * their connections (no resolution); contacts are rare per peer. */
    SET(CURLOPT_DNS_CACHE_TIMEOUT, 0L);
    SET(CURLOPT_NOSIGNAL, 1L);
    /* A proxy only when the operator names one (peer_proxy), never from the environment
     * (http_proxy, ALL_PROXY): through a proxy the private-address check would see only
     * the proxy's address. */
    SET(CURLOPT_PROXY, c->proxy ? c->proxy : "");
    SET(CURLOPT_POST, 1L);
    SET(CURLOPT_POSTFIELDS, x->body ? (const char *)x->body : "");
    SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->body_len);
    SET(CURLOPT_HTTPHEADER, x->hdrs);
    SET(CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
    SET(CURLOPT_TIMEOUT_MS, req->timeout_ms > 0 ? req->timeout_ms : c->timeout_ms);
    SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)x->max);
    SET(CURLOPT_WRITEFUNCTION, on_data);
    SET(CURLOPT_WRITEDATA, x);
    SET(CURLOPT_NOPROGRESS, 0L);
    SET(CURLOPT_XFERINFOFUNCTION, on_progress);
    SET(CURLOPT_XFERINFODATA, x);
    SET(CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    SET(CURLOPT_OPENSOCKETDATA, x);
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    SET(CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    if (c->ca_file) { /* the bundle alone, its store kept across connections */
        SET(CURLOPT_CAINFO, c->ca_file);
        SET(CURLOPT_CAPATH, NULL);
        SET(CURLOPT_CA_CACHE_TIMEOUT, CA_CACHE_S);
    }
    CURLSH *share = share_for(c, x->id);
    if (share) SET(CURLOPT_SHARE, share);
#undef SET
    if (sc != CURLE_OK) {
        char msg[160];
        snprintf(msg, sizeof msg, "libcurl refused an option: %s", curl_easy_strerror(sc));
        fail_early(x, PB_ERR_NET, msg);
        return;
    }
    if (x->host[0] && !c->proxy) { /* a name: resolved first, added then (on_resolved) */
        resolve(x);
        return;
    }
    pb_err err = pb_ioloop_add(c->loop, h, x->id, on_done, x);
    if (err != PB_OK) fail_early(x, err, "I/O loop stopping");
}

/* ---- blocking calls ------------------------------------------------------------------------ */

struct sync_call {
    pb_client *c;
    pb_client_req req;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    pb_err err;
    pb_client_answer ans;
};

static void sync_done(void *ctx, pb_err err, pb_client_answer *ans)
{
    struct sync_call *s = ctx;
    pthread_mutex_lock(&s->mu);
    s->err = err;
    s->ans = *ans;
    s->done = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void sync_start(void *ctx)
{
    struct sync_call *s = ctx;
    pb_client_start(s->c, &s->req, sync_done, s);
}

pb_err pb_client_call(pb_client *c, const char *server_id, const char *path,
                      const char *authorization, const uint8_t *body, size_t body_len,
                      pb_client_answer *ans)
{
    memset(ans, 0, sizeof *ans);
    if (pb_ioloop_on_loop(c->loop)) {
        ans->message = pb_xstrdup("blocking call on the I/O loop thread");
        return PB_ERR_INTERNAL;
    }
    struct sync_call s = {.c = c,
                          .req = {.server_id = server_id,
                                  .path = path,
                                  .authorization = authorization,
                                  .body = body,
                                  .body_len = body_len}};
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    pb_ioloop_post(c->loop, sync_start, &s);
    pthread_mutex_lock(&s.mu);
    while (!s.done)
        pthread_cond_wait(&s.cv, &s.mu);
    pthread_mutex_unlock(&s.mu);
    pthread_cond_destroy(&s.cv);
    pthread_mutex_destroy(&s.mu);
    *ans = s.ans;
    return s.err;
}

pb_err pb_client_key_from_answer(pb_client_answer *ans, uint8_t key[32])
{
    uint8_t k[32];
    const uint8_t *p = ans->body ? ans->body : (const uint8_t *)"";
    if (pb_wire_key_resp_decode(p, ans->body_len, k) != PB_OK) {
        free(ans->message);
        ans->message = pb_xstrdup("answer is not a KeyResponse with a 32-byte key");
        return PB_ERR_PROTO;
    }
    memcpy(key, k, sizeof k);
    return PB_OK;
}

pb_err pb_client_fetch_key(pb_client *c, const char *server_id, uint8_t key[32],
                           pb_client_answer *ans)
{
    pb_err rc = pb_client_call(c, server_id, PB_CLIENT_KEY_PATH, NULL, NULL, 0, ans);
    if (rc != PB_OK) return rc;
    return pb_client_key_from_answer(ans, key);
}
