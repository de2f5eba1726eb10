/*
 * badinput_test - one table of bad input against a real postboxd, and proof that none of it
 * changed anything (issue 4, part 6).
 *
 * The receiver R holds state worth protecting before the table runs: inbox items and
 * guild lists / pending invites from two real postboxd peers B and C (whose keys R has
 * learnt), and a queue of events for an unreachable peer Q. The table `rows` then sends,
 * one request each: every transport refusal of PROTOCOL.md section 1 (wrong method,
 * Content-Type, Hrpc-Version, undecodable bodies, unknown paths, bodies over the limit
 * with and without Content-Length, overload); every authentication refusal of section 3
 * on Push, Pull and NotifyNewId; every `invalid` vector of tests/vectors (the PushRequest
 * ones as Push bodies from the authenticated B, the token ones as Authorization headers);
 * tokens at the edges of the 60 s window; a token replayed under another server's ID;
 * oversized headers, URLs and Authorization values; and admin API garbage. Each row names
 * its exact status and hRPC identifier (and, for federation answers, both hRPC headers are
 * checked); admin rows their status and an {"error": ...} body.
 *
 * "Nothing changed" is checked twice: the admin API's view (inbox, peers, key, guild lists
 * and invites of the users involved) is compared with json_equal before and after the
 * table, and every table of the SQLite store is dumped read-only with the daemon stopped,
 * before and after, and compared byte for byte except peers.key_fetched_at (see
 * db_dump()).
 *
 * The window's edges, precisely: a token dated now-60 and one dated now+60 are accepted
 * (a Pull that changes nothing), now-61 and now+61 are refused with h.bad-time, where
 * "now" is the receiver's clock. The test reads the same clock: for the two rows whose
 * verdict would flip if the receiver's second were later than the one the token was made
 * in (now-60 accepted, now+61 refused), the row counts only when the test's clock shows
 * the same second before making the token and after the answer, and is re-sent
 * otherwise (at most 10 times); the other two hold for any later second.
 *
 * Oversized headers and URLs are refused by libmicrohttpd itself (its per-connection memory
 * limit is 32 KiB): observed with 0.9.75, a 64 KiB header gets 431 and a 64 KiB URL 414,
 * without hRPC headers; the rows accept any 4xx or a close, print what they saw, and the
 * state checks show the Push they carried was not applied.
 *
 * With PBT_STORE=postgres there is no SQLite file: the database comparison is skipped
 * (said on stderr) and the admin API comparison alone runs.
 *
 * The token vectors are dated 1764150000 (November 2025). The window check comes before
 * the signature check, so with a real clock two of them are refused as h.bad-time, not for
 * their signature; the table states exactly that, and adds the same two defects made at
 * the current time (one signature byte flipped; signed by vector key B) to show the
 * signature verdict itself.
 */
#include <curl/curl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "crypto/auth.h"
#include "harness.h"
#include "crypto/keys.h"
#include "wire/wire.h"

#define PUSH "/protocol.sync.v1.PostboxService/Push"
#define PULL "/protocol.sync.v1.PostboxService/Pull"
#define NOTIFY "/protocol.sync.v1.PostboxService/NotifyNewId"
#define KEY "/protocol.auth.v1.AuthService/Key"
#define MAX_BODY 65536             /* postboxd's default max_body */
#define BODY_MEMORY (2 * MAX_BODY) /* R runs with --body-memory 131072 for the overload row */
#define HOLDERS 2                  /* each holds MAX_BODY - 1 body bytes */

#define BAD "hrpc.http.bad-unary-request"

/* ---- the table ------------------------------------------------------------------------- */

typedef enum {
    TK_NONE,      /* no Authorization header */
    TK_LITERAL,   /* the row's `text`, as is */
    TK_VECTOR,    /* base64 of the vector invalid/<text> */
    TK_B,         /* B's valid token (B's key, B's ID) at now + skew */
    TK_B_BEARER,  /* the same with "Bearer " in front */
    TK_B_SIG63,   /* B's token with a 63-byte signature */
    TK_B_BADID,   /* AuthData naming "not a server id", signed by B */
    TK_B_FLIPPED, /* B's token with one signature byte flipped */
    TK_B_BY_VECB, /* naming B, signed by vector key B (another key) */
    TK_C_BY_B,    /* naming C, signed by B: a token replayed under another server's ID */
    TK_DENIED,    /* naming denied.example.org:443 (R's deny list) */
    TK_NOKEY,     /* naming a server nobody answers for: its key cannot be had */
    TK_OVERSIZED, /* 3000 base64 characters: over PB_AUTH_MAX_HEADER */
} tok_kind;

typedef enum {
    BD_EMPTY,
    BD_PUSH,       /* a valid PushRequest (it would change R's state if accepted) */
    BD_PULL,       /* PullRequest{postbox_next_seq: 1}: acknowledges nothing */
    BD_NOTIFY,     /* NotifyNewId{127.0.0.1:1} */
    BD_VECTOR,     /* hex of the vector invalid/<body> */
    BD_GARBAGE,    /* ff ff ff */
    BD_ZEROS_MAX,  /* exactly max_body zero bytes: passes the transport, does not decode */
    BD_OVER,       /* max_body + 1 bytes, with Content-Length */
    BD_OVER_CHUNK, /* max_body + 1 bytes, chunked: no length to refuse early */
    BD_HUGE,       /* 1 MiB + 1 */
    BD_TEXT,       /* the row's `body` text (admin rows) */
    BD_NOT_UTF8,   /* admin: ff fe 00 and text: neither JSON nor UTF-8 */
    BD_ADMIN_BIG,  /* admin: a JSON body of 1 MiB + some */
    BD_ADMIN_HUGE, /* admin: a JSON body of 16 MiB: still being sent when the answer comes */
    BD_ADMIN_MANY, /* admin: 10,001 events in one submission */
} body_kind;

enum {
    F_RETRY = 1,       /* the Error carries RetryInfo */
    F_SAME_SECOND = 2, /* only meaningful when R's clock is in the second the token used */
    F_OVERLOAD = 4,    /* sent while HOLDERS requests hold all but 2 of R's body bytes */
    F_OBSERVE = 8,     /* libmicrohttpd answers (or closes) itself: any 4xx or a close */
    F_ADMIN = 16,      /* to the admin listener: a JSON {"error": ...} answer */
    F_EMPTY_PULL = 32, /* a 200 whose body is an empty PullResponse */
    F_EXPECT = 64,     /* sent with Expect: 100-continue (see curl_expect_do) */
};

struct row {
    const char *what;
    const char *method, *path;
    const char *ctype;   /* NULL: application/hrpc; "": none */
    const char *version; /* NULL: "1"; "": none */
    tok_kind tok;
    int64_t skew; /* token time = now + skew */
    const char *text;
    body_kind body;
    const char *body_text;
    const char *extra_header; /* "64k" for a 64 KiB header, else a literal header line */
    long status;
    const char *identifier;
    unsigned flags;
};

