/* test_mcache.c: unit tests for the per-thread size-class caches (src/core/mcache.c).
 *
 * mcache.c is included so the tests can look at the lists themselves. Every symbol it
 * defines is then defined here, so the linker never pulls mcache.o out of libmoat.a. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#include "core/mcache.c"

static int teardown(void **state)
{
    (void)state;
    moat_mc_thread_cleanup();
    return 0;
}

static void test_classes_cover_every_size(void **state)
{
    (void)state;
    /* Each size lands in the smallest class that holds it, and no class wastes a third. */
    for (size_t n = 1; n <= MOAT_MC_MAX; n++) {
        unsigned i = class_of(n);
        assert_true(i < NCLASS);
        assert_true(class_size(i) >= n);
        if (i > 0) {
            assert_true(class_size(i - 1) < n);
            assert_true(class_size(i) * 2 <= n * 3 + 16);
        }
    }
    assert_int_equal(class_size(0), 16);
    assert_int_equal(class_size(1), 24);
    assert_int_equal(class_size(NCLASS - 1), MOAT_MC_MAX);
}

static void test_freed_block_comes_back(void **state)
{
    (void)state;
    char *a = moat_mc_alloc(100);
    assert_non_null(a);
    assert_int_equal(moat_mc_size(a), 128);
    assert_int_equal((uintptr_t)a % 16, 0);
    memset(a, 0x5a, 100);
    moat_mc_free(a);
    assert_int_equal(lists[class_of(100)].n, 1);
    char *b = moat_mc_alloc(97); /* same class */
    assert_ptr_equal(a, b);
    assert_int_equal(lists[class_of(100)].n, 0);
    char *c = moat_mc_calloc(10, 10);
    assert_ptr_not_equal(c, b);
    for (int i = 0; i < 100; i++)
        assert_int_equal(c[i], 0);
    moat_mc_free(b);
    moat_mc_free(c);
    moat_mc_free(NULL);
}

static void test_lists_are_bounded(void **state)
{
    (void)state;
    enum { N = 5000 };
    void **p = malloc(N * sizeof *p);
    assert_non_null(p);
    for (int i = 0; i < N; i++)
        assert_non_null(p[i] = moat_mc_alloc(1000));
    for (int i = 0; i < N; i++)
        moat_mc_free(p[i]);
    unsigned i = class_of(1000);
    assert_int_equal(lists[i].n, MOAT_MC_CLASS_BYTES / class_size(i));
    /* The largest class keeps its budget's worth, and never fewer than 4. */
    for (int k = 0; k < 40; k++)
        assert_non_null(p[k] = moat_mc_alloc(MOAT_MC_MAX));
    for (int k = 0; k < 40; k++)
        moat_mc_free(p[k]);
    uint32_t keep = MOAT_MC_CLASS_BYTES / MOAT_MC_MAX;
    assert_int_equal(lists[NCLASS - 1].n, keep < 4 ? 4 : keep);
    free(p);
}

static void test_big_blocks_bypass_the_lists(void **state)
{
    (void)state;
    char *a = moat_mc_alloc(MOAT_MC_MAX + 1);
    assert_non_null(a);
    assert_int_equal(moat_mc_size(a), MOAT_MC_MAX + 1);
    memset(a, 1, MOAT_MC_MAX + 1);
    moat_mc_free(a);
    for (unsigned i = 0; i < NCLASS; i++)
        assert_int_equal(lists[i].n, 0);
    assert_null(moat_mc_alloc(SIZE_MAX - 4));
    assert_null(moat_mc_calloc(SIZE_MAX / 2, 4));
}

static void test_realloc_keeps_bytes(void **state)
{
    (void)state;
    char *a = moat_mc_realloc(NULL, 20);
    assert_non_null(a);
    memcpy(a, "abcdefghijklmnopqrs", 20);
    char *b = moat_mc_realloc(a, 22); /* same class (24): stays */
    assert_ptr_equal(a, b);
    char *c = moat_mc_realloc(b, 5000); /* grows: moves, keeps the bytes */
    assert_non_null(c);
    assert_string_equal(c, "abcdefghijklmnopqrs");
    assert_int_equal(lists[class_of(20)].n, 1); /* the old block was cached */
    char *d = moat_mc_realloc(c, 200000);       /* to a big block */
    assert_string_equal(d, "abcdefghijklmnopqrs");
    char *e = moat_mc_realloc(d, 100000); /* big and still big: stays */
    assert_ptr_equal(d, e);
    char *f = moat_mc_realloc(e, 10); /* back to a class */
    assert_int_equal(memcmp(f, "abcdefghij", 10), 0);
    moat_mc_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_classes_cover_every_size, teardown),
        cmocka_unit_test_teardown(test_freed_block_comes_back, teardown),
        cmocka_unit_test_teardown(test_lists_are_bounded, teardown),
        cmocka_unit_test_teardown(test_big_blocks_bypass_the_lists, teardown),
        cmocka_unit_test_teardown(test_realloc_keeps_bytes, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
