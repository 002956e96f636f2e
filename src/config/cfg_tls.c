/* cfg_tls.c: the directive tables of TLS: the server side (tls.*) and TLS to origins
 * (pools.*.tls).
 *
 * Only names are checked here. Certificates and keys are not opened: src/tls/ loads them
 * when it builds its contexts from the snapshot (moat_tls_build) and reports OpenSSL's
 * reason with the path, and cipher, suite and group names are OpenSSL's to judge. Keeping
 * OpenSSL out of the config module keeps the loader usable where TLS is not built yet and
 * keeps one place that knows what OpenSSL accepts. */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <strings.h>

#include "config/config-int.h"

/* A file path, resolved against the config file's directory like admin.token_file. */
static int tls_path(struct cfg_ld *ld, struct fy_node *n, char **out)
{
    char buf[1024];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "a file path") != MOAT_OK)
        return MOAT_ERR;
    if (!*buf)
        return cfg_fail(ld, n, "the path is empty");
    *out = cfg_resolve_path(ld, buf);
    return *out ? MOAT_OK : cfg_oom(ld);
}

/* --- tls.certificates ----------------------------------------------------------------------- */

static int k_cert_cert(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    return tls_path(ld, n, &((struct moat_cfg_cert *)base)->cert);
}

static int k_cert_key(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    return tls_path(ld, n, &((struct moat_cfg_cert *)base)->key);
}

static const struct cfg_key cert_keys[] = {
    {.name = "cert",
     .type = KT_CUSTOM,
     .fn = k_cert_cert,
     .tname = "path",
     .flags = K_REQUIRED,
     .doc = "PEM file: the certificate, then its chain (leaf first) (required)"},
    {.name = "key",
     .type = KT_CUSTOM,
     .fn = k_cert_key,
     .tname = "path",
     .flags = K_REQUIRED,
     .doc = "PEM file: the certificate's private key, RSA or EC (required)"},
};
static const struct cfg_table cert_table = CFG_TABLE(cert_keys, NULL);

static int k_certificates(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_tls *t = &((struct moat_config *)base)->tls;
    if (fy_node_get_type(n) != FYNT_SEQUENCE)
        return cfg_fail(ld, n, "expected a list of { cert: FILE, key: FILE }, got %s", cfg_what(n));
    size_t cnt = (size_t)MOAT_MAX(fy_node_sequence_item_count(n), 0);
    t->certs = cfg_alloc(ld->box, MOAT_MAX(cnt, (size_t)1) * sizeof(*t->certs));
    if (!t->certs)
        return cfg_oom(ld);
    void *it = NULL;
    struct fy_node *e;
    size_t i = 0;
    while ((e = fy_node_sequence_iterate(n, &it)) != NULL) {
        size_t old = cfg_path_push(ld, "[%zu]", i);
        struct fy_node *v = cfg_deref(e);
        int rc;
        if (cfg_is_null(v) || fy_node_get_type(v) != FYNT_MAPPING)
            rc = cfg_fail(ld, v, "expected { cert: FILE, key: FILE }, got %s", cfg_what(v));
        else
            rc = cfg_walk(ld, &cert_table, v, &t->certs[i], false);
        cfg_path_pop(ld, old);
        if (rc != MOAT_OK)
            return rc;
        i++;
    }
    t->ncerts = i;
    return MOAT_OK;
}

/* --- tls.protocols -------------------------------------------------------------------------- */

/* Versions before TLS 1.2 are refused by name rather than as unknown words, so that whoever
 * copies an old nginx or HAProxy line learns why: RFC 8996 deprecates TLS 1.0 and 1.1, RFC
 * 7568 SSL 3.0 (RFC 6176 SSL 2.0). The spellings cover moat's own (tls1.1) and OpenSSL's
 * (TLSv1.1), in any case. */
static const struct {
    const char *name;
    const char *rfc;
} old_protocols[] = {
    {"tls1", "RFC 8996"},   {"tls1.0", "RFC 8996"},  {"tlsv1", "RFC 8996"}, {"tlsv1.0", "RFC 8996"},
    {"tls1.1", "RFC 8996"}, {"tlsv1.1", "RFC 8996"}, {"ssl3", "RFC 7568"},  {"sslv3", "RFC 7568"},
    {"ssl3.0", "RFC 7568"}, {"ssl2", "RFC 6176"},    {"sslv2", "RFC 6176"},
};

