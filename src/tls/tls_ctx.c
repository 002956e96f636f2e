/* tls_ctx.c: OpenSSL contexts built from a snapshot: server certificates grouped into
 * contexts and chosen by SNI, ALPN, the session cache, the process-wide ticket key ring, and
 * one client context per pool with the last session of each origin.
 *
 * Certificate groups. Certificates whose DNS name sets are equal (compared as sets,
 * lowercase) share one SSL_CTX when their key types differ: an ECDSA and an RSA certificate
 * for shop.example and www.shop.example become one context holding both, and OpenSSL picks per
 * handshake by what the client offers. With SSL_OP_CIPHER_SERVER_PREFERENCE, TLS 1.3 walks
 * our signature algorithm list (ECDSA first in OpenSSL's default order) and TLS 1.2 our cipher
 * list (ECDSA suites first in the default), so a client that can verify ECDSA gets ECDSA
 * (a full TLS 1.3 handshake costs the server 2.6 million instructions with ECDSA P-256, 8.7
 * million with RSA-2048: bench/RESULTS.md) and the rest get RSA. Two certificates with the same
 * names and the same key type are refused (the second could never be served). Different name sets
 * make different groups; a name served by several groups goes to the first in configuration order.
 *
 * SNI. The servername callback looks the client's name up (lowercased) among exact names,
 * then among wildcards (`*.example.com` matches `a.example.com`, not `example.com` nor
 * `a.b.example.com`), and switches the connection to that group's context. An unknown name,
 * or none, gets the default group (the first certificate's), as nginx does: the handshake goes
 * on and the client's own name check decides. Such handshakes are counted (tls_sni_default),
 * not failed; a strict mode that refuses them would be a config switch and an alert in the
 * callback.
 *
 * Sessions. Every connection is created on the default context, which OpenSSL keeps as the
 * connection's *session context* even after the SNI callback switched contexts: the session
 * cache and the ticket callback are the default context's. All workers share it, so its
 * internal cache (tls.session_cache entries) is shared across threads under OpenSSL's lock,
 * and a session made on one worker resumes on any other. All contexts set the same session id
 * context ("moat"), so a session stays valid across SNI switches and across snapshots.
 * The cache does not survive a reload (new contexts); tickets do: their keys live in a ring
 * outside every snapshot. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdatomic.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "acme/acme.h"
#include "core/log.h"
#include "core/loop.h"
#include "tls/tls-int.h"

/* Mozilla "intermediate" (v5.7) without DHE: ECDSA first, then RSA; AES-GCM and ChaCha20. */
#define DEFAULT_CIPHERS                                                                            \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"     \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define DEFAULT_GROUPS      "X25519:P-256:P-384"
#define DEFAULT_ROTATION_MS (12ull * 3600 * 1000)
#define DEFAULT_TIMEOUT_MS  (3600ull * 1000)
/* The protocols a server accepts by ALPN, best first: h2 when the client offers it (HTTP/2,
 * src/proxy/h2conn.c), else HTTP/1.1. A parameter of server_build, not a constant in the
 * callbacks. */
#define SERVER_ALPN "h2,http/1.1"
#define CLIENT_ALPN "http/1.1"

static const unsigned char sid_ctx[] = "moat";

/* --- once per process ----------------------------------------------------------------------- */

static int srv_idx = -1, cl_idx = -1; /* ex_data owning a tls_server / tls_client */
static EVP_CIPHER *aes256cbc;         /* fetched once: an implicit fetch per ticket (passing
                                         EVP_aes_256_cbc()) costs a method-store lookup each */
static int init_status = MOAT_ERR;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void srv_free(struct tls_server *srv, const SSL_CTX *owner);
static void cl_free(struct tls_client *cl);

static void srv_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    if (ptr)
        srv_free(ptr, parent);
}

static void cl_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    if (ptr)
        cl_free(ptr);
}

/* --- ticket keys ---------------------------------------------------------------------------- */

/* The ring: the current key (encrypts and decrypts) and the previous one (decrypts; the ticket
 * is then renewed), process-wide, so every worker and every snapshot uses the same keys and a
 * reload keeps resumption. Rotation is lazy, from the ticket callback: whoever sees the current
 * key older than tls.ticket_rotation_ms draws a new one (RAND_bytes, outside the lock) and
 * swaps it in if nobody did meanwhile. The lock is held only to copy 80 bytes, so a rotation
 * never stalls another handshake; the whole callback is ~15,000 instructions of a handshake's
 * 2.5 million (9,300 of them in EVP_MAC_CTX_set_params looking SHA-256 up by name). (A
 * seqlock would avoid the lock, at the price of a racy memcpy.) */
struct tkey {
    unsigned char name[16], aes[32], hmac[32];
};
static struct {
    pthread_mutex_t lock;
    struct tkey cur, prev;
    bool have_prev;
    _Atomic uint64_t born_ms; /* when cur was drawn (moat_now_ms) */
} ring = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Replaces the current key if it is still the one drawn at <born_seen>. */
static void ring_rotate(uint64_t born_seen, uint64_t now)
{
    struct tkey k;
    if (RAND_bytes((unsigned char *)&k, sizeof k) != 1) {
        ERR_clear_error();
        return; /* keep the old key; the next ticket tries again */
    }
    pthread_mutex_lock(&ring.lock);
    if (atomic_load_explicit(&ring.born_ms, memory_order_relaxed) == born_seen) {
        ring.prev = ring.cur;
        ring.have_prev = true;
        ring.cur = k;
        atomic_store_explicit(&ring.born_ms, now, memory_order_relaxed);
    }
    pthread_mutex_unlock(&ring.lock);
    OPENSSL_cleanse(&k, sizeof k);
}

