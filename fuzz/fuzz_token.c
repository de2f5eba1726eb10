/*
 * fuzz_token - the Authorization header path: pb_auth_header_decode (base64 variants,
 * "Bearer "), pb_wire_token_decode, pb_wire_authdata_decode, and pb_auth_check as a
 * whole with a fake key source.
 *
 * Input: the header value; or, when the first byte is '!', raw Token bytes (the rest
 * after a variant byte) that this harness base64-encodes in the variant the second byte
 * picks, so the fuzzer can mutate the Token and AuthData without fighting base64.
 *
 * The fake key source knows the two vector keys: alpha.example.org:2289 (key A) and
 * beta.example.net:443, whose first answer is a wrong key and whose refresh gives key B
 * (the rotated-key path); everything else is "no key". `now` is fixed near the vector
 * tokens' times so they pass the time check; deny.example:1 is on the deny list.
 *
 * Invariants checked: refused decodes leave out-parameters untouched; decoded tokens and
 * AuthData round-trip through the encoders; header_decode accepts the standard base64
 * of what it decoded and gives the same bytes; a verdict from BAD_TIME on carries a
 * normal server ID; PB_AUTH_OK only for a known key whose signature verifies, within
 * the window, and not denied.
 *
 * Untrusted input: the fuzz input, as a peer's Authorization header.
 */
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/auth.h"
#include "fuzz_util.h"
#include "util/mem.h"
#include "util/serverid.h"
#include "wire/wire.h"

#define NOW 1764150010u
#define ID_A "alpha.example.org:2289"
#define ID_B "beta.example.net:443"
#define ID_DENIED "deny.example:1"

static uint8_t key_a[32], key_b[32], key_wrong[32];

static void hex32(const char *hex, uint8_t out[32])
{
    size_t n = 0;
    if (sodium_hex2bin(out, 32, hex, 64, NULL, &n, NULL) != 0 || n != 32) abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (sodium_init() < 0) abort();
    fuzz_quiet_log();
    hex32("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", key_a);
    hex32("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", key_b);
    memset(key_wrong, 0x42, sizeof key_wrong);
    return 0;
}

static pb_err fake_keys(void *ctx, const char *id, bool refresh, uint8_t key[32], bool *fresh)
{
    (void)ctx;
    *fresh = false;
    if (strcmp(id, ID_A) == 0) {
        if (refresh) return PB_ERR_BUSY;
        memcpy(key, key_a, 32);
        return PB_OK;
    }
    if (strcmp(id, ID_B) == 0) {
        memcpy(key, refresh ? key_b : key_wrong, 32);
        return PB_OK;
    }
    return PB_ERR_NOT_FOUND;
}

/* The header value for this input (caller frees). */
static char *header_of(const uint8_t *data, size_t size)
{
    static const int variants[] = {
        sodium_base64_VARIANT_ORIGINAL,
        sodium_base64_VARIANT_ORIGINAL_NO_PADDING,
        sodium_base64_VARIANT_URLSAFE,
        sodium_base64_VARIANT_URLSAFE_NO_PADDING,
    };
    if (size < 2 || data[0] != '!') return fuzz_cstr(data, size);
    int v = variants[data[1] % 4];
    bool bearer = data[1] & 4;
    size_t cap = sodium_base64_ENCODED_LEN(size - 2, v);
    char *b64 = pb_xmalloc(cap);
    sodium_bin2base64(b64, cap, data + 2, size - 2, v);
    char *h = pb_xasprintf("%s%s", bearer ? "Bearer " : "", b64);
    free(b64);
    return h;
}

static void check_authdata(const uint8_t *p, size_t n)
{
    char *id;
    uint64_t t, t2 = 0;
    memset(&id, FUZZ_SENTINEL, sizeof id);
    memset(&t, FUZZ_SENTINEL, sizeof t);
    if (pb_wire_authdata_decode(p, n, &id, &t, NULL) != PB_OK) {
        FUZZ_ASSERT(fuzz_untouched(&id, sizeof id) && fuzz_untouched(&t, sizeof t));
        return;
    }
    pb_buf b = PB_BUF_INIT;
    char *id2 = NULL;
    FUZZ_ASSERT(pb_wire_authdata_encode(id, t, NULL, &b) == PB_OK);
    FUZZ_ASSERT(pb_wire_authdata_decode(b.data, b.len, &id2, &t2, NULL) == PB_OK);
    FUZZ_ASSERT(strcmp(id, id2) == 0 && t == t2);
    free(id);
    free(id2);
    pb_buf_free(&b);
}

