/* acme_store.c: the process-wide store of ACME certificates and pending challenges, read by
 * TLS handshakes (moat_acme_pick), the workers' HTTP-01 answers and the admin API, written by
 * the client thread (acme_client.c).
 *
 * One mutex guards it. It is taken by a handshake only when ACME is configured (an atomic flag
 * says so first), and by a request only for the challenge path; it is held for a lookup over
 * the sites (a few, linear) and reference counts, never across I/O. An RCU-style pointer swap
 * would avoid the lock, at the price of deferred frees; the ticket ring in src/tls/ makes the
 * same choice for the same reason (the critical section is a handful of instructions). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "acme/acme-int.h"

struct acme_store acme_store = {.lock = PTHREAD_MUTEX_INITIALIZER};

bool moat_acme_active(void)
{
    return atomic_load_explicit(&acme_store.active, memory_order_acquire);
}

struct acme_site *acme_site_find(const char *name, size_t len)
{
    for (size_t i = 0; i < acme_store.nsites; i++) {
        struct acme_site *s = acme_store.sites[i];
        for (size_t j = 0; j < s->nnames; j++)
            if (strlen(s->names[j]) == len && !memcmp(s->names[j], name, len))
                return s;
    }
    return NULL;
}

bool moat_acme_has_name(const char *name, size_t len)
{
    if (!moat_acme_active())
        return false;
    pthread_mutex_lock(&acme_store.lock);
    bool found = acme_site_find(name, len) != NULL;
    pthread_mutex_unlock(&acme_store.lock);
    return found;
}

bool moat_acme_http01(const char *token, size_t len, char *out, size_t outlen)
{
    if (!moat_acme_active() || !len)
        return false;
    bool found = false;
    pthread_mutex_lock(&acme_store.lock);
    for (size_t i = 0; i < acme_store.nchal; i++) {
        const struct acme_chal *c = &acme_store.chal[i];
        if (c->type == MOAT_ACME_HTTP01 && strlen(c->token) == len &&
            !memcmp(c->token, token, len)) {
            snprintf(out, outlen, "%s", c->keyauth);
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&acme_store.lock);
    return found;
}

/* Walks an ALPN list in wire format; a malformed list offers nothing. */
bool moat_acme_alpn_offered(const unsigned char *in, size_t inlen)
{
    static const char proto[] = "acme-tls/1";
    if (!atomic_load_explicit(&acme_store.alpn_pending, memory_order_relaxed))
        return false;
    size_t i = 0;
    while (i < inlen) {
        size_t l = in[i++];
        if (l == 0 || l > inlen - i)
            return false;
        if (l == sizeof proto - 1 && !memcmp(in + i, proto, l))
            return true;
        i += l;
    }
    return false;
}

/* Replaces <ssl>'s certificates with <x>/<pk>/<chain> (references taken by OpenSSL). */
static int use_cert(SSL *ssl, X509 *x, EVP_PKEY *pk, STACK_OF(X509) * chain)
{
    SSL_certs_clear(ssl);
    int ok = SSL_use_cert_and_key(ssl, x, pk, chain, 1);
    if (!ok)
        ERR_clear_error();
    return ok;
}

int moat_acme_pick(SSL *ssl, const char *sni, bool alpn, bool has_default)
{
    if (!moat_acme_active())
        return 1;
    if (!sni || !*sni)
        return alpn ? 0 : 1; /* acme-tls/1 always carries SNI (RFC 8737 3) */
    size_t len = strlen(sni);
    X509 *x = NULL;
    EVP_PKEY *pk = NULL;
    STACK_OF(X509) *chain = NULL;
    bool ours = false;
    pthread_mutex_lock(&acme_store.lock);
    if (alpn) {
        for (size_t i = 0; i < acme_store.nchal; i++) {
            struct acme_chal *c = &acme_store.chal[i];
            if (c->type == MOAT_ACME_TLSALPN01 && !strcmp(c->name, sni)) {
                x = c->x;
                pk = c->pk;
                break;
            }
        }
    } else {
        struct acme_site *s = acme_site_find(sni, len);
        if (s) {
            ours = true;
            x = s->x;
            pk = s->pk;
            chain = s->chain;
        }
    }
    if (x) {
        X509_up_ref(x);
        EVP_PKEY_up_ref(pk);
        chain = chain ? X509_chain_up_ref(chain) : NULL;
    }
    pthread_mutex_unlock(&acme_store.lock);
    int rc = 1;
    if (x)
        rc = use_cert(ssl, x, pk, chain);
    else if (alpn || (ours && !has_default))
        rc = 0;
    X509_free(x);
    EVP_PKEY_free(pk);
    sk_X509_pop_free(chain, X509_free);
    return rc;
}

int moat_acme_staple(SSL *ssl, const char *sni)
{
    if (!moat_acme_active() || !sni || !*sni)
        return acme_staple_static(ssl);
    X509 *cur = SSL_get_certificate(ssl);
    int rc = SSL_TLSEXT_ERR_NOACK;
    pthread_mutex_lock(&acme_store.lock);
    struct acme_site *s = acme_site_find(sni, strlen(sni));
    if (s && s->x == cur) /* the site's certificate, not the default one */
        rc = acme_ocsp_resp_staple(ssl, &s->ocsp);
    pthread_mutex_unlock(&acme_store.lock);
    return rc == SSL_TLSEXT_ERR_OK ? rc : acme_staple_static(ssl);
}

static const char *state_of(const struct acme_site *s, int64_t now, uint64_t renew_before_ms)
{
    if (!s->x)
        return s->failures ? "failing" : "pending";
    if (s->failures)
        return "failing";
    if (s->not_after - (int64_t)(renew_before_ms / 1000) <= now)
        return "renewing";
    return "valid";
}

void moat_acme_each(void (*fn)(const struct moat_acme_status *st, void *ud), void *ud)
{
    pthread_mutex_lock(&acme_store.lock);
    int64_t now = (int64_t)time(NULL);
    for (size_t i = 0; i < acme_store.nsites; i++) {
        const struct acme_site *s = acme_store.sites[i];
        struct moat_acme_status st = {
            .site = s->names[0],
            .names = s->joined,
            .not_before = s->x ? s->not_before : 0,
            .not_after = s->x ? s->not_after : 0,
            .state = state_of(s, now, acme_store.renew_before_ms),
            .last_error = s->last_error,
            .last_error_at = s->last_error_at,
            .next_attempt = s->next_attempt,
            .failures = s->failures,
            .issued = s->issued,
            .ocsp_next_update = s->ocsp.der ? s->ocsp.next_up : 0,
            .ocsp_error = s->ocsp.error,
        };
        fn(&st, ud);
    }
    pthread_mutex_unlock(&acme_store.lock);
}
