/*
 * fsm_test - the sending side's state machine, transition by transition (lib/delivery/
 * fsm.h): a table of (state before, input) -> (state, mode, actions after), with the
 * actions rendered as text so each row reads like the transition it checks; then a few
 * whole scenarios (retries to queued to drained; work committed while the head is read;
 * a refused batch isolated to its one event; a store that went back), the error classes
 * of PROTOCOL.md 7.5 and the backoff.
 */
#include <stdio.h>
#include <string.h>

#include "delivery/fsm.h"
#include "harness.h"

static const pb_fsm_cfg CFG = {.push_retries = 2,
                               .retry_base_ms = 100,
                               .backoff_min_ms = 5000,
                               .backoff_max_ms = 60000,
                               .batch_max = 8};

#define NOW 1000000
#define EPOCH 0xabcdef

/* "READ 5 8; PUSH 5..8; FORGET 8 lazy; PERSIST; TIMER 1000100; NOTE queued" */
static void render(const pb_fsm_action *a, size_t n, char *out, size_t cap)
{
    static const char *notes[] = {"",       "queued", "probe-failed", "answers", "drained",
                                  "parked", "retry",  "isolate",      "shrink",  "rollback"};
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        char one[96];
        switch (a[i].kind) {
        case PB_FSM_ACT_READ:
            snprintf(one, sizeof one, "READ %llu %zu", (unsigned long long)a[i].from, a[i].limit);
            break;
        case PB_FSM_ACT_PUSH:
            snprintf(one, sizeof one, "PUSH %llu..%llu", (unsigned long long)a[i].from,
                     (unsigned long long)a[i].upto);
            break;
        case PB_FSM_ACT_FORGET:
            snprintf(one, sizeof one, "FORGET %llu%s", (unsigned long long)a[i].upto,
                     a[i].lazy ? " lazy" : "");
            break;
        case PB_FSM_ACT_PERSIST:
            snprintf(one, sizeof one, "PERSIST");
            break;
        case PB_FSM_ACT_TIMER:
            snprintf(one, sizeof one, "TIMER %lld", (long long)a[i].at);
            break;
        case PB_FSM_ACT_EPOCH:
            snprintf(one, sizeof one, "EPOCH %llu", (unsigned long long)a[i].upto);
            break;
        case PB_FSM_ACT_NOTE:
            snprintf(one, sizeof one, "NOTE %s", notes[a[i].note]);
            break;
        }
        if (i) strncat(out, "; ", cap - strlen(out) - 1);
        strncat(out, one, cap - strlen(out) - 1);
    }
}

/* A state to start a row from. */
typedef struct before {
    pb_fsm_state st;
    pb_peer_mode mode;
    bool has_work, postbox;
    uint32_t tries, attempts;
    int64_t next_at;
    uint64_t acked, first, last, max_assigned, single_until;
    size_t n;
    uint32_t batch;
} before_t;

static pb_fsm make(const before_t *b)
{
    pb_fsm f;
    pb_fsm_init(&f, b->mode, b->attempts, b->next_at, EPOCH, b->max_assigned, b->has_work);
    f.st = b->st;
    f.postbox = b->postbox;
    f.tries = b->tries;
    f.next_at = b->next_at;
    f.acked = b->acked;
    f.first = b->first;
    f.last = b->last;
    f.n = b->n;
    f.batch = b->batch;
    f.single_until = b->single_until;
    return f;
}

struct row {
    const char *what;
    before_t before;
    pb_fsm_input in;
    pb_fsm_state st;
    pb_peer_mode mode;
    const char *actions;
};

#define IDLE PB_FSM_IDLE
#define READING PB_FSM_READING
#define PUSHING PB_FSM_PUSHING
#define RETRY PB_FSM_RETRY_WAIT
#define EPOCHST PB_FSM_EPOCH
#define PUSH PB_MODE_PUSH
#define QUEUED PB_MODE_QUEUED
#define PARKED PB_MODE_PARKED

