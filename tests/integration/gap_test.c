/*
 * gap_test - window batches that arrive ahead of a gap (PROTOCOL.md 5, "Windows"), sent by
 * the test itself as a broken or hostile postbox would send them: bound tokens, an epoch,
 * sequence numbers and postbox_after, from an in-test identity I (harness pbt_ident) to a
 * real postboxd R. What R promises such a sender, each part on the same stream of I's:
 *
 *   head     a batch without postbox_after (1..2) is applied and acknowledged, and the
 *            answer announces R's window
 *   refused  a batch after 3 (event 4) while 3 never comes: R holds it (the gauge
 *            postbox_push_held_batches reads 1), and once its hold ends (5 s) refuses it
 *            503 hrpc.unavailable with RetryInfo 1 s; nothing of it is stored; the gauge
 *            is back to 0 (R once kept the expired waiter counted until the sender's next
 *            commit) and postbox_push_ahead_of_gap_total{result="refused"} counted it
 *   filled   the same batch again, then 3: 4 is held until 3's commit and then applied
 *            (200, acknowledging 4, well within its hold); R's inbox holds 1..4 in order
 *   flood    W + 9 batches of one sender ahead of one gap at once (W = the window R
 *            announced, whose W - 1 batches may wait): at most W - 1 are held, the others
 *            are refused 503 at once (within 2.5 s, half a hold); meanwhile another peer
 *            J's Push is answered 200 as soon; every flood batch ends in a 503 and none is
 *            stored
 *   stale    (R runs with max_suspended 40: at most 20 batches wait in all, fewer than one
 *            sender's W - 1, so the flood filled that bound) once the flood's holds ended,
 *            J's own batch ahead of its gap is held and applied after the batch in front
 *            of it: R once kept expired waiters counted against that bound until their
 *            sender committed again, so a sender that flooded and went away had every
 *            other sender's batches ahead of a gap refused at once from then on
 *   resend   I then sends the gap and the flood's events in order, one batch after
 *            another: R's inbox holds I's events 1..N exactly once, in order
 *
 * On PostgreSQL (gap_test_pg) R is a node of several (node_id is always set there): a
 * held batch asks the store whether another node applied the batches in front of it, and
 * the refusal of "refused" comes from the end of that polling hold. "refused" counts the
 * polls in R's debug log: a held batch once asked every 20 ms (in practice about 10 times
 * a second, 50 synchronous store reads on listener threads per held batch and hold; a
 * sender's 23 held batches 230 a second), now at doubling intervals up to 1 s (at most 15
 * in its 5 s); on SQLite (one node) never.
 */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>

#include "crypto/auth.h"
#include "harness.h"
#include "wire/wire.h"

#define PUSH "/protocol.sync.v1.PostboxService/Push"
#define EPOCH 7
#define HOLD_MS 5000 /* a held batch's longest wait (PROTOCOL.md 5) */
#define HELD "postbox_push_held_batches"
#define REFUSED "postbox_push_ahead_of_gap_total{result=\"refused\"}"
#define APPLIED "postbox_push_ahead_of_gap_total{result=\"applied\"}"
#define MAXFLOOD 64
#define AT_ONCE_MS 2500 /* answered "at once": well before a hold could end */

/* One Push and what R answered. */
struct push {
    const pbt_daemon *r;
    const pbt_ident *as;
    uint64_t epoch, first, after; /* events first..first+n-1; after 0: none */
    size_t n;
    /* the answer */
    long status;
    char ident[64];
    uint32_t retry, window;
    uint64_t ack, ack_epoch;
    int64_t ms; /* from sending to the answer */
};

