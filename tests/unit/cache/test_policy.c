/* test_policy.c: unit tests for the RFC 9111 / 5861 / 9213 cache policy functions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "cache/policy.h"

#define H(n, v)                                                                                    \
    {                                                                                              \
        MOAT_STR(n), MOAT_STR(v)                                                                   \
    }
#define S(lit) MOAT_STR(lit)

/* Sun, 06 Nov 1994 08:49:37 GMT, the RFC 9110 example date. */
#define T1994 784111777LL

static struct moat_cache_cc cc_of(const char *v)
{
    struct moat_cache_cc cc;
    moat_cache_cc_init(&cc);
    moat_cache_cc_add(&cc, moat_str_make(v, strlen(v)));
    return cc;
}

static void test_cc_directives(void **state)
{
    struct moat_cache_cc cc = cc_of("max-age=60, s-maxage=120, no-store, no-cache, private, public,"
                                    " must-revalidate, proxy-revalidate, immutable, no-transform,"
                                    " stale-while-revalidate=30, stale-if-error=600");
    assert_int_equal(cc.max_age, 60);
    assert_int_equal(cc.s_maxage, 120);
    assert_int_equal(cc.swr, 30);
    assert_int_equal(cc.sie, 600);
    uint32_t want = MOAT_CC_NO_STORE | MOAT_CC_NO_CACHE | MOAT_CC_PRIVATE | MOAT_CC_PUBLIC |
                    MOAT_CC_MUST_REVALIDATE | MOAT_CC_PROXY_REVALIDATE | MOAT_CC_IMMUTABLE |
                    MOAT_CC_NO_TRANSFORM;
    assert_int_equal(cc.flags, want);

    cc = cc_of("no-cache, no-store, max-age=5, max-stale=10, min-fresh=3, only-if-cached");
    assert_int_equal(cc.max_stale, 10);
    assert_int_equal(cc.min_fresh, 3);
    assert_true(cc.flags & MOAT_CC_ONLY_IF_CACHED);

    cc = cc_of("max-stale");
    assert_int_equal(cc.max_stale, MOAT_CC_DELTA_MAX);
    cc = cc_of("");
    assert_int_equal(cc.flags, 0);
    assert_int_equal(cc.max_age, -1);
}

static void test_cc_junk(void **state)
{
    /* case-insensitive names, spaces, empty elements, unknown directives */
    struct moat_cache_cc cc = cc_of(" ,MAX-AGE = 7 ,, Community=\"UCI\", foo, Public ,");
    assert_int_equal(cc.max_age, 7);
    assert_true(cc.flags & MOAT_CC_PUBLIC);
    assert_false(cc.flags & MOAT_CC_INVALID);
    /* quoted value accepted */
    cc = cc_of("max-age=\"42\"");
    assert_int_equal(cc.max_age, 42);
    /* field-list forms: treated as the plain directive */
    cc = cc_of("no-cache=\"Set-Cookie, X-Foo\", private=\"Authorization\"");
    assert_true(cc.flags & MOAT_CC_NO_CACHE);
    assert_true(cc.flags & MOAT_CC_NO_CACHE_FIELDS);
    assert_true(cc.flags & MOAT_CC_PRIVATE);
    assert_int_equal(cc.max_age, -1); /* the comma inside quotes did not split */
    /* invalid max-age -> stale (0) */
    cc = cc_of("max-age=abc");
    assert_int_equal(cc.max_age, 0);
    assert_true(cc.flags & MOAT_CC_INVALID);
    cc = cc_of("max-age");
    assert_int_equal(cc.max_age, 0);
    cc = cc_of("max-age=-1");
    assert_int_equal(cc.max_age, 0);
    /* duplicates with different values -> stale; same value is fine */
    cc = cc_of("max-age=60, max-age=3600");
    assert_int_equal(cc.max_age, 0);
    assert_true(cc.flags & MOAT_CC_DUPLICATE);
    cc = cc_of("max-age=60, max-age=60");
    assert_int_equal(cc.max_age, 60);
    assert_false(cc.flags & MOAT_CC_DUPLICATE);
    /* across two field lines too */
    moat_cache_cc_init(&cc);
    moat_cache_cc_add(&cc, S("max-age=10"));
    moat_cache_cc_add(&cc, S("max-age=20"));
    assert_int_equal(cc.max_age, 0);
    /* grace duplicates keep the smaller, invalid ones are dropped */
    cc = cc_of("stale-while-revalidate=60, stale-while-revalidate=5, stale-if-error=x");
    assert_int_equal(cc.swr, 5);
    assert_int_equal(cc.sie, -1);
    /* overflow clamps to 2^31 (RFC 9111 1.2.2) */
    cc = cc_of("max-age=99999999999999999999999");
    assert_int_equal(cc.max_age, MOAT_CC_DELTA_MAX);
    /* syntax errors are flagged */
    cc = cc_of("max-age=\"5");
    assert_true(cc.flags & MOAT_CC_PARSE_ERROR);
    cc = cc_of("=5, public");
    assert_true(cc.flags & MOAT_CC_PARSE_ERROR);
    assert_true(cc.flags & MOAT_CC_PUBLIC);
}

