/*
 * daemon - a running postbox server: the composition root of the library. Opens, in
 * order, the data directory, this server's key pair, the store, the peer client and key
 * source, then the federation listener (hRPC) and the admin listener (JSON); closes them
 * in reverse. postboxd is a thin shell around pb_daemon_open/close.
 *
 * Start-up runs the configuration test (check.c) before it creates anything, so that an
 * invalid configuration leaves nothing behind; then it takes an exclusive flock on
 * DATA_DIR/postbox.lock (one daemon per data directory). A failed open ends in
 * pb_daemon_close, which accepts every part unopened.
 *
 * Identity: the store remembers the server ID it was created for (meta "server_id") and
 * the public key (meta "public_key"); starting with a different server ID or key file
 * than the store's is refused rather than silently mixing identities, unless rename_from
 * names the store's ID: then, once serving, the store is re-labelled and the peers told
 * as postboxctl rename does.
 *
 * Untrusted input: hRPC requests (through hrpc_server, auth and wire) and admin requests
 * (through admin_http); this file only routes them.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "net/admin_http.h"
#include "admin/adminapi.h"
#include "admin/monitor.h"
#include "daemon/check.h"
#include "daemon/config.h"
#include "daemon/nodebeat.h"
#include "delivery/delivery.h"
#include "delivery/inbound.h"
#include "store/faultvfs.h"
#include "net/hrpc_client.h"
#include "net/hrpc_server.h"
#include "crypto/keys.h"
#include "util/log.h"
#include "util/mem.h"
#include "util/metrics.h"
#include "util/metrics_std.h"
#include "net/ioloop.h"
#include "net/keyfetch.h"
#include "store/store.h"
#include "wire/wire.h"

#define PATH_KEY "/protocol.auth.v1.AuthService/Key"
#define PATH_PULL "/protocol.sync.v1.PostboxService/Pull"
#define PATH_PUSH "/protocol.sync.v1.PostboxService/Push"
#define PATH_NOTIFY "/protocol.sync.v1.PostboxService/NotifyNewId"

struct pb_daemon {
    char server_id[PB_SERVER_ID_MAX];
    pb_keys *keys;
    pb_store *store;
    pb_nodebeat *beat; /* several nodes: this node_id's heartbeat; NULL otherwise */
    pb_client *client;
    pb_ioloop *loop;
    pb_keyfetch *keyfetch;
    pb_auth_policy policy;
    pthread_rwlock_t policy_mu; /* held for writing while a reload swaps the lists */
    bool policy_mu_init;
    pb_auth_cache *auth_cache;
    char **allow, **deny;
    size_t nallow, ndeny;
    pb_config *cfg; /* the running configuration (pb_daemon_reload compares with it) */
    pb_delivery *delivery;
    pb_adminapi_ctx api;
    pb_hrpc_server *fed;
    pb_admin_http *admin;
    /* this daemon's metrics (two daemons in one process keep theirs apart) */
    pb_metrics *metrics;
    pb_metrics_std *mstd;
    pb_monitor *monitor;
    pb_admin_http *metrics_http; /* metrics_listen, or NULL */
    int lock_fd;                 /* DATA_DIR/postbox.lock, flock'd while open; -1 */
    /* rename_from: the ID to re-label the store to once serving, "" for none */
    char rename_to[PB_SERVER_ID_MAX];
};

#define LOCK_FILE "postbox.lock"

/* ---- federation handlers ------------------------------------------------------------- */

/* max_connections_per_ip for the listener: 0 in the configuration means no limit. */
static unsigned per_addr_limit(const pb_config *c)
{
    return c->max_connections_per_ip ? (unsigned)c->max_connections_per_ip : UINT_MAX;
}

/* A per-client-address share: off (0) with the per-address connection limit. */
static unsigned per_addr_share(const pb_config *c, uint64_t share)
{
    return c->max_connections_per_ip ? (unsigned)share : 0;
}

/* The window we announce to senders (PROTOCOL.md 5): push_window, but no more batches
 * than one client address may have suspended (all but one of them may wait ahead of a gap)
 * or hold in bodies of max_body. */
