/* test_respond.c: the response head model and the HTTP/1.1 encoder (src/proxy/respond.c):
 * what of the origin's fields goes to the client, what moat adds (Via, Date, Age,
 * Cache-Status, browser_ttl, HSTS), the framing and Connection lines, local answers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#include "proxy/req.h"

struct fixture {
    struct moat_config *cfg;
    struct moat_wcfg wc;
    struct moat_worker w;
    struct moat_req r;
    struct moat_buf out;
    struct moat_h1_resp q;
    struct moat_hdr hdrs[32];
    char text[4096];
};

static const char yaml[] = "listen: \"127.0.0.1:18080\"\n"
                           "pools:\n  p: { origins: [\"127.0.0.1:9001\"] }\n"
                           "sites:\n  - hosts: [\"*\"]\n    pool: p\n"
                           "    rules:\n      - match: { path: \"/b/*\" }\n"
                           "        browser_ttl: 2m\n";

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof *fx);
    char err[MOAT_CONFIG_ERRLEN];
    fx->cfg = moat_config_load_string(yaml, sizeof yaml - 1, "test", err, sizeof err);
    if (!fx->cfg) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    fx->wc.cfg = fx->cfg;
    fx->w.wcfg = &fx->wc;
    fx->r.w = &fx->w;
    fx->r.wcfg = &fx->wc;
    fx->r.site = &fx->cfg->sites[0];
    fx->r.minor = 1;
    if (moat_buf_get(&fx->out, 16384) != MOAT_OK)
        return -1;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    moat_buf_put(&fx->out);
    moat_config_release(&fx->cfg);
    moat_buf_thread_cleanup();
    free(fx);
    return 0;
}

/* Parses an origin's response head from <raw> into a moat_resp as exchange.c makes it. */
static struct moat_resp origin_resp(struct fixture *fx, const char *raw)
{
    snprintf(fx->text, sizeof fx->text, "%s", raw);
    struct moat_h1_limits lim = {8192, 8192, 32};
    fx->q = (struct moat_h1_resp){.hdrs = fx->hdrs};
    enum moat_h1_err err;
    int n = moat_h1_parse_response(fx->text, strlen(fx->text), &lim, &fx->q, &err);
    assert_true(n > 0);
    return (struct moat_resp){
        .status = fx->q.status,
        .reason = fx->q.reason,
        .fields = fx->q.hdrs,
        .nfields = fx->q.nhdrs,
        .fields_h1 = true,
        .conn_named = fx->q.flags & MOAT_H1_F_CONN_OTHER,
        .origin = true,
        .length = (fx->q.flags & MOAT_H1_F_HAS_CL) ? fx->q.content_length : MOAT_LEN_UNKNOWN,
        .via_minor = fx->q.minor,
        .age = -1,
        .cache_ttl = -1,
    };
}

static const char *encode(struct fixture *fx, const struct moat_resp *rs, const char *framing,
                          bool keep, bool keep_field)
{
    fx->out.rpos = fx->out.wpos = 0;
    assert_int_equal(moat_resp_h1(&fx->r, rs, moat_str_make(framing, strlen(framing)), keep,
                                  keep_field, &fx->out),
                     MOAT_OK);
    fx->out.base[fx->out.wpos] = 0;
    return fx->out.base;
}