#define POST "POST"
#define ALL_AUTH_FAULTS(P, BODY, KEYLESS_STATUS, KEYLESS_ID, KEYLESS_FLAGS)                          \
    {P ": no Authorization", POST, P, NULL, NULL, TK_NONE, 0, NULL, BODY, NULL, NULL, 401,           \
     "h.bad-auth",           0},                                                                     \
        {P ": Authorization not base64",                                                             \
         POST,                                                                                       \
         P,                                                                                          \
         NULL,                                                                                       \
         NULL,                                                                                       \
         TK_LITERAL,                                                                                 \
         0,                                                                                          \
         "%%%not base64%%%",                                                                         \
         BODY,                                                                                       \
         NULL,                                                                                       \
         NULL,                                                                                       \
         401,                                                                                        \
         "h.bad-auth",                                                                               \
         0},                                                                                         \
        {P ": Authorization over 2048 bytes",                                                        \
         POST,                                                                                       \
         P,                                                                                          \
         NULL,                                                                                       \
         NULL,                                                                                       \
         TK_OVERSIZED,                                                                               \
         0,                                                                                          \
         NULL,                                                                                       \
         BODY,                                                                                       \
         NULL,                                                                                       \
         NULL,                                                                                       \
         401,                                                                                        \
         "h.bad-auth",                                                                               \
         0},                                                                                         \
        {P ": base64 of a non-Token",                                                                \
         POST,                                                                                       \
         P,                                                                                          \
         NULL,                                                                                       \
         NULL,                                                                                       \
         TK_LITERAL,                                                                                 \
         0,                                                                                          \
         "/////w==",                                                                                 \
         BODY,                                                                                       \
         NULL,                                                                                       \
         NULL,                                                                                       \
         401,                                                                                        \
         "h.bad-token",                                                                              \
         0},                                                                                         \
        {P ": 63-byte signature", POST, P, NULL, NULL, TK_B_SIG63, 0, NULL, BODY, NULL, NULL, 401,   \
         "h.bad-token-signature", 0},                                                                \
        {P ": invalid server_id in AuthData",                                                        \
         POST,                                                                                       \
         P,                                                                                          \
         NULL,                                                                                       \
         NULL,                                                                                       \
         TK_B_BADID,                                                                                 \
         0,                                                                                          \
         NULL,                                                                                       \
         BODY,                                                                                       \
         NULL,                                                                                       \
         NULL,                                                                                       \
         401,                                                                                        \
         "h.bad-token-data",                                                                         \
         0},                                                                                         \
        {P ": token a day old", POST, P, NULL, NULL, TK_B, -86400, NULL, BODY, NULL, NULL, 401,      \
         "h.bad-time",          0},                                                                  \
        {P ": token a day ahead",                                                                    \
         POST,                                                                                       \
         P,                                                                                          \
         NULL,                                                                                       \
         NULL,                                                                                       \
         TK_B,                                                                                       \
         86400,                                                                                      \
         NULL,                                                                                       \
         BODY,                                                                                       \
         NULL,                                                                                       \
         NULL,                                                                                       \
         401,                                                                                        \
         "h.bad-time",                                                                               \
         0},                                                                                         \
        {P ": token 61 s old", POST, P, NULL, NULL, TK_B, -61, NULL, BODY, NULL, NULL, 401,          \
         "h.bad-time",         0},                                                                   \
        {P ": token 61 s ahead", POST,         P, NULL, NULL, TK_B, 61, NULL, BODY, NULL, NULL, 401, \
         "h.bad-time",           F_SAME_SECOND},                                                     \
        {P ": denied sender",  POST, P, NULL, NULL, TK_DENIED, 0, NULL, BODY, NULL, NULL, 403,       \
         "h.host-not-allowed", 0},                                                                   \
        {P ": sender whose key cannot be had",                                                       \
         POST,                                                                                       \
         P,                                                                                          \
         NULL,                                                                                       \
         NULL,                                                                                       \
         TK_NOKEY,                                                                                   \
         0,                                                                                          \
         NULL,                                                                                       \
         BODY,                                                                                       \
         NULL,                                                                                       \
         NULL,                                                                                       \
         KEYLESS_STATUS,                                                                             \
         KEYLESS_ID,                                                                                 \
         KEYLESS_FLAGS},                                                                             \
        {P ": signature by another key",                                                             \
         POST,                                                                                       \
         P,                                                                                          \
         NULL,                                                                                       \
         NULL,                                                                                       \
         TK_B_BY_VECB,                                                                               \
         0,                                                                                          \
         NULL,                                                                                       \
         BODY,                                                                                       \
         NULL,                                                                                       \
         NULL,                                                                                       \
         401,                                                                                        \
         "h.bad-token-signature",                                                                    \
         0},                                                                                         \
        {P ": one signature byte flipped",                                                           \
         POST,                                                                                       \
         P,                                                                                          \
         NULL,                                                                                       \
         NULL,                                                                                       \
         TK_B_FLIPPED,                                                                               \
         0,                                                                                          \
         NULL,                                                                                       \
         BODY,                                                                                       \
         NULL,                                                                                       \
         NULL,                                                                                       \
         401,                                                                                        \
         "h.bad-token-signature",                                                                    \
         0},                                                                                         \
    {                                                                                                \
        P ": B's token replayed under C's ID", POST, P, NULL, NULL, TK_C_BY_B, 0, NULL, BODY,        \
            NULL, NULL, 401, "h.bad-token-signature", 0                                              \
    }

#define ADMIN(WHAT, M, P, BODY, STATUS)                                                            \
    {                                                                                              \
        WHAT, M, P, NULL, NULL, TK_NONE, 0, NULL, BD_TEXT, BODY, NULL, STATUS, NULL, F_ADMIN       \
    }

/* Admin bodies that name B or R are completed at run time: "@B" and "@R" in the text are
 * replaced by those server IDs. */
