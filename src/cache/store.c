/* store.c: sharded hash table of refcounted, streamable cache objects with SIEVE eviction. */
#include "cache/store.h"

#include <assert.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <xxhash.h>

/*
 * Locking, in one place:
 *   shard->lock   the shard's buckets, its SIEVE list and hand, each linked object's
 *                 hnext/newer/older/linked/charge/pass_until, the shard's counters.
 *   stripe lock   (st->stripes[hash & mask]) an object's state transitions and its waiter
 *                 list. Waiter callbacks run under it, which is what makes unsubscribe
 *                 safe (see store.h). Striped rather than per object: a pthread mutex is
 *                 40 bytes and most objects never see a waiter after they complete.
 *   no lock       body reads: the writer publishes bytes with release stores (chunk->len,
 *                 chunk->next, obj->body_len) and readers load body_len with acquire, so
 *                 a reader streaming a hot object never touches a lock.
 * Order: a thread never holds two shard locks, never a shard lock while taking a stripe
 * lock or the reverse. Objects are freed outside every lock.
 *
 * Why mutexes and not spinlocks: the critical sections are short, so an uncontended mutex
 * costs the same one atomic as a spinlock; but a spinlock whose holder gets preempted makes
 * every other worker burn its time slice, and the waiter callbacks (run under the stripe
 * lock) may take a few microseconds for a thousand waiters. 256 shards keep contention
 * rare at 64 worker threads.
 *
 * Why SIEVE (Zhang et al., NSDI 2024) and not S3-FIFO: both are scan resistant and beat LRU
 * on web traces, but SIEVE needs one "visited" bit per object and one list per shard,
 * where S3-FIFO needs two queues, a 2-bit counter and a ghost table of evicted hashes
 * (more memory, more code, one more tuning knob). A hit only sets the visited bit, with a
 * relaxed store and only if not already set: no list move and no lock beyond the lookup,
 * which is what keeps the hit path cheap. Eviction moves a hand from old to new, clears
 * visited bits and evicts the first unvisited object: one-hit wonders from a crawler are
 * never visited and go first, while the hot set keeps getting its bit back.
 *
 * Why per-shard queues with a global budget: a global queue would need a global lock on
 * every insert. Each shard runs its own SIEVE over its ~1/N of the objects (hashing makes
 * the shards statistically alike), the byte budget is one global atomic, and the thread
 * that pushes the total over budget evicts, visiting shards round-robin, one victim each.
 * A per-shard budget would be simpler but would refuse any object larger than
 * max_bytes / shards.
 */

#define OBJ_MAGIC 0x6d6f6263u /* "mobc" */
#define NSTRIPES  1024u
#define HEAD_MAX  65535u /* offsets in struct moat_cache_head are 16-bit */
#define CHUNK_MIN 256u
#define CHUNK_MAX (1024u * 1024u)

#define AF_SOFT_PURGED 0x1u
#define AF_REFRESHING  0x2u

struct chunk {
    _Atomic(struct chunk *) next;
    uint32_t cap;
    _Atomic uint32_t len;
    char data[];
};

/* Field order packs the struct: 14 words, then the small fields, then the key right after
 * them (allocated with offsetof(key), not sizeof, so no tail padding is wasted). */
struct moat_cache_obj {
    struct moat_cache_obj *hnext;         /* bucket chain (shard lock); drop list after unlink */
    struct moat_cache_obj *newer, *older; /* SIEVE list (shard lock) */
    struct moat_cache_store *st;
    uint64_t hash;
    _Atomic(struct moat_cache_head *) head;
    _Atomic(struct chunk *) first;
    struct chunk *tail;                /* writer only */
    _Atomic uint64_t body_len;         /* published body bytes */
    _Atomic uint64_t size_hint;        /* expected body size (writer sets, readers may read) */
    size_t charge;                     /* bytes charged to the budget (shard lock) */
    struct moat_cache_obj *body_src;   /* adopt_body: whose chunks we read */
    struct moat_cache_waiter *waiters; /* stripe lock */
    int64_t pass_until;                /* hit-for-pass expiry (shard lock) */
    _Atomic uint32_t refs;
    uint32_t magic;
    uint32_t keylen;
    _Atomic uint8_t state;   /* enum moat_cache_obj_state; changes under the stripe lock */
    _Atomic uint8_t visited; /* SIEVE bit, set on hit without lock */
    _Atomic uint8_t aflags;  /* AF_* */
    uint8_t linked;          /* in the table (shard lock) */
    uint8_t deferred;        /* link at set_head (writer) */
    char key[];
};

struct shard {
    pthread_mutex_t lock;
    struct moat_cache_obj **buckets;
    size_t nbuckets; /* power of two; only grows (purge cursors rely on it) */
    size_t count;
    struct moat_cache_obj *newest, *oldest, *hand;
    uint64_t hits, misses, passes, inserts, evictions, purged;
} __attribute__((aligned(64)));

struct moat_cache_store {
    struct moat_cache_store_cfg cfg;
    unsigned shard_bits;
    struct shard *shards;
    pthread_mutex_t stripes[NSTRIPES];
    _Atomic uint64_t bytes;       /* charged for linked objects + bucket arrays */
    _Atomic uint64_t bytes_alloc; /* everything allocated for objects + bucket arrays */
    _Atomic uint64_t aborted;
    _Atomic unsigned evict_hand;
};

static inline size_t usable(void *p)
{
    return p ? malloc_usable_size(p) : 0;
}

uint64_t moat_cache_key_hash(struct moat_str key)
{
    return XXH3_64bits(key.ptr, key.len);
}

static inline struct shard *shard_of(struct moat_cache_store *st, uint64_t h)
{
    return &st->shards[st->shard_bits ? h >> (64 - st->shard_bits) : 0];
}

