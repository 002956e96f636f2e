/* upstream.c: connections to origins: non-blocking connect, the per-worker keep-alive pool,
 * and what happens to a pooled connection while it waits (the origin may close it). */
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xxhash.h>

#include "proxy/req.h"
#include "tls/tls.h"

static void up_free(struct moat_defer *d)
{
    struct moat_upconn *u = MOAT_CONTAINER_OF(d, struct moat_upconn, defer);
    moat_buf_put(&u->s.in);
    free(u);
}

void moat_up_close(struct moat_upconn *u)
{
    if (u->s.sk.io.fd < 0)
        return;
    moat_timer_stop(&u->w->loop, &u->timer);
    moat_sock_close(&u->s.sk);
    moat_loop_defer(&u->w->loop, &u->defer);
}

static void unlink_idle(struct moat_upconn *u)
{
    struct moat_upconn **pp = &u->pool->idle;
    while (*pp && *pp != u)
        pp = &(*pp)->next_idle;
    if (*pp) {
        *pp = u->next_idle;
        u->pool->nidle--;
    }
    u->next_idle = NULL;
}

/* I/O on an upstream connection: while it serves a request, the request's exchange does the
 * work (moat_req_drive); while idle in the pool, any readability means the origin closed it
 * or sent bytes nobody asked for (TLS aside, below): either way it is no longer usable. */
static void up_io(struct moat_loop *loop, struct moat_io *io, uint32_t ev)
{
    struct moat_upconn *u = MOAT_CONTAINER_OF(io, struct moat_upconn, s.sk.io);
    (void)loop;
    moat_sock_events(&u->s.sk, ev);
    if (u->req) {
        moat_req_drive(u->req);
        return;
    }
    if (!(ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
        return; /* a late "writable" edge on an idle connection means nothing */
    if (u->pool->tls && !(ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
        /* TLS sends more than responses: a TLS 1.3 server's session tickets may come after
         * the exchange. A read takes them in; only application data or a close end it. */
        char b;
        if (moat_sock_read(&u->s.sk, &b, 1) == MOAT_AGAIN)
            return;
    }
    unlink_idle(u);
    moat_up_close(u);
}

static void up_timeout(struct moat_loop *loop, struct moat_timer *t)
{
    struct moat_upconn *u = MOAT_CONTAINER_OF(t, struct moat_upconn, timer);
    (void)loop;
    if (u->req) {
        /* The exchange's timeouts are the request's business: it reads the flag. */
        u->timed_out = true;
        moat_req_drive(u->req);
        return;
    }
    unlink_idle(u);
    moat_up_close(u);
}

/* What a TLS connection to an origin was set up with (pools.*.tls: verify, trust, SNI or the
 * origin's host, client certificate), as one number: a connection verified one way must
 * never serve a pool that asks for another, so idle connections are pooled per address and
 * per these settings. 0 for plain TCP. */
uint64_t moat_up_tls_key(const struct moat_cfg_pool *pool, const struct moat_cfg_origin *o)
{
    if (!pool->tls.enabled)
        return 0;
    char buf[4096];
    int n = snprintf(buf, sizeof buf, "%d\n%s\n%s\n%s\n%s", pool->tls.verify,
                     pool->tls.ca_file ? pool->tls.ca_file : "",
                     pool->tls.sni ? pool->tls.sni : (o && o->host ? o->host : ""),
                     pool->tls.cert ? pool->tls.cert : "", pool->tls.key ? pool->tls.key : "");
    uint64_t h = XXH3_64bits(buf, n > 0 ? MOAT_MIN((size_t)n, sizeof buf - 1) : 0);
    return h ? h : 1;
}

struct moat_upool *moat_up_pool_find(struct moat_worker *w, const struct moat_addr *addr,
                                     uint64_t tlskey)
{
    for (struct moat_upool *p = w->upools; p; p = p->next)
        if (p->addr.len == addr->len && p->tlskey == tlskey &&
            !memcmp(&p->addr.ss, &addr->ss, addr->len))
            return p;
    struct moat_upool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->addr = *addr;
    p->tls = tlskey != 0;
    p->tlskey = tlskey;
    p->next = w->upools;
    w->upools = p;
    return p;
}

struct moat_upconn *moat_up_get(struct moat_worker *w, struct moat_upool *pool,
                                const struct moat_cfg_pool *pcfg, const struct moat_cfg_origin *o,
                                struct moat_req *r, bool fresh, bool *reused)
{
    struct moat_upconn *u = fresh ? NULL : pool->idle;
    if (u) {
        pool->idle = u->next_idle;
        pool->nidle--;
        u->next_idle = NULL;
        u->req = r;
        moat_timer_stop(&w->loop, &u->timer);
        *reused = true;
        return u;
    }
    *reused = false;
    int fd = socket(pool->addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int rc = connect(fd, (const struct sockaddr *)&pool->addr.ss, pool->addr.len);
    if (rc < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return NULL;
    }
    u = calloc(1, sizeof *u);
    if (!u) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    moat_sock_init_tcp(&u->s.sk, fd, up_io);
    u->w = w;
    u->pool = pool;
    u->req = r;
    u->timer.cb = up_timeout;
    u->defer.fn = up_free;
    u->connected = rc == 0;
    u->handshaken = true;
    if (pool->tls) {
        /* TLS to the origin: the handshake follows the connect (exchange.c); the session of
         * the last connection to this origin is offered for resumption. */
        if (moat_tls_connect(pcfg, o ? o->host : NULL, &u->s.sk, &w->stats.tls) != MOAT_OK) {
            close(fd);
            free(u);
            errno = ENOMEM;
            return NULL;
        }
        u->handshaken = false;
    }
    if (moat_loop_add(&w->loop, &u->s.sk.io, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) !=
        MOAT_OK) {
        moat_sock_close(&u->s.sk);
        free(u);
        errno = ENOMEM;
        return NULL;
    }
    MOAT_STAT_INC(&w->stats, up_conn_opened);
    return u;
}

void moat_up_release(struct moat_upconn *u, bool reusable, uint64_t keepalive_ms,
                     unsigned keepalive_max)
{
    struct moat_worker *w = u->w;
    u->req = NULL;
    if (!reusable || u->s.sk.eof || u->s.sk.hup || u->timed_out || moat_buf_len(&u->s.in) != 0 ||
        moat_sock_pending(&u->s.sk) || w->draining || u->pool->nidle >= keepalive_max) {
        moat_up_close(u);
        return;
    }
    if (u->s.sk.readable && !u->pool->tls) {
        /* Not known to be drained (edge-triggered: no new event would tell us about bytes
         * already queued). Anything queued after a complete response is an origin bug or a
         * close; either way the connection must not carry another request. */
        char b;
        ssize_t n = recv(u->s.sk.io.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n >= 0 || errno != EAGAIN) {
            moat_up_close(u);
            return;
        }
    }
    u->requests++;
    /* Keep the buffer only while busy: an idle pooled connection holds no buffer. */
    moat_buf_put(&u->s.in);
    u->s.sk.readable = false;
    u->next_idle = u->pool->idle;
    u->pool->idle = u;
    u->pool->nidle++;
    moat_timer_set(&w->loop, &u->timer, keepalive_ms);
}
