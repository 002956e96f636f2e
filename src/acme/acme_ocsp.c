/* acme_ocsp.c: OCSP stapling for the ACME certificates: responses fetched on the ACME thread
 * (RFC 6960 over HTTP POST), checked (signed by the issuer or a responder it authorized, for
 * our certificate, "good", within its validity), kept in the store for moat_acme_staple and
 * on disk (<storage>/<first host>.ocsp) for a restart, and refreshed when half their validity
 * has passed. A responder that fails is retried with the orders' backoff; handshakes go on
 * without a staple, never with a failure. */
#include <stdio.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/x509v3.h>

#include "acme/acme-http.h"
#include "acme/acme-int.h"
#include "core/log.h"

/* The first OCSP URL of <x>'s AIA extension into <out>; false when it has none. */
static bool ocsp_url(X509 *x, char *out, size_t outlen)
{
    STACK_OF(OPENSSL_STRING) *urls = X509_get1_ocsp(x);
    const char *u =
        urls && sk_OPENSSL_STRING_num(urls) > 0 ? sk_OPENSSL_STRING_value(urls, 0) : NULL;
    if (u)
        snprintf(out, outlen, "%s", u);
    X509_email_free(urls);
    return u != NULL;
}

static int64_t gt_unix(const ASN1_GENERALIZEDTIME *t)
{
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return (int64_t)timegm(&tm);
}

/* Checks the DER response <der,len> for <x> issued by <issuer> (with <chain> to find a
 * delegated responder). MOAT_OK with its thisUpdate/nextUpdate, or MOAT_ERR with <err>. */
static int check_response(const unsigned char *der, size_t len, X509 *x, X509 *issuer,
                          STACK_OF(X509) * chain, int64_t *this_up, int64_t *next_up, char *err,
                          size_t errlen)
{
    const unsigned char *p = der;
    OCSP_RESPONSE *resp = d2i_OCSP_RESPONSE(NULL, &p, (long)len);
    OCSP_BASICRESP *bs = NULL;
    OCSP_CERTID *id = NULL;
    int rc = MOAT_ERR, status, reason;
    ASN1_GENERALIZEDTIME *rev, *thisupd, *nextupd;
    if (!resp) {
        snprintf(err, errlen, "not an OCSP response");
        goto out;
    }
    if (OCSP_response_status(resp) != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
        snprintf(err, errlen, "the responder says %s",
                 OCSP_response_status_str(OCSP_response_status(resp)));
        goto out;
    }
    if (!(bs = OCSP_response_get1_basic(resp)) || !(id = OCSP_cert_to_id(NULL, x, issuer))) {
        snprintf(err, errlen, "no basic response");
        goto out;
    }
    /* The issuer is trusted here as the anchor (OCSP_TRUSTOTHER): the response must be
     * signed by it, or by a responder certificate it issued for OCSP signing. */
    X509_STORE *st = X509_STORE_new();
    int ok = st && OCSP_basic_verify(bs, chain, st, OCSP_TRUSTOTHER) == 1;
    X509_STORE_free(st);
    if (!ok) {
        unsigned long e = ERR_peek_error();
        snprintf(err, errlen, "the response's signature does not verify (%s)",
                 e ? ERR_reason_error_string(e) : "?");
        goto out;
    }
    if (!OCSP_resp_find_status(bs, id, &status, &reason, &rev, &thisupd, &nextupd)) {
        snprintf(err, errlen, "the response is not about this certificate");
        goto out;
    }
    if (status != V_OCSP_CERTSTATUS_GOOD) {
        snprintf(err, errlen, "the certificate's status is %s", OCSP_cert_status_str(status));
        goto out;
    }
    if (!OCSP_check_validity(thisupd, nextupd, 300, -1)) {
        snprintf(err, errlen, "the response is out of date");
        goto out;
    }
    *this_up = gt_unix(thisupd);
    /* Without nextUpdate ("newer information is always available") an hour is assumed. */
    *next_up = nextupd ? gt_unix(nextupd) : *this_up + 3600;
    rc = MOAT_OK;
out:
    OCSP_CERTID_free(id);
    OCSP_BASICRESP_free(bs);
    OCSP_RESPONSE_free(resp);
    ERR_clear_error();
    return rc;
}