/* rnd 0: every jitter takes its lowest value (retry d/2, backoff v) */
#define IN(k, ...) ((pb_fsm_input){.kind = PB_FSM_IN_##k, .now = NOW, .rnd = 0, __VA_ARGS__})
#define OK(ack_, ep_) IN(PUSHED, .result = PB_PUSH_OK, .ack = (ack_), .ack_epoch = (ep_))

static const struct row rows[] = {
    /* ---- IDLE ---- */
    {"work in push mode reads the head",
     {.st = IDLE, .mode = PUSH},
     IN(WORK),
     READING,
     PUSH,
     "READ 1 1"},
    {"work reads after what was acked",
     {.st = IDLE, .mode = PUSH, .acked = 7},
     IN(WORK),
     READING,
     PUSH,
     "READ 8 1"},
    {"a postbox gets a batch",
     {.st = IDLE, .mode = PUSH, .postbox = true},
     IN(WORK),
     READING,
     PUSH,
     "READ 1 8"},
    {"a 413 made the batch smaller",
     {.st = IDLE, .mode = PUSH, .postbox = true, .batch = 3},
     IN(WORK),
     READING,
     PUSH,
     "READ 1 3"},
    {"isolating a refused batch: one at a time",
     {.st = IDLE, .mode = PUSH, .postbox = true, .acked = 4, .single_until = 9},
     IN(WORK),
     READING,
     PUSH,
     "READ 5 1"},
    {"work while parked waits for the operator",
     {.st = IDLE, .mode = PARKED},
     IN(WORK),
     IDLE,
     PARKED,
     ""},
    {"work while queued and the probe not due re-arms it",
     {.st = IDLE, .mode = QUEUED, .next_at = NOW + 500},
     IN(WORK),
     IDLE,
     QUEUED,
     "TIMER 1000500"},
    {"work while queued and the probe due reads",
     {.st = IDLE, .mode = QUEUED, .next_at = NOW - 1},
     IN(WORK),
     READING,
     QUEUED,
     "READ 1 1"},
    {"work records the highest sequence number assigned",
     {.st = IDLE, .mode = PARKED},
     IN(WORK, .assigned = 42),
     IDLE,
     PARKED,
     ""},
    {"a due probe timer reads",
     {.st = IDLE, .mode = QUEUED, .has_work = true, .next_at = NOW},
     IN(TIMER),
     READING,
     QUEUED,
     "READ 1 1"},
    {"an early timer does nothing",
     {.st = IDLE, .mode = QUEUED, .has_work = true, .next_at = NOW + 1},
     IN(TIMER),
     IDLE,
     QUEUED,
     ""},
    {"contact during a long backoff probes now",
     {.st = IDLE, .mode = QUEUED, .has_work = true, .attempts = 4, .next_at = NOW + 60000},
     IN(CONTACT),
     READING,
     QUEUED,
     "READ 1 1"},
    {"contact near the probe time changes nothing",
     {.st = IDLE, .mode = QUEUED, .has_work = true, .next_at = NOW + 4000},
     IN(CONTACT),
     IDLE,
     QUEUED,
     ""},
    {"contact in push mode changes nothing",
     {.st = IDLE, .mode = PUSH, .has_work = true},
     IN(CONTACT),
     IDLE,
     PUSH,
     ""},
    {"the operator retries a parked event",
     {.st = IDLE, .mode = PARKED, .has_work = true},
     IN(OPERATOR),
     READING,
     PUSH,
     "PERSIST; READ 1 1"},
    {"the operator acts on a peer that is not parked",
     {.st = IDLE, .mode = QUEUED, .next_at = NOW + 9},
     IN(OPERATOR),
     IDLE,
     QUEUED,
     ""},
    {"state re-read from the store (another node queued it)",
     {.st = IDLE, .mode = PUSH, .has_work = true},
     IN(LOADED, .mode = QUEUED, .attempts = 2, .next_at = NOW + 7000),
     IDLE,
     QUEUED,
     "TIMER 1007000"},
    {"a Pull acknowledgement moves the cursor",
     {.st = IDLE, .mode = PUSH, .acked = 3},
     IN(ACKED, .ack = 9),
     IDLE,
     PUSH,
     ""},
    {"an older Pull acknowledgement does not move it back",
     {.st = IDLE, .mode = PUSH, .acked = 9},
     IN(ACKED, .ack = 3),
     IDLE,
     PUSH,
     ""},

    /* ---- READING ---- */
    {"an empty head in push mode: idle, flush forgets",
     {.st = READING, .mode = PUSH, .acked = 5},
     IN(READ, .n = 0),
     IDLE,
     PUSH,
     "FORGET 5"},
    {"an empty head after a postbox took the events: idle, forgets may wait",
     {.st = READING, .mode = PUSH, .acked = 5, .postbox = true},
     IN(READ, .n = 0),
     IDLE,
     PUSH,
     "FORGET 5 lazy"},
    {"an empty head while queued: drained",
     {.st = READING, .mode = QUEUED, .attempts = 3, .next_at = 0, .acked = 5},
     IN(READ, .n = 0),
     IDLE,
     PUSH,
     "FORGET 5; TIMER 0; PERSIST; NOTE drained"},
    {"events read are pushed",
     {.st = READING, .mode = PUSH},
     IN(READ, .n = 3, .first = 4, .last = 6),
     PUSHING,
     PUSH,
     "PUSH 4..6"},
    {"a read failure retries in a second",
     {.st = READING, .mode = PUSH},
     IN(READ_FAILED),
     RETRY,
     PUSH,
     "TIMER 1001000"},
    {"a stale read result is ignored",
     {.st = PUSHING, .mode = PUSH},
     IN(READ, .n = 1, .first = 1, .last = 1),
     PUSHING,
     PUSH,
     ""},

    /* ---- PUSHING: success ---- */
    {"200 from a foreign receiver: forget at once, next",
     {.st = PUSHING, .mode = PUSH, .first = 4, .last = 4, .n = 1, .max_assigned = 9},
     OK(0, 0),
     READING,
     PUSH,
     "FORGET 4; READ 5 1"},
    {"200 with our ack: a postbox, lazy forget, batches from now",
     {.st = PUSHING, .mode = PUSH, .first = 4, .last = 4, .n = 1, .max_assigned = 9},
     OK(4, EPOCH),
     READING,
     PUSH,
     "FORGET 4 lazy; READ 5 8"},
    {"an ack in another epoch is not ours: foreign",
     {.st = PUSHING, .mode = PUSH, .first = 4, .last = 4, .n = 1, .max_assigned = 9},
     OK(4, 99),
     READING,
     PUSH,
     "FORGET 4; READ 5 1"},
    {"a probe that succeeds drains the queue",
     {.st = PUSHING,
      .mode = QUEUED,
      .attempts = 3,
      .first = 1,
      .last = 1,
      .n = 1,
      .max_assigned = 5},
     OK(0, 0),
     READING,
     PUSH,
     "FORGET 1; TIMER 0; PERSIST; NOTE answers; READ 2 1"},
    {"a postbox that took only the first of a batch: one at a time",
     {.st = PUSHING,
      .mode = PUSH,
      .postbox = true,
      .first = 4,
      .last = 7,
      .n = 4,
      .max_assigned = 9},
     OK(4, EPOCH),
     READING,
     PUSH,
     "FORGET 4 lazy; READ 5 1"},
    {"an ack above anything assigned: the store went back",
     {.st = PUSHING,
      .mode = PUSH,
      .postbox = true,
      .first = 4,
      .last = 4,
      .n = 1,
      .max_assigned = 4},
     OK(900, EPOCH),
     EPOCHST,
     PUSH,
     "EPOCH 900; NOTE rollback"},

    /* ---- PUSHING: failures ---- */
    {"a transient failure in push mode: short retry",
     {.st = PUSHING, .mode = PUSH, .first = 1, .last = 1, .n = 1},
     IN(PUSHED, .result = PB_PUSH_TRANSIENT),
     RETRY,
     PUSH,
     "TIMER 1000050; NOTE retry"},
    {"the second retry waits twice as long",
     {.st = PUSHING, .mode = PUSH, .tries = 1, .first = 1, .last = 1, .n = 1},
     IN(PUSHED, .result = PB_PUSH_TRANSIENT),
     RETRY,
     PUSH,
     "TIMER 1000100; NOTE retry"},
    {"RetryInfo is honoured: no attempt before it",
     {.st = PUSHING, .mode = PUSH, .first = 1, .last = 1, .n = 1},
     IN(PUSHED, .result = PB_PUSH_TRANSIENT, .retry_after_s = 7),
     RETRY,
     PUSH,
     "TIMER 1007000; NOTE retry"},
    {"RetryInfo is capped at backoff_max",
     {.st = PUSHING, .mode = PUSH, .first = 1, .last = 1, .n = 1},
     IN(PUSHED, .result = PB_PUSH_TRANSIENT, .retry_after_s = 86400),
     RETRY,
     PUSH,
     "TIMER 1060000; NOTE retry"},
    {"retries used up: queued, probe at backoff_min",
     {.st = PUSHING, .mode = PUSH, .tries = 2, .first = 1, .last = 1, .n = 1},
     IN(PUSHED, .result = PB_PUSH_TRANSIENT),
     IDLE,
     QUEUED,
     "NOTE queued; TIMER 1005000; PERSIST"},
    {"a failed probe doubles the backoff",
     {.st = PUSHING, .mode = QUEUED, .attempts = 1, .first = 1, .last = 1, .n = 1},
     IN(PUSHED, .result = PB_PUSH_TRANSIENT),
     IDLE,
     QUEUED,
     "NOTE probe-failed; TIMER 1020000; PERSIST"},
    {"a refused single event parks",
     {.st = PUSHING, .mode = PUSH, .first = 3, .last = 3, .n = 1},
     IN(PUSHED, .result = PB_PUSH_REFUSED),
     IDLE,
     PARKED,
     "TIMER 0; PERSIST; NOTE parked"},
    {"a refused batch is retried one at a time",
     {.st = PUSHING, .mode = PUSH, .postbox = true, .acked = 2, .first = 3, .last = 6, .n = 4},
     IN(PUSHED, .result = PB_PUSH_REFUSED),
     READING,
     PUSH,
     "NOTE isolate; READ 3 1"},
    {"413 on a batch halves it",
     {.st = PUSHING, .mode = PUSH, .postbox = true, .acked = 2, .first = 3, .last = 10, .n = 8},
     IN(PUSHED, .result = PB_PUSH_TOO_BIG),
     READING,
     PUSH,
     "NOTE shrink; READ 3 4"},
    {"413 on one event parks it",
     {.st = PUSHING, .mode = PUSH, .first = 3, .last = 3, .n = 1},
     IN(PUSHED, .result = PB_PUSH_TOO_BIG),
     IDLE,
     PARKED,
     "TIMER 0; PERSIST; NOTE parked"},
    {"stopping: nothing happened",
     {.st = PUSHING, .mode = PUSH, .first = 3, .last = 3, .n = 1},
     IN(PUSHED, .result = PB_PUSH_STOPPED),
     IDLE,
     PUSH,
     ""},
    {"a push result when not pushing is ignored",
     {.st = IDLE, .mode = PUSH},
     OK(0, 0),
     IDLE,
     PUSH,
     ""},

    /* ---- RETRY_WAIT, EPOCH ---- */
    {"the retry timer re-reads the head",
     {.st = RETRY, .mode = PUSH, .tries = 1, .acked = 2},
     IN(TIMER),
     READING,
     PUSH,
     "READ 3 1"},
    {"contact during a short retry changes nothing",
     {.st = RETRY, .mode = PUSH, .tries = 1},
     IN(CONTACT),
     RETRY,
     PUSH,
     ""},
    {"the epoch checked: push the head again, learn the receiver again",
     {.st = EPOCHST, .mode = PUSH, .postbox = true, .acked = 3},
     IN(EPOCH, .epoch = 77, .assigned = 12),
     READING,
     PUSH,
     "READ 4 1"},
    {"an epoch result when not checking is ignored",
     {.st = IDLE, .mode = PUSH},
     IN(EPOCH, .epoch = 77),
     IDLE,
     PUSH,
     ""},
};

