/*
 * nodebeat - one live node per node_id on a shared (PostgreSQL) store.
 *
 * Each node of a multi-node setup holds a heartbeat: a lease in the store's leases table
 * under a key no server ID can take ("#node/" + node_id), held by this process alone (the
 * node_id plus a random instance tag) and renewed every third of lease_ttl by a thread of
 * its own. A second live node started with the same node_id finds the lease held by
 * another instance; it waits up to lease_ttl (plus a second) for it to expire, since that
 * is what a node restarting after a crash sees of its own former self, and is refused if
 * the lease is still being renewed then.
 */
#ifndef PB_NODEBEAT_H
#define PB_NODEBEAT_H

#include <stdint.h>

#include "store/store.h"

typedef struct pb_nodebeat pb_nodebeat;

/* Takes node_id's heartbeat in store s (waiting up to ttl_ms + 1 s, saying why, for
 * another instance's to expire), then renews it until pb_nodebeat_close. On PB_OK *out
 * is the caller's. PB_ERR_BUSY when another live node holds it (logged, naming the
 * setting to change); a store error as it came. The store must outlive the heartbeat. */
pb_err pb_nodebeat_open(pb_store *s, const char *node_id, int64_t ttl_ms, pb_nodebeat **out);
/* Stops renewing and gives the heartbeat up, so the node may start again at once.
 * NULL is a no-op. */
void pb_nodebeat_close(pb_nodebeat *b);

/* The store key of node_id's heartbeat (no server ID begins with '#'); caller frees. */
char *pb_nodebeat_key(const char *node_id);

#endif
