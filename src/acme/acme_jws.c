/* acme_jws.c: the cryptography of ACME on OpenSSL 3: keys, JWK and thumbprint, ES256 JWS,
 * CSRs and the TLS-ALPN-01 challenge certificate. Pure functions, unit-tested
 * (tests/unit/acme/test_acme.c). */
#include <stdio.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "acme/acme.h"

long moat_acme_b64url(const unsigned char *in, size_t n, char *out, size_t outlen)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t need = (n / 3) * 4 + (n % 3 ? n % 3 + 1 : 0);
    if (need + 1 > outlen)
        return -1;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = tbl[v >> 18];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = tbl[(v >> 6) & 63];
        out[o++] = tbl[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = tbl[v >> 18];
        out[o++] = tbl[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = tbl[v >> 18];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = tbl[(v >> 6) & 63];
    }
    out[o] = '\0';
    return (long)o;
}

EVP_PKEY *moat_acme_key_new(void)
{
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    if (!pk)
        ERR_clear_error();
    return pk;
}

/* The affine coordinates of <pk>'s public point, 32 bytes each. */
static int ec_xy(EVP_PKEY *pk, unsigned char x[32], unsigned char y[32])
{
    BIGNUM *bx = NULL, *by = NULL;
    int ok = EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_EC_PUB_X, &bx) &&
             EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_EC_PUB_Y, &by) &&
             BN_bn2binpad(bx, x, 32) == 32 && BN_bn2binpad(by, y, 32) == 32;
    BN_free(bx);
    BN_free(by);
    if (!ok)
        ERR_clear_error();
    return ok ? MOAT_OK : MOAT_ERR;
}

int moat_acme_jwk(EVP_PKEY *pk, char *out, size_t outlen)
{
    unsigned char x[32], y[32];
    char bx[64], by[64];
    if (ec_xy(pk, x, y) != MOAT_OK || moat_acme_b64url(x, 32, bx, sizeof bx) < 0 ||
        moat_acme_b64url(y, 32, by, sizeof by) < 0)
        return MOAT_ERR;
    int n = snprintf(out, outlen, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}",
                     bx, by);
    return n > 0 && (size_t)n < outlen ? MOAT_OK : MOAT_ERR;
}

int moat_acme_thumbprint(EVP_PKEY *pk, char *out, size_t outlen)
{
    char jwk[256];
    unsigned char md[32];
    unsigned mdlen = 0;
    if (moat_acme_jwk(pk, jwk, sizeof jwk) != MOAT_OK ||
        !EVP_Digest(jwk, strlen(jwk), md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
        return MOAT_ERR;
    return moat_acme_b64url(md, 32, out, outlen) < 0 ? MOAT_ERR : MOAT_OK;
}

/* ES256 over <msg>: OpenSSL signs in DER (SEQUENCE { r, s }); JWS wants r||s, each padded
 * to 32 bytes (RFC 7518 3.4). */
static int es256(EVP_PKEY *pk, const char *msg, size_t len, unsigned char sig[64])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char der[128];
    size_t dlen = sizeof der;
    int ok = md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pk) == 1 &&
             EVP_DigestSign(md, der, &dlen, (const unsigned char *)msg, len) == 1;
    EVP_MD_CTX_free(md);
    ECDSA_SIG *es = NULL;
    if (ok) {
        const unsigned char *p = der;
        es = d2i_ECDSA_SIG(NULL, &p, (long)dlen);
        ok = es && BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, 32) == 32 &&
             BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + 32, 32) == 32;
    }
    ECDSA_SIG_free(es);
    if (!ok)
        ERR_clear_error();
    return ok ? MOAT_OK : MOAT_ERR;
}

/* base64url of <s> as a malloc'd string. */
static char *b64_dup(const char *s, size_t n)
{
    size_t cap = n / 3 * 4 + 8;
    char *o = malloc(cap);
    if (o && moat_acme_b64url((const unsigned char *)s, n, o, cap) < 0) {
        free(o);
        o = NULL;
    }
    return o;
}

char *moat_acme_jws(EVP_PKEY *pk, const char *kid, const char *nonce, const char *url,
                    const char *payload)
{
    char jwk[256];
    if (!kid && moat_acme_jwk(pk, jwk, sizeof jwk) != MOAT_OK)
        return NULL;
    /* The header's strings come from the CA (nonce, URLs) or from us; a quote or backslash
     * in them would break the JSON, so such a value is refused instead of escaped. */
    const char *vals[] = {kid, nonce, url};
    for (size_t i = 0; i < 3; i++)
        if (vals[i] && strpbrk(vals[i], "\"\\\r\n"))
            return NULL;
    size_t hcap = strlen(nonce) + strlen(url) + (kid ? strlen(kid) : strlen(jwk)) + 96;
    char *hdr = malloc(hcap);
    if (!hdr)
        return NULL;
    int hn =
        kid ? snprintf(hdr, hcap,
                       "{\"alg\":\"ES256\",\"kid\":\"%s\",\"nonce\":\"%s\",\"url\":\"%s\"}", kid,
                       nonce, url)
            : snprintf(hdr, hcap, "{\"alg\":\"ES256\",\"jwk\":%s,\"nonce\":\"%s\",\"url\":\"%s\"}",
                       jwk, nonce, url);
    char *ph = hn > 0 && (size_t)hn < hcap ? b64_dup(hdr, (size_t)hn) : NULL;
    free(hdr);
    char *pl = b64_dup(payload ? payload : "", payload ? strlen(payload) : 0);
    char *out = NULL, *input = NULL;
    if (!ph || !pl)
        goto done;
    size_t ilen = strlen(ph) + 1 + strlen(pl);
    input = malloc(ilen + 1);
    if (!input)
        goto done;
    snprintf(input, ilen + 1, "%s.%s", ph, pl);
    unsigned char sig[64];
    char bsig[96];
    if (es256(pk, input, ilen, sig) != MOAT_OK || moat_acme_b64url(sig, 64, bsig, sizeof bsig) < 0)
        goto done;
    size_t ocap = ilen + strlen(bsig) + 64;
    out = malloc(ocap);
    if (out)
        snprintf(out, ocap, "{\"protected\":\"%s\",\"payload\":\"%s\",\"signature\":\"%s\"}", ph,
                 pl, bsig);
done:
    free(ph);
    free(pl);
    free(input);
    return out;
}

