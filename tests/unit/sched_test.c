/*
 * sched_test - the transfer scheduler (lib/delivery/sched.h): the global cap, HIGH before
 * LOW, LOW capped at low_max, FIFO (round-robin) within a class, promotion, cancel.
 */
#include "delivery/sched.h"
#include "harness.h"

static void test_caps_and_order(void)
{
    pb_sched s;
    pb_sched_init(&s, 3, 2);
    pb_sched_item hi[4] = {{0}}, lo[4] = {{0}};
    for (int i = 0; i < 4; i++) {
        hi[i].tag = 10 + i;
        lo[i].tag = 20 + i;
        pb_sched_want(&s, &lo[i], PB_SCHED_LOW);
    }
    pb_sched_want(&s, &hi[0], PB_SCHED_HIGH);
    pb_sched_want(&s, &hi[1], PB_SCHED_HIGH);
    pb_sched_want(&s, &hi[1], PB_SCHED_HIGH); /* already waiting: no second entry */
    CHECK_INT(s.waiting[PB_SCHED_HIGH], 2);
    pb_sched_class c;
    pb_sched_item *it = pb_sched_next(&s, &c);
    CHECK(it == &hi[0] && c == PB_SCHED_HIGH && !pb_sched_waiting(&hi[0]));
    CHECK(pb_sched_next(&s, &c) == &hi[1]);
    it = pb_sched_next(&s, &c);
    CHECK(it == &lo[0] && c == PB_SCHED_LOW);
    CHECK(pb_sched_next(&s, &c) == NULL); /* 3 slots in use */
    pb_sched_done(&s, PB_SCHED_HIGH);
    CHECK(pb_sched_next(&s, &c) == &lo[1]); /* LOW now holds 2 = low_max */
    pb_sched_done(&s, PB_SCHED_HIGH);
    CHECK(pb_sched_next(&s, &c) == NULL); /* a slot is free, but LOW is at its cap */
    /* a HIGH item takes the free slot LOW may not */
    pb_sched_want(&s, &hi[2], PB_SCHED_HIGH);
    CHECK(pb_sched_next(&s, &c) == &hi[2]);
    pb_sched_done(&s, PB_SCHED_LOW);
    CHECK(pb_sched_next(&s, &c) == &lo[2]); /* FIFO within LOW */
}

static void test_promote_cancel(void)
{
    pb_sched s;
    pb_sched_init(&s, 10, 10);
    pb_sched_item a = {0}, b = {0}, h = {0};
    pb_sched_want(&s, &a, PB_SCHED_LOW);
    pb_sched_want(&s, &b, PB_SCHED_LOW);
    pb_sched_want(&s, &h, PB_SCHED_HIGH);
    pb_sched_promote(&s, &b); /* b jumps ahead of a, behind h */
    pb_sched_promote(&s, &h); /* already HIGH: stays */
    pb_sched_class c;
    CHECK(pb_sched_next(&s, &c) == &h);
    CHECK(pb_sched_next(&s, &c) == &b && c == PB_SCHED_HIGH);
    pb_sched_cancel(&s, &a);
    pb_sched_cancel(&s, &a); /* not waiting: nothing */
    CHECK(pb_sched_next(&s, &c) == NULL);
    CHECK_INT(s.waiting[0] + s.waiting[1], 0);
    pb_sched_promote(&s, &a); /* not waiting: nothing */
    CHECK(!pb_sched_waiting(&a));
}

/* Round-robin: 3 peers with work, each re-queued after its transfer, take turns. */
static void test_round_robin(void)
{
    pb_sched s;
    pb_sched_init(&s, 1, 1);
    pb_sched_item p[3] = {{0}};
    for (int i = 0; i < 3; i++) {
        p[i].tag = i;
        pb_sched_want(&s, &p[i], PB_SCHED_HIGH);
    }
    int order[9], n = 0;
    pb_sched_class c;
    for (int round = 0; round < 9; round++) {
        pb_sched_item *it = pb_sched_next(&s, &c);
        if (!it) break;
        order[n++] = it->tag;
        pb_sched_done(&s, c);
        pb_sched_want(&s, it, PB_SCHED_HIGH); /* it has more work */
    }
    CHECK_INT(n, 9);
    for (int i = 0; i < n; i++)
        CHECKF(order[i] == i % 3, "turn %d went to %d", i, order[i]);
    pb_sched_init(&s, 0, 5); /* 0 means 1; low_max clamped to max */
    CHECK(s.max == 1 && s.low_max == 1);
}

int main(void)
{
    test_caps_and_order();
    test_promote_cancel();
    test_round_robin();
    return pbt_finish();
}
