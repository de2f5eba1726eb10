/*
 * error - pb_strerror and the event helpers of postbox.h (util layer, no dependencies).
 */
#include "postbox.h"

#include <stdlib.h>
#include <string.h>

#include "util/mem.h"

static const char *const messages[PB_ERR__COUNT] = {
    [PB_OK] = "success",
    [PB_ERR_INVAL] = "invalid argument",
    [PB_ERR_DECODE] = "message does not decode",
    [PB_ERR_TOO_BIG] = "too large",
    [PB_ERR_NOT_FOUND] = "not found",
    [PB_ERR_EXISTS] = "already exists",
    [PB_ERR_IO] = "I/O error",
    [PB_ERR_STORE] = "store unavailable",
    [PB_ERR_CORRUPT] = "local state is corrupt",
    [PB_ERR_CRYPTO] = "cryptographic failure",
    [PB_ERR_AUTH] = "authentication refused",
    [PB_ERR_NET] = "network error",
    [PB_ERR_TIMEOUT] = "timed out",
    [PB_ERR_TLS] = "TLS error",
    [PB_ERR_PEER] = "peer answered an error",
    [PB_ERR_PROTO] = "peer answered invalid hRPC",
    [PB_ERR_CONFIG] = "invalid configuration",
    [PB_ERR_BUSY] = "busy",
    [PB_ERR_SHUTDOWN] = "shutting down",
    [PB_ERR_INTERNAL] = "internal error",
    [PB_ERR_DISK_FULL] = "disk full",
};

const char *pb_strerror(pb_err err)
{
    if ((unsigned)err >= PB_ERR__COUNT || !messages[err]) return "unknown error";
    return messages[err];
}

void pb_event_clear(pb_event *ev)
{
    if (!ev) return;
    free(ev->invite_id);
    memset(ev, 0, sizeof *ev);
}

void pb_event_copy(pb_event *dst, const pb_event *src)
{
    *dst = *src;
    dst->invite_id = src->invite_id ? pb_xstrdup(src->invite_id) : NULL;
}

bool pb_event_equal(const pb_event *a, const pb_event *b)
{
    if (a->kind != b->kind || a->user_id != b->user_id || a->guild_id != b->guild_id ||
        a->inviter_id != b->inviter_id)
        return false;
    if (!a->invite_id || !b->invite_id) return a->invite_id == b->invite_id;
    return strcmp(a->invite_id, b->invite_id) == 0;
}

const char *pb_event_kind_name(pb_event_kind kind)
{
    switch (kind) {
    case PB_EV_USER_REMOVED_FROM_GUILD:
        return "userRemovedFromGuild";
    case PB_EV_USER_ADDED_TO_GUILD:
        return "userAddedToGuild";
    case PB_EV_USER_INVITED:
        return "userInvited";
    case PB_EV_USER_REJECTED_INVITE:
        return "userRejectedInvite";
    default:
        return NULL;
    }
}
