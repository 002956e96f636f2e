/* lb_req.c: a request's way through the load balancer: steering (the order of pools to try),
 * affinity, the choice of an origin, retries on another origin, passive health from answers,
 * and the admission queue when every origin is at max_requests. Runs on worker threads. */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <xxhash.h>

#include "lb/lb-int.h"
#include "proxy/req.h"

#define ORDER_MAX 64 /* pools in one steering order (regions' pools, then the balancer's) */

/* --- steering ------------------------------------------------------------------------- */

struct order {
    const struct moat_cfg_pool *p[ORDER_MAX];
    size_t n;
};

static void order_add(struct order *o, const struct moat_cfg_pool *p)
{
    for (size_t i = 0; i < o->n; i++)
        if (o->p[i] == p)
            return;
    if (o->n < ORDER_MAX)
        o->p[o->n++] = p;
}

static struct lb_pool *rt_pool(const struct moat_req *r, const struct moat_cfg_pool *p)
{
    const struct moat_config *cfg = r->wcfg->cfg;
    return ((struct lb_rt *)cfg->lb_rt)->pools[p - cfg->pools];
}

static const struct lb_members *members(const struct moat_req *r, const struct moat_cfg_pool *p)
{
    return atomic_load_explicit(&rt_pool(r, p)->m, memory_order_acquire);
}

static bool pool_healthy(const struct moat_req *r, const struct moat_cfg_pool *p, uint64_t now)
{
    return lb_pool_usable(members(r, p), now) >= p->min_origins;
}

/* The client's address (16 bytes, IPv4 v4-mapped): the peer, or when the peer is one of
 * trusted_proxies, the nearest address in X-Forwarded-For that is not (read from the right:
 * the entries a trusted proxy appended are the ones to believe; one further left may have
 * been written by anybody). Every X-Forwarded-For field counts, in order. */
static void client_addr(const struct moat_req *r, uint8_t out[16])
{
    const struct moat_config *cfg = r->wcfg ? r->wcfg->cfg : NULL;
    memcpy(out, r->peer, 16);
    if (!cfg || !cfg->ntrusted || !moat_config_trusted(cfg, r->peer))
        return;
    for (size_t i = r->nhdrs; i-- > 0;) {
        if (!MOAT_STR_IEQ_LIT(r->hdrs[i].name, "x-forwarded-for"))
            continue;
        struct moat_str v = r->hdrs[i].value;
        size_t end = v.len;
        while (end > 0) {
            size_t start = end;
            while (start > 0 && v.ptr[start - 1] != ',')
                start--;
            size_t a = start, b = end;
            while (a < b && (v.ptr[a] == ' ' || v.ptr[a] == '\t'))
                a++;
            while (b > a && (v.ptr[b - 1] == ' ' || v.ptr[b - 1] == '\t'))
                b--;
            char txt[INET6_ADDRSTRLEN];
            uint8_t addr[16] = {0};
            if (b - a == 0 || b - a >= sizeof txt)
                return; /* an empty or garbled entry: stop at what is known */
            memcpy(txt, v.ptr + a, b - a);
            txt[b - a] = '\0';
            if (inet_pton(AF_INET, txt, addr + 12) == 1) {
                addr[10] = addr[11] = 0xff;
            } else if (inet_pton(AF_INET6, txt, addr) != 1) {
                return;
            }
            memcpy(out, addr, 16);
            if (!moat_config_trusted(cfg, addr))
                return;
            end = start ? start - 1 : 0;
        }
    }
}

/* geo: the client's region: the CIDR table, then the database's country, then default. */
static const char *geo_region(const struct moat_req *r, const struct moat_cfg_lb *lb)
{
    uint8_t ip[16];
    client_addr(r, ip);
    for (size_t i = 0; i < lb->ncidrs; i++)
        if (moat_cidr_match_addr(&lb->cidrs[i].cidr, ip))
            return lb->cidrs[i].region;
    const struct moat_config *cfg = r->wcfg->cfg;
    const struct moat_geoip *g = ((struct lb_rt *)cfg->lb_rt)->geo[lb - cfg->lbs];
    if (g && lb->ncountries) {
        struct sockaddr_in6 s6 = {.sin6_family = AF_INET6};
        memcpy(s6.sin6_addr.s6_addr, ip, 16);
        char cc[3];
        if (moat_geoip_country(g, (const struct sockaddr *)&s6, cc) == 0)
            for (size_t i = 0; i < lb->ncountries; i++)
                if (lb->countries[i].cc[0] == cc[0] && lb->countries[i].cc[1] == cc[1])
                    return lb->countries[i].region;
    }
    return lb->geo_default;
}

