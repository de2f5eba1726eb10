/*
 * keys - this server's Ed25519 key pair over libsodium (see keys.h).
 *
 * Design: the 64-byte libsodium secret key (seed || public key) lives in sodium_malloc
 * memory (guard pages, mlock'd where allowed), made read-only once created and wiped by
 * sodium_free. Every other copy of the seed (generation, key file I/O) is a stack buffer
 * wiped with sodium_memzero before returning. sodium_init runs once (pthread_once).
 * The key file is 64 hex characters of the seed and "\n". Saving writes a temporary
 * file (O_CREAT|O_EXCL, 0600) in the same directory, fsyncs it, link()s it to the final
 * path (which fails if the path exists, so an existing key is never overwritten, even in
 * a race), unlinks the temporary name and fsyncs the directory.
 *
 * Untrusted input: the key file. It must be a regular file with no group/other
 * permission bits (else PB_ERR_CONFIG), and hold exactly 64 hex digits with an optional
 * final newline (else PB_ERR_CORRUPT); it is size-checked before it is read.
 */
#include "crypto/keys.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/log.h"
#include "util/mem.h"

#define SEED_HEX_LEN (2 * PB_SEED_LEN)
#define KEY_FILE_LEN (SEED_HEX_LEN + 1) /* hex + "\n" */

struct pb_keys {
    uint8_t pk[PB_PUBKEY_LEN];
    unsigned char *sk; /* crypto_sign_SECRETKEYBYTES, sodium_malloc'd, read-only */
};

static pthread_once_t sodium_once = PTHREAD_ONCE_INIT;
static int sodium_status = -1;

static void sodium_init_once(void)
{
    sodium_status = sodium_init() < 0 ? -1 : 0;
}

static bool crypto_ready(void)
{
    pthread_once(&sodium_once, sodium_init_once);
    if (sodium_status != 0) PB_ERROR(NULL, "libsodium failed to initialise");
    return sodium_status == 0;
}

pb_err pb_keys_from_seed(const uint8_t seed[PB_SEED_LEN], pb_keys **out)
{
    if (!seed || !out) return PB_ERR_INVAL;
    if (!crypto_ready()) return PB_ERR_CRYPTO;
    unsigned char *sk = sodium_malloc(crypto_sign_SECRETKEYBYTES);
    if (!sk) {
        PB_ERROR(NULL, "sodium_malloc failed for the secret key");
        return PB_ERR_CRYPTO;
    }
    pb_keys *k = pb_xcalloc(1, sizeof *k);
    if (crypto_sign_seed_keypair(k->pk, sk, seed) != 0) {
        sodium_free(sk);
        free(k);
        return PB_ERR_CRYPTO;
    }
    sodium_mprotect_readonly(sk);
    k->sk = sk;
    *out = k;
    return PB_OK;
}

pb_err pb_keys_generate(pb_keys **out)
{
    if (!out) return PB_ERR_INVAL;
    if (!crypto_ready()) return PB_ERR_CRYPTO;
    uint8_t seed[PB_SEED_LEN];
    randombytes_buf(seed, sizeof seed);
    pb_err err = pb_keys_from_seed(seed, out);
    sodium_memzero(seed, sizeof seed);
    return err;
}

void pb_keys_free(pb_keys *k)
{
    if (!k) return;
    sodium_free(k->sk); /* wipes */
    free(k);
}

const uint8_t *pb_keys_public(const pb_keys *k)
{
    return k->pk;
}

void pb_keys_sign(const pb_keys *k, const uint8_t *msg, size_t len, uint8_t sig[PB_SIG_LEN])
{
    crypto_sign_detached(sig, NULL, msg, len, k->sk);
}

bool pb_keys_verify(const uint8_t pub[PB_PUBKEY_LEN], const uint8_t *msg, size_t len,
                    const uint8_t sig[PB_SIG_LEN])
{
    if (!crypto_ready()) return false;
    return crypto_sign_verify_detached(sig, msg, len, pub) == 0;
}

void pb_keys_hex(const uint8_t pub[PB_PUBKEY_LEN], char out[2 * PB_PUBKEY_LEN + 1])
{
    sodium_bin2hex(out, 2 * PB_PUBKEY_LEN + 1, pub, PB_PUBKEY_LEN);
}

