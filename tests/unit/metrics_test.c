/*
 * metrics_test - the metrics registry and its text exposition: exact rendering of
 * counters, gauges and histograms (cumulative buckets, +Inf, _sum, _count), escaping of
 * label values and help text, refused registrations, NULL safety, scrape hooks and
 * clearing, exact counts under concurrent writers, two registries side by side, and the
 * standard families' names and fixed series.
 */
#include "harness.h"

#include <time.h>

#include <math.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "util/log.h"
#include "util/metrics.h"
#include "util/metrics_std.h"

static char *render(pb_metrics *m)
{
    pb_buf b = PB_BUF_INIT;
    pb_metrics_render(m, &b);
    pb_buf_append(&b, "", 1);
    return (char *)pb_buf_steal(&b, NULL);
}

static void test_counter_gauge(void)
{
    pb_metrics *m = pb_metrics_new();
    pb_metric *c = pb_metrics_counter(m, "t_events_total", "Events.", NULL);
    pb_metric *cl = pb_metrics_counter(m, "t_pushed_total", "Pushed by result.", "result");
    pb_metric *g = pb_metrics_gauge(m, "t_queue", "Queue\\depth\nnow.", "peer,mode");
    CHECK(c && cl && g);
    pb_counter_add(pb_metric_series(c, NULL), 41);
    pb_counter_inc(pb_metric_series(c, NULL));
    pb_series *ok = pb_metric_get(cl, "ok");
    pb_counter_inc(ok);
    pb_counter_add(pb_metric_get(cl, "parked"), 3);
    CHECK(pb_metric_get(cl, "ok") == ok); /* same values, same series */
    pb_gauge_set(pb_metric_get(g, "a.example:1", "queued"), 2.5);
    pb_series *q = pb_metric_get(g, "we\"ird\\id\nx\x01", "push");
    pb_gauge_set(q, 10);
    pb_gauge_add(q, -3);
    char *t = render(m);
    const char *want = "# HELP t_events_total Events.\n"
                       "# TYPE t_events_total counter\n"
                       "t_events_total 42\n"
                       "# HELP t_pushed_total Pushed by result.\n"
                       "# TYPE t_pushed_total counter\n"
                       "t_pushed_total{result=\"ok\"} 1\n"
                       "t_pushed_total{result=\"parked\"} 3\n"
                       "# HELP t_queue Queue\\\\depth\\nnow.\n"
                       "# TYPE t_queue gauge\n"
                       "t_queue{peer=\"a.example:1\",mode=\"queued\"} 2.5\n"
                       "t_queue{peer=\"we\\\"ird\\\\id\\nx?\",mode=\"push\"} 7\n";
    CHECKF(strcmp(t, want) == 0, "rendered:\n%s", t);
    free(t);
    CHECK_INT(pb_counter_value(ok), 1);
    CHECK(pb_gauge_value(q) == 7);
    /* a labelled family with no series yet: HELP and TYPE only */
    pb_metrics *m2 = pb_metrics_new();
    pb_metrics_counter(m2, "t_refused_total", "Refusals.", "identifier");
    t = render(m2);
    CHECK_STR(t, "# HELP t_refused_total Refusals.\n# TYPE t_refused_total counter\n");
    free(t);
    pb_metrics_free(m2);
    pb_metrics_free(m);
}

static void test_histogram(void)
{
    pb_metrics *m = pb_metrics_new();
    const double b[] = {0.005, 0.1, 30};
    pb_metric *h = pb_metrics_histogram(m, "t_seconds", "Latency.", "method", b, 3);
    pb_series *s = pb_metric_get(h, "Push");
    pb_histogram_observe(s, 0.001);
    pb_histogram_observe(s, 0.005); /* le is inclusive */
    pb_histogram_observe(s, 0.05);
    pb_histogram_observe(s, 7);
    pb_histogram_observe(s, 100); /* +Inf */
    pb_histogram_observe(s, NAN); /* ignored */
    CHECK_INT(pb_histogram_count(s), 5);
    pb_metric *u = pb_metrics_histogram(m, "t_batch", "Batch.", NULL, (const double[]){1, 2}, 2);
    char *t = render(m);
    const char *want = "# HELP t_seconds Latency.\n"
                       "# TYPE t_seconds histogram\n"
                       "t_seconds_bucket{method=\"Push\",le=\"0.005\"} 2\n"
                       "t_seconds_bucket{method=\"Push\",le=\"0.1\"} 3\n"
                       "t_seconds_bucket{method=\"Push\",le=\"30\"} 4\n"
                       "t_seconds_bucket{method=\"Push\",le=\"+Inf\"} 5\n"
                       "t_seconds_sum{method=\"Push\"} 107.056\n"
                       "t_seconds_count{method=\"Push\"} 5\n"
                       "# HELP t_batch Batch.\n"
                       "# TYPE t_batch histogram\n"
                       "t_batch_bucket{le=\"1\"} 0\n"
                       "t_batch_bucket{le=\"2\"} 0\n"
                       "t_batch_bucket{le=\"+Inf\"} 0\n"
                       "t_batch_sum 0\n"
                       "t_batch_count 0\n";
    CHECKF(strcmp(t, want) == 0, "rendered:\n%s", t);
    free(t);
    CHECK(u != NULL);
    pb_metrics_free(m);
}