static const struct row rows[] = {
    /* ---- section 1: transport ---- */
    {"GET Push", "GET", PUSH, NULL, NULL, TK_B, 0, NULL, BD_EMPTY, NULL, NULL, 405, BAD, 0},
    {"PUT Pull", "PUT", PULL, NULL, NULL, TK_B, 0, NULL, BD_PULL, NULL, NULL, 405, BAD, 0},
    {"DELETE NotifyNewId", "DELETE", NOTIFY, NULL, NULL, TK_B, 0, NULL, BD_NOTIFY, NULL, NULL, 405,
     BAD, 0},
    {"GET Key", "GET", KEY, NULL, NULL, TK_NONE, 0, NULL, BD_EMPTY, NULL, NULL, 405, BAD, 0},
    {"Content-Type text/plain", POST, PUSH, "text/plain", NULL, TK_B, 0, NULL, BD_PUSH, NULL, NULL,
     400, BAD, 0},
    {"Content-Type with a charset", POST, PUSH, "application/hrpc; charset=utf-8", NULL, TK_B, 0,
     NULL, BD_PUSH, NULL, NULL, 400, BAD, 0},
    {"Content-Type application/json", POST, PULL, "application/json", NULL, TK_B, 0, NULL, BD_PULL,
     NULL, NULL, 400, BAD, 0},
    {"Content-Type application/protobuf", POST, NOTIFY, "application/protobuf", NULL, TK_B, 0, NULL,
     BD_NOTIFY, NULL, NULL, 400, BAD, 0},
    {"no Content-Type", POST, PUSH, "", NULL, TK_B, 0, NULL, BD_PUSH, NULL, NULL, 400, BAD, 0},
    {"Hrpc-Version 2", POST, PUSH, NULL, "2", TK_B, 0, NULL, BD_PUSH, NULL, NULL, 400, BAD, 0},
    {"Hrpc-Version 1.0", POST, PULL, NULL, "1.0", TK_B, 0, NULL, BD_PULL, NULL, NULL, 400, BAD, 0},
    {"undecodable KeyRequest", POST, KEY, NULL, NULL, TK_NONE, 0, NULL, BD_GARBAGE, NULL, NULL, 400,
     BAD, 0},
    {"undecodable PushRequest from B", POST, PUSH, NULL, NULL, TK_B, 0, NULL, BD_GARBAGE, NULL,
     NULL, 400, BAD, 0},
    {"undecodable PullRequest from B", POST, PULL, NULL, NULL, TK_B, 0, NULL, BD_GARBAGE, NULL,
     NULL, 400, BAD, 0},
    {"undecodable NotifyNewIdRequest from B", POST, NOTIFY, NULL, NULL, TK_B, 0, NULL, BD_GARBAGE,
     NULL, NULL, 400, BAD, 0},
    {"empty PushRequest from B", POST, PUSH, NULL, NULL, TK_B, 0, NULL, BD_EMPTY, NULL, NULL, 400,
     BAD, 0},
    {"body of exactly max_body zero bytes from B", POST, PUSH, NULL, NULL, TK_B, 0, NULL,
     BD_ZEROS_MAX, NULL, NULL, 400, BAD, 0},
    {"unknown method", POST, "/protocol.sync.v1.PostboxService/Nope", NULL, NULL, TK_B, 0, NULL,
     BD_PUSH, NULL, NULL, 404, "hrpc.not-found", 0},
    {"unknown service", POST, "/protocol.sync.v2.PostboxService/Push", NULL, NULL, TK_B, 0, NULL,
     BD_PUSH, NULL, NULL, 404, "hrpc.not-found", 0},
    {"path in another case", POST, "/protocol.sync.v1.PostboxService/push", NULL, NULL, TK_B, 0,
     NULL, BD_PUSH, NULL, NULL, 404, "hrpc.not-found", 0},
    {"path with a trailing slash", POST, PUSH "/", NULL, NULL, TK_B, 0, NULL, BD_PUSH, NULL, NULL,
     404, "hrpc.not-found", 0},
    {"root", POST, "/", NULL, NULL, TK_NONE, 0, NULL, BD_EMPTY, NULL, NULL, 404, "hrpc.not-found",
     0},
    {"body over max_body, with Content-Length", POST, PUSH, NULL, NULL, TK_B, 0, NULL, BD_OVER,
     NULL, NULL, 413, "hrpc.resource-exhausted", F_EXPECT},
    {"body over max_body, chunked", POST, PUSH, NULL, NULL, TK_B, 0, NULL, BD_OVER_CHUNK, NULL,
     NULL, 413, "hrpc.resource-exhausted", 0},
    {"body of 1 MiB to NotifyNewId", POST, NOTIFY, NULL, NULL, TK_B, 0, NULL, BD_HUGE, NULL, NULL,
     413, "hrpc.resource-exhausted", F_EXPECT},
    {"valid Push from B while request bodies fill R's body memory", POST, PUSH, NULL, NULL, TK_B, 0,
     NULL, BD_PUSH, NULL, NULL, 503, "hrpc.unavailable", F_OVERLOAD | F_RETRY},

    /* ---- oversized headers and URLs: libmicrohttpd's own answer ---- */
    {"a 64 KiB header", POST, PUSH, NULL, NULL, TK_B, 0, NULL, BD_PUSH, NULL, "64k", 0, NULL,
     F_OBSERVE},
    {"a 64 KiB URL", POST, NULL, NULL, NULL, TK_B, 0, NULL, BD_PUSH, NULL, NULL, 0, NULL,
     F_OBSERVE},

    /* ---- section 3: every authentication fault, on each authenticated method ---- */
    ALL_AUTH_FAULTS(PUSH, BD_PUSH, 503, "hrpc.unavailable", F_RETRY),
    ALL_AUTH_FAULTS(PULL, BD_PULL, 503, "hrpc.unavailable", F_RETRY),
    /* NotifyNewId verifies with stored keys only: an unknown old ID is 403 */
    ALL_AUTH_FAULTS(NOTIFY, BD_NOTIFY, 403, "h.host-not-allowed", 0),

    /* ---- the window's edges (default 60 s), with a Pull that changes nothing ---- */
    {"Pull, token exactly 60 s old (accepted)", POST, PULL, NULL, NULL, TK_B, -60, NULL, BD_PULL,
     NULL, NULL, 200, NULL, F_SAME_SECOND | F_EMPTY_PULL},
    {"Pull, token exactly 60 s ahead (accepted)", POST, PULL, NULL, NULL, TK_B, 60, NULL, BD_PULL,
     NULL, NULL, 200, NULL, F_SAME_SECOND | F_EMPTY_PULL},
    {"Pull, Bearer token (accepted)", POST, PULL, NULL, NULL, TK_B_BEARER, 0, NULL, BD_PULL, NULL,
     NULL, 200, NULL, F_EMPTY_PULL},

    /* ---- every `invalid` vector ---- */
    {"vector push_request_truncated_varint", POST, PUSH, NULL, NULL, TK_B, 0, NULL, BD_VECTOR,
     "push_request_truncated_varint_hex", NULL, 400, BAD, 0},
    {"vector push_request_wrong_wire_type", POST, PUSH, NULL, NULL, TK_B, 0, NULL, BD_VECTOR,
     "push_request_wrong_wire_type_hex", NULL, 400, BAD, 0},
    {"vector push_request_length_overrun", POST, PUSH, NULL, NULL, TK_B, 0, NULL, BD_VECTOR,
     "push_request_length_overrun_hex", NULL, 400, BAD, 0},
    {"vector event_empty_oneof (as a PushRequest)", POST, PUSH, NULL, NULL, TK_B, 0, NULL,
     BD_VECTOR, "event_empty_oneof_hex", NULL, 400, BAD, 0},
    {"vector token_sig_63_bytes", POST, PUSH, NULL, NULL, TK_VECTOR, 0, "token_sig_63_bytes_hex",
     BD_PUSH, NULL, NULL, 401, "h.bad-token-signature", 0},
    {"vector token_truncated", POST, PUSH, NULL, NULL, TK_VECTOR, 0, "token_truncated_hex", BD_PUSH,
     NULL, NULL, 401, "h.bad-token", 0},
    /* dated 1764150000: the window check (before the signature check) refuses them */
    {"vector token_bad_signature (dated 2025)", POST, PUSH, NULL, NULL, TK_VECTOR, 0,
     "token_bad_signature_hex", BD_PUSH, NULL, NULL, 401, "h.bad-time", 0},
    {"vector token_signed_by_other_key (dated 2025)", POST, PUSH, NULL, NULL, TK_VECTOR, 0,
     "token_signed_by_other_key_hex", BD_PUSH, NULL, NULL, 401, "h.bad-time", 0},

    /* ---- admin API garbage ---- */
    ADMIN("admin: malformed JSON", POST, "/v1/outbox", "{\"to\":", 400),
    {"admin: not JSON, not UTF-8", POST, "/v1/outbox", NULL, NULL, TK_NONE, 0, NULL, BD_NOT_UTF8,
     NULL, NULL, 400, NULL, F_ADMIN},
    ADMIN("admin: an array, not an object", POST, "/v1/outbox", "[]", 400),
    ADMIN("admin: to is a number", POST, "/v1/outbox",
          "{\"to\":5,\"event\":{\"userAddedToGuild\":{\"userId\":\"5\",\"guildId\":\"1\"}}}", 400),
    ADMIN("admin: to is not a server ID", POST, "/v1/outbox",
          "{\"to\":\"not a server\",\"event\":{\"userAddedToGuild\":{\"userId\":\"5\","
          "\"guildId\":\"1\"}}}",
          400),
    ADMIN("admin: to holds a NUL", POST, "/v1/outbox",
          "{\"to\":\"127.0.0.1:1\\u0000x\",\"event\":{\"userAddedToGuild\":{\"userId\":\"5\","
          "\"guildId\":\"1\"}}}",
          400),
    ADMIN("admin: duplicate key", POST, "/v1/outbox",
          "{\"to\":\"@B\",\"to\":\"@B\",\"event\":{\"userAddedToGuild\":{\"userId\":\"5\","
          "\"guildId\":\"1\"}}}",
          400),
    ADMIN("admin: unknown field", POST, "/v1/outbox",
          "{\"to\":\"@B\",\"x\":1,\"event\":{\"userAddedToGuild\":{\"userId\":\"5\","
          "\"guildId\":\"1\"}}}",
          400),
    ADMIN("admin: userId not a number", POST, "/v1/outbox",
          "{\"to\":\"@B\",\"event\":{\"userAddedToGuild\":{\"userId\":\"five\",\"guildId\":"
          "\"1\"}}}",
          400),
    ADMIN("admin: userId over uint64", POST, "/v1/outbox",
          "{\"to\":\"@B\",\"event\":{\"userAddedToGuild\":{\"userId\":\"18446744073709551616\","
          "\"guildId\":\"1\"}}}",
          400),
    ADMIN("admin: userId negative", POST, "/v1/outbox",
          "{\"to\":\"@B\",\"event\":{\"userAddedToGuild\":{\"userId\":-1,\"guildId\":\"1\"}}}",
          400),
    ADMIN("admin: guildId a float", POST, "/v1/outbox",
          "{\"to\":\"@B\",\"event\":{\"userAddedToGuild\":{\"userId\":\"1\",\"guildId\":1.5}}}",
          400),
    ADMIN("admin: event of no kind", POST, "/v1/outbox", "{\"to\":\"@B\",\"event\":{}}", 400),
    ADMIN("admin: event of an unknown kind", POST, "/v1/outbox",
          "{\"to\":\"@B\",\"event\":{\"userExploded\":{}}}", 400),
    ADMIN("admin: event a string", POST, "/v1/outbox", "{\"to\":\"@B\",\"event\":\"x\"}", 400),
    ADMIN("admin: no events", POST, "/v1/outbox", "{\"to\":\"@B\",\"events\":[]}", 400),
    ADMIN("admin: event and events", POST, "/v1/outbox",
          "{\"to\":\"@B\",\"event\":{\"userAddedToGuild\":{\"userId\":\"5\",\"guildId\":\"1\"}},"
          "\"events\":[{\"userAddedToGuild\":{\"userId\":\"5\",\"guildId\":\"1\"}}]}",
          400),
    ADMIN("admin: one good event, one bad", POST, "/v1/outbox",
          "{\"to\":\"@B\",\"events\":[{\"userAddedToGuild\":{\"userId\":\"5\",\"guildId\":\"1\"}},"
          "{\"userAddedToGuild\":{\"userId\":\"x\",\"guildId\":\"1\"}}]}",
          400),
    ADMIN("admin: inviteId not a string", POST, "/v1/outbox",
          "{\"to\":\"@B\",\"event\":{\"userInvited\":{\"userId\":\"5\",\"inviterId\":\"1\","
          "\"inviteId\":7}}}",
          400),
    ADMIN("admin: userAddedToGuild without guildId (would store guild 0)", POST, "/v1/outbox",
          "{\"to\":\"@B\",\"event\":{\"userAddedToGuild\":{\"userId\":\"5\"}}}", 400),
    ADMIN("admin: userRejectedInvite without guildId", POST, "/v1/outbox",
          "{\"to\":\"@B\",\"event\":{\"userRejectedInvite\":{\"userId\":\"5\",\"inviteId\":"
          "\"i\"}}}",
          400),
    ADMIN("admin: userRemovedFromGuild with userId 0", POST, "/v1/outbox",
          "{\"to\":\"@B\",\"event\":{\"userRemovedFromGuild\":{\"userId\":\"0\",\"guildId\":"
          "\"1\"}}}",
          400),
    ADMIN("admin: userInvited without inviterId", POST, "/v1/outbox",
          "{\"to\":\"@B\",\"events\":[{\"userInvited\":{\"userId\":\"5\",\"inviteId\":"
          "\"i\"}}]}",
          400),
    ADMIN("admin: to this server itself", POST, "/v1/outbox",
          "{\"to\":\"@R\",\"event\":{\"userAddedToGuild\":{\"userId\":\"5\",\"guildId\":\"1\"}}}",
          400),
    {"admin: 10,001 events", POST, "/v1/outbox", NULL, NULL, TK_NONE, 0, NULL, BD_ADMIN_MANY, NULL,
     NULL, 400, NULL, F_ADMIN},
    {"admin: body over 1 MiB", POST, "/v1/outbox", NULL, NULL, TK_NONE, 0, NULL, BD_ADMIN_BIG, NULL,
     NULL, 413, NULL, F_ADMIN},
    {"admin: body of 16 MiB", POST, "/v1/outbox", NULL, NULL, TK_NONE, 0, NULL, BD_ADMIN_HUGE, NULL,
     NULL, 413, NULL, F_ADMIN},
    ADMIN("admin: rename without a body", POST, "/v1/rename", NULL, 400),
    ADMIN("admin: rename to a number", POST, "/v1/rename", "{\"new_server_id\":5}", 400),
    ADMIN("admin: rename to an invalid ID", POST, "/v1/rename",
          "{\"new_server_id\":\"bad id:99999\"}", 400),
    ADMIN("admin: rename to its own ID", POST, "/v1/rename", "{\"new_server_id\":\"@R\"}", 400),
    ADMIN("admin: rename with an extra field", POST, "/v1/rename",
          "{\"new_server_id\":\"localhost:1\",\"x\":1}", 400),
    ADMIN("admin: inbox after=abc", "GET", "/v1/inbox?after=abc", NULL, 400),
    ADMIN("admin: inbox after=-1", "GET", "/v1/inbox?after=-1", NULL, 400),
    ADMIN("admin: inbox limit=0", "GET", "/v1/inbox?limit=0", NULL, 400),
    ADMIN("admin: inbox limit=10000000", "GET", "/v1/inbox?limit=10000000", NULL, 400),
    ADMIN("admin: inbox wait=61", "GET", "/v1/inbox?wait=61", NULL, 400),
    ADMIN("admin: guilds of user abc", "GET", "/v1/users/abc/guilds", NULL, 400),
    ADMIN("admin: invites of user 2^64", "GET", "/v1/users/18446744073709551616/invites", NULL,
          400),
    ADMIN("admin: guilds of user -1", "GET", "/v1/users/-1/guilds", NULL, 400),
    ADMIN("admin: retry an invalid peer ID", POST, "/v1/peers/not%20valid/retry", NULL, 400),
    ADMIN("admin: retry an unknown peer", POST, "/v1/peers/127.0.0.1:1/retry", NULL, 404),
    ADMIN("admin: drop-parked of a peer not parked", POST, "/v1/peers/@B/drop-parked", NULL, 409),
    ADMIN("admin: GET the outbox", "GET", "/v1/outbox", NULL, 405),
    ADMIN("admin: DELETE the outbox", "DELETE", "/v1/outbox", NULL, 405),
    ADMIN("admin: PUT rename", "PUT", "/v1/rename", "{\"new_server_id\":\"localhost:1\"}", 405),
    ADMIN("admin: unknown endpoint", "GET", "/v1/nope", NULL, 404),
    ADMIN("admin: unknown endpoint with a body", POST, "/v1/outbox/x", "{}", 404),
};

