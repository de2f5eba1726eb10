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
 * It also says which client addresses count as one host for the per-address connection
 * limit: an IPv4 address alone, an IPv6 address by its /64 (what one host or site usually
 * gets, so an attacker cannot take a new address per connection), IPv4-mapped IPv6 as IPv4.
 *
 * Untrusted input: the address (from DNS answers controlled by whoever names a host, or a
 * connecting client).
 */
#ifndef PB_ADDRCLASS_H
#define PB_ADDRCLASS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* NULL when sa is a public unicast address we may connect to; otherwise a static string
 * naming the class ("loopback", "private", ...). Unknown families are "not IP". */
const char *pb_addr_refusal(const struct sockaddr *sa);

/* The per-address limit's key of a client address into key: IPv4 as ::ffff:a.b.c.d, IPv6
 * as its /64 with the rest zero. False (key zeroed) for other families, which are not
 * limited. */
bool pb_addr_client_key(const struct sockaddr *sa, uint8_t key[16]);
/* The key as text into out (cap bytes, NUL-terminated): "192.0.2.1" or "2001:db8::/64". */
void pb_addr_client_text(const uint8_t key[16], char *out, size_t cap);

#endif
