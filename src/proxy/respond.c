/* respond.c: the response head decided once (what of the origin's or the cache's fields goes
 * to the client, what moat adds), the HTTP/1.1 encoder, and the answers moat makes itself.
 *
 * Proxied, cached, local and interim answers all go through moat_resp_keep (filter) and
 * moat_resp_extras (additions); an encoder per protocol adds only the framing. So Via, Date,
 * Age, Cache-Status, browser_ttl and Strict-Transport-Security are decided in one place. */
#include <time.h>

#include "proxy/pipeline.h"
#include "proxy/hwrite.h"
#include "proxy/req.h"

/* --- the fields ---------------------------------------------------------------------------- */

bool moat_resp_keep(const struct moat_req *r, const struct moat_resp *resp,
                    const struct moat_hdr *h, bool *had_date)
{
    struct moat_str n = h->name;
    if (moat_http_hop(n))
        return false;
    switch (n.len) {
    case 4:
        if (MOAT_STR_IEQ_LIT(n, "date"))
            *had_date = true;
        break;
    case 7:
        if (MOAT_STR_IEQ_LIT(n, "trailer"))
            return false; /* the encoder keeps it when trailers can follow */
        break;
    case 13:
        if (r->rule && r->rule->browser_ttl_ms && MOAT_STR_IEQ_LIT(n, "cache-control"))
            return false; /* replaced (the rule's browser_ttl) */
        break;
    case 14:
        if (MOAT_STR_IEQ_LIT(n, "content-length"))
            return false; /* framing is the encoder's */
        break;
    }
    if (resp->conn_named && moat_http_conn_names(resp->fields, resp->nfields, n))
        return false;
    if (r->c.status && moat_pcache_strip(r, n))
        return false; /* targeted cache fields and cache tags are for moat, not clients */
    return true;
}

/* The current time as an HTTP-date, formatted once a second per thread (nginx's cached
 * time): a response pays a compare, not a gmtime_r. */
static struct moat_str http_now(void)
{
    static __thread int64_t sec = -1;
    static __thread char buf[MOAT_HTTP_DATE_LEN + 1];
    int64_t now = moat_wall_s();
    if (now != sec) {
        moat_http_date_format(now, buf);
        sec = now;
    }
    return moat_str_make(buf, MOAT_HTTP_DATE_LEN);
}

/* Writes <v> in decimal at <p> (at most 20 bytes); returns how many. */
static size_t fmt_u64(char *p, uint64_t v)
{
    struct out o = {p, 0, 24, false};
    put_u64(&o, v);
    return o.n;
}

size_t moat_resp_extras(const struct moat_req *r, const struct moat_resp *resp, bool had_date,
                        struct moat_hdr *out, char *scratch)
{
    const struct moat_config *cfg = r->wcfg->cfg;
    size_t n = 0, k = 0;
#define SCRATCH_PUT(s, len)                                                                        \
    do {                                                                                           \
        memcpy(scratch + k, (s), (len));                                                           \
        k += (len);                                                                                \
    } while (0)
    if (resp->ctype.len)
        out[n++] = (struct moat_hdr){MOAT_STR("Content-Type"), resp->ctype};
    if (resp->content_range.len)
        out[n++] = (struct moat_hdr){MOAT_STR("Content-Range"), resp->content_range};
    if (resp->origin && r->rule && r->rule->browser_ttl_ms) {
        size_t s = k;
        SCRATCH_PUT("max-age=", 8);
        k += fmt_u64(scratch + k, r->rule->browser_ttl_ms / 1000);
        out[n++] = (struct moat_hdr){MOAT_STR("Cache-Control"), moat_str_make(scratch + s, k - s)};
    }
    if (resp->age >= 0) {
        size_t s = k;
        k += fmt_u64(scratch + k, (uint64_t)resp->age);
        out[n++] = (struct moat_hdr){MOAT_STR("Age"), moat_str_make(scratch + s, k - s)};
    }
    if (resp->cache_status) {
        size_t s = k, cl = strlen(resp->cache_status);
        SCRATCH_PUT("moat; ", 6);
        if (cl > 100)
            cl = 100;
        SCRATCH_PUT(resp->cache_status, cl);
        if (resp->cache_ttl >= 0) {
            SCRATCH_PUT("; ttl=", 6);
            k += fmt_u64(scratch + k, (uint64_t)resp->cache_ttl);
        }
        out[n++] = (struct moat_hdr){MOAT_STR("Cache-Status"), moat_str_make(scratch + s, k - s)};
    }
    if (resp->via_minor >= 0) {
        const char *name = cfg->via_name ? cfg->via_name : "moat";
        size_t s = k, nl = strlen(name);
        if (nl > 64)
            nl = 64;
        SCRATCH_PUT(resp->via_minor ? "1.1 " : "1.0 ", 4);
        SCRATCH_PUT(name, nl);
        out[n++] = (struct moat_hdr){MOAT_STR("Via"), moat_str_make(scratch + s, k - s)};
    }
    if (!had_date) /* RFC 9110 6.6.1: a recipient with a clock adds Date when there is none */
        out[n++] = (struct moat_hdr){MOAT_STR("Date"), http_now()};
    if (r->tls && r->site && r->site->hsts_ms && resp->status < 400) {
        /* RFC 6797 7.2: only over secure transport. Not on errors, which are not the site's
         * word (nginx's add_header sends it only on success and redirects by default). */
        size_t s = k;
        SCRATCH_PUT("max-age=", 8);
        k += fmt_u64(scratch + k, r->site->hsts_ms / 1000);
        if (r->site->hsts_subdomains)
            SCRATCH_PUT("; includeSubDomains", 19);
        if (r->site->hsts_preload)
            SCRATCH_PUT("; preload", 9);
        out[n++] = (struct moat_hdr){MOAT_STR("Strict-Transport-Security"),
                                     moat_str_make(scratch + s, k - s)};
    }
    if (r->lb.set_cookie && resp->origin && n < MOAT_RESP_EXTRAS)
        out[n++] = (struct moat_hdr){MOAT_STR("Set-Cookie"),
                                     moat_str_make(r->lb.cookie, r->lb.cookie_len)};
    if (r->lb.set_wr && resp->origin && n < MOAT_RESP_EXTRAS)
        out[n++] =
            (struct moat_hdr){MOAT_STR("Set-Cookie"), moat_str_make(r->lb.wr_cookie, r->lb.wr_len)};
#undef SCRATCH_PUT
    return n;
}

