/*
 * auth_test - token authentication (PROTOCOL.md section 3): header values made from the
 * vectors' seeds match the vectors byte for byte; accepted header variants; each invalid
 * vector's verdict; every check's failure and the order in which they run; time window
 * edges and overflow; allow/deny lists; the key refresh rules with a counting fake key
 * source; the verdict table.
 */
#include "harness.h"

#include <sodium.h>
#include <stdlib.h>

#include "crypto/auth.h"
#include "util/buf.h"
#include "util/mem.h"
#include "wire/wire.h"

#define ALPHA "alpha.example.org:2289"
#define BETA "beta.example.net:443"

static json_t *vec;
static uint8_t pub_a[PB_PUBKEY_LEN], pub_b[PB_PUBKEY_LEN];
static pb_keys *key_a, *key_b;
static uint64_t t0; /* tokens[0].time */

/* ---- helpers -------------------------------------------------------------------------- */

static const char *tok_str(int i, const char *field)
{
    const char *s = json_string_value(
        json_object_get(json_array_get(json_object_get(vec, "tokens"), (size_t)i), field));
    if (!s) {
        fprintf(stderr, "vectors: missing tokens[%d].%s\n", i, field);
        exit(2);
    }
    return s;
}

static const char *vec_str(const char *a, const char *b, const char *c)
{
    json_t *v = json_object_get(json_object_get(vec, a), b);
    if (c) v = json_object_get(v, c);
    const char *s = json_string_value(v);
    if (!s) {
        fprintf(stderr, "vectors: missing %s/%s/%s\n", a, b, c ? c : "");
        exit(2);
    }
    return s;
}

static pb_keys *keys_from_hex(const char *hex)
{
    size_t n;
    uint8_t *seed = pbt_hex(hex, &n);
    pb_keys *k = NULL;
    if (n != PB_SEED_LEN || pb_keys_from_seed(seed, &k) != PB_OK) {
        fprintf(stderr, "cannot make key from %s\n", hex);
        exit(2);
    }
    free(seed);
    return k;
}

static char *b64(const uint8_t *p, size_t n, int variant)
{
    size_t cap = sodium_base64_ENCODED_LEN(n, variant);
    char *s = pb_xmalloc(cap);
    sodium_bin2base64(s, cap, p, n, variant);
    return s;
}

/* Base64 (standard, padded) of the hex bytes of an `invalid` vector. */
static char *invalid_header(const char *name)
{
    size_t n;
    uint8_t *raw = pbt_hex(vec_str("invalid", name, NULL), &n);
    char *s = b64(raw, n, sodium_base64_VARIANT_ORIGINAL);
    free(raw);
    return s;
}

/* A header for a Token with arbitrary sig and data bytes. */
static char *raw_token_header(const uint8_t *sig, size_t sig_len, const uint8_t *data,
                              size_t data_len)
{
    pb_buf b = PB_BUF_INIT;
    if (pb_wire_token_encode(sig, sig_len, data, data_len, &b) != PB_OK) abort();
    char *s = b64(b.data, b.len, sodium_base64_VARIANT_ORIGINAL);
    pb_buf_free(&b);
    return s;
}

/* A counting fake key source. stored == NULL: the plain lookup fails with get_err. */
struct fake {
    const uint8_t *stored;
    bool stored_fresh;
    pb_err get_err;
    const uint8_t *refreshed; /* NULL: refresh fails with refresh_err */
    pb_err refresh_err;
    int gets, refreshes;
    char last_id[PB_SERVER_ID_MAX];
};

static pb_err fake_key(void *ctx, const char *server_id, bool refresh, uint8_t key[32], bool *fresh)
{
    struct fake *f = ctx;
    snprintf(f->last_id, sizeof f->last_id, "%s", server_id);
    if (refresh) {
        f->refreshes++;
        if (!f->refreshed) return f->refresh_err ? f->refresh_err : PB_ERR_NET;
        memcpy(key, f->refreshed, 32);
        *fresh = true;
        return PB_OK;
    }
    f->gets++;
    if (!f->stored) return f->get_err ? f->get_err : PB_ERR_NET;
    memcpy(key, f->stored, 32);
    *fresh = f->stored_fresh;
    return PB_OK;
}

/* A key source that knows each server's real key (never refreshes to anything else). */
static pb_err directory_key(void *ctx, const char *server_id, bool refresh, uint8_t key[32],
                            bool *fresh)
{
    int *calls = ctx;
    (*calls)++;
    if (strcmp(server_id, ALPHA) == 0)
        memcpy(key, pub_a, 32);
    else if (strcmp(server_id, BETA) == 0)
        memcpy(key, pub_b, 32);
    else
        return PB_ERR_NOT_FOUND;
    *fresh = false;
    return PB_OK;
}

/* Runs pb_auth_check with a fake that holds A's key. */
static pb_auth_verdict check_a(const char *header, uint64_t now, const pb_auth_policy *pol,
                               pb_auth_result *res)
{
    struct fake f = {.stored = pub_a, .refreshed = pub_a};
    pb_auth_result local;
    if (!res) res = &local;
    pb_auth_check(header, now, pol, fake_key, &f, res);
    return res->verdict;
}

#define CHECK_VERDICT(got, want)                                                                   \
    do {                                                                                           \
        pb_auth_verdict g__ = (got), w__ = (want);                                                 \
        CHECKF(g__ == w__, "verdict %d (%s), want %d (%s)", (int)g__,                              \
               pb_auth_verdict_identifier(g__), (int)w__, pb_auth_verdict_identifier(w__));        \
    } while (0)

/* ---- tests ---------------------------------------------------------------------------- */