static void add_region(struct order *o, const struct moat_config *cfg, const struct moat_cfg_lb *lb,
                       const char *region)
{
    for (size_t i = 0; i < lb->nregions; i++) {
        if (strcmp(lb->regions[i].name, region) == 0) {
            for (size_t j = 0; j < lb->regions[i].npools; j++)
                order_add(o, lb->regions[i].pools[j]);
            return;
        }
    }
    for (size_t i = 0; i < cfg->npools; i++)
        if (strcmp(cfg->pools[i].name, region) == 0)
            order_add(o, &cfg->pools[i]);
}

/* A pool's figure for latency (the mean RTT of its usable origins' monitors, UINT64_MAX
 * without one) or least_outstanding (in flight per unit of weight, in thousandths). */
static uint64_t pool_score(const struct moat_req *r, const struct moat_cfg_pool *p,
                           unsigned steering, uint64_t now)
{
    const struct lb_members *m = members(r, p);
    uint64_t sum = 0, cnt = 0;
    for (size_t i = 0; m && i < m->n; i++) {
        if (!moat_lb_usable(m->o[i], now))
            continue;
        if (steering == MOAT_STEER_LATENCY) {
            uint64_t rtt = atomic_load_explicit(&m->o[i]->rtt_us, memory_order_relaxed);
            if (rtt) {
                sum += rtt;
                cnt++;
            }
        } else {
            sum += (uint64_t)atomic_load_explicit(&m->o[i]->inflight, memory_order_relaxed) * 1000;
            cnt += m->w[i];
        }
    }
    return cnt ? sum / cnt : UINT64_MAX;
}

static void steer(const struct moat_req *r, const struct moat_cfg_lb *lb, struct order *o,
                  uint64_t now)
{
    const struct moat_config *cfg = r->wcfg->cfg;
    switch (lb->steering) {
    case MOAT_STEER_GEO: {
        const char *region = geo_region(r, lb);
        if (region)
            add_region(o, cfg, lb, region);
        break;
    }
    case MOAT_STEER_RANDOM: {
        uint64_t total = 0;
        for (size_t i = 0; i < lb->npools; i++)
            if (pool_healthy(r, lb->pools[i], now))
                total += lb->pools[i]->weight;
        if (total) {
            uint64_t x = lb_rand() % total;
            for (size_t i = 0; i < lb->npools; i++) {
                if (!pool_healthy(r, lb->pools[i], now))
                    continue;
                if (x < lb->pools[i]->weight) {
                    order_add(o, lb->pools[i]);
                    break;
                }
                x -= lb->pools[i]->weight;
            }
        }
        break;
    }
    case MOAT_STEER_LATENCY:
    case MOAT_STEER_LEAST_OUTSTANDING: {
        /* A selection sort over a handful of pools; stable, so ties keep the listed order. */
        bool used[ORDER_MAX] = {false};
        size_t np = MOAT_MIN(lb->npools, (size_t)ORDER_MAX);
        uint64_t score[ORDER_MAX];
        for (size_t i = 0; i < np; i++)
            score[i] = pool_score(r, lb->pools[i], lb->steering, now);
        for (size_t k = 0; k < np; k++) {
            size_t best = SIZE_MAX;
            for (size_t i = 0; i < np; i++)
                if (!used[i] && (best == SIZE_MAX || score[i] < score[best]))
                    best = i;
            used[best] = true;
            order_add(o, lb->pools[best]);
        }
        break;
    }
    case MOAT_STEER_FAILOVER:
    default:
        break;
    }
    for (size_t i = 0; i < lb->npools; i++)
        order_add(o, lb->pools[i]);
}

/* --- affinity cookies ------------------------------------------------------------------- */

/* The cookie is "<origin key><mac>", 32 hex digits: the origin's stable key (a hash of its
 * pool and address) and the first 8 bytes of HMAC-SHA256 over the balancer's name and that
 * key. A client can read which origin it has but cannot name another one. */
static unsigned char proc_key[32];
static pthread_once_t proc_key_once = PTHREAD_ONCE_INIT;

static void proc_key_init(void)
{
    if (RAND_bytes(proc_key, sizeof proc_key) != 1) {
        uint64_t t = moat_wall_us();
        memcpy(proc_key, &t, sizeof t);
    }
}

