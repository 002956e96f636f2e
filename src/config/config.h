/* config.h: moat's configuration as a typed, validated, immutable, refcounted snapshot.
 *
 * A snapshot is built from YAML (libfyaml) or from the quick-mode command line, validated as a
 * whole, and never changed after. Reload builds a new one and swaps a pointer; each request
 * holds the snapshot it started with. Runtime state (cache, health, counters) lives outside. */
#ifndef MOAT_CONFIG_CONFIG_H
#define MOAT_CONFIG_CONFIG_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include "core/common.h"
#include "core/geoip.h"
#include "http/h1.h"

/* A resolved socket address and the text it came from ("127.0.0.1:8080", "[::1]:80"). */
struct moat_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    char text[80];
};

struct moat_cfg_origin {
    struct moat_addr addr; /* resolved at load time */
    char *host;            /* host part as written (for the Host header when
                              pool.host_header is "origin"); NUL-terminated */
    unsigned weight;       /* default 1 */
    char *authority;       /* "host" or "host:port" (port omitted when 80), IPv6 in
                              brackets: the Host value when host_header is "origin" */
};

/* monitors.*: an active health check that pools name (src/lb/monitor.c runs them). */
enum moat_mon_type { MOAT_MON_HTTP = 0, MOAT_MON_TCP };
#define MOAT_MON_EXPECT_MAX 8
struct moat_cfg_monitor {
    char *name;
    unsigned type;     /* enum moat_mon_type */
    char *path;        /* http: request path (default "/") */
    char *host;        /* http: Host header; NULL = the origin's address */
    uint16_t expect_lo[MOAT_MON_EXPECT_MAX], expect_hi[MOAT_MON_EXPECT_MAX];
    unsigned nexpect;  /* 0: the default 200-399 */
    char *body;        /* http: a substring the body must hold; NULL = none */
    uint64_t interval_ms, timeout_ms;
    unsigned fall, rise;
};

/* pools.*.tls: TLS to the pool's origins (OpenSSL 3, src/tls/). */
struct moat_cfg_pool_tls {
    bool enabled;  /* tls: given (a map, or `true`); quick mode: an https:// origin */
    bool verify;   /* verify: on (default): the origin's chain against ca_file or the system
                      store, and its name against sni (or the origin's host) */
    char *ca_file; /* ca_file: PEM bundle to trust instead of the system store; NULL = system */
    char *sni;     /* sni: the name sent and verified; NULL = the origin's host name (none
                      for an IP literal, which is then verified as an IP address) */
    char *cert;    /* cert, key: a client certificate for mutual TLS; both or neither */
    char *key;
};

struct moat_cfg_pool {
    char *name;
    struct moat_cfg_origin *origins;
    size_t norigins;
    unsigned keepalive;             /* idle upstream connections kept per origin per worker;
                                       default 256 */
    uint64_t connect_timeout_ms;    /* default 5000 */
    uint64_t first_byte_timeout_ms; /* default 60000: request sent -> response head */
    uint64_t idle_timeout_ms;       /* default 60000: no bytes either way during a body */
    uint64_t keepalive_timeout_ms;  /* default 30000: idle pooled connection lifetime */
    bool host_from_origin;          /* host_header: origin -> Host is the origin's host;
                                       default (client) keeps the client's Host */
    struct moat_cfg_pool_tls tls;   /* tls: TLS to the origins (default off) */
    void *tls_client;               /* runtime: the pool's client context, built by
                                       src/tls/ (moat_tls_build) and freed with the snapshot */
    /* load balancing (src/lb/, docs/load-balancing.md) */
    const struct moat_cfg_monitor *monitor; /* monitor: NULL = always up */
    unsigned min_origins;       /* healthy while this many origins are up (default 1) */
    unsigned balance;           /* enum moat_balance (default round_robin) */
    unsigned hash_kind;         /* enum moat_hash_kind (hash_key) */
    char *hash_name;            /* header:NAME / cookie:NAME: the name (lowercase for headers) */
    unsigned max_requests;      /* concurrent requests per origin; 0 = unlimited */
    unsigned queue_size;        /* queue.size: requests waiting for an origin (all workers) */
    uint64_t queue_timeout_ms;  /* queue.timeout */
    unsigned passive_failures;  /* passive.failures: consecutive failures to eject; 0 = off */
    uint64_t passive_eject_ms;  /* passive.eject: first ejection (doubles on repeat) */
    uint64_t slow_start_ms;     /* ramp a returning or new origin over this; 0 = off */
    unsigned weight;            /* weight of the pool for steering: random */
    uint64_t try_timeout_ms;    /* first-byte timeout of a try that may be retried; 0 = off */
    uint64_t resolve_ms;        /* re-resolve origins given by name this often; 0 = off */
    struct {                    /* autoscale: the scaling hook; off while exec is NULL */
        char *exec;             /* the command run with the pool's name and the action */
        unsigned above, below;  /* in flight per usable origin: scale out above, in below */
        uint64_t for_ms, cooldown_ms;
    } autoscale;
};

