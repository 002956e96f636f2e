/* pipeline.h: the request's way through moat, one phase after another (see pipeline.c). */
#ifndef MOAT_PROXY_PIPELINE_H
#define MOAT_PROXY_PIPELINE_H

#include "proxy/proxy-t.h"

/* The phases, in order. docs/architecture.md draws them; a unit test pins the order. */
enum moat_phase {
    MOAT_PH_SHIELD,  /* access rules, rate limits, challenge (shield issue) */
    MOAT_PH_ROUTE,   /* Host -> site */
    MOAT_PH_CACHE,   /* cache lookup, collapse (cache issue) */
    MOAT_PH_BALANCE, /* site -> pool -> origin */
    MOAT_PH_COUNT
};

/* A phase returns MOAT_DECLINED / MOAT_OK to go on, or MOAT_DONE when it has queued a
 * response itself (moat_local_response) and the request goes no further. */
typedef int (*moat_phase_fn)(struct moat_conn *c);

/* The phase table, in order, for tests and docs. */
extern const struct moat_phase_def {
    enum moat_phase id;
    const char *name;
    moat_phase_fn fn;
} moat_phases[MOAT_PH_COUNT];

/* Runs the request phases for the head just parsed on <c>. MOAT_OK: an origin is chosen
 * (c->x.upool, c->x.pool_idx), forward it. MOAT_DONE: a local response is queued. */
int moat_pipeline_request(struct moat_conn *c);

/* Queues a complete local response (<status>, text <body>) on <c>. Used by phases and by the
 * connection code for errors. */
void moat_local_response(struct moat_conn *c, int status, const char *body);

#endif
