/* policy.h: RFC 9111 (HTTP caching), 5861 (stale-*), 9213 (targeted fields) decisions, pure. */
#ifndef MOAT_CACHE_POLICY_H
#define MOAT_CACHE_POLICY_H

#include "core/common.h"
#include "http/h1.h"

/* Everything here is a pure function of its arguments: no clock, no allocation, no global
 * state (the one exception: RFC 850 two-digit years read the wall clock, see
 * moat_http_date_parse). Times are Unix seconds (int64_t); HTTP has one-second resolution. */

/* ---- Cache-Control (RFC 9111 5.2) ----------------------------------------------------- */

#define MOAT_CC_NO_STORE         0x0001u /* no-store */
#define MOAT_CC_NO_CACHE         0x0002u /* no-cache, with or without a field list */
#define MOAT_CC_NO_CACHE_FIELDS  0x0004u /* no-cache="..." was seen (also sets NO_CACHE) */
#define MOAT_CC_PRIVATE          0x0008u /* private, with or without a field list */
#define MOAT_CC_PUBLIC           0x0010u /* public */
#define MOAT_CC_MUST_REVALIDATE  0x0020u /* must-revalidate */
#define MOAT_CC_PROXY_REVALIDATE 0x0040u /* proxy-revalidate */
#define MOAT_CC_IMMUTABLE        0x0080u /* immutable (RFC 8246) */
#define MOAT_CC_ONLY_IF_CACHED   0x0100u /* only-if-cached (request) */
#define MOAT_CC_MUST_UNDERSTAND  0x0200u /* must-understand */
#define MOAT_CC_NO_TRANSFORM     0x0400u /* no-transform */
#define MOAT_CC_DUPLICATE        0x0800u /* a delta directive appeared twice with two values */
#define MOAT_CC_INVALID          0x1000u /* a directive had an invalid argument */
#define MOAT_CC_PARSE_ERROR      0x2000u /* syntax junk (unterminated quote, "=x", ...) */
#define MOAT_CC_TARGETED                                                                           \
    0x4000u /* came from a targeted field (RFC 9213): Expires                                      \
               must be ignored */

/* RFC 9111 1.2.2: delta-seconds too large to represent are taken as 2^31. */
#define MOAT_CC_DELTA_MAX 2147483648LL

/* Parsed Cache-Control. Delta fields are -1 when absent. */
struct moat_cache_cc {
    uint32_t flags;    /* MOAT_CC_* */
    int64_t max_age;   /* max-age (both sides) */
    int64_t s_maxage;  /* s-maxage (response) */
    int64_t swr;       /* stale-while-revalidate (response, RFC 5861 3) */
    int64_t sie;       /* stale-if-error (response and request, RFC 5861 4) */
    int64_t max_stale; /* max-stale (request); MOAT_CC_DELTA_MAX when given without value */
    int64_t min_fresh; /* min-fresh (request) */
};

/* Resets <cc> to "no directives". */
void moat_cache_cc_init(struct moat_cache_cc *cc);

/* Adds the directives of one Cache-Control field value <v> to <cc> (call once per field
 * line; the lines of one message accumulate). Never fails: junk is flagged and skipped.
 * Rules: names are case-insensitive; unknown directives are ignored; arguments may be a
 * token or a quoted-string (the quoted form "max-age=\"5\"" is accepted although senders
 * must not produce it). Conservative handling of bad input (RFC 9111 4.2.1): max-age or
 * s-maxage that is invalid, or given twice with different values, becomes 0 (the response
 * is stale at once) and sets MOAT_CC_INVALID / MOAT_CC_DUPLICATE; a bad stale-while-
 * revalidate or stale-if-error is dropped (no stale serving); duplicates of the grace and
 * request directives keep the most restrictive value. no-cache="f" and private="f" are
 * treated as plain no-cache and private: moat does not cache a response minus some fields,
 * so the field list only costs us hit ratio, never correctness. */
void moat_cache_cc_add(struct moat_cache_cc *cc, struct moat_str v);

