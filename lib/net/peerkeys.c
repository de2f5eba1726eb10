/*
 * peerkeys - peer public keys: store, then fetch, with a per-peer rate limit (see
 * peerkeys.h). The rate-limit table is in memory (a restart resets it, which is harmless)
 * and bounded: the oldest entries are forgotten past PK_MAX_TRACKED peers.
 */
#include "net/peerkeys.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/log.h"
#include "util/mem.h"
#include "util/serverid.h"

#define PK_MAX_TRACKED 4096

struct attempt {
    char server_id[PB_SERVER_ID_MAX];
    int64_t at;     /* monotonic seconds of the last fetch attempt */
    bool in_flight; /* a fetch is running now */
};

struct pb_peerkeys {
    pb_store *store;
    pb_client *client;
    int min_refetch_s;
    pthread_mutex_t mu;
    struct attempt *attempts;
    size_t nattempts;
};

static int64_t mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec;
}

pb_peerkeys *pb_peerkeys_new(pb_store *store, pb_client *client, int min_refetch_s)
{
    pb_peerkeys *pk = pb_xcalloc(1, sizeof *pk);
    pk->store = store;
    pk->client = client;
    pk->min_refetch_s = min_refetch_s > 0 ? min_refetch_s : 30;
    pthread_mutex_init(&pk->mu, NULL);
    return pk;
}

void pb_peerkeys_free(pb_peerkeys *pk)
{
    if (!pk) return;
    pthread_mutex_destroy(&pk->mu);
    free(pk->attempts);
    free(pk);
}

/* Claims the right to fetch server_id's key now; false when a fetch was made less than
 * min_refetch_s ago. */
static bool claim_fetch(pb_peerkeys *pk, const char *server_id)
{
    int64_t now = mono_s();
    bool ok = true;
    pthread_mutex_lock(&pk->mu);
    size_t oldest = 0;
    for (size_t i = 0; i < pk->nattempts; i++) {
        if (strcmp(pk->attempts[i].server_id, server_id) == 0) {
            if (now - pk->attempts[i].at < pk->min_refetch_s) {
                ok = false;
            } else {
                pk->attempts[i].at = now;
                pk->attempts[i].in_flight = true;
            }
            goto out;
        }
        if (pk->attempts[i].at < pk->attempts[oldest].at) oldest = i;
    }
    struct attempt *slot;
    if (pk->nattempts < PK_MAX_TRACKED) {
        pk->attempts = pb_xrealloc(pk->attempts, (pk->nattempts + 1) * sizeof *pk->attempts);
        slot = &pk->attempts[pk->nattempts++];
    } else {
        slot = &pk->attempts[oldest];
    }
    snprintf(slot->server_id, sizeof slot->server_id, "%s", server_id);
    slot->at = now;
    slot->in_flight = true;
out:
    pthread_mutex_unlock(&pk->mu);
    return ok;
}

static struct attempt *find_attempt(pb_peerkeys *pk, const char *server_id)
{
    for (size_t i = 0; i < pk->nattempts; i++)
        if (strcmp(pk->attempts[i].server_id, server_id) == 0) return &pk->attempts[i];
    return NULL;
}

static bool fetch_in_flight(pb_peerkeys *pk, const char *server_id)
{
    pthread_mutex_lock(&pk->mu);
    struct attempt *a = find_attempt(pk, server_id);
    bool r = a && a->in_flight;
    pthread_mutex_unlock(&pk->mu);
    return r;
}

static void fetch_done(pb_peerkeys *pk, const char *server_id)
{
    pthread_mutex_lock(&pk->mu);
    struct attempt *a = find_attempt(pk, server_id);
    if (a) a->in_flight = false;
    pthread_mutex_unlock(&pk->mu);
}

pb_err pb_peerkeys_fetch_remote(pb_peerkeys *pk, const char *server_id, uint8_t key[32])
{
    pb_client_answer ans;
    pb_err err = pb_client_fetch_key(pk->client, server_id, key, &ans);
    if (err != PB_OK)
        PB_WARN(server_id, "key fetch failed: %s (%s)", pb_strerror(err),
                ans.message ? ans.message : "");
    pb_client_answer_clear(&ans);
    return err;
}

static pb_err fetch_and_store(pb_peerkeys *pk, const char *server_id, uint8_t key[32])
{
    if (!claim_fetch(pk, server_id)) {
        /* Another request fetched (or is fetching) it just now: it may be stored already. */
        for (int i = 0; i < 50; i++) {
            if (pb_store_peer_key_get(pk->store, server_id, key) == PB_OK) return PB_OK;
            if (!fetch_in_flight(pk, server_id)) break;
            struct timespec ts = {0, 100 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        PB_DEBUG(server_id, "key fetch skipped: last attempt under %d s ago", pk->min_refetch_s);
        return PB_ERR_BUSY;
    }
    pb_err err = pb_peerkeys_fetch_remote(pk, server_id, key);
    if (err == PB_OK) {
        /* A store failure does not make the fetched key wrong: use it, keep it next time. */
        pb_err serr = pb_store_peer_key_set(pk->store, server_id, key, (int64_t)time(NULL));
        if (serr != PB_OK) PB_WARN(server_id, "cannot store fetched key: %s", pb_strerror(serr));
    }
    fetch_done(pk, server_id);
    if (err != PB_OK) return err;
    char hex[65];
    pb_keys_hex(key, hex);
    PB_INFO(server_id, "learnt public key %s", hex);
    return PB_OK;
}

pb_err pb_peerkeys_get(void *ctx, const char *server_id, bool refresh, uint8_t key[32], bool *fresh)
{
    pb_peerkeys *pk = ctx;
    *fresh = false;
    if (!refresh) {
        pb_err err = pb_store_peer_key_get(pk->store, server_id, key);
        if (err != PB_ERR_NOT_FOUND) return err;
    }
    uint8_t fetched[32];
    pb_err err = fetch_and_store(pk, server_id, fetched);
    if (err != PB_OK) return err;
    memcpy(key, fetched, 32);
    *fresh = true;
    return PB_OK;
}
