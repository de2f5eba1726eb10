/*
 * harness_test - the test harness's own promises that the integration tests rely on:
 * pbt_free_port() never hands out the same port twice in one process (tests create several
 * daemons before starting any; CI once saw two of them given one admin port), never a port
 * of the kernel's ephemeral range (an outgoing connection of any process could take it
 * between the pick and postboxd's bind), and only ports free at the time of the pick.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

static bool bindable(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0) close(fd);
    return ok;
}

static void test_free_port(void)
{
    unsigned lo = 32768, hi = 60999;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        CHECK(fscanf(f, "%u %u", &lo, &hi) == 2);
        fclose(f);
    }
    enum { N = 3000 };
    static bool seen[65536];
    int dup = 0, ephemeral = 0, busy = 0;
    /* A listener holds one of the ports meanwhile: it must not be handed out again. */
    uint16_t held = pbt_free_port();
    int hfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_port = htons(held), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(hfd >= 0 && bind(hfd, (struct sockaddr *)&a, sizeof a) == 0 && listen(hfd, 1) == 0);
    seen[held] = true;
    for (int i = 0; i < N; i++) {
        uint16_t p = pbt_free_port();
        if (seen[p]) dup++;
        seen[p] = true;
        if (p >= lo && p <= hi) ephemeral++;
        if (!bindable(p)) busy++;
    }
    close(hfd);
    CHECKF(dup == 0, "%d of %d ports handed out twice", dup, N);
    CHECKF(ephemeral == 0, "%d of %d ports in the ephemeral range %u-%u", ephemeral, N, lo, hi);
    CHECKF(busy == 0, "%d of %d ports not free", busy, N);
}

int main(void)
{
    test_free_port();
    return pbt_finish();
}
