/* fuzz_cidr.c: the CIDR parser (src/core/geoip.c) on arbitrary bytes: whatever it accepts
 * matches its own network address, and a bare address it accepts is a /32 or /128 that
 * matches itself. */
#include <arpa/inet.h>
#include <assert.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

#include "core/geoip.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char s[128];
    if (size >= sizeof s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    struct moat_cidr c;
    char err[256];
    int rc = moat_cidr_parse_err(s, &c, err, sizeof err);
    assert(rc == 0 || rc == -1);
    assert(moat_cidr_parse(s, &c) == rc);
    if (rc != 0)
        return 0;
    assert(c.prefix <= 128);
    /* The network address itself lies in the network, in both sockaddr forms. */
    struct sockaddr_in6 s6 = {.sin6_family = AF_INET6};
    memcpy(s6.sin6_addr.s6_addr, c.addr, 16);
    assert(moat_cidr_match(&c, (const struct sockaddr *)&s6));
    assert(moat_cidr_match_addr(&c, c.addr));
    if (IN6_IS_ADDR_V4MAPPED(&s6.sin6_addr)) {
        struct sockaddr_in s4 = {.sin_family = AF_INET};
        memcpy(&s4.sin_addr, c.addr + 12, 4);
        assert(moat_cidr_match(&c, (const struct sockaddr *)&s4));
    }
    return 0;
}
