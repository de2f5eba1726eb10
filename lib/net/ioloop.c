/*
 * ioloop - the outbound I/O loop (see ioloop.h for the model).
 *
 * Two threads. The loop thread runs posted tasks, timers, watched descriptors and every
 * transfer's done callback; the transfer thread runs libcurl: every multi handle, their
 * sockets in its own epoll set, their timeouts. A transfer is handed over (pb_ioloop_add
 * queues its record under `xmu` and wakes the transfer thread's eventfd when the queue was
 * empty) and handed back when it finishes (a posted task that runs its done callback on
 * the loop thread), so that libcurl's cost per transfer (its system calls, request and
 * response handling, some 40 us a Push) runs beside the delivery engine's state machines
 * instead of on their thread. A handle belongs to the transfer thread from the hand-over
 * until it is removed from its multi handle, which happens there, before the hand-back.
 *
 * Posted tasks sit in a singly linked FIFO under `mu`; the eventfd is written only when
 * the queue goes from empty to non-empty, and the loop takes the whole queue at once.
 * The transfer thread keeps its transfers in a doubly linked list of records
 * (CURLOPT_PRIVATE points at the record) so that stop can finish every one of them.
 * Transfers are spread over several libcurl multi handles ("shards") by a key (the peer),
 * so that a peer's transfers share one connection cache: libcurl 7.88 walks its whole
 * connection cache in every curl_multi_remove_handle (to close connect-only connections),
 * which with a thousand peers' kept connections in one cache was a seventh of the loop's
 * time per Push (at most 8 shards: each holds its own copy of the CA store). Each shard has its own
 * timeout; epoll's data carries the descriptor and its shard. Timers are a binary min-heap
 * of pointers into their owners' structs; each timer knows its heap position, so cancel
 * and re-arm are O(log n).
 */
#include "net/ioloop.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "util/hash.h"
#include "util/fault.h"
#include "util/log.h"
#include "util/mem.h"

#define MAX_EVENTS 256
#define MAX_WAIT_MS 1000

struct task {
    struct task *next;
    pb_ioloop_fn fn;
    void *ctx;
};

struct xfer_rec {
    struct xfer_rec *xprev, *xnext; /* the hand-over queue, then the transfer thread's list */
    CURL *h;
    struct shard *sh;
    pb_ioloop_done_fn done;
    void *ctx;
    CURLcode rc; /* set by the transfer thread before the hand-back */
};

struct watch {
    int fd;
    pb_ioloop_fd_fn fn;
    void *ctx;
};

#define MAX_STOP_HOOKS 8
/* Few shards: libcurl 7.88 also caches the CA store per multi handle (OpenSSL: Debian's
 * bundle is 0.8 MiB and 34 ms of CPU to load), so each shard costs one more copy once it
 * opens a TLS connection. 8 shards: a walk 1/8 as long, 6 MiB of CA stores. */
#define MAX_SHARDS 8
#define CONNS_PER_SHARD 256 /* the cache's size per shard that sets their number */

/* One libcurl multi handle and its timeout. */
struct shard {
    pb_ioloop *l;
    CURLM *multi;
    unsigned idx;
    int64_t deadline; /* monotonic ms; -1 = none */
    bool acted;       /* libcurl acted since its finished transfers were last read */
};

/* epoll data: the descriptor in the low 32 bits, its shard + 1 above (0: not libcurl's). */
static uint64_t ev_data(int fd, const struct shard *sh)
{
    return (uint64_t)(uint32_t)fd | ((uint64_t)(sh ? sh->idx + 1 : 0) << 32);
}

struct pb_ioloop {
    int epfd, evfd;
    struct watch *watches; /* loop thread only: descriptors that are not libcurl's */
    size_t nwatches, capwatches;
    struct {
        pb_ioloop_fn fn;
        void *ctx;
    } on_stop[MAX_STOP_HOOKS];
    size_t non_stop;
    struct shard *shards;
    unsigned nshards;
    pthread_t thread;
    bool started, joined;

    pthread_mutex_t mu; /* tasks and the stop flag */
    struct task *head, *tail;
    bool stopping, stopped;

