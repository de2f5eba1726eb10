/*
 * inbound - the PostboxService handlers (Push, Pull, NotifyNewId) and the hooks the hRPC
 * server calls during authentication, over a pb_delivery (ctx).
 *
 * Push (PROTOCOL.md 4, 6, 7): the events are applied and appended to the inbox in one
 * store transaction before the 200. Between postboxes of this project (a token bound to
 * us) the sequence numbers, epoch and batch are honoured and the answer acknowledges;
 * otherwise the request is exactly a foreign peer's (one event, no extension). A Push
 * whose sender is being pulled waits for that Pull, suspended; one over the receive budget
 * of the sender, of the key that signed its token or of the client's address (budget.h)
 * gets 429 with RetryInfo and stores nothing.
 *
 * Pull: a bound puller acknowledges what it holds (in our epoch) and gets events with
 * their sequence numbers, at most its own limits and ours, from postbox_from_seq when it
 * pipelines (PROTOCOL.md 5: above what it acknowledges, in our epoch); a foreign puller is answered
 * only from a queue nobody is draining, and what it was answered is forgotten once the
 * answer is written.
 *
 * NotifyNewId (4.6, 7.2): the token names the old ID and must verify with the key we hold
 * for it; the key served at the new ID must be the same (fetched through keyfetch,
 * waiting suspended). With the proof of possession (a token naming the new ID, bound to
 * us, same key) the rename is made at once; without it, it is recorded as pending and
 * completed by the first authenticated request whose token names the new ID and verifies
 * with the old key (pb_inbound_rename_key / _proven), or expires after 24 hours. A later
 * unproven notice never replaces a pending one (anyone may replay an unbound token of the
 * old ID within its window): up to PB_STORE_RENAMES_IN_MAX are kept per old ID, more are
 * answered 429, and the one proven first wins (the others of that old ID are dropped).
 *
 * Untrusted input: request bodies (decoded by wire, bounded by the listener's max_body
 * and push_max_events), the tokens (auth), the rename proof.
 */
#ifndef PB_INBOUND_H
#define PB_INBOUND_H

#include <stdbool.h>
#include <stdint.h>

#include "delivery/delivery.h"
#include "net/hrpc_server.h"

/* hRPC handlers; ctx is the pb_delivery. */
void pb_inbound_push(void *ctx, const pb_hrpc_request *req, pb_hrpc_reply *rep);
void pb_inbound_pull(void *ctx, const pb_hrpc_request *req, pb_hrpc_reply *rep);
void pb_inbound_notify(void *ctx, const pb_hrpc_request *req, pb_hrpc_reply *rep);

/* pb_hrpc_auth hooks; ctx is the pb_delivery. */
void pb_inbound_contact(void *ctx, const char *peer, bool bound);
bool pb_inbound_rename_key(void *ctx, const char *server_id, uint8_t key[32]);
pb_err pb_inbound_rename_proven(void *ctx, const char *server_id);

#endif
