/*
 * outage_test - calm through store outages (util/health.h: the store-health tracker and
 * the engine's backoff).
 *
 *   outage_test postgres: two nodes of server A on one PostgreSQL database, receiver B on
 *     SQLite. The cluster is the test's own (scripts/pg-start; the nodes reach it through
 *     its Unix socket), so crashing it disturbs no other test. Submissions flow through
 *     both nodes, each batch with its submission_id; the server is crashed (pg_ctl stop -m
 *     immediate), kept stopped OUTAGE_S seconds, and started again.
 *   outage_test [sqlite]: B's disk is full (the fault VFS flag `full`, lib/store/faultvfs)
 *     for OUTAGE_S seconds while A pushes to it and B's admin API is used; B's admin
 *     answer names the full disk, peers get 503 with RetryInfo and no detail.
 *
 * Both check: /healthz answers 503 and postbox_store_up is 0 during the outage, 200 and 1
 * after; a node writes at most MAX_LINES log lines (info and above, delivery outcome lines
 * aside: they count traffic) from the start of the outage until its
 * "store available again" line (which must come); its CPU time during the outage stays
 * under a quarter of the outage (no retry loop); every acknowledged event reaches B
 * exactly once and none refused more than once.
 *
 * Every wait is a bounded poll with a generous deadline (a loaded 2-core machine).
 */
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#define OUTAGE_S 8
#define MAX_LINES 50
#define BATCH 5
#define MAX_BATCHES 4000

/* ---- small helpers ----------------------------------------------------------------------- */

