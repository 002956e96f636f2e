/* fuzz_shield.c: the shield's parsers of peer input: the challenge answer (the query string
 * the page posts), challenge tokens and clearance cookies, and the proof-of-work check, on
 * arbitrary bytes. */
#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "shield/challenge.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t key[16] = "fuzz-key-16bytes";
    struct moat_str s = moat_str_make((const char *)data, size);
    struct moat_chal_answer a;
    if (moat_chal_parse_answer(s, &a) == MOAT_OK) {
        /* what it accepts is a local path, without controls, that fits */
        assert(a.tolen >= 1 && a.tolen < sizeof a.to && a.to[0] == '/');
        assert(a.tolen == 1 || (a.to[1] != '/' && a.to[1] != '\\'));
        for (size_t i = 0; i < a.tolen; i++)
            assert((unsigned char)a.to[i] > 0x20 && a.to[i] != 0x7f);
        assert(a.c.len && a.n.len);
        (void)moat_chal_check_pow(a.c, a.n, 8);
    }
    struct moat_chal_ctx c = {.key = key, .keylen = sizeof key, .site_id = 1, .ua = s};
    /* nothing but what moat signed passes */
    assert(moat_chal_check_cookie(&c, s, 0) != MOAT_CHAL_OK || size > 12);
    (void)moat_chal_check_token(&c, s, 1000, 600);
    char v[MOAT_CHAL_TOKEN_MAX];
    size_t n = moat_chal_cookie(&c, 1u + (size ? data[0] : 0), v);
    assert(moat_chal_check_cookie(&c, moat_str_make(v, n), 0) == MOAT_CHAL_OK);
    return 0;
}
