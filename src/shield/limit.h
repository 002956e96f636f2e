/* limit.h: the rate-limit table (GCRA token buckets keyed by a 64-bit hash, in a fixed-size,
 * set-associative table shared by every worker) and the per-address connection counters.
 * Both are bounded at creation and never grow: a flood of new keys evicts old ones. */
#ifndef MOAT_SHIELD_LIMIT_H
#define MOAT_SHIELD_LIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One bucket: 16 bytes (the key's hash and the GCRA's theoretical arrival time). */
#define MOAT_RL_ENTRY_BYTES 16
#define MOAT_RL_WAYS        8

struct moat_rl_table;

/* A table for at least <keys> buckets (rounded up to a power of two of 8-way sets); NULL
 * when out of memory. Thread-safe: each set is guarded by one of 256 striped spinlocks. */
struct moat_rl_table *moat_rl_new(uint64_t keys);
void moat_rl_free(struct moat_rl_table **t);

/* A rate: one request per <interval_ns>, <burst> at once; refused requests push the bucket
 * further (count_refused) up to <cap_ns> past the burst. */
struct moat_rl_rate {
    uint64_t interval_ns;
    uint64_t burst;
    uint64_t cap_ns;
    bool count_refused;
};

/* Checks the bucket of <key> at <now_ns> (a monotonic clock). <charge>: an allowed request
 * uses the budget (false: only look, for count: origin rules, charged later with
 * moat_rl_charge). Returns true when allowed; when refused, *<retry_ns> is how long until one
 * request would pass. */
bool moat_rl_take(struct moat_rl_table *t, uint64_t key, uint64_t now_ns,
                  const struct moat_rl_rate *rate, bool charge, uint64_t *retry_ns);
/* Uses one request of <key>'s budget (a count: origin request that went to the origin). */
void moat_rl_charge(struct moat_rl_table *t, uint64_t key, uint64_t now_ns,
                    const struct moat_rl_rate *rate);

struct moat_rl_stats {
    uint64_t capacity;   /* buckets */
    uint64_t bytes;      /* memory of the buckets and locks */
    uint64_t used;       /* buckets holding a key (scanned: call it rarely) */
    uint64_t evicted;    /* keys pushed out by new ones */
    uint64_t evicted_live; /* ...of which were still limiting (their budget was not full) */
};
void moat_rl_stats(struct moat_rl_table *t, struct moat_rl_stats *out);

/* The busiest keys: up to <n> of the buckets furthest ahead of <now_ns> (the most used), their
 * keys in <keys> and how far ahead in <ahead_ns>. Returns how many. */
size_t moat_rl_top(struct moat_rl_table *t, uint64_t now_ns, size_t n, uint64_t *keys,
                   uint64_t *ahead_ns);

/* --- connections per address: a count-min sketch of two rows of 32,768 atomic counters
 * (256 KiB): never undercounts, overcounts only when two busy addresses share both counters.
 * Lock-free: two atomic adds per accept and per close. */
bool moat_cc_open(const uint8_t ip[16], unsigned limit);
void moat_cc_close(const uint8_t ip[16]);
unsigned moat_cc_count(const uint8_t ip[16]);

#endif
