/* cache-int.h: what cache.c (the phase, filling) and cache_serve.c (answering from objects)
 * share. Internal to src/proxy/. */
#ifndef MOAT_PROXY_CACHE_INT_H
#define MOAT_PROXY_CACHE_INT_H

#include "proxy/req.h"

/* Now, in the cache's Unix seconds. */
int64_t moat_pcache_now(void);
/* Starts answering <r> from r->c.obj (a reader's reference) with Cache-Status <status>:
 * R_CACHE. Returns MOAT_DONE (for the phase). */
int moat_pcache_serve_from(struct moat_req *r, const char *status);
/* Drops <r>'s subscription to its object, if any (idempotent). */
void moat_pcache_unsubscribe(struct moat_req *r);
/* r->c.obj (a reference <r> holds) is a fresh Vary index: look the request's own variant up.
 * MOAT_DONE (answering from the cache, or locally) or MOAT_DECLINED (go to the origin). */
int moat_pcache_to_variant(struct moat_req *r, int64_t now);

#endif