static void test_table(void)
{
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const struct row *r = &rows[i];
        pb_fsm f = make(&r->before);
        pb_fsm_action a[PB_FSM_MAX_ACTIONS];
        size_t n = pb_fsm_step(&f, &CFG, &r->in, a);
        char got[512];
        render(a, n, got, sizeof got);
        CHECKF(strcmp(got, r->actions) == 0, "%s: actions \"%s\", want \"%s\"", r->what, got,
               r->actions);
        CHECKF(f.st == r->st, "%s: state %s, want %s", r->what, pb_fsm_state_name(f.st),
               pb_fsm_state_name(r->st));
        CHECKF(f.mode == r->mode, "%s: mode %d, want %d", r->what, f.mode, r->mode);
    }
    /* a few fields the table does not show */
    pb_fsm f = make(&(before_t){.st = IDLE, .mode = PARKED});
    pb_fsm_action a[PB_FSM_MAX_ACTIONS];
    pb_fsm_step(&f, &CFG, &IN(WORK, .assigned = 42), a);
    CHECK_INT(f.max_assigned, 42);
    f = make(&(before_t){.st = IDLE, .mode = PUSH, .acked = 3});
    pb_fsm_step(&f, &CFG, &IN(ACKED, .ack = 9), a);
    CHECK_INT(f.acked, 9);
    f = make(&(before_t){.st = EPOCHST, .mode = PUSH, .postbox = true});
    pb_fsm_step(&f, &CFG, &IN(EPOCH, .epoch = 77, .assigned = 12), a);
    CHECK(f.epoch == 77 && f.max_assigned == 12 && !f.postbox);
    f = make(&(before_t){.st = PUSHING, .mode = PUSH, .first = 3, .last = 3, .n = 1});
    pb_fsm_step(&f, &CFG, &IN(PUSHED, .result = PB_PUSH_REFUSED), a);
    CHECK_INT(f.parked_seq, 3);
}

