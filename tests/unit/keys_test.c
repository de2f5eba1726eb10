/*
 * keys_test - the Ed25519 key pair: the vectors' seeds give their public keys, signing
 * and verification (against the vectors' signatures too), the key file (created 0600,
 * reloaded to the same key, refused when group/other-accessible or malformed, never
 * overwritten).
 */
#include "harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto/keys.h"
#include "util/mem.h"

static json_t *vec;

static const char *vstr(const char *a, const char *b, const char *c)
{
    json_t *v = json_object_get(json_object_get(vec, a), b);
    if (c) v = json_object_get(v, c);
    const char *s = json_string_value(v);
    if (!s) {
        fprintf(stderr, "vectors: missing %s/%s/%s\n", a, b, c ? c : "");
        exit(2);
    }
    return s;
}

static pb_keys *from_seed_hex(const char *hex)
{
    size_t n = 0;
    uint8_t *seed = pbt_hex(hex, &n);
    pb_keys *k = NULL;
    CHECK_INT(n, PB_SEED_LEN);
    CHECK_OK(pb_keys_from_seed(seed, &k));
    free(seed);
    return k;
}

static void test_vector_keys(void)
{
    const char *names[] = {"A", "B"};
    for (int i = 0; i < 2; i++) {
        pb_keys *k = from_seed_hex(vstr("keys", names[i], "seed_hex"));
        if (!k) continue;
        char hex[2 * PB_PUBKEY_LEN + 1];
        pb_keys_hex(pb_keys_public(k), hex);
        CHECK_STR(hex, vstr("keys", names[i], "public_key_hex"));
        pb_keys_free(k);
    }
}

static void test_sign_verify(void)
{
    pb_keys *a = from_seed_hex(vstr("keys", "A", "seed_hex"));
    pb_keys *b = from_seed_hex(vstr("keys", "B", "seed_hex"));
    if (!a || !b) goto out;

    /* Ed25519 is deterministic: signing the vector's AuthData gives the vector's sig. */
    json_t *tok = json_array_get(json_object_get(vec, "tokens"), 0);
    size_t dlen, slen;
    uint8_t *data = pbt_hex(json_string_value(json_object_get(tok, "auth_data_hex")), &dlen);
    uint8_t *want = pbt_hex(json_string_value(json_object_get(tok, "sig_hex")), &slen);
    uint8_t sig[PB_SIG_LEN];
    pb_keys_sign(a, data, dlen, sig);
    CHECK_MEM(sig, sizeof sig, want, slen);
    CHECK(pb_keys_verify(pb_keys_public(a), data, dlen, sig));
    CHECK(!pb_keys_verify(pb_keys_public(b), data, dlen, sig));
    data[3] ^= 1;
    CHECK(!pb_keys_verify(pb_keys_public(a), data, dlen, sig));
    data[3] ^= 1;
    sig[10] ^= 0x80;
    CHECK(!pb_keys_verify(pb_keys_public(a), data, dlen, sig));
    free(data);
    free(want);

    /* empty message */
    pb_keys_sign(b, (const uint8_t *)"", 0, sig);
    CHECK(pb_keys_verify(pb_keys_public(b), (const uint8_t *)"", 0, sig));

    /* two generated pairs differ */
    pb_keys *g1 = NULL, *g2 = NULL;
    CHECK_OK(pb_keys_generate(&g1));
    CHECK_OK(pb_keys_generate(&g2));
    if (g1 && g2) CHECK(memcmp(pb_keys_public(g1), pb_keys_public(g2), PB_PUBKEY_LEN) != 0);
    pb_keys_free(g1);
    pb_keys_free(g2);
out:
    pb_keys_free(a);
    pb_keys_free(b);
    pb_keys_free(NULL);
}

static void write_file(const char *path, const char *content, mode_t mode)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    if (fd < 0 || write(fd, content, strlen(content)) != (ssize_t)strlen(content)) abort();
    close(fd);
    chmod(path, mode);
}

static int count_entries(const char *dir)
{
    int n = 0;
    DIR *d = opendir(dir);
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) n++;
    closedir(d);
    return n;
}