static int protocol_elem(struct cfg_ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    static const struct {
        const char *name;
        unsigned bit;
    } protocols[] = {{"tls1.2", MOAT_TLS_V12}, {"tls1.3", MOAT_TLS_V13}};
    struct moat_cfg_tls *t = ud;
    char buf[32];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "a protocol version") != MOAT_OK)
        return MOAT_ERR;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(protocols); i++) {
        if (strcmp(buf, protocols[i].name))
            continue;
        if (t->protocols & protocols[i].bit)
            return cfg_fail(ld, n, "\"%s\" is listed twice", buf);
        t->protocols |= protocols[i].bit;
        return MOAT_OK;
    }
    for (size_t i = 0; i < MOAT_ARRAY_LEN(old_protocols); i++)
        if (!strcasecmp(buf, old_protocols[i].name))
            return cfg_fail(ld, n, "%s is not supported: it is insecure (%s)", buf,
                            old_protocols[i].rfc);
    return cfg_fail(ld, n, "\"%s\" is not one of: tls1.2, tls1.3", buf);
}

static int k_protocols(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_tls *t = &((struct moat_config *)base)->tls;
    size_t cnt;
    t->protocols = 0;
    return cfg_each_string(ld, n, &cnt, protocol_elem, t, false);
}

/* --- OpenSSL lists (ciphers, ciphersuites, groups) ------------------------------------------- */

/* A colon-separated list handed to OpenSSL as is. Only what can never be right is refused
 * here (nothing at all, spaces, control bytes); the names are checked by OpenSSL when src/tls/
 * builds its contexts, which knows what the linked library supports. */
static int k_openssl_list(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    char buf[2048];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "a list of names separated by ':'") != MOAT_OK)
        return MOAT_ERR;
    if (!*buf)
        return cfg_fail(ld, n, "the list is empty");
    for (const char *p = buf; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            return cfg_fail(ld, n,
                            "\"%s\" contains a space or control byte (separate names with "
                            "':')",
                            buf);
    char *s = cfg_strndup(ld->box, buf, strlen(buf));
    if (!s)
        return cfg_oom(ld);
    memcpy((char *)base + k->off, &s, sizeof(s));
    return MOAT_OK;
}

/* --- the tls table --------------------------------------------------------------------------- */

/* Mozilla's "intermediate" TLS 1.2 list without its DHE suites: every client of TLS 1.2 that
 * matters has ECDHE, which is much cheaper, and finite-field DH parameters are one more thing
 * to get wrong. Only AEAD ciphers, all with forward secrecy; ECDSA before RSA. */
#define TLS12_CIPHERS                                                                              \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"     \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

