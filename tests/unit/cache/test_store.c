/* test_store.c: unit tests for the shared cache store (includes store.c to reach statics). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cache/store.c"

#include <stdio.h>

#define H(n, v)                                                                                    \
    {                                                                                              \
        MOAT_STR(n), MOAT_STR(v)                                                                   \
    }
#define S(lit) MOAT_STR(lit)
#define NOW    1700000000LL

static struct moat_cache_meta meta_ttl(int64_t ttl)
{
    struct moat_cache_meta m;
    memset(&m, 0, sizeof(m));
    m.resp_time = m.date = NOW;
    m.last_modified = -1;
    m.lifetime = (int32_t)ttl;
    return m;
}

static struct moat_str key_of(char *buf, size_t cap, const char *prefix, int i)
{
    int n = snprintf(buf, cap, "%s%08d", prefix, i);
    return moat_str_make(buf, (size_t)n);
}

/* Inserts a complete object with <body_len> bytes of <fill> and <tags>. */
static void put(struct moat_cache_store *st, struct moat_str key, size_t body_len, char fill,
                const char *tags)
{
    struct moat_cache_obj *o;
    int rc = moat_cache_lookup_or_insert(st, key, NOW, &o);
    assert_int_equal(rc, MOAT_CACHE_MISS);
    struct moat_hdr h[] = {H("Content-Type", "text/plain")};
    struct moat_cache_meta m = meta_ttl(60);
    assert_int_equal(moat_cache_obj_set_head(o, 200, h, 1, &m, moat_str_make(tags, strlen(tags))),
                     MOAT_OK);
    moat_cache_obj_size_hint(o, body_len);
    char buf[4096];
    memset(buf, fill, sizeof(buf));
    while (body_len) {
        size_t k = MOAT_MIN(body_len, sizeof(buf));
        assert_int_equal(moat_cache_obj_append(o, buf, k), MOAT_OK);
        body_len -= k;
    }
    moat_cache_obj_complete(o);
    moat_cache_obj_release(&o);
    assert_null(o);
}

static bool present(struct moat_cache_store *st, struct moat_str key)
{
    struct moat_cache_obj *o;
    int rc = moat_cache_lookup(st, key, NOW, &o);
    moat_cache_obj_release(&o);
    return rc == MOAT_CACHE_HIT;
}