enum moat_balance {
    MOAT_BAL_ROUND_ROBIN = 0,
    MOAT_BAL_LEAST_OUTSTANDING,
    MOAT_BAL_RANDOM_TWO,
    MOAT_BAL_HASH,
};
enum moat_hash_kind { MOAT_HASH_CLIENT_IP = 0, MOAT_HASH_HEADER, MOAT_HASH_COOKIE, MOAT_HASH_URL };
enum moat_steering {
    MOAT_STEER_FAILOVER = 0,
    MOAT_STEER_RANDOM,
    MOAT_STEER_GEO,
    MOAT_STEER_LATENCY,
    MOAT_STEER_LEAST_OUTSTANDING,
};

/* load_balancers.*.regions.NAME: a region's pools in order of preference. */
struct moat_cfg_region {
    char *name;
    const struct moat_cfg_pool **pools;
    size_t npools;
};
struct moat_cfg_geo_country {
    char cc[3];    /* ISO 3166 code, upper case */
    char *region;
};
struct moat_cfg_geo_cidr {
    struct moat_cidr cidr;
    char *region;
};

/* load_balancers.*: pools in order, a fallback, a steering policy, affinity. */
struct moat_cfg_lb {
    char *name;
    const struct moat_cfg_pool **pools;
    size_t npools;
    const struct moat_cfg_pool *fallback; /* NULL = none */
    unsigned steering;                    /* enum moat_steering */
    struct moat_cfg_region *regions;
    size_t nregions;
    char *geo_mmdb; /* geo.mmdb: a MaxMind country database; NULL = none */
    struct moat_cfg_geo_country *countries;
    size_t ncountries;
    struct moat_cfg_geo_cidr *cidrs;
    size_t ncidrs;
    char *geo_default;      /* geo.default: the region when nothing matched; NULL = none */
    char *affinity_cookie;  /* affinity.cookie: the cookie's name; NULL = off */
    uint64_t affinity_ttl_ms; /* affinity.ttl: Max-Age of the cookie */
    char *affinity_key;     /* affinity.key: HMAC key of the cookie; NULL = a random key per
                               start */
    bool affinity_client_ip; /* affinity.client_ip: hash the client address instead */
    unsigned retries;        /* retries: tries on other origins after a failure (default 2) */
};

/* A cache rule (sites[].rules[]): the first whose match fits a request decides how the
 * cache treats it, like a CDN's page rules. */
enum moat_cache_mode {
    MOAT_CACHE_MODE_STANDARD = 0, /* obey the origin's headers (RFC 9111) */
    MOAT_CACHE_MODE_BYPASS,       /* never look up or store */
    MOAT_CACHE_MODE_EVERYTHING,   /* store regardless of the origin's Cache-Control */
};
enum moat_key_query { MOAT_KEY_QUERY_ALL = 0, MOAT_KEY_QUERY_IGNORE, MOAT_KEY_QUERY_SORT };
/* origin_no_cache: does the origin's Cache-Control: no-cache force a revalidation on every use
 * (respect, RFC 9111 5.2.2.4), or is the answer fresh for its lifetime as if it were absent? */
