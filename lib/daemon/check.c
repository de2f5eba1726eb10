/*
 * check - the configuration test (see check.h).
 */
#include "daemon/check.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libgen.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto/keys.h"
#include "net/admin_http.h"
#include "net/hrpc_server.h"
#include "store/storeprobe.h"
#include "util/log.h"
#include "util/mem.h"

#define CONFIG_PROBLEM(res, ...)                                                                   \
    do {                                                                                           \
        PB_ERROR(NULL, __VA_ARGS__);                                                               \
        (res)->config++;                                                                           \
    } while (0)

void pb_check_as_self(pb_check_as *as)
{
    memset(as, 0, sizeof *as);
    as->self = true;
    as->uid = geteuid();
    struct passwd *pw = getpwuid(as->uid);
    if (pw)
        snprintf(as->name, sizeof as->name, "%s", pw->pw_name);
    else
        snprintf(as->name, sizeof as->name, "uid %u", (unsigned)as->uid);
}

pb_err pb_check_as_user(const char *user, pb_check_as *as)
{
    memset(as, 0, sizeof *as);
    struct passwd *pw = getpwnam(user);
    if (!pw) return PB_ERR_NOT_FOUND;
    as->uid = pw->pw_uid;
    int n = PB_CHECK_MAX_GROUPS;
    if (getgrouplist(user, pw->pw_gid, as->groups, &n) < 0) n = PB_CHECK_MAX_GROUPS;
    as->ngroups = n;
    if (as->ngroups == 0) as->groups[as->ngroups++] = pw->pw_gid;
    snprintf(as->name, sizeof as->name, "%s", user);
    return PB_OK;
}

/* Whether `as` may access path with mode (R_OK|W_OK|X_OK), the path's directories aside. */
static bool may(const pb_check_as *as, const char *path, int mode)
{
    if (as->self) return faccessat(AT_FDCWD, path, mode, AT_EACCESS) == 0;
    struct stat st;
    if (stat(path, &st) != 0) return false;
    if (as->uid == 0) return !(mode & X_OK) || (st.st_mode & 0111) || S_ISDIR(st.st_mode);
    unsigned shift = 0; /* other */
    if (st.st_uid == as->uid) {
        shift = 6;
    } else {
        for (int i = 0; i < as->ngroups; i++)
            if (as->groups[i] == st.st_gid) shift = 3;
    }
    unsigned bits = (st.st_mode >> shift) & 7;
    return ((mode & R_OK) == 0 || (bits & 4)) && ((mode & W_OK) == 0 || (bits & 2)) &&
           ((mode & X_OK) == 0 || (bits & 1));
}

/* The first directory above path (absolute or relative) that `as` cannot search into
 * *blocked (caller frees), or false when every one can be searched. */
static bool blocked_dir(const pb_check_as *as, const char *path, char **blocked)
{
    char *copy = pb_xstrdup(path);
    bool found = false;
    for (char *p = copy + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        struct stat st;
        if (stat(copy, &st) == 0 && S_ISDIR(st.st_mode) && !may(as, copy, X_OK)) {
            *blocked = pb_xstrdup(copy);
            found = true;
            break;
        }
        *p = '/';
    }
    free(copy);
    return found;
}

static char *parent_of(const char *path)
{
    char *copy = pb_xstrdup(path);
    char *d = pb_xstrdup(dirname(copy));
    free(copy);
    return d;
}

static const char *access_words(int mode)
{
    return mode == R_OK                   ? "read"
           : mode == (R_OK | W_OK)        ? "read and write"
           : mode == (R_OK | W_OK | X_OK) ? "use"
                                          : "write into";
}

