/* tls.h: TLS for moat on OpenSSL 3: server contexts built from a configuration snapshot
 * (certificates chosen by SNI and by what the client supports, ALPN, session resumption by
 * tickets and by a cache shared across workers), client contexts for TLS to origins, and the
 * TLS transport (struct moat_transport) that carries bytes for either side.
 *
 * Built on the control thread when a snapshot is loaded (moat_tls_build), so a bad
 * certificate refuses the configuration with its path and OpenSSL's reason and the running
 * one stays; used by every worker without locks on the connection path (OpenSSL's SSL_CTX is
 * safe to share; each connection has its own SSL). Ticket keys live outside snapshots, the
 * same in every worker, rotated, and survive reloads. */
#ifndef MOAT_TLS_TLS_H
#define MOAT_TLS_TLS_H

#include <stdatomic.h>

#include "config/config.h"
#include "core/transport.h"

/* Counters of the TLS layer, declared once (X-macro, as src/proxy/stats.h):
 * X(field, metric, labels, type, help). Per worker, single writer, summed when read. */
#define MOAT_TLS_STATS(X)                                                                          \
    X(tls_hs_full, "moat_tls_handshakes_total", "kind=\"full\"", "counter",                        \
      "TLS handshakes completed by clients, by kind")                                              \
    X(tls_hs_resumed, "moat_tls_handshakes_total", "kind=\"resumed\"", "counter", "")              \
    X(tls_fail_protocol, "moat_tls_handshake_failures_total", "reason=\"protocol\"", "counter",    \
      "TLS handshakes that failed, by reason")                                                     \
    X(tls_fail_no_cipher, "moat_tls_handshake_failures_total", "reason=\"no_shared_cipher\"",      \
      "counter", "")                                                                               \
    X(tls_fail_version, "moat_tls_handshake_failures_total", "reason=\"version\"", "counter", "")  \
    X(tls_fail_timeout, "moat_tls_handshake_failures_total", "reason=\"timeout\"", "counter", "")  \
    X(tls_fail_eof, "moat_tls_handshake_failures_total", "reason=\"closed\"", "counter", "")       \
    X(tls_fail_other, "moat_tls_handshake_failures_total", "reason=\"other\"", "counter", "")      \
    X(tls_sni_default, "moat_tls_sni_default_total", "", "counter",                                \
      "TLS handshakes whose SNI name matched no certificate (they get the default one)")           \
    X(tls_up_hs, "moat_tls_upstream_handshakes_total", "kind=\"full\"", "counter",                 \
      "TLS handshakes with origins, by kind")                                                      \
    X(tls_up_resumed, "moat_tls_upstream_handshakes_total", "kind=\"resumed\"", "counter", "")     \
    X(tls_up_fail_verify, "moat_tls_upstream_failures_total", "reason=\"verify\"", "counter",      \
      "TLS handshakes with origins that failed, by reason")                                        \
    X(tls_up_fail_other, "moat_tls_upstream_failures_total", "reason=\"other\"", "counter", "")

struct moat_tls_stats {
#define MOAT_TLS_STATS_FIELD(f, m, l, t, h) _Atomic uint64_t f;
    MOAT_TLS_STATS(MOAT_TLS_STATS_FIELD)
#undef MOAT_TLS_STATS_FIELD
};

/* What a snapshot's TLS needs at run time: the server contexts (when a listener has tls:
 * true) and one client context per pool with tls. Hung on the snapshot (cfg->rt, freed with
 * it); pools find theirs in pool->tls_client. */
struct moat_tls_rt;

/* Builds the TLS runtime for <cfg>: loads and checks every certificate and key (the key
 * matches the certificate, the chain parses, the names are read from the SAN, or the CN
 * when there is no SAN), sets protocols, ciphers, groups, ALPN ("http/1.1"; "h2" later),
 * session cache and tickets; one client context per pool with tls (trust store, verify,
 * client certificate). On success sets cfg->rt / cfg->rt_free and every
 * pool->tls_client, and returns MOAT_OK; on failure returns MOAT_ERR with <err> naming the
 * file and OpenSSL's reason ("tls.certificates[1].key: /etc/moat/api.key: key values
 * mismatch") and leaves <cfg> unchanged. A snapshot without TLS gets no runtime (MOAT_OK).
 * Logs a warning for a certificate that is expired or not yet valid. */
