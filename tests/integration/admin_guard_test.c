/*
 * admin_guard_test - the admin listener against what a browser or a slow local client
 * can do (lib/net/admin_http.c): a Host header naming a DNS name (DNS rebinding) is
 * refused, a request that changes something from another origin is refused, a body that is
 * not application/json is refused, and none of these change anything; a client trickling
 * its request is cut at admin_timeout while others are served; an admin token file that
 * group or others can read stops postboxd at start with a clear message.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

static long http(const pbt_daemon *d, const char *method, const char *path, const char *host,
                 const char *origin, const char *ctype, const char *body)
{
    char h1[160], h2[160], h3[160];
    const char *hdrs[4] = {NULL, NULL, NULL, NULL};
    int n = 0;
    if (host) {
        snprintf(h1, sizeof h1, "Host: %s", host);
        hdrs[n++] = h1;
    }
    if (origin) {
        snprintf(h2, sizeof h2, "Origin: %s", origin);
        hdrs[n++] = h2;
    }
    if (ctype) {
        snprintf(h3, sizeof h3, "Content-Type: %s", ctype);
        hdrs[n++] = h3;
    }
    pbt_http h;
    pbt_http_do("http", d->admin_port, method, path, hdrs, body, body ? strlen(body) : 0, NULL, &h);
    long st = h.status;
    pbt_http_clear(&h);
    return st;
}

static long queued_for(const pbt_daemon *d, const char *peer)
{
    long st, q = 0;
    json_t *r = pbt_admin(d, "GET", "/v1/peers", NULL, &st);
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(r, "peers"), i, p)
    {
        if (!strcmp(json_string_value(json_object_get(p, "server_id")), peer))
            q = (long)json_integer_value(json_object_get(p, "queued"));
    }
    json_decref(r);
    return q;
}

static void test_browser_guards(void)
{
    const char *extra[] = {"--admin-timeout", "2", NULL};
    pbt_daemon *d = pbt_daemon_new("guard", extra);
    CHECK(pbt_daemon_start(d));
    char self[64], origin_ok[96];
    snprintf(self, sizeof self, "127.0.0.1:%u", d->admin_port);
    snprintf(origin_ok, sizeof origin_ok, "http://%s", self);
    const char *body = "{\"to\":\"peer.example:443\",\"event\":{\"userAddedToGuild\":{\"userId\":"
                       "\"1\",\"guildId\":\"2\"}}}";

    /* Host must be an address (or localhost): a rebound DNS name is not */
    CHECK_INT(http(d, "GET", "/v1/peers", "evil.example", NULL, NULL, NULL), 403);
    CHECK_INT(http(d, "GET", "/v1/peers", "evil.example:80", NULL, NULL, NULL), 403);
    CHECK_INT(http(d, "GET", "/v1/peers", self, NULL, NULL, NULL), 200);
    CHECK_INT(http(d, "GET", "/v1/peers", "localhost", NULL, NULL, NULL), 200);
    CHECK_INT(http(d, "GET", "/v1/peers", "[::1]:80", NULL, NULL, NULL), 200);
    /* a change from another origin, or a form post: refused, nothing queued */
    CHECK_INT(http(d, "POST", "/v1/outbox", self, "http://evil.example", "application/json", body),
              403);
    CHECK_INT(http(d, "POST", "/v1/outbox", self, NULL, "application/x-www-form-urlencoded", body),
              415);
    CHECK_INT(http(d, "POST", "/v1/outbox", self, NULL, "text/plain", body), 415);
    CHECK_INT(http(d, "POST", "/v1/outbox", self, NULL, NULL, body), 415);
    CHECK_INT(http(d, "POST", "/v1/peers/peer.example:443/drop-parked", self, "http://evil.example",
                   NULL, NULL),
              403);
    CHECK_INT(queued_for(d, "peer.example:443"), 0);
    /* the same from the page's own origin, or with no Origin (a program): accepted */
    CHECK_INT(http(d, "POST", "/v1/outbox", self, origin_ok, "application/json", body), 202);
    CHECK_INT(http(d, "POST", "/v1/outbox", self, NULL, "application/json; charset=utf-8", body),
              202);
    CHECK_INT(queued_for(d, "peer.example:443"), 2);

    /* a client trickling its request is cut at admin_timeout (2 s); others are served */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(d->admin_port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    const char *part = "GET /v1/peers HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    CHECK(send(fd, part, strlen(part), 0) == (ssize_t)strlen(part));
    int64_t t0 = pbt_now_ms();
    bool closed = false;
    char how[160] = "";
    for (int i = 0; i < 100 && !closed; i++) { /* one header byte every 100 ms, 10 s at most */
        CHECK_INT(http(d, "GET", "/healthz", NULL, NULL, NULL, NULL), 200);
        if (send(fd, "X", 1, MSG_NOSIGNAL) != 1) {
            closed = true;
            snprintf(how, sizeof how, "send: %s", strerror(errno));
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (!closed && poll(&p, 1, 100) > 0) {
            char b[256];
            ssize_t n = recv(fd, b, sizeof b - 1, 0);
            if (n <= 0) {
                closed = true;
                snprintf(how, sizeof how, "recv: %s", n ? strerror(errno) : "EOF");
            } else { /* an answer: the test says what it was */
                b[n] = '\0';
                snprintf(how, sizeof how, "answered: %.100s", b);
            }
        }
    }
    int64_t took = pbt_now_ms() - t0;
    fprintf(stderr, "admin_guard: trickling client: %s after %lld ms\n", how, (long long)took);
    CHECKF(closed, "the trickling client was cut (after %lld ms)", (long long)took);
    CHECKF(took >= 1500 && took < 6000, "cut near the 2 s deadline: %lld ms", (long long)took);
    close(fd);
    pbt_daemon_free(d);
}

static void test_token_file_mode(void)
{
    pbt_daemon *d = pbt_daemon_new("guardtok", NULL);
    pbt_daemon_set_token(d, "a-token-of-enough-length-0123");
    char path[600];
    snprintf(path, sizeof path, "%s/admin-token", d->dir);
    CHECK(chmod(path, 0640) == 0);
    CHECK(!pbt_daemon_start(d)); /* refuses to start: the log is printed */
    FILE *f = fopen(d->log_path, "r");
    char line[1024];
    bool said = false;
    while (f && fgets(line, sizeof line, f))
        said = said || (strstr(line, "admin-token") && strstr(line, "chmod 600"));
    if (f) fclose(f);
    CHECKF(said, "the log says why and what to do");
    CHECK(chmod(path, 0600) == 0);
    CHECK(pbt_daemon_start(d));
    pbt_daemon_free(d);
}

int main(void)
{
    test_browser_guards();
    test_token_file_mode();
    return pbt_finish();
}
