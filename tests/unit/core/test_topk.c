/* test_topk.c: unit tests for the Space-Saving sketch and its merge (src/core/topk.c).
 *
 * topk.c is included to check the hash index against the items (its statics). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <cmocka.h>

#include "core/topk.c"

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

/* The number in an item's key ("/key/N"; keys are not NUL-terminated). */
static unsigned key_of(const struct moat_topk_item *it)
{
    char buf[MOAT_TOPK_KEYLEN + 1];
    memcpy(buf, it->key, it->keylen);
    buf[it->keylen] = 0;
    return (unsigned)atoi(buf + 5);
}

static void add_key(struct moat_topk *t, unsigned k)
{
    char key[32];
    int n = snprintf(key, sizeof key, "/key/%u", k);
    moat_topk_add(t, mix(k + 1), moat_str_make(key, (size_t)n));
}

/* Every item can be found through the index, and the heap is a min-heap. */
static void check_structure(const struct moat_topk *t)
{
    for (unsigned i = 0; i < t->n; i++) {
        unsigned s = idx_find(t, t->items[i].hash);
        assert_int_equal(t->idx[s], i + 1);
        assert_int_equal(t->heap[t->pos[i]], i);
    }
    for (unsigned p = 1; p < t->n; p++)
        assert_true(t->items[t->heap[(p - 1) / 2]].count <= t->items[t->heap[p]].count);
    unsigned used = 0;
    for (unsigned s = 0; s < MOAT_TOPK_IDX; s++)
        used += t->idx[s] != 0;
    assert_int_equal(used, t->n);
}

static void test_exact_when_few_keys(void **state)
{
    (void)state;
    struct moat_topk t;
    moat_topk_reset(&t);
    for (unsigned k = 0; k < 10; k++)
        for (unsigned i = 0; i <= k; i++)
            add_key(&t, k);
    assert_int_equal(t.n, 10);
    assert_int_equal(t.total, 55);
    for (unsigned i = 0; i < t.n; i++) {
        unsigned k = key_of(&t.items[i]);
        assert_int_equal(t.items[i].count, k + 1);
        assert_int_equal(t.items[i].err, 0);
    }
    check_structure(&t);
}

/* A Zipf(1.1) stream over 10,000 keys: the Space-Saving guarantees hold. */
static void test_skewed_stream(void **state)
{
    (void)state;
    enum { KEYS = 10000, N = 200000 };
    static double cdf[KEYS];
    static uint32_t truth[KEYS];
    double sum = 0;
    for (unsigned k = 0; k < KEYS; k++)
        cdf[k] = (sum += 1.0 / pow(k + 1, 1.1));
    struct moat_topk t;
    moat_topk_reset(&t);
    uint64_t rng = 42;
    for (unsigned i = 0; i < N; i++) {
        rng = mix(rng + i);
        double u = (double)(rng >> 11) / 9007199254740992.0 * sum;
        unsigned lo = 0, hi = KEYS - 1;
        while (lo < hi) {
            unsigned mid = (lo + hi) / 2;
            if (cdf[mid] < u)
                lo = mid + 1;
            else
                hi = mid;
        }
        truth[lo]++;
        add_key(&t, lo);
    }
    assert_int_equal(t.total, N);
    assert_int_equal(t.n, MOAT_TOPK_K);
    uint64_t counted = 0;
    uint32_t min = UINT32_MAX;
    for (unsigned i = 0; i < t.n; i++) {
        const struct moat_topk_item *it = &t.items[i];
        unsigned k = key_of(it);
        assert_int_equal(it->hash, mix(k + 1));
        /* count over-estimates by at most err */
        assert_true(it->count >= truth[k]);
        assert_true(it->count - it->err <= truth[k]);
        counted += it->count;
        min = MOAT_MIN(min, it->count);
    }
    assert_int_equal(counted, N); /* the counters always add up to the stream */
    assert_true(min <= N / MOAT_TOPK_K);
    /* every key above N/K is there, and the heaviest come out on top after a merge */
    for (unsigned k = 0; k < KEYS; k++) {
        if (truth[k] <= N / MOAT_TOPK_K)
            continue;
        bool found = false;
        for (unsigned i = 0; i < t.n && !found; i++)
            found = t.items[i].hash == mix(k + 1);
        assert_true(found);
    }
    const struct moat_topk_item *lists[1] = {t.items};
    size_t lens[1] = {t.n};
    struct moat_topk_item out[10];
    assert_int_equal(moat_topk_merge(lists, lens, 1, out, 10), 10);
    /* Zipf: key i is the (i+1)th heaviest; the first three are far apart (about 31k, 14k
     * and 9k of 200k), so their order is certain; past N/K the sketch promises no order */
    for (unsigned i = 0; i < 3; i++)
        assert_int_equal(out[i].hash, mix(i + 1));
    check_structure(&t);
}

