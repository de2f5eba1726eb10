/*
 * postboxd_test - the programs as an operator uses them: --check-config prints the
 * effective settings (file, then flags winning), bad settings are refused with a clear
 * message, postboxctl keygen/key/health/version, the key file's mode, a key file that
 * others can read is refused at start, and SIGTERM stops the daemon cleanly (exit 0,
 * store closed and intact).
 */
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "crypto/keys.h"
#include "store/store.h"

/* Runs a shell command, captures stdout+stderr into *out (caller frees); returns the exit
 * status. */
static int run(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int run(char **out, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    FILE *p = popen(cmd, "r");
    size_t cap = 1 << 16, len = 0;
    char *buf = calloc(1, cap);
    size_t n;
    while (p && (n = fread(buf + len, 1, cap - len - 1, p)) > 0)
        len += n;
    int st = p ? pclose(p) : -1;
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_check_config(void)
{
    char *dir = pbt_tmpdir("cfg");
    char conf[600];
    snprintf(conf, sizeof conf, "%s/postbox.conf", dir);
    FILE *f = fopen(conf, "w");
    fprintf(f,
            "# a comment\nserver_id = Chat.Example.ORG:2289\nlisten = 127.0.0.1:3000\n"
            "data_dir = %s\nauth_window = 30   # trailing comment\n",
            dir);
    fclose(f);
    char *out = NULL;
    int rc = run(&out, "%s -c %s --auth-window 45 --check-config 2>&1", PB_POSTBOXD, conf);
    CHECK_INT(rc, 0);
    CHECKF(strstr(out, "server_id = chat.example.org:2289\n") != NULL, "normalised ID:\n%s", out);
    CHECKF(strstr(out, "auth_window = 45\n") != NULL, "flag wins over the file:\n%s", out);
    CHECKF(strstr(out, "listen = 127.0.0.1:3000\n") != NULL, "file value kept");
    CHECKF(strstr(out, "sync = full\n") != NULL, "default sync is full");
    CHECKF(strstr(out, "store = sqlite:") != NULL, "store derived from data_dir");
    free(out);

    rc = run(&out, "%s --server-id no-port.example --check-config 2>&1", PB_POSTBOXD);
    CHECK_INT(rc, 2);
    CHECKF(strstr(out, "not a valid server ID") != NULL, "%s", out);
    free(out);
    rc = run(&out, "%s --auth-window lots --check-config 2>&1", PB_POSTBOXD);
    CHECK_INT(rc, 2);
    CHECKF(strstr(out, "auth_window") != NULL, "%s", out);
    free(out);
    rc = run(&out, "%s --no-such-setting 1 2>&1", PB_POSTBOXD);
    CHECK(rc != 0);
    free(out);
    f = fopen(conf, "w");
    fprintf(f, "bogus = 1\n");
    fclose(f);
    rc = run(&out, "%s -c %s --check-config 2>&1", PB_POSTBOXD, conf);
    CHECK_INT(rc, 2);
    CHECKF(strstr(out, "postbox.conf:1: unknown setting") != NULL, "%s", out);
    free(out);
    rc = run(&out, "%s --listen 127.0.0.1:5 --admin-listen 127.0.0.1:5 --check-config 2>&1",
             PB_POSTBOXD);
    CHECK_INT(rc, 2);
    free(out);
    pbt_rmrf(dir);
    free(dir);
}

static void test_ctl_and_lifecycle(void)
{
    pbt_daemon *d = pbt_daemon_new("ctl", NULL);
    char *out = NULL;
    /* keygen before the first start: creates the key file 0600; the daemon then uses it */
    int rc = run(&out, "%s --json keygen --key-file %s/key", PB_POSTBOXCTL, d->dir);
    CHECK_INT(rc, 0);
    CHECKF(strstr(out, "\"created\": true") != NULL, "%s", out);
    free(out);
    char keypath[600];
    snprintf(keypath, sizeof keypath, "%s/key", d->dir);
    struct stat st;
    CHECK(stat(keypath, &st) == 0 && (st.st_mode & 0777) == 0600);
    pb_keys *k = NULL;
    CHECK_OK(pb_keys_load(keypath, &k));
    char hex[65];
    pb_keys_hex(pb_keys_public(k), hex);
    pb_keys_free(k);

    CHECK(pbt_daemon_start(d));
    rc = run(&out, "%s --admin %s key", PB_POSTBOXCTL, d->admin);
    CHECK_INT(rc, 0);
    CHECKF(strstr(out, hex) != NULL && strstr(out, d->server_id) != NULL, "%s", out);
    free(out);
    rc = run(&out, "%s --admin %s --json key", PB_POSTBOXCTL, d->admin);
    CHECK_INT(rc, 0);
    CHECKF(strstr(out, "\"public_key\"") != NULL, "%s", out);
    free(out);
    rc = run(&out, "%s --admin %s health", PB_POSTBOXCTL, d->admin);
    CHECK_INT(rc, 0);
    free(out);
    rc = run(&out, "%s version", PB_POSTBOXCTL);
    CHECK_INT(rc, 0);
    CHECK(strstr(out, PB_VERSION) != NULL);
    free(out);

    /* SIGTERM: clean exit, store intact */
    CHECK_INT(pbt_daemon_stop(d), 0);
    rc = run(&out, "%s --admin %s key 2>&1", PB_POSTBOXCTL, d->admin);
    CHECK(rc != 0);
    CHECKF(strstr(out, "cannot reach") != NULL, "%s", out);
    free(out);
    char spec[600];
    snprintf(spec, sizeof spec, "sqlite:%s/postbox.db", d->dir);
    pb_store *s = NULL;
    CHECK_OK(pb_store_open(spec, NULL, &s));
    if (s) {
        char *v = NULL;
        CHECK_OK(pb_store_meta_get(s, "server_id", &v));
        CHECK_STR(v, d->server_id);
        free(v);
        CHECK_OK(pb_store_integrity_check(s));
    }
    pb_store_close(s);

    /* a key file others can read is refused at start */
    chmod(keypath, 0644);
    d->port = pbt_free_port();
    CHECK(!pbt_daemon_start(d));
    chmod(keypath, 0600);
    pbt_daemon_free(d);
}

int main(void)
{
    test_check_config();
    test_ctl_and_lifecycle();
    return pbt_finish();
}