static void test_insert_lookup(void **state)
{
    struct moat_cache_store *st = moat_cache_store_new(NULL);
    assert_non_null(st);
    struct moat_cache_obj *w, *r;
    assert_int_equal(moat_cache_lookup(st, S("k"), NOW, &r), MOAT_CACHE_NOT_FOUND);
    assert_int_equal(moat_cache_lookup_or_insert(st, S("k"), NOW, &w), MOAT_CACHE_MISS);
    assert_int_equal(moat_cache_obj_state(w), MOAT_CACHE_OBJ_PENDING);
    assert_null(moat_cache_obj_head(w));
    assert_int_equal(moat_cache_lookup_or_insert(st, S("k"), NOW, &r), MOAT_CACHE_HIT);
    assert_ptr_equal(r, w);
    moat_cache_obj_release(&r);
    assert_int_equal(moat_cache_lookup(st, S("K"), NOW, &r), MOAT_CACHE_NOT_FOUND);

    struct moat_hdr h[] = {H("Content-Type", "text/html"),
                           H("Connection", "close, X-Hop"),
                           H("X-Hop", "1"),
                           H("Keep-Alive", "timeout=5"),
                           H("ETag", "\"e1\""),
                           H("Age", "3"),
                           H("Content-Length", "11"),
                           H("Vary", "Accept-Encoding"),
                           H("Transfer-Encoding", "chunked")};
    struct moat_cache_meta m = meta_ttl(60);
    assert_int_equal(moat_cache_obj_set_head(w, 200, h, MOAT_ARRAY_LEN(h), &m, S(" a, b  c,")),
                     MOAT_OK);
    const struct moat_cache_head *hd = moat_cache_obj_head(w);
    assert_non_null(hd);
    assert_int_equal(hd->status, 200);
    const char want[] = "Content-Type: text/html\r\nETag: \"e1\"\r\nVary: Accept-Encoding\r\n";
    assert_int_equal(hd->block_len, sizeof(want) - 1);
    assert_memory_equal(moat_cache_head_block(hd).ptr, want, hd->block_len);
    assert_true(moat_str_eq(moat_cache_head_etag(hd), S("\"e1\"")));
    assert_true(moat_str_eq(moat_cache_head_vary(hd), S("Accept-Encoding")));
    assert_true(moat_str_eq(moat_cache_head_tags(hd), S("a b c")));
    assert_int_equal(moat_cache_obj_expected_len(w), 11); /* from Content-Length */
    size_t pos = 0;
    struct moat_hdr x;
    int n = 0;
    while (moat_cache_head_next(hd, &pos, &x))
        n++;
    assert_int_equal(n, 3);
    assert_int_equal(moat_cache_obj_append(w, "hello ", 6), MOAT_OK);
    assert_int_equal(moat_cache_obj_append(w, "world", 5), MOAT_OK);
    moat_cache_obj_complete(w);
    assert_int_equal(moat_cache_obj_state(w), MOAT_CACHE_OBJ_COMPLETE);
    assert_int_equal(moat_cache_obj_body_len(w), 11);
    assert_int_equal(moat_cache_obj_expected_len(w), 11);

    assert_int_equal(moat_cache_lookup(st, S("k"), NOW, &r), MOAT_CACHE_HIT);
    struct moat_cache_cursor cur = {0};
    struct moat_str out;
    char got[32];
    size_t gl = 0;
    for (moat_cache_obj_read(r, &cur, &out); out.len; moat_cache_obj_read(r, &cur, &out)) {
        memcpy(got + gl, out.ptr, out.len);
        gl += out.len;
    }
    assert_int_equal(gl, 11);
    assert_memory_equal(got, "hello world", 11);
    moat_cache_cursor_seek(r, &cur, 6);
    moat_cache_obj_read(r, &cur, &out);
    assert_true(moat_str_eq(out, S("world")));
    assert_true(moat_str_eq(moat_cache_obj_key(r), S("k")));
    assert_int_equal(moat_cache_obj_decide(r, NULL, NOW + 10), MOAT_CACHE_FRESH);
    assert_int_equal(moat_cache_obj_decide(r, NULL, NOW + 60), MOAT_CACHE_MUST_FORWARD);
    moat_cache_obj_release(&r);
    moat_cache_obj_release(&w);

    struct moat_cache_stats s;
    moat_cache_store_stats(st, &s);
    assert_int_equal(s.objects, 1);
    assert_int_equal(s.inserts, 1);
    assert_int_equal(s.hits, 2);
    assert_int_equal(s.misses, 3);
    moat_cache_store_free(st);
}

static void test_collision(void **state)
{
    struct moat_cache_store *st = moat_cache_store_new(&(struct moat_cache_store_cfg){.shards = 4});
    /* Forge an object for key "B" that carries the hash of key "A": a 64-bit collision. */
    uint64_t ha = moat_cache_key_hash(S("A"));
    struct shard *sh = shard_of(st, ha);
    pthread_mutex_lock(&sh->lock);
    struct moat_cache_obj *fake = obj_new(st, ha, S("B"));
    atomic_store(&fake->refs, 1);
    link_obj(st, sh, fake);
    pthread_mutex_unlock(&sh->lock);

    struct moat_cache_obj *o;
    assert_int_equal(moat_cache_lookup(st, S("A"), NOW, &o), MOAT_CACHE_NOT_FOUND);
    assert_int_equal(moat_cache_lookup_or_insert(st, S("A"), NOW, &o), MOAT_CACHE_MISS);
    assert_ptr_not_equal(o, fake);
    assert_true(moat_str_eq(moat_cache_obj_key(o), S("A")));
    struct moat_cache_obj *again;
    assert_int_equal(moat_cache_lookup(st, S("A"), NOW, &again), MOAT_CACHE_HIT);
    assert_ptr_equal(again, o);
    moat_cache_obj_release(&again);
    moat_cache_obj_abort(o);
    moat_cache_obj_release(&o);
    /* the real "B" has a different hash and does not find the forged entry either */
    assert_int_equal(moat_cache_lookup(st, S("B"), NOW, &o), MOAT_CACHE_NOT_FOUND);
    moat_cache_store_free(st);
}

