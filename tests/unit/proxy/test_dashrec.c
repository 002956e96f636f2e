/* test_dashrec.c: the workers' dashboard recorder (src/proxy/dashrec.c): how a request's end
 * is classified, the latency buckets, and the one-second windows the control thread reads
 * (readable during the next second, gone once the worker reuses the window). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#include "proxy/req.h"
#include "proxy/server.h"

#define SEC 1796671661ull
#define US  1000000ull

static struct moat_worker worker;

static int setup(void **state)
{
    (void)state;
    memset(&worker, 0, sizeof worker);
    moat_srv.workers = &worker;
    moat_srv.nworkers = 1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    moat_srv.workers = NULL;
    moat_srv.nworkers = 0;
    return 0;
}

static void end(const char *cache_status, int status, enum moat_xerr xerr, uint64_t at_us,
                const char *target, const char *peer)
{
    static struct moat_req r;
    memset(&r, 0, sizeof r);
    r.w = &worker;
    r.c.status = cache_status;
    r.status = status;
    r.xerr = xerr;
    r.resp_bytes = 100;
    r.authority = MOAT_STR("shop.example");
    r.target = moat_str_make(target, strlen(target));
    snprintf(r.peer_text, sizeof r.peer_text, "%s", peer);
    r.t_start_us = at_us - 40;
    r.t_up_start_us = cache_status && cache_status[0] == 'h' ? 0 : at_us - 3000;
    moat_dashrec_record(&worker.dash, &r, at_us);
}

static void test_classification(void **state)
{
    (void)state;
    uint64_t t = SEC * US;
    end("hit", 200, MOAT_XERR_NONE, t, "/a", "1.2.3.4");
    end("hit; detail=stale-while-revalidate", 200, MOAT_XERR_NONE, t, "/a", "1.2.3.4");
    end("hit; detail=stale-if-error", 200, MOAT_XERR_NONE, t, "/a", "1.2.3.4");
    end("fwd=uri-miss", 200, MOAT_XERR_NONE, t, "/b", "1.2.3.4");
    end("fwd=uri-miss; collapsed", 200, MOAT_XERR_NONE, t, "/b", "1.2.3.4");
    end("fwd=stale; stored", 200, MOAT_XERR_NONE, t, "/b", "1.2.3.4");
    end("fwd=bypass", 200, MOAT_XERR_NONE, t, "/c", "1.2.3.4");
    end(NULL, 404, MOAT_XERR_NONE, t, "/d", "1.2.3.4");
    end("fwd=uri-miss", 502, MOAT_XERR_NONE, t, "/e", "1.2.3.4");
    end(NULL, 200, (enum moat_xerr)1, t, "/f", "1.2.3.4");
    struct moat_dash_sums s;
    moat_dashrec_sum(&s);
    assert_int_equal(s.req[MOAT_DASH_HIT], 1);
    assert_int_equal(s.req[MOAT_DASH_STALE], 2);
    assert_int_equal(s.req[MOAT_DASH_MISS], 3);
    assert_int_equal(s.req[MOAT_DASH_PASS], 2);
    assert_int_equal(s.req[MOAT_DASH_ERROR], 2);
    assert_int_equal(s.bytes[MOAT_DASH_MISS], 300);
    /* the hit's 40 us in its bucket; the rest went to the origin (3 ms) */
    assert_int_equal(s.lat_hit[moat_dash_lat_bucket(40)], 1);
    uint64_t origin = 0;
    for (int i = 0; i < MOAT_DASH_LAT_BUCKETS; i++)
        origin += s.lat_origin[i];
    assert_int_equal(origin, 7);
    assert_int_equal(s.lat_origin[moat_dash_lat_bucket(3000)], 7);
}

