/*
 * storeprobe - what a store holds, read without changing anything (postboxd
 * --check-config, and the checks pb_daemon_open runs before it opens the store).
 *
 * Design: it does not go through the store's backends (which create, migrate and start
 * writer threads): an SQLite file is opened read-only through a URI ("mode=ro", and
 * "immutable=1" unless a -wal and its -shm exist, so that no -wal or -shm file is created); a
 * PostgreSQL database is read in a read-only session (default_transaction_read_only).
 * It reads the schema version and the identity facts of the meta table.
 *
 * Untrusted input: none (the operator's configuration names the store).
 */
#ifndef PB_STOREPROBE_H
#define PB_STOREPROBE_H

#include <stdbool.h>

#include "postbox.h"

typedef struct pb_storeprobe {
    bool sqlite;      /* an SQLite store (path set), else PostgreSQL */
    char *path;       /* SQLite: the database file (owned) */
    bool exists;      /* SQLite: the file exists; PostgreSQL: the tables do */
    int version;      /* schema version, 0 when there is none yet */
    int latest;       /* the schema version this build migrates to */
    char *server_id;  /* meta "server_id", or NULL (owned) */
    char *configured; /* meta "configured_server_id", or NULL (owned) */
    char *public_key; /* meta "public_key" (hex), or NULL (owned) */
} pb_storeprobe;

/*
 * Reads what the store named by spec (as pb_store_open takes it) holds into *out (cleared
 * first; release with pb_storeprobe_clear). A missing SQLite file is PB_OK with exists
 * false. Errors, with *why set (caller frees): PB_ERR_CONFIG for a spec that is not a
 * store, PB_ERR_CORRUPT for a file that is not a database, PB_ERR_STORE when the database
 * cannot be read or reached.
 */
pb_err pb_storeprobe_run(const char *spec, pb_storeprobe *out, char **why);
void pb_storeprobe_clear(pb_storeprobe *p);

#endif
