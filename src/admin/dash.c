/* dash.c: the live dashboard's control-thread side: once a second it sums the workers'
 * recorders (src/proxy/dashrec.c), keeps the 15-minute history and the last minute of top
 * keys and latencies, builds one JSON snapshot and queues it on every open /events stream.
 *
 * The cost of N open dashboards is N memcpy's of a few KiB per second on the control thread;
 * the workers never see a dashboard: what they pay (dashrec.h) is the same with none open.
 * The number of snapshots built is a counter (moat_dashboard_snapshots_total), so a test can
 * see it grows by one a second whatever the number of streams. */
#include <jansson.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <ctype.h>

#include "acme/acme.h"
#include "admin/dash.h"
#include "admin/series.h"
#include "cache/store.h"
#include "core/log.h"
#include "proxy/server.h"
#include "tls/tls.h"

#ifndef MOAT_VERSION
#define MOAT_VERSION "0.1.0"
#endif

struct dash_asset {
    const char *name;
    const char *ctype;
    const unsigned char *data;
    size_t len;
};
#include "dash_assets.h"

#define DASH_HISTORY     900        /* seconds of history: 15 minutes */
#define DASH_WINDOW      60         /* seconds the top lists and percentiles cover */
#define DASH_TOP_SHOWN   10         /* entries per top list in the snapshot */
#define DASH_MAX_PENDING (1u << 20) /* a stream this far behind is dropped */
#define COOKIE_NAME      "moat_admin"

static const char *const top_names[MOAT_DASH_NTOP] = {"urls", "hosts", "clients"};

struct dash_client {
    struct dash_client *next, *prev;
    struct moat_dash *d;
    void *h; /* the stream */
};

/* One second of merged top keys. */
struct top_sec {
    uint64_t sec;
    uint64_t total[MOAT_DASH_NTOP];
    uint8_t n[MOAT_DASH_NTOP];
    struct moat_topk_item it[MOAT_DASH_NTOP][MOAT_TOPK_K];
};

/* Cumulative latency histograms at one second, for the minute's difference. */
struct lat_sec {
    uint64_t sec;
    uint64_t hit[MOAT_DASH_LAT_BUCKETS], origin[MOAT_DASH_LAT_BUCKETS];
};

struct moat_dash {
    struct moat_loop *loop;
    struct moat_timer tick;
    unsigned max_clients, nclients;
    struct dash_client *clients;
    char *token;     /* the admin token (NULL: none) */
    char cookie[65]; /* hex HMAC-SHA256(token, nonce): the session cookie's value */
    bool open;       /* no token: no login */
    struct moat_series hist;
    struct top_sec *tops;       /* DASH_WINDOW seconds, by sec % DASH_WINDOW */
    struct lat_sec *lats;       /* DASH_WINDOW + 1 seconds */
    struct moat_topk *scratch;  /* nworkers * MOAT_DASH_NTOP sketches read per tick
                                   (allocated at the first) */
    struct moat_dash_sums prev; /* at the last tick */
    struct moat_stats prev_st;  /* at the last tick */
    uint64_t prev_evictions;
    uint64_t first_sec;                  /* of the first sample */
    uint64_t reloads_ok, reloads_failed; /* at the last tick */
    char reload_result[16];              /* "", "ok", "failed" */
    char reload_msg[512];
    uint64_t reload_at;
    char *snap; /* the last snapshot as an SSE event ("data: ...\n\n") */
    size_t snaplen;
};

/* The one dashboard (the control thread's), for /metrics. */
static struct moat_dash *the_dash;
static uint64_t snapshots_built;

/* --- sampling, once a second ------------------------------------------------------------- */

static double percentile(const uint64_t *h, double q, uint64_t *count)
{
    uint64_t n = 0;
    for (int i = 0; i < MOAT_DASH_LAT_BUCKETS; i++)
        n += h[i];
    *count = n;
    if (!n)
        return -1;
    double target = q * (double)n, cum = 0;
    for (int i = 0; i < MOAT_DASH_LAT_BUCKETS; i++) {
        if (cum + (double)h[i] >= target && h[i]) {
            double lo = i ? (double)(16u << (i - 1)) : 0, hi = (double)(16ull << i);
            return (lo + (target - cum) / (double)h[i] * (hi - lo)) / 1000.0; /* ms */
        }
        cum += (double)h[i];
    }
    return (double)(16ull << (MOAT_DASH_LAT_BUCKETS - 1)) / 1000.0;
}

