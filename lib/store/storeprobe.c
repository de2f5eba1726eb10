/*
 * storeprobe - reading a store without changing it (see storeprobe.h).
 */
#include "store/storeprobe.h"

#include <errno.h>
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/store.h"
#include "store/store_driver.h"
#include "store/store_impl.h"
#include "util/buf.h"
#include "util/mem.h"

#define PG_CONNECT_TIMEOUT_S "5"

void pb_storeprobe_clear(pb_storeprobe *p)
{
    if (!p) return;
    free(p->path);
    free(p->server_id);
    free(p->configured);
    free(p->public_key);
    memset(p, 0, sizeof *p);
}

static void meta_take(pb_storeprobe *p, const char *key, const char *val)
{
    char **slot = !strcmp(key, "server_id")              ? &p->server_id
                  : !strcmp(key, "configured_server_id") ? &p->configured
                  : !strcmp(key, "public_key")           ? &p->public_key
                                                         : NULL;
    if (!slot || !val) return;
    free(*slot);
    *slot = pb_xstrdup(val);
}

/* "file:" URI of a path: the characters a URI gives a meaning to are %-escaped. */
static char *file_uri(const char *path, bool immutable)
{
    pb_buf b = PB_BUF_INIT;
    pb_buf_append_str(&b, "file:");
    for (const char *p = path; *p; p++) {
        if (*p == '?' || *p == '#' || *p == '%') {
            char esc[4];
            snprintf(esc, sizeof esc, "%%%02X", (unsigned char)*p);
            pb_buf_append_str(&b, esc);
        } else {
            pb_buf_append(&b, p, 1);
        }
    }
    pb_buf_append_str(&b, immutable ? "?mode=ro&immutable=1" : "?mode=ro");
    pb_buf_append(&b, "", 1);
    return (char *)pb_buf_steal(&b, NULL);
}

static pb_err probe_sqlite(pb_storeprobe *p, char **why)
{
    struct stat st;
    if (stat(p->path, &st) != 0) {
        if (errno == ENOENT) return PB_OK; /* created at the first start */
        *why = pb_xasprintf("cannot see %s: %s", p->path, strerror(errno));
        return PB_ERR_STORE;
    }
    if (!S_ISREG(st.st_mode)) {
        *why = pb_xasprintf("%s is not a regular file", p->path);
        return PB_ERR_CONFIG;
    }
    p->exists = true;
    /* With a -wal file (a running or crashed daemon) its contents count: read through it
     * (its -shm exists then); without one the file is all there is: immutable, so that
     * SQLite creates nothing beside it. */
    char *wal = pb_xasprintf("%s-wal", p->path), *shm = pb_xasprintf("%s-shm", p->path);
    /* a -wal without its -shm: SQLite would create the -shm; read the file alone */
    bool has_wal = access(wal, F_OK) == 0 && access(shm, F_OK) == 0;
    free(wal);
    free(shm);
    char *uri = file_uri(p->path, !has_wal);
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    pb_err err = PB_ERR_STORE;
    int rc = sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL);
    free(uri);
    if (rc != SQLITE_OK) goto fail;
    rc = sqlite3_prepare_v2(db,
                            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN "
                            "('schema_version', 'meta')",
                            -1, &q, NULL);
    if (rc != SQLITE_OK || sqlite3_step(q) != SQLITE_ROW) goto fail;
    int tables = sqlite3_column_int(q, 0);
    sqlite3_finalize(q);
    q = NULL;
    if (tables >= 1) {
        rc =
            sqlite3_prepare_v2(db, "SELECT version FROM schema_version WHERE id = 1", -1, &q, NULL);
        if (rc != SQLITE_OK) goto fail;
        if ((rc = sqlite3_step(q)) == SQLITE_ROW) p->version = sqlite3_column_int(q, 0);
        sqlite3_finalize(q);
        q = NULL;
    }
    if (tables == 2) {
        rc = sqlite3_prepare_v2(db, "SELECT key, value FROM meta", -1, &q, NULL);
        if (rc != SQLITE_OK) goto fail;
        while ((rc = sqlite3_step(q)) == SQLITE_ROW)
            meta_take(p, (const char *)sqlite3_column_text(q, 0),
                      (const char *)sqlite3_column_text(q, 1));
        if (rc != SQLITE_DONE) goto fail;
    }
    err = PB_OK;
    goto out;
