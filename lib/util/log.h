/*
 * log - the library's one logger. One line per event on stderr, in one of two formats:
 *
 *   text (default):
 *     2026-11-26T10:00:00.123Z warn  peer=beta.example:443 push failed: timeout seq=42
 *   json (log_format = json), one object per line:
 *     {"ts":"2026-11-26T10:00:00.123Z","level":"warn","msg":"push failed: timeout",
 *      "peer":"beta.example:443","seq":42}
 *
 * A line may carry structured fields (pb_log_kv): text appends them as ` key=value` (the
 * value in double quotes, with \" and \\ escaped, when it is empty or holds a space, a
 * quote, '=' or a backslash; the peer= value follows the same rule, so that a server ID a
 * peer chose cannot forge fields); json adds them as members (numbers as JSON integers). "peer"
 * is null in json when the line concerns no peer; a field named ts, level, msg or peer is
 * written as kv_<name>.
 *
 * Under systemd (JOURNAL_STREAM names the log descriptor's device and inode, as
 * systemd.exec(5) sets it) text lines start with the sd-daemon(3) priority prefix <N>
 * (debug <7>, info <6>, warn <4>, error <3>), so journald records each line's level; json
 * lines never do.
 *
 * Library code never prints any other way. Thread-safe: each line is built in memory and
 * written with one write(2), so lines from different threads never interleave. Control
 * characters in messages and text field values (which may quote peer input) are escaped
 * as \xNN; in json, strings that are not UTF-8 have their non-ASCII bytes replaced by '?'.
 */
#ifndef PB_LOG_H
#define PB_LOG_H

#include <stddef.h>

#include "postbox.h"

/* peer may be NULL when the event concerns no peer. */
void pb_log(pb_log_level level, const char *peer, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
bool pb_log_enabled(pb_log_level level);
/* Redirects output to fd (default 2); re-checks JOURNAL_STREAM against fd. Lines a
 * thread holds (pb_log_hold) go to the descriptor set when it writes them. */
void pb_log_set_fd(int fd);

/* Held lines, for a thread that writes many (an I/O loop, per round between two waits):
 * after pb_log_hold, this thread's debug and info lines are gathered in a thread-local
 * block and written together (one write(2) of at most PIPE_BUF bytes, still whole lines)
 * by pb_log_flush, which also ends the hold; a full block, or a warn or error line, writes
 * what was held first. A thread that is killed loses what it holds: hold only between two
 * points a few milliseconds apart. */
void pb_log_hold(void);
void pb_log_flush(void);

/* The level of the one line per delivery outcome (a Push sent or received, a Pull
 * answered): PB_LOG_INFO by default, PB_LOG_DEBUG with log_deliveries = debug (thousands
 * of busy peers). Failures are not delivery lines: they keep their own levels.
 * Process-wide, thread-safe. */
void pb_log_set_delivery_level(pb_log_level level);
pb_log_level pb_log_delivery_level(void);

#define PB_DEBUG(peer, ...) pb_log(PB_LOG_DEBUG, peer, __VA_ARGS__)
#define PB_INFO(peer, ...) pb_log(PB_LOG_INFO, peer, __VA_ARGS__)
#define PB_WARN(peer, ...) pb_log(PB_LOG_WARN, peer, __VA_ARGS__)
#define PB_ERROR(peer, ...) pb_log(PB_LOG_ERROR, peer, __VA_ARGS__)

/* ---- format ------------------------------------------------------------------------------ */

typedef enum pb_log_format {
    PB_LOG_TEXT = 0,
    PB_LOG_JSON = 1,
} pb_log_format;

/* Process-wide, like the level (default text). Thread-safe. */
void pb_log_set_format(pb_log_format f);
pb_log_format pb_log_get_format(void);
/* Parses "text" or "json"; PB_ERR_INVAL otherwise. */
pb_err pb_log_format_parse(const char *s, pb_log_format *out);
/* Whether text lines carry the <N> priority prefix (JOURNAL_STREAM matches the fd). */
bool pb_log_journal(void);

/* ---- structured fields ----------------------------------------------------------------- */

/* One field: a string (s, NULL is written as an empty string in text and null in json) or
 * a number (is_num, n). Build them with PB_KV_STR / PB_KV_NUM. */
typedef struct pb_log_kv {
    const char *key;
    const char *s;
    long long n;
    bool is_num;
} pb_log_kv;

#define PB_KV_STR(k, v) ((pb_log_kv){.key = (k), .s = (v), .n = 0, .is_num = false})
#define PB_KV_NUM(k, v) ((pb_log_kv){.key = (k), .s = NULL, .n = (long long)(v), .is_num = true})

/* One line with nkv fields (kv may be NULL when nkv is 0). Nothing is copied or kept. */
void pb_log_kv_write(pb_log_level level, const char *peer, const pb_log_kv *kv, size_t nkv,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* The fields of one line as the two arguments (array, count) pb_log_kv_write takes:
 *
 *   PB_INFO_KV(peer, PB_KVS(PB_KV_STR("kind", "push"), PB_KV_NUM("seq", seq),
 *                           PB_KV_NUM("size", len), PB_KV_NUM("duration_ms", ms),
 *                           PB_KV_STR("status", "sent")),
 *              "event delivered");
 */
#define PB_KVS(...)                                                                                \
    ((const pb_log_kv[]){__VA_ARGS__}),                                                            \
        (sizeof((const pb_log_kv[]){__VA_ARGS__}) / sizeof(pb_log_kv))
#define PB_DEBUG_KV(peer, kvs, ...) pb_log_kv_write(PB_LOG_DEBUG, peer, kvs, __VA_ARGS__)
#define PB_INFO_KV(peer, kvs, ...) pb_log_kv_write(PB_LOG_INFO, peer, kvs, __VA_ARGS__)
#define PB_WARN_KV(peer, kvs, ...) pb_log_kv_write(PB_LOG_WARN, peer, kvs, __VA_ARGS__)
#define PB_ERROR_KV(peer, kvs, ...) pb_log_kv_write(PB_LOG_ERROR, peer, kvs, __VA_ARGS__)

#endif
