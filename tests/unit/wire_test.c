/*
 * wire_test - the wire module against the shared vectors (protobufjs output) and against
 * hostile input: every encoder reproduces the vectors byte for byte, every decoder gives
 * the values back, the `invalid` entries are refused, extension fields round-trip and
 * are absent when 0, and malformed, truncated, oversized or non-UTF-8 input is refused
 * without crashing or leaking (run under valgrind).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "harness.h"
#include "wire/wire.h"

static json_t *V;

/* ---- helpers --------------------------------------------------------------------------- */

static void check_hex(const char *file, int line, const pb_buf *b, const char *want)
{
    char *got = pbt_tohex(b->data, b->len);
    pbt_check(strcmp(got, want) == 0, file, line, "bytes == vector", "got %s, want %s", got, want);
    free(got);
}
#define CHECK_HEX(b, h) check_hex(__FILE__, __LINE__, (b), (h))

static const char *jstr(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    if (!s) {
        fprintf(stderr, "vectors: missing string %s\n", key);
        abort();
    }
    return s;
}

/* uint64 as a decimal string (protobufjs JSON form). */
static uint64_t ju64(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!v) return 0;
    const char *s = json_string_value(v);
    char *end;
    errno = 0;
    unsigned long long x = s ? strtoull(s, &end, 10) : 0;
    if (!s || errno || *end || !*s) {
        fprintf(stderr, "vectors: bad uint64 %s\n", key);
        abort();
    }
    return x;
}

/* Builds a pb_event from the vectors' JSON form {"userAddedToGuild": {...}}. */
static void event_from_json(json_t *j, pb_event *ev)
{
    memset(ev, 0, sizeof *ev);
    const char *name;
    json_t *body;
    json_object_foreach(j, name, body)
    {
        for (int k = PB_EV_USER_REMOVED_FROM_GUILD; k <= PB_EV_USER_REJECTED_INVITE; k++)
            if (strcmp(name, pb_event_kind_name((pb_event_kind)k)) == 0) ev->kind = k;
        ev->user_id = ju64(body, "userId");
        ev->guild_id = ju64(body, "guildId");
        ev->inviter_id = ju64(body, "inviterId");
        if (json_object_get(body, "inviteId")) ev->invite_id = strdup(jstr(body, "inviteId"));
    }
    if (ev->kind == PB_EV_NONE) {
        fprintf(stderr, "vectors: unknown event kind\n");
        abort();
    }
}

static void event_named(const char *name, pb_event *ev)
{
    json_t *e = json_object_get(json_object_get(V, "events"), name);
    if (!e) abort();
    event_from_json(json_object_get(e, "json"), ev);
}

/* Hex of the vector at a path of object keys. */
static const char *vhex(const char *a, const char *b, const char *c)
{
    json_t *o = json_object_get(V, a);
    if (b) o = json_object_get(o, b);
    if (c) o = json_object_get(o, c);
    const char *s = json_string_value(o);
    if (!s) {
        fprintf(stderr, "vectors: missing %s/%s/%s\n", a, b ? b : "", c ? c : "");
        abort();
    }
    return s;
}

/* ---- vectors: events and push requests --------------------------------------------- */

static void test_events(void)
{
    const char *name;
    json_t *e;
    json_object_foreach(json_object_get(V, "events"), name, e)
    {
        pb_event ev, back = {0};
        pb_buf b = PB_BUF_INIT;
        event_from_json(json_object_get(e, "json"), &ev);
        const char *want = jstr(e, "event_hex");

        CHECK_OK(pb_wire_event_encode(&ev, &b));
        CHECK_HEX(&b, want);

        size_t n;
        uint8_t *p = pbt_hex(want, &n);
        CHECK_OK(pb_wire_event_decode(p, n, &back));
        CHECKF(pb_event_equal(&ev, &back), "event %s decodes back", name);
        pb_event_clear(&back);
        free(p);

        /* push_requests: same event, no extension */
        const char *push = vhex("push_requests", name, NULL);
        pb_buf_reset(&b);
        CHECK_OK(pb_wire_push_encode(&ev, NULL, 1, 0, &b));
        CHECK_HEX(&b, push);
        p = pbt_hex(push, &n);
        pb_push_req pr = {0};
        CHECK_OK(pb_wire_push_decode(p, n, 16, &pr));
        CHECK_INT(pr.n, 1);
        CHECKF(pr.n == 1 && pb_event_equal(&ev, &pr.evs[0]), "push %s decodes back", name);
        CHECK(pr.seqs == NULL);
        CHECK_INT(pr.epoch, 0);
        pb_push_req_clear(&pr);
        /* an epoch without a sequence number is not sent: same bytes */
        pb_buf_reset(&b);
        CHECK_OK(pb_wire_push_encode(&ev, NULL, 1, 77, &b));
        CHECK_HEX(&b, push);
        free(p);

        pb_event_clear(&ev);
        pb_buf_free(&b);
    }
    CHECK_INT(json_object_size(json_object_get(V, "push_requests")),
              json_object_size(json_object_get(V, "events")));

    /* the zero fields may also be omitted by other encoders: both forms decode alike */
    pb_event z, back;
    event_named("user_added_to_guild_zeroes", &z);
    CHECK_OK(pb_wire_event_decode((const uint8_t *)"\x12\x00", 2, &back));
    CHECK(pb_event_equal(&z, &back));
    pb_event_clear(&back);
    pb_event_clear(&z);

    /* absent invite_id decodes as "", never NULL */
    CHECK_OK(pb_wire_event_decode((const uint8_t *)"\x1a\x02\x08\x01", 4, &back));
    CHECK_INT(back.kind, PB_EV_USER_INVITED);
    CHECK_INT(back.user_id, 1);
    CHECK_STR(back.invite_id, "");
    pb_event_clear(&back);
    CHECK_OK(pb_wire_event_decode((const uint8_t *)"\x22\x02\x10\x05", 4, &back));
    CHECK_INT(back.kind, PB_EV_USER_REJECTED_INVITE);
    CHECK_INT(back.user_id, 5);
    CHECK_STR(back.invite_id, "");
    pb_event_clear(&back);

    /* an Event with no kind is refused, alone or inside a PullResponse */
    CHECK_ERR(pb_wire_event_decode((const uint8_t *)"", 0, &back), PB_ERR_DECODE);
    pb_event *evs = NULL;
    uint64_t *seqs = NULL;
    size_t count = 7;
    uint64_t epoch = 3;
    CHECK_ERR(pb_wire_pull_resp_decode((const uint8_t *)"\x0a\x00", 2, &evs, &seqs, &count, &epoch),
              PB_ERR_DECODE);
    CHECK(evs == NULL && seqs == NULL && count == 7 && epoch == 3);
    /* a PushRequest without an event is refused */
    pb_push_req pr = {.n = 5};
    CHECK_ERR(pb_wire_push_decode((const uint8_t *)"", 0, 16, &pr), PB_ERR_DECODE);
    CHECK_ERR(pb_wire_push_decode((const uint8_t *)"\x88\xe5\x08\x01", 4, 16, &pr), PB_ERR_DECODE);
    CHECK_INT(pr.n, 5);

    /* a PullResponse whose sequence numbers do not increase is refused (a sender of this
     * project numbers its queue upwards; anything else would re-label an event's place) */
    pb_event two[2] = {{PB_EV_USER_ADDED_TO_GUILD, 1, 2, 0, NULL},
                       {PB_EV_USER_REMOVED_FROM_GUILD, 1, 2, 0, NULL}};
    pb_buf b = PB_BUF_INIT;
    CHECK_OK(pb_wire_pull_resp_encode(two, (uint64_t[]){1, 2}, 2, 7, &b));
    CHECK_OK(pb_wire_pull_resp_decode(b.data, b.len, &evs, &seqs, &count, &epoch));
    CHECK(count == 2 && seqs && seqs[0] == 1 && seqs[1] == 2);
    for (size_t i = 0; i < count; i++)
        pb_event_clear(&evs[i]);
    free(evs);
    free(seqs);
    /* field 18001, packed (tag 8a e5 08, length 2): 1, then 2; rewrite them, decode again */
    static const uint8_t packed[] = {0x8a, 0xe5, 0x08, 0x02, 0x01, 0x02};
    uint8_t *at = memmem(b.data, b.len, packed, sizeof packed);
    CHECK(at != NULL);
    if (at) {
        evs = NULL, seqs = NULL, count = 9;
        at[4] = 2, at[5] = 1;
        CHECK_ERR(pb_wire_pull_resp_decode(b.data, b.len, &evs, &seqs, &count, &epoch),
                  PB_ERR_DECODE);
        at[4] = 2, at[5] = 2;
        CHECK_ERR(pb_wire_pull_resp_decode(b.data, b.len, &evs, &seqs, &count, &epoch),
                  PB_ERR_DECODE);
        at[4] = 0, at[5] = 1;
        CHECK_ERR(pb_wire_pull_resp_decode(b.data, b.len, &evs, &seqs, &count, &epoch),
                  PB_ERR_DECODE);
        CHECK(evs == NULL && seqs == NULL && count == 9);
    }
    pb_buf_free(&b);
}

