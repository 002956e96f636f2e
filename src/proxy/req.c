/* req.c: a request's life: made by a downstream, run through the phases, driven until it is
 * answered, logged, let go. Also the sink (the downstream of requests nobody waits for) and
 * the copies a background refresh runs on.
 *
 * A request is freed after the loop's batch (moat_loop_defer), so an event later in the same
 * batch for its origin connection, or a caller up the stack, never touches freed memory; a
 * request ended while a cache wake-up is posted to it is freed by that wake-up instead. */
#include "proxy/pipeline.h"
#include "proxy/req.h"
#include "proxy/server.h"
#include "lb/lb.h"

/* --- memory -------------------------------------------------------------------------------- */

/* Requests are recycled per thread: a keep-alive connection makes one per request. The
 * struct is about 2 KiB (the cache key is 1 KiB of it), so a short list is plenty. */
#define REQ_FREE_MAX                                                                               \
    1024 /* 2.5 KiB each: up to 2.5 MiB per worker, what 10 HTTP/2 connections of 100 streams hold \
            at once */
static __thread struct moat_req *free_reqs;
static __thread unsigned nfree_reqs;

static void req_release_mem(struct moat_req *r)
{
    moat_buf_put(&r->hbuf);
    moat_buf_put(&r->uhead);
    moat_buf_put(&r->lbody);
    if (nfree_reqs < REQ_FREE_MAX) {
        r->onext = free_reqs;
        free_reqs = r;
        nfree_reqs++;
        return;
    }
    free(r);
}

void moat_req_thread_cleanup(void)
{
    while (free_reqs) {
        struct moat_req *r = free_reqs;
        free_reqs = r->onext;
        free(r);
    }
    nfree_reqs = 0;
}

static void req_free_deferred(struct moat_defer *d)
{
    struct moat_req *r = MOAT_CONTAINER_OF(d, struct moat_req, defer);
    /* A cache wake-up posted to this loop still points at <r>: let it free it. */
    if (atomic_load(&r->wake_pending)) {
        r->zombie = true;
        return;
    }
    req_release_mem(r);
}

void moat_req_free_zombie(struct moat_req *r)
{
    req_release_mem(r);
}

static void req_timeout(struct moat_loop *loop, struct moat_timer *t);

struct moat_req *moat_req_new(struct moat_worker *w, const struct moat_ds *ds, void *dsc)
{
    struct moat_req *r = free_reqs;
    if (r) {
        free_reqs = r->onext;
        nfree_reqs--;
    } else {
        r = malloc(sizeof *r);
        if (!r)
            return NULL;
    }
    /* Everything but the cache key's bytes, which are written before they are read. */
    memset(r, 0, offsetof(struct moat_req, c.key));
    memset(&r->timer, 0, sizeof *r - offsetof(struct moat_req, timer));
    r->w = w;
    r->ds = ds;
    r->dsc = dsc;
    r->wcfg = moat_worker_wcfg_get(w);
    r->t_start_us = moat_wall_us();
    r->state = R_NEW;
    r->scheme = MOAT_STR("http");
    r->timer.cb = req_timeout;
    r->defer.fn = req_free_deferred;
    r->c.range_left = UINT64_MAX;
    return r;
}

/* --- orphans: requests nobody waits for -------------------------------------------------- */

static void orphan_link(struct moat_req *r)
{
    struct moat_worker *w = r->w;
    r->oprev = NULL;
    r->onext = w->orphans;
    if (w->orphans)
        w->orphans->oprev = r;
    w->orphans = r;
    w->norphans++;
}

static void orphan_unlink(struct moat_req *r)
{
    struct moat_worker *w = r->w;
    if (r->oprev)
        r->oprev->onext = r->onext;
    else
        w->orphans = r->onext;
    if (r->onext)
        r->onext->oprev = r->oprev;
    r->onext = r->oprev = NULL;
    w->norphans--;
}

static int sink_send_head(struct moat_req *r, const struct moat_resp *resp)
{
    return MOAT_OK;
}
static ssize_t sink_send_data(struct moat_req *r, const char *p, size_t n, bool more)
{
    return (ssize_t)n;
}
static void sink_push(struct moat_req *r)
{
}
static int sink_finish(struct moat_req *r, struct moat_str trailers)
{
    return MOAT_OK;
}
static void sink_abort(struct moat_req *r)
{
}
static int sink_body(struct moat_req *r, struct moat_str *span)
{
    *span = MOAT_STR_NULL;
    r->body_done = true;
    return MOAT_DONE;
}
static void sink_body_consume(struct moat_req *r, size_t n)
{
}
static void sink_done(struct moat_req *r)
{
    orphan_unlink(r);
}
static void sink_detach(struct moat_req *r)
{
}

