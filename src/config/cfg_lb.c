/* cfg_lb.c: the directive tables of load balancing: monitors.*, the balancing keys of pools.*
 * (monitor, hash_key, queue, passive), load_balancers.* and sites[].load_balancer. */
#include <ctype.h>
#include <stdio.h>
#include <unistd.h>

#include "config/config-int.h"

/* Names key runtime state across reloads and appear in metrics: a safe, stable alphabet. */
static bool lb_valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-' && s[i] != '.')
            return false;
    return true;
}

/* A map of NAME -> <t>'s map, into an array of <elsz>-byte structs whose first member is the
 * name (char *). <what> names an element in messages ("monitor"). */
static int named_map(struct cfg_ld *ld, struct fy_node *n, const char *what,
                     const struct cfg_table *t, size_t elsz, void **arr, size_t *count)
{
    if (cfg_is_null(n))
        return MOAT_OK;
    if (fy_node_get_type(n) != FYNT_MAPPING)
        return cfg_fail(ld, n, "expected a map of %s names to %ss, got %s", what, what,
                        cfg_what(n));
    size_t cnt = (size_t)MOAT_MAX(fy_node_mapping_item_count(n), 0);
    char *base = cfg_alloc(ld->box, MOAT_MAX(cnt, (size_t)1) * elsz);
    struct fy_node **keys = cfg_alloc(ld->box, MOAT_MAX(cnt, (size_t)1) * sizeof(*keys));
    if (!base || !keys)
        return cfg_oom(ld);
    *arr = base;
    *count = 0;
    void *it = NULL;
    struct fy_node_pair *pr;
    while ((pr = fy_node_mapping_iterate(n, &it)) != NULL) {
        struct fy_node *kn = cfg_deref(fy_node_pair_key(pr));
        char name[128];
        if (cfg_scalar(ld, kn, name, sizeof(name), "a name") != MOAT_OK)
            return MOAT_ERR;
        size_t old = cfg_path_push(ld, ".%s", name);
        int rc = MOAT_OK;
        if (!lb_valid_name(name))
            rc = cfg_fail(ld, kn, "a %s name is 1 to 64 letters, digits, '-', '_' or '.'", what);
        for (size_t i = 0; i < *count && rc == MOAT_OK; i++) {
            if (strcmp(*(char **)(void *)(base + i * elsz), name) == 0) {
                int l, col;
                cfg_node_pos(ld, keys[i], &l, &col);
                rc = cfg_fail(ld, kn, "duplicate %s name (first defined at line %d, column %d)",
                              what, l, col);
            }
        }
        char *el = base + *count * elsz;
        if (rc == MOAT_OK) {
            keys[*count] = kn;
            (*count)++;
            char *nm = cfg_strndup(ld->box, name, strlen(name));
            memcpy(el, &nm, sizeof(nm));
            ld->cur_key = kn;
            if (!nm)
                rc = cfg_oom(ld);
        }
        if (rc == MOAT_OK)
            rc = cfg_walk(ld, t, cfg_deref(fy_node_pair_value(pr)), el, false);
        cfg_path_pop(ld, old);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}

/* --- monitors --------------------------------------------------------------------------- */

/* expect: [200, "200-299", 301]: status codes or ranges. */
static int expect_elem(struct cfg_ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    struct moat_cfg_monitor *m = ud;
    char buf[32];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "a status code or range") != MOAT_OK)
        return MOAT_ERR;
    unsigned lo = 0, hi = 0;
    int used = 0;
    if (sscanf(buf, "%3u-%3u%n", &lo, &hi, &used) == 2 && buf[used] == '\0') {
        /* a range */
    } else if (sscanf(buf, "%3u%n", &lo, &used) == 1 && buf[used] == '\0') {
        hi = lo;
    } else {
        return cfg_fail(ld, n, "\"%s\" is not a status code or a range like 200-299", buf);
    }
    if (lo < 100 || hi > 599 || lo > hi)
        return cfg_fail(ld, n, "\"%s\": codes are 100 to 599, the low one first", buf);
    m->expect_lo[idx] = (uint16_t)lo;
    m->expect_hi[idx] = (uint16_t)hi;
    return MOAT_OK;
}

