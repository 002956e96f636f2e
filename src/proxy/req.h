/* req.h: a request that stands on its own, and the one downstream interface every response
 * goes through.
 *
 * A request (struct moat_req) is made by a protocol's connection (HTTP/1 today, one at a
 * time; HTTP/2 next, many at once) and owns what it needs: its head's bytes and fields, the
 * site and rule that matched, its cache context, its origin connection, its timings and its
 * error. Phases, cache waiters, background refreshes and origin connections point at the
 * request, never at a connection. The request answers through its downstream (struct
 * moat_ds): send a head, send body data, finish, abort, read the request body. HTTP/1
 * implements it over a client connection (h1conn.c); a request nobody waits for (a
 * background refresh, a cache fill whose client left) has the sink, which drops what it is
 * given. */
#ifndef MOAT_PROXY_REQ_H
#define MOAT_PROXY_REQ_H

#include "cache/policy.h"
#include "cache/store.h"
#include "lb/lb-t.h"
#include "proxy/errors.h"
#include "proxy/proxy-t.h"

struct moat_req;
struct moat_resp;

/* The downstream interface. A call that cannot go on now returns 0 / MOAT_AGAIN and the
 * downstream calls moat_req_drive(<r>) once it can (the client's socket became writable or
 * readable); a call that returns MOAT_ERR (the client is gone) never calls back. */
struct moat_ds {
    const char *name; /* "h1", "sink" (h2 next) */
    /* Queues the response head <resp>; nothing is written before the first send_data or
     * finish, so a head and a small body leave together. The protocol's encoder adds the
     * framing. MOAT_OK, or MOAT_ERR when it does not fit (nothing was queued). */
    int (*send_head)(struct moat_req *r, const struct moat_resp *resp);
    /* Queues an interim (1xx, not 101) head. MOAT_OK or MOAT_ERR (ignored: it is a hint). */
    int (*send_interim)(struct moat_req *r, const struct moat_resp *resp);
    /* Writes body bytes: how many it took (0 when blocked), or MOAT_ERR. <more>: more
     * follows at once (the transport may hold a partial segment). */
    ssize_t (*send_data)(struct moat_req *r, const char *p, size_t n, bool more);
    /* Optional (NULL: send_data is used): body bytes that live in the cache object <obj>,
     * valid while a reference on it is held. The downstream may take its own reference and
     * send them later instead of copying them (HTTP/2: a stream waiting for its client's
     * window holds a reference, not a copy). Returns as send_data. */
    ssize_t (*send_stored)(struct moat_req *r, struct moat_cache_obj *obj, const char *p, size_t n);
    /* Pushes out what a send_data with <more> may have left held (the source ran dry). */
    void (*push)(struct moat_req *r);
    /* Ends the body with the trailer section <trailers> (field lines, each with CRLF; may
     * be empty; a protocol that cannot carry them drops them) and writes everything queued:
     * MOAT_OK when all is out, MOAT_AGAIN (call it again when driven), MOAT_ERR. */
    int (*finish)(struct moat_req *r, struct moat_str trailers);
    /* Cuts the response short (HTTP/1: closes the connection). */
    void (*abort)(struct moat_req *r);
    /* The request body, zero-copy: MOAT_OK with the next payload bytes in *<span> (valid
     * until body_consume), MOAT_AGAIN, MOAT_DONE (complete: *<span> is the trailer section,
     * maybe empty, valid until body_consume(0)), or MOAT_ERR with r->body_err set. */
    int (*body)(struct moat_req *r, struct moat_str *span);
    /* <n> bytes of the span body() gave were used. After MOAT_DONE, body_consume(0) drops
     * the trailer section. */
    void (*body_consume)(struct moat_req *r, size_t n);
    /* The request is over and logged; the downstream lets go of it (HTTP/1: next request or
     * close). <r> is freed after the call. */
    void (*done)(struct moat_req *r);
    /* The request goes on without the downstream (a cache fill whose client is gone): let go
     * of it and close. */
    void (*detach)(struct moat_req *r);
};

