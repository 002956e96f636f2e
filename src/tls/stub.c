/* stub.c: placeholder until the TLS module lands (refuses TLS). */
#include "tls/tls.h"

int moat_tls_build(struct moat_config *cfg, char *err, size_t errlen)
{
    (void)cfg;
    (void)err;
    (void)errlen;
    return MOAT_OK;
}

int moat_tls_accept(const struct moat_config *cfg, struct moat_sock *s, struct moat_tls_stats *st)
{
    return MOAT_ERR;
}

int moat_tls_connect(const struct moat_cfg_pool *pool, const char *host, struct moat_sock *s,
                     struct moat_tls_stats *st)
{
    return MOAT_ERR;
}

void moat_tls_count_timeout(struct moat_sock *s)
{
}
