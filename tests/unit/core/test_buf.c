/* test_buf.c: unit tests for byte buffers and their per-thread free lists (src/core/buf.c).
 *
 * buf.c is included so the tests can look at the free lists themselves. Every symbol it
 * defines is then defined here, so the linker never pulls buf.o out of libmoat.a. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <cmocka.h>

#include "core/buf.c"
#include "core/mcache.h"

#define SZ 16384u

static int setup(void **state)
{
    (void)state;
    moat_buf_thread_cleanup();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    moat_buf_thread_cleanup();
    return 0;
}

static struct freelist *list_of(uint32_t cap)
{
    for (int i = 0; i < NLISTS; i++)
        if (lists[i].cap == cap)
            return &lists[i];
    return NULL;
}

static void test_get_gives_empty_storage(void **state)
{
    (void)state;
    struct moat_buf b = {0};
    assert_int_equal(moat_buf_get(&b, SZ), MOAT_OK);
    assert_non_null(b.base);
    assert_int_equal(b.cap, SZ);
    assert_int_equal(b.rpos, 0);
    assert_int_equal(b.wpos, 0);
    assert_int_equal(moat_buf_len(&b), 0);
    assert_int_equal(moat_buf_room(&b), SZ);
    moat_buf_put(&b);
    assert_null(b.base);
    assert_int_equal(b.cap, 0);
    assert_int_equal(b.rpos, 0);
    assert_int_equal(b.wpos, 0);
}

static void test_put_then_get_recycles_same_pointer(void **state)
{
    (void)state;
    struct moat_buf a = {0}, b = {0};
    assert_int_equal(moat_buf_get(&a, SZ), MOAT_OK);
    assert_int_equal(moat_buf_get(&b, SZ), MOAT_OK);
    char *pa = a.base, *pb = b.base;
    assert_ptr_not_equal(pa, pb);
    moat_buf_put(&a);
    moat_buf_put(&b);
    assert_int_equal(list_of(SZ)->n, 2);
    /* LIFO: the most recently returned (warmest) comes back first. */
    assert_int_equal(moat_buf_get(&a, SZ), MOAT_OK);
    assert_ptr_equal(a.base, pb);
    assert_int_equal(moat_buf_get(&b, SZ), MOAT_OK);
    assert_ptr_equal(b.base, pa);
    assert_int_equal(list_of(SZ)->n, 0);
    /* A recycled buffer starts empty whatever it held before. */
    assert_int_equal(a.rpos, 0);
    assert_int_equal(a.wpos, 0);
    moat_buf_put(&a);
    moat_buf_put(&b);
}

static void test_put_of_empty_buf_is_noop(void **state)
{
    (void)state;
    struct moat_buf b = {0};
    moat_buf_put(&b);
    moat_buf_put(&b);
    assert_null(list_of(SZ));
}

static void test_two_sizes_kept_apart(void **state)
{
    (void)state;
    struct moat_buf small = {0}, big = {0};
    assert_int_equal(moat_buf_get(&small, 4096), MOAT_OK);
    assert_int_equal(moat_buf_get(&big, SZ), MOAT_OK);
    char *ps = small.base, *pbig = big.base;
    moat_buf_put(&small);
    moat_buf_put(&big);
    assert_int_equal(list_of(4096)->n, 1);
    assert_int_equal(list_of(SZ)->n, 1);
    assert_int_equal(moat_buf_get(&big, SZ), MOAT_OK);
    assert_ptr_equal(big.base, pbig);
    assert_int_equal(big.cap, SZ);
    assert_int_equal(moat_buf_get(&small, 4096), MOAT_OK);
    assert_ptr_equal(small.base, ps);
    assert_int_equal(small.cap, 4096);
    moat_buf_put(&small);
    moat_buf_put(&big);
}

static void test_fourth_size_is_not_cached(void **state)
{
    (void)state;
    struct moat_buf a = {0}, b = {0}, d = {0}, c = {0};
    assert_int_equal(moat_buf_get(&a, 4096), MOAT_OK);
    assert_int_equal(moat_buf_get(&b, 8192), MOAT_OK);
    assert_int_equal(moat_buf_get(&d, 12288), MOAT_OK);
    moat_buf_put(&a);
    moat_buf_put(&b);
    moat_buf_put(&d);
    /* All three slots taken: a fourth size is malloc'd and freed directly (ASan would
     * report a leak or double free otherwise), and does not disturb the three lists. */
    assert_int_equal(moat_buf_get(&c, 16384), MOAT_OK);
    assert_int_equal(c.cap, 16384);
    memset(c.base, 'x', c.cap);
    moat_buf_put(&c);
    assert_null(c.base);
    assert_null(list_of(16384));
    assert_int_equal(list_of(4096)->n, 1);
    assert_int_equal(list_of(8192)->n, 1);
    assert_int_equal(list_of(12288)->n, 1);
}

