/*
 * fuzz_push_resp - a peer's answer to our Push: pb_wire_push_resp_decode (PushResponse
 * with the postbox_seq_ack extension; empty from a foreign receiver).
 *
 * Invariants checked: a refused input leaves seq_ack untouched; an accepted one
 * round-trips through the encoder (0, absent, encodes to nothing); whatever parses as a
 * PushResponse also parses as an empty message.
 *
 * Untrusted input: the fuzz input, as a Push answer body.
 */
#include <string.h>

#include "fuzz_util.h"
#include "wire/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bool empty_ok = pb_wire_empty_decode(data, size) == PB_OK;
    uint64_t ack[2], ack2 = 1, ep2 = 1;
    memset(ack, FUZZ_SENTINEL, sizeof ack);
    if (pb_wire_push_resp_decode(data, size, &ack[0], &ack[1]) != PB_OK) {
        FUZZ_ASSERT(fuzz_untouched(ack, sizeof ack));
        return 0;
    }
    FUZZ_ASSERT(empty_ok);
    pb_buf b = PB_BUF_INIT;
    FUZZ_ASSERT(pb_wire_push_resp_encode(ack[0], ack[1], &b) == PB_OK);
    FUZZ_ASSERT(pb_wire_push_resp_decode(b.data, b.len, &ack2, &ep2) == PB_OK && ack[0] == ack2);
    FUZZ_ASSERT(ep2 == (ack[0] ? ack[1] : 0)); /* an epoch travels only with an ack */
    FUZZ_ASSERT((ack[0] == 0) == (b.len == 0));
    pb_buf_free(&b);
    return 0;
}
