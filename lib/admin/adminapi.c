/*
 * adminapi - admin API endpoints (see adminapi.h). Each handler validates its whole input
 * first, then makes one call into the delivery engine or the store. A submission
 * (POST /v1/outbox) makes it asynchronously and waits for its commit suspended
 * (admin_http.h tickets), answering from the completion when its handler runs again.
 */
#include "admin/adminapi.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "wire/eventjson.h"
#include "util/health.h"
#include "util/log.h"
#include "util/mem.h"
#include "util/serverid.h"

static const char *mode_name(pb_peer_mode m)
{
    switch (m) {
    case PB_MODE_QUEUED:
        return "queued";
    case PB_MODE_PARKED:
        return "parked";
    default:
        return "push";
    }
}

/* A store failure's answer: an unavailable store is a 503 that says whether the disk is
 * full, reported to the store-health tracker (which logs an outage calmly). */
static void store_error(pb_admin_resp *resp, pb_err err)
{
    if (err == PB_ERR_DISK_FULL) {
        pb_health_fail(pb_health_store(), err, NULL, "admin request refused: %s", pb_strerror(err));
        pb_admin_resp_error(resp, 503,
                            "disk full: the store cannot take writes until space is "
                            "freed; try again then");
    } else if (pb_health_unavailable(err)) {
        pb_health_fail(pb_health_store(), err, NULL, "admin request refused: %s", pb_strerror(err));
        pb_admin_resp_error(resp, 503, "store unavailable, try again");
    } else
        pb_admin_resp_error(resp, 500, "%s", pb_strerror(err));
}

/* A normalised server ID from a JSON value or a path segment; NULL-safe. */
static bool server_id_of(const char *s, char out[PB_SERVER_ID_MAX])
{
    return s && pb_serverid_normalize(s, out) == PB_OK;
}

/* The ID field of a local submission's event that is missing or 0 ("guildId"), or NULL.
 * A local submission names real users, guilds and inviters: 0 is never one (events from
 * peers are stored as they come: the protocol has no required fields). */
static const char *zero_id_field(const pb_event *ev)
{
    if (ev->user_id == 0) return "userId";
    switch (ev->kind) {
    case PB_EV_USER_REMOVED_FROM_GUILD:
    case PB_EV_USER_ADDED_TO_GUILD:
    case PB_EV_USER_REJECTED_INVITE:
        return ev->guild_id == 0 ? "guildId" : NULL;
    case PB_EV_USER_INVITED:
        return ev->inviter_id == 0 ? "inviterId" : NULL;
    default:
        return NULL;
    }
}

/* A submission waiting for its commit: the request's ticket state (admin_http.h). */
struct outbox_wait {
    pb_admin_ticket *t;
    char to[PB_SERVER_ID_MAX];
    char sid[PB_SUBMISSION_ID_MAX + 1]; /* "" when none */
    size_t n;
    /* the completion's */
    pb_err err;
    bool dup;
    uint64_t last;
};

/* A store thread, after the commit: the request runs again and answers from w. */
static void outbox_done(void *arg, pb_err result, bool duplicate, uint64_t last_seq)
{
    struct outbox_wait *w = arg;
    pb_admin_ticket *t = w->t; /* w may go with the ticket once done */
    w->err = result;
    w->dup = duplicate;
    w->last = last_seq;
    pb_admin_ticket_done(t);
}

/* The answer to a submission of n events whose store call gave err, dup and last. */
static void outbox_answer(pb_adminapi_ctx *ctx, pb_admin_resp *resp, const char *to,
                          const char *sid, size_t n, pb_err err, bool dup, uint64_t last)
{
    if (err == PB_ERR_INVAL) {
        pb_admin_resp_error(resp, 400, "cannot send to this server itself (%s)", to);
        return;
    }
    if (err == PB_ERR_EXISTS) {
        pb_admin_resp_error(resp, 409,
                            "submission_id \"%s\" was used for a different submission (another "
                            "\"to\" or number of events)",
                            sid);
        return;
    }
    if (err != PB_OK) {
        store_error(resp, err);
        return;
    }
    if (dup)
        pb_counter_inc(pb_metric_series(PB_METRIC(ctx->metrics, submissions_duplicate), NULL));
    else
        pb_counter_add(pb_metric_series(PB_METRIC(ctx->metrics, events_submitted), NULL), n);
    resp->status = 202;
    /* the sequence numbers the events got, for the homeserver's logs (they appear in
     * both postboxes' delivery lines) */
    json_int_t first = last >= n ? (json_int_t)(last - n + 1) : 0;
    resp->body = json_pack("{s:I,s:I,s:I}", "accepted", (json_int_t)n, "first_seq", first,
                           "last_seq", (json_int_t)last);
    if (sid) json_object_set_new(resp->body, "duplicate", json_boolean(dup));
}