static void test_release_after_evict(void **state)
{
    struct moat_cache_store *st = moat_cache_store_new(NULL);
    put(st, S("x"), 5000, 'x', "");
    struct moat_cache_obj *r;
    assert_int_equal(moat_cache_lookup(st, S("x"), NOW, &r), MOAT_CACHE_HIT);
    struct moat_cache_stats a, b, c;
    moat_cache_store_stats(st, &a);
    assert_int_equal(moat_cache_purge_key(st, S("x"), 0), MOAT_OK);
    assert_int_equal(moat_cache_purge_key(st, S("x"), 0), MOAT_DECLINED);
    assert_false(present(st, S("x")));
    moat_cache_store_stats(st, &b);
    assert_true(b.bytes < a.bytes);                 /* no longer charged to the budget... */
    assert_int_equal(b.bytes_alloc, a.bytes_alloc); /* ...but still allocated */
    /* still fully readable by the holder */
    struct moat_cache_cursor cur = {0};
    struct moat_str out;
    size_t total = 0;
    for (moat_cache_obj_read(r, &cur, &out); out.len; moat_cache_obj_read(r, &cur, &out)) {
        for (size_t i = 0; i < out.len; i++)
            assert_int_equal(out.ptr[i], 'x');
        total += out.len;
    }
    assert_int_equal(total, 5000);
    struct moat_cache_obj *r2 = moat_cache_obj_ref(r);
    moat_cache_obj_release(&r);
    moat_cache_store_stats(st, &c);
    assert_int_equal(c.bytes_alloc, a.bytes_alloc);
    moat_cache_obj_release(&r2);
    moat_cache_store_stats(st, &c);
    assert_true(c.bytes_alloc < a.bytes_alloc - 5000);
    moat_cache_store_free(st);
}

/* The same workload on a plain LRU of the same object capacity, for comparison. */
struct lru {
    int64_t keys[512];
    uint64_t stamp[512];
    size_t n, cap;
    uint64_t clock;
};

static bool lru_get(struct lru *l, int64_t k)
{
    size_t oldest = 0;
    for (size_t i = 0; i < l->n; i++) {
        if (l->keys[i] == k) {
            l->stamp[i] = ++l->clock;
            return true;
        }
        if (l->stamp[i] < l->stamp[oldest])
            oldest = i;
    }
    size_t slot = l->n < l->cap ? l->n++ : oldest;
    l->keys[slot] = k;
    l->stamp[slot] = ++l->clock;
    return false;
}

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* A hot set of 50 objects read at random, interleaved 1:1 with a crawler that never reads
 * the same URL twice, in a store that fits 100 objects. SIEVE keeps the hot set (one-hit
 * wonders are never visited and go first); LRU lets the scan push hot objects out. */
static void test_scan_resistance(void **state)
{
    const int cap = 100, hot = 50, steps = 40000;
    char kb[32];
    /* measure one object's charge to size the budget in objects */
    struct moat_cache_store *probe =
        moat_cache_store_new(&(struct moat_cache_store_cfg){.shards = 1});
    put(probe, key_of(kb, sizeof(kb), "h", 0), 200, 'h', "");
    struct moat_cache_obj *o;
    moat_cache_lookup(probe, key_of(kb, sizeof(kb), "h", 0), NOW, &o);
    size_t charge = moat_cache_obj_charge(o);
    moat_cache_obj_release(&o);
    moat_cache_store_free(probe);

    size_t table = 256 * sizeof(void *); /* the bucket array once grown past 128 objects */
    struct moat_cache_store *st = moat_cache_store_new(&(struct moat_cache_store_cfg){
        .shards = 1, .max_bytes = cap * charge + table, .max_object = 1024});
    struct lru l = {.cap = (size_t)cap + 10}; /* LRU gets the benefit of the doubt */
    int sieve_hits = 0, lru_hits = 0, lookups = 0, scan = 0;
    for (int t = 0; t < steps; t++) {
        bool is_hot = rng() & 1;
        int id = is_hot ? (int)(rng() % (uint64_t)hot) : 1000000 + scan++;
        struct moat_str k = key_of(kb, sizeof(kb), is_hot ? "h" : "s", id);
        int rc = moat_cache_lookup_or_insert(st, k, NOW, &o);
        if (rc == MOAT_CACHE_MISS) {
            struct moat_cache_meta m = meta_ttl(60);
            moat_cache_obj_set_head(o, 200, NULL, 0, &m, MOAT_STR_NULL);
            moat_cache_obj_size_hint(o, 200);
            char body[200];
            memset(body, 'b', sizeof(body));
            moat_cache_obj_append(o, body, sizeof(body));
            moat_cache_obj_complete(o);
        }
        moat_cache_obj_release(&o);
        bool lh = lru_get(&l, is_hot ? id : -id);
        if (is_hot && t > steps / 2) {
            lookups++;
            sieve_hits += rc == MOAT_CACHE_HIT;
            lru_hits += lh;
        }
    }
    struct moat_cache_stats s;
    moat_cache_store_stats(st, &s);
    double sr = (double)sieve_hits / lookups, lr = (double)lru_hits / lookups;
    printf("   scan resistance: hot hit ratio SIEVE %.3f, LRU %.3f; objects %llu, bytes %llu/%zu,"
           " evictions %llu\n",
           sr, lr, (unsigned long long)s.objects, (unsigned long long)s.bytes, cap * charge + table,
           (unsigned long long)s.evictions);
    assert_true(sr > 0.97);
    assert_true(lr < 0.85);
    assert_true(s.bytes <= cap * charge + table);
    moat_cache_store_free(st);
}

