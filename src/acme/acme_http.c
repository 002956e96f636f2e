/* acme_http.c: the ACME client's HTTP: one blocking request per connection (Connection:
 * close), over TLS (OpenSSL client, verified against tls.acme.ca_file or the system store) or
 * plain http:// for tests, with the send and receive timeouts of tls.acme.timeout. Runs on
 * the ACME thread only. The response is parsed by moat's own HTTP/1 parser (src/http/h1.c,
 * fuzzed by tests/fuzz/fuzz_h1.c), chunked bodies included. */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "acme/acme-http.h"
#include "http/h1.h"

#define RESP_MAX (1u << 20) /* an ACME answer is a few KiB; a chain a few more */

int acme_url_parse(const char *url, struct acme_url *u)
{
    memset(u, 0, sizeof *u);
    const char *p;
    if (!strncmp(url, "https://", 8))
        u->tls = true, p = url + 8;
    else if (!strncmp(url, "http://", 7))
        p = url + 7;
    else
        return MOAT_ERR;
    const char *slash = strchr(p, '/');
    size_t alen = slash ? (size_t)(slash - p) : strlen(p);
    if (!alen || alen >= sizeof u->authority)
        return MOAT_ERR;
    memcpy(u->authority, p, alen);
    const char *hs = p, *he = p + alen, *port = NULL;
    if (*hs == '[') {
        const char *rb = memchr(hs, ']', alen);
        if (!rb)
            return MOAT_ERR;
        hs++;
        port = rb + 1 < he && rb[1] == ':' ? rb + 2 : NULL;
        he = rb;
    } else {
        const char *colon = memchr(hs, ':', alen);
        if (colon)
            port = colon + 1, he = colon;
    }
    if (he == hs || (size_t)(he - hs) >= sizeof u->host)
        return MOAT_ERR;
    memcpy(u->host, hs, (size_t)(he - hs));
    if (port) {
        size_t pl = (size_t)(p + alen - port);
        if (!pl || pl >= sizeof u->port)
            return MOAT_ERR;
        memcpy(u->port, port, pl);
    } else
        snprintf(u->port, sizeof u->port, "%s", u->tls ? "443" : "80");
    snprintf(u->path, sizeof u->path, "%s", slash ? slash : "/");
    return strlen(slash ? slash : "/") < sizeof u->path ? MOAT_OK : MOAT_ERR;
}

static int failf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int failf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return MOAT_ERR;
}

static int dial(const struct acme_url *u, uint64_t timeout_ms, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC}, *res = NULL;
    int gai = getaddrinfo(u->host, u->port, &hints, &res);
    if (gai)
        return failf(err, errlen, "%s: %s", u->host, gai_strerror(gai));
    int fd = -1, e = 0;
    struct timeval tv = {.tv_sec = (time_t)(timeout_ms / 1000),
                         .tv_usec = (suseconds_t)(timeout_ms % 1000) * 1000};
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0)
            continue;
        /* SO_SNDTIMEO bounds connect(2) too (Linux). */
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        e = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return failf(err, errlen, "connect to %s: %s", u->authority,
                     strerror(e ? e : ECONNREFUSED));
    return fd;
}

