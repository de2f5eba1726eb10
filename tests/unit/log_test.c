/*
 * log_test - the logger's two formats and structured fields, written to a temporary file:
 * text lines (today's layout, fields appended as key=value, quoting and escaping of
 * values and messages, levels filtered), json lines (every line parsed back with jansson:
 * ts, level, msg, peer, fields as strings and integers, reserved names, bytes that are not
 * UTF-8), the <N> priority prefix under JOURNAL_STREAM only when it names the log's own
 * descriptor, whole lines from concurrent threads, and held lines (pb_log_hold): written
 * only at a flush, a warn line or a full block, each write whole lines of at most PIPE_BUF
 * bytes in order, and another thread's lines never held.
 */
#include "harness.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/log.h"

static char *dir;
static int fd = -1;
static char path[512];

/* A fresh log file; the logger writes there from now on. */
static void open_log(void)
{
    if (fd >= 0) close(fd);
    snprintf(path, sizeof path, "%s/log", dir);
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    pb_log_set_fd(fd);
}

/* Everything written since open_log, as a NUL-terminated string (caller frees). */
static char *contents(void)
{
    struct stat st;
    fstat(fd, &st);
    char *s = calloc(1, (size_t)st.st_size + 1);
    ssize_t r = pread(fd, s, (size_t)st.st_size, 0);
    CHECK(r == st.st_size);
    return s;
}

/* Lines of s (modified in place) into out; returns the count. */
static size_t split(char *s, char **out, size_t max)
{
    size_t n = 0;
    for (char *save = NULL, *l = strtok_r(s, "\n", &save); l && n < max;
         l = strtok_r(NULL, "\n", &save))
        out[n++] = l;
    return n;
}

/* Whether the text line starts with a timestamp "YYYY-MM-DDTHH:MM:SS.mmmZ ". */
static bool has_ts(const char *l)
{
    const char *shape = "dddd-dd-ddTdd:dd:dd.dddZ ";
    for (size_t i = 0; shape[i]; i++) {
        if (shape[i] == 'd' ? (l[i] < '0' || l[i] > '9') : l[i] != shape[i]) return false;
    }
    return true;
}

static void test_text(void)
{
    pb_log_set_format(PB_LOG_TEXT);
    pb_log_set_level(PB_LOG_INFO);
    open_log();
    PB_INFO("beta.example:443", "push failed: %s", "timeout");
    PB_DEBUG(NULL, "not written at info");
    PB_WARN(NULL, "line\nbreak and \x01 control");
    PB_INFO_KV("a.example:1",
               PB_KVS(PB_KV_STR("kind", "userInvited"), PB_KV_NUM("seq", 42), PB_KV_NUM("size", 17),
                      PB_KV_NUM("duration_ms", -3), PB_KV_STR("status", "sent")),
               "event %s", "delivered");
    PB_ERROR_KV(NULL,
                PB_KVS(PB_KV_STR("error", "h.bad \"token\" a=b \\x"), PB_KV_STR("empty", ""),
                       PB_KV_STR("null", NULL), PB_KV_STR("ctl", "a\tb"),
                       PB_KV_STR("bad key!", "v")),
                "refused");
    pb_log_kv_write(PB_LOG_INFO, NULL, NULL, 3, "no fields");
    char *s = contents(), *l[16];
    size_t n = split(s, l, 16);
    CHECK_INT(n, 5);
    for (size_t i = 0; i < n; i++)
        CHECKF(has_ts(l[i]), "timestamp: %s", l[i]);
    if (n == 5) {
        CHECK_STR(l[0] + 25, "info  peer=beta.example:443 push failed: timeout");
        CHECK_STR(l[1] + 25, "warn  line\\x0abreak and \\x01 control");
        CHECK_STR(l[2] + 25, "info  peer=a.example:1 event delivered kind=userInvited seq=42 "
                             "size=17 duration_ms=-3 status=sent");
        CHECK_STR(l[3] + 25, "error refused error=\"h.bad \\\"token\\\" a=b \\\\x\" empty=\"\" "
                             "null=\"\" ctl=a\\x09b bad_key_=v");
        CHECK_STR(l[4] + 25, "info  no fields");
    }
    free(s);
    /* a very long line is cut, still one line */
    open_log();
    char big[3000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    PB_INFO_KV(NULL, PB_KVS(PB_KV_STR("v", big)), "long");
    s = contents();
    CHECK(strlen(s) <= 2048 && s[strlen(s) - 1] == '\n' && strchr(s, '\n') == s + strlen(s) - 1);
    free(s);
    /* a server ID chosen by a peer cannot forge fields: quoted like a field value */
    open_log();
    PB_INFO("evil.example:1 status=sent \"x\n", "push deferred");
    pb_log_line(PB_LOG_WARN, "from a program");
    s = contents();
    n = split(s, l, 16);
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_STR(l[0] + 25, "info  peer=\"evil.example:1 status=sent \\\"x\\x0a\" push deferred");
        CHECK_STR(l[1] + 25, "warn  from a program");
    }
    free(s);
}