static void ring_maybe_rotate(const struct tls_server *srv)
{
    uint64_t born = atomic_load_explicit(&ring.born_ms, memory_order_relaxed);
    uint64_t now = moat_now_ms();
    if (srv && now - born >= srv->ticket_period_ms)
        ring_rotate(born, now);
}

/* SSL_CTX_set_tlsext_ticket_key_evp_cb's callback, as OpenSSL documents it: AES-256-CBC and
 * HMAC-SHA256. Returns 1 (key found / ticket made), 2 (decrypted: renew the ticket), 0
 * (unknown key: full handshake, new ticket) or -1 (failure).
 *
 * Renewal: TLS 1.2 tickets are reused by clients, so only a ticket under the previous key is
 * renewed. TLS 1.3 tickets are single use (RFC 8446 C.4; OpenSSL clients mark a session
 * unresumable once used, browsers do the same), and OpenSSL 3.0 sends a new one after a
 * resumption only when this callback says "renew": without it every other connection of such a
 * client would be a full handshake. So TLS 1.3 always renews (as nginx does). */
static int ticket_cb(SSL *ssl, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    ring_maybe_rotate(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
    struct tkey k;
    int ret = 1;
    pthread_mutex_lock(&ring.lock);
    if (enc)
        k = ring.cur;
    else if (memcmp(name, ring.cur.name, sizeof ring.cur.name) == 0)
        k = ring.cur, ret = SSL_version(ssl) == TLS1_3_VERSION ? 2 : 1;
    else if (ring.have_prev && memcmp(name, ring.prev.name, sizeof ring.prev.name) == 0)
        k = ring.prev, ret = 2;
    else
        ret = 0;
    pthread_mutex_unlock(&ring.lock);
    if (ret == 0)
        return 0;
    if (enc) {
        if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(aes256cbc)) != 1)
            ret = -1;
        memcpy(name, k.name, sizeof k.name);
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac, sizeof k.hmac),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (ret > 0 && (!EVP_MAC_CTX_set_params(hctx, params) ||
                    !EVP_CipherInit_ex(cctx, aes256cbc, NULL, k.aes, iv, enc)))
        ret = -1;
    OPENSSL_cleanse(&k, sizeof k);
    return ret;
}

static void init(void)
{
    srv_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, srv_ex_free);
    cl_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, cl_ex_free);
    aes256cbc = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
    if (srv_idx < 0 || cl_idx < 0 || !aes256cbc ||
        RAND_bytes((unsigned char *)&ring.cur, sizeof ring.cur) != 1)
        return;
    atomic_store(&ring.born_ms, moat_now_ms());
    init_status = MOAT_OK;
}

/* --- errors --------------------------------------------------------------------------------- */

static int failf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int failf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (errlen)
        vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return MOAT_ERR;
}

/* OpenSSL's reason for the oldest error in this thread's queue (the root cause: later entries
 * are the callers giving up), then clears the queue. */
static const char *ossl_reason(char *buf, size_t n, const char *fallback)
{
    unsigned long e = ERR_peek_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(buf, n, "%s", r ? r : fallback);
    ERR_clear_error();
    return buf;
}

/* "<what>: <path>: <OpenSSL's reason>" */
static int fail_ossl(char *err, size_t errlen, const char *what, const char *path,
                     const char *fallback)
{
    char r[160];
    ossl_reason(r, sizeof r, fallback);
    if (path)
        return failf(err, errlen, "%s: %s: %s", what, path, r);
    return failf(err, errlen, "%s: %s", what, r);
}

/* --- certificates --------------------------------------------------------------------------- */

/* Never prompt on a terminal for an encrypted key: refuse it. */
static int no_password(char *buf, int size, int rwflag, void *u)
{
    return -1;
}

static BIO *open_pem(const char *what, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        failf(err, errlen, "%s: %s: %s", what, path, strerror(errno));
        return NULL;
    }
    BIO *b = BIO_new_fp(f, BIO_CLOSE);
    if (!b) {
        fclose(f);
        failf(err, errlen, "%s: %s: out of memory", what, path);
    }
    return b;
}

/* One certificate and key while building: the leaf, its chain, the key, its names. */
struct cert_load {
    X509 *x;
    STACK_OF(X509) * chain;
    EVP_PKEY *pk;
    char **names; /* lowercase DNS names, certificate order */
    size_t nnames;
    char *canon; /* the names sorted, deduplicated, comma-joined: the grouping key */
    int slot;    /* EVP_PKEY base id: one certificate per key type per context */
    size_t group;
};

static void cert_load_clear(struct cert_load *L)
{
    X509_free(L->x);
    sk_X509_pop_free(L->chain, X509_free);
    EVP_PKEY_free(L->pk);
    for (size_t i = 0; i < L->nnames; i++)
        free(L->names[i]);
    free(L->names);
    free(L->canon);
    memset(L, 0, sizeof *L);
}

/* Reads the PEM chain at <cpath> (leaf first) and the key at <kpath>, and checks they match.
 * The file is read here rather than by SSL_CTX_use_certificate_chain_file because grouping
 * needs the leaf's names and key type before a context is chosen; the parsing is the same
 * (PEM_read_bio_X509_AUX for the leaf, PEM_read_bio_X509 to the end for the chain). */