static long healthz(const pbt_daemon *d)
{
    pbt_http h;
    pbt_http_do("http", d->admin_port, "GET", "/healthz", NULL, NULL, 0, NULL, &h);
    long st = h.status;
    pbt_http_clear(&h);
    return st;
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/* The bytes of path from offset on (caller frees). */
static char *read_from(const char *path, long offset)
{
    FILE *f = fopen(path, "rb");
    if (!f) return calloc(1, 1);
    fseek(f, 0, SEEK_END);
    long end = ftell(f);
    if (offset > end) offset = end;
    fseek(f, offset, SEEK_SET);
    char *s = calloc(1, (size_t)(end - offset) + 1);
    size_t n = fread(s, 1, (size_t)(end - offset), f);
    s[n] = 0;
    fclose(f);
    return s;
}

/* Lines from s to upto that an operator sees at the default level (info and above), less
 * the delivery outcome lines, which count traffic (one per Push or Pull answer), not the
 * outage. */
static int count_lines(const char *s, const char *upto)
{
    int n = 0;
    while (*s && s < upto) {
        const char *eol = strchr(s, '\n');
        if (!eol || eol >= upto) break;
        const char *lvl = memchr(s, ' ', (size_t)(eol - s));
        bool debug = lvl && strncmp(lvl + 1, "debug", 5) == 0;
        bool delivery = false;
        for (const char *k = lvl; k && k < eol && !delivery; k++)
            delivery = strncmp(k, " push sent ", 11) == 0 ||
                       strncmp(k, " push received ", 15) == 0 ||
                       strncmp(k, " pull answered ", 15) == 0;
        n += !debug && !delivery;
        s = eol + 1;
    }
    return n;
}

/* What one node wrote during the outage, checked: from `from` (its log's size when the
 * outage began) to its recovery line. */
struct watch {
    const pbt_daemon *d;
    const char *name;
    long log_from;
    long cpu_from;
};

struct recovered_ctx {
    const pbt_daemon *d;
    long from;
};

static bool recovered(void *vctx)
{
    struct recovered_ctx *c = vctx;
    char *s = read_from(c->d->log_path, c->from);
    bool ok = strstr(s, "store available again after") != NULL;
    free(s);
    return ok;
}

static void watch_begin(struct watch *w, const pbt_daemon *d, const char *name)
{
    w->d = d;
    w->name = name;
    w->log_from = file_size(d->log_path);
    w->cpu_from = pbt_proc_cpu_ms(d->pid);
}

/* During the outage: 503, store_up 0 (polled: the node notices at its next store call). */
struct down_ctx {
    const pbt_daemon *d;
    long hz;
    double up;
};

static bool seen_down(void *vctx)
{
    struct down_ctx *c = vctx;
    c->hz = healthz(c->d);
    c->up = pbt_metric(c->d, "postbox_store_up");
    return c->hz == 503 && c->up == 0;
}

static bool seen_up(void *vctx)
{
    struct down_ctx *c = vctx;
    c->hz = healthz(c->d);
    c->up = pbt_metric(c->d, "postbox_store_up");
    return c->hz == 200 && c->up == 1;
}

static void check_down(const pbt_daemon *d, const char *name)
{
    struct down_ctx c = {d, 0, -1};
    bool down = pbt_wait_for(seen_down, &c, 20000); /* before the message reads c */
    CHECKF(down, "%s: /healthz 503 and postbox_store_up 0 during the outage (got %ld, %g)", name,
           c.hz, c.up);
}

/* After the outage: the node says it is back, answers 200 with store_up 1; its log from
 * the outage's start to that line is short, and it used little CPU while the store was
 * down (cpu_at_end: its CPU time when the outage ended). */
static void watch_end(struct watch *w, long cpu_at_end, int64_t outage_ms)
{
    struct recovered_ctx rc = {w->d, w->log_from};
    CHECKF(pbt_wait_for(recovered, &rc, 60000), "%s logs that the store is available again",
           w->name);
    struct down_ctx c = {w->d, 0, -1};
    bool up = pbt_wait_for(seen_up, &c, 60000); /* before the message reads c */
    CHECKF(up, "%s: /healthz 200 and postbox_store_up 1 after the outage (got %ld, %g)", w->name,
           c.hz, c.up);
    char *s = read_from(w->d->log_path, w->log_from);
    const char *back = strstr(s, "store available again after");
    const char *eol = back ? strchr(back, '\n') : NULL;
    int lines = count_lines(s, eol ? eol + 1 : s + strlen(s));
    fprintf(stderr, "outage_test: %s wrote %d log lines during the outage of %lld ms:\n%.*s",
            w->name, lines, (long long)outage_ms, (int)(eol ? eol + 1 - s : 0), s);
    CHECKF(lines <= MAX_LINES, "%s: %d log lines during the outage, want at most %d", w->name,
           lines, MAX_LINES);
    CHECKF(strstr(s, "store unavailable") != NULL, "%s says the store became unavailable", w->name);
    free(s);
    long used = cpu_at_end - w->cpu_from;
    fprintf(stderr, "outage_test: %s used %ld ms of CPU during the outage\n", w->name, used);
    CHECKF(w->cpu_from >= 0 && used >= 0 && used < outage_ms / 4,
           "%s: %ld ms of CPU during an outage of %lld ms (a retry loop?)", w->name, used,
           (long long)outage_ms);
}

/* ---- the traffic -------------------------------------------------------------------------- */

/* Batches of BATCH events, each event a distinct guild (batch * BATCH + i), through the
 * given nodes in turn, until stopped; status[k] is batch k's answer (202 acknowledged). */
struct traffic {
    pbt_daemon *via[2];
    int nvia;
    const char *to;
    int pace_ms;
    pthread_mutex_t mu;
    bool stop;
    unsigned n;
    long status[MAX_BATCHES];
};

static json_t *gen_event(unsigned g)
{
    char u[24], gs[24];
    snprintf(u, sizeof u, "%u", 1 + g % 7);
    snprintf(gs, sizeof gs, "%u", 100000 + g);
    return json_pack("{s:{s:s,s:s}}", "userAddedToGuild", "userId", u, "guildId", gs);
}

static long submit_batch(const pbt_daemon *d, const char *to, unsigned k, char *err, size_t errlen)
{
    json_t *evs = json_array();
    for (unsigned i = 0; i < BATCH; i++)
        json_array_append_new(evs, gen_event(k * BATCH + i));
    char sub[32];
    snprintf(sub, sizeof sub, "outage-%u", k);
    long st;
    json_t *r =
        pbt_admin(d, "POST", "/v1/outbox",
                  json_pack("{s:s,s:o,s:s}", "to", to, "events", evs, "submission_id", sub), &st);
    if (err) {
        const char *e = json_string_value(json_object_get(r, "error"));
        snprintf(err, errlen, "%s", e ? e : "");
    }
    json_decref(r);
    return st;
}

static void *traffic_main(void *arg)
{
    struct traffic *t = arg;
    for (unsigned k = 0; k < MAX_BATCHES; k++) {
        pthread_mutex_lock(&t->mu);
        bool stop = t->stop;
        pthread_mutex_unlock(&t->mu);
        if (stop) break;
        long st = submit_batch(t->via[k % (unsigned)t->nvia], t->to, k, NULL, 0);
        pthread_mutex_lock(&t->mu);
        t->status[k] = st;
        t->n = k + 1;
        pthread_mutex_unlock(&t->mu);
        struct timespec ts = {0, (long)t->pace_ms * 1000000L};
        nanosleep(&ts, NULL); /* pacing the load, not waiting for anything */
    }
    return NULL;
}

/* B's inbox: how many times each guild of the stream arrived from `from`. */
static void inbox_counts(const pbt_daemon *b, const char *from, unsigned *count, unsigned max_g)
{
    memset(count, 0, max_g * sizeof *count);
    long long after = 0;
    for (int guard = 0; guard < 10000; guard++) {
        char path[96];
        snprintf(path, sizeof path, "/v1/inbox?after=%lld&limit=1000", after);
        long st;
        json_t *r = pbt_admin(b, "GET", path, NULL, &st);
        json_t *evs = json_object_get(r, "events");
        size_t i, n = json_array_size(evs);
        json_t *it;
        json_array_foreach(evs, i, it)
        {
            const char *f = json_string_value(json_object_get(it, "from"));
            json_t *ev = json_object_get(json_object_get(it, "event"), "userAddedToGuild");
            const char *g = json_string_value(json_object_get(ev, "guildId"));
            if (!f || strcmp(f, from) || !g) continue;
            unsigned long v = strtoul(g, NULL, 10);
            if (v >= 100000 && v - 100000 < max_g) count[v - 100000]++;
        }
        if (n) after = json_integer_value(json_object_get(r, "next"));
        json_decref(r);
        if (st != 200 || n == 0) break;
    }
}

struct arrived_ctx {
    const pbt_daemon *b;
    const char *from;
    struct traffic *t;
    unsigned *count;
    unsigned missing;
};

static bool all_arrived(void *vctx)
{
    struct arrived_ctx *c = vctx;
    unsigned max_g = c->t->n * BATCH;
    inbox_counts(c->b, c->from, c->count, max_g);
    c->missing = 0;
    for (unsigned k = 0; k < c->t->n; k++)
        if (c->t->status[k] == 202)
            for (unsigned i = 0; i < BATCH; i++)
                c->missing += c->count[k * BATCH + i] == 0;
    return c->missing == 0;
}

/* Every acknowledged event arrived exactly once, none refused more than once; some were
 * refused when the submissions went to the failing store (some_refused). */
static void check_delivered(const pbt_daemon *b, const char *from, struct traffic *t,
                            bool some_refused)
{
    unsigned *count = calloc((size_t)t->n * BATCH + 1, sizeof *count);
    struct arrived_ctx c = {b, from, t, count, 0};
    bool all = pbt_wait_for(all_arrived, &c, 180000); /* before the message reads c */
    CHECKF(all, "every acknowledged event arrives (%u missing)", c.missing);
    unsigned acked = 0, refused = 0, dup = 0, refused_arrived = 0;
    for (unsigned k = 0; k < t->n; k++) {
        bool ok = t->status[k] == 202;
        ok ? acked++ : refused++;
        for (unsigned i = 0; i < BATCH; i++) {
            unsigned n = count[k * BATCH + i];
            dup += n > 1;
            refused_arrived += !ok && n == 1;
        }
    }
    fprintf(stderr,
            "outage_test: %u batches acknowledged, %u refused (%u events of them arrived: "
            "committed before the answer was lost), %u duplicates\n",
            acked, refused, refused_arrived, dup);
    CHECKF(acked > 0 && (refused > 0) == some_refused,
           "traffic before, during and after the outage (%u acknowledged, %u refused)", acked,
           refused);
    CHECKF(dup == 0, "%u events arrived more than once", dup);
    free(count);
}

/* ---- PostgreSQL: a cluster of the test's own ---------------------------------------------- */

struct pg {
    char dir[512], url[1024], sock_url[1024], bindir[512], owner[64];
};

static bool read_line(const char *path, char *out, size_t n)
{
    FILE *f = fopen(path, "r");
    if (!f) return false;
    bool ok = fgets(out, (int)n, f) != NULL;
    fclose(f);
    out[strcspn(out, "\n")] = 0;
    return ok && out[0];
}

static bool pg_start(struct pg *pg)
{
    memset(pg, 0, sizeof *pg);
    FILE *f = popen("sh " PB_SOURCE_DIR "/scripts/pg-start", "r");
    if (!f) return false;
    char line[2048];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *q = strchr(line, '\'');
        char *e = q ? strrchr(line, '\'') : NULL;
        if (!q || e == q) continue;
        *e = 0;
        if (strstr(line, "PB_TEST_PG_URL=")) snprintf(pg->url, sizeof pg->url, "%s", q + 1);
        if (strstr(line, "PB_TEST_PG_DIR=")) snprintf(pg->dir, sizeof pg->dir, "%s", q + 1);
    }
    if (pclose(f) != 0 || !pg->url[0] || !pg->dir[0]) return false;
    char p[600];
    snprintf(p, sizeof p, "%s/bindir", pg->dir);
    if (!read_line(p, pg->bindir, sizeof pg->bindir)) return false;
    snprintf(p, sizeof p, "%s/owner", pg->dir);
    if (!read_line(p, pg->owner, sizeof pg->owner)) return false;
    /* postgresql://postbox:PW@127.0.0.1:PORT/postbox -> the same through the Unix socket
     * (a stopped server's TCP port could be taken by a client's own source port) */
    char pw[256] = "";
    unsigned port = 0;
    if (sscanf(pg->url, "postgresql://postbox:%255[^@]@127.0.0.1:%u/postbox", pw, &port) != 2)
        return false;
    snprintf(pg->sock_url, sizeof pg->sock_url,
             "postgresql://postbox:%s@/postbox?host=%s/sock&port=%u", pw, pg->dir, port);
    return true;
}

