/* cfg_server.c: the directive tables of the server itself: listen, workers, demo_origin, admin,
 * limits, timeouts, trusted_proxies, forward_headers, via, log and tuning. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <strings.h>
#include <unistd.h>

#include "config/config-int.h"

static int k_listen_addr(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    return cfg_parse_addr_node(ld, n, &((struct moat_cfg_listen *)base)->addr, NULL, 0, NULL);
}

/* listen[]: { addr, tls }. Whether a tls listener has certificates is checked once the whole
 * file is read (load.c), since tls comes after listen. */
static const struct cfg_key listen_keys[] = {
    {.name = "addr",
     .type = KT_CUSTOM,
     .fn = k_listen_addr,
     .tname = "address",
     .flags = K_REQUIRED,
     .doc = "HOST:PORT clients connect to (required in the map form)"},
    {.name = "tls",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_listen, tls),
     .def = "false",
     .names = cfg_bool_names,
     .doc = "clients speak TLS on this address (needs tls.certificates)"},
    {.name = "h2c",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_listen, h2c),
     .def = "false",
     .names = cfg_bool_names,
     .doc = "a plain listener also takes HTTP/2 with prior knowledge (behind a TLS terminator)"},
};
const struct cfg_table cfg_listen_table = CFG_TABLE(listen_keys, NULL);

static int listen_elem(struct cfg_ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    struct moat_config *c = ud;
    struct moat_cfg_listen *l = &c->listen[idx];
    if (fy_node_get_type(n) == FYNT_MAPPING) {
        if (cfg_walk(ld, &cfg_listen_table, n, l, false) != MOAT_OK)
            return MOAT_ERR;
        if (l->tls && l->h2c)
            return cfg_fail(ld, n, "h2c is for plain listeners (a TLS listener offers h2 by ALPN)");
    } else if (fy_node_get_type(n) != FYNT_SCALAR || cfg_is_null(n)) {
        return cfg_fail(ld, n, "expected \"HOST:PORT\" or { addr: HOST:PORT, tls: true }, got %s",
                        cfg_what(n));
    } else if (cfg_walk(ld, &cfg_listen_table, NULL, l, true) != MOAT_OK ||
               cfg_parse_addr_node(ld, n, &l->addr, NULL, 0, NULL) != MOAT_OK) {
        return MOAT_ERR;
    }
    for (size_t i = 0; i < idx; i++)
        if (strcmp(c->listen[i].addr.text, c->listen[idx].addr.text) == 0)
            return cfg_fail(ld, n, "%s is listed twice", c->listen[idx].addr.text);
    return MOAT_OK;
}

int cfg_k_listen(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    size_t cnt;
    if (cfg_each_string(ld, n, &cnt, NULL, NULL, false) != MOAT_OK)
        return MOAT_ERR;
    c->listen = cfg_alloc(ld->box, cnt * sizeof(*c->listen));
    if (!c->listen)
        return cfg_oom(ld);
    c->nlisten = cnt;
    return cfg_each_string(ld, n, &cnt, listen_elem, c, false);
}

int cfg_k_workers(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    char buf[64];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "auto or a number of workers") != MOAT_OK)
        return MOAT_ERR;
    if (strcmp(buf, "auto") == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        c->workers = (unsigned)(cpus < 1 ? 1 : cpus > 256 ? 256 : cpus);
        return MOAT_OK;
    }
    uint64_t v;
    if (cfg_parse_uint_text(ld, k, n, buf, &v) != MOAT_OK)
        return MOAT_ERR;
    c->workers = (unsigned)v;
    return MOAT_OK;
}

int cfg_k_demo_origin(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    if (cfg_parse_addr_node(ld, n, &c->demo.listen, NULL, 0, NULL) != MOAT_OK)
        return MOAT_ERR;
    c->demo.enabled = true;
    return MOAT_OK;
}

static int k_admin_listen(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    return cfg_parse_addr_node(ld, n, &c->admin.listen, NULL, 0, NULL);
}