/* ---- context: the three daemons and the keys the rows sign with ---------------------------- */

struct ctx {
    pbt_daemon *r, *b, *c;
    pb_keys *kb, *kvec_b, *kother;
    json_t *vectors;
    char nokey_id[64];
};

static pb_keys *daemon_keys(const pbt_daemon *d)
{
    char path[512];
    snprintf(path, sizeof path, "%s/key", d->dir);
    pb_keys *k = NULL;
    CHECK_OK(pb_keys_load(path, &k));
    return k;
}

static char *b64(const uint8_t *p, size_t n)
{
    size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
    char *s = malloc(cap);
    sodium_bin2base64(s, cap, p, n, sodium_base64_VARIANT_ORIGINAL);
    return s;
}

/* A token for `id` at time t signed by k, with the signature cut to siglen bytes or one
 * byte flipped; base64. */
static char *token(const pb_keys *k, const char *id, uint64_t t, size_t siglen, bool flip)
{
    pb_buf ad = PB_BUF_INIT, tok = PB_BUF_INIT;
    pb_wire_authdata_encode(id, t, NULL, &ad);
    uint8_t sig[64];
    pb_keys_sign(k, ad.data, ad.len, sig);
    if (flip) sig[3] ^= 0x01;
    pb_wire_token_encode(sig, siglen, ad.data, ad.len, &tok);
    char *s = b64(tok.data, tok.len);
    pb_buf_free(&ad);
    pb_buf_free(&tok);
    return s;
}

static uint8_t *vector_bytes(const struct ctx *x, const char *name, size_t *len)
{
    const char *hex =
        json_string_value(json_object_get(json_object_get(x->vectors, "invalid"), name));
    if (!hex) {
        fprintf(stderr, "no vector invalid/%s\n", name);
        exit(2);
    }
    return pbt_hex(hex, len);
}

