/*
 * store - the public pb_store_* API (see store.h): option helpers, spec parsing and
 * dispatch to a backend's ops table (store_impl.h).
 *
 * Design: a pb_store is {ops, backend handle} and two counters. This file checks
 * arguments and normalises options so every backend sees the same validated calls; it
 * holds no SQL. The counters (pb_store_outbox_quiet) count the calls that delete or
 * re-label queued events other than appends and the engine's own forgets: started and
 * finished. Opening initialises libsodium (store_ops.c draws sender epochs
 * from it). Backends are chosen by the spec's prefix ("sqlite:" or a plain path:
 * SQLite; "postgres://" or "postgresql://": PostgreSQL, which gets the whole URI).
 *
 * Untrusted input: the spec and options come from the operator's configuration; they are
 * validated here and refused with PB_ERR_CONFIG and a log line.
 */
#include "store/store.h"

#include <sodium.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/log.h"
#include "util/mem.h"
#include "store/store_impl.h"

struct pb_store {
    const pb_store_ops *ops;
    void *impl;
    /* queue changes (pb_store_outbox_quiet): started, finished */
    atomic_uint_fast64_t chg_begun, chg_ended;
};

/* Around a call that may delete or re-label queued events (not an append, not
 * pb_store_outbox_ack_many: the engine's forgets of what it delivered). */
static void chg_begin(pb_store *s)
{
    atomic_fetch_add(&s->chg_begun, 1);
}

static pb_err chg_end(pb_store *s, pb_err err)
{
    atomic_fetch_add(&s->chg_ended, 1);
    return err;
}

bool pb_store_outbox_quiet(pb_store *s, uint64_t *gen)
{
    uint64_t ended = atomic_load(&s->chg_ended);
    *gen = atomic_load(&s->chg_begun);
    return *gen == ended;
}

void pb_store_opts_default(pb_store_opts *o)
{
    o->sync = PB_SYNC_FULL;
    o->busy_timeout_ms = PB_STORE_BUSY_TIMEOUT_DEFAULT;
    o->max_batch = PB_STORE_MAX_BATCH_DEFAULT;
    o->model_log_rows = PB_STORE_MODEL_LOG_DEFAULT;
    o->checkpoint_pages = PB_STORE_CHECKPOINT_PAGES_DEFAULT;
    o->metrics = NULL;
}

pb_err pb_store_sync_parse(const char *s, pb_store_sync *out)
{
    if (!s || !out) return PB_ERR_INVAL;
    if (strcmp(s, "off") == 0) {
        *out = PB_SYNC_OFF;
    } else if (strcmp(s, "normal") == 0) {
        *out = PB_SYNC_NORMAL;
    } else if (strcmp(s, "full") == 0) {
        *out = PB_SYNC_FULL;
    } else {
        return PB_ERR_INVAL;
    }
    return PB_OK;
}

const char *pb_store_sync_name(pb_store_sync s)
{
    switch (s) {
    case PB_SYNC_OFF:
        return "off";
    case PB_SYNC_NORMAL:
        return "normal";
    case PB_SYNC_DEFAULT:
    case PB_SYNC_FULL:
        return "full";
    }
    return "unknown";
}