static json_t *lat_json(const uint64_t *now, const uint64_t *then)
{
    uint64_t d[MOAT_DASH_LAT_BUCKETS], n = 0;
    for (int i = 0; i < MOAT_DASH_LAT_BUCKETS; i++)
        d[i] = now[i] - then[i];
    double p50 = percentile(d, 0.50, &n), p90 = percentile(d, 0.90, &n),
           p99 = percentile(d, 0.99, &n);
    if (!n)
        return json_pack("{s:I, s:n, s:n, s:n}", "n", (json_int_t)0, "p50", "p90", "p99");
    return json_pack("{s:I, s:f, s:f, s:f}", "n", (json_int_t)n, "p50", p50, "p90", p90, "p99",
                     p99);
}

static json_t *class_obj(const uint64_t *v)
{
    json_t *o = json_object();
    for (int i = 0; i < MOAT_DASH_NCLASS; i++)
        json_object_set_new(o, moat_dash_class_names[i], json_integer((json_int_t)v[i]));
    return o;
}

/* Reads the workers' sketches for second <sec> and merges them into the ring. */
static void collect_tops(struct moat_dash *d, uint64_t sec)
{
    struct top_sec *ts = &d->tops[sec % DASH_WINDOW];
    memset(ts->n, 0, sizeof ts->n);
    memset(ts->total, 0, sizeof ts->total);
    ts->sec = sec;
    const struct moat_topk_item *lists[64];
    size_t lens[64], nl[MOAT_DASH_NTOP] = {0};
    unsigned nw = MOAT_MIN(moat_srv.nworkers, 64u);
    unsigned got = 0;
    if (!d->scratch) /* the workers start after the admin API: their number is known now */
        d->scratch = calloc((size_t)MOAT_MAX(nw, 1u) * MOAT_DASH_NTOP, sizeof *d->scratch);
    if (!d->scratch)
        nw = 0;
    for (unsigned w = 0; w < nw; w++)
        if (moat_dashrec_read(w, sec, &d->scratch[got * MOAT_DASH_NTOP]))
            got++;
    for (int k = 0; k < MOAT_DASH_NTOP; k++) {
        for (unsigned w = 0; w < got; w++) {
            const struct moat_topk *t = &d->scratch[w * MOAT_DASH_NTOP + k];
            lists[nl[k]] = t->items;
            lens[nl[k]++] = t->n;
            ts->total[k] += t->total;
        }
        ts->n[k] = (uint8_t)moat_topk_merge(lists, lens, nl[k], ts->it[k], MOAT_TOPK_K);
    }
}

static json_t *tops_json(struct moat_dash *d, uint64_t now_sec)
{
    json_t *o = json_object();
    for (int k = 0; k < MOAT_DASH_NTOP; k++) {
        const struct moat_topk_item *lists[DASH_WINDOW];
        size_t lens[DASH_WINDOW], n = 0;
        uint64_t total = 0;
        for (int s = 0; s < DASH_WINDOW; s++) {
            const struct top_sec *ts = &d->tops[s];
            if (!ts->sec || ts->sec + DASH_WINDOW < now_sec)
                continue;
            lists[n] = ts->it[k];
            lens[n++] = ts->n[k];
            total += ts->total[k];
        }
        struct moat_topk_item out[DASH_TOP_SHOWN];
        size_t m = moat_topk_merge(lists, lens, n, out, DASH_TOP_SHOWN);
        json_t *arr = json_array();
        for (size_t i = 0; i < m; i++)
            json_array_append_new(
                arr, json_pack("{s:s%, s:I, s:I}", "key", out[i].key, (size_t)out[i].keylen,
                               "count", (json_int_t)out[i].count, "err", (json_int_t)out[i].err));
        json_object_set_new(o, top_names[k],
                            json_pack("{s:I, s:o}", "total", (json_int_t)total, "top", arr));
    }
    return o;
}

