/* test_acme.c: the ACME client's building blocks: base64url, the JWK and its thumbprint, the
 * ES256 JWS (verified with OpenSSL after turning r||s back into DER), the CSR, the
 * TLS-ALPN-01 certificate (RFC 8737), the ALPN offer check, URL splitting and the parsing of
 * the CA's HTTP answers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "acme/acme-http.h"
#include "acme/acme-int.h"

static void test_b64url(void **state)
{
    char out[64];
    struct {
        const char *in;
        size_t n;
        const char *want;
    } v[] = {
        {"", 0, ""},
        {"f", 1, "Zg"},
        {"fo", 2, "Zm8"},
        {"foo", 3, "Zm9v"},
        {"foob", 4, "Zm9vYg"},
        {"fooba", 5, "Zm9vYmE"},
        {"foobar", 6, "Zm9vYmFy"},
        {"\xfb\xff", 2, "-_8"}, /* the URL alphabet, no padding */
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        long n = moat_acme_b64url((const unsigned char *)v[i].in, v[i].n, out, sizeof out);
        assert_int_equal(n, (long)strlen(v[i].want));
        assert_string_equal(out, v[i].want);
    }
    assert_int_equal(moat_acme_b64url((const unsigned char *)"foobar", 6, out, 8), -1);
    assert_int_equal(moat_acme_b64url((const unsigned char *)"foobar", 6, out, 9), 8);
}

/* base64url -> bytes (test helper). */
static size_t unb64(const char *s, unsigned char *out)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    for (; *s; s++) {
        const char *p = strchr(tbl, *s);
        assert_non_null(p);
        acc = acc << 6 | (uint32_t)(p - tbl);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char)(acc >> bits);
        }
    }
    return n;
}

static void test_jwk_and_thumbprint(void **state)
{
    EVP_PKEY *pk = moat_acme_key_new();
    assert_non_null(pk);
    char jwk[256], tp[64];
    assert_int_equal(moat_acme_jwk(pk, jwk, sizeof jwk), MOAT_OK);
    /* RFC 7638 3.2: the required members only, lexicographic order, no whitespace */
    static const char head[] = "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"";
    assert_memory_equal(jwk, head, sizeof head - 1);
    json_t *j = json_loads(jwk, 0, NULL);
    assert_non_null(j);
    assert_int_equal(strlen(json_string_value(json_object_get(j, "x"))), 43); /* 32 bytes */
    assert_int_equal(strlen(json_string_value(json_object_get(j, "y"))), 43);
    json_decref(j);
    assert_int_equal(moat_acme_thumbprint(pk, tp, sizeof tp), MOAT_OK);
    unsigned char md[32], got[40];
    unsigned mdl;
    EVP_Digest(jwk, strlen(jwk), md, &mdl, EVP_sha256(), NULL);
    assert_int_equal(unb64(tp, got), 32);
    assert_memory_equal(got, md, 32);
    EVP_PKEY_free(pk);
}

/* Verifies the flattened JWS <s> with <pk>; returns the decoded protected header. */
static json_t *verify_jws(EVP_PKEY *pk, const char *s, char *payload_out)
{
    json_t *j = json_loads(s, 0, NULL);
    assert_non_null(j);
    const char *ph = json_string_value(json_object_get(j, "protected"));
    const char *pl = json_string_value(json_object_get(j, "payload"));
    const char *sg = json_string_value(json_object_get(j, "signature"));
    assert_non_null(ph);
    assert_non_null(pl);
    assert_non_null(sg);
    unsigned char sig[80], hdr[1024];
    assert_int_equal(unb64(sg, sig), 64); /* r||s, not DER */
    ECDSA_SIG *es = ECDSA_SIG_new();
    ECDSA_SIG_set0(es, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL));
    unsigned char *der = NULL;
    int dl = i2d_ECDSA_SIG(es, &der);
    char input[2048];
    snprintf(input, sizeof input, "%s.%s", ph, pl);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pk), 1);
    assert_int_equal(EVP_DigestVerify(md, der, (size_t)dl, (unsigned char *)input, strlen(input)),
                     1);
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
    size_t hl = unb64(ph, hdr);
    hdr[hl] = 0;
    size_t pn = unb64(pl, (unsigned char *)payload_out);
    payload_out[pn] = 0;
    json_t *h = json_loads((char *)hdr, 0, NULL);
    assert_non_null(h);
    json_decref(j);
    return h;
}