static void test_budget(void **state)
{
    const size_t budget = 256 * 1024;
    struct moat_cache_store *st =
        moat_cache_store_new(&(struct moat_cache_store_cfg){.max_bytes = budget, .shards = 16});
    char kb[32];
    for (int i = 0; i < 2000; i++) {
        put(st, key_of(kb, sizeof(kb), "/obj/", i), 1024, 'z', "");
        struct moat_cache_stats s;
        moat_cache_store_stats(st, &s);
        assert_true(s.bytes <= budget);
    }
    struct moat_cache_stats s;
    moat_cache_store_stats(st, &s);
    assert_true(s.evictions > 1500);
    assert_true(s.objects > 100 && s.objects < 250);
    assert_int_equal(s.objects + s.evictions, 2000);
    /* the latest insert is there */
    assert_true(present(st, key_of(kb, sizeof(kb), "/obj/", 1999)));
    /* an object larger than max_object is refused mid-stream and aborted */
    struct moat_cache_obj *o;
    assert_int_equal(moat_cache_lookup_or_insert(st, S("big"), NOW, &o), MOAT_CACHE_MISS);
    struct moat_cache_meta m = meta_ttl(60);
    moat_cache_obj_set_head(o, 200, NULL, 0, &m, MOAT_STR_NULL);
    static char big[20000];
    assert_int_equal(moat_cache_obj_append(o, big, sizeof(big)), MOAT_DECLINED);
    assert_int_equal(moat_cache_obj_state(o), MOAT_CACHE_OBJ_ABORTED);
    moat_cache_obj_release(&o);
    assert_false(present(st, S("big")));
    moat_cache_store_free(st);
}

struct counter {
    int calls;
    int last_state;
    struct moat_cache_obj *obj;
};

static void count_cb(void *arg)
{
    struct counter *c = arg;
    c->calls++;
    /* reading the state is fine (an atomic load); calling into the store's locking API is not */
    c->last_state = (int)atomic_load(&c->obj->state);
}

static void test_streaming_subscribe(void **state)
{
    struct moat_cache_store *st = moat_cache_store_new(NULL);
    struct moat_cache_obj *w, *r;
    moat_cache_lookup_or_insert(st, S("s"), NOW, &w);
    moat_cache_lookup_or_insert(st, S("s"), NOW, &r);
    struct counter c = {.obj = r};
    struct moat_cache_waiter wt = {.cb = count_cb, .arg = &c};
    assert_int_equal(moat_cache_obj_subscribe(r, &wt), MOAT_OK);
    struct moat_cache_meta m = meta_ttl(60);
    moat_cache_obj_set_head(w, 200, NULL, 0, &m, MOAT_STR_NULL);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.last_state, MOAT_CACHE_OBJ_STREAMING);
    struct moat_cache_cursor cur = {0};
    struct moat_str out;
    moat_cache_obj_read(r, &cur, &out);
    assert_int_equal(out.len, 0);
    /* no size hint: chunks grow; the reader sees bytes as they come */
    char piece[700];
    for (int i = 0; i < 20; i++) {
        memset(piece, 'a' + i, sizeof(piece));
        assert_int_equal(moat_cache_obj_append(w, piece, sizeof(piece)), MOAT_OK);
        assert_int_equal(c.calls, 2 + i);
        size_t got = 0;
        for (moat_cache_obj_read(r, &cur, &out); out.len; moat_cache_obj_read(r, &cur, &out)) {
            for (size_t j = 0; j < out.len; j++)
                assert_int_equal(out.ptr[j], 'a' + i);
            got += out.len;
        }
        assert_int_equal(got, sizeof(piece));
    }
    assert_int_equal(moat_cache_obj_expected_len(r), UINT64_MAX);
    moat_cache_obj_complete(w);
    assert_int_equal(c.calls, 22);
    assert_int_equal(c.last_state, MOAT_CACHE_OBJ_COMPLETE);
    assert_null(atomic_load(&wt.obj)); /* final state unlinks waiters */
    moat_cache_obj_unsubscribe(&wt);   /* harmless */
    struct moat_cache_waiter w2 = {.cb = count_cb, .arg = &c};
    assert_int_equal(moat_cache_obj_subscribe(r, &w2), MOAT_DONE);
    /* slack of the geometric chunks stays bounded */
    size_t ch = moat_cache_obj_charge(r);
    assert_true(ch < 14000 * 3 / 2 + 1024);
    printf("   14000-byte body of unknown length in 700-byte appends: charge %zu\n", ch);
    /* unsubscribe before any event: never called */
    struct moat_cache_obj *w3, *r3;
    moat_cache_lookup_or_insert(st, S("t"), NOW, &w3);
    moat_cache_lookup_or_insert(st, S("t"), NOW, &r3);
    struct counter c3 = {.obj = r3};
    struct moat_cache_waiter wt3 = {.cb = count_cb, .arg = &c3};
    moat_cache_obj_subscribe(r3, &wt3);
    moat_cache_obj_unsubscribe(&wt3);
    moat_cache_obj_set_head(w3, 200, NULL, 0, &m, MOAT_STR_NULL);
    assert_int_equal(c3.calls, 0);
    moat_cache_obj_abort(w3);
    assert_int_equal(c3.calls, 0);
    moat_cache_obj_release(&r3);
    moat_cache_obj_release(&w3);
    moat_cache_obj_release(&r);
    moat_cache_obj_release(&w);
    moat_cache_store_free(st);
}

