/* cfg_shield.c: the directive tables of shield (rate limits, connection limits, access rules,
 * the challenge, auto mode) and the sites' under_attack / challenge_exempt values. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config-int.h"

const char *const cfg_under_attack_names[] = {"off", "on", "auto", NULL};
static const char *const rl_action_names[] = {"block", "challenge", "drop", NULL};
static const char *const acl_action_names[] = {"block", "challenge", "drop", "allow", NULL};
static const char *const count_names[] = {"all", "origin", NULL};

/* --- match: hosts, cidr, country --------------------------------------------------------- */

void moat_cidr_range(const struct moat_cidr *c, struct moat_ip_range *r)
{
    for (unsigned i = 0; i < 16; i++) {
        unsigned bits = c->prefix > i * 8 ? MOAT_MIN(c->prefix - i * 8, 8u) : 0;
        uint8_t mask = (uint8_t)(bits ? 0xff << (8 - bits) : 0);
        r->lo[i] = c->addr[i] & mask;
        r->hi[i] = (uint8_t)(c->addr[i] | ~mask);
    }
}

static int host_elem(struct cfg_ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    struct moat_cfg_smatch *m = ud;
    char buf[256];
    if (cfg_scalar(ld, n, buf, sizeof buf, "a host name") != MOAT_OK)
        return MOAT_ERR;
    for (char *p = buf; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    if (!buf[0] || strchr(buf, ':') || strchr(buf, '/') || strchr(buf, ' '))
        return cfg_fail(ld, n, "\"%s\" is not a host name (without a port)", buf);
    return (m->hosts[idx] = cfg_strndup(ld->box, buf, strlen(buf))) ? MOAT_OK : cfg_oom(ld);
}

static int k_hosts(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_smatch *m = base;
    size_t cnt;
    if (cfg_each_string(ld, n, &cnt, NULL, NULL, false) != MOAT_OK)
        return MOAT_ERR;
    if (!(m->hosts = cfg_alloc(ld->box, cnt * sizeof(char *))))
        return cfg_oom(ld);
    m->nhosts = cnt;
    return cfg_each_string(ld, n, &cnt, host_elem, m, false);
}

static int cidr_elem(struct cfg_ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    struct moat_cfg_smatch *m = ud;
    char buf[128], err[128];
    struct moat_cidr c;
    if (cfg_scalar(ld, n, buf, sizeof buf, "a CIDR") != MOAT_OK)
        return MOAT_ERR;
    if (moat_cidr_parse_err(buf, &c, err, sizeof err) != 0)
        return cfg_fail(ld, n, "%s", err);
    moat_cidr_range(&c, &m->ranges[idx]);
    return MOAT_OK;
}

static int cmp_range(const void *a, const void *b)
{
    return memcmp(((const struct moat_ip_range *)a)->lo, ((const struct moat_ip_range *)b)->lo, 16);
}

/* The CIDRs become sorted, merged ranges: a request costs one binary search whatever the
 * length of the list (a list of 10,000 blocks is 14 compares, not 10,000). */
static int k_cidr(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_smatch *m = base;
    size_t cnt;
    if (cfg_each_string(ld, n, &cnt, NULL, NULL, false) != MOAT_OK)
        return MOAT_ERR;
    if (!(m->ranges = cfg_alloc(ld->box, cnt * sizeof(*m->ranges))))
        return cfg_oom(ld);
    if (cfg_each_string(ld, n, &cnt, cidr_elem, m, false) != MOAT_OK)
        return MOAT_ERR;
    qsort(m->ranges, cnt, sizeof(*m->ranges), cmp_range);
    size_t out = 0;
    for (size_t i = 0; i < cnt; i++) {
        if (out && memcmp(m->ranges[i].lo, m->ranges[out - 1].hi, 16) <= 0) {
            if (memcmp(m->ranges[i].hi, m->ranges[out - 1].hi, 16) > 0)
                memcpy(m->ranges[out - 1].hi, m->ranges[i].hi, 16);
            continue;
        }
        m->ranges[out++] = m->ranges[i];
    }
    m->nranges = out;
    return MOAT_OK;
}

static int country_elem(struct cfg_ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    struct moat_cfg_smatch *m = ud;
    char buf[8];
    if (cfg_scalar(ld, n, buf, sizeof buf, "a country code") != MOAT_OK)
        return MOAT_ERR;
    if (strlen(buf) != 2 || !isalpha((unsigned char)buf[0]) || !isalpha((unsigned char)buf[1]))
        return cfg_fail(ld, n, "\"%s\" is not a two-letter country code (ISO 3166-1, e.g. DE)",
                        buf);
    m->countries[idx][0] = (char)toupper((unsigned char)buf[0]);
    m->countries[idx][1] = (char)toupper((unsigned char)buf[1]);
    m->countries[idx][2] = 0;
    return MOAT_OK;
}

static int k_country(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_smatch *m = base;
    size_t cnt;
    if (cfg_each_string(ld, n, &cnt, NULL, NULL, false) != MOAT_OK)
        return MOAT_ERR;
    if (!(m->countries = cfg_alloc(ld->box, cnt * sizeof(*m->countries))))
        return cfg_oom(ld);
    m->ncountries = cnt;
    return cfg_each_string(ld, n, &cnt, country_elem, m, false);
}

static int k_user_agent(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_smatch *m = base;
    char buf[512];
    if (cfg_scalar(ld, n, buf, sizeof buf, "a User-Agent glob") != MOAT_OK)
        return MOAT_ERR;
    if (!buf[0])
        return cfg_fail(ld, n, "an empty glob matches only an empty User-Agent; use \"\" never");
    return (m->user_agent = cfg_strndup(ld->box, buf, strlen(buf))) ? MOAT_OK : cfg_oom(ld);
}

/* The cache rules' rows (their functions take the struct moat_cfg_rule that opens
 * struct moat_cfg_smatch), then the shield's own. */
static const struct cfg_key smatch_keys[] = {
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
     CFG_AT(struct moat_cfg_smatch, rule.query),
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
    {.name = "hosts",
     .type = KT_CUSTOM,
     .fn = k_hosts,
     .tname = "host name or list",
     .doc = "the request's Host (without port) is one of these"},
    {.name = "user_agent",
     .type = KT_CUSTOM,
     .fn = k_user_agent,
     .tname = "glob",
     .doc = "the User-Agent matches this glob (case-sensitive; no User-Agent never matches)"},
    {.name = "cidr",
     .type = KT_CUSTOM,
     .fn = k_cidr,
     .tname = "CIDR or list",
     .doc = "the client address is inside one of these blocks (IPv4 and IPv6)"},
    {.name = "country",
     .type = KT_CUSTOM,
     .fn = k_country,
     .tname = "country code or list",
     .doc = "the client address's country (shield.geoip) is one of these"},
};
static const struct cfg_table smatch_table = CFG_TABLE(smatch_keys, NULL);

/* --- rate_limits[] --------------------------------------------------------------------------- */

static int k_rl_key(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_ratelimit *rl = base;
    char buf[160];
    if (cfg_scalar(ld, n, buf, sizeof buf, "a key") != MOAT_OK)
        return MOAT_ERR;
    if (!strcmp(buf, "client_ip")) {
        rl->key = MOAT_SK_CLIENT_IP;
        return MOAT_OK;
    }
    if (!strncmp(buf, "ip_prefix:/", 11)) {
        char *end;
        unsigned long p = strtoul(buf + 11, &end, 10);
        if (*end || end == buf + 11 || p < 1 || p > 128)
            return cfg_fail(ld, n, "\"%s\": the prefix is /1 to /32 (IPv4) or /128 (IPv6)", buf);
        rl->key = MOAT_SK_IP_PREFIX;
        rl->prefix = (unsigned)p;
        return MOAT_OK;
    }
    bool hdr = !strncmp(buf, "header:", 7), ck = !strncmp(buf, "cookie:", 7);
    if (!hdr && !ck)
        return cfg_fail(ld, n,
                        "\"%s\" is not a key (client_ip, header:NAME, cookie:NAME or "
                        "ip_prefix:/N)",
                        buf);
    char *name = buf + 7;
    if (!cfg_is_token(name))
        return cfg_fail(ld, n, "\"%s\": the name is not a token (letters, digits, -_.)", buf);
    if (hdr)
        for (char *p = name; *p; p++)
            *p = (char)tolower((unsigned char)*p);
    rl->key = hdr ? MOAT_SK_HEADER : MOAT_SK_COOKIE;
    return (rl->key_name = cfg_strndup(ld->box, name, strlen(name))) ? MOAT_OK : cfg_oom(ld);
}

static int k_rl_rate(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    static const struct {
        const char *name;
        unsigned s;
    } units[] = {{"s", 1},     {"sec", 1},     {"second", 1}, {"m", 60},
                 {"min", 60},  {"minute", 60}, {"h", 3600},   {"hour", 3600}};
    struct moat_cfg_ratelimit *rl = base;
    char buf[64];
    if (cfg_scalar(ld, n, buf, sizeof buf, "a rate") != MOAT_OK)
        return MOAT_ERR;
    char *end;
    errno = 0;
    unsigned long v = strtoul(buf, &end, 10);
    if (end == buf || *end != '/' || errno || v < 1 || v > 1000000000ul)
        return cfg_fail(ld, n, "\"%s\" is not a rate (use e.g. 20/s, 300/min, 1000/h)", buf);
    for (size_t i = 0; i < MOAT_ARRAY_LEN(units); i++) {
        if (strcmp(end + 1, units[i].name))
            continue;
        rl->rate_n = (unsigned)v;
        rl->rate_unit_s = units[i].s;
        rl->interval_ns = (uint64_t)units[i].s * 1000000000ull / v;
        if (!rl->interval_ns)
            rl->interval_ns = 1;
        return MOAT_OK;
    }
    return cfg_fail(ld, n, "\"%s\": the unit after / is s, min or h", buf);
}

static int rl_post(struct cfg_ld *ld, struct fy_node *map, void *base)
{
    struct moat_cfg_ratelimit *rl = base;
    if (!rl->burst) {
        /* burst absent (or 0): one period's worth, at least 1 */
        rl->burst = rl->rate_n ? rl->rate_n : 1;
    }
    return MOAT_OK;
}

static const struct cfg_key rl_keys[] = {
    {.name = "match",
     .type = KT_MAP,
     .sub = &smatch_table,
     .sub_sep = ".",
     .doc = "conditions, all of which must hold (none: every request)"},
    {.name = "key",
     .type = KT_CUSTOM,
     .fn = k_rl_key,
     .tname = "client_ip | header:NAME | cookie:NAME | ip_prefix:/N",
     .def = "client_ip",
     .doc = "what one budget belongs to (a request without the header or cookie is keyed by "
            "its client address)"},
    {.name = "rate",
     .type = KT_CUSTOM,
     .fn = k_rl_rate,
     .tname = "N/s | N/min | N/h",
     .flags = K_REQUIRED,
     .doc = "the sustained rate allowed per key (required)"},
    {.name = "burst",
     .type = KT_UINT,
     CFG_AT(struct moat_cfg_ratelimit, burst),
     .min = 1,
     .max = 100000000,
     .doc = "requests allowed at once above the rate (default: the rate's N)"},
    {.name = "count",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_ratelimit, count_origin),
     .def = "all",
     .names = count_names,
     .doc = "which requests use the budget: all, or only those that reach the origin"},
    {.name = "count_refused",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_ratelimit, count_refused),
     .def = "true",
     .names = cfg_bool_names,
     .doc = "refused requests use the budget too: a client that keeps flooding stays refused "
            "(false: it still gets the rate through)"},
    {.name = "action",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_ratelimit, action),
     .def = "block",
     .names = rl_action_names,
     .doc = "over the rate: block (429 + Retry-After), challenge, or drop (close)"},
};
static const struct cfg_table rl_table = CFG_TABLE(rl_keys, rl_post);

