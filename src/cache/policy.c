/* policy.c: RFC 9111 / 5861 / 9213 caching rules, written as small pure functions. */
#include "cache/policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <xxhash.h>

/* h1.c (moat_h1_find, moat_h1_list_next) is being written in parallel and its list
 * iterator does not honour quoted strings, which Cache-Control ("no-cache=\"a, b\"") and
 * entity-tags (commas are legal inside) need. So this file carries its own small,
 * quote-aware helpers; they cost a few dozen lines and keep the module self-contained. */

static inline unsigned char lc(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c | 0x20) : c;
}

static inline bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static struct moat_str trim(struct moat_str s)
{
    while (s.len && is_ows(s.ptr[0])) {
        s.ptr++;
        s.len--;
    }
    while (s.len && is_ows(s.ptr[s.len - 1]))
        s.len--;
    return s;
}

#define NAME(lit) MOAT_STR(lit)

static bool name_is(struct moat_str name, struct moat_str want)
{
    return moat_str_ieq(name, want);
}

/* Iterates the header lines named <name>, starting at index *<i>. */
static const struct moat_hdr *hdr_next(const struct moat_hdr *h, size_t n, size_t *i,
                                       struct moat_str name)
{
    for (; *i < n; (*i)++)
        if (name_is(h[*i].name, name))
            return &h[(*i)++];
    return NULL;
}

static const struct moat_hdr *hdr_find(const struct moat_hdr *h, size_t n, struct moat_str name)
{
    size_t i = 0;
    return hdr_next(h, n, &i, name);
}

static size_t hdr_count(const struct moat_hdr *h, size_t n, struct moat_str name)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += name_is(h[i].name, name);
    return c;
}

/* Next comma-separated element of <v> from *<pos>, commas inside quoted strings kept.
 * Sets *<bad> when a quoted string is not terminated. Empty elements are skipped
 * (RFC 9110 5.6.1). */
static bool list_next(struct moat_str v, size_t *pos, struct moat_str *elem, bool *bad)
{
    while (*pos < v.len) {
        size_t start = *pos;
        bool inq = false;
        size_t i = start;
        for (; i < v.len; i++) {
            char c = v.ptr[i];
            if (inq) {
                if (c == '\\' && i + 1 < v.len)
                    i++;
                else if (c == '"')
                    inq = false;
            } else if (c == '"') {
                inq = true;
            } else if (c == ',') {
                break;
            }
        }
        if (inq && bad)
            *bad = true;
        *pos = i < v.len ? i + 1 : i;
        struct moat_str e = trim(moat_str_make(v.ptr + start, i - start));
        if (e.len) {
            *elem = e;
            return true;
        }
    }
    return false;
}

static bool is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Parses 1*DIGIT; overflow clamps at MOAT_CC_DELTA_MAX (RFC 9111 1.2.2). -1 if invalid. */
static int64_t parse_delta(struct moat_str s)
{
    if (s.len == 0)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < s.len; i++) {
        if (s.ptr[i] < '0' || s.ptr[i] > '9')
            return -1;
        if (v < MOAT_CC_DELTA_MAX)
            v = v * 10 + (s.ptr[i] - '0');
    }
    return v > MOAT_CC_DELTA_MAX ? MOAT_CC_DELTA_MAX : v;
}

/* ---- Cache-Control ------------------------------------------------------------------- */

void moat_cache_cc_init(struct moat_cache_cc *cc)
{
    cc->flags = 0;
    cc->max_age = cc->s_maxage = cc->swr = cc->sie = -1;
    cc->max_stale = cc->min_fresh = -1;
}

/* Freshness deltas: a second, different value or an invalid one makes the response stale
 * now (value 0), the conservative reading of RFC 9111 4.2.1. */
static void set_freshness(struct moat_cache_cc *cc, int64_t *slot, int64_t v)
{
    if (v < 0) {
        cc->flags |= MOAT_CC_INVALID;
        *slot = 0;
    } else if (*slot >= 0 && *slot != v) {
        cc->flags |= MOAT_CC_DUPLICATE;
        *slot = 0;
    } else {
        *slot = v;
    }
}

/* Permissive deltas (grace windows, request limits): invalid drops it, duplicates keep the
 * smaller (or larger when <keep_max>) value, i.e. the more restrictive one. */
static void set_limit(struct moat_cache_cc *cc, int64_t *slot, int64_t v, bool keep_max)
{
    if (v < 0) {
        cc->flags |= MOAT_CC_INVALID;
        return;
    }
    if (*slot >= 0 && *slot != v) {
        cc->flags |= MOAT_CC_DUPLICATE;
        *slot = keep_max ? MOAT_MAX(*slot, v) : MOAT_MIN(*slot, v);
    } else {
        *slot = v;
    }
}

