/*
 * fuzz_serverid - server ID validation and normalisation (pb_serverid_normalize_n,
 * pb_serverid_normalize, pb_serverid_is_normal, pb_serverid_split): IDs arrive in
 * AuthData, NotifyNewId, admin bodies, path segments and the configuration.
 *
 * Invariants checked: a refused input leaves the output buffer untouched; the counted
 * and the NUL-terminated forms agree when the input holds no NUL; an accepted ID is
 * normal, normalising it again gives it back, it splits into a host and a non-zero port,
 * and joining those (brackets for IPv6) rebuilds it.
 *
 * Untrusted input: the fuzz input, as a server ID string.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "util/serverid.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char out[PB_SERVER_ID_MAX], out2[PB_SERVER_ID_MAX];
    memset(out, FUZZ_SENTINEL, sizeof out);
    pb_err err = pb_serverid_normalize_n((const char *)data, size, out);
    if (!memchr(data, '\0', size)) {
        char *s = fuzz_cstr(data, size);
        memset(out2, FUZZ_SENTINEL, sizeof out2);
        pb_err err2 = pb_serverid_normalize(s, out2);
        FUZZ_ASSERT(err == err2);
        if (err == PB_OK) FUZZ_ASSERT(strcmp(out, out2) == 0);
        FUZZ_ASSERT(pb_serverid_is_normal(s) == (err == PB_OK && strcmp(s, out) == 0));
        free(s);
    }
    if (err != PB_OK) {
        FUZZ_ASSERT(fuzz_untouched(out, sizeof out));
        return 0;
    }
    FUZZ_ASSERT(strlen(out) < PB_SERVER_ID_MAX);
    FUZZ_ASSERT(pb_serverid_is_normal(out));
    FUZZ_ASSERT(pb_serverid_normalize(out, out2) == PB_OK && strcmp(out, out2) == 0);
    char host[PB_SERVER_ID_MAX], joined[2 * PB_SERVER_ID_MAX];
    uint16_t port = 0;
    FUZZ_ASSERT(pb_serverid_split(out, host, &port) == PB_OK);
    FUZZ_ASSERT(port != 0 && host[0] != '\0');
    snprintf(joined, sizeof joined, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);
    FUZZ_ASSERT(strcmp(joined, out) == 0);
    return 0;
}
