/* test_config.c: unit tests for the config module (YAML loading, errors, value parsers,
 * lookups, quick mode, docs completeness). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"

static char errbuf[MOAT_CONFIG_ERRLEN];

static struct moat_config *load(const char *yaml)
{
    errbuf[0] = '\0';
    return moat_config_load_string(yaml, strlen(yaml), "moat.yaml", errbuf, sizeof(errbuf));
}

/* A valid tail to append to documents that test something else. */
#define POOL_SITE                                                                                  \
    "pools:\n"                                                                                     \
    "  p: { origins: [\"127.0.0.1:8081\"] }\n"                                                     \
    "sites:\n"                                                                                     \
    "  - { hosts: [\"*\"], pool: p }\n"

/* A site with rules; the rules follow from line 7. */
#define RULES                                                                                      \
    "pools:\n"                                                                                     \
    "  p: { origins: [\"127.0.0.1:8081\"] }\n"                                                     \
    "sites:\n"                                                                                     \
    "  - hosts: [\"*\"]\n"                                                                         \
    "    pool: p\n"                                                                                \
    "    rules:\n"

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* ---- the embedded default ---------------------------------------------------------------- */

static void test_default_loads(void **state)
{
    (void)state;
    struct moat_config *c = load(moat_config_default_yaml);
    if (!c)
        fail_msg("%s", errbuf);
    assert_int_equal(c->nlisten, 1);
    assert_string_equal(c->listen[0].addr.text, "127.0.0.1:8080");
    assert_true(c->demo.enabled);
    assert_string_equal(c->demo.listen.text, "127.0.0.1:8081");
    assert_true(c->admin.enabled);
    assert_string_equal(c->admin.listen.text, "127.0.0.1:9090");
    assert_null(c->admin.token);
    assert_string_equal(c->access_log, "stderr");
    assert_string_equal(c->error_log, "stderr");
    assert_int_equal(c->log_level, MOAT_LOG_INFO);
    assert_int_equal(c->npools, 1);
    assert_string_equal(c->pools[0].name, "demo");
    assert_int_equal(c->pools[0].norigins, 1);
    assert_string_equal(c->pools[0].origins[0].addr.text, "127.0.0.1:8081");
    assert_int_equal(c->nsites, 1);
    const struct moat_cfg_site *s = moat_config_site(c, MOAT_STR("anything.example"));
    assert_non_null(s);
    assert_ptr_equal(s->pool, &c->pools[0]);
    assert_true(c->workers >= 1 && c->workers <= 256);
    assert_null(c->path);
    moat_config_release(&c);
    assert_null(c);
}

/* ---- every key, round trip ----------------------------------------------------------------- */

static void test_full_document(void **state)
{
    (void)state;
    char dir[] = "/tmp/moat-cfg-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char tok[256], yml[256];
    snprintf(tok, sizeof(tok), "%s/admin.token", dir);
    snprintf(yml, sizeof(yml), "%s/moat.yaml", dir);
    write_file(tok, "s3cret-token \n\n");
    write_file(yml, "# every key\n"
                    "listen: [\"127.0.0.1:8080\", \"[::1]:8443\", \":8090\"]\n"
                    "workers: 3\n"
                    "demo_origin: \"127.0.0.1:8081\"\n"
                    "admin:\n"
                    "  listen: \"0.0.0.0:9090\"\n"
                    "  token_file: admin.token\n"
                    "limits: { request_line: 4KiB, header_bytes: 32k, header_count: 50,\n"
                    "          body_bytes: 10MiB, connections: 500 }\n"
                    "timeouts: { client_header: 5s, client_body: 30s, keepalive: 2m,\n"
                    "            send: 45s, drain: 0 }\n"
                    "trusted_proxies: [\"10.0.0.0/8\", \"::1/128\", \"192.168.1.7\"]\n"
                    "forward_headers: [X-Forwarded-For, forwarded]\n"
                    "via: edge-1\n"
                    "log: { access: /var/log/moat/access.log, error: logs/err.log, level: debug }\n"
                    "pools:\n"
                    "  shop:\n"
                    "    origins: [\"127.0.0.1:8081\", { addr: \"127.0.0.1:8082\", weight: 2 },\n"
                    "              \"LocalHost:80\"]\n"
                    "    keepalive: 8\n"
                    "    connect_timeout: 1500ms\n"
                    "    first_byte_timeout: 20s\n"
                    "    idle_timeout: 1m\n"
                    "    keepalive_timeout: 1h\n"
                    "    host_header: origin\n"
                    "  blog:\n"
                    "    origins: [\"[::1]:9000\"]\n"
                    "sites:\n"
                    "  - hosts: [\"shop.example\", \"*.shop.example\"]\n"
                    "    pool: shop\n"
                    "  - hosts: \"*\"\n"
                    "    pool: blog\n");

    struct moat_config *c = moat_config_load(yml, errbuf, sizeof(errbuf));
    if (!c)
        fail_msg("%s", errbuf);
    assert_string_equal(c->path, yml);
    assert_int_equal(c->nlisten, 3);
    assert_string_equal(c->listen[0].addr.text, "127.0.0.1:8080");
    assert_string_equal(c->listen[1].addr.text, "[::1]:8443");
    assert_int_equal(c->listen[1].addr.ss.ss_family, AF_INET6);
    assert_string_equal(c->listen[2].addr.text, "0.0.0.0:8090");
    assert_int_equal(c->workers, 3);
    assert_true(c->demo.enabled);
    assert_true(c->admin.enabled);
    assert_string_equal(c->admin.listen.text, "0.0.0.0:9090");
    assert_string_equal(c->admin.token, "s3cret-token");
    assert_int_equal(c->h1.request_line, 4096);
    assert_int_equal(c->h1.head_bytes, 32768);
    assert_int_equal(c->h1.max_headers, 50);
    assert_int_equal(c->max_body_bytes, 10 << 20);
    assert_int_equal(c->max_connections, 500);
    assert_int_equal(c->client_header_timeout_ms, 5000);
    assert_int_equal(c->client_body_timeout_ms, 30000);
    assert_int_equal(c->client_idle_timeout_ms, 120000);
    assert_int_equal(c->send_timeout_ms, 45000);
    assert_int_equal(c->drain_timeout_ms, 0);
    assert_int_equal(c->ntrusted, 3);
    assert_int_equal(c->trusted[0].prefix, 96 + 8);
    assert_int_equal(c->trusted[1].prefix, 128);
    assert_int_equal(c->trusted[2].prefix, 128);
    assert_string_equal(c->via_name, "edge-1");
    assert_int_equal(c->fwd_fields, MOAT_FWD_XFF | MOAT_FWD_FORWARDED);
    assert_string_equal(c->access_log, "/var/log/moat/access.log");
    char errlog[300];
    snprintf(errlog, sizeof(errlog), "%s/logs/err.log", dir);
    assert_string_equal(c->error_log, errlog);
    assert_int_equal(c->log_level, MOAT_LOG_DEBUG);

    assert_int_equal(c->npools, 2);
    const struct moat_cfg_pool *p = &c->pools[0];
    assert_string_equal(p->name, "shop");
    assert_int_equal(p->norigins, 3);
    assert_string_equal(p->origins[0].addr.text, "127.0.0.1:8081");
    assert_int_equal(p->origins[0].weight, 1);
    assert_string_equal(p->origins[0].host, "127.0.0.1");
    assert_string_equal(p->origins[0].authority, "127.0.0.1:8081");
    assert_string_equal(p->origins[1].addr.text, "127.0.0.1:8082");
    assert_int_equal(p->origins[1].weight, 2);
    assert_string_equal(p->origins[2].addr.text, "localhost:80");
    assert_string_equal(p->origins[2].host, "localhost");
    assert_string_equal(p->origins[2].authority, "localhost");
    assert_int_equal(p->keepalive, 8);
    assert_int_equal(p->connect_timeout_ms, 1500);
    assert_int_equal(p->first_byte_timeout_ms, 20000);
    assert_int_equal(p->idle_timeout_ms, 60000);
    assert_int_equal(p->keepalive_timeout_ms, 3600000);
    assert_true(p->host_from_origin);
    p = &c->pools[1];
    assert_string_equal(p->name, "blog");
    assert_string_equal(p->origins[0].host, "[::1]");
    assert_string_equal(p->origins[0].authority, "[::1]:9000");
    assert_false(p->host_from_origin);
    assert_int_equal(p->keepalive, 256);

    assert_int_equal(c->nsites, 2);
    assert_int_equal(c->sites[0].nhosts, 2);
    assert_string_equal(c->sites[0].hosts[1], "*.shop.example");
    assert_ptr_equal(c->sites[0].pool, &c->pools[0]);
    assert_ptr_equal(c->sites[1].pool, &c->pools[1]);

    moat_config_ref(c);
    struct moat_config *c2 = c;
    moat_config_release(&c2);
    assert_null(c2);
    assert_string_equal(c->pools[0].name, "shop"); /* still alive: one reference left */
    moat_config_release(&c);

    unlink(tok);
    unlink(yml);
    rmdir(dir);
}

