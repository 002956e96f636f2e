/* tls_io.c: the TLS transport: OpenSSL over moat's own socket calls through a custom BIO.
 *
 * The write side. OpenSSL never touches the socket: the BIO's write callback appends records
 * to the connection's ciphertext buffer (`out`, a moat_buf from the per-thread lists, held only
 * while it has bytes), and the transport sends that buffer itself with one send(2), with
 * MSG_MORE when more follows. writev "takes" plaintext by SSL_write_ex only as much as fits in
 * the buffer's room, so SSL_write_ex always completes and OpenSSL's rule "retry a blocked
 * SSL_write with the same arguments" never applies: what the socket refuses stays in `out`
 * (s->pending) and no new plaintext is taken until moat_sock_flush sent it. Pieces shorter
 * than a record are gathered into full records when that makes fewer records (a response head
 * and its body, chunk framing): a record costs ~420 ns in OpenSSL 3.0 whatever its size (AEAD
 * setup, header, tag; 730 ns for 1224 bytes, 3.9 us for 16 KiB, AES-128-GCM), copying 16 KiB
 * ~155 ns; in callgrind, a head + 1 KiB body is 11,600 instructions as one record and 19,200
 * as two (bench/micro/tls_micro.sh). The cost of the design is one memcpy of the ciphertext
 * from OpenSSL's record buffer into `out`, ~155 ns per 16 KiB record.
 *
 * The read side. The BIO's read callback calls read(2) on the socket only while s->readable
 * is set, and clears it after a short read or EAGAIN (the socket is then known drained, as in
 * the TCP transport). With read_ahead, one read(2) takes every record the socket holds. The
 * transport's read loops SSL_read_ex (one record per call) until the caller's buffer is full
 * or OpenSSL needs more bytes, so readable ends cleared exactly when the socket is drained and
 * OpenSSL holds no complete record. A 1 KiB request costs one read(2) and a 1 KiB response
 * one send(2) (tests/unit/tls/test_tls.c counts them).
 *
 * Handshake flights are sent as soon as OpenSSL waits for the peer. A TLS 1.3 server's session
 * ticket, written when the handshake completes, is held (s->held) and leaves with the first
 * response: one send(2) and one segment fewer per connection; the client does not wait for
 * it. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "tls/tls-int.h"

#define REC_MAX 16384u /* plaintext per record */
/* Ciphertext overhead bound per record: the 5-byte header and OpenSSL's own bound
 * (SSL3_RT_MAX_ENCRYPTED_OVERHEAD, 256 + 64). TLS 1.3 AES-GCM really adds 22 bytes; the
 * margin only shortens the last record that fits in the buffer. */
#define REC_OVH 325u
/* The ciphertext buffer: room for 64 KiB of plaintext (the proxy's default body buffer) as 4
 * records, so a 64 KiB chunk is one send(2); a 64 KiB buffer would take 3 records and send
 * twice. Its own per-thread free list: the proxy uses two sizes, moat_buf keeps three. */
#define OUT_CAP (66u * 1024)
/* With MOAT_SOCK_MORE, ciphertext below this is held for the next call instead of sent: the
 * TLS form of the partial segment the kernel holds for TCP. */
#define HOLD_MAX (16u * 1024)

/* --- the BIO -------------------------------------------------------------------------------- */

static int bio_write(BIO *b, const char *p, int len)
{
    struct tls_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (!c->out.base && moat_buf_get(&c->out, OUT_CAP) != MOAT_OK)
        return -1;
    if (moat_buf_room(&c->out) < (uint32_t)len)
        moat_buf_compact(&c->out); /* only with refused bytes in front: rare */
    uint32_t k = MOAT_MIN(moat_buf_room(&c->out), (uint32_t)len);
    if (k == 0) {
        BIO_set_retry_write(b); /* full of bytes the socket refused: SSL_ERROR_WANT_WRITE */
        return -1;
    }
    moat_buf_append(&c->out, p, k);
    return (int)k;
}

