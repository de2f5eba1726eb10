/*
 * budget_test - per-sender receive budgets (lib/delivery/budget.h): a burst up to the
 * budget, refusal with a RetryInfo that is long enough, refill over time, senders apart,
 * charges that go into debt, and the bounded table; the budgets per verified key (many
 * IDs, one key: one budget) and per client address (a few senders' worth; off at 0), live
 * factor changes.
 */
#include "delivery/budget.h"
#include "harness.h"

static void test_take_refill(void)
{
    pb_budget *b =
        pb_budget_new(&(pb_budget_opts){.events = 100, .bytes = 10000, .interval_s = 10});
    uint32_t ra = 0;
    int64_t t = 1000000;
    CHECK(pb_budget_take(b, "a:1", 60, 100, t, &ra));
    CHECK(pb_budget_take(b, "a:1", 40, 100, t, &ra)); /* exactly the budget */
    CHECK(!pb_budget_take(b, "a:1", 1, 1, t, &ra));
    CHECKF(ra >= 1 && ra <= 10, "retry after %u s", ra);
    CHECK(pb_budget_take(b, "b:1", 100, 100, t, &ra)); /* another sender has its own */
    /* 10 events per second come back: after 2 s, 20 fit and 21 do not */
    CHECK(!pb_budget_take(b, "a:1", 21, 1, t + 2000, &ra));
    CHECK(pb_budget_take(b, "a:1", 20, 1, t + 2000, &ra));
    /* bytes count too */
    CHECK(!pb_budget_take(b, "c:1", 1, 10001, t, &ra));
    CHECK(pb_budget_take(b, "c:1", 1, 10000, t, &ra));
    /* a refused take took nothing */
    CHECK(pb_budget_take(b, "c:1", 99, 0, t, &ra));
    /* never above one interval's worth, however long the sender was quiet */
    CHECK(!pb_budget_take(b, "b:1", 101, 1, t + 3600 * 1000, &ra));
    CHECK(pb_budget_take(b, "b:1", 100, 1, t + 3600 * 1000, &ra));
    pb_budget_free(b);
    pb_budget_free(NULL);
}

static void test_charge_debt(void)
{
    pb_budget *b = pb_budget_new(&(pb_budget_opts){.events = 10, .bytes = 1000, .interval_s = 10});
    uint32_t ra = 0;
    int64_t t = 5000;
    CHECK(pb_budget_available(b, "p:1", t, &ra));
    pb_budget_charge(b, "p:1", 30, 10, t); /* a Pull answer stored whole: 20 in debt */
    CHECK(!pb_budget_available(b, "p:1", t, &ra));
    CHECKF(ra >= 10, "debt of 20 events at 1/s: retry after %u s (capped at the interval)", ra);
    CHECK(!pb_budget_available(b, "p:1", t + 20000, &ra)); /* 20 s repay the debt exactly */
    CHECK(pb_budget_available(b, "p:1", t + 21000, &ra));
    pb_budget_free(b);
}

static void test_bounded(void)
{
    pb_budget *b = pb_budget_new(&(pb_budget_opts){.events = 5, .max_senders = 3});
    uint32_t ra;
    CHECK(pb_budget_take(b, "s1:1", 5, 0, 0, &ra));
    CHECK(!pb_budget_take(b, "s1:1", 1, 0, 0, &ra));
    for (int i = 2; i <= 4; i++) {
        char id[16];
        snprintf(id, sizeof id, "s%d:1", i);
        CHECK(pb_budget_take(b, id, 1, 0, 0, &ra)); /* pushes s1 out of the table */
    }
    /* s1 was forgotten: it starts full again (the table stays bounded) */
    CHECK(pb_budget_take(b, "s1:1", 5, 0, 0, &ra));
    pb_budget_free(b);
}