static uint64_t cookie_mac(const struct moat_cfg_lb *lb, uint64_t okey)
{
    const void *key = lb->affinity_key;
    int klen = lb->affinity_key ? (int)strlen(lb->affinity_key) : 0;
    if (!key) {
        pthread_once(&proc_key_once, proc_key_init);
        key = proc_key;
        klen = sizeof proc_key;
    }
    unsigned char msg[72 + 8], md[EVP_MAX_MD_SIZE];
    size_t nl = strlen(lb->name);
    memcpy(msg, lb->name, nl);
    memcpy(msg + nl, &okey, 8);
    unsigned mdlen = 0;
    if (!HMAC(EVP_sha256(), key, klen, msg, nl + 8, md, &mdlen) || mdlen < 8)
        return 0;
    uint64_t mac;
    memcpy(&mac, md, 8);
    return mac;
}

static bool hex64(const char *p, uint64_t *out)
{
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = p[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else
            return false;
        v = v << 4 | d;
    }
    *out = v;
    return true;
}

/* The origin key a valid affinity cookie of <r> names; 0 when none or forged. */
static uint64_t cookie_origin(const struct moat_req *r, const struct moat_cfg_lb *lb)
{
    size_t nl = strlen(lb->affinity_cookie);
    for (size_t i = 0; i < r->nhdrs; i++) {
        if (!MOAT_STR_IEQ_LIT(r->hdrs[i].name, "cookie"))
            continue;
        size_t pos = 0;
        struct moat_str n, v;
        while (moat_h1_cookie_next(r->hdrs[i].value, &pos, &n, &v)) {
            if (n.len != nl || memcmp(n.ptr, lb->affinity_cookie, nl) || v.len != 32)
                continue;
            uint64_t okey, mac;
            if (hex64(v.ptr, &okey) && hex64(v.ptr + 16, &mac) && okey &&
                CRYPTO_memcmp(&mac, &(uint64_t){cookie_mac(lb, okey)}, 8) == 0)
                return okey;
        }
    }
    return 0;
}

static void set_cookie(struct moat_req *r, const struct moat_cfg_lb *lb,
                       const struct moat_lb_origin *o)
{
    int n = snprintf(r->lb.cookie, sizeof r->lb.cookie,
                     "%s=%016llx%016llx; Path=/; Max-Age=%llu; HttpOnly; SameSite=Lax",
                     lb->affinity_cookie, (unsigned long long)o->key,
                     (unsigned long long)cookie_mac(lb, o->key),
                     (unsigned long long)(lb->affinity_ttl_ms / 1000));
    if (n > 0 && (size_t)n < sizeof r->lb.cookie) {
        r->lb.set_cookie = true;
        r->lb.cookie_len = (uint16_t)n;
    }
}

/* --- the waiting room ------------------------------------------------------------------ */

/* sites[].waiting_room: beyond max_active visitors admitted within the last session, new
 * visitors take a ticket (a signed cookie) and wait on a page that reloads itself; tickets
 * come in in the order they were handed out, as places free up. An admitted visitor carries
 * a signed cookie with its place's expiry and is never asked again until then. Cached answers
 * never get here (the balance phase runs on misses only). The count of places taken is the
 * admissions of the last session, in WR_BUCKETS time slices, so nothing is locked: a visitor
 * who leaves early frees the place when the session would have ended. */
#define WR_COOKIE "moat_wr"

static uint64_t wr_mac(const struct lb_wroom *w, char kind, uint64_t v)
{
    pthread_once(&proc_key_once, proc_key_init);
    unsigned char msg[160], md[EVP_MAX_MD_SIZE];
    size_t kl = strlen(w->key);
    memcpy(msg, w->key, kl);
    msg[kl] = (unsigned char)kind;
    memcpy(msg + kl + 1, &v, 8);
    unsigned mdlen = 0;
    if (!HMAC(EVP_sha256(), proc_key, sizeof proc_key, msg, kl + 9, md, &mdlen) || mdlen < 8)
        return 0;
    uint64_t mac;
    memcpy(&mac, md, 8);
    return mac;
}

/* The request's valid waiting-room cookie: 'a' (admitted until *v seconds) or 't' (ticket
 * *v); 0 when none or forged. */
static char wr_cookie(const struct moat_req *r, const struct lb_wroom *w, uint64_t *v)
{
    for (size_t i = 0; i < r->nhdrs; i++) {
        if (!MOAT_STR_IEQ_LIT(r->hdrs[i].name, "cookie"))
            continue;
        size_t pos = 0;
        struct moat_str n, val;
        while (moat_h1_cookie_next(r->hdrs[i].value, &pos, &n, &val)) {
            if (!MOAT_STR_IEQ_LIT(n, WR_COOKIE) || val.len != 33)
                continue;
            char kind = val.ptr[0];
            uint64_t x, mac;
            if ((kind == 'a' || kind == 't') && hex64(val.ptr + 1, &x) &&
                hex64(val.ptr + 17, &mac) &&
                CRYPTO_memcmp(&mac, &(uint64_t){wr_mac(w, kind, x)}, 8) == 0) {
                *v = x;
                return kind;
            }
        }
    }
    return 0;
}

