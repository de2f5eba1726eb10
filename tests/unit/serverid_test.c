/*
 * serverid_test - server ID validation and normalisation (PROTOCOL.md section 2): a table
 * of accepted IDs with their normalised form and refused IDs, length limits built at run
 * time, the counted-input entry point, is_normal and split.
 */
#include "harness.h"

#include <stdlib.h>

#include "util/mem.h"
#include "util/serverid.h"

struct vec {
    const char *in;
    const char *want; /* normalised output, or NULL when refused */
};

static const struct vec table[] = {
    /* the vectors' IDs */
    {"alpha.example.org:2289", "alpha.example.org:2289"},
    {"beta.example.net:443", "beta.example.net:443"},
    /* accepted, normalised */
    {"[::1]:2289", "[::1]:2289"},
    {"LOCALHOST:1", "localhost:1"},
    {"Alpha.Example.ORG:65535", "alpha.example.org:65535"},
    {"a:1", "a:1"},
    {"a-b.c-d:80", "a-b.c-d:80"},
    {"xn--bcher-kva.example:443", "xn--bcher-kva.example:443"},
    {"1a.example:80", "1a.example:80"},
    {"example.123a:80", "example.123a:80"},
    {"0.0.0.0:1", "0.0.0.0:1"},
    {"1.2.3.4:80", "1.2.3.4:80"},
    {"127.0.0.1:2289", "127.0.0.1:2289"},
    {"255.255.255.255:65535", "255.255.255.255:65535"},
    {"[2001:DB8::ABCD]:443", "[2001:db8::abcd]:443"},
    {"[2001:0DB8:0000:0000:0000:0000:0000:0001]:1", "[2001:db8::1]:1"}, /* RFC 5952 form */
    {"[0::1]:2289", "[::1]:2289"},
    {"[0:0:0:0:0:0:0:1]:2289", "[::1]:2289"},
    {"[2001:db8:0:0:1:0:0:1]:443", "[2001:db8::1:0:0:1]:443"},    /* the first longest run */
    {"[2001:DB8:0:1:1:1:1:1]:443", "[2001:db8:0:1:1:1:1:1]:443"}, /* one group: kept */
    {"[::FFFF:0102:0304]:80", "[::ffff:1.2.3.4]:80"},
    {"[::ffff:1.2.3.4]:80", "[::ffff:1.2.3.4]:80"},
    {"[::]:9", "[::]:9"},
    /* port */
    {"a:0", NULL},
    {"a:65536", NULL},
    {"a:99999", NULL},
    {"a:100000", NULL},
    {"a:080", NULL},
    {"a:+80", NULL},
    {"a:-80", NULL},
    {"a: 80", NULL},
    {"a:80 ", NULL},
    {"a:8a", NULL},
    {"a", NULL},
    {"a:", NULL},
    {":80", NULL},
    {"a:80:81", NULL},
    {"", NULL},
    /* DNS names */
    {"-a.b:1", NULL},
    {"a-.b:1", NULL},
    {"a.-b:1", NULL},
    {"a..b:1", NULL},
    {"a.b.:1", NULL},
    {".a.b:1", NULL},
    {"a_b:1", NULL},
    {"a b:1", NULL},
    {" a:1", NULL},
    {"a\t:1", NULL},
    {"a/b:1", NULL},
    {"a@b:1", NULL},
    {"\xc3\xa9.example:1", NULL}, /* non-ASCII (UTF-8 e-acute) */
    /* numeric names must be a valid dotted quad */
    {"1.2.3.256:80", NULL},
    {"1.2.3:80", NULL},
    {"1.2.3.4.5:80", NULL},
    {"123:80", NULL},
    {"example.123:80", NULL},
    {"010.0.0.1:80", NULL},
    {"1.2.3.04:80", NULL},
    {"0x7f.1:80", NULL},
    {"1.2.3.4.:80", NULL},
    /* IPv6 */
    {"[::1]", NULL},
    {"::1:80", NULL},
    {"[1.2.3.4]:80", NULL},
    {"[::1]80", NULL},
    {"[::1]:", NULL},
    {"[::1:80", NULL},
    {"[]:80", NULL},
    {"[::1%eth0]:80", NULL},
    {"[fe80::1%25eth0]:80", NULL},
    {"[::g]:80", NULL},
    {"[1:2:3:4:5:6:7:8:9]:80", NULL},
    {"[::1]]:80", NULL},
};

static void check_one(const char *in, const char *want, int line)
{
    char out[PB_SERVER_ID_MAX];
    strcpy(out, "untouched");
    pb_err e = pb_serverid_normalize(in, out);
    if (want) {
        CHECKF(e == PB_OK, "row %d \"%s\": got %s", line, in, pb_strerror(e));
        CHECKF(strcmp(out, want) == 0, "row %d \"%s\": got \"%s\", want \"%s\"", line, in, out,
               want);
        CHECKF(pb_serverid_is_normal(want), "row %d: \"%s\" not normal", line, want);
        CHECKF(strcmp(in, want) == 0 || !pb_serverid_is_normal(in), "row %d: \"%s\" normal", line,
               in);
    } else {
        CHECKF(e == PB_ERR_INVAL, "row %d \"%s\": got %s, want refusal", line, in, pb_strerror(e));
        CHECKF(strcmp(out, "untouched") == 0, "row %d \"%s\": output written on refusal", line, in);
        CHECKF(!pb_serverid_is_normal(in), "row %d: \"%s\" said normal", line, in);
    }
}