static inline pthread_mutex_t *stripe_of(struct moat_cache_obj *o)
{
    return &o->st->stripes[o->hash & (NSTRIPES - 1)];
}

static inline void check(const struct moat_cache_obj *o)
{
    assert(o && o->magic == OBJ_MAGIC);
    (void)o;
}

/* ---- Store --------------------------------------------------------------------------- */

struct moat_cache_store *moat_cache_store_new(const struct moat_cache_store_cfg *cfg)
{
    struct moat_cache_store *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    if (cfg)
        st->cfg = *cfg;
    if (!st->cfg.max_bytes)
        st->cfg.max_bytes = 512u << 20;
    if (!st->cfg.max_object)
        st->cfg.max_object = st->cfg.max_bytes / 16;
    if (!st->cfg.shards)
        st->cfg.shards = 256;
    if (st->cfg.shards > 4096 || (st->cfg.shards & (st->cfg.shards - 1))) {
        free(st);
        return NULL;
    }
    while ((1u << st->shard_bits) < st->cfg.shards)
        st->shard_bits++;
    if (posix_memalign((void **)&st->shards, 64, st->cfg.shards * sizeof(struct shard))) {
        free(st);
        return NULL;
    }
    memset(st->shards, 0, st->cfg.shards * sizeof(struct shard));
    for (unsigned i = 0; i < st->cfg.shards; i++) {
        struct shard *sh = &st->shards[i];
        pthread_mutex_init(&sh->lock, NULL);
        sh->nbuckets = 16;
        sh->buckets = calloc(sh->nbuckets, sizeof(*sh->buckets));
        if (!sh->buckets) {
            st->cfg.shards = i + 1;
            moat_cache_store_free(st);
            return NULL;
        }
        st->bytes += usable(sh->buckets);
        st->bytes_alloc += usable(sh->buckets);
    }
    for (unsigned i = 0; i < NSTRIPES; i++)
        pthread_mutex_init(&st->stripes[i], NULL);
    return st;
}

static void obj_free(struct moat_cache_obj *o);

void moat_cache_store_free(struct moat_cache_store *st)
{
    if (!st)
        return;
    for (unsigned i = 0; i < st->cfg.shards; i++) {
        struct shard *sh = &st->shards[i];
        struct moat_cache_obj *o = sh->newest;
        while (o) {
            struct moat_cache_obj *next = o->older;
            assert(atomic_load(&o->refs) == 1); /* only the table's reference is left */
            o->linked = 0;
            if (atomic_fetch_sub(&o->refs, 1) == 1)
                obj_free(o);
            o = next;
        }
        free(sh->buckets);
        pthread_mutex_destroy(&sh->lock);
    }
    for (unsigned i = 0; i < NSTRIPES; i++)
        pthread_mutex_destroy(&st->stripes[i]);
    free(st->shards);
    free(st);
}

/* ---- Table (shard lock held) --------------------------------------------------------- */

static struct moat_cache_obj *find(struct shard *sh, uint64_t h, struct moat_str key)
{
    for (struct moat_cache_obj *o = sh->buckets[h & (sh->nbuckets - 1)]; o; o = o->hnext)
        if (o->hash == h && o->keylen == key.len && memcmp(o->key, key.ptr, key.len) == 0)
            return o;
    return NULL;
}

/* Doubling keeps purge cursors valid: a bucket b of the old table splits into b and
 * b + old_size, so continuing at the same index after a growth can revisit objects but
 * never skip one. The rehash runs under the lock; at load factor 1 and 256 shards a shard
 * reaches 40,000 objects only at 10 million objects, so this stays well under a
 * millisecond, and it happens log2 times in a store's life. */
static void maybe_grow(struct moat_cache_store *st, struct shard *sh)
{
    if (sh->count <= sh->nbuckets)
        return;
    size_t nb = sh->nbuckets * 2;
    struct moat_cache_obj **b = calloc(nb, sizeof(*b));
    if (!b)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < sh->nbuckets; i++) {
        struct moat_cache_obj *o = sh->buckets[i];
        while (o) {
            struct moat_cache_obj *next = o->hnext;
            size_t j = o->hash & (nb - 1);
            o->hnext = b[j];
            b[j] = o;
            o = next;
        }
    }
    size_t delta = usable(b) - usable(sh->buckets);
    free(sh->buckets);
    sh->buckets = b;
    sh->nbuckets = nb;
    atomic_fetch_add(&st->bytes, delta);
    atomic_fetch_add(&st->bytes_alloc, delta);
}

static void link_obj(struct moat_cache_store *st, struct shard *sh, struct moat_cache_obj *o)
{
    size_t i = o->hash & (sh->nbuckets - 1);
    o->hnext = sh->buckets[i];
    sh->buckets[i] = o;
    o->newer = NULL;
    o->older = sh->newest;
    if (sh->newest)
        sh->newest->newer = o;
    sh->newest = o;
    if (!sh->oldest)
        sh->oldest = o;
    o->linked = 1;
    sh->count++;
    atomic_fetch_add(&st->bytes, o->charge);
    maybe_grow(st, sh);
}

/* Unlinks <o>; the table's reference now belongs to the caller, who drops it after
 * unlocking (pushing <o> on a drop list through hnext is the usual way). */
static void unlink_obj(struct moat_cache_store *st, struct shard *sh, struct moat_cache_obj *o)
{
    struct moat_cache_obj **pp = &sh->buckets[o->hash & (sh->nbuckets - 1)];
    while (*pp != o)
        pp = &(*pp)->hnext;
    *pp = o->hnext;
    o->hnext = NULL;
    if (sh->hand == o)
        sh->hand = o->newer;
    if (o->newer)
        o->newer->older = o->older;
    else
        sh->newest = o->older;
    if (o->older)
        o->older->newer = o->newer;
    else
        sh->oldest = o->newer;
    o->newer = o->older = NULL;
    o->linked = 0;
    sh->count--;
    atomic_fetch_sub(&st->bytes, o->charge);
}

