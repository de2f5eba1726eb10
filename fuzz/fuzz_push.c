/*
 * fuzz_push - the body of a Push from a peer: pb_wire_push_decode (PushRequest with the
 * postbox_seq extension), and pb_wire_event_decode on the same bytes (an Event alone).
 *
 * Invariants checked: a refused input leaves the out-parameters untouched; an accepted
 * one re-encodes, the encoding decodes to the same event and sequence number, and
 * encoding is a fixed point (encode(decode(encode(x))) == encode(x)).
 *
 * Untrusted input: the fuzz input, as a peer's Push body.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "wire/wire.h"

static void check_event(const uint8_t *data, size_t size)
{
    pb_event ev;
    memset(&ev, FUZZ_SENTINEL, sizeof ev);
    if (pb_wire_event_decode(data, size, &ev) != PB_OK) {
        FUZZ_ASSERT(fuzz_untouched(&ev, sizeof ev));
        return;
    }
    pb_buf b1 = PB_BUF_INIT, b2 = PB_BUF_INIT;
    pb_event ev2 = {0};
    FUZZ_ASSERT(pb_wire_event_encode(&ev, &b1) == PB_OK);
    FUZZ_ASSERT(pb_wire_event_decode(b1.data, b1.len, &ev2) == PB_OK);
    FUZZ_ASSERT(pb_event_equal(&ev, &ev2));
    FUZZ_ASSERT(pb_wire_event_encode(&ev2, &b2) == PB_OK);
    FUZZ_ASSERT(b1.len == b2.len && memcmp(b1.data, b2.data, b1.len) == 0);
    pb_event_clear(&ev);
    pb_event_clear(&ev2);
    pb_buf_free(&b1);
    pb_buf_free(&b2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_event(data, size);

    pb_event ev;
    uint64_t seq;
    memset(&ev, FUZZ_SENTINEL, sizeof ev);
    memset(&seq, FUZZ_SENTINEL, sizeof seq);
    if (pb_wire_push_decode(data, size, &ev, &seq) != PB_OK) {
        FUZZ_ASSERT(fuzz_untouched(&ev, sizeof ev) && fuzz_untouched(&seq, sizeof seq));
        return 0;
    }
    FUZZ_ASSERT(ev.kind != PB_EV_NONE);
    pb_buf b1 = PB_BUF_INIT, b2 = PB_BUF_INIT;
    pb_event ev2 = {0};
    uint64_t seq2 = 0;
    FUZZ_ASSERT(pb_wire_push_encode(&ev, seq, &b1) == PB_OK);
    FUZZ_ASSERT(pb_wire_push_decode(b1.data, b1.len, &ev2, &seq2) == PB_OK);
    FUZZ_ASSERT(pb_event_equal(&ev, &ev2) && seq == seq2);
    FUZZ_ASSERT(pb_wire_push_encode(&ev2, seq2, &b2) == PB_OK);
    FUZZ_ASSERT(b1.len == b2.len && memcmp(b1.data, b2.data, b1.len) == 0);
    pb_event_clear(&ev);
    pb_event_clear(&ev2);
    pb_buf_free(&b1);
    pb_buf_free(&b2);
    return 0;
}
