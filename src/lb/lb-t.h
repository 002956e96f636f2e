/* lb-t.h: the load balancer's part of a request (types only; struct moat_req embeds it). */
#ifndef MOAT_LB_LB_T_H
#define MOAT_LB_LB_T_H

#include <stdbool.h>
#include <stdint.h>

struct moat_lb_origin;
struct moat_req;

#define MOAT_LB_TRIED_MAX 8

struct moat_lbreq {
    struct moat_lb_origin *cur; /* the origin of the current try: holds one in-flight slot */
    struct moat_lb_origin *tried[MOAT_LB_TRIED_MAX]; /* origins tried and failed */
    uint8_t ntried;
    uint8_t retries; /* retries used (load_balancers.*.retries bounds them) */
    bool queued;     /* waiting in the worker's queue for an origin below max_requests */
    bool set_cookie; /* the response carries the affinity cookie in cookie[] */
    uint16_t cookie_len;
    unsigned qpool;          /* the pool (index in the snapshot) it waits for */
    uint64_t queue_deadline; /* ms, monotonic */
    struct moat_req *qnext, *qprev;
    char cookie[192]; /* "name=value; Path=/; Max-Age=N; HttpOnly" */
    bool set_wr;      /* the response carries the waiting room's admission cookie */
    uint8_t wr_len;
    char wr_cookie[128];
};

#endif
