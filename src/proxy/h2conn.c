/* h2conn.c: the HTTP/2 server side, the second implementation of the downstream interface
 * (struct moat_ds, req.h) after HTTP/1's (h1conn.c). libnghttp2 does the framing, HPACK, flow
 * control and RFC 9113's message checks; this file gives it bytes from the connection's
 * moat_sock, makes one struct moat_req per stream and answers through it.
 *
 * A connection starts as an HTTP/1 one (h1conn.c accepts every socket): after a TLS handshake
 * that chose ALPN "h2", or on an h2c listener when the input starts with the client preface,
 * moat_h2_takeover moves the socket here (the TLS session follows it: moat_tls_moved).
 *
 * Each stream's request runs the same phases, cache, access log and counters as HTTP/1's. Its
 * response body goes through a per-stream buffer (http2.stream_buffer; http2.connection_buffer
 * over all streams) that a data provider empties as the client's windows allow: send_data
 * takes no more than fits and the stream drives its request again when room comes back
 * (NGHTTP2_ERR_DEFERRED / nghttp2_session_resume_data while it is empty). Its request body is
 * read into a ring of the stream window's size; automatic WINDOW_UPDATE is off, so the window
 * opens by what the origin took (nghttp2_session_consume), never by what arrived.
 *
 * nghttp2's callbacks only record: streams that have something to do go on a to-do list that
 * h2_run works through after nghttp2 returns, so no request runs inside the library. Output
 * leaves at the end of the loop's batch (a deferred run), so the frames of many streams go out
 * in one write. Floods are counted per connection (http2.flood_window): resets by the client,
 * control frames, empty DATA frames; nghttp2's own options bound CONTINUATION runs, SETTINGS
 * entries and unsent acknowledgements. Each answer is a GOAWAY counted by reason. */
#include <arpa/inet.h>
#include <nghttp2/nghttp2.h>
#include <stdlib.h>

#include "cache/store.h"
#include "core/mcache.h"
#include "proxy/pipeline.h"
#include "proxy/req.h"
#include "proxy/server.h"
#include "shield/shield.h"
#include "tls/tls.h"

struct moat_h2stream;

/* Why moat sent GOAWAY (0: nghttp2 did, reason from the error code). */
enum ga_reason {
    GA_NONE = 0,
    GA_DRAIN,
    GA_IDLE,
    GA_HEADER,
    GA_STALL,
    GA_RESET,
    GA_CONTROL,
    GA_EMPTY
};

/* What the connection timer waits for. */
enum tmode { T_NONE = 0, T_IDLE, T_HEADER, T_STALL, T_LINGER };

struct hent {
    uint32_t no, nl, vo, vl; /* offsets and lengths in the connection's header scratch */
};

struct moat_h2conn {
    struct moat_sock sk;
    struct moat_defer defer; /* frees the connection after the batch */
    struct moat_defer kick;  /* a run at the end of the batch (output to write) */
    struct moat_timer timer;
    struct moat_worker *w;
    struct moat_h2conn *prev, *next; /* worker's list */
    nghttp2_session *ses;
    struct moat_cfg_h2 lim;     /* the limits it started with */
    uint64_t header_timeout_ms; /* timeouts.client_header: a header block must end in it */
    char *ob;                   /* frames not yet taken by the socket */
    size_t opos, olen, ocap;
    struct moat_h2stream *streams; /* all streams we hold */
    struct moat_h2stream *todo, *todo_tail;
    unsigned nopen;        /* streams open (nghttp2's view) */
    uint64_t out_buffered; /* response bytes held by its streams */
    /* the header block being decoded (one at a time: CONTINUATION cannot interleave) */
    char *hs;
    size_t hs_len, hs_cap, hs_list; /* hs_list: RFC 9113 size (name + value + 32 each) */
    struct hent *he;
    size_t nhe, he_cap;
    struct hent ps_method, ps_path, ps_authority, ps_host, ps_cl;
    bool hs_over, has_method, has_path, has_authority, has_host, has_cl;
    /* flood budgets, per window */
    uint64_t win_start;
    unsigned n_resets, n_control, n_empty, n_credit;
    enum ga_reason ga;
    /* A GOAWAY decided (ours or nghttp2's flood/protocol answer) whose frame has not gone
     * out: a client that reads nothing may never take it, and it is still counted, with
     * its own reason, when the connection ends (count_goaway clears it). */
    bool ga_owed;
    uint32_t ga_code;
    enum tmode tmode;
    bool in_run, run_again, kick_queued, closed, fatal, conn_blocked, drain_sent, progress;
    bool hdr_open;  /* a header block has begun and not ended (CONTINUATION may follow) */
    bool lingering; /* GOAWAY went: write side shut, reading and dropping until EOF or 2 s */
    bool shut_sent; /* lingering: the write side is shut (TLS: close_notify out) */
    bool tls;
    bool sh_counted; /* counted by the shield's connections.per_ip (taken over from HTTP/1) */
    uint8_t peer[16];
    char peer_text[48];
    uint8_t peer_len;
};

struct moat_h2stream {
    struct moat_h2conn *c;
    int32_t id;
    struct moat_req *r; /* NULL once the request is over (or before it is made) */
    struct moat_h2stream *prev, *next, *tnext;
    /* response body waiting for the client's window: copied bytes (ob), or a span of a
     * cached object (sp, slen) on which the stream holds a reference (sobj) */
    char *ob;
    uint32_t opos, olen, ocap;
    struct moat_cache_obj *sobj;
    const char *sp;
    uint32_t slen;
    char *trailers; /* a trailer section to end with (filtered lines), or NULL */
    uint32_t tlen;
    char *rtr; /* the request's trailer section ("name: value CRLF" lines), or NULL */
    uint32_t rtlen, rtcap;
    /* request body: a ring of the stream window's size */
    char *ib;
    uint32_t ihead, ilen, icap;
    uint64_t in_total;
    bool in_todo, start, closed, reset, in_end, deferred, blocked, fin, no_body, head_done,
        trailer_block, hdr_ok;
};

/* --- small things -------------------------------------------------------------------------- */

static void h2_run(struct moat_h2conn *c);

static void todo_add(struct moat_h2stream *s)
{
    struct moat_h2conn *c = s->c;
    if (s->in_todo)
        return;
    s->in_todo = true;
    s->tnext = NULL;
    if (c->todo_tail)
        c->todo_tail->tnext = s;
    else
        c->todo = s;
    c->todo_tail = s;
}

static void conn_free(struct moat_defer *d);

static void kick_fn(struct moat_defer *d)
{
    struct moat_h2conn *c = MOAT_CONTAINER_OF(d, struct moat_h2conn, kick);
    c->kick_queued = false;
    if (c->closed)
        conn_free(&c->defer); /* h2_close left the freeing to this queued run */
    else
        h2_run(c);
}

/* Output is waiting: run the connection at the end of the batch (or again, when running). */
static void kick(struct moat_h2conn *c)
{
    if (c->in_run) {
        c->run_again = true;
        return;
    }
    if (c->kick_queued || c->closed)
        return;
    c->kick_queued = true;
    moat_loop_defer(&c->w->loop, &c->kick);
}

/* The flood window: counters start again when it has passed. */
static void window_roll(struct moat_h2conn *c)
{
    uint64_t now = c->w->loop.now_ms;
    if (now - c->win_start >= c->lim.flood_window_ms) {
        c->win_start = now;
        c->n_resets = c->n_control = c->n_empty = c->n_credit = 0;
    }
}

static void go_away(struct moat_h2conn *c, enum ga_reason why, uint32_t code)
{
    if (c->ga && why != GA_DRAIN)
        return;
    c->ga = why;
    c->ga_owed = true, c->ga_code = code;
    nghttp2_session_terminate_session(c->ses, code);
}

