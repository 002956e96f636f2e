/* h1.c: moat's strict RFC 9112 HTTP/1.1 parser: request and response heads, chunked bodies. */
#include "http/h1.h"

#include <limits.h>

/* One 256-entry class table instead of range tests: a single load and mask per byte.
 * Generated once (scripts would only hide it); each bit is one character class. */
#define C_TCHAR  0x01u /* tchar (RFC 9110 5.6.2): header names, methods, tokens */
#define C_VALUE  0x02u /* field-value byte: VCHAR, obs-text, SP, HTAB */
#define C_TARGET 0x04u /* request-target byte: VCHAR except '#' (no fragment on the wire) */
#define C_HEX    0x08u /* HEXDIG */
#define C_DIGIT  0x10u /* DIGIT */
#define C_REG    0x20u /* reg-name byte: unreserved, sub-delims, '%' */
#define C_QDTEXT 0x40u /* qdtext (RFC 9110 5.6.4) */

static const uint8_t ctype[256] = {
    0,   0,   0,   0,   0,   0,   0,   0,   0,   66,  0,   0,   0,   0,   0,   0,   /* 0x00 */
    0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   /* 0x10 */
    66,  103, 6,   67,  103, 103, 103, 103, 102, 102, 103, 103, 102, 103, 103, 70,  /* 0x20 */
    127, 127, 127, 127, 127, 127, 127, 127, 127, 127, 70,  102, 70,  102, 70,  70,  /* 0x30 */
    70,  111, 111, 111, 111, 111, 111, 103, 103, 103, 103, 103, 103, 103, 103, 103, /* 0x40 */
    103, 103, 103, 103, 103, 103, 103, 103, 103, 103, 103, 70,  6,   70,  71,  103, /* 0x50 */
    71,  111, 111, 111, 111, 111, 111, 103, 103, 103, 103, 103, 103, 103, 103, 103, /* 0x60 */
    103, 103, 103, 103, 103, 103, 103, 103, 103, 103, 103, 70,  71,  70,  103, 0,   /* 0x70 */
    66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  /* 0x80 */
    66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  /* 0x90 */
    66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  /* 0xa0 */
    66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  /* 0xb0 */
    66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  /* 0xc0 */
    66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  /* 0xd0 */
    66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  /* 0xe0 */
    66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  66,  /* 0xf0 */
};

#define CT(c)    (ctype[(uint8_t)(c)])
#define IS_WS(c) ((c) == ' ' || (c) == '\t')

/* ---- fast scans -------------------------------------------------------------------------- */

/* SWAR: test 8 bytes at once for any byte that ends a fast scan. has_less() and has_byte()
 * answer "is there such a byte in this word" exactly (the Bit Twiddling Hacks hasless and
 * haszero, valid for n <= 128); the byte loop then finds which one. The unaligned load goes
 * through memcpy, one mov on x86-64 and arm64. This is what lets us validate every byte of
 * a value without a second pass after memchr: a typical header value costs a handful of
 * word steps. SSE4.2 PCMPESTRI (picohttpparser) would be faster still on long values, but
 * ties the code to x86; the word loop is portable and already well under the syscall cost. */
#define ONES  0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

static inline uint64_t load64(const char *p)
{
    uint64_t x;
    memcpy(&x, p, sizeof x);
    return x;
}

static inline uint64_t has_less(uint64_t x, unsigned n)
{
    return (x - ONES * n) & ~x & HIGHS;
}

static inline uint64_t has_byte(uint64_t x, unsigned b)
{
    uint64_t y = x ^ (ONES * b);
    return (y - ONES) & ~y & HIGHS;
}

/* The lowest flagged byte of a has_less()/has_byte() mask is exact (borrows only run
 * upwards), so on little-endian machines its index is ctz / 8: no byte loop to find it. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define SWAR_LOCATE 1
#else
#define SWAR_LOCATE 0
#endif

/* Returns the first byte at or after <p> that is not a field-value byte (C_VALUE), or
 * <end>. An HTAB (allowed, but < 0x20) flags its word; we step over it and go on. */
static const char *scan_value(const char *p, const char *end)
{
    while (end - p >= 8) {
        uint64_t x = load64(p);
        uint64_t m = has_less(x, 0x20) | has_byte(x, 0x7f);
        if (m) {
            if (!SWAR_LOCATE)
                break;
            const char *q = p + (__builtin_ctzll(m) >> 3);
            if (*q != '\t')
                return q;
            p = q + 1;
            continue;
        }
        p += 8;
    }
    while (p < end && (CT(*p) & C_VALUE))
        p++;
    return p;
}

/* Same for request-target bytes (C_TARGET: 0x21..0x7e except '#'). */
static const char *scan_target(const char *p, const char *end)
{
    while (end - p >= 8) {
        uint64_t x = load64(p);
        uint64_t m = (x & HIGHS) | has_less(x, 0x21) | has_byte(x, 0x7f) | has_byte(x, '#');
        if (m) {
            if (SWAR_LOCATE)
                return p + (__builtin_ctzll(m) >> 3);
            break;
        }
        p += 8;
    }
    while (p < end && (CT(*p) & C_TARGET))
        p++;
    return p;
}

/* ---- small validators -------------------------------------------------------------------- */

static inline bool ieq_lit(const char *p, const char *lc, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 'A' && c <= 'Z')
            c |= 0x20;
        if (c != (unsigned char)lc[i])
            return false;
    }
    return true;
}
#define NAME_IS(s, lit) ((s).len == sizeof(lit) - 1 && ieq_lit((s).ptr, (lit), sizeof(lit) - 1))

static bool is_token(struct moat_str s)
{
    if (s.len == 0)
        return false;
    for (size_t i = 0; i < s.len; i++)
        if (!(CT(s.ptr[i]) & C_TCHAR))
            return false;
    return true;
}

