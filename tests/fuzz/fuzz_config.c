/* fuzz_config.c: the YAML configuration loader must refuse or accept any input without
 * crashing or leaking, and every refusal must carry a "NAME:LINE:COL: " position or the
 * "moat: " prefix. */
#define _GNU_SOURCE 1
#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "config/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 64 * 1024)
        return 0;
    char err[MOAT_CONFIG_ERRLEN];
    err[0] = 0;
    struct moat_config *c =
        moat_config_load_string((const char *)data, size, "fuzz.yaml", err, sizeof err);
    if (c) {
        assert(c->nsites > 0 && c->npools > 0);
        for (size_t i = 0; i < c->nsites; i++)
            assert(c->sites[i].pool >= c->pools && c->sites[i].pool < c->pools + c->npools);
        moat_config_release(&c);
        assert(c == NULL);
    } else {
        assert(!strncmp(err, "fuzz.yaml:", 10) || !strncmp(err, "moat: ", 6));
    }
    return 0;
}

/* Names in a fuzzed config must never reach a resolver: a fuzzer's getaddrinfo would send
 * DNS queries off the machine by the thousand. Interpose a numeric-only lookup; names in
 * /etc/hosts are not needed here. */
#include <dlfcn.h>
#include <netdb.h>

typedef int gai_fn(const char *, const char *, const struct addrinfo *, struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    static gai_fn *real;
    if (!real)
        real = (gai_fn *)dlsym(RTLD_NEXT, "getaddrinfo");
    struct addrinfo h = {0};
    if (hints)
        h = *hints;
    h.ai_flags |= AI_NUMERICHOST | AI_NUMERICSERV;
    return real(node, service, &h, res);
}
