/*
 * app - a homeserver's smallest use of an installed libpostbox, built by install_test.sh
 * against the installed header and library found through pkg-config (shared and static).
 * Opens a postbox in DIR with the federation listener on a port the system picks and the
 * admin listener on a Unix socket in DIR, asks the in-process admin API for the server's
 * key, prints "ok <version> <public key>" and closes. Exit 0 only when every step worked.
 *
 * Usage: app DIR
 */
#include <postbox.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what, pb_err err, const char *why)
{
    fprintf(stderr, "app: %s: %s%s%s\n", what, pb_strerror(err), why ? ": " : "", why ? why : "");
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: app DIR\n");
        return 2;
    }
    char admin[600];
    snprintf(admin, sizeof admin, "unix:%s/admin.sock", argv[1]);
    const char *kv[][2] = {{"data_dir", argv[1]},           {"listen", "127.0.0.1:0"},
                           {"server_id", "localhost:2289"}, {"admin_listen", admin},
                           {"peer_scheme", "http"},         {"log_level", "warn"}};
    pb_config *cfg = pb_config_new();
    char *why = NULL;
    pb_err err = PB_OK;
    for (size_t i = 0; i < sizeof kv / sizeof kv[0] && err == PB_OK; i++)
        err = pb_config_set(cfg, kv[i][0], kv[i][1], &why);
    if (err == PB_OK) err = pb_config_finish(cfg, &why);
    if (err != PB_OK) return fail("configuration", err, why);
    pb_daemon *d = NULL;
    if ((err = pb_daemon_open(cfg, &d)) != PB_OK) return fail("pb_daemon_open", err, NULL);
    int status = 0;
    char *answer = NULL;
    err = pb_daemon_call(d, "GET", "/v1/key", NULL, NULL, &status, &answer);
    int rc = 1;
    const char *key = answer ? strstr(answer, "\"public_key\"") : NULL;
    if (err == PB_OK && status == 200 && key && pb_daemon_port(d) != 0) {
        printf("ok %s %.80s\n", PB_VERSION, key);
        rc = 0;
    } else {
        fprintf(stderr, "app: GET /v1/key: %s, status %d, %s\n", pb_strerror(err), status,
                answer ? answer : "(no answer)");
    }
    free(answer);
    pb_daemon_close(d);
    pb_config_free(cfg);
    free(why);
    return rc;
}
