/*
 * eventjson_test - the Event JSON mapping against the shared vectors (every vector's JSON
 * parses to an event that encodes to the vector's bytes, and the decoded bytes format back
 * to the vector's JSON), the accepted variants (JSON integers, proto field names, missing
 * fields), a table of refused inputs with the message each must give, the notices, and
 * the uint64 helpers' edge cases. Run under valgrind: refusals must not leak.
 */
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "wire/eventjson.h"
#include "harness.h"
#include "util/mem.h"
#include "wire/wire.h"

static json_t *load(const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!j) {
        fprintf(stderr, "test JSON does not parse: %s: %s\n", text, jerr.text);
        abort();
    }
    return j;
}

static char *enc_hex(const pb_event *ev)
{
    pb_buf b = PB_BUF_INIT;
    char *hex = NULL;
    if (pb_wire_event_encode(ev, &b) == PB_OK) hex = pbt_tohex(b.data, b.len);
    pb_buf_free(&b);
    return hex;
}

/* ---- vectors ------------------------------------------------------------------------------ */

static void test_vectors(void)
{
    json_t *v = pbt_vectors();
    json_t *events = json_object_get(v, "events");
    CHECK(json_object_size(events) >= 5);
    const char *name;
    json_t *e;
    json_object_foreach(events, name, e)
    {
        json_t *js = json_object_get(e, "json");
        const char *hex = json_string_value(json_object_get(e, "event_hex"));
        CHECKF(js && hex, "vector %s", name);
        if (!js || !hex) continue;

        /* JSON -> event -> bytes */
        pb_event ev = {0};
        char *why = NULL;
        CHECK_OK(pb_eventjson_parse(js, &ev, &why));
        CHECKF(why == NULL, "%s: %s", name, why);
        char *got = enc_hex(&ev);
        CHECKF(got && strcmp(got, hex) == 0, "%s: got %s, want %s", name, got ? got : "(none)",
               hex);
        free(got);

        /* bytes -> event -> JSON */
        size_t n;
        uint8_t *bytes = pbt_hex(hex, &n);
        pb_event dec = {0};
        CHECK_OK(pb_wire_event_decode(bytes, n, &dec));
        CHECKF(pb_event_equal(&ev, &dec), "%s: parsed and decoded events differ", name);
        json_t *back = pb_eventjson_format(&dec);
        CHECKF(back && json_equal(back, js), "%s: format differs from the vector", name);
        /* and the formatted JSON parses to the same event again */
        pb_event again = {0};
        CHECK_OK(pb_eventjson_parse(back, &again, NULL));
        CHECK(pb_event_equal(&again, &dec));

        json_decref(back);
        pb_event_clear(&again);
        pb_event_clear(&dec);
        pb_event_clear(&ev);
        free(bytes);
        free(why);
    }
    json_decref(v);
}

/* ---- accepted variants ------------------------------------------------------------------- */

static void parse_ok(const char *file, int line, const char *text, const pb_event *want)
{
    json_t *j = load(text);
    pb_event ev = {0};
    char *why = NULL;
    pb_err err = pb_eventjson_parse(j, &ev, &why);
    pbt_check(err == PB_OK, file, line, text, "got %s: %s", pb_strerror(err), why ? why : "");
    pbt_check(err != PB_OK || pb_event_equal(&ev, want), file, line, text,
              "kind %d user %llu guild %llu inviter %llu invite %s", ev.kind,
              (unsigned long long)ev.user_id, (unsigned long long)ev.guild_id,
              (unsigned long long)ev.inviter_id, ev.invite_id ? ev.invite_id : "(null)");
    pb_event_clear(&ev);
    free(why);
    json_decref(j);
}
#define PARSE_OK(text, ...)                                                                        \
    do {                                                                                           \
        pb_event w__ = __VA_ARGS__;                                                                \
        parse_ok(__FILE__, __LINE__, text, &w__);                                                  \
    } while (0)

