/* lb_admin.c: the load balancer on the control plane: GET /pools (health, in flight,
 * counters, monitor results per origin), origins added, removed, drained, disabled and enabled
 * at run time through the admin API, and the Prometheus rows of /metrics. Runs on the control
 * thread, under the registry lock; workers see the results through the atomics and the
 * member lists it publishes. */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>

#include "http/h1.h"
#include "lb/lb-int.h"

static const char *const admin_names[] = {"enabled", "draining", "disabled"};

static const struct moat_cfg_pool *cur_pool(const char *name)
{
    const struct moat_config *c = lb_reg.cur;
    for (size_t i = 0; c && i < c->npools; i++)
        if (strcmp(c->pools[i].name, name) == 0)
            return &c->pools[i];
    return NULL;
}

static struct lb_pool *find_pool(const char *name)
{
    for (unsigned i = 0; i < lb_reg.npools; i++)
        if (strcmp(lb_reg.pools[i]->name, name) == 0)
            return lb_reg.pools[i];
    return NULL;
}

static json_t *origin_json(const struct moat_lb_origin *o, unsigned weight, uint64_t now)
{
    uint64_t ej = atomic_load(&o->ejected_until_ms);
    uint64_t checks = atomic_load(&o->checks_ok) + atomic_load(&o->checks_failed);
    json_t *j = json_pack(
        "{s:s, s:i, s:b, s:b, s:s, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:s}",
        "addr", o->o.addr.text, "weight", (int)weight, "up", atomic_load(&o->up) != 0, "usable",
        moat_lb_usable(o, now), "state", admin_names[atomic_load(&o->admin) % 3], "ejected",
        ej > now, "ejected_for_ms", (json_int_t)(ej > now ? ej - now : 0), "ejections",
        (json_int_t)atomic_load(&o->ejected_total), "in_flight",
        (json_int_t)atomic_load(&o->inflight), "requests", (json_int_t)atomic_load(&o->requests),
        "failures", (json_int_t)atomic_load(&o->failures), "checks_ok",
        (json_int_t)atomic_load(&o->checks_ok), "checks_failed",
        (json_int_t)atomic_load(&o->checks_failed), "transitions",
        (json_int_t)atomic_load(&o->transitions), "rtt_ms",
        (double)atomic_load(&o->rtt_us) / 1000.0, "check_ms_avg",
        checks ? (double)atomic_load(&o->check_us_sum) / 1000.0 / (double)checks : 0.0,
        "last_error", o->last_error);
    return j;
}

static json_t *pool_json(const struct moat_cfg_pool *pc, struct lb_pool *lp, uint64_t now)
{
    const struct lb_members *m = atomic_load(&lp->m);
    size_t usable = lb_pool_usable(m, now);
    json_t *arr = json_array();
    for (size_t i = 0; m && i < m->n; i++)
        json_array_append_new(arr, origin_json(m->o[i], m->w[i], now));
    return json_pack(
        "{s:s, s:b, s:I, s:i, s:s?, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "name", lp->name,
        "healthy", usable >= pc->min_origins, "usable", (json_int_t)usable, "min_origins",
        (int)pc->min_origins, "monitor", pc->monitor ? pc->monitor->name : NULL, "queued",
        (json_int_t)atomic_load(&lp->queued), "requests", (json_int_t)atomic_load(&lp->requests),
        "retries", (json_int_t)atomic_load(&lp->retries), "queue_full",
        (json_int_t)atomic_load(&lp->queue_full), "queue_timeouts",
        (json_int_t)atomic_load(&lp->queue_timeouts), "no_origin",
        (json_int_t)atomic_load(&lp->no_origin), "scale_out",
        (json_int_t)atomic_load(&lp->scale_out), "scale_in", (json_int_t)atomic_load(&lp->scale_in),
        "origins", arr);
}