static void push_all(struct moat_dash *d, const char *data, size_t len)
{
    struct dash_client *c = d->clients;
    while (c) {
        struct dash_client *next = c->next; /* a failed push frees c (stream_closed) */
        moat_httpd_push(c->h, data, len, DASH_MAX_PENDING);
        c = next;
    }
}

/* [t, requests by outcome..., bytes by outcome...] */
static json_t *point_json(const struct moat_series_pt *p)
{
    json_t *pt = json_array();
    json_array_append_new(pt, json_integer((json_int_t)p->t));
    for (int i = 0; i < MOAT_DASH_NCLASS; i++)
        json_array_append_new(pt, json_integer((json_int_t)p->req[i]));
    for (int i = 0; i < MOAT_DASH_NCLASS; i++)
        json_array_append_new(pt, json_integer((json_int_t)p->bytes[i]));
    return pt;
}

/* The certificates panel: tls.certificates of the configuration in force and the ACME
 * certificates (src/acme/), with days left and, for ACME, the state and last error. */
static void cert_row_json(const struct moat_tls_cert_info *ci, void *ud)
{
    double left = (double)(ci->not_after - (int64_t)(moat_wall_us() / 1000000)) / 86400.0;
    json_array_append_new(ud, json_pack("{s:s, s:s, s:f, s:s, s:s}", "names", ci->names, "source",
                                        "file", "days_left", left, "state",
                                        left < 0 ? "expired" : "valid", "error", ""));
}

static void acme_row_json(const struct moat_acme_status *st, void *ud)
{
    double left = (double)(st->not_after - (int64_t)(moat_wall_us() / 1000000)) / 86400.0;
    json_array_append_new(ud, json_pack("{s:s, s:s, s:o, s:s, s:s}", "names", st->names, "source",
                                        "acme", "days_left",
                                        st->not_after ? json_real(left) : json_null(), "state",
                                        st->state, "error", st->last_error));
}

static json_t *certs_json(void)
{
    json_t *a = json_array();
    struct moat_config *cfg = moat_server_config();
    moat_tls_each_cert(cfg, cert_row_json, a);
    moat_config_release(&cfg);
    moat_acme_each(acme_row_json, a);
    return a;
}