static void test_abort_and_pass(void **state)
{
    struct moat_cache_store *st = moat_cache_store_new(NULL);
    struct moat_cache_obj *w, *r;
    struct moat_cache_meta m = meta_ttl(60);
    /* abort mid-body: readers learn it, key gone */
    moat_cache_lookup_or_insert(st, S("a"), NOW, &w);
    moat_cache_lookup_or_insert(st, S("a"), NOW, &r);
    struct counter c = {.obj = r};
    struct moat_cache_waiter wt = {.cb = count_cb, .arg = &c};
    moat_cache_obj_subscribe(r, &wt);
    moat_cache_obj_set_head(w, 200, NULL, 0, &m, MOAT_STR_NULL);
    moat_cache_obj_append(w, "abc", 3);
    moat_cache_obj_abort(w);
    assert_int_equal(c.last_state, MOAT_CACHE_OBJ_ABORTED);
    assert_int_equal(moat_cache_obj_state(r), MOAT_CACHE_OBJ_ABORTED);
    assert_int_equal(moat_cache_obj_append(w, "d", 1), MOAT_ERR);
    moat_cache_obj_unsubscribe(&wt);
    moat_cache_obj_release(&r);
    moat_cache_obj_release(&w);
    assert_int_equal(moat_cache_lookup_or_insert(st, S("a"), NOW, &w), MOAT_CACHE_MISS);
    moat_cache_obj_abort(w);
    moat_cache_obj_release(&w);

    /* uncacheable, hit-for-pass for 10 s: waiters go to origin, later requests too */
    moat_cache_lookup_or_insert(st, S("p"), NOW, &w);
    moat_cache_lookup_or_insert(st, S("p"), NOW, &r);
    c = (struct counter){.obj = r};
    moat_cache_obj_subscribe(r, &wt);
    moat_cache_obj_abandon(w, NOW, 10);
    assert_int_equal(c.last_state, MOAT_CACHE_OBJ_PASS);
    moat_cache_obj_unsubscribe(&wt);
    moat_cache_obj_release(&r);
    moat_cache_obj_release(&w);
    assert_int_equal(moat_cache_lookup_or_insert(st, S("p"), NOW + 9, &r), MOAT_CACHE_PASS);
    assert_null(r);
    assert_int_equal(moat_cache_lookup(st, S("p"), NOW + 9, &r), MOAT_CACHE_PASS);
    assert_int_equal(moat_cache_lookup_or_insert(st, S("p"), NOW + 10, &w), MOAT_CACHE_MISS);
    moat_cache_obj_abandon(w, NOW + 10, 0); /* no marker this time */
    moat_cache_obj_release(&w);
    assert_int_equal(moat_cache_lookup(st, S("p"), NOW + 10, &r), MOAT_CACHE_NOT_FOUND);
    struct moat_cache_stats s;
    moat_cache_store_stats(st, &s);
    assert_int_equal(s.passes, 2);
    assert_int_equal(s.aborted, 2);
    moat_cache_store_free(st);
}