/* POST /v1/outbox {"to": ID, "event": EVENT} | {"to": ID, "events": [EVENT, ...]}, each
 * with an optional "submission_id": a repeat answers {"accepted": N, "duplicate": true}
 * and queues nothing; the ID reused for another "to" or number of events is a 409. The
 * request waits for its commit without a thread (pb_admin_req_suspend) when the listener
 * has room, so concurrent submissions share commits; otherwise it waits on its thread. */
static void h_outbox(void *vctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    pb_adminapi_ctx *ctx = vctx;
    if (req->state) { /* run again: its commit came, or the listener stops */
        struct outbox_wait *w = req->state;
        if (req->timed_out)
            pb_admin_resp_error(resp, 503,
                                w->sid[0] ? "stopping: the submission may or may not be stored; "
                                            "repeat it with the same submission_id"
                                          : "stopping: the submission may or may not be "
                                            "stored (a submission_id makes repeating it safe)");
        else
            outbox_answer(ctx, resp, w->to, w->sid[0] ? w->sid : NULL, w->n, w->err, w->dup,
                          w->last);
        return;
    }
    pb_event *evs = NULL;
    size_t n = 0;
    char to[PB_SERVER_ID_MAX], *why = NULL;
    json_t *b = req->body;
    if (!json_is_object(b)) {
        pb_admin_resp_error(resp, 400, "body must be a JSON object {\"to\": ID, \"event\": ...}");
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(b, key, v)
    {
        if (strcmp(key, "to") && strcmp(key, "event") && strcmp(key, "events") &&
            strcmp(key, "submission_id")) {
            pb_admin_resp_error(resp, 400, "unknown field \"%.64s\"", key);
            goto out;
        }
    }
    if (!server_id_of(json_string_value(json_object_get(b, "to")), to)) {
        pb_admin_resp_error(resp, 400, "\"to\" must be a valid server ID (domain:port)");
        goto out;
    }
    json_t *sid_json = json_object_get(b, "submission_id");
    const char *sid = json_string_value(sid_json);
    if (sid_json && (!sid || strlen(sid) != json_string_length(sid_json) ||
                     !pb_store_submission_id_valid(sid))) {
        pb_admin_resp_error(resp, 400,
                            "\"submission_id\" must be a string of 1 to %d printable ASCII "
                            "characters",
                            PB_SUBMISSION_ID_MAX);
        goto out;
    }
    json_t *one = json_object_get(b, "event"), *many = json_object_get(b, "events");
    if (!!one == !!many) {
        pb_admin_resp_error(resp, 400, "give exactly one of \"event\" and \"events\"");
        goto out;
    }
    if (many && (!json_is_array(many) || json_array_size(many) == 0 ||
                 json_array_size(many) > PB_ADMIN_MAX_EVENTS)) {
        pb_admin_resp_error(resp, 400, "\"events\" must be an array of 1 to %d events",
                            PB_ADMIN_MAX_EVENTS);
        goto out;
    }
    size_t want = one ? 1 : json_array_size(many);
    evs = pb_xcalloc(want, sizeof *evs);
    for (; n < want; n++) {
        json_t *e = one ? one : json_array_get(many, n);
        if (pb_eventjson_parse(e, &evs[n], &why) != PB_OK) {
            if (one)
                pb_admin_resp_error(resp, 400, "%s", why);
            else
                pb_admin_resp_error(resp, 400, "events[%zu]: %s", n, why);
            goto out;
        }
        const char *zero = zero_id_field(&evs[n]);
        if (zero) {
            char where[32] = "event";
            if (!one) snprintf(where, sizeof where, "events[%zu]", n);
            pb_admin_resp_error(resp, 400, "%s.%s.%s: missing or 0; give a nonzero ID", where,
                                pb_event_kind_name(evs[n].kind), zero);
            n++; /* parsed: cleared below */
            goto out;
        }
    }
    pb_admin_ticket *t = pb_admin_req_suspend(req, sizeof(struct outbox_wait));
    if (t) {
        struct outbox_wait *w = pb_admin_ticket_state(t);
        w->t = t;
        snprintf(w->to, sizeof w->to, "%s", to);
        snprintf(w->sid, sizeof w->sid, "%s", sid ? sid : "");
        w->n = n;
        pb_err err = pb_delivery_submit_async(ctx->delivery, to, evs, n, sid, outbox_done, w);
        if (err == PB_OK) goto out; /* no answer yet: outbox_done resumes the request */
        pb_admin_ticket_done(t);
        outbox_answer(ctx, resp, to, sid, n, err, false, 0);
        goto out;
    }
    bool dup = false;
    uint64_t last = 0;
    pb_err err = pb_delivery_submit(ctx->delivery, to, evs, n, sid, &dup, &last);
    outbox_answer(ctx, resp, to, sid, n, err, dup, last);
out:
    for (size_t i = 0; i < n; i++)
        pb_event_clear(&evs[i]);
    free(evs);
    free(why);
}

/* A query argument as uint64 (absent: dflt). */
static bool arg_u64(const pb_admin_req *req, const char *name, uint64_t dflt, uint64_t *out)
{
    const char *s = pb_admin_req_arg(req, name);
    if (!s) {
        *out = dflt;
        return true;
    }
    return pb_eventjson_parse_u64_str(s, out) == PB_OK;
}

static json_t *u64_json(uint64_t v)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    return json_string(buf);
}

