/* limit.c: GCRA token buckets in a bounded, shared, set-associative table; connection counts
 * in a count-min sketch.
 *
 * Why GCRA: a token bucket needs a token count and a timestamp per key; the generic cell rate
 * algorithm (ATM's, also used by redis-cell and Envoy) keeps one number, the theoretical
 * arrival time (TAT), and gives the same answers: a request at <now> passes when
 * TAT - now <= tau, where tau = (burst - 1) * interval, and moves TAT to max(TAT, now) +
 * interval. So a bucket is the key's 64-bit hash plus its TAT: 16 bytes (nginx's limit_req
 * zone costs about 128 B per key, HAProxy's stick table about 205 B).
 *
 * Why a set-associative table: a fixed array of 8-way sets, the set chosen by the key's hash.
 * A new key takes an empty way or evicts the way with the oldest TAT; a TAT in the past is a
 * full bucket, which is what a missing key means anyway, so eviction loses nothing until the
 * table is so full that live buckets go (counted as evicted_live). Memory is fixed at start:
 * 100,000 or 10 million distinct keys cost the same.
 *
 * Why shared with striped spinlocks: limits must hold across workers (a client whose
 * connections land on two workers gets one budget). The critical section is a scan of 8
 * entries (two cache lines), so contention is short; 256 locks on their own cache lines keep
 * two workers from meeting unless they touch the same stripe. The alternative, a table per
 * worker, is lock-free but divides every rate by the number of workers. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "core/common.h"
#include "shield/limit.h"

struct rl_ent {
    uint64_t key; /* 0: empty */
    uint64_t tat; /* ns, monotonic */
};

struct rl_lock {
    pthread_spinlock_t l;
    char pad[64 - sizeof(pthread_spinlock_t)];
};

#define RL_LOCKS 256

struct moat_rl_table {
    struct rl_ent *ents; /* nsets * MOAT_RL_WAYS */
    uint64_t nsets;      /* a power of two */
    _Atomic uint64_t evicted, evicted_live;
    struct rl_lock locks[RL_LOCKS];
};

struct moat_rl_table *moat_rl_new(uint64_t keys)
{
    uint64_t sets = 1;
    while (sets * MOAT_RL_WAYS < keys)
        sets <<= 1;
    /* aligned_alloc wants a size that is a multiple of the alignment (C11 7.22.3.1) */
    struct moat_rl_table *t = aligned_alloc(64, (sizeof *t + 63) & ~(size_t)63);
    if (!t)
        return NULL;
    memset(t, 0, sizeof *t);
    t->ents = calloc(sets * MOAT_RL_WAYS, sizeof *t->ents);
    if (!t->ents) {
        free(t);
        return NULL;
    }
    t->nsets = sets;
    for (int i = 0; i < RL_LOCKS; i++)
        pthread_spin_init(&t->locks[i].l, PTHREAD_PROCESS_PRIVATE);
    return t;
}

void moat_rl_free(struct moat_rl_table **tp)
{
    struct moat_rl_table *t = *tp;
    if (!t)
        return;
    for (int i = 0; i < RL_LOCKS; i++)
        pthread_spin_destroy(&t->locks[i].l);
    free(t->ents);
    free(t);
    *tp = NULL;
}

/* The entry of <key> in its set, taken (evicting the oldest) when absent; the set's lock is
 * held by the caller. */
static struct rl_ent *rl_find(struct moat_rl_table *t, struct rl_ent *set, uint64_t key,
                              uint64_t now)
{
    struct rl_ent *victim = &set[0];
    for (int i = 0; i < MOAT_RL_WAYS; i++) {
        if (set[i].key == key)
            return &set[i];
        if (set[i].key == 0 && victim->key != 0)
            victim = &set[i];
        else if (victim->key != 0 && set[i].tat < victim->tat)
            victim = &set[i];
    }
    if (victim->key) {
        atomic_fetch_add_explicit(&t->evicted, 1, memory_order_relaxed);
        if (victim->tat > now)
            atomic_fetch_add_explicit(&t->evicted_live, 1, memory_order_relaxed);
    }
    victim->key = key;
    victim->tat = 0;
    return victim;
}

static inline uint64_t set_of(const struct moat_rl_table *t, uint64_t key)
{
    /* the key is already a hash; mix once more so rules with close seeds spread */
    return (key ^ (key >> 29)) * 0xbf58476d1ce4e5b9ull >> 17 & (t->nsets - 1);
}