enum moat_origin_no_cache { MOAT_ORIGIN_NO_CACHE_RESPECT = 0, MOAT_ORIGIN_NO_CACHE_IGNORE };
/* set_cookie: a response with Set-Cookie is never stored (refuse, the default), or stored
 * with its Set-Cookie fields removed from the copy (strip: hits never hand out a cookie; the
 * request that fetched it still gets its own). */
enum moat_set_cookie { MOAT_SET_COOKIE_REFUSE = 0, MOAT_SET_COOKIE_STRIP };

/* key.headers and key.cookies name at most this many fields each: every name costs a scan
 * of the request's fields per request, and bytes in a key that must fit in 1 KiB. */
#define MOAT_KEY_FIELDS_MAX 8

struct moat_cfg_rule {
    /* match (all given conditions must hold) */
    char *path;       /* glob on the path: '*' any run, '?' one byte; NULL = any */
    unsigned methods; /* bit (1 << enum moat_method); 0 = any */
    char *query;      /* a query parameter that must be present */
    char *header;     /* a request header that must be present */
    char *cookie;     /* a cookie that must be present */
    /* actions */
    unsigned mode;              /* enum moat_cache_mode */
    uint64_t edge_ttl_ms;       /* moat's freshness lifetime; 0 = the origin's */
    uint64_t browser_ttl_ms;    /* Cache-Control: max-age sent to clients; 0 = the origin's */
    uint64_t stale_if_error_ms; /* serve stale this long when the origin fails; 0 = none */
    unsigned key_query;         /* enum moat_key_query */
    struct moat_str key_headers[MOAT_KEY_FIELDS_MAX]; /* key.headers: request fields whose
                                   values join the key; lowercase, in the order given */
    struct moat_str key_cookies[MOAT_KEY_FIELDS_MAX]; /* key.cookies: cookie names, exact */
    uint8_t nkey_headers, nkey_cookies;
    unsigned origin_no_cache; /* enum moat_origin_no_cache */
    unsigned set_cookie;      /* enum moat_set_cookie */
};

struct moat_cfg_site {
    char **hosts; /* lowercase; "*" matches any; "*.example.com" a suffix */
    size_t nhosts;
    struct moat_cfg_pool *pool;  /* points into the snapshot's pools[] (with load_balancer:
                                    its first pool, whose timeouts apply) */
    const struct moat_cfg_lb *lb; /* load_balancer: NULL = the pool alone */
    /* waiting_room: { max_active, session, refresh }: off while wr_max_active is 0 */
    unsigned wr_max_active;
    uint64_t wr_session_ms;
    uint64_t wr_refresh_ms;
    struct moat_cfg_rule *rules; /* first match wins */
    size_t nrules;
    /* https: { redirect, hsts, hsts_subdomains, hsts_preload, same_cache } */
    bool https_redirect;   /* a request over plain http gets 301 to https:// (GET/HEAD; 308
                              for other methods) */
    uint64_t hsts_ms;      /* Strict-Transport-Security max-age on https answers; 0 = off */
    bool hsts_subdomains;  /* ...; includeSubDomains */
    bool hsts_preload;     /* ...; preload */
    bool https_same_cache; /* http and https share cache objects (the key has no scheme);
                              default false: kept apart */
    /* upgrades: the Upgrade tokens forwarded to the origin (lowercase); default
       ["websocket"]; [] forwards none. "h2c" is refused at load: it would let a client
       speak HTTP/2 to the origin past every rule moat enforces. */
    char **upgrades;
    size_t nupgrades;
    bool tls_acme; /* tls: acme: the certificate for hosts comes from tls.acme (src/acme/) */
    /* shield (src/shield/, docs/shield.md) */
    unsigned under_attack;    /* enum moat_under_attack: off (default), on, auto */
    char **challenge_exempt;  /* path globs never challenged (API clients, websockets) */
    size_t nchallenge_exempt;
    uint64_t shield_id;       /* hash of hosts[0]: the key of the site's runtime state */
};


/* --- shield: rate limits, access rules, the challenge (src/shield/, docs/shield.md) --------- */

