/* headers.c: the heads moat sends: the request head to the origin and the response head to the
 * client, and the chunked trailer sections forwarded after them. Hop-by-hop fields are dropped
 * both ways (RFC 9110 7.6.1), the body framing is re-stated by moat itself (never copied from
 * the peer, so no framing header can smuggle), and the forwarding fields (X-Forwarded-For,
 * X-Forwarded-Proto, Forwarded: those of forward_headers; Via always) are set. */
#include <arpa/inet.h>

#include "cache/policy.h"
#include "proxy/proxy-t.h"

struct out {
    char *p;
    size_t n, cap;
    bool overflow;
};

static inline void put(struct out *o, const char *s, size_t n)
{
    if (n == 0)
        return;
    if (moat_unlikely(o->n + n > o->cap)) {
        o->overflow = true;
        return;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
}
#define PUTL(o, lit) put((o), (lit), sizeof(lit) - 1)
static inline void puts_(struct out *o, struct moat_str s)
{
    put(o, s.ptr, s.len);
}

static void put_u64(struct out *o, uint64_t v)
{
    char tmp[24];
    int i = (int)sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(o, tmp + i, sizeof tmp - (size_t)i);
}

/* Hop-by-hop and framing fields moat drops from the head it forwards with body flow <f>. The
 * switch on length keeps this to one or two comparisons for ordinary fields. Host is handled
 * by the caller. Trailer (the names the trailer section will carry, RFC 9110 6.6.2) is not
 * hop-by-hop: it goes along when the trailers can, i.e. a chunked body re-framed chunked, and
 * is dropped otherwise (to an HTTP/1.0 client, or a body that has no trailers to announce). */
static bool is_hop(struct moat_str n, const struct moat_flow *f)
{
    switch (n.len) {
    case 2:
        return MOAT_STR_IEQ_LIT(n, "te");
    case 7:
        if (MOAT_STR_IEQ_LIT(n, "trailer"))
            return !(f->mode == FLOW_CHUNKED && f->out_chunked);
        return MOAT_STR_IEQ_LIT(n, "upgrade");
    case 10:
        return MOAT_STR_IEQ_LIT(n, "connection") || MOAT_STR_IEQ_LIT(n, "keep-alive");
    case 14:
        return MOAT_STR_IEQ_LIT(n, "content-length");
    case 16:
        return MOAT_STR_IEQ_LIT(n, "proxy-connection");
    case 17:
        return MOAT_STR_IEQ_LIT(n, "transfer-encoding");
    default:
        return false;
    }
}

/* Fields named in Connection (other than close / keep-alive / upgrade) are hop-by-hop too. */
static bool named_in_connection(const struct moat_hdr *hdrs, size_t n, struct moat_str name)
{
    for (size_t i = 0; i < n; i++) {
        if (hdrs[i].name.len != 10 || !MOAT_STR_IEQ_LIT(hdrs[i].name, "connection"))
            continue;
        size_t pos = 0;
        struct moat_str tok;
        while (moat_h1_list_next(hdrs[i].value, &pos, &tok))
            if (moat_str_ieq(tok, name))
                return true;
    }
    return false;
}

/* Header lines kept unchanged are copied in runs: the parser's fields lie one after the
 * other in the input buffer, so consecutive kept lines are one contiguous span, copied with
 * one memcpy instead of four small copies per field. A run ends at a field moat drops or
 * rewrites. */
struct run {
    const char *start, *end;
};

/* End of the line holding <h> (just after its LF): validated by the parser, so only
 * optional whitespace, CR and LF follow the value. */
static inline const char *line_end(const struct moat_hdr *h)
{
    const char *p = h->value.len ? h->value.ptr + h->value.len : h->name.ptr + h->name.len + 1;
    while (*p != '\n')
        p++;
    return p + 1;
}

static inline void run_add(struct run *rn, struct out *o, const struct moat_hdr *h)
{
    const char *e = line_end(h);
    if (rn->start && rn->end == h->name.ptr) {
        rn->end = e;
        return;
    }
    if (rn->start)
        put(o, rn->start, (size_t)(rn->end - rn->start));
    rn->start = h->name.ptr;
    rn->end = e;
}

static inline void run_flush(struct run *rn, struct out *o)
{
    if (rn->start)
        put(o, rn->start, (size_t)(rn->end - rn->start));
    rn->start = rn->end = NULL;
}

static void put_flow_framing(struct out *o, const struct moat_flow *f)
{
    if (f->mode == FLOW_CL) {
        PUTL(o, "Content-Length: ");
        put_u64(o, f->remaining + f->bytes);
        PUTL(o, "\r\n");
    } else if (f->out_chunked) {
        PUTL(o, "Transfer-Encoding: chunked\r\n");
    }
}

int moat_fwd_request_head(struct moat_conn *c, struct moat_buf *b)
{
    struct moat_xchg *x = &c->x;
    const struct moat_h1_req *r = &x->req;
    const struct moat_config *cfg = x->wcfg->cfg;
    const struct moat_cfg_pool *pool = &cfg->pools[x->pool_idx];
    struct out o = {moat_buf_wptr(b), 0, moat_buf_room(b), false};
    bool trusted = cfg->ntrusted && moat_config_trusted(cfg, c->peer);
    bool conn_named = r->flags & MOAT_H1_F_CONN_OTHER; /* the parser saw the tokens */
    bool had_xff = false, had_fwd = false, had_xfp = false;
    unsigned fwd = cfg->fwd_fields; /* forward_headers */

    puts_(&o, r->method);
    PUTL(&o, " ");
    if (r->flags & MOAT_H1_F_ABSOLUTE) {
        puts_(&o, r->path);
        if (r->query.len) {
            PUTL(&o, "?");
            puts_(&o, r->query);
        }
    } else {
        puts_(&o, r->target);
    }
    PUTL(&o, " HTTP/1.1\r\nHost: ");
    /* An HTTP/1.0 request may come without Host: the origin still gets one (its own). */
    if ((pool->host_from_origin || r->host.len == 0) && x->origin && x->origin->authority)
        put(&o, x->origin->authority, strlen(x->origin->authority));
    else
        puts_(&o, r->host);
    PUTL(&o, "\r\n");

    struct run rn = {NULL, NULL};
    for (size_t i = 0; i < r->nhdrs; i++) {
        const struct moat_hdr *h = &r->hdrs[i];
        struct moat_str n = h->name;
        if (is_hop(n, &x->reqf))
            continue;
        switch (n.len) {
        case 4:
            if (MOAT_STR_IEQ_LIT(n, "host"))
                continue;
            break;
        case 6:
            if (MOAT_STR_IEQ_LIT(n, "expect"))
                continue; /* moat answers 100-continue itself */
            break;
        case 5:
        case 8:
        case 13:
        case 17:
        case 19:
            /* A request that fills the cache asks for the whole representation: the
             * client's own conditions and ranges are answered by the cache later, and a 304
             * or 206 here would leave nothing to store. */
            if (x->cwriter &&
                (MOAT_STR_IEQ_LIT(n, "range") || MOAT_STR_IEQ_LIT(n, "if-range") ||
                 MOAT_STR_IEQ_LIT(n, "if-match") || MOAT_STR_IEQ_LIT(n, "if-none-match") ||
                 MOAT_STR_IEQ_LIT(n, "if-modified-since") ||
                 MOAT_STR_IEQ_LIT(n, "if-unmodified-since")))
                continue;
            if (n.len == 17 && MOAT_STR_IEQ_LIT(n, "x-forwarded-proto")) {
                if (!trusted)
                    continue;
                had_xfp = true;
            }
            break;
        case 9:
            if (MOAT_STR_IEQ_LIT(n, "forwarded")) {
                if (!trusted)
                    continue;
                had_fwd = true;
                if (!(fwd & MOAT_FWD_FORWARDED))
                    break; /* passed on as it came */
                run_flush(&rn, &o);
                PUTL(&o, "Forwarded: ");
                puts_(&o, h->value);
                PUTL(&o, ", for=");
                goto forwarded_tail;
            }
            break;
        case 15:
            if (MOAT_STR_IEQ_LIT(n, "x-forwarded-for")) {
                if (!trusted)
                    continue;
                if (!(fwd & MOAT_FWD_XFF))
                    break;      /* passed on as it came */
                had_xff = true; /* folded into one field after the loop */
                continue;
            }
            if (x->cae_norm && MOAT_STR_IEQ_LIT(n, "accept-encoding"))
                continue; /* the canonical value follows the loop (cache.c) */
            break;
        case 3:
            if (MOAT_STR_IEQ_LIT(n, "via")) {
                run_add(&rn, &o, h);
                continue;
            }
            break;
        }
        if (conn_named && named_in_connection(r->hdrs, r->nhdrs, n))
            continue;
        run_add(&rn, &o, h);
        continue;
    forwarded_tail : {
        bool v6 = memchr(c->peer_text, ':', c->peer_len) != NULL;
        if (v6)
            PUTL(&o, "\"[");
        put(&o, c->peer_text, c->peer_len);
        if (v6)
            PUTL(&o, "]\"");
        PUTL(&o, ";proto=http\r\n");
    }
    }
    run_flush(&rn, &o);
    /* X-Forwarded-For: from a trusted peer, every incoming field folded into one list with
     * the peer last; from anyone else, just the peer. */
    if (fwd & MOAT_FWD_XFF) {
        PUTL(&o, "X-Forwarded-For: ");
        if (had_xff) {
            for (size_t i = 0; i < r->nhdrs; i++) {
                if (r->hdrs[i].name.len == 15 &&
                    MOAT_STR_IEQ_LIT(r->hdrs[i].name, "x-forwarded-for") && r->hdrs[i].value.len) {
                    puts_(&o, r->hdrs[i].value);
                    PUTL(&o, ", ");
                }
            }
        }
        put(&o, c->peer_text, c->peer_len);
        PUTL(&o, "\r\n");
    }
    if (x->cae_norm) {
        PUTL(&o, "Accept-Encoding: ");
        puts_(&o, moat_cache_ae_value(x->cae));
        PUTL(&o, "\r\n");
    }
    if (!had_xfp && (fwd & MOAT_FWD_XFP))
        PUTL(&o, "X-Forwarded-Proto: http\r\n");
    if (!had_fwd && (fwd & MOAT_FWD_FORWARDED)) {
        bool v6 = memchr(c->peer_text, ':', c->peer_len) != NULL;
        PUTL(&o, "Forwarded: for=");
        if (v6)
            PUTL(&o, "\"[");
        put(&o, c->peer_text, c->peer_len);
        if (v6)
            PUTL(&o, "]\"");
        PUTL(&o, ";proto=http;host=\"");
        puts_(&o, r->host);
        PUTL(&o, "\"\r\n");
    }
    PUTL(&o, "Via: 1.");
    put(&o, r->minor ? "1 " : "0 ", 2);
    put(&o, cfg->via_name ? cfg->via_name : "moat", strlen(cfg->via_name ? cfg->via_name : "moat"));
    PUTL(&o, "\r\n");
    if (x->upgrade) {
        const struct moat_hdr *up = moat_h1_find(r->hdrs, r->nhdrs, MOAT_STR("upgrade"));
        PUTL(&o, "Connection: upgrade\r\nUpgrade: ");
        if (up)
            puts_(&o, up->value);
        PUTL(&o, "\r\n");
    }
    if (x->cwriter && x->cstale) {
        /* Refetching a stale object: ask with its validators, so an unchanged resource
         * costs the origin a 304 (RFC 9111 4.3.1). */
        const struct moat_cache_head *h = moat_cache_obj_head(x->cstale);
        struct moat_str etag = h ? moat_cache_head_etag(h) : MOAT_STR_NULL;
        if (etag.len) {
            PUTL(&o, "If-None-Match: ");
            puts_(&o, etag);
            PUTL(&o, "\r\n");
        } else if (h && h->meta.last_modified >= 0) {
            char d[MOAT_HTTP_DATE_LEN + 1];
            size_t dn = moat_http_date_format(h->meta.last_modified, d);
            PUTL(&o, "If-Modified-Since: ");
            put(&o, d, dn);
            PUTL(&o, "\r\n");
        }
    }
    put_flow_framing(&o, &x->reqf);
    PUTL(&o, "\r\n");
    if (o.overflow)
        return MOAT_ERR;
    b->wpos += (uint32_t)o.n;
    return MOAT_OK;
}

int moat_fwd_response_head(struct moat_conn *c, const struct moat_h1_resp *r, struct moat_buf *b)
{
    struct moat_xchg *x = &c->x;
    const struct moat_config *cfg = x->wcfg->cfg;
    struct out o = {moat_buf_wptr(b), 0, moat_buf_room(b), false};
    bool conn_named = r->flags & MOAT_H1_F_CONN_OTHER;
    bool no_body = x->respf.mode == FLOW_NONE;
    bool is101 = r->status == 101;

    PUTL(&o, "HTTP/1.1 ");
    put_u64(&o, (uint64_t)r->status);
    PUTL(&o, " ");
    puts_(&o, r->reason.len ? r->reason : moat_http_reason(r->status));
    PUTL(&o, "\r\n");
    struct run rn = {NULL, NULL};
    for (size_t i = 0; i < r->nhdrs; i++) {
        const struct moat_hdr *h = &r->hdrs[i];
        if (is_hop(h->name, &x->respf)) {
            /* HEAD and 304 keep the Content-Length the origin stated: it describes the
             * representation, not this message's (absent) body. */
            if (no_body && !is101 && h->name.len == 14 &&
                MOAT_STR_IEQ_LIT(h->name, "content-length"))
                run_add(&rn, &o, h);
            continue;
        }
        if (conn_named && named_in_connection(r->hdrs, r->nhdrs, h->name))
            continue;
        if (x->cstatus && moat_pcache_strip(c, h->name))
            continue; /* targeted cache fields and cache tags are for moat, not clients */
        if (x->rule && x->rule->browser_ttl_ms && h->name.len == 13 &&
            MOAT_STR_IEQ_LIT(h->name, "cache-control"))
            continue; /* replaced below (the rule's browser_ttl) */
        run_add(&rn, &o, h);
    }
    run_flush(&rn, &o);
    if (x->rule && x->rule->browser_ttl_ms) {
        PUTL(&o, "Cache-Control: max-age=");
        put_u64(&o, x->rule->browser_ttl_ms / 1000);
        PUTL(&o, "\r\n");
    }
    if (x->cstatus) {
        PUTL(&o, "Cache-Status: moat; ");
        put(&o, x->cstatus, strlen(x->cstatus));
        PUTL(&o, "\r\n");
    }
    PUTL(&o, "Via: 1.");
    put(&o, r->minor ? "1 " : "0 ", 2);
    put(&o, cfg->via_name ? cfg->via_name : "moat", strlen(cfg->via_name ? cfg->via_name : "moat"));
    PUTL(&o, "\r\n");
    if (is101) {
        const struct moat_hdr *up = moat_h1_find(r->hdrs, r->nhdrs, MOAT_STR("upgrade"));
        PUTL(&o, "Connection: upgrade\r\nUpgrade: ");
        if (up)
            puts_(&o, up->value);
        PUTL(&o, "\r\n");
    } else {
        put_flow_framing(&o, &x->respf);
        if (!x->keepalive)
            PUTL(&o, "Connection: close\r\n");
        else if (x->req.minor == 0)
            PUTL(&o, "Connection: keep-alive\r\n");
    }
    PUTL(&o, "\r\n");
    if (o.overflow)
        return MOAT_ERR;
    b->wpos += (uint32_t)o.n;
    return MOAT_OK;
}

/* Fields a forwarded trailer section never carries, in either direction: framing and
 * connection fields (they would contradict the framing moat states, or act on the next hop),
 * and fields that only mean something before the content, so a recipient that merges
 * trailers into the header fields (many do) must not get them late (RFC 9110 6.5.1):
 * routing, request modifiers and conditionals, authentication, response controls and caching,
 * content format, cookies, and the forwarding fields moat sets itself. One list, here;
 * docs/architecture.md repeats it. */
static const struct moat_str trailer_deny[] = {
    /* framing and connection (RFC 9110 6.5.1, 7.6.1) */
    MOAT_STR("content-length"),
    MOAT_STR("transfer-encoding"),
    MOAT_STR("trailer"),
    MOAT_STR("te"),
    MOAT_STR("connection"),
    MOAT_STR("keep-alive"),
    MOAT_STR("proxy-connection"),
    MOAT_STR("upgrade"),
    /* routing and request modifiers */
    MOAT_STR("host"),
    MOAT_STR("expect"),
    MOAT_STR("max-forwards"),
    MOAT_STR("range"),
    MOAT_STR("if-range"),
    MOAT_STR("if-match"),
    MOAT_STR("if-none-match"),
    MOAT_STR("if-modified-since"),
    MOAT_STR("if-unmodified-since"),
    /* authentication and state */
    MOAT_STR("authorization"),
    MOAT_STR("proxy-authorization"),
    MOAT_STR("www-authenticate"),
    MOAT_STR("proxy-authenticate"),
    MOAT_STR("cookie"),
    MOAT_STR("set-cookie"),
    /* response controls, caching and content format */
    MOAT_STR("cache-control"),
    MOAT_STR("expires"),
    MOAT_STR("age"),
    MOAT_STR("vary"),
    MOAT_STR("pragma"),
    MOAT_STR("location"),
    MOAT_STR("content-type"),
    MOAT_STR("content-encoding"),
    MOAT_STR("content-range"),
    /* what moat states about the hop itself */
    MOAT_STR("via"),
    MOAT_STR("forwarded"),
    MOAT_STR("x-forwarded-for"),
    MOAT_STR("x-forwarded-proto"),
    MOAT_STR("cache-status"),
};

static bool trailer_ok(struct moat_str name)
{
    for (size_t i = 0; i < MOAT_ARRAY_LEN(trailer_deny); i++)
        if (moat_str_ieq(name, trailer_deny[i]))
            return false;
    return true;
}

size_t moat_fwd_trailers(struct moat_str section, char *dst, size_t room)
{
    /* A linear scan per line: trailer sections are rare and short, and the list is short
     * enough that a switch on length (is_hop's trick) would not pay for its lines. */
    const char *p = section.ptr, *end = section.ptr + section.len;
    size_t n = 0;
    while (p < end) {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        const char *lf = memchr(p, '\n', (size_t)(end - p));
        if (!colon || !lf || colon > lf)
            break; /* not what moat_h1_chunked_trailers hands out */
        size_t len = (size_t)(lf + 1 - p);
        if (trailer_ok(moat_str_make(p, (size_t)(colon - p))) && len <= room - n) {
            memcpy(dst + n, p, len);
            n += len;
        }
        p = lf + 1;
    }
    return n;
}
