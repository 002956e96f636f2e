/* cfg_sites.c: the directive tables of sites, their hosts and cache rules (sites[]), and the
 * host index that moat_config_site searches. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>

#include "config/config-int.h"

/* The host index being built while the sites are parsed (ld->ctx during cfg_k_sites): the
 * site rows themselves parse into the site, like any other table. */
struct site_index {
    size_t site_idx;           /* the site being parsed */
    struct cfg_host_ent *ents; /* all hosts of all sites, filled as parsed */
    size_t nents;
};

static bool valid_site_host(const char *h)
{
    if (strcmp(h, "*") == 0)
        return true;
    if (h[0] == '*') {
        if (h[1] != '.' || !h[2])
            return false;
        h += 2;
    }
    if (h[0] == '[') { /* IPv6 literal as it appears in Host */
        size_t n = strlen(h);
        if (n < 3 || h[n - 1] != ']')
            return false;
        for (size_t i = 1; i + 1 < n; i++)
            if (!isxdigit((unsigned char)h[i]) && h[i] != ':' && h[i] != '.')
                return false;
        return true;
    }
    if (!*h || *h == '.' || *h == '-' || strlen(h) > 253)
        return false;
    for (; *h; h++)
        if (!isalnum((unsigned char)*h) && *h != '-' && *h != '.' && *h != '_')
            return false;
    return true;
}

static int host_elem(struct cfg_ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    struct moat_cfg_site *site = ud;
    struct site_index *si = ld->ctx;
    char buf[300];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "a host name") != MOAT_OK)
        return MOAT_ERR;
    size_t len = strlen(buf);
    for (size_t i = 0; i < len; i++)
        buf[i] = (char)tolower((unsigned char)buf[i]);
    if (len > 1 && buf[len - 1] == '.') /* "example.com." is "example.com" */
        buf[--len] = '\0';
    if (!valid_site_host(buf)) {
        if (buf[0] != '[' && strchr(buf, ':'))
            return cfg_fail(ld, n, "\"%s\": hosts are names without a port", buf);
        return cfg_fail(
            ld, n, "\"%s\" is not a host name (use e.g. shop.example, *.shop.example or *)", buf);
    }
    char *s = cfg_strndup(ld->box, buf, len);
    if (!s)
        return cfg_oom(ld);
    site->hosts[idx] = s;
    struct cfg_host_ent *e = &si->ents[si->nents++];
    e->name = s;
    e->len = len;
    e->site_idx = si->site_idx;
    cfg_node_pos(ld, n, &e->line, &e->col);
    return MOAT_OK;
}

static int k_hosts(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_site *site = base;
    struct site_index *si = ld->ctx;
    size_t cnt;
    if (cfg_each_string(ld, n, &cnt, NULL, NULL, false) != MOAT_OK)
        return MOAT_ERR;
    site->hosts = cfg_alloc(ld->box, cnt * sizeof(char *));
    struct cfg_host_ent *ne = cfg_alloc(ld->box, (si->nents + cnt) * sizeof(*ne));
    if (!site->hosts || !ne)
        return cfg_oom(ld);
    /* The entry array grows per site; the arena keeps the old copy, which costs a little
     * memory at load time but keeps the allocator trivial. */
    if (si->nents)
        memcpy(ne, si->ents, si->nents * sizeof(*ne));
    si->ents = ne;
    site->nhosts = cnt;
    return cfg_each_string(ld, n, &cnt, host_elem, site, false);
}

static int k_site_pool(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_site *site = base;
    const struct moat_config *c = &ld->box->cfg;
    char name[128], list[256];
    if (cfg_scalar(ld, n, name, sizeof(name), "a pool name") != MOAT_OK)
        return MOAT_ERR;
    size_t used = 0;
    list[0] = '\0';
    for (size_t i = 0; i < c->npools; i++) {
        if (strcmp(c->pools[i].name, name) == 0) {
            site->pool = &c->pools[i];
            return MOAT_OK;
        }
        used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%s", i ? ", " : "",
                                 c->pools[i].name);
        used = MOAT_MIN(used, sizeof(list) - 1);
    }
    if (c->npools == 0)
        return cfg_fail(ld, n, "no pool named \"%s\" (no pools are defined)", name);
    return cfg_fail(ld, n, "no pool named \"%s\" (defined: %s)", name, list);
}

