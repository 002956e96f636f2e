/* h1conn.c: the HTTP/1 server side. A client connection reads and parses request heads, makes
 * one request (struct moat_req) at a time from each, and implements the downstream interface
 * for it: response heads through the HTTP/1.1 encoder, bodies framed (Content-Length,
 * chunked with trailers, until close for HTTP/1.0), the request body decoded from its
 * framing, 100-continue, upgrades, keep-alive and pipelining, lingering close, timeouts.
 *
 * Everything is edge-triggered: the socket is registered once for IN|OUT|RDHUP and the
 * readiness we were told about is remembered in its moat_sock, so pausing one direction
 * (back-pressure) costs no epoll_ctl. h1_drive() runs the connection until nothing can
 * progress without new readiness; while a request is in progress the connection hands its
 * events to the request (moat_req_drive), which calls back through the downstream ops. */
#include <arpa/inet.h>
#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/hwrite.h"
#include "proxy/pipeline.h"
#include "proxy/req.h"
#include "proxy/server.h"
#include "shield/shield.h"
#include "tls/tls.h"

static void h1_drive(struct moat_h1conn *c);
static void conn_close(struct moat_h1conn *c);

static inline const struct moat_config *ccfg(const struct moat_h1conn *c)
{
    return c->w->wcfg->cfg;
}

/* The connection's one timer, for what the client owes us: a head (client_header), the next
 * request (keepalive), taking our bytes (send), sending its body (client_body), the TLS
 * handshake, the linger. Waiting for the origin is never its business. */
static void arm(struct moat_h1conn *c, uint64_t ms)
{
    moat_timer_set(&c->w->loop, &c->timer, ms);
}

static void disarm(struct moat_h1conn *c)
{
    if (moat_timer_armed(&c->timer))
        moat_timer_stop(&c->w->loop, &c->timer);
}

/* --- writing ------------------------------------------------------------------------------- */

/* Writes <out> and then <p,n> with one writev. Returns the bytes of <p> taken (the out bytes
 * are consumed as written), or MOAT_ERR. Arms the send timeout when blocked. */
static ssize_t write_out(struct moat_h1conn *c, struct moat_req *r, const char *p, size_t n,
                         bool more)
{
    uint32_t olen = moat_buf_len(&c->out);
    if (!olen && !n)
        return 0;
    if (!c->s.sk.writable) {
        arm(c, ccfg(c)->send_timeout_ms);
        return 0;
    }
    struct iovec iov[2];
    int k = 0;
    if (olen)
        iov[k++] = (struct iovec){moat_buf_rptr(&c->out), olen};
    if (n)
        iov[k++] = (struct iovec){(void *)p, n};
    ssize_t w = moat_sock_writev(&c->s.sk, iov, k, more ? MOAT_SOCK_MORE : 0);
    if (w == MOAT_AGAIN) {
        arm(c, ccfg(c)->send_timeout_ms);
        return 0;
    }
    if (w < 0) {
        c->werr = true;
        return MOAT_ERR;
    }
    if (r)
        r->resp_bytes += (uint64_t)w;
    uint32_t from_out = (uint32_t)MOAT_MIN((size_t)w, olen);
    moat_buf_consume(&c->out, from_out);
    size_t taken = (size_t)w - from_out;
    if (taken < n || moat_buf_len(&c->out))
        arm(c, ccfg(c)->send_timeout_ms);
    else if (moat_timer_armed(&c->timer))
        disarm(c);
    return (ssize_t)taken;
}

/* Sends what the transport holds (TLS records). MOAT_OK when nothing is left. */
static int flush_sock(struct moat_h1conn *c)
{
    if (!moat_sock_pending(&c->s.sk))
        return MOAT_OK;
    int rc = moat_sock_flush(&c->s.sk);
    if (rc == MOAT_AGAIN)
        arm(c, ccfg(c)->send_timeout_ms);
    return rc;
}

/* --- the downstream ops -------------------------------------------------------------------- */

