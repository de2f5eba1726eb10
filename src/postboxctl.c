/*
 * postboxctl - the postbox admin CLI: a thin shell over libpostbox's admin client.
 * Commands talk to a running postboxd's admin listener, except `keygen` and `version`,
 * which work offline. The listener and its token file are found as postboxd's own
 * configuration says (admin_listen, admin_token_file, read with the library's parser):
 * from -c FILE, else /etc/postbox/postbox.conf when readable (POSTBOX_CONFIG names another),
 * else the defaults; POSTBOX_ADMIN and POSTBOX_ADMIN_TOKEN_FILE override the file, and
 * --admin and --token-file override everything. Errors name where the address came from.
 * Output is a table for people, or the API's JSON with --json; failures exit non-zero
 * with the error on stderr (usage errors exit 2).
 *
 * Design: main() parses the global options and dispatches through a command table
 * {name, args, min/max arguments, handler, help}; every handler makes its admin calls
 * through call()/call_quiet(), which own the error reporting. Path segments given by the
 * user (peer and user IDs) are URL-escaped with libcurl.
 *
 * Untrusted input: the daemon's answers (JSON checked field by field; strings from peers,
 * such as invite IDs and errors, are printed with control characters replaced), command
 * line arguments and events read from stdin (parsed with jansson, validated by the daemon).
 */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "postbox.h"

#define FOLLOW_WAIT_S 30
#define FOLLOW_TIMEOUT_MS ((FOLLOW_WAIT_S + 15) * 1000L)

#define DEFAULT_CONFIG "/etc/postbox/postbox.conf"

struct ctl {
    pb_config *cfg;
    const char *admin;
    const char *admin_from; /* where admin came from, for error messages */
    const char *token_file, *token_from;
    char *token;
    bool json;
    pb_adminc *client; /* created on first use */
};

typedef int (*cmd_fn)(struct ctl *c, int argc, char **argv);

struct command {
    const char *name;
    const char *args; /* synopsis of the arguments */
    int min, max;     /* argument counts; max -1: unlimited */
    cmd_fn fn;
    const char *help;
};

/* A usage error: "postboxctl: MSG ARG", then exit code 2. */
static int bad_usage(const char *msg, const char *arg)
{
    fprintf(stderr, "postboxctl: %s%s (see postboxctl --help)\n", msg, arg);
    return 2;
}

static char *read_token(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return NULL; /* errno says why */
    char line[512] = "";
    char *ok = fgets(line, sizeof line, f);
    fclose(f);
    if (!ok) return NULL;
    line[strcspn(line, "\r\n")] = '\0';
    return strdup(line);
}

/*
 * Runs one admin call. Returns the parsed answer of a 2xx (caller decrefs), or NULL with
 * *why set to a message (caller frees) and *status the HTTP status, 0 when postboxd could
 * not be reached or the answer is not JSON. body may be NULL.
 */
static json_t *call_quiet(struct ctl *c, const char *method, const char *path, const json_t *body,
                          long timeout_ms, long *status, char **why)
{
    char *answer = NULL, *text = NULL;
    json_t *j = NULL;
    *status = 0;
    *why = NULL;
    if (!c->client && pb_adminc_new(c->admin, c->token, &c->client) != PB_OK) {
        *why = strdup("cannot create the admin client");
        return NULL;
    }
    if (body) text = json_dumps(body, JSON_COMPACT);
    pb_err err = pb_adminc_call(c->client, method, path, text, timeout_ms, status, &answer);
    free(text);
    if (err != PB_OK) {
        *status = 0;
        struct stat st;
        int r;
        if (!strncmp(c->admin, "unix:", 5) && stat(c->admin + 5, &st) != 0)
            r = asprintf(why, "cannot reach postboxd: no socket at %s (is postboxd running? %s)",
                         c->admin + 5, c->admin_from);
        else if (strstr(answer, "refused") || strstr(answer, "onnect to"))
            r = asprintf(why,
                         "cannot reach postboxd at %s: connection refused (is postboxd running? "
                         "%s)",
                         c->admin, c->admin_from);
        else
            r = asprintf(why, "cannot reach postboxd at %s: %s (%s)", c->admin, answer,
                         c->admin_from);
        if (r < 0) abort();
        goto out;
    }
    json_error_t jerr;
    j = answer[0] ? json_loads(answer, 0, &jerr) : json_object();
    if (*status == 401) {
        int r = c->token ? asprintf(why,
                                    "postboxd at %s refused the admin token read from %s (%s): "
                                    "it is not the one in postboxd's admin_token_file",
                                    c->admin, c->token_file, c->token_from)
                         : asprintf(why,
                                    "postboxd at %s wants the admin token: give --token-file, "
                                    "POSTBOX_ADMIN_TOKEN_FILE or admin_token_file in the "
                                    "configuration (-c FILE)",
                                    c->admin);
        if (r < 0) abort();
        json_decref(j);
        j = NULL;
        goto out;
    }
    if (*status < 200 || *status > 299) {
        const char *msg = j ? json_string_value(json_object_get(j, "error")) : NULL;
        if (asprintf(why, "%s %s: %ld %s", method, path, *status, msg ? msg : answer) < 0) abort();
        json_decref(j);
        j = NULL;
        goto out;
    }
    if (!j || !json_is_object(j)) {
        if (asprintf(why, "%s %s: answer is not a JSON object: %.200s", method, path, answer) < 0)
            abort();
        json_decref(j);
        j = NULL;
        *status = 0;
    }
out:
    free(answer);
    return j;
}

/* call_quiet with the default timeout that prints the failure to stderr. */
static json_t *call(struct ctl *c, const char *method, const char *path, const json_t *body)
{
    long status;
    char *why = NULL;
    json_t *j = call_quiet(c, method, path, body, 0, &status, &why);
    if (!j) fprintf(stderr, "postboxctl: %s\n", why);
    free(why);
    return j;
}

/* "/v1/<a>/<escaped id>/<b>" for a user-given path segment; caller frees. */
static char *seg_path(const char *a, const char *id, const char *b)
{
    char *esc = curl_easy_escape(NULL, id, 0), *p = NULL;
    if (!esc) abort();
    if (asprintf(&p, "/v1/%s/%s/%s", a, esc, b) < 0) abort();
    curl_free(esc);
    return p;
}