bool moat_rl_take(struct moat_rl_table *t, uint64_t key, uint64_t now, const struct moat_rl_rate *rate,
                  bool charge, uint64_t *retry_ns)
{
    key = key ? key : 1;
    uint64_t s = set_of(t, key);
    struct rl_lock *lk = &t->locks[s & (RL_LOCKS - 1)];
    uint64_t tau = (rate->burst ? rate->burst - 1 : 0) * rate->interval_ns;
    bool ok;
    pthread_spin_lock(&lk->l);
    struct rl_ent *e = rl_find(t, &t->ents[s * MOAT_RL_WAYS], key, now);
    uint64_t tat = e->tat > now ? e->tat : now;
    ok = tat - now <= tau;
    if (ok) {
        if (charge)
            e->tat = tat + rate->interval_ns;
    } else {
        if (rate->count_refused) {
            uint64_t cap = now + tau + rate->interval_ns + rate->cap_ns;
            tat += rate->interval_ns;
            e->tat = tat < cap ? tat : cap;
        }
        uint64_t st = e->tat > now ? e->tat : now;
        *retry_ns = st - now > tau ? st - now - tau : 0;
    }
    pthread_spin_unlock(&lk->l);
    return ok;
}

void moat_rl_charge(struct moat_rl_table *t, uint64_t key, uint64_t now, const struct moat_rl_rate *rate)
{
    key = key ? key : 1;
    uint64_t s = set_of(t, key);
    struct rl_lock *lk = &t->locks[s & (RL_LOCKS - 1)];
    pthread_spin_lock(&lk->l);
    struct rl_ent *e = rl_find(t, &t->ents[s * MOAT_RL_WAYS], key, now);
    e->tat = (e->tat > now ? e->tat : now) + rate->interval_ns;
    pthread_spin_unlock(&lk->l);
}

void moat_rl_stats(struct moat_rl_table *t, struct moat_rl_stats *out)
{
    memset(out, 0, sizeof *out);
    out->capacity = t->nsets * MOAT_RL_WAYS;
    out->bytes = out->capacity * sizeof(struct rl_ent) + sizeof *t;
    for (uint64_t i = 0; i < out->capacity; i++)
        out->used += __atomic_load_n(&t->ents[i].key, __ATOMIC_RELAXED) != 0;
    out->evicted = atomic_load(&t->evicted);
    out->evicted_live = atomic_load(&t->evicted_live);
}

size_t moat_rl_top(struct moat_rl_table *t, uint64_t now, size_t n, uint64_t *keys,
                   uint64_t *ahead)
{
    size_t have = 0;
    uint64_t cap = t->nsets * MOAT_RL_WAYS;
    for (uint64_t i = 0; i < cap && n; i++) {
        uint64_t k = __atomic_load_n(&t->ents[i].key, __ATOMIC_RELAXED);
        uint64_t tat = __atomic_load_n(&t->ents[i].tat, __ATOMIC_RELAXED);
        if (!k || tat <= now)
            continue;
        uint64_t a = tat - now;
        size_t j = have < n ? have++ : n;
        if (j == n) { /* full: replace the smallest if this one is bigger */
            size_t m = 0;
            for (size_t x = 1; x < n; x++)
                if (ahead[x] < ahead[m])
                    m = x;
            if (ahead[m] >= a)
                continue;
            j = m;
        }
        keys[j] = k;
        ahead[j] = a;
    }
    return have;
}

/* --- connections per address ------------------------------------------------------------------ */

#define CC_ROW 32768
static _Atomic uint32_t cc[2][CC_ROW];

static void cc_slots(const uint8_t ip[16], size_t *a, size_t *b)
{
    uint64_t h = XXH3_64bits(ip, 16);
    *a = h & (CC_ROW - 1);
    *b = (h >> 32) & (CC_ROW - 1);
}

bool moat_cc_open(const uint8_t ip[16], unsigned limit)
{
    size_t a, b;
    cc_slots(ip, &a, &b);
    uint32_t x = atomic_fetch_add_explicit(&cc[0][a], 1, memory_order_relaxed);
    uint32_t y = atomic_fetch_add_explicit(&cc[1][b], 1, memory_order_relaxed);
    if ((x < y ? x : y) >= limit) {
        atomic_fetch_sub_explicit(&cc[0][a], 1, memory_order_relaxed);
        atomic_fetch_sub_explicit(&cc[1][b], 1, memory_order_relaxed);
        return false;
    }
    return true;
}

void moat_cc_close(const uint8_t ip[16])
{
    size_t a, b;
    cc_slots(ip, &a, &b);
    atomic_fetch_sub_explicit(&cc[0][a], 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&cc[1][b], 1, memory_order_relaxed);
}

unsigned moat_cc_count(const uint8_t ip[16])
{
    size_t a, b;
    cc_slots(ip, &a, &b);
    uint32_t x = atomic_load(&cc[0][a]), y = atomic_load(&cc[1][b]);
    return x < y ? x : y;
}