/* GET /v1/inbox?after=SEQ&limit=N&wait=SECONDS */
static void h_inbox(void *vctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    pb_adminapi_ctx *ctx = vctx;
    uint64_t after, limit, wait;
    if (!arg_u64(req, "after", 0, &after) || !arg_u64(req, "limit", 100, &limit) ||
        !arg_u64(req, "wait", 0, &wait) || limit == 0 || limit > PB_ADMIN_MAX_INBOX_LIMIT ||
        wait > PB_ADMIN_MAX_WAIT_S) {
        pb_admin_resp_error(resp, 400,
                            "after, limit (1..%d) and wait (0..%d) must be whole numbers",
                            PB_ADMIN_MAX_INBOX_LIMIT, PB_ADMIN_MAX_WAIT_S);
        return;
    }
    pb_monitor_inbox_read(ctx->monitor, after);
    pb_inbox_item *items = NULL;
    size_t n = 0;
    pb_err err = pb_store_inbox_read(ctx->store, after, (size_t)limit, &items, &n);
    if (err != PB_OK) {
        store_error(resp, err);
        return;
    }
    if (n == 0 && wait && !req->timed_out) { /* nothing yet: run again when woken */
        resp->wait_ms = (int)wait * 1000;
        return;
    }
    json_t *arr = json_array();
    uint64_t next = after;
    for (size_t i = 0; i < n; i++) {
        json_t *ev, *o = json_object();
        json_object_set_new(o, "seq", json_integer((json_int_t)items[i].seq));
        json_object_set_new(o, "from", json_string(items[i].from));
        if (items[i].notice) { /* our own notice (a queue dropped or expired) */
            ev = NULL;
            json_t *notice = json_loads(items[i].notice, 0, NULL);
            if (notice) json_object_set_new(o, "notice", notice);
        } else if (items[i].is_rename) {
            ev = json_pack("{s:{s:s,s:s}}", "serverRenamed", "oldServerId", items[i].old_id,
                           "newServerId", items[i].new_id);
        } else {
            ev = pb_eventjson_format(&items[i].ev);
            json_t *notice = pb_eventjson_notice(&items[i].ev, items[i].from);
            if (notice) json_object_set_new(o, "notice", notice);
        }
        json_object_set_new(o, "event", ev ? ev : json_null());
        json_array_append_new(arr, o);
        next = items[i].seq;
    }
    pb_inbox_items_free(items, n);
    resp->body = json_pack("{s:o,s:I}", "events", arr, "next", (json_int_t)next);
}

/* One peer as GET /v1/peers shows it. */
struct peer_view {
    const pb_peer_state *st;
    int64_t age_s;   /* age of the oldest queued event; -1: nothing queued */
    bool engine;     /* the two fields below were asked of the delivery engine */
    int64_t next_in; /* seconds to the next drain attempt; -1: none */
    bool pending;    /* rename notice pending */
    char rerr[256];  /* its last error, may be empty */
};

/* Asks the delivery engine what only it knows (once per view: each question looks the
 * peer up in the engine, so a page asks only for what it filters, sorts or shows). */
static void view_engine(pb_adminapi_ctx *ctx, struct peer_view *v)
{
    if (v->engine) return;
    v->engine = true;
    v->next_in = pb_delivery_next_attempt_in_s(ctx->delivery, v->st->server_id);
    if (v->next_in < 0) v->next_in = -1;
    v->pending =
        pb_delivery_rename_pending(ctx->delivery, v->st->server_id, v->rerr, sizeof v->rerr);
}

