/* pipeline.c: the request's way through moat, top to bottom. Each phase has one owner module;
 * this file only says in which order they run. Response-side steps (response filter, store,
 * log) run from exchange.c, cache.c and alog.c as the response passes; they will move here as
 * they grow. */
#include "proxy/pipeline.h"

#include "acme/acme.h"
#include "lb/lb.h"
#include "shield/shield.h"

static struct moat_str host_only(struct moat_str host);

/* --- shield: access rules, rate limits, the under-attack challenge (src/shield/). It runs
 * before route, so it looks the site up itself (the same lookup route makes): per-site state
 * (under_attack, challenge_exempt) needs it. */
static int phase_shield(struct moat_req *r)
{
    const struct moat_config *cfg = r->wcfg->cfg;
    if (moat_shield_idle(cfg))
        return MOAT_DECLINED;
    const struct moat_cfg_site *site =
        r->wcfg->only_site ? r->wcfg->only_site : moat_config_site(cfg, host_only(r->authority));
    return moat_shield_request(r, site);
}

/* --- rules: the site's cache rules, first match wins ------------------------------------ */

/* Glob match: '*' any run of bytes (including '/'), '?' one byte. Iterative with one
 * backtrack point: linear in practice, never exponential. */
bool moat_glob_match(const char *g, struct moat_str s)
{
    size_t i = 0, star_g = (size_t)-1, star_i = 0;
    const char *p = g;
    while (i < s.len) {
        if (*p == '*') {
            star_g = (size_t)(++p - g);
            star_i = i;
        } else if (*p && (*p == '?' || *p == s.ptr[i])) {
            p++;
            i++;
        } else if (star_g != (size_t)-1) {
            p = g + star_g;
            i = ++star_i;
        } else {
            return false;
        }
    }
    while (*p == '*')
        p++;
    return *p == 0;
}

/* Does the query string <v> have a parameter named <name> ("name" or "name=...")? */
static bool has_param(struct moat_str v, const char *name)
{
    const char sep = '&';
    size_t nl = strlen(name), i = 0;
    while (i < v.len) {
        while (i < v.len && (v.ptr[i] == ' ' || v.ptr[i] == sep))
            i++;
        size_t j = i;
        while (j < v.len && v.ptr[j] != sep)
            j++;
        size_t k = i;
        while (k < j && v.ptr[k] != '=')
            k++;
        if (k - i == nl && !memcmp(v.ptr + i, name, nl))
            return true;
        i = j;
    }
    return false;
}

/* Does the Cookie field value <v> hold a cookie named <name>? Parsed like the cache key's
 * cookies (moat_h1_cookie_next), so a rule and its key.cookies agree on what is there. */
static bool has_cookie(struct moat_str v, const char *name)
{
    size_t nl = strlen(name), pos = 0;
    struct moat_str n, val;
    while (moat_h1_cookie_next(v, &pos, &n, &val))
        if (n.len == nl && !memcmp(n.ptr, name, nl))
            return true;
    return false;
}

bool moat_rule_matches(const struct moat_cfg_rule *r, const struct moat_req *q)
{
    if (r->methods && !(r->methods & (1u << q->meth)))
        return false;
    if (r->path && !moat_glob_match(r->path, q->path))
        return false;
    if (r->query && !has_param(q->query, r->query))
        return false;
    if (r->header && !moat_h1_find(q->hdrs, q->nhdrs, moat_str_make(r->header, strlen(r->header))))
        return false;
    if (r->cookie) {
        bool found = false;
        for (size_t i = 0; i < q->nhdrs && !found; i++)
            if (MOAT_STR_IEQ_LIT(q->hdrs[i].name, "cookie"))
                found = has_cookie(q->hdrs[i].value, r->cookie);
        if (!found)
            return false;
    }
    return true;
}

/* File types a CDN caches by default (Cloudflare's list, trimmed to the common ones). */
static bool static_type(struct moat_str path)
{
    static const char *const ext[] = {
        "css",   "js",  "mjs", "png",  "jpg",  "jpeg",  "gif",  "webp", "avif", "svg",
        "ico",   "bmp", "tif", "tiff", "woff", "woff2", "ttf",  "otf",  "eot",  "mp4",
        "webm",  "ogg", "mp3", "wav",  "flac", "m4a",   "avi",  "mov",  "pdf",  "zip",
        "gz",    "tar", "7z",  "rar",  "bz2",  "doc",   "docx", "xls",  "xlsx", "ppt",
        "pptx",  "csv", "txt", "swf",  "apk",  "dmg",   "iso",  "bin",  "exe",  "jar",
        "class", "ps",  "eps", "pict", "midi", "mid",   "map"};
    size_t dot = path.len;
    while (dot > 0 && path.ptr[dot - 1] != '.' && path.ptr[dot - 1] != '/')
        dot--;
    if (dot == 0 || path.ptr[dot - 1] != '.')
        return false;
    struct moat_str e = moat_str_make(path.ptr + dot, path.len - dot);
    for (size_t i = 0; i < MOAT_ARRAY_LEN(ext); i++)
        if (moat_str_ieq_lc(e, ext[i], strlen(ext[i])))
            return true;
    return false;
}

