/*
 * serverid - Harmony server IDs (PROTOCOL.md section 2): `domain:port`, the port
 * mandatory (1..65535, decimal, no leading zero or sign); domain a DNS name (LDH labels
 * of 1..63 characters, no leading/trailing hyphen, 253 characters at most), an IPv4
 * literal, or an IPv6 literal in brackets. DNS names are normalised to lower case.
 *
 * Untrusted input: every function here takes strings from config, the admin API or the
 * wire, and refuses anything else with PB_ERR_INVAL without writing the output.
 */
#ifndef PB_SERVERID_H
#define PB_SERVERID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "postbox.h"

/* Longest valid ID: 253-char name + ":65535", plus NUL; IPv6 literals are shorter. */
#define PB_SERVER_ID_MAX 260

/* Validates `in` and writes the normalised ID (lower case) into out[PB_SERVER_ID_MAX]. */
pb_err pb_serverid_normalize(const char *in, char out[PB_SERVER_ID_MAX]);
/* Same, for a counted (not NUL-terminated) input. */
pb_err pb_serverid_normalize_n(const char *in, size_t n, char out[PB_SERVER_ID_MAX]);
/* True when `id` is valid and already normalised. */
bool pb_serverid_is_normal(const char *id);
/* Splits a valid ID: host without brackets, lower case, into host[PB_SERVER_ID_MAX], and
 * the port. PB_ERR_INVAL (nothing written) when the ID is invalid. */
pb_err pb_serverid_split(const char *id, char host[PB_SERVER_ID_MAX], uint16_t *port);

#endif