/* A million distinct keys: the sketch stays K counters, its index stays consistent. */
static void test_bounded_memory(void **state)
{
    (void)state;
    struct moat_topk t;
    moat_topk_reset(&t);
    assert_true(sizeof t < 8192);
    for (unsigned k = 0; k < 1000000; k++) {
        add_key(&t, k);
        if (k % 99991 == 0)
            check_structure(&t);
    }
    assert_int_equal(t.n, MOAT_TOPK_K);
    check_structure(&t);
    moat_topk_reset(&t);
    assert_int_equal(t.n, 0);
    add_key(&t, 7);
    assert_int_equal(t.items[0].count, 1);
    check_structure(&t);
}

static void test_long_keys_are_cut(void **state)
{
    (void)state;
    struct moat_topk t;
    moat_topk_reset(&t);
    char big[300];
    memset(big, 'a', sizeof big);
    moat_topk_add(&t, 1, moat_str_make(big, sizeof big));
    assert_int_equal(t.items[0].keylen, MOAT_TOPK_KEYLEN);
}

static void test_merge_sums_and_sorts(void **state)
{
    (void)state;
    struct moat_topk a, b;
    moat_topk_reset(&a);
    moat_topk_reset(&b);
    for (int i = 0; i < 5; i++)
        add_key(&a, 1);
    for (int i = 0; i < 4; i++)
        add_key(&b, 1);
    for (int i = 0; i < 7; i++)
        add_key(&b, 2);
    add_key(&a, 3);
    const struct moat_topk_item *lists[2] = {a.items, b.items};
    size_t lens[2] = {a.n, b.n};
    struct moat_topk_item out[2];
    assert_int_equal(moat_topk_merge(lists, lens, 2, out, 2), 2);
    assert_int_equal(out[0].hash, mix(1 + 1)); /* key 1: 5 + 4 */
    assert_int_equal(out[0].count, 9);
    assert_int_equal(out[1].hash, mix(2 + 1)); /* key 2: 7; key 3 (1) did not fit */
    assert_int_equal(out[1].count, 7);
}

/* Weighted updates (a sampled stream): counts and the total move by the weight, and a key
 * replacing the minimum inherits its count as the error. */
static void test_weighted(void **state)
{
    (void)state;
    struct moat_topk t;
    moat_topk_reset(&t);
    for (unsigned k = 0; k < MOAT_TOPK_K; k++)
        moat_topk_addw(&t, mix(k + 1), MOAT_STR("/a"), MOAT_STR("/b"), 8);
    assert_int_equal(t.total, 8 * MOAT_TOPK_K);
    assert_int_equal(t.items[0].count, 8);
    assert_int_equal(t.items[0].keylen, 4);
    assert_memory_equal(t.items[0].key, "/a/b", 4);
    moat_topk_addw(&t, mix(1000), MOAT_STR("/new"), MOAT_STR_NULL, 32);
    unsigned s = idx_find(&t, mix(1000));
    assert_true(t.idx[s] != 0);
    const struct moat_topk_item *it = &t.items[t.idx[s] - 1];
    assert_int_equal(it->count, 8 + 32);
    assert_int_equal(it->err, 8);
    check_structure(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_when_few_keys),  cmocka_unit_test(test_skewed_stream),
        cmocka_unit_test(test_bounded_memory),       cmocka_unit_test(test_long_keys_are_cut),
        cmocka_unit_test(test_merge_sums_and_sorts), cmocka_unit_test(test_weighted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
