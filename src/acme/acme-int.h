/* acme-int.h: what the ACME files share (the store's layout); not for use outside src/acme/. */
#ifndef MOAT_ACME_ACME_INT_H
#define MOAT_ACME_ACME_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "acme/acme.h"

/* A stapled OCSP response (under the store's lock). */
struct acme_ocsp_resp {
    unsigned char *der; /* the last good response, or NULL */
    size_t len;
    int64_t this_up, next_up;
    char error[256]; /* the last fetch's failure; "" after a success */
};
/* Replaces <r>'s response with <der,len> (taken) and clears its error. Lock held. */
void acme_ocsp_resp_set(struct acme_ocsp_resp *r, unsigned char *der, size_t len, int64_t tu,
                        int64_t nu);
/* When <r> should be fetched again: half its validity, not before <next_try>. */
int64_t acme_ocsp_resp_due(const struct acme_ocsp_resp *r, int64_t next_try);
/* Staples a copy of <r>'s response on <ssl>: SSL_TLSEXT_ERR_OK, or _NOACK (none). Lock held. */
int acme_ocsp_resp_staple(SSL *ssl, const struct acme_ocsp_resp *r);

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
    bool wanted;                /* in the configuration in use */
    struct acme_ocsp_resp ocsp; /* OCSP stapling (acme_ocsp.c) */
    int64_t ocsp_next_try;      /* thread only: when to fetch again */
    unsigned ocsp_failures;
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

/* OCSP stapling of one tls.certificates[] entry (acme_staple.c). The response fields are
 * under the store's lock; the rest is the thread's. */
struct acme_staple {
    char *file;             /* the configured cert path */
    unsigned char sha1[20]; /* of the leaf read from it: what a handshake is served */
    X509 *x;
    STACK_OF(X509) * chain;
    char url[1024]; /* "" when the certificate has no OCSP URL */
    struct acme_ocsp_resp resp;
    int64_t next_try;
    unsigned failures;
    bool wanted;
};

struct acme_store {
    pthread_mutex_t lock;
    atomic_bool active;       /* sites exist */
    atomic_bool alpn_pending; /* a TLS-ALPN-01 challenge may be pending */
    struct acme_site **sites;
    size_t nsites;
    struct acme_chal chal[ACME_MAX_CHAL];
    size_t nchal;
    uint64_t renew_before_ms;   /* for /status's state */
    atomic_bool staples_active; /* a tls.certificates[] entry has an OCSP response */
    struct acme_staple **staples;
    size_t nstaples;
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
/* Fetches the OCSP response for <x> (issued by the first of <chain>) from <url> and checks
 * it. MOAT_OK with *<der> (malloc'd, *<len> bytes) and its thisUpdate / nextUpdate, or
 * MOAT_ERR with <err>. */
int acme_ocsp_fetch(SSL_CTX *ctx, uint64_t timeout_ms, const char *url, X509 *x,
                    STACK_OF(X509) * chain, unsigned char **der, size_t *len, int64_t *tu,
                    int64_t *nu, char *err, size_t errlen);
/* The first OCSP URL of <x>'s AIA, or false. */
bool acme_ocsp_url(X509 *x, char *out, size_t outlen);

/* acme_staple.c, on the ACME thread: OCSP for the certificates of tls.certificates (no ACME
 * needed). Brings the list in line with <cfg> and fetches what is due; returns the time of
 * the next fetch due (Unix seconds), 0 when none. */
int64_t acme_staples_round(const struct moat_config *cfg, SSL_CTX *ctx);
/* From the status callback: staples the response for the certificate <ssl> is served, when
 * one of tls.certificates. SSL_TLSEXT_ERR_OK or SSL_TLSEXT_ERR_NOACK. */
int acme_staple_static(SSL *ssl);

/* The wait after the <n>th failure in a row (acme_client.c). */
uint64_t acme_backoff_ms(const struct moat_cfg_acme *a, unsigned n);

#endif
