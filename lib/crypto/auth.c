/*
 * auth - Harmony token authentication (PROTOCOL.md section 3): making Authorization
 * header values and checking them.
 *
 * Design: pb_auth_check runs the protocol's checks in its order and stops at the first
 * failure, recording one verdict; the verdict table maps each to an HTTP status and an
 * hRPC identifier. Keys come from the caller's pb_auth_key_fn: a signature that fails
 * with a key that was not fetched just now gets exactly one refresh (the key source
 * rate-limits those). Protobuf goes through wire.c, base64 through libsodium, Ed25519
 * through keys.c.
 *
 * Untrusted input: the Authorization header value. Its length is checked against
 * PB_AUTH_MAX_HEADER before anything is decoded; base64 must decode completely (no
 * trailing garbage) in one of the four accepted variants; the Token and AuthData inside
 * are decoded by wire.c, and the server_id is validated by serverid.c.
 */
#include "crypto/auth.h"

#include <sodium.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/buf.h"
#include "util/hash.h"
#include "util/mem.h"
#include "wire/wire.h"

int pb_auth_verdict_status(pb_auth_verdict v)
{
    switch (v) {
    case PB_AUTH_OK:
        return 200;
    case PB_AUTH_NOT_ALLOWED:
        return 403;
    case PB_AUTH_KEY_UNAVAILABLE:
        return 503;
    case PB_AUTH_BAD_AUTH:
    case PB_AUTH_BAD_TOKEN:
    case PB_AUTH_BAD_SIG_LEN:
    case PB_AUTH_BAD_DATA:
    case PB_AUTH_BAD_AUDIENCE:
    case PB_AUTH_BAD_TIME:
    case PB_AUTH_BAD_SIGNATURE:
        return 401;
    }
    return 401;
}

const char *pb_auth_verdict_identifier(pb_auth_verdict v)
{
    switch (v) {
    case PB_AUTH_OK:
        return "";
    case PB_AUTH_BAD_AUTH:
        return "h.bad-auth";
    case PB_AUTH_BAD_TOKEN:
        return "h.bad-token";
    case PB_AUTH_BAD_SIG_LEN:
    case PB_AUTH_BAD_SIGNATURE:
        return "h.bad-token-signature";
    case PB_AUTH_BAD_DATA:
        return "h.bad-token-data";
    case PB_AUTH_BAD_AUDIENCE:
        return "h.bad-token-audience";
    case PB_AUTH_BAD_TIME:
        return "h.bad-time";
    case PB_AUTH_NOT_ALLOWED:
        return "h.host-not-allowed";
    case PB_AUTH_KEY_UNAVAILABLE:
        return "hrpc.unavailable";
    }
    return "h.bad-auth";
}

const char *pb_auth_verdict_message(pb_auth_verdict v)
{
    switch (v) {
    case PB_AUTH_OK:
        return "ok";
    case PB_AUTH_BAD_AUTH:
        return "missing or malformed Authorization header (base64 Token expected)";
    case PB_AUTH_BAD_TOKEN:
        return "the token does not decode";
    case PB_AUTH_BAD_SIG_LEN:
        return "the token signature is not 64 bytes";
    case PB_AUTH_BAD_DATA:
        return "the token data does not decode or names an invalid server ID";
    case PB_AUTH_BAD_AUDIENCE:
        return "the token is bound to another server (audience)";
    case PB_AUTH_BAD_TIME:
        return "the token time is outside the accepted window";
    case PB_AUTH_NOT_ALLOWED:
        return "this server does not federate with the sender";
    case PB_AUTH_KEY_UNAVAILABLE:
        return "the sender's public key cannot be obtained now";
    case PB_AUTH_BAD_SIGNATURE:
        return "the token signature does not verify";
    }
    return "authentication failed";
}