static const struct cfg_key acl_keys[] = {
    {.name = "match",
     .type = KT_MAP,
     .sub = &smatch_table,
     .sub_sep = ".",
     .doc = "conditions, all of which must hold (none: every request)"},
    {.name = "action",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_access, action),
     .names = acl_action_names,
     .flags = K_REQUIRED,
     .doc = "block (403), challenge, drop (close) or allow (no other shield rule applies) "
            "(required)"},
};
static const struct cfg_table acl_table = CFG_TABLE(acl_keys, NULL);

/* A list of maps parsed with <t> into <*arr> of <cnt> elements of <size> bytes. */
static int rule_list(struct cfg_ld *ld, struct fy_node *n, const struct cfg_table *t, size_t size,
                     void **arr, size_t *cnt, const char *what_)
{
    if (cfg_is_null(n) || fy_node_get_type(n) != FYNT_SEQUENCE)
        return cfg_fail(ld, n, "expected a list of %s, got %s", what_, cfg_what(n));
    size_t total = (size_t)MOAT_MAX(fy_node_sequence_item_count(n), 0);
    if (total > MOAT_SHIELD_RULES_MAX)
        return cfg_fail(ld, n, "at most %d %s (got %zu)", MOAT_SHIELD_RULES_MAX, what_, total);
    char *a = cfg_alloc(ld->box, (total ? total : 1) * size);
    if (!a)
        return cfg_oom(ld);
    void *it = NULL;
    struct fy_node *e;
    size_t i = 0;
    while ((e = fy_node_sequence_iterate(n, &it)) != NULL) {
        size_t old = cfg_path_push(ld, "[%zu]", i);
        struct fy_node *v = cfg_deref(e);
        int rc;
        if (cfg_is_null(v) || fy_node_get_type(v) != FYNT_MAPPING)
            rc = cfg_fail(ld, v, "expected a map ({ match: {...}, action: ... }), got %s",
                          cfg_what(v));
        else
            rc = cfg_walk(ld, t, v, a + i * size, false);
        cfg_path_pop(ld, old);
        if (rc != MOAT_OK)
            return rc;
        i++;
    }
    *arr = a;
    *cnt = i;
    return MOAT_OK;
}

