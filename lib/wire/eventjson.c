/*
 * eventjson - protobuf JSON mapping of protocol.sync.v1.Event for the admin API, and the
 * notices of PROTOCOL.md section 5.
 *
 * Design: two small tables drive everything: the four oneof cases (JSON name, proto name,
 * the fields of that case in .proto order) and the four fields (JSON name, proto name).
 * Parsing walks the jansson object, matches each key against the tables and builds the
 * event in a local that is handed to the caller only on success; refusals build a message
 * with the path of the offending value. uint64 digits are converted by hand with an
 * overflow check (strtoull accepts signs, spaces and hex, which protobuf JSON does not).
 *
 * Untrusted input: admin API JSON values and URL strings. Key names echoed in messages are
 * cut to 64 bytes of printable ASCII, so a message is always safe to put in a JSON answer
 * or a log line. Invite IDs are length-checked before they are copied, and refused when
 * they hold a NUL or invalid UTF-8.
 */
#include "wire/eventjson.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/mem.h"

/* ---- tables ------------------------------------------------------------------------------ */

enum field { F_USER, F_GUILD, F_INVITER, F_INVITE, F__COUNT };

static const struct field_desc {
    const char *json;
    const char *proto;
} FIELDS[F__COUNT] = {
    [F_USER] = {"userId", "user_id"},
    [F_GUILD] = {"guildId", "guild_id"},
    [F_INVITER] = {"inviterId", "inviter_id"},
    [F_INVITE] = {"inviteId", "invite_id"},
};

static const struct kind_desc {
    pb_event_kind kind;
    const char *json;
    const char *proto;
    int nfields;
    enum field fields[3]; /* .proto order */
} KINDS[] = {
    {PB_EV_USER_REMOVED_FROM_GUILD,
     "userRemovedFromGuild",
     "user_removed_from_guild",
     2,
     {F_USER, F_GUILD}},
    {PB_EV_USER_ADDED_TO_GUILD, "userAddedToGuild", "user_added_to_guild", 2, {F_USER, F_GUILD}},
    {PB_EV_USER_INVITED, "userInvited", "user_invited", 3, {F_USER, F_INVITER, F_INVITE}},
    {PB_EV_USER_REJECTED_INVITE,
     "userRejectedInvite",
     "user_rejected_invite",
     3,
     {F_GUILD, F_USER, F_INVITE}},
};
#define NKINDS (sizeof KINDS / sizeof KINDS[0])
#define KIND_LIST "userRemovedFromGuild, userAddedToGuild, userInvited, userRejectedInvite"

static const struct kind_desc *kind_by_name(const char *key)
{
    for (size_t i = 0; i < NKINDS; i++)
        if (strcmp(key, KINDS[i].json) == 0 || strcmp(key, KINDS[i].proto) == 0) return &KINDS[i];
    return NULL;
}

static const struct kind_desc *kind_by_kind(pb_event_kind kind)
{
    for (size_t i = 0; i < NKINDS; i++)
        if (KINDS[i].kind == kind) return &KINDS[i];
    return NULL;
}

/* The field of kind d named key, or -1. */
static int field_by_name(const struct kind_desc *d, const char *key)
{
    for (int i = 0; i < d->nfields; i++) {
        const struct field_desc *f = &FIELDS[d->fields[i]];
        if (strcmp(key, f->json) == 0 || strcmp(key, f->proto) == 0) return (int)d->fields[i];
    }
    return -1;
}

/* ---- helpers ----------------------------------------------------------------------------- */

/* A copy of an untrusted key fit for a message: printable ASCII, at most 64 bytes. */
static char *clean(const char *s)
{
    enum { MAX = 64 };
    size_t n = strlen(s);
    size_t take = n > MAX ? MAX : n;
    char *c = pb_xmalloc(take + 4);
    for (size_t i = 0; i < take; i++)
        c[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    strcpy(c + take, n > MAX ? "..." : "");
    return c;
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a real number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "an unknown value";
}

/* Reasons a uint64 value is refused; NULL = accepted. */
static const char *u64_digits(const char *s, size_t n, uint64_t *out)
{
    if (n == 0) return "empty string; want a decimal string";
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return "not a decimal string (digits only: no sign, space, point or exponent)";
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return "out of range for uint64 (max 18446744073709551615)";
        v = v * 10 + d;
    }
    *out = v;
    return NULL;
}

