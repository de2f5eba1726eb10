/*
 * startup_test - postboxd's start-up failures, its configuration test, the single-instance
 * guard, a server_id change with the daemon stopped, and a clean stop with a key fetch in
 * flight.
 *
 * The failure table (the admin and the federation port in use, a data directory in use,
 * PostgreSQL unreachable and the I/O loop's threads failing to start (fault points) are
 * runtime failures, exit 1; the rest configuration errors,
 * exit 2): each case starts postboxd and wants it to exit by itself with the
 * documented status (1 runtime, 2 configuration), never by a signal, with one line naming
 * the setting or file; a configuration error creates nothing (the data directory stays
 * absent). postboxd --check-config catches each configuration case (exit 2) and passes a
 * good configuration; it creates nothing either. File-permission cases need a user that
 * permissions bind: run as root, those postboxd processes run as nobody (uid 65534).
 *
 * The rename: A and B federate; A stops; B queues an event for A's old ID; A starts again
 * with a new server_id and --rename-from its old one: B learns the rename (NotifyNewId with
 * its proof), its guild list follows, A's event sent after it and B's queued one arrive.
 *
 * The stop: a forged Push naming a host that accepts connections and never answers (the
 * key fetch hangs), or a name whose DNS server never answers, or 12 forged Pushes naming
 * 12 such hosts (8 fetches running, the others queued for a slot, each with a request
 * waiting on it); SIGTERM while the fetches are pending: exit 0 (the ASan build: no
 * report, no leak).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "crypto/auth.h"
#include "wire/wire.h"

#define NOBODY 65534

static char *base; /* the test's directory, traversable by nobody */

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) abort();
    va_end(ap);
    return s;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return strdup("");
    size_t cap = 1 << 16, len = 0, n;
    char *buf = calloc(1, cap + 1);
    while ((n = fread(buf + len, 1, cap - len, f)) > 0)
        len += n;
    fclose(f);
    return buf;
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    if (!f) abort();
    fputs(text, f);
    fclose(f);
    chmod(path, mode);
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Runs postboxd with argv (NULL-terminated, without the program), as nobody when
 * as_nobody and this is root; its stderr into *log (caller frees). Returns the wait
 * status, or -1 when it did not exit within 30 s (then killed). */
static int run_postboxd(const char *const *args, bool as_nobody, char **log)
{
    char *logpath = xasprintf("%s/run.log", base);
    unlink(logpath);
    const char *argv[64];
    int n = 0;
    /* PBT_POSTBOXD: another build's postboxd (to see this test fail on older code) */
    argv[n++] = getenv("PBT_POSTBOXD") ? getenv("PBT_POSTBOXD")
                : getenv("PB_FAULTS")  ? PB_POSTBOXD_FAULTS
                                       : PB_POSTBOXD;
    for (int i = 0; args[i] && n < 63; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        if (as_nobody && geteuid() == 0 && (setgid(NOBODY) != 0 || setuid(NOBODY) != 0)) _exit(98);
        execv(argv[0], (char *const *)argv);
        _exit(99);
    }
    int st = -1;
    int64_t until = pbt_now_ms() + 30000;
    while (pbt_now_ms() < until) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) break;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
        st = -1;
    }
    if (st == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    *log = slurp(logpath);
    free(logpath);
    return st;
}