static void test_accepted(void)
{
    PARSE_OK("{\"userAddedToGuild\":{\"userId\":1,\"guildId\":2}}",
             {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 1, .guild_id = 2});
    PARSE_OK("{\"userRemovedFromGuild\":{\"userId\":9223372036854775807,\"guildId\":0}}",
             {.kind = PB_EV_USER_REMOVED_FROM_GUILD, .user_id = INT64_MAX});
    /* proto field names, and mixing both spellings across fields */
    PARSE_OK(
        "{\"user_invited\":{\"user_id\":\"1\",\"inviter_id\":\"300\",\"invite_id\":\"inv-Zq9\"}}",
        {.kind = PB_EV_USER_INVITED, .user_id = 1, .inviter_id = 300, .invite_id = "inv-Zq9"});
    PARSE_OK("{\"user_rejected_invite\":{\"guildId\":\"99\",\"user_id\":5,\"inviteId\":\"x\"}}",
             {.kind = PB_EV_USER_REJECTED_INVITE, .guild_id = 99, .user_id = 5, .invite_id = "x"});
    PARSE_OK(
        "{\"user_removed_from_guild\":{\"user_id\":\"42\",\"guild_id\":\"18446744073709551615\"}}",
        {.kind = PB_EV_USER_REMOVED_FROM_GUILD, .user_id = 42, .guild_id = UINT64_MAX});
    PARSE_OK("{\"user_added_to_guild\":{\"guild_id\":\"3\"}}",
             {.kind = PB_EV_USER_ADDED_TO_GUILD, .guild_id = 3});
    /* missing fields take proto3 defaults; invite_id is "" (never NULL) */
    PARSE_OK("{\"userInvited\":{}}", {.kind = PB_EV_USER_INVITED, .invite_id = ""});
    PARSE_OK("{\"userRejectedInvite\":{\"guildId\":\"1\"}}",
             {.kind = PB_EV_USER_REJECTED_INVITE, .guild_id = 1, .invite_id = ""});
    PARSE_OK("{\"userAddedToGuild\":{}}", {.kind = PB_EV_USER_ADDED_TO_GUILD});
    /* leading zeros are plain decimal */
    PARSE_OK("{\"userAddedToGuild\":{\"userId\":\"007\",\"guildId\":\"00018446744073709551615\"}}",
             {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 7, .guild_id = UINT64_MAX});
    /* UTF-8 invite IDs and the longest accepted one */
    PARSE_OK("{\"userInvited\":{\"inviteId\":\"\\u043f\\u2713\"}}",
             {.kind = PB_EV_USER_INVITED, .invite_id = "\xd0\xbf\xe2\x9c\x93"});
    char *longest = pb_xmalloc(PB_EVENTJSON_MAX_INVITE_ID + 1);
    memset(longest, 'a', PB_EVENTJSON_MAX_INVITE_ID);
    longest[PB_EVENTJSON_MAX_INVITE_ID] = 0;
    json_t *j = json_pack("{s:{s:s}}", "userInvited", "inviteId", longest);
    pb_event ev = {0};
    CHECK_OK(pb_eventjson_parse(j, &ev, NULL));
    CHECK_STR(ev.invite_id, longest);
    pb_event_clear(&ev);
    json_decref(j);
    free(longest);

    /* a formatted zero-valued invite carries every field */
    pb_event z = {.kind = PB_EV_USER_INVITED, .invite_id = ""};
    json_t *f = pb_eventjson_format(&z);
    json_t *want =
        load("{\"userInvited\":{\"userId\":\"0\",\"inviterId\":\"0\",\"inviteId\":\"\"}}");
    CHECK(f && json_equal(f, want));
    json_decref(f);
    json_decref(want);
}

/* ---- refusals ----------------------------------------------------------------------------- */

static void refused(const char *file, int line, const json_t *j, const char *what,
                    const char *want_sub)
{
    pb_event ev, before;
    memset(&ev, 0x5a, sizeof ev);
    before = ev;
    char *why = (char *)"sentinel";
    pb_err err = pb_eventjson_parse(j, &ev, &why);
    pbt_check(err == PB_ERR_INVAL, file, line, what, "got %s", pb_strerror(err));
    pbt_check(memcmp(&ev, &before, sizeof ev) == 0, file, line, what, "out was written");
    if (err == PB_OK) pb_event_clear(&ev);
    bool has = err != PB_OK && why && strstr(why, want_sub);
    pbt_check(has, file, line, what, "why \"%s\" lacks \"%s\"",
              err != PB_OK && why ? why : "(none)", want_sub);
    /* the message is printable ASCII, fit for a JSON answer and a log line */
    bool printable = true;
    for (const char *p = err != PB_OK && why ? why : ""; *p; p++)
        if (*p < 0x20 || *p > 0x7e) printable = false;
    pbt_check(printable, file, line, what, "why is not printable ASCII");
    if (err != PB_OK) free(why);
    /* why may be NULL */
    CHECK_ERR(pb_eventjson_parse(j, &ev, NULL), PB_ERR_INVAL);
}

