/* cfg_acme.c: the directive table of tls.acme (certificates from an ACME CA, src/acme/) and
 * the sites[].tls key that puts a site's hosts under it.
 *
 * As in cfg_tls.c only names and shapes are checked here: the storage directory is created
 * and the CA is reached by src/acme/ at run time, where a failure is logged and retried
 * rather than refusing the configuration (a CA that is down must not stop a reload). */
#include <ctype.h>
#include <stdio.h>

#include "config/config-int.h"

static int acme_path(struct cfg_ld *ld, struct fy_node *n, char **out)
{
    char buf[1024];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "a path") != MOAT_OK)
        return MOAT_ERR;
    if (!*buf)
        return cfg_fail(ld, n, "the path is empty");
    *out = cfg_resolve_path(ld, buf);
    return *out ? MOAT_OK : cfg_oom(ld);
}

static int k_directory(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_acme *a = &((struct moat_config *)base)->tls.acme;
    char buf[1024];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "a URL") != MOAT_OK)
        return MOAT_ERR;
    bool https = !strncmp(buf, "https://", 8), http = !strncmp(buf, "http://", 7);
    if (!https && !http)
        return cfg_fail(ld, n, "\"%s\" is not an https:// URL (the CA's directory)", buf);
    const char *h = buf + (https ? 8 : 7);
    if (!*h || *h == '/')
        return cfg_fail(ld, n, "\"%s\" has no host", buf);
    for (const char *p = buf; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            return cfg_fail(ld, n, "\"%s\" contains a space or control byte", buf);
    a->directory = cfg_strndup(ld->box, buf, strlen(buf));
    return a->directory ? MOAT_OK : cfg_oom(ld);
}

static int k_email(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_acme *a = &((struct moat_config *)base)->tls.acme;
    char buf[256];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "an e-mail address") != MOAT_OK)
        return MOAT_ERR;
    const char *at = strchr(buf, '@');
    bool ok = at && at != buf && at[1] && !strchr(at + 1, '@');
    for (const char *p = buf; ok && *p; p++)
        ok = (unsigned char)*p > ' ' && *p != 0x7f && *p != '"' && *p != '\\';
    if (!ok)
        return cfg_fail(ld, n, "\"%s\" is not an e-mail address (use e.g. ops@shop.example)", buf);
    a->email = cfg_strndup(ld->box, buf, strlen(buf));
    return a->email ? MOAT_OK : cfg_oom(ld);
}

static int k_storage(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    return acme_path(ld, n, &((struct moat_config *)base)->tls.acme.storage);
}

static int k_ca_file(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    return acme_path(ld, n, &((struct moat_config *)base)->tls.acme.ca_file);
}

static int challenge_elem(struct cfg_ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    struct moat_cfg_acme *a = ud;
    char buf[32];
    unsigned bit;
    if (cfg_scalar(ld, n, buf, sizeof(buf), "a challenge type") != MOAT_OK)
        return MOAT_ERR;
    if (!strcmp(buf, "http-01"))
        bit = MOAT_ACME_HTTP01;
    else if (!strcmp(buf, "tls-alpn-01"))
        bit = MOAT_ACME_TLSALPN01;
    else if (!strcmp(buf, "dns-01"))
        return cfg_fail(ld, n, "dns-01 is not supported yet (use http-01 or tls-alpn-01)");
    else
        return cfg_fail(ld, n, "\"%s\" is not one of: http-01, tls-alpn-01", buf);
    if (a->challenges & bit)
        return cfg_fail(ld, n, "\"%s\" is listed twice", buf);
    if (!a->challenges && bit == MOAT_ACME_TLSALPN01)
        a->tls_alpn_first = true;
    a->challenges |= bit;
    return MOAT_OK;
}

static int k_challenges(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_acme *a = &((struct moat_config *)base)->tls.acme;
    size_t cnt;
    a->challenges = 0;
    a->tls_alpn_first = false;
    return cfg_each_string(ld, n, &cnt, challenge_elem, a, false);
}

/* The table's rows only run when tls.acme is given (K_PRESENCE on the row in cfg_tls.c). */
static int acme_post(struct cfg_ld *ld, struct fy_node *map, void *base)
{
    struct moat_cfg_acme *a = &((struct moat_config *)base)->tls.acme;
    if (a->retry_max_ms < a->retry_min_ms)
        return cfg_fail(ld,
                        cfg_map_lookup(map, "retry_max") ? cfg_map_lookup(map, "retry_max") : map,
                        "retry_max is shorter than retry_min");
    a->enabled = true;
    return MOAT_OK;
}

