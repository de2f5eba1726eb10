/*
 * notify_test - postboxd under a service manager speaking systemd's notify protocol, faked
 * by this test: a Unix datagram socket named by NOTIFY_SOCKET, and WATCHDOG_USEC asking for
 * keep-alives. A reader thread records every message and, the moment READY=1 arrives, asks
 * the federation listener for the server's Key: READY=1 must mean "serving". Checks:
 *   - READY=1 arrives once at start, and the Key endpoint answers 200 when it does;
 *   - a STATUS= line with the peers and queued events;
 *   - WATCHDOG=1 every half WATCHDOG_USEC (from the delivery loop): never faster, never
 *     much slower;
 *   - SIGHUP: RELOADING=1, then READY=1 again;
 *   - SIGTERM: STOPPING=1, and the process exits 0.
 * Built only with libsystemd (without it the notifications are no-ops by design).
 */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#define MAX_MSGS 256
#define WATCHDOG_US 1000000 /* keep-alives expected every 500 ms */

struct msg {
    char text[256];
    int64_t at_ms;
};

static struct {
    pthread_mutex_t mu;
    struct msg msgs[MAX_MSGS];
    int n;
    long key_status_at_ready; /* HTTP status of Key asked when the first READY=1 came */
    bool stop;
    int fd;
    uint16_t port;
} g = {.mu = PTHREAD_MUTEX_INITIALIZER, .key_status_at_ready = -1};

static void record(const char *line)
{
    bool ready = false;
    pthread_mutex_lock(&g.mu);
    if (g.n < MAX_MSGS) {
        snprintf(g.msgs[g.n].text, sizeof g.msgs[g.n].text, "%s", line);
        g.msgs[g.n].at_ms = pbt_now_ms();
        g.n++;
    }
    ready = strcmp(line, "READY=1") == 0 && g.key_status_at_ready < 0;
    pthread_mutex_unlock(&g.mu);
    if (!ready) return;
    const char *hdrs[] = {"Content-Type: application/hrpc", NULL};
    pbt_http h;
    pbt_http_do("http", g.port, "POST", "/protocol.auth.v1.AuthService/Key", hdrs, "", 0, NULL, &h);
    pthread_mutex_lock(&g.mu);
    g.key_status_at_ready = h.status;
    pthread_mutex_unlock(&g.mu);
    pbt_http_clear(&h);
}