fail:
    rc = db ? sqlite3_errcode(db) : rc;
    err = rc == SQLITE_NOTADB || rc == SQLITE_CORRUPT ? PB_ERR_CORRUPT : PB_ERR_STORE;
    *why = pb_xasprintf("cannot read %s: %s", p->path, db ? sqlite3_errmsg(db) : "out of memory");
out:
    sqlite3_finalize(q);
    sqlite3_close(db);
    return err;
}

/* One text value of a one-row query, or NULL (caller frees). */
static char *pg_value(PGconn *pg, const char *sql, bool *ok)
{
    PGresult *r = PQexec(pg, sql);
    char *v = NULL;
    *ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    if (*ok && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0)) v = pb_xstrdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static pb_err probe_pg(const char *uri, pb_storeprobe *p, char **why)
{
    /* the URI's own settings win over the timeout (expand_dbname); the session is
     * read-only whatever the URI says */
    const char *const keys[] = {"connect_timeout", "fallback_application_name", "dbname", "options",
                                NULL};
    const char *const vals[] = {PG_CONNECT_TIMEOUT_S, "postboxd-check", uri,
                                "-c default_transaction_read_only=on", NULL};
    PGconn *pg = PQconnectdbParams(keys, vals, 1);
    pb_err err = PB_ERR_STORE;
    bool ok = false;
    char *v = NULL;
    if (PQstatus(pg) != CONNECTION_OK) {
        const char *msg = PQerrorMessage(pg);
        *why = pb_xasprintf("cannot connect to PostgreSQL: %.*s", (int)strcspn(msg, "\n"), msg);
        goto out;
    }
    v = pg_value(pg,
                 "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema() "
                 "AND tablename IN ('schema_version', 'meta')",
                 &ok);
    if (!ok) goto query;
    int tables = v ? atoi(v) : 0;
    free(v);
    v = NULL;
    p->exists = tables > 0;
    if (tables >= 1) {
        v = pg_value(pg, "SELECT version FROM schema_version WHERE id = 1", &ok);
        if (!ok) goto query;
        p->version = v ? atoi(v) : 0;
    }
    if (tables == 2) {
        PGresult *r = PQexec(pg, "SELECT key, value FROM meta");
        ok = PQresultStatus(r) == PGRES_TUPLES_OK;
        for (int i = 0; ok && i < PQntuples(r); i++)
            meta_take(p, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
        PQclear(r);
        if (!ok) goto query;
    }
    err = PB_OK;
    goto out;
query:;
    const char *msg = PQerrorMessage(pg);
    *why = pb_xasprintf("cannot read the PostgreSQL store: %.*s", (int)strcspn(msg, "\n"), msg);
out:
    free(v);
    PQfinish(pg);
    return err;
}

pb_err pb_storeprobe_run(const char *spec, pb_storeprobe *out, char **why)
{
    memset(out, 0, sizeof *out);
    *why = NULL;
    if (!strncmp(spec, "postgres://", 11) || !strncmp(spec, "postgresql://", 13)) {
        out->latest = pb_store_schema_current;
        return probe_pg(spec, out, why);
    }
    if (!strncmp(spec, "postgres:", 9) || !strncmp(spec, "postgresql:", 11)) {
        *why = pb_xstrdup("a PostgreSQL store is a URI: postgresql://[user@]host[:port]/db");
        return PB_ERR_CONFIG;
    }
    const char *path = !strncmp(spec, "sqlite:", 7) ? spec + 7 : spec;
    if (!*path || !strcmp(path, ":memory:")) {
        *why = pb_xstrdup("want sqlite:/path/to/postbox.db");
        return PB_ERR_CONFIG;
    }
    out->sqlite = true;
    out->path = pb_xstrdup(path);
    out->latest = pb_store_schema_current;
    return probe_sqlite(out, why);
}