int cfg_k_rule_methods(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    static const char *const names[] = {"",       "GET",     "HEAD",  "POST",    "PUT",
                                        "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"};
    struct moat_cfg_rule *r = base;
    size_t cnt;
    if (cfg_each_string(ld, n, &cnt, NULL, NULL, false) != MOAT_OK)
        return MOAT_ERR;
    struct fy_node *one = fy_node_get_type(n) == FYNT_SCALAR ? n : NULL;
    void *it = NULL;
    for (size_t i = 0; i < cnt; i++) {
        struct fy_node *e = one ? one : cfg_deref(fy_node_sequence_iterate(n, &it));
        char buf[16];
        if (cfg_scalar(ld, e, buf, sizeof buf, "a method name") != MOAT_OK)
            return MOAT_ERR;
        size_t m = 1;
        while (m < MOAT_ARRAY_LEN(names) && strcmp(buf, names[m]))
            m++;
        if (m == MOAT_ARRAY_LEN(names))
            return cfg_fail(ld, e,
                            "\"%s\" is not a method moat matches on (GET, HEAD, POST, PUT, "
                            "DELETE, OPTIONS, PATCH, TRACE)",
                            buf);
        r->methods |= 1u << m;
    }
    return MOAT_OK;
}

int cfg_k_rule_path(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_rule *r = base;
    char buf[1024];
    if (cfg_scalar(ld, n, buf, sizeof buf, "a path glob") != MOAT_OK)
        return MOAT_ERR;
    if (buf[0] != '/' && buf[0] != '*')
        return cfg_fail(ld, n, "\"%s\" must start with / or * (it matches the request path)", buf);
    r->path = cfg_strndup(ld->box, buf, strlen(buf));
    return r->path ? MOAT_OK : cfg_oom(ld);
}

/* match.header / match.cookie: a name that is not a token could never match (a typo would
 * silently turn the rule off), so it is refused like key.headers / key.cookies. */
static int rule_token(struct cfg_ld *ld, struct fy_node *n, char **out, const char *what_)
{
    char buf[128];
    if (cfg_scalar(ld, n, buf, sizeof buf, what_) != MOAT_OK)
        return MOAT_ERR;
    if (!cfg_is_token(buf))
        return cfg_fail(ld, n, "\"%s\" is not %s (letters, digits and !#$%%&'*+-.^_`|~)", buf,
                        what_);
    *out = cfg_strndup(ld->box, buf, strlen(buf));
    return *out ? MOAT_OK : cfg_oom(ld);
}

int cfg_k_rule_header(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    return rule_token(ld, n, &((struct moat_cfg_rule *)base)->header, "a header field name");
}

int cfg_k_rule_cookie(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    return rule_token(ld, n, &((struct moat_cfg_rule *)base)->cookie, "a cookie name");
}

static const struct cfg_key rule_match_keys[] = {
    {.name = "path",
     .type = KT_CUSTOM,
     .fn = cfg_k_rule_path,
     .tname = "glob",
     .doc = "the request path matches this glob (* any run of bytes, ? one byte)"},
    {.name = "methods",
     .type = KT_CUSTOM,
     .fn = cfg_k_rule_methods,
     .tname = "method or list",
     .doc = "the request method is one of these"},
    {.name = "query",
     .type = KT_STRING,
     CFG_AT(struct moat_cfg_rule, query),
     .doc = "the query string has this parameter"},
    {.name = "header",
     .type = KT_CUSTOM,
     .fn = cfg_k_rule_header,
     .tname = "header field name",
     .doc = "the request has this header field"},
    {.name = "cookie",
     .type = KT_CUSTOM,
     .fn = cfg_k_rule_cookie,
     .tname = "cookie name",
     .doc = "the request has this cookie"},
};
static const struct cfg_table rule_match_table = CFG_TABLE(rule_match_keys, NULL);