static void test_refused_table(void)
{
    static const struct {
        const char *json;
        const char *why;
    } cases[] = {
        /* the event object */
        {"null", "event: want an object, got null"},
        {"[]", "event: want an object, got an array"},
        {"\"userInvited\"", "event: want an object, got a string"},
        {"42", "event: want an object, got an integer"},
        {"{}", "event: no event kind"},
        {"{\"userInvited\":{},\"userAddedToGuild\":{}}", "more than one event kind"},
        {"{\"userInvited\":{},\"user_invited\":{}}", "more than one event kind"},
        {"{\"userJoined\":{}}", "event: unknown key \"userJoined\""},
        {"{\"UserInvited\":{}}", "unknown key \"UserInvited\""},
        {"{\"userInvited\":{},\"extra\":1}", "unknown key \"extra\""},
        /* the kind's value */
        {"{\"userInvited\":null}", "event.userInvited: want an object, got null"},
        {"{\"userInvited\":[]}", "event.userInvited: want an object, got an array"},
        {"{\"user_invited\":\"x\"}", "event.user_invited: want an object, got a string"},
        {"{\"userAddedToGuild\":true}", "event.userAddedToGuild: want an object, got a boolean"},
        /* fields */
        {"{\"userInvited\":{\"guildId\":\"1\"}}",
         "event.userInvited: unknown field \"guildId\"; want userId, inviterId, inviteId"},
        {"{\"userAddedToGuild\":{\"inviteId\":\"x\"}}", "unknown field \"inviteId\""},
        {"{\"userAddedToGuild\":{\"userid\":\"1\"}}", "unknown field \"userid\""},
        {"{\"userAddedToGuild\":{\"userId\":\"1\",\"user_id\":\"1\"}}",
         "field given twice (\"userId\" and \"user_id\")"},
        /* uint64 values */
        {"{\"userInvited\":{\"userId\":-1}}", "event.userInvited.userId: negative"},
        {"{\"userInvited\":{\"userId\":1.0}}",
         "event.userInvited.userId: want a decimal string or a non-negative integer, got a real"},
        /* jansson refuses integers above INT64_MAX at parse time; a real is what is left */
        {"{\"userInvited\":{\"userId\":1.8446744073709552e19}}", "as decimal strings"},
        {"{\"userInvited\":{\"userId\":\"1.5\"}}", "userId: not a decimal string"},
        {"{\"userInvited\":{\"userId\":\"-1\"}}", "userId: not a decimal string"},
        {"{\"userInvited\":{\"userId\":\"+1\"}}", "userId: not a decimal string"},
        {"{\"userInvited\":{\"userId\":\" 1\"}}", "userId: not a decimal string"},
        {"{\"userInvited\":{\"userId\":\"1e3\"}}", "userId: not a decimal string"},
        {"{\"userInvited\":{\"userId\":\"0x10\"}}", "userId: not a decimal string"},
        {"{\"userInvited\":{\"userId\":\"\"}}", "userId: empty string"},
        {"{\"userInvited\":{\"userId\":\"18446744073709551616\"}}", "userId: out of range"},
        {"{\"userInvited\":{\"inviterId\":\"99999999999999999999\"}}", "inviterId: out of range"},
        {"{\"userInvited\":{\"userId\":\"1\\u00002\"}}", "userId: contains a NUL"},
        {"{\"userInvited\":{\"userId\":null}}", "userId: want a decimal string or a non-negative "
                                                "integer, got null"},
        {"{\"userInvited\":{\"userId\":true}}", "got a boolean"},
        {"{\"userInvited\":{\"userId\":{}}}", "got an object"},
        {"{\"userInvited\":{\"userId\":[\"1\"]}}", "got an array"},
        {"{\"user_rejected_invite\":{\"guild_id\":-5}}",
         "event.user_rejected_invite.guild_id: negative"},
        /* invite IDs */
        {"{\"userInvited\":{\"inviteId\":5}}",
         "event.userInvited.inviteId: want a string, got an integer"},
        {"{\"userRejectedInvite\":{\"invite_id\":null}}", "invite_id: want a string, got null"},
        {"{\"userInvited\":{\"inviteId\":\"ab\\u0000cd\"}}", "inviteId: contains a NUL"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *j = load(cases[i].json);
        refused(__FILE__, __LINE__, j, cases[i].json, cases[i].why);
        json_decref(j);
    }
    CHECK(sizeof cases / sizeof cases[0] >= 25);

    /* no value at all */
    refused(__FILE__, __LINE__, NULL, "NULL", "event: want an object");

    /* too long invite ID */
    char *big = pb_xmalloc(PB_EVENTJSON_MAX_INVITE_ID + 2);
    memset(big, 'a', PB_EVENTJSON_MAX_INVITE_ID + 1);
    big[PB_EVENTJSON_MAX_INVITE_ID + 1] = 0;
    json_t *j = json_pack("{s:{s:s}}", "userRejectedInvite", "inviteId", big);
    refused(__FILE__, __LINE__, j, "4097-byte inviteId", "inviteId: longer than 4096 bytes");
    json_decref(j);
    free(big);

    /* invalid UTF-8 smuggled in through a json_t built without checking */
    j = json_pack("{s:{s:o}}", "userInvited", "inviteId", json_stringn_nocheck("a\xff", 2));
    refused(__FILE__, __LINE__, j, "non-UTF-8 inviteId", "inviteId: not valid UTF-8");
    json_decref(j);

    /* an error after an invite ID was copied must not leak it (valgrind) */
    j = load("{\"userInvited\":{\"inviteId\":\"abc\",\"userId\":\"x\"}}");
    refused(__FILE__, __LINE__, j, "late error", "userId: not a decimal string");
    json_decref(j);

    /* a hostile unknown key is echoed cut short and printable */
    char key[300];
    memset(key, 'k', sizeof key - 1);
    key[0] = '\n';
    key[1] = '\x7f';
    key[sizeof key - 1] = 0;
    j = json_object();
    json_object_set_new(j, key, json_object());
    refused(__FILE__, __LINE__, j, "long control-character key", "unknown key \"??kkk");
    char *why = NULL;
    pb_event ev = {0};
    CHECK_ERR(pb_eventjson_parse(j, &ev, &why), PB_ERR_INVAL);
    CHECKF(why && strlen(why) < 200 && strstr(why, "k...\""), "why %s", why ? why : "(none)");
    free(why);
    json_decref(j);
    /* same for an unknown field key with UTF-8 */
    j = load("{\"userInvited\":{\"\\u2713\":1}}");
    refused(__FILE__, __LINE__, j, "UTF-8 field key", "unknown field \"???\"");
    json_decref(j);
}

/* ---- format ------------------------------------------------------------------------------ */

static void test_format_edges(void)
{
    pb_event none = {0};
    CHECK(pb_eventjson_format(&none) == NULL);
    CHECK(pb_eventjson_format(NULL) == NULL);
    pb_event noinv = {.kind = PB_EV_USER_REJECTED_INVITE, .guild_id = 1};
    CHECK(pb_eventjson_format(&noinv) == NULL);
    pb_event bad = {.kind = PB_EV_USER_INVITED, .invite_id = "a\xff"};
    CHECK(pb_eventjson_format(&bad) == NULL);
    /* only the kind's fields are emitted */
    pb_event added = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 1, .guild_id = 2};
    json_t *f = pb_eventjson_format(&added);
    json_t *want = load("{\"userAddedToGuild\":{\"userId\":\"1\",\"guildId\":\"2\"}}");
    CHECK(f && json_equal(f, want));
    json_decref(f);
    json_decref(want);
}