/* Fills *out from opts (NULL = defaults), replacing zero fields by their defaults. */
static pb_err opts_normalise(const pb_store_opts *opts, pb_store_opts *out)
{
    pb_store_opts o;
    pb_store_opts_default(&o);
    if (!opts) {
        *out = o;
        return PB_OK;
    }
    if (opts->sync != PB_SYNC_DEFAULT) {
        if (opts->sync != PB_SYNC_OFF && opts->sync != PB_SYNC_NORMAL &&
            opts->sync != PB_SYNC_FULL) {
            PB_ERROR(NULL, "store: invalid sync level %d", (int)opts->sync);
            return PB_ERR_CONFIG;
        }
        o.sync = opts->sync;
    }
    if (opts->busy_timeout_ms < 0) {
        PB_ERROR(NULL, "store: busy_timeout_ms must not be negative (%d)", opts->busy_timeout_ms);
        return PB_ERR_CONFIG;
    }
    if (opts->busy_timeout_ms > 0) o.busy_timeout_ms = opts->busy_timeout_ms;
    if (opts->max_batch < 0 || opts->max_batch > PB_STORE_MAX_BATCH_LIMIT) {
        PB_ERROR(NULL, "store: max_batch must be 1..%d (%d)", PB_STORE_MAX_BATCH_LIMIT,
                 opts->max_batch);
        return PB_ERR_CONFIG;
    }
    if (opts->max_batch > 0) o.max_batch = opts->max_batch;
    if (opts->model_log_rows < 0 || opts->model_log_rows > PB_STORE_MODEL_LOG_LIMIT) {
        PB_ERROR(NULL, "store: model_log_rows must be 1..%d (%d)", PB_STORE_MODEL_LOG_LIMIT,
                 opts->model_log_rows);
        return PB_ERR_CONFIG;
    }
    if (opts->model_log_rows > 0) o.model_log_rows = opts->model_log_rows;
    if (opts->checkpoint_pages < 0 || opts->checkpoint_pages > PB_STORE_CHECKPOINT_PAGES_LIMIT) {
        PB_ERROR(NULL, "store: checkpoint_pages must be 1..%d (%d)",
                 PB_STORE_CHECKPOINT_PAGES_LIMIT, opts->checkpoint_pages);
        return PB_ERR_CONFIG;
    }
    if (opts->checkpoint_pages > 0) o.checkpoint_pages = opts->checkpoint_pages;
    o.metrics = opts->metrics;
    *out = o;
    return PB_OK;
}

pb_err pb_store_open(const char *spec, const pb_store_opts *opts, pb_store **out)
{
    if (!spec || !out) return PB_ERR_INVAL;
    pb_store_opts o;
    pb_err err = opts_normalise(opts, &o);
    if (err != PB_OK) return err;

    const pb_store_ops *ops = &pb_store_sqlite_ops;
    const char *location = spec;
    if (strncmp(spec, "sqlite:", 7) == 0) {
        location = spec + 7;
    } else if (strncmp(spec, "postgres://", 11) == 0 || strncmp(spec, "postgresql://", 13) == 0) {
        ops = &pb_store_pg_ops;
    } else if (strncmp(spec, "postgres:", 9) == 0 || strncmp(spec, "postgresql:", 11) == 0) {
        PB_ERROR(NULL, "store: a PostgreSQL store is a URI: postgresql://[user@]host[:port]/db");
        return PB_ERR_CONFIG;
    }
    if (location[0] == '\0') {
        PB_ERROR(NULL, "store: empty database path in \"%s\"", spec);
        return PB_ERR_CONFIG;
    }

    if (sodium_init() < 0) { /* sender epochs are random (pb_store_epoch_random) */
        PB_ERROR(NULL, "store: libsodium cannot be initialised");
        return PB_ERR_INTERNAL;
    }
    void *impl = NULL;
    err = ops->open(location, &o, &impl);
    if (err != PB_OK) return err;
    pb_store *s = pb_xcalloc(1, sizeof *s);
    s->ops = ops;
    s->impl = impl;
    *out = s;
    return PB_OK;
}

char *pb_store_spec_redact(const char *spec)
{
    if (!spec) return pb_xstrdup("");
    if (strncmp(spec, "postgres://", 11) != 0 && strncmp(spec, "postgresql://", 13) != 0)
        return pb_xstrdup(spec);
    pb_buf out = PB_BUF_INIT;
    const char *auth = strstr(spec, "://") + 3;
    size_t alen = strcspn(auth, "/?");
    const char *at = NULL; /* the last '@' of the authority ends the user info */
    for (const char *q = auth; q < auth + alen; q++)
        if (*q == '@') at = q;
    const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    if (colon) {
        pb_buf_append(&out, spec, (size_t)(colon + 1 - spec));
        pb_buf_append_str(&out, "***");
        pb_buf_append_str(&out, at); /* "@host..." and the rest, handled below */
    } else {
        pb_buf_append_str(&out, spec);
    }
    pb_buf_append(&out, "", 1);
    /* password=... in the query string */
    char *r = (char *)pb_buf_steal(&out, NULL);
    char *q = strchr(r, '?');
    while (q) {
        char *param = q + 1;
        if (strncmp(param, "password=", 9) == 0) {
            size_t vlen = strcspn(param + 9, "&");
            char *fixed = pb_xasprintf("%.*s***%s", (int)(param + 9 - r), r, param + 9 + vlen);
            size_t off = (size_t)(param - r);
            free(r);
            r = fixed;
            param = r + off;
        }
        q = strchr(param, '&');
    }
    return r;
}