static const struct cfg_key acme_keys[] = {
    {.name = "directory",
     .type = KT_CUSTOM,
     .fn = k_directory,
     .tname = "URL",
     .flags = K_REQUIRED,
     .doc = "the ACME CA's directory URL, e.g. Let's Encrypt's (required)"},
    {.name = "email",
     .type = KT_CUSTOM,
     .fn = k_email,
     .tname = "e-mail address",
     .doc = "contact address given to the CA for the account"},
    {.name = "storage",
     .type = KT_CUSTOM,
     .fn = k_storage,
     .tname = "path",
     .flags = K_REQUIRED,
     .doc = "directory for the account key, certificates and keys (0600) and the lock file; "
            "shareable between nodes (required)"},
    {.name = "challenges",
     .type = KT_CUSTOM,
     .fn = k_challenges,
     .tname = "http-01|tls-alpn-01 or list",
     .def = "[http-01, tls-alpn-01]",
     .doc = "challenge types moat answers, in order of preference"},
    {.name = "ca_file",
     .type = KT_CUSTOM,
     .fn = k_ca_file,
     .tname = "path",
     .doc = "PEM bundle trusted for the CA's API instead of the system store (private CA)"},
    {.name = "renew_before",
     .type = KT_DURATION,
     CFG_AT(struct moat_config, tls.acme.renew_before_ms),
     .def = "30d",
     .min = 1000,
     .max = 3650 * DAY_MS,
     .doc = "renew a certificate when it expires sooner than this"},
    {.name = "check_interval",
     .type = KT_DURATION,
     CFG_AT(struct moat_config, tls.acme.check_interval_ms),
     .def = "1h",
     .min = 1000,
     .max = DAY_MS,
     .doc = "how often certificates are checked for renewal"},
    {.name = "retry_min",
     .type = KT_DURATION,
     CFG_AT(struct moat_config, tls.acme.retry_min_ms),
     .def = "1m",
     .min = 1000,
     .max = DAY_MS,
     .doc = "first wait after a failed order; doubles per failure, with jitter"},
    {.name = "retry_max",
     .type = KT_DURATION,
     CFG_AT(struct moat_config, tls.acme.retry_max_ms),
     .def = "1d",
     .min = 1000,
     .max = 7 * DAY_MS,
     .doc = "the longest wait between failed orders"},
    {.name = "timeout",
     .type = KT_DURATION,
     CFG_AT(struct moat_config, tls.acme.timeout_ms),
     .def = "30s",
     .min = 100,
     .max = 600000,
     .doc = "one request to the CA (connect, send, answer)"},
};
const struct cfg_table cfg_acme_table = CFG_TABLE(acme_keys, acme_post);
_Static_assert(MOAT_ARRAY_LEN(acme_keys) <= CFG_MAX_KEYS, "raise CFG_MAX_KEYS");

/* sites[].tls: "acme". Runs after hosts (table order), so the hosts can be checked: an ACME
 * CA validates each name by HTTP-01 or TLS-ALPN-01, and neither can prove a wildcard (that
 * takes DNS-01). */
int cfg_k_site_tls(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_site *site = base;
    char buf[64];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "acme") != MOAT_OK)
        return MOAT_ERR;
    if (strcmp(buf, "acme"))
        return cfg_fail(ld, n,
                        "\"%s\" is not one of: acme (sites without tls: get a certificate "
                        "from tls.certificates by SNI)",
                        buf);
    if (!ld->box->cfg.tls.acme.enabled)
        return cfg_fail(ld, n, "tls: acme needs tls.acme { directory, storage } to be configured");
    for (size_t i = 0; i < site->nhosts; i++)
        if (strchr(site->hosts[i], '*'))
            return cfg_fail(ld, n,
                            "host \"%s\" is a wildcard: ACME certificates for wildcards need "
                            "the dns-01 challenge, which moat does not support yet (list the "
                            "names, or use tls.certificates)",
                            site->hosts[i]);
    site->tls_acme = true;
    return MOAT_OK;
}