static void test_json(void)
{
    pb_log_set_format(PB_LOG_JSON);
    pb_log_set_level(PB_LOG_DEBUG);
    open_log();
    PB_DEBUG(NULL, "plain \"quoted\" \n line");
    PB_WARN_KV("b.example:2",
               PB_KVS(PB_KV_STR("kind", "userAddedToGuild"), PB_KV_NUM("seq", 9007199254740993LL),
                      PB_KV_NUM("duration_ms", 12), PB_KV_STR("status", "deferred"),
                      PB_KV_STR("msg", "clash"), PB_KV_STR("peer", "clash2"),
                      PB_KV_STR("none", NULL)),
               "push %s", "deferred");
    PB_ERROR_KV("bad\xff-id", PB_KVS(PB_KV_STR("v", "caf\xc3\xa9 \xfe")), "bytes \xc3");
    char *s = contents(), *l[8];
    size_t n = split(s, l, 8);
    CHECK_INT(n, 3);
    json_t *j[3] = {NULL, NULL, NULL};
    for (size_t i = 0; i < n && i < 3; i++) {
        json_error_t err;
        j[i] = json_loads(l[i], JSON_REJECT_DUPLICATES, &err);
        CHECKF(json_is_object(j[i]), "line %zu parses: %s (%s)", i, l[i], err.text);
        const char *ts = json_string_value(json_object_get(j[i], "ts"));
        CHECKF(ts && strlen(ts) == 24 && ts[23] == 'Z', "ts %s", ts ? ts : "(none)");
    }
    if (n == 3 && j[0] && j[1] && j[2]) {
        CHECK_STR(json_string_value(json_object_get(j[0], "level")), "debug");
        CHECK_STR(json_string_value(json_object_get(j[0], "msg")), "plain \"quoted\" \n line");
        CHECK(json_is_null(json_object_get(j[0], "peer")));
        CHECK_INT(json_object_size(j[0]), 4);
        CHECK_STR(json_string_value(json_object_get(j[1], "level")), "warn");
        CHECK_STR(json_string_value(json_object_get(j[1], "msg")), "push deferred");
        CHECK_STR(json_string_value(json_object_get(j[1], "peer")), "b.example:2");
        CHECK_STR(json_string_value(json_object_get(j[1], "kind")), "userAddedToGuild");
        CHECK(json_is_integer(json_object_get(j[1], "seq")));
        CHECK_INT(json_integer_value(json_object_get(j[1], "seq")), 9007199254740993LL);
        CHECK_INT(json_integer_value(json_object_get(j[1], "duration_ms")), 12);
        CHECK_STR(json_string_value(json_object_get(j[1], "status")), "deferred");
        CHECK_STR(json_string_value(json_object_get(j[1], "kv_msg")), "clash");
        CHECK_STR(json_string_value(json_object_get(j[1], "kv_peer")), "clash2");
        CHECK(json_is_null(json_object_get(j[1], "none")));
        CHECK_STR(json_string_value(json_object_get(j[2], "level")), "error");
        CHECK_STR(json_string_value(json_object_get(j[2], "peer")), "bad?-id");
        CHECK_STR(json_string_value(json_object_get(j[2], "msg")), "bytes ?");
        CHECK_STR(json_string_value(json_object_get(j[2], "v")), "caf?? ?");
    }
    for (size_t i = 0; i < 3; i++)
        json_decref(j[i]);
    free(s);
    pb_log_set_format(PB_LOG_TEXT);
}