/* Where the response-side directives came from. */
enum moat_cache_cc_src {
    MOAT_CC_SRC_NONE = 0, /* no Cache-Control at all */
    MOAT_CC_SRC_CACHE_CONTROL,
    MOAT_CC_SRC_MOAT, /* the configured moat-specific targeted field */
    MOAT_CC_SRC_CDN,  /* CDN-Cache-Control */
};

/* Fills <cc> with the directives that govern moat as a shared cache for a response with
 * headers <hdrs,n>. RFC 9213: the first present and valid field of [<targeted> (e.g.
 * "Moat-Cache-Control"; empty = none), "CDN-Cache-Control"] replaces Cache-Control and
 * Expires entirely (MOAT_CC_TARGETED is then set so the freshness computation skips
 * Expires). A targeted field that is empty or has a syntax error is ignored (RFC 9213 2.1),
 * and the next candidate is tried. Returns which field was used. */
enum moat_cache_cc_src moat_cache_cc_response(struct moat_cache_cc *cc, const struct moat_hdr *hdrs,
                                              size_t n, struct moat_str targeted);

/* Fills <cc> from the request's Cache-Control lines (Pragma is ignored, as RFC 9111
 * deprecates it). */
void moat_cache_cc_request(struct moat_cache_cc *cc, const struct moat_hdr *hdrs, size_t n);

/* ---- HTTP-date (RFC 9110 5.6.7) -------------------------------------------------------- */

#define MOAT_HTTP_DATE_LEN 29 /* "Sun, 06 Nov 1994 08:49:37 GMT" */

/* Parses an IMF-fixdate, or the obsolete RFC 850 and asctime forms that recipients must
 * accept. Leading/trailing whitespace is tolerated, day names are checked for spelling
 * (case-insensitively) but not for agreement with the date. A two-digit RFC 850 year that
 * would lie more than 50 years in the future is taken from the previous century (the
 * only place this module reads the clock). Returns true and sets *<out> on success. */
bool moat_http_date_parse(struct moat_str s, int64_t *out);

/* Writes <t> as IMF-fixdate into <buf> (MOAT_HTTP_DATE_LEN bytes, plus a NUL terminator,
 * so buf must hold 30 bytes). Returns MOAT_HTTP_DATE_LEN. Negative <t> prints the epoch. */
size_t moat_http_date_format(int64_t t, char *buf);

/* ---- Storability (RFC 9111 3) ---------------------------------------------------------- */

#define MOAT_CACHE_CFG_STORE_SET_COOKIE                                                            \
    0x1u /* store responses with Set-Cookie (the integrator                                        \
            must then strip Set-Cookie from the copy) */
#define MOAT_CACHE_CFG_STORE_VALIDATED                                                             \
    0x2u /* store responses that have no freshness but a                                           \
            validator (ETag / Last-Modified): they are                                             \
            stale at once and revalidated every time */

struct moat_cache_policy_cfg {
    int64_t heuristic_max; /* cap of the heuristic lifetime (seconds); default 86400 */
    unsigned flags;        /* MOAT_CACHE_CFG_* */
};

/* Defaults: heuristic_max 1 day, no flags. */
void moat_cache_policy_cfg_default(struct moat_cache_policy_cfg *cfg);

/* Why a response is not stored. Stable names for logs: moat_cache_nostore_name(). */
enum moat_cache_nostore {
    MOAT_NOSTORE_NONE = 0,      /* storable */
    MOAT_NOSTORE_METHOD,        /* not GET or HEAD */
    MOAT_NOSTORE_STATUS,        /* not final, 304, or not understood with must-understand */
    MOAT_NOSTORE_PARTIAL,       /* 206: moat stores only whole representations */
    MOAT_NOSTORE_NO_STORE,      /* response no-store */
    MOAT_NOSTORE_REQ_NO_STORE,  /* request no-store (RFC 9111 5.2.1.5) */
    MOAT_NOSTORE_PRIVATE,       /* response private (moat is a shared cache) */
    MOAT_NOSTORE_AUTHORIZATION, /* request Authorization without public/must-revalidate/
                                   s-maxage (RFC 9111 3.5) */
    MOAT_NOSTORE_SET_COOKIE,    /* Set-Cookie and no MOAT_CACHE_CFG_STORE_SET_COOKIE */
    MOAT_NOSTORE_VARY_STAR,     /* Vary: * can never match (RFC 9111 4.1) */
    MOAT_NOSTORE_NO_FRESHNESS,  /* no explicit freshness, status not heuristically cacheable */
    MOAT_NOSTORE_COUNT
};

