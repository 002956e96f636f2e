/* flow.c: body framing in (decode, zero-copy) and out (chunked), and reading a side. */
#include "proxy/flow.h"

int moat_buf_ensure(struct moat_buf *b, uint32_t size)
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

ssize_t moat_side_read(struct moat_side *s)
{
    uint32_t room = moat_buf_room(&s->in);
    if (room == 0) {
        moat_buf_compact(&s->in);
        room = moat_buf_room(&s->in);
        if (room == 0)
            return MOAT_AGAIN; /* full: the consumer must drain first */
    }
    ssize_t n = moat_sock_read(&s->sk, moat_buf_wptr(&s->in), room);
    if (n > 0)
        s->in.wpos += (uint32_t)n;
    return n;
}

int moat_flow_next(struct moat_flow *f, struct moat_buf *in, bool eof, struct moat_str *out)
{
    *out = MOAT_STR_NULL;
    for (;;) {
        if (f->done && !f->trailers) {
            if (f->tused) /* asked again: the section still waits in the input */
                *out = moat_str_make(moat_buf_rptr(in), f->tused - 2);
            return FLOW_END;
        }
        uint32_t avail = moat_buf_len(in);
        switch (f->mode) {
        case FLOW_NONE:
            f->done = true;
            return FLOW_END;
        case FLOW_EOF:
            if (!avail) {
                if (!eof)
                    return FLOW_MORE;
                f->done = true;
                return FLOW_END;
            }
            f->span = avail;
            break;
        case FLOW_CL:
            if (!avail)
                return eof ? FLOW_ERR_TRUNC : FLOW_MORE;
            f->span = (uint32_t)MOAT_MIN((uint64_t)avail, f->remaining);
            f->remaining -= f->span;
            if (f->remaining == 0)
                f->done = true;
            break;
        case FLOW_CHUNKED: {
            size_t used = 0;
            struct moat_str data = MOAT_STR_NULL;
            enum moat_h1_err err = MOAT_H1_OK;
            const char *base = moat_buf_rptr(in);
            if (f->trailers) {
                /* The section waits in the input until it is whole, so the filter sees whole
                 * lines; it is looked at again only when bytes beyond those the decoder
                 * validated arrived (a section dribbled a byte at a time costs linear time).
                 * It goes out without counting as payload (f->bytes, the body limit) and
                 * never into the cache, whose objects have no trailers. */
                if (avail <= f->dec.trailer_bytes)
                    return eof ? FLOW_ERR_TRUNC : FLOW_MORE;
                int rc = moat_h1_chunked_trailers(&f->dec, base, avail, &used, &data, &err);
                if (rc == MOAT_ERR)
                    return FLOW_ERR_FRAMING;
                if (rc == MOAT_AGAIN) {
                    /* A full buffer would never grow: only if it is smaller than the limit,
                     * which a reload that raised limits.header_bytes can do to a
                     * connection's older buffer. */
                    if (avail >= in->cap)
                        return FLOW_ERR_FRAMING;
                    return eof ? FLOW_ERR_TRUNC : FLOW_MORE;
                }
                f->trailers = false;
                f->done = true;
                f->tused = (uint32_t)used;
                *out = data;
                return FLOW_END;
            }
            if (!avail)
                return eof ? FLOW_ERR_TRUNC : FLOW_MORE;
            int rc = moat_h1_chunked_decode(&f->dec, base, avail, &used, &data, &err);
            if (rc == MOAT_ERR)
                return FLOW_ERR_FRAMING;
            if (data.len) {
                uint32_t pre = (uint32_t)(data.ptr - base);
                moat_buf_consume(in, pre);
                f->span = (uint32_t)data.len;
                f->skip_after = (uint32_t)(used - pre - data.len);
            } else {
                moat_buf_consume(in, (uint32_t)used);
            }
            if (rc == MOAT_H1_TRAILERS)
                f->trailers = true; /* keep_trailers: the section is taken above */
            if (rc == MOAT_DONE || rc == MOAT_H1_TRAILERS)
                f->done = true;
            if (!data.len) {
                if (rc == MOAT_AGAIN)
                    return eof ? FLOW_ERR_TRUNC : FLOW_MORE;
                continue;
            }
            break;
        }
        }
        f->bytes += f->span;
        if (f->limit && f->bytes > f->limit)
            return FLOW_ERR_LIMIT;
        *out = moat_str_make(moat_buf_rptr(in), f->span);
        return FLOW_DATA;
    }
}

void moat_flow_consume(struct moat_flow *f, struct moat_buf *in, uint32_t n)
{
    moat_buf_consume(in, n);
    f->span -= n;
    if (f->span == 0 && f->skip_after) {
        moat_buf_consume(in, f->skip_after);
        f->skip_after = 0;
    }
}

void moat_flow_end(struct moat_flow *f, struct moat_buf *in)
{
    if (f->tused) {
        moat_buf_consume(in, f->tused);
        f->tused = 0;
    }
}

void moat_chunk_frame(struct moat_chunk_out *o, struct moat_buf *out, uint64_t n)
{
    char tmp[32];
    size_t k = 0;
    if (o->pending_crlf) {
        tmp[k++] = '\r';
        tmp[k++] = '\n';
    }
    if (n == 0) {
        memcpy(tmp + k, "0\r\n\r\n", 5);
        k += 5;
        o->fin_queued = true;
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
    o->pending_crlf = n != 0;
    moat_buf_compact(out);
    moat_buf_append(out, tmp, (uint32_t)k); /* out always has room: framing < 32 bytes and
                                              out is drained before framing is added */
}

void moat_chunk_trailers(struct moat_chunk_out *o, struct moat_buf *out, struct moat_str section)
{
    moat_buf_compact(out);
    char *p = moat_buf_wptr(out);
    size_t k = 0;
    if (o->pending_crlf) {
        memcpy(p, "\r\n", 2);
        k = 2;
    }
    memcpy(p + k, "0\r\n", 3);
    k += 3;
    k += moat_fwd_trailers(section, p + k, moat_buf_room(out) - k - 2);
    memcpy(p + k, "\r\n", 2);
    k += 2;
    out->wpos += (uint32_t)k;
    o->pending_crlf = false;
    o->fin_queued = true;
}