static int print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    puts(s);
    free(s);
    return 0;
}

/* Writes s with control characters (terminal escapes from a peer) replaced by '?'. */
static void put_safe(const char *s, FILE *f)
{
    for (; *s; s++)
        fputc(((unsigned char)*s < 0x20 || *s == 0x7f) ? '?' : *s, f);
}

/* A JSON value as display text: strings as-is, integers in decimal, null as "-". */
static const char *text_of(const json_t *v, char *buf, size_t len)
{
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_integer(v)) {
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf;
    }
    if (json_is_true(v)) return "true";
    if (json_is_false(v)) return "false";
    return "-";
}

/* ---- tables ------------------------------------------------------------------------ */

#define TABLE_MAX_COLS 8

struct table {
    size_t ncols, nrows;
    char **cells; /* nrows * ncols, row-major, owned */
};

static void table_row(struct table *t, const char *const *row)
{
    t->cells = realloc(t->cells, (t->nrows + 1) * t->ncols * sizeof *t->cells);
    if (!t->cells) abort();
    for (size_t i = 0; i < t->ncols; i++) {
        char *s = strdup(row[i] ? row[i] : "-");
        if (!s) abort();
        t->cells[t->nrows * t->ncols + i] = s;
    }
    t->nrows++;
}

/* Prints the table (the first row is the header) with two spaces between columns, and
 * frees its cells. */
static void table_print(struct table *t)
{
    size_t w[TABLE_MAX_COLS] = {0};
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t i = 0; i < t->ncols; i++) {
            size_t n = strlen(t->cells[r * t->ncols + i]);
            if (n > w[i]) w[i] = n;
        }
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t i = 0; i < t->ncols; i++) {
            const char *s = t->cells[r * t->ncols + i];
            put_safe(s, stdout);
            if (i + 1 < t->ncols) printf("%*s", (int)(w[i] - strlen(s) + 2), "");
            free(t->cells[r * t->ncols + i]);
        }
        putchar('\n');
    }
    free(t->cells);
    t->cells = NULL;
    t->nrows = 0;
}

/* A duration in seconds for people: 42s, 5m03s, 2h07m, 3d04h. */
static const char *duration(const json_t *v, char *buf, size_t len)
{
    if (!json_is_integer(v)) return "-";
    json_int_t s = json_integer_value(v);
    if (s < 0) s = 0;
    if (s < 60)
        snprintf(buf, len, "%llds", (long long)s);
    else if (s < 3600)
        snprintf(buf, len, "%lldm%02llds", (long long)s / 60, (long long)s % 60);
    else if (s < 86400)
        snprintf(buf, len, "%lldh%02lldm", (long long)s / 3600, (long long)s % 3600 / 60);
    else
        snprintf(buf, len, "%lldd%02lldh", (long long)s / 86400, (long long)s % 86400 / 3600);
    return buf;
}

/* ---- offline commands -------------------------------------------------------------- */

static int cmd_version(struct ctl *c, int argc, char **argv)
{
    if (c->json) {
        json_t *j = json_pack("{s:s}", "version", PB_VERSION);
        print_json(j);
        json_decref(j);
    } else {
        printf("postboxctl %s\n", PB_VERSION);
    }
    return 0;
}

static int cmd_keygen(struct ctl *c, int argc, char **argv)
{
    char *path = NULL;
    if (argc == 2 && !strcmp(argv[0], "--key-file"))
        path = strdup(argv[1]);
    else if (argc != 0)
        return bad_usage("keygen takes only [--key-file PATH]", "");
    else
        path = pb_config_get(c->cfg, "key_file");
    if (!path) {
        char *dir = pb_config_get(c->cfg, "data_dir");
        if (asprintf(&path, "%s/key", dir) < 0) abort();
        free(dir);
    }
    char hex[65];
    bool created = false;
    pb_err err = pb_keygen(path, hex, &created);
    if (err != PB_OK) {
        fprintf(stderr, "postboxctl: keygen %s: %s\n", path, pb_strerror(err));
        free(path);
        return 1;
    }
    if (c->json) {
        json_t *j =
            json_pack("{s:s,s:s,s:b}", "key_file", path, "public_key", hex, "created", created);
        print_json(j);
        json_decref(j);
    } else {
        printf("%s %s\npublic key: %s\n", created ? "created" : "existing", path, hex);
    }
    free(path);
    return 0;
}

/* ---- admin commands ---------------------------------------------------------------- */

static int cmd_key(struct ctl *c, int argc, char **argv)
{
    json_t *j = call(c, "GET", "/v1/key", NULL);
    if (!j) return 1;
    if (c->json) {
        print_json(j);
    } else {
        char b1[32], b2[32];
        printf("server_id:  %s\npublic_key: %s\n",
               text_of(json_object_get(j, "server_id"), b1, sizeof b1),
               text_of(json_object_get(j, "public_key"), b2, sizeof b2));
    }
    json_decref(j);
    return 0;
}

static int cmd_health(struct ctl *c, int argc, char **argv)
{
    json_t *j = call(c, "GET", "/healthz", NULL);
    if (!j) return 1;
    if (c->json)
        print_json(j);
    else
        puts("ok");
    json_decref(j);
    return 0;
}

/* fsync of the directory holding path, so that a rename or link into it is durable. */
static int sync_dir_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy) abort();
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = dfd >= 0 && fsync(dfd) == 0 ? 0 : -1;
    if (dfd >= 0) close(dfd);
    free(copy);
    return rc;
}

/*
 * backup [--force] FILE: GET /v1/backup streamed into a temporary file beside FILE
 * (.NAME.XXXXXX, mode 0600: the copy holds everything the store holds), checked to be an
 * SQLite database, fsync'd, then put in place: link() when FILE must not exist (so a file
 * that appeared meanwhile is not replaced either), rename() with --force; then the
 * directory is fsync'd. Any failure removes the temporary file and leaves FILE as it was.
 */