static int h1_send_head(struct moat_req *r, const struct moat_resp *resp)
{
    struct moat_h1conn *c = r->dsc;
    if (moat_buf_ensure(&c->out, c->w->bufsize) != MOAT_OK)
        return MOAT_ERR;
    moat_buf_compact(&c->out);
    char fr[64];
    struct out f = {fr, 0, sizeof fr, false};
    c->out_none = resp->no_body;
    c->out_raw = resp->upgrade;
    c->out_chunked = false;
    c->close_after = false;
    if (resp->upgrade) {
        /* Connection: upgrade comes from the encoder */
    } else if (resp->length != MOAT_LEN_UNKNOWN && (!resp->no_body || resp->keep_cl)) {
        PUTL(&f, "Content-Length: ");
        put_u64(&f, resp->length);
        PUTL(&f, "\r\n");
    } else if (resp->no_body) {
        /* no length to state */
    } else if (r->minor == 1) {
        PUTL(&f, "Transfer-Encoding: chunked\r\n");
        c->out_chunked = true;
    } else {
        c->close_after = true; /* HTTP/1.0: the body ends with the connection */
    }
    bool keep = c->keepalive && !r->close && !c->close_after && !c->w->draining;
    struct moat_resp rs = *resp;
    rs.trailers_ok = resp->trailers_ok && c->out_chunked;
    if (moat_resp_h1(r, &rs, moat_str_make(fr, f.n), keep, keep && r->minor == 0, &c->out) !=
        MOAT_OK)
        return MOAT_ERR;
    if (!keep)
        c->keepalive = false;
    c->head_queued = true;
    c->co = (struct moat_chunk_out){0};
    c->chunk_left = 0;
    if (resp->upgrade) {
        /* From now on the client's bytes go to the origin as they come. */
        c->in_raw = true;
        c->in = (struct moat_flow){.mode = FLOW_EOF};
        r->body_done = false;
    }
    return MOAT_OK;
}

/* 1xx other than 101 (103 Early Hints): forwarded at once to an HTTP/1.1 client; never to
 * HTTP/1.0, which does not know them (RFC 9110 15.2). */
static int h1_send_interim(struct moat_req *r, const struct moat_resp *resp)
{
    struct moat_h1conn *c = r->dsc;
    if (r->minor == 0 || moat_buf_ensure(&c->out, c->w->bufsize) != MOAT_OK)
        return MOAT_ERR;
    moat_buf_compact(&c->out);
    struct out o = {moat_buf_wptr(&c->out), 0, moat_buf_room(&c->out), false};
    PUTL(&o, "HTTP/1.1 ");
    put_u64(&o, (uint64_t)resp->status);
    PUTL(&o, " ");
    puts_(&o, resp->reason.len ? resp->reason : moat_http_reason(resp->status));
    PUTL(&o, "\r\n");
    bool date = false;
    for (size_t i = 0; i < resp->nfields; i++)
        if (moat_resp_keep(r, resp, &resp->fields[i], &date))
            put_field(&o, &resp->fields[i]);
    PUTL(&o, "\r\n");
    if (o.overflow)
        return MOAT_ERR;
    c->out.wpos += (uint32_t)o.n;
    if (write_out(c, NULL, NULL, 0, false) < 0)
        return MOAT_ERR;
    return MOAT_OK;
}

static ssize_t h1_send_data(struct moat_req *r, const char *p, size_t n, bool more)
{
    struct moat_h1conn *c = r->dsc;
    if (c->out_none)
        n = 0; /* HEAD, 204, 304: nothing follows the head */
    if (n && c->out_chunked) {
        if (c->chunk_left == 0) {
            /* Framing goes before the data in <out>; without room, <out> is written first. */
            if (moat_buf_room(&c->out) + c->out.rpos < 32) {
                ssize_t w = write_out(c, r, NULL, 0, false);
                if (w < 0)
                    return MOAT_ERR;
                if (moat_buf_room(&c->out) + c->out.rpos < 32)
                    return 0;
            }
            moat_chunk_frame(&c->co, &c->out, n);
            c->chunk_left = n;
        }
        if (n > c->chunk_left)
            n = (size_t)c->chunk_left;
    }
    ssize_t w = write_out(c, r, p, n, more);
    if (w > 0 && c->out_chunked)
        c->chunk_left -= (uint64_t)w;
    return c->out_none && w >= 0 ? (ssize_t)0 : w;
}

