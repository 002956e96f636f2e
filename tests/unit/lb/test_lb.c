/* test_lb.c: unit tests for choosing an origin in a pool (src/lb/lb.c): smooth weighted round
 * robin shares, consistent hashing (adding or removing one origin moves only its keys, about
 * 1/(N+1) of them), least outstanding, max_requests, passive ejection and slow start. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "lb/lb-int.h"
#include "proxy/req.h"

static struct moat_lb_origin *mk_origin(const char *pool, int i)
{
    struct moat_cfg_origin co = {.weight = 1};
    snprintf(co.addr.text, sizeof co.addr.text, "10.0.0.%d:80", i);
    co.host = "h";
    co.authority = "h";
    pthread_mutex_lock(&lb_reg.lock);
    struct moat_lb_origin *o = lb_origin_get(pool, &co);
    pthread_mutex_unlock(&lb_reg.lock);
    assert_non_null(o);
    return o;
}

static struct lb_pool *mk_pool(const char *name, struct moat_lb_origin **o, const unsigned *w,
                               size_t n)
{
    pthread_mutex_lock(&lb_reg.lock);
    struct lb_pool *p = lb_pool_get(name);
    pthread_mutex_unlock(&lb_reg.lock);
    assert_non_null(p);
    struct lb_members *m = lb_members_build(o, w, n);
    assert_non_null(m);
    /* No request reads the old list here, so it can go at once (moat retires it). */
    lb_members_free(atomic_exchange(&p->m, m));
    return p;
}

static struct moat_req *mk_req(void)
{
    struct moat_req *r = calloc(1, sizeof *r);
    assert_non_null(r);
    r->peer[10] = r->peer[11] = 0xff;
    return r;
}

static struct moat_cfg_pool defpool(unsigned balance)
{
    struct moat_cfg_pool pc = {.balance = balance, .min_origins = 1, .passive_eject_ms = 30000};
    return pc;
}

static void test_weighted_round_robin(void **state)
{
    (void)state;
    struct moat_lb_origin *o[3] = {mk_origin("wrr", 1), mk_origin("wrr", 2), mk_origin("wrr", 3)};
    unsigned w[3] = {1, 2, 3};
    struct lb_pool *p = mk_pool("wrr", o, w, 3);
    struct moat_cfg_pool pc = defpool(MOAT_BAL_ROUND_ROBIN);
    struct moat_req *r = mk_req();
    unsigned cnt[3] = {0};
    struct moat_lb_origin *prev = NULL;
    unsigned same_in_a_row = 0, worst = 0;
    for (int i = 0; i < 600; i++) {
        bool full = false;
        struct moat_lb_origin *x = lb_pick(r, p, &pc, moat_now_ms(), false, false, &full);
        assert_non_null(x);
        for (int k = 0; k < 3; k++)
            cnt[k] += x == o[k];
        same_in_a_row = x == prev ? same_in_a_row + 1 : 1;
        worst = MOAT_MAX(worst, same_in_a_row);
        prev = x;
    }
    assert_int_equal(cnt[0], 100);
    assert_int_equal(cnt[1], 200);
    assert_int_equal(cnt[2], 300);
    assert_true(worst <= 2); /* smooth: the heavy origin is interleaved, not bunched */
    /* an unusable origin is skipped; the others share its turns */
    atomic_store(&o[2]->up, 0);
    for (int i = 0; i < 30; i++) {
        bool full = false;
        assert_ptr_not_equal(lb_pick(r, p, &pc, moat_now_ms(), false, false, &full), o[2]);
    }
    atomic_store(&o[2]->up, 1);
    free(r);
}

/* Maps 10000 client addresses through pool <p>. */
static void map_keys(struct lb_pool *p, struct moat_lb_origin **out)
{
    struct moat_cfg_pool pc = defpool(MOAT_BAL_HASH);
    struct moat_req *r = mk_req();
    for (uint32_t k = 0; k < 10000; k++) {
        memcpy(r->peer + 12, &k, 4);
        bool full = false;
        out[k] = lb_pick(r, p, &pc, moat_now_ms(), false, false, &full);
        assert_non_null(out[k]);
    }
    free(r);
}