static int k_expect(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_monitor *m = base;
    size_t cnt;
    if (cfg_each_string(ld, n, &cnt, NULL, NULL, false) != MOAT_OK)
        return MOAT_ERR;
    if (cnt > MOAT_MON_EXPECT_MAX)
        return cfg_fail(ld, n, "at most %d codes or ranges", MOAT_MON_EXPECT_MAX);
    m->nexpect = (unsigned)cnt;
    return cfg_each_string(ld, n, &cnt, expect_elem, m, false);
}

static const char *const mon_type_names[] = {"http", "tcp", NULL};

static const struct cfg_key monitor_keys[] = {
    {.name = "type",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_monitor, type),
     .def = "http",
     .names = mon_type_names,
     .doc = "http (a GET and its answer) or tcp (a connection)"},
    {.name = "path",
     .type = KT_STRING,
     CFG_AT(struct moat_cfg_monitor, path),
     .def = "/",
     .doc = "http: the path probed"},
    {.name = "host",
     .type = KT_STRING,
     CFG_AT(struct moat_cfg_monitor, host),
     .doc = "http: the probe's Host header (default: the origin's address)"},
    {.name = "expect",
     .type = KT_CUSTOM,
     .fn = k_expect,
     .tname = "list of codes or ranges",
     .def = "[200-399]",
     .doc = "http: the status codes that pass (\"200-299\", 204, ...)"},
    {.name = "body",
     .type = KT_STRING,
     CFG_AT(struct moat_cfg_monitor, body),
     .doc = "http: a substring the first 64 KiB of the body must hold (none when absent)"},
    {.name = "interval",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_monitor, interval_ms),
     .def = "5s",
     .min = 10,
     .max = DAY_MS,
     .doc = "time between two checks of an origin"},
    {.name = "timeout",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_monitor, timeout_ms),
     .def = "2s",
     .min = 10,
     .max = 600000,
     .doc = "a check that takes longer fails"},
    {.name = "fall",
     .type = KT_UINT,
     CFG_AT(struct moat_cfg_monitor, fall),
     .def = "3",
     .min = 1,
     .max = 100,
     .doc = "consecutive failures before an origin is down"},
    {.name = "rise",
     .type = KT_UINT,
     CFG_AT(struct moat_cfg_monitor, rise),
     .def = "2",
     .min = 1,
     .max = 100,
     .doc = "consecutive passes before it is up again"},
};
const struct cfg_table cfg_monitor_table = CFG_TABLE(monitor_keys, NULL);
_Static_assert(MOAT_ARRAY_LEN(monitor_keys) <= CFG_MAX_KEYS, "raise CFG_MAX_KEYS");

int cfg_k_monitors(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    void *arr = NULL;
    int rc = named_map(ld, n, "monitor", &cfg_monitor_table, sizeof(struct moat_cfg_monitor), &arr,
                       &c->nmonitors);
    c->monitors = arr;
    return rc;
}

/* --- the balancing keys of a pool ------------------------------------------------------- */

int cfg_k_pool_monitor(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_pool *p = base;
    const struct moat_config *c = &ld->box->cfg;
    char name[128];
    if (cfg_scalar(ld, n, name, sizeof(name), "a monitor name") != MOAT_OK)
        return MOAT_ERR;
    for (size_t i = 0; i < c->nmonitors; i++) {
        if (strcmp(c->monitors[i].name, name) == 0) {
            p->monitor = &c->monitors[i];
            return MOAT_OK;
        }
    }
    return cfg_fail(ld, n, "no monitor named \"%s\" (define it under monitors:)", name);
}