static int bio_read(BIO *b, char *buf, int len)
{
    struct tls_conn *c = BIO_get_data(b);
    struct moat_sock *s = c->s;
    BIO_clear_retry_flags(b);
    if (!s->readable) { /* known drained: an edge will come, no read(2) to learn EAGAIN */
        BIO_set_retry_read(b);
        return -1;
    }
    ssize_t n;
    do
        n = read(s->io.fd, buf, (size_t)len);
    while (n < 0 && errno == EINTR);
    c->nread++;
    if (n > 0) {
        if (n < len && !s->hup)
            s->readable = false;
        return (int)n;
    }
    s->readable = false;
    if (n == 0) {
        c->sock_eof = true;
        return 0;
    }
    if (errno == EAGAIN) {
        BIO_set_retry_read(b);
        return -1;
    }
    c->sock_errno = errno;
    return -1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    struct tls_conn *c = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH: /* the transport sends after each OpenSSL call */
    case BIO_CTRL_DUP:
        return 1;
    case BIO_CTRL_EOF:
        return c && c->sock_eof;
    default:
        return 0;
    }
}

static BIO_METHOD *bio_meth;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static void bio_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "moat socket");
    if (m && BIO_meth_set_write(m, bio_write) && BIO_meth_set_read(m, bio_read) &&
        BIO_meth_set_ctrl(m, bio_ctrl))
        bio_meth = m;
    else
        BIO_meth_free(m);
}

/* --- sending -------------------------------------------------------------------------------- */

/* Sends `out` as far as the socket takes it. MOAT_OK (all sent; the storage goes back to the
 * free list), MOAT_AGAIN (the rest waits: s->pending, s->writable cleared) or MOAT_ERR. */