static int cmd_backup(struct ctl *c, int argc, char **argv)
{
    bool force = false;
    const char *file = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--force"))
            force = true;
        else if (argv[i][0] == '-' && argv[i][1] != '\0')
            return bad_usage("backup: unknown option ", argv[i]);
        else if (file)
            return bad_usage("backup takes one FILE; also got ", argv[i]);
        else
            file = argv[i];
    }
    if (!file) return bad_usage("usage: backup [--force] FILE", "");
    struct stat st;
    if (!force && lstat(file, &st) == 0) {
        fprintf(stderr, "postboxctl: %s exists: give another name, or --force to replace it\n",
                file);
        return 1;
    }
    char *copy = strdup(file), *copy2 = strdup(file), *tmp = NULL;
    if (!copy || !copy2 || asprintf(&tmp, "%s/.%s.XXXXXX", dirname(copy), basename(copy2)) < 0)
        abort();
    free(copy);
    free(copy2);
    int rc = 1, fd = mkstemp(tmp);
    char *answer = NULL;
    if (fd < 0) {
        fprintf(stderr, "postboxctl: cannot create %s: %s\n", tmp, strerror(errno));
        free(tmp);
        return 1;
    }
    long status = 0;
    if (!c->client && pb_adminc_new(c->admin, c->token, &c->client) != PB_OK) {
        fprintf(stderr, "postboxctl: cannot create the admin client\n");
        goto out;
    }
    pb_err err = pb_adminc_download(c->client, "/v1/backup", fd, 0, &status, &answer);
    if (err == PB_ERR_IO) {
        fprintf(stderr, "postboxctl: %s: %s\n", tmp, answer);
        goto out;
    }
    if (err != PB_OK) {
        fprintf(stderr, "postboxctl: cannot reach postboxd at %s: %s\n", c->admin, answer);
        goto out;
    }
    if (status < 200 || status > 299) {
        json_t *j = answer ? json_loads(answer, 0, NULL) : NULL;
        const char *msg = j ? json_string_value(json_object_get(j, "error")) : NULL;
        fprintf(stderr, "postboxctl: GET /v1/backup: %ld %s\n", status,
                msg ? msg : (answer ? answer : ""));
        json_decref(j);
        goto out;
    }
    char head[16] = "";
    if (fstat(fd, &st) != 0 || pread(fd, head, sizeof head, 0) != (ssize_t)sizeof head ||
        memcmp(head, "SQLite format 3", 16) != 0) {
        fprintf(stderr, "postboxctl: the answer is not an SQLite database; %s left as it was\n",
                file);
        goto out;
    }
    if (fsync(fd) != 0) {
        fprintf(stderr, "postboxctl: fsync %s: %s\n", tmp, strerror(errno));
        goto out;
    }
    if (force ? rename(tmp, file) != 0 : link(tmp, file) != 0) {
        fprintf(stderr, "postboxctl: cannot %s %s: %s%s\n", force ? "replace" : "create", file,
                strerror(errno), !force && errno == EEXIST ? " (--force replaces it)" : "");
        goto out;
    }
    if (!force) unlink(tmp);
    tmp[0] = '\0';
    if (sync_dir_of(file) != 0) {
        fprintf(stderr, "postboxctl: fsync of the directory of %s: %s\n", file, strerror(errno));
        goto out;
    }
    if (c->json) {
        json_t *j = json_pack("{s:s,s:I}", "file", file, "bytes", (json_int_t)st.st_size);
        if (j) print_json(j);
        json_decref(j);
    } else {
        printf("backup of the store written to %s (%lld bytes)\n", file, (long long)st.st_size);
    }
    rc = 0;
out:
    close(fd);
    if (tmp[0]) unlink(tmp);
    free(tmp);
    free(answer);
    return rc;
}

static int cmd_send(struct ctl *c, int argc, char **argv)
{
    const char *id = NULL;
    if (argc >= 1 && !strcmp(argv[0], "--id")) {
        if (argc < 4) return bad_usage("usage: send [--id SUBMISSION_ID] TO EVENT_JSON ...", "");
        id = argv[1];
        argc -= 2;
        argv += 2;
    }
    json_t *body = json_pack("{s:s}", "to", argv[0]), *evs = NULL;
    json_error_t jerr;
    int rc = 2;
    if (!body) {
        rc = bad_usage("TO is not valid UTF-8: ", argv[0]);
        goto out;
    }
    if (id && json_object_set_new(body, "submission_id", json_string(id)) != 0) {
        rc = bad_usage("SUBMISSION_ID is not valid UTF-8: ", id);
        goto out;
    }
    if (argc == 2 && !strcmp(argv[1], "-")) {
        evs = json_loadf(stdin, 0, &jerr);
        if (!evs) {
            fprintf(stderr, "postboxctl: stdin is not JSON: %s (line %d)\n", jerr.text, jerr.line);
            goto out;
        }
        json_object_set(body, json_is_array(evs) ? "events" : "event", evs);
    } else if (argc == 2) {
        if (!(evs = json_loads(argv[1], 0, &jerr))) {
            fprintf(stderr, "postboxctl: the event is not JSON: %s\n", jerr.text);
            goto out;
        }
        json_object_set(body, "event", evs);
    } else {
        evs = json_array();
        for (int i = 1; i < argc; i++) {
            json_t *e = json_loads(argv[i], 0, &jerr);
            if (!e) {
                fprintf(stderr, "postboxctl: event %d is not JSON: %s\n", i, jerr.text);
                goto out;
            }
            json_array_append_new(evs, e);
        }
        json_object_set(body, "events", evs);
    }
    json_t *j = call(c, "POST", "/v1/outbox", body);
    rc = 1;
    if (!j) goto out;
    if (c->json) {
        print_json(j);
    } else {
        char b[32], f[32], l[32];
        const char *first = text_of(json_object_get(j, "first_seq"), f, sizeof f),
                   *last = text_of(json_object_get(j, "last_seq"), l, sizeof l);
        printf("accepted %s (seq %s%s%s)%s\n", text_of(json_object_get(j, "accepted"), b, sizeof b),
               first, strcmp(first, last) ? "-" : "", strcmp(first, last) ? last : "",
               json_is_true(json_object_get(j, "duplicate"))
                   ? " (duplicate: this submission ID was queued before; nothing new queued)"
                   : "");
    }
    json_decref(j);
    rc = 0;
out:
    json_decref(evs);
    json_decref(body);
    return rc;
}