/* Copies what the check needs out of the store: references to <s>'s certificate and issuer. */
static bool take_cert(struct acme_site *s, X509 **x, STACK_OF(X509) * *chain)
{
    pthread_mutex_lock(&acme_store.lock);
    bool ok = s->x && s->chain && sk_X509_num(s->chain) > 0;
    if (ok) {
        X509_up_ref(s->x);
        *x = s->x;
        *chain = X509_chain_up_ref(s->chain);
    }
    pthread_mutex_unlock(&acme_store.lock);
    return ok && *chain;
}

static void put(struct acme_site *s, X509 *x, unsigned char *der, size_t len, int64_t tu,
                int64_t nu)
{
    pthread_mutex_lock(&acme_store.lock);
    if (s->x == x) { /* not renewed meanwhile */
        acme_ocsp_resp_set(&s->ocsp, der, len, tu, nu);
        der = NULL;
    }
    pthread_mutex_unlock(&acme_store.lock);
    free(der);
}

void acme_ocsp_resp_set(struct acme_ocsp_resp *r, unsigned char *der, size_t len, int64_t tu,
                        int64_t nu)
{
    free(r->der);
    r->der = der;
    r->len = len;
    r->this_up = tu;
    r->next_up = nu;
    r->error[0] = '\0';
}

int64_t acme_ocsp_resp_due(const struct acme_ocsp_resp *r, int64_t next_try)
{
    int64_t due = r->der ? r->this_up + (r->next_up - r->this_up) / 2 : 0;
    return MOAT_MAX(due, next_try);
}

int acme_ocsp_resp_staple(SSL *ssl, const struct acme_ocsp_resp *r)
{
    unsigned char *der = r->der ? OPENSSL_malloc(r->len) : NULL;
    if (!der)
        return SSL_TLSEXT_ERR_NOACK;
    memcpy(der, r->der, r->len);
    if (!SSL_set_tlsext_status_ocsp_resp(ssl, der, (long)r->len)) { /* takes <der> */
        OPENSSL_free(der);
        ERR_clear_error();
        return SSL_TLSEXT_ERR_NOACK;
    }
    return SSL_TLSEXT_ERR_OK;
}

void acme_ocsp_clear(struct acme_site *s)
{
    acme_ocsp_resp_set(&s->ocsp, NULL, 0, 0, 0);
    s->ocsp_next_try = 0;
    s->ocsp_failures = 0;
    s->ocsp.error[0] = '\0';
}

int64_t acme_ocsp_due(const struct acme_site *s)
{
    char url[16];
    if (!s->x || !ocsp_url(s->x, url, sizeof url))
        return 0;
    return acme_ocsp_resp_due(&s->ocsp, s->ocsp_next_try);
}

void acme_ocsp_load(const char *storage, struct acme_site *s)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/%s.ocsp", storage, s->names[0]);
    FILE *f = fopen(path, "rb");
    if (!f)
        return;
    unsigned char *der = malloc(65536);
    size_t len = der ? fread(der, 1, 65536, f) : 0;
    fclose(f);
    X509 *x = NULL;
    STACK_OF(X509) *chain = NULL;
    int64_t tu, nu;
    char err[256];
    if (der && len && take_cert(s, &x, &chain) &&
        check_response(der, len, x, sk_X509_value(chain, 0), chain, &tu, &nu, err, sizeof err) ==
            MOAT_OK) {
        put(s, x, der, len, tu, nu);
        der = NULL;
    }
    free(der);
    X509_free(x);
    sk_X509_pop_free(chain, X509_free);
}