/* Drives a whole story through one machine. */
static size_t step(pb_fsm *f, pb_fsm_input in, char *got, size_t cap)
{
    pb_fsm_action a[PB_FSM_MAX_ACTIONS];
    size_t n = pb_fsm_step(f, &CFG, &in, a);
    render(a, n, got, cap);
    return n;
}

static void test_scenarios(void)
{
    char got[512];
    /* push mode: 1 + 2 retries fail -> queued; the probe fails, then succeeds -> drained */
    pb_fsm f;
    pb_fsm_init(&f, PB_MODE_PUSH, 0, 0, EPOCH, 0, false);
    step(&f, IN(WORK, .assigned = 2), got, sizeof got);
    CHECK_STR(got, "READ 1 1");
    step(&f, IN(READ, .n = 1, .first = 1, .last = 1), got, sizeof got);
    CHECK_STR(got, "PUSH 1..1");
    for (int i = 0; i < 2; i++) {
        step(&f, IN(PUSHED, .result = PB_PUSH_TRANSIENT), got, sizeof got);
        CHECK(f.st == PB_FSM_RETRY_WAIT && f.mode == PB_MODE_PUSH);
        step(&f, IN(TIMER), got, sizeof got);
        step(&f, IN(READ, .n = 1, .first = 1, .last = 1), got, sizeof got);
    }
    step(&f, IN(PUSHED, .result = PB_PUSH_TRANSIENT), got, sizeof got);
    CHECK(f.mode == PB_MODE_QUEUED && f.st == PB_FSM_IDLE && f.next_at == NOW + 5000);
    /* new work while queued does not push */
    step(&f, IN(WORK, .assigned = 3), got, sizeof got);
    CHECK_STR(got, "TIMER 1005000");
    step(&f, (pb_fsm_input){.kind = PB_FSM_IN_TIMER, .now = NOW + 5000}, got, sizeof got);
    CHECK_STR(got, "READ 1 1");
    step(&f, IN(READ, .n = 1, .first = 1, .last = 1), got, sizeof got);
    step(&f, IN(PUSHED, .result = PB_PUSH_TRANSIENT), got, sizeof got);
    CHECK(f.mode == PB_MODE_QUEUED && f.attempts == 1 && f.next_at == NOW + 10000);
    step(&f, (pb_fsm_input){.kind = PB_FSM_IN_TIMER, .now = NOW + 10000}, got, sizeof got);
    step(&f, IN(READ, .n = 1, .first = 1, .last = 1), got, sizeof got);
    step(&f, OK(1, EPOCH), got, sizeof got);
    CHECK_STR(got, "FORGET 1 lazy; TIMER 0; PERSIST; NOTE answers; READ 2 8");
    step(&f, IN(READ, .n = 2, .first = 2, .last = 3), got, sizeof got);
    step(&f, OK(3, EPOCH), got, sizeof got);
    step(&f, IN(READ, .n = 0), got, sizeof got);
    CHECK_STR(got, "FORGET 3 lazy");
    CHECK(f.mode == PB_MODE_PUSH && f.st == PB_FSM_IDLE && !f.has_work);

    /* work committed while the head is read: a read that finds nothing may have started
     * before that commit, so the head is read again, not left until the next submission */
    pb_fsm_init(&f, PB_MODE_PUSH, 0, 0, EPOCH, 0, false);
    f.postbox = true;
    step(&f, IN(WORK, .assigned = 1), got, sizeof got);
    step(&f, IN(READ, .n = 1, .first = 1, .last = 1), got, sizeof got);
    step(&f, OK(1, EPOCH), got, sizeof got);
    CHECK_STR(got, "FORGET 1 lazy; READ 2 8");
    step(&f, IN(WORK, .assigned = 2), got, sizeof got);
    CHECK_STR(got, "");
    step(&f, IN(READ, .n = 0), got, sizeof got);
    CHECK_STR(got, "READ 2 8");
    CHECK(f.st == PB_FSM_READING && f.has_work);
    step(&f, IN(READ, .n = 1, .first = 2, .last = 2), got, sizeof got);
    CHECK_STR(got, "PUSH 2..2");
    step(&f, OK(2, EPOCH), got, sizeof got);
    step(&f, IN(READ, .n = 0), got, sizeof got); /* no work came meanwhile: idle */
    CHECK_STR(got, "FORGET 2 lazy");
    CHECK(f.st == PB_FSM_IDLE && !f.has_work);

    /* a postbox refuses a batch of 4 where only event 6 is bad: 4, 5 go one by one, 6 parks */
    pb_fsm_init(&f, PB_MODE_PUSH, 0, 0, EPOCH, 9, true);
    f.postbox = true;
    f.acked = 3;
    step(&f, IN(WORK), got, sizeof got);
    CHECK_STR(got, "READ 4 8");
    step(&f, IN(READ, .n = 4, .first = 4, .last = 7), got, sizeof got);
    step(&f, IN(PUSHED, .result = PB_PUSH_REFUSED), got, sizeof got);
    CHECK_STR(got, "NOTE isolate; READ 4 1");
    for (uint64_t s = 4; s <= 5; s++) {
        step(&f, IN(READ, .n = 1, .first = s, .last = s), got, sizeof got);
        step(&f, OK(s, EPOCH), got, sizeof got);
        CHECKF(f.st == PB_FSM_READING && f.acked == s, "event %llu delivered alone",
               (unsigned long long)s);
    }
    CHECK_STR(got, "FORGET 5 lazy; READ 6 1");
    step(&f, IN(READ, .n = 1, .first = 6, .last = 6), got, sizeof got);
    step(&f, IN(PUSHED, .result = PB_PUSH_REFUSED), got, sizeof got);
    CHECK(f.mode == PB_MODE_PARKED && f.parked_seq == 6);
    /* retried by the operator, passes; after the refused range, batches again */
    step(&f, IN(OPERATOR), got, sizeof got);
    CHECK_STR(got, "PERSIST; READ 6 1");
    step(&f, IN(READ, .n = 1, .first = 6, .last = 6), got, sizeof got);
    step(&f, OK(6, EPOCH), got, sizeof got);
    step(&f, IN(READ, .n = 1, .first = 7, .last = 7), got, sizeof got);
    step(&f, OK(7, EPOCH), got, sizeof got);
    CHECK_STR(got, "FORGET 7 lazy; READ 8 8");

    /* a restored backup: the receiver acknowledges 50 while we assigned up to 20 */
    pb_fsm_init(&f, PB_MODE_PUSH, 0, 0, EPOCH, 20, true);
    f.postbox = true;
    f.acked = 10;
    step(&f, IN(WORK), got, sizeof got);
    step(&f, IN(READ, .n = 2, .first = 11, .last = 12), got, sizeof got);
    step(&f, OK(50, EPOCH), got, sizeof got);
    CHECK_STR(got, "EPOCH 50; NOTE rollback");
    CHECK_INT(f.acked, 10); /* nothing forgotten: the receiver skipped them */
    step(&f, IN(EPOCH, .epoch = 4242, .assigned = 20), got, sizeof got);
    CHECK_STR(got, "READ 11 1");
    step(&f, IN(READ, .n = 1, .first = 11, .last = 11), got, sizeof got);
    step(&f, OK(11, 4242), got, sizeof got);
    CHECK(f.postbox && f.acked == 11 && f.epoch == 4242);
}