enum moat_under_attack { MOAT_UA_OFF = 0, MOAT_UA_ON, MOAT_UA_AUTO };
/* What a shield rule does to a request. */
enum moat_shield_action {
    MOAT_SA_BLOCK = 0, /* rate limits: 429 + Retry-After; access rules: 403 */
    MOAT_SA_CHALLENGE, /* the browser challenge unless the client has a valid clearance */
    MOAT_SA_DROP,      /* close the connection without an answer */
    MOAT_SA_ALLOW,     /* access rules only: skip every other shield rule */
};
/* rate_limits[].key */
enum moat_shield_key { MOAT_SK_CLIENT_IP = 0, MOAT_SK_HEADER, MOAT_SK_COOKIE, MOAT_SK_IP_PREFIX };

/* An inclusive range of (v4-mapped when IPv4) addresses, big-endian bytes. */
struct moat_ip_range {
    uint8_t lo[16], hi[16];
};

/* The addresses of <c> as an inclusive range (the shield's CIDR lists and blocks). */
void moat_cidr_range(const struct moat_cidr *c, struct moat_ip_range *r);

/* match: of a shield rule: a cache rule's conditions plus hosts, user agent, CIDRs, countries. */
struct moat_cfg_smatch {
    struct moat_cfg_rule rule; /* path, methods, query, header, cookie (same rows as rules) */
    char **hosts;              /* lowercase exact host names (no port); NULL = any */
    size_t nhosts;
    char *user_agent;          /* glob on User-Agent; NULL = any */
    struct moat_ip_range *ranges; /* cidr: sorted, merged, for a binary search; NULL = any */
    size_t nranges;
    char (*countries)[3];      /* ISO 3166 codes, uppercase; NULL = any */
    size_t ncountries;
};

struct moat_cfg_ratelimit {
    struct moat_cfg_smatch match;
    unsigned key;           /* enum moat_shield_key */
    char *key_name;         /* header:NAME (lowercase) / cookie:NAME */
    unsigned prefix;        /* ip_prefix:/N (IPv4 /N; IPv6 /N of the v6 address) */
    uint64_t interval_ns;   /* rate: one request per this many ns */
    unsigned rate_n;        /* rate as written: rate_n per rate_unit_s seconds */
    unsigned rate_unit_s;
    unsigned burst;         /* default: the rate per second, at least 1 */
    unsigned count_origin;  /* count: all (0) | origin (1) */
    unsigned count_refused; /* refused requests use up the budget (true, default) */
    unsigned action;        /* enum moat_shield_action (block, challenge, drop) */
};

struct moat_cfg_access {
    struct moat_cfg_smatch match;
    unsigned action; /* enum moat_shield_action */
};

#define MOAT_SHIELD_RULES_MAX 64 /* rate_limits and access rules each */

struct moat_cfg_shield {
    struct moat_cfg_ratelimit *rate_limits;
    size_t nrate_limits;
    struct moat_cfg_access *access;
    size_t naccess;
    unsigned conn_per_ip;   /* connections.per_ip; 0 = no limit */
    uint64_t keys;          /* keys: rate-limit entries kept (16 B each), read at start */
    unsigned difficulty;    /* challenge.difficulty: leading zero bits */
    uint64_t clearance_ms;  /* challenge.clearance */
    char *secret_file;      /* challenge.secret_file, resolved; NULL: a random key per process */
    uint8_t secret[64];     /* the HMAC key read from (or written to) secret_file */
    unsigned secret_len;
    uint64_t auto_rps;      /* auto.requests_per_second; 0 = not a trigger */
    unsigned auto_err_pm;   /* auto.origin_errors in permille; 0 = not a trigger */
    uint64_t auto_for_ms;   /* auto.for */
    uint64_t auto_quiet_ms; /* auto.quiet */
    char *geoip;            /* geoip: MaxMind country database for match.country */
    bool any_challenge;     /* derived: a rule may challenge or a site is not under_attack: off
                               (the answer endpoint is served) */
};

enum moat_log_level { MOAT_LOG_DEBUG, MOAT_LOG_INFO, MOAT_LOG_WARN, MOAT_LOG_ERROR };

/* listen: ["HOST:PORT", { addr: HOST:PORT, tls: true }] */
struct moat_cfg_listen {
    struct moat_addr addr;
    bool tls; /* TLS on this listener (needs tls.certificates) */
    bool h2c; /* plain listener: HTTP/2 with prior knowledge too (h2c: true) */
};