static void test_jws(void **state)
{
    EVP_PKEY *pk = moat_acme_key_new();
    char payload[1024];
    /* newAccount: jwk, no kid */
    char *s = moat_acme_jws(pk, NULL, "n0nce", "https://ca/new-acct", "{\"a\":1}");
    assert_non_null(s);
    json_t *h = verify_jws(pk, s, payload);
    assert_string_equal(json_string_value(json_object_get(h, "alg")), "ES256");
    assert_string_equal(json_string_value(json_object_get(h, "nonce")), "n0nce");
    assert_string_equal(json_string_value(json_object_get(h, "url")), "https://ca/new-acct");
    assert_non_null(json_object_get(h, "jwk"));
    assert_null(json_object_get(h, "kid"));
    assert_string_equal(payload, "{\"a\":1}");
    json_decref(h);
    free(s);
    /* POST-as-GET: kid, empty payload */
    s = moat_acme_jws(pk, "https://ca/acct/7", "n1", "https://ca/order/1", NULL);
    h = verify_jws(pk, s, payload);
    assert_string_equal(json_string_value(json_object_get(h, "kid")), "https://ca/acct/7");
    assert_null(json_object_get(h, "jwk"));
    assert_string_equal(payload, "");
    assert_non_null(strstr(s, "\"payload\":\"\""));
    json_decref(h);
    free(s);
    /* a quote from the CA would break the header: refused */
    assert_null(moat_acme_jws(pk, NULL, "bad\"nonce", "https://ca/x", NULL));
    EVP_PKEY_free(pk);
}

static void test_csr(void **state)
{
    EVP_PKEY *pk = moat_acme_key_new();
    char *names[] = {"shop.test", "www.shop.test"};
    unsigned char *der = NULL;
    long n = moat_acme_csr(pk, names, 2, &der);
    assert_true(n > 0);
    const unsigned char *p = der;
    X509_REQ *req = d2i_X509_REQ(NULL, &p, n);
    assert_non_null(req);
    assert_int_equal(X509_REQ_verify(req, pk), 1);
    char cn[64];
    X509_NAME_get_text_by_NID(X509_REQ_get_subject_name(req), NID_commonName, cn, sizeof cn);
    assert_string_equal(cn, "shop.test");
    STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(req);
    GENERAL_NAMES *gens = X509V3_get_d2i(exts, NID_subject_alt_name, NULL, NULL);
    assert_non_null(gens);
    assert_int_equal(sk_GENERAL_NAME_num(gens), 2);
    for (int i = 0; i < 2; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        assert_int_equal(g->type, GEN_DNS);
        assert_string_equal((const char *)ASN1_STRING_get0_data(g->d.dNSName), names[i]);
    }
    GENERAL_NAMES_free(gens);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);
    OPENSSL_free(der);
    assert_int_equal(moat_acme_csr(pk, names, 0, &der), -1);
    EVP_PKEY_free(pk);
}

static void test_alpn_cert(void **state)
{
    EVP_PKEY *pk = moat_acme_key_new();
    const char *ka = "tok.thumb";
    X509 *x = moat_acme_alpn_cert(pk, "shop.test", ka);
    assert_non_null(x);
    assert_int_equal(X509_check_host(x, "shop.test", 0, 0, NULL), 1);
    ASN1_OBJECT *oid = OBJ_txt2obj("1.3.6.1.5.5.7.1.31", 1);
    int idx = X509_get_ext_by_OBJ(x, oid, -1);
    assert_true(idx >= 0);
    X509_EXTENSION *e = X509_get_ext(x, idx);
    assert_int_equal(X509_EXTENSION_get_critical(e), 1); /* RFC 8737 3: critical */
    const ASN1_OCTET_STRING *v = X509_EXTENSION_get_data(e);
    unsigned char md[32];
    unsigned ml;
    EVP_Digest(ka, strlen(ka), md, &ml, EVP_sha256(), NULL);
    assert_int_equal(ASN1_STRING_length(v), 34);
    const unsigned char *d = ASN1_STRING_get0_data(v);
    assert_int_equal(d[0], 0x04); /* the DER OCTET STRING of the digest */
    assert_int_equal(d[1], 0x20);
    assert_memory_equal(d + 2, md, 32);
    ASN1_OBJECT_free(oid);
    X509_free(x);
    EVP_PKEY_free(pk);
}

static void test_alpn_offered(void **state)
{
    const unsigned char yes[] = "\x02h2\x0a"
                                "acme-tls/1";
    const unsigned char no[] = "\x08http/1.1";
    const unsigned char bad[] = "\x0b"
                                "acme-tls/1"; /* length past the end */
    atomic_store(&acme_store.alpn_pending, true);
    assert_true(moat_acme_alpn_offered(yes, sizeof yes - 1));
    assert_false(moat_acme_alpn_offered(no, sizeof no - 1));
    assert_false(moat_acme_alpn_offered(bad, sizeof bad - 1));
    assert_false(moat_acme_alpn_offered((const unsigned char *)"\x00", 1));
    atomic_store(&acme_store.alpn_pending, false);
    assert_false(moat_acme_alpn_offered(yes, sizeof yes - 1)); /* nothing pending */
}

