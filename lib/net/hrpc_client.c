/*
 * hrpc_client - unary hRPC calls to peers over libcurl (see hrpc_client.h).
 *
 * Design: one libcurl easy handle is cached per peer server ID so that its connection
 * (and TLS session) is reused. The cache is a small array under a mutex, bounded by
 * max_peers with least-recently-used eviction; each entry has an in-use flag, and a call
 * that finds its peer's handle busy (or every entry busy) uses a temporary handle freed
 * after the call. A handle is reset (connections kept) before it goes back to the cache,
 * so no pointer into a finished call survives in it. curl_global_init runs once
 * (pthread_once) from pb_client_new.
 *
 * Untrusted input: the peer's answer. The body is capped at max_response while it is
 * received (CURLOPT_MAXFILESIZE for an announced length, the write callback otherwise);
 * a 2xx counts only with Content-Type exactly application/hrpc (case-insensitive, no
 * parameters); a non-2xx body must decode as hrpc.v1.Error with an identifier. Redirects
 * are never followed and only the configured scheme is allowed.
 */
#include "net/hrpc_client.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "util/buf.h"
#include "util/log.h"
#include "util/mem.h"
#include "util/serverid.h"
#include "wire/wire.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 5000L
#define DEFAULT_TIMEOUT_MS 30000L
#define DEFAULT_MAX_RESPONSE (16u * 1024u * 1024u)
#define DEFAULT_MAX_PEERS 1024u
#define NO_SLOT ((size_t)-1)
#define KEY_PATH "/protocol.auth.v1.AuthService/Key"

struct peer {
    char id[PB_SERVER_ID_MAX];
    CURL *h;
    bool in_use;
    uint64_t used; /* c->tick at last release: LRU order */
};

struct pb_client {
    bool plain_http;
    char *ca_file;
    long connect_timeout_ms;
    long timeout_ms;
    size_t max_response;
    size_t max_peers;

    atomic_bool shutting_down; /* pb_client_shutdown: in-flight calls abort */

    pthread_mutex_t mu; /* guards everything below */
    struct peer *peers;
    size_t npeers, cap;
    uint64_t tick;
};

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static CURLcode g_init_rc = CURLE_FAILED_INIT;

static void global_init(void)
{
    g_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

pb_err pb_client_new(const pb_client_opts *opts, pb_client **out)
{
    pthread_once(&g_once, global_init);
    if (g_init_rc != CURLE_OK) {
        PB_ERROR(NULL, "curl_global_init failed: %s", curl_easy_strerror(g_init_rc));
        return PB_ERR_INTERNAL;
    }
    pb_client_opts o = {0};
    if (opts) o = *opts;
    if (o.ca_file && access(o.ca_file, R_OK) != 0) {
        PB_ERROR(NULL, "CA file %s cannot be read", o.ca_file);
        return PB_ERR_CONFIG;
    }
    pb_client *c = pb_xcalloc(1, sizeof *c);
    c->plain_http = o.plain_http;
    c->ca_file = o.ca_file ? pb_xstrdup(o.ca_file) : NULL;
    c->connect_timeout_ms =
        o.connect_timeout_ms > 0 ? o.connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
    c->timeout_ms = o.timeout_ms > 0 ? o.timeout_ms : DEFAULT_TIMEOUT_MS;
    c->max_response = o.max_response > 0 ? o.max_response : DEFAULT_MAX_RESPONSE;
    c->max_peers = o.max_peers > 0 ? o.max_peers : DEFAULT_MAX_PEERS;
    pthread_mutex_init(&c->mu, NULL);
    *out = c;
    return PB_OK;
}

void pb_client_free(pb_client *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->npeers; i++)
        curl_easy_cleanup(c->peers[i].h);
    free(c->peers);
    pthread_mutex_destroy(&c->mu);
    free(c->ca_file);
    free(c);
}

void pb_client_answer_clear(pb_client_answer *a)
{
    if (!a) return;
    free(a->body);
    free(a->identifier);
    free(a->message);
    memset(a, 0, sizeof *a);
}

/* curl_easy_init fails only when memory is exhausted: that aborts, as pb_xmalloc does. */
static CURL *handle_new(void)
{
    CURL *h = curl_easy_init();
    if (!h) {
        PB_ERROR(NULL, "curl_easy_init failed: out of memory");
        abort();
    }
    return h;
}

/*
 * Returns an easy handle for peer `id`: the cached one (marked in use, *slot its index),
 * or a temporary one (*slot NO_SLOT) when the peer's handle is busy or no entry is free.
 */
