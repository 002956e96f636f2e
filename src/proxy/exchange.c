/* exchange.c: a request's exchange with its origin (HTTP/1.1 over TCP or TLS): connect, send
 * the head, pump the request body from the downstream, parse the response head, pump the
 * response body to the downstream with back-pressure both ways, retry once when a reused
 * keep-alive connection turns out closed, answer failures from the error table, tunnel
 * after a 101.
 *
 * The body pumps move bytes zero-copy: the response body is handed to the downstream
 * straight from the origin connection's input buffer (one writev with the head for a small
 * response), and the request body straight from the client connection's. A pump reads its
 * source only when the previous span is fully taken and there is room, so a slow reader
 * stops the fast writer's reads without any epoll_ctl: the bytes stay in the kernel's socket
 * buffer and TCP flow control does the rest. */
#include <errno.h>
#include <sys/socket.h>

#include "proxy/pipeline.h"
#include "proxy/req.h"
#include "proxy/server.h"
#include "lb/lb.h"
#include "tls/tls.h"

/* Results of the pumps. */
enum { PUMP_DONE = 1, PUMP_AGAIN, PUMP_ERR_SRC, PUMP_ERR_DST, PUMP_ERR_LIMIT, PUMP_ERR_FRAMING };

const struct moat_xerr_def moat_xerr_defs[MOAT_XERR_COUNT] = {
#define MOAT_XERR_DEF(id, name, status, retry, src, answer)                                        \
    [MOAT_XERR_##id] = {name, status, retry, MOAT_ERR_SRC_##src, answer},
    MOAT_XERRS(MOAT_XERR_DEF)
#undef MOAT_XERR_DEF
};

static inline const struct moat_cfg_pool *rpool(const struct moat_req *r)
{
    return &r->wcfg->cfg->pools[r->pool_idx];
}

void moat_xchg_release(struct moat_req *r)
{
    struct moat_upconn *u = r->u;
    if (!u)
        return;
    const struct moat_cfg_pool *p = rpool(r);
    bool reusable = r->up_reusable && r->respf.done && r->body_done && r->state != R_TUNNEL;
    moat_timer_stop(&r->w->loop, &u->timer);
    moat_up_release(u, reusable, p->keepalive_timeout_ms, p->keepalive);
    r->u = NULL;
}

static void close_up(struct moat_req *r)
{
    if (r->u) {
        moat_up_close(r->u);
        r->u = NULL;
    }
}

/* The origin failed. Before any response byte reached the client, answer from the error
 * table (502, 504 for a timeout), or retry once on a fresh connection when a reused
 * keep-alive connection turned out closed and the request can be replayed (no body). After
 * that the only honest signal left is cutting the response. MOAT_OK: the request goes on
 * (retry, stale answer, local answer); MOAT_DONE: it is over. */
static int upstream_fail(struct moat_req *r, enum moat_xerr e, bool maybe_stale)
{
    struct moat_stats *st = &r->w->stats;
    r->up_reusable = false;
    const char *why = r->u ? r->u->s.sk.err_reason : NULL;
    close_up(r);
    if (!r->head_sent && maybe_stale && !r->retried && r->body_len == 0) {
        r->retried = true;
        MOAT_STAT_INC(st, up_retries);
        bool reused = false;
        r->u = moat_up_get(r->w, r->upool, rpool(r), r->origin, r, true, &reused);
        if (r->u) {
            r->uhead_sent = 0;
            r->uhead_done = false;
            r->uhead.rpos = 0;
            r->uhead.wpos = r->uhead_len;
            moat_timer_set(&r->w->loop, &r->u->timer, rpool(r)->connect_timeout_ms);
            return MOAT_OK;
        }
    }
    if (moat_lb_retry(r, e)) {
        /* Another origin (src/lb/): the head is written again for it (its Host may differ). */
        MOAT_STAT_INC(st, up_retries);
        bool reused = false;
        r->uhead.rpos = r->uhead.wpos = 0;
        r->uhead_sent = 0;
        r->uhead_done = false;
        if (moat_fwd_request_head(r, &r->uhead) == MOAT_OK) {
            r->uhead_len = r->uhead.wpos;
            r->u = moat_up_get(r->w, r->upool, rpool(r), r->origin, r, false, &reused);
        }
        if (r->u) {
            r->up_reusable = true;
            moat_timer_set(&r->w->loop, &r->u->timer,
                           reused ? moat_lb_first_byte_ms(r, rpool(r)->first_byte_timeout_ms)
                                  : rpool(r)->connect_timeout_ms);
            return MOAT_OK;
        }
    }
    MOAT_STAT_INC(st, xerr[e]);
    r->xerr = e;
    if (e == MOAT_XERR_TLS_VERIFY)
        moat_log_warn("origin %s (pool %s): TLS certificate verification failed: %s",
                      r->upool->addr.text, rpool(r)->name, why ? why : "unknown reason");
    else if (e == MOAT_XERR_TLS)
        moat_log_warn("origin %s (pool %s): TLS handshake failed: %s", r->upool->addr.text,
                      rpool(r)->name, why ? why : "unknown reason");
    if (r->head_sent) {
        r->ds->abort(r);
        return MOAT_DONE;
    }
    if (moat_pcache_stale_on_error(r))
        return MOAT_OK; /* answering from the stale copy instead (stale-if-error) */
    moat_pcache_end(r, false);
    moat_local_response(r, moat_xerr_defs[e].status, moat_xerr_defs[e].answer);
    return MOAT_OK;
}

void moat_xchg_forward(struct moat_req *r)
{
    struct moat_worker *w = r->w;
    r->c.fresh_lookup = false;
    if (!r->upool) {
        /* Coming back from the cache phase (a collapsed fetch turned out uncacheable). */
        if (moat_phases[MOAT_PH_BALANCE].fn(r) == MOAT_DONE)
            return;
    }
    if (moat_buf_ensure(&r->uhead, w->bufsize) != MOAT_OK ||
        moat_fwd_request_head(r, &r->uhead) != MOAT_OK) {
        r->close = true;
        moat_local_response(r, 431, "request head too large to forward\n");
        return;
    }
    bool reused = false;
    r->t_up_start_us = moat_wall_us();
    r->state = R_PROXY;
    r->u = moat_up_get(w, r->upool, rpool(r), r->origin, r, false, &reused);
    if (!r->u) {
        upstream_fail(r, MOAT_XERR_CONNECT, false);
        return;
    }
    if (reused)
        MOAT_STAT_INC(&w->stats, up_conn_reused);
    r->up_reusable = true;
    r->uhead_len = r->uhead.wpos;
    const struct moat_cfg_pool *p = rpool(r);
    moat_timer_set(&w->loop, &r->u->timer,
                   reused ? moat_lb_first_byte_ms(r, p->first_byte_timeout_ms)
                          : p->connect_timeout_ms);
}

/* --- the response head ---------------------------------------------------------------------- */

static void flow_for_response(struct moat_req *r, const struct moat_h1_resp *q,
                              struct moat_resp *rs)
{
    struct moat_flow *f = &r->respf;
    struct moat_worker *w = r->w;
    *f = (struct moat_flow){0};
    rs->length = MOAT_LEN_UNKNOWN;
    if (q->status == 101) {
        f->mode = FLOW_EOF;
    } else if (r->is_head || q->status == 204 || q->status == 304) {
        f->mode = FLOW_NONE;
        f->done = true;
        rs->no_body = true;
        rs->keep_cl = q->flags & MOAT_H1_F_HAS_CL;
        if (rs->keep_cl)
            rs->length = q->content_length;
    } else if (q->flags & MOAT_H1_F_CHUNKED) {
        f->mode = FLOW_CHUNKED;
        f->bigbuf = w->body_bufsize;
        moat_h1_chunked_init(&f->dec, r->wcfg->cfg->h1.head_bytes);
        /* Trailers go on to a chunked client; to HTTP/1.0 (raw payload, then close) there is
         * no place for them and the decoder drops them. */
        f->dec.keep_trailers = r->minor == 1;
        rs->trailers_ok = true;
    } else if (q->flags & MOAT_H1_F_HAS_CL) {
        f->mode = FLOW_CL;
        f->remaining = q->content_length;
        f->done = q->content_length == 0;
        if (q->content_length > w->bufsize)
            f->bigbuf = w->body_bufsize;
        rs->length = q->content_length;
    } else {
        f->mode = FLOW_EOF;
        f->bigbuf = w->body_bufsize;
        r->up_reusable = false;
    }
}

/* A 101 is taken only to a request that asked for an upgrade moat forwards, and only when the
 * origin switches to one of the tokens it was sent (it must say which: RFC 9110 7.8). An
 * origin that picks another protocol (h2c, say) gets no tunnel. */
static bool upgrade_ok(const struct moat_req *r, const struct moat_h1_resp *q)
{
    if (!r->upgrade)
        return false;
    const struct moat_hdr *up = moat_h1_find(q->hdrs, q->nhdrs, MOAT_STR("upgrade"));
    if (!up)
        return false;
    size_t pos = 0, n = 0;
    struct moat_str tok;
    while (moat_h1_list_next(up->value, &pos, &tok)) {
        bool sent = false;
        for (size_t i = 0; i < r->nup && !sent; i++)
            sent = moat_str_ieq(tok, r->up[i]);
        if (!sent || !moat_upgrade_allowed(r->site, tok))
            return false;
        n++;
    }
    return n > 0;
}

static int resp_head(struct moat_req *r)
{
    struct moat_upconn *u = r->u;
    struct moat_worker *w = r->w;
    const struct moat_config *cfg = r->wcfg->cfg;
    for (;;) {
        uint32_t len = moat_buf_len(&u->s.in);
        if (len) {
            struct moat_h1_limits lim = cfg->h1;
            lim.max_headers = w->rhdrs_cap;
            lim.request_line = lim.head_bytes;
            struct moat_h1_resp q = {.hdrs = w->rhdrs};
            enum moat_h1_err err = MOAT_H1_OK;
            int n = moat_h1_parse_response(moat_buf_rptr(&u->s.in), len, &lim, &q, &err);
            if (n == MOAT_ERR)
                return upstream_fail(r, MOAT_XERR_BAD_RESPONSE, false);
            if (n > 0) {
                struct moat_resp rs = {
                    .status = q.status,
                    .reason = q.reason,
                    .fields = q.hdrs,
                    .nfields = q.nhdrs,
                    .fields_h1 = true,
                    .conn_named = q.flags & MOAT_H1_F_CONN_OTHER,
                    .origin = true,
                    .via_minor = q.minor,
                    .age = -1,
                    .cache_ttl = -1,
                };
                if (q.status >= 100 && q.status < 200 && q.status != 101) {
                    /* Interim: 100 is moat's to send (it answered Expect itself); others (103
                     * Early Hints) go on to the client and are never cached. */
                    if (q.status != 100)
                        r->ds->send_interim(r, &rs);
                    moat_buf_consume(&u->s.in, (uint32_t)n);
                    continue;
                }
                r->t_up_first_us = moat_wall_us(); /* the final head: upstream_header_ms */
                moat_lb_response(r, q.status);
                if (q.status >= 500 && r->c.stale) {
                    /* The origin answers with an error while a stale copy is at hand. */
                    if (moat_pcache_stale_on_error(r)) {
                        close_up(r);
                        return MOAT_OK;
                    }
                }
                if (q.status == 101 && !upgrade_ok(r, &q))
                    return upstream_fail(r, MOAT_XERR_BAD_RESPONSE, false);
                flow_for_response(r, &q, &rs);
                if ((q.flags & MOAT_H1_F_CONN_CLOSE) || q.minor == 0)
                    r->up_reusable = false;
                if (!r->body_done && q.status != 101) {
                    /* The origin answered before taking the whole body (e.g. 413): neither
                     * connection's framing can be trusted for another request. */
                    r->close = true;
                    r->up_reusable = false;
                }
                r->status = q.status;
                moat_pcache_invalidate(r, &q);
                moat_pcache_response(r, &q);
                if (r->c.revalidated) {
                    /* 304 to our conditional refetch: the origin is done (a 304 has no
                     * body), the client gets the refreshed object from the cache. */
                    moat_buf_consume(&u->s.in, (uint32_t)n);
                    moat_xchg_release(r);
                    moat_pcache_serve_revalidated(r);
                    return MOAT_OK;
                }
                rs.cache_status = r->c.status;
                rs.upgrade = q.status == 101;
                if (r->ds->send_head(r, &rs) != MOAT_OK)
                    return upstream_fail(r, MOAT_XERR_BAD_RESPONSE, false);
                moat_buf_consume(&u->s.in, (uint32_t)n);
                r->head_sent = true;
                r->resp_head_parsed = true;
                return MOAT_OK;
            }
        }
        if (u->timed_out)
            return upstream_fail(r, MOAT_XERR_TIMEOUT, false);
        if (u->s.sk.eof) {
            /* Closed before a response byte: on a reused connection that is the keep-alive
             * race (the origin closed it as we sent); retry once on a fresh one. */
            bool stale = u->requests > 0 && len == 0;
            return upstream_fail(r, len ? MOAT_XERR_BAD_RESPONSE : MOAT_XERR_RESET, stale);
        }
        if (!u->s.sk.readable)
            return MOAT_AGAIN;
        if (moat_buf_ensure(&u->s.in, w->bufsize) != MOAT_OK)
            return MOAT_DONE;
        ssize_t rr = moat_side_read(&u->s);
        if (rr == MOAT_AGAIN && moat_buf_room(&u->s.in) == 0)
            return upstream_fail(r, MOAT_XERR_BAD_RESPONSE,
                                 false); /* head larger than the buffer */
    }
}

/* --- the request body: downstream -> origin ---------------------------------------------- */

/* With a body the head waits in r->uhead and leaves with the first body bytes in one writev;
 * after it, uhead carries the chunk framing of a body moat re-chunks (one the client sent
 * chunked: its length is unknown). */
static int req_body_pump(struct moat_req *r, bool raw, bool *progress)
{
    struct moat_upconn *u = r->u;
    bool chunked = !raw && r->body_len == MOAT_LEN_UNKNOWN;
    for (;;) {
        uint32_t olen = moat_buf_len(&r->uhead);
        if (!r->bspan.len && !r->body_done) {
            uint32_t oroom = moat_buf_room(&r->uhead) + r->uhead.rpos;
            if (chunked && olen && oroom < 64)
                goto write; /* framing needs room: write <out> first */
            struct moat_str span;
            int rc = r->ds->body(r, &span);
            if (rc == MOAT_OK) {
                if (chunked)
                    moat_chunk_frame(&r->reqo, &r->uhead, span.len);
                r->bspan = span;
                *progress = true;
            } else if (rc == MOAT_DONE) {
                if (chunked) {
                    if (olen && oroom < span.len + MOAT_CHUNK_TRAILER_FRAMING) {
                        r->body_done = false; /* not yet: the trailers wait for room */
                        goto write;
                    }
                    if (span.len)
                        moat_chunk_trailers(&r->reqo, &r->uhead, span);
                    else
                        moat_chunk_frame(&r->reqo, &r->uhead, 0);
                }
                r->ds->body_consume(r, 0);
                r->body_done = true;
                *progress = true;
            } else if (rc == MOAT_ERR) {
                return r->body_err == BODY_LIMIT     ? PUMP_ERR_LIMIT
                       : r->body_err == BODY_FRAMING ? PUMP_ERR_FRAMING
                                                     : PUMP_ERR_SRC;
            } else if (!olen) {
                return PUMP_AGAIN;
            }
        }
    write:
        olen = moat_buf_len(&r->uhead);
        if (!olen && !r->bspan.len) {
            if (r->body_done)
                return PUMP_DONE;
            continue;
        }
        if (!u->s.sk.writable)
            return PUMP_AGAIN;
        struct iovec iov[2];
        int n = 0;
        if (olen)
            iov[n++] = (struct iovec){moat_buf_rptr(&r->uhead), olen};
        if (r->bspan.len)
            iov[n++] = (struct iovec){(void *)r->bspan.ptr, r->bspan.len};
        ssize_t w = moat_sock_writev(&u->s.sk, iov, n, 0);
        if (w == MOAT_AGAIN)
            return PUMP_AGAIN;
        if (w < 0)
            return PUMP_ERR_DST;
        *progress = true;
        uint32_t from_out = (uint32_t)MOAT_MIN((size_t)w, olen);
        moat_buf_consume(&r->uhead, from_out);
        size_t rest = (size_t)w - from_out;
        if (rest) {
            r->ds->body_consume(r, rest);
            r->bspan.ptr += rest;
            r->bspan.len -= rest;
        }
        if ((size_t)w < olen + (r->bspan.len + rest))
            return PUMP_AGAIN;
    }
}

/* --- the response body: origin -> downstream --------------------------------------------- */

static int resp_body_pump(struct moat_req *r, bool *progress)
{
    struct moat_upconn *u = r->u;
    struct moat_flow *f = &r->respf;
    struct moat_worker *w = r->w;
    for (;;) {
        if (!r->rspan.len && !r->resp_ended) {
            struct moat_str span;
            int rc = moat_flow_next(f, &u->s.in, u->s.sk.eof, &span);
            if (rc == FLOW_DATA) {
                if (r->c.tap)
                    moat_pcache_tap(r, span.ptr, (uint32_t)span.len);
                r->rspan = span;
                *progress = true;
            } else if (rc == FLOW_END) {
                r->resp_ended = true;
                r->trailers = span;
                if (r->c.tap)
                    moat_pcache_tap(r, NULL, 0); /* the body is complete */
                *progress = true;
            } else if (rc == FLOW_MORE) {
                if (!u->s.sk.readable) {
                    /* Nothing more now: what waits for the client goes (a head queued
                     * alone, a tail held by MSG_MORE). */
                    if (r->ds->send_data(r, NULL, 0, false) < 0)
                        return PUMP_ERR_DST;
                    r->ds->push(r);
                    return PUMP_AGAIN;
                }
                if (f->bigbuf > u->s.in.cap && !moat_buf_len(&u->s.in))
                    (void)moat_buf_swap_empty(&u->s.in, f->bigbuf);
                ssize_t n = moat_side_read(&u->s);
                if (n > 0)
                    *progress = true;
                else if (n == MOAT_ERR && f->mode != FLOW_EOF)
                    return PUMP_ERR_SRC;
                else if (n == MOAT_AGAIN && moat_buf_room(&u->s.in) == 0 && u->s.in.rpos == 0)
                    return PUMP_ERR_FRAMING; /* trailers larger than the buffer */
                continue;
            } else if (rc == FLOW_ERR_TRUNC) {
                return PUMP_ERR_SRC;
            } else {
                return PUMP_ERR_FRAMING;
            }
        }
        if (r->rspan.len) {
            /* More body is known to follow and the last read filled the buffer, so the next
             * bytes are already waiting: MSG_MORE lets the kernel send only full segments
             * and keep the partial tail for the next write, instead of sending each write's
             * tail as a short segment of its own (64 KiB through loopback's 65,483-byte MSS
             * is one full and one 53-byte segment). HAProxy does the same while a body has
             * bytes to come. */
            bool more = !f->done && u->s.sk.readable;
            ssize_t n = r->ds->send_data(r, r->rspan.ptr, r->rspan.len, more);
            if (n < 0)
                return PUMP_ERR_DST;
            if (n > 0) {
                moat_flow_consume(f, &u->s.in, (uint32_t)n);
                r->rspan.ptr += n;
                r->rspan.len -= (size_t)n;
                *progress = true;
            }
            if (r->rspan.len)
                return PUMP_AGAIN;
            continue;
        }
        if (r->resp_ended) {
            int rc = r->ds->finish(r, r->trailers);
            if (rc == MOAT_AGAIN)
                return PUMP_AGAIN;
            if (rc != MOAT_OK)
                return PUMP_ERR_DST;
            moat_flow_end(f, &u->s.in);
            r->fin_done = true;
            (void)w;
            return PUMP_DONE;
        }
    }
}

/* --- the exchange ------------------------------------------------------------------------ */

static int do_tunnel(struct moat_req *r)
{
    struct moat_upconn *u = r->u;
    bool progress = false;
    if (!u || u->timed_out)
        return MOAT_DONE;
    int a = PUMP_DONE, b = PUMP_DONE;
    if (!r->up_wr_done) {
        a = req_body_pump(r, true, &progress);
        if (a == PUMP_DONE) {
            if (moat_sock_shutdown(&u->s.sk) == MOAT_AGAIN)
                a = PUMP_AGAIN;
            else
                r->up_wr_done = true;
        }
    }
    if (!r->fin_done) {
        b = resp_body_pump(r, &progress);
    }
    if (a >= PUMP_ERR_SRC || b >= PUMP_ERR_SRC)
        return MOAT_DONE;
    if (r->up_wr_done && r->fin_done)
        return MOAT_DONE;
    if (progress) {
        moat_timer_set(&r->w->loop, &u->timer, rpool(r)->idle_timeout_ms);
        return MOAT_OK;
    }
    return MOAT_AGAIN;
}

int moat_xchg_drive(struct moat_req *r)
{
    struct moat_worker *w = r->w;
    if (r->state == R_TUNNEL)
        return do_tunnel(r);
    for (int spins = 0;; spins++) {
        struct moat_upconn *u = r->u;
        bool progress = false;
        if (r->state != R_PROXY)
            return MOAT_OK; /* answered otherwise (a local answer, a stale copy) */
        if (!u)
            return MOAT_DONE;
        const struct moat_cfg_pool *p = rpool(r);

        /* 1. connect, then the TLS handshake */
        if (!u->connected) {
            if (u->timed_out)
                return upstream_fail(r, MOAT_XERR_TIMEOUT, false);
            if (!u->s.sk.writable)
                return MOAT_AGAIN;
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            getsockopt(u->s.sk.io.fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            if (soerr)
                return upstream_fail(r, MOAT_XERR_CONNECT, false);
            u->connected = true;
            if (u->handshaken)
                moat_timer_set(&w->loop, &u->timer,
                               moat_lb_first_byte_ms(r, p->first_byte_timeout_ms));
        }
        if (!u->handshaken) {
            if (u->timed_out) {
                moat_tls_count_timeout(&u->s.sk);
                return upstream_fail(r, MOAT_XERR_TIMEOUT, false);
            }
            int rc = moat_sock_handshake(&u->s.sk);
            if (rc == MOAT_AGAIN)
                return MOAT_AGAIN;
            if (rc != MOAT_OK)
                return upstream_fail(
                    r, u->s.sk.verify_failed ? MOAT_XERR_TLS_VERIFY : MOAT_XERR_TLS, false);
            u->handshaken = true;
            moat_timer_set(&w->loop, &u->timer, moat_lb_first_byte_ms(r, p->first_byte_timeout_ms));
        }

        /* 2. request: the head alone (no body; kept for a retry), or with the body */
        if (!r->uhead_done && r->body_len && r->uhead_sent == 0)
            r->uhead_done = true;
        if (!r->uhead_done) {
            while (r->uhead_sent < r->uhead.wpos) {
                if (!u->s.sk.writable)
                    break;
                ssize_t n = moat_sock_write(&u->s.sk, r->uhead.base + r->uhead_sent,
                                            r->uhead.wpos - r->uhead_sent);
                if (n == MOAT_AGAIN)
                    break;
                if (n < 0)
                    return upstream_fail(r, MOAT_XERR_RESET, u->requests > 0);
                r->uhead_sent += (uint32_t)n;
                progress = true;
            }
            if (r->uhead_sent == r->uhead.wpos) {
                r->uhead_done = true;
                r->uhead.rpos = r->uhead.wpos = 0; /* from now on: request body framing */
            }
        }
        if (r->uhead_done && !(r->body_done && moat_buf_len(&r->uhead) == 0 && !r->bspan.len)) {
            int pr = req_body_pump(r, false, &progress);
            if (pr == PUMP_ERR_LIMIT || pr == PUMP_ERR_FRAMING) {
                if (r->head_sent) {
                    r->ds->abort(r);
                    return MOAT_DONE;
                }
                if (pr == PUMP_ERR_LIMIT)
                    MOAT_STAT_INC(&w->stats, bad_body_too_large);
                else
                    MOAT_STAT_INC(&w->stats, bad_parse[MOAT_H1_BAD_CHUNK]);
                r->close = true;
                r->up_reusable = false;
                close_up(r);
                moat_pcache_end(r, false);
                moat_local_response(r, pr == PUMP_ERR_LIMIT ? 413 : 400,
                                    pr == PUMP_ERR_LIMIT ? "request body too large\n"
                                                         : "bad chunked request body\n");
                return MOAT_OK;
            }
            if (pr == PUMP_ERR_SRC) {
                r->xerr = MOAT_XERR_CLIENT_GONE;
                r->ds->abort(r);
                return MOAT_DONE; /* the client vanished mid-body */
            }
            if (pr == PUMP_ERR_DST) {
                /* The origin stopped reading: maybe it already answered; read what it said. */
                r->up_reusable = false;
                r->body_done = true;
                r->close = true;
                r->bspan = MOAT_STR_NULL;
                moat_buf_consume(&r->uhead, moat_buf_len(&r->uhead));
            }
        }

        /* 3. response head */
        if (!r->resp_head_parsed) {
            int rc = resp_head(r);
            if (rc == MOAT_AGAIN) {
                if (!progress)
                    return MOAT_AGAIN;
                goto next;
            }
            if (rc != MOAT_OK)
                return rc;
            if (r->state != R_PROXY || !r->resp_head_parsed)
                return MOAT_OK; /* a local error answer, a stale copy, or a retry began */
            progress = true;
            if (r->ds == &moat_ds_sink && r->xerr == MOAT_XERR_CLIENT_GONE && !r->c.tap) {
                r->up_reusable = false; /* a fill orphaned before its head, not stored: */
                return MOAT_DONE;       /* nobody wants the body (see detachable, req.c) */
            }
            if (r->status == 101) {
                r->state = R_TUNNEL;
                if (r->ds->send_data(r, NULL, 0, false) < 0)
                    return MOAT_DONE;
                moat_timer_set(&w->loop, &u->timer, p->idle_timeout_ms);
                return MOAT_OK;
            }
        }

        /* 4. response body */
        {
            int pr = resp_body_pump(r, &progress);
            if (pr == PUMP_DONE)
                return MOAT_DONE;
            if (pr == PUMP_ERR_SRC || pr == PUMP_ERR_FRAMING) {
                enum moat_xerr e = u->timed_out ? MOAT_XERR_TIMEOUT : MOAT_XERR_TRUNCATED;
                MOAT_STAT_INC(&w->stats, xerr[e]);
                r->xerr = e;
                r->ds->abort(r);
                return MOAT_DONE;
            }
            if (pr == PUMP_ERR_DST) {
                if (moat_req_detach(r))
                    continue;
                r->xerr = MOAT_XERR_CLIENT_GONE;
                return MOAT_DONE;
            }
            if (u->timed_out) {
                MOAT_STAT_INC(&w->stats, xerr[MOAT_XERR_TIMEOUT]);
                r->xerr = MOAT_XERR_TIMEOUT;
                r->ds->abort(r);
                return MOAT_DONE;
            }
        }
    next:
        if (r->u && progress)
            moat_timer_set(&w->loop, &r->u->timer,
                           r->resp_head_parsed
                               ? p->idle_timeout_ms
                               : moat_lb_first_byte_ms(r, p->first_byte_timeout_ms));
        if (!progress || spins > 64)
            return progress ? MOAT_OK : MOAT_AGAIN;
    }
}
