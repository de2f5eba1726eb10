/*
 * wire - every protobuf message postbox speaks, encoded and decoded with protobuf-c.
 *
 * Design: each function builds or unpacks the protoc-c generated struct and converts
 * to/from the project's own types; no generated struct leaves this file. Two details
 * are not plain protobuf-c:
 *  - Encoding Event sub-messages: the reference encoder (protobufjs, tests/vectors)
 *    writes every field of UserAddedToGuild etc. even when it is 0 or "" (vector
 *    user_added_to_guild_zeroes = 12 04 0800 1000), where proto3 protobuf-c omits them.
 *    So events are packed with copies of the four sub-message descriptors whose fields
 *    are labelled REQUIRED, which makes protobuf-c's own packer write them always.
 *    Decoding uses the generated descriptors and accepts both forms.
 *  - Decoding uses a small allocator that records each block's size, so that a decoded
 *    string (protobuf-c allocates exactly length + 1 for it) can be checked for an
 *    embedded NUL; protobuf-c 1.4 does not check proto3 strings for UTF-8 either, so a
 *    validator here does.
 *
 * Untrusted input: every *_decode takes network bytes. Each refuses more than
 * PB_WIRE_MAX_MESSAGE bytes before anything is allocated, refuses what protobuf-c
 * refuses, strings that are not UTF-8 or hold a NUL, and semantically empty messages
 * (an Event with no kind, a PushRequest with no event). Out-parameters are written
 * only on success. pb_wire_pull_resp_peek takes network bytes too: a bounded scan that
 * never reads past its input and allocates nothing.
 */
#include "wire/wire.h"

#include <assert.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "auth.pb-c.h"
#include "harmonytypes.pb-c.h"
#include "hrpc.pb-c.h"
#include "util/mem.h"
#include "sync.pb-c.h"

/* ---- decoding allocator: blocks carry their requested size ----------------------------- */

typedef union blk_hdr {
    max_align_t align;
    size_t n;
} blk_hdr;

static void *dec_alloc(void *ud, size_t n)
{
    blk_hdr *h = pb_xmalloc(sizeof *h + n);
    h->n = n;
    return h + 1;
}

static void dec_free(void *ud, void *p)
{
    if (p) free((blk_hdr *)p - 1);
}

static ProtobufCAllocator dec_allocator = {dec_alloc, dec_free, NULL};

/* ---- strings ------------------------------------------------------------------------- */

/* Well-formed UTF-8 (Unicode 15, table 3-7): no overlong forms, surrogates or > U+10FFFF. */
static bool utf8_valid(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i], lo = 0x80, hi = 0xBF;
        size_t k;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            k = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            return false;
        }
        if (n - i <= k) return false;
        if (p[i + 1] < lo || p[i + 1] > hi) return false;
        for (size_t j = 2; j <= k; j++)
            if ((p[i + j] & 0xC0) != 0x80) return false;
        i += k + 1;
    }
    return true;
}

/* A string field of a message unpacked with dec_allocator: UTF-8 and no embedded NUL.
 * An absent field points at protobuf-c's static default "". */
static bool dec_str_ok(const char *s)
{
    if (!s) return false;
    if (s == protobuf_c_empty_string) return true;
    size_t len = ((const blk_hdr *)s - 1)->n - 1;
    return strlen(s) == len && utf8_valid((const uint8_t *)s, len);
}

/* A string the caller asks us to encode. */
static bool enc_str_ok(const char *s)
{
    return s && utf8_valid((const uint8_t *)s, strlen(s));
}

/* ---- pack / unpack helpers ----------------------------------------------------------- */

static void pack_append(const ProtobufCMessage *m, pb_buf *out)
{
    size_t sz = protobuf_c_message_get_packed_size(m);
    if (sz == 0) return;
    pb_buf_reserve(out, sz);
    size_t w = protobuf_c_message_pack(m, out->data + out->len);
    assert(w == sz);
    out->len += w;
}

static pb_err unpack(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n,
                     ProtobufCMessage **out)
{
    static const uint8_t none[1];
    if (n > PB_WIRE_MAX_MESSAGE) return PB_ERR_TOO_BIG;
    if (!p && n) return PB_ERR_INVAL;
    ProtobufCMessage *m = protobuf_c_message_unpack(d, &dec_allocator, n, p ? p : none);
    if (!m) return PB_ERR_DECODE;
    *out = m;
    return PB_OK;
}

