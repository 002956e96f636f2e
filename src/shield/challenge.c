/* challenge.c: challenges, proofs of work and clearance cookies as HMAC-SHA256 tags.
 *
 * Nothing is stored per visitor: a challenge is "<issued>.<tag>" and a cookie "<expiry>.<tag>",
 * the tag an HMAC over the time, the client's address prefix, the site and the User-Agent,
 * truncated to 128 bits (NIST SP 800-107 allows truncation to 64 and more). A worker checks
 * either with one HMAC (about 1 us), whichever worker issued it. The cost is that a solved
 * challenge can be replayed from the same prefix and User-Agent until it is MOAT_CHAL_MAX_AGE_S
 * old; the work it proves was done once for that browser, which is what it is for. */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>

#include "shield/challenge.h"

static const char b64u[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

void moat_chal_prefix(const uint8_t ip[16], uint8_t out[16])
{
    static const uint8_t v4m[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    memset(out, 0, 16);
    if (!memcmp(ip, v4m, 12)) {
        memcpy(out, ip, 15); /* v4-mapped /24: the last byte stays 0 */
    } else {
        memcpy(out, ip, 8); /* /64 */
    }
}

const char *moat_chal_verdict_text(enum moat_chal_verdict v)
{
    switch (v) {
    case MOAT_CHAL_OK:
        return "accepted";
    case MOAT_CHAL_MALFORMED:
        return "The answer or cookie was not in the form this site gives out.";
    case MOAT_CHAL_FORGED:
        return "The answer or cookie was not issued to this browser at this address (it was "
               "altered, or your address or browser changed).";
    case MOAT_CHAL_EXPIRED:
        return "The challenge or cookie has expired.";
    case MOAT_CHAL_WRONG:
        return "The proof of work was not correct.";
    }
    return "refused";
}

/* The 16-byte tag of <what> ("chal" or "clr") at <t> for <c>. */
static void tag(const struct moat_chal_ctx *c, const char *what, uint64_t t, uint8_t out[16])
{
    uint8_t buf[8 + 8 + 16 + 8 + 1024];
    size_t n = 0, wl = strlen(what) + 1;
    memcpy(buf, what, wl);
    n = wl;
    for (int i = 7; i >= 0; i--)
        buf[n++] = (uint8_t)(t >> (i * 8));
    memcpy(buf + n, c->prefix, 16);
    n += 16;
    for (int i = 7; i >= 0; i--)
        buf[n++] = (uint8_t)(c->site_id >> (i * 8));
    size_t ul = c->ua.len < 1024 ? c->ua.len : 1024;
    if (ul)
        memcpy(buf + n, c->ua.ptr, ul);
    n += ul;
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned mdl = 0;
    HMAC(EVP_sha256(), c->key, (int)c->keylen, buf, n, md, &mdl);
    memcpy(out, md, 16);
}

/* "<t>.<base64url of tag>" */
static size_t fmt(uint64_t t, const uint8_t tg[16], char *out)
{
    int n = snprintf(out, MOAT_CHAL_TOKEN_MAX, "%llu.", (unsigned long long)t);
    size_t k = (size_t)n;
    uint32_t acc = 0;
    int bits = 0;
    for (int i = 0; i < 16; i++) {
        acc = acc << 8 | tg[i];
        bits += 8;
        while (bits >= 6) {
            out[k++] = b64u[(acc >> (bits - 6)) & 63];
            bits -= 6;
        }
    }
    if (bits)
        out[k++] = b64u[(acc << (6 - bits)) & 63];
    out[k] = 0;
    return k;
}

/* Splits "<t>.<22 chars>" into the time and the tag text; false when malformed. */
static bool split(struct moat_str v, uint64_t *t, struct moat_str *tg)
{
    size_t i = 0;
    uint64_t x = 0;
    while (i < v.len && i < 12 && v.ptr[i] >= '0' && v.ptr[i] <= '9')
        x = x * 10 + (uint64_t)(v.ptr[i++] - '0');
    if (i == 0 || i >= v.len || v.ptr[i] != '.' || v.len - i - 1 != 22)
        return false;
    *t = x;
    *tg = moat_str_make(v.ptr + i + 1, 22);
    return true;
}

static enum moat_chal_verdict check(const struct moat_chal_ctx *c, const char *what,
                                    struct moat_str v, uint64_t *t)
{
    struct moat_str tg;
    if (!split(v, t, &tg))
        return MOAT_CHAL_MALFORMED;
    uint8_t want[16];
    char txt[MOAT_CHAL_TOKEN_MAX];
    tag(c, what, *t, want);
    size_t n = fmt(*t, want, txt);
    if (n != v.len || CRYPTO_memcmp(txt, v.ptr, n) != 0)
        return MOAT_CHAL_FORGED;
    return MOAT_CHAL_OK;
}

size_t moat_chal_token(const struct moat_chal_ctx *c, uint64_t ts, char *out)
{
    uint8_t tg[16];
    tag(c, "chal", ts, tg);
    return fmt(ts, tg, out);
}

enum moat_chal_verdict moat_chal_check_token(const struct moat_chal_ctx *c, struct moat_str tok,
                                             uint64_t now_s, uint64_t max_age_s)
{
    uint64_t t;
    enum moat_chal_verdict v = check(c, "chal", tok, &t);
    if (v != MOAT_CHAL_OK)
        return v;
    if (t > now_s + 5 || now_s - t > max_age_s)
        return MOAT_CHAL_EXPIRED;
    return MOAT_CHAL_OK;
}

unsigned moat_chal_zero_bits(const uint8_t h[32])
{
    unsigned z = 0;
    for (int i = 0; i < 32; i++) {
        if (h[i] == 0) {
            z += 8;
            continue;
        }
        return z + (unsigned)__builtin_clz((unsigned)h[i]) - 24;
    }
    return z;
}

enum moat_chal_verdict moat_chal_check_pow(struct moat_str tok, struct moat_str nonce,
                                           unsigned difficulty)
{
    if (nonce.len == 0 || nonce.len > 32 || tok.len > MOAT_CHAL_TOKEN_MAX)
        return MOAT_CHAL_MALFORMED;
    for (size_t i = 0; i < nonce.len; i++) {
        char ch = nonce.ptr[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')))
            return MOAT_CHAL_MALFORMED;
    }
    uint8_t buf[MOAT_CHAL_TOKEN_MAX + 32], h[32];
    memcpy(buf, tok.ptr, tok.len);
    memcpy(buf + tok.len, nonce.ptr, nonce.len);
    SHA256(buf, tok.len + nonce.len, h);
    return moat_chal_zero_bits(h) >= difficulty ? MOAT_CHAL_OK : MOAT_CHAL_WRONG;
}

size_t moat_chal_cookie(const struct moat_chal_ctx *c, uint64_t exp_s, char *out)
{
    uint8_t tg[16];
    tag(c, "clr", exp_s, tg);
    return fmt(exp_s, tg, out);
}

enum moat_chal_verdict moat_chal_check_cookie(const struct moat_chal_ctx *c, struct moat_str v,
                                              uint64_t now_s)
{
    uint64_t t;
    enum moat_chal_verdict r = check(c, "clr", v, &t);
    if (r != MOAT_CHAL_OK)
        return r;
    return t <= now_s ? MOAT_CHAL_EXPIRED : MOAT_CHAL_OK;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

int moat_chal_parse_answer(struct moat_str q, struct moat_chal_answer *a)
{
    memset(a, 0, sizeof *a);
    bool have_to = false;
    size_t i = 0;
    while (i < q.len) {
        size_t j = i;
        while (j < q.len && q.ptr[j] != '&')
            j++;
        size_t eq = i;
        while (eq < j && q.ptr[eq] != '=')
            eq++;
        struct moat_str name = moat_str_make(q.ptr + i, eq - i);
        struct moat_str val = eq < j ? moat_str_make(q.ptr + eq + 1, j - eq - 1) : MOAT_STR("");
        if (moat_str_eq(name, MOAT_STR("c"))) {
            a->c = val;
        } else if (moat_str_eq(name, MOAT_STR("n"))) {
            a->n = val;
        } else if (moat_str_eq(name, MOAT_STR("to"))) {
            size_t o = 0;
            for (size_t k = 0; k < val.len; k++) {
                char ch = val.ptr[k];
                if (ch == '%') {
                    int hi = k + 2 < val.len ? hexval(val.ptr[k + 1]) : -1;
                    int lo = hi >= 0 ? hexval(val.ptr[k + 2]) : -1;
                    if (lo < 0)
                        return MOAT_ERR;
                    ch = (char)(hi << 4 | lo);
                    k += 2;
                } else if (ch == '+') {
                    ch = ' ';
                }
                if ((unsigned char)ch < 0x21 || ch == 0x7f || o + 1 >= sizeof a->to)
                    return MOAT_ERR; /* no spaces or controls: it goes into Location */
                a->to[o++] = ch;
            }
            a->to[o] = 0;
            a->tolen = o;
            have_to = true;
        }
        i = j + 1;
    }
    if (!a->c.len || !a->n.len)
        return MOAT_ERR;
    if (!have_to || a->tolen == 0) {
        memcpy(a->to, "/", 2);
        a->tolen = 1;
    }
    if (a->to[0] != '/' || (a->tolen > 1 && (a->to[1] == '/' || a->to[1] == '\\')))
        return MOAT_ERR; /* only a path on this site: "//evil.example" is another host */
    return MOAT_OK;
}