static void test_small_buffers_come_from_the_size_classes(void **state)
{
    (void)state;
    /* Up to 2 KiB: mcache.c's classes, sized to the request, never one of the three lists. */
    struct moat_buf a = {0}, b = {0};
    assert_int_equal(moat_buf_get(&a, 300), MOAT_OK);
    assert_true(a.cap >= 300 && a.cap <= 384);
    memset(a.base, 'x', a.cap);
    char *pa = a.base;
    moat_buf_put(&a);
    assert_null(a.base);
    assert_int_equal(a.cap, 0);
    assert_null(list_of(300));
    assert_null(list_of(384));
    assert_int_equal(moat_buf_get(&b, 320), MOAT_OK); /* the same class: the same block */
    assert_ptr_equal(b.base, pa);
    moat_buf_put(&b);
    assert_int_equal(moat_buf_get(&b, 2048), MOAT_OK);
    assert_int_equal(b.cap, 2048);
    moat_buf_put(&b);
    assert_int_equal(lists[0].cap | lists[1].cap | lists[2].cap, 0);
    moat_mc_thread_cleanup();
}

static void test_large_free_list_is_bounded_lower(void **state)
{
    (void)state;
    enum { N = FREE_MAX_LARGE + 8 };
    static struct moat_buf bs[N];
    for (int i = 0; i < N; i++)
        assert_int_equal(moat_buf_get(&bs[i], 128 * 1024), MOAT_OK);
    for (int i = 0; i < N; i++)
        moat_buf_put(&bs[i]);
    /* Large (body) buffers are kept fewer; the rest is freed (ASan checks). */
    assert_int_equal(list_of(128 * 1024)->n, FREE_MAX_LARGE);
}

static void test_free_list_is_bounded(void **state)
{
    (void)state;
    enum { N = FREE_MAX + 40 };
    static struct moat_buf bs[N];
    for (int i = 0; i < N; i++)
        assert_int_equal(moat_buf_get(&bs[i], SZ), MOAT_OK);
    for (int i = 0; i < N; i++)
        moat_buf_put(&bs[i]);
    /* The surplus went back to malloc (ASan checks they were freed, not lost). */
    assert_int_equal(list_of(SZ)->n, FREE_MAX);
}

static void test_len_room_append(void **state)
{
    (void)state;
    struct moat_buf b = {0};
    assert_int_equal(moat_buf_get(&b, 64), MOAT_OK);
    moat_buf_append(&b, "hello ", 6);
    moat_buf_append(&b, "world", 5);
    assert_int_equal(moat_buf_len(&b), 11);
    assert_int_equal(moat_buf_room(&b), 64 - 11);
    assert_memory_equal(moat_buf_rptr(&b), "hello world", 11);
    assert_ptr_equal(moat_buf_wptr(&b), b.base + 11);
    /* Filling to the last byte leaves no room and no overrun. */
    char fill[64 - 11];
    memset(fill, 'z', sizeof fill);
    moat_buf_append(&b, fill, sizeof fill);
    assert_int_equal(moat_buf_room(&b), 0);
    assert_int_equal(moat_buf_len(&b), 64);
    moat_buf_put(&b);
}

static void test_consume_resets_positions_when_empty(void **state)
{
    (void)state;
    struct moat_buf b = {0};
    assert_int_equal(moat_buf_get(&b, 64), MOAT_OK);
    moat_buf_append(&b, "abcdef", 6);
    moat_buf_consume(&b, 2);
    assert_int_equal(b.rpos, 2);
    assert_int_equal(b.wpos, 6);
    assert_int_equal(moat_buf_len(&b), 4);
    assert_memory_equal(moat_buf_rptr(&b), "cdef", 4);
    /* Reading the rest rewinds both positions: the whole capacity is room again without a
     * memmove. */
    moat_buf_consume(&b, 4);
    assert_int_equal(b.rpos, 0);
    assert_int_equal(b.wpos, 0);
    assert_int_equal(moat_buf_room(&b), 64);
    /* Consuming nothing from an empty buffer keeps it at the start. */
    moat_buf_consume(&b, 0);
    assert_int_equal(b.rpos, 0);
    assert_int_equal(b.wpos, 0);
    moat_buf_put(&b);
}