static const char *const cache_mode_names[] = {"standard", "bypass", "everything", NULL};
static const char *const key_query_names[] = {"all", "ignore", "sort", NULL};
static const char *const origin_no_cache_names[] = {"respect", "ignore", NULL};
static const char *const set_cookie_names[] = {"refuse", "strip", NULL};

/* key.headers / key.cookies: names that go into cache keys, so they must be exactly what can
 * appear on the wire: a header field name or a cookie name is a token (RFC 9110 5.1,
 * RFC 6265 4.1.1). Header names are case-insensitive and kept lowercase; cookie names are
 * case-sensitive and kept as given. A name listed twice would only lengthen every key. */
struct key_names_ctx {
    struct moat_str *names;
    uint8_t *n;
    bool header;
};

static int key_name_elem(struct cfg_ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    struct key_names_ctx *kc = ud;
    const char *what_ = kc->header ? "a header field name" : "a cookie name";
    char buf[128];
    if (cfg_scalar(ld, n, buf, sizeof buf, what_) != MOAT_OK)
        return MOAT_ERR;
    if (!cfg_is_token(buf))
        return cfg_fail(ld, n, "\"%s\" is not %s (letters, digits and !#$%%&'*+-.^_`|~)", buf,
                        what_);
    size_t len = strlen(buf);
    if (kc->header)
        for (size_t i = 0; i < len; i++)
            buf[i] = (char)tolower((unsigned char)buf[i]);
    for (size_t i = 0; i < idx; i++)
        if (kc->names[i].len == len && !memcmp(kc->names[i].ptr, buf, len))
            return cfg_fail(ld, n, "\"%s\" is listed twice%s", buf,
                            kc->header ? " (header names ignore case)" : "");
    char *s = cfg_strndup(ld->box, buf, len);
    if (!s)
        return cfg_oom(ld);
    kc->names[idx] = moat_str_make(s, len);
    *kc->n = (uint8_t)(idx + 1);
    return MOAT_OK;
}

static int key_names(struct cfg_ld *ld, struct fy_node *n, struct key_names_ctx *kc)
{
    size_t cnt;
    if (cfg_each_string(ld, n, &cnt, NULL, NULL, true) != MOAT_OK)
        return MOAT_ERR;
    if (cnt > MOAT_KEY_FIELDS_MAX)
        return cfg_fail(ld, n, "at most %d %s (got %zu)", MOAT_KEY_FIELDS_MAX,
                        kc->header ? "header fields" : "cookies", cnt);
    return cfg_each_string(ld, n, &cnt, key_name_elem, kc, true);
}

static int k_key_headers(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_rule *r = base;
    struct key_names_ctx kc = {r->key_headers, &r->nkey_headers, true};
    return key_names(ld, n, &kc);
}

static int k_key_cookies(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_rule *r = base;
    struct key_names_ctx kc = {r->key_cookies, &r->nkey_cookies, false};
    return key_names(ld, n, &kc);
}

static const struct cfg_key rule_key_keys[] = {
    {.name = "query",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_rule, key_query),
     .def = "all",
     .names = key_query_names,
     .doc = "the query string in the cache key: as sent, ignored, or parameters sorted"},
    {.name = "headers",
     .type = KT_CUSTOM,
     .fn = k_key_headers,
     .tname = "header name or list (at most 8)",
     .doc = "request header fields whose values are part of the cache key"},
    {.name = "cookies",
     .type = KT_CUSTOM,
     .fn = k_key_cookies,
     .tname = "cookie name or list (at most 8)",
     .doc = "cookies whose values are part of the cache key"},
};
static const struct cfg_table rule_key_table = CFG_TABLE(rule_key_keys, NULL);