static void unpacked_free(void *m)
{
    if (m) protobuf_c_message_free_unpacked(m, &dec_allocator);
}

/* ---- events ---------------------------------------------------------------------------- */

/* Always-emit copies of the sub-message descriptors (see the file comment). */
enum { SUB_REMOVED, SUB_ADDED, SUB_INVITED, SUB_REJECTED, SUB_COUNT, SUB_MAX_FIELDS = 3 };
static ProtobufCFieldDescriptor emit_fields[SUB_COUNT][SUB_MAX_FIELDS];
static ProtobufCMessageDescriptor emit_desc[SUB_COUNT];
static pthread_once_t emit_once = PTHREAD_ONCE_INIT;

static void emit_init(void)
{
    const ProtobufCMessageDescriptor *gen[SUB_COUNT] = {
        [SUB_REMOVED] = &protocol__sync__v1__event__user_removed_from_guild__descriptor,
        [SUB_ADDED] = &protocol__sync__v1__event__user_added_to_guild__descriptor,
        [SUB_INVITED] = &protocol__sync__v1__event__user_invited__descriptor,
        [SUB_REJECTED] = &protocol__sync__v1__event__user_rejected_invite__descriptor,
    };
    for (int i = 0; i < SUB_COUNT; i++) {
        if (gen[i]->n_fields > SUB_MAX_FIELDS) abort(); /* sync.proto changed: grow the table */
        emit_desc[i] = *gen[i];
        for (unsigned f = 0; f < gen[i]->n_fields; f++) {
            emit_fields[i][f] = gen[i]->fields[f];
            emit_fields[i][f].label = PROTOBUF_C_LABEL_REQUIRED;
        }
        emit_desc[i].fields = emit_fields[i];
    }
}

/* An Event ready to pack; ev points into sub, so an ev_pb must not be moved once built. */
typedef struct ev_pb {
    Protocol__Sync__V1__Event ev;
    union {
        Protocol__Sync__V1__Event__UserRemovedFromGuild removed;
        Protocol__Sync__V1__Event__UserAddedToGuild added;
        Protocol__Sync__V1__Event__UserInvited invited;
        Protocol__Sync__V1__Event__UserRejectedInvite rejected;
    } sub;
} ev_pb;

/* Fills *d from src; PB_ERR_INVAL for an unknown kind or a missing / non-UTF-8 invite_id.
 * d->ev borrows src->invite_id. */
static pb_err event_to_pb(const pb_event *src, ev_pb *d)
{
    pthread_once(&emit_once, emit_init);
    Protocol__Sync__V1__Event ev = PROTOCOL__SYNC__V1__EVENT__INIT;
    d->ev = ev;
    switch (src->kind) {
    case PB_EV_USER_REMOVED_FROM_GUILD: {
        Protocol__Sync__V1__Event__UserRemovedFromGuild s =
            PROTOCOL__SYNC__V1__EVENT__USER_REMOVED_FROM_GUILD__INIT;
        s.base.descriptor = &emit_desc[SUB_REMOVED];
        s.user_id = src->user_id;
        s.guild_id = src->guild_id;
        d->sub.removed = s;
        d->ev.kind_case = PROTOCOL__SYNC__V1__EVENT__KIND_USER_REMOVED_FROM_GUILD;
        d->ev.user_removed_from_guild = &d->sub.removed;
        return PB_OK;
    }
    case PB_EV_USER_ADDED_TO_GUILD: {
        Protocol__Sync__V1__Event__UserAddedToGuild s =
            PROTOCOL__SYNC__V1__EVENT__USER_ADDED_TO_GUILD__INIT;
        s.base.descriptor = &emit_desc[SUB_ADDED];
        s.user_id = src->user_id;
        s.guild_id = src->guild_id;
        d->sub.added = s;
        d->ev.kind_case = PROTOCOL__SYNC__V1__EVENT__KIND_USER_ADDED_TO_GUILD;
        d->ev.user_added_to_guild = &d->sub.added;
        return PB_OK;
    }
    case PB_EV_USER_INVITED: {
        if (!enc_str_ok(src->invite_id)) return PB_ERR_INVAL;
        Protocol__Sync__V1__Event__UserInvited s = PROTOCOL__SYNC__V1__EVENT__USER_INVITED__INIT;
        s.base.descriptor = &emit_desc[SUB_INVITED];
        s.user_id = src->user_id;
        s.inviter_id = src->inviter_id;
        s.invite_id = src->invite_id;
        d->sub.invited = s;
        d->ev.kind_case = PROTOCOL__SYNC__V1__EVENT__KIND_USER_INVITED;
        d->ev.user_invited = &d->sub.invited;
        return PB_OK;
    }
    case PB_EV_USER_REJECTED_INVITE: {
        if (!enc_str_ok(src->invite_id)) return PB_ERR_INVAL;
        Protocol__Sync__V1__Event__UserRejectedInvite s =
            PROTOCOL__SYNC__V1__EVENT__USER_REJECTED_INVITE__INIT;
        s.base.descriptor = &emit_desc[SUB_REJECTED];
        s.guild_id = src->guild_id;
        s.user_id = src->user_id;
        s.invite_id = src->invite_id;
        d->sub.rejected = s;
        d->ev.kind_case = PROTOCOL__SYNC__V1__EVENT__KIND_USER_REJECTED_INVITE;
        d->ev.user_rejected_invite = &d->sub.rejected;
        return PB_OK;
    }
    default:
        return PB_ERR_INVAL;
    }
}

