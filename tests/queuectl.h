/*
 * queuectl.h - what queuectl_test and queuectl_nodes_test share: submitting events, and
 * polling a daemon's admin API for a peer's mode, its queue length, its inbox and the
 * queueDropped notices in it. static inline: each test uses what it needs.
 */
#ifndef PB_TESTS_QUEUECTL_H
#define PB_TESTS_QUEUECTL_H

#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"

static inline void submit(const pbt_daemon *from, const char *to, unsigned user, unsigned n)
{
    json_t *evs = json_array();
    for (unsigned i = 0; i < n; i++)
        json_array_append_new(evs, json_pack("{s:{s:I,s:I}}", "userAddedToGuild", "userId",
                                             (json_int_t)user, "guildId", (json_int_t)(100 + i)));
    long st = 0;
    json_t *j =
        pbt_admin(from, "POST", "/v1/outbox", json_pack("{s:s,s:o}", "to", to, "events", evs), &st);
    CHECKF(st == 202, "POST /v1/outbox: %ld", st);
    json_decref(j);
}

struct peer_mode {
    const pbt_daemon *d;
    const char *peer, *mode;
};

/* GET /v1/peers shows peer in mode */
static inline bool in_mode(void *ctx)
{
    struct peer_mode *w = ctx;
    long st = 0;
    json_t *j = pbt_admin(w->d, "GET", "/v1/peers", NULL, &st);
    bool ok = false;
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(j, "peers"), i, p)
    {
        const char *id = json_string_value(json_object_get(p, "server_id"));
        const char *mode = json_string_value(json_object_get(p, "mode"));
        if (id && mode && !strcmp(id, w->peer) && !strcmp(mode, w->mode)) ok = true;
    }
    json_decref(j);
    return ok;
}

struct queue_wait {
    const pbt_daemon *d;
    const char *peer;
    json_int_t want;
};

/* GET /v1/peers/PEER/queue says `want` events are queued */
static inline bool queued_is(void *ctx)
{
    struct queue_wait *w = ctx;
    char path[256];
    long st = 0;
    snprintf(path, sizeof path, "/v1/peers/%s/queue", w->peer);
    json_t *j = pbt_admin(w->d, "GET", path, NULL, &st);
    bool ok = st == 200 && json_integer_value(json_object_get(j, "queued")) == w->want;
    json_decref(j);
    return ok;
}

struct inbox_wait {
    const pbt_daemon *d;
    size_t want;
};

static inline json_t *inbox(const pbt_daemon *d)
{
    long st = 0;
    json_t *j = pbt_admin(d, "GET", "/v1/inbox?limit=1000", NULL, &st);
    return j;
}

static inline bool inbox_has(void *ctx)
{
    struct inbox_wait *w = ctx;
    json_t *j = inbox(w->d);
    size_t n = json_array_size(json_object_get(j, "events"));
    json_decref(j);
    return n >= w->want;
}

/* The queueDropped notices in d's inbox about peer with reason: how many, the last one
 * into *count_out */
static inline int notices(const pbt_daemon *d, const char *peer, const char *reason,
                          char *count_out)
{
    json_t *j = inbox(d);
    int n = 0;
    size_t i;
    json_t *it;
    json_array_foreach(json_object_get(j, "events"), i, it)
    {
        json_t *q = json_object_get(json_object_get(it, "notice"), "queueDropped");
        const char *p = json_string_value(json_object_get(q, "peer"));
        const char *r = json_string_value(json_object_get(q, "reason"));
        if (q && p && r && !strcmp(p, peer) && !strcmp(r, reason)) {
            n++;
            CHECK(json_is_null(json_object_get(it, "event")));
            CHECK(!strcmp(json_string_value(json_object_get(it, "from")), peer));
            const char *c = json_string_value(json_object_get(q, "count"));
            if (count_out) snprintf(count_out, 24, "%s", c ? c : "");
        }
    }
    json_decref(j);
    return n;
}

#endif