static void sample(struct moat_dash *d)
{
    uint64_t now_us = moat_wall_us(), sec = now_us / 1000000;
    struct moat_dash_sums cur;
    moat_dashrec_sum(&cur);
    struct moat_stats st;
    moat_server_stats(&st);
    struct moat_series_pt pt = {.t = sec - 1};
    for (int i = 0; i < MOAT_DASH_NCLASS; i++) { /* prev starts at zero, as the counters */
        pt.req[i] = (uint32_t)(cur.req[i] - d->prev.req[i]);
        pt.bytes[i] = cur.bytes[i] - d->prev.bytes[i];
    }
    moat_series_push(&d->hist, &pt);
    collect_tops(d, sec - 1);

    struct lat_sec *ls = &d->lats[sec % (DASH_WINDOW + 1)];
    ls->sec = sec;
    memcpy(ls->hit, cur.lat_hit, sizeof ls->hit);
    memcpy(ls->origin, cur.lat_origin, sizeof ls->origin);
    const struct lat_sec *old = ls; /* the oldest kept second, at most a minute ago */
    for (int i = 0; i <= DASH_WINDOW; i++) {
        const struct lat_sec *x = &d->lats[i];
        if (x->sec && x->sec + DASH_WINDOW >= sec && x->sec < old->sec)
            old = x;
    }
    static const struct lat_sec zero;
    if (!d->first_sec)
        d->first_sec = sec;
    if (old->sec == d->first_sec) /* less than a minute since start: from zero */
        old = &zero;

    /* the last minute's shares, from the history */
    uint64_t mreq[MOAT_DASH_NCLASS] = {0}, mbytes[MOAT_DASH_NCLASS] = {0};
    for (size_t i = d->hist.n > DASH_WINDOW ? d->hist.n - DASH_WINDOW : 0; i < d->hist.n; i++) {
        const struct moat_series_pt *p = moat_series_at(&d->hist, i);
        for (int k = 0; k < MOAT_DASH_NCLASS; k++) {
            mreq[k] += p->req[k];
            mbytes[k] += p->bytes[k];
        }
    }
    uint64_t rt = 0, bt = 0;
    for (int k = 0; k < MOAT_DASH_NCLASS; k++) {
        rt += mreq[k];
        bt += mbytes[k];
    }
    /* hit ratio: what the cache answered (fresh or stale) among all requests */
    double rr = rt ? (double)(mreq[MOAT_DASH_HIT] + mreq[MOAT_DASH_STALE]) / (double)rt : -1;
    double br = bt ? (double)(mbytes[MOAT_DASH_HIT] + mbytes[MOAT_DASH_STALE]) / (double)bt : -1;

    /* reloads, whoever asked for them (the admin API notes its own with the message) */
    uint64_t rok = atomic_load(&moat_srv.reloads_ok), rfail = atomic_load(&moat_srv.reloads_failed);
    if (rfail != d->reloads_failed || rok != d->reloads_ok) {
        snprintf(d->reload_result, sizeof d->reload_result, "%s",
                 rfail != d->reloads_failed ? "failed" : "ok");
        d->reload_msg[0] = 0;
        d->reload_at = sec;
    }
    d->reloads_ok = rok;
    d->reloads_failed = rfail;

    json_t *o = json_object();
    json_object_set_new(o, "t", json_integer((json_int_t)sec));
    json_object_set_new(o, "version", json_string(MOAT_VERSION));
    json_object_set_new(o, "generation",
                        json_integer((json_int_t)atomic_load(&moat_srv.generation)));
    json_object_set_new(o, "uptime", json_real((double)(now_us - moat_srv.started_us) / 1e6));
    json_object_set_new(o, "workers", json_integer((json_int_t)moat_srv.nworkers));
    json_object_set_new(o, "connections", json_integer((json_int_t)atomic_load(&st.conn_active)));
    json_object_set_new(o, "snapshots", json_integer((json_int_t)(snapshots_built + 1)));
    json_object_set_new(o, "clients", json_integer((json_int_t)d->nclients));
    json_object_set_new(o, "reload",
                        json_pack("{s:I, s:I, s:s, s:s, s:I}", "ok", (json_int_t)rok, "failed",
                                  (json_int_t)rfail, "last", d->reload_result, "message",
                                  d->reload_msg, "at", (json_int_t)d->reload_at));
    json_object_set_new(o, "point", point_json(&pt));
    json_object_set_new(
        o, "total",
        json_pack("{s:o, s:o}", "req", class_obj(cur.req), "bytes", class_obj(cur.bytes)));
    json_object_set_new(
        o, "minute", json_pack("{s:o, s:o}", "req", class_obj(mreq), "bytes", class_obj(mbytes)));
    json_object_set_new(o, "hit_ratio",
                        json_pack("{s:o, s:o}", "requests", rr < 0 ? json_null() : json_real(rr),
                                  "bytes", br < 0 ? json_null() : json_real(br)));
    json_object_set_new(o, "latency",
                        json_pack("{s:o, s:o}", "hit", lat_json(ls->hit, old->hit), "origin",
                                  lat_json(ls->origin, old->origin)));
    uint64_t cls_now[5],
        cls_tot[5] = {atomic_load(&st.req_1xx), atomic_load(&st.req_2xx), atomic_load(&st.req_3xx),
                      atomic_load(&st.req_4xx), atomic_load(&st.req_5xx)};
    uint64_t cls_prev[5] = {atomic_load(&d->prev_st.req_1xx), atomic_load(&d->prev_st.req_2xx),
                            atomic_load(&d->prev_st.req_3xx), atomic_load(&d->prev_st.req_4xx),
                            atomic_load(&d->prev_st.req_5xx)};
    json_t *sc = json_object(), *sct = json_object();
    static const char *const cls[5] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
    for (int i = 0; i < 5; i++) {
        cls_now[i] = cls_tot[i] - cls_prev[i];
        json_object_set_new(sc, cls[i], json_integer((json_int_t)cls_now[i]));
        json_object_set_new(sct, cls[i], json_integer((json_int_t)cls_tot[i]));
    }
    json_object_set_new(o, "status", json_pack("{s:o, s:o}", "now", sc, "total", sct));
    if (moat_srv.cache) {
        struct moat_cache_stats cs;
        moat_cache_store_stats(moat_srv.cache, &cs);
        struct moat_config *cfg = moat_server_config();
        json_object_set_new(o, "cache",
                            json_pack("{s:I, s:I, s:I, s:I, s:I}", "objects",
                                      (json_int_t)cs.objects, "bytes", (json_int_t)cs.bytes,
                                      "limit", (json_int_t)cfg->cache.memory, "evictions",
                                      (json_int_t)cs.evictions, "evictions_now",
                                      (json_int_t)(cs.evictions - d->prev_evictions)));
        moat_config_release(&cfg);
        d->prev_evictions = cs.evictions;
    } else {
        json_object_set_new(o, "cache", json_null());
    }
    json_object_set_new(o, "top", tops_json(d, sec));
    /* Filled by the load-balancing and shield work as it lands: null means "not built". */
    json_object_set_new(o, "pools", json_null());
    json_object_set_new(o, "shield", json_null());
    json_object_set_new(o, "certs", certs_json());

    d->prev = cur;
    d->prev_st = st;

    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s)
        return;
    size_t sl = strlen(s);
    char *ev = malloc(sl + 9);
    if (ev) {
        memcpy(ev, "data: ", 6);
        memcpy(ev + 6, s, sl);
        memcpy(ev + 6 + sl, "\n\n", 3);
        free(d->snap);
        d->snap = ev;
        d->snaplen = sl + 8;
        snapshots_built++;
        push_all(d, d->snap, d->snaplen);
    }
    free(s);
}