static const struct cfg_key tls_keys[] = {
    {.name = "certificates",
     .type = KT_CUSTOM,
     .fn = k_certificates,
     .sub = &cert_table,
     .sub_sep = "[].",
     .tname = "list of {cert, key}",
     .doc = "the server's certificates, chosen by SNI; the first is the default"},
    {.name = "protocols",
     .type = KT_CUSTOM,
     .fn = k_protocols,
     .tname = "tls1.2|tls1.3 or list",
     .def = "[tls1.2, tls1.3]",
     .doc = "TLS versions offered to clients; older ones are refused as insecure"},
    {.name = "ciphers",
     .type = KT_CUSTOM,
     .fn = k_openssl_list,
     CFG_AT(struct moat_config, tls.ciphers),
     .tname = "OpenSSL cipher list",
     .def = TLS12_CIPHERS,
     .doc = "TLS 1.2 cipher suites, in order of preference (Mozilla intermediate without DHE)"},
    {.name = "ciphersuites",
     .type = KT_CUSTOM,
     .fn = k_openssl_list,
     CFG_AT(struct moat_config, tls.ciphersuites),
     .tname = "OpenSSL ciphersuites list",
     .def = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
     .doc = "TLS 1.3 cipher suites, in order of preference"},
    {.name = "groups",
     .type = KT_CUSTOM,
     .fn = k_openssl_list,
     CFG_AT(struct moat_config, tls.groups),
     .tname = "OpenSSL groups list",
     .def = "X25519:P-256:P-384",
     .doc = "key exchange groups, in order of preference"},
    {.name = "session_tickets",
     .type = KT_ENUM,
     CFG_AT(struct moat_config, tls.session_tickets),
     .def = "true",
     .names = cfg_bool_names,
     .doc = "resume sessions with tickets (RFC 5077, RFC 8446), keys shared by all workers"},
    {.name = "ticket_rotation",
     .type = KT_DURATION,
     CFG_AT(struct moat_config, tls.ticket_rotation_ms),
     .def = "12h",
     .min = 60000,
     .max = 7 * DAY_MS,
     .doc = "a new ticket key this often; the previous one still decrypts for one more period"},
    {.name = "session_cache",
     .type = KT_UINT,
     CFG_AT(struct moat_config, tls.session_cache),
     .def = "20480",
     .min = 0,
     .max = 1000000,
     .doc = "sessions kept for resumption by session ID, shared by all workers; 0 = off"},
    {.name = "session_timeout",
     .type = KT_DURATION,
     CFG_AT(struct moat_config, tls.session_timeout_ms),
     .def = "1h",
     .min = 1000,
     .max = 7 * DAY_MS,
     .doc = "how long a session can be resumed"},
    {.name = "handshake_timeout",
     .type = KT_DURATION,
     CFG_AT(struct moat_config, tls.handshake_timeout_ms),
     .def = "10s",
     .min = 1,
     .max = DAY_MS,
     .doc = "time from accept to a completed handshake"},
    {.name = "acme",
     .type = KT_MAP,
     .sub = &cfg_acme_table,
     .sub_sep = ".",
     .flags = K_PRESENCE,
     .doc = "certificates from an ACME CA (RFC 8555) for the sites with tls: acme"},
};
const struct cfg_table cfg_tls_table = CFG_TABLE(tls_keys, NULL);
_Static_assert(MOAT_ARRAY_LEN(tls_keys) <= CFG_MAX_KEYS, "raise CFG_MAX_KEYS");

/* --- pools.*.tls ------------------------------------------------------------------------------ */

static int k_pool_ca_file(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    return tls_path(ld, n, &((struct moat_cfg_pool_tls *)base)->ca_file);
}

static int k_pool_cert(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    return tls_path(ld, n, &((struct moat_cfg_pool_tls *)base)->cert);
}

static int k_pool_key(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    return tls_path(ld, n, &((struct moat_cfg_pool_tls *)base)->key);
}

/* SNI carries a DNS host name and never an IP address (RFC 6066 3), so an address here is a
 * mistake: without sni, an origin given by address is verified against that address. */
static int k_pool_sni(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_pool_tls *t = base;
    char buf[300];
    unsigned char ip[16];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "a host name") != MOAT_OK)
        return MOAT_ERR;
    size_t len = strlen(buf);
    for (size_t i = 0; i < len; i++)
        buf[i] = (char)tolower((unsigned char)buf[i]);
    if (len > 1 && buf[len - 1] == '.') /* "shop.internal." is "shop.internal" */
        buf[--len] = '\0';
    char bare[300]; /* "[::1]" is tried as "::1" */
    bool br = len > 2 && buf[0] == '[' && buf[len - 1] == ']';
    snprintf(bare, sizeof(bare), "%.*s", (int)(br ? len - 2 : len), br ? buf + 1 : buf);
    if (inet_pton(AF_INET, bare, ip) == 1 || inet_pton(AF_INET6, bare, ip) == 1)
        return cfg_fail(ld, n,
                        "\"%s\" is an IP address; SNI carries host names only (RFC 6066): leave "
                        "sni out to verify the origin by its address",
                        buf);
    /* Labels of letters, digits, '-' and '_' (seen in internal names), 1 to 63 bytes each,
     * 253 in all (RFC 1035 2.3.4). */
    bool ok = len > 0 && len <= 253;
    for (size_t i = 0, lab = 0; ok && i <= len; i++) {
        char ch = buf[i];
        if (ch == '.' || ch == '\0') {
            ok = lab > 0 && lab <= 63 && buf[i - 1] != '-';
            lab = 0;
        } else if (isalnum((unsigned char)ch) || ch == '_' || (ch == '-' && lab > 0)) {
            lab++;
        } else {
            ok = false;
        }
    }
    if (!ok)
        return cfg_fail(ld, n, "\"%s\" is not a host name (use e.g. shop.internal)", buf);
    t->sni = cfg_strndup(ld->box, buf, len);
    return t->sni ? MOAT_OK : cfg_oom(ld);
}

