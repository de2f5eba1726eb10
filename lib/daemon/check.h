/*
 * check - the configuration test: every check postboxd's start runs before it creates or
 * opens anything, short of serving (postboxd --check-config, and the first step of
 * pb_daemon_open, so that an invalid configuration creates nothing: no data directory,
 * key, lock, store or migration).
 *
 * Design: each problem is one log line (PB_ERROR) naming the setting or file and the fix;
 * all of them are reported, not only the first. Nothing is created, written or locked:
 * the store is read through storeprobe (SQLite read-only, PostgreSQL in a read-only
 * session). File access is judged for a given user (uid and groups, from the permission
 * bits; ACLs are not seen) or, for the process itself, with faccessat(AT_EACCESS).
 * Problems are of two kinds: configuration problems (the operator must change a file or
 * setting: postboxd exits 2) and runtime ones (the PostgreSQL server cannot be reached
 * now: exit 1, a later start may work).
 *
 * Untrusted input: none (the operator's configuration and files).
 */
#ifndef PB_CHECK_H
#define PB_CHECK_H

#include <stdbool.h>
#include <sys/types.h>

#include "daemon/config.h"
#include "postbox.h"

#define PB_CHECK_MAX_GROUPS 64

/* Whose access is judged. */
typedef struct pb_check_as {
    bool self; /* this process (faccessat); else the fields below */
    uid_t uid;
    gid_t groups[PB_CHECK_MAX_GROUPS]; /* primary group first */
    int ngroups;
    char name[64]; /* for messages */
} pb_check_as;

/* This process. */
void pb_check_as_self(pb_check_as *as);
/* The account `user` (its uid, primary and supplementary groups). PB_ERR_NOT_FOUND when
 * there is no such account. */
pb_err pb_check_as_user(const char *user, pb_check_as *as);

typedef struct pb_check_result {
    unsigned config;  /* configuration problems (each logged) */
    unsigned runtime; /* problems a later start may not have (each logged) */
} pb_check_result;

/* Runs every check on the finished cfg, judging file access as `as`. */
void pb_check_run(const pb_config *cfg, const pb_check_as *as, pb_check_result *res);

/* Reads admin_token_file `path` (mode 0600 or stricter, one line of 16+ characters) into
 * *out (caller frees and wipes); logs why not. PB_OK or PB_ERR_CONFIG. */
pb_err pb_check_read_token(const char *path, char **out);

#endif