/* uri-host [ ":" port ] (RFC 9110 7.2, RFC 3986 3.2.2). reg-name exactly as RFC 3986 has it
 * (unreserved, sub-delims, pct-encoded); IPv4 literals are a subset of that. An IP-literal
 * is checked for its alphabet and shape ("::" at most once, 2..7 colons, <= 45 bytes), not
 * for every IPv6 grammar rule: the routing layer only ever compares it as a string.
 * IPvFuture is refused. The port, when there, is 1..5 digits <= 65535; an empty port
 * ("host:") is refused although RFC 3986 allows it, as nothing legitimate sends it. */
static bool valid_authority(struct moat_str a, bool need_port)
{
    const char *p = a.ptr, *end = a.ptr + a.len;
    if (p == end)
        return false;
    if (*p == '[') {
        const char *q = p + 1;
        int colons = 0;
        bool dbl = false;
        while (q < end && *q != ']') {
            if (*q == ':') {
                colons++;
                if (q + 1 < end && q[1] == ':') {
                    if (dbl)
                        return false;
                    dbl = true;
                }
            } else if (!(CT(*q) & C_HEX) && *q != '.') {
                return false;
            }
            q++;
        }
        if (q == end || colons < 2 || colons > 7 || q - p - 1 > 45)
            return false;
        p = q + 1;
    } else {
        while (p < end && (CT(*p) & C_REG)) {
            if (*p == '%') {
                if (end - p < 3 || !(CT(p[1]) & C_HEX) || !(CT(p[2]) & C_HEX))
                    return false;
                p += 2;
            }
            p++;
        }
        if (p == a.ptr)
            return false;
    }
    if (p == end)
        return !need_port;
    if (*p++ != ':' || p == end || end - p > 5)
        return false;
    unsigned port = 0;
    for (; p < end; p++) {
        if (!(CT(*p) & C_DIGIT))
            return false;
        port = port * 10 + (unsigned)(*p - '0');
    }
    return port <= 65535;
}

enum moat_method moat_http_method_id(const char *p, size_t n)
{
    switch (n) {
    case 3:
        if (memcmp(p, "GET", 3) == 0)
            return MOAT_M_GET;
        if (memcmp(p, "PUT", 3) == 0)
            return MOAT_M_PUT;
        break;
    case 4:
        if (memcmp(p, "POST", 4) == 0)
            return MOAT_M_POST;
        if (memcmp(p, "HEAD", 4) == 0)
            return MOAT_M_HEAD;
        break;
    case 5:
        if (memcmp(p, "PATCH", 5) == 0)
            return MOAT_M_PATCH;
        if (memcmp(p, "TRACE", 5) == 0)
            return MOAT_M_TRACE;
        break;
    case 6:
        if (memcmp(p, "DELETE", 6) == 0)
            return MOAT_M_DELETE;
        break;
    case 7:
        if (memcmp(p, "OPTIONS", 7) == 0)
            return MOAT_M_OPTIONS;
        if (memcmp(p, "CONNECT", 7) == 0)
            return MOAT_M_CONNECT;
        break;
    }
    return MOAT_M_OTHER;
}

/* ---- header fields ----------------------------------------------------------------------- */

/* What the field loop learns about framing and connection handling along the way. */
struct fstate {
    unsigned flags;
    uint64_t cl;
    bool is_req;
    bool cl_seen;
    bool te_seen;
    bool te_chunked; /* "chunked" seen in Transfer-Encoding */
    bool te_other;   /* another coding seen before it (responses only get this far) */
    unsigned hosts;
    struct moat_str host;
};

/* Content-Length = 1*DIGIT (RFC 9110 8.6), <= 2^63-1. No sign, no list, no inner space;
 * the surrounding OWS was stripped with the value. */
static bool parse_cl(struct moat_str v, uint64_t *out)
{
    if (v.len == 0 || v.len > 19)
        return false;
    uint64_t n = 0;
    for (size_t i = 0; i < v.len; i++) {
        unsigned d = (unsigned)(unsigned char)v.ptr[i] - '0';
        if (d > 9)
            return false;
        n = n * 10 + d; /* 19 digits cannot overflow 64 bits */
    }
    if (n > (uint64_t)INT64_MAX)
        return false;
    *out = n;
    return true;
}

/* Transfer-Encoding elements, combined across fields in order. Unlike the generic list
 * rule, empty elements are an error here: "chunked," and ",chunked" are classic smuggling
 * probes and nothing legitimate sends them. An element is a token with optional
 * ";"-parameters; "chunked" must be bare, last and single. */
static enum moat_h1_err te_field(struct fstate *fs, struct moat_str v)
{
    const char *p = v.ptr, *end = v.ptr + v.len;
    fs->te_seen = true;
    for (;;) {
        while (p < end && IS_WS(*p))
            p++;
        const char *s = p;
        while (p < end && *p != ',')
            p++;
        const char *e = p;
        while (e > s && IS_WS(e[-1]))
            e--;
        if (e == s)
            return MOAT_H1_BAD_TRANSFER_ENCODING;
        const char *t = s;
        while (t < e && (CT(*t) & C_TCHAR))
            t++;
        if (t == s)
            return MOAT_H1_BAD_TRANSFER_ENCODING;
        if (fs->te_chunked) /* anything after chunked, including chunked again */
            return MOAT_H1_BAD_TRANSFER_ENCODING;
        bool chunked = (t - s) == 7 && ieq_lit(s, "chunked", 7);
        if (t != e) {
            /* parameters: only legal after a coding other than chunked */
            const char *q = t;
            while (q < e && IS_WS(*q))
                q++;
            if (chunked || q == e || *q != ';')
                return MOAT_H1_BAD_TRANSFER_ENCODING;
            for (; q < e; q++)
                if (!(CT(*q) & C_VALUE))
                    return MOAT_H1_BAD_TRANSFER_ENCODING;
        }
        if (chunked) {
            if (fs->te_other) /* "gzip, chunked": a coding we would have to undo */
                return MOAT_H1_UNKNOWN_TRANSFER_CODING;
            fs->te_chunked = true;
        } else {
            if (fs->is_req)
                return MOAT_H1_UNKNOWN_TRANSFER_CODING;
            fs->te_other = true;
        }
        if (p == end)
            return MOAT_H1_OK;
        p++; /* the comma */
    }
}