static void count_goaway(struct moat_h2conn *c, uint32_t code)
{
    struct moat_stats *st = &c->w->stats;
    c->ga_owed = false;
    switch (c->ga) {
    case GA_DRAIN:
        MOAT_STAT_INC(st, h2_ga_drain);
        return;
    case GA_IDLE:
        MOAT_STAT_INC(st, h2_ga_idle);
        return;
    case GA_HEADER:
        MOAT_STAT_INC(st, h2_ga_header);
        return;
    case GA_STALL:
        MOAT_STAT_INC(st, h2_ga_stall);
        return;
    case GA_RESET:
        MOAT_STAT_INC(st, h2_ga_rapid_reset);
        return;
    case GA_CONTROL:
        MOAT_STAT_INC(st, h2_ga_control);
        return;
    case GA_EMPTY:
        MOAT_STAT_INC(st, h2_ga_empty);
        return;
    case GA_NONE:
        break;
    }
    if (code == NGHTTP2_PROTOCOL_ERROR || code == NGHTTP2_COMPRESSION_ERROR ||
        code == NGHTTP2_FRAME_SIZE_ERROR || code == NGHTTP2_FLOW_CONTROL_ERROR)
        MOAT_STAT_INC(st, h2_ga_protocol);
    else if (code == NGHTTP2_ENHANCE_YOUR_CALM)
        MOAT_STAT_INC(st, h2_ga_calm);
    else
        MOAT_STAT_INC(st, h2_ga_other);
}

static void count_rst(struct moat_h2conn *c, uint32_t code)
{
    struct moat_stats *st = &c->w->stats;
    switch (code) {
    case NGHTTP2_PROTOCOL_ERROR:
        MOAT_STAT_INC(st, h2_rst_protocol);
        break;
    case NGHTTP2_REFUSED_STREAM:
        MOAT_STAT_INC(st, h2_rst_refused);
        break;
    case NGHTTP2_CANCEL:
        MOAT_STAT_INC(st, h2_rst_cancel);
        break;
    case NGHTTP2_INTERNAL_ERROR:
        MOAT_STAT_INC(st, h2_rst_internal);
        break;
    case NGHTTP2_FLOW_CONTROL_ERROR:
        MOAT_STAT_INC(st, h2_rst_flow);
        break;
    case NGHTTP2_NO_ERROR:
        MOAT_STAT_INC(st, h2_rst_no_error);
        break;
    default:
        MOAT_STAT_INC(st, h2_rst_other);
        break;
    }
}

static void rst(struct moat_h2stream *s, uint32_t code)
{
    if (s->closed || s->reset)
        return;
    s->reset = true;
    nghttp2_submit_rst_stream(s->c->ses, NGHTTP2_FLAG_NONE, s->id, code);
    kick(s->c);
}

/* --- streams ------------------------------------------------------------------------------- */

static struct moat_h2stream *stream_new(struct moat_h2conn *c, int32_t id)
{
    struct moat_h2stream *s = moat_mc_calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->c = c;
    s->id = id;
    s->next = c->streams;
    if (c->streams)
        c->streams->prev = s;
    c->streams = s;
    c->nopen++;
    MOAT_STAT_INC(&c->w->stats, h2_streams_active);
    return s;
}

static void stream_free(struct moat_h2stream *s)
{
    struct moat_h2conn *c = s->c;
    if (s->prev)
        s->prev->next = s->next;
    else
        c->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    c->out_buffered -= s->olen;
    MOAT_STAT_ADD(&c->w->stats, h2_buffered, (uint64_t) - (int64_t)s->olen);
    moat_cache_obj_release(&s->sobj);
    moat_mc_free(s->ob);
    free(s->ib);
    free(s->trailers);
    free(s->rtr);
    moat_mc_free(s);
}

/* Lets the request go (it ended, or the stream did): input it never read is given back to
 * the connection's window. */
static void stream_drop_input(struct moat_h2stream *s)
{
    if (s->ilen && !s->closed)
        nghttp2_session_consume(s->c->ses, s->id, s->ilen);
    else if (s->ilen)
        nghttp2_session_consume_connection(s->c->ses, s->ilen);
    s->ilen = 0;
}

/* --- the downstream ops -------------------------------------------------------------------- */

/* A response head's fields for nghttp2. Most heads fit the inline arrays; a larger one gets
 * heap arrays (nv_heap / lc_heap, freed by nvb_free): a cache hit used to pay two mallocs and
 * two frees per response here. */
#define NVB_INLINE    96
#define NVB_LC_INLINE 1536
struct nvb {
    nghttp2_nv *nv;
    size_t n, cap;
    char *lc; /* lowercased names */
    size_t lcn, lccap;
    nghttp2_nv *nv_heap;
    char *lc_heap;
    nghttp2_nv nv_in[NVB_INLINE];
    char lc_in[NVB_LC_INLINE];
};

/* Only the bookkeeping: the inline arrays are written as they are used. */
static void nvb_init(struct nvb *b)
{
    b->nv = b->nv_heap = NULL;
    b->lc = b->lc_heap = NULL;
    b->n = b->cap = b->lcn = b->lccap = 0;
}

/* <v> in decimal at the end of <buf> (24 bytes); returns where the digits start. */
static char *dec_u64(char buf[24], uint64_t v)
{
    char *p = buf + 24;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return p;
}

/* The bytes of <x> that are 'A'..'Z', as 0x80 in each such byte (SWAR: field names are
 * ASCII tokens; a byte >= 0x80 is never counted). */
static inline uint64_t upper_mask(uint64_t x)
{
    const uint64_t lo7 = 0x7f7f7f7f7f7f7f7full, high = 0x8080808080808080ull;
    uint64_t h = x & lo7;
    uint64_t ge_a = h + 0x3f3f3f3f3f3f3f3full; /* high bit set where byte >= 'A' */
    uint64_t gt_z = h + 0x2525252525252525ull; /* high bit set where byte > 'Z' */
    return ge_a & ~gt_z & ~x & high;
}

/* Copies <n> bytes of <src> lowercased to <dst>, 8 at a time; true when none was upper. */
static bool lower_copy(char *dst, const char *src, size_t n)
{
    uint64_t any = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, src + i, 8);
        uint64_t m = upper_mask(x);
        any |= m;
        x |= m >> 2;
        memcpy(dst + i, &x, 8);
    }
    if (i < n) {
        uint64_t x = 0;
        memcpy(&x, src + i, n - i);
        uint64_t m = upper_mask(x);
        any |= m;
        x |= m >> 2;
        memcpy(dst + i, &x, n - i);
    }
    return !any;
}

static void nvb_add(struct nvb *b, struct moat_str name, struct moat_str value)
{
    if (b->n >= b->cap || b->lcn + name.len > b->lccap)
        return;
    char *p = b->lc + b->lcn;
    bool lower = lower_copy(p, name.ptr, name.len);
    const char *np = name.ptr;
    if (!lower) {
        np = p;
        b->lcn += name.len;
    }
    b->nv[b->n++] = (nghttp2_nv){(uint8_t *)np, (uint8_t *)value.ptr, name.len, value.len,
                                 NGHTTP2_NV_FLAG_NONE};
}

/* Splits a section of "name: value CRLF" lines into fields and adds the ones <keep> accepts. */
static void nvb_lines(struct nvb *b, struct moat_str sec, bool framing_too)
{
    const char *p = sec.ptr, *end = sec.ptr + sec.len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *le = eol ? eol : end;
        const char *colon = memchr(p, ':', (size_t)(le - p));
        if (colon && colon > p) {
            struct moat_str n = moat_str_make(p, (size_t)(colon - p));
            const char *v = colon + 1, *ve = le;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            bool skip = moat_http_hop(n) ||
                        (!framing_too && n.len == 14 && MOAT_STR_IEQ_LIT(n, "content-length"));
            if (!skip)
                nvb_add(b, n, moat_str_make(v, (size_t)(ve - v)));
        }
        p = eol ? eol + 1 : end;
    }
}