static void test_consistent_hashing(void **state)
{
    (void)state;
    enum { N = 4 };
    struct moat_lb_origin *o[N + 1];
    unsigned w[N + 1];
    for (int i = 0; i <= N; i++) {
        o[i] = mk_origin("ring", 10 + i);
        w[i] = 1;
    }
    static struct moat_lb_origin *before[10000], *after[10000], *removed[10000];
    map_keys(mk_pool("ring", o, w, N), before);
    unsigned share[N] = {0};
    for (int k = 0; k < 10000; k++)
        for (int i = 0; i < N; i++)
            share[i] += before[k] == o[i];
    for (int i = 0; i < N; i++) /* roughly even: within 25% of 2500 each */
        assert_true(share[i] > 1875 && share[i] < 3125);

    map_keys(mk_pool("ring", o, w, N + 1), after);
    unsigned moved = 0;
    for (int k = 0; k < 10000; k++) {
        if (after[k] != before[k]) {
            moved++;
            assert_ptr_equal(after[k], o[N]); /* only to the new origin */
        }
    }
    printf("adding one origin to %d moved %u of 10000 keys (1/(N+1) = 2000)\n", N, moved);
    assert_true(moved > 0 && moved <= 12000 / (N + 1));

    /* removing origin 1 moves only the keys it had */
    struct moat_lb_origin *o2[N - 1] = {o[0], o[2], o[3]};
    map_keys(mk_pool("ring", o2, w, N - 1), removed);
    for (int k = 0; k < 10000; k++)
        if (before[k] != o[1])
            assert_ptr_equal(removed[k], before[k]);

    /* an unusable origin's keys go elsewhere, the rest stay */
    mk_pool("ring", o, w, N);
    atomic_store(&o[3]->up, 0);
    map_keys(mk_pool("ring", o, w, N), after);
    for (int k = 0; k < 10000; k++) {
        assert_ptr_not_equal(after[k], o[3]);
        if (before[k] != o[3])
            assert_ptr_equal(after[k], before[k]);
    }
    atomic_store(&o[3]->up, 1);
}

static void test_least_outstanding_and_max_requests(void **state)
{
    (void)state;
    struct moat_lb_origin *o[2] = {mk_origin("lo", 20), mk_origin("lo", 21)};
    unsigned w[2] = {1, 1};
    struct lb_pool *p = mk_pool("lo", o, w, 2);
    struct moat_cfg_pool pc = defpool(MOAT_BAL_LEAST_OUTSTANDING);
    struct moat_req *r = mk_req();
    atomic_store(&o[0]->inflight, 5);
    bool full = false;
    for (int i = 0; i < 10; i++)
        assert_ptr_equal(lb_pick(r, p, &pc, moat_now_ms(), false, false, &full), o[1]);
    /* max_requests: both at the limit -> none, and <full> says why */
    pc.max_requests = 5;
    atomic_store(&o[1]->inflight, 5);
    full = false;
    assert_null(lb_pick(r, p, &pc, moat_now_ms(), false, false, &full));
    assert_true(full);
    atomic_store(&o[1]->inflight, 4);
    full = false;
    assert_ptr_equal(lb_pick(r, p, &pc, moat_now_ms(), false, false, &full), o[1]);
    /* an origin already tried by the request is not chosen again */
    atomic_store(&o[0]->inflight, 0);
    r->lb.tried[r->lb.ntried++] = o[0];
    assert_ptr_equal(lb_pick(r, p, &pc, moat_now_ms(), false, false, &full), o[1]);
    atomic_store(&o[0]->inflight, 0);
    atomic_store(&o[1]->inflight, 0);
    free(r);
}

