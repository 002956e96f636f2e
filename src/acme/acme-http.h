/* acme-http.h: the ACME client's blocking HTTP requests (acme_http.c); ACME thread only. */
#ifndef MOAT_ACME_ACME_HTTP_H
#define MOAT_ACME_ACME_HTTP_H

#include <arpa/inet.h>

#include <openssl/ssl.h>

#include "core/common.h"

struct acme_url {
    bool tls;
    char host[256]; /* without brackets */
    char port[8];
    char authority[300]; /* host[:port] as written: the Host field */
    char path[2048];     /* path and query, "/" at least */
};
/* Splits an http:// or https:// URL. MOAT_OK or MOAT_ERR. */
int acme_url_parse(const char *url, struct acme_url *u);

struct acme_resp {
    int status;
    char location[2048];
    char nonce[256];
    char ctype[128];
    long retry_after; /* seconds; 0 when absent */
    char *body;       /* malloc'd, NUL-terminated */
    size_t blen;
};

/* A client context verifying against <ca_file> (NULL: the system store), or NULL with <err>. */
SSL_CTX *acme_http_ctx(const char *ca_file, char *err, size_t errlen);

/* One request: <method> <url> with <body,blen> (NULL: none) of <ctype>; the whole answer is read
 * (up to 1 MiB) into <out>. MOAT_OK whatever the status, or MOAT_ERR (no answer) with <err>.
 * <out> must be cleared with acme_resp_clear after MOAT_OK. */
int acme_http(SSL_CTX *ctx, const char *method, const char *url, const char *ctype,
              const void *body, size_t blen, uint64_t timeout_ms, struct acme_resp *out, char *err,
              size_t errlen);
/* Parses a whole answer <buf,len> (head and body, read until the server closed); with
 * <no_body> (the answer to a HEAD) the body framing is not looked at. Exposed for tests and
 * the fuzz target. */
int acme_http_parse(const char *buf, size_t len, bool no_body, struct acme_resp *out, char *err,
                    size_t errlen);
void acme_resp_clear(struct acme_resp *r);

#endif