/* http2: the HTTP/2 downstream's limits (src/proxy/h2conn.c, docs/http2.md). */
struct moat_cfg_h2 {
    unsigned max_streams;        /* max_concurrent_streams: 128 (SETTINGS) */
    uint64_t max_header_list;    /* max_header_list: 64 KiB decoded (SETTINGS; 431 beyond) */
    uint64_t stream_window;      /* stream_window: 64 KiB, request body held per stream */
    uint64_t conn_window;        /* connection_window: 1 MiB, request bodies per connection */
    uint64_t stream_buffer;      /* stream_buffer: 64 KiB, response bytes held per stream */
    uint64_t conn_buffer;        /* connection_buffer: 1 MiB, response bytes per connection */
    uint64_t flood_window_ms;    /* flood_window: 10s, the window the budgets below count in */
    unsigned max_resets;         /* max_resets: 200 streams reset by the client per window */
    unsigned max_control;        /* max_control_frames: 1000 PING/SETTINGS/PRIORITY/
                                    WINDOW_UPDATE per window (plus one per stream and DATA) */
    unsigned max_empty;          /* max_empty_frames: 100 empty DATA frames per window */
    unsigned max_continuations;  /* max_continuations: 8 per header block */
    unsigned max_settings;       /* max_settings: 32 entries per SETTINGS frame */
    unsigned max_outbound_ack;   /* max_outbound_ack: 1000 queued PING/SETTINGS acks */
    uint64_t idle_timeout_ms;    /* idle_timeout: 60s without a stream open */
    uint64_t stall_timeout_ms;   /* stall_timeout: 30s with bytes to send and no progress */
};

/* tls.certificates[] */
struct moat_cfg_cert {
    char *cert; /* PEM: the certificate, then its chain (leaf first); path as resolved */
    char *key;  /* PEM private key (RSA or EC) */
};

/* tls.protocols */
#define MOAT_TLS_V12 0x1u
#define MOAT_TLS_V13 0x2u

/* tls.acme: certificates obtained by moat itself from an ACME CA (RFC 8555, src/acme/). */
#define MOAT_ACME_HTTP01    0x1u
#define MOAT_ACME_TLSALPN01 0x2u
struct moat_cfg_acme {
    bool enabled;               /* tls.acme given */
    char *directory;            /* the CA's directory URL (https://, or http:// for tests) */
    char *email;                /* contact for the account; NULL = none */
    char *storage;              /* directory: account key, certificates, keys (0600), lock */
    char *ca_file;              /* PEM bundle to trust for the CA's API; NULL = system store */
    unsigned challenges;        /* MOAT_ACME_* bits; default both */
    bool tls_alpn_first;        /* challenges lists tls-alpn-01 before http-01 */
    uint64_t renew_before_ms;   /* default 30d: renew when the certificate expires sooner */
    uint64_t check_interval_ms; /* default 1h: how often certificates are looked at */
    uint64_t retry_min_ms;      /* default 1m: first wait after a failed order (doubles) */
    uint64_t retry_max_ms;      /* default 1d: the longest wait between failed orders */
    uint64_t timeout_ms;        /* default 30s: one request to the CA */
};

/* tls: the server side of TLS (src/tls/ builds OpenSSL contexts from it). */
struct moat_cfg_tls {
    struct moat_cfg_cert *certs; /* the first is the default (no SNI, unknown name) */
    size_t ncerts;
    unsigned protocols;            /* MOAT_TLS_V* bits; default both */
    char *ciphers;                 /* TLS 1.2 cipher list (OpenSSL syntax); default Mozilla
                                      "intermediate" without DHE */
    char *ciphersuites;            /* TLS 1.3 suites; default AES-128-GCM, AES-256-GCM,
                                      ChaCha20-Poly1305 (RFC 8446 9.1, Mozilla's order) */
    char *groups;                  /* key exchange groups; default "X25519:P-256:P-384" */
    bool session_tickets;          /* default true: RFC 5077/8446 tickets, keys shared by all
                                      workers and rotated */
    uint64_t ticket_rotation_ms;   /* default 12h: a new ticket key this often; the previous
                                      one still decrypts for one more period */
    unsigned session_cache;        /* server-side session cache entries, shared by all workers;
                                      default 20480; 0 = off */
    uint64_t session_timeout_ms;   /* default 1h: how long a session can be resumed */
    uint64_t handshake_timeout_ms; /* default 10s: accept to handshake done */
    struct moat_cfg_acme acme;     /* tls.acme: automatic certificates (default off) */
};