/* The fields moat itself acts on; dispatch on length first so most names cost one switch. */
static enum moat_h1_err field_special(struct fstate *fs, struct moat_str n, struct moat_str v)
{
    size_t pos;
    struct moat_str el;

    switch (n.len) {
    case 4:
        if (fs->is_req && NAME_IS(n, "host")) {
            if (fs->hosts++ > 0 || !valid_authority(v, false))
                return MOAT_H1_BAD_HOST;
            fs->host = v;
        }
        break;
    case 6:
        if (fs->is_req && NAME_IS(n, "expect")) {
            pos = 0;
            while (moat_h1_list_next(v, &pos, &el))
                fs->flags |= MOAT_STR_IEQ_LIT(el, "100-continue") ? MOAT_H1_F_EXPECT_100
                                                                  : MOAT_H1_F_EXPECT_OTHER;
        }
        break;
    case 7:
        if (NAME_IS(n, "upgrade"))
            fs->flags |= MOAT_H1_F_UPGRADE;
        break;
    case 10:
        if (NAME_IS(n, "connection")) {
            pos = 0;
            while (moat_h1_list_next(v, &pos, &el)) {
                if (!is_token(el))
                    return MOAT_H1_BAD_HEADER_VALUE;
                if (MOAT_STR_IEQ_LIT(el, "close"))
                    fs->flags |= MOAT_H1_F_CONN_CLOSE;
                else if (MOAT_STR_IEQ_LIT(el, "keep-alive"))
                    fs->flags |= MOAT_H1_F_CONN_KEEP;
                else if (MOAT_STR_IEQ_LIT(el, "upgrade"))
                    fs->flags |= MOAT_H1_F_CONN_UPGRADE;
                else
                    fs->flags |= MOAT_H1_F_CONN_OTHER;
            }
        }
        break;
    case 14:
        if (NAME_IS(n, "content-length")) {
            if (fs->cl_seen)
                return MOAT_H1_DUP_CONTENT_LENGTH;
            fs->cl_seen = true;
            if (!parse_cl(v, &fs->cl))
                return MOAT_H1_BAD_CONTENT_LENGTH;
        }
        break;
    case 17:
        if (NAME_IS(n, "transfer-encoding"))
            return te_field(fs, v);
        break;
    }
    return MOAT_H1_OK;
}

/* Parses header fields from *<pp> up to the blank line. Returns MOAT_OK with *<pp> just
 * after the final CRLF, MOAT_AGAIN if <end> came first, MOAT_ERR with *<err>. */
static int parse_fields(const char **pp, const char *end, size_t max, struct moat_hdr *hdrs,
                        size_t *nhdrs, struct fstate *fs, enum moat_h1_err *err)
{
    const char *p = *pp;
    size_t n = 0;
    enum moat_h1_err e;

    for (;;) {
        if (p == end)
            return MOAT_AGAIN;
        char c = *p;
        if (c == '\r') {
            if (end - p < 2)
                return MOAT_AGAIN;
            if (p[1] != '\n') {
                e = MOAT_H1_BAD_HEADER_NAME;
                goto fail;
            }
            *pp = p + 2;
            *nhdrs = n;
            return MOAT_OK;
        }
        if (c == '\n') {
            e = MOAT_H1_BARE_LF;
            goto fail;
        }
        if (IS_WS(c)) {
            /* After a field it is obs-fold; right after the start line it is the
             * "whitespace before the first field" attack of RFC 9112 2.2. Both rejected. */
            e = n ? MOAT_H1_OBS_FOLD : MOAT_H1_BAD_HEADER_NAME;
            goto fail;
        }
        if (n == max) {
            e = MOAT_H1_TOO_MANY_HEADERS;
            goto fail;
        }
        /* Find the colon a word at a time, then check the name bytes branch-free: the
         * byte loop that stops at the first non-tchar mispredicts once per field, which
         * was a fifth of the whole parse. If the colon is not where a valid name would
         * end, the slow path below says why. */
        const char *name = p;
        while (end - p >= 8 && !has_byte(load64(p), ':'))
            p += 8;
        while (p < end && *p != ':')
            p++;
        unsigned ok = C_TCHAR;
        for (const char *q = name; q < p; q++)
            ok &= CT(*q);
        if (moat_unlikely(!(ok & C_TCHAR) || p == end || p == name)) {
            p = name;
            while (p < end && (CT(*p) & C_TCHAR))
                p++;
            if (p == end)
                return MOAT_AGAIN;
            if (*p != ':' || p == name) {
                e = *p == '\n' ? MOAT_H1_BARE_LF : MOAT_H1_BAD_HEADER_NAME;
                goto fail;
            }
        }
        size_t name_len = (size_t)(p - name);
        p++;
        while (p < end && IS_WS(*p))
            p++;
        const char *val = p;
        p = scan_value(p, end);
        if (p == end)
            return MOAT_AGAIN;
        if (*p != '\r') {
            e = *p == '\n' ? MOAT_H1_BARE_LF : MOAT_H1_BAD_HEADER_VALUE;
            goto fail;
        }
        if (end - p < 2)
            return MOAT_AGAIN;
        if (p[1] != '\n') {
            e = MOAT_H1_BAD_HEADER_VALUE;
            goto fail;
        }
        const char *vend = p;
        while (vend > val && IS_WS(vend[-1]))
            vend--;
        p += 2;
        hdrs[n].name = moat_str_make(name, name_len);
        hdrs[n].value = moat_str_make(val, (size_t)(vend - val));
        e = field_special(fs, hdrs[n].name, hdrs[n].value);
        n++;
        if (moat_unlikely(e != MOAT_H1_OK))
            goto fail;
    }
fail:
    *nhdrs = n;
    *err = e;
    return MOAT_ERR;
}

