/* topk.h: a bounded heavy-hitters sketch (Space-Saving, Metwally et al. 2005) and the merge
 * of several of them. Used by the dashboard's top URLs / hosts / client IPs: each worker
 * thread fills its own sketch, the control thread merges them. */
#ifndef MOAT_CORE_TOPK_H
#define MOAT_CORE_TOPK_H

#include "core/common.h"

#define MOAT_TOPK_K      32                /* counters per sketch */
#define MOAT_TOPK_KEYLEN 96                /* key text kept per counter (longer keys are cut) */
#define MOAT_TOPK_IDX    (4 * MOAT_TOPK_K) /* hash index slots (a power of two) */

struct moat_topk_item {
    uint64_t hash;
    uint32_t count; /* an over-estimate: true count is in [count - err, count] */
    uint32_t err;
    uint8_t keylen;
    char key[MOAT_TOPK_KEYLEN];
};

/* A Space-Saving summary with K counters, fixed size, no allocation. Every key that occurs
 * more than N/K times in a stream of N is in it, and each count over-estimates by at most
 * the smallest count (err says by how much at most). One update costs a hash-index probe,
 * and a sift in a K-entry min-heap (log2 K = 5 steps at most). Not thread safe: one writer. */
struct moat_topk {
    uint32_t n;                 /* counters in use */
    uint64_t total;             /* updates since reset */
    uint8_t heap[MOAT_TOPK_K];  /* item indices, min-heap by count */
    uint8_t pos[MOAT_TOPK_K];   /* item index -> heap position */
    uint8_t idx[MOAT_TOPK_IDX]; /* open addressing by hash: item index + 1, 0 = empty */
    struct moat_topk_item items[MOAT_TOPK_K];
};

/* Empties <t>. */
void moat_topk_reset(struct moat_topk *t);

/* Counts one occurrence of <key> whose hash is <hash> (the caller hashes: keys with the same
 * hash are one key). */
void moat_topk_add(struct moat_topk *t, uint64_t hash, struct moat_str key);
/* Counts <w> occurrences of a key in two parts, <a> then <b> (copied together, cut at the
 * key length): a sampled stream adds each sampled key with the sampling's weight. */
void moat_topk_addw(struct moat_topk *t, uint64_t hash, struct moat_str a, struct moat_str b,
                    uint32_t w);

/* Merges <n> item lists (<lists>[i] with <lens>[i] items each, items with the same hash
 * summed) and writes the <cap> largest into <out>, by count, descending. Returns how many
 * were written. Allocates a scratch table (control thread use); returns 0 if it cannot. */
size_t moat_topk_merge(const struct moat_topk_item *const *lists, const size_t *lens, size_t n,
                       struct moat_topk_item *out, size_t cap);

#endif
