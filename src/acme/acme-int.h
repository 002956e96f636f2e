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
    /* OCSP stapling (acme_ocsp.c): the last good response for x (DER), when it runs out */
    unsigned char *ocsp;
    size_t ocsp_len;
    int64_t ocsp_this_update, ocsp_next_update;
    int64_t ocsp_next_try; /* thread only: when to fetch again */
    unsigned ocsp_failures;
    char ocsp_error[256];
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

/* acme_ocsp.c, on the ACME thread. Fetches <s>'s OCSP response when it has none or half its
 * validity has passed (and s->ocsp_next_try has come), over <ctx> (http:// responders need
 * none), checks it and installs it (store and <storage>/<first host>.ocsp). A failure is
 * logged, kept in s->ocsp_error and retried after <a>'s backoff; it never touches the
 * certificate. */
void acme_ocsp_round(const struct moat_cfg_acme *a, SSL_CTX *ctx, struct acme_site *s);
/* Loads <storage>/<first host>.ocsp when it is a valid response for <s>'s certificate. */
void acme_ocsp_load(const char *storage, struct acme_site *s);
/* Drops <s>'s response (a new certificate). Lock held. */
void acme_ocsp_clear(struct acme_site *s);
/* When the next OCSP fetch of <s> is due (Unix seconds), 0 when it has no OCSP URL. */
int64_t acme_ocsp_due(const struct acme_site *s);
/* The wait after the <n>th failure in a row (acme_client.c). */
uint64_t acme_backoff_ms(const struct moat_cfg_acme *a, unsigned n);

#endif
