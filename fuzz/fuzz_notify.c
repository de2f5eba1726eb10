/*
 * fuzz_notify - the body of a NotifyNewId from a peer: pb_wire_notify_decode, then the
 * server ID validation the handler applies to new_server_id (pb_serverid_normalize).
 *
 * Invariants checked: a refused input leaves new_id untouched; an accepted one is a
 * NUL-free UTF-8 string that round-trips through the encoder; when it is a valid server
 * ID its normal form is normal and idempotent.
 *
 * Untrusted input: the fuzz input, as a NotifyNewId body.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "util/serverid.h"
#include "wire/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *id;
    uint8_t *proof;
    size_t plen;
    memset(&id, FUZZ_SENTINEL, sizeof id);
    memset(&proof, FUZZ_SENTINEL, sizeof proof);
    memset(&plen, FUZZ_SENTINEL, sizeof plen);
    if (pb_wire_notify_decode(data, size, &id, &proof, &plen) != PB_OK) {
        FUZZ_ASSERT(fuzz_untouched(&id, sizeof id) && fuzz_untouched(&proof, sizeof proof) &&
                    fuzz_untouched(&plen, sizeof plen));
        return 0;
    }
    FUZZ_ASSERT(id != NULL && (plen == 0) == (proof == NULL));
    pb_buf b = PB_BUF_INIT;
    char *id2 = NULL;
    uint8_t *proof2 = NULL;
    size_t plen2 = 0;
    FUZZ_ASSERT(pb_wire_notify_encode(id, proof, plen, &b) == PB_OK);
    FUZZ_ASSERT(pb_wire_notify_decode(b.data, b.len, &id2, &proof2, &plen2) == PB_OK);
    FUZZ_ASSERT(strcmp(id, id2) == 0);
    FUZZ_ASSERT(plen == plen2 && (plen == 0 || memcmp(proof, proof2, plen) == 0));
    free(proof);
    free(proof2);

    char norm[PB_SERVER_ID_MAX], again[PB_SERVER_ID_MAX];
    if (pb_serverid_normalize(id, norm) == PB_OK) {
        FUZZ_ASSERT(pb_serverid_is_normal(norm));
        FUZZ_ASSERT(pb_serverid_normalize(norm, again) == PB_OK && strcmp(norm, again) == 0);
    }
    free(id);
    free(id2);
    pb_buf_free(&b);
    return 0;
}
