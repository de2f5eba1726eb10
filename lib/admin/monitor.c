/*
 * monitor - scrape hook, history sampler and the operator's endpoints (see monitor.h).
 *
 * Design: one function (snapshot) reads the store's figures: the queue summary (every peer
 * with queued events: its counter and oldest event, O(peers) whatever is queued; the age
 * buckets of GET /v1/qshape read every queued event and are only read on request), peers
 * by mode, the inbox's last sequence
 * number and what lies after the reader's cursor. The scrape hook sets the gauges from
 * it (and the top-N peer series, cleared and rebuilt each scrape); the sampler keeps a
 * ring of small samples from it. A store that fails leaves the gauges at their last
 * values and the ring without a sample (logged).
 */
#include "admin/monitor.h"

#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "delivery/wgate.h"
#include "net/ioloop.h"
#include "util/health.h"
#include "util/log.h"
#include "util/mem.h"

/* lib/admin/status.html, embedded at build time (cmake/embed.cmake). */
extern const char pb_status_html[];
extern const size_t pb_status_html_len;

#define CURSOR_KEY "inbox_read_cursor"

struct sample {
    int64_t t_ms;
    uint64_t queued, queued_peers;
    int64_t oldest_age_s; /* -1: nothing queued */
    uint64_t modes[3];
    uint64_t inbox_last, inbox_unread;
    int64_t inbox_oldest_age_s; /* -1: nothing unread */
};

struct pb_monitor {
    pb_monitor_opts o;
    _Atomic uint64_t cursor_seen; /* highest `after` the homeserver asked for */
    pthread_mutex_t cursor_mu;    /* one cursor read-and-write at a time */

    pthread_mutex_t mu; /* guards the ring and the sampler's state */
    pthread_cond_t cv;
    struct sample *ring;
    size_t cap, head, count; /* head: next slot to write */
    bool started, stop;
    pthread_t sampler;
};

