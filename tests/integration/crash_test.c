/*
 * crash_test - no event lost, duplicated or reordered when the sender A or the receiver B
 * is killed with SIGKILL at random points of a stream, under network faults.
 *
 * Set-up: A pushes to B through tests/tools/faultproxy, which injects, from a seeded
 * schedule, refused and reset connections (before and after the request was forwarded:
 * the second is a stored Push whose answer is lost), answers held past the caller's
 * timeout, 500/503/429 answers of its own and blackhole periods, and holds each request
 * 0..10 ms, so that the batches of A's Push window (on by default) overtake each other. B
 * listens on its own port but its server ID is the proxy's address, so everything addressed to B
 * (A's Pushes, A's fetch of B's key to check B's tokens) passes the proxy. A second proxy (seed +
 * 1) does the same for A, so B's Pulls from A (and lost Pull answers) are faulted too.
 *
 * The stream cycles through all four event kinds in groups of four (group k: add user
 * k%97+1 to guild k+1; remove it again for even k, remove a guild never added for odd k;
 * invite; reject), so that B's final guild lists depend on the order of adds and removes.
 * After the stream: B's inbox must hold exactly the submitted events, in order (0 lost,
 * 0 duplicated, 0 reordered), B's guild lists and pending invites must equal a model
 * computed from the stream, and both daemons must stop cleanly (status 0).
 *
 * Kills: every kill is a SIGKILL followed by a restart; among them, regularly, the two
 * worst moments through fault points: the receiver between its store commit and its answer
 * (delivery.crash-after-commit: the sender never hears the 200 and pushes again) and the
 * sender between the receiver's 200 and forgetting the event (delivery.crash-before-forget:
 * after the restart it pushes the event again).
 *
 * Usage: crash_test [EVENTS [KILLS]] (default 10000 events, 10 kills). The seed is printed;
 * PBT_SEED=N replays a run (kill points, victims and the proxies' schedules); PBT_NO_PROXY=1
 * runs without the proxies. The proxy program is <build>/faultproxy (beside postboxd) or
 * $PBT_FAULTPROXY. The line "crash_test: RESULT ..." has the figures (scripts/crash-full
 * prints it). See docs/RELIABILITY.md.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#define USERS 97

/* Group k = i / 4; see the file comment. */
static json_t *gen_event(unsigned i)
{
    unsigned k = i / 4;
    char inv[48], u[24], g[24], g2[24];
    snprintf(inv, sizeof inv, "inv-%u-é", k);
    /* IDs from 1: the admin API refuses a zero user, guild or inviter ID */
    snprintf(u, sizeof u, "%u", k % USERS + 1);
    snprintf(g, sizeof g, "%u", k + 1);
    snprintf(g2, sizeof g2, "%llu", 1000000000ULL + k + 1);
    switch (i % 4) {
    case 0:
        return json_pack("{s:{s:s,s:s}}", "userAddedToGuild", "userId", u, "guildId", g);
    case 1:
        return json_pack("{s:{s:s,s:s}}", "userRemovedFromGuild", "userId", u, "guildId",
                         k % 2 == 0 ? g : g2);
    case 2:
        return json_pack("{s:{s:s,s:s,s:s}}", "userInvited", "userId", u, "inviterId", g,
                         "inviteId", inv);
    default:
        return json_pack("{s:{s:s,s:s,s:s}}", "userRejectedInvite", "guildId", g, "userId", u,
                         "inviteId", inv);
    }
}

static bool submit(const pbt_daemon *a, const char *to, unsigned from, unsigned n)
{
    json_t *evs = json_array();
    for (unsigned i = from; i < from + n; i++)
        json_array_append_new(evs, gen_event(i));
    long st;
    json_t *r =
        pbt_admin(a, "POST", "/v1/outbox", json_pack("{s:s,s:o}", "to", to, "events", evs), &st);
    json_decref(r);
    return st == 202;
}

/* The stream index of an event from gen_event, or -1 when it is not one of them. */
static long index_of(json_t *ev, unsigned n)
{
    const char *kinds[4] = {"userAddedToGuild", "userRemovedFromGuild", "userInvited",
                            "userRejectedInvite"};
    const char *fields[4] = {"guildId", "guildId", "inviterId", "guildId"};
    for (unsigned r = 0; r < 4; r++) {
        json_t *body = json_object_get(ev, kinds[r]);
        if (!body) continue;
        const char *v = json_string_value(json_object_get(body, fields[r]));
        unsigned long long k = v ? strtoull(v, NULL, 10) : 0;
        if (r == 1 && k >= 1000000000ULL) k -= 1000000000ULL;
        if (!v || k == 0 || --k > n / 4) return -1;
        long idx = (long)(4 * k + r);
        if (idx >= (long)n) return -1;
        json_t *want = gen_event((unsigned)idx);
        bool same = json_equal(want, ev);
        json_decref(want);
        return same ? idx : -1;
    }
    return -1;
}