static int out_send(struct moat_sock *s, struct tls_conn *c, bool more)
{
    uint32_t len;
    bool sent = false;
    while ((len = moat_buf_len(&c->out))) {
        ssize_t n;
        do
            n = send(s->io.fd, moat_buf_rptr(&c->out), len, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
        while (n < 0 && errno == EINTR);
        c->nwrite++;
        if (n < 0) {
            if (errno == EAGAIN) {
                s->writable = false;
                s->pending = true;
                return MOAT_AGAIN;
            }
            c->fatal = true;
            s->err_reason = "write";
            return MOAT_ERR;
        }
        moat_buf_consume(&c->out, (uint32_t)n);
        sent = true;
        if ((uint32_t)n < len) { /* the socket is full: save the send that says EAGAIN */
            s->writable = false;
            s->pending = true;
            return MOAT_AGAIN;
        }
    }
    moat_buf_put(&c->out);
    s->pending = false;
    if (sent) /* a send without MSG_MORE pushes what earlier ones left in the kernel */
        c->kernel_more = more;
    s->held = c->kernel_more;
    return MOAT_OK;
}

/* --- errors --------------------------------------------------------------------------------- */

/* A reason string from OpenSSL's tables (static storage) or our own literal. */
static const char *ossl_reason(unsigned long e, const char *fallback)
{
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : fallback;
}

/* Counts a failed handshake on <c> by reason, sets s->err_reason, clears the error queue.
 * OpenSSL's reasons map to the counters: "no shared cipher" (and the other "nothing in common"
 * reasons: groups, signature algorithms) -> no_shared_cipher; a version the other side does
 * not support -> version; bytes that are not TLS ("http request", "https proxy request", and
 * "wrong version number", which OpenSSL 3.0 raises for a first record that "doesn't look like
 * TLS"), malformed messages, no common ALPN protocol -> protocol; the peer closing or
 * resetting before the end -> closed. */
static void hs_fail(struct moat_sock *s, struct tls_conn *c, int e)
{
    unsigned long err = ERR_peek_error();
    int reason = ERR_GET_LIB(err) == ERR_LIB_SSL ? ERR_GET_REASON(err) : 0;
    const char *why = NULL;
    c->fatal = true;
    if (!c->server) {
        long v = SSL_get_verify_result(c->ssl);
        if (v != X509_V_OK && reason == SSL_R_CERTIFICATE_VERIFY_FAILED) {
            why = X509_verify_cert_error_string(v);
            s->verify_failed = true;
            if (!c->counted)
                TLS_COUNT(c, tls_up_fail_verify);
        } else if (!c->counted)
            TLS_COUNT(c, tls_up_fail_other);
        c->counted = true;
    }
    if (!why && (c->sock_eof || c->sock_errno || reason == SSL_R_UNEXPECTED_EOF_WHILE_READING ||
                 (e == SSL_ERROR_SYSCALL && !err))) {
        why = c->sock_errno ? "connection reset during the TLS handshake"
                            : "connection closed during the TLS handshake";
        if (!c->counted)
            TLS_COUNT(c, tls_fail_eof);
    } else if (!why && !c->counted) {
        switch (reason) {
        case SSL_R_NO_SHARED_CIPHER:
        case SSL_R_NO_SHARED_GROUPS:
        case SSL_R_NO_SUITABLE_KEY_SHARE:
        case SSL_R_NO_SHARED_SIGNATURE_ALGORITHMS:
        case SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM:
        case SSL_R_NO_CIPHERS_AVAILABLE:
            TLS_COUNT(c, tls_fail_no_cipher);
            break;
        case SSL_R_UNSUPPORTED_PROTOCOL:
        case SSL_R_VERSION_TOO_LOW:
        case SSL_R_VERSION_TOO_HIGH:
        case SSL_R_NO_PROTOCOLS_AVAILABLE:
        case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
        case SSL_R_UNSUPPORTED_SSL_VERSION:
        case SSL_R_WRONG_SSL_VERSION:
            TLS_COUNT(c, tls_fail_version);
            break;
        case SSL_R_HTTP_REQUEST:
        case SSL_R_HTTPS_PROXY_REQUEST:
        case SSL_R_WRONG_VERSION_NUMBER:
        case SSL_R_PACKET_LENGTH_TOO_LONG:
        case SSL_R_RECORD_LENGTH_MISMATCH:
        case SSL_R_LENGTH_MISMATCH:
        case SSL_R_LENGTH_TOO_SHORT:
        case SSL_R_BAD_PACKET_LENGTH:
        case SSL_R_BAD_LENGTH:
        case SSL_R_UNEXPECTED_MESSAGE:
        case SSL_R_UNEXPECTED_RECORD:
        case SSL_R_BAD_EXTENSION:
        case SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC:
        case SSL_R_NO_APPLICATION_PROTOCOL:
            TLS_COUNT(c, tls_fail_protocol);
            break;
        default:
            TLS_COUNT(c, tls_fail_other);
        }
    }
    c->counted = true;
    s->err_reason = why ? why : ossl_reason(err, "TLS handshake failed");
    if (moat_buf_len(&c->out) && !s->pending)
        (void)out_send(s, c, false); /* the alert, best effort */
    ERR_clear_error();
}

/* --- the transport -------------------------------------------------------------------------- */

/* A TLS 1.2 origin that renewed our ticket in a resumed handshake: OpenSSL makes a new session
 * for it but calls no new-session callback for a resumption, so keep it here. (TLS 1.3
 * sessions are single use and arrive through the callback; the one just used is no longer
 * resumable and is skipped.) */
static void tls_client_keep(struct tls_conn *c)
{
    SSL_SESSION *cur = SSL_get_session(c->ssl);
    if (!cur || !SSL_SESSION_is_resumable(cur))
        return;
    SSL_SESSION *old = NULL;
    pthread_mutex_lock(&c->client->lock);
    if (c->origin->sess != cur && SSL_SESSION_up_ref(cur)) {
        old = c->origin->sess;
        c->origin->sess = cur;
    }
    pthread_mutex_unlock(&c->client->lock);
    SSL_SESSION_free(old);
}

static int tls_handshake(struct moat_sock *s)
{
    struct tls_conn *c = s->tls;
    if (c->hs_done)
        return MOAT_OK;
    if (c->fatal)
        return MOAT_ERR;
    if (s->pending) {
        int r = out_send(s, c, false);
        if (r != MOAT_OK)
            return r;
    }
    for (;;) {
        int r = SSL_do_handshake(c->ssl);
        if (r == 1)
            break;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ) {
            /* The peer needs our flight to answer: send it now. Left over, it is pending and
             * the caller waits for writability as well. */
            if (moat_buf_len(&c->out) && out_send(s, c, false) == MOAT_ERR)
                break;
            return MOAT_AGAIN;
        }
        if (e == SSL_ERROR_WANT_WRITE) { /* `out` was full */
            int w = out_send(s, c, false);
            if (w == MOAT_OK)
                continue;
            if (w == MOAT_AGAIN)
                return MOAT_AGAIN;
            break;
        }
        hs_fail(s, c, e);
        return MOAT_ERR;
    }
    if (c->fatal) { /* a send failed: the peer is gone */
        if (!c->counted && c->server)
            TLS_COUNT(c, tls_fail_eof);
        else if (!c->counted)
            TLS_COUNT(c, tls_up_fail_other);
        c->counted = true;
        ERR_clear_error();
        return MOAT_ERR;
    }
    c->hs_done = true;
    bool resumed = SSL_session_reused(c->ssl);
    if (c->server && resumed)
        TLS_COUNT(c, tls_hs_resumed);
    else if (c->server)
        TLS_COUNT(c, tls_hs_full);
    else if (resumed)
        TLS_COUNT(c, tls_up_resumed);
    else
        TLS_COUNT(c, tls_up_hs);
    c->counted = true;
    if (!c->server && resumed && c->origin)
        tls_client_keep(c);
    if (moat_buf_len(&c->out) && !s->pending) {
        if (c->server && SSL_version(c->ssl) == TLS1_3_VERSION)
            s->held = true; /* the ticket: it leaves with the first response */
        else if (out_send(s, c, false) == MOAT_ERR)
            return MOAT_ERR;
    }
    /* The client's first bytes may have come with its last flight: OpenSSL holds them. */
    if (SSL_has_pending(c->ssl))
        s->readable = true;
    return MOAT_OK;
}

