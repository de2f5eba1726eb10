/*
 * seed_corpus - writes the fuzzers' seed corpora from the shared wire vectors.
 *
 *   seed_corpus VECTORS_JSON OUTDIR
 *
 * For every fuzz target NAME it (re)creates OUTDIR/NAME/ and fills it with inputs in that
 * target's format: the vectors' messages, tokens, server IDs and event JSON, plus a few
 * hand-made variants (sequence-number extensions, RetryInfo details, whole requests for
 * the admin and hRPC targets). Run by the build (fuzz/CMakeLists.txt); the vectors file
 * is read in place, never copied into the repository.
 *
 * Untrusted input: the vectors file (a local, trusted file; malformed entries abort).
 */
#include <errno.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/buf.h"
#include "util/mem.h"
#include "wire/wire.h"

static const char *outdir;
static json_t *V;

static void put(const char *target, const char *label, const void *p, size_t n)
{
    char *dir = pb_xasprintf("%s/%s", outdir, target);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        perror(dir);
        exit(1);
    }
    char *path = pb_xasprintf("%s/%s", dir, label);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
    free(path);
    free(dir);
}

static void put_str(const char *target, const char *label, const char *s)
{
    put(target, label, s, strlen(s));
}

static void put_buf(const char *target, const char *label, pb_buf *b)
{
    put(target, label, b->data, b->len);
    pb_buf_reset(b);
}

static json_t *at(const char *path)
{
    json_t *j = V;
    char *copy = pb_xstrdup(path), *save = NULL;
    for (char *k = strtok_r(copy, ".", &save); k && j; k = strtok_r(NULL, ".", &save))
        j = json_is_array(j) ? json_array_get(j, (size_t)atoi(k)) : json_object_get(j, k);
    if (!j) {
        fprintf(stderr, "seed_corpus: vectors have no %s\n", path);
        exit(1);
    }
    free(copy);
    return j;
}

static const char *str_at(const char *path)
{
    const char *s = json_string_value(at(path));
    if (!s) {
        fprintf(stderr, "seed_corpus: %s is not a string\n", path);
        exit(1);
    }
    return s;
}

/* Decodes the hex string at path; *n receives the length. Caller frees. */
static uint8_t *hex_at(const char *path, size_t *n)
{
    const char *h = str_at(path);
    uint8_t *b = pb_xmalloc(strlen(h) / 2 + 1);
    if (sodium_hex2bin(b, strlen(h) / 2 + 1, h, strlen(h), NULL, n, NULL) != 0) {
        fprintf(stderr, "seed_corpus: %s is not hex\n", path);
        exit(1);
    }
    return b;
}

static void put_hex(const char *target, const char *label, const char *path)
{
    size_t n;
    uint8_t *b = hex_at(path, &n);
    put(target, label, b, n);
    free(b);
}

static const char *EVENT_NAMES[] = {"user_removed_from_guild", "user_added_to_guild",
                                    "user_invited", "user_rejected_invite",
                                    "user_added_to_guild_zeroes"};
#define NEVENTS (sizeof EVENT_NAMES / sizeof EVENT_NAMES[0])

static void event_at(const char *name, pb_event *ev)
{
    char *path = pb_xasprintf("events.%s.event_hex", name);
    size_t n;
    uint8_t *b = hex_at(path, &n);
    if (pb_wire_event_decode(b, n, ev) != PB_OK) {
        fprintf(stderr, "seed_corpus: %s does not decode\n", path);
        exit(1);
    }
    free(b);
    free(path);
}

static char *event_json(const char *name)
{
    char *path = pb_xasprintf("events.%s.json", name);
    char *s = json_dumps(at(path), JSON_COMPACT);
    free(path);
    return s;
}

