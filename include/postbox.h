/*
 * postbox.h - the public interface of libpostbox.
 *
 * libpostbox is a Harmony federation postbox (protocol.sync.v1.PostboxService): it hands
 * events to other homeservers reliably, keeps a durable per-peer queue when a peer does
 * not answer, and receives events from peers. This header is what a program (postboxd,
 * postboxctl, or a homeserver that links the library) needs: the error contract, the
 * logger, the event type, the configuration and the server's lifecycle.
 *
 * Error contract (modelled on libuv's): every fallible function returns a pb_err and
 * fills its out-parameters only on PB_OK. Peer and network failures are ordinary values;
 * out of memory aborts the process (pb_xmalloc and friends), it is never returned.
 */
#ifndef POSTBOX_H
#define POSTBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PB_VERSION "0.1.0"

/* What libpostbox exports: the shared library is built with -fvisibility=hidden and only
 * the functions of this header are visible. */
#if defined(__GNUC__) && __GNUC__ >= 4
#define PB_API __attribute__((visibility("default")))
#else
#define PB_API
#endif

/* ---- errors ------------------------------------------------------------------------ */

typedef enum pb_err {
    PB_OK = 0,
    PB_ERR_INVAL,     /* invalid argument or input (bad server ID, bad JSON, ...) */
    PB_ERR_DECODE,    /* bytes do not decode as the expected protobuf message */
    PB_ERR_TOO_BIG,   /* input over a size limit */
    PB_ERR_NOT_FOUND, /* no such record */
    PB_ERR_EXISTS,    /* record exists already */
    PB_ERR_IO,        /* local file or socket I/O failed */
    PB_ERR_STORE,     /* the store failed (I/O error, busy, unreachable); retryable */
    PB_ERR_CORRUPT,   /* the store or a local file is broken: fatal */
    PB_ERR_CRYPTO,    /* signing/verification machinery failed, or a bad signature */
    PB_ERR_AUTH,      /* authentication refused */
    PB_ERR_NET,       /* could not connect, connection reset, DNS */
    PB_ERR_TIMEOUT,   /* a network operation timed out */
    PB_ERR_TLS,       /* TLS handshake or certificate verification failed */
    PB_ERR_PEER,      /* the peer answered an hRPC error (see the client's answer) */
    PB_ERR_PROTO,     /* the peer answered something that is not valid hRPC */
    PB_ERR_CONFIG,    /* configuration invalid */
    PB_ERR_BUSY,      /* a resource is in use (lock held, peer busy) */
    PB_ERR_SHUTDOWN,  /* the component is shutting down */
    PB_ERR_INTERNAL,  /* a bug or an unexpected library failure */
    PB_ERR_DISK_FULL, /* the store's disk (or database server's) is full; retryable like
                         PB_ERR_STORE */
    PB_ERR__COUNT
} pb_err;

/* Static string naming the error; never NULL, never to be freed. */
PB_API const char *pb_strerror(pb_err err);

/* ---- logging ----------------------------------------------------------------------- */

typedef enum pb_log_level {
    PB_LOG_DEBUG = 0,
    PB_LOG_INFO = 1,
    PB_LOG_WARN = 2,
    PB_LOG_ERROR = 3,
} pb_log_level;

/* Sets the lowest level that is written (default PB_LOG_INFO). Thread-safe. */
PB_API void pb_log_set_level(pb_log_level level);
/* Parses "debug", "info", "warn", "error". */
PB_API pb_err pb_log_level_parse(const char *s, pb_log_level *out);
PB_API const char *pb_log_level_name(pb_log_level level);
/* Sets the line format by name: "text" or "json" (PB_ERR_INVAL otherwise). */
PB_API pb_err pb_log_set_format_name(const char *name);
/* Writes msg as one line of the library's log (the format and level set by the
 * configuration: text or json, the journald priority prefix), for programs that have
 * something to say besides the library (a refused reload, ...). Thread-safe. */
PB_API void pb_log_line(pb_log_level level, const char *msg);

/* ---- events ------------------------------------------------------------------------ */

typedef enum pb_event_kind {
    PB_EV_NONE = 0,
    PB_EV_USER_REMOVED_FROM_GUILD = 1,
    PB_EV_USER_ADDED_TO_GUILD = 2,
    PB_EV_USER_INVITED = 3,
    PB_EV_USER_REJECTED_INVITE = 4,
} pb_event_kind;

/*
 * One protocol.sync.v1.Event. Fields that the kind does not use are 0 / NULL.
 * invite_id (UserInvited, UserRejectedInvite) is a NUL-terminated UTF-8 string owned by
 * the event: pb_event_clear() frees it.
 */