static void drop_list(struct moat_cache_obj *o)
{
    while (o) {
        struct moat_cache_obj *next = o->hnext;
        o->hnext = NULL;
        moat_cache_obj_release(&o);
        o = next;
    }
}

static bool in_progress(const struct moat_cache_obj *o)
{
    uint8_t s = atomic_load_explicit(&o->state, memory_order_relaxed);
    return s == MOAT_CACHE_OBJ_PENDING || s == MOAT_CACHE_OBJ_STREAMING;
}

/* SIEVE: the hand walks from old to new, clearing visited bits, and evicts the first
 * object without one. Objects still being written are skipped (their writer and readers
 * need them in the table for collapsing). Bounded by two laps. */
static struct moat_cache_obj *sieve_evict(struct moat_cache_store *st, struct shard *sh)
{
    struct moat_cache_obj *o = sh->hand ? sh->hand : sh->oldest;
    for (size_t steps = 0; o && steps < 2 * sh->count + 1; steps++) {
        if (!in_progress(o)) {
            if (!atomic_load_explicit(&o->visited, memory_order_relaxed)) {
                sh->hand = o->newer;
                unlink_obj(st, sh, o);
                sh->evictions++;
                return o;
            }
            atomic_store_explicit(&o->visited, 0, memory_order_relaxed);
        }
        o = o->newer ? o->newer : sh->oldest;
    }
    sh->hand = o;
    return NULL;
}

/* Evicts until the budget holds again, one victim per shard visit. Gives up after a lap
 * of the shards without a victim (everything in progress): the budget is then exceeded by
 * the objects being written, which is bounded by max_object times the fetches in flight. */
static void make_room(struct moat_cache_store *st)
{
    unsigned fails = 0;
    while (atomic_load_explicit(&st->bytes, memory_order_relaxed) > st->cfg.max_bytes &&
           fails < st->cfg.shards) {
        unsigned i = atomic_fetch_add_explicit(&st->evict_hand, 1, memory_order_relaxed);
        struct shard *sh = &st->shards[i & (st->cfg.shards - 1)];
        pthread_mutex_lock(&sh->lock);
        struct moat_cache_obj *v = sieve_evict(st, sh);
        pthread_mutex_unlock(&sh->lock);
        if (v) {
            fails = 0;
            moat_cache_obj_release(&v);
        } else {
            fails++;
        }
    }
}

/* Adds <n> bytes to <o>'s charge and, if it is linked, to the budget. */
static void charge_add(struct moat_cache_obj *o, size_t n, bool allocated)
{
    struct moat_cache_store *st = o->st;
    struct shard *sh = shard_of(st, o->hash);
    pthread_mutex_lock(&sh->lock);
    o->charge += n;
    if (o->linked)
        atomic_fetch_add(&st->bytes, n);
    pthread_mutex_unlock(&sh->lock);
    if (allocated)
        atomic_fetch_add(&st->bytes_alloc, n);
}

static struct moat_cache_obj *obj_new(struct moat_cache_store *st, uint64_t h, struct moat_str key)
{
    if (key.len > UINT32_MAX)
        return NULL;
    struct moat_cache_obj *o = malloc(offsetof(struct moat_cache_obj, key) + key.len);
    if (!o)
        return NULL;
    memset(o, 0, offsetof(struct moat_cache_obj, key));
    o->st = st;
    o->hash = h;
    o->magic = OBJ_MAGIC;
    o->keylen = (uint32_t)key.len;
    if (key.len)
        memcpy(o->key, key.ptr, key.len);
    o->charge = usable(o);
    atomic_fetch_add(&st->bytes_alloc, o->charge);
    return o;
}

static void obj_free(struct moat_cache_obj *o)
{
    struct moat_cache_store *st = o->st;
    assert(!o->waiters && !o->linked);
    size_t n = usable(o);
    struct moat_cache_head *hd = atomic_load_explicit(&o->head, memory_order_relaxed);
    size_t hn = usable(hd);
    if (o->body_src) {
        moat_cache_obj_release(&o->body_src);
    } else {
        struct chunk *c = atomic_load_explicit(&o->first, memory_order_relaxed);
        while (c) {
            struct chunk *next = atomic_load_explicit(&c->next, memory_order_relaxed);
            /* the first chunk may live inside the head's allocation (see set_head) */
            if (!((char *)c >= (char *)hd && (char *)c < (char *)hd + hn)) {
                n += usable(c);
                free(c);
            }
            c = next;
        }
    }
    n += hn;
    free(hd);
    o->magic = 0;
    atomic_fetch_sub(&st->bytes_alloc, n);
    free(o);
}

/* ---- Lookup ------------------------------------------------------------------------- */

/* Looks up under the lock; an expired hit-for-pass marker is unlinked onto *<drop>. */
static struct moat_cache_obj *find_live(struct moat_cache_store *st, struct shard *sh, uint64_t h,
                                        struct moat_str key, int64_t now,
                                        struct moat_cache_obj **drop)
{
    struct moat_cache_obj *o = find(sh, h, key);
    if (o && atomic_load(&o->state) == MOAT_CACHE_OBJ_PASS && now >= o->pass_until) {
        unlink_obj(st, sh, o);
        o->hnext = *drop;
        *drop = o;
        o = NULL;
    }
    return o;
}

static int hit_or_pass(struct shard *sh, struct moat_cache_obj *o, struct moat_cache_obj **out)
{
    if (atomic_load(&o->state) == MOAT_CACHE_OBJ_PASS) {
        sh->passes++;
        *out = NULL;
        return MOAT_CACHE_PASS;
    }
    atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed);
    if (!atomic_load_explicit(&o->visited, memory_order_relaxed))
        atomic_store_explicit(&o->visited, 1, memory_order_relaxed);
    sh->hits++;
    *out = o;
    return MOAT_CACHE_HIT;
}