static void wire_seeds(void)
{
    pb_buf b = PB_BUF_INIT;
    pb_event evs[NEVENTS];
    uint64_t seqs[NEVENTS];
    for (size_t i = 0; i < NEVENTS; i++) {
        char *label, *path;
        event_at(EVENT_NAMES[i], &evs[i]);
        seqs[i] = i + 1;
        label = pb_xasprintf("event-%s", EVENT_NAMES[i]);
        path = pb_xasprintf("events.%s.event_hex", EVENT_NAMES[i]);
        put_hex("push", label, path);
        free(label);
        free(path);
        label = pb_xasprintf("push-%s", EVENT_NAMES[i]);
        path = pb_xasprintf("push_requests.%s", EVENT_NAMES[i]);
        put_hex("push", label, path);
        free(label);
        free(path);
        uint64_t one_seq = UINT64_C(1) << (7 * i);
        pb_wire_push_encode(&evs[i], &one_seq, 1, 0x5eed + i, &b);
        label = pb_xasprintf("push-seq-%s", EVENT_NAMES[i]);
        put_buf("push", label, &b);
        free(label);
    }
    /* a batched Push of every event, numbered 1..n, epoch set */
    pb_wire_push_encode(evs, seqs, NEVENTS, 0x5eed, &b);
    put_buf("push", "push-batch-all", &b);
    put_hex("push", "invalid-truncated-varint", "invalid.push_request_truncated_varint_hex");
    put_hex("push", "invalid-wrong-wire-type", "invalid.push_request_wrong_wire_type_hex");
    put_hex("push", "invalid-length-overrun", "invalid.push_request_length_overrun_hex");
    put_hex("push", "invalid-empty-oneof", "invalid.event_empty_oneof_hex");

    put_hex("pull_req", "foreign-empty", "messages.pull_request_hex");
    pb_wire_pull_req_encode(&(pb_pull_req){.next_seq = 1}, &b);
    put_buf("pull_req", "next-1", &b);
    pb_wire_pull_req_encode(&(pb_pull_req){UINT64_MAX, 0x5eed, 1u << 20, 1000, 0}, &b);
    put_buf("pull_req", "next-max-epoch-limits", &b);
    pb_wire_pull_req_encode(
        &(pb_pull_req){.next_seq = 5, .epoch = 0x5eed, .max_events = 40, .from_seq = 85}, &b);
    put_buf("pull_req", "pipelined-from", &b);

    put("push_resp", "foreign-empty", "", 0);
    pb_wire_push_resp_encode(1, 0, &b);
    put_buf("push_resp", "ack-1", &b);
    pb_wire_push_resp_encode(UINT64_MAX, 0, &b);
    put_buf("push_resp", "ack-max", &b);

    put_hex("pull_resp", "empty", "messages.pull_response_empty_hex");
    put_hex("pull_resp", "three", "messages.pull_response_three.hex");
    pb_wire_pull_resp_encode(evs, seqs, NEVENTS, 0x5eed, &b);
    put_buf("pull_resp", "all-with-seqs", &b);
    pb_wire_pull_resp_encode(evs, seqs, 1, 0, &b);
    put_buf("pull_resp", "one-with-seq", &b);

    put_hex("notify", "vector", "messages.notify_new_id_request.hex");
    static const char *ids[] = {"[::1]:443", "127.0.0.1:2289", "UPPER.Example.ORG:1",
                                "xn--bcher-kva.example:65535"};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        pb_wire_notify_encode(ids[i], NULL, 0, &b);
        char *label = pb_xasprintf("id-%zu", i);
        put_buf("notify", label, &b);
        free(label);
    }

    put_hex("key_resp", "key-a", "keys.A.public_key_hex"); /* bare key: not a message */
    put_hex("key_resp", "response-a", "messages.key_response_A_hex");
    put("key_resp", "empty", "", 0);

    put_hex("hrpc_error", "vector", "messages.error.hex");
    pb_buf d = PB_BUF_INIT;
    pb_wire_retry_info_encode(30, &d);
    put("hrpc_error", "retry-info", d.data, d.len);
    pb_wire_error_encode("hrpc.unavailable", "busy", d.data, d.len, &b);
    put_buf("hrpc_error", "unavailable-retry", &b);
    pb_buf_free(&d);

    for (size_t i = 0; i < NEVENTS; i++)
        pb_event_clear(&evs[i]);
    pb_buf_free(&b);
}