static void test_replace_and_refresh(void **state)
{
    struct moat_cache_store *st = moat_cache_store_new(NULL);
    put(st, S("r"), 100, 'o', "");
    struct moat_cache_obj *old, *n1, *n2;
    moat_cache_lookup(st, S("r"), NOW, &old);
    /* background refresh (stale-while-revalidate): one claimer, old stays visible */
    assert_true(moat_cache_obj_claim_refresh(old));
    assert_false(moat_cache_obj_claim_refresh(old));
    assert_int_equal(moat_cache_replace(st, old, NOW, MOAT_CACHE_R_DEFERRED, &n1), MOAT_CACHE_MISS);
    struct moat_cache_obj *seen;
    moat_cache_lookup(st, S("r"), NOW, &seen);
    assert_ptr_equal(seen, old);
    moat_cache_obj_release(&seen);
    /* the 304 case: new head, body adopted from the old object, no copy */
    struct moat_cache_meta m = meta_ttl(120);
    assert_int_equal(moat_cache_obj_adopt_body(n1, old), MOAT_OK);
    struct moat_hdr cl[] = {H("Content-Length", "100")};
    moat_cache_obj_set_head(n1, 200, cl, 1, &m, MOAT_STR_NULL);
    moat_cache_lookup(st, S("r"), NOW, &seen);
    assert_ptr_equal(seen, n1);
    moat_cache_obj_release(&seen);
    assert_int_equal(moat_cache_obj_append(n1, "x", 1), MOAT_ERR);
    moat_cache_obj_complete(n1);
    assert_int_equal(moat_cache_obj_state(n1), MOAT_CACHE_OBJ_COMPLETE);
    assert_int_equal(moat_cache_obj_body_len(n1), 100);
    moat_cache_obj_release(&old); /* n1 keeps the old body alive */
    struct moat_cache_cursor cur = {0};
    struct moat_str out;
    moat_cache_obj_read(n1, &cur, &out);
    assert_int_equal(out.len, 100);
    assert_int_equal(out.ptr[99], 'o');

    /* foreground revalidation collapses: two replacers of n1, one writer */
    assert_int_equal(moat_cache_replace(st, n1, NOW, 0, &n2), MOAT_CACHE_MISS);
    struct moat_cache_obj *j;
    assert_int_equal(moat_cache_replace(st, n1, NOW, 0, &j), MOAT_CACHE_HIT);
    assert_ptr_equal(j, n2);
    moat_cache_obj_release(&j);
    assert_int_equal(moat_cache_obj_adopt_body(n2, n1), MOAT_OK); /* chains flatten */
    moat_cache_obj_set_head(n2, 200, NULL, 0, &m, MOAT_STR_NULL);
    moat_cache_obj_complete(n2);
    moat_cache_obj_release(&n1);
    cur = (struct moat_cache_cursor){0};
    moat_cache_obj_read(n2, &cur, &out);
    assert_int_equal(out.len, 100);
    moat_cache_obj_release(&n2);
    struct moat_cache_stats s;
    moat_cache_store_stats(st, &s);
    assert_int_equal(s.objects, 1);
    moat_cache_store_free(st);
}