/* A loopback TCP port that accepts connections into its backlog and never answers. */
static int hang_listener(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    *port = pbt_free_port();
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(*port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* ---- the failure table ------------------------------------------------------------------- */

struct scase {
    const char *name;
    int want;           /* exit status */
    const char *needle; /* in the log */
    bool check_catches; /* --check-config exits 2 */
    bool creates_nothing;
    bool as_nobody;
};

/* Runs one case: args for the start (the check adds --check-config [--check-as nobody]). */
static void run_case(const struct scase *c, const char *const *args, const char *data_dir)
{
    char *log = NULL;
    int st = run_postboxd(args, c->as_nobody, &log);
    CHECKF(st != -1 && WIFEXITED(st), "%s: exits by itself, not by a signal (status %d)", c->name,
           st);
    if (st != -1 && WIFEXITED(st))
        CHECKF(WEXITSTATUS(st) == c->want, "%s: exit %d, want %d; log:\n%s", c->name,
               WEXITSTATUS(st), c->want, log);
    CHECKF(strstr(log, c->needle) != NULL, "%s: the log names \"%s\":\n%s", c->name, c->needle,
           log);
    CHECKF(!strstr(log, "Segmentation") && !strstr(log, "AddressSanitizer"), "%s: %s", c->name,
           log);
    if (c->creates_nothing)
        CHECKF(!exists(data_dir), "%s: the data directory %s was not created", c->name, data_dir);
    free(log);
    if (!c->check_catches) return;
    const char *cargs[64];
    int n = 0;
    for (int i = 0; args[i] && n < 60; i++)
        cargs[n++] = args[i];
    cargs[n++] = "--check-config";
    cargs[n] = NULL;
    st = run_postboxd(cargs, c->as_nobody, &log);
    CHECKF(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 2,
           "%s: --check-config exits 2 (status %d); log:\n%s", c->name, st, log);
    CHECKF(strstr(log, c->needle) != NULL, "%s: --check-config names \"%s\":\n%s", c->name,
           c->needle, log);
    if (c->creates_nothing)
        CHECKF(!exists(data_dir), "%s: --check-config created nothing", c->name);
    free(log);
}

/* A data directory with a store and key made by a good start (as nobody when root). */
static char *good_store(const char *tag, const char *listen, const char *admin)
{
    char *dir = xasprintf("%s/%s", base, tag);
    const char *args[] = {"--data-dir",    dir,    "--listen", listen, "--admin-listen", admin,
                          "--peer-scheme", "http", NULL};
    pbt_daemon *d = pbt_daemon_new(tag, NULL);
    /* start it through the harness for the health wait, then move its directory */
    (void)args;
    bool ok = pbt_daemon_start(d);
    CHECKF(ok, "%s: a good start", tag);
    CHECK_INT(pbt_daemon_stop(d), 0);
    char *cmd = xasprintf("cp -a %s %s && chown -R %d:%d %s", d->dir, dir, NOBODY, NOBODY, dir);
    CHECK(system(cmd) == 0);
    free(cmd);
    /* the store remembers the harness's server ID: callers use the same listen address */
    snprintf((char *)listen, 64, "%s", d->server_id);
    pbt_daemon_free(d);
    return dir;
}

static void test_failure_table(void)
{
    char listen[64], admin[64], ports[2][64];
    snprintf(listen, sizeof listen, "127.0.0.1:%u", pbt_free_port());
    snprintf(admin, sizeof admin, "127.0.0.1:%u", pbt_free_port());
    snprintf(ports[0], sizeof ports[0], "127.0.0.1:%u", pbt_free_port());
    snprintf(ports[1], sizeof ports[1], "127.0.0.1:%u", pbt_free_port());

    /* key file mode 644 */
    {
        char *dir = xasprintf("%s/key644", base);
        mkdir(dir, 0700);
        char *key = xasprintf("%s/key", dir);
        write_file(key, "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\n", 0644);
        struct scase c = {"key file mode 644", 2, "chmod 600", true, false, false};
        const char *args[] = {"--data-dir", dir, "--listen", listen, "--admin-listen", admin, NULL};
        run_case(&c, args, NULL);
        char *db = xasprintf("%s/postbox.db", dir), *lock = xasprintf("%s/postbox.lock", dir);
        CHECKF(!exists(db) && !exists(lock), "key file mode 644: no store, no lock created");
        free(db);
        free(lock);
        free(key);
        free(dir);
    }
    /* the I/O loop cannot start (fault points standing in for pthread_create, libcurl's
     * global init and curl_multi_init failing): the transfer thread, the loop thread with
     * the transfer thread already running, libcurl itself, a multi handle */
    {
        const char *points[] = {"ioloop.no-transfer-thread", "ioloop.no-loop-thread",
                                "ioloop.curl-init-fails", "ioloop.no-multi"};
        const char *needles[] = {"cannot start the transfer thread", "cannot start the I/O thread",
                                 "curl_global_init failed", "curl_multi_init failed"};
        for (int i = 0; i < 4; i++) {
            char *dir = xasprintf("%s/%s", base, points[i]);
            setenv("PB_FAULTS", points[i], 1);
            struct scase c = {points[i], 1, needles[i], false, false, false};
            const char *args[] = {
                "--data-dir",    dir,    "--listen", listen, "--admin-listen", admin,
                "--peer-scheme", "http", NULL};
            run_case(&c, args, NULL);
            unsetenv("PB_FAULTS");
            free(dir);
        }
    }
    /* the data directory's parent is missing */
    {
        char *dir = xasprintf("%s/missing/data", base);
        struct scase c = {"data_dir parent missing", 2, "parent directory", true, true, false};
        const char *args[] = {"--data-dir", dir, "--listen", listen, "--admin-listen", admin, NULL};
        run_case(&c, args, dir);
        free(dir);
    }
    /* invalid settings with a fresh data directory: nothing may be created */
    char *fresh = xasprintf("%s/fresh", base);
    {
        char *cert = xasprintf("%s/cert.pem", base), *tkey = xasprintf("%s/tls.key", base);
        write_file(cert,
                   "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n",
                   0644);
        write_file(tkey, "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
                   0600);
        struct scase c = {"bad TLS pair", 2, "TLS certificate", true, true, false};
        const char *args[] = {"--data-dir",     fresh, "--listen",   listen,
                              "--admin-listen", admin, "--tls-cert", cert,
                              "--tls-key",      tkey,  NULL};
        run_case(&c, args, fresh);
        free(cert);
        free(tkey);
    }
    {
        char *tok = xasprintf("%s/token", base);
        write_file(tok, "0123456789abcdef0123456789abcdef\n", 0644);
        struct scase c = {"admin token file mode 644", 2, "admin_token_file", true, true, false};
        const char *args[] = {
            "--data-dir",         fresh, "--listen", listen, "--admin-listen", admin,
            "--admin-token-file", tok,   NULL};
        run_case(&c, args, fresh);
        write_file(tok, "short\n", 0600);
        struct scase c2 = {"admin token too short", 2, "16 or more characters", true, true, false};
        run_case(&c2, args, fresh);
        free(tok);
    }
    {
        char bad[64];
        snprintf(bad, sizeof bad, "0.0.0.0:%u", pbt_free_port());
        struct scase c = {
            "admin_listen not loopback", 2, "admin_listen 0.0.0.0", true, true, false};
        const char *args[] = {"--data-dir", fresh, "--listen", listen, "--admin-listen", bad, NULL};
        run_case(&c, args, fresh);
    }
    {
        char *conf = xasprintf("%s/packaged.conf", base);
        char *text =
            xasprintf("data_dir = %s\nlisten = %s\nadmin_listen = %s\nserver_id = required\n",
                      fresh, listen, admin);
        write_file(conf, text, 0644);
        struct scase c = {
            "packaged server_id = required", 2, "packaged.conf:4 says", true, true, false};
        const char *args[] = {"-c", conf, NULL};
        run_case(&c, args, fresh);
        free(text);
        free(conf);
    }
    {
        char url[128];
        snprintf(url, sizeof url, "postgresql://postbox@127.0.0.1:%u/postbox", pbt_free_port());
        struct scase c = {
            "PostgreSQL unreachable", 1, "cannot connect to PostgreSQL", true, true, false};
        const char *args[] = {"--data-dir", fresh,     "--listen", listen, "--admin-listen",
                              admin,        "--store", url,        NULL};
        run_case(&c, args, fresh);
    }
    /* a store made by a good start, then: another server_id; read-only; unreadable */
    char *dir = good_store("made", listen, admin);
    {
        struct scase c = {
            "server_id differs from the store's", 2, "--rename-from", true, false, false};
        const char *args[] = {
            "--data-dir",           dir, "--listen", listen, "--admin-listen", admin, "--server-id",
            "chat.example.org:443", NULL};
        run_case(&c, args, NULL);
    }
    {
        /* the admin port in use: a runtime failure (1), after the checks */
        uint16_t port;
        int fd = hang_listener(&port);
        char busy[64];
        snprintf(busy, sizeof busy, "127.0.0.1:%u", port);
        struct scase c = {
            "admin port in use", 1, "cannot start admin listener", false, false, false};
        const char *args[] = {"--data-dir", dir, "--listen", listen, "--admin-listen", busy, NULL};
        run_case(&c, args, NULL);
        /* the federation port in use: the same (the store says which server ID it is) */
        struct scase f = {"federation port in use", 1, "change listen", false, false, false};
        const char *fargs[] = {"--data-dir",     dir,   "--listen", busy, "--server-id", listen,
                               "--admin-listen", admin, NULL};
        run_case(&f, fargs, NULL);
        close(fd);
    }
    char *db = xasprintf("%s/postbox.db", dir);
    if (geteuid() == 0 || getuid() != 0) {
        chmod(db, 0400);
        /* the start runs as nobody; the check also runs as root judging as nobody */
        const char *start[] = {"--data-dir",     dir,   "--listen", listen,
                               "--admin-listen", admin, NULL};
        run_case(&(struct scase){"read-only database", 2, "postbox.db", true, false, true}, start,
                 NULL);
        const char *args[] = {"--data-dir",     dir,   "--listen",       listen,
                              "--admin-listen", admin, "--check-config", "--check-as",
                              "nobody",         NULL};
        run_case(&(struct scase){"read-only database (--check-config as root, --check-as nobody)",
                                 2, "postbox.db", false, false, false},
                 args, NULL);
        chmod(db, 0600);
        chmod(dir, 0);
        const char *start2[] = {"--data-dir",     dir,   "--listen", listen,
                                "--admin-listen", admin, NULL};
        run_case(&(struct scase){"unreadable data directory", 2, "data_dir", true, false, true},
                 start2, NULL);
        chmod(dir, 0700);
    }
    free(db);
    /* a good configuration: the check passes and creates nothing; the start works */
    {
        const char *args[] = {"--data-dir",     dir,   "--listen",       listen,
                              "--admin-listen", admin, "--check-config", NULL};
        char *log = NULL;
        char *wal = xasprintf("%s/postbox.db-wal", dir), *shm = xasprintf("%s/postbox.db-shm", dir);
        int st = run_postboxd(args, true, &log);
        CHECKF(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "good configuration: %d\n%s", st,
               log);
        CHECKF(!exists(wal) && !exists(shm), "--check-config created no -wal or -shm");
        free(log);
        free(wal);
        free(shm);
        const char *chg[] = {
            "--data-dir",     dir,         "--listen", listen, "--admin-listen", admin,
            "--check-config", "--changed", NULL};
        st = run_postboxd(chg, true, &log);
        CHECKF(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0 && strstr(log, "data_dir = ") &&
                   strstr(log, "# --data-dir") && !strstr(log, "max_body"),
               "--changed lists the flags given, with where: %s", log);
        free(log);
    }
    free(dir);
    free(fresh);
}

/* ---- one daemon per data directory ------------------------------------------------------- */

static void test_lock(void)
{
    pbt_daemon *a = pbt_daemon_new("lock", NULL);
    if (!pbt_daemon_start(a)) {
        CHECK(false);
        pbt_daemon_free(a);
        return;
    }
    char admin[64], pidtxt[32];
    snprintf(admin, sizeof admin, "127.0.0.1:%u", pbt_free_port());
    snprintf(pidtxt, sizeof pidtxt, "pid %ld", (long)a->pid);
    char fed[64];
    snprintf(fed, sizeof fed, "127.0.0.1:%u", pbt_free_port());
    /* same data directory and server ID, other ports */
    const char *args[] = {"--data-dir", a->dir,           "--server-id", a->server_id, "--listen",
                          fed,          "--admin-listen", admin,         NULL};
    struct scase c = {"data directory in use", 1, pidtxt, false, false, false};
    run_case(&c, args, NULL);
    /* --check-config takes no lock: it passes while the daemon runs */
    const char *chk[] = {"--data-dir",     a->dir, "--server-id",    a->server_id, "--listen", fed,
                         "--admin-listen", admin,  "--check-config", NULL};
    char *log = NULL;
    int st = run_postboxd(chk, false, &log);
    CHECKF(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
           "--check-config next to the running daemon: %d\n%s", st, log);
    free(log);
    long status;
    json_t *h = pbt_admin(a, "GET", "/healthz", NULL, &status);
    CHECKF(status == 200, "the first daemon still serves: %ld", status);
    json_decref(h);
    CHECK_INT(pbt_daemon_stop(a), 0);
    pbt_daemon_free(a);
}

/* ---- server_id change with the daemon stopped -------------------------------------------- */

static json_t *added(const char *user, const char *guild)
{
    return json_pack("{s:{s:s,s:s}}", "userAddedToGuild", "userId", user, "guildId", guild);
}

static bool submit(const pbt_daemon *from, const char *to, const char *user, const char *guild)
{
    long st;
    json_t *r = pbt_admin(from, "POST", "/v1/outbox",
                          json_pack("{s:s,s:o}", "to", to, "event", added(user, guild)), &st);
    json_decref(r);
    return st == 202;
}

struct guild_wait {
    const pbt_daemon *d;
    const char *user, *guild, *server;
};

static bool has_guild(void *vctx)
{
    struct guild_wait *w = vctx;
    char path[96];
    snprintf(path, sizeof path, "/v1/users/%s/guilds", w->user);
    long st;
    json_t *r = pbt_admin(w->d, "GET", path, NULL, &st);
    bool found = false;
    size_t i;
    json_t *it;
    json_array_foreach(json_object_get(r, "guilds"), i, it)
    {
        const char *g = json_string_value(json_object_get(it, "guildId"));
        const char *s = json_string_value(json_object_get(it, "serverId"));
        if (g && s && !strcmp(g, w->guild) && !strcmp(s, w->server)) found = true;
    }
    json_decref(r);
    return found;
}

struct rename_wait {
    const pbt_daemon *d;
    const char *old_id, *new_id;
};

/* B's inbox holds A's rename notice. */
static bool saw_rename(void *vctx)
{
    struct rename_wait *w = vctx;
    long st;
    json_t *r = pbt_admin(w->d, "GET", "/v1/inbox", NULL, &st);
    char *text = json_dumps(r, JSON_COMPACT);
    bool ok = text && strstr(text, w->old_id) && strstr(text, w->new_id);
    free(text);
    json_decref(r);
    return ok;
}

static void test_rename_stopped(void)
{
    pbt_daemon *a = pbt_daemon_new("rena", NULL), *b = pbt_daemon_new("renb", NULL);
    if (!pbt_daemon_start(a) || !pbt_daemon_start(b)) {
        CHECK(false);
        goto out;
    }
    CHECK(submit(a, b->server_id, "7", "1"));
    struct guild_wait g1 = {b, "7", "1", a->server_id};
    CHECKF(pbt_wait_for(has_guild, &g1, 20000), "B got A's first event");
    char old_id[64];
    snprintf(old_id, sizeof old_id, "%s", a->server_id);
    CHECK_INT(pbt_daemon_stop(a), 0);
    /* an event for A's old ID while A is down: B queues it; it must reach A after the
     * rename. The new ID: "localhost" resolves to 127.0.0.1, the same listener. */
    CHECK(submit(b, old_id, "8", "3"));
    char new_id[64];
    snprintf(new_id, sizeof new_id, "localhost:%u", a->port);
    /* a plain restart with the new server_id is refused (exit 2) naming the flag */
    a->args[a->nargs++] = strdup("--server-id");
    a->args[a->nargs++] = strdup(new_id);
    char *log = NULL;
    {
        char listen[64], admin[64];
        snprintf(listen, sizeof listen, "127.0.0.1:%u", a->port);
        snprintf(admin, sizeof admin, "127.0.0.1:%u", a->admin_port);
        const char *args[] = {"--data-dir",  a->dir,           "--listen",
                              listen,        "--admin-listen", admin,
                              "--server-id", new_id,           "--allow-private-peers",
                              "yes",         "--peer-scheme",  "http",
                              NULL};
        int st = run_postboxd(args, false, &log);
        CHECKF(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 2 && strstr(log, "--rename-from"),
               "a new server_id alone is refused, naming --rename-from: %d\n%s", st, log);
        free(log);
    }
    a->args[a->nargs++] = strdup("--rename-from");
    a->args[a->nargs++] = strdup(old_id);
    if (!pbt_daemon_start(a)) {
        CHECK(false);
        goto out;
    }
    snprintf(a->server_id, sizeof a->server_id, "%s", new_id);
    struct rename_wait rw = {b, old_id, new_id};
    CHECKF(pbt_wait_for(saw_rename, &rw, 20000), "B learnt the rename %s -> %s", old_id, new_id);
    /* events after the rename arrive under the new ID, the old ones moved with it */
    CHECK(submit(a, b->server_id, "7", "2"));
    struct guild_wait g2 = {b, "7", "2", new_id}, g1n = {b, "7", "1", new_id};
    CHECKF(pbt_wait_for(has_guild, &g2, 20000), "B got A's event sent after the rename");
    CHECKF(pbt_wait_for(has_guild, &g1n, 20000), "B's guild list follows the rename");
    struct guild_wait back = {a, "8", "3", b->server_id};
    CHECKF(pbt_wait_for(has_guild, &back, 30000),
           "A got B's event queued for its old ID while it was down");
    /* the next start needs no flag: the store and the configuration agree */
    CHECK_INT(pbt_daemon_stop(a), 0);
    a->nargs -= 2;
    free(a->args[a->nargs]);
    free(a->args[a->nargs + 1]);
    CHECKF(pbt_daemon_start(a), "A starts as %s without --rename-from", new_id);
out:
    pbt_daemon_free(a);
    pbt_daemon_free(b);
}

/* ---- stop with a key fetch or a lookup in flight ----------------------------------------- */

static bool readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) == 1;
}