static int wr_fmt(char *buf, size_t len, const struct lb_wroom *w, char kind, uint64_t v,
                  uint64_t max_age_s)
{
    int n = snprintf(buf, len, WR_COOKIE "=%c%016llx%016llx; Path=/; Max-Age=%llu; HttpOnly", kind,
                     (unsigned long long)v, (unsigned long long)wr_mac(w, kind, v),
                     (unsigned long long)max_age_s);
    return n > 0 && (size_t)n < len ? n : 0;
}

static uint64_t wr_active(struct lb_wroom *w, uint64_t epoch)
{
    uint64_t sum = 0;
    for (int i = 0; i < WR_BUCKETS; i++) {
        uint64_t b = atomic_load_explicit(&w->bucket[i], memory_order_relaxed);
        uint64_t e = b >> 24;
        if (e + WR_BUCKETS > epoch && e <= epoch)
            sum += b & 0xffffff;
    }
    return sum;
}

static void wr_count(struct lb_wroom *w, uint64_t epoch)
{
    _Atomic uint64_t *b = &w->bucket[epoch % WR_BUCKETS];
    uint64_t old = atomic_load_explicit(b, memory_order_relaxed), nv;
    do {
        nv = (old >> 24) == epoch ? old + 1 : (epoch << 24 | 1);
    } while (!atomic_compare_exchange_weak_explicit(b, &old, nv, memory_order_relaxed,
                                                    memory_order_relaxed));
}

/* MOAT_OK: <r> goes on (admitted); MOAT_DONE: it got the waiting page. */
static int waiting_room(struct moat_req *r)
{
    const struct moat_config *cfg = r->wcfg->cfg;
    const struct moat_cfg_site *s = r->site;
    struct lb_wroom *w = ((struct lb_rt *)cfg->lb_rt)->wr[s - cfg->sites];
    if (!w)
        return MOAT_OK;
    uint64_t now = moat_wall_us() / 1000;
    uint64_t width = MOAT_MAX(s->wr_session_ms / WR_BUCKETS, 1);
    uint64_t epoch = (now / width) & ((1ull << 40) - 1);
    uint64_t v = 0;
    char kind = wr_cookie(r, w, &v);
    if (kind == 'a' && v > now / 1000)
        return MOAT_OK; /* admitted: keeps its place for the session */
    uint64_t next = atomic_load(&w->next_ticket), serving = atomic_load(&w->serving);
    /* Places promised to tickets let in that have not come back yet are taken too, for a few
     * refreshes; then the no-shows are given up on. */
    uint64_t came = atomic_load(&w->came);
    uint64_t promised = serving > came ? serving - came : 0;
    if (promised && now > atomic_load(&w->served_ms) + 3 * s->wr_refresh_ms) {
        atomic_compare_exchange_strong(&w->came, &came, serving);
        promised = 0;
    }
    uint64_t taken = wr_active(w, epoch) + promised;
    uint64_t free_places = s->wr_max_active > taken ? s->wr_max_active - taken : 0;
    if (free_places && serving < next) {
        /* Places are free: the next tickets in line may come in. */
        uint64_t to = MOAT_MIN(next, serving + free_places);
        if (atomic_compare_exchange_strong(&w->serving, &serving, to))
            atomic_store(&w->served_ms, now);
        serving = atomic_load(&w->serving);
        free_places = 0; /* what was free is promised to the tickets let in */
    }
    bool admit;
    uint64_t ticket = 0;
    if (kind == 't') {
        admit = v <= serving;
        ticket = v;
        if (admit)
            atomic_fetch_add(&w->came, 1);
    } else {
        admit = free_places && serving >= next;
        if (!admit)
            ticket = atomic_fetch_add(&w->next_ticket, 1) + 1;
    }
    if (admit) {
        wr_count(w, epoch);
        atomic_fetch_add(&w->admitted, 1);
        int n = wr_fmt(r->lb.wr_cookie, sizeof r->lb.wr_cookie, w, 'a',
                       now / 1000 + s->wr_session_ms / 1000, s->wr_session_ms / 1000);
        r->lb.set_wr = n > 0;
        r->lb.wr_len = (uint8_t)n;
        return MOAT_OK;
    }
    atomic_fetch_add(&w->waited, 1);
    unsigned refresh = (unsigned)MOAT_MAX(s->wr_refresh_ms / 1000, 1);
    uint64_t ahead = ticket > serving ? ticket - serving : 1;
    char ck[128], rf[16], body[512];
    int ckn = wr_fmt(ck, sizeof ck, w, 't', ticket, 3600);
    int rfn = snprintf(rf, sizeof rf, "%u", refresh);
    int bn = snprintf(body, sizeof body,
                      "<!doctype html><html><head><meta charset=\"utf-8\">"
                      "<meta http-equiv=\"refresh\" content=\"%u\"><title>Please wait</title>"
                      "</head><body><h1>You are in line</h1><p>There %s %llu visitor%s ahead of "
                      "you. This page reloads by itself every %u s; keep it open.</p></body>"
                      "</html>\n",
                      refresh, ahead == 1 ? "is" : "are", (unsigned long long)(ahead - 1),
                      ahead == 2 ? "" : "s", refresh);
    struct moat_hdr h[4] = {
        {MOAT_STR("Cache-Control"), MOAT_STR("no-store")},
        {MOAT_STR("Refresh"), moat_str_make(rf, (size_t)MOAT_MAX(rfn, 0))},
        {MOAT_STR("Retry-After"), moat_str_make(rf, (size_t)MOAT_MAX(rfn, 0))},
        {MOAT_STR("Set-Cookie"), moat_str_make(ck, (size_t)ckn)},
    };
    /* Browsers get a page (200); other clients an error they understand (503). */
    bool browser = false;
    const struct moat_hdr *acc = moat_h1_find(r->hdrs, r->nhdrs, MOAT_STR("accept"));
    if (acc)
        browser = memmem(acc->value.ptr, acc->value.len, "text/html", 9) != NULL;
    moat_pcache_end(r, false);
    moat_req_respond(r, browser ? 200 : 503, "text/html; charset=utf-8", h, ckn > 0 ? 4 : 3,
                     moat_str_make(body, (size_t)MOAT_MAX(MOAT_MIN(bn, (int)sizeof body - 1), 0)));
    return MOAT_DONE;
}

