/*
 * addrclass_test - which addresses a server ID may make us connect to (lib/util/
 * addrclass.h, PROTOCOL.md 7.3): every refused class of IPv4 and IPv6 with its edges, the
 * public addresses next to them, and IPv4 carried in IPv6; and which client addresses count
 * as one host for the per-address connection limit (IPv4 alone, IPv6 by /64).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "harness.h"
#include "util/addrclass.h"

static void to_sockaddr(const char *ip, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        CHECKF(inet_pton(AF_INET6, ip, &a->sin6_addr) == 1, "test address %s", ip);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        CHECKF(inet_pton(AF_INET, ip, &a->sin_addr) == 1, "test address %s", ip);
    }
}

/* The client key of ip as text. */
static const char *key_text(const char *ip, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    uint8_t key[16];
    to_sockaddr(ip, &ss);
    CHECKF(pb_addr_client_key((struct sockaddr *)&ss, key), "%s has a key", ip);
    pb_addr_client_text(key, out, cap);
    return out;
}

static bool same_host(const char *a, const char *b)
{
    struct sockaddr_storage sa, sb;
    uint8_t ka[16], kb[16];
    to_sockaddr(a, &sa);
    to_sockaddr(b, &sb);
    return pb_addr_client_key((struct sockaddr *)&sa, ka) &&
           pb_addr_client_key((struct sockaddr *)&sb, kb) && memcmp(ka, kb, 16) == 0;
}

static void test_client_keys(void)
{
    char t[64];
    CHECK_STR(key_text("192.0.2.1", t, sizeof t), "192.0.2.1");
    CHECK_STR(key_text("::ffff:192.0.2.1", t, sizeof t), "192.0.2.1");
    CHECK_STR(key_text("2001:db8:1:2:aaaa:bbbb:cccc:dddd", t, sizeof t), "2001:db8:1:2::/64");
    CHECK_STR(key_text("::1", t, sizeof t), "::/64");
    CHECK(same_host("192.0.2.1", "::ffff:192.0.2.1"));
    CHECK(!same_host("192.0.2.1", "192.0.2.2"));
    CHECK(same_host("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff")); /* one /64 */
    CHECK(!same_host("2001:db8:1:2::1", "2001:db8:1:3::1"));
    CHECK(!same_host("192.0.2.1", "::c000:201")); /* IPv4-compatible is IPv6, not IPv4 */
    struct sockaddr un = {.sa_family = AF_UNIX};
    uint8_t key[16];
    CHECK(!pb_addr_client_key(&un, key));
    char small[5];
    pb_addr_client_text((const uint8_t[16]){[10] = 0xff, [11] = 0xff, 192, 0, 2, 1}, small,
                        sizeof small);
    CHECK_STR(small, "192."); /* truncated, terminated */
}

static const char *class_of(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        if (inet_pton(AF_INET6, ip, &a->sin6_addr) != 1) return "bad test address";
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        if (inet_pton(AF_INET, ip, &a->sin_addr) != 1) return "bad test address";
    }
    const char *why = pb_addr_refusal((struct sockaddr *)&ss);
    return why ? why : "public";
}

int main(void)
{
    static const struct {
        const char *ip, *want;
    } t[] = {
        {"0.0.0.0", "unspecified"},
        {"0.255.255.255", "unspecified"},
        {"1.0.0.0", "public"},
        {"9.255.255.255", "public"},
        {"10.0.0.1", "private"},
        {"10.255.255.255", "private"},
        {"11.0.0.0", "public"},
        {"100.63.255.255", "public"},
        {"100.64.0.0", "private"},
        {"100.127.255.255", "private"},
        {"100.128.0.0", "public"},
        {"127.0.0.1", "loopback"},
        {"127.255.255.254", "loopback"},
        {"128.0.0.1", "public"},
        {"169.254.1.1", "link-local"},
        {"169.255.0.0", "public"},
        {"172.15.255.255", "public"},
        {"172.16.0.0", "private"},
        {"172.31.255.255", "private"},
        {"172.32.0.0", "public"},
        {"192.0.0.8", "reserved"},
        {"192.0.2.5", "documentation"},
        {"192.88.99.1", "reserved"},
        {"192.167.255.255", "public"},
        {"192.168.1.1", "private"},
        {"192.169.0.0", "public"},
        {"198.18.0.1", "benchmarking"},
        {"198.19.255.255", "benchmarking"},
        {"198.20.0.0", "public"},
        {"198.51.100.7", "documentation"},
        {"203.0.113.9", "documentation"},
        {"223.255.255.255", "public"},
        {"224.0.0.1", "multicast"},
        {"239.255.255.255", "multicast"},
        {"240.0.0.1", "reserved"},
        {"255.255.255.255", "reserved"},
        {"8.8.8.8", "public"},
        {"93.184.216.34", "public"},
        {"::", "unspecified"},
        {"::1", "loopback"},
        {"::2", "reserved"},
        {"::ffff:127.0.0.1", "loopback"},
        {"::ffff:10.1.2.3", "private"},
        {"::ffff:8.8.8.8", "public"},
        {"64:ff9b::a00:1", "private"},
        {"64:ff9b::808:808", "public"},
        {"64:ff9b:1::808:808", "private"},
        {"64:ff9b:1:ffff:ffff:ffff:ffff:ffff", "private"},
        {"64:ff9b:2::1", "public"},
        {"fc00::1", "private"},
        {"fdff:ffff::1", "private"},
        {"fe80::1", "link-local"},
        {"febf::1", "link-local"},
        {"fec0::1", "private"},
        {"ff02::1", "multicast"},
        {"2001:db8::1", "documentation"},
        {"2001:2::1", "benchmarking"},
        {"100::1", "reserved"},
        {"2001:4860:4860::8888", "public"},
        {"2a00:1450::1", "public"},
        {"fbff::1", "public"},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        CHECKF(strcmp(class_of(t[i].ip), t[i].want) == 0, "%s: %s, want %s", t[i].ip,
               class_of(t[i].ip), t[i].want);
    CHECK_STR(pb_addr_refusal(NULL), "not IP");
    struct sockaddr un = {.sa_family = AF_UNIX};
    CHECK_STR(pb_addr_refusal(&un), "not IP");
    test_client_keys();
    return pbt_finish();
}