/* One inbox item for people: SEQ  FROM  KIND  name=value ... */
static void print_item(const json_t *it)
{
    char b[32];
    const json_t *ev = json_object_get(it, "event");
    printf("%s  ", text_of(json_object_get(it, "seq"), b, sizeof b));
    put_safe(text_of(json_object_get(it, "from"), b, sizeof b), stdout);
    const char *kind;
    json_t *fields;
    if (!json_is_object(ev) || json_object_size(ev) != 1) {
        /* a notice of our own (a queue dropped or expired) has no event */
        const json_t *notice = json_object_get(it, "notice");
        if (!json_is_object(notice) || json_object_size(notice) != 1) {
            puts("  ?");
            return;
        }
        ev = notice;
    }
    void *iter = json_object_iter((json_t *)ev);
    kind = json_object_iter_key(iter);
    fields = json_object_iter_value(iter);
    printf("  ");
    put_safe(kind, stdout);
    if (!strcmp(kind, "serverRenamed")) {
        printf("  ");
        put_safe(text_of(json_object_get(fields, "oldServerId"), b, sizeof b), stdout);
        printf(" -> ");
        put_safe(text_of(json_object_get(fields, "newServerId"), b, sizeof b), stdout);
    } else if (json_is_object(fields)) {
        const char *key;
        json_t *v;
        const char *sep = "  ";
        json_object_foreach(fields, key, v)
        {
            printf("%s", sep);
            put_safe(key, stdout);
            putchar('=');
            put_safe(text_of(v, b, sizeof b), stdout);
            sep = " ";
        }
    }
    /* what PROTOCOL.md section 5 says to tell the user */
    const json_t *notice = json_object_get(it, "notice");
    if (notice != ev && json_is_object(notice) && json_object_size(notice) == 1) {
        void *ni = json_object_iter((json_t *)notice);
        const json_t *nf = json_object_iter_value(ni);
        printf("  notice: ");
        put_safe(json_object_iter_key(ni), stdout);
        const char *key;
        json_t *v;
        json_object_foreach((json_t *)nf, key, v)
        {
            putchar(' ');
            put_safe(key, stdout);
            putchar('=');
            put_safe(text_of(v, b, sizeof b), stdout);
        }
    }
    putchar('\n');
}

/* Prints the items of one inbox answer (after a header line when `header`, for people);
 * *next is the answer's next (unchanged if absent). */
static void print_inbox(const json_t *j, bool follow, bool as_json, bool header, json_int_t *next)
{
    const json_t *evs = json_object_get(j, "events"), *it;
    size_t i;
    if (json_is_integer(json_object_get(j, "next")))
        *next = json_integer_value(json_object_get(j, "next"));
    if (as_json && !follow) {
        print_json((json_t *)j);
        return;
    }
    if (!as_json && header) puts("SEQ  FROM  KIND  DETAILS");
    json_array_foreach(evs, i, it)
    {
        if (as_json) {
            char *s = json_dumps(it, JSON_COMPACT | JSON_SORT_KEYS);
            puts(s);
            free(s);
        } else {
            print_item(it);
        }
    }
    fflush(stdout);
}

static void on_sigint(int sig)
{
    _exit(0); /* output is flushed after every item, so nothing is lost */
}

/* Parses a whole number option value; false (after a message) when it is not one. */
static bool num_opt(const char *name, const char *s, unsigned long long *out)
{
    char *end;
    if (!s || !*s || *s == '-' || *s == '+') goto bad;
    *out = strtoull(s, &end, 10);
    if (*end == '\0') return true;
bad:
    fprintf(stderr, "postboxctl: %s wants a whole number, got \"%s\" (see postboxctl --help)\n",
            name, s ? s : "");
    return false;
}

static int cmd_inbox(struct ctl *c, int argc, char **argv)
{
    unsigned long long after = 0, limit = 100, wait = 0;
    bool follow = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--follow"))
            follow = true;
        else if (!strcmp(argv[i], "--after") && i + 1 < argc) {
            if (!num_opt("--after", argv[++i], &after)) return 2;
        } else if (!strcmp(argv[i], "--limit") && i + 1 < argc) {
            if (!num_opt("--limit", argv[++i], &limit)) return 2;
        } else if (!strcmp(argv[i], "--wait") && i + 1 < argc) {
            if (!num_opt("--wait", argv[++i], &wait)) return 2;
        } else {
            return bad_usage("inbox: unknown or incomplete option ", argv[i]);
        }
    }
    if (follow) {
        signal(SIGINT, on_sigint);
        wait = FOLLOW_WAIT_S;
    }
    json_int_t next = (json_int_t)after;
    bool failing = false, printed_header = false;
    for (;;) {
        char path[160], *why = NULL;
        long status;
        snprintf(path, sizeof path, "/v1/inbox?after=%llu&limit=%llu&wait=%llu",
                 (unsigned long long)next, limit, wait);
        json_t *j = call_quiet(c, "GET", path, NULL, follow ? FOLLOW_TIMEOUT_MS : 0, &status, &why);
        if (!j) {
            bool transient = status == 0 || status >= 500;
            if (!follow || !transient || !failing) fprintf(stderr, "postboxctl: %s\n", why);
            free(why);
            if (!follow || !transient) return 1;
            if (!failing) fprintf(stderr, "postboxctl: retrying every second\n");
            failing = true;
            sleep(1);
            continue;
        }
        if (failing) fprintf(stderr, "postboxctl: reconnected\n");
        failing = false;
        print_inbox(j, follow, c->json, !printed_header, &next);
        printed_header = true;
        json_decref(j);
        if (!follow) return 0;
    }
}

/* wait [--timeout S]: until GET /healthz answers 200 (a daemon just started), polling
 * every 100 ms; exit 1 with the last error after S seconds (default 30). */
