/*
 * postboxctl_test - the admin CLI against one real postboxd: send (one event, several,
 * stdin, a repeated `send --id` queued once and a conflicting reuse refused), refusals (invalid
 * server ID, sending to itself), peers showing a dead peer queued with its count, retry/drop-parked
 * on a peer that is not parked (409) or unknown (404, through an escaped IPv6 path segment), empty
 * guild and invite tables, an empty inbox and its JSON shape, rename, --help, usage errors (exit
 * 2), an unreachable daemon, and `inbox --follow` retrying a failing admin listener with one error
 * per streak and ending with exit 0 on SIGINT. Delivery between two daemons is tested elsewhere.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static const char *const EV1 = "'{\"userAddedToGuild\":{\"userId\":\"1\",\"guildId\":\"2\"}}'";
static const char *const EV2 =
    "'{\"userInvited\":{\"userId\":\"1\",\"inviterId\":\"3\",\"inviteId\":\"inv-1\"}}'";

/* Runs a shell command, captures its stdout into *out (caller frees); returns the exit
 * status (-1 when it did not exit normally). */
static int run(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int run(char **out, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    FILE *p = popen(cmd, "r");
    size_t cap = 1 << 16, len = 0, n;
    char *buf = calloc(1, cap);
    while (p && (n = fread(buf + len, 1, cap - len - 1, p)) > 0)
        len += n;
    int st = p ? pclose(p) : -1;
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_help_and_usage(void)
{
    char *out = NULL;
    int rc = run(&out, "%s --help", PB_POSTBOXCTL);
    CHECK_INT(rc, 0);
    const char *cmds[] = {"keygen", "key",   "health",      "version", "send",    "inbox",
                          "peers",  "retry", "drop-parked", "guilds",  "invites", "rename"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char want[64];
        snprintf(want, sizeof want, "\n  %s ", cmds[i]);
        CHECKF(strstr(out, want) != NULL, "--help lists %s:\n%s", cmds[i], out);
    }
    free(out);
    rc = run(&out, "%s no-such-command 2>&1", PB_POSTBOXCTL);
    CHECK_INT(rc, 2);
    CHECKF(strstr(out, "unknown command no-such-command") != NULL, "%s", out);
    free(out);
    rc = run(&out, "%s --admin 127.0.0.1:1 retry 2>&1", PB_POSTBOXCTL);
    CHECKF(rc == 2, "missing argument is a usage error: %d %s", rc, out);
    free(out);
    rc = run(&out, "%s --admin 127.0.0.1:1 send a.example:443 2>&1", PB_POSTBOXCTL);
    CHECKF(rc == 2, "send without events is a usage error: %d %s", rc, out);
    free(out);
    rc = run(&out, "%s --admin 127.0.0.1:1 inbox --limit ten 2>&1", PB_POSTBOXCTL);
    CHECKF(rc == 2, "bad number is a usage error: %d %s", rc, out);
    free(out);
    rc = run(&out, "%s --admin 127.0.0.1:1 send a.example:443 'not json' 2>&1", PB_POSTBOXCTL);
    CHECKF(rc == 2, "an event that is not JSON is refused before any call: %d %s", rc, out);
    free(out);
}

static void test_unreachable(void)
{
    char *out = NULL;
    int rc = run(&out, "%s --admin 127.0.0.1:%u peers 2>&1", PB_POSTBOXCTL, pbt_free_port());
    CHECK(rc != 0);
    CHECKF(strstr(out, "cannot reach postboxd") != NULL, "%s", out);
    free(out);
}

/* Sends events to `dead` in every form; returns how many were accepted. */
static int test_send(const pbt_daemon *d, const char *dead)
{
    char *out = NULL;
    int total = 0;
    int rc = run(&out, "%s --admin %s send %s %s 2>&1", PB_POSTBOXCTL, d->admin, dead, EV1);
    CHECK_INT(rc, 0);
    CHECK_STR(out, "accepted 1 (seq 1)\n");
    total += rc == 0 ? 1 : 0;
    free(out);

    rc = run(&out, "%s --admin %s send %s %s %s 2>&1", PB_POSTBOXCTL, d->admin, dead, EV1, EV2);
    CHECK_INT(rc, 0);
    CHECK_STR(out, "accepted 2 (seq 2-3)\n");
    total += rc == 0 ? 2 : 0;
    free(out);

    rc = run(&out, "printf '%%s' '[%s,%s,%s]' | %s --admin %s send %s - 2>&1",
             "{\"userAddedToGuild\":{\"userId\":\"5\",\"guildId\":\"6\"}}",
             "{\"userRemovedFromGuild\":{\"userId\":\"5\",\"guildId\":\"6\"}}",
             "{\"userRejectedInvite\":{\"userId\":\"5\",\"guildId\":\"6\",\"inviteId\":\"i\"}}",
             PB_POSTBOXCTL, d->admin, dead);
    CHECK_INT(rc, 0);
    CHECK_STR(out, "accepted 3 (seq 4-6)\n");
    total += rc == 0 ? 3 : 0;
    free(out);

    rc = run(&out, "echo %s | %s --admin %s --json send %s -", EV2, PB_POSTBOXCTL, d->admin, dead);
    CHECK_INT(rc, 0);
    json_t *j = json_loads(out, 0, NULL);
    CHECKF(j && json_integer_value(json_object_get(j, "accepted")) == 1, "--json send: %s", out);
    total += rc == 0 ? 1 : 0;
    json_decref(j);
    free(out);

    /* --id: the repeat is accepted and queues nothing (test_peers counts the queue), the
     * ID reused for two events is refused, --id without events is a usage error */
    for (int i = 0; i < 2; i++) {
        rc = run(&out, "%s --admin %s send --id ctl-1 %s %s 2>&1", PB_POSTBOXCTL, d->admin, dead,
                 EV1);
        CHECK_INT(rc, 0);
        CHECK_STR(out, i == 0 ? "accepted 1 (seq 8)\n"
                              : "accepted 1 (seq 8) (duplicate: this submission ID was queued "
                                "before; nothing new queued)\n");
        total += rc == 0 && i == 0 ? 1 : 0;
        free(out);
    }
    rc = run(&out, "%s --admin %s send --id ctl-1 %s %s %s 2>&1", PB_POSTBOXCTL, d->admin, dead,
             EV1, EV2);
    CHECK(rc != 0);
    CHECKF(strstr(out, "409") && strstr(out, "ctl-1"), "ID reused for 2 events: %s", out);
    free(out);
    rc = run(&out, "%s --admin %s send --id ctl-2 %s 2>&1", PB_POSTBOXCTL, d->admin, dead);
    CHECKF(rc == 2, "send --id without events is a usage error: %d %s", rc, out);
    free(out);

    rc = run(&out, "%s --admin %s send no-port.example %s 2>&1", PB_POSTBOXCTL, d->admin, EV1);
    CHECK(rc != 0);
    CHECKF(strstr(out, "400") && strstr(out, "must be a valid server ID"), "%s", out);
    free(out);

    rc = run(&out, "%s --admin %s send %s %s 2>&1", PB_POSTBOXCTL, d->admin, d->server_id, EV1);
    CHECK(rc != 0);
    CHECKF(strstr(out, "cannot send to this server itself"), "%s", out);
    free(out);

    rc = run(&out, "%s --admin %s send %s '{\"userAddedToGuild\":{\"bogus\":1}}' 2>&1",
             PB_POSTBOXCTL, d->admin, dead);
    CHECK(rc != 0);
    CHECKF(strstr(out, "400") != NULL, "an invalid event is refused by the daemon: %s", out);
    free(out);
    return total;
}

static bool str_is(const json_t *v, const char *want)
{
    return json_is_string(v) && !strcmp(json_string_value(v), want);
}

/* Polls `peers --json` until dead is queued with want events (bounded: 20 s). */
static bool wait_queued(const pbt_daemon *d, const char *dead, int want)
{
    int64_t end = pbt_now_ms() + 20000;
    struct timespec nap = {0, 50 * 1000000};
    bool ok = false;
    char *last = NULL;
    while (!ok && pbt_now_ms() < end) {
        free(last);
        if (run(&last, "%s --admin %s --json peers", PB_POSTBOXCTL, d->admin) != 0) break;
        json_t *j = json_loads(last, 0, NULL), *p;
        size_t i;
        json_array_foreach(json_object_get(j, "peers"), i, p)
        {
            if (str_is(json_object_get(p, "server_id"), dead))
                ok = str_is(json_object_get(p, "mode"), "queued") &&
                     json_integer_value(json_object_get(p, "queued")) == want &&
                     json_is_string(json_object_get(p, "last_error")) &&
                     json_is_false(json_object_get(p, "rename_pending"));
        }
        json_decref(j);
        if (!ok) nanosleep(&nap, NULL);
    }
    CHECKF(ok, "peer %s queued with %d events; last answer:\n%s", dead, want, last);
    free(last);
    return ok;
}

static void test_peers(const pbt_daemon *d, const char *dead, int total)
{
    if (!wait_queued(d, dead, total)) return;
    char *out = NULL, row[128];
    int rc = run(&out, "%s --admin %s peers", PB_POSTBOXCTL, d->admin);
    CHECK_INT(rc, 0);
    CHECKF(!strncmp(out, "SERVER_ID ", 10) && strstr(out, "MODE") && strstr(out, "QUEUED") &&
               strstr(out, "OLDEST_AGE") && strstr(out, "NEXT_ATTEMPT") &&
               strstr(out, "LAST_ERROR\n"),
           "header:\n%s", out);
    /* SERVER_ID is the widest cell of its column, so the row reads exactly so */
    snprintf(row, sizeof row, "\n%s  queued  %d ", dead, total);
    CHECKF(strstr(out, row) != NULL, "row \"%s\" in:\n%s", row + 1, out);
    free(out);

    const char *verbs[] = {"retry", "drop-parked"};
    for (int i = 0; i < 2; i++) {
        rc = run(&out, "%s --admin %s %s %s 2>&1", PB_POSTBOXCTL, d->admin, verbs[i], dead);
        CHECK(rc != 0);
        CHECKF(strstr(out, "409") && strstr(out, "is not parked"), "%s: %s", verbs[i], out);
        free(out);
        rc = run(&out, "%s --admin %s %s '[::1]:5' 2>&1", PB_POSTBOXCTL, d->admin, verbs[i]);
        CHECK(rc != 0);
        CHECKF(strstr(out, "404") && strstr(out, "unknown peer [::1]:5"), "%s: %s", verbs[i], out);
        free(out);
    }
}

static void test_users_and_inbox(const pbt_daemon *d)
{
    char *out = NULL;
    int rc = run(&out, "%s --admin %s guilds 42", PB_POSTBOXCTL, d->admin);
    CHECK_INT(rc, 0);
    CHECK_STR(out, "GUILD_ID  SERVER_ID\n");
    free(out);
    rc = run(&out, "%s --admin %s invites 42", PB_POSTBOXCTL, d->admin);
    CHECK_INT(rc, 0);
    CHECK_STR(out, "INVITE_ID  SERVER_ID  INVITER_ID\n");
    free(out);
    rc = run(&out, "%s --admin %s --json invites 42", PB_POSTBOXCTL, d->admin);
    CHECK_INT(rc, 0);
    json_t *j = json_loads(out, 0, NULL);
    CHECKF(j && json_array_size(json_object_get(j, "pendingInvites")) == 0 &&
               json_is_array(json_object_get(j, "pendingInvites")),
           "%s", out);
    json_decref(j);
    free(out);
    rc = run(&out, "%s --admin %s guilds not-a-number 2>&1", PB_POSTBOXCTL, d->admin);
    CHECK(rc != 0);
    CHECKF(strstr(out, "user ID must be a decimal uint64"), "%s", out);
    free(out);

    rc = run(&out, "%s --admin %s inbox 2>&1", PB_POSTBOXCTL, d->admin);
    CHECK_INT(rc, 0);
    CHECK_STR(out, "SEQ  FROM  KIND  DETAILS\n");
    free(out);
    rc = run(&out, "%s --admin %s --json inbox --after 0 --limit 10", PB_POSTBOXCTL, d->admin);
    CHECK_INT(rc, 0);
    j = json_loads(out, 0, NULL);
    CHECKF(j && json_is_array(json_object_get(j, "events")) &&
               json_array_size(json_object_get(j, "events")) == 0 &&
               json_is_integer(json_object_get(j, "next")) &&
               json_integer_value(json_object_get(j, "next")) == 0 && json_object_size(j) == 2,
           "inbox --json: %s", out);
    json_decref(j);
    free(out);
    rc = run(&out, "%s --admin %s inbox --limit 0 2>&1", PB_POSTBOXCTL, d->admin);
    CHECK(rc != 0);
    CHECKF(strstr(out, "400") != NULL, "limit 0 refused by the daemon: %s", out);
    free(out);
}

static void test_rename(const pbt_daemon *d, const char *dead)
{
    char *out = NULL, want[128];
    char new_id[64];
    snprintf(new_id, sizeof new_id, "127.0.0.1:%u", pbt_free_port());
    int rc = run(&out, "%s --admin %s rename no-port.example 2>&1", PB_POSTBOXCTL, d->admin);
    CHECK(rc != 0);
    CHECKF(strstr(out, "400"), "%s", out);
    free(out);

    rc = run(&out, "%s --admin %s rename %s 2>&1", PB_POSTBOXCTL, d->admin, new_id);
    CHECKF(rc == 0, "rename is stored even though the dead peer was not told: %d", rc);
    snprintf(want, sizeof want, "renamed to %s\n", new_id);
    CHECKF(!strncmp(out, want, strlen(want)), "%s", out);
    snprintf(want, sizeof want, "\n  %s failed: ", dead);
    CHECKF(strstr(out, want) && strstr(out, " (will retry)\n"), "dead peer reported: %s", out);
    CHECKF(strstr(out, "warning: 1 of 1 peers not told yet"), "warning count: %s", out);
    free(out);

    rc = run(&out, "%s --admin %s key", PB_POSTBOXCTL, d->admin);
    CHECK_INT(rc, 0);
    snprintf(want, sizeof want, "server_id:  %s\n", new_id);
    CHECKF(strstr(out, want) != NULL, "%s", out);
    free(out);
    rc = run(&out, "%s --admin %s peers", PB_POSTBOXCTL, d->admin);
    CHECK_INT(rc, 0);
    CHECKF(strstr(out, "(rename pending") != NULL, "rename hint in peers:\n%s", out);
    free(out);
}

/*
 * `inbox --follow` against a listener that accepts and closes every connection: it keeps
 * retrying, reports the failure once for the streak, and SIGINT ends it with exit 0.
 */
static void test_follow_retries(void)
{
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    CHECK(ls >= 0 && bind(ls, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(ls, 8) == 0 &&
          getsockname(ls, (struct sockaddr *)&sa, &sl) == 0);
    char *dir = pbt_tmpdir("follow"), errpath[600], admin[64];
    snprintf(errpath, sizeof errpath, "%s/stderr", dir);
    snprintf(admin, sizeof admin, "127.0.0.1:%u", ntohs(sa.sin_port));
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 2);
        execl(PB_POSTBOXCTL, PB_POSTBOXCTL, "--admin", admin, "inbox", "--follow", (char *)NULL);
        _exit(127);
    }
    int accepted = 0;
    int64_t end = pbt_now_ms() + 15000;
    while (accepted < 3 && pbt_now_ms() < end) {
        struct pollfd pfd = {.fd = ls, .events = POLLIN};
        if (poll(&pfd, 1, 500) == 1) {
            int cs = accept(ls, NULL, NULL);
            if (cs >= 0) {
                accepted++;
                close(cs);
            }
        }
    }
    CHECKF(accepted == 3, "follow retried: %d connections", accepted);
    kill(pid, SIGINT);
    int st = 0;
    waitpid(pid, &st, 0);
    CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "SIGINT ends follow with exit 0 (status %d)", st);
    char *err = NULL;
    run(&err, "cat %s", errpath);
    int reports = 0;
    for (const char *p = err; (p = strstr(p, "postboxctl: cannot reach")); p++)
        reports++;
    CHECKF(reports == 1, "one error per failure streak, got %d:\n%s", reports, err);
    free(err);
    close(ls);
    pbt_rmrf(dir);
    free(dir);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    test_help_and_usage();
    test_unreachable();
    test_follow_retries();

    const char *extra[] = {"--push-retries",
                           "0",
                           "--retry-base-ms",
                           "1",
                           "--backoff-min",
                           "3600",
                           "--backoff-max",
                           "3600",
                           "--rename-wait-ms",
                           "5000",
                           NULL};
    pbt_daemon *d = pbt_daemon_new("ctl", extra);
    if (!pbt_daemon_start(d)) {
        CHECKF(false, "postboxd started");
        pbt_daemon_free(d);
        return pbt_finish();
    }
    char dead[64];
    snprintf(dead, sizeof dead, "127.0.0.1:%u", pbt_free_port());
    int total = test_send(d, dead);
    test_peers(d, dead, total);
    test_users_and_inbox(d);
    test_rename(d, dead);
    if (pbt_failed) pbt_daemon_dump_log(d);
    pbt_daemon_free(d);
    return pbt_finish();
}