static void test_latency_buckets(void **state)
{
    (void)state;
    assert_int_equal(moat_dash_lat_bucket(0), 0);
    assert_int_equal(moat_dash_lat_bucket(16), 0);
    assert_int_equal(moat_dash_lat_bucket(17), 1);
    assert_int_equal(moat_dash_lat_bucket(32), 1);
    assert_int_equal(moat_dash_lat_bucket(33), 2);
    assert_int_equal(moat_dash_lat_bucket(1000), 6); /* (512, 1024] us */
    assert_int_equal(moat_dash_lat_bucket(1025), 7);
    assert_int_equal(moat_dash_lat_bucket(UINT64_MAX), MOAT_DASH_LAT_BUCKETS - 1);
    for (uint64_t us = 1; us < 100000000; us = us * 3 + 1) {
        unsigned b = moat_dash_lat_bucket(us);
        if (b < MOAT_DASH_LAT_BUCKETS - 1)
            assert_true(us <= (16ull << b));
        if (b > 0)
            assert_true(us > (16ull << (b - 1)));
    }
}

static void test_windows(void **state)
{
    (void)state;
    struct moat_topk top[MOAT_DASH_NTOP];
    for (int i = 0; i < 5; i++)
        end("hit", 200, MOAT_XERR_NONE, SEC * US + 100 + i, "/hot", "10.0.0.1");
    end("hit", 200, MOAT_XERR_NONE, SEC * US + 200, "/cold", "10.0.0.2");
    /* nothing for a second nobody recorded */
    assert_false(moat_dashrec_read(0, SEC - 1, top));
    assert_false(moat_dashrec_read(1, SEC, top)); /* no such worker */
    /* the next second: SEC's window is whole and readable */
    end("hit", 200, MOAT_XERR_NONE, (SEC + 1) * US + 5, "/next", "10.0.0.1");
    assert_true(moat_dashrec_read(0, SEC, top));
    assert_int_equal(top[MOAT_DASH_TOP_URL].total, 6);
    assert_int_equal(top[MOAT_DASH_TOP_URL].n, 2);
    assert_int_equal(top[MOAT_DASH_TOP_HOST].n, 1);
    assert_int_equal(top[MOAT_DASH_TOP_CLIENT].n, 2);
    struct moat_topk_item out[2];
    const struct moat_topk_item *lists[1] = {top[MOAT_DASH_TOP_URL].items};
    size_t lens[1] = {top[MOAT_DASH_TOP_URL].n};
    assert_int_equal(moat_topk_merge(lists, lens, 1, out, 2), 2);
    assert_int_equal(out[0].count, 5);
    assert_int_equal(out[0].keylen, strlen("shop.example/hot"));
    assert_memory_equal(out[0].key, "shop.example/hot", out[0].keylen);
    /* two seconds on, the worker reuses SEC's window: it is gone */
    end("hit", 200, MOAT_XERR_NONE, (SEC + 2) * US, "/later", "10.0.0.1");
    assert_false(moat_dashrec_read(0, SEC, top));
    assert_true(moat_dashrec_read(0, SEC + 2, top));
    assert_int_equal(top[MOAT_DASH_TOP_URL].total, 1);
}

/* Past 1,024 requests in a second the sketches take a weighted sample: the totals stay
 * about right, and far fewer updates are made. */
static void test_sampling(void **state)
{
    (void)state;
    struct moat_topk top[MOAT_DASH_NTOP];
    for (int i = 0; i < 100000; i++)
        end("hit", 200, MOAT_XERR_NONE, SEC * US + 10 + (uint64_t)i, i % 4 ? "/x" : "/y",
            "10.0.0.1");
    end("hit", 200, MOAT_XERR_NONE, (SEC + 1) * US, "/z", "10.0.0.1");
    assert_true(moat_dashrec_read(0, SEC, top));
    uint64_t total = top[MOAT_DASH_TOP_URL].total;
    assert_true(total > 90000 && total < 110000);
    struct moat_dash_sums s;
    moat_dashrec_sum(&s);
    assert_int_equal(s.req[MOAT_DASH_HIT], 100001); /* the counters are exact */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_classification, setup, teardown),
        cmocka_unit_test(test_latency_buckets),
        cmocka_unit_test_setup_teardown(test_windows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sampling, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