/* The token is read at load time so that a missing or empty token file fails the load (and a
 * reload keeps the old config) instead of failing every admin request later. */
static int k_token_file(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    char buf[1024], tok[4097];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "a file path") != MOAT_OK)
        return MOAT_ERR;
    char *path = cfg_resolve_path(ld, buf);
    if (!path)
        return cfg_oom(ld);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cfg_fail(ld, n, "cannot read \"%s\": %s", path, strerror(errno));
    ssize_t got = read(fd, tok, sizeof(tok) - 1);
    int e = errno;
    close(fd);
    if (got < 0)
        return cfg_fail(ld, n, "cannot read \"%s\": %s", path, strerror(e));
    if ((size_t)got == sizeof(tok) - 1)
        return cfg_fail(ld, n, "\"%s\" is too large for a token (at most 4096 bytes)", path);
    size_t len = (size_t)got;
    while (len && isspace((unsigned char)tok[len - 1]))
        len--;
    if (len == 0)
        return cfg_fail(ld, n, "\"%s\" is empty; put the bearer token in it", path);
    for (size_t i = 0; i < len; i++)
        if (tok[i] <= ' ' || tok[i] == 0x7f)
            return cfg_fail(ld, n, "the token in \"%s\" contains a space or control byte", path);
    c->admin.token = cfg_strndup(ld->box, tok, len);
    return c->admin.token ? MOAT_OK : cfg_oom(ld);
}

static int admin_post(struct cfg_ld *ld, struct fy_node *map, void *base)
{
    struct moat_config *c = base;
    c->admin.enabled = true;
    if (!c->admin.token && !moat_addr_is_loopback(&c->admin.listen)) {
        struct fy_node *ln = cfg_map_lookup(map, "listen");
        size_t old = cfg_path_push(ld, ".listen");
        cfg_fail(ld, ln ? ln : map,
                 "%s is not a loopback address, so the admin API needs a token: set "
                 "admin.token_file",
                 c->admin.listen.text);
        cfg_path_pop(ld, old);
        return MOAT_ERR;
    }
    return MOAT_OK;
}

static int limits_post(struct cfg_ld *ld, struct fy_node *map, void *base)
{
    struct moat_config *c = base;
    if (c->h1.request_line > c->h1.head_bytes) {
        struct fy_node *n = cfg_map_lookup(map, "request_line");
        size_t old = cfg_path_push(ld, ".request_line");
        cfg_fail(ld, n ? n : map, "must not exceed limits.header_bytes (%zu > %zu)",
                 c->h1.request_line, c->h1.head_bytes);
        cfg_path_pop(ld, old);
        return MOAT_ERR;
    }
    return MOAT_OK;
}

static int trusted_elem(struct cfg_ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    struct moat_config *c = ud;
    char buf[128], msg[256];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "a CIDR block") != MOAT_OK)
        return MOAT_ERR;
    if (moat_cidr_parse_err(buf, &c->trusted[idx], msg, sizeof(msg)) != 0)
        return cfg_fail(ld, n, "%s", msg);
    return MOAT_OK;
}

int cfg_k_trusted(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    size_t cnt;
    if (cfg_each_string(ld, n, &cnt, NULL, NULL, true) != MOAT_OK)
        return MOAT_ERR;
    if (cnt) {
        c->trusted = cfg_alloc(ld->box, cnt * sizeof(*c->trusted));
        if (!c->trusted)
            return cfg_oom(ld);
    }
    c->ntrusted = cnt;
    return cfg_each_string(ld, n, &cnt, trusted_elem, c, true);
}

