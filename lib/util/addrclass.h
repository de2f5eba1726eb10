/*
 * addrclass - which IP addresses a server ID may make us connect to (PROTOCOL.md 7.3).
 *
 * A peer names any server ID it likes; without a check, a forged token or a rename notice
 * could make this server connect to its own loopback services or to the operator's
 * private network (SSRF). Outbound connections made because of a server ID are therefore
 * refused when the address actually connected to is not a public unicast address:
 * loopback, private (RFC 1918, RFC 6598 shared space, IPv6 ULA), link-local, unspecified,
 * multicast, broadcast, documentation, benchmarking or otherwise reserved ranges, and
 * IPv4 embedded in IPv6 (mapped, NAT64) by the IPv4 rules. The operator allows them with
 * `allow_private_peers` (loopback setups, tests, a private federation).
 *
 * Untrusted input: the address (from DNS answers controlled by whoever names a host).
 */
#ifndef PB_ADDRCLASS_H
#define PB_ADDRCLASS_H

#include <stdbool.h>
#include <sys/socket.h>

/* NULL when sa is a public unicast address we may connect to; otherwise a static string
 * naming the class ("loopback", "private", ...). Unknown families are "not IP". */
const char *pb_addr_refusal(const struct sockaddr *sa);

#endif
