/*
 * longpoll_test - the admin API's inbox long-poll (GET /v1/inbox?after=N&wait=S) against a
 * real postboxd.
 *
 *   waiters   NPOLLS long-polls at once, five times the admin listener's 4 threads: while they
 *             wait, other admin calls are answered within a second (a waiting request
 *             holds no thread); one event pushed by another postboxd wakes every one of
 *             them with that event, well before their wait is over
 *   timeout   a long-poll with nothing arriving answers an empty list after its wait
 *   stop      a daemon stopped while long-polls wait answers them and exits cleanly
 *
 * Bounded: every wait has a deadline (the harness's HTTP calls time out after 15 s).
 */
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#define NPOLLS 20
#define WAIT_S 10

struct poll {
    const pbt_daemon *d;
    unsigned long long after;
    long status;
    size_t events;
    int64_t took_ms;
    char from[64];
};

static void *poll_main(void *arg)
{
    struct poll *p = arg;
    char path[128];
    snprintf(path, sizeof path, "/v1/inbox?after=%llu&wait=%d", p->after, WAIT_S);
    int64_t t0 = pbt_now_ms();
    json_t *r = pbt_admin(p->d, "GET", path, NULL, &p->status);
    p->took_ms = pbt_now_ms() - t0;
    json_t *evs = json_object_get(r, "events");
    p->events = json_array_size(evs);
    const char *from = json_string_value(json_object_get(json_array_get(evs, 0), "from"));
    snprintf(p->from, sizeof p->from, "%s", from ? from : "");
    json_decref(r);
    return NULL;
}

/* The inbox's last seq of d (the "next" of an empty read from 0 is 0). */
static unsigned long long inbox_last(const pbt_daemon *d)
{
    unsigned long long last = 0;
    for (int guard = 0; guard < 1000; guard++) {
        char path[96];
        long st;
        snprintf(path, sizeof path, "/v1/inbox?after=%llu&limit=1000", last);
        json_t *r = pbt_admin(d, "GET", path, NULL, &st);
        size_t n = json_array_size(json_object_get(r, "events"));
        if (n) last = (unsigned long long)json_integer_value(json_object_get(r, "next"));
        json_decref(r);
        if (st != 200 || n == 0) break;
    }
    return last;
}

static bool submit_one(const pbt_daemon *from, const char *to, unsigned guild)
{
    long st;
    json_t *r =
        pbt_admin(from, "POST", "/v1/outbox",
                  json_pack("{s:s,s:[{s:{s:s,s:I}}]}", "to", to, "events", "userAddedToGuild",
                            "userId", "5", "guildId", (json_int_t)guild),
                  &st);
    json_decref(r);
    CHECKF(st == 202, "submit to %s: %ld", to, st);
    return st == 202;
}

/* Whether d's admin listener counts n open connections or more (its own gauge). */
struct conns_wait {
    const pbt_daemon *d;
    int n;
};

static bool admin_conns(void *vctx)
{
    struct conns_wait *w = vctx;
    return pbt_metric(w->d, "postbox_open_connections{listener=\"admin\"}") >= w->n;
}