static void pick_rule(struct moat_req *r)
{
    r->rule = NULL;
    r->static_default = false;
    for (size_t i = 0; i < r->site->nrules; i++) {
        if (moat_rule_matches(&r->site->rules[i], r)) {
            r->rule = &r->site->rules[i];
            return;
        }
    }
    r->static_default = r->wcfg->cfg->cache.static_ttl_ms > 0 && static_type(r->path);
}

/* Is the protocol of Upgrade token <tok> ("websocket", "foo/2": the name before any
 * version) one the site forwards? */
bool moat_upgrade_allowed(const struct moat_cfg_site *site, struct moat_str tok)
{
    const char *slash = memchr(tok.ptr, '/', tok.len);
    struct moat_str name = slash ? moat_str_make(tok.ptr, (size_t)(slash - tok.ptr)) : tok;
    if (!site->upgrades) /* the default: websocket */
        return MOAT_STR_IEQ_LIT(name, "websocket");
    for (size_t i = 0; i < site->nupgrades; i++)
        if (moat_str_ieq(name, moat_str_make(site->upgrades[i], strlen(site->upgrades[i]))))
            return true;
    return false;
}

/* Upgrades only where asked: the request's Upgrade tokens are checked against the site's
 * list (websocket by default), and only those allowed go to the origin (headers.c); the
 * origin's 101 must then switch to one of them (exchange.c). Anything else, h2c above all
 * (it would let a client speak HTTP/2 to the origin past every rule moat enforces), is not
 * forwarded: with no allowed token left the request goes on as a plain HTTP/1.1 request
 * without Upgrade. */
static void pick_upgrade(struct moat_req *r)
{
    r->upgrade = false;
    r->nup = 0;
    if (!(r->flags & MOAT_H1_F_CONN_UPGRADE) || !(r->flags & MOAT_H1_F_UPGRADE) || r->minor != 1)
        return;
    size_t pos = 0;
    struct moat_str tok;
    for (size_t i = 0; i < r->nhdrs; i++) {
        if (!MOAT_STR_IEQ_LIT(r->hdrs[i].name, "upgrade"))
            continue;
        pos = 0;
        while (moat_h1_list_next(r->hdrs[i].value, &pos, &tok))
            if (r->nup < MOAT_ARRAY_LEN(r->up) && moat_upgrade_allowed(r->site, tok))
                r->up[r->nup++] = tok;
    }
    r->upgrade = r->nup > 0;
}

/* https.redirect: a request that came over plain http is sent to https:// on the same host,
 * at the port of moat's first TLS listener (left out when it is 443; the listeners open now,
 * which a reload does not change): 301 for GET and HEAD, 308 for the others so that the
 * method and body are kept (RFC 9110 15.4.9). Nothing reaches the origin or the cache. */
static void redirect_https(struct moat_req *r, struct moat_str host)
{
    unsigned port = 443;
    for (size_t i = 0; i < r->w->nlisteners; i++) {
        if (r->w->listeners[i].tls) {
            port = r->w->listeners[i].port;
            break;
        }
    }
    struct moat_str t = r->target;
    if (r->flags & MOAT_H1_F_ABSOLUTE)
        t = r->path; /* the query follows */
    char loc[2048];
    int n = snprintf(loc, sizeof loc, "https://%.*s", (int)host.len, host.ptr);
    if (port != 443 && n > 0 && (size_t)n < sizeof loc)
        n += snprintf(loc + n, sizeof loc - (size_t)n, ":%u", port);
    if (n > 0 && (size_t)n < sizeof loc)
        n += snprintf(loc + n, sizeof loc - (size_t)n, "%.*s", (int)t.len, t.ptr);
    if ((r->flags & MOAT_H1_F_ABSOLUTE) && r->query.len && n > 0 && (size_t)n < sizeof loc)
        n += snprintf(loc + n, sizeof loc - (size_t)n, "?%.*s", (int)r->query.len, r->query.ptr);
    if (n < 0 || (size_t)n >= sizeof loc) {
        moat_local_response(r, 414, "URI too long to redirect\n");
        return;
    }
    struct moat_hdr loch = {MOAT_STR("Location"), moat_str_make(loc, (size_t)n)};
    bool safe = r->meth == MOAT_M_GET || r->meth == MOAT_M_HEAD;
    char body[2100];
    int bl = snprintf(body, sizeof body, "moved to %s\n", loc);
    moat_req_respond(r, safe ? 301 : 308, NULL, &loch, 1,
                     moat_str_make(body, bl > 0 ? MOAT_MIN((size_t)bl, sizeof body - 1) : 0));
}

