/* h1.h: moat's own strict RFC 9112 HTTP/1.1 parser: request and response heads, chunked bodies.
 *
 * Zero-copy: every moat_str in the results points into the caller's buffer, which must stay
 * unchanged while the results are used. The head parsers are not incremental: the caller
 * calls them again on the whole buffer when more bytes arrive (picohttpparser's model); they
 * return MOAT_AGAIN quickly when the end of the head is not there yet. Strictness is the
 * point: anything ambiguous is an error with the HTTP status to answer, never a guess. */
#ifndef MOAT_HTTP_H1_H
#define MOAT_HTTP_H1_H

#include "core/common.h"

/* Methods moat knows by id; anything else that is a valid token is MOAT_M_OTHER. */
enum moat_method {
    MOAT_M_OTHER = 0,
    MOAT_M_GET,
    MOAT_M_HEAD,
    MOAT_M_POST,
    MOAT_M_PUT,
    MOAT_M_DELETE,
    MOAT_M_OPTIONS,
    MOAT_M_PATCH,
    MOAT_M_CONNECT,
    MOAT_M_TRACE,
};

/* Why a parse failed. Each value maps to one HTTP status (moat_h1_err_status) and one name
 * (moat_h1_err_name) for logs and metrics. */
enum moat_h1_err {
    MOAT_H1_OK = 0,
    MOAT_H1_BAD_REQUEST_LINE,        /* 400: malformed request line */
    MOAT_H1_BAD_METHOD,              /* 400: method not a token */
    MOAT_H1_BAD_TARGET,              /* 400: request-target has forbidden bytes or form */
    MOAT_H1_URI_TOO_LONG,            /* 414: request line longer than limits.request_line */
    MOAT_H1_BAD_VERSION,             /* 400: not "HTTP/" DIGIT "." DIGIT */
    MOAT_H1_VERSION_UNSUPPORTED,     /* 505: HTTP/2.0 on an h1 connection, HTTP/0.9, HTTP/3.x ... */
    MOAT_H1_BARE_LF,                 /* 400: LF without CR where CRLF is required */
    MOAT_H1_BAD_HEADER_NAME,         /* 400: empty name, non-token byte, whitespace before colon */
    MOAT_H1_BAD_HEADER_VALUE,        /* 400: CTL (other than HTAB) or DEL in a field value */
    MOAT_H1_OBS_FOLD,                /* 400: line folding (obs-fold) */
    MOAT_H1_HEADERS_TOO_LARGE,       /* 431: head bytes over limits.head_bytes */
    MOAT_H1_TOO_MANY_HEADERS,        /* 431: more fields than limits.max_headers */
    MOAT_H1_BAD_CONTENT_LENGTH,      /* 400: not 1*DIGIT ("+5", "5, 5", "0x5"), or > 2^63-1 */
    MOAT_H1_DUP_CONTENT_LENGTH,      /* 400: several Content-Length fields (even if equal) */
    MOAT_H1_CL_AND_TE,               /* 400: Content-Length together with Transfer-Encoding */
    MOAT_H1_BAD_TRANSFER_ENCODING,   /* 400: chunked not last, chunked twice, empty element,
                                        parameters on chunked, non-token junk ("chunked,",
                                        "chunked, gzip", "chunked;x=1", "\"chunked\""). A
                                        well-formed unknown token such as "xchunked" is
                                        UNKNOWN_TRANSFER_CODING; "chunked\v" fails earlier as
                                        BAD_HEADER_VALUE (a CTL in any value) */
    MOAT_H1_UNKNOWN_TRANSFER_CODING, /* 501: a transfer coding other than chunked */
    MOAT_H1_TE_ON_HTTP10,            /* 400: Transfer-Encoding on an HTTP/1.0 message */
    MOAT_H1_BAD_HOST,                /* 400: missing (HTTP/1.1), duplicated or malformed Host */
    MOAT_H1_BAD_STATUS_LINE,         /* 502 (moat_h1_err_status says 502): malformed status
                                        line, status < 100 */
    MOAT_H1_BAD_CHUNK,               /* 400 (502 on the response side): malformed chunk framing */
    MOAT_H1_CHUNK_TOO_LARGE,         /* 400: chunk size overflows 63 bits */
    MOAT_H1_TRAILERS_TOO_LARGE,      /* 431 */
    MOAT_H1_ERR_COUNT
};

