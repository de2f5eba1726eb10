/*
 * store_impl - the contract between store.c (the public pb_store_* API) and the store's
 * operations (store_ops.c, written once over the engine drivers of store_driver.h).
 * Library-internal; callers of the store never include it.
 *
 * An engine is one const pb_store_ops table (the same operations, opened with the
 * engine's driver). store.c parses the spec, picks the table, validates arguments and
 * normalises options, then calls through the table with the store's own handle (an
 * opaque void *). Every op may assume its arguments were checked by store.c (non-NULL,
 * strings NUL-terminated, opts fully defaulted). Write ops honour the durability
 * contract of store.h (return PB_OK only after commit).
 *
 * Adding a store operation: declare it in store.h, add a member here, write it once in
 * store_ops.c, and add the thin dispatch function to store.c (docs/DESIGN.md "Store
 * code").
 */
#ifndef PB_STORE_IMPL_H
#define PB_STORE_IMPL_H

#include <sodium.h>

#include "store/store.h"

typedef struct pb_store_ops {
    const char *name;      /* "sqlite", "postgres" */
    bool ordered_receives; /* receive_async runs writes in queue order (one writer) */

    /* location: the spec with the backend prefix removed. On PB_OK *impl is the backend's
     * handle, owned by the caller (freed with close). */
    pb_err (*open)(const char *location, const pb_store_opts *opts, void **impl);
    /* Drains queued writes, stops worker threads, releases everything. */
    void (*close)(void *impl);

    pb_err (*ping)(void *impl);
    pb_err (*schema_version)(void *impl, int *version);
    pb_err (*integrity_check)(void *impl);
    /* PB_ERR_INVAL where the engine has no online copy (store_driver.h backup). */
    pb_err (*backup)(void *impl, int *fd, uint64_t *size);
    void (*stats_get)(void *impl, pb_store_stats *out);
    void (*set_executor)(void *impl, pb_exec *e); /* optional (store.h) */

    pb_err (*meta_get)(void *impl, const char *key, char **val);
    pb_err (*meta_set)(void *impl, const char *key, const char *val);

    pb_err (*peer_touch)(void *impl, const char *server_id, int64_t contact_at);
    pb_err (*peer_key_get)(void *impl, const char *server_id, uint8_t key[PB_PUBKEY_LEN]);
    pb_err (*peer_key_set)(void *impl, const char *server_id, const uint8_t key[PB_PUBKEY_LEN],
                           int64_t fetched_at);
    pb_err (*peer_list)(void *impl, pb_peer_info **peers, size_t *count);

    /* delivery engine state (store.h "delivery engine state"); store.c has checked the
     * arguments: strings non-empty, evs non-NULL with n >= 1 for append, mode in range,
     * max_items / limit >= 1. */
    pb_err (*peer_state_get)(void *impl, const char *server_id, pb_peer_state *out);
    pb_err (*peer_state_list)(void *impl, pb_peer_state **out, size_t *count);
    pb_err (*peer_state_set)(void *impl, const char *server_id, pb_peer_mode mode,
                             uint32_t attempts, int64_t next_attempt_at, const char *last_error,
                             uint64_t parked_seq);
    /* submission_id NULL or valid (store.h pb_store_outbox_submit); *duplicate and
     * *last_seq are set on PB_OK (both non-NULL) */
    pb_err (*outbox_append)(void *impl, const char *peer, const pb_event *evs, size_t n,
                            int64_t now, const char *submission_id, uint64_t *last_seq,
                            bool *duplicate);
    /* as outbox_append, then cb (store.h pb_store_outbox_submit_async) */
    pb_err (*outbox_append_async)(void *impl, const char *peer, const pb_event *evs, size_t n,
                                  int64_t now, const char *submission_id, pb_store_submit_cb cb,
                                  void *arg);
    pb_err (*outbox_read)(void *impl, const char *peer, uint64_t from_seq, size_t max_items,
                          size_t max_bytes, pb_outbox_item **items, size_t *n);
    pb_err (*outbox_ack)(void *impl, const char *peer, uint64_t upto);
    pb_err (*outbox_ack_many)(void *impl, const char *const *peers, const uint64_t *upto, size_t n);
    pb_err (*outbox_remove)(void *impl, const char *peer, uint64_t seq);
    /* *res is always non-NULL (store.c passes its own) */
    pb_err (*receive)(void *impl, const char *from, uint64_t epoch, const pb_event *evs,
                      const uint64_t *seqs, size_t n, int64_t now, pb_recv_result *res);
    /* as receive, then cb (store.h pb_store_receive_async) */
    pb_err (*receive_async)(void *impl, const char *from, uint64_t epoch, uint64_t after,
                            const pb_event *evs, const uint64_t *seqs, size_t n, int64_t now,
                            pb_store_recv_cb cb, void *arg);
    pb_err (*inbox_read)(void *impl, uint64_t after, size_t limit, pb_inbox_item **items,
                         size_t *n);
    pb_err (*inbox_last_seq)(void *impl, uint64_t *seq);
    pb_err (*guilds)(void *impl, uint64_t user_id, pb_guild_entry **out, size_t *n);
    pb_err (*invites)(void *impl, uint64_t user_id, pb_invite_entry **out, size_t *n);
    pb_err (*peer_rename)(void *impl, const char *old_id, const char *new_id,
                          const uint8_t new_key[PB_PUBKEY_LEN], int64_t now);
    pb_err (*self_rename)(void *impl, const char *old_id, const char *new_id, int64_t now);
    pb_err (*rename_out_list)(void *impl, pb_rename_out **out, size_t *n);
    pb_err (*rename_out_done)(void *impl, const char *peer, const char *new_id);
    pb_err (*rename_out_failed)(void *impl, const char *peer, uint32_t attempts,
                                int64_t next_attempt_at, const char *error);
    /* store.c has checked: strings non-empty, now_ms >= 0, ttl_ms > 0, no overflow */
    pb_err (*lease_acquire)(void *impl, const char *peer, const char *node_id, int64_t now_ms,
                            int64_t ttl_ms, bool *held);
    pb_err (*lease_release)(void *impl, const char *peer, const char *node_id);
    pb_err (*outbox_peers)(void *impl, char ***peers, size_t *n);
    /* monitoring (store.h "monitoring") */
    /* buckets false: pb_store_queue_summary */
    pb_err (*qshape)(void *impl, int64_t now_ms, bool buckets, pb_qshape_row **rows, size_t *n);
    pb_err (*peer_mode_counts)(void *impl, uint64_t counts[3]);
    pb_err (*inbox_unread)(void *impl, uint64_t after, uint64_t *count, int64_t *oldest_at);

    /* sequence epochs and pending incoming renames; store.c has checked: strings
     * non-empty, out-params non-NULL (*created_at and *removed included: store.c passes
     * its own), old_id != new_id for rename_in_add */
    pb_err (*peer_new_epoch)(void *impl, const char *peer, uint64_t *epoch);
    pb_err (*recv_latest)(void *impl, const char *from, uint64_t *epoch, uint64_t *recv_seq);
    pb_err (*rename_in_add)(void *impl, const char *old_id, const char *new_id, int64_t now);
    pb_err (*rename_in_find)(void *impl, const char *new_id, char **old_id, int64_t *created_at);
    pb_err (*rename_in_remove)(void *impl, const char *old_id);
    pb_err (*rename_in_list)(void *impl, pb_rename_in **out, size_t *n);
    pb_err (*rename_in_expire)(void *impl, int64_t before, size_t *removed);
    /* queue control; store.c has checked: strings non-empty (peer may be NULL for
     * peer_flush), out-params non-NULL (store.c passes its own) */
    pb_err (*peer_flush)(void *impl, const char *peer, int64_t now, bool record, char ***peers,
                         size_t *n);
    pb_err (*flush_list)(void *impl, pb_flush_req **out, size_t *n);
    pb_err (*flush_done)(void *impl, const char *peer, int64_t requested_at);
    pb_err (*outbox_drop)(void *impl, const char *peer, int64_t before, const char *reason,
                          int64_t now, bool record, pb_drop_result *res);
    pb_err (*outbox_expired_peers)(void *impl, int64_t before, char ***peers, size_t *n);

    /* Test-only fault points (PB_FAULTS builds); a backend may leave them NULL, and
     * store.c then makes them no-ops (pb_store_fault_bad_write returns PB_ERR_INTERNAL). */
    void (*fault_set)(void *impl, pb_err err);
    void (*fault_hold)(void *impl, bool hold);
    size_t (*fault_queued)(void *impl);
    pb_err (*fault_bad_write)(void *impl, const char *key);
    void (*fault_checkpoint)(void *impl, int mode);
} pb_store_ops;

/* Submission records created before this time (ms) may be pruned by an append at now. */
static inline int64_t pb_store_submission_cutoff(int64_t now)
{
    return now > INT64_MIN + PB_STORE_SUBMISSION_KEEP_MS ? now - PB_STORE_SUBMISSION_KEEP_MS
                                                         : INT64_MIN;
}

/* A fresh sender epoch (store.h "sequence epochs"): random (libsodium, initialised by
 * pb_store_open), never 0 (the legacy epoch) and never avoid. Appends draw one for a peer
 * row they may create, so the bytes come from a per-thread pool that libsodium refills
 * 32 epochs at a time (one getrandom system call per 32 submissions, not per submission). */
uint64_t pb_store_epoch_random(uint64_t avoid);

extern const pb_store_ops pb_store_sqlite_ops;
extern const pb_store_ops pb_store_pg_ops;

#endif
