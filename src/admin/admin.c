/* admin.c: the admin API. Bearer-token auth (constant-time compare), JSON everywhere, errors
 * as {"error": "..."}. Endpoints: GET /status, POST /reload, GET /metrics, POST /purge. */
#include <jansson.h>
#include <strings.h>

#include <ctype.h>
#include <time.h>

#include "acme/acme.h"
#include "lb/lb.h"
#include "admin/admin.h"
#include "admin/dash.h"
#include "cache/store.h"
#include "core/log.h"
#include "proxy/server.h"
#include "shield/shield.h"
#include "tls/tls.h"

#ifndef MOAT_VERSION
#define MOAT_VERSION "0.1.0"
#endif

struct purge_task;

struct admin {
    char *token;
    char *config_path;
    struct moat_loop *loop;
    struct purge_task *purges; /* purges in progress */
    struct moat_dash *dash;    /* the live dashboard (NULL: admin.dashboard is false) */
};

static bool token_ok(const struct admin *a, const struct moat_h1_req *r)
{
    if (!a->token)
        return true;
    const struct moat_hdr *h = moat_h1_find(r->hdrs, r->nhdrs, MOAT_STR("authorization"));
    if (!h || h->value.len < 7 ||
        !moat_str_ieq(moat_str_make(h->value.ptr, 7), MOAT_STR("bearer ")))
        return false;
    struct moat_str got = moat_str_make(h->value.ptr + 7, h->value.len - 7);
    size_t tl = strlen(a->token);
    unsigned char diff = (unsigned char)(got.len != tl);
    for (size_t i = 0; i < tl; i++)
        diff |= (unsigned char)(a->token[i] ^ (i < got.len ? got.ptr[i] : 0));
    return diff == 0;
}

static void json_reply(struct moat_httpd_resp *resp, int status, json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s) {
        moat_httpd_error(resp, 500, "out of memory");
        return;
    }
    moat_httpd_set(resp, status, "application/json", s, strlen(s));
    free(s);
}

/* Cache keys are scheme + "://" + lowercase host + target: normalise a URL the same way (host
 * lowercased, the rest as given) under the scheme <scheme> ("http" or "https"; a purge covers
 * both: the same URL over http and https is one resource to whoever purges it, whether or
 * not the site keeps their objects apart). Returns false if it is not http(s)://. */
static bool url_key(const char *url, const char *scheme, char *out, size_t cap)
{
    const char *p = strstr(url, "://");
    if (!p || strlen(url) + 1 > cap)
        return false;
    size_t slen = (size_t)(p - url);
    if (!((slen == 4 && !strncasecmp(url, "http", 4)) ||
          (slen == 5 && !strncasecmp(url, "https", 5))))
        return false;
    size_t n = (size_t)snprintf(out, cap, "%s://", scheme);
    const char *h = p + 3;
    while (*h && *h != '/' && *h != '?' && n + 1 < cap)
        out[n++] = (char)tolower((unsigned char)*h++);
    while (*h && n + 1 < cap)
        out[n++] = *h++;
    out[n] = 0;
    return true;
}

#define PURGE_SLICE       1000 /* objects examined per moat_cache_purge_step */
#define PURGE_PAUSE_RATIO 3    /* pause after a slice: this many times its wall time */
#define PURGE_PAUSE_MAX   5    /* ms: the longest pause after one slice */

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A purge too large for one slice runs as a task on the control loop: a slice, then a pause,
 * driven by a timer, and the HTTP answer is owed until the last slice (moat_httpd_later).
 *
 * Slices of 1,000 objects, one shard lock at a time: workers looking up keys wait at most for
 * one slice on one shard, however large the purge. The pause after each slice, three times as
 * long as the slice took, is for the CPU, not the locks: the control thread shares a core
 * with a worker whenever every core has one (and always in the benches, which pin moat to
 * one core), and a purge that never blocks is, to the scheduler, a CPU-bound thread that
 * takes turns of a whole time slice with the worker; its requests wait out every turn.
 * Measured with a million objects (bench/purge.sh; 0.5 s of CPU, mostly free()): p99 0.6 ->
 * 4.8 ms during a back-to-back purge, 1.3 ms with the pause. A pause as long as the slice
 * kept p99 near that too but cost a third to a half of the requests/s meanwhile. The price:
 * a purge takes about four times its CPU time (a million objects: about 3 s). The loop is
 * free between slices: signals, reloads, metrics and other admin calls go on meanwhile. */