static int k_rate_limits(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n,
                         void *base)
{
    struct moat_config *c = base;
    void *a;
    if (rule_list(ld, n, &rl_table, sizeof(struct moat_cfg_ratelimit), &a,
                  &c->shield.nrate_limits, "rate limits") != MOAT_OK)
        return MOAT_ERR;
    c->shield.rate_limits = a;
    return MOAT_OK;
}

static int k_access(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    void *a;
    if (rule_list(ld, n, &acl_table, sizeof(struct moat_cfg_access), &a, &c->shield.naccess,
                  "access rules") != MOAT_OK)
        return MOAT_ERR;
    c->shield.access = a;
    return MOAT_OK;
}

/* --- connections, challenge, auto ---------------------------------------------------------- */

static const struct cfg_key conn_keys[] = {
    {.name = "per_ip",
     .type = KT_UINT,
     CFG_AT(struct moat_config, shield.conn_per_ip),
     .def = "0",
     .min = 0,
     .max = 1000000,
     .doc = "open connections allowed per client address, across all workers; more are closed "
            "at accept (0 = no limit)"},
};
static const struct cfg_table conn_table = CFG_TABLE(conn_keys, NULL);

/* The HMAC key is read at load time (a reload that cannot read it changes nothing). When the
 * file does not exist it is created, mode 0600, with 32 bytes from getrandom(2): clearance
 * cookies then survive restarts and are the same on every moat that shares the file. */