/* Queue control (PB_FSM_IN_RELOAD): a flush resets a queued peer's backoff and tries it
 * now; a drop's new epoch is taken at once (the receiver is learnt again: one event per
 * Push until it acknowledges in it); an emptied queue and a dropped parked event leave the
 * peer in push mode; a parked peer is not flushed. */
static void test_reload(void)
{
    char got[512];
    pb_fsm f;
    /* queued, its probe an hour away: the flush reads the head now */
    pb_fsm_init(&f, PB_MODE_QUEUED, 6, NOW + 3600000, EPOCH, 5, true);
    f.postbox = true;
    step(&f,
         IN(RELOAD, .mode = PB_MODE_QUEUED, .attempts = 0, .next_at = NOW, .epoch = EPOCH, .n = 5),
         got, sizeof got);
    CHECK_STR(got, "READ 1 8");
    CHECK(f.attempts == 0 && f.next_at == 0 && f.postbox);
    /* a drop while a Push is in flight: the new epoch is taken, the Push ends as it ends */
    step(&f, IN(READ, .n = 5, .first = 1, .last = 5), got, sizeof got);
    step(&f, IN(RELOAD, .mode = PB_MODE_PUSH, .epoch = 77, .n = 0), got, sizeof got);
    CHECK_STR(got, "");
    CHECK(f.st == PB_FSM_PUSHING && f.epoch == 77 && !f.postbox && f.mode == PB_MODE_PUSH);
    step(&f, OK(5, EPOCH), got, sizeof got); /* an acknowledgement in the old epoch */
    CHECK_STR(got, "FORGET 5; READ 6 1");
    step(&f, IN(READ, .n = 0), got, sizeof got);
    CHECK(f.st == PB_FSM_IDLE && !f.has_work && f.mode == PB_MODE_PUSH);
    /* the queue emptied while idle and queued: push mode, the probe timer cleared */
    pb_fsm_init(&f, PB_MODE_QUEUED, 3, NOW + 60000, EPOCH, 9, true);
    step(&f, IN(RELOAD, .mode = PB_MODE_PUSH, .epoch = 78, .n = 0), got, sizeof got);
    CHECK(f.mode == PB_MODE_PUSH && f.epoch == 78 && f.attempts == 0 && f.next_at == 0);
    /* parked: a flush does nothing; its parked event dropped: push mode, the rest goes */
    pb_fsm_init(&f, PB_MODE_PARKED, 0, 0, EPOCH, 9, true);
    f.parked_seq = 4;
    step(&f, IN(RELOAD, .mode = PB_MODE_PARKED, .epoch = EPOCH, .n = 5), got, sizeof got);
    CHECK_STR(got, "");
    CHECK(f.mode == PB_MODE_PARKED && f.parked_seq == 4);
    step(&f, IN(RELOAD, .mode = PB_MODE_PUSH, .epoch = 79, .n = 3), got, sizeof got);
    CHECK_STR(got, "READ 1 1");
    CHECK(f.mode == PB_MODE_PUSH && f.parked_seq == 0 && f.epoch == 79);
}