const char *moat_cache_nostore_name(enum moat_cache_nostore r);

/* True for the statuses RFC 9110 15.1 marks heuristically cacheable: 200 203 204 206 300
 * 301 308 404 405 410 414 501. */
bool moat_cache_status_heuristic(int status);

/* Decides whether a response may be stored by a shared cache (RFC 9111 3, 3.5, 4.1).
 * <meth> is the request method, <req_cc> / <resp_cc> the parsed Cache-Control (resp_cc as
 * given by moat_cache_cc_response). HEAD passes the method check, but a cache object must
 * hold a GET response: the integrator forwards HEAD misses as GET (Varnish does the same).
 * Returns MOAT_NOSTORE_NONE when storable, otherwise the first reason found. */
enum moat_cache_nostore moat_cache_storable(const struct moat_cache_policy_cfg *cfg,
                                            enum moat_method meth, int status,
                                            const struct moat_cache_cc *req_cc,
                                            const struct moat_hdr *req_hdrs, size_t nreq,
                                            const struct moat_cache_cc *resp_cc,
                                            const struct moat_hdr *resp_hdrs, size_t nresp);

/* ---- Freshness and age (RFC 9111 4.2, RFC 5861) ---------------------------------------- */

#define MOAT_META_MUST_REVALIDATE                                                                  \
    0x01u                             /* must-revalidate, proxy-revalidate or s-maxage:            \
                                         never serve stale (RFC 9111 5.2.2.2/8/10) */
#define MOAT_META_NO_CACHE      0x02u /* response no-cache: validate before every use */
#define MOAT_META_IMMUTABLE     0x04u /* immutable */
#define MOAT_META_HEURISTIC     0x08u /* lifetime is heuristic (RFC 9111 4.2.2) */
#define MOAT_META_HAS_VALIDATOR 0x10u /* ETag or Last-Modified present */
#define MOAT_META_INVALIDATED   0x20u /* soft-purged: treat as stale from now on */

/* What the cache keeps about a stored response to decide later, without its headers. Kept
 * small (48 bytes: it sits in every cached object): the RFC 9111 4.2.3 inputs that do not
 * change (Age value, request and response times, Date) are folded into initial_age once. */
struct moat_cache_meta {
    int64_t resp_time;     /* when the response head was received (response_time) */
    int64_t date;          /* Date value, resp_time when absent or invalid */
    int64_t last_modified; /* Last-Modified, -1 when absent */
    int32_t initial_age;   /* corrected_initial_age (RFC 9111 4.2.3) */
    int32_t lifetime;      /* freshness lifetime in seconds (clamped to INT32_MAX) */
    int32_t swr;           /* stale-while-revalidate window, 0 = none */
    int32_t sie;           /* stale-if-error window, 0 = none */
    uint32_t flags;        /* MOAT_META_* */
};

/* The freshness lifetime (RFC 9111 4.2.1): s-maxage, else max-age, else Expires - Date,
 * else (heuristically cacheable status only) 10% of Date - Last-Modified capped at
 * cfg->heuristic_max, else 0. Expires is skipped when <cc> is MOAT_CC_TARGETED; several or
 * invalid Expires mean "already expired" (RFC 9111 5.3). A missing or invalid Date is
 * replaced by <resp_time>, the time the response was received. *<heuristic> (may be NULL)
 * tells whether the heuristic was used. */
