/*
 * serverid - validation and normalisation of Harmony server IDs (PROTOCOL.md section 2).
 *
 * Design: the input is screened first (length under PB_SERVER_ID_MAX, printable ASCII
 * only, so no NUL, space or UTF-8), then split into host and port and each part is
 * checked by hand against the grammar; the result is built in a local buffer and copied
 * out only on success. Hosts are one of:
 *   - an IPv6 literal in brackets: parsed with inet_pton(AF_INET6) and written back in its
 *     canonical text form (RFC 5952: lower case, no leading zeros, the longest run of
 *     zero groups compressed, as inet_ntop writes it), so one address has one ID and
 *     "[0::1]:p" matches a deny entry "[::1]:p"; zone IDs ("%eth0") are refused by inet_pton;
 *   - an IPv4 dotted quad: exactly four decimal octets 0..255 without leading zeros
 *     ("010.0.0.1" is refused: some resolvers read it as octal);
 *   - a DNS name: LDH labels of 1..63 characters without leading/trailing hyphen, no
 *     empty label, no trailing dot, 253 characters at most, lower-cased. A name whose
 *     last label looks numeric (all digits, or "0x" hex) must be a valid dotted quad, so
 *     "1.2.3", "1.2.3.256", "123" and "0x7f.1" are refused rather than handed to a
 *     resolver or URL parser that might read them as an address.
 * The port is 1..65535, decimal, no leading zero, no sign.
 *
 * Untrusted input: every function takes strings from config, the admin API or the wire;
 * anything invalid is refused with PB_ERR_INVAL and the output is left untouched.
 */
#include "util/serverid.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#define DNS_NAME_MAX 253
#define DNS_LABEL_MAX 63
#define IPV6_TEXT_MAX 45 /* INET6_ADDRSTRLEN - 1 */

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_hex(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static char to_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* Port: 1..5 digits, no leading zero, value 1..65535. */
static bool parse_port(const char *p, size_t n, uint16_t *port)
{
    if (n == 0 || n > 5 || p[0] == '0') return false;
    unsigned long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(p[i])) return false;
        v = v * 10 + (unsigned long)(p[i] - '0');
    }
    if (v < 1 || v > 65535) return false;
    *port = (uint16_t)v;
    return true;
}

/* Strict dotted quad: four octets of 1..3 digits, no leading zero, each <= 255. */
static bool is_ipv4(const char *p, size_t n)
{
    size_t i = 0;
    for (int octet = 0; octet < 4; octet++) {
        if (octet > 0) {
            if (i >= n || p[i] != '.') return false;
            i++;
        }
        size_t start = i;
        unsigned v = 0;
        while (i < n && is_digit(p[i]) && i - start < 3) {
            v = v * 10 + (unsigned)(p[i] - '0');
            i++;
        }
        size_t len = i - start;
        if (len == 0 || v > 255 || (len > 1 && p[start] == '0')) return false;
    }
    return i == n;
}

/* True when the label looks like a number to an IPv4 parser (decimal or 0x hex). */
static bool label_is_numeric(const char *p, size_t n)
{
    if (n >= 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        for (size_t i = 2; i < n; i++)
            if (!is_hex(p[i])) return false;
        return true;
    }
    for (size_t i = 0; i < n; i++)
        if (!is_digit(p[i])) return false;
    return n > 0;
}

static bool is_dns_name(const char *p, size_t n)
{
    if (n == 0 || n > DNS_NAME_MAX) return false;
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && p[i] != '.') {
            if (!is_alpha(p[i]) && !is_digit(p[i]) && p[i] != '-') return false;
            continue;
        }
        size_t len = i - start;
        if (len == 0 || len > DNS_LABEL_MAX) return false; /* also refuses "a..b", "a." */
        if (p[start] == '-' || p[i - 1] == '-') return false;
        if (i == n && label_is_numeric(p + start, len)) return false;
        start = i + 1;
    }
    return true;
}

