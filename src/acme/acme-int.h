/* acme-int.h: what the ACME files share (the store's layout); not for use outside src/acme/. */
#ifndef MOAT_ACME_ACME_INT_H
#define MOAT_ACME_ACME_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "acme/acme.h"

/* One ACME site: its names (the site's hosts, lowercase, configuration order) and, once
 * obtained, its certificate. The certificate objects are replaced whole (old references
 * dropped) under the store's lock; handshakes take their own references. */
struct acme_site {
    char **names;
    size_t nnames;
    char *joined; /* names joined with ',' */
    X509 *x;
    EVP_PKEY *pk;
    STACK_OF(X509) * chain;
    int64_t not_before, not_after;
    /* client thread's bookkeeping (written under the lock, read by /status) */
    char last_error[256];
    int64_t last_error_at, next_attempt;
    unsigned failures;
    uint64_t issued;
    bool wanted; /* in the configuration in use */
};

/* A pending challenge: HTTP-01 (token -> key authorization) or TLS-ALPN-01 (name -> its
 * challenge certificate and key). */
struct acme_chal {
    unsigned type; /* MOAT_ACME_HTTP01 / MOAT_ACME_TLSALPN01 */
    char token[128];
    char keyauth[256];
    char name[256];
    X509 *x;
    EVP_PKEY *pk;
};

#define ACME_MAX_CHAL 64

struct acme_store {
    pthread_mutex_t lock;
    atomic_bool active;       /* sites exist */
    atomic_bool alpn_pending; /* a TLS-ALPN-01 challenge may be pending */
    struct acme_site **sites;
    size_t nsites;
    struct acme_chal chal[ACME_MAX_CHAL];
    size_t nchal;
    uint64_t renew_before_ms; /* for /status's state */
};
extern struct acme_store acme_store;

/* The site serving <name> (lowercase, <len> bytes), or NULL. Lock held. */
struct acme_site *acme_site_find(const char *name, size_t len);

#endif
