/*
 * fuzz_eventjson - the admin API's event JSON: the input is parsed by jansson (any JSON
 * value, duplicates refused as the admin listener does, and \u0000 allowed so that
 * eventjson's own NUL check is reached), then given to pb_eventjson_parse, and to the
 * uint64 parsers (pb_eventjson_parse_u64 on the value, pb_eventjson_parse_u64_str on
 * the raw input as a string).
 *
 * Invariants checked: a refused event leaves *out untouched and explains itself in
 * printable ASCII; an accepted one formats back to JSON that parses to the same event,
 * encodes to protobuf that decodes to the same event (what the admin API accepts, the
 * store and the wire can carry), and has a notice; an accepted decimal string prints
 * back to the same number.
 *
 * Untrusted input: the fuzz input, as an admin API JSON body or query value.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire/eventjson.h"
#include "fuzz_util.h"
#include "wire/wire.h"

static void check_u64(const uint8_t *data, size_t size, const json_t *j)
{
    uint64_t v, v2 = 0;
    char *s = fuzz_cstr(data, size);
    memset(&v, FUZZ_SENTINEL, sizeof v);
    if (pb_eventjson_parse_u64_str(s, &v) == PB_OK) {
        char buf[32];
        snprintf(buf, sizeof buf, "%" PRIu64, v);
        FUZZ_ASSERT(pb_eventjson_parse_u64_str(buf, &v2) == PB_OK && v == v2);
        /* Leading zeros are allowed, nothing else differs from the printed form. */
        const char *p = s;
        while (p[0] == '0' && p[1] != '\0')
            p++;
        FUZZ_ASSERT(strcmp(p, buf) == 0);
    } else {
        FUZZ_ASSERT(fuzz_untouched(&v, sizeof v));
    }
    free(s);
    if (j) {
        memset(&v, FUZZ_SENTINEL, sizeof v);
        if (pb_eventjson_parse_u64(j, &v) != PB_OK) FUZZ_ASSERT(fuzz_untouched(&v, sizeof v));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    json_t *j = json_loadb((const char *)data, size,
                           JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    check_u64(data, size, j);
    if (!j) return 0;

    pb_event ev;
    char *why = NULL;
    memset(&ev, FUZZ_SENTINEL, sizeof ev);
    if (pb_eventjson_parse(j, &ev, &why) != PB_OK) {
        FUZZ_ASSERT(fuzz_untouched(&ev, sizeof ev));
        FUZZ_ASSERT(why && *why);
        for (const char *p = why; *p; p++)
            FUZZ_ASSERT(*p >= 0x20 && *p < 0x7f);
        free(why);
        json_decref(j);
        return 0;
    }
    FUZZ_ASSERT(why == NULL);
    FUZZ_ASSERT(ev.kind != PB_EV_NONE);

    json_t *f = pb_eventjson_format(&ev);
    FUZZ_ASSERT(f != NULL);
    pb_event ev2 = {0};
    FUZZ_ASSERT(pb_eventjson_parse(f, &ev2, NULL) == PB_OK && pb_event_equal(&ev, &ev2));
    pb_event_clear(&ev2);

    pb_buf b = PB_BUF_INIT;
    FUZZ_ASSERT(pb_wire_event_encode(&ev, &b) == PB_OK);
    FUZZ_ASSERT(pb_wire_event_decode(b.data, b.len, &ev2) == PB_OK && pb_event_equal(&ev, &ev2));
    pb_event_clear(&ev2);

    json_t *n = pb_eventjson_notice(&ev, "a.example:1");
    FUZZ_ASSERT(n != NULL);

    json_decref(n);
    json_decref(f);
    pb_buf_free(&b);
    pb_event_clear(&ev);
    json_decref(j);
    return 0;
}
