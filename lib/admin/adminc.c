/*
 * adminc - a client of the admin API (JSON over HTTP on loopback TCP or a Unix socket),
 * over libcurl. postboxctl is a thin shell over it; a homeserver in another process can
 * use it the same way.
 *
 * Untrusted input: the admin listener's answers, bounded to PB_ADMINC_MAX_ANSWER bytes.
 */
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/buf.h"
#include "util/mem.h"
#include "postbox.h"

#define PB_ADMINC_MAX_ANSWER (64u * 1024u * 1024u)

struct pb_adminc {
    char *base;      /* http://host:port */
    char *unix_path; /* or NULL */
    char *auth;      /* "Authorization: Bearer ..." or NULL */
    CURL *curl;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

pb_err pb_adminc_new(const char *listen, const char *token, pb_adminc **out)
{
    pthread_once(&curl_once, curl_init);
    pb_adminc *a = pb_xcalloc(1, sizeof *a);
    if (strncmp(listen, "unix:", 5) == 0) {
        a->unix_path = pb_xstrdup(listen + 5);
        a->base = pb_xstrdup("http://localhost");
    } else {
        a->base = pb_xasprintf("http://%s", listen);
    }
    if (token) a->auth = pb_xasprintf("Authorization: Bearer %s", token);
    a->curl = curl_easy_init();
    if (!a->curl) {
        pb_adminc_free(a);
        return PB_ERR_INTERNAL;
    }
    *out = a;
    return PB_OK;
}

void pb_adminc_free(pb_adminc *a)
{
    if (!a) return;
    if (a->curl) curl_easy_cleanup(a->curl);
    free(a->base);
    free(a->unix_path);
    free(a->auth);
    free(a);
}

static size_t on_data(char *p, size_t size, size_t n, void *ud)
{
    pb_buf *b = ud;
    if (b->len + size * n > PB_ADMINC_MAX_ANSWER) return 0;
    pb_buf_append(b, p, size * n);
    return size * n;
}

pb_err pb_adminc_call(pb_adminc *a, const char *method, const char *path, const char *body_json,
                      long timeout_ms, long *status, char **answer)
{
    CURL *c = a->curl;
    pb_buf b = PB_BUF_INIT;
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *hdrs = NULL;
    char *url = pb_xasprintf("%s%s", a->base, path);
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms > 0 ? timeout_ms : 30000L);
    if (a->unix_path) curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, a->unix_path);
    hdrs = curl_slist_append(hdrs, "Expect:");
    if (a->auth) hdrs = curl_slist_append(hdrs, a->auth);
    if (body_json) {
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body_json);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body_json));
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    CURLcode rc = curl_easy_perform(c);
    pb_err err = PB_OK;
    if (rc != CURLE_OK) {
        err = rc == CURLE_OPERATION_TIMEDOUT ? PB_ERR_TIMEOUT : PB_ERR_NET;
        pb_buf_free(&b);
        *answer = pb_xasprintf("%s: %s", url, errbuf[0] ? errbuf : curl_easy_strerror(rc));
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    pb_buf_append(&b, "", 1);
    *answer = (char *)pb_buf_steal(&b, NULL);
out:
    curl_slist_free_all(hdrs);
    free(url);
    return err;
}

/* A download's state: the body goes to fd once the status is known to be 2xx. */
struct dl {
    CURL *curl;
    int fd;
    bool write_failed;
    int write_errno;
    pb_buf err; /* the answer of a non-2xx */
};

static size_t on_download(char *p, size_t size, size_t n, void *ud)
{
    struct dl *d = ud;
    size_t len = size * n;
    long code = 0;
    curl_easy_getinfo(d->curl, CURLINFO_RESPONSE_CODE, &code);
    if (code < 200 || code > 299) return on_data(p, size, n, &d->err);
    for (size_t off = 0; off < len;) {
        ssize_t w = write(d->fd, p + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            d->write_failed = true;
            d->write_errno = w < 0 ? errno : EIO;
            return 0;
        }
        off += (size_t)w;
    }
    return len;
}

pb_err pb_adminc_download(pb_adminc *a, const char *path, int fd, long timeout_ms, long *status,
                          char **answer)
{
    CURL *c = a->curl;
    struct dl d = {.curl = c, .fd = fd, .err = PB_BUF_INIT};
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *hdrs = NULL;
    char *url = pb_xasprintf("%s%s", a->base, path);
    *answer = NULL;
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_download);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &d);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    if (timeout_ms > 0) curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
    if (a->unix_path) curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, a->unix_path);
    if (a->auth) hdrs = curl_slist_append(hdrs, a->auth);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    CURLcode rc = curl_easy_perform(c);
    pb_err err = PB_OK;
    if (d.write_failed) {
        err = PB_ERR_IO;
        *answer = pb_xasprintf("cannot write the download: %s", strerror(d.write_errno));
        goto out;
    }
    if (rc != CURLE_OK) {
        err = rc == CURLE_OPERATION_TIMEDOUT ? PB_ERR_TIMEOUT : PB_ERR_NET;
        *answer = pb_xasprintf("%s: %s", url, errbuf[0] ? errbuf : curl_easy_strerror(rc));
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    if (*status < 200 || *status > 299) {
        pb_buf_append(&d.err, "", 1);
        *answer = (char *)pb_buf_steal(&d.err, NULL);
    }
out:
    pb_buf_free(&d.err);
    curl_slist_free_all(hdrs);
    free(url);
    return err;
}