static int forward_elem(struct cfg_ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    static const struct {
        const char *name;
        unsigned bit;
    } fields[] = {{"x-forwarded-for", MOAT_FWD_XFF},
                  {"x-forwarded-proto", MOAT_FWD_XFP},
                  {"forwarded", MOAT_FWD_FORWARDED}};
    struct moat_config *c = ud;
    char buf[64];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "a header name") != MOAT_OK)
        return MOAT_ERR;
    if (!strcasecmp(buf, "via"))
        return cfg_fail(ld, n, "Via is always sent (RFC 9110 7.6.3); `via:` names moat in it");
    for (size_t i = 0; i < MOAT_ARRAY_LEN(fields); i++) {
        if (strcasecmp(buf, fields[i].name))
            continue;
        if (c->fwd_fields & fields[i].bit)
            return cfg_fail(ld, n, "\"%s\" is listed twice", buf);
        c->fwd_fields |= fields[i].bit;
        return MOAT_OK;
    }
    return cfg_fail(ld, n,
                    "unknown forwarding header \"%s\" (expected x-forwarded-for, "
                    "x-forwarded-proto or forwarded)",
                    buf);
}

int cfg_k_forward(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    size_t cnt;
    c->fwd_fields = 0;
    return cfg_each_string(ld, n, &cnt, forward_elem, c, true);
}

/* Via's pseudonym goes into a header as is, so it must be a token. */
int cfg_k_via(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    char buf[65];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "a name") != MOAT_OK)
        return MOAT_ERR;
    if (!cfg_is_token(buf))
        return cfg_fail(ld, n, "\"%s\" must be a single word (letters, digits, -._)", buf);
    c->via_name = cfg_strndup(ld->box, buf, strlen(buf));
    return c->via_name ? MOAT_OK : cfg_oom(ld);
}

static int log_target(struct cfg_ld *ld, struct fy_node *n, char **out, bool allow_off)
{
    char buf[1024];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "a file path, stderr or stdout") != MOAT_OK)
        return MOAT_ERR;
    if (strcmp(buf, "off") == 0) {
        if (!allow_off)
            return cfg_fail(ld, n, "the error log cannot be turned off (use stderr or a path)");
        *out = NULL;
        return MOAT_OK;
    }
    if (strcmp(buf, "stderr") == 0 || strcmp(buf, "stdout") == 0)
        *out = cfg_strndup(ld->box, buf, strlen(buf));
    else
        *out = cfg_resolve_path(ld, buf);
    return *out ? MOAT_OK : cfg_oom(ld);
}

static int k_access_log(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    return log_target(ld, n, &((struct moat_config *)base)->access_log, true);
}

static int k_error_log(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    return log_target(ld, n, &((struct moat_config *)base)->error_log, false);
}

static const struct cfg_key admin_keys[] = {
    {.name = "listen",
     .type = KT_CUSTOM,
     .fn = k_admin_listen,
     .tname = "address",
     .flags = K_REQUIRED,
     .doc = "HOST:PORT of the admin API (required when admin is set)"},
    {.name = "token_file",
     .type = KT_CUSTOM,
     .fn = k_token_file,
     .tname = "path",
     .doc = "file holding the bearer token; required unless listen is loopback"},
    {.name = "dashboard",
     .type = KT_ENUM,
     CFG_AT(struct moat_config, admin.dashboard),
     .def = "true",
     .names = cfg_bool_names,
     .doc = "serve the live dashboard at / (docs/dashboard.md)"},
    {.name = "dashboard_clients",
     .type = KT_UINT,
     CFG_AT(struct moat_config, admin.dashboard_clients),
     .def = "16",
     .min = 1,
     .max = 1024,
     .doc = "most dashboards open at once (GET /events streams; 503 beyond)"},
};
const struct cfg_table cfg_admin_table = CFG_TABLE(admin_keys, admin_post);

