/*
 * eventjson - the protobuf JSON mapping of protocol.sync.v1.Event, as the admin API speaks
 * it: {"userInvited": {"userId": "1", "inviterId": "300", "inviteId": "inv-Zq9"}}, and the
 * notices a receiving homeserver gives its user (PROTOCOL.md section 5).
 *
 * Parsing follows proto3 JSON where it matters and is strict elsewhere: field names in
 * lowerCamelCase or as in the .proto ("userId" or "user_id"); uint64 as a decimal string
 * or a non-negative JSON integer; missing fields take the proto3 defaults (0, ""); unknown
 * keys, wrong types, null, reals and out-of-range numbers are refused.
 *
 * Untrusted input: every pb_eventjson_parse* function takes admin API input (JSON bodies,
 * URL path segments, query arguments) and refuses anything invalid with PB_ERR_INVAL
 * without writing its out-parameter.
 */
#ifndef PB_EVENTJSON_H
#define PB_EVENTJSON_H

#include <jansson.h>
#include <stdint.h>

#include "postbox.h"

/* Longest invite ID accepted, in bytes of UTF-8. */
#define PB_EVENTJSON_MAX_INVITE_ID 4096

/*
 * Parses an Event object. On PB_OK *out is filled and owned by the caller (pb_event_clear;
 * invite_id is never NULL for the kinds that carry one). On error (always PB_ERR_INVAL)
 * *out is untouched and, when why is not NULL, *why is a message naming the offending part
 * ("event.userInvited.userId: ...") that the caller frees; *why is NULL on success.
 * Messages contain printable ASCII only (user-supplied key names are sanitised).
 */
pb_err pb_eventjson_parse(const json_t *j, pb_event *out, char **why);

/*
 * The JSON form of ev: a new reference the caller owns (json_decref). Every field of the
 * kind is emitted, zeros included; uint64 as decimal strings. NULL for PB_EV_NONE, for an
 * invite kind without invite_id, or when invite_id is not valid UTF-8.
 */
json_t *pb_eventjson_format(const pb_event *ev);

/* One uint64 value: a decimal string (digits only, leading zeros allowed) or a JSON
 * integer >= 0. PB_ERR_INVAL (nothing written) otherwise, including reals and null. */
pb_err pb_eventjson_parse_u64(const json_t *v, uint64_t *out);

/* A decimal string only (URL path segments, query arguments): digits, not empty, at most
 * 18446744073709551615. PB_ERR_INVAL (nothing written) otherwise; s may be NULL. */
pb_err pb_eventjson_parse_u64_str(const char *s, uint64_t *out);

/*
 * What the receiving homeserver tells its user about ev from sender_server_id (S):
 *   userAddedToGuild     -> {"guildAddedToList": {"guildId", "homeserver": S}}
 *   userRemovedFromGuild -> {"guildRemovedFromList": {"guildId", "homeserver": S}}
 *   userInvited          -> {"inviteReceived": {"inviteId", "serverId": S, "inviterId"}}
 *   userRejectedInvite   -> {"inviteRejected": {"guildId", "inviteId", "userId"}}
 * uint64 as decimal strings. A new reference the caller owns; NULL for PB_EV_NONE, a NULL
 * sender, or strings that are not valid UTF-8.
 */
json_t *pb_eventjson_notice(const pb_event *ev, const char *sender_server_id);

#endif