/* hash_key: client_ip | url | header:NAME | cookie:NAME */
int cfg_k_hash_key(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_pool *p = base;
    char buf[128];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "a hash key") != MOAT_OK)
        return MOAT_ERR;
    const char *name = NULL;
    if (strcmp(buf, "client_ip") == 0) {
        p->hash_kind = MOAT_HASH_CLIENT_IP;
    } else if (strcmp(buf, "url") == 0) {
        p->hash_kind = MOAT_HASH_URL;
    } else if (strncmp(buf, "header:", 7) == 0) {
        p->hash_kind = MOAT_HASH_HEADER;
        name = buf + 7;
    } else if (strncmp(buf, "cookie:", 7) == 0) {
        p->hash_kind = MOAT_HASH_COOKIE;
        name = buf + 7;
    } else {
        return cfg_fail(ld, n, "\"%s\" is not one of: client_ip, url, header:NAME, cookie:NAME",
                        buf);
    }
    if (name) {
        if (!cfg_is_token(name))
            return cfg_fail(ld, n, "\"%s\": the name after ':' must be a token", buf);
        p->hash_name = cfg_strndup(ld->box, name, strlen(name));
        if (!p->hash_name)
            return cfg_oom(ld);
        if (p->hash_kind == MOAT_HASH_HEADER)
            for (char *q = p->hash_name; *q; q++)
                *q = (char)tolower((unsigned char)*q);
    }
    return MOAT_OK;
}

const char *const cfg_balance_names[] = {"round_robin", "least_outstanding", "random_two", "hash",
                                         NULL};

static const struct cfg_key queue_keys[] = {
    {.name = "size",
     .type = KT_UINT,
     CFG_AT(struct moat_cfg_pool, queue_size),
     .def = "1000",
     .min = 0,
     .max = 1000000,
     .doc = "requests that may wait for an origin below max_requests (0: none wait; 503 at "
            "once)"},
    {.name = "timeout",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_pool, queue_timeout_ms),
     .def = "15s",
     .min = 1,
     .max = 600000,
     .doc = "a request that waited this long gets 503 with Retry-After"},
};
const struct cfg_table cfg_pool_queue_table = CFG_TABLE(queue_keys, NULL);

static const struct cfg_key passive_keys[] = {
    {.name = "failures",
     .type = KT_UINT,
     CFG_AT(struct moat_cfg_pool, passive_failures),
     .def = "0",
     .min = 0,
     .max = 10000,
     .doc = "consecutive connect failures, timeouts or 5xx that eject an origin (0 = off)"},
    {.name = "eject",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_pool, passive_eject_ms),
     .def = "30s",
     .min = 1,
     .max = DAY_MS,
     .doc = "how long an ejected origin stays out (doubles on repeat, up to 10 times)"},
};
const struct cfg_table cfg_pool_passive_table = CFG_TABLE(passive_keys, NULL);

static const struct cfg_key autoscale_keys[] = {
    {.name = "exec",
     .type = KT_CUSTOM,
     .fn = cfg_k_autoscale_exec,
     .tname = "path",
     .flags = K_REQUIRED,
     .doc = "the command run (with the pool's name and scale_out or scale_in as arguments, "
            "the figures as JSON on stdin) (required)"},
    {.name = "above",
     .type = KT_UINT,
     CFG_AT(struct moat_cfg_pool, autoscale.above),
     .def = "50",
     .min = 1,
     .max = 1000000,
     .doc = "scale out while requests in flight per usable origin stay above this"},
    {.name = "below",
     .type = KT_UINT,
     CFG_AT(struct moat_cfg_pool, autoscale.below),
     .def = "10",
     .min = 0,
     .max = 1000000,
     .doc = "scale in while they stay below this (0: never)"},
    {.name = "for",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_pool, autoscale.for_ms),
     .def = "60s",
     .min = 100,
     .max = DAY_MS,
     .doc = "how long the figure must stay beyond a bound"},
    {.name = "cooldown",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_pool, autoscale.cooldown_ms),
     .def = "5m",
     .min = 0,
     .max = DAY_MS,
     .doc = "no second run sooner than this after one"},
};
static int autoscale_post(struct cfg_ld *ld, struct fy_node *map, void *base)
{
    const struct moat_cfg_pool *p = base;
    if (p->autoscale.below >= p->autoscale.above)
        return cfg_fail(ld, map, "autoscale: below (%u) must be less than above (%u)",
                        p->autoscale.below, p->autoscale.above);
    return MOAT_OK;
}
const struct cfg_table cfg_pool_autoscale_table = CFG_TABLE(autoscale_keys, autoscale_post);