static const struct cfg_key limits_keys[] = {
    {.name = "request_line",
     .type = KT_SIZE,
     CFG_AT(struct moat_config, h1.request_line),
     .def = "8KiB",
     .min = 256,
     .max = MiB,
     .doc = "longest request line (414 beyond)"},
    {.name = "header_bytes",
     .type = KT_SIZE,
     CFG_AT(struct moat_config, h1.head_bytes),
     .def = "16KiB",
     .min = KiB,
     .max = 4 * MiB,
     .doc = "largest request head, request line included (431 beyond)"},
    {.name = "header_count",
     .type = KT_UINT,
     CFG_AT(struct moat_config, h1.max_headers),
     .def = "100",
     .min = 1,
     .max = 10000,
     .doc = "most header fields in a request (431 beyond)"},
    {.name = "body_bytes",
     .type = KT_SIZE,
     CFG_AT(struct moat_config, max_body_bytes),
     .def = "0",
     .min = 0,
     .max = UINT64_MAX,
     .doc = "largest request body, 0 = unlimited (413 beyond)"},
    {.name = "body_buffer",
     .type = KT_SIZE,
     CFG_AT(struct moat_config, body_buffer),
     .def = "64KiB",
     .min = 16 * KiB,
     .max = 16 * MiB,
     .doc = "read buffer for a body larger than the head buffer, per transfer in progress"},
    {.name = "connections",
     .type = KT_UINT,
     CFG_AT(struct moat_config, max_connections),
     .def = "10000",
     .min = 1,
     .max = 1000000,
     .doc = "open client connections per worker"},
    {.name = "send_queue",
     .type = KT_SIZE,
     CFG_AT(struct moat_config, send_queue),
     .def = "128KiB",
     .min = 0,
     .max = 64 * MiB,
     .doc = "unsent response bytes the kernel holds per client (TCP_NOTSENT_LOWAT), 0 = no bound"},
};
const struct cfg_table cfg_limits_table = CFG_TABLE(limits_keys, limits_post);

static const struct cfg_key timeouts_keys[] = {
    {.name = "client_header",
     .type = KT_DURATION,
     CFG_AT(struct moat_config, client_header_timeout_ms),
     .def = "10s",
     .min = 1,
     .max = DAY_MS,
     .doc = "time for a client to send a whole request head"},
    {.name = "client_body",
     .type = KT_DURATION,
     CFG_AT(struct moat_config, client_body_timeout_ms),
     .def = "60s",
     .min = 1,
     .max = DAY_MS,
     .doc = "longest pause between two body reads"},
    {.name = "keepalive",
     .type = KT_DURATION,
     CFG_AT(struct moat_config, client_idle_timeout_ms),
     .def = "60s",
     .min = 1,
     .max = DAY_MS,
     .doc = "idle time between requests on a connection"},
    {.name = "send",
     .type = KT_DURATION,
     CFG_AT(struct moat_config, send_timeout_ms),
     .def = "60s",
     .min = 1,
     .max = DAY_MS,
     .doc = "longest time without progress writing to a client"},
    {.name = "drain",
     .type = KT_DURATION,
     CFG_AT(struct moat_config, drain_timeout_ms),
     .def = "30s",
     .min = 0,
     .max = DAY_MS,
     .doc = "on SIGTERM, time given to requests in flight (0 = close at once)"},
};
const struct cfg_table cfg_timeouts_table = CFG_TABLE(timeouts_keys, NULL);

static const char *const level_names[] = {"debug", "info", "warn", "error", NULL};

static const struct cfg_key log_keys[] = {
    {.name = "access",
     .type = KT_CUSTOM,
     .fn = k_access_log,
     .tname = "path|stderr|stdout|off",
     .def = "off",
     .doc = "where access log lines go"},
    {.name = "error",
     .type = KT_CUSTOM,
     .fn = k_error_log,
     .tname = "path|stderr|stdout",
     .def = "stderr",
     .doc = "where error and info messages go"},
    {.name = "level",
     .type = KT_ENUM,
     CFG_AT(struct moat_config, log_level),
     .def = "info",
     .names = level_names,
     .doc = "least severe level written"},
};
const struct cfg_table cfg_log_table = CFG_TABLE(log_keys, NULL);

static const struct cfg_key tuning_keys[] = {
    {.name = "batch_wait_us",
     .type = KT_UINT,
     CFG_AT(struct moat_config, batch_wait_us),
     .def = "20",
     .min = 0,
     .max = 1000,
     .doc = "while a worker is busy, pause this long (microseconds) to collect events instead "
            "of sleeping until each one; 0 = off"},
};
const struct cfg_table cfg_tuning_table = CFG_TABLE(tuning_keys, NULL);
