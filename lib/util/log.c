/*
 * log - leveled logger (see log.h). Formats the whole line into a stack buffer and
 * writes it with one write(2) so that lines from different threads never interleave.
 * Control characters in messages (which may quote peer input) are escaped.
 */
#include "util/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int g_level = PB_LOG_INFO;
static atomic_int g_fd = 2;

static const char *const names[] = {"debug", "info", "warn", "error"};

void pb_log_set_level(pb_log_level level)
{
    atomic_store(&g_level, (int)level);
}

bool pb_log_enabled(pb_log_level level)
{
    return (int)level >= atomic_load(&g_level);
}

void pb_log_set_fd(int fd)
{
    atomic_store(&g_fd, fd);
}

const char *pb_log_level_name(pb_log_level level)
{
    if ((unsigned)level > PB_LOG_ERROR) return "?";
    return names[level];
}

pb_err pb_log_level_parse(const char *s, pb_log_level *out)
{
    for (int i = 0; i <= PB_LOG_ERROR; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (pb_log_level)i;
            return PB_OK;
        }
    }
    return PB_ERR_INVAL;
}

void pb_log(pb_log_level level, const char *peer, const char *fmt, ...)
{
    if (!pb_log_enabled(level)) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    char line[1400];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, pb_log_level_name(level));
    if (peer && n < (int)sizeof line) {
        n += snprintf(line + n, sizeof line - (size_t)n, "peer=%s ", peer);
    }
    for (const char *p = msg; *p && n < (int)sizeof line - 5; p++) {
        unsigned char c = (unsigned char)*p;
        if (c < 0x20 || c == 0x7f) {
            n += snprintf(line + n, sizeof line - (size_t)n, "\\x%02x", c);
        } else {
            line[n++] = (char)c;
        }
    }
    if (n > (int)sizeof line - 1) n = (int)sizeof line - 1;
    line[n++] = '\n';
    ssize_t w = write(atomic_load(&g_fd), line, (size_t)n);
    (void)w;
}