static void test_purge_slices(void **state)
{
    struct moat_cache_store *st =
        moat_cache_store_new(&(struct moat_cache_store_cfg){.shards = 64});
    char kb[32];
    for (int i = 0; i < 1000; i++) {
        put(st, key_of(kb, sizeof(kb), "/a/", i), 10, 'a', i % 2 ? "odd all" : "even all");
        put(st, key_of(kb, sizeof(kb), "/b/", i), 10, 'b', i % 2 ? "odd all" : "even all");
    }
    struct moat_cache_purge p = {.kind = MOAT_CACHE_PURGE_PREFIX, .arg = S("/a/")};
    int steps = 0, rc;
    while ((rc = moat_cache_purge_step(st, &p, 50)) == MOAT_AGAIN)
        steps++;
    assert_int_equal(rc, MOAT_OK);
    assert_true(steps > 20);
    assert_int_equal(p.purged, 1000);
    assert_false(present(st, key_of(kb, sizeof(kb), "/a/", 5)));
    assert_true(present(st, key_of(kb, sizeof(kb), "/b/", 5)));

    /* soft purge by tag: objects stay, but are stale */
    p = (struct moat_cache_purge){
        .kind = MOAT_CACHE_PURGE_TAG, .arg = S("odd"), .flags = MOAT_CACHE_PURGE_SOFT};
    while (moat_cache_purge_step(st, &p, 100) == MOAT_AGAIN)
        ;
    assert_int_equal(p.purged, 500);
    struct moat_cache_obj *o;
    assert_int_equal(moat_cache_lookup(st, key_of(kb, sizeof(kb), "/b/", 3), NOW, &o),
                     MOAT_CACHE_HIT);
    assert_true(moat_cache_obj_soft_purged(o));
    assert_int_equal(moat_cache_obj_decide(o, NULL, NOW + 1), MOAT_CACHE_MUST_FORWARD);
    moat_cache_obj_release(&o);
    moat_cache_lookup(st, key_of(kb, sizeof(kb), "/b/", 4), NOW, &o);
    assert_false(moat_cache_obj_soft_purged(o));
    assert_int_equal(moat_cache_obj_decide(o, NULL, NOW + 1), MOAT_CACHE_FRESH);
    moat_cache_obj_release(&o);

    /* hard purge by tag; "al" is not "all" */
    p = (struct moat_cache_purge){.kind = MOAT_CACHE_PURGE_TAG, .arg = S("al")};
    while (moat_cache_purge_step(st, &p, 100) == MOAT_AGAIN)
        ;
    assert_int_equal(p.purged, 0);
    p = (struct moat_cache_purge){.kind = MOAT_CACHE_PURGE_TAG, .arg = S("even")};
    while (moat_cache_purge_step(st, &p, 100) == MOAT_AGAIN)
        ;
    assert_int_equal(p.purged, 500);
    assert_false(present(st, key_of(kb, sizeof(kb), "/b/", 4)));
    assert_true(present(st, key_of(kb, sizeof(kb), "/b/", 3)));

    /* purge all, with inserts between slices (the table grows under the cursor) */
    p = (struct moat_cache_purge){.kind = MOAT_CACHE_PURGE_ALL};
    int extra = 0;
    while (moat_cache_purge_step(st, &p, 7) == MOAT_AGAIN)
        if (extra < 3000)
            put(st, key_of(kb, sizeof(kb), "/c/", extra++), 1, 'c', "");
    struct moat_cache_stats s;
    moat_cache_store_stats(st, &s);
    assert_true(p.purged >= 500);
    for (int i = 1; i < 1000; i += 2)
        assert_false(present(st, key_of(kb, sizeof(kb), "/b/", i)));
    moat_cache_store_free(st);
}

/* ---- Concurrency: N threads miss the same cold key at once -------------------------------- */

#define NTHREADS 32
#define PIECES   200

struct racer {
    struct moat_cache_store *st;
    pthread_barrier_t *bar;
    int result;
    size_t got;
    bool body_ok;
    int final;
    /* the subscriber's own mailbox: the callback only touches this */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending;
};