static void *reader(void *arg)
{
    (void)arg;
    char buf[4096];
    for (;;) {
        pthread_mutex_lock(&g.mu);
        bool stop = g.stop;
        pthread_mutex_unlock(&g.mu);
        if (stop) break;
        ssize_t n = recv(g.fd, buf, sizeof buf - 1, 0);
        if (n <= 0) continue; /* the receive timeout: look at g.stop again */
        buf[n] = '\0';
        char *save = NULL;
        for (char *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
            record(l);
    }
    return NULL;
}

/* How many messages equal `text` (or start with it, when prefix). */
static int count(const char *text, bool prefix)
{
    int c = 0;
    pthread_mutex_lock(&g.mu);
    for (int i = 0; i < g.n; i++)
        if (prefix ? strncmp(g.msgs[i].text, text, strlen(text)) == 0
                   : strcmp(g.msgs[i].text, text) == 0)
            c++;
    pthread_mutex_unlock(&g.mu);
    return c;
}

struct want {
    const char *text;
    int n;
};

static bool have(void *ctx)
{
    struct want *w = ctx;
    return count(w->text, false) >= w->n;
}

int main(void)
{
    char *dir = pbt_tmpdir("notify");
    char path[sizeof((struct sockaddr_un *)0)->sun_path];
    if (snprintf(path, sizeof path, "%s/notify.sock", dir) >= (int)sizeof path) {
        CHECK(!"the socket path fits in sun_path");
        return pbt_finish();
    }
    g.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, path, sizeof path);
    struct timeval tv = {0, 100 * 1000};
    setsockopt(g.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (g.fd < 0 || bind(g.fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        CHECK(!"bound the fake NOTIFY_SOCKET");
        return pbt_finish();
    }
    setenv("NOTIFY_SOCKET", path, 1);
    char usec[32];
    snprintf(usec, sizeof usec, "%d", WATCHDOG_US);
    setenv("WATCHDOG_USEC", usec, 1);

    pbt_daemon *d = pbt_daemon_new("notifyd", NULL);
    g.port = d->port;
    pthread_t th;
    pthread_create(&th, NULL, reader, NULL);
    CHECK(pbt_daemon_start(d));

    /* start-up: READY=1 once, when Key already answered; a STATUS= summary */
    struct want ready1 = {"READY=1", 1};
    CHECK(pbt_wait_for(have, &ready1, PBT_BOUND_MS));
    pthread_mutex_lock(&g.mu);
    long key_status = g.key_status_at_ready;
    pthread_mutex_unlock(&g.mu);
    for (int i = 0; i < 100 && key_status < 0; i++) { /* the reader is still asking */
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&g.mu);
        key_status = g.key_status_at_ready;
        pthread_mutex_unlock(&g.mu);
    }
    CHECKF(key_status == 200, "Key answered %ld when READY=1 arrived", key_status);
    CHECK_INT(count("READY=1", false), 1);
    CHECK(count("STATUS=serving as ", true) >= 1);
    pthread_mutex_lock(&g.mu);
    bool status_ok = false;
    for (int i = 0; i < g.n; i++)
        if (!strncmp(g.msgs[i].text, "STATUS=", 7) && strstr(g.msgs[i].text, "peers") &&
            strstr(g.msgs[i].text, "queued events"))
            status_ok = true;
    pthread_mutex_unlock(&g.mu);
    CHECKF(status_ok, "a STATUS= line names peers and queued events");

    /* the watchdog: keep-alives every WATCHDOG_USEC / 2 */
    struct want dogs = {"WATCHDOG=1", 4};
    CHECK(pbt_wait_for(have, &dogs, PBT_BOUND_MS));
    pthread_mutex_lock(&g.mu);
    int64_t prev = 0;
    int gaps = 0;
    for (int i = 0; i < g.n; i++) {
        if (strcmp(g.msgs[i].text, "WATCHDOG=1") != 0) continue;
        if (prev) {
            int64_t gap = g.msgs[i].at_ms - prev;
            /* rate-limited to half the period; the delivery loop wakes at least every
             * second, so a keep-alive is never much later than that */
            CHECKF(gap >= WATCHDOG_US / 2000 - 100, "keep-alives %lld ms apart", (long long)gap);
            CHECKF(gap <= WATCHDOG_US / 2000 + 5000, "keep-alives %lld ms apart", (long long)gap);
            gaps++;
        }
        prev = g.msgs[i].at_ms;
    }
    pthread_mutex_unlock(&g.mu);
    CHECK(gaps >= 3);

    /* reload: RELOADING=1 then READY=1 */
    kill(d->pid, SIGHUP);
    struct want ready2 = {"READY=1", 2};
    CHECK(pbt_wait_for(have, &ready2, PBT_BOUND_MS));
    CHECK_INT(count("RELOADING=1", false), 1);
    pthread_mutex_lock(&g.mu);
    int reloading_at = -1, ready2_at = -1;
    for (int i = 0, r = 0; i < g.n; i++) {
        if (!strcmp(g.msgs[i].text, "RELOADING=1")) reloading_at = i;
        if (!strcmp(g.msgs[i].text, "READY=1") && ++r == 2) ready2_at = i;
    }
    pthread_mutex_unlock(&g.mu);
    CHECK(reloading_at >= 0 && ready2_at > reloading_at);

    /* shutdown: STOPPING=1, exit 0 */
    CHECK_INT(count("STOPPING=1", false), 0);
    CHECK_INT(pbt_daemon_stop(d), 0);
    struct want stopping = {"STOPPING=1", 1};
    CHECK(pbt_wait_for(have, &stopping, 30000));

    pthread_mutex_lock(&g.mu);
    g.stop = true;
    pthread_mutex_unlock(&g.mu);
    pthread_join(th, NULL);
    if (pbt_failed) {
        pbt_daemon_dump_log(d);
        for (int i = 0; i < g.n; i++)
            fprintf(stderr, "notify %lld: %s\n", (long long)g.msgs[i].at_ms, g.msgs[i].text);
    }
    close(g.fd);
    pbt_daemon_free(d);
    pbt_rmrf(dir);
    free(dir);
    return pbt_finish();
}
