/*
 * farm - the peer farm (tests/tools/peerfarm.c) seen from a test or the benchmark: start
 * it with a fresh key file and wait for its ready file, read its server IDs, query its
 * control endpoint, stop it. Part of the test harness library (tests/ only).
 *
 * Untrusted input: none (the farm's ready file and answers are parsed with jansson and
 * checked).
 */
#ifndef PB_TEST_FARM_H
#define PB_TEST_FARM_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "crypto/keys.h"

typedef struct pbt_farm {
    pid_t pid;        /* 0 when not running */
    char *dir;        /* its directory: key, ready and stats files, log (owned) */
    char *log_path;   /* its stderr */
    char *key_path;   /* the farm's Ed25519 key (postboxd key file format); each ID serves its
                         own, derived from it (pbt_farm_id_key) */
    char *stats_path; /* written at exit and on SIGUSR1 */
    uint16_t control_port;
    size_t count;
    char **ids;   /* "127.0.0.1:PORT", count entries (owned) */
    char **modes; /* "ok", "hung", "unaccepted", "refusing" (owned) */
} pbt_farm;

/* The key of the farm's i-th ID: each ID has its own, as real servers have, derived from
 * the farm's key (a hash of its deterministic Ed25519 signature of "peerfarm id <i>"), so
 * the test or benchmark that wrote the key file can sign as any ID. Caller frees *out with
 * pb_keys_free. */
pb_err pbt_farm_id_key(const pb_keys *farm_key, size_t i, pb_keys **out);

/* The peerfarm program: $PBT_PEERFARM, else the one built beside the tests. */
const char *pbt_farm_program(void);
/* Starts peerfarm with args (NULL-terminated, e.g. {"--count", "16", "--hung", "0-7",
 * NULL}; --key-file, --ready and --stats are added) and waits (bounded: 60 s) until it is
 * ready. Returns NULL, with its log printed, when it did not come up. Caller frees with
 * pbt_farm_free. */
pbt_farm *pbt_farm_start(const char *tag, const char *const *args);
/* GET path on the control endpoint: the parsed answer (new reference) or NULL. */
json_t *pbt_farm_get(const pbt_farm *f, const char *path);
/* SIGTERM, wait (bounded: 20 s, then SIGKILL); true when it exited with status 0. */
bool pbt_farm_stop(pbt_farm *f);
/* Stops if running, removes its directory (unless PBT_KEEP is set), frees. NULL: no-op. */
void pbt_farm_free(pbt_farm *f);
/* Prints the last lines of its log to stderr. */
void pbt_farm_dump_log(const pbt_farm *f);

#endif