/* Builds the fields of <resp> for HTTP/2 into <b>: :status, what moat_resp_keep keeps, the
 * stored block, moat's own fields, content-length. MOAT_OK or MOAT_ERR (out of memory). */
static int build_head(const struct moat_req *r, const struct moat_resp *resp, struct nvb *b,
                      char *status, char *clen)
{
    /* A line is at least "a:\n" (3 bytes): a bound that fits the inline array saves counting
     * them (an undercount would drop fields). */
    size_t lines = resp->block.len / 3 + 1;
    if (resp->nfields + lines + MOAT_RESP_EXTRAS + 4 > NVB_INLINE) {
        lines = 0;
        for (const char *q = resp->block.ptr, *e = q + resp->block.len;
             q < e && (q = memchr(q, '\n', (size_t)(e - q))); q++)
            lines++;
        lines++; /* a last line without its LF */
    }
    size_t names = resp->block.len + 64 * MOAT_RESP_EXTRAS;
    for (size_t i = 0; i < resp->nfields; i++)
        names += resp->fields[i].name.len;
    b->cap = resp->nfields + lines + MOAT_RESP_EXTRAS + 4;
    b->nv = b->cap <= NVB_INLINE ? b->nv_in : (b->nv_heap = malloc(b->cap * sizeof *b->nv));
    b->lccap = names;
    b->lc = names <= NVB_LC_INLINE ? b->lc_in : (b->lc_heap = malloc(names));
    if (!b->nv || !b->lc)
        return MOAT_ERR;
    unsigned st = (unsigned)resp->status % 1000u;
    status[0] = (char)('0' + st / 100), status[1] = (char)('0' + st / 10 % 10);
    status[2] = (char)('0' + st % 10), status[3] = '\0';
    b->nv[b->n++] =
        (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, 3, NGHTTP2_NV_FLAG_NO_COPY_NAME};
    bool had_date = false;
    for (size_t i = 0; i < resp->nfields; i++) {
        const struct moat_hdr *h = &resp->fields[i];
        if (resp->origin) {
            if (!moat_resp_keep(r, resp, h, &had_date))
                continue;
        } else if (h->name.len == 4 && MOAT_STR_IEQ_LIT(h->name, "date")) {
            had_date = true;
        }
        nvb_add(b, h->name, h->value);
    }
    if (resp->block.len)
        nvb_lines(b, resp->block, false);
    struct moat_hdr extra[MOAT_RESP_EXTRAS];
    static __thread char scratch[MOAT_RESP_SCRATCH];
    size_t ne = moat_resp_extras(r, resp, had_date || resp->block.len, extra, scratch);
    for (size_t i = 0; i < ne; i++)
        nvb_add(b, extra[i].name, extra[i].value);
    if (resp->length != MOAT_LEN_UNKNOWN && (!resp->no_body || resp->keep_cl) &&
        resp->status >= 200 && resp->status != 204 && !(resp->status == 304 && !resp->keep_cl)) {
        char *d = dec_u64(clen, resp->length);
        nvb_add(b, MOAT_STR("content-length"), moat_str_make(d, (size_t)(clen + 24 - d)));
    }
    return MOAT_OK;
}

static void nvb_free(struct nvb *b)
{
    free(b->nv_heap);
    free(b->lc_heap);
}

static ssize_t read_data(nghttp2_session *ses, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud);

static int h2_send_head(struct moat_req *r, const struct moat_resp *resp)
{
    struct moat_h2stream *s = r->dsc;
    struct moat_h2conn *c = s->c;
    if (s->closed || s->reset || s->head_done)
        return MOAT_ERR;
    struct nvb b;
    nvb_init(&b);
    char status[4], clen[24];
    if (build_head(r, resp, &b, status, clen) != MOAT_OK) {
        nvb_free(&b);
        return MOAT_ERR;
    }
    s->no_body = resp->no_body || (resp->length == 0);
    nghttp2_data_provider prov = {.source.ptr = s, .read_callback = read_data};
    int rv = nghttp2_submit_response(c->ses, s->id, b.nv, b.n, s->no_body ? NULL : &prov);
    nvb_free(&b);
    if (rv != 0)
        return MOAT_ERR;
    s->head_done = true;
    kick(c);
    return MOAT_OK;
}

static int h2_send_interim(struct moat_req *r, const struct moat_resp *resp)
{
    struct moat_h2stream *s = r->dsc;
    if (s->closed || s->reset || s->head_done || resp->status == 101)
        return MOAT_ERR;
    struct nvb b;
    nvb_init(&b);
    char status[4], clen[24];
    struct moat_resp rs = *resp;
    rs.length = MOAT_LEN_UNKNOWN;
    int rv = build_head(r, &rs, &b, status, clen);
    if (rv == MOAT_OK)
        rv = nghttp2_submit_headers(s->c->ses, NGHTTP2_FLAG_NONE, s->id, NULL, b.nv, b.n, NULL)
                 ? MOAT_ERR
                 : MOAT_OK;
    nvb_free(&b);
    kick(s->c);
    return rv;
}

static void resume(struct moat_h2stream *s)
{
    if (s->deferred && !s->closed) {
        s->deferred = false;
        nghttp2_session_resume_data(s->c->ses, s->id);
    }
    kick(s->c);
}

static ssize_t h2_send_data(struct moat_req *r, const char *p, size_t n, bool more)
{
    struct moat_h2stream *s = r->dsc;
    struct moat_h2conn *c = s->c;
    (void)more;
    if (s->closed || s->reset)
        return MOAT_ERR;
    if (s->no_body)
        return (ssize_t)n; /* HEAD, 204, 304: nothing follows the head */
    if (!n) {
        kick(c);
        return 0;
    }
    if (s->slen) { /* a stored span goes first */
        s->blocked = true;
        resume(s);
        return 0;
    }
    size_t room = (size_t)c->lim.stream_buffer - s->olen;
    uint64_t croom =
        c->out_buffered < c->lim.conn_buffer ? c->lim.conn_buffer - c->out_buffered : 0;
    size_t take = MOAT_MIN(n, room);
    take = (size_t)MOAT_MIN((uint64_t)take, croom);
    if (!take) {
        s->blocked = true;
        if (!croom)
            c->conn_blocked = true;
        resume(s);
        return 0;
    }
    if (s->olen + take > s->ocap) {
        /* Grown to what is held, doubling up to stream_buffer: a 1 KiB body takes 1 KiB. */
        size_t cap = MOAT_MAX((size_t)s->olen + take,
                              MOAT_MIN((size_t)s->ocap * 2, (size_t)c->lim.stream_buffer));
        char *nb = moat_mc_alloc(cap);
        if (!nb)
            return MOAT_ERR;
        if (s->olen)
            memcpy(nb, s->ob + s->opos, s->olen);
        moat_mc_free(s->ob);
        s->ob = nb;
        s->ocap = (uint32_t)moat_mc_size(nb);
        s->opos = 0;
    } else if (s->opos + s->olen + take > s->ocap) {
        memmove(s->ob, s->ob + s->opos, s->olen);
        s->opos = 0;
    }
    memcpy(s->ob + s->opos + s->olen, p, take);
    s->olen += (uint32_t)take;
    c->out_buffered += take;
    MOAT_STAT_ADD(&c->w->stats, h2_buffered, take);
    r->resp_bytes += take;
    if (take < n) {
        /* Short: the caller waits to be driven, which the provider does once it took some. */
        s->blocked = true;
        if (take == croom)
            c->conn_blocked = true;
    }
    resume(s);
    return (ssize_t)take;
}