typedef struct pb_event {
    pb_event_kind kind;
    uint64_t user_id;
    uint64_t guild_id;   /* removed/added/rejected */
    uint64_t inviter_id; /* invited */
    char *invite_id;     /* invited/rejected; never NULL for those kinds */
} pb_event;

PB_API void pb_event_clear(pb_event *ev);
/* Deep copy; dst is overwritten (not cleared first). */
PB_API void pb_event_copy(pb_event *dst, const pb_event *src);
PB_API bool pb_event_equal(const pb_event *a, const pb_event *b);
/* lowerCamelCase name of the oneof case ("userAddedToGuild"), or NULL for PB_EV_NONE. */
PB_API const char *pb_event_kind_name(pb_event_kind kind);

/* ---- configuration ------------------------------------------------------------------ */

/* The settings of a postbox server (see config.c for the table: names, defaults, help).
 * Strings returned through `why` explain a refusal and are the caller's to free. */
typedef struct pb_config pb_config;

PB_API pb_config *pb_config_new(void); /* defaults; caller frees with pb_config_free */
PB_API void pb_config_free(pb_config *c);
PB_API pb_err pb_config_set(pb_config *c, const char *name, const char *value, char **why);
/* Reads `name = value` lines (# comments) to the end of the file: on PB_ERR_CONFIG *why
 * (caller frees) names every bad line ("FILE:LINE: ...", joined by "; "); the good
 * lines are applied. */
PB_API pb_err pb_config_load_file(pb_config *c, const char *path, char **why);
/* Consumes leading `--name value` / `--name=value` settings from argv; *used tells how
 * many argv entries were taken (stops at the first argument that is not a setting). */
PB_API pb_err pb_config_parse_args(pb_config *c, int argc, char **argv, int *used, char **why);
/* Derives dependent settings and validates everything; required before use. */
PB_API pb_err pb_config_finish(pb_config *c, char **why);
/* "name = value" lines of the effective settings; caller frees. */
PB_API char *pb_config_dump(const pb_config *c);
/* "name = value\t# ORIGIN" lines of the settings given in a file or as flags whose value
 * differs from the default, ORIGIN being FILE:LINE or --name (postboxd --check-config
 * --changed); caller frees. */
PB_API char *pb_config_dump_changed(const pb_config *c);
/* One line per setting with its help and default; caller frees. */
PB_API char *pb_config_help(void);
/* An example configuration file: every setting commented out with its help, range, default
 * and whether a reload applies it (postbox.conf as installed); caller frees. */
PB_API char *pb_config_example(void);
/* The settings as an mdoc tag list (.Bl ... .El) for postbox.conf(5); caller frees. */
PB_API char *pb_config_mdoc(void);
PB_API const char *pb_config_get_server_id(const pb_config *c);
/* The effective value of a setting as text (a new string the caller frees), or NULL for an
 * unknown name or an unset string setting. */
PB_API char *pb_config_get(const pb_config *c, const char *name);

/* ---- the server ---------------------------------------------------------------------- */

/* A running postbox: store, keys, federation listener and admin listener. */
typedef struct pb_daemon pb_daemon;

/* Opens everything the (finished) config names and starts serving. On PB_OK the caller
 * owns *out and stops it with pb_daemon_close. cfg is copied as needed. It first runs
 * pb_daemon_check as this process: any problem returns PB_ERR_CONFIG (PB_ERR_STORE when
 * only the PostgreSQL server cannot be reached) before anything is created. A data
 * directory in use by another daemon is PB_ERR_BUSY (logged with its pid). */
PB_API pb_err pb_daemon_open(const pb_config *cfg, pb_daemon **out);
/* Stops accepting, finishes in-flight requests, closes the store. NULL is a no-op (and so
 * is any part a failed pb_daemon_open had not opened). */
PB_API void pb_daemon_close(pb_daemon *d);
/*
 * The configuration test (postboxd --check-config): every check pb_daemon_open runs
 * before it creates anything (settings, data directory, key file mode, owner and contents,
 * TLS pair, admin token file, listeners, the store reachable with a schema this build
 * knows and its recorded server ID and key), each problem logged, all of them. Creates,
 * writes and locks nothing. File access is judged as the account as_user (its uid and
 * groups) or, when NULL, as this process. *problems is their number; PB_OK when none.
 */