/* What B's inbox holds of the stream, read incrementally from `after`. */
struct scan {
    const pbt_daemon *b;
    unsigned n;
    const char *from;
    long long after;
    unsigned char *seen; /* n flags */
    long distinct, dups, reordered, altered, others, max_idx;
};

static void scan_init(struct scan *s, const pbt_daemon *b, const char *from, unsigned n)
{
    *s = (struct scan){.b = b, .n = n, .from = from, .max_idx = -1};
    s->seen = calloc(n ? n : 1, 1);
}

/* Reads B's inbox items after s->after (bounded) and classifies each: the next new event
 * (in order), a repeat of one already seen (duplicate), a new one that arrives after a
 * later one (reordered), something not in the stream (altered), or from someone else. */
static void scan_more(struct scan *s)
{
    for (int guard = 0; guard < 100000; guard++) {
        char path[128];
        snprintf(path, sizeof path, "/v1/inbox?after=%lld&limit=1000", s->after);
        long st;
        json_t *r = pbt_admin(s->b, "GET", path, NULL, &st);
        json_t *evs = json_object_get(r, "events");
        size_t i;
        json_t *it;
        json_array_foreach(evs, i, it)
        {
            if (strcmp(json_string_value(json_object_get(it, "from")), s->from)) {
                s->others++;
                continue;
            }
            long idx = index_of(json_object_get(it, "event"), s->n);
            if (idx < 0) {
                s->altered++;
            } else if (s->seen[idx]) {
                s->dups++;
            } else {
                s->seen[idx] = 1;
                s->distinct++;
                if (idx < s->max_idx) s->reordered++;
                if (idx > s->max_idx) s->max_idx = idx;
            }
        }
        size_t cnt = json_array_size(evs);
        if (cnt) s->after = json_integer_value(json_object_get(r, "next"));
        json_decref(r);
        if (st != 200 || cnt == 0) break;
    }
}

static bool scan_bad(const struct scan *s)
{
    return s->dups || s->reordered || s->altered || s->others;
}

/* The final check: B's whole inbox against the stream. */
static void verify(const pbt_daemon *b, const char *from, unsigned n, struct scan *s)
{
    scan_init(s, b, from, n);
    scan_more(s);
    fprintf(stderr,
            "crash_test: %ld of %u arrived; %ld lost, %ld duplicated, %ld out of order, %ld "
            "altered, %ld from others\n",
            s->distinct, n, (long)n - s->distinct, s->dups, s->reordered, s->altered, s->others);
    CHECKF(s->distinct == (long)n, "lost: %ld of %u events arrived", s->distinct, n);
    CHECKF(s->dups == 0, "%ld duplicated events", s->dups);
    CHECKF(s->reordered == 0, "%ld events out of order", s->reordered);
    CHECKF(s->altered == 0, "%ld events altered", s->altered);
    CHECKF(s->others == 0, "%ld events from someone else", s->others);
}

static bool all_arrived(void *vctx)
{
    struct scan *s = vctx;
    scan_more(s);
    return scan_bad(s) || s->distinct >= (long)s->n;
}

/* ---- the model of B's guild lists and pending invites -------------------------------------- */