void pb_store_close(pb_store *s)
{
    if (!s) return;
    s->ops->close(s->impl);
    free(s);
}

pb_err pb_store_ping(pb_store *s)
{
    if (!s) return PB_ERR_INVAL;
    return s->ops->ping(s->impl);
}

pb_err pb_store_schema_version(pb_store *s, int *version)
{
    if (!s || !version) return PB_ERR_INVAL;
    return s->ops->schema_version(s->impl, version);
}

pb_err pb_store_integrity_check(pb_store *s)
{
    if (!s) return PB_ERR_INVAL;
    return s->ops->integrity_check(s->impl);
}

pb_err pb_store_backup(pb_store *s, int *fd, uint64_t *size)
{
    if (!s || !fd || !size) return PB_ERR_INVAL;
    if (!s->ops->backup) return PB_ERR_INVAL;
    return s->ops->backup(s->impl, fd, size);
}

void pb_store_stats_get(pb_store *s, pb_store_stats *out)
{
    if (!out) return;
    memset(out, 0, sizeof *out);
    if (s) s->ops->stats_get(s->impl, out);
}

void pb_store_set_executor(pb_store *s, pb_exec *e)
{
    if (s && s->ops->set_executor) s->ops->set_executor(s->impl, e);
}

const char *pb_store_backend(pb_store *s)
{
    return s ? s->ops->name : "none";
}

pb_err pb_store_meta_get(pb_store *s, const char *key, char **val)
{
    if (!s || !key || !*key || !val) return PB_ERR_INVAL;
    return s->ops->meta_get(s->impl, key, val);
}

pb_err pb_store_meta_set(pb_store *s, const char *key, const char *val)
{
    if (!s || !key || !*key || !val) return PB_ERR_INVAL;
    return s->ops->meta_set(s->impl, key, val);
}

pb_err pb_store_peer_touch(pb_store *s, const char *server_id, int64_t contact_at)
{
    if (!s || !server_id || !*server_id || contact_at < 0) return PB_ERR_INVAL;
    return s->ops->peer_touch(s->impl, server_id, contact_at);
}

pb_err pb_store_peer_key_get(pb_store *s, const char *server_id, uint8_t key[PB_PUBKEY_LEN])
{
    if (!s || !server_id || !*server_id || !key) return PB_ERR_INVAL;
    return s->ops->peer_key_get(s->impl, server_id, key);
}

pb_err pb_store_peer_key_set(pb_store *s, const char *server_id, const uint8_t key[PB_PUBKEY_LEN],
                             int64_t fetched_at)
{
    if (!s || !server_id || !*server_id || !key || fetched_at < 0) return PB_ERR_INVAL;
    return s->ops->peer_key_set(s->impl, server_id, key, fetched_at);
}

pb_err pb_store_peer_list(pb_store *s, pb_peer_info **peers, size_t *count)
{
    if (!s || !peers || !count) return PB_ERR_INVAL;
    return s->ops->peer_list(s->impl, peers, count);
}

void pb_peer_info_free_array(pb_peer_info *peers, size_t count)
{
    if (!peers) return;
    for (size_t i = 0; i < count; i++)
        free(peers[i].server_id);
    free(peers);
}

/* ---- delivery engine state -------------------------------------------------------------- */

static bool id_ok(const char *s)
{
    return s && *s;
}

void pb_peer_state_clear(pb_peer_state *st)
{
    if (!st) return;
    free(st->server_id);
    free(st->last_error);
    memset(st, 0, sizeof *st);
}

void pb_peer_state_free_array(pb_peer_state *sts, size_t count)
{
    if (!sts) return;
    for (size_t i = 0; i < count; i++)
        pb_peer_state_clear(&sts[i]);
    free(sts);
}

pb_err pb_store_peer_state_get(pb_store *s, const char *server_id, pb_peer_state *out)
{
    if (!s || !id_ok(server_id) || !out) return PB_ERR_INVAL;
    return s->ops->peer_state_get(s->impl, server_id, out);
}