static unsigned window_announce(const pb_config *c)
{
    uint64_t w = c->push_window;
    if (c->max_connections_per_ip) {
        if (c->max_suspended_per_ip + 1 < w) w = c->max_suspended_per_ip + 1;
        uint64_t by_mem = c->max_body ? c->body_memory_per_ip / c->max_body : w;
        if (by_mem < w) w = by_mem;
    }
    return w > 1 ? (unsigned)w : 1;
}

static void h_key(void *ctx, const pb_hrpc_request *req, pb_hrpc_reply *rep)
{
    pb_daemon *d = ctx;
    if (pb_wire_empty_decode(req->body, req->body_len) != PB_OK) {
        pb_hrpc_reply_error(rep, 400, "hrpc.http.bad-unary-request", "body is not a KeyRequest");
        return;
    }
    pb_wire_key_resp_encode(pb_keys_public(d->keys), &rep->body);
}

/* ---- life cycle ------------------------------------------------------------------------ */

pb_err pb_keygen(const char *path, char pubhex[65], bool *created)
{
    pb_keys *k = NULL;
    pb_err err = pb_keys_load_or_create(path, &k, created);
    if (err != PB_OK) goto out;
    pb_keys_hex(pb_keys_public(k), pubhex);
out:
    pb_keys_free(k);
    return err;
}

static pb_err ensure_dir(const char *path)
{
    if (mkdir(path, 0700) == 0) return PB_OK;
    if (errno != EEXIST) {
        PB_ERROR(NULL, "cannot create data directory %s: %s", path, strerror(errno));
        return PB_ERR_IO;
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        PB_ERROR(NULL, "data directory %s is not a directory", path);
        return PB_ERR_CONFIG;
    }
    return PB_OK;
}

/*
 * Records or checks the identity the store belongs to. The store's server_id is the truth
 * once set; `configured_server_id` remembers what the configuration said, so that after
 * `postboxctl rename` the daemon keeps its new ID while the file still names the old one.
 * A configuration naming a third ID is refused.
 */
static pb_err check_identity(pb_daemon *d, const char *cfg_id)
{
    char hex[65];
    pb_keys_hex(pb_keys_public(d->keys), hex);
    char *stored = NULL, *configured = NULL, *pub = NULL;
    pb_err err = pb_store_meta_get(d->store, "server_id", &stored);
    if (err == PB_ERR_NOT_FOUND) {
        err = pb_store_meta_set(d->store, "server_id", cfg_id);
        if (err == PB_OK) err = pb_store_meta_set(d->store, "configured_server_id", cfg_id);
        if (err == PB_OK) err = pb_store_meta_set(d->store, "public_key", hex);
        goto out;
    }
    if (err != PB_OK) goto out;
    err = pb_store_meta_get(d->store, "configured_server_id", &configured);
    if (err == PB_ERR_NOT_FOUND)
        configured = pb_xstrdup(stored);
    else if (err != PB_OK)
        goto out;
    err = PB_OK;
    if (strcmp(stored, cfg_id) == 0) {
        if (strcmp(configured, cfg_id) != 0)
            err = pb_store_meta_set(d->store, "configured_server_id", cfg_id);
    } else if (d->cfg->rename_from && strcmp(d->cfg->rename_from, stored) == 0) {
        /* done by pb_daemon_open once serving, as postboxctl rename does */
        snprintf(d->rename_to, sizeof d->rename_to, "%s", cfg_id);
    } else if (strcmp(configured, cfg_id) == 0) {
        PB_INFO(NULL,
                "this server was renamed to %s; server_id in the configuration still says "
                "%s (update it when convenient)",
                stored, cfg_id);
    } else {
        PB_ERROR(NULL,
                 "the store belongs to server %s, but server_id is %s: to change this "
                 "server's ID, start once with --rename-from %s (re-labels the store and tells "
                 "every peer), or set server_id back to %s",
                 stored, cfg_id, stored, stored);
        err = PB_ERR_CONFIG;
    }
    if (err == PB_OK && d->cfg->rename_from && !d->rename_to[0] &&
        strcmp(stored, d->cfg->rename_from) != 0)
        PB_INFO(NULL,
                "rename_from %s: the store belongs to %s already; nothing to do (remove "
                "rename_from)",
                d->cfg->rename_from, stored);
    if (err != PB_OK) goto out;
    snprintf(d->server_id, sizeof d->server_id, "%s", stored);
    err = pb_store_meta_get(d->store, "public_key", &pub);
    if (err == PB_OK && strcmp(pub, hex) != 0) {
        PB_ERROR(NULL, "the key file's public key %s differs from the store's %s", hex, pub);
        err = PB_ERR_CONFIG;
    } else if (err == PB_ERR_NOT_FOUND) {
        err = pb_store_meta_set(d->store, "public_key", hex);
    }
out:
    free(stored);
    free(configured);
    free(pub);
    return err;
}