int moat_cache_lookup_or_insert(struct moat_cache_store *st, struct moat_str key, int64_t now,
                                struct moat_cache_obj **out)
{
    uint64_t h = moat_cache_key_hash(key);
    struct shard *sh = shard_of(st, h);
    struct moat_cache_obj *drop = NULL;
    int rc;
    pthread_mutex_lock(&sh->lock);
    struct moat_cache_obj *o = find_live(st, sh, h, key, now, &drop);
    if (o) {
        rc = hit_or_pass(sh, o, out);
    } else if ((o = obj_new(st, h, key))) {
        /* malloc under the shard lock: ~50 ns, and it keeps insert atomic with the miss */
        atomic_store_explicit(&o->refs, 2, memory_order_relaxed); /* table + writer */
        link_obj(st, sh, o);
        sh->misses++;
        sh->inserts++;
        *out = o;
        rc = MOAT_CACHE_MISS;
    } else {
        *out = NULL;
        rc = MOAT_ERR;
    }
    pthread_mutex_unlock(&sh->lock);
    drop_list(drop);
    if (rc == MOAT_CACHE_MISS)
        make_room(st);
    return rc;
}

int moat_cache_lookup(struct moat_cache_store *st, struct moat_str key, int64_t now,
                      struct moat_cache_obj **out)
{
    uint64_t h = moat_cache_key_hash(key);
    struct shard *sh = shard_of(st, h);
    struct moat_cache_obj *drop = NULL;
    int rc = MOAT_CACHE_NOT_FOUND;
    pthread_mutex_lock(&sh->lock);
    struct moat_cache_obj *o = find_live(st, sh, h, key, now, &drop);
    if (o) {
        rc = hit_or_pass(sh, o, out);
    } else {
        sh->misses++;
        *out = NULL;
    }
    pthread_mutex_unlock(&sh->lock);
    drop_list(drop);
    return rc;
}

int moat_cache_replace(struct moat_cache_store *st, struct moat_cache_obj *old, int64_t now,
                       unsigned flags, struct moat_cache_obj **out)
{
    check(old);
    struct moat_str key = moat_str_make(old->key, old->keylen);
    struct shard *sh = shard_of(st, old->hash);
    struct moat_cache_obj *drop = NULL;
    int rc;
    pthread_mutex_lock(&sh->lock);
    struct moat_cache_obj *cur = find_live(st, sh, old->hash, key, now, &drop);
    if (cur && cur != old) {
        rc = hit_or_pass(sh, cur, out); /* someone replaced it first: join them */
    } else if ((cur = obj_new(st, old->hash, key))) {
        if (flags & MOAT_CACHE_R_DEFERRED) {
            atomic_store_explicit(&cur->refs, 1, memory_order_relaxed);
            cur->deferred = 1;
        } else {
            atomic_store_explicit(&cur->refs, 2, memory_order_relaxed);
            if (old->linked) {
                unlink_obj(st, sh, old);
                old->hnext = drop;
                drop = old;
            }
            link_obj(st, sh, cur);
        }
        sh->inserts++;
        *out = cur;
        rc = MOAT_CACHE_MISS;
    } else {
        *out = NULL;
        rc = MOAT_ERR;
    }
    pthread_mutex_unlock(&sh->lock);
    drop_list(drop);
    if (rc == MOAT_CACHE_MISS)
        make_room(st);
    return rc;
}

bool moat_cache_obj_claim_refresh(struct moat_cache_obj *o)
{
    check(o);
    return !(atomic_fetch_or(&o->aflags, AF_REFRESHING) & AF_REFRESHING);
}

void moat_cache_obj_unclaim_refresh(struct moat_cache_obj *o)
{
    check(o);
    atomic_fetch_and(&o->aflags, (uint8_t)~AF_REFRESHING);
}

struct moat_cache_obj *moat_cache_obj_ref(struct moat_cache_obj *o)
{
    check(o);
    atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed);
    return o;
}

void moat_cache_obj_release(struct moat_cache_obj **op)
{
    struct moat_cache_obj *o = *op;
    if (!o)
        return;
    *op = NULL;
    check(o);
    if (atomic_fetch_sub_explicit(&o->refs, 1, memory_order_acq_rel) == 1)
        obj_free(o);
}

/* ---- Waiters (stripe lock) --------------------------------------------------------------- */

/* Calls every waiter; with <final>, unlinks them all as well. Stripe lock held. */
static void wake(struct moat_cache_obj *o, bool final)
{
    struct moat_cache_waiter *w = o->waiters;
    while (w) {
        struct moat_cache_waiter *next = w->next;
        w->cb(w->arg);
        if (final) {
            /* Last touch of <w>: once its owner sees obj == NULL (acquire, in
             * unsubscribe) it may free <w> without taking our lock. */
            w->prev = w->next = NULL;
            atomic_store_explicit(&w->obj, NULL, memory_order_release);
        }
        w = next;
    }
    if (final)
        o->waiters = NULL;
}

static void set_state(struct moat_cache_obj *o, enum moat_cache_obj_state s)
{
    bool final = s != MOAT_CACHE_OBJ_STREAMING;
    pthread_mutex_lock(stripe_of(o));
    atomic_store_explicit(&o->state, (uint8_t)s, memory_order_release);
    wake(o, final);
    pthread_mutex_unlock(stripe_of(o));
}