static const struct cfg_key rule_keys[] = {
    {.name = "match",
     .type = KT_MAP,
     .sub = &rule_match_table,
     .sub_sep = ".",
     .doc = "conditions, all of which must hold (none: every request)"},
    {.name = "cache",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_rule, mode),
     .def = "standard",
     .names = cache_mode_names,
     .doc = "standard (obey the origin), bypass, or everything (store whatever the origin says)"},
    {.name = "edge_ttl",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_rule, edge_ttl_ms),
     .def = "0",
     .min = 0,
     .max = 365 * 86400000ull,
     .doc = "how long moat keeps answers fresh, overriding the origin (0: the origin's)"},
    {.name = "browser_ttl",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_rule, browser_ttl_ms),
     .def = "0",
     .min = 0,
     .max = 365 * 86400000ull,
     .doc = "Cache-Control: max-age that clients see (0: the origin's Cache-Control)"},
    {.name = "stale_if_error",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_rule, stale_if_error_ms),
     .def = "0",
     .min = 0,
     .max = 365 * 86400000ull,
     .doc = "serve a stale copy this long past its freshness when the origin fails"},
    {.name = "origin_no_cache",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_rule, origin_no_cache),
     .def = "respect",
     .names = origin_no_cache_names,
     .doc = "the origin's Cache-Control: no-cache: revalidate on every use (respect), or "
            "serve for the answer's lifetime (ignore)"},
    {.name = "set_cookie",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_rule, set_cookie),
     .def = "refuse",
     .names = set_cookie_names,
     .doc = "a response with Set-Cookie: never stored (refuse), or stored without its "
            "Set-Cookie fields (strip)"},
    {.name = "key",
     .type = KT_MAP,
     .sub = &rule_key_table,
     .sub_sep = ".",
     .doc = "cache key options"},
};
static const struct cfg_table rule_table = CFG_TABLE(rule_keys, NULL);

static int k_rules(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_site *site = base;
    if (cfg_is_null(n) || fy_node_get_type(n) != FYNT_SEQUENCE)
        return cfg_fail(ld, n, "expected a list of rules, got %s", cfg_what(n));
    size_t cnt = (size_t)MOAT_MAX(fy_node_sequence_item_count(n), 0);
    site->rules = cfg_alloc(ld->box, (cnt ? cnt : 1) * sizeof(*site->rules));
    if (!site->rules)
        return cfg_oom(ld);
    void *it = NULL;
    struct fy_node *e;
    size_t i = 0;
    while ((e = fy_node_sequence_iterate(n, &it)) != NULL) {
        size_t old = cfg_path_push(ld, "[%zu]", i);
        struct fy_node *v = cfg_deref(e);
        int rc;
        if (cfg_is_null(v) || fy_node_get_type(v) != FYNT_MAPPING)
            rc = cfg_fail(ld, v, "expected a rule ({ match: {...}, cache: ... }), got %s",
                          cfg_what(v));
        else
            rc = cfg_walk(ld, &rule_table, v, &site->rules[i], false);
        cfg_path_pop(ld, old);
        if (rc != MOAT_OK)
            return rc;
        i++;
    }
    site->nrules = i;
    return MOAT_OK;
}

/* --- https and upgrades (sites[].https, sites[].upgrades) ------------------------------------ */

static bool any_tls_listener(const struct moat_config *c)
{
    for (size_t i = 0; i < c->nlisten; i++)
        if (c->listen[i].tls)
            return true;
    return false;
}

/* Settings that could never take effect are refused rather than ignored: a redirect or HSTS
 * with no https:// listener to send clients to, HSTS options without a max-age, and the
 * preload flag on a policy the preload list (hstspreload.org) would turn down, which only
 * asks browsers for something that will not happen. */