/* What one read of the store says. */
struct snap {
    uint64_t modes[3];
    uint64_t queued;
    int64_t oldest_at; /* ms; 0: nothing queued */
    uint64_t inbox_last, inbox_unread;
    int64_t inbox_oldest_at; /* ms; 0: nothing unread */
    pb_qshape_row *rows;     /* owned */
    size_t nrows;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t age_s(int64_t now, int64_t at)
{
    return at && now > at ? (now - at) / 1000 : 0;
}

/* The reader's cursor, at most `last`: the larger of what this node saw and what the
 * store holds; written to the store when this node saw more. */
static uint64_t sync_cursor(pb_monitor *m, uint64_t last)
{
    uint64_t seen = atomic_load(&m->cursor_seen), stored = 0;
    if (seen > last) seen = last;
    pthread_mutex_lock(&m->cursor_mu);
    char *v = NULL;
    if (pb_store_meta_get(m->o.store, CURSOR_KEY, &v) == PB_OK) stored = strtoull(v, NULL, 10);
    free(v);
    if (seen > stored) {
        char buf[24];
        snprintf(buf, sizeof buf, "%" PRIu64, seen);
        if (pb_store_meta_set(m->o.store, CURSOR_KEY, buf) == PB_OK) stored = seen;
    }
    pthread_mutex_unlock(&m->cursor_mu);
    return seen > stored ? seen : stored;
}

static void snap_clear(struct snap *s)
{
    pb_qshape_rows_free(s->rows, s->nrows);
    memset(s, 0, sizeof *s);
}

static pb_err snapshot(pb_monitor *m, int64_t now, struct snap *s)
{
    memset(s, 0, sizeof *s);
    pb_err err = pb_store_queue_summary(m->o.store, &s->rows, &s->nrows);
    if (err == PB_OK) err = pb_store_peer_mode_counts(m->o.store, s->modes);
    if (err == PB_OK) err = pb_store_inbox_last_seq(m->o.store, &s->inbox_last);
    if (err == PB_OK) {
        uint64_t cursor = sync_cursor(m, s->inbox_last);
        err = pb_store_inbox_unread(m->o.store, cursor, &s->inbox_unread, &s->inbox_oldest_at);
    }
    if (err != PB_OK) {
        snap_clear(s);
        return err;
    }
    for (size_t i = 0; i < s->nrows; i++) {
        s->queued += s->rows[i].total;
        if (!s->oldest_at || s->rows[i].oldest_at < s->oldest_at)
            s->oldest_at = s->rows[i].oldest_at;
    }
    return PB_OK;
}

/* ---- the scrape hook ----------------------------------------------------------------------- */

static int by_oldest(const void *a, const void *b)
{
    const pb_qshape_row *x = *(pb_qshape_row *const *)a, *y = *(pb_qshape_row *const *)b;
    if (x->oldest_at != y->oldest_at) return x->oldest_at < y->oldest_at ? -1 : 1;
    return strcmp(x->peer, y->peer);
}

static void set_gauges(pb_monitor *m, int64_t now, const struct snap *s)
{
    const pb_metrics_std *g = m->o.std;
    static const char *const modes[] = {"push", "queued", "parked"};
    for (int i = 0; i < 3; i++)
        pb_gauge_set(pb_metric_get(g->peers, modes[i]), (double)s->modes[i]);
    pb_gauge_set(pb_metric_series(g->queued_events, NULL), (double)s->queued);
    pb_gauge_set(pb_metric_series(g->queued_peers, NULL), (double)s->nrows);
    double oldest = s->oldest_at && now > s->oldest_at ? (double)(now - s->oldest_at) / 1000 : 0;
    pb_gauge_set(pb_metric_series(g->oldest_queued_age, NULL), oldest);
    pb_gauge_set(pb_metric_series(g->inbox_last_seq, NULL), (double)s->inbox_last);
    pb_gauge_set(pb_metric_series(g->inbox_unread_events, NULL), (double)s->inbox_unread);
    double unread = s->inbox_oldest_at && now > s->inbox_oldest_at
                        ? (double)(now - s->inbox_oldest_at) / 1000
                        : 0;
    pb_gauge_set(pb_metric_series(g->inbox_oldest_unread_age, NULL), unread);

    /* the N peers with the oldest backlog */
    pb_metric_clear(g->peer_queued_events);
    pb_metric_clear(g->peer_oldest_queued_age);
    pb_metric_clear(g->peer_last_success);
    size_t n = s->nrows < m->o.top_peers ? s->nrows : m->o.top_peers;
    if (!n) return;
    const pb_qshape_row **order = pb_xcalloc(s->nrows, sizeof *order);
    for (size_t i = 0; i < s->nrows; i++)
        order[i] = &s->rows[i];
    qsort(order, s->nrows, sizeof *order, by_oldest);
    for (size_t i = 0; i < n; i++) {
        const pb_qshape_row *r = order[i];
        pb_gauge_set(pb_metric_get(g->peer_queued_events, r->peer), (double)r->total);
        pb_gauge_set(pb_metric_get(g->peer_oldest_queued_age, r->peer),
                     now > r->oldest_at ? (double)(now - r->oldest_at) / 1000 : 0);
        int64_t ok_s = m->o.delivery ? pb_delivery_last_success_s(m->o.delivery, r->peer) : 0;
        if (ok_s > 0) pb_gauge_set(pb_metric_get(g->peer_last_success, r->peer), (double)ok_s);
    }
    free(order);
}

/* postbox_peer_parked: the parked peers by name, at most top_peers of them. The peer list
 * is read only when the store counts parked peers (the usual case is none). */
static void set_parked(pb_monitor *m, uint64_t nparked)
{
    pb_metric *f = m->o.std->peer_parked;
    pb_metric_clear(f);
    if (!nparked || !m->o.top_peers) return;
    pb_peer_state *st = NULL;
    size_t n = 0, shown = 0;
    pb_err err = pb_store_peer_state_list(m->o.store, &st, &n);
    if (err != PB_OK) {
        PB_WARN(NULL, "metrics: cannot list the parked peers: %s", pb_strerror(err));
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (st[i].mode == PB_MODE_PARKED && shown++ < m->o.top_peers)
            pb_gauge_set(pb_metric_get(f, st[i].server_id), 1);
    pb_peer_state_free_array(st, n);
}

static void scrape_hook(void *ctx)
{
    pb_monitor *m = ctx;
    const pb_metrics_std *g = m->o.std;
    int64_t now = now_ms();
    struct snap s;
    pb_err err = snapshot(m, now, &s);
    if (err == PB_OK) {
        set_gauges(m, now, &s);
        set_parked(m, s.modes[PB_MODE_PARKED]);
    } else if (pb_health_unavailable(err)) {
        pb_health_fail(pb_health_store(), err, NULL,
                       "metrics: cannot read the queue figures from the store: %s",
                       pb_strerror(err));
    } else {
        PB_WARN(NULL, "metrics: cannot read the queue figures from the store: %s",
                pb_strerror(err));
    }
    snap_clear(&s);
    pb_gauge_set(pb_metric_series(g->store_up, NULL), pb_health_up(pb_health_store()) ? 1 : 0);
    pb_gauge_set(pb_metric_get(g->open_connections, "federation"),
                 m->o.federation ? pb_hrpc_server_connections(m->o.federation) : 0);
    pb_gauge_set(pb_metric_series(g->request_body_bytes, NULL),
                 m->o.federation ? (double)pb_hrpc_server_body_bytes(m->o.federation) : 0);
    pb_gauge_set(pb_metric_series(g->tls_waiting, NULL),
                 m->o.federation ? pb_hrpc_server_tls_waiting(m->o.federation) : 0);
    pb_gauge_set(pb_metric_get(g->open_connections, "admin"),
                 pb_admin_http_connections(m->o.admin));
    pb_gauge_set(pb_metric_series(g->push_held_batches, NULL),
                 m->o.delivery ? pb_wgate_held(pb_delivery_wgate(m->o.delivery), pb_ioloop_now_ms())
                               : 0);
    if (m->o.metrics_listener)
        pb_gauge_set(pb_metric_get(g->open_connections, "metrics"),
                     pb_admin_http_connections(m->o.metrics_listener));
}

/* ---- history --------------------------------------------------------------------------- */

static void take_sample(pb_monitor *m)
{
    int64_t now = now_ms();
    struct snap s;
    pb_err err = snapshot(m, now, &s);
    if (err != PB_OK) {
        if (pb_health_unavailable(err))
            pb_health_fail(pb_health_store(), err, NULL,
                           "stats: cannot read the queue figures from the store: %s",
                           pb_strerror(err));
        else
            PB_WARN(NULL, "stats: cannot read the queue figures from the store: %s",
                    pb_strerror(err));
        return;
    }
    struct sample x = {
        .t_ms = now,
        .queued = s.queued,
        .queued_peers = s.nrows,
        .oldest_age_s = s.oldest_at ? age_s(now, s.oldest_at) : -1,
        .modes = {s.modes[0], s.modes[1], s.modes[2]},
        .inbox_last = s.inbox_last,
        .inbox_unread = s.inbox_unread,
        .inbox_oldest_age_s = s.inbox_oldest_at ? age_s(now, s.inbox_oldest_at) : -1,
    };
    snap_clear(&s);
    pthread_mutex_lock(&m->mu);
    m->ring[m->head] = x;
    m->head = (m->head + 1) % m->cap;
    if (m->count < m->cap) m->count++;
    pthread_mutex_unlock(&m->mu);
}

static void *sampler_main(void *arg)
{
    pthread_setname_np(pthread_self(), "pb-sampler");
    pb_monitor *m = arg;
    pthread_mutex_lock(&m->mu);
    while (!m->stop) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += m->o.interval_ms / 1000;
        until.tv_nsec += (long)(m->o.interval_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        int rc = 0;
        while (!m->stop && rc == 0)
            rc = pthread_cond_timedwait(&m->cv, &m->mu, &until);
        if (m->stop) break;
        pthread_mutex_unlock(&m->mu);
        take_sample(m);
        pthread_mutex_lock(&m->mu);
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

/* ---- life cycle ------------------------------------------------------------------------ */

pb_monitor *pb_monitor_new(const pb_monitor_opts *opts)
{
    pb_monitor *m = pb_xcalloc(1, sizeof *m);
    m->o = *opts;
    if (!m->o.interval_ms) m->o.interval_ms = 10000;
    if (!m->o.history_s) m->o.history_s = 3600;
    if (m->o.top_peers > PB_MONITOR_MAX_TOP) m->o.top_peers = PB_MONITOR_MAX_TOP;
    m->cap = (size_t)m->o.history_s * 1000 / m->o.interval_ms;
    if (m->cap < 2) m->cap = 2;
    m->ring = pb_xcalloc(m->cap, sizeof *m->ring);
    pthread_mutex_init(&m->cursor_mu, NULL);
    pthread_mutex_init(&m->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&m->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (m->o.std) {
        pb_gauge_set(pb_metric_get(m->o.std->build_info, PB_VERSION, pb_store_backend(m->o.store)),
                     1);
        pb_gauge_set(pb_metric_series(m->o.std->start_time, NULL), (double)now_ms() / 1000);
        pb_metrics_hook_add(m->o.metrics, scrape_hook, m);
    }
    return m;
}

pb_err pb_monitor_start(pb_monitor *m)
{
    take_sample(m);
    if (pthread_create(&m->sampler, NULL, sampler_main, m) != 0) {
        PB_ERROR(NULL, "cannot start the stats sampler thread");
        return PB_ERR_INTERNAL;
    }
    m->started = true;
    return PB_OK;
}

void pb_monitor_free(pb_monitor *m)
{
    if (!m) return;
    if (m->o.std) pb_metrics_hook_remove(m->o.metrics, scrape_hook, m);
    if (m->started) {
        pthread_mutex_lock(&m->mu);
        m->stop = true;
        pthread_cond_signal(&m->cv);
        pthread_mutex_unlock(&m->mu);
        pthread_join(m->sampler, NULL);
    }
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->mu);
    pthread_mutex_destroy(&m->cursor_mu);
    free(m->ring);
    free(m);
}

void pb_monitor_inbox_read(pb_monitor *m, uint64_t after)
{
    if (!m) return;
    uint64_t cur = atomic_load(&m->cursor_seen);
    while (after > cur && !atomic_compare_exchange_weak(&m->cursor_seen, &cur, after)) {
    }
}

/* ---- endpoints ------------------------------------------------------------------------- */

/* GET /metrics: the exposition (text format 0.0.4). */
static void h_metrics(void *ctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    pb_monitor *m = ctx;
    pb_buf b = PB_BUF_INIT;
    pb_metrics_render(m->o.metrics, &b);
    pb_buf_append(&b, "", 1);
    size_t len = 0;
    resp->text = (char *)pb_buf_steal(&b, &len);
    resp->text_len = len - 1;
    resp->content_type = PB_METRICS_CONTENT_TYPE;
}

/* GET /: the status page. */
static void h_page(void *ctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    resp->text = pb_xstrndup(pb_status_html, pb_status_html_len);
    resp->text_len = pb_status_html_len;
    resp->content_type = "text/html; charset=utf-8";
}

/* GET /v1/stats/history: the samples of the last hour, oldest first. */
static void h_history(void *ctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    pb_monitor *m = ctx;
    json_t *arr = json_array();
    pthread_mutex_lock(&m->mu);
    for (size_t k = 0; k < m->count; k++) {
        const struct sample *x = &m->ring[(m->head + m->cap - m->count + k) % m->cap];
        json_t *o = json_object();
        json_object_set_new(o, "t", json_integer(x->t_ms / 1000));
        json_object_set_new(o, "queued_events", json_integer((json_int_t)x->queued));
        json_object_set_new(o, "queued_peers", json_integer((json_int_t)x->queued_peers));
        json_object_set_new(o, "oldest_queued_age_s",
                            x->oldest_age_s >= 0 ? json_integer(x->oldest_age_s) : json_null());
        json_object_set_new(o, "peers_push", json_integer((json_int_t)x->modes[0]));
        json_object_set_new(o, "peers_queued", json_integer((json_int_t)x->modes[1]));
        json_object_set_new(o, "peers_parked", json_integer((json_int_t)x->modes[2]));
        json_object_set_new(o, "inbox_last_seq", json_integer((json_int_t)x->inbox_last));
        json_object_set_new(o, "inbox_unread", json_integer((json_int_t)x->inbox_unread));
        json_object_set_new(o, "inbox_oldest_unread_age_s",
                            x->inbox_oldest_age_s >= 0 ? json_integer(x->inbox_oldest_age_s)
                                                       : json_null());
        json_array_append_new(arr, o);
    }
    pthread_mutex_unlock(&m->mu);
    /* the store's health now (util/health.h): up, or down since when and why */
    pb_health *h = pb_health_store();
    pb_err herr = pb_health_error(h);
    json_t *store = json_pack("{s:b,s:o,s:I}", "up", pb_health_up(h), "error",
                              herr != PB_OK ? json_string(pb_strerror(herr)) : json_null(),
                              "down_s", (json_int_t)(pb_health_down_ms(h) / 1000));
    resp->body = json_pack("{s:I,s:I,s:o,s:o}", "interval_s", (json_int_t)(m->o.interval_ms / 1000),
                           "history_s", (json_int_t)m->o.history_s, "samples", arr, "store", store);
}

static json_t *counts_json(const uint64_t *c)
{
    json_t *a = json_array();
    for (int i = 0; i < PB_QSHAPE_BUCKETS; i++)
        json_array_append_new(a, json_integer((json_int_t)c[i]));
    return a;
}

/* GET /v1/qshape?top=N: queued events per peer by age bucket, the N largest queues. */
static void h_qshape(void *ctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    pb_monitor *m = ctx;
    const char *top_s = pb_admin_req_arg(req, "top");
    unsigned long long top = ULLONG_MAX;
    if (top_s) {
        char *end = NULL;
        top = strtoull(top_s, &end, 10);
        if (!*top_s || *top_s == '-' || *top_s == '+' || *end || top < 1 ||
            top > PB_MONITOR_MAX_TOP) {
            pb_admin_resp_error(resp, 400, "top must be a whole number from 1 to %d",
                                PB_MONITOR_MAX_TOP);
            return;
        }
    }
    int64_t now = now_ms();
    pb_qshape_row *rows = NULL;
    size_t n = 0;
    pb_err err = pb_store_qshape(m->o.store, now, &rows, &n);
    if (err != PB_OK) {
        pb_admin_resp_error(resp, pb_health_unavailable(err) ? 503 : 500, "store: %s",
                            pb_strerror(err));
        return;
    }
    static const int edges[] = PB_QSHAPE_EDGES_MIN;
    json_t *buckets = json_array();
    for (int i = 0; i < PB_QSHAPE_BUCKETS; i++) {
        char label[24];
        if (i == PB_QSHAPE_BUCKETS - 1)
            snprintf(label, sizeof label, "%d+", edges[i - 1]);
        else
            snprintf(label, sizeof label, "%d-%d", i ? edges[i - 1] : 0, edges[i]);
        json_array_append_new(buckets, json_string(label));
    }
    uint64_t total = 0, sum[PB_QSHAPE_BUCKETS] = {0};
    json_t *peers = json_array();
    for (size_t i = 0; i < n; i++) {
        total += rows[i].total;
        for (int k = 0; k < PB_QSHAPE_BUCKETS; k++)
            sum[k] += rows[i].counts[k];
        if (i >= top) continue;
        json_array_append_new(peers,
                              json_pack("{s:s,s:I,s:I,s:o}", "server_id", rows[i].peer, "total",
                                        (json_int_t)rows[i].total, "oldest_queued_age_s",
                                        (json_int_t)age_s(now, rows[i].oldest_at), "counts",
                                        counts_json(rows[i].counts)));
    }
    resp->body = json_pack("{s:o,s:{s:I,s:o},s:I,s:o}", "buckets_min", buckets, "total", "total",
                           (json_int_t)total, "counts", counts_json(sum), "queued_peers",
                           (json_int_t)n, "peers", peers);
    pb_qshape_rows_free(rows, n);
}

void pb_monitor_register(pb_admin_http *a, pb_monitor *m)
{
    pb_monitor_register_metrics(a, m);
    pb_admin_http_route_public(a, "GET", "/", h_page, m);
    pb_admin_http_route(a, "GET", "/v1/stats/history", h_history, m);
    pb_admin_http_route(a, "GET", "/v1/qshape", h_qshape, m);
}

void pb_monitor_register_metrics(pb_admin_http *a, pb_monitor *m)
{
    pb_admin_http_route(a, "GET", "/metrics", h_metrics, m);
}
