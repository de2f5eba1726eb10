/*
 * buf - a growable byte buffer, used for encoded messages and HTTP bodies.
 * A pb_buf is a plain struct (initialise with PB_BUF_INIT or zero); it owns `data`.
 */
#ifndef PB_BUF_H
#define PB_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct pb_buf {
    uint8_t *data; /* owned; NULL while empty and never grown */
    size_t len;
    size_t cap;
} pb_buf;

#define PB_BUF_INIT                                                                                \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }

void pb_buf_reserve(pb_buf *b, size_t extra);
void pb_buf_append(pb_buf *b, const void *p, size_t n);
void pb_buf_append_str(pb_buf *b, const char *s);
void pb_buf_reset(pb_buf *b); /* len = 0, keeps memory */
void pb_buf_free(pb_buf *b);  /* frees memory; b is empty afterwards */
/* Moves the bytes out: returns data (caller frees; may be NULL when empty), b is emptied. */
uint8_t *pb_buf_steal(pb_buf *b, size_t *len);

#endif
