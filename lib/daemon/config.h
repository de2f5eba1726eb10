/*
 * config - postboxd's configuration: one table of settings with types, defaults and
 * checks, filled from a file (`name = value` lines, # comments) and then from flags
 * (`--name value` or `--name=value`, `-` and `_` interchangeable), flags winning.
 * pb_config_finish() derives what depends on other settings (store from data_dir, ...)
 * and validates the whole; only then is a config used.
 *
 * Untrusted input: the configuration file and the command line (operator input, but
 * checked: unknown names, bad numbers and invalid server IDs are refused with the line
 * number or flag that caused them).
 */
#ifndef PB_CONFIG_H
#define PB_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "postbox.h"
#include "util/serverid.h"
#include "store/store.h"

/* The packaged postbox.conf's server_id: refused by pb_config_finish, naming the file and
 * line, so that a service started before the operator set the ID binds nothing. */
#define PB_CONFIG_ID_REQUIRED "required"

struct pb_config {
    char *server_id;    /* normalised */
    char *rename_from;  /* normalised; start-up re-labels the store from it to server_id */
    char *listen;       /* federation listener */
    char *admin_listen; /* "127.0.0.1:2290" or "unix:/path" */
    char *admin_token_file;
    char *data_dir;
    char *store; /* "sqlite:/path" */
    char *sync;  /* off|normal|full */
    char *key_file;
    char *tls_cert;
    char *tls_key;
    char *ca_file;
    char *peer_scheme; /* https|http */
    char *allow;       /* comma/space separated server IDs */
    char *deny;
    char *log_level;
    char *log_format;             /* text|json */
    char *log_deliveries;         /* info|debug: the level of delivery lines */
    char *node_id;                /* several nodes on one shared store */
    char *metrics_listen;         /* loopback IP:PORT serving GET /metrics without the token */
    char *dns_servers;            /* IP[:PORT],... for peers' names; NULL: /etc/resolv.conf */
    uint64_t allow_private_peers; /* boolean */
    char *peer_proxy;             /* proxy URL for every peer connection; NULL: none */
    uint64_t auth_window;
    uint64_t key_refetch_interval;
    uint64_t max_body;
    uint64_t max_connections;
    uint64_t max_connections_per_ip;
    uint64_t conn_timeout;
    uint64_t threads;
    uint64_t admin_timeout;
    uint64_t max_inflight;
    uint64_t max_inflight_per_ip;
    uint64_t max_suspended;
    uint64_t max_suspended_per_ip;
    uint64_t body_memory;
    uint64_t body_memory_per_ip;
    uint64_t peer_connect_timeout_ms;
    uint64_t peer_timeout_ms;
    uint64_t workers;
    uint64_t peer_connections;
    uint64_t push_batch;
    uint64_t push_window;
    uint64_t push_max_events;
    uint64_t key_fetches;
    uint64_t key_fetches_per_ip;
    uint64_t key_fetch_timeout_ms;
    uint64_t dns_lookups;
    uint64_t dns_lookups_for_clients;
    uint64_t dns_lookups_per_ip;
    uint64_t dns_lookups_per_domain;
    uint64_t recv_budget_events;
    uint64_t recv_budget_bytes;
    uint64_t recv_budget_interval;
    uint64_t recv_budget_key_factor;     /* live */
    uint64_t recv_budget_address_factor; /* live; 0: off */
    uint64_t new_peers_per_key;          /* per hour, live; 0: no limit */
    uint64_t new_peers_per_address;      /* per hour, live; 0: no limit */
    uint64_t peer_idle_forget;           /* seconds, live; 0: never */
    uint64_t pull_read_max_bytes;
    uint64_t pull_read_max_events;
    uint64_t pull_rounds;
    uint64_t push_retries;
    uint64_t retry_base_ms;
    uint64_t backoff_min;
    uint64_t backoff_max;
    uint64_t pull_interval;
    uint64_t former_id_grace; /* seconds (live) */
    uint64_t max_queue_age;   /* seconds, 0: off (live) */
    uint64_t pull_batch;
    uint64_t pull_max_bytes;
    uint64_t push_wait_ms;
    uint64_t rename_wait_ms;
    uint64_t lease_ttl;
    uint64_t metrics_top_peers;
    uint64_t stats_interval;
    /* where each setting got its value ("FILE:LINE", "--name"), by table index, or NULL */
    char **origins;
    /* derived by pb_config_finish */
    char **allow_list;
    size_t nallow;
    char **deny_list;
    size_t ndeny;
    bool finished;
};

/* ---- reload (pb_daemon_reload) ---- */

/* A deep copy (derived settings included); caller frees with pb_config_free. */
pb_config *pb_config_copy(const pb_config *c);
/* Whether a running daemon applies a new value of this setting on reload. */
bool pb_config_is_live(const char *name);
/* For every setting that needs a restart and differs between the running configuration
 * `cur` and the reloaded `next` (both finished), logs "NAME changed: needs a restart;
 * keeping the old value" and puts cur's value back into next. tls_cert and tls_key are
 * live only while both serve TLS. Returns how many were kept. */
size_t pb_config_keep_restart(pb_config *next, const pb_config *cur);
/* The names of the settings whose values differ, ", "-separated (caller frees), or NULL. */
char *pb_config_changes(const pb_config *a, const pb_config *b);

#endif