/* The sink: takes every byte, has no request body, ends nothing. */
extern const struct moat_ds moat_ds_sink;

/* Why reading the request body failed (r->body_err). */
enum moat_body_err { BODY_OK = 0, BODY_TRUNCATED, BODY_FRAMING, BODY_LIMIT };

#define MOAT_LEN_UNKNOWN UINT64_MAX

/* A response head as moat will send it, protocol-neutral (one model for proxied, cached,
 * local and interim answers). The encoders (moat_resp_h1 in respond.c; HTTP/2 next) turn it
 * into bytes; moat_resp_keep and moat_resp_extras decide, once, what of <fields> goes out
 * and what moat adds (Via, Date, Age, Cache-Status, browser_ttl, HSTS). */
struct moat_resp {
    int status;
    struct moat_str reason;        /* as the origin sent it; empty: the standard phrase */
    const struct moat_hdr *fields; /* end-to-end fields (hop-by-hop ones are filtered out by
                                      moat_resp_keep) */
    size_t nfields;
    bool fields_h1;           /* <fields> are consecutive "name: value CRLF" lines in memory, so
                                 kept runs are copied in one go */
    struct moat_str block;    /* or: a stored head block, lines already clean (cached answers) */
    bool trailers_ok;         /* the body may end with trailers the client gets: keep Trailer */
    bool conn_named;          /* the origin's Connection named other fields (drop them too) */
    bool origin;              /* came from the origin or the cache: filter its fields */
    bool no_body;             /* HEAD, 204, 304: no body follows, whatever <length> says */
    bool keep_cl;             /* no_body: <length> is the representation's (HEAD, 304) */
    bool upgrade;             /* 101: the connection switches protocols (Upgrade in fields) */
    uint64_t length;          /* body length, MOAT_LEN_UNKNOWN when it streams to the end */
    int via_minor;            /* Via: 1.<via_minor> moat; -1: no Via (moat's own answers) */
    int64_t age;              /* Age: (cached answers), -1: none */
    const char *cache_status; /* Cache-Status: moat; <this>, NULL: none */
    int64_t cache_ttl;        /* with cache_status "hit": "; ttl=N" */
    struct moat_str content_range; /* Content-Range value (206, 416), empty: none */
    struct moat_str ctype;         /* Content-Type of moat's own answers, empty: none */
};

/* The cache's part of a request (src/proxy/cache.c). What the cache derived from the
 * request (key, rule, the request's Cache-Control, Accept-Encoding) is copied by
 * moat_req_spawn for a background refresh: a new such field must be copied there too. */
struct moat_rcache {
    struct moat_cache_obj *obj;   /* the object we fill (writer) or answer from (reader) */
    struct moat_cache_obj *stale; /* a stale object kept for stale-if-error while refetching */
    struct moat_cache_cursor cur;
    struct moat_cache_waiter wait;
    struct moat_cache_cc creq; /* the request's Cache-Control */
    struct moat_str span;      /* body bytes of obj awaiting write */
    const char *status;        /* Cache-Status parameters after "moat; " (NULL: none) */
    int64_t req_time;
    uint64_t range_left; /* serving: body bytes still to send (a Range), or UINT64_MAX */
    struct moat_str range, if_range; /* the request's Range / If-Range */
    char range_hdr[64];              /* Content-Range value of a 206 or 416 */
    uint16_t keylen;                 /* key in key[] */
    uint16_t keyurl;                 /* its URL part, before the key.headers / key.cookies parts */
    bool writer;                     /* we fill obj from the origin's response */
    bool has_auth;                   /* the request carried Authorization */
    bool claimed;                    /* we hold stale's refresh claim (stale-while-revalidate) */
    bool revalidated;                /* the origin answered 304: answer from the cache */
    bool invalidate;                 /* unsafe method: invalidate the key on a non-error answer */
    bool variant;                    /* key is a Vary variant's key (under an index) */
    bool ae_norm;                    /* cache.normalize_accept_encoding applies: the origin is
                                        sent, and Vary keys use, moat_cache_ae_value(ae) */
    uint8_t ae;                      /* MOAT_AE_* codings the client accepts */
    bool head_done;                  /* serving: response head queued */
    bool body_done;                  /* serving: the whole body was handed to the downstream */
    bool stale_serving;              /* serving a stale object for stale-if-error */
    bool fresh_lookup;               /* the request's own conditionals and Vary fields apply
                                        (false once it went to the origin as the writer) */
    bool tap;                        /* the response body is appended to obj as it passes */
    char key[1024];
};