/* --- the HTTP/1.1 encoder ------------------------------------------------------------------ */

int moat_resp_h1(const struct moat_req *r, const struct moat_resp *resp, struct moat_str framing,
                 bool keepalive, bool conn_keepalive_field, struct moat_buf *b)
{
    struct out o = {moat_buf_wptr(b), 0, moat_buf_room(b), false};
    char line[32];
    size_t ln = 0;
    memcpy(line, "HTTP/1.1 ", 9);
    ln = 9 + fmt_u64(line + 9, (uint64_t)resp->status);
    line[ln++] = ' ';
    put(&o, line, ln);
    struct moat_str reason = resp->reason.len ? resp->reason : moat_http_reason(resp->status);
    put(&o, reason.ptr, reason.len);
    PUTL(&o, "\r\n");
    bool had_date = false;
    if (resp->origin) {
        struct run rn = {NULL, NULL};
        for (size_t i = 0; i < resp->nfields; i++) {
            const struct moat_hdr *h = &resp->fields[i];
            bool keep = moat_resp_keep(r, resp, h, &had_date);
            if (!keep && h->name.len == 7 && resp->trailers_ok &&
                MOAT_STR_IEQ_LIT(h->name, "trailer"))
                keep = true; /* announced trailers go along when they can */
            if (!keep)
                continue;
            run_add(&rn, &o, h, resp->fields_h1);
        }
        run_flush(&rn, &o);
    } else {
        for (size_t i = 0; i < resp->nfields; i++) {
            if (resp->fields[i].name.len == 4 && MOAT_STR_IEQ_LIT(resp->fields[i].name, "date"))
                had_date = true;
            put_field(&o, &resp->fields[i]);
        }
    }
    if (resp->block.len)
        put(&o, resp->block.ptr, resp->block.len);
    struct moat_hdr extra[MOAT_RESP_EXTRAS];
    char scratch[MOAT_RESP_SCRATCH];
    size_t ne = moat_resp_extras(r, resp, had_date || resp->block.len, extra, scratch);
    for (size_t i = 0; i < ne; i++)
        put_field(&o, &extra[i]);
    put(&o, framing.ptr, framing.len);
    if (resp->upgrade) {
        const struct moat_hdr *up = moat_h1_find(resp->fields, resp->nfields, MOAT_STR("upgrade"));
        PUTL(&o, "Connection: upgrade\r\nUpgrade: ");
        if (up)
            put(&o, up->value.ptr, up->value.len);
        PUTL(&o, "\r\n");
    } else if (!keepalive) {
        PUTL(&o, "Connection: close\r\n");
    } else if (conn_keepalive_field) {
        PUTL(&o, "Connection: keep-alive\r\n");
    }
    PUTL(&o, "\r\n");
    if (o.overflow)
        return MOAT_ERR;
    b->wpos += (uint32_t)o.n;
    return MOAT_OK;
}

/* --- moat's own answers -------------------------------------------------------------------- */

void moat_req_respond(struct moat_req *r, int status, const char *ctype,
                      const struct moat_hdr *extra, size_t nextra, struct moat_str body)
{
    if (r->u) /* a local answer ends any exchange in progress (it never reached the client) */
        moat_xchg_release(r);
    moat_pcache_end(r, false);
    if (r->body_len && !r->body_done)
        r->close = true; /* the body is not read: the connection's framing is lost */
    r->status = status;
    r->state = R_LOCAL;
    moat_buf_put(&r->lbody);
    r->lbody_sent = 0;
    if (body.len && !r->is_head) {
        if (moat_buf_get(&r->lbody, (uint32_t)MOAT_MAX(body.len, (size_t)4096)) == MOAT_OK)
            moat_buf_append(&r->lbody, body.ptr, (uint32_t)body.len);
        else
            body.len = 0; /* out of memory: the status and fields go, without the body */
    }
    struct moat_resp resp = {
        .status = status,
        .fields = extra,
        .nfields = nextra,
        .length = body.len,
        .no_body = r->is_head,
        .keep_cl = r->is_head,
        .via_minor = -1,
        .age = -1,
        .cache_ttl = -1,
        .ctype =
            ctype ? moat_str_make(ctype, strlen(ctype)) : MOAT_STR("text/plain; charset=utf-8"),
    };
    char range[80];
    if (status == 416 && r->c.range_hdr[0]) { /* RFC 9110 15.5.17 */
        snprintf(range, sizeof range, "%s", r->c.range_hdr);
        resp.content_range = moat_str_make(range, strlen(range));
    }
    if (r->ds->send_head(r, &resp) != MOAT_OK) {
        r->close = true;
        r->ds->abort(r);
        return;
    }
    r->head_sent = true;
}

void moat_local_response(struct moat_req *r, int status, const char *body)
{
    moat_req_respond(r, status, NULL, NULL, 0, moat_str_make(body, strlen(body)));
}
