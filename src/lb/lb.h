/* lb.h: load balancing: the runtime state of pools and origins (health, in-flight, counters),
 * choosing a pool (steering) and an origin (balance, affinity), retries, passive outlier
 * detection, admission control, and the active monitors' thread.
 *
 * Runtime state lives in a registry keyed by pool name and origin address, apart from the
 * configuration snapshots, so a reload keeps the health and counters of origins that stay.
 * Workers read it with atomics only; the monitor thread and the admin API write it. */
#ifndef MOAT_LB_LB_H
#define MOAT_LB_LB_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"
#include "lb/lb-t.h"
#include "proxy/errors.h"

struct moat_req;
struct moat_worker;

/* Admin states of an origin. */
enum moat_lb_admin { MOAT_LB_ENABLED = 0, MOAT_LB_DRAINING, MOAT_LB_DISABLED };

/* One origin of one pool. Made on first sight (config or admin API) and kept until exit, so
 * requests and probes may hold the pointer without counting. */
struct moat_lb_origin {
    unsigned id;                       /* index in the registry */
    uint64_t key;                      /* stable hash of pool name and address (affinity cookies) */
    char pool[72];                     /* the pool's name */
    struct moat_cfg_origin o;          /* address, Host parts, weight (strings owned here) */
    _Atomic int up;                    /* the monitor's verdict (1 without a monitor) */
    _Atomic int admin;                 /* enum moat_lb_admin */
    _Atomic int member;                /* in the pool's current member list */
    _Atomic uint64_t up_since_ms;      /* came up (slow_start ramps from here); 0 = long ago */
    _Atomic uint64_t ejected_until_ms; /* passive: out until then */
    _Atomic unsigned fail_streak, ejections;
    _Atomic unsigned inflight;
    _Atomic uint64_t requests, failures, ejected_total;
    /* the monitor's figures */
    _Atomic uint64_t rtt_us; /* moving average of passing checks */
    _Atomic uint64_t checks_ok, checks_failed, transitions, check_us_sum;
    _Atomic uint64_t last_check_ms; /* wall clock ms of the last check; 0 = never */
    char last_error[96];            /* guarded by the registry lock */
    unsigned mon_pass, mon_fail;    /* monitor thread only */
    void *probe;                    /* monitor thread only */
};

/* Sets up the load balancer's runtime for <cfg> (the registry entries of its pools and
 * origins, its geo databases) before it is installed. MOAT_OK, or MOAT_ERR with <err>. */
int moat_lb_prepare(struct moat_config *cfg, char *err, size_t errlen);
/* <cfg> is now the configuration in use: pools' member lists follow it and the monitors
 * check what it says. Starts the monitor thread on first use. */
void moat_lb_install(struct moat_config *cfg);
/* Stops the monitor thread (at exit). */
void moat_lb_shutdown(void);

/* The balance phase: picks the pool and origin of <r> (r->pool_idx, r->origin, r->upool).
 * MOAT_OK, or MOAT_DONE when <r> is answered (503) or waits in the queue (it goes on by
 * itself: moat_xchg_forward once an origin frees up). */
int moat_lb_balance(struct moat_req *r);
/* The try of <r> failed with <e> before any response byte reached the client. Counts the
 * failure for passive health and, when a retry is safe and within the budget, picks another
 * origin (r->origin, r->upool set): true, the caller connects again; else false. */
bool moat_lb_retry(struct moat_req *r, enum moat_xerr e);
/* The origin of <r> answered with <status> (5xx counts as a failure for passive health). */
void moat_lb_response(struct moat_req *r, int status);
/* The first-byte timeout of <r>'s try: try_timeout when a retry would be allowed, else
 * <def_ms>. */
uint64_t moat_lb_first_byte_ms(const struct moat_req *r, uint64_t def_ms);
/* <r> ends: its in-flight slot and its place in a queue are let go. */
void moat_lb_req_end(struct moat_req *r);
/* Frees this worker thread's balancer state (at thread exit). */
void moat_lb_thread_cleanup(void);

/* Calls <fn> for each origin of the registry that is a member of a pool now. Runs under the
 * registry lock: <fn> must not call back into lb. */
typedef void moat_lb_origin_fn(struct moat_lb_origin *o, void *ud);
void moat_lb_each_origin(moat_lb_origin_fn *fn, void *ud);
/* The last monitor error of <o> copied into <buf> (empty when none). */
void moat_lb_last_error(const struct moat_lb_origin *o, char *buf, size_t len);
/* Whether <o> takes new requests now (up, enabled, not ejected). */
bool moat_lb_usable(const struct moat_lb_origin *o, uint64_t now_ms);

/* Admin API (src/lb/lb_admin.c): handles /pools... Returns the status and sets *<out> to a
 * JSON body (malloc'd). */
int moat_lb_admin(int method, const char *path, size_t pathlen, const char *body, size_t blen,
                  char **out);
/* The load balancer's metrics as Prometheus text (malloc'd; NULL when out of memory). */
char *moat_lb_metrics_text(void);

#endif
