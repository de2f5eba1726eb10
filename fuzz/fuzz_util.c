/*
 * fuzz_util - helpers shared by the fuzz targets (see fuzz_util.h).
 *
 * Design: plain functions; the fixture mirrors the composition in lib/daemon.c (same
 * modules, same policy shape) minus the listeners and the network.
 *
 * Untrusted input: none.
 */
#include "fuzz_util.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/log.h"
#include "util/mem.h"

void fuzz_fail(const char *file, int line, const char *what)
{
    fprintf(stderr, "FUZZ INVARIANT BROKEN at %s:%d: %s\n", file, line, what);
    abort();
}

bool fuzz_untouched(const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != FUZZ_SENTINEL) return false;
    return true;
}

char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = pb_xmalloc(size + 1);
    if (size) memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

void fuzz_quiet_log(void)
{
    if (!getenv("FUZZ_VERBOSE")) pb_log_set_level(PB_LOG_ERROR);
}

static const char *SELF_SEED = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
static const char *PEER_SEED = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

static pb_keys *keys_from_hex(const char *hex)
{
    uint8_t seed[PB_SEED_LEN];
    for (size_t i = 0; i < PB_SEED_LEN; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) abort();
        seed[i] = (uint8_t)v;
    }
    pb_keys *k = NULL;
    if (pb_keys_from_seed(seed, &k) != PB_OK) abort();
    return k;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Removes the directories of fuzzer processes that died without cleaning up (a crash
 * aborts before atexit handlers run): postbox-fuzz-<pid>-* whose pid is gone. */
static void remove_stale(const char *base)
{
    DIR *dir = opendir(base);
    if (!dir) return;
    struct dirent *de;
    while ((de = readdir(dir))) {
        long pid;
        if (sscanf(de->d_name, "postbox-fuzz-%ld-", &pid) != 1 || pid <= 0) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char *path = pb_xasprintf("%s/%s", base, de->d_name);
        nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        free(path);
    }
    closedir(dir);
}

#define CHECKED(expr)                                                                              \
    do {                                                                                           \
        pb_err e__ = (expr);                                                                       \
        if (e__ != PB_OK) {                                                                        \
            fprintf(stderr, "fuzz_env: %s: %s\n", #expr, pb_strerror(e__));                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

void fuzz_env_open(fuzz_env *e, bool workers)
{
    memset(e, 0, sizeof *e);
    /* Any call to a peer goes to a closed loopback port: no DNS, no stray connection. */
    setenv("http_proxy", "http://127.0.0.1:9", 1);
    setenv("https_proxy", "http://127.0.0.1:9", 1);
    setenv("ALL_PROXY", "http://127.0.0.1:9", 1);
    unsetenv("no_proxy");
    unsetenv("NO_PROXY");

    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    remove_stale(base);
    e->dir = pb_xasprintf("%s/postbox-fuzz-%ld-XXXXXX", base, (long)getpid());
    if (!mkdtemp(e->dir)) {
        perror("fuzz_env: mkdtemp");
        abort();
    }
    e->self_keys = keys_from_hex(SELF_SEED);
    e->peer_keys = keys_from_hex(PEER_SEED);

    pb_store_opts so;
    pb_store_opts_default(&so);
    so.sync = PB_SYNC_OFF;
    char *spec = pb_xasprintf("sqlite:%s/postbox.db", e->dir);
    CHECKED(pb_store_open(spec, &so, &e->store));
    free(spec);
    char hex[65];
    pb_keys_hex(pb_keys_public(e->self_keys), hex);
    CHECKED(pb_store_meta_set(e->store, "server_id", FUZZ_SELF_ID));
    CHECKED(pb_store_meta_set(e->store, "configured_server_id", FUZZ_SELF_ID));
    CHECKED(pb_store_meta_set(e->store, "public_key", hex));
    int64_t now = (int64_t)time(NULL);
    CHECKED(pb_store_peer_key_set(e->store, FUZZ_PEER_ID, pb_keys_public(e->peer_keys), now));
    pb_event evs[3] = {
        {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 1, .guild_id = 2},
        {.kind = PB_EV_USER_INVITED, .user_id = 3, .inviter_id = 4, .invite_id = "inv-1"},
        {.kind = PB_EV_USER_REMOVED_FROM_GUILD, .user_id = 1, .guild_id = 2},
    };
    CHECKED(pb_store_outbox_append(e->store, FUZZ_PEER_ID, evs, 3, now * 1000, NULL));

    pb_client_opts co = {
        .plain_http = true, .connect_timeout_ms = 1000, .timeout_ms = 2000, .allow_private = true};
    CHECKED(pb_client_new(&co, &e->client));
    pb_keyfetch_opts ko = {.store = e->store, .client = e->client, .timeout_ms = 1000};
    e->keyfetch = pb_keyfetch_new(&ko);
    e->policy = (pb_auth_policy){.window_s = 60, .key_retry_after_s = 30};
    pb_delivery_opts d = {
        .server_id = FUZZ_SELF_ID,
        .keys = e->self_keys,
        .store = e->store,
        .client = e->client,
        .keyfetch = e->keyfetch,
        .policy = &e->policy,
        .store_threads = 2,
        .pull_batch = 100,
        .pull_max_bytes = 64 * 1024,
        .push_wait_ms = 100,
        .push_retries = 1,
        .retry_base_ms = 10,
        .backoff_min_s = 1,
        .backoff_max_s = 2,
    };
    CHECKED(pb_delivery_new(&d, &e->delivery));
    e->policy.is_self = pb_delivery_is_self;
    e->policy.self_ctx = e->delivery;
    if (workers) CHECKED(pb_delivery_start(e->delivery));
}

void fuzz_env_close(fuzz_env *e)
{
    pb_delivery_stop(e->delivery);
    pb_ioloop_stop(pb_client_loop(e->client));
    pb_delivery_free(e->delivery);
    pb_keyfetch_free(e->keyfetch);
    pb_client_free(e->client);
    pb_store_close(e->store);
    pb_keys_free(e->self_keys);
    pb_keys_free(e->peer_keys);
    if (e->dir) nftw(e->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(e->dir);
    memset(e, 0, sizeof *e);
}
