/*
 * wire - encoding and decoding of every protobuf message postbox speaks, over the C code
 * that protoc-c generates from proto/ at build time. protobuf-c structs never leave
 * wire.c: callers see the project's own types (pb_event, pb_token, ...).
 *
 * Untrusted input: every *_decode function takes bytes from the network. Each refuses
 * input over PB_WIRE_MAX_MESSAGE (or a smaller caller limit) before protobuf-c allocates,
 * refuses what protobuf-c refuses, and refuses semantically empty messages (an Event with
 * no kind set). On error nothing is allocated in the out-parameters.
 *
 * Encoders write into a pb_buf (appending); the output is byte-for-byte what protobufjs
 * produces for the same message (tests/vectors).
 */
#ifndef PB_WIRE_H
#define PB_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"
#include "postbox.h"

/* No message postbox decodes may be larger than this, whatever the caller's limit. */
#define PB_WIRE_MAX_MESSAGE (16u * 1024u * 1024u)

/* Event */
pb_err pb_wire_event_encode(const pb_event *ev, pb_buf *out);
/* On PB_OK *ev is filled and owned by the caller (pb_event_clear). */
pb_err pb_wire_event_decode(const uint8_t *p, size_t n, pb_event *ev);

/*
 * PushRequest { event, postbox_seq, postbox_epoch, postbox_more, postbox_more_seqs }.
 * Encoding: n >= 1 events; seqs NULL (a foreign sender: no extension fields, n must be 1)
 * or n sequence numbers, each above the previous (batched Push: events 2..n travel in
 * postbox_more). epoch 0 is not sent.
 * Decoding: *out is filled and owned by the caller (pb_push_req_clear). seqs is NULL when
 * the request carries no postbox_seq; then it must carry no further events. More than
 * max_events events is PB_ERR_TOO_BIG; sequence numbers that are not strictly increasing,
 * or a count of postbox_more_seqs unequal to postbox_more's, are PB_ERR_DECODE.
 */
typedef struct pb_push_req {
    pb_event *evs;  /* n events (owned) */
    uint64_t *seqs; /* n sequence numbers (owned), or NULL */
    size_t n;       /* >= 1 */
    uint64_t epoch; /* 0 when absent */
    uint64_t after; /* postbox_after: apply only once up to it is held (0: absent; below
                       seqs[0], else PB_ERR_DECODE; only with seqs) */
} pb_push_req;
void pb_push_req_clear(pb_push_req *r);
pb_err pb_wire_push_encode(const pb_event *evs, const uint64_t *seqs, size_t n, uint64_t epoch,
                           pb_buf *out);
pb_err pb_wire_push_decode(const uint8_t *p, size_t n, size_t max_events, pb_push_req *out);
/* The same with postbox_after (a batch of a window, PROTOCOL.md 5): 0 is not sent; with
 * seqs only, and below seqs[0] (else PB_ERR_INVAL). */
pb_err pb_wire_push_encode_after(const pb_event *evs, const uint64_t *seqs, size_t n,
                                 uint64_t epoch, uint64_t after, pb_buf *out);

/* PullRequest { postbox_next_seq, postbox_epoch, postbox_max_bytes, postbox_max_events,
 * postbox_from_seq }; every field 0 = absent (a foreign puller sends none). */
typedef struct pb_pull_req {
    uint64_t next_seq;
    uint64_t epoch;
    uint64_t max_bytes;
    uint64_t max_events;
    uint64_t from_seq; /* a pipelined Pull: answer from here (PROTOCOL.md 5) */
} pb_pull_req;
pb_err pb_wire_pull_req_encode(const pb_pull_req *r, pb_buf *out);
pb_err pb_wire_pull_req_decode(const uint8_t *p, size_t n, pb_pull_req *out);

/*
 * PullResponse { repeated event_queue; repeated postbox_seqs; postbox_epoch }. seqs may be
 * NULL when encoding (foreign puller: pass epoch 0 too, for no extension); epoch 0 is not
 * sent. Decoding: *evs
 * and *seqs are arrays of *count the caller frees (each event with pb_event_clear, then
 * free() both arrays). *seqs is NULL when the answer carried no sequence numbers; when it
 * carries them, their count must equal the event count and they must be non-zero and
 * strictly increasing, or the answer is refused (PB_ERR_DECODE). *epoch is 0 when absent.
 */
pb_err pb_wire_pull_resp_encode(const pb_event *evs, const uint64_t *seqs, size_t count,
                                uint64_t epoch, pb_buf *out);
pb_err pb_wire_pull_resp_decode(const uint8_t *p, size_t n, pb_event **evs, uint64_t **seqs,
                                size_t *count, uint64_t *epoch);