/* The Authorization value of a row (NULL: none), computed now. */
static char *row_token(const struct ctx *x, const struct row *w, uint64_t now)
{
    uint64_t t = (uint64_t)((int64_t)now + w->skew);
    switch (w->tok) {
    case TK_NONE:
        return NULL;
    case TK_LITERAL:
        return strdup(w->text);
    case TK_VECTOR: {
        size_t n;
        uint8_t *p = vector_bytes(x, w->text, &n);
        char *s = b64(p, n);
        free(p);
        return s;
    }
    case TK_B:
        return token(x->kb, x->b->server_id, t, 64, false);
    case TK_B_BEARER: {
        char *s = token(x->kb, x->b->server_id, t, 64, false), *out = NULL;
        if (asprintf(&out, "Bearer %s", s) < 0) abort();
        free(s);
        return out;
    }
    case TK_B_SIG63:
        return token(x->kb, x->b->server_id, t, 63, false);
    case TK_B_BADID:
        return token(x->kb, "not a server id", t, 64, false);
    case TK_B_FLIPPED:
        return token(x->kb, x->b->server_id, t, 64, true);
    case TK_B_BY_VECB:
        return token(x->kvec_b, x->b->server_id, t, 64, false);
    case TK_C_BY_B:
        return token(x->kb, x->c->server_id, t, 64, false);
    case TK_DENIED:
        return token(x->kother, "denied.example.org:443", t, 64, false);
    case TK_NOKEY:
        return token(x->kother, x->nokey_id, t, 64, false);
    case TK_OVERSIZED: {
        char *s = malloc(3001);
        memset(s, 'A', 3000);
        s[3000] = '\0';
        return s;
    }
    }
    return NULL;
}

/* Replaces "@B" / "@R" in admin text by those server IDs. */
static char *admin_text(const struct ctx *x, const char *t)
{
    pb_buf b = PB_BUF_INIT;
    for (const char *p = t; *p; p++) {
        if (p[0] == '@' && (p[1] == 'B' || p[1] == 'R')) {
            pb_buf_append_str(&b, p[1] == 'B' ? x->b->server_id : x->r->server_id);
            p++;
        } else {
            pb_buf_append(&b, p, 1);
        }
    }
    pb_buf_append(&b, "", 1);
    return (char *)pb_buf_steal(&b, NULL);
}

/* The body of a row; *len set. Caller frees. */
static uint8_t *row_body(const struct ctx *x, const struct row *w, size_t *len)
{
    pb_buf b = PB_BUF_INIT;
    switch (w->body) {
    case BD_EMPTY:
        break;
    case BD_PUSH: {
        pb_event ev = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 5, .guild_id = 4242};
        pb_wire_push_encode(&ev, &(uint64_t){1000000}, 1, 0, &b);
        break;
    }
    case BD_PULL:
        pb_wire_pull_req_encode(&(pb_pull_req){.next_seq = 1}, &b);
        break;
    case BD_NOTIFY:
        pb_wire_notify_encode("127.0.0.1:1", NULL, 0, &b);
        break;
    case BD_VECTOR: {
        uint8_t *p = vector_bytes(x, w->body_text, len);
        return p;
    }
    case BD_GARBAGE:
        pb_buf_append(&b, "\xff\xff\xff", 3);
        break;
    case BD_ZEROS_MAX:
    case BD_OVER:
    case BD_OVER_CHUNK:
    case BD_HUGE: {
        size_t n = w->body == BD_ZEROS_MAX ? MAX_BODY
                   : w->body == BD_HUGE    ? (1u << 20) + 1
                                           : MAX_BODY + 1;
        uint8_t *p = calloc(1, n);
        *len = n;
        return p;
    }
    case BD_TEXT:
        if (w->body_text) {
            char *t = admin_text(x, w->body_text);
            *len = strlen(t);
            return (uint8_t *)t;
        }
        break;
    case BD_NOT_UTF8:
        pb_buf_append(&b, "\xff\xfe\x00{}garbage", 12);
        break;
    case BD_ADMIN_BIG:
    case BD_ADMIN_HUGE:
        pb_buf_append_str(&b, "{\"to\":\"");
        pb_buf_append_str(&b, x->b->server_id);
        pb_buf_append_str(&b, "\",\"pad\":\"");
        for (int i = 0; i < (w->body == BD_ADMIN_HUGE ? 16 << 20 : 1 << 20) / 64 + 1; i++)
            pb_buf_append_str(&b,
                              "0123456789012345678901234567890123456789012345678901234567890123");
        pb_buf_append_str(&b, "\"}");
        break;
    case BD_ADMIN_MANY:
        pb_buf_append_str(&b, "{\"to\":\"");
        pb_buf_append_str(&b, x->b->server_id);
        pb_buf_append_str(&b, "\",\"events\":[");
        for (int i = 0; i < 10001; i++)
            pb_buf_append_str(&b,
                              i ? ",{\"userAddedToGuild\":{\"userId\":\"5\",\"guildId\":\"1\"}}"
                                : "{\"userAddedToGuild\":{\"userId\":\"5\",\"guildId\":\"1\"}}");
        pb_buf_append_str(&b, "]}");
        break;
    }
    return pb_buf_steal(&b, len);
}

/* ---- checks ---------------------------------------------------------------------------------- */

static uint32_t retry_after_of(const pbt_http *h)
{
    char *id = NULL, *msg = NULL;
    uint8_t *details = NULL;
    size_t dlen = 0;
    uint32_t ra = 0;
    if (pb_wire_error_decode(h->body, h->body_len, &id, &msg, &details, &dlen) == PB_OK && dlen > 0)
        pb_wire_retry_info_decode(details, dlen, &ra);
    free(id);
    free(msg);
    free(details);
    return ra;
}

static void expect_hrpc(const pbt_http *h, const struct row *w)
{
    CHECKF(h->status == w->status, "%s: status %ld, want %ld", w->what, h->status, w->status);
    CHECKF(h->ctype && !strcmp(h->ctype, "application/hrpc"), "%s: Content-Type %s", w->what,
           h->ctype ? h->ctype : "(none)");
    CHECKF(h->hrpc_version && !strcmp(h->hrpc_version, "1"), "%s: Hrpc-Version %s", w->what,
           h->hrpc_version ? h->hrpc_version : "(none)");
    if (w->flags & F_EMPTY_PULL) {
        pb_event *evs = NULL;
        uint64_t *seqs = NULL;
        size_t n = 1;
        CHECKF(pb_wire_pull_resp_decode(h->body, h->body_len, &evs, &seqs, &n, &(uint64_t){0}) ==
                       PB_OK &&
                   n == 0,
               "%s: an empty PullResponse", w->what);
        for (size_t i = 0; i < n; i++)
            pb_event_clear(&evs[i]);
        free(evs);
        free(seqs);
    }
    if (w->flags & F_RETRY)
        CHECKF(retry_after_of(h) > 0, "%s: RetryInfo with retry_after > 0", w->what);
    if (!w->identifier) return;
    char *id = NULL, *msg = NULL;
    uint8_t *details = NULL;
    size_t dlen = 0;
    pb_err err = pb_wire_error_decode(h->body, h->body_len, &id, &msg, &details, &dlen);
    CHECKF(err == PB_OK, "%s: body is not an hrpc.v1.Error", w->what);
    if (err == PB_OK) {
        CHECKF(!strcmp(id, w->identifier), "%s: identifier %s, want %s", w->what, id,
               w->identifier);
        CHECKF(msg && *msg, "%s: empty human_message", w->what);
    }
    free(id);
    free(msg);
    free(details);
}

static void expect_admin(const pbt_http *h, const struct row *w)
{
    CHECKF(h->status == w->status, "%s: status %ld, want %ld", w->what, h->status, w->status);
    json_t *j = h->body_len ? json_loadb((const char *)h->body, h->body_len, 0, NULL) : NULL;
    CHECKF(json_is_string(json_object_get(j, "error")), "%s: an {\"error\": ...} answer: %.200s",
           w->what, h->body ? (const char *)h->body : "");
    json_decref(j);
}

/* ---- overload: hold every in-flight slot --------------------------------------------------- */

/* A Key request stuck in its body, the last of its MAX_BODY bytes never coming: holds
 * MAX_BODY - 1 bytes of R's body memory. */
