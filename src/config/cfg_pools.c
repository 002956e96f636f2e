/* cfg_pools.c: the directive tables of pools and their origins (pools.*). */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>

#include "config/config-int.h"

/* Host and authority are kept ready-made for the Host header (host_header: origin). */
int cfg_fill_origin_names(struct cfg_ld *ld, struct moat_cfg_origin *o, const char *host,
                          unsigned port, unsigned default_port)
{
    char auth[320];
    if (port == default_port)
        snprintf(auth, sizeof(auth), "%s", host);
    else
        snprintf(auth, sizeof(auth), "%s:%u", host, port);
    o->host = cfg_strndup(ld->box, host, strlen(host));
    o->authority = cfg_strndup(ld->box, auth, strlen(auth));
    return o->host && o->authority ? MOAT_OK : cfg_oom(ld);
}

static int set_origin_addr(struct cfg_ld *ld, struct fy_node *n, struct moat_cfg_origin *o)
{
    char host[300];
    unsigned port;
    if (cfg_parse_addr_node(ld, n, &o->addr, host, sizeof(host), &port) != MOAT_OK)
        return MOAT_ERR;
    return cfg_fill_origin_names(ld, o, host, port, 80);
}

static int k_origin_addr(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    return set_origin_addr(ld, n, base);
}

static const struct cfg_key origin_keys[] = {
    {.name = "addr",
     .type = KT_CUSTOM,
     .fn = k_origin_addr,
     .tname = "address",
     .flags = K_REQUIRED,
     .doc = "HOST:PORT of the origin (required); names resolve at load"},
    {.name = "weight",
     .type = KT_UINT,
     CFG_AT(struct moat_cfg_origin, weight),
     .def = "1",
     .min = 1,
     .max = 1000,
     .doc = "share of requests relative to the pool's other origins"},
};
const struct cfg_table cfg_origin_table = CFG_TABLE(origin_keys, NULL);

static int origin_elem(struct cfg_ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    struct moat_cfg_pool *p = ud;
    struct moat_cfg_origin *o = &p->origins[idx];
    if (fy_node_get_type(n) == FYNT_MAPPING)
        return cfg_walk(ld, &cfg_origin_table, n, o, false);
    if (fy_node_get_type(n) != FYNT_SCALAR || cfg_is_null(n))
        return cfg_fail(ld, n, "expected \"HOST:PORT\" or { addr: HOST:PORT, weight: N }, got %s",
                        cfg_what(n));
    if (cfg_walk(ld, &cfg_origin_table, NULL, o, true) != MOAT_OK)
        return MOAT_ERR;
    return set_origin_addr(ld, n, o);
}

static int k_origins(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_pool *p = base;
    if (cfg_is_null(n) || fy_node_get_type(n) != FYNT_SEQUENCE)
        return cfg_fail(ld, n, "expected a list of origins, got %s", cfg_what(n));
    size_t cnt;
    if (cfg_each_string(ld, n, &cnt, NULL, NULL, false) != MOAT_OK)
        return MOAT_ERR;
    p->origins = cfg_alloc(ld->box, cnt * sizeof(*p->origins));
    if (!p->origins)
        return cfg_oom(ld);
    p->norigins = cnt;
    return cfg_each_string(ld, n, &cnt, origin_elem, p, false);
}

static const char *const host_header_names[] = {"client", "origin", NULL};