/* --- choosing ---------------------------------------------------------------------------- */

enum { CH_OK, CH_FULL, CH_NONE };

/* The per-worker map of origin -> idle connection pool, so that choosing an origin costs no
 * search of the worker's pools. Valid for one configuration generation (TLS settings of a
 * pool may change with it). */
struct upcache {
    struct moat_upool *up;
    uint64_t gen;
    unsigned pool;
};
static __thread struct upcache *upc;

static struct moat_upool *upool_for(struct moat_req *r, const struct moat_lb_origin *o,
                                    const struct moat_cfg_pool *pc)
{
    const struct moat_config *cfg = r->wcfg->cfg;
    unsigned pi = (unsigned)(pc - cfg->pools);
    if (!upc)
        upc = calloc(LB_MAX_ORIGINS, sizeof *upc);
    if (upc && upc[o->id].up && upc[o->id].gen == cfg->generation && upc[o->id].pool == pi)
        return upc[o->id].up;
    struct moat_upool *up = moat_up_pool_find(r->w, &o->o.addr, moat_up_tls_key(pc, &o->o));
    if (upc && up)
        upc[o->id] = (struct upcache){up, cfg->generation, pi};
    return up;
}

static void assign(struct moat_req *r, struct moat_lb_origin *o, const struct moat_cfg_pool *pc)
{
    const struct moat_config *cfg = r->wcfg->cfg;
    r->lb.cur = o;
    r->pool_idx = (unsigned)(pc - cfg->pools);
    r->origin = &o->o;
    r->upool = upool_for(r, o, pc);
    atomic_fetch_add_explicit(&o->requests, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&rt_pool(r, pc)->requests, 1, memory_order_relaxed);
}

/* One pool: an origin with a slot taken, or NULL (<full> when they were at max_requests). */
static struct moat_lb_origin *pick_in(struct moat_req *r, const struct moat_cfg_pool *pc,
                                      uint64_t now, bool ign, bool *full)
{
    const struct moat_cfg_lb *lb = r->site->lb;
    bool hash_ip = lb && lb->affinity_client_ip;
    for (int attempt = 0; attempt < 4; attempt++) {
        struct moat_lb_origin *o = lb_pick(r, rt_pool(r, pc), pc, now, ign, hash_ip, full);
        if (!o)
            return NULL;
        if (pc->max_requests == 0) {
            atomic_fetch_add_explicit(&o->inflight, 1, memory_order_relaxed);
            return o;
        }
        unsigned prev = atomic_fetch_add_explicit(&o->inflight, 1, memory_order_relaxed);
        if (prev < pc->max_requests)
            return o;
        atomic_fetch_sub_explicit(&o->inflight, 1, memory_order_relaxed);
        *full = true; /* another worker took the last slot: look again */
    }
    return NULL;
}