static void test_encode_refusals(void)
{
    pb_buf b = PB_BUF_INIT;
    pb_event ev = {0};
    CHECK_ERR(pb_wire_event_encode(&ev, &b), PB_ERR_INVAL); /* no kind */
    ev.kind = PB_EV_USER_INVITED;
    CHECK_ERR(pb_wire_event_encode(&ev, &b), PB_ERR_INVAL); /* invite_id NULL */
    ev.invite_id = "\xc3\x28";
    CHECK_ERR(pb_wire_push_encode(&ev, &(uint64_t){1}, 1, 0, &b), PB_ERR_INVAL); /* not UTF-8 */
    CHECK_ERR(pb_wire_pull_resp_append_event(&ev, &b), PB_ERR_INVAL);
    pb_event two[2] = {{PB_EV_USER_ADDED_TO_GUILD, 1, 2, 0, NULL}, ev};
    CHECK_ERR(pb_wire_pull_resp_encode(two, NULL, 2, 0, &b), PB_ERR_INVAL);
    CHECK_ERR(pb_wire_notify_encode("a\xff", NULL, 0, &b), PB_ERR_INVAL);
    CHECK_ERR(pb_wire_authdata_encode(NULL, 1, NULL, &b), PB_ERR_INVAL);
    CHECK_ERR(pb_wire_error_encode("x", "\xed\xa0\x80", NULL, 0, &b), PB_ERR_INVAL);
    CHECK_INT(b.len, 0); /* refusals write nothing */
    pb_buf_free(&b);
}

/* ---- vectors: messages ---------------------------------------------------------------- */

static void test_messages(void)
{
    pb_buf b = PB_BUF_INIT;
    size_t n;
    uint8_t *p;

    /* PullRequest, empty */
    CHECK_OK(pb_wire_pull_req_encode(&(pb_pull_req){0}, &b));
    CHECK_HEX(&b, vhex("messages", "pull_request_hex", NULL));
    pb_pull_req preq = {9, 9, 9, 9, 9};
    p = pbt_hex(vhex("messages", "pull_request_hex", NULL), &n);
    CHECK_OK(pb_wire_pull_req_decode(p, n, &preq));
    CHECK(preq.next_seq == 0 && preq.epoch == 0 && preq.max_bytes == 0 && preq.max_events == 0 &&
          preq.from_seq == 0);
    CHECK_OK(pb_wire_empty_decode(p, n));
    free(p);

    /* PullResponse, empty */
    pb_buf_reset(&b);
    CHECK_OK(pb_wire_pull_resp_encode(NULL, NULL, 0, 0, &b));
    CHECK_HEX(&b, vhex("messages", "pull_response_empty_hex", NULL));
    pb_event *evs = (pb_event *)&b; /* garbage that must be overwritten */
    uint64_t *seqs = (uint64_t *)&b;
    size_t count = 9;
    p = pbt_hex(vhex("messages", "pull_response_empty_hex", NULL), &n);
    uint64_t epoch = 5;
    CHECK_OK(pb_wire_pull_resp_decode(p, n, &evs, &seqs, &count, &epoch));
    CHECK(evs == NULL && seqs == NULL);
    CHECK_INT(count, 0);
    CHECK_INT(epoch, 0);
    free(p);

    /* PullResponse, three events in the given order */
    json_t *three = json_object_get(json_object_get(V, "messages"), "pull_response_three");
    json_t *order = json_object_get(three, "order");
    size_t k = json_array_size(order);
    CHECK_INT(k, 3);
    pb_event ev3[3];
    for (size_t i = 0; i < k; i++)
        event_named(json_string_value(json_array_get(order, i)), &ev3[i]);
    pb_buf_reset(&b);
    CHECK_OK(pb_wire_pull_resp_encode(ev3, NULL, k, 0, &b));
    CHECK_HEX(&b, jstr(three, "hex"));
    p = pbt_hex(jstr(three, "hex"), &n);
    CHECK_OK(pb_wire_pull_resp_decode(p, n, &evs, &seqs, &count, &epoch));
    CHECK_INT(count, 3);
    CHECK(seqs == NULL);
    for (size_t i = 0; i < count && i < 3; i++) {
        CHECKF(pb_event_equal(&evs[i], &ev3[i]), "pull response event %zu", i);
        pb_event_clear(&evs[i]);
    }
    free(evs);
    free(p);
    for (size_t i = 0; i < k; i++)
        pb_event_clear(&ev3[i]);

    /* NotifyNewIdRequest */
    json_t *nn = json_object_get(json_object_get(V, "messages"), "notify_new_id_request");
    pb_buf_reset(&b);
    CHECK_OK(pb_wire_notify_encode(jstr(nn, "new_server_id"), NULL, 0, &b));
    CHECK_HEX(&b, jstr(nn, "hex"));
    char *id = NULL;
    uint8_t *proof = (uint8_t *)&b;
    size_t proof_len = 9;
    p = pbt_hex(jstr(nn, "hex"), &n);
    CHECK_OK(pb_wire_notify_decode(p, n, &id, &proof, &proof_len));
    CHECK_STR(id, jstr(nn, "new_server_id"));
    CHECK(proof == NULL && proof_len == 0);
    free(id);
    free(p);

    /* KeyResponse of key A */
    size_t kn;
    uint8_t *key = pbt_hex(vhex("keys", "A", "public_key_hex"), &kn);
    CHECK_INT(kn, 32);
    pb_buf_reset(&b);
    CHECK_OK(pb_wire_key_resp_encode(key, &b));
    CHECK_HEX(&b, vhex("messages", "key_response_A_hex", NULL));
    uint8_t got[32] = {0};
    p = pbt_hex(vhex("messages", "key_response_A_hex", NULL), &n);
    CHECK_OK(pb_wire_key_resp_decode(p, n, got));
    CHECK_MEM(got, sizeof got, key, kn);
    /* a key that is not 32 bytes is refused and changes nothing */
    uint8_t bad[2 + 33];
    memset(bad, 0x11, sizeof bad);
    bad[0] = 0x0a;
    bad[1] = 31;
    CHECK_ERR(pb_wire_key_resp_decode(bad, 2 + 31, got), PB_ERR_DECODE);
    bad[1] = 33;
    CHECK_ERR(pb_wire_key_resp_decode(bad, 2 + 33, got), PB_ERR_DECODE);
    CHECK_ERR(pb_wire_key_resp_decode(bad, 0, got), PB_ERR_DECODE);
    CHECK_MEM(got, sizeof got, key, kn);
    free(key);
    free(p);

    /* hrpc.v1.Error */
    json_t *er = json_object_get(json_object_get(V, "messages"), "error");
    pb_buf_reset(&b);
    CHECK_OK(pb_wire_error_encode(jstr(er, "identifier"), jstr(er, "human_message"), NULL, 0, &b));
    CHECK_HEX(&b, jstr(er, "hex"));
    char *ident = NULL, *human = NULL;
    uint8_t *details = (uint8_t *)&b;
    size_t dlen = 5;
    p = pbt_hex(jstr(er, "hex"), &n);
    CHECK_OK(pb_wire_error_decode(p, n, &ident, &human, &details, &dlen));
    CHECK_STR(ident, jstr(er, "identifier"));
    CHECK_STR(human, jstr(er, "human_message"));
    CHECK(details == NULL);
    CHECK_INT(dlen, 0);
    free(ident);
    free(human);
    free(p);

    pb_buf_free(&b);
}

