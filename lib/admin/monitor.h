/*
 * monitor - what an operator looks at: the Prometheus scrape (GET /metrics), the status
 * page (GET /, one self-contained HTML page embedded at build time from
 * lib/admin/status.html), the recent history of the queue (GET /v1/stats/history) and the
 * queue shape (GET /v1/qshape).
 *
 * Store-backed gauges (peers by mode, queued events and their oldest age, the top N
 * peers by oldest backlog, the inbox and its unread part) are read from the store by a
 * scrape hook at every scrape, so that every node of a multi-node setup reports the
 * shared truth; open connections come from the listeners. A sampler thread reads the
 * same figures every interval (10 s) into a ring holding the last hour, which the status
 * page draws.
 *
 * The unread inbox is what lies after the highest cursor (`after`) the homeserver asked
 * GET /v1/inbox for (pb_monitor_inbox_read). That cursor is kept in memory and written to
 * the store's meta ("inbox_read_cursor") by a scrape or sample when it advanced, so that
 * it survives restarts and other nodes see it within one interval.
 *
 * Untrusted input: query arguments of /v1/qshape (a bounded number, refused otherwise).
 * The page itself handles peer-controlled strings (server IDs, errors) as text only.
 */
#ifndef PB_MONITOR_H
#define PB_MONITOR_H

#include <stdint.h>

#include "delivery/delivery.h"
#include "net/admin_http.h"
#include "net/hrpc_server.h"
#include "store/store.h"
#include "util/metrics.h"
#include "util/metrics_std.h"

typedef struct pb_monitor pb_monitor;

typedef struct pb_monitor_opts {
    pb_store *store;                 /* borrowed */
    pb_metrics *metrics;             /* borrowed registry; NULL: no /metrics content */
    const pb_metrics_std *std;       /* borrowed families on it */
    pb_hrpc_server *federation;      /* borrowed, for open connections; may be NULL */
    pb_admin_http *admin;            /* borrowed, likewise */
    pb_admin_http *metrics_listener; /* borrowed, likewise (metrics_listen); may be NULL */
    pb_delivery *delivery;           /* borrowed, for the peers' last success; may be NULL */
    unsigned top_peers;              /* per-peer series for this many peers; 0: none */
    unsigned interval_ms;            /* history sample interval; default 10000 */
    unsigned history_s;              /* history length; default 3600 */
} pb_monitor_opts;

#define PB_MONITOR_MAX_TOP 10000

/* Creates the monitor (sets build info and start time, adds the scrape hook); the caller
 * frees it with pb_monitor_free, which removes the hook and stops the sampler. */
pb_monitor *pb_monitor_new(const pb_monitor_opts *opts);
/* Takes the first sample and starts the sampler thread. */
pb_err pb_monitor_start(pb_monitor *m);
void pb_monitor_free(pb_monitor *m); /* NULL is a no-op */

/* The homeserver read the inbox after `after` (it has everything up to it). */
void pb_monitor_inbox_read(pb_monitor *m, uint64_t after);

/* Registers GET /metrics, GET / (public: the page asks for the token), GET
 * /v1/stats/history and GET /v1/qshape on a; m must outlive a. */
void pb_monitor_register(pb_admin_http *a, pb_monitor *m);
/* Registers GET /metrics only (the metrics_listen listener). */
void pb_monitor_register_metrics(pb_admin_http *a, pb_monitor *m);

#endif