/* A file or directory `as` must access with mode: a problem when it cannot. */
static void need_access(const pb_check_as *as, const char *setting, const char *path, int mode,
                        pb_check_result *res)
{
    char *blocked = NULL;
    if (blocked_dir(as, path, &blocked)) {
        CONFIG_PROBLEM(res, "%s %s: %s cannot enter the directory %s: chmod o+x %s, or move it",
                       setting, path, as->name, blocked, blocked);
        free(blocked);
        return;
    }
    if (may(as, path, mode)) return;
    struct stat st;
    if (stat(path, &st) != 0) {
        CONFIG_PROBLEM(res, "%s %s: %s: create it, or correct the setting", setting, path,
                       strerror(errno));
        return;
    }
    char bits[4] = "";
    if (mode & R_OK) strcat(bits, "r");
    if (mode & W_OK) strcat(bits, "w");
    if (mode & X_OK) strcat(bits, "x");
    if (st.st_uid != as->uid)
        CONFIG_PROBLEM(res, "%s %s: %s cannot %s it (mode %03o, owner uid %u): chown %s %s",
                       setting, path, as->name, access_words(mode), (unsigned)(st.st_mode & 0777),
                       (unsigned)st.st_uid, as->name, path);
    else
        CONFIG_PROBLEM(res, "%s %s: %s cannot %s it (mode %03o): chmod u+%s %s", setting, path,
                       as->name, access_words(mode), (unsigned)(st.st_mode & 0777), bits, path);
}

/* A directory postboxd creates at start if missing: its parent must then exist and be
 * writable. */