static void test_defaults(void **state)
{
    (void)state;
    struct moat_config *c = load(POOL_SITE);
    if (!c)
        fail_msg("%s", errbuf);
    assert_int_equal(c->nlisten, 1);
    assert_string_equal(c->listen[0].addr.text, "0.0.0.0:8080");
    assert_false(c->demo.enabled);
    assert_false(c->admin.enabled);
    assert_null(c->admin.token);
    assert_int_equal(c->h1.request_line, 8192);
    assert_int_equal(c->h1.head_bytes, 16384);
    assert_int_equal(c->h1.max_headers, 100);
    assert_int_equal(c->max_body_bytes, 0);
    assert_int_equal(c->body_buffer, 65536);
    assert_int_equal(c->max_connections, 10000);
    assert_int_equal(c->client_header_timeout_ms, 10000);
    assert_int_equal(c->client_body_timeout_ms, 60000);
    assert_int_equal(c->client_idle_timeout_ms, 60000);
    assert_int_equal(c->send_timeout_ms, 60000);
    assert_int_equal(c->drain_timeout_ms, 30000);
    assert_int_equal(c->ntrusted, 0);
    assert_string_equal(c->via_name, "moat");
    assert_int_equal(c->fwd_fields, MOAT_FWD_XFF | MOAT_FWD_XFP | MOAT_FWD_FORWARDED);
    assert_null(c->access_log);
    assert_string_equal(c->error_log, "stderr");
    assert_int_equal(c->log_level, MOAT_LOG_INFO);
    assert_false(c->listen[0].h2c);
    assert_int_equal(c->h2.max_streams, 128);
    assert_int_equal(c->h2.max_header_list, 65536);
    assert_int_equal(c->h2.stream_window, 65536);
    assert_int_equal(c->h2.conn_window, 1048576);
    assert_int_equal(c->h2.stream_buffer, 65536);
    assert_int_equal(c->h2.conn_buffer, 1048576);
    assert_int_equal(c->h2.flood_window_ms, 10000);
    assert_int_equal(c->h2.max_resets, 200);
    assert_int_equal(c->h2.max_control, 1000);
    assert_int_equal(c->h2.max_empty, 100);
    assert_int_equal(c->h2.max_continuations, 8);
    assert_int_equal(c->h2.max_settings, 32);
    assert_int_equal(c->h2.max_outbound_ack, 1000);
    assert_int_equal(c->h2.idle_timeout_ms, 60000);
    assert_int_equal(c->h2.stall_timeout_ms, 30000);
    const struct moat_cfg_pool *p = &c->pools[0];
    assert_int_equal(p->keepalive, 256);
    assert_int_equal(p->connect_timeout_ms, 5000);
    assert_int_equal(p->first_byte_timeout_ms, 60000);
    assert_int_equal(p->idle_timeout_ms, 60000);
    assert_int_equal(p->keepalive_timeout_ms, 30000);
    assert_false(p->host_from_origin);
    assert_int_equal(p->origins[0].weight, 1);
    moat_config_release(&c);
}

/* Anchors and aliases work (a common way to share origin lists). */
static void test_aliases(void **state)
{
    (void)state;
    struct moat_config *c = load("pools:\n"
                                 "  a: { origins: &o [\"127.0.0.1:1\", \"127.0.0.1:2\"] }\n"
                                 "  b: { origins: *o, keepalive: 0 }\n"
                                 "sites: [{ hosts: \"*\", pool: b }]\n");
    if (!c)
        fail_msg("%s", errbuf);
    assert_int_equal(c->pools[1].norigins, 2);
    assert_string_equal(c->pools[1].origins[1].addr.text, "127.0.0.1:2");
    moat_config_release(&c);
}

static void test_forward_headers_none(void **state)
{
    (void)state;
    struct moat_config *c = load(POOL_SITE "forward_headers: []\n");
    if (!c)
        fail_msg("%s", errbuf);
    assert_int_equal(c->fwd_fields, 0);
    moat_config_release(&c);
}

/* ---- errors: exact text, line and column --------------------------------------------------- */

struct err_case {
    const char *yaml;
    const char *want;
};

