/* load.c: the root table, loading a snapshot (file, string, quick mode), its lifetime and
 * lookups. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config-int.h"

/* ------------------------------------------------------------------------------------------
 * The root table: the top-level keys, each area's table hanging from its row.
 * ------------------------------------------------------------------------------------------ */

/* Table order is parse order: pools come before sites, which refer to them. */
static const struct cfg_key root_keys[] = {
    {.name = "listen",
     .type = KT_CUSTOM,
     .fn = cfg_k_listen,
     .sub = &cfg_listen_table,
     .sub_sep = "[].",
     .tname = "address or list",
     .def = "[\"0.0.0.0:8080\"]",
     .doc = "HOST:PORT addresses clients connect to"},
    {.name = "tls",
     .type = KT_MAP,
     .sub = &cfg_tls_table,
     .sub_sep = ".",
     .doc = "TLS for clients: certificates, protocols, ciphers, session resumption"},
    {.name = "workers",
     .type = KT_CUSTOM,
     .fn = cfg_k_workers,
     .tname = "auto or 1..256",
     .def = "auto",
     .min = 1,
     .max = 256,
     .doc = "worker threads; auto = one per online CPU"},
    {.name = "demo_origin",
     .type = KT_CUSTOM,
     .fn = cfg_k_demo_origin,
     .tname = "address",
     .doc = "start moat's built-in demo site on HOST:PORT (off when absent)"},
    {.name = "admin",
     .type = KT_MAP,
     .sub = &cfg_admin_table,
     .sub_sep = ".",
     .flags = K_PRESENCE,
     .doc = "the admin API; off when absent"},
    {.name = "limits",
     .type = KT_MAP,
     .sub = &cfg_limits_table,
     .sub_sep = ".",
     .doc = "bounds on what a client may send"},
    {.name = "timeouts",
     .type = KT_MAP,
     .sub = &cfg_timeouts_table,
     .sub_sep = ".",
     .doc = "client-side timeouts"},
    {.name = "trusted_proxies",
     .type = KT_CUSTOM,
     .fn = cfg_k_trusted,
     .tname = "CIDR or list",
     .def = "[]",
     .doc = "peers whose X-Forwarded-For is kept and extended"},
    {.name = "forward_headers",
     .type = KT_CUSTOM,
     .fn = cfg_k_forward,
     .tname = "list of header names",
     .def = "[x-forwarded-for, x-forwarded-proto, forwarded]",
     .doc = "the forwarding fields moat sets on requests to origins"},
    {.name = "via",
     .type = KT_CUSTOM,
     .fn = cfg_k_via,
     .tname = "token",
     .def = "moat",
     .doc = "the pseudonym moat adds to the Via header"},
    {.name = "log", .type = KT_MAP, .sub = &cfg_log_table, .sub_sep = ".", .doc = "logging"},
    {.name = "cache",
     .type = KT_MAP,
     .sub = &cfg_cache_table,
     .sub_sep = ".",
     .doc = "the shared in-memory HTTP cache"},
    {.name = "monitors",
     .type = KT_CUSTOM,
     .fn = cfg_k_monitors,
     .sub = &cfg_monitor_table,
     .sub_sep = ".*.",
     .tname = "map of name to monitor",
     .doc = "active health checks that pools name"},
    {.name = "pools",
     .type = KT_CUSTOM,
     .fn = cfg_k_pools,
     .sub = &cfg_pool_table,
     .sub_sep = ".*.",
     .tname = "map of name to pool",
     .doc = "named groups of origins"},
    {.name = "load_balancers",
     .type = KT_CUSTOM,
     .fn = cfg_k_lbs,
     .sub = &cfg_lb_table,
     .sub_sep = ".*.",
     .tname = "map of name to load balancer",
     .doc = "pools in order, steering, failover and affinity, for sites to use"},
    {.name = "sites",
     .type = KT_CUSTOM,
     .fn = cfg_k_sites,
     .sub = &cfg_site_table,
     .sub_sep = "[].",
     .tname = "list of sites",
     .flags = K_REQUIRED_FILE,
     .doc = "which pool serves which Host; first match as described (required)"},
    {.name = "shield",
     .type = KT_MAP,
     .sub = &cfg_shield_table,
     .sub_sep = ".",
     .doc = "rate limits, connection limits, access rules and the browser challenge"},
    {.name = "http2",
     .type = KT_MAP,
     .sub = &cfg_http2_table,
     .sub_sep = ".",
     .doc = "HTTP/2 from clients (ALPN h2, h2c): limits and flood budgets"},
    {.name = "tuning",
     .type = KT_MAP,
     .sub = &cfg_tuning_table,
     .sub_sep = ".",
     .doc = "event-loop knobs"},
};
/* Checks across areas, once every key is read. */
static int root_post(struct cfg_ld *ld, struct fy_node *map, void *base)
{
    const struct moat_config *c = base;
    /* With tls.acme the certificates may all come from the CA: until the first one exists a
     * name without one fails its handshake (docs/acme.md). */
    for (size_t i = 0; i < c->nlisten && c->tls.ncerts == 0 && !c->tls.acme.enabled; i++) {
        if (!c->listen[i].tls)
            continue;
        /* listen is a list here: a single value cannot be a map, so it has no tls. */
        struct fy_node *ln = cfg_map_lookup(map, "listen");
        struct fy_node *e = ln && fy_node_get_type(ln) == FYNT_SEQUENCE
                                ? cfg_deref(fy_node_sequence_get_by_index(ln, (int)i))
                                : NULL;
        size_t old = cfg_path_push(ld, "listen[%zu]", i);
        cfg_fail(ld, e ? e : map, "tls: true needs tls.certificates");
        cfg_path_pop(ld, old);
        return MOAT_ERR;
    }
    return MOAT_OK;
}