static void token_seeds(void)
{
    static const char *invalid[] = {"token_bad_signature_hex", "token_sig_63_bytes_hex",
                                    "token_signed_by_other_key_hex", "token_truncated_hex"};
    for (size_t i = 0; i < 2; i++) {
        char *path = pb_xasprintf("tokens.%zu.authorization_base64", i);
        const char *b64 = str_at(path);
        char *label = pb_xasprintf("header-%zu", i);
        put_str("token", label, b64);
        free(label);
        label = pb_xasprintf("bearer-%zu", i);
        char *h = pb_xasprintf("Bearer %s", b64);
        put_str("token", label, h);
        free(h);
        free(label);
        free(path);

        path = pb_xasprintf("tokens.%zu.token_hex", i);
        size_t n;
        uint8_t *raw = hex_at(path, &n);
        for (int v = 0; v < 8; v++) {
            pb_buf b = PB_BUF_INIT;
            pb_buf_append(&b, (const uint8_t[]){'!', (uint8_t)v}, 2);
            pb_buf_append(&b, raw, n);
            label = pb_xasprintf("raw-%zu-variant-%d", i, v);
            put_buf("token", label, &b);
            pb_buf_free(&b);
            free(label);
        }
        free(raw);
        free(path);

        path = pb_xasprintf("tokens.%zu.server_id", i);
        label = pb_xasprintf("token-%zu", i);
        put_str("serverid", label, str_at(path));
        free(label);
        free(path);
    }
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        char *path = pb_xasprintf("invalid.%s", invalid[i]);
        size_t n;
        uint8_t *raw = hex_at(path, &n);
        pb_buf b = PB_BUF_INIT;
        pb_buf_append(&b, "!\0", 2);
        pb_buf_append(&b, raw, n);
        char *label = pb_xasprintf("raw-%s", invalid[i]);
        put_buf("token", label, &b);
        pb_buf_free(&b);
        free(label);
        free(raw);
        free(path);
    }
    static const char *ids[] = {"[::1]:443",
                                "[2001:db8::1]:8443",
                                "127.0.0.1:2289",
                                "UPPER.Example:1",
                                "a-b.c:65535",
                                "1.2.3.04:5",
                                "[fe80::1%25eth0]:1",
                                "example.com:080",
                                "-bad.example:1",
                                "xn--bcher-kva.example:443",
                                "host:0",
                                "10.0.0.256:1"};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        char *label = pb_xasprintf("hand-%zu", i);
        put_str("serverid", label, ids[i]);
        free(label);
    }
}

static void json_seeds(void)
{
    for (size_t i = 0; i < NEVENTS; i++) {
        char *ev = event_json(EVENT_NAMES[i]);
        char *label = pb_xasprintf("event-%s", EVENT_NAMES[i]);
        put_str("eventjson", label, ev);
        free(label);

        char *body =
            pb_xasprintf("POST /v1/outbox\n{\"to\":\"alpha.example.org:2289\",\"event\":%s}", ev);
        label = pb_xasprintf("outbox-%s", EVENT_NAMES[i]);
        put_str("admin", label, body);
        free(label);
        free(body);
        free(ev);
    }
    put_str("eventjson", "proto-names-ints",
            "{\"user_added_to_guild\":{\"user_id\":5,\"guild_id\":\"007\"}}");
    put_str("eventjson", "u64-max", "\"18446744073709551615\"");
    put_str("eventjson", "invite-nul", "{\"userInvited\":{\"inviteId\":\"a\\u0000b\"}}");

    char *a = event_json("user_invited"), *b = event_json("user_rejected_invite");
    char *body = pb_xasprintf("POST /v1/outbox\n{\"to\":\"[::1]:443\",\"events\":[%s,%s]}", a, b);
    put_str("admin", "outbox-many", body);
    free(body);
    free(a);
    free(b);
    static const char *reqs[] = {
        "GET /healthz\n",
        "GET /v1/key\n",
        "GET /v1/inbox?after=0&limit=10&wait=0\n",
        "GET /v1/peers\n",
        "POST /v1/peers/alpha.example.org:2289/retry\n",
        "POST /v1/peers/alpha.example.org:2289/drop-parked\n",
        "GET /v1/users/42/guilds\n",
        "GET /v1/users/18446744073709551615/invites\n",
        "POST /v1/rename\n{\"new_server_id\":\"gamma.example.com:443\"}",
        "DELETE /v1/outbox\n",
    };
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        char *label = pb_xasprintf("request-%zu", i);
        put_str("admin", label, reqs[i]);
        free(label);
    }
}

/* Writes an hRPC request seed: head lines, an empty line, then body bytes. */
static void put_hrpc(const char *label, const char *head, const void *body, size_t n)
{
    pb_buf b = PB_BUF_INIT;
    pb_buf_append_str(&b, head);
    pb_buf_append_str(&b, "\n");
    pb_buf_append(&b, body, n);
    put_buf("hrpc", label, &b);
    pb_buf_free(&b);
}

