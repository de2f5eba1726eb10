/*
 * health_test - the store-health tracker (lib/util/health.h) on a test clock: one line when
 * the store goes down, at most one per 30 s while it stays down (with the count), one when
 * it is back; a flapping store is not announced again; the backoff doubles from 100 ms to
 * 5 s and resets; only unavailable errors count; PB_ERR_DISK_FULL is named.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/health.h"
#include "util/log.h"
#include "harness.h"

static int64_t now_ms;
static int64_t test_clock(void)
{
    return now_ms;
}

/* The log written since the last call (lines captured in a temp file). */
static int log_fd = -1;
static char *take_log(void)
{
    off_t n = lseek(log_fd, 0, SEEK_END);
    char *s = calloc(1, (size_t)n + 1);
    if (n > 0 && pread(log_fd, s, (size_t)n, 0) != n) s[0] = 0;
    CHECK(ftruncate(log_fd, 0) == 0);
    lseek(log_fd, 0, SEEK_SET);
    return s;
}

static int lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void test_outage(void)
{
    pb_health *h = pb_health_new("store", test_clock);
    now_ms = 1000000;
    CHECK(pb_health_up(h));
    CHECK(pb_health_backoff_ms(h) == 0);
    pb_health_fail(h, PB_ERR_INVAL, NULL, "not an outage");
    pb_health_fail(h, PB_ERR_NOT_FOUND, NULL, "not an outage");
    CHECK(pb_health_up(h));
    free(take_log());

    /* 60 s of failures, 1000 per second */
    pb_health_fail(h, PB_ERR_STORE, "p:1", "cannot connect to PostgreSQL");
    CHECK(!pb_health_up(h));
    CHECK(pb_health_error(h) == PB_ERR_STORE);
    CHECK(pb_health_backoff_ms(h) == 100);
    pb_health_fail(h, PB_ERR_STORE, NULL, "x");
    CHECK(pb_health_backoff_ms(h) == 200);
    for (int i = 0; i < 60000; i++) {
        now_ms++;
        pb_health_fail(h, PB_ERR_STORE, NULL, "cannot forget delivered events %d", i);
    }
    CHECK(pb_health_backoff_ms(h) == 5000);
    CHECK(pb_health_down_ms(h) == 60000);
    char *log = take_log();
    CHECKF(lines(log) == 3, "%d lines: %s", lines(log), log);
    CHECK(strstr(log, "store unavailable: cannot connect to PostgreSQL") != NULL);
    CHECK(strstr(log, "still unavailable after 30 s: 30001 failures") != NULL);
    CHECK(strstr(log, "still unavailable after 60 s") != NULL);
    free(log);

    now_ms += 2500;
    pb_health_ok(h);
    CHECK(pb_health_up(h));
    CHECK(pb_health_error(h) == PB_OK);
    CHECK(pb_health_backoff_ms(h) == 0);
    log = take_log();
    CHECKF(lines(log) == 1 &&
               strstr(log, "store available again after 62.5 s down (60002 failures)"),
           "%s", log);
    free(log);
    pb_health_ok(h); /* up already: nothing */
    log = take_log();
    CHECK(lines(log) == 0);
    free(log);

    /* down again within 30 s of the last line: counted, not announced */
    now_ms += 1000;
    pb_health_fail(h, PB_ERR_DISK_FULL, NULL, "store: commit: database or disk is full");
    CHECK(pb_health_error(h) == PB_ERR_DISK_FULL);
    now_ms += 1000;
    pb_health_ok(h);
    log = take_log();
    CHECKF(lines(log) == 0, "%s", log);
    free(log);
    /* later: announced, naming the full disk */
    now_ms += 40000;
    pb_health_fail(h, PB_ERR_DISK_FULL, NULL, "store: commit: database or disk is full");
    log = take_log();
    CHECKF(lines(log) == 1 && strstr(log, "store unavailable (disk full): store: commit"), "%s",
           log);
    free(log);
    CHECK(pb_health_failures(h) == 60002 + 2);
    pb_health_free(h);
    pb_health_free(NULL);
}

int main(void)
{
    char path[] = "/tmp/health_test.XXXXXX";
    log_fd = mkstemp(path);
    CHECK(log_fd >= 0);
    unlink(path);
    pb_log_set_fd(log_fd);
    test_outage();
    pb_log_set_fd(2);
    CHECK(pb_strerror(PB_ERR_DISK_FULL) && !strcmp(pb_strerror(PB_ERR_DISK_FULL), "disk full"));
    CHECK(pb_health_unavailable(PB_ERR_DISK_FULL) && pb_health_unavailable(PB_ERR_STORE));
    CHECK(pb_health_store() == pb_health_store() && pb_health_up(pb_health_store()));
    close(log_fd);
    return pbt_finish();
}