static void h1_push(struct moat_req *r)
{
    struct moat_h1conn *c = r->dsc;
    if (c->s.sk.held)
        moat_sock_flush(&c->s.sk);
}

static int h1_finish(struct moat_req *r, struct moat_str trailers)
{
    struct moat_h1conn *c = r->dsc;
    if (c->out_chunked && !c->co.fin_queued && !c->out_none) {
        uint64_t need = trailers.len ? trailers.len + MOAT_CHUNK_TRAILER_FRAMING : 32;
        if (moat_buf_room(&c->out) + c->out.rpos < need) {
            if (write_out(c, r, NULL, 0, false) < 0)
                return MOAT_ERR;
            if (moat_buf_room(&c->out) + c->out.rpos < need)
                return MOAT_AGAIN;
        }
        if (trailers.len)
            moat_chunk_trailers(&c->co, &c->out, trailers);
        else
            moat_chunk_frame(&c->co, &c->out, 0);
    }
    while (moat_buf_len(&c->out)) {
        ssize_t w = write_out(c, r, NULL, 0, false);
        if (w < 0)
            return MOAT_ERR;
        if (moat_buf_len(&c->out))
            return MOAT_AGAIN;
    }
    int rc = flush_sock(c);
    if (rc != MOAT_OK)
        return rc == MOAT_AGAIN ? MOAT_AGAIN : MOAT_ERR;
    if (c->out_raw) {
        /* A tunnel's direction toward the client ends: shut our side for writing. */
        if (moat_sock_shutdown(&c->s.sk) == MOAT_AGAIN)
            return MOAT_AGAIN;
    }
    return MOAT_OK;
}

static void h1_abort(struct moat_req *r)
{
    struct moat_h1conn *c = r->dsc;
    c->keepalive = false;
    c->aborted = true;
}