static const struct cfg_key pool_keys[] = {
    {.name = "origins",
     .type = KT_CUSTOM,
     .fn = k_origins,
     .sub = &cfg_origin_table,
     .sub_sep = "[].",
     .tname = "list of address or {addr, weight}",
     .flags = K_REQUIRED,
     .doc = "the origins of the pool (required, not empty)"},
    {.name = "keepalive",
     .type = KT_UINT,
     CFG_AT(struct moat_cfg_pool, keepalive),
     .def = "256",
     .min = 0,
     .max = 10000,
     .doc = "idle connections kept per origin per worker"},
    {.name = "connect_timeout",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_pool, connect_timeout_ms),
     .def = "5s",
     .min = 1,
     .max = 86400000,
     .doc = "time to establish a connection"},
    {.name = "first_byte_timeout",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_pool, first_byte_timeout_ms),
     .def = "60s",
     .min = 1,
     .max = 86400000,
     .doc = "request sent to response head received"},
    {.name = "idle_timeout",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_pool, idle_timeout_ms),
     .def = "60s",
     .min = 1,
     .max = 86400000,
     .doc = "no bytes either way while a body is in flight"},
    {.name = "keepalive_timeout",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_pool, keepalive_timeout_ms),
     .def = "30s",
     .min = 1,
     .max = 86400000,
     .doc = "how long an idle pooled connection is kept"},
    {.name = "host_header",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_pool, host_from_origin),
     .def = "client",
     .names = host_header_names,
     .doc = "Host sent upstream: the client's (client) or the origin's host (origin)"},
    {.name = "tls",
     .type = KT_CUSTOM,
     .fn = cfg_k_pool_tls,
     .sub = &cfg_pool_tls_table,
     .sub_sep = ".",
     .tname = "true|false or map",
     .doc = "speak TLS to the origins (off when absent; true = verified against the system "
            "store)"},
    /* load balancing (cfg_lb.c, docs/load-balancing.md) */
    {.name = "monitor",
     .type = KT_CUSTOM,
     .fn = cfg_k_pool_monitor,
     .tname = "monitor name",
     .doc = "the active health check of the origins (none: always up)"},
    {.name = "min_origins",
     .type = KT_UINT,
     CFG_AT(struct moat_cfg_pool, min_origins),
     .def = "1",
     .min = 1,
     .max = 10000,
     .doc = "the pool is healthy while this many origins are up"},
    {.name = "balance",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_pool, balance),
     .def = "round_robin",
     .names = cfg_balance_names,
     .doc = "round_robin (weighted), least_outstanding, random_two or hash"},
    {.name = "hash_key",
     .type = KT_CUSTOM,
     .fn = cfg_k_hash_key,
     .tname = "client_ip|url|header:NAME|cookie:NAME",
     .def = "client_ip",
     .doc = "for balance: hash, what is hashed (consistent hashing)"},
    {.name = "max_requests",
     .type = KT_UINT,
     CFG_AT(struct moat_cfg_pool, max_requests),
     .def = "0",
     .min = 0,
     .max = 1000000,
     .doc = "concurrent requests per origin, beyond which requests queue (0 = no limit)"},
    {.name = "queue",
     .type = KT_MAP,
     .sub = &cfg_pool_queue_table,
     .sub_sep = ".",
     .doc = "the waiting line when every origin is at max_requests"},
    {.name = "passive",
     .type = KT_MAP,
     .sub = &cfg_pool_passive_table,
     .sub_sep = ".",
     .doc = "outlier detection from live traffic"},
    {.name = "slow_start",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_pool, slow_start_ms),
     .def = "0s",
     .min = 0,
     .max = 3600000,
     .doc = "an origin that comes up ramps from few requests to its full share over this"},
    {.name = "weight",
     .type = KT_UINT,
     CFG_AT(struct moat_cfg_pool, weight),
     .def = "1",
     .min = 1,
     .max = 1000,
     .doc = "the pool's share under steering: random"},
    {.name = "try_timeout",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_pool, try_timeout_ms),
     .def = "0s",
     .min = 0,
     .max = 86400000,
     .doc = "first-byte timeout after which an idempotent request is retried on another "
            "origin (0 = off: first_byte_timeout applies)"},
    {.name = "resolve",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_pool, resolve_ms),
     .def = "0s",
     .min = 0,
     .max = 86400000,
     .doc = "re-resolve origins given by name this often: every address joins, gone ones "
            "drain (0 = off: resolved once at load)"},
    {.name = "autoscale",
     .type = KT_MAP,
     .sub = &cfg_pool_autoscale_table,
     .sub_sep = ".",
     .flags = K_PRESENCE,
     .doc = "run a command when the pool stays busy or idle (off when absent)"},
};

/* The origins were read before tls, with the authority of plain HTTP ("host" for port 80);
 * over TLS the port that goes without saying is 443 (RFC 9110 4.2.2), so a TLS pool's origin
 * on 443 sends Host: host, and one on 80 says so. */