static void check_token(const uint8_t *raw, size_t len)
{
    pb_token tok;
    memset(&tok, FUZZ_SENTINEL, sizeof tok);
    if (pb_wire_token_decode(raw, len, &tok) != PB_OK) {
        FUZZ_ASSERT(fuzz_untouched(&tok, sizeof tok));
        return;
    }
    pb_buf b = PB_BUF_INIT;
    pb_token t2 = {0};
    FUZZ_ASSERT(pb_wire_token_encode(tok.sig, tok.sig_len, tok.data, tok.data_len, &b) == PB_OK);
    FUZZ_ASSERT(pb_wire_token_decode(b.data, b.len, &t2) == PB_OK);
    FUZZ_ASSERT(t2.sig_len == tok.sig_len && t2.data_len == tok.data_len);
    FUZZ_ASSERT(tok.sig_len == 0 || memcmp(tok.sig, t2.sig, tok.sig_len) == 0);
    FUZZ_ASSERT(tok.data_len == 0 || memcmp(tok.data, t2.data, tok.data_len) == 0);
    check_authdata(tok.data, tok.data_len);
    pb_token_clear(&tok);
    pb_token_clear(&t2);
    pb_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *header = header_of(data, size);
    uint8_t *raw;
    size_t len;
    memset(&raw, FUZZ_SENTINEL, sizeof raw);
    memset(&len, FUZZ_SENTINEL, sizeof len);
    bool decoded = pb_auth_header_decode(header, &raw, &len) == PB_OK;
    if (!decoded) {
        FUZZ_ASSERT(fuzz_untouched(&raw, sizeof raw) && fuzz_untouched(&len, sizeof len));
    } else {
        FUZZ_ASSERT(raw && len > 0);
        size_t cap = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
        char *again = pb_xmalloc(cap);
        sodium_bin2base64(again, cap, raw, len, sodium_base64_VARIANT_ORIGINAL);
        uint8_t *raw2 = NULL;
        size_t len2 = 0;
        /* A header over the size limit is refused whatever it holds. */
        if (strlen(again) <= PB_AUTH_MAX_HEADER) {
            FUZZ_ASSERT(pb_auth_header_decode(again, &raw2, &len2) == PB_OK);
            FUZZ_ASSERT(len2 == len && memcmp(raw, raw2, len) == 0);
        }
        free(raw2);
        free(again);
        check_token(raw, len);
    }

    static const char *const deny[] = {ID_DENIED};
    pb_auth_policy pol = {.window_s = 60, .deny = deny, .ndeny = 1};
    pb_auth_result res;
    pb_auth_check(header, NOW, &pol, fake_keys, NULL, &res);
    FUZZ_ASSERT(pb_auth_verdict_identifier(res.verdict) && pb_auth_verdict_message(res.verdict));
    int st = pb_auth_verdict_status(res.verdict);
    FUZZ_ASSERT(st == 200 || st == 401 || st == 403 || st == 503);
    if (res.verdict >= PB_AUTH_BAD_TIME) FUZZ_ASSERT(pb_serverid_is_normal(res.server_id));
    if (res.verdict == PB_AUTH_OK) {
        FUZZ_ASSERT(decoded);
        bool a = strcmp(res.server_id, ID_A) == 0, b = strcmp(res.server_id, ID_B) == 0;
        FUZZ_ASSERT(a || b);
        FUZZ_ASSERT(pb_auth_token_verify(raw, len, a ? key_a : key_b));
        FUZZ_ASSERT(res.time + 60 >= NOW && res.time <= NOW + 60);
    }
    if (decoded) free(raw);
    free(header);
    return 0;
}