static const char *u64_value(const json_t *v, uint64_t *out)
{
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
        if (strlen(s) != n) return "contains a NUL character";
        return u64_digits(s, n, out);
    }
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        if (i < 0) return "negative; want a decimal string or a non-negative integer";
        *out = (uint64_t)i;
        return NULL;
    }
    return "want a decimal string or a non-negative integer";
}

/* Reason an invite ID is refused, or NULL with *out a new copy. */
static const char *invite_value(const json_t *v, char **out)
{
    if (!json_is_string(v)) return "want a string";
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (n > PB_EVENTJSON_MAX_INVITE_ID) return "longer than 4096 bytes";
    if (strlen(s) != n) return "contains a NUL character";
    /* jansson validates UTF-8 when it parses text, but a json_t may have been built with
     * json_stringn_nocheck: let jansson check it again. */
    json_t *check = json_stringn(s, n);
    if (!check) return "not valid UTF-8";
    json_decref(check);
    *out = pb_xstrndup(s, n);
    return NULL;
}

/* ---- parse ------------------------------------------------------------------------------- */

pb_err pb_eventjson_parse(const json_t *j, pb_event *out, char **why)
{
    pb_event ev = {0};
    char *msg = NULL;
    pb_err err = PB_ERR_INVAL;
    const char *key, *reason;
    json_t *val;
    const struct kind_desc *kd = NULL;
    const char *kkey = NULL;
    json_t *body = NULL;

    if (why) *why = NULL;
    if (!j || !json_is_object(j)) {
        msg = pb_xasprintf("event: want an object, got %s", j ? type_name(j) : "nothing");
        goto out;
    }
    json_object_foreach((json_t *)j, key, val)
    {
        const struct kind_desc *d = kind_by_name(key);
        if (!d) {
            char *k = clean(key);
            msg = pb_xasprintf("event: unknown key \"%s\"; want one of " KIND_LIST, k);
            free(k);
            goto out;
        }
        if (kd) {
            msg = pb_xasprintf("event: more than one event kind (\"%s\" and \"%s\"); want "
                               "exactly one",
                               kkey, key);
            goto out;
        }
        kd = d;
        kkey = key;
        body = val;
    }
    if (!kd) {
        msg = pb_xstrdup("event: no event kind; want exactly one of " KIND_LIST);
        goto out;
    }
    if (!json_is_object(body)) {
        msg = pb_xasprintf("event.%s: want an object, got %s", kkey, type_name(body));
        goto out;
    }

    ev.kind = kd->kind;
    const char *seen[F__COUNT] = {0};
    json_object_foreach(body, key, val)
    {
        int f = field_by_name(kd, key);
        if (f < 0) {
            char *k = clean(key);
            char want[64] = "";
            for (int i = 0; i < kd->nfields; i++) {
                strcat(want, i ? ", " : "");
                strcat(want, FIELDS[kd->fields[i]].json);
            }
            msg = pb_xasprintf("event.%s: unknown field \"%s\"; want %s", kkey, k, want);
            free(k);
            goto out;
        }
        if (seen[f]) {
            msg =
                pb_xasprintf("event.%s: field given twice (\"%s\" and \"%s\")", kkey, seen[f], key);
            goto out;
        }
        seen[f] = key;
        bool text = f == F_INVITE;
        if (!json_is_string(val) && (text || !json_is_integer(val))) {
            msg = pb_xasprintf("event.%s.%s: %s, got %s%s", kkey, key,
                               text ? "want a string"
                                    : "want a decimal string or a non-negative integer",
                               type_name(val),
                               !text && json_is_real(val)
                                   ? " (write values above 9223372036854775807 as decimal strings)"
                                   : "");
            goto out;
        }
        switch ((enum field)f) {
        case F_USER:
            reason = u64_value(val, &ev.user_id);
            break;
        case F_GUILD:
            reason = u64_value(val, &ev.guild_id);
            break;
        case F_INVITER:
            reason = u64_value(val, &ev.inviter_id);
            break;
        case F_INVITE:
        default:
            reason = invite_value(val, &ev.invite_id);
            break;
        }
        if (reason) {
            msg = pb_xasprintf("event.%s.%s: %s", kkey, key, reason);
            goto out;
        }
    }
    if ((ev.kind == PB_EV_USER_INVITED || ev.kind == PB_EV_USER_REJECTED_INVITE) && !ev.invite_id)
        ev.invite_id = pb_xstrdup("");

    *out = ev;
    memset(&ev, 0, sizeof ev);
    err = PB_OK;
out:
    pb_event_clear(&ev);
    if (err != PB_OK && why)
        *why = msg;
    else
        free(msg);
    return err;
}