int moat_cache_obj_subscribe(struct moat_cache_obj *o, struct moat_cache_waiter *w)
{
    check(o);
    int rc = MOAT_OK;
    pthread_mutex_lock(stripe_of(o));
    if (!in_progress(o)) {
        rc = MOAT_DONE;
    } else {
        w->prev = NULL;
        w->next = o->waiters;
        if (o->waiters)
            o->waiters->prev = w;
        o->waiters = w;
        atomic_store_explicit(&w->obj, o, memory_order_relaxed);
    }
    pthread_mutex_unlock(stripe_of(o));
    return rc;
}

void moat_cache_obj_unsubscribe(struct moat_cache_waiter *w)
{
    /* Only the owner sets w->obj; others only clear it, under the stripe lock of the
     * object the owner still holds a reference on, so <o> is safe to use here. */
    struct moat_cache_obj *o = atomic_load_explicit(&w->obj, memory_order_acquire);
    if (!o)
        return;
    pthread_mutex_lock(stripe_of(o));
    if (atomic_load_explicit(&w->obj, memory_order_relaxed) == o) {
        if (w->prev)
            w->prev->next = w->next;
        else
            o->waiters = w->next;
        if (w->next)
            w->next->prev = w->prev;
        w->prev = w->next = NULL;
        atomic_store_explicit(&w->obj, NULL, memory_order_relaxed);
    }
    pthread_mutex_unlock(stripe_of(o));
}

/* ---- Writer ---------------------------------------------------------------------------- */

/* Fields a stored head leaves out: the hop-by-hop ones (moat_http_hop, and those the
 * Connection field names: RFC 9110 7.6.1), and the ones the integrator states anew on every
 * answer (framing: Content-Length, Trailer; Age). */
static bool hop_by_hop(struct moat_str name, const struct moat_hdr *hdrs, size_t n)
{
    return moat_http_hop(name) || MOAT_STR_IEQ_LIT(name, "trailer") ||
           MOAT_STR_IEQ_LIT(name, "age") || MOAT_STR_IEQ_LIT(name, "content-length") ||
           moat_http_conn_names(hdrs, n, name);
}

static bool tag_sep(char c)
{
    return c == ' ' || c == ',' || c == '\t';
}

static uint64_t tag_bloom_bits(struct moat_str t)
{
    uint64_t h = XXH3_64bits(t.ptr, t.len);
    return (1ull << (h & 63)) | (1ull << ((h >> 6) & 63));
}

static bool parse_cl(struct moat_str v, uint64_t *out)
{
    uint64_t cl = 0;
    if (v.len == 0 || v.len > 18)
        return false;
    for (size_t j = 0; j < v.len; j++) {
        if (v.ptr[j] < '0' || v.ptr[j] > '9')
            return false;
        cl = cl * 10 + (uint64_t)(v.ptr[j] - '0');
    }
    *out = cl;
    return true;
}

int moat_cache_obj_set_head(struct moat_cache_obj *o, int status, const struct moat_hdr *hdrs,
                            size_t n, const struct moat_cache_meta *meta, struct moat_str tags)
{
    check(o);
    assert(atomic_load(&o->state) == MOAT_CACHE_OBJ_PENDING);
    size_t need = tags.len;
    uint64_t cl;
    for (size_t i = 0; i < n; i++) {
        if (MOAT_STR_IEQ_LIT(hdrs[i].name, "content-length") && !atomic_load(&o->size_hint) &&
            parse_cl(hdrs[i].value, &cl))
            atomic_store_explicit(&o->size_hint, cl, memory_order_relaxed);
        if (!hop_by_hop(hdrs[i].name, hdrs, n))
            need += hdrs[i].name.len + hdrs[i].value.len + 4;
    }
    if (need > HEAD_MAX)
        return MOAT_DECLINED;
    /* When the body size is known and small, its chunk shares the head's allocation: one
     * malloc header and one rounding less per object (about 16 bytes of a 1 KiB object). */
    uint64_t hint = atomic_load_explicit(&o->size_hint, memory_order_relaxed);
    size_t chunk_off = (sizeof(struct moat_cache_head) + need + 7) & ~(size_t)7;
    bool inline_body = hint > 0 && hint <= 16384 && !o->tail && !o->body_src;
    size_t total = inline_body ? chunk_off + sizeof(struct chunk) + (size_t)hint
                               : sizeof(struct moat_cache_head) + need;
    struct moat_cache_head *hd = malloc(total);
    if (!hd)
        return MOAT_ERR;
    memset(hd, 0, sizeof(*hd));
    hd->status = (uint16_t)status;
    hd->meta = *meta;
    char *p = hd->data;
    for (size_t i = 0; i < n; i++) {
        const struct moat_hdr *x = &hdrs[i];
        if (hop_by_hop(x->name, hdrs, n))
            continue;
        memcpy(p, x->name.ptr, x->name.len);
        p += x->name.len;
        *p++ = ':';
        *p++ = ' ';
        uint16_t voff = (uint16_t)(p - hd->data);
        memcpy(p, x->value.ptr, x->value.len);
        p += x->value.len;
        *p++ = '\r';
        *p++ = '\n';
        if (MOAT_STR_IEQ_LIT(x->name, "etag") && !hd->etag_len) {
            hd->etag_off = voff;
            hd->etag_len = (uint16_t)x->value.len;
        }
        if (MOAT_STR_IEQ_LIT(x->name, "vary") && !hd->vary_len) {
            hd->vary_off = voff;
            hd->vary_len = (uint16_t)x->value.len;
        }
    }
    hd->block_len = (uint32_t)(p - hd->data);
    char *t0 = p;
    for (size_t i = 0; i < tags.len;) {
        while (i < tags.len && tag_sep(tags.ptr[i]))
            i++;
        size_t s = i;
        while (i < tags.len && !tag_sep(tags.ptr[i]))
            i++;
        if (i > s) {
            if (p > t0)
                *p++ = ' ';
            memcpy(p, tags.ptr + s, i - s);
            hd->tag_bloom |= tag_bloom_bits(moat_str_make(tags.ptr + s, i - s));
            p += i - s;
        }
    }
    hd->tags_len = (uint16_t)(p - t0);
    if (inline_body) {
        struct chunk *c = (struct chunk *)((char *)hd + chunk_off);
        atomic_store_explicit(&c->next, NULL, memory_order_relaxed);
        atomic_store_explicit(&c->len, 0, memory_order_relaxed);
        c->cap = (uint32_t)hint;
        atomic_store_explicit(&o->first, c, memory_order_release);
        o->tail = c;
    }
    atomic_store_explicit(&o->head, hd, memory_order_release);
    charge_add(o, usable(hd), true);
    if (o->deferred) {
        /* stale-while-revalidate refresh: only now does the new object replace the old */
        struct moat_cache_store *st = o->st;
        struct shard *sh = shard_of(st, o->hash);
        struct moat_cache_obj *drop = NULL;
        pthread_mutex_lock(&sh->lock);
        struct moat_cache_obj *cur = find(sh, o->hash, moat_str_make(o->key, o->keylen));
        if (cur) {
            unlink_obj(st, sh, cur);
            drop = cur;
        }
        atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed);
        link_obj(st, sh, o);
        o->deferred = 0;
        pthread_mutex_unlock(&sh->lock);
        drop_list(drop);
    }
    set_state(o, MOAT_CACHE_OBJ_STREAMING);
    make_room(o->st);
    return MOAT_OK;
}

