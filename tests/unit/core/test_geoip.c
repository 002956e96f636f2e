/* test_geoip.c: unit tests for CIDR parsing and matching and MaxMind country lookups
 * (src/core/geoip.c).
 *
 * The lookups read tests/data/geoip-test.mmdb, written by tests/e2e/mmdb.py from its
 * TEST_NETWORKS (regenerate with `python3 tests/e2e/mmdb.py tests/data/geoip-test.mmdb`). The
 * path is relative to the repository root, where `make unit` runs; MOAT_GEOIP_TEST_DB
 * overrides it. A missing database fails the test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <cmocka.h>

#include "core/geoip.h"

static struct sockaddr_storage addr(const char *s)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, s, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
    } else {
        assert_int_equal(inet_pton(AF_INET6, s, &s6->sin6_addr), 1);
        s6->sin6_family = AF_INET6;
    }
    return ss;
}

static int match(const char *cidr, const char *ip)
{
    struct moat_cidr c;
    assert_int_equal(moat_cidr_parse(cidr, &c), 0);
    struct sockaddr_storage ss = addr(ip);
    return moat_cidr_match(&c, (struct sockaddr *)&ss);
}

static void test_cidr_parse_ok(void **state)
{
    (void)state;
    struct moat_cidr c;
    assert_int_equal(moat_cidr_parse("10.0.0.0/8", &c), 0);
    assert_int_equal(c.prefix, 96 + 8);
    assert_int_equal(c.addr[10], 0xff); /* stored v4-mapped */
    assert_int_equal(c.addr[12], 10);

    assert_int_equal(moat_cidr_parse("192.0.2.7", &c), 0);
    assert_int_equal(c.prefix, 128);
    assert_int_equal(c.addr[15], 7);

    assert_int_equal(moat_cidr_parse("2001:db8::/32", &c), 0);
    assert_int_equal(c.prefix, 32);
    assert_int_equal(c.addr[0], 0x20);
    assert_int_equal(moat_cidr_parse("::1", &c), 0);
    assert_int_equal(c.prefix, 128);
    assert_int_equal(moat_cidr_parse("0.0.0.0/0", &c), 0);
    assert_int_equal(c.prefix, 96);
    assert_int_equal(moat_cidr_parse("10.0.0.252/30", &c), 0);
    assert_int_equal(c.addr[15], 252);

    char err[128] = "";
    assert_int_equal(moat_cidr_parse_err("10.0.0.1/8", &c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "bits set after the /8 prefix"));
    assert_int_equal(moat_cidr_parse_err("10.0.0.0/33", &c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "0..32"));
    assert_int_equal(moat_cidr_parse_err("ten/8", &c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "not a CIDR block"));
}

static void test_cidr_parse_bad(void **state)
{
    (void)state;
    static const char *bad[] = {
        "", "/8", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/+8", "10.0.0.0/8x",
        "10.0.0.0/0008", "10.0.0/8", "10.0.0.256/8", " 10.0.0.0/8", "10.0.0.0 /8",
        "10.0.0.0/8 ", "::/129", "2001:db8:::/32", "fe80::1%eth0", "example.com",
        "10.0.0.0/8/8", "1.2.3.4.5", "10.1.2.3/8", "10.0.0.255/30", "2001:db8::1/32",
    };
    struct moat_cidr c;
    memset(&c, 0xa5, sizeof(c));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (moat_cidr_parse(bad[i], &c) != -1)
            fail_msg("accepted '%s'", bad[i]);
    }
    assert_int_equal(c.prefix, 0xa5); /* untouched */
    assert_int_equal(moat_cidr_parse(NULL, &c), -1);
}

