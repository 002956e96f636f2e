/* geoip.c: MaxMind country lookups through libmaxminddb, and CIDR parsing and matching. */
#include "core/geoip.h"

#include <arpa/inet.h>
#include <maxminddb.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct moat_geoip {
    MMDB_s mmdb;
};

struct moat_geoip *moat_geoip_open(const char *path, char *err, size_t errlen)
{
    struct moat_geoip *g = calloc(1, sizeof(*g));
    if (!g) {
        snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    /* MMDB_MODE_MMAP: the file is mapped once, shared by every thread, and lookups read it in
     * place; the library's other mode is the same thing on every platform moat runs on. */
    int rc = MMDB_open(path, MMDB_MODE_MMAP, &g->mmdb);
    if (rc != MMDB_SUCCESS) {
        snprintf(err, errlen, "%s: %s", path, MMDB_strerror(rc));
        free(g);
        return NULL;
    }
    return g;
}

void moat_geoip_close(struct moat_geoip *g)
{
    if (!g)
        return;
    MMDB_close(&g->mmdb);
    free(g);
}

/* The IPv4 address inside an IPv4-mapped IPv6 one, or NULL. */
static const uint8_t *v4_mapped(const struct sockaddr_in6 *s6)
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(s6->sin6_addr.s6_addr, prefix, sizeof(prefix)) != 0)
        return NULL;
    return s6->sin6_addr.s6_addr + 12;
}

int moat_geoip_country(const struct moat_geoip *g, const struct sockaddr *sa, char cc[3])
{
    if (!g || !sa)
        return -1;
    /* A mapped address is looked up as IPv4: databases alias ::ffff:0:0/96 to the IPv4 tree by
     * convention only, and a database that does not would answer nothing for a dual-stack
     * listener's IPv4 clients. */
    struct sockaddr_in v4;
    if (sa->sa_family == AF_INET6) {
        const uint8_t *m = v4_mapped((const struct sockaddr_in6 *)sa);
        if (m) {
            memset(&v4, 0, sizeof(v4));
            v4.sin_family = AF_INET;
            memcpy(&v4.sin_addr, m, 4);
            sa = (const struct sockaddr *)&v4;
        }
    } else if (sa->sa_family != AF_INET) {
        return -1;
    }
    int mmdb_err = MMDB_SUCCESS;
    MMDB_lookup_result_s res = MMDB_lookup_sockaddr(&g->mmdb, sa, &mmdb_err);
    if (mmdb_err != MMDB_SUCCESS || !res.found_entry)
        return -1;
    MMDB_entry_data_s d;
    if (MMDB_get_value(&res.entry, &d, "country", "iso_code", NULL) != MMDB_SUCCESS)
        return -1;
    if (!d.has_data || d.type != MMDB_DATA_TYPE_UTF8_STRING || d.data_size != 2)
        return -1;
    cc[0] = d.utf8_string[0];
    cc[1] = d.utf8_string[1];
    cc[2] = '\0';
    return 0;
}

int moat_cidr_parse_err(const char *s, struct moat_cidr *out, char *err, size_t errlen)
{
    char abuf[INET6_ADDRSTRLEN];
    const char *slash = s ? strchr(s, '/') : NULL;
    size_t alen = slash ? (size_t)(slash - s) : (s ? strlen(s) : 0);
    struct moat_cidr c;
    bool v4;

    memset(&c, 0, sizeof(c));
    if (alen == 0 || alen >= sizeof(abuf))
        goto not_cidr;
    memcpy(abuf, s, alen);
    abuf[alen] = '\0';
    if (inet_pton(AF_INET, abuf, c.addr + 12) == 1) {
        v4 = true;
        c.addr[10] = c.addr[11] = 0xff;
    } else if (inet_pton(AF_INET6, abuf, c.addr) == 1) {
        v4 = false;
    } else {
        goto not_cidr;
    }

    unsigned max = v4 ? 32 : 128, prefix = max;
    if (slash) {
        const char *p = slash + 1;
        int n = 0;
        prefix = 0;
        for (; *p >= '0' && *p <= '9' && n < 5; p++, n++)
            prefix = prefix * 10 + (unsigned)(*p - '0');
        if (n == 0 || n > 3 || *p || prefix > max) {
            if (err)
                snprintf(err, errlen, "\"%s\": the prefix length must be 0..%u", s, max);
            return -1;
        }
    }
    c.prefix = (uint8_t)(prefix + (v4 ? 96 : 0));
    for (unsigned bit = c.prefix; bit < 128; bit++) {
        if (c.addr[bit / 8] & (0x80u >> (bit % 8))) {
            if (err)
                snprintf(err, errlen,
                         "\"%s\" has bits set after the /%u prefix (did you mean the "
                         "network address?)",
                         s, prefix);
            return -1;
        }
    }
    *out = c;
    return 0;

not_cidr:
    if (err)
        snprintf(err, errlen, "\"%s\" is not a CIDR block (use e.g. 10.0.0.0/8 or ::1/128)",
                 s ? s : "");
    return -1;
}

int moat_cidr_parse(const char *s, struct moat_cidr *out)
{
    return moat_cidr_parse_err(s, out, NULL, 0);
}

int moat_cidr_match_addr(const struct moat_cidr *c, const uint8_t addr[16])
{
    unsigned full = c->prefix / 8, rest = c->prefix % 8;
    if (full && memcmp(c->addr, addr, full) != 0)
        return 0;
    if (rest == 0)
        return 1;
    uint8_t mask = (uint8_t)(0xffu << (8 - rest));
    return (c->addr[full] & mask) == (addr[full] & mask);
}

int moat_cidr_match(const struct moat_cidr *c, const struct sockaddr *sa)
{
    uint8_t a[16];
    if (!c || !sa)
        return 0;
    if (sa->sa_family == AF_INET) {
        memset(a, 0, 10);
        a[10] = a[11] = 0xff;
        memcpy(a + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        memcpy(a, ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr, 16);
    } else {
        return 0;
    }
    return moat_cidr_match_addr(c, a);
}