static int hold_one(const pbt_daemon *r)
{
    char head[256];
    int n = snprintf(head, sizeof head,
                     "POST " KEY " HTTP/1.1\r\nHost: x\r\nContent-Type: application/hrpc\r\n"
                     "Content-Length: %d\r\n\r\n",
                     MAX_BODY);
    static char body[MAX_BODY - 1];
    int fd = pbt_connect_local(r->port);
    if (fd >= 0 && (write(fd, head, (size_t)n) != n ||
                    send(fd, body, sizeof body, MSG_NOSIGNAL) != (ssize_t)sizeof body)) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* A Key request with a 16-byte body (an unknown field): its status. */
static long key16_status(uint16_t port)
{
    pbt_http h;
    const char *hdrs[] = {"Content-Type: application/hrpc", NULL};
    static const uint8_t body[16] = {0x7a, 14};
    pbt_http_do("http", port, "POST", KEY, hdrs, body, sizeof body, NULL, &h);
    long st = h.status;
    pbt_http_clear(&h);
    return st;
}

/*
 * Fills R's body memory (BODY_MEMORY bytes of request bodies at once) but for 2 bytes with
 * HOLDERS requests stuck in their bodies; true once R refuses a 16-byte body. A holder R
 * answered or closed (it has something to read) is replaced; the overload counts as held
 * after 3 refused probes in a row, 50 ms apart, with every holder still waiting.
 */
static bool hold_slots(const pbt_daemon *r, int fds[HOLDERS])
{
    for (int i = 0; i < HOLDERS; i++)
        fds[i] = hold_one(r);
    int refused = 0;
    for (int64_t end = pbt_now_ms() + PBT_BOUND_MS; pbt_now_ms() < end && refused < 3;) {
        bool replaced = false;
        for (int i = 0; i < HOLDERS; i++) {
            struct pollfd p = {.fd = fds[i], .events = POLLIN};
            if (fds[i] >= 0 && poll(&p, 1, 0) == 0) continue;
            if (fds[i] >= 0) close(fds[i]);
            fds[i] = hold_one(r);
            replaced = true;
        }
        refused = !replaced && key16_status(r->port) == 503 ? refused + 1 : 0;
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return refused >= 3;
}

static void release_slots(const pbt_daemon *r, int fds[HOLDERS])
{
    for (int i = 0; i < HOLDERS; i++)
        if (fds[i] >= 0) close(fds[i]);
    for (int64_t end = pbt_now_ms() + PBT_BOUND_MS; pbt_now_ms() < end;) {
        if (key16_status(r->port) == 200) return;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    CHECK(!"R serves again after the overload row");
}

/* ---- running one row ------------------------------------------------------------------------ */

struct hdrs {
    char **ctype, **ver;
};

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    struct hdrs *h = ud;
    size_t len = size * n;
    char **dst = NULL;
    if (len > 13 && !strncasecmp(p, "Content-Type:", 13))
        dst = h->ctype;
    else if (len > 13 && !strncasecmp(p, "Hrpc-Version:", 13))
        dst = h->ver;
    if (dst) {
        size_t i = 13;
        while (i < len && p[i] == ' ')
            i++;
        size_t end = len;
        while (end > i && (p[end - 1] == '\r' || p[end - 1] == '\n'))
            end--;
        free(*dst);
        *dst = strndup(p + i, end - i);
    }
    return len;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    pbt_http *h = ud;
    h->body = realloc(h->body, h->body_len + size * n + 1);
    memcpy(h->body + h->body_len, p, size * n);
    h->body_len += size * n;
    h->body[h->body_len] = 0;
    return size * n;
}

/*
 * A request whose body the server refuses from its Content-Length, sent as a careful
 * client does: with Expect: 100-continue, so the body follows only if the server asks for
 * it. pbt_http_do sends the body at once; the server answers 413 and closes without
 * reading it, and the client may then see the reset of the unread body instead of the
 * answer (a property of TCP, not of the server): with large bodies that happened about
 * once in ten runs.
 */
static void curl_expect_do(uint16_t port, const char *path, const char *const *headers,
                           const void *body, size_t len, pbt_http *out)
{
    memset(out, 0, sizeof *out);
    CURL *c = curl_easy_init();
    char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", port, path);
    struct curl_slist *sl = curl_slist_append(NULL, "Expect: 100-continue");
    for (int i = 0; headers[i]; i++)
        sl = curl_slist_append(sl, headers[i]);
    struct hdrs hh = {&out->ctype, &out->hrpc_version};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 15000L);
    curl_easy_setopt(c, CURLOPT_EXPECT_100_TIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, sl);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &hh);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    curl_slist_free_all(sl);
    curl_easy_cleanup(c);
}

/* The request written as is on a new connection; h->status is the answer's status (0 when
 * the server closed the connection without one within 10 s), h->body NULL. */
static void raw_do(uint16_t port, const char *method, const char *path, const char *const *hdrs,
                   const uint8_t *body, size_t blen, pbt_http *h)
{
    memset(h, 0, sizeof *h);
    pb_buf req = PB_BUF_INIT;
    char line[64];
    pb_buf_append_str(&req, method);
    pb_buf_append_str(&req, " ");
    pb_buf_append_str(&req, path);
    pb_buf_append_str(&req, " HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (int i = 0; hdrs[i]; i++) {
        pb_buf_append_str(&req, hdrs[i]);
        pb_buf_append_str(&req, "\r\n");
    }
    snprintf(line, sizeof line, "Content-Length: %zu\r\n\r\n", blen);
    pb_buf_append_str(&req, line);
    pb_buf_append(&req, body, blen);
    int fd = pbt_connect_local(port);
    if (fd >= 0) {
        /* the server may answer and close before reading everything: ignore write errors */
        size_t off = 0;
        while (off < req.len) {
            ssize_t n = send(fd, req.data + off, req.len - off, MSG_NOSIGNAL);
            if (n <= 0) break;
            off += (size_t)n;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        char ans[256] = "";
        if (poll(&p, 1, PBT_BOUND_MS) == 1 && read(fd, ans, sizeof ans - 1) > 12 &&
            !strncmp(ans, "HTTP/1.1 ", 9))
            h->status = strtol(ans + 9, NULL, 10);
        close(fd);
    }
    pb_buf_free(&req);
}

static void run_row(const struct ctx *x, const struct row *w)
{
    for (int attempt = 0; attempt < 10; attempt++) {
        time_t before = time(NULL);
        char *authz = row_token(x, w, (uint64_t)before);
        size_t blen = 0;
        uint8_t *body = row_body(x, w, &blen);
        char ct[128], ver[64], *auth_hdr = NULL, *big = NULL;
        const char *hdrs[8];
        int n = 0;
        if (!(w->flags & F_ADMIN)) {
            if (!w->ctype)
                hdrs[n++] = "Content-Type: application/hrpc";
            else {
                snprintf(ct, sizeof ct, "Content-Type:%s%s", *w->ctype ? " " : "", w->ctype);
                hdrs[n++] = ct;
            }
            snprintf(ver, sizeof ver, "Hrpc-Version: %s", w->version ? w->version : "1");
            if (!w->version || *w->version) hdrs[n++] = ver;
        } else {
            hdrs[n++] = "Content-Type: application/json";
        }
        if (authz) {
            if (asprintf(&auth_hdr, "Authorization: %s", authz) < 0) abort();
            hdrs[n++] = auth_hdr;
        }
        if (w->body == BD_OVER_CHUNK) hdrs[n++] = "Transfer-Encoding: chunked";
        if (w->extra_header && !strcmp(w->extra_header, "64k")) {
            big = malloc(65536 + 16);
            strcpy(big, "X-Big: ");
            memset(big + 7, 'a', 65536);
            big[7 + 65536] = '\0';
            hdrs[n++] = big;
        }
        hdrs[n] = NULL;
        char *path = (w->flags & F_ADMIN) ? admin_text(x, w->path) : NULL;
        if (!w->path) { /* the 64 KiB URL */
            path = malloc(65536 + 64);
            strcpy(path, PUSH "?");
            size_t l = strlen(path);
            memset(path + l, 'a', 65536);
            path[l + 65536] = '\0';
        }
        int holders[HOLDERS];
        bool held = (w->flags & F_OVERLOAD) ? hold_slots(x->r, holders) : true;
        CHECKF(held, "%s: R is overloaded by the held requests", w->what);

        pbt_http h;
        uint16_t port = (w->flags & F_ADMIN) ? x->r->admin_port : x->r->port;
        if (w->flags & F_OBSERVE) /* pbt_http_do cannot send a 64 KiB URL */
            raw_do(port, w->method, path ? path : w->path, hdrs, body, blen, &h);
        else if (w->flags & F_EXPECT)
            curl_expect_do(port, w->path, hdrs, body, blen, &h);
        else
            pbt_http_do("http", port, w->method, path ? path : w->path, hdrs, body, blen, NULL, &h);
        time_t after = time(NULL);
        if (w->flags & F_OVERLOAD) release_slots(x->r, holders);

        bool retry = (w->flags & F_SAME_SECOND) && before != after;
        if (!retry) {
            if (w->flags & F_ADMIN)
                expect_admin(&h, w);
            else if (w->flags & F_OBSERVE) {
                fprintf(stderr, "observed: %s -> %s %ld\n", w->what,
                        h.status ? "HTTP" : "closed without an answer", h.status);
                CHECKF(h.status == 0 || (h.status >= 400 && h.status < 500),
                       "%s: refused with a 4xx or closed, got %ld", w->what, h.status);
            } else
                expect_hrpc(&h, w);
        }
        pbt_http_clear(&h);
        free(path);
        free(big);
        free(auth_hdr);
        free(authz);
        free(body);
        if (!retry) return;
    }
    CHECKF(false, "%s: could not send and get the answer within one second of the clock", w->what);
}

/* ---- state: the admin API's view and the database -------------------------------------------- */

static const char *const USERS[] = {"5", "6", "18446744073709551615", NULL};

/* What the admin API shows that a request could change: the whole inbox, the peers (minus
 * oldest_queued_age_s and next_attempt_in_s, which count seconds on the clock), this
 * server's ID and key, and the guild lists and pending invites of USERS. New reference. */
static json_t *snapshot(const pbt_daemon *d)
{
    json_t *snap = json_object();
    long st;
    json_t *inbox = pbt_inbox_all(d, &st);
    CHECKF(st == 200, "snapshot: inbox %ld", st);
    json_object_set_new(snap, "inbox", inbox);
    json_t *peers = pbt_admin(d, "GET", "/v1/peers", NULL, &st);
    json_t *arr = json_object_get(peers, "peers");
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_object_del(json_array_get(arr, i), "oldest_queued_age_s");
        json_object_del(json_array_get(arr, i), "next_attempt_in_s");
    }
    json_object_set_new(snap, "peers", peers ? peers : json_null());
    json_t *key = pbt_admin(d, "GET", "/v1/key", NULL, &st);
    json_object_set_new(snap, "key", key ? key : json_null());
    for (int u = 0; USERS[u]; u++) {
        char path[96];
        snprintf(path, sizeof path, "/v1/users/%s/guilds", USERS[u]);
        json_t *g = pbt_admin(d, "GET", path, NULL, &st);
        json_object_set_new(snap, path, g ? g : json_null());
        snprintf(path, sizeof path, "/v1/users/%s/invites", USERS[u]);
        json_t *i = pbt_admin(d, "GET", path, NULL, &st);
        json_object_set_new(snap, path, i ? i : json_null());
    }
    return snap;
}

