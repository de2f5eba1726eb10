/*
 * hash_test - the tables' hash: the same bytes hash alike within the process, a string
 * and its bytes alike, NULL as "", and different keys spread (a thousand server IDs that
 * differ in one digit fill 64 buckets evenly enough: none more than three times the mean).
 */
#include "harness.h"

#include <string.h>

#include "util/hash.h"

int main(void)
{
    CHECK(pb_hash_str("example.org:443") == pb_hash_str("example.org:443"));
    CHECK(pb_hash_str("example.org:443") == pb_hash("example.org:443", 15));
    CHECK(pb_hash_str(NULL) == pb_hash_str(""));
    CHECK(pb_hash_str("a") != pb_hash_str("b"));
    unsigned char z16[16] = {0}, o16[16] = {0};
    o16[15] = 1;
    CHECK(pb_hash(z16, 16) != pb_hash(o16, 16));
    unsigned buckets[64] = {0}, most = 0;
    for (int i = 0; i < 1000; i++) {
        char id[32];
        snprintf(id, sizeof id, "peer%d.example:443", i);
        unsigned *b = &buckets[pb_hash_str(id) % 64];
        if (++*b > most) most = *b;
    }
    CHECKF(most <= 3 * 1000 / 64, "the fullest of 64 buckets holds %u of 1000", most);
    return pbt_finish();
}