const struct cfg_table cfg_root_table = CFG_TABLE(root_keys, root_post);

_Static_assert(MOAT_ARRAY_LEN(root_keys) <= CFG_MAX_KEYS, "raise CFG_MAX_KEYS");

/* ------------------------------------------------------------------------------------------
 * Loading.
 * ------------------------------------------------------------------------------------------ */

static void diag_discard(struct fy_diag *diag, void *user, const char *buf, size_t len)
{
    (void)diag, (void)user, (void)buf, (void)len;
}

static struct fy_diag *diag_new(void)
{
    struct fy_diag_cfg dc;
    fy_diag_cfg_default(&dc);
    dc.fp = NULL;
    dc.output_fn = diag_discard;
    dc.colorize = false;
    struct fy_diag *d = fy_diag_create(&dc);
    if (d)
        fy_diag_set_collect_errors(d, true);
    return d;
}

/* True if <s> holds nothing but blank lines and comments: libfyaml builds no document for
 * it, which must read as "all defaults", not as a syntax error. */
static bool blank_yaml(const char *s, size_t n)
{
    bool comment = false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\n')
            comment = false;
        else if (comment)
            continue;
        else if (s[i] == '#')
            comment = true;
        else if (!isspace((unsigned char)s[i]))
            return false;
    }
    return true;
}

