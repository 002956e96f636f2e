/* challenge.h: the proof-of-work challenge and the clearance cookie, stateless: both are
 * HMAC-SHA256 tags (OpenSSL) over what they are bound to, so any worker (or any moat sharing
 * the secret_file) can check them without a lookup. */
#ifndef MOAT_SHIELD_CHALLENGE_H
#define MOAT_SHIELD_CHALLENGE_H

#include "core/common.h"

/* A challenge and a cookie are "<unix seconds>.<22 base64url chars>": at most this long. */
#define MOAT_CHAL_TOKEN_MAX 40
/* How long a challenge may take to be solved. */
#define MOAT_CHAL_MAX_AGE_S 600

/* What a challenge and a cookie are bound to. */
struct moat_chal_ctx {
    const uint8_t *key; /* the HMAC key */
    size_t keylen;
    uint64_t site_id;   /* the site's shield_id */
    uint8_t prefix[16]; /* the client's address prefix: IPv4 /24, IPv6 /64 */
    struct moat_str ua; /* User-Agent (the first 1 KiB counts) */
};

/* The address prefix a challenge and a cookie are bound to: IPv4 /24, IPv6 /64 (NAT pools
 * and privacy addresses move within those). */
void moat_chal_prefix(const uint8_t ip[16], uint8_t out[16]);

enum moat_chal_verdict {
    MOAT_CHAL_OK = 0,
    MOAT_CHAL_MALFORMED, /* not the shape moat writes */
    MOAT_CHAL_FORGED,    /* the tag does not match: forged, or another address, UA or site */
    MOAT_CHAL_EXPIRED,   /* too old (a challenge) or past its expiry (a cookie) */
    MOAT_CHAL_WRONG,     /* the proof-of-work does not have enough leading zero bits */
};
/* A sentence for the visitor about <v>. */
const char *moat_chal_verdict_text(enum moat_chal_verdict v);

/* Writes the challenge issued at <ts> (unix seconds) for <c> into <out> (MOAT_CHAL_TOKEN_MAX
 * bytes, NUL-terminated); returns its length. */
size_t moat_chal_token(const struct moat_chal_ctx *c, uint64_t ts, char *out);
/* Is <tok> a challenge moat issued for <c> less than <max_age_s> before <now_s>? */
enum moat_chal_verdict moat_chal_check_token(const struct moat_chal_ctx *c, struct moat_str tok,
                                             uint64_t now_s, uint64_t max_age_s);
/* Leading zero bits of the 32-byte digest <h>. */
unsigned moat_chal_zero_bits(const uint8_t h[32]);
/* Does SHA-256(<tok> || <nonce>) have <difficulty> leading zero bits? The nonce is 1 to 32
 * letters or digits. */
enum moat_chal_verdict moat_chal_check_pow(struct moat_str tok, struct moat_str nonce,
                                           unsigned difficulty);

/* Writes the clearance cookie value for <c> expiring at <exp_s> into <out>
 * (MOAT_CHAL_TOKEN_MAX bytes); returns its length. */
size_t moat_chal_cookie(const struct moat_chal_ctx *c, uint64_t exp_s, char *out);
/* Is <v> a clearance cookie moat issued for <c> that has not expired at <now_s>? */
enum moat_chal_verdict moat_chal_check_cookie(const struct moat_chal_ctx *c, struct moat_str v,
                                              uint64_t now_s);

/* The answer the challenge page sends, parsed from the query string: c=<challenge>,
 * n=<nonce>, to=<the page first asked for, percent-encoded>. */
struct moat_chal_answer {
    struct moat_str c, n; /* point into the query */
    char to[1024];        /* decoded; a local path ("/..." but not "//..."), NUL-terminated */
    size_t tolen;
};
/* Parses <query> into <a>. MOAT_OK, or MOAT_ERR when c or n is missing or to is not a local
 * path (an open redirect otherwise). A missing to is "/". */
int moat_chal_parse_answer(struct moat_str query, struct moat_chal_answer *a);

#endif