static void test_classes(void)
{
    static const struct {
        pb_err err;
        long status;
        const char *id;
        pb_fsm_result want;
    } t[] = {
        {PB_OK, 200, NULL, PB_PUSH_OK},
        {PB_ERR_NET, 0, NULL, PB_PUSH_TRANSIENT},
        {PB_ERR_TIMEOUT, 0, NULL, PB_PUSH_TRANSIENT},
        {PB_ERR_TLS, 0, NULL, PB_PUSH_TRANSIENT},
        {PB_ERR_BUSY, 0, NULL, PB_PUSH_TRANSIENT},
        {PB_ERR_SHUTDOWN, 0, NULL, PB_PUSH_STOPPED},
        {PB_ERR_PEER, 500, "hrpc.internal-server-error", PB_PUSH_TRANSIENT},
        {PB_ERR_PEER, 503, "hrpc.unavailable", PB_PUSH_TRANSIENT},
        {PB_ERR_PEER, 429, "hrpc.resource-exhausted", PB_PUSH_TRANSIENT},
        {PB_ERR_PEER, 408, "x", PB_PUSH_TRANSIENT},
        {PB_ERR_PEER, 401, "h.bad-time", PB_PUSH_TRANSIENT},
        {PB_ERR_PEER, 401, "h.bad-token-signature", PB_PUSH_TRANSIENT},
        {PB_ERR_PEER, 401, "h.bad-token-audience", PB_PUSH_REFUSED},
        {PB_ERR_PEER, 401, "h.bad-auth", PB_PUSH_REFUSED},
        {PB_ERR_PEER, 403, "h.host-not-allowed", PB_PUSH_REFUSED},
        {PB_ERR_PEER, 400, "hrpc.http.bad-unary-request", PB_PUSH_REFUSED},
        {PB_ERR_PEER, 404, "hrpc.not-found", PB_PUSH_REFUSED},
        {PB_ERR_PEER, 413, "hrpc.resource-exhausted", PB_PUSH_TOO_BIG},
        {PB_ERR_PROTO, 404, NULL, PB_PUSH_REFUSED}, /* a proxy's HTML 404 */
        {PB_ERR_PROTO, 502, NULL, PB_PUSH_TRANSIENT},
        {PB_ERR_PROTO, 200, NULL, PB_PUSH_TRANSIENT}, /* a 200 that is not hRPC */
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        CHECKF(pb_fsm_classify(t[i].err, t[i].status, t[i].id) == t[i].want,
               "%s %ld %s: class %d, want %d", pb_strerror(t[i].err), t[i].status,
               t[i].id ? t[i].id : "", pb_fsm_classify(t[i].err, t[i].status, t[i].id), t[i].want);
}

static void test_backoff(void)
{
    /* min 5 s doubling to the 60 s cap; jitter in [v, 1.5 v] and never above the cap */
    const int64_t lows[] = {5000, 10000, 20000, 40000, 60000, 60000};
    for (uint32_t a = 0; a < 6; a++) {
        CHECK_INT(pb_fsm_backoff_ms(&CFG, a, 0), lows[a]);
        int64_t hi = pb_fsm_backoff_ms(&CFG, a, UINT32_MAX);
        int64_t want_hi = lows[a] + lows[a] / 2 > 60000 ? 60000 : lows[a] + lows[a] / 2;
        CHECKF(hi <= want_hi && hi >= want_hi - 1, "attempts %u: high %lld, want %lld", a,
               (long long)hi, (long long)want_hi);
    }
    CHECK_INT(pb_fsm_backoff_ms(&CFG, 1000, 12345), 60000);
}

int main(void)
{
    test_table();
    test_scenarios();
    test_reload();
    test_classes();
    test_backoff();
    return pbt_finish();
}
