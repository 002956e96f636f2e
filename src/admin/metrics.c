/* metrics.c: Prometheus text exposition (version 0.0.4) generated from the counter table. */
#include "acme/acme.h"
#include "admin/admin.h"
#include "admin/dash.h"
#include "cache/store.h"
#include "lb/lb.h"
#include "proxy/server.h"
#include "shield/shield.h"
#include "tls/tls.h"

/* The parser's reasons belong to moat_bad_requests_total: printed right after that
 * metric's last table row so the family stays in one group, as the text format wants. */
static void bad_parse_rows(struct moat_sbuf *b, const struct moat_stats *s)
{
    for (int e = 1; e < MOAT_H1_ERR_COUNT; e++)
        moat_sbuf_printf(b, "moat_bad_requests_total{reason=\"%s\"} %llu\n", moat_h1_err_name(e),
                         (unsigned long long)atomic_load(&s->bad_parse[e]));
}

/* Origin failures, from the error table (src/proxy/errors.h). */
static void xerr_rows(struct moat_sbuf *b, const struct moat_stats *s)
{
    moat_sbuf_printf(b, "# HELP moat_upstream_errors_total Origin failures, by kind\n"
                        "# TYPE moat_upstream_errors_total counter\n");
    for (int e = 1; e < MOAT_XERR_COUNT; e++)
        if (moat_xerr_defs[e].src == MOAT_ERR_SRC_ORIGIN)
            moat_sbuf_printf(b, "moat_upstream_errors_total{kind=\"%s\"} %llu\n",
                             moat_xerr_defs[e].name, (unsigned long long)atomic_load(&s->xerr[e]));
}

/* ACME certificates (src/acme/) join moat_tls_certificate_expiry_seconds as file="acme"
 * once they exist; their names are the site's hosts, which the configuration checked. */
static void acme_expiry_row(const struct moat_acme_status *st, void *ud)
{
    if (st->not_after)
        moat_sbuf_printf(ud,
                         "moat_tls_certificate_expiry_seconds{file=\"acme\",names=\"%s\"} %lld\n",
                         st->names, (long long)st->not_after);
}

static void acme_fail_row(const struct moat_acme_status *st, void *ud)
{
    moat_sbuf_printf(ud, "moat_acme_order_failures{site=\"%s\"} %u\n", st->site, st->failures);
}

static void acme_ocsp_row(const struct moat_acme_status *st, void *ud)
{
    moat_sbuf_printf(ud, "moat_acme_ocsp_next_update_seconds{site=\"%s\"} %lld\n", st->site,
                     (long long)st->ocsp_next_update);
}

/* <in> as a label value: '"' and '\\' escaped, cut to fit <out>. */
static void label_escape(const char *in, char *out, size_t cap)
{
    size_t n = 0;
    for (const char *p = in; *p && n + 2 < cap; p++) {
        if (*p == '"' || *p == '\\')
            out[n++] = '\\';
        out[n++] = *p;
    }
    out[n] = 0;
}

static void ocsp_row(const struct moat_ocsp_status *st, void *ud)
{
    struct moat_sbuf *b = ud;
    char file[512];
    label_escape(st->file, file, sizeof file);
    moat_sbuf_printf(b, "moat_ocsp_next_update_seconds{file=\"%s\"} %lld\n", file,
                     (long long)st->next_update);
}

static void acme_issued_row(const struct moat_acme_status *st, void *ud)
{
    moat_sbuf_printf(ud, "moat_acme_certificates_issued_total{site=\"%s\"} %llu\n", st->site,
                     (unsigned long long)st->issued);
}

static void cert_row(const struct moat_tls_cert_info *ci, void *ud)
{
    struct moat_sbuf *b = ud;
    /* label values: the file and names are the operator's own text; escape what the text
     * format needs escaped */
    char file[512], names[1024];
    label_escape(ci->file, file, sizeof file);
    label_escape(ci->names, names, sizeof names);
    moat_sbuf_printf(b, "moat_tls_certificate_expiry_seconds{file=\"%s\",names=\"%s\"} %lld\n",
                     file, names, (long long)ci->not_after);
}