/* Where a request is. */
enum moat_rstate {
    R_NEW,    /* made, phases not run yet */
    R_PROXY,  /* exchange with an origin (exchange.c) */
    R_TUNNEL, /* upgraded: bytes both ways until both ends are done */
    R_CACHE,  /* answering from a cache object (a hit, or collapsed onto a fetch) */
    R_LOCAL,  /* writing an answer moat made itself */
    R_DONE,   /* over: logged, the downstream let go; freed after the loop's batch */
};

struct moat_req {
    struct moat_worker *w;
    struct moat_wcfg *wcfg; /* the configuration it started with */
    const struct moat_ds *ds;
    void *dsc; /* the downstream's own state (HTTP/1: its connection) */
    enum moat_rstate state;

    /* --- the request, owned (hbuf holds the bytes every moat_str below points into) */
    enum moat_method meth;
    struct moat_str method;
    struct moat_str scheme;    /* "http" or "https" */
    struct moat_str authority; /* Host (HTTP/1) or :authority (HTTP/2) */
    struct moat_str target;    /* the request-target as sent (HTTP/1) or :path (HTTP/2) */
    struct moat_str path;      /* origin-form path */
    struct moat_str query;     /* after '?', without it */
    int minor;                 /* HTTP/1.<minor> of the client (1 for HTTP/2) */
    unsigned flags;            /* MOAT_H1_F_* request facts the parser derived */
    struct moat_hdr *hdrs;     /* the fields, in hbuf */
    size_t nhdrs;
    bool hdrs_h1;      /* fields are HTTP/1 lines one after the other (runs) */
    bool tls;          /* came over TLS */
    uint64_t body_len; /* request body length; 0 none; MOAT_LEN_UNKNOWN chunked */
    struct moat_buf hbuf;

    /* --- the client, copied from its connection */
    uint8_t peer[16]; /* v4-mapped when IPv4 */
    char peer_text[48];
    uint8_t peer_len;

    /* --- routing */
    const struct moat_cfg_site *site;
    const struct moat_cfg_rule *rule; /* the site's cache rule that matched, or NULL */
    bool static_default;              /* no rule matched and the path is a static file type */
    unsigned pool_idx;
    const struct moat_cfg_origin *origin;
    struct moat_upool *upool;

    /* --- the exchange with the origin (exchange.c) */
    struct moat_upconn *u;
    struct moat_buf uhead; /* serialized request head (kept for a retry), then the chunk
                              framing of the request body */
    uint32_t uhead_sent;
    uint32_t uhead_len;
    bool uhead_done;
    bool upgrade; /* the request asks for an upgrade moat forwards: */
    uint8_t nup;
    struct moat_str up[4]; /* its Upgrade tokens the site allows, the only ones forwarded */
    bool is_head;
    bool retried;
    bool up_reusable;
    bool resp_head_parsed;
    bool head_sent;             /* a response head went to the downstream */
    bool close;                 /* the connection must not carry another request after this one */
    bool body_done;             /* the request body was read whole (or there was none) */
    bool fin_done;              /* the downstream's finish returned MOAT_OK */
    bool up_wr_done;            /* tunnel: the origin's write side is shut */
    bool bg;                    /* a background refresh (moat_req_spawn) */
    bool aborted;               /* the response was cut (ds->abort): the request ends */
    struct moat_flow respf;     /* the response body from the origin */
    struct moat_chunk_out reqo; /* the request body to the origin (re-chunked) */
    struct moat_str bspan;      /* request body bytes from body() not yet written */
    enum moat_body_err body_err;
    struct moat_str rspan;    /* response body bytes not yet taken by the downstream */
    bool resp_ended;          /* the response body is complete (finish is next) */
    struct moat_str trailers; /* a response trailer section to finish with */

