/* proxy-t.h: the types the proxy's files share: worker, listener, HTTP/1 client connection,
 * upstream connection and per-origin pool. Internal to src/proxy/. The request is req.h's. */
#ifndef MOAT_PROXY_PROXY_T_H
#define MOAT_PROXY_PROXY_T_H

#include <netinet/in.h>

#include "cache/store.h"
#include "config/config.h"
#include "core/buf.h"
#include "core/log.h"
#include "core/loop.h"
#include "http/h1.h"
#include "proxy/dashrec.h"
#include "proxy/flow.h"
#include "proxy/stats.h"

struct moat_req;

/* Per-worker, per-origin-address pool of idle keep-alive upstream connections. Pools are
 * keyed by the origin's address text and outlive configuration snapshots, so a reload that
 * keeps an origin keeps its warm connections. */
struct moat_upool {
    struct moat_upool *next; /* worker's list */
    struct moat_addr addr;
    bool tls;                 /* its connections speak TLS */
    uint64_t tlskey;          /* how they were set up (moat_up_tls_key): pools are keyed by
                                 address and this, so a connection verified one way never
                                 serves a pool that asks for another, and a reload that
                                 changes a pool's tls starts afresh */
    struct moat_upconn *idle; /* LIFO: the most recently used is warmest */
    unsigned nidle;
};

/* A configuration snapshot as one worker uses it: the snapshot plus worker-local maps (origin
 * -> upool, round-robin positions). Counted by the worker's own requests without atomics. */
struct moat_wcfg {
    struct moat_config *cfg;
    unsigned users;            /* requests holding it + 1 while it is the worker's current */
    struct moat_upool ***omap; /* [pool][origin] */
    unsigned *rr;              /* [pool] round-robin position */
    unsigned *wsum;            /* [pool] total weight */
    const struct moat_cfg_site *only_site; /* the one site, when it is just "*" */
};

struct moat_worker {
    unsigned id;
    pthread_t thread;
    struct moat_loop loop;
    struct moat_listener *listeners;
    size_t nlisteners;
    struct moat_wcfg *wcfg; /* current */
    uint64_t gen;
    struct moat_upool *upools;
    struct moat_stats stats;
    struct moat_dashrec dash; /* the live dashboard's counters and sketches */
    struct moat_alog alog;
    char *alog_dest;        /* what alog was opened with, to reopen on change */
    struct moat_timer tick; /* 100 ms: access log flush, config poll, drain checks */
    unsigned nconns;
    struct moat_h1conn *conns; /* all client connections (for drain) */
    struct moat_h2conn *h2conns; /* the HTTP/2 ones (h2conn.c), counted in nconns too */
    struct moat_req *orphans;  /* requests with no client (background refreshes, cache fills
                                  whose client left): they end on their own */
    unsigned norphans;
    bool draining;
    uint64_t drain_deadline;
    struct moat_hdr *rhdrs; /* scratch fields for parsing origins' response heads */
    size_t rhdrs_cap;
    uint32_t bufsize;      /* heads: limits.header_bytes + room, 4 KiB pages */
    uint32_t body_bufsize; /* bodies larger than that: limits.body_buffer */
};

struct moat_listener {
    struct moat_io io;
    struct moat_worker *w;
    bool tls;
    bool h2c;      /* plain, and HTTP/2 with prior knowledge is taken too */
    uint16_t port; /* the port it listens on (https.redirect sends clients to a TLS one) */
};

struct moat_upconn {
    struct moat_side s;
    struct moat_defer defer;
    struct moat_timer timer;
    struct moat_worker *w;
    struct moat_upool *pool;
    struct moat_req *req; /* the request it serves; NULL while idle in the pool */
    struct moat_upconn *next_idle;
    bool connected;
    bool handshaken; /* TLS: the handshake is done (always true for TCP) */
    bool timed_out;
    unsigned requests; /* exchanges completed on this connection */
};

/* The HTTP/1 server side: a client connection carrying one request at a time (pipelined
 * requests wait in the input buffer until the previous response is written). Its states: */
enum moat_h1state {
    H_HANDSHAKE, /* TLS handshake in progress */
    H_HEAD,      /* reading / parsing a request head */
    H_REQ,       /* a request is in progress (c->req) */
    H_CLOSING,   /* flushing the last bytes, then a lingering close */
    H_LINGER,    /* write side shut; reading and dropping until EOF or 2 s */
};

