/* shield.c: the shield phase (access rules, rate limits, the under-attack challenge), auto
 * mode, and the shield's runtime state, counters and admin controls.
 *
 * Runtime state lives here, outside the configuration snapshot, and survives reloads: the
 * rate table (sized by the first snapshot's shield.keys), one state per site keyed by the
 * site's first host name (auto mode, admin overrides, counters), counters per rule index. A
 * refused request writes no log line (a flood would fill the disk: nginx's limit_req wrote
 * 245 MB in 15 s); it is counted, and the access log still has its line when enabled. */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <xxhash.h>

#include "core/geoip.h"
#include "core/log.h"
#include "core/loop.h"
#include "proxy/pipeline.h"
#include "shield/challenge.h"
#include "shield/page.h"
#include "shield/shield.h"

#define SITES_MAX   1024
#define COOKIE_NAME "moat_clearance"

struct site_rt {
    _Atomic uint64_t id;  /* the site's shield_id; 0: free */
    char name[128];       /* its first host, for /status and /metrics */
    _Atomic int override; /* -1: none; else enum moat_under_attack set by the admin API */
    _Atomic bool on;      /* auto mode: switched on now */
    _Atomic uint64_t sec, reqs, oresp, oerr;  /* the second being counted */
    _Atomic uint64_t above_since, last_above; /* seconds; 0: not above */
    _Atomic uint64_t switched_on, switched_off, since;
    _Atomic uint64_t challenged, passed, failed;
    _Atomic int mode_cfg; /* the configuration's mode, last seen */
};

struct rule_ctr {
    _Atomic uint64_t hit[4];  /* by enum moat_shield_action: refused (block/challenge/drop) or
                                 allowed (access rules' allow) */
    _Atomic uint64_t allowed; /* rate limits: passed */
};

static struct {
    pthread_mutex_t mu;
    _Atomic(struct moat_rl_table *) rl;
    uint64_t keys;
    uint8_t key[32]; /* the HMAC key when no secret_file is configured */
    _Atomic bool key_ready;
    struct site_rt sites[SITES_MAX];
    _Atomic unsigned noverrides;
    struct rule_ctr rl_ctr[MOAT_SHIELD_RULES_MAX], acl_ctr[MOAT_SHIELD_RULES_MAX];
    _Atomic uint64_t conn_refused, cookie_refused;
    char *geoip_path;
    _Atomic(struct moat_geoip *) geoip;
    _Atomic uint64_t admin_blocked;
} sh = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Blocks set through the admin API: at most BLOCKS_MAX, scanned under a read lock only while
 * there are any (one atomic load otherwise). A linear scan is fine at this size: an operator's
 * list, not a feed (feeds belong in shield.access, compiled at load). */
#define BLOCKS_MAX 1024
struct dyn_block {
    struct moat_ip_range r;
    uint64_t until_s;
    char text[64];
};
static struct {
    pthread_rwlock_t lk;
    struct dyn_block b[BLOCKS_MAX];
    size_t n;
    _Atomic size_t live;
} blocks = {.lk = PTHREAD_RWLOCK_INITIALIZER};

/* The admin changes, newest last, for /status. */
#define CHANGES_MAX 32
static struct {
    pthread_mutex_t mu;
    struct {
        uint64_t at;
        char what[128];
    } c[CHANGES_MAX];
    size_t n; /* total ever; the last CHANGES_MAX are kept */
} changes = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Names of the keys refused lately, for GET /shield/top: direct-mapped by key, written on a
 * refusal only when the lock is free (a flood never waits for it). */
#define NAMES_MAX 1024
static struct {
    pthread_spinlock_t lk;
    _Atomic bool init;
    struct {
        uint64_t key;
        uint8_t rule;
        char text[55];
    } e[NAMES_MAX];
} names;