/* A GENERAL_NAMES of DNS names. */
static GENERAL_NAMES *dns_names(char *const *names, size_t n)
{
    GENERAL_NAMES *gens = GENERAL_NAMES_new();
    for (size_t i = 0; gens && i < n; i++) {
        GENERAL_NAME *g = GENERAL_NAME_new();
        ASN1_IA5STRING *s = ASN1_IA5STRING_new();
        if (!g || !s || !ASN1_STRING_set(s, names[i], (int)strlen(names[i]))) {
            GENERAL_NAME_free(g);
            ASN1_IA5STRING_free(s);
            GENERAL_NAMES_free(gens);
            return NULL;
        }
        GENERAL_NAME_set0_value(g, GEN_DNS, s);
        if (!sk_GENERAL_NAME_push(gens, g)) {
            GENERAL_NAME_free(g);
            GENERAL_NAMES_free(gens);
            return NULL;
        }
    }
    return gens;
}

long moat_acme_csr(EVP_PKEY *pk, char *const *names, size_t nnames, unsigned char **der)
{
    *der = NULL;
    if (!nnames)
        return -1;
    X509_REQ *req = X509_REQ_new();
    X509_NAME *nm = X509_NAME_new();
    GENERAL_NAMES *gens = dns_names(names, nnames);
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    X509_EXTENSION *san = NULL;
    long len = -1;
    if (!req || !nm || !gens || !exts)
        goto out;
    if (!X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)names[0], -1, -1,
                                    0) ||
        !X509_REQ_set_version(req, 0) || !X509_REQ_set_subject_name(req, nm) ||
        !X509_REQ_set_pubkey(req, pk))
        goto out;
    san = X509V3_EXT_i2d(NID_subject_alt_name, 0, gens);
    if (!san || !sk_X509_EXTENSION_push(exts, san))
        goto out;
    san = NULL; /* owned by exts */
    if (!X509_REQ_add_extensions(req, exts) || !X509_REQ_sign(req, pk, EVP_sha256()))
        goto out;
    int n = i2d_X509_REQ(req, der);
    len = n > 0 ? n : -1;
out:
    X509_EXTENSION_free(san);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    GENERAL_NAMES_free(gens);
    X509_NAME_free(nm);
    X509_REQ_free(req);
    ERR_clear_error();
    return len;
}

X509 *moat_acme_alpn_cert(EVP_PKEY *pk, const char *name, const char *keyauth)
{
    unsigned char md[32], inner[34];
    unsigned mdlen = 0;
    if (!EVP_Digest(keyauth, strlen(keyauth), md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
        return NULL;
    /* The extension's value is the DER of an OCTET STRING holding the digest (RFC 8737 3):
     * 04 20 <32 bytes>, itself wrapped in the extension's own OCTET STRING. */
    inner[0] = 0x04;
    inner[1] = 0x20;
    memcpy(inner + 2, md, 32);
    X509 *x = X509_new();
    X509_NAME *nm = X509_NAME_new();
    char *nv[1] = {(char *)name};
    GENERAL_NAMES *gens = dns_names(nv, 1);
    ASN1_OBJECT *oid = OBJ_txt2obj("1.3.6.1.5.5.7.1.31", 1);
    ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
    X509_EXTENSION *ext = NULL, *san = NULL;
    bool ok = x && nm && gens && oid && os && ASN1_OCTET_STRING_set(os, inner, sizeof inner) &&
              X509_set_version(x, 2) && ASN1_INTEGER_set(X509_get_serialNumber(x), 1) &&
              X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)name, -1,
                                         -1, 0) &&
              X509_set_subject_name(x, nm) && X509_set_issuer_name(x, nm) &&
              X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
              X509_gmtime_adj(X509_getm_notAfter(x), 7 * 86400) && X509_set_pubkey(x, pk) &&
              (san = X509V3_EXT_i2d(NID_subject_alt_name, 0, gens)) && X509_add_ext(x, san, -1) &&
              (ext = X509_EXTENSION_create_by_OBJ(NULL, oid, 1, os)) && X509_add_ext(x, ext, -1) &&
              X509_sign(x, pk, EVP_sha256());
    X509_EXTENSION_free(ext);
    X509_EXTENSION_free(san);
    ASN1_OCTET_STRING_free(os);
    ASN1_OBJECT_free(oid);
    GENERAL_NAMES_free(gens);
    X509_NAME_free(nm);
    if (!ok) {
        X509_free(x);
        x = NULL;
    }
    ERR_clear_error();
    return x;
}
