/* test_shield.c: unit tests for the shield's pieces: the GCRA token bucket, the bounded table's
 * eviction, connection counters, challenge tokens, the proof-of-work check, clearance cookies
 * and the answer parser (src/shield/limit.c, challenge.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <openssl/sha.h>

#include "shield/challenge.h"
#include "shield/limit.h"

#define S 1000000000ull

/* --- the token bucket ----------------------------------------------------------------------- */

static void test_bucket_burst_then_rate(void **st)
{
    (void)st;
    struct moat_rl_table *t = moat_rl_new(1024);
    assert_non_null(t);
    struct moat_rl_rate r = {.interval_ns = S / 10, .burst = 5, .cap_ns = S, .count_refused = false};
    uint64_t now = 1000 * S, retry = 0;
    for (int i = 0; i < 5; i++)
        assert_true(moat_rl_take(t, 42, now, &r, true, &retry));
    assert_false(moat_rl_take(t, 42, now, &r, true, &retry));
    assert_int_equal(retry, S / 10); /* one interval until the next passes */
    /* 10/s: over 10 s exactly 100 more pass when asked 1000 times evenly */
    int ok = 0;
    for (int i = 1; i <= 1000; i++)
        ok += moat_rl_take(t, 42, now + (uint64_t)i * S / 100, &r, true, &retry);
    assert_true(ok >= 99 && ok <= 101);
    /* another key has its own budget */
    assert_true(moat_rl_take(t, 43, now, &r, true, &retry));
    moat_rl_free(&t);
    assert_null(t);
}

static void test_bucket_refused_count_keeps_a_flooder_out(void **st)
{
    (void)st;
    struct moat_rl_table *t = moat_rl_new(1024);
    struct moat_rl_rate r = {.interval_ns = S / 10, .burst = 2, .cap_ns = S, .count_refused = true};
    uint64_t now = 5 * S, retry = 0;
    assert_true(moat_rl_take(t, 7, now, &r, true, &retry));
    assert_true(moat_rl_take(t, 7, now, &r, true, &retry));
    /* flooding at 100/s for 5 s: every refusal pushes the bucket further: nothing passes */
    int ok = 0;
    for (int i = 1; i <= 500; i++)
        ok += moat_rl_take(t, 7, now + (uint64_t)i * S / 100, &r, true, &retry);
    assert_int_equal(ok, 0);
    /* bounded: after it stops, at most cap + burst intervals until it passes again */
    assert_true(retry <= S + 2 * S / 10);
    assert_true(moat_rl_take(t, 7, now + 5 * S + retry, &r, true, &retry));
    moat_rl_free(&t);
}

static void test_bucket_peek_and_charge(void **st)
{
    (void)st;
    struct moat_rl_table *t = moat_rl_new(1024);
    struct moat_rl_rate r = {.interval_ns = S, .burst = 2, .cap_ns = S, .count_refused = false};
    uint64_t retry;
    /* looking does not use the budget (count: origin) */
    for (int i = 0; i < 10; i++)
        assert_true(moat_rl_take(t, 9, 10 * S, &r, false, &retry));
    moat_rl_charge(t, 9, 10 * S, &r);
    moat_rl_charge(t, 9, 10 * S, &r);
    assert_false(moat_rl_take(t, 9, 10 * S, &r, false, &retry));
    moat_rl_free(&t);
}

/* --- the table's bound ------------------------------------------------------------------------ */

static void test_table_evicts_instead_of_growing(void **st)
{
    (void)st;
    struct moat_rl_table *t = moat_rl_new(1000); /* rounds up to 1024 */
    struct moat_rl_stats s0, s1;
    moat_rl_stats(t, &s0);
    assert_int_equal(s0.capacity, 1024);
    assert_int_equal(s0.used, 0);
    assert_true(s0.bytes >= 1024 * MOAT_RL_ENTRY_BYTES && s0.bytes < 1024 * 16 + 32768);
    struct moat_rl_rate r = {.interval_ns = S, .burst = 1, .cap_ns = S, .count_refused = true};
    uint64_t retry;
    for (uint64_t k = 1; k <= 100000; k++)
        assert_true(moat_rl_take(t, k * 0x9e3779b97f4a7c15ull, 100 * S + k, &r, true, &retry));
    moat_rl_stats(t, &s1);
    assert_int_equal(s1.capacity, 1024);
    assert_int_equal(s1.bytes, s0.bytes);
    assert_true(s1.used <= 1024 && s1.used > 900);
    assert_int_equal(s1.evicted, 100000 - s1.used);
    /* a hot key keeps its state while it is used: the oldest buckets go first */
    struct moat_rl_table *t2 = moat_rl_new(1024);
    struct moat_rl_rate slow = {.interval_ns = 3600 * S, .burst = 1, .cap_ns = S};
    assert_true(moat_rl_take(t2, 1, 10 * S, &slow, true, &retry));
    for (uint64_t k = 2; k <= 50000; k++) {
        struct moat_rl_rate fast = {.interval_ns = 1, .burst = 1, .cap_ns = 1};
        moat_rl_take(t2, k * 0x9e3779b97f4a7c15ull, 10 * S, &fast, true, &retry);
    }
    assert_false(moat_rl_take(t2, 1, 11 * S, &slow, true, &retry)); /* still limited */
    moat_rl_free(&t);
    moat_rl_free(&t2);
}

