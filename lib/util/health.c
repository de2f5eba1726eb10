/*
 * health - the store-health tracker (see health.h for the rules).
 *
 * Design: one mutex-protected record {up, since, counts, last line's time, last message};
 * every report takes the lock, updates it and decides from the times whether a line is
 * due; the line is formatted under the lock (reports are rare once backoff paces the
 * callers, and the lock keeps the lines in order).
 */
#include "util/health.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "util/log.h"
#include "util/mem.h"

struct pb_health {
    pthread_mutex_t mu;
    char what[32];
    int64_t (*clock_ms)(void);
    bool down;
    bool announced;      /* a line was written during this outage */
    pb_err err;          /* the last failure's error, while down */
    int64_t down_since;  /* ms */
    int64_t last_line;   /* ms of the last line written; 0: none yet */
    uint64_t in_outage;  /* failures since it went down */
    uint64_t since_line; /* failures not yet counted in a line */
    uint64_t total;
    char last_msg[1024];
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void init(pb_health *h, const char *what, int64_t (*clock_ms)(void))
{
    pthread_mutex_init(&h->mu, NULL);
    snprintf(h->what, sizeof h->what, "%s", what ? what : "store");
    h->clock_ms = clock_ms ? clock_ms : mono_ms;
}

static pb_health g_store;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void store_init(void)
{
    init(&g_store, "store", NULL);
}

pb_health *pb_health_store(void)
{
    pthread_once(&g_once, store_init);
    return &g_store;
}

pb_health *pb_health_new(const char *what, int64_t (*clock_ms)(void))
{
    pb_health *h = pb_xcalloc(1, sizeof *h);
    init(h, what, clock_ms);
    return h;
}

void pb_health_free(pb_health *h)
{
    if (!h || h == &g_store) return;
    pthread_mutex_destroy(&h->mu);
    free(h);
}

bool pb_health_unavailable(pb_err err)
{
    return err == PB_ERR_STORE || err == PB_ERR_DISK_FULL;
}

static const char *cause(pb_err err)
{
    return err == PB_ERR_DISK_FULL ? " (disk full)" : "";
}

void pb_health_fail(pb_health *h, pb_err err, const char *peer, const char *fmt, ...)
{
    if (!h || !pb_health_unavailable(err)) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&h->mu);
    int64_t now = h->clock_ms();
    bool line_due = !h->last_line || now - h->last_line >= PB_HEALTH_REPORT_MS;
    h->total++;
    h->since_line++;
    h->in_outage++;
    h->err = err;
    snprintf(h->last_msg, sizeof h->last_msg, "%s%s%s", peer ? peer : "", peer ? ": " : "", msg);
    if (!h->down) {
        h->down = true;
        h->down_since = now;
        h->in_outage = 1;
        h->announced = false;
        if (line_due) {
            pb_log(PB_LOG_WARN, peer,
                   "%s unavailable%s: %s (retrying with backoff; reported again every %d s "
                   "while it lasts)",
                   h->what, cause(err), msg, PB_HEALTH_REPORT_MS / 1000);
            h->announced = true;
            h->last_line = now;
            h->since_line = 0;
        }
    } else if (line_due) {
        pb_log(PB_LOG_WARN, NULL,
               "%s still unavailable%s after %lld s: %llu failures since the last report; "
               "last: %s",
               h->what, cause(err), (long long)((now - h->down_since) / 1000),
               (unsigned long long)h->since_line, h->last_msg);
        h->announced = true;
        h->last_line = now;
        h->since_line = 0;
    }
    pthread_mutex_unlock(&h->mu);
}

void pb_health_ok(pb_health *h)
{
    if (!h) return;
    pthread_mutex_lock(&h->mu);
    if (h->down) {
        int64_t now = h->clock_ms();
        h->down = false;
        h->err = PB_OK;
        /* an outage nobody heard of is not worth a line of its own unless one is due */
        if (h->announced || !h->last_line || now - h->last_line >= PB_HEALTH_REPORT_MS) {
            pb_log(PB_LOG_INFO, NULL, "%s available again after %.1f s down (%llu failures)",
                   h->what, (double)(now - h->down_since) / 1000, (unsigned long long)h->in_outage);
            h->last_line = now;
            h->since_line = 0;
        }
    }
    pthread_mutex_unlock(&h->mu);
}

bool pb_health_up(pb_health *h)
{
    if (!h) return true;
    pthread_mutex_lock(&h->mu);
    bool up = !h->down;
    pthread_mutex_unlock(&h->mu);
    return up;
}

pb_err pb_health_error(pb_health *h)
{
    if (!h) return PB_OK;
    pthread_mutex_lock(&h->mu);
    pb_err err = h->down ? h->err : PB_OK;
    pthread_mutex_unlock(&h->mu);
    return err;
}

int64_t pb_health_down_ms(pb_health *h)
{
    if (!h) return 0;
    pthread_mutex_lock(&h->mu);
    int64_t ms = h->down ? h->clock_ms() - h->down_since : 0;
    pthread_mutex_unlock(&h->mu);
    return ms;
}

int64_t pb_health_backoff_ms(pb_health *h)
{
    if (!h) return 0;
    pthread_mutex_lock(&h->mu);
    int64_t ms = 0;
    if (h->down) {
        ms = PB_HEALTH_BACKOFF_MIN_MS;
        for (uint64_t k = 1; k < h->in_outage && ms < PB_HEALTH_BACKOFF_MAX_MS; k++)
            ms *= 2;
        if (ms > PB_HEALTH_BACKOFF_MAX_MS) ms = PB_HEALTH_BACKOFF_MAX_MS;
    }
    pthread_mutex_unlock(&h->mu);
    return ms;
}

uint64_t pb_health_failures(pb_health *h)
{
    if (!h) return 0;
    pthread_mutex_lock(&h->mu);
    uint64_t n = h->total;
    pthread_mutex_unlock(&h->mu);
    return n;
}
