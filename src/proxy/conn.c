/* conn.c: a client connection: read and parse request heads, run the pipeline, exchange with
 * the origin (the body pump moves bytes both ways with back-pressure), write responses, log,
 * keep-alive and pipelining, upgrades (tunnels), errors and timeouts.
 *
 * Everything is edge-triggered: each socket is registered once for IN|OUT|RDHUP and the
 * readiness we were told about is remembered in struct moat_side, so pausing one direction
 * (back-pressure) costs no epoll_ctl. moat_conn_drive() runs the state machine until nothing
 * can progress without new readiness. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "proxy/pipeline.h"
#include "proxy/server.h"

/* Results of the body pump. */
enum {
    PUMP_DONE = 1,
    PUMP_AGAIN = 2,
    PUMP_ERR_SRC = 3,
    PUMP_ERR_DST = 4,
    PUMP_ERR_LIMIT = 5,
    PUMP_ERR_FRAMING = 6
};

static void conn_free(struct moat_defer *d);

static inline const struct moat_config *ccfg(const struct moat_conn *c)
{
    return c->w->wcfg->cfg;
}

/* --- sockets ------------------------------------------------------------------------------ */

/* Reads into <s>->in. Returns bytes read (>0), 0 on EOF, MOAT_AGAIN, or MOAT_ERR. After a
 * short read the socket is known drained (unless the peer hung up, when we read on to see
 * the EOF), which saves the read that would return EAGAIN. */
static ssize_t side_read(struct moat_side *s)
{
    uint32_t room = moat_buf_room(&s->in);
    if (room == 0) {
        moat_buf_compact(&s->in);
        room = moat_buf_room(&s->in);
        if (room == 0)
            return MOAT_AGAIN; /* full: the consumer must drain first */
    }
    ssize_t n;
    do
        n = read(s->io.fd, moat_buf_wptr(&s->in), room);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        s->in.wpos += (uint32_t)n;
        if ((uint32_t)n < room && !s->hup)
            s->readable = false;
        return n;
    }
    if (n == 0) {
        s->eof = true;
        s->readable = false;
        return 0;
    }
    if (errno == EAGAIN) {
        s->readable = false;
        return MOAT_AGAIN;
    }
    s->eof = true;
    s->readable = false;
    return MOAT_ERR;
}

int moat_conn_ensure_buf(struct moat_buf *b, uint32_t size)
{
    if (b->base && b->cap == size)
        return MOAT_OK;
    if (b->base) {
        if (moat_buf_len(b))
            return MOAT_OK; /* keep unread bytes; a resize waits for an empty buffer */
        moat_buf_put(b);
    }
    return moat_buf_get(b, size);
}

/* --- the body pump ------------------------------------------------------------------------- */

/* Queues chunk framing for <n> payload bytes (or the last chunk when n == 0) in <out>. */
void moat_conn_frame_chunk(struct moat_flow *f, struct moat_buf *out, uint64_t n)
{
    char tmp[32];
    size_t k = 0;
    if (f->pending_crlf) {
        tmp[k++] = '\r';
        tmp[k++] = '\n';
    }
    if (n == 0) {
        memcpy(tmp + k, "0\r\n\r\n", 5);
        k += 5;
    } else {
        static const char hex[] = "0123456789abcdef";
        char h[17];
        int i = 17;
        for (uint64_t v = n; v; v >>= 4)
            h[--i] = hex[v & 15];
        memcpy(tmp + k, h + i, (size_t)(17 - i));
        k += (size_t)(17 - i);
        tmp[k++] = '\r';
        tmp[k++] = '\n';
    }
    f->pending_crlf = n != 0;
    moat_buf_compact(out);
    moat_buf_append(out, tmp, (uint32_t)k); /* out always has room: framing < 64 bytes and
                                              out is drained before framing is added */
}

/* Bytes the end of a chunked body with trailers adds to its section in <out>: the CRLF owed
 * after the last data, "0\r\n" and the final CRLF. */
#define TRAILER_FRAMING 7

/* Queues the end of a chunked body that carries the trailer <section> in <out>: the CRLF
 * owed, the last chunk, the fields moat forwards (moat_fwd_trailers filters them) and the
 * final CRLF. The caller has checked that <out> has TRAILER_FRAMING + section.len bytes of
 * room once compacted. */
static void frame_trailers(struct moat_flow *f, struct moat_buf *out, struct moat_str section)
{
    moat_buf_compact(out);
    char *p = moat_buf_wptr(out);
    size_t k = 0;
    if (f->pending_crlf) {
        memcpy(p, "\r\n", 2);
        k = 2;
    }
    memcpy(p + k, "0\r\n", 3);
    k += 3;
    k += moat_fwd_trailers(section, p + k, moat_buf_room(out) - k - 2);
    memcpy(p + k, "\r\n", 2);
    k += 2;
    out->wpos += (uint32_t)k;
    f->pending_crlf = false;
    f->fin_queued = true;
}

/* The source ran dry after a write that went with MSG_MORE: the partial segment the kernel
 * may be holding must go now, not at the next ACK or the zero-window probe timer (200 ms
 * and more when nothing else is in flight). Setting TCP_NODELAY (already on) pushes what is
 * pending; it costs a syscall only when an origin pauses in the middle of a large body. */