static void change(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void change(const char *fmt, ...)
{
    pthread_mutex_lock(&changes.mu);
    size_t i = changes.n++ % CHANGES_MAX;
    changes.c[i].at = moat_wall_us() / 1000000;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(changes.c[i].what, sizeof changes.c[i].what, fmt, ap);
    va_end(ap);
    moat_log_warn("shield: admin: %s", changes.c[i].what);
    pthread_mutex_unlock(&changes.mu);
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t wall_s(void)
{
    return moat_wall_us() / 1000000;
}

/* The rate table, made on first use with the size the configuration then asks for. */
static struct moat_rl_table *rl_table(const struct moat_config *cfg)
{
    struct moat_rl_table *t = atomic_load_explicit(&sh.rl, memory_order_acquire);
    if (moat_likely(t != NULL))
        return t;
    pthread_mutex_lock(&sh.mu);
    t = atomic_load(&sh.rl);
    if (!t) {
        sh.keys = cfg->shield.keys ? cfg->shield.keys : 65536;
        t = moat_rl_new(sh.keys);
        if (!t)
            moat_log_error("shield: no memory for %llu rate-limit keys",
                           (unsigned long long)sh.keys);
        atomic_store_explicit(&sh.rl, t, memory_order_release);
    }
    pthread_mutex_unlock(&sh.mu);
    return t;
}

static void hmac_key(const struct moat_config *cfg, const uint8_t **k, size_t *kl)
{
    if (cfg->shield.secret_len) {
        *k = cfg->shield.secret;
        *kl = cfg->shield.secret_len;
        return;
    }
    if (!atomic_load_explicit(&sh.key_ready, memory_order_acquire)) {
        pthread_mutex_lock(&sh.mu);
        if (!atomic_load(&sh.key_ready)) {
            if (getrandom(sh.key, sizeof sh.key, 0) != (ssize_t)sizeof sh.key)
                moat_log_error("shield: getrandom failed; the challenge key is weak");
            atomic_store_explicit(&sh.key_ready, true, memory_order_release);
        }
        pthread_mutex_unlock(&sh.mu);
    }
    *k = sh.key;
    *kl = sizeof sh.key;
}

/* The database for match.country, opened when a snapshot names a new path. A handle replaced
 * by a reload is not closed (another worker may be reading it); reloads that change the path
 * are rare, and each costs one mapping. */
static struct moat_geoip *geoip(const struct moat_config *cfg)
{
    struct moat_geoip *g = atomic_load_explicit(&sh.geoip, memory_order_acquire);
    if (g && sh.geoip_path && !strcmp(sh.geoip_path, cfg->shield.geoip))
        return g;
    pthread_mutex_lock(&sh.mu);
    if (!sh.geoip_path || strcmp(sh.geoip_path, cfg->shield.geoip)) {
        char err[256];
        struct moat_geoip *ng = moat_geoip_open(cfg->shield.geoip, err, sizeof err);
        if (!ng)
            moat_log_error("shield: %s", err);
        free(sh.geoip_path);
        sh.geoip_path = strdup(cfg->shield.geoip);
        atomic_store_explicit(&sh.geoip, ng, memory_order_release);
    }
    g = atomic_load(&sh.geoip);
    pthread_mutex_unlock(&sh.mu);
    return g;
}

/* --- sites' runtime state ------------------------------------------------------------------- */

static struct site_rt *site_rt(const struct moat_cfg_site *s)
{
    uint64_t id = s->shield_id;
    for (size_t n = 0, i = id & (SITES_MAX - 1); n < SITES_MAX;
         n++, i = (i + 1) & (SITES_MAX - 1)) {
        struct site_rt *st = &sh.sites[i];
        uint64_t cur = atomic_load_explicit(&st->id, memory_order_acquire);
        if (cur == id) {
            if (moat_unlikely(atomic_load_explicit(&st->mode_cfg, memory_order_relaxed) !=
                              (int)s->under_attack))
                atomic_store(&st->mode_cfg, (int)s->under_attack); /* a reload changed it */
            return st;
        }
        if (cur != 0)
            continue;
        pthread_mutex_lock(&sh.mu);
        if (atomic_load(&st->id) == 0) {
            snprintf(st->name, sizeof st->name, "%s", s->nhosts ? s->hosts[0] : "");
            atomic_store(&st->override, -1);
            atomic_store(&st->mode_cfg, (int)s->under_attack);
            atomic_store_explicit(&st->id, id, memory_order_release);
        }
        pthread_mutex_unlock(&sh.mu);
        if (atomic_load(&st->id) == id)
            return st;
    }
    return NULL;
}

static const char *const mode_names[] = {"off", "on", "auto"};

static void auto_switch(struct site_rt *st, bool on, const char *why)
{
    bool was = !on;
    if (!atomic_compare_exchange_strong(&st->on, &was, on))
        return;
    atomic_store(&st->since, wall_s());
    atomic_fetch_add(on ? &st->switched_on : &st->switched_off, 1);
    moat_log_warn("shield: site %s: under attack mode switched %s (%s)", st->name,
                  on ? "on" : "off", why);
}

/* Auto mode: the counts of the second that ended are judged by the first request of the next
 * one (the thread that moves st->sec). Seconds without any request are below every threshold,
 * so a gap restarts `for`; `quiet` is measured from the last second above, whenever the next
 * request (or a /status read) comes. */
static void auto_tick(const struct moat_config *cfg, struct site_rt *st, uint64_t now)
{
    const struct moat_cfg_shield *s = &cfg->shield;
    uint64_t old = atomic_load_explicit(&st->sec, memory_order_relaxed);
    if (old != now && atomic_compare_exchange_strong(&st->sec, &old, now) && old) {
        uint64_t reqs = atomic_exchange(&st->reqs, 0), oresp = atomic_exchange(&st->oresp, 0),
                 oerr = atomic_exchange(&st->oerr, 0);
        bool above = (s->auto_rps && reqs > s->auto_rps) ||
                     (s->auto_err_pm && oresp >= 10 && oerr * 1000 > s->auto_err_pm * oresp);
        if (above) {
            if (now - old > 1 || !atomic_load(&st->above_since))
                atomic_store(&st->above_since, old);
            atomic_store(&st->last_above, old);
            if (!atomic_load(&st->on) &&
                (old + 1 - atomic_load(&st->above_since)) * 1000 >= s->auto_for_ms) {
                char why[96];
                snprintf(why, sizeof why, "%llu requests/s, %llu of %llu origin answers failed",
                         (unsigned long long)reqs, (unsigned long long)oerr,
                         (unsigned long long)oresp);
                auto_switch(st, true, why);
            }
        } else {
            atomic_store(&st->above_since, 0);
        }
    }
    uint64_t last = atomic_load(&st->last_above);
    if (atomic_load(&st->on) && now > last && (now - last - 1) * 1000 >= s->auto_quiet_ms)
        auto_switch(st, false, "quiet");
}

/* The mode in force for <site>: an admin override, or the configuration's; for auto, whether
 * it is switched on now. */
static bool under_attack(const struct moat_config *cfg, const struct moat_cfg_site *site,
                         struct site_rt *st)
{
    int mode = (int)site->under_attack;
    if (st) {
        int o = atomic_load_explicit(&st->override, memory_order_relaxed);
        if (o >= 0)
            mode = o;
    }
    if (mode == MOAT_UA_ON)
        return true;
    if (mode != MOAT_UA_AUTO || !st)
        return false;
    return atomic_load_explicit(&st->on, memory_order_relaxed);
}

/* --- the client and matching ----------------------------------------------------------------- */

static bool parse_ip(struct moat_str s, uint8_t out[16])
{
    char buf[64];
    while (s.len && (s.ptr[0] == ' ' || s.ptr[0] == '\t'))
        s.ptr++, s.len--;
    while (s.len && (s.ptr[s.len - 1] == ' ' || s.ptr[s.len - 1] == '\t'))
        s.len--;
    if (!s.len || s.len >= sizeof buf)
        return false;
    memcpy(buf, s.ptr, s.len);
    buf[s.len] = 0;
    struct in_addr a4;
    if (inet_pton(AF_INET, buf, &a4) == 1) {
        memset(out, 0, 10);
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &a4, 4);
        return true;
    }
    return inet_pton(AF_INET6, buf, out) == 1;
}

/* The client's address: the peer, or, when the peer is a trusted proxy, the right-most
 * X-Forwarded-For entry that is not itself trusted (the same trust headers.c extends). */
static void client_ip(const struct moat_req *r, uint8_t out[16])
{
    const struct moat_config *cfg = r->wcfg->cfg;
    memcpy(out, r->peer, 16);
    if (!cfg->ntrusted || !moat_config_trusted(cfg, r->peer))
        return;
    for (size_t i = r->nhdrs; i-- > 0;) {
        if (!MOAT_STR_IEQ_LIT(r->hdrs[i].name, "x-forwarded-for"))
            continue;
        struct moat_str v = r->hdrs[i].value;
        size_t end = v.len;
        while (end > 0) {
            size_t st = end;
            while (st > 0 && v.ptr[st - 1] != ',')
                st--;
            uint8_t ip[16];
            if (!parse_ip(moat_str_make(v.ptr + st, end - st), ip))
                return; /* garbage: keep what is known */
            memcpy(out, ip, 16);
            if (!moat_config_trusted(cfg, ip))
                return;
            end = st ? st - 1 : 0;
        }
    }
}

static struct moat_str field(const struct moat_req *r, const char *name, size_t nl)
{
    const struct moat_hdr *h = moat_h1_find(r->hdrs, r->nhdrs, moat_str_make(name, nl));
    return h ? h->value : MOAT_STR_NULL;
}

static bool cookie(const struct moat_req *r, const char *name, struct moat_str *out)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < r->nhdrs; i++) {
        if (!MOAT_STR_IEQ_LIT(r->hdrs[i].name, "cookie"))
            continue;
        size_t pos = 0;
        struct moat_str n, v;
        while (moat_h1_cookie_next(r->hdrs[i].value, &pos, &n, &v))
            if (n.len == nl && !memcmp(n.ptr, name, nl)) {
                *out = v;
                return true;
            }
    }
    return false;
}