const struct moat_ds moat_ds_sink = {
    .name = "sink",
    .send_head = sink_send_head,
    .send_interim = sink_send_head,
    .send_data = sink_send_data,
    .push = sink_push,
    .finish = sink_finish,
    .abort = sink_abort,
    .body = sink_body,
    .body_consume = sink_body_consume,
    .done = sink_done,
    .detach = sink_detach,
};

/* --- the end ------------------------------------------------------------------------------- */

static void req_end(struct moat_req *r)
{
    if (r->state == R_DONE)
        return;
    r->state = R_DONE;
    struct moat_worker *w = r->w;
    moat_timer_stop(&w->loop, &r->timer);
    if (r->status == 0)
        r->status = 499; /* client went away before an answer, as nginx logs it */
    moat_req_account(r);
    moat_pcache_end(r, r->respf.done);
    if (r->u)
        moat_xchg_release(r);
    moat_lb_req_end(r);
    moat_worker_wcfg_put(w, r->wcfg);
    r->wcfg = NULL;
    r->ds->done(r);
    moat_loop_defer(&w->loop, &r->defer);
}

void moat_req_abort(struct moat_req *r)
{
    r->up_reusable = false;
    req_end(r);
}

/* Can the request go on without its client? A cache fill whose client left (a write error,
 * the send timeout) while the origin's response streams into the object: finish the fetch
 * without it, so the object completes for the requests collapsed onto it and for later ones,
 * instead of aborting it under them (Varnish runs its fetch apart from the client for the
 * same reason). Bounded as before by the pool's idle_timeout and cache.max_object.
 * The same before the origin's head, once the request is sent: an HTTP/2 client resets its
 * stream at once (an HTTP/1 client's close is seen only at the next write), and aborting
 * the object then would send every request collapsed onto it to the origin at once. If the
 * head says the answer is not stored, moat_xchg_drive ends the orphan there. */
static bool detachable(const struct moat_req *r)
{
    return r->ds != &moat_ds_sink && r->state == R_PROXY && (r->c.tap || !r->resp_head_parsed) &&
           r->c.writer && r->c.obj && r->u && r->body_done && !r->w->draining;
}

static void become_orphan(struct moat_req *r)
{
    r->ds = &moat_ds_sink;
    r->dsc = NULL;
    r->xerr = MOAT_XERR_CLIENT_GONE;
    orphan_link(r);
    MOAT_STAT_INC(&r->w->stats, cache_detached);
}

bool moat_req_detach(struct moat_req *r)
{
    if (!detachable(r))
        return false;
    const struct moat_ds *ds = r->ds;
    ds->detach(r); /* it still finds its own state in r->dsc */
    become_orphan(r);
    return true;
}

void moat_req_client_gone(struct moat_req *r)
{
    if (detachable(r)) {
        become_orphan(r);
        moat_req_drive(r);
        return;
    }
    r->ds = &moat_ds_sink;
    r->dsc = NULL;
    orphan_link(r); /* sink_done unlinks it */
    r->up_reusable = false;
    if (!r->xerr && r->status == 0)
        r->xerr = MOAT_XERR_CLIENT_GONE;
    if (!r->in_drive) {
        req_end(r);
    } else {
        r->aborted = true; /* the drive on the stack ends it */
        r->drive_again = true;
    }
}

/* --- moving on ----------------------------------------------------------------------------- */

/* R_LOCAL: the body of moat's own answer, then the end of the response. */
static int local_send(struct moat_req *r)
{
    uint32_t left = moat_buf_len(&r->lbody) - r->lbody_sent;
    if (left) {
        ssize_t n = r->ds->send_data(r, moat_buf_rptr(&r->lbody) + r->lbody_sent, left, false);
        if (n < 0)
            return MOAT_DONE;
        r->lbody_sent += (uint32_t)n;
        if ((uint32_t)n < left)
            return MOAT_AGAIN;
    }
    int rc = r->ds->finish(r, MOAT_STR_NULL);
    if (rc == MOAT_AGAIN)
        return MOAT_AGAIN;
    r->fin_done = rc == MOAT_OK;
    return MOAT_DONE;
}

void moat_req_drive(struct moat_req *r)
{
    if (r->in_drive) {
        r->drive_again = true;
        return;
    }
    r->in_drive = true;
    int rc = MOAT_AGAIN;
    do {
        r->drive_again = false;
        switch (r->state) {
        case R_PROXY:
        case R_TUNNEL:
            rc = moat_xchg_drive(r);
            break;
        case R_CACHE:
            rc = moat_pcache_serve(r);
            break;
        case R_LOCAL:
            rc = local_send(r);
            break;
        case R_NEW:
        case R_DONE:
        default:
            rc = MOAT_AGAIN;
            break;
        }
        if (rc == MOAT_DONE || (r->aborted && r->state != R_DONE)) {
            r->in_drive = false;
            req_end(r);
            return;
        }
    } while ((rc == MOAT_OK || r->drive_again) && r->state != R_DONE);
    r->in_drive = false;
}

