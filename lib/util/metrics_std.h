/*
 * metrics_std - postbox's standard metric families, created in one place on a daemon's
 * registry (util/metrics.h) so that every name, help text, label set and bucket layout
 * is defined once. Modules get a `const pb_metrics_std *` through their opts (NULL: no
 * metrics) and record through its families; PB_METRIC(std, field) is the family or NULL.
 *
 * Names follow Prometheus conventions: prefix postbox_, base units (_seconds, _bytes),
 * counters end in _total. Counters are process-local (they start at 0 with the process);
 * the queue, peer and inbox gauges are read from the store at scrape time, so every node
 * of a multi-node setup reports the shared truth.
 *
 * Who feeds which family (label values in brackets; the fixed ones are created at 0 so
 * they are exported before anything happens):
 *
 *   admin API (admin/adminapi.c)
 *     events_submitted       postbox_events_submitted_total
 *     submissions_duplicate  postbox_submissions_duplicate_total
 *   federation listener (net/hrpc_server.c, when a request completes)
 *     server_duration        postbox_hrpc_server_request_duration_seconds{method}
 *     server_requests        postbox_hrpc_server_requests_total{method,code}
 *     auth_refusals          postbox_auth_refusals_total{identifier}: Push and Pull token
 *                            refusals; NotifyNewId checks its token itself (delivery)
 *     connections_refused    postbox_connections_refused_total{reason=limit|per_address}
 *     tls_handshakes         postbox_tls_handshakes_total{kind=full|resumed}: TLS
 *                            handshakes, counted at each TLS connection's first request
 *     requests_refused       postbox_requests_refused_total{reason=inflight|
 *                            inflight_per_address|suspended|suspended_per_address|
 *                            body_memory|body_memory_per_address}: 503 for want of a
 *                            request slot or of body memory, in all or in an address's share
 *   delivery engine (delivery/, outbound client, key source)
 *     events_pushed          postbox_events_pushed_total{result=ok|retried|queued|parked}
 *     events_received        postbox_events_received_total{kind,path=push|pull}
 *     events_duplicate       postbox_events_duplicate_total{path=push|pull}
 *     outbox_reads           postbox_outbox_head_reads_total{source=store|read_ahead|
 *                            submission}: the outbox heads the engine read for its Pushes,
 *                            by where they came from
 *     push_window_batches    postbox_push_window_batches_total: Pushes sent ahead of the
 *                            answer to the one before them (a window, PROTOCOL.md 5)
 *     push_ahead             postbox_push_ahead_of_gap_total{result=applied|refused}:
 *                            received window batches that arrived before the ones in front
 *                            of them: held, then applied, or refused (503)
 *     receive_refused        postbox_receive_budget_refusals_total{scope=sender|key|address}:
 *                            Pushes refused 429 by a receive budget (budget.h)
 *     new_peers_refused      postbox_new_peers_refused_total{scope=key|address}: requests
 *                            refused 429 for adding too many new peers per hour
 *     peers_forgotten        postbox_peers_forgotten_total: idle peer records freed
 *     client_duration        postbox_hrpc_client_request_duration_seconds{method=Push|Pull}
 *     key_fetches            postbox_key_fetches_total{result=ok|error|rate_limited|
 *                            per_address|busy}
 *     dns_refused            postbox_dns_lookups_refused_total{reason=total|clients|
 *                            per_address|per_domain} (net/resolve.c)
 *     delivery_latency       postbox_delivery_latency_seconds: submission to the peer's
 *                            acknowledgement of a Push, per event
 *   store (store/store_sqlite.c writer, store/store_pg.c write calls)
 *     store_commit_duration  postbox_store_commit_duration_seconds
 *     store_commit_writes    postbox_store_commit_batch_writes (SQLite group commit)
 *     store_checkpoint_duration postbox_store_checkpoint_duration_seconds (SQLite WAL
 *                            checkpoints, off the commit path: store_sqlite.c)
 *   monitor (admin/monitor.c scrape hook: the store, the listeners)
 *     peers                  postbox_peers{mode=push|queued|parked}
 *     queued_events          postbox_queued_events
 *     queued_peers           postbox_queued_peers
 *     oldest_queued_age      postbox_oldest_queued_age_seconds
 *     peer_queued_events     postbox_peer_queued_events{peer}: the N peers with the
 *     peer_oldest_queued_age postbox_peer_oldest_queued_age_seconds{peer}  oldest backlog
 *     peer_parked            postbox_peer_parked{peer}: 1 for each parked peer, at most
 *                            metrics_top_peers of them (by server ID)
 *     peer_last_success      postbox_peer_last_success_timestamp_seconds{peer}: the same
 *                            peers' last successful Push as this node saw it (when any)
 *     open_connections       postbox_open_connections{listener=federation|admin|metrics}
 *     request_body_bytes     postbox_request_body_bytes (federation bodies held, body_memory)
 *     tls_waiting            postbox_tls_handshakes_waiting: federation TLS connections
 *                            waiting for their client before their first request
 *     push_held_batches      postbox_push_held_batches: received window batches waiting
 *                            now ahead of a gap (delivery/wgate.h)
 *     inbox_last_seq         postbox_inbox_last_seq
 *     inbox_unread_events    postbox_inbox_unread_events
 *     inbox_oldest_unread_age postbox_inbox_oldest_unread_age_seconds
 *     build_info             postbox_build_info{version,store} (always 1)
 *     start_time             postbox_start_time_seconds
 *     store_up               postbox_store_up (1, or 0 while the store-health tracker,
 *                            util/health.h, says the store is unavailable)
 *   this module (a scrape hook reading /proc/self and getrusage; Prometheus client names)
 *     process_open_fds, process_max_fds (the soft RLIMIT_NOFILE),
 *     process_resident_memory_bytes, process_cpu_seconds_total (user + system),
 *     process_start_time_seconds
 *
 * Untrusted input: none.
 */
