/* topk.c: the Space-Saving sketch and its merge.
 *
 * Why Space-Saving and not a count-min sketch plus a heap: count-min answers "how often was X
 * seen" for a key you already have, but the dashboard asks "which keys", so count-min still
 * needs a candidate list beside it; Space-Saving is that list, with a proven bound (every key
 * above N/K is kept, counts over-estimate by at most N/K) in K counters and no other memory.
 * The textbook version keeps counters in a "stream summary" (buckets of equal counts, O(1)
 * per update) at the price of a doubly linked list per bucket; a K = 32 min-heap is simpler,
 * and an increment of a counter that is not the minimum rarely moves it more than a step.
 * The key's text is copied only when a key takes a counter (a new key, or the minimum's
 * replacement), never on an increment. */
#include "core/topk.h"

#define IDX_MASK (MOAT_TOPK_IDX - 1)

void moat_topk_reset(struct moat_topk *t)
{
    t->n = 0;
    t->total = 0;
    memset(t->idx, 0, sizeof t->idx);
}

static void heap_swap(struct moat_topk *t, unsigned a, unsigned b)
{
    uint8_t ia = t->heap[a], ib = t->heap[b];
    t->heap[a] = ib;
    t->heap[b] = ia;
    t->pos[ib] = (uint8_t)a;
    t->pos[ia] = (uint8_t)b;
}

/* Restores the heap below <p> after the count at <p> grew. */
static void sift_down(struct moat_topk *t, unsigned p)
{
    for (;;) {
        unsigned l = 2 * p + 1, r = l + 1, m = p;
        if (l < t->n && t->items[t->heap[l]].count < t->items[t->heap[m]].count)
            m = l;
        if (r < t->n && t->items[t->heap[r]].count < t->items[t->heap[m]].count)
            m = r;
        if (m == p)
            return;
        heap_swap(t, p, m);
        p = m;
    }
}

static void sift_up(struct moat_topk *t, unsigned p)
{
    while (p > 0) {
        unsigned q = (p - 1) / 2;
        if (t->items[t->heap[q]].count <= t->items[t->heap[p]].count)
            return;
        heap_swap(t, p, q);
        p = q;
    }
}

/* Index slot holding <hash>, or the empty slot where it would go. */
static unsigned idx_find(const struct moat_topk *t, uint64_t hash)
{
    unsigned s = (unsigned)hash & IDX_MASK;
    while (t->idx[s] && t->items[t->idx[s] - 1].hash != hash)
        s = (s + 1) & IDX_MASK;
    return s;
}

/* Empties index slot <s> and moves later entries of the same run back (linear probing's
 * deletion without tombstones, so a sketch that sees a million distinct keys probes as
 * little as a fresh one). */
static void idx_delete(struct moat_topk *t, unsigned s)
{
    unsigned j = s;
    t->idx[s] = 0;
    for (;;) {
        j = (j + 1) & IDX_MASK;
        if (!t->idx[j])
            return;
        unsigned home = (unsigned)t->items[t->idx[j] - 1].hash & IDX_MASK;
        /* keep j where it is if its home lies cyclically in (s, j] */
        bool stays = s <= j ? (s < home && home <= j) : (s < home || home <= j);
        if (!stays) {
            t->idx[s] = t->idx[j];
            t->idx[j] = 0;
            s = j;
        }
    }
}

static void set_key(struct moat_topk_item *it, uint64_t hash, struct moat_str a, struct moat_str b)
{
    size_t n = MOAT_MIN(a.len, (size_t)MOAT_TOPK_KEYLEN);
    size_t m = MOAT_MIN(b.len, (size_t)MOAT_TOPK_KEYLEN - n);
    it->hash = hash;
    it->keylen = (uint8_t)(n + m);
    if (n)
        memcpy(it->key, a.ptr, n);
    if (m)
        memcpy(it->key + n, b.ptr, m);
}

void moat_topk_add(struct moat_topk *t, uint64_t hash, struct moat_str key)
{
    moat_topk_addw(t, hash, key, MOAT_STR_NULL, 1);
}

void moat_topk_addw(struct moat_topk *t, uint64_t hash, struct moat_str key, struct moat_str b,
                    uint32_t w)
{
    t->total += w;
    unsigned s = idx_find(t, hash);
    if (t->idx[s]) {
        unsigned i = t->idx[s] - 1u;
        t->items[i].count += w;
        sift_down(t, t->pos[i]);
        return;
    }
    if (t->n < MOAT_TOPK_K) {
        unsigned i = t->n++;
        struct moat_topk_item *it = &t->items[i];
        set_key(it, hash, key, b);
        it->count = w;
        it->err = 0;
        t->heap[i] = (uint8_t)i;
        t->pos[i] = (uint8_t)i;
        t->idx[s] = (uint8_t)(i + 1);
        sift_up(t, i);
        return;
    }
    /* Full: the new key takes the smallest counter, inheriting its count as its error. */
    unsigned i = t->heap[0];
    struct moat_topk_item *it = &t->items[i];
    idx_delete(t, idx_find(t, it->hash));
    it->err = it->count;
    it->count += w;
    set_key(it, hash, key, b);
    t->idx[idx_find(t, hash)] = (uint8_t)(i + 1);
    sift_down(t, 0);
}

static int by_count_desc(const void *a, const void *b)
{
    const struct moat_topk_item *x = a, *y = b;
    if (x->count != y->count)
        return x->count < y->count ? 1 : -1;
    return x->hash < y->hash ? -1 : x->hash > y->hash;
}

size_t moat_topk_merge(const struct moat_topk_item *const *lists, const size_t *lens, size_t n,
                       struct moat_topk_item *out, size_t cap)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += lens[i];
    if (!total || !cap)
        return 0;
    size_t tcap = 16;
    while (tcap < 2 * total)
        tcap *= 2;
    struct moat_topk_item *tab = calloc(tcap, sizeof *tab);
    bool *used = calloc(tcap, sizeof *used);
    if (!tab || !used) {
        free(tab);
        free(used);
        return 0;
    }
    size_t distinct = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < lens[i]; j++) {
            const struct moat_topk_item *it = &lists[i][j];
            size_t s = (size_t)it->hash & (tcap - 1);
            while (used[s] && tab[s].hash != it->hash)
                s = (s + 1) & (tcap - 1);
            if (!used[s]) {
                used[s] = true;
                tab[s] = *it;
                distinct++;
            } else {
                tab[s].count += it->count;
                tab[s].err += it->err;
            }
        }
    }
    /* compact the used slots to the front, then sort */
    size_t k = 0;
    for (size_t s = 0; s < tcap; s++)
        if (used[s])
            tab[k++] = tab[s];
    qsort(tab, distinct, sizeof *tab, by_count_desc);
    size_t w = MOAT_MIN(cap, distinct);
    memcpy(out, tab, w * sizeof *tab);
    free(tab);
    free(used);
    return w;
}