/* Converts a decoded Event; PB_ERR_DECODE when no kind is set or invite_id is bad.
 * On PB_OK *ev owns a copy of invite_id (never NULL for the kinds that carry one). */
static pb_err event_from_pb(const Protocol__Sync__V1__Event *m, pb_event *ev)
{
    pb_event e = {0};
    const char *inv = NULL;
    if (!m) return PB_ERR_DECODE;
    switch (m->kind_case) {
    case PROTOCOL__SYNC__V1__EVENT__KIND_USER_REMOVED_FROM_GUILD:
        if (!m->user_removed_from_guild) return PB_ERR_DECODE;
        e.kind = PB_EV_USER_REMOVED_FROM_GUILD;
        e.user_id = m->user_removed_from_guild->user_id;
        e.guild_id = m->user_removed_from_guild->guild_id;
        break;
    case PROTOCOL__SYNC__V1__EVENT__KIND_USER_ADDED_TO_GUILD:
        if (!m->user_added_to_guild) return PB_ERR_DECODE;
        e.kind = PB_EV_USER_ADDED_TO_GUILD;
        e.user_id = m->user_added_to_guild->user_id;
        e.guild_id = m->user_added_to_guild->guild_id;
        break;
    case PROTOCOL__SYNC__V1__EVENT__KIND_USER_INVITED:
        if (!m->user_invited) return PB_ERR_DECODE;
        e.kind = PB_EV_USER_INVITED;
        e.user_id = m->user_invited->user_id;
        e.inviter_id = m->user_invited->inviter_id;
        inv = m->user_invited->invite_id;
        if (!dec_str_ok(inv)) return PB_ERR_DECODE;
        break;
    case PROTOCOL__SYNC__V1__EVENT__KIND_USER_REJECTED_INVITE:
        if (!m->user_rejected_invite) return PB_ERR_DECODE;
        e.kind = PB_EV_USER_REJECTED_INVITE;
        e.guild_id = m->user_rejected_invite->guild_id;
        e.user_id = m->user_rejected_invite->user_id;
        inv = m->user_rejected_invite->invite_id;
        if (!dec_str_ok(inv)) return PB_ERR_DECODE;
        break;
    default:
        return PB_ERR_DECODE;
    }
    if (inv) e.invite_id = pb_xstrdup(inv);
    *ev = e;
    return PB_OK;
}

pb_err pb_wire_event_encode(const pb_event *ev, pb_buf *out)
{
    ev_pb m;
    pb_err err = event_to_pb(ev, &m);
    if (err) return err;
    pack_append(&m.ev.base, out);
    return PB_OK;
}

pb_err pb_wire_event_decode(const uint8_t *p, size_t n, pb_event *ev)
{
    ProtobufCMessage *m = NULL;
    pb_err err = unpack(&protocol__sync__v1__event__descriptor, p, n, &m);
    if (err) return err;
    err = event_from_pb((Protocol__Sync__V1__Event *)m, ev);
    unpacked_free(m);
    return err;
}

/* ---- PushRequest ------------------------------------------------------------------------ */