int moat_tls_build(struct moat_config *cfg, char *err, size_t errlen);

/* Starts a server-side TLS session on the accepted socket <s> (a TCP moat_sock): <s>'s
 * transport becomes TLS, and moat_sock_handshake() drives the handshake (a read or writev
 * before it ends drives it too). <stats> are the accepting worker's counters (NULL: none).
 * The session holds its own references to what it uses: it may outlive <cfg> (a reload during
 * the handshake, a keep-alive connection). <s> must not move while TLS is on it. Returns
 * MOAT_OK, or MOAT_ERR (no server certificates in <cfg>, out of memory; <s> unchanged).
 *
 * When a TLS 1.3 handshake ends, the server's session ticket is held (s->held, not pending)
 * and leaves with the first response: one send(2) fewer per connection. An unknown SNI name,
 * or none, gets the default certificate and counts tls_sni_default, not a failure. */
int moat_tls_accept(const struct moat_config *cfg, struct moat_sock *s,
                    struct moat_tls_stats *stats);

/* Starts a client-side TLS session on the connecting socket <s> to an origin of <pool>
 * (pool->tls.enabled), with SNI and verification from the pool (or <host>, the origin's host
 * as configured, when pool->tls.sni is unset; an IP literal is verified as an address and not
 * sent as SNI). Sessions are resumed across connections to the same origin: the last session
 * of each origin host of the pool (pool->origins[].host) is kept, shared by all workers. A
 * verification failure fails the handshake with s->err_reason from
 * X509_verify_cert_error_string ("unable to get local issuer certificate", "hostname
 * mismatch"). MOAT_OK, or MOAT_ERR (no client context, verification on but no name to
 * verify, out of memory). Lifetimes as moat_tls_accept. */
int moat_tls_connect(const struct moat_cfg_pool *pool, const char *host, struct moat_sock *s,
                     struct moat_tls_stats *stats);

/* <s> was copied (struct assignment) from the moat_sock the TLS session was started on, which
 * is no longer used: the session reaches its socket through <s> from now on (a connection
 * handed from HTTP/1 to HTTP/2 after ALPN). */
void moat_tls_moved(struct moat_sock *s);

/* The protocol ALPN chose on <s> ("http/1.1", "h2"), or an empty string when none. */
struct moat_str moat_tls_alpn(const struct moat_sock *s);
/* Was <s>'s session resumed? */
bool moat_tls_resumed(const struct moat_sock *s);
/* The SNI name the client sent on <s> (lowercase), or an empty string. */
struct moat_str moat_tls_sni(const struct moat_sock *s);
/* Records a handshake failure on <s> that happened outside the transport (the handshake
 * timeout) in its counters (server: tls_fail_timeout; client: tls_up_fail_other), once. */
void moat_tls_count_timeout(struct moat_sock *s);

/* A certificate as /status and /metrics show it. */
struct moat_tls_cert_info {
    const char *file;     /* the configured cert path */
    const char *key_type; /* "ECDSA P-256", "RSA 2048", ... */
    const char *names;    /* comma-separated DNS names */
    int64_t not_after;    /* Unix seconds */
    int64_t not_before;
};
/* Calls <fn> for each server certificate of <cfg>'s runtime, in configuration order. */
void moat_tls_each_cert(const struct moat_config *cfg,
                        void (*fn)(const struct moat_tls_cert_info *ci, void *ud), void *ud);

/* The TLS transport; its state (s->tls) is the connection's SSL and ciphertext buffer.
 * s->err_reason always points to static storage (moat's literals or OpenSSL's reason tables),
 * valid for the life of the process. */
extern const struct moat_transport moat_tls_transport;

#endif