static CURL *handle_acquire(pb_client *c, const char *id, size_t *slot)
{
    CURL *h = NULL, *evicted = NULL;
    *slot = NO_SLOT;
    pthread_mutex_lock(&c->mu);
    size_t lru = NO_SLOT;
    for (size_t i = 0; i < c->npeers; i++) {
        struct peer *p = &c->peers[i];
        if (strcmp(p->id, id) == 0) {
            if (!p->in_use) {
                p->in_use = true;
                *slot = i;
                h = p->h;
            }
            goto unlock;
        }
        if (!p->in_use && (lru == NO_SLOT || p->used < c->peers[lru].used)) lru = i;
    }
    size_t i;
    if (c->npeers < c->max_peers) {
        if (c->npeers == c->cap) {
            c->cap = c->cap ? 2 * c->cap : 8;
            if (c->cap > c->max_peers) c->cap = c->max_peers;
            c->peers = pb_xrealloc(c->peers, c->cap * sizeof *c->peers);
        }
        i = c->npeers++;
    } else if (lru != NO_SLOT) {
        i = lru;
        evicted = c->peers[i].h;
    } else {
        goto unlock; /* every entry in use: temporary handle */
    }
    struct peer *p = &c->peers[i];
    snprintf(p->id, sizeof p->id, "%s", id);
    p->h = h = handle_new();
    p->in_use = true;
    *slot = i;
unlock:
    pthread_mutex_unlock(&c->mu);
    if (evicted) curl_easy_cleanup(evicted);
    if (!h) h = handle_new();
    return h;
}

/* h has been reset (no pointers into the call remain); its connections stay open. */
static void handle_release(pb_client *c, CURL *h, size_t slot)
{
    if (slot == NO_SLOT) {
        curl_easy_cleanup(h);
        return;
    }
    pthread_mutex_lock(&c->mu);
    c->peers[slot].in_use = false;
    c->peers[slot].used = ++c->tick;
    pthread_mutex_unlock(&c->mu);
}

struct sink {
    pb_buf buf;
    size_t max;
    bool too_big;
};

static size_t on_data(char *p, size_t size, size_t nmemb, void *ud)
{
    struct sink *s = ud;
    size_t n = size * nmemb;
    if (n > s->max - s->buf.len) {
        s->too_big = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    pb_buf_append(&s->buf, p, n);
    return n;
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

/* True when s holds a control character (or, with no_space, a space). */
static bool has_ctl(const char *s, bool no_space)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch < 0x20 || ch == 0x7f || (no_space && ch == ' ')) return true;
    }
    return false;
}

/* Aborts a transfer once the client is shutting down. */
static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    const pb_client *c = ud;
    return atomic_load(&c->shutting_down) ? 1 : 0;
}

void pb_client_shutdown(pb_client *c)
{
    atomic_store(&c->shutting_down, true);
}

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

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

pb_err pb_client_call(pb_client *c, const char *server_id, const char *path,
                      const char *authorization, const uint8_t *body, size_t body_len,
                      pb_client_answer *ans)
{
    memset(ans, 0, sizeof *ans);
    char id[PB_SERVER_ID_MAX];
    if (!server_id || pb_serverid_normalize(server_id, id) != PB_OK) {
        ans->message = pb_xstrdup("invalid server ID");
        return PB_ERR_INVAL;
    }
    if (!path || path[0] != '/' || has_ctl(path, true)) {
        ans->message = pb_xstrdup("invalid hRPC path");
        return PB_ERR_INVAL;
    }
    if (authorization && has_ctl(authorization, false)) {
        ans->message = pb_xstrdup("Authorization value holds a control character");
        return PB_ERR_INVAL;
    }

    pb_err rc;
    int64_t t0 = now_ms();
    char *url = pb_xasprintf("%s://%s%s", c->plain_http ? "http" : "https", id, path);
    char *auth_hdr = authorization ? pb_xasprintf("Authorization: %s", authorization) : NULL;
    struct curl_slist *hdrs = slist_add(NULL, "Content-Type: application/hrpc");
    hdrs = slist_add(hdrs, "Hrpc-Version: 1");
    hdrs = slist_add(hdrs, "Expect:"); /* no 100-continue round trip */
    if (auth_hdr) hdrs = slist_add(hdrs, auth_hdr);
    struct sink sink = {.buf = PB_BUF_INIT, .max = c->max_response};
    char errbuf[CURL_ERROR_SIZE] = "";
    char *ctype = NULL;

    size_t slot;
    CURL *h = handle_acquire(c, id, &slot);
    CURLcode sc = CURLE_OK;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (sc == CURLE_OK) sc = curl_easy_setopt(h, opt, val);                                    \
    } while (0)
    SET(CURLOPT_ERRORBUFFER, errbuf);
    SET(CURLOPT_URL, url);
