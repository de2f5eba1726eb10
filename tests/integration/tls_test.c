/*
 * tls_test - TLS end to end: a CA and a certificate for 127.0.0.1 made with the openssl
 * CLI for this run; two postboxd serving HTTPS, each verifying the other against the CA
 * file. Checks the Key endpoint over https with and without the CA, and a Push from B's
 * identity to A, which makes A fetch B's key over https.
 */
#include <stdlib.h>
#include <time.h>

#include "crypto/auth.h"
#include "harness.h"
#include "net/hrpc_client.h"
#include "crypto/keys.h"
#include "wire/wire.h"

static bool make_certs(const char *dir)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && "
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
             "-subj /CN=postbox-test-ca -keyout ca.key -out ca.pem 2>/dev/null && "
             "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
             "-subj /CN=127.0.0.1 -keyout server.key -out server.csr 2>/dev/null && "
             "printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext.cnf && "
             "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
             "-extfile ext.cnf -out server.pem 2>/dev/null",
             dir);
    return system(cmd) == 0;
}

int main(void)
{
    char *certs = pbt_tmpdir("certs");
    if (!make_certs(certs)) {
        CHECK(!"openssl made the test certificates");
        return pbt_finish();
    }
    char cert[600], key[600], ca[600];
    snprintf(cert, sizeof cert, "%s/server.pem", certs);
    snprintf(key, sizeof key, "%s/server.key", certs);
    snprintf(ca, sizeof ca, "%s/ca.pem", certs);
    const char *extra[] = {"--tls-cert",    cert,    "--tls-key", key, "--ca-file", ca,
                           "--peer-scheme", "https", NULL};
    pbt_daemon *a = pbt_daemon_new("tlsA", extra);
    pbt_daemon *b = pbt_daemon_new("tlsB", extra);
    if (!pbt_daemon_start(a) || !pbt_daemon_start(b)) {
        CHECK(!"daemons start");
        return pbt_finish();
    }

    /* Key over https with the CA: the key of A's data directory. */
    pb_client *cl = NULL;
    pb_client_opts co = {.ca_file = ca, .allow_private = true};
    CHECK_OK(pb_client_new(&co, &cl));
    pb_client_answer ans;
    uint8_t k[32];
    CHECK_OK(pb_client_fetch_key(cl, a->server_id, k, &ans));
    pb_client_answer_clear(&ans);
    char path[600];
    snprintf(path, sizeof path, "%s/key", a->dir);
    pb_keys *ka = NULL;
    CHECK_OK(pb_keys_load(path, &ka));
    CHECK_MEM(k, 32, pb_keys_public(ka), 32);
    pb_keys_free(ka);

    /* Without the CA (system CAs only) the certificate is refused. */
    pb_client *cl2 = NULL;
    pb_client_opts co2 = {.allow_private = true};
    CHECK_OK(pb_client_new(&co2, &cl2));
    CHECK_ERR(pb_client_fetch_key(cl2, a->server_id, k, &ans), PB_ERR_TLS);
    pb_client_answer_clear(&ans);
    pb_client_free(cl2);

    /* Plain HTTP to a TLS listener gets no valid hRPC answer. */
    pb_client *cl3 = NULL;
    pb_client_opts co3 = {.plain_http = true, .allow_private = true};
    CHECK_OK(pb_client_new(&co3, &cl3));
    CHECK(pb_client_fetch_key(cl3, a->server_id, k, &ans) != PB_OK);
    pb_client_answer_clear(&ans);
    pb_client_free(cl3);

    /* B's token to A over https: A fetches B's key over https and authenticates B. */
    snprintf(path, sizeof path, "%s/key", b->dir);
    pb_keys *kb = NULL;
    CHECK_OK(pb_keys_load(path, &kb));
    char *t = pb_auth_header_make(kb, b->server_id, NULL, (uint64_t)time(NULL));
    pb_buf push = PB_BUF_INIT;
    pb_event ev = {.kind = PB_EV_USER_ADDED_TO_GUILD, .user_id = 7, .guild_id = 9};
    pb_wire_push_encode(&ev, NULL, 1, 0, &push);
    pb_client_call(cl, a->server_id, "/protocol.sync.v1.PostboxService/Push", t, push.data,
                   push.len, &ans);
    CHECKF(ans.status != 0 && ans.status != 401 && ans.status != 403 && ans.status != 503,
           "B authenticated at A over https: %ld %s", ans.status,
           ans.identifier ? ans.identifier : "");
    pb_client_answer_clear(&ans);
    pb_buf_free(&push);
    free(t);
    pb_keys_free(kb);
    pb_client_free(cl);

    if (pbt_failed) {
        pbt_daemon_dump_log(a);
        pbt_daemon_dump_log(b);
    }
    pbt_daemon_free(a);
    pbt_daemon_free(b);
    pbt_rmrf(certs);
    free(certs);
    return pbt_finish();
}
