/* headers.c: the request head moat sends to the origin, and the chunked trailer sections
 * forwarded both ways. Hop-by-hop fields are dropped (RFC 9110 7.6.1; moat_http_hop is the
 * one list), the body framing is re-stated by moat itself (never copied from the peer, so no
 * framing header can smuggle), and the forwarding fields (X-Forwarded-For,
 * X-Forwarded-Proto, Forwarded: those of forward_headers; Via always) are set, with the
 * scheme the client used. The response head is respond.c's. */
#include <arpa/inet.h>

#include "cache/policy.h"
#include "proxy/hwrite.h"
#include "proxy/req.h"

static void put_peer(struct out *o, const struct moat_req *r)
{
    bool v6 = memchr(r->peer_text, ':', r->peer_len) != NULL;
    if (v6)
        PUTL(o, "\"[");
    put(o, r->peer_text, r->peer_len);
    if (v6)
        PUTL(o, "]\"");
}

int moat_fwd_request_head(struct moat_req *r, struct moat_buf *b)
{
    const struct moat_config *cfg = r->wcfg->cfg;
    const struct moat_cfg_pool *pool = &cfg->pools[r->pool_idx];
    struct out o = {moat_buf_wptr(b), 0, moat_buf_room(b), false};
    bool trusted = cfg->ntrusted && moat_config_trusted(cfg, r->peer);
    bool conn_named = r->flags & MOAT_H1_F_CONN_OTHER; /* the parser saw the tokens */
    bool had_xff = false, had_fwd = false, had_xfp = false;
    unsigned fwd = cfg->fwd_fields;                 /* forward_headers */
    bool chunked = r->body_len == MOAT_LEN_UNKNOWN; /* re-chunked: trailers can follow */
    bool h1 = r->hdrs_h1;

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
    if ((pool->host_from_origin || r->authority.len == 0) && r->origin && r->origin->authority)
        put(&o, r->origin->authority, strlen(r->origin->authority));
    else
        puts_(&o, r->authority);
    PUTL(&o, "\r\n");

    struct run rn = {NULL, NULL};
    for (size_t i = 0; i < r->nhdrs; i++) {
        const struct moat_hdr *h = &r->hdrs[i];
        struct moat_str n = h->name;
        if (moat_http_hop(n))
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
        case 7:
            /* Trailer (the names the trailer section will carry, RFC 9110 6.6.2) is not
             * hop-by-hop: it goes along when the trailers can (a chunked body, re-chunked). */
            if (!chunked && MOAT_STR_IEQ_LIT(n, "trailer"))
                continue;
            break;
        case 14:
            if (MOAT_STR_IEQ_LIT(n, "content-length"))
                continue; /* framing is moat's own */
            break;
        case 5:
        case 8:
        case 13:
        case 17:
        case 19:
            /* A request that fills the cache asks for the whole representation: the
             * client's own conditions and ranges are answered by the cache later, and a 304
             * or 206 here would leave nothing to store. */
            if (r->c.writer &&
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
                put_peer(&o, r);
                PUTL(&o, ";proto=");
                puts_(&o, r->scheme);
                PUTL(&o, "\r\n");
                continue;
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
            if (r->c.ae_norm && MOAT_STR_IEQ_LIT(n, "accept-encoding"))
                continue; /* the canonical value follows the loop (cache.c) */
            break;
        }
        if (conn_named && moat_http_conn_names(r->hdrs, r->nhdrs, n))
            continue;
        run_add(&rn, &o, h, h1);
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
        put(&o, r->peer_text, r->peer_len);
        PUTL(&o, "\r\n");
    }
    if (r->c.ae_norm) {
        PUTL(&o, "Accept-Encoding: ");
        puts_(&o, moat_cache_ae_value(r->c.ae));
        PUTL(&o, "\r\n");
    }
    if (!had_xfp && (fwd & MOAT_FWD_XFP)) {
        PUTL(&o, "X-Forwarded-Proto: ");
        puts_(&o, r->scheme);
        PUTL(&o, "\r\n");
    }
    if (!had_fwd && (fwd & MOAT_FWD_FORWARDED)) {
        PUTL(&o, "Forwarded: for=");
        put_peer(&o, r);
        PUTL(&o, ";proto=");
        puts_(&o, r->scheme);
        PUTL(&o, ";host=\"");
        puts_(&o, r->authority);
        PUTL(&o, "\"\r\n");
    }
    PUTL(&o, "Via: 1.");
    put(&o, r->minor ? "1 " : "0 ", 2);
    put(&o, cfg->via_name ? cfg->via_name : "moat", strlen(cfg->via_name ? cfg->via_name : "moat"));
    PUTL(&o, "\r\n");
    if (r->upgrade) {
        /* Only the tokens the site allows (pipeline.c, pick_upgrade) go on. */
        PUTL(&o, "Connection: upgrade\r\nUpgrade: ");
        for (size_t i = 0; i < r->nup; i++) {
            if (i)
                PUTL(&o, ", ");
            puts_(&o, r->up[i]);
        }
        PUTL(&o, "\r\n");
    }
    if (r->c.writer && r->c.stale) {
        /* Refetching a stale object: ask with its validators, so an unchanged resource
         * costs the origin a 304 (RFC 9111 4.3.1). */
        const struct moat_cache_head *h = moat_cache_obj_head(r->c.stale);
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
    if (r->body_len == MOAT_LEN_UNKNOWN) {
        PUTL(&o, "Transfer-Encoding: chunked\r\n");
    } else if (r->body_len) {
        PUTL(&o, "Content-Length: ");
        put_u64(&o, r->body_len);
        PUTL(&o, "\r\n");
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