static int cert_load(struct cert_load *L, const char *cwhat, const char *cpath, const char *kwhat,
                     const char *kpath, char *err, size_t errlen)
{
    BIO *b = open_pem(cwhat, cpath, err, errlen);
    if (!b)
        return MOAT_ERR;
    L->x = PEM_read_bio_X509_AUX(b, NULL, no_password, NULL);
    L->chain = sk_X509_new_null();
    if (!L->x || !L->chain) {
        BIO_free(b);
        return fail_ossl(err, errlen, cwhat, cpath, "no certificate");
    }
    X509 *ca;
    while ((ca = PEM_read_bio_X509(b, NULL, no_password, NULL)))
        if (!sk_X509_push(L->chain, ca)) {
            X509_free(ca);
            BIO_free(b);
            return failf(err, errlen, "%s: %s: out of memory", cwhat, cpath);
        }
    unsigned long e = ERR_peek_last_error();
    BIO_free(b);
    if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)
        ERR_clear_error(); /* the normal end of the file */
    else if (e)
        return fail_ossl(err, errlen, cwhat, cpath, "bad chain");

    b = open_pem(kwhat, kpath, err, errlen);
    if (!b)
        return MOAT_ERR;
    L->pk = PEM_read_bio_PrivateKey(b, NULL, no_password, NULL);
    BIO_free(b);
    if (!L->pk)
        return fail_ossl(err, errlen, kwhat, kpath, "no private key");
    if (X509_check_private_key(L->x, L->pk) != 1)
        return fail_ossl(err, errlen, kwhat, kpath, "key does not match the certificate");
    ERR_clear_error(); /* X509_check_private_key may leave notes on success */
    L->slot = EVP_PKEY_get_base_id(L->pk);
    return MOAT_OK;
}

static char *lower_dup(const char *p, size_t n)
{
    char *d = malloc(n + 1);
    if (!d)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        d[i] = (char)((unsigned)(ch - 'A') < 26u ? ch | 0x20 : ch);
    }
    d[n] = '\0';
    return d;
}

static int add_name(struct cert_load *L, const unsigned char *p, int n)
{
    if (n <= 0 || memchr(p, '\0', (size_t)n))
        return MOAT_OK; /* an embedded NUL: not a name anyone can ask for */
    char **v = realloc(L->names, (L->nnames + 1) * sizeof *v);
    if (!v)
        return MOAT_ERR;
    L->names = v;
    if (!(v[L->nnames] = lower_dup((const char *)p, (size_t)n)))
        return MOAT_ERR;
    L->nnames++;
    return MOAT_OK;
}

/* The DNS names of the SAN extension, or the subject's CN when there are none. */
static int cert_names(struct cert_load *L)
{
    GENERAL_NAMES *gens = X509_get_ext_d2i(L->x, NID_subject_alt_name, NULL, NULL);
    int rc = MOAT_OK;
    for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens) && rc == MOAT_OK; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type == GEN_DNS)
            rc = add_name(L, ASN1_STRING_get0_data(g->d.dNSName), ASN1_STRING_length(g->d.dNSName));
    }
    GENERAL_NAMES_free(gens);
    if (rc != MOAT_OK || L->nnames)
        return rc;
    const X509_NAME *subj = X509_get_subject_name(L->x);
    int k = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
    if (k < 0)
        return MOAT_OK;
    unsigned char *u = NULL;
    int n = ASN1_STRING_to_UTF8(&u, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, k)));
    if (n >= 0)
        rc = add_name(L, u, n);
    OPENSSL_free(u);
    return rc;
}

static int cmp_strp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* <L>'s names sorted and deduplicated, joined with ','; or, with <sorted> false, in certificate
 * order (for /status). */
static char *names_join(const struct cert_load *L, bool sorted)
{
    char **v = malloc((L->nnames + 1) * sizeof *v);
    if (!v)
        return NULL;
    memcpy(v, L->names, L->nnames * sizeof *v);
    if (sorted)
        qsort(v, L->nnames, sizeof *v, cmp_strp);
    size_t len = 1;
    for (size_t i = 0; i < L->nnames; i++)
        len += strlen(v[i]) + 1;
    char *s = malloc(len), *p = s;
    if (s) {
        *p = '\0';
        for (size_t i = 0; i < L->nnames; i++) {
            if (sorted && i && strcmp(v[i], v[i - 1]) == 0)
                continue;
            size_t n = strlen(v[i]);
            if (p != s)
                *p++ = ',';
            memcpy(p, v[i], n + 1);
            p += n;
        }
    }
    free(v);
    return s;
}

/* "ECDSA P-256", "RSA 2048", "Ed25519", ... */
static void key_desc(EVP_PKEY *pk, char *buf, size_t n)
{
    int id = EVP_PKEY_get_base_id(pk);
    char g[64];
    size_t gl = 0;
    switch (id) {
    case EVP_PKEY_RSA:
        snprintf(buf, n, "RSA %d", EVP_PKEY_get_bits(pk));
        return;
    case EVP_PKEY_RSA_PSS:
        snprintf(buf, n, "RSA-PSS %d", EVP_PKEY_get_bits(pk));
        return;
    case EVP_PKEY_EC:
        if (EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, g, sizeof g, &gl)) {
            const char *nist = EC_curve_nid2nist(OBJ_txt2nid(g));
            snprintf(buf, n, "ECDSA %s", nist ? nist : g);
        } else
            snprintf(buf, n, "ECDSA");
        ERR_clear_error();
        return;
    case EVP_PKEY_ED25519:
        snprintf(buf, n, "Ed25519");
        return;
    case EVP_PKEY_ED448:
        snprintf(buf, n, "Ed448");
        return;
    default:
        snprintf(buf, n, "%s", OBJ_nid2sn(id));
    }
}