PB_API pb_err pb_daemon_check(const pb_config *cfg, const char *as_user, unsigned *problems);
/*
 * The admin API in-process, for a homeserver that links the library: the same endpoints,
 * JSON bodies and answers as over HTTP (see README), without a socket. args is a
 * NULL-terminated list of query argument name, value pairs (may be NULL); body may be NULL.
 * *status is the HTTP status the call would have had; *answer the JSON text (caller frees;
 * NULL when empty). Example: pb_daemon_call(d, "POST", "/v1/outbox", NULL,
 * "{\"to\":\"b.example:443\",\"event\":{...}}", &status, &answer).
 */
PB_API pb_err pb_daemon_call(pb_daemon *d, const char *method, const char *path,
                             const char *const *args, const char *body, int *status, char **answer);
/* The federation listener's bound port. */
PB_API uint16_t pb_daemon_port(const pb_daemon *d);
/*
 * Applies a new (finished) configuration to a running server, as SIGHUP does for postboxd.
 * Live settings take effect for what starts from now on: log_level, allow, deny,
 * auth_window, admin_token_file (the file is read again), tls_cert and tls_key (read again
 * even when unchanged: new TLS connections get the new certificate, open ones keep theirs),
 * max_body, max_inflight, conn_timeout, max_connections (up to its value at start). Any other
 * changed setting is logged as needing a restart and keeps its running value. When a file
 * cannot be read or the certificate and key do not match, it returns the error and nothing
 * changes. Not to be called concurrently with itself.
 */
PB_API pb_err pb_daemon_reload(pb_daemon *d, const pb_config *cfg);
/* One line for a status display: server ID, peers, peers not answering, queued events (a
 * new string the caller frees). Reads the store. */
PB_API char *pb_daemon_summary(pb_daemon *d);

/* ---- service manager (systemd) -------------------------------------------------------- */

/* For a program whose process is the service (postboxd): sends `state` ("READY=1",
 * "RELOADING=1", "STOPPING=1", "STATUS=...") to the service manager through $NOTIFY_SOCKET
 * (sd_notify). A no-op without $NOTIFY_SOCKET or when libpostbox was built without
 * libsystemd. */
PB_API void pb_sdnotify_send(const char *state);
/* Arms the service manager's watchdog (WatchdogSec=, seen as $WATCHDOG_USEC): from now on
 * the delivery engine's scheduling loop sends WATCHDOG=1 every half period, so a stalled
 * engine gets the service restarted. Returns that interval in ms, 0 when no watchdog is
 * asked for (or without libsystemd). A program that embeds libpostbox and keeps its own
 * watchdog does not call it. */
PB_API uint64_t pb_sdnotify_watchdog_enable(void);

/* ---- admin API client (what postboxctl and scripts use) -------------------------------- */

typedef struct pb_adminc pb_adminc;

/* listen: the admin listener ("127.0.0.1:2290", "[::1]:2290", "unix:/path"); token may be
 * NULL. Caller frees with pb_adminc_free. */
PB_API pb_err pb_adminc_new(const char *listen, const char *token, pb_adminc **out);
PB_API void pb_adminc_free(pb_adminc *a);
/*
 * One admin call. body_json may be NULL (no body). On PB_OK (an HTTP answer arrived, any
 * status) *status is set and *answer is the answer body text (caller frees; may be empty).
 * PB_ERR_NET / PB_ERR_TIMEOUT when the admin listener cannot be reached; *answer then
 * holds the reason.
 */
PB_API pb_err pb_adminc_call(pb_adminc *a, const char *method, const char *path,
                             const char *body_json, long timeout_ms, long *status, char **answer);
/*
 * A download: GET path, a 2xx answer's body written to fd as it arrives (what
 * `postboxctl backup` uses for GET /v1/backup). On PB_OK *status is set; after a 2xx
 * *answer is NULL, otherwise nothing was written to fd and *answer is the answer text
 * (caller frees). PB_ERR_IO when writing to fd failed; PB_ERR_NET / PB_ERR_TIMEOUT as for
 * pb_adminc_call (*answer holds the reason). timeout_ms 0: no limit on the whole transfer,
 * only on a stall (60 s without a byte).
 */
PB_API pb_err pb_adminc_download(pb_adminc *a, const char *path, int fd, long timeout_ms,
                                 long *status, char **answer);

/* Creates a key file at path (mode 0600) unless one exists; writes the public key's hex
 * into pubhex[65]. *created says whether a new key was made. */
PB_API pb_err pb_keygen(const char *path, char pubhex[65], bool *created);

#ifdef __cplusplus
}
#endif
#endif /* POSTBOX_H */
