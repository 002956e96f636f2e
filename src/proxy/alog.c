/* alog.c: a request's end in numbers: the counters, the latency histogram and the JSON
 * access-log line. */
#include <time.h>

#include "proxy/req.h"
#include "shield/shield.h"

static const char *err_name(const struct moat_req *r)
{
    if (r->perr != MOAT_H1_OK)
        return moat_h1_err_name(r->perr);
    return moat_xerr_name(r->xerr);
}

static void write_access_log(struct moat_req *r, uint64_t now_us)
{
    struct moat_worker *w = r->w;
    char *p = moat_alog_reserve(&w->alog, 2048);
    if (!p)
        return;
    time_t sec = (time_t)(now_us / 1000000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    size_t n =
        (size_t)snprintf(p, 2048,
                         "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03uZ\",\"client\":\"%s\","
                         "\"method\":\"",
                         tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                         tm.tm_sec, (unsigned)(now_us % 1000000 / 1000), r->peer_text);
    /* Bounded so that the line fits its 2 KiB whatever the request holds (each escaped byte
     * may take 6): the rest of a long path or host is cut. */
    n += moat_json_escape(p + n, 300, moat_str_make(r->method.ptr, MOAT_MIN(r->method.len, 40)));
    memcpy(p + n, "\",\"host\":\"", 10);
    n += 10;
    n += moat_json_escape(p + n, 600,
                          moat_str_make(r->authority.ptr, MOAT_MIN(r->authority.len, 100)));
    memcpy(p + n, "\",\"path\":\"", 10);
    n += 10;
    n += moat_json_escape(p + n, 800, moat_str_make(r->target.ptr, MOAT_MIN(r->target.len, 240)));
    double dur = (double)(now_us - r->t_start_us) / 1000.0;
    n += (size_t)snprintf(p + n, 2048 - n, "\",\"status\":%d,\"bytes\":%llu,\"duration_ms\":%.3f,",
                          r->status, (unsigned long long)r->resp_bytes, dur);
    if (r->upool) {
        double up = r->t_up_start_us ? (double)(now_us - r->t_up_start_us) / 1000.0 : 0.0;
        n += (size_t)snprintf(p + n, 2048 - n, "\"upstream\":\"%s\",\"upstream_ms\":%.3f",
                              r->upool->addr.text, up);
        if (r->t_up_start_us && r->t_up_first_us >= r->t_up_start_us)
            n += (size_t)snprintf(p + n, 2048 - n, ",\"upstream_header_ms\":%.3f",
                                  (double)(r->t_up_first_us - r->t_up_start_us) / 1000.0);
        else
            n += (size_t)snprintf(p + n, 2048 - n, ",\"upstream_header_ms\":null");
    } else {
        n += (size_t)snprintf(p + n, 2048 - n,
                              "\"upstream\":null,\"upstream_ms\":null,\"upstream_header_ms\":null");
    }
    const char *e = err_name(r);
    if (e)
        n += (size_t)snprintf(p + n, 2048 - n, ",\"error\":\"%s\"", e);
    if (r->c.status)
        n += (size_t)snprintf(p + n, 2048 - n, ",\"cache\":\"%s\"", r->c.status);
    if (r->tls)
        n += (size_t)snprintf(p + n, 2048 - n, ",\"tls\":true");
    if (r->bg)
        n += (size_t)snprintf(p + n, 2048 - n, ",\"background\":true");
    p[n++] = '}';
    p[n++] = '\n';
    moat_alog_commit(&w->alog, n);
}

void moat_req_account(struct moat_req *r)
{
    struct moat_stats *st = &r->w->stats;
    uint64_t now = moat_wall_us();
    switch (r->status / 100) {
    case 1:
        MOAT_STAT_INC(st, req_1xx);
        break;
    case 2:
        MOAT_STAT_INC(st, req_2xx);
        break;
    case 3:
        MOAT_STAT_INC(st, req_3xx);
        break;
    case 4:
        MOAT_STAT_INC(st, req_4xx);
        break;
    default:
        MOAT_STAT_INC(st, req_5xx);
        break;
    }
    MOAT_STAT_ADD(st, resp_bytes, r->resp_bytes);
    MOAT_STAT_ADD(st, req_bytes, r->req_bytes);
    moat_stats_observe(st, now - r->t_start_us);
    moat_shield_account(r);
    moat_dashrec_record(&r->w->dash, r, now);
    if (r->w->alog.fd >= 0)
        write_access_log(r, now);
}