static void test_vectors(void)
{
    for (int i = 0; i < 2; i++) {
        const char *signer = tok_str(i, "signer");
        pb_keys *k = keys_from_hex(vec_str("keys", signer, "seed_hex"));
        json_t *tj =
            json_object_get(json_array_get(json_object_get(vec, "tokens"), (size_t)i), "time");
        uint64_t t = (uint64_t)json_integer_value(tj);
        char *h = pb_auth_header_make(k, tok_str(i, "server_id"), NULL, t);
        CHECK_STR(h, tok_str(i, "authorization_base64"));

        /* decodes to the vector's token bytes */
        uint8_t *raw = NULL;
        size_t rawlen = 0;
        size_t wantlen;
        uint8_t *want = pbt_hex(tok_str(i, "token_hex"), &wantlen);
        CHECK_OK(pb_auth_header_decode(h, &raw, &rawlen));
        CHECK_MEM(raw, rawlen, want, wantlen);
        CHECK(pb_auth_token_verify(raw, rawlen, pb_keys_public(k)));
        CHECK(!pb_auth_token_verify(raw, rawlen, strcmp(signer, "A") == 0 ? pub_b : pub_a));
        free(raw);
        free(want);

        struct fake f = {.stored = pb_keys_public(k)};
        pb_auth_result res;
        pb_auth_check(h, t, NULL, fake_key, &f, &res);
        CHECK_VERDICT(res.verdict, PB_AUTH_OK);
        CHECK_STR(res.server_id, tok_str(i, "server_id"));
        CHECK_STR(f.last_id, tok_str(i, "server_id"));
        CHECK(res.time == t);
        CHECK_INT(f.gets, 1);
        CHECK_INT(f.refreshes, 0);
        free(h);
        pb_keys_free(k);
    }
}

static void test_variants(void)
{
    const char *std = tok_str(0, "authorization_base64"); /* has '+', '/' and one '=' */
    CHECK(strchr(std, '+') && strchr(std, '/') && strchr(std, '='));
    size_t n = strlen(std);

    char *url = pb_xstrdup(std);
    for (char *p = url; *p; p++) {
        if (*p == '+') *p = '-';
        if (*p == '/') *p = '_';
    }
    char *nopad = pb_xstrndup(std, n - 1);
    char *url_nopad = pb_xstrndup(url, n - 1);
    char *bearer = pb_xasprintf("Bearer %s", std);
    char *bearer_url_nopad = pb_xasprintf("Bearer %s", url_nopad);
    char *bearer_lower = pb_xasprintf("bearer   %s", nopad);
    char *bearer_upper = pb_xasprintf("BEARER %s", url);
    const char *ok[] = {std,          url,         nopad, url_nopad, bearer, bearer_url_nopad,
                        bearer_lower, bearer_upper};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        pb_auth_result res;
        pb_auth_verdict v = check_a(ok[i], t0, NULL, &res);
        CHECKF(v == PB_AUTH_OK, "variant %zu: %s", i, pb_auth_verdict_identifier(v));
        CHECK_STR(res.server_id, ALPHA);
    }

    /* refused forms: all BAD_AUTH */
    char *mixed = pb_xstrdup(std); /* '-' with '+' in the same value */
    *strchr(mixed, '/') = '_';
    char *trailing = pb_xasprintf("%s=", std);
    char *garbage = pb_xasprintf("%sx!", std);
    char *inner_space = pb_xstrdup(std);
    inner_space[10] = ' ';
    char *no_space = pb_xasprintf("Bearer%s", std);
    char *bad_bits = pb_xstrdup(std); /* last char before '=' with non-zero spare bits */
    bad_bits[n - 2] = bad_bits[n - 2] == 'Y' ? 'Z' : 'Y';
    const char *bad[] = {
        "",       "   ",   "Bearer",    "Bearer ", "!!!!", "Zm9v!", mixed,
        trailing, garbage, inner_space, no_space,  "=",    "A",     "Basic Zm9vOmJhcg=="};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECKF(check_a(bad[i], t0, NULL, NULL) == PB_AUTH_BAD_AUTH, "bad[%zu] \"%s\"", i, bad[i]);
    CHECK_VERDICT(check_a(NULL, t0, NULL, NULL), PB_AUTH_BAD_AUTH);

    /* the spare bits of the final character must be zero: not a second spelling */
    uint8_t *raw = NULL;
    size_t rawlen;
    CHECK(pb_auth_header_decode(bad_bits, &raw, &rawlen) != PB_OK);
    CHECK(raw == NULL);

    free(url);
    free(nopad);
    free(url_nopad);
    free(bearer);
    free(bearer_url_nopad);
    free(bearer_lower);
    free(bearer_upper);
    free(mixed);
    free(trailing);
    free(garbage);
    free(inner_space);
    free(no_space);
    free(bad_bits);
}

static void test_size_limit(void)
{
    uint8_t *raw = NULL;
    size_t rawlen = 0;

    /* PB_AUTH_MAX_HEADER characters: decoded (then refused as a Token: zero bytes) */
    char *at = pb_xmalloc(PB_AUTH_MAX_HEADER + 2);
    memset(at, 'A', PB_AUTH_MAX_HEADER);
    at[PB_AUTH_MAX_HEADER] = '\0';
    CHECK_OK(pb_auth_header_decode(at, &raw, &rawlen));
    CHECK_INT(rawlen, PB_AUTH_MAX_HEADER / 4 * 3);
    free(raw);
    raw = NULL;
    CHECK_VERDICT(check_a(at, t0, NULL, NULL), PB_AUTH_BAD_TOKEN);

    /* one more: refused before decoding */
    at[PB_AUTH_MAX_HEADER] = 'A';
    at[PB_AUTH_MAX_HEADER + 1] = '\0';
    CHECK_ERR(pb_auth_header_decode(at, &raw, &rawlen), PB_ERR_TOO_BIG);
    CHECK(raw == NULL);
    CHECK_VERDICT(check_a(at, t0, NULL, NULL), PB_AUTH_BAD_AUTH);
    free(at);

    /* a valid token behind a long run of spaces still counts the spaces */
    char *padded =
        pb_xasprintf("Bearer %*s%s", PB_AUTH_MAX_HEADER, "", tok_str(0, "authorization_base64"));
    CHECK_VERDICT(check_a(padded, t0, NULL, NULL), PB_AUTH_BAD_AUTH);
    free(padded);

    CHECK_ERR(pb_auth_header_decode(NULL, &raw, &rawlen), PB_ERR_INVAL);
}