/* Bounds, all configurable (config: limits.*). */
struct moat_h1_limits {
    size_t request_line; /* max bytes of the request line without CRLF (414 beyond) */
    size_t head_bytes;   /* max bytes of the whole head including the blank line (431) */
    size_t max_headers;  /* max number of header fields (431); also the capacity the caller
                            must provide in hdrs[] */
};

struct moat_hdr {
    struct moat_str name;  /* as sent (case preserved), never empty */
    struct moat_str value; /* leading/trailing SP/HTAB stripped, may be empty */
};

/* Connection-level facts the parser derives from the head so no caller re-scans headers. */
#define MOAT_H1_F_CHUNKED      0x0001u /* Transfer-Encoding: chunked (final coding) */
#define MOAT_H1_F_HAS_CL       0x0002u /* a valid Content-Length was present */
#define MOAT_H1_F_CONN_CLOSE   0x0004u /* Connection: close token */
#define MOAT_H1_F_CONN_KEEP    0x0008u /* Connection: keep-alive token */
#define MOAT_H1_F_CONN_UPGRADE 0x0010u /* Connection: upgrade token */
#define MOAT_H1_F_UPGRADE      0x0020u /* an Upgrade field is present */
#define MOAT_H1_F_EXPECT_100   0x0040u /* Expect: 100-continue (case-insensitive) */
#define MOAT_H1_F_EXPECT_OTHER 0x0080u /* Expect with any other value (caller answers 417) */
#define MOAT_H1_F_ABSOLUTE     0x0100u /* request-target in absolute-form */
#define MOAT_H1_F_CONN_OTHER                                                                       \
    0x0200u /* Connection names a token other than close,                                          \
               keep-alive, upgrade (a field to drop as hop-by-hop) */

struct moat_h1_req {
    struct moat_str method; /* token */
    enum moat_method meth;
    struct moat_str target;  /* the request-target exactly as sent */
    struct moat_str path;    /* origin-form path (for absolute-form: the path part, "/" if
                                empty; that "/" is a static string, not in the buffer); for
                                asterisk-form "*"; for authority-form empty */
    struct moat_str query;   /* after '?', without it; empty if none */
    struct moat_str host;    /* the Host field value; for absolute-form the authority of the
                                target (RFC 9112 3.2.2: the target's authority wins) */
    int minor;               /* 0 or 1: HTTP/1.minor */
    unsigned flags;          /* MOAT_H1_F_* */
    uint64_t content_length; /* valid when flags & MOAT_H1_F_HAS_CL */
    struct moat_hdr *hdrs;   /* caller-provided array of limits.max_headers entries */
    size_t nhdrs;
    size_t head_len; /* bytes of the head including the final CRLFCRLF */
};

struct moat_h1_resp {
    int status; /* 100..999 */
    struct moat_str reason;
    int minor;
    unsigned flags; /* MOAT_H1_F_* (CHUNKED, HAS_CL, CONN_*, UPGRADE) */
    uint64_t content_length;
    struct moat_hdr *hdrs;
    size_t nhdrs;
    size_t head_len;
};

/* Parses a request head from <buf,len>. <req->hdrs> must point to an array of
 * <lim->max_headers> entries. Returns the head length (>0) when a whole, valid head is
 * there; MOAT_AGAIN when more bytes are needed (and the limits are not yet exceeded);
 * MOAT_ERR on a bad head, with *<err> set (moat_h1_err_status() gives the status to answer).
 * Leading empty lines (CRLF) before the request line are skipped as RFC 9112 2.2 allows and
 * are counted in the returned length. Validates: method token, request-target (origin,
 * absolute, authority only with CONNECT, asterisk only with OPTIONS; no CTL, SP, DEL or
 * bytes >= 0x80 in it), version, header name tokens, value bytes, Host (exactly one for 1.1,
 * at most one for 1.0, valid authority syntax), Content-Length (digits, no list, no
 * duplicates), Transfer-Encoding (only "chunked", once, case-insensitive, no other coding;
 * none on HTTP/1.0; never together with Content-Length). */