static int h1_body(struct moat_req *r, struct moat_str *span)
{
    struct moat_h1conn *c = r->dsc;
    struct moat_flow *f = &c->in;
    if (f->span) {
        *span = moat_str_make(moat_buf_rptr(&c->s.in), f->span);
        return MOAT_OK;
    }
    if (c->expect100 && !moat_buf_len(&c->s.in)) {
        /* Answer 100 ourselves (as nginx does) and keep Expect from the origin: the client
         * sends its body once moat is ready to take it. */
        c->expect100 = false;
        if (moat_buf_ensure(&c->out, c->w->bufsize) == MOAT_OK &&
            moat_buf_room(&c->out) + c->out.rpos >= 25) {
            moat_buf_compact(&c->out);
            moat_buf_append(&c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
            if (write_out(c, NULL, NULL, 0, false) < 0)
                return MOAT_ERR;
        }
    }
    for (;;) {
        int rc = moat_flow_next(f, &c->s.in, c->s.sk.eof, span);
        switch (rc) {
        case FLOW_DATA:
            return MOAT_OK;
        case FLOW_END:
            r->body_done = true;
            if (!c->in_raw && moat_timer_armed(&c->timer))
                disarm(c);
            return MOAT_DONE;
        case FLOW_ERR_FRAMING:
            r->body_err = BODY_FRAMING;
            return MOAT_ERR;
        case FLOW_ERR_LIMIT:
            r->body_err = BODY_LIMIT;
            return MOAT_ERR;
        case FLOW_ERR_TRUNC:
            r->body_err = BODY_TRUNCATED;
            return MOAT_ERR;
        default: /* FLOW_MORE */
            break;
        }
        if (!c->s.sk.readable) {
            if (!c->in_raw)
                arm(c, ccfg(c)->client_body_timeout_ms);
            return MOAT_AGAIN;
        }
        if (f->bigbuf > c->s.in.cap && !moat_buf_len(&c->s.in)) {
            /* A large body: read it in larger bites (fewer read/writev pairs). The swap
             * happens while the buffer is empty, so no byte is copied; without memory the
             * small buffer just stays. */
            (void)moat_buf_swap_empty(&c->s.in, f->bigbuf);
        }
        ssize_t n = moat_side_read(&c->s);
        if (n == MOAT_ERR && f->mode != FLOW_EOF) {
            r->body_err = BODY_TRUNCATED;
            return MOAT_ERR;
        }
        if (n == MOAT_AGAIN && moat_buf_room(&c->s.in) == 0 && c->s.in.rpos == 0) {
            r->body_err = BODY_FRAMING; /* a trailer section larger than the buffer */
            return MOAT_ERR;
        }
    }
}

static void h1_body_consume(struct moat_req *r, size_t n)
{
    struct moat_h1conn *c = r->dsc;
    if (c->in.span) {
        moat_flow_consume(&c->in, &c->s.in, (uint32_t)n);
        r->req_bytes += n;
    } else if (c->in.done) {
        moat_flow_end(&c->in, &c->s.in);
    }
}

static void h1_done(struct moat_req *r)
{
    struct moat_h1conn *c = r->dsc;
    c->req = NULL;
    c->nreq++;
    if (c->closed)
        return;
    bool body_read = r->body_done && !c->in_raw;
    bool keep =
        c->keepalive && !r->close && !c->close_after && !c->aborted && body_read && !c->w->draining;
    /* The client asked to close and sent nothing beyond its request: it has nothing more to
     * send, so the close needs no lingering (nginx lingers only when a body or more input
     * may be unread, too). Saves a shutdown, a read and a wake-up per connection. */
    c->quiet_close = c->client_close && body_read && moat_buf_len(&c->s.in) == 0;
    if (c->s.in.cap > c->w->bufsize && !moat_buf_len(&c->s.in))
        (void)moat_buf_swap_empty(&c->s.in, c->w->bufsize); /* an upload's big buffer back */
    c->head_queued = c->out_chunked = c->out_none = c->out_raw = c->close_after = false;
    c->in = (struct moat_flow){0};
    c->expect100 = false;
    if (c->aborted || c->werr || c->in_raw) {
        /* The only honest signal left for a cut response: close at once. */
        c->state = H_CLOSING;
        c->hard_close = true;
    } else if (!keep) {
        c->state = H_CLOSING;
    } else {
        c->state = H_HEAD;
        c->keepalive = true;
    }
    if (!c->in_drive)
        h1_drive(c);
    else
        c->drive_again = true;
}

static void h1_detach(struct moat_req *r)
{
    struct moat_h1conn *c = r->dsc;
    c->req = NULL;
    conn_close(c);
}

static const struct moat_ds h1_ds = {
    .name = "h1",
    .send_head = h1_send_head,
    .send_interim = h1_send_interim,
    .send_data = h1_send_data,
    .push = h1_push,
    .finish = h1_finish,
    .abort = h1_abort,
    .body = h1_body,
    .body_consume = h1_body_consume,
    .done = h1_done,
    .detach = h1_detach,
};

/* --- request heads ------------------------------------------------------------------------- */

/* Checks the chunked body bytes that arrived with the head before anything goes to the
 * origin, so a request whose framing is already broken never reaches it at all (bad framing
 * that arrives later ends the origin's request with a closed connection: truncated, never
 * ambiguous). Decoding twice costs little: these bytes are in cache. */
static bool chunked_prefix_ok(struct moat_h1conn *c)
{
    struct moat_h1_chunked dec = c->in.dec;
    const char *p = moat_buf_rptr(&c->s.in);
    size_t left = moat_buf_len(&c->s.in);
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

static struct moat_req *new_req(struct moat_h1conn *c)
{
    struct moat_req *r = moat_req_new(c->w, &h1_ds, c);
    if (!r)
        return NULL;
    memcpy(r->peer, c->peer, sizeof r->peer);
    memcpy(r->peer_text, c->peer_text, sizeof r->peer_text);
    r->peer_len = c->peer_len;
    if (c->tls) {
        r->tls = true;
        r->scheme = MOAT_STR("https");
    }
    c->req = r;
    c->state = H_REQ;
    return r;
}

/* A head moat refuses: answered with the parser's status and reason, then the connection
 * closes (after a malformed request its framing is unknown). */
static int bad_request(struct moat_h1conn *c, enum moat_h1_err err)
{
    struct moat_req *r = new_req(c);
    if (!r)
        return MOAT_DONE;
    if (err < MOAT_H1_ERR_COUNT)
        MOAT_STAT_INC(&c->w->stats, bad_parse[err]);
    c->keepalive = false;
    r->close = true;
    r->body_done = true;
    r->perr = err;
    char body[96];
    snprintf(body, sizeof body, "%s\n", moat_h1_err_name(err));
    moat_local_response(r, moat_h1_err_status(err), body);
    moat_req_drive(r);
    return MOAT_OK;
}

/* The request takes its own copy of the head: the input buffer moves on to the body and to
 * pipelined requests, and nothing above this file ever points into it. One memcpy of the
 * head's bytes (a few hundred, in cache) and the fields array, both into one buffer from
 * the thread's free list. */
static int own_head(struct moat_h1conn *c, struct moat_req *r, const struct moat_h1_req *q)
{
    size_t hl = q->head_len, n = q->nhdrs;
    size_t off = (hl + 15) & ~(size_t)15;
    size_t need = off + n * sizeof(struct moat_hdr);
    if (moat_buf_get(&r->hbuf, (uint32_t)MOAT_MAX(need, (size_t)c->w->bufsize)) != MOAT_OK)
        return MOAT_ERR;
    const char *from = moat_buf_rptr(&c->s.in);
    char *to = r->hbuf.base;
    memcpy(to, from, hl);
    r->hbuf.wpos = (uint32_t)need;
    r->hdrs = (struct moat_hdr *)(void *)(to + off);
    /* Every field lies inside the head (only the path of an absolute-form target may be a
     * static "/", below): one offset for all, no range check per field. */
    ptrdiff_t d = to - from;
    for (size_t i = 0; i < n; i++) {
        r->hdrs[i].name = moat_str_make(q->hdrs[i].name.ptr + d, q->hdrs[i].name.len);
        r->hdrs[i].value = moat_str_make(q->hdrs[i].value.ptr + d, q->hdrs[i].value.len);
    }
    r->nhdrs = n;
    r->hdrs_h1 = true;
    r->meth = q->meth;
    r->method = moat_str_rebase(q->method, from, hl, to);
    r->target = moat_str_rebase(q->target, from, hl, to);
    r->path = moat_str_rebase(q->path, from, hl, to);
    r->query = moat_str_rebase(q->query, from, hl, to);
    r->authority = moat_str_rebase(q->host, from, hl, to);
    r->minor = q->minor;
    r->flags = q->flags;
    return MOAT_OK;
}

static int start_request(struct moat_h1conn *c, const struct moat_h1_req *q)
{
    struct moat_worker *w = c->w;
    struct moat_req *r = new_req(c);
    if (!r || own_head(c, r, q) != MOAT_OK) {
        if (r)
            moat_req_client_gone(r);
        return MOAT_DONE;
    }
    const struct moat_config *cfg = r->wcfg->cfg;
    moat_buf_consume(&c->s.in, (uint32_t)q->head_len);
    MOAT_STAT_ADD(&w->stats, req_bytes, q->head_len);
    r->is_head = q->meth == MOAT_M_HEAD;

    if (q->minor == 1)
        c->keepalive = !(q->flags & MOAT_H1_F_CONN_CLOSE);
    else
        c->keepalive = (q->flags & MOAT_H1_F_CONN_KEEP) && !(q->flags & MOAT_H1_F_CONN_CLOSE);
    c->client_close = !c->keepalive;
    if (w->draining)
        c->keepalive = false;

    struct moat_flow *f = &c->in;
    *f = (struct moat_flow){0};
    if (q->flags & MOAT_H1_F_CHUNKED) {
        f->mode = FLOW_CHUNKED;
        f->bigbuf = w->body_bufsize;
        moat_h1_chunked_init(&f->dec, cfg->h1.head_bytes);
        f->dec.keep_trailers = true; /* forwarded to the origin, filtered */
        r->body_len = MOAT_LEN_UNKNOWN;
    } else if ((q->flags & MOAT_H1_F_HAS_CL) && q->content_length > 0) {
        f->mode = FLOW_CL;
        f->remaining = q->content_length;
        if (q->content_length > w->bufsize)
            f->bigbuf = w->body_bufsize;
        r->body_len = q->content_length;
    } else {
        f->mode = FLOW_NONE;
        f->done = true;
        r->body_done = true;
    }
    f->limit = cfg->max_body_bytes;
    c->expect100 = (q->flags & MOAT_H1_F_EXPECT_100) && f->mode != FLOW_NONE && q->minor == 1;

    if (q->flags & MOAT_H1_F_EXPECT_OTHER) {
        MOAT_STAT_INC(&w->stats, bad_expect);
        r->close = true;
        moat_local_response(r, 417, "only 100-continue is supported\n");
    } else if (f->mode == FLOW_CHUNKED && !chunked_prefix_ok(c)) {
        MOAT_STAT_INC(&w->stats, bad_parse[MOAT_H1_BAD_CHUNK]);
        r->close = true;
        moat_local_response(r, 400, "bad chunked request body\n");
    }
    moat_req_start(r);
    return MOAT_OK;
}

static int do_head(struct moat_h1conn *c)
{
    struct moat_worker *w = c->w;
    for (;;) {
        uint32_t len = moat_buf_len(&c->s.in);
        if (len && c->h2c && c->nreq == 0 && moat_buf_rptr(&c->s.in)[0] == 'P') {
            /* HTTP/2 with prior knowledge: the client preface (RFC 9113 3.4). */
            static const char pri[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
            size_t k = MOAT_MIN((size_t)len, sizeof pri - 1);
            if (!memcmp(moat_buf_rptr(&c->s.in), pri, k)) {
                if (k == sizeof pri - 1) {
                    moat_h2_takeover(c);
                    return MOAT_DONE;
                }
                if (!c->s.sk.eof && c->s.sk.readable) {
                    if (moat_side_read(&c->s) == MOAT_ERR)
                        return MOAT_DONE;
                    continue;
                }
                if (!c->s.sk.eof) {
                    arm(c, ccfg(c)->client_header_timeout_ms);
                    return MOAT_AGAIN;
                }
            }
        }
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
            struct moat_h1_req q = {.hdrs = c->hdrs};
            enum moat_h1_err err = MOAT_H1_OK;
            int n = moat_h1_parse_request(moat_buf_rptr(&c->s.in), len, &lim, &q, &err);
            if (n > 0) {
                disarm(c);
                return start_request(c, &q);
            }
            if (n != MOAT_AGAIN)
                return bad_request(c, err);
            if (moat_buf_room(&c->s.in) == 0 && c->s.in.rpos == 0)
                return bad_request(c, MOAT_H1_HEADERS_TOO_LARGE);
        }
        if (c->s.sk.eof || w->draining) {
            if (len == 0 || c->s.sk.eof)
                return MOAT_DONE;
        }
        if (!c->s.sk.readable) {
            const struct moat_config *cfg = ccfg(c);
            arm(c, len ? cfg->client_header_timeout_ms : cfg->client_idle_timeout_ms);
            return MOAT_AGAIN;
        }
        if (moat_side_read(&c->s) == MOAT_ERR)
            return MOAT_DONE;
    }
}

/* --- closing ------------------------------------------------------------------------------- */

/* The response is written and the connection ends: at once when nothing may still come from
 * the client (or the response was cut), else with a lingering close (nginx's
 * lingering_close): stop writing and read and drop what the client still sends for a moment,
 * so it reads our answer instead of a reset that unread bytes in our receive queue would
 * cause on close. */
static int do_closing(struct moat_h1conn *c)
{
    if (c->hard_close || c->quiet_close)
        return MOAT_DONE;
    int rc = flush_sock(c);
    if (rc != MOAT_OK)
        return rc == MOAT_AGAIN ? MOAT_AGAIN : MOAT_DONE;
    if (moat_sock_shutdown(&c->s.sk) == MOAT_AGAIN)
        return MOAT_AGAIN;
    c->state = H_LINGER;
    arm(c, 2000);
    return MOAT_OK;
}

static int do_linger(struct moat_h1conn *c)
{
    char sink[4096];
    for (int i = 0; i < 64; i++) {
        if (!c->s.sk.readable)
            return MOAT_AGAIN;
        ssize_t n = moat_sock_read(&c->s.sk, sink, sizeof sink);
        if (n == 0 || n == MOAT_ERR)
            return MOAT_DONE;
    }
    return MOAT_DONE; /* 256 KiB is enough patience */
}

static int do_handshake(struct moat_h1conn *c)
{
    int rc = moat_sock_handshake(&c->s.sk);
    if (rc == MOAT_AGAIN)
        return MOAT_AGAIN;
    if (rc != MOAT_OK)
        return MOAT_DONE;
    struct moat_str alpn = moat_tls_alpn(&c->s.sk);
    if (alpn.len == 2 && !memcmp(alpn.ptr, "h2", 2)) {
        moat_h2_takeover(c); /* HTTP/2 goes on with the socket */
        return MOAT_DONE;
    }
    c->state = H_HEAD;
    arm(c, ccfg(c)->client_header_timeout_ms);
    return MOAT_OK;
}

static void h1_drive(struct moat_h1conn *c)
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
        case H_HANDSHAKE:
            rc = do_handshake(c);
            break;
        case H_HEAD:
            rc = do_head(c);
            break;
        case H_REQ:
            moat_req_drive(c->req);
            rc = c->state == H_REQ ? MOAT_AGAIN : MOAT_OK;
            break;
        case H_CLOSING:
            rc = do_closing(c);
            break;
        case H_LINGER:
        default:
            rc = do_linger(c);
            break;
        }
        if (rc == MOAT_DONE || c->closed) {
            c->in_drive = false;
            conn_close(c);
            return;
        }
    } while (rc == MOAT_OK || c->drive_again);
    c->in_drive = false;
}

