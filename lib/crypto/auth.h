/*
 * auth - Harmony token authentication (PROTOCOL.md section 3), crypto layer.
 *
 * A token is a serialized protocol.harmonytypes.v1.Token whose `data` is a serialized
 * AuthData{server_id, time, audience} and whose `sig` is the Ed25519 signature of those
 * bytes. It travels in the Authorization header in standard base64 with padding;
 * receivers also accept the URL-safe alphabet, missing padding and a leading "Bearer ".
 * Every token this project signs is bound to its recipient (audience, PROTOCOL.md 7.1);
 * tokens without audience (foreign signers) are accepted but mark the request unbound,
 * and its extension fields are then ignored by the handlers.
 *
 * The check runs in the protocol's order and stops at the first failure; each failure
 * maps to one HTTP status and hRPC identifier (pb_auth_verdict_*). It comes in two steps
 * so that the key, which may have to be fetched from the network, is not this module's
 * business: pb_auth_precheck does everything that needs no key, pb_auth_claims_verify
 * checks the signature against a key the caller found. pb_auth_check chains them with a
 * synchronous key source (tests, tools).
 *
 * Untrusted input: the Authorization header value (size-checked against
 * PB_AUTH_MAX_HEADER before decoding), the token and AuthData inside it.
 */
#ifndef PB_AUTH_H
#define PB_AUTH_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto/keys.h"
#include "util/buf.h"
#include "wire/wire.h"
#include "postbox.h"
#include "util/serverid.h"

#define PB_AUTH_MAX_HEADER 2048
#define PB_AUTH_DEFAULT_WINDOW_S 60

typedef enum pb_auth_verdict {
    PB_AUTH_OK = 0,
    PB_AUTH_BAD_AUTH,        /* 401 h.bad-auth: header missing or not base64 */
    PB_AUTH_BAD_TOKEN,       /* 401 h.bad-token: Token does not decode */
    PB_AUTH_BAD_SIG_LEN,     /* 401 h.bad-token-signature: sig not 64 bytes */
    PB_AUTH_BAD_DATA,        /* 401 h.bad-token-data: AuthData bad or server_id invalid */
    PB_AUTH_BAD_AUDIENCE,    /* 401 h.bad-token-audience: bound to another server */
    PB_AUTH_BAD_TIME,        /* 401 h.bad-time: outside the window */
    PB_AUTH_NOT_ALLOWED,     /* 403 h.host-not-allowed: allow/deny lists */
    PB_AUTH_KEY_UNAVAILABLE, /* 503 hrpc.unavailable + RetryInfo: key cannot be had */
    PB_AUTH_BAD_SIGNATURE,   /* 401 h.bad-token-signature: does not verify */
} pb_auth_verdict;

int pb_auth_verdict_status(pb_auth_verdict v);
const char *pb_auth_verdict_identifier(pb_auth_verdict v);
/* Short human text for the hRPC Error's human_message. */
const char *pb_auth_verdict_message(pb_auth_verdict v);

/*
 * A cache of verified tokens: a sender signs one token per second and reuses it (see
 * pb_auth_header_cached), so the receiver verifies each distinct token once. An entry
 * holds the exact token bytes and the key they verified with; a hit needs both to be equal
 * again (the time window and the lists are still checked every time). Thread-safe,
 * bounded (one entry per sender, PB_AUTH_CACHE_SLOTS slots).
 */
typedef struct pb_auth_cache pb_auth_cache;
#define PB_AUTH_CACHE_SLOTS 1024
pb_auth_cache *pb_auth_cache_new(void);    /* caller frees with pb_auth_cache_free */
void pb_auth_cache_free(pb_auth_cache *c); /* NULL is a no-op */

typedef struct pb_auth_policy {
    int64_t window_s;         /* |now - time| allowed; <= 0 means the default 60 */
    const char *const *allow; /* if nallow > 0, only these normalised IDs are allowed */
    size_t nallow;
    const char *const *deny; /* these normalised IDs are refused */
    size_t ndeny;
    uint32_t key_retry_after_s; /* RetryInfo for PB_AUTH_KEY_UNAVAILABLE (default 30) */
    pb_auth_cache *cache;       /* verified tokens; NULL: verify every time */
    /* True when id (normalised) is one of this server's IDs as `peer` (the token's sender,
     * normalised) may name it: the current one, or a former one that this peer has not yet
     * confirmed learning the rename of, within the grace after it (PROTOCOL.md 7). NULL:
     * every audience is refused. Called from listener threads. */
    bool (*is_self)(void *ctx, const char *peer, const char *id);
    void *self_ctx;
    /* When set, pb_auth_precheck and pb_auth_proof_check hold it for reading while it reads
     * window_s and the lists, so that whoever holds it for writing may replace them (a
     * configuration reload). */
    pthread_rwlock_t *lock;
} pb_auth_policy;

/*
 * Key source. refresh=false: the key held for server_id (stored, or fetched now when
 * unknown; *fresh set true when it was fetched by this call). refresh=true: fetch it
 * again from the peer because a signature failed (the source rate-limits this and
 * answers PB_ERR_BUSY when too soon). Any error other than PB_OK means "no key".
 */
