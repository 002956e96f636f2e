/* transport.c: the plain TCP transport: read, writev/sendmsg(MSG_MORE), shutdown, close. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/transport.h"

static int tcp_handshake(struct moat_sock *s)
{
    (void)s;
    return MOAT_OK;
}

/* After a short read the socket is known drained (unless the peer hung up, when we read on to
 * see the EOF), which saves the read that would return EAGAIN. */
static ssize_t tcp_read(struct moat_sock *s, void *buf, size_t len)
{
    ssize_t n;
    do
        n = read(s->io.fd, buf, len);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        if ((size_t)n < len && !s->hup)
            s->readable = false;
        return n;
    }
    s->readable = false;
    if (n == 0) {
        s->eof = true;
        return 0;
    }
    if (errno == EAGAIN)
        return MOAT_AGAIN;
    s->eof = true;
    s->err_reason = "read";
    return MOAT_ERR;
}

static ssize_t tcp_writev(struct moat_sock *s, const struct iovec *iov, int iovcnt, unsigned flags)
{
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    bool more = flags & MOAT_SOCK_MORE;
    ssize_t w;
    do
        w = more ? sendmsg(s->io.fd,
                           &(struct msghdr){.msg_iov = (struct iovec *)iov,
                                            .msg_iovlen = (size_t)iovcnt},
                           MSG_MORE | MSG_NOSIGNAL)
                 : writev(s->io.fd, iov, iovcnt);
    while (w < 0 && errno == EINTR);
    s->held = more;
    if (w < 0) {
        if (errno == EAGAIN) {
            s->writable = false;
            return MOAT_AGAIN;
        }
        s->err_reason = "write";
        return MOAT_ERR;
    }
    if ((size_t)w < total)
        s->writable = false;
    return w;
}

/* A write that went with MSG_MORE may have left a partial segment in the kernel: it must go
 * now, not at the next ACK or the zero-window probe timer (200 ms and more when nothing else
 * is in flight). Setting TCP_NODELAY (already on) pushes what is pending; it costs a syscall
 * only when a source pauses in the middle of a large body. */
void moat_tcp_push(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int tcp_flush(struct moat_sock *s)
{
    if (s->held) {
        moat_tcp_push(s->io.fd);
        s->held = false;
    }
    return MOAT_OK;
}

static int tcp_shutdown(struct moat_sock *s)
{
    return shutdown(s->io.fd, SHUT_WR) == 0 || errno == ENOTCONN ? MOAT_OK : MOAT_ERR;
}

static void tcp_close(struct moat_sock *s)
{
    close(s->io.fd);
    s->io.fd = -1;
}

const struct moat_transport moat_tcp_transport = {
    .name = "tcp",
    .handshake = tcp_handshake,
    .read = tcp_read,
    .writev = tcp_writev,
    .flush = tcp_flush,
    .shutdown = tcp_shutdown,
    .close = tcp_close,
};