static void conn_io(struct moat_loop *loop, struct moat_io *io, uint32_t ev)
{
    struct moat_h1conn *c = MOAT_CONTAINER_OF(io, struct moat_h1conn, s.sk.io);
    (void)loop;
    moat_sock_events(&c->s.sk, ev);
    h1_drive(c);
}

static void conn_timeout(struct moat_loop *loop, struct moat_timer *t)
{
    struct moat_h1conn *c = MOAT_CONTAINER_OF(t, struct moat_h1conn, timer);
    (void)loop;
    if (c->state == H_HEAD && moat_buf_len(&c->s.in) > 0) {
        /* A partial head that never completed: 408, as nginx and HAProxy answer. */
        MOAT_STAT_INC(&c->w->stats, bad_timeout);
        struct moat_req *r = new_req(c);
        if (!r) {
            conn_close(c);
            return;
        }
        c->keepalive = false;
        r->close = true;
        r->body_done = true;
        r->xerr = MOAT_XERR_CLIENT_TIMEOUT;
        const struct moat_xerr_def *d = &moat_xerr_defs[MOAT_XERR_CLIENT_TIMEOUT];
        moat_local_response(r, d->status, d->answer);
        h1_drive(c);
        return;
    }
    if (c->state == H_HANDSHAKE && c->tls)
        moat_tls_count_timeout(&c->s.sk);
    conn_close(c);
}