pb_err pb_auth_token_make(const pb_keys *k, const char *server_id, const char *audience,
                          uint64_t now, pb_buf *out)
{
    if (!k || !server_id) return PB_ERR_INVAL;
    pb_buf data = PB_BUF_INIT;
    uint8_t sig[PB_SIG_LEN];
    pb_err err = pb_wire_authdata_encode(server_id, now, audience, &data);
    if (err != PB_OK) goto out;
    pb_keys_sign(k, data.data, data.len, sig);
    err = pb_wire_token_encode(sig, sizeof sig, data.data, data.len, out);
out:
    pb_buf_free(&data);
    return err;
}

char *pb_auth_header_make(const pb_keys *k, const char *server_id, const char *audience,
                          uint64_t now)
{
    pb_buf token = PB_BUF_INIT;
    char *out = NULL;
    if (pb_auth_token_make(k, server_id, audience, now, &token) != PB_OK) goto out;
    size_t cap = sodium_base64_ENCODED_LEN(token.len, sodium_base64_VARIANT_ORIGINAL);
    out = pb_xmalloc(cap);
    sodium_bin2base64(out, cap, token.data, token.len, sodium_base64_VARIANT_ORIGINAL);
out:
    pb_buf_free(&token);
    return out;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

pb_err pb_auth_header_decode(const char *header, uint8_t **out, size_t *len)
{
    static const int variants[] = {
        sodium_base64_VARIANT_ORIGINAL,
        sodium_base64_VARIANT_ORIGINAL_NO_PADDING,
        sodium_base64_VARIANT_URLSAFE,
        sodium_base64_VARIANT_URLSAFE_NO_PADDING,
    };
    if (!header || !out || !len) return PB_ERR_INVAL;
    size_t n = strnlen(header, PB_AUTH_MAX_HEADER + 1);
    if (n > PB_AUTH_MAX_HEADER) return PB_ERR_TOO_BIG;

    const char *p = header, *end = header + n;
    while (p < end && is_ows(*p))
        p++;
    while (end > p && is_ows(end[-1]))
        end--;
    if (end - p > 6 && strncasecmp(p, "bearer", 6) == 0 && is_ows(p[6])) {
        p += 6;
        while (p < end && is_ows(*p))
            p++;
    }
    size_t b64len = (size_t)(end - p);
    if (b64len == 0) return PB_ERR_INVAL;

    uint8_t bin[PB_AUTH_MAX_HEADER / 4 * 3 + 3];
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        size_t binlen = 0;
        const char *stop = NULL;
        if (sodium_base642bin(bin, sizeof bin, p, b64len, NULL, &binlen, &stop, variants[i]) == 0 &&
            stop == end) {
            if (binlen == 0) return PB_ERR_INVAL;
            *out = pb_xmalloc(binlen);
            memcpy(*out, bin, binlen);
            *len = binlen;
            return PB_OK;
        }
    }
    return PB_ERR_INVAL;
}

/* True when the normalised `id` equals one of the list's entries (normalised too, so an
 * entry written in another case still matches; an invalid entry matches nothing). */
static bool list_has(const char *const *list, size_t n, const char *id)
{
    char norm[PB_SERVER_ID_MAX];
    for (size_t i = 0; i < n; i++) {
        if (list[i] && pb_serverid_normalize(list[i], norm) == PB_OK && strcmp(norm, id) == 0)
            return true;
    }
    return false;
}

/* ---- verified-token cache ---------------------------------------------------------------- */

#define CACHE_TOKEN_MAX 512

struct cache_slot {
    char server_id[PB_SERVER_ID_MAX];
    uint8_t token[CACHE_TOKEN_MAX];
    size_t token_len;
    uint8_t key[PB_PUBKEY_LEN];
};

struct pb_auth_cache {
    pthread_mutex_t mu;
    struct cache_slot slots[PB_AUTH_CACHE_SLOTS];
};

