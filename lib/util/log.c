/*
 * log - leveled logger with text and json formats and structured fields (see log.h).
 * A text line is formatted into a stack buffer (cut at LINE_MAX_TEXT bytes); a json line
 * is built with jansson. Either is written with one write(2), so that lines from
 * different threads never interleave. Control characters in messages (which may quote
 * peer input) are escaped. A thread that holds its lines (pb_log_hold: an I/O loop
 * between two waits) gathers its debug and info lines in a thread-local block of PIPE_BUF
 * bytes and writes them with one write(2) when it flushes, when the block is full, or
 * before a warn or error line (so the order is kept).
 */
#include "util/log.h"

#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util/mem.h"

#define MSG_MAX 1024
#define LINE_MAX_TEXT 2048

static atomic_int g_level = PB_LOG_INFO;
static atomic_int g_fd = 2;
static atomic_int g_format = PB_LOG_TEXT;
static atomic_int g_journal = -1; /* -1: not checked yet for the current fd */
static atomic_int g_delivery_level = PB_LOG_INFO;

static const char *const names[] = {"debug", "info", "warn", "error"};
/* syslog priorities (sd-daemon(3)): debug 7, info 6, warning 4, err 3 */
static const int priorities[] = {7, 6, 4, 3};

void pb_log_set_level(pb_log_level level)
{
    atomic_store(&g_level, (int)level);
}

void pb_log_set_delivery_level(pb_log_level level)
{
    atomic_store(&g_delivery_level, (int)level);
}

pb_log_level pb_log_delivery_level(void)
{
    return (pb_log_level)atomic_load(&g_delivery_level);
}

bool pb_log_enabled(pb_log_level level)
{
    return (int)level >= atomic_load(&g_level);
}

void pb_log_set_fd(int fd)
{
    atomic_store(&g_fd, fd);
    atomic_store(&g_journal, -1);
}

void pb_log_set_format(pb_log_format f)
{
    atomic_store(&g_format, (int)f);
}

pb_log_format pb_log_get_format(void)
{
    return (pb_log_format)atomic_load(&g_format);
}

pb_err pb_log_format_parse(const char *s, pb_log_format *out)
{
    if (s && strcmp(s, "text") == 0) {
        *out = PB_LOG_TEXT;
        return PB_OK;
    }
    if (s && strcmp(s, "json") == 0) {
        *out = PB_LOG_JSON;
        return PB_OK;
    }
    return PB_ERR_INVAL;
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

/* systemd.exec(5): JOURNAL_STREAM is "DEVICE:INODE" of the stream connected to journald;
 * it counts only when our log descriptor is that stream (not redirected elsewhere). */
static bool journal_stream_matches(int fd)
{
    const char *e = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2 || fstat(fd, &st) != 0) return false;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

bool pb_log_journal(void)
{
    int j = atomic_load(&g_journal);
    if (j < 0) {
        j = journal_stream_matches(atomic_load(&g_fd)) ? 1 : 0;
        atomic_store(&g_journal, j);
    }
    return j == 1;
}

static void timestamp(char out[64])
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(out, 64, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ts.tv_nsec / 1000000));
}

static void write_all(const char *p, size_t n)
{
    ssize_t w = write(atomic_load(&g_fd), p, n);
    (void)w;
}

/* This thread's held lines. PIPE_BUF: one write of at most that many bytes to a pipe (a
 * journal stream, a supervisor's) is never split among other writers' bytes. */
static _Thread_local struct {
    bool on;
    size_t n;
    char buf[PIPE_BUF];
} held;

static void held_write(void)
{
    if (held.n) write_all(held.buf, held.n);
    held.n = 0;
}

/* One whole line (with its newline): held when this thread holds and the line is below
 * warn and fits, written at once otherwise (after what was held, so the order is kept). */
static void emit(pb_log_level level, const char *p, size_t n)
{
    if (held.on && level < PB_LOG_WARN && n <= sizeof held.buf) {
        if (held.n + n > sizeof held.buf) held_write();
        memcpy(held.buf + held.n, p, n);
        held.n += n;
        return;
    }
    held_write();
    write_all(p, n);
}

void pb_log_hold(void)
{
    held.on = true;
}

void pb_log_flush(void)
{
    held_write();
    held.on = false;
}

/* ---- text ---------------------------------------------------------------------------------- */

/* A bounded line buffer: appends stop (silently) 2 bytes before the end, leaving room
 * for the newline. */
struct line {
    char buf[LINE_MAX_TEXT];
    size_t n;
};

static void put(struct line *l, const char *s, size_t len)
{
    size_t room = sizeof l->buf - 2 - l->n;
    if (len > room) len = room;
    memcpy(l->buf + l->n, s, len);
    l->n += len;
}

static void puts_(struct line *l, const char *s)
{
    put(l, s, strlen(s));
}

/* s with control characters as \xNN; with quoting, also \" and \\. */
static void put_escaped(struct line *l, const char *s, bool quoting)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f) {
            char hex[5];
            snprintf(hex, sizeof hex, "\\x%02x", c);
            puts_(l, hex);
        } else if (quoting && (c == '"' || c == '\\')) {
            char esc[2] = {'\\', (char)c};
            put(l, esc, 2);
        } else {
            put(l, s, 1);
        }
    }
}