/* --- life ---------------------------------------------------------------------------------- */

static void conn_free(struct moat_defer *d)
{
    struct moat_h1conn *c = MOAT_CONTAINER_OF(d, struct moat_h1conn, defer);
    moat_buf_put(&c->s.in);
    moat_buf_put(&c->out);
    free(c->hdrs);
    free(c);
}

static void conn_close(struct moat_h1conn *c)
{
    struct moat_worker *w = c->w;
    if (c->closed && c->s.sk.io.fd < 0)
        return;
    c->closed = true;
    if (c->in_drive)
        return; /* h1_drive closes it on its way out */
    if (c->req) {
        struct moat_req *r = c->req;
        c->req = NULL;
        moat_req_client_gone(r);
    }
    disarm(c);
    if (!c->handed_off)
        moat_sock_close(&c->s.sk);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->nconns--;
    MOAT_STAT_ADD(&w->stats, conn_active, (uint64_t)-1);
    if (c->sh_counted)
        moat_shield_conn_close(c->peer);
    moat_loop_defer(&w->loop, &c->defer);
}

void moat_h1_close_idle(struct moat_h1conn *c)
{
    if (c->state == H_HEAD && moat_buf_len(&c->s.in) == 0)
        conn_close(c);
}

void moat_h1_close_any(struct moat_h1conn *c)
{
    conn_close(c);
}