/* A write or read before the handshake ended drives it first. Returns MOAT_OK to go on. A
 * handshake waiting for the other direction makes the call wait for it too (wr_wants_r,
 * rd_wants_w), so the caller's flag is cleared as the contract says. */
static int hs_first(struct moat_sock *s, bool writing)
{
    int r = tls_handshake(s);
    if (r == MOAT_AGAIN && writing && s->writable) {
        s->wr_wants_r = true;
        s->writable = false;
    } else if (r == MOAT_AGAIN && !writing && s->readable) {
        s->rd_wants_w = true;
        s->readable = false;
    }
    return r;
}

static ssize_t tls_read(struct moat_sock *s, void *buf, size_t len)
{
    struct tls_conn *c = s->tls;
    if (!c->hs_done) {
        int r = hs_first(s, false);
        if (r != MOAT_OK) {
            if (r == MOAT_ERR)
                s->eof = true;
            return r;
        }
    }
    if (c->fatal || c->rd_eof) {
        s->eof = true;
        s->readable = false;
        return c->fatal ? MOAT_ERR : 0;
    }
    uint32_t before = moat_buf_len(&c->out);
    size_t total = 0;
    int e = SSL_ERROR_NONE;
    while (total < len) {
        size_t n;
        if (SSL_read_ex(c->ssl, (char *)buf + total, len - total, &n)) {
            total += n;
            /* Drained socket, nothing buffered: the next SSL_read_ex could only say
             * WANT_READ (with RELEASE_BUFFERS it would still allocate and free a buffer). */
            if (!s->readable && !SSL_has_pending(c->ssl)) {
                e = SSL_ERROR_WANT_READ;
                break;
            }
            continue;
        }
        e = SSL_get_error(c->ssl, 0);
        break;
    }
    if (moat_buf_len(&c->out) > before && !s->pending)
        (void)out_send(s, c, false); /* what reading made OpenSSL write: a KeyUpdate, an alert */
    switch (e) {
    case SSL_ERROR_NONE: /* the buffer is full: more may be buffered or in the socket */
        if (SSL_has_pending(c->ssl))
            s->readable = true;
        return (ssize_t)total;
    case SSL_ERROR_WANT_READ:
        s->readable = false;
        return total ? (ssize_t)total : MOAT_AGAIN;
    case SSL_ERROR_WANT_WRITE: /* `out` is full of refused bytes */
        s->readable = false;
        s->rd_wants_w = true;
        return total ? (ssize_t)total : MOAT_AGAIN;
    case SSL_ERROR_ZERO_RETURN: /* close_notify */
        break;
    default: {
        unsigned long err = ERR_peek_error();
        bool eof =
            c->sock_eof && !c->sock_errno &&
            (e == SSL_ERROR_SYSCALL || (ERR_GET_LIB(err) == ERR_LIB_SSL &&
                                        ERR_GET_REASON(err) == SSL_R_UNEXPECTED_EOF_WHILE_READING));
        ERR_clear_error();
        if (eof) /* a TCP EOF without close_notify: HTTP framing detects truncation */
            break;
        c->fatal = true;
        s->err_reason = c->sock_errno ? "read" : ossl_reason(err, "TLS read failed");
        if (total)
            return (ssize_t)total; /* the error again on the next call */
        s->eof = true;
        s->readable = false;
        return MOAT_ERR;
    }
    }
    c->rd_eof = true;
    if (total) {
        s->readable = true; /* the next call returns the end */
        return (ssize_t)total;
    }
    s->eof = true;
    s->readable = false;
    return 0;
}