typedef pb_err (*pb_auth_key_fn)(void *ctx, const char *server_id, bool refresh,
                                 uint8_t key[PB_PUBKEY_LEN], bool *fresh);

/* Serializes a token naming server_id at time `now`, bound to audience (NULL: unbound),
 * signed by k, appending to out. PB_ERR_INVAL for a NULL key or a server_id/audience that
 * is not UTF-8. Used for the rename proof (PROTOCOL.md 7.2). */
pb_err pb_auth_token_make(const pb_keys *k, const char *server_id, const char *audience,
                          uint64_t now, pb_buf *out);

/* Makes an Authorization header value (standard base64 with padding) for a token naming
 * server_id at time `now`, bound to audience (NULL: unbound, as a foreign signer makes
 * them), signed by k. Returns a string the caller frees; NULL only when k or server_id is
 * NULL. server_id is sent as given (not validated here). */
char *pb_auth_header_make(const pb_keys *k, const char *server_id, const char *audience,
                          uint64_t now);

/*
 * Signer-side cache of pb_auth_header_make: one header per (server_id, audience, second),
 * reused for every request in that second (so a receiver verifies each distinct token
 * once). Bounded; thread-safe. Returns a string the caller frees.
 */
typedef struct pb_auth_signer pb_auth_signer;
pb_auth_signer *pb_auth_signer_new(const pb_keys *k); /* k borrowed; caller frees */
void pb_auth_signer_free(pb_auth_signer *s);          /* NULL is a no-op */
char *pb_auth_header_cached(pb_auth_signer *s, const char *server_id, const char *audience,
                            uint64_t now);
/* Tokens signed by pb_auth_header_cached since pb_auth_signer_new (cache misses). */
uint64_t pb_auth_signer_signatures(pb_auth_signer *s);

/* Decodes a header value to the serialized Token bytes (variants accepted). On PB_OK,
 * *out (caller frees) holds *len bytes. */
pb_err pb_auth_header_decode(const char *header, uint8_t **out, size_t *len);

/* What the checks that need no key learnt from a token. */
typedef struct pb_auth_claims {
    char server_id[PB_SERVER_ID_MAX]; /* normalised sender, set from BAD_AUDIENCE on */
    char audience[PB_SERVER_ID_MAX];  /* normalised audience, "" when absent */
    bool bound;                       /* audience present (and, once checked, ours) */
    uint64_t time;                    /* AuthData.time, set from BAD_AUDIENCE on */
    uint8_t *raw;                     /* the serialized Token (owned) */
    size_t rawlen;
    pb_token tok; /* owned */
} pb_auth_claims;
void pb_auth_claims_clear(pb_auth_claims *c);

/*
 * Every check of the protocol's order that needs no key: header and base64, Token, sig
 * length, AuthData and server_id, audience, time window, allow/deny lists. Returns
 * PB_AUTH_OK when the caller must now find the sender's key and call
 * pb_auth_claims_verify, or the first failure. *c is filled as far as the checks got
 * (pb_auth_claims_clear it in every case). header may be NULL (missing); `now` is Unix
 * seconds.
 */
pb_auth_verdict pb_auth_precheck(const char *header, uint64_t now, const pb_auth_policy *pol,
                                 pb_auth_claims *c);
/* The last check: does the token's signature verify with key? Consults and fills the
 * policy's verified-token cache. */
bool pb_auth_claims_verify(const pb_auth_policy *pol, const pb_auth_claims *c,
                           const uint8_t key[PB_PUBKEY_LEN]);

typedef struct pb_auth_result {
    pb_auth_verdict verdict;
    char server_id[PB_SERVER_ID_MAX]; /* normalised sender, set from BAD_AUDIENCE on */
    uint64_t time;                    /* AuthData.time, set from BAD_AUDIENCE on */
    bool bound;                       /* the token names this server as its audience */
} pb_auth_result;

/* Runs every check in order with a synchronous key source (tests and tools; the daemon
 * finds keys asynchronously, see hrpc_server.c). header may be NULL (missing). */
void pb_auth_check(const char *header, uint64_t now, const pb_auth_policy *pol,
                   pb_auth_key_fn key_fn, void *key_ctx, pb_auth_result *res);

/* Verifies a token only against a given key (no policy, no time). */
bool pb_auth_token_verify(const uint8_t *token, size_t len, const uint8_t key[PB_PUBKEY_LEN]);

/*
 * The rename proof of PROTOCOL.md 7.2: true when `token` (a serialized Token) has a 64-byte
 * signature that verifies with key, and its AuthData names exactly new_id, is bound to one
 * of this server's IDs as old_id (the peer being renamed) may name it (pol->is_self) and
 * is within the policy's time window of now.
 */
bool pb_auth_proof_check(const uint8_t *token, size_t len, const char *old_id, const char *new_id,
                         const uint8_t key[PB_PUBKEY_LEN], uint64_t now, const pb_auth_policy *pol);

#endif
