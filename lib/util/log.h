/*
 * log - the library's one logger. One line per event on stderr:
 *   2026-11-26T10:00:00.123Z WARN  peer=beta.example:443 push failed: timeout
 * Library code never prints any other way. Thread-safe (one write(2) per line).
 */
#ifndef PB_LOG_H
#define PB_LOG_H

#include "postbox.h"

/* peer may be NULL when the event concerns no peer. */
void pb_log(pb_log_level level, const char *peer, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
bool pb_log_enabled(pb_log_level level);
/* Redirects output to fd (default 2). */
void pb_log_set_fd(int fd);

#define PB_DEBUG(peer, ...) pb_log(PB_LOG_DEBUG, peer, __VA_ARGS__)
#define PB_INFO(peer, ...) pb_log(PB_LOG_INFO, peer, __VA_ARGS__)
#define PB_WARN(peer, ...) pb_log(PB_LOG_WARN, peer, __VA_ARGS__)
#define PB_ERROR(peer, ...) pb_log(PB_LOG_ERROR, peer, __VA_ARGS__)

#endif