struct moat_config {
    atomic_int refs;
    char *path;          /* file it came from, or NULL for quick mode */
    uint64_t generation; /* set by the owner on install; 0 until then */

    struct moat_cfg_listen *listen;
    size_t nlisten;
    unsigned workers; /* 0 in YAML means "auto" is resolved: one per core */

    struct {
        bool enabled;
        struct moat_addr listen;
        char *token; /* read from token_file at load time; NULL = no auth
                        (only allowed when listen is loopback) */

        bool dashboard;             /* admin.dashboard: true, the live page at / */
        unsigned dashboard_clients; /* admin.dashboard_clients: 16 open /events streams */
    } admin;

    struct {
        bool enabled; /* demo_origin: "127.0.0.1:8081" starts moat's built-in demo
                         site on that address (the embedded default uses it) */
        struct moat_addr listen;
    } demo;

    struct moat_h1_limits h1; /* limits.request_line (8 KiB), limits.header_bytes
                                 (16 KiB), limits.header_count (100) */
    uint64_t max_body_bytes;  /* limits.body_bytes; 0 = unlimited (default 0) */
    uint64_t body_buffer;     /* limits.body_buffer: a large body is read through a buffer
                                 this big (default 64 KiB) */
    unsigned max_connections; /* limits.connections per worker (default 10000) */
    uint64_t send_queue;      /* limits.send_queue: TCP_NOTSENT_LOWAT of client sockets, the
                                 response bytes the kernel holds for a client beyond what its
                                 window lets go; 0 = the kernel's (default 128 KiB) */
    unsigned batch_wait_us;   /* tuning.batch_wait_us: a busy worker's pause to collect
                                 events, 0 = off (default 20) */

    uint64_t client_header_timeout_ms; /* timeouts.client_header: 10s */
    uint64_t client_body_timeout_ms;   /* timeouts.client_body: 60s (between reads) */
    uint64_t client_idle_timeout_ms;   /* timeouts.keepalive: 60s between requests */
    uint64_t send_timeout_ms;          /* timeouts.send: 60s without progress writing */
    uint64_t drain_timeout_ms;         /* timeouts.drain: 30s on SIGTERM */

    struct moat_cidr *trusted; /* trusted_proxies: X-Forwarded-For from these is kept */
    size_t ntrusted;
    char *via_name;      /* via: the pseudonym in Via (default "moat") */
    unsigned fwd_fields; /* forward_headers: MOAT_FWD_* bits moat sets (default all) */

    char *access_log;              /* log.access: path, "stderr", "stdout" or NULL (off) */
    char *error_log;               /* log.error: path or "stderr" (default) */
    enum moat_log_level log_level; /* log.level: info */

    struct {
        bool enabled;              /* cache.enabled: true */
        uint64_t memory;           /* cache.memory: 512MiB (read at start; restart to change) */
        uint64_t max_object;       /* cache.max_object: 32MiB */
        uint64_t pass_ttl_ms;      /* cache.pass_ttl: 2m, hit-for-pass marker lifetime */
        uint64_t heuristic_max_ms; /* cache.heuristic_max: 1d */
        char *targeted_field;      /* cache.targeted_field: "Moat-Cache-Control" */
        uint64_t static_ttl_ms;    /* cache.static_ttl: 2h (quick mode: 0): freshness for
                                      static file types when the origin gives none */
        bool normalize_ae;         /* cache.normalize_accept_encoding: true; cached requests
                                      send the origin a canonical Accept-Encoding */
    } cache;

    struct moat_cfg_tls tls;
    struct moat_cfg_h2 h2;

    struct moat_cfg_monitor *monitors;
    size_t nmonitors;
    struct moat_cfg_shield shield;

