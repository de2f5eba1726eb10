/*
 * peerkeys - where the daemon gets a peer's public key: the store first, else a fetch
 * from the peer's protocol.auth.v1.AuthService/Key, which is then kept durably. A
 * re-fetch (after a signature failed with a known key: the peer may have rotated it) is
 * made at most once per peer per min_refetch_s, so that bad tokens cannot make this
 * server hammer a third party; a first fetch of an unknown peer's key is limited the same
 * way. Implements auth.h's pb_auth_key_fn.
 *
 * Untrusted input: KeyResponse answers from peers (decoded and length-checked by the
 * client and wire modules).
 */
#ifndef PB_PEERKEYS_H
#define PB_PEERKEYS_H

#include "crypto/auth.h"
#include "net/hrpc_client.h"
#include "store/store.h"

typedef struct pb_peerkeys pb_peerkeys;

/* store and client are borrowed and must outlive the result; min_refetch_s <= 0 means 30.
 * Caller frees with pb_peerkeys_free. */
pb_peerkeys *pb_peerkeys_new(pb_store *store, pb_client *client, int min_refetch_s);
void pb_peerkeys_free(pb_peerkeys *pk); /* NULL is a no-op */

/* pb_auth_key_fn over a pb_peerkeys (ctx). */
pb_err pb_peerkeys_get(void *ctx, const char *server_id, bool refresh, uint8_t key[32],
                       bool *fresh);

/* Fetches the key served at server_id now, bypassing the store and the rate limit (used
 * by NotifyNewId, which must compare the key served at the new ID). Not stored. */
pb_err pb_peerkeys_fetch_remote(pb_peerkeys *pk, const char *server_id, uint8_t key[32]);

#endif