static int cmd_wait(struct ctl *c, int argc, char **argv)
{
    unsigned long long timeout = 30;
    if (argc == 2 && !strcmp(argv[0], "--timeout")) {
        if (!num_opt("--timeout", argv[1], &timeout)) return 2;
    } else if (argc != 0) {
        return bad_usage("usage: wait [--timeout SECONDS]", "");
    }
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        long status;
        char *why = NULL;
        json_t *j = call_quiet(c, "GET", "/healthz", NULL, 2000, &status, &why);
        if (j) {
            json_decref(j);
            if (!c->json) puts("ok");
            return 0;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long ms = (now.tv_sec - t0.tv_sec) * 1000LL + (now.tv_nsec - t0.tv_nsec) / 1000000;
        bool late = ms >= (long long)timeout * 1000;
        if (late || status == 401) { /* a wrong token will not get better */
            fprintf(stderr, "postboxctl: %s\n", why);
            free(why);
            return 1;
        }
        free(why);
        struct timespec pause = {0, 100 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
}

static int cmd_peers(struct ctl *c, int argc, char **argv)
{
    json_t *j = call(c, "GET", "/v1/peers", NULL);
    if (!j) return 1;
    if (c->json) {
        print_json(j);
        json_decref(j);
        return 0;
    }
    struct table t = {.ncols = 6};
    table_row(&t, (const char *const[]){"SERVER_ID", "MODE", "QUEUED", "OLDEST_AGE", "NEXT_ATTEMPT",
                                        "LAST_ERROR"});
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(j, "peers"), i, p)
    {
        char b1[32], b2[32], b3[32], b4[32], b5[32], b6[32], b7[32], *last = NULL;
        const char *err = text_of(json_object_get(p, "last_error"), b1, sizeof b1);
        const char *rerr = json_string_value(json_object_get(p, "rename_error"));
        const json_t *pseq = json_object_get(p, "parked_seq");
        char parked[64] = "", rename[600] = "";
        if (json_is_integer(pseq))
            snprintf(parked, sizeof parked, " (parked at seq %s)", text_of(pseq, b6, sizeof b6));
        if (json_is_true(json_object_get(p, "rename_pending")))
            snprintf(rename, sizeof rename, " (rename pending%s%.500s)", rerr ? ": " : "",
                     rerr ? rerr : "");
        if (asprintf(&last, "%s%s%s", err, parked, rename) < 0) abort();
        table_row(&t, (const char *const[]){
                          text_of(json_object_get(p, "server_id"), b2, sizeof b2),
                          text_of(json_object_get(p, "mode"), b3, sizeof b3),
                          text_of(json_object_get(p, "queued"), b4, sizeof b4),
                          duration(json_object_get(p, "oldest_queued_age_s"), b5, sizeof b5),
                          duration(json_object_get(p, "next_attempt_in_s"), b7, sizeof b7), last});
        free(last);
    }
    table_print(&t);
    const json_t *ren = json_object_get(j, "renames_in");
    if (json_array_size(ren)) {
        printf("\nRenames announced by peers, waiting for proof (PROTOCOL.md 7.2):\n");
        struct table r = {.ncols = 3};
        table_row(&r, (const char *const[]){"OLD_ID", "NEW_ID", "SINCE"});
        json_array_foreach(ren, i, p)
        {
            char b1[300], b2[300], b3[64];
            time_t since = (time_t)json_integer_value(json_object_get(p, "since"));
            struct tm tm;
            if (!gmtime_r(&since, &tm) || !strftime(b3, sizeof b3, "%Y-%m-%dT%H:%M:%SZ", &tm))
                snprintf(b3, sizeof b3, "?");
            table_row(&r, (const char *const[]){
                              text_of(json_object_get(p, "old_id"), b1, sizeof b1),
                              text_of(json_object_get(p, "new_id"), b2, sizeof b2), b3});
        }
        table_print(&r);
    }
    json_decref(j);
    return 0;
}

static int parked_cmd(struct ctl *c, const char *peer, const char *verb, const char *done)
{
    char *path = seg_path("peers", peer, verb);
    json_t *j = call(c, "POST", path, NULL);
    free(path);
    if (!j) return 1;
    if (c->json) {
        print_json(j);
    } else {
        char b[32];
        put_safe(text_of(json_object_get(j, "server_id"), b, sizeof b), stdout);
        printf(": %sback to %s mode\n", done, text_of(json_object_get(j, "mode"), b, sizeof b));
    }
    json_decref(j);
    return 0;
}

static int cmd_retry(struct ctl *c, int argc, char **argv)
{
    return parked_cmd(c, argv[0], "retry", "");
}

static int cmd_drop_parked(struct ctl *c, int argc, char **argv)
{
    return parked_cmd(c, argv[0], "drop-parked", "parked event dropped, ");
}

/* flush PEER | --all: POST /v1/peers/PEER/flush or POST /v1/flush */
static int cmd_flush(struct ctl *c, int argc, char **argv)
{
    (void)argc;
    bool all = !strcmp(argv[0], "--all");
    char *path = all ? strdup("/v1/flush") : seg_path("peers", argv[0], "flush");
    if (!path) abort();
    json_t *j = call(c, "POST", path, NULL);
    free(path);
    if (!j) return 1;
    char b[32];
    if (c->json) {
        print_json(j);
    } else if (all) {
        const json_t *peers = json_object_get(j, "flushed");
        printf("%zu queued peer(s) flushed: trying now", json_array_size(peers));
        size_t i;
        json_t *p;
        json_array_foreach(peers, i, p)
        {
            fputs(i ? ", " : ": ", stdout);
            put_safe(text_of(p, b, sizeof b), stdout);
        }
        putchar('\n');
    } else {
        put_safe(text_of(json_object_get(j, "server_id"), b, sizeof b), stdout);
        puts(json_is_true(json_object_get(j, "flushed"))
                 ? ": flushed: backoff reset, trying now"
                 : ": not queued (push mode): nothing to flush");
    }
    json_decref(j);
    return 0;
}

/* queue PEER [--from SEQ] [--limit N]: GET /v1/peers/PEER/queue, like postcat -q */
static int cmd_queue(struct ctl *c, int argc, char **argv)
{
    unsigned long long from = 0, limit = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--from") && i + 1 < argc) {
            if (!num_opt("--from", argv[++i], &from)) return 2;
        } else if (!strcmp(argv[i], "--limit") && i + 1 < argc) {
            if (!num_opt("--limit", argv[++i], &limit)) return 2;
        } else {
            return bad_usage("queue: unknown or incomplete option ", argv[i]);
        }
    }
    char *base = seg_path("peers", argv[0], "queue"), *path = NULL;
    if (asprintf(&path, "%s?from=%llu&limit=%llu", base, from ? from : 1, limit ? limit : 100) < 0)
        abort();
    free(base);
    json_t *j = call(c, "GET", path, NULL);
    free(path);
    if (!j) return 1;
    if (c->json) {
        print_json(j);
        json_decref(j);
        return 0;
    }
    char b[32], b2[32], b3[32];
    put_safe(text_of(json_object_get(j, "server_id"), b, sizeof b), stdout);
    printf(": %s events queued (%s mode)\n", text_of(json_object_get(j, "queued"), b2, sizeof b2),
           text_of(json_object_get(j, "mode"), b3, sizeof b3));
    struct table t = {.ncols = 4};
    table_row(&t, (const char *const[]){"SEQ", "AGE_S", "KIND", "EVENT"});
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(j, "events"), i, e)
    {
        char *ev = json_dumps(json_object_get(e, "event"), JSON_COMPACT | JSON_SORT_KEYS);
        table_row(&t, (const char *const[]){text_of(json_object_get(e, "seq"), b, sizeof b),
                                            text_of(json_object_get(e, "age_s"), b2, sizeof b2),
                                            text_of(json_object_get(e, "kind"), b3, sizeof b3),
                                            ev ? ev : "-"});
        free(ev);
    }
    table_print(&t);
    const json_t *next = json_object_get(j, "next_from");
    if (json_is_string(next)) {
        fputs("(more: --from ", stdout);
        put_safe(json_string_value(next), stdout);
        puts(")");
    }
    json_decref(j);
    return 0;
}

