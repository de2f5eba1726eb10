/*
 * reload_test - SIGHUP on a real postboxd started with only `-c FILE` (so that the file, not
 * flags, decides every setting), one class of setting at a time:
 *   - live: log_level (warn -> info: INFO lines appear), deny (a peer that was served gets
 *     403), admin_token_file (a token becomes required; the file is read again on every
 *     reload, so a new token in the same file replaces the old), max_body (a body that was
 *     read is now refused with 413);
 *   - the TLS certificate: a renewed certificate written over the old files is served to a
 *     NEW TLS connection (its subject changes) while a connection opened before the reload
 *     keeps working on the same TCP connection; a key that does not match its certificate
 *     changes nothing;
 *   - restart: listen and sync changed in the file are reported ("needs a restart; keeping
 *     the old value") and the listener stays where it was;
 *   - broken: a file with an error, or naming an unreadable token file, changes nothing
 *     (the deny list and the limit stay) and is reported.
 * Test certificates are made with the openssl CLI (a CA, two certificates for 127.0.0.1).
 */
#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "crypto/auth.h"
#include "crypto/keys.h"
#include <sys/stat.h>

#include "harness.h"
#include "wire/wire.h"

#define PATH_KEY "/protocol.auth.v1.AuthService/Key"
#define PATH_PUSH "/protocol.sync.v1.PostboxService/Push"

static char certs[512], conf_path[600], token_path[600];
static char live_cert[600], live_key[600], ca[600];

static bool sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static bool sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return system(cmd) == 0;
}

/* A CA, and certificates 1 and 2 for 127.0.0.1 (subjects O=postbox-test-1, -2), each with
 * its own key. */
static bool make_certs(void)
{
    if (!sh("cd '%s' && printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' "
            "> ext.cnf && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
            "-days 2 -subj /CN=postbox-test-ca -keyout ca.key -out ca.pem 2>/dev/null",
            certs))
        return false;
    for (int n = 1; n <= 2; n++)
        if (!sh("cd '%s' && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                "-subj /CN=127.0.0.1/O=postbox-test-%d -keyout s%d.key -out s%d.csr "
                "2>/dev/null && openssl x509 -req -in s%d.csr -CA ca.pem -CAkey ca.key "
                "-set_serial %d -days 2 -extfile ext.cnf -out s%d.pem 2>/dev/null",
                certs, n, n, n, n, n, n))
            return false;
    return true;
}

/* Writes the certificate `cn` and key `kn` (1 or 2) over the files the daemon serves. */
static bool install_cert(int cn, int kn)
{
    return sh("cd '%s' && cat s%d.pem > live.pem && cat s%d.key > live.key", certs, cn, kn);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) abort();
    fputs(text, f);
    fclose(f);
    if (chmod(path, 0600) != 0) abort(); /* the admin token file must be private */
}

/* The configuration: what every phase keeps, then the phase's own lines (later lines win). */
static void write_conf(const pbt_daemon *a, const char *lines)
{
    char text[4096];
    snprintf(text, sizeof text,
             "# reload_test\n"
             "data_dir = %s\n"
             "listen = 127.0.0.1:%u\n"
             "admin_listen = %s\n"
             "peer_scheme = http\n"
             "allow_private_peers = yes\n"
             "tls_cert = %s\n"
             "tls_key = %s\n"
             "conn_timeout = 120\n"
             "%s",
             a->dir, a->port, a->admin, live_cert, live_key, lines);
    write_file(conf_path, text);
}

static bool healthy(void *ctx)
{
    const pbt_daemon *d = ctx;
    pbt_http h;
    pbt_http_do("http", d->admin_port, "GET", "/healthz", NULL, NULL, 0, NULL, &h);
    bool ok = h.status == 200;
    pbt_http_clear(&h);
    return ok;
}

/* postboxd -c FILE and nothing else (the harness would add flags, which win over files). */
static bool start_with_file_only(pbt_daemon *d)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) abort();
    if (pid == 0) {
        int fd = open(d->log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        execl(PB_POSTBOXD, PB_POSTBOXD, "-c", conf_path, (char *)NULL);
        _exit(127);
    }
    d->pid = pid;
    return pbt_wait_for(healthy, d, 20000);
}