char *moat_metrics_render(size_t *len)
{
    struct moat_stats s;
    moat_server_stats(&s);
    struct moat_sbuf b = {.p = malloc(16384), .cap = 16384};
    if (!b.p)
        return NULL;
    const char *last = "";
#define ROW(f, m, l, t, h)                                                                         \
    if (strcmp(last, m)) {                                                                         \
        moat_sbuf_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", m, h, m, t);                          \
        last = m;                                                                                  \
    }                                                                                              \
    moat_sbuf_printf(&b, "%s%s%s%s %llu\n", m, *l ? "{" : "", l, *l ? "}" : "",                    \
                     (unsigned long long)atomic_load(&s.f));                                       \
    if (!strcmp(#f, "bad_timeout"))                                                                \
        bad_parse_rows(&b, &s);                                                                    \
    if (!strcmp(#f, "conn_rejected"))                                                              \
        xerr_rows(&b, &s);
    MOAT_STATS(ROW)
#define TLS_ROW(f, m, l, t, h)                                                                     \
    if (strcmp(last, m)) {                                                                         \
        moat_sbuf_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", m, h, m, t);                          \
        last = m;                                                                                  \
    }                                                                                              \
    moat_sbuf_printf(&b, "%s%s%s%s %llu\n", m, *l ? "{" : "", l, *l ? "}" : "",                    \
                     (unsigned long long)atomic_load(&s.tls.f));
    MOAT_TLS_STATS(TLS_ROW)
#undef TLS_ROW
#undef ROW
    static const char *le[MOAT_HIST_BUCKETS] = {"0.001", "0.005", "0.01", "0.025", "0.05",
                                                "0.1",   "0.25",  "0.5",  "1",     "2.5",
                                                "5",     "10",    "+Inf"};
    moat_sbuf_printf(&b,
                     "# HELP moat_request_duration_seconds Time from request head to last response "
                     "byte\n# TYPE moat_request_duration_seconds histogram\n");
    uint64_t cum = 0;
    for (int i = 0; i < MOAT_HIST_BUCKETS; i++) {
        cum += atomic_load(&s.dur_bucket[i]);
        moat_sbuf_printf(&b, "moat_request_duration_seconds_bucket{le=\"%s\"} %llu\n", le[i],
                         (unsigned long long)cum);
    }
    moat_sbuf_printf(&b, "moat_request_duration_seconds_sum %.6f\n",
                     (double)atomic_load(&s.dur_sum_us) / 1e6);
    moat_sbuf_printf(&b, "moat_request_duration_seconds_count %llu\n",
                     (unsigned long long)atomic_load(&s.dur_count));
    moat_sbuf_printf(&b,
                     "# HELP moat_config_reloads_total Configuration reloads, by result\n"
                     "# TYPE moat_config_reloads_total counter\n"
                     "moat_config_reloads_total{result=\"ok\"} %llu\n"
                     "moat_config_reloads_total{result=\"failed\"} %llu\n",
                     (unsigned long long)atomic_load(&moat_srv.reloads_ok),
                     (unsigned long long)atomic_load(&moat_srv.reloads_failed));
    moat_sbuf_printf(&b,
                     "# HELP moat_config_generation Generation of the configuration in use\n"
                     "# TYPE moat_config_generation gauge\nmoat_config_generation %llu\n",
                     (unsigned long long)atomic_load(&moat_srv.generation));
    if (moat_srv.cache) {
        struct moat_cache_stats cs;
        moat_cache_store_stats(moat_srv.cache, &cs);
        moat_sbuf_printf(
            &b,
            "# HELP moat_cache_objects Objects in the cache (in flight and hit-for-pass "
            "markers included)\n# TYPE moat_cache_objects gauge\nmoat_cache_objects %llu\n"
            "# HELP moat_cache_bytes Bytes charged to the cache's budget\n"
            "# TYPE moat_cache_bytes gauge\nmoat_cache_bytes %llu\n"
            "# HELP moat_cache_evictions_total Objects evicted to stay within cache.memory\n"
            "# TYPE moat_cache_evictions_total counter\nmoat_cache_evictions_total %llu\n"
            "# HELP moat_cache_purged_total Objects removed or marked stale by purges\n"
            "# TYPE moat_cache_purged_total counter\nmoat_cache_purged_total %llu\n",
            (unsigned long long)cs.objects, (unsigned long long)cs.bytes,
            (unsigned long long)cs.evictions, (unsigned long long)cs.purged);
    }
    size_t shl = 0;
    char *shm = moat_shield_metrics(&shl);
    if (shm) {
        moat_sbuf_printf(&b, "%.*s", (int)shl, shm);
        free(shm);
    }
    struct moat_config *cfg = moat_server_config();
    if (cfg->rt) {
        moat_sbuf_printf(
            &b, "# HELP moat_tls_certificate_expiry_seconds When each server certificate expires "
                "(Unix time)\n# TYPE moat_tls_certificate_expiry_seconds gauge\n");
        moat_tls_each_cert(cfg, cert_row, &b);
        moat_acme_each(acme_expiry_row, &b);
    }
    moat_config_release(&cfg);
    moat_sbuf_printf(
        &b, "# HELP moat_ocsp_next_update_seconds When the stapled OCSP response of each "
            "tls.certificates entry with an OCSP URL runs out (Unix time; 0: none stapled)\n"
            "# TYPE moat_ocsp_next_update_seconds gauge\n");
    moat_ocsp_each(ocsp_row, &b);
    if (moat_acme_active()) {
        moat_sbuf_printf(
            &b, "# HELP moat_acme_order_failures ACME orders failed in a row, per site (0: the "
                "last one succeeded)\n# TYPE moat_acme_order_failures gauge\n");
        moat_acme_each(acme_fail_row, &b);
        moat_sbuf_printf(
            &b, "# HELP moat_acme_certificates_issued_total Certificates obtained from the ACME "
                "CA since start, per site\n# TYPE moat_acme_certificates_issued_total counter\n");
        moat_acme_each(acme_issued_row, &b);
        moat_sbuf_printf(
            &b, "# HELP moat_acme_ocsp_next_update_seconds When the stapled OCSP response of "
                "each ACME certificate runs out (Unix time; 0: none stapled)\n"
                "# TYPE moat_acme_ocsp_next_update_seconds gauge\n");
        moat_acme_each(acme_ocsp_row, &b);
    }
    char *lbm = moat_lb_metrics_text(); /* pools and origins (src/lb/lb_admin.c) */
    if (lbm) {
        moat_sbuf_printf(&b, "%s", lbm);
        free(lbm);
    }
    moat_sbuf_printf(
        &b,
        "# HELP moat_uptime_seconds Seconds since start\n# TYPE moat_uptime_seconds gauge\n"
        "moat_uptime_seconds %.3f\n",
        (double)(moat_wall_us() - moat_srv.started_us) / 1e6);
    char dash[1024];
    moat_dash_metrics(dash, sizeof dash);
    moat_sbuf_printf(&b, "%s", dash);
    *len = b.n;
    return b.p;
}
