/*
 * keys - this server's Ed25519 key pair (libsodium). The secret key lives in
 * sodium_malloc'd memory, locked and guarded, and is wiped on free. On disk the key file
 * holds the 32-byte seed, hex encoded, one line; it is created with mode 0600 and refused
 * when group- or world-accessible.
 *
 * Untrusted input: the key file (local, but checked: mode, owner-only, exact format).
 */
#ifndef PB_KEYS_H
#define PB_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "postbox.h"

#define PB_PUBKEY_LEN 32
#define PB_SIG_LEN 64
#define PB_SEED_LEN 32

typedef struct pb_keys pb_keys;

/* New random key pair; caller frees with pb_keys_free. */
pb_err pb_keys_generate(pb_keys **out);
/* Deterministic key pair from a 32-byte seed (tests, vectors). */
pb_err pb_keys_from_seed(const uint8_t seed[PB_SEED_LEN], pb_keys **out);
/* Loads the key file; PB_ERR_NOT_FOUND when absent, PB_ERR_CONFIG when its mode lets
 * group or others read it, PB_ERR_CORRUPT when its content is malformed. */
pb_err pb_keys_load(const char *path, pb_keys **out);
/* Writes the key file with mode 0600; refuses to overwrite (PB_ERR_EXISTS). fsyncs the
 * file and its directory before returning. */
pb_err pb_keys_save(const pb_keys *k, const char *path);
/* Loads `path`, or generates and saves a new pair when it does not exist. *created tells
 * which happened (may be NULL). */
pb_err pb_keys_load_or_create(const char *path, pb_keys **out, bool *created);
void pb_keys_free(pb_keys *k); /* NULL is a no-op */

/* The 32-byte public key, owned by k. */
const uint8_t *pb_keys_public(const pb_keys *k);
/* Detached Ed25519 signature of msg into sig[64]. */
void pb_keys_sign(const pb_keys *k, const uint8_t *msg, size_t len, uint8_t sig[PB_SIG_LEN]);
/* Verifies a detached signature against a public key. */
bool pb_keys_verify(const uint8_t pub[PB_PUBKEY_LEN], const uint8_t *msg, size_t len,
                    const uint8_t sig[PB_SIG_LEN]);
/* Lower-case hex of a public key into out[65]. */
void pb_keys_hex(const uint8_t pub[PB_PUBKEY_LEN], char out[2 * PB_PUBKEY_LEN + 1]);

#endif
