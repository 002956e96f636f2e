/* httpd.h: a small HTTP/1.1 server for the control plane (admin API, demo origin) on the main
 * thread's loop. Not for traffic: one buffer per connection, whole requests, whole responses. */
#ifndef MOAT_ADMIN_HTTPD_H
#define MOAT_ADMIN_HTTPD_H

#include "config/config.h"
#include "core/loop.h"
#include "http/h1.h"

struct moat_httpd_req {
    const struct moat_h1_req *h1;
    struct moat_str body;
    const char *peer; /* client address text */
};

struct moat_httpd_resp {
    int status;
    const char *ctype; /* default "application/json" */
    char *body;        /* malloc'd; freed by the server */
    size_t len;
    char extra[256]; /* extra header lines, each ending in CRLF */
    void *conn_;     /* internal: the connection asking */
    bool later_;     /* internal: moat_httpd_later was called */
};

/* Fills <resp> for <req>. Runs on the control loop's thread. */
typedef void moat_httpd_handler(void *ctx, const struct moat_httpd_req *req,
                                struct moat_httpd_resp *resp);

struct moat_httpd;

/* Listens on <addr> and serves with <h>. NULL with <err> on failure. */
struct moat_httpd *moat_httpd_start(struct moat_loop *loop, const struct moat_addr *addr,
                                    moat_httpd_handler *h, void *ctx, char *err, size_t errlen);
/* Stops listening and closes every connection. Returns the <ctx> given to start, for the
 * owner to free. */
void *moat_httpd_stop(struct moat_httpd *s);

/* Called by a handler that answers later (work that must not block the control loop): the
 * handler leaves <resp> empty and returns; the connection reads nothing more until
 * moat_httpd_finish(<handle>, ...) queues the answer. The handle stays valid until then, or
 * until moat_httpd_stop (whose owner must then forget it). */
void *moat_httpd_later(struct moat_httpd_resp *resp);
/* Answers the request moat_httpd_later put off with <resp> (its body is freed here). */
void moat_httpd_finish(void *handle, struct moat_httpd_resp *resp);

/* Server-sent events (or any stream that ends with the connection). */
typedef void moat_httpd_closed(void *arg);
/* Called by a handler that turns the connection into a stream: the head (200, <resp>'s ctype
 * and extra lines, no length, Connection: close) and <resp>'s body are sent at once; later
 * data goes out with moat_httpd_push. When the client leaves (or the server stops), <cb>
 * gets <arg>, and the handle is dead from then on. Returns the stream's handle. */
void *moat_httpd_stream(struct moat_httpd_resp *resp, moat_httpd_closed *cb, void *arg);
/* Queues <len> bytes on stream <h>. MOAT_OK, or MOAT_ERR when the client is more than
 * <max_pending> bytes behind or the write failed: the stream is then closed (its callback
 * runs before this returns). */
int moat_httpd_push(void *h, const char *data, size_t len, size_t max_pending);

/* Sets <resp> to a copy of <body> with <status> and <ctype>. */
void moat_httpd_set(struct moat_httpd_resp *resp, int status, const char *ctype, const char *body,
                    size_t len);
/* Sets <resp> to {"error": "<msg>"} with <status>. */
void moat_httpd_error(struct moat_httpd_resp *resp, int status, const char *msg);

#endif