/*
 * One daemon per data directory: an exclusive flock on DATA_DIR/postbox.lock, held until
 * pb_daemon_close (the kernel drops it when the process dies, so a crash leaves no stale
 * lock). The file holds the holder's pid, for the refusal message.
 */
static pb_err lock_data_dir(pb_daemon *d, const char *dir)
{
    char *path = pb_xasprintf("%s/" LOCK_FILE, dir);
    pb_err err = PB_OK;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        PB_ERROR(NULL, "cannot open the lock file %s: %s", path, strerror(errno));
        err = PB_ERR_IO;
        goto out;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        PB_ERROR(NULL,
                 "data_dir %s is in use by another postboxd (pid %s, holding %s): stop it "
                 "first, or give this one its own data_dir",
                 dir, pid[0] ? pid : "unknown", path);
        close(fd);
        err = PB_ERR_BUSY;
        goto out;
    }
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len)
        PB_WARN(NULL, "cannot write the pid into %s: %s", path, strerror(errno));
    d->lock_fd = fd;
out:
    free(path);
    return err;
}

static char **copy_list(char *const *l, size_t n)
{
    char **out = pb_xcalloc(n + 1, sizeof *out);
    for (size_t i = 0; i < n; i++)
        out[i] = pb_xstrdup(l[i]);
    return out;
}

static void free_list(char **l, size_t n)
{
    for (size_t i = 0; l && i < n; i++)
        free(l[i]);
    free(l);
}

static void wake_admin(void *admin)
{
    pb_admin_http_wake(admin);
}

/*
 * rename_from: the store belongs to rename_from and server_id names the new ID. The same
 * engine path as postboxctl rename (pb_delivery_rename): the store is re-labelled, every
 * known peer is told with NotifyNewId and its proof (retried durably until it answers),
 * and the configured ID is recorded, so that the next start needs no flag.
 */
static pb_err rename_at_start(pb_daemon *d)
{
    pb_rename_report *r = NULL;
    size_t n = 0;
    char old[PB_SERVER_ID_MAX];
    snprintf(old, sizeof old, "%s", d->server_id);
    pb_err err = pb_delivery_rename(d->delivery, d->rename_to, 0, &r, &n);
    pb_rename_reports_free(r, n);
    if (err == PB_OK) err = pb_store_meta_set(d->store, "configured_server_id", d->rename_to);
    if (err != PB_OK) {
        PB_ERROR(NULL, "cannot rename %s -> %s: %s", old, d->rename_to, pb_strerror(err));
        return err;
    }
    snprintf(d->server_id, sizeof d->server_id, "%s", d->rename_to);
    PB_INFO(NULL,
            "renamed %s -> %s (rename_from); %zu peers are being told; rename_from can go from "
            "the configuration",
            old, d->rename_to, n);
    return PB_OK;
}

