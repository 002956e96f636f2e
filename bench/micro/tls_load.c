/* tls_load.c: handshake load for tls_vs.sh: <conns> connections in a row, each a TLS
 * handshake, one "GET / HTTP/1.1" with Connection: close and the response to the end. With
 * "resume", each connection offers the newest session the previous one received (a TLS 1.3
 * ticket is used once, as OpenSSL's and browsers' clients do; openssl s_time -reuse keeps
 * offering the first one, which only works for TLS 1.2). "plain": the same over TCP without
 * TLS (the baseline tls_vs.sh subtracts). Prints how many were resumed.
 * Usage: tls_load PORT CONNS [resume] [rsa] [tls12] [plain] */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

static SSL_SESSION *last;

static int keep(SSL *ssl, SSL_SESSION *s)
{
    (void)ssl;
    SSL_SESSION_free(last);
    last = s;
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: tls_load PORT CONNS [resume] [rsa] [tls12]\n");
        return 2;
    }
    int port = atoi(argv[1]), n = atoi(argv[2]), resume = 0, resumed = 0, plain = 0;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "resume"))
            resume = 1;
        else if (!strcmp(argv[i], "rsa"))
            SSL_CTX_set1_sigalgs_list(ctx, "rsa_pss_rsae_sha256:rsa_pkcs1_sha256");
        else if (!strcmp(argv[i], "tls12"))
            SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
        else if (!strcmp(argv[i], "plain"))
            plain = 1;
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, keep);
    SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)"\x08http/1.1", 9);
    static const char req[] = "GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n";
    char buf[16384];
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
            perror("connect");
            return 1;
        }
        if (plain) {
            size_t total = 0;
            ssize_t r;
            if (write(fd, req, sizeof req - 1) != (ssize_t)sizeof req - 1)
                return 1;
            while ((r = read(fd, buf, sizeof buf)) > 0)
                total += (size_t)r;
            close(fd);
            if (total < 1024) {
                fprintf(stderr, "short response (%zu bytes)\n", total);
                return 1;
            }
            continue;
        }
        SSL *ssl = SSL_new(ctx);
        SSL_set_fd(ssl, fd);
        SSL_set_tlsext_host_name(ssl, "shop.test");
        if (resume && last)
            SSL_set_session(ssl, last);
        if (SSL_connect(ssl) != 1) {
            ERR_print_errors_fp(stderr);
            return 1;
        }
        size_t w;
        SSL_write_ex(ssl, req, sizeof req - 1, &w);
        size_t total = 0, r;
        while (SSL_read_ex(ssl, buf, sizeof buf, &r))
            total += r;
        if (total < 1024) {
            fprintf(stderr, "short response (%zu bytes)\n", total);
            return 1;
        }
        resumed += SSL_session_reused(ssl);
        /* Freed without close_notify, OpenSSL would mark the session unresumable. */
        SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(ssl);
        close(fd);
        ERR_clear_error();
    }
    printf("%d connections, %d resumed\n", n, resumed);
    SSL_SESSION_free(last);
    SSL_CTX_free(ctx);
    return 0;
}
