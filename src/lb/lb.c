/* lb.c: load balancing on the request path: the registry of pools and origins, member lists,
 * steering (which pool), balance (which origin), affinity, retries, passive outlier detection
 * and the admission queue.
 *
 * Nothing here takes a lock on the request path. The registry (pools and origins by name) is
 * changed under a mutex by configuration installs, the admin API and the monitor thread; what
 * workers read is published with atomics: an origin's health and counters are atomics, and a
 * pool's member list is an immutable array swapped by pointer. A replaced list is kept until
 * exit rather than freed (a worker may be reading it and there is no grace period to wait
 * for): lists change on reloads and admin calls only, a few hundred bytes each. */
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "lb/lb-int.h"
#include "proxy/req.h"

struct lb_registry lb_reg = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* --- the registry ------------------------------------------------------------------------ */

static uint64_t origin_key(const char *pool, const char *addr)
{
    char buf[200];
    int n = snprintf(buf, sizeof buf, "%s\n%s", pool, addr);
    return XXH3_64bits(buf, n > 0 ? MOAT_MIN((size_t)n, sizeof buf - 1) : 0);
}

struct lb_pool *lb_pool_get(const char *name)
{
    for (unsigned i = 0; i < lb_reg.npools; i++)
        if (strcmp(lb_reg.pools[i]->name, name) == 0)
            return lb_reg.pools[i];
    if (lb_reg.npools >= LB_MAX_POOLS)
        return NULL;
    struct lb_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    snprintf(p->name, sizeof p->name, "%s", name);
    lb_reg.pools[lb_reg.npools++] = p;
    return p;
}

struct moat_lb_origin *lb_origin_find(const char *pool, const char *addr)
{
    uint64_t k = origin_key(pool, addr);
    for (unsigned i = 0; i < lb_reg.norigins; i++) {
        struct moat_lb_origin *o = lb_reg.origins[i];
        if (o->key == k && strcmp(o->pool, pool) == 0 && strcmp(o->o.addr.text, addr) == 0)
            return o;
    }
    return NULL;
}

struct moat_lb_origin *lb_origin_get(const char *pool, const struct moat_cfg_origin *co)
{
    struct moat_lb_origin *o = lb_origin_find(pool, co->addr.text);
    if (o)
        return o;
    if (lb_reg.norigins >= LB_MAX_ORIGINS)
        return NULL;
    o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    o->id = lb_reg.norigins;
    o->key = origin_key(pool, co->addr.text);
    snprintf(o->pool, sizeof o->pool, "%s", pool);
    o->o = *co;
    o->o.host = strdup(co->host ? co->host : "");
    o->o.authority = strdup(co->authority ? co->authority : "");
    if (!o->o.host || !o->o.authority) {
        free(o->o.host);
        free(o->o.authority);
        free(o);
        return NULL;
    }
    atomic_store(&o->up, 1);
    /* An origin that appears after the first configuration (a reload, the admin API) ramps
     * up under slow_start like one that came back. */
    if (lb_reg.installed)
        atomic_store(&o->up_since_ms, moat_now_ms());
    lb_reg.origins[lb_reg.norigins++] = o;
    return o;
}

/* Smooth weighted round robin (nginx's): the schedule interleaves origins by weight, so
 * weights 5,1,1 give a a b a c a a rather than a a a a a b c. Weights are divided by their
 * greatest common divisor and the schedule is capped; beyond the cap shares are rounded. */