/* ---- request ----------------------------------------------------------------------------- */

/* Splits an origin-form-like "path[?query]" span. */
static void split_path(const char *p, const char *end, struct moat_str *path,
                       struct moat_str *query)
{
    const char *q = memchr(p, '?', (size_t)(end - p));
    if (q) {
        *path = moat_str_make(p, (size_t)(q - p));
        *query = moat_str_make(q + 1, (size_t)(end - q - 1));
    } else {
        *path = moat_str_make(p, (size_t)(end - p));
        *query = moat_str_make(end, 0);
    }
}

/* absolute-form (RFC 9112 3.2.2): only http and https, no userinfo, non-empty host. The
 * "/" for an empty path is a static string, not a span of the buffer. */
static bool parse_absolute(struct moat_h1_req *req, struct moat_str *authority)
{
    const char *p = req->target.ptr, *end = p + req->target.len;
    size_t n = req->target.len;
    if (n >= 7 && ieq_lit(p, "http://", 7))
        p += 7;
    else if (n >= 8 && ieq_lit(p, "https://", 8))
        p += 8;
    else
        return false;
    const char *a = p;
    while (p < end && *p != '/' && *p != '?')
        p++;
    *authority = moat_str_make(a, (size_t)(p - a));
    if (!valid_authority(*authority, false))
        return false;
    if (p < end && *p == '/') {
        split_path(p, end, &req->path, &req->query);
    } else {
        req->path = MOAT_STR("/");
        req->query = p < end ? moat_str_make(p + 1, (size_t)(end - p - 1)) : moat_str_make(end, 0);
    }
    return true;
}

int moat_h1_parse_request(const char *buf, size_t len, const struct moat_h1_limits *lim,
                          struct moat_h1_req *req, enum moat_h1_err *err)
{
    /* Never look past head_bytes: a head that is not complete by then is 431 whatever
     * follows, and the scan stays bounded however much the client sends. */
    size_t cap = MOAT_MIN(len, lim->head_bytes);
    if (cap > INT_MAX)
        cap = INT_MAX;
    const char *p = buf, *end = buf + cap;
    enum moat_h1_err e;
    struct fstate fs = {.is_req = true};

    req->method = req->target = req->path = req->query = req->host = MOAT_STR_NULL;
    req->meth = MOAT_M_OTHER;
    req->minor = 0;
    req->flags = 0;
    req->content_length = 0;
    req->nhdrs = 0;
    req->head_len = 0;
    *err = MOAT_H1_OK;

    /* RFC 9112 2.2: ignore empty lines before the request line (bounded by head_bytes). */
    while (p < end && *p == '\r') {
        if (end - p < 2)
            goto again;
        if (p[1] != '\n') {
            e = MOAT_H1_BAD_REQUEST_LINE;
            goto fail;
        }
        p += 2;
    }
    if (p < end && *p == '\n') {
        e = MOAT_H1_BARE_LF;
        goto fail;
    }

    /* The request line is scanned in a window of request_line + CRLF bytes: hitting its
     * end with more bytes available means the line is too long (414) before it is
     * complete, so an endless line is cut off at the limit. */
    const char *ls = p;
    size_t avail = (size_t)(end - p);
    size_t win = lim->request_line <= SIZE_MAX - 2 ? lim->request_line + 2 : SIZE_MAX;
    bool capped = avail >= win;
    const char *lend = capped ? p + win : end;

    const char *m = p;
    while (p < lend && (CT(*p) & C_TCHAR))
        p++;
    if (p == lend)
        goto line_short;
    if (*p != ' ' || p == m) {
        e = p == m || *p == '\r' ? MOAT_H1_BAD_REQUEST_LINE
            : *p == '\n'         ? MOAT_H1_BARE_LF
                                 : MOAT_H1_BAD_METHOD;
        goto fail;
    }
    req->method = moat_str_make(m, (size_t)(p - m));
    req->meth = moat_http_method_id(m, (size_t)(p - m));

    const char *t = ++p;
    p = scan_target(p, lend);
    if (p == lend)
        goto line_short;
    if (*p != ' ' || p == t) {
        e = p == t || *p == '\r' ? MOAT_H1_BAD_REQUEST_LINE /* double SP, or no version */
            : *p == '\n'         ? MOAT_H1_BARE_LF
                                 : MOAT_H1_BAD_TARGET;
        goto fail;
    }
    req->target = moat_str_make(t, (size_t)(p - t));
    p++;

    /* "HTTP/" DIGIT "." DIGIT CRLF, checked on whatever prefix is there so that a bad
     * version or a bare LF is answered at once instead of waiting for more bytes. */
    static const char tmpl[] = "HTTP/#.#\r\n";
    for (int i = 0; i < 10; i++) {
        if (p + i == lend)
            goto line_short;
        char c = p[i];
        if (tmpl[i] == '#' ? !(CT(c) & C_DIGIT) : c != tmpl[i]) {
            /* c == ' ': a second SP after the target or an extra one after the version */
            e = c == '\n'            ? MOAT_H1_BARE_LF
                : i == 9 || c == ' ' ? MOAT_H1_BAD_REQUEST_LINE
                                     : MOAT_H1_BAD_VERSION;
            goto fail;
        }
    }
    if ((size_t)(p + 8 - ls) > lim->request_line) {
        e = MOAT_H1_URI_TOO_LONG;
        goto fail;
    }
    /* RFC 9110 2.5: a higher minor version of HTTP/1 is understood as the highest we
     * implement, 1.1. Another major version (0.9, 2.0, 3.x sent as text) is 505. */
    if (p[5] != '1') {
        e = MOAT_H1_VERSION_UNSUPPORTED;
        goto fail;
    }
    req->minor = p[7] == '0' ? 0 : 1;
    p += 10;

