/* tls-int.h: what tls_ctx.c (contexts, SNI, tickets) and tls_io.c (the transport) share; not
 * for use outside src/tls/.
 *
 * Lifetimes. A snapshot's runtime (struct moat_tls_rt, cfg->rt) holds one reference to each
 * SSL_CTX it built. Everything a callback reads during a handshake or later (the SNI table,
 * the ALPN list, a pool's session slots) hangs on an SSL_CTX as ex_data and is freed by
 * OpenSSL with it, so it lives exactly as long as the last SSL that can call back into it,
 * even when that connection outlives its snapshot (a reload during a handshake; an origin
 * connection kept in a pool across reloads that later receives a TLS 1.3 ticket). */
#ifndef MOAT_TLS_TLS_INT_H
#define MOAT_TLS_TLS_INT_H

#include <pthread.h>

#include <openssl/ssl.h>

#include "core/buf.h"
#include "tls/tls.h"

/* A server certificate name as SNI looks it up: an exact name, or the part after "*." of a
 * wildcard. Sorted by name; among equal names the first in configuration order is kept. */
struct tls_name {
    char *name; /* lowercase */
    size_t len;
    SSL_CTX *ctx;
    size_t order; /* insertion index while sorting */
};

/* The server side of one snapshot. Owned by ctxs[0] (the default context, also the session
 * context of every connection: see tls_ctx.c), app data of every ctxs[i]. */
struct tls_server {
    SSL_CTX **ctxs; /* one per certificate group; [0] holds the first certificate */
    size_t nctxs;
    struct tls_name *exact, *wild;
    size_t nexact, nwild;
    unsigned char alpn[32]; /* the protocols we accept, best first, ALPN wire format */
    unsigned alpn_len;
    uint64_t ticket_period_ms;
    struct moat_tls_cert_info *certs; /* configuration order; strings owned */
    size_t ncerts;
};

/* A pool's client side: its context and the last session of each origin host. Owned by
 * ctx (ex_data). The lock guards the slots' session pointers only (held for a pointer swap). */
struct tls_origin {
    char *host;
    SSL_SESSION *sess; /* one reference, or NULL */
};
struct tls_client {
    SSL_CTX *ctx;
    bool verify;
    char *sni; /* pool.tls.sni, or NULL */
    pthread_mutex_t lock;
    struct tls_origin *origins; /* sorted by host */
    size_t norigins;
};

/* One connection's TLS state (moat_sock.tls). */
struct tls_conn {
    SSL *ssl;
    struct moat_sock *s; /* must not move while TLS is on it: the BIO reaches it */
    struct moat_buf out; /* ciphertext not yet sent; storage only while non-empty */
    struct moat_tls_stats *stats;
    struct tls_client *client; /* client side: where sessions are kept; NULL on a server */
    struct tls_origin *origin; /* client side: this origin's session slot, or NULL */
    char *sni_lc;              /* server: the client's SNI lowercased, when it was not */
    uint32_t nread, nwrite;    /* read(2)/send(2) calls: tests and debugging */
    int sock_errno;            /* the socket error the BIO saw, 0 if none */
    bool server, hs_done, counted, fatal, shut_sent, sock_eof, rd_eof, kernel_more;
    bool acme_alpn; /* server: the client offered acme-tls/1 (RFC 8737, src/acme/) */
};

/* Counters: single writer (the connection's worker), relaxed, no RMW (as src/proxy/stats.h). */
#define TLS_COUNT(c, f)                                                                            \
    do {                                                                                           \
        if ((c)->stats)                                                                            \
            atomic_store_explicit(&(c)->stats->f,                                                  \
                                  atomic_load_explicit(&(c)->stats->f, memory_order_relaxed) + 1,  \
                                  memory_order_relaxed);                                           \
    } while (0)

/* What the snapshot holds (cfg->rt). */
struct moat_tls_rt {
    SSL_CTX *server; /* the default server context (owns srv), or NULL */
    struct tls_server *srv;
    SSL_CTX **clients; /* one reference per pool with tls */
    size_t nclients;
};

/* tls_ctx.c: the origin slot for <host> in <cl>, or NULL. */
struct tls_origin *tls_client_origin(struct tls_client *cl, const char *host);

#endif