static const struct err_case err_cases[] = {
    /* YAML syntax, positioned by libfyaml */
    {"listen: [\"127.0.0.1:80\"\nworkers: 2\n",
     "moat.yaml:2:1: invalid YAML: wrongly indented flow sequence"},
    {"a: \"\\q\"\n", "moat.yaml:1:5: invalid YAML: invalid escape 'q' in double-quoted string"},
    /* top level */
    {"- listen\n", "moat.yaml:1:1: the top level must be a map of keys (listen, pools, sites, "
                   "...), got a list"},
    {"", "moat.yaml:1:1: sites: required key is missing"},
    {"# nothing but a comment\n", "moat.yaml:1:1: sites: required key is missing"},
    /* unknown and duplicate keys */
    {POOL_SITE "lisen: \":80\"\n", "moat.yaml:5:1: lisen: unknown key (did you mean \"listen\"?)"},
    {POOL_SITE "limits:\n  header_lines: 3\n",
     "moat.yaml:6:3: limits.header_lines: unknown key (known here: request_line, header_bytes, "
     "header_count, body_bytes, body_buffer, connections, send_queue)"},
    {POOL_SITE "via: a\nvia: b\n",
     "moat.yaml:6:1: via: duplicate key (first given at line 5, column 1)"},
    {POOL_SITE "base: &b { via: x }\n<<: *b\n",
     "moat.yaml:5:1: base: unknown key (known here: listen, tls, workers, demo_origin, admin, "
     "limits, timeouts, trusted_proxies, forward_headers, via, log, cache, monitors, pools, "
     "load_balancers, sites, shield, http2, tuning)"},
    /* http2 */
    {POOL_SITE "http2:\n  max_concurrent_streams: 0\n",
     "moat.yaml:6:27: http2.max_concurrent_streams: \"0\" is not a whole number from 1 to 10000"},
    {POOL_SITE "http2: { stream_window: 10 }\n",
     "moat.yaml:5:25: http2.stream_window: 10 is out of range (1KiB to 16MiB)"},
    {"listen: [{ addr: \"127.0.0.1:1\", tls: true, h2c: true }]\n" POOL_SITE,
     "moat.yaml:1:10: listen[0]: h2c is for plain listeners (a TLS listener offers h2 by ALPN)"},
    /* wrong types */
    {POOL_SITE "timeouts:\n  send: { a: 1 }\n",
     "moat.yaml:6:9: timeouts.send: expected a duration, got a map"},
    {POOL_SITE "limits: 5\n", "moat.yaml:5:9: limits: expected a map of keys, got a single value"},
    {POOL_SITE "listen: { a: b }\n",
     "moat.yaml:5:9: listen: expected a value or a list of values, got a map"},
    {POOL_SITE "via:\n", "moat.yaml:5:1: via: no value given"},
    /* bad values */
    {"pools:\n  shop:\n    origins: [\"127.0.0.1:8081\"]\n    connect_timeout: ten\n"
     "sites: [{hosts: x, pool: shop}]\n",
     "moat.yaml:4:22: pools.shop.connect_timeout: \"ten\" is not a duration (use e.g. 500ms, "
     "10s, 5m)"},
    {POOL_SITE "timeouts: { keepalive: -5s }\n",
     "moat.yaml:5:24: timeouts.keepalive: \"-5s\" is not a duration (use e.g. 500ms, 10s, 5m)"},
    {POOL_SITE "timeouts: { keepalive: 2d }\n",
     "moat.yaml:5:24: timeouts.keepalive: 2d is out of range (1ms to 1d)"},
    {POOL_SITE "timeouts: { send: 0 }\n",
     "moat.yaml:5:19: timeouts.send: 0 is out of range (1ms to 1d)"},
    {POOL_SITE "tuning: { batch_wait_us: 5000 }\n",
     "moat.yaml:5:26: tuning.batch_wait_us: \"5000\" is not a whole number from 0 to 1000"},
    {POOL_SITE "tuning: { batch_wait_us: 10us }\n",
     "moat.yaml:5:26: tuning.batch_wait_us: \"10us\" is not a whole number from 0 to 1000"},
    {POOL_SITE "limits: { header_bytes: lots }\n",
     "moat.yaml:5:25: limits.header_bytes: \"lots\" is not a size (use e.g. 512, 16KiB, 8MiB)"},
    {POOL_SITE "limits: { header_bytes: 1g }\n",
     "moat.yaml:5:25: limits.header_bytes: 1g is out of range (1KiB to 4MiB)"},
    {POOL_SITE "limits:\n  request_line: 32KiB\n",
     "moat.yaml:6:17: limits.request_line: must not exceed limits.header_bytes (32768 > 16384)"},
    {POOL_SITE "workers: -1\n", "moat.yaml:5:10: workers: \"-1\" is not a whole number from 1 to "
                                "256"},
    {POOL_SITE "workers: 257\n",
     "moat.yaml:5:10: workers: \"257\" is not a whole number from 1 to 256"},
    {POOL_SITE "workers: 99999999999999999999999\n",
     "moat.yaml:5:10: workers: \"99999999999999999999999\" is not a whole number from 1 to 256"},
    {POOL_SITE "log: { level: loud }\n",
     "moat.yaml:5:15: log.level: \"loud\" is not one of: debug, info, warn, error"},
    {POOL_SITE "log: { error: off }\n",
     "moat.yaml:5:15: log.error: the error log cannot be turned off (use stderr or a path)"},
    {POOL_SITE "forward_headers: [forwarded, via]\n",
     "moat.yaml:5:30: forward_headers[1]: Via is always sent (RFC 9110 7.6.3); `via:` names moat "
     "in it"},
    {POOL_SITE "forward_headers: x-real-ip\n",
     "moat.yaml:5:18: forward_headers: unknown forwarding header \"x-real-ip\" (expected "
     "x-forwarded-for, x-forwarded-proto or forwarded)"},
    {POOL_SITE "via: \"my proxy\"\n",
     "moat.yaml:5:6: via: \"my proxy\" must be a single word (letters, digits, -._)"},
    /* addresses and CIDRs */
    {POOL_SITE "listen: [\"127.0.0.1:80\", \"1.2.3.4\"]\n",
     "moat.yaml:5:26: listen[1]: \"1.2.3.4\" has no port (use HOST:PORT, e.g. 127.0.0.1:8080)"},
    {POOL_SITE "listen: \"127.0.0.1:70000\"\n",
     "moat.yaml:5:9: listen: \"127.0.0.1:70000\": the port must be a number from 1 to 65535"},
    {POOL_SITE "listen: \"::1:80\"\n",
     "moat.yaml:5:9: listen: \"::1:80\": an IPv6 address needs brackets, e.g. [::1]:8080"},
    {POOL_SITE "listen: [\":80\", \"0.0.0.0:80\"]\n",
     "moat.yaml:5:17: listen[1]: 0.0.0.0:80 is listed twice"},
    {POOL_SITE "demo_origin: \"bad host!:80\"\n",
     "moat.yaml:5:14: demo_origin: \"bad host!:80\": \"bad host!\" is not a valid host name or "
     "address"},
    {POOL_SITE "trusted_proxies:\n  - 10.0.0.0/8\n  - 10.0.0.1/8\n",
     "moat.yaml:7:5: trusted_proxies[1]: \"10.0.0.1/8\" has bits set after the /8 prefix (did "
     "you mean the network address?)"},
    {POOL_SITE "trusted_proxies: [\"::/129\"]\n",
     "moat.yaml:5:19: trusted_proxies[0]: \"::/129\": the prefix length must be 0..128"},
    {POOL_SITE "trusted_proxies: [\"10.0.0.0/33\"]\n",
     "moat.yaml:5:19: trusted_proxies[0]: \"10.0.0.0/33\": the prefix length must be 0..32"},
    {POOL_SITE "trusted_proxies: [\"ten.0/8\"]\n",
     "moat.yaml:5:19: trusted_proxies[0]: \"ten.0/8\" is not a CIDR block (use e.g. 10.0.0.0/8 "
     "or ::1/128)"},
    /* admin */
    {POOL_SITE "admin:\n", "moat.yaml:5:1: admin.listen: required key is missing"},
    {POOL_SITE "admin:\n  token_file: /nonexistent/moat.token\n  listen: \"127.0.0.1:9090\"\n",
     "moat.yaml:6:15: admin.token_file: cannot read \"/nonexistent/moat.token\": No such file "
     "or directory"},
    {POOL_SITE "admin: { listen: \"0.0.0.0:9090\" }\n",
     "moat.yaml:5:18: admin.listen: 0.0.0.0:9090 is not a loopback address, so the admin API "
     "needs a token: set admin.token_file"},
    /* pools */
    {"pools:\n  a: { origins: [\"127.0.0.1:1\"] }\n  a: { origins: [\"127.0.0.1:2\"] }\n"
     "sites: [{ hosts: x, pool: a }]\n",
     "moat.yaml:3:3: pools.a: duplicate pool name (first defined at line 2, column 3)"},
    {"pools:\n  a:\n    origins: []\nsites: [{ hosts: x, pool: a }]\n",
     "moat.yaml:3:14: pools.a.origins: the list must not be empty"},
    {"pools:\n  a:\n    keepalive: 2\nsites: [{ hosts: x, pool: a }]\n",
     "moat.yaml:3:5: pools.a.origins: required key is missing"},
    {"pools:\n  a:\nsites: [{ hosts: x, pool: a }]\n",
     "moat.yaml:2:3: pools.a: a pool needs at least origins: [HOST:PORT]"},
    {"pools:\n  a b: { origins: [\"127.0.0.1:1\"] }\nsites: [{ hosts: x, pool: a }]\n",
     "moat.yaml:2:3: pools.a b: a pool name is 1 to 64 letters, digits, '-', '_' or '.'"},
    {"pools:\n  a:\n    origins:\n      - { addr: \"127.0.0.1:1\", weight: 0 }\n"
     "sites: [{ hosts: x, pool: a }]\n",
     "moat.yaml:4:40: pools.a.origins[0].weight: \"0\" is not a whole number from 1 to 1000"},
    {"pools:\n  a:\n    origins:\n      - { weight: 2 }\n"
     "sites: [{ hosts: x, pool: a }]\n",
     "moat.yaml:4:9: pools.a.origins[0].addr: required key is missing"},
    {"pools:\n  a:\n    origins: [\"127.0.0.1:1\"]\n    host_header: server\n"
     "sites: [{ hosts: x, pool: a }]\n",
     "moat.yaml:4:18: pools.a.host_header: \"server\" is not one of: client, origin"},
    /* sites */
    {POOL_SITE "  - { hosts: [\"a.example\"], pool: nope }\n",
     "moat.yaml:5:35: sites[1].pool: no pool named \"nope\" (defined: p)"},
    {"sites: [{ hosts: x, pool: nope }]\n",
     "moat.yaml:1:27: sites[0].pool: no pool named \"nope\" (no pools are defined)"},
    {POOL_SITE "  - { hosts: [\"a.example\", \"*\"], pool: p }\n",
     "moat.yaml:5:28: sites[1].hosts: \"*\" is already used by sites[0] (line 4, column 15)"},
    {POOL_SITE "  - { hosts: [\"shop.example:8080\"], pool: p }\n",
     "moat.yaml:5:15: sites[1].hosts[0]: \"shop.example:8080\": hosts are names without a port"},
    {POOL_SITE "  - { hosts: [\"*shop\"], pool: p }\n",
     "moat.yaml:5:15: sites[1].hosts[0]: \"*shop\" is not a host name (use e.g. shop.example, "
     "*.shop.example or *)"},
    {POOL_SITE "  - { hosts: [], pool: p }\n",
     "moat.yaml:5:14: sites[1].hosts: the list must not be empty"},
    {POOL_SITE "  - { pool: p }\n", "moat.yaml:5:5: sites[1].hosts: required key is missing"},
    {"pools: { p: { origins: [\"127.0.0.1:1\"] } }\nsites: []\n",
     "moat.yaml:2:8: sites: at least one site is needed"},
    {"pools: { p: { origins: [\"127.0.0.1:1\"] } }\nsites: [\"p\"]\n",
     "moat.yaml:2:9: sites[0]: expected a site ({ hosts: [...], pool: NAME }), got a single "
     "value"},
    {RULES "      - match: { header: \"X Device\" }\n",
     "moat.yaml:7:26: sites[0].rules[0].match.header: \"X Device\" is not a header field "
     "name (letters, digits and !#$%&'*+-.^_`|~)"},
    {RULES "      - match: { cookie: \"a=b\" }\n",
     "moat.yaml:7:26: sites[0].rules[0].match.cookie: \"a=b\" is not a cookie name "
     "(letters, digits and !#$%&'*+-.^_`|~)"},
    /* cache key options (line 7 is the rule) */
    {RULES "      - key: { headers: [\"X Device\"] }\n",
     "moat.yaml:7:26: sites[0].rules[0].key.headers[0]: \"X Device\" is not a header field "
     "name (letters, digits and !#$%&'*+-.^_`|~)"},
    {RULES "      - key: { headers: [\"\"] }\n",
     "moat.yaml:7:26: sites[0].rules[0].key.headers[0]: \"\" is not a header field name "
     "(letters, digits and !#$%&'*+-.^_`|~)"},
    {RULES "      - key: { headers: [X-Device, x-device] }\n",
     "moat.yaml:7:36: sites[0].rules[0].key.headers[1]: \"x-device\" is listed twice (header "
     "names ignore case)"},
    {RULES "      - key: { headers: [a, b, c, d, e, f, g, h, i] }\n",
     "moat.yaml:7:25: sites[0].rules[0].key.headers: at most 8 header fields (got 9)"},
    {RULES "      - key: { headers: { a: 1 } }\n",
     "moat.yaml:7:25: sites[0].rules[0].key.headers: expected a value or a list of values, got "
     "a map"},
    {RULES "      - key: { headers: [[a]] }\n",
     "moat.yaml:7:26: sites[0].rules[0].key.headers[0]: expected a header field name, got a "
     "list"},
    {RULES "      - key: { cookies: [\"a=b\"] }\n",
     "moat.yaml:7:26: sites[0].rules[0].key.cookies[0]: \"a=b\" is not a cookie name (letters, "
     "digits and !#$%&'*+-.^_`|~)"},
    {RULES "      - key: { cookies: [sid, lang, sid] }\n",
     "moat.yaml:7:37: sites[0].rules[0].key.cookies[2]: \"sid\" is listed twice"},
    {RULES "      - key: { cookies: [a, b, c, d, e, f, g, h, i] }\n",
     "moat.yaml:7:25: sites[0].rules[0].key.cookies: at most 8 cookies (got 9)"},
    {RULES "      - origin_no_cache: skip\n",
     "moat.yaml:7:26: sites[0].rules[0].origin_no_cache: \"skip\" is not one of: respect, "
     "ignore"},
    {RULES "      - origin_no_cache: [ignore]\n",
     "moat.yaml:7:26: sites[0].rules[0].origin_no_cache: expected one of the listed words, got "
     "a list"},
    {RULES "      - key: { header: [a] }\n",
     "moat.yaml:7:16: sites[0].rules[0].key.header: unknown key (did you mean \"headers\"?)"},
};

static void test_errors(void **state)
{
    (void)state;
    int bad = 0;
    for (size_t i = 0; i < sizeof(err_cases) / sizeof(err_cases[0]); i++) {
        struct moat_config *c = load(err_cases[i].yaml);
        if (c) {
            moat_config_release(&c);
            print_error("case %zu loaded but should fail: %s\n", i, err_cases[i].want);
            bad++;
        } else if (strcmp(errbuf, err_cases[i].want) != 0) {
            print_error("case %zu:\n  got:  %s\n  want: %s\n", i, errbuf, err_cases[i].want);
            bad++;
        }
    }
    assert_int_equal(bad, 0);
}

static void test_file_errors(void **state)
{
    (void)state;
    struct moat_config *c = moat_config_load("/nonexistent/moat.yaml", errbuf, sizeof(errbuf));
    assert_null(c);
    assert_string_equal(errbuf, "moat: cannot read /nonexistent/moat.yaml: No such file or "
                                "directory");
    c = moat_config_load("/tmp", errbuf, sizeof(errbuf));
    assert_null(c);
    assert_string_equal(errbuf, "moat: /tmp: not a regular file");

    /* Positions name the file as given. */
    char path[] = "/tmp/moat-cfg-err-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    write_file(path, POOL_SITE "timeouts:\n  drain: forever\n");
    c = moat_config_load(path, errbuf, sizeof(errbuf));
    assert_null(c);
    char want[256];
    snprintf(want, sizeof(want),
             "%s:6:10: timeouts.drain: \"forever\" is not a duration (use e.g. 500ms, 10s, 5m)",
             path);
    assert_string_equal(errbuf, want);
    unlink(path);
}