pb_err pb_keys_load(const char *path, pb_keys **out)
{
    if (!path || !out) return PB_ERR_INVAL;
    if (!crypto_ready()) return PB_ERR_CRYPTO;
    char text[KEY_FILE_LEN + 1]; /* one byte more than a valid file, to detect longer ones */
    uint8_t seed[PB_SEED_LEN];
    pb_err err = PB_ERR_CORRUPT;
    size_t got = 0;
    struct stat st;

    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        if (errno == ENOENT) return PB_ERR_NOT_FOUND;
        PB_ERROR(NULL, "key file %s: cannot open: %s", path, strerror(errno));
        return PB_ERR_IO;
    }
    if (fstat(fd, &st) != 0) {
        PB_ERROR(NULL, "key file %s: cannot stat: %s", path, strerror(errno));
        err = PB_ERR_IO;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        PB_ERROR(NULL, "key file %s: not a regular file", path);
        err = PB_ERR_CONFIG;
        goto out;
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        PB_ERROR(NULL, "key file %s: mode %03o lets group or others access it; run chmod 600 %s",
                 path, (unsigned)(st.st_mode & 0777), path);
        err = PB_ERR_CONFIG;
        goto out;
    }
    if (st.st_size > KEY_FILE_LEN) {
        PB_ERROR(NULL, "key file %s: malformed (expected 64 hex digits)", path);
        goto out;
    }
    while (got < sizeof text) {
        ssize_t r = read(fd, text + got, sizeof text - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            PB_ERROR(NULL, "key file %s: read failed: %s", path, strerror(errno));
            err = PB_ERR_IO;
            goto out;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    size_t hexlen = got;
    if (hexlen == KEY_FILE_LEN && text[hexlen - 1] == '\n') hexlen--;
    size_t seedlen = 0;
    const char *end = NULL;
    if (hexlen != SEED_HEX_LEN ||
        sodium_hex2bin(seed, sizeof seed, text, hexlen, NULL, &seedlen, &end) != 0 ||
        seedlen != PB_SEED_LEN || end != text + hexlen) {
        PB_ERROR(NULL, "key file %s: malformed (expected 64 hex digits)", path);
        goto out;
    }
    err = pb_keys_from_seed(seed, out);
out:
    sodium_memzero(text, sizeof text);
    sodium_memzero(seed, sizeof seed);
    close(fd);
    return err;
}

static bool write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* fsyncs the directory holding path, so a new entry in it is durable. */
static pb_err fsync_parent(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir =
        slash ? pb_xstrndup(path, slash == path ? 1 : (size_t)(slash - path)) : pb_xstrdup(".");
    pb_err err = PB_OK;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        PB_ERROR(NULL, "key file directory %s: fsync failed: %s", dir, strerror(errno));
        err = PB_ERR_IO;
    }
    if (fd >= 0) close(fd);
    free(dir);
    return err;
}

pb_err pb_keys_save(const pb_keys *k, const char *path)
{
    if (!k || !path) return PB_ERR_INVAL;
    char text[KEY_FILE_LEN + 1];
    uint8_t seed[PB_SEED_LEN];
    pb_err err = PB_ERR_IO;
    bool tmp_made = false;
    int rc;
    char *tmp = pb_xasprintf("%s.tmp-%ld-%08x", path, (long)getpid(), randombytes_random());
    int fd = -1;

    if (access(path, F_OK) == 0) {
        err = PB_ERR_EXISTS;
        goto out;
    }
    crypto_sign_ed25519_sk_to_seed(seed, k->sk);
    sodium_bin2hex(text, sizeof text, seed, sizeof seed);
    text[SEED_HEX_LEN] = '\n';

    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        PB_ERROR(NULL, "key file %s: cannot create: %s", tmp, strerror(errno));
        goto out;
    }
    tmp_made = true;
    if (fchmod(fd, 0600) != 0 || !write_all(fd, text, KEY_FILE_LEN) || fsync(fd) != 0) {
        PB_ERROR(NULL, "key file %s: write failed: %s", tmp, strerror(errno));
        goto out;
    }
    rc = close(fd);
    fd = -1;
    if (rc != 0) {
        PB_ERROR(NULL, "key file %s: close failed: %s", tmp, strerror(errno));
        goto out;
    }
    /* link() refuses an existing path atomically, unlike rename(). */
    if (link(tmp, path) != 0) {
        if (errno == EEXIST)
            err = PB_ERR_EXISTS;
        else
            PB_ERROR(NULL, "key file %s: cannot create: %s", path, strerror(errno));
        goto out;
    }
    err = PB_OK;
out:
    if (fd >= 0) close(fd);
    if (tmp_made) unlink(tmp);
    if (err == PB_OK) err = fsync_parent(path);
    sodium_memzero(text, sizeof text);
    sodium_memzero(seed, sizeof seed);
    free(tmp);
    return err;
}

pb_err pb_keys_load_or_create(const char *path, pb_keys **out, bool *created)
{
    if (!path || !out) return PB_ERR_INVAL;
    pb_keys *k = NULL;
    pb_err err = pb_keys_load(path, &k);
    if (err != PB_ERR_NOT_FOUND) goto out;
    err = pb_keys_generate(&k);
    if (err != PB_OK) goto out;
    err = pb_keys_save(k, path);
    if (err == PB_OK) {
        PB_INFO(NULL, "created a new key pair in %s", path);
        if (created) *created = true;
        *out = k;
        return PB_OK;
    }
    pb_keys_free(k);
    k = NULL;
    /* Another process created it between our load and save: use theirs. */
    if (err == PB_ERR_EXISTS) err = pb_keys_load(path, &k);
out:
    if (err == PB_OK) {
        if (created) *created = false;
        *out = k;
    }
    return err;
}
