/* fuzz_h1.c: libFuzzer target for the h1 parser: request and response heads, chunked bodies. */
#include <stdio.h>
#include <stdlib.h>

#include "http/h1.h"

#define MAXH 16

/* Fails loudly: libFuzzer records the input that got here. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void check_span(struct moat_str s, const char *buf, size_t n)
{
    if (s.len == 0)
        return;
    CHECK(s.ptr >= buf && s.ptr + s.len <= buf + n);
}

static void check_err(int rc, enum moat_h1_err e)
{
    if (rc == MOAT_ERR) {
        CHECK(e > MOAT_H1_OK && e < MOAT_H1_ERR_COUNT);
        int st = moat_h1_err_status(e);
        CHECK(st >= 400 && st <= 599);
    } else {
        CHECK(rc > 0 || rc == MOAT_AGAIN);
        CHECK(e == MOAT_H1_OK);
    }
}

static void fuzz_request(const char *buf, size_t len, const struct moat_h1_limits *lim, size_t cut)
{
    struct moat_hdr hdrs[MAXH];
    struct moat_h1_req r = {.hdrs = hdrs};
    enum moat_h1_err e = MOAT_H1_OK;
    int rc = moat_h1_parse_request(buf, len, lim, &r, &e);
    check_err(rc, e);
    if (rc == MOAT_AGAIN)
        CHECK(len < lim->head_bytes);
    if (rc <= 0)
        return;
    size_t n = (size_t)rc;
    CHECK(n == r.head_len && n <= len && n <= lim->head_bytes);
    CHECK(r.nhdrs <= lim->max_headers);
    CHECK(r.method.len > 0 && r.target.len > 0);
    check_span(r.method, buf, n);
    check_span(r.target, buf, n);
    if (!(r.path.len == 1 && r.path.ptr[0] == '/')) /* "/" may be a static string */
        check_span(r.path, buf, n);
    check_span(r.query, buf, n);
    check_span(r.host, buf, n);
    CHECK(r.minor == 0 || r.minor == 1);
    CHECK(!((r.flags & MOAT_H1_F_CHUNKED) && (r.flags & MOAT_H1_F_HAS_CL)));
    if (r.minor == 1)
        CHECK(r.host.len > 0);
    CHECK(r.content_length <= (uint64_t)INT64_MAX);
    for (size_t i = 0; i < r.nhdrs; i++) {
        CHECK(r.hdrs[i].name.len > 0);
        check_span(r.hdrs[i].name, buf, n);
        check_span(r.hdrs[i].value, buf, n);
        if (r.hdrs[i].value.len) {
            char c0 = r.hdrs[i].value.ptr[0], c1 = r.hdrs[i].value.ptr[r.hdrs[i].value.len - 1];
            CHECK(c0 != ' ' && c0 != '\t' && c1 != ' ' && c1 != '\t');
        }
    }
    /* The head stands on its own: parsing exactly it gives the same answer, and any
     * shorter prefix is incomplete, never an error. */
    struct moat_h1_req r2 = {.hdrs = hdrs};
    CHECK(moat_h1_parse_request(buf, n, lim, &r2, &e) == rc);
    CHECK(r2.flags == r.flags && r2.nhdrs == r.nhdrs && r2.content_length == r.content_length);
    if (cut < n) {
        char *p = malloc(cut ? cut : 1); /* own allocation: ASan sees any over-read */
        memcpy(p, buf, cut);
        CHECK(moat_h1_parse_request(p, cut, lim, &r2, &e) == MOAT_AGAIN);
        free(p);
    }
}

static void fuzz_response(const char *buf, size_t len, const struct moat_h1_limits *lim, size_t cut)
{
    struct moat_hdr hdrs[MAXH];
    struct moat_h1_resp r = {.hdrs = hdrs};
    enum moat_h1_err e = MOAT_H1_OK;
    int rc = moat_h1_parse_response(buf, len, lim, &r, &e);
    check_err(rc, e);
    if (rc <= 0)
        return;
    size_t n = (size_t)rc;
    CHECK(n == r.head_len && n <= len);
    CHECK(r.status >= 100 && r.status <= 999);
    CHECK(r.nhdrs <= lim->max_headers);
    check_span(r.reason, buf, n);
    CHECK(!((r.flags & MOAT_H1_F_CHUNKED) && (r.flags & MOAT_H1_F_HAS_CL)));
    for (size_t i = 0; i < r.nhdrs; i++) {
        CHECK(r.hdrs[i].name.len > 0);
        check_span(r.hdrs[i].name, buf, n);
        check_span(r.hdrs[i].value, buf, n);
    }
    if (cut < n) {
        char *p = malloc(cut ? cut : 1);
        memcpy(p, buf, cut);
        struct moat_h1_resp r2 = {.hdrs = hdrs};
        CHECK(moat_h1_parse_response(p, cut, lim, &r2, &e) == MOAT_AGAIN);
        free(p);
    }
}

struct dechunk_result {
    int rc;
    enum moat_h1_err err;
    size_t consumed;
    size_t outlen;
    size_t sec_off, sec_len; /* keep_trailers: the section handed out, as offsets in buf */
};

/* keep_trailers: takes the section starting at buf + <ts> as the proxy's pump does, offering
 * it again with more bytes each time (the same pieces as the body: <cut>, or <step> bytes)
 * and never consuming before MOAT_DONE. */