pb_err pb_store_peer_state_list(pb_store *s, pb_peer_state **out, size_t *count)
{
    if (!s || !out || !count) return PB_ERR_INVAL;
    return s->ops->peer_state_list(s->impl, out, count);
}

pb_err pb_store_peer_state_set(pb_store *s, const char *server_id, pb_peer_mode mode,
                               uint32_t attempts, int64_t next_attempt_at, const char *last_error,
                               uint64_t parked_seq)
{
    if (!s || !id_ok(server_id) || (int)mode < PB_MODE_PUSH || mode > PB_MODE_PARKED)
        return PB_ERR_INVAL;
    return s->ops->peer_state_set(s->impl, server_id, mode, attempts, next_attempt_at, last_error,
                                  parked_seq);
}

pb_err pb_store_peer_new_epoch(pb_store *s, const char *peer, uint64_t *epoch)
{
    if (!s || !id_ok(peer) || !epoch) return PB_ERR_INVAL;
    chg_begin(s);
    return chg_end(s, s->ops->peer_new_epoch(s->impl, peer, epoch));
}

pb_err pb_store_outbox_append(pb_store *s, const char *peer, const pb_event *evs, size_t n,
                              int64_t now, uint64_t *last_seq)
{
    return pb_store_outbox_submit(s, peer, evs, n, now, NULL, last_seq, NULL);
}

bool pb_store_submission_id_valid(const char *id)
{
    if (!id || !id[0]) return false;
    size_t i = 0;
    for (; id[i]; i++)
        if (i >= PB_SUBMISSION_ID_MAX || (unsigned char)id[i] < 0x20 || (unsigned char)id[i] > 0x7e)
            return false;
    return true;
}

pb_err pb_store_outbox_submit(pb_store *s, const char *peer, const pb_event *evs, size_t n,
                              int64_t now, const char *submission_id, uint64_t *last_seq,
                              bool *duplicate)
{
    if (!s || !id_ok(peer) || !evs || n == 0) return PB_ERR_INVAL;
    if (submission_id && !pb_store_submission_id_valid(submission_id)) return PB_ERR_INVAL;
    uint64_t last = 0;
    bool dup = false;
    pb_err err = s->ops->outbox_append(s->impl, peer, evs, n, now, submission_id, &last, &dup);
    if (err != PB_OK) return err;
    if (last_seq) *last_seq = last;
    if (duplicate) *duplicate = dup;
    return PB_OK;
}

pb_err pb_store_outbox_submit_async(pb_store *s, const char *peer, const pb_event *evs, size_t n,
                                    int64_t now, const char *submission_id, pb_store_submit_cb cb,
                                    void *arg)
{
    if (!s || !id_ok(peer) || !evs || n == 0 || !cb) return PB_ERR_INVAL;
    if (submission_id && !pb_store_submission_id_valid(submission_id)) return PB_ERR_INVAL;
    return s->ops->outbox_append_async(s->impl, peer, evs, n, now, submission_id, cb, arg);
}

void pb_outbox_items_free(pb_outbox_item *items, size_t n)
{
    if (!items) return;
    for (size_t i = 0; i < n; i++)
        pb_event_clear(&items[i].ev);
    free(items);
}

pb_err pb_store_outbox_read(pb_store *s, const char *peer, uint64_t from_seq, size_t max_items,
                            size_t max_bytes, pb_outbox_item **items, size_t *n)
{
    if (!s || !id_ok(peer) || max_items == 0 || !items || !n) return PB_ERR_INVAL;
    return s->ops->outbox_read(s->impl, peer, from_seq, max_items, max_bytes, items, n);
}

pb_err pb_store_outbox_ack(pb_store *s, const char *peer, uint64_t upto)
{
    if (!s || !id_ok(peer)) return PB_ERR_INVAL;
    chg_begin(s);
    return chg_end(s, s->ops->outbox_ack(s->impl, peer, upto));
}

pb_err pb_store_outbox_ack_many(pb_store *s, const char *const *peers, const uint64_t *upto,
                                size_t n)
{
    if (!s || (n && (!peers || !upto))) return PB_ERR_INVAL;
    for (size_t i = 0; i < n; i++)
        if (!id_ok(peers[i])) return PB_ERR_INVAL;
    if (n == 0) return PB_OK;
    return s->ops->outbox_ack_many(s->impl, peers, upto, n);
}