struct purge_task {
    struct purge_task *next;
    struct admin *a;
    struct moat_timer timer;
    void *later; /* the answer owed */
    struct moat_cache_purge pg[4];
    unsigned npg, cur;
    uint64_t purged;
    unsigned flags;
    unsigned slices;
    int64_t t0;
    char keys[4][2048];
};

static void purge_reply(struct purge_task *t, struct moat_httpd_resp *resp)
{
    moat_log_info("purge: %llu objects%s in %u slice%s, %.1f ms", (unsigned long long)t->purged,
                  t->flags ? " (soft)" : "", t->slices, t->slices == 1 ? "" : "s",
                  (double)(mono_ns() - t->t0) / 1e6);
    json_reply(resp, 200,
               json_pack("{s:b, s:I, s:b}", "ok", 1, "purged", (json_int_t)t->purged, "soft",
                         t->flags != 0));
}

/* Runs one slice. Returns the pause before the next one in ms, or -1 when the task is done. */
static int purge_slice(struct purge_task *t)
{
    int64_t t0 = mono_ns();
    struct moat_cache_purge *pg = &t->pg[t->cur];
    t->slices++;
    if (moat_cache_purge_step(moat_srv.cache, pg, PURGE_SLICE) != MOAT_AGAIN) {
        t->purged += pg->purged;
        if (++t->cur == t->npg)
            return -1;
    }
    int64_t pause_ns = PURGE_PAUSE_RATIO * (mono_ns() - t0);
    return (int)MOAT_MIN((pause_ns + 999999) / 1000000, (int64_t)PURGE_PAUSE_MAX);
}

static void purge_unlink(struct purge_task *t)
{
    struct purge_task **pp = &t->a->purges;
    while (*pp && *pp != t)
        pp = &(*pp)->next;
    if (*pp)
        *pp = t->next;
}

static void purge_timer(struct moat_loop *loop, struct moat_timer *tm)
{
    struct purge_task *t = MOAT_CONTAINER_OF(tm, struct purge_task, timer);
    int pause = purge_slice(t);
    if (pause >= 0) {
        moat_timer_set(loop, &t->timer, (uint64_t)pause);
        return;
    }
    struct moat_httpd_resp resp = {0};
    purge_reply(t, &resp);
    purge_unlink(t);
    moat_httpd_finish(t->later, &resp);
    free(t);
}

/* Starts <t> (npg, pg[] and purged set): one slice now; if that was all, the answer is given
 * at once, else the rest runs from the loop and the answer waits. Takes <t>. */
static void purge_start(struct admin *a, struct purge_task *t, struct moat_httpd_resp *resp)
{
    t->a = a;
    t->t0 = mono_ns();
    int pause = t->npg ? purge_slice(t) : -1;
    if (pause < 0) {
        purge_reply(t, resp);
        free(t);
        return;
    }
    t->later = moat_httpd_later(resp);
    t->timer.cb = purge_timer;
    t->next = a->purges;
    a->purges = t;
    moat_timer_set(a->loop, &t->timer, (uint64_t)pause);
}

static void purge_add(struct purge_task *t, enum moat_cache_purge_kind kind, size_t keylen)
{
    unsigned i = t->npg++;
    t->pg[i] = (struct moat_cache_purge){
        .kind = kind, .arg = moat_str_make(t->keys[i], keylen), .flags = t->flags};
}

