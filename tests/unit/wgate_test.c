/*
 * wgate_test - the receiver's gate for windowed Pushes (lib/delivery/wgate.h) without a
 * listener: what is applicable (applied, or queued with an ordered store, never across a
 * gap or another epoch), a queued batch that failed, and the window shared by the senders
 * of one client address (divided by the senders seen lately, at least 1, each address
 * apart, the full window with the shares off, forgotten after
 * PB_WGATE_ADDR_RECENT_MS).
 */
#include "delivery/wgate.h"
#include "harness.h"

#define EP 77

/* applied and queued: ordered (SQLite) and not (PostgreSQL) */
static void test_ready(void)
{
    for (int ordered = 0; ordered <= 1; ordered++) {
        pb_wgate *g = pb_wgate_new(23, 128, ordered);
        bool known = true;
        CHECK(!pb_wgate_ready(g, "s.example:1", EP, 256, &known));
        CHECK(!known); /* nothing seen: only the store can say */
        pb_wgate_applied(g, "s.example:1", EP, 256, 1000);
        CHECK(pb_wgate_ready(g, "s.example:1", EP, 256, &known));
        CHECK(known);
        CHECK(!pb_wgate_ready(g, "s.example:1", EP, 512, NULL));
        CHECK(!pb_wgate_ready(g, "s.example:1", EP + 1, 256, NULL)); /* another epoch */
        /* 257..512 queued for its commit: the batch after it may follow at once only when
         * the store keeps the order */
        pb_wgate_queued(g, "s.example:1", EP, 512, 1000);
        CHECKF(pb_wgate_ready(g, "s.example:1", EP, 512, NULL) == (bool)ordered, "ordered %d",
               ordered);
        CHECK(!pb_wgate_ready(g, "s.example:1", EP, 768, NULL)); /* never across a gap */
        /* that commit failed: what was queued behind it may not be applied */
        pb_wgate_failed(g, "s.example:1", EP);
        CHECK(!pb_wgate_ready(g, "s.example:1", EP, 512, NULL));
        CHECK(pb_wgate_ready(g, "s.example:1", EP, 256, NULL));
        /* a queued head batch of a new epoch: applied there is unknown, queued is not */
        pb_wgate_queued(g, "s.example:1", EP + 1, 100, 1000);
        CHECKF(pb_wgate_ready(g, "s.example:1", EP + 1, 100, &known) == (bool)ordered, "ordered %d",
               ordered);
        CHECK(!known || !ordered);
        /* (ordered) the old epoch is moot; (not) the queueing was not even recorded */
        CHECK(pb_wgate_ready(g, "s.example:1", EP, 256, NULL) == !ordered);
        CHECK_INT(pb_wgate_held(g, 1000), 0);
        pb_wgate_free(g);
    }
    pb_wgate_free(NULL);
}

/* the window shared by the senders of one address */
static void test_window_share(void)
{
    pb_wgate *g = pb_wgate_new(23, 128, true);
    uint8_t a1[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1};
    uint8_t a2[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 2};
    int64_t t = 1000000;
    char id[64];
    CHECK_INT(pb_wgate_window(g, a1, "s0.example:1", 24, t), 24); /* alone */
    CHECK_INT(pb_wgate_window(g, a1, "s0.example:1", 24, t), 24); /* counted once */
    CHECK_INT(pb_wgate_window(g, a1, "s1.example:1", 24, t), 12);
    CHECK_INT(pb_wgate_window(g, a1, "s0.example:1", 24, t), 12);
    for (int i = 2; i < 16; i++) {
        snprintf(id, sizeof id, "s%d.example:1", i);
        pb_wgate_window(g, a1, id, 24, t);
    }
    CHECK_INT(pb_wgate_window(g, a1, "s0.example:1", 24, t), 1);    /* 24 / 16: one each */
    CHECK_INT(pb_wgate_window(g, a2, "s0.example:1", 24, t), 24);   /* another address */
    CHECK_INT(pb_wgate_window(g, NULL, "s0.example:1", 24, t), 24); /* shares off */
    CHECK_INT(pb_wgate_window(g, a1, "s0.example:1", 1, t), 1);     /* no window to share */
    /* more senders than an address's slots: one batch each, no more room taken */
    for (int i = 0; i < 3 * PB_WGATE_ADDR_SENDERS; i++) {
        snprintf(id, sizeof id, "m%d.example:1", i);
        CHECK(pb_wgate_window(g, a1, id, 24, t) >= 1);
    }
    CHECK_INT(pb_wgate_window(g, a1, "s0.example:1", 24, t), 1);
    /* the others quiet for longer than PB_WGATE_ADDR_RECENT_MS: the full window again */
    CHECK_INT(pb_wgate_window(g, a1, "s0.example:1", 24, t + PB_WGATE_ADDR_RECENT_MS + 1), 24);
    /* many addresses: bounded, an address not seen lately gives its entry */
    for (int i = 0; i < PB_WGATE_ADDRS_MAX + 100; i++) {
        uint8_t a[16] = {0};
        memcpy(a, &i, sizeof i);
        CHECK(pb_wgate_window(g, a, "s0.example:1", 24, t + 2 * PB_WGATE_ADDR_RECENT_MS) >= 1);
    }
    uint8_t late[16] = {9, 9, 9};
    CHECK_INT(pb_wgate_window(g, late, "s0.example:1", 24, t + 2 * PB_WGATE_ADDR_RECENT_MS),
              24); /* none free and none idle: untracked, the full window */
    pb_wgate_free(g);
}

int main(void)
{
    test_ready();
    test_window_share();
    return pbt_finish();
}