/* Ticks a quarter second into each wall-clock second: the workers' sketches of the second
 * before are complete and stay untouched until the next second starts (dashrec.c). */
static void arm(struct moat_dash *d)
{
    uint64_t frac = moat_wall_us() / 1000 % 1000;
    uint64_t delay = 1250 - frac;
    if (delay > 1000)
        delay -= 1000;
    if (delay < 50)
        delay += 1000;
    moat_timer_set(d->loop, &d->tick, delay);
}

static void on_tick(struct moat_loop *loop, struct moat_timer *t)
{
    (void)loop;
    struct moat_dash *d = MOAT_CONTAINER_OF(t, struct moat_dash, tick);
    sample(d);
    arm(d);
}

/* --- login ------------------------------------------------------------------------------- */

static bool ct_eq(const char *a, size_t al, const char *b, size_t bl)
{
    unsigned char diff = (unsigned char)(al != bl);
    for (size_t i = 0; i < bl; i++)
        diff |= (unsigned char)(b[i] ^ (i < al ? a[i] : 0));
    return diff == 0;
}

bool moat_dash_cookie_value(struct moat_str v, struct moat_str *out)
{
    size_t p = 0;
    while (p < v.len) {
        while (p < v.len && (v.ptr[p] == ' ' || v.ptr[p] == ';'))
            p++;
        size_t e = p;
        while (e < v.len && v.ptr[e] != ';')
            e++;
        size_t nl = sizeof COOKIE_NAME; /* name and '=' */
        if (e - p >= nl && !memcmp(v.ptr + p, COOKIE_NAME "=", nl)) {
            size_t end = e;
            while (end > p + nl && v.ptr[end - 1] == ' ')
                end--;
            *out = moat_str_make(v.ptr + p + nl, end - p - nl);
            return true;
        }
        p = e;
    }
    return false;
}

bool moat_dash_cookie_ok(const struct moat_dash *d, const struct moat_h1_req *r)
{
    if (!d || d->open)
        return false;
    for (size_t i = 0; i < r->nhdrs; i++) {
        struct moat_str val;
        if (MOAT_STR_IEQ_LIT(r->hdrs[i].name, "cookie") &&
            moat_dash_cookie_value(r->hdrs[i].value, &val) &&
            ct_eq(val.ptr, val.len, d->cookie, 64))
            return true;
    }
    return false;
}

