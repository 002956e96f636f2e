/* httpd.c: the control-plane HTTP server. Simple on purpose: a request is read whole (head
 * plus a Content-Length body up to 1 MiB), answered whole, then the next one. */
#include "admin/httpd.h"

#include <errno.h>
#include <jansson.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#define HTTPD_BUF         (1u << 20)
#define HTTPD_MAX_HEADERS 64

struct hconn {
    struct moat_io io;
    struct moat_defer defer;
    struct moat_timer timer;
    struct moat_httpd *srv;
    struct hconn *next, *prev;
    char *in;
    size_t inlen;
    char *out;
    size_t outlen, outoff;
    bool close_after;
    bool later, later_head, later_keep; /* an answer is owed (moat_httpd_later) */
    bool stream;                        /* moat_httpd_stream: out grows by pushes */
    moat_httpd_closed *closed_cb;
    void *closed_arg;
    char peer[48];
};

struct moat_httpd {
    struct moat_io io;
    struct moat_loop *loop;
    moat_httpd_handler *h;
    void *ctx;
    struct hconn *conns;
};

void moat_httpd_set(struct moat_httpd_resp *resp, int status, const char *ctype, const char *body,
                    size_t len)
{
    free(resp->body);
    resp->status = status;
    resp->ctype = ctype;
    resp->body = malloc(len + 1);
    if (resp->body) {
        memcpy(resp->body, body, len);
        resp->body[len] = 0;
        resp->len = len;
    } else {
        resp->len = 0;
    }
}

void moat_httpd_error(struct moat_httpd_resp *resp, int status, const char *msg)
{
    json_t *o = json_pack("{s:s}", "error", msg);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    free(resp->body);
    resp->status = status;
    resp->ctype = "application/json";
    resp->body = s;
    resp->len = s ? strlen(s) : 0;
    if (s) {
        /* a trailing newline makes curl output readable */
        char *t = realloc(s, resp->len + 2);
        if (t) {
            t[resp->len++] = '\n';
            t[resp->len] = 0;
            resp->body = t;
        }
    }
}

static void hc_free(struct moat_defer *d)
{
    struct hconn *c = MOAT_CONTAINER_OF(d, struct hconn, defer);
    free(c->in);
    free(c->out);
    free(c);
}