static void check_dir(const pb_check_as *as, const char *setting, const char *path,
                      pb_check_result *res)
{
    struct stat st;
    if (stat(path, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            CONFIG_PROBLEM(res, "%s %s is not a directory: point %s at a directory", setting, path,
                           setting);
        else
            need_access(as, setting, path, R_OK | W_OK | X_OK, res);
        return;
    }
    if (errno != ENOENT) {
        CONFIG_PROBLEM(res, "%s %s: %s", setting, path, strerror(errno));
        return;
    }
    char *parent = parent_of(path);
    if (stat(parent, &st) != 0 || !S_ISDIR(st.st_mode))
        CONFIG_PROBLEM(res,
                       "%s %s: its parent directory %s does not exist: create it, or set %s to "
                       "an existing directory",
                       setting, path, parent, setting);
    else if (!may(as, parent, W_OK | X_OK))
        CONFIG_PROBLEM(res,
                       "%s %s does not exist and %s cannot create it in %s: create it (mkdir -m "
                       "700 %s; chown %s %s)",
                       setting, path, as->name, parent, path, as->name, path);
    free(parent);
}

/* The key file: mode, owner, contents. Its public key into pubhex ("" when unknown). */
static void check_key(const pb_config *cfg, const pb_check_as *as, char pubhex[65],
                      pb_check_result *res)
{
    pubhex[0] = '\0';
    const char *path = cfg->key_file;
    struct stat st;
    if (stat(path, &st) != 0) {
        if (errno != ENOENT) {
            CONFIG_PROBLEM(res, "key_file %s: %s", path, strerror(errno));
            return;
        }
        /* created at the first start: its directory must be writable (the data directory
         * is checked on its own) */
        char *dir = parent_of(path);
        struct stat ds;
        if (strcmp(dir, cfg->data_dir) != 0) {
            if (stat(dir, &ds) != 0)
                CONFIG_PROBLEM(res,
                               "key_file %s: its directory %s does not exist: create it, or "
                               "unset key_file (default: DATA_DIR/key)",
                               path, dir);
            else
                need_access(as, "key_file's directory", dir, W_OK | X_OK, res);
        }
        free(dir);
        return;
    }
    if (!S_ISREG(st.st_mode)) {
        CONFIG_PROBLEM(res, "key_file %s is not a regular file", path);
        return;
    }
    bool ok = true;
    if (st.st_mode & 077) {
        CONFIG_PROBLEM(res,
                       "key_file %s: mode %03o lets others read this server's secret key: "
                       "chmod 600 %s",
                       path, (unsigned)(st.st_mode & 0777), path);
        ok = false;
    }
    if (as->uid != 0 && st.st_uid != as->uid) {
        CONFIG_PROBLEM(res,
                       "key_file %s belongs to uid %u, not to %s, who runs postboxd: chown "
                       "%s %s",
                       path, (unsigned)st.st_uid, as->name, as->name, path);
        ok = false;
    }
    if (ok) need_access(as, "key_file", path, R_OK, res);
    if (!ok || access(path, R_OK) != 0) return;
    pb_keys *k = NULL;
    pb_err err = pb_keys_load(path, &k);
    if (err == PB_OK) {
        pb_keys_hex(pb_keys_public(k), pubhex);
    } else {
        CONFIG_PROBLEM(res,
                       "key_file %s: %s: it must hold the 64 hex digits of this server's key "
                       "(restore it from a backup)",
                       path, pb_strerror(err));
    }
    pb_keys_free(k);
}

pb_err pb_check_read_token(const char *path, char **out)
{
    *out = NULL;
    FILE *f = fopen(path, "r");
    if (!f) {
        PB_ERROR(NULL, "admin_token_file %s: cannot read it: %s", path, strerror(errno));
        return PB_ERR_CONFIG;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || (st.st_mode & 077) != 0) {
        /* like the key file: a secret others can read is no secret */
        PB_ERROR(NULL,
                 "admin_token_file %s is readable by group or others (mode %03o): chmod 600 %s",
                 path, (unsigned)(st.st_mode & 0777), path);
        fclose(f);
        return PB_ERR_CONFIG;
    }
    char line[512];
    pb_err err = PB_ERR_CONFIG;
    if (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (strlen(line) >= 16) {
            *out = pb_xstrdup(line);
            err = PB_OK;
        }
        memset(line, 0, sizeof line);
    }
    if (err != PB_OK)
        PB_ERROR(NULL,
                 "admin_token_file %s: want one line of 16 or more characters (e.g. "
                 "openssl rand -hex 32 > %s)",
                 path, path);
    fclose(f);
    return err;
}

/* A listener's unix:/path: its directory must exist and be writable. */
static void check_unix_listen(const pb_check_as *as, const char *setting, const char *listen,
                              pb_check_result *res)
{
    if (strncmp(listen, "unix:", 5) != 0) return;
    char *dir = parent_of(listen + 5);
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        CONFIG_PROBLEM(res, "%s %s: the directory %s does not exist: create it", setting, listen,
                       dir);
    else
        need_access(as, setting, dir, W_OK | X_OK, res);
    free(dir);
}

/* The store: reachable, a schema this build can migrate, and this server's identity. */
static void check_store(const pb_config *cfg, const pb_check_as *as, const char *pubhex,
                        pb_check_result *res)
{
    pb_storeprobe p;
    char *why = NULL;
    char *shown = pb_store_spec_redact(cfg->store);
    bool sqlite = strncmp(cfg->store, "postgres", 8) != 0;
    if (sqlite) {
        /* before the probe: its directory and file, as the user that runs postboxd */
        const char *path = !strncmp(cfg->store, "sqlite:", 7) ? cfg->store + 7 : cfg->store;
        char *dir = parent_of(path);
        struct stat st;
        if (strcmp(dir, cfg->data_dir) == 0) {
            /* the data directory's own check covers it */
        } else if (stat(dir, &st) == 0)
            need_access(as, "store's directory", dir, W_OK | X_OK, res);
        else
            CONFIG_PROBLEM(res, "store %s: the directory %s does not exist: create it", shown, dir);
        if (stat(path, &st) == 0) need_access(as, "store", path, R_OK | W_OK, res);
        free(dir);
    }
    pb_err err = pb_storeprobe_run(cfg->store, &p, &why);
    if (err != PB_OK) {
        if (err == PB_ERR_STORE && sqlite) {
            /* not a problem of the configuration (its file access was checked above): e.g.
             * the running daemon's -shm cannot be shared; the start opens it for real */
            PB_WARN(NULL, "store %s: %s; its identity was not checked", shown, why);
        } else if (err == PB_ERR_STORE) {
            PB_ERROR(NULL, "store %s: %s (is the server running and the URI right?)", shown, why);
            res->runtime++;
        } else {
            CONFIG_PROBLEM(res, "store %s: %s", shown, why);
        }
        goto out;
    }
    if (p.version > p.latest) {
        CONFIG_PROBLEM(res,
                       "store %s: schema version %d is newer than this postboxd knows (%d): run "
                       "the newer postboxd that wrote it",
                       shown, p.version, p.latest);
    }
    const char *id = cfg->server_id;
    if (p.server_id && strcmp(p.server_id, id) != 0 &&
        !(p.configured && !strcmp(p.configured, id)) &&
        !(cfg->rename_from && !strcmp(cfg->rename_from, p.server_id))) {
        if (cfg->rename_from)
            CONFIG_PROBLEM(res,
                           "rename_from is %s, but the store %s belongs to server %s: set "
                           "rename_from to %s",
                           cfg->rename_from, shown, p.server_id, p.server_id);
        else
            CONFIG_PROBLEM(res,
                           "the store %s belongs to server %s, but server_id is %s: to change "
                           "this server's ID, start once with --rename-from %s (re-labels the "
                           "store and tells every peer), or set server_id back to %s",
                           shown, p.server_id, id, p.server_id, p.server_id);
    }
    if (p.public_key && pubhex[0] && strcmp(p.public_key, pubhex) != 0)
        CONFIG_PROBLEM(res,
                       "key_file %s holds the public key %s, but the store %s belongs to the key "
                       "%s: restore that server's key file",
                       cfg->key_file, pubhex, shown, p.public_key);
    if (p.public_key && !pubhex[0] && access(cfg->key_file, F_OK) != 0)
        CONFIG_PROBLEM(res,
                       "key_file %s does not exist, but the store %s belongs to the key %s: "
                       "restore that server's key file (a new key would not match)",
                       cfg->key_file, shown, p.public_key);
out:
    pb_storeprobe_clear(&p);
    free(why);
    free(shown);
}

void pb_check_run(const pb_config *cfg, const pb_check_as *as, pb_check_result *res)
{
    memset(res, 0, sizeof *res);
    char pubhex[65];
    check_dir(as, "data_dir", cfg->data_dir, res);
    check_key(cfg, as, pubhex, res);

    struct sockaddr_storage ss;
    unsigned sslen;
    if (pb_hrpc_parse_listen(cfg->listen, &ss, &sslen) != PB_OK)
        CONFIG_PROBLEM(res, "listen %s: want IP:PORT or [IPv6]:PORT", cfg->listen);
    if (pb_admin_http_check_listen("admin", cfg->admin_listen) != PB_OK) res->config++;
    check_unix_listen(as, "admin_listen", cfg->admin_listen, res);
    if (cfg->metrics_listen) {
        if (pb_admin_http_check_listen("metrics", cfg->metrics_listen) != PB_OK) res->config++;
        check_unix_listen(as, "metrics_listen", cfg->metrics_listen, res);
    }
    if (cfg->admin_token_file) {
        unsigned before = res->config;
        need_access(as, "admin_token_file", cfg->admin_token_file, R_OK, res);
        char *token = NULL;
        if (res->config == before && pb_check_read_token(cfg->admin_token_file, &token) != PB_OK)
            res->config++;
        if (token) memset(token, 0, strlen(token));
        free(token);
    }
    if (cfg->tls_cert) {
        unsigned before = res->config;
        need_access(as, "tls_cert", cfg->tls_cert, R_OK, res);
        need_access(as, "tls_key", cfg->tls_key, R_OK, res);
        if (res->config == before && pb_hrpc_tls_check(cfg->tls_cert, cfg->tls_key) != PB_OK)
            res->config++;
    }
    if (cfg->ca_file) need_access(as, "ca_file", cfg->ca_file, R_OK, res);
    check_store(cfg, as, pubhex, res);
}