static void push_do(struct push *p)
{
    pb_event *evs = calloc(p->n, sizeof *evs);
    uint64_t *seqs = calloc(p->n, sizeof *seqs);
    for (size_t i = 0; i < p->n; i++) {
        uint64_t s = p->first + i;
        char inv[32];
        snprintf(inv, sizeof inv, "g-%llu", (unsigned long long)s);
        evs[i] = (pb_event){.kind = PB_EV_USER_INVITED,
                            .user_id = s % 50 + 1,
                            .inviter_id = 7,
                            .invite_id = strdup(inv)};
        seqs[i] = s;
    }
    pb_buf body = PB_BUF_INIT;
    pb_err e = pb_wire_push_encode_after(evs, seqs, p->n, p->epoch, p->after, &body);
    CHECKF(e == PB_OK, "Push %llu.. encodes", (unsigned long long)p->first);
    char *tok =
        pb_auth_header_make(p->as->keys, p->as->server_id, p->r->server_id, (uint64_t)time(NULL));
    char auth[2048];
    snprintf(auth, sizeof auth, "Authorization: %s", tok);
    const char *hdrs[] = {"Content-Type: application/hrpc", "Hrpc-Version: 1", auth, NULL};
    pbt_http h;
    int64_t t0 = pbt_now_ms();
    pbt_http_do("http", p->r->port, "POST", PUSH, hdrs, body.data, body.len, NULL, &h);
    p->ms = pbt_now_ms() - t0;
    p->status = h.status;
    p->ident[0] = '\0';
    p->retry = p->window = 0;
    p->ack = p->ack_epoch = 0;
    if (h.status == 200) {
        if (pb_wire_push_resp_decode_win(h.body, h.body_len, &p->ack, &p->ack_epoch, &p->window) !=
            PB_OK)
            p->status = -1; /* not a PushResponse */
    } else if (h.status > 0) {
        char *id = NULL, *msg = NULL;
        uint8_t *details = NULL;
        size_t dlen = 0;
        if (pb_wire_error_decode(h.body, h.body_len, &id, &msg, &details, &dlen) == PB_OK) {
            snprintf(p->ident, sizeof p->ident, "%s", id);
            if (dlen) pb_wire_retry_info_decode(details, dlen, &p->retry);
        }
        free(id);
        free(msg);
        free(details);
    }
    pbt_http_clear(&h);
    free(tok);
    pb_buf_free(&body);
    for (size_t i = 0; i < p->n; i++)
        pb_event_clear(&evs[i]);
    free(evs);
    free(seqs);
}

static void *push_thread(void *arg)
{
    push_do(arg);
    return NULL;
}

static struct push push_make(const pbt_daemon *r, const pbt_ident *as, uint64_t first, size_t n,
                             uint64_t after)
{
    return (struct push){.r = r, .as = as, .epoch = EPOCH, .first = first, .n = n, .after = after};
}

/* A 503 that tells the sender to send the batches in front first, and when to retry. */
static void check_refused(const struct push *p, const char *what)
{
    CHECKF(p->status == 503, "%s: status %ld, want 503", what, p->status);
    CHECKF(!strcmp(p->ident, "hrpc.unavailable"), "%s: identifier \"%s\"", what, p->ident);
    CHECKF(p->retry == 1, "%s: RetryInfo %u s, want 1", what, p->retry);
}

/* I's events in R's inbox, in inbox order: their numbers (from the invite IDs g-N). */
static size_t inbox_of(const pbt_daemon *r, const char *from, uint64_t *out, size_t max)
{
    long st;
    json_t *all = pbt_inbox_all(r, &st);
    CHECKF(st == 200, "inbox read: %ld", st);
    size_t n = 0, i;
    json_t *it;
    json_array_foreach(all, i, it)
    {
        const char *f = json_string_value(json_object_get(it, "from"));
        const char *inv = json_string_value(json_object_get(
            json_object_get(json_object_get(it, "event"), "userInvited"), "inviteId"));
        if (f && !strcmp(f, from) && n < max)
            out[n++] = inv && !strncmp(inv, "g-", 2) ? strtoull(inv + 2, NULL, 10) : 0;
    }
    json_decref(all);
    return n;
}

/* R's inbox holds exactly I's events 1..last, once each, in order. */
static void check_inbox(const char *part, const pbt_daemon *r, const pbt_ident *i, uint64_t last)
{
    uint64_t got[512];
    size_t n = inbox_of(r, i->server_id, got, 512);
    bool ok = n == last;
    for (size_t k = 0; ok && k < n; k++)
        ok = got[k] == k + 1;
    CHECKF(ok, "%s: R's inbox holds I's events 1..%llu once each in order (%zu events: %llu..%llu)",
           part, (unsigned long long)last, n, n ? (unsigned long long)got[0] : 0ULL,
           n ? (unsigned long long)got[n - 1] : 0ULL);
}

