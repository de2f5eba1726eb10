/*
 * fuzz_hrpc_error - a peer's failure answer as the hRPC client reads it: the body as an
 * hrpc.v1.Error (pb_wire_error_decode), then its details as an hrpc.v1.RetryInfo
 * (pb_wire_retry_info_decode), the same sequence as hrpc_client.c's
 * decode_error_answer; and the input as a RetryInfo by itself.
 *
 * Invariants checked: refused inputs leave the out-parameters untouched; accepted ones
 * round-trip through the encoders (strings are NUL-free UTF-8, so they re-encode).
 *
 * Untrusted input: the fuzz input, as a non-2xx answer body from a peer.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "wire/wire.h"

static void check_retry(const uint8_t *data, size_t size)
{
    uint32_t ra, ra2 = 0;
    memset(&ra, FUZZ_SENTINEL, sizeof ra);
    if (pb_wire_retry_info_decode(data, size, &ra) != PB_OK) {
        FUZZ_ASSERT(fuzz_untouched(&ra, sizeof ra));
        return;
    }
    pb_buf b = PB_BUF_INIT;
    FUZZ_ASSERT(pb_wire_retry_info_encode(ra, &b) == PB_OK);
    FUZZ_ASSERT(pb_wire_retry_info_decode(b.data, b.len, &ra2) == PB_OK && ra == ra2);
    pb_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_retry(data, size);

    char *ident, *msg;
    uint8_t *details;
    size_t dlen;
    memset(&ident, FUZZ_SENTINEL, sizeof ident);
    memset(&msg, FUZZ_SENTINEL, sizeof msg);
    memset(&details, FUZZ_SENTINEL, sizeof details);
    memset(&dlen, FUZZ_SENTINEL, sizeof dlen);
    if (pb_wire_error_decode(data, size, &ident, &msg, &details, &dlen) != PB_OK) {
        FUZZ_ASSERT(fuzz_untouched(&ident, sizeof ident) && fuzz_untouched(&msg, sizeof msg) &&
                    fuzz_untouched(&details, sizeof details) && fuzz_untouched(&dlen, sizeof dlen));
        return 0;
    }
    FUZZ_ASSERT(ident && msg && (dlen == 0) == (details == NULL));
    if (dlen) check_retry(details, dlen);

    pb_buf b = PB_BUF_INIT;
    char *ident2 = NULL, *msg2 = NULL;
    uint8_t *details2 = NULL;
    size_t dlen2 = 0;
    FUZZ_ASSERT(pb_wire_error_encode(ident, msg, details, dlen, &b) == PB_OK);
    FUZZ_ASSERT(pb_wire_error_decode(b.data, b.len, &ident2, &msg2, &details2, &dlen2) == PB_OK);
    FUZZ_ASSERT(strcmp(ident, ident2) == 0 && strcmp(msg, msg2) == 0 && dlen == dlen2 &&
                (dlen == 0 || memcmp(details, details2, dlen) == 0));
    free(ident);
    free(msg);
    free(details);
    free(ident2);
    free(msg2);
    free(details2);
    pb_buf_free(&b);
    return 0;
}