/* Chooses the pool and origin of <r>. CH_OK (assigned), CH_FULL (*<fullp> is the pool whose
 * origins are all at max_requests: the request may wait for it) or CH_NONE. */
static int choose(struct moat_req *r, const struct moat_cfg_pool **fullp)
{
    const struct moat_cfg_lb *lb = r->site->lb;
    uint64_t now = moat_now_ms();
    struct order ord = {.n = 0};
    if (lb)
        steer(r, lb, &ord, now);
    else
        order_add(&ord, r->site->pool);

    /* A valid affinity cookie whose origin is usable wins over steering and balance. */
    uint64_t want = 0;
    if (lb && lb->affinity_cookie && r->lb.ntried == 0)
        want = cookie_origin(r, lb);
    if (want) {
        for (size_t i = 0; i < ord.n; i++) {
            const struct lb_members *m = members(r, ord.p[i]);
            for (size_t j = 0; m && j < m->n; j++) {
                struct moat_lb_origin *o = m->o[j];
                bool full = false;
                if (o->key != want || !lb_candidate(r, o, ord.p[i], now, false, &full))
                    continue;
                atomic_fetch_add_explicit(&o->inflight, 1, memory_order_relaxed);
                assign(r, o, ord.p[i]);
                return CH_OK;
            }
        }
    }

    bool any_full = false;
    for (size_t i = 0; i < ord.n; i++) {
        const struct moat_cfg_pool *pc = ord.p[i];
        if (lb && !pool_healthy(r, pc, now))
            continue;
        bool full = false;
        struct moat_lb_origin *o = pick_in(r, pc, now, false, &full);
        if (o) {
            assign(r, o, pc);
            if (lb && lb->affinity_cookie)
                set_cookie(r, lb, o);
            return CH_OK;
        }
        if (full) {
            /* Admission control holds the line here rather than spilling the crowd onto the
             * next pool, whose region may be just as busy. */
            *fullp = pc;
            any_full = true;
            break;
        }
    }
    if (!any_full) {
        /* Every pool down: the fallback, healthy or not; then, as a last resort, the first
         * pool's origins that the monitor calls up even if passive detection ejected them
         * (ejecting every origin must not turn an outlier check into an outage). */
        const struct moat_cfg_pool *last[2] = {lb ? lb->fallback : NULL, ord.n ? ord.p[0] : NULL};
        for (int k = 0; k < 2; k++) {
            if (!last[k])
                continue;
            bool full = false;
            struct moat_lb_origin *o = pick_in(r, last[k], now, k == 1, &full);
            if (o) {
                assign(r, o, last[k]);
                if (lb && lb->affinity_cookie)
                    set_cookie(r, lb, o);
                return CH_OK;
            }
            if (full) {
                *fullp = last[k];
                return CH_FULL;
            }
        }
        return CH_NONE;
    }
    return CH_FULL;
}

static void release_slot(struct moat_req *r);

/* --- the admission queue ------------------------------------------------------------------ */

/* Requests wait per worker, in arrival order, for an origin of their pool to drop below
 * max_requests. The bound (queue.size) is the pool's, over all workers. A slot freed on this
 * worker looks at the queue at once; slots freed by other workers are seen by a poll every
 * QUEUE_POLL_MS while anything waits (a worker never touches another worker's requests). */
#define QUEUE_POLL_MS 5

struct lbq {
    struct moat_req *head, *tail;
    unsigned n;
    struct moat_timer t;
    struct moat_loop *loop;
};
static __thread struct lbq q;

static void q_unlink(struct moat_req *r)
{
    if (r->lb.qprev)
        r->lb.qprev->lb.qnext = r->lb.qnext;
    else
        q.head = r->lb.qnext;
    if (r->lb.qnext)
        r->lb.qnext->lb.qprev = r->lb.qprev;
    else
        q.tail = r->lb.qprev;
    r->lb.qnext = r->lb.qprev = NULL;
    r->lb.queued = false;
    q.n--;
    const struct moat_cfg_pool *pc = &r->wcfg->cfg->pools[r->lb.qpool];
    atomic_fetch_sub_explicit(&rt_pool(r, pc)->queued, 1, memory_order_relaxed);
}

/* 503 with Retry-After: no origin can take <r> (every pool down, or the queue full or waited
 * out). A stale copy in the cache is served instead where there is one. */