/* POST /purge {"url"|"prefix"|"tag"|"host": "...", "all": true, "soft": bool} */
static void handle_purge(struct admin *a, const struct moat_httpd_req *req,
                         struct moat_httpd_resp *resp)
{
    if (!moat_srv.cache) {
        moat_httpd_error(resp, 409, "the cache is not running");
        return;
    }
    json_error_t jerr;
    json_t *o = json_loadb(req->body.ptr, req->body.len, 0, &jerr);
    if (!o || !json_is_object(o)) {
        char msg[300];
        snprintf(msg, sizeof msg, "body must be a JSON object: %s",
                 o ? "not an object" : jerr.text);
        json_decref(o);
        moat_httpd_error(resp, 400, msg);
        return;
    }
    unsigned flags = json_is_true(json_object_get(o, "soft")) ? MOAT_CACHE_PURGE_SOFT : 0;
    const char *url = json_string_value(json_object_get(o, "url"));
    const char *prefix = json_string_value(json_object_get(o, "prefix"));
    const char *tag = json_string_value(json_object_get(o, "tag"));
    const char *host = json_string_value(json_object_get(o, "host"));
    bool all = json_is_true(json_object_get(o, "all"));
    int selectors = !!url + !!prefix + !!tag + !!host + all;
    if (selectors != 1) {
        json_decref(o);
        moat_httpd_error(resp, 400,
                         "give exactly one of url, prefix, tag, host (strings) or all: true");
        return;
    }
    struct purge_task *t = calloc(1, sizeof *t);
    if (!t) {
        json_decref(o);
        moat_httpd_error(resp, 500, "out of memory");
        return;
    }
    t->flags = flags;
    size_t cap = sizeof t->keys[0];
    static const char *const schemes[2] = {"http", "https"};
    if (url) {
        for (int s = 0; s < 2; s++) {
            char *key = t->keys[t->npg];
            if (!url_key(url, schemes[s], key, cap)) {
                json_decref(o);
                free(t);
                moat_httpd_error(resp, 400, "url must be an absolute http:// or https:// URL");
                return;
            }
            size_t kl = strlen(key);
            if (moat_cache_purge_key(moat_srv.cache, moat_str_make(key, kl), flags) == MOAT_OK)
                t->purged++;
            /* Objects keyed with key.headers / key.cookies live under "url\n...": a prefix
             * purge finds them (and the URL's Vary variants, already unreachable with their
             * index). That is a walk over the whole store in slices, so it runs only once
             * some key had such parts; until then a URL purge stays a lookup per scheme. */
            if (atomic_load(&moat_srv.cache_keyed) && kl + 1 < cap) {
                key[kl] = '\n';
                purge_add(t, MOAT_CACHE_PURGE_PREFIX, kl + 1);
            }
        }
    } else if (prefix) {
        for (int s = 0; s < 2; s++) {
            char *key = t->keys[t->npg];
            if (!url_key(prefix, schemes[s], key, cap)) {
                json_decref(o);
                free(t);
                moat_httpd_error(resp, 400, "prefix must start with http:// or https://");
                return;
            }
            purge_add(t, MOAT_CACHE_PURGE_PREFIX, strlen(key));
        }
    } else if (host) {
        /* Every key of that host, with or without a port, over either scheme. */
        const char *forms[2] = {"/", ":"};
        for (int i = 0; i < 4; i++) {
            char *key = t->keys[t->npg];
            int n = snprintf(key, cap, "%s://%s%s", schemes[i / 2], host, forms[i % 2]);
            if (n < 0 || (size_t)n >= cap) {
                json_decref(o);
                free(t);
                moat_httpd_error(resp, 400, "host too long");
                return;
            }
            for (int k = (int)strlen(schemes[i / 2]) + 3; k < n; k++)
                key[k] = (char)tolower((unsigned char)key[k]);
            purge_add(t, MOAT_CACHE_PURGE_PREFIX, (size_t)n);
        }
    } else if (tag) {
        size_t tl = strlen(tag);
        if (tl >= cap) {
            json_decref(o);
            free(t);
            moat_httpd_error(resp, 400, "tag too long");
            return;
        }
        memcpy(t->keys[0], tag, tl + 1);
        purge_add(t, MOAT_CACHE_PURGE_TAG, tl);
    } else {
        purge_add(t, MOAT_CACHE_PURGE_ALL, 0);
    }
    json_decref(o);
    purge_start(a, t, resp);
}

/* /status "certificates": each server certificate with its names, key and validity. */
static void cert_entry(const struct moat_tls_cert_info *ci, void *ud)
{
    json_t *arr = ud;
    char exp[32] = "";
    time_t na = (time_t)ci->not_after;
    struct tm tm;
    if (gmtime_r(&na, &tm))
        strftime(exp, sizeof exp, "%Y-%m-%dT%H:%M:%SZ", &tm);
    int64_t now = (int64_t)(moat_wall_us() / 1000000);
    json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:I, s:I, s:s, s:f}", "file", ci->file,
                                         "names", ci->names, "key", ci->key_type, "not_before",
                                         (json_int_t)ci->not_before, "not_after",
                                         (json_int_t)ci->not_after, "expires", exp, "days_left",
                                         (double)(ci->not_after - now) / 86400.0));
}

