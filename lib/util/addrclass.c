/*
 * addrclass - address classes refused as peer addresses (see addrclass.h). One table
 * per family of (prefix, length, class), checked in order; IPv4-mapped and NAT64
 * addresses are judged by the IPv4 address they carry.
 */
#include "util/addrclass.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

struct v4range {
    uint32_t prefix;
    unsigned len;
    const char *why;
};

static const struct v4range v4[] = {
    {0x00000000u, 8, "unspecified"},    /* 0.0.0.0/8 "this network" */
    {0x0a000000u, 8, "private"},        /* 10/8 */
    {0x64400000u, 10, "private"},       /* 100.64/10 shared address space (RFC 6598) */
    {0x7f000000u, 8, "loopback"},       /* 127/8 */
    {0xa9fe0000u, 16, "link-local"},    /* 169.254/16 */
    {0xac100000u, 12, "private"},       /* 172.16/12 */
    {0xc0000000u, 24, "reserved"},      /* 192.0.0/24 IETF protocol assignments */
    {0xc0000200u, 24, "documentation"}, /* 192.0.2/24 */
    {0xc0586300u, 24, "reserved"},      /* 192.88.99/24 6to4 relay anycast */
    {0xc0a80000u, 16, "private"},       /* 192.168/16 */
    {0xc6120000u, 15, "benchmarking"},  /* 198.18/15 */
    {0xc6336400u, 24, "documentation"}, /* 198.51.100/24 */
    {0xcb007100u, 24, "documentation"}, /* 203.0.113/24 */
    {0xe0000000u, 4, "multicast"},      /* 224/4 */
    {0xf0000000u, 4, "reserved"},       /* 240/4, including 255.255.255.255 */
};

static const char *v4_refusal(uint32_t a)
{
    for (size_t i = 0; i < sizeof v4 / sizeof v4[0]; i++) {
        uint32_t mask = v4[i].len ? ~0u << (32 - v4[i].len) : 0;
        if ((a & mask) == v4[i].prefix) return v4[i].why;
    }
    return NULL;
}

struct v6range {
    uint8_t prefix[16];
    unsigned len;
    const char *why;
};

static const struct v6range v6[] = {
    {{0}, 128, "unspecified"},                                           /* :: */
    {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 128, "loopback"}, /* ::1 */
    {{0xfc}, 7, "private"},                                              /* fc00::/7 ULA */
    {{0xfe, 0x80}, 10, "link-local"},                                    /* fe80::/10 */
    {{0xfe, 0xc0}, 10, "private"},                                       /* fec0::/10 site-local */
    {{0xff}, 8, "multicast"},                                            /* ff00::/8 */
    {{0x20, 0x01, 0x0d, 0xb8}, 32, "documentation"},                     /* 2001:db8::/32 */
    {{0x01, 0x00}, 64, "reserved"},                                      /* 100::/64 discard */
    {{0x20, 0x01, 0x00, 0x02}, 48, "benchmarking"},                      /* 2001:2::/48 */
    /* 64:ff9b:1::/48 local-use NAT64 (RFC 8215): whatever IPv4 address it carries */
    {{0x00, 0x64, 0xff, 0x9b, 0x00, 0x01}, 48, "private"},
    {{0}, 96, "reserved"}, /* ::/96 IPv4-compatible (deprecated); after :: and ::1 */
};

static bool v6_match(const uint8_t *a, const struct v6range *r)
{
    unsigned full = r->len / 8, rest = r->len % 8;
    if (memcmp(a, r->prefix, full) != 0) return false;
    if (rest == 0) return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[full] & mask) == (r->prefix[full] & mask);
}

static uint32_t v4_at(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

const char *pb_addr_refusal(const struct sockaddr *sa)
{
    if (!sa) return "not IP";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        return v4_refusal(v4_at((const uint8_t *)&s4->sin_addr));
    }
    if (sa->sa_family != AF_INET6) return "not IP";
    const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const uint8_t nat64[12] = {0x00, 0x64, 0xff, 0x9b};
    if (memcmp(a, mapped, 12) == 0 || memcmp(a, nat64, 12) == 0) {
        const char *why = v4_refusal(v4_at(a + 12));
        return why;
    }
    for (size_t i = 0; i < sizeof v6 / sizeof v6[0]; i++)
        if (v6_match(a, &v6[i])) return v6[i].why;
    return NULL;
}

bool pb_addr_client_key(const struct sockaddr *sa, uint8_t key[16])
{
    memset(key, 0, 16);
    if (sa->sa_family == AF_INET) {
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        memcpy(key, a, IN6_IS_ADDR_V4MAPPED(a) ? 16 : 8);
        return true;
    }
    return false;
}

void pb_addr_client_text(const uint8_t key[16], char *out, size_t cap)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    char buf[INET6_ADDRSTRLEN] = "?";
    bool is4 = memcmp(key, mapped, 12) == 0;
    if (!inet_ntop(is4 ? AF_INET : AF_INET6, is4 ? key + 12 : key, buf, sizeof buf))
        snprintf(buf, sizeof buf, "?");
    snprintf(out, cap, "%s%s", buf, is4 ? "" : "/64");
}
