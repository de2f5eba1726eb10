/*
 * backup_test - `postboxctl backup` of a running daemon, restored: real postboxd processes
 * on 127.0.0.1 (SQLite stores), driven through the admin API and postboxctl.
 *
 *   flow     A sends groups of events to B. B up (delivered), then B down (queued at A),
 *            then `postboxctl backup` of A runs while groups keep arriving at A, then B up
 *            again and more groups (after the backup: in A's store, not in the copy), until
 *            B holds everything A has.
 *   restore  A stopped; a fresh data directory at A's path holds A's key and the copy as
 *            postbox.db; A started from it: it delivers the copy's queue (B acknowledges
 *            numbers above anything the restored A assigned: A starts a new epoch and
 *            pushes the queue again), then new events submitted to the restored A reach B.
 *   checks   the copy held a queue for B; every event of every group submitted before the
 *            backup began reaches B; B's guild lists and invites equal the events B holds
 *            applied once each in submission order (each group touches keys of its own, so
 *            the replayed ones change nothing: docs/RELIABILITY.md "What remains"); the
 *            events B got twice are all from the copy's queue; the restored A's queue
 *            empties.
 *   cli      backup to an existing FILE is refused (exit 1, FILE unchanged) and replaced
 *            with --force; with PB_TEST_PG_URL, a PostgreSQL store answers 501 naming
 *            pg_dump (and postboxctl exits 1 and writes nothing).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "store/store.h"

#define USERS 4
#define PER_GROUP 6
static const char *const users[USERS] = {"11", "12", "13", "14"};

/* Group k: six events for user k % 4, on keys no other group touches. */
static json_t *group_events(unsigned k)
{
    const char *u = users[k % USERS];
    char g1[32], g2[32], i1[32], i2[32];
    snprintf(g1, sizeof g1, "%u", 100000 + k * 10 + 1);
    snprintf(g2, sizeof g2, "%u", 100000 + k * 10 + 2);
    snprintf(i1, sizeof i1, "inv-%u-1", k);
    snprintf(i2, sizeof i2, "inv-%u-2", k);
    return json_pack("[{s:{s:s,s:s}}, {s:{s:s,s:s}}, {s:{s:s,s:s}}, {s:{s:s,s:s,s:s}},"
                     " {s:{s:s,s:s,s:s}}, {s:{s:s,s:s,s:s}}]",
                     "userAddedToGuild", "userId", u, "guildId", g1,     /* stays */
                     "userAddedToGuild", "userId", u, "guildId", g2,     /* then removed */
                     "userRemovedFromGuild", "userId", u, "guildId", g2, /* */
                     "userInvited", "userId", u, "inviterId", "77", "inviteId", i1, /* */
                     "userInvited", "userId", u, "inviterId", "78", "inviteId", i2, /* */
                     "userRejectedInvite", "guildId", g1, "userId", u, "inviteId", i2);
}

static json_t *sent; /* every group's events in submission order (array of arrays) */

/* Submits group k to `to` through d; true when accepted. */
static bool submit_group(const pbt_daemon *d, const char *to, unsigned k)
{
    json_t *evs = group_events(k);
    long st;
    json_t *r =
        pbt_admin(d, "POST", "/v1/outbox", json_pack("{s:s,s:O}", "to", to, "events", evs), &st);
    bool ok = st == 202 && json_integer_value(json_object_get(r, "accepted")) == PER_GROUP;
    json_decref(r);
    if (ok) {
        while (json_array_size(sent) <= k)
            json_array_append_new(sent, json_null());
        json_array_set(sent, k, evs);
    }
    json_decref(evs);
    return ok;
}

/* How many times ev occurs in list. */
static size_t count_of(json_t *list, json_t *ev)
{
    size_t i, n = 0;
    json_t *e;
    json_array_foreach(list, i, e) n += json_equal(e, ev);
    return n;
}

