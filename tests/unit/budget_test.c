/*
 * budget_test - per-sender receive budgets (lib/delivery/budget.h): a burst up to the
 * budget, refusal with a RetryInfo that is long enough, refill over time, senders apart,
 * charges that go into debt, and the bounded table.
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

int main(void)
{
    test_take_refill();
    test_charge_debt();
    test_bounded();
    return pbt_finish();
}