static void unavailable(struct moat_req *r, const char *why, unsigned retry_after)
{
    if (moat_pcache_stale_on_error(r))
        return;
    moat_pcache_end(r, false);
    char ra[16];
    int n = snprintf(ra, sizeof ra, "%u", retry_after ? retry_after : 1);
    struct moat_hdr h = {MOAT_STR("Retry-After"), moat_str_make(ra, (size_t)MOAT_MAX(n, 0))};
    moat_req_respond(r, 503, NULL, &h, 1, moat_str_make(why, strlen(why)));
}

static unsigned retry_after_s(const struct moat_cfg_pool *pc)
{
    return (unsigned)MOAT_MIN(MOAT_MAX((pc->queue_timeout_ms + 999) / 1000, 1), 60);
}

static void q_run(struct moat_loop *loop, struct moat_timer *t)
{
    uint64_t now = moat_now_ms();
    /* FIFO per pool: once a pool's head cannot go, those behind it wait too. */
    const struct moat_cfg_pool *blocked[8];
    size_t nblocked = 0;
    struct moat_req *r = q.head;
    while (r) {
        struct moat_req *next = r->lb.qnext;
        const struct moat_cfg_pool *qp = &r->wcfg->cfg->pools[r->lb.qpool];
        bool skip = false;
        for (size_t i = 0; i < nblocked && !skip; i++)
            skip = blocked[i] == qp;
        if (now >= r->lb.queue_deadline) {
            q_unlink(r);
            atomic_fetch_add_explicit(&rt_pool(r, qp)->queue_timeouts, 1, memory_order_relaxed);
            unavailable(r, "all origins busy: waited too long\n", retry_after_s(qp));
            moat_req_drive(r);
        } else if (!skip) {
            const struct moat_cfg_pool *fullp = NULL;
            int rc = choose(r, &fullp);
            if (rc == CH_OK && !r->upool) {
                release_slot(r);
                rc = CH_NONE;
            }
            if (rc == CH_OK) {
                q_unlink(r);
                moat_xchg_forward(r);
                moat_req_drive(r);
            } else if (rc == CH_NONE) {
                q_unlink(r);
                unavailable(r, "no origin available\n", 5);
                moat_req_drive(r);
            } else if (nblocked < MOAT_ARRAY_LEN(blocked)) {
                blocked[nblocked++] = qp;
            }
        }
        r = next;
    }
    if (q.n)
        moat_timer_set(loop, &q.t, QUEUE_POLL_MS);
}

static bool enqueue(struct moat_req *r, const struct moat_cfg_pool *pc)
{
    struct lb_pool *lp = rt_pool(r, pc);
    unsigned prev = atomic_fetch_add_explicit(&lp->queued, 1, memory_order_relaxed);
    if (prev >= pc->queue_size) {
        atomic_fetch_sub_explicit(&lp->queued, 1, memory_order_relaxed);
        return false;
    }
    atomic_fetch_add_explicit(&lp->queued_total, 1, memory_order_relaxed);
    if (!q.loop) {
        q.loop = &r->w->loop;
        q.t.cb = q_run;
    }
    r->lb.queued = true;
    /* Parked: nothing drives a request in R_NEW (it may come from R_CACHE, a collapsed fetch
     * that turned out uncacheable), until q_run forwards or answers it. */
    r->state = R_NEW;
    r->lb.qpool = (unsigned)(pc - r->wcfg->cfg->pools);
    r->lb.queue_deadline = moat_now_ms() + pc->queue_timeout_ms;
    r->lb.qnext = NULL;
    r->lb.qprev = q.tail;
    if (q.tail)
        q.tail->lb.qnext = r;
    else
        q.head = r;
    q.tail = r;
    q.n++;
    if (!moat_timer_armed(&q.t))
        moat_timer_set(q.loop, &q.t, QUEUE_POLL_MS);
    return true;
}

/* --- the phase and the hooks ------------------------------------------------------------- */

int moat_lb_balance(struct moat_req *r)
{
    if (r->site->wr_max_active && !r->bg && r->lb.ntried == 0 && !r->lb.set_wr &&
        waiting_room(r) == MOAT_DONE)
        return MOAT_DONE;
    const struct moat_cfg_pool *fullp = NULL;
    int rc = choose(r, &fullp);
    if (rc == CH_OK && r->upool)
        return MOAT_OK;
    if (rc == CH_OK) { /* no memory for the origin's connection pool */
        release_slot(r);
        unavailable(r, "out of memory\n", 5);
        return MOAT_DONE;
    }
    if (rc == CH_FULL) {
        if (enqueue(r, fullp))
            return MOAT_DONE; /* q_run forwards it */
        atomic_fetch_add_explicit(&rt_pool(r, fullp)->queue_full, 1, memory_order_relaxed);
        unavailable(r, "all origins busy\n", retry_after_s(fullp));
        return MOAT_DONE;
    }
    const struct moat_cfg_pool *pc = r->site->pool;
    atomic_fetch_add_explicit(&rt_pool(r, pc)->no_origin, 1, memory_order_relaxed);
    unavailable(r, "no origin available\n", 5);
    return MOAT_DONE;
}