static void test_passive_ejection_doubles(void **state)
{
    (void)state;
    struct moat_lb_origin *o = mk_origin("pe", 30);
    struct moat_cfg_pool pc = defpool(MOAT_BAL_ROUND_ROBIN);
    pc.passive_failures = 3;
    pc.passive_eject_ms = 1000;
    uint64_t now = moat_now_ms();
    lb_passive_fail(o, &pc);
    lb_passive_fail(o, &pc);
    assert_true(moat_lb_usable(o, now));
    lb_passive_ok(o, &pc); /* a success resets the streak */
    lb_passive_fail(o, &pc);
    lb_passive_fail(o, &pc);
    assert_true(moat_lb_usable(o, now));
    lb_passive_fail(o, &pc);
    assert_false(moat_lb_usable(o, moat_now_ms()));
    uint64_t first = atomic_load(&o->ejected_until_ms) - moat_now_ms();
    assert_true(first > 900 && first <= 1000);
    assert_true(moat_lb_usable(o, moat_now_ms() + 1001)); /* back after the period */
    for (int i = 0; i < 3; i++)
        lb_passive_fail(o, &pc);
    uint64_t second = atomic_load(&o->ejected_until_ms) - moat_now_ms();
    assert_true(second > 1900 && second <= 2000); /* doubled */
    assert_int_equal(atomic_load(&o->ejected_total), 2);
    assert_int_equal(atomic_load(&o->failures), 8);
    /* off: counted, never ejected */
    struct moat_lb_origin *q = mk_origin("pe", 31);
    pc.passive_failures = 0;
    for (int i = 0; i < 50; i++)
        lb_passive_fail(q, &pc);
    assert_true(moat_lb_usable(q, moat_now_ms()));
}

static void test_slow_start_ramps(void **state)
{
    (void)state;
    struct moat_lb_origin *o[2] = {mk_origin("ss", 40), mk_origin("ss", 41)};
    unsigned w[2] = {1, 1};
    struct lb_pool *p = mk_pool("ss", o, w, 2);
    struct moat_cfg_pool pc = defpool(MOAT_BAL_ROUND_ROBIN);
    pc.slow_start_ms = 100000;
    struct moat_req *r = mk_req();
    atomic_store(&o[1]->up_since_ms, moat_now_ms() - 10000); /* 10% into its ramp */
    unsigned cnt = 0;
    for (int i = 0; i < 2000; i++) {
        bool full = false;
        cnt += lb_pick(r, p, &pc, moat_now_ms(), false, false, &full) == o[1];
    }
    /* about 10% of its 1000 turns (it also fills in when the other is skipped: never here) */
    assert_true(cnt > 40 && cnt < 200);
    atomic_store(&o[1]->up_since_ms, 0);
    cnt = 0;
    for (int i = 0; i < 2000; i++) {
        bool full = false;
        cnt += lb_pick(r, p, &pc, moat_now_ms(), false, false, &full) == o[1];
    }
    assert_int_equal(cnt, 1000);
    free(r);
}

/* The registry is global: free what the tests put in it, so the sanitizer build sees no
 * leak. */
static int teardown_all(void **state)
{
    (void)state;
    for (unsigned i = 0; i < lb_reg.npools; i++) {
        lb_members_free(atomic_load(&lb_reg.pools[i]->m));
        free(lb_reg.pools[i]);
    }
    for (unsigned i = 0; i < lb_reg.norigins; i++) {
        free(lb_reg.origins[i]->o.host);
        free(lb_reg.origins[i]->o.authority);
        free(lb_reg.origins[i]);
    }
    lb_reg.npools = lb_reg.norigins = 0;
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_weighted_round_robin),
        cmocka_unit_test(test_consistent_hashing),
        cmocka_unit_test(test_least_outstanding_and_max_requests),
        cmocka_unit_test(test_passive_ejection_doubles),
        cmocka_unit_test(test_slow_start_ramps),
    };
    return cmocka_run_group_tests(tests, NULL, teardown_all);
}
