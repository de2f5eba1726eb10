/*
 * ctlconfig_test - how postboxctl finds its daemon and what it says when it cannot: one
 * postboxd with an admin token, and postboxctl run with a clean environment
 * (POSTBOX_CONFIG names the file that stands for /etc/postbox/postbox.conf, so that the
 * machine's own file never counts):
 *
 *   - the configuration file (admin_listen, admin_token_file) read from the default path
 *     when readable, or from -c FILE; POSTBOX_ADMIN and POSTBOX_ADMIN_TOKEN_FILE override
 *     the file, --admin and --token-file override everything;
 *   - the errors: no daemon at the default address (named as the default), a refused
 *     connection (named with where the address came from), a Unix socket that is not there,
 *     a wrong token and a missing one (401), an unreadable token file, a configuration
 *     file with an error (exit 2, with its line);
 *   - --version, `wait` (returns once the daemon answers; gives up after --timeout).
 */
#include <stdarg.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static char *dir;

/* Runs postboxctl through `env -i` with the given environment assignments and arguments
 * (a shell fragment each); stdout and stderr into *out (caller frees); the exit status. */
static int ctl(char **out, const char *envs, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int ctl(char **out, const char *envs, const char *fmt, ...)
{
    char args[2048], cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "env -i PATH=/usr/bin:/bin POSTBOX_CONFIG=%s/none %s %s %s 2>&1", dir,
             envs, PB_POSTBOXCTL, args);
    FILE *p = popen(cmd, "r");
    size_t cap = 1 << 16, len = 0, n;
    char *buf = calloc(1, cap);
    while (p && (n = fread(buf + len, 1, cap - len - 1, p)) > 0)
        len += n;
    int st = p ? pclose(p) : -1;
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void write_file(const char *path, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void write_file(const char *path, const char *fmt, ...)
{
    FILE *f = fopen(path, "w");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fclose(f);
}

#define EXPECT(rc_want, needle, envs, ...)                                                         \
    do {                                                                                           \
        char *o__ = NULL;                                                                          \
        int r__ = ctl(&o__, envs, __VA_ARGS__);                                                    \
        CHECKF(r__ == (rc_want) && strstr(o__, needle),                                            \
               "%s | %s: exit %d, want %d and \"%s\":\n%s", envs, #__VA_ARGS__, r__, rc_want,      \
               needle, o__);                                                                       \
        free(o__);                                                                                 \
    } while (0)

int main(void)
{
    dir = pbt_tmpdir("ctlconfig");
    pbt_daemon *d = pbt_daemon_new("ctlconfig", NULL);
    pbt_daemon_set_token(d, "the-right-token-0123456789");
    if (!pbt_daemon_start(d)) {
        CHECKF(false, "postboxd starts");
        pbt_daemon_free(d);
        return pbt_finish();
    }
    char good_tok[600], bad_tok[600], conf[600], wrong_conf[600], bad_conf[600], env[2048];
    char nobody[64];
    snprintf(nobody, sizeof nobody, "127.0.0.1:%u", pbt_free_port());
    snprintf(good_tok, sizeof good_tok, "%s/good-token", dir);
    snprintf(bad_tok, sizeof bad_tok, "%s/bad-token", dir);
    write_file(good_tok, "the-right-token-0123456789\n");
    write_file(bad_tok, "a-wrong-token-0123456789\n");
    snprintf(conf, sizeof conf, "%s/postbox.conf", dir);
    write_file(conf, "# as postboxd reads it\nadmin_listen = %s\nadmin_token_file = %s\n", d->admin,
               good_tok);
    snprintf(wrong_conf, sizeof wrong_conf, "%s/wrong.conf", dir);
    write_file(wrong_conf, "admin_listen = %s\nadmin_token_file = %s\n", nobody, bad_tok);
    snprintf(bad_conf, sizeof bad_conf, "%s/bad.conf", dir);
    write_file(bad_conf, "admin_listen = %s\nno_such_setting = 1\n", d->admin);

    /* the default file (POSTBOX_CONFIG stands for /etc/postbox/postbox.conf) */
    snprintf(env, sizeof env, "POSTBOX_CONFIG=%s", conf);
    EXPECT(0, "ok", env, "health");
    /* -c FILE */
    EXPECT(0, "ok", "", "-c %s health", conf);
    /* the environment overrides the file */
    snprintf(env, sizeof env, "POSTBOX_ADMIN=%s POSTBOX_ADMIN_TOKEN_FILE=%s", d->admin, good_tok);
    EXPECT(0, "ok", env, "-c %s health", wrong_conf);
    /* the flags override the environment */
    snprintf(env, sizeof env, "POSTBOX_ADMIN=%s POSTBOX_ADMIN_TOKEN_FILE=%s", nobody, bad_tok);
    EXPECT(0, "ok", env, "--admin %s --token-file %s health", d->admin, good_tok);
    EXPECT(0, "ok", env, "-c %s --admin %s --token-file %s health", wrong_conf, d->admin, good_tok);

    /* errors */
    EXPECT(1, "connection refused (is postboxd running? the address is from POSTBOX_ADMIN)", env,
           "-c %s health", conf);
    EXPECT(1, "connection refused (is postboxd running? the address is admin_listen in", "",
           "-c %s --token-file %s health", wrong_conf, good_tok);
    EXPECT(1, "the address is from --admin", "", "--admin %s health", nobody);
    EXPECT(1, "the address is the default admin_listen", "", "health");
    EXPECT(1, "cannot reach postboxd: no socket at", "", "--admin unix:%s/no.sock health", dir);
    snprintf(env, sizeof env, "POSTBOX_ADMIN_TOKEN_FILE=%s", bad_tok);
    EXPECT(1, "refused the admin token read from", env, "-c %s health", conf);
    EXPECT(1, "(POSTBOX_ADMIN_TOKEN_FILE): it is not the one in postboxd's admin_token_file", env,
           "-c %s health", conf);
    EXPECT(1, "wants the admin token", "", "--admin %s health", d->admin);
    EXPECT(1, "cannot read the admin token file", "", "--admin %s --token-file %s/missing health",
           d->admin, dir);
    EXPECT(2, "no_such_setting", "", "-c %s health", bad_conf);
    EXPECT(2, "bad.conf:2:", "", "-c %s health", bad_conf);
    /* offline commands do not need the token */
    EXPECT(0, "postboxctl " PB_VERSION, "", "--token-file %s/missing version", dir);

    /* --version, wait */
    EXPECT(0, "postboxctl " PB_VERSION "\n", "", "--version");
    EXPECT(0, "ok", "", "-c %s wait --timeout 5", conf);
    int64_t t0 = pbt_now_ms();
    EXPECT(1, "connection refused", "", "--admin %s wait --timeout 1", nobody);
    int64_t took = pbt_now_ms() - t0;
    CHECKF(took >= 900 && took < 10000, "wait --timeout 1 took %lld ms", (long long)took);

    if (pbt_failed) pbt_daemon_dump_log(d);
    pbt_daemon_free(d);
    pbt_rmrf(dir);
    free(dir);
    return pbt_finish();
}