static bool token_eq(const struct moat_dash *d, const char *tok)
{
    return d->token && ct_eq(tok, strlen(tok), d->token, strlen(d->token));
}

static const struct dash_asset *asset(const char *name)
{
    for (size_t i = 0; i < MOAT_ARRAY_LEN(dash_assets); i++)
        if (!strcmp(dash_assets[i].name, name))
            return &dash_assets[i];
    return NULL;
}

#define CSP                                                                                        \
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "           \
    "connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "             \
    "base-uri 'none'\r\nX-Content-Type-Options: nosniff\r\n"

static void serve_asset(struct moat_httpd_resp *resp, int status, const char *name, const char *msg)
{
    const struct dash_asset *a = asset(name);
    if (!a) {
        moat_httpd_error(resp, 404, "no such file");
        return;
    }
    /* The login page has one slot for a message (a wrong token). */
    const char *slot = "<!--MSG-->";
    const char *at = msg ? memmem(a->data, a->len, slot, strlen(slot)) : NULL;
    if (at) {
        size_t pre = (size_t)(at - (const char *)a->data), ml = strlen(msg),
               post = a->len - pre - strlen(slot);
        char *b = malloc(pre + ml + post);
        if (!b) {
            moat_httpd_error(resp, 500, "out of memory");
            return;
        }
        memcpy(b, a->data, pre);
        memcpy(b + pre, msg, ml);
        memcpy(b + pre + ml, at + strlen(slot), post);
        moat_httpd_set(resp, status, a->ctype, b, pre + ml + post);
        free(b);
    } else {
        moat_httpd_set(resp, status, a->ctype, (const char *)a->data, a->len);
    }
    snprintf(resp->extra, sizeof resp->extra, CSP "Cache-Control: no-cache\r\n");
}

static void login_page(struct moat_httpd_resp *resp, const char *msg)
{
    serve_asset(resp, 401, "login.html", msg ? msg : "");
}

/* Redirects to the dashboard, setting (or clearing) the session cookie. */
static void to_dashboard(struct moat_dash *d, struct moat_httpd_resp *resp, bool set)
{
    moat_httpd_set(resp, 303, "text/plain", "see /dashboard\n", 15);
    snprintf(resp->extra, sizeof resp->extra,
             "Location: /dashboard\r\nSet-Cookie: " COOKIE_NAME
             "=%s; Path=/; HttpOnly; SameSite=Strict%s\r\n",
             set ? d->cookie : "", set ? "" : "; Max-Age=0");
}

bool moat_dash_form_field(struct moat_str s, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name), p = 0;
    while (p < s.len) {
        size_t e = p;
        while (e < s.len && s.ptr[e] != '&')
            e++;
        if (e - p > nl && !memcmp(s.ptr + p, name, nl) && s.ptr[p + nl] == '=') {
            size_t o = 0;
            for (size_t i = p + nl + 1; i < e; i++) {
                if (o + 1 >= cap)
                    return false;
                char c = s.ptr[i];
                if (c == '+') {
                    c = ' ';
                } else if (c == '%' && i + 2 < e && isxdigit((unsigned char)s.ptr[i + 1]) &&
                           isxdigit((unsigned char)s.ptr[i + 2])) {
                    char hex[3] = {s.ptr[i + 1], s.ptr[i + 2], 0};
                    c = (char)strtol(hex, NULL, 16);
                    i += 2;
                }
                if (c == 0)
                    return false; /* a token has no NUL; neither will we */
                out[o++] = c;
            }
            out[o] = 0;
            return true;
        }
        p = e + 1;
    }
    return false;
}

/* --- /events ----------------------------------------------------------------------------- */

static void stream_closed(void *arg)
{
    struct dash_client *c = arg;
    struct moat_dash *d = c->d;
    if (c->prev)
        c->prev->next = c->next;
    else
        d->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    d->nclients--;
    free(c);
}

