/* fuzz_policy.c: the cache policy's parsers of peer input: Cache-Control lists, HTTP dates,
 * Range, Accept-Encoding, the conditional-request evaluation and the Vary key, on arbitrary
 * bytes. */
#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "cache/policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct moat_str s = moat_str_make((const char *)data, size);
    struct moat_cache_cc cc;
    moat_cache_cc_init(&cc);
    moat_cache_cc_add(&cc, s);

    int64_t t;
    if (moat_http_date_parse(s, &t)) {
        char buf[MOAT_HTTP_DATE_LEN + 1];
        size_t n = moat_http_date_format(t, buf);
        int64_t t2;
        /* What we format, we parse back to the same second. */
        if (n)
            assert(moat_http_date_parse(moat_str_make(buf, n), &t2) && t2 == t);
    }

    uint64_t len = size ? data[0] * 1000u : 0, first = 0, last = 0;
    enum moat_cache_range r = moat_cache_range_parse(s, len, &first, &last);
    if (r == MOAT_RANGE_OK)
        assert(first <= last && last < len);

    struct moat_hdr h[2] = {{MOAT_STR("If-None-Match"), s}, {MOAT_STR("If-Modified-Since"), s}};
    int st = moat_cache_conditional(MOAT_M_GET, h, 2, MOAT_STR("\"abc\""), 1000, 2000);
    assert(st == 0 || st == 304 || st == 412);

    /* Accept-Encoding: only known bits, and the canonical value parses back to the same set
     * (what moat forwards, it would normalise to itself). */
    struct moat_hdr ae[1] = {{MOAT_STR("Accept-Encoding"), s}};
    unsigned bits = moat_cache_ae_accepted(ae, 1);
    assert((bits & ~MOAT_AE_ALL) == 0);
    struct moat_hdr canon[1] = {{MOAT_STR("accept-encoding"), moat_cache_ae_value(bits)}};
    assert(moat_cache_ae_accepted(canon, 1) == bits);

    /* The Vary key with the forwarded Accept-Encoding in place of the request's. */
    struct moat_hdr vary[1] = {{MOAT_STR("Vary"), s}};
    struct moat_hdr req[2] = {{MOAT_STR("Accept-Encoding"), s}, {s, s}};
    struct moat_str fwd = moat_cache_ae_value(bits);
    char key[512];
    size_t klen = 0;
    uint64_t hash;
    int vr = moat_cache_vary_key(vary, 1, req, 2, &fwd, key, sizeof key, &klen, &hash);
    assert(vr == MOAT_OK || vr == MOAT_DECLINED || vr == MOAT_ERR);
    if (vr == MOAT_OK)
        assert(klen <= sizeof key);
    return 0;
}
