/* transport.h: bytes over one socket, plain TCP or TLS, behind one small vtable.
 *
 * Proxy code never calls read/write/writev/sendmsg/shutdown on a socket: it calls these, and
 * the socket's transport does the work (Redis `connection.h`, h2o's `h2o_socket_t`). A
 * transport knows bytes and nothing of HTTP.
 *
 * Readiness is edge-triggered and remembered (`readable`, `writable`): the owner feeds epoll's
 * bits through moat_sock_events(); a call that would block clears the flag it waited on, so
 * the owner stops until the next edge. TLS can turn a read into a wait for writability (and
 * the reverse); the transport then sets `rd_wants_w` / `wr_wants_r` and moat_sock_events()
 * raises the flag the caller is looking at when the other edge arrives. */
#ifndef MOAT_CORE_TRANSPORT_H
#define MOAT_CORE_TRANSPORT_H

#include <sys/epoll.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "core/loop.h"

struct moat_sock;

/* moat_sock_writev flags */
#define MOAT_SOCK_MORE                                                                             \
    0x1u /* more bytes follow at once: the kernel may hold a partial segment                       \
            (MSG_MORE) until they come or moat_sock_flush pushes it */

struct moat_transport {
    const char *name; /* "tcp", "tls" */
    /* Ends the handshake, if the transport has one: MOAT_OK (done: bytes may flow),
     * MOAT_AGAIN (blocked; a flag was cleared) or MOAT_ERR (failed; s->err_reason says why). */
    int (*handshake)(struct moat_sock *s);
    /* Reads up to <len> bytes into <buf>: >0 bytes read, 0 at the end of input (s->eof set),
     * MOAT_AGAIN (nothing now; s->readable cleared) or MOAT_ERR (s->eof set). After a read
     * the transport knows drained, s->readable is cleared too, to save the read that would
     * say EAGAIN. */
    ssize_t (*read)(struct moat_sock *s, void *buf, size_t len);
    /* Takes bytes from <iov>: how many (a short count, or MOAT_AGAIN when none, clears
     * s->writable: a short count means the socket is full), or MOAT_ERR. TLS takes bytes by
     * encrypting them into its own buffer and sends that at once as far as the socket takes
     * it; the rest waits in the transport (moat_sock_pending) for moat_sock_flush, and no new
     * bytes are taken until it is sent. With MOAT_SOCK_MORE, TLS may keep a small tail of
     * records (s->held) to send with the next call. */
    ssize_t (*writev)(struct moat_sock *s, const struct iovec *iov, int iovcnt, unsigned flags);
    /* Sends what the transport holds (TLS records; a partial segment held by
     * MOAT_SOCK_MORE): MOAT_OK when nothing is left, MOAT_AGAIN (s->writable cleared),
     * MOAT_ERR. */
    int (*flush)(struct moat_sock *s);
    /* Ends the write direction (TLS: close_notify first), as shutdown(SHUT_WR). MOAT_OK,
     * MOAT_AGAIN (call again when writable) or MOAT_ERR. */
    int (*shutdown)(struct moat_sock *s);
    /* Closes the socket and frees the transport's state; s->io.fd becomes -1. */
    void (*close)(struct moat_sock *s);
};

struct moat_sock {
    struct moat_io io;
    const struct moat_transport *tp;
    void *tls;              /* the TLS transport's state (src/tls/), NULL for TCP */
    bool readable;          /* may have bytes to read (edge seen, no EAGAIN since) */
    bool writable;          /* may take bytes */
    bool eof;               /* read returned 0, or an error ended input */
    bool hup;               /* epoll reported RDHUP/HUP: read on until EOF */
    bool held;              /* flush has work though nothing is pending: TCP: the last write
                               went with MSG_MORE; TLS: records kept back by
                               MOAT_SOCK_MORE or a TLS 1.3 server's session ticket */
    bool pending;           /* the transport holds bytes to send (TLS records) */
    bool rd_wants_w;        /* TLS: a read waits for writability */
    bool wr_wants_r;        /* TLS: a write waits for readability */
    bool verify_failed;     /* TLS client: the peer's certificate did not verify */
    const char *err_reason; /* why the handshake or I/O failed (static string), or NULL */
};

/* The plain TCP transport. */
extern const struct moat_transport moat_tcp_transport;

/* Sends now the partial segment a write with MSG_MORE left in the kernel on <fd> (for
 * transports that write with MSG_MORE themselves). */
void moat_tcp_push(int fd);

/* Makes <s> a TCP socket on <fd> (already non-blocking) with the I/O callback <cb>. */
static inline void moat_sock_init_tcp(struct moat_sock *s, int fd, moat_io_cb cb)
{
    *s = (struct moat_sock){.io = {fd, cb}, .tp = &moat_tcp_transport};
}

/* Feeds epoll's event bits <ev> into <s>'s remembered readiness. */
static inline void moat_sock_events(struct moat_sock *s, uint32_t ev)
{
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        s->readable = true;
        if (s->wr_wants_r) {
            s->wr_wants_r = false;
            s->writable = true;
        }
    }
    if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        s->hup = true;
    if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
        s->writable = true;
        if (s->rd_wants_w) {
            s->rd_wants_w = false;
            s->readable = true;
        }
    }
}

static inline int moat_sock_handshake(struct moat_sock *s)
{
    return s->tp->handshake ? s->tp->handshake(s) : MOAT_OK;
}
static inline ssize_t moat_sock_read(struct moat_sock *s, void *buf, size_t len)
{
    return s->tp->read(s, buf, len);
}
static inline ssize_t moat_sock_writev(struct moat_sock *s, const struct iovec *iov, int iovcnt,
                                       unsigned flags)
{
    return s->tp->writev(s, iov, iovcnt, flags);
}
static inline ssize_t moat_sock_write(struct moat_sock *s, const void *p, size_t n)
{
    struct iovec v = {(void *)p, n};
    return s->tp->writev(s, &v, 1, 0);
}
static inline int moat_sock_flush(struct moat_sock *s)
{
    return s->tp->flush(s);
}
static inline int moat_sock_shutdown(struct moat_sock *s)
{
    return s->tp->shutdown(s);
}
static inline void moat_sock_close(struct moat_sock *s)
{
    if (s->io.fd >= 0)
        s->tp->close(s);
}
/* Does the transport hold bytes the socket refused, that moat_sock_flush must send when it is
 * writable? (Bytes held on purpose, s->held, are not pending: a TCP tail held by
 * MOAT_SOCK_MORE is the kernel's and goes out on close or at once on flush; TLS records kept
 * back go with the next writev, or at once on flush.) */
static inline bool moat_sock_pending(const struct moat_sock *s)
{
    return s->pending;
}

#endif