pb_err pb_store_outbox_remove(pb_store *s, const char *peer, uint64_t seq)
{
    if (!s || !id_ok(peer)) return PB_ERR_INVAL;
    chg_begin(s);
    return chg_end(s, s->ops->outbox_remove(s->impl, peer, seq));
}

pb_err pb_store_receive(pb_store *s, const char *from, uint64_t epoch, const pb_event *evs,
                        const uint64_t *seqs, size_t n, int64_t now, pb_recv_result *res)
{
    if (!s || !id_ok(from) || (n > 0 && !evs) || now < 0) return PB_ERR_INVAL;
    pb_recv_result r = {0, 0, 0, 0};
    pb_err err = s->ops->receive(s->impl, from, seqs ? epoch : 0, evs, seqs, n, now, &r);
    if (err == PB_OK && res) *res = r;
    return err;
}

pb_err pb_store_receive_async(pb_store *s, const char *from, uint64_t epoch, uint64_t after,
                              const pb_event *evs, const uint64_t *seqs, size_t n, int64_t now,
                              pb_store_recv_cb cb, void *arg)
{
    if (!s || !id_ok(from) || (n > 0 && !evs) || now < 0 || !cb) return PB_ERR_INVAL;
    return s->ops->receive_async(s->impl, from, seqs ? epoch : 0, seqs ? after : 0, evs, seqs, n,
                                 now, cb, arg);
}

bool pb_store_receives_ordered(const pb_store *s)
{
    return s && s->ops->ordered_receives;
}

pb_err pb_store_recv_latest(pb_store *s, const char *from, uint64_t *epoch, uint64_t *recv_seq)
{
    if (!s || !id_ok(from) || !epoch || !recv_seq) return PB_ERR_INVAL;
    return s->ops->recv_latest(s->impl, from, epoch, recv_seq);
}

void pb_inbox_items_free(pb_inbox_item *items, size_t n)
{
    if (!items) return;
    for (size_t i = 0; i < n; i++) {
        free(items[i].from);
        free(items[i].old_id);
        free(items[i].new_id);
        free(items[i].notice);
        pb_event_clear(&items[i].ev);
    }
    free(items);
}

pb_err pb_store_inbox_read(pb_store *s, uint64_t after, size_t limit, pb_inbox_item **items,
                           size_t *n)
{
    if (!s || limit == 0 || !items || !n) return PB_ERR_INVAL;
    return s->ops->inbox_read(s->impl, after, limit, items, n);
}

pb_err pb_store_inbox_last_seq(pb_store *s, uint64_t *seq)
{
    if (!s || !seq) return PB_ERR_INVAL;
    return s->ops->inbox_last_seq(s->impl, seq);
}

void pb_guild_entries_free(pb_guild_entry *e, size_t n)
{
    if (!e) return;
    for (size_t i = 0; i < n; i++)
        free(e[i].server_id);
    free(e);
}

pb_err pb_store_guilds(pb_store *s, uint64_t user_id, pb_guild_entry **out, size_t *n)
{
    if (!s || !out || !n) return PB_ERR_INVAL;
    return s->ops->guilds(s->impl, user_id, out, n);
}

void pb_invite_entries_free(pb_invite_entry *e, size_t n)
{
    if (!e) return;
    for (size_t i = 0; i < n; i++) {
        free(e[i].invite_id);
        free(e[i].server_id);
    }
    free(e);
}

pb_err pb_store_invites(pb_store *s, uint64_t user_id, pb_invite_entry **out, size_t *n)
{
    if (!s || !out || !n) return PB_ERR_INVAL;
    return s->ops->invites(s->impl, user_id, out, n);
}

pb_err pb_store_peer_rename(pb_store *s, const char *old_id, const char *new_id,
                            const uint8_t new_key[PB_PUBKEY_LEN], int64_t now)
{
    if (!s || !id_ok(old_id) || !id_ok(new_id) || !new_key || now < 0) return PB_ERR_INVAL;
    chg_begin(s);
    return chg_end(s, s->ops->peer_rename(s->impl, old_id, new_id, new_key, now));
}

