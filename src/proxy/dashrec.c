/* dashrec.c: the workers' side of the dashboard (see dashrec.h for the cost budget).
 *
 * The sketches are read by the control thread while workers go on writing, without a lock:
 * each worker has two one-second windows, writes the one of the current (even or odd) second,
 * and the control thread reads last second's window half a second into the next, a second
 * before the worker reuses it. The window's stamp works like a seqlock's sequence: the worker
 * zeroes it (with a release fence) before resetting the window and stores the new second
 * after; the reader checks the stamp before and after its copy and drops a copy that raced a
 * reset (only possible if the control thread stalled for a second). The alternative, a lock
 * per worker, would put a shared write on every request of every worker. */
#include <xxhash.h>

#include "proxy/dashrec.h"
#include "proxy/req.h"
#include "proxy/server.h"

const char *const moat_dash_class_names[MOAT_DASH_NCLASS] = {"hit", "miss", "pass", "stale",
                                                             "error"};

unsigned moat_dash_lat_bucket(uint64_t us)
{
    uint64_t v = us ? (us - 1) >> 4 : 0;
    unsigned i = v ? 64u - (unsigned)__builtin_clzll(v) : 0u;
    return i < MOAT_DASH_LAT_BUCKETS ? i : MOAT_DASH_LAT_BUCKETS - 1;
}

#define ADD(d, f, n)                                                                               \
    atomic_store_explicit(&(d)->f, atomic_load_explicit(&(d)->f, memory_order_relaxed) + (n),      \
                          memory_order_relaxed)

static enum moat_dash_class classify(const struct moat_req *r)
{
    const char *cs = r->c.status;
    if (cs && cs[0] == 'h') /* "hit", or "hit; detail=stale-..." (the only longer ones) */
        return cs[3] ? MOAT_DASH_STALE : MOAT_DASH_HIT;
    if (r->status >= 500 || r->xerr)
        return MOAT_DASH_ERROR;
    if (cs && (!strncmp(cs, "fwd=uri-miss", 12) || !strncmp(cs, "fwd=stale", 9)))
        return MOAT_DASH_MISS;
    return MOAT_DASH_PASS;
}

void moat_dashrec_record(struct moat_dashrec *d, const struct moat_req *r, uint64_t now_us)
{
    enum moat_dash_class c = classify(r);
    ADD(d, req[c], 1);
    ADD(d, bytes[c], r->resp_bytes);
    if (c == MOAT_DASH_HIT)
        ADD(d, lat_hit[moat_dash_lat_bucket(now_us - r->t_start_us)], 1);
    else if (r->t_up_start_us && now_us >= r->t_up_start_us)
        ADD(d, lat_origin[moat_dash_lat_bucket(now_us - r->t_up_start_us)], 1);

    uint64_t sec = now_us / 1000000;
    struct moat_dashrec_win *win = &d->win[sec & 1];
    if (atomic_load_explicit(&win->sec, memory_order_relaxed) != sec) {
        atomic_store_explicit(&win->sec, 0, memory_order_relaxed);
        atomic_thread_fence(memory_order_release);
        for (int i = 0; i < MOAT_DASH_NTOP; i++)
            moat_topk_reset(&win->top[i]);
        win->seen = 0;
        atomic_store_explicit(&win->sec, sec, memory_order_release);
    }
    /* Under load the top lists are fed a sample: the sketches cost 500 instructions a
     * request (three hashes, three updates: bench/micro/dashrec.c), a tenth of a whole
     * cache hit; sampled, a flood pays about 40 and its heavy hitters still stand out. */
    uint32_t seen = ++win->seen, w = 1;
    if (seen > 1024) {
        w = seen > 16384 ? 32 : 8;
        uint64_t x = d->rng ? d->rng : 0x9e3779b97f4a7c15ull;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        d->rng = x;
        if (x & (w - 1))
            return;
    }
    /* The URL is host + target: its hash is the target's seeded with the host's, so the
     * host is hashed once for both sketches and the URL's text is copied only when it takes
     * a counter. */
    uint64_t hh = XXH3_64bits(r->authority.ptr, r->authority.len);
    moat_topk_addw(&win->top[MOAT_DASH_TOP_HOST], hh, r->authority, MOAT_STR_NULL, w);
    moat_topk_addw(&win->top[MOAT_DASH_TOP_URL],
                   XXH3_64bits_withSeed(r->target.ptr, r->target.len, hh), r->authority, r->target,
                   w);
    size_t pl = strnlen(r->peer_text, sizeof r->peer_text);
    moat_topk_addw(&win->top[MOAT_DASH_TOP_CLIENT], XXH3_64bits(r->peer_text, pl),
                   moat_str_make(r->peer_text, pl), MOAT_STR_NULL, w);
}

void moat_dashrec_sum(struct moat_dash_sums *out)
{
    memset(out, 0, sizeof *out);
    for (unsigned w = 0; w < moat_srv.nworkers; w++) {
        const struct moat_dashrec *d = &moat_srv.workers[w].dash;
        for (int i = 0; i < MOAT_DASH_NCLASS; i++) {
            out->req[i] += atomic_load_explicit(&d->req[i], memory_order_relaxed);
            out->bytes[i] += atomic_load_explicit(&d->bytes[i], memory_order_relaxed);
        }
        for (int i = 0; i < MOAT_DASH_LAT_BUCKETS; i++) {
            out->lat_hit[i] += atomic_load_explicit(&d->lat_hit[i], memory_order_relaxed);
            out->lat_origin[i] += atomic_load_explicit(&d->lat_origin[i], memory_order_relaxed);
        }
    }
}

bool moat_dashrec_read(unsigned w, uint64_t sec, struct moat_topk out[MOAT_DASH_NTOP])
{
    if (w >= moat_srv.nworkers)
        return false;
    struct moat_dashrec_win *win = &moat_srv.workers[w].dash.win[sec & 1];
    if (atomic_load_explicit(&win->sec, memory_order_acquire) != sec)
        return false;
    memcpy(out, win->top, sizeof win->top);
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit(&win->sec, memory_order_relaxed) == sec;
}