static int k_secret_file(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n,
                         void *base)
{
    struct moat_config *c = base;
    char buf[1024];
    if (cfg_scalar(ld, n, buf, sizeof buf, "a file path") != MOAT_OK)
        return MOAT_ERR;
    char *path = cfg_resolve_path(ld, buf);
    if (!path)
        return cfg_oom(ld);
    c->shield.secret_file = path;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        uint8_t key[32];
        if (getrandom(key, sizeof key, 0) != (ssize_t)sizeof key)
            return cfg_fail(ld, n, "getrandom: %s", strerror(errno));
        int wfd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (wfd < 0)
            return cfg_fail(ld, n, "cannot create \"%s\": %s", path, strerror(errno));
        ssize_t w = write(wfd, key, sizeof key);
        int e = errno;
        close(wfd);
        if (w != (ssize_t)sizeof key)
            return cfg_fail(ld, n, "cannot write \"%s\": %s", path, strerror(e));
        fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0)
        return cfg_fail(ld, n, "cannot read \"%s\": %s", path, strerror(errno));
    ssize_t got = read(fd, c->shield.secret, sizeof c->shield.secret);
    int e = errno;
    close(fd);
    if (got < 0)
        return cfg_fail(ld, n, "cannot read \"%s\": %s", path, strerror(e));
    if (got < 16)
        return cfg_fail(ld, n, "\"%s\" holds %zd bytes; the key needs at least 16", path, got);
    c->shield.secret_len = (unsigned)got;
    return MOAT_OK;
}