static void take_trailers(struct moat_h1_chunked *st, const char *buf, size_t len, size_t ts,
                          size_t cut, size_t step, struct dechunk_result *res)
{
    size_t have = ts;
    for (;;) {
        have = step ? have + step : (have < cut ? cut : len);
        if (have > len)
            have = len;
        size_t c = 1;
        struct moat_str s;
        enum moat_h1_err e = MOAT_H1_OK;
        int rc = moat_h1_chunked_trailers(st, buf + ts, have - ts, &c, &s, &e);
        res->rc = rc;
        res->err = e;
        if (rc == MOAT_DONE) {
            CHECK(s.ptr == buf + ts && s.len + 2 == c && ts + c <= have);
            CHECK(buf[ts + s.len] == '\r' && buf[ts + s.len + 1] == '\n');
            if (s.len) /* whole lines: CRLF-terminated, a name before a colon */
                CHECK(s.len >= 4 && buf[ts + s.len - 1] == '\n' && buf[ts] != ':' &&
                      memchr(s.ptr, ':', s.len) != NULL);
            res->sec_off = ts;
            res->sec_len = s.len;
            res->consumed = ts + c;
            return;
        }
        CHECK(c == 0 && s.len == 0);
        if (rc == MOAT_ERR) {
            CHECK(e > MOAT_H1_OK && e < MOAT_H1_ERR_COUNT);
            break;
        }
        CHECK(rc == MOAT_AGAIN && e == MOAT_H1_OK);
        if (have == len)
            break;
    }
    res->consumed = ts;
}

/* Feeds <buf,len> to a fresh decoder in pieces: cut at <cut> (then the rest), or <step>
 * bytes at a time when step > 0. The payload goes to <out>. With <keep>, the decoder hands
 * the trailer section out (take_trailers) instead of dropping it. */
static struct dechunk_result dechunk(const char *buf, size_t len, size_t cut, size_t step,
                                     bool keep, char *out)
{
    struct moat_h1_chunked st;
    moat_h1_chunked_init(&st, 64);
    st.keep_trailers = keep;
    struct dechunk_result res = {MOAT_AGAIN, MOAT_H1_OK, 0, 0, 0, 0};
    size_t off = 0;
    for (;;) {
        size_t limit = step ? off + step : (off < cut ? cut : len);
        if (limit > len)
            limit = len;
        size_t avail = limit - off;
        size_t c = 0;
        struct moat_str d;
        enum moat_h1_err e = MOAT_H1_OK;
        int rc = moat_h1_chunked_decode(&st, buf + off, avail, &c, &d, &e);
        CHECK(c <= avail);
        check_span(d, buf + off, c);
        if (rc == MOAT_OK)
            CHECK(d.len > 0 && d.ptr + d.len == buf + off + c);
        else
            CHECK(d.len == 0);
        if (rc == MOAT_AGAIN)
            CHECK(c == avail);
        memcpy(out + res.outlen, d.ptr, d.len);
        res.outlen += d.len;
        off += c;
        res.rc = rc;
        res.err = e;
        if (rc == MOAT_ERR) {
            CHECK(e > MOAT_H1_OK && e < MOAT_H1_ERR_COUNT);
            break;
        }
        if (rc == MOAT_H1_TRAILERS) {
            CHECK(keep && e == MOAT_H1_OK);
            CHECK(moat_h1_chunked_decode(&st, buf + off, len - off, &c, &d, &e) ==
                      MOAT_H1_TRAILERS &&
                  c == 0);
            take_trailers(&st, buf, len, off, cut, step, &res);
            return res;
        }
        if (rc == MOAT_DONE)
            break;
        if (rc == MOAT_AGAIN && off == len)
            break;
    }
    res.consumed = off;
    return res;
}

/* The same verdict, payload and end however the input is cut, and in both modes: keeping
 * the trailers changes where they go, never what is accepted. */
static void fuzz_chunked(const char *buf, size_t len, size_t cut)
{
    char *o1 = malloc(len + 1), *o2 = malloc(len + 1);
    struct dechunk_result a = dechunk(buf, len, len, 0, false, o1);
    for (int keep = 0; keep <= 1; keep++) {
        for (int how = 0; how <= 2; how++) {
            if (!keep && how == 0)
                continue; /* that is <a> itself */
            if (how == 2 && len > 4096)
                continue;
            struct dechunk_result b = how == 0   ? dechunk(buf, len, len, 0, keep, o2)
                                      : how == 1 ? dechunk(buf, len, cut, 0, keep, o2)
                                                 : dechunk(buf, len, 0, 1, keep, o2);
            CHECK(a.rc == b.rc && a.err == b.err && a.outlen == b.outlen);
            CHECK(memcmp(o1, o2, a.outlen) == 0);
            if (a.rc == MOAT_DONE)
                CHECK(a.consumed == b.consumed);
            if (keep && b.rc == MOAT_DONE) {
                /* the section is what lies between the last-chunk line and the final CRLF */
                CHECK(b.sec_off + b.sec_len + 2 == b.consumed);
            }
        }
    }
    free(o1);
    free(o2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A private copy of exactly <size> bytes so ASan flags any read past the end. */
    char *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    size_t cut = size ? ((size_t)data[0] * 257u + (size_t)data[size - 1]) % (size + 1) : 0;

    static const struct moat_h1_limits roomy = {8192, 16384, MAXH};
    static const struct moat_h1_limits tight = {40, 120, 4};
    fuzz_request(buf, size, &roomy, cut);
    fuzz_request(buf, size, &tight, cut);
    fuzz_response(buf, size, &roomy, cut);
    fuzz_response(buf, size, &tight, cut);
    fuzz_chunked(buf, size, cut);

    /* the helpers must cope with any value too */
    size_t pos = 0;
    struct moat_str el;
    size_t guard = 0;
    while (moat_h1_list_next(moat_str_make(buf, size), &pos, &el)) {
        CHECK(el.len > 0 && el.ptr >= buf && el.ptr + el.len <= buf + size);
        CHECK(++guard <= size);
    }
    free(buf);
    return 0;
}