static void test_waiters(pbt_daemon *a, pbt_daemon *b)
{
    CHECK(submit_one(a, b->server_id, 1)); /* B learns A's key; A learns B is a postbox */
    unsigned long long last = 0;
    for (int64_t end = pbt_now_ms() + PBT_BOUND_MS; pbt_now_ms() < end && !(last = inbox_last(b));)
        nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
    CHECKF(last >= 1, "the first event arrived at B");

    static struct poll ps[NPOLLS];
    pthread_t thr[NPOLLS];
    for (int i = 0; i < NPOLLS; i++) {
        ps[i] = (struct poll){.d = b, .after = last};
        pthread_create(&thr[i], NULL, poll_main, &ps[i]);
    }
    /* all of them waiting at B: NPOLLS connections, plus this scrape's own */
    struct conns_wait cw = {b, NPOLLS + 1};
    CHECKF(pbt_wait_for(admin_conns, &cw, 30000), "the %d long-polls reached B", NPOLLS);
    /* other calls are served meanwhile */
    for (int i = 0; i < 5; i++) {
        long st;
        int64_t t0 = pbt_now_ms();
        json_t *r = pbt_admin(b, "GET", "/v1/peers", NULL, &st);
        int64_t dt = pbt_now_ms() - t0;
        json_decref(r);
        CHECKF(st == 200 && dt < 1000, "GET /v1/peers beside %d long-polls: %ld in %lld ms", NPOLLS,
               st, (long long)dt);
    }
    int64_t t_push = pbt_now_ms();
    CHECK(submit_one(a, b->server_id, 2));
    for (int i = 0; i < NPOLLS; i++)
        pthread_join(thr[i], NULL);
    int64_t woke = pbt_now_ms() - t_push;
    fprintf(stderr, "longpoll: %d long-polls woken %lld ms after the submission at A\n", NPOLLS,
            (long long)woke);
    for (int i = 0; i < NPOLLS; i++)
        CHECKF(ps[i].status == 200 && ps[i].events == 1 && !strcmp(ps[i].from, a->server_id),
               "long-poll %d: %ld, %zu events from %s", i, ps[i].status, ps[i].events, ps[i].from);
    CHECKF(woke < (WAIT_S - 2) * 1000, "woken by the event (%lld ms), not by their wait",
           (long long)woke);
}

static void test_timeout(pbt_daemon *b)
{
    struct poll p = {.d = b, .after = inbox_last(b)};
    char path[128];
    snprintf(path, sizeof path, "/v1/inbox?after=%llu&wait=1", p.after);
    int64_t t0 = pbt_now_ms();
    json_t *r = pbt_admin(b, "GET", path, NULL, &p.status);
    int64_t took = pbt_now_ms() - t0;
    CHECKF(p.status == 200 && json_array_size(json_object_get(r, "events")) == 0,
           "an empty answer after the wait: %ld", p.status);
    CHECKF(took >= 900 && took < 3000, "answered after its 1 s wait: %lld ms", (long long)took);
    json_decref(r);
}

static void test_stop(void)
{
    pbt_daemon *c = pbt_daemon_new("pollStop", NULL);
    if (!pbt_daemon_start(c)) {
        CHECK(!"pollStop starts");
        pbt_daemon_free(c);
        return;
    }
    struct poll p = {.d = c, .after = 0};
    pthread_t thr;
    pthread_create(&thr, NULL, poll_main, &p);
    struct conns_wait cw = {c, 2};
    CHECKF(pbt_wait_for(admin_conns, &cw, 30000), "the long-poll reached the daemon");
    int64_t t0 = pbt_now_ms();
    CHECK_INT(pbt_daemon_stop(c), 0);
    int64_t stop_ms = pbt_now_ms() - t0;
    pthread_join(thr, NULL);
    CHECKF(stop_ms < 5000, "stopped in %lld ms with a long-poll waiting", (long long)stop_ms);
    CHECKF(p.took_ms < (WAIT_S - 2) * 1000, "the long-poll ended with the daemon (%lld ms, %ld)",
           (long long)p.took_ms, p.status);
    pbt_daemon_free(c);
}

int main(void)
{
    pbt_daemon *a = pbt_daemon_new("pollA", NULL), *b = pbt_daemon_new("pollB", NULL);
    if (!pbt_daemon_start(a) || !pbt_daemon_start(b)) {
        CHECK(!"daemons start");
    } else {
        test_waiters(a, b);
        test_timeout(b);
        test_stop();
    }
    if (pbt_failed) {
        pbt_daemon_dump_log(a);
        pbt_daemon_dump_log(b);
    }
    pbt_daemon_free(a);
    pbt_daemon_free(b);
    return pbt_finish();
}