void moat_cache_obj_size_hint(struct moat_cache_obj *o, uint64_t bytes)
{
    check(o);
    atomic_store_explicit(&o->size_hint, bytes, memory_order_relaxed);
}

static void abort_obj(struct moat_cache_obj *o, enum moat_cache_obj_state s)
{
    struct moat_cache_store *st = o->st;
    struct shard *sh = shard_of(st, o->hash);
    struct moat_cache_obj *drop = NULL;
    pthread_mutex_lock(&sh->lock);
    if (o->linked) {
        unlink_obj(st, sh, o);
        drop = o;
    }
    pthread_mutex_unlock(&sh->lock);
    if (s == MOAT_CACHE_OBJ_ABORTED)
        atomic_fetch_add_explicit(&st->aborted, 1, memory_order_relaxed);
    set_state(o, s);
    drop_list(drop); /* the writer still holds a reference: this never frees */
}

int moat_cache_obj_append(struct moat_cache_obj *o, const void *data, size_t len)
{
    check(o);
    if (atomic_load_explicit(&o->state, memory_order_relaxed) != MOAT_CACHE_OBJ_STREAMING ||
        o->body_src)
        return MOAT_ERR;
    uint64_t have = atomic_load_explicit(&o->body_len, memory_order_relaxed);
    if (have + len > o->st->cfg.max_object) {
        abort_obj(o, MOAT_CACHE_OBJ_ABORTED);
        return MOAT_DECLINED;
    }
    const char *src = data;
    size_t charged = 0;
    while (len) {
        struct chunk *t = o->tail;
        uint32_t tl = t ? atomic_load_explicit(&t->len, memory_order_relaxed) : 0;
        if (t && tl < t->cap) {
            size_t k = MOAT_MIN(len, (size_t)(t->cap - tl));
            memcpy(t->data + tl, src, k);
            atomic_store_explicit(&t->len, tl + (uint32_t)k, memory_order_release);
            src += k;
            len -= k;
            have += k;
            atomic_store_explicit(&o->body_len, have, memory_order_release);
            continue;
        }
        /* Chunk sizing: the announced Content-Length when there is one (a 1 KiB body is one
         * 1 KiB chunk), else geometric growth by half of what is there, so a body of
         * unknown length takes O(log n) chunks and the slack stays under a third of it;
         * chunks never exceed 1 MiB so a huge body does not need one huge allocation. */
        uint64_t hint = atomic_load_explicit(&o->size_hint, memory_order_relaxed);
        uint64_t want = hint > have ? hint - have : 0;
        if (want < len)
            want = MOAT_MAX((uint64_t)len, MOAT_MAX(have / 2, (uint64_t)CHUNK_MIN));
        size_t cap = (size_t)MOAT_MIN(want, (uint64_t)CHUNK_MAX);
        struct chunk *c = malloc(sizeof(*c) + cap);
        if (!c) {
            abort_obj(o, MOAT_CACHE_OBJ_ABORTED);
            return MOAT_ERR;
        }
        atomic_store_explicit(&c->next, NULL, memory_order_relaxed);
        atomic_store_explicit(&c->len, 0, memory_order_relaxed);
        c->cap = (uint32_t)cap;
        charge_add(o, usable(c), true);
        charged++;
        if (t)
            atomic_store_explicit(&t->next, c, memory_order_release);
        else
            atomic_store_explicit(&o->first, c, memory_order_release);
        o->tail = c;
    }
    pthread_mutex_lock(stripe_of(o));
    wake(o, false);
    pthread_mutex_unlock(stripe_of(o));
    if (charged)
        make_room(o->st);
    return MOAT_OK;
}

void moat_cache_obj_complete(struct moat_cache_obj *o)
{
    check(o);
    assert(atomic_load(&o->state) == MOAT_CACHE_OBJ_STREAMING);
    atomic_store_explicit(&o->size_hint, atomic_load(&o->body_len), memory_order_relaxed);
    set_state(o, MOAT_CACHE_OBJ_COMPLETE);
}

void moat_cache_obj_abort(struct moat_cache_obj *o)
{
    check(o);
    if (in_progress(o))
        abort_obj(o, MOAT_CACHE_OBJ_ABORTED);
}

