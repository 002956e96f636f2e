/* parse_util.c: the value parsers behind the config tables: durations, sizes, addresses, CIDRs. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>

#include "config/config-int.h"

/* Reads 1*DIGIT from *<s> into *<out>, advancing *<s>. Fails on no digit or on overflow of
 * uint64_t, so "99999999999999999999s" is an error rather than a silent wrap. */
static int parse_u64(const char **s, uint64_t *out)
{
    const char *p = *s;
    uint64_t v = 0;
    if (!isdigit((unsigned char)*p))
        return MOAT_ERR;
    for (; isdigit((unsigned char)*p); p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return MOAT_ERR;
        v = v * 10 + d;
    }
    *s = p;
    *out = v;
    return MOAT_OK;
}

static int mul_checked(uint64_t a, uint64_t b, uint64_t *out)
{
    if (b != 0 && a > UINT64_MAX / b)
        return MOAT_ERR;
    *out = a * b;
    return MOAT_OK;
}

/* Integers only: "1.5s" is refused with the hint to write 1500ms. Fractions would need a
 * decimal parser with its own rounding rules for a notation nobody needs at ms precision. */
int moat_parse_duration_ms(const char *s, uint64_t *out)
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {
        {"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000},
    };
    uint64_t n;
    if (!s || parse_u64(&s, &n) != MOAT_OK)
        return MOAT_ERR;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(units); i++)
        if (strcmp(s, units[i].unit) == 0)
            return mul_checked(n, units[i].ms, out);
    return MOAT_ERR;
}

/* Sizes are always powers of 1024, whatever the spelling: "16k", "16kb", "16KiB" are all
 * 16384. A config author who writes "MB" for a buffer means the binary unit in practice,
 * and two meanings for near-identical spellings would be a trap. */
int moat_parse_size(const char *s, uint64_t *out)
{
    static const struct {
        const char *unit;
        unsigned shift;
    } units[] = {
        {"", 0},     {"b", 0},  {"k", 10},  {"kb", 10},  {"kib", 10}, {"m", 20},  {"mb", 20},
        {"mib", 20}, {"g", 30}, {"gb", 30}, {"gib", 30}, {"t", 40},   {"tb", 40}, {"tib", 40},
    };
    uint64_t n;
    if (!s || parse_u64(&s, &n) != MOAT_OK)
        return MOAT_ERR;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(units); i++)
        if (strcasecmp(s, units[i].unit) == 0)
            return mul_checked(n, (uint64_t)1 << units[i].shift, out);
    return MOAT_ERR;
}

static bool valid_hostname(const char *h, size_t n)
{
    if (n == 0 || n > 253)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)h[i];
        if (!(isalnum(c) || c == '-' || c == '.' || c == '_'))
            return false;
    }
    return h[0] != '.' && h[0] != '-';
}

