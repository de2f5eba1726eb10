/*
 * inprocess_test - a homeserver linking libpostbox: two pb_daemon instances in this very
 * process (each with its own listeners and store), driven only through pb_daemon_call,
 * the in-process form of the admin API. An event submitted at A reaches B's inbox, and the
 * answers have the same statuses and JSON as over HTTP; each daemon keeps its own metrics.
 */
#include <jansson.h>
#include <stdlib.h>

#include "harness.h"

static pb_daemon *open_daemon(const char *dir, uint16_t port, uint16_t admin_port)
{
    pb_config *cfg = pb_config_new();
    char listen[64], admin[64], *why = NULL;
    snprintf(listen, sizeof listen, "127.0.0.1:%u", port);
    snprintf(admin, sizeof admin, "127.0.0.1:%u", admin_port);
    const char *kv[][2] = {{"data_dir", dir},
                           {"listen", listen},
                           {"admin_listen", admin},
                           {"peer_scheme", "http"},
                           {"allow_private_peers", "yes"},
                           {"log_level", "warn"}};
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        CHECK_OK(pb_config_set(cfg, kv[i][0], kv[i][1], &why));
    CHECK_OK(pb_config_finish(cfg, &why));
    pb_daemon *d = NULL;
    CHECK_OK(pb_daemon_open(cfg, &d));
    pb_config_free(cfg);
    free(why);
    return d;
}

static json_t *call(pb_daemon *d, const char *method, const char *path, const char *const *args,
                    const char *body, int *status)
{
    char *answer = NULL;
    CHECK_OK(pb_daemon_call(d, method, path, args, body, status, &answer));
    json_t *j = answer ? json_loads(answer, 0, NULL) : NULL;
    free(answer);
    return j;
}

struct inbox_ctx {
    pb_daemon *b;
    size_t n;
};

static bool inbox_has(void *vctx)
{
    struct inbox_ctx *c = vctx;
    int st;
    const char *args[] = {"after", "0", "limit", "10", NULL};
    json_t *j = call(c->b, "GET", "/v1/inbox", args, NULL, &st);
    c->n = json_array_size(json_object_get(j, "events"));
    json_decref(j);
    return c->n >= 1;
}

int main(void)
{
    char *da = pbt_tmpdir("inprocA"), *db = pbt_tmpdir("inprocB");
    uint16_t pa = pbt_free_port(), pb = pbt_free_port();
    pb_daemon *a = open_daemon(da, pa, pbt_free_port());
    pb_daemon *b = open_daemon(db, pb, pbt_free_port());
    if (!a || !b) return pbt_finish();
    CHECK_INT(pb_daemon_port(a), pa);

    char body[256];
    snprintf(body, sizeof body,
             "{\"to\":\"127.0.0.1:%u\",\"event\":{\"userAddedToGuild\":{\"userId\":\"5\","
             "\"guildId\":\"77\"}}}",
             pb);
    int st;
    json_t *j = call(a, "POST", "/v1/outbox", NULL, body, &st);
    CHECK_INT(st, 202);
    CHECK_INT(json_integer_value(json_object_get(j, "accepted")), 1);
    json_decref(j);

    struct inbox_ctx ic = {b, 0};
    CHECKF(pbt_wait_for(inbox_has, &ic, 20000), "the event reached B's inbox");
    const char *args[] = {"after", "0", NULL};
    j = call(b, "GET", "/v1/inbox", args, NULL, &st);
    CHECK_INT(st, 200);
    json_t *ev = json_object_get(json_array_get(json_object_get(j, "events"), 0), "event");
    CHECK_STR(
        json_string_value(json_object_get(json_object_get(ev, "userAddedToGuild"), "guildId")),
        "77");
    json_decref(j);
    j = call(b, "GET", "/v1/users/5/guilds", NULL, NULL, &st);
    CHECK_INT(json_array_size(json_object_get(j, "guilds")), 1);
    json_decref(j);

    /* refusals have the same shape as over HTTP */
    j = call(a, "POST", "/v1/outbox", NULL, "{bad", &st);
    CHECK_INT(st, 400);
    CHECK(json_is_string(json_object_get(j, "error")));
    json_decref(j);
    j = call(a, "GET", "/v1/nothing", NULL, NULL, &st);
    CHECK_INT(st, 404);
    json_decref(j);

    /* each daemon has its own metrics: A counted its submission, B none */
    char *ma = NULL, *mb = NULL;
    CHECK_OK(pb_daemon_call(a, "GET", "/metrics", NULL, NULL, &st, &ma));
    CHECK_INT(st, 200);
    CHECK_OK(pb_daemon_call(b, "GET", "/metrics", NULL, NULL, &st, &mb));
    CHECKF(ma && strstr(ma, "\npostbox_events_submitted_total 1\n"), "A's metrics");
    CHECKF(mb && strstr(mb, "\npostbox_events_submitted_total 0\n"), "B's metrics");
    CHECKF(mb && strstr(mb, "\npostbox_inbox_last_seq 1\n"), "B's inbox");
    free(ma);
    free(mb);

    pb_daemon_close(a);
    pb_daemon_close(b);
    pbt_rmrf(da);
    pbt_rmrf(db);
    free(da);
    free(db);
    return pbt_finish();
}
