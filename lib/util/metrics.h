/*
 * metrics - a Prometheus metrics registry, one per daemon (never a process global: two
 * daemons may run in one process), rendered in the text exposition format 0.0.4.
 *
 * A registry holds families (pb_metric): counters, gauges and histograms, each with a
 * fixed list of label names (none to PB_METRICS_MAX_LABELS). A family holds series
 * (pb_series), one per set of label values, created on first use and kept until the
 * registry is freed (or the family is cleared, see pb_metric_clear). Writing a series is
 * lock-free (atomics); finding a labelled series takes the family's lock and compares
 * strings, so hot paths look a series up once and keep the pointer (pointers stay valid
 * for the registry's life).
 *
 *   pb_metric *f = pb_metrics_counter(reg, "postbox_events_pushed_total",
 *                                     "Events pushed, by result", "result");
 *   pb_series *ok = pb_metric_get(f, "ok");      // once
 *   pb_counter_inc(ok);                          // hot path: one atomic add
 *
 * Every function accepts NULL where it takes a family or a series and then does nothing
 * (or returns NULL), so a module given no registry (metrics NULL in its opts) calls the
 * same code unconditionally.
 *
 * Values computed at scrape time (e.g. queue gauges read from the store) are set by
 * scrape hooks (pb_metrics_hook_add), which run, one scrape at a time, before rendering.
 *
 * Untrusted input: none; label values may come from peers (server IDs) and are escaped
 * on output (backslash, double quote, newline; other control bytes and non-ASCII bytes
 * become '?').
 */
#ifndef PB_METRICS_H
#define PB_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

#define PB_METRICS_MAX_LABELS 4
/* Content-Type of the rendered exposition. */
#define PB_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

typedef struct pb_metrics pb_metrics; /* a registry */
typedef struct pb_metric pb_metric;   /* one family */
typedef struct pb_series pb_series;   /* one series of a family */

/* A new, empty registry; the caller frees it with pb_metrics_free (NULL is a no-op) once
 * nothing writes to it any more. */
pb_metrics *pb_metrics_new(void);
void pb_metrics_free(pb_metrics *m);

/*
 * Registers a family and returns it (owned by the registry). name: a Prometheus metric
 * name ([a-zA-Z_:][a-zA-Z0-9_:]*), unique in the registry; help: one line; labels: the
 * label names, comma-separated ("kind,path"), or NULL/"" for none (histograms may not use
 * "le"). A family without labels has its one series from the start, so it is rendered
 * (0) before anything is recorded; a labelled family renders its HELP and TYPE lines and
 * the series created so far. bounds: a histogram's bucket upper bounds, strictly
 * increasing (the +Inf bucket is implicit), at most PB_METRICS_MAX_BUCKETS. Returns NULL
 * (and logs why) for an invalid or duplicate name, labels or bounds, or a NULL registry.
 */
#define PB_METRICS_MAX_BUCKETS 32
pb_metric *pb_metrics_counter(pb_metrics *m, const char *name, const char *help,
                              const char *labels);
pb_metric *pb_metrics_gauge(pb_metrics *m, const char *name, const char *help, const char *labels);
pb_metric *pb_metrics_histogram(pb_metrics *m, const char *name, const char *help,
                                const char *labels, const double *bounds, size_t nbounds);
/* A counter whose value another source keeps (the kernel's CPU time): rendered as a
 * counter, set by a scrape hook with pb_counter_set_sampled. */
pb_metric *pb_metrics_counter_sampled(pb_metrics *m, const char *name, const char *help,
                                      const char *labels);

/* The series of family f with these label values (as many as the family has label
 * names; NULL for a family without labels), created at first use. Owned by the registry.
 * NULL when f is NULL or the number of values is wrong. */
pb_series *pb_metric_series(pb_metric *f, const char *const *values);
/* pb_metric_series with the values as arguments: pb_metric_get(f, "ok"),
 * pb_metric_get(f, "push", "userInvited"). */
#define pb_metric_get(f, ...) pb_metric_series((f), (const char *const[]){__VA_ARGS__, NULL})

/* Drops every series of f. Only for families written by a scrape hook alone (e.g. the
 * top-N peers), from that hook: any series pointer of f held elsewhere dangles. */
void pb_metric_clear(pb_metric *f);

/* Counters (a non-counter series is ignored). */
void pb_counter_add(pb_series *s, uint64_t n);
static inline void pb_counter_inc(pb_series *s)
{
    pb_counter_add(s, 1);
}
/* Gauges (a non-gauge series is ignored). */
void pb_gauge_set(pb_series *s, double v);
void pb_gauge_add(pb_series *s, double delta);
/* Sampled counters (a series of another type is ignored): the source's current value. */
void pb_counter_set_sampled(pb_series *s, double v);
/* Histograms: counts v in the first bucket whose bound is >= v, and adds v to the sum. */
void pb_histogram_observe(pb_series *s, double v);

/* Monotonic clock in seconds, for durations: observe(pb_metrics_clock() - start). */
double pb_metrics_clock(void);

/* Current values (tests and the status page): a counter's count, a gauge's value, a
 * histogram's number of observations. 0 for NULL or another type. */
uint64_t pb_counter_value(const pb_series *s);
double pb_gauge_value(const pb_series *s);
uint64_t pb_histogram_count(const pb_series *s);

/* Scrape hooks: fn(ctx) runs at every render, before the families are written, one
 * render at a time; it sets gauges (and may clear the families it alone writes). The
 * same (fn, ctx) is added once. Remove a hook before what ctx points to goes away. */
typedef void (*pb_metrics_hook_fn)(void *ctx);
void pb_metrics_hook_add(pb_metrics *m, pb_metrics_hook_fn fn, void *ctx);
void pb_metrics_hook_remove(pb_metrics *m, pb_metrics_hook_fn fn, void *ctx);

/* Runs the hooks, then appends the exposition of every family, in registration order
 * (text format 0.0.4: HELP and TYPE lines, one line per series; histograms as cumulative
 * _bucket series ending with le="+Inf", then _sum and _count), to out. Thread-safe. */
void pb_metrics_render(pb_metrics *m, pb_buf *out);

#endif