static bool in_ranges(const struct moat_ip_range *rg, size_t n, const uint8_t ip[16])
{
    size_t lo = 0, hi = n;
    while (lo < hi) { /* the last range whose lo <= ip */
        size_t mid = (lo + hi) / 2;
        if (memcmp(rg[mid].lo, ip, 16) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && memcmp(ip, rg[lo - 1].hi, 16) <= 0;
}

static struct moat_str host_of(struct moat_str h)
{
    if (h.len && h.ptr[0] == '[') {
        const char *e = memchr(h.ptr, ']', h.len);
        if (e)
            h.len = (size_t)(e - h.ptr) + 1;
    } else {
        const char *c = memchr(h.ptr, ':', h.len);
        if (c)
            h.len = (size_t)(c - h.ptr);
    }
    return h;
}

static bool smatch(const struct moat_config *cfg, const struct moat_cfg_smatch *m,
                   const struct moat_req *r, const uint8_t ip[16])
{
    if (!moat_rule_matches(&m->rule, r))
        return false;
    if (m->nhosts) {
        struct moat_str h = host_of(r->authority);
        bool ok = false;
        for (size_t i = 0; i < m->nhosts && !ok; i++)
            ok = moat_str_ieq(h, moat_str_make(m->hosts[i], strlen(m->hosts[i])));
        if (!ok)
            return false;
    }
    if (m->user_agent) {
        const struct moat_hdr *ua = moat_h1_find(r->hdrs, r->nhdrs, MOAT_STR("user-agent"));
        if (!ua || !moat_glob_match(m->user_agent, ua->value))
            return false;
    }
    if (m->nranges && !in_ranges(m->ranges, m->nranges, ip))
        return false;
    if (m->ncountries) {
        struct moat_geoip *g = geoip(cfg);
        struct sockaddr_in6 sa = {.sin6_family = AF_INET6};
        memcpy(&sa.sin6_addr, ip, 16);
        char cc[3];
        if (!g || moat_geoip_country(g, (const struct sockaddr *)&sa, cc) != 0)
            return false;
        bool ok = false;
        for (size_t i = 0; i < m->ncountries && !ok; i++)
            ok = !memcmp(m->countries[i], cc, 2);
        if (!ok)
            return false;
    }
    return true;
}

/* --- answers -----------------------------------------------------------------------------------
 */

static void chal_ctx(const struct moat_req *r, const struct moat_cfg_site *site,
                     const uint8_t ip[16], struct moat_chal_ctx *c)
{
    hmac_key(r->wcfg->cfg, &c->key, &c->keylen);
    c->site_id = site ? site->shield_id : 0;
    moat_chal_prefix(ip, c->prefix);
    c->ua = field(r, "user-agent", 10);
}

/* Does <r> carry a valid clearance? *<refused> tells a cookie that was there but refused. */
static bool cleared(const struct moat_req *r, const struct moat_chal_ctx *c,
                    enum moat_chal_verdict *refused)
{
    struct moat_str v;
    *refused = MOAT_CHAL_OK;
    if (!cookie(r, COOKIE_NAME, &v))
        return false;
    enum moat_chal_verdict vd = moat_chal_check_cookie(c, v, wall_s());
    if (vd == MOAT_CHAL_OK)
        return true;
    *refused = vd;
    atomic_fetch_add_explicit(&sh.cookie_refused, 1, memory_order_relaxed);
    return false;
}

static const struct moat_hdr no_store = {MOAT_STR("Cache-Control"), MOAT_STR("no-store")};

/* The challenge page: 503 (the site is not available to this client yet), never stored. */
static int challenge(struct moat_req *r, const struct moat_chal_ctx *c, struct site_rt *st,
                     enum moat_chal_verdict refused)
{
    static __thread char page[MOAT_SHIELD_PAGE_MAX];
    char tok[MOAT_CHAL_TOKEN_MAX], to[1024];
    moat_chal_token(c, wall_s(), tok);
    struct moat_str t = r->target;
    if (t.len == 0 || t.ptr[0] != '/' || t.len >= sizeof to) /* absolute-form, or too long */
        t = r->path.len && r->path.len < sizeof to ? r->path : MOAT_STR("/");
    memcpy(to, t.ptr, t.len);
    to[t.len] = 0;
    char msg[400] = "";
    if (refused != MOAT_CHAL_OK)
        snprintf(msg, sizeof msg,
                 "Your browser's clearance for this site was refused: %s The check must be "
                 "done again.",
                 moat_chal_verdict_text(refused));
    size_t n = moat_shield_page(page, sizeof page, tok, r->wcfg->cfg->shield.difficulty, to,
                                msg[0] ? msg : NULL, refused == MOAT_CHAL_OK);
    if (st)
        atomic_fetch_add_explicit(&st->challenged, 1, memory_order_relaxed);
    struct moat_hdr extra[2] = {no_store, {MOAT_STR("Moat-Shield"), MOAT_STR("challenge")}};
    moat_req_respond(r, 503, "text/html; charset=utf-8", extra, 2, moat_str_make(page, n));
    return MOAT_DONE;
}

static int block(struct moat_req *r, int status, uint64_t retry_ns)
{
    char ra[24];
    struct moat_hdr extra[3] = {no_store, {MOAT_STR("Moat-Shield"), MOAT_STR("block")}};
    size_t ne = 2;
    if (status == 429) {
        uint64_t s = (retry_ns + 999999999ull) / 1000000000ull;
        int n = snprintf(ra, sizeof ra, "%llu", (unsigned long long)(s ? s : 1));
        extra[ne++] = (struct moat_hdr){MOAT_STR("Retry-After"), moat_str_make(ra, (size_t)n)};
    }
    moat_req_respond(r, status, NULL, extra, ne,
                     status == 429 ? MOAT_STR("too many requests\n") : MOAT_STR("forbidden\n"));
    return MOAT_DONE;
}

/* drop: the connection closes without an answer; the access log says 444 (nginx's word). */
static int drop(struct moat_req *r)
{
    r->status = 444;
    r->close = true;
    r->ds->abort(r);
    r->aborted = true;
    return MOAT_DONE;
}

/* The answer endpoint: checks the challenge and the proof of work, sets the clearance cookie
 * and sends the browser back where it was going (303: the POST becomes a GET). A refused
 * answer gets a page that says why and a link back, never an automatic retry. */
static int answer(struct moat_req *r, const struct moat_cfg_site *site, const uint8_t ip[16],
                  struct site_rt *st)
{
    static __thread char page[MOAT_SHIELD_PAGE_MAX];
    const struct moat_config *cfg = r->wcfg->cfg;
    struct moat_chal_answer a;
    struct moat_chal_ctx c;
    chal_ctx(r, site, ip, &c);
    enum moat_chal_verdict v = MOAT_CHAL_MALFORMED;
    if (moat_chal_parse_answer(r->query, &a) == MOAT_OK) {
        v = moat_chal_check_token(&c, a.c, wall_s(), MOAT_CHAL_MAX_AGE_S);
        if (v == MOAT_CHAL_OK)
            v = moat_chal_check_pow(a.c, a.n, cfg->shield.difficulty);
    } else {
        memcpy(a.to, "/", 2);
    }
    if (v != MOAT_CHAL_OK) {
        if (st)
            atomic_fetch_add_explicit(&st->failed, 1, memory_order_relaxed);
        size_t n = moat_shield_refused_page(page, sizeof page, moat_chal_verdict_text(v), a.to);
        struct moat_hdr extra[2] = {no_store, {MOAT_STR("Moat-Shield"), MOAT_STR("refused")}};
        moat_req_respond(r, 403, "text/html; charset=utf-8", extra, 2, moat_str_make(page, n));
        return MOAT_DONE;
    }
    if (st)
        atomic_fetch_add_explicit(&st->passed, 1, memory_order_relaxed);
    char val[MOAT_CHAL_TOKEN_MAX], sc[160];
    uint64_t life = cfg->shield.clearance_ms / 1000;
    moat_chal_cookie(&c, wall_s() + life, val);
    int n =
        snprintf(sc, sizeof sc, COOKIE_NAME "=%s; Path=/; Max-Age=%llu; HttpOnly; SameSite=Lax%s",
                 val, (unsigned long long)life, r->tls ? "; Secure" : "");
    struct moat_hdr extra[3] = {
        no_store,
        {MOAT_STR("Set-Cookie"), moat_str_make(sc, (size_t)n)},
        {MOAT_STR("Location"), moat_str_make(a.to, a.tolen)},
    };
    moat_req_respond(r, 303, NULL, extra, 3, MOAT_STR("cleared\n"));
    return MOAT_DONE;
}

/* --- admin blocks and the names of busy keys ------------------------------------------------- */

static bool admin_blocked(const uint8_t ip[16])
{
    uint64_t now = wall_s();
    bool hit = false;
    pthread_rwlock_rdlock(&blocks.lk);
    for (size_t i = 0; i < blocks.n && !hit; i++)
        hit = blocks.b[i].until_s > now && memcmp(ip, blocks.b[i].r.lo, 16) >= 0 &&
              memcmp(ip, blocks.b[i].r.hi, 16) <= 0;
    pthread_rwlock_unlock(&blocks.lk);
    return hit;
}

/* Drops expired blocks; the write lock is held. */
static void blocks_prune(uint64_t now)
{
    size_t o = 0;
    for (size_t i = 0; i < blocks.n; i++)
        if (blocks.b[i].until_s > now)
            blocks.b[o++] = blocks.b[i];
    blocks.n = o;
    atomic_store(&blocks.live, o);
}

static int range_of(const char *text, struct moat_ip_range *r, char *err, size_t errlen)
{
    struct moat_cidr c;
    if (moat_cidr_parse_err(text, &c, err, errlen) != 0)
        return MOAT_ERR;
    moat_cidr_range(&c, r);
    return MOAT_OK;
}

int moat_shield_block(const char *cidr, uint64_t for_ms, char *err, size_t errlen)
{
    struct moat_ip_range r;
    if (range_of(cidr, &r, err, errlen) != MOAT_OK)
        return MOAT_ERR;
    uint64_t now = wall_s();
    pthread_rwlock_wrlock(&blocks.lk);
    blocks_prune(now);
    size_t i = 0;
    while (i < blocks.n &&
           (memcmp(blocks.b[i].r.lo, r.lo, 16) || memcmp(blocks.b[i].r.hi, r.hi, 16)))
        i++;
    if (i == BLOCKS_MAX) {
        pthread_rwlock_unlock(&blocks.lk);
        snprintf(err, errlen, "at most %d blocks at once", BLOCKS_MAX);
        return MOAT_ERR;
    }
    blocks.b[i].r = r;
    blocks.b[i].until_s = now + (for_ms + 999) / 1000;
    snprintf(blocks.b[i].text, sizeof blocks.b[i].text, "%s", cidr);
    if (i == blocks.n)
        blocks.n++;
    atomic_store(&blocks.live, blocks.n);
    pthread_rwlock_unlock(&blocks.lk);
    change("block %s for %llus", cidr, (unsigned long long)((for_ms + 999) / 1000));
    return MOAT_OK;
}

int moat_shield_unblock(const char *cidr, char *err, size_t errlen)
{
    struct moat_ip_range r;
    if (range_of(cidr, &r, err, errlen) != MOAT_OK)
        return MOAT_ERR;
    bool found = false;
    pthread_rwlock_wrlock(&blocks.lk);
    for (size_t i = 0; i < blocks.n; i++)
        if (!memcmp(blocks.b[i].r.lo, r.lo, 16) && !memcmp(blocks.b[i].r.hi, r.hi, 16)) {
            blocks.b[i].until_s = 0;
            found = true;
        }
    blocks_prune(wall_s());
    pthread_rwlock_unlock(&blocks.lk);
    if (!found) {
        snprintf(err, errlen, "%s is not blocked", cidr);
        return MOAT_ERR;
    }
    change("unblock %s", cidr);
    return MOAT_OK;
}

/* Remembers what <key> of rule <idx> is, for GET /shield/top. */
static void name_key(uint64_t key, size_t idx, const struct moat_cfg_ratelimit *rl,
                     const struct moat_req *r, const uint8_t ip[16])
{
    if (!atomic_load_explicit(&names.init, memory_order_acquire)) {
        pthread_mutex_lock(&sh.mu);
        if (!atomic_load(&names.init)) {
            pthread_spin_init(&names.lk, PTHREAD_PROCESS_PRIVATE);
            atomic_store_explicit(&names.init, true, memory_order_release);
        }
        pthread_mutex_unlock(&sh.mu);
    }
    size_t slot = key & (NAMES_MAX - 1);
    if (names.e[slot].key == key || pthread_spin_trylock(&names.lk) != 0)
        return;
    names.e[slot].key = key;
    names.e[slot].rule = (uint8_t)idx;
    struct moat_str v = MOAT_STR_NULL;
    if (rl->key == MOAT_SK_HEADER)
        v = field(r, rl->key_name, strlen(rl->key_name));
    else if (rl->key == MOAT_SK_COOKIE)
        cookie(r, rl->key_name, &v);
    if (v.len) {
        snprintf(names.e[slot].text, sizeof names.e[slot].text, "%s:%.*s",
                 rl->key == MOAT_SK_HEADER ? "header" : "cookie", (int)MOAT_MIN(v.len, 40u), v.ptr);
    } else {
        char a[INET6_ADDRSTRLEN];
        static const uint8_t v4m[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (!memcmp(ip, v4m, 12))
            inet_ntop(AF_INET, ip + 12, a, sizeof a);
        else
            inet_ntop(AF_INET6, ip, a, sizeof a);
        if (rl->key == MOAT_SK_IP_PREFIX)
            snprintf(names.e[slot].text, sizeof names.e[slot].text, "%s/%u", a, rl->prefix);
        else
            snprintf(names.e[slot].text, sizeof names.e[slot].text, "%s", a);
    }
    pthread_spin_unlock(&names.lk);
}

json_t *moat_shield_top(size_t n)
{
    json_t *arr = json_array();
    struct moat_rl_table *t = atomic_load(&sh.rl);
    if (!t)
        return arr;
    if (n > 100)
        n = 100;
    uint64_t keys[100], ahead[100];
    size_t k = moat_rl_top(t, mono_ns(), n, keys, ahead);
    /* busiest first */
    for (size_t i = 0; i < k; i++)
        for (size_t j = i + 1; j < k; j++)
            if (ahead[j] > ahead[i]) {
                uint64_t x = ahead[i], y = keys[i];
                ahead[i] = ahead[j], keys[i] = keys[j];
                ahead[j] = x, keys[j] = y;
            }
    bool ni = atomic_load(&names.init);
    if (ni)
        pthread_spin_lock(&names.lk);
    for (size_t i = 0; i < k; i++) {
        char hex[20];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)keys[i]);
        size_t slot = keys[i] & (NAMES_MAX - 1);
        bool named = ni && names.e[slot].key == keys[i];
        json_t *e = json_pack("{s:s, s:f}", "key", hex, "ahead_seconds", (double)ahead[i] / 1e9);
        json_object_set_new(e, "name", named ? json_string(names.e[slot].text) : json_null());
        json_object_set_new(e, "rule", named ? json_integer(names.e[slot].rule) : json_null());
        json_array_append_new(arr, e);
    }
    if (ni)
        pthread_spin_unlock(&names.lk);
    return arr;
}

/* --- the phase ------------------------------------------------------------------------------ */

static uint64_t rl_key(const struct moat_cfg_ratelimit *rl, size_t idx, const struct moat_req *r,
                       const uint8_t ip[16])
{
    uint64_t seed = 0x9e3779b97f4a7c15ull * (idx + 1) + rl->interval_ns;
    struct moat_str v = MOAT_STR_NULL;
    switch (rl->key) {
    case MOAT_SK_HEADER:
        v = field(r, rl->key_name, strlen(rl->key_name));
        break;
    case MOAT_SK_COOKIE:
        cookie(r, rl->key_name, &v);
        break;
    case MOAT_SK_IP_PREFIX: {
        static const uint8_t v4m[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        struct moat_cidr c = {
            .prefix = (uint8_t)(memcmp(ip, v4m, 12) ? rl->prefix : 96 + MOAT_MIN(rl->prefix, 32u))};
        memcpy(c.addr, ip, 16);
        struct moat_ip_range p;
        moat_cidr_range(&c, &p);
        return XXH3_64bits_withSeed(p.lo, 16, seed);
    }
    case MOAT_SK_CLIENT_IP:
    default:
        break;
    }
    if (v.ptr && v.len)
        return XXH3_64bits_withSeed(v.ptr, v.len, seed ^ 1);
    return XXH3_64bits_withSeed(ip, 16, seed); /* no such header or cookie: by address */
}

static void rate_of(const struct moat_cfg_ratelimit *rl, struct moat_rl_rate *rt)
{
    rt->interval_ns = rl->interval_ns;
    rt->burst = rl->burst;
    rt->cap_ns = (uint64_t)rl->rate_unit_s * 1000000000ull;
    rt->count_refused = rl->count_refused;
}

bool moat_shield_idle(const struct moat_config *cfg)
{
    const struct moat_cfg_shield *s = &cfg->shield;
    return !s->nrate_limits && !s->naccess && !s->any_challenge &&
           !atomic_load_explicit(&sh.noverrides, memory_order_relaxed) &&
           !atomic_load_explicit(&blocks.live, memory_order_relaxed);
}

int moat_shield_request(struct moat_req *r, const struct moat_cfg_site *site)
{
    const struct moat_config *cfg = r->wcfg->cfg;
    const struct moat_cfg_shield *s = &cfg->shield;
    r->sh_rule = 0;
    struct site_rt *st = NULL;
    bool ua_cfg = site && site->under_attack != MOAT_UA_OFF;
    if (site && (ua_cfg || atomic_load_explicit(&sh.noverrides, memory_order_relaxed)))
        st = site_rt(site);
    bool chal_possible = s->any_challenge || (st && atomic_load(&st->override) > 0);
    bool blocks_live = atomic_load_explicit(&blocks.live, memory_order_relaxed) > 0;
    if (!s->nrate_limits && !s->naccess && !chal_possible && !blocks_live)
        return MOAT_DECLINED;
    uint8_t ip[16];
    client_ip(r, ip);
    if (blocks_live && admin_blocked(ip)) {
        atomic_fetch_add_explicit(&sh.admin_blocked, 1, memory_order_relaxed);
        return block(r, 403, 0);
    }
    if (chal_possible && moat_str_eq(r->path, MOAT_STR(MOAT_SHIELD_ANSWER_PATH)))
        return answer(r, site, ip, st);
    if (st && site->under_attack == MOAT_UA_AUTO) {
        uint64_t now = wall_s();
        atomic_fetch_add_explicit(&st->reqs, 1, memory_order_relaxed);
        auto_tick(cfg, st, now);
    }
    struct moat_chal_ctx c;
    bool have_ctx = false;
    enum moat_chal_verdict refused = MOAT_CHAL_OK;

    /* access rules: the first match decides; allow skips everything else */
    bool passed_challenge = false;
    for (size_t i = 0; i < s->naccess; i++) {
        const struct moat_cfg_access *a = &s->access[i];
        if (!smatch(cfg, &a->match, r, ip))
            continue;
        atomic_fetch_add_explicit(&sh.acl_ctr[i].hit[a->action], 1, memory_order_relaxed);
        switch (a->action) {
        case MOAT_SA_ALLOW:
            return MOAT_DECLINED;
        case MOAT_SA_BLOCK:
            return block(r, 403, 0);
        case MOAT_SA_DROP:
            return drop(r);
        case MOAT_SA_CHALLENGE:
            chal_ctx(r, site, ip, &c);
            have_ctx = true;
            if (!cleared(r, &c, &refused))
                return challenge(r, &c, st, refused);
            passed_challenge = true;
            break;
        }
        break;
    }

    /* rate limits: the first matching rule's bucket */
    for (size_t i = 0; i < s->nrate_limits; i++) {
        const struct moat_cfg_ratelimit *rl = &s->rate_limits[i];
        if (!smatch(cfg, &rl->match, r, ip))
            continue;
        struct moat_rl_table *t = rl_table(cfg);
        if (!t)
            break;
        struct moat_rl_rate rt;
        rate_of(rl, &rt);
        uint64_t key = rl_key(rl, i, r, ip), retry = 0;
        if (moat_rl_take(t, key, mono_ns(), &rt, !rl->count_origin, &retry)) {
            atomic_fetch_add_explicit(&sh.rl_ctr[i].allowed, 1, memory_order_relaxed);
            if (rl->count_origin) {
                r->sh_rule = (uint8_t)(i + 1);
                r->sh_key = key;
            }
            break;
        }
        atomic_fetch_add_explicit(&sh.rl_ctr[i].hit[rl->action], 1, memory_order_relaxed);
        name_key(key, i, rl, r, ip);
        if (rl->action == MOAT_SA_DROP)
            return drop(r);
        if (rl->action == MOAT_SA_CHALLENGE && !passed_challenge) {
            if (!have_ctx)
                chal_ctx(r, site, ip, &c);
            have_ctx = true;
            if (!cleared(r, &c, &refused))
                return challenge(r, &c, st, refused);
        }
        /* block, or a challenge already passed: over the rate all the same */
        return block(r, 429, retry);
    }

    /* under attack: everyone shows a clearance, except on exempt paths */
    if (site && (ua_cfg || st) && under_attack(cfg, site, st)) {
        for (size_t i = 0; i < site->nchallenge_exempt; i++)
            if (moat_glob_match(site->challenge_exempt[i], r->path))
                return MOAT_DECLINED;
        if (passed_challenge)
            return MOAT_DECLINED;
        if (!have_ctx)
            chal_ctx(r, site, ip, &c);
        if (!cleared(r, &c, &refused))
            return challenge(r, &c, st, refused);
    }
    return MOAT_DECLINED;
}

void moat_shield_origin(struct moat_req *r)
{
    if (!r->sh_rule)
        return;
    const struct moat_config *cfg = r->wcfg->cfg;
    size_t i = r->sh_rule - 1u;
    r->sh_rule = 0;
    struct moat_rl_table *t = rl_table(cfg);
    if (!t || i >= cfg->shield.nrate_limits)
        return;
    struct moat_rl_rate rt;
    rate_of(&cfg->shield.rate_limits[i], &rt);
    moat_rl_charge(t, r->sh_key, mono_ns(), &rt);
}

void moat_shield_account(const struct moat_req *r)
{
    if (!r->site || r->site->under_attack != MOAT_UA_AUTO || !r->t_up_start_us)
        return;
    struct site_rt *st = site_rt(r->site);
    if (!st)
        return;
    atomic_fetch_add_explicit(&st->oresp, 1, memory_order_relaxed);
    if (r->status >= 500 || r->xerr != MOAT_XERR_NONE)
        atomic_fetch_add_explicit(&st->oerr, 1, memory_order_relaxed);
}

bool moat_shield_conn_open(const struct moat_config *cfg, const uint8_t ip[16])
{
    if (!cfg->shield.conn_per_ip)
        return false;
    if (moat_cc_open(ip, cfg->shield.conn_per_ip))
        return true;
    atomic_fetch_add_explicit(&sh.conn_refused, 1, memory_order_relaxed);
    return false;
}

void moat_shield_conn_close(const uint8_t ip[16])
{
    moat_cc_close(ip);
}

/* --- admin ----------------------------------------------------------------------------------- */

int moat_shield_set_mode(const struct moat_config *cfg, const char *host, const char *mode,
                         char *err, size_t errlen)
{
    const struct moat_cfg_site *site = moat_config_site(cfg, moat_str_make(host, strlen(host)));
    if (!site) {
        snprintf(err, errlen, "no site serves the host \"%s\"", host);
        return MOAT_ERR;
    }
    int m = -2;
    for (int i = 0; i < 3; i++)
        if (!strcmp(mode, mode_names[i]))
            m = i;
    if (!strcmp(mode, "config"))
        m = -1;
    if (m == -2) {
        snprintf(err, errlen, "mode \"%s\" is not on, off, auto or config", mode);
        return MOAT_ERR;
    }
    struct site_rt *st = site_rt(site);
    if (!st) {
        snprintf(err, errlen, "too many sites for the shield's state (%d)", SITES_MAX);
        return MOAT_ERR;
    }
    int old = atomic_exchange(&st->override, m);
    if (old < 0 && m >= 0)
        atomic_fetch_add(&sh.noverrides, 1);
    else if (old >= 0 && m < 0)
        atomic_fetch_sub(&sh.noverrides, 1);
    change("site %s: under_attack %s", st->name, mode);
    return MOAT_OK;
}

json_t *moat_shield_status(const struct moat_config *cfg)
{
    json_t *o = json_object(), *sites = json_array();
    uint64_t now = wall_s();
    for (size_t i = 0; i < cfg->nsites; i++) {
        const struct moat_cfg_site *site = &cfg->sites[i];
        struct site_rt *st = (site->under_attack != MOAT_UA_OFF || atomic_load(&sh.noverrides))
                                 ? site_rt(site)
                                 : NULL;
        if (st && site->under_attack == MOAT_UA_AUTO)
            auto_tick(cfg, st, now);
        int o_ = st ? atomic_load(&st->override) : -1;
        json_t *e =
            json_pack("{s:s, s:s, s:b}", "site", site->nhosts ? site->hosts[0] : "", "under_attack",
                      mode_names[site->under_attack], "active", under_attack(cfg, site, st));
        json_object_set_new(e, "override", o_ >= 0 ? json_string(mode_names[o_]) : json_null());
        if (st) {
            json_object_set_new(e, "auto_on", json_boolean(atomic_load(&st->on)));
            json_object_set_new(e, "switched_on",
                                json_integer((json_int_t)atomic_load(&st->switched_on)));
            json_object_set_new(e, "switched_off",
                                json_integer((json_int_t)atomic_load(&st->switched_off)));
            json_object_set_new(e, "challenged",
                                json_integer((json_int_t)atomic_load(&st->challenged)));
            json_object_set_new(e, "passed", json_integer((json_int_t)atomic_load(&st->passed)));
            json_object_set_new(e, "failed", json_integer((json_int_t)atomic_load(&st->failed)));
        }
        json_array_append_new(sites, e);
    }
    json_object_set_new(o, "sites", sites);
    json_t *bl = json_array();
    pthread_rwlock_rdlock(&blocks.lk);
    for (size_t i = 0; i < blocks.n; i++)
        if (blocks.b[i].until_s > now)
            json_array_append_new(bl,
                                  json_pack("{s:s, s:I}", "cidr", blocks.b[i].text, "seconds_left",
                                            (json_int_t)(blocks.b[i].until_s - now)));
    pthread_rwlock_unlock(&blocks.lk);
    json_object_set_new(o, "blocks", bl);
    json_t *ch = json_array();
    pthread_mutex_lock(&changes.mu);
    for (size_t i = changes.n > CHANGES_MAX ? changes.n - CHANGES_MAX : 0; i < changes.n; i++)
        json_array_append_new(ch, json_pack("{s:I, s:s}", "at",
                                            (json_int_t)changes.c[i % CHANGES_MAX].at, "what",
                                            changes.c[i % CHANGES_MAX].what));
    pthread_mutex_unlock(&changes.mu);
    json_object_set_new(o, "changes", ch);
    struct moat_rl_table *t = atomic_load(&sh.rl);
    if (t) {
        struct moat_rl_stats rs;
        moat_rl_stats(t, &rs);
        json_object_set_new(o, "rate_table",
                            json_pack("{s:I, s:I, s:I, s:I}", "capacity", (json_int_t)rs.capacity,
                                      "bytes", (json_int_t)rs.bytes, "used", (json_int_t)rs.used,
                                      "evicted", (json_int_t)rs.evicted));
    }
    return o;
}

/* --- metrics --------------------------------------------------------------------------------- */

char *moat_shield_metrics(size_t *len)
{
    static const char *const act[] = {"block", "challenge", "drop", "allow"};
    struct moat_sbuf b = {0};
    moat_sbuf_printf(
        &b, "# HELP moat_shield_rate_limited_total Requests over a rate limit, by rule and "
            "action\n# TYPE moat_shield_rate_limited_total counter\n");
    for (int i = 0; i < MOAT_SHIELD_RULES_MAX; i++)
        for (int a = 0; a < 3; a++) {
            uint64_t v = atomic_load(&sh.rl_ctr[i].hit[a]);
            if (v)
                moat_sbuf_printf(&b,
                                 "moat_shield_rate_limited_total{rule=\"%d\",action=\"%s\"} %llu\n",
                                 i, act[a], (unsigned long long)v);
        }
    moat_sbuf_printf(&b,
                     "# HELP moat_shield_rate_allowed_total Requests within a rate limit, by rule\n"
                     "# TYPE moat_shield_rate_allowed_total counter\n");
    for (int i = 0; i < MOAT_SHIELD_RULES_MAX; i++) {
        uint64_t v = atomic_load(&sh.rl_ctr[i].allowed);
        if (v)
            moat_sbuf_printf(&b, "moat_shield_rate_allowed_total{rule=\"%d\"} %llu\n", i,
                             (unsigned long long)v);
    }
    moat_sbuf_printf(&b,
                     "# HELP moat_shield_access_total Requests an access rule matched, by rule and "
                     "action\n# TYPE moat_shield_access_total counter\n");
    for (int i = 0; i < MOAT_SHIELD_RULES_MAX; i++)
        for (int a = 0; a < 4; a++) {
            uint64_t v = atomic_load(&sh.acl_ctr[i].hit[a]);
            if (v)
                moat_sbuf_printf(&b, "moat_shield_access_total{rule=\"%d\",action=\"%s\"} %llu\n",
                                 i, act[a], (unsigned long long)v);
        }
    moat_sbuf_printf(&b,
                     "# HELP moat_shield_connections_refused_total Connections closed at accept "
                     "(connections.per_ip)\n# TYPE moat_shield_connections_refused_total counter\n"
                     "moat_shield_connections_refused_total %llu\n",
                     (unsigned long long)atomic_load(&sh.conn_refused));
    moat_sbuf_printf(
        &b,
        "# HELP moat_shield_admin_blocked_total Requests refused by a block set through the "
        "admin API\n# TYPE moat_shield_admin_blocked_total counter\n"
        "moat_shield_admin_blocked_total %llu\n",
        (unsigned long long)atomic_load(&sh.admin_blocked));
    moat_sbuf_printf(
        &b,
        "# HELP moat_shield_cookies_refused_total Clearance cookies refused (forged, "
        "expired, another address or browser)\n# TYPE moat_shield_cookies_refused_total "
        "counter\nmoat_shield_cookies_refused_total %llu\n",
        (unsigned long long)atomic_load(&sh.cookie_refused));
    static const char *const sitem[][3] = {
        {"moat_shield_challenged_total", "Challenge pages sent, by site", "counter"},
        {"moat_shield_challenge_passed_total", "Answers accepted (clearance given), by site",
         "counter"},
        {"moat_shield_challenge_failed_total", "Answers refused, by site", "counter"},
        {"moat_shield_under_attack", "1 when the site's challenge is on now, by site", "gauge"},
        {"moat_shield_under_attack_switches_total", "Auto mode switches, by site and direction",
         "counter"},
    };
    for (size_t m = 0; m < MOAT_ARRAY_LEN(sitem); m++) {
        moat_sbuf_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", sitem[m][0], sitem[m][1], sitem[m][0],
                         sitem[m][2]);
        for (int i = 0; i < SITES_MAX; i++) {
            struct site_rt *st = &sh.sites[i];
            if (!atomic_load(&st->id))
                continue;
            if (m == 4) {
                moat_sbuf_printf(
                    &b, "%s{site=\"%s\",to=\"on\"} %llu\n%s{site=\"%s\",to=\"off\"} %llu\n",
                    sitem[m][0], st->name, (unsigned long long)atomic_load(&st->switched_on),
                    sitem[m][0], st->name, (unsigned long long)atomic_load(&st->switched_off));
                continue;
            }
            int mode = atomic_load(&st->override);
            if (mode < 0)
                mode = atomic_load(&st->mode_cfg);
            uint64_t v = m == 0   ? atomic_load(&st->challenged)
                         : m == 1 ? atomic_load(&st->passed)
                         : m == 2 ? atomic_load(&st->failed)
                                  : (uint64_t)(mode == MOAT_UA_ON ||
                                               (mode == MOAT_UA_AUTO && atomic_load(&st->on)));
            moat_sbuf_printf(&b, "%s{site=\"%s\"} %llu\n", sitem[m][0], st->name,
                             (unsigned long long)v);
        }
    }
    struct moat_rl_table *t = atomic_load(&sh.rl);
    if (t) {
        struct moat_rl_stats rs;
        moat_rl_stats(t, &rs);
        moat_sbuf_printf(
            &b,
            "# HELP moat_shield_keys Rate-limit keys tracked now\n# TYPE moat_shield_keys gauge\n"
            "moat_shield_keys %llu\n# HELP moat_shield_keys_capacity Rate-limit keys the table "
            "holds (shield.keys, rounded up)\n# TYPE moat_shield_keys_capacity gauge\n"
            "moat_shield_keys_capacity %llu\n# HELP moat_shield_table_bytes Memory of the "
            "rate-limit table\n# TYPE moat_shield_table_bytes gauge\nmoat_shield_table_bytes "
            "%llu\n# HELP moat_shield_keys_evicted_total Keys pushed out of the table by new "
            "ones, by whether they were still limiting\n# TYPE moat_shield_keys_evicted_total "
            "counter\nmoat_shield_keys_evicted_total{live=\"false\"} %llu\n"
            "moat_shield_keys_evicted_total{live=\"true\"} %llu\n",
            (unsigned long long)rs.used, (unsigned long long)rs.capacity,
            (unsigned long long)rs.bytes, (unsigned long long)(rs.evicted - rs.evicted_live),
            (unsigned long long)rs.evicted_live);
    }
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    *len = b.n;
    return b.p;
}