    /* the transfer thread */
    int xepfd, xevfd;
    pthread_t xthread;
    bool xstarted;
    pthread_mutex_t xmu;           /* the hand-over queue and xstop */
    struct xfer_rec *xq, *xq_tail; /* handed over, not yet added (xnext links) */
    bool xstop;
    struct xfer_rec *xactive; /* transfer thread only: in a multi handle */
    pb_timer **heap;          /* loop thread only; heap[0] unused, 1-based */
    size_t nheap, capheap;
};

int64_t pb_ioloop_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* An eventfd wakes its thread: wake adds one (EAGAIN: the counter is already non-zero,
 * the thread will wake anyway); drain reads it back to zero before the queue is taken. */
static void wake(int evfd)
{
    uint64_t one = 1;
    ssize_t w = write(evfd, &one, sizeof one);
    (void)w;
}

static void drain(int evfd)
{
    uint64_t v;
    ssize_t r = read(evfd, &v, sizeof v);
    (void)r;
}

/* ---- timers: a min-heap on `at` ----------------------------------------------------------- */

static void heap_set(pb_ioloop *l, size_t i, pb_timer *t)
{
    l->heap[i] = t;
    t->heap_idx = i;
}

static void heap_up(pb_ioloop *l, size_t i)
{
    pb_timer *t = l->heap[i];
    while (i > 1 && l->heap[i / 2]->at > t->at) {
        heap_set(l, i, l->heap[i / 2]);
        i /= 2;
    }
    heap_set(l, i, t);
}

static void heap_down(pb_ioloop *l, size_t i)
{
    pb_timer *t = l->heap[i];
    for (;;) {
        size_t c = 2 * i;
        if (c > l->nheap) break;
        if (c + 1 <= l->nheap && l->heap[c + 1]->at < l->heap[c]->at) c++;
        if (l->heap[c]->at >= t->at) break;
        heap_set(l, i, l->heap[c]);
        i = c;
    }
    heap_set(l, i, t);
}

void pb_timer_init(pb_timer *t, pb_ioloop_fn fn, void *ctx)
{
    memset(t, 0, sizeof *t);
    t->fn = fn;
    t->ctx = ctx;
}

void pb_ioloop_timer_cancel(pb_ioloop *l, pb_timer *t)
{
    size_t i = t->heap_idx;
    if (!i) return;
    t->heap_idx = 0;
    pb_timer *last = l->heap[l->nheap--];
    if (i <= l->nheap) {
        heap_set(l, i, last);
        heap_up(l, i);
        heap_down(l, last->heap_idx);
    }
}

void pb_ioloop_timer_arm(pb_ioloop *l, pb_timer *t, int64_t at_ms)
{
    pb_ioloop_timer_cancel(l, t);
    t->at = at_ms;
    if (l->nheap + 1 >= l->capheap) {
        l->capheap = l->capheap ? 2 * l->capheap : 64;
        l->heap = pb_xrealloc(l->heap, l->capheap * sizeof *l->heap);
    }
    l->nheap++;
    heap_set(l, l->nheap, t);
    heap_up(l, l->nheap);
}

size_t pb_ioloop_timer_count(const pb_ioloop *l)
{
    return l->nheap;
}

/* Runs the timers due at `now`; a timer armed again by its own callback for `now` or
 * earlier runs at the next iteration, not in this one (no livelock). */
static void run_timers(pb_ioloop *l, int64_t now)
{
    size_t budget = l->nheap;
    while (budget-- > 0 && l->nheap > 0 && l->heap[1]->at <= now) {
        pb_timer *t = l->heap[1];
        pb_ioloop_timer_cancel(l, t);
        t->fn(t->ctx);
    }
}

/* ---- libcurl callbacks (transfer thread) -------------------------------------------------- */

static int on_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct shard *sh = userp;
    pb_ioloop *l = sh->l;
    if (what == CURL_POLL_REMOVE) {
        if (socketp) epoll_ctl(l->xepfd, EPOLL_CTL_DEL, s, NULL);
        curl_multi_assign(sh->multi, s, NULL);
        return 0;
    }
    struct epoll_event ev = {0};
    ev.data.u64 = ev_data(s, sh);
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) ev.events |= EPOLLIN;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) ev.events |= EPOLLOUT;
    if (socketp) {
        if (epoll_ctl(l->xepfd, EPOLL_CTL_MOD, s, &ev) != 0)
            PB_ERROR(NULL, "ioloop: epoll_ctl MOD failed: %s", strerror(errno));
    } else {
        if (epoll_ctl(l->xepfd, EPOLL_CTL_ADD, s, &ev) != 0)
            PB_ERROR(NULL, "ioloop: epoll_ctl ADD failed: %s", strerror(errno));
        curl_multi_assign(sh->multi, s, (void *)1);
    }
    return 0;
}