static int https_post(struct cfg_ld *ld, struct fy_node *map, void *base)
{
    const struct moat_cfg_site *s = base;
    bool tls = any_tls_listener(&ld->box->cfg);
    const char *key, *msg;
    if (s->https_redirect && !tls) {
        key = "redirect";
        msg = "needs a listener with tls: true (there is no https:// to redirect to)";
    } else if (s->hsts_ms && !tls) {
        key = "hsts";
        msg = "needs a listener with tls: true (Strict-Transport-Security is only sent over "
              "https)";
    } else if (s->hsts_subdomains && !s->hsts_ms) {
        key = "hsts_subdomains";
        msg = "has no effect without hsts (a max-age, e.g. hsts: 365d)";
    } else if (s->hsts_preload && !s->hsts_ms) {
        key = "hsts_preload";
        msg = "has no effect without hsts (a max-age, e.g. hsts: 365d)";
    } else if (s->hsts_preload && (s->hsts_ms < 365 * DAY_MS || !s->hsts_subdomains)) {
        key = "hsts_preload";
        msg = "the preload list takes only hsts: 365d or more with hsts_subdomains: true "
              "(hstspreload.org)";
    } else {
        return MOAT_OK;
    }
    struct fy_node *n = cfg_map_lookup(map, key);
    size_t old = cfg_path_push(ld, ".%s", key);
    cfg_fail(ld, n ? n : map, "%s", msg);
    cfg_path_pop(ld, old);
    return MOAT_ERR;
}

static const struct cfg_key https_keys[] = {
    {.name = "redirect",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_site, https_redirect),
     .def = "false",
     .names = cfg_bool_names,
     .doc = "answer plain-http requests with a redirect to https:// (301 for GET and HEAD, 308 "
            "otherwise)"},
    {.name = "hsts",
     .type = KT_DURATION,
     CFG_AT(struct moat_cfg_site, hsts_ms),
     .def = "0",
     .min = 0,
     .max = 730 * DAY_MS,
     .doc = "Strict-Transport-Security max-age sent on https answers; 0 = none"},
    {.name = "hsts_subdomains",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_site, hsts_subdomains),
     .def = "false",
     .names = cfg_bool_names,
     .doc = "add includeSubDomains to Strict-Transport-Security"},
    {.name = "hsts_preload",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_site, hsts_preload),
     .def = "false",
     .names = cfg_bool_names,
     .doc = "add preload to Strict-Transport-Security (needs hsts: 365d or more and "
            "hsts_subdomains)"},
    {.name = "same_cache",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_site, https_same_cache),
     .def = "false",
     .names = cfg_bool_names,
     .doc = "http and https requests share cache objects (the cache key leaves the scheme out)"},
};
static const struct cfg_table https_table = CFG_TABLE(https_keys, https_post);

/* Upgrade tokens (RFC 9110 7.8) the origin may be offered. h2c is refused outright: a proxy
 * that forwards "Upgrade: h2c" and then relays the origin's 101 as an opaque tunnel hands the
 * client an HTTP/2 connection to the origin on which no further request passes through
 * moat's routing, rules or limits (h2c request smuggling). */
static int upgrade_elem(struct cfg_ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    struct moat_cfg_site *s = ud;
    char buf[64];
    if (cfg_scalar(ld, n, buf, sizeof buf, "a protocol name") != MOAT_OK)
        return MOAT_ERR;
    if (!cfg_is_token(buf))
        return cfg_fail(ld, n,
                        "\"%s\" is not a protocol name (a token: letters, digits and "
                        "!#$%%&'*+-.^_`|~)",
                        buf);
    size_t len = strlen(buf);
    for (size_t i = 0; i < len; i++)
        buf[i] = (char)tolower((unsigned char)buf[i]);
    if (!strcmp(buf, "h2c"))
        return cfg_fail(ld, n,
                        "h2c is never forwarded: it would let a client speak HTTP/2 to the origin "
                        "past every rule moat enforces");
    for (size_t i = 0; i < idx; i++)
        if (!strcmp(s->upgrades[i], buf))
            return cfg_fail(ld, n, "\"%s\" is listed twice (protocol names ignore case)", buf);
    if (!(s->upgrades[idx] = cfg_strndup(ld->box, buf, len)))
        return cfg_oom(ld);
    s->nupgrades = idx + 1;
    return MOAT_OK;
}