static json_t *peer_json(const struct peer_view *v)
{
    const pb_peer_state *st = v->st;
    json_t *o = json_object();
    json_object_set_new(o, "server_id", json_string(st->server_id));
    json_object_set_new(o, "mode", json_string(mode_name(st->mode)));
    json_object_set_new(o, "queued", json_integer((json_int_t)st->queued));
    json_object_set_new(o, "oldest_queued_age_s",
                        v->age_s >= 0 ? json_integer(v->age_s) : json_null());
    json_object_set_new(o, "last_error",
                        st->last_error ? json_string(st->last_error) : json_null());
    json_object_set_new(o, "next_attempt_in_s",
                        v->next_in >= 0 ? json_integer(v->next_in) : json_null());
    if (st->mode == PB_MODE_PARKED)
        json_object_set_new(o, "parked_seq", json_integer((json_int_t)st->parked_seq));
    json_object_set_new(o, "rename_pending", json_boolean(v->pending));
    if (v->pending && v->rerr[0]) json_object_set_new(o, "rename_error", json_string(v->rerr));
    return o;
}

enum peer_sort { SORT_ID, SORT_MODE, SORT_QUEUED, SORT_AGE, SORT_NEXT, SORT_ERROR, SORT__COUNT };
static const char *const sort_names[SORT__COUNT] = {
    "server_id", "mode", "queued", "oldest_queued_age_s", "next_attempt_in_s", "last_error"};

struct sort_by {
    enum peer_sort key;
    bool desc;
};

static int cmp_i64(int64_t a, int64_t b)
{
    return a < b ? -1 : a > b;
}

/* The chosen key in the chosen order, then server_id ascending. */
static int cmp_views(const void *pa, const void *pb, void *vctx)
{
    const struct peer_view *a = pa, *b = pb;
    const struct sort_by *by = vctx;
    int c = 0;
    switch (by->key) {
    case SORT_MODE:
        c = cmp_i64(a->st->mode, b->st->mode);
        break;
    case SORT_QUEUED:
        c = a->st->queued < b->st->queued ? -1 : a->st->queued > b->st->queued;
        break;
    case SORT_AGE:
        c = cmp_i64(a->age_s, b->age_s);
        break;
    case SORT_NEXT:
        c = cmp_i64(a->next_in, b->next_in);
        break;
    case SORT_ERROR:
        c = strcmp(a->st->last_error ? a->st->last_error : "",
                   b->st->last_error ? b->st->last_error : "");
        break;
    default:
        break;
    }
    if (by->desc) c = -c;
    return c ? c : strcmp(a->st->server_id, b->st->server_id);
}

/* Adds "renames_in" to a GET /v1/peers answer: the renames peers announced without a
 * proof of possession yet (PROTOCOL.md 7.2), oldest first by old ID, at most
 * PB_ADMIN_MAX_PEERS_LIMIT of them, and "renames_in_total". They change nothing until
 * proven and expire after a day. A store error leaves them out (the peers are shown). */
static void renames_in_json(pb_adminapi_ctx *ctx, json_t *body)
{
    pb_rename_in *rs = NULL;
    size_t n = 0;
    if (pb_store_rename_in_list(ctx->store, &rs, &n) != PB_OK) return;
    json_t *arr = json_array();
    for (size_t i = 0; i < n && i < PB_ADMIN_MAX_PEERS_LIMIT; i++)
        json_array_append_new(arr, json_pack("{s:s,s:s,s:I}", "old_id", rs[i].old_id, "new_id",
                                             rs[i].new_id, "since",
                                             (json_int_t)(rs[i].created_at / 1000)));
    json_object_set_new(body, "renames_in", arr);
    json_object_set_new(body, "renames_in_total", json_integer((json_int_t)n));
    pb_rename_ins_free(rs, n);
}

/* GET /v1/peers, and with any of offset, limit (1..1000, default 100), sort (a field
 * name), order (asc|desc), q (substring of server_id or last_error, any case), mode and
 * rename_pending (true|false): one page of the filtered, sorted list with its total, and
 * of all peers the counts by mode, the queued events and the oldest queued age. */