static void append_value(pb_buf *out, sqlite3_stmt *st, int col)
{
    char num[64];
    switch (sqlite3_column_type(st, col)) {
    case SQLITE_NULL:
        pb_buf_append_str(out, "NULL");
        break;
    case SQLITE_INTEGER:
        snprintf(num, sizeof num, "%lld", (long long)sqlite3_column_int64(st, col));
        pb_buf_append_str(out, num);
        break;
    case SQLITE_FLOAT:
        snprintf(num, sizeof num, "%.17g", sqlite3_column_double(st, col));
        pb_buf_append_str(out, num);
        break;
    case SQLITE_TEXT:
        pb_buf_append_str(out, "'");
        pb_buf_append(out, sqlite3_column_text(st, col), (size_t)sqlite3_column_bytes(st, col));
        pb_buf_append_str(out, "'");
        break;
    default: {
        char *hex = pbt_tohex(sqlite3_column_blob(st, col), (size_t)sqlite3_column_bytes(st, col));
        pb_buf_append_str(out, "x'");
        pb_buf_append_str(out, hex);
        pb_buf_append_str(out, "'");
        free(hex);
    }
    }
}

/*
 * Every row of every table of the store at dir/postbox.db, opened read-only with the daemon
 * stopped, as text (one line per row, tables and rows in a fixed order). Everything is
 * compared except one column: peers.key_fetched_at. A token that fails its signature check
 * against a stored key makes the receiver fetch that key once more (PROTOCOL.md section 3:
 * the peer may have rotated it), and storing the fetched key records when it was fetched;
 * the key itself (peers.pubkey) must come back identical and is compared. Nothing else may
 * change: no peer row appears or goes (first_seen, last_contact, delivery and sequence
 * state included), no outbox, inbox, guild, invite, rename or meta row changes (but
 * meta.health_checked_at, which every /healthz writes), and the
 * inbox's AUTOINCREMENT counter (sqlite_sequence) does not move.
 */
static char *db_dump(const pbt_daemon *d)
{
    char uri[600];
    snprintf(uri, sizeof uri, "file:%s/postbox.db?mode=ro", d->dir);
    sqlite3 *db = NULL;
    pb_buf out = PB_BUF_INIT;
    if (sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL) != SQLITE_OK) {
        CHECKF(false, "open %s read-only: %s", uri, db ? sqlite3_errmsg(db) : "?");
        sqlite3_close(db);
        return strdup("");
    }
    sqlite3_stmt *tables = NULL;
    sqlite3_prepare_v2(db, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name", -1,
                       &tables, NULL);
    while (tables && sqlite3_step(tables) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(tables, 0);
        char sql[512];
        sqlite3_stmt *probe = NULL, *st = NULL;
        snprintf(sql, sizeof sql, "SELECT * FROM \"%s\"", name);
        if (sqlite3_prepare_v2(db, sql, -1, &probe, NULL) != SQLITE_OK) {
            CHECKF(false, "dump %s: %s", name, sqlite3_errmsg(db));
            continue;
        }
        int ncol = sqlite3_column_count(probe);
        /* order by every column: a fixed order whatever the table's keys */
        size_t l = (size_t)snprintf(sql, sizeof sql, "SELECT * FROM \"%s\" ORDER BY 1", name);
        for (int c = 2; c <= ncol && l < sizeof sql - 8; c++)
            l += (size_t)snprintf(sql + l, sizeof sql - l, ",%d", c);
        sqlite3_finalize(probe);
        sqlite3_prepare_v2(db, sql, -1, &st, NULL);
        unsigned rows_n = 0;
        while (st && sqlite3_step(st) == SQLITE_ROW) {
            /* /healthz writes its time (a real write, to notice a full disk) */
            if (!strcmp(name, "meta") && sqlite3_column_text(st, 0) &&
                !strcmp((const char *)sqlite3_column_text(st, 0), "health_checked_at"))
                continue;
            pb_buf_append_str(&out, name);
            for (int c = 0; c < ncol; c++) {
                const char *col = sqlite3_column_name(st, c);
                if (!strcmp(name, "peers") && !strcmp(col, "key_fetched_at")) continue;
                pb_buf_append_str(&out, " ");
                pb_buf_append_str(&out, col);
                pb_buf_append_str(&out, "=");
                append_value(&out, st, c);
            }
            pb_buf_append_str(&out, "\n");
            rows_n++;
        }
        char cnt[160];
        snprintf(cnt, sizeof cnt, "-- %s: %u rows\n", name, rows_n);
        pb_buf_append_str(&out, cnt);
        sqlite3_finalize(st);
    }
    sqlite3_finalize(tables);
    sqlite3_close(db);
    pb_buf_append(&out, "", 1);
    return (char *)pb_buf_steal(&out, NULL);
}

/* Prints the first line where two dumps differ. */
static void dump_diff(const char *a, const char *b)
{
    while (*a && *b) {
        size_t la = strcspn(a, "\n"), lb = strcspn(b, "\n");
        if (la != lb || memcmp(a, b, la) != 0) {
            fprintf(stderr, "before: %.*s\nafter:  %.*s\n", (int)la, a, (int)lb, b);
            return;
        }
        a += la + (a[la] ? 1 : 0);
        b += lb + (b[lb] ? 1 : 0);
    }
    fprintf(stderr, "one dump is a prefix of the other:\nbefore: %.200s\nafter:  %.200s\n", a, b);
}