static void test_special_values(void)
{
    pb_metrics *m = pb_metrics_new();
    pb_metric *g = pb_metrics_gauge(m, "t_g", "G.", "k");
    pb_gauge_set(pb_metric_get(g, "inf"), INFINITY);
    pb_gauge_set(pb_metric_get(g, "ninf"), -INFINITY);
    pb_gauge_set(pb_metric_get(g, "nan"), NAN);
    pb_gauge_set(pb_metric_get(g, "tenth"), 0.1);
    pb_gauge_set(pb_metric_get(g, "big"), 1e21);
    pb_gauge_set(pb_metric_get(g, "ten"), 10);
    pb_gauge_set(pb_metric_get(g, "neg"), -1234567);
    char *t = render(m);
    CHECKF(strstr(t, "t_g{k=\"inf\"} +Inf\n") && strstr(t, "t_g{k=\"ninf\"} -Inf\n") &&
               strstr(t, "t_g{k=\"nan\"} NaN\n") && strstr(t, "t_g{k=\"tenth\"} 0.1\n") &&
               strstr(t, "t_g{k=\"big\"} 1e+21\n") && strstr(t, "t_g{k=\"ten\"} 10\n") &&
               strstr(t, "t_g{k=\"neg\"} -1234567\n"),
           "rendered:\n%s", t);
    free(t);
    pb_metrics_free(m);
}

static void test_refusals(void)
{
    int null = open("/dev/null", O_WRONLY);
    pb_log_set_fd(null); /* the refusals are logged */
    pb_metrics *m = pb_metrics_new();
    const double b[] = {1, 2};
    CHECK(pb_metrics_counter(m, "ok_total", "x", NULL) != NULL);
    CHECK(pb_metrics_counter(m, "ok_total", "again", NULL) == NULL);
    CHECK(pb_metrics_gauge(m, "9bad", "x", NULL) == NULL);
    CHECK(pb_metrics_gauge(m, "bad-name", "x", NULL) == NULL);
    CHECK(pb_metrics_gauge(m, "", "x", NULL) == NULL);
    CHECK(pb_metrics_gauge(m, NULL, "x", NULL) == NULL);
    CHECK(pb_metrics_gauge(m, "g1", "x", "a,a") == NULL);
    CHECK(pb_metrics_gauge(m, "g2", "x", "__reserved") == NULL);
    CHECK(pb_metrics_gauge(m, "g3", "x", "a,,b") == NULL);
    CHECK(pb_metrics_gauge(m, "g4", "x", "a:b") == NULL);
    CHECK(pb_metrics_gauge(m, "g5", "x", "a,b,c,d,e") == NULL);
    CHECK(pb_metrics_gauge(m, "ns:g6", "x", "a,b,c,d") != NULL);
    CHECK(pb_metrics_histogram(m, "h1", "x", "le", b, 2) == NULL);
    CHECK(pb_metrics_histogram(m, "h2", "x", NULL, (const double[]){2, 1}, 2) == NULL);
    CHECK(pb_metrics_histogram(m, "h3", "x", NULL, (const double[]){1, 1}, 2) == NULL);
    CHECK(pb_metrics_histogram(m, "h4", "x", NULL, (const double[]){1, INFINITY}, 2) == NULL);
    CHECK(pb_metrics_histogram(m, "h5", "x", NULL, b, 0) == NULL);
    CHECK(pb_metrics_counter(NULL, "x_total", "x", NULL) == NULL);
    /* wrong number of label values */
    pb_metric *two = pb_metrics_counter(m, "two_total", "x", "a,b");
    CHECK(pb_metric_get(two, "only-one") == NULL);
    CHECK(pb_metric_get(two, "a", "b", "c") == NULL);
    CHECK(pb_metric_series(two, NULL) == NULL);
    /* NULL everywhere is a no-op */
    CHECK(pb_metric_get(NULL, "x") == NULL);
    pb_counter_inc(NULL);
    pb_gauge_set(NULL, 1);
    pb_gauge_add(NULL, 1);
    pb_histogram_observe(NULL, 1);
    pb_metric_clear(NULL);
    pb_metrics_render(NULL, NULL);
    pb_metrics_hook_add(NULL, NULL, NULL);
    pb_metrics_free(NULL);
    pb_metrics_std_free(NULL);
    /* a write of the wrong type is ignored */
    pb_series *c = pb_metric_series(pb_metrics_counter(m, "c_total", "x", NULL), NULL);
    pb_gauge_set(c, 5);
    pb_histogram_observe(c, 5);
    CHECK_INT(pb_counter_value(c), 0);
    pb_metrics_free(m);
    pb_log_set_fd(2);
    close(null);
}