static struct moat_config *load_common(const char *yaml, size_t len, const char *name,
                                       const char *path, const char *basedir, char *err,
                                       size_t errlen)
{
    struct cfg_ld ld = {
        .name = name ? name : "config", .basedir = basedir, .err = err, .errlen = errlen};
    struct fy_document *doc = NULL;
    ld.box = cfg_box_new();
    ld.diag = diag_new();
    if (!ld.box || !ld.diag) {
        snprintf(err, errlen, "moat: out of memory");
        goto out;
    }
    /* YAML directives (%YAML, %TAG) have no use in a moat config, and libfyaml 0.7.12 loops
     * forever on some malformed ones (found by tests/fuzz/fuzz_config.c: "%1\xf6.\n@").
     * Refuse a line that starts with '%' before the parser sees it; a NUL byte too, which
     * no text config has. */
    for (size_t i = 0, line = 1; i < len; i++) {
        /* Line starts: after LF, CR, NEL (C2 85), LS/PS (E2 80 A8/A9), as YAML counts them. */
        bool bol =
            i == 0 || yaml[i - 1] == '\n' || yaml[i - 1] == '\r' ||
            (i >= 2 && (unsigned char)yaml[i - 2] == 0xc2 && (unsigned char)yaml[i - 1] == 0x85) ||
            (i >= 3 && (unsigned char)yaml[i - 3] == 0xe2 && (unsigned char)yaml[i - 2] == 0x80 &&
             ((unsigned char)yaml[i - 1] == 0xa8 || (unsigned char)yaml[i - 1] == 0xa9));
        if (yaml[i] == '%' && bol) {
            snprintf(err, errlen, "%s:%zu:1: YAML directives (%%...) are not supported", ld.name,
                     line);
            ld.failed = true;
            goto out;
        }
        if (yaml[i] == '\0') {
            snprintf(err, errlen, "%s:%zu:1: a NUL byte: this is not a text file", ld.name, line);
            ld.failed = true;
            goto out;
        }
        if (yaml[i] == '\n')
            line++;
    }
    struct fy_parse_cfg pc = {.flags = FYPCF_QUIET | FYPCF_ALLOW_DUPLICATE_KEYS, .diag = ld.diag};
    doc = fy_document_build_from_string(&pc, yaml, len);
    if (!doc) {
        void *it = NULL;
        struct fy_diag_error *e = fy_diag_errors_iterate(ld.diag, &it);
        if (e) {
            snprintf(err, errlen, "%s:%d:%d: invalid YAML: %s", ld.name, MOAT_MAX(e->line, 1),
                     MOAT_MAX(e->column, 1), e->msg ? e->msg : "syntax error");
            ld.failed = true;
            goto out;
        }
        if (!blank_yaml(yaml, len)) {
            snprintf(err, errlen, "%s: invalid YAML", ld.name);
            ld.failed = true;
            goto out;
        }
    }
    struct fy_node *root = doc ? cfg_deref(fy_document_root(doc)) : NULL;
    if (root && !cfg_is_null(root) && fy_node_get_type(root) != FYNT_MAPPING) {
        cfg_fail(&ld, root,
                 "the top level must be a map of keys (listen, pools, sites, ...), got %s",
                 cfg_what(root));
        goto out;
    }
    if (cfg_walk(&ld, &cfg_root_table, root, &ld.box->cfg, false) != MOAT_OK)
        goto out;
    if (path && !(ld.box->cfg.path = cfg_strndup(ld.box, path, strlen(path))))
        cfg_oom(&ld);
out:
    if (doc)
        fy_document_destroy(doc);
    if (ld.diag)
        fy_diag_destroy(ld.diag);
    if (ld.failed || !ld.box) {
        cfg_box_free(ld.box);
        return NULL;
    }
    return &ld.box->cfg;
}

struct moat_config *moat_config_load_string(const char *yaml, size_t len, const char *name,
                                            char *err, size_t errlen)
{
    return load_common(yaml, len, name, NULL, NULL, err, errlen);
}

#define MAX_CONFIG_BYTES (16u << 20)

struct moat_config *moat_config_load(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "moat: cannot read %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > (off_t)MAX_CONFIG_BYTES) {
        snprintf(err, errlen, "moat: %s: %s", path,
                 S_ISREG(st.st_mode) ? "larger than 16 MiB" : "not a regular file");
        close(fd);
        return NULL;
    }
    size_t size = (size_t)st.st_size, got = 0;
    char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        snprintf(err, errlen, "moat: out of memory");
        return NULL;
    }
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            snprintf(err, errlen, "moat: cannot read %s: %s", path,
                     r < 0 ? strerror(errno) : "file shrank while reading");
            free(buf);
            close(fd);
            return NULL;
        }
        got += (size_t)r;
    }
    close(fd);
    buf[size] = '\0';

    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (slash && (size_t)(slash - path) < sizeof(dir)) {
        size_t dn = slash == path ? 1 : (size_t)(slash - path);
        memcpy(dir, path, dn);
        dir[dn] = '\0';
    } else {
        snprintf(dir, sizeof(dir), ".");
    }
    struct moat_config *c = load_common(buf, size, path, path, dir, err, errlen);
    free(buf);
    return c;
}

