/*
 * sdnotify - service manager notifications (see sdnotify.h). The keep-alive is rate-limited
 * with one atomic timestamp: of several threads that find the period over at once, the one
 * whose compare-and-swap wins sends it.
 */
#include "util/sdnotify.h"

#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#ifdef PB_HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

static atomic_int_fast64_t g_interval_ms; /* 0: watchdog not enabled */
static atomic_int_fast64_t g_last_ms;

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void pb_sdnotify_send(const char *state)
{
#ifdef PB_HAVE_LIBSYSTEMD
    if (state) sd_notify(0, state);
#else
    (void)state;
#endif
}

uint64_t pb_sdnotify_watchdog_enable(void)
{
#ifdef PB_HAVE_LIBSYSTEMD
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return 0;
    int64_t half = (int64_t)(usec / 2000);
    if (half < 1) half = 1;
    atomic_store(&g_last_ms, mono_ms() - half); /* the first kick sends at once */
    atomic_store(&g_interval_ms, half);
    return (uint64_t)half;
#else
    return 0;
#endif
}

void pb_sdnotify_watchdog_kick(void)
{
    int64_t iv = atomic_load_explicit(&g_interval_ms, memory_order_relaxed);
    if (iv == 0) return;
    int64_t now = mono_ms();
    int_fast64_t last = atomic_load_explicit(&g_last_ms, memory_order_relaxed);
    if (now - last < iv) return;
    if (!atomic_compare_exchange_strong(&g_last_ms, &last, now)) return; /* another thread */
    pb_sdnotify_send("WATCHDOG=1");
}