static int jerr(char **out, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int jerr(char **out, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *o = json_pack("{s:s}", "error", msg);
    *out = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return status;
}

static int jok(char **out, int status, json_t *o)
{
    *out = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
    json_decref(o);
    return status;
}

static struct moat_lb_origin *member(const struct lb_pool *lp, const char *addr, unsigned *w)
{
    const struct lb_members *m = atomic_load(&lp->m);
    for (size_t i = 0; m && i < m->n; i++) {
        if (strcmp(m->o[i]->o.addr.text, addr) == 0) {
            if (w)
                *w = m->w[i];
            return m->o[i];
        }
    }
    return NULL;
}

/* POST /pools/NAME/origins {"addr": "HOST:PORT", "weight": N} */
static int add_origin(struct lb_pool *lp, const struct moat_cfg_pool *pc, const char *body,
                      size_t blen, char **out)
{
    json_error_t je;
    json_t *in = json_loadb(body, blen, 0, &je);
    if (!in || !json_is_object(in)) {
        json_decref(in);
        return jerr(out, 400, "expected a JSON object {\"addr\": \"HOST:PORT\", \"weight\": N}");
    }
    const char *addr = json_string_value(json_object_get(in, "addr"));
    json_t *wj = json_object_get(in, "weight");
    json_int_t weight = wj ? json_integer_value(wj) : 1;
    int rc;
    if (!addr) {
        rc = jerr(out, 400, "\"addr\" (a string \"HOST:PORT\") is required");
    } else if (wj && (!json_is_integer(wj) || weight < 1 || weight > 1000)) {
        rc = jerr(out, 400, "\"weight\" must be a whole number from 1 to 1000");
    } else if (member(lp, addr, NULL)) {
        rc = jerr(out, 409, "%s is already an origin of pool %s", addr, lp->name);
    } else if (lp->nadded >= LB_MAX_ADDED) {
        rc = jerr(out, 409, "pool %s has %d origins added already (the most)", lp->name,
                  LB_MAX_ADDED);
    } else {
        struct lb_added *a = &lp->added[lp->nadded];
        char err[256], host[300];
        unsigned port = 0;
        memset(a, 0, sizeof *a);
        /* The host part as written (brackets kept for IPv6) and the port, for Host. */
        const char *colon = strrchr(addr, ':');
        size_t hl = colon ? (size_t)(colon - addr) : 0;
        snprintf(host, sizeof host, "%.*s", (int)MOAT_MIN(hl, sizeof host - 1), addr);
        port = colon ? (unsigned)strtoul(colon + 1, NULL, 10) : 0;
        if (!colon || hl == 0 || moat_addr_parse(addr, &a->o.addr, err, sizeof err) != MOAT_OK) {
            if (!colon || hl == 0)
                snprintf(err, sizeof err, "\"%s\" is not HOST:PORT", addr);
            rc = jerr(out, 400, "%s", err);
        } else {
            unsigned defport = pc->tls.enabled ? 443 : 80;
            snprintf(a->host, sizeof a->host, "%s", host);
            if (port == defport)
                snprintf(a->authority, sizeof a->authority, "%s", host);
            else
                snprintf(a->authority, sizeof a->authority, "%s:%u", host, port);
            a->o.host = a->host;
            a->o.authority = a->authority;
            a->o.weight = (unsigned)weight;
            lp->nadded++;
            /* An origin removed before and added again is taken off the removed list. */
            for (size_t i = 0; i < lp->nremoved; i++) {
                if (strcmp(lp->removed[i], a->o.addr.text) == 0) {
                    memmove(lp->removed[i], lp->removed[lp->nremoved - 1], sizeof lp->removed[i]);
                    lp->nremoved--;
                    break;
                }
            }
            if (lb_pool_rebuild(lp, pc) != MOAT_OK) {
                lp->nadded--;
                rc = jerr(out, 500, "out of memory or too many origins");
            } else {
                struct moat_lb_origin *o = member(lp, a->o.addr.text, NULL);
                if (o) {
                    atomic_store(&o->admin, MOAT_LB_ENABLED);
                    atomic_store(&o->up_since_ms, moat_now_ms());
                }
                rc = jok(out, 201,
                         o ? origin_json(o, (unsigned)weight, moat_now_ms()) : json_object());
            }
        }
    }
    json_decref(in);
    return rc;
}

static int remove_origin(struct lb_pool *lp, const struct moat_cfg_pool *pc,
                         struct moat_lb_origin *o, char **out)
{
    for (size_t i = 0; i < lp->nadded; i++) {
        if (strcmp(lp->added[i].o.addr.text, o->o.addr.text) == 0) {
            /* The entry's strings are its own: move the whole entry and fix the pointers. */
            lp->added[i] = lp->added[lp->nadded - 1];
            lp->added[i].o.host = lp->added[i].host;
            lp->added[i].o.authority = lp->added[i].authority;
            lp->nadded--;
            break;
        }
    }
    bool in_file = false;
    for (size_t i = 0; i < pc->norigins && !in_file; i++)
        in_file = strcmp(pc->origins[i].addr.text, o->o.addr.text) == 0;
    if (in_file) {
        if (lp->nremoved >= LB_MAX_ADDED)
            return jerr(out, 409, "too many origins removed from pool %s", lp->name);
        snprintf(lp->removed[lp->nremoved++], sizeof lp->removed[0], "%s", o->o.addr.text);
    }
    /* Requests in flight keep their origin (they hold its pointer) and finish. */
    if (lb_pool_rebuild(lp, pc) != MOAT_OK)
        return jerr(out, 500, "out of memory");
    atomic_store(&o->admin, MOAT_LB_DRAINING);
    return jok(out, 200,
               json_pack("{s:s, s:s, s:I}", "removed", o->o.addr.text, "pool", lp->name,
                         "in_flight", (json_int_t)atomic_load(&o->inflight)));
}

/* Splits "/pools/NAME/origins/ADDR/ACTION" into its parts (NUL-terminated copies). */
static int split(const char *path, size_t len, char parts[5][96])
{
    int n = 0;
    size_t i = 0;
    while (i < len && n < 5) {
        if (path[i] == '/')
            i++;
        size_t j = i;
        while (j < len && path[j] != '/')
            j++;
        if (j == i)
            break;
        if (j - i >= 96)
            return -1;
        memcpy(parts[n], path + i, j - i);
        parts[n][j - i] = '\0';
        n++;
        i = j;
    }
    return i < len ? -1 : n;
}

int moat_lb_admin(int method, const char *path, size_t pathlen, const char *body, size_t blen,
                  char **out)
{
    char parts[5][96];
    int np = split(path, pathlen, parts);
    *out = NULL;
    if (np < 1 || strcmp(parts[0], "pools") != 0)
        return jerr(out, 404, "no such endpoint");
    pthread_mutex_lock(&lb_reg.lock);
    uint64_t now = moat_now_ms();
    int rc;
    const struct moat_cfg_pool *pc = np >= 2 ? cur_pool(parts[1]) : NULL;
    struct lb_pool *lp = pc ? find_pool(parts[1]) : NULL;
    bool get = method == MOAT_M_GET || method == MOAT_M_HEAD;
    if (np == 1) {
        if (!get) {
            rc = jerr(out, 405, "use GET");
        } else {
            json_t *arr = json_array();
            const struct moat_config *c = lb_reg.cur;
            for (size_t i = 0; c && i < c->npools; i++) {
                struct lb_pool *p = find_pool(c->pools[i].name);
                if (p)
                    json_array_append_new(arr, pool_json(&c->pools[i], p, now));
            }
            rc = jok(out, 200, json_pack("{s:o}", "pools", arr));
        }
    } else if (!lp) {
        rc = jerr(out, 404, "no pool named \"%s\"", parts[1]);
    } else if (np == 2) {
        rc = get ? jok(out, 200, pool_json(pc, lp, now)) : jerr(out, 405, "use GET");
    } else if (strcmp(parts[2], "origins") != 0) {
        rc = jerr(out, 404, "no such endpoint (try /pools/%s/origins)", lp->name);
    } else if (np == 3) {
        if (method == MOAT_M_POST) {
            rc = add_origin(lp, pc, body, blen, out);
            if (rc == 201)
                lb_monitor_sync();
        } else if (get) {
            json_t *pj = pool_json(pc, lp, now);
            rc = jok(out, 200, json_pack("{s:O}", "origins", json_object_get(pj, "origins")));
            json_decref(pj);
        } else {
            rc = jerr(out, 405, "use GET or POST");
        }
    } else {
        unsigned w = 1;
        struct moat_lb_origin *o = member(lp, parts[3], &w);
        if (!o) {
            rc = jerr(out, 404, "pool %s has no origin %s", lp->name, parts[3]);
        } else if (np == 4) {
            if (method == MOAT_M_DELETE)
                rc = remove_origin(lp, pc, o, out);
            else if (get)
                rc = jok(out, 200, origin_json(o, w, now));
            else
                rc = jerr(out, 405, "use GET or DELETE");
        } else if (method != MOAT_M_POST) {
            rc = jerr(out, 405, "use POST");
        } else if (strcmp(parts[4], "drain") == 0 || strcmp(parts[4], "disable") == 0 ||
                   strcmp(parts[4], "enable") == 0) {
            int st = parts[4][0] == 'd' ? (parts[4][1] == 'r' ? MOAT_LB_DRAINING : MOAT_LB_DISABLED)
                                        : MOAT_LB_ENABLED;
            atomic_store(&o->admin, st);
            if (st == MOAT_LB_ENABLED)
                atomic_store(&o->up_since_ms, moat_now_ms());
            rc = jok(out, 200, origin_json(o, w, now));
        } else {
            rc = jerr(out, 404, "no such action \"%s\" (drain, disable, enable)", parts[4]);
        }
    }
    pthread_mutex_unlock(&lb_reg.lock);
    if (!*out)
        return jerr(out, 500, "out of memory");
    return rc;
}

/* --- metrics ----------------------------------------------------------------------------- */

/* One family: a row per member origin of every configured pool. */
typedef double origin_val(const struct moat_lb_origin *o, uint64_t now);
static double v_up(const struct moat_lb_origin *o, uint64_t now)
{
    return atomic_load(&o->up);
}
static double v_usable(const struct moat_lb_origin *o, uint64_t now)
{
    return moat_lb_usable(o, now);
}
static double v_inflight(const struct moat_lb_origin *o, uint64_t now)
{
    return atomic_load(&o->inflight);
}
static double v_requests(const struct moat_lb_origin *o, uint64_t now)
{
    return (double)atomic_load(&o->requests);
}
static double v_failures(const struct moat_lb_origin *o, uint64_t now)
{
    return (double)atomic_load(&o->failures);
}
static double v_ejections(const struct moat_lb_origin *o, uint64_t now)
{
    return (double)atomic_load(&o->ejected_total);
}
static double v_rtt(const struct moat_lb_origin *o, uint64_t now)
{
    return (double)atomic_load(&o->rtt_us) / 1e6;
}
static double v_transitions(const struct moat_lb_origin *o, uint64_t now)
{
    return (double)atomic_load(&o->transitions);
}
static double v_check_sum(const struct moat_lb_origin *o, uint64_t now)
{
    return (double)atomic_load(&o->check_us_sum) / 1e6;
}
static double v_checks_ok(const struct moat_lb_origin *o, uint64_t now)
{
    return (double)atomic_load(&o->checks_ok);
}
static double v_checks_failed(const struct moat_lb_origin *o, uint64_t now)
{
    return (double)atomic_load(&o->checks_failed);
}

static void origin_family(struct moat_sbuf *b, const char *name, const char *type, const char *help,
                          const char *extra, origin_val *fn, bool head, uint64_t now)
{
    if (head)
        moat_sbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    const struct moat_config *c = lb_reg.cur;
    for (size_t i = 0; c && i < c->npools; i++) {
        struct lb_pool *lp = find_pool(c->pools[i].name);
        const struct lb_members *m = lp ? atomic_load(&lp->m) : NULL;
        for (size_t j = 0; m && j < m->n; j++)
            moat_sbuf_printf(b, "%s{pool=\"%s\",origin=\"%s\"%s} %.6g\n", name, lp->name,
                             m->o[j]->o.addr.text, extra, fn(m->o[j], now));
    }
}

char *moat_lb_metrics_text(void)
{
    struct moat_sbuf b = {.p = malloc(8192), .cap = 8192};
    if (!b.p)
        return NULL;
    b.p[0] = '\0';
    uint64_t now = moat_now_ms();
    pthread_mutex_lock(&lb_reg.lock);
    origin_family(&b, "moat_origin_up", "gauge", "The monitor's verdict (1 without a monitor)", "",
                  v_up, true, now);
    origin_family(&b, "moat_origin_usable", "gauge",
                  "Takes new requests (up, enabled, not ejected)", "", v_usable, true, now);
    origin_family(&b, "moat_origin_in_flight", "gauge", "Requests at the origin now", "",
                  v_inflight, true, now);
    origin_family(&b, "moat_origin_requests_total", "counter", "Tries sent to the origin", "",
                  v_requests, true, now);
    origin_family(&b, "moat_origin_failures_total", "counter",
                  "Tries that failed (connect, timeout, reset, 5xx)", "", v_failures, true, now);
    origin_family(&b, "moat_origin_ejections_total", "counter", "Passive outlier ejections", "",
                  v_ejections, true, now);
    origin_family(&b, "moat_origin_rtt_seconds", "gauge",
                  "Moving average of passing checks' duration", "", v_rtt, true, now);
    origin_family(&b, "moat_origin_checks_total", "counter", "Monitor checks, by result",
                  ",result=\"ok\"", v_checks_ok, true, now);
    origin_family(&b, "moat_origin_checks_total", "counter", "", ",result=\"failed\"",
                  v_checks_failed, false, now);
    origin_family(&b, "moat_origin_check_seconds_sum", "counter",
                  "Total duration of monitor checks", "", v_check_sum, true, now);
    origin_family(&b, "moat_origin_transitions_total", "counter",
                  "Monitor verdict changes (up to down and back)", "", v_transitions, true, now);
    const struct moat_config *c = lb_reg.cur;
    static const char *const pool_help[][3] = {
        {"moat_pool_healthy", "gauge", "At least min_origins origins usable"},
        {"moat_pool_origins_usable", "gauge", "Origins that take new requests"},
        {"moat_pool_queued", "gauge", "Requests waiting for an origin below max_requests"},
        {"moat_pool_retries_total", "counter", "Tries sent to another origin after a failure"},
        {"moat_pool_rejected_total", "counter", "Requests answered 503 by admission control"},
    };
    for (size_t f = 0; f < MOAT_ARRAY_LEN(pool_help); f++) {
        moat_sbuf_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", pool_help[f][0], pool_help[f][2],
                         pool_help[f][0], pool_help[f][1]);
        for (size_t i = 0; c && i < c->npools; i++) {
            struct lb_pool *lp = find_pool(c->pools[i].name);
            if (!lp)
                continue;
            size_t usable = lb_pool_usable(atomic_load(&lp->m), now);
            switch (f) {
            case 0:
                moat_sbuf_printf(&b, "moat_pool_healthy{pool=\"%s\"} %d\n", lp->name,
                                 usable >= c->pools[i].min_origins);
                break;
            case 1:
                moat_sbuf_printf(&b, "moat_pool_origins_usable{pool=\"%s\"} %zu\n", lp->name,
                                 usable);
                break;
            case 2:
                moat_sbuf_printf(&b, "moat_pool_queued{pool=\"%s\"} %u\n", lp->name,
                                 atomic_load(&lp->queued));
                break;
            case 3:
                moat_sbuf_printf(&b, "moat_pool_retries_total{pool=\"%s\"} %llu\n", lp->name,
                                 (unsigned long long)atomic_load(&lp->retries));
                break;
            default:
                moat_sbuf_printf(
                    &b,
                    "moat_pool_rejected_total{pool=\"%s\",reason=\"queue_full\"} %llu\n"
                    "moat_pool_rejected_total{pool=\"%s\",reason=\"queue_timeout\"} %llu\n"
                    "moat_pool_rejected_total{pool=\"%s\",reason=\"no_origin\"} %llu\n",
                    lp->name, (unsigned long long)atomic_load(&lp->queue_full), lp->name,
                    (unsigned long long)atomic_load(&lp->queue_timeouts), lp->name,
                    (unsigned long long)atomic_load(&lp->no_origin));
                break;
            }
        }
    }
    moat_sbuf_printf(
        &b, "# HELP moat_waiting_room_total Visitors of sites with a waiting room, by outcome\n"
            "# TYPE moat_waiting_room_total counter\n");
    for (unsigned i = 0; i < lb_reg.nwrooms; i++) {
        struct lb_wroom *w = lb_reg.wrooms[i];
        moat_sbuf_printf(&b,
                         "moat_waiting_room_total{site=\"%s\",outcome=\"admitted\"} %llu\n"
                         "moat_waiting_room_total{site=\"%s\",outcome=\"waited\"} %llu\n",
                         w->key, (unsigned long long)atomic_load(&w->admitted), w->key,
                         (unsigned long long)atomic_load(&w->waited));
    }
    pthread_mutex_unlock(&lb_reg.lock);
    return b.p;
}
