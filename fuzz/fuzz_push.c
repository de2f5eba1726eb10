/*
 * fuzz_push - the body of a Push from a peer: pb_wire_push_decode (PushRequest with the
 * extension fields: sequence numbers, epoch, batched events), and pb_wire_event_decode on
 * the same bytes (an Event alone).
 *
 * Invariants checked: a refused input leaves the out-parameters untouched; an accepted
 * one has 1..max events, sequence numbers present for batches and strictly increasing;
 * it re-encodes, the encoding decodes to the same events, sequence numbers and epoch,
 * and encoding is a fixed point (encode(decode(encode(x))) == encode(x)).
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

    pb_push_req r;
    memset(&r, FUZZ_SENTINEL, sizeof r);
    if (pb_wire_push_decode(data, size, 64, &r) != PB_OK) {
        FUZZ_ASSERT(fuzz_untouched(&r, sizeof r));
        return 0;
    }
    FUZZ_ASSERT(r.n >= 1 && r.n <= 64);
    FUZZ_ASSERT(r.seqs || r.n == 1);
    for (size_t i = 0; i < r.n; i++) {
        FUZZ_ASSERT(r.evs[i].kind != PB_EV_NONE);
        if (r.seqs) FUZZ_ASSERT(r.seqs[i] > 0 && (i == 0 || r.seqs[i] > r.seqs[i - 1]));
    }
    pb_buf b1 = PB_BUF_INIT, b2 = PB_BUF_INIT;
    pb_push_req r2 = {0};
    uint64_t epoch = r.seqs ? r.epoch : 0;
    FUZZ_ASSERT(pb_wire_push_encode(r.evs, r.seqs, r.n, epoch, &b1) == PB_OK);
    FUZZ_ASSERT(pb_wire_push_decode(b1.data, b1.len, 64, &r2) == PB_OK);
    FUZZ_ASSERT(r.n == r2.n && epoch == r2.epoch && !r.seqs == !r2.seqs);
    for (size_t i = 0; i < r.n; i++) {
        FUZZ_ASSERT(pb_event_equal(&r.evs[i], &r2.evs[i]));
        if (r.seqs) FUZZ_ASSERT(r.seqs[i] == r2.seqs[i]);
    }
    FUZZ_ASSERT(pb_wire_push_encode(r2.evs, r2.seqs, r2.n, r2.epoch, &b2) == PB_OK);
    FUZZ_ASSERT(b1.len == b2.len && memcmp(b1.data, b2.data, b1.len) == 0);
    pb_push_req_clear(&r);
    pb_push_req_clear(&r2);
    pb_buf_free(&b1);
    pb_buf_free(&b2);
    return 0;
}