static void hc_close(struct hconn *c)
{
    if (c->io.fd < 0)
        return;
    moat_timer_stop(c->srv->loop, &c->timer);
    close(c->io.fd);
    c->io.fd = -1;
    if (c->closed_cb) {
        moat_httpd_closed *cb = c->closed_cb;
        c->closed_cb = NULL;
        cb(c->closed_arg);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        c->srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    moat_loop_defer(c->srv->loop, &c->defer);
}

static void queue_response(struct hconn *c, struct moat_httpd_resp *r, bool head, bool keep)
{
    struct moat_str reason = moat_http_reason(r->status);
    char hdr[768];
    int n =
        snprintf(hdr, sizeof hdr,
                 "HTTP/1.1 %d %.*s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                 "%s%s%s\r\n",
                 r->status, (int)reason.len, reason.ptr, r->ctype ? r->ctype : "application/json",
                 r->len, strstr(r->extra, "Cache-Control:") ? "" : "Cache-Control: no-store\r\n",
                 r->extra, keep ? "" : "Connection: close\r\n");
    size_t blen = head ? 0 : r->len;
    char *o = malloc((size_t)n + blen);
    if (!o) {
        c->close_after = true;
        return;
    }
    memcpy(o, hdr, (size_t)n);
    if (blen)
        memcpy(o + n, r->body, blen);
    free(c->out);
    c->out = o;
    c->outlen = (size_t)n + blen;
    c->outoff = 0;
    c->close_after = !keep;
}

static void queue_stream_head(struct hconn *c, struct moat_httpd_resp *r)
{
    char hdr[768];
    int n = snprintf(hdr, sizeof hdr,
                     "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nCache-Control: no-store\r\n"
                     "%sConnection: close\r\n\r\n",
                     r->ctype ? r->ctype : "text/event-stream", r->extra);
    char *o = malloc((size_t)n + r->len);
    if (!o) {
        c->close_after = true;
        return;
    }
    memcpy(o, hdr, (size_t)n);
    if (r->len)
        memcpy(o + n, r->body, r->len);
    free(c->out);
    c->out = o;
    c->outlen = (size_t)n + r->len;
    c->outoff = 0;
    moat_timer_stop(c->srv->loop, &c->timer);
}

/* Returns true when a whole request was consumed and answered (queued). */
static bool try_request(struct hconn *c)
{
    struct moat_hdr hdrs[HTTPD_MAX_HEADERS];
    struct moat_h1_req req = {.hdrs = hdrs};
    struct moat_h1_limits lim = {8192, 65536, HTTPD_MAX_HEADERS};
    enum moat_h1_err err = MOAT_H1_OK;
    int n = moat_h1_parse_request(c->in, c->inlen, &lim, &req, &err);
    struct moat_httpd_resp resp = {0};
    if (n == MOAT_AGAIN)
        return false;
    if (n < 0) {
        moat_httpd_error(&resp, moat_h1_err_status(err), moat_h1_err_name(err));
        queue_response(c, &resp, false, false);
        free(resp.body);
        c->inlen = 0;
        return true;
    }
    uint64_t blen = (req.flags & MOAT_H1_F_HAS_CL) ? req.content_length : 0;
    if (req.flags & MOAT_H1_F_CHUNKED || blen > HTTPD_BUF - (size_t)n) {
        moat_httpd_error(&resp, 413, "request bodies here are Content-Length, at most 1 MiB");
        queue_response(c, &resp, false, false);
        free(resp.body);
        c->inlen = 0;
        return true;
    }
    if (c->inlen < (size_t)n + blen)
        return false;
    struct moat_httpd_req hr = {&req, moat_str_make(c->in + n, (size_t)blen), c->peer};
    bool keep = req.minor == 1 && !(req.flags & MOAT_H1_F_CONN_CLOSE);
    resp.conn_ = c;
    c->srv->h(c->srv->ctx, &hr, &resp);
    if (c->stream) {
        queue_stream_head(c, &resp);
    } else if (resp.later_) {
        c->later = true;
        c->later_head = req.meth == MOAT_M_HEAD;
        c->later_keep = keep;
        moat_timer_stop(c->srv->loop, &c->timer); /* no idle timeout while we owe */
    } else {
        queue_response(c, &resp, req.meth == MOAT_M_HEAD, keep);
    }
    free(resp.body);
    size_t used = (size_t)n + (size_t)blen;
    memmove(c->in, c->in + used, c->inlen - used);
    c->inlen -= used;
    if (c->stream)
        c->inlen = 0; /* whatever the client sends from now on is read and dropped */
    return true;
}

void *moat_httpd_stream(struct moat_httpd_resp *resp, moat_httpd_closed *cb, void *arg)
{
    struct hconn *c = resp->conn_;
    c->stream = true;
    c->closed_cb = cb;
    c->closed_arg = arg;
    return c;
}

/* Writes what a stream has queued; false if the connection failed (and is closed). */
static bool stream_flush(struct hconn *c)
{
    while (c->outoff < c->outlen) {
        ssize_t w = write(c->io.fd, c->out + c->outoff, c->outlen - c->outoff);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return true;
        if (w <= 0) {
            hc_close(c);
            return false;
        }
        c->outoff += (size_t)w;
    }
    c->outoff = c->outlen = 0;
    return true;
}

int moat_httpd_push(void *h, const char *data, size_t len, size_t max_pending)
{
    struct hconn *c = h;
    if (c->io.fd < 0)
        return MOAT_ERR;
    if (c->outlen - c->outoff + len > max_pending) {
        hc_close(c);
        return MOAT_ERR;
    }
    if (c->outoff) { /* drop what was sent */
        memmove(c->out, c->out + c->outoff, c->outlen - c->outoff);
        c->outlen -= c->outoff;
        c->outoff = 0;
    }
    char *o = realloc(c->out, c->outlen + len);
    if (!o) {
        hc_close(c);
        return MOAT_ERR;
    }
    memcpy(o + c->outlen, data, len);
    c->out = o;
    c->outlen += len;
    return stream_flush(c) ? MOAT_OK : MOAT_ERR;
}

/* A stream's connection is ready: send what is queued; read and drop input to see EOF. */
static void stream_drive(struct hconn *c)
{
    if (!stream_flush(c))
        return;
    for (;;) {
        ssize_t r = read(c->io.fd, c->in, HTTPD_BUF);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return;
        if (r <= 0) {
            hc_close(c);
            return;
        }
    }
}

void *moat_httpd_later(struct moat_httpd_resp *resp)
{
    resp->later_ = true;
    return resp->conn_;
}

static void hc_drive(struct hconn *c);

void moat_httpd_finish(void *handle, struct moat_httpd_resp *resp)
{
    struct hconn *c = handle;
    c->later = false;
    queue_response(c, resp, c->later_head, c->later_keep);
    free(resp->body);
    resp->body = NULL;
    hc_drive(c);
}

static void hc_drive(struct hconn *c)
{
    for (;;) {
        if (c->stream) {
            stream_drive(c);
            return;
        }
        if (c->later)
            return; /* nothing to write yet, and the next request waits its turn */
        while (c->out && c->outoff < c->outlen) {
            ssize_t w = write(c->io.fd, c->out + c->outoff, c->outlen - c->outoff);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && errno == EAGAIN)
                return;
            if (w < 0) {
                hc_close(c);
                return;
            }
            c->outoff += (size_t)w;
        }
        if (c->out) {
            free(c->out);
            c->out = NULL;
            if (c->close_after) {
                shutdown(c->io.fd, SHUT_WR);
                hc_close(c);
                return;
            }
        }
        if (c->inlen && try_request(c))
            continue;
        if (c->inlen == HTTPD_BUF) {
            hc_close(c);
            return;
        }
        ssize_t r = read(c->io.fd, c->in + c->inlen, HTTPD_BUF - c->inlen);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN) {
            moat_timer_set(c->srv->loop, &c->timer, 30000);
            return;
        }
        if (r <= 0) {
            hc_close(c);
            return;
        }
        c->inlen += (size_t)r;
    }
}