static void test_connection_counts(void **st)
{
    (void)st;
    uint8_t a[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3};
    uint8_t b[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 4};
    for (int i = 0; i < 3; i++)
        assert_true(moat_cc_open(a, 3));
    assert_false(moat_cc_open(a, 3));
    assert_int_equal(moat_cc_count(a), 3);
    assert_true(moat_cc_open(b, 3));
    moat_cc_close(a);
    assert_true(moat_cc_open(a, 3));
    for (int i = 0; i < 3; i++)
        moat_cc_close(a);
    moat_cc_close(b);
    assert_int_equal(moat_cc_count(a), 0);
}

/* --- challenges and cookies ------------------------------------------------------------------- */

static const uint8_t key[32] = "0123456789abcdef0123456789abcdef";

static struct moat_chal_ctx ctx(const char *ua, uint8_t last)
{
    struct moat_chal_ctx c = {.key = key, .keylen = sizeof key, .site_id = 77};
    uint8_t ip[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, last};
    moat_chal_prefix(ip, c.prefix);
    c.ua = moat_str_make(ua, strlen(ua));
    return c;
}

static void test_prefix(void **st)
{
    (void)st;
    struct moat_chal_ctx a = ctx("x", 1), b = ctx("x", 200);
    assert_memory_equal(a.prefix, b.prefix, 16); /* same /24 */
    uint8_t v6[16] = {0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, p[16];
    moat_chal_prefix(v6, p);
    assert_memory_equal(p, v6, 8);
    for (int i = 8; i < 16; i++)
        assert_int_equal(p[i], 0);
}

static void test_cookie_sign_verify(void **st)
{
    (void)st;
    struct moat_chal_ctx c = ctx("Mozilla/5.0", 1);
    char v[MOAT_CHAL_TOKEN_MAX];
    size_t n = moat_chal_cookie(&c, 2000, v);
    assert_int_equal(n, strlen(v));
    struct moat_str s = moat_str_make(v, n);
    assert_int_equal(moat_chal_check_cookie(&c, s, 1999), MOAT_CHAL_OK);
    assert_int_equal(moat_chal_check_cookie(&c, s, 2000), MOAT_CHAL_EXPIRED);
    struct moat_chal_ctx other_ua = ctx("curl/8", 1), other_ip = ctx("Mozilla/5.0", 1);
    other_ip.prefix[14] ^= 1;
    assert_int_equal(moat_chal_check_cookie(&other_ua, s, 1000), MOAT_CHAL_FORGED);
    assert_int_equal(moat_chal_check_cookie(&other_ip, s, 1000), MOAT_CHAL_FORGED);
    struct moat_chal_ctx other_site = c;
    other_site.site_id = 78;
    assert_int_equal(moat_chal_check_cookie(&other_site, s, 1000), MOAT_CHAL_FORGED);
    /* a later expiry with the old tag, a flipped tag byte, garbage */
    char f[MOAT_CHAL_TOKEN_MAX];
    memcpy(f, v, n + 1);
    f[0] = f[0] == '9' ? '8' : (char)(f[0] + 1);
    assert_int_equal(moat_chal_check_cookie(&c, moat_str_make(f, n), 1000), MOAT_CHAL_FORGED);
    memcpy(f, v, n + 1);
    f[n - 3] = f[n - 3] == 'A' ? 'B' : 'A';
    assert_int_equal(moat_chal_check_cookie(&c, moat_str_make(f, n), 1000), MOAT_CHAL_FORGED);
    assert_int_equal(moat_chal_check_cookie(&c, MOAT_STR("2000.short"), 1000), MOAT_CHAL_MALFORMED);
    assert_int_equal(moat_chal_check_cookie(&c, MOAT_STR(""), 1000), MOAT_CHAL_MALFORMED);
    /* a challenge is not a cookie (domain separation) */
    char tok[MOAT_CHAL_TOKEN_MAX];
    size_t tn = moat_chal_token(&c, 2000, tok);
    assert_int_equal(moat_chal_check_cookie(&c, moat_str_make(tok, tn), 1000), MOAT_CHAL_FORGED);
}

static void test_token_and_pow(void **st)
{
    (void)st;
    struct moat_chal_ctx c = ctx("Mozilla/5.0", 1);
    char tok[MOAT_CHAL_TOKEN_MAX];
    size_t tn = moat_chal_token(&c, 5000, tok);
    struct moat_str t = moat_str_make(tok, tn);
    assert_int_equal(moat_chal_check_token(&c, t, 5100, 600), MOAT_CHAL_OK);
    assert_int_equal(moat_chal_check_token(&c, t, 5601, 600), MOAT_CHAL_EXPIRED);
    assert_int_equal(moat_chal_check_token(&c, t, 4000, 600), MOAT_CHAL_EXPIRED); /* future */
    /* solve it like the page does: SHA-256(token || decimal nonce) */
    unsigned bits = 12;
    char nonce[24];
    for (unsigned n = 0;; n++) {
        snprintf(nonce, sizeof nonce, "%u", n);
        char buf[80];
        int l = snprintf(buf, sizeof buf, "%s%s", tok, nonce);
        uint8_t h[32];
        SHA256((const uint8_t *)buf, (size_t)l, h);
        if (moat_chal_zero_bits(h) >= bits)
            break;
    }
    struct moat_str ns = moat_str_make(nonce, strlen(nonce));
    assert_int_equal(moat_chal_check_pow(t, ns, bits), MOAT_CHAL_OK);
    assert_int_equal(moat_chal_check_pow(t, ns, 30), MOAT_CHAL_WRONG);
    assert_int_equal(moat_chal_check_pow(t, MOAT_STR("12-3"), 1), MOAT_CHAL_MALFORMED);
    assert_int_equal(moat_chal_check_pow(t, MOAT_STR(""), 1), MOAT_CHAL_MALFORMED);
    uint8_t z[32] = {0, 0, 0x0f};
    assert_int_equal(moat_chal_zero_bits(z), 20);
    memset(z, 0, 32);
    assert_int_equal(moat_chal_zero_bits(z), 256);
}

static void test_answer_parser(void **st)
{
    (void)st;
    struct moat_chal_answer a;
    assert_int_equal(moat_chal_parse_answer(MOAT_STR("c=1.abc&n=42&to=%2Fpage%3Fx%3D1%26y"), &a),
                     MOAT_OK);
    assert_true(moat_str_eq(a.c, MOAT_STR("1.abc")));
    assert_true(moat_str_eq(a.n, MOAT_STR("42")));
    assert_string_equal(a.to, "/page?x=1&y");
    assert_int_equal(moat_chal_parse_answer(MOAT_STR("n=1&c=2"), &a), MOAT_OK);
    assert_string_equal(a.to, "/");
    assert_int_equal(moat_chal_parse_answer(MOAT_STR("c=1&n="), &a), MOAT_ERR);
    assert_int_equal(moat_chal_parse_answer(MOAT_STR("c=1&n=2&to=%2F%2Fevil"), &a), MOAT_ERR);
    assert_int_equal(moat_chal_parse_answer(MOAT_STR("c=1&n=2&to=https://evil"), &a), MOAT_ERR);
    assert_int_equal(moat_chal_parse_answer(MOAT_STR("c=1&n=2&to=/a%0d%0aX:y"), &a), MOAT_ERR);
    assert_int_equal(moat_chal_parse_answer(MOAT_STR("c=1&n=2&to=/a%2"), &a), MOAT_ERR);
    assert_int_equal(moat_chal_parse_answer(MOAT_STR("c=1&n=2&to=%2F%5Cevil"), &a), MOAT_ERR);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket_burst_then_rate),
        cmocka_unit_test(test_bucket_refused_count_keeps_a_flooder_out),
        cmocka_unit_test(test_bucket_peek_and_charge),
        cmocka_unit_test(test_table_evicts_instead_of_growing),
        cmocka_unit_test(test_connection_counts),
        cmocka_unit_test(test_prefix),
        cmocka_unit_test(test_cookie_sign_verify),
        cmocka_unit_test(test_token_and_pow),
        cmocka_unit_test(test_answer_parser),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