pb_err pb_daemon_open(const pb_config *cfg, pb_daemon **out)
{
    pb_err err;
    char *admin_token = NULL;
    if (!cfg->finished) return PB_ERR_CONFIG;
    pb_daemon *d = pb_xcalloc(1, sizeof *d);
    d->lock_fd = -1;
    d->cfg = pb_config_copy(cfg);
    pthread_rwlock_init(&d->policy_mu, NULL);
    d->policy_mu_init = true;
    snprintf(d->server_id, sizeof d->server_id, "%s", cfg->server_id);
    pb_log_level lv;
    if (pb_log_level_parse(cfg->log_level, &lv) == PB_OK) pb_log_set_level(lv);
    if (pb_log_level_parse(cfg->log_deliveries, &lv) == PB_OK) pb_log_set_delivery_level(lv);
    pb_log_format lf;
    if (pb_log_format_parse(cfg->log_format, &lf) == PB_OK) pb_log_set_format(lf);
    if ((err = pb_faultvfs_install()) != PB_OK) goto fail; /* test builds only */
    d->metrics = pb_metrics_new();
    d->mstd = pb_metrics_std_new(d->metrics);

    /* Everything checked before anything is created: an invalid configuration leaves no
     * data directory, key, lock file or store behind. */
    pb_check_as self;
    pb_check_as_self(&self);
    pb_check_result chk;
    pb_check_run(cfg, &self, &chk);
    if (chk.config || chk.runtime) {
        err = chk.config ? PB_ERR_CONFIG : PB_ERR_STORE;
        goto fail;
    }
    if ((err = ensure_dir(cfg->data_dir)) != PB_OK) goto fail;
    if ((err = lock_data_dir(d, cfg->data_dir)) != PB_OK) goto fail;
    bool created = false;
    if ((err = pb_keys_load_or_create(cfg->key_file, &d->keys, &created)) != PB_OK) {
        PB_ERROR(NULL, "key file %s: %s", cfg->key_file, pb_strerror(err));
        goto fail;
    }
    (void)created; /* keys.c logs the creation */

    pb_store_opts so;
    pb_store_opts_default(&so);
    pb_store_sync_parse(cfg->sync, &so.sync);
    so.metrics = d->mstd;
    if ((err = pb_store_open(cfg->store, &so, &d->store)) != PB_OK) {
        char *shown = pb_store_spec_redact(cfg->store);
        PB_ERROR(NULL, "cannot open store %s: %s", shown, pb_strerror(err));
        free(shown);
        goto fail;
    }
    if ((err = check_identity(d, cfg->server_id)) != PB_OK) goto fail;
    if (cfg->node_id && (err = pb_nodebeat_open(d->store, cfg->node_id,
                                                (int64_t)cfg->lease_ttl * 1000, &d->beat)) != PB_OK)
        goto fail;

    /* the connection cache: every transfer the engine may run, and as many idle ones */
    pb_ioloop_opts lo = {.max_connections = 2 * (long)cfg->peer_connections + 64};
    if ((err = pb_ioloop_new(&lo, &d->loop)) != PB_OK) goto fail;
    if ((err = pb_ioloop_start(d->loop)) != PB_OK) goto fail;
    pb_client_opts co = {
        .plain_http = strcmp(cfg->peer_scheme, "http") == 0,
        .ca_file = cfg->ca_file,
        .connect_timeout_ms = (long)cfg->peer_connect_timeout_ms,
        .timeout_ms = (long)cfg->peer_timeout_ms,
        .allow_private = cfg->allow_private_peers != 0,
        .proxy = cfg->peer_proxy,
        .loop = d->loop,
        .dns_servers = cfg->dns_servers,
        .dns_lookups = (unsigned)cfg->dns_lookups,
        .dns_for_clients = (unsigned)cfg->dns_lookups_for_clients,
        .dns_per_client = per_addr_share(cfg, cfg->dns_lookups_per_ip),
        .dns_per_domain = (unsigned)cfg->dns_lookups_per_domain,
        .metrics = d->mstd,
    };
    if ((err = pb_client_new(&co, &d->client)) != PB_OK) goto fail;
    pb_keyfetch_opts ko = {.store = d->store,
                           .client = d->client,
                           .max_concurrent = (unsigned)cfg->key_fetches,
                           .per_client = per_addr_share(cfg, cfg->key_fetches_per_ip),
                           .negative_s = (int)cfg->key_refetch_interval,
                           .refetch_s = (int)cfg->key_refetch_interval,
                           .timeout_ms = (long)cfg->key_fetch_timeout_ms,
                           .metrics = d->mstd};
    d->keyfetch = pb_keyfetch_new(&ko);

    d->nallow = cfg->nallow;
    d->ndeny = cfg->ndeny;
    d->allow = copy_list(cfg->allow_list, cfg->nallow);
    d->deny = copy_list(cfg->deny_list, cfg->ndeny);
    d->policy = (pb_auth_policy){
        .window_s = (int64_t)cfg->auth_window,
        .allow = (const char *const *)d->allow,
        .nallow = d->nallow,
        .deny = (const char *const *)d->deny,
        .ndeny = d->ndeny,
        .key_retry_after_s = (uint32_t)cfg->key_refetch_interval,
        .cache = d->auth_cache = pb_auth_cache_new(),
        .lock = &d->policy_mu,
    };
    pb_delivery_opts dopts = {
        .server_id = d->server_id,
        .keys = d->keys,
        .store = d->store,
        .client = d->client,
        .keyfetch = d->keyfetch,
        .policy = &d->policy,
        .metrics = d->mstd,
        .store_threads = (unsigned)cfg->workers,
        .push_retries = (unsigned)cfg->push_retries,
        .retry_base_ms = (unsigned)cfg->retry_base_ms,
        .backoff_min_s = (unsigned)cfg->backoff_min,
        .backoff_max_s = (unsigned)cfg->backoff_max,
        .pull_interval_s = (unsigned)cfg->pull_interval,
        .max_queue_age_s = (unsigned)cfg->max_queue_age,
        .former_id_grace_s = (unsigned)cfg->former_id_grace,
        .pull_batch = (unsigned)cfg->pull_batch,
        .pull_max_bytes = (size_t)cfg->pull_max_bytes,
        .push_wait_ms = (unsigned)cfg->push_wait_ms,
        .max_transfers = (unsigned)cfg->peer_connections,
        .batch_max = (unsigned)cfg->push_batch,
        .push_window = (unsigned)cfg->push_window,
        .window_announce = window_announce(cfg),
        .window_hold_total = cfg->max_suspended / 2 ? (unsigned)(cfg->max_suspended / 2) : 1,
        .push_max_bytes = cfg->max_body > 4096 ? (size_t)cfg->max_body - 4096 : 1024,
        .pull_read_max_bytes = (size_t)cfg->pull_read_max_bytes,
        .pull_read_max_events = (unsigned)cfg->pull_read_max_events,
        .pull_rounds = (unsigned)cfg->pull_rounds,
        .push_max_events = (unsigned)cfg->push_max_events,
        .budget = {.events = cfg->recv_budget_events,
                   .bytes = cfg->recv_budget_bytes,
                   .interval_s = (unsigned)cfg->recv_budget_interval,
                   .key_factor = (unsigned)cfg->recv_budget_key_factor,
                   .addr_factor = (unsigned)cfg->recv_budget_address_factor},
        .new_peers_per_key = (unsigned)cfg->new_peers_per_key,
        .new_peers_per_address = (unsigned)cfg->new_peers_per_address,
        .peer_idle_s = (unsigned)cfg->peer_idle_forget,
        .node_id = cfg->node_id,
        .lease_ttl_ms = (unsigned)(cfg->lease_ttl * 1000),
    };
    if ((err = pb_delivery_new(&dopts, &d->delivery)) != PB_OK) {
        PB_ERROR(NULL, "cannot load delivery state: %s", pb_strerror(err));
        goto fail;
    }
    d->policy.is_self = pb_delivery_is_self;
    d->policy.self_ctx = d->delivery;
    pb_hrpc_auth auth = {.policy = &d->policy,
                         .keys = d->keyfetch,
                         .rename_key = pb_inbound_rename_key,
                         .rename_proven = pb_inbound_rename_proven,
                         .admit_new = pb_delivery_admit_new,
                         .on_authenticated = pb_inbound_contact,
                         .cb_ctx = d->delivery};
    pb_hrpc_server_opts ho = {
        .listen = cfg->listen,
        .max_body = cfg->max_body,
        .max_connections = (unsigned)cfg->max_connections,
        .max_conns_per_addr = per_addr_limit(cfg),
        .conn_timeout_s = (unsigned)cfg->conn_timeout,
        .threads = (unsigned)cfg->threads,
        .max_inflight = (unsigned)cfg->max_inflight,
        .max_inflight_per_addr = (unsigned)cfg->max_inflight_per_ip,
        .max_suspended = (unsigned)cfg->max_suspended,
        .max_suspended_per_addr = (unsigned)cfg->max_suspended_per_ip,
        .body_memory = (size_t)cfg->body_memory,
        .body_memory_per_addr = (size_t)cfg->body_memory_per_ip,
        .tls_cert_file = cfg->tls_cert,
        .tls_key_file = cfg->tls_key,
        .metrics = d->mstd,
    };
    if ((err = pb_hrpc_server_new(&ho, &auth, &d->fed)) != PB_OK) goto fail;
    pb_hrpc_server_route(d->fed, PATH_KEY, false, h_key, d);
    pb_hrpc_server_route(d->fed, PATH_PULL, true, pb_inbound_pull, d->delivery);
    pb_hrpc_server_route(d->fed, PATH_PUSH, true, pb_inbound_push, d->delivery);
    /* NotifyNewId checks its token itself: with the key held for the old ID only. */
    pb_hrpc_server_route(d->fed, PATH_NOTIFY, false, pb_inbound_notify, d->delivery);

    if (cfg->admin_token_file && (err = pb_check_read_token(cfg->admin_token_file, &admin_token)))
        goto fail;
    pb_admin_http_opts ao = {.listen = cfg->admin_listen,
                             .token = admin_token,
                             .request_timeout_s = (unsigned)cfg->admin_timeout};
    d->admin = pb_admin_http_new(&ao);
    /* inbox long-polls wait suspended; an append wakes them */
    pb_delivery_set_inbox_hook(d->delivery, wake_admin, d->admin);
    if (cfg->metrics_listen) {
        pb_admin_http_opts mo = {.listen = cfg->metrics_listen, .threads = 2, .name = "metrics"};
        d->metrics_http = pb_admin_http_new(&mo);
    }
    pb_monitor_opts mo = {.store = d->store,
                          .metrics = d->metrics,
                          .std = d->mstd,
                          .federation = d->fed,
                          .admin = d->admin,
                          .metrics_listener = d->metrics_http,
                          .delivery = d->delivery,
                          .top_peers = (unsigned)cfg->metrics_top_peers,
                          .interval_ms = (unsigned)cfg->stats_interval * 1000};
    d->monitor = pb_monitor_new(&mo);
    d->api = (pb_adminapi_ctx){.delivery = d->delivery,
                               .store = d->store,
                               .keys = d->keys,
                               .rename_wait_ms = (int)cfg->rename_wait_ms,
                               .metrics = d->mstd,
                               .monitor = d->monitor};
    pb_adminapi_register(d->admin, &d->api);
    pb_monitor_register(d->admin, d->monitor);
    if (d->metrics_http) pb_monitor_register_metrics(d->metrics_http, d->monitor);

    /* The listener first (start-up Pulls make peers fetch our key from it); Pushes that
     * arrive before the workers run wait for the start-up Pull of their sender. */
    if ((err = pb_hrpc_server_start(d->fed)) != PB_OK) goto fail;
    if ((err = pb_delivery_start(d->delivery)) != PB_OK) goto fail;
    if ((err = pb_admin_http_start(d->admin)) != PB_OK) goto fail;
    if (d->metrics_http && (err = pb_admin_http_start(d->metrics_http)) != PB_OK) goto fail;
    if ((err = pb_monitor_start(d->monitor)) != PB_OK) goto fail;
    char hex[65];
    pb_keys_hex(pb_keys_public(d->keys), hex);
    PB_INFO(NULL, "postbox %s serving as %s, public key %s", PB_VERSION, d->server_id, hex);
    if (d->rename_to[0] && (err = rename_at_start(d)) != PB_OK) goto fail;
    free(admin_token);
    *out = d;
    return PB_OK;
fail:
    free(admin_token);
    pb_daemon_close(d);
    return err;
}

