/* acme_staple.c: OCSP stapling for the certificates of tls.certificates, on the ACME thread
 * (which runs with or without tls.acme). Each configured certificate file is read again here
 * (the snapshot keeps no X509 for us); a handshake is stapled when the certificate it is served
 * has the SHA-1 of the leaf read from the file, so a file replaced but not yet reloaded is
 * never stapled with a response about another certificate. Responses live in memory only
 * (there is no storage directory without tls.acme); a restart fetches them again. Retries
 * after a failure: 1 min doubling up to 1 h, with jitter; a good response is fetched again
 * when half its validity has passed. */
#include <stdio.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "acme/acme-int.h"
#include "core/log.h"

static void staple_free(struct acme_staple *st)
{
    free(st->file);
    X509_free(st->x);
    sk_X509_pop_free(st->chain, X509_free);
    free(st->resp.der);
    free(st);
}

/* Reads <st->file>: the leaf, the chain, the OCSP URL and the leaf's SHA-1. */
static void staple_read(struct acme_staple *st)
{
    BIO *b = BIO_new_file(st->file, "r");
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    STACK_OF(X509) *chain = sk_X509_new_null();
    X509 *ca;
    while (x && chain && b && (ca = PEM_read_bio_X509(b, NULL, NULL, NULL)))
        if (!sk_X509_push(chain, ca))
            X509_free(ca);
    BIO_free(b);
    ERR_clear_error();
    unsigned n = 0;
    unsigned char md[20];
    if (!x || !chain || !X509_digest(x, EVP_sha1(), md, &n) || n != sizeof md) {
        X509_free(x);
        sk_X509_pop_free(chain, X509_free);
        return;
    }
    X509_free(st->x);
    sk_X509_pop_free(st->chain, X509_free);
    st->x = x;
    st->chain = chain;
    if (!acme_ocsp_url(x, st->url, sizeof st->url))
        st->url[0] = '\0';
    pthread_mutex_lock(&acme_store.lock);
    if (memcmp(st->sha1, md, sizeof md)) { /* another certificate: its old response goes */
        memcpy(st->sha1, md, sizeof md);
        acme_ocsp_resp_set(&st->resp, NULL, 0, 0, 0);
        st->next_try = 0;
        st->failures = 0;
    }
    pthread_mutex_unlock(&acme_store.lock);
}

/* Makes the list that of <cfg>'s tls.certificates (by path), reading each file again. */
static void staples_sync(const struct moat_config *cfg)
{
    for (size_t i = 0; i < acme_store.nstaples; i++)
        acme_store.staples[i]->wanted = false;
    for (size_t i = 0; i < cfg->tls.ncerts; i++) {
        const char *f = cfg->tls.certs[i].cert;
        struct acme_staple *st = NULL;
        for (size_t k = 0; k < acme_store.nstaples && !st; k++)
            if (!strcmp(acme_store.staples[k]->file, f))
                st = acme_store.staples[k];
        if (!st) {
            if (!(st = calloc(1, sizeof *st)) || !(st->file = strdup(f))) {
                free(st);
                continue;
            }
            /* handshakes walk the array under the lock: it moves under the lock too */
            pthread_mutex_lock(&acme_store.lock);
            struct acme_staple **v =
                realloc(acme_store.staples, (acme_store.nstaples + 1) * sizeof *v);
            if (v) {
                acme_store.staples = v;
                v[acme_store.nstaples++] = st;
            }
            pthread_mutex_unlock(&acme_store.lock);
            if (!v) {
                staple_free(st);
                continue;
            }
        }
        st->wanted = true;
        staple_read(st);
    }
    pthread_mutex_lock(&acme_store.lock);
    size_t k = 0;
    bool any = false;
    for (size_t i = 0; i < acme_store.nstaples; i++) {
        struct acme_staple *st = acme_store.staples[i];
        if (st->wanted) {
            acme_store.staples[k++] = st;
            any |= st->url[0] != '\0';
        } else
            staple_free(st);
    }
    acme_store.nstaples = k;
    atomic_store(&acme_store.staples_active, any);
    pthread_mutex_unlock(&acme_store.lock);
}

