/*
 * hash - the one hash for the library's in-memory tables and shards: SipHash-2-4
 * (libsodium's crypto_shorthash) under a key drawn at random once per process. Keys of
 * these tables are chosen by peers (server IDs, addresses); keyed, a peer cannot craft
 * many keys that fall into one bucket. Not for anything stored or sent: values differ
 * between processes.
 */
#ifndef PB_HASH_H
#define PB_HASH_H

#include <stddef.h>
#include <stdint.h>

/* The hash of n bytes at p. */
uint64_t pb_hash(const void *p, size_t n);
/* The hash of a NUL-terminated string (NULL hashes as ""). */
uint64_t pb_hash_str(const char *s);

#endif