/* An IPv6 literal: true and its canonical text in canon (INET6_ADDRSTRLEN bytes). */
static bool parse_ipv6(const char *p, size_t n, char canon[IPV6_TEXT_MAX + 1])
{
    char tmp[IPV6_TEXT_MAX + 1];
    unsigned char addr[16];
    if (n == 0 || n > IPV6_TEXT_MAX) return false;
    memcpy(tmp, p, n);
    tmp[n] = '\0';
    return inet_pton(AF_INET6, tmp, addr) == 1 &&
           inet_ntop(AF_INET6, addr, canon, IPV6_TEXT_MAX + 1) != NULL;
}

/*
 * Validates in[0..n) and writes the normalised ID into out, the bare host (no brackets)
 * into host and the port into *port. Writes nothing unless the ID is valid.
 */
static pb_err parse(const char *in, size_t n, char out[PB_SERVER_ID_MAX],
                    char host[PB_SERVER_ID_MAX], uint16_t *port)
{
    if (!in || n == 0 || n >= PB_SERVER_ID_MAX) return PB_ERR_INVAL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c <= 0x20 || c >= 0x7f) return PB_ERR_INVAL; /* NUL, space, controls, non-ASCII */
    }

    const char *h, *portp;
    size_t hlen;
    bool v6 = false;
    if (in[0] == '[') {
        const char *close = memchr(in, ']', n);
        if (!close || (size_t)(close - in) + 1 >= n || close[1] != ':') return PB_ERR_INVAL;
        h = in + 1;
        hlen = (size_t)(close - h);
        portp = close + 2;
        v6 = true;
    } else {
        const char *colon = memchr(in, ':', n);
        if (!colon) return PB_ERR_INVAL;
        h = in;
        hlen = (size_t)(colon - in);
        portp = colon + 1; /* a second ':' (bare IPv6) fails the port's digit check */
    }
    size_t portlen = n - (size_t)(portp - in);

    uint16_t pv;
    char canon[IPV6_TEXT_MAX + 1];
    if (!parse_port(portp, portlen, &pv)) return PB_ERR_INVAL;
    if (v6) {
        if (!parse_ipv6(h, hlen, canon)) return PB_ERR_INVAL;
    } else if (!is_ipv4(h, hlen) && !is_dns_name(h, hlen)) {
        return PB_ERR_INVAL;
    }

    char tmp[PB_SERVER_ID_MAX], hostbuf[PB_SERVER_ID_MAX];
    if (v6) {
        /* the canonical form is never longer than the text it came from */
        snprintf(hostbuf, sizeof hostbuf, "%s", canon);
        snprintf(tmp, sizeof tmp, "[%s]:%u", canon, (unsigned)pv);
    } else {
        for (size_t i = 0; i < hlen; i++)
            hostbuf[i] = to_lower(h[i]);
        hostbuf[hlen] = '\0';
        for (size_t i = 0; i < n; i++)
            tmp[i] = to_lower(in[i]);
        tmp[n] = '\0';
    }
    if (out) memcpy(out, tmp, strlen(tmp) + 1);
    if (host) memcpy(host, hostbuf, strlen(hostbuf) + 1);
    if (port) *port = pv;
    return PB_OK;
}

pb_err pb_serverid_normalize_n(const char *in, size_t n, char out[PB_SERVER_ID_MAX])
{
    return parse(in, n, out, NULL, NULL);
}

pb_err pb_serverid_normalize(const char *in, char out[PB_SERVER_ID_MAX])
{
    if (!in) return PB_ERR_INVAL;
    /* Measures at most PB_SERVER_ID_MAX bytes: a longer string is refused unread. */
    return parse(in, strnlen(in, PB_SERVER_ID_MAX), out, NULL, NULL);
}

bool pb_serverid_is_normal(const char *id)
{
    char tmp[PB_SERVER_ID_MAX];
    return pb_serverid_normalize(id, tmp) == PB_OK && strcmp(tmp, id) == 0;
}

pb_err pb_serverid_split(const char *id, char host[PB_SERVER_ID_MAX], uint16_t *port)
{
    if (!id || !host || !port) return PB_ERR_INVAL;
    return parse(id, strnlen(id, PB_SERVER_ID_MAX), NULL, host, port);
}