    /* --- the answer */
    int status;
    enum moat_xerr xerr;   /* why the exchange failed, or NONE */
    enum moat_h1_err perr; /* why the request head was refused, or OK */
    uint64_t resp_bytes;   /* bytes written to the client for this request */
    uint64_t req_bytes;    /* request body bytes read */
    uint64_t t_start_us, t_up_start_us, t_up_first_us;
    struct moat_buf lbody; /* the body of moat's own answer (R_LOCAL) */
    uint32_t lbody_sent;

    /* --- the shield (src/shield/) */
    uint64_t sh_key; /* count: origin: the bucket charged when the request goes to the origin */
    uint8_t sh_rule; /* ...and its rate_limits index + 1; 0: none */

    /* --- the cache */
    struct moat_rcache c;

    /* --- life */
    struct moat_timer timer; /* cache waits (R_CACHE) */
    struct moat_defer defer;
    struct moat_req *onext, *oprev; /* the worker's orphans: requests with the sink */
    bool in_drive, drive_again;
    _Atomic bool wake_pending; /* a cache wake-up is posted to this worker's loop */
    bool zombie;               /* ended while a wake-up was posted: freed by it */

    /* --- the load balancer's part (src/lb/): the origin's in-flight slot, origins tried,
     * its place in a queue, the affinity cookie to set */
    struct moat_lbreq lb;
};

/* --- life (req.c) -------------------------------------------------------------------------- */

/* A new request on worker <w> answering through <ds>/<dsc>, holding <w>'s current
 * configuration. NULL when memory runs out. */
struct moat_req *moat_req_new(struct moat_worker *w, const struct moat_ds *ds, void *dsc);
/* Runs the phases for the request just made and goes on: to the origin, to the cache or to a
 * local answer. Drives it as far as it goes without waiting. */
void moat_req_start(struct moat_req *r);
/* Moves <r> on after a change (a socket became ready, a cache object changed, a timer). */
void moat_req_drive(struct moat_req *r);
/* The client is gone (its connection closed): the request ends, logged as 499 when nothing
 * was answered, unless it is a cache fill that goes on without it (then it becomes an
 * orphan with the sink). After the call <r> belongs to no downstream. */
void moat_req_client_gone(struct moat_req *r);
/* The downstream failed to take the response (a write error): a cache fill goes on without
 * it, as an orphan with the sink (true; the downstream's detach was called); otherwise false
 * and the caller ends the request. */
bool moat_req_detach(struct moat_req *r);
/* Ends <r> now: logs it and lets everything go (shutdown). */
void moat_req_abort(struct moat_req *r);
/* Frees a request whose end came while a cache wake-up was posted to it (cache.c). */
void moat_req_free_zombie(struct moat_req *r);
/* Frees this thread's recycled requests (at thread exit). */
void moat_req_thread_cleanup(void);

/* Answers <r> with a response moat makes itself: <status>, Content-Type <ctype> (NULL:
 * text/plain), the extra fields <extra> (Set-Cookie, Retry-After, Location, ...), and
 * <body> (copied). Nothing of the request body is read after it. */
void moat_req_respond(struct moat_req *r, int status, const char *ctype,
                      const struct moat_hdr *extra, size_t nextra, struct moat_str body);
/* The common case: text/plain <body>. */
void moat_local_response(struct moat_req *r, int status, const char *body);

/* A copy of <r> (a request without a body) for a background fetch: same head, site, rule and
 * cache key, answering nobody (the sink). The caller sets up its cache state and calls
 * moat_req_spawn_start. NULL when <r> has a body or memory runs out. */
struct moat_req *moat_req_spawn(struct moat_req *r);
/* Starts <b> from moat_req_spawn toward the origin (<go>), or drops it unstarted. */
void moat_req_spawn_start(struct moat_req *b, bool go);

/* --- the exchange with the origin (exchange.c) ------------------------------------------- */