static void test_cidr_match(void **state)
{
    (void)state;
    assert_true(match("10.0.0.0/8", "10.255.1.2"));
    assert_false(match("10.0.0.0/8", "11.0.0.1"));
    assert_true(match("192.168.1.0/25", "192.168.1.127"));
    assert_false(match("192.168.1.0/25", "192.168.1.128"));
    assert_true(match("127.0.0.2", "127.0.0.2"));
    assert_false(match("127.0.0.2", "127.0.0.3"));
    assert_true(match("0.0.0.0/0", "203.0.113.9"));
    /* IPv4-mapped IPv6 clients match IPv4 networks */
    assert_true(match("203.0.113.0/24", "::ffff:203.0.113.9"));
    assert_false(match("203.0.113.0/24", "::ffff:203.0.114.9"));
    /* and a v6 network over the mapped range matches plain IPv4 */
    assert_true(match("::ffff:0:0/96", "198.51.100.1"));
    /* IPv6 */
    assert_true(match("2001:db8::/32", "2001:db8:ffff::1"));
    assert_false(match("2001:db8::/32", "2001:db9::1"));
    assert_true(match("2001:db8:0:2::/63", "2001:db8:0:3:ffff::1"));
    assert_false(match("2001:db8:0:2::/63", "2001:db8:0:1::1"));
    /* families do not mix otherwise */
    assert_false(match("0.0.0.0/0", "2001:db8::1"));
    assert_false(match("2001:db8::/32", "10.0.0.1"));
    assert_true(match("::/0", "2001:db8::1"));
}

static struct moat_geoip *open_test_db(void)
{
    const char *path = getenv("MOAT_GEOIP_TEST_DB");
    if (!path)
        path = "tests/data/geoip-test.mmdb";
    char err[256] = "";
    struct moat_geoip *g = moat_geoip_open(path, err, sizeof(err));
    if (!g)
        fail_msg("cannot open the test database: %s", err);
    return g;
}

static void expect_cc(struct moat_geoip *g, const char *ip, const char *want)
{
    struct sockaddr_storage ss = addr(ip);
    char cc[3] = "--";
    int rc = moat_geoip_country(g, (struct sockaddr *)&ss, cc);
    if (!want) {
        if (rc != -1)
            fail_msg("%s: expected unknown, got %s", ip, cc);
        assert_string_equal(cc, "--");
        return;
    }
    if (rc != 0)
        fail_msg("%s: expected %s, got unknown", ip, want);
    assert_string_equal(cc, want);
}

static void test_geoip_lookup(void **state)
{
    (void)state;
    struct moat_geoip *g = open_test_db();
    expect_cc(g, "127.0.0.1", "DE");
    expect_cc(g, "127.0.0.2", "FR"); /* the /32 inside 127.0.0.0/16 */
    expect_cc(g, "127.0.0.3", "DE");
    expect_cc(g, "127.1.200.4", "JP");
    expect_cc(g, "127.2.0.1", "SG");
    expect_cc(g, "10.20.30.40", "US");
    expect_cc(g, "8.8.8.8", NULL);
    expect_cc(g, "2001:db8::1", "SG");
    expect_cc(g, "2001:db8:1::1", "FR");
    expect_cc(g, "2001:db9::1", NULL);
    expect_cc(g, "::ffff:127.1.0.1", "JP"); /* looked up as IPv4 */
    moat_geoip_close(g);
}

static void test_geoip_open_errors(void **state)
{
    (void)state;
    char err[256] = "";
    assert_null(moat_geoip_open("/nonexistent/geo.mmdb", err, sizeof(err)));
    assert_non_null(strstr(err, "/nonexistent/geo.mmdb"));
    /* a file that is not a database */
    char tmp[] = "/tmp/moat-geoip-XXXXXX";
    int fd = mkstemp(tmp);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "not a database\n", 15), 15);
    close(fd);
    err[0] = '\0';
    assert_null(moat_geoip_open(tmp, err, sizeof(err)));
    assert_true(err[0] != '\0');
    unlink(tmp);
    moat_geoip_close(NULL);
    char cc[3];
    struct sockaddr_storage ss = addr("127.0.0.1");
    assert_int_equal(moat_geoip_country(NULL, (struct sockaddr *)&ss, cc), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cidr_parse_ok),
        cmocka_unit_test(test_cidr_parse_bad),
        cmocka_unit_test(test_cidr_match),
        cmocka_unit_test(test_geoip_lookup),
        cmocka_unit_test(test_geoip_open_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
