/*
 * metrics - Prometheus registry and text exposition (see metrics.h).
 *
 * Design: families form a list in registration order under the registry's lock; each
 * family keeps its series in a list under its own lock (lock order: registry, then
 * family). A series' values are atomics: a counter is a uint64; a gauge is a double
 * stored as its bit pattern (adds use compare-and-swap); a histogram has one
 * non-cumulative uint64 per bucket plus a double sum, and its _count is the sum of its
 * buckets as read at render time, so _count always equals the +Inf bucket. A render holds
 * the render lock for its whole run (hooks included), so hooks run one at a time and a
 * hook is never removed while it runs.
 *
 * Untrusted input: label values (see metrics.h), escaped when rendered.
 */
#include "util/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/log.h"
#include "util/mem.h"

/* M_SAMPLED: a counter whose value is read from elsewhere at scrape time (CPU seconds):
 * rendered as a counter, stored and set like a gauge. */
enum mtype { M_COUNTER, M_GAUGE, M_HISTOGRAM, M_SAMPLED };

struct pb_series {
    struct pb_series *next;
    enum mtype type;
    char *values[PB_METRICS_MAX_LABELS];
    _Atomic uint64_t v;        /* counter: count; gauge: double bits */
    _Atomic uint64_t sum_bits; /* histogram: double bits of the sum */
    size_t nbuckets;           /* histogram: nbounds + 1 (the last is +Inf) */
    const double *bounds;      /* histogram: the family's */
    _Atomic uint64_t *buckets; /* histogram: non-cumulative counts */
};

struct pb_metric {
    struct pb_metric *next;
    enum mtype type;
    char *name, *help;
    char *labels[PB_METRICS_MAX_LABELS];
    size_t nlabels;
    double *bounds;
    size_t nbounds;
    pthread_mutex_t mu; /* guards the series list */
    pb_series *series, **tail;
};

struct hook {
    struct hook *next;
    pb_metrics_hook_fn fn;
    void *ctx;
};

struct pb_metrics {
    pthread_mutex_t mu; /* guards the family list */
    pb_metric *families, **tail;
    pthread_mutex_t render_mu; /* one render at a time; guards the hook list */
    struct hook *hooks;
};