struct moat_h1conn {
    struct moat_side s;
    struct moat_defer defer;
    struct moat_timer timer;
    struct moat_worker *w;
    struct moat_h1conn *prev, *next; /* worker's list */
    struct moat_buf out;             /* heads, chunk framing, interim answers to write */
    struct moat_hdr *hdrs;           /* header array (limits.header_count) for parsing */
    size_t hdrs_cap;
    enum moat_h1state state;
    struct moat_req *req; /* the request in progress (H_REQ) */
    bool in_drive;        /* re-entrancy guard */
    bool drive_again;
    bool closed;       /* close ran; freed after the loop's batch */
    bool keepalive;    /* may carry another request after this one */
    bool client_close; /* the request itself asked to close the connection */
    bool tls;          /* accepted on a TLS listener */
    bool h2c;          /* accepted on a listener with h2c: the HTTP/2 preface is looked for */
    bool handed_off;   /* the socket went to an HTTP/2 connection (h2conn.c): not closed here */
    bool aborted;      /* the response was cut: close at once when the request ends */
    bool werr;         /* writing to the client failed */
    bool hard_close;   /* H_CLOSING: close without lingering */
    bool quiet_close;  /* H_CLOSING: the client sent nothing more: no lingering needed */
    /* the current response, as sent (send_head) */
    bool head_queued;
    bool out_chunked; /* the body is re-framed chunked */
    bool out_none;    /* no body goes out (HEAD, 204, 304): data is dropped */
    bool out_raw;     /* upgraded: bytes go as they come */
    bool close_after; /* the framing (or Connection: close) ends the connection */
    struct moat_chunk_out co;
    uint64_t chunk_left; /* bytes of the current chunk not yet written */
    /* the current request's body, as it comes from the client */
    struct moat_flow in;
    bool expect100; /* a 100 Continue is owed before the body is read */
    bool in_raw;    /* upgraded: the client's bytes are the "body" until it closes */
    unsigned nreq;
    uint8_t peer[16]; /* v4-mapped when IPv4 */
    char peer_text[48];
    uint8_t peer_len; /* strlen(peer_text) */
    bool sh_counted;  /* counted by the shield's connections.per_ip: uncount at close */
};

/* h1conn.c */
void moat_h1_accept(struct moat_worker *w, int fd, const struct sockaddr_storage *ss, bool tls,
                    bool h2c);
/* Closes <c> if it is between requests (drain). */
void moat_h1_close_idle(struct moat_h1conn *c);
/* Closes <c> whatever it is doing (drain deadline, shutdown). */
void moat_h1_close_any(struct moat_h1conn *c);
/* limits.connections reached: closes up to <n> connections waiting for a request head, the
 * oldest first; returns how many. */
unsigned moat_h1_reclaim(struct moat_worker *w, unsigned n);

/* h2conn.c: the HTTP/2 server side. */
/* Takes <c>'s socket (TLS with ALPN h2, or h2c whose input starts with the preface) and the
 * bytes it read: an HTTP/2 connection goes on with them. <c> is closed by its caller. */
void moat_h2_takeover(struct moat_h1conn *c);
/* Drain: GOAWAY to every HTTP/2 connection (once); <late>: close them whatever they do. */
void moat_h2_drain(struct moat_worker *w, bool late);

/* worker.c: the worker's view of the current configuration, counted per request. */
struct moat_wcfg *moat_worker_wcfg_get(struct moat_worker *w);
void moat_worker_wcfg_put(struct moat_worker *w, struct moat_wcfg *wc);

/* upstream.c */
/* Gets a connection to <pool>'s origin for <r>: a pooled idle one, or a new connect in
 * progress (TLS when <pcfg> says so). NULL with errno on immediate failure. */
struct moat_upconn *moat_up_get(struct moat_worker *w, struct moat_upool *pool,
                                const struct moat_cfg_pool *pcfg, const struct moat_cfg_origin *o,
                                struct moat_req *r, bool fresh, bool *reused);
/* Gives <u> back to its pool if it may be reused, else closes it. */
void moat_up_release(struct moat_upconn *u, bool reusable, uint64_t keepalive_ms,
                     unsigned keepalive_max);
void moat_up_close(struct moat_upconn *u);
/* The pool of idle connections to <addr> set up as <tlskey> says (moat_up_tls_key; 0 for
 * plain TCP), made on first use. NULL when memory runs out. */
struct moat_upool *moat_up_pool_find(struct moat_worker *w, const struct moat_addr *addr,
                                     uint64_t tlskey);
uint64_t moat_up_tls_key(const struct moat_cfg_pool *pool, const struct moat_cfg_origin *o);

#endif