static void test_invalid_vectors(void)
{
    static const struct {
        const char *name;
        pb_auth_verdict want;
        int want_refreshes;
    } cases[] = {
        {"token_bad_signature_hex", PB_AUTH_BAD_SIGNATURE, 1},
        {"token_sig_63_bytes_hex", PB_AUTH_BAD_SIG_LEN, 0},
        {"token_signed_by_other_key_hex", PB_AUTH_BAD_SIGNATURE, 1},
        {"token_truncated_hex", PB_AUTH_BAD_TOKEN, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *h = invalid_header(cases[i].name);
        struct fake f = {.stored = pub_a, .refreshed = pub_a};
        pb_auth_result res;
        pb_auth_check(h, t0, NULL, fake_key, &f, &res);
        CHECKF(res.verdict == cases[i].want, "%s: got %s", cases[i].name,
               pb_auth_verdict_identifier(res.verdict));
        CHECKF(f.refreshes == cases[i].want_refreshes, "%s: %d refreshes", cases[i].name,
               f.refreshes);

        size_t n;
        uint8_t *raw = pbt_hex(vec_str("invalid", cases[i].name, NULL), &n);
        CHECKF(!pb_auth_token_verify(raw, n, pub_a), "%s verified", cases[i].name);
        free(raw);
        free(h);
    }
}

static void test_bad_data(void)
{
    const char *bad_ids[] = {"not an id", "a:0", "alpha.example.org", "", "[::1]", "a_b:1"};
    for (size_t i = 0; i < sizeof bad_ids / sizeof bad_ids[0]; i++) {
        char *h = pb_auth_header_make(key_a, bad_ids[i], NULL, t0);
        CHECK(h != NULL);
        pb_auth_result res;
        CHECKF(check_a(h, t0, NULL, &res) == PB_AUTH_BAD_DATA, "id \"%s\"", bad_ids[i]);
        CHECK_STR(res.server_id, "");
        free(h);
    }

    /* data bytes that are not an AuthData, with a 64-byte sig */
    uint8_t sig[PB_SIG_LEN] = {0};
    const uint8_t junk[] = {0xff, 0xff, 0xff};
    char *h = raw_token_header(sig, sizeof sig, junk, sizeof junk);
    CHECK_VERDICT(check_a(h, t0, NULL, NULL), PB_AUTH_BAD_DATA);
    free(h);

    /* a name in upper case is accepted and reported (and looked up) normalised */
    h = pb_auth_header_make(key_a, "ALPHA.Example.ORG:2289", NULL, t0);
    struct fake f = {.stored = pub_a};
    pb_auth_result res;
    pb_auth_check(h, t0, NULL, fake_key, &f, &res);
    CHECK_VERDICT(res.verdict, PB_AUTH_OK);
    CHECK_STR(res.server_id, ALPHA);
    CHECK_STR(f.last_id, ALPHA);
    free(h);

    /* a Token whose sig is empty or 65 bytes: BAD_SIG_LEN */
    pb_buf data = PB_BUF_INIT;
    CHECK_OK(pb_wire_authdata_encode(ALPHA, t0, NULL, &data));
    uint8_t sig65[65] = {0};
    h = raw_token_header(sig65, 65, data.data, data.len);
    CHECK_VERDICT(check_a(h, t0, NULL, NULL), PB_AUTH_BAD_SIG_LEN);
    free(h);
    h = raw_token_header(sig65, 0, data.data, data.len);
    CHECK_VERDICT(check_a(h, t0, NULL, NULL), PB_AUTH_BAD_SIG_LEN);
    free(h);
    pb_buf_free(&data);
}

static void test_time(void)
{
    char *h = pb_auth_header_make(key_a, ALPHA, NULL, t0);
    pb_auth_result res;

    CHECK_VERDICT(check_a(h, t0 + 60, NULL, NULL), PB_AUTH_OK);
    CHECK_VERDICT(check_a(h, t0 - 60, NULL, NULL), PB_AUTH_OK);
    CHECK_VERDICT(check_a(h, t0 + 61, NULL, &res), PB_AUTH_BAD_TIME);
    CHECK_STR(res.server_id, ALPHA); /* set from BAD_TIME on */
    CHECK(res.time == t0);
    CHECK_VERDICT(check_a(h, t0 - 61, NULL, NULL), PB_AUTH_BAD_TIME);

    pb_auth_policy pol = {.window_s = 300};
    CHECK_VERDICT(check_a(h, t0 + 300, &pol, NULL), PB_AUTH_OK);
    CHECK_VERDICT(check_a(h, t0 - 300, &pol, NULL), PB_AUTH_OK);
    CHECK_VERDICT(check_a(h, t0 + 301, &pol, NULL), PB_AUTH_BAD_TIME);
    CHECK_VERDICT(check_a(h, t0 - 301, &pol, NULL), PB_AUTH_BAD_TIME);
    pol.window_s = 5;
    CHECK_VERDICT(check_a(h, t0 + 5, &pol, NULL), PB_AUTH_OK);
    CHECK_VERDICT(check_a(h, t0 + 6, &pol, NULL), PB_AUTH_BAD_TIME);
    pol.window_s = 0; /* default */
    CHECK_VERDICT(check_a(h, t0 + 60, &pol, NULL), PB_AUTH_OK);
    CHECK_VERDICT(check_a(h, t0 + 61, &pol, NULL), PB_AUTH_BAD_TIME);
    pol.window_s = -5; /* default */
    CHECK_VERDICT(check_a(h, t0 - 60, &pol, NULL), PB_AUTH_OK);
    CHECK_VERDICT(check_a(h, t0 - 61, &pol, NULL), PB_AUTH_BAD_TIME);
    CHECK_VERDICT(check_a(h, 0, NULL, NULL), PB_AUTH_BAD_TIME);
    CHECK_VERDICT(check_a(h, UINT64_MAX, NULL, NULL), PB_AUTH_BAD_TIME);
    free(h);

    /* token times at the ends of uint64: no wrap-around into the window */
    h = pb_auth_header_make(key_a, ALPHA, NULL, UINT64_MAX);
    CHECK_VERDICT(check_a(h, t0, NULL, NULL), PB_AUTH_BAD_TIME);
    CHECK_VERDICT(check_a(h, 10, NULL, NULL), PB_AUTH_BAD_TIME);
    CHECK_VERDICT(check_a(h, 0, NULL, NULL), PB_AUTH_BAD_TIME);
    CHECK_VERDICT(check_a(h, UINT64_MAX, NULL, NULL), PB_AUTH_OK);
    CHECK_VERDICT(check_a(h, UINT64_MAX - 60, NULL, NULL), PB_AUTH_OK);
    CHECK_VERDICT(check_a(h, UINT64_MAX - 61, NULL, NULL), PB_AUTH_BAD_TIME);
    pol.window_s = INT64_MAX;
    CHECK_VERDICT(check_a(h, 0, &pol, NULL), PB_AUTH_BAD_TIME); /* UINT64_MAX > INT64_MAX */
    free(h);
    h = pb_auth_header_make(key_a, ALPHA, NULL, 0);
    CHECK_VERDICT(check_a(h, t0, NULL, NULL), PB_AUTH_BAD_TIME);
    CHECK_VERDICT(check_a(h, UINT64_MAX, NULL, NULL), PB_AUTH_BAD_TIME);
    CHECK_VERDICT(check_a(h, 60, NULL, NULL), PB_AUTH_OK);
    CHECK_VERDICT(check_a(h, 61, NULL, NULL), PB_AUTH_BAD_TIME);
    CHECK_VERDICT(check_a(h, t0, &pol, NULL), PB_AUTH_OK); /* huge window */
    free(h);
}

static void test_lists(void)
{
    char *h = pb_auth_header_make(key_a, ALPHA, NULL, t0);
    const char *only_beta[] = {BETA};
    const char *only_alpha[] = {"ALPHA.example.org:2289"}; /* matched normalised */
    const char *both[] = {"bad id", BETA, ALPHA};
    pb_auth_policy pol = {0};

    CHECK_VERDICT(check_a(h, t0, &pol, NULL), PB_AUTH_OK);
    pol.deny = only_alpha;
    pol.ndeny = 1;
    CHECK_VERDICT(check_a(h, t0, &pol, NULL), PB_AUTH_NOT_ALLOWED);
    pol.deny = only_beta;
    CHECK_VERDICT(check_a(h, t0, &pol, NULL), PB_AUTH_OK);
    pol.deny = NULL;
    pol.ndeny = 0;
    pol.allow = only_beta;
    pol.nallow = 1;
    CHECK_VERDICT(check_a(h, t0, &pol, NULL), PB_AUTH_NOT_ALLOWED);
    pol.allow = only_alpha;
    CHECK_VERDICT(check_a(h, t0, &pol, NULL), PB_AUTH_OK);
    pol.allow = both;
    pol.nallow = 3;
    CHECK_VERDICT(check_a(h, t0, &pol, NULL), PB_AUTH_OK);
    pol.deny = only_alpha; /* deny wins over allow */
    pol.ndeny = 1;
    CHECK_VERDICT(check_a(h, t0, &pol, NULL), PB_AUTH_NOT_ALLOWED);
    pol.allow = NULL; /* no allow list, no deny list: everybody */
    pol.nallow = 0;
    pol.deny = NULL;
    pol.ndeny = 0;
    CHECK_VERDICT(check_a(h, t0, &pol, NULL), PB_AUTH_OK);
    free(h);
}

static void test_key_unavailable(void)
{
    char *h = pb_auth_header_make(key_a, ALPHA, NULL, t0);
    struct fake f = {.stored = NULL, .get_err = PB_ERR_TIMEOUT, .refreshed = pub_a};
    pb_auth_result res;
    pb_auth_check(h, t0, NULL, fake_key, &f, &res);
    CHECK_VERDICT(res.verdict, PB_AUTH_KEY_UNAVAILABLE);
    CHECK_INT(f.gets, 1);
    CHECK_INT(f.refreshes, 0);
    CHECK_STR(res.server_id, ALPHA);

    struct fake busy = {.stored = NULL, .get_err = PB_ERR_BUSY};
    pb_auth_check(h, t0, NULL, fake_key, &busy, &res);
    CHECK_VERDICT(res.verdict, PB_AUTH_KEY_UNAVAILABLE);

    pb_auth_check(h, t0, NULL, NULL, NULL, &res);
    CHECK_VERDICT(res.verdict, PB_AUTH_KEY_UNAVAILABLE);
    free(h);
}

static void test_order(void)
{
    const char *deny_alpha[] = {ALPHA};
    pb_auth_policy deny = {.deny = deny_alpha, .ndeny = 1};
    pb_auth_result res;

    /* bad time from a denied host: BAD_TIME (time is checked first) */
    char *h = pb_auth_header_make(key_a, ALPHA, NULL, t0);
    struct fake f = {.stored = pub_a};
    pb_auth_check(h, t0 + 1000, &deny, fake_key, &f, &res);
    CHECK_VERDICT(res.verdict, PB_AUTH_BAD_TIME);
    CHECK_INT(f.gets, 0);

    /* a denied host with an unavailable key: NOT_ALLOWED, and no key lookup is made */
    struct fake nokey = {.stored = NULL};
    pb_auth_check(h, t0, &deny, fake_key, &nokey, &res);
    CHECK_VERDICT(res.verdict, PB_AUTH_NOT_ALLOWED);
    CHECK_INT(nokey.gets, 0);
    free(h);

    /* an invalid server_id and a bad time: BAD_DATA */
    h = pb_auth_header_make(key_a, "bad_id:1", NULL, 1);
    CHECK_VERDICT(check_a(h, t0, &deny, NULL), PB_AUTH_BAD_DATA);
    free(h);

    /* a 63-byte sig over junk data: BAD_SIG_LEN before BAD_DATA */
    uint8_t sig[63] = {0};
    const uint8_t junk[] = {0xff};
    h = raw_token_header(sig, sizeof sig, junk, sizeof junk);
    CHECK_VERDICT(check_a(h, t0, NULL, NULL), PB_AUTH_BAD_SIG_LEN);
    free(h);

    /* a bad signature with no key to be had: KEY_UNAVAILABLE before BAD_SIGNATURE */
    h = invalid_header("token_bad_signature_hex");
    struct fake nokey2 = {.stored = NULL};
    pb_auth_check(h, t0, NULL, fake_key, &nokey2, &res);
    CHECK_VERDICT(res.verdict, PB_AUTH_KEY_UNAVAILABLE);
    /* and a bad signature with a bad time: BAD_TIME */
    CHECK_VERDICT(check_a(h, t0 + 61, NULL, NULL), PB_AUTH_BAD_TIME);
    free(h);
}

static void test_refresh(void)
{
    char *h = pb_auth_header_make(key_a, ALPHA, NULL, t0);
    pb_auth_result res;

    /* right key stored: no refresh */
    struct fake ok = {.stored = pub_a, .refreshed = pub_b};
    pb_auth_check(h, t0, NULL, fake_key, &ok, &res);
    CHECK_VERDICT(res.verdict, PB_AUTH_OK);
    CHECK_INT(ok.gets, 1);
    CHECK_INT(ok.refreshes, 0);

    /* stale stored key, the peer rotated to the right one: OK after exactly one refresh */
    struct fake rotated = {.stored = pub_b, .refreshed = pub_a};
    pb_auth_check(h, t0, NULL, fake_key, &rotated, &res);
    CHECK_VERDICT(res.verdict, PB_AUTH_OK);
    CHECK_INT(rotated.gets, 1);
    CHECK_INT(rotated.refreshes, 1);
    CHECK_STR(rotated.last_id, ALPHA);

    /* the key was fetched just now and fails: no second fetch */
    struct fake fresh = {.stored = pub_b, .stored_fresh = true, .refreshed = pub_a};
    pb_auth_check(h, t0, NULL, fake_key, &fresh, &res);
    CHECK_VERDICT(res.verdict, PB_AUTH_BAD_SIGNATURE);
    CHECK_INT(fresh.refreshes, 0);

    /* refresh rate-limited: BAD_SIGNATURE (not KEY_UNAVAILABLE) */
    struct fake busy = {.stored = pub_b, .refreshed = NULL, .refresh_err = PB_ERR_BUSY};
    pb_auth_check(h, t0, NULL, fake_key, &busy, &res);
    CHECK_VERDICT(res.verdict, PB_AUTH_BAD_SIGNATURE);
    CHECK_INT(busy.refreshes, 1);

    /* refreshed key still wrong: BAD_SIGNATURE after one refresh, not more */
    struct fake still = {.stored = pub_b, .refreshed = pub_b};
    pb_auth_check(h, t0, NULL, fake_key, &still, &res);
    CHECK_VERDICT(res.verdict, PB_AUTH_BAD_SIGNATURE);
    CHECK_INT(still.refreshes, 1);
    CHECK_INT(still.gets, 1);
    free(h);

    /* replay under another server's ID: A signs a token claiming to be B. The check looks
     * up B's key for B's ID, so the valid signature by A does not verify. */
    h = pb_auth_header_make(key_a, BETA, NULL, t0);
    int calls = 0;
    pb_auth_check(h, t0, NULL, directory_key, &calls, &res);
    CHECK_VERDICT(res.verdict, PB_AUTH_BAD_SIGNATURE);
    CHECK_STR(res.server_id, BETA);
    CHECK_INT(calls, 2); /* lookup + one refresh */
    free(h);
    h = pb_auth_header_make(key_b, BETA, NULL, t0);
    calls = 0;
    pb_auth_check(h, t0, NULL, directory_key, &calls, &res);
    CHECK_VERDICT(res.verdict, PB_AUTH_OK);
    CHECK_INT(calls, 1);
    free(h);
}

static void test_verdict_table(void)
{
    static const struct {
        pb_auth_verdict v;
        int status;
        const char *id;
    } t[] = {
        {PB_AUTH_OK, 200, ""},
        {PB_AUTH_BAD_AUTH, 401, "h.bad-auth"},
        {PB_AUTH_BAD_TOKEN, 401, "h.bad-token"},
        {PB_AUTH_BAD_SIG_LEN, 401, "h.bad-token-signature"},
        {PB_AUTH_BAD_DATA, 401, "h.bad-token-data"},
        {PB_AUTH_BAD_AUDIENCE, 401, "h.bad-token-audience"},
        {PB_AUTH_BAD_TIME, 401, "h.bad-time"},
        {PB_AUTH_NOT_ALLOWED, 403, "h.host-not-allowed"},
        {PB_AUTH_KEY_UNAVAILABLE, 503, "hrpc.unavailable"},
        {PB_AUTH_BAD_SIGNATURE, 401, "h.bad-token-signature"},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        CHECK_INT(pb_auth_verdict_status(t[i].v), t[i].status);
        CHECK_STR(pb_auth_verdict_identifier(t[i].v), t[i].id);
        const char *m = pb_auth_verdict_message(t[i].v);
        CHECK(m != NULL && m[0] != '\0');
    }
}

/* The verified-token cache never accepts what verification would refuse, and the signer
 * cache gives one header per identity and second. */
static void test_caches(void)
{
    pb_auth_cache *cache = pb_auth_cache_new();
    pb_auth_policy pol = {.cache = cache};
    pb_auth_result res;
    char *good = pb_auth_header_make(key_a, ALPHA, NULL, t0);

    /* same token twice: verified, then a cache hit */
    struct fake f = {.stored = pub_a};
    pb_auth_check(good, t0, &pol, fake_key, &f, &res);
    CHECK_INT(res.verdict, PB_AUTH_OK);
    pb_auth_check(good, t0, &pol, fake_key, &f, &res);
    CHECK_INT(res.verdict, PB_AUTH_OK);
    CHECK_INT(f.gets, 2); /* the key is looked up every time */

    /* the time window still applies to a cached token */
    pb_auth_check(good, t0 + 3600, &pol, fake_key, &f, &res);
    CHECK_INT(res.verdict, PB_AUTH_BAD_TIME);

    /* the key changed (rotation, rename): the cached entry does not count */
    struct fake g = {.stored = pub_b, .refreshed = pub_b};
    pb_auth_check(good, t0, &pol, fake_key, &g, &res);
    CHECK_INT(res.verdict, PB_AUTH_BAD_SIGNATURE);

    /* a token naming A but signed by B is not the cached token */
    char *forged = pb_auth_header_make(key_b, ALPHA, NULL, t0);
    struct fake h = {.stored = pub_a};
    pb_auth_check(forged, t0, &pol, fake_key, &h, &res);
    CHECK_INT(res.verdict, PB_AUTH_BAD_SIGNATURE);
    free(forged);
    free(good);
    pb_auth_cache_free(cache);
    pb_auth_cache_free(NULL);

    pb_auth_signer *sg = pb_auth_signer_new(key_a);
    char *h1 = pb_auth_header_cached(sg, ALPHA, NULL, t0);
    char *h2 = pb_auth_header_cached(sg, ALPHA, NULL, t0);
    char *h3 = pb_auth_header_cached(sg, ALPHA, NULL, t0 + 1);
    char *h4 = pb_auth_header_cached(sg, BETA, NULL, t0);
    char *direct = pb_auth_header_make(key_a, ALPHA, NULL, t0);
    CHECK_STR(h1, h2);
    CHECK_STR(h1, direct);
    CHECK(strcmp(h1, h3) != 0);
    CHECK(strcmp(h1, h4) != 0);
    free(h1);
    free(h2);
    free(h3);
    free(h4);
    free(direct);
    pb_auth_signer_free(sg);
    pb_auth_signer_free(NULL);
}

/* PROTOCOL.md 7: this server is BETA, and OLD_BETA for ALPHA only (a peer that has not
 * confirmed our rename yet); every other peer confirmed it. */
#define OLD_BETA "old-beta.example.net:443"
#define GAMMA "gamma.example.com:443"
static bool beta_is_self(void *ctx, const char *peer, const char *id)
{
    int *calls = ctx;
    if (calls) (*calls)++;
    return strcmp(id, BETA) == 0 || (strcmp(id, OLD_BETA) == 0 && strcmp(peer, ALPHA) == 0);
}

static void test_audience(void)
{
    int calls = 0;
    pb_auth_policy pol = {.is_self = beta_is_self, .self_ctx = &calls};
    pb_auth_result res;

    /* bound to us (either of our IDs, any case): accepted and marked bound */
    const char *ours[] = {BETA, OLD_BETA, "BETA.Example.NET:443"};
    for (size_t i = 0; i < 3; i++) {
        char *h = pb_auth_header_make(key_a, ALPHA, ours[i], t0);
        CHECK_VERDICT(check_a(h, t0, &pol, &res), PB_AUTH_OK);
        CHECKF(res.bound, "audience %s marks the request bound", ours[i]);
        free(h);
    }
    /* bound to another server, to an invalid ID, or with no self list: refused */
    const char *others[] = {"gamma.example.com:443", ALPHA, "not an id", "beta.example.net:444"};
    for (size_t i = 0; i < 4; i++) {
        char *h = pb_auth_header_make(key_a, ALPHA, others[i], t0);
        CHECK_VERDICT(check_a(h, t0, &pol, &res), PB_AUTH_BAD_AUDIENCE);
        CHECK(!res.bound);
        CHECK_STR(res.server_id, ALPHA); /* the sender is known for the log */
        free(h);
    }
    char *h = pb_auth_header_make(key_a, ALPHA, BETA, t0);
    CHECK_VERDICT(check_a(h, t0, NULL, &res), PB_AUTH_BAD_AUDIENCE);
    free(h);
    /* a former ID counts per peer: GAMMA confirmed our rename, so its tokens bound to
     * OLD_BETA are refused while ALPHA's are accepted (above) */
    h = pb_auth_header_make(key_a, GAMMA, OLD_BETA, t0);
    CHECK_VERDICT(check_a(h, t0, &pol, &res), PB_AUTH_BAD_AUDIENCE);
    CHECK(!res.bound);
    free(h);
    h = pb_auth_header_make(key_a, GAMMA, BETA, t0);
    CHECK_VERDICT(check_a(h, t0, &pol, &res), PB_AUTH_OK);
    CHECK(res.bound);
    free(h);

    /* no audience (a foreign signer): accepted, not bound; the vector tokens are such */
    h = pb_auth_header_make(key_a, ALPHA, NULL, t0);
    CHECK_VERDICT(check_a(h, t0, &pol, &res), PB_AUTH_OK);
    CHECK(!res.bound);
    free(h);
    h = pb_auth_header_make(key_a, ALPHA, "", t0);
    CHECK_VERDICT(check_a(h, t0, &pol, &res), PB_AUTH_OK);
    CHECK(!res.bound);
    free(h);

    /* the audience is checked right after AuthData decodes: before the time window and
     * the lists, and without looking up a key */
    const char *deny[] = {ALPHA};
    pb_auth_policy strict = {.is_self = beta_is_self, .deny = deny, .ndeny = 1};
    h = pb_auth_header_make(key_a, ALPHA, "gamma.example.com:443", t0);
    struct fake f = {.stored = pub_a};
    pb_auth_check(h, t0 + 3600, &strict, fake_key, &f, &res);
    CHECK_VERDICT(res.verdict, PB_AUTH_BAD_AUDIENCE);
    CHECK_INT(f.gets, 0);
    free(h);

    /* the audience is signed: changing it breaks the signature (a re-bound replay) */
    pb_buf data = PB_BUF_INIT, tok = PB_BUF_INIT;
    uint8_t sig[PB_SIG_LEN];
    CHECK_OK(pb_wire_authdata_encode(ALPHA, t0, "gamma.example.com:443", &data));
    pb_keys_sign(key_a, data.data, data.len, sig);
    pb_buf_reset(&data);
    CHECK_OK(pb_wire_authdata_encode(ALPHA, t0, BETA, &data));
    h = raw_token_header(sig, sizeof sig, data.data, data.len);
    CHECK_VERDICT(check_a(h, t0, &pol, &res), PB_AUTH_BAD_SIGNATURE);
    free(h);
    pb_buf_free(&data);
    pb_buf_free(&tok);

    /* the signer caches per (identity, audience, second) */
    pb_auth_signer *sg = pb_auth_signer_new(key_a);
    char *h1 = pb_auth_header_cached(sg, ALPHA, BETA, t0);
    char *h2 = pb_auth_header_cached(sg, ALPHA, "gamma.example.com:443", t0);
    char *h3 = pb_auth_header_cached(sg, ALPHA, BETA, t0);
    char *h4 = pb_auth_header_cached(sg, ALPHA, NULL, t0);
    CHECK(strcmp(h1, h2) != 0 && strcmp(h1, h4) != 0 && strcmp(h2, h4) != 0);
    CHECK_STR(h1, h3);
    CHECK_VERDICT(check_a(h1, t0, &pol, &res), PB_AUTH_OK);
    CHECK(res.bound);
    CHECK_VERDICT(check_a(h2, t0, &pol, &res), PB_AUTH_BAD_AUDIENCE);
    free(h1);
    free(h2);
    free(h3);
    free(h4);
    CHECK(pb_auth_signer_signatures(sg) == 3);
    pb_auth_signer_free(sg);

    /* a thousand peers in one second: one signature each, however their names hash (one
     * way per slot re-signed for a third of them on every request) */
    sg = pb_auth_signer_new(key_a);
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < 1000; i++) {
            char aud[64];
            snprintf(aud, sizeof aud, "peer%d.example.com:2289", i);
            free(pb_auth_header_cached(sg, ALPHA, aud, t0));
        }
    CHECK(pb_auth_signer_signatures(sg) == 1000);
    /* the next second signs again */
    free(pb_auth_header_cached(sg, ALPHA, "peer1.example.com:2289", t0 + 1));
    CHECK(pb_auth_signer_signatures(sg) == 1001);
    /* a caller whose clock read the second before gets its own token, and the entries of
     * the new second stay */
    h1 = pb_auth_header_cached(sg, ALPHA, "peer1.example.com:2289", t0);
    CHECK_VERDICT(check_a(h1, t0, &pol, &res), PB_AUTH_BAD_AUDIENCE);
    free(h1);
    CHECK(pb_auth_signer_signatures(sg) == 1002);
    free(pb_auth_header_cached(sg, ALPHA, "peer1.example.com:2289", t0 + 1));
    CHECK(pb_auth_signer_signatures(sg) == 1002);
    /* the clock stepped back an hour (NTP): the new second's tokens are kept again, not
     * signed for every request until the clock is back where it was */
    for (int i = 0; i < 3; i++)
        free(pb_auth_header_cached(sg, ALPHA, "peer1.example.com:2289", t0 - 3600));
    CHECK(pb_auth_signer_signatures(sg) == 1003);
    pb_auth_signer_free(sg);
}