void pb_push_req_clear(pb_push_req *r)
{
    if (!r) return;
    for (size_t i = 0; r->evs && i < r->n; i++)
        pb_event_clear(&r->evs[i]);
    free(r->evs);
    free(r->seqs);
    memset(r, 0, sizeof *r);
}

static bool seqs_increasing(const uint64_t *seqs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (seqs[i] == 0 || (i > 0 && seqs[i] <= seqs[i - 1])) return false;
    return true;
}

pb_err pb_wire_push_encode(const pb_event *evs, const uint64_t *seqs, size_t n, uint64_t epoch,
                           pb_buf *out)
{
    return pb_wire_push_encode_after(evs, seqs, n, epoch, 0, out);
}

pb_err pb_wire_push_encode_after(const pb_event *evs, const uint64_t *seqs, size_t n,
                                 uint64_t epoch, uint64_t after, pb_buf *out)
{
    if (seqs && n > 0 && after && after >= seqs[0]) return PB_ERR_INVAL;
    if (!evs || n == 0 || (!seqs && n > 1) || (seqs && !seqs_increasing(seqs, n)))
        return PB_ERR_INVAL;
    pb_err err = PB_OK;
    ev_pb *es = pb_xcalloc(n, sizeof *es);
    Protocol__Sync__V1__Event **more = n > 1 ? pb_xcalloc(n - 1, sizeof *more) : NULL;
    for (size_t i = 0; i < n; i++) {
        err = event_to_pb(&evs[i], &es[i]);
        if (err) goto out;
        if (i > 0) more[i - 1] = &es[i].ev;
    }
    Protocol__Sync__V1__PushRequest m = PROTOCOL__SYNC__V1__PUSH_REQUEST__INIT;
    m.event = &es[0].ev;
    if (seqs) {
        m.postbox_seq = seqs[0];
        m.postbox_epoch = epoch;
        m.n_postbox_more = n - 1;
        m.postbox_more = more;
        m.n_postbox_more_seqs = n - 1;
        m.postbox_more_seqs = (uint64_t *)seqs + 1; /* not written by pack */
        m.postbox_after = after;
    }
    pack_append(&m.base, out);
out:
    free(more);
    free(es);
    return err;
}

pb_err pb_wire_push_decode(const uint8_t *p, size_t n, size_t max_events, pb_push_req *out)
{
    ProtobufCMessage *raw = NULL;
    pb_push_req r = {0};
    pb_err err = unpack(&protocol__sync__v1__push_request__descriptor, p, n, &raw);
    if (err) return err;
    Protocol__Sync__V1__PushRequest *m = (Protocol__Sync__V1__PushRequest *)raw;
    size_t cnt = 1 + m->n_postbox_more;
    if (cnt > max_events) {
        err = PB_ERR_TOO_BIG;
        goto out;
    }
    if (m->n_postbox_more_seqs != m->n_postbox_more ||
        (m->postbox_seq == 0 && m->n_postbox_more > 0)) {
        err = PB_ERR_DECODE;
        goto out;
    }
    r.evs = pb_xcalloc(cnt, sizeof *r.evs);
    for (; r.n < cnt; r.n++) {
        const Protocol__Sync__V1__Event *e = r.n == 0 ? m->event : m->postbox_more[r.n - 1];
        err = event_from_pb(e, &r.evs[r.n]); /* a missing event is refused there */
        if (err) goto out;
    }
    if (m->postbox_seq) {
        r.seqs = pb_xmalloc(cnt * sizeof *r.seqs);
        r.seqs[0] = m->postbox_seq;
        if (cnt > 1) memcpy(r.seqs + 1, m->postbox_more_seqs, (cnt - 1) * sizeof *r.seqs);
        if (!seqs_increasing(r.seqs, cnt)) {
            err = PB_ERR_DECODE;
            goto out;
        }
        r.epoch = m->postbox_epoch;
        /* a condition at or above the batch's own first number could never be met */
        if (m->postbox_after >= r.seqs[0]) {
            err = PB_ERR_DECODE;
            goto out;
        }
        r.after = m->postbox_after;
    }
    *out = r;
    memset(&r, 0, sizeof r);
out:
    pb_push_req_clear(&r);
    unpacked_free(raw);
    return err;
}

/* ---- PullRequest ------------------------------------------------------------------------ */