int moat_h1_parse_request(const char *buf, size_t len, const struct moat_h1_limits *lim,
                          struct moat_h1_req *req, enum moat_h1_err *err);

/* Parses a response head, same contract as moat_h1_parse_request. Responses are treated a
 * little more liberally where RFC 9112 allows a recipient to (an empty reason phrase, a
 * status line without reason), but never about framing: Content-Length and
 * Transfer-Encoding rules are as strict as for requests, since a response that a proxy
 * frames wrong poisons the connection. On the response side Transfer-Encoding with a coding
 * other than chunked as the final one means "read until close" (RFC 9112 6.3 rule 4) and
 * is reported as MOAT_H1_F_CHUNKED clear, MOAT_H1_F_HAS_CL clear, no error. */
int moat_h1_parse_response(const char *buf, size_t len, const struct moat_h1_limits *lim,
                           struct moat_h1_resp *resp, enum moat_h1_err *err);

/* Incremental chunked-body decoder. Zero it (or call moat_h1_chunked_init) before the body. */
struct moat_h1_chunked {
    int state;            /* internal */
    uint64_t remaining;   /* bytes left in the current chunk's data */
    size_t trailer_bytes; /* trailer bytes seen, bounded by max_trailer; with keep_trailers
                             also how much of the held section is validated already */
    size_t max_trailer;   /* limit for the trailer section (default 8 KiB when 0) */
    size_t line_bytes;    /* bytes of the current size / extension line (bounded) */
    bool keep_trailers;   /* opt-in, set before the body: hand the trailer section to the
                             caller (moat_h1_chunked_trailers) instead of dropping it */
};

void moat_h1_chunked_init(struct moat_h1_chunked *st, size_t max_trailer);

/* moat_h1_chunked_decode's answer with keep_trailers: the last chunk is done and the trailer
 * section starts right after *<consumed>. It is the project's MOAT_DECLINED ("not mine"):
 * the section is moat_h1_chunked_trailers' to take, whole. */
#define MOAT_H1_TRAILERS MOAT_DECLINED

/* Decodes from <in,len>. On return *<consumed> bytes of <in> were used and *<data> is a span
 * of payload (inside <in>) that the caller must pass on: non-empty exactly when the result
 * is MOAT_OK, empty otherwise. Call again with the remaining input (possibly none) while it
 * returns MOAT_OK. Returns MOAT_OK (payload in *<data>; more may follow),
 * MOAT_AGAIN (all of <in> consumed, need more input), MOAT_DONE (last chunk and trailers
 * consumed; *<consumed> stops right after the final CRLF, so pipelined bytes that follow
 * are left untouched), MOAT_H1_TRAILERS (only with keep_trailers: *<consumed> stops right
 * after the last-chunk line; later calls return it again consuming nothing), or MOAT_ERR
 * with *<err> set. Chunk extensions are validated and dropped (BWS allowed around ';' and
 * '=' as RFC 9112 7.1.1 has it, but not before the CRLF); without keep_trailers, trailer
 * fields are validated like header fields and dropped. The size is hex without sign, prefix
 * or spaces, at most 2^63-1 (CHUNK_TOO_LARGE beyond); the size line is bounded at 4 KiB
 * (BAD_CHUNK). Bare LF is an error (BARE_LF). After MOAT_DONE further calls return
 * MOAT_DONE consuming nothing; after MOAT_ERR they return MOAT_ERR. */
int moat_h1_chunked_decode(struct moat_h1_chunked *st, const char *in, size_t len, size_t *consumed,
                           struct moat_str *data, enum moat_h1_err *err);

