/*
 * addrclass_test - which addresses a server ID may make us connect to (lib/util/
 * addrclass.h, PROTOCOL.md 7.3): every refused class of IPv4 and IPv6 with its edges, the
 * public addresses next to them, and IPv4 carried in IPv6.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "harness.h"
#include "util/addrclass.h"

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
    return pbt_finish();
}
