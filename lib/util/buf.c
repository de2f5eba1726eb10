/*
 * buf - growable byte buffer (see buf.h). Grows geometrically; never shrinks until freed.
 */
#include "util/buf.h"

#include <stdlib.h>
#include <string.h>

#include "util/mem.h"

void pb_buf_reserve(pb_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->len < extra)
        cap *= 2;
    b->data = pb_xrealloc(b->data, cap);
    b->cap = cap;
}

void pb_buf_append(pb_buf *b, const void *p, size_t n)
{
    if (n == 0) return;
    pb_buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void pb_buf_append_str(pb_buf *b, const char *s)
{
    pb_buf_append(b, s, strlen(s));
}

void pb_buf_reset(pb_buf *b)
{
    b->len = 0;
}

void pb_buf_free(pb_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

uint8_t *pb_buf_steal(pb_buf *b, size_t *len)
{
    uint8_t *d = b->data;
    if (len) *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return d;
}