#ifndef PB_METRICS_STD_H
#define PB_METRICS_STD_H

#include "util/metrics.h"

typedef struct pb_metrics_std {
    pb_metrics *reg; /* borrowed: the registry the families live in */

    pb_metric *events_submitted;
    pb_metric *submissions_duplicate;

    pb_metric *server_duration;
    pb_metric *server_requests;
    pb_metric *auth_refusals;
    pb_metric *connections_refused;
    pb_metric *tls_handshakes;
    pb_metric *requests_refused;

    pb_metric *events_pushed;
    pb_metric *events_received;
    pb_metric *events_duplicate;
    pb_metric *outbox_reads;
    pb_metric *push_window_batches;
    pb_metric *push_ahead;
    pb_metric *receive_refused;
    pb_metric *new_peers_refused;
    pb_metric *peers_forgotten;
    pb_metric *events_expired; /* queue control: max_queue_age (delivery.c) */
    pb_metric *events_dropped; /* queue control: an operator's drop (delivery.c) */
    pb_metric *client_duration;
    pb_metric *key_fetches;
    pb_metric *dns_refused;
    pb_metric *delivery_latency;

    pb_metric *store_commit_duration;
    pb_metric *store_commit_writes;
    pb_metric *store_checkpoint_duration;

    pb_metric *peers;
    pb_metric *queued_events;
    pb_metric *queued_peers;
    pb_metric *oldest_queued_age;
    pb_metric *peer_queued_events;
    pb_metric *peer_oldest_queued_age;
    pb_metric *peer_last_success;
    pb_metric *peer_parked;
    pb_metric *open_connections;
    pb_metric *request_body_bytes;
    pb_metric *tls_waiting;
    pb_metric *push_held_batches;
    pb_metric *inbox_last_seq;
    pb_metric *inbox_unread_events;
    pb_metric *inbox_oldest_unread_age;
    pb_metric *build_info;
    pb_metric *start_time;
    pb_metric *store_up;

    pb_metric *process_open_fds;
    pb_metric *process_max_fds;
    pb_metric *process_resident_memory;
    pb_metric *process_cpu_seconds;
    pb_metric *process_start_time;
} pb_metrics_std;

/* The family `field` of std, or NULL when std is NULL (no metrics). */
#define PB_METRIC(std, field) ((std) ? (std)->field : NULL)

/* Registers every standard family on reg (which must outlive the result), creates the
 * fixed-label series at 0 and adds the scrape hook of the process_* series. The caller
 * frees the result with pb_metrics_std_free (NULL is a no-op; it removes the hook, the
 * families stay in reg). */
pb_metrics_std *pb_metrics_std_new(pb_metrics *reg);
void pb_metrics_std_free(pb_metrics_std *std);

#endif