pb_err pb_wire_pull_req_encode(const pb_pull_req *r, pb_buf *out)
{
    Protocol__Sync__V1__PullRequest m = PROTOCOL__SYNC__V1__PULL_REQUEST__INIT;
    if (r) {
        m.postbox_next_seq = r->next_seq;
        m.postbox_epoch = r->epoch;
        m.postbox_max_bytes = r->max_bytes;
        m.postbox_max_events = r->max_events;
        m.postbox_from_seq = r->from_seq;
    }
    pack_append(&m.base, out);
    return PB_OK;
}

pb_err pb_wire_pull_req_decode(const uint8_t *p, size_t n, pb_pull_req *out)
{
    ProtobufCMessage *raw = NULL;
    pb_err err = unpack(&protocol__sync__v1__pull_request__descriptor, p, n, &raw);
    if (err) return err;
    const Protocol__Sync__V1__PullRequest *m = (const Protocol__Sync__V1__PullRequest *)raw;
    out->next_seq = m->postbox_next_seq;
    out->epoch = m->postbox_epoch;
    out->max_bytes = m->postbox_max_bytes;
    out->max_events = m->postbox_max_events;
    out->from_seq = m->postbox_from_seq;
    unpacked_free(raw);
    return PB_OK;
}

/* ---- PullResponse ----------------------------------------------------------------------- */

pb_err pb_wire_pull_resp_encode(const pb_event *evs, const uint64_t *seqs, size_t count,
                                uint64_t epoch, pb_buf *out)
{
    pb_err err = PB_OK;
    Protocol__Sync__V1__PullResponse m = PROTOCOL__SYNC__V1__PULL_RESPONSE__INIT;
    ev_pb *es = count ? pb_xcalloc(count, sizeof *es) : NULL;
    Protocol__Sync__V1__Event **ptrs = count ? pb_xcalloc(count, sizeof *ptrs) : NULL;
    for (size_t i = 0; i < count; i++) {
        err = event_to_pb(&evs[i], &es[i]);
        if (err) goto out;
        ptrs[i] = &es[i].ev;
    }
    m.n_event_queue = count;
    m.event_queue = ptrs;
    if (seqs && count) {
        m.n_postbox_seqs = count;
        m.postbox_seqs = (uint64_t *)seqs; /* not written by pack */
    }
    m.postbox_epoch = epoch;
    pack_append(&m.base, out);
out:
    free(ptrs);
    free(es);
    return err;
}

pb_err pb_wire_pull_resp_append_event(const pb_event *ev, pb_buf *out)
{
    /* A PullResponse holding just this event packs to exactly its event_queue entry. */
    ev_pb e;
    pb_err err = event_to_pb(ev, &e);
    if (err) return err;
    Protocol__Sync__V1__Event *one = &e.ev;
    Protocol__Sync__V1__PullResponse m = PROTOCOL__SYNC__V1__PULL_RESPONSE__INIT;
    m.n_event_queue = 1;
    m.event_queue = &one;
    pack_append(&m.base, out);
    return PB_OK;
}

void pb_wire_pull_resp_append_seqs(const uint64_t *seqs, size_t count, uint64_t epoch, pb_buf *out)
{
    Protocol__Sync__V1__PullResponse m = PROTOCOL__SYNC__V1__PULL_RESPONSE__INIT;
    if (seqs && count) {
        m.n_postbox_seqs = count;
        m.postbox_seqs = (uint64_t *)seqs; /* not written by pack */
    }
    m.postbox_epoch = epoch;
    pack_append(&m.base, out);
}

/* One base-128 varint at *p (at most 10 bytes, below end); false when cut or too long. */
static bool peek_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t x = 0;
    for (unsigned shift = 0; shift < 70 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return true;
        }
    }
    return false;
}