struct holds {
    const pbt_daemon *b;
    const char *from;
    unsigned from_group, to_group; /* [from, to) */
    size_t missing;
};

/* B holds at least once every event of groups [from_group, to_group). */
static bool holds_groups(void *vctx)
{
    struct holds *h = vctx;
    json_t *got = pbt_inbox_events_from(h->b, h->from);
    h->missing = 0;
    for (unsigned k = h->from_group; k < h->to_group; k++) {
        size_t i;
        json_t *e;
        json_array_foreach(json_array_get(sent, k), i, e) h->missing += count_of(got, e) == 0;
    }
    json_decref(got);
    return h->missing == 0;
}

struct queue_wait {
    const pbt_daemon *d;
    const char *peer;
    long long queued;
};

/* d's queue for peer is empty (GET /v1/peers). */
static bool queue_empty(void *vctx)
{
    struct queue_wait *w = vctx;
    long st;
    json_t *r = pbt_admin(w->d, "GET", "/v1/peers", NULL, &st);
    size_t i;
    json_t *p;
    w->queued = -1;
    json_array_foreach(json_object_get(r, "peers"), i, p)
    {
        if (!strcmp(json_string_value(json_object_get(p, "server_id")), w->peer))
            w->queued = json_integer_value(json_object_get(p, "queued"));
    }
    json_decref(r);
    return st == 200 && w->queued == 0;
}

/* B's guild lists and invites against the events B holds, applied once each in
 * submission order (groups are independent; within one, the order of the group). */
static void check_model(const pbt_daemon *b, const char *server, json_t *got)
{
    for (int u = 0; u < USERS; u++) {
        json_t *guilds = json_object(), *invites = json_object();
        size_t k, i;
        json_t *grp, *e;
        json_array_foreach(sent, k, grp)
        {
            json_array_foreach(grp, i, e)
            {
                if (!count_of(got, e)) continue;
                void *iter = json_object_iter(e);
                const char *kind = json_object_iter_key(iter);
                json_t *f = json_object_iter_value(iter);
                if (strcmp(json_string_value(json_object_get(f, "userId")), users[u])) continue;
                const char *g = json_string_value(json_object_get(f, "guildId"));
                if (!strcmp(kind, "userAddedToGuild")) json_object_set_new(guilds, g, json_true());
                if (!strcmp(kind, "userRemovedFromGuild")) json_object_del(guilds, g);
                if (!strcmp(kind, "userInvited"))
                    json_object_set(invites, json_string_value(json_object_get(f, "inviteId")),
                                    json_object_get(f, "inviterId"));
            }
        }
        char path[128];
        long st;
        snprintf(path, sizeof path, "/v1/users/%s/guilds", users[u]);
        json_t *r = pbt_admin(b, "GET", path, NULL, &st);
        json_t *list = json_object_get(r, "guilds");
        CHECKF(st == 200 && json_array_size(list) == json_object_size(guilds),
               "user %s: %zu guilds, as if once: %zu", users[u], json_array_size(list),
               json_object_size(guilds));
        json_array_foreach(list, i, e)
        {
            const char *g = json_string_value(json_object_get(e, "guildId"));
            CHECKF(json_object_get(guilds, g) != NULL, "user %s: unexpected guild %s", users[u], g);
            CHECK_STR(json_string_value(json_object_get(e, "serverId")), server);
        }
        json_decref(r);
        snprintf(path, sizeof path, "/v1/users/%s/invites", users[u]);
        r = pbt_admin(b, "GET", path, NULL, &st);
        list = json_object_get(r, "pendingInvites");
        CHECKF(st == 200 && json_array_size(list) == json_object_size(invites),
               "user %s: %zu invites, as if once: %zu", users[u], json_array_size(list),
               json_object_size(invites));
        json_array_foreach(list, i, e)
        {
            const char *id = json_string_value(json_object_get(e, "inviteId"));
            json_t *inviter = json_object_get(invites, id);
            CHECKF(inviter && json_equal(inviter, json_object_get(e, "inviterId")),
                   "user %s: invite %s", users[u], id);
        }
        json_decref(r);
        json_decref(guilds);
        json_decref(invites);
    }
}