static const struct cfg_key challenge_keys[] = {
    {.name = "difficulty",
     .type = KT_UINT,
     CFG_AT(struct moat_config, shield.difficulty),
     .def = "16",
     .min = 1,
     .max = 32,
     .doc = "leading zero bits of SHA-256 the browser must find (each bit doubles the work; "
            "headless Chromium here tries about 60,000 a second: 16 is about a second)"},
    {.name = "clearance",
     .type = KT_DURATION,
     CFG_AT(struct moat_config, shield.clearance_ms),
     .def = "30m",
     .min = 1000,
     .max = 30 * DAY_MS,
     .doc = "lifetime of the clearance cookie a solved challenge gives"},
    {.name = "secret_file",
     .type = KT_CUSTOM,
     .fn = k_secret_file,
     .tname = "file path",
     .doc = "the HMAC key of challenges and cookies; created (0600, 32 random bytes) when "
            "absent; without it a random key per process"},
};
static const struct cfg_table challenge_table = CFG_TABLE(challenge_keys, NULL);

static int k_origin_errors(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n,
                           void *base)
{
    struct moat_config *c = base;
    char buf[32];
    if (cfg_scalar(ld, n, buf, sizeof buf, "a share") != MOAT_OK)
        return MOAT_ERR;
    char *end;
    double v = strtod(buf, &end);
    if (end == buf || *end || !(v >= 0 && v <= 1))
        return cfg_fail(ld, n, "\"%s\" is not a share between 0 and 1 (e.g. 0.2)", buf);
    c->shield.auto_err_pm = (unsigned)(v * 1000 + 0.5);
    return MOAT_OK;
}

static const struct cfg_key auto_keys[] = {
    {.name = "requests_per_second",
     .type = KT_UINT,
     CFG_AT(struct moat_config, shield.auto_rps),
     .def = "0",
     .min = 0,
     .max = 100000000,
     .doc = "a site in under_attack: auto switches on above this many requests per second (0 = "
            "not a trigger)"},
    {.name = "origin_errors",
     .type = KT_CUSTOM,
     .fn = k_origin_errors,
     .tname = "share 0..1",
     .def = "0",
     .doc = "...or above this share of 5xx and failed exchanges from the origin (0 = not a "
            "trigger; needs 10 origin answers in the second)"},
    {.name = "for",
     .type = KT_DURATION,
     CFG_AT(struct moat_config, shield.auto_for_ms),
     .def = "10s",
     .min = 1000,
     .max = DAY_MS,
     .doc = "how long a threshold must be crossed (every second) before the switch"},
    {.name = "quiet",
     .type = KT_DURATION,
     CFG_AT(struct moat_config, shield.auto_quiet_ms),
     .def = "5m",
     .min = 1000,
     .max = DAY_MS,
     .doc = "switched off again after this long below both thresholds"},
};
static const struct cfg_table auto_table = CFG_TABLE(auto_keys, NULL);

static int k_geoip(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    char buf[1024];
    if (cfg_scalar(ld, n, buf, sizeof buf, "a file path") != MOAT_OK)
        return MOAT_ERR;
    char *path = cfg_resolve_path(ld, buf);
    if (!path)
        return cfg_oom(ld);
    if (access(path, R_OK) != 0)
        return cfg_fail(ld, n, "cannot read \"%s\": %s", path, strerror(errno));
    c->shield.geoip = path;
    return MOAT_OK;
}