static uint64_t retry_ms(unsigned n)
{
    uint64_t w = 60000;
    for (unsigned i = 1; i < n && w < 3600000; i++)
        w *= 2;
    w = MOAT_MIN(w, 3600000);
    uint32_t rnd = 0;
    if (RAND_bytes((unsigned char *)&rnd, sizeof rnd) != 1)
        rnd = (uint32_t)time(NULL);
    return w * 3 / 4 + (w / 2) * (rnd % 1001) / 1000;
}

static int64_t due_of(const struct acme_staple *st)
{
    return acme_ocsp_resp_due(&st->resp, st->next_try);
}

int64_t acme_staples_round(const struct moat_config *cfg, SSL_CTX *ctx)
{
    static uint64_t gen_seen;
    /* The files are read again when the configuration changed (a reload: perhaps new files
     * under the same paths), not at every round. */
    if (cfg->generation != gen_seen || acme_store.nstaples != cfg->tls.ncerts) {
        staples_sync(cfg);
        gen_seen = cfg->generation;
    }
    int64_t now = (int64_t)time(NULL), next = 0;
    uint64_t timeout = cfg->tls.acme.enabled ? cfg->tls.acme.timeout_ms : 30000;
    for (size_t i = 0; i < acme_store.nstaples; i++) {
        struct acme_staple *st = acme_store.staples[i];
        if (!st->x || !st->url[0])
            continue;
        if (due_of(st) <= now) {
            unsigned char *der = NULL;
            size_t len = 0;
            int64_t tu = 0, nu = 0;
            char err[256] = "";
            if (acme_ocsp_fetch(ctx, timeout, st->url, st->x, st->chain, &der, &len, &tu, &nu, err,
                                sizeof err) == MOAT_OK) {
                pthread_mutex_lock(&acme_store.lock);
                acme_ocsp_resp_set(&st->resp, der, len, tu, nu);
                pthread_mutex_unlock(&acme_store.lock);
                st->failures = 0;
                st->next_try = 0;
                moat_log_info("ocsp: %s: response stapled (good, next update %lld)", st->file,
                              (long long)nu);
            } else {
                uint64_t w = retry_ms(++st->failures);
                st->next_try = now + (int64_t)((w + 999) / 1000);
                pthread_mutex_lock(&acme_store.lock);
                snprintf(st->resp.error, sizeof st->resp.error, "%s", err);
                pthread_mutex_unlock(&acme_store.lock);
                moat_log_warn("ocsp: %s: fetch from %s failed (%u in a row; next try in %llus; "
                              "handshakes go on without a staple): %s",
                              st->file, st->url, st->failures,
                              (unsigned long long)((w + 999) / 1000), err);
            }
        }
        int64_t d = due_of(st);
        next = next ? MOAT_MIN(next, d) : d;
    }
    return next;
}

int acme_staple_static(SSL *ssl)
{
    if (!atomic_load_explicit(&acme_store.staples_active, memory_order_relaxed))
        return SSL_TLSEXT_ERR_NOACK;
    X509 *cur = SSL_get_certificate(ssl);
    unsigned char md[20];
    unsigned n = 0;
    /* OpenSSL keeps each certificate's SHA-1 once computed: no hashing per handshake. */
    if (!cur || !X509_digest(cur, EVP_sha1(), md, &n) || n != sizeof md)
        return SSL_TLSEXT_ERR_NOACK;
    int rc = SSL_TLSEXT_ERR_NOACK;
    pthread_mutex_lock(&acme_store.lock);
    for (size_t i = 0; i < acme_store.nstaples && rc != SSL_TLSEXT_ERR_OK; i++) {
        const struct acme_staple *st = acme_store.staples[i];
        if (!memcmp(st->sha1, md, sizeof md))
            rc = acme_ocsp_resp_staple(ssl, &st->resp);
    }
    pthread_mutex_unlock(&acme_store.lock);
    return rc;
}

void moat_ocsp_each(void (*fn)(const struct moat_ocsp_status *st, void *ud), void *ud)
{
    pthread_mutex_lock(&acme_store.lock);
    for (size_t i = 0; i < acme_store.nstaples; i++) {
        const struct acme_staple *st = acme_store.staples[i];
        if (!st->url[0])
            continue;
        struct moat_ocsp_status o = {.file = st->file,
                                     .url = st->url,
                                     .next_update = st->resp.der ? st->resp.next_up : 0,
                                     .last_error = st->resp.error};
        fn(&o, ud);
    }
    pthread_mutex_unlock(&acme_store.lock);
}
