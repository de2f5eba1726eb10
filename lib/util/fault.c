/*
 * fault - test-only fault points (see fault.h). The list is read from the environment
 * once, at first use.
 */
#include "util/fault.h"

#ifdef PB_FAULTS
#include "util/log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *g_faults;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void load(void)
{
    g_faults = getenv("PB_FAULTS");
}

bool pb_fault(const char *name)
{
    pthread_once(&g_once, load);
    if (!g_faults || !*g_faults) return false;
    size_t n = strlen(name);
    for (const char *p = g_faults; (p = strstr(p, name)) != NULL; p += n) {
        bool starts = p == g_faults || p[-1] == ',';
        bool ends = p[n] == '\0' || p[n] == ',';
        if (starts && ends) return true;
    }
    return false;
}

/* The first thread to reach an active crash point crashes the process; any other (a
 * group commit wakes several answers at once) waits for that crash, so that the process
 * crashes once, with one line, as the crash tests count. */
static atomic_flag g_crashing = ATOMIC_FLAG_INIT;

void pb_fault_crash(const char *name)
{
    if (!pb_fault(name)) return;
    if (atomic_flag_test_and_set(&g_crashing))
        for (;;)
            pause();
    PB_ERROR(NULL, "fault point %s: crashing", name);
    abort();
}
#else
typedef int pb_fault_unused;
#endif