/* /status "acme": each ACME certificate with its state and the last error. */
static void acme_entry(const struct moat_acme_status *st, void *ud)
{
    char exp[32] = "";
    time_t na = (time_t)st->not_after;
    struct tm tm;
    if (st->not_after && gmtime_r(&na, &tm))
        strftime(exp, sizeof exp, "%Y-%m-%dT%H:%M:%SZ", &tm);
    int64_t now = (int64_t)(moat_wall_us() / 1000000);
    json_t *o = json_pack(
        "{s:s, s:s, s:s, s:I, s:I, s:s, s:s, s:I, s:I, s:i, s:I}", "site", st->site, "names",
        st->names, "state", st->state, "not_before", (json_int_t)st->not_before, "not_after",
        (json_int_t)st->not_after, "expires", exp, "last_error", st->last_error, "last_error_at",
        (json_int_t)st->last_error_at, "next_attempt", (json_int_t)st->next_attempt, "failures",
        (int)st->failures, "issued", (json_int_t)st->issued);
    if (o && st->not_after)
        json_object_set_new(o, "days_left", json_real((double)(st->not_after - now) / 86400.0));
    if (o)
        json_object_set_new(o, "ocsp",
                            json_pack("{s:I, s:s}", "next_update", (json_int_t)st->ocsp_next_update,
                                      "last_error", st->ocsp_error ? st->ocsp_error : ""));
    json_array_append_new(ud, o);
}

/* /status "ocsp": the tls.certificates[] with an OCSP URL and their stapled response. */
static void ocsp_entry(const struct moat_ocsp_status *st, void *ud)
{
    json_array_append_new(ud, json_pack("{s:s, s:s, s:I, s:s}", "file", st->file, "url", st->url,
                                        "next_update", (json_int_t)st->next_update, "last_error",
                                        st->last_error));
}

/* POST /shield/under_attack {"site": HOST, "mode": "on"|"off"|"auto"|"config"} */
static void handle_under_attack(const struct moat_httpd_req *req, struct moat_httpd_resp *resp)
{
    json_error_t jerr;
    json_t *o = json_loadb(req->body.ptr, req->body.len, 0, &jerr);
    const char *site = json_string_value(json_object_get(o, "site"));
    const char *mode = json_string_value(json_object_get(o, "mode"));
    if (!o || !json_is_object(o) || !site || !mode) {
        json_decref(o);
        moat_httpd_error(resp, 400,
                         "body must be a JSON object {\"site\": HOST, \"mode\": "
                         "\"on\"|\"off\"|\"auto\"|\"config\"}");
        return;
    }
    char err[256];
    struct moat_config *cfg = moat_server_config();
    int rc = moat_shield_set_mode(cfg, site, mode, err, sizeof err);
    moat_config_release(&cfg);
    if (rc != MOAT_OK) {
        json_decref(o);
        moat_httpd_error(resp, 400, err);
        return;
    }
    json_reply(resp, 200, json_pack("{s:b, s:s, s:s}", "ok", 1, "site", site, "mode", mode));
    json_decref(o);
}

/* POST /shield/block {"cidr": CIDR, "for": DURATION (default 1h)}, POST /shield/unblock
 * {"cidr": CIDR} */
static void handle_block(const struct moat_httpd_req *req, struct moat_httpd_resp *resp,
                         bool block)
{
    json_error_t jerr;
    json_t *o = json_loadb(req->body.ptr, req->body.len, 0, &jerr);
    const char *cidr = json_string_value(json_object_get(o, "cidr"));
    json_t *forv = json_object_get(o, "for");
    const char *for_s = forv ? json_string_value(forv) : "1h";
    uint64_t ms = 0;
    char err[256];
    if (!o || !json_is_object(o) || !cidr || !for_s) {
        snprintf(err, sizeof err, "body must be a JSON object {\"cidr\": CIDR%s}",
                 block ? ", \"for\": DURATION" : "");
    } else if (block && (moat_parse_duration_ms(for_s, &ms) != MOAT_OK || ms == 0 ||
                         ms > 365ull * 86400000)) {
        snprintf(err, sizeof err, "\"for\": \"%s\" is not a duration from 1ms to 365d", for_s);
    } else if ((block ? moat_shield_block(cidr, ms, err, sizeof err)
                      : moat_shield_unblock(cidr, err, sizeof err)) == MOAT_OK) {
        json_reply(resp, 200, json_pack("{s:b, s:s}", "ok", 1, "cidr", cidr));
        json_decref(o);
        return;
    }
    json_decref(o);
    moat_httpd_error(resp, 400, err);
}