static int64_t asn1_unix(const ASN1_TIME *t)
{
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return (int64_t)timegm(&tm);
}

/* --- server contexts ------------------------------------------------------------------------ */

static int name_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, MOAT_MIN(alen, blen));
    return c ? c : (alen > blen) - (alen < blen);
}

static int tls_name_cmp(const void *a, const void *b)
{
    const struct tls_name *x = a, *y = b;
    return name_cmp(x->name, x->len, y->name, y->len);
}

static SSL_CTX *names_find(const struct tls_name *v, size_t n, const char *name, size_t len)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = name_cmp(name, len, v[mid].name, v[mid].len);
        if (c == 0)
            return v[mid].ctx;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* The context for the lowercase <name>: exact, then a wildcard of exactly one label. O(log n)
 * per lookup: two binary searches at most. */
static SSL_CTX *sni_find(const struct tls_server *srv, const char *name, size_t len)
{
    SSL_CTX *ctx = names_find(srv->exact, srv->nexact, name, len);
    if (ctx)
        return ctx;
    const char *dot = memchr(name, '.', len);
    if (!dot || dot == name || dot + 1 == name + len)
        return NULL;
    return names_find(srv->wild, srv->nwild, dot + 1, (size_t)(name + len - dot - 1));
}

static int sni_cb(SSL *ssl, int *alert, void *arg)
{
    const struct tls_server *srv = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name)
        return SSL_TLSEXT_ERR_OK; /* no SNI: the default context */
    struct tls_conn *c = SSL_get_app_data(ssl);
    char lc[256];
    size_t n = strlen(name);
    bool upper = false;
    SSL_CTX *ctx = NULL;
    if (n < sizeof lc) {
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = (unsigned char)name[i];
            bool up = (unsigned)(ch - 'A') < 26u;
            upper |= up;
            lc[i] = (char)(up ? ch | 0x20 : ch);
        }
        lc[n] = '\0';
        if (upper && c && !c->sni_lc)
            c->sni_lc = strdup(lc); /* rare: browsers send lowercase */
        if (n && lc[n - 1] == '.')
            n--;
        ctx = sni_find(srv, lc, n);
    }
    if (!ctx) {
        if (c && !(n < sizeof lc && moat_acme_has_name(lc, n))) /* ACME: acme_cert_cb */
            TLS_COUNT(c, tls_sni_default);
        return SSL_TLSEXT_ERR_OK;
    }
    if (ctx != SSL_get_SSL_CTX(ssl))
        SSL_set_SSL_CTX(ssl, ctx); /* copies the context's certificate set (refcounts) */
    return SSL_TLSEXT_ERR_OK;
}

/* ACME (src/acme/). The client hello callback notes a client that offers acme-tls/1 (a
 * TLS-ALPN-01 validation, RFC 8737) before anything else runs: with TLS 1.2 OpenSSL picks the
 * certificate (cert_cb) before it selects ALPN, so the ALPN callback would be too late to
 * tell. cert_cb then lets src/acme/ put in the site's ACME certificate, or the challenge
 * certificate. Both return at once when ACME is off. */
static int acme_hello_cb(SSL *ssl, int *alert, void *arg)
{
    if (!moat_acme_active())
        return SSL_CLIENT_HELLO_SUCCESS;
    const unsigned char *p;
    size_t len;
    struct tls_conn *c = SSL_get_app_data(ssl);
    if (c &&
        SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &p,
                                  &len) &&
        len >= 2 && (size_t)(p[0] << 8 | p[1]) == len - 2)
        c->acme_alpn = moat_acme_alpn_offered(p + 2, len - 2);
    return SSL_CLIENT_HELLO_SUCCESS;
}

/* The client's SNI name lowercased, without a final dot, into <lc> ("" when none). */
static void sni_lower(SSL *ssl, char lc[256])
{
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    size_t n = name ? strlen(name) : 0;
    if (n >= 256)
        n = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)name[i];
        lc[i] = (char)((unsigned)(ch - 'A') < 26u ? ch | 0x20 : ch);
    }
    if (n && lc[n - 1] == '.')
        n--;
    lc[n] = '\0';
}

static int acme_cert_cb(SSL *ssl, void *arg)
{
    if (!moat_acme_active())
        return 1;
    struct tls_conn *c = SSL_get_app_data(ssl);
    char lc[256];
    sni_lower(ssl, lc);
    return moat_acme_pick(ssl, lc, c && c->acme_alpn, SSL_get_certificate(ssl) != NULL);
}

/* OCSP stapling (src/acme/: ACME certificates and tls.certificates), called only when the
 * client asks for a status. */
static int acme_status_cb(SSL *ssl, void *arg)
{
    char lc[256];
    sni_lower(ssl, lc);
    return moat_acme_staple(ssl, lc);
}

/* ALPN: our first protocol the client also offers. None in common is a fatal
 * no_application_protocol alert (RFC 7301 3.2, as nginx does): the client asked only for
 * protocols we cannot speak. A client without ALPN gets HTTP/1.1. */
