/*
 * fuzz_pull_req - the body of a Pull from a peer: pb_wire_pull_req_decode (PullRequest
 * with the postbox_next_seq extension) and pb_wire_empty_decode (the empty messages:
 * a foreign PullRequest, PushResponse, NotifyNewIdResponse, KeyRequest).
 *
 * Invariants checked: a refused input leaves next_seq untouched; an accepted one
 * round-trips through the encoder (0, absent, encodes to nothing); whatever parses as a
 * PullRequest also parses as an empty message (its field is then an unknown field).
 *
 * Untrusted input: the fuzz input, as a peer's Pull body.
 */
#include <string.h>

#include "fuzz_util.h"
#include "wire/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bool empty_ok = pb_wire_empty_decode(data, size) == PB_OK;
    pb_pull_req r;
    memset(&r, FUZZ_SENTINEL, sizeof r);
    if (pb_wire_pull_req_decode(data, size, &r) != PB_OK) {
        FUZZ_ASSERT(fuzz_untouched(&r, sizeof r));
        return 0;
    }
    /* Whatever parses as a PullRequest parses as an empty message (unknown fields). */
    FUZZ_ASSERT(empty_ok);
    pb_buf b = PB_BUF_INIT;
    pb_pull_req r2 = {1, 1, 1, 1, 1};
    FUZZ_ASSERT(pb_wire_pull_req_encode(&r, &b) == PB_OK);
    FUZZ_ASSERT(pb_wire_pull_req_decode(b.data, b.len, &r2) == PB_OK);
    FUZZ_ASSERT(memcmp(&r, &r2, sizeof r) == 0);
    FUZZ_ASSERT((r.next_seq == 0 && r.epoch == 0 && r.max_bytes == 0 && r.max_events == 0 &&
                 r.from_seq == 0) == (b.len == 0));
    pb_buf_free(&b);
    return 0;
}