static char *repeat(char c, size_t n)
{
    char *s = pb_xmalloc(n + 1);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

static void test_table(void)
{
    size_t n = sizeof table / sizeof table[0];
    CHECK(n >= 40);
    for (size_t i = 0; i < n; i++)
        check_one(table[i].in, table[i].want, (int)i);
}

static void test_lengths(void)
{
    char *l63 = repeat('a', 63), *l64 = repeat('a', 64), *l61 = repeat('b', 61),
         *l62 = repeat('b', 62);
    char *id;

    id = pb_xasprintf("%s.example:1", l63);
    check_one(id, id, __LINE__);
    free(id);
    id = pb_xasprintf("%s.example:1", l64);
    check_one(id, NULL, __LINE__);
    free(id);

    /* 63 + 1 + 63 + 1 + 63 + 1 + 61 = 253 characters */
    char *name253 = pb_xasprintf("%s.%s.%s.%s", l63, l63, l63, l61);
    CHECK_INT(strlen(name253), 253);
    id = pb_xasprintf("%s:65535", name253);
    CHECK_INT(strlen(id), PB_SERVER_ID_MAX - 1);
    check_one(id, id, __LINE__);
    free(id);
    char *upper = pb_xasprintf("%s:1", name253);
    for (char *p = upper; *p; p++)
        if (*p == 'a') *p = 'A';
    id = pb_xasprintf("%s:1", name253);
    check_one(upper, id, __LINE__);
    free(upper);
    free(id);

    char *name254 = pb_xasprintf("%s.%s.%s.%s", l63, l63, l63, l62);
    id = pb_xasprintf("%s:1", name254);
    check_one(id, NULL, __LINE__);
    free(id);

    /* far over the limit: refused, not read past PB_SERVER_ID_MAX */
    char *huge = repeat('a', 100000);
    huge[50000] = ':';
    check_one(huge, NULL, __LINE__);
    free(huge);

    free(name253);
    free(name254);
    free(l63);
    free(l64);
    free(l61);
    free(l62);
}

static void test_counted(void)
{
    char out[PB_SERVER_ID_MAX];
    /* counted input: only n bytes are read */
    CHECK_OK(pb_serverid_normalize_n("Host.Example:80xyz", 15, out));
    CHECK_STR(out, "host.example:80");
    /* an embedded NUL inside the counted range is refused */
    CHECK_ERR(pb_serverid_normalize_n("a\0b:80", 6, out), PB_ERR_INVAL);
    CHECK_ERR(pb_serverid_normalize_n("a:80\0", 5, out), PB_ERR_INVAL);
    CHECK_ERR(pb_serverid_normalize_n("a:80", 0, out), PB_ERR_INVAL);
    CHECK_ERR(pb_serverid_normalize_n(NULL, 4, out), PB_ERR_INVAL);
    CHECK_ERR(pb_serverid_normalize(NULL, out), PB_ERR_INVAL);
    CHECK(!pb_serverid_is_normal(NULL));
    char *big = repeat('a', PB_SERVER_ID_MAX);
    CHECK_ERR(pb_serverid_normalize_n(big, PB_SERVER_ID_MAX, out), PB_ERR_INVAL);
    free(big);
}

static void test_split(void)
{
    char host[PB_SERVER_ID_MAX];
    uint16_t port = 0;

    CHECK_OK(pb_serverid_split("alpha.example.org:2289", host, &port));
    CHECK_STR(host, "alpha.example.org");
    CHECK_INT(port, 2289);

    CHECK_OK(pb_serverid_split("[::1]:443", host, &port));
    CHECK_STR(host, "::1");
    CHECK_INT(port, 443);

    CHECK_OK(pb_serverid_split("[2001:DB8::1]:65535", host, &port));
    CHECK_STR(host, "2001:db8::1");
    CHECK_INT(port, 65535);

    CHECK_OK(pb_serverid_split("EXAMPLE.com:1", host, &port));
    CHECK_STR(host, "example.com");
    CHECK_INT(port, 1);

    CHECK_OK(pb_serverid_split("10.0.0.1:8080", host, &port));
    CHECK_STR(host, "10.0.0.1");
    CHECK_INT(port, 8080);

    strcpy(host, "untouched");
    port = 7;
    CHECK_ERR(pb_serverid_split("a:0", host, &port), PB_ERR_INVAL);
    CHECK_ERR(pb_serverid_split("::1:80", host, &port), PB_ERR_INVAL);
    CHECK_ERR(pb_serverid_split("[::1]", host, &port), PB_ERR_INVAL);
    CHECK_STR(host, "untouched");
    CHECK_INT(port, 7);
}

int main(void)
{
    test_table();
    test_lengths();
    test_counted();
    test_split();
    return pbt_finish();
}