/* --- route: Host -> site. No site for the host is a 421 Misdirected Request: this moat
 * serves no such site, which is what RFC 9110 15.5.20 says. */
/* The Host without its port: "[v6]:port" or "name:port". */
static struct moat_str host_only(struct moat_str host)
{
    if (host.len && host.ptr[0] == '[') {
        const char *e = memchr(host.ptr, ']', host.len);
        if (e)
            host.len = (size_t)(e - host.ptr) + 1;
    } else if (host.len) {
        const char *colon = memchr(host.ptr, ':', host.len);
        if (colon)
            host.len = (size_t)(colon - host.ptr);
    }
    return host;
}

static int phase_route(struct moat_req *r)
{
    if (r->wcfg->only_site) {
        r->site = r->wcfg->only_site;
    } else {
        r->site = moat_config_site(r->wcfg->cfg, host_only(r->authority));
        if (!r->site) {
            MOAT_STAT_INC(&r->w->stats, bad_no_site);
            moat_local_response(r, 421, "no site is configured for this host\n");
            return MOAT_DONE;
        }
    }
    if (r->site->https_redirect && !r->tls) {
        redirect_https(r, host_only(r->authority));
        return MOAT_DONE;
    }
    if (r->site->nrules || r->wcfg->cfg->cache.static_ttl_ms)
        pick_rule(r);
    if (r->flags & MOAT_H1_F_UPGRADE)
        pick_upgrade(r);
    return MOAT_OK;
}

/* --- cache: lookup, collapsing, answering hits (src/proxy/cache.c) ----------------------- */
static int phase_cache(struct moat_req *r)
{
    return moat_pcache_request(r);
}

/* --- balance: site -> load balancer -> pool -> origin (src/lb/: steering, health, affinity,
 * admission). A snapshot without the balancer's runtime (unit tests that build one by hand)
 * keeps the plain weighted round-robin below. */
static int phase_balance(struct moat_req *r)
{
    const struct moat_config *cfg = r->wcfg->cfg;
    if (r->sh_rule) /* a count: origin rate limit: this request reaches the origin */
        moat_shield_origin(r);
    if (cfg->lb_rt)
        return moat_lb_balance(r);
    unsigned pi = (unsigned)(r->site->pool - cfg->pools);
    const struct moat_cfg_pool *pool = &cfg->pools[pi];
    unsigned pos = r->wcfg->rr[pi]++ % r->wcfg->wsum[pi];
    size_t oi = 0;
    for (; oi + 1 < pool->norigins; oi++) {
        unsigned wgt = pool->origins[oi].weight ? pool->origins[oi].weight : 1;
        if (pos < wgt)
            break;
        pos -= wgt;
    }
    r->pool_idx = pi;
    r->origin = &pool->origins[oi];
    r->upool = r->wcfg->omap[pi][oi];
    return MOAT_OK;
}

const struct moat_phase_def moat_phases[MOAT_PH_COUNT] = {
    {MOAT_PH_SHIELD, "shield", phase_shield},
    {MOAT_PH_ROUTE, "route", phase_route},
    {MOAT_PH_CACHE, "cache", phase_cache},
    {MOAT_PH_BALANCE, "balance", phase_balance},
};

/* ACME HTTP-01 (src/acme/): the CA's GET of /.well-known/acme-challenge/<token> is answered
 * before every phase, so no site rule, redirect to https or shield decision can stand between
 * the CA and the proof (RFC 8555 8.3). An unknown token goes on as an ordinary request. */
static int acme_http01(struct moat_req *r)
{
    static const char pfx[] = MOAT_ACME_HTTP01_PREFIX;
    if ((r->meth != MOAT_M_GET && r->meth != MOAT_M_HEAD) || r->path.len <= sizeof pfx - 1 ||
        memcmp(r->path.ptr, pfx, sizeof pfx - 1) || !moat_acme_active())
        return MOAT_DECLINED;
    char ka[256];
    if (!moat_acme_http01(r->path.ptr + sizeof pfx - 1, r->path.len - (sizeof pfx - 1), ka,
                          sizeof ka))
        return MOAT_DECLINED;
    moat_req_respond(r, 200, "application/octet-stream", NULL, 0, moat_str_make(ka, strlen(ka)));
    return MOAT_DONE;
}

int moat_pipeline_request(struct moat_req *r)
{
    if (acme_http01(r) == MOAT_DONE)
        return MOAT_DONE;
    for (size_t i = 0; i < MOAT_PH_COUNT; i++) {
        int rc = moat_phases[i].fn(r);
        if (rc == MOAT_DONE || rc == MOAT_ERR)
            return MOAT_DONE;
    }
    return MOAT_OK;
}