    /* request-target forms (RFC 9112 3.2) */
    struct moat_str abs_host = MOAT_STR_NULL;
    const char *tend = req->target.ptr + req->target.len;
    if (req->meth == MOAT_M_CONNECT) {
        if (!valid_authority(req->target, true)) {
            e = MOAT_H1_BAD_TARGET;
            goto fail;
        }
        req->path = req->query = moat_str_make(tend, 0);
    } else if (*t == '/') {
        split_path(t, tend, &req->path, &req->query);
    } else if (*t == '*' && req->target.len == 1) {
        if (req->meth != MOAT_M_OPTIONS) {
            e = MOAT_H1_BAD_TARGET;
            goto fail;
        }
        req->path = req->target;
        req->query = moat_str_make(tend, 0);
    } else {
        if (!parse_absolute(req, &abs_host)) {
            e = MOAT_H1_BAD_TARGET;
            goto fail;
        }
        req->flags |= MOAT_H1_F_ABSOLUTE;
    }

    int rc = parse_fields(&p, end, lim->max_headers, req->hdrs, &req->nhdrs, &fs, &e);
    if (rc == MOAT_AGAIN)
        goto again;
    if (rc != MOAT_OK)
        goto fail;

    if (fs.te_seen) {
        if (fs.cl_seen) {
            e = MOAT_H1_CL_AND_TE;
            goto fail;
        }
        if (req->minor == 0) {
            e = MOAT_H1_TE_ON_HTTP10;
            goto fail;
        }
        fs.flags |= MOAT_H1_F_CHUNKED; /* te_field() let nothing else through */
    } else if (fs.cl_seen) {
        fs.flags |= MOAT_H1_F_HAS_CL;
        req->content_length = fs.cl;
    }
    if (req->minor == 1 && fs.hosts == 0) {
        e = MOAT_H1_BAD_HOST;
        goto fail;
    }
    req->host = (req->flags & MOAT_H1_F_ABSOLUTE) ? abs_host : fs.host;
    req->flags |= fs.flags;
    req->head_len = (size_t)(p - buf);
    return (int)req->head_len;

line_short:
    if (capped) {
        e = MOAT_H1_URI_TOO_LONG;
        goto fail;
    }
again:
    if (len >= lim->head_bytes) {
        e = MOAT_H1_HEADERS_TOO_LARGE;
        goto fail;
    }
    return MOAT_AGAIN;
fail:
    *err = e;
    return MOAT_ERR;
}

/* ---- response ---------------------------------------------------------------------------- */

int moat_h1_parse_response(const char *buf, size_t len, const struct moat_h1_limits *lim,
                           struct moat_h1_resp *resp, enum moat_h1_err *err)
{
    size_t cap = MOAT_MIN(len, lim->head_bytes);
    if (cap > INT_MAX)
        cap = INT_MAX;
    const char *p = buf, *end = buf + cap;
    enum moat_h1_err e;
    struct fstate fs = {.is_req = false};

    resp->status = 0;
    resp->reason = MOAT_STR_NULL;
    resp->minor = 0;
    resp->flags = 0;
    resp->content_length = 0;
    resp->nhdrs = 0;
    resp->head_len = 0;
    *err = MOAT_H1_OK;

    /* "HTTP/" DIGIT "." DIGIT SP 3DIGIT, then CRLF or SP reason CRLF. No leading empty
     * lines: RFC 9112 2.2 allows skipping them before a request line only. */
    static const char tmpl[] = "HTTP/#.# ###";
    for (int i = 0; i < 12; i++) {
        if (p + i == end)
            goto again;
        char c = p[i];
        if (tmpl[i] == '#' ? !(CT(c) & C_DIGIT) : c != tmpl[i]) {
            e = c == '\n' ? MOAT_H1_BARE_LF : MOAT_H1_BAD_STATUS_LINE;
            goto fail;
        }
    }
    if (p[5] != '1') {
        e = MOAT_H1_VERSION_UNSUPPORTED;
        goto fail;
    }
    resp->minor = p[7] == '0' ? 0 : 1;
    resp->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    if (resp->status < 100) {
        e = MOAT_H1_BAD_STATUS_LINE;
        goto fail;
    }
    p += 12;
    if (p == end)
        goto again;
    const char *r = p;
    if (*p == ' ') {
        r = ++p;
        p = scan_value(p, end);
        if (p == end)
            goto again;
    }
    if (*p != '\r') {
        e = *p == '\n' ? MOAT_H1_BARE_LF : MOAT_H1_BAD_STATUS_LINE;
        goto fail;
    }
    if (end - p < 2)
        goto again;
    if (p[1] != '\n') {
        e = MOAT_H1_BAD_STATUS_LINE;
        goto fail;
    }
    resp->reason = moat_str_make(r, (size_t)(p - r));
    p += 2;

    int rc = parse_fields(&p, end, lim->max_headers, resp->hdrs, &resp->nhdrs, &fs, &e);
    if (rc == MOAT_AGAIN)
        goto again;
    if (rc != MOAT_OK)
        goto fail;