int64_t moat_cache_freshness_lifetime(const struct moat_cache_policy_cfg *cfg, int status,
                                      const struct moat_cache_cc *cc, const struct moat_hdr *hdrs,
                                      size_t n, int64_t resp_time, bool *heuristic);

/* Fills <m> for a response received at <resp_time> for a request sent at <req_time>. */
void moat_cache_meta_init(struct moat_cache_meta *m, const struct moat_cache_policy_cfg *cfg,
                          int status, const struct moat_cache_cc *cc, const struct moat_hdr *hdrs,
                          size_t n, int64_t req_time, int64_t resp_time);

/* current_age (RFC 9111 4.2.3) at <now>; moat_cache_meta_init computed
 *   apparent_age = max(0, response_time - date_value)
 *   corrected_initial_age = max(apparent_age, age_value + response_time - request_time)
 * and this adds resident_time:
 *   current_age = corrected_initial_age + (now - response_time) */
int64_t moat_cache_current_age(const struct moat_cache_meta *m, int64_t now);

/* What to do with a stored response for a request. */
enum moat_cache_fresh {
    MOAT_CACHE_FRESH = 0,        /* serve it */
    MOAT_CACHE_STALE_OK,         /* stale, but the client accepts it (max-stale): serve */
    MOAT_CACHE_STALE_SWR,        /* stale within stale-while-revalidate: serve it and
                                    refresh in the background (one refresher per object) */
    MOAT_CACHE_STALE_REVALIDATE, /* must validate first: conditional request upstream */
    MOAT_CACHE_MUST_FORWARD,     /* unusable and no validator: plain request upstream */
    MOAT_CACHE_ONLY_IF_CACHED,   /* unusable and the client said only-if-cached: 504 */
};

const char *moat_cache_fresh_name(enum moat_cache_fresh f);

/* Decides for a stored response <m> against the request directives <req> at <now>.
 * Order: response no-cache or request no-cache -> validate; request max-age, min-fresh
 * narrow "fresh"; when stale: must-revalidate/proxy-revalidate/s-maxage forbid any stale
 * use; request max-stale accepts stale up to its value (STALE_OK); otherwise the
 * stale-while-revalidate window gives STALE_SWR (not when the request asked for max-age or
 * min-fresh, which mean "I want fresh"); otherwise validate (or forward if there is no
 * validator). only-if-cached turns the last two into ONLY_IF_CACHED. */
enum moat_cache_fresh moat_cache_decide(const struct moat_cache_meta *m,
                                        const struct moat_cache_cc *req, int64_t now);

/* RFC 5861 4: may this stale response be served because the origin failed (5xx, timeout,
 * refused)? True when it is within the response's stale-if-error window (or the request's,
 * when the request carries one) and must-revalidate does not forbid it. */
bool moat_cache_stale_if_error_ok(const struct moat_cache_meta *m, const struct moat_cache_cc *req,
                                  int64_t now);

/* ---- Accept-Encoding (RFC 9110 12.5.3) ---------------------------------------------- */

/* The content codings moat normalises Accept-Encoding to, as bits. */
#define MOAT_AE_GZIP 0x1u /* gzip (and its alias x-gzip, RFC 9110 8.4.1.3) */
#define MOAT_AE_BR   0x2u /* br (RFC 7932) */
#define MOAT_AE_ZSTD 0x4u /* zstd (RFC 8878) */
#define MOAT_AE_ALL  0x7u

/* Which of gzip, br and zstd the request's Accept-Encoding lines in <hdrs,n> accept with a
 * weight above 0, as MOAT_AE_* bits. Several lines are one list; coding names and "q" are
 * case-insensitive; OWS is allowed around elements and ';'. A coding listed with q=0
 * anywhere is refused; one whose weight does not parse (not a qvalue: "0" or "1" with at
 * most three decimals) is refused too, as narrowing is always safe. "*" stands for every
 * coding not listed by name (refused by "*;q=0"). "identity" and unknown codings add
 * nothing. No Accept-Encoding, or an empty one, gives 0. */