static void test_cc_targeted(void **state)
{
    struct moat_cache_cc cc;
    struct moat_hdr h1[] = {H("Cache-Control", "max-age=10"), H("CDN-Cache-Control", "max-age=100"),
                            H("Moat-Cache-Control", "max-age=1000")};
    assert_int_equal(moat_cache_cc_response(&cc, h1, 3, S("Moat-Cache-Control")), MOAT_CC_SRC_MOAT);
    assert_int_equal(cc.max_age, 1000);
    assert_true(cc.flags & MOAT_CC_TARGETED);
    assert_int_equal(moat_cache_cc_response(&cc, h1, 3, MOAT_STR_NULL), MOAT_CC_SRC_CDN);
    assert_int_equal(cc.max_age, 100);
    assert_int_equal(moat_cache_cc_response(&cc, h1, 1, S("Moat-Cache-Control")),
                     MOAT_CC_SRC_CACHE_CONTROL);
    assert_int_equal(cc.max_age, 10);
    assert_false(cc.flags & MOAT_CC_TARGETED);
    /* a targeted field overrides Cache-Control entirely: private there does not matter */
    struct moat_hdr h2[] = {H("Cache-Control", "private, no-store"),
                            H("cdn-cache-control", "max-age=60")};
    assert_int_equal(moat_cache_cc_response(&cc, h2, 2, S("Moat-Cache-Control")), MOAT_CC_SRC_CDN);
    assert_false(cc.flags & (MOAT_CC_PRIVATE | MOAT_CC_NO_STORE));
    /* invalid or empty targeted fields are ignored */
    struct moat_hdr h3[] = {H("Moat-Cache-Control", "max-age=\"1"), H("CDN-Cache-Control", ""),
                            H("Cache-Control", "max-age=5")};
    assert_int_equal(moat_cache_cc_response(&cc, h3, 3, S("Moat-Cache-Control")),
                     MOAT_CC_SRC_CACHE_CONTROL);
    assert_int_equal(cc.max_age, 5);
    /* a targeted field hides Expires */
    struct moat_hdr h4[] = {H("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                            H("Expires", "Sun, 06 Nov 1994 09:49:37 GMT"),
                            H("CDN-Cache-Control", "public")};
    struct moat_cache_policy_cfg cfg;
    moat_cache_policy_cfg_default(&cfg);
    moat_cache_cc_response(&cc, h4, 3, MOAT_STR_NULL);
    assert_int_equal(moat_cache_freshness_lifetime(&cfg, 302, &cc, h4, 3, T1994, NULL), 0);
    moat_cache_cc_response(&cc, h4, 2, MOAT_STR_NULL);
    assert_int_equal(moat_cache_freshness_lifetime(&cfg, 302, &cc, h4, 2, T1994, NULL), 3600);
    /* no Cache-Control at all */
    assert_int_equal(moat_cache_cc_response(&cc, h4, 1, MOAT_STR_NULL), MOAT_CC_SRC_NONE);
}

static void test_dates(void **state)
{
    int64_t t;
    assert_true(moat_http_date_parse(S("Sun, 06 Nov 1994 08:49:37 GMT"), &t));
    assert_int_equal(t, T1994);
    assert_true(moat_http_date_parse(S("Sunday, 06-Nov-94 08:49:37 GMT"), &t));
    assert_int_equal(t, T1994);
    assert_true(moat_http_date_parse(S("Sun Nov  6 08:49:37 1994"), &t));
    assert_int_equal(t, T1994);
    assert_true(moat_http_date_parse(S("  Thu, 01 Jan 1970 00:00:00 GMT "), &t));
    assert_int_equal(t, 0);
    assert_true(moat_http_date_parse(S("Tue, 29 Feb 2000 23:59:59 GMT"), &t));
    assert_int_equal(t, 951868799);
    assert_true(moat_http_date_parse(S("Sat Dec 31 23:59:60 2016"), &t)); /* leap second */
    assert_int_equal(t, 1483228799);
    /* RFC 850 two-digit year: 94 is in the past century */
    assert_true(moat_http_date_parse(S("Wednesday, 09-Nov-99 23:12:40 GMT"), &t));
    assert_int_equal(t, 942189160);
    /* rejects */
    const char *bad[] = {"0",
                         "",
                         "Sun, 06 Nov 1994 08:49:37 UTC",
                         "Sun, 6 Nov 1994 08:49:37 GMT",
                         "Sun, 31 Feb 1994 08:49:37 GMT",
                         "Sun, 06 Foo 1994 08:49:37 GMT",
                         "Sun, 06 Nov 1994 24:49:37 GMT",
                         "Sun, 06 Nov 1994 08:49:37 GMTx",
                         "Xyz, 06 Nov 1994 08:49:37 GMT",
                         "Mon, 29 Feb 1900 00:00:00 GMT",
                         "Sun Nov 6 08:49:37 1994",
                         "1994-11-06T08:49:37Z"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(bad); i++)
        assert_false(moat_http_date_parse(moat_str_make(bad[i], strlen(bad[i])), &t));
    char buf[30];
    assert_int_equal(moat_http_date_format(T1994, buf), 29);
    assert_string_equal(buf, "Sun, 06 Nov 1994 08:49:37 GMT");
    moat_http_date_format(0, buf);
    assert_string_equal(buf, "Thu, 01 Jan 1970 00:00:00 GMT");
    moat_http_date_format(951868799, buf);
    assert_string_equal(buf, "Tue, 29 Feb 2000 23:59:59 GMT");
    /* round trip across a range of days */
    for (int64_t x = 0; x < 4102444800LL; x += 86400LL * 37 + 3671) {
        moat_http_date_format(x, buf);
        assert_true(moat_http_date_parse(moat_str_make(buf, 29), &t));
        assert_int_equal(t, x);
    }
}

static enum moat_cache_nostore storable(int status, const char *resp_cc, const struct moat_hdr *rq,
                                        size_t nrq, const struct moat_hdr *rs, size_t nrs,
                                        unsigned flags)
{
    struct moat_cache_policy_cfg cfg;
    moat_cache_policy_cfg_default(&cfg);
    cfg.flags = flags;
    struct moat_cache_cc req, resp = cc_of(resp_cc);
    moat_cache_cc_request(&req, rq, nrq);
    return moat_cache_storable(&cfg, MOAT_M_GET, status, &req, rq, nrq, &resp, rs, nrs);
}

static void test_storable(void **state)
{
    struct moat_cache_policy_cfg cfg;
    moat_cache_policy_cfg_default(&cfg);
    struct moat_cache_cc none = cc_of(""), ma = cc_of("max-age=60");
    assert_int_equal(moat_cache_storable(&cfg, MOAT_M_POST, 200, NULL, NULL, 0, &ma, NULL, 0),
                     MOAT_NOSTORE_METHOD);
    assert_int_equal(moat_cache_storable(&cfg, MOAT_M_HEAD, 200, NULL, NULL, 0, &ma, NULL, 0),
                     MOAT_NOSTORE_NONE);
    assert_int_equal(moat_cache_storable(&cfg, MOAT_M_GET, 100, NULL, NULL, 0, &ma, NULL, 0),
                     MOAT_NOSTORE_STATUS);
    assert_int_equal(moat_cache_storable(&cfg, MOAT_M_GET, 304, NULL, NULL, 0, &ma, NULL, 0),
                     MOAT_NOSTORE_STATUS);
    assert_int_equal(moat_cache_storable(&cfg, MOAT_M_GET, 206, NULL, NULL, 0, &ma, NULL, 0),
                     MOAT_NOSTORE_PARTIAL);
    /* heuristic statuses need nothing; others need explicit freshness */
    static const int heur[] = {200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(heur); i++)
        assert_int_equal(
            moat_cache_storable(&cfg, MOAT_M_GET, heur[i], NULL, NULL, 0, &none, NULL, 0),
            MOAT_NOSTORE_NONE);
    assert_true(moat_cache_status_heuristic(206));
    assert_false(moat_cache_status_heuristic(302));
    assert_int_equal(moat_cache_storable(&cfg, MOAT_M_GET, 302, NULL, NULL, 0, &none, NULL, 0),
                     MOAT_NOSTORE_NO_FRESHNESS);
    assert_int_equal(moat_cache_storable(&cfg, MOAT_M_GET, 503, NULL, NULL, 0, &none, NULL, 0),
                     MOAT_NOSTORE_NO_FRESHNESS);
    assert_int_equal(moat_cache_storable(&cfg, MOAT_M_GET, 302, NULL, NULL, 0, &ma, NULL, 0),
                     MOAT_NOSTORE_NONE);
    struct moat_hdr exp[] = {H("Expires", "Sun, 06 Nov 1994 08:49:37 GMT")};
    assert_int_equal(moat_cache_storable(&cfg, MOAT_M_GET, 302, NULL, NULL, 0, &none, exp, 1),
                     MOAT_NOSTORE_NONE);
    struct moat_hdr et[] = {H("ETag", "\"x\"")};
    assert_int_equal(storable(302, "", NULL, 0, et, 1, 0), MOAT_NOSTORE_NO_FRESHNESS);
    assert_int_equal(storable(302, "", NULL, 0, et, 1, MOAT_CACHE_CFG_STORE_VALIDATED),
                     MOAT_NOSTORE_NONE);
    /* no-store, private, request no-store */
    assert_int_equal(storable(200, "no-store, max-age=60", NULL, 0, NULL, 0, 0),
                     MOAT_NOSTORE_NO_STORE);
    assert_int_equal(storable(200, "private, max-age=60", NULL, 0, NULL, 0, 0),
                     MOAT_NOSTORE_PRIVATE);
    assert_int_equal(storable(200, "private=\"x\"", NULL, 0, NULL, 0, 0), MOAT_NOSTORE_PRIVATE);
    struct moat_hdr rqns[] = {H("Cache-Control", "no-store")};
    assert_int_equal(storable(200, "max-age=60", rqns, 1, NULL, 0, 0), MOAT_NOSTORE_REQ_NO_STORE);
    /* must-understand: understood status overrides no-store, others do not store */
    assert_int_equal(storable(200, "must-understand, no-store, max-age=5", NULL, 0, NULL, 0, 0),
                     MOAT_NOSTORE_NONE);
    assert_int_equal(storable(299, "must-understand, no-store, max-age=5", NULL, 0, NULL, 0, 0),
                     MOAT_NOSTORE_STATUS);
    /* Authorization */
    struct moat_hdr auth[] = {H("Authorization", "Basic eA==")};
    assert_int_equal(storable(200, "max-age=60", auth, 1, NULL, 0, 0), MOAT_NOSTORE_AUTHORIZATION);
    assert_int_equal(storable(200, "public", auth, 1, NULL, 0, 0), MOAT_NOSTORE_NONE);
    assert_int_equal(storable(200, "must-revalidate, max-age=1", auth, 1, NULL, 0, 0),
                     MOAT_NOSTORE_NONE);
    assert_int_equal(storable(200, "s-maxage=10", auth, 1, NULL, 0, 0), MOAT_NOSTORE_NONE);
    /* Set-Cookie */
    struct moat_hdr ck[] = {H("Set-Cookie", "a=b")};
    assert_int_equal(storable(200, "max-age=60", NULL, 0, ck, 1, 0), MOAT_NOSTORE_SET_COOKIE);
    assert_int_equal(storable(200, "max-age=60", NULL, 0, ck, 1, MOAT_CACHE_CFG_STORE_SET_COOKIE),
                     MOAT_NOSTORE_NONE);
    /* Vary: * */
    struct moat_hdr vs[] = {H("Vary", "Accept-Encoding"), H("Vary", "Origin, *")};
    assert_int_equal(storable(200, "max-age=60", NULL, 0, vs, 2, 0), MOAT_NOSTORE_VARY_STAR);
    assert_string_equal(moat_cache_nostore_name(MOAT_NOSTORE_VARY_STAR), "vary_star");
}

static void test_lifetime_precedence(void **state)
{
    struct moat_cache_policy_cfg cfg;
    moat_cache_policy_cfg_default(&cfg);
    struct moat_hdr h[] = {H("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                           H("Expires", "Sun, 06 Nov 1994 08:59:37 GMT"),
                           H("Last-Modified", "Sun, 06 Nov 1994 06:02:57 GMT")};
    bool heur;
    struct moat_cache_cc cc = cc_of("s-maxage=5, max-age=7");
    assert_int_equal(moat_cache_freshness_lifetime(&cfg, 200, &cc, h, 3, T1994, &heur), 5);
    cc = cc_of("max-age=7");
    assert_int_equal(moat_cache_freshness_lifetime(&cfg, 200, &cc, h, 3, T1994, &heur), 7);
    cc = cc_of("");
    assert_int_equal(moat_cache_freshness_lifetime(&cfg, 200, &cc, h, 3, T1994, &heur), 600);
    assert_false(heur);
    /* heuristic: 10% of Date - Last-Modified (10,000 s) */
    assert_int_equal(moat_cache_freshness_lifetime(&cfg, 200, &cc, (struct moat_hdr[]){h[0], h[2]},
                                                   2, T1994, &heur),
                     1000);
    assert_true(heur);
    /* capped */
    cfg.heuristic_max = 300;
    assert_int_equal(moat_cache_freshness_lifetime(&cfg, 200, &cc, (struct moat_hdr[]){h[0], h[2]},
                                                   2, T1994, &heur),
                     300);
    /* not for a non-heuristic status */
    assert_int_equal(moat_cache_freshness_lifetime(&cfg, 302, &cc, (struct moat_hdr[]){h[0], h[2]},
                                                   2, T1994, &heur),
                     0);
    /* invalid Expires ("0") and duplicated Expires: already expired, heuristic not used */
    struct moat_hdr e0[] = {h[0], H("Expires", "0"), h[2]};
    assert_int_equal(moat_cache_freshness_lifetime(&cfg, 200, &cc, e0, 3, T1994, &heur), 0);
    struct moat_hdr e2[] = {h[0], h[1], h[1]};
    assert_int_equal(moat_cache_freshness_lifetime(&cfg, 200, &cc, e2, 3, T1994, &heur), 0);
    /* Expires without Date: measured from the time the response arrived */
    struct moat_hdr nd[] = {H("Expires", "Sun, 06 Nov 1994 08:59:37 GMT")};
    assert_int_equal(moat_cache_freshness_lifetime(&cfg, 200, &cc, nd, 1, T1994 + 100, &heur), 500);
    /* Expires in the past */
    struct moat_hdr ep[] = {H("Date", "Sun, 06 Nov 1994 08:59:37 GMT"),
                            H("Expires", "Sun, 06 Nov 1994 08:49:37 GMT")};
    assert_int_equal(moat_cache_freshness_lifetime(&cfg, 200, &cc, ep, 2, T1994, &heur), 0);
}

static void test_age(void **state)
{
    struct moat_cache_policy_cfg cfg;
    moat_cache_policy_cfg_default(&cfg);
    struct moat_cache_cc cc = cc_of("max-age=100");
    /* The origin's Date says T; the response passed a cache that says Age: 10; the request
     * left at T+2 and the answer arrived at T+5 (3 s delay). */
    struct moat_hdr h[] = {H("Date", "Sun, 06 Nov 1994 08:49:37 GMT"), H("Age", "10")};
    struct moat_cache_meta m;
    moat_cache_meta_init(&m, &cfg, 200, &cc, h, 2, T1994 + 2, T1994 + 5);
    /* apparent_age = 5, corrected_age_value = 10 + 3 = 13, initial = 13 */
    assert_int_equal(moat_cache_current_age(&m, T1994 + 5), 13);
    assert_int_equal(moat_cache_current_age(&m, T1994 + 65), 73);
    /* a Date far in the past dominates (apparent age) */
    struct moat_hdr h2[] = {H("Date", "Sun, 06 Nov 1994 08:48:37 GMT")};
    moat_cache_meta_init(&m, &cfg, 200, &cc, h2, 1, T1994, T1994);
    assert_int_equal(moat_cache_current_age(&m, T1994), 60);
    /* a Date in the future (clock skew) is clamped to 0 apparent age */
    struct moat_hdr h3[] = {H("Date", "Sun, 06 Nov 1994 09:49:37 GMT"), H("Age", "junk")};
    moat_cache_meta_init(&m, &cfg, 200, &cc, h3, 2, T1994, T1994);
    assert_int_equal(moat_cache_current_age(&m, T1994 + 1), 1);
    /* no Date: response_time is used */
    moat_cache_meta_init(&m, &cfg, 200, &cc, NULL, 0, T1994, T1994);
    assert_int_equal(m.date, T1994);
    assert_int_equal(m.lifetime, 100);
    assert_false(m.flags & MOAT_META_HAS_VALIDATOR);
}

static struct moat_cache_meta meta(const char *cc_v, bool validator)
{
    struct moat_cache_policy_cfg cfg;
    moat_cache_policy_cfg_default(&cfg);
    struct moat_cache_cc cc = cc_of(cc_v);
    struct moat_hdr h[] = {H("Date", "Sun, 06 Nov 1994 08:49:37 GMT"), H("ETag", "\"v1\"")};
    struct moat_cache_meta m;
    moat_cache_meta_init(&m, &cfg, 200, &cc, h, validator ? 2 : 1, T1994, T1994);
    return m;
}

static enum moat_cache_fresh decide(const struct moat_cache_meta *m, const char *req, int64_t dt)
{
    struct moat_cache_cc r = cc_of(req);
    return moat_cache_decide(m, &r, T1994 + dt);
}

static void test_decide(void **state)
{
    struct moat_cache_meta m = meta("max-age=100", true);
    assert_int_equal(decide(&m, "", 0), MOAT_CACHE_FRESH);
    assert_int_equal(decide(&m, "", 99), MOAT_CACHE_FRESH);
    assert_int_equal(decide(&m, "", 100), MOAT_CACHE_STALE_REVALIDATE);
    assert_int_equal(moat_cache_decide(&m, NULL, T1994 + 50), MOAT_CACHE_FRESH);
    /* request no-cache: validate */
    assert_int_equal(decide(&m, "no-cache", 0), MOAT_CACHE_STALE_REVALIDATE);
    /* request max-age */
    assert_int_equal(decide(&m, "max-age=10", 10), MOAT_CACHE_FRESH);
    assert_int_equal(decide(&m, "max-age=10", 11), MOAT_CACHE_STALE_REVALIDATE);
    assert_int_equal(decide(&m, "max-age=0", 1), MOAT_CACHE_STALE_REVALIDATE);
    /* min-fresh: needs 30 s of freshness left */
    assert_int_equal(decide(&m, "min-fresh=30", 70), MOAT_CACHE_FRESH);
    assert_int_equal(decide(&m, "min-fresh=30", 71), MOAT_CACHE_STALE_REVALIDATE);
    /* max-stale */
    assert_int_equal(decide(&m, "max-stale=20", 120), MOAT_CACHE_STALE_OK);
    assert_int_equal(decide(&m, "max-stale=20", 121), MOAT_CACHE_STALE_REVALIDATE);
    assert_int_equal(decide(&m, "max-stale", 100000), MOAT_CACHE_STALE_OK);
    /* no validator: forward */
    struct moat_cache_meta nv = meta("max-age=100", false);
    assert_int_equal(decide(&nv, "", 100), MOAT_CACHE_MUST_FORWARD);
    /* only-if-cached */
    assert_int_equal(decide(&m, "only-if-cached", 100), MOAT_CACHE_ONLY_IF_CACHED);
    assert_int_equal(decide(&m, "only-if-cached", 1), MOAT_CACHE_FRESH);
    /* response no-cache: always validate */
    struct moat_cache_meta nc = meta("no-cache, max-age=100", true);
    assert_int_equal(decide(&nc, "", 0), MOAT_CACHE_STALE_REVALIDATE);
    /* stale-while-revalidate */
    struct moat_cache_meta swr = meta("max-age=100, stale-while-revalidate=50", true);
    assert_int_equal(decide(&swr, "", 120), MOAT_CACHE_STALE_SWR);
    assert_int_equal(decide(&swr, "", 150), MOAT_CACHE_STALE_REVALIDATE);
    assert_int_equal(decide(&swr, "max-age=5", 120), MOAT_CACHE_STALE_REVALIDATE);
    /* must-revalidate, proxy-revalidate and s-maxage forbid stale, even with max-stale/swr */
    const char *strict[] = {"max-age=100, must-revalidate, stale-while-revalidate=50",
                            "max-age=100, proxy-revalidate, stale-while-revalidate=50",
                            "s-maxage=100, stale-while-revalidate=50"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(strict); i++) {
        struct moat_cache_meta s = meta(strict[i], true);
        assert_int_equal(decide(&s, "", 99), MOAT_CACHE_FRESH);
        assert_int_equal(decide(&s, "", 120), MOAT_CACHE_STALE_REVALIDATE);
        assert_int_equal(decide(&s, "max-stale=1000", 120), MOAT_CACHE_STALE_REVALIDATE);
        assert_false(moat_cache_stale_if_error_ok(&s, NULL, T1994 + 120));
    }
    /* soft purge: stale now, grace windows still apply */
    swr.flags |= MOAT_META_INVALIDATED;
    assert_int_equal(decide(&swr, "", 10), MOAT_CACHE_STALE_SWR);
    /* stale-if-error */
    struct moat_cache_meta sie = meta("max-age=100, stale-if-error=60", true);
    assert_true(moat_cache_stale_if_error_ok(&sie, NULL, T1994 + 50));
    assert_true(moat_cache_stale_if_error_ok(&sie, NULL, T1994 + 159));
    assert_false(moat_cache_stale_if_error_ok(&sie, NULL, T1994 + 160));
    struct moat_cache_cc rq = cc_of("stale-if-error=5");
    assert_false(moat_cache_stale_if_error_ok(&sie, &rq, T1994 + 110));
    assert_false(moat_cache_stale_if_error_ok(&m, NULL, T1994 + 101));
    assert_string_equal(moat_cache_fresh_name(MOAT_CACHE_STALE_SWR), "stale_swr");
}

static void test_vary(void **state)
{
    char b1[256], b2[256];
    size_t l1, l2;
    uint64_t h1, h2;
    struct moat_hdr rs[] = {H("Vary", "Accept-Encoding, accept-language"), H("Vary", "Origin")};
    struct moat_hdr rs2[] = {H("Vary", "origin,ACCEPT-LANGUAGE , accept-encoding")};
    struct moat_hdr q1[] = {H("Accept-Encoding", "gzip,  br"), H("Accept-Language", "fr"),
                            H("Host", "x")};
    struct moat_hdr q2[] = {H("accept-language", "fr"), H("ACCEPT-ENCODING", "gzip , br")};
    assert_int_equal(moat_cache_vary_key(rs, 2, q1, 3, NULL, b1, sizeof(b1), &l1, &h1), MOAT_OK);
    assert_int_equal(moat_cache_vary_key(rs2, 1, q2, 2, NULL, b2, sizeof(b2), &l2, &h2), MOAT_OK);
    assert_memory_equal(b1, b2, l1);
    assert_int_equal(l1, l2);
    assert_true(h1 == h2);
    const char want[] = "accept-encoding:gzip,br\naccept-language:fr\norigin\x01\n";
    assert_int_equal(l1, sizeof(want) - 1);
    assert_memory_equal(b1, want, l1);
    /* absent differs from empty */
    struct moat_hdr q3[] = {H("Accept-Encoding", "gzip,  br"), H("Accept-Language", "fr"),
                            H("Origin", "")};
    assert_int_equal(moat_cache_vary_key(rs, 2, q3, 3, NULL, b2, sizeof(b2), &l2, &h2), MOAT_OK);
    assert_true(h1 != h2);
    /* two field lines = one combined value */
    struct moat_hdr q4[] = {H("Accept-Encoding", "gzip"), H("Accept-Encoding", "br"),
                            H("Accept-Language", "fr")};
    assert_int_equal(moat_cache_vary_key(rs, 2, q4, 3, NULL, b2, sizeof(b2), &l2, &h2), MOAT_OK);
    assert_true(h1 == h2);
    /* different value, different key */
    struct moat_hdr q5[] = {H("Accept-Encoding", "gzip"), H("Accept-Language", "fr")};
    assert_int_equal(moat_cache_vary_key(rs, 2, q5, 2, NULL, b2, sizeof(b2), &l2, &h2), MOAT_OK);
    assert_true(h1 != h2);
    /* Vary: * */
    struct moat_hdr star[] = {H("Vary", "Origin, *")};
    assert_int_equal(moat_cache_vary_key(star, 1, q1, 3, NULL, b2, sizeof(b2), &l2, &h2),
                     MOAT_DECLINED);
    /* too small a buffer */
    assert_int_equal(moat_cache_vary_key(rs, 2, q1, 3, NULL, b2, 10, &l2, &h2), MOAT_ERR);
    /* no Vary */
    assert_int_equal(moat_cache_vary_key(NULL, 0, q1, 3, NULL, b2, sizeof(b2), &l2, &h2), MOAT_OK);
    assert_int_equal(l2, 0);
    /* The forwarded Accept-Encoding replaces the request's lines; other fields stay. */
    struct moat_str ae = S("gzip, br");
    struct moat_hdr q6[] = {H("Accept-Encoding", "br;q=1.0, gzip, deflate"),
                            H("Accept-Encoding", "zstd;q=0"), H("Accept-Language", "fr")};
    assert_int_equal(moat_cache_vary_key(rs, 2, q6, 3, &ae, b2, sizeof(b2), &l2, &h2), MOAT_OK);
    assert_int_equal(l2, sizeof(want) - 1);
    assert_memory_equal(b2, want, l2);
    /* ... also when the request had none; absent only when nothing is forwarded. */
    struct moat_hdr q7[] = {H("Accept-Language", "fr")};
    struct moat_str id = S("identity");
    assert_int_equal(moat_cache_vary_key(rs, 2, q7, 1, &id, b2, sizeof(b2), &l2, &h2), MOAT_OK);
    const char want_id[] = "accept-encoding:identity\naccept-language:fr\norigin\x01\n";
    assert_int_equal(l2, sizeof(want_id) - 1);
    assert_memory_equal(b2, want_id, l2);
    /* ... and it does not matter to a Vary without Accept-Encoding. */
    struct moat_hdr lang[] = {H("Vary", "Accept-Language")};
    assert_int_equal(moat_cache_vary_key(lang, 1, q6, 3, &id, b2, sizeof(b2), &l2, &h2), MOAT_OK);
    assert_int_equal(l2, strlen("accept-language:fr\n"));
    assert_memory_equal(b2, "accept-language:fr\n", l2);
}

/* What moat_cache_ae_accepted makes of the Accept-Encoding lines, in the canonical form. */
static const char *ae_of(const struct moat_hdr *h, size_t n)
{
    static char out[32];
    struct moat_str v = moat_cache_ae_value(moat_cache_ae_accepted(h, n));
    snprintf(out, sizeof out, "%.*s", (int)v.len, v.ptr);
    return out;
}

static void test_accept_encoding(void **state)
{
    static const struct {
        const char *in, *want;
    } one[] = {
        /* what browsers and tools send */
        {"gzip, deflate, br", "gzip, br"},
        {"gzip, deflate, br, zstd", "gzip, br, zstd"},
        {"br;q=1.0, gzip;q=0.8, *;q=0.1", "gzip, br, zstd"},
        {"gzip, deflate", "gzip"},
        {"br;q=1.0, gzip", "gzip, br"},
        {"deflate, gzip;q=1.0, *;q=0.5", "gzip, br, zstd"},
        {"identity", "identity"},
        {"deflate", "identity"},
        {"", "identity"},
        /* case, whitespace, empty elements, aliases */
        {"GZIP, Br", "gzip, br"},
        {" \tgzip\t ,, ,br ", "gzip, br"},
        {"x-gzip", "gzip"},
        {"gzip ; q=0.5 ,br;Q=1", "gzip, br"},
        {"zstd", "zstd"},
        {"br", "br"},
        /* weights: 0 refuses, in any spelling; broken weights refuse too */
        {"gzip;q=0, br", "br"},
        {"gzip;q=0.000, br;q=0.001", "br"},
        {"gzip;q=1.000", "gzip"},
        {"gzip;q=1.001", "identity"},
        {"gzip;q=2", "identity"},
        {"gzip;q=0.5000", "identity"},
        {"gzip;q=.5", "identity"},
        {"gzip;q=", "identity"},
        {"gzip;q=abc, br", "br"},
        {"gzip;q = 0.5", "gzip"}, /* spaces around '=' are not RFC syntax, but tolerated */
        {"gzip; Q =0, br", "br"},
        {"gzip;level=9, br;x=\"a;b\"", "gzip, br"},
        {"gzip, gzip;q=0", "identity"},
        {"gzip;q=0, gzip", "identity"},
        /* "*": every coding not listed by name */
        {"*", "gzip, br, zstd"},
        {"*;q=0", "identity"},
        {"*, gzip;q=0", "br, zstd"},
        {"br;q=0, *;q=0.3", "gzip, zstd"},
        {"*;q=0, br", "br"},
        {"*, *;q=0", "identity"},
        {"identity;q=0, *", "gzip, br, zstd"},
        /* junk */
        {"gzip;", "gzip"},
        {";q=1, ,", "identity"},
        {"gzipx, brr, zst", "identity"},
        {"\"gzip\"", "identity"},
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof(one) / sizeof(one[0]); i++) {
        struct moat_hdr h[] = {H("Host", "x"),
                               {S("Accept-Encoding"), moat_str_make(one[i].in, strlen(one[i].in))}};
        const char *got = ae_of(h, 2);
        if (strcmp(got, one[i].want) != 0) {
            print_error("\"%s\": got \"%s\", want \"%s\"\n", one[i].in, got, one[i].want);
            bad++;
        }
    }
    assert_int_equal(bad, 0);
    /* No field at all. */
    struct moat_hdr none[] = {H("Accept", "*/*"), H("X-Accept-Encoding", "gzip")};
    assert_string_equal(ae_of(none, 2), "identity");
    assert_string_equal(ae_of(NULL, 0), "identity");
    /* Several lines are one list, and a refusal on one line wins over the other. */
    struct moat_hdr two[] = {H("accept-encoding", "gzip"), H("Accept", "*/*"),
                             H("ACCEPT-ENCODING", "br, zstd;q=0")};
    assert_string_equal(ae_of(two, 3), "gzip, br");
    struct moat_hdr refuse[] = {H("Accept-Encoding", "gzip, br"), H("Accept-Encoding", "gzip;q=0")};
    assert_string_equal(ae_of(refuse, 2), "br");
    /* The value table. */
    assert_true(moat_str_eq(moat_cache_ae_value(0), S("identity")));
    assert_true(moat_str_eq(moat_cache_ae_value(MOAT_AE_ALL), S("gzip, br, zstd")));
    assert_true(moat_str_eq(moat_cache_ae_value(MOAT_AE_BR | MOAT_AE_ZSTD), S("br, zstd")));
    assert_true(moat_str_eq(moat_cache_ae_value(MOAT_AE_GZIP | MOAT_AE_ZSTD), S("gzip, zstd")));
    /* Every canonical value reads back as the codings it was made from. */
    for (unsigned b = 0; b <= MOAT_AE_ALL; b++) {
        struct moat_hdr h[] = {{S("Accept-Encoding"), moat_cache_ae_value(b)}};
        assert_int_equal(moat_cache_ae_accepted(h, 1), b);
        assert_int_equal(strnlen(h[0].value.ptr, 32), h[0].value.len);
    }
}

static int cond(enum moat_method m, const struct moat_hdr *h, size_t n)
{
    /* stored: ETag "v1", Last-Modified T1994, Date T1994 + 100 */
    return moat_cache_conditional(m, h, n, S("\"v1\""), T1994, T1994 + 100);
}

static void test_conditional(void **state)
{
    assert_int_equal(cond(MOAT_M_GET, NULL, 0), 0);
    struct moat_hdr a[] = {H("If-None-Match", "\"v0\", W/\"v1\"")};
    assert_int_equal(cond(MOAT_M_GET, a, 1), 304);
    assert_int_equal(cond(MOAT_M_HEAD, a, 1), 304);
    struct moat_hdr b[] = {H("If-None-Match", "\"v0\"")};
    assert_int_equal(cond(MOAT_M_GET, b, 1), 0);
    struct moat_hdr c[] = {H("If-None-Match", "*")};
    assert_int_equal(cond(MOAT_M_GET, c, 1), 304);
    assert_int_equal(cond(MOAT_M_POST, c, 1), 412);
    /* If-None-Match present: If-Modified-Since ignored (precedence) */
    struct moat_hdr d[] = {H("If-None-Match", "\"v0\""),
                           H("If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT")};
    assert_int_equal(cond(MOAT_M_GET, d, 2), 0);
    struct moat_hdr e[] = {H("If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT")};
    assert_int_equal(cond(MOAT_M_GET, e, 1), 304);
    struct moat_hdr f[] = {H("If-Modified-Since", "Sun, 06 Nov 1994 08:49:36 GMT")};
    assert_int_equal(cond(MOAT_M_GET, f, 1), 0);
    struct moat_hdr g[] = {H("If-Modified-Since", "yesterday")};
    assert_int_equal(cond(MOAT_M_GET, g, 1), 0);
    assert_int_equal(cond(MOAT_M_POST, e, 1), 0);
    /* without Last-Modified, Date stands in (RFC 9111 4.3.2) */
    assert_int_equal(moat_cache_conditional(MOAT_M_GET, e, 1, S("\"v1\""), -1, T1994 + 100), 0);
    assert_int_equal(moat_cache_conditional(MOAT_M_GET, e, 1, S("\"v1\""), -1, T1994), 304);
    /* If-Match: strong comparison */
    struct moat_hdr h1[] = {H("If-Match", "\"v1\"")};
    assert_int_equal(cond(MOAT_M_GET, h1, 1), 0);
    struct moat_hdr h2[] = {H("If-Match", "W/\"v1\"")};
    assert_int_equal(cond(MOAT_M_GET, h2, 1), 412);
    struct moat_hdr h3[] = {H("If-Unmodified-Since", "Sun, 06 Nov 1994 08:49:36 GMT")};
    assert_int_equal(cond(MOAT_M_GET, h3, 1), 412);
    /* commas inside an entity-tag */
    assert_int_equal(moat_cache_conditional(MOAT_M_GET,
                                            (struct moat_hdr[]){H("If-None-Match", "\"a,b\"")}, 1,
                                            S("\"a,b\""), -1, 0),
                     304);
    assert_true(moat_cache_etag_weak_eq(S("W/\"x\""), S("\"x\"")));
    assert_false(moat_cache_etag_strong_eq(S("W/\"x\""), S("\"x\"")));
    assert_true(moat_cache_etag_strong_eq(S("\"x\""), S(" \"x\"")));
    assert_false(moat_cache_etag_weak_eq(S("x"), S("x")));
}

static void test_range(void **state)
{
    uint64_t a = 0, b = 0;
    assert_int_equal(moat_cache_range_parse(S("bytes=0-99"), 1000, &a, &b), MOAT_RANGE_OK);
    assert_true(a == 0 && b == 99);
    assert_int_equal(moat_cache_range_parse(S("bytes=500-"), 1000, &a, &b), MOAT_RANGE_OK);
    assert_true(a == 500 && b == 999);
    assert_int_equal(moat_cache_range_parse(S("bytes=-100"), 1000, &a, &b), MOAT_RANGE_OK);
    assert_true(a == 900 && b == 999);
    assert_int_equal(moat_cache_range_parse(S("bytes=-5000"), 1000, &a, &b), MOAT_RANGE_OK);
    assert_true(a == 0 && b == 999);
    assert_int_equal(moat_cache_range_parse(S("bytes=900-5000"), 1000, &a, &b), MOAT_RANGE_OK);
    assert_true(a == 900 && b == 999);
    assert_int_equal(moat_cache_range_parse(S(" bytes= 1-1 "), 1000, &a, &b), MOAT_RANGE_OK);
    assert_true(a == 1 && b == 1);
    assert_int_equal(moat_cache_range_parse(S("bytes=1000-"), 1000, &a, &b),
                     MOAT_RANGE_UNSATISFIABLE);
    assert_int_equal(moat_cache_range_parse(S("bytes=-0"), 1000, &a, &b), MOAT_RANGE_UNSATISFIABLE);
    assert_int_equal(moat_cache_range_parse(S("bytes=0-"), 0, &a, &b), MOAT_RANGE_UNSATISFIABLE);
    /* ignored: several ranges, other units, junk, reversed */
    const char *none[] = {"bytes=0-1,5-6", "items=0-1", "bytes=",
                          "bytes=a-b",     "bytes=5-1", "bytes=1",
                          "0-1",           "bytes=--1", "bytes=99999999999999999999-"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(none); i++)
        assert_int_equal(
            moat_cache_range_parse(moat_str_make(none[i], strlen(none[i])), 1000, &a, &b),
            MOAT_RANGE_NONE);
    /* If-Range */
    assert_true(moat_cache_if_range_ok(S("\"v1\""), S("\"v1\""), -1));
    assert_false(moat_cache_if_range_ok(S("W/\"v1\""), S("W/\"v1\""), -1));
    assert_false(moat_cache_if_range_ok(S("\"v2\""), S("\"v1\""), -1));
    assert_true(moat_cache_if_range_ok(S("Sun, 06 Nov 1994 08:49:37 GMT"), S(""), T1994));
    assert_false(moat_cache_if_range_ok(S("Sun, 06 Nov 1994 08:49:38 GMT"), S(""), T1994));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cc_directives), cmocka_unit_test(test_cc_junk),
        cmocka_unit_test(test_cc_targeted),   cmocka_unit_test(test_dates),
        cmocka_unit_test(test_storable),      cmocka_unit_test(test_lifetime_precedence),
        cmocka_unit_test(test_age),           cmocka_unit_test(test_decide),
        cmocka_unit_test(test_vary),          cmocka_unit_test(test_accept_encoding),
        cmocka_unit_test(test_conditional),   cmocka_unit_test(test_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