static int cmp_str(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

/* Sorts and compares two lists of strings; returns missing + extra entries. */
static long diff_lists(char **want, size_t nw, char **got, size_t ng)
{
    qsort(want, nw, sizeof *want, cmp_str);
    qsort(got, ng, sizeof *got, cmp_str);
    size_t i = 0, j = 0;
    long d = 0;
    while (i < nw || j < ng) {
        int c = i == nw ? 1 : j == ng ? -1 : strcmp(want[i], got[j]);
        if (c == 0) {
            i++;
            j++;
        } else {
            d++;
            if (c < 0)
                i++;
            else
                j++;
        }
    }
    return d;
}

static void free_list(char **l, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(l[i]);
    free(l);
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

/*
 * B's guild lists and pending invites against the model of the first n events from
 * `from`: a guild (k%97, k) stays when it was added and not removed (removed for even k
 * when its removal was submitted); every invite stays (a rejection from A changes nothing
 * at B). Returns the number of differing entries.
 */
static long check_model(const pbt_daemon *b, const char *from, unsigned n)
{
    long diffs = 0, entries = 0;
    for (unsigned u = 0; u < USERS; u++) {
        char **wg = NULL, **gg = NULL, **wi = NULL, **gi = NULL;
        size_t nwg = 0, ngg = 0, nwi = 0, ngi = 0;
        for (unsigned k = u; 4 * k < n; k += USERS) {
            bool removed = k % 2 == 0 && 4 * k + 1 < n;
            if (!removed) {
                wg = realloc(wg, (nwg + 1) * sizeof *wg);
                wg[nwg++] = xasprintf("%u@%s", k + 1, from);
            }
            if (4 * k + 2 < n) {
                wi = realloc(wi, (nwi + 1) * sizeof *wi);
                wi[nwi++] = xasprintf("inv-%u-é@%s by %u", k, from, k + 1);
            }
        }
        char path[96];
        long st;
        snprintf(path, sizeof path, "/v1/users/%u/guilds", u + 1);
        json_t *r = pbt_admin(b, "GET", path, NULL, &st);
        CHECKF(st == 200, "GET %s: %ld", path, st);
        size_t i;
        json_t *it;
        json_array_foreach(json_object_get(r, "guilds"), i, it)
        {
            gg = realloc(gg, (ngg + 1) * sizeof *gg);
            gg[ngg++] = xasprintf("%s@%s", json_string_value(json_object_get(it, "guildId")),
                                  json_string_value(json_object_get(it, "serverId")));
        }
        json_decref(r);
        snprintf(path, sizeof path, "/v1/users/%u/invites", u + 1);
        r = pbt_admin(b, "GET", path, NULL, &st);
        CHECKF(st == 200, "GET %s: %ld", path, st);
        json_array_foreach(json_object_get(r, "pendingInvites"), i, it)
        {
            gi = realloc(gi, (ngi + 1) * sizeof *gi);
            gi[ngi++] = xasprintf("%s@%s by %s", json_string_value(json_object_get(it, "inviteId")),
                                  json_string_value(json_object_get(it, "serverId")),
                                  json_string_value(json_object_get(it, "inviterId")));
        }
        json_decref(r);
        long dg = diff_lists(wg, nwg, gg, ngg), di = diff_lists(wi, nwi, gi, ngi);
        if (dg || di)
            fprintf(stderr, "crash_test: user %u: %ld guild entries and %ld invites differ\n", u,
                    dg, di);
        diffs += dg + di;
        entries += (long)(nwg + nwi);
        free_list(wg, nwg);
        free_list(gg, ngg);
        free_list(wi, nwi);
        free_list(gi, ngi);
    }
    fprintf(stderr, "crash_test: model: %ld guild list entries and invites expected, %ld differ\n",
            entries, diffs);
    CHECKF(diffs == 0, "B's guild lists and pending invites equal the model (%ld differ)", diffs);
    return diffs;
}

/* ---- the fault proxy ------------------------------------------------------------------------ */

struct proxy {
    pid_t pid;
    uint16_t port;
    char *dir, *log, *stats;
};

/* The faultproxy program: $PBT_FAULTPROXY, else beside postboxd in the build directory. */
static char *proxy_path(void)
{
    return pbt_tool_path("PBT_FAULTPROXY", "faultproxy");
}

static bool log_has(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char line[2048];
    bool seen = false;
    while (f && !seen && fgets(line, sizeof line, f))
        seen = strstr(line, needle) != NULL;
    if (f) fclose(f);
    return seen;
}

static bool proxy_listening(void *vctx)
{
    struct proxy *p = vctx;
    return log_has(p->log, "faultproxy: listening on");
}

/* Starts faultproxy listen -> target with the given seed and fault options. */
static bool proxy_start(struct proxy *p, uint16_t listen, uint16_t target, unsigned seed,
                        const char *const *faults)
{
    p->port = listen;
    p->dir = pbt_tmpdir("crashproxy");
    p->log = xasprintf("%s/faultproxy.log", p->dir);
    p->stats = xasprintf("%s/stats.json", p->dir);
    char *prog = proxy_path();
    char lp[16], tp[16], sd[24];
    snprintf(lp, sizeof lp, "%u", listen);
    snprintf(tp, sizeof tp, "%u", target);
    snprintf(sd, sizeof sd, "%u", seed);
    const char *argv[48];
    int n = 0;
    argv[n++] = prog;
    argv[n++] = lp;
    argv[n++] = tp;
    argv[n++] = sd;
    argv[n++] = "--stats";
    argv[n++] = p->stats;
    for (int i = 0; faults[i] && n < 46; i++)
        argv[n++] = faults[i];
    argv[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) abort();
    if (pid == 0) {
        int fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        execv(prog, (char *const *)argv);
        _exit(127);
    }
    p->pid = pid;
    free(prog);
    bool ok = pbt_wait_for(proxy_listening, p, PBT_BOUND_MS);
    CHECKF(ok, "faultproxy listens on %u (build it: target faultproxy; or set PBT_FAULTPROXY)",
           listen);
    return ok;
}

/* SIGTERM, wait (bounded), and read its stats (new reference, or NULL). */
static json_t *proxy_stop(struct proxy *p)
{
    if (!p->pid) return NULL;
    kill(p->pid, SIGTERM);
    int64_t deadline = pbt_now_ms() + PBT_BOUND_MS;
    bool gone = false;
    int status = -1;
    while (!gone && pbt_now_ms() < deadline) {
        if (waitpid(p->pid, &status, WNOHANG) == p->pid) {
            gone = true;
            break;
        }
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (!gone) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
    }
    p->pid = 0;
    CHECKF(gone && WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "faultproxy on %u exits cleanly on SIGTERM", p->port);
    return json_load_file(p->stats, 0, NULL);
}

static void proxy_free(struct proxy *p)
{
    json_decref(proxy_stop(p));
    if (p->dir && !getenv("PBT_KEEP")) pbt_rmrf(p->dir);
    free(p->dir);
    free(p->log);
    free(p->stats);
}

static void proxy_dump_log(const struct proxy *p)
{
    FILE *f = p->log ? fopen(p->log, "r") : NULL;
    if (!f) return;
    char line[2048];
    long n = 0;
    while (fgets(line, sizeof line, f))
        n++;
    rewind(f);
    fprintf(stderr, "---- %s ----\n", p->log);
    for (long i = 0; fgets(line, sizeof line, f); i++)
        if (i >= n - 40) fputs(line, stderr);
    fclose(f);
}

/* ---- kills ----------------------------------------------------------------------------------- */

static void restart(pbt_daemon *d)
{
    CHECKF(pbt_daemon_start(d), "%s restarts", d->server_id);
}

/* The stream being submitted to A, batch by batch. */
struct stream {
    pbt_daemon *a;
    const char *to;
    unsigned n, submitted, batch;
};

/* Submits the next batch (retrying while A answers nothing: it is only ever called while
 * A is up and not about to crash, so a batch is never stored twice). */
static bool feed(struct stream *st)
{
    unsigned m = st->n - st->submitted < st->batch ? st->n - st->submitted : st->batch;
    if (m == 0) return true;
    bool ok = false;
    for (int tries = 0; tries < 100 && !ok; tries++) {
        ok = submit(st->a, st->to, st->submitted, m);
        if (!ok) {
            struct timespec ts = {0, 50 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    CHECKF(ok, "events %u.. accepted", st->submitted);
    if (ok) st->submitted += m;
    return ok;
}

/*
 * Restarts d with a fault point that makes it abort at its first hit (it may even hit it
 * before it is seen healthy), waits for that crash, then restarts it normally. For the
 * receiver, a Push must arrive to hit delivery.crash-after-commit: if B's start-up Pull
 * took everything, more events are submitted to A (once a second) until it does. The
 * sender is killed right after a batch was accepted, so its outbox is not empty.
 */
static void crash_at(pbt_daemon *d, const char *fault, struct stream *st, bool receiver)
{
    setenv("PB_FAULTS", fault, 1);
    pbt_daemon_start(d);
    unsetenv("PB_FAULTS");
    bool crashed = false;
    for (int i = 0; i < 60 && !crashed; i++) {
        crashed = pbt_daemon_wait_exit(d, 1000);
        if (!crashed && receiver) feed(st);
    }
    CHECKF(crashed, "%s: crashed at %s", d->server_id, fault);
    if (!crashed) pbt_daemon_kill(d);
    char needle[128];
    snprintf(needle, sizeof needle, "fault point %s: crashing", fault);
    CHECKF(log_has(d->log_path, needle), "%s: the crash happened at %s", d->server_id, fault);
    restart(d);
}

int main(int argc, char **argv)
{
    unsigned n = argc > 1 ? (unsigned)atoi(argv[1]) : 10000;
    unsigned kills = argc > 2 ? (unsigned)atoi(argv[2]) : 10;
    unsigned seed = getenv("PBT_SEED") ? (unsigned)atoi(getenv("PBT_SEED")) : (unsigned)time(NULL);
    bool use_proxy = !getenv("PBT_NO_PROXY");
    fprintf(stderr,
            "crash_test: %u events, %u kills, seed %u (PBT_SEED=%u replays), fault proxy %s\n", n,
            kills, seed, seed, use_proxy ? "on" : "off");
    srand(seed);

    /* Fast retries so that faults cost little time: 3 tries 20/40 ms apart, then queued
     * with drain probes after 1-2 s; A gives up on an answer after 3 s (the proxy holds
     * delayed answers 4 s). A key fetch that met a fault is retried after 2 s, not 30. */
    /* clang-format off */
    const char *ax[] = {"--push-retries", "2", "--retry-base-ms", "20",
                        "--backoff-min", "1", "--backoff-max", "2",
                        "--peer-timeout-ms", "3000", "--key-refetch-interval", "2", NULL};
    /* Per mille of requests (refuse: of connections, which are few: libcurl keeps them);
     * delays and blackholes at most one per 8 s per proxy. */
    const char *to_b[] = {"--refuse", "50", "--reset-before", "3", "--reset-after", "3",
                          "--http500", "2", "--http503", "2", "--http429", "2",
                          "--delay", "0.5", "--blackhole", "0.3",
                          "--delay-ms", "4000", "--blackhole-ms", "3000", "--slow-gap-ms", "8000",
                          "--jitter-ms", "10", NULL};
    /* B's Pulls are few (one per start-up and per quiet minute) but carry up to 1000
     * events each: fault a quarter of them. */
    const char *to_a[] = {"--refuse", "50", "--reset-before", "50", "--reset-after", "100",
                          "--http500", "30", "--http503", "30", "--http429", "30",
                          "--delay", "20", "--delay-ms", "4000", "--slow-gap-ms", "8000", NULL};
    /* clang-format on */
    const char *const *faults[2] = {to_b, to_a};
    const char *bx[] = {"--peer-timeout-ms", "3000", "--key-refetch-interval", "2", NULL};
    pbt_daemon *a = pbt_daemon_new("crashA", ax);
    pbt_daemon *b = pbt_daemon_new("crashB", bx);
    /* px[0] carries what is addressed to B (A's Pushes), px[1] what is addressed to A
     * (B's Pulls): each daemon's server ID is its proxy's address. */
    struct proxy px[2] = {{0}, {0}};
    pbt_daemon *behind[2] = {b, a};
    char ids[2][64];
    snprintf(ids[0], sizeof ids[0], "%s", b->server_id);
    snprintf(ids[1], sizeof ids[1], "%s", a->server_id);
    bool up = true;
    for (int i = 0; use_proxy && i < 2 && up; i++) {
        uint16_t xport = pbt_free_port(); /* never a port handed out before (harness.h) */
        snprintf(ids[i], sizeof ids[i], "127.0.0.1:%u", xport);
        pbt_daemon *d = behind[i];
        d->args[d->nargs++] = strdup("--server-id");
        d->args[d->nargs++] = strdup(ids[i]);
        up = proxy_start(&px[i], xport, d->port, seed + (unsigned)i, faults[i]);
        fprintf(stderr, "crash_test: %s listens on %u, its server ID %s is a fault proxy's\n",
                i == 0 ? "B" : "A", d->port, ids[i]);
    }
    const char *b_id = ids[0], *a_id = ids[1];
    if (!up || !pbt_daemon_start(a) || !pbt_daemon_start(b)) {
        CHECK(!"proxies and daemons start");
        proxy_free(&px[0]);
        proxy_free(&px[1]);
        pbt_daemon_free(a);
        pbt_daemon_free(b);
        return pbt_finish();
    }
    struct stream st = {a, b_id, n, 0, 250};
    unsigned batches = (n + st.batch - 1) / st.batch;
    unsigned every = kills ? (batches / (kills + 2) ? batches / (kills + 2) : 1) : batches + 1;
    unsigned killed = 0, fault_kills = 0;
    int64_t t0 = pbt_now_ms();
    for (unsigned k = 0; st.submitted < n && k < 2 * batches; k++) {
        if (!feed(&st)) break;
        if (killed < kills && k % every == every - 1) {
            pbt_daemon *victim = killed % 2 ? b : a;
            /* the two worst moments: kills 1, 11, 21, ... (A) and 2, 12, 22, ... (B) */
            const char *fault = NULL;
            if (killed % 10 == 0) fault = "delivery.crash-before-forget";
            if (killed % 10 == 1) fault = "delivery.crash-after-commit";
            if (!(fault && victim == a)) {
                struct timespec ts = {0, (long)(rand() % 300) * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
            pbt_daemon_kill(victim);
            killed++;
            fprintf(stderr, "crash_test: SIGKILL %s after %u events%s%s\n",
                    victim == a ? "sender" : "receiver", st.submitted,
                    fault ? ", then crash at " : "", fault ? fault : "");
            if (fault) {
                crash_at(victim, fault, &st, victim == b);
                fault_kills++;
            } else {
                restart(victim);
            }
        }
    }
    CHECK_INT(st.submitted, n);
    struct scan wait, t;
    scan_init(&wait, b, a_id, n);
    CHECKF(pbt_wait_for(all_arrived, &wait, 600000), "the stream arrives within 10 minutes");
    free(wait.seen);
    verify(b, a_id, n, &t);
    free(t.seen);
    long model_diffs = check_model(b, a_id, n);
    int64_t ms = pbt_now_ms() - t0;
    /* the proxies' counts, summed over both directions */
    json_t *sum = json_object();
    for (int i = 0; use_proxy && i < 2; i++) {
        json_t *ps = proxy_stop(&px[i]);
        CHECKF(ps != NULL, "faultproxy %d wrote its stats", i);
        fprintf(stderr, "crash_test: proxy to %s: %lld requests, %lld injected faults\n",
                i == 0 ? "B" : "A", (long long)json_integer_value(json_object_get(ps, "requests")),
                (long long)json_integer_value(json_object_get(ps, "total")));
        const char *key;
        json_t *v;
        json_object_foreach(ps, key, v)
        {
            if (json_is_integer(v) && strcmp(key, "seed"))
                json_object_set_new(sum, key,
                                    json_integer(json_integer_value(json_object_get(sum, key)) +
                                                 json_integer_value(v)));
        }
        json_object_foreach(json_object_get(ps, "faults"), key, v)
        {
            json_t *f = json_object_get(sum, "faults");
            if (!f) json_object_set_new(sum, "faults", f = json_object());
            json_object_set_new(
                f, key,
                json_integer(json_integer_value(json_object_get(f, key)) + json_integer_value(v)));
        }
        json_decref(ps);
    }
    char fbuf[512] = "";
    size_t off = 0;
    const char *key;
    json_t *v;
    json_object_foreach(json_object_get(sum, "faults"), key, v)
    {
        int w = snprintf(fbuf + off, sizeof fbuf - off, " %s=%lld", key,
                         (long long)json_integer_value(v));
        if (w > 0 && (size_t)w < sizeof fbuf - off) off += (size_t)w;
    }
    fprintf(
        stderr,
        "crash_test: RESULT seed=%u events=%u sigkills=%u fault_point_crashes=%u lost=%ld "
        "duplicated=%ld reordered=%ld altered=%ld model_diffs=%ld seconds=%.1f proxy_requests=%lld "
        "proxy_connections=%lld injected=%lld%s\n",
        seed, n, killed, fault_kills, (long)n - t.distinct, t.dups, t.reordered,
        t.altered + t.others, model_diffs, ms / 1000.0,
        (long long)json_integer_value(json_object_get(sum, "requests")),
        (long long)json_integer_value(json_object_get(sum, "connections")),
        (long long)json_integer_value(json_object_get(sum, "total")), fbuf);
    json_decref(sum);
    CHECK_INT(killed, kills);
    /* both shut down cleanly (under the sanitizers: no leak, no error) */
    CHECK_INT(pbt_daemon_stop(a), 0);
    CHECK_INT(pbt_daemon_stop(b), 0);
    if (pbt_failed) {
        fprintf(stderr, "crash_test: FAILED with seed %u: PBT_SEED=%u replays\n", seed, seed);
        pbt_daemon_dump_log(a);
        pbt_daemon_dump_log(b);
        proxy_dump_log(&px[0]);
        proxy_dump_log(&px[1]);
    }
    proxy_free(&px[0]);
    proxy_free(&px[1]);
    pbt_daemon_free(a);
    pbt_daemon_free(b);
    return pbt_finish();
}