    if (fs.te_seen) {
        if (fs.cl_seen) {
            e = MOAT_H1_CL_AND_TE;
            goto fail;
        }
        if (resp->minor == 0) {
            e = MOAT_H1_TE_ON_HTTP10;
            goto fail;
        }
        /* chunked final: chunked framing; otherwise (te_field() guarantees no chunked at
         * all) the body is read until close, RFC 9112 6.3 rule 4. */
        if (fs.te_chunked)
            fs.flags |= MOAT_H1_F_CHUNKED;
    } else if (fs.cl_seen) {
        fs.flags |= MOAT_H1_F_HAS_CL;
        resp->content_length = fs.cl;
    }
    resp->flags = fs.flags;
    resp->head_len = (size_t)(p - buf);
    return (int)resp->head_len;

again:
    if (len >= lim->head_bytes) {
        e = MOAT_H1_HEADERS_TOO_LARGE;
        goto fail;
    }
    return MOAT_AGAIN;
fail:
    *err = e;
    return MOAT_ERR;
}

/* ---- chunked ----------------------------------------------------------------------------- */

/* States of the chunked decoder; 0 is the start so a zeroed struct is ready to use. */
enum {
    CH_SIZE0 = 0,   /* first hex digit of a chunk size */
    CH_SIZE,        /* more hex digits, BWS, ';' or CR */
    CH_SIZE_WS,     /* BWS after the size: only ';' may follow */
    CH_EXT_PRE,     /* after ';': BWS, then an extension name */
    CH_EXT_NAME,    /* in a name */
    CH_EXT_NAME_WS, /* BWS after a name: '=' or ';' must follow */
    CH_EXT_EQ,      /* after '=': BWS, then a token or a quoted-string */
    CH_EXT_TOKEN,   /* in a token value */
    CH_EXT_QS,      /* in a quoted-string value */
    CH_EXT_QS_ESC,  /* after a backslash in it */
    CH_EXT_AFTER,   /* right after a value: BWS, ';' or CR */
    CH_EXT_VAL_WS,  /* BWS after a value: only ';' may follow */
    CH_SIZE_LF,     /* LF ending the size line */
    CH_DATA,        /* chunk data, <remaining> bytes */
    CH_DATA_CR,     /* CRLF after the data */
    CH_DATA_LF,
    CH_TRL_START, /* start of a trailer line, or the final CRLF */
    CH_TRL_NAME,
    CH_TRL_VALUE,
    CH_TRL_LF,
    CH_END_LF, /* LF of the final CRLF */
    CH_DONE,
    CH_ERROR,
};

/* A size line (size, extensions, CRLF) longer than this is refused: extensions carry
 * nothing moat uses and an unbounded line is a way to keep a connection busy. */
#define CH_MAX_LINE        4096
#define CH_DEFAULT_TRAILER 8192

void moat_h1_chunked_init(struct moat_h1_chunked *st, size_t max_trailer)
{
    memset(st, 0, sizeof *st);
    st->max_trailer = max_trailer;
}

/* Validates trailer-section bytes from *<pp> to <end> (states CH_TRL_START .. CH_END_LF),
 * each counted in trailer_bytes against the limit before it is looked at. Both modes run
 * this one loop, so a section is judged the same whether it is dropped or kept. Returns
 * MOAT_DONE with *<pp> just past the final LF, MOAT_AGAIN with *<pp> = <end>, or MOAT_ERR
 * with *<err> set and *<pp> past the offending byte (at it for the limit). */
static int trl_scan(struct moat_h1_chunked *st, const char **pp, const char *end,
                    enum moat_h1_err *err)
{
    size_t max_trailer = st->max_trailer ? st->max_trailer : CH_DEFAULT_TRAILER;
    const char *p = *pp;
    enum moat_h1_err e = MOAT_H1_BAD_CHUNK;
    char c = 0;

    while (p < end) {
        c = 0; /* a limit hit is not about the byte that hit it */
        if (++st->trailer_bytes > max_trailer) {
            e = MOAT_H1_TRAILERS_TOO_LARGE;
            goto fail;
        }
        c = *p++;
        unsigned ct = CT(c);
        switch (st->state) {
        case CH_TRL_START:
            if (c == '\r') {
                st->state = CH_END_LF;
            } else if (ct & C_TCHAR) {
                st->state = CH_TRL_NAME;
            } else {
                e = IS_WS(c) ? MOAT_H1_OBS_FOLD : MOAT_H1_BAD_HEADER_NAME;
                goto fail;
            }
            break;
        case CH_TRL_NAME:
            if (c == ':') {
                st->state = CH_TRL_VALUE;
            } else if (!(ct & C_TCHAR)) {
                e = MOAT_H1_BAD_HEADER_NAME;
                goto fail;
            }
            break;
        case CH_TRL_VALUE:
            if (c == '\r') {
                st->state = CH_TRL_LF;
            } else if (!(ct & C_VALUE)) {
                e = MOAT_H1_BAD_HEADER_VALUE;
                goto fail;
            }
            break;
        case CH_TRL_LF:
            if (c != '\n') {
                e = MOAT_H1_BAD_HEADER_VALUE;
                goto fail;
            }
            st->state = CH_TRL_START;
            break;
        case CH_END_LF:
            if (c != '\n')
                goto fail;
            st->state = CH_DONE;
            *pp = p;
            return MOAT_DONE;
        default:
            goto fail;
        }
    }
    *pp = p;
    return MOAT_AGAIN;

fail:
    /* A bare LF is reported as such wherever CRLF was due or LF was simply not allowed. */
    if (c == '\n')
        e = MOAT_H1_BARE_LF;
    st->state = CH_ERROR;
    *pp = p;
    *err = e;
    return MOAT_ERR;
}

int moat_h1_chunked_decode(struct moat_h1_chunked *st, const char *in, size_t len, size_t *consumed,
                           struct moat_str *data, enum moat_h1_err *err)
{
    const char *p = in, *end = in + len;
    enum moat_h1_err e = MOAT_H1_BAD_CHUNK;
    char c = 0;

    *data = moat_str_make(in, 0);
    *err = MOAT_H1_OK;
    if (st->state == CH_DONE) {
        *consumed = 0;
        return MOAT_DONE;
    }
    if (st->state == CH_ERROR) {
        *consumed = 0;
        goto fail_noc;
    }
    if (st->state >= CH_TRL_START && st->keep_trailers) {
        *consumed = 0;
        return MOAT_H1_TRAILERS;
    }