/* ---- vectors: tokens ------------------------------------------------------------------ */

static void test_tokens(void)
{
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(V, "tokens"), i, t)
    {
        pb_buf ad = PB_BUF_INIT, tok = PB_BUF_INIT;
        CHECK_OK(pb_wire_authdata_encode(jstr(t, "server_id"),
                                         (uint64_t)json_integer_value(json_object_get(t, "time")),
                                         NULL, &ad));
        CHECK_HEX(&ad, jstr(t, "auth_data_hex"));
        size_t sn, tn;
        uint8_t *sig = pbt_hex(jstr(t, "sig_hex"), &sn);
        CHECK_OK(pb_wire_token_encode(sig, sn, ad.data, ad.len, &tok));
        CHECK_HEX(&tok, jstr(t, "token_hex"));

        uint8_t *tb = pbt_hex(jstr(t, "token_hex"), &tn);
        pb_token tk = {0};
        CHECK_OK(pb_wire_token_decode(tb, tn, &tk));
        CHECK_MEM(tk.sig, tk.sig_len, sig, sn);
        CHECK_MEM(tk.data, tk.data_len, ad.data, ad.len);
        char *sid = NULL;
        uint64_t tm = 0;
        CHECK_OK(pb_wire_authdata_decode(tk.data, tk.data_len, &sid, &tm, NULL));
        CHECK_STR(sid, jstr(t, "server_id"));
        CHECK_INT(tm, json_integer_value(json_object_get(t, "time")));
        free(sid);
        pb_token_clear(&tk);
        CHECK(tk.sig == NULL && tk.data == NULL && tk.sig_len == 0);
        free(tb);
        free(sig);
        pb_buf_free(&ad);
        pb_buf_free(&tok);
    }
    CHECK(json_array_size(json_object_get(V, "tokens")) >= 2);
    pb_token z = {0};
    pb_token_clear(&z);
    pb_token_clear(NULL);
}

/* ---- vectors: invalid ----------------------------------------------------------------- */

static void test_invalid(void)
{
    const char *name;
    json_t *h;
    int pushes = 0;
    json_object_foreach(json_object_get(V, "invalid"), name, h)
    {
        if (strncmp(name, "push_request_", 13) != 0 && strcmp(name, "event_empty_oneof_hex") != 0)
            continue;
        size_t n;
        uint8_t *p = pbt_hex(json_string_value(h), &n);
        pb_push_req pr = {.n = 77};
        pb_err err = pb_wire_push_decode(p, n, 16, &pr);
        CHECKF(err == PB_ERR_DECODE, "%s refused: got %s", name, pb_strerror(err));
        CHECK(pr.n == 77 && pr.evs == NULL);
        free(p);
        pushes++;
    }
    CHECK_INT(pushes, 4);

    size_t n;
    uint8_t *p = pbt_hex(vhex("invalid", "token_truncated_hex", NULL), &n);
    pb_token t = {0};
    CHECK_ERR(pb_wire_token_decode(p, n, &t), PB_ERR_DECODE);
    CHECK(t.sig == NULL && t.data == NULL);
    free(p);

    p = pbt_hex(vhex("invalid", "token_sig_63_bytes_hex", NULL), &n);
    CHECK_OK(pb_wire_token_decode(p, n, &t));
    CHECK_INT(t.sig_len, 63);
    CHECK_INT(t.data_len, 30);
    pb_token_clear(&t);
    free(p);

    const char *decodable[] = {"token_bad_signature_hex", "token_signed_by_other_key_hex"};
    for (size_t i = 0; i < 2; i++) {
        p = pbt_hex(vhex("invalid", decodable[i], NULL), &n);
        CHECK_OK(pb_wire_token_decode(p, n, &t));
        CHECK_INT(t.sig_len, 64);
        CHECK_INT(t.data_len, 30);
        pb_token_clear(&t);
        free(p);
    }
}

/* ---- extension fields, streaming ------------------------------------------------------ */