/* A cache hit's body: the stream keeps a reference on the object and the span's address, and
 * the data provider frames the bytes from the store when the client's window opens: no
 * per-stream copy, whatever the object's size and however slow the client. One span at a
 * time; the next is taken when this one has gone out. */
static ssize_t h2_send_stored(struct moat_req *r, struct moat_cache_obj *obj, const char *p,
                              size_t n)
{
    struct moat_h2stream *s = r->dsc;
    struct moat_h2conn *c = s->c;
    if (s->closed || s->reset)
        return MOAT_ERR;
    if (s->no_body)
        return (ssize_t)n;
    if (!n) {
        kick(c);
        return 0;
    }
    if (s->olen || s->slen) {
        s->blocked = true;
        resume(s);
        return 0;
    }
    if (s->sobj != obj) {
        moat_cache_obj_release(&s->sobj);
        s->sobj = moat_cache_obj_ref(obj);
    }
    n = MOAT_MIN(n, (size_t)UINT32_MAX);
    s->sp = p;
    s->slen = (uint32_t)n;
    r->resp_bytes += n;
    resume(s);
    return (ssize_t)n;
}

static void h2_push(struct moat_req *r)
{
    struct moat_h2stream *s = r->dsc;
    kick(s->c);
}

static int h2_finish(struct moat_req *r, struct moat_str trailers)
{
    struct moat_h2stream *s = r->dsc;
    if (s->closed || s->reset)
        return MOAT_ERR;
    if (s->fin)
        return MOAT_OK;
    if (trailers.len && !s->no_body) {
        s->trailers = malloc(trailers.len);
        if (s->trailers)
            s->tlen = (uint32_t)moat_fwd_trailers(trailers, s->trailers, trailers.len);
    }
    s->fin = true;
    resume(s);
    return MOAT_OK;
}

static void h2_abort(struct moat_req *r)
{
    struct moat_h2stream *s = r->dsc;
    rst(s, NGHTTP2_INTERNAL_ERROR);
}

static int h2_body(struct moat_req *r, struct moat_str *span)
{
    struct moat_h2stream *s = r->dsc;
    if (s->ilen) {
        *span = moat_str_make(s->ib + s->ihead, MOAT_MIN(s->ilen, s->icap - s->ihead));
        return MOAT_OK;
    }
    const struct moat_config *cfg = r->wcfg->cfg;
    if (cfg->max_body_bytes && s->in_total > cfg->max_body_bytes) {
        r->body_err = BODY_LIMIT;
        return MOAT_ERR;
    }
    if (s->in_end) {
        r->body_done = true;
        *span = moat_str_make(s->rtr, s->rtlen); /* trailers: forwarded when re-chunked */
        return MOAT_DONE;
    }
    if (s->closed || s->reset) {
        r->body_err = BODY_TRUNCATED;
        return MOAT_ERR;
    }
    return MOAT_AGAIN;
}

static void h2_body_consume(struct moat_req *r, size_t n)
{
    struct moat_h2stream *s = r->dsc;
    if (!n || n > s->ilen)
        return;
    s->ihead = (uint32_t)((s->ihead + n) % s->icap);
    s->ilen -= (uint32_t)n;
    r->req_bytes += n;
    if (!s->closed) {
        nghttp2_session_consume(s->c->ses, s->id, n);
        kick(s->c);
    }
}

static void h2_done(struct moat_req *r)
{
    struct moat_h2stream *s = r->dsc;
    s->r = NULL;
    stream_drop_input(s);
    if (!s->fin && !s->closed && !s->reset) {
        /* ended without a finish (an abort already reset it; anything else cuts it) */
        rst(s, s->head_done ? NGHTTP2_INTERNAL_ERROR : NGHTTP2_REFUSED_STREAM);
    }
    todo_add(s);
    kick(s->c);
}

static void h2_detach(struct moat_req *r)
{
    struct moat_h2stream *s = r->dsc;
    s->r = NULL;
    stream_drop_input(s);
    rst(s, NGHTTP2_CANCEL);
    todo_add(s);
}

static const struct moat_ds h2_ds = {
    .name = "h2",
    .send_head = h2_send_head,
    .send_interim = h2_send_interim,
    .send_data = h2_send_data,
    .send_stored = h2_send_stored,
    .push = h2_push,
    .finish = h2_finish,
    .abort = h2_abort,
    .body = h2_body,
    .body_consume = h2_body_consume,
    .done = h2_done,
    .detach = h2_detach,
};

/* --- response bodies: the data provider ---------------------------------------------------- */

static void wake_blocked(struct moat_h2conn *c)
{
    c->conn_blocked = false;
    for (struct moat_h2stream *s = c->streams; s; s = s->next)
        if (s->blocked && s->r) {
            s->blocked = false;
            todo_add(s);
        }
}

static ssize_t read_data(nghttp2_session *ses, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    struct moat_h2stream *s = src->ptr;
    struct moat_h2conn *c = ud;
    (void)ses;
    size_t n = MOAT_MIN(length, (size_t)s->olen);
    if (n) {
        memcpy(buf, s->ob + s->opos, n);
        s->opos += (uint32_t)n;
        s->olen -= (uint32_t)n;
        if (!s->olen)
            s->opos = 0;
        c->out_buffered -= n;
        MOAT_STAT_ADD(&c->w->stats, h2_buffered, (uint64_t) - (int64_t)n);
        if (s->blocked && s->r) {
            s->blocked = false;
            todo_add(s);
        }
        if (c->conn_blocked && c->out_buffered <= c->lim.conn_buffer / 2)
            wake_blocked(c);
    } else if (s->slen) {
        n = MOAT_MIN(length, (size_t)s->slen);
        memcpy(buf, s->sp, n); /* from the store into the frame */
        s->sp += n;
        s->slen -= (uint32_t)n;
        if (!s->slen && s->blocked && s->r) {
            s->blocked = false;
            todo_add(s);
        }
    }
    if (!s->olen && !s->slen) {
        if (s->fin) {
            *flags |= NGHTTP2_DATA_FLAG_EOF;
            if (s->tlen) {
                struct nvb b;
                nvb_init(&b);
                b.cap = 64;
                b.nv = b.nv_heap = malloc(b.cap * sizeof *b.nv);
                b.lccap = s->tlen;
                b.lc = b.lc_heap = malloc(s->tlen);
                if (b.nv && b.lc) {
                    nvb_lines(&b, moat_str_make(s->trailers, s->tlen), true);
                    if (b.n && nghttp2_submit_trailer(ses, id, b.nv, b.n) == 0)
                        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
                }
                nvb_free(&b);
            }
        } else if (!n) {
            s->deferred = true;
            return NGHTTP2_ERR_DEFERRED;
        }
    }
    return (ssize_t)n;
}

/* --- request heads ------------------------------------------------------------------------- */

static int hs_put(struct moat_h2conn *c, const uint8_t *p, size_t n, uint32_t *off)
{
    if (c->hs_len + n > c->hs_cap) {
        size_t cap = MOAT_MAX(c->hs_cap * 2, c->hs_len + n + 256);
        char *nh = realloc(c->hs, cap);
        if (!nh)
            return MOAT_ERR;
        c->hs = nh;
        c->hs_cap = cap;
    }
    memcpy(c->hs + c->hs_len, p, n);
    *off = (uint32_t)c->hs_len;
    c->hs_len += n;
    return MOAT_OK;
}

static bool ent_is(const struct moat_h2conn *c, const struct hent *e, const char *lit, size_t n)
{
    return e->nl == n && !memcmp(c->hs + e->no, lit, n);
}

