/* pipeline.c: the request's way through moat, top to bottom. Each phase has one owner module;
 * this file only says in which order they run. Response-side phases (response filter, store,
 * log) run from conn.c as the response passes; they will move here as they grow. */
#include "proxy/pipeline.h"

/* --- shield: nothing yet; the shield issue adds ACLs, rate limits and the challenge ------ */
static int phase_shield(struct moat_conn *c)
{
    (void)c;
    return MOAT_DECLINED;
}

/* --- route: Host -> site. No site for the host is a 421 Misdirected Request: this moat
 * serves no such site, which is what RFC 9110 15.5.20 says. */
static int phase_route(struct moat_conn *c)
{
    struct moat_xchg *x = &c->x;
    if (x->wcfg->only_site) {
        x->site = x->wcfg->only_site;
        return MOAT_OK;
    }
    struct moat_str host = x->req.host;
    /* Strip the port: "[v6]:port" or "name:port". */
    if (host.len && host.ptr[0] == '[') {
        const char *e = memchr(host.ptr, ']', host.len);
        if (e)
            host.len = (size_t)(e - host.ptr) + 1;
    } else if (host.len) {
        const char *colon = memchr(host.ptr, ':', host.len);
        if (colon)
            host.len = (size_t)(colon - host.ptr);
    }
    x->site = moat_config_site(x->wcfg->cfg, host);
    if (!x->site) {
        MOAT_STAT_INC(&c->w->stats, bad_no_site);
        moat_local_response(c, 421, "no site is configured for this host\n");
        return MOAT_DONE;
    }
    return MOAT_OK;
}

/* --- cache: lookup, collapsing, answering hits (src/proxy/cache.c) ----------------------- */
static int phase_cache(struct moat_conn *c)
{
    return moat_pcache_request(c);
}

/* --- balance: site -> pool -> origin, smooth enough weighted round-robin. The load-balancing
 * issue replaces this with pools, health and steering. */
static int phase_balance(struct moat_conn *c)
{
    struct moat_xchg *x = &c->x;
    const struct moat_config *cfg = x->wcfg->cfg;
    unsigned pi = (unsigned)(x->site->pool - cfg->pools);
    const struct moat_cfg_pool *pool = &cfg->pools[pi];
    unsigned pos = x->wcfg->rr[pi]++ % x->wcfg->wsum[pi];
    size_t oi = 0;
    for (; oi + 1 < pool->norigins; oi++) {
        unsigned wgt = pool->origins[oi].weight ? pool->origins[oi].weight : 1;
        if (pos < wgt)
            break;
        pos -= wgt;
    }
    x->pool_idx = pi;
    x->origin = &pool->origins[oi];
    x->upool = x->wcfg->omap[pi][oi];
    return MOAT_OK;
}

const struct moat_phase_def moat_phases[MOAT_PH_COUNT] = {
    {MOAT_PH_SHIELD, "shield", phase_shield},
    {MOAT_PH_ROUTE, "route", phase_route},
    {MOAT_PH_CACHE, "cache", phase_cache},
    {MOAT_PH_BALANCE, "balance", phase_balance},
};

int moat_pipeline_request(struct moat_conn *c)
{
    for (size_t i = 0; i < MOAT_PH_COUNT; i++) {
        int rc = moat_phases[i].fn(c);
        if (rc == MOAT_DONE || rc == MOAT_ERR)
            return MOAT_DONE;
    }
    return MOAT_OK;
}