pb_err pb_daemon_call(pb_daemon *d, const char *method, const char *path, const char *const *args,
                      const char *body, int *status, char **answer)
{
    pb_admin_http_dispatch(d->admin, method, path, args, body, body ? strlen(body) : 0, status,
                           answer);
    return PB_OK;
}

/*
 * Reload: everything that can fail (the token file, the TLS files) is read and checked
 * before anything is applied, so a refusal changes nothing; what follows cannot fail.
 */
pb_err pb_daemon_reload(pb_daemon *d, const pb_config *cfg)
{
    if (!cfg->finished) return PB_ERR_CONFIG;
    pb_err err = PB_OK;
    char *token = NULL, *changed = NULL;
    pb_config *next = pb_config_copy(cfg);
    size_t kept = pb_config_keep_restart(next, d->cfg);
    if (next->admin_token_file &&
        (err = pb_check_read_token(next->admin_token_file, &token)) != PB_OK)
        goto out;
    /* the certificate files are read again even when their names did not change: a renewed
     * certificate is usually written over the old one */
    if (next->tls_cert && (err = pb_hrpc_server_set_tls(d->fed, next->tls_cert, next->tls_key)))
        goto out;

    pb_log_level lv;
    if (pb_log_level_parse(next->log_level, &lv) == PB_OK) pb_log_set_level(lv);
    if (pb_log_level_parse(next->log_deliveries, &lv) == PB_OK) pb_log_set_delivery_level(lv);
    char **allow = copy_list(next->allow_list, next->nallow);
    char **deny = copy_list(next->deny_list, next->ndeny);
    char **old_allow = d->allow, **old_deny = d->deny;
    size_t old_nallow = d->nallow, old_ndeny = d->ndeny;
    pthread_rwlock_wrlock(&d->policy_mu);
    d->allow = allow;
    d->deny = deny;
    d->nallow = next->nallow;
    d->ndeny = next->ndeny;
    d->policy.allow = (const char *const *)allow;
    d->policy.nallow = next->nallow;
    d->policy.deny = (const char *const *)deny;
    d->policy.ndeny = next->ndeny;
    d->policy.window_s = (int64_t)next->auth_window;
    pthread_rwlock_unlock(&d->policy_mu);
    free_list(old_allow, old_nallow);
    free_list(old_deny, old_ndeny);
    pb_admin_http_set_token(d->admin, token);
    pb_hrpc_server_opts lim = {
        .max_body = next->max_body,
        .max_connections = (unsigned)next->max_connections,
        .max_conns_per_addr = per_addr_limit(next),
        .conn_timeout_s = (unsigned)next->conn_timeout,
        .max_inflight = (unsigned)next->max_inflight,
        .max_inflight_per_addr = (unsigned)next->max_inflight_per_ip,
        .max_suspended = (unsigned)next->max_suspended,
        .max_suspended_per_addr = (unsigned)next->max_suspended_per_ip,
        .body_memory = (size_t)next->body_memory,
        .body_memory_per_addr = (size_t)next->body_memory_per_ip,
    };
    pb_hrpc_server_set_limits(d->fed, &lim);
    pb_keyfetch_set_limits(d->keyfetch, (unsigned)next->key_fetches,
                           per_addr_share(next, next->key_fetches_per_ip), 0);
    pb_client_set_dns_shares(d->client, (unsigned)next->dns_lookups_for_clients,
                             per_addr_share(next, next->dns_lookups_per_ip),
                             (unsigned)next->dns_lookups_per_domain);
    pb_delivery_set_max_queue_age(d->delivery, (unsigned)next->max_queue_age);
    pb_delivery_set_ident_limits(
        d->delivery, (unsigned)next->recv_budget_key_factor,
        (unsigned)next->recv_budget_address_factor, (unsigned)next->new_peers_per_key,
        (unsigned)next->new_peers_per_address, (unsigned)next->peer_idle_forget);
    pb_delivery_set_former_id_grace(d->delivery, (unsigned)next->former_id_grace);
    changed = pb_config_changes(d->cfg, next);
    PB_INFO(NULL, "configuration reloaded: %s%s%s",
            changed ? "applied " : "no live setting changed", changed ? changed : "",
            kept ? " (settings that need a restart kept their value)" : "");
    pb_config_free(d->cfg);
    d->cfg = next;
    next = NULL;
out:
    if (err != PB_OK) PB_ERROR(NULL, "configuration not reloaded: nothing changed");
    if (token) memset(token, 0, strlen(token));
    free(token);
    free(changed);
    pb_config_free(next);
    return err;
}