void moat_cache_obj_abandon(struct moat_cache_obj *o, int64_t now, int64_t pass_ttl)
{
    check(o);
    if (!in_progress(o))
        return;
    if (pass_ttl <= 0) {
        abort_obj(o, MOAT_CACHE_OBJ_PASS);
        return;
    }
    struct shard *sh = shard_of(o->st, o->hash);
    pthread_mutex_lock(&sh->lock);
    o->pass_until = now + pass_ttl; /* stays linked as the hit-for-pass marker */
    pthread_mutex_unlock(&sh->lock);
    set_state(o, MOAT_CACHE_OBJ_PASS);
}

int moat_cache_obj_adopt_body(struct moat_cache_obj *o, struct moat_cache_obj *src)
{
    check(o);
    check(src);
    if (atomic_load(&src->state) != MOAT_CACHE_OBJ_COMPLETE || o->tail || o->body_src ||
        atomic_load(&o->state) != MOAT_CACHE_OBJ_PENDING)
        return MOAT_ERR;
    /* Follow src's own source so chains never grow: o reads the original chunks. */
    struct moat_cache_obj *owner = src->body_src ? src->body_src : src;
    o->body_src = moat_cache_obj_ref(owner);
    uint64_t len = atomic_load(&src->body_len);
    atomic_store_explicit(&o->size_hint, len, memory_order_relaxed);
    atomic_store_explicit(&o->first, atomic_load(&owner->first), memory_order_release);
    atomic_store_explicit(&o->body_len, len, memory_order_release);
    /* Charged to the budget (the bytes are live because of us) but not to bytes_alloc,
     * which the owner already counts. */
    charge_add(o, (size_t)len, false);
    return MOAT_OK;
}

/* ---- Reader ---------------------------------------------------------------------------- */

enum moat_cache_obj_state moat_cache_obj_state(const struct moat_cache_obj *o)
{
    check(o);
    return (enum moat_cache_obj_state)atomic_load_explicit(&o->state, memory_order_acquire);
}

const struct moat_cache_head *moat_cache_obj_head(const struct moat_cache_obj *o)
{
    check(o);
    return atomic_load_explicit(&((struct moat_cache_obj *)o)->head, memory_order_acquire);
}

bool moat_cache_head_next(const struct moat_cache_head *head, size_t *pos, struct moat_hdr *out)
{
    struct moat_str b = moat_cache_head_block(head);
    if (*pos >= b.len)
        return false;
    const char *s = b.ptr + *pos;
    const char *end = b.ptr + b.len;
    const char *colon = memchr(s, ':', (size_t)(end - s));
    const char *crlf = memchr(s, '\r', (size_t)(end - s));
    if (!colon || !crlf || colon > crlf)
        return false;
    out->name = moat_str_make(s, (size_t)(colon - s));
    out->value = moat_str_make(colon + 2, (size_t)(crlf - colon - 2));
    *pos = (size_t)(crlf + 2 - b.ptr);
    return true;
}

struct moat_str moat_cache_obj_key(const struct moat_cache_obj *o)
{
    check(o);
    return moat_str_make(o->key, o->keylen);
}

uint64_t moat_cache_obj_body_len(const struct moat_cache_obj *o)
{
    check(o);
    return atomic_load_explicit(&o->body_len, memory_order_acquire);
}

uint64_t moat_cache_obj_expected_len(const struct moat_cache_obj *o)
{
    check(o);
    if (moat_cache_obj_state(o) == MOAT_CACHE_OBJ_COMPLETE)
        return atomic_load_explicit(&o->body_len, memory_order_acquire);
    uint64_t hint = atomic_load_explicit(&o->size_hint, memory_order_relaxed);
    return moat_cache_obj_head(o) && hint ? hint : UINT64_MAX;
}

bool moat_cache_obj_soft_purged(const struct moat_cache_obj *o)
{
    check(o);
    return atomic_load_explicit(&o->aflags, memory_order_relaxed) & AF_SOFT_PURGED;
}

enum moat_cache_fresh moat_cache_obj_decide(const struct moat_cache_obj *o,
                                            const struct moat_cache_cc *req, int64_t now)
{
    const struct moat_cache_head *h = moat_cache_obj_head(o);
    assert(h);
    struct moat_cache_meta m = h->meta;
    if (moat_cache_obj_soft_purged(o))
        m.flags |= MOAT_META_INVALIDATED;
    return moat_cache_decide(&m, req, now);
}

void moat_cache_cursor_seek(const struct moat_cache_obj *o, struct moat_cache_cursor *cur,
                            uint64_t pos)
{
    check(o);
    uint64_t avail = moat_cache_obj_body_len(o);
    cur->chunk = NULL;
    cur->off = 0;
    cur->pos = 0;
    if (pos > avail)
        pos = avail;
    struct chunk *c =
        atomic_load_explicit(&((struct moat_cache_obj *)o)->first, memory_order_acquire);
    uint64_t skip = pos;
    while (c && skip) {
        uint32_t l = atomic_load_explicit(&c->len, memory_order_acquire);
        if (skip < l)
            break;
        skip -= l;
        struct chunk *next = atomic_load_explicit(&c->next, memory_order_acquire);
        if (!next && skip == 0)
            break; /* at the end of the last chunk: stay, the writer may fill it */
        c = next;
    }
    cur->chunk = c;
    cur->off = (size_t)skip;
    cur->pos = pos;
}

void moat_cache_obj_read(const struct moat_cache_obj *o, struct moat_cache_cursor *cur,
                         struct moat_str *out)
{
    check(o);
    *out = MOAT_STR_NULL;
    uint64_t avail = moat_cache_obj_body_len(o); /* acquire: covers chunk len/next stores */
    if (cur->pos >= avail)
        return;
    struct chunk *c = (struct chunk *)cur->chunk;
    if (!c) {
        c = atomic_load_explicit(&((struct moat_cache_obj *)o)->first, memory_order_acquire);
        cur->off = 0;
    }
    for (;;) {
        uint32_t l = atomic_load_explicit(&c->len, memory_order_acquire);
        if (cur->off < l) {
            size_t k = (size_t)MOAT_MIN((uint64_t)(l - cur->off), avail - cur->pos);
            *out = moat_str_make(c->data + cur->off, k);
            cur->off += k;
            cur->pos += k;
            cur->chunk = c;
            return;
        }
        c = atomic_load_explicit(&c->next, memory_order_acquire);
        cur->off = 0;
        assert(c); /* avail > pos guarantees more bytes exist */
    }
}