static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned inlen, void *arg)
{
    const struct tls_server *srv = arg;
    unsigned char *o;
    struct tls_conn *c = SSL_get_app_data(ssl);
    if (c && c->acme_alpn) { /* the challenge certificate is in place (acme_cert_cb) */
        static const unsigned char acme[] = "acme-tls/1";
        *out = acme;
        *outlen = sizeof acme - 1;
        return SSL_TLSEXT_ERR_OK;
    }
    if (SSL_select_next_proto(&o, outlen, srv->alpn, srv->alpn_len, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

/* "h2,http/1.1" -> ALPN wire format in <out>. Returns the length, 0 if it does not fit. */
static unsigned alpn_wire(const char *list, unsigned char *out, size_t cap)
{
    size_t n = 0;
    while (*list) {
        const char *e = strchr(list, ',');
        size_t l = e ? (size_t)(e - list) : strlen(list);
        if (l == 0 || l > 255 || n + 1 + l > cap)
            return 0;
        out[n++] = (unsigned char)l;
        memcpy(out + n, list, l);
        n += l;
        list += l + (e != NULL);
    }
    return (unsigned)n;
}

static void srv_free(struct tls_server *srv, const SSL_CTX *owner)
{
    for (size_t i = 0; i < srv->nctxs; i++)
        if (srv->ctxs[i] != owner)
            SSL_CTX_free(srv->ctxs[i]);
    free(srv->ctxs);
    for (size_t i = 0; i < srv->nexact; i++)
        free(srv->exact[i].name);
    for (size_t i = 0; i < srv->nwild; i++)
        free(srv->wild[i].name);
    free(srv->exact);
    free(srv->wild);
    for (size_t i = 0; i < srv->ncerts; i++) {
        free((char *)srv->certs[i].file);
        free((char *)srv->certs[i].key_type);
        free((char *)srv->certs[i].names);
    }
    free(srv->certs);
    free(srv);
}

/* A server context with everything but certificates, from <t>. */
static SSL_CTX *server_ctx_new(const struct moat_cfg_tls *t, struct tls_server *srv, char *err,
                               size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        fail_ossl(err, errlen, "tls", NULL, "cannot create a context");
        return NULL;
    }
    unsigned p = t->protocols ? t->protocols : MOAT_TLS_V12 | MOAT_TLS_V13;
    SSL_CTX_set_min_proto_version(ctx, p & MOAT_TLS_V12 ? TLS1_2_VERSION : TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, p & MOAT_TLS_V13 ? TLS1_3_VERSION : TLS1_2_VERSION);
    /* SSL_OP_PRIORITIZE_CHACHA: with server preference, ChaCha20 for the clients that list it
     * first (phones without AES instructions), AES-GCM for the rest. */
    /* SSL_OP_IGNORE_UNEXPECTED_EOF: a client that closes its TCP connection without
     * close_notify (most do, browsers and Python among them) is an ordinary end of input, not a
     * fatal error: without it OpenSSL sends a fatal alert on that EOF, and a fatal alert removes
     * the session from the server's cache, so with session_tickets off (stateful TLS 1.3
     * tickets, TLS 1.2 session ids) nothing would ever resume. HTTP's own framing finds a
     * truncated message either way (nginx sets the same option). */
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA |
                                 SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF |
                                 (t->session_tickets ? 0 : SSL_OP_NO_TICKET));
    /* SSL_MODE_RELEASE_BUFFERS: OpenSSL frees a connection's 17 KiB read and 17 KiB write
     * buffers whenever they are empty: 33.6 KB less heap per idle keep-alive connection
     * (server + client pair: 50.5 KB with it, 84.2 KB without), for a malloc/free pair per
     * record read and per SSL_write: +1,240 instructions (+7.6%) per 1 KiB keep-alive exchange
     * (bench/micro/tls_micro.sh; nginx and HAProxy set it too). read_ahead: one read(2) takes
     * as many records as the socket holds, instead of a header read plus a body read per
     * record. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(ctx, 1);
    const char *ciphers = t->ciphers ? t->ciphers : DEFAULT_CIPHERS;
    if (!SSL_CTX_set_cipher_list(ctx, ciphers)) {
        fail_ossl(err, errlen, "tls.ciphers", ciphers, "no usable cipher");
        goto fail;
    }
    if (t->ciphersuites && !SSL_CTX_set_ciphersuites(ctx, t->ciphersuites)) {
        fail_ossl(err, errlen, "tls.ciphersuites", t->ciphersuites, "no usable suite");
        goto fail;
    }
    const char *groups = t->groups ? t->groups : DEFAULT_GROUPS;
    if (!SSL_CTX_set1_groups_list(ctx, groups)) {
        fail_ossl(err, errlen, "tls.groups", groups, "unknown group");
        goto fail;
    }
    SSL_CTX_set_dh_auto(ctx, 1); /* only if tls.ciphers names DHE suites */
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof sid_ctx - 1);
    /* SSL_SESS_CACHE_NO_AUTO_CLEAR: by default every 255th new session makes OpenSSL walk the
     * whole cache for expired entries under its lock (20480 entries: a stall for every
     * worker's handshakes). Without it the cache stays bounded by its size (the oldest entry
     * goes when full) and an expired entry is refused when looked up. */
    if (t->session_cache) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_AUTO_CLEAR);
        SSL_CTX_sess_set_cache_size(ctx, t->session_cache);
    } else
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    uint64_t to = t->session_timeout_ms ? t->session_timeout_ms : DEFAULT_TIMEOUT_MS;
    SSL_CTX_set_timeout(ctx, (long)MOAT_MAX((to + 999) / 1000, 1));
    /* TLS 1.3 sends one ticket per handshake, not OpenSSL's default two. A resumed handshake
     * gets a fresh ticket, so a client reconnecting in sequence never runs dry; clients that
     * keep one session per host (OpenSSL's, curl, Go, moat's own origin side) use only the
     * last. The second ticket is wasted work on every full and resumed handshake (an AES-CBC
     * + HMAC encryption, the session encoding and a ~250 byte record: see tls_io.c's notes)
     * and helps only a browser opening several connections at once to an HTTP/1.1 site. With
     * neither tickets nor a cache none is sent: nothing could resume it. */
    SSL_CTX_set_num_tickets(ctx, t->session_tickets || t->session_cache ? 1 : 0);
    if (t->session_tickets)
        SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
    SSL_CTX_set_tlsext_servername_callback(ctx, sni_cb);
    SSL_CTX_set_tlsext_servername_arg(ctx, srv);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, srv);
    SSL_CTX_set_client_hello_cb(ctx, acme_hello_cb, NULL);
    SSL_CTX_set_cert_cb(ctx, acme_cert_cb, NULL);
    SSL_CTX_set_tlsext_status_cb(ctx, acme_status_cb);
    SSL_CTX_set_app_data(ctx, srv);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* Appends each name of <L> to the SNI tables with its context <ctx>. */