/* Quick mode builds the snapshot from the same tables (so defaults are the documented ones)
 * and fills in the one pool and site by hand. */
struct moat_config *moat_config_quick(const char *origin_url, const char *listen, char *err,
                                      size_t errlen)
{
    struct cfg_ld ld = {.quick = true, .err = err, .errlen = errlen};
    char hostport[300], msg[256];
    const char *u = origin_url ? origin_url : "";

    bool tls = !strncasecmp(u, "https://", 8);
    bool had_scheme = tls || !strncasecmp(u, "http://", 7);
    if (had_scheme)
        u += tls ? 8 : 7;
    else if (strstr(u, "://")) {
        snprintf(err, errlen, "moat: origin %s: only http:// and https:// origins are supported",
                 origin_url);
        return NULL;
    }
    size_t n = strcspn(u, "/?#");
    if (u[n] && strcmp(u + n, "/") != 0) {
        snprintf(err, errlen,
                 "moat: origin %s: a path in the origin URL is not supported; "
                 "give only %s://HOST[:PORT]",
                 origin_url, tls ? "https" : "http");
        return NULL;
    }
    if (n == 0 || n >= sizeof(hostport) - 8) {
        snprintf(err, errlen, "moat: origin \"%s\": expected %s://HOST:PORT or HOST:PORT",
                 origin_url ? origin_url : "", tls ? "https" : "http");
        return NULL;
    }
    if (memchr(u, '@', n)) {
        snprintf(err, errlen, "moat: origin %s: user info in the URL is not supported", origin_url);
        return NULL;
    }
    memcpy(hostport, u, n);
    hostport[n] = '\0';
    /* "http://host" means port 80 and "https://host" 443; a bare "host" without scheme must
     * name its port. */
    const char *rb = strrchr(hostport, ']');
    const char *colon = strrchr(hostport, ':');
    bool has_port = colon && (!rb || colon > rb);
    if (!has_port && had_scheme && (hostport[0] == '[' || !strchr(hostport, ':')))
        snprintf(hostport + n, sizeof(hostport) - n, tls ? ":443" : ":80");

    ld.box = cfg_box_new();
    ld.diag = diag_new();
    if (!ld.box || !ld.diag) {
        snprintf(err, errlen, "moat: out of memory");
        goto out;
    }
    struct moat_config *c = &ld.box->cfg;
    if (cfg_walk(&ld, &cfg_root_table, NULL, c, false) != MOAT_OK)
        goto out;
    /* Quick mode obeys the origin's headers only: no default freshness for static files. */
    c->cache.static_ttl_ms = 0;
    if (listen) {
        if (moat_addr_parse(listen, &c->listen[0].addr, msg, sizeof(msg)) != MOAT_OK) {
            cfg_fail(&ld, NULL, "listen: %s", msg);
            goto out;
        }
        c->nlisten = 1;
    }
    c->pools = cfg_alloc(ld.box, sizeof(*c->pools));
    c->sites = cfg_alloc(ld.box, sizeof(*c->sites));
    struct moat_cfg_origin *o = cfg_alloc(ld.box, sizeof(*o));
    char **hosts = cfg_alloc(ld.box, sizeof(char *));
    struct cfg_host_ent *ent = cfg_alloc(ld.box, sizeof(*ent));
    if (!c->pools || !c->sites || !o || !hosts || !ent) {
        cfg_oom(&ld);
        goto out;
    }
    struct moat_cfg_pool *p = &c->pools[0];
    if (cfg_walk(&ld, &cfg_pool_table, NULL, p, true) != MOAT_OK ||
        cfg_walk(&ld, &cfg_origin_table, NULL, o, true) != MOAT_OK)
        goto out;
    char host[300];
    unsigned port;
    if (moat_addr_parse_ex(hostport, &o->addr, host, sizeof(host), &port, msg, sizeof(msg)) !=
        MOAT_OK) {
        cfg_fail(&ld, NULL, "origin %s: %s", origin_url, msg);
        goto out;
    }
    if (cfg_fill_origin_names(&ld, o, host, port, tls ? 443 : 80) != MOAT_OK)
        goto out;
    /* https://: verified against the system store, SNI the origin's host (sni unset). */
    if (tls && cfg_pool_tls_on(&ld, &p->tls) != MOAT_OK)
        goto out;
    /* The site's own defaults (https off, upgrades [websocket]) from its table. */
    if (cfg_walk(&ld, &cfg_site_table, NULL, &c->sites[0], true) != MOAT_OK)
        goto out;
    p->name = cfg_strndup(ld.box, "origin", 6);
    hosts[0] = cfg_strndup(ld.box, "*", 1);
    if (!p->name || !hosts[0]) {
        cfg_oom(&ld);
        goto out;
    }
    p->origins = o;
    p->norigins = 1;
    /* A quick-mode origin is usually a named site elsewhere that virtual-hosts on its own
     * name, so it gets its own Host rather than moat's listen address. */
    p->host_from_origin = true;
    c->npools = 1;
    c->sites[0].hosts = hosts;
    c->sites[0].nhosts = 1;
    c->sites[0].pool = p;
    c->nsites = 1;
    ld.box->star = &c->sites[0];
    ld.box->exact = ld.box->suffix = ent; /* never read: counts are 0 */
out:
    if (ld.diag)
        fy_diag_destroy(ld.diag);
    if (ld.failed || !ld.box || !ld.diag) {
        cfg_box_free(ld.box);
        return NULL;
    }
    return &ld.box->cfg;
}