static int on_begin_headers(nghttp2_session *ses, const nghttp2_frame *f, void *ud)
{
    struct moat_h2conn *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    c->hdr_open = true;
    c->hs_len = c->hs_list = c->nhe = 0;
    c->hs_over = c->has_method = c->has_path = c->has_authority = c->has_host = c->has_cl = false;
    if (f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* trailers: checked by nghttp2, not forwarded */
    struct moat_h2stream *s = stream_new(c, f->hd.stream_id);
    if (!s)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    s->hdr_ok = true;
    nghttp2_session_set_stream_user_data(ses, f->hd.stream_id, s);
    MOAT_STAT_INC(&c->w->stats, h2_streams);
    window_roll(c);
    c->n_credit++;
    return 0;
}

/* A field of the request's trailer section (nghttp2 checked it: no pseudo-headers, valid
 * name and value), kept as an HTTP/1 line for the origin, within http2.max_header_list. */
static int trailer_field(struct moat_h2conn *c, struct moat_h2stream *s, const uint8_t *name,
                         size_t nl, const uint8_t *value, size_t vl)
{
    size_t need = nl + vl + 4;
    if (!s->r || s->rtlen + need > c->lim.max_header_list)
        return 0; /* dropped: trailers are advisory */
    if (s->rtlen + need > s->rtcap) {
        size_t cap = MOAT_MAX((size_t)s->rtcap * 2, s->rtlen + need + 64);
        char *nb = realloc(s->rtr, cap);
        if (!nb)
            return 0;
        s->rtr = nb;
        s->rtcap = (uint32_t)cap;
    }
    char *p = s->rtr + s->rtlen;
    memcpy(p, name, nl);
    memcpy(p + nl, ": ", 2);
    memcpy(p + nl + 2, value, vl);
    memcpy(p + nl + 2 + vl, "\r\n", 2);
    s->rtlen += (uint32_t)need;
    return 0;
}

static int on_header(nghttp2_session *ses, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
    struct moat_h2conn *c = ud;
    (void)flags;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct moat_h2stream *s = nghttp2_session_get_stream_user_data(ses, f->hd.stream_id);
    if (!s)
        return 0;
    if (f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return trailer_field(c, s, name, nl, value, vl);
    c->hs_list += nl + vl + 32;
    const struct moat_config *cfg = c->w->wcfg->cfg;
    if (c->hs_list > c->lim.max_header_list || c->nhe >= cfg->h1.max_headers) {
        /* Decoded on (HPACK must see every field), kept no further: 431. */
        c->hs_over = true;
        if (name[0] != ':')
            return 0;
    }
    struct hent e;
    e.nl = (uint32_t)nl;
    e.vl = (uint32_t)vl;
    if (hs_put(c, name, nl, &e.no) != MOAT_OK || hs_put(c, value, vl, &e.vo) != MOAT_OK)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (name[0] == ':') {
        if (ent_is(c, &e, ":method", 7)) {
            c->ps_method = e;
            c->has_method = true;
        } else if (ent_is(c, &e, ":path", 5)) {
            c->ps_path = e;
            c->has_path = true;
        } else if (ent_is(c, &e, ":authority", 10)) {
            c->ps_authority = e;
            c->has_authority = true;
        }
        return 0; /* :scheme: the connection's own is used; :protocol: refused by nghttp2 */
    }
    if (c->hs_over)
        return 0;
    if (nl == 4 && !memcmp(name, "host", 4)) {
        c->ps_host = e;
        c->has_host = true;
    } else if (nl == 14 && !memcmp(name, "content-length", 14)) {
        c->ps_cl = e;
        c->has_cl = true;
    }
    if (c->nhe == c->he_cap) {
        size_t cap = c->he_cap ? c->he_cap * 2 : 32;
        struct hent *nh = realloc(c->he, cap * sizeof *nh);
        if (!nh)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        c->he = nh;
        c->he_cap = cap;
    }
    c->he[c->nhe++] = e;
    return 0;
}

static struct moat_str hs_str(struct moat_h2conn *c, uint32_t off, uint32_t len, char *to)
{
    return moat_str_make(to + off, len);
}

/* The request of stream <s> from the decoded block: its own copy of the bytes (one buffer:
 * the block's bytes, the fields array, the joined cookies), then started on the to-do list.
 * MOAT_OK, or MOAT_ERR: the stream is malformed (reset). */
static int make_request(struct moat_h2conn *c, struct moat_h2stream *s, bool end_stream)
{
    struct moat_worker *w = c->w;
    /* RFC 9113 8.3.1: Host and :authority must agree when both are present. */
    if (c->has_host && c->has_authority &&
        !moat_str_ieq(moat_str_make(c->hs + c->ps_host.vo, c->ps_host.vl),
                      moat_str_make(c->hs + c->ps_authority.vo, c->ps_authority.vl)))
        return MOAT_ERR;
    if (!c->has_method)
        return MOAT_ERR;
    if (c->has_path) {
        const char *p = c->hs + c->ps_path.vo;
        uint32_t n = c->ps_path.vl;
        if (n == 0 || (p[0] != '/' && !(n == 1 && p[0] == '*')))
            return MOAT_ERR;
        for (uint32_t i = 0; i < n; i++)
            if ((unsigned char)p[i] <= 0x20 || p[i] == 0x7f)
                return MOAT_ERR; /* never a space or control byte in the origin's line */
    }
    size_t ncookie = 0, cookie_bytes = 0;
    for (size_t i = 0; i < c->nhe; i++)
        if (ent_is(c, &c->he[i], "cookie", 6)) {
            ncookie++;
            cookie_bytes += c->he[i].vl + 2;
        }
    size_t off = (c->hs_len + (ncookie > 1 ? cookie_bytes : 0) + 15) & ~(size_t)15;
    size_t need = off + (c->nhe + 1) * sizeof(struct moat_hdr);
    struct moat_req *r = moat_req_new(w, &h2_ds, s);
    if (!r)
        return MOAT_ERR;
    /* Sized to the head (HTTP/2 heads are small and a thousand streams may be open), or the
     * usual buffer when it is large. */
    size_t cap = need <= 2048 ? need : MOAT_MAX(need, (size_t)w->bufsize);
    if (moat_buf_get(&r->hbuf, (uint32_t)cap) != MOAT_OK) {
        moat_req_client_gone(r);
        return MOAT_ERR;
    }
    s->r = r;
    char *to = r->hbuf.base;
    memcpy(to, c->hs, c->hs_len);
    r->hbuf.wpos = (uint32_t)need;
    r->hdrs = (struct moat_hdr *)(void *)(to + off);
    size_t nh = 0;
    char *ck = to + c->hs_len;
    size_t ckn = 0;
    bool cookie_done = false;
    for (size_t i = 0; i < c->nhe; i++) {
        const struct hent *e = &c->he[i];
        if (ncookie > 1 && ent_is(c, e, "cookie", 6)) {
            /* RFC 9113 8.2.3: the crumbs become one field, joined with "; " */
            if (ckn) {
                memcpy(ck + ckn, "; ", 2);
                ckn += 2;
            }
            memcpy(ck + ckn, c->hs + e->vo, e->vl);
            ckn += e->vl;
            if (!cookie_done) {
                r->hdrs[nh++] = (struct moat_hdr){hs_str(c, e->no, e->nl, to), MOAT_STR_NULL};
                cookie_done = true;
            }
            continue;
        }
        r->hdrs[nh++] = (struct moat_hdr){hs_str(c, e->no, e->nl, to), hs_str(c, e->vo, e->vl, to)};
    }
    if (cookie_done) {
        for (size_t i = 0; i < nh; i++)
            if (MOAT_STR_IEQ_LIT(r->hdrs[i].name, "cookie")) {
                r->hdrs[i].value = moat_str_make(ck, ckn);
                break;
            }
    }
    r->nhdrs = nh;
    r->hdrs_h1 = false;
    r->method = hs_str(c, c->ps_method.vo, c->ps_method.vl, to);
    r->meth = moat_http_method_id(r->method.ptr, r->method.len);
    r->is_head = r->meth == MOAT_M_HEAD;
    if (c->has_path) {
        r->target = hs_str(c, c->ps_path.vo, c->ps_path.vl, to);
        const char *q = memchr(r->target.ptr, '?', r->target.len);
        if (q) {
            r->path = moat_str_make(r->target.ptr, (size_t)(q - r->target.ptr));
            r->query = moat_str_make(q + 1, r->target.len - r->path.len - 1);
        } else {
            r->path = r->target;
        }
    }
    if (c->has_authority)
        r->authority = hs_str(c, c->ps_authority.vo, c->ps_authority.vl, to);
    else if (c->has_host)
        r->authority = hs_str(c, c->ps_host.vo, c->ps_host.vl, to);
    r->minor = 1;
    memcpy(r->peer, c->peer, sizeof r->peer);
    memcpy(r->peer_text, c->peer_text, sizeof r->peer_text);
    r->peer_len = c->peer_len;
    if (c->tls) {
        r->tls = true;
        r->scheme = MOAT_STR("https");
    }
    uint64_t cl = 0;
    if (c->has_cl) {
        for (uint32_t i = 0; i < c->ps_cl.vl; i++)
            cl = cl * 10 + (uint64_t)(c->hs[c->ps_cl.vo + i] - '0'); /* digits: nghttp2 checked */
    }
    if (end_stream) {
        s->in_end = true;
        r->body_len = 0;
    } else {
        r->body_len = c->has_cl ? cl : MOAT_LEN_UNKNOWN;
    }
    if (r->body_len == 0)
        r->body_done = true;
    if (c->hs_over) {
        MOAT_STAT_INC(&w->stats, h2_hdr_too_large);
        MOAT_STAT_INC(&w->stats, bad_parse[MOAT_H1_HEADERS_TOO_LARGE]);
        r->perr = MOAT_H1_HEADERS_TOO_LARGE;
        char body[96];
        snprintf(body, sizeof body, "%s\n", moat_h1_err_name(r->perr));
        moat_local_response(r, moat_h1_err_status(r->perr), body);
    }
    s->start = true;
    todo_add(s);
    return MOAT_OK;
}

/* --- nghttp2's other callbacks ------------------------------------------------------------- */

static void count_control(struct moat_h2conn *c)
{
    window_roll(c);
    if (++c->n_control > c->lim.max_control + c->n_credit)
        go_away(c, GA_CONTROL, NGHTTP2_ENHANCE_YOUR_CALM);
}

static int on_frame_recv(nghttp2_session *ses, const nghttp2_frame *f, void *ud)
{
    struct moat_h2conn *c = ud;
    struct moat_h2stream *s =
        f->hd.stream_id ? nghttp2_session_get_stream_user_data(ses, f->hd.stream_id) : NULL;
    bool es = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
        c->hdr_open = false;
        if (!s)
            break;
        if (f->headers.cat == NGHTTP2_HCAT_REQUEST && s->hdr_ok && !s->r) {
            s->hdr_ok = false;
            if (make_request(c, s, es) != MOAT_OK) {
                MOAT_STAT_INC(&c->w->stats, bad_parse[MOAT_H1_BAD_REQUEST_LINE]);
                rst(s, NGHTTP2_PROTOCOL_ERROR);
            }
        } else if (es) {
            s->in_end = true; /* trailers end the body */
            if (s->r)
                todo_add(s);
        }
        break;
    case NGHTTP2_DATA:
        window_roll(c);
        if (f->hd.length == 0 && !es && ++c->n_empty > c->lim.max_empty)
            go_away(c, GA_EMPTY, NGHTTP2_ENHANCE_YOUR_CALM);
        if (s && es) {
            s->in_end = true;
            if (s->r)
                todo_add(s);
        }
        break;
    case NGHTTP2_RST_STREAM:
        MOAT_STAT_INC(&c->w->stats, h2_rst_recv);
        window_roll(c);
        if (++c->n_resets > c->lim.max_resets)
            go_away(c, GA_RESET, NGHTTP2_ENHANCE_YOUR_CALM);
        break;
    case NGHTTP2_SETTINGS:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK))
            count_control(c);
        break;
    case NGHTTP2_PING:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK))
            count_control(c);
        break;
    case NGHTTP2_PRIORITY:
    case NGHTTP2_WINDOW_UPDATE:
        count_control(c);
        break;
    default:
        break;
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *ses, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    struct moat_h2conn *c = ud;
    (void)flags;
    struct moat_h2stream *s = nghttp2_session_get_stream_user_data(ses, id);
    if (!s || !s->r || s->reset) {
        nghttp2_session_consume(ses, id, len); /* nobody reads it: the window reopens */
        return 0;
    }
    if (!s->ib) {
        s->icap = (uint32_t)MOAT_MAX(c->lim.stream_window, (uint64_t)65535);
        s->ib = malloc(s->icap);
        if (!s->ib) {
            nghttp2_session_consume(ses, id, len);
            rst(s, NGHTTP2_INTERNAL_ERROR);
            return 0;
        }
    }
    if (s->ilen + len > s->icap) {
        nghttp2_session_consume(ses, id, len);
        rst(s, NGHTTP2_FLOW_CONTROL_ERROR); /* more than the window we gave */
        return 0;
    }
    uint32_t at = (s->ihead + s->ilen) % s->icap;
    size_t first = MOAT_MIN(len, (size_t)(s->icap - at));
    memcpy(s->ib + at, data, first);
    memcpy(s->ib, data + first, len - first);
    s->ilen += (uint32_t)len;
    s->in_total += len;
    todo_add(s);
    return 0;
}

