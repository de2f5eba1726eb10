/*
 * ioloop - the outbound I/O loop: a loop thread that owns an epoll set, a heap of timers
 * and a queue of tasks posted by other threads, and beside it a transfer thread that owns
 * the libcurl multi handles (shards of the peers). Everything that talks to peers (pushes,
 * drain probes, pulls, key fetches, rename notices) runs as non-blocking libcurl transfers
 * (hrpc_client.h), and the delivery engine's state lives on the loop thread, so that no
 * peer, however slow or hung, holds a thread.
 *
 * Design: libcurl's socket interface (CURLMOPT_SOCKETFUNCTION / TIMERFUNCTION) registers
 * the transfers' sockets in the transfer thread's epoll set (the "ephiperfifo" pattern of
 * libcurl's examples); an eventfd in each set wakes its thread for posted tasks or handed
 * transfers. The loop thread's round: wait (until the earliest timer), run posted tasks
 * (among them finished transfers' done callbacks), serve watched descriptors, run due
 * timers. The transfer thread's: wait (until the earliest libcurl timeout), add handed
 * transfers, let libcurl act on ready sockets and timeouts, hand finished transfers back.
 * Time is CLOCK_MONOTONIC in milliseconds (pb_ioloop_now_ms): a wall-clock jump moves no
 * timer.
 *
 * Threads: pb_ioloop_post and pb_ioloop_call are safe from any thread; every other
 * function is for the loop thread only (a callback, a timer or a posted task), except a
 * transfer's own libcurl callbacks, which run on the transfer thread.
 *
 * Untrusted input: none here (transfers' data is checked by their owners).
 */
#ifndef PB_IOLOOP_H
#define PB_IOLOOP_H

#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "postbox.h"

typedef struct pb_ioloop pb_ioloop;
typedef void (*pb_ioloop_fn)(void *ctx);

typedef struct pb_ioloop_opts {
    long max_connections; /* libcurl's connection cache, in use and idle (CURLMOPT_MAXCONNECTS);
                             0: 1024. Open connections are not capped here: the callers cap
                             their transfers */
} pb_ioloop_opts;

/* Monotonic milliseconds (CLOCK_MONOTONIC). */
int64_t pb_ioloop_now_ms(void);

/* Creates a loop (not running). opts may be NULL. Caller frees with pb_ioloop_free.
 * PB_ERR_IO when epoll/eventfd cannot be made, PB_ERR_INTERNAL when libcurl fails. */
pb_err pb_ioloop_new(const pb_ioloop_opts *opts, pb_ioloop **out);
/* Starts the loop thread. */
pb_err pb_ioloop_start(pb_ioloop *l);
/* Stops the loop: tasks already posted run, every transfer still in the multi handle is
 * finished with CURLE_ABORTED_BY_CALLBACK (its done callback runs), timers are dropped,
 * the thread is joined. Tasks posted afterwards run on the posting thread at once (there
 * is no loop any more). Idempotent; not from the loop thread. */
void pb_ioloop_stop(pb_ioloop *l);
void pb_ioloop_free(pb_ioloop *l); /* stops first; NULL is a no-op */

/* Runs fn(ctx) on the loop thread soon (FIFO). Any thread. */
void pb_ioloop_post(pb_ioloop *l, pb_ioloop_fn fn, void *ctx);
/* Runs fn(ctx) on the loop thread and waits for it to return. Any thread; called on the
 * loop thread, or when the loop does not run (not started, or stopped), it just calls fn. */
void pb_ioloop_call(pb_ioloop *l, pb_ioloop_fn fn, void *ctx);
/* True on the loop thread. */
bool pb_ioloop_on_loop(const pb_ioloop *l);

/* ---- timers (loop thread) ------------------------------------------------------------- */

/* A one-shot timer, embedded in its owner's struct; zero-initialised or pb_timer_init'd
 * it is disarmed. It must be disarmed before its memory goes away. */
typedef struct pb_timer {
    int64_t at;      /* monotonic ms */
    size_t heap_idx; /* 1-based position in the loop's heap, 0 when disarmed */
    pb_ioloop_fn fn;
    void *ctx;
} pb_timer;

void pb_timer_init(pb_timer *t, pb_ioloop_fn fn, void *ctx);
/* Arms (or re-arms) t to fire at `at_ms` (monotonic). */
void pb_ioloop_timer_arm(pb_ioloop *l, pb_timer *t, int64_t at_ms);
void pb_ioloop_timer_cancel(pb_ioloop *l, pb_timer *t);
static inline bool pb_timer_armed(const pb_timer *t)
{
    return t->heap_idx != 0;
}
/* Number of armed timers (tests). */
size_t pb_ioloop_timer_count(const pb_ioloop *l);

/* ---- other descriptors and the end of the loop (loop thread) ----------------------------- */

enum { PB_IOLOOP_IN = 1, PB_IOLOOP_OUT = 2, PB_IOLOOP_ERR = 4 };
typedef void (*pb_ioloop_fd_fn)(void *ctx, int fd, int events);
/* Watches fd for `events` (PB_IOLOOP_IN and/or PB_IOLOOP_OUT): fn(ctx, fd, what happened)
 * runs on the loop thread; events 0 stops watching it. For the few descriptors that are
 * not libcurl's (the name resolver's). PB_ERR_IO when epoll refuses it. */
pb_err pb_ioloop_watch(pb_ioloop *l, int fd, int events, pb_ioloop_fd_fn fn, void *ctx);
/* fn(ctx) runs on the loop thread when the loop stops, before the transfers still running
 * are finished: owners of work that is not a transfer end it there. At most 8. Any thread;
 * off_stop takes the hook back (an owner that goes away before the loop stops). */
void pb_ioloop_on_stop(pb_ioloop *l, pb_ioloop_fn fn, void *ctx);
void pb_ioloop_off_stop(pb_ioloop *l, pb_ioloop_fn fn, void *ctx);

/* ---- transfers (loop thread; used by hrpc_client) --------------------------------------- */

typedef void (*pb_ioloop_done_fn)(void *ctx, CURLcode rc);
/* Hands a configured easy handle to the transfer thread; done(ctx, rc) runs on the loop
 * thread when it finishes (rc CURLE_ABORTED_BY_CALLBACK when the loop stops,
 * CURLE_FAILED_INIT when libcurl refused it). Until then the handle is the transfer
 * thread's, and so are its callbacks (CURLOPT_WRITEFUNCTION and the like run there): the
 * caller touches neither. The handle's CURLOPT_PRIVATE is the loop's. key (NULL: "") picks the
 * multi handle: transfers that may share a connection (the same host and port) must give the same
 * key. PB_ERR_SHUTDOWN when the loop is stopping (done is not called). */
pb_err pb_ioloop_add(pb_ioloop *l, CURL *h, const char *key, pb_ioloop_done_fn done, void *ctx);

#endif