/* The split check used by the server: precheck, then verify with a key found elsewhere. */
static void test_precheck_verify(void)
{
    pb_auth_policy pol = {.is_self = beta_is_self};
    char *h = pb_auth_header_make(key_a, ALPHA, BETA, t0);
    pb_auth_claims c;
    CHECK_VERDICT(pb_auth_precheck(h, t0, &pol, &c), PB_AUTH_OK);
    CHECK_STR(c.server_id, ALPHA);
    CHECK_STR(c.audience, BETA);
    CHECK(c.bound && c.time == t0);
    CHECK(pb_auth_claims_verify(&pol, &c, pub_a));
    CHECK(!pb_auth_claims_verify(&pol, &c, pub_b));
    pb_auth_claims_clear(&c);
    pb_auth_claims_clear(&c); /* idempotent */
    CHECK_VERDICT(pb_auth_precheck(h, t0 + 3600, &pol, &c), PB_AUTH_BAD_TIME);
    pb_auth_claims_clear(&c);
    CHECK_VERDICT(pb_auth_precheck(NULL, t0, &pol, &c), PB_AUTH_BAD_AUTH);
    CHECK(!pb_auth_claims_verify(&pol, &c, pub_a)); /* nothing to verify */
    pb_auth_claims_clear(&c);
    free(h);
}