static int on_stream_close(nghttp2_session *ses, int32_t id, uint32_t code, void *ud)
{
    struct moat_h2conn *c = ud;
    struct moat_h2stream *s = nghttp2_session_get_stream_user_data(ses, id);
    (void)code;
    if (!s)
        return 0;
    nghttp2_session_set_stream_user_data(ses, id, NULL);
    if (s->ilen) {
        nghttp2_session_consume_connection(ses, s->ilen);
        s->ilen = 0;
    }
    s->closed = true;
    c->nopen--;
    MOAT_STAT_ADD(&c->w->stats, h2_streams_active, (uint64_t)-1);
    c->out_buffered -= s->olen;
    MOAT_STAT_ADD(&c->w->stats, h2_buffered, (uint64_t) - (int64_t)s->olen);
    s->olen = 0;
    s->slen = 0;
    moat_cache_obj_release(&s->sobj);
    todo_add(s);
    return 0;
}

static int on_frame_send(nghttp2_session *ses, const nghttp2_frame *f, void *ud)
{
    struct moat_h2conn *c = ud;
    switch (f->hd.type) {
    case NGHTTP2_GOAWAY:
        count_goaway(c, f->goaway.error_code);
        break;
    case NGHTTP2_RST_STREAM:
        count_rst(c, f->rst_stream.error_code);
        break;
    case NGHTTP2_DATA:
    case NGHTTP2_HEADERS:
        window_roll(c);
        c->n_credit++;
        if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) {
            /* The response is complete; a request body nobody will read is stopped
             * (RFC 9113 8.1: RST_STREAM NO_ERROR after a complete response). */
            struct moat_h2stream *s = nghttp2_session_get_stream_user_data(ses, f->hd.stream_id);
            if (s && !s->in_end && !s->r && !s->closed && !s->reset) {
                s->reset = true;
                nghttp2_submit_rst_stream(ses, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
            }
        }
        break;
    default:
        break;
    }
    return 0;
}

static int on_invalid_frame(nghttp2_session *ses, const nghttp2_frame *f, int err, void *ud)
{
    (void)ses, (void)f, (void)err, (void)ud;
    return 0;
}

/* --- the connection ------------------------------------------------------------------------ */

static void conn_free(struct moat_defer *d)
{
    struct moat_h2conn *c = MOAT_CONTAINER_OF(d, struct moat_h2conn, defer);
    free(c->ob);
    free(c->hs);
    free(c->he);
    free(c);
}