static void release_slot(struct moat_req *r)
{
    struct moat_lb_origin *o = r->lb.cur;
    if (!o)
        return;
    atomic_fetch_sub_explicit(&o->inflight, 1, memory_order_relaxed);
    r->lb.cur = NULL;
    if (q.n && q.loop)
        moat_timer_set(q.loop, &q.t, 0); /* a slot is free: look at the queue now */
}

void moat_lb_thread_cleanup(void)
{
    free(upc);
    upc = NULL;
    if (q.loop)
        moat_timer_stop(q.loop, &q.t);
    q = (struct lbq){0};
}

void moat_lb_req_end(struct moat_req *r)
{
    if (r->lb.queued)
        q_unlink(r);
    release_slot(r);
}

static bool idempotent(enum moat_method m)
{
    return m == MOAT_M_GET || m == MOAT_M_HEAD || m == MOAT_M_OPTIONS || m == MOAT_M_TRACE ||
           m == MOAT_M_PUT || m == MOAT_M_DELETE;
}

static unsigned retry_budget(const struct moat_req *r)
{
    return r->site && r->site->lb ? r->site->lb->retries : 2;
}

/* Safe to send again elsewhere: nothing of the response went out, the request has no body to
 * replay, and either nothing reached the origin's application or the method is idempotent. */
static bool retry_safe(const struct moat_req *r, enum moat_xerr e)
{
    if (r->head_sent || r->body_len != 0 || r->upgrade)
        return false;
    if (e == MOAT_XERR_CLIENT_GONE || e == MOAT_XERR_CLIENT_TIMEOUT)
        return false;
    return moat_xerr_defs[e].retryable || idempotent(r->meth);
}

bool moat_lb_retry(struct moat_req *r, enum moat_xerr e)
{
    struct moat_lb_origin *o = r->lb.cur;
    if (!o || !r->wcfg->cfg->lb_rt)
        return false;
    const struct moat_cfg_pool *pc = &r->wcfg->cfg->pools[r->pool_idx];
    if (e != MOAT_XERR_CLIENT_GONE && e != MOAT_XERR_CLIENT_TIMEOUT)
        lb_passive_fail(o, pc);
    release_slot(r);
    if (r->lb.ntried < MOAT_LB_TRIED_MAX)
        r->lb.tried[r->lb.ntried++] = o;
    if (!retry_safe(r, e) || r->lb.retries >= retry_budget(r))
        return false;
    /* The pool-wide budget: retries beyond a fifth of the pool's requests (plus a burst of
     * 50) are refused, so that retries cannot multiply the load of an outage. */
    struct lb_pool *lp = rt_pool(r, pc);
    if (atomic_load(&lp->retries) * 5 > atomic_load(&lp->requests) + 50)
        return false;
    const struct moat_cfg_pool *fullp = NULL;
    if (choose(r, &fullp) != CH_OK)
        return false;
    if (!r->upool) {
        release_slot(r);
        return false;
    }
    r->lb.retries++;
    atomic_fetch_add_explicit(&lp->retries, 1, memory_order_relaxed);
    return true;
}

void moat_lb_response(struct moat_req *r, int status)
{
    struct moat_lb_origin *o = r->lb.cur;
    if (!o)
        return;
    const struct moat_cfg_pool *pc = &r->wcfg->cfg->pools[r->pool_idx];
    if (status >= 500)
        lb_passive_fail(o, pc);
    else
        lb_passive_ok(o, pc);
}

uint64_t moat_lb_first_byte_ms(const struct moat_req *r, uint64_t def_ms)
{
    const struct moat_cfg_pool *pc = &r->wcfg->cfg->pools[r->pool_idx];
    if (!pc->try_timeout_ms || !r->lb.cur || r->lb.retries >= retry_budget(r) ||
        !retry_safe(r, MOAT_XERR_TIMEOUT))
        return def_ms;
    return MOAT_MIN(pc->try_timeout_ms, def_ms);
}

uint64_t lb_client_hash(const struct moat_req *r)
{
    uint8_t ip[16];
    client_addr(r, ip);
    return XXH3_64bits(ip, sizeof ip);
}
