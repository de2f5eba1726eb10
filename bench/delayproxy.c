/*
 * pbbench_delayproxy - a TCP proxy on 127.0.0.1 that delays every byte by a fixed time in
 * each direction, to measure postbox between peers far apart (RTT = 2 x the delay) on one
 * machine. Benchmark tool, never part of the daemon.
 *
 *   pbbench_delayproxy --target PORT --delay-ms D [--port N] [--max-conns N]
 *
 * Each accepted connection gets its own connection to 127.0.0.1:TARGET. What one side
 * sends is read at once, stamped with its arrival time, and written to the other side D ms
 * later, in order; bytes are not interpreted (HTTP, TLS: anything). Connection set-up costs
 * what TCP's handshake costs over that path, one round trip (2 x D) before the client's
 * first byte can leave: the kernel completes the handshake with the client at once, so
 * what the client sends in the first 2 x D after the accept is taken as sent at its end
 * (its first bytes reach the target 3 x D after the accept, as over a real path; protocols
 * where the client speaks first: HTTP, TLS). The upstream connection is opened at accept
 * time. A close (EOF) is forwarded after the bytes before it, also D ms later; an error on
 * either side closes both.
 *
 * Design: one thread, epoll, level-triggered. Each direction holds a FIFO of chunks with
 * their due times; the epoll timeout is the earliest due chunk. A direction holding more
 * than 8 MiB stops reading its source until it drains (bounded memory per connection,
 * like a TCP window). Prints "port N" on stdout once listening; runs until SIGTERM/SIGINT.
 *
 * Untrusted input: none beyond bytes passed through (never parsed); every buffer bounded.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 65536
#define HOLD_MAX (8u << 20)

struct chunk {
    struct chunk *next;
    int64_t due_us;
    size_t len, off;
    bool eof; /* a forwarded close: shut the destination's write side */
    unsigned char data[];
};

struct dir {
    int src, dst;
    struct chunk *head, *tail;
    size_t held;
    bool src_eof, dst_shut;
};

struct conn {
    struct conn *prev, *next;
    struct dir d[2]; /* 0: client to target, 1: target to client */
    int fd[2];       /* client, upstream */
    int64_t open_us; /* accepted at */
    bool dead;
};

static volatile sig_atomic_t g_stop;
static int g_ep;
static struct conn *g_conns;
static long g_nconns;

static void on_signal(int s)
{
    (void)s;
    g_stop = 1;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) abort();
    return p;
}

/* The events a side's fd waits for: readable while its outgoing direction has room,
 * writable while its incoming direction has a due chunk. */
static void rearm(struct conn *c, int side, int64_t now)
{
    struct dir *out = &c->d[side], *in = &c->d[1 - side];
    uint32_t ev = 0;
    if (!out->src_eof && out->held < HOLD_MAX) ev |= EPOLLIN;
    if (in->head && in->head->due_us <= now && !in->dst_shut) ev |= EPOLLOUT;
    struct epoll_event e = {.events = ev, .data.ptr = (void *)((uintptr_t)c | (uintptr_t)side)};
    epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd[side], &e);
}

static void conn_close(struct conn *c)
{
    for (int i = 0; i < 2; i++) {
        struct chunk *k = c->d[i].head;
        while (k) {
            struct chunk *n = k->next;
            free(k);
            k = n;
        }
        close(c->fd[i]);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        g_conns = c->next;
    if (c->next) c->next->prev = c->prev;
    g_nconns--;
    free(c);
}

static void push_chunk(struct dir *d, const unsigned char *p, size_t n, bool eof, int64_t due)
{
    struct chunk *k = xmalloc(sizeof *k + n);
    k->next = NULL;
    k->due_us = due;
    k->len = n;
    k->off = 0;
    k->eof = eof;
    if (n) memcpy(k->data, p, n);
    if (d->tail)
        d->tail->next = k;
    else
        d->head = k;
    d->tail = k;
    d->held += n;
}

/* Reads what side's fd has into its outgoing direction. False: close the connection. */
static bool do_read(struct conn *c, int side, int64_t delay_us)
{
    struct dir *d = &c->d[side];
    unsigned char buf[CHUNK];
    ssize_t n = read(c->fd[side], buf, sizeof buf);
    if (n < 0) return errno == EAGAIN || errno == EINTR;
    int64_t sent = now_us();
    if (side == 0 && sent < c->open_us + 2 * delay_us) /* the handshake's round trip */
        sent = c->open_us + 2 * delay_us;
    push_chunk(d, buf, (size_t)n, n == 0, sent + delay_us);
    if (n == 0) d->src_eof = true;
    return true;
}

/* Writes side's incoming direction's due chunks to its fd. False: close the connection. */
static bool do_write(struct conn *c, int side, int64_t now)
{
    struct dir *d = &c->d[1 - side];
    while (d->head && d->head->due_us <= now) {
        struct chunk *k = d->head;
        if (k->eof) {
            shutdown(c->fd[side], SHUT_WR);
            d->dst_shut = true;
        } else {
            ssize_t n = write(c->fd[side], k->data + k->off, k->len - k->off);
            if (n < 0) return errno == EAGAIN || errno == EINTR;
            k->off += (size_t)n;
            d->held -= (size_t)n;
            if (k->off < k->len) return true;
        }
        d->head = k->next;
        if (!d->head) d->tail = NULL;
        free(k);
    }
    return true;
}

static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 1024) != 0) {
        perror("pbbench_delayproxy: listen");
        exit(1);
    }
    return fd;
}

