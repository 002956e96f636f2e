/* lb-int.h: what the load balancer's files share (the registry, member lists, the snapshot's
 * runtime); not part of the contract. */
#ifndef MOAT_LB_LB_INT_H
#define MOAT_LB_LB_INT_H

#include <pthread.h>

#include "core/geoip.h"
#include "core/log.h"
#include "core/loop.h"
#include "lb/lb.h"

#define LB_MAX_POOLS   256
#define LB_MAX_ORIGINS 4096
#define LB_MAX_ADDED   64   /* origins the admin API may add to one pool */
#define LB_SCHED_MAX   4096 /* round-robin schedule entries */
#define LB_VNODES      400  /* ring points per unit of weight (weights above 16 count 16); a
                             * share then strays about 1/20 of itself (1/sqrt(400)) */

struct lb_point {
    uint64_t h;
    uint32_t i;
};

/* A pool's members: immutable once published. */
struct lb_members {
    size_t n;
    struct moat_lb_origin **o;
    unsigned *w; /* weights */
    uint64_t wsum;
    uint32_t *sched; /* smooth weighted round-robin order */
    size_t nsched;
    struct lb_point *ring; /* consistent hashing points, sorted */
    size_t nring;
    struct lb_members *retired_next;
};

/* An origin the admin API added (kept across reloads). */
struct lb_added {
    struct moat_cfg_origin o;
    char host[300], authority[320];
};

#define LB_DNS_MAX 16 /* addresses kept per origin name */

/* The addresses an origin given by name resolved to last (pools.*.resolve). */
struct lb_dns {
    char text[80]; /* the origin as configured ("app.internal:8080") */
    size_t n;
    struct moat_addr a[LB_DNS_MAX];
};

struct lb_pool {
    char name[72];
    _Atomic(struct lb_members *) m;
    _Atomic unsigned rr;
    _Atomic unsigned queued;
    _Atomic uint64_t requests, retries, queue_full, queue_timeouts, queued_total, no_origin;
    unsigned cfg_weight;
    /* admin changes, under the registry lock */
    struct lb_added added[LB_MAX_ADDED];
    size_t nadded;
    char removed[LB_MAX_ADDED][80];
    size_t nremoved;
    struct lb_dns dns[LB_MAX_ADDED]; /* origins given by name, as last resolved */
    size_t ndns;
    uint64_t resolved_ms; /* when the names were last resolved (resolver thread) */
    /* autoscale (monitor thread) */
    uint64_t above_since_ms, below_since_ms, fired_ms;
    _Atomic uint64_t scale_out, scale_in; /* hook runs */
};

struct lb_registry {
    pthread_mutex_t lock;
    struct lb_pool *pools[LB_MAX_POOLS];
    unsigned npools;
    struct lb_wroom *wrooms[LB_MAX_POOLS];
    unsigned nwrooms;
    struct moat_lb_origin *origins[LB_MAX_ORIGINS];
    unsigned norigins;
    struct lb_members *retired;
    struct moat_config *cur; /* the installed configuration (one reference) */
    bool installed;
};
extern struct lb_registry lb_reg;

/* A site's waiting room (sites[].waiting_room), kept across reloads by the site's first
 * host. Admissions are counted in time buckets covering the session: the count of visitors
 * admitted within the last session is the count of places taken. */
#define WR_BUCKETS 64
struct lb_wroom {
    char key[128];
    _Atomic uint64_t next_ticket;        /* the last ticket handed out */
    _Atomic uint64_t serving;            /* tickets up to this one may come in */
    _Atomic uint64_t came;               /* tickets let in that came (or were given up on) */
    _Atomic uint64_t served_ms;          /* when tickets were last let in */
    _Atomic uint64_t bucket[WR_BUCKETS]; /* epoch << 24 | admissions in that slice */
    _Atomic uint64_t admitted, waited;
};

/* A snapshot's runtime (cfg->lb_rt). */
struct lb_rt {
    struct lb_wroom **wr;    /* by index in cfg->sites; NULL without waiting_room */
    struct lb_pool **pools;  /* by index in cfg->pools */
    struct moat_geoip **geo; /* by index in cfg->lbs; NULL without geo.mmdb */
    size_t ngeo;
};

/* lb.c; the registry functions run under lb_reg.lock */
struct lb_pool *lb_pool_get(const char *name);
struct moat_lb_origin *lb_origin_find(const char *pool, const char *addr);
struct moat_lb_origin *lb_origin_get(const char *pool, const struct moat_cfg_origin *co);
int lb_pool_rebuild(struct lb_pool *p, const struct moat_cfg_pool *pc);
struct lb_members *lb_members_build(struct moat_lb_origin **o, const unsigned *w, size_t n);
void lb_members_free(struct lb_members *m);
size_t lb_pool_usable(const struct lb_members *m, uint64_t now);
uint64_t lb_rand(void);
uint64_t lb_hash_request(const struct moat_req *r, const struct moat_cfg_pool *pc);
/* A hash of the client's address: the peer, or the X-Forwarded-For entry trusted_proxies
 * vouch for (lb_req.c). */
uint64_t lb_client_hash(const struct moat_req *r);
/* An origin of <lp> for <r>, or NULL (<full>: some were usable but at max_requests).
 * <ign>: ejected origins count (the last resort); <hash_ip>: client_ip affinity. */
struct moat_lb_origin *lb_pick(struct moat_req *r, struct lb_pool *lp,
                               const struct moat_cfg_pool *pc, uint64_t now, bool ign, bool hash_ip,
                               bool *full);
/* Can <o> take <r> now (usable, not tried, below max_requests; <ign>: ejection ignored)?
 * <full> is set when it is usable but at max_requests. */
bool lb_candidate(const struct moat_req *r, const struct moat_lb_origin *o,
                  const struct moat_cfg_pool *pc, uint64_t now, bool ign, bool *full);
void lb_passive_fail(struct moat_lb_origin *o, const struct moat_cfg_pool *pc);
void lb_passive_ok(struct moat_lb_origin *o, const struct moat_cfg_pool *pc);

/* monitor.c: (re)reads the installed configuration's monitors. */
void lb_monitor_sync(void);
/* autoscale.c: on the monitor thread, every AUTOSCALE_TICK_MS: checks the pools with
 * autoscale against the installed configuration <c> and runs their commands. */
#define AUTOSCALE_TICK_MS 100
void lb_autoscale_tick(const struct moat_config *c);
/* resolve.c: starts the resolver thread once (a no-op when no pool re-resolves). */
void lb_resolver_start(const struct moat_config *c);

#endif