/* ------------------------------------------------------------------------------------------
 * Snapshot lifetime and lookups.
 * ------------------------------------------------------------------------------------------ */

void moat_config_ref(struct moat_config *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void moat_config_release(struct moat_config **cp)
{
    struct moat_config *c = *cp;
    *cp = NULL;
    if (!c)
        return;
    /* acq_rel: the last releaser must see every other thread's reads finished before it
     * frees (the usual refcount pairing, as in the kernel's refcount_dec_and_test). */
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) {
        if (c->rt_free)
            c->rt_free(c->rt);
        if (c->lb_rt_free)
            c->lb_rt_free(c->lb_rt);
        cfg_box_free(cfg_box_of(c));
    }
}

static const struct cfg_host_ent *find_ent(const struct cfg_host_ent *v, size_t n, const char *s,
                                           size_t len)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = memcmp(v[mid].name, s, MOAT_MIN(v[mid].len, len));
        if (r == 0)
            r = v[mid].len < len ? -1 : v[mid].len > len;
        if (r == 0)
            return &v[mid];
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* O(labels * log hosts): one binary search for the exact name, then one per dot from the left,
 * so the first suffix found is the longest. A per-request linear scan over every site's hosts
 * would be simpler but grows with the number of sites. */
const struct moat_cfg_site *moat_config_site(const struct moat_config *c, struct moat_str host)
{
    const struct cfg_box *b = cfg_box_of(c);
    char buf[256];
    size_t len = host.len;
    if (len && host.ptr[len - 1] == '.')
        len--;
    if (len == 0 || len >= sizeof(buf))
        return b->star;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)host.ptr[i];
        buf[i] = (char)((ch >= 'A' && ch <= 'Z') ? ch | 0x20 : ch);
    }
    const struct cfg_host_ent *e = find_ent(b->exact, b->nexact, buf, len);
    if (e)
        return e->site;
    for (size_t i = 1; i < len; i++) {
        if (buf[i] != '.')
            continue;
        e = find_ent(b->suffix, b->nsuffix, buf + i, len - i);
        if (e)
            return e->site;
    }
    return b->star;
}

bool moat_config_wants_tls(const struct moat_config *c)
{
    for (size_t i = 0; i < c->nlisten; i++)
        if (c->listen[i].tls)
            return true;
    for (size_t i = 0; i < c->npools; i++)
        if (c->pools[i].tls.enabled)
            return true;
    return false;
}

bool moat_config_trusted(const struct moat_config *c, const uint8_t addr[16])
{
    for (size_t i = 0; i < c->ntrusted; i++)
        if (moat_cidr_match_addr(&c->trusted[i], addr))
            return true;
    return false;
}