/* Checks across keys: a country condition needs the database. */
static int shield_post(struct cfg_ld *ld, struct fy_node *map, void *base)
{
    struct moat_config *c = base;
    struct moat_cfg_shield *s = &c->shield;
    bool country = false;
    for (size_t i = 0; i < s->nrate_limits; i++) {
        country |= s->rate_limits[i].match.ncountries > 0;
        s->any_challenge |= s->rate_limits[i].action == MOAT_SA_CHALLENGE;
    }
    for (size_t i = 0; i < s->naccess; i++) {
        country |= s->access[i].match.ncountries > 0;
        s->any_challenge |= s->access[i].action == MOAT_SA_CHALLENGE;
    }
    for (size_t i = 0; i < c->nsites; i++)
        s->any_challenge |= c->sites[i].under_attack != MOAT_UA_OFF;
    if (country && !s->geoip)
        return cfg_fail(ld, map, "match.country needs shield.geoip (a MaxMind country database)");
    return MOAT_OK;
}

static const struct cfg_key shield_keys[] = {
    {.name = "rate_limits",
     .type = KT_CUSTOM,
     .fn = k_rate_limits,
     .sub = &rl_table,
     .sub_sep = "[].",
     .tname = "list of rate limits",
     .def = "[]",
     .doc = "token buckets per key; the first rule whose match fits a request applies"},
    {.name = "connections",
     .type = KT_MAP,
     .sub = &conn_table,
     .sub_sep = ".",
     .doc = "connection limits at accept"},
    {.name = "access",
     .type = KT_CUSTOM,
     .fn = k_access,
     .sub = &acl_table,
     .sub_sep = "[].",
     .tname = "list of access rules",
     .def = "[]",
     .doc = "allow / block / challenge / drop; the first match wins, evaluated before the cache"},
    {.name = "challenge",
     .type = KT_MAP,
     .sub = &challenge_table,
     .sub_sep = ".",
     .doc = "the proof-of-work browser challenge and its clearance cookie"},
    {.name = "auto",
     .type = KT_MAP,
     .sub = &auto_table,
     .sub_sep = ".",
     .doc = "when sites with under_attack: auto switch the challenge on and off"},
    {.name = "keys",
     .type = KT_UINT,
     CFG_AT(struct moat_config, shield.keys),
     .def = "65536",
     .min = 1024,
     .max = 1ull << 26,
     .doc = "rate-limit keys tracked at once (16 bytes each, shared by all workers; the least "
            "recently seen are evicted; read at start)"},
    {.name = "geoip",
     .type = KT_CUSTOM,
     .fn = k_geoip,
     .tname = "file path",
     .doc = "MaxMind country database (.mmdb) for match.country"},
};
const struct cfg_table cfg_shield_table = CFG_TABLE(shield_keys, shield_post);

/* --- sites[].challenge_exempt ---------------------------------------------------------------- */

static int exempt_elem(struct cfg_ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    struct moat_cfg_site *s = ud;
    char buf[1024];
    if (cfg_scalar(ld, n, buf, sizeof buf, "a path glob") != MOAT_OK)
        return MOAT_ERR;
    if (buf[0] != '/' && buf[0] != '*')
        return cfg_fail(ld, n, "\"%s\" must start with / or * (it matches the request path)", buf);
    return (s->challenge_exempt[idx] = cfg_strndup(ld->box, buf, strlen(buf))) ? MOAT_OK
                                                                              : cfg_oom(ld);
}

int cfg_k_challenge_exempt(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n,
                           void *base)
{
    struct moat_cfg_site *s = base;
    size_t cnt;
    if (cfg_each_string(ld, n, &cnt, NULL, NULL, true) != MOAT_OK)
        return MOAT_ERR;
    if (!(s->challenge_exempt = cfg_alloc(ld->box, MOAT_MAX(cnt, (size_t)1) * sizeof(char *))))
        return cfg_oom(ld);
    s->nchallenge_exempt = cnt;
    return cfg_each_string(ld, n, &cnt, exempt_elem, s, true);
}