static void test_hop_by_hop_and_framing_are_dropped(void **state)
{
    struct fixture *fx = *state;
    struct moat_resp rs = origin_resp(fx, "HTTP/1.1 200 OK\r\n"
                                          "Date: Mon, 07 Dec 2026 10:00:00 GMT\r\n"
                                          "Content-Type: text/html\r\n"
                                          "Connection: keep-alive, X-Secret\r\n"
                                          "X-Secret: 1\r\n"
                                          "Keep-Alive: timeout=5\r\n"
                                          "Transfer-Encoding: chunked\r\n"
                                          "Trailer: X-Sum\r\n"
                                          "Upgrade: h2c\r\n"
                                          "X-Kept: yes\r\n\r\n");
    const char *h = encode(fx, &rs, "Transfer-Encoding: chunked\r\n", true, false);
    assert_non_null(strstr(h, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(h, "Content-Type: text/html\r\n"));
    assert_non_null(strstr(h, "X-Kept: yes\r\n"));
    assert_null(strstr(h, "X-Secret")); /* named in Connection */
    assert_null(strstr(h, "Keep-Alive"));
    assert_null(strstr(h, "Upgrade"));
    assert_null(strstr(h, "Trailer")); /* trailers_ok not set */
    assert_null(strstr(h, "Connection:"));
    /* the framing is the encoder's, given once */
    assert_ptr_equal(strstr(h, "Transfer-Encoding"),
                     strstr(h, "Transfer-Encoding: chunked\r\n\r\n"));
    assert_non_null(strstr(h, "Via: 1.1 moat\r\n"));
    /* the origin's Date stays, and only it */
    assert_non_null(strstr(h, "Date: Mon, 07 Dec 2026 10:00:00 GMT\r\n"));
    assert_null(strstr(strstr(h, "Date:") + 5, "Date:"));
    /* with trailers possible, Trailer goes along */
    rs.trailers_ok = true;
    h = encode(fx, &rs, "Transfer-Encoding: chunked\r\n", true, false);
    assert_non_null(strstr(h, "Trailer: X-Sum\r\n"));
}

static void test_date_added_when_missing(void **state)
{
    struct fixture *fx = *state;
    struct moat_resp rs = origin_resp(fx, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n");
    const char *h = encode(fx, &rs, "Content-Length: 2\r\n", false, false);
    const char *d = strstr(h, "\r\nDate: ");
    assert_non_null(d);
    int64_t t = 0;
    const char *e = strstr(d + 2, "\r\n");
    assert_true(moat_http_date_parse(moat_str_make(d + 8, (size_t)(e - d - 8)), &t));
    int64_t now = (int64_t)(moat_wall_us() / 1000000);
    assert_true(t >= now - 2 && t <= now + 1);
    assert_non_null(strstr(h, "Via: 1.0 moat\r\n")); /* the version it came with */
    assert_non_null(strstr(h, "Connection: close\r\n"));
    assert_non_null(strstr(h, "Content-Length: 2\r\n"));
}

static void test_keepalive_field_for_http10(void **state)
{
    struct fixture *fx = *state;
    struct moat_resp rs = origin_resp(fx, "HTTP/1.1 204 No Content\r\n\r\n");
    const char *h = encode(fx, &rs, "", true, true);
    assert_non_null(strstr(h, "Connection: keep-alive\r\n"));
    h = encode(fx, &rs, "", true, false);
    assert_null(strstr(h, "Connection"));
}

static void test_browser_ttl_replaces_cache_control(void **state)
{
    struct fixture *fx = *state;
    fx->r.rule = &fx->cfg->sites[0].rules[0];
    struct moat_resp rs = origin_resp(fx, "HTTP/1.1 200 OK\r\nCache-Control: no-cache\r\n"
                                          "Content-Length: 0\r\n\r\n");
    const char *h = encode(fx, &rs, "", true, false);
    assert_null(strstr(h, "no-cache"));
    assert_non_null(strstr(h, "Cache-Control: max-age=120\r\n"));
}

static void test_cache_fields(void **state)
{
    struct fixture *fx = *state;
    static const char block[] =
        "Content-Type: text/plain\r\nDate: Mon, 07 Dec 2026 10:00:00 GMT\r\n";
    struct moat_resp rs = {
        .status = 200,
        .block = MOAT_STR(block),
        .via_minor = 1,
        .age = 12,
        .cache_status = "hit",
        .cache_ttl = 48,
        .length = 5,
    };
    fx->r.c.status = "hit";
    const char *h = encode(fx, &rs, "Content-Length: 5\r\n", true, false);
    assert_non_null(strstr(h, block));
    assert_non_null(strstr(h, "Age: 12\r\n"));
    assert_non_null(strstr(h, "Cache-Status: moat; hit; ttl=48\r\n"));
    assert_null(strstr(strstr(h, "Date:") + 5, "Date:")); /* the stored Date is enough */
}

static void test_hsts_only_over_tls_and_not_on_errors(void **state)
{
    struct fixture *fx = *state;
    struct moat_cfg_site site = *fx->r.site;
    site.hsts_ms = 365ull * 86400 * 1000;
    site.hsts_subdomains = true;
    fx->r.site = &site;
    struct moat_resp rs = origin_resp(fx, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    const char *h = encode(fx, &rs, "", true, false);
    assert_null(strstr(h, "Strict-Transport-Security")); /* plain http */
    fx->r.tls = true;
    h = encode(fx, &rs, "", true, false);
    assert_non_null(
        strstr(h, "Strict-Transport-Security: max-age=31536000; includeSubDomains\r\n"));
    rs.status = 502;
    h = encode(fx, &rs, "", true, false);
    assert_null(strstr(h, "Strict-Transport-Security"));
}

static void test_local_answer_fields(void **state)
{
    struct fixture *fx = *state;
    struct moat_hdr extra[] = {{MOAT_STR("Location"), MOAT_STR("https://shop.example/a")},
                               {MOAT_STR("Set-Cookie"), MOAT_STR("a=b; Secure")}};
    struct moat_resp rs = {
        .status = 301,
        .fields = extra,
        .nfields = 2,
        .via_minor = -1,
        .age = -1,
        .cache_ttl = -1,
        .length = 3,
        .ctype = MOAT_STR("text/html"),
    };
    const char *h = encode(fx, &rs, "Content-Length: 3\r\n", true, false);
    assert_memory_equal(h, "HTTP/1.1 301 Moved Permanently\r\n", 32);
    assert_non_null(strstr(h, "Location: https://shop.example/a\r\n"));
    assert_non_null(strstr(h, "Set-Cookie: a=b; Secure\r\n"));
    assert_non_null(strstr(h, "Content-Type: text/html\r\n"));
    assert_non_null(strstr(h, "Date: "));
    assert_null(strstr(h, "Via:")); /* moat's own answers are not proxied */
}

static void test_upgrade_head(void **state)
{
    struct fixture *fx = *state;
    struct moat_resp rs = origin_resp(fx, "HTTP/1.1 101 Switching Protocols\r\n"
                                          "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                          "Sec-WebSocket-Accept: xyz\r\n\r\n");
    rs.upgrade = true;
    const char *h = encode(fx, &rs, "", false, false);
    assert_non_null(strstr(h, "Connection: upgrade\r\nUpgrade: websocket\r\n"));
    assert_non_null(strstr(h, "Sec-WebSocket-Accept: xyz\r\n"));
    assert_null(strstr(h, "Connection: close"));
}

static void test_no_room_leaves_out_unchanged(void **state)
{
    struct fixture *fx = *state;
    struct moat_resp rs = origin_resp(fx, "HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n");
    struct moat_buf small = {0};
    assert_int_equal(moat_buf_get(&small, 64), MOAT_OK);
    small.wpos = small.cap - 20;
    uint32_t before = small.wpos;
    assert_int_equal(moat_resp_h1(&fx->r, &rs, MOAT_STR_NULL, true, false, &small), MOAT_ERR);
    assert_int_equal(small.wpos, before);
    moat_buf_put(&small);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hop_by_hop_and_framing_are_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_date_added_when_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_field_for_http10, setup, teardown),
        cmocka_unit_test_setup_teardown(test_browser_ttl_replaces_cache_control, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hsts_only_over_tls_and_not_on_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_local_answer_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upgrade_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_room_leaves_out_unchanged, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