static void handle(void *ctx, const struct moat_httpd_req *req, struct moat_httpd_resp *resp)
{
    struct admin *a = ctx;
    const struct moat_h1_req *r = req->h1;
    bool bearer = token_ok(a, r);
    bool cookie = !bearer && moat_dash_cookie_ok(a->dash, r);
    if (moat_dash_handle(a->dash, req, bearer || cookie, resp))
        return;
    if (!bearer && !cookie) {
        moat_httpd_error(resp, 401, "missing or wrong bearer token");
        snprintf(resp->extra, sizeof resp->extra, "WWW-Authenticate: Bearer realm=\"moat\"\r\n");
        return;
    }
    /* A change by cookie must come from the dashboard's own script (SameSite=Strict already
     * keeps other sites' forms out; the custom field keeps out plain forms of any origin). */
    if (cookie && r->meth != MOAT_M_GET && r->meth != MOAT_M_HEAD &&
        !moat_h1_find(r->hdrs, r->nhdrs, MOAT_STR("x-moat-dashboard"))) {
        moat_httpd_error(resp, 403, "changes by cookie need the X-Moat-Dashboard field");
        return;
    }
    struct moat_str path = r->path;
    bool get = r->meth == MOAT_M_GET || r->meth == MOAT_M_HEAD;
    if (moat_str_eq(path, MOAT_STR("/status"))) {
        if (!get) {
            moat_httpd_error(resp, 405, "use GET");
            snprintf(resp->extra, sizeof resp->extra, "Allow: GET, HEAD\r\n");
            return;
        }
        struct moat_stats st;
        moat_server_stats(&st);
        struct moat_config *cfg = moat_server_config();
        json_t *o = json_pack(
            "{s:s, s:I, s:f, s:I, s:i, s:s?, s:I, s:I, s:b}", "version", MOAT_VERSION, "generation",
            (json_int_t)atomic_load(&moat_srv.generation), "uptime_seconds",
            (double)(moat_wall_us() - moat_srv.started_us) / 1e6, "connections_active",
            (json_int_t)atomic_load(&st.conn_active), "workers", (int)moat_srv.nworkers, "config",
            cfg->path, "reloads_ok", (json_int_t)atomic_load(&moat_srv.reloads_ok),
            "reloads_failed", (json_int_t)atomic_load(&moat_srv.reloads_failed), "draining",
            atomic_load(&moat_srv.draining) != 0);
        if (cfg->rt) {
            json_t *certs = json_array();
            moat_tls_each_cert(cfg, cert_entry, certs);
            json_object_set_new(o, "certificates", certs);
        }
        json_t *ocsp = json_array();
        moat_ocsp_each(ocsp_entry, ocsp);
        if (json_array_size(ocsp))
            json_object_set_new(o, "ocsp", ocsp);
        else
            json_decref(ocsp);
        if (moat_acme_active()) {
            json_t *acme = json_array();
            moat_acme_each(acme_entry, acme);
            json_object_set_new(o, "acme", acme);
        }
        json_object_set_new(o, "shield", moat_shield_status(cfg));
        moat_config_release(&cfg);
        json_reply(resp, 200, o);
        return;
    }
    if (moat_str_eq(path, MOAT_STR("/reload"))) {
        if (r->meth != MOAT_M_POST) {
            moat_httpd_error(resp, 405, "use POST");
            snprintf(resp->extra, sizeof resp->extra, "Allow: POST\r\n");
            return;
        }
        char err[MOAT_CONFIG_ERRLEN];
        if (moat_server_reload(a->config_path, err, sizeof err) != MOAT_OK) {
            moat_dash_note_reload(a->dash, false, err);
            moat_httpd_error(resp, a->config_path ? 400 : 409, err);
            return;
        }
        moat_dash_note_reload(a->dash, true, NULL);
        json_reply(resp, 200,
                   json_pack("{s:b, s:I}", "ok", 1, "generation",
                             (json_int_t)atomic_load(&moat_srv.generation)));
        return;
    }
    if (moat_str_eq(path, MOAT_STR("/metrics"))) {
        if (!get) {
            moat_httpd_error(resp, 405, "use GET");
            return;
        }
        size_t len = 0;
        char *m = moat_metrics_render(&len);
        if (!m) {
            moat_httpd_error(resp, 500, "out of memory");
            return;
        }
        free(resp->body);
        resp->status = 200;
        resp->ctype = "text/plain; version=0.0.4; charset=utf-8";
        resp->body = m;
        resp->len = len;
        return;
    }
    if (moat_str_eq(path, MOAT_STR("/purge"))) {
        if (r->meth != MOAT_M_POST) {
            moat_httpd_error(resp, 405, "use POST");
            snprintf(resp->extra, sizeof resp->extra, "Allow: POST\r\n");
            return;
        }
        handle_purge(a, req, resp);
        return;
    }
    if (moat_str_eq(path, MOAT_STR("/shield/top"))) {
        if (!get) {
            moat_httpd_error(resp, 405, "use GET");
            snprintf(resp->extra, sizeof resp->extra, "Allow: GET, HEAD\r\n");
            return;
        }
        json_reply(resp, 200, json_pack("{s:o}", "top", moat_shield_top(20)));
        return;
    }
    if (moat_str_eq(path, MOAT_STR("/shield/block")) ||
        moat_str_eq(path, MOAT_STR("/shield/unblock"))) {
        if (r->meth != MOAT_M_POST) {
            moat_httpd_error(resp, 405, "use POST");
            snprintf(resp->extra, sizeof resp->extra, "Allow: POST\r\n");
            return;
        }
        handle_block(req, resp, path.len == MOAT_STR("/shield/block").len);
        return;
    }
    if (moat_str_eq(path, MOAT_STR("/shield/under_attack"))) {
        if (r->meth != MOAT_M_POST) {
            moat_httpd_error(resp, 405, "use POST");
            snprintf(resp->extra, sizeof resp->extra, "Allow: POST\r\n");
            return;
        }
        handle_under_attack(req, resp);
        return;
    }
    if (path.len >= 6 && !memcmp(path.ptr, "/pools", 6) && (path.len == 6 || path.ptr[6] == '/')) {
        /* pools and origins at run time (src/lb/lb_admin.c) */
        char *out = NULL;
        int st = moat_lb_admin(r->meth, path.ptr, path.len, req->body.ptr, req->body.len, &out);
        free(resp->body);
        resp->status = st;
        resp->body = out;
        resp->len = out ? strlen(out) : 0;
        return;
    }
    moat_httpd_error(resp, 404,
                     "no such endpoint (try /status, /metrics, POST /reload, POST /purge, "
                     "/dashboard, GET /shield/top, POST /shield/block, /shield/unblock, "
                     "/shield/under_attack, /pools)");
}

struct moat_httpd *moat_admin_start(struct moat_loop *loop, const struct moat_config *cfg,
                                    const char *config_path, char *err, size_t errlen)
{
    struct admin *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->token = cfg->admin.token ? strdup(cfg->admin.token) : NULL;
    a->config_path = config_path ? strdup(config_path) : NULL;
    a->loop = loop;
    struct moat_httpd *s = moat_httpd_start(loop, &cfg->admin.listen, handle, a, err, errlen);
    if (!s) {
        free(a->token);
        free(a->config_path);
        free(a);
        return NULL;
    }
    a->dash = moat_dash_start(loop, cfg, a->token);
    moat_log_info("admin API on http://%s/", cfg->admin.listen.text);
    return s;
}

void moat_admin_stop(struct moat_httpd *s)
{
    struct admin *a = moat_httpd_stop(s);
    if (a) {
        /* Purges still running are dropped with the connections that waited for them. */
        while (a->purges) {
            struct purge_task *t = a->purges;
            a->purges = t->next;
            moat_timer_stop(a->loop, &t->timer);
            free(t);
        }
        moat_dash_stop(a->dash);
        free(a->token);
        free(a->config_path);
        free(a);
    }
}
