/*
 * sdnotify - telling the service manager (systemd) how the service is doing: READY=1,
 * RELOADING=1, STOPPING=1, STATUS=... and the watchdog keep-alive WATCHDOG=1, through
 * libsystemd's sd_notify ($NOTIFY_SOCKET). libsystemd is optional at build time
 * (PB_HAVE_LIBSYSTEMD): without it every call is a no-op, as it is without $NOTIFY_SOCKET.
 *
 * The watchdog is opt-in: pb_sdnotify_watchdog_enable() (postboxd calls it) reads the period
 * the service manager asks for (WatchdogSec=, passed as $WATCHDOG_USEC for this process);
 * from then on pb_sdnotify_watchdog_kick(), called every second from the delivery engine's
 * I/O loop while the loop runs and its store work moves, sends WATCHDOG=1 at most once per
 * half period. A
 * program that embeds libpostbox and runs its own watchdog never enables it, so the library
 * never keeps somebody else's service alive.
 *
 * Untrusted input: none (the environment is the service manager's).
 */
#ifndef PB_SDNOTIFY_H
#define PB_SDNOTIFY_H

#include "postbox.h"

/* pb_sdnotify_send and pb_sdnotify_watchdog_enable are public (postbox.h). */

/* Sends WATCHDOG=1 when the watchdog is enabled and half its period has passed since the
 * last keep-alive; otherwise does nothing. Cheap (two atomic loads); thread-safe. */
void pb_sdnotify_watchdog_kick(void);

#endif