static void h_peers(void *vctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    pb_adminapi_ctx *ctx = vctx;
    static const char *const params[] = {"offset", "limit", "sort",          "order",
                                         "q",      "mode",  "rename_pending"};
    bool paged = false;
    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++)
        paged = paged || pb_admin_req_arg(req, params[i]);
    uint64_t offset = 0, limit = 100;
    struct sort_by by = {SORT_ID, false};
    const char *q = pb_admin_req_arg(req, "q"), *mode = pb_admin_req_arg(req, "mode");
    const char *sort = pb_admin_req_arg(req, "sort"), *order = pb_admin_req_arg(req, "order");
    const char *pending = pb_admin_req_arg(req, "rename_pending");
    int want_mode = -1, want_pending = -1;
    if (!arg_u64(req, "offset", 0, &offset) || !arg_u64(req, "limit", 100, &limit) || limit == 0 ||
        limit > PB_ADMIN_MAX_PEERS_LIMIT) {
        pb_admin_resp_error(resp, 400, "offset and limit (1..%d) must be whole numbers",
                            PB_ADMIN_MAX_PEERS_LIMIT);
        return;
    }
    if (sort) {
        for (by.key = 0; by.key < SORT__COUNT && strcmp(sort, sort_names[by.key]); by.key++) {
        }
        if (by.key == SORT__COUNT) {
            pb_admin_resp_error(resp, 400,
                                "sort must be server_id, mode, queued, oldest_queued_age_s, "
                                "next_attempt_in_s or last_error");
            return;
        }
    }
    if (order && strcmp(order, "asc") && strcmp(order, "desc")) {
        pb_admin_resp_error(resp, 400, "order must be asc or desc");
        return;
    }
    by.desc = order && !strcmp(order, "desc");
    if (mode) {
        for (want_mode = PB_MODE_PUSH;
             want_mode <= PB_MODE_PARKED && strcmp(mode, mode_name((pb_peer_mode)want_mode));
             want_mode++) {
        }
        if (want_mode > PB_MODE_PARKED) {
            pb_admin_resp_error(resp, 400, "mode must be push, queued or parked");
            return;
        }
    }
    if (pending) {
        if (!strcmp(pending, "true") || !strcmp(pending, "1")) {
            want_pending = 1;
        } else if (!strcmp(pending, "false") || !strcmp(pending, "0")) {
            want_pending = 0;
        } else {
            pb_admin_resp_error(resp, 400, "rename_pending must be true or false");
            return;
        }
    }
    if (q && strlen(q) > 256) {
        pb_admin_resp_error(resp, 400, "q is longer than 256 bytes");
        return;
    }

    pb_peer_state *sts = NULL;
    size_t n = 0;
    pb_err err = pb_store_peer_state_list(ctx->store, &sts, &n);
    if (err != PB_OK) {
        store_error(resp, err);
        return;
    }
    int64_t now_s = (int64_t)time(NULL);
    struct peer_view *views = n ? pb_xcalloc(n, sizeof *views) : NULL;
    size_t m = 0;
    uint64_t counts[3] = {0, 0, 0}, queued = 0;
    int64_t oldest = -1;
    for (size_t i = 0; i < n; i++) {
        const pb_peer_state *st = &sts[i];
        counts[st->mode <= PB_MODE_PARKED ? st->mode : 0]++;
        queued += st->queued;
        struct peer_view *v = &views[m]; /* a slot a filtered-out peer may have used */
        memset(v, 0, sizeof *v);
        v->st = st;
        v->age_s = st->queued && st->oldest_queued_at ? now_s - st->oldest_queued_at / 1000 : -1;
        if (v->age_s > oldest) oldest = v->age_s;
        if (!paged || want_pending >= 0 || by.key == SORT_NEXT) view_engine(ctx, v);
        if (want_mode >= 0 && (int)st->mode != want_mode) continue;
        if (want_pending >= 0 && (int)v->pending != want_pending) continue;
        if (q && *q && !strcasestr(st->server_id, q) &&
            !(st->last_error && strcasestr(st->last_error, q)))
            continue;
        m++;
    }
    json_t *arr = json_array();
    if (!paged) {
        for (size_t i = 0; i < m; i++)
            json_array_append_new(arr, peer_json(&views[i]));
        resp->body = json_pack("{s:o}", "peers", arr);
    } else {
        if (m) qsort_r(views, m, sizeof *views, cmp_views, &by);
        for (uint64_t i = offset; i < m && i < offset + limit; i++) {
            view_engine(ctx, &views[i]);
            json_array_append_new(arr, peer_json(&views[i]));
        }
        resp->body = json_pack(
            "{s:o,s:I,s:I,s:I,s:s,s:s,s:{s:I,s:I,s:I},s:I}", "peers", arr, "total", (json_int_t)m,
            "offset", (json_int_t)offset, "limit", (json_int_t)limit, "sort", sort_names[by.key],
            "order", by.desc ? "desc" : "asc", "counts", "push", (json_int_t)counts[PB_MODE_PUSH],
            "queued", (json_int_t)counts[PB_MODE_QUEUED], "parked",
            (json_int_t)counts[PB_MODE_PARKED], "queued_events", (json_int_t)queued);
        json_object_set_new(resp->body, "oldest_queued_age_s",
                            oldest >= 0 ? json_integer(oldest) : json_null());
    }
    free(views);
    pb_peer_state_free_array(sts, n);
    if (resp->body) renames_in_json(ctx, resp->body);
}