int cfg_k_autoscale_exec(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_pool *p = base;
    char buf[1024];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "a command path") != MOAT_OK)
        return MOAT_ERR;
    p->autoscale.exec = cfg_resolve_path(ld, buf);
    if (!p->autoscale.exec)
        return cfg_oom(ld);
    if (access(p->autoscale.exec, X_OK) != 0)
        return cfg_fail(ld, n, "%s is not an executable file", p->autoscale.exec);
    return MOAT_OK;
}

static const struct cfg_key wroom_keys[] = {
    {.name = "max_active",
     .type = KT_UINT,
     CFG_AT(struct moat_cfg_site, wr_max_active),
     .flags = K_REQUIRED,
     .min = 1,
     .max = 10000000,
     .doc = "visitors admitted at once (required)"},
    {.name = "session",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_site, wr_session_ms),
     .def = "10m",
     .min = 1000,
     .max = DAY_MS,
     .doc = "how long an admitted visitor keeps a place"},
    {.name = "refresh",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_site, wr_refresh_ms),
     .def = "5s",
     .min = 1000,
     .max = 600000,
     .doc = "how often the waiting page reloads itself"},
};
const struct cfg_table cfg_site_wroom_table = CFG_TABLE(wroom_keys, NULL);

/* --- load balancers --------------------------------------------------------------------- */

static const struct moat_cfg_pool *find_pool(const struct moat_config *c, const char *name)
{
    for (size_t i = 0; i < c->npools; i++)
        if (strcmp(c->pools[i].name, name) == 0)
            return &c->pools[i];
    return NULL;
}

static int pool_ref(struct cfg_ld *ld, struct fy_node *n, const struct moat_cfg_pool **out)
{
    char name[128];
    if (cfg_scalar(ld, n, name, sizeof(name), "a pool name") != MOAT_OK)
        return MOAT_ERR;
    *out = find_pool(&ld->box->cfg, name);
    if (!*out)
        return cfg_fail(ld, n, "no pool named \"%s\"", name);
    return MOAT_OK;
}

struct pool_list {
    const struct moat_cfg_pool **pools;
};

static int pool_list_elem(struct cfg_ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    struct pool_list *pl = ud;
    if (pool_ref(ld, n, &pl->pools[idx]) != MOAT_OK)
        return MOAT_ERR;
    for (size_t i = 0; i < idx; i++)
        if (pl->pools[i] == pl->pools[idx])
            return cfg_fail(ld, n, "pool \"%s\" is listed twice", pl->pools[idx]->name);
    return MOAT_OK;
}

static int parse_pool_list(struct cfg_ld *ld, struct fy_node *n, const struct moat_cfg_pool ***out,
                           size_t *count)
{
    size_t cnt;
    if (cfg_each_string(ld, n, &cnt, NULL, NULL, false) != MOAT_OK)
        return MOAT_ERR;
    struct pool_list pl = {cfg_alloc(ld->box, cnt * sizeof(*pl.pools))};
    if (!pl.pools)
        return cfg_oom(ld);
    *out = pl.pools;
    *count = cnt;
    return cfg_each_string(ld, n, &cnt, pool_list_elem, &pl, false);
}

static int k_lb_pools(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_lb *lb = base;
    return parse_pool_list(ld, n, &lb->pools, &lb->npools);
}

static int k_lb_fallback(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_lb *lb = base;
    return pool_ref(ld, n, &lb->fallback);
}

/* Iterates a map's pairs: <fn> per key (as text) and value node. */
typedef int pair_fn(struct cfg_ld *ld, struct fy_node *kn, const char *key, struct fy_node *v,
                    size_t idx, void *ud);