/* ---- Purge ---------------------------------------------------------------------------- */

static bool tagged(const struct moat_cache_obj *o, struct moat_str tag, uint64_t bits)
{
    struct moat_cache_head *hd =
        atomic_load_explicit(&((struct moat_cache_obj *)o)->head, memory_order_acquire);
    if (!hd || (hd->tag_bloom & bits) != bits)
        return false;
    struct moat_str t = moat_cache_head_tags(hd);
    size_t s = 0;
    for (size_t i = 0; i <= t.len; i++) {
        if (i == t.len || t.ptr[i] == ' ') {
            if (moat_str_eq(moat_str_make(t.ptr + s, i - s), tag))
                return true;
            s = i + 1;
        }
    }
    return false;
}

/* Purges <o> if linked (shard lock held); returns true if it was touched. Soft purge marks
 * complete objects; objects still in progress and hit-for-pass markers are unlinked even
 * in soft mode (an in-flight body may predate the purge; a marker has nothing to serve). */
static bool purge_one(struct moat_cache_store *st, struct shard *sh, struct moat_cache_obj *o,
                      unsigned flags, struct moat_cache_obj **drop)
{
    if ((flags & MOAT_CACHE_PURGE_SOFT) && atomic_load(&o->state) == MOAT_CACHE_OBJ_COMPLETE) {
        atomic_fetch_or(&o->aflags, AF_SOFT_PURGED);
    } else {
        unlink_obj(st, sh, o);
        o->hnext = *drop;
        *drop = o;
    }
    sh->purged++;
    return true;
}

int moat_cache_purge_key(struct moat_cache_store *st, struct moat_str key, unsigned flags)
{
    uint64_t h = moat_cache_key_hash(key);
    struct shard *sh = shard_of(st, h);
    struct moat_cache_obj *drop = NULL;
    pthread_mutex_lock(&sh->lock);
    struct moat_cache_obj *o = find(sh, h, key);
    if (o)
        purge_one(st, sh, o, flags, &drop);
    pthread_mutex_unlock(&sh->lock);
    drop_list(drop);
    return o ? MOAT_OK : MOAT_DECLINED;
}

int moat_cache_purge_step(struct moat_cache_store *st, struct moat_cache_purge *p, size_t budget)
{
    uint64_t bits = p->kind == MOAT_CACHE_PURGE_TAG ? tag_bloom_bits(p->arg) : 0;
    size_t examined = 0;
    if (budget == 0)
        budget = 1;
    while (p->shard < st->cfg.shards) {
        struct shard *sh = &st->shards[p->shard];
        struct moat_cache_obj *drop = NULL;
        pthread_mutex_lock(&sh->lock);
        while (p->bucket < sh->nbuckets && examined < budget) {
            struct moat_cache_obj *o = sh->buckets[p->bucket];
            while (o) {
                struct moat_cache_obj *next = o->hnext;
                bool match;
                examined++;
                switch (p->kind) {
                case MOAT_CACHE_PURGE_PREFIX:
                    match = o->keylen >= p->arg.len && memcmp(o->key, p->arg.ptr, p->arg.len) == 0;
                    break;
                case MOAT_CACHE_PURGE_TAG:
                    /* a PENDING object has no tags yet but may get the purged one */
                    match = atomic_load(&o->state) == MOAT_CACHE_OBJ_PENDING ||
                            atomic_load(&o->state) == MOAT_CACHE_OBJ_PASS ||
                            tagged(o, p->arg, bits);
                    break;
                default:
                    match = true;
                }
                if (match && purge_one(st, sh, o, p->flags, &drop))
                    p->purged++;
                o = next;
            }
            p->bucket++;
        }
        bool shard_done = p->bucket >= sh->nbuckets;
        pthread_mutex_unlock(&sh->lock);
        drop_list(drop);
        if (shard_done) {
            p->shard++;
            p->bucket = 0;
        }
        if (examined >= budget) {
            p->examined += examined;
            return p->shard < st->cfg.shards ? MOAT_AGAIN : MOAT_OK;
        }
    }
    p->examined += examined;
    return MOAT_OK;
}

/* ---- Counters ------------------------------------------------------------------------- */

void moat_cache_store_stats(struct moat_cache_store *st, struct moat_cache_stats *out)
{
    memset(out, 0, sizeof(*out));
    for (unsigned i = 0; i < st->cfg.shards; i++) {
        struct shard *sh = &st->shards[i];
        pthread_mutex_lock(&sh->lock);
        out->objects += sh->count;
        out->hits += sh->hits;
        out->misses += sh->misses;
        out->passes += sh->passes;
        out->inserts += sh->inserts;
        out->evictions += sh->evictions;
        out->purged += sh->purged;
        pthread_mutex_unlock(&sh->lock);
    }
    out->bytes = atomic_load(&st->bytes);
    out->bytes_alloc = atomic_load(&st->bytes_alloc);
    out->aborted = atomic_load(&st->aborted);
}

size_t moat_cache_obj_charge(const struct moat_cache_obj *o)
{
    check(o);
    struct shard *sh = shard_of(o->st, o->hash);
    pthread_mutex_lock(&sh->lock);
    size_t c = o->charge;
    pthread_mutex_unlock(&sh->lock);
    return c;
}