static bool fd_readable(void *vfd)
{
    return readable(*(int *)vfd);
}

/* Sends a Push signed by a fresh key as `as` from a child process (it may never be
 * answered); returns its pid. */
static pid_t forged_push(const pbt_daemon *d, const char *as)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid != 0) return pid;
    pb_keys *k = NULL;
    if (pb_keys_generate(&k) != PB_OK) _exit(1);
    char *auth = pb_auth_header_make(k, as, NULL, (uint64_t)time(NULL));
    char *hdr = xasprintf("Authorization: %s", auth);
    const char *headers[] = {"Content-Type: application/hrpc", hdr, NULL};
    pb_event ev = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 1, .guild_id = 1};
    pb_buf body = PB_BUF_INIT;
    pb_wire_push_encode(&ev, NULL, 1, 0, &body);
    pbt_http h;
    pbt_http_do("http", d->port, "POST", "/protocol.sync.v1.PostboxService/Push", headers,
                body.data, body.len, NULL, &h);
    _exit(0);
}

static void stop_during(const char *what, const char *const *extra, const char *as, int watch_fd)
{
    pbt_daemon *d = pbt_daemon_new("stop", extra);
    d->prog = getenv("PBT_POSTBOXD");
    if (!pbt_daemon_start(d)) {
        CHECK(false);
        pbt_daemon_free(d);
        return;
    }
    pid_t child = forged_push(d, as);
    /* the daemon's fetch (or lookup) reached the hung host: the stop comes while it hangs */
    CHECKF(pbt_wait_for(fd_readable, &watch_fd, 10000), "%s: the fetch reached the hung host",
           what);
    struct timespec ts = {0, 500 * 1000 * 1000}; /* the scenario: SIGTERM 0.5 s later */
    nanosleep(&ts, NULL);
    int st = pbt_daemon_stop(d);
    CHECKF(st == 0, "%s: clean exit after SIGTERM, got %d", what, st);
    char *log = slurp(d->log_path);
    CHECKF(!strstr(log, "AddressSanitizer") && !strstr(log, "runtime error"), "%s:\n%s", what, log);
    free(log);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    pbt_daemon_free(d);
}