/* ---- setup --------------------------------------------------------------------------------- */

struct inbox_wait {
    const pbt_daemon *d;
    size_t want;
};

static bool inbox_has(void *vctx)
{
    struct inbox_wait *w = vctx;
    long st;
    json_t *r = pbt_admin(w->d, "GET", "/v1/inbox?limit=1000", NULL, &st);
    bool ok = st == 200 && json_array_size(json_object_get(r, "events")) >= w->want;
    json_decref(r);
    return ok;
}

struct queued_wait {
    const pbt_daemon *d;
    const char *peer;
    json_int_t want;
};

static bool peer_queued(void *vctx)
{
    struct queued_wait *w = vctx;
    long st;
    json_t *r = pbt_admin(w->d, "GET", "/v1/peers", NULL, &st);
    json_t *arr = json_object_get(r, "peers");
    bool ok = false;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *p = json_array_get(arr, i);
        const char *id = json_string_value(json_object_get(p, "server_id"));
        const char *mode = json_string_value(json_object_get(p, "mode"));
        if (id && mode && !strcmp(id, w->peer))
            ok = !strcmp(mode, "queued") &&
                 json_integer_value(json_object_get(p, "queued")) == w->want;
    }
    json_decref(r);
    return ok;
}

static bool submit(const pbt_daemon *from, const char *to, const char *events_json)
{
    json_error_t e;
    json_t *evs = json_loads(events_json, 0, &e);
    long st;
    json_t *r =
        pbt_admin(from, "POST", "/v1/outbox", json_pack("{s:s,s:o}", "to", to, "events", evs), &st);
    json_decref(r);
    CHECKF(st == 202, "submit %s -> %s: %ld", from->server_id, to, st);
    return st == 202;
}

static bool setup(struct ctx *x)
{
    const char *rx[] = {"--deny",
                        "denied.example.org:443",
                        "--body-memory",
                        "131072",
                        "--push-retries",
                        "0",
                        "--backoff-min",
                        "3600",
                        "--backoff-max",
                        "3600",
                        "--pull-interval",
                        "3600",
                        NULL};
    x->r = pbt_daemon_new("badR", rx);
    x->b = pbt_daemon_new("badB", NULL);
    x->c = pbt_daemon_new("badC", NULL);
    if (!pbt_daemon_start(x->r) || !pbt_daemon_start(x->b) || !pbt_daemon_start(x->c)) return false;
    x->kb = daemon_keys(x->b);
    const char *seed_hex = json_string_value(
        json_object_get(json_object_get(json_object_get(x->vectors, "keys"), "B"), "seed_hex"));
    size_t n;
    uint8_t *seed = pbt_hex(seed_hex, &n);
    CHECK_OK(pb_keys_from_seed(seed, &x->kvec_b));
    free(seed);
    CHECK_OK(pb_keys_generate(&x->kother));
    snprintf(x->nokey_id, sizeof x->nokey_id, "127.0.0.1:%u", pbt_free_port());

    /* R's state: inbox items, guild lists and invites from B and C; a queue for Q */
    if (!submit(x->b, x->r->server_id,
                "[{\"userAddedToGuild\":{\"userId\":\"5\",\"guildId\":\"77\"}},"
                " {\"userInvited\":{\"userId\":\"5\",\"inviterId\":\"1\",\"inviteId\":\"inv-b\"}},"
                " {\"userAddedToGuild\":{\"userId\":\"18446744073709551615\",\"guildId\":\"7\"}},"
                " {\"userRejectedInvite\":{\"guildId\":\"99\",\"userId\":\"5\",\"inviteId\":"
                "\"приглашение-✓\"}}]") ||
        !submit(
            x->c, x->r->server_id,
            "[{\"userAddedToGuild\":{\"userId\":\"6\",\"guildId\":\"88\"}},"
            " {\"userInvited\":{\"userId\":\"6\",\"inviterId\":\"2\",\"inviteId\":\"inv-c\"}}]"))
        return false;
    struct inbox_wait iw = {x->r, 6};
    CHECKF(pbt_wait_for(inbox_has, &iw, 30000), "R received 6 events from B and C");
    char q[64];
    snprintf(q, sizeof q, "127.0.0.1:%u", pbt_free_port());
    if (!submit(x->r, q,
                "[{\"userAddedToGuild\":{\"userId\":\"1\",\"guildId\":\"2\"}},"
                " {\"userRemovedFromGuild\":{\"userId\":\"1\",\"guildId\":\"2\"}},"
                " {\"userInvited\":{\"userId\":\"3\",\"inviterId\":\"4\",\"inviteId\":\"q\"}}]"))
        return false;
    struct queued_wait qw = {x->r, q, 3};
    CHECKF(pbt_wait_for(peer_queued, &qw, 30000), "R queued 3 events for the unreachable Q");
    return pbt_failed == 0;
}

int main(void)
{
    struct ctx x = {0};
    x.vectors = pbt_vectors();
    if (!setup(&x)) {
        CHECK(!"setup");
        goto out;
    }
    /* the database before, with R stopped; then R again for the table */
    const char *store = getenv("PBT_STORE");
    bool sqlite = !store || !*store || !strcmp(store, "sqlite");
    if (!sqlite) fprintf(stderr, "PBT_STORE=%s: no SQLite file to compare, skipped\n", store);
    /* The snapshots below read the whole inbox, which moves the homeserver's read cursor;
     * a stats sample or scrape stores it (meta inbox_read_cursor) whenever one comes, so
     * on a slow machine during the table. Read it and store it (a scrape) now. */
    json_decref(snapshot(x.r));
    pbt_metric(x.r, "postbox_inbox_unread_events");
    CHECK_INT(pbt_daemon_stop(x.r), 0);
    char *db_before = sqlite ? db_dump(x.r) : strdup("");
    if (!pbt_daemon_start(x.r)) {
        CHECK(!"R restarts");
        free(db_before);
        goto out;
    }
    json_t *before = snapshot(x.r);

    const char *only = getenv("PBT_ONLY"); /* a substring of row names */
    size_t ran = 0;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        if (only && !strstr(rows[i].what, only)) continue;
        run_row(&x, &rows[i]);
        ran++;
    }
    fprintf(stderr, "%zu rows sent\n", ran);

    /* R is still up and healthy, and nothing changed */
    long st;
    json_t *h = pbt_admin(x.r, "GET", "/healthz", NULL, &st);
    json_decref(h);
    CHECKF(st == 200, "R healthy after the table: %ld", st);
    json_t *after = snapshot(x.r);
    bool same = json_equal(before, after);
    CHECKF(same, "the admin API's view of R is unchanged");
    if (!same) {
        char *a = json_dumps(before, JSON_COMPACT | JSON_SORT_KEYS);
        char *b = json_dumps(after, JSON_COMPACT | JSON_SORT_KEYS);
        fprintf(stderr, "before: %.4000s\nafter:  %.4000s\n", a, b);
        free(a);
        free(b);
    }
    CHECK_INT(pbt_daemon_stop(x.r), 0);
    char *db_after = sqlite ? db_dump(x.r) : strdup("");
    if (sqlite) {
        bool db_same = !strcmp(db_before, db_after);
        CHECKF(db_same, "R's database is unchanged (every table, see db_dump)");
        if (!db_same) dump_diff(db_before, db_after);
        CHECKF(strstr(db_before, "-- inbox: 6 rows") && strstr(db_before, "-- outbox: 3 rows"),
               "the compared database holds the inbox and the queue");
    }
    json_decref(before);
    json_decref(after);
    free(db_before);
    free(db_after);
out:
    if (pbt_failed && x.r) pbt_daemon_dump_log(x.r);
    pbt_daemon_free(x.r);
    pbt_daemon_free(x.b);
    pbt_daemon_free(x.c);
    pb_keys_free(x.kb);
    pb_keys_free(x.kvec_b);
    pb_keys_free(x.kother);
    json_decref(x.vectors);
    return pbt_finish();
}