/* Runs pg_ctl (as the cluster's owner) with args; true on exit 0. */
static bool pg_ctl(const struct pg *pg, const char *args)
{
    char cmd[2048];
    if (getuid() == 0 && strcmp(pg->owner, "root") != 0)
        snprintf(cmd, sizeof cmd, "runuser -u %s -- %s/pg_ctl -D %s/data %s >/dev/null", pg->owner,
                 pg->bindir, pg->dir, args);
    else
        snprintf(cmd, sizeof cmd, "%s/pg_ctl -D %s/data %s >/dev/null", pg->bindir, pg->dir, args);
    return system(cmd) == 0;
}

/* Starts the crashed server again, on its Unix socket only: its TCP port is in the
 * ephemeral range, where another program's connection may hold it by now (the nodes use
 * the socket). Tries a few times; prints the server's log when it does not start. */
static bool pg_restart(const struct pg *pg)
{
    char p[600];
    snprintf(p, sizeof p, "%s/data/postgresql.auto.conf", pg->dir);
    FILE *f = fopen(p, "a");
    if (f) {
        fputs("listen_addresses = ''\n", f); /* the last setting wins */
        fclose(f);
    }
    char args[1024];
    snprintf(args, sizeof args, "-l %s/restart.log -w -t 120 start", pg->dir);
    for (int i = 0; i < 3; i++) {
        if (pg_ctl(pg, args)) return true;
        snprintf(p, sizeof p, "tail -n 20 %s/restart.log >&2", pg->dir);
        if (system(p) != 0) fprintf(stderr, "outage_test: no restart.log\n");
    }
    return false;
}