pb_err pb_store_self_rename(pb_store *s, const char *old_id, const char *new_id, int64_t now)
{
    if (!s || !id_ok(old_id) || !id_ok(new_id)) return PB_ERR_INVAL;
    chg_begin(s);
    return chg_end(s, s->ops->self_rename(s->impl, old_id, new_id, now));
}

void pb_rename_outs_free(pb_rename_out *r, size_t n)
{
    if (!r) return;
    for (size_t i = 0; i < n; i++) {
        free(r[i].peer);
        free(r[i].old_id);
        free(r[i].new_id);
        free(r[i].last_error);
    }
    free(r);
}

pb_err pb_store_rename_out_list(pb_store *s, pb_rename_out **out, size_t *n)
{
    if (!s || !out || !n) return PB_ERR_INVAL;
    return s->ops->rename_out_list(s->impl, out, n);
}

pb_err pb_store_rename_out_done(pb_store *s, const char *peer, const char *new_id)
{
    if (!s || !id_ok(peer) || !id_ok(new_id)) return PB_ERR_INVAL;
    return s->ops->rename_out_done(s->impl, peer, new_id);
}

pb_err pb_store_rename_out_failed(pb_store *s, const char *peer, uint32_t attempts,
                                  int64_t next_attempt_at, const char *error)
{
    if (!s || !id_ok(peer)) return PB_ERR_INVAL;
    return s->ops->rename_out_failed(s->impl, peer, attempts, next_attempt_at, error);
}

void pb_rename_ins_free(pb_rename_in *r, size_t n)
{
    if (!r) return;
    for (size_t i = 0; i < n; i++) {
        free(r[i].old_id);
        free(r[i].new_id);
    }
    free(r);
}

pb_err pb_store_rename_in_add(pb_store *s, const char *old_id, const char *new_id, int64_t now)
{
    if (!s || !id_ok(old_id) || !id_ok(new_id) || strcmp(old_id, new_id) == 0) return PB_ERR_INVAL;
    return s->ops->rename_in_add(s->impl, old_id, new_id, now);
}

pb_err pb_store_rename_in_find(pb_store *s, const char *new_id, char **old_id, int64_t *created_at)
{
    if (!s || !id_ok(new_id) || !old_id) return PB_ERR_INVAL;
    int64_t at = 0;
    pb_err err = s->ops->rename_in_find(s->impl, new_id, old_id, &at);
    if (err == PB_OK && created_at) *created_at = at;
    return err;
}

pb_err pb_store_rename_in_remove(pb_store *s, const char *old_id)
{
    if (!s || !id_ok(old_id)) return PB_ERR_INVAL;
    return s->ops->rename_in_remove(s->impl, old_id);
}

pb_err pb_store_rename_in_list(pb_store *s, pb_rename_in **out, size_t *n)
{
    if (!s || !out || !n) return PB_ERR_INVAL;
    return s->ops->rename_in_list(s->impl, out, n);
}

pb_err pb_store_rename_in_expire(pb_store *s, int64_t before, size_t *removed)
{
    if (!s) return PB_ERR_INVAL;
    size_t k = 0;
    pb_err err = s->ops->rename_in_expire(s->impl, before, &k);
    if (err == PB_OK && removed) *removed = k;
    return err;
}

pb_err pb_store_peer_flush(pb_store *s, const char *peer, int64_t now, bool record, char ***peers,
                           size_t *n)
{
    if (!s || (peer && !id_ok(peer)) || !n) return PB_ERR_INVAL;
    char **v = NULL;
    size_t k = 0;
    pb_err err = s->ops->peer_flush(s->impl, peer, now, record, &v, &k);
    if (err != PB_OK) return err;
    if (peers) {
        *peers = v;
    } else {
        pb_store_strings_free(v, k);
    }
    *n = k;
    return PB_OK;
}

void pb_flush_reqs_free(pb_flush_req *r, size_t n)
{
    if (!r) return;
    for (size_t i = 0; i < n; i++)
        free(r[i].peer);
    free(r);
}

pb_err pb_store_flush_list(pb_store *s, pb_flush_req **out, size_t *n)
{
    if (!s || !out || !n) return PB_ERR_INVAL;
    return s->ops->flush_list(s->impl, out, n);
}

pb_err pb_store_flush_done(pb_store *s, const char *peer, int64_t requested_at)
{
    if (!s || !id_ok(peer)) return PB_ERR_INVAL;
    return s->ops->flush_done(s->impl, peer, requested_at);
}