static double metric0(const pbt_daemon *r, const char *series)
{
    double v = pbt_metric(r, series);
    return v < 0 ? 0 : v;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    pbt_ident *id = pbt_ident_new(NULL);
    pbt_ident *other = pbt_ident_new(NULL);
    /* at most 20 held in all (max_suspended / 2) */
    pbt_daemon *r = pbt_daemon_new(
        "gapR", (const char *const[]){"--max-suspended", "40", "--log-level", "debug", NULL});
    if (!id || !other || !pbt_daemon_start(r)) {
        CHECKF(false, "set-up: identities and R start");
        goto out;
    }

    /* head */
    struct push p = push_make(r, id, 1, 2, 0);
    push_do(&p);
    CHECKF(p.status == 200 && p.ack == 2 && p.ack_epoch == EPOCH,
           "head: 1..2 acknowledged (status %ld, ack %llu, epoch %llu)", p.status,
           (unsigned long long)p.ack, (unsigned long long)p.ack_epoch);
    unsigned window = p.window;
    CHECKF(window > 1, "head: R announces a window (%u)", window);
    check_inbox("head", r, id, 2);

    /* refused: 4 after 3, and 3 never comes */
    double refused0 = metric0(r, REFUSED);
    struct push held = push_make(r, id, 4, 1, 3);
    pthread_t th;
    int polls0 = pbt_log_count(r, "held: asking the store", NULL);
    pthread_create(&th, NULL, push_thread, &held);
    CHECKF(pbt_wait_metric(r, HELD, 1, PBT_BOUND_MS), "refused: R holds the batch ahead of 3");
    pthread_join(th, NULL);
    int polls = pbt_log_count(r, "held: asking the store", NULL) - polls0;
    const char *store = getenv("PBT_STORE");
    if (store && !strcmp(store, "postgres")) /* a node of several: the hold polls */
        CHECKF(polls >= 1 && polls <= 15,
               "refused: the held batch asked the store %d times in its 5 s (1 to 15)", polls);
    else
        CHECKF(polls == 0, "refused: a single node's hold never polls the store (%d)", polls);
    check_refused(&held, "refused");
    CHECKF(held.ms >= HOLD_MS - 100 && held.ms < HOLD_MS + 10000,
           "refused: answered when its hold ended (%lld ms, hold %d ms)", (long long)held.ms,
           HOLD_MS);
    CHECKF(metric0(r, HELD) == 0, "refused: held batches back to 0 (%.0f)", metric0(r, HELD));
    CHECKF(metric0(r, REFUSED) == refused0 + 1, "refused: counted (%.0f, was %.0f)",
           metric0(r, REFUSED), refused0);
    check_inbox("refused", r, id, 2);

    /* filled: 4 again, held, then 3 */
    double applied0 = metric0(r, APPLIED);
    held = push_make(r, id, 4, 1, 3);
    pthread_create(&th, NULL, push_thread, &held);
    CHECKF(pbt_wait_metric(r, HELD, 1, PBT_BOUND_MS), "filled: R holds 4");
    p = push_make(r, id, 3, 1, 2);
    push_do(&p);
    CHECKF(p.status == 200 && p.ack >= 3, "filled: 3 applied (status %ld, ack %llu)", p.status,
           (unsigned long long)p.ack);
    pthread_join(th, NULL);
    CHECKF(held.status == 200 && held.ack == 4,
           "filled: the held 4 applied after 3 (status %ld, ack %llu)", held.status,
           (unsigned long long)held.ack);
    CHECKF(held.ms < HOLD_MS, "filled: 4 answered within its hold (%lld ms)", (long long)held.ms);
    CHECKF(metric0(r, APPLIED) >= applied0 + 1, "filled: counted as applied (%.0f, was %.0f)",
           metric0(r, APPLIED), applied0);
    check_inbox("filled", r, id, 4);

    /* flood: W + 9 batches ahead of the gap at 5, at once */
    struct push j = {.r = r, .as = other, .epoch = 11, .first = 1, .n = 1};
    push_do(&j); /* J known to R (its key fetched) before the flood */
    CHECKF(j.status == 200, "flood: J's first Push applied (%ld)", j.status);
    size_t nflood = window + 9 < MAXFLOOD ? window + 9 : MAXFLOOD;
    struct push flood[MAXFLOOD];
    pthread_t ft[MAXFLOOD];
    refused0 = metric0(r, REFUSED);
    for (size_t k = 0; k < nflood; k++) {
        flood[k] = push_make(r, id, 6 + k, 1, 5 + k);
        pthread_create(&ft[k], NULL, push_thread, &flood[k]);
    }
    /* the gate's per-sender bound: what exceeds it is refused at once */
    CHECKF(pbt_wait_metric(r, REFUSED, refused0 + (double)(nflood - (window - 1)), PBT_BOUND_MS),
           "flood: at least %zu batches refused", nflood - (window - 1));
    double held_now = metric0(r, HELD);
    CHECKF(held_now <= window - 1, "flood: at most %u held (%.0f)", window - 1, held_now);
    j = (struct push){.r = r, .as = other, .epoch = 11, .first = 2, .n = 1};
    push_do(&j);
    CHECKF(j.status == 200 && j.ms < AT_ONCE_MS,
           "flood: J's Push answered 200 at once (%ld, %lld ms)", j.status, (long long)j.ms);
    size_t quick = 0, slow = 0;
    for (size_t k = 0; k < nflood; k++) {
        pthread_join(ft[k], NULL);
        char what[64];
        snprintf(what, sizeof what, "flood batch %zu", k);
        check_refused(&flood[k], what);
        if (flood[k].ms < AT_ONCE_MS) quick++;
        if (flood[k].ms >= HOLD_MS - 100) slow++;
    }
    CHECKF(quick >= nflood - (window - 1) && quick + slow == nflood,
           "flood: %zu refused at once, %zu when their hold ended (of %zu; at most %u may wait)",
           quick, slow, nflood, window - 1);
    CHECKF(metric0(r, HELD) == 0, "flood: held batches back to 0 (%.0f)", metric0(r, HELD));
    check_inbox("flood", r, id, 4);

    /* stale: J's batch ahead of its own gap, once the flood's holds are over */
    struct push j4 = {.r = r, .as = other, .epoch = 11, .first = 4, .n = 1, .after = 3};
    pthread_create(&th, NULL, push_thread, &j4);
    CHECKF(pbt_wait_metric(r, HELD, 1, PBT_BOUND_MS), "stale: R holds J's 4");
    j = (struct push){.r = r, .as = other, .epoch = 11, .first = 3, .n = 1, .after = 2};
    push_do(&j);
    CHECKF(j.status == 200 && j.ack >= 3, "stale: J's 3 applied (status %ld, ack %llu)", j.status,
           (unsigned long long)j.ack);
    pthread_join(th, NULL);
    CHECKF(j4.status == 200 && j4.ack == 4,
           "stale: J's 4 held and applied after its 3 (status %ld \"%s\", ack %llu, %lld ms)",
           j4.status, j4.ident, (unsigned long long)j4.ack, (long long)j4.ms);

    /* resend: the gap, then the flood's events, in order */
    uint64_t last = 4;
    for (uint64_t s = 5; s <= 5 + nflood; s++) {
        p = push_make(r, id, s, 1, s - 1);
        push_do(&p);
        CHECKF(p.status == 200 && p.ack == s, "resend: %llu applied (status %ld, ack %llu)",
               (unsigned long long)s, p.status, (unsigned long long)p.ack);
        if (p.status != 200) break;
        last = s;
    }
    check_inbox("resend", r, id, last);
    CHECKF(last == 5 + nflood, "resend: up to %zu", 5 + nflood);

out:
    if (r && r->pid && pbt_failed) pbt_daemon_dump_log(r);
    pbt_daemon_free(r);
    pbt_ident_free(id);
    pbt_ident_free(other);
    return pbt_finish();
}