int moat_addr_parse_ex(const char *text, struct moat_addr *out, char *host, size_t hostlen,
                       unsigned *port, char *err, size_t errlen)
{
    char hbuf[256];
    const char *colon, *hs;
    size_t hn;
    bool bracketed = false;

    memset(out, 0, sizeof(*out));
    if (!text || !*text) {
        snprintf(err, errlen, "empty address (use HOST:PORT, e.g. 127.0.0.1:8080)");
        return MOAT_ERR;
    }
    if (text[0] == '[') {
        const char *rb = strchr(text, ']');
        if (!rb || rb[1] != ':') {
            snprintf(err, errlen, "\"%s\" is not an address (use [IPV6]:PORT, e.g. [::1]:8080)",
                     text);
            return MOAT_ERR;
        }
        hs = text + 1;
        hn = (size_t)(rb - hs);
        colon = rb + 1;
        bracketed = true;
    } else {
        colon = strrchr(text, ':');
        if (!colon) {
            snprintf(err, errlen, "\"%s\" has no port (use HOST:PORT, e.g. 127.0.0.1:8080)", text);
            return MOAT_ERR;
        }
        hs = text;
        hn = (size_t)(colon - text);
        if (memchr(hs, ':', hn)) {
            snprintf(err, errlen, "\"%s\": an IPv6 address needs brackets, e.g. [::1]:8080", text);
            return MOAT_ERR;
        }
    }
    const char *ps = colon + 1;
    uint64_t pv;
    if (parse_u64(&ps, &pv) != MOAT_OK || *ps || pv == 0 || pv > 65535) {
        snprintf(err, errlen, "\"%s\": the port must be a number from 1 to 65535", text);
        return MOAT_ERR;
    }
    if (hn >= sizeof(hbuf)) {
        snprintf(err, errlen, "\"%.40s...\": host name too long", text);
        return MOAT_ERR;
    }
    memcpy(hbuf, hs, hn);
    hbuf[hn] = '\0';
    for (size_t i = 0; i < hn; i++)
        hbuf[i] = (char)tolower((unsigned char)hbuf[i]);

    struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;
    char num[INET6_ADDRSTRLEN];
    bool name = false;

    if (hn == 0 && !bracketed) {
        sin->sin_family = AF_INET; /* ":PORT" means every IPv4 address */
        sin->sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (bracketed) {
        if (inet_pton(AF_INET6, hbuf, &sin6->sin6_addr) != 1) {
            snprintf(err, errlen, "\"%s\": \"%s\" is not an IPv6 address", text, hbuf);
            return MOAT_ERR;
        }
        sin6->sin6_family = AF_INET6;
    } else if (inet_pton(AF_INET, hbuf, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
    } else {
        /* Numeric forms were tried first so that literal addresses never touch the
         * resolver; only a real name costs a getaddrinfo() at load time. */
        if (!valid_hostname(hbuf, hn)) {
            snprintf(err, errlen, "\"%s\": \"%s\" is not a valid host name or address", text, hbuf);
            return MOAT_ERR;
        }
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        struct addrinfo *res = NULL;
        int rc = getaddrinfo(hbuf, NULL, &hints, &res);
        if (rc != 0 || !res) {
            snprintf(err, errlen, "cannot resolve \"%s\": %s", hbuf,
                     rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
            if (res)
                freeaddrinfo(res);
            return MOAT_ERR;
        }
        memcpy(&out->ss, res->ai_addr, res->ai_addrlen);
        freeaddrinfo(res);
        name = true;
    }

    if (out->ss.ss_family == AF_INET) {
        sin->sin_port = htons((uint16_t)pv);
        out->len = sizeof(*sin);
        inet_ntop(AF_INET, &sin->sin_addr, num, sizeof(num));
    } else {
        sin6->sin6_port = htons((uint16_t)pv);
        out->len = sizeof(*sin6);
        inet_ntop(AF_INET6, &sin6->sin6_addr, num, sizeof(num));
    }

    /* The text keeps a name as a name: logs and the admin API should say
     * "origin.internal:80", and the address may be re-resolved later. Literals are
     * canonicalized ("::0001" -> "::1"). */
    char hostout[300];
    if (name)
        snprintf(hostout, sizeof(hostout), "%s", hbuf);
    else if (out->ss.ss_family == AF_INET6)
        snprintf(hostout, sizeof(hostout), "[%s]", num);
    else
        snprintf(hostout, sizeof(hostout), "%s", num);
    if ((size_t)snprintf(out->text, sizeof(out->text), "%s:%u", hostout, (unsigned)pv) >=
        sizeof(out->text)) {
        snprintf(err, errlen, "\"%.40s...\": address too long", text);
        return MOAT_ERR;
    }
    if (host)
        snprintf(host, hostlen, "%s", hostout);
    if (port)
        *port = (unsigned)pv;
    return MOAT_OK;
}

int moat_addr_parse(const char *text, struct moat_addr *out, char *err, size_t errlen)
{
    return moat_addr_parse_ex(text, out, NULL, 0, NULL, err, errlen);
}

bool moat_addr_is_loopback(const struct moat_addr *a)
{
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&a->ss;
        return (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
    }
    if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&a->ss;
        const uint8_t *b = sin6->sin6_addr.s6_addr;
        if (IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr))
            return true;
        return IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr) && b[12] == 127;
    }
    return false;
}