/* Ends every stream (their requests go on without the client, or end) and the session. */
static void release_streams(struct moat_h2conn *c)
{
    struct moat_worker *w = c->w;
    while (c->streams) {
        struct moat_h2stream *s = c->streams;
        if (!s->closed) {
            s->closed = true;
            MOAT_STAT_ADD(&w->stats, h2_streams_active, (uint64_t)-1);
        }
        if (s->r) {
            struct moat_req *r = s->r;
            s->r = NULL;
            moat_req_client_gone(r);
        }
        stream_free(s);
    }
    c->todo = c->todo_tail = NULL;
    nghttp2_session_del(c->ses);
    c->ses = NULL;
}

static void h2_close(struct moat_h2conn *c)
{
    struct moat_worker *w = c->w;
    if (c->closed)
        return;
    c->closed = true;
    if (c->ga_owed)
        count_goaway(c, c->ga_code);
    if (moat_timer_armed(&c->timer))
        moat_timer_stop(&w->loop, &c->timer);
    release_streams(c);
    moat_sock_close(&c->sk);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->h2conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->nconns--;
    MOAT_STAT_ADD(&w->stats, conn_active, (uint64_t)-1);
    MOAT_STAT_ADD(&w->stats, h2_conn_active, (uint64_t)-1);
    if (c->sh_counted)
        moat_shield_conn_close(c->peer);
    if (!c->kick_queued) /* else the queued run frees it: one entry in the defer list */
        moat_loop_defer(&w->loop, &c->defer);
}

/* Streams with something to do: start their request, drive it, or let the stream go. */
static void run_todo(struct moat_h2conn *c)
{
    for (int i = 0; c->todo && i < 4096; i++) {
        struct moat_h2stream *s = c->todo;
        c->todo = s->tnext;
        if (!c->todo)
            c->todo_tail = NULL;
        s->in_todo = false;
        if (s->closed) {
            if (s->r) {
                struct moat_req *r = s->r;
                s->r = NULL;
                moat_req_client_gone(r);
            }
            if (!s->in_todo)
                stream_free(s);
            continue;
        }
        if (!s->r)
            continue;
        if (s->start) {
            s->start = false;
            moat_req_start(s->r);
        } else {
            moat_req_drive(s->r);
        }
    }
}

static int do_read(struct moat_h2conn *c)
{
    uint8_t buf[16384];
    for (int i = 0; i < 16; i++) {
        if (!c->sk.readable || c->sk.eof || c->fatal)
            return MOAT_OK;
        ssize_t n = moat_sock_read(&c->sk, buf, sizeof buf);
        if (n == MOAT_AGAIN)
            return MOAT_OK;
        if (n <= 0)
            return MOAT_ERR; /* the client closed (or failed): nothing more can reach it */
        ssize_t rv = nghttp2_session_mem_recv(c->ses, buf, (size_t)n);
        if (rv < 0) {
            /* Fatal for the session (a flood nghttp2 detected, a broken preface): GOAWAY
             * (counted when it is sent, or when the connection ends if it never could be),
             * then the connection closes. */
            bool calm = rv == NGHTTP2_ERR_FLOODED || rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS;
            c->ga_owed = true;
            c->ga_code = calm ? NGHTTP2_ENHANCE_YOUR_CALM : NGHTTP2_PROTOCOL_ERROR;
            nghttp2_session_terminate_session(c->ses, c->ga_code);
            c->fatal = true;
            return MOAT_OK;
        }
    }
    c->run_again = true; /* more may wait: after the others had their turn */
    return MOAT_OK;
}

static int ob_append(struct moat_h2conn *c, const uint8_t *p, size_t n)
{
    if (c->olen + n > c->ocap) {
        size_t cap = MOAT_MAX(c->ocap * 2, c->olen + n);
        cap = MOAT_MAX(cap, (size_t)65536);
        char *nb = realloc(c->ob, cap);
        if (!nb)
            return MOAT_ERR;
        c->ob = nb;
        c->ocap = cap;
    }
    memcpy(c->ob + c->olen, p, n);
    c->olen += n;
    return MOAT_OK;
}

static int do_write(struct moat_h2conn *c)
{
    for (;;) {
        if (moat_sock_pending(&c->sk)) {
            int rc = moat_sock_flush(&c->sk);
            if (rc == MOAT_AGAIN)
                return MOAT_OK;
            if (rc != MOAT_OK)
                return MOAT_ERR;
        }
        if (c->opos < c->olen) {
            if (!c->sk.writable)
                return MOAT_OK;
            ssize_t n = moat_sock_write(&c->sk, c->ob + c->opos, c->olen - c->opos);
            if (n == MOAT_AGAIN)
                return MOAT_OK;
            if (n < 0)
                return MOAT_ERR;
            c->progress = true;
            c->opos += (size_t)n;
            if (c->opos < c->olen)
                return MOAT_OK;
            c->opos = c->olen = 0;
        }
        while (c->olen < 65536) {
            const uint8_t *p;
            ssize_t n = nghttp2_session_mem_send(c->ses, &p);
            if (n < 0)
                return MOAT_ERR;
            if (n == 0)
                break;
            if (ob_append(c, p, (size_t)n) != MOAT_OK)
                return MOAT_ERR;
        }
        if (c->olen == 0) {
            if (c->sk.held)
                moat_sock_flush(&c->sk);
            return MOAT_OK;
        }
    }
}

static void arm(struct moat_h2conn *c, enum tmode m, uint64_t ms, bool restart)
{
    if (c->tmode == m && !restart && moat_timer_armed(&c->timer))
        return;
    c->tmode = m;
    moat_timer_set(&c->w->loop, &c->timer, ms);
}

/* The GOAWAY is out and the session over: shut the write side and read and drop what the
 * client still sends until it closes (or 2 s), so that closing with its frames unread does
 * not reset the connection under the GOAWAY before the client read it (HTTP/1's lingering
 * close, h1conn.c). */
static void linger_step(struct moat_h2conn *c)
{
    if (!c->shut_sent) {
        if (moat_sock_pending(&c->sk) && moat_sock_flush(&c->sk) == MOAT_AGAIN)
            return;
        int rc = moat_sock_shutdown(&c->sk);
        if (rc == MOAT_AGAIN)
            return;
        c->shut_sent = true;
        if (rc != MOAT_OK) {
            h2_close(c);
            return;
        }
    }
    char sink[4096];
    for (int i = 0; i < 64; i++) {
        if (!c->sk.readable)
            return;
        ssize_t n = moat_sock_read(&c->sk, sink, sizeof sink);
        if (n == MOAT_AGAIN)
            return;
        if (n <= 0)
            break;
    }
    h2_close(c); /* EOF, an error, or 256 KiB of patience */
}

static void h2_linger(struct moat_h2conn *c)
{
    release_streams(c);
    c->lingering = true;
    c->tmode = T_LINGER;
    moat_timer_set(&c->w->loop, &c->timer, 2000);
    linger_step(c);
}