pb_err pb_wire_pull_resp_peek(const uint8_t *p, size_t n, size_t *count, uint64_t *first_seq,
                              uint64_t *last_seq, uint64_t *epoch)
{
    if (n > PB_WIRE_MAX_MESSAGE) return PB_ERR_TOO_BIG;
    const uint8_t *end = p + n;
    size_t cnt = 0, nseqs = 0;
    uint64_t first = 0, last = 0, ep = 0, key, v;
    while (p < end) {
        if (!peek_varint(&p, end, &key)) return PB_ERR_DECODE;
        uint64_t field = key >> 3;
        switch (key & 7) {
        case 0: /* varint: a seq written unpacked, or the epoch */
            if (!peek_varint(&p, end, &v)) return PB_ERR_DECODE;
            if (field == 18001) {
                if (!nseqs++) first = v;
                last = v;
            } else if (field == 18002) {
                ep = v;
            }
            break;
        case 1:
            if ((size_t)(end - p) < 8) return PB_ERR_DECODE;
            p += 8;
            break;
        case 5:
            if ((size_t)(end - p) < 4) return PB_ERR_DECODE;
            p += 4;
            break;
        case 2: { /* an event, packed seqs, or something unknown */
            if (!peek_varint(&p, end, &v) || v > (uint64_t)(end - p)) return PB_ERR_DECODE;
            const uint8_t *q = p, *qend = p + v;
            p = qend;
            if (field == 1) {
                cnt++;
            } else if (field == 18001) {
                while (q < qend) {
                    if (!peek_varint(&q, qend, &v)) return PB_ERR_DECODE;
                    if (!nseqs++) first = v;
                    last = v;
                }
            }
            break;
        }
        default:
            return PB_ERR_DECODE;
        }
    }
    *count = cnt;
    *first_seq = first;
    *last_seq = last;
    *epoch = ep;
    return PB_OK;
}

pb_err pb_wire_pull_resp_decode(const uint8_t *p, size_t n, pb_event **evs, uint64_t **seqs,
                                size_t *count, uint64_t *epoch)
{
    ProtobufCMessage *raw = NULL;
    pb_event *es = NULL;
    uint64_t *ss = NULL;
    size_t done = 0;
    pb_err err = unpack(&protocol__sync__v1__pull_response__descriptor, p, n, &raw);
    if (err) return err;
    Protocol__Sync__V1__PullResponse *m = (Protocol__Sync__V1__PullResponse *)raw;
    size_t cnt = m->n_event_queue;
    if (m->n_postbox_seqs != 0 && m->n_postbox_seqs != cnt) {
        err = PB_ERR_DECODE;
        goto out;
    }
    if (cnt) es = pb_xcalloc(cnt, sizeof *es);
    for (; done < cnt; done++) {
        err = event_from_pb(m->event_queue[done], &es[done]);
        if (err) goto out;
    }
    if (m->n_postbox_seqs) {
        if (!seqs_increasing(m->postbox_seqs, cnt)) { /* as a sender numbers its queue */
            err = PB_ERR_DECODE;
            goto out;
        }
        ss = pb_xmalloc(cnt * sizeof *ss);
        memcpy(ss, m->postbox_seqs, cnt * sizeof *ss);
    }
    *evs = es;
    *seqs = ss;
    *count = cnt;
    *epoch = m->postbox_epoch;
    es = NULL;
out:
    if (es) {
        for (size_t i = 0; i < done; i++)
            pb_event_clear(&es[i]);
        free(es);
    }
    unpacked_free(raw);
    return err;
}

/* ---- NotifyNewIdRequest, empty messages ------------------------------------------------- */

pb_err pb_wire_notify_encode(const char *new_id, const uint8_t *proof, size_t proof_len,
                             pb_buf *out)
{
    if (!enc_str_ok(new_id) || (!proof && proof_len)) return PB_ERR_INVAL;
    Protocol__Sync__V1__NotifyNewIdRequest m = PROTOCOL__SYNC__V1__NOTIFY_NEW_ID_REQUEST__INIT;
    m.new_server_id = (char *)new_id; /* not written by pack */
    m.new_id_token.data = (uint8_t *)proof;
    m.new_id_token.len = proof_len;
    pack_append(&m.base, out);
    return PB_OK;
}

static uint8_t *dup_bytes(const ProtobufCBinaryData *b);

pb_err pb_wire_notify_decode(const uint8_t *p, size_t n, char **new_id, uint8_t **proof,
                             size_t *proof_len)
{
    ProtobufCMessage *raw = NULL;
    pb_err err = unpack(&protocol__sync__v1__notify_new_id_request__descriptor, p, n, &raw);
    if (err) return err;
    const Protocol__Sync__V1__NotifyNewIdRequest *m =
        (const Protocol__Sync__V1__NotifyNewIdRequest *)raw;
    if (!dec_str_ok(m->new_server_id)) {
        err = PB_ERR_DECODE;
        goto out;
    }
    *new_id = pb_xstrdup(m->new_server_id);
    *proof = dup_bytes(&m->new_id_token);
    *proof_len = m->new_id_token.len;
out:
    unpacked_free(raw);
    return err;
}