static uint64_t dbits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double bitsd(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

pb_metrics *pb_metrics_new(void)
{
    pb_metrics *m = pb_xcalloc(1, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    pthread_mutex_init(&m->render_mu, NULL);
    m->tail = &m->families;
    return m;
}

static void series_free(pb_series *s)
{
    for (size_t i = 0; i < PB_METRICS_MAX_LABELS; i++)
        free(s->values[i]);
    free(s->buckets);
    free(s);
}

static void family_free(pb_metric *f)
{
    for (pb_series *s = f->series, *next; s; s = next) {
        next = s->next;
        series_free(s);
    }
    for (size_t i = 0; i < f->nlabels; i++)
        free(f->labels[i]);
    free(f->name);
    free(f->help);
    free(f->bounds);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

void pb_metrics_free(pb_metrics *m)
{
    if (!m) return;
    for (pb_metric *f = m->families, *next; f; f = next) {
        next = f->next;
        family_free(f);
    }
    for (struct hook *h = m->hooks, *next; h; h = next) {
        next = h->next;
        free(h);
    }
    pthread_mutex_destroy(&m->mu);
    pthread_mutex_destroy(&m->render_mu);
    free(m);
}

/* ---- registration --------------------------------------------------------------------- */

static bool name_ok(const char *s, bool colon)
{
    if (!s || !*s) return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        bool digit = c >= '0' && c <= '9';
        if (!(alpha || (colon && c == ':') || (p != s && digit))) return false;
    }
    return true;
}

/* Splits "a,b" into f->labels; false for a bad or reserved name. */
static bool parse_labels(pb_metric *f, const char *labels)
{
    if (!labels || !*labels) return true;
    const char *p = labels;
    for (;;) {
        const char *e = strchrnul(p, ',');
        if (f->nlabels == PB_METRICS_MAX_LABELS) return false;
        char *name = pb_xstrndup(p, (size_t)(e - p));
        f->labels[f->nlabels++] = name;
        if (!name_ok(name, false) || strncmp(name, "__", 2) == 0) return false;
        if (f->type == M_HISTOGRAM && strcmp(name, "le") == 0) return false;
        for (size_t i = 0; i + 1 < f->nlabels; i++)
            if (strcmp(f->labels[i], name) == 0) return false;
        if (!*e) return true;
        p = e + 1;
    }
}

static pb_series *series_new(const pb_metric *f, const char *const *values)
{
    pb_series *s = pb_xcalloc(1, sizeof *s);
    s->type = f->type;
    for (size_t i = 0; i < f->nlabels; i++)
        s->values[i] = pb_xstrdup(values[i]);
    if (f->type == M_HISTOGRAM) {
        s->nbuckets = f->nbounds + 1;
        s->bounds = f->bounds;
        s->buckets = pb_xcalloc(s->nbuckets, sizeof *s->buckets);
    }
    return s;
}

static pb_metric *family_add(pb_metrics *m, enum mtype type, const char *name, const char *help,
                             const char *labels, const double *bounds, size_t nbounds)
{
    if (!m) return NULL;
    pb_metric *f = pb_xcalloc(1, sizeof *f);
    f->type = type;
    f->name = pb_xstrdup(name ? name : "");
    f->help = pb_xstrdup(help ? help : "");
    f->tail = &f->series;
    pthread_mutex_init(&f->mu, NULL);
    const char *why = NULL;
    if (!name_ok(name, true))
        why = "invalid metric name";
    else if (!parse_labels(f, labels))
        why = "invalid, reserved or repeated label name";
    if (!why && type == M_HISTOGRAM) {
        if (nbounds == 0 || nbounds > PB_METRICS_MAX_BUCKETS) why = "wrong number of buckets";
        for (size_t i = 0; !why && i < nbounds; i++)
            if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
                why = "bucket bounds must be finite and increasing";
        if (!why) {
            f->bounds = pb_xmalloc(nbounds * sizeof *f->bounds);
            memcpy(f->bounds, bounds, nbounds * sizeof *f->bounds);
            f->nbounds = nbounds;
        }
    }
    pthread_mutex_lock(&m->mu);
    for (pb_metric *g = m->families; g && !why; g = g->next)
        if (strcmp(g->name, f->name) == 0) why = "name registered twice";
    if (!why) {
        if (f->nlabels == 0) {
            f->series = series_new(f, NULL);
            f->tail = &f->series->next;
        }
        *m->tail = f;
        m->tail = &f->next;
    }
    pthread_mutex_unlock(&m->mu);
    if (why) {
        PB_ERROR(NULL, "metrics: cannot register %s: %s", name ? name : "(null)", why);
        family_free(f);
        return NULL;
    }
    return f;
}

pb_metric *pb_metrics_counter(pb_metrics *m, const char *name, const char *help, const char *labels)
{
    return family_add(m, M_COUNTER, name, help, labels, NULL, 0);
}

pb_metric *pb_metrics_gauge(pb_metrics *m, const char *name, const char *help, const char *labels)
{
    return family_add(m, M_GAUGE, name, help, labels, NULL, 0);
}

pb_metric *pb_metrics_counter_sampled(pb_metrics *m, const char *name, const char *help,
                                      const char *labels)
{
    return family_add(m, M_SAMPLED, name, help, labels, NULL, 0);
}

pb_metric *pb_metrics_histogram(pb_metrics *m, const char *name, const char *help,
                                const char *labels, const double *bounds, size_t nbounds)
{
    return family_add(m, M_HISTOGRAM, name, help, labels, bounds, nbounds);
}

pb_series *pb_metric_series(pb_metric *f, const char *const *values)
{
    if (!f) return NULL;
    size_t n = 0;
    while (values && values[n])
        n++;
    if (n != f->nlabels) {
        PB_ERROR(NULL, "metrics: %s takes %zu label values, got %zu", f->name, f->nlabels, n);
        return NULL;
    }
    pthread_mutex_lock(&f->mu);
    pb_series *s = f->series;
    for (; s; s = s->next) {
        size_t i = 0;
        while (i < n && strcmp(s->values[i], values[i]) == 0)
            i++;
        if (i == n) break;
    }
    if (!s) {
        s = series_new(f, values);
        *f->tail = s;
        f->tail = &s->next;
    }
    pthread_mutex_unlock(&f->mu);
    return s;
}

void pb_metric_clear(pb_metric *f)
{
    if (!f) return;
    pthread_mutex_lock(&f->mu);
    pb_series *s = f->series;
    f->series = NULL;
    f->tail = &f->series;
    if (f->nlabels == 0 && s) {
        /* the one series of an unlabelled family stays (reset to zero) */
        pb_series *keep = s;
        s = s->next;
        keep->next = NULL;
        atomic_store(&keep->v, 0);
        atomic_store(&keep->sum_bits, 0);
        for (size_t i = 0; i < keep->nbuckets; i++)
            atomic_store(&keep->buckets[i], 0);
        f->series = keep;
        f->tail = &keep->next;
    }
    pthread_mutex_unlock(&f->mu);
    for (pb_series *next; s; s = next) {
        next = s->next;
        series_free(s);
    }
}

/* ---- recording --------------------------------------------------------------------------- */

void pb_counter_add(pb_series *s, uint64_t n)
{
    if (s && s->type == M_COUNTER) atomic_fetch_add_explicit(&s->v, n, memory_order_relaxed);
}

void pb_gauge_set(pb_series *s, double v)
{
    if (s && s->type == M_GAUGE) atomic_store_explicit(&s->v, dbits(v), memory_order_relaxed);
}

void pb_counter_set_sampled(pb_series *s, double v)
{
    if (s && s->type == M_SAMPLED) atomic_store_explicit(&s->v, dbits(v), memory_order_relaxed);
}

static void add_double(_Atomic uint64_t *cell, double delta)
{
    uint64_t old = atomic_load_explicit(cell, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(cell, &old, dbits(bitsd(old) + delta),
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

void pb_gauge_add(pb_series *s, double delta)
{
    if (s && s->type == M_GAUGE) add_double(&s->v, delta);
}

void pb_histogram_observe(pb_series *s, double v)
{
    if (!s || s->type != M_HISTOGRAM || isnan(v)) return;
    size_t lo = 0, hi = s->nbuckets - 1; /* first bound >= v, or the +Inf bucket */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (v <= s->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&s->buckets[lo], 1, memory_order_relaxed);
    add_double(&s->sum_bits, v);
}

double pb_metrics_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

uint64_t pb_counter_value(const pb_series *s)
{
    return s && s->type == M_COUNTER ? atomic_load(&((pb_series *)s)->v) : 0;
}

double pb_gauge_value(const pb_series *s)
{
    return s && (s->type == M_GAUGE || s->type == M_SAMPLED)
               ? bitsd(atomic_load(&((pb_series *)s)->v))
               : 0;
}

uint64_t pb_histogram_count(const pb_series *s)
{
    if (!s || s->type != M_HISTOGRAM) return 0;
    uint64_t n = 0;
    for (size_t i = 0; i < s->nbuckets; i++)
        n += atomic_load(&((pb_series *)s)->buckets[i]);
    return n;
}

/* ---- hooks ------------------------------------------------------------------------------- */

void pb_metrics_hook_add(pb_metrics *m, pb_metrics_hook_fn fn, void *ctx)
{
    if (!m || !fn) return;
    pthread_mutex_lock(&m->render_mu);
    struct hook **pp = &m->hooks;
    while (*pp && !((*pp)->fn == fn && (*pp)->ctx == ctx))
        pp = &(*pp)->next;
    if (!*pp) {
        *pp = pb_xcalloc(1, sizeof **pp);
        (*pp)->fn = fn;
        (*pp)->ctx = ctx;
    }
    pthread_mutex_unlock(&m->render_mu);
}

void pb_metrics_hook_remove(pb_metrics *m, pb_metrics_hook_fn fn, void *ctx)
{
    if (!m) return;
    pthread_mutex_lock(&m->render_mu);
    for (struct hook **pp = &m->hooks; *pp; pp = &(*pp)->next) {
        if ((*pp)->fn == fn && (*pp)->ctx == ctx) {
            struct hook *h = *pp;
            *pp = h->next;
            free(h);
            break;
        }
    }
    pthread_mutex_unlock(&m->render_mu);
}

/* ---- rendering --------------------------------------------------------------------------- */

static const char *type_name(enum mtype t)
{
    return t == M_COUNTER || t == M_SAMPLED ? "counter" : t == M_GAUGE ? "gauge" : "histogram";
}

/* Whole numbers below 1e15 in full, else the shortest decimal text that reads back as v;
 * +Inf, -Inf, NaN as the format wants. */
static void put_double(pb_buf *b, double v)
{
    char tmp[40];
    if (isnan(v)) {
        pb_buf_append_str(b, "NaN");
        return;
    }
    if (isinf(v)) {
        pb_buf_append_str(b, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v == floor(v) && fabs(v) < 1e15) { /* whole numbers in full: 30, not 3e+01 */
        snprintf(tmp, sizeof tmp, "%.0f", v);
        pb_buf_append_str(b, tmp);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (strtod(tmp, NULL) == v) break;
    }
    pb_buf_append_str(b, tmp);
}

static void put_u64(pb_buf *b, uint64_t v)
{
    char tmp[24];
    snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    pb_buf_append_str(b, tmp);
}

/* A label value: \ " and newline escaped; other control and non-ASCII bytes as '?'. */
static void put_label_value(pb_buf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\\')
            pb_buf_append_str(b, "\\\\");
        else if (c == '"')
            pb_buf_append_str(b, "\\\"");
        else if (c == '\n')
            pb_buf_append_str(b, "\\n");
        else if (c < 0x20 || c >= 0x7f)
            pb_buf_append(b, "?", 1);
        else
            pb_buf_append(b, s, 1);
    }
}

/* HELP text: \ and newline escaped. */
static void put_help(pb_buf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            pb_buf_append_str(b, "\\\\");
        else if (*s == '\n')
            pb_buf_append_str(b, "\\n");
        else
            pb_buf_append(b, s, 1);
    }
}

/* name{labels[,le="..."]} with an optional suffix (_bucket, _sum, _count). */
static void put_name(pb_buf *b, const pb_metric *f, const pb_series *s, const char *suffix,
                     const char *le)
{
    pb_buf_append_str(b, f->name);
    if (suffix) pb_buf_append_str(b, suffix);
    if (f->nlabels == 0 && !le) return;
    pb_buf_append(b, "{", 1);
    for (size_t i = 0; i < f->nlabels; i++) {
        if (i) pb_buf_append(b, ",", 1);
        pb_buf_append_str(b, f->labels[i]);
        pb_buf_append_str(b, "=\"");
        put_label_value(b, s->values[i]);
        pb_buf_append(b, "\"", 1);
    }
    if (le) {
        if (f->nlabels) pb_buf_append(b, ",", 1);
        pb_buf_append_str(b, "le=\"");
        pb_buf_append_str(b, le);
        pb_buf_append(b, "\"", 1);
    }
    pb_buf_append(b, "}", 1);
}

static void render_series(pb_buf *b, const pb_metric *f, pb_series *s)
{
    if (f->type == M_COUNTER) {
        put_name(b, f, s, NULL, NULL);
        pb_buf_append(b, " ", 1);
        put_u64(b, atomic_load(&s->v));
        pb_buf_append(b, "\n", 1);
        return;
    }
    if (f->type == M_GAUGE || f->type == M_SAMPLED) {
        put_name(b, f, s, NULL, NULL);
        pb_buf_append(b, " ", 1);
        put_double(b, bitsd(atomic_load(&s->v)));
        pb_buf_append(b, "\n", 1);
        return;
    }
    uint64_t cum = 0;
    for (size_t i = 0; i < s->nbuckets; i++) {
        cum += atomic_load(&s->buckets[i]);
        char le[40] = "+Inf";
        if (i < f->nbounds) {
            pb_buf tmp = PB_BUF_INIT;
            put_double(&tmp, f->bounds[i]);
            snprintf(le, sizeof le, "%.*s", (int)tmp.len, (const char *)tmp.data);
            pb_buf_free(&tmp);
        }
        put_name(b, f, s, "_bucket", le);
        pb_buf_append(b, " ", 1);
        put_u64(b, cum);
        pb_buf_append(b, "\n", 1);
    }
    put_name(b, f, s, "_sum", NULL);
    pb_buf_append(b, " ", 1);
    put_double(b, bitsd(atomic_load(&s->sum_bits)));
    pb_buf_append(b, "\n", 1);
    put_name(b, f, s, "_count", NULL);
    pb_buf_append(b, " ", 1);
    put_u64(b, cum);
    pb_buf_append(b, "\n", 1);
}

void pb_metrics_render(pb_metrics *m, pb_buf *out)
{
    if (!m) return;
    pthread_mutex_lock(&m->render_mu);
    for (struct hook *h = m->hooks; h; h = h->next)
        h->fn(h->ctx);
    pthread_mutex_lock(&m->mu);
    for (pb_metric *f = m->families; f; f = f->next) {
        pb_buf_append_str(out, "# HELP ");
        pb_buf_append_str(out, f->name);
        pb_buf_append(out, " ", 1);
        put_help(out, f->help);
        pb_buf_append_str(out, "\n# TYPE ");
        pb_buf_append_str(out, f->name);
        pb_buf_append(out, " ", 1);
        pb_buf_append_str(out, type_name(f->type));
        pb_buf_append(out, "\n", 1);
        pthread_mutex_lock(&f->mu);
        for (pb_series *s = f->series; s; s = s->next)
            render_series(out, f, s);
        pthread_mutex_unlock(&f->mu);
    }
    pthread_mutex_unlock(&m->mu);
    pthread_mutex_unlock(&m->render_mu);
}