pb_err pb_store_outbox_drop(pb_store *s, const char *peer, int64_t before, const char *reason,
                            int64_t now, bool record, pb_drop_result *res)
{
    if (!s || !id_ok(peer) || !id_ok(reason) || !res) return PB_ERR_INVAL;
    pb_drop_result r = {0, 0, 0, 0, 0, 0, 0};
    chg_begin(s);
    pb_err err = chg_end(s, s->ops->outbox_drop(s->impl, peer, before, reason, now, record, &r));
    if (err == PB_OK) *res = r;
    return err;
}

pb_err pb_store_outbox_expired_peers(pb_store *s, int64_t before, char ***peers, size_t *n)
{
    if (!s || !peers || !n) return PB_ERR_INVAL;
    return s->ops->outbox_expired_peers(s->impl, before, peers, n);
}

pb_err pb_store_lease_acquire(pb_store *s, const char *peer, const char *node_id, int64_t now_ms,
                              int64_t ttl_ms, bool *held)
{
    if (!s || !id_ok(peer) || !id_ok(node_id) || now_ms < 0 || ttl_ms <= 0 || !held ||
        now_ms > INT64_MAX - ttl_ms)
        return PB_ERR_INVAL;
    return s->ops->lease_acquire(s->impl, peer, node_id, now_ms, ttl_ms, held);
}

pb_err pb_store_lease_release(pb_store *s, const char *peer, const char *node_id)
{
    if (!s || !id_ok(peer) || !id_ok(node_id)) return PB_ERR_INVAL;
    return s->ops->lease_release(s->impl, peer, node_id);
}

pb_err pb_store_outbox_peers(pb_store *s, char ***peers, size_t *n)
{
    if (!s || !peers || !n) return PB_ERR_INVAL;
    return s->ops->outbox_peers(s->impl, peers, n);
}

void pb_store_strings_free(char **v, size_t n)
{
    if (!v) return;
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void pb_qshape_rows_free(pb_qshape_row *rows, size_t n)
{
    if (!rows) return;
    for (size_t i = 0; i < n; i++)
        free(rows[i].peer);
    free(rows);
}

pb_err pb_store_qshape(pb_store *s, int64_t now_ms, pb_qshape_row **rows, size_t *n)
{
    if (!s || !rows || !n) return PB_ERR_INVAL;
    return s->ops->qshape(s->impl, now_ms, true, rows, n);
}

pb_err pb_store_queue_summary(pb_store *s, pb_qshape_row **rows, size_t *n)
{
    if (!s || !rows || !n) return PB_ERR_INVAL;
    return s->ops->qshape(s->impl, 0, false, rows, n);
}

pb_err pb_store_peer_mode_counts(pb_store *s, uint64_t counts[3])
{
    if (!s || !counts) return PB_ERR_INVAL;
    return s->ops->peer_mode_counts(s->impl, counts);
}

pb_err pb_store_inbox_unread(pb_store *s, uint64_t after, uint64_t *count, int64_t *oldest_at)
{
    if (!s || !count || !oldest_at) return PB_ERR_INVAL;
    return s->ops->inbox_unread(s->impl, after, count, oldest_at);
}

#ifdef PB_FAULTS
void pb_store_fault_set(pb_store *s, pb_err err)
{
    if (s && s->ops->fault_set) s->ops->fault_set(s->impl, err);
}

void pb_store_fault_hold(pb_store *s, bool hold)
{
    if (s && s->ops->fault_hold) s->ops->fault_hold(s->impl, hold);
}

size_t pb_store_fault_queued(pb_store *s)
{
    return s && s->ops->fault_queued ? s->ops->fault_queued(s->impl) : 0;
}

pb_err pb_store_fault_bad_write(pb_store *s, const char *key)
{
    if (!s || !key || !*key) return PB_ERR_INVAL;
    if (!s->ops->fault_bad_write) return PB_ERR_INTERNAL;
    return s->ops->fault_bad_write(s->impl, key);
}

void pb_store_fault_checkpoint(pb_store *s, int mode)
{
    if (s && s->ops->fault_checkpoint) s->ops->fault_checkpoint(s->impl, mode);
}
#endif