SSL_CTX *acme_http_ctx(const char *ca_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        failf(err, errlen, "tls: cannot create a client context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                     : SSL_CTX_set_default_verify_paths(ctx);
    if (!ok) {
        unsigned long e = ERR_peek_error();
        failf(err, errlen, "tls.acme.ca_file: %s: %s", ca_file ? ca_file : "(system store)",
              e ? ERR_reason_error_string(e) : "cannot load");
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static void hdr_copy(const struct moat_h1_resp *r, const char *name, char *out, size_t outlen)
{
    struct moat_str v;
    const struct moat_hdr *h = moat_h1_find(r->hdrs, r->nhdrs, moat_str_make(name, strlen(name)));
    if (!h)
        return;
    v = h->value;
    snprintf(out, outlen, "%.*s", (int)MOAT_MIN(v.len, outlen - 1), v.ptr);
}

int acme_http_parse(const char *buf, size_t len, bool no_body, struct acme_resp *out, char *err,
                    size_t errlen)
{
    struct moat_hdr hdrs[64];
    struct moat_h1_limits lim = {.request_line = 8192, .head_bytes = 32768, .max_headers = 64};
    struct moat_h1_resp r = {.hdrs = hdrs};
    enum moat_h1_err he;
    int n = moat_h1_parse_response(buf, len, &lim, &r, &he);
    if (n == MOAT_AGAIN)
        return failf(err, errlen, "the answer ended inside its head");
    if (n < 0)
        return failf(err, errlen, "bad HTTP answer (%s)", moat_h1_err_name(he));
    out->status = r.status;
    hdr_copy(&r, "location", out->location, sizeof out->location);
    hdr_copy(&r, "replay-nonce", out->nonce, sizeof out->nonce);
    hdr_copy(&r, "content-type", out->ctype, sizeof out->ctype);
    char ra[32] = "";
    hdr_copy(&r, "retry-after", ra, sizeof ra);
    out->retry_after = 0;
    if (ra[0] >= '0' && ra[0] <= '9')
        out->retry_after = strtol(ra, NULL, 10); /* an HTTP-date is treated as absent */
    const char *body = buf + n;
    size_t blen = len - (size_t)n;
    out->body = malloc(blen + 1);
    if (!out->body)
        return failf(err, errlen, "out of memory");
    out->blen = 0;
    if (no_body) {
        /* nothing: a HEAD's answer describes a body it does not carry */
    } else if (r.flags & MOAT_H1_F_CHUNKED) {
        struct moat_h1_chunked st;
        moat_h1_chunked_init(&st, 8192);
        size_t pos = 0;
        for (;;) {
            size_t used = 0;
            struct moat_str d;
            int rc = moat_h1_chunked_decode(&st, body + pos, blen - pos, &used, &d, &he);
            pos += used;
            if (rc == MOAT_OK) {
                memcpy(out->body + out->blen, d.ptr, d.len);
                out->blen += d.len;
                continue;
            }
            if (rc == MOAT_DONE)
                break;
            return failf(err, errlen, "bad chunked body (%s)",
                         rc == MOAT_AGAIN ? "cut short" : moat_h1_err_name(he));
        }
    } else if (r.flags & MOAT_H1_F_HAS_CL) {
        if (r.content_length > blen)
            return failf(err, errlen, "the body was cut short (%zu of %llu bytes)", blen,
                         (unsigned long long)r.content_length);
        memcpy(out->body, body, (size_t)r.content_length);
        out->blen = (size_t)r.content_length;
    } else {
        memcpy(out->body, body, blen);
        out->blen = blen;
    }
    out->body[out->blen] = '\0';
    return MOAT_OK;
}

void acme_resp_clear(struct acme_resp *r)
{
    free(r->body);
    memset(r, 0, sizeof *r);
}

/* Writes all of <p,n> on <fd> or <ssl>. */
static int send_all(int fd, SSL *ssl, const char *p, size_t n)
{
    while (n) {
        ssize_t w;
        if (ssl) {
            size_t wr = 0;
            w = SSL_write_ex(ssl, p, n, &wr) == 1 ? (ssize_t)wr : -1;
        } else
            w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) {
            if (!ssl && w < 0 && errno == EINTR)
                continue;
            return MOAT_ERR;
        }
        p += w;
        n -= (size_t)w;
    }
    return MOAT_OK;
}

int acme_http(SSL_CTX *ctx, const char *method, const char *url, const char *ctype,
              const void *body, size_t blen, uint64_t timeout_ms, struct acme_resp *out, char *err,
              size_t errlen)
{
    memset(out, 0, sizeof *out);
    struct acme_url u;
    if (acme_url_parse(url, &u) != MOAT_OK)
        return failf(err, errlen, "bad URL \"%.200s\"", url);
    if (u.tls && !ctx)
        return failf(err, errlen, "no TLS context for %s", url);
    int fd = dial(&u, timeout_ms, err, errlen);
    if (fd < 0)
        return MOAT_ERR;
    SSL *ssl = NULL;
    char *buf = NULL;
    int rc = MOAT_ERR;
    if (u.tls) {
        ssl = SSL_new(ctx);
        unsigned char ip[16];
        bool is_ip = inet_pton(AF_INET, u.host, ip) == 1 || inet_pton(AF_INET6, u.host, ip) == 1;
        if (!ssl || !SSL_set_fd(ssl, fd) || (!is_ip && !SSL_set_tlsext_host_name(ssl, u.host)) ||
            !(is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), u.host)
                    : SSL_set1_host(ssl, u.host))) {
            failf(err, errlen, "%s: cannot set up TLS", u.authority);
            goto out;
        }
        if (SSL_connect(ssl) != 1) {
            long vr = SSL_get_verify_result(ssl);
            unsigned long e = ERR_peek_error();
            failf(err, errlen, "TLS with %s: %s", u.authority,
                  vr != X509_V_OK ? X509_verify_cert_error_string(vr)
                  : e             ? ERR_reason_error_string(e)
                                  : "handshake failed");
            goto out;
        }
    }
    if (!body)
        blen = 0;
    char head[2048];
    int hn = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: moat-acme/1\r\n"
                      "Accept: */*\r\nConnection: close\r\n%s%s%s"
                      "Content-Length: %zu\r\n\r\n",
                      method, u.path, u.authority, ctype ? "Content-Type: " : "",
                      ctype ? ctype : "", ctype ? "\r\n" : "", blen);
    if (hn <= 0 || (size_t)hn >= sizeof head) {
        failf(err, errlen, "request head too long for %.200s", url);
        goto out;
    }
    if (send_all(fd, ssl, head, (size_t)hn) != MOAT_OK ||
        (blen && send_all(fd, ssl, body, blen) != MOAT_OK)) {
        failf(err, errlen, "send to %s: %s", u.authority, errno ? strerror(errno) : "failed");
        goto out;
    }
    /* Each read waits at most timeout_ms (SO_RCVTIMEO); the whole answer gets four times
     * that, so that a CA sending a byte now and then cannot hold the thread. */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    size_t cap = 16384, len = 0;
    buf = malloc(cap);
    while (buf) {
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if ((uint64_t)(t1.tv_sec - t0.tv_sec) * 1000 > 4 * timeout_ms + 1000) {
            failf(err, errlen, "the answer from %s took too long", u.authority);
            goto out;
        }
        if (len == cap) {
            if (cap >= RESP_MAX) {
                failf(err, errlen, "the answer from %s is over %u bytes", u.authority, RESP_MAX);
                goto out;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
        ssize_t r;
        if (ssl) {
            size_t rd = 0;
            int ok = SSL_read_ex(ssl, buf + len, cap - len, &rd);
            if (!ok) {
                int se = SSL_get_error(ssl, 0);
                if (se == SSL_ERROR_ZERO_RETURN ||
                    (se == SSL_ERROR_SSL &&
                     ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) ||
                    (se == SSL_ERROR_SYSCALL && errno == 0))
                    r = 0;
                else
                    r = -1;
                ERR_clear_error();
            } else
                r = (ssize_t)rd;
        } else
            r = recv(fd, buf + len, cap - len, 0);
        if (r == 0)
            break;
        if (r < 0) {
            if (!ssl && errno == EINTR)
                continue;
            failf(err, errlen, "read from %s: %s", u.authority,
                  errno == EAGAIN ? "timed out" : strerror(errno));
            goto out;
        }
        len += (size_t)r;
    }
    if (!buf) {
        failf(err, errlen, "out of memory");
        goto out;
    }
    if (acme_http_parse(buf, len, !strcmp(method, "HEAD"), out, err, errlen) != MOAT_OK) {
        acme_resp_clear(out);
        goto out;
    }
    rc = MOAT_OK;
out:
    free(buf);
    if (ssl)
        SSL_free(ssl);
    ERR_clear_error();
    close(fd);
    return rc;
}