static void test_extensions(void)
{
    pb_buf b = PB_BUF_INIT;
    pb_event ev, back;
    size_t n;
    (void)back;
    event_named("user_invited", &ev);
    const char *plain = vhex("push_requests", "user_invited", NULL);
    uint8_t *plainb = pbt_hex(plain, &n);

    const uint64_t seqs_to_try[] = {1, 300, UINT64_MAX};
    for (size_t i = 0; i < 3; i++) {
        pb_buf_reset(&b);
        CHECK_OK(pb_wire_push_encode(&ev, &seqs_to_try[i], 1, seqs_to_try[2 - i], &b));
        /* the foreign message followed by the extension fields */
        CHECK(b.len > n && memcmp(b.data, plainb, n) == 0);
        pb_push_req pr = {0};
        CHECK_OK(pb_wire_push_decode(b.data, b.len, 1, &pr));
        CHECK(pr.n == 1 && pb_event_equal(&ev, &pr.evs[0]));
        CHECK(pr.seqs && pr.seqs[0] == seqs_to_try[i]);
        CHECK(pr.epoch == seqs_to_try[2 - i]);
        pb_push_req_clear(&pr);
    }
    /* field 18001 varint = key 88 e5 08; 18002 = 90 e5 08 */
    pb_buf_reset(&b);
    CHECK_OK(pb_wire_push_encode(&ev, &(uint64_t){1}, 1, 0, &b));
    CHECK(b.len == n + 4 && memcmp(b.data + n, "\x88\xe5\x08\x01", 4) == 0);
    pb_buf_reset(&b);
    CHECK_OK(pb_wire_push_encode(&ev, &(uint64_t){1}, 1, 2, &b));
    CHECK(b.len == n + 8 && memcmp(b.data + n, "\x88\xe5\x08\x01\x90\xe5\x08\x02", 8) == 0);

    for (size_t i = 0; i < 3; i++) {
        pb_buf_reset(&b);
        pb_pull_req want = {seqs_to_try[i], seqs_to_try[2 - i], 1u << 20, 1000, seqs_to_try[i]};
        CHECK_OK(pb_wire_pull_req_encode(&want, &b));
        CHECK(b.len > 0);
        pb_pull_req got = {0};
        CHECK_OK(pb_wire_pull_req_decode(b.data, b.len, &got));
        CHECK(memcmp(&got, &want, sizeof got) == 0);
    }
    /* postbox_from_seq is field 18005 (varint: key a8 e5 08) */
    pb_buf_reset(&b);
    CHECK_OK(pb_wire_pull_req_encode(&(pb_pull_req){.from_seq = 3}, &b));
    CHECK(b.len == 4 && memcmp(b.data, "\xa8\xe5\x08\x03", 4) == 0);

    /* the peek of a PullResponse: count, first and last seq, epoch; as the decode sees them */
    {
        pb_event three[3] = {ev, ev, ev};
        uint64_t sq[3] = {5, 6, UINT64_MAX};
        size_t cnt = 9;
        uint64_t first = 9, last = 9, ep = 9;
        pb_buf_reset(&b);
        CHECK_OK(pb_wire_pull_resp_encode(three, sq, 3, 77, &b));
        CHECK_OK(pb_wire_pull_resp_peek(b.data, b.len, &cnt, &first, &last, &ep));
        CHECK(cnt == 3 && first == 5 && last == UINT64_MAX && ep == 77);
        /* a foreign sender's answer: no seqs, no epoch */
        pb_buf_reset(&b);
        CHECK_OK(pb_wire_pull_resp_encode(three, NULL, 2, 0, &b));
        CHECK_OK(pb_wire_pull_resp_peek(b.data, b.len, &cnt, &first, &last, &ep));
        CHECK(cnt == 2 && first == 0 && last == 0 && ep == 0);
        CHECK_OK(pb_wire_pull_resp_peek(NULL, 0, &cnt, &first, &last, &ep));
        CHECK(cnt == 0);
        /* cut anywhere: refused or a shorter summary, never a read past the end */
        pb_buf_reset(&b);
        CHECK_OK(pb_wire_pull_resp_encode(three, sq, 3, 77, &b));
        for (size_t cut = 1; cut < b.len; cut++) {
            uint8_t *copy = malloc(cut);
            memcpy(copy, b.data, cut);
            pb_err e = pb_wire_pull_resp_peek(copy, cut, &cnt, &first, &last, &ep);
            CHECK(e == PB_OK || e == PB_ERR_DECODE);
            free(copy);
        }
        /* mutated answers: wherever the decode accepts one, the peek agrees with it */
        srand(20);
        for (int round = 0; round < 20000; round++) {
            uint8_t *m = malloc(b.len);
            memcpy(m, b.data, b.len);
            for (int k = 1 + rand() % 3; k > 0; k--)
                m[rand() % b.len] = (uint8_t)rand();
            size_t mlen = rand() % 4 ? b.len : (size_t)rand() % b.len;
            pb_event *devs = NULL;
            uint64_t *dseqs = NULL, dep = 0;
            size_t dn = 0;
            pb_err perr = pb_wire_pull_resp_peek(m, mlen, &cnt, &first, &last, &ep);
            if (pb_wire_pull_resp_decode(m, mlen, &devs, &dseqs, &dn, &dep) == PB_OK) {
                CHECKF(perr == PB_OK && cnt == dn && ep == dep && first == (dseqs ? dseqs[0] : 0) &&
                           last == (dseqs ? dseqs[dn - 1] : 0),
                       "peek disagrees with the decode (round %d)", round);
                for (size_t i = 0; i < dn; i++)
                    pb_event_clear(&devs[i]);
                free(devs);
                free(dseqs);
            }
            free(m);
        }
        /* an unknown wire type is refused */
        CHECK(pb_wire_pull_resp_peek((const uint8_t *)"\x0b", 1, &cnt, &first, &last, &ep) ==
              PB_ERR_DECODE);
    }
    free(plainb);
    pb_event_clear(&ev);

    /* PullResponse with seqs; one-shot == streaming, with and without seqs */
    json_t *three = json_object_get(json_object_get(V, "messages"), "pull_response_three");
    json_t *order = json_object_get(three, "order");
    pb_event evs[3];
    for (size_t i = 0; i < 3; i++)
        event_named(json_string_value(json_array_get(order, i)), &evs[i]);
    uint64_t seqs[3] = {1, 2, UINT64_MAX};
    uint8_t *threeb = pbt_hex(jstr(three, "hex"), &n);

    pb_buf one = PB_BUF_INIT, st = PB_BUF_INIT;
    CHECK_OK(pb_wire_pull_resp_encode(evs, seqs, 3, 0, &one));
    CHECK(one.len > n && memcmp(one.data, threeb, n) == 0);
    for (size_t i = 0; i < 3; i++)
        CHECK_OK(pb_wire_pull_resp_append_event(&evs[i], &st));
    CHECK_MEM(st.data, st.len, threeb, n); /* events alone == the vector */
    pb_wire_pull_resp_append_seqs(seqs, 3, 0, &st);
    CHECK_MEM(st.data, st.len, one.data, one.len);

    pb_event *devs = NULL;
    uint64_t *dseqs = NULL;
    size_t count = 0;
    uint64_t epoch = 0;
    CHECK_OK(pb_wire_pull_resp_decode(one.data, one.len, &devs, &dseqs, &count, &epoch));
    CHECK_INT(count, 3);
    CHECK_INT(epoch, 0);
    CHECK(dseqs != NULL);
    for (size_t i = 0; i < count && i < 3; i++) {
        CHECK(pb_event_equal(&devs[i], &evs[i]));
        CHECK(dseqs && dseqs[i] == seqs[i]);
        pb_event_clear(&devs[i]);
    }
    free(devs);
    free(dseqs);

    /* no seqs: streaming without append_seqs (or with count 0) == one-shot == vector */
    pb_buf_reset(&one);
    pb_buf_reset(&st);
    CHECK_OK(pb_wire_pull_resp_encode(evs, NULL, 3, 0, &one));
    for (size_t i = 0; i < 3; i++)
        CHECK_OK(pb_wire_pull_resp_append_event(&evs[i], &st));
    pb_wire_pull_resp_append_seqs(seqs, 0, 0, &st);
    CHECK_MEM(st.data, st.len, one.data, one.len);
    CHECK_MEM(one.data, one.len, threeb, n);

    /* seq count must match the event count */
    pb_buf_reset(&st);
    for (size_t i = 0; i < 3; i++)
        CHECK_OK(pb_wire_pull_resp_append_event(&evs[i], &st));
    pb_wire_pull_resp_append_seqs(seqs, 2, 0, &st);
    devs = (pb_event *)&st;
    CHECK_ERR(pb_wire_pull_resp_decode(st.data, st.len, &devs, &dseqs, &count, &epoch),
              PB_ERR_DECODE);
    CHECK(devs == (pb_event *)&st);
    pb_buf_reset(&st);
    pb_wire_pull_resp_append_seqs(seqs, 1, 0, &st); /* seqs, no events */
    CHECK_ERR(pb_wire_pull_resp_decode(st.data, st.len, &devs, &dseqs, &count, &epoch),
              PB_ERR_DECODE);

    for (size_t i = 0; i < 3; i++)
        pb_event_clear(&evs[i]);
    free(threeb);
    pb_buf_free(&one);
    pb_buf_free(&st);
    pb_buf_free(&b);
}