static unsigned gcd(unsigned a, unsigned b)
{
    while (b) {
        unsigned t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static int build_schedule(struct lb_members *m)
{
    unsigned g = 0;
    uint64_t total = 0;
    for (size_t i = 0; i < m->n; i++)
        g = gcd(g, m->w[i]);
    if (!g)
        g = 1;
    for (size_t i = 0; i < m->n; i++)
        total += m->w[i] / g;
    while (total > LB_SCHED_MAX) {
        g *= 2;
        total = 0;
        for (size_t i = 0; i < m->n; i++)
            total += MOAT_MAX(m->w[i] / g, 1u);
    }
    m->sched = calloc(total ? total : 1, sizeof *m->sched);
    int64_t *cur = calloc(m->n ? m->n : 1, sizeof *cur);
    if (!m->sched || !cur) {
        free(cur);
        return MOAT_ERR;
    }
    for (uint64_t s = 0; s < total; s++) {
        size_t best = 0;
        for (size_t i = 0; i < m->n; i++) {
            cur[i] += MOAT_MAX(m->w[i] / g, 1u);
            if (cur[i] > cur[best])
                best = i;
        }
        cur[best] -= (int64_t)total;
        m->sched[s] = (uint32_t)best;
    }
    m->nsched = total;
    free(cur);
    return MOAT_OK;
}

/* Consistent hashing: LB_VNODES points per unit of weight for each origin, placed by a hash
 * of the origin's stable key, so adding or removing an origin moves only the keys that land
 * on its points (about 1/(N+1) of them), whatever the others do. */
static int cmp_point(const void *a, const void *b)
{
    const struct lb_point *x = a, *y = b;
    return x->h < y->h ? -1 : x->h > y->h;
}

static int build_ring(struct lb_members *m)
{
    size_t total = 0;
    for (size_t i = 0; i < m->n; i++)
        total += (size_t)LB_VNODES * MOAT_MIN(m->w[i], 16u);
    m->ring = calloc(total ? total : 1, sizeof *m->ring);
    if (!m->ring)
        return MOAT_ERR;
    size_t k = 0;
    for (size_t i = 0; i < m->n; i++) {
        size_t pts = (size_t)LB_VNODES * MOAT_MIN(m->w[i], 16u);
        for (size_t j = 0; j < pts; j++) {
            uint64_t seed[2] = {m->o[i]->key, j};
            m->ring[k].h = XXH3_64bits(seed, sizeof seed);
            m->ring[k].i = (uint32_t)i;
            k++;
        }
    }
    qsort(m->ring, k, sizeof *m->ring, cmp_point);
    m->nring = k;
    return MOAT_OK;
}

struct lb_members *lb_members_build(struct moat_lb_origin **o, const unsigned *w, size_t n)
{
    struct lb_members *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->n = n;
    m->o = calloc(n ? n : 1, sizeof *m->o);
    m->w = calloc(n ? n : 1, sizeof *m->w);
    if (!m->o || !m->w)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        m->o[i] = o[i];
        m->w[i] = w[i] ? w[i] : 1;
        m->wsum += m->w[i];
    }
    if (build_schedule(m) != MOAT_OK || build_ring(m) != MOAT_OK)
        goto fail;
    return m;
fail:
    lb_members_free(m);
    return NULL;
}

void lb_members_free(struct lb_members *m)
{
    if (!m)
        return;
    free(m->o);
    free(m->w);
    free(m->sched);
    free(m->ring);
    free(m);
}

/* Publishes <m> as <p>'s member list; the old one is retired (see the file comment). Under the
 * registry lock. */
static void publish(struct lb_pool *p, struct lb_members *m)
{
    struct lb_members *old = atomic_exchange_explicit(&p->m, m, memory_order_acq_rel);
    for (size_t i = 0; old && i < old->n; i++)
        atomic_store(&old->o[i]->member, 0);
    for (size_t i = 0; i < m->n; i++)
        atomic_store(&m->o[i]->member, 1);
    if (old) {
        old->retired_next = lb_reg.retired;
        lb_reg.retired = old;
    }
}

static bool removed(const struct lb_pool *p, const char *addr)
{
    for (size_t i = 0; i < p->nremoved; i++)
        if (strcmp(p->removed[i], addr) == 0)
            return true;
    return false;
}

int lb_pool_rebuild(struct lb_pool *p, const struct moat_cfg_pool *pc)
{
    size_t cap = pc->norigins + p->nadded;
    struct moat_lb_origin **o = calloc(cap ? cap : 1, sizeof *o);
    unsigned *w = calloc(cap ? cap : 1, sizeof *w);
    size_t n = 0;
    int rc = MOAT_ERR;
    if (!o || !w)
        goto out;
    for (size_t i = 0; i < pc->norigins; i++) {
        if (removed(p, pc->origins[i].addr.text))
            continue;
        const struct lb_dns *d = NULL;
        for (size_t k = 0; pc->resolve_ms && k < p->ndns && !d; k++)
            if (strcmp(p->dns[k].text, pc->origins[i].addr.text) == 0 && p->dns[k].n)
                d = &p->dns[k];
        if (d) {
            /* A name re-resolved: one member per address, with the name's Host. */
            struct moat_lb_origin **no = realloc(o, (cap + d->n) * sizeof *o);
            unsigned *nw = no ? realloc(w, (cap + d->n) * sizeof *w) : NULL;
            if (no)
                o = no;
            if (!nw)
                goto out;
            w = nw;
            cap += d->n;
            for (size_t k = 0; k < d->n; k++) {
                struct moat_cfg_origin co = pc->origins[i];
                co.addr = d->a[k];
                struct moat_lb_origin *x = lb_origin_get(p->name, &co);
                if (!x)
                    goto out;
                o[n] = x;
                w[n++] = co.weight;
            }
            continue;
        }
        struct moat_lb_origin *x = lb_origin_get(p->name, &pc->origins[i]);
        if (!x)
            goto out;
        o[n] = x;
        w[n++] = pc->origins[i].weight;
    }
    for (size_t i = 0; i < p->nadded; i++) {
        bool dup = false;
        for (size_t j = 0; j < n && !dup; j++)
            dup = strcmp(o[j]->o.addr.text, p->added[i].o.addr.text) == 0;
        if (dup)
            continue;
        struct moat_lb_origin *x = lb_origin_get(p->name, &p->added[i].o);
        if (!x)
            goto out;
        o[n] = x;
        w[n++] = p->added[i].o.weight;
    }
    struct lb_members *m = lb_members_build(o, w, n);
    if (!m)
        goto out;
    publish(p, m);
    rc = MOAT_OK;
out:
    free(o);
    free(w);
    return rc;
}

/* --- per snapshot ---------------------------------------------------------------------- */

static void rt_free(void *v)
{
    struct lb_rt *rt = v;
    if (!rt)
        return;
    for (size_t i = 0; i < rt->ngeo; i++)
        moat_geoip_close(rt->geo[i]);
    free(rt->geo);
    free(rt->pools);
    free(rt->wr);
    free(rt);
}

int moat_lb_prepare(struct moat_config *cfg, char *err, size_t errlen)
{
    struct lb_rt *rt = calloc(1, sizeof *rt);
    if (!rt)
        goto oom;
    rt->pools = calloc(cfg->npools ? cfg->npools : 1, sizeof *rt->pools);
    rt->geo = calloc(cfg->nlbs ? cfg->nlbs : 1, sizeof *rt->geo);
    if (!rt->pools || !rt->geo)
        goto oom;
    rt->ngeo = cfg->nlbs;
    rt->wr = calloc(cfg->nsites ? cfg->nsites : 1, sizeof *rt->wr);
    if (!rt->wr)
        goto oom;
    for (size_t i = 0; i < cfg->nlbs; i++) {
        if (!cfg->lbs[i].geo_mmdb)
            continue;
        rt->geo[i] = moat_geoip_open(cfg->lbs[i].geo_mmdb, err, errlen);
        if (!rt->geo[i]) {
            rt_free(rt);
            return MOAT_ERR;
        }
    }
    pthread_mutex_lock(&lb_reg.lock);
    /* Origins are never dropped from the registry: refuse a snapshot that would need more
     * than it can hold rather than run with pools missing members. */
    size_t fresh = 0;
    for (size_t i = 0; i < cfg->npools; i++)
        for (size_t k = 0; k < cfg->pools[i].norigins; k++)
            fresh += !lb_origin_find(cfg->pools[i].name, cfg->pools[i].origins[k].addr.text);
    if (lb_reg.norigins + fresh > LB_MAX_ORIGINS) {
        pthread_mutex_unlock(&lb_reg.lock);
        rt_free(rt);
        snprintf(err, errlen,
                 "moat: the load balancer holds at most %d origins over the process's life "
                 "(%u known, %zu new); restart to start afresh",
                 LB_MAX_ORIGINS, lb_reg.norigins, fresh);
        return MOAT_ERR;
    }
    for (size_t i = 0; i < cfg->npools; i++) {
        rt->pools[i] = lb_pool_get(cfg->pools[i].name);
        /* A pool seen for the first time gets its members now, so that a request of this
         * snapshot never finds it empty; pools that exist keep theirs until install. */
        if (rt->pools[i] && !atomic_load(&rt->pools[i]->m))
            lb_pool_rebuild(rt->pools[i], &cfg->pools[i]);
        if (!rt->pools[i] || !atomic_load(&rt->pools[i]->m)) {
            pthread_mutex_unlock(&lb_reg.lock);
            rt_free(rt);
            snprintf(err, errlen,
                     "moat: too many pools or origins for the load balancer "
                     "(at most %d and %d)",
                     LB_MAX_POOLS, LB_MAX_ORIGINS);
            return MOAT_ERR;
        }
    }
    for (size_t i = 0; i < cfg->nsites; i++) {
        const struct moat_cfg_site *s = &cfg->sites[i];
        if (!s->wr_max_active)
            continue;
        const char *key = s->nhosts ? s->hosts[0] : "*";
        for (unsigned k = 0; k < lb_reg.nwrooms && !rt->wr[i]; k++)
            if (strcmp(lb_reg.wrooms[k]->key, key) == 0)
                rt->wr[i] = lb_reg.wrooms[k];
        if (!rt->wr[i] && lb_reg.nwrooms < LB_MAX_POOLS) {
            struct lb_wroom *w = calloc(1, sizeof *w);
            if (w) {
                snprintf(w->key, sizeof w->key, "%s", key);
                lb_reg.wrooms[lb_reg.nwrooms++] = w;
                rt->wr[i] = w;
            }
        }
        if (!rt->wr[i]) {
            pthread_mutex_unlock(&lb_reg.lock);
            rt_free(rt);
            snprintf(err, errlen, "moat: out of memory for a waiting room");
            return MOAT_ERR;
        }
    }
    pthread_mutex_unlock(&lb_reg.lock);
    cfg->lb_rt = rt;
    cfg->lb_rt_free = rt_free;
    return MOAT_OK;
oom:
    rt_free(rt);
    snprintf(err, errlen, "moat: out of memory");
    return MOAT_ERR;
}

void moat_lb_install(struct moat_config *cfg)
{
    pthread_mutex_lock(&lb_reg.lock);
    for (size_t i = 0; i < cfg->npools; i++) {
        struct lb_pool *p = lb_pool_get(cfg->pools[i].name);
        if (p) {
            lb_pool_rebuild(p, &cfg->pools[i]);
            p->cfg_weight = cfg->pools[i].weight;
        }
    }
    moat_config_ref(cfg);
    struct moat_config *old = lb_reg.cur;
    lb_reg.cur = cfg;
    lb_reg.installed = true;
    pthread_mutex_unlock(&lb_reg.lock);
    moat_config_release(&old);
    lb_monitor_sync();
    lb_resolver_start(cfg);
}

void moat_lb_each_origin(moat_lb_origin_fn *fn, void *ud)
{
    pthread_mutex_lock(&lb_reg.lock);
    for (unsigned i = 0; i < lb_reg.norigins; i++)
        if (atomic_load(&lb_reg.origins[i]->member))
            fn(lb_reg.origins[i], ud);
    pthread_mutex_unlock(&lb_reg.lock);
}

/* --- health ---------------------------------------------------------------------------- */

bool moat_lb_usable(const struct moat_lb_origin *o, uint64_t now_ms)
{
    return atomic_load_explicit(&o->up, memory_order_relaxed) &&
           atomic_load_explicit(&o->admin, memory_order_relaxed) == MOAT_LB_ENABLED &&
           now_ms >= atomic_load_explicit(&o->ejected_until_ms, memory_order_relaxed);
}

size_t lb_pool_usable(const struct lb_members *m, uint64_t now)
{
    size_t n = 0;
    for (size_t i = 0; m && i < m->n; i++)
        n += moat_lb_usable(m->o[i], now);
    return n;
}

/* Passive outlier detection: <failures> consecutive failures eject the origin for <eject>,
 * doubling with each ejection in a row (at most 2^10 times). */
void lb_passive_fail(struct moat_lb_origin *o, const struct moat_cfg_pool *pc)
{
    atomic_fetch_add_explicit(&o->failures, 1, memory_order_relaxed);
    if (!pc->passive_failures)
        return;
    unsigned streak = atomic_fetch_add_explicit(&o->fail_streak, 1, memory_order_relaxed) + 1;
    if (streak < pc->passive_failures)
        return;
    atomic_store_explicit(&o->fail_streak, 0, memory_order_relaxed);
    unsigned ej = atomic_fetch_add_explicit(&o->ejections, 1, memory_order_relaxed);
    uint64_t dur = pc->passive_eject_ms << MOAT_MIN(ej, 10u);
    atomic_store_explicit(&o->ejected_until_ms, moat_now_ms() + dur, memory_order_relaxed);
    atomic_store_explicit(&o->up_since_ms, moat_now_ms() + dur, memory_order_relaxed);
    atomic_fetch_add_explicit(&o->ejected_total, 1, memory_order_relaxed);
    moat_log_warn("origin %s (pool %s) ejected for %llu ms after %u failures in a row",
                  o->o.addr.text, o->pool, (unsigned long long)dur, pc->passive_failures);
}

void lb_passive_ok(struct moat_lb_origin *o, const struct moat_cfg_pool *pc)
{
    if (atomic_load_explicit(&o->fail_streak, memory_order_relaxed))
        atomic_store_explicit(&o->fail_streak, 0, memory_order_relaxed);
    /* Ejections stop doubling once the origin has served well for a whole period. */
    if (atomic_load_explicit(&o->ejections, memory_order_relaxed) &&
        moat_now_ms() >
            atomic_load_explicit(&o->ejected_until_ms, memory_order_relaxed) + pc->passive_eject_ms)
        atomic_store_explicit(&o->ejections, 0, memory_order_relaxed);
}

/* --- choosing an origin in a pool ------------------------------------------------------ */

static __thread uint64_t rnd_state;

uint64_t lb_rand(void)
{
    if (!rnd_state) {
        if (RAND_bytes((unsigned char *)&rnd_state, sizeof rnd_state) != 1 || !rnd_state)
            rnd_state = (uint64_t)moat_wall_us() | 1;
    }
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

/* slow_start: the share of an origin that came up <ms> ago, in thousandths (10..1000). */
static unsigned ramp(const struct moat_lb_origin *o, const struct moat_cfg_pool *pc, uint64_t now)
{
    if (!pc->slow_start_ms)
        return 1000;
    uint64_t since = atomic_load_explicit(&o->up_since_ms, memory_order_relaxed);
    if (!since || now >= since + pc->slow_start_ms)
        return 1000;
    if (now <= since)
        return 10;
    return (unsigned)MOAT_MAX((now - since) * 1000 / pc->slow_start_ms, 10u);
}

static bool tried(const struct moat_req *r, const struct moat_lb_origin *o)
{
    for (unsigned i = 0; i < r->lb.ntried; i++)
        if (r->lb.tried[i] == o)
            return true;
    return false;
}

/* Can <o> take <r> now? <full> is set when it is usable but at max_requests. */
bool lb_candidate(const struct moat_req *r, const struct moat_lb_origin *o,
                  const struct moat_cfg_pool *pc, uint64_t now, bool ignore_eject, bool *full)
{
    if (tried(r, o))
        return false;
    if (ignore_eject) {
        if (!atomic_load_explicit(&o->up, memory_order_relaxed) ||
            atomic_load_explicit(&o->admin, memory_order_relaxed) != MOAT_LB_ENABLED)
            return false;
    } else if (!moat_lb_usable(o, now)) {
        return false;
    }
    if (pc->max_requests &&
        atomic_load_explicit(&o->inflight, memory_order_relaxed) >= pc->max_requests) {
        *full = true;
        return false;
    }
    return true;
}

uint64_t lb_hash_request(const struct moat_req *r, const struct moat_cfg_pool *pc)
{
    struct moat_str v = MOAT_STR_NULL;
    switch (pc->hash_kind) {
    case MOAT_HASH_URL:
        return XXH3_64bits_withSeed(r->target.ptr, r->target.len,
                                    XXH3_64bits(r->authority.ptr, r->authority.len));
    case MOAT_HASH_HEADER: {
        const struct moat_hdr *h =
            moat_h1_find(r->hdrs, r->nhdrs, moat_str_make(pc->hash_name, strlen(pc->hash_name)));
        if (h)
            v = h->value;
        break;
    }
    case MOAT_HASH_COOKIE: {
        size_t nl = strlen(pc->hash_name);
        for (size_t i = 0; i < r->nhdrs && !v.ptr; i++) {
            if (!MOAT_STR_IEQ_LIT(r->hdrs[i].name, "cookie"))
                continue;
            size_t pos = 0;
            struct moat_str n, val;
            while (moat_h1_cookie_next(r->hdrs[i].value, &pos, &n, &val))
                if (n.len == nl && !memcmp(n.ptr, pc->hash_name, nl)) {
                    v = val;
                    break;
                }
        }
        break;
    }
    case MOAT_HASH_CLIENT_IP:
    default:
        break;
    }
    if (v.ptr)
        return XXH3_64bits(v.ptr, v.len);
    /* client_ip, and the fallback when the header or cookie is missing */
    return lb_client_hash(r);
}

/* The first candidate at or after <h> on the ring. */
static struct moat_lb_origin *ring_pick(const struct moat_req *r, const struct lb_members *m,
                                        const struct moat_cfg_pool *pc, uint64_t h, uint64_t now,
                                        bool ign, bool *full)
{
    if (!m->nring)
        return NULL;
    size_t lo = 0, hi = m->nring;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->ring[mid].h < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* Walk on past points of unusable origins; every origin's points are visited within
     * nring steps. */
    for (size_t k = 0; k < m->nring; k++) {
        struct moat_lb_origin *o = m->o[m->ring[(lo + k) % m->nring].i];
        if (lb_candidate(r, o, pc, now, ign, full))
            return o;
    }
    return NULL;
}

struct moat_lb_origin *lb_pick(struct moat_req *r, struct lb_pool *lp,
                               const struct moat_cfg_pool *pc, uint64_t now, bool ign, bool hash_ip,
                               bool *full)
{
    const struct lb_members *m = atomic_load_explicit(&lp->m, memory_order_acquire);
    if (!m || !m->n)
        return NULL;
    struct moat_lb_origin *best = NULL;
    if (hash_ip || pc->balance == MOAT_BAL_HASH) {
        uint64_t h = hash_ip ? lb_client_hash(r) : lb_hash_request(r, pc);
        return ring_pick(r, m, pc, h, now, ign, full);
    }
    switch (pc->balance) {
    case MOAT_BAL_LEAST_OUTSTANDING: {
        /* Fewest in flight relative to weight (and ramp); ties go round. */
        size_t start = atomic_fetch_add_explicit(&lp->rr, 1, memory_order_relaxed);
        uint64_t bs = UINT64_MAX;
        for (size_t k = 0; k < m->n; k++) {
            size_t i = (start + k) % m->n;
            struct moat_lb_origin *o = m->o[i];
            if (!lb_candidate(r, o, pc, now, ign, full))
                continue;
            uint64_t s = ((uint64_t)atomic_load_explicit(&o->inflight, memory_order_relaxed) + 1) *
                         1000000 / ((uint64_t)m->w[i] * ramp(o, pc, now));
            if (s < bs) {
                bs = s;
                best = o;
            }
        }
        return best;
    }
    case MOAT_BAL_RANDOM_TWO: {
        /* Power of two choices: two origins drawn by weight, the less loaded wins. */
        struct moat_lb_origin *c[2] = {NULL, NULL};
        size_t ci[2] = {0, 0};
        for (int d = 0; d < 2; d++) {
            for (int attempt = 0; attempt < 8 && !c[d]; attempt++) {
                uint64_t x = lb_rand() % m->wsum;
                size_t i = 0;
                while (i + 1 < m->n && x >= m->w[i])
                    x -= m->w[i++];
                if (lb_candidate(r, m->o[i], pc, now, ign, full)) {
                    c[d] = m->o[i];
                    ci[d] = i;
                }
            }
        }
        if (!c[0] && !c[1])
            break; /* fall back to the round robin below, which sees every origin */
        if (!c[1])
            return c[0];
        if (!c[0])
            return c[1];
        uint64_t s0 = ((uint64_t)atomic_load(&c[0]->inflight) + 1) * 1000 / m->w[ci[0]];
        uint64_t s1 = ((uint64_t)atomic_load(&c[1]->inflight) + 1) * 1000 / m->w[ci[1]];
        return s1 < s0 ? c[1] : c[0];
    }
    default:
        break;
    }
    /* Weighted round robin over the schedule; an origin in slow start is skipped in
     * proportion to how far it is from its full share. */
    size_t start = atomic_fetch_add_explicit(&lp->rr, 1, memory_order_relaxed);
    struct moat_lb_origin *ramping = NULL;
    for (size_t k = 0; k < m->nsched; k++) {
        struct moat_lb_origin *o = m->o[m->sched[(start + k) % m->nsched]];
        if (!lb_candidate(r, o, pc, now, ign, full))
            continue;
        unsigned share = ramp(o, pc, now);
        if (share >= 1000 || lb_rand() % 1000 < share)
            return o;
        if (!ramping)
            ramping = o;
    }
    return ramping;
}