static int each_pair(struct cfg_ld *ld, struct fy_node *n, size_t *count, pair_fn *fn, void *ud)
{
    if (fy_node_get_type(n) != FYNT_MAPPING)
        return cfg_fail(ld, n, "expected a map, got %s", cfg_what(n));
    *count = (size_t)MOAT_MAX(fy_node_mapping_item_count(n), 0);
    if (!fn)
        return MOAT_OK;
    void *it = NULL;
    struct fy_node_pair *pr;
    size_t i = 0;
    while ((pr = fy_node_mapping_iterate(n, &it)) != NULL) {
        struct fy_node *kn = cfg_deref(fy_node_pair_key(pr));
        char key[128];
        if (cfg_scalar(ld, kn, key, sizeof(key), "a key") != MOAT_OK)
            return MOAT_ERR;
        size_t old = cfg_path_push(ld, ".%s", key);
        struct fy_node *v = cfg_deref(fy_node_pair_value(pr));
        ld->cur_key = kn;
        int rc = cfg_is_null(v) ? cfg_fail(ld, kn, "no value given") : fn(ld, kn, key, v, i, ud);
        cfg_path_pop(ld, old);
        if (rc != MOAT_OK)
            return rc;
        i++;
    }
    return MOAT_OK;
}

static int region_pair(struct cfg_ld *ld, struct fy_node *kn, const char *key, struct fy_node *v,
                       size_t idx, void *ud)
{
    struct moat_cfg_lb *lb = ud;
    struct moat_cfg_region *r = &lb->regions[idx];
    if (!lb_valid_name(key))
        return cfg_fail(ld, kn, "a region name is 1 to 64 letters, digits, '-', '_' or '.'");
    r->name = cfg_strndup(ld->box, key, strlen(key));
    if (!r->name)
        return cfg_oom(ld);
    return parse_pool_list(ld, v, &r->pools, &r->npools);
}

static int k_lb_regions(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_lb *lb = base;
    size_t cnt;
    if (each_pair(ld, n, &cnt, NULL, NULL) != MOAT_OK)
        return MOAT_ERR;
    lb->regions = cfg_alloc(ld->box, MOAT_MAX(cnt, (size_t)1) * sizeof(*lb->regions));
    if (!lb->regions)
        return cfg_oom(ld);
    lb->nregions = cnt;
    return each_pair(ld, n, &cnt, region_pair, lb);
}

static char *region_name(struct cfg_ld *ld, struct fy_node *v)
{
    char buf[128];
    if (cfg_scalar(ld, v, buf, sizeof(buf), "a region name") != MOAT_OK)
        return NULL;
    char *s = cfg_strndup(ld->box, buf, strlen(buf));
    if (!s)
        cfg_oom(ld);
    return s;
}

static int country_pair(struct cfg_ld *ld, struct fy_node *kn, const char *key, struct fy_node *v,
                        size_t idx, void *ud)
{
    struct moat_cfg_lb *lb = ud;
    struct moat_cfg_geo_country *gc = &lb->countries[idx];
    if (strlen(key) != 2 || !isalpha((unsigned char)key[0]) || !isalpha((unsigned char)key[1]))
        return cfg_fail(ld, kn, "\"%s\" is not a two-letter ISO 3166 country code", key);
    gc->cc[0] = (char)toupper((unsigned char)key[0]);
    gc->cc[1] = (char)toupper((unsigned char)key[1]);
    gc->region = region_name(ld, v);
    return gc->region ? MOAT_OK : MOAT_ERR;
}

static int k_geo_countries(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n,
                           void *base)
{
    struct moat_cfg_lb *lb = base;
    size_t cnt;
    if (each_pair(ld, n, &cnt, NULL, NULL) != MOAT_OK)
        return MOAT_ERR;
    lb->countries = cfg_alloc(ld->box, MOAT_MAX(cnt, (size_t)1) * sizeof(*lb->countries));
    if (!lb->countries)
        return cfg_oom(ld);
    lb->ncountries = cnt;
    return each_pair(ld, n, &cnt, country_pair, lb);
}

static int cidr_pair(struct cfg_ld *ld, struct fy_node *kn, const char *key, struct fy_node *v,
                     size_t idx, void *ud)
{
    struct moat_cfg_lb *lb = ud;
    char msg[256];
    if (moat_cidr_parse_err(key, &lb->cidrs[idx].cidr, msg, sizeof(msg)) != 0)
        return cfg_fail(ld, kn, "%s", msg);
    lb->cidrs[idx].region = region_name(ld, v);
    return lb->cidrs[idx].region ? MOAT_OK : MOAT_ERR;
}

