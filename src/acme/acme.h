/* acme.h: certificates from an ACME CA (RFC 8555) for the sites with `tls: acme`: a client on
 * its own thread (blocking sockets and an OpenSSL client, never on a worker), the HTTP-01 and
 * TLS-ALPN-01 (RFC 8737) answers the workers give, and the process-wide store of the
 * certificates obtained, which TLS handshakes consult. docs/acme.md tells the whole story.
 *
 * The store lives outside configuration snapshots, like the ticket keys: a certificate
 * obtained or renewed is installed for the next handshake without a reload, and a reload keeps
 * what was obtained. */
#ifndef MOAT_ACME_ACME_H
#define MOAT_ACME_ACME_H

#include <openssl/ssl.h>

#include "config/config.h"

/* Loads the certificates kept in tls.acme.storage for <cfg>'s ACME sites into the store (so a
 * restart serves them at once) and starts the client thread, which from then on reads the
 * configuration in use through <current> (a new reference per call; released by the thread).
 * The thread is started even without tls.acme (it then sleeps until moat_acme_kick), so a
 * reload can turn ACME on. MOAT_OK, or MOAT_ERR with <err> (storage cannot be created). */
int moat_acme_start(struct moat_config *cfg, struct moat_config *(*current)(void), char *err,
                    size_t errlen);
/* Wakes the client thread to look at the configuration now (after a reload). */
void moat_acme_kick(void);
/* Stops the client thread (an order under way is abandoned at its next request) and joins
 * it, waiting at most 2 s (a request to a slow CA is left to the process exit). */
void moat_acme_stop(void);

/* HTTP-01: the key authorization for <token> (the path after /.well-known/acme-challenge/)
 * copied into <out> (NUL-terminated), or false when no challenge with that token is pending.
 * Takes the store's lock: call it only for that path. */
bool moat_acme_http01(const char *token, size_t len, char *out, size_t outlen);
#define MOAT_ACME_HTTP01_PREFIX "/.well-known/acme-challenge/"

/* TLS. True when the ALPN protocol list <in,inlen> (wire format, without the 2-byte length)
 * offers "acme-tls/1" and a TLS-ALPN-01 challenge may be pending. */
bool moat_acme_alpn_offered(const unsigned char *in, size_t inlen);
/* From a TLS server's certificate callback: when <sni> (lowercase) is a name of an ACME site,
 * replaces <ssl>'s certificates with the site's; with <alpn> (the client offered acme-tls/1)
 * with the TLS-ALPN-01 challenge certificate for <sni>. Returns 1 (go on, certificates
 * replaced or untouched) or 0 (fail the handshake: acme-tls/1 without a challenge, or an ACME
 * name without a certificate yet and <has_default> false). Cheap when ACME is off (one
 * atomic load). */
int moat_acme_pick(SSL *ssl, const char *sni, bool alpn, bool has_default);
/* From a TLS server's status callback (the client asked for OCSP): staples the OCSP
 * response of the ACME site of <sni> when <ssl> is being served that site's certificate, or
 * else the response of the tls.certificates[] entry it is served.
 * Returns SSL_TLSEXT_ERR_OK (stapled) or SSL_TLSEXT_ERR_NOACK (nothing to staple): never a
 * failure, so a failing responder never breaks a handshake. */
int moat_acme_staple(SSL *ssl, const char *sni);
/* OCSP stapling of tls.certificates[] (src/acme/acme_staple.c, on the ACME thread): each
 * certificate with an OCSP URL, as /status and /metrics show it. <fn> runs under the store's
 * lock. */
struct moat_ocsp_status {
    const char *file;       /* tls.certificates[].cert */
    const char *url;        /* the responder */
    int64_t next_update;    /* of the stapled response; 0 when none */
    const char *last_error; /* "" when the last fetch succeeded (or none was made) */
};
void moat_ocsp_each(void (*fn)(const struct moat_ocsp_status *st, void *ud), void *ud);

/* Is <name> (lowercase, <len> bytes) a host of an ACME site? Takes the store's lock. */
bool moat_acme_has_name(const char *name, size_t len);
/* Is ACME configured (the store has sites)? One atomic load. */
bool moat_acme_active(void);

/* A certificate as /status and /metrics show it. */
struct moat_acme_status {
    const char *site;         /* the site's first host */
    const char *names;        /* comma-separated */
    int64_t not_before;       /* Unix seconds; 0 when there is no certificate yet */
    int64_t not_after;        /* 0 when there is none */
    const char *state;        /* "valid", "renewing", "pending" (none yet), "failing" */
    const char *last_error;   /* "" when the last order succeeded (or none was made) */
    int64_t last_error_at;    /* Unix seconds, 0 if none */
    int64_t next_attempt;     /* Unix seconds of the next order or check */
    unsigned failures;        /* orders failed in a row */
    uint64_t issued;          /* certificates obtained since start */
    int64_t ocsp_next_update; /* the stapled OCSP response's nextUpdate; 0 when none */
    const char *ocsp_error;   /* "" when the last OCSP fetch succeeded (or none was made) */
};
/* Calls <fn> for each ACME certificate in the store, under the store's lock (<fn> must not
 * call back into this module). */
void moat_acme_each(void (*fn)(const struct moat_acme_status *st, void *ud), void *ud);

/* --- building blocks (acme_jws.c), exposed for tests ---------------------------------------- */

/* base64url without padding (RFC 4648 5, RFC 7515 2) of <in,n> into <out> (NUL-terminated).
 * Returns the length written, or -1 when <outlen> is too small. */
long moat_acme_b64url(const unsigned char *in, size_t n, char *out, size_t outlen);
/* A new ECDSA P-256 key, or NULL. */
EVP_PKEY *moat_acme_key_new(void);
/* The JWK of <pk>'s public key (RFC 7517/7518: {"crv","kty","x","y"} in lexicographic order,
 * as the thumbprint needs) into <out>. MOAT_OK or MOAT_ERR. */
int moat_acme_jwk(EVP_PKEY *pk, char *out, size_t outlen);
/* The RFC 7638 thumbprint of <pk> (base64url of SHA-256 of its JWK). MOAT_OK or MOAT_ERR. */
int moat_acme_thumbprint(EVP_PKEY *pk, char *out, size_t outlen);
/* A flattened JWS (RFC 7515 7.2.2) signed ES256 by <pk>: the protected header carries
 * "alg":"ES256", <nonce>, <url> and either "kid":<kid> or, when <kid> is NULL, the "jwk";
 * <payload> is signed as base64url (NULL: the empty payload of a POST-as-GET). The signature
 * is r||s, 32 bytes each (RFC 7518 3.4), not DER. Returns a malloc'd string or NULL. */
char *moat_acme_jws(EVP_PKEY *pk, const char *kid, const char *nonce, const char *url,
                    const char *payload);
/* A DER CSR for <names> (CN = the first, every name in the SAN) signed by <pk>; *<der> is
 * OPENSSL_malloc'd. Returns the length, or -1. */
long moat_acme_csr(EVP_PKEY *pk, char *const *names, size_t nnames, unsigned char **der);
/* The RFC 8737 challenge certificate for <name>: self-signed by <pk>, SAN <name>, and the
 * critical acmeIdentifier extension (1.3.6.1.5.5.7.1.31) holding SHA-256(<keyauth>). */
X509 *moat_acme_alpn_cert(EVP_PKEY *pk, const char *name, const char *keyauth);

#endif
