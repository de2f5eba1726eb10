/*
 * harness - test helpers (see harness.h).
 */
#include "harness.h"

#include <errno.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int pbt_passed, pbt_failed;

void pbt_check(bool ok, const char *file, int line, const char *expr, const char *fmt, ...)
{
    if (ok) {
        pbt_passed++;
        return;
    }
    pbt_failed++;
    fprintf(stderr, "FAIL %s:%d: %s", file, line, expr);
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        fputs(": ", stderr);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
    }
    fputc('\n', stderr);
}

int pbt_finish(void)
{
    printf("%d passed, %d failed\n", pbt_passed, pbt_failed);
    fflush(stdout);
    return pbt_failed == 0 && pbt_passed > 0 ? 0 : 1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

uint8_t *pbt_hex(const char *hex, size_t *len)
{
    size_t n = strlen(hex) / 2;
    uint8_t *out = malloc(n ? n : 1);
    if (!out) abort();
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            fprintf(stderr, "bad hex in test data: %s\n", hex);
            abort();
        }
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    *len = n;
    return out;
}

char *pbt_tohex(const uint8_t *p, size_t n)
{
    char *s = malloc(2 * n + 1);
    if (!s) abort();
    for (size_t i = 0; i < n; i++) sprintf(s + 2 * i, "%02x", p[i]);
    s[2 * n] = '\0';
    return s;
}

json_t *pbt_vectors(void)
{
    json_error_t err;
    json_t *v = json_load_file(PB_SHARED_DIR "/vectors/postbox-vectors.json", 0, &err);
    if (!v) {
        fprintf(stderr, "cannot read %s: %s\n", PB_SHARED_DIR "/vectors/postbox-vectors.json",
                err.text);
        exit(2);
    }
    return v;
}

char *pbt_tmpdir(const char *tag)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    char *path = NULL;
    if (asprintf(&path, "%s/postbox-%s-XXXXXX", base, tag ? tag : "test") < 0) abort();
    if (!mkdtemp(path)) {
        fprintf(stderr, "mkdtemp %s: %s\n", path, strerror(errno));
        exit(2);
    }
    return path;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void pbt_rmrf(const char *path)
{
    if (path) nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int64_t pbt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