void moat_cache_cc_add(struct moat_cache_cc *cc, struct moat_str v)
{
    size_t pos = 0;
    struct moat_str e;
    bool bad = false;
    while (list_next(v, &pos, &e, &bad)) {
        struct moat_str name = e, arg = MOAT_STR_NULL;
        bool has_arg = false;
        const char *eq = memchr(e.ptr, '=', e.len);
        if (eq) {
            name = trim(moat_str_make(e.ptr, (size_t)(eq - e.ptr)));
            arg = trim(moat_str_make(eq + 1, e.len - (size_t)(eq - e.ptr) - 1));
            has_arg = true;
        }
        bool ok = name.len > 0;
        for (size_t i = 0; ok && i < name.len; i++)
            ok = is_tchar((unsigned char)name.ptr[i]);
        if (!ok) {
            cc->flags |= MOAT_CC_PARSE_ERROR;
            continue;
        }
        if (has_arg && arg.len && arg.ptr[0] == '"') {
            if (arg.len < 2 || arg.ptr[arg.len - 1] != '"') {
                cc->flags |= MOAT_CC_PARSE_ERROR;
                continue;
            }
            arg = moat_str_make(arg.ptr + 1, arg.len - 2);
        }
        int64_t d = has_arg ? parse_delta(arg) : -1;
        if (MOAT_STR_IEQ_LIT(name, "max-age"))
            set_freshness(cc, &cc->max_age, d);
        else if (MOAT_STR_IEQ_LIT(name, "s-maxage"))
            set_freshness(cc, &cc->s_maxage, d);
        else if (MOAT_STR_IEQ_LIT(name, "no-store"))
            cc->flags |= MOAT_CC_NO_STORE;
        else if (MOAT_STR_IEQ_LIT(name, "no-cache"))
            cc->flags |= MOAT_CC_NO_CACHE | (has_arg ? MOAT_CC_NO_CACHE_FIELDS : 0);
        else if (MOAT_STR_IEQ_LIT(name, "private"))
            cc->flags |= MOAT_CC_PRIVATE;
        else if (MOAT_STR_IEQ_LIT(name, "public"))
            cc->flags |= MOAT_CC_PUBLIC;
        else if (MOAT_STR_IEQ_LIT(name, "must-revalidate"))
            cc->flags |= MOAT_CC_MUST_REVALIDATE;
        else if (MOAT_STR_IEQ_LIT(name, "proxy-revalidate"))
            cc->flags |= MOAT_CC_PROXY_REVALIDATE;
        else if (MOAT_STR_IEQ_LIT(name, "immutable"))
            cc->flags |= MOAT_CC_IMMUTABLE;
        else if (MOAT_STR_IEQ_LIT(name, "only-if-cached"))
            cc->flags |= MOAT_CC_ONLY_IF_CACHED;
        else if (MOAT_STR_IEQ_LIT(name, "must-understand"))
            cc->flags |= MOAT_CC_MUST_UNDERSTAND;
        else if (MOAT_STR_IEQ_LIT(name, "no-transform"))
            cc->flags |= MOAT_CC_NO_TRANSFORM;
        else if (MOAT_STR_IEQ_LIT(name, "stale-while-revalidate"))
            set_limit(cc, &cc->swr, d, false);
        else if (MOAT_STR_IEQ_LIT(name, "stale-if-error"))
            set_limit(cc, &cc->sie, d, false);
        else if (MOAT_STR_IEQ_LIT(name, "max-stale"))
            set_limit(cc, &cc->max_stale, has_arg ? d : MOAT_CC_DELTA_MAX, false);
        else if (MOAT_STR_IEQ_LIT(name, "min-fresh"))
            set_limit(cc, &cc->min_fresh, d, true);
        /* anything else: an extension we do not know, ignored (RFC 9111 5.2.3) */
    }
    if (bad)
        cc->flags |= MOAT_CC_PARSE_ERROR;
}

static void cc_from(struct moat_cache_cc *cc, const struct moat_hdr *h, size_t n,
                    struct moat_str name)
{
    size_t i = 0;
    const struct moat_hdr *x;
    while ((x = hdr_next(h, n, &i, name)))
        moat_cache_cc_add(cc, x->value);
}

/* A targeted field is usable when present, non-empty and free of syntax errors. */
static bool targeted_try(struct moat_cache_cc *cc, const struct moat_hdr *h, size_t n,
                         struct moat_str name)
{
    if (name.len == 0 || !hdr_find(h, n, name))
        return false;
    moat_cache_cc_init(cc);
    cc_from(cc, h, n, name);
    bool empty =
        cc->flags == 0 && cc->max_age < 0 && cc->s_maxage < 0 && cc->swr < 0 && cc->sie < 0;
    if (empty || (cc->flags & MOAT_CC_PARSE_ERROR))
        return false;
    cc->flags |= MOAT_CC_TARGETED;
    return true;
}

enum moat_cache_cc_src moat_cache_cc_response(struct moat_cache_cc *cc, const struct moat_hdr *hdrs,
                                              size_t n, struct moat_str targeted)
{
    if (targeted_try(cc, hdrs, n, targeted))
        return MOAT_CC_SRC_MOAT;
    if (targeted_try(cc, hdrs, n, NAME("cdn-cache-control")))
        return MOAT_CC_SRC_CDN;
    moat_cache_cc_init(cc);
    if (!hdr_find(hdrs, n, NAME("cache-control")))
        return MOAT_CC_SRC_NONE;
    cc_from(cc, hdrs, n, NAME("cache-control"));
    return MOAT_CC_SRC_CACHE_CONTROL;
}

void moat_cache_cc_request(struct moat_cache_cc *cc, const struct moat_hdr *hdrs, size_t n)
{
    moat_cache_cc_init(cc);
    cc_from(cc, hdrs, n, NAME("cache-control"));
}

/* ---- HTTP-date ------------------------------------------------------------------------ */

static const char wdays[7][4] = {"thu", "fri", "sat", "sun", "mon", "tue", "wed"}; /* epoch=Thu */
static const char *const wdays_long[7] = {"thursday", "friday",  "saturday", "sunday",
                                          "monday",   "tuesday", "wednesday"};
static const char months[12][4] = {"jan", "feb", "mar", "apr", "may", "jun",
                                   "jul", "aug", "sep", "oct", "nov", "dec"};

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