/* Iterates over the caller's iovecs. */
struct cursor {
    const struct iovec *iov;
    int cnt, i;
    size_t off;
};

static size_t cur_len(const struct cursor *k)
{
    return k->i < k->cnt ? k->iov[k->i].iov_len - k->off : 0;
}

static void cur_skip_empty(struct cursor *k)
{
    while (k->i < k->cnt && k->off == k->iov[k->i].iov_len) {
        k->i++;
        k->off = 0;
    }
}

static const char *cur_ptr(const struct cursor *k)
{
    return (const char *)k->iov[k->i].iov_base + k->off;
}

static void cur_advance(struct cursor *k, size_t n)
{
    k->off += n;
    cur_skip_empty(k);
}

/* The plaintext that surely fits as records in <room> bytes of `out`. */
static size_t plain_fit(uint32_t room)
{
    size_t full = room / (REC_MAX + REC_OVH);
    size_t rem = room - full * (REC_MAX + REC_OVH);
    return full * REC_MAX + (rem > REC_OVH ? rem - REC_OVH : 0);
}

static uint32_t out_room(const struct tls_conn *c)
{
    return c->out.base ? moat_buf_room(&c->out) + c->out.rpos : OUT_CAP;
}

/* Encrypts <n> bytes into `out` (they fit: see plain_fit). */
static int ssl_put(struct moat_sock *s, struct tls_conn *c, const void *p, size_t n)
{
    size_t w;
    if (SSL_write_ex(c->ssl, p, n, &w) && w == n)
        return MOAT_OK;
    int e = SSL_get_error(c->ssl, 0);
    if (e == SSL_ERROR_WANT_READ) { /* only while a handshake is in progress */
        s->wr_wants_r = true;
        s->writable = false;
        return MOAT_AGAIN;
    }
    s->err_reason = ossl_reason(ERR_peek_error(), "TLS write failed");
    ERR_clear_error();
    c->fatal = true;
    return MOAT_ERR;
}

static size_t nrec(size_t n)
{
    return (n + REC_MAX - 1) / REC_MAX;
}

/* Takes plaintext from <k> into records in `out`, as much as the room allows. Returns the
 * bytes taken, or MOAT_AGAIN / MOAT_ERR when none could be. A piece shorter than a record
 * with more to follow starts a gathered record; the following pieces join it, and a piece too
 * long to join whole gives it its first bytes only when that saves a record (head + 40 KiB:
 * 3 records, not 4; head + 64 KiB: the head alone, then 4 records, no copy). */
static ssize_t take(struct moat_sock *s, struct tls_conn *c, struct cursor *k)
{
    char stage[REC_MAX];
    size_t taken = 0, fit;
    cur_skip_empty(k);
    while (k->i < k->cnt && (fit = plain_fit(out_room(c))) > 0) {
        const char *p = cur_ptr(k);
        size_t n = MOAT_MIN(cur_len(k), fit);
        if (n < REC_MAX && k->i + 1 < k->cnt) {
            size_t cap = MOAT_MIN(fit, (size_t)REC_MAX), m = 0;
            while (k->i < k->cnt && m < cap) {
                size_t l = cur_len(k), q = MOAT_MIN(l, cap - m);
                if (q < l && m && nrec(m + l) == 1 + nrec(l))
                    break;
                memcpy(stage + m, cur_ptr(k), q);
                m += q;
                cur_advance(k, q);
            }
            p = stage;
            n = m;
        } else {
            if (n < cur_len(k) && n > REC_MAX)
                n -= n % REC_MAX; /* the buffer is the limit: whole records, the rest next */
            cur_advance(k, n);
        }
        int r = ssl_put(s, c, p, n);
        if (r != MOAT_OK)
            return taken ? (r == MOAT_ERR ? MOAT_ERR : (ssize_t)taken) : r;
        taken += n;
    }
    return (ssize_t)taken;
}