/* Occurrences of `text` in the daemon's log. */
static int log_count(const pbt_daemon *d, const char *text)
{
    FILE *f = fopen(d->log_path, "r");
    if (!f) return 0;
    char line[2048];
    int n = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, text)) n++;
    fclose(f);
    return n;
}

struct logwait {
    const pbt_daemon *d;
    int before;
};

/* Reload outcomes, as the log shows them (applied, refused by the library, or by postboxd
 * because the file does not parse). */
static int outcomes(const pbt_daemon *d)
{
    return log_count(d, "configuration reloaded") + log_count(d, "configuration not reloaded") +
           log_count(d, "reload refused");
}

static bool reloaded(void *ctx)
{
    struct logwait *w = ctx;
    return outcomes(w->d) > w->before;
}

/* SIGHUP and wait until the daemon logged the outcome. */
static bool reload(pbt_daemon *d)
{
    struct logwait w = {d, outcomes(d)};
    kill(d->pid, SIGHUP);
    return pbt_wait_for(reloaded, &w, PBT_BOUND_MS);
}

/* A Push from B's identity to A over https: the HTTP status. */
static long push_from(const pbt_daemon *b, const pb_keys *kb, const pbt_daemon *a)
{
    char *t = pb_auth_header_make(kb, b->server_id, NULL, (uint64_t)time(NULL));
    char auth[1024];
    snprintf(auth, sizeof auth, "Authorization: %s", t);
    const char *hdrs[] = {"Content-Type: application/hrpc", auth, NULL};
    pb_buf push = PB_BUF_INIT;
    pb_event ev = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 7, .guild_id = 9};
    pb_wire_push_encode(&ev, NULL, 1, 0, &push);
    pbt_http h;
    pbt_http_do("https", a->port, "POST", PATH_PUSH, hdrs, push.data, push.len, ca, &h);
    long st = h.status;
    pbt_http_clear(&h);
    pb_buf_free(&push);
    free(t);
    return st;
}

/* An admin call with an optional bearer token: the HTTP status. */
static long admin_status(const pbt_daemon *a, const char *token)
{
    char auth[256];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token ? token : "");
    const char *hdrs[] = {auth, NULL};
    pbt_http h;
    pbt_http_do("http", a->admin_port, "GET", "/v1/peers", token ? hdrs : NULL, NULL, 0, NULL, &h);
    long st = h.status;
    pbt_http_clear(&h);
    return st;
}

/* A Key call with a body of n bytes (a KeyRequest is empty): the HTTP status. */
static long key_with_body(const pbt_daemon *a, size_t n)
{
    char *body = calloc(1, n + 1);
    memset(body, 0xff, n); /* an unterminated varint: never a valid message */
    const char *hdrs[] = {"Content-Type: application/hrpc", NULL};
    pbt_http h;
    pbt_http_do("https", a->port, "POST", PATH_KEY, hdrs, body, n, ca, &h);
    long st = h.status;
    pbt_http_clear(&h);
    free(body);
    return st;
}