static char *history_event(struct moat_dash *d, size_t *len)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < d->hist.n; i++)
        json_array_append_new(arr, point_json(moat_series_at(&d->hist, i)));
    json_t *o = json_pack("{s:o, s:[s,s,s,s,s]}", "points", arr, "classes", "hit", "miss", "pass",
                          "stale", "error");
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s)
        return NULL;
    size_t sl = strlen(s);
    static const char head[] = "retry: 2000\nevent: history\ndata: ";
    char *ev = malloc(sizeof head - 1 + sl + 2 + d->snaplen + 1);
    if (ev) {
        size_t n = 0;
        memcpy(ev, head, sizeof head - 1);
        n += sizeof head - 1;
        memcpy(ev + n, s, sl);
        n += sl;
        memcpy(ev + n, "\n\n", 2);
        n += 2;
        if (d->snap) {
            memcpy(ev + n, d->snap, d->snaplen);
            n += d->snaplen;
        }
        *len = n;
    }
    free(s);
    return ev;
}

static void open_events(struct moat_dash *d, struct moat_httpd_resp *resp)
{
    if (d->nclients >= d->max_clients) {
        moat_httpd_error(resp, 503,
                         "too many dashboards open (admin.dashboard_clients); close one");
        snprintf(resp->extra, sizeof resp->extra, "Retry-After: 10\r\n");
        return;
    }
    struct dash_client *c = calloc(1, sizeof *c);
    size_t len = 0;
    char *ev = c ? history_event(d, &len) : NULL;
    if (!ev) {
        free(c);
        moat_httpd_error(resp, 500, "out of memory");
        return;
    }
    c->d = d;
    c->next = d->clients;
    if (d->clients)
        d->clients->prev = c;
    d->clients = c;
    d->nclients++;
    free(resp->body);
    resp->status = 200;
    resp->ctype = "text/event-stream";
    resp->body = ev;
    resp->len = len;
    snprintf(resp->extra, sizeof resp->extra, "X-Accel-Buffering: no\r\n");
    c->h = moat_httpd_stream(resp, stream_closed, c);
}

/* --- routes ------------------------------------------------------------------------------ */

bool moat_dash_handle(struct moat_dash *d, const struct moat_httpd_req *req, bool authed,
                      struct moat_httpd_resp *resp)
{
    if (!d)
        return false;
    const struct moat_h1_req *r = req->h1;
    struct moat_str path = r->path;
    bool get = r->meth == MOAT_M_GET || r->meth == MOAT_M_HEAD;
    if (path.len > 6 && !memcmp(path.ptr, "/dash/", 6)) {
        char name[64];
        if (!get || path.len - 6 >= sizeof name) {
            moat_httpd_error(resp, 404, "no such file");
            return true;
        }
        memcpy(name, path.ptr + 6, path.len - 6);
        name[path.len - 6] = 0;
        /* the page itself only behind the login; its script and style are public */
        if (strstr(name, ".html"))
            moat_httpd_error(resp, 404, "no such file");
        else
            serve_asset(resp, 200, name, NULL);
        return true;
    }
    if (moat_str_eq(path, MOAT_STR("/")) || moat_str_eq(path, MOAT_STR("/dashboard"))) {
        if (!get) {
            moat_httpd_error(resp, 405, "use GET");
            return true;
        }
        char tok[4200];
        if (!d->open && r->query.len && moat_dash_form_field(r->query, "token", tok, sizeof tok)) {
            /* ?token= once, then the cookie (and the token leaves the address bar) */
            if (token_eq(d, tok))
                to_dashboard(d, resp, true);
            else
                login_page(resp, "<p class=\"err\" role=\"alert\">Wrong token.</p>");
            return true;
        }
        if (!authed)
            login_page(resp, "");
        else
            serve_asset(resp, 200, "index.html", NULL);
        return true;
    }
    if (moat_str_eq(path, MOAT_STR("/login"))) {
        if (r->meth != MOAT_M_POST) {
            moat_httpd_error(resp, 405, "use POST");
            return true;
        }
        char tok[4200];
        if (d->open ||
            (moat_dash_form_field(req->body, "token", tok, sizeof tok) && token_eq(d, tok)))
            to_dashboard(d, resp, true);
        else
            login_page(resp, "<p class=\"err\" role=\"alert\">Wrong token.</p>");
        return true;
    }
    if (moat_str_eq(path, MOAT_STR("/logout"))) {
        to_dashboard(d, resp, false);
        return true;
    }
    if (moat_str_eq(path, MOAT_STR("/events"))) {
        if (!authed) {
            moat_httpd_error(resp, 401, "log in first (POST /login) or send the bearer token");
            return true;
        }
        if (r->meth != MOAT_M_GET) {
            moat_httpd_error(resp, 405, "use GET");
            return true;
        }
        open_events(d, resp);
        return true;
    }
    return false;
}

