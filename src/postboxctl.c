/*
 * postboxctl - the postbox admin CLI: a thin shell over libpostbox's admin client.
 * Commands talk to a running postboxd's admin listener (found from -c FILE, --admin ADDR,
 * or the default 127.0.0.1:2290), except `keygen` and `version`, which work offline.
 * Output is a table for people, or the API's JSON with --json; failures exit non-zero
 * with the error on stderr.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "postbox.h"

struct ctl {
    pb_config *cfg;
    const char *admin;
    char *token;
    bool json;
};

static void usage(FILE *f)
{
    fprintf(f, "usage: postboxctl [-c FILE] [--admin ADDR] [--token-file F] [--json] COMMAND\n"
               "commands:\n"
               "  keygen [--key-file PATH]   create this server's key file if missing, print the "
               "public key\n"
               "  key                        print this server's ID and public key\n"
               "  health                     check the daemon's store and listeners\n"
               "  version                    print the version\n");
}

static char *read_token(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char line[512] = "";
    char *ok = fgets(line, sizeof line, f);
    fclose(f);
    if (!ok) return NULL;
    line[strcspn(line, "\r\n")] = '\0';
    return strdup(line);
}

/* Runs one admin call; prints errors; returns the parsed answer (caller decrefs) or NULL. */
static json_t *call(struct ctl *c, const char *method, const char *path, const char *body)
{
    pb_adminc *a = NULL;
    char *answer = NULL;
    long status = 0;
    json_t *j = NULL;
    if (pb_adminc_new(c->admin, c->token, &a) != PB_OK) {
        fprintf(stderr, "postboxctl: cannot create client\n");
        return NULL;
    }
    pb_err err = pb_adminc_call(a, method, path, body, 0, &status, &answer);
    if (err != PB_OK) {
        fprintf(stderr, "postboxctl: cannot reach postboxd at %s: %s\n", c->admin, answer);
        goto out;
    }
    json_error_t jerr;
    j = answer[0] ? json_loads(answer, 0, &jerr) : json_object();
    if (status < 200 || status > 299) {
        const char *msg = j ? json_string_value(json_object_get(j, "error")) : NULL;
        fprintf(stderr, "postboxctl: %s %s: %ld %s\n", method, path, status, msg ? msg : answer);
        json_decref(j);
        j = NULL;
        goto out;
    }
    if (!j) fprintf(stderr, "postboxctl: answer is not JSON: %s\n", answer);
out:
    free(answer);
    pb_adminc_free(a);
    return j;
}

static int print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    puts(s);
    free(s);
    return 0;
}

static int cmd_keygen(struct ctl *c, int argc, char **argv)
{
    char *path = pb_config_get(c->cfg, "key_file");
    if (argc >= 2 && !strcmp(argv[0], "--key-file")) {
        free(path);
        path = strdup(argv[1]);
    }
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

static int cmd_key(struct ctl *c)
{
    json_t *j = call(c, "GET", "/v1/key", NULL);
    if (!j) return 1;
    if (c->json) {
        print_json(j);
    } else {
        printf("server_id:  %s\npublic_key: %s\n",
               json_string_value(json_object_get(j, "server_id")),
               json_string_value(json_object_get(j, "public_key")));
    }
    json_decref(j);
    return 0;
}

static int cmd_health(struct ctl *c)
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

int main(int argc, char **argv)
{
    struct ctl c = {.cfg = pb_config_new()};
    char *why = NULL, *admin = NULL, *token_file = NULL;
    int rc = 2, i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) {
            if (pb_config_load_file(c.cfg, argv[++i], &why) != PB_OK) {
                fprintf(stderr, "postboxctl: %s\n", why);
                goto out;
            }
        } else if (!strcmp(argv[i], "--admin") && i + 1 < argc) {
            free(admin);
            admin = strdup(argv[++i]);
        } else if (!strcmp(argv[i], "--token-file") && i + 1 < argc) {
            free(token_file);
            token_file = strdup(argv[++i]);
        } else if (!strcmp(argv[i], "--json")) {
            c.json = true;
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
    if (!admin) admin = pb_config_get(c.cfg, "admin_listen");
    if (!token_file) token_file = pb_config_get(c.cfg, "admin_token_file");
    c.admin = admin;
    if (token_file && !(c.token = read_token(token_file))) {
        fprintf(stderr, "postboxctl: cannot read token file %s\n", token_file);
        goto out;
    }
    if (i >= argc) {
        usage(stderr);
        goto out;
    }
    const char *cmd = argv[i++];
    if (!strcmp(cmd, "version")) {
        printf("postboxctl %s\n", PB_VERSION);
        rc = 0;
    } else if (!strcmp(cmd, "keygen")) {
        rc = cmd_keygen(&c, argc - i, argv + i);
    } else if (!strcmp(cmd, "key")) {
        rc = cmd_key(&c);
    } else if (!strcmp(cmd, "health")) {
        rc = cmd_health(&c);
    } else {
        fprintf(stderr, "postboxctl: unknown command %s\n", cmd);
        usage(stderr);
    }
out:
    free(why);
    free(admin);
    free(token_file);
    free(c.token);
    pb_config_free(c.cfg);
    return rc;
}
