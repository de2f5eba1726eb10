/*
 * keyfetch_test - the shares of peer key fetches (lib/net/keyfetch.h), against key servers
 * on 127.0.0.1: listening sockets that never accept (a fetch then runs to its timeout) and
 * in-test identities that answer at once (tests/harness.h, pbt_ident).
 *
 *   share     one client address has at most per_client fetches queued or running: its
 *             next one is refused at once (PB_ERR_NOT_FOUND, RetryInfo 1), while another
 *             address's fetch of a genuine key server starts and ends with the key
 *   refetch   a re-fetch (the stored key failed) is allowed once per refetch_s per server
 *             ID and client address: address X's second re-fetch is refused, address Y's
 *             first one is made (tokens forged from X cannot use up Y's re-fetch)
 */
#include <netinet/in.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "net/hrpc_client.h"
#include "net/keyfetch.h"
#include "store/store.h"

struct got {
    atomic_bool done;
    pb_err err;
    uint8_t key[32];
};

static void on_key(void *ctx, pb_err err, const uint8_t key[32])
{
    struct got *g = ctx;
    g->err = err;
    if (key) memcpy(g->key, key, 32);
    atomic_store(&g->done, true);
}

static bool done(void *ctx)
{
    return atomic_load(&((struct got *)ctx)->done);
}

/* A socket listening on 127.0.0.1 that never accepts: its server ID into id. */
static int hung_server(char id[64])
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 16) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0)
        abort();
    snprintf(id, 64, "127.0.0.1:%u", ntohs(sa.sin_port));
    return fd;
}

int main(void)
{
    char *dir = pbt_tmpdir("keyfetch");
    char spec[600];
    snprintf(spec, sizeof spec, "sqlite:%s/k.db", dir);
    pb_store *st = NULL;
    CHECK_OK(pb_store_open(spec, NULL, &st));
    pb_client *c = NULL;
    pb_client_opts co = {.plain_http = true, .allow_private = true};
    CHECK_OK(pb_client_new(&co, &c));
    pb_keyfetch_opts ko = {.store = st,
                           .client = c,
                           .max_concurrent = 8,
                           .max_queued = 8,
                           .per_client = 2,
                           .refetch_s = 10,
                           .timeout_ms = 3000};
    pb_keyfetch *kf = pb_keyfetch_new(&ko);
    const uint8_t A[16] = {1}, B[16] = {2}, X[16] = {3}, Y[16] = {4};
    uint8_t key[32];
    bool stored;
    uint32_t ra;

    /* share: A's third fetch (of hung key servers) is refused, B's fetch of a genuine one
     * is made */
    char hung[3][64];
    int hfd[3];
    for (int i = 0; i < 3; i++)
        hfd[i] = hung_server(hung[i]);
    static struct got ga[3], gb;
    for (int i = 0; i < 2; i++)
        CHECK_ERR(pb_keyfetch_get(kf, hung[i], false, A, key, &stored, on_key, &ga[i], &ra),
                  PB_ERR_BUSY);
    CHECK_ERR(pb_keyfetch_get(kf, hung[2], false, A, key, &stored, on_key, &ga[2], &ra),
              PB_ERR_NOT_FOUND);
    CHECKF(ra == 1, "A's third fetch refused with RetryInfo %u", ra);
    pbt_ident *good = pbt_ident_new(NULL);
    if (!good) return pbt_finish();
    CHECK_ERR(pb_keyfetch_get(kf, good->server_id, false, B, key, &stored, on_key, &gb, &ra),
              PB_ERR_BUSY);
    CHECK(pbt_wait_for(done, &gb, PBT_BOUND_MS));
    CHECKF(gb.err == PB_OK && !memcmp(gb.key, good->serve, 32), "B's fetch: %s",
           pb_strerror(gb.err));
    CHECKF(!atomic_load(&ga[0].done) && !atomic_load(&ga[1].done),
           "A's fetches of hung key servers still run");

    /* refetch: the store holds an old key of R2; R2 serves a new one */
    pbt_ident *rot = pbt_ident_new(NULL);
    if (!rot) return pbt_finish();
    uint8_t old[32];
    memset(old, 7, sizeof old);
    CHECK_OK(pb_store_peer_key_set(st, rot->server_id, old, 1));
    static struct got gx, gx2, gy;
    CHECK_ERR(pb_keyfetch_get(kf, rot->server_id, false, X, key, &stored, on_key, &gx, &ra), PB_OK);
    CHECK(stored && !memcmp(key, old, 32));
    CHECK_ERR(pb_keyfetch_get(kf, rot->server_id, true, X, key, &stored, on_key, &gx, &ra),
              PB_ERR_BUSY);
    CHECK(pbt_wait_for(done, &gx, PBT_BOUND_MS));
    CHECKF(gx.err == PB_OK && !memcmp(gx.key, rot->serve, 32), "X's re-fetch: %s",
           pb_strerror(gx.err));
    CHECK_ERR(pb_keyfetch_get(kf, rot->server_id, true, X, key, &stored, on_key, &gx2, &ra),
              PB_ERR_NOT_FOUND);
    CHECKF(ra >= 1 && ra <= 10, "X's second re-fetch refused, retry after %u s", ra);
    pb_err err = pb_keyfetch_get(kf, rot->server_id, true, Y, key, &stored, on_key, &gy, &ra);
    CHECKF(err == PB_ERR_BUSY, "Y's re-fetch after X's: %s (retry after %u s)", pb_strerror(err),
           ra);
    if (err == PB_ERR_BUSY) {
        CHECK(pbt_wait_for(done, &gy, PBT_BOUND_MS));
        CHECKF(gy.err == PB_OK && !memcmp(gy.key, rot->serve, 32), "Y's re-fetch: %s",
               pb_strerror(gy.err));
    }
    pb_keyfetch_stats s;
    pb_keyfetch_stats_get(kf, &s);
    fprintf(stderr, "keyfetch: %llu started, %llu ok, %llu refused, %u running\n",
            (unsigned long long)s.started, (unsigned long long)s.ok, (unsigned long long)s.refused,
            s.running);

    pb_client_free(c); /* stops the loop: A's hung fetches end (shutdown) */
    pb_keyfetch_free(kf);
    for (int i = 0; i < 3; i++)
        close(hfd[i]);
    pbt_ident_free(good);
    pbt_ident_free(rot);
    pb_store_close(st);
    pbt_rmrf(dir);
    free(dir);
    return pbt_finish();
}
