/* proxy-t.h: the types the proxy's files share: worker, client connection, exchange, upstream
 * connection and per-origin pool. Internal to src/proxy/. */
#ifndef MOAT_PROXY_PROXY_T_H
#define MOAT_PROXY_PROXY_T_H

#include <netinet/in.h>

#include "cache/store.h"
#include "config/config.h"
#include "core/buf.h"
#include "core/log.h"
#include "core/loop.h"
#include "http/h1.h"
#include "proxy/stats.h"

struct moat_conn;

/* Per-worker, per-origin-address pool of idle keep-alive upstream connections. Pools are
 * keyed by the origin's address text and outlive configuration snapshots, so a reload that
 * keeps an origin keeps its warm connections. */
struct moat_upool {
    struct moat_upool *next; /* worker's list */
    struct moat_addr addr;
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
    struct moat_alog alog;
    char *alog_dest;        /* what alog was opened with, to reopen on change */
    struct moat_timer tick; /* 100 ms: access log flush, config poll, drain checks */
    unsigned nconns;
    struct moat_conn *conns; /* all client connections (for drain) */
    bool draining;
    uint64_t drain_deadline;
    uint32_t bufsize;      /* heads: limits.header_bytes + room, 4 KiB pages */
    uint32_t body_bufsize; /* bodies larger than that: limits.body_buffer */
};

struct moat_listener {
    struct moat_io io;
    struct moat_worker *w;
};

/* How a body is framed on the way in and re-framed on the way out; one per direction. */
enum moat_flow_mode {
    FLOW_NONE = 0, /* no body */
    FLOW_CL,       /* Content-Length bytes */
    FLOW_CHUNKED,  /* chunked coding */
    FLOW_EOF,      /* until the peer closes (responses; tunnels) */
};

struct moat_flow {
    enum moat_flow_mode mode;
    bool out_chunked;           /* re-encode as chunked on the output side */
    bool pending_crlf;          /* out_chunked: the CRLF after the last data is owed */
    bool done;                  /* input framing complete */
    bool fin_queued;            /* output terminator queued (chunked "0\r\n\r\n", or
                                   "0\r\n" + trailers + "\r\n") */
    bool trailers;              /* FLOW_CHUNKED with dec.keep_trailers: in the trailer
                                   section, held in the input until it is whole */
    uint64_t remaining;         /* FLOW_CL */
    struct moat_h1_chunked dec; /* FLOW_CHUNKED */
    uint32_t span;              /* payload bytes at the input's rpos awaiting write */
    uint32_t skip_after;        /* framing bytes to consume after the span is written */
    uint64_t bytes;             /* payload bytes forwarded */
    uint64_t limit;             /* max payload (limits.body_bytes on requests), 0 = none */
    struct moat_conn *tap;      /* payload is also stored in this connection's cache
                                   object (the response of a cache miss) */
    uint32_t bigbuf;            /* a body larger than the head buffer: read it through a
                                   buffer of this size (limits.body_buffer), 0 = keep */
};

/* One end of a TCP connection as the body pump sees it: the socket, the bytes read from it
 * and not yet passed on, and what epoll told us (edge-triggered, so we remember). */
struct moat_side {
    struct moat_io io;
    struct moat_buf in;
    bool readable, writable;
    bool eof;  /* read returned 0 (or a timeout/error ended input) */
    bool hup;  /* epoll reported RDHUP/HUP: always read until EAGAIN */
    bool sink; /* no socket (a detached connection): what the pump would
                  write here is dropped, as if written at once */
    bool held; /* the last write went with MSG_MORE: the kernel may hold
                  a partial segment until more comes or it is pushed */
};

struct moat_upconn {
    struct moat_side s;
    struct moat_defer defer;
    struct moat_timer timer;
    struct moat_worker *w;
    struct moat_upool *pool;
    struct moat_conn *client; /* NULL while idle in the pool */
    struct moat_upconn *next_idle;
    bool connected;
    bool timed_out;
    unsigned requests; /* exchanges completed on this connection */
};

enum moat_cstate {
    C_HEAD,    /* reading / parsing a request head */
    C_PROXY,   /* exchange with an origin in progress */
    C_LOCAL,   /* writing a locally made response, then next request or close */
    C_TUNNEL,  /* upgraded: bytes both ways until either side closes */
    C_CACHE,   /* answering from a cache object (a hit, or collapsed onto a fetch) */
    C_CLOSING, /* flushing the last bytes, then a lingering close */
    C_LINGER,  /* write side shut; reading and dropping until EOF or 2 s */
};

/* The request/response exchange now on a client connection (one at a time; pipelined
 * requests wait in the input buffer until the previous response is written). */