pb_err pb_wire_empty_decode(const uint8_t *p, size_t n)
{
    /* Every empty message has the same (empty) descriptor shape; unknown fields are
     * skipped as proto3 says, malformed bytes are refused. */
    ProtobufCMessage *raw = NULL;
    pb_err err = unpack(&protocol__auth__v1__key_request__descriptor, p, n, &raw);
    if (err) return err;
    unpacked_free(raw);
    return PB_OK;
}

/* ---- PushResponse ------------------------------------------------------------------------ */

pb_err pb_wire_push_resp_encode(uint64_t seq_ack, uint64_t epoch, pb_buf *out)
{
    return pb_wire_push_resp_encode_win(seq_ack, epoch, 0, out);
}

pb_err pb_wire_push_resp_encode_win(uint64_t seq_ack, uint64_t epoch, uint32_t window, pb_buf *out)
{
    Protocol__Sync__V1__PushResponse m = PROTOCOL__SYNC__V1__PUSH_RESPONSE__INIT;
    m.postbox_seq_ack = seq_ack;
    m.postbox_epoch = seq_ack ? epoch : 0;
    m.postbox_window = seq_ack ? window : 0;
    pack_append(&m.base, out);
    return PB_OK;
}

pb_err pb_wire_push_resp_decode(const uint8_t *p, size_t n, uint64_t *seq_ack, uint64_t *epoch)
{
    uint32_t window;
    return pb_wire_push_resp_decode_win(p, n, seq_ack, epoch, &window);
}

pb_err pb_wire_push_resp_decode_win(const uint8_t *p, size_t n, uint64_t *seq_ack, uint64_t *epoch,
                                    uint32_t *window)
{
    ProtobufCMessage *raw = NULL;
    pb_err err = unpack(&protocol__sync__v1__push_response__descriptor, p, n, &raw);
    if (err) return err;
    *seq_ack = ((Protocol__Sync__V1__PushResponse *)raw)->postbox_seq_ack;
    *epoch = ((Protocol__Sync__V1__PushResponse *)raw)->postbox_epoch;
    *window = *seq_ack ? ((Protocol__Sync__V1__PushResponse *)raw)->postbox_window : 0;
    unpacked_free(raw);
    return PB_OK;
}

/* ---- KeyResponse ------------------------------------------------------------------------ */

pb_err pb_wire_key_resp_encode(const uint8_t key[32], pb_buf *out)
{
    Protocol__Auth__V1__KeyResponse m = PROTOCOL__AUTH__V1__KEY_RESPONSE__INIT;
    m.key.data = (uint8_t *)key; /* not written by pack */
    m.key.len = 32;
    pack_append(&m.base, out);
    return PB_OK;
}

pb_err pb_wire_key_resp_decode(const uint8_t *p, size_t n, uint8_t key[32])
{
    ProtobufCMessage *raw = NULL;
    pb_err err = unpack(&protocol__auth__v1__key_response__descriptor, p, n, &raw);
    if (err) return err;
    Protocol__Auth__V1__KeyResponse *m = (Protocol__Auth__V1__KeyResponse *)raw;
    if (m->key.len != 32) {
        err = PB_ERR_DECODE;
        goto out;
    }
    memcpy(key, m->key.data, 32);
out:
    unpacked_free(raw);
    return err;
}

/* ---- Token, AuthData -------------------------------------------------------------------- */

void pb_token_clear(pb_token *t)
{
    if (!t) return;
    free(t->sig);
    free(t->data);
    memset(t, 0, sizeof *t);
}

pb_err pb_wire_token_encode(const uint8_t *sig, size_t sig_len, const uint8_t *data,
                            size_t data_len, pb_buf *out)
{
    if ((!sig && sig_len) || (!data && data_len)) return PB_ERR_INVAL;
    Protocol__Harmonytypes__V1__Token m = PROTOCOL__HARMONYTYPES__V1__TOKEN__INIT;
    m.sig.data = (uint8_t *)sig; /* not written by pack */
    m.sig.len = sig_len;
    m.data.data = (uint8_t *)data;
    m.data.len = data_len;
    pack_append(&m.base, out);
    return PB_OK;
}