static void test_compact(void **state)
{
    (void)state;
    struct moat_buf b = {0};
    assert_int_equal(moat_buf_get(&b, 16), MOAT_OK);
    moat_buf_append(&b, "0123456789abcdef", 16);
    assert_int_equal(moat_buf_room(&b), 0);
    moat_buf_consume(&b, 10);
    assert_int_equal(moat_buf_room(&b), 0); /* consumed bytes are not room until compacted */
    moat_buf_compact(&b);
    assert_int_equal(b.rpos, 0);
    assert_int_equal(b.wpos, 6);
    assert_int_equal(moat_buf_room(&b), 10);
    assert_memory_equal(moat_buf_rptr(&b), "abcdef", 6);
    /* Overlapping move: more unread bytes than were consumed. */
    moat_buf_append(&b, "ghijklmnop", 10);
    moat_buf_consume(&b, 3);
    moat_buf_compact(&b);
    assert_int_equal(moat_buf_len(&b), 13);
    assert_memory_equal(moat_buf_rptr(&b), "defghijklmnop", 13);
    /* At the start already: nothing moves. */
    char *before = b.base;
    moat_buf_compact(&b);
    assert_ptr_equal(b.base, before);
    assert_int_equal(b.rpos, 0);
    assert_int_equal(b.wpos, 13);
    moat_buf_put(&b);
}

static void test_compact_when_all_consumed_via_rpos(void **state)
{
    (void)state;
    /* rpos can only equal wpos with rpos > 0 if someone moved rpos by hand (the pump does
     * not); compact must still leave a valid empty buffer. */
    struct moat_buf b = {0};
    assert_int_equal(moat_buf_get(&b, 16), MOAT_OK);
    moat_buf_append(&b, "abc", 3);
    b.rpos = 3;
    moat_buf_compact(&b);
    assert_int_equal(b.rpos, 0);
    assert_int_equal(b.wpos, 0);
    moat_buf_put(&b);
}

struct thread_result {
    char *other_ptr;
    char *got;
    unsigned n_after_put;
    unsigned n_after_cleanup;
    uint32_t cap_after_cleanup;
};

static void *thread_body(void *arg)
{
    struct thread_result *r = arg;
    struct moat_buf b = {0};
    /* This thread's lists start empty: it never sees another thread's buffer. */
    if (moat_buf_get(&b, SZ) != MOAT_OK)
        return NULL;
    r->got = b.base;
    moat_buf_put(&b);
    r->n_after_put = list_of(SZ) ? list_of(SZ)->n : 0;
    moat_buf_thread_cleanup();
    r->n_after_cleanup = lists[0].n + lists[1].n + lists[2].n;
    r->cap_after_cleanup = lists[0].cap | lists[1].cap | lists[2].cap;
    return NULL;
}

static void test_lists_are_per_thread_and_cleanup_frees(void **state)
{
    (void)state;
    struct moat_buf b = {0};
    assert_int_equal(moat_buf_get(&b, SZ), MOAT_OK);
    char *mine = b.base;
    moat_buf_put(&b);
    assert_int_equal(list_of(SZ)->n, 1);

    struct thread_result r = {.other_ptr = mine};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, thread_body, &r), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_non_null(r.got);
    assert_ptr_not_equal(r.got, mine); /* ours is still on our list, not free memory */
    assert_int_equal(r.n_after_put, 1);
    assert_int_equal(r.n_after_cleanup, 0);
    assert_int_equal(r.cap_after_cleanup, 0);

    /* Our list is untouched by the other thread's cleanup. */
    assert_int_equal(list_of(SZ)->n, 1);
    assert_int_equal(moat_buf_get(&b, SZ), MOAT_OK);
    assert_ptr_equal(b.base, mine);
    moat_buf_put(&b);

    /* Cleanup frees everything and releases the size slots for other sizes. */
    moat_buf_thread_cleanup();
    assert_int_equal(lists[0].n + lists[1].n + lists[2].n, 0);
    assert_int_equal(lists[0].cap, 0);
    assert_int_equal(lists[1].cap, 0);
    assert_int_equal(lists[2].cap, 0);
    assert_int_equal(moat_buf_get(&b, 4100), MOAT_OK);
    moat_buf_put(&b);
    assert_int_equal(list_of(4100)->n, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_get_gives_empty_storage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_put_then_get_recycles_same_pointer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_put_of_empty_buf_is_noop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_sizes_kept_apart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fourth_size_is_not_cached, setup, teardown),
        cmocka_unit_test_setup_teardown(test_small_buffers_come_from_the_size_classes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_large_free_list_is_bounded_lower, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_list_is_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_len_room_append, setup, teardown),
        cmocka_unit_test_setup_teardown(test_consume_resets_positions_when_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compact_when_all_consumed_via_rpos, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lists_are_per_thread_and_cleanup_frees, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