/* A tiny cursor for the date grammars. */
struct scan {
    const char *p, *end;
};

static bool sc_lit(struct scan *s, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(s->end - s->p) < n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (lc((unsigned char)s->p[i]) != (unsigned char)lit[i])
            return false;
    s->p += n;
    return true;
}

static bool sc_num(struct scan *s, size_t digits, int *out)
{
    if ((size_t)(s->end - s->p) < digits)
        return false;
    int v = 0;
    for (size_t i = 0; i < digits; i++) {
        if (s->p[i] < '0' || s->p[i] > '9')
            return false;
        v = v * 10 + (s->p[i] - '0');
    }
    s->p += digits;
    *out = v;
    return true;
}

static bool sc_month(struct scan *s, int *m)
{
    for (int i = 0; i < 12; i++)
        if (sc_lit(s, months[i])) {
            *m = i + 1;
            return true;
        }
    return false;
}

static bool sc_time(struct scan *s, int *hh, int *mm, int *ss)
{
    return sc_num(s, 2, hh) && sc_lit(s, ":") && sc_num(s, 2, mm) && sc_lit(s, ":") &&
           sc_num(s, 2, ss);
}

static bool make_time(int64_t y, int m, int d, int hh, int mm, int ss, int64_t *out)
{
    static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (m < 1 || m > 12 || d < 1 || d > mdays[m - 1] || (m == 2 && d == 29 && !leap))
        return false;
    if (hh > 23 || mm > 59 || ss > 60)
        return false;
    if (ss == 60) /* a leap second: one second either way does not matter to a cache */
        ss = 59;
    *out = days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss;
    /* Before 1970 means "long ago" to a cache: clamp, so that a date moat formats is the
     * date it parsed (found by tests/fuzz/fuzz_policy.c with "... 1199"). */
    if (*out < 0)
        *out = 0;
    return true;
}

bool moat_http_date_parse(struct moat_str str, int64_t *out)
{
    str = trim(str);
    struct scan s = {str.ptr, str.ptr + str.len};
    int d, m, y, hh, mm, ss;
    if (str.len == 0)
        return false;
    /* The day name tells the form apart: "Sun," IMF, "Sunday," RFC 850, "Sun " asctime. */
    for (int w = 0; w < 7; w++) {
        struct scan t = s;
        if (sc_lit(&t, wdays_long[w]) && sc_lit(&t, ", ")) {
            /* RFC 850: Sunday, 06-Nov-94 08:49:37 GMT */
            if (!(sc_num(&t, 2, &d) && sc_lit(&t, "-") && sc_month(&t, &m) && sc_lit(&t, "-") &&
                  sc_num(&t, 2, &y) && sc_lit(&t, " ") && sc_time(&t, &hh, &mm, &ss) &&
                  sc_lit(&t, " gmt") && t.p == t.end))
                return false;
            /* RFC 9110 5.6.7: a two-digit year more than 50 years ahead is in the past. */
            time_t now = time(NULL);
            struct tm tm;
            gmtime_r(&now, &tm);
            int64_t cur = tm.tm_year + 1900;
            int64_t full = cur - cur % 100 + y;
            if (full > cur + 50)
                full -= 100;
            return make_time(full, m, d, hh, mm, ss, out);
        }
        t = s;
        if (sc_lit(&t, wdays[w]) && sc_lit(&t, ", ")) {
            /* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
            if (!(sc_num(&t, 2, &d) && sc_lit(&t, " ") && sc_month(&t, &m) && sc_lit(&t, " ") &&
                  sc_num(&t, 4, &y) && sc_lit(&t, " ") && sc_time(&t, &hh, &mm, &ss) &&
                  sc_lit(&t, " gmt") && t.p == t.end))
                return false;
            return make_time(y, m, d, hh, mm, ss, out);
        }
        t = s;
        if (sc_lit(&t, wdays[w]) && sc_lit(&t, " ")) {
            /* asctime: Sun Nov  6 08:49:37 1994 */
            if (!(sc_month(&t, &m) && sc_lit(&t, " ")))
                return false;
            if (sc_lit(&t, " ")) {
                if (!sc_num(&t, 1, &d))
                    return false;
            } else if (!sc_num(&t, 2, &d)) {
                return false;
            }
            if (!(sc_lit(&t, " ") && sc_time(&t, &hh, &mm, &ss) && sc_lit(&t, " ") &&
                  sc_num(&t, 4, &y) && t.p == t.end))
                return false;
            return make_time(y, m, d, hh, mm, ss, out);
        }
    }
    return false;
}

