/*
 * fuzz_key_resp - a peer's answer to AuthService/Key: pb_wire_key_resp_decode
 * (KeyResponse, key exactly 32 bytes), and pb_wire_empty_decode on the same bytes (the
 * KeyRequest we answer on our own Key route).
 *
 * Invariants checked: a refused input leaves the key buffer untouched; an accepted key
 * round-trips through the encoder.
 *
 * Untrusted input: the fuzz input, as a Key answer body or a KeyRequest.
 */
#include <string.h>

#include "fuzz_util.h"
#include "wire/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    (void)pb_wire_empty_decode(data, size);
    uint8_t key[32], key2[32];
    memset(key, FUZZ_SENTINEL, sizeof key);
    if (pb_wire_key_resp_decode(data, size, key) != PB_OK) {
        FUZZ_ASSERT(fuzz_untouched(key, sizeof key));
        return 0;
    }
    pb_buf b = PB_BUF_INIT;
    FUZZ_ASSERT(pb_wire_key_resp_encode(key, &b) == PB_OK);
    FUZZ_ASSERT(pb_wire_key_resp_decode(b.data, b.len, key2) == PB_OK);
    FUZZ_ASSERT(memcmp(key, key2, 32) == 0);
    pb_buf_free(&b);
    return 0;
}