static bool needs_quotes(const char *s)
{
    if (!*s) return true;
    for (; *s; s++)
        if (*s == ' ' || *s == '"' || *s == '=' || *s == '\\') return true;
    return false;
}

/* A key as written in text: [A-Za-z0-9_.-], anything else as '_'. */
static void put_key(struct line *l, const char *k)
{
    for (; k && *k; k++) {
        char c = *k;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '.' || c == '-';
        put(l, ok ? k : "_", 1);
    }
}

static void write_text(pb_log_level level, const char *peer, const pb_log_kv *kv, size_t nkv,
                       const char *msg)
{
    struct line l = {.n = 0};
    char ts[64], head[80];
    if (pb_log_journal()) {
        snprintf(head, sizeof head, "<%d>", priorities[level]);
        puts_(&l, head);
    }
    timestamp(ts);
    snprintf(head, sizeof head, "%s %-5s ", ts, names[level]);
    puts_(&l, head);
    if (peer) { /* chosen by the peer: quoted like a field value when needed */
        bool q = needs_quotes(peer);
        puts_(&l, q ? "peer=\"" : "peer=");
        put_escaped(&l, peer, q);
        puts_(&l, q ? "\" " : " ");
    }
    put_escaped(&l, msg, false);
    for (size_t i = 0; i < nkv; i++) {
        puts_(&l, " ");
        put_key(&l, kv[i].key);
        puts_(&l, "=");
        if (kv[i].is_num) {
            char num[24];
            snprintf(num, sizeof num, "%lld", kv[i].n);
            puts_(&l, num);
        } else {
            const char *v = kv[i].s ? kv[i].s : "";
            bool q = needs_quotes(v);
            if (q) puts_(&l, "\"");
            put_escaped(&l, v, q);
            if (q) puts_(&l, "\"");
        }
    }
    l.buf[l.n++] = '\n';
    emit(level, l.buf, l.n);
}

/* ---- json ---------------------------------------------------------------------------------- */

/* A JSON string for s; a string that is not UTF-8 has its non-ASCII bytes replaced. */
static json_t *jstr(const char *s)
{
    json_t *j = json_string(s);
    if (j) return j;
    char *safe = pb_xstrdup(s);
    for (char *p = safe; *p; p++)
        if ((unsigned char)*p >= 0x80) *p = '?';
    j = json_string(safe);
    free(safe);
    return j ? j : json_string("");
}

static bool reserved(const char *k)
{
    return !strcmp(k, "ts") || !strcmp(k, "level") || !strcmp(k, "msg") || !strcmp(k, "peer");
}

static void write_json(pb_log_level level, const char *peer, const pb_log_kv *kv, size_t nkv,
                       const char *msg)
{
    char ts[64];
    timestamp(ts);
    json_t *o = json_object();
    json_object_set_new(o, "ts", json_string(ts));
    json_object_set_new(o, "level", json_string(names[level]));
    json_object_set_new(o, "msg", jstr(msg));
    json_object_set_new(o, "peer", peer ? jstr(peer) : json_null());
    for (size_t i = 0; i < nkv; i++) {
        if (!kv[i].key) continue;
        json_t *v = kv[i].is_num ? json_integer((json_int_t)kv[i].n)
                    : kv[i].s    ? jstr(kv[i].s)
                                 : json_null();
        char *key = reserved(kv[i].key) ? pb_xasprintf("kv_%s", kv[i].key) : NULL;
        json_t *k = jstr(key ? key : kv[i].key); /* keys must be UTF-8 too */
        json_object_set_new(o, json_string_value(k), v);
        json_decref(k);
        free(key);
    }
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!text) return;
    size_t n = strlen(text);
    char *line = pb_xmalloc(n + 1);
    memcpy(line, text, n);
    line[n] = '\n';
    emit(level, line, n + 1);
    free(line);
    free(text);
}

/* ---- entry points -------------------------------------------------------------------------- */

static void vlog(pb_log_level level, const char *peer, const pb_log_kv *kv, size_t nkv,
                 const char *fmt, va_list ap)
{
    if ((unsigned)level > PB_LOG_ERROR) level = PB_LOG_ERROR;
    char msg[MSG_MAX];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (atomic_load(&g_format) == PB_LOG_JSON)
        write_json(level, peer, kv, nkv, msg);
    else
        write_text(level, peer, kv, nkv, msg);
}

void pb_log(pb_log_level level, const char *peer, const char *fmt, ...)
{
    if (!pb_log_enabled(level)) return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, peer, NULL, 0, fmt, ap);
    va_end(ap);
}

void pb_log_line(pb_log_level level, const char *msg)
{
    pb_log(level, NULL, "%s", msg ? msg : "");
}

void pb_log_kv_write(pb_log_level level, const char *peer, const pb_log_kv *kv, size_t nkv,
                     const char *fmt, ...)
{
    if (!pb_log_enabled(level)) return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, peer, kv, kv ? nkv : 0, fmt, ap);
    va_end(ap);
}

pb_err pb_log_set_format_name(const char *name)
{
    pb_log_format f;
    pb_err err = pb_log_format_parse(name, &f);
    if (err == PB_OK) pb_log_set_format(f);
    return err;
}
