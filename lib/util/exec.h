/*
 * exec - a fixed pool of threads running queued tasks, FIFO within two priorities (a task
 * queued as low runs only when no normal one waits). The delivery engine
 * runs its store reads and commits here so that they never block the I/O loop (the loop
 * posts a task, the task does the blocking store call and posts its completion back).
 * Several tasks in flight at once also let the SQLite writer group their commits.
 *
 * Untrusted input: none.
 */
#ifndef PB_EXEC_H
#define PB_EXEC_H

#include <stddef.h>

typedef struct pb_exec pb_exec;
typedef void (*pb_exec_fn)(void *ctx);

/* threads >= 1 (0 means 4). Aborts when no thread can be started (like running out of
 * memory). Caller frees with pb_exec_free. */
pb_exec *pb_exec_new(unsigned threads);
/* Queues fn(ctx); any thread. */
void pb_exec_run(pb_exec *e, pb_exec_fn fn, void *ctx);
/* Queues fn(ctx) behind every normal task (background work); any thread. */
void pb_exec_run_low(pb_exec *e, pb_exec_fn fn, void *ctx);
/* Tasks queued and not started. */
size_t pb_exec_pending(pb_exec *e);
/* Runs everything still queued, then joins the threads. NULL is a no-op. */
void pb_exec_free(pb_exec *e);

#endif
