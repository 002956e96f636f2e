/* test_series.c: unit tests for the dashboard's history ring (src/admin/series.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#include "admin/series.h"

static struct moat_series_pt pt(uint64_t t)
{
    struct moat_series_pt p = {.t = t};
    p.req[MOAT_DASH_HIT] = (uint32_t)t * 2;
    p.bytes[MOAT_DASH_ERROR] = t * 1000;
    return p;
}

static void test_fills_in_order(void **state)
{
    (void)state;
    struct moat_series s;
    assert_int_equal(moat_series_init(&s, 900), MOAT_OK);
    assert_int_equal(s.n, 0);
    for (uint64_t t = 1; t <= 10; t++) {
        struct moat_series_pt p = pt(t);
        moat_series_push(&s, &p);
    }
    assert_int_equal(s.n, 10);
    for (size_t i = 0; i < s.n; i++) {
        const struct moat_series_pt *p = moat_series_at(&s, i);
        assert_int_equal(p->t, i + 1);
        assert_int_equal(p->req[MOAT_DASH_HIT], 2 * (i + 1));
        assert_int_equal(p->bytes[MOAT_DASH_ERROR], 1000 * (i + 1));
    }
    moat_series_free(&s);
}

/* Past its capacity the ring keeps the newest <cap> samples, oldest first, and never grows. */
static void test_wraps_keeping_the_newest(void **state)
{
    (void)state;
    struct moat_series s;
    assert_int_equal(moat_series_init(&s, 900), MOAT_OK);
    struct moat_series_pt *mem = s.pts;
    for (uint64_t t = 1; t <= 2000; t++) {
        struct moat_series_pt p = pt(t);
        moat_series_push(&s, &p);
        assert_int_equal(s.n, t < 900 ? t : 900);
        assert_int_equal(moat_series_at(&s, s.n - 1)->t, t);
    }
    assert_ptr_equal(s.pts, mem);
    for (size_t i = 0; i < 900; i++)
        assert_int_equal(moat_series_at(&s, i)->t, 1101 + i);
    moat_series_free(&s);
}

static void test_capacity_one_and_zero(void **state)
{
    (void)state;
    struct moat_series s;
    assert_int_equal(moat_series_init(&s, 0), MOAT_ERR);
    assert_int_equal(moat_series_init(&s, 1), MOAT_OK);
    struct moat_series_pt a = pt(5), b = pt(6);
    moat_series_push(&s, &a);
    moat_series_push(&s, &b);
    assert_int_equal(s.n, 1);
    assert_int_equal(moat_series_at(&s, 0)->t, 6);
    moat_series_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fills_in_order),
        cmocka_unit_test(test_wraps_keeping_the_newest),
        cmocka_unit_test(test_capacity_one_and_zero),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
