/* demo.c: moat's built-in demo origin, so `make demo` shows moat in front of something real
 * without installing a web server: a small shop page, static assets with long freshness, a
 * dynamic JSON endpoint marked no-store, and a health check. */
#include <time.h>

#include "admin/admin.h"

static const char page[] =
    "<!doctype html><html><head><meta charset=utf-8><title>moat demo shop</title>"
    "<link rel=stylesheet href=/static/app.css></head><body>"
    "<h1>moat demo shop</h1>"
    "<p>This page comes from moat's built-in demo origin, through moat's proxy.</p>"
    "<ul><li><a href=/static/app.css>/static/app.css</a> (static, max-age=3600)</li>"
    "<li><a href=/api/time>/api/time</a> (dynamic, no-store)</li>"
    "<li><a href=/health>/health</a></li></ul>"
    "<p>Served at <span id=t></span>.</p>"
    "<script>fetch('/api/time').then(r=>r.json()).then(j=>{document.getElementById('t')"
    ".textContent=j.time})</script></body></html>\n";

static const char css[] = "body{font-family:system-ui,sans-serif;max-width:40em;margin:2em "
                          "auto;color:#223}h1{color:#0a5}\n";

static void handle(void *ctx, const struct moat_httpd_req *req, struct moat_httpd_resp *resp)
{
    (void)ctx;
    struct moat_str p = req->h1->path;
    if (req->h1->meth != MOAT_M_GET && req->h1->meth != MOAT_M_HEAD) {
        moat_httpd_error(resp, 405, "the demo origin serves GET and HEAD");
        return;
    }
    if (moat_str_eq(p, MOAT_STR("/"))) {
        moat_httpd_set(resp, 200, "text/html; charset=utf-8", page, sizeof page - 1);
        snprintf(resp->extra, sizeof resp->extra, "Cache-Control: public, max-age=60\r\n");
    } else if (moat_str_eq(p, MOAT_STR("/static/app.css"))) {
        moat_httpd_set(resp, 200, "text/css", css, sizeof css - 1);
        snprintf(resp->extra, sizeof resp->extra, "Cache-Control: public, max-age=3600\r\n");
    } else if (moat_str_eq(p, MOAT_STR("/api/time"))) {
        char body[128];
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        int n = snprintf(body, sizeof body, "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02dZ\"}\n",
                         tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                         tm.tm_sec);
        moat_httpd_set(resp, 200, "application/json", body, (size_t)n);
        snprintf(resp->extra, sizeof resp->extra, "Cache-Control: no-store\r\n");
    } else if (moat_str_eq(p, MOAT_STR("/health"))) {
        moat_httpd_set(resp, 200, "text/plain", "ok\n", 3);
    } else {
        moat_httpd_set(resp, 404, "text/plain", "not found\n", 10);
    }
}

struct moat_httpd *moat_demo_start(struct moat_loop *loop, const struct moat_addr *addr, char *err,
                                   size_t errlen)
{
    return moat_httpd_start(loop, addr, handle, NULL, err, errlen);
}