/* PROTOCOL.md 7.2: the rename proof is a token naming NEW, bound to us, in the window,
 * signed with the old ID's key. */
/* One IPv6 address is one ID: a deny entry holds whatever way the token writes it. */
static void test_ipv6_deny(void)
{
    const char *deny[] = {"[::1]:2289"};
    pb_auth_policy pol = {.deny = deny, .ndeny = 1};
    const char *forms[] = {"[0::1]:2289", "[0:0:0:0:0:0:0:1]:2289", "[::0001]:2289"};
    for (size_t i = 0; i < 3; i++) {
        char *h = pb_auth_header_make(key_a, forms[i], NULL, t0);
        pb_auth_result res;
        CHECKF(check_a(h, t0, &pol, &res) == PB_AUTH_NOT_ALLOWED, "%s passed a deny of [::1]",
               forms[i]);
        CHECK_STR(res.server_id, "[::1]:2289");
        free(h);
    }
    const char *deny_long[] = {"[0:0:0:0:0:0:0:1]:2289"}; /* the entry in any form too */
    pol.deny = deny_long;
    char *h = pb_auth_header_make(key_a, "[::1]:2289", NULL, t0);
    CHECK_VERDICT(check_a(h, t0, &pol, NULL), PB_AUTH_NOT_ALLOWED);
    free(h);
}