/* ---- notices ----------------------------------------------------------------------------- */

static void check_notice(const char *file, int line, const char *event_json, const char *sender,
                         const char *want_json)
{
    json_t *j = load(event_json);
    pb_event ev = {0};
    pb_err err = pb_eventjson_parse(j, &ev, NULL);
    pbt_check(err == PB_OK, file, line, event_json, "parse: %s", pb_strerror(err));
    json_t *n = pb_eventjson_notice(&ev, sender);
    json_t *want = load(want_json);
    char *got = n ? json_dumps(n, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    pbt_check(n && json_equal(n, want), file, line, want_json, "got %s", got ? got : "NULL");
    free(got);
    json_decref(want);
    json_decref(n);
    pb_event_clear(&ev);
    json_decref(j);
}
#define CHECK_NOTICE(ev, s, want) check_notice(__FILE__, __LINE__, ev, s, want)

static void test_notices(void)
{
    const char *S = "beta.example.net:443";
    CHECK_NOTICE(
        "{\"userAddedToGuild\":{\"userId\":\"18446744073709551615\",\"guildId\":\"7\"}}", S,
        "{\"guildAddedToList\":{\"guildId\":\"7\",\"homeserver\":\"beta.example.net:443\"}}");
    CHECK_NOTICE(
        "{\"userRemovedFromGuild\":{\"userId\":\"42\",\"guildId\":\"18446744073709551615\"}}", S,
        "{\"guildRemovedFromList\":{\"guildId\":\"18446744073709551615\",\"homeserver\":\"beta."
        "example.net:443\"}}");
    CHECK_NOTICE(
        "{\"userInvited\":{\"userId\":\"1\",\"inviterId\":\"300\",\"inviteId\":\"inv-Zq9\"}}", S,
        "{\"inviteReceived\":{\"inviteId\":\"inv-Zq9\",\"serverId\":\"beta.example.net:443\","
        "\"inviterId\":\"300\"}}");
    CHECK_NOTICE(
        "{\"userRejectedInvite\":{\"guildId\":\"99\",\"userId\":\"5\",\"inviteId\":\"i\"}}", S,
        "{\"inviteRejected\":{\"guildId\":\"99\",\"inviteId\":\"i\",\"userId\":\"5\"}}");
    CHECK_NOTICE("{\"userAddedToGuild\":{}}", "[::1]:2289",
                 "{\"guildAddedToList\":{\"guildId\":\"0\",\"homeserver\":\"[::1]:2289\"}}");

    pb_event none = {0};
    CHECK(pb_eventjson_notice(&none, S) == NULL);
    pb_event added = {.kind = PB_EV_USER_ADDED_TO_GUILD, .guild_id = 1};
    CHECK(pb_eventjson_notice(&added, NULL) == NULL);
    CHECK(pb_eventjson_notice(&added, "a\xff") == NULL);
    pb_event noinv = {.kind = PB_EV_USER_INVITED};
    CHECK(pb_eventjson_notice(&noinv, S) == NULL);
}

/* ---- uint64 helpers ---------------------------------------------------------------------- */

static void test_u64(void)
{
    static const struct {
        const char *s;
        bool ok;
        uint64_t v;
    } strs[] = {
        {"0", true, 0},
        {"1", true, 1},
        {"007", true, 7},
        {"18446744073709551615", true, UINT64_MAX},
        {"000000000000000000000018446744073709551615", true, UINT64_MAX},
        {"18446744073709551610", true, 18446744073709551610ull},
        {"18446744073709551616", false, 0},
        {"18446744073709551620", false, 0},
        {"99999999999999999999", false, 0},
        {"184467440737095516150", false, 0},
        {"", false, 0},
        {"-1", false, 0},
        {"+1", false, 0},
        {"-0", false, 0},
        {" 1", false, 0},
        {"1 ", false, 0},
        {"1.5", false, 0},
        {"1.0", false, 0},
        {"1e3", false, 0},
        {"0x10", false, 0},
        {"abc", false, 0},
        {"12a", false, 0},
        {"\xd9\xa1", false, 0}, /* ARABIC-INDIC DIGIT ONE */
    };
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        uint64_t v = 12345;
        pb_err err = pb_eventjson_parse_u64_str(strs[i].s, &v);
        CHECKF(err == (strs[i].ok ? PB_OK : PB_ERR_INVAL), "\"%s\": %s", strs[i].s,
               pb_strerror(err));
        CHECKF(v == (strs[i].ok ? strs[i].v : 12345), "\"%s\": got %llu", strs[i].s,
               (unsigned long long)v);
    }
    uint64_t v = 12345;
    CHECK_ERR(pb_eventjson_parse_u64_str(NULL, &v), PB_ERR_INVAL);
    CHECK_INT(v, 12345);

    /* JSON values */
    static const struct {
        const char *json;
        bool ok;
        uint64_t v;
    } vals[] = {
        {"\"18446744073709551615\"", true, UINT64_MAX},
        {"\"0\"", true, 0},
        {"0", true, 0},
        {"9223372036854775807", true, INT64_MAX},
        {"-1", false, 0},
        {"-9223372036854775808", false, 0},
        {"1.0", false, 0},
        {"1e3", false, 0},
        {"null", false, 0},
        {"true", false, 0},
        {"[1]", false, 0},
        {"{}", false, 0},
        {"\"\"", false, 0},
        {"\"-1\"", false, 0},
        {"\"18446744073709551616\"", false, 0},
        {"\"1\\u0000\"", false, 0},
    };
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        json_t *j = load(vals[i].json);
        v = 12345;
        pb_err err = pb_eventjson_parse_u64(j, &v);
        CHECKF(err == (vals[i].ok ? PB_OK : PB_ERR_INVAL), "%s: %s", vals[i].json,
               pb_strerror(err));
        CHECKF(v == (vals[i].ok ? vals[i].v : 12345), "%s: got %llu", vals[i].json,
               (unsigned long long)v);
        json_decref(j);
    }
    v = 12345;
    CHECK_ERR(pb_eventjson_parse_u64(NULL, &v), PB_ERR_INVAL);
    CHECK_INT(v, 12345);
}

int main(void)
{
    test_vectors();
    test_accepted();
    test_refused_table();
    test_format_edges();
    test_notices();
    test_u64();
    return pbt_finish();
}