size_t moat_http_date_format(int64_t t, char *buf)
{
    static const char W[7][4] = {"Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"};
    static const char M[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    if (t < 0)
        t = 0;
    int64_t days = t / 86400, secs = t % 86400, y;
    int m, d;
    civil_from_days(days, &y, &m, &d);
    if (y > 9999) {
        y = 9999; /* IMF-fixdate has four digits; nobody caches that long */
    }
    int hh = (int)(secs / 3600), mm = (int)(secs / 60 % 60), ss = (int)(secs % 60);
    memcpy(buf, W[days % 7], 3);
    buf[3] = ',';
    buf[4] = ' ';
    buf[5] = (char)('0' + d / 10);
    buf[6] = (char)('0' + d % 10);
    buf[7] = ' ';
    memcpy(buf + 8, M[m - 1], 3);
    buf[11] = ' ';
    buf[12] = (char)('0' + y / 1000);
    buf[13] = (char)('0' + y / 100 % 10);
    buf[14] = (char)('0' + y / 10 % 10);
    buf[15] = (char)('0' + y % 10);
    buf[16] = ' ';
    buf[17] = (char)('0' + hh / 10);
    buf[18] = (char)('0' + hh % 10);
    buf[19] = ':';
    buf[20] = (char)('0' + mm / 10);
    buf[21] = (char)('0' + mm % 10);
    buf[22] = ':';
    buf[23] = (char)('0' + ss / 10);
    buf[24] = (char)('0' + ss % 10);
    memcpy(buf + 25, " GMT", 4);
    buf[MOAT_HTTP_DATE_LEN] = '\0';
    return MOAT_HTTP_DATE_LEN;
}

/* ---- Storability ----------------------------------------------------------------------- */

void moat_cache_policy_cfg_default(struct moat_cache_policy_cfg *cfg)
{
    cfg->heuristic_max = 86400;
    cfg->flags = 0;
}

static const char *const nostore_names[MOAT_NOSTORE_COUNT] = {
    [MOAT_NOSTORE_NONE] = "storable",
    [MOAT_NOSTORE_METHOD] = "method",
    [MOAT_NOSTORE_STATUS] = "status",
    [MOAT_NOSTORE_PARTIAL] = "partial",
    [MOAT_NOSTORE_NO_STORE] = "no_store",
    [MOAT_NOSTORE_REQ_NO_STORE] = "req_no_store",
    [MOAT_NOSTORE_PRIVATE] = "private",
    [MOAT_NOSTORE_AUTHORIZATION] = "authorization",
    [MOAT_NOSTORE_SET_COOKIE] = "set_cookie",
    [MOAT_NOSTORE_VARY_STAR] = "vary_star",
    [MOAT_NOSTORE_NO_FRESHNESS] = "no_freshness",
};

const char *moat_cache_nostore_name(enum moat_cache_nostore r)
{
    return (unsigned)r < MOAT_NOSTORE_COUNT ? nostore_names[r] : "unknown";
}

bool moat_cache_status_heuristic(int status)
{
    switch (status) {
    case 200:
    case 203:
    case 204:
    case 206:
    case 300:
    case 301:
    case 308:
    case 404:
    case 405:
    case 410:
    case 414:
    case 501:
        return true;
    default:
        return false;
    }
}

/* Statuses whose semantics moat knows well enough for must-understand (RFC 9111 5.2.2.3). */
static bool status_understood(int status)
{
    switch (status) {
    case 200:
    case 203:
    case 204:
    case 300:
    case 301:
    case 302:
    case 303:
    case 307:
    case 308:
    case 404:
    case 405:
    case 410:
    case 414:
    case 451:
    case 501:
        return true;
    default:
        return false;
    }
}

static bool vary_star(const struct moat_hdr *h, size_t n)
{
    size_t i = 0;
    const struct moat_hdr *x;
    while ((x = hdr_next(h, n, &i, NAME("vary")))) {
        size_t pos = 0;
        struct moat_str e;
        while (list_next(x->value, &pos, &e, NULL))
            if (e.len == 1 && e.ptr[0] == '*')
                return true;
    }
    return false;
}

enum moat_cache_nostore moat_cache_storable(const struct moat_cache_policy_cfg *cfg,
                                            enum moat_method meth, int status,
                                            const struct moat_cache_cc *req_cc,
                                            const struct moat_hdr *req_hdrs, size_t nreq,
                                            const struct moat_cache_cc *resp_cc,
                                            const struct moat_hdr *resp_hdrs, size_t nresp)
{
    uint32_t f = resp_cc->flags;
    if (meth != MOAT_M_GET && meth != MOAT_M_HEAD)
        return MOAT_NOSTORE_METHOD;
    if (status < 200 || status > 999 || status == 304)
        return MOAT_NOSTORE_STATUS;
    if (status == 206)
        return MOAT_NOSTORE_PARTIAL;
    if (f & MOAT_CC_MUST_UNDERSTAND) {
        /* must-understand: store only statuses we understand, and then no-store yields. */
        if (!status_understood(status))
            return MOAT_NOSTORE_STATUS;
    } else if (f & MOAT_CC_NO_STORE) {
        return MOAT_NOSTORE_NO_STORE;
    }
    if (req_cc && (req_cc->flags & MOAT_CC_NO_STORE))
        return MOAT_NOSTORE_REQ_NO_STORE;
    if (f & MOAT_CC_PRIVATE)
        return MOAT_NOSTORE_PRIVATE;
    if (hdr_find(req_hdrs, nreq, NAME("authorization")) &&
        !(f & (MOAT_CC_MUST_REVALIDATE | MOAT_CC_PUBLIC)) && resp_cc->s_maxage < 0)
        return MOAT_NOSTORE_AUTHORIZATION;
    if (!(cfg->flags & MOAT_CACHE_CFG_STORE_SET_COOKIE) &&
        hdr_find(resp_hdrs, nresp, NAME("set-cookie")))
        return MOAT_NOSTORE_SET_COOKIE;
    if (vary_star(resp_hdrs, nresp))
        return MOAT_NOSTORE_VARY_STAR;
    bool explicit_fresh = (f & MOAT_CC_PUBLIC) || resp_cc->max_age >= 0 || resp_cc->s_maxage >= 0 ||
                          (!(f & MOAT_CC_TARGETED) && hdr_find(resp_hdrs, nresp, NAME("expires")));
    if (explicit_fresh || moat_cache_status_heuristic(status))
        return MOAT_NOSTORE_NONE;
    if ((cfg->flags & MOAT_CACHE_CFG_STORE_VALIDATED) &&
        (hdr_find(resp_hdrs, nresp, NAME("etag")) ||
         hdr_find(resp_hdrs, nresp, NAME("last-modified"))))
        return MOAT_NOSTORE_NONE;
    return MOAT_NOSTORE_NO_FRESHNESS;
}

/* ---- Freshness ------------------------------------------------------------------------- */

/* A single valid date field; several lines or an invalid value give false + *<bad>. */
static bool date_field(const struct moat_hdr *h, size_t n, struct moat_str name, int64_t *out,
                       bool *bad)
{
    const struct moat_hdr *x = hdr_find(h, n, name);
    *bad = false;
    if (!x)
        return false;
    if (hdr_count(h, n, name) > 1 || !moat_http_date_parse(x->value, out)) {
        *bad = true;
        return false;
    }
    return true;
}

static int64_t date_or(const struct moat_hdr *h, size_t n, int64_t fallback)
{
    int64_t d;
    bool bad;
    return date_field(h, n, NAME("date"), &d, &bad) ? d : fallback;
}

static int64_t lifetime_at(const struct moat_cache_policy_cfg *cfg, int status,
                           const struct moat_cache_cc *cc, const struct moat_hdr *hdrs, size_t n,
                           int64_t date, bool *heuristic)
{
    if (heuristic)
        *heuristic = false;
    if (cc->s_maxage >= 0)
        return cc->s_maxage;
    if (cc->max_age >= 0)
        return cc->max_age;
    if (!(cc->flags & MOAT_CC_TARGETED)) {
        int64_t exp;
        bool bad;
        if (date_field(hdrs, n, NAME("expires"), &exp, &bad))
            return exp > date ? exp - date : 0;
        if (bad) /* "Expires: 0" and friends: already expired (RFC 9111 5.3) */
            return 0;
    }
    int64_t lm;
    bool bad;
    if (moat_cache_status_heuristic(status) &&
        date_field(hdrs, n, NAME("last-modified"), &lm, &bad) && lm < date) {
        if (heuristic)
            *heuristic = true;
        return MOAT_MIN((date - lm) / 10, cfg->heuristic_max);
    }
    return 0;
}

int64_t moat_cache_freshness_lifetime(const struct moat_cache_policy_cfg *cfg, int status,
                                      const struct moat_cache_cc *cc, const struct moat_hdr *hdrs,
                                      size_t n, int64_t resp_time, bool *heuristic)
{
    return lifetime_at(cfg, status, cc, hdrs, n, date_or(hdrs, n, resp_time), heuristic);
}

static int32_t clamp32(int64_t v)
{
    return v < 0 ? 0 : v > INT32_MAX ? INT32_MAX : (int32_t)v;
}

void moat_cache_meta_init(struct moat_cache_meta *m, const struct moat_cache_policy_cfg *cfg,
                          int status, const struct moat_cache_cc *cc, const struct moat_hdr *hdrs,
                          size_t n, int64_t req_time, int64_t resp_time)
{
    bool heur, bad;
    memset(m, 0, sizeof(*m));
    m->resp_time = resp_time;
    m->date = date_or(hdrs, n, resp_time);
    if (!date_field(hdrs, n, NAME("last-modified"), &m->last_modified, &bad))
        m->last_modified = -1;
    const struct moat_hdr *age = hdr_find(hdrs, n, NAME("age"));
    int64_t av = age ? parse_delta(trim(age->value)) : 0;
    if (av < 0)
        av = 0; /* an invalid Age is ignored */
    /* RFC 9111 4.2.3, the part that does not depend on "now" */
    int64_t apparent = MOAT_MAX(0, resp_time - m->date);
    int64_t delay = MOAT_MAX(0, resp_time - req_time);
    m->initial_age = clamp32(MOAT_MAX(apparent, av + delay));
    m->lifetime = clamp32(lifetime_at(cfg, status, cc, hdrs, n, m->date, &heur));
    m->swr = clamp32(cc->swr);
    m->sie = clamp32(cc->sie);
    if (cc->flags & (MOAT_CC_MUST_REVALIDATE | MOAT_CC_PROXY_REVALIDATE) || cc->s_maxage >= 0)
        m->flags |= MOAT_META_MUST_REVALIDATE;
    if (cc->flags & MOAT_CC_NO_CACHE)
        m->flags |= MOAT_META_NO_CACHE;
    if (cc->flags & MOAT_CC_IMMUTABLE)
        m->flags |= MOAT_META_IMMUTABLE;
    if (heur)
        m->flags |= MOAT_META_HEURISTIC;
    if (m->last_modified >= 0 || hdr_find(hdrs, n, NAME("etag")))
        m->flags |= MOAT_META_HAS_VALIDATOR;
}

int64_t moat_cache_current_age(const struct moat_cache_meta *m, int64_t now)
{
    return (int64_t)m->initial_age + MOAT_MAX(0, now - m->resp_time);
}

static const char *const fresh_names[] = {
    "fresh", "stale_ok", "stale_swr", "stale_revalidate", "must_forward", "only_if_cached"};

const char *moat_cache_fresh_name(enum moat_cache_fresh f)
{
    return (unsigned)f < MOAT_ARRAY_LEN(fresh_names) ? fresh_names[f] : "unknown";
}

static enum moat_cache_fresh must_go(const struct moat_cache_meta *m,
                                     const struct moat_cache_cc *req)
{
    if (req && (req->flags & MOAT_CC_ONLY_IF_CACHED))
        return MOAT_CACHE_ONLY_IF_CACHED;
    return (m->flags & MOAT_META_HAS_VALIDATOR) ? MOAT_CACHE_STALE_REVALIDATE
                                                : MOAT_CACHE_MUST_FORWARD;
}

enum moat_cache_fresh moat_cache_decide(const struct moat_cache_meta *m,
                                        const struct moat_cache_cc *req, int64_t now)
{
    int64_t age = moat_cache_current_age(m, now);
    int64_t lifetime = m->lifetime;
    if (m->flags & MOAT_META_INVALIDATED)
        lifetime = MOAT_MIN(lifetime, age); /* stale from now on, but the grace windows
                                               still count from the moment of the purge */
    bool fresh = lifetime > age;
    if (m->flags & MOAT_META_NO_CACHE)
        return must_go(m, req);
    if (req && (req->flags & MOAT_CC_NO_CACHE))
        return must_go(m, req);
    /* Request max-age / min-fresh make a fresh response unacceptable (RFC 9111 5.2.1). */
    bool want_fresh = req && (req->max_age >= 0 || req->min_fresh >= 0);
    if (req && req->max_age >= 0 && age > req->max_age)
        return must_go(m, req);
    if (fresh) {
        if (req && req->min_fresh >= 0 && lifetime - age < req->min_fresh)
            return must_go(m, req);
        return MOAT_CACHE_FRESH;
    }
    int64_t staleness = age - lifetime;
    if (m->flags & MOAT_META_MUST_REVALIDATE)
        return must_go(m, req);
    if (req && req->max_stale >= 0 && staleness <= req->max_stale && !(req->min_fresh >= 0))
        return MOAT_CACHE_STALE_OK;
    if (!want_fresh && m->swr > 0 && staleness < m->swr)
        return MOAT_CACHE_STALE_SWR;
    return must_go(m, req);
}

bool moat_cache_stale_if_error_ok(const struct moat_cache_meta *m, const struct moat_cache_cc *req,
                                  int64_t now)
{
    if (m->flags & MOAT_META_MUST_REVALIDATE)
        return false;
    int64_t age = moat_cache_current_age(m, now);
    int64_t lifetime = m->lifetime;
    if (m->flags & MOAT_META_INVALIDATED)
        lifetime = MOAT_MIN(lifetime, age);
    if (lifetime > age)
        return true; /* still fresh: nothing stale about it */
    int64_t window = m->sie;
    if (req && req->sie >= 0)
        window = req->sie; /* RFC 5861 4: the request may narrow or widen it */
    return age - lifetime < window;
}

/* ---- Accept-Encoding ------------------------------------------------------------------ */

/* qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ) (RFC 9110 12.4.2). Returns 1 for
 * a weight above 0, 0 for 0, -1 when <q> is not a qvalue. */
static int qvalue_positive(struct moat_str q)
{
    if (q.len == 0 || q.len > 5 || (q.ptr[0] != '0' && q.ptr[0] != '1'))
        return -1;
    if (q.len > 1 && (q.ptr[1] != '.'))
        return -1;
    bool nonzero = q.ptr[0] == '1';
    for (size_t i = 2; i < q.len; i++) {
        if (q.ptr[i] < '0' || q.ptr[i] > '9' || (q.ptr[0] == '1' && q.ptr[i] != '0'))
            return -1;
        nonzero |= q.ptr[i] != '0';
    }
    return nonzero;
}

/* The MOAT_AE_* bit of a coding name, MOAT_AE_ALL for "*", 0 for anything else. */
static unsigned ae_bit(struct moat_str c)
{
    if (name_is(c, NAME("gzip")) || name_is(c, NAME("x-gzip")))
        return MOAT_AE_GZIP;
    if (name_is(c, NAME("br")))
        return MOAT_AE_BR;
    if (name_is(c, NAME("zstd")))
        return MOAT_AE_ZSTD;
    return c.len == 1 && c.ptr[0] == '*' ? MOAT_AE_ALL : 0;
}

/* One pass over the elements, remembering per coding whether it was listed with a positive
 * weight and whether with a zero (or broken) one; a refusal wins, because sending the
 * origin fewer codings than the client accepts can only cost compression, never hand the
 * client a coding it cannot decode. */
unsigned moat_cache_ae_accepted(const struct moat_hdr *hdrs, size_t n)
{
    unsigned yes = 0, no = 0;
    bool star_yes = false, star_no = false;
    size_t i = 0;
    const struct moat_hdr *h;
    while ((h = hdr_next(hdrs, n, &i, NAME("accept-encoding")))) {
        size_t pos = 0;
        struct moat_str e;
        while (list_next(h->value, &pos, &e, NULL)) {
            const char *semi = memchr(e.ptr, ';', e.len);
            size_t cl = semi ? (size_t)(semi - e.ptr) : e.len;
            unsigned bit = ae_bit(trim(moat_str_make(e.ptr, cl)));
            if (!bit)
                continue;
            int w = 1;
            for (size_t k = cl; k < e.len;) { /* parameters: ";" OWS name "=" value */
                const char *next = memchr(e.ptr + k + 1, ';', e.len - k - 1);
                size_t end = next ? (size_t)(next - e.ptr) : e.len;
                struct moat_str prm = moat_str_make(e.ptr + k + 1, end - k - 1);
                const char *eq = memchr(prm.ptr, '=', prm.len);
                size_t nl = eq ? (size_t)(eq - prm.ptr) : prm.len;
                /* "q = 0" is not RFC syntax, but a sender that meant "refuse" must not get
                 * the coding: spaces around '=' are tolerated. */
                if (eq && name_is(trim(moat_str_make(prm.ptr, nl)), NAME("q")) &&
                    qvalue_positive(trim(moat_str_make(eq + 1, prm.len - nl - 1))) <= 0)
                    w = 0;
                k = end;
            }
            if (bit == MOAT_AE_ALL && w)
                star_yes = true;
            else if (bit == MOAT_AE_ALL)
                star_no = true;
            else if (w)
                yes |= bit;
            else
                no |= bit;
        }
    }
    unsigned out = yes & ~no;
    if (star_yes && !star_no)
        out |= MOAT_AE_ALL & ~(yes | no);
    return out;
}

struct moat_str moat_cache_ae_value(unsigned codings)
{
    /* Indexed by the bits: gzip 1, br 2, zstd 4. */
    static const char *const v[8] = {"identity", "gzip",       "br",       "gzip, br",
                                     "zstd",     "gzip, zstd", "br, zstd", "gzip, br, zstd"};
    static const uint8_t len[8] = {8, 4, 2, 8, 4, 10, 8, 14};
    codings &= MOAT_AE_ALL;
    return moat_str_make(v[codings], len[codings]);
}

/* ---- Vary ----------------------------------------------------------------------------- */

#define VARY_MAX_FIELDS 32

static int cmp_ci(struct moat_str a, struct moat_str b)
{
    size_t n = MOAT_MIN(a.len, b.len);
    for (size_t i = 0; i < n; i++) {
        int d = lc((unsigned char)a.ptr[i]) - lc((unsigned char)b.ptr[i]);
        if (d)
            return d;
    }
    return (a.len > b.len) - (a.len < b.len);
}

struct kbuf {
    char *p;
    size_t len, cap;
    bool over;
};

static void kput(struct kbuf *b, const char *s, size_t n, bool lower)
{
    if (b->over || b->cap - b->len < n) {
        b->over = true;
        return;
    }
    for (size_t i = 0; i < n; i++)
        b->p[b->len + i] = lower ? (char)lc((unsigned char)s[i]) : s[i];
    b->len += n;
}

int moat_cache_vary_key(const struct moat_hdr *resp_hdrs, size_t nresp,
                        const struct moat_hdr *req_hdrs, size_t nreq, const struct moat_str *ae,
                        char *buf, size_t cap, size_t *len, uint64_t *hash)
{
    /* The forwarded Accept-Encoding, as if it were the request's only line of that name. */
    const struct moat_hdr ae_line = {NAME("accept-encoding"), ae ? *ae : MOAT_STR_NULL};
    struct moat_str names[VARY_MAX_FIELDS];
    size_t nn = 0;
    size_t i = 0;
    const struct moat_hdr *x;
    while ((x = hdr_next(resp_hdrs, nresp, &i, NAME("vary")))) {
        size_t pos = 0;
        struct moat_str e;
        while (list_next(x->value, &pos, &e, NULL)) {
            if (e.len == 1 && e.ptr[0] == '*')
                return MOAT_DECLINED;
            /* insertion sort, dropping duplicates: Vary lists are a handful of names */
            size_t j = 0;
            while (j < nn && cmp_ci(names[j], e) < 0)
                j++;
            if (j < nn && cmp_ci(names[j], e) == 0)
                continue;
            if (nn == VARY_MAX_FIELDS)
                return MOAT_ERR;
            memmove(&names[j + 1], &names[j], (nn - j) * sizeof(names[0]));
            names[j] = e;
            nn++;
        }
    }
    struct kbuf b = {buf, 0, cap, false};
    for (size_t k = 0; k < nn; k++) {
        kput(&b, names[k].ptr, names[k].len, true);
        size_t r = 0;
        const struct moat_hdr *h;
        bool any = false;
        bool own = ae && name_is(names[k], ae_line.name);
        const struct moat_hdr *src = own ? &ae_line : req_hdrs;
        while ((h = hdr_next(src, own ? 1 : nreq, &r, names[k]))) {
            kput(&b, any ? "," : ":", 1, false);
            any = true;
            size_t pos = 0, nel = 0;
            struct moat_str e;
            while (list_next(h->value, &pos, &e, NULL)) {
                if (nel++)
                    kput(&b, ",", 1, false);
                kput(&b, e.ptr, e.len, false);
            }
        }
        if (!any)
            kput(&b, "\x01", 1, false); /* absent differs from empty (RFC 9111 4.1) */
        kput(&b, "\n", 1, false);
    }
    if (b.over)
        return MOAT_ERR;
    *len = b.len;
    *hash = XXH3_64bits(buf, b.len);
    return MOAT_OK;
}

/* ---- Conditionals -------------------------------------------------------------------- */

/* Splits an entity-tag into weakness and opaque-tag (with quotes). False if malformed. */
static bool etag_split(struct moat_str t, bool *weak, struct moat_str *opaque)
{
    t = trim(t);
    *weak = false;
    if (t.len >= 2 && t.ptr[0] == 'W' && t.ptr[1] == '/') {
        *weak = true;
        t.ptr += 2;
        t.len -= 2;
    }
    if (t.len < 2 || t.ptr[0] != '"' || t.ptr[t.len - 1] != '"')
        return false;
    for (size_t i = 1; i + 1 < t.len; i++)
        if (t.ptr[i] == '"')
            return false;
    *opaque = t;
    return true;
}

bool moat_cache_etag_weak_eq(struct moat_str a, struct moat_str b)
{
    bool wa, wb;
    struct moat_str oa, ob;
    return etag_split(a, &wa, &oa) && etag_split(b, &wb, &ob) && moat_str_eq(oa, ob);
}

bool moat_cache_etag_strong_eq(struct moat_str a, struct moat_str b)
{
    bool wa, wb;
    struct moat_str oa, ob;
    return etag_split(a, &wa, &oa) && etag_split(b, &wb, &ob) && !wa && !wb && moat_str_eq(oa, ob);
}

/* Does the list <v> (or "*") match <etag>? */
static bool etag_list_match(struct moat_str v, struct moat_str etag, bool strong)
{
    v = trim(v);
    if (v.len == 1 && v.ptr[0] == '*')
        return true;
    if (etag.len == 0)
        return false;
    /* Entity-tags cannot contain DQUOTE, but can contain commas: split outside quotes. */
    size_t pos = 0;
    struct moat_str e;
    while (list_next(v, &pos, &e, NULL))
        if (strong ? moat_cache_etag_strong_eq(e, etag) : moat_cache_etag_weak_eq(e, etag))
            return true;
    return false;
}

static bool any_line_matches(const struct moat_hdr *h, size_t n, struct moat_str name,
                             struct moat_str etag, bool strong)
{
    size_t i = 0;
    const struct moat_hdr *x;
    while ((x = hdr_next(h, n, &i, name)))
        if (etag_list_match(x->value, etag, strong))
            return true;
    return false;
}

int moat_cache_conditional(enum moat_method meth, const struct moat_hdr *req_hdrs, size_t n,
                           struct moat_str etag, int64_t last_modified, int64_t date)
{
    bool get = meth == MOAT_M_GET || meth == MOAT_M_HEAD;
    int64_t t;
    bool bad;
    /* 1. If-Match (strong): false -> 412 */
    if (hdr_find(req_hdrs, n, NAME("if-match"))) {
        if (!any_line_matches(req_hdrs, n, NAME("if-match"), etag, true))
            return 412;
    } else if (date_field(req_hdrs, n, NAME("if-unmodified-since"), &t, &bad)) {
        /* 2. If-Unmodified-Since, only without If-Match and with a known date */
        if (last_modified >= 0 && last_modified > t)
            return 412;
    }
    /* 3. If-None-Match (weak): true (a match) -> 304 for GET/HEAD, else 412 */
    if (hdr_find(req_hdrs, n, NAME("if-none-match"))) {
        if (any_line_matches(req_hdrs, n, NAME("if-none-match"), etag, false))
            return get ? 304 : 412;
        return 0;
    }
    /* 4. If-Modified-Since, GET/HEAD only */
    if (get && date_field(req_hdrs, n, NAME("if-modified-since"), &t, &bad)) {
        int64_t lm = last_modified >= 0 ? last_modified : date;
        if (lm <= t)
            return 304;
    }
    return 0;
}

/* ---- Range --------------------------------------------------------------------------- */

static bool parse_u64(struct moat_str s, uint64_t *out)
{
    if (s.len == 0 || s.len > 19)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < s.len; i++) {
        if (s.ptr[i] < '0' || s.ptr[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s.ptr[i] - '0');
    }
    *out = v;
    return true;
}

enum moat_cache_range moat_cache_range_parse(struct moat_str v, uint64_t len, uint64_t *first,
                                             uint64_t *last)
{
    v = trim(v);
    struct scan s = {v.ptr, v.ptr + v.len};
    if (!sc_lit(&s, "bytes="))
        return MOAT_RANGE_NONE;
    struct moat_str set = moat_str_make(s.p, (size_t)(s.end - s.p));
    size_t pos = 0;
    struct moat_str e;
    if (!list_next(set, &pos, &e, NULL))
        return MOAT_RANGE_NONE;
    struct moat_str more;
    if (list_next(set, &pos, &more, NULL))
        return MOAT_RANGE_NONE; /* several ranges: serve the whole thing with 200 */
    const char *dash = memchr(e.ptr, '-', e.len);
    if (!dash)
        return MOAT_RANGE_NONE;
    struct moat_str a = moat_str_make(e.ptr, (size_t)(dash - e.ptr));
    struct moat_str b = moat_str_make(dash + 1, e.len - a.len - 1);
    uint64_t x, y;
    if (a.len == 0) { /* suffix: -n */
        if (!parse_u64(b, &y))
            return MOAT_RANGE_NONE;
        if (y == 0 || len == 0)
            return MOAT_RANGE_UNSATISFIABLE;
        *first = y >= len ? 0 : len - y;
        *last = len - 1;
        return MOAT_RANGE_OK;
    }
    if (!parse_u64(a, &x))
        return MOAT_RANGE_NONE;
    if (b.len == 0) {
        y = UINT64_MAX;
    } else if (!parse_u64(b, &y) || y < x) {
        return MOAT_RANGE_NONE; /* a-b with b < a is invalid syntax: ignore */
    }
    if (x >= len)
        return MOAT_RANGE_UNSATISFIABLE;
    *first = x;
    *last = y >= len ? len - 1 : y;
    return MOAT_RANGE_OK;
}

bool moat_cache_if_range_ok(struct moat_str v, struct moat_str etag, int64_t last_modified)
{
    v = trim(v);
    if (v.len && (v.ptr[0] == '"' || v.ptr[0] == 'W'))
        return etag.len && moat_cache_etag_strong_eq(v, etag);
    int64_t t;
    return last_modified >= 0 && moat_http_date_parse(v, &t) && t == last_modified;
}