static ssize_t tls_writev(struct moat_sock *s, const struct iovec *iov, int iovcnt, unsigned flags)
{
    struct tls_conn *c = s->tls;
    if (!c->hs_done) {
        int r = hs_first(s, true);
        if (r != MOAT_OK)
            return r;
    }
    if (c->fatal)
        return MOAT_ERR;
    if (s->pending) {
        int r = out_send(s, c, false);
        if (r != MOAT_OK)
            return r;
    }
    bool more = flags & MOAT_SOCK_MORE;
    struct cursor k = {iov, iovcnt, 0, 0};
    ssize_t total = 0;
    for (;;) {
        ssize_t t = take(s, c, &k);
        if (t < 0)
            return t == MOAT_AGAIN && total ? total : t;
        total += t;
        bool rest = cur_len(&k) > 0;
        if (!rest && more && moat_buf_len(&c->out) < HOLD_MAX) {
            s->held = moat_buf_len(&c->out) > 0 || c->kernel_more;
            return total;
        }
        int r = out_send(s, c, more || rest);
        if (r == MOAT_ERR)
            return MOAT_ERR;
        if (r == MOAT_AGAIN)
            return total ? total : MOAT_AGAIN;
        if (!rest)
            return total;
    }
}

static int tls_flush(struct moat_sock *s)
{
    struct tls_conn *c = s->tls;
    if (c->fatal)
        return MOAT_ERR;
    if (moat_buf_len(&c->out)) {
        int r = out_send(s, c, false);
        if (r != MOAT_OK)
            return r;
    }
    if (c->kernel_more) {
        moat_tcp_push(s->io.fd);
        c->kernel_more = false;
    }
    s->held = false;
    return MOAT_OK;
}

/* close_notify once (a missing reply is not waited for), then what is buffered, then FIN. */
static int tls_shutdown(struct moat_sock *s)
{
    struct tls_conn *c = s->tls;
    if (!c->shut_sent && c->hs_done && !c->fatal) {
        if (s->pending) { /* make room in `out` for the alert */
            int r = out_send(s, c, false);
            if (r != MOAT_OK)
                return r;
        }
        if (SSL_shutdown(c->ssl) < 0)
            ERR_clear_error(); /* the alert is queued or OpenSSL refused: FIN either way */
        c->shut_sent = true;
    }
    c->shut_sent = true;
    if (!c->fatal) {
        int r = tls_flush(s);
        if (r != MOAT_OK)
            return r;
    }
    return shutdown(s->io.fd, SHUT_WR) == 0 || errno == ENOTCONN ? MOAT_OK : MOAT_ERR;
}

static void tls_close(struct moat_sock *s)
{
    struct tls_conn *c = s->tls;
    if (c) {
        /* A session is kept when the connection merely ended without close_notify: OpenSSL
         * would drop it from the server's cache (and make a client's unresumable) otherwise. */
        if (c->hs_done && !c->fatal)
            SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(c->ssl); /* and the BIO */
        moat_buf_put(&c->out);
        free(c->sni_lc);
        free(c);
        s->tls = NULL;
    }
    close(s->io.fd);
    s->io.fd = -1;
}

const struct moat_transport moat_tls_transport = {
    .name = "tls",
    .handshake = tls_handshake,
    .read = tls_read,
    .writev = tls_writev,
    .flush = tls_flush,
    .shutdown = tls_shutdown,
    .close = tls_close,
};

/* --- starting a session --------------------------------------------------------------------- */

static struct tls_conn *conn_new(struct moat_sock *s, SSL_CTX *ctx, struct moat_tls_stats *stats)
{
    pthread_once(&bio_once, bio_init);
    ERR_clear_error(); /* SSL_get_error needs an empty queue; once per connection is enough */
    struct tls_conn *c = calloc(1, sizeof *c);
    BIO *bio = NULL;
    if (!c || !bio_meth || !(c->ssl = SSL_new(ctx)) || !(bio = BIO_new(bio_meth))) {
        if (c)
            SSL_free(c->ssl);
        free(c);
        ERR_clear_error();
        return NULL;
    }
    BIO_set_data(bio, c);
    BIO_set_init(bio, 1);
    SSL_set_bio(c->ssl, bio, bio);
    SSL_set_app_data(c->ssl, c);
    c->s = s;
    c->stats = stats;
    return c;
}

static void sock_attach(struct moat_sock *s, struct tls_conn *c)
{
    s->tls = c;
    s->tp = &moat_tls_transport;
    s->pending = s->held = s->rd_wants_w = s->wr_wants_r = false;
    s->err_reason = NULL;
}

