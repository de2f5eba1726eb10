/*
 * config_test - the settings table's bookkeeping for start-up: where each setting came
 * from (--check-config --changed), the packaged "server_id = required" marker refused with
 * the file and line, rename_from normalised; and storeprobe reading an SQLite store
 * without creating anything beside it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "daemon/config.h"
#include "store/store.h"
#include "store/storeprobe.h"

static char *dir;

static char *write_conf(const char *text)
{
    char *path = NULL;
    if (asprintf(&path, "%s/postbox.conf", dir) < 0) abort();
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_origins_and_changed(void)
{
    char *path = write_conf("# comment\nserver_id = Chat.Example.org:443\nauth_window = 60\n"
                            "max_body = 2048\n");
    pb_config *c = pb_config_new();
    char *why = NULL;
    CHECK_OK(pb_config_load_file(c, path, &why));
    char *argv[] = {"--log-level", "debug", "--rename-from", "OLD.example:443", NULL};
    int used = 0;
    CHECK_OK(pb_config_parse_args(c, 4, argv, &used, &why));
    CHECK_INT(used, 4);
    CHECK_OK(pb_config_finish(c, &why));
    CHECK_STR(c->rename_from, "old.example:443");
    char *changed = pb_config_dump_changed(c);
    char want[700];
    snprintf(want, sizeof want, "server_id = chat.example.org:443\t# %s:2\n", path);
    CHECKF(strstr(changed, want) != NULL, "%s", changed);
    snprintf(want, sizeof want, "max_body = 2048\t# %s:4\n", path);
    CHECKF(strstr(changed, want) != NULL, "%s", changed);
    CHECKF(strstr(changed, "log_level = debug\t# --log-level\n") != NULL, "%s", changed);
    /* set to its default: not listed; never set: not listed */
    CHECKF(strstr(changed, "auth_window") == NULL, "%s", changed);
    CHECKF(strstr(changed, "listen") == NULL, "%s", changed);
    /* a copy keeps where they came from */
    pb_config *copy = pb_config_copy(c);
    char *again = pb_config_dump_changed(copy);
    CHECK_STR(again, changed);
    free(again);
    pb_config_free(copy);
    free(changed);
    pb_config_free(c);
    free(path);
}

static void test_required(void)
{
    char *path = write_conf("listen = 127.0.0.1:7000\nserver_id = required\n");
    pb_config *c = pb_config_new();
    char *why = NULL;
    CHECK_OK(pb_config_load_file(c, path, &why));
    CHECK_ERR(pb_config_finish(c, &why), PB_ERR_CONFIG);
    char want[600];
    snprintf(want, sizeof want, "%s:2 says \"server_id = required\"", path);
    CHECKF(why && strstr(why, want), "%s", why ? why : "(null)");
    free(why);
    /* a flag wins over the file, as always */
    char *argv[] = {"--server-id", "chat.example.org:443", NULL};
    int used = 0;
    CHECK_OK(pb_config_parse_args(c, 2, argv, &used, &why));
    CHECK_OK(pb_config_finish(c, &why));
    CHECK_STR(pb_config_get_server_id(c), "chat.example.org:443");
    pb_config_free(c);
    /* the example (the packaged file) carries the marker, uncommented */
    char *ex = pb_config_example();
    CHECK(strstr(ex, "\nserver_id = required\n") != NULL);
    free(ex);
    /* without the marker and without server_id: the listen address, as before */
    c = pb_config_new();
    CHECK_OK(pb_config_finish(c, &why));
    CHECK_STR(pb_config_get_server_id(c), "127.0.0.1:2289");
    pb_config_free(c);
    free(path);
}

static bool exists(const char *fmt, const char *a)
{
    char p[600];
    snprintf(p, sizeof p, fmt, a);
    struct stat st;
    return stat(p, &st) == 0;
}

