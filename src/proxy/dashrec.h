/* dashrec.h: what each worker records for the live dashboard, and how the control thread
 * reads it. A worker's cost per request: a classification and three single-writer counter
 * adds (outcome, bytes, latency bucket), then, for the top lists, two xxh3 hashes and three
 * Space-Saving updates, for every request up to 1,024 a second per worker and for a random
 * sample above (1 in 8, and 1 in 32 above 16,384 a second), each sampled request weighing as
 * many. No lock, no allocation, no shared cache line written (everything is in the worker's
 * own struct). bench/micro/dashrec.c measures it. */
#ifndef MOAT_PROXY_DASHREC_H
#define MOAT_PROXY_DASHREC_H

#include <stdatomic.h>

#include "core/topk.h"

/* What became of a request, as the dashboard splits traffic. */
enum moat_dash_class {
    MOAT_DASH_HIT,   /* answered from the cache, fresh */
    MOAT_DASH_MISS,  /* fetched from the origin to fill the cache (also collapsed waiters) */
    MOAT_DASH_PASS,  /* not cacheable, bypassed, or answered locally */
    MOAT_DASH_STALE, /* a stale copy served (stale-while-revalidate, stale-if-error) */
    MOAT_DASH_ERROR, /* 5xx, or the origin failed */
    MOAT_DASH_NCLASS
};
extern const char *const moat_dash_class_names[MOAT_DASH_NCLASS];

/* Latency buckets: bucket i holds durations up to 16 << i microseconds (16 us .. 67 s), the
 * last one everything above. Finer than moat_request_duration_seconds (whose first bucket,
 * 1 ms, holds every hit). */
#define MOAT_DASH_LAT_BUCKETS 24

enum { MOAT_DASH_TOP_URL, MOAT_DASH_TOP_HOST, MOAT_DASH_TOP_CLIENT, MOAT_DASH_NTOP };

/* One second's sketches. <sec> is the Unix second they cover; a worker starting a new second
 * resets the window it last used two seconds ago. */
struct moat_dashrec_win {
    _Atomic uint64_t sec;
    uint32_t seen; /* requests this second (the worker's own: the sampling's rate) */
    struct moat_topk top[MOAT_DASH_NTOP];
};

/* Per worker, written by that worker only (counters are cumulative, relaxed stores). */
struct moat_dashrec {
    _Atomic uint64_t req[MOAT_DASH_NCLASS];
    _Atomic uint64_t bytes[MOAT_DASH_NCLASS];
    _Atomic uint64_t lat_hit[MOAT_DASH_LAT_BUCKETS];
    _Atomic uint64_t lat_origin[MOAT_DASH_LAT_BUCKETS];
    struct moat_dashrec_win win[2];
    uint64_t rng; /* the sampling's xorshift state (the worker's own) */
};

/* Sums of every worker's cumulative counters. */
struct moat_dash_sums {
    uint64_t req[MOAT_DASH_NCLASS];
    uint64_t bytes[MOAT_DASH_NCLASS];
    uint64_t lat_hit[MOAT_DASH_LAT_BUCKETS];
    uint64_t lat_origin[MOAT_DASH_LAT_BUCKETS];
};

struct moat_req;

/* Records the end of <r> at <now_us> (wall clock) in its worker's recorder. */
void moat_dashrec_record(struct moat_dashrec *d, const struct moat_req *r, uint64_t now_us);

/* The bucket index of <us> microseconds. */
unsigned moat_dash_lat_bucket(uint64_t us);

/* Control thread: sums every worker's counters into <out>. */
void moat_dashrec_sum(struct moat_dash_sums *out);

/* Control thread: copies worker <w>'s sketches for Unix second <sec> into <out> if that
 * worker recorded anything then and the copy is consistent (the worker did not start
 * reusing the window meanwhile). Call it during second sec + 1: the window is reused at
 * sec + 2. Returns false when there is nothing (or nothing reliable) to read. */
bool moat_dashrec_read(unsigned w, uint64_t sec, struct moat_topk out[MOAT_DASH_NTOP]);

#endif