/* A token file relative to the config resolves against the config's directory; empty and
 * whitespace-only tokens are refused. */
static void test_token_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/moat-tok-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char tok[256], yml[256];
    snprintf(tok, sizeof(tok), "%s/t", dir);
    snprintf(yml, sizeof(yml), "%s/moat.yaml", dir);
    write_file(yml, POOL_SITE "admin: { listen: \"0.0.0.0:9090\", token_file: t }\n");

    write_file(tok, " \n\t\n");
    struct moat_config *c = moat_config_load(yml, errbuf, sizeof(errbuf));
    assert_null(c);
    char want[1024];
    snprintf(want, sizeof(want),
             "%s:5:46: admin.token_file: \"%s\" is empty; put the bearer token in it", yml, tok);
    assert_string_equal(errbuf, want);

    write_file(tok, "two words\n");
    c = moat_config_load(yml, errbuf, sizeof(errbuf));
    assert_null(c);
    assert_non_null(strstr(errbuf, "contains a space or control byte"));

    write_file(tok, "abc\r\n");
    c = moat_config_load(yml, errbuf, sizeof(errbuf));
    if (!c)
        fail_msg("%s", errbuf);
    assert_string_equal(c->admin.token, "abc");
    moat_config_release(&c);
    unlink(tok);
    unlink(yml);
    rmdir(dir);
}

/* ---- value parsers ------------------------------------------------------------------------- */

static void test_durations(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        uint64_t ms;
    } ok[] = {
        {"0", 0},         {"10", 10000},
        {"150ms", 150},   {"10s", 10000},
        {"5m", 300000},   {"1h", 3600000},
        {"1d", 86400000}, {"0ms", 0},
        {"007s", 7000},   {"18446744073709551615ms", UINT64_MAX},
    };
    static const char *bad[] = {
        "",
        "s",
        "ms",
        "-1s",
        "+1s",
        "1.5s",
        "1 s",
        " 1s",
        "1s ",
        "10S",
        "1sec",
        "1w",
        "1m30s",
        "ten",
        "18446744073709551616ms",
        "18446744073709551615s",
        "99999999999999999d",
        "0x10s",
    };
    uint64_t v;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        if (moat_parse_duration_ms(ok[i].in, &v) != MOAT_OK)
            fail_msg("duration \"%s\" refused", ok[i].in);
        assert_int_equal(v, ok[i].ms);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (moat_parse_duration_ms(bad[i], &v) != MOAT_ERR)
            fail_msg("duration \"%s\" accepted", bad[i]);
    assert_int_equal(moat_parse_duration_ms(NULL, &v), MOAT_ERR);
}

static void test_sizes(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        uint64_t v;
    } ok[] = {
        {"0", 0},
        {"512", 512},
        {"512b", 512},
        {"16k", 16384},
        {"16K", 16384},
        {"16kb", 16384},
        {"16KiB", 16384},
        {"512MiB", 512ull << 20},
        {"1GiB", 1ull << 30},
        {"1g", 1ull << 30},
        {"2T", 2ull << 40},
        {"16777215TiB", 16777215ull << 40},
        {"18446744073709551615", UINT64_MAX},
    };
    static const char *bad[] = {
        "",
        "k",
        "-1",
        "1.5k",
        "1 k",
        "16KB ",
        "1kk",
        "1p",
        "ten",
        "16777216TiB",
        "18446744073709551616",
        "17179869184g",
    };
    uint64_t v;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        if (moat_parse_size(ok[i].in, &v) != MOAT_OK)
            fail_msg("size \"%s\" refused", ok[i].in);
        assert_int_equal(v, ok[i].v);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (moat_parse_size(bad[i], &v) != MOAT_ERR)
            fail_msg("size \"%s\" accepted", bad[i]);
}