static void parked(pb_adminapi_ctx *ctx, const pb_admin_req *req, pb_admin_resp *resp, bool drop)
{
    char id[PB_SERVER_ID_MAX];
    if (!server_id_of(req->segs[0], id)) {
        pb_admin_resp_error(resp, 400, "not a valid server ID: %.100s", req->segs[0]);
        return;
    }
    pb_err err = drop ? pb_delivery_drop_parked(ctx->delivery, id)
                      : pb_delivery_retry_parked(ctx->delivery, id);
    if (err == PB_ERR_NOT_FOUND)
        pb_admin_resp_error(resp, 404, "unknown peer %s", id);
    else if (err == PB_ERR_INVAL)
        pb_admin_resp_error(resp, 409, "peer %s is not parked", id);
    else if (err != PB_OK)
        store_error(resp, err);
    else
        resp->body = json_pack("{s:s,s:s}", "server_id", id, "mode", "push");
}

static void h_retry(void *vctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    parked(vctx, req, resp, false);
}

static void h_drop(void *vctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    parked(vctx, req, resp, true);
}

/* ---- queue control (README "Queue control") ----------------------------------------- */

/* POST /v1/flush: every queued peer is tried now, its backoff reset. */
static void h_flush_all(void *vctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    (void)req;
    pb_adminapi_ctx *ctx = vctx;
    char **peers = NULL;
    size_t n = 0;
    pb_err err = pb_delivery_flush(ctx->delivery, NULL, &peers, &n);
    if (err != PB_OK) {
        store_error(resp, err);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_string(peers[i]));
    pb_store_strings_free(peers, n);
    resp->body = json_pack("{s:o,s:I}", "flushed", arr, "count", (json_int_t)n);
}

/* POST /v1/peers/{peer}/flush: the peer, when queued, is tried now with its backoff
 * reset; a peer in push mode has nothing to flush (flushed false); a parked one is a 409
 * (retry or drop-parked). */
static void h_flush(void *vctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    pb_adminapi_ctx *ctx = vctx;
    char id[PB_SERVER_ID_MAX];
    if (!server_id_of(req->segs[0], id)) {
        pb_admin_resp_error(resp, 400, "not a valid server ID: %.100s", req->segs[0]);
        return;
    }
    size_t n = 0;
    pb_err err = pb_delivery_flush(ctx->delivery, id, NULL, &n);
    if (err == PB_ERR_NOT_FOUND) {
        pb_admin_resp_error(resp, 404, "unknown peer %s", id);
    } else if (err == PB_ERR_INVAL) {
        pb_admin_resp_error(resp, 409,
                            "peer %s is parked: retry or drop its parked event (retry, "
                            "drop-parked) or drop its queue",
                            id);
    } else if (err != PB_OK) {
        store_error(resp, err);
    } else {
        resp->body = json_pack("{s:s,s:b,s:s}", "server_id", id, "flushed", n > 0, "mode",
                               n > 0 ? "queued" : "push");
    }
}

/* GET /v1/peers/{peer}/queue?from=SEQ&limit=N: the queued events from sequence number
 * `from` on (default: the head), at most limit (default 100, at most
 * PB_ADMIN_MAX_INBOX_LIMIT), with their age, kind and the event as JSON; "next_from" is
 * where the next page starts (null: this was the last). */