/* ---- RetryInfo, Error with details -------------------------------------------------- */

static void test_hrpc(void)
{
    pb_buf ri = PB_BUF_INIT, er = PB_BUF_INIT;
    CHECK_OK(pb_wire_retry_info_encode(30, &ri));
    CHECK_HEX(&ri, "081e");
    uint32_t ra = 0;
    CHECK_OK(pb_wire_retry_info_decode(ri.data, ri.len, &ra));
    CHECK_INT(ra, 30);
    pb_buf_reset(&ri);
    CHECK_OK(pb_wire_retry_info_encode(UINT32_MAX, &ri));
    CHECK_OK(pb_wire_retry_info_decode(ri.data, ri.len, &ra));
    CHECK(ra == UINT32_MAX);

    CHECK_OK(pb_wire_error_encode("hrpc.unavailable", "try later", ri.data, ri.len, &er));
    char *id = NULL, *hm = NULL;
    uint8_t *d = NULL;
    size_t dl = 0;
    CHECK_OK(pb_wire_error_decode(er.data, er.len, &id, &hm, &d, &dl));
    CHECK_STR(id, "hrpc.unavailable");
    CHECK_STR(hm, "try later");
    CHECK_MEM(d, dl, ri.data, ri.len);
    ra = 0;
    CHECK_OK(pb_wire_retry_info_decode(d, dl, &ra));
    CHECK(ra == UINT32_MAX);
    free(id);
    free(hm);
    free(d);

    /* empty Error: strings come back "" */
    CHECK_OK(pb_wire_error_decode((const uint8_t *)"", 0, &id, &hm, &d, &dl));
    CHECK_STR(id, "");
    CHECK_STR(hm, "");
    CHECK(d == NULL && dl == 0);
    free(id);
    free(hm);
    pb_buf_free(&ri);
    pb_buf_free(&er);
}

/* ---- size limit ------------------------------------------------------------------------ */

static void test_too_big(void)
{
    size_t big = PB_WIRE_MAX_MESSAGE + 1;
    uint8_t *p = calloc(1, big);
    if (!p) abort();
    pb_event ev;
    pb_event *evs;
    uint64_t u64, *seqs;
    uint32_t u32;
    size_t count, dl;
    char *s1, *s2;
    uint8_t key[32], *d;
    pb_token t;
    CHECK_ERR(pb_wire_event_decode(p, big, &ev), PB_ERR_TOO_BIG);
    pb_push_req pr;
    pb_pull_req preq;
    CHECK_ERR(pb_wire_push_decode(p, big, 16, &pr), PB_ERR_TOO_BIG);
    CHECK_ERR(pb_wire_pull_req_decode(p, big, &preq), PB_ERR_TOO_BIG);
    CHECK_ERR(pb_wire_pull_resp_decode(p, big, &evs, &seqs, &count, &u64), PB_ERR_TOO_BIG);
    CHECK_ERR(pb_wire_notify_decode(p, big, &s1, &d, &dl), PB_ERR_TOO_BIG);
    CHECK_ERR(pb_wire_empty_decode(p, big), PB_ERR_TOO_BIG);
    CHECK_ERR(pb_wire_key_resp_decode(p, big, key), PB_ERR_TOO_BIG);
    CHECK_ERR(pb_wire_token_decode(p, big, &t), PB_ERR_TOO_BIG);
    CHECK_ERR(pb_wire_authdata_decode(p, big, &s1, &u64, NULL), PB_ERR_TOO_BIG);
    CHECK_ERR(pb_wire_error_decode(p, big, &s1, &s2, &d, &dl), PB_ERR_TOO_BIG);
    CHECK_ERR(pb_wire_retry_info_decode(p, big, &u32), PB_ERR_TOO_BIG);
    free(p);

    /* exactly the limit is accepted: an Error whose details fill it (1 + 4 + len bytes) */
    size_t dlen = PB_WIRE_MAX_MESSAGE - 5;
    uint8_t *det = malloc(dlen);
    if (!det) abort();
    memset(det, 0xab, dlen);
    pb_buf b = PB_BUF_INIT;
    CHECK_OK(pb_wire_error_encode("", "", det, dlen, &b));
    CHECK_INT(b.len, PB_WIRE_MAX_MESSAGE);
    d = NULL;
    CHECK_OK(pb_wire_error_decode(b.data, b.len, &s1, &s2, &d, &dl));
    CHECK_MEM(d, dl, det, dlen);
    free(s1);
    free(s2);
    free(d);
    free(det);
    pb_buf_free(&b);
}