static void h2_run(struct moat_h2conn *c)
{
    if (c->closed)
        return;
    if (c->in_run) {
        c->run_again = true;
        return;
    }
    if (c->lingering) {
        linger_step(c);
        return;
    }
    c->in_run = true;
    c->progress = false;
    bool fail = false;
    for (int spins = 0; spins < 64 && !fail; spins++) {
        c->run_again = false;
        if (do_read(c) != MOAT_OK)
            fail = true;
        run_todo(c);
        if (do_write(c) != MOAT_OK)
            fail = true;
        if (!c->todo && !c->run_again)
            break;
    }
    c->in_run = false;
    if (c->run_again && !fail && !c->kick_queued) {
        c->kick_queued = true; /* still work: after the other events of this batch */
        moat_loop_defer(&c->w->loop, &c->kick);
    }
    bool out_pending = c->opos < c->olen || moat_sock_pending(&c->sk);
    if (fail) {
        h2_close(c);
        return;
    }
    if (!out_pending &&
        (c->fatal || (!nghttp2_session_want_read(c->ses) && !nghttp2_session_want_write(c->ses)))) {
        h2_linger(c); /* the GOAWAY is out: done */
        return;
    }
    if (c->hdr_open) /* a slow header block (slowloris over HTTP/2) */
        arm(c, T_HEADER, c->header_timeout_ms, false);
    else if (out_pending || c->out_buffered)
        arm(c, T_STALL, c->lim.stall_timeout_ms, c->progress);
    else if (c->nopen == 0)
        arm(c, T_IDLE, c->lim.idle_timeout_ms, c->tmode != T_IDLE);
    else if (moat_timer_armed(&c->timer)) {
        moat_timer_stop(&c->w->loop, &c->timer);
        c->tmode = T_NONE;
    }
}

static void conn_io(struct moat_loop *loop, struct moat_io *io, uint32_t ev)
{
    struct moat_h2conn *c = MOAT_CONTAINER_OF(io, struct moat_h2conn, sk.io);
    (void)loop;
    moat_sock_events(&c->sk, ev);
    h2_run(c);
}

static void conn_timeout(struct moat_loop *loop, struct moat_timer *t)
{
    struct moat_h2conn *c = MOAT_CONTAINER_OF(t, struct moat_h2conn, timer);
    (void)loop;
    if (c->lingering) {
        h2_close(c);
        return;
    }
    if (c->tmode == T_STALL) {
        /* The client takes nothing: a GOAWAY it will not read either; counted, closed. A
         * GOAWAY already owed (a flood answered) keeps its own reason: h2_close counts it. */
        if (!c->ga_owed) {
            c->ga = GA_STALL;
            count_goaway(c, NGHTTP2_NO_ERROR);
        }
        h2_close(c);
        return;
    }
    if (c->tmode == T_HEADER)
        go_away(c, GA_HEADER, NGHTTP2_ENHANCE_YOUR_CALM);
    else
        go_away(c, GA_IDLE, NGHTTP2_NO_ERROR);
    c->tmode = T_NONE;
    h2_run(c);
}

/* The session copies the callbacks: one set per connection, freed at once. */
static nghttp2_session_callbacks *callbacks(void)
{
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return NULL;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
    return cb;
}

/* libnghttp2 allocates about five blocks per stream (its stream, header buffers, the frame
 * queue item): from this thread's size-class caches instead of glibc's arena. */
static void *mem_malloc(size_t n, void *ud)
{
    (void)ud;
    return moat_mc_alloc(n);
}
static void mem_free(void *p, void *ud)
{
    (void)ud;
    moat_mc_free(p);
}
static void *mem_calloc(size_t nmemb, size_t size, void *ud)
{
    (void)ud;
    return moat_mc_calloc(nmemb, size);
}
static void *mem_realloc(void *p, size_t n, void *ud)
{
    (void)ud;
    return moat_mc_realloc(p, n);
}
static nghttp2_mem h2_mem = {NULL, mem_malloc, mem_free, mem_calloc, mem_realloc};

static int session_new(struct moat_h2conn *c)
{
    const struct moat_cfg_h2 *l = &c->lim;
    nghttp2_session_callbacks *cb = callbacks();
    nghttp2_option *opt = NULL;
    if (!cb || nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cb);
        return MOAT_ERR;
    }
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_outbound_ack(opt, l->max_outbound_ack);
    nghttp2_option_set_max_settings(opt, l->max_settings);
    nghttp2_option_set_max_continuations(opt, l->max_continuations);
    /* nghttp2's own reset budget stays a backstop behind ours (counted by reason). */
    uint64_t burst = (uint64_t)l->max_resets * 4;
    uint64_t rate = MOAT_MAX(burst * 1000 / l->flood_window_ms, (uint64_t)1);
    nghttp2_option_set_stream_reset_rate_limit(opt, burst, rate);
    int rv = nghttp2_session_server_new3(&c->ses, cb, c, opt, &h2_mem);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    if (rv != 0)
        return MOAT_ERR;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, l->max_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (uint32_t)MOAT_MIN(l->stream_window, 0x7fffffffu)},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
         (uint32_t)MOAT_MIN(l->max_header_list, 0xffffffffu)},
    };
    if (nghttp2_submit_settings(c->ses, NGHTTP2_FLAG_NONE, iv, MOAT_ARRAY_LEN(iv)) != 0)
        return MOAT_ERR;
    if (l->conn_window > 65535)
        nghttp2_session_set_local_window_size(c->ses, NGHTTP2_FLAG_NONE, 0,
                                              (int32_t)MOAT_MIN(l->conn_window, 0x7fffffffu));
    return MOAT_OK;
}

void moat_h2_takeover(struct moat_h1conn *h)
{
    struct moat_worker *w = h->w;
    struct moat_h2conn *c = calloc(1, sizeof *c);
    h->handed_off = true; /* the socket is ours now, or closed below */
    if (!c) {
        moat_sock_close(&h->s.sk);
        return;
    }
    c->w = w;
    c->sk = h->s.sk;
    c->sk.io.cb = conn_io;
    moat_tls_moved(&c->sk);
    h->s.sk.io.fd = -1;
    h->s.sk.tls = NULL;
    c->defer.fn = conn_free;
    c->kick.fn = kick_fn;
    c->timer.cb = conn_timeout;
    c->tls = h->tls;
    c->sh_counted = h->sh_counted; /* the connection's place in connections.per_ip moves too */
    h->sh_counted = false;
    memcpy(c->peer, h->peer, sizeof c->peer);
    memcpy(c->peer_text, h->peer_text, sizeof c->peer_text);
    c->peer_len = h->peer_len;
    c->lim = w->wcfg->cfg->h2;
    c->header_timeout_ms = w->wcfg->cfg->client_header_timeout_ms;
    c->win_start = w->loop.now_ms;
    c->next = w->h2conns;
    if (w->h2conns)
        w->h2conns->prev = c;
    w->h2conns = c;
    w->nconns++;
    MOAT_STAT_INC(&w->stats, conn_active);
    MOAT_STAT_INC(&w->stats, h2_conn_total);
    MOAT_STAT_INC(&w->stats, h2_conn_active);
    uint32_t ev = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    if (session_new(c) != MOAT_OK || (moat_loop_mod(&w->loop, &c->sk.io, ev) != MOAT_OK &&
                                      moat_loop_add(&w->loop, &c->sk.io, ev) != MOAT_OK)) {
        h2_close(c);
        return;
    }
    /* What HTTP/1 read already (the preface, the first frames) goes first. */
    uint32_t len = moat_buf_len(&h->s.in);
    if (len) {
        ssize_t rv =
            nghttp2_session_mem_recv(c->ses, (const uint8_t *)moat_buf_rptr(&h->s.in), len);
        moat_buf_consume(&h->s.in, len);
        if (rv < 0) {
            h2_close(c);
            return;
        }
    }
    h2_run(c);
}

void moat_h2_drain(struct moat_worker *w, bool late)
{
    struct moat_h2conn *c = w->h2conns;
    while (c) {
        struct moat_h2conn *next = c->next;
        if (late) {
            h2_close(c);
        } else if (!c->drain_sent && !c->lingering) {
            /* Graceful: streams up to the last one seen finish; new ones are refused. */
            c->drain_sent = true;
            c->ga = GA_DRAIN;
            nghttp2_submit_goaway(c->ses, NGHTTP2_FLAG_NONE,
                                  nghttp2_session_get_last_proc_stream_id(c->ses), NGHTTP2_NO_ERROR,
                                  NULL, 0);
            h2_run(c);
        }
        c = next;
    }
}
