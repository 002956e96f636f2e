/* pipeline.h: the request's way through moat, one phase after another (see pipeline.c). */
#ifndef MOAT_PROXY_PIPELINE_H
#define MOAT_PROXY_PIPELINE_H

#include "proxy/req.h"

/* The phases, in order. docs/architecture.md draws them; a unit test pins the order. */
enum moat_phase {
    MOAT_PH_SHIELD,  /* access rules, rate limits, challenge (shield issue) */
    MOAT_PH_ROUTE,   /* Host -> site */
    MOAT_PH_CACHE,   /* cache lookup, collapse (cache issue) */
    MOAT_PH_BALANCE, /* site -> pool -> origin */
    MOAT_PH_COUNT
};

/* A phase returns MOAT_DECLINED / MOAT_OK to go on, or MOAT_DONE when it has started an
 * answer itself (moat_req_respond, the cache) and the request goes no further. A phase that
 * fails answers too (an error status) and returns MOAT_DONE. */
typedef int (*moat_phase_fn)(struct moat_req *r);

/* The phase table, in order, for tests and docs. */
extern const struct moat_phase_def {
    enum moat_phase id;
    const char *name;
    moat_phase_fn fn;
} moat_phases[MOAT_PH_COUNT];

/* Runs the request phases for <r>. MOAT_OK: an origin is chosen (r->upool, r->pool_idx),
 * forward it. MOAT_DONE: an answer is under way (R_CACHE, R_LOCAL). */
int moat_pipeline_request(struct moat_req *r);

/* Is the protocol of the Upgrade token <tok> one <site> forwards (sites[].upgrades)? */
bool moat_upgrade_allowed(const struct moat_cfg_site *site, struct moat_str tok);

/* Glob match of <s> against the NUL-terminated <g>: '*' any run of bytes (including '/'),
 * '?' one byte. Linear in practice, never exponential. */
bool moat_glob_match(const char *g, struct moat_str s);
/* Do the match conditions of the cache rule <r> (path, methods, query, header, cookie) hold
 * for <q>? (The shield's rules use the same conditions.) */
bool moat_rule_matches(const struct moat_cfg_rule *r, const struct moat_req *q);

#endif