static void test_url_parse(void **state)
{
    struct acme_url u;
    assert_int_equal(acme_url_parse("https://acme.test:14000/dir?x=1", &u), MOAT_OK);
    assert_true(u.tls);
    assert_string_equal(u.host, "acme.test");
    assert_string_equal(u.port, "14000");
    assert_string_equal(u.authority, "acme.test:14000");
    assert_string_equal(u.path, "/dir?x=1");
    assert_int_equal(acme_url_parse("http://[::1]/", &u), MOAT_OK);
    assert_false(u.tls);
    assert_string_equal(u.host, "::1");
    assert_string_equal(u.port, "80");
    assert_int_equal(acme_url_parse("https://ca.test", &u), MOAT_OK);
    assert_string_equal(u.path, "/");
    assert_string_equal(u.port, "443");
    assert_int_equal(acme_url_parse("ftp://ca.test/", &u), MOAT_ERR);
    assert_int_equal(acme_url_parse("https:///dir", &u), MOAT_ERR);
    assert_int_equal(acme_url_parse("https://ca.test:/dir", &u), MOAT_ERR);
}

static void test_http_parse(void **state)
{
    static const char chunked[] = "HTTP/1.1 201 Created\r\nReplay-Nonce: abc_-1\r\n"
                                  "Location: https://ca/acct/1\r\nRetry-After: 7\r\n"
                                  "Transfer-Encoding: chunked\r\n\r\n"
                                  "5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n";
    struct acme_resp r;
    char err[128];
    assert_int_equal(acme_http_parse(chunked, sizeof chunked - 1, false, &r, err, sizeof err),
                     MOAT_OK);
    assert_int_equal(r.status, 201);
    assert_string_equal(r.nonce, "abc_-1");
    assert_string_equal(r.location, "https://ca/acct/1");
    assert_int_equal(r.retry_after, 7);
    assert_string_equal(r.body, "{\"a\":1}");
    acme_resp_clear(&r);
    static const char sized[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}trailing";
    assert_int_equal(acme_http_parse(sized, sizeof sized - 1, false, &r, err, sizeof err), MOAT_OK);
    assert_string_equal(r.body, "{}");
    assert_int_equal(r.retry_after, 0);
    acme_resp_clear(&r);
    static const char cut[] = "HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{}";
    assert_int_equal(acme_http_parse(cut, sizeof cut - 1, false, &r, err, sizeof err), MOAT_ERR);
    assert_non_null(strstr(err, "cut short"));
    acme_resp_clear(&r);
    /* the same head answering a HEAD carries no body */
    assert_int_equal(acme_http_parse(cut, sizeof cut - 3, true, &r, err, sizeof err), MOAT_OK);
    assert_int_equal(r.blen, 0);
    acme_resp_clear(&r);
    static const char badchunk[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab";
    assert_int_equal(acme_http_parse(badchunk, sizeof badchunk - 1, false, &r, err, sizeof err),
                     MOAT_ERR);
    acme_resp_clear(&r);
    assert_int_equal(acme_http_parse("HTTP/1.1 200", 12, false, &r, err, sizeof err), MOAT_ERR);
    acme_resp_clear(&r);
}

/* Backoff: retry_min doubled per failure up to retry_max, spread 0.75x..1.25x. */
static void test_backoff(void **state)
{
    struct moat_cfg_acme a = {.retry_min_ms = 1000, .retry_max_ms = 8000};
    struct {
        unsigned n;
        uint64_t base;
    } v[] = {{1, 1000}, {2, 2000}, {3, 4000}, {4, 8000}, {10, 8000}, {1000, 8000}};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        uint64_t lo = UINT64_MAX, hi = 0;
        for (int k = 0; k < 200; k++) {
            uint64_t w = acme_backoff_ms(&a, v[i].n);
            lo = w < lo ? w : lo;
            hi = w > hi ? w : hi;
        }
        assert_true(lo >= v[i].base * 3 / 4);
        assert_true(hi <= v[i].base * 5 / 4);
        assert_true(hi > lo); /* jitter: not the same wait every time */
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url),     cmocka_unit_test(test_jwk_and_thumbprint),
        cmocka_unit_test(test_jws),        cmocka_unit_test(test_csr),
        cmocka_unit_test(test_alpn_cert),  cmocka_unit_test(test_alpn_offered),
        cmocka_unit_test(test_url_parse),  cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_http_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