int acme_ocsp_fetch(SSL_CTX *ctx, uint64_t timeout_ms, const char *url, X509 *x,
                    STACK_OF(X509) * chain, unsigned char **der, size_t *len, int64_t *tu,
                    int64_t *nu, char *err, size_t errlen)
{
    OCSP_REQUEST *req = OCSP_REQUEST_new();
    OCSP_CERTID *id = NULL;
    unsigned char *reqder = NULL;
    struct acme_resp rs = {0};
    int rc = MOAT_ERR, rl;
    X509 *issuer = chain && sk_X509_num(chain) > 0 ? sk_X509_value(chain, 0) : NULL;
    *der = NULL;
    if (!issuer) {
        snprintf(err, errlen, "no issuer certificate in the chain");
        goto out;
    }
    if (!req || !(id = OCSP_cert_to_id(NULL, x, issuer)) || !OCSP_request_add0_id(req, id)) {
        snprintf(err, errlen, "cannot build the request");
        goto out;
    }
    id = NULL; /* owned by req */
    if ((rl = i2d_OCSP_REQUEST(req, &reqder)) <= 0) {
        snprintf(err, errlen, "cannot encode the request");
        goto out;
    }
    char herr[512];
    if (acme_http(ctx, "POST", url, "application/ocsp-request", reqder, (size_t)rl, timeout_ms, &rs,
                  herr, sizeof herr) != MOAT_OK) {
        snprintf(err, errlen, "%.250s", herr);
        goto out;
    }
    if (rs.status != 200) {
        snprintf(err, errlen, "HTTP %d from %.200s", rs.status, url);
        goto out;
    }
    if (check_response((unsigned char *)rs.body, rs.blen, x, issuer, chain, tu, nu, err, errlen) !=
        MOAT_OK)
        goto out;
    if (!(*der = malloc(rs.blen))) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    memcpy(*der, rs.body, rs.blen);
    *len = rs.blen;
    rc = MOAT_OK;
out:
    acme_resp_clear(&rs);
    OPENSSL_free(reqder);
    OCSP_CERTID_free(id);
    OCSP_REQUEST_free(req);
    ERR_clear_error();
    return rc;
}

bool acme_ocsp_url(X509 *x, char *out, size_t outlen)
{
    return ocsp_url(x, out, outlen);
}

void acme_ocsp_round(const struct moat_cfg_acme *a, SSL_CTX *ctx, struct acme_site *s)
{
    char url[1024], err[256] = "";
    int64_t now = (int64_t)time(NULL);
    if (!s->x || !ocsp_url(s->x, url, sizeof url) || acme_ocsp_due(s) > now)
        return;
    X509 *x = NULL;
    STACK_OF(X509) *chain = NULL;
    unsigned char *der = NULL;
    size_t len = 0;
    int64_t tu = 0, nu = 0;
    if (!take_cert(s, &x, &chain))
        snprintf(err, sizeof err, "no issuer certificate in the chain");
    else if (acme_ocsp_fetch(ctx, a->timeout_ms, url, x, chain, &der, &len, &tu, &nu, err,
                             sizeof err) == MOAT_OK) {
        char path[1100], tmp[1200];
        snprintf(path, sizeof path, "%s/%s.ocsp", a->storage, s->names[0]);
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        FILE *f = fopen(tmp, "wb");
        if (f) {
            bool ok = fwrite(der, 1, len, f) == len;
            ok &= fclose(f) == 0;
            if (!ok || rename(tmp, path) != 0)
                moat_log_warn("acme: %s: cannot write %s", s->names[0], path);
        }
        put(s, x, der, len, tu, nu);
        moat_log_info("acme: %s: OCSP response stapled (good, next update %lld)", s->names[0],
                      (long long)nu);
        s->ocsp_failures = 0;
        s->ocsp_next_try = 0;
    }
    if (err[0]) {
        s->ocsp_failures++;
        uint64_t w = acme_backoff_ms(a, s->ocsp_failures);
        s->ocsp_next_try = now + (int64_t)((w + 999) / 1000);
        pthread_mutex_lock(&acme_store.lock);
        snprintf(s->ocsp.error, sizeof s->ocsp.error, "%s", err);
        pthread_mutex_unlock(&acme_store.lock);
        moat_log_warn("acme: %s: OCSP from %s failed (%u in a row; next try in %llus; "
                      "handshakes go on without a staple): %s",
                      s->names[0], url, s->ocsp_failures, (unsigned long long)((w + 999) / 1000),
                      err);
    }
    X509_free(x);
    sk_X509_pop_free(chain, X509_free);
}