static int sni_add(struct tls_server *srv, const struct cert_load *L, SSL_CTX *ctx)
{
    for (size_t i = 0; i < L->nnames; i++) {
        const char *nm = L->names[i];
        bool wild = nm[0] == '*' && nm[1] == '.';
        if (wild)
            nm += 2;
        if (!*nm || strchr(nm, '*'))
            continue; /* "f*.example.com" and the like: not matched (as browsers do) */
        struct tls_name **v = wild ? &srv->wild : &srv->exact;
        size_t *n = wild ? &srv->nwild : &srv->nexact;
        struct tls_name *nv = realloc(*v, (*n + 1) * sizeof *nv);
        if (!nv)
            return MOAT_ERR;
        *v = nv;
        nv[*n] = (struct tls_name){.name = strdup(nm), .len = strlen(nm), .ctx = ctx};
        if (!nv[*n].name)
            return MOAT_ERR;
        (*n)++;
    }
    return MOAT_OK;
}

/* Sorts a table and keeps the first of equal names in configuration order (qsort is not
 * stable: ties are broken by the insertion index). */
static int tls_name_order_cmp(const void *a, const void *b)
{
    const struct tls_name *x = a, *y = b;
    int c = tls_name_cmp(x, y);
    return c ? c : (x->order > y->order) - (x->order < y->order);
}

static void sni_sort(struct tls_name *v, size_t *n)
{
    for (size_t i = 0; i < *n; i++)
        v[i].order = i;
    if (*n > 1)
        qsort(v, *n, sizeof *v, tls_name_order_cmp);
    size_t k = 0;
    for (size_t i = 0; i < *n; i++) {
        if (k && tls_name_cmp(&v[k - 1], &v[i]) == 0) {
            free(v[i].name);
            continue;
        }
        v[k++] = v[i];
    }
    *n = k;
}