static void pg_stop(const struct pg *pg)
{
    if (!pg->dir[0]) return;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "sh %s/scripts/pg-stop %s", PB_SOURCE_DIR, pg->dir);
    if (system(cmd) != 0) fprintf(stderr, "outage_test: pg-stop %s failed\n", pg->dir);
}

static void run_postgres(void)
{
    struct pg pg;
    if (!pg_start(&pg)) {
        CHECK(!"a PostgreSQL cluster of the test's own (scripts/pg-start)");
        pg_stop(&pg);
        return;
    }
    char *keydir = pbt_tmpdir("okey"), keypath[600], hex[65];
    snprintf(keypath, sizeof keypath, "%s/key", keydir);
    bool created;
    CHECK_OK(pb_keygen(keypath, hex, &created));
    pbt_daemon *n[2];
    char sid[64] = "";
    bool up = true;
    for (int i = 0; i < 2; i++) {
        char node[16], tag[16];
        snprintf(node, sizeof node, "n%d", i);
        snprintf(tag, sizeof tag, "outA%d", i);
        n[i] = pbt_daemon_new(tag, NULL);
        if (i == 0) snprintf(sid, sizeof sid, "%s", n[0]->server_id);
        const char *extra[] = {"--store",
                               pg.sock_url,
                               "--server-id",
                               sid,
                               "--node-id",
                               node,
                               "--lease-ttl",
                               "3",
                               "--push-retries",
                               "1",
                               "--retry-base-ms",
                               "20",
                               "--backoff-min",
                               "1",
                               "--backoff-max",
                               "2",
                               NULL};
        for (int k = 0; extra[k]; k++)
            n[i]->args[n[i]->nargs++] = strdup(extra[k]);
        char dst[600];
        snprintf(dst, sizeof dst, "%s/key", n[i]->dir);
        CHECK(pbt_copy_file(keypath, dst));
        up = up && pbt_daemon_start(n[i]);
    }
    pbt_daemon *b = pbt_daemon_new("outB", NULL);
    up = up && pbt_daemon_start(b);
    CHECK(up);
    if (!up) goto out;

    /* traffic through both nodes, all along */
    struct traffic *t = calloc(1, sizeof *t);
    t->via[0] = n[0];
    t->via[1] = n[1];
    t->nvia = 2;
    t->to = b->server_id;
    t->pace_ms = 20;
    pthread_mutex_init(&t->mu, NULL);
    CHECK_INT(submit_batch(n[0], b->server_id, MAX_BATCHES - 1, NULL, 0), 202); /* warm up */
    pthread_t th;
    pthread_create(&th, NULL, traffic_main, t);
    struct timespec before = {1, 500000000L};
    nanosleep(&before, NULL); /* traffic flows before the crash (pacing, not a wait) */

    struct watch w[2];
    watch_begin(&w[0], n[0], "node n0");
    watch_begin(&w[1], n[1], "node n1");
    int64_t crash_at = pbt_now_ms();
    CHECK(pg_ctl(&pg, "-m immediate stop"));
    fprintf(stderr, "outage_test: PostgreSQL crashed\n");
    check_down(n[0], "node n0");
    check_down(n[1], "node n1");
    while (pbt_now_ms() < crash_at + OUTAGE_S * 1000) {
        struct timespec ts = {0, 100000000L};
        nanosleep(&ts, NULL); /* the outage lasts OUTAGE_S: time is what is tested here */
    }
    long cpu_end[2] = {pbt_proc_cpu_ms(n[0]->pid), pbt_proc_cpu_ms(n[1]->pid)};
    int64_t outage_ms = pbt_now_ms() - crash_at;
    CHECKF(pg_restart(&pg), "PostgreSQL starts again");
    fprintf(stderr, "outage_test: PostgreSQL started again after %lld ms\n",
            (long long)(pbt_now_ms() - crash_at));
    watch_end(&w[0], cpu_end[0], outage_ms);
    watch_end(&w[1], cpu_end[1], outage_ms);

    struct timespec after = {2, 0};
    nanosleep(&after, NULL); /* traffic after the outage too (pacing, not a wait) */
    pthread_mutex_lock(&t->mu);
    t->stop = true;
    pthread_mutex_unlock(&t->mu);
    pthread_join(th, NULL);
    check_delivered(b, sid, t, true);
    pthread_mutex_destroy(&t->mu);
    free(t);
out:
    if (pbt_failed) {
        pbt_daemon_dump_log(n[0]);
        pbt_daemon_dump_log(n[1]);
    }
    pbt_daemon_free(n[0]);
    pbt_daemon_free(n[1]);
    pbt_daemon_free(b);
    pg_stop(&pg);
    pbt_rmrf(keydir);
    free(keydir);
}

