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
    const char *ctype;     /* default "application/json" */
    char *body;            /* malloc'd; freed by the server */
    size_t len;
    char extra[256];       /* extra header lines, each ending in CRLF */
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

/* Sets <resp> to a copy of <body> with <status> and <ctype>. */
void moat_httpd_set(struct moat_httpd_resp *resp, int status, const char *ctype,
                    const char *body, size_t len);
/* Sets <resp> to {"error": "<msg>"} with <status>. */
void moat_httpd_error(struct moat_httpd_resp *resp, int status, const char *msg);

#endif