static int pool_post(struct cfg_ld *ld, struct fy_node *map, void *base)
{
    struct moat_cfg_pool *p = base;
    if (p->min_origins > p->norigins)
        return cfg_fail(ld, map, "min_origins is %u but the pool has %zu origin%s",
                        p->min_origins, p->norigins, p->norigins == 1 ? "" : "s");
    if (p->tls.enabled && p->monitor && p->monitor->type == MOAT_MON_HTTP)
        return cfg_fail(ld, map,
                        "monitor \"%s\" checks over plain HTTP, which a pool with tls does not "
                        "speak: give it type: tcp",
                        p->monitor->name);
    if (!p->tls.enabled)
        return MOAT_OK;
    for (size_t i = 0; i < p->norigins; i++) {
        struct moat_cfg_origin *o = &p->origins[i];
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&o->addr.ss;
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&o->addr.ss;
        unsigned port = ntohs(o->addr.ss.ss_family == AF_INET6 ? sin6->sin6_port : sin->sin_port);
        if (cfg_fill_origin_names(ld, o, o->host, port, 443) != MOAT_OK)
            return MOAT_ERR;
    }
    return MOAT_OK;
}

const struct cfg_table cfg_pool_table = CFG_TABLE(pool_keys, pool_post);
_Static_assert(MOAT_ARRAY_LEN(pool_keys) <= CFG_MAX_KEYS, "raise CFG_MAX_KEYS");

/* Pool names key runtime state (health, counters) across reloads and appear in metrics, so
 * they are restricted to a safe, stable alphabet. */
static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-' && s[i] != '.')
            return false;
    return true;
}

int cfg_k_pools(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    if (cfg_is_null(n))
        return MOAT_OK;
    if (fy_node_get_type(n) != FYNT_MAPPING)
        return cfg_fail(ld, n, "expected a map of pool names to pools, got %s", cfg_what(n));
    size_t cnt = (size_t)MOAT_MAX(fy_node_mapping_item_count(n), 0);
    c->pools = cfg_alloc(ld->box, MOAT_MAX(cnt, (size_t)1) * sizeof(*c->pools));
    struct fy_node **keys = cfg_alloc(ld->box, MOAT_MAX(cnt, (size_t)1) * sizeof(*keys));
    if (!c->pools || !keys)
        return cfg_oom(ld);
    void *it = NULL;
    struct fy_node_pair *pr;
    while ((pr = fy_node_mapping_iterate(n, &it)) != NULL) {
        struct fy_node *kn = cfg_deref(fy_node_pair_key(pr));
        char name[128];
        if (cfg_scalar(ld, kn, name, sizeof(name), "a pool name") != MOAT_OK)
            return MOAT_ERR;
        size_t old = cfg_path_push(ld, ".%s", name);
        if (!valid_name(name)) {
            cfg_fail(ld, kn, "a pool name is 1 to 64 letters, digits, '-', '_' or '.'");
            cfg_path_pop(ld, old);
            return MOAT_ERR;
        }
        for (size_t i = 0; i < c->npools; i++) {
            if (strcmp(c->pools[i].name, name) == 0) {
                int l, col;
                cfg_node_pos(ld, keys[i], &l, &col);
                cfg_fail(ld, kn, "duplicate pool name (first defined at line %d, column %d)", l,
                         col);
                cfg_path_pop(ld, old);
                return MOAT_ERR;
            }
        }
        struct moat_cfg_pool *p = &c->pools[c->npools];
        keys[c->npools] = kn;
        c->npools++;
        p->name = cfg_strndup(ld->box, name, strlen(name));
        struct fy_node *v = cfg_deref(fy_node_pair_value(pr));
        ld->cur_key = kn;
        int rc = p->name ? MOAT_OK : cfg_oom(ld);
        if (rc == MOAT_OK && cfg_is_null(v))
            rc = cfg_fail(ld, v ? v : kn, "a pool needs at least origins: [HOST:PORT]");
        if (rc == MOAT_OK)
            rc = cfg_walk(ld, &cfg_pool_table, v, p, false);
        cfg_path_pop(ld, old);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}
