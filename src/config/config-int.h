/* config-int.h: helpers shared by the config module's files; not part of the contract. */
#ifndef MOAT_CONFIG_CONFIG_INT_H
#define MOAT_CONFIG_CONFIG_INT_H

#include "config/config.h"

/* moat_addr_parse, also returning the host part as written (lowercased, IPv6 in brackets,
 * "0.0.0.0" for ":PORT") in <host> of <hostlen> bytes, and the port in *<port>. */
int moat_addr_parse_ex(const char *text, struct moat_addr *out, char *host, size_t hostlen,
                       unsigned *port, char *err, size_t errlen);

/* True if <a> is a loopback address (127.0.0.0/8, ::1, v4-mapped 127/8). */
bool moat_addr_is_loopback(const struct moat_addr *a);

#endif