static int on_timer(CURLM *m, long timeout_ms, void *userp)
{
    struct shard *sh = userp;
    sh->deadline = timeout_ms < 0 ? -1 : pb_ioloop_now_ms() + timeout_ms;
    return 0;
}

/* ---- hand-over and hand-back ------------------------------------------------------------- */

/* Loop thread: a finished transfer's done callback. */
static void finished_on_loop(void *arg)
{
    struct xfer_rec *r = arg;
    pb_ioloop_done_fn done = r->done;
    void *ctx = r->ctx;
    CURLcode rc = r->rc;
    free(r);
    done(ctx, rc);
}

/* Transfer thread: r's handle is out of its multi handle (or never went in); back to the
 * loop thread with rc. */
static void hand_back(pb_ioloop *l, struct xfer_rec *r, CURLcode rc)
{
    r->rc = rc;
    pb_ioloop_post(l, finished_on_loop, r);
}

static void xactive_unlink(pb_ioloop *l, struct xfer_rec *r)
{
    if (r->xprev)
        r->xprev->xnext = r->xnext;
    else
        l->xactive = r->xnext;
    if (r->xnext) r->xnext->xprev = r->xprev;
    r->xprev = r->xnext = NULL;
}

/* Transfer thread: every finished transfer of shard sh goes back. */
static void check_done(pb_ioloop *l, struct shard *sh)
{
    CURLMsg *msg;
    int left;
    sh->acted = false;
    while ((msg = curl_multi_info_read(sh->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        CURL *h = msg->easy_handle;
        CURLcode rc = msg->data.result;
        struct xfer_rec *r = NULL;
        curl_easy_getinfo(h, CURLINFO_PRIVATE, (char **)&r);
        curl_multi_remove_handle(sh->multi, h);
        if (!r) continue;
        xactive_unlink(l, r);
        hand_back(l, r, rc);
    }
}

/* Transfer thread: the handles handed over since the last round go into their multi
 * handles; returns whether the thread is to stop. */
static bool take_handed(pb_ioloop *l)
{
    drain(l->xevfd);
    pthread_mutex_lock(&l->xmu);
    struct xfer_rec *r = l->xq;
    l->xq = l->xq_tail = NULL;
    bool stop = l->xstop;
    pthread_mutex_unlock(&l->xmu);
    for (struct xfer_rec *next; r; r = next) {
        next = r->xnext;
        r->xnext = NULL;
        if (stop) {
            hand_back(l, r, CURLE_ABORTED_BY_CALLBACK);
            continue;
        }
        /* (the fault point stands in for libcurl refusing a transfer: out of memory) */
        CURLMcode mc = pb_fault("ioloop.add-refused") ? CURLM_OUT_OF_MEMORY
                                                      : curl_multi_add_handle(r->sh->multi, r->h);
        if (mc != CURLM_OK) {
            PB_ERROR(NULL, "ioloop: curl_multi_add_handle: %s", curl_multi_strerror(mc));
            hand_back(l, r, CURLE_FAILED_INIT);
            continue;
        }
        r->xnext = l->xactive;
        if (l->xactive) l->xactive->xprev = r;
        l->xactive = r;
    }
    return stop;
}

/* The same key, the same shard. */
static struct shard *shard_of(pb_ioloop *l, const char *key)
{
    return &l->shards[pb_hash_str(key ? key : "") % l->nshards];
}

pb_err pb_ioloop_add(pb_ioloop *l, CURL *h, const char *key, pb_ioloop_done_fn done, void *ctx)
{
    pthread_mutex_lock(&l->mu);
    bool stopping = l->stopping;
    pthread_mutex_unlock(&l->mu);
    if (stopping) return PB_ERR_SHUTDOWN;
    struct xfer_rec *r = pb_xcalloc(1, sizeof *r);
    r->h = h;
    r->done = done;
    r->ctx = ctx;
    r->sh = shard_of(l, key);
    curl_easy_setopt(h, CURLOPT_PRIVATE, (char *)r);
    pthread_mutex_lock(&l->xmu);
    bool was_empty = l->xq == NULL;
    if (l->xq_tail)
        l->xq_tail->xnext = r;
    else
        l->xq = r;
    l->xq_tail = r;
    pthread_mutex_unlock(&l->xmu);
    if (was_empty) wake(l->xevfd);
    return PB_OK;
}

/* ---- other descriptors ------------------------------------------------------------------------
 */

static struct watch *watch_find(pb_ioloop *l, int fd)
{
    for (size_t i = 0; i < l->nwatches; i++)
        if (l->watches[i].fd == fd) return &l->watches[i];
    return NULL;
}

pb_err pb_ioloop_watch(pb_ioloop *l, int fd, int events, pb_ioloop_fd_fn fn, void *ctx)
{
    struct watch *w = watch_find(l, fd);
    if (!events) {
        if (!w) return PB_OK;
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
        *w = l->watches[--l->nwatches];
        return PB_OK;
    }
    struct epoll_event ev = {.data.u64 = ev_data(fd, NULL)};
    if (events & PB_IOLOOP_IN) ev.events |= EPOLLIN;
    if (events & PB_IOLOOP_OUT) ev.events |= EPOLLOUT;
    if (epoll_ctl(l->epfd, w ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) != 0) {
        PB_ERROR(NULL, "ioloop: epoll_ctl for descriptor %d failed: %s", fd, strerror(errno));
        return PB_ERR_IO;
    }
    if (!w) {
        if (l->nwatches == l->capwatches) {
            l->capwatches = l->capwatches ? 2 * l->capwatches : 8;
            l->watches = pb_xrealloc(l->watches, l->capwatches * sizeof *l->watches);
        }
        w = &l->watches[l->nwatches++];
    }
    *w = (struct watch){fd, fn, ctx};
    return PB_OK;
}

void pb_ioloop_on_stop(pb_ioloop *l, pb_ioloop_fn fn, void *ctx)
{
    pthread_mutex_lock(&l->mu);
    if (l->non_stop == MAX_STOP_HOOKS) abort(); /* a programming error */
    l->on_stop[l->non_stop].fn = fn;
    l->on_stop[l->non_stop].ctx = ctx;
    l->non_stop++;
    pthread_mutex_unlock(&l->mu);
}

void pb_ioloop_off_stop(pb_ioloop *l, pb_ioloop_fn fn, void *ctx)
{
    pthread_mutex_lock(&l->mu);
    for (size_t i = 0; i < l->non_stop; i++)
        if (l->on_stop[i].fn == fn && l->on_stop[i].ctx == ctx) {
            l->on_stop[i] = l->on_stop[--l->non_stop];
            break;
        }
    pthread_mutex_unlock(&l->mu);
}

/* Runs the stop hooks (loop thread, once). */
static void run_stop_hooks(pb_ioloop *l)
{
    for (;;) {
        pthread_mutex_lock(&l->mu);
        if (!l->non_stop) {
            pthread_mutex_unlock(&l->mu);
            return;
        }
        pb_ioloop_fn fn = l->on_stop[l->non_stop - 1].fn;
        void *ctx = l->on_stop[l->non_stop - 1].ctx;
        l->non_stop--;
        pthread_mutex_unlock(&l->mu);
        fn(ctx);
    }
}

/* ---- posted tasks ---------------------------------------------------------------------------- */

void pb_ioloop_post(pb_ioloop *l, pb_ioloop_fn fn, void *ctx)
{
    pthread_mutex_lock(&l->mu);
    if (l->stopped) {
        pthread_mutex_unlock(&l->mu);
        fn(ctx); /* no loop any more: run here */
        return;
    }
    struct task *t = pb_xmalloc(sizeof *t);
    t->next = NULL;
    t->fn = fn;
    t->ctx = ctx;
    bool was_empty = l->head == NULL;
    if (l->tail)
        l->tail->next = t;
    else
        l->head = t;
    l->tail = t;
    pthread_mutex_unlock(&l->mu);
    if (was_empty) wake(l->evfd);
}

/* Runs the tasks queued now; returns how many ran. */
static size_t run_tasks(pb_ioloop *l)
{
    drain(l->evfd);
    pthread_mutex_lock(&l->mu);
    struct task *t = l->head;
    l->head = l->tail = NULL;
    pthread_mutex_unlock(&l->mu);
    size_t n = 0;
    while (t) {
        struct task *next = t->next;
        t->fn(t->ctx);
        free(t);
        t = next;
        n++;
    }
    return n;
}

struct call_ctx {
    pb_ioloop_fn fn;
    void *ctx;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
};

static void call_trampoline(void *arg)
{
    struct call_ctx *c = arg;
    c->fn(c->ctx);
    pthread_mutex_lock(&c->mu);
    c->done = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

void pb_ioloop_call(pb_ioloop *l, pb_ioloop_fn fn, void *ctx)
{
    pthread_mutex_lock(&l->mu);
    bool inline_run = !l->started || l->stopped;
    pthread_mutex_unlock(&l->mu);
    if (inline_run || pb_ioloop_on_loop(l)) {
        fn(ctx);
        return;
    }
    struct call_ctx c = {.fn = fn, .ctx = ctx};
    pthread_mutex_init(&c.mu, NULL);
    pthread_cond_init(&c.cv, NULL);
    pb_ioloop_post(l, call_trampoline, &c);
    pthread_mutex_lock(&c.mu);
    while (!c.done)
        pthread_cond_wait(&c.cv, &c.mu);
    pthread_mutex_unlock(&c.mu);
    pthread_cond_destroy(&c.cv);
    pthread_mutex_destroy(&c.mu);
}

bool pb_ioloop_on_loop(const pb_ioloop *l)
{
    return l->started && !l->joined && pthread_equal(pthread_self(), l->thread);
}

/* ---- the loop ------------------------------------------------------------------------------ */

static int wait_for(int64_t until, int64_t now)
{
    if (until < 0) return MAX_WAIT_MS;
    int64_t w = until - now;
    if (w < 0) return 0;
    return w > MAX_WAIT_MS ? MAX_WAIT_MS : (int)w;
}

/* Loop thread: the transfer thread ends every transfer (each comes back as a task with
 * CURLE_ABORTED_BY_CALLBACK) and is joined. */
static void shutdown_transfers(pb_ioloop *l)
{
    if (!l->xstarted) return;
    pthread_mutex_lock(&l->xmu);
    l->xstop = true;
    pthread_mutex_unlock(&l->xmu);
    wake(l->xevfd);
    pthread_join(l->xthread, NULL);
    l->xstarted = false;
}

static void *loop_main(void *arg)
{
    pthread_setname_np(pthread_self(), "pb-loop");
    pb_ioloop *l = arg;
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        /* A round's log lines (one per delivery on a busy engine) go out in one write
         * before the loop waits again. */
        pb_log_flush();
        int64_t until = l->nheap > 0 ? l->heap[1]->at : -1;
        int n = epoll_wait(l->epfd, evs, MAX_EVENTS, wait_for(until, pb_ioloop_now_ms()));
        pb_log_hold();
        if (n < 0 && errno != EINTR) {
            PB_ERROR(NULL, "ioloop: epoll_wait failed: %s", strerror(errno));
            n = 0;
        }
        for (int i = 0; i < n; i++) {
            int fd = (int)(uint32_t)evs[i].data.u64;
            if (fd == l->evfd) {
                run_tasks(l);
                continue;
            }
            struct watch *w = watch_find(l, fd);
            if (!w) continue; /* unwatched by an earlier callback of this round */
            int what = 0;
            if (evs[i].events & EPOLLIN) what |= PB_IOLOOP_IN;
            if (evs[i].events & EPOLLOUT) what |= PB_IOLOOP_OUT;
            if (evs[i].events & (EPOLLERR | EPOLLHUP)) what |= PB_IOLOOP_ERR;
            w->fn(w->ctx, fd, what);
        }
        run_timers(l, pb_ioloop_now_ms());
        pthread_mutex_lock(&l->mu);
        bool stop = l->stopping;
        pthread_mutex_unlock(&l->mu);
        if (stop) break;
    }
    pb_log_flush();
    /* Finish: what was posted runs, transfers end, timers are dropped. Tasks may post
     * more tasks; a bounded number of rounds keeps a buggy task from spinning forever. */
    for (int round = 0; round < 100 && run_tasks(l) > 0; round++)
        ;
    run_stop_hooks(l);
    shutdown_transfers(l);
    for (int round = 0; round < 100 && run_tasks(l) > 0; round++)
        ;
    while (l->nheap > 0)
        pb_ioloop_timer_cancel(l, l->heap[1]);
    pthread_mutex_lock(&l->mu);
    l->stopped = true;
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* The transfer thread: libcurl acts on its sockets and timeouts; handles come in from
 * the hand-over queue and go back to the loop thread when they finish. */
static void *xfer_main(void *arg)
{
    pthread_setname_np(pthread_self(), "pb-transfer");
    pb_ioloop *l = arg;
    struct epoll_event evs[MAX_EVENTS];
    bool stop = false;
    while (!stop) {
        int64_t until = -1;
        for (unsigned i = 0; i < l->nshards; i++) {
            int64_t d = l->shards[i].deadline;
            if (d >= 0 && (until < 0 || d < until)) until = d;
        }
        int n = epoll_wait(l->xepfd, evs, MAX_EVENTS, wait_for(until, pb_ioloop_now_ms()));
        if (n < 0 && errno != EINTR) {
            PB_ERROR(NULL, "ioloop: epoll_wait failed: %s", strerror(errno));
            n = 0;
        }
        int running;
        for (int i = 0; i < n; i++) {
            int fd = (int)(uint32_t)evs[i].data.u64;
            unsigned tag = (unsigned)(evs[i].data.u64 >> 32);
            if (!tag) {
                if (fd == l->xevfd) stop = take_handed(l);
                continue;
            }
            if (tag > l->nshards) continue; /* cannot happen: we wrote it */
            struct shard *sh = &l->shards[tag - 1];
            int mask = 0;
            if (evs[i].events & EPOLLIN) mask |= CURL_CSELECT_IN;
            if (evs[i].events & EPOLLOUT) mask |= CURL_CSELECT_OUT;
            if (evs[i].events & (EPOLLERR | EPOLLHUP)) mask |= CURL_CSELECT_ERR;
            curl_multi_socket_action(sh->multi, fd, mask, &running);
            sh->acted = true;
        }
        int64_t now = pb_ioloop_now_ms();
        for (unsigned i = 0; i < l->nshards; i++) {
            struct shard *sh = &l->shards[i];
            if (sh->deadline >= 0 && sh->deadline <= now) {
                sh->deadline = -1;
                curl_multi_socket_action(sh->multi, CURL_SOCKET_TIMEOUT, 0, &running);
                sh->acted = true;
            }
        }
        for (unsigned i = 0; i < l->nshards; i++)
            if (l->shards[i].acted) check_done(l, &l->shards[i]);
    }
    /* Stopping: what is still in a multi handle ends unfinished. */
    while (l->xactive) {
        struct xfer_rec *r = l->xactive;
        xactive_unlink(l, r);
        curl_multi_remove_handle(r->sh->multi, r->h);
        hand_back(l, r, CURLE_ABORTED_BY_CALLBACK);
    }
    return NULL;
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static CURLcode g_init_rc = CURLE_FAILED_INIT;

static void global_init(void)
{
    g_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

pb_err pb_ioloop_new(const pb_ioloop_opts *opts, pb_ioloop **out)
{
    pthread_once(&g_once, global_init);
    /* (fault points stand in for libcurl failing to start: tests of start-up) */
    CURLcode init_rc = pb_fault("ioloop.curl-init-fails") ? CURLE_FAILED_INIT : g_init_rc;
    if (init_rc != CURLE_OK) {
        PB_ERROR(NULL, "curl_global_init failed: %s", curl_easy_strerror(init_rc));
        return PB_ERR_INTERNAL;
    }
    pb_ioloop *l = pb_xcalloc(1, sizeof *l);
    l->epfd = l->evfd = l->xepfd = l->xevfd = -1;
    pthread_mutex_init(&l->mu, NULL);
    pthread_mutex_init(&l->xmu, NULL);
    pb_err err = PB_ERR_IO;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    l->xepfd = epoll_create1(EPOLL_CLOEXEC);
    l->xevfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->epfd < 0 || l->evfd < 0 || l->xepfd < 0 || l->xevfd < 0) {
        PB_ERROR(NULL, "ioloop: cannot create epoll/eventfd: %s", strerror(errno));
        goto fail;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ev_data(l->evfd, NULL)};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->evfd, &ev) != 0) goto fail;
    ev = (struct epoll_event){.events = EPOLLIN, .data.u64 = ev_data(l->xevfd, NULL)};
    if (epoll_ctl(l->xepfd, EPOLL_CTL_ADD, l->xevfd, &ev) != 0) goto fail;
    err = PB_ERR_INTERNAL;
    long maxc = opts && opts->max_connections > 0 ? opts->max_connections : 1024;
    long ns = maxc / CONNS_PER_SHARD;
    l->nshards = ns < 1 ? 1 : ns > MAX_SHARDS ? MAX_SHARDS : (unsigned)ns;
    /* Each shard's cache: its share and half as much again, for keys that hash unevenly. */
    long per = maxc / (long)l->nshards;
    per += per / 2;
    l->shards = pb_xcalloc(l->nshards, sizeof *l->shards);
    for (unsigned i = 0; i < l->nshards; i++) {
        struct shard *sh = &l->shards[i];
        sh->l = l;
        sh->idx = i;
        sh->deadline = -1;
        sh->multi = pb_fault("ioloop.no-multi") ? NULL : curl_multi_init();
        if (!sh->multi) {
            PB_ERROR(NULL, "ioloop: curl_multi_init failed (out of memory)");
            goto fail;
        }
        curl_multi_setopt(sh->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
        curl_multi_setopt(sh->multi, CURLMOPT_SOCKETDATA, sh);
        curl_multi_setopt(sh->multi, CURLMOPT_TIMERFUNCTION, on_timer);
        curl_multi_setopt(sh->multi, CURLMOPT_TIMERDATA, sh);
        /* No CURLMOPT_MAX_TOTAL_CONNECTIONS: the callers cap their transfers (the delivery
         * engine's scheduler, the key fetcher), and at that cap libcurl 7.88 scans every
         * connection for an idle one to close before each new transfer (quadratic with
         * thousands of peers). The daemon sizes the cache (in use and idle) above its
         * transfer cap, so that returning a connection rarely scans for the oldest either. */
        curl_multi_setopt(sh->multi, CURLMOPT_MAXCONNECTS, per);
    }
    *out = l;
    return PB_OK;
fail:
    pb_ioloop_free(l);
    return err;
}

pb_err pb_ioloop_start(pb_ioloop *l)
{
    /* (the fault points stand in for a pthread_create that fails: tests of start-up) */
    if (pb_fault("ioloop.no-transfer-thread") ||
        pthread_create(&l->xthread, NULL, xfer_main, l) != 0) {
        PB_ERROR(NULL, "ioloop: cannot start the transfer thread");
        return PB_ERR_INTERNAL;
    }
    l->xstarted = true;
    if (pb_fault("ioloop.no-loop-thread") || pthread_create(&l->thread, NULL, loop_main, l) != 0) {
        PB_ERROR(NULL, "ioloop: cannot start the I/O thread");
        shutdown_transfers(l);
        return PB_ERR_INTERNAL;
    }
    l->started = true;
    return PB_OK;
}

void pb_ioloop_stop(pb_ioloop *l)
{
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    bool was = l->stopping;
    l->stopping = true;
    if (!l->started) l->stopped = true;
    pthread_mutex_unlock(&l->mu);
    if (!l->started || l->joined) return;
    if (!was) wake(l->evfd);
    pthread_join(l->thread, NULL);
    l->joined = true;
}

void pb_ioloop_free(pb_ioloop *l)
{
    if (!l) return;
    pb_ioloop_stop(l);
    shutdown_transfers(l); /* started, but the loop thread was not (its start failed) */
    /* Tasks posted between the loop's last round and `stopped` ran there; none remain. */
    struct task *t = l->head;
    while (t) {
        struct task *next = t->next;
        t->fn(t->ctx);
        free(t);
        t = next;
    }
    for (unsigned i = 0; l->shards && i < l->nshards; i++)
        if (l->shards[i].multi) curl_multi_cleanup(l->shards[i].multi);
    free(l->shards);
    if (l->epfd >= 0) close(l->epfd);
    if (l->evfd >= 0) close(l->evfd);
    if (l->xepfd >= 0) close(l->xepfd);
    if (l->xevfd >= 0) close(l->xevfd);
    free(l->heap);
    free(l->watches);
    pthread_mutex_destroy(&l->mu);
    free(l);
}
