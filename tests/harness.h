/*
 * harness - the test helpers every postbox test links (tests/ only, never the library).
 *
 * Assertions count and report failures without stopping the test, so one run shows
 * every broken case; pbt_finish() prints "N passed, N failed" and gives the exit code.
 * Also: hex and temp-directory helpers, the shared vectors, (for integration tests)
 * starting and stopping real postboxd processes on 127.0.0.1, and throw-away PostgreSQL
 * databases on the server named by PB_TEST_PG_URL (scripts/pg-start).
 *
 * Store selection: with PBT_STORE=postgres in the environment every daemon made by
 * pbt_daemon_new gets a fresh PostgreSQL database of its own (--store postgresql://...),
 * dropped by pbt_daemon_free; unset (or PBT_STORE=sqlite) it uses SQLite in its data
 * directory.
 */
#ifndef PB_TEST_HARNESS_H
#define PB_TEST_HARNESS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

#include "crypto/keys.h"
#include "postbox.h"

struct MHD_Daemon;

extern int pbt_passed, pbt_failed;

void pbt_check(bool ok, const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

#define CHECK(cond) pbt_check(!!(cond), __FILE__, __LINE__, #cond, NULL)
#define CHECKF(cond, ...) pbt_check(!!(cond), __FILE__, __LINE__, #cond, __VA_ARGS__)
#define CHECK_OK(expr)                                                                             \
    do {                                                                                           \
        pb_err e__ = (expr);                                                                       \
        pbt_check(e__ == PB_OK, __FILE__, __LINE__, #expr, "got %s", pb_strerror(e__));            \
    } while (0)
#define CHECK_ERR(expr, want)                                                                      \
    do {                                                                                           \
        pb_err e__ = (expr);                                                                       \
        pbt_check(e__ == (want), __FILE__, __LINE__, #expr, "got %s, want %s", pb_strerror(e__),   \
                  pb_strerror(want));                                                              \
    } while (0)
#define CHECK_INT(a, b)                                                                            \
    do {                                                                                           \
        long long a__ = (long long)(a), b__ = (long long)(b);                                      \
        pbt_check(a__ == b__, __FILE__, __LINE__, #a " == " #b, "%lld != %lld", a__, b__);         \
    } while (0)
#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *a__ = (a), *b__ = (b);                                                         \
        pbt_check(a__ &&b__ &&strcmp(a__, b__) == 0, __FILE__, __LINE__, #a " == " #b,             \
                  "\"%s\" != \"%s\"", a__ ? a__ : "(null)", b__ ? b__ : "(null)");                 \
    } while (0)
#define CHECK_MEM(a, alen, b, blen)                                                                \
    pbt_check((alen) == (blen) && ((alen) == 0 || memcmp((a), (b), (alen)) == 0), __FILE__,        \
              __LINE__, #a " == " #b, "lengths %zu, %zu", (size_t)(alen), (size_t)(blen))

/* Prints the summary line "N passed, N failed" and returns the process exit code. */
int pbt_finish(void);

/* Decodes lower-case hex; returns a buffer the caller frees (never NULL; *len may be 0). */
uint8_t *pbt_hex(const char *hex, size_t *len);
/* Hex-encodes into a new string the caller frees. */
char *pbt_tohex(const uint8_t *p, size_t n);

/* The shared vectors file, parsed (a new reference the caller json_decref's); aborts the
 * test when the file cannot be read. */
json_t *pbt_vectors(void);

/* A new empty directory under $TMPDIR (or /tmp); caller frees the path. */
char *pbt_tmpdir(const char *tag);
/* rm -rf of a test directory. */
void pbt_rmrf(const char *path);
/* Copies the file `from` to `to` (created or truncated), mode 0600 (key files, databases);
 * false on any failure. */
bool pbt_copy_file(const char *from, const char *to);

/* Monotonic milliseconds. */
int64_t pbt_now_ms(void);

/* ---- integration: real postboxd processes on 127.0.0.1 ---------------------------------- */

/* A port of 127.0.0.1 free at the time of the call, outside the kernel's ephemeral range and
 * not handed out before by this process (so daemons created together get distinct ports,
 * and a port named as "nobody listens" stays so within the process). */
uint16_t pbt_free_port(void);

/* How long a daemon may take to start or to stop: a bound on a positive condition, far
 * above what load can cause (a start normally takes well under a second). */
#define PBT_DAEMON_BOUND_MS 120000
/* How long a test waits for something that is bound to happen (an event arriving, a
 * process listening or exiting, a log line, a reload): far above what load can cause, as
 * it costs time only when the test fails. Waits for what must NOT happen keep their own
 * short windows. */
#define PBT_BOUND_MS 60000

typedef struct pbt_daemon {
    pid_t pid;          /* 0 when not running */
    char *dir;          /* data directory (owned; removed by pbt_daemon_free) */
    char server_id[64]; /* "127.0.0.1:PORT" */
    uint16_t port;      /* federation */
    uint16_t admin_port;
    char admin[64]; /* "127.0.0.1:PORT" */
    char *log_path; /* the daemon's stderr */
    char *args[32]; /* extra settings, owned */
    int nargs;
    char *pg_db;      /* PBT_STORE=postgres: its database (owned; dropped by pbt_daemon_free) */
    const char *prog; /* program to run instead of the default choice (may be NULL) */
    char token[128];  /* admin bearer token (pbt_daemon_set_token), "" when none */
    bool public_only; /* start it without the harness's loopback settings (pbt_daemon_start) */
    int exit_status;  /* a start that ended in an exit: its status (128 + signal); else 0 */
} pbt_daemon;

/* Creates a daemon description with a fresh data directory and free ports; extra is a
 * NULL-terminated list of further postboxd arguments (may be NULL). Does not start it.
 * With PBT_STORE=postgres it also creates the daemon's database (exits the test with a
 * message when that fails, e.g. PB_TEST_PG_URL unset). */
/* A test program built beside postboxd (the hostile tool, the fault proxy): the path in
 * the environment variable env when set, else DIR/name, DIR being postboxd's build
 * directory. Caller frees. */
char *pbt_tool_path(const char *env, const char *name);
pbt_daemon *pbt_daemon_new(const char *tag, const char *const *extra);
/* Gives d an admin token: writes it to a file in d's directory and adds
 * --admin-token-file; the harness's own admin calls (health check, pbt_admin) send it. */
void pbt_daemon_set_token(pbt_daemon *d, const char *token);
/* Starts (or restarts) the process (postboxd, or postboxd-faults when PB_FAULTS or
 * PB_FAULT_VFS_DIR is set in the environment) and waits until its admin /healthz answers 200
 * (bounded: PBT_DAEMON_BOUND_MS). Returns false, with the log printed and the process
 * killed, when it did not come up. Every daemon
 * gets --peer-scheme http and, unless d->public_only is set, the settings a federation on
 * 127.0.0.1 needs (pbt_loopback_args in harness.c). */
bool pbt_daemon_start(pbt_daemon *d);
/* pbt_daemon_start with the fault points `faults` (comma-separated) active: PB_FAULTS is set
 * for this start only (a later restart runs without them). */
bool pbt_daemon_start_faults(pbt_daemon *d, const char *faults);
/* SIGTERM and wait (bounded: PBT_DAEMON_BOUND_MS, then SIGKILL); returns the exit status or
 * -1. */
int pbt_daemon_stop(pbt_daemon *d);
/* Waits (bounded) for the process to exit by itself; true when it did (and is reaped). */
bool pbt_daemon_wait_exit(pbt_daemon *d, int timeout_ms);
/* SIGKILL and reap. */
void pbt_daemon_kill(pbt_daemon *d);
/* Stops if running, removes the data directory (and drops its PostgreSQL database), frees. */
void pbt_daemon_free(pbt_daemon *d);
/* Lines of d's log (all its runs) holding every one of the two needles (b may be NULL). */
int pbt_log_count(const pbt_daemon *d, const char *a, const char *b);
/* Prints the last lines of the daemon's log to stderr (for failures). */
void pbt_daemon_dump_log(const pbt_daemon *d);

/* A raw HTTP exchange with libcurl against 127.0.0.1:port. headers is a NULL-terminated list
 * of "Name: value" lines (may be NULL). On return *status is the HTTP status (0 when the
 * request failed), *body the answer (caller frees, may be NULL), *ctype / *hrpc_version the
 * answer's Content-Type and Hrpc-Version headers (caller frees, NULL when absent). */
typedef struct pbt_http {
    long status;
    uint8_t *body;
    size_t body_len;
    char *ctype;
    char *hrpc_version;
} pbt_http;
void pbt_http_do(const char *scheme, uint16_t port, const char *method, const char *path,
                 const char *const *headers, const void *body, size_t body_len, const char *ca_file,
                 pbt_http *out);
void pbt_http_clear(pbt_http *h);

/* The value of one series of d's /metrics (admin listener, d's token if set), named
 * exactly as exposed: "postbox_open_connections{listener=\"admin\"}". -1 when absent or
 * when the scrape fails. */
double pbt_metric(const pbt_daemon *d, const char *series);
/* Polls pbt_metric(d, series) until it is at least want, for at most ms; true when it got
 * there. */
bool pbt_wait_metric(const pbt_daemon *d, const char *series, double want, int ms);

/* An admin API call on d's admin listener. body (stolen; may be NULL) is sent as JSON.
 * Returns the parsed answer (new reference; NULL when empty or not JSON) and sets
 * *status (0 when the daemon could not be reached). */
json_t *pbt_admin(const pbt_daemon *d, const char *method, const char *path, json_t *body,
                  long *status);
/* Every inbox item of d, read page by page (array of {seq, from, event, ...}; new
 * reference). *status (may be NULL): the last page's HTTP status (200, or what stopped the
 * reading: 0 when d could not be reached). */
json_t *pbt_inbox_all(const pbt_daemon *d, long *status);
/* The events of d's inbox items from `from`, in inbox order, without rename notices
 * (serverRenamed): an array of event objects, new reference. */
json_t *pbt_inbox_events_from(const pbt_daemon *d, const char *from);
/* Polls `cond(ctx)` every 20 ms until it is true or timeout_ms passes; returns its last
 * value. */
bool pbt_wait_for(bool (*cond)(void *ctx), void *ctx, int timeout_ms);

/* ---- a process seen from outside (Linux /proc) and raw connections ------------------------ */

/* A /proc/PID/status field in KiB (VmRSS, VmHWM), or -1. */
long pbt_proc_kib(pid_t pid, const char *field);
/* CPU time (user + system) of pid in ms, from /proc/PID/stat; -1 when gone. */
long pbt_proc_cpu_ms(pid_t pid);
/* The entries of /proc/PID/<dir>: "fd" counts descriptors, "task" threads; -1 when gone. */
int pbt_proc_entries(pid_t pid, const char *dir);
/* A blocking TCP connection to 127.0.0.1:port (the caller closes it), or -1. */
/* A TCP connection to 127.0.0.1:port from the source address src (any 127/8 address: a
 * client that the daemon sees as another host), or -1. */
int pbt_connect_from(const char *src, uint16_t port);
int pbt_connect_local(uint16_t port);

/* ---- in-test identities -------------------------------------------------------------------
 * A key pair plus a small libmicrohttpd server on 127.0.0.1 answering the Key endpoint, so
 * a daemon under test can verify tokens the test signs as "127.0.0.1:PORT". */
typedef struct pbt_ident {
    pb_keys *keys;      /* signs this identity's tokens (owned) */
    uint8_t serve[32];  /* the public key its Key endpoint answers */
    char server_id[64]; /* "127.0.0.1:PORT" */
    struct MHD_Daemon *mhd;
} pbt_ident;
/* A new identity with its own key pair, serving `serve` (NULL: its own public key); NULL
 * (with a failed check) when its server cannot start. Free with pbt_ident_free. */
pbt_ident *pbt_ident_new(const uint8_t *serve);
void pbt_ident_free(pbt_ident *id);

/* ---- PostgreSQL: throw-away databases ---------------------------------------------------- */

/* $PB_TEST_PG_URL (postgresql://user:password@127.0.0.1:port/db), or NULL after printing
 * how to get one (scripts/pg-start). */
const char *pbt_pg_url(void);
/* Creates database `name` ([a-z0-9_], at most 63 bytes; an old one of that name is dropped
 * first) on that server and returns its URI (caller frees); NULL, with a message on
 * stderr, when it cannot. */
char *pbt_pg_create_db(const char *name);
/* The holder of the lease on peer in the database at url (a node_id; caller frees), or
 * NULL when none holds it or the database cannot be read. */
char *pbt_pg_lease_holder(const char *url, const char *peer);
/* Drops database `name` (terminating its sessions); nothing when it does not exist. */
void pbt_pg_drop_db(const char *name);

#endif
