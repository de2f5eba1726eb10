/*
 * nodebeat - one live node per node_id on a shared store (see nodebeat.h).
 *
 * Design: the heartbeat is a lease (pb_store_lease_acquire) like a peer's delivery lease,
 * under a key that cannot be a server ID, so it needs no table of its own. Its holder is
 * "NODE_ID#INSTANCE" with a random instance tag: the same node_id started twice gets two
 * holders, and the second cannot take the lease while the first renews it. Renewal runs
 * on a thread of its own (a third of lease_ttl apart), never on the I/O loop: a store
 * call may block. A renewal that finds the lease taken by another instance (this process
 * stalled past lease_ttl and another node started with our node_id) is logged as an
 * error at each renewal; a store failure is left to the store's health log.
 *
 * Untrusted input: none (node_id comes from the operator's configuration).
 */
#include "daemon/nodebeat.h"

#include <pthread.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/log.h"
#include "util/mem.h"

struct pb_nodebeat {
    pb_store *store;
    char *key, *holder, *node_id;
    int64_t ttl_ms;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *pb_nodebeat_key(const char *node_id)
{
    return pb_xasprintf("#node/%s", node_id);
}

/* Waits until ms from now or until stop; true when stopped. */
static bool wait_ms(pb_nodebeat *b, int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&b->mu);
    while (!b->stop && pthread_cond_timedwait(&b->cv, &b->mu, &ts) == 0)
        ;
    bool stop = b->stop;
    pthread_mutex_unlock(&b->mu);
    return stop;
}

static void *beat_main(void *arg)
{
    pthread_setname_np(pthread_self(), "pb-nodebeat");
    pb_nodebeat *b = arg;
    while (!wait_ms(b, b->ttl_ms / 3 > 0 ? b->ttl_ms / 3 : 1)) {
        bool held = false;
        pb_err err =
            pb_store_lease_acquire(b->store, b->key, b->holder, wall_ms(), b->ttl_ms, &held);
        if (err == PB_OK && !held)
            PB_ERROR(NULL,
                     "node heartbeat: another postboxd now runs with node_id %s on this store "
                     "(this one stalled for more than lease_ttl); give each node its own "
                     "node_id",
                     b->node_id);
        else if (err != PB_OK)
            PB_DEBUG(NULL, "node heartbeat not renewed: %s", pb_strerror(err));
    }
    return NULL;
}

static void beat_free(pb_nodebeat *b)
{
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    free(b->key);
    free(b->holder);
    free(b->node_id);
    free(b);
}

pb_err pb_nodebeat_open(pb_store *s, const char *node_id, int64_t ttl_ms, pb_nodebeat **out)
{
    pb_err err = PB_OK;
    if (!s || !node_id || !*node_id || ttl_ms <= 0 || !out) return PB_ERR_INVAL;
    pb_nodebeat *b = pb_xcalloc(1, sizeof *b);
    pthread_mutex_init(&b->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cv, &ca);
    pthread_condattr_destroy(&ca);
    b->store = s;
    b->ttl_ms = ttl_ms;
    b->node_id = pb_xstrdup(node_id);
    b->key = pb_nodebeat_key(node_id);
    uint8_t tag[8];
    randombytes_buf(tag, sizeof tag);
    char hex[2 * sizeof tag + 1];
    sodium_bin2hex(hex, sizeof hex, tag, sizeof tag);
    b->holder = pb_xasprintf("%s#%s", node_id, hex);

    /* A node that crashed leaves its heartbeat until it expires: wait that long. */
    int64_t deadline = wall_ms() + ttl_ms + 1000;
    bool held = false, said = false;
    for (;;) {
        err = pb_store_lease_acquire(s, b->key, b->holder, wall_ms(), ttl_ms, &held);
        if (err != PB_OK) {
            PB_ERROR(NULL, "cannot take the node heartbeat of node_id %s: %s", node_id,
                     pb_strerror(err));
            goto out;
        }
        if (held) break;
        if (wall_ms() >= deadline) {
            PB_ERROR(NULL,
                     "another live postboxd runs with node_id %s on this store (its heartbeat "
                     "was renewed for %lld s): give each node its own node_id",
                     node_id, (long long)(ttl_ms / 1000 + 1));
            err = PB_ERR_BUSY;
            goto out;
        }
        if (!said) {
            PB_WARN(NULL,
                    "node_id %s holds a heartbeat in the store (another live node with this "
                    "node_id, or this node before a crash): waiting up to %lld s for it to "
                    "expire (lease_ttl)",
                    node_id, (long long)(ttl_ms / 1000 + 1));
            said = true;
        }
        (void)wait_ms(b, 250); /* nobody can stop it yet */
    }
    if (said) PB_INFO(NULL, "node heartbeat of node_id %s taken", node_id);
    if (pthread_create(&b->thread, NULL, beat_main, b) != 0) {
        PB_ERROR(NULL, "cannot start the node heartbeat thread");
        (void)pb_store_lease_release(s, b->key, b->holder);
        err = PB_ERR_INTERNAL;
        goto out;
    }
    *out = b;
    b = NULL;
out:
    if (b) beat_free(b);
    return err;
}

void pb_nodebeat_close(pb_nodebeat *b)
{
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    b->stop = true;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    pthread_join(b->thread, NULL);
    pb_err err = pb_store_lease_release(b->store, b->key, b->holder);
    if (err != PB_OK)
        PB_WARN(NULL, "cannot give the node heartbeat up (it expires after lease_ttl): %s",
                pb_strerror(err));
    beat_free(b);
}