static void test_files(void)
{
    char *dir = pbt_tmpdir("keys");
    char *path = pb_xasprintf("%s/key", dir);
    pb_keys *k = NULL, *k2 = NULL;
    bool created = false;
    struct stat st;

    CHECK_ERR(pb_keys_load(path, &k), PB_ERR_NOT_FOUND);
    CHECK(k == NULL);

    /* creates with mode 0600, even under a permissive umask */
    mode_t old = umask(0);
    CHECK_OK(pb_keys_load_or_create(path, &k, &created));
    umask(old);
    CHECK(created);
    CHECK(k != NULL);
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    CHECK_INT(st.st_size, 65);

    /* reloads the same key */
    created = true;
    CHECK_OK(pb_keys_load_or_create(path, &k2, &created));
    CHECK(!created);
    if (k && k2) CHECK(memcmp(pb_keys_public(k), pb_keys_public(k2), PB_PUBKEY_LEN) == 0);
    pb_keys_free(k2);
    k2 = NULL;
    CHECK_OK(pb_keys_load(path, &k2));
    if (k && k2) CHECK(memcmp(pb_keys_public(k), pb_keys_public(k2), PB_PUBKEY_LEN) == 0);
    pb_keys_free(k2);
    k2 = NULL;

    /* save never overwrites, and leaves no temporary file behind */
    pb_keys *other = NULL;
    CHECK_OK(pb_keys_generate(&other));
    CHECK_ERR(pb_keys_save(other, path), PB_ERR_EXISTS);
    CHECK_OK(pb_keys_load(path, &k2));
    if (k && k2) CHECK(memcmp(pb_keys_public(k), pb_keys_public(k2), PB_PUBKEY_LEN) == 0);
    pb_keys_free(k2);
    k2 = NULL;
    char *path2 = pb_xasprintf("%s/key2", dir);
    CHECK_OK(pb_keys_save(other, path2));
    CHECK_OK(pb_keys_load(path2, &k2));
    if (k2) CHECK(memcmp(pb_keys_public(other), pb_keys_public(k2), PB_PUBKEY_LEN) == 0);
    pb_keys_free(k2);
    k2 = NULL;
    pb_keys_free(other);
    CHECK_INT(count_entries(dir), 2); /* key and key2 only */

    /* file content is the seed in hex: the vectors' seed file gives key A */
    const char *seed_hex = vstr("keys", "A", "seed_hex");
    char *content = pb_xasprintf("%s\n", seed_hex);
    write_file(path2, content, 0600);
    CHECK_OK(pb_keys_load(path2, &k2));
    if (k2) {
        char hex[2 * PB_PUBKEY_LEN + 1];
        pb_keys_hex(pb_keys_public(k2), hex);
        CHECK_STR(hex, vstr("keys", "A", "public_key_hex"));
    }
    pb_keys_free(k2);
    k2 = NULL;
    write_file(path2, seed_hex, 0600); /* no final newline: accepted */
    CHECK_OK(pb_keys_load(path2, &k2));
    pb_keys_free(k2);
    k2 = NULL;

    /* group- or world-accessible: refused with PB_ERR_CONFIG */
    write_file(path2, content, 0644);
    CHECK_ERR(pb_keys_load(path2, &k2), PB_ERR_CONFIG);
    CHECK_ERR(pb_keys_load_or_create(path2, &k2, &created), PB_ERR_CONFIG);
    write_file(path2, content, 0640);
    CHECK_ERR(pb_keys_load(path2, &k2), PB_ERR_CONFIG);
    write_file(path2, content, 0602);
    CHECK_ERR(pb_keys_load(path2, &k2), PB_ERR_CONFIG);
    CHECK(chmod(path, 0644) == 0);
    CHECK_ERR(pb_keys_load(path, &k2), PB_ERR_CONFIG);
    CHECK(chmod(path, 0600) == 0);
    CHECK(k2 == NULL);
    free(content);

    /* malformed content: PB_ERR_CORRUPT, and load_or_create does not replace it */
    const char *bad[] = {
        "",
        "\n",
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f6\n",    /* 63 */
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f600\n",  /* 65 */
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\n\n", /* 2 NL */
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f6g\n",   /* not hex */
        " 9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f6\n",   /* space */
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\r\n", /* CRLF */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(path2, bad[i], 0600);
        CHECKF(pb_keys_load(path2, &k2) == PB_ERR_CORRUPT, "bad[%zu]", i);
        CHECKF(pb_keys_load_or_create(path2, &k2, &created) == PB_ERR_CORRUPT, "bad[%zu]", i);
    }
    CHECK(k2 == NULL);

    /* a directory is not a key file */
    char *sub = pb_xasprintf("%s/sub", dir);
    CHECK(mkdir(sub, 0700) == 0);
    CHECK(pb_keys_load(sub, &k2) != PB_OK);
    free(sub);

    pb_keys_free(k);
    free(path2);
    free(path);
    pbt_rmrf(dir);
    free(dir);
}

int main(void)
{
    vec = pbt_vectors();
    test_vector_keys();
    test_sign_verify();
    test_files();
    json_decref(vec);
    return pbt_finish();
}
