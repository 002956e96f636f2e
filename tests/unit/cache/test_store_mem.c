/* test_store_mem.c: measures the store's memory per cached 1 KiB object and its hit cost. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cache/store.c"

#include <stdio.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1 /* the sanitizer's allocator makes RSS and timings meaningless */
#else
#define SANITIZED 0
#endif

#define NOW 1700000000LL

static long rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &size, &res) != 2)
            res = 0;
        fclose(f);
    }
    return res * sysconf(_SC_PAGESIZE);
}

/* Typical response head of a static asset (~190 bytes in wire form). */
static const struct moat_hdr hdrs[] = {
    {MOAT_STR("Content-Type"), MOAT_STR("image/png")},
    {MOAT_STR("Content-Length"), MOAT_STR("1024")},
    {MOAT_STR("ETag"), MOAT_STR("\"5f2c-1a2b3c4d\"")},
    {MOAT_STR("Last-Modified"), MOAT_STR("Sun, 06 Nov 1994 08:49:37 GMT")},
    {MOAT_STR("Cache-Control"), MOAT_STR("public, max-age=86400")},
    {MOAT_STR("Date"), MOAT_STR("Sun, 06 Nov 1994 08:49:37 GMT")},
};

static struct moat_str key_of(char *buf, size_t cap, int i)
{
    /* about what the integrator's key looks like: method class, scheme, host, path */
    int n = snprintf(buf, cap, "G|https|www.example.com|/static/img/%08d.png", i);
    return moat_str_make(buf, (size_t)n);
}

static void fill(struct moat_cache_store *st, int n, size_t *head_block, size_t *keylen)
{
    static char body[1024];
    char kb[96];
    struct moat_cache_meta m;
    memset(&m, 0, sizeof(m));
    m.lifetime = 86400;
    for (int i = 0; i < n; i++) {
        struct moat_cache_obj *o;
        struct moat_str k = key_of(kb, sizeof(kb), i);
        assert_int_equal(moat_cache_lookup_or_insert(st, k, NOW, &o), MOAT_CACHE_MISS);
        assert_int_equal(
            moat_cache_obj_set_head(o, 200, hdrs, MOAT_ARRAY_LEN(hdrs), &m, MOAT_STR_NULL),
            MOAT_OK);
        assert_int_equal(moat_cache_obj_append(o, body, sizeof(body)), MOAT_OK);
        moat_cache_obj_complete(o);
        *head_block = moat_cache_obj_head(o)->block_len;
        *keylen = k.len;
        moat_cache_obj_release(&o);
    }
}

static void measure(int n)
{
    size_t head_block = 0, keylen = 0;
    long before = rss_bytes();
    struct moat_cache_store *st =
        moat_cache_store_new(&(struct moat_cache_store_cfg){.max_bytes = (size_t)2 << 30});
    fill(st, n, &head_block, &keylen);
    long after = rss_bytes();
    struct moat_cache_stats s;
    moat_cache_store_stats(st, &s);
    assert_int_equal(s.objects, (uint64_t)n);
    assert_int_equal(s.evictions, 0);
    double per = (double)(after - before) / n;
    double acct = (double)s.bytes / n;
    printf("   %6d objects of 1 KiB: RSS delta %.0f B/object, accounted %.0f B/object"
           " (body 1024 + head block %zu + key %zu; overhead beyond body and headers: RSS %.0f,"
           " accounted %.0f)\n",
           n, per, acct, head_block, keylen, per - 1024 - (double)head_block,
           acct - 1024 - (double)head_block);
    if (!SANITIZED) {
        assert_true(per < 1536);                             /* below 1.5 KB per object */
        assert_true(acct - 1024 - (double)head_block < 400); /* the overhead target */
    }
    /* hit cost: lookup + read the whole body + release, single thread */
    char kb[96];
    struct timespec t0, t1;
    const int hits = 1000000;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
    uint64_t sum = 0;
    for (int i = 0; i < hits; i++) {
        struct moat_cache_obj *o;
        moat_cache_lookup(st, key_of(kb, sizeof(kb), (int)((uint64_t)i * 7919 % (uint64_t)n)), NOW,
                          &o);
        struct moat_cache_cursor cur = {0};
        struct moat_str out;
        for (moat_cache_obj_read(o, &cur, &out); out.len; moat_cache_obj_read(o, &cur, &out))
            sum += out.len;
        moat_cache_obj_release(&o);
    }
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t1);
    assert_true(sum == (uint64_t)hits * 1024);
    double ns = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / hits;
    printf("   store hit (hash + lookup + read 1 KiB + release): %.0f ns CPU%s\n", ns,
           SANITIZED ? " (sanitized build)" : "");
    moat_cache_store_free(st);
}

static void measure_test(void **state)
{
    measure((int)(intptr_t)*state);
}

static void test_overhead(void **state)
{
    struct moat_cache_store *st = moat_cache_store_new(NULL);
    size_t head_block = 0, keylen = 0;
    fill(st, 1, &head_block, &keylen);
    struct moat_cache_obj *o;
    char kb[96];
    moat_cache_lookup(st, key_of(kb, sizeof(kb), 0), NOW, &o);
    struct moat_cache_head *hd = atomic_load(&o->head);
    size_t charge = moat_cache_obj_charge(o);
    printf("   sizeof: object %zu (key at offset %zu, +key %zu), head %zu (+block %zu), chunk "
           "header %zu\n",
           sizeof(struct moat_cache_obj), offsetof(struct moat_cache_obj, key), keylen,
           sizeof(struct moat_cache_head), (size_t)hd->block_len, sizeof(struct chunk));
    printf("   malloc usable: object %zu, head+first chunk %zu; charge %zu = body 1024 + block %zu"
           " + key %zu + %zu overhead (plus ~%zu B of bucket array per object)\n",
           malloc_usable_size(o), malloc_usable_size(hd), charge, (size_t)hd->block_len, keylen,
           charge - 1024 - hd->block_len - keylen, sizeof(void *) * 2);
    assert_true(charge - 1024 - hd->block_len - keylen <= 400 || SANITIZED);
    moat_cache_obj_release(&o);
    moat_cache_store_free(st);
}

/* Each measurement runs in a fresh child process so that memory freed by an earlier test
 * (and kept by malloc) does not hide the growth. */
static void measure_in_child(int n)
{
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        const struct CMUnitTest t[] = {
            cmocka_unit_test_prestate(measure_test, (void *)(intptr_t)n)};
        _exit(cmocka_run_group_tests_name("child", t, NULL, NULL) ? 1 : 0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void test_rss_10k(void **state)
{
    measure_in_child(10000);
}

static void test_rss_100k(void **state)
{
    measure_in_child(100000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_overhead),
        cmocka_unit_test(test_rss_10k),
        cmocka_unit_test(test_rss_100k),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