static void hc_io(struct moat_loop *loop, struct moat_io *io, uint32_t ev)
{
    (void)loop;
    (void)ev;
    hc_drive(MOAT_CONTAINER_OF(io, struct hconn, io));
}

static void hc_timeout(struct moat_loop *loop, struct moat_timer *t)
{
    (void)loop;
    hc_close(MOAT_CONTAINER_OF(t, struct hconn, timer));
}

static void on_accept(struct moat_loop *loop, struct moat_io *io, uint32_t ev)
{
    struct moat_httpd *s = MOAT_CONTAINER_OF(io, struct moat_httpd, io);
    (void)ev;
    for (int i = 0; i < 16; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(io->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        struct hconn *c = calloc(1, sizeof *c);
        if (c)
            c->in = malloc(HTTPD_BUF);
        if (!c || !c->in) {
            if (c)
                free(c);
            close(fd);
            continue;
        }
        if (ss.ss_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, c->peer, sizeof c->peer);
        else if (ss.ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, c->peer, sizeof c->peer);
        c->io.fd = fd;
        c->io.cb = hc_io;
        c->defer.fn = hc_free;
        c->timer.cb = hc_timeout;
        c->srv = s;
        c->next = s->conns;
        if (s->conns)
            s->conns->prev = c;
        s->conns = c;
        moat_loop_add(loop, &c->io, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET);
        hc_drive(c);
    }
}

struct moat_httpd *moat_httpd_start(struct moat_loop *loop, const struct moat_addr *addr,
                                    moat_httpd_handler *h, void *ctx, char *err, size_t errlen)
{
    struct moat_httpd *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0 ||
        listen(fd, 128) < 0) {
        snprintf(err, errlen, "moat: cannot listen on %s: %s", addr->text, strerror(errno));
        if (fd >= 0)
            close(fd);
        free(s);
        return NULL;
    }
    s->io.fd = fd;
    s->io.cb = on_accept;
    s->loop = loop;
    s->h = h;
    s->ctx = ctx;
    moat_loop_add(loop, &s->io, EPOLLIN);
    return s;
}

void *moat_httpd_stop(struct moat_httpd *s)
{
    if (!s)
        return NULL;
    void *ctx = s->ctx;
    moat_loop_del(s->loop, &s->io);
    close(s->io.fd);
    while (s->conns)
        hc_close(s->conns);
    while (s->loop->defer_head) {
        struct moat_defer *d = s->loop->defer_head;
        s->loop->defer_head = d->next;
        d->fn(d);
    }
    free(s);
    return ctx;
}