int moat_tls_accept(const struct moat_config *cfg, struct moat_sock *s,
                    struct moat_tls_stats *stats)
{
    const struct moat_tls_rt *rt = cfg->rt;
    if (!rt || !rt->server)
        return MOAT_ERR;
    struct tls_conn *c = conn_new(s, rt->server, stats);
    if (!c)
        return MOAT_ERR;
    c->server = true;
    SSL_set_accept_state(c->ssl);
    sock_attach(s, c);
    return MOAT_OK;
}

/* Is <name> an IP literal? Copies it without brackets into <ip>. */
static bool ip_literal(const char *name, char *ip, size_t iplen)
{
    size_t n = strlen(name);
    if (n >= 2 && name[0] == '[' && name[n - 1] == ']')
        name++, n -= 2;
    if (n >= iplen)
        return false;
    memcpy(ip, name, n);
    ip[n] = '\0';
    unsigned char a[16];
    return inet_pton(AF_INET, ip, a) == 1 || inet_pton(AF_INET6, ip, a) == 1;
}

int moat_tls_connect(const struct moat_cfg_pool *pool, const char *host, struct moat_sock *s,
                     struct moat_tls_stats *stats)
{
    struct tls_client *cl = pool->tls_client;
    const char *name = cl && cl->sni ? cl->sni : host;
    if (!cl || (!name && cl->verify))
        return MOAT_ERR; /* verification without a name would accept any certificate */
    struct tls_conn *c = conn_new(s, cl->ctx, stats);
    if (!c)
        return MOAT_ERR;
    c->client = cl;
    char ip[64];
    bool lit = name && ip_literal(name, ip, sizeof ip);
    int ok = 1;
    if (name && !lit)
        ok = SSL_set_tlsext_host_name(c->ssl, name); /* no SNI for an address (RFC 6066) */
    if (ok && cl->verify) {
        if (lit)
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), ip);
        else {
            SSL_set_hostflags(c->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            ok = SSL_set1_host(c->ssl, name);
        }
    }
    if (!ok) {
        SSL_free(c->ssl);
        free(c);
        ERR_clear_error();
        return MOAT_ERR;
    }
    if ((c->origin = tls_client_origin(cl, host))) {
        pthread_mutex_lock(&cl->lock);
        SSL_SESSION *sess = c->origin->sess;
        if (sess)
            SSL_SESSION_up_ref(sess); /* ours until SSL_set_session took its own */
        pthread_mutex_unlock(&cl->lock);
        if (sess) {
            SSL_set_session(c->ssl, sess);
            SSL_SESSION_free(sess);
        }
    }
    SSL_set_connect_state(c->ssl);
    sock_attach(s, c);
    return MOAT_OK;
}

/* --- questions ------------------------------------------------------------------------------ */

void moat_tls_moved(struct moat_sock *s)
{
    struct tls_conn *c = s->tls;
    if (c)
        c->s = s;
}

struct moat_str moat_tls_alpn(const struct moat_sock *s)
{
    const struct tls_conn *c = s->tls;
    const unsigned char *p = NULL;
    unsigned n = 0;
    if (c)
        SSL_get0_alpn_selected(c->ssl, &p, &n);
    return p ? moat_str_make((const char *)p, n) : MOAT_STR("");
}

bool moat_tls_resumed(const struct moat_sock *s)
{
    const struct tls_conn *c = s->tls;
    return c && c->hs_done && SSL_session_reused(c->ssl);
}

struct moat_str moat_tls_sni(const struct moat_sock *s)
{
    const struct tls_conn *c = s->tls;
    if (!c)
        return MOAT_STR("");
    const char *n = c->sni_lc ? c->sni_lc : SSL_get_servername(c->ssl, TLSEXT_NAMETYPE_host_name);
    return n ? moat_str_make(n, strlen(n)) : MOAT_STR("");
}

void moat_tls_count_timeout(struct moat_sock *s)
{
    struct tls_conn *c = s->tls;
    if (!c || c->counted)
        return;
    if (c->server)
        TLS_COUNT(c, tls_fail_timeout);
    else
        TLS_COUNT(c, tls_up_fail_other);
    c->counted = true;
    s->err_reason = "TLS handshake timed out";
}