static void accept_one(int lfd, int target, long max_conns)
{
    int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
    if (cfd < 0) return;
    if (g_nconns >= max_conns) {
        close(cfd);
        return;
    }
    int ufd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)target)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (ufd < 0 || (connect(ufd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS)) {
        close(cfd);
        if (ufd >= 0) close(ufd);
        return;
    }
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(ufd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct conn *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->fd[0] = cfd;
    c->fd[1] = ufd;
    c->open_us = now_us();
    c->next = g_conns;
    if (g_conns) g_conns->prev = c;
    g_conns = c;
    g_nconns++;
    for (int s = 0; s < 2; s++) {
        struct epoll_event e = {.events = EPOLLIN,
                                .data.ptr = (void *)((uintptr_t)c | (uintptr_t)s)};
        epoll_ctl(g_ep, EPOLL_CTL_ADD, c->fd[s], &e);
    }
}

int main(int argc, char **argv)
{
    long target = 0, delay_ms = -1, port = 0, max_conns = 4096;
    for (int i = 1; i + 1 < argc; i += 2) {
        long v = strtol(argv[i + 1], NULL, 10);
        if (!strcmp(argv[i], "--target"))
            target = v;
        else if (!strcmp(argv[i], "--delay-ms"))
            delay_ms = v;
        else if (!strcmp(argv[i], "--port"))
            port = v;
        else if (!strcmp(argv[i], "--max-conns"))
            max_conns = v;
    }
    if (target <= 0 || target > 65535 || delay_ms < 0 || delay_ms > 10000 || port < 0 ||
        port > 65535 || max_conns < 1 || (argc - 1) % 2) {
        fprintf(stderr, "usage: pbbench_delayproxy --target PORT --delay-ms D [--port N] "
                        "[--max-conns N]\n");
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int lfd = listen_on((int)port);
    struct sockaddr_in bound;
    socklen_t bl = sizeof bound;
    getsockname(lfd, (struct sockaddr *)&bound, &bl);
    g_ep = epoll_create1(0);
    struct epoll_event le = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(g_ep, EPOLL_CTL_ADD, lfd, &le);
    printf("port %u\n", ntohs(bound.sin_port));
    fflush(stdout);

    int64_t delay_us = delay_ms * 1000;
    struct epoll_event evs[256];
    while (!g_stop) {
        int64_t now = now_us(), next = now + 1000000;
        for (struct conn *c = g_conns; c; c = c->next)
            for (int i = 0; i < 2; i++)
                if (c->d[i].head && c->d[i].head->due_us < next) next = c->d[i].head->due_us;
        int timeout = next <= now ? 0 : (int)((next - now + 999) / 1000);
        int n = epoll_wait(g_ep, evs, 256, timeout);
        for (int i = 0; i < n; i++) {
            if (!evs[i].data.ptr) {
                accept_one(lfd, (int)target, max_conns);
                continue;
            }
            uintptr_t v = (uintptr_t)evs[i].data.ptr;
            struct conn *c = (struct conn *)(v & ~(uintptr_t)1);
            int side = (int)(v & 1);
            if (c->dead) continue;
            if ((evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !c->d[side].src_eof &&
                !do_read(c, side, delay_us))
                c->dead = true;
            if (!c->dead && (evs[i].events & EPOLLOUT) && !do_write(c, side, now_us()))
                c->dead = true;
            if (!c->dead && (evs[i].events & EPOLLERR)) c->dead = true;
        }
        /* due chunks, re-arming, and connections ended both ways or failed */
        now = now_us();
        struct conn *c = g_conns;
        while (c) {
            struct conn *nx = c->next;
            if (!c->dead)
                for (int s = 0; s < 2 && !c->dead; s++)
                    if (!do_write(c, s, now)) c->dead = true;
            if (c->dead || (c->d[0].dst_shut && c->d[1].dst_shut)) {
                conn_close(c);
            } else {
                rearm(c, 0, now);
                rearm(c, 1, now);
            }
            c = nx;
        }
    }
    while (g_conns)
        conn_close(g_conns);
    close(lfd);
    close(g_ep);
    return 0;
}