    while (p < end) {
        int s = st->state;
        if (s == CH_DATA) {
            size_t n = (size_t)(end - p);
            if (n > st->remaining)
                n = (size_t)st->remaining;
            *data = moat_str_make(p, n);
            p += n;
            st->remaining -= n;
            if (st->remaining == 0)
                st->state = CH_DATA_CR;
            *consumed = (size_t)(p - in);
            return MOAT_OK;
        }
        if (s >= CH_TRL_START) {
            int rc = trl_scan(st, &p, end, err);
            *consumed = (size_t)(p - in);
            return rc;
        }
        c = 0; /* a limit hit below is not about the byte that hit it */
        if (s < CH_DATA && ++st->line_bytes > CH_MAX_LINE)
            goto fail;
        c = *p++;
        unsigned ct = CT(c);
        switch (s) {
        case CH_SIZE0:
            if (!(ct & C_HEX))
                goto fail;
            st->remaining =
                (ct & C_DIGIT) ? (uint64_t)(c - '0') : (uint64_t)((c | 0x20) - 'a' + 10);
            st->state = CH_SIZE;
            break;
        case CH_SIZE:
            if (ct & C_HEX) {
                /* <= 2^63-1: anything bigger is no real body and would overflow signed
                 * arithmetic in callers that add it to offsets. */
                if (st->remaining >> 59) {
                    e = MOAT_H1_CHUNK_TOO_LARGE;
                    goto fail;
                }
                st->remaining =
                    (st->remaining << 4) |
                    ((ct & C_DIGIT) ? (uint64_t)(c - '0') : (uint64_t)((c | 0x20) - 'a' + 10));
            } else if (IS_WS(c)) {
                st->state = CH_SIZE_WS;
            } else if (c == ';') {
                st->state = CH_EXT_PRE;
            } else if (c == '\r') {
                st->state = CH_SIZE_LF;
            } else {
                goto fail;
            }
            break;
        case CH_SIZE_WS:
        case CH_EXT_VAL_WS:
            if (c == ';')
                st->state = CH_EXT_PRE;
            else if (!IS_WS(c))
                goto fail;
            break;
        case CH_EXT_PRE:
            if (ct & C_TCHAR)
                st->state = CH_EXT_NAME;
            else if (!IS_WS(c))
                goto fail;
            break;
        case CH_EXT_NAME:
        case CH_EXT_NAME_WS:
            if (c == '=')
                st->state = CH_EXT_EQ;
            else if (c == ';')
                st->state = CH_EXT_PRE;
            else if (IS_WS(c))
                st->state = CH_EXT_NAME_WS;
            else if (s == CH_EXT_NAME && (ct & C_TCHAR))
                ;
            else if (s == CH_EXT_NAME && c == '\r')
                st->state = CH_SIZE_LF;
            else
                goto fail;
            break;
        case CH_EXT_EQ:
            if (c == '"')
                st->state = CH_EXT_QS;
            else if (ct & C_TCHAR)
                st->state = CH_EXT_TOKEN;
            else if (!IS_WS(c))
                goto fail;
            break;
        case CH_EXT_TOKEN:
        case CH_EXT_AFTER:
            if (s == CH_EXT_TOKEN && (ct & C_TCHAR))
                ;
            else if (IS_WS(c))
                st->state = CH_EXT_VAL_WS;
            else if (c == ';')
                st->state = CH_EXT_PRE;
            else if (c == '\r')
                st->state = CH_SIZE_LF;
            else
                goto fail;
            break;
        case CH_EXT_QS:
            if (c == '"')
                st->state = CH_EXT_AFTER;
            else if (c == '\\')
                st->state = CH_EXT_QS_ESC;
            else if (!(ct & C_QDTEXT))
                goto fail;
            break;
        case CH_EXT_QS_ESC:
            if (!(ct & C_VALUE))
                goto fail;
            st->state = CH_EXT_QS;
            break;
        case CH_SIZE_LF:
            if (c != '\n')
                goto fail;
            st->line_bytes = 0;
            st->state = st->remaining ? CH_DATA : CH_TRL_START;
            if (!st->remaining && st->keep_trailers) {
                /* The caller takes the section whole (moat_h1_chunked_trailers). */
                *consumed = (size_t)(p - in);
                return MOAT_H1_TRAILERS;
            }
            break;
        case CH_DATA_CR:
            if (c != '\r')
                goto fail;
            st->state = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            if (c != '\n')
                goto fail;
            st->state = CH_SIZE0;
            break;
        default:
            goto fail;
        }
    }
    *consumed = len;
    return MOAT_AGAIN;

fail:
    /* A bare LF is reported as such wherever CRLF was due or LF was simply not allowed. */
    if (c == '\n')
        e = MOAT_H1_BARE_LF;
    st->state = CH_ERROR;
    *consumed = (size_t)(p - in);
fail_noc:
    *err = e;
    return MOAT_ERR;
}

int moat_h1_chunked_trailers(struct moat_h1_chunked *st, const char *in, size_t len,
                             size_t *consumed, struct moat_str *section, enum moat_h1_err *err)
{
    *consumed = 0;
    *section = moat_str_make(in, 0);
    *err = MOAT_H1_OK;
    if (st->state == CH_DONE)
        return MOAT_DONE;
    if (st->state < CH_TRL_START || st->state == CH_ERROR || !st->keep_trailers) {
        *err = MOAT_H1_BAD_CHUNK; /* failed before, or not at the trailers at all */
        return MOAT_ERR;
    }
    /* The first trailer_bytes bytes of <in> were validated by earlier calls: resume after
     * them, so a section that arrives a byte at a time costs linear time, not quadratic. */
    if (len <= st->trailer_bytes)
        return MOAT_AGAIN;
    const char *p = in + st->trailer_bytes;
    int rc = trl_scan(st, &p, in + len, err);
    if (rc == MOAT_DONE) {
        *consumed = (size_t)(p - in);
        *section = moat_str_make(in, *consumed - 2); /* without the final CRLF */
    }
    return rc;
}