struct moat_xchg {
    struct moat_wcfg *wcfg;
    struct moat_h1_req req;
    uint64_t t_start_us;
    uint64_t t_up_start_us, t_up_first_us;
    const struct moat_cfg_site *site;
    const struct moat_cfg_rule *rule; /* the site's cache rule that matched, or NULL */
    bool static_default;              /* no rule matched and the path is a static file type */
    unsigned pool_idx;
    const struct moat_cfg_origin *origin;
    struct moat_upool *upool;
    struct moat_upconn *u;
    struct moat_buf uhead; /* serialized request head (kept for a retry), then the
                              chunk framing of the request body */
    uint32_t uhead_sent;
    uint32_t uhead_len;
    bool uhead_done;
    struct moat_flow reqf, respf;
    int status;
    bool head_sent; /* response head queued to the client */
    bool resp_head_parsed;
    bool keepalive;    /* client connection may serve another request */
    bool client_close; /* the request itself asked to close the connection */
    bool upgrade;      /* request asked for an upgrade */
    bool is_head;
    bool expect100;
    bool retried;
    bool up_reusable;
    const char *err;        /* upstream error name for the log */
    uint64_t resp_bytes;    /* bytes written to the client for this exchange */
    uint32_t head_consumed; /* request head bytes still at the input's start */
    /* cache (src/proxy/cache.c). What the cache derived from the request (key, rule, the
     * request's Cache-Control, Accept-Encoding) is copied by moat_conn_spawn for a
     * background refresh: a new such field must be copied there too. */
    struct moat_cache_obj *cobj;   /* the object we fill (writer) or answer from (reader) */
    struct moat_cache_obj *cstale; /* a stale object kept for stale-if-error while refetching */
    struct moat_cache_cursor ccur;
    struct moat_cache_waiter cwait;
    struct moat_cache_cc creq; /* the request's Cache-Control */
    struct moat_str cspan;     /* body bytes of cobj awaiting write */
    const char *cstatus;       /* Cache-Status parameters after "moat; " (NULL: none) */
    int64_t creq_time;
    uint16_t ckeylen;       /* key in c->ckey */
    uint16_t ckeyurl;       /* its URL part, before the key.headers / key.cookies parts */
    bool cwriter;           /* we fill cobj from the origin's response */
    bool has_auth;          /* the request carried Authorization */
    bool cclaimed;          /* we hold cstale's refresh claim (stale-while-revalidate) */
    bool crevalidated;      /* the origin answered 304: answer from the cache */
    bool cinvalidate;       /* unsafe method: invalidate the key on a non-error answer */
    bool cvariant;          /* c->ckey is a Vary variant's key (under an index) */
    bool cae_norm;          /* cache.normalize_accept_encoding applies: the origin
                               is sent, and Vary keys use, moat_cache_ae_value(cae) */
    uint8_t cae;            /* MOAT_AE_* codings the client accepts */
    struct moat_hdr *vsnap; /* a primary key's writer: copy of the request's fields */
    size_t vsnap_n;
    uint64_t crange_left;                  /* C_CACHE: body bytes still to send (a Range), or
                                              UINT64_MAX for the whole body */
    struct moat_str head_consumed_range;   /* Range / If-Range of a request answered from */
    struct moat_str head_consumed_ifrange; /* the cache (point into the request head) */
    char crange_hdr[64];                   /* Content-Range value of a 206 or 416 */
    bool chead_done;                       /* C_CACHE: response head queued */
    bool cstale_serving;                   /* C_CACHE: serving a stale object for stale-if-error */
    char logf[384]; /* method \0 host \0 path \0, copied for the access log */
    uint16_t log_method, log_host, log_path;
};

struct moat_conn {
    struct moat_side s;
    struct moat_defer defer;
    struct moat_timer timer;
    struct moat_worker *w;
    struct moat_conn *prev, *next; /* worker's list */
    struct moat_buf out;           /* heads, chunk framing and local responses to write */
    struct moat_hdr *hdrs;         /* header array (limits.header_count), requests and
                                      responses in turn */
    size_t hdrs_cap;
    enum moat_cstate state;
    bool in_drive; /* re-entrancy guard */
    bool drive_again;
    unsigned nreq;
    _Atomic bool wake_pending; /* a cache wake-up is posted to this worker's loop */
    bool zombie;               /* closed while a wake-up was posted: freed by it */
    bool closed;               /* conn_close ran; freed after the loop's batch */
    bool detached;             /* no client socket (s.sink): a background refresh, or a
                                  cache fill whose client left and that goes on for the
                                  requests waiting on the object; ends with its exchange */
    bool bg;                   /* made by moat_conn_spawn (never had a client socket) */
    char ckey[1024];           /* cache key of the current request */
    uint8_t peer[16];          /* v4-mapped when IPv4 */
    char peer_text[48];
    uint8_t peer_len; /* strlen(peer_text) */
    struct moat_xchg x;
};

/* conn.c */
void moat_conn_accept(struct moat_worker *w, int fd, const struct sockaddr_storage *ss);
void moat_conn_drive(struct moat_conn *c);
/* Closes <c> if it is between requests (drain). */
void moat_conn_close_idle(struct moat_conn *c);
/* Closes <c> whatever it is doing (drain deadline, shutdown). */
void moat_conn_close_any(struct moat_conn *c);
/* worker.c: the worker's view of the current configuration, counted per request. */
struct moat_wcfg *moat_worker_wcfg_get(struct moat_worker *w);
void moat_worker_wcfg_put(struct moat_worker *w, struct moat_wcfg *wc);

