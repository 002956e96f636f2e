/* test_config_acme.c: tls.acme and sites[].tls (src/config/cfg_acme.c): defaults, the values
 * kept, and each refusal with its position. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "config/config.h"

static char errbuf[MOAT_CONFIG_ERRLEN];

#define HEAD                                                                                       \
    "listen: [\"127.0.0.1:80\", { addr: \"127.0.0.1:443\", tls: true }]\n" /* 1 */                 \
    "pools: { p: { origins: [\"127.0.0.1:9\"] } }\n"                       /* 2 */                 \
    "tls:\n"                                                               /* 3 */                 \
    "  acme:\n"                                                            /* 4 */                 \
    "    directory: https://ca.test/dir\n"                                 /* 5 */                 \
    "    storage: /var/lib/moat/acme\n"                                    /* 6 */

#define SITE                                                                                       \
    "sites:\n"                                                                                     \
    "  - hosts: [shop.test, www.shop.test]\n"                                                      \
    "    pool: p\n"                                                                                \
    "    tls: acme\n"

static struct moat_config *load(const char *yaml)
{
    return moat_config_load_string(yaml, strlen(yaml), "moat.yaml", errbuf, sizeof errbuf);
}

static void test_defaults(void **state)
{
    struct moat_config *c = load(HEAD SITE);
    if (!c)
        fail_msg("%s", errbuf);
    const struct moat_cfg_acme *a = &c->tls.acme;
    assert_true(a->enabled);
    assert_string_equal(a->directory, "https://ca.test/dir");
    assert_string_equal(a->storage, "/var/lib/moat/acme");
    assert_null(a->email);
    assert_null(a->ca_file);
    assert_int_equal(a->challenges, MOAT_ACME_HTTP01 | MOAT_ACME_TLSALPN01);
    assert_false(a->tls_alpn_first);
    assert_int_equal(a->renew_before_ms, 30ull * 86400 * 1000);
    assert_int_equal(a->check_interval_ms, 3600ull * 1000);
    assert_int_equal(a->retry_min_ms, 60ull * 1000);
    assert_int_equal(a->retry_max_ms, 86400ull * 1000);
    assert_int_equal(a->timeout_ms, 30ull * 1000);
    assert_true(c->sites[0].tls_acme);
    moat_config_release(&c);
    /* without tls.acme: off, and a TLS listener still needs certificates */
    c = load("listen: [\"127.0.0.1:80\"]\npools: { p: { origins: [\"127.0.0.1:9\"] } }\n"
             "sites: [{ hosts: [a.test], pool: p }]\n");
    assert_non_null(c);
    assert_false(c->tls.acme.enabled);
    assert_false(c->sites[0].tls_acme);
    moat_config_release(&c);
}

static void test_values(void **state)
{
    struct moat_config *c = load(HEAD "    email: ops@shop.test\n"
                                      "    challenges: [tls-alpn-01, http-01]\n"
                                      "    renew_before: 10d\n    retry_min: 5s\n" SITE);
    if (!c)
        fail_msg("%s", errbuf);
    assert_string_equal(c->tls.acme.email, "ops@shop.test");
    assert_true(c->tls.acme.tls_alpn_first);
    assert_int_equal(c->tls.acme.renew_before_ms, 10ull * 86400 * 1000);
    assert_int_equal(c->tls.acme.retry_min_ms, 5000);
    moat_config_release(&c);
    c = load(HEAD "    challenges: tls-alpn-01\n" SITE);
    assert_non_null(c);
    assert_int_equal(c->tls.acme.challenges, MOAT_ACME_TLSALPN01);
    moat_config_release(&c);
}

static void expect_error(const char *yaml, const char *want)
{
    struct moat_config *c = load(yaml);
    if (c) {
        moat_config_release(&c);
        fail_msg("loaded, expected: %s", want);
    }
    if (!strstr(errbuf, want))
        fail_msg("got:  %s\nwant: %s", errbuf, want);
}

static void test_errors(void **state)
{
    /* HEAD takes lines 1-6; SITE lines +1..+4 after what follows HEAD */
    expect_error(HEAD "sites:\n  - hosts: [shop.test, \"*.shop.test\"]\n    pool: p\n"
                      "    tls: acme\n",
                 "moat.yaml:10:10: sites[0].tls: host \"*.shop.test\" is a wildcard: ACME "
                 "certificates for wildcards need the dns-01 challenge");
    expect_error(HEAD "sites:\n  - hosts: \"*\"\n    pool: p\n    tls: acme\n",
                 "host \"*\" is a wildcard");
    expect_error(HEAD "    challenges: [dns-01]\n" SITE,
                 "moat.yaml:7:18: tls.acme.challenges[0]: dns-01 is not supported yet");
    expect_error(HEAD "    challenges: [http-01, http-01]\n" SITE,
                 "moat.yaml:7:27: tls.acme.challenges[1]: \"http-01\" is listed twice");
    expect_error(HEAD "    challenges: [tls-sni-01]\n" SITE,
                 "\"tls-sni-01\" is not one of: http-01, tls-alpn-01");
    expect_error(HEAD "    email: ops\n" SITE,
                 "moat.yaml:7:12: tls.acme.email: \"ops\" is not an e-mail address");
    expect_error(HEAD "    retry_min: 1h\n    retry_max: 1m\n" SITE,
                 "tls.acme: retry_max is shorter than retry_min");
    expect_error(HEAD "    renew_before: 0s\n" SITE, "tls.acme.renew_before");
    expect_error("listen: [\"127.0.0.1:80\"]\npools: { p: { origins: [\"127.0.0.1:9\"] } }\n"
                 "tls:\n  acme:\n    directory: ftp://ca.test/\n    storage: /x\n" SITE,
                 "moat.yaml:5:16: tls.acme.directory: \"ftp://ca.test/\" is not an https:// URL");
    expect_error("listen: [\"127.0.0.1:80\"]\npools: { p: { origins: [\"127.0.0.1:9\"] } }\n"
                 "tls:\n  acme:\n    directory: https://ca.test/\n" SITE,
                 "tls.acme.storage: required key is missing");
    expect_error("listen: [\"127.0.0.1:80\"]\npools: { p: { origins: [\"127.0.0.1:9\"] } }\n" SITE,
                 "moat.yaml:6:10: sites[0].tls: tls: acme needs tls.acme");
    expect_error(HEAD "sites:\n  - hosts: [a.test]\n    pool: p\n    tls: manual\n",
                 "sites[0].tls: \"manual\" is not one of: acme");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