/* drop PEER --yes: POST /v1/peers/PEER/drop {"confirm": true} */
static int cmd_drop(struct ctl *c, int argc, char **argv)
{
    if (argc != 2 || strcmp(argv[1], "--yes") != 0)
        return bad_usage("drop deletes the peer's queued events for good: confirm with --yes; ",
                         "see them first with postboxctl queue PEER");
    char *path = seg_path("peers", argv[0], "drop");
    json_t *body = json_pack("{s:b}", "confirm", 1);
    json_t *j = call(c, "POST", path, body);
    json_decref(body);
    free(path);
    if (!j) return 1;
    char b[32], b2[32], b3[32], b4[32];
    if (c->json) {
        print_json(j);
    } else if (json_integer_value(json_object_get(j, "dropped")) == 0) {
        put_safe(text_of(json_object_get(j, "server_id"), b, sizeof b), stdout);
        puts(": nothing queued, nothing dropped");
    } else {
        put_safe(text_of(json_object_get(j, "server_id"), b, sizeof b), stdout);
        printf(": %s events dropped (seq %s..%s); new sequence epoch ",
               text_of(json_object_get(j, "dropped"), b2, sizeof b2),
               text_of(json_object_get(j, "first_seq"), b3, sizeof b3),
               text_of(json_object_get(j, "last_seq"), b4, sizeof b4));
        put_safe(text_of(json_object_get(j, "epoch"), b, sizeof b), stdout);
        printf("; notice %s in the inbox\n",
               text_of(json_object_get(j, "inbox_seq"), b2, sizeof b2));
    }
    json_decref(j);
    return 0;
}

/* GET /v1/users/USER/<what>, printed as a table of the array `key`'s fields `fields`. */
static int user_table(struct ctl *c, const char *user, const char *what, const char *key,
                      const char *const *heads, const char *const *fields, size_t n)
{
    char *path = seg_path("users", user, what);
    json_t *j = call(c, "GET", path, NULL);
    free(path);
    if (!j) return 1;
    if (c->json) {
        print_json(j);
        json_decref(j);
        return 0;
    }
    struct table t = {.ncols = n};
    table_row(&t, heads);
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(j, key), i, e)
    {
        char b[TABLE_MAX_COLS][32];
        const char *row[TABLE_MAX_COLS];
        for (size_t k = 0; k < n; k++)
            row[k] = text_of(json_object_get(e, fields[k]), b[k], 32);
        table_row(&t, row);
    }
    table_print(&t);
    json_decref(j);
    return 0;
}

static int cmd_guilds(struct ctl *c, int argc, char **argv)
{
    return user_table(c, argv[0], "guilds", "guilds",
                      (const char *const[]){"GUILD_ID", "SERVER_ID"},
                      (const char *const[]){"guildId", "serverId"}, 2);
}

static int cmd_invites(struct ctl *c, int argc, char **argv)
{
    return user_table(c, argv[0], "invites", "pendingInvites",
                      (const char *const[]){"INVITE_ID", "SERVER_ID", "INVITER_ID"},
                      (const char *const[]){"inviteId", "serverId", "inviterId"}, 3);
}

static int cmd_rename(struct ctl *c, int argc, char **argv)
{
    json_t *body = json_pack("{s:s}", "new_server_id", argv[0]);
    if (!body) return bad_usage("NEW_ID is not valid UTF-8: ", argv[0]);
    json_t *j = call(c, "POST", "/v1/rename", body);
    json_decref(body);
    if (!j) return 1;
    size_t i, failed = 0, total = 0;
    json_t *p;
    if (c->json)
        print_json(j);
    else {
        char b[32];
        printf("renamed to ");
        put_safe(text_of(json_object_get(j, "server_id"), b, sizeof b), stdout);
        putchar('\n');
    }
    json_array_foreach(json_object_get(j, "peers"), i, p)
    {
        char b[32];
        bool ok = json_is_true(json_object_get(p, "ok"));
        total++;
        failed += !ok;
        if (c->json) continue;
        printf("  ");
        put_safe(text_of(json_object_get(p, "server_id"), b, sizeof b), stdout);
        if (ok) {
            puts(" ok");
        } else {
            printf(" failed: ");
            put_safe(text_of(json_object_get(p, "error"), b, sizeof b), stdout);
            puts(" (will retry)");
        }
    }
    fflush(stdout);
    if (failed)
        fprintf(stderr,
                "postboxctl: warning: %zu of %zu peers not told yet; postboxd keeps retrying "
                "them (see `postboxctl peers`)\n",
                failed, total);
    json_decref(j);
    return 0;
}

