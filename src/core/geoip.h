/* geoip.h: country lookups in a MaxMind database (libmaxminddb) and CIDR matching.
 *
 * Both answer one question about a client address: which network or country it belongs to.
 * The load balancer's geo steering uses them (CIDR table first, then the database); so can any
 * other area that filters or routes by address. Neither allocates per lookup and both are safe
 * to call from several threads at once on the same object (the database is mapped read-only). */
#ifndef MOAT_CORE_GEOIP_H
#define MOAT_CORE_GEOIP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct moat_geoip;

/* Opens the MaxMind database at <path> (memory-mapped, read-only). Returns the handle, or NULL
 * with a message in <err> (<errlen> bytes, NUL-terminated) naming the file and the reason. The
 * caller owns the handle and frees it with moat_geoip_close(). */
struct moat_geoip *moat_geoip_open(const char *path, char *err, size_t errlen);

/* Looks up the country of <sa> (AF_INET or AF_INET6; an IPv4-mapped IPv6 address is looked up
 * as the IPv4 address). Returns 0 and the ISO 3166 code from `country.iso_code` in <cc> (two
 * letters and a NUL), or -1 when the address is not in the database, has no two-letter country
 * code, or cannot be looked up. <cc> is left untouched on -1. */
int moat_geoip_country(const struct moat_geoip *g, const struct sockaddr *sa, char cc[3]);

/* Unmaps and frees <g>; NULL is a no-op. */
void moat_geoip_close(struct moat_geoip *g);

/* One network, IPv4 stored as its v4-mapped IPv6 form (::ffff:a.b.c.d), so one comparison
 * serves both families: "10.0.0.0/8" is ::ffff:10.0.0.0/104. */
struct moat_cidr {
    uint8_t addr[16];
    uint8_t prefix; /* 0..128 on the mapped form */
};

/* Parses <s> (NUL-terminated): "a.b.c.d/n" (n 0..32), "x:y::z/n" (n 0..128) or a bare address
 * (/32 or /128). Returns 0 and fills <out>, or -1 on anything malformed: no address, a prefix
 * out of range or with other than digits, spaces or trailing bytes, or bits set below the
 * prefix ("10.0.0.1/8": a typo more often than intent). <out> is left untouched on -1. */
int moat_cidr_parse(const char *s, struct moat_cidr *out);

/* moat_cidr_parse() with the reason of a -1 in <err> (<errlen> bytes, NUL-terminated; the
 * configuration loader prints it after the file and line). */
int moat_cidr_parse_err(const char *s, struct moat_cidr *out, char *err, size_t errlen);

/* 1 if <sa> lies in <c>, else 0. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) matches IPv4
 * networks, and an IPv4 address matches an IPv6 network that covers its mapped form (such as
 * ::ffff:0:0/96). Families other than AF_INET and AF_INET6 never match. */
int moat_cidr_match(const struct moat_cidr *c, const struct sockaddr *sa);

/* 1 if the 16-byte address <addr> (IPv4 as v4-mapped) lies in <c>, else 0. */
int moat_cidr_match_addr(const struct moat_cidr *c, const uint8_t addr[16]);

#endif