void moat_dash_note_reload(struct moat_dash *d, bool ok, const char *msg)
{
    if (!d)
        return;
    snprintf(d->reload_result, sizeof d->reload_result, "%s", ok ? "ok" : "failed");
    snprintf(d->reload_msg, sizeof d->reload_msg, "%s", msg ? msg : "");
    d->reload_at = moat_wall_us() / 1000000;
    d->reloads_ok = atomic_load(&moat_srv.reloads_ok);
    d->reloads_failed = atomic_load(&moat_srv.reloads_failed);
}

size_t moat_dash_metrics(char *out, size_t cap)
{
    int n = snprintf(out, cap,
                     "# HELP moat_dashboard_snapshots_total Dashboard snapshots built (one a "
                     "second, whatever the number of open dashboards)\n"
                     "# TYPE moat_dashboard_snapshots_total counter\n"
                     "moat_dashboard_snapshots_total %llu\n"
                     "# HELP moat_dashboard_clients Dashboards open now (GET /events streams)\n"
                     "# TYPE moat_dashboard_clients gauge\nmoat_dashboard_clients %u\n",
                     (unsigned long long)snapshots_built, the_dash ? the_dash->nclients : 0u);
    return n < 0 ? 0 : MOAT_MIN((size_t)n, cap ? cap - 1 : 0);
}

/* --- life -------------------------------------------------------------------------------- */

struct moat_dash *moat_dash_start(struct moat_loop *loop, const struct moat_config *cfg,
                                  const char *token)
{
    if (!cfg->admin.dashboard)
        return NULL;
    struct moat_dash *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->loop = loop;
    d->max_clients = cfg->admin.dashboard_clients ? cfg->admin.dashboard_clients : 16;
    d->tops = calloc(DASH_WINDOW, sizeof *d->tops);
    d->lats = calloc(DASH_WINDOW + 1, sizeof *d->lats);
    if (!d->tops || !d->lats || moat_series_init(&d->hist, DASH_HISTORY)) {
        moat_dash_stop(d);
        return NULL;
    }
    d->open = token == NULL;
    if (token) {
        d->token = strdup(token);
        if (!d->token) {
            moat_dash_stop(d);
            return NULL;
        }
        /* The cookie proves the login without being the token: an HMAC of a random nonce
         * drawn at start, keyed by the token (a restart logs everybody out). */
        unsigned char nonce[32], mac[32];
        unsigned int ml = 0;
        if (RAND_bytes(nonce, sizeof nonce) != 1 ||
            !HMAC(EVP_sha256(), token, (int)strlen(token), nonce, sizeof nonce, mac, &ml) ||
            ml != 32) {
            moat_dash_stop(d);
            return NULL;
        }
        for (int i = 0; i < 32; i++)
            snprintf(d->cookie + 2 * i, 3, "%02x", mac[i]);
    }
    d->tick.cb = on_tick;
    d->reloads_ok = atomic_load(&moat_srv.reloads_ok);
    d->reloads_failed = atomic_load(&moat_srv.reloads_failed);
    arm(d);
    the_dash = d;
    return d;
}

void moat_dash_stop(struct moat_dash *d)
{
    if (!d)
        return;
    if (d->tick.cb)
        moat_timer_stop(d->loop, &d->tick);
    while (d->clients) /* only if the listener was not stopped first */
        stream_closed(d->clients);
    moat_series_free(&d->hist);
    free(d->tops);
    free(d->lats);
    free(d->scratch);
    free(d->snap);
    free(d->token);
    if (the_dash == d)
        the_dash = NULL;
    free(d);
}
