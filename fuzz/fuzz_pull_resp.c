/*
 * fuzz_pull_resp - a peer's answer to our Pull: pb_wire_pull_resp_decode (PullResponse:
 * repeated events and the parallel postbox_seqs extension).
 *
 * Invariants checked: a refused input leaves the out-parameters untouched; an accepted
 * one has seqs NULL or one per event, re-encodes with pb_wire_pull_resp_encode to bytes
 * that decode to the same events, numbers and epoch, and the streaming encoder (one event
 * at a time, then the seqs and epoch) produces exactly the same bytes as the one-shot
 * encoder. pb_wire_pull_resp_peek (the puller's cheap scan for the next pipelined range)
 * never fails where the decode succeeds, and agrees with it: the count of events, the
 * first and last sequence number (0 without them) and the epoch.
 *
 * Untrusted input: the fuzz input, as a Pull answer body.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "wire/wire.h"

static void free_events(pb_event *evs, uint64_t *seqs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        pb_event_clear(&evs[i]);
    free(evs);
    free(seqs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pb_event *evs;
    uint64_t *seqs;
    size_t n;
    uint64_t epoch;
    memset(&epoch, FUZZ_SENTINEL, sizeof epoch);
    memset(&evs, FUZZ_SENTINEL, sizeof evs);
    memset(&seqs, FUZZ_SENTINEL, sizeof seqs);
    memset(&n, FUZZ_SENTINEL, sizeof n);
    size_t pcount = 0;
    uint64_t pfirst = 0, plast = 0, pepoch = 0;
    pb_err perr = pb_wire_pull_resp_peek(data, size, &pcount, &pfirst, &plast, &pepoch);
    if (pb_wire_pull_resp_decode(data, size, &evs, &seqs, &n, &epoch) != PB_OK) {
        FUZZ_ASSERT(fuzz_untouched(&evs, sizeof evs) && fuzz_untouched(&seqs, sizeof seqs) &&
                    fuzz_untouched(&n, sizeof n) && fuzz_untouched(&epoch, sizeof epoch));
        return 0;
    }
    FUZZ_ASSERT((n == 0) == (evs == NULL));
    FUZZ_ASSERT(n > 0 || seqs == NULL);
    for (size_t i = 0; i < n; i++)
        FUZZ_ASSERT(evs[i].kind != PB_EV_NONE);
    FUZZ_ASSERT(perr == PB_OK && pcount == n && pepoch == epoch);
    FUZZ_ASSERT(pfirst == (seqs ? seqs[0] : 0) && plast == (seqs ? seqs[n - 1] : 0));

    pb_buf one = PB_BUF_INIT, stream = PB_BUF_INIT;
    FUZZ_ASSERT(pb_wire_pull_resp_encode(evs, seqs, n, epoch, &one) == PB_OK);
    for (size_t i = 0; i < n; i++)
        FUZZ_ASSERT(pb_wire_pull_resp_append_event(&evs[i], &stream) == PB_OK);
    pb_wire_pull_resp_append_seqs(seqs, seqs ? n : 0, epoch, &stream);
    FUZZ_ASSERT(one.len == stream.len &&
                (one.len == 0 || memcmp(one.data, stream.data, one.len) == 0));

    pb_event *evs2 = NULL;
    uint64_t *seqs2 = NULL;
    size_t n2 = 0;
    uint64_t epoch2 = 0;
    FUZZ_ASSERT(pb_wire_pull_resp_decode(one.data, one.len, &evs2, &seqs2, &n2, &epoch2) == PB_OK);
    FUZZ_ASSERT(n2 == n && (seqs2 == NULL) == (seqs == NULL) && epoch2 == epoch);
    for (size_t i = 0; i < n; i++) {
        FUZZ_ASSERT(pb_event_equal(&evs[i], &evs2[i]));
        if (seqs) FUZZ_ASSERT(seqs[i] == seqs2[i]);
    }
    free_events(evs, seqs, n);
    free_events(evs2, seqs2, n2);
    pb_buf_free(&one);
    pb_buf_free(&stream);
    return 0;
}