/* A wait on the cache (R_CACHE) outlived its bound: the fetch we are collapsed on never
 * delivered, or stopped delivering. */
static void req_timeout(struct moat_loop *loop, struct moat_timer *t)
{
    struct moat_req *r = MOAT_CONTAINER_OF(t, struct moat_req, timer);
    (void)loop;
    if (r->state == R_DONE)
        return;
    r->xerr = MOAT_XERR_TIMEOUT;
    r->ds->abort(r);
    r->aborted = true;
    moat_req_drive(r);
}

void moat_req_start(struct moat_req *r)
{
    const struct moat_config *cfg = r->wcfg->cfg;
    if (r->state != R_NEW) {
        /* answered already (the downstream refused it) */
    } else if (r->meth == MOAT_M_CONNECT) {
        r->close = true;
        moat_local_response(r, 405, "CONNECT is not supported\n");
    } else if (cfg->max_body_bytes && r->body_len != MOAT_LEN_UNKNOWN &&
               r->body_len > cfg->max_body_bytes) {
        MOAT_STAT_INC(&r->w->stats, bad_body_too_large);
        r->close = true;
        moat_local_response(r, 413, "request body too large\n");
    } else if (moat_pipeline_request(r) == MOAT_OK) {
        moat_xchg_forward(r);
    }
    moat_req_drive(r);
}

/* --- copies for background refreshes ---------------------------------------------------- */

struct moat_req *moat_req_spawn(struct moat_req *r)
{
    struct moat_worker *w = r->w;
    if (r->body_len || !r->hbuf.base)
        return NULL;
    struct moat_req *b = moat_req_new(w, &moat_ds_sink, NULL);
    if (!b)
        return NULL;
    if (moat_buf_get(&b->hbuf, r->hbuf.cap) != MOAT_OK) {
        moat_worker_wcfg_put(w, b->wcfg);
        req_release_mem(b);
        return NULL;
    }
    /* The same configuration as <r>, whose site and rule it uses. */
    moat_worker_wcfg_put(w, b->wcfg);
    b->wcfg = r->wcfg;
    b->wcfg->users++;
    const char *from = r->hbuf.base, *to = b->hbuf.base;
    size_t n = r->hbuf.wpos;
    memcpy(b->hbuf.base, from, n);
    b->hbuf.wpos = r->hbuf.wpos;
    b->meth = r->meth;
    b->method = moat_str_rebase(r->method, from, n, to);
    b->scheme = r->scheme;
    b->authority = moat_str_rebase(r->authority, from, n, to);
    b->target = moat_str_rebase(r->target, from, n, to);
    b->path = moat_str_rebase(r->path, from, n, to);
    b->query = moat_str_rebase(r->query, from, n, to);
    b->minor = r->minor;
    b->flags = r->flags;
    b->hdrs = (struct moat_hdr *)(void *)(b->hbuf.base + ((const char *)r->hdrs - from));
    b->nhdrs = r->nhdrs;
    for (size_t i = 0; i < r->nhdrs; i++) {
        b->hdrs[i].name = moat_str_rebase(r->hdrs[i].name, from, n, to);
        b->hdrs[i].value = moat_str_rebase(r->hdrs[i].value, from, n, to);
    }
    b->hdrs_h1 = r->hdrs_h1;
    b->tls = r->tls;
    b->body_done = true;
    memcpy(b->peer, r->peer, sizeof b->peer);
    memcpy(b->peer_text, r->peer_text, sizeof b->peer_text);
    b->peer_len = r->peer_len;
    b->bg = true;
    b->is_head = r->is_head;
    b->site = r->site;
    b->rule = r->rule;
    b->static_default = r->static_default;
    b->c.creq = r->c.creq;
    b->c.req_time = r->c.req_time;
    b->c.has_auth = r->c.has_auth;
    b->c.variant = r->c.variant;
    b->c.keylen = r->c.keylen;
    b->c.keyurl = r->c.keyurl;
    b->c.ae_norm = r->c.ae_norm;
    b->c.ae = r->c.ae;
    memcpy(b->c.key, r->c.key, r->c.keylen);
    return b;
}

void moat_req_spawn_start(struct moat_req *b, bool go)
{
    if (!go) {
        moat_worker_wcfg_put(b->w, b->wcfg);
        req_release_mem(b);
        return;
    }
    orphan_link(b);
    moat_xchg_forward(b);
    moat_req_drive(b);
}
