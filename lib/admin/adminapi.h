/*
 * adminapi - the admin API's endpoints (the homeserver's and the operator's interface):
 * submitting events, reading the inbox, peers and parked events, local users' guild lists
 * and invites, renaming this server, a backup copy of the store, the key and health.
 * Registers its routes on an admin_http listener; the JSON shapes are a contract (see
 * README).
 *
 * Untrusted input: admin request bodies, path segments and query arguments. Every value
 * is validated (server IDs, uint64 as decimal strings or numbers, event JSON through
 * eventjson) before anything is stored; a refusal is a 4xx with {"error": "..."} and
 * stores nothing.
 */
#ifndef PB_ADMINAPI_H
#define PB_ADMINAPI_H

#include "admin/monitor.h"
#include "net/admin_http.h"
#include "delivery/delivery.h"
#include "crypto/keys.h"
#include "store/store.h"

typedef struct pb_adminapi_ctx {
    pb_delivery *delivery;         /* borrowed */
    pb_store *store;               /* borrowed */
    const pb_keys *keys;           /* borrowed */
    int rename_wait_ms;            /* how long POST /v1/rename waits for peers' answers */
    const pb_metrics_std *metrics; /* submissions are counted here; NULL: not counted */
    pb_monitor *monitor;           /* told the inbox reader's cursor; may be NULL */
} pb_adminapi_ctx;

#define PB_ADMIN_MAX_EVENTS 10000 /* events in one POST /v1/outbox */
#define PB_ADMIN_MAX_INBOX_LIMIT 1000
#define PB_ADMIN_MAX_WAIT_S 60
#define PB_ADMIN_MAX_PEERS_LIMIT 1000 /* peers in one page of GET /v1/peers */

/* Registers every endpoint on a; ctx must outlive a. */
void pb_adminapi_register(pb_admin_http *a, pb_adminapi_ctx *ctx);

#endif