/* ---- helpers ----------------------------------------------------------------------------- */

static const struct {
    const char *name;
    int status;
} errs[MOAT_H1_ERR_COUNT] = {
    [MOAT_H1_OK] = {"ok", 200},
    [MOAT_H1_BAD_REQUEST_LINE] = {"bad_request_line", 400},
    [MOAT_H1_BAD_METHOD] = {"bad_method", 400},
    [MOAT_H1_BAD_TARGET] = {"bad_target", 400},
    [MOAT_H1_URI_TOO_LONG] = {"uri_too_long", 414},
    [MOAT_H1_BAD_VERSION] = {"bad_version", 400},
    [MOAT_H1_VERSION_UNSUPPORTED] = {"version_unsupported", 505},
    [MOAT_H1_BARE_LF] = {"bare_lf", 400},
    [MOAT_H1_BAD_HEADER_NAME] = {"bad_header_name", 400},
    [MOAT_H1_BAD_HEADER_VALUE] = {"bad_header_value", 400},
    [MOAT_H1_OBS_FOLD] = {"obs_fold", 400},
    [MOAT_H1_HEADERS_TOO_LARGE] = {"headers_too_large", 431},
    [MOAT_H1_TOO_MANY_HEADERS] = {"too_many_headers", 431},
    [MOAT_H1_BAD_CONTENT_LENGTH] = {"bad_content_length", 400},
    [MOAT_H1_DUP_CONTENT_LENGTH] = {"dup_content_length", 400},
    [MOAT_H1_CL_AND_TE] = {"cl_and_te", 400},
    [MOAT_H1_BAD_TRANSFER_ENCODING] = {"bad_transfer_encoding", 400},
    [MOAT_H1_UNKNOWN_TRANSFER_CODING] = {"unknown_transfer_coding", 501},
    [MOAT_H1_TE_ON_HTTP10] = {"te_on_http10", 400},
    [MOAT_H1_BAD_HOST] = {"bad_host", 400},
    [MOAT_H1_BAD_STATUS_LINE] = {"bad_status_line", 502},
    [MOAT_H1_BAD_CHUNK] = {"bad_chunk", 400},
    [MOAT_H1_CHUNK_TOO_LARGE] = {"chunk_too_large", 400},
    [MOAT_H1_TRAILERS_TOO_LARGE] = {"trailers_too_large", 431},
};

int moat_h1_err_status(enum moat_h1_err e)
{
    if ((unsigned)e >= MOAT_H1_ERR_COUNT)
        return 400;
    return errs[e].status;
}

const char *moat_h1_err_name(enum moat_h1_err e)
{
    if ((unsigned)e >= MOAT_H1_ERR_COUNT)
        return "unknown";
    return errs[e].name;
}

const struct moat_hdr *moat_h1_find(const struct moat_hdr *hdrs, size_t n, struct moat_str name)
{
    for (size_t i = 0; i < n; i++)
        if (moat_str_ieq(hdrs[i].name, name))
            return &hdrs[i];
    return NULL;
}

/* Elements are separated by commas outside quoted-strings; empty elements and the OWS
 * around elements are skipped, as RFC 9110 5.6.1 asks of recipients. */
bool moat_h1_list_next(struct moat_str v, size_t *pos, struct moat_str *elem)
{
    size_t i = *pos;
    while (i < v.len && (IS_WS(v.ptr[i]) || v.ptr[i] == ','))
        i++;
    if (i >= v.len) {
        *pos = v.len;
        return false;
    }
    size_t s = i;
    bool quoted = false;
    for (; i < v.len; i++) {
        char c = v.ptr[i];
        if (quoted) {
            if (c == '\\' && i + 1 < v.len)
                i++;
            else if (c == '"')
                quoted = false;
        } else if (c == '"') {
            quoted = true;
        } else if (c == ',') {
            break;
        }
    }
    size_t e = i;
    while (e > s && IS_WS(v.ptr[e - 1]))
        e--;
    *pos = i;
    *elem = moat_str_make(v.ptr + s, e - s);
    return true;
}

static struct moat_str trim_ows(const char *p, size_t n)
{
    while (n && IS_WS(p[0]))
        p++, n--;
    while (n && IS_WS(p[n - 1]))
        n--;
    return moat_str_make(p, n);
}

/* Cookie values are not quoted-string aware: RFC 6265's cookie-octet excludes ';' even
 * inside DQUOTEs, so ';' always ends a pair. */
bool moat_h1_cookie_next(struct moat_str v, size_t *pos, struct moat_str *name,
                         struct moat_str *val)
{
    size_t i = *pos;
    while (i < v.len) {
        const char *semi = memchr(v.ptr + i, ';', v.len - i);
        size_t end = semi ? (size_t)(semi - v.ptr) : v.len;
        struct moat_str pair = trim_ows(v.ptr + i, end - i);
        i = semi ? end + 1 : v.len;
        if (!pair.len)
            continue;
        const char *eq = memchr(pair.ptr, '=', pair.len);
        size_t nl = eq ? (size_t)(eq - pair.ptr) : pair.len;
        *name = trim_ows(pair.ptr, nl);
        *val = eq ? trim_ows(eq + 1, pair.len - nl - 1) : moat_str_make(pair.ptr + pair.len, 0);
        *pos = i;
        return true;
    }
    *pos = v.len;
    return false;
}

bool moat_http_conn_names(const struct moat_hdr *hdrs, size_t n, struct moat_str name)
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