/*
 * Streaming form of the PullResponse encoder: a PullResponse is the concatenation of
 * its fields, so an answer can be built one event at a time from the store.
 * Append one event_queue entry; then, once, the packed seqs and the epoch (seqs skipped
 * when count is 0, epoch when 0).
 */
/* What a PullResponse holds, without decoding its events (a cheap scan of the top-level
 * fields, for the puller to ask for the next range at once): the number of event_queue
 * entries, the first and last of postbox_seqs (0 when absent) and postbox_epoch. Only a
 * summary: the full decode checks everything. PB_ERR_DECODE on bytes that do not parse. */
pb_err pb_wire_pull_resp_peek(const uint8_t *p, size_t n, size_t *count, uint64_t *first_seq,
                              uint64_t *last_seq, uint64_t *epoch);
pb_err pb_wire_pull_resp_append_event(const pb_event *ev, pb_buf *out);
void pb_wire_pull_resp_append_seqs(const uint64_t *seqs, size_t count, uint64_t epoch, pb_buf *out);

/* NotifyNewIdRequest { new_server_id, new_id_token }. proof (the serialized Token proving
 * possession of the new ID, PROTOCOL.md 7.2) may be NULL / 0. Decoding: *new_id and
 * *proof are the caller's to free; *proof is NULL (len 0) when absent. */
pb_err pb_wire_notify_encode(const char *new_id, const uint8_t *proof, size_t proof_len,
                             pb_buf *out);
pb_err pb_wire_notify_decode(const uint8_t *p, size_t n, char **new_id, uint8_t **proof,
                             size_t *proof_len);

/* PushResponse { postbox_seq_ack, postbox_epoch } (0 = absent: a foreign receiver) */
pb_err pb_wire_push_resp_encode(uint64_t seq_ack, uint64_t epoch, pb_buf *out);
pb_err pb_wire_push_resp_decode(const uint8_t *p, size_t n, uint64_t *seq_ack, uint64_t *epoch);
/* ... with postbox_window (the batches the receiver accepts in flight; sent and read only
 * with an acknowledgement: 0 otherwise) */
pb_err pb_wire_push_resp_encode_win(uint64_t seq_ack, uint64_t epoch, uint32_t window, pb_buf *out);
pb_err pb_wire_push_resp_decode_win(const uint8_t *p, size_t n, uint64_t *seq_ack, uint64_t *epoch,
                                    uint32_t *window);

/* Empty messages (NotifyNewIdResponse, KeyRequest): decoding checks that the bytes parse
 * as a message without known fields (unknown fields are skipped, as proto3 says). */
pb_err pb_wire_empty_decode(const uint8_t *p, size_t n);

/* KeyResponse { key } ; decode refuses a key that is not exactly 32 bytes. */
pb_err pb_wire_key_resp_encode(const uint8_t key[32], pb_buf *out);
pb_err pb_wire_key_resp_decode(const uint8_t *p, size_t n, uint8_t key[32]);

/* Token { sig, data }. Decoded sig and data are copies the caller owns (pb_token_clear).
 * Decode accepts any sig length; checking that it is 64 bytes is the auth module's job. */
typedef struct pb_token {
    uint8_t *sig;
    size_t sig_len;
    uint8_t *data;
    size_t data_len;
} pb_token;
void pb_token_clear(pb_token *t);
pb_err pb_wire_token_encode(const uint8_t *sig, size_t sig_len, const uint8_t *data,
                            size_t data_len, pb_buf *out);
pb_err pb_wire_token_decode(const uint8_t *p, size_t n, pb_token *t);

/* AuthData { server_id, time, audience }. audience NULL or "" is not sent. Decoding:
 * *server_id is a string the caller frees, returned as sent (validating it is the caller's
 * job); *audience likewise, or NULL when absent. */
pb_err pb_wire_authdata_encode(const char *server_id, uint64_t time, const char *audience,
                               pb_buf *out);
pb_err pb_wire_authdata_decode(const uint8_t *p, size_t n, char **server_id, uint64_t *time,
                               char **audience);

/* hrpc.v1.Error { identifier, human_message, details }. Decoded strings are the caller's
 * to free; *details may be NULL (len 0). */
pb_err pb_wire_error_encode(const char *identifier, const char *human_message,
                            const uint8_t *details, size_t details_len, pb_buf *out);
pb_err pb_wire_error_decode(const uint8_t *p, size_t n, char **identifier, char **human_message,
                            uint8_t **details, size_t *details_len);

/* hrpc.v1.RetryInfo { retry_after } (seconds) */
pb_err pb_wire_retry_info_encode(uint32_t retry_after, pb_buf *out);
pb_err pb_wire_retry_info_decode(const uint8_t *p, size_t n, uint32_t *retry_after);

#endif