static void hrpc_seeds(void)
{
    const char *ct = "Content-Type: application/hrpc\n";
    pb_buf body = PB_BUF_INIT;
    for (size_t i = 0; i < NEVENTS; i++) {
        pb_event ev;
        event_at(EVENT_NAMES[i], &ev);
        uint64_t one_seq = i + 1;
        pb_wire_push_encode(&ev, &one_seq, 1, 0x5eed, &body);
        pb_event_clear(&ev);
        char *head =
            pb_xasprintf("POST /protocol.sync.v1.PostboxService/Push\n%sX-Fuzz-Sign:\n", ct);
        char *label = pb_xasprintf("push-signed-%s", EVENT_NAMES[i]);
        put_hrpc(label, head, body.data, body.len);
        free(label);
        free(head);
        if (i == 0) {
            head = pb_xasprintf("POST /protocol.sync.v1.PostboxService/Push\n%sX-Fuzz-Sign:\n"
                                "X-Fuzz-Chunk: 3\nHrpc-Version: 1\n",
                                ct);
            put_hrpc("push-signed-chunked", head, body.data, body.len);
            free(head);
            head = pb_xasprintf("POST /protocol.sync.v1.PostboxService/Push\n%sAuthorization: %s\n",
                                ct, str_at("tokens.0.authorization_base64"));
            put_hrpc("push-vector-token-stale", head, body.data, body.len);
            free(head);
            head = pb_xasprintf("POST /protocol.sync.v1.PostboxService/Push\n%s"
                                "X-Fuzz-Sign: unknown.example:443\n",
                                ct);
            put_hrpc("push-signed-unknown-peer", head, body.data, body.len);
            free(head);
        }
        pb_buf_reset(&body);
    }
    pb_wire_pull_req_encode(&(pb_pull_req){.next_seq = 1, .epoch = 0x5eed}, &body);
    char *head = pb_xasprintf("POST /protocol.sync.v1.PostboxService/Pull\n%sX-Fuzz-Sign:\n", ct);
    put_hrpc("pull-signed-next-1", head, body.data, body.len);
    put_hrpc("pull-signed-foreign", head, "", 0);
    free(head);
    pb_buf_reset(&body);
    pb_wire_pull_req_encode(&(pb_pull_req){.next_seq = 3, .epoch = 0x5eed}, &body);
    head = pb_xasprintf("POST /protocol.sync.v1.PostboxService/Pull\n%sX-Fuzz-Sign:\n", ct);
    put_hrpc("pull-signed-ack-2", head, body.data, body.len);
    free(head);
    pb_buf_reset(&body);

    pb_wire_notify_encode("gamma.example.com:443", NULL, 0, &body);
    head = pb_xasprintf("POST /protocol.sync.v1.PostboxService/NotifyNewId\n%sX-Fuzz-Sign:\n", ct);
    put_hrpc("notify-signed", head, body.data, body.len);
    free(head);
    head = pb_xasprintf("POST /protocol.sync.v1.PostboxService/NotifyNewId\n%sAuthorization: %s\n",
                        ct, str_at("tokens.1.authorization_base64"));
    put_hrpc("notify-vector-token", head, body.data, body.len);
    free(head);
    pb_buf_reset(&body);

    head = pb_xasprintf("POST /protocol.auth.v1.AuthService/Key\n%s", ct);
    put_hrpc("key", head, "", 0);
    free(head);
    put_hrpc("key-get", "GET /protocol.auth.v1.AuthService/Key\n", "", 0);
    put_hrpc("push-wrong-type",
             "POST /protocol.sync.v1.PostboxService/Push\nContent-Type: application/json\n", "{}",
             2);
    head = pb_xasprintf("POST /protocol.sync.v1.PostboxService/Push\n%sHrpc-Version: 2\n", ct);
    put_hrpc("push-version-2", head, "", 0);
    free(head);
    uint8_t big[1100];
    memset(big, 'x', sizeof big);
    head = pb_xasprintf("POST /protocol.sync.v1.PostboxService/Push\n%sX-Fuzz-Sign:\n", ct);
    put_hrpc("push-too-big", head, big, sizeof big);
    free(head);
    put_hrpc("unknown-path", "POST /nope\n", "", 0);
    pb_buf_free(&body);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s VECTORS_JSON OUTDIR\n", argv[0]);
        return 2;
    }
    if (sodium_init() < 0) return 1;
    json_error_t err;
    V = json_load_file(argv[1], 0, &err);
    if (!V) {
        fprintf(stderr, "seed_corpus: %s: %s\n", argv[1], err.text);
        return 1;
    }
    outdir = argv[2];
    if (mkdir(outdir, 0755) != 0 && errno != EEXIST) {
        perror(outdir);
        return 1;
    }
    wire_seeds();
    token_seeds();
    json_seeds();
    hrpc_seeds();
    json_decref(V);
    return 0;
}