/* qshape: queued events per peer by age, like Postfix's qshape: a header of bucket upper
 * bounds in minutes (T is the total), the TOTAL row, then the peers with the most events. */
static int cmd_qshape(struct ctl *c, int argc, char **argv)
{
    unsigned long long top = 0;
    bool as_json = c->json;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            as_json = true;
        } else if (!strcmp(argv[i], "--top") && i + 1 < argc) {
            if (!num_opt("--top", argv[++i], &top)) return 2;
            if (top < 1 || top > 10000) return bad_usage("--top wants 1 to 10000, got ", argv[i]);
        } else {
            return bad_usage("qshape: unknown or incomplete option ", argv[i]);
        }
    }
    char path[64] = "/v1/qshape";
    if (top) snprintf(path, sizeof path, "/v1/qshape?top=%llu", top);
    json_t *j = call(c, "GET", path, NULL);
    if (!j) return 1;
    if (as_json) {
        print_json(j);
        json_decref(j);
        return 0;
    }
    /* rows of cells: header, TOTAL, peers; column 0 left-aligned, the rest right-aligned */
    const json_t *buckets = json_object_get(j, "buckets_min"), *peers = json_object_get(j, "peers");
    size_t nb = json_array_size(buckets), ncols = nb + 2, nrows = json_array_size(peers) + 2;
    if (nb == 0 || ncols > 16) {
        fprintf(stderr, "postboxctl: GET %s: unexpected answer\n", path);
        json_decref(j);
        return 1;
    }
    char **cells = calloc(nrows * ncols, sizeof *cells);
    if (!cells) abort();
    cells[0] = strdup("PEER");
    cells[1] = strdup("T");
    for (size_t k = 0; k < nb; k++) {
        const char *b = json_string_value(json_array_get(buckets, k)),
                   *dash = b ? strchr(b, '-') : NULL;
        cells[2 + k] = strdup(dash ? dash + 1 : b ? b : "?"); /* "5-10" -> "10", "160+" */
    }
    for (size_t r = 1; r < nrows; r++) {
        const json_t *row = r == 1 ? json_object_get(j, "total") : json_array_get(peers, r - 2);
        char b[32];
        cells[r * ncols] =
            strdup(r == 1 ? "TOTAL" : text_of(json_object_get(row, "server_id"), b, sizeof b));
        cells[r * ncols + 1] = strdup(text_of(json_object_get(row, "total"), b, sizeof b));
        for (size_t k = 0; k < nb; k++)
            cells[r * ncols + 2 + k] =
                strdup(text_of(json_array_get(json_object_get(row, "counts"), k), b, sizeof b));
    }
    size_t w[16] = {0};
    for (size_t i = 0; i < nrows * ncols; i++) {
        if (!cells[i]) abort();
        if (strlen(cells[i]) > w[i % ncols]) w[i % ncols] = strlen(cells[i]);
    }
    for (size_t r = 0; r < nrows; r++) {
        for (size_t k = 0; k < ncols; k++) {
            const char *s = cells[r * ncols + k];
            int pad = (int)(w[k] - strlen(s));
            if (k == 0) {
                put_safe(s, stdout);
                printf("%*s", pad, "");
            } else {
                printf("  %*s", pad, "");
                put_safe(s, stdout);
            }
            free(cells[r * ncols + k]);
        }
        putchar('\n');
    }
    free(cells);
    char b[32];
    size_t shown = json_array_size(peers);
    json_int_t all = json_integer_value(json_object_get(j, "queued_peers"));
    if ((json_int_t)shown < all)
        printf("(%zu of %s peers with queued events shown)\n", shown,
               text_of(json_object_get(j, "queued_peers"), b, sizeof b));
    json_decref(j);
    return 0;
}

static const struct command commands[] = {
    {"keygen", "[--key-file PATH]", 0, 2, cmd_keygen,
     "create this server's key file if missing, print the public key"},
    {"key", "", 0, 0, cmd_key, "print this server's ID and public key"},
    {"health", "", 0, 0, cmd_health, "check the daemon's store and listeners"},
    {"wait", "[--timeout S]", 0, 2, cmd_wait,
     "wait until the daemon answers (its health check), at most S seconds (default 30)"},
    {"version", "", 0, 0, cmd_version, "print the version"},
    {"send", "[--id SUBMISSION_ID] TO EVENT_JSON [EVENT_JSON ...] | TO -", 2, -1, cmd_send,
     "queue events for server TO (- reads a JSON event or array from stdin); a repeat with "
     "the same --id queues nothing"},
    {"inbox", "[--after SEQ] [--limit N] [--wait S] [--follow]", 0, 7, cmd_inbox,
     "print received events after SEQ; --follow keeps printing new ones"},
    {"peers", "", 0, 0, cmd_peers, "list peers: mode, queued events, next attempt, last error"},
    {"qshape", "[--top N] [--json]", 0, 3, cmd_qshape,
     "queued events per peer by age in minutes (Postfix's qshape): the N largest queues"},
    {"flush", "PEER | --all", 1, 1, cmd_flush,
     "try a queued peer (or every queued peer) now, its backoff reset (postqueue -f)"},
    {"queue", "PEER [--from SEQ] [--limit N]", 1, 5, cmd_queue,
     "list the events queued for PEER: sequence number, age, kind, the event (postcat -q)"},
    {"drop", "PEER --yes", 1, 2, cmd_drop,
     "delete PEER's queued events for good (a log line, a notice in the inbox, a new "
     "sequence epoch)"},
    {"retry", "PEER", 1, 1, cmd_retry, "retry a parked peer's parked event"},
    {"drop-parked", "PEER", 1, 1, cmd_drop_parked, "drop a parked peer's parked event"},
    {"guilds", "USER_ID", 1, 1, cmd_guilds, "list a local user's guilds on other servers"},
    {"invites", "USER_ID", 1, 1, cmd_invites, "list a local user's pending invites"},
    {"rename", "NEW_ID", 1, 1, cmd_rename, "change this server's ID and tell every peer"},
    {"backup", "[--force] FILE", 1, 2, cmd_backup,
     "write a consistent copy of the running daemon's SQLite store to FILE (not over an "
     "existing FILE without --force)"},
};
static const size_t ncommands = sizeof commands / sizeof commands[0];

