/*
 * fuzz_util - what the libFuzzer targets in fuzz/ share: an assertion that aborts (so
 * libFuzzer records the input as a crash), sentinel helpers for checking that a refused
 * input left the out-parameters untouched, and `fuzz_env`, a postbox receiver assembled
 * from the real modules (keys, SQLite store, hRPC client, key source, delivery engine)
 * over a fresh temporary directory, for the targets that drive whole request paths.
 *
 * The environment never talks to the network: libcurl's proxy variables point at
 * 127.0.0.1:9 (closed), so every call to a peer (a delivery worker's Push or Pull, a key
 * fetch, NotifyNewId fetching the key at a fuzzer-chosen new ID) fails at once instead of
 * resolving or connecting anywhere.
 *
 * Untrusted input: none of its own; it is the fixture the fuzz inputs are run against.
 */
#ifndef PB_FUZZ_UTIL_H
#define PB_FUZZ_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto/auth.h"
#include "delivery/delivery.h"
#include "net/hrpc_client.h"
#include "crypto/keys.h"
#include "net/keyfetch.h"
#include "postbox.h"
#include "store/store.h"

/* Aborts with the failed condition: libFuzzer keeps the input as a crash artifact. */
#define FUZZ_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) fuzz_fail(__FILE__, __LINE__, #cond);                                         \
    } while (0)
void fuzz_fail(const char *file, int line, const char *what) __attribute__((noreturn));

/* The sentinel byte out-parameters are filled with before a decode call. */
#define FUZZ_SENTINEL 0xA5
/* True when all n bytes at p are FUZZ_SENTINEL. */
bool fuzz_untouched(const void *p, size_t n);

/* A NUL-terminated copy of the input (caller frees). */
char *fuzz_cstr(const uint8_t *data, size_t size);

/* The fixture's identities (RFC 8032 test keys 2 and 1, as in tests/vectors). */
#define FUZZ_SELF_ID "beta.example.net:443"
#define FUZZ_PEER_ID "alpha.example.org:2289"

typedef struct fuzz_env {
    char *dir;          /* temporary data directory, removed by fuzz_env_close */
    pb_keys *self_keys; /* this server's key pair */
    pb_keys *peer_keys; /* FUZZ_PEER_ID's key pair; its public key is in the store */
    pb_store *store;
    pb_client *client;
    pb_keyfetch *keyfetch;
    pb_auth_policy policy;
    pb_delivery *delivery;
} fuzz_env;

/* Opens everything over a new temporary directory (in /dev/shm when it is writable) with
 * synchronous=OFF: the fuzzers exercise logic, not durability. FUZZ_PEER_ID is a known
 * peer with a stored key and three events in its outbox; tokens bound to FUZZ_SELF_ID are
 * ours. With workers, the delivery engine is started with short retries and backoff (its
 * calls to peers all fail, so peers soon become queued), as the daemon runs it; without,
 * the engine only serves calls. Aborts on failure. */
void fuzz_env_open(fuzz_env *e, bool workers);
/* Frees everything and removes the directory. */
void fuzz_env_close(fuzz_env *e);

/* Quiets the library logger (errors only) unless FUZZ_VERBOSE is set. */
void fuzz_quiet_log(void);

#endif