static void racer_wake(void *arg)
{
    struct racer *r = arg;
    pthread_mutex_lock(&r->mu);
    r->pending++;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void *racer_main(void *arg)
{
    struct racer *r = arg;
    struct moat_cache_obj *o;
    pthread_barrier_wait(r->bar);
    r->result = moat_cache_lookup_or_insert(r->st, S("/cold"), NOW, &o);
    if (r->result == MOAT_CACHE_MISS) {
        struct moat_cache_meta m = meta_ttl(60);
        moat_cache_obj_set_head(o, 200, NULL, 0, &m, MOAT_STR_NULL);
        char piece[100];
        for (int i = 0; i < PIECES; i++) {
            memset(piece, 'A' + i % 26, sizeof(piece));
            moat_cache_obj_append(o, piece, sizeof(piece));
        }
        moat_cache_obj_complete(o);
        moat_cache_obj_release(&o);
        return NULL;
    }
    struct moat_cache_waiter w = {.cb = racer_wake, .arg = r};
    struct moat_cache_cursor cur = {0};
    r->body_ok = true;
    moat_cache_obj_subscribe(o, &w); /* subscribe first, then read: no lost wake-up */
    for (;;) {
        int st = moat_cache_obj_state(o); /* read the state before the bytes */
        struct moat_str out;
        for (moat_cache_obj_read(o, &cur, &out); out.len; moat_cache_obj_read(o, &cur, &out)) {
            for (size_t j = 0; j < out.len; j++)
                if (out.ptr[j] != 'A' + (int)((r->got + j) / 100) % 26)
                    r->body_ok = false;
            r->got += out.len;
        }
        if (st >= MOAT_CACHE_OBJ_COMPLETE) {
            r->final = st;
            break;
        }
        pthread_mutex_lock(&r->mu);
        while (!r->pending)
            pthread_cond_wait(&r->cv, &r->mu);
        r->pending = 0;
        pthread_mutex_unlock(&r->mu);
    }
    moat_cache_obj_unsubscribe(&w);
    moat_cache_obj_release(&o);
    return NULL;
}

static void test_collapsed_threads(void **state)
{
    for (int round = 0; round < 20; round++) {
        struct moat_cache_store *st = moat_cache_store_new(NULL);
        pthread_barrier_t bar;
        pthread_barrier_init(&bar, NULL, NTHREADS);
        static struct racer r[NTHREADS];
        pthread_t th[NTHREADS];
        for (int i = 0; i < NTHREADS; i++) {
            memset(&r[i], 0, sizeof(r[i]));
            r[i].st = st;
            r[i].bar = &bar;
            pthread_mutex_init(&r[i].mu, NULL);
            pthread_cond_init(&r[i].cv, NULL);
            pthread_create(&th[i], NULL, racer_main, &r[i]);
        }
        int writers = 0;
        for (int i = 0; i < NTHREADS; i++) {
            pthread_join(th[i], NULL);
            if (r[i].result == MOAT_CACHE_MISS) {
                writers++;
                continue;
            }
            assert_int_equal(r[i].result, MOAT_CACHE_HIT);
            assert_int_equal(r[i].final, MOAT_CACHE_OBJ_COMPLETE);
            assert_int_equal(r[i].got, 100 * PIECES);
            assert_true(r[i].body_ok);
            pthread_mutex_destroy(&r[i].mu);
            pthread_cond_destroy(&r[i].cv);
        }
        assert_int_equal(writers, 1);
        struct moat_cache_stats s;
        moat_cache_store_stats(st, &s);
        assert_int_equal(s.inserts, 1);
        assert_int_equal(s.hits, NTHREADS - 1);
        pthread_barrier_destroy(&bar);
        moat_cache_store_free(st);
    }
}

/* Many threads on many keys with a small budget: eviction, purge and lookups concurrently
 * (for TSan / ASan more than for assertions). */
struct churn {
    struct moat_cache_store *st;
    int id;
};

static void *churn_main(void *arg)
{
    struct churn *c = arg;
    char kb[32];
    uint64_t x = 0x9E3779B97F4A7C15ull * (uint64_t)(c->id + 1);
    for (int i = 0; i < 3000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        struct moat_str k = key_of(kb, sizeof(kb), "/k/", (int)(x % 500));
        struct moat_cache_obj *o;
        int rc = moat_cache_lookup_or_insert(c->st, k, NOW, &o);
        if (rc == MOAT_CACHE_MISS) {
            struct moat_cache_meta m = meta_ttl(60);
            moat_cache_obj_set_head(o, 200, NULL, 0, &m, S("t"));
            char body[300] = {0};
            moat_cache_obj_append(o, body, sizeof(body));
            if (x & 0x100)
                moat_cache_obj_complete(o);
            else if (x & 0x200)
                moat_cache_obj_abandon(o, NOW, 5);
            else
                moat_cache_obj_abort(o);
        } else if (rc == MOAT_CACHE_HIT) {
            struct moat_cache_cursor cur = {0};
            struct moat_str out;
            do
                moat_cache_obj_read(o, &cur, &out);
            while (out.len);
        }
        moat_cache_obj_release(&o);
        if (c->id == 0 && i % 500 == 0) {
            struct moat_cache_purge p = {.kind = MOAT_CACHE_PURGE_TAG, .arg = S("t")};
            while (moat_cache_purge_step(c->st, &p, 16) == MOAT_AGAIN)
                ;
        }
    }
    return NULL;
}

static void test_churn_threads(void **state)
{
    struct moat_cache_store *st =
        moat_cache_store_new(&(struct moat_cache_store_cfg){.max_bytes = 64 * 1024, .shards = 8});
    pthread_t th[8];
    struct churn c[8];
    for (int i = 0; i < 8; i++) {
        c[i] = (struct churn){st, i};
        pthread_create(&th[i], NULL, churn_main, &c[i]);
    }
    for (int i = 0; i < 8; i++)
        pthread_join(th[i], NULL);
    struct moat_cache_stats s;
    moat_cache_store_stats(st, &s);
    assert_true(s.evictions > 0);
    assert_true(s.bytes <= 64 * 1024 + 8 * 2048);
    moat_cache_store_free(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_insert_lookup),
        cmocka_unit_test(test_collision),
        cmocka_unit_test(test_release_after_evict),
        cmocka_unit_test(test_scan_resistance),
        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_streaming_subscribe),
        cmocka_unit_test(test_abort_and_pass),
        cmocka_unit_test(test_replace_and_refresh),
        cmocka_unit_test(test_purge_slices),
        cmocka_unit_test(test_collapsed_threads),
        cmocka_unit_test(test_churn_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