static void usage(FILE *f)
{
    fprintf(f, "usage: postboxctl [OPTIONS] COMMAND [ARGS]\n"
               "options:\n"
               "  -c FILE          read admin_listen and admin_token_file from postboxd's\n"
               "                   configuration (default: " DEFAULT_CONFIG " when readable)\n"
               "  --admin ADDR     admin listener: IP:PORT, [IPv6]:PORT or unix:/path\n"
               "  --token-file F   file holding the admin API bearer token\n"
               "  --json           print the API's JSON answer instead of a table\n"
               "  --version        print the version\n"
               "environment: POSTBOX_ADMIN, POSTBOX_ADMIN_TOKEN_FILE (override the file;\n"
               "  the options override them), POSTBOX_CONFIG (instead of " DEFAULT_CONFIG ")\n"
               "commands:\n");
    for (size_t i = 0; i < ncommands; i++) {
        char syn[128];
        snprintf(syn, sizeof syn, "%s%s%s", commands[i].name, commands[i].args[0] ? " " : "",
                 commands[i].args);
        if (strlen(syn) > 30)
            fprintf(f, "  %s\n  %-30s %s\n", syn, "", commands[i].help);
        else
            fprintf(f, "  %-30s %s\n", syn, commands[i].help);
    }
}

/* A non-empty environment variable, or NULL. */
static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

int main(int argc, char **argv)
{
    struct ctl c = {.cfg = pb_config_new()};
    char *why = NULL, *admin = NULL, *token_file = NULL;
    const char *conf = NULL, *admin_flag = NULL, *token_flag = NULL;
    static char admin_from[600], token_from[600];
    int rc = 2, i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) {
            conf = argv[++i];
        } else if (!strcmp(argv[i], "--admin") && i + 1 < argc) {
            admin_flag = argv[++i];
        } else if (!strcmp(argv[i], "--token-file") && i + 1 < argc) {
            token_flag = argv[++i];
        } else if (!strcmp(argv[i], "--json")) {
            c.json = true;
        } else if (!strcmp(argv[i], "--version")) {
            printf("postboxctl %s\n", PB_VERSION);
            rc = 0;
            goto out;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            rc = 0;
            goto out;
        } else {
            fprintf(stderr, "postboxctl: unknown option %s\n", argv[i]);
            usage(stderr);
            goto out;
        }
    }
    /* the configuration file: -c FILE, else the default one when this user may read it */
    if (!conf) {
        const char *dflt = env("POSTBOX_CONFIG") ? env("POSTBOX_CONFIG") : DEFAULT_CONFIG;
        if (access(dflt, R_OK) == 0) conf = dflt;
    }
    if (conf && pb_config_load_file(c.cfg, conf, &why) != PB_OK) {
        fprintf(stderr, "postboxctl: %s\n", why);
        goto out;
    }
    if (admin_flag) {
        admin = strdup(admin_flag);
        snprintf(admin_from, sizeof admin_from, "the address is from --admin");
    } else if (env("POSTBOX_ADMIN")) {
        admin = strdup(env("POSTBOX_ADMIN"));
        snprintf(admin_from, sizeof admin_from, "the address is from POSTBOX_ADMIN");
    } else {
        admin = pb_config_get(c.cfg, "admin_listen");
        if (conf)
            snprintf(admin_from, sizeof admin_from, "the address is admin_listen in %s", conf);
        else
            snprintf(admin_from, sizeof admin_from,
                     "the address is the default admin_listen; %s is not readable, give -c FILE "
                     "or --admin",
                     env("POSTBOX_CONFIG") ? env("POSTBOX_CONFIG") : DEFAULT_CONFIG);
    }
    if (token_flag) {
        token_file = strdup(token_flag);
        snprintf(token_from, sizeof token_from, "--token-file");
    } else if (env("POSTBOX_ADMIN_TOKEN_FILE")) {
        token_file = strdup(env("POSTBOX_ADMIN_TOKEN_FILE"));
        snprintf(token_from, sizeof token_from, "POSTBOX_ADMIN_TOKEN_FILE");
    } else {
        token_file = pb_config_get(c.cfg, "admin_token_file");
        snprintf(token_from, sizeof token_from, "admin_token_file in %s", conf ? conf : "?");
    }
    if (!admin) abort();
    c.admin = admin;
    c.admin_from = admin_from;
    c.token_file = token_file;
    c.token_from = token_from;
    /* the token is read for the commands that call the daemon only */
    bool offline = i < argc && (!strcmp(argv[i], "keygen") || !strcmp(argv[i], "version"));
    if (token_file && !offline && !(c.token = read_token(token_file))) {
        fprintf(stderr, "postboxctl: cannot read the admin token file %s (%s): %s%s\n", token_file,
                token_from, strerror(errno),
                errno == EACCES ? " (it belongs to the postbox user: run as root or postbox, "
                                  "or with sudo -u postbox)"
                                : "");
        rc = 1;
        goto out;
    }
    if (i >= argc) {
        usage(stderr);
        goto out;
    }
    const char *name = argv[i++];
    const struct command *cmd = NULL;
    for (size_t k = 0; k < ncommands && !cmd; k++)
        if (!strcmp(commands[k].name, name)) cmd = &commands[k];
    int nargs = argc - i;
    if (!cmd) {
        fprintf(stderr, "postboxctl: unknown command %s\n", name);
        usage(stderr);
    } else if (nargs < cmd->min || (cmd->max >= 0 && nargs > cmd->max)) {
        fprintf(stderr, "postboxctl: usage: postboxctl %s %s\n", cmd->name, cmd->args);
    } else {
        rc = cmd->fn(&c, nargs, argv + i);
    }
out:
    free(why);
    free(admin);
    free(token_file);
    free(c.token);
    pb_adminc_free(c.client);
    pb_config_free(c.cfg);
    return rc;
}