static int k_upgrades(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_site *s = base;
    size_t cnt;
    if (cfg_each_string(ld, n, &cnt, NULL, NULL, true) != MOAT_OK)
        return MOAT_ERR;
    s->upgrades = cfg_alloc(ld->box, MOAT_MAX(cnt, (size_t)1) * sizeof(*s->upgrades));
    if (!s->upgrades)
        return cfg_oom(ld);
    s->nupgrades = 0;
    return cfg_each_string(ld, n, &cnt, upgrade_elem, s, true);
}

/* --- the site table -------------------------------------------------------------------------- */

static const struct cfg_key site_keys[] = {
    {.name = "hosts",
     .type = KT_CUSTOM,
     .fn = k_hosts,
     .tname = "host name or list",
     .flags = K_REQUIRED,
     .doc = "names this site answers: exact, \"*.suffix\" or \"*\" (required)"},
    {.name = "pool",
     .type = KT_CUSTOM,
     .fn = k_site_pool,
     .tname = "pool name",
     .doc = "the pool requests for this site go to (this or load_balancer is required)"},
    {.name = "load_balancer",
     .type = KT_CUSTOM,
     .fn = cfg_k_site_lb,
     .tname = "load balancer name",
     .doc = "the load balancer requests for this site go to, instead of pool"},
    {.name = "waiting_room",
     .type = KT_MAP,
     .sub = &cfg_site_wroom_table,
     .sub_sep = ".",
     .flags = K_PRESENCE,
     .doc = "beyond max_active visitors, browsers wait on a page in arrival order (off when "
            "absent)"},
    {.name = "rules",
     .type = KT_CUSTOM,
     .fn = k_rules,
     .sub = &rule_table,
     .sub_sep = "[].",
     .tname = "list of rules",
     .doc = "cache rules; the first whose match fits a request applies"},
    {.name = "https",
     .type = KT_MAP,
     .sub = &https_table,
     .sub_sep = ".",
     .doc = "redirects to https:// and HSTS for this site"},
    {.name = "upgrades",
     .type = KT_CUSTOM,
     .fn = k_upgrades,
     .tname = "protocol name or list",
     .def = "[websocket]",
     .doc = "Upgrade protocols forwarded to the origin ([] = none; h2c is refused)"},
    {.name = "tls",
     .type = KT_CUSTOM,
     .fn = cfg_k_site_tls,
     .tname = "acme",
     .doc = "acme: the hosts' certificate is obtained from tls.acme (no wildcards)"},
    {.name = "under_attack",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_site, under_attack),
     .def = "off",
     .names = cfg_under_attack_names,
     .doc = "the browser challenge for every visitor: off, on, or auto (shield.auto decides)"},
    {.name = "challenge_exempt",
     .type = KT_CUSTOM,
     .fn = cfg_k_challenge_exempt,
     .tname = "path glob or list",
     .def = "[]",
     .doc = "paths never challenged (API clients, websockets); still rate-limited"},
};
/* A site needs pool or load_balancer. Its runtime state (the shield's counters,
 * under-attack switch) is keyed by its first host name, which survives reloads (FNV-1a: load
 * time only). */