/* A worker at limits.connections would otherwise refuse every new client while a flood of
 * connections that never send a request holds all the places (they last client_header, 10 s,
 * and the attacker opens them again at once). Instead the connections that only wait for a
 * request head (silent since accept, idle between requests, a head or a TLS handshake still
 * coming) give their place up, the oldest first: a client being served keeps its place, and a
 * new one, whose request is already in when it is accepted (TCP_DEFER_ACCEPT), is served.
 * nginx drains its "reusable" connections the same way when worker_connections runs out. The
 * walk is over the worker's list (newest first, so it goes to the end and back); it runs once
 * per <n> places freed. */
unsigned moat_h1_reclaim(struct moat_worker *w, unsigned n)
{
    struct moat_h1conn *c = w->conns;
    if (!c)
        return 0;
    while (c->next)
        c = c->next;
    unsigned k = 0;
    while (c && k < n) {
        struct moat_h1conn *prev = c->prev;
        /* nothing of a response still to go out either (a slow reader keeps its place) */
        if ((c->state == H_HEAD || c->state == H_HANDSHAKE) && !c->req && !c->in_drive &&
            !c->closed && !moat_buf_len(&c->out) && !moat_sock_pending(&c->s.sk)) {
            conn_close(c);
            k++;
        }
        c = prev;
    }
    return k;
}