static int server_build(const struct moat_cfg_tls *t, const char *alpn, struct moat_tls_rt *rt,
                        char *err, size_t errlen)
{
    size_t n = t->ncerts;
    struct cert_load *L = calloc(n, sizeof *L);
    struct tls_server *srv = calloc(1, sizeof *srv);
    int rc = MOAT_ERR;
    if (!srv || !(srv->ctxs = calloc(MOAT_MAX(n, (size_t)1), sizeof *srv->ctxs)) ||
        !(srv->certs = calloc(MOAT_MAX(n, (size_t)1), sizeof *srv->certs)) || (n && !L)) {
        failf(err, errlen, "tls: out of memory");
        goto out;
    }
    srv->ticket_period_ms = t->ticket_rotation_ms ? t->ticket_rotation_ms : DEFAULT_ROTATION_MS;
    srv->alpn_len = alpn_wire(alpn, srv->alpn, sizeof srv->alpn);
    time_t now = time(NULL);
    for (size_t i = 0; i < n; i++) {
        char cw[64], kw[64], kd[96];
        snprintf(cw, sizeof cw, "tls.certificates[%zu].cert", i);
        snprintf(kw, sizeof kw, "tls.certificates[%zu].key", i);
        if (cert_load(&L[i], cw, t->certs[i].cert, kw, t->certs[i].key, err, errlen) != MOAT_OK)
            goto out;
        if (cert_names(&L[i]) != MOAT_OK || !(L[i].canon = names_join(&L[i], true))) {
            failf(err, errlen, "tls: out of memory");
            goto out;
        }
        key_desc(L[i].pk, kd, sizeof kd);
        struct moat_tls_cert_info *ci = &srv->certs[srv->ncerts++];
        ci->file = strdup(t->certs[i].cert);
        ci->key_type = strdup(kd);
        ci->names = names_join(&L[i], false);
        ci->not_before = asn1_unix(X509_get0_notBefore(L[i].x));
        ci->not_after = asn1_unix(X509_get0_notAfter(L[i].x));
        if (!ci->file || !ci->key_type || !ci->names) {
            failf(err, errlen, "tls: out of memory");
            goto out;
        }
        if (ci->not_after < now)
            moat_log_warn("%s: %s: expired (not after %lld)", cw, ci->file,
                          (long long)ci->not_after);
        else if (ci->not_before > now)
            moat_log_warn("%s: %s: not valid yet (not before %lld)", cw, ci->file,
                          (long long)ci->not_before);
        /* Grouping: the first earlier certificate with the same name set. */
        size_t j = 0;
        while (j < i && strcmp(L[j].canon, L[i].canon))
            j++;
        if (j < i) {
            for (size_t k = j; k < i; k++)
                if (!strcmp(L[k].canon, L[i].canon) && L[k].slot == L[i].slot) {
                    failf(err, errlen,
                          "%s: %s: same names and key type as tls.certificates[%zu] (one "
                          "certificate per key type per name set)",
                          cw, t->certs[i].cert, k);
                    goto out;
                }
            L[i].group = L[j].group;
        } else {
            SSL_CTX *ctx = server_ctx_new(t, srv, err, errlen);
            if (!ctx)
                goto out;
            L[i].group = srv->nctxs;
            srv->ctxs[srv->nctxs++] = ctx;
            if (srv->nctxs == 1) /* from here on the default context owns srv */
                SSL_CTX_set_ex_data(ctx, srv_idx, srv);
        }
        if (!SSL_CTX_use_cert_and_key(srv->ctxs[L[i].group], L[i].x, L[i].pk, L[i].chain, 1)) {
            fail_ossl(err, errlen, cw, t->certs[i].cert, "cannot use the certificate");
            goto out;
        }
        if (sni_add(srv, &L[i], srv->ctxs[L[i].group]) != MOAT_OK) {
            failf(err, errlen, "tls: out of memory");
            goto out;
        }
    }
    if (n == 0) {
        /* Only ACME certificates (tls.acme): a default context without one; a handshake for
         * a name without a certificate yet fails (acme_cert_cb). */
        SSL_CTX *ctx = server_ctx_new(t, srv, err, errlen);
        if (!ctx)
            goto out;
        srv->ctxs[srv->nctxs++] = ctx;
        SSL_CTX_set_ex_data(ctx, srv_idx, srv);
    }
    sni_sort(srv->exact, &srv->nexact);
    sni_sort(srv->wild, &srv->nwild);
    rt->server = srv->ctxs[0];
    rt->srv = srv;
    srv = NULL;
    rc = MOAT_OK;
out:
    for (size_t i = 0; L && i < n; i++)
        cert_load_clear(&L[i]);
    free(L);
    if (srv) {
        if (srv->nctxs)
            SSL_CTX_free(srv->ctxs[0]); /* frees srv through its ex_data */
        else
            srv_free(srv, NULL);
    }
    return rc;
}

/* --- client contexts ------------------------------------------------------------------------ */

static void cl_free(struct tls_client *cl)
{
    for (size_t i = 0; i < cl->norigins; i++) {
        SSL_SESSION_free(cl->origins[i].sess);
        free(cl->origins[i].host);
    }
    free(cl->origins);
    free(cl->sni);
    pthread_mutex_destroy(&cl->lock);
    free(cl);
}

/* Keeps the newest resumable session of the connection's origin (TLS 1.2: at the end of the
 * handshake; TLS 1.3: each NewSessionTicket, read with the response). Returns 1: the
 * reference is ours. */
static int client_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct tls_conn *c = SSL_get_app_data(ssl);
    if (!c || !c->origin || !SSL_SESSION_is_resumable(sess))
        return 0;
    pthread_mutex_lock(&c->client->lock);
    SSL_SESSION *old = c->origin->sess;
    c->origin->sess = sess;
    pthread_mutex_unlock(&c->client->lock);
    SSL_SESSION_free(old);
    return 1;
}

static int origin_cmp(const void *a, const void *b)
{
    return strcmp(((const struct tls_origin *)a)->host, ((const struct tls_origin *)b)->host);
}