static int site_post(struct cfg_ld *ld, struct fy_node *map, void *base)
{
    struct moat_cfg_site *s = base;
    if (!s->pool)
        return cfg_fail(ld, map, "a site needs pool: NAME or load_balancer: NAME");
    uint64_t h = 1469598103934665603ull;
    for (const char *p = s->nhosts ? s->hosts[0] : ""; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    s->shield_id = h ? h : 1;
    return MOAT_OK;
}
const struct cfg_table cfg_site_table = CFG_TABLE(site_keys, site_post);

static int cmp_ent(const void *a, const void *b)
{
    const struct cfg_host_ent *x = a, *y = b;
    int r = memcmp(x->name, y->name, MOAT_MIN(x->len, y->len));
    if (r)
        return r;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    /* Equal names: document order, so the duplicate reported is the later one. */
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return x->col < y->col ? -1 : x->col > y->col;
}

/* Splits the parsed hosts into the exact and suffix indexes and refuses a host given twice:
 * with first-match semantics the second one could never be reached. */
static int build_site_index(struct cfg_ld *ld, struct cfg_host_ent *ents, size_t n)
{
    struct cfg_box *b = ld->box;
    struct moat_config *c = &b->cfg;
    qsort(ents, n, sizeof(*ents), cmp_ent);
    for (size_t i = 1; i < n; i++) {
        if (ents[i].len == ents[i - 1].len &&
            !memcmp(ents[i].name, ents[i - 1].name, ents[i].len)) {
            char msg[MOAT_CONFIG_ERRLEN];
            snprintf(msg, sizeof(msg),
                     "%s:%d:%d: sites[%zu].hosts: \"%s\" is already used by sites[%zu] (line "
                     "%d, column %d)",
                     ld->name ? ld->name : "moat", ents[i].line, ents[i].col, ents[i].site_idx,
                     ents[i].name, ents[i - 1].site_idx, ents[i - 1].line, ents[i - 1].col);
            ld->failed = true;
            snprintf(ld->err, ld->errlen, "%s", msg);
            return MOAT_ERR;
        }
    }
    for (size_t i = 0; i < n; i++) {
        ents[i].site = &c->sites[ents[i].site_idx];
        if (ents[i].len == 1 && ents[i].name[0] == '*')
            b->star = ents[i].site;
        else if (ents[i].name[0] == '*')
            b->nsuffix++;
        else
            b->nexact++;
    }
    b->exact = cfg_alloc(b, MOAT_MAX(b->nexact, (size_t)1) * sizeof(*b->exact));
    b->suffix = cfg_alloc(b, MOAT_MAX(b->nsuffix, (size_t)1) * sizeof(*b->suffix));
    if (!b->exact || !b->suffix)
        return cfg_oom(ld);
    size_t ne = 0, ns = 0;
    for (size_t i = 0; i < n; i++) {
        if (ents[i].len == 1 && ents[i].name[0] == '*')
            continue;
        if (ents[i].name[0] == '*') {
            b->suffix[ns] = ents[i];
            b->suffix[ns].name++; /* keep ".example.com" */
            b->suffix[ns].len--;
            ns++;
        } else {
            b->exact[ne++] = ents[i];
        }
    }
    return MOAT_OK;
}

int cfg_k_sites(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    if (cfg_is_null(n) || fy_node_get_type(n) != FYNT_SEQUENCE)
        return cfg_fail(ld, n, "expected a list of sites, got %s", cfg_what(n));
    size_t cnt = (size_t)MOAT_MAX(fy_node_sequence_item_count(n), 0);
    if (cnt == 0)
        return cfg_fail(ld, n, "at least one site is needed");
    c->sites = cfg_alloc(ld->box, cnt * sizeof(*c->sites));
    if (!c->sites)
        return cfg_oom(ld);
    struct site_index si = {0};
    void *it = NULL;
    struct fy_node *e;
    int rc = MOAT_OK;
    ld->ctx = &si;
    while ((e = fy_node_sequence_iterate(n, &it)) != NULL) {
        size_t old = cfg_path_push(ld, "[%zu]", si.site_idx);
        struct fy_node *v = cfg_deref(e);
        if (cfg_is_null(v) || fy_node_get_type(v) != FYNT_MAPPING)
            rc = cfg_fail(ld, v, "expected a site ({ hosts: [...], pool: NAME }), got %s",
                          cfg_what(v));
        else
            rc = cfg_walk(ld, &cfg_site_table, v, &c->sites[si.site_idx], false);
        cfg_path_pop(ld, old);
        if (rc != MOAT_OK)
            break;
        si.site_idx++;
        c->nsites = si.site_idx;
    }
    ld->ctx = NULL;
    return rc == MOAT_OK ? build_site_index(ld, si.ents, si.nents) : rc;
}