static void test_addresses(void **state)
{
    (void)state;
    struct moat_addr a;
    char err[256];
    assert_int_equal(moat_addr_parse("127.0.0.1:8080", &a, err, sizeof(err)), MOAT_OK);
    assert_string_equal(a.text, "127.0.0.1:8080");
    assert_int_equal(a.ss.ss_family, AF_INET);
    assert_int_equal(a.len, sizeof(struct sockaddr_in));
    assert_int_equal(ntohs(((struct sockaddr_in *)&a.ss)->sin_port), 8080);
    assert_int_equal(moat_addr_parse("[0:0::1]:443", &a, err, sizeof(err)), MOAT_OK);
    assert_string_equal(a.text, "[::1]:443");
    assert_int_equal(a.len, sizeof(struct sockaddr_in6));
    assert_int_equal(moat_addr_parse(":9000", &a, err, sizeof(err)), MOAT_OK);
    assert_string_equal(a.text, "0.0.0.0:9000");
    assert_int_equal(moat_addr_parse("LOCALHOST:1", &a, err, sizeof(err)), MOAT_OK);
    assert_string_equal(a.text, "localhost:1");

    static const char *bad[] = {
        "",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:8o",
        "[::1]",
        "[::1]80",
        "[nope]:80",
        "::1:80",
        "a b:80",
        "-x:80",
        "127.0.0.1:-1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (moat_addr_parse(bad[i], &a, err, sizeof(err)) != MOAT_ERR)
            fail_msg("address \"%s\" accepted", bad[i]);
}

static void v4(uint8_t out[16], const char *s)
{
    memset(out, 0, 16);
    out[10] = out[11] = 0xff;
    assert_int_equal(inet_pton(AF_INET, s, out + 12), 1);
}

static void v6(uint8_t out[16], const char *s)
{
    assert_int_equal(inet_pton(AF_INET6, s, out), 1);
}

static void test_cidr(void **state)
{
    (void)state;
    struct moat_config *c = load(POOL_SITE "trusted_proxies:\n"
                                           "  - 10.0.0.0/8\n"
                                           "  - 192.168.1.0/25\n"
                                           "  - 203.0.113.9\n"
                                           "  - 2001:db8::/32\n"
                                           "  - ::1/128\n"
                                           "  - fe80::/10\n");
    if (!c)
        fail_msg("%s", errbuf);
    uint8_t a[16];
    v4(a, "10.0.0.1"), assert_true(moat_config_trusted(c, a));
    v4(a, "10.255.255.255"), assert_true(moat_config_trusted(c, a));
    v4(a, "11.0.0.0"), assert_false(moat_config_trusted(c, a));
    v4(a, "9.255.255.255"), assert_false(moat_config_trusted(c, a));
    v4(a, "192.168.1.127"), assert_true(moat_config_trusted(c, a));
    v4(a, "192.168.1.128"), assert_false(moat_config_trusted(c, a));
    v4(a, "203.0.113.9"), assert_true(moat_config_trusted(c, a));
    v4(a, "203.0.113.8"), assert_false(moat_config_trusted(c, a));
    v6(a, "2001:db8::1"), assert_true(moat_config_trusted(c, a));
    v6(a, "2001:db8:ffff:ffff::"), assert_true(moat_config_trusted(c, a));
    v6(a, "2001:db9::1"), assert_false(moat_config_trusted(c, a));
    v6(a, "::1"), assert_true(moat_config_trusted(c, a));
    v6(a, "::2"), assert_false(moat_config_trusted(c, a));
    v6(a, "febf::1"), assert_true(moat_config_trusted(c, a));
    v6(a, "fec0::1"), assert_false(moat_config_trusted(c, a));
    /* An IPv6 block never matches an IPv4 peer by accident and vice versa. */
    v6(a, "::ffff:10.0.0.1"), assert_true(moat_config_trusted(c, a));
    v6(a, "::10.0.0.1"), assert_false(moat_config_trusted(c, a));
    moat_config_release(&c);

    /* /0 matches everything of its family; empty list matches nothing. */
    struct moat_cidr all4, all6;
    char err[128];
    assert_int_equal(moat_cidr_parse_err("0.0.0.0/0", &all4, err, sizeof(err)), 0);
    assert_int_equal(moat_cidr_parse_err("::/0", &all6, err, sizeof(err)), 0);
    v4(a, "1.2.3.4");
    assert_true(moat_cidr_match_addr(&all4, a));
    assert_true(moat_cidr_match_addr(&all6, a));
    v6(a, "2001::1");
    assert_false(moat_cidr_match_addr(&all4, a));
    c = load(POOL_SITE);
    assert_non_null(c);
    assert_false(moat_config_trusted(c, a));
    moat_config_release(&c);
}

/* ---- site matching ----------------------------------------------------------------------- */

static void test_site_matching(void **state)
{
    (void)state;
    struct moat_config *c = load("pools:\n"
                                 "  p0: { origins: [\"127.0.0.1:1\"] }\n"
                                 "sites:\n"
                                 "  - { hosts: [\"*.example.com\"], pool: p0 }\n"
                                 "  - { hosts: [\"www.example.com\", \"[::1]\"], pool: p0 }\n"
                                 "  - { hosts: [\"*.api.example.com\"], pool: p0 }\n"
                                 "  - { hosts: [\"*\"], pool: p0 }\n"
                                 "  - { hosts: [\"Shop.Example.\", \"*.b\"], pool: p0 }\n");
    if (!c)
        fail_msg("%s", errbuf);
    const struct moat_cfg_site *s = c->sites;
#define SITE(h) moat_config_site(c, MOAT_STR(h))
    /* exact beats any wildcard, whatever the order in the file */
    assert_ptr_equal(SITE("www.example.com"), &s[1]);
    assert_ptr_equal(SITE("WWW.Example.COM"), &s[1]);
    assert_ptr_equal(SITE("www.example.com."), &s[1]);
    assert_ptr_equal(SITE("[::1]"), &s[1]);
    /* longest suffix wins */
    assert_ptr_equal(SITE("a.example.com"), &s[0]);
    assert_ptr_equal(SITE("a.b.example.com"), &s[0]);
    assert_ptr_equal(SITE("v1.api.example.com"), &s[2]);
    assert_ptr_equal(SITE("x.v1.api.example.com"), &s[2]);
    /* "*.api.example.com" does not match "api.example.com" itself: that is "*.example.com" */
    assert_ptr_equal(SITE("api.example.com"), &s[0]);
    /* "*.example.com" does not match "example.com": falls to "*" */
    assert_ptr_equal(SITE("example.com"), &s[3]);
    assert_ptr_equal(SITE("shop.example"), &s[4]);
    assert_ptr_equal(SITE("a.b"), &s[4]);
    assert_ptr_equal(SITE(".b"), &s[3]);
    assert_ptr_equal(SITE("b"), &s[3]);
    assert_ptr_equal(SITE("other"), &s[3]);
    assert_ptr_equal(SITE(""), &s[3]);
    assert_ptr_equal(moat_config_site(c, MOAT_STR_NULL), &s[3]);
    /* A host is not NUL-terminated on the wire: only <len> bytes count. */
    assert_ptr_equal(moat_config_site(c, moat_str_make("www.example.com:8080", 15)), &s[1]);
    moat_config_release(&c);

    /* Without "*", an unknown host matches nothing. */
    c = load("pools: { p: { origins: [\"127.0.0.1:1\"] } }\n"
             "sites: [{ hosts: [a.example, \"*.b.example\"], pool: p }]\n");
    if (!c)
        fail_msg("%s", errbuf);
    assert_non_null(SITE("a.example"));
    assert_non_null(SITE("x.b.example"));
    assert_null(SITE("b.example"));
    assert_null(SITE("z.example"));
    moat_config_release(&c);
#undef SITE
}

/* ---- quick mode -------------------------------------------------------------------------- */

/* Cache rules' key options: header names lowercased, cookie names kept as given (they are
 * case-sensitive), a single name for a list, an empty list, the defaults; origin_no_cache. */
static void test_rule_keys(void **state)
{
    (void)state;
    struct moat_config *c = load(RULES "      - key: { headers: [X-Device, Accept-Language],\n"
                                       "               cookies: [Session, session, lang] }\n"
                                       "      - key: { headers: X-One, cookies: [] }\n"
                                       "        origin_no_cache: ignore\n"
                                       "        set_cookie: strip\n"
                                       "      - match: { path: /x }\n"
                                       "        origin_no_cache: respect\n");
    if (!c)
        fail_msg("%s", errbuf);
    const struct moat_cfg_rule *r = c->sites[0].rules;
    assert_int_equal(c->sites[0].nrules, 3);
    assert_int_equal(r[0].nkey_headers, 2);
    assert_true(moat_str_eq(r[0].key_headers[0], MOAT_STR("x-device")));
    assert_true(moat_str_eq(r[0].key_headers[1], MOAT_STR("accept-language")));
    assert_int_equal(r[0].nkey_cookies, 3);
    assert_true(moat_str_eq(r[0].key_cookies[0], MOAT_STR("Session")));
    assert_true(moat_str_eq(r[0].key_cookies[1], MOAT_STR("session")));
    assert_true(moat_str_eq(r[0].key_cookies[2], MOAT_STR("lang")));
    assert_int_equal(r[1].nkey_headers, 1);
    assert_true(moat_str_eq(r[1].key_headers[0], MOAT_STR("x-one")));
    assert_int_equal(r[1].nkey_cookies, 0);
    assert_int_equal(r[2].nkey_headers, 0);
    assert_int_equal(r[2].nkey_cookies, 0);
    assert_int_equal(r[2].key_query, MOAT_KEY_QUERY_ALL);
    assert_int_equal(r[0].origin_no_cache, MOAT_ORIGIN_NO_CACHE_RESPECT); /* the default */
    assert_int_equal(r[1].origin_no_cache, MOAT_ORIGIN_NO_CACHE_IGNORE);
    assert_int_equal(r[2].origin_no_cache, MOAT_ORIGIN_NO_CACHE_RESPECT);
    assert_int_equal(r[0].set_cookie, MOAT_SET_COOKIE_REFUSE); /* the default */
    assert_int_equal(r[1].set_cookie, MOAT_SET_COOKIE_STRIP);
    moat_config_release(&c);

    /* Eight of each is the most. */
    c = load(RULES "      - key: { headers: [a, b, c, d, e, f, g, h],\n"
                   "               cookies: [a, b, c, d, e, f, g, \"!#$%&'*+-.^_`|~\"] }\n");
    if (!c)
        fail_msg("%s", errbuf);
    assert_int_equal(c->sites[0].rules[0].nkey_headers, 8);
    assert_int_equal(c->sites[0].rules[0].nkey_cookies, 8);
    assert_true(moat_str_eq(c->sites[0].rules[0].key_cookies[7], MOAT_STR("!#$%&'*+-.^_`|~")));
    moat_config_release(&c);
}

static void test_quick(void **state)
{
    (void)state;
    struct moat_config *c =
        moat_config_quick("http://127.0.0.1:3000", "127.0.0.1:8088", errbuf, sizeof(errbuf));
    if (!c)
        fail_msg("%s", errbuf);
    assert_null(c->path);
    assert_int_equal(c->nlisten, 1);
    assert_string_equal(c->listen[0].addr.text, "127.0.0.1:8088");
    assert_int_equal(c->npools, 1);
    assert_string_equal(c->pools[0].name, "origin");
    assert_string_equal(c->pools[0].origins[0].addr.text, "127.0.0.1:3000");
    assert_string_equal(c->pools[0].origins[0].authority, "127.0.0.1:3000");
    assert_int_equal(c->pools[0].origins[0].weight, 1);
    assert_int_equal(c->pools[0].connect_timeout_ms, 5000);
    assert_true(c->pools[0].host_from_origin);
    assert_int_equal(c->nsites, 1);
    assert_string_equal(c->sites[0].hosts[0], "*");
    assert_ptr_equal(moat_config_site(c, MOAT_STR("any.host")), &c->sites[0]);
    assert_ptr_equal(c->sites[0].pool, &c->pools[0]);
    assert_int_equal(c->client_header_timeout_ms, 10000);
    assert_int_equal(c->body_buffer, 65536);
    assert_false(c->admin.enabled);
    moat_config_release(&c);

    c = moat_config_quick("http://localhost", NULL, errbuf, sizeof(errbuf));
    if (!c)
        fail_msg("%s", errbuf);
    assert_string_equal(c->listen[0].addr.text, "0.0.0.0:8080");
    assert_string_equal(c->pools[0].origins[0].addr.text, "localhost:80");
    assert_string_equal(c->pools[0].origins[0].authority, "localhost");
    moat_config_release(&c);

    c = moat_config_quick("localhost:8081", NULL, errbuf, sizeof(errbuf));
    if (!c)
        fail_msg("%s", errbuf);
    assert_string_equal(c->pools[0].origins[0].addr.text, "localhost:8081");
    moat_config_release(&c);

    c = moat_config_quick("HTTP://[::1]/", NULL, errbuf, sizeof(errbuf));
    if (!c)
        fail_msg("%s", errbuf);
    assert_string_equal(c->pools[0].origins[0].addr.text, "[::1]:80");
    assert_string_equal(c->pools[0].origins[0].authority, "[::1]");
    moat_config_release(&c);

    static const struct err_case bad[] = {
        {"https://x:443/app", "moat: origin https://x:443/app: a path in the origin URL is not "
                              "supported; give only https://HOST[:PORT]"},
        {"ftp://x:21", "moat: origin ftp://x:21: only http:// and https:// origins are supported"},
        {"https://", "moat: origin \"https://\": expected https://HOST:PORT or HOST:PORT"},
        {"http://x:80/app", "moat: origin http://x:80/app: a path in the origin URL is not "
                            "supported; give only http://HOST[:PORT]"},
        {"localhost", "moat: origin localhost: \"localhost\" has no port (use HOST:PORT, e.g. "
                      "127.0.0.1:8080)"},
        {"http://", "moat: origin \"http://\": expected http://HOST:PORT or HOST:PORT"},
        {"http://u@x:80", "moat: origin http://u@x:80: user info in the URL is not supported"},
        {"http://127.0.0.1:99999", "moat: origin http://127.0.0.1:99999: \"127.0.0.1:99999\": "
                                   "the port must be a number from 1 to 65535"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        c = moat_config_quick(bad[i].yaml, NULL, errbuf, sizeof(errbuf));
        assert_null(c);
        if (strcmp(errbuf, bad[i].want) != 0)
            fail_msg("quick %zu:\n  got:  %s\n  want: %s", i, errbuf, bad[i].want);
    }
    c = moat_config_quick("127.0.0.1:1", "nope", errbuf, sizeof(errbuf));
    assert_null(c);
    assert_string_equal(errbuf, "moat: listen: \"nope\" has no port (use HOST:PORT, e.g. "
                                "127.0.0.1:8080)");
}

/* ---- TLS: listen entries, tls, pools.*.tls, sites[].https, sites[].upgrades ------------- */

/* A listener with tls and one certificate, for documents that test something else. */
#define TLS_LISTEN                                                                                 \
    "listen: [{ addr: \"127.0.0.1:8443\", tls: true }]\n"                                          \
    "tls: { certificates: [{ cert: a.pem, key: a.key }] }\n"

static void test_tls_document(void **state)
{
    (void)state;
    char dir[] = "/tmp/moat-tls-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char yml[256], want[512];
    snprintf(yml, sizeof(yml), "%s/moat.yaml", dir);
    write_file(yml, "listen:\n"
                    "  - \"127.0.0.1:8080\"\n"
                    "  - { addr: \"127.0.0.1:8443\", tls: true }\n"
                    "  - addr: \"[::1]:8444\"\n"
                    "    tls: false\n"
                    "  - { addr: \"127.0.0.1:8081\" }\n"
                    "tls:\n"
                    "  certificates:\n"
                    "    - { cert: shop.pem, key: /etc/moat/shop.key }\n"
                    "    - cert: certs/api.pem\n"
                    "      key: certs/api.key\n"
                    "  protocols: tls1.3\n"
                    "  ciphers: \"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384\"\n"
                    "  ciphersuites: TLS_AES_128_GCM_SHA256\n"
                    "  groups: X25519\n"
                    "  session_tickets: false\n"
                    "  ticket_rotation: 1h\n"
                    "  session_cache: 0\n"
                    "  session_timeout: 5m\n"
                    "  handshake_timeout: 3s\n"
                    "pools:\n"
                    "  shop:\n"
                    "    origins: [\"127.0.0.1:443\", \"127.0.0.1:8443\", \"[::1]:80\"]\n"
                    "    tls: { verify: false, ca_file: ca.pem, sni: Shop.Internal.,\n"
                    "           cert: client.pem, key: /k/client.key }\n"
                    "    host_header: origin\n"
                    "  plain: { origins: [\"127.0.0.1:80\"] }\n"
                    "  on: { origins: [\"127.0.0.1:443\"], tls: true }\n"
                    "  off: { origins: [\"127.0.0.1:443\"], tls: false }\n"
                    "  empty: { origins: [\"127.0.0.1:443\"], tls: {} }\n"
                    "  ca: { origins: [\"127.0.0.1:443\"], tls: { ca_file: /etc/ca.pem } }\n"
                    "sites:\n"
                    "  - hosts: [shop.example]\n"
                    "    pool: shop\n"
                    "    https: { redirect: true, hsts: 365d, hsts_subdomains: true,\n"
                    "             hsts_preload: true, same_cache: true }\n"
                    "    upgrades: [WebSocket, my-proto]\n"
                    "  - hosts: [\"*\"]\n"
                    "    pool: plain\n"
                    "    upgrades: []\n"
                    "  - hosts: [a.example]\n"
                    "    pool: on\n"
                    "    https: { hsts: 1d }\n"
                    "    upgrades: x-One\n");
    struct moat_config *c = moat_config_load(yml, errbuf, sizeof(errbuf));
    if (!c)
        fail_msg("%s", errbuf);

    assert_int_equal(c->nlisten, 4);
    assert_string_equal(c->listen[0].addr.text, "127.0.0.1:8080");
    assert_false(c->listen[0].tls);
    assert_string_equal(c->listen[1].addr.text, "127.0.0.1:8443");
    assert_true(c->listen[1].tls);
    assert_string_equal(c->listen[2].addr.text, "[::1]:8444");
    assert_false(c->listen[2].tls);
    assert_string_equal(c->listen[3].addr.text, "127.0.0.1:8081");
    assert_false(c->listen[3].tls);

    const struct moat_cfg_tls *t = &c->tls;
    assert_int_equal(t->ncerts, 2);
    snprintf(want, sizeof(want), "%s/shop.pem", dir);
    assert_string_equal(t->certs[0].cert, want);
    assert_string_equal(t->certs[0].key, "/etc/moat/shop.key");
    snprintf(want, sizeof(want), "%s/certs/api.pem", dir);
    assert_string_equal(t->certs[1].cert, want);
    snprintf(want, sizeof(want), "%s/certs/api.key", dir);
    assert_string_equal(t->certs[1].key, want);
    assert_int_equal(t->protocols, MOAT_TLS_V13);
    assert_string_equal(t->ciphers, "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384");
    assert_string_equal(t->ciphersuites, "TLS_AES_128_GCM_SHA256");
    assert_string_equal(t->groups, "X25519");
    assert_false(t->session_tickets);
    assert_int_equal(t->ticket_rotation_ms, 3600000);
    assert_int_equal(t->session_cache, 0);
    assert_int_equal(t->session_timeout_ms, 300000);
    assert_int_equal(t->handshake_timeout_ms, 3000);

    const struct moat_cfg_pool *p = &c->pools[0];
    assert_string_equal(p->name, "shop");
    assert_true(p->tls.enabled);
    assert_false(p->tls.verify);
    snprintf(want, sizeof(want), "%s/ca.pem", dir);
    assert_string_equal(p->tls.ca_file, want);
    assert_string_equal(p->tls.sni, "shop.internal");
    snprintf(want, sizeof(want), "%s/client.pem", dir);
    assert_string_equal(p->tls.cert, want);
    assert_string_equal(p->tls.key, "/k/client.key");
    assert_null(p->tls_client);
    /* Over TLS the port that goes without saying is 443, not 80. */
    assert_string_equal(p->origins[0].authority, "127.0.0.1");
    assert_string_equal(p->origins[1].authority, "127.0.0.1:8443");
    assert_string_equal(p->origins[2].authority, "[::1]:80");
    assert_string_equal(p->origins[2].host, "[::1]");
    p = &c->pools[1]; /* plain: no tls, Host as before */
    assert_false(p->tls.enabled);
    assert_string_equal(p->origins[0].authority, "127.0.0.1");
    for (size_t i = 2; i <= 5; i++) {
        p = &c->pools[i];
        bool on = i != 3; /* on, off, empty, ca */
        assert_int_equal(p->tls.enabled, on);
        assert_int_equal(p->tls.verify, on);
        assert_null(p->tls.sni);
        assert_null(p->tls.cert);
        assert_null(p->tls.key);
        assert_string_equal(p->origins[0].authority, on ? "127.0.0.1" : "127.0.0.1:443");
    }
    assert_null(c->pools[2].tls.ca_file);
    assert_string_equal(c->pools[5].tls.ca_file, "/etc/ca.pem");

    const struct moat_cfg_site *s = &c->sites[0];
    assert_true(s->https_redirect);
    assert_int_equal(s->hsts_ms, 365 * 86400000ull);
    assert_true(s->hsts_subdomains);
    assert_true(s->hsts_preload);
    assert_true(s->https_same_cache);
    assert_int_equal(s->nupgrades, 2);
    assert_string_equal(s->upgrades[0], "websocket");
    assert_string_equal(s->upgrades[1], "my-proto");
    s = &c->sites[1];
    assert_false(s->https_redirect);
    assert_int_equal(s->hsts_ms, 0);
    assert_int_equal(s->nupgrades, 0);
    s = &c->sites[2];
    assert_false(s->https_redirect);
    assert_int_equal(s->hsts_ms, 86400000);
    assert_false(s->hsts_subdomains);
    assert_false(s->hsts_preload);
    assert_false(s->https_same_cache);
    assert_int_equal(s->nupgrades, 1);
    assert_string_equal(s->upgrades[0], "x-one");
    assert_true(moat_config_wants_tls(c));
    moat_config_release(&c);
    unlink(yml);
    rmdir(dir);
}

/* Absent sections get every documented default. */
static void test_tls_defaults(void **state)
{
    (void)state;
    struct moat_config *c = load(POOL_SITE);
    if (!c)
        fail_msg("%s", errbuf);
    assert_false(c->listen[0].tls);
    const struct moat_cfg_tls *t = &c->tls;
    assert_null(t->certs);
    assert_int_equal(t->ncerts, 0);
    assert_int_equal(t->protocols, MOAT_TLS_V12 | MOAT_TLS_V13);
    assert_string_equal(t->ciphers, "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305");
    assert_string_equal(
        t->ciphersuites,
        "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
    assert_string_equal(t->groups, "X25519:P-256:P-384");
    assert_true(t->session_tickets);
    assert_int_equal(t->ticket_rotation_ms, 12 * 3600000ull);
    assert_int_equal(t->session_cache, 20480);
    assert_int_equal(t->session_timeout_ms, 3600000);
    assert_int_equal(t->handshake_timeout_ms, 10000);
    const struct moat_cfg_pool *p = &c->pools[0];
    assert_false(p->tls.enabled);
    assert_null(p->tls.ca_file);
    assert_null(p->tls.sni);
    assert_null(p->tls_client);
    const struct moat_cfg_site *s = &c->sites[0];
    assert_false(s->https_redirect);
    assert_int_equal(s->hsts_ms, 0);
    assert_false(s->hsts_subdomains);
    assert_false(s->hsts_preload);
    assert_false(s->https_same_cache);
    assert_int_equal(s->nupgrades, 1);
    assert_string_equal(s->upgrades[0], "websocket");
    assert_null(c->rt);
    assert_null(c->rt_free);
    assert_false(moat_config_wants_tls(c));
    moat_config_release(&c);

    /* The embedded demo stays plain HTTP. */
    c = load(moat_config_default_yaml);
    if (!c)
        fail_msg("%s", errbuf);
    for (size_t i = 0; i < c->nlisten; i++)
        assert_false(c->listen[i].tls);
    assert_int_equal(c->tls.ncerts, 0);
    for (size_t i = 0; i < c->npools; i++)
        assert_false(c->pools[i].tls.enabled);
    assert_false(c->sites[0].https_redirect);
    moat_config_release(&c);

    /* Every default spelled out loads to the same values. */
    c = load(POOL_SITE
             "listen: [{ addr: \"127.0.0.1:8443\", tls: true }]\n"
             "tls:\n"
             "  certificates: [{ cert: a.pem, key: a.key }]\n"
             "  protocols: [tls1.2, tls1.3]\n"
             "  ciphers: ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
             "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
             "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305\n"
             "  ciphersuites: "
             "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256\n"
             "  groups: X25519:P-256:P-384\n"
             "  session_tickets: true\n"
             "  ticket_rotation: 12h\n"
             "  session_cache: 20480\n"
             "  session_timeout: 1h\n"
             "  handshake_timeout: 10s\n");
    if (!c)
        fail_msg("%s", errbuf);
    struct moat_config *d = load(POOL_SITE TLS_LISTEN);
    if (!d)
        fail_msg("%s", errbuf);
    assert_int_equal(c->tls.protocols, d->tls.protocols);
    assert_string_equal(c->tls.ciphers, d->tls.ciphers);
    assert_string_equal(c->tls.ciphersuites, d->tls.ciphersuites);
    assert_string_equal(c->tls.groups, d->tls.groups);
    assert_int_equal(c->tls.ticket_rotation_ms, d->tls.ticket_rotation_ms);
    assert_int_equal(c->tls.session_cache, d->tls.session_cache);
    assert_int_equal(c->tls.session_timeout_ms, d->tls.session_timeout_ms);
    assert_int_equal(c->tls.handshake_timeout_ms, d->tls.handshake_timeout_ms);
    moat_config_release(&c);
    moat_config_release(&d);
}

/* The errors of the new keys, with their positions. POOL_SITE takes lines 1-4. */
static const struct err_case tls_err_cases[] = {
    /* listen entries */
    {POOL_SITE "listen:\n  - \"127.0.0.1:80\"\n  - { addr: \"127.0.0.1:443\", tls: true }\n",
     "moat.yaml:7:5: listen[1]: tls: true needs tls.certificates"},
    {POOL_SITE "listen:\n  - addr: \"127.0.0.1:443\"\n    tls: true\n"
               "tls: { certificates: [] }\n",
     "moat.yaml:6:5: listen[0]: tls: true needs tls.certificates"},
    {POOL_SITE "listen: [{ adr: \"127.0.0.1:443\" }]\n",
     "moat.yaml:5:12: listen[0].adr: unknown key (did you mean \"addr\"?)"},
    {POOL_SITE "listen: [{ addr: \"127.0.0.1:443\", tls: yes }]\n",
     "moat.yaml:5:40: listen[0].tls: \"yes\" is not one of: false, true"},
    {POOL_SITE "listen: [{ tls: true }]\n",
     "moat.yaml:5:10: listen[0].addr: required key is missing"},
    {POOL_SITE "listen: [[\"127.0.0.1:80\"]]\n",
     "moat.yaml:5:10: listen[0]: expected \"HOST:PORT\" or { addr: HOST:PORT, tls: true }, got a "
     "list"},
    {POOL_SITE "listen: [\"127.0.0.1:80\", { addr: \"127.0.0.1:80\", tls: true }]\n",
     "moat.yaml:5:26: listen[1]: 127.0.0.1:80 is listed twice"},
    {POOL_SITE "listen: [{ addr: \"127.0.0.1\" }]\n",
     "moat.yaml:5:18: listen[0].addr: \"127.0.0.1\" has no port (use HOST:PORT, e.g. "
     "127.0.0.1:8080)"},
    /* tls */
    {POOL_SITE "tls:\n  protocols: [tls1.2, tls1.1]\n",
     "moat.yaml:6:23: tls.protocols[1]: tls1.1 is not supported: it is insecure (RFC 8996)"},
    {POOL_SITE "tls: { protocols: TLSv1 }\n",
     "moat.yaml:5:19: tls.protocols: TLSv1 is not supported: it is insecure (RFC 8996)"},
    {POOL_SITE "tls: { protocols: [sslv3] }\n",
     "moat.yaml:5:20: tls.protocols[0]: sslv3 is not supported: it is insecure (RFC 7568)"},
    {POOL_SITE "tls: { protocols: [] }\n",
     "moat.yaml:5:19: tls.protocols: the list must not be empty"},
    {POOL_SITE "tls: { protocols: tls2 }\n",
     "moat.yaml:5:19: tls.protocols: \"tls2\" is not one of: tls1.2, tls1.3"},
    {POOL_SITE "tls: { protocols: [tls1.3, tls1.3] }\n",
     "moat.yaml:5:28: tls.protocols[1]: \"tls1.3\" is listed twice"},
    {POOL_SITE "tls: { protocols: }\n", "moat.yaml:5:8: tls.protocols: no value given"},
    {POOL_SITE "tls: { ciphers: \"\" }\n", "moat.yaml:5:17: tls.ciphers: the list is empty"},
    {POOL_SITE "tls: { groups: \"X25519 P-256\" }\n",
     "moat.yaml:5:16: tls.groups: \"X25519 P-256\" contains a space or control byte (separate "
     "names with ':')"},
    {POOL_SITE "tls: { ticket_rotation: 30s }\n",
     "moat.yaml:5:25: tls.ticket_rotation: 30s is out of range (1m to 7d)"},
    {POOL_SITE "tls: { session_timeout: 8d }\n",
     "moat.yaml:5:25: tls.session_timeout: 8d is out of range (1s to 7d)"},
    {POOL_SITE "tls: { session_cache: 2000000 }\n",
     "moat.yaml:5:23: tls.session_cache: \"2000000\" is not a whole number from 0 to 1000000"},
    {POOL_SITE "tls: { session_tickets: on }\n",
     "moat.yaml:5:25: tls.session_tickets: \"on\" is not one of: false, true"},
    {POOL_SITE "tls: { handshake_timeout: 0 }\n",
     "moat.yaml:5:27: tls.handshake_timeout: 0 is out of range (1ms to 1d)"},
    {POOL_SITE "tls:\n  certificate: []\n",
     "moat.yaml:6:3: tls.certificate: unknown key (did you mean \"certificates\"?)"},
    {POOL_SITE "tls:\n  certificates:\n    - { cert: a.pem }\n",
     "moat.yaml:7:7: tls.certificates[0].key: required key is missing"},
    {POOL_SITE "tls:\n  certificates: [a.pem]\n",
     "moat.yaml:6:18: tls.certificates[0]: expected { cert: FILE, key: FILE }, got a single "
     "value"},
    {POOL_SITE "tls:\n  certificates: { cert: a.pem, key: a.key }\n",
     "moat.yaml:6:17: tls.certificates: expected a list of { cert: FILE, key: FILE }, got a map"},
    {POOL_SITE "tls:\n  certificates: [{ cert: a.pem, key: \"\" }]\n",
     "moat.yaml:6:38: tls.certificates[0].key: the path is empty"},
    /* pools.*.tls (the pool is on line 2) */
    {"pools:\n  p: { origins: [\"127.0.0.1:443\"], tls: yes }\nsites: [{ hosts: x, pool: p }]\n",
     "moat.yaml:2:41: pools.p.tls: \"yes\" is not one of: false, true (or a map { verify, ca_file, "
     "sni, cert, key })"},
    {"pools:\n  p: { origins: [\"127.0.0.1:443\"], tls: [a] }\nsites: [{ hosts: x, pool: p }]\n",
     "moat.yaml:2:41: pools.p.tls: expected true, false or a map { verify, ca_file, sni, cert, "
     "key }, got a list"},
    {"pools:\n  p: { origins: [\"127.0.0.1:443\"], tls: { cert: c.pem } }\n"
     "sites: [{ hosts: x, pool: p }]\n",
     "moat.yaml:2:49: pools.p.tls.cert: a client certificate needs both cert and key: key is "
     "missing"},
    {"pools:\n  p:\n    origins: [\"127.0.0.1:443\"]\n    tls:\n      key: c.key\n"
     "sites: [{ hosts: x, pool: p }]\n",
     "moat.yaml:5:12: pools.p.tls.key: a client certificate needs both cert and key: cert is "
     "missing"},
    {"pools:\n  p: { origins: [\"127.0.0.1:443\"], tls: { sni: 10.0.0.1 } }\n"
     "sites: [{ hosts: x, pool: p }]\n",
     "moat.yaml:2:48: pools.p.tls.sni: \"10.0.0.1\" is an IP address; SNI carries host names only "
     "(RFC 6066): leave sni out to verify the origin by its address"},
    {"pools:\n  p: { origins: [\"127.0.0.1:443\"], tls: { sni: \"[::1]\" } }\n"
     "sites: [{ hosts: x, pool: p }]\n",
     "moat.yaml:2:48: pools.p.tls.sni: \"[::1]\" is an IP address; SNI carries host names only "
     "(RFC 6066): leave sni out to verify the origin by its address"},
    {"pools:\n  p: { origins: [\"127.0.0.1:443\"], tls: { sni: \"shop internal\" } }\n"
     "sites: [{ hosts: x, pool: p }]\n",
     "moat.yaml:2:48: pools.p.tls.sni: \"shop internal\" is not a host name (use e.g. "
     "shop.internal)"},
    {"pools:\n  p: { origins: [\"127.0.0.1:443\"], tls: { sni: a..b } }\n"
     "sites: [{ hosts: x, pool: p }]\n",
     "moat.yaml:2:48: pools.p.tls.sni: \"a..b\" is not a host name (use e.g. shop.internal)"},
    {"pools:\n  p: { origins: [\"127.0.0.1:443\"], tls: { sni: a-.b } }\n"
     "sites: [{ hosts: x, pool: p }]\n",
     "moat.yaml:2:48: pools.p.tls.sni: \"a-.b\" is not a host name (use e.g. shop.internal)"},
    {"pools:\n  p: { origins: [\"127.0.0.1:443\"], tls: { verify: maybe } }\n"
     "sites: [{ hosts: x, pool: p }]\n",
     "moat.yaml:2:51: pools.p.tls.verify: \"maybe\" is not one of: false, true"},
    {"pools:\n  p: { origins: [\"127.0.0.1:443\"], tls: { verfy: false } }\n"
     "sites: [{ hosts: x, pool: p }]\n",
     "moat.yaml:2:43: pools.p.tls.verfy: unknown key (did you mean \"verify\"?)"},
    {"pools:\n  p: { origins: [\"127.0.0.1:443\"], tls: }\nsites: [{ hosts: x, pool: p }]\n",
     "moat.yaml:2:36: pools.p.tls: no value given"},
    /* sites[].https: a second site on line 5 (after POOL_SITE) or 7 (after TLS_LISTEN too) */
    {POOL_SITE "  - { hosts: [a], pool: p, https: { redirect: true } }\n",
     "moat.yaml:5:47: sites[1].https.redirect: needs a listener with tls: true (there is no "
     "https:// to redirect to)"},
    {POOL_SITE "  - { hosts: [a], pool: p, https: { hsts: 1d } }\n",
     "moat.yaml:5:43: sites[1].https.hsts: needs a listener with tls: true "
     "(Strict-Transport-Security is only sent over https)"},
    {TLS_LISTEN POOL_SITE "  - { hosts: [a], pool: p, https: { hsts_subdomains: true } }\n",
     "moat.yaml:7:54: sites[1].https.hsts_subdomains: has no effect without hsts (a max-age, "
     "e.g. hsts: 365d)"},
    {TLS_LISTEN POOL_SITE "  - { hosts: [a], pool: p, https: { hsts: 30d, hsts_subdomains: true,\n"
                          "      hsts_preload: true } }\n",
     "moat.yaml:8:21: sites[1].https.hsts_preload: the preload list takes only hsts: 365d or "
     "more with hsts_subdomains: true (hstspreload.org)"},
    {TLS_LISTEN POOL_SITE
     "  - { hosts: [a], pool: p, https: { hsts: 365d, hsts_preload: true } }\n",
     "moat.yaml:7:63: sites[1].https.hsts_preload: the preload list takes only hsts: 365d or "
     "more with hsts_subdomains: true (hstspreload.org)"},
    {TLS_LISTEN POOL_SITE "  - { hosts: [a], pool: p, https: { hsts: 1000d } }\n",
     "moat.yaml:7:43: sites[1].https.hsts: 1000d is out of range (0 to 730d)"},
    {TLS_LISTEN POOL_SITE "  - { hosts: [a], pool: p, https: { redirect: yes } }\n",
     "moat.yaml:7:47: sites[1].https.redirect: \"yes\" is not one of: false, true"},
    {POOL_SITE "  - { hosts: [a], pool: p, https: { hst: 1d } }\n",
     "moat.yaml:5:37: sites[1].https.hst: unknown key (did you mean \"hsts\"?)"},
    {POOL_SITE "  - { hosts: [a], pool: p, https: true }\n",
     "moat.yaml:5:35: sites[1].https: expected a map of keys, got a single value"},
    /* sites[].upgrades */
    {POOL_SITE "  - { hosts: [a], pool: p, upgrades: [websocket, h2c] }\n",
     "moat.yaml:5:50: sites[1].upgrades[1]: h2c is never forwarded: it would let a client speak "
     "HTTP/2 to the origin past every rule moat enforces"},
    {POOL_SITE "  - { hosts: [a], pool: p, upgrades: H2C }\n",
     "moat.yaml:5:38: sites[1].upgrades: h2c is never forwarded: it would let a client speak "
     "HTTP/2 to the origin past every rule moat enforces"},
    {POOL_SITE "  - { hosts: [a], pool: p, upgrades: [websocket, WebSocket] }\n",
     "moat.yaml:5:50: sites[1].upgrades[1]: \"websocket\" is listed twice (protocol names ignore "
     "case)"},
    {POOL_SITE "  - { hosts: [a], pool: p, upgrades: [\"web socket\"] }\n",
     "moat.yaml:5:39: sites[1].upgrades[0]: \"web socket\" is not a protocol name (a token: "
     "letters, digits and !#$%&'*+-.^_`|~)"},
    {POOL_SITE "  - { hosts: [a], pool: p, upgrades: { websocket: true } }\n",
     "moat.yaml:5:38: sites[1].upgrades: expected a value or a list of values, got a map"},
    {POOL_SITE "  - { hosts: [a], pool: p, upgrade: [websocket] }\n",
     "moat.yaml:5:28: sites[1].upgrade: unknown key (did you mean \"upgrades\"?)"},
};

static void test_tls_errors(void **state)
{
    (void)state;
    int bad = 0;
    for (size_t i = 0; i < sizeof(tls_err_cases) / sizeof(tls_err_cases[0]); i++) {
        struct moat_config *c = load(tls_err_cases[i].yaml);
        if (c) {
            moat_config_release(&c);
            print_error("case %zu loaded but should fail: %s\n", i, tls_err_cases[i].want);
            bad++;
        } else if (strcmp(errbuf, tls_err_cases[i].want) != 0) {
            print_error("case %zu:\n  got:  %s\n  want: %s\n", i, errbuf, tls_err_cases[i].want);
            bad++;
        }
    }
    assert_int_equal(bad, 0);
}

/* Quick mode with an https:// origin: TLS to it, verified against the system store, SNI the
 * origin's host (sni unset), port 443 by default and left out of Host. */
static void test_quick_https(void **state)
{
    (void)state;
    struct moat_config *c = moat_config_quick("https://127.0.0.1", NULL, errbuf, sizeof(errbuf));
    if (!c)
        fail_msg("%s", errbuf);
    const struct moat_cfg_pool *p = &c->pools[0];
    assert_string_equal(p->origins[0].addr.text, "127.0.0.1:443");
    assert_string_equal(p->origins[0].authority, "127.0.0.1");
    assert_true(p->tls.enabled);
    assert_true(p->tls.verify);
    assert_null(p->tls.ca_file);
    assert_null(p->tls.sni);
    assert_null(p->tls.cert);
    assert_null(p->tls.key);
    assert_true(p->host_from_origin);
    assert_false(c->listen[0].tls);
    assert_int_equal(c->sites[0].nupgrades, 1);
    assert_string_equal(c->sites[0].upgrades[0], "websocket");
    assert_false(c->sites[0].https_redirect);
    assert_int_equal(c->tls.protocols, MOAT_TLS_V12 | MOAT_TLS_V13);
    assert_true(moat_config_wants_tls(c));
    moat_config_release(&c);

    c = moat_config_quick("HTTPS://localhost:8443/", "127.0.0.1:8088", errbuf, sizeof(errbuf));
    if (!c)
        fail_msg("%s", errbuf);
    assert_string_equal(c->pools[0].origins[0].addr.text, "localhost:8443");
    assert_string_equal(c->pools[0].origins[0].authority, "localhost:8443");
    assert_string_equal(c->pools[0].origins[0].host, "localhost");
    assert_true(c->pools[0].tls.enabled);
    moat_config_release(&c);

    c = moat_config_quick("https://[::1]:80", NULL, errbuf, sizeof(errbuf));
    if (!c)
        fail_msg("%s", errbuf);
    assert_string_equal(c->pools[0].origins[0].authority, "[::1]:80");
    moat_config_release(&c);

    /* http:// stays plain, and gets the site defaults too. */
    c = moat_config_quick("http://127.0.0.1:3000", NULL, errbuf, sizeof(errbuf));
    if (!c)
        fail_msg("%s", errbuf);
    assert_false(c->pools[0].tls.enabled);
    assert_int_equal(c->sites[0].nupgrades, 1);
    assert_false(moat_config_wants_tls(c));
    moat_config_release(&c);
}

/* ---- the key table and the reference doc -------------------------------------------------- */

struct doc_check {
    char *doc;
    size_t nkeys;
    char missing[2048];
};

static void check_key(const char *path, const char *type, const char *def, const char *doc,
                      void *ud)
{
    struct doc_check *dc = ud;
    char needle[256];
    dc->nkeys++;
    assert_non_null(type);
    assert_non_null(doc);
    assert_true(strlen(doc) > 0);
    snprintf(needle, sizeof(needle), "`%s`", path);
    if (!strstr(dc->doc, needle)) {
        size_t used = strlen(dc->missing);
        snprintf(dc->missing + used, sizeof(dc->missing) - used, " %s", path);
    }
}

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    static char buf[1 << 18];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

static void test_docs_complete(void **state)
{
    (void)state;
    const char *top = getenv("MOAT_SRCDIR");
    char path[1024];
    snprintf(path, sizeof(path), "%s/docs/configuration.md", top ? top : ".");
    struct doc_check dc = {.doc = read_all(path)};
    if (!dc.doc)
        fail_msg("cannot read %s (run from the repository root or set MOAT_SRCDIR)", path);
    moat_config_keys(check_key, &dc);
    assert_true(dc.nkeys >= 30);
    if (dc.missing[0])
        fail_msg("docs/configuration.md does not document:%s", dc.missing);
}

/* Every documented default parses: a document that spells each default explicitly loads and
 * equals the all-defaults document. */
static void test_defaults_are_valid(void **state)
{
    (void)state;
    struct moat_config *a = load(POOL_SITE);
    struct moat_config *b = load(POOL_SITE "listen: [\"0.0.0.0:8080\"]\nworkers: auto\n"
                                           "limits: { request_line: 8KiB, header_bytes: 16KiB, "
                                           "header_count: 100, body_bytes: 0, connections: "
                                           "10000 }\n"
                                           "timeouts: { client_header: 10s, client_body: 60s, "
                                           "keepalive: 60s, send: 60s, drain: 30s }\n"
                                           "trusted_proxies: []\nvia: moat\n"
                                           "log: { access: off, error: stderr, level: info }\n");
    if (!a || !b)
        fail_msg("%s", errbuf);
    assert_int_equal(a->workers, b->workers);
    assert_memory_equal(&a->h1, &b->h1, sizeof(a->h1));
    assert_int_equal(a->client_idle_timeout_ms, b->client_idle_timeout_ms);
    assert_int_equal(a->drain_timeout_ms, b->drain_timeout_ms);
    assert_null(b->access_log);
    moat_config_release(&a);
    moat_config_release(&b);
    moat_config_release(&a); /* releasing a cleared pointer is a no-op */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_loads),
        cmocka_unit_test(test_full_document),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_aliases),
        cmocka_unit_test(test_forward_headers_none),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_token_file),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_addresses),
        cmocka_unit_test(test_cidr),
        cmocka_unit_test(test_site_matching),
        cmocka_unit_test(test_rule_keys),
        cmocka_unit_test(test_quick),
        cmocka_unit_test(test_tls_document),
        cmocka_unit_test(test_tls_defaults),
        cmocka_unit_test(test_tls_errors),
        cmocka_unit_test(test_quick_https),
        cmocka_unit_test(test_docs_complete),
        cmocka_unit_test(test_defaults_are_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