/* Sends <r> to the origin the balance phase chose (running it if none is chosen yet). */
void moat_xchg_forward(struct moat_req *r);
/* R_PROXY / R_TUNNEL: moves the exchange on. MOAT_OK (progress; call again), MOAT_AGAIN
 * (waiting), MOAT_DONE (the request is over). */
int moat_xchg_drive(struct moat_req *r);
/* Lets the origin connection go (back to its pool when reusable). */
void moat_xchg_release(struct moat_req *r);

/* --- responses (respond.c) ---------------------------------------------------------------- */

/* Should the field <h> of <resp> go to the client? Drops hop-by-hop and framing fields, the
 * fields the origin's Connection names, the cache's own fields, and Cache-Control when the
 * rule's browser_ttl replaces it. <had_date> is set when <h> is a Date field. */
bool moat_resp_keep(const struct moat_req *r, const struct moat_resp *resp,
                    const struct moat_hdr *h, bool *had_date);
/* The fields moat adds to <resp> (Cache-Control for browser_ttl, Age, Cache-Status, Via, Date
 * when none was sent, Strict-Transport-Security, Content-Type and Content-Range of local
 * answers), written into <out> (at most MOAT_RESP_EXTRAS), their text into <scratch>
 * (MOAT_RESP_SCRATCH bytes). Returns how many. Framing is the encoder's. */
#define MOAT_RESP_EXTRAS  10
#define MOAT_RESP_SCRATCH 256
size_t moat_resp_extras(const struct moat_req *r, const struct moat_resp *resp, bool had_date,
                        struct moat_hdr *out, char *scratch);
/* The HTTP/1.1 encoder: writes <resp> into <out> with the framing fields <framing> (already
 * formatted lines, e.g. "Transfer-Encoding: chunked\r\n") and Connection as <keepalive>
 * says. MOAT_OK, or MOAT_ERR when it does not fit (<out> unchanged). */
int moat_resp_h1(const struct moat_req *r, const struct moat_resp *resp, struct moat_str framing,
                 bool keepalive, bool conn_keepalive_field, struct moat_buf *out);

/* --- the cache's part of a request (cache.c) --------------------------------------------- */

/* The cache phase: MOAT_DECLINED (go on to the origin, maybe as the writer of r->c.obj), or
 * MOAT_DONE (r answers from the cache: R_CACHE, or a local answer). */
int moat_pcache_request(struct moat_req *r);
/* The origin's response head <q> arrived for a writer: store it or give the object up. */
void moat_pcache_response(struct moat_req *r, const struct moat_h1_resp *q);
/* An unsafe request got a non-error answer <q>: invalidate what it may have changed. */
void moat_pcache_invalidate(struct moat_req *r, const struct moat_h1_resp *q);
/* Appends origin body bytes <p,n> (n may be 0) to the object being written; completes the
 * object once the response body is done (r->respf.done). */
void moat_pcache_tap(struct moat_req *r, const char *p, uint32_t n);
/* Ends the cache's part of the request: complete (ok) or abort the written object, drop every
 * reference and subscription. */
void moat_pcache_end(struct moat_req *r, bool ok);
/* The origin failed (before a response head reached the client): if a stale object may be
 * served instead (stale-if-error), switch to serving it (R_CACHE) and return true. */
bool moat_pcache_stale_on_error(struct moat_req *r);
/* R_CACHE: writes the cached response. MOAT_OK / MOAT_AGAIN / MOAT_DONE (over). */
int moat_pcache_serve(struct moat_req *r);
/* Is <name> a field the cache consumes that the client must not see? */
bool moat_pcache_strip(const struct moat_req *r, struct moat_str name);
/* Starts answering from r->c.obj after a revalidation (R_CACHE). */
void moat_pcache_serve_revalidated(struct moat_req *r);

/* --- the request head to the origin (headers.c) ------------------------------------------- */

/* Writes the request head for the origin into <out>. MOAT_OK or MOAT_ERR (no room). */
int moat_fwd_request_head(struct moat_req *r, struct moat_buf *out);

/* --- the access log and counters (alog.c) --------------------------------------------------- */

/* Counts <r> and writes its access-log line. */
void moat_req_account(struct moat_req *r);

#endif