struct tls_origin *tls_client_origin(struct tls_client *cl, const char *host)
{
    size_t lo = 0, hi = cl->norigins;
    while (host && lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(host, cl->origins[mid].host);
        if (c == 0)
            return &cl->origins[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

static int client_build(const struct moat_cfg_pool *pool, SSL_CTX **out, char *err, size_t errlen)
{
    const struct moat_cfg_pool_tls *t = &pool->tls;
    char what[160];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    struct tls_client *cl = calloc(1, sizeof *cl);
    if (!ctx || !cl) {
        SSL_CTX_free(ctx);
        free(cl);
        return fail_ossl(err, errlen, "tls", NULL, "out of memory");
    }
    pthread_mutex_init(&cl->lock, NULL);
    cl->ctx = ctx;
    cl->verify = t->verify;
    SSL_CTX_set_ex_data(ctx, cl_idx, cl); /* from here on ctx owns cl */
    SSL_CTX_set_app_data(ctx, cl);
    *out = ctx;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF); /* as on the server side */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(ctx, 1);
    unsigned char alpn[32];
    unsigned alen = alpn_wire(CLIENT_ALPN, alpn, sizeof alpn);
    if (SSL_CTX_set_alpn_protos(ctx, alpn, alen) != 0) /* 0 is success here */
        return fail_ossl(err, errlen, "tls", NULL, "cannot set ALPN");
    if (t->sni && !(cl->sni = strdup(t->sni)))
        return failf(err, errlen, "tls: out of memory");
    if (t->verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        if (t->ca_file) {
            snprintf(what, sizeof what, "pools.%s.tls.ca_file", pool->name);
            BIO *b = open_pem(what, t->ca_file, err, errlen); /* a clear "No such file" */
            if (!b)
                return MOAT_ERR;
            BIO_free(b);
            if (!SSL_CTX_load_verify_locations(ctx, t->ca_file, NULL))
                return fail_ossl(err, errlen, what, t->ca_file, "no certificate in the file");
        } else if (!SSL_CTX_set_default_verify_paths(ctx))
            return fail_ossl(err, errlen, "tls: the system trust store", NULL, "cannot load");
    }
    if (t->cert || t->key) {
        char kw[160];
        snprintf(what, sizeof what, "pools.%s.tls.cert", pool->name);
        snprintf(kw, sizeof kw, "pools.%s.tls.key", pool->name);
        if (!t->cert || !t->key)
            return failf(err, errlen, "%s: cert and key go together", t->cert ? kw : what);
        struct cert_load L = {0};
        int rc = cert_load(&L, what, t->cert, kw, t->key, err, errlen);
        if (rc == MOAT_OK && !SSL_CTX_use_cert_and_key(ctx, L.x, L.pk, L.chain, 1))
            rc = fail_ossl(err, errlen, what, t->cert, "cannot use the certificate");
        cert_load_clear(&L);
        if (rc != MOAT_OK)
            return rc;
    }
    /* One session slot per origin host: a new connection to an origin resumes the last
     * session made with it. Keyed by host (the origin's name or IP literal as configured), not
     * by the SNI, which the origins of a pool often share while their ticket keys differ. */
    if (pool->norigins && !(cl->origins = calloc(pool->norigins, sizeof *cl->origins)))
        return failf(err, errlen, "tls: out of memory");
    for (size_t i = 0; i < pool->norigins; i++) {
        const char *h = pool->origins[i].host;
        if (!h || tls_client_origin(cl, h))
            continue;
        if (!(cl->origins[cl->norigins].host = strdup(h)))
            return failf(err, errlen, "tls: out of memory");
        cl->norigins++;
        qsort(cl->origins, cl->norigins, sizeof *cl->origins, origin_cmp);
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, client_new_session);
    return MOAT_OK;
}

/* --- the snapshot's runtime ----------------------------------------------------------------- */

static void rt_free(void *p)
{
    struct moat_tls_rt *rt = p;
    if (!rt)
        return;
    SSL_CTX_free(rt->server);
    for (size_t i = 0; i < rt->nclients; i++)
        SSL_CTX_free(rt->clients[i]);
    free(rt->clients);
    free(rt);
}

int moat_tls_build(struct moat_config *cfg, char *err, size_t errlen)
{
    if (errlen)
        err[0] = '\0';
    size_t npools = 0;
    bool listener = false;
    for (size_t i = 0; i < cfg->npools; i++)
        npools += cfg->pools[i].tls.enabled;
    for (size_t i = 0; i < cfg->nlisten; i++)
        listener |= cfg->listen[i].tls;
    bool acme = cfg->tls.acme.enabled;
    if (listener && !cfg->tls.ncerts && !acme)
        return failf(err, errlen, "listen: a listener with tls: true needs tls.certificates");
    if (!cfg->tls.ncerts && !npools && !(listener && acme))
        return MOAT_OK;
    if (cfg->rt)
        return failf(err, errlen, "tls: the snapshot already has a runtime");
    pthread_once(&init_once, init);
    if (init_status != MOAT_OK)
        return fail_ossl(err, errlen, "tls: cannot initialise OpenSSL", NULL, "no randomness");
    struct moat_tls_rt *rt = calloc(1, sizeof *rt);
    void **slot = calloc(cfg->npools + 1, sizeof *slot);
    if (!rt || !slot || (npools && !(rt->clients = calloc(npools, sizeof *rt->clients)))) {
        failf(err, errlen, "tls: out of memory");
        goto fail;
    }
    if ((cfg->tls.ncerts || (listener && acme)) &&
        server_build(&cfg->tls, SERVER_ALPN, rt, err, errlen) != MOAT_OK)
        goto fail;
    for (size_t i = 0; i < cfg->npools; i++) {
        if (!cfg->pools[i].tls.enabled)
            continue;
        SSL_CTX *ctx = NULL;
        int rc = client_build(&cfg->pools[i], &ctx, err, errlen);
        if (ctx)
            rt->clients[rt->nclients++] = ctx;
        if (rc != MOAT_OK)
            goto fail;
        slot[i] = SSL_CTX_get_app_data(ctx);
    }
    for (size_t i = 0; i < cfg->npools; i++)
        cfg->pools[i].tls_client = slot[i];
    free(slot);
    cfg->rt = rt;
    cfg->rt_free = rt_free;
    return MOAT_OK;
fail:
    ERR_clear_error();
    free(slot);
    rt_free(rt);
    return MOAT_ERR;
}

void moat_tls_each_cert(const struct moat_config *cfg,
                        void (*fn)(const struct moat_tls_cert_info *ci, void *ud), void *ud)
{
    const struct moat_tls_rt *rt = cfg->rt;
    if (!rt || !rt->srv)
        return;
    for (size_t i = 0; i < rt->srv->ncerts; i++)
        fn(&rt->srv->certs[i], ud);
}
