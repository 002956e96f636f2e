/* tls_serve.c: a minimal HTTP/1.1 responder on moat's TLS transport (one thread, epoll,
 * edge-triggered), answering every request with the same 1 KiB body. It exists to compare the
 * TLS layer's CPU cost with nginx and HAProxy serving the same response (tls_vs.sh); it is not
 * moat's HTTP server (no parser, no limits). PLAIN_PORT serves the same over plain TCP (the
 * baseline tls_vs.sh subtracts).
 * Usage: tls_serve PORT PLAIN_PORT CERT KEY [CERT KEY]... */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tls/tls.h"

struct conn {
    struct moat_sock s;
    bool hs, close_after;
    size_t inlen;
    char in[16384];
};

static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1024\r\n"
                           "\r\n";
static char body[1024];
static struct moat_config cfg;
static struct moat_tls_stats stats;
static volatile sig_atomic_t stop;

static void conn_close(struct conn *c)
{
    moat_sock_close(&c->s);
    free(c);
}

/* Runs <c> as far as it goes; returns false when it was closed. */
static bool drive(struct conn *c)
{
    if (!c->hs) {
        int r = moat_sock_handshake(&c->s);
        if (r == MOAT_AGAIN)
            return true;
        if (r != MOAT_OK) {
            conn_close(c);
            return false;
        }
        c->hs = true;
    }
    for (;;) {
        if (moat_sock_pending(&c->s)) {
            if (!c->s.writable)
                return true;
            int r = moat_sock_flush(&c->s);
            if (r == MOAT_AGAIN)
                return true;
            if (r != MOAT_OK)
                break;
            if (c->close_after)
                break;
        }
        char *end = memmem(c->in, c->inlen, "\r\n\r\n", 4);
        if (end) {
            size_t n = (size_t)(end + 4 - c->in);
            c->close_after = memmem(c->in, n, "HTTP/1.0", 8) || memmem(c->in, n, "close", 5);
            struct iovec iov[2] = {{(void *)head, sizeof head - 1}, {body, sizeof body}};
            if (moat_sock_writev(&c->s, iov, 2, 0) != (ssize_t)(sizeof head - 1 + sizeof body))
                break; /* a response fits: 1.1 KiB */
            memmove(c->in, c->in + n, c->inlen - n);
            c->inlen -= n;
            if (c->close_after && !moat_sock_pending(&c->s))
                break;
            continue;
        }
        if (!c->s.readable)
            return true;
        ssize_t n = moat_sock_read(&c->s, c->in + c->inlen, sizeof c->in - c->inlen);
        if (n == MOAT_AGAIN)
            continue;
        if (n <= 0)
            break;
        c->inlen += (size_t)n;
    }
    if (c->close_after)
        (void)moat_sock_shutdown(&c->s);
    conn_close(c);
    return false;
}

static void on_stop(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    if (argc < 5 || argc % 2 == 0) {
        fprintf(stderr, "usage: tls_serve PORT PLAIN_PORT CERT KEY [CERT KEY]...\n");
        return 2;
    }
    memset(body, 'x', sizeof body);
    size_t ncerts = (size_t)(argc - 3) / 2;
    struct moat_cfg_cert *certs = calloc(ncerts, sizeof *certs);
    for (size_t i = 0; i < ncerts; i++)
        certs[i] = (struct moat_cfg_cert){argv[3 + 2 * i], argv[4 + 2 * i]};
    cfg.tls = (struct moat_cfg_tls){.certs = certs,
                                    .ncerts = ncerts,
                                    .session_tickets = true,
                                    .session_cache = 20480,
                                    .ticket_rotation_ms = 12 * 3600 * 1000ull,
                                    .session_timeout_ms = 3600 * 1000};
    char err[512];
    if (moat_tls_build(&cfg, err, sizeof err) != MOAT_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);
    int ep = epoll_create1(0), one = 1, lfd[2];
    static const char tags[2]; /* epoll data of the listeners: &tags[0] TLS, &tags[1] plain */
    for (int k = 0; k < 2; k++) {
        int l = lfd[k] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)atoi(argv[1 + k])),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1024)) {
            perror("listen");
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN};
        ev.data.ptr = (void *)&tags[k];
        epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    }
    struct epoll_event evs[64];
    while (!stop) {
        int n = epoll_wait(ep, evs, 64, 1000);
        for (int i = 0; i < n; i++) {
            void *ptr = evs[i].data.ptr;
            if (ptr != &tags[0] && ptr != &tags[1]) {
                struct conn *c = ptr;
                moat_sock_events(&c->s, evs[i].events);
                drive(c);
                continue;
            }
            bool tls = ptr == &tags[0];
            int fd;
            while ((fd = accept4(lfd[!tls], NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                struct conn *c = calloc(1, sizeof *c);
                moat_sock_init_tcp(&c->s, fd, NULL);
                if (tls && moat_tls_accept(&cfg, &c->s, &stats) != MOAT_OK) {
                    conn_close(c);
                    continue;
                }
                struct epoll_event cev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
                cev.data.ptr = c;
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                c->s.readable = c->s.writable = true;
                drive(c);
            }
        }
    }
    fprintf(stderr, "tls_serve: %llu full, %llu resumed handshakes\n",
            (unsigned long long)atomic_load(&stats.tls_hs_full),
            (unsigned long long)atomic_load(&stats.tls_hs_resumed));
    cfg.rt_free(cfg.rt);
    free(certs);
    return 0;
}