/* upstream.c */
/* Gets a connection to <pool>'s origin for <c>: a pooled idle one, or a new connect in
 * progress. NULL with errno on immediate failure. */
struct moat_upconn *moat_up_get(struct moat_worker *w, struct moat_upool *pool, struct moat_conn *c,
                                bool fresh, bool *reused);
/* Gives <u> back to its pool if it may be reused, else closes it. */
void moat_up_release(struct moat_upconn *u, bool reusable, uint64_t keepalive_ms,
                     unsigned keepalive_max);
void moat_up_close(struct moat_upconn *u);
struct moat_upool *moat_up_pool_find(struct moat_worker *w, const struct moat_addr *addr);

/* conn.c, for cache.c */
void moat_conn_frame_chunk(struct moat_flow *f, struct moat_buf *out, uint64_t n);
/* Forwards the current request to the origin chosen by the balance phase. */
int moat_conn_forward(struct moat_conn *c);
int moat_conn_ensure_buf(struct moat_buf *b, uint32_t size);
void moat_conn_free_now(struct moat_conn *c);
/* Makes a detached connection on <c>'s worker carrying a copy of <c>'s current request head
 * (parsed again, same site and rule, same cache key) for a background fetch: the caller sets
 * up its cache state and calls moat_conn_spawn_start. The new connection
 * has no client: what it would answer is dropped, and it frees itself when its exchange
 * ends. NULL when <c>'s request has a body or memory runs out. */
struct moat_conn *moat_conn_spawn(struct moat_conn *c);
/* Starts <b> from moat_conn_spawn toward the origin (<go>), or drops it unstarted. */
void moat_conn_spawn_start(struct moat_conn *b, bool go);

/* cache.c: the cache phase and the cache's side of the exchange */
/* The cache phase: MOAT_DECLINED (go on to the origin, maybe as the writer of c->x.cobj),
 * or MOAT_DONE (c answers from the cache: state C_CACHE or a local response). */
int moat_pcache_request(struct moat_conn *c);
/* The origin's response head <r> arrived for a writer: store it or give the object up.
 * Returns true when the body must be tapped into the object. */
void moat_pcache_response(struct moat_conn *c, const struct moat_h1_resp *r);
/* After moat_pcache_response: true when the origin's 304 refreshed the stale object and the
 * client is to be answered from the cache (the upstream exchange is over). */
static inline bool moat_pcache_revalidated(const struct moat_conn *c);
/* An unsafe request got a non-error answer <r>: invalidate what it may have changed. */
void moat_pcache_invalidate(struct moat_conn *c, const struct moat_h1_resp *r);
/* Appends origin body bytes <p,n> (n may be 0) to the object being written; completes the
 * object once the response body is done (x->respf.done). */
void moat_pcache_tap(struct moat_conn *c, const char *p, uint32_t n);
/* Ends the cache's part of the exchange: complete (ok) or abort the written object, drop
 * every reference and subscription. */
void moat_pcache_end(struct moat_conn *c, bool ok);
/* The origin failed (before a response head reached the client): if a stale object may be
 * served instead (stale-if-error), switch to serving it and return true. */
bool moat_pcache_stale_on_error(struct moat_conn *c);
/* C_CACHE: writes the cached response. MOAT_OK/MOAT_AGAIN/MOAT_DONE like the other states. */
int moat_pcache_serve(struct moat_conn *c);
/* Is <name> a field the cache consumes that the client must not see? */
bool moat_pcache_strip(const struct moat_conn *c, struct moat_str name);

static inline bool moat_pcache_revalidated(const struct moat_conn *c)
{
    return c->x.crevalidated;
}
/* Starts answering from c->x.cobj after a revalidation (state C_CACHE). */
void moat_pcache_serve_revalidated(struct moat_conn *c);

/* headers.c */
/* Copies the lines of trailer <section> (field lines each ending in CRLF, as
 * moat_h1_chunked_trailers hands them out) to <dst>, at most <room> bytes, leaving out the
 * fields a forwarded trailer must not carry (framing, hop-by-hop, before-the-content fields:
 * the list is trailer_deny[] in headers.c) and any line that does not fit. Returns the bytes
 * written. */
size_t moat_fwd_trailers(struct moat_str section, char *dst, size_t room);
/* Writes the request head for the origin into <out>. MOAT_OK or MOAT_ERR (no room). */
int moat_fwd_request_head(struct moat_conn *c, struct moat_buf *out);
/* Writes the response head for the client into <out>. MOAT_OK or MOAT_ERR (no room). */
int moat_fwd_response_head(struct moat_conn *c, const struct moat_h1_resp *r, struct moat_buf *out);

#endif