static void push_held(struct moat_side *dst)
{
    int one = 1;
    setsockopt(dst->io.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    dst->held = false;
}

/* Moves the body of <f> from <src> to <dst>, writing <out> (heads, framing) first and then
 * payload straight from <src>'s buffer (no copy for Content-Length, EOF or re-chunked data).
 * Returns PUMP_DONE when the body is complete and written, PUMP_AGAIN when blocked, or an
 * error. <progress> is set when any byte moved. */
static int pump(struct moat_flow *f, struct moat_side *src, struct moat_side *dst,
                struct moat_buf *out, uint64_t *written, bool *progress)
{
    for (;;) {
        uint32_t olen = moat_buf_len(out);
        /* Frame the next span before writing, so what waits in <out> (a response head,
         * chunk framing) and the payload after it leave in one writev. Chunk framing needs
         * room in <out>; without it, <out> is written first. */
        uint32_t avail = moat_buf_len(&src->in);
        uint32_t oroom = moat_buf_room(out) + out->rpos;
        /* A trailer section waits in <src>->in until it is whole: it is looked at again
         * only when bytes beyond those the decoder validated arrived, and only when <out>
         * can take all of it (it fits an empty <out>: the section is at most
         * limits.header_bytes, <out> at least that + 2 KiB). */
        bool ready = f->trailers ? avail > f->dec.trailer_bytes &&
                                       (!olen || oroom >= (uint64_t)avail + TRAILER_FRAMING)
                                 : !f->out_chunked || !olen || oroom >= 64;
        if (avail && !f->span && !f->done && ready) {
            uint32_t span = 0;
            switch (f->mode) {
            case FLOW_CL:
                span = (uint32_t)MOAT_MIN((uint64_t)avail, f->remaining);
                f->remaining -= span;
                if (f->remaining == 0)
                    f->done = true;
                break;
            case FLOW_CHUNKED: {
                size_t used = 0;
                struct moat_str data = MOAT_STR_NULL;
                enum moat_h1_err err = MOAT_H1_OK;
                const char *base = moat_buf_rptr(&src->in);
                if (f->trailers) {
                    /* Nothing is consumed before the section is whole, so the filter sees
                     * whole lines; it goes out without counting as payload (f->bytes, the
                     * body limit) and never into the cache, whose objects have no trailers. */
                    int rc = moat_h1_chunked_trailers(&f->dec, base, avail, &used, &data, &err);
                    if (rc == MOAT_ERR)
                        return PUMP_ERR_FRAMING;
                    if (rc == MOAT_AGAIN) {
                        /* A full buffer would never grow: only if it is smaller than the
                         * limit, which a reload that raised limits.header_bytes can do to a
                         * connection's older buffer. */
                        if (avail >= src->in.cap)
                            return PUMP_ERR_FRAMING;
                        break;
                    }
                    frame_trailers(f, out, data);
                    moat_buf_consume(&src->in, (uint32_t)used);
                    f->done = true;
                    *progress = true;
                    break;
                }
                int rc = moat_h1_chunked_decode(&f->dec, base, avail, &used, &data, &err);
                if (rc == MOAT_ERR)
                    return PUMP_ERR_FRAMING;
                if (rc == MOAT_H1_TRAILERS)
                    f->trailers = true; /* keep_trailers: the section is taken above */
                if (data.len) {
                    uint32_t pre = (uint32_t)(data.ptr - base);
                    moat_buf_consume(&src->in, pre);
                    span = (uint32_t)data.len;
                    f->skip_after = (uint32_t)(used - pre - data.len);
                } else {
                    moat_buf_consume(&src->in, (uint32_t)used);
                }
                if (rc == MOAT_DONE)
                    f->done = true;
                *progress = true;
                break;
            }
            case FLOW_EOF:
                span = avail;
                break;
            case FLOW_NONE:
                f->done = true;
                break;
            }
            if (span) {
                f->bytes += span;
                if (f->limit && f->bytes > f->limit)
                    return PUMP_ERR_LIMIT;
                if (f->tap)
                    moat_pcache_tap(f->tap, moat_buf_rptr(&src->in), span);
                if (f->out_chunked)
                    moat_conn_frame_chunk(f, out, span);
                f->span = span;
            } else if (f->done && f->tap) {
                moat_pcache_tap(f->tap, NULL, 0); /* the last chunk: the body is complete */
            }
            continue;
        }
        if ((olen || f->span) && dst->sink) {
            /* Nobody to write to (a detached connection): drop it as if written. */
            moat_buf_consume(out, olen);
            moat_buf_consume(&src->in, f->span + f->skip_after);
            f->span = f->skip_after = 0;
            *progress = true;
            continue;
        }
        if (olen || f->span) {
            if (!dst->writable)
                return PUMP_AGAIN;
            struct iovec iov[2];
            int n = 0;
            if (olen)
                iov[n++] = (struct iovec){moat_buf_rptr(out), olen};
            if (f->span)
                iov[n++] = (struct iovec){moat_buf_rptr(&src->in), f->span};
            /* More body is known to follow and the last read filled the buffer, so the
             * next bytes are already waiting: MSG_MORE lets the kernel send only full
             * segments and keep the partial tail for the next write, instead of sending
             * each write's tail as a short segment of its own (64 KiB through loopback's
             * 65,483-byte MSS is one full and one 53-byte segment; through 1,448 bytes a
             * short one every 45). HAProxy does the same while a body has bytes to come. */
            bool more = !f->done && src->readable;
            ssize_t w;
            do
                w = more ? sendmsg(dst->io.fd,
                                   &(struct msghdr){.msg_iov = iov, .msg_iovlen = (size_t)n},
                                   MSG_MORE | MSG_NOSIGNAL)
                         : writev(dst->io.fd, iov, n);
            while (w < 0 && errno == EINTR);
            dst->held = more;
            if (w < 0) {
                if (errno == EAGAIN) {
                    dst->writable = false;
                    return PUMP_AGAIN;
                }
                return PUMP_ERR_DST;
            }
            *progress = true;
            *written += (uint64_t)w;
            size_t total = olen + f->span;
            uint32_t from_out = (uint32_t)MOAT_MIN((size_t)w, olen);
            moat_buf_consume(out, from_out);
            uint32_t from_span = (uint32_t)((size_t)w - from_out);
            if (from_span) {
                moat_buf_consume(&src->in, from_span);
                f->span -= from_span;
            }
            if (f->span == 0 && f->skip_after) {
                moat_buf_consume(&src->in, f->skip_after);
                f->skip_after = 0;
            }
            if ((size_t)w < total) {
                dst->writable = false;
                return PUMP_AGAIN;
            }
            continue;
        }
        if (f->done) {
            if (f->out_chunked && !f->fin_queued) {
                f->fin_queued = true;
                moat_conn_frame_chunk(f, out, 0);
                continue;
            }
            return PUMP_DONE;
        }
        if (f->mode == FLOW_NONE) {
            f->done = true;
            continue;
        }
        if (src->eof) {
            if (f->mode == FLOW_EOF) {
                f->done = true;
                continue;
            }
            return PUMP_ERR_SRC; /* truncated body */
        }
        if (!src->readable) {
            if (dst->held)
                push_held(dst);
            return PUMP_AGAIN;
        }
        if (f->bigbuf > src->in.cap && !moat_buf_len(&src->in)) {
            /* A large body: read it in larger bites (fewer read/writev pairs). The swap
             * happens while the buffer is empty, so no byte is copied; without memory the
             * small buffer just stays. */
            (void)moat_buf_swap_empty(&src->in, f->bigbuf);
        }
        ssize_t r = side_read(src);
        if (r > 0)
            *progress = true;
        else if (r == MOAT_ERR && f->mode != FLOW_EOF)
            return PUMP_ERR_SRC;
    }
}

/* --- responses moat makes itself ---------------------------------------------------------- */

void moat_local_response(struct moat_conn *c, int status, const char *body)
{
    struct moat_xchg *x = &c->x;
    if (moat_conn_ensure_buf(&c->out, c->w->bufsize) != MOAT_OK) {
        x->keepalive = false;
        c->state = C_CLOSING;
        return;
    }
    size_t blen = strlen(body);
    struct moat_str reason = moat_http_reason(status);
    moat_buf_compact(&c->out);
    char extra[96] = "";
    if (status == 416 && x->crange_hdr[0]) /* RFC 9110 15.5.17 */
        snprintf(extra, sizeof extra, "Content-Range: %s\r\n", x->crange_hdr);
    int n = snprintf(moat_buf_wptr(&c->out), moat_buf_room(&c->out),
                     "HTTP/1.1 %d %.*s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     "Content-Length: %zu\r\n%s%s\r\n%s",
                     status, (int)reason.len, reason.ptr, x->is_head ? 0 : blen, extra,
                     x->keepalive ? "" : "Connection: close\r\n", x->is_head ? "" : body);
    if (n > 0 && (uint32_t)n < moat_buf_room(&c->out))
        c->out.wpos += (uint32_t)n;
    x->status = status;
    c->state = x->keepalive ? C_LOCAL : C_CLOSING;
}

static int bad_request(struct moat_conn *c, enum moat_h1_err err)
{
    struct moat_xchg *x = &c->x;
    x->keepalive = false; /* after a malformed request the connection's framing is unknown */
    if (err < MOAT_H1_ERR_COUNT)
        MOAT_STAT_INC(&c->w->stats, bad_parse[err]);
    int status = moat_h1_err_status(err);
    char body[96];
    snprintf(body, sizeof body, "%s\n", moat_h1_err_name(err));
    if (!x->wcfg) {
        x->wcfg = c->w->wcfg;
        x->wcfg->users++;
        x->t_start_us = moat_wall_us();
    }
    x->err = moat_h1_err_name(err);
    moat_local_response(c, status, body);
    return MOAT_OK;
}

/* --- access log ---------------------------------------------------------------------------- */

static void log_field(struct moat_xchg *x, uint16_t *off, struct moat_str s, size_t *pos)
{
    size_t room = sizeof x->logf - *pos - 1;
    size_t n = MOAT_MIN(s.len, room);
    if (n)
        memcpy(x->logf + *pos, s.ptr, n);
    *off = (uint16_t)*pos;
    x->logf[*pos + n] = 0;
    *pos += n + 1;
}

static void remember_for_log(struct moat_xchg *x)
{
    size_t pos = 0;
    log_field(x, &x->log_method, x->req.method, &pos);
    log_field(x, &x->log_host, x->req.host, &pos);
    log_field(x, &x->log_path, x->req.target, &pos);
}

static void write_access_log(struct moat_conn *c, uint64_t now_us)
{
    struct moat_worker *w = c->w;
    struct moat_xchg *x = &c->x;
    char *p = moat_alog_reserve(&w->alog, 2048);
    if (!p)
        return;
    time_t sec = (time_t)(now_us / 1000000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    size_t n =
        (size_t)snprintf(p, 2048,
                         "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03uZ\",\"client\":\"%s\","
                         "\"method\":\"",
                         tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                         tm.tm_sec, (unsigned)(now_us % 1000000 / 1000), c->peer_text);
    const char *m = x->logf + x->log_method, *h = x->logf + x->log_host,
               *pa = x->logf + x->log_path;
    n += moat_json_escape(p + n, 300, moat_str_make(m, strlen(m)));
    memcpy(p + n, "\",\"host\":\"", 10);
    n += 10;
    n += moat_json_escape(p + n, 600, moat_str_make(h, strlen(h)));
    memcpy(p + n, "\",\"path\":\"", 10);
    n += 10;
    n += moat_json_escape(p + n, 800, moat_str_make(pa, strlen(pa)));
    double dur = (double)(now_us - x->t_start_us) / 1000.0;
    n += (size_t)snprintf(p + n, 2048 - n, "\",\"status\":%d,\"bytes\":%llu,\"duration_ms\":%.3f,",
                          x->status, (unsigned long long)x->resp_bytes, dur);
    if (x->upool) {
        double up = x->t_up_start_us ? (double)(now_us - x->t_up_start_us) / 1000.0 : 0.0;
        n += (size_t)snprintf(p + n, 2048 - n, "\"upstream\":\"%s\",\"upstream_ms\":%.3f",
                              x->upool->addr.text, up);
        if (x->t_up_start_us && x->t_up_first_us >= x->t_up_start_us)
            n += (size_t)snprintf(p + n, 2048 - n, ",\"upstream_header_ms\":%.3f",
                                  (double)(x->t_up_first_us - x->t_up_start_us) / 1000.0);
        else
            n += (size_t)snprintf(p + n, 2048 - n, ",\"upstream_header_ms\":null");
    } else {
        n += (size_t)snprintf(p + n, 2048 - n,
                              "\"upstream\":null,\"upstream_ms\":null,\"upstream_header_ms\":null");
    }
    if (x->err)
        n += (size_t)snprintf(p + n, 2048 - n, ",\"error\":\"%s\"", x->err);
    if (x->cstatus)
        n += (size_t)snprintf(p + n, 2048 - n, ",\"cache\":\"%s\"", x->cstatus);
    if (c->bg)
        n += (size_t)snprintf(p + n, 2048 - n, ",\"background\":true");
    p[n++] = '}';
    p[n++] = '\n';
    moat_alog_commit(&w->alog, n);
}

/* --- exchange lifecycle -------------------------------------------------------------------- */

static void account(struct moat_conn *c)
{
    struct moat_stats *st = &c->w->stats;
    struct moat_xchg *x = &c->x;
    uint64_t now = moat_wall_us();
    switch (x->status / 100) {
    case 1:
        MOAT_STAT_INC(st, req_1xx);
        break;
    case 2:
        MOAT_STAT_INC(st, req_2xx);
        break;
    case 3:
        MOAT_STAT_INC(st, req_3xx);
        break;
    case 4:
        MOAT_STAT_INC(st, req_4xx);
        break;
    default:
        MOAT_STAT_INC(st, req_5xx);
        break;
    }
    MOAT_STAT_ADD(st, resp_bytes, x->resp_bytes);
    MOAT_STAT_ADD(st, req_bytes, x->reqf.bytes);
    moat_stats_observe(st, now - x->t_start_us);
    if (c->w->alog.fd >= 0)
        write_access_log(c, now);
}

/* Ends the current exchange: accounting, upstream back to its pool, state reset. */
static void exchange_end(struct moat_conn *c)
{
    struct moat_xchg *x = &c->x;
    if (!x->wcfg)
        return;
    account(c);
    moat_pcache_end(c, x->respf.done);
    if (x->u) {
        const struct moat_cfg_pool *p = &x->wcfg->cfg->pools[x->pool_idx];
        bool reusable = x->up_reusable && x->respf.done && x->reqf.done;
        moat_timer_stop(&c->w->loop, &x->u->timer);
        moat_up_release(x->u, reusable, p->keepalive_timeout_ms, p->keepalive);
        x->u = NULL;
    }
    moat_buf_put(&x->uhead);
    if (c->s.in.cap > c->w->bufsize && !moat_buf_len(&c->s.in))
        (void)moat_buf_swap_empty(&c->s.in, c->w->bufsize); /* an upload's big buffer back */
    moat_worker_wcfg_put(c->w, x->wcfg);
    bool keep = x->keepalive && !c->w->draining;
    memset(x, 0, sizeof *x);
    x->keepalive = keep;
    c->nreq++;
}

static void conn_close(struct moat_conn *c)
{
    struct moat_worker *w = c->w;
    if (c->closed)
        return;
    c->closed = true;
    if (c->x.wcfg) {
        c->x.up_reusable = false;
        moat_pcache_end(c, false);
        if (c->x.status == 0)
            c->x.status = 499; /* client went away before an answer, as nginx logs it */
        exchange_end(c);
    }
    moat_timer_stop(&w->loop, &c->timer);
    if (c->s.io.fd >= 0) {
        close(c->s.io.fd);
        c->s.io.fd = -1;
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->nconns--;
    if (!c->detached) /* a detached connection left the gauge when its client went */
        MOAT_STAT_ADD(&w->stats, conn_active, (uint64_t)-1);
    moat_loop_defer(&w->loop, &c->defer);
}

/* The client of a cache fill went away (write error, send timeout) while the origin's
 * response streams into the object: finish the fetch without it, so the object completes for
 * the requests collapsed onto it and for later ones, instead of aborting it under them
 * (Varnish runs its fetch apart from the client for the same reason). The client socket is
 * closed now; the exchange goes on with the client side as a sink, bounded as before by the
 * pool's idle_timeout and cache.max_object, and the connection ends with the exchange.
 * Returns false (nothing changed) unless <c> is such a fill. */
static bool detach(struct moat_conn *c)
{
    struct moat_xchg *x = &c->x;
    struct moat_worker *w = c->w;
    if (c->detached || c->state != C_PROXY || !x->respf.tap || !x->cwriter || !x->cobj || !x->u ||
        !x->reqf.done || w->draining)
        return false;
    moat_timer_stop(&w->loop, &c->timer);
    close(c->s.io.fd);
    c->s.io.fd = -1;
    c->s.sink = true;
    c->s.writable = true;
    c->s.readable = false;
    c->detached = true;
    x->keepalive = false;
    x->err = "client_gone";
    MOAT_STAT_ADD(&w->stats, conn_active, (uint64_t)-1);
    MOAT_STAT_INC(&w->stats, cache_detached);
    return true;
}

static void conn_free(struct moat_defer *d)
{
    struct moat_conn *c = MOAT_CONTAINER_OF(d, struct moat_conn, defer);
    /* A cache wake-up posted to this loop still points at <c>: let it free it. */
    if (atomic_load(&c->wake_pending)) {
        c->zombie = true;
        return;
    }
    moat_conn_free_now(c);
}

void moat_conn_free_now(struct moat_conn *c)
{
    moat_buf_put(&c->s.in);
    moat_buf_put(&c->out);
    free(c->hdrs);
    free(c);
}

/* The origin failed before or during the response. Before any response byte reached the
 * client, answer 502 (504 for a timeout) or retry once on a fresh connection when a reused
 * keep-alive connection turned out closed and the request can be replayed (no body). After
 * that the only honest signal left is closing the client connection. */
static int upstream_fail(struct moat_conn *c, const char *kind, bool maybe_stale)
{
    struct moat_xchg *x = &c->x;
    struct moat_stats *st = &c->w->stats;
    x->up_reusable = false;
    if (x->u) {
        moat_up_close(x->u);
        x->u = NULL;
    }
    if (!x->head_sent && maybe_stale && !x->retried && x->reqf.mode == FLOW_NONE) {
        x->retried = true;
        MOAT_STAT_INC(st, up_retries);
        bool reused = false;
        x->u = moat_up_get(c->w, x->upool, c, true, &reused);
        if (x->u) {
            x->uhead_sent = 0;
            x->uhead_done = false;
            x->uhead.rpos = 0;
            x->uhead.wpos = x->uhead_len;
            moat_timer_set(&c->w->loop, &x->u->timer,
                           x->wcfg->cfg->pools[x->pool_idx].connect_timeout_ms);
            return MOAT_OK;
        }
    }
    if (!strcmp(kind, "timeout"))
        MOAT_STAT_INC(st, up_err_timeout);
    else if (!strcmp(kind, "connect"))
        MOAT_STAT_INC(st, up_err_connect);
    else if (!strcmp(kind, "bad_response"))
        MOAT_STAT_INC(st, up_err_bad_response);
    else
        MOAT_STAT_INC(st, up_err_reset);
    x->err = kind;
    if (x->head_sent)
        return MOAT_DONE;
    if (moat_pcache_stale_on_error(c))
        return MOAT_OK; /* answering from the stale copy instead (stale-if-error) */
    moat_pcache_end(c, false);
    /* The request body may be partly consumed: the client's framing is still known (we
     * parsed it), but draining it is not worth it; close after the error. */
    if (x->reqf.mode != FLOW_NONE && !x->reqf.done)
        x->keepalive = false;
    moat_local_response(c, !strcmp(kind, "timeout") ? 504 : 502,
                        !strcmp(kind, "timeout") ? "origin timed out\n"
                                                 : "origin unreachable or failed\n");
    return MOAT_OK;
}

/* --- request head ---------------------------------------------------------------------------- */

/* Checks the chunked body bytes that arrived with the head before anything goes to the
 * origin, so a request whose framing is already broken never reaches it at all (bad framing
 * that arrives later ends the origin's request with a closed connection: truncated, never
 * ambiguous). Decoding twice costs little: these bytes are in cache. */
static bool chunked_prefix_ok(struct moat_conn *c, size_t head_len)
{
    struct moat_h1_chunked dec = c->x.reqf.dec;
    const char *p = moat_buf_rptr(&c->s.in) + head_len;
    size_t left = moat_buf_len(&c->s.in) - head_len;
    while (left) {
        size_t used = 0;
        struct moat_str data;
        enum moat_h1_err err;
        int rc = moat_h1_chunked_decode(&dec, p, left, &used, &data, &err);
        if (rc == MOAT_H1_TRAILERS) /* kept for the origin: check them as far as they came */
            return moat_h1_chunked_trailers(&dec, p + used, left - used, &used, &data, &err) !=
                   MOAT_ERR;
        if (rc == MOAT_ERR)
            return false;
        if (rc == MOAT_DONE || rc == MOAT_AGAIN)
            return true;
        p += used;
        left -= used;
    }
    return true;
}

static int start_request(struct moat_conn *c, size_t head_len)
{
    struct moat_worker *w = c->w;
    struct moat_xchg *x = &c->x;
    struct moat_h1_req *r = &x->req;
    x->wcfg = moat_worker_wcfg_get(w);
    const struct moat_config *cfg = x->wcfg->cfg;
    x->t_start_us = moat_wall_us();
    x->head_consumed = (uint32_t)head_len;
    x->is_head = r->meth == MOAT_M_HEAD;
    remember_for_log(x);
    MOAT_STAT_ADD(&w->stats, req_bytes, head_len);

    if (r->minor == 1)
        x->keepalive = !(r->flags & MOAT_H1_F_CONN_CLOSE);
    else
        x->keepalive = (r->flags & MOAT_H1_F_CONN_KEEP) && !(r->flags & MOAT_H1_F_CONN_CLOSE);
    x->client_close = !x->keepalive;
    if (w->draining)
        x->keepalive = false;

    if (r->flags & MOAT_H1_F_EXPECT_OTHER) {
        MOAT_STAT_INC(&w->stats, bad_expect);
        x->keepalive = false;
        moat_local_response(c, 417, "only 100-continue is supported\n");
        return MOAT_OK;
    }
    if (r->meth == MOAT_M_CONNECT) {
        x->keepalive = false;
        moat_local_response(c, 405, "CONNECT is not supported\n");
        return MOAT_OK;
    }
    if (r->flags & MOAT_H1_F_CHUNKED) {
        x->reqf.mode = FLOW_CHUNKED;
        x->reqf.out_chunked = true;
        x->reqf.bigbuf = w->body_bufsize;
        moat_h1_chunked_init(&x->reqf.dec, cfg->h1.head_bytes);
        x->reqf.dec.keep_trailers = true; /* forwarded to the origin, filtered */
    } else if ((r->flags & MOAT_H1_F_HAS_CL) && r->content_length > 0) {
        x->reqf.mode = FLOW_CL;
        x->reqf.remaining = r->content_length;
        if (r->content_length > w->bufsize)
            x->reqf.bigbuf = w->body_bufsize;
    } else {
        x->reqf.mode = FLOW_NONE;
        x->reqf.done = true;
    }
    x->reqf.limit = cfg->max_body_bytes;
    if (cfg->max_body_bytes && x->reqf.mode == FLOW_CL && r->content_length > cfg->max_body_bytes) {
        MOAT_STAT_INC(&w->stats, bad_body_too_large);
        x->keepalive = false;
        moat_local_response(c, 413, "request body too large\n");
        return MOAT_OK;
    }
    x->upgrade =
        (r->flags & MOAT_H1_F_CONN_UPGRADE) && (r->flags & MOAT_H1_F_UPGRADE) && r->minor == 1;
    if (x->reqf.mode == FLOW_CHUNKED && !chunked_prefix_ok(c, head_len)) {
        MOAT_STAT_INC(&w->stats, bad_parse[MOAT_H1_BAD_CHUNK]);
        x->keepalive = false;
        moat_local_response(c, 400, "bad chunked request body\n");
        return MOAT_OK;
    }

    int rc = moat_pipeline_request(c);
    if (rc == MOAT_DONE) {
        if (x->reqf.mode != FLOW_NONE)
            x->keepalive = false; /* the body was not read */
        return MOAT_OK;
    }
    return moat_conn_forward(c);
}

int moat_conn_forward(struct moat_conn *c)
{
    struct moat_worker *w = c->w;
    struct moat_xchg *x = &c->x;
    struct moat_h1_req *r = &x->req;
    const struct moat_config *cfg = x->wcfg->cfg;
    if (!x->upool) {
        /* Coming back from the cache phase (a collapsed fetch turned out uncacheable). */
        if (moat_phases[MOAT_PH_BALANCE].fn(c) == MOAT_DONE)
            return MOAT_OK;
    }
    if (moat_conn_ensure_buf(&x->uhead, w->bufsize) != MOAT_OK ||
        moat_fwd_request_head(c, &x->uhead) != MOAT_OK) {
        x->keepalive = false;
        moat_local_response(c, 431, "request head too large to forward\n");
        return MOAT_OK;
    }
    /* Everything the exchange needs from the head is copied now: release it from the input
     * buffer so body bytes and pipelined requests follow. */
    moat_buf_consume(&c->s.in, x->head_consumed);
    x->head_consumed = 0;

    if ((r->flags & MOAT_H1_F_EXPECT_100) && x->reqf.mode != FLOW_NONE && r->minor == 1) {
        /* Answer 100 ourselves (as nginx does) and keep Expect from the origin: the client
         * starts sending while we connect. */
        if (moat_conn_ensure_buf(&c->out, w->bufsize) == MOAT_OK)
            moat_buf_append(&c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    }

    bool reused = false;
    x->t_up_start_us = moat_wall_us();
    x->u = moat_up_get(w, x->upool, c, false, &reused);
    if (!x->u)
        return upstream_fail(c, "connect", false);
    if (reused)
        MOAT_STAT_INC(&w->stats, up_conn_reused);
    x->up_reusable = true;
    x->uhead_len = x->uhead.wpos;
    c->state = C_PROXY;
    const struct moat_cfg_pool *p = &cfg->pools[x->pool_idx];
    moat_timer_set(&w->loop, &x->u->timer,
                   reused ? p->first_byte_timeout_ms : p->connect_timeout_ms);
    return MOAT_OK;
}

static int do_head(struct moat_conn *c)
{
    struct moat_worker *w = c->w;
    struct moat_xchg *x = &c->x;
    for (;;) {
        uint32_t len = moat_buf_len(&c->s.in);
        if (len) {
            const struct moat_config *cfg = ccfg(c);
            struct moat_h1_limits lim = cfg->h1;
            if (c->hdrs_cap < lim.max_headers) {
                struct moat_hdr *nh = realloc(c->hdrs, lim.max_headers * sizeof *nh);
                if (!nh)
                    return MOAT_DONE;
                c->hdrs = nh;
                c->hdrs_cap = lim.max_headers;
            }
            lim.max_headers = c->hdrs_cap < lim.max_headers ? c->hdrs_cap : lim.max_headers;
            x->req.hdrs = c->hdrs;
            enum moat_h1_err err = MOAT_H1_OK;
            int n = moat_h1_parse_request(moat_buf_rptr(&c->s.in), len, &lim, &x->req, &err);
            if (n > 0) {
                moat_timer_stop(&w->loop, &c->timer);
                return start_request(c, (size_t)n);
            }
            if (n != MOAT_AGAIN)
                return bad_request(c, err);
            if (moat_buf_room(&c->s.in) == 0 && c->s.in.rpos == 0)
                return bad_request(c, MOAT_H1_HEADERS_TOO_LARGE);
        }
        if (c->s.eof || w->draining) {
            if (len == 0 || c->s.eof)
                return MOAT_DONE;
        }
        if (!c->s.readable) {
            const struct moat_config *cfg = ccfg(c);
            moat_timer_set(&w->loop, &c->timer,
                           len ? cfg->client_header_timeout_ms : cfg->client_idle_timeout_ms);
            return MOAT_AGAIN;
        }
        if (side_read(&c->s) == MOAT_ERR)
            return MOAT_DONE;
    }
}

/* --- the exchange ----------------------------------------------------------------------------- */

static int resp_head(struct moat_conn *c)
{
    struct moat_xchg *x = &c->x;
    struct moat_upconn *u = x->u;
    const struct moat_config *cfg = x->wcfg->cfg;
    for (;;) {
        uint32_t len = moat_buf_len(&u->s.in);
        if (len) {
            struct moat_h1_limits lim = cfg->h1;
            lim.max_headers = c->hdrs_cap;
            lim.request_line = lim.head_bytes;
            struct moat_h1_resp r = {.hdrs = c->hdrs};
            enum moat_h1_err err = MOAT_H1_OK;
            int n = moat_h1_parse_response(moat_buf_rptr(&u->s.in), len, &lim, &r, &err);
            if (n == MOAT_ERR)
                return upstream_fail(c, "bad_response", false);
            if (n > 0) {
                if (r.status >= 100 && r.status < 200 && r.status != 101) {
                    moat_buf_consume(&u->s.in, (uint32_t)n); /* 100 (we sent ours), 102, 103 */
                    continue;
                }
                x->t_up_first_us = moat_wall_us(); /* the final head: upstream_header_ms */
                if (r.status >= 500 && x->cstale) {
                    /* The origin answers with an error while a stale copy is at hand. */
                    if (moat_pcache_stale_on_error(c)) {
                        moat_up_close(u);
                        x->u = NULL;
                        return MOAT_OK;
                    }
                }
                struct moat_flow *f = &x->respf;
                memset(f, 0, sizeof *f);
                if (r.status == 101) {
                    if (!x->upgrade)
                        return upstream_fail(c, "bad_response", false);
                    f->mode = FLOW_EOF;
                    x->keepalive = false;
                } else if (x->is_head || r.status == 204 || r.status == 304) {
                    f->mode = FLOW_NONE;
                    f->done = true;
                } else if (r.flags & MOAT_H1_F_CHUNKED) {
                    f->mode = FLOW_CHUNKED;
                    f->bigbuf = c->w->body_bufsize;
                    moat_h1_chunked_init(&f->dec, cfg->h1.head_bytes);
                    f->out_chunked = x->req.minor == 1;
                    /* Trailers go on to a chunked client; to HTTP/1.0 (raw payload, then
                     * close) there is no place for them and the decoder drops them. */
                    f->dec.keep_trailers = f->out_chunked;
                    if (!f->out_chunked)
                        x->keepalive = false;
                } else if (r.flags & MOAT_H1_F_HAS_CL) {
                    f->mode = FLOW_CL;
                    f->remaining = r.content_length;
                    f->done = r.content_length == 0;
                    if (r.content_length > c->w->bufsize)
                        f->bigbuf = c->w->body_bufsize;
                } else {
                    f->mode = FLOW_EOF;
                    f->bigbuf = c->w->body_bufsize;
                    x->up_reusable = false;
                    f->out_chunked = x->req.minor == 1;
                    if (!f->out_chunked)
                        x->keepalive = false;
                }
                if ((r.flags & MOAT_H1_F_CONN_CLOSE) || r.minor == 0)
                    x->up_reusable = false;
                if (!x->reqf.done) {
                    /* The origin answered before taking the whole body (e.g. 413): neither
                     * connection's framing can be trusted for another request. */
                    x->keepalive = false;
                    x->up_reusable = false;
                }
                x->status = r.status;
                moat_pcache_invalidate(c, &r);
                moat_pcache_response(c, &r);
                if (moat_pcache_revalidated(c)) {
                    /* 304 to our conditional refetch: the origin is done (a 304 has no
                     * body), the client gets the refreshed object from the cache. */
                    moat_buf_consume(&u->s.in, (uint32_t)n);
                    const struct moat_cfg_pool *p = &cfg->pools[x->pool_idx];
                    moat_timer_stop(&c->w->loop, &u->timer);
                    moat_up_release(u, x->up_reusable && x->reqf.done, p->keepalive_timeout_ms,
                                    p->keepalive);
                    x->u = NULL;
                    moat_pcache_serve_revalidated(c);
                    return MOAT_OK;
                }
                if (moat_conn_ensure_buf(&c->out, c->w->bufsize) != MOAT_OK)
                    return MOAT_DONE;
                moat_buf_compact(&c->out);
                if (moat_fwd_response_head(c, &r, &c->out) != MOAT_OK)
                    return upstream_fail(c, "bad_response", false);
                moat_buf_consume(&u->s.in, (uint32_t)n);
                x->head_sent = true;
                x->resp_head_parsed = true;
                return MOAT_OK;
            }
        }
        if (u->timed_out)
            return upstream_fail(c, "timeout", false);
        if (u->s.eof) {
            /* Closed before a response byte: on a reused connection that is the keep-alive
             * race (the origin closed it as we sent); retry once on a fresh one. */
            bool stale = u->requests > 0 && len == 0;
            return upstream_fail(c, len ? "bad_response" : "reset", stale);
        }
        if (!u->s.readable)
            return MOAT_AGAIN;
        if (moat_conn_ensure_buf(&u->s.in, c->w->bufsize) != MOAT_OK)
            return MOAT_DONE;
        ssize_t rr = side_read(&u->s);
        if (rr == MOAT_AGAIN && moat_buf_room(&u->s.in) == 0)
            return upstream_fail(c, "bad_response", false); /* head larger than the buffer */
    }
}

static int do_proxy(struct moat_conn *c)
{
    struct moat_worker *w = c->w;
    struct moat_xchg *x = &c->x;
    for (int spins = 0;; spins++) {
        struct moat_upconn *u = x->u;
        bool progress = false;
        if (!u)
            return MOAT_DONE;
        const struct moat_cfg_pool *p = &x->wcfg->cfg->pools[x->pool_idx];

        /* 1. connect */
        if (!u->connected) {
            if (u->timed_out)
                return upstream_fail(c, "timeout", false);
            if (!u->s.writable)
                return MOAT_AGAIN;
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            getsockopt(u->s.io.fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            if (soerr)
                return upstream_fail(c, "connect", false);
            u->connected = true;
            moat_timer_set(&w->loop, &u->timer, p->first_byte_timeout_ms);
        }

        /* An interim "100 Continue" we queued goes out now: the client waits for it before
         * it sends the body the origin is waiting for. */
        if (!x->resp_head_parsed && moat_buf_len(&c->out) && c->s.writable) {
            ssize_t n = write(c->s.io.fd, moat_buf_rptr(&c->out), moat_buf_len(&c->out));
            if (n > 0)
                moat_buf_consume(&c->out, (uint32_t)n);
            else if (n < 0 && errno == EAGAIN)
                c->s.writable = false;
            else if (n < 0 && errno != EINTR)
                return MOAT_DONE;
        }

        /* 2. request: head, then body. With a body, the pump writes the head (still in
         * x->uhead, its <out>) together with the first body bytes in one writev; such a
         * request is never replayed, so the head need not stay for a retry. */
        if (!x->uhead_done && x->reqf.mode != FLOW_NONE && x->uhead_sent == 0)
            x->uhead_done = true;
        if (!x->uhead_done) {
            while (x->uhead_sent < x->uhead.wpos) {
                if (!u->s.writable)
                    break;
                ssize_t n =
                    write(u->s.io.fd, x->uhead.base + x->uhead_sent, x->uhead.wpos - x->uhead_sent);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n < 0 && errno == EAGAIN) {
                    u->s.writable = false;
                    break;
                }
                if (n < 0)
                    return upstream_fail(c, "reset", u->requests > 0);
                x->uhead_sent += (uint32_t)n;
                progress = true;
            }
            if (x->uhead_sent == x->uhead.wpos) {
                x->uhead_done = true;
                x->uhead.rpos = x->uhead.wpos = 0; /* from now on: request body framing */
            }
        }
        if (x->uhead_done && !(x->reqf.done && moat_buf_len(&x->uhead) == 0 && !x->reqf.span &&
                               (!x->reqf.out_chunked || x->reqf.fin_queued))) {
            uint64_t wr = 0;
            int pr = pump(&x->reqf, &c->s, &u->s, &x->uhead, &wr, &progress);
            if (pr == PUMP_ERR_LIMIT || pr == PUMP_ERR_FRAMING) {
                if (x->head_sent)
                    return MOAT_DONE;
                if (pr == PUMP_ERR_LIMIT)
                    MOAT_STAT_INC(&w->stats, bad_body_too_large);
                else
                    MOAT_STAT_INC(&w->stats, bad_parse[MOAT_H1_BAD_CHUNK]);
                x->keepalive = false;
                x->up_reusable = false;
                moat_up_close(u);
                x->u = NULL;
                moat_local_response(c, pr == PUMP_ERR_LIMIT ? 413 : 400,
                                    pr == PUMP_ERR_LIMIT ? "request body too large\n"
                                                         : "bad chunked request body\n");
                return MOAT_OK;
            }
            if (pr == PUMP_ERR_SRC)
                return MOAT_DONE; /* client vanished mid-body */
            if (pr == PUMP_ERR_DST) {
                /* The origin stopped reading: maybe it already answered; read what it said. */
                x->up_reusable = false;
                x->reqf.done = true;
                x->keepalive = false;
                x->reqf.span = 0;
            }
        }

        /* 3. response head */
        if (!x->resp_head_parsed) {
            int rc = resp_head(c);
            if (rc == MOAT_AGAIN) {
                if (!progress)
                    return MOAT_AGAIN;
                goto next;
            }
            if (rc != MOAT_OK)
                return rc;
            if (c->state != C_PROXY || !x->resp_head_parsed)
                return MOAT_OK; /* a local error response was queued, or a retry began */
            progress = true;
            if (x->status == 101) {
                c->state = C_TUNNEL;
                memset(&x->reqf, 0, sizeof x->reqf);
                x->reqf.mode = FLOW_EOF;
                moat_timer_set(&w->loop, &u->timer, p->idle_timeout_ms);
                moat_timer_stop(&w->loop, &c->timer);
                return MOAT_OK;
            }
        }

        /* 4. response body */
        {
            int pr = pump(&x->respf, &u->s, &c->s, &c->out, &x->resp_bytes, &progress);
            if (pr == PUMP_DONE) {
                if (!x->reqf.done)
                    x->keepalive = false;
                exchange_end(c);
                if (!c->x.keepalive)
                    return MOAT_DONE;
                c->state = C_HEAD;
                return MOAT_OK;
            }
            if (pr == PUMP_ERR_SRC || pr == PUMP_ERR_FRAMING) {
                if (u->timed_out)
                    x->err = "timeout";
                MOAT_STAT_INC(&w->stats, up_err_reset);
                if (!x->err)
                    x->err = "truncated";
                return MOAT_DONE;
            }
            if (pr == PUMP_ERR_DST) {
                if (detach(c))
                    continue;
                return MOAT_DONE;
            }
            if (u->timed_out) {
                MOAT_STAT_INC(&w->stats, up_err_timeout);
                x->err = "timeout";
                return MOAT_DONE;
            }
        }
    next:
        if (x->u && progress)
            moat_timer_set(&w->loop, &x->u->timer,
                           x->resp_head_parsed ? p->idle_timeout_ms : p->first_byte_timeout_ms);
        /* The client's timer runs only while we wait to write to it (timeouts.send); waiting
         * for the origin is the origin's timers' business. */
        if (moat_buf_len(&c->out) || x->respf.span)
            moat_timer_set(&w->loop, &c->timer, ccfg(c)->send_timeout_ms);
        else if (!x->reqf.done && !c->s.readable && !x->reqf.span)
            moat_timer_set(&w->loop, &c->timer, ccfg(c)->client_body_timeout_ms);
        else
            moat_timer_stop(&w->loop, &c->timer);
        if (!progress || spins > 64)
            return progress ? MOAT_OK : MOAT_AGAIN;
    }
}

/* An upgraded connection: both directions until both have ended. */
static int do_tunnel(struct moat_conn *c)
{
    struct moat_xchg *x = &c->x;
    struct moat_upconn *u = x->u;
    bool progress = false;
    if (u->timed_out)
        return MOAT_DONE;
    int a = PUMP_DONE, b = PUMP_DONE;
    if (!x->reqf.done || x->reqf.span || moat_buf_len(&x->uhead)) {
        uint64_t to_origin = 0; /* counted in reqf.bytes (request bytes), not as response */
        a = pump(&x->reqf, &c->s, &u->s, &x->uhead, &to_origin, &progress);
        if (a == PUMP_DONE)
            shutdown(u->s.io.fd, SHUT_WR);
    }
    if (!x->respf.done || x->respf.span || moat_buf_len(&c->out)) {
        b = pump(&x->respf, &u->s, &c->s, &c->out, &x->resp_bytes, &progress);
        if (b == PUMP_DONE)
            shutdown(c->s.io.fd, SHUT_WR);
    }
    if (a >= PUMP_ERR_SRC || b >= PUMP_ERR_SRC)
        return MOAT_DONE;
    if (a == PUMP_DONE && b == PUMP_DONE)
        return MOAT_DONE;
    if (progress) {
        const struct moat_cfg_pool *p = &x->wcfg->cfg->pools[x->pool_idx];
        moat_timer_set(&c->w->loop, &u->timer, p->idle_timeout_ms);
    }
    return MOAT_AGAIN;
}

/* Writes a locally made response; then the next request, or close. */
static int do_local(struct moat_conn *c)
{
    while (moat_buf_len(&c->out)) {
        if (!c->s.writable) {
            moat_timer_set(&c->w->loop, &c->timer, ccfg(c)->send_timeout_ms);
            return MOAT_AGAIN;
        }
        ssize_t n = write(c->s.io.fd, moat_buf_rptr(&c->out), moat_buf_len(&c->out));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            c->s.writable = false;
            continue;
        }
        if (n < 0)
            return MOAT_DONE;
        c->x.resp_bytes += (uint64_t)n;
        moat_buf_consume(&c->out, (uint32_t)n);
    }
    bool keep = c->state == C_LOCAL && c->x.keepalive;
    if (c->x.head_consumed) {
        moat_buf_consume(&c->s.in, c->x.head_consumed);
        c->x.head_consumed = 0;
    }
    /* The client asked to close and sent nothing beyond its request: it has nothing more
     * to send, so the close needs no lingering (nginx lingers only when a body or more
     * input may be unread, too). Saves a shutdown, a read and a wake-up per connection. */
    bool quiet = c->x.client_close && c->x.reqf.done && moat_buf_len(&c->s.in) == 0;
    exchange_end(c);
    if (!keep || !c->x.keepalive) {
        if (quiet)
            return MOAT_DONE;
        /* Lingering close (nginx's lingering_close): stop writing and read and drop what the
         * client still sends for a moment, so it reads our answer instead of a reset that
         * unread bytes in our receive queue would cause on close. */
        shutdown(c->s.io.fd, SHUT_WR);
        c->state = C_LINGER;
        moat_timer_set(&c->w->loop, &c->timer, 2000);
        return MOAT_OK;
    }
    c->state = C_HEAD;
    return MOAT_OK;
}

static int do_linger(struct moat_conn *c)
{
    char sink[4096];
    for (int i = 0; i < 64; i++) {
        if (!c->s.readable)
            return MOAT_AGAIN;
        ssize_t n = read(c->s.io.fd, sink, sizeof sink);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            return MOAT_DONE;
        if (n < 0 && errno == EAGAIN)
            c->s.readable = false;
    }
    return MOAT_DONE; /* 256 KiB is enough patience */
}

void moat_conn_drive(struct moat_conn *c)
{
    if (c->in_drive) {
        c->drive_again = true;
        return;
    }
    c->in_drive = true;
    int rc;
    do {
        c->drive_again = false;
        switch (c->state) {
        case C_HEAD:
            rc = do_head(c);
            break;
        case C_PROXY:
            rc = do_proxy(c);
            break;
        case C_TUNNEL:
            rc = do_tunnel(c);
            break;
        case C_LINGER:
            rc = do_linger(c);
            break;
        case C_CACHE:
            rc = moat_pcache_serve(c);
            break;
        case C_LOCAL:
        case C_CLOSING:
        default:
            rc = do_local(c);
            break;
        }
        /* A detached connection has nobody to answer: it ends with its exchange, whatever
         * comes next (keep-alive, a local error answer, an answer from the cache). */
        if (rc == MOAT_DONE || (c->detached && c->state != C_PROXY)) {
            c->in_drive = false;
            conn_close(c);
            return;
        }
    } while (rc == MOAT_OK || c->drive_again);
    c->in_drive = false;
}

static void conn_io(struct moat_loop *loop, struct moat_io *io, uint32_t ev)
{
    struct moat_conn *c = MOAT_CONTAINER_OF(io, struct moat_conn, s.io);
    (void)loop;
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        c->s.readable = true;
    if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        c->s.hup = true;
    if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
        c->s.writable = true;
    moat_conn_drive(c);
}

static void conn_timeout(struct moat_loop *loop, struct moat_timer *t)
{
    struct moat_conn *c = MOAT_CONTAINER_OF(t, struct moat_conn, timer);
    (void)loop;
    if (detach(c)) { /* a cache fill's client too slow to take the response */
        moat_conn_drive(c);
        return;
    }
    if (c->state == C_HEAD && moat_buf_len(&c->s.in) > 0) {
        MOAT_STAT_INC(&c->w->stats, bad_timeout);
        /* A partial head that never completed: 408, as nginx and HAProxy answer. */
        if (!c->x.wcfg) {
            c->x.wcfg = moat_worker_wcfg_get(c->w);
            c->x.t_start_us = moat_wall_us();
        }
        c->x.keepalive = false;
        c->x.err = "client_timeout";
        moat_local_response(c, 408, "request head not received in time\n");
        moat_conn_drive(c);
        return;
    }
    conn_close(c);
}

void moat_conn_close_idle(struct moat_conn *c)
{
    if (c->state == C_HEAD && moat_buf_len(&c->s.in) == 0)
        conn_close(c);
}

void moat_conn_close_any(struct moat_conn *c)
{
    conn_close(c);
}

/* A new connection object with its input buffer, not yet in the worker's list. */
static struct moat_conn *conn_new(struct moat_worker *w)
{
    struct moat_conn *c = calloc(1, sizeof *c);
    if (!c || moat_buf_get(&c->s.in, w->bufsize) != MOAT_OK) {
        free(c);
        return NULL;
    }
    c->s.io.fd = -1;
    c->s.io.cb = conn_io;
    c->defer.fn = conn_free;
    c->timer.cb = conn_timeout;
    c->w = w;
    c->state = C_HEAD;
    return c;
}

static void conn_link(struct moat_worker *w, struct moat_conn *c)
{
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
}

struct moat_conn *moat_conn_spawn(struct moat_conn *c)
{
    struct moat_worker *w = c->w;
    const struct moat_xchg *cx = &c->x;
    size_t hl = cx->req.head_len;
    if (cx->reqf.mode != FLOW_NONE || hl > moat_buf_len(&c->s.in) || hl > w->bufsize)
        return NULL;
    struct moat_conn *b = conn_new(w);
    if (!b)
        return NULL;
    b->hdrs = malloc(c->hdrs_cap * sizeof *b->hdrs);
    if (!b->hdrs) {
        moat_conn_free_now(b);
        return NULL;
    }
    b->hdrs_cap = c->hdrs_cap;
    memcpy(b->s.in.base, moat_buf_rptr(&c->s.in), hl);
    b->s.in.wpos = (uint32_t)hl;
    struct moat_xchg *x = &b->x;
    struct moat_h1_limits lim = cx->wcfg->cfg->h1;
    lim.max_headers = b->hdrs_cap;
    x->req.hdrs = b->hdrs;
    enum moat_h1_err err = MOAT_H1_OK;
    if (moat_h1_parse_request(b->s.in.base, hl, &lim, &x->req, &err) != (int)hl) {
        moat_conn_free_now(b); /* cannot happen: the same bytes parsed a moment ago */
        return NULL;
    }
    b->s.sink = true;
    b->s.writable = true;
    b->detached = true;
    b->bg = true;
    memcpy(b->peer, c->peer, sizeof b->peer);
    memcpy(b->peer_text, c->peer_text, sizeof b->peer_text);
    b->peer_len = c->peer_len;
    x->wcfg = cx->wcfg;
    x->wcfg->users++;
    x->t_start_us = moat_wall_us();
    x->head_consumed = (uint32_t)hl;
    x->is_head = cx->is_head;
    remember_for_log(x);
    x->reqf.mode = FLOW_NONE;
    x->reqf.done = true;
    x->site = cx->site;
    x->rule = cx->rule;
    x->static_default = cx->static_default;
    x->creq = cx->creq;
    x->creq_time = cx->creq_time;
    x->has_auth = cx->has_auth;
    x->cvariant = cx->cvariant;
    x->ckeylen = cx->ckeylen;
    x->ckeyurl = cx->ckeyurl;
    x->cae_norm = cx->cae_norm;
    x->cae = cx->cae;
    memcpy(b->ckey, c->ckey, cx->ckeylen);
    return b;
}

void moat_conn_spawn_start(struct moat_conn *b, bool go)
{
    struct moat_worker *w = b->w;
    if (!go) {
        moat_worker_wcfg_put(w, b->x.wcfg);
        moat_conn_free_now(b);
        return;
    }
    conn_link(w, b);
    moat_conn_forward(b);
    if (b->state == C_PROXY)
        moat_conn_drive(b);
    else
        conn_close(b); /* answered locally at once (no origin, head too large): done */
}

void moat_conn_accept(struct moat_worker *w, int fd, const struct sockaddr_storage *ss)
{
    struct moat_conn *c = conn_new(w);
    if (!c) {
        close(fd);
        return;
    }
    /* TCP_NODELAY is inherited from the listener (Linux copies it to accepted sockets):
     * no setsockopt per connection. */
    c->s.io.fd = fd;
    c->x.keepalive = true;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        memset(c->peer, 0, 10);
        c->peer[10] = c->peer[11] = 0xff;
        memcpy(c->peer + 12, &s4->sin_addr, 4);
        inet_ntop(AF_INET, &s4->sin_addr, c->peer_text, sizeof c->peer_text);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        memcpy(c->peer, &s6->sin6_addr, 16);
        inet_ntop(AF_INET6, &s6->sin6_addr, c->peer_text, sizeof c->peer_text);
    }
    c->peer_len = (uint8_t)strlen(c->peer_text);
    conn_link(w, c);
    MOAT_STAT_INC(&w->stats, conn_total);
    MOAT_STAT_INC(&w->stats, conn_active);
    moat_timer_set(&w->loop, &c->timer, ccfg(c)->client_header_timeout_ms);
    /* Serve first, register later (HAProxy's speculative I/O): the request is usually here
     * already, and a Connection: close request answered at once (a cache hit, a local
     * answer) is done before epoll ever hears of the socket, which saves the epoll_ctl and
     * the epoll bookkeeping of its close. Registering afterwards loses nothing: an
     * edge-triggered ADD reports readiness the socket already has. */
    c->s.readable = true;
    c->s.writable = true;
    moat_conn_drive(c);
    if (c->closed)
        return;
    if (moat_loop_add(&w->loop, &c->s.io, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) != MOAT_OK)
        conn_close(c);
}