/* A client certificate is useless without its key and the reverse, and OpenSSL would only say
 * so at the first handshake, so the pair is checked here. */
static int pool_tls_post(struct cfg_ld *ld, struct fy_node *map, void *base)
{
    struct moat_cfg_pool_tls *t = base;
    if (!t->cert == !t->key)
        return MOAT_OK;
    const char *given = t->cert ? "cert" : "key", *missing = t->cert ? "key" : "cert";
    struct fy_node *n = cfg_map_lookup(map, given);
    size_t old = cfg_path_push(ld, ".%s", given);
    cfg_fail(ld, n ? n : map, "a client certificate needs both cert and key: %s is missing",
             missing);
    cfg_path_pop(ld, old);
    return MOAT_ERR;
}

static const struct cfg_key pool_tls_keys[] = {
    {.name = "verify",
     .type = KT_ENUM,
     CFG_AT(struct moat_cfg_pool_tls, verify),
     .def = "true",
     .names = cfg_bool_names,
     .doc = "check the origin's certificate chain and name; false accepts any certificate"},
    {.name = "ca_file",
     .type = KT_CUSTOM,
     .fn = k_pool_ca_file,
     .tname = "path",
     .doc = "PEM bundle of the CAs to trust instead of the system store"},
    {.name = "sni",
     .type = KT_CUSTOM,
     .fn = k_pool_sni,
     .tname = "host name",
     .doc = "the name sent in SNI and verified; default the origin's host name"},
    {.name = "cert",
     .type = KT_CUSTOM,
     .fn = k_pool_cert,
     .tname = "path",
     .doc = "PEM client certificate for mutual TLS (with key)"},
    {.name = "key",
     .type = KT_CUSTOM,
     .fn = k_pool_key,
     .tname = "path",
     .doc = "PEM private key of the client certificate (with cert)"},
};
const struct cfg_table cfg_pool_tls_table = CFG_TABLE(pool_tls_keys, pool_tls_post);

int cfg_pool_tls_on(struct cfg_ld *ld, struct moat_cfg_pool_tls *t)
{
    memset(t, 0, sizeof(*t));
    if (cfg_walk(ld, &cfg_pool_tls_table, NULL, t, true) != MOAT_OK)
        return MOAT_ERR;
    t->enabled = true;
    return MOAT_OK;
}

/* `tls: true` is `tls: {}` (TLS, verified against the system store), `tls: false` is no
 * tls; the words are the ones booleans take everywhere (cfg_bool_names). */
int cfg_k_pool_tls(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_pool_tls *t = &((struct moat_cfg_pool *)base)->tls;
    if (fy_node_get_type(n) == FYNT_MAPPING) {
        if (cfg_walk(ld, &cfg_pool_tls_table, n, t, false) != MOAT_OK)
            return MOAT_ERR;
        t->enabled = true;
        return MOAT_OK;
    }
    if (fy_node_get_type(n) != FYNT_SCALAR)
        return cfg_fail(ld, n,
                        "expected true, false or a map { verify, ca_file, sni, cert, key }, "
                        "got %s",
                        cfg_what(n));
    char buf[64];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "true, false or a map") != MOAT_OK)
        return MOAT_ERR;
    if (!strcmp(buf, cfg_bool_names[1]))
        return cfg_pool_tls_on(ld, t);
    if (!strcmp(buf, cfg_bool_names[0])) {
        memset(t, 0, sizeof(*t));
        return MOAT_OK;
    }
    return cfg_fail(ld, n,
                    "\"%s\" is not one of: false, true (or a map { verify, ca_file, sni, cert, "
                    "key })",
                    buf);
}