/* ---- UTF-8 and embedded NUL ----------------------------------------------------------- */

/* Decodes s (len n) as the string of a NotifyNewIdRequest, an AuthData, an Error and an
 * Event's invite_id; returns how many decoders accepted it (0 or 4 expected). */
static int string_accepted(const char *s, size_t n)
{
    uint8_t msg[64], ev[64];
    int ok = 0;
    if (n > 40) abort();
    msg[0] = 0x0a;
    msg[1] = (uint8_t)n;
    memcpy(msg + 2, s, n);
    char *a = NULL, *b = NULL;
    uint8_t *d = NULL;
    size_t dl;
    uint64_t tm;
    if (pb_wire_notify_decode(msg, n + 2, &a, &d, &dl) == PB_OK) ok++, free(a), free(d);
    if (pb_wire_authdata_decode(msg, n + 2, &a, &tm, NULL) == PB_OK) ok++, free(a);
    if (pb_wire_error_decode(msg, n + 2, &a, &b, &d, &dl) == PB_OK) ok++, free(a), free(b);
    /* Event { user_invited (3) { invite_id (3) = s } } */
    ev[0] = 0x1a;
    ev[1] = (uint8_t)(n + 2);
    ev[2] = 0x1a;
    ev[3] = (uint8_t)n;
    memcpy(ev + 4, s, n);
    pb_event e;
    if (pb_wire_event_decode(ev, n + 4, &e) == PB_OK) ok++, pb_event_clear(&e);
    return ok;
}

static void test_utf8(void)
{
    static const struct {
        const char *s;
        size_t n;
        bool valid;
    } cases[] = {
        {"abc", 3, true},
        {"", 0, true},
        {"\xc3\xa9", 2, true},          /* é */
        {"\xe2\x9c\x93", 3, true},      /* ✓ */
        {"\xf0\x9f\x98\x80", 4, true},  /* U+1F600 */
        {"\xf4\x8f\xbf\xbf", 4, true},  /* U+10FFFF */
        {"\xff", 1, false},             /* never valid */
        {"\xc3\x28", 2, false},         /* bad continuation */
        {"\xc0\x80", 2, false},         /* overlong NUL */
        {"\xe0\x80\xaf", 3, false},     /* overlong '/' */
        {"\xed\xa0\x80", 3, false},     /* surrogate */
        {"\xf4\x90\x80\x80", 4, false}, /* > U+10FFFF */
        {"\xe2\x9c", 2, false},         /* truncated */
        {"\x80", 1, false},             /* lone continuation */
        {"a\0b", 3, false},             /* embedded NUL */
        {"\0", 1, false},               /* NUL only */
        {"abc\0", 4, false},            /* trailing NUL */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int ok = string_accepted(cases[i].s, cases[i].n);
        CHECKF(ok == (cases[i].valid ? 4 : 0), "case %zu: %d decoders accepted", i, ok);
    }
}

/* ---- truncation of every valid vector ------------------------------------------------ */

/* Runs p through every decoder; each must refuse (PB_ERR_DECODE) or succeed. Results are
 * freed, so valgrind sees any leak. Returns how many decoders accepted. */