char *pb_daemon_summary(pb_daemon *d)
{
    char self[PB_SERVER_ID_MAX];
    pb_delivery_server_id(d->delivery, self);
    pb_peer_state *sts = NULL;
    size_t n = 0;
    pb_err err = pb_store_peer_state_list(d->store, &sts, &n);
    if (err != PB_OK) return pb_xasprintf("serving as %s; store: %s", self, pb_strerror(err));
    uint64_t queued = 0;
    size_t waiting = 0;
    for (size_t i = 0; i < n; i++) {
        queued += sts[i].queued;
        if (sts[i].mode != PB_MODE_PUSH) waiting++;
    }
    pb_peer_state_free_array(sts, n);
    return pb_xasprintf("serving as %s: %zu peers (%zu not answering), %llu queued events", self, n,
                        waiting, (unsigned long long)queued);
}

uint16_t pb_daemon_port(const pb_daemon *d)
{
    return pb_hrpc_server_port(d->fed);
}

void pb_daemon_close(pb_daemon *d)
{
    if (!d) return;
    /* Listeners first (finishing in-flight requests), then the engine, then the loop's
     * transfers and name lookups (their completions call into the federation server's
     * key waits and the engine), and only then what they used. Each step accepts a part
     * that was never opened (a failed pb_daemon_open ends here too). */
    if (d->fed) PB_INFO(NULL, "shutting down");
    pb_admin_http_stop(d->admin);
    pb_admin_http_stop(d->metrics_http);
    pb_hrpc_server_stop(d->fed);
    pb_monitor_free(d->monitor); /* its sampler reads the store */
    if (d->client) pb_client_shutdown(d->client);
    pb_delivery_stop(d->delivery);
    if (d->delivery) pb_delivery_set_inbox_hook(d->delivery, NULL, NULL);
    pb_ioloop_stop(d->loop);
    pb_admin_http_free(d->admin);
    pb_admin_http_free(d->metrics_http);
    pb_hrpc_server_free(d->fed);
    pb_delivery_free(d->delivery);
    pb_keyfetch_free(d->keyfetch);
    pb_client_free(d->client);
    pb_ioloop_free(d->loop);
    pb_nodebeat_close(d->beat);
    pb_store_close(d->store);
    pb_keys_free(d->keys);
    pb_auth_cache_free(d->auth_cache);
    free_list(d->allow, d->nallow);
    free_list(d->deny, d->ndeny);
    if (d->policy_mu_init) pthread_rwlock_destroy(&d->policy_mu);
    pb_config_free(d->cfg);
    pb_metrics_std_free(d->mstd);
    pb_metrics_free(d->metrics);
    if (d->lock_fd >= 0) close(d->lock_fd); /* releases the flock */
    free(d);
}

pb_err pb_daemon_check(const pb_config *cfg, const char *as_user, unsigned *problems)
{
    *problems = 0;
    if (!cfg->finished) return PB_ERR_CONFIG;
    pb_log_format lf;
    if (pb_log_format_parse(cfg->log_format, &lf) == PB_OK) pb_log_set_format(lf);
    pb_check_as as;
    if (as_user) {
        if (pb_check_as_user(as_user, &as) != PB_OK) {
            PB_ERROR(NULL, "no user account %s to judge file access as", as_user);
            *problems = 1;
            return PB_ERR_CONFIG;
        }
    } else {
        pb_check_as_self(&as);
    }
    PB_INFO(NULL, "checking the configuration (file access as %s)", as.name);
    pb_check_result res;
    pb_check_run(cfg, &as, &res);
    *problems = res.config + res.runtime;
    return *problems ? PB_ERR_CONFIG : PB_OK;
}