static void test_journal(void)
{
    pb_log_set_level(PB_LOG_DEBUG);
    open_log();
    struct stat st;
    fstat(fd, &st);
    char env[64];
    snprintf(env, sizeof env, "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    setenv("JOURNAL_STREAM", env, 1);
    pb_log_set_fd(fd); /* re-checks */
    CHECK(pb_log_journal());
    pb_log_set_format(PB_LOG_TEXT);
    PB_DEBUG(NULL, "d");
    PB_INFO("p.example:1", "i");
    PB_WARN_KV(NULL, PB_KVS(PB_KV_NUM("n", 1)), "w");
    PB_ERROR(NULL, "e");
    pb_log_set_format(PB_LOG_JSON);
    PB_INFO(NULL, "json has no prefix");
    pb_log_set_format(PB_LOG_TEXT);
    char *s = contents(), *l[8];
    size_t n = split(s, l, 8);
    CHECK_INT(n, 5);
    if (n == 5) {
        CHECKF(!strncmp(l[0], "<7>", 3) && has_ts(l[0] + 3) && !strcmp(l[0] + 28, "debug d"), "%s",
               l[0]);
        CHECKF(!strncmp(l[1], "<6>", 3) && !strcmp(l[1] + 28, "info  peer=p.example:1 i"), "%s",
               l[1]);
        CHECKF(!strncmp(l[2], "<4>", 3) && !strcmp(l[2] + 28, "warn  w n=1"), "%s", l[2]);
        CHECKF(!strncmp(l[3], "<3>", 3) && !strcmp(l[3] + 28, "error e"), "%s", l[3]);
        json_t *j = json_loads(l[4], 0, NULL);
        CHECKF(json_is_object(j), "json line under journald: %s", l[4]);
        json_decref(j);
    }
    free(s);
    /* JOURNAL_STREAM naming another file (output redirected): no prefix */
    snprintf(env, sizeof env, "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino + 1);
    setenv("JOURNAL_STREAM", env, 1);
    open_log();
    CHECK(!pb_log_journal());
    PB_INFO(NULL, "plain");
    s = contents();
    CHECKF(has_ts(s), "no prefix: %s", s);
    free(s);
    setenv("JOURNAL_STREAM", "garbage", 1);
    open_log();
    CHECK(!pb_log_journal());
    unsetenv("JOURNAL_STREAM");
    open_log();
    CHECK(!pb_log_journal());
    pb_log_set_level(PB_LOG_INFO);
}

static void test_parse(void)
{
    pb_log_format f = PB_LOG_JSON;
    CHECK_OK(pb_log_format_parse("text", &f));
    CHECK_INT(f, PB_LOG_TEXT);
    CHECK_OK(pb_log_format_parse("json", &f));
    CHECK_INT(f, PB_LOG_JSON);
    CHECK_ERR(pb_log_format_parse("JSON", &f), PB_ERR_INVAL);
    CHECK_ERR(pb_log_format_parse("", &f), PB_ERR_INVAL);
    CHECK_ERR(pb_log_format_parse(NULL, &f), PB_ERR_INVAL);
}

#define THREADS 6
#define LINES 400

static void *writer(void *arg)
{
    long id = (long)arg;
    for (int i = 0; i < LINES; i++)
        PB_INFO_KV("w.example:1", PB_KVS(PB_KV_NUM("thread", id), PB_KV_NUM("i", i)),
                   "concurrent line %d of thread %ld with some padding to make it longer", i, id);
    return NULL;
}

static void test_threads(void)
{
    pb_log_set_format(PB_LOG_JSON);
    open_log();
    pthread_t th[THREADS];
    for (long i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, writer, (void *)i);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    char *s = contents();
    size_t lines = 0, good = 0;
    for (char *save = NULL, *l = strtok_r(s, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        lines++;
        json_t *j = json_loads(l, 0, NULL);
        good += json_is_integer(json_object_get(j, "i")) != 0;
        json_decref(j);
    }
    CHECK_INT(lines, THREADS * LINES);
    CHECK_INT(good, THREADS * LINES);
    free(s);
    pb_log_set_format(PB_LOG_TEXT);
}

/* Datagrams waiting on sock, one per write(2) of the logger; each checked to be whole
 * lines of at most PIPE_BUF bytes; their lines appended to all (NUL-terminated). */
static size_t take_writes(int sock, char *all, size_t cap)
{
    size_t writes = 0, used = strlen(all);
    char buf[2 * PIPE_BUF];
    for (;;) {
        ssize_t r = recv(sock, buf, sizeof buf, MSG_DONTWAIT);
        if (r <= 0) break;
        writes++;
        CHECK(r <= PIPE_BUF);
        CHECK(buf[r - 1] == '\n');
        if (used + (size_t)r < cap) {
            memcpy(all + used, buf, (size_t)r);
            used += (size_t)r;
            all[used] = 0;
        }
    }
    return writes;
}

static void *other_thread(void *arg)
{
    (void)arg;
    PB_INFO(NULL, "from another thread");
    return NULL;
}

static void test_hold(void)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) == 0);
    pb_log_set_fd(sv[0]);
    static char all[64 * 1024];
    all[0] = 0;

    pb_log_hold();
    PB_INFO(NULL, "held one");
    PB_DEBUG(NULL, "below the level: not written at all");
    PB_INFO(NULL, "held two");
    CHECK_INT(take_writes(sv[1], all, sizeof all), 0); /* nothing written yet */
    pthread_t th; /* another thread's line is not held by this thread's hold */
    pthread_create(&th, NULL, other_thread, NULL);
    pthread_join(th, NULL);
    CHECK_INT(take_writes(sv[1], all, sizeof all), 1);
    CHECK(strstr(all, "from another thread") != NULL);
    all[0] = 0;
    PB_WARN(NULL, "a warning");
    CHECK_INT(take_writes(sv[1], all, sizeof all), 2); /* the held block, then the warning */
    char *one = strstr(all, "held one"), *two = strstr(all, "held two");
    char *warn = strstr(all, "a warning");
    CHECK(one && two && warn && one < two && two < warn);
    PB_INFO(NULL, "still held after the warning");
    CHECK_INT(take_writes(sv[1], all, sizeof all), 0);
    pb_log_flush();
    CHECK_INT(take_writes(sv[1], all, sizeof all), 1);
    CHECK(strstr(all, "still held after the warning") != NULL);
    PB_INFO(NULL, "after the flush");
    CHECK_INT(take_writes(sv[1], all, sizeof all), 1); /* no longer held */

    /* Many lines: full blocks go out as they fill, every line once, in order. */
    all[0] = 0;
    pb_log_hold();
    enum { MANY = 200 };
    for (int i = 0; i < MANY; i++)
        PB_INFO("peer.example:443", "held line %03d with some words to fill a block", i);
    size_t writes = take_writes(sv[1], all, sizeof all);
    CHECK(writes >= 2); /* 200 lines of some 90 bytes are several blocks */
    pb_log_flush();
    writes += take_writes(sv[1], all, sizeof all);
    CHECK(writes <= MANY / 20);
    const char *at = all;
    for (int i = 0; i < MANY; i++) {
        char want[32];
        snprintf(want, sizeof want, "held line %03d ", i);
        const char *f = strstr(at, want);
        CHECK(f != NULL);
        if (!f) break;
        at = f + 1;
    }

    pb_log_set_fd(2);
    close(sv[0]);
    close(sv[1]);
}

int main(void)
{
    dir = pbt_tmpdir("log");
    test_parse();
    test_text();
    test_json();
    test_journal();
    test_threads();
    test_hold();
    pb_log_set_fd(2);
    close(fd);
    pbt_rmrf(dir);
    free(dir);
    return pbt_finish();
}
