/*
 * exec - a thread pool over two FIFO queues (see exec.h): a mutex, a condition variable
 * and a singly linked list of tasks per priority.
 */
#include "util/exec.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "util/log.h"
#include "util/mem.h"

struct task {
    struct task *next;
    pb_exec_fn fn;
    void *ctx;
};

struct pb_exec {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct task *head[2], *tail[2]; /* [0] normal, [1] low */
    size_t pending;
    bool stop;
    pthread_t *threads;
    unsigned n;
};

static void *worker(void *arg)
{
    pthread_setname_np(pthread_self(), "pb-exec");
    pb_exec *e = arg;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        while (!e->head[0] && !e->head[1] && !e->stop)
            pthread_cond_wait(&e->cv, &e->mu);
        int q = e->head[0] ? 0 : 1;
        struct task *t = e->head[q];
        if (!t) break; /* stopping and nothing left */
        e->head[q] = t->next;
        if (!e->head[q]) e->tail[q] = NULL;
        e->pending--;
        pthread_mutex_unlock(&e->mu);
        t->fn(t->ctx);
        free(t);
        pthread_mutex_lock(&e->mu);
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

pb_exec *pb_exec_new(unsigned threads)
{
    pb_exec *e = pb_xcalloc(1, sizeof *e);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    unsigned n = threads ? threads : 4;
    e->threads = pb_xcalloc(n, sizeof *e->threads);
    for (unsigned i = 0; i < n; i++) {
        if (pthread_create(&e->threads[i], NULL, worker, e) != 0) {
            PB_ERROR(NULL, "cannot start executor threads");
            abort();
        }
        e->n++;
    }
    return e;
}

static void enqueue(pb_exec *e, int q, pb_exec_fn fn, void *ctx)
{
    struct task *t = pb_xmalloc(sizeof *t);
    t->next = NULL;
    t->fn = fn;
    t->ctx = ctx;
    pthread_mutex_lock(&e->mu);
    if (e->tail[q])
        e->tail[q]->next = t;
    else
        e->head[q] = t;
    e->tail[q] = t;
    e->pending++;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void pb_exec_run(pb_exec *e, pb_exec_fn fn, void *ctx)
{
    enqueue(e, 0, fn, ctx);
}

void pb_exec_run_low(pb_exec *e, pb_exec_fn fn, void *ctx)
{
    enqueue(e, 1, fn, ctx);
}

size_t pb_exec_pending(pb_exec *e)
{
    pthread_mutex_lock(&e->mu);
    size_t n = e->pending;
    pthread_mutex_unlock(&e->mu);
    return n;
}

void pb_exec_free(pb_exec *e)
{
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->stop = true;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    for (unsigned i = 0; i < e->n; i++)
        pthread_join(e->threads[i], NULL);
    free(e->threads);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    free(e);
}