struct hook_ctx {
    pb_metric *top;
    pb_series *total;
    int runs;
};

static void hook(void *vctx)
{
    struct hook_ctx *h = vctx;
    h->runs++;
    pb_metric_clear(h->top);
    char peer[32];
    snprintf(peer, sizeof peer, "p%d", h->runs);
    pb_gauge_set(pb_metric_get(h->top, peer), h->runs);
    pb_gauge_set(h->total, 100 + h->runs);
}

static void test_hooks(void)
{
    pb_metrics *m = pb_metrics_new();
    struct hook_ctx h = {pb_metrics_gauge(m, "t_top", "Top.", "peer"), NULL, 0};
    h.total = pb_metric_series(pb_metrics_gauge(m, "t_total", "Total.", NULL), NULL);
    pb_metrics_hook_add(m, hook, &h);
    pb_metrics_hook_add(m, hook, &h); /* once */
    char *t = render(m);
    CHECK_INT(h.runs, 1);
    CHECKF(strstr(t, "t_top{peer=\"p1\"} 1\n") && strstr(t, "t_total 101\n"), "%s", t);
    free(t);
    t = render(m);
    CHECK_INT(h.runs, 2);
    CHECKF(!strstr(t, "p1") && strstr(t, "t_top{peer=\"p2\"} 2\n"), "cleared series gone: %s", t);
    free(t);
    pb_metrics_hook_remove(m, hook, &h);
    t = render(m);
    CHECK_INT(h.runs, 2);
    free(t);
    /* clearing an unlabelled family keeps its one series, at 0 */
    pb_metric *u = pb_metrics_counter(m, "t_u_total", "U.", NULL);
    pb_counter_add(pb_metric_series(u, NULL), 9);
    pb_metric_clear(u);
    CHECK_INT(pb_counter_value(pb_metric_series(u, NULL)), 0);
    pb_metrics_free(m);
}

#define THREADS 8
#define PER_THREAD 20000

struct worker {
    pb_metric *c, *h, *g;
};

static void *work(void *arg)
{
    struct worker *w = arg;
    pb_series *hs = pb_metric_get(w->h, "x");
    for (int i = 0; i < PER_THREAD; i++) {
        pb_counter_inc(pb_metric_get(w->c, (i & 1) ? "odd" : "even"));
        pb_histogram_observe(hs, (i % 3) * 0.5);
        pb_gauge_add(pb_metric_get(w->g, "x"), 1);
    }
    return NULL;
}

static void test_concurrency(void)
{
    pb_metrics *m = pb_metrics_new();
    struct worker w = {pb_metrics_counter(m, "t_c_total", "C.", "parity"),
                       pb_metrics_histogram(m, "t_h", "H.", "k", (const double[]){0.5}, 1),
                       pb_metrics_gauge(m, "t_g", "G.", "k")};
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, work, &w);
    for (int r = 0; r < 20; r++) { /* renders while writers run */
        char *t = render(m);
        free(t);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    CHECK_INT(pb_counter_value(pb_metric_get(w.c, "odd")), THREADS * PER_THREAD / 2);
    CHECK_INT(pb_counter_value(pb_metric_get(w.c, "even")), THREADS * PER_THREAD / 2);
    CHECK_INT(pb_histogram_count(pb_metric_get(w.h, "x")), THREADS * PER_THREAD);
    CHECK(pb_gauge_value(pb_metric_get(w.g, "x")) == THREADS * PER_THREAD);
    char *t = render(m);
    char want[128];
    /* values 0, 0.5, 1 in turn: two thirds (rounded) are <= 0.5 */
    int le = 0;
    for (int i = 0; i < PER_THREAD; i++)
        le += (i % 3) < 2;
    snprintf(want, sizeof want, "t_h_bucket{k=\"x\",le=\"0.5\"} %d\n", le * THREADS);
    CHECKF(strstr(t, want) != NULL, "want %s in\n%s", want, t);
    free(t);
    pb_metrics_free(m);
}