#if LIBCURL_VERSION_NUM >= 0x075500
    SET(CURLOPT_PROTOCOLS_STR, c->plain_http ? "http" : "https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, c->plain_http ? "http" : "https");
#else
    SET(CURLOPT_PROTOCOLS, c->plain_http ? (long)CURLPROTO_HTTP : (long)CURLPROTO_HTTPS);
    SET(CURLOPT_REDIR_PROTOCOLS, c->plain_http ? (long)CURLPROTO_HTTP : (long)CURLPROTO_HTTPS);
#endif
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_POST, 1L);
    SET(CURLOPT_POSTFIELDS, body ? (const char *)body : "");
    SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? body_len : 0));
    SET(CURLOPT_HTTPHEADER, hdrs);
    SET(CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
    SET(CURLOPT_TIMEOUT_MS, c->timeout_ms);
    SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)c->max_response);
    SET(CURLOPT_WRITEFUNCTION, on_data);
    SET(CURLOPT_WRITEDATA, &sink);
    SET(CURLOPT_NOPROGRESS, 0L);
    SET(CURLOPT_XFERINFOFUNCTION, on_progress);
    SET(CURLOPT_XFERINFODATA, c);
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    SET(CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    if (c->ca_file) SET(CURLOPT_CAINFO, c->ca_file);
#undef SET

    CURLcode cc = sc != CURLE_OK ? sc : curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    char *ct = NULL;
    if (curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct) ctype = pb_xstrdup(ct);
    curl_easy_reset(h);
    handle_release(c, h, slot);

    ans->status = status;
    if (sc != CURLE_OK) {
        ans->message = pb_xasprintf("libcurl refused an option: %s", curl_easy_strerror(sc));
        rc = PB_ERR_NET;
    } else if (sink.too_big || cc == CURLE_FILESIZE_EXCEEDED) {
        ans->message = pb_xasprintf("answer too large (over %zu bytes)", c->max_response);
        rc = PB_ERR_PROTO;
    } else if (cc == CURLE_ABORTED_BY_CALLBACK) {
        ans->message = pb_xstrdup("call aborted: shutting down");
        rc = PB_ERR_SHUTDOWN;
    } else if (cc != CURLE_OK) {
        ans->message = pb_xstrdup(errbuf[0] ? errbuf : curl_easy_strerror(cc));
        rc = map_curl(cc);
    } else if (status < 200 || status > 299) {
        rc = decode_error_answer(&sink.buf, ans);
    } else if (!ctype || strcasecmp(ctype, "application/hrpc") != 0) {
        ans->message = pb_xasprintf("HTTP %ld answer with Content-Type \"%.100s\", not "
                                    "application/hrpc",
                                    status, ctype ? ctype : "");
        rc = PB_ERR_PROTO;
    } else {
        ans->body = pb_buf_steal(&sink.buf, &ans->body_len);
        rc = PB_OK;
    }

    PB_DEBUG(id, "POST %s: %s, HTTP %ld, %lld ms%s%s%s%s", path, pb_strerror(rc), ans->status,
             (long long)(now_ms() - t0), ans->identifier ? " " : "",
             ans->identifier ? ans->identifier : "", ans->message ? ": " : "",
             ans->message ? ans->message : "");
    pb_buf_free(&sink.buf);
    free(ctype);
    curl_slist_free_all(hdrs);
    free(auth_hdr);
    free(url);
    return rc;
}

pb_err pb_client_fetch_key(pb_client *c, const char *server_id, uint8_t key[32],
                           pb_client_answer *ans)
{
    pb_err rc = pb_client_call(c, server_id, KEY_PATH, NULL, NULL, 0, ans);
    if (rc != PB_OK) return rc;
    uint8_t k[32];
    const uint8_t *p = ans->body ? ans->body : (const uint8_t *)"";
    if (pb_wire_key_resp_decode(p, ans->body_len, k) != PB_OK) {
        ans->message = pb_xstrdup("answer is not a KeyResponse with a 32-byte key");
        PB_DEBUG(server_id, "key fetch: %s", ans->message);
        return PB_ERR_PROTO;
    }
    memcpy(key, k, sizeof k);
    return PB_OK;
}