static void test_stop_with_fetch_pending(void)
{
    uint16_t port;
    int fd = hang_listener(&port);
    CHECK(fd >= 0);
    char as[64];
    snprintf(as, sizeof as, "127.0.0.1:%u", port);
    stop_during("key fetch from a hung host", NULL, as, fd);
    close(fd);

    /* a DNS server that never answers: the lookup of the key host hangs */
    int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    uint16_t dport = pbt_free_port();
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(dport)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(udp, (struct sockaddr *)&a, sizeof a) == 0);
    char dns[64];
    snprintf(dns, sizeof dns, "127.0.0.1:%u", dport);
    const char *extra[] = {"--dns-servers", dns, NULL};
    stop_during("name lookup that hangs", extra, "hung.postbox.test:443", udp);
    close(udp);
}

/* More forged Pushes naming hung hosts than fetches may run (key_fetches set to 8 here):
 * some fetches are queued behind the running ones, with requests waiting on them, when
 * SIGTERM comes. */
#define NQUEUED_HOSTS 12
struct readable_count {
    int *fds;
    int n, want;
};

static bool enough_readable(void *vctx)
{
    struct readable_count *r = vctx;
    int k = 0;
    for (int i = 0; i < r->n; i++)
        k += readable(r->fds[i]);
    return k >= r->want;
}