pb_err pb_eventjson_parse_u64(const json_t *v, uint64_t *out)
{
    uint64_t x;
    if (!v || u64_value(v, &x)) return PB_ERR_INVAL;
    *out = x;
    return PB_OK;
}

pb_err pb_eventjson_parse_u64_str(const char *s, uint64_t *out)
{
    uint64_t x;
    if (!s || u64_digits(s, strlen(s), &x)) return PB_ERR_INVAL;
    *out = x;
    return PB_OK;
}

/* ---- format ------------------------------------------------------------------------------ */

static json_t *u64_json(uint64_t v)
{
    char *s = pb_xasprintf("%llu", (unsigned long long)v);
    json_t *j = json_string(s);
    free(s);
    return j;
}

json_t *pb_eventjson_format(const pb_event *ev)
{
    const struct kind_desc *kd = ev ? kind_by_kind(ev->kind) : NULL;
    if (!kd) return NULL;
    json_t *body = json_object();
    for (int i = 0; i < kd->nfields; i++) {
        json_t *v;
        switch (kd->fields[i]) {
        case F_USER:
            v = u64_json(ev->user_id);
            break;
        case F_GUILD:
            v = u64_json(ev->guild_id);
            break;
        case F_INVITER:
            v = u64_json(ev->inviter_id);
            break;
        case F_INVITE:
        default:
            v = ev->invite_id ? json_string(ev->invite_id) : NULL;
            break;
        }
        if (!v || json_object_set_new(body, FIELDS[kd->fields[i]].json, v) != 0) {
            json_decref(body);
            return NULL;
        }
    }
    json_t *root = json_object();
    json_object_set_new(root, kd->json, body);
    return root;
}

/* ---- notices ----------------------------------------------------------------------------- */

json_t *pb_eventjson_notice(const pb_event *ev, const char *sender_server_id)
{
    if (!ev || !sender_server_id) return NULL;
    char user[24], guild[24], inviter[24];
    snprintf(user, sizeof user, "%llu", (unsigned long long)ev->user_id);
    snprintf(guild, sizeof guild, "%llu", (unsigned long long)ev->guild_id);
    snprintf(inviter, sizeof inviter, "%llu", (unsigned long long)ev->inviter_id);
    /* json_pack returns NULL for a NULL or invalid UTF-8 string. */
    switch (ev->kind) {
    case PB_EV_USER_ADDED_TO_GUILD:
        return json_pack("{s:{s:s, s:s}}", "guildAddedToList", "guildId", guild, "homeserver",
                         sender_server_id);
    case PB_EV_USER_REMOVED_FROM_GUILD:
        return json_pack("{s:{s:s, s:s}}", "guildRemovedFromList", "guildId", guild, "homeserver",
                         sender_server_id);
    case PB_EV_USER_INVITED:
        if (!ev->invite_id) return NULL;
        return json_pack("{s:{s:s, s:s, s:s}}", "inviteReceived", "inviteId", ev->invite_id,
                         "serverId", sender_server_id, "inviterId", inviter);
    case PB_EV_USER_REJECTED_INVITE:
        if (!ev->invite_id) return NULL;
        return json_pack("{s:{s:s, s:s, s:s}}", "inviteRejected", "guildId", guild, "inviteId",
                         ev->invite_id, "userId", user);
    default:
        return NULL;
    }
}