    struct moat_cfg_pool *pools;
    size_t npools;
    struct moat_cfg_lb *lbs;
    size_t nlbs;
    struct moat_cfg_site *sites;
    size_t nsites;

    /* Runtime objects higher layers build from this snapshot (the TLS contexts of
     * src/tls/), owned by it: moat_config_release calls rt_free(rt) before freeing the
     * snapshot. Set once, before the snapshot is installed. */
    void *rt;
    void (*rt_free)(void *rt);
    /* The load balancer's runtime for this snapshot (src/lb/: geo databases, the pools'
     * runtime state), freed the same way. */
    void *lb_rt;
    void (*lb_rt_free)(void *lb_rt);
};

/* Error text is "FILE:LINE:COL: what is wrong" (or "moat: what is wrong" for errors that
 * have no position) and fits in this many bytes. */
#define MOAT_CONFIG_ERRLEN 512

/* Loads and validates <path>. Returns a snapshot with one reference, or NULL with <err>
 * filled. Never leaves anything half-applied: nothing global is touched. */
struct moat_config *moat_config_load(const char *path, char *err, size_t errlen);

/* Same from an in-memory YAML document; <name> is used in error positions. */
struct moat_config *moat_config_load_string(const char *yaml, size_t len, const char *name,
                                            char *err, size_t errlen);

/* Quick mode: one site "*" proxying to <origin_url> ("http://host:port"), listening on
 * <listen> ("HOST:PORT"), defaults elsewhere. */
struct moat_config *moat_config_quick(const char *origin_url, const char *listen, char *err,
                                      size_t errlen);

/* The embedded default configuration text (used by `moat` with no -c and by `make demo`). */
extern const char moat_config_default_yaml[];

void moat_config_ref(struct moat_config *c);
/* Drops a reference and clears *<c>; frees the snapshot on the last one. */
void moat_config_release(struct moat_config **c);

/* Finds the site for <host> (without port, any case): exact names first, then the longest
 * "*.suffix" match, then "*"; NULL if none. */
const struct moat_cfg_site *moat_config_site(const struct moat_config *c, struct moat_str host);

/* forward_headers: the fields moat sets on a forwarded request (Via is always set). */
enum {
    MOAT_FWD_XFF = 1u << 0,       /* X-Forwarded-For */
    MOAT_FWD_XFP = 1u << 1,       /* X-Forwarded-Proto */
    MOAT_FWD_FORWARDED = 1u << 2, /* Forwarded (RFC 7239) */
};

/* True if <c> asks for TLS anywhere: a listener with tls: true or a pool with tls. Such a
 * snapshot is only usable with its TLS runtime (c->rt, built by src/tls/ moat_tls_build). */
bool moat_config_wants_tls(const struct moat_config *c);

/* True if the (v4-mapped when IPv4) 16-byte <addr> is inside one of <c>'s trusted CIDRs. */
bool moat_config_trusted(const struct moat_config *c, const uint8_t addr[16]);

/* Parses "HOST:PORT" / "[V6]:PORT" / ":PORT" (all addresses) into <out>; resolves names with
 * getaddrinfo. Returns MOAT_OK or MOAT_ERR with a message in <err>. */
int moat_addr_parse(const char *text, struct moat_addr *out, char *err, size_t errlen);

/* Parses durations ("150ms", "10s", "5m", "1h", "1d"; a bare number is seconds) and sizes
 * ("512", "16k", "16KiB", "512MiB", "1GiB", "1g"; powers of 1024). MOAT_OK or MOAT_ERR. */
int moat_parse_duration_ms(const char *s, uint64_t *out);
int moat_parse_size(const char *s, uint64_t *out);

/* Calls <fn> once per configuration key, in table order, with its dotted path
 * ("pools.*.connect_timeout", "sites[].hosts"), its type name, its default as YAML text (NULL
 * when it has none; "required" keys say so in <doc>) and its one-line doc. The tables that
 * drive parsing are the single source: tests check docs/configuration.md against it. */
typedef void moat_config_key_fn(const char *path, const char *type, const char *def,
                                const char *doc, void *ud);
void moat_config_keys(moat_config_key_fn *fn, void *ud);

#endif