unsigned moat_cache_ae_accepted(const struct moat_hdr *hdrs, size_t n);

/* The canonical Accept-Encoding value for the bits <codings>: the accepted codings in the
 * fixed order "gzip, br, zstd", or "identity" for none. Points to static storage. */
struct moat_str moat_cache_ae_value(unsigned codings);

/* ---- Vary (RFC 9111 4.1) -------------------------------------------------------------- */

/* Builds the variant key of a request for a response whose Vary lines are in <resp_hdrs>:
 * the named request fields, lowercased names sorted and de-duplicated, each with its
 * values (several lines joined by ",", whitespace around commas removed), an absent field
 * marked distinctly from an empty one. When <ae> is not NULL it is the request's
 * Accept-Encoding as the integrator forwarded it (moat_cache_ae_value), and it is used in
 * place of the request's own Accept-Encoding lines. Writes the normalized string into
 * <buf,cap> (*<len> set) and its XXH3 hash into *<hash>; the string is what the store
 * should append to the primary key so that a hash collision can never mix variants. No Vary
 * gives an empty key (hash of ""). Returns MOAT_OK; MOAT_DECLINED for "Vary: *" (not
 * storable); MOAT_ERR when the key does not fit in <cap> or names more than 32 fields (do
 * not store). */
int moat_cache_vary_key(const struct moat_hdr *resp_hdrs, size_t nresp,
                        const struct moat_hdr *req_hdrs, size_t nreq, const struct moat_str *ae,
                        char *buf, size_t cap, size_t *len, uint64_t *hash);

/* ---- Conditional requests against a stored response (RFC 9110 13.2.2) ------------------ */

/* Evaluates If-Match, If-Unmodified-Since, If-None-Match, If-Modified-Since in the RFC 9110
 * 13.2.2 order against the stored validators: <etag> (the ETag field value, empty if none)
 * and <last_modified> (-1 if none; <date> is used in its place for If-Modified-Since, as
 * RFC 9111 4.3.2 says). If-None-Match uses the weak comparison and lists; "*" matches any
 * stored response; If-Modified-Since is ignored when If-None-Match is present, when it is
 * not a valid date, or the method is not GET/HEAD. Returns 0 (serve the response
 * normally), 304 or 412. */
int moat_cache_conditional(enum moat_method meth, const struct moat_hdr *req_hdrs, size_t n,
                           struct moat_str etag, int64_t last_modified, int64_t date);

/* Weak (RFC 9110 8.8.3.2) comparison of two entity-tags. */
bool moat_cache_etag_weak_eq(struct moat_str a, struct moat_str b);
/* Strong comparison: both strong and equal. */
bool moat_cache_etag_strong_eq(struct moat_str a, struct moat_str b);

/* ---- Range (RFC 9110 14) ------------------------------------------------------------ */

enum moat_cache_range {
    MOAT_RANGE_NONE = 0,      /* ignore the Range field: serve 200 with the whole body */
    MOAT_RANGE_OK,            /* serve 206 with bytes [*first, *last] */
    MOAT_RANGE_UNSATISFIABLE, /* 416 with Content-Range: bytes * / len */
};

/* Interprets a Range field value against a body of <len> bytes. Only one range is served:
 * "bytes=a-b", "bytes=a-", "bytes=-n" (b is clamped to len-1, a suffix longer than the body
 * means the whole body). Several ranges, other units and syntax errors give
 * MOAT_RANGE_NONE (RFC 9110 14.2 allows ignoring Range; multipart/byteranges is not worth
 * its cost at the edge). */
enum moat_cache_range moat_cache_range_parse(struct moat_str v, uint64_t len, uint64_t *first,
                                             uint64_t *last);

/* If-Range (RFC 9110 13.1.5): true when the range may be honoured: <v> is a strong
 * entity-tag equal to <etag>, or an HTTP-date exactly equal to <last_modified>. */
bool moat_cache_if_range_ok(struct moat_str v, struct moat_str etag, int64_t last_modified);

#endif