/* postboxctl against d's admin listener, in the background; returns its pid. */
static pid_t ctl_spawn(const pbt_daemon *d, const char *log, const char *const *args)
{
    const char *argv[16];
    int n = 0;
    argv[n++] = PB_POSTBOXCTL;
    argv[n++] = "--admin";
    argv[n++] = d->admin;
    for (int i = 0; args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) abort();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(PB_POSTBOXCTL, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* Waits (bounded: 120 s, then SIGKILL) for pid; its exit status, or -1. */
static int ctl_wait(pid_t pid)
{
    int64_t deadline = pbt_now_ms() + 120000;
    int st;
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (pbt_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        usleep(10000);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int ctl_run(const pbt_daemon *d, const char *log, const char *const *args)
{
    return ctl_wait(ctl_spawn(d, log, args));
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap + 1);
            if (!buf) abort();
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    fclose(f);
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

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

/* The events queued for peer in the SQLite store file at path (opened on a scratch copy,
 * so that the file itself stays as postboxctl wrote it). */
static size_t queued_in_copy(const char *path, const char *scratch_dir, const char *peer)
{
    char *scratch = xasprintf("%s/inspect.db", scratch_dir);
    size_t n = 0;
    CHECK(pbt_copy_file(path, scratch));
    char *spec = xasprintf("sqlite:%s", scratch);
    pb_store *s = NULL;
    CHECK_OK(pb_store_open(spec, NULL, &s));
    if (s) {
        CHECK_OK(pb_store_integrity_check(s));
        pb_outbox_item *items = NULL;
        CHECK_OK(pb_store_outbox_read(s, peer, 0, 1000000, 1u << 30, &items, &n));
        pb_outbox_items_free(items, n);
    }
    pb_store_close(s);
    free(spec);
    free(scratch);
    return n;
}

static void test_backup_restore(void)
{
    const char *a_extra[] = {
        "--retry-base-ms", "20", "--backoff-min", "1", "--backoff-max", "2", NULL};
    pbt_daemon *a = pbt_daemon_new("bkA", a_extra), *b = pbt_daemon_new("bkB", NULL);
    char *work = pbt_tmpdir("bkwork");
    char *copy = xasprintf("%s/postbox-backup.db", work), *ctl_log = xasprintf("%s/ctl.log", work);
    sent = json_array();
    if (!pbt_daemon_start(a) || !pbt_daemon_start(b)) {
        CHECK(!"daemons start");
        goto out;
    }
    unsigned k = 0;
    /* B up: delivered */
    for (; k < 40; k++)
        CHECK(submit_group(a, b->server_id, k));
    struct holds h = {b, a->server_id, 0, 20, 0};
    CHECKF(pbt_wait_for(holds_groups, &h, 60000), "B got the first groups: %zu missing", h.missing);
    /* B down: queued at A */
    CHECK_INT(pbt_daemon_stop(b), 0);
    for (; k < 80; k++)
        CHECK(submit_group(a, b->server_id, k));
    /* the backup while groups keep arriving at A */
    unsigned before_backup = k;
    pid_t ctl = ctl_spawn(a, ctl_log, (const char *const[]){"backup", copy, NULL});
    int st = -2;
    for (int64_t until = pbt_now_ms() + 120000; pbt_now_ms() < until && k < 2000; k++) {
        CHECK(submit_group(a, b->server_id, k));
        int wst;
        if (waitpid(ctl, &wst, WNOHANG) == ctl) {
            st = WIFEXITED(wst) ? WEXITSTATUS(wst) : -1;
            k++; /* group k was submitted */
            break;
        }
    }
    if (st == -2) st = ctl_wait(ctl);
    unsigned during_backup = k - before_backup;
    CHECKF(st == 0, "postboxctl backup exit status %d", st);
    if (st != 0) {
        char *log = slurp(ctl_log, NULL);
        fprintf(stderr, "postboxctl: %s\n", log ? log : "(no output)");
        free(log);
        goto out;
    }
    size_t queued = queued_in_copy(copy, work, b->server_id);
    CHECKF(queued >= 40 * PER_GROUP, "the copy holds A's queue for B: %zu events", queued);
    /* B up again, more groups after the backup; wait until B holds all of A's */
    CHECK(pbt_daemon_start(b));
    unsigned after_start = k;
    for (; k < after_start + 40; k++)
        CHECK(submit_group(a, b->server_id, k));
    struct holds all = {b, a->server_id, 0, k, 0};
    CHECKF(pbt_wait_for(holds_groups, &all, 120000), "B got every group from A: %zu missing",
           all.missing);
    unsigned before_restore = k;

    /* restore: stop A, a fresh data directory at its path with its key and the copy */
    CHECK_INT(pbt_daemon_stop(a), 0);
    char *old = xasprintf("%s.old", a->dir), *key = xasprintf("%s/key", a->dir);
    char *oldkey = xasprintf("%s/key", old), *db = xasprintf("%s/postbox.db", a->dir);
    CHECK(rename(a->dir, old) == 0);
    CHECK(mkdir(a->dir, 0700) == 0);
    CHECK(pbt_copy_file(oldkey, key));
    CHECK(pbt_copy_file(copy, db));
    bool restarted = pbt_daemon_start(a);
    CHECKF(restarted, "the restored A starts");
    if (restarted) {
        /* it delivers its queue, and new events get through (a new epoch) */
        struct queue_wait qw = {a, b->server_id, -1};
        CHECKF(pbt_wait_for(queue_empty, &qw, 120000), "the restored A's queue for B: %lld",
               qw.queued);
        for (; k < before_restore + 10; k++)
            CHECK(submit_group(a, b->server_id, k));
        struct holds fresh = {b, a->server_id, before_restore, k, 0};
        CHECKF(pbt_wait_for(holds_groups, &fresh, 120000),
               "groups sent to the restored A reach B: %zu events missing", fresh.missing);
        /* every event of the backup (all groups before it began) reached B; duplicates
         * only from the copy's queue (groups 20..before_backup+during at most) */
        struct holds bk = {b, a->server_id, 0, before_backup, 0};
        CHECKF(holds_groups(&bk), "events of the backup missing at B: %zu", bk.missing);
        json_t *got = pbt_inbox_events_from(b, a->server_id);
        size_t twice = 0, bad = 0, i;
        json_t *e, *grp;
        json_array_foreach(sent, i, grp)
        {
            size_t j;
            json_array_foreach(grp, j, e)
            {
                size_t c = count_of(got, e);
                twice += c > 1;
                if (c > 2 || (c > 1 && i >= before_backup + during_backup)) bad++;
            }
        }
        CHECKF(bad == 0, "%zu events arrived more than once outside the copy's queue", bad);
        check_model(b, a->server_id, got);
        printf("backup: %u groups of %d events before the backup, %u during it, %u after; "
               "the copy held %zu queued events; B got %zu events twice\n",
               before_backup, PER_GROUP, during_backup,
               before_restore - before_backup - during_backup, queued, twice);
        json_decref(got);
    }
    if (pbt_failed) {
        pbt_daemon_dump_log(a);
        pbt_daemon_dump_log(b);
    }
    pbt_rmrf(old);
    free(old);
    free(key);
    free(oldkey);
    free(db);
out:
    pbt_daemon_free(a);
    pbt_daemon_free(b);
    pbt_rmrf(work);
    free(work);
    free(copy);
    free(ctl_log);
    json_decref(sent);
}

/* Refusing to overwrite, --force, and the PostgreSQL answer. */
static void test_cli(void)
{
    pbt_daemon *d = pbt_daemon_new("bkcli", NULL);
    pbt_daemon_set_token(d, "backup-secret-token");
    char *work = pbt_tmpdir("bkcli");
    char *file = xasprintf("%s/copy.db", work), *log = xasprintf("%s/ctl.log", work);
    char *tok = xasprintf("%s/admin-token", d->dir);
    if (!pbt_daemon_start(d)) {
        CHECK(!"daemon starts");
        goto out;
    }
    FILE *f = fopen(file, "w");
    fputs("keep me\n", f);
    fclose(f);
    CHECK_INT(ctl_run(d, log, (const char *const[]){"--token-file", tok, "backup", file, NULL}), 1);
    char *text = slurp(file, NULL), *out = slurp(log, NULL);
    CHECK_STR(text, "keep me\n");
    CHECKF(out && strstr(out, "--force"), "the refusal names --force: %s", out ? out : "");
    free(text);
    free(out);
    char *other = xasprintf("%s/other.db", work);
    CHECK_INT(ctl_run(d, log, (const char *const[]){"backup", other, NULL}), 1); /* no token */
    CHECK(access(other, F_OK) != 0);
    free(other);
    out = slurp(log, NULL);
    CHECKF(out && strstr(out, "401"), "without the token: %s", out ? out : "");
    free(out);
    CHECK_INT(ctl_run(d, log,
                      (const char *const[]){"--token-file", tok, "backup", "--force", file, NULL}),
              0);
    size_t n = 0;
    text = slurp(file, &n);
    CHECKF(text && n > 4096 && !memcmp(text, "SQLite format 3", 16),
           "--force replaced it: %zu bytes", n);
    free(text);
    struct stat sb;
    CHECK(stat(file, &sb) == 0 && (sb.st_mode & 077) == 0);
    /* nothing left beside the store or beside FILE */
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "ls -a %s %s | grep -c -e backup- -e '^\\.copy'", d->dir, work);
    FILE *p = popen(cmd, "r");
    int left = -1;
    if (p) {
        if (fscanf(p, "%d", &left) != 1) left = -1;
        pclose(p);
    }
    CHECKF(left == 0, "temporary files left: %d", left);
    pbt_daemon_free(d);
    d = NULL;

    if (!getenv("PB_TEST_PG_URL")) {
        printf("backup: PB_TEST_PG_URL unset, the PostgreSQL answer not tried\n");
        goto out;
    }
    setenv("PBT_STORE", "postgres", 1);
    d = pbt_daemon_new("bkpg", NULL);
    unsetenv("PBT_STORE");
    if (!pbt_daemon_start(d)) {
        CHECK(!"PostgreSQL daemon starts");
        goto out;
    }
    long st;
    json_t *r = pbt_admin(d, "GET", "/v1/backup", NULL, &st);
    const char *msg = json_string_value(json_object_get(r, "error"));
    CHECK_INT(st, 501);
    CHECKF(msg && strstr(msg, "pg_dump") && strstr(msg, "PITR"), "501 names pg_dump: %s",
           msg ? msg : "(none)");
    json_decref(r);
    char *pgfile = xasprintf("%s/pg.db", work);
    CHECK_INT(ctl_run(d, log, (const char *const[]){"backup", pgfile, NULL}), 1);
    out = slurp(log, NULL);
    CHECKF(out && strstr(out, "pg_dump"), "postboxctl says: %s", out ? out : "");
    free(out);
    CHECK(access(pgfile, F_OK) != 0);
    free(pgfile);
out:
    pbt_daemon_free(d);
    pbt_rmrf(work);
    free(work);
    free(file);
    free(log);
    free(tok);
}

int main(void)
{
    test_cli();
    test_backup_restore();
    return pbt_finish();
}