static void test_proof(void)
{
    pb_auth_policy pol = {.is_self = beta_is_self, .window_s = 60};
    const char *NEW = "alpha-new.example.org:2289";
    pb_buf ok = PB_BUF_INIT;
    CHECK_OK(pb_auth_token_make(key_a, NEW, BETA, t0, &ok));
    CHECK(pb_auth_proof_check(ok.data, ok.len, ALPHA, NEW, pub_a, t0, &pol));
    CHECK(pb_auth_proof_check(ok.data, ok.len, ALPHA, NEW, pub_a, t0 + 60, &pol));
    CHECK(!pb_auth_proof_check(ok.data, ok.len, ALPHA, NEW, pub_a, t0 + 61, &pol)); /* stale */
    CHECK(!pb_auth_proof_check(ok.data, ok.len, ALPHA, NEW, pub_b, t0, &pol));      /* other key */
    CHECK(!pb_auth_proof_check(ok.data, ok.len, ALPHA, ALPHA, pub_a, t0, &pol));    /* other ID */
    CHECK(!pb_auth_proof_check(ok.data, ok.len - 1, ALPHA, NEW, pub_a, t0, &pol));  /* truncated */
    CHECK(!pb_auth_proof_check(NULL, 0, ALPHA, NEW, pub_a, t0, &pol));
    pb_auth_policy nobody = {.window_s = 60};
    CHECK(!pb_auth_proof_check(ok.data, ok.len, ALPHA, NEW, pub_a, t0, &nobody));

    pb_buf other = PB_BUF_INIT;
    CHECK_OK(pb_auth_token_make(key_a, NEW, NULL, t0, &other)); /* unbound: refused */
    CHECK(!pb_auth_proof_check(other.data, other.len, ALPHA, NEW, pub_a, t0, &pol));
    pb_buf_reset(&other);
    CHECK_OK(pb_auth_token_make(key_a, NEW, "gamma.example.com:443", t0, &other));
    CHECK(!pb_auth_proof_check(other.data, other.len, ALPHA, NEW, pub_a, t0, &pol));
    pb_buf_reset(&other);
    CHECK_OK(pb_auth_token_make(key_a, "NEW-Upper.example.org:2289", BETA, t0, &other));
    CHECK(pb_auth_proof_check(other.data, other.len, ALPHA, "new-upper.example.org:2289", pub_a, t0,
                              &pol)); /* compared normalised */
    /* bound to our former ID: good for the peer that has not confirmed it only */
    pb_buf_reset(&other);
    CHECK_OK(pb_auth_token_make(key_a, NEW, OLD_BETA, t0, &other));
    CHECK(pb_auth_proof_check(other.data, other.len, ALPHA, NEW, pub_a, t0, &pol));
    CHECK(!pb_auth_proof_check(other.data, other.len, GAMMA, NEW, pub_a, t0, &pol));
    CHECK(!pb_auth_proof_check(other.data, other.len, NULL, NEW, pub_a, t0, &pol));
    CHECK_ERR(pb_auth_token_make(NULL, NEW, BETA, t0, &other), PB_ERR_INVAL);
    pb_buf_free(&ok);
    pb_buf_free(&other);
}

int main(void)
{
    vec = pbt_vectors();
    size_t n;
    uint8_t *p = pbt_hex(vec_str("keys", "A", "public_key_hex"), &n);
    memcpy(pub_a, p, sizeof pub_a);
    free(p);
    p = pbt_hex(vec_str("keys", "B", "public_key_hex"), &n);
    memcpy(pub_b, p, sizeof pub_b);
    free(p);
    key_a = keys_from_hex(vec_str("keys", "A", "seed_hex"));
    key_b = keys_from_hex(vec_str("keys", "B", "seed_hex"));
    t0 = (uint64_t)json_integer_value(
        json_object_get(json_array_get(json_object_get(vec, "tokens"), 0), "time"));
    CHECK(t0 > 0);

    test_vectors();
    test_variants();
    test_size_limit();
    test_invalid_vectors();
    test_bad_data();
    test_time();
    test_lists();
    test_key_unavailable();
    test_order();
    test_refresh();
    test_verdict_table();
    test_caches();
    test_audience();
    test_precheck_verify();
    test_proof();
    test_ipv6_deny();

    pb_keys_free(key_a);
    pb_keys_free(key_b);
    json_decref(vec);
    return pbt_finish();
}
