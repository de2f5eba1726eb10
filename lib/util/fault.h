/*
 * fault - test-only fault points. In builds with PB_FAULTS (the default CMake option for
 * tests; off for release builds), the environment variable PB_FAULTS lists active points,
 * comma-separated, e.g. PB_FAULTS=hrpc.internal,delivery.crash-after-commit. Code asks
 * pb_fault("name") at the point; without PB_FAULTS compiled in it is constant false.
 */
#ifndef PB_FAULT_H
#define PB_FAULT_H

#include <stdbool.h>

#ifdef PB_FAULTS
bool pb_fault(const char *name);
/* When `name` is active: logs "fault point NAME: crashing" and aborts the process, once:
 * other threads reaching a crash point meanwhile wait for the abort. */
void pb_fault_crash(const char *name);
#else
static inline bool pb_fault(const char *name)
{
    (void)name;
    return false;
}
static inline void pb_fault_crash(const char *name)
{
    (void)name;
}
#endif

#endif