pb_auth_cache *pb_auth_cache_new(void)
{
    pb_auth_cache *c = pb_xcalloc(1, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

void pb_auth_cache_free(pb_auth_cache *c)
{
    if (!c) return;
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static size_t slot_of(const char *server_id)
{
    return (size_t)(pb_hash_str(server_id) % PB_AUTH_CACHE_SLOTS);
}

static bool cache_hit(pb_auth_cache *c, const char *server_id, const uint8_t *tok, size_t len,
                      const uint8_t key[PB_PUBKEY_LEN])
{
    if (len > CACHE_TOKEN_MAX) return false;
    pthread_mutex_lock(&c->mu);
    const struct cache_slot *s = &c->slots[slot_of(server_id)];
    bool hit = strcmp(s->server_id, server_id) == 0 && s->token_len == len &&
               memcmp(s->token, tok, len) == 0 && memcmp(s->key, key, PB_PUBKEY_LEN) == 0;
    pthread_mutex_unlock(&c->mu);
    return hit;
}

static void cache_put(pb_auth_cache *c, const char *server_id, const uint8_t *tok, size_t len,
                      const uint8_t key[PB_PUBKEY_LEN])
{
    if (len > CACHE_TOKEN_MAX) return;
    pthread_mutex_lock(&c->mu);
    struct cache_slot *s = &c->slots[slot_of(server_id)];
    snprintf(s->server_id, sizeof s->server_id, "%s", server_id);
    memcpy(s->token, tok, len);
    s->token_len = len;
    memcpy(s->key, key, PB_PUBKEY_LEN);
    pthread_mutex_unlock(&c->mu);
}

/* ---- signer-side header cache --------------------------------------------------------------- */

/* A chained hash table of the headers signed in the current second, keyed by (server_id,
 * audience); it is emptied when the second changes (forward, or back by more than one: a
 * clock stepped back), so it holds at most the peers talked to in one second (and never
 * more than SIGNER_MAX: past that, a header is signed and not kept). A sender talking to N
 * peers in one second signs N tokens. (A table of 1,024 single slots made a third of a
 * thousand peers evict each other and sign a token for nearly every Push.) */
#define SIGNER_BUCKETS 4096
#define SIGNER_MAX 65536

struct signer_entry {
    struct signer_entry *next;
    char *server_id, *audience, *header;
};

struct pb_auth_signer {
    const pb_keys *keys;
    pthread_mutex_t mu;
    uint64_t sec;        /* the second the entries were signed for */
    size_t n;            /* entries */
    uint64_t signatures; /* made since _new */
    struct signer_entry *buckets[SIGNER_BUCKETS];
};

pb_auth_signer *pb_auth_signer_new(const pb_keys *k)
{
    pb_auth_signer *s = pb_xcalloc(1, sizeof *s);
    s->keys = k;
    pthread_mutex_init(&s->mu, NULL);
    return s;
}

static void signer_clear(pb_auth_signer *s)
{
    for (unsigned i = 0; i < SIGNER_BUCKETS && s->n > 0; i++)
        while (s->buckets[i]) {
            struct signer_entry *e = s->buckets[i];
            s->buckets[i] = e->next;
            free(e->server_id);
            free(e->audience);
            free(e->header);
            free(e);
            s->n--;
        }
}

void pb_auth_signer_free(pb_auth_signer *s)
{
    if (!s) return;
    signer_clear(s);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* The entry for (server_id, aud) signed in s->sec, or NULL. Under s->mu. */
static struct signer_entry *signer_find(pb_auth_signer *s, size_t b, const char *server_id,
                                        const char *aud)
{
    for (struct signer_entry *e = s->buckets[b]; e; e = e->next)
        if (strcmp(e->server_id, server_id) == 0 && strcmp(e->audience, aud) == 0) return e;
    return NULL;
}

char *pb_auth_header_cached(pb_auth_signer *s, const char *server_id, const char *audience,
                            uint64_t now)
{
    const char *aud = audience ? audience : "";
    uint64_t hv = pb_hash_str(server_id) * 1099511628211ull ^ pb_hash_str(aud);
    size_t b = (size_t)(hv % SIGNER_BUCKETS);
    char *out = NULL;
    pthread_mutex_lock(&s->mu);
    if (s->sec == now) {
        struct signer_entry *e = signer_find(s, b, server_id, aud);
        if (e) out = pb_xstrdup(e->header);
    }
    pthread_mutex_unlock(&s->mu);
    if (out) return out;
    char *h = pb_auth_header_make(s->keys, server_id, audience, now);
    if (!h) return NULL;
    pthread_mutex_lock(&s->mu);
    s->signatures++;
    /* A new second: the old ones go. A caller that read the clock just before the second
     * changed keeps its own; a clock stepped back further starts a new second too. */
    if (now > s->sec || now + 1 < s->sec) {
        signer_clear(s);
        s->sec = now;
    }
    if (now == s->sec && s->n < SIGNER_MAX && !signer_find(s, b, server_id, aud)) {
        struct signer_entry *e = pb_xcalloc(1, sizeof *e);
        e->server_id = pb_xstrdup(server_id);
        e->audience = pb_xstrdup(aud);
        e->header = pb_xstrdup(h);
        e->next = s->buckets[b];
        s->buckets[b] = e;
        s->n++;
    }
    pthread_mutex_unlock(&s->mu);
    return h;
}

uint64_t pb_auth_signer_signatures(pb_auth_signer *s)
{
    pthread_mutex_lock(&s->mu);
    uint64_t n = s->signatures;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* ---- the checks ------------------------------------------------------------------------------ */

void pb_auth_claims_clear(pb_auth_claims *c)
{
    if (!c) return;
    free(c->raw);
    pb_token_clear(&c->tok);
    memset(c, 0, sizeof *c);
}

static uint64_t window_of(const pb_auth_policy *pol)
{
    return (pol && pol->window_s > 0) ? (uint64_t)pol->window_s
                                      : (uint64_t)PB_AUTH_DEFAULT_WINDOW_S;
}

static bool within_window(uint64_t now, uint64_t t, const pb_auth_policy *pol)
{
    uint64_t skew = now >= t ? now - t : t - now; /* no overflow either way */
    return skew <= window_of(pol);
}

/* Decodes the AuthData of tok into c (server_id, audience normalised). BAD_DATA when it
 * does not decode or names an invalid server ID; BAD_AUDIENCE for an audience that is
 * not one of ours as `peer` may name it (NULL: the token's sender), an invalid one
 * included. */
static pb_auth_verdict decode_claims(const pb_token *tok, const pb_auth_policy *pol,
                                     const char *peer, pb_auth_claims *c)
{
    char *claimed = NULL, *aud = NULL;
    uint64_t t = 0;
    pb_auth_verdict v = PB_AUTH_BAD_DATA;
    if (pb_wire_authdata_decode(tok->data, tok->data_len, &claimed, &t, &aud) != PB_OK) goto out;
    if (pb_serverid_normalize(claimed, c->server_id) != PB_OK) goto out;
    c->time = t;
    v = PB_AUTH_BAD_AUDIENCE;
    if (aud) {
        if (pb_serverid_normalize(aud, c->audience) != PB_OK) goto out;
        if (!pol || !pol->is_self ||
            !pol->is_self(pol->self_ctx, peer ? peer : c->server_id, c->audience))
            goto out;
        c->bound = true;
    }
    v = PB_AUTH_OK;
out:
    free(claimed);
    free(aud);
    return v;
}

pb_auth_verdict pb_auth_precheck(const char *header, uint64_t now, const pb_auth_policy *pol,
                                 pb_auth_claims *c)
{
    memset(c, 0, sizeof *c);
    if (!header || pb_auth_header_decode(header, &c->raw, &c->rawlen) != PB_OK)
        return PB_AUTH_BAD_AUTH;
    if (pb_wire_token_decode(c->raw, c->rawlen, &c->tok) != PB_OK) return PB_AUTH_BAD_TOKEN;
    if (c->tok.sig_len != PB_SIG_LEN) return PB_AUTH_BAD_SIG_LEN;
    pb_auth_verdict v = decode_claims(&c->tok, pol, NULL, c);
    if (v != PB_AUTH_OK) return v;
    if (pol && pol->lock) pthread_rwlock_rdlock(pol->lock); /* a reload may swap the lists */
    bool in_time = within_window(now, c->time, pol);
    bool listed = pol && (list_has(pol->deny, pol->ndeny, c->server_id) ||
                          (pol->nallow > 0 && !list_has(pol->allow, pol->nallow, c->server_id)));
    if (pol && pol->lock) pthread_rwlock_unlock(pol->lock);
    if (!in_time) return PB_AUTH_BAD_TIME;
    if (listed) return PB_AUTH_NOT_ALLOWED;
    return PB_AUTH_OK;
}

bool pb_auth_claims_verify(const pb_auth_policy *pol, const pb_auth_claims *c,
                           const uint8_t key[PB_PUBKEY_LEN])
{
    if (!c->raw || c->tok.sig_len != PB_SIG_LEN) return false;
    if (pol && pol->cache && cache_hit(pol->cache, c->server_id, c->raw, c->rawlen, key))
        return true;
    if (!pb_keys_verify(key, c->tok.data, c->tok.data_len, c->tok.sig)) return false;
    if (pol && pol->cache) cache_put(pol->cache, c->server_id, c->raw, c->rawlen, key);
    return true;
}

void pb_auth_check(const char *header, uint64_t now, const pb_auth_policy *pol,
                   pb_auth_key_fn key_fn, void *key_ctx, pb_auth_result *res)
{
    pb_auth_claims c;
    uint8_t key[PB_PUBKEY_LEN];
    bool fresh = false;
    memset(res, 0, sizeof *res);
    res->verdict = pb_auth_precheck(header, now, pol, &c);
    snprintf(res->server_id, sizeof res->server_id, "%s", c.server_id);
    res->time = c.time;
    res->bound = c.bound;
    if (res->verdict != PB_AUTH_OK) goto out;
    res->verdict = PB_AUTH_KEY_UNAVAILABLE;
    if (!key_fn || key_fn(key_ctx, c.server_id, false, key, &fresh) != PB_OK) goto out;
    res->verdict = PB_AUTH_BAD_SIGNATURE;
    if (!pb_auth_claims_verify(pol, &c, key)) {
        /* The peer may have rotated its key: fetch it once more, unless we just did. */
        bool refreshed = false;
        if (fresh || key_fn(key_ctx, c.server_id, true, key, &refreshed) != PB_OK) goto out;
        if (!pb_auth_claims_verify(pol, &c, key)) goto out;
    }
    res->verdict = PB_AUTH_OK;
out:
    pb_auth_claims_clear(&c);
}

bool pb_auth_proof_check(const uint8_t *token, size_t len, const char *old_id, const char *new_id,
                         const uint8_t key[PB_PUBKEY_LEN], uint64_t now, const pb_auth_policy *pol)
{
    pb_auth_claims c = {0};
    bool ok = false;
    if (!token || !old_id || !new_id || pb_wire_token_decode(token, len, &c.tok) != PB_OK) goto out;
    if (c.tok.sig_len != PB_SIG_LEN) goto out;
    if (decode_claims(&c.tok, pol, old_id, &c) != PB_AUTH_OK || !c.bound) goto out;
    if (pol && pol->lock) pthread_rwlock_rdlock(pol->lock);
    bool in_time = within_window(now, c.time, pol);
    if (pol && pol->lock) pthread_rwlock_unlock(pol->lock);
    if (strcmp(c.server_id, new_id) != 0 || !in_time) goto out;
    ok = pb_keys_verify(key, c.tok.data, c.tok.data_len, c.tok.sig);
out:
    pb_auth_claims_clear(&c);
    return ok;
}

bool pb_auth_token_verify(const uint8_t *token, size_t len, const uint8_t key[PB_PUBKEY_LEN])
{
    pb_token tok = {0};
    if (!token || !key || pb_wire_token_decode(token, len, &tok) != PB_OK) return false;
    bool ok = tok.sig_len == PB_SIG_LEN && pb_keys_verify(key, tok.data, tok.data_len, tok.sig);
    pb_token_clear(&tok);
    return ok;
}