void moat_h1_accept(struct moat_worker *w, int fd, const struct sockaddr_storage *ss, bool tls,
                    bool h2c)
{
    /* shield connections.per_ip: refused before anything is allocated (two atomic adds) */
    bool counted = false;
    uint8_t ip[16] = {0};
    if (w->wcfg->cfg->shield.conn_per_ip) {
        if (ss->ss_family == AF_INET) {
            ip[10] = ip[11] = 0xff;
            memcpy(ip + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
        } else if (ss->ss_family == AF_INET6) {
            memcpy(ip, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
        }
        if (!moat_shield_conn_open(w->wcfg->cfg, ip)) {
            MOAT_STAT_INC(&w->stats, conn_rejected);
            close(fd);
            return;
        }
        counted = true;
    }
    struct moat_h1conn *c = calloc(1, sizeof *c);
    if (!c || moat_buf_get(&c->s.in, w->bufsize) != MOAT_OK) {
        free(c);
        close(fd);
        if (counted)
            moat_shield_conn_close(ip);
        return;
    }
    c->sh_counted = counted;
    /* TCP_NODELAY is inherited from the listener (Linux copies it to accepted sockets):
     * no setsockopt per connection. */
    moat_sock_init_tcp(&c->s.sk, fd, conn_io);
    c->defer.fn = conn_free;
    c->timer.cb = conn_timeout;
    c->w = w;
    c->state = H_HEAD;
    c->keepalive = true;
    c->h2c = h2c;
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
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    MOAT_STAT_INC(&w->stats, conn_total);
    MOAT_STAT_INC(&w->stats, conn_active);
    const struct moat_config *cfg = ccfg(c);
    if (tls) {
        c->tls = true;
        if (moat_tls_accept(cfg, &c->s.sk, &w->stats.tls) != MOAT_OK) {
            conn_close(c);
            return;
        }
        c->state = H_HANDSHAKE;
        arm(c, cfg->tls.handshake_timeout_ms ? cfg->tls.handshake_timeout_ms : 10000);
    } else {
        arm(c, cfg->client_header_timeout_ms);
    }
    /* Serve first, register later (HAProxy's speculative I/O): the request is usually here
     * already, and a Connection: close request answered at once (a cache hit, a local
     * answer) is done before epoll ever hears of the socket, which saves the epoll_ctl and
     * the epoll bookkeeping of its close. Registering afterwards loses nothing: an
     * edge-triggered ADD reports readiness the socket already has. */
    c->s.sk.readable = true;
    c->s.sk.writable = true;
    h1_drive(c);
    if (c->closed)
        return;
    if (moat_loop_add(&w->loop, &c->s.sk.io, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) != MOAT_OK)
        conn_close(c);
}