/* Takes the trailer section after moat_h1_chunked_decode returned MOAT_H1_TRAILERS. <in>
 * must start at the section's first byte on every call and hold at least what it held on
 * the previous call (the caller keeps the bytes, adds to them, consumes nothing until
 * MOAT_DONE); the bytes validated before are not looked at again. Returns MOAT_AGAIN
 * (incomplete; *<consumed> = 0), MOAT_DONE with *<section> = the field lines, each ending in
 * CRLF, without the final empty line (empty when there are no trailers; inside <in>) and
 * *<consumed> through the final CRLF (pipelined bytes after it untouched), or MOAT_ERR with
 * *<err> set and *<consumed> = 0. Validation and the max_trailer limit are exactly
 * moat_h1_chunked_decode's for a dropped section: token names, no whitespace before the
 * colon, field-value bytes, OBS_FOLD, BARE_LF, TRAILERS_TOO_LARGE (the section with its
 * final CRLF counted). After MOAT_DONE it returns MOAT_DONE with an empty section; called
 * anywhere but at the trailers, MOAT_ERR (BAD_CHUNK). */
int moat_h1_chunked_trailers(struct moat_h1_chunked *st, const char *in, size_t len,
                             size_t *consumed, struct moat_str *section, enum moat_h1_err *err);

/* The HTTP status to answer for <e> on the request side (400, 414, 431, 501, 505; 502 for
 * BAD_STATUS_LINE). On the response side the proxy answers 502 for any error. */
int moat_h1_err_status(enum moat_h1_err e);
/* A short stable snake_case name for <e> ("bare_lf", "cl_and_te", ...). */
const char *moat_h1_err_name(enum moat_h1_err e);

/* Is <n> a hop-by-hop field (RFC 9110 7.6.1): Connection, Keep-Alive, Proxy-Connection, TE,
 * Transfer-Encoding or Upgrade? moat's one list of them; the framing fields (Content-Length,
 * Trailer) are each caller's to decide. Inline, and a switch on length: it runs for every
 * field of every request and response, and costs one or two comparisons for most. */
/* The method <p,n> (case-sensitive, RFC 9110 9.1), MOAT_M_OTHER when moat has no name for it
 * (HTTP/1's request line and HTTP/2's :method share it). */
enum moat_method moat_http_method_id(const char *p, size_t n);

static inline bool moat_http_hop(struct moat_str n)
{
    switch (n.len) {
    case 2:
        return MOAT_STR_IEQ_LIT(n, "te");
    case 7:
        return MOAT_STR_IEQ_LIT(n, "upgrade");
    case 10:
        return MOAT_STR_IEQ_LIT(n, "connection") || MOAT_STR_IEQ_LIT(n, "keep-alive");
    case 16:
        return MOAT_STR_IEQ_LIT(n, "proxy-connection");
    case 17:
        return MOAT_STR_IEQ_LIT(n, "transfer-encoding");
    default:
        return false;
    }
}
/* Does a Connection field among <hdrs> name <name> (making it hop-by-hop too)? */
bool moat_http_conn_names(const struct moat_hdr *hdrs, size_t n, struct moat_str name);

/* Finds the first header named <name> (case-insensitive); NULL if none. */
const struct moat_hdr *moat_h1_find(const struct moat_hdr *hdrs, size_t n, struct moat_str name);

/* Iterates comma-separated list elements (RFC 9110 5.6.1) of <value>: call with *<pos> = 0;
 * returns true and sets *<elem> (trimmed, never empty) while elements remain. */
bool moat_h1_list_next(struct moat_str value, size_t *pos, struct moat_str *elem);

/* Iterates the cookies of a Cookie field value <value> ("a=1; b=2", RFC 6265 5.4): call with
 * *<pos> = 0; returns true and sets *<name> and *<val> while pairs remain. Pairs are split
 * at ';' and the name at the first '='; OWS around both is dropped, empty pairs are skipped,
 * and a pair without '=' is a name with an empty value (what browsers make of it). */
bool moat_h1_cookie_next(struct moat_str value, size_t *pos, struct moat_str *name,
                         struct moat_str *val);

/* Reason phrase for <status> ("OK", "Not Found", ...); "Unknown" when moat has none. */
struct moat_str moat_http_reason(int status);

#endif