/* ---- SQLite: a full disk ------------------------------------------------------------------ */

static void touch(const char *dir, const char *name)
{
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    CHECKF(f != NULL, "create %s", p);
    if (f) fclose(f);
}

static void run_sqlite(void)
{
    /* A retries fast: one retry, then queued with drain probes after 1-2 s */
    const char *ax[] = {"--push-retries",
                        "1",
                        "--retry-base-ms",
                        "20",
                        "--backoff-min",
                        "1",
                        "--backoff-max",
                        "2",
                        NULL};
    pbt_daemon *a = pbt_daemon_new("outA", ax);
    pbt_daemon *b = pbt_daemon_new("outB", NULL);
    char *flags = pbt_tmpdir("outflags");
    bool up = pbt_daemon_start(a);
    setenv("PB_FAULT_VFS_DIR", flags, 1);
    up = up && pbt_daemon_start(b);
    unsetenv("PB_FAULT_VFS_DIR");
    CHECK(up);
    if (!up) goto out;

    struct traffic *t = calloc(1, sizeof *t);
    t->via[0] = a;
    t->nvia = 1;
    t->to = b->server_id;
    t->pace_ms = 50;
    pthread_mutex_init(&t->mu, NULL);
    CHECK_INT(submit_batch(a, b->server_id, MAX_BATCHES - 1, NULL, 0), 202); /* warm up */
    pthread_t th;
    pthread_create(&th, NULL, traffic_main, t);
    struct timespec before = {1, 0};
    nanosleep(&before, NULL); /* traffic flows before the disk fills (pacing, not a wait) */

    struct watch w;
    watch_begin(&w, b, "B");
    int64_t full_at = pbt_now_ms();
    touch(flags, "full");
    /* B's own submissions: refused, naming the full disk */
    char err[512] = "";
    long st = submit_batch(b, a->server_id, 0, err, sizeof err);
    CHECKF(st == 503 && strstr(err, "disk full"), "B's admin answer names the full disk: %ld %s",
           st, err);
    check_down(b, "B");
    unsigned refused = 0;
    while (pbt_now_ms() < full_at + OUTAGE_S * 1000) {
        st = submit_batch(b, a->server_id, 1 + refused, err, sizeof err);
        CHECKF(st == 503 && strstr(err, "disk full"), "B refuses while full: %ld %s", st, err);
        refused++;
        struct timespec ts = {0, 50000000L};
        nanosleep(&ts, NULL); /* pacing the admin traffic */
    }
    long cpu_end = pbt_proc_cpu_ms(b->pid);
    int64_t outage_ms = pbt_now_ms() - full_at;
    char p[600];
    snprintf(p, sizeof p, "%s/full", flags);
    CHECK(unlink(p) == 0);
    watch_end(&w, cpu_end, outage_ms);
    char *s = read_from(b->log_path, w.log_from);
    CHECKF(strstr(s, "store unavailable (disk full)") != NULL, "B's log names the full disk");
    free(s);

    struct timespec after = {1, 0};
    nanosleep(&after, NULL); /* traffic after the outage too (pacing, not a wait) */
    pthread_mutex_lock(&t->mu);
    t->stop = true;
    pthread_mutex_unlock(&t->mu);
    pthread_join(th, NULL);
    /* everything A was given arrives once (A retried what B refused) */
    check_delivered(b, a->server_id, t, false);
    /* none of B's refused submissions was kept */
    long pst;
    json_t *pe = pbt_admin(b, "GET", "/v1/peers", NULL, &pst);
    json_t *peers = json_object_get(pe, "peers");
    size_t i;
    json_t *it;
    json_array_foreach(peers, i, it)
    {
        if (!strcmp(json_string_value(json_object_get(it, "server_id")), a->server_id))
            CHECKF(json_integer_value(json_object_get(it, "queued")) == 0,
                   "B queued none of its refused submissions");
    }
    json_decref(pe);
    pthread_mutex_destroy(&t->mu);
    free(t);
out:
    if (pbt_failed) {
        pbt_daemon_dump_log(a);
        pbt_daemon_dump_log(b);
    }
    pbt_daemon_free(a);
    pbt_daemon_free(b);
    pbt_rmrf(flags);
    free(flags);
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "postgres"))
        run_postgres();
    else
        run_sqlite();
    return pbt_finish();
}