static void test_two_registries(void)
{
    pb_metrics *a = pb_metrics_new(), *b = pb_metrics_new();
    pb_metrics_std *sa = pb_metrics_std_new(a), *sb = pb_metrics_std_new(b);
    CHECK(sa->events_submitted && sb->events_submitted);
    pb_counter_add(pb_metric_series(sa->events_submitted, NULL), 5);
    CHECK_INT(pb_counter_value(pb_metric_series(sb->events_submitted, NULL)), 0);
    CHECK_INT(pb_counter_value(pb_metric_series(PB_METRIC(sa, events_submitted), NULL)), 5);
    pb_metrics_std *none = NULL;
    CHECK(PB_METRIC(none, events_submitted) == NULL);
    char *t = render(a);
    /* every family is registered and the fixed series exist at 0 */
    const char *want[] = {
        "postbox_events_submitted_total 5\n",
        "postbox_events_pushed_total{result=\"ok\"} 0\n",
        "postbox_events_pushed_total{result=\"retried\"} 0\n",
        "postbox_events_pushed_total{result=\"queued\"} 0\n",
        "postbox_events_pushed_total{result=\"parked\"} 0\n",
        "postbox_events_received_total{kind=\"userInvited\",path=\"pull\"} 0\n",
        "postbox_events_duplicate_total{path=\"push\"} 0\n",
        "postbox_hrpc_client_request_duration_seconds_count{method=\"Pull\"} 0\n",
        "postbox_hrpc_server_request_duration_seconds_bucket{method=\"Push\",le=\"+Inf\"} 0\n",
        "postbox_key_fetches_total{result=\"rate_limited\"} 0\n",
        "# TYPE postbox_auth_refusals_total counter\n",
        "postbox_store_commit_duration_seconds_count 0\n",
        "postbox_store_commit_batch_writes_count 0\n",
        "postbox_store_checkpoint_duration_seconds_count 0\n",
        "postbox_peers{mode=\"parked\"} 0\n",
        "postbox_queued_events 0\n",
        "# TYPE postbox_peer_oldest_queued_age_seconds gauge\n",
        "# TYPE postbox_open_connections gauge\n",
        "postbox_tls_handshakes_waiting 0\n",
        "postbox_inbox_oldest_unread_age_seconds 0\n",
        "# TYPE postbox_build_info gauge\n",
        "postbox_start_time_seconds 0\n",
        "postbox_delivery_latency_seconds_bucket{le=\"86400\"} 0\n",
        "# TYPE postbox_peer_last_success_timestamp_seconds gauge\n",
        "# TYPE process_cpu_seconds_total counter\n",
        "# TYPE process_open_fds gauge\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECKF(strstr(t, want[i]) != NULL, "missing: %s", want[i]);
    /* the process_* series hold this process's figures (set by the scrape hook) */
    double fds = pb_gauge_value(pb_metric_series(sa->process_open_fds, NULL));
    double maxfds = pb_gauge_value(pb_metric_series(sa->process_max_fds, NULL));
    double rss = pb_gauge_value(pb_metric_series(sa->process_resident_memory, NULL));
    double start = pb_gauge_value(pb_metric_series(sa->process_start_time, NULL));
    double cpu = pb_gauge_value(pb_metric_series(sa->process_cpu_seconds, NULL));
    CHECKF(fds >= 3 && fds <= maxfds, "process_open_fds %g, max %g", fds, maxfds);
    CHECKF(rss > 1e5, "process_resident_memory_bytes %g", rss);
    CHECKF(start > 1.6e9 && start <= (double)time(NULL) + 1, "process_start_time_seconds %g",
           start);
    CHECKF(cpu >= 0 && cpu < 3600, "process_cpu_seconds_total %g", cpu);
    free(t);
    pb_metrics_std_free(sa);
    pb_metrics_std_free(sb);
    pb_metrics_free(a);
    pb_metrics_free(b);
}

int main(void)
{
    test_counter_gauge();
    test_histogram();
    test_special_values();
    test_refusals();
    test_hooks();
    test_concurrency();
    test_two_registries();
    return pbt_finish();
}
