/*
 * hash - keyed SipHash for in-memory tables (see hash.h). The key is made at first use
 * (pthread_once); libsodium is initialised there too (sodium_init may be called again).
 */
#include "util/hash.h"

#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

static unsigned char g_key[crypto_shorthash_KEYBYTES];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void make_key(void)
{
    if (sodium_init() < 0) abort(); /* no randomness: nothing safe to do */
    randombytes_buf(g_key, sizeof g_key);
}

uint64_t pb_hash(const void *p, size_t n)
{
    pthread_once(&g_once, make_key);
    unsigned char out[crypto_shorthash_BYTES];
    crypto_shorthash(out, p, n, g_key);
    uint64_t h;
    memcpy(&h, out, sizeof h);
    return h;
}

uint64_t pb_hash_str(const char *s)
{
    return s ? pb_hash(s, strlen(s)) : pb_hash("", 0);
}