static int k_geo_cidrs(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_lb *lb = base;
    size_t cnt;
    if (each_pair(ld, n, &cnt, NULL, NULL) != MOAT_OK)
        return MOAT_ERR;
    lb->cidrs = cfg_alloc(ld->box, MOAT_MAX(cnt, (size_t)1) * sizeof(*lb->cidrs));
    if (!lb->cidrs)
        return cfg_oom(ld);
    lb->ncidrs = cnt;
    return each_pair(ld, n, &cnt, cidr_pair, lb);
}

/* geo.mmdb is opened once here so a missing or corrupt database is refused with its line; the
 * runtime opens it again for the snapshot it serves (src/lb/). */
static int k_geo_mmdb(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_lb *lb = base;
    char buf[1024], msg[1200];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "a file path") != MOAT_OK)
        return MOAT_ERR;
    lb->geo_mmdb = cfg_resolve_path(ld, buf);
    if (!lb->geo_mmdb)
        return cfg_oom(ld);
    struct moat_geoip *g = moat_geoip_open(lb->geo_mmdb, msg, sizeof(msg));
    if (!g)
        return cfg_fail(ld, n, "cannot open the MaxMind database %s", msg);
    moat_geoip_close(g);
    return MOAT_OK;
}

static const struct cfg_key geo_keys[] = {
    {.name = "mmdb",
     .type = KT_CUSTOM,
     .fn = k_geo_mmdb,
     .tname = "path",
     .doc = "a MaxMind country database (GeoLite2-Country); none when absent"},
    {.name = "countries",
     .type = KT_CUSTOM,
     .fn = k_geo_countries,
     .tname = "map of country code to region",
     .doc = "ISO 3166 codes to region names"},
    {.name = "cidrs",
     .type = KT_CUSTOM,
     .fn = k_geo_cidrs,
     .tname = "map of CIDR to region",
     .doc = "networks to region names, checked before the database"},
    {.name = "default",
     .type = KT_STRING,
     CFG_AT(struct moat_cfg_lb, geo_default),
     .doc = "the region when neither the networks nor the database place a client"},
};
static const struct cfg_table geo_table = CFG_TABLE(geo_keys, NULL);

static const struct cfg_key affinity_keys[] = {
    {.name = "cookie",
     .type = KT_STRING,
     CFG_AT(struct moat_cfg_lb, affinity_cookie),
     .doc = "the name of a signed cookie that keeps a client on its origin"},
    {.name = "ttl",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_lb, affinity_ttl_ms),
     .def = "1h",
     .min = 1000,
     .max = 365 * DAY_MS,
     .doc = "the cookie's Max-Age"},
    {.name = "key",
     .type = KT_STRING,
     CFG_AT(struct moat_cfg_lb, affinity_key),
     .doc = "the cookie's HMAC key (default: random at start; set it to keep cookies valid "
            "across restarts)"},
    {.name = "client_ip",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_lb, affinity_client_ip),
     .def = "false",
     .names = cfg_bool_names,
     .doc = "keep a client on an origin by hashing its address instead of a cookie"},
};
static const struct cfg_table affinity_table = CFG_TABLE(affinity_keys, NULL);

static const char *const steering_names[] = {"failover",          "random", "geo", "latency",
                                             "least_outstanding", NULL};

/* A region named by geo is one of regions:, or a pool's name (then that pool first). */
static int check_region(struct cfg_ld *ld, struct fy_node *map, const struct moat_cfg_lb *lb,
                        const char *region, const char *where)
{
    for (size_t i = 0; i < lb->nregions; i++)
        if (strcmp(lb->regions[i].name, region) == 0)
            return MOAT_OK;
    if (find_pool(&ld->box->cfg, region))
        return MOAT_OK;
    size_t old = cfg_path_push(ld, "%s", where);
    cfg_fail(ld, map, "\"%s\" is neither a region under regions: nor a pool", region);
    cfg_path_pop(ld, old);
    return MOAT_ERR;
}