static void test_stop_with_fetches_queued(void)
{
    int fds[NQUEUED_HOSTS];
    pid_t kids[NQUEUED_HOSTS];
    int n = 0;
    const char *extra[] = {"--key-fetches", "8", NULL};
    pbt_daemon *d = pbt_daemon_new("stopq", extra);
    d->prog = getenv("PBT_POSTBOXD");
    if (!pbt_daemon_start(d)) {
        CHECK(false);
        pbt_daemon_free(d);
        return;
    }
    for (; n < NQUEUED_HOSTS; n++) {
        uint16_t port;
        fds[n] = hang_listener(&port);
        if (fds[n] < 0) break;
        char as[64];
        snprintf(as, sizeof as, "127.0.0.1:%u", port);
        kids[n] = forged_push(d, as);
    }
    CHECK_INT(n, NQUEUED_HOSTS);
    /* the 8 running fetches reached their hosts; the others wait for a slot */
    struct readable_count rc = {fds, n, 8};
    CHECKF(pbt_wait_for(enough_readable, &rc, 10000), "8 fetches reached their hung hosts");
    struct timespec ts = {0, 500 * 1000 * 1000};
    nanosleep(&ts, NULL);
    int st = pbt_daemon_stop(d);
    CHECKF(st == 0, "fetches queued: clean exit after SIGTERM, got %d", st);
    char *log = slurp(d->log_path);
    CHECKF(!strstr(log, "AddressSanitizer") && !strstr(log, "runtime error") &&
               !strstr(log, "LeakSanitizer"),
           "fetches queued:\n%s", log);
    free(log);
    for (int i = 0; i < n; i++) {
        kill(kids[i], SIGKILL);
        waitpid(kids[i], NULL, 0);
        close(fds[i]);
    }
    pbt_daemon_free(d);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    base = pbt_tmpdir("startup");
    chmod(base, 0755);
    /* PBT_STARTUP_ONLY=stop: only the stop (e.g. with PBT_POSTBOXD a valgrind wrapper) */
    const char *only = getenv("PBT_STARTUP_ONLY");
    if (!only) {
        test_failure_table();
        test_lock();
        test_rename_stopped();
    }
    if (!only || !strcmp(only, "stop")) test_stop_with_fetch_pending();
    if (!only || !strcmp(only, "stop")) test_stop_with_fetches_queued();
    pbt_rmrf(base);
    free(base);
    return pbt_finish();
}