static size_t discard(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

/*
 * A Key call over https on the curl handle c (kept by the caller, so that its connection is
 * reused). Returns the HTTP status; *new_conn tells whether a new connection was made, and
 * then `subject` holds the served certificate's subject.
 */
static long tls_key(CURL *c, uint16_t port, bool *new_conn, char *subject, size_t n)
{
    char url[128];
    snprintf(url, sizeof url, "https://127.0.0.1:%u%s", port, PATH_KEY);
    struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/hrpc");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 15000L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
    curl_easy_setopt(c, CURLOPT_CAINFO, ca);
    curl_easy_setopt(c, CURLOPT_CERTINFO, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    long status = 0, conns = 0;
    subject[0] = '\0';
    if (curl_easy_perform(c) == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &conns);
        struct curl_certinfo *ci = NULL;
        if (conns > 0 && curl_easy_getinfo(c, CURLINFO_CERTINFO, &ci) == CURLE_OK && ci &&
            ci->num_of_certs > 0)
            for (struct curl_slist *s = ci->certinfo[0]; s; s = s->next)
                if (!strncmp(s->data, "Subject:", 8)) snprintf(subject, n, "%s", s->data + 8);
    }
    *new_conn = conns > 0;
    curl_slist_free_all(hdrs);
    return status;
}

/* A Key call on a new connection: the served certificate's subject. */
static void served_subject(uint16_t port, char *subject, size_t n)
{
    CURL *c = curl_easy_init();
    bool fresh = false;
    long st = tls_key(c, port, &fresh, subject, n);
    CHECKF(st == 200 && fresh, "Key over a new TLS connection: %ld", st);
    curl_easy_cleanup(c);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    char *dir = pbt_tmpdir("reload-certs");
    snprintf(certs, sizeof certs, "%s", dir);
    snprintf(live_cert, sizeof live_cert, "%s/live.pem", certs);
    snprintf(live_key, sizeof live_key, "%s/live.key", certs);
    snprintf(ca, sizeof ca, "%s/ca.pem", certs);
    snprintf(conf_path, sizeof conf_path, "%s/postbox.conf", certs);
    snprintf(token_path, sizeof token_path, "%s/admin-token", certs);
    if (!make_certs() || !install_cert(1, 1)) {
        CHECK(!"openssl made the test certificates");
        return pbt_finish();
    }

    /* B: a plain peer (harness); A: the daemon under test, TLS, settings from its file. */
    pbt_daemon *b = pbt_daemon_new("reloadB", NULL);
    pbt_daemon *a = pbt_daemon_new("reloadA", NULL);
    if (!pbt_daemon_start(b)) {
        CHECK(!"B starts");
        return pbt_finish();
    }
    char path[600];
    snprintf(path, sizeof path, "%s/key", b->dir);
    pb_keys *kb = NULL;
    CHECK_OK(pb_keys_load(path, &kb));
    write_conf(a, "log_level = warn\n");
    if (!start_with_file_only(a)) {
        pbt_daemon_dump_log(a);
        CHECK(!"A starts with -c FILE");
        return pbt_finish();
    }
    char subject[512];
    served_subject(a->port, subject, sizeof subject);
    CHECKF(strstr(subject, "postbox-test-1") != NULL, "served at start: %s", subject);

    /* ---- live: log_level. At warn no INFO line; after the reload to info, they come. */
    CHECK_INT(log_count(a, " info "), 0);
    write_conf(a, "log_level = info\n");
    CHECK(reload(a));
    CHECK_INT(log_count(a, "configuration reloaded: applied log_level"), 1);
    CHECK(log_count(a, " info ") >= 1);

    /* ---- the TLS certificate: renewed in place; new connections get it, an open one
     * keeps going */
    CURL *old = curl_easy_init();
    bool fresh = false;
    char first[512];
    CHECK_INT(tls_key(old, a->port, &fresh, first, sizeof first), 200);
    CHECK(fresh && strstr(first, "postbox-test-1"));
    CHECK(install_cert(2, 2));
    CHECK(reload(a));
    CHECK(log_count(a, "subject O=postbox-test-2") >= 1); /* the reload logs what it serves */
    served_subject(a->port, subject, sizeof subject);
    CHECKF(strstr(subject, "postbox-test-2") != NULL, "served after the reload: %s", subject);
    char again[512];
    CHECK_INT(tls_key(old, a->port, &fresh, again, sizeof again), 200);
    CHECKF(!fresh, "the connection opened before the reload is still used");
    /* certificate 1 with key 2: refused, certificate 2 still served */
    CHECK(install_cert(1, 2));
    CHECK(reload(a));
    CHECK_INT(log_count(a, "configuration not reloaded: nothing changed"), 1);
    served_subject(a->port, subject, sizeof subject);
    CHECKF(strstr(subject, "postbox-test-2") != NULL, "after a bad pair: %s", subject);
    CHECK(install_cert(2, 2));
    CHECK_INT(tls_key(old, a->port, &fresh, again, sizeof again), 200);
    CHECK(!fresh);
    curl_easy_cleanup(old);

    /* ---- live: deny */
    CHECK_INT(push_from(b, kb, a), 200);
    char lines[2048];
    snprintf(lines, sizeof lines, "log_level = info\ndeny = %s\n", b->server_id);
    write_conf(a, lines);
    CHECK(reload(a));
    CHECK_INT(log_count(a, "configuration reloaded: applied deny"), 1);
    CHECK_INT(push_from(b, kb, a), 403);

    /* ---- live: the admin token, read again from the same file on every reload */
    CHECK_INT(admin_status(a, NULL), 200);
    write_file(token_path, "first-token-0123456789\n");
    snprintf(lines, sizeof lines, "log_level = info\ndeny = %s\nadmin_token_file = %s\n",
             b->server_id, token_path);
    write_conf(a, lines);
    CHECK(reload(a));
    CHECK_INT(admin_status(a, NULL), 401);
    CHECK_INT(admin_status(a, "first-token-0123456789"), 200);
    write_file(token_path, "second-token-0123456789\n");
    CHECK(reload(a));
    CHECK_INT(admin_status(a, "first-token-0123456789"), 401);
    CHECK_INT(admin_status(a, "second-token-0123456789"), 200);

    /* ---- live: a limit of the federation listener */
    CHECK_INT(key_with_body(a, 2000), 400); /* read, and not a KeyRequest */
    snprintf(lines, sizeof lines,
             "log_level = info\ndeny = %s\nadmin_token_file = %s\nmax_body = 1024\n", b->server_id,
             token_path);
    write_conf(a, lines);
    CHECK(reload(a));
    CHECK_INT(key_with_body(a, 2000), 413);

    /* ---- restart: listen and sync are reported and keep their running values */
    uint16_t other = pbt_free_port();
    char base[1024];
    snprintf(base, sizeof base,
             "log_level = info\ndeny = %s\nadmin_token_file = %s\nmax_body = 1024\n", b->server_id,
             token_path);
    snprintf(lines, sizeof lines, "%slisten = 127.0.0.1:%u\nsync = normal\n", base, other);
    write_conf(a, lines);
    CHECK(reload(a));
    CHECK_INT(log_count(a, "listen changed: needs a restart; keeping the old value"), 1);
    CHECK_INT(log_count(a, "sync changed: needs a restart; keeping the old value"), 1);
    CHECK_INT(log_count(a, "server_id changed: needs a restart"), 1); /* derived from listen */
    served_subject(a->port, subject, sizeof subject);                 /* still on the old port */
    pbt_http h;
    const char *ct[] = {"Content-Type: application/hrpc", NULL};
    pbt_http_do("https", other, "POST", PATH_KEY, ct, "", 0, ca, &h);
    CHECKF(h.status == 0, "nothing listens on the new port: %ld", h.status);
    pbt_http_clear(&h);

    /* ---- broken: an error in the file changes nothing (deny and max_body stay) */
    snprintf(lines, sizeof lines,
             "log_level = debug\nadmin_token_file = %s\nmax_body = 65536\nworkers = lots\n",
             token_path);
    write_conf(a, lines);
    CHECK(reload(a));
    CHECK_INT(log_count(a, "reload refused, nothing changed"), 1);
    CHECK_INT(log_count(a, "workers: want a whole number"), 1);
    CHECK_INT(push_from(b, kb, a), 403);
    CHECK_INT(key_with_body(a, 2000), 413);
    CHECK_INT(admin_status(a, "second-token-0123456789"), 200);
    /* ... and so does a token file that cannot be read */
    snprintf(lines, sizeof lines, "log_level = debug\nadmin_token_file = %s.missing\n", token_path);
    write_conf(a, lines);
    CHECK(reload(a));
    CHECK_INT(log_count(a, "configuration not reloaded: nothing changed"), 2);
    CHECK_INT(push_from(b, kb, a), 403);
    CHECK_INT(key_with_body(a, 2000), 413);
    CHECK_INT(admin_status(a, "second-token-0123456789"), 200);
    CHECK_INT(log_count(a, " debug "), 0);

    /* ---- back to a clean file: everything it says applies again */
    write_conf(a, "log_level = info\n");
    CHECK(reload(a));
    CHECK_INT(push_from(b, kb, a), 200);
    CHECK_INT(admin_status(a, NULL), 200);
    CHECK_INT(key_with_body(a, 2000), 400);

    CHECK_INT(pbt_daemon_stop(a), 0);
    if (pbt_failed) {
        pbt_daemon_dump_log(a);
        pbt_daemon_dump_log(b);
    }
    pb_keys_free(kb);
    pbt_daemon_free(a);
    pbt_daemon_free(b);
    pbt_rmrf(certs);
    free(dir);
    curl_global_cleanup();
    return pbt_finish();
}