static int decode_all(const uint8_t *p, size_t n)
{
    int ok = 0;
    pb_err e;
    pb_event ev, *evs;
    uint64_t u64, *seqs;
    uint32_t u32;
    size_t count, dl;
    char *s1, *s2;
    uint8_t key[32], *d;
    pb_token t;

#define RUN(call, on_ok)                                                                           \
    do {                                                                                           \
        e = (call);                                                                                \
        CHECKF(e == PB_OK || e == PB_ERR_DECODE, "%s: %s", #call, pb_strerror(e));                 \
        if (e == PB_OK) {                                                                          \
            ok++;                                                                                  \
            on_ok;                                                                                 \
        }                                                                                          \
    } while (0)
    RUN(pb_wire_event_decode(p, n, &ev), pb_event_clear(&ev));
    pb_push_req pr;
    pb_pull_req preq;
    RUN(pb_wire_push_decode(p, n, 1000, &pr), pb_push_req_clear(&pr));
    RUN(pb_wire_pull_req_decode(p, n, &preq), (void)0);
    RUN(pb_wire_pull_resp_decode(p, n, &evs, &seqs, &count, &u64), {
        for (size_t i = 0; i < count; i++)
            pb_event_clear(&evs[i]);
        free(evs);
        free(seqs);
    });
    RUN(pb_wire_notify_decode(p, n, &s1, &d, &dl), {
        free(s1);
        free(d);
    });
    RUN(pb_wire_empty_decode(p, n), (void)0);
    RUN(pb_wire_key_resp_decode(p, n, key), (void)0);
    RUN(pb_wire_token_decode(p, n, &t), pb_token_clear(&t));
    RUN(pb_wire_authdata_decode(p, n, &s1, &u64, NULL), free(s1));
    RUN(pb_wire_error_decode(p, n, &s1, &s2, &d, &dl), {
        free(s1);
        free(s2);
        free(d);
    });
    RUN(pb_wire_retry_info_decode(p, n, &u32), (void)0);
#undef RUN
    return ok;
}

static void truncate_hex(const char *hex, int *total)
{
    size_t n;
    uint8_t *full = pbt_hex(hex, &n);
    for (size_t len = 0; len <= n; len++) {
        /* an exact-size copy, so that any read past the end is seen by valgrind */
        uint8_t *p = malloc(len ? len : 1);
        if (!p) abort();
        memcpy(p, full, len);
        decode_all(p, len);
        free(p);
        (*total)++;
    }
    free(full);
}

static void test_truncation(void)
{
    int total = 0;
    const char *name;
    json_t *v;
    json_object_foreach(json_object_get(V, "events"), name, v)
        truncate_hex(jstr(v, "event_hex"), &total);
    json_object_foreach(json_object_get(V, "push_requests"), name, v)
        truncate_hex(json_string_value(v), &total);
    json_object_foreach(json_object_get(V, "invalid"), name, v)
        truncate_hex(json_string_value(v), &total);
    json_t *m = json_object_get(V, "messages");
    truncate_hex(jstr(json_object_get(m, "pull_response_three"), "hex"), &total);
    truncate_hex(jstr(json_object_get(m, "notify_new_id_request"), "hex"), &total);
    truncate_hex(jstr(json_object_get(m, "error"), "hex"), &total);
    truncate_hex(jstr(m, "key_response_A_hex"), &total);
    size_t i;
    json_array_foreach(json_object_get(V, "tokens"), i, v)
    {
        truncate_hex(jstr(v, "token_hex"), &total);
        truncate_hex(jstr(v, "auth_data_hex"), &total);
    }
    CHECK(total > 500);

    /* a full vector is accepted by its own decoder and truncation of it at a field's
     * middle is refused by it: spot checks that the loop above is not vacuous */
    size_t n;
    uint8_t *p = pbt_hex(jstr(json_object_get(m, "pull_response_three"), "hex"), &n);
    pb_event *evs;
    uint64_t *seqs, u64;
    size_t count;
    CHECK_ERR(pb_wire_pull_resp_decode(p, n - 1, &evs, &seqs, &count, &u64), PB_ERR_DECODE);
    CHECK_ERR(pb_wire_pull_resp_decode(p, 17, &evs, &seqs, &count, &u64), PB_ERR_DECODE);
    CHECK_OK(pb_wire_pull_resp_decode(p, 18, &evs, &seqs, &count, &u64)); /* first event whole */
    CHECK_INT(count, 1);
    pb_event_clear(&evs[0]);
    free(evs);
    free(p);
}

/* PushResponse: empty (foreign receiver) or with the sequence acknowledgement and epoch. */
static void test_push_response(void)
{
    pb_buf b = PB_BUF_INIT;
    uint64_t ack = 7, epoch = 7;
    CHECK_OK(pb_wire_push_resp_encode(0, 0, &b));
    CHECK_INT(b.len, 0); /* a foreign sender sees exactly the empty PushResponse */
    CHECK_OK(pb_wire_push_resp_encode(0, 99, &b));
    CHECK_INT(b.len, 0); /* an epoch travels only with an acknowledgement */
    CHECK_OK(pb_wire_push_resp_decode(b.data, b.len, &ack, &epoch));
    CHECK_INT(ack, 0);
    CHECK_INT(epoch, 0);
    const uint64_t vals[] = {1, 4242, UINT64_MAX};
    for (size_t i = 0; i < 3; i++) {
        pb_buf_reset(&b);
        CHECK_OK(pb_wire_push_resp_encode(vals[i], vals[2 - i], &b));
        CHECK(b.len >= 4 && memcmp(b.data, "\x88\xe5\x08", 3) == 0);
        CHECK_OK(pb_wire_push_resp_decode(b.data, b.len, &ack, &epoch));
        CHECK(ack == vals[i] && epoch == vals[2 - i]);
        /* it is still an empty message for a decoder that does not know the field */
        CHECK_OK(pb_wire_empty_decode(b.data, b.len));
    }
    CHECK_ERR(pb_wire_push_resp_decode((const uint8_t *)"\x88\xe5", 2, &ack, &epoch),
              PB_ERR_DECODE);
    pb_buf_free(&b);
}

/* The window fields (PROTOCOL.md 5): PushResponse.postbox_window travels only with an
 * acknowledgement; PushRequest.postbox_after round-trips, must be below the batch's first
 * number, and is not sent when 0. */
static void test_push_window_fields(void)
{
    pb_buf b = PB_BUF_INIT;
    uint64_t ack = 0, epoch = 0;
    uint32_t win = 9;
    CHECK_OK(pb_wire_push_resp_encode_win(0, 5, 24, &b));
    CHECK_INT(b.len, 0); /* no acknowledgement: nothing at all */
    CHECK_OK(pb_wire_push_resp_encode_win(300, 5, 24, &b));
    CHECK_OK(pb_wire_push_resp_decode_win(b.data, b.len, &ack, &epoch, &win));
    CHECK(ack == 300 && epoch == 5 && win == 24);
    CHECK_OK(pb_wire_push_resp_decode(b.data, b.len, &ack, &epoch)); /* older readers */
    CHECK(ack == 300 && epoch == 5);
    pb_buf_reset(&b);
    CHECK_OK(pb_wire_push_resp_encode(300, 5, &b));
    CHECK_OK(pb_wire_push_resp_decode_win(b.data, b.len, &ack, &epoch, &win));
    CHECK_INT(win, 0); /* an older postbox: no window */

    pb_event evs[2] = {{.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 1, .guild_id = 2},
                       {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 3, .guild_id = 4}};
    uint64_t seqs[2] = {11, 12};
    pb_push_req r = {0};
    pb_buf_reset(&b);
    CHECK_OK(pb_wire_push_encode_after(evs, seqs, 2, 77, 10, &b));
    CHECK_OK(pb_wire_push_decode(b.data, b.len, 16, &r));
    CHECK(r.n == 2 && r.epoch == 77 && r.after == 10);
    pb_push_req_clear(&r);
    pb_buf_reset(&b);
    CHECK_OK(pb_wire_push_encode(evs, seqs, 2, 77, &b));
    CHECK_OK(pb_wire_push_decode(b.data, b.len, 16, &r));
    CHECK_INT(r.after, 0);
    pb_push_req_clear(&r);
    pb_buf_reset(&b);
    CHECK_ERR(pb_wire_push_encode_after(evs, seqs, 2, 77, 11, &b), PB_ERR_INVAL);
    /* a request whose condition is at or above its own first number is refused */
    pb_buf_reset(&b);
    CHECK_OK(pb_wire_push_encode_after(evs, seqs, 2, 77, 10, &b));
    pb_buf_append(&b, "\xa8\xe5\x08\x0b", 4); /* field 18005 = 11, after the first */
    CHECK_ERR(pb_wire_push_decode(b.data, b.len, 16, &r), PB_ERR_DECODE);
    pb_buf_free(&b);
}

/* Batched Push between postboxes: several events with increasing sequence numbers. */
static void test_push_batch(void)
{
    pb_event evs[4];
    const char *names[4] = {"user_invited", "user_added_to_guild", "user_rejected_invite",
                            "user_removed_from_guild"};
    for (int i = 0; i < 4; i++)
        event_named(names[i], &evs[i]);
    uint64_t seqs[4] = {5, 6, 9, UINT64_MAX};
    pb_buf b = PB_BUF_INIT;
    CHECK_OK(pb_wire_push_encode(evs, seqs, 4, 0xfeed, &b));
    /* a foreign decoder sees the first event as a plain PushRequest */
    size_t n;
    uint8_t *plain = pbt_hex(vhex("push_requests", names[0], NULL), &n);
    CHECK(b.len > n && memcmp(b.data, plain, n) == 0);
    free(plain);
    pb_push_req r = {0};
    CHECK_OK(pb_wire_push_decode(b.data, b.len, 4, &r));
    CHECK_INT(r.n, 4);
    CHECK(r.epoch == 0xfeed && r.seqs != NULL);
    for (size_t i = 0; i < r.n && i < 4; i++) {
        CHECKF(pb_event_equal(&r.evs[i], &evs[i]), "batch event %zu", i);
        CHECK(r.seqs && r.seqs[i] == seqs[i]);
    }
    pb_push_req_clear(&r);
    pb_push_req_clear(&r);
    pb_push_req_clear(NULL);
    /* more events than the receiver takes: refused, nothing allocated */
    r.n = 42;
    CHECK_ERR(pb_wire_push_decode(b.data, b.len, 3, &r), PB_ERR_TOO_BIG);
    CHECK(r.n == 42 && r.evs == NULL);

    /* encoder refusals: batches need sequence numbers, strictly increasing, non-zero */
    pb_buf_reset(&b);
    CHECK_ERR(pb_wire_push_encode(evs, NULL, 2, 0, &b), PB_ERR_INVAL);
    uint64_t flat[2] = {3, 3}, down[2] = {4, 3}, zero[1] = {0};
    CHECK_ERR(pb_wire_push_encode(evs, flat, 2, 0, &b), PB_ERR_INVAL);
    CHECK_ERR(pb_wire_push_encode(evs, down, 2, 0, &b), PB_ERR_INVAL);
    CHECK_ERR(pb_wire_push_encode(evs, zero, 1, 0, &b), PB_ERR_INVAL);
    CHECK_ERR(pb_wire_push_encode(evs, seqs, 0, 0, &b), PB_ERR_INVAL);
    CHECK_INT(b.len, 0);

    /* decoder refusals, built field by field: event 1, seq 18001, more 18003, seqs 18004 */
    pb_buf ev2 = PB_BUF_INIT;
    CHECK_OK(pb_wire_event_encode(&evs[1], &ev2));
    uint8_t first[64];
    size_t fl = n; /* the plain PushRequest of evs[0] */
    plain = pbt_hex(vhex("push_requests", names[0], NULL), &n);
    memcpy(first, plain, fl);
    free(plain);
    struct {
        const char *what;
        const uint8_t *ext;
        size_t extlen;
        bool with_more;
    } cases[] = {
        /* more events without postbox_seq (a foreign-looking batch) */
        {"more without seq", (const uint8_t *)"\xa0\xe5\x08\x07", 4, true},
        /* postbox_seq 5 and one more event whose seq is 5 (not increasing) */
        {"seq not increasing", (const uint8_t *)"\x88\xe5\x08\x05\xa2\xe5\x08\x01\x05", 9, true},
        /* postbox_seq 5, one more event, no more_seqs */
        {"more_seqs missing", (const uint8_t *)"\x88\xe5\x08\x05", 4, true},
        /* postbox_seq 5, two more_seqs for no more event */
        {"more_seqs without events", (const uint8_t *)"\x88\xe5\x08\x05\xa2\xe5\x08\x02\x06\x07",
         10, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        pb_buf m = PB_BUF_INIT;
        pb_buf_append(&m, first, fl);
        pb_buf_append(&m, cases[i].ext, cases[i].extlen);
        if (cases[i].with_more) {
            uint8_t hdr[4] = {0x9a, 0xe5, 0x08, (uint8_t)ev2.len}; /* 18003, length-delimited */
            pb_buf_append(&m, hdr, 4);
            pb_buf_append(&m, ev2.data, ev2.len);
        }
        pb_push_req bad = {.n = 9};
        CHECKF(pb_wire_push_decode(m.data, m.len, 16, &bad) == PB_ERR_DECODE, "%s refused",
               cases[i].what);
        CHECK(bad.n == 9 && bad.evs == NULL);
        pb_buf_free(&m);
    }
    /* the same construction with a valid seq pair is accepted (the cases are not vacuous) */
    pb_buf m = PB_BUF_INIT;
    pb_buf_append(&m, first, fl);
    pb_buf_append(&m, "\x88\xe5\x08\x05\xa2\xe5\x08\x01\x06", 9);
    uint8_t hdr[4] = {0x9a, 0xe5, 0x08, (uint8_t)ev2.len};
    pb_buf_append(&m, hdr, 4);
    pb_buf_append(&m, ev2.data, ev2.len);
    CHECK_OK(pb_wire_push_decode(m.data, m.len, 16, &r));
    CHECK(r.n == 2 && r.seqs && r.seqs[0] == 5 && r.seqs[1] == 6 && r.epoch == 0);
    pb_push_req_clear(&r);
    pb_buf_free(&m);
    pb_buf_free(&ev2);
    for (int i = 0; i < 4; i++)
        pb_event_clear(&evs[i]);
    pb_buf_free(&b);
}

/* NotifyNewIdRequest with the rename proof; AuthData with an audience. */
static void test_proof_and_audience(void)
{
    pb_buf b = PB_BUF_INIT;
    const uint8_t proof[5] = {1, 2, 0, 4, 5};
    CHECK_OK(pb_wire_notify_encode("new.example.org:443", proof, sizeof proof, &b));
    char *id = NULL;
    uint8_t *p = NULL;
    size_t pl = 0;
    CHECK_OK(pb_wire_notify_decode(b.data, b.len, &id, &p, &pl));
    CHECK_STR(id, "new.example.org:443");
    CHECK_MEM(p, pl, proof, sizeof proof);
    free(id);
    free(p);
    CHECK_ERR(pb_wire_notify_encode("x:1", NULL, 3, &b), PB_ERR_INVAL);

    /* AuthData: no audience = the vector bytes; with one, read back; "" = absent */
    json_t *t = json_array_get(json_object_get(V, "tokens"), 0);
    const char *sid = json_string_value(json_object_get(t, "server_id"));
    uint64_t tm = (uint64_t)json_integer_value(json_object_get(t, "time"));
    pb_buf_reset(&b);
    CHECK_OK(pb_wire_authdata_encode(sid, tm, "", &b));
    CHECK_HEX(&b, json_string_value(json_object_get(t, "auth_data_hex")));
    pb_buf_reset(&b);
    CHECK_OK(pb_wire_authdata_encode(sid, tm, "beta.example.net:443", &b));
    char *sid2 = NULL, *aud = NULL;
    uint64_t tm2 = 0;
    CHECK_OK(pb_wire_authdata_decode(b.data, b.len, &sid2, &tm2, &aud));
    CHECK_STR(sid2, sid);
    CHECK_STR(aud, "beta.example.net:443");
    CHECK(tm2 == tm);
    free(sid2);
    free(aud);
    /* a non-UTF-8 audience is refused both ways */
    CHECK_ERR(pb_wire_authdata_encode(sid, tm, "\xff", &b), PB_ERR_INVAL);
    const uint8_t bad[] = {0x0a, 0x01, 'a', 0x8a, 0xe5, 0x08, 0x01, 0xff};
    aud = NULL;
    CHECK_ERR(pb_wire_authdata_decode(bad, sizeof bad, &sid2, &tm2, &aud), PB_ERR_DECODE);
    CHECK(aud == NULL);
    pb_buf_free(&b);
}

int main(void)
{
    V = pbt_vectors();
    test_push_response();
    test_push_window_fields();
    test_push_batch();
    test_proof_and_audience();
    test_events();
    test_encode_refusals();
    test_messages();
    test_tokens();
    test_invalid();
    test_extensions();
    test_hrpc();
    test_too_big();
    test_utf8();
    test_truncation();
    json_decref(V);
    return pbt_finish();
}