static void test_per_key(void)
{
    pb_budget *b = pb_budget_new(&(pb_budget_opts){.events = 10, .bytes = 1000, .interval_s = 10});
    uint8_t k1[32] = {1}, k2[32] = {2};
    uint32_t ra = 0;
    int64_t t = 1000;
    /* 5 IDs signed with k1 share one budget of 10 events: 10 events in all, not 50 */
    int took = 0;
    for (int i = 0; i < 5; i++) {
        char id[32];
        snprintf(id, sizeof id, "x%d.example:443", i);
        pb_budget_who w = {.sender = id, .key = k1};
        for (int e = 0; e < 10; e++)
            took += pb_budget_take_who(b, &w, 1, 1, t, &ra) == PB_BUDGET_OK;
    }
    CHECK_INT(took, 10);
    pb_budget_who w1 = {.sender = "x9.example:443", .key = k1};
    CHECK_INT(pb_budget_take_who(b, &w1, 1, 1, t, &ra), PB_BUDGET_KEY);
    CHECKF(ra >= 1 && ra <= 10, "retry after %u s", ra);
    /* the refused take took nothing from the sender's own bucket */
    CHECK_INT(pb_budget_events_left(b, "x9.example:443", t), 10);
    /* another key has its own */
    pb_budget_who w2 = {.sender = "y.example:443", .key = k2};
    CHECK_INT(pb_budget_take_who(b, &w2, 10, 1, t, &ra), PB_BUDGET_OK);
    /* the sender's own budget still counts first */
    CHECK_INT(pb_budget_take_who(b, &w2, 1, 1, t, &ra), PB_BUDGET_SENDER);
    /* a Pull answer charged to a sender puts its key in debt too */
    pb_budget_who w3 = {.sender = "z.example:443", .key = k2};
    CHECK_INT(pb_budget_events_left_who(b, &w3, t + 1000), 1);
    pb_budget_charge_who(b, &w3, 5, 1, t + 1000);
    CHECK_INT(pb_budget_events_left_who(b, &w3, t + 1000), 0);
    CHECK_INT(pb_budget_events_left(b, "z.example:443", t + 1000), 5);
    /* ... so a Pull round of z (its own budget left) waits for its key's */
    CHECK(pb_budget_available(b, "z.example:443", t + 1000, &ra));
    CHECK(!pb_budget_available_who(b, &w3, t + 1000, &ra));
    CHECKF(ra >= 4, "the key's debt of 4 events at 1/s: retry after %u s", ra);
    /* a key factor of 3: three senders' worth, live */
    pb_budget_set_factors(b, 3, 0);
    uint8_t k3[32] = {3};
    took = 0;
    for (int i = 0; i < 5; i++) {
        char id[32];
        snprintf(id, sizeof id, "k3-%d.example:443", i);
        pb_budget_who w = {.sender = id, .key = k3};
        took += pb_budget_take_who(b, &w, 10, 1, t, &ra) == PB_BUDGET_OK;
    }
    CHECK_INT(took, 3);
    pb_budget_free(b);
}

static void test_per_address(void)
{
    pb_budget *b = pb_budget_new(
        &(pb_budget_opts){.events = 10, .bytes = 1000, .interval_s = 10, .addr_factor = 4});
    uint8_t a1[16] = {127, 0, 0, 2}, a2[16] = {127, 0, 0, 3};
    uint32_t ra = 0;
    int64_t t = 1000;
    /* 6 servers (each its own key) behind one address: 4 senders' budgets in all */
    int took = 0;
    for (int i = 0; i < 6; i++) {
        char id[32];
        uint8_t k[32] = {(uint8_t)(10 + i)};
        snprintf(id, sizeof id, "h%d.example:443", i);
        pb_budget_who w = {.sender = id, .key = k, .addr = a1};
        took += pb_budget_take_who(b, &w, 10, 1, t, &ra) == PB_BUDGET_OK;
    }
    CHECK_INT(took, 4);
    uint8_t k9[32] = {99};
    pb_budget_who w = {.sender = "h9.example:443", .key = k9, .addr = a1};
    CHECK_INT(pb_budget_take_who(b, &w, 1, 1, t, &ra), PB_BUDGET_ADDRESS);
    /* another address has its own; no address (unknown, or behind a proxy): no limit */
    w.addr = a2;
    CHECK_INT(pb_budget_take_who(b, &w, 10, 1, t, &ra), PB_BUDGET_OK);
    pb_budget_who w2 = {.sender = "h10.example:443", .key = (uint8_t[32]){100}};
    CHECK_INT(pb_budget_take_who(b, &w2, 10, 1, t, &ra), PB_BUDGET_OK);
    /* factor 0 turns the address budget off, live */
    pb_budget_set_factors(b, 1, 0);
    pb_budget_who w3 = {.sender = "h11.example:443", .key = (uint8_t[32]){101}, .addr = a1};
    CHECK_INT(pb_budget_take_who(b, &w3, 10, 1, t, &ra), PB_BUDGET_OK);
    CHECK(!strcmp(pb_budget_scope_name(PB_BUDGET_ADDRESS), "address"));
    pb_budget_free(b);
}

int main(void)
{
    test_take_refill();
    test_charge_debt();
    test_bounded();
    test_per_key();
    test_per_address();
    return pbt_finish();
}
