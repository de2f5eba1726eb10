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
    uint64_t next;
    memset(&next, FUZZ_SENTINEL, sizeof next);
    if (pb_wire_pull_req_decode(data, size, &next) != PB_OK) {
        FUZZ_ASSERT(fuzz_untouched(&next, sizeof next));
        return 0;
    }
    /* Whatever parses as a PullRequest parses as an empty message (unknown fields). */
    FUZZ_ASSERT(empty_ok);
    pb_buf b = PB_BUF_INIT;
    uint64_t next2 = 1;
    FUZZ_ASSERT(pb_wire_pull_req_encode(next, &b) == PB_OK);
    FUZZ_ASSERT(pb_wire_pull_req_decode(b.data, b.len, &next2) == PB_OK);
    FUZZ_ASSERT(next == next2);
    FUZZ_ASSERT((next == 0) == (b.len == 0));
    pb_buf_free(&b);
    return 0;
}