static void h_queue(void *vctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    pb_adminapi_ctx *ctx = vctx;
    char id[PB_SERVER_ID_MAX];
    uint64_t from, limit;
    if (!server_id_of(req->segs[0], id)) {
        pb_admin_resp_error(resp, 400, "not a valid server ID: %.100s", req->segs[0]);
        return;
    }
    if (!arg_u64(req, "from", 1, &from) || !arg_u64(req, "limit", 100, &limit) || limit == 0 ||
        limit > PB_ADMIN_MAX_INBOX_LIMIT) {
        pb_admin_resp_error(resp, 400, "from and limit (1..%d) must be whole numbers",
                            PB_ADMIN_MAX_INBOX_LIMIT);
        return;
    }
    pb_peer_state st;
    pb_err err = pb_store_peer_state_get(ctx->store, id, &st);
    if (err == PB_ERR_NOT_FOUND) {
        pb_admin_resp_error(resp, 404, "unknown peer %s", id);
        return;
    }
    if (err != PB_OK) {
        store_error(resp, err);
        return;
    }
    pb_outbox_item *items = NULL;
    size_t n = 0;
    /* one more than asked: whether another page follows */
    err = pb_store_outbox_read(ctx->store, id, from, (size_t)limit + 1, SIZE_MAX, &items, &n);
    if (err != PB_OK) {
        pb_peer_state_clear(&st);
        store_error(resp, err);
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    json_t *arr = json_array();
    for (size_t i = 0; i < n && i < limit; i++) {
        json_t *ev = pb_eventjson_format(&items[i].ev);
        int64_t age = now - items[i].created_at;
        json_array_append_new(arr, json_pack("{s:o,s:I,s:I,s:s,s:o}", "seq", u64_json(items[i].seq),
                                             "created_at", (json_int_t)items[i].created_at, "age_s",
                                             (json_int_t)(age > 0 ? age / 1000 : 0), "kind",
                                             pb_event_kind_name(items[i].ev.kind), "event",
                                             ev ? ev : json_null()));
    }
    json_t *next = n > limit ? u64_json(items[limit].seq) : json_null();
    resp->body = json_pack("{s:s,s:s,s:I,s:o,s:o}", "server_id", id, "mode", mode_name(st.mode),
                           "queued", (json_int_t)st.queued, "events", arr, "next_from", next);
    pb_outbox_items_free(items, n);
    pb_peer_state_clear(&st);
}

/* POST /v1/peers/{peer}/drop {"confirm": true}: deletes the peer's whole queue (a log
 * line, a notice in our inbox, a new sequence epoch); without the confirmation a 400. */
static void h_drop_queue(void *vctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    pb_adminapi_ctx *ctx = vctx;
    char id[PB_SERVER_ID_MAX];
    if (!server_id_of(req->segs[0], id)) {
        pb_admin_resp_error(resp, 400, "not a valid server ID: %.100s", req->segs[0]);
        return;
    }
    if (!json_is_object(req->body) || json_object_size(req->body) != 1 ||
        !json_is_true(json_object_get(req->body, "confirm"))) {
        pb_admin_resp_error(resp, 400,
                            "dropping a queue deletes its events for good: the body must be "
                            "{\"confirm\": true}");
        return;
    }
    pb_drop_result r;
    pb_err err = pb_delivery_drop(ctx->delivery, id, &r);
    if (err == PB_ERR_NOT_FOUND) {
        pb_admin_resp_error(resp, 404, "unknown peer %s", id);
        return;
    }
    if (err != PB_OK) {
        store_error(resp, err);
        return;
    }
    char epoch[20];
    snprintf(epoch, sizeof epoch, "%016llx", (unsigned long long)r.epoch);
    resp->body =
        json_pack("{s:s,s:I,s:o,s:o,s:I,s:o,s:o}", "server_id", id, "dropped", (json_int_t)r.count,
                  "first_seq", u64_json(r.first_seq), "last_seq", u64_json(r.last_seq), "remaining",
                  (json_int_t)r.remaining, "epoch", r.count ? json_string(epoch) : json_null(),
                  "inbox_seq", r.count ? json_integer((json_int_t)r.notice_seq) : json_null());
}

static bool user_of(const pb_admin_req *req, pb_admin_resp *resp, uint64_t *user)
{
    if (pb_eventjson_parse_u64_str(req->segs[0], user) != PB_OK) {
        pb_admin_resp_error(resp, 400, "user ID must be a decimal uint64, got %.40s", req->segs[0]);
        return false;
    }
    return true;
}

static void h_guilds(void *vctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    pb_adminapi_ctx *ctx = vctx;
    uint64_t user;
    if (!user_of(req, resp, &user)) return;
    pb_guild_entry *e = NULL;
    size_t n = 0;
    pb_err err = pb_store_guilds(ctx->store, user, &e, &n);
    if (err != PB_OK) {
        store_error(resp, err);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_pack("{s:o,s:s}", "guildId", u64_json(e[i].guild_id),
                                             "serverId", e[i].server_id));
    pb_guild_entries_free(e, n);
    resp->body = json_pack("{s:o}", "guilds", arr);
}

static void h_invites(void *vctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    pb_adminapi_ctx *ctx = vctx;
    uint64_t user;
    if (!user_of(req, resp, &user)) return;
    pb_invite_entry *e = NULL;
    size_t n = 0;
    pb_err err = pb_store_invites(ctx->store, user, &e, &n);
    if (err != PB_OK) {
        store_error(resp, err);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr,
                              json_pack("{s:s,s:s,s:o}", "inviteId", e[i].invite_id, "serverId",
                                        e[i].server_id, "inviterId", u64_json(e[i].inviter_id)));
    pb_invite_entries_free(e, n);
    resp->body = json_pack("{s:o}", "pendingInvites", arr);
}

/* POST /v1/rename {"new_server_id": ID} */
static void h_rename(void *vctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    pb_adminapi_ctx *ctx = vctx;
    char id[PB_SERVER_ID_MAX];
    if (!json_is_object(req->body) || json_object_size(req->body) != 1 ||
        !server_id_of(json_string_value(json_object_get(req->body, "new_server_id")), id)) {
        pb_admin_resp_error(resp, 400,
                            "body must be {\"new_server_id\": ID} with a valid server ID");
        return;
    }
    pb_rename_report *r = NULL;
    size_t n = 0;
    pb_err err = pb_delivery_rename(ctx->delivery, id, ctx->rename_wait_ms, &r, &n);
    if (err == PB_ERR_INVAL) {
        pb_admin_resp_error(resp, 400, "%s is already this server's ID", id);
        return;
    }
    if (err != PB_OK) {
        store_error(resp, err);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_pack("{s:s,s:b,s:o}", "server_id", r[i].peer, "ok", r[i].ok,
                                             "error",
                                             r[i].error ? json_string(r[i].error) : json_null()));
    pb_rename_reports_free(r, n);
    resp->body = json_pack("{s:s,s:o}", "server_id", id, "peers", arr);
}

static void h_key(void *vctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    pb_adminapi_ctx *ctx = vctx;
    char hex[65], id[PB_SERVER_ID_MAX];
    pb_keys_hex(pb_keys_public(ctx->keys), hex);
    pb_delivery_server_id(ctx->delivery, id);
    resp->body = json_pack("{s:s,s:s}", "server_id", id, "public_key", hex);
}

static void h_healthz(void *vctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    pb_adminapi_ctx *ctx = vctx;
    pb_err err = pb_store_ping(ctx->store);
    if (err != PB_OK) {
        pb_health_fail(pb_health_store(), err, NULL, "/healthz: store: %s", pb_strerror(err));
        pb_admin_resp_error(resp, 503, "store: %s", pb_strerror(err));
        return;
    }
    pb_health_ok(pb_health_store()); /* the ping is a real write */
    resp->body = json_pack("{s:b}", "ok", 1);
}

/* GET /v1/backup: a consistent copy of the running SQLite store, streamed as the answer
 * (application/vnd.sqlite3). The daemon writes it only to a temporary file beside its
 * database, gone before the answer starts (pb_store_backup): never to a path a client
 * names. The PostgreSQL store answers 501 naming its own tools. */
static void h_backup(void *vctx, const pb_admin_req *req, pb_admin_resp *resp)
{
    (void)req;
    pb_adminapi_ctx *ctx = vctx;
    if (strcmp(pb_store_backend(ctx->store), "sqlite") != 0) {
        pb_admin_resp_error(resp, 501,
                            "the %s store is backed up with its own tools, not through "
                            "postbox: pg_dump for a copy, or continuous archiving (PITR) "
                            "(see postboxd(8), BACKUPS)",
                            pb_store_backend(ctx->store));
        return;
    }
    int fd = -1;
    uint64_t size = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pb_err err = pb_store_backup(ctx->store, &fd, &size);
    if (err != PB_OK) {
        PB_WARN(NULL, "backup: the copy of the store failed: %s", pb_strerror(err));
        pb_admin_resp_error(resp, err == PB_ERR_STORE ? 503 : 500,
                            "the copy of the store could not be made in a temporary file beside "
                            "it (it needs as much free space as the store; see the log): %s",
                            pb_strerror(err));
        return;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    PB_INFO(NULL,
            "backup: a copy of the store (%llu bytes, made in %lld ms) sent to an admin client",
            (unsigned long long)size,
            (long long)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000));
    resp->file = true;
    resp->file_fd = fd;
    resp->file_len = size;
    resp->content_type = "application/vnd.sqlite3";
}

void pb_adminapi_register(pb_admin_http *a, pb_adminapi_ctx *ctx)
{
    pb_admin_http_route(a, "GET", "/healthz", h_healthz, ctx);
    pb_admin_http_route(a, "GET", "/v1/key", h_key, ctx);
    pb_admin_http_route(a, "POST", "/v1/outbox", h_outbox, ctx);
    pb_admin_http_route(a, "GET", "/v1/inbox", h_inbox, ctx);
    pb_admin_http_route(a, "GET", "/v1/peers", h_peers, ctx);
    pb_admin_http_route(a, "POST", "/v1/peers/*/retry", h_retry, ctx);
    pb_admin_http_route(a, "POST", "/v1/peers/*/drop-parked", h_drop, ctx);
    pb_admin_http_route(a, "POST", "/v1/flush", h_flush_all, ctx);
    pb_admin_http_route(a, "POST", "/v1/peers/*/flush", h_flush, ctx);
    pb_admin_http_route(a, "GET", "/v1/peers/*/queue", h_queue, ctx);
    pb_admin_http_route(a, "POST", "/v1/peers/*/drop", h_drop_queue, ctx);
    pb_admin_http_route(a, "GET", "/v1/users/*/guilds", h_guilds, ctx);
    pb_admin_http_route(a, "GET", "/v1/users/*/invites", h_invites, ctx);
    pb_admin_http_route(a, "POST", "/v1/rename", h_rename, ctx);
    pb_admin_http_route(a, "GET", "/v1/backup", h_backup, ctx);
}