static int lb_post(struct cfg_ld *ld, struct fy_node *map, void *base)
{
    struct moat_cfg_lb *lb = base;
    if (lb->affinity_cookie && lb->affinity_client_ip)
        return cfg_fail(ld, map, "affinity: give cookie or client_ip, not both");
    if (lb->affinity_cookie && !cfg_is_token(lb->affinity_cookie))
        return cfg_fail(ld, map, "affinity.cookie: \"%s\" is not a valid cookie name",
                        lb->affinity_cookie);
    for (size_t i = 0; i < lb->ncountries; i++)
        if (check_region(ld, map, lb, lb->countries[i].region, ".geo.countries") != MOAT_OK)
            return MOAT_ERR;
    for (size_t i = 0; i < lb->ncidrs; i++)
        if (check_region(ld, map, lb, lb->cidrs[i].region, ".geo.cidrs") != MOAT_OK)
            return MOAT_ERR;
    if (lb->geo_default && check_region(ld, map, lb, lb->geo_default, ".geo.default") != MOAT_OK)
        return MOAT_ERR;
    if (lb->steering == MOAT_STEER_GEO && !lb->geo_default && !lb->ncidrs && !lb->ncountries)
        return cfg_fail(ld, map, "steering: geo needs geo.cidrs, geo.countries or geo.default");
    return MOAT_OK;
}

static const struct cfg_key lb_keys[] = {
    {.name = "pools",
     .type = KT_CUSTOM,
     .fn = k_lb_pools,
     .tname = "list of pool names",
     .flags = K_REQUIRED,
     .doc = "the pools, in order of preference (required)"},
    {.name = "fallback",
     .type = KT_CUSTOM,
     .fn = k_lb_fallback,
     .tname = "pool name",
     .doc = "the pool used when every pool is down (none when absent)"},
    {.name = "steering",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_lb, steering),
     .def = "failover",
     .names = steering_names,
     .doc = "how a pool is chosen: failover, random, geo, latency, least_outstanding"},
    {.name = "regions",
     .type = KT_CUSTOM,
     .fn = k_lb_regions,
     .tname = "map of region to pool list",
     .doc = "for geo: a region's pools in order of preference"},
    {.name = "geo",
     .type = KT_MAP,
     .sub = &geo_table,
     .sub_sep = ".",
     .flags = K_PRESENCE,
     .doc = "for geo: how a client's address maps to a region"},
    {.name = "affinity",
     .type = KT_MAP,
     .sub = &affinity_table,
     .sub_sep = ".",
     .flags = K_PRESENCE,
     .doc = "session affinity (off when absent)"},
    {.name = "retries",
     .type = KT_UINT,
     CFG_AT(struct moat_cfg_lb, retries),
     .def = "2",
     .min = 0,
     .max = 10,
     .doc = "tries on other origins after a failure that is safe to retry"},
};
const struct cfg_table cfg_lb_table = CFG_TABLE(lb_keys, lb_post);

int cfg_k_lbs(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    void *arr = NULL;
    int rc = named_map(ld, n, "load balancer", &cfg_lb_table, sizeof(struct moat_cfg_lb), &arr,
                       &c->nlbs);
    c->lbs = arr;
    return rc;
}

/* sites[].load_balancer: instead of pool; the site's pool is then the balancer's first, whose
 * timeouts apply where a request has no origin yet (waiting on the cache). */
int cfg_k_site_lb(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_site *site = base;
    const struct moat_config *c = &ld->box->cfg;
    char name[128];
    if (cfg_scalar(ld, n, name, sizeof(name), "a load balancer name") != MOAT_OK)
        return MOAT_ERR;
    if (site->pool)
        return cfg_fail(ld, n, "give pool or load_balancer, not both");
    for (size_t i = 0; i < c->nlbs; i++) {
        if (strcmp(c->lbs[i].name, name) == 0) {
            site->lb = &c->lbs[i];
            site->pool = (struct moat_cfg_pool *)c->lbs[i].pools[0];
            return MOAT_OK;
        }
    }
    return cfg_fail(ld, n, "no load balancer named \"%s\" (define it under load_balancers:)", name);
}
