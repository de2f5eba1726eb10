/*
 * exec_test - the thread pool (lib/util/exec.h): every task runs once; with one thread,
 * FIFO within a priority and normal tasks before low ones; free runs what is still queued.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "harness.h"
#include "util/exec.h"

/* One thread held by a gate task while the others are queued behind it. */
struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open, entered;
};

static void gate_fn(void *ctx)
{
    struct gate *g = ctx;
    pthread_mutex_lock(&g->mu);
    g->entered = true;
    pthread_cond_broadcast(&g->cv);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

struct order {
    int seen[16];
    int n;
};

struct step {
    struct order *o;
    int id;
};

static void step_fn(void *ctx)
{
    struct step *s = ctx; /* one worker thread: no lock needed */
    s->o->seen[s->o->n++] = s->id;
}

static void test_priorities(void)
{
    pb_exec *e = pb_exec_new(1);
    struct gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false};
    pb_exec_run(e, gate_fn, &g);
    pthread_mutex_lock(&g.mu);
    while (!g.entered)
        pthread_cond_wait(&g.cv, &g.mu);
    pthread_mutex_unlock(&g.mu);

    /* queued while the only thread is held: low 1, normal 2, low 3, normal 4 */
    struct order o = {0};
    struct step s[4] = {{&o, 1}, {&o, 2}, {&o, 3}, {&o, 4}};
    pb_exec_run_low(e, step_fn, &s[0]);
    pb_exec_run(e, step_fn, &s[1]);
    pb_exec_run_low(e, step_fn, &s[2]);
    pb_exec_run(e, step_fn, &s[3]);
    CHECK_INT(pb_exec_pending(e), 4);
    pthread_mutex_lock(&g.mu);
    g.open = true;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    pb_exec_free(e); /* runs everything still queued, then joins */
    CHECK_INT(o.n, 4);
    int want[4] = {2, 4, 1, 3};
    for (int i = 0; i < 4 && i < o.n; i++)
        CHECKF(o.seen[i] == want[i], "task %d ran as number %d, want task %d", o.seen[i], i,
               want[i]);
}

static atomic_int g_count;

static void count_fn(void *ctx)
{
    (void)ctx;
    atomic_fetch_add(&g_count, 1);
}

static void test_many(void)
{
    pb_exec *e = pb_exec_new(4);
    for (int i = 0; i < 10000; i++) {
        if (i % 3)
            pb_exec_run(e, count_fn, NULL);
        else
            pb_exec_run_low(e, count_fn, NULL);
    }
    pb_exec_free(e);
    CHECK_INT(atomic_load(&g_count), 10000);
    pb_exec_free(NULL);
}

int main(void)
{
    test_priorities();
    test_many();
    return pbt_finish();
}