static uint8_t *dup_bytes(const ProtobufCBinaryData *b)
{
    if (b->len == 0) return NULL;
    uint8_t *p = pb_xmalloc(b->len);
    memcpy(p, b->data, b->len);
    return p;
}

pb_err pb_wire_token_decode(const uint8_t *p, size_t n, pb_token *t)
{
    ProtobufCMessage *raw = NULL;
    pb_err err = unpack(&protocol__harmonytypes__v1__token__descriptor, p, n, &raw);
    if (err) return err;
    Protocol__Harmonytypes__V1__Token *m = (Protocol__Harmonytypes__V1__Token *)raw;
    t->sig = dup_bytes(&m->sig);
    t->sig_len = m->sig.len;
    t->data = dup_bytes(&m->data);
    t->data_len = m->data.len;
    unpacked_free(raw);
    return PB_OK;
}

pb_err pb_wire_authdata_encode(const char *server_id, uint64_t time, const char *audience,
                               pb_buf *out)
{
    if (!enc_str_ok(server_id) || (audience && !enc_str_ok(audience))) return PB_ERR_INVAL;
    Protocol__Sync__V1__AuthData m = PROTOCOL__SYNC__V1__AUTH_DATA__INIT;
    m.server_id = (char *)server_id; /* not written by pack */
    m.time = time;
    if (audience) m.audience = (char *)audience;
    pack_append(&m.base, out);
    return PB_OK;
}

pb_err pb_wire_authdata_decode(const uint8_t *p, size_t n, char **server_id, uint64_t *time,
                               char **audience)
{
    ProtobufCMessage *raw = NULL;
    pb_err err = unpack(&protocol__sync__v1__auth_data__descriptor, p, n, &raw);
    if (err) return err;
    Protocol__Sync__V1__AuthData *m = (Protocol__Sync__V1__AuthData *)raw;
    if (!dec_str_ok(m->server_id) || !dec_str_ok(m->audience)) {
        err = PB_ERR_DECODE;
        goto out;
    }
    *server_id = pb_xstrdup(m->server_id);
    *time = m->time;
    if (audience) *audience = m->audience[0] ? pb_xstrdup(m->audience) : NULL;
out:
    unpacked_free(raw);
    return err;
}

/* ---- hrpc.v1.Error, RetryInfo ----------------------------------------------------------- */

pb_err pb_wire_error_encode(const char *identifier, const char *human_message,
                            const uint8_t *details, size_t details_len, pb_buf *out)
{
    if (!enc_str_ok(identifier) || !enc_str_ok(human_message) || (!details && details_len))
        return PB_ERR_INVAL;
    Hrpc__V1__Error m = HRPC__V1__ERROR__INIT;
    m.identifier = (char *)identifier; /* not written by pack */
    m.human_message = (char *)human_message;
    m.details.data = (uint8_t *)details;
    m.details.len = details_len;
    pack_append(&m.base, out);
    return PB_OK;
}

pb_err pb_wire_error_decode(const uint8_t *p, size_t n, char **identifier, char **human_message,
                            uint8_t **details, size_t *details_len)
{
    ProtobufCMessage *raw = NULL;
    pb_err err = unpack(&hrpc__v1__error__descriptor, p, n, &raw);
    if (err) return err;
    Hrpc__V1__Error *m = (Hrpc__V1__Error *)raw;
    if (!dec_str_ok(m->identifier) || !dec_str_ok(m->human_message)) {
        err = PB_ERR_DECODE;
        goto out;
    }
    *identifier = pb_xstrdup(m->identifier);
    *human_message = pb_xstrdup(m->human_message);
    *details = dup_bytes(&m->details);
    *details_len = m->details.len;
out:
    unpacked_free(raw);
    return err;
}

pb_err pb_wire_retry_info_encode(uint32_t retry_after, pb_buf *out)
{
    Hrpc__V1__RetryInfo m = HRPC__V1__RETRY_INFO__INIT;
    m.retry_after = retry_after;
    pack_append(&m.base, out);
    return PB_OK;
}

pb_err pb_wire_retry_info_decode(const uint8_t *p, size_t n, uint32_t *retry_after)
{
    ProtobufCMessage *raw = NULL;
    pb_err err = unpack(&hrpc__v1__retry_info__descriptor, p, n, &raw);
    if (err) return err;
    *retry_after = ((Hrpc__V1__RetryInfo *)raw)->retry_after;
    unpacked_free(raw);
    return PB_OK;
}