static void test_probe(void)
{
    char spec[700], *why = NULL;
    snprintf(spec, sizeof spec, "sqlite:%s/p.db", dir);
    pb_storeprobe p;
    CHECK_OK(pb_storeprobe_run(spec, &p, &why));
    CHECK(!p.exists && p.latest > 0);
    CHECK(!exists("%s/p.db", dir));
    pb_storeprobe_clear(&p);

    pb_store *s = NULL;
    CHECK_OK(pb_store_open(spec, NULL, &s));
    CHECK_OK(pb_store_meta_set(s, "server_id", "a.example:443"));
    CHECK_OK(pb_store_meta_set(s, "public_key", "00ff"));
    /* while it is open (its -wal and -shm exist): read through them */
    CHECK_OK(pb_storeprobe_run(spec, &p, &why));
    CHECK(p.exists && p.version == p.latest);
    CHECK_STR(p.server_id, "a.example:443");
    CHECK_STR(p.public_key, "00ff");
    CHECK(p.configured == NULL);
    pb_storeprobe_clear(&p);
    pb_store_close(s);
    /* closed: the file alone, and nothing created beside it */
    CHECK(!exists("%s/p.db-wal", dir) && !exists("%s/p.db-shm", dir));
    CHECK_OK(pb_storeprobe_run(spec, &p, &why));
    CHECK_STR(p.server_id, "a.example:443");
    pb_storeprobe_clear(&p);
    CHECK(!exists("%s/p.db-wal", dir) && !exists("%s/p.db-shm", dir));

    /* not a database */
    char path[600];
    snprintf(path, sizeof path, "%s/junk.db", dir);
    FILE *f = fopen(path, "w");
    fputs("this is not an SQLite database, not at all, no; long enough to have a header...\n", f);
    fclose(f);
    snprintf(spec, sizeof spec, "sqlite:%s", path);
    CHECK_ERR(pb_storeprobe_run(spec, &p, &why), PB_ERR_CORRUPT);
    CHECKF(why && strstr(why, "junk.db"), "%s", why ? why : "(null)");
    free(why);
    pb_storeprobe_clear(&p);
}

/* A file with several bad lines names every one of them at once (a typo fixed, the
 * next start must not stop at the next one); the good lines are still applied. */
static void test_every_problem(void)
{
    char *path = write_conf("max_body = lots\nadmin_listn = 127.0.0.1:1\nthreads = 8\n"
                            "no equals sign\nauth_window = -1\n");
    pb_config *c = pb_config_new();
    char *why = NULL;
    CHECK_ERR(pb_config_load_file(c, path, &why), PB_ERR_CONFIG);
    const char *want[] = {":1: max_body", ":2: unknown setting \"admin_listn\"",
                          ":4: expected name = value", ":5: auth_window"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECKF(why && strstr(why, want[i]), "%s in: %s", want[i], why ? why : "(none)");
    CHECKF(why && !strstr(why, ":3:"), "the good line 3 is no problem: %s", why ? why : "");
    CHECK_INT(c->threads, 8);
    free(why);
    pb_config_free(c);
    free(path);
}

/* The identity settings (issue 18) apply on reload. */
static void test_ident_live(void)
{
    static const char *const names[] = {"recv_budget_key_factor", "recv_budget_address_factor",
                                        "new_peers_per_key", "new_peers_per_address",
                                        "peer_idle_forget"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        CHECKF(pb_config_is_live(names[i]), "%s is live", names[i]);
    CHECK(!pb_config_is_live("recv_budget_events"));
}

/* peer_proxy: none by default; a proxy URL is taken as given, anything else refused;
 * former_id_grace: 30 days by default, at least 1 s. */
static void test_proxy_and_grace(void)
{
    pb_config *c = pb_config_new();
    char *why = NULL;
    CHECK_OK(pb_config_finish(c, &why));
    CHECK(c->peer_proxy == NULL);
    CHECK_INT(c->former_id_grace, 2592000);
    pb_config_free(c);
    const char *good[] = {"http://127.0.0.1:3128", "socks5h://proxy.example:1080",
                          "HTTPS://proxy.example:443"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        c = pb_config_new();
        char *argv[] = {"--peer-proxy", (char *)good[i], "--former-id-grace", "1", NULL};
        int used = 0;
        CHECK_OK(pb_config_parse_args(c, 4, argv, &used, &why));
        CHECKF(pb_config_finish(c, &why) == PB_OK, "%s: %s", good[i], why ? why : "");
        CHECK_STR(c->peer_proxy, good[i]);
        CHECK_INT(c->former_id_grace, 1);
        pb_config_free(c);
    }
    const char *bad[] = {"127.0.0.1:3128", "ftp://proxy.example:21", "http://", "http://a b:1",
                         "http://a\n:1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        c = pb_config_new();
        char *argv[] = {"--peer-proxy", (char *)bad[i], NULL};
        int used = 0;
        CHECK_OK(pb_config_parse_args(c, 2, argv, &used, &why));
        CHECKF(pb_config_finish(c, &why) == PB_ERR_CONFIG && why && strstr(why, "peer_proxy"),
               "%s refused: %s", bad[i], why ? why : "(accepted)");
        free(why);
        why = NULL;
        pb_config_free(c);
    }
    c = pb_config_new();
    char *argv[] = {"--former-id-grace", "0", NULL};
    int used = 0;
    CHECK_ERR(pb_config_parse_args(c, 2, argv, &used, &why), PB_ERR_CONFIG);
    free(why);
    pb_config_free(c);
}

int main(void)
{
    dir = pbt_tmpdir("config");
    test_origins_and_changed();
    test_every_problem();
    test_required();
    test_probe();
    test_ident_live();
    test_proxy_and_grace();
    pbt_rmrf(dir);
    free(dir);
    return pbt_finish();
}
