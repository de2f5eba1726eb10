/*
 * mem - allocation wrappers. Out of memory is not an error value in postbox: these
 * wrappers abort the process with a message, so no caller has to handle it. The durable
 * store makes a restart safe.
 */
#ifndef PB_MEM_H
#define PB_MEM_H

#include <stddef.h>

/* Each returns memory the caller owns and frees with free(). Never returns NULL. */
void *pb_xmalloc(size_t n);
void *pb_xcalloc(size_t nmemb, size_t size);
void *pb_xrealloc(void *p, size_t n);
char *pb_xstrdup(const char *s);
char *pb_xstrndup(const char *s, size_t n);
/* printf into a new string the caller frees. */
char *pb_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
