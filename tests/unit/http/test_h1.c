/* test_h1.c: unit tests for the strict HTTP/1.1 parser (src/http/h1.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#include "http/h1.h"

#define MAXH 16
static struct moat_hdr hdrs[MAXH];
static struct moat_h1_limits lim = {.request_line = 8192, .head_bytes = 16384, .max_headers = MAXH};

static int preq_n(const char *s, size_t n, struct moat_h1_req *r, enum moat_h1_err *e)
{
    r->hdrs = hdrs;
    return moat_h1_parse_request(s, n, &lim, r, e);
}

static int preq(const char *s, struct moat_h1_req *r, enum moat_h1_err *e)
{
    return preq_n(s, strlen(s), r, e);
}

static int presp(const char *s, struct moat_h1_resp *r, enum moat_h1_err *e)
{
    r->hdrs = hdrs;
    return moat_h1_parse_response(s, strlen(s), &lim, r, e);
}

static void assert_str(struct moat_str s, const char *want)
{
    if (s.len != strlen(want) || (s.len && memcmp(s.ptr, want, s.len) != 0)) {
        print_error("got \"%.*s\", want \"%s\"\n", (int)s.len, s.ptr ? s.ptr : "", want);
        fail();
    }
}

struct errcase {
    const char *in;
    enum moat_h1_err err;
    int status;
};

static void run_req_errs(const struct errcase *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct moat_h1_req r;
        enum moat_h1_err e = MOAT_H1_OK;
        int rc = preq(c[i].in, &r, &e);
        if (rc != MOAT_ERR || e != c[i].err || moat_h1_err_status(e) != c[i].status) {
            print_error("case %zu \"%s\": rc %d err %s (%d), want %s (%d)\n", i, c[i].in, rc,
                        moat_h1_err_name(e), moat_h1_err_status(e), moat_h1_err_name(c[i].err),
                        c[i].status);
            fail();
        }
    }
}

static void run_resp_errs(const struct errcase *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct moat_h1_resp r;
        enum moat_h1_err e = MOAT_H1_OK;
        int rc = presp(c[i].in, &r, &e);
        if (rc != MOAT_ERR || e != c[i].err || moat_h1_err_status(e) != c[i].status) {
            print_error("case %zu \"%s\": rc %d err %s, want %s\n", i, c[i].in, rc,
                        moat_h1_err_name(e), moat_h1_err_name(c[i].err));
            fail();
        }
    }
}

/* ---- good requests ----------------------------------------------------------------------- */

static const char browser_get[] =
    "GET /search?q=moat&lang=en HTTP/1.1\r\n"
    "Host: www.example.com\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    "Accept-Language: en-US,en;q=0.5\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\n"
    "Connection: keep-alive\r\n"
    "Cookie: session=abc123; theme=dark\r\n"
    "Upgrade-Insecure-Requests: 1\r\n"
    "Sec-Fetch-Dest: document\r\n"
    "Priority: u=0, i\r\n"
    "\r\n";

static void test_req_browser_get(void **state)
{
    struct moat_h1_req r;
    enum moat_h1_err e;
    int rc = preq(browser_get, &r, &e);
    assert_int_equal(rc, (int)strlen(browser_get));
    assert_int_equal(e, MOAT_H1_OK);
    assert_int_equal(r.head_len, strlen(browser_get));
    assert_str(r.method, "GET");
    assert_int_equal(r.meth, MOAT_M_GET);
    assert_str(r.target, "/search?q=moat&lang=en");
    assert_str(r.path, "/search");
    assert_str(r.query, "q=moat&lang=en");
    assert_str(r.host, "www.example.com");
    assert_int_equal(r.minor, 1);
    assert_int_equal(r.nhdrs, 10);
    assert_str(r.hdrs[0].name, "Host");
    assert_str(r.hdrs[9].name, "Priority");
    assert_str(r.hdrs[9].value, "u=0, i");
    assert_int_equal(r.flags, MOAT_H1_F_CONN_KEEP);
    const struct moat_hdr *h = moat_h1_find(r.hdrs, r.nhdrs, MOAT_STR("accept-encoding"));
    assert_non_null(h);
    assert_str(h->value, "gzip, deflate, br, zstd");
    assert_null(moat_h1_find(r.hdrs, r.nhdrs, MOAT_STR("x-none")));
}

static void test_req_values_ows(void **state)
{
    struct moat_h1_req r;
    enum moat_h1_err e;
    const char *s = "POST /a HTTP/1.1\r\nHost:x\r\nA:   \t v a l \t \r\nB:\r\nC: \r\n"
                    "D: caf\xc3\xa9\r\nE: a\tb\r\nContent-Length: 007\r\n\r\n";
    assert_int_equal(preq(s, &r, &e), (int)strlen(s));
    assert_int_equal(r.meth, MOAT_M_POST);
    assert_str(r.hdrs[1].value, "v a l");
    assert_str(r.hdrs[2].value, "");
    assert_str(r.hdrs[3].value, "");
    assert_str(r.hdrs[4].value, "caf\xc3\xa9");
    assert_str(r.hdrs[5].value, "a\tb");
    assert_int_equal(r.flags, MOAT_H1_F_HAS_CL);
    assert_int_equal(r.content_length, 7);
}

static void test_req_forms(void **state)
{
    struct moat_h1_req r;
    enum moat_h1_err e;
    const char *s = "GET http://Example.COM:8080/a/b?x=1 HTTP/1.1\r\nHost: other\r\n\r\n";
    assert_true(preq(s, &r, &e) > 0);
    assert_true(r.flags & MOAT_H1_F_ABSOLUTE);
    assert_str(r.host, "Example.COM:8080");
    assert_str(r.path, "/a/b");
    assert_str(r.query, "x=1");

    s = "GET https://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n";
    assert_true(preq(s, &r, &e) > 0);
    assert_str(r.path, "/");
    assert_str(r.query, "");
    assert_str(r.host, "example.com");

    s = "GET HTTP://[::1]:81?q HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_true(preq(s, &r, &e) > 0);
    assert_str(r.host, "[::1]:81");
    assert_str(r.path, "/");
    assert_str(r.query, "q");

    s = "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
    assert_true(preq(s, &r, &e) > 0);
    assert_int_equal(r.meth, MOAT_M_CONNECT);
    assert_str(r.target, "example.com:443");
    assert_str(r.path, "");
    assert_str(r.host, "example.com:443");

    s = "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_true(preq(s, &r, &e) > 0);
    assert_int_equal(r.meth, MOAT_M_OPTIONS);
    assert_str(r.path, "*");

    s = "GET /p?a?b=/c HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_true(preq(s, &r, &e) > 0);
    assert_str(r.path, "/p");
    assert_str(r.query, "a?b=/c");
}

static void test_req_versions_methods(void **state)
{
    struct moat_h1_req r;
    enum moat_h1_err e;
    assert_true(preq("GET / HTTP/1.0\r\n\r\n", &r, &e) > 0);
    assert_int_equal(r.minor, 0);
    assert_int_equal(r.host.len, 0);
    assert_true(preq("GET / HTTP/1.0\r\nHost: a.b\r\n\r\n", &r, &e) > 0);
    assert_str(r.host, "a.b");
    assert_true(preq("GET / HTTP/1.2\r\nHost: a\r\n\r\n", &r, &e) > 0);
    assert_int_equal(r.minor, 1);
    assert_true(preq("GET / HTTP/1.9\r\nHost: a\r\n\r\n", &r, &e) > 0);
    assert_int_equal(r.minor, 1);

    static const struct {
        const char *m;
        enum moat_method id;
    } ms[] = {{"GET", MOAT_M_GET},     {"HEAD", MOAT_M_HEAD},      {"POST", MOAT_M_POST},
              {"PUT", MOAT_M_PUT},     {"DELETE", MOAT_M_DELETE},  {"OPTIONS", MOAT_M_OPTIONS},
              {"PATCH", MOAT_M_PATCH}, {"TRACE", MOAT_M_TRACE},    {"PROPFIND", MOAT_M_OTHER},
              {"get", MOAT_M_OTHER},   {"M-SEARCH", MOAT_M_OTHER}, {"X", MOAT_M_OTHER}};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(ms); i++) {
        char buf[128];
        snprintf(buf, sizeof buf, "%s / HTTP/1.1\r\nHost: h\r\n\r\n", ms[i].m);
        assert_true(preq(buf, &r, &e) > 0);
        assert_int_equal(r.meth, ms[i].id);
        assert_str(r.method, ms[i].m);
    }
}

static void test_req_leading_crlf(void **state)
{
    struct moat_h1_req r;
    enum moat_h1_err e;
    const char *s = "\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(preq(s, &r, &e), (int)strlen(s));
    assert_str(r.method, "GET");
    assert_int_equal(preq("\r\n", &r, &e), MOAT_AGAIN);
    assert_int_equal(preq("\r", &r, &e), MOAT_AGAIN);
    assert_int_equal(preq("", &r, &e), MOAT_AGAIN);
}

static void test_req_flags(void **state)
{
    struct moat_h1_req r;
    enum moat_h1_err e;
    const char *s = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, Upgrade\r\n"
                    "Upgrade: websocket\r\nConnection: close\r\n\r\n";
    assert_true(preq(s, &r, &e) > 0);
    assert_int_equal(r.flags, MOAT_H1_F_CONN_KEEP | MOAT_H1_F_CONN_UPGRADE | MOAT_H1_F_UPGRADE |
                                  MOAT_H1_F_CONN_CLOSE);
    s = "PUT /u HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 10\r\n\r\n";
    assert_true(preq(s, &r, &e) > 0);
    assert_int_equal(r.flags, MOAT_H1_F_EXPECT_100 | MOAT_H1_F_HAS_CL);
    assert_int_equal(r.content_length, 10);
    s = "PUT /u HTTP/1.1\r\nHost: x\r\nExpect: something\r\n\r\n";
    assert_true(preq(s, &r, &e) > 0);
    assert_int_equal(r.flags, MOAT_H1_F_EXPECT_OTHER);
    s = "POST /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n";
    assert_true(preq(s, &r, &e) > 0);
    assert_int_equal(r.flags, MOAT_H1_F_CHUNKED);
    s = "POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775807\r\n\r\n";
    assert_true(preq(s, &r, &e) > 0);
    assert_int_equal(r.content_length, 9223372036854775807ull);
}

static void test_req_hosts_ok(void **state)
{
    static const char *ok[] = {"a",
                               "example.com:80",
                               "127.0.0.1",
                               "[::1]",
                               "[2001:db8::1]:8443",
                               "xn--bcher-kva.example",
                               "a_b.c-d~e",
                               "%41.com",
                               "[::ffff:1.2.3.4]",
                               "h:65535",
                               "h:0"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(ok); i++) {
        char buf[256];
        snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", ok[i]);
        struct moat_h1_req r;
        enum moat_h1_err e = MOAT_H1_OK;
        if (preq(buf, &r, &e) <= 0) {
            print_error("host \"%s\" refused: %s\n", ok[i], moat_h1_err_name(e));
            fail();
        }
        assert_str(r.host, ok[i]);
    }
}

static void test_req_pipelined(void **state)
{
    struct moat_h1_req r;
    enum moat_h1_err e;
    const char *a = "GET /one HTTP/1.1\r\nHost: x\r\n\r\n";
    const char *b = "POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
    char buf[256];
    snprintf(buf, sizeof buf, "%s%s", a, b);
    int rc = preq(buf, &r, &e);
    assert_int_equal(rc, (int)strlen(a));
    assert_str(r.path, "/one");
    rc = preq(buf + rc, &r, &e);
    assert_int_equal(rc, (int)strlen(b) - 3);
    assert_str(r.path, "/two");
    assert_int_equal(r.content_length, 3);
}

/* Every strict prefix of a valid head is MOAT_AGAIN, never an error or a success. */
static void check_prefixes_req(const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i++) {
        struct moat_h1_req r;
        enum moat_h1_err e = MOAT_H1_OK;
        /* copy so that ASan would catch any read past the prefix */
        char *cp = malloc(i ? i : 1);
        memcpy(cp, s, i);
        int rc = preq_n(cp, i, &r, &e);
        free(cp);
        if (rc != MOAT_AGAIN) {
            print_error("prefix %zu of \"%s\": rc %d (%s)\n", i, s, rc, moat_h1_err_name(e));
            fail();
        }
    }
    struct moat_h1_req r;
    enum moat_h1_err e;
    assert_int_equal(preq_n(s, n, &r, &e), (int)n);
}

static void test_req_prefixes(void **state)
{
    check_prefixes_req(browser_get);
    check_prefixes_req("\r\n\r\nPOST http://h:1/p?q HTTP/1.0\r\nA:\r\nB: \t x\t\r\n\r\n");
    check_prefixes_req("POST /x HTTP/1.1\r\nHost: [::1]:8\r\nTransfer-Encoding: chunked\r\n\r\n");
    check_prefixes_req("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\nContent-Length: 12\r\n\r\n");
}

/* ---- request errors, one table per error -------------------------------------------------- */

static void test_req_errors(void **state)
{
    static const struct errcase c[] = {
        {" GET / HTTP/1.1\r\n\r\n", MOAT_H1_BAD_REQUEST_LINE, 400},
        {"GET  / HTTP/1.1\r\n\r\n", MOAT_H1_BAD_REQUEST_LINE, 400},
        {"GET / HTTP/1.1 \r\n\r\n", MOAT_H1_BAD_REQUEST_LINE, 400},
        {"GET /  HTTP/1.1\r\n\r\n", MOAT_H1_BAD_REQUEST_LINE, 400},
        {"GET /\r\n\r\n", MOAT_H1_BAD_REQUEST_LINE, 400},
        {"GET\r\n\r\n", MOAT_H1_BAD_REQUEST_LINE, 400},
        {"GET / HTTP/1.1\rX\n\r\n", MOAT_H1_BAD_REQUEST_LINE, 400},
        {"\rXGET / HTTP/1.1\r\n\r\n", MOAT_H1_BAD_REQUEST_LINE, 400},
        {"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", MOAT_H1_BAD_REQUEST_LINE, 400},
        {"GE(T / HTTP/1.1\r\n\r\n", MOAT_H1_BAD_METHOD, 400},
        {"GET\t/ HTTP/1.1\r\n\r\n", MOAT_H1_BAD_METHOD, 400},
        {"G\xc3\x89T / HTTP/1.1\r\n\r\n", MOAT_H1_BAD_METHOD, 400},
        {"GET /a\x01 HTTP/1.1\r\n\r\n", MOAT_H1_BAD_TARGET, 400},
        {"GET /a\tb HTTP/1.1\r\n\r\n", MOAT_H1_BAD_TARGET, 400},
        {"GET /a#frag HTTP/1.1\r\n\r\n", MOAT_H1_BAD_TARGET, 400},
        {"GET /\x80 HTTP/1.1\r\n\r\n", MOAT_H1_BAD_TARGET, 400},
        {"GET /0123456789abcdef\xff HTTP/1.1\r\n\r\n", MOAT_H1_BAD_TARGET, 400},
        {"GET /0123456789abcdef\x7f HTTP/1.1\r\n\r\n", MOAT_H1_BAD_TARGET, 400},
        {"GET * HTTP/1.1\r\nHost: x\r\n\r\n", MOAT_H1_BAD_TARGET, 400},
        {"GET foo HTTP/1.1\r\nHost: x\r\n\r\n", MOAT_H1_BAD_TARGET, 400},
        {"GET ** HTTP/1.1\r\nHost: x\r\n\r\n", MOAT_H1_BAD_TARGET, 400},
        {"CONNECT /x HTTP/1.1\r\nHost: x\r\n\r\n", MOAT_H1_BAD_TARGET, 400},
        {"CONNECT example.com HTTP/1.1\r\nHost: x\r\n\r\n", MOAT_H1_BAD_TARGET, 400},
        {"CONNECT http://h:1/ HTTP/1.1\r\nHost: x\r\n\r\n", MOAT_H1_BAD_TARGET, 400},
        {"GET ftp://h/ HTTP/1.1\r\nHost: x\r\n\r\n", MOAT_H1_BAD_TARGET, 400},
        {"GET http://user@h/ HTTP/1.1\r\nHost: x\r\n\r\n", MOAT_H1_BAD_TARGET, 400},
        {"GET http:///p HTTP/1.1\r\nHost: x\r\n\r\n", MOAT_H1_BAD_TARGET, 400},
        {"GET http:/h/p HTTP/1.1\r\nHost: x\r\n\r\n", MOAT_H1_BAD_TARGET, 400},
        {"GET / HTTP/1.x\r\n\r\n", MOAT_H1_BAD_VERSION, 400},
        {"GET / http/1.1\r\n\r\n", MOAT_H1_BAD_VERSION, 400},
        {"GET / HTTP/11\r\n\r\n", MOAT_H1_BAD_VERSION, 400},
        {"GET / HTTP/1.10\r\n\r\n", MOAT_H1_BAD_VERSION, 400},
        {"GET / HTTPS/1.1\r\n\r\n", MOAT_H1_BAD_VERSION, 400},
        {"GET /a b HTTP/1.1\r\n\r\n", MOAT_H1_BAD_VERSION, 400},
        {"GET / HTTP/2.0\r\n\r\n", MOAT_H1_VERSION_UNSUPPORTED, 505},
        {"GET / HTTP/0.9\r\n\r\n", MOAT_H1_VERSION_UNSUPPORTED, 505},
        {"GET / HTTP/3.0\r\n\r\n", MOAT_H1_VERSION_UNSUPPORTED, 505},
        {"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", MOAT_H1_VERSION_UNSUPPORTED, 505},
        {"GET / HTTP/1.1\n", MOAT_H1_BARE_LF, 400},
        {"GET / HTTP/1.1\nHost: x\n\n", MOAT_H1_BARE_LF, 400},
        {"\nGET / HTTP/1.1\r\n\r\n", MOAT_H1_BARE_LF, 400},
        {"GET /\n", MOAT_H1_BARE_LF, 400},
        {"GET\n", MOAT_H1_BARE_LF, 400},
        {"GET / HTTP/1.1\r\nHost: x\n\r\n", MOAT_H1_BARE_LF, 400},
        {"GET / HTTP/1.1\r\nHost: x\r\n\n", MOAT_H1_BARE_LF, 400},
        {"GET / HTTP/1.1\r\nHost\n", MOAT_H1_BARE_LF, 400},
        {"GET / HTTP/1.1\r\nHost : x\r\n\r\n", MOAT_H1_BAD_HEADER_NAME, 400},
        {"GET / HTTP/1.1\r\nHost\t: x\r\n\r\n", MOAT_H1_BAD_HEADER_NAME, 400},
        {"GET / HTTP/1.1\r\nHo(st: x\r\n\r\n", MOAT_H1_BAD_HEADER_NAME, 400},
        {"GET / HTTP/1.1\r\n: x\r\n\r\n", MOAT_H1_BAD_HEADER_NAME, 400},
        {"GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", MOAT_H1_BAD_HEADER_NAME, 400},
        {"GET / HTTP/1.1\r\n Host: x\r\n\r\n", MOAT_H1_BAD_HEADER_NAME, 400},
        {"GET / HTTP/1.1\r\nHost: x\r\n\rX\r\n", MOAT_H1_BAD_HEADER_NAME, 400},
        {"GET / HTTP/1.1\r\nX\xc3\xa9: 1\r\n\r\n", MOAT_H1_BAD_HEADER_NAME, 400},
        {"GET / HTTP/1.1\r\nHost: x\r\nA: a\x0b\r\n\r\n", MOAT_H1_BAD_HEADER_VALUE, 400},
        {"GET / HTTP/1.1\r\nHost: x\r\nA: a\x7f\r\n\r\n", MOAT_H1_BAD_HEADER_VALUE, 400},
        {"GET / HTTP/1.1\r\nHost: x\r\nA: a\rb\r\n\r\n", MOAT_H1_BAD_HEADER_VALUE, 400},
        {"GET / HTTP/1.1\r\nHost: x\r\nA: a\r\r\n\r\n", MOAT_H1_BAD_HEADER_VALUE, 400},
        {"GET / HTTP/1.1\r\nHost: x\r\nA: 0123456789abcdef\x1f\r\n\r\n", MOAT_H1_BAD_HEADER_VALUE,
         400},
        {"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, a b\r\n\r\n", MOAT_H1_BAD_HEADER_VALUE,
         400},
        {"GET / HTTP/1.1\r\nHost: x\r\nA: a\r\n b\r\n\r\n", MOAT_H1_OBS_FOLD, 400},
        {"GET / HTTP/1.1\r\nHost: x\r\nA: a\r\n\tb\r\n\r\n", MOAT_H1_OBS_FOLD, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", MOAT_H1_BAD_CONTENT_LENGTH,
         400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", MOAT_H1_BAD_CONTENT_LENGTH,
         400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n", MOAT_H1_BAD_CONTENT_LENGTH,
         400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\n", MOAT_H1_BAD_CONTENT_LENGTH,
         400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5 5\r\n\r\n", MOAT_H1_BAD_CONTENT_LENGTH,
         400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n", MOAT_H1_BAD_CONTENT_LENGTH, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775808\r\n\r\n",
         MOAT_H1_BAD_CONTENT_LENGTH, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
         MOAT_H1_BAD_CONTENT_LENGTH, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
         MOAT_H1_DUP_CONTENT_LENGTH, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n",
         MOAT_H1_DUP_CONTENT_LENGTH, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
         MOAT_H1_CL_AND_TE, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
         MOAT_H1_CL_AND_TE, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
         MOAT_H1_BAD_TRANSFER_ENCODING, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: "
         "chunked\r\n\r\n",
         MOAT_H1_BAD_TRANSFER_ENCODING, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked,\r\n\r\n",
         MOAT_H1_BAD_TRANSFER_ENCODING, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,chunked\r\n\r\n",
         MOAT_H1_BAD_TRANSFER_ENCODING, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n\r\n", MOAT_H1_BAD_TRANSFER_ENCODING,
         400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked;x=1\r\n\r\n",
         MOAT_H1_BAD_TRANSFER_ENCODING, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
         MOAT_H1_BAD_TRANSFER_ENCODING, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked x\r\n\r\n",
         MOAT_H1_BAD_TRANSFER_ENCODING, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
         MOAT_H1_BAD_TRANSFER_ENCODING, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
         MOAT_H1_UNKNOWN_TRANSFER_CODING, 501},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
         MOAT_H1_UNKNOWN_TRANSFER_CODING, 501},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n",
         MOAT_H1_UNKNOWN_TRANSFER_CODING, 501},
        {"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", MOAT_H1_TE_ON_HTTP10, 400},
        {"GET / HTTP/1.1\r\n\r\n", MOAT_H1_BAD_HOST, 400},
        {"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", MOAT_H1_BAD_HOST, 400},
        {"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", MOAT_H1_BAD_HOST, 400},
        {"GET / HTTP/1.1\r\nHost:\r\n\r\n", MOAT_H1_BAD_HOST, 400},
        {"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", MOAT_H1_BAD_HOST, 400},
        {"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", MOAT_H1_BAD_HOST, 400},
        {"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", MOAT_H1_BAD_HOST, 400},
        {"GET / HTTP/1.1\r\nHost: a:\r\n\r\n", MOAT_H1_BAD_HOST, 400},
        {"GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n", MOAT_H1_BAD_HOST, 400},
        {"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", MOAT_H1_BAD_HOST, 400},
        {"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", MOAT_H1_BAD_HOST, 400},
        {"GET / HTTP/1.1\r\nHost: [zz::1]\r\n\r\n", MOAT_H1_BAD_HOST, 400},
        {"GET / HTTP/1.1\r\nHost: [1:::2]\r\n\r\n", MOAT_H1_BAD_HOST, 400},
        {"GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n", MOAT_H1_BAD_HOST, 400},
        {"GET / HTTP/1.1\r\nHost: :80\r\n\r\n", MOAT_H1_BAD_HOST, 400},
        {"GET http://h/ HTTP/1.1\r\n\r\n", MOAT_H1_BAD_HOST, 400},
    };
    run_req_errs(c, MOAT_ARRAY_LEN(c));

    /* NUL does not fit in the table's C strings */
    static const char nul_value[] = "GET / HTTP/1.1\r\nHost: x\r\nA: a\0b\r\n\r\n";
    static const char nul_target[] = "GET /a\0 HTTP/1.1\r\nHost: x\r\n\r\n";
    struct moat_h1_req r;
    enum moat_h1_err e;
    assert_int_equal(preq_n(nul_value, sizeof nul_value - 1, &r, &e), MOAT_ERR);
    assert_int_equal(e, MOAT_H1_BAD_HEADER_VALUE);
    assert_int_equal(preq_n(nul_target, sizeof nul_target - 1, &r, &e), MOAT_ERR);
    assert_int_equal(e, MOAT_H1_BAD_TARGET);
}

/* The request-smuggling classics, named, so a regression reads as what it is. */
static void test_req_smuggling(void **state)
{
    static const struct errcase c[] = {
        /* CL.TE and TE.CL */
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n",
         MOAT_H1_CL_AND_TE, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
         MOAT_H1_CL_AND_TE, 400},
        /* TE.TE obfuscations */
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
         MOAT_H1_UNKNOWN_TRANSFER_CODING, 501},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\x0b\r\n\r\n",
         MOAT_H1_BAD_HEADER_VALUE, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
         MOAT_H1_BAD_HEADER_NAME, 400},
        {"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: x\r\n\r\n",
         MOAT_H1_BAD_HEADER_NAME, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
         MOAT_H1_BAD_TRANSFER_ENCODING, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n",
         MOAT_H1_OBS_FOLD, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-encoding: x\r\n\r\n",
         MOAT_H1_BAD_TRANSFER_ENCODING, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunk\r\n\r\n",
         MOAT_H1_UNKNOWN_TRANSFER_CODING, 501},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
         0 /* placeholder: a different field name is just a field */, 0},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", MOAT_H1_BAD_CONTENT_LENGTH,
         400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n", MOAT_H1_BAD_CONTENT_LENGTH,
         400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\n", MOAT_H1_BAD_CONTENT_LENGTH,
         400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\n", MOAT_H1_BAD_HEADER_NAME, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
         MOAT_H1_DUP_CONTENT_LENGTH, 400},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\nTransfer-Encoding: chunked\r\n\r\n",
         MOAT_H1_BARE_LF, 400},
        {"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", MOAT_H1_TE_ON_HTTP10,
         400},
        {"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", MOAT_H1_BAD_HOST, 400},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(c); i++) {
        if (c[i].status == 0) {
            struct moat_h1_req r;
            enum moat_h1_err e;
            assert_true(preq(c[i].in, &r, &e) > 0);
            assert_int_equal(r.flags, MOAT_H1_F_HAS_CL);
            continue;
        }
        run_req_errs(&c[i], 1);
    }
    /* OWS around "chunked" is not part of the value: accepted. */
    struct moat_h1_req r;
    enum moat_h1_err e;
    assert_true(
        preq("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:  chunked\t\r\n\r\n", &r, &e) > 0);
    assert_int_equal(r.flags, MOAT_H1_F_CHUNKED);
    assert_true(preq("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n", &r, &e) >
                0);
    assert_int_equal(r.flags, MOAT_H1_F_CHUNKED);
}

static void test_req_limits(void **state)
{
    struct moat_h1_limits save = lim;
    struct moat_h1_req r;
    enum moat_h1_err e;
    char buf[2048];

    /* request line exactly at the limit passes, one more byte is 414 */
    lim.request_line = 64;
    memset(buf, 'a', sizeof buf);
    memcpy(buf, "GET /", 5);
    memcpy(buf + 64 - 9, " HTTP/1.1\r\nHost: x\r\n\r\n", 22);
    assert_int_equal(preq_n(buf, 77, &r, &e), 77);
    memset(buf, 'a', sizeof buf);
    memcpy(buf, "GET /", 5);
    memcpy(buf + 65 - 9, " HTTP/1.1\r\nHost: x\r\n\r\n", 22);
    assert_int_equal(preq_n(buf, 78, &r, &e), MOAT_ERR);
    assert_int_equal(e, MOAT_H1_URI_TOO_LONG);
    assert_int_equal(moat_h1_err_status(e), 414);
    /* an endless line is cut off as soon as it passes the limit */
    memset(buf, 'a', sizeof buf);
    memcpy(buf, "GET /", 5);
    assert_int_equal(preq_n(buf, 65, &r, &e), MOAT_AGAIN);
    assert_int_equal(preq_n(buf, 66, &r, &e), MOAT_ERR);
    assert_int_equal(e, MOAT_H1_URI_TOO_LONG);
    /* ... and an endless method too */
    assert_int_equal(preq_n(buf + 5, 100, &r, &e), MOAT_ERR);
    assert_int_equal(e, MOAT_H1_URI_TOO_LONG);
    lim = save;

    /* head bytes: complete head at the limit passes; over it, 431 even while incomplete */
    const char *s = "GET / HTTP/1.1\r\nHost: x\r\nA: 0123456789\r\n\r\n";
    lim.head_bytes = strlen(s);
    assert_int_equal(preq(s, &r, &e), (int)strlen(s));
    lim.head_bytes = strlen(s) - 1;
    assert_int_equal(preq(s, &r, &e), MOAT_ERR);
    assert_int_equal(e, MOAT_H1_HEADERS_TOO_LARGE);
    assert_int_equal(moat_h1_err_status(e), 431);
    lim.head_bytes = 30;
    assert_int_equal(preq_n(s, 29, &r, &e), MOAT_AGAIN);
    assert_int_equal(preq_n(s, 30, &r, &e), MOAT_ERR);
    assert_int_equal(e, MOAT_H1_HEADERS_TOO_LARGE);
    lim = save;

    /* header count */
    lim.max_headers = 2;
    assert_true(preq("GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\n\r\n", &r, &e) > 0);
    assert_int_equal(preq("GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB", &r, &e), MOAT_ERR);
    assert_int_equal(e, MOAT_H1_TOO_MANY_HEADERS);
    assert_int_equal(moat_h1_err_status(e), 431);
    lim = save;
}

/* ---- responses --------------------------------------------------------------------------- */

static void test_resp_good(void **state)
{
    struct moat_h1_resp r;
    enum moat_h1_err e;
    const char *s = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\nhello";
    assert_int_equal(presp(s, &r, &e), (int)strlen(s) - 5);
    assert_int_equal(r.status, 200);
    assert_str(r.reason, "OK");
    assert_int_equal(r.minor, 1);
    assert_int_equal(r.flags, MOAT_H1_F_HAS_CL | MOAT_H1_F_CONN_CLOSE);
    assert_int_equal(r.content_length, 12);
    assert_int_equal(r.nhdrs, 2);

    assert_true(presp("HTTP/1.1 204\r\n\r\n", &r, &e) > 0);
    assert_int_equal(r.status, 204);
    assert_str(r.reason, "");
    assert_true(presp("HTTP/1.1 404 \r\n\r\n", &r, &e) > 0);
    assert_str(r.reason, "");
    assert_true(presp("HTTP/1.0 503 Service \t Unavailable\xff\r\nServer: x\r\n\r\n", &r, &e) > 0);
    assert_int_equal(r.minor, 0);
    assert_str(r.reason, "Service \t Unavailable\xff");
    assert_true(presp("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: upgrade\r\n\r\n",
                      &r, &e) > 0);
    assert_int_equal(r.flags, MOAT_H1_F_UPGRADE | MOAT_H1_F_CONN_UPGRADE);
    assert_true(presp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &r, &e) > 0);
    assert_int_equal(r.flags, MOAT_H1_F_CHUNKED);
    /* non-chunked final coding: read until close, no error */
    assert_true(presp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", &r, &e) > 0);
    assert_int_equal(r.flags, 0);
    /* Expect and Host mean nothing in a response */
    assert_true(presp("HTTP/1.1 200 OK\r\nHost: a\r\nHost: b\r\nExpect: x\r\n\r\n", &r, &e) > 0);
    assert_int_equal(r.flags, 0);
    assert_true(presp("HTTP/1.1 999 Whatever\r\n\r\n", &r, &e) > 0);

    const char *full = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\r\n";
    for (size_t i = 0; i < strlen(full); i++) {
        char *cp = malloc(i ? i : 1);
        memcpy(cp, full, i);
        r.hdrs = hdrs;
        int rc = moat_h1_parse_response(cp, i, &lim, &r, &e);
        free(cp);
        assert_int_equal(rc, MOAT_AGAIN);
    }
}

static void test_resp_errors(void **state)
{
    static const struct errcase c[] = {
        {"HTTP/1.1 099 Low\r\n\r\n", MOAT_H1_BAD_STATUS_LINE, 502},
        {"HTTP/1.1 000\r\n\r\n", MOAT_H1_BAD_STATUS_LINE, 502},
        {"HTTP/1.1 99 OK\r\n\r\n", MOAT_H1_BAD_STATUS_LINE, 502},
        {"HTTP/1.1 2000 OK\r\n\r\n", MOAT_H1_BAD_STATUS_LINE, 502},
        {"HTTP/1.1  200 OK\r\n\r\n", MOAT_H1_BAD_STATUS_LINE, 502},
        {"HTTP/1.1 abc OK\r\n\r\n", MOAT_H1_BAD_STATUS_LINE, 502},
        {"http/1.1 200 OK\r\n\r\n", MOAT_H1_BAD_STATUS_LINE, 502},
        {"\r\nHTTP/1.1 200 OK\r\n\r\n", MOAT_H1_BAD_STATUS_LINE, 502},
        {"HTTP/1.1 200 O\x01K\r\n\r\n", MOAT_H1_BAD_STATUS_LINE, 502},
        {"HTTP/1.1 200 OK\rX\r\n\r\n", MOAT_H1_BAD_STATUS_LINE, 502},
        {"HTTP/2.0 200 OK\r\n\r\n", MOAT_H1_VERSION_UNSUPPORTED, 505},
        {"HTTP/1.1 200 OK\n\r\n", MOAT_H1_BARE_LF, 400},
        {"HTTP/1.1 200\n", MOAT_H1_BARE_LF, 400},
        {"HTTP/1.1 200 OK\r\nA: b\n\r\n", MOAT_H1_BARE_LF, 400},
        {"HTTP/1.1 200 OK\r\nA : b\r\n\r\n", MOAT_H1_BAD_HEADER_NAME, 400},
        {"HTTP/1.1 200 OK\r\nA: \x01\r\n\r\n", MOAT_H1_BAD_HEADER_VALUE, 400},
        {"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n", MOAT_H1_OBS_FOLD, 400},
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
         MOAT_H1_DUP_CONTENT_LENGTH, 400},
        {"HTTP/1.1 200 OK\r\nContent-Length: 1,1\r\n\r\n", MOAT_H1_BAD_CONTENT_LENGTH, 400},
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
         MOAT_H1_CL_AND_TE, 400},
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: gzip\r\n\r\n",
         MOAT_H1_CL_AND_TE, 400},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
         MOAT_H1_BAD_TRANSFER_ENCODING, 400},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
         MOAT_H1_BAD_TRANSFER_ENCODING, 400},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
         MOAT_H1_UNKNOWN_TRANSFER_CODING, 501},
        {"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", MOAT_H1_TE_ON_HTTP10, 400},
    };
    run_resp_errs(c, MOAT_ARRAY_LEN(c));

    struct moat_h1_limits save = lim;
    struct moat_h1_resp r;
    enum moat_h1_err e;
    lim.max_headers = 1;
    assert_int_equal(presp("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n", &r, &e), MOAT_ERR);
    assert_int_equal(e, MOAT_H1_TOO_MANY_HEADERS);
    lim = save;
    lim.head_bytes = 20;
    assert_int_equal(presp("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n", &r, &e), MOAT_ERR);
    assert_int_equal(e, MOAT_H1_HEADERS_TOO_LARGE);
    lim = save;
}

/* ---- chunked ----------------------------------------------------------------------------- */

/* Feeds <in> to <st> in pieces of <step> bytes (0: all at once) until it is done, fails or
 * (keep_trailers) reaches the trailers; returns the last status, the payload in <out> and the
 * total consumed in *<used>. */
static int feed(struct moat_h1_chunked *st, const char *in, size_t n, size_t step, char *out,
                size_t *outlen, size_t *used, enum moat_h1_err *e)
{
    size_t off = 0, o = 0;
    int rc = MOAT_AGAIN;
    *e = MOAT_H1_OK;
    while (off < n || rc == MOAT_OK) {
        size_t avail = n - off;
        if (step && avail > step)
            avail = step;
        size_t c = 0;
        struct moat_str d;
        rc = moat_h1_chunked_decode(st, in + off, avail, &c, &d, e);
        assert_true(c <= avail);
        memcpy(out + o, d.ptr, d.len);
        o += d.len;
        off += c;
        if (rc == MOAT_OK)
            assert_true(d.len > 0);
        else
            assert_int_equal(d.len, 0);
        if (rc == MOAT_DONE || rc == MOAT_ERR || rc == MOAT_H1_TRAILERS)
            break;
    }
    *outlen = o;
    *used = off;
    return rc;
}

/* Decodes <in> fed in pieces of <step> bytes (0: all at once); returns the last status and
 * the payload in <out>, and the total consumed in *<used>. */
static int dechunk(const char *in, size_t n, size_t step, size_t max_trailer, char *out,
                   size_t *outlen, size_t *used, enum moat_h1_err *e)
{
    struct moat_h1_chunked st;
    moat_h1_chunked_init(&st, max_trailer);
    return feed(&st, in, n, step, out, outlen, used, e);
}

static void test_chunked_good(void **state)
{
    static const char body[] = "5\r\nhello\r\n"
                               "6;name=value;q=\"a \\\"b\\\";c\" ; flag\r\n world\r\n"
                               "A ; ext = \"v\" \t; e2\t=\ttok\r\n0123456789\r\n"
                               "000\r\n"
                               "Trailer-A: x y\r\nB:\r\n"
                               "\r\n"
                               "GET /next";
    size_t n = strlen(body);
    size_t end = n - strlen("GET /next");
    char out[256];
    for (size_t step = 0; step <= 9; step++) {
        size_t olen, used;
        enum moat_h1_err e;
        int rc = dechunk(body, n, step, 0, out, &olen, &used, &e);
        if (rc != MOAT_DONE)
            print_error("step %zu: rc %d %s\n", step, rc, moat_h1_err_name(e));
        assert_int_equal(rc, MOAT_DONE);
        assert_int_equal(used, end);
        assert_int_equal(olen, 21);
        assert_memory_equal(out, "hello world0123456789", 21);
    }
    /* calling again after DONE stays DONE and consumes nothing */
    struct moat_h1_chunked st;
    moat_h1_chunked_init(&st, 0);
    size_t c;
    struct moat_str d;
    enum moat_h1_err e;
    assert_int_equal(moat_h1_chunked_decode(&st, "0\r\n\r\nX", 6, &c, &d, &e), MOAT_DONE);
    assert_int_equal(c, 5);
    assert_int_equal(moat_h1_chunked_decode(&st, "X", 1, &c, &d, &e), MOAT_DONE);
    assert_int_equal(c, 0);
    /* zeroed struct works as well as init */
    memset(&st, 0, sizeof st);
    assert_int_equal(moat_h1_chunked_decode(&st, "", 0, &c, &d, &e), MOAT_AGAIN);
    assert_int_equal(moat_h1_chunked_decode(&st, "1\r\nZ\r\n0\r\n\r\n", 11, &c, &d, &e), MOAT_OK);
    assert_int_equal(c, 4);
    assert_str(d, "Z");
    /* big but legal sizes */
    moat_h1_chunked_init(&st, 0);
    assert_int_equal(moat_h1_chunked_decode(&st, "7fffffffffffffff\r\n", 18, &c, &d, &e),
                     MOAT_AGAIN);
    assert_int_equal(st.remaining, 0x7fffffffffffffffull);
    moat_h1_chunked_init(&st, 0);
    assert_int_equal(moat_h1_chunked_decode(&st, "0000000000000000000001\r\n", 24, &c, &d, &e),
                     MOAT_AGAIN);
    assert_int_equal(st.remaining, 1);
}

static void test_chunked_errors(void **state)
{
    static const struct errcase c[] = {
        {"0x5\r\nhello\r\n0\r\n\r\n", MOAT_H1_BAD_CHUNK, 400},
        {"5 \r\nhello\r\n0\r\n\r\n", MOAT_H1_BAD_CHUNK, 400},
        {" 5\r\nhello\r\n0\r\n\r\n", MOAT_H1_BAD_CHUNK, 400},
        {"+5\r\nhello\r\n0\r\n\r\n", MOAT_H1_BAD_CHUNK, 400},
        {"-5\r\nhello\r\n0\r\n\r\n", MOAT_H1_BAD_CHUNK, 400},
        {"\r\n", MOAT_H1_BAD_CHUNK, 400},
        {"g\r\n", MOAT_H1_BAD_CHUNK, 400},
        {"5;\r\nhello\r\n0\r\n\r\n", MOAT_H1_BAD_CHUNK, 400},
        {"5;a \r\nhello\r\n0\r\n\r\n", MOAT_H1_BAD_CHUNK, 400},
        {"5;a=\r\nhello\r\n0\r\n\r\n", MOAT_H1_BAD_CHUNK, 400},
        {"5;a=b c\r\nhello\r\n0\r\n\r\n", MOAT_H1_BAD_CHUNK, 400},
        {"5;a=\"b\r\nhello\r\n0\r\n\r\n", MOAT_H1_BAD_CHUNK, 400},
        {"5;a=\"b\"c\r\nhello\r\n0\r\n\r\n", MOAT_H1_BAD_CHUNK, 400},
        {"5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n", MOAT_H1_BAD_CHUNK, 400},
        {"5;(\r\nhello\r\n0\r\n\r\n", MOAT_H1_BAD_CHUNK, 400},
        {"5,6\r\nhello\r\n0\r\n\r\n", MOAT_H1_BAD_CHUNK, 400},
        {"5\rX", MOAT_H1_BAD_CHUNK, 400},
        {"5\r\nhelloX\r\n0\r\n\r\n", MOAT_H1_BAD_CHUNK, 400},
        {"5\r\nhello\r\r0\r\n\r\n", MOAT_H1_BAD_CHUNK, 400},
        {"5\r\nhel\r\n0\r\n\r\n", MOAT_H1_BAD_CHUNK, 400},
        {"0\r\n\rX", MOAT_H1_BAD_CHUNK, 400},
        {"5\nhello\r\n0\r\n\r\n", MOAT_H1_BARE_LF, 400},
        {"5\r\nhello\n0\r\n\r\n", MOAT_H1_BARE_LF, 400},
        {"5\r\nhello\r\n0\n\r\n", MOAT_H1_BARE_LF, 400},
        {"0\r\n\n", MOAT_H1_BARE_LF, 400},
        {"0\r\nA: b\n\r\n", MOAT_H1_BARE_LF, 400},
        {"5;a=b\nhello", MOAT_H1_BARE_LF, 400},
        {"8000000000000000\r\n", MOAT_H1_CHUNK_TOO_LARGE, 400},
        {"10000000000000000\r\n", MOAT_H1_CHUNK_TOO_LARGE, 400},
        {"ffffffffffffffffffff\r\n", MOAT_H1_CHUNK_TOO_LARGE, 400},
        {"0\r\nA : b\r\n\r\n", MOAT_H1_BAD_HEADER_NAME, 400},
        {"0\r\n: b\r\n\r\n", MOAT_H1_BAD_HEADER_NAME, 400},
        {"0\r\nA: \x7f\r\n\r\n", MOAT_H1_BAD_HEADER_VALUE, 400},
        {"0\r\nA: b\rc\r\n\r\n", MOAT_H1_BAD_HEADER_VALUE, 400},
        {"0\r\nA: b\r\n c\r\n\r\n", MOAT_H1_OBS_FOLD, 400},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(c); i++) {
        for (size_t step = 0; step <= 1; step++) {
            char out[256];
            size_t olen, used;
            enum moat_h1_err e;
            int rc = dechunk(c[i].in, strlen(c[i].in), step, 0, out, &olen, &used, &e);
            if (rc != MOAT_ERR || e != c[i].err || moat_h1_err_status(e) != c[i].status) {
                print_error("case %zu step %zu \"%s\": rc %d %s, want %s\n", i, step, c[i].in, rc,
                            moat_h1_err_name(e), moat_h1_err_name(c[i].err));
                fail();
            }
        }
    }
    /* trailer limit */
    char out[64];
    size_t olen, used;
    enum moat_h1_err e;
    const char *t = "0\r\nA: 0123456789\r\n\r\n";
    assert_int_equal(dechunk(t, strlen(t), 0, 17, out, &olen, &used, &e), MOAT_DONE);
    assert_int_equal(dechunk(t, strlen(t), 0, 16, out, &olen, &used, &e), MOAT_ERR);
    assert_int_equal(e, MOAT_H1_TRAILERS_TOO_LARGE);
    assert_int_equal(moat_h1_err_status(e), 431);
    /* found by fuzz_h1: the limit hit on the byte after an LF was reported as bare_lf in
     * one piece but trailers_too_large byte by byte */
    for (size_t step = 0; step <= 1; step++) {
        assert_int_equal(dechunk("0\r\nA: b\r\nC", 12, step, 6, out, &olen, &used, &e), MOAT_ERR);
        assert_int_equal(e, MOAT_H1_TRAILERS_TOO_LARGE);
    }
    /* size line limit */
    char big[5000];
    memset(big, '0', sizeof big);
    assert_int_equal(dechunk(big, sizeof big, 0, 0, out, &olen, &used, &e), MOAT_ERR);
    assert_int_equal(e, MOAT_H1_BAD_CHUNK);
    /* after an error the decoder stays failed */
    struct moat_h1_chunked st;
    moat_h1_chunked_init(&st, 0);
    size_t c2;
    struct moat_str d;
    assert_int_equal(moat_h1_chunked_decode(&st, "z", 1, &c2, &d, &e), MOAT_ERR);
    assert_int_equal(moat_h1_chunked_decode(&st, "0\r\n\r\n", 5, &c2, &d, &e), MOAT_ERR);
}

/* ---- chunked, keep_trailers ---------------------------------------------------------------- */

/* Like dechunk() with keep_trailers set: the payload goes to <out>; at MOAT_H1_TRAILERS the
 * input from there on is offered to moat_h1_chunked_trailers, growing by <step> bytes per
 * call (0: all at once) and never consumed before MOAT_DONE, as the proxy's pump does. The
 * section is copied to <sec>; *<used> is the total consumed. */
static int keepchunk(const char *in, size_t n, size_t step, size_t max_trailer, char *out,
                     size_t *outlen, char *sec, size_t *seclen, size_t *used, enum moat_h1_err *e)
{
    struct moat_h1_chunked st;
    moat_h1_chunked_init(&st, max_trailer);
    st.keep_trailers = true;
    size_t off;
    *seclen = 0;
    int rc = feed(&st, in, n, step, out, outlen, &off, e);
    if (rc == MOAT_H1_TRAILERS) {
        /* asked again, the decoder says the same and takes nothing */
        size_t c = 1;
        struct moat_str d;
        assert_int_equal(moat_h1_chunked_decode(&st, in + off, n - off, &c, &d, e),
                         MOAT_H1_TRAILERS);
        assert_int_equal(c, 0);
        size_t have = 0;
        for (;;) {
            have = step ? MOAT_MIN(have + step, n - off) : n - off;
            struct moat_str s;
            rc = moat_h1_chunked_trailers(&st, in + off, have, &c, &s, e);
            if (rc == MOAT_DONE) {
                assert_true(s.ptr == in + off && s.len + 2 == c && c <= have);
                memcpy(sec, s.ptr, s.len);
                *seclen = s.len;
                off += c;
                break;
            }
            assert_int_equal(c, 0);
            assert_int_equal(s.len, 0);
            if (rc == MOAT_ERR || have == n - off)
                break;
        }
    }
    *used = off;
    return rc;
}

static void test_chunked_keep_good(void **state)
{
    static const char body[] = "5\r\nhello\r\n"
                               "6;name=value\r\n world\r\n"
                               "000;x=y\r\n"
                               "Trailer-A: x y\r\nB:\r\nChecksum: \t abc \r\n"
                               "\r\n"
                               "GET /next";
    static const char want[] = "Trailer-A: x y\r\nB:\r\nChecksum: \t abc \r\n";
    size_t n = strlen(body);
    size_t end = n - strlen("GET /next");
    char out[256], sec[256];
    /* whole, in pieces and byte by byte: the same payload, section and end */
    for (size_t step = 0; step <= 9; step++) {
        size_t olen, slen, used;
        enum moat_h1_err e;
        int rc = keepchunk(body, n, step, 0, out, &olen, sec, &slen, &used, &e);
        if (rc != MOAT_DONE)
            print_error("step %zu: rc %d %s\n", step, rc, moat_h1_err_name(e));
        assert_int_equal(rc, MOAT_DONE);
        assert_int_equal(used, end); /* "GET /next" untouched */
        assert_int_equal(olen, 11);
        assert_memory_equal(out, "hello world", 11);
        assert_int_equal(slen, strlen(want));
        assert_memory_equal(sec, want, slen);
    }
    /* no trailers: an empty section, the final CRLF consumed */
    for (size_t step = 0; step <= 1; step++) {
        size_t olen, slen, used;
        enum moat_h1_err e;
        assert_int_equal(
            keepchunk("3\r\nabc\r\n0\r\n\r\nX", 14, step, 0, out, &olen, sec, &slen, &used, &e),
            MOAT_DONE);
        assert_int_equal(used, 13);
        assert_int_equal(olen, 3);
        assert_int_equal(slen, 0);
    }
    /* the state machine resumes where it stopped: what was validated is remembered */
    struct moat_h1_chunked st;
    moat_h1_chunked_init(&st, 0);
    st.keep_trailers = true;
    size_t c;
    struct moat_str d;
    enum moat_h1_err e;
    assert_int_equal(moat_h1_chunked_decode(&st, "0\r\nA: b\r\nC", 11, &c, &d, &e),
                     MOAT_H1_TRAILERS);
    assert_int_equal(c, 3);
    assert_int_equal(moat_h1_chunked_trailers(&st, "A: b\r\nC", 7, &c, &d, &e), MOAT_AGAIN);
    assert_int_equal(c, 0);
    assert_int_equal(st.trailer_bytes, 7);
    assert_int_equal(moat_h1_chunked_trailers(&st, "A: b\r\nC", 7, &c, &d, &e), MOAT_AGAIN);
    assert_int_equal(st.trailer_bytes, 7);
    assert_int_equal(moat_h1_chunked_trailers(&st, "A: b\r\nC: d\r\n\r\nGET", 17, &c, &d, &e),
                     MOAT_DONE);
    assert_int_equal(c, 14);
    assert_str(d, "A: b\r\nC: d\r\n");
    /* after DONE both calls stay DONE and take nothing */
    assert_int_equal(moat_h1_chunked_trailers(&st, "GET", 3, &c, &d, &e), MOAT_DONE);
    assert_int_equal(c, 0);
    assert_int_equal(d.len, 0);
    assert_int_equal(moat_h1_chunked_decode(&st, "GET", 3, &c, &d, &e), MOAT_DONE);
    assert_int_equal(c, 0);
    /* asked for trailers in the middle of the body: a caller's mistake, an error */
    moat_h1_chunked_init(&st, 0);
    st.keep_trailers = true;
    assert_int_equal(moat_h1_chunked_trailers(&st, "A: b\r\n\r\n", 8, &c, &d, &e), MOAT_ERR);
    assert_int_equal(e, MOAT_H1_BAD_CHUNK);
}

static void test_chunked_keep_errors(void **state)
{
    /* the trailer errors of test_chunked_errors, and the body errors still found before */
    static const struct errcase c[] = {
        {"0\r\n\n", MOAT_H1_BARE_LF, 400},
        {"0\r\nA: b\n\r\n", MOAT_H1_BARE_LF, 400},
        {"0\r\nA: b\r\n\n", MOAT_H1_BARE_LF, 400},
        {"0\r\nA: b\r\n c\r\n\r\n", MOAT_H1_OBS_FOLD, 400},
        {"0\r\nA: b\r\n\tc\r\n\r\n", MOAT_H1_OBS_FOLD, 400},
        {"0\r\n c: d\r\n\r\n", MOAT_H1_OBS_FOLD, 400},
        {"0\r\nA : b\r\n\r\n", MOAT_H1_BAD_HEADER_NAME, 400},
        {"0\r\n: b\r\n\r\n", MOAT_H1_BAD_HEADER_NAME, 400},
        {"0\r\nA\r\n\r\n", MOAT_H1_BAD_HEADER_NAME, 400},
        {"0\r\nA: \x7f\r\n\r\n", MOAT_H1_BAD_HEADER_VALUE, 400},
        {"0\r\nA: b\rc\r\n\r\n", MOAT_H1_BAD_HEADER_VALUE, 400},
        {"0\r\n\rX", MOAT_H1_BAD_CHUNK, 400},
        {"5\r\nhello\n0\r\n\r\n", MOAT_H1_BARE_LF, 400},
        {"5\r\nhel\r\n0\r\n\r\n", MOAT_H1_BAD_CHUNK, 400},
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(c); i++) {
        for (size_t step = 0; step <= 1; step++) {
            char out[256], sec[256];
            size_t olen, slen, used;
            enum moat_h1_err e;
            int rc =
                keepchunk(c[i].in, strlen(c[i].in), step, 0, out, &olen, sec, &slen, &used, &e);
            if (rc != MOAT_ERR || e != c[i].err || moat_h1_err_status(e) != c[i].status) {
                print_error("case %zu step %zu \"%s\": rc %d %s, want %s\n", i, step, c[i].in, rc,
                            moat_h1_err_name(e), moat_h1_err_name(c[i].err));
                fail();
            }
            /* the same verdict as the dropping decoder's */
            assert_int_equal(dechunk(c[i].in, strlen(c[i].in), step, 0, out, &olen, &used, &e),
                             MOAT_ERR);
            assert_int_equal(e, c[i].err);
        }
    }
    /* the limit: the section with its final CRLF, as without keep_trailers */
    const char *t = "0\r\nA: 0123456789\r\n\r\n";
    for (size_t step = 0; step <= 1; step++) {
        char out[64], sec[64];
        size_t olen, slen, used;
        enum moat_h1_err e;
        assert_int_equal(keepchunk(t, strlen(t), step, 17, out, &olen, sec, &slen, &used, &e),
                         MOAT_DONE);
        assert_int_equal(slen, 15);
        assert_int_equal(keepchunk(t, strlen(t), step, 16, out, &olen, sec, &slen, &used, &e),
                         MOAT_ERR);
        assert_int_equal(e, MOAT_H1_TRAILERS_TOO_LARGE);
        assert_int_equal(moat_h1_err_status(e), 431);
        assert_int_equal(
            keepchunk("0\r\nA: b\r\nC", 12, step, 6, out, &olen, sec, &slen, &used, &e), MOAT_ERR);
        assert_int_equal(e, MOAT_H1_TRAILERS_TOO_LARGE);
    }
    /* after an error both calls stay failed */
    struct moat_h1_chunked st;
    moat_h1_chunked_init(&st, 0);
    st.keep_trailers = true;
    size_t u;
    struct moat_str d;
    enum moat_h1_err e;
    assert_int_equal(moat_h1_chunked_decode(&st, "0\r\n", 3, &u, &d, &e), MOAT_H1_TRAILERS);
    assert_int_equal(moat_h1_chunked_trailers(&st, " x", 2, &u, &d, &e), MOAT_ERR);
    assert_int_equal(e, MOAT_H1_OBS_FOLD);
    assert_int_equal(moat_h1_chunked_trailers(&st, " x", 2, &u, &d, &e), MOAT_ERR);
    assert_int_equal(moat_h1_chunked_decode(&st, "\r\n", 2, &u, &d, &e), MOAT_ERR);
}

/* ---- helpers ----------------------------------------------------------------------------- */

static void test_err_table(void **state)
{
    for (int i = 0; i < MOAT_H1_ERR_COUNT; i++) {
        assert_non_null(moat_h1_err_name(i));
        assert_true(strlen(moat_h1_err_name(i)) > 0);
        int s = moat_h1_err_status(i);
        assert_true(s >= 200 && s <= 599);
        for (int j = 0; j < i; j++)
            assert_string_not_equal(moat_h1_err_name(i), moat_h1_err_name(j));
    }
    assert_string_equal(moat_h1_err_name(MOAT_H1_BARE_LF), "bare_lf");
    assert_string_equal(moat_h1_err_name(MOAT_H1_CL_AND_TE), "cl_and_te");
    assert_string_equal(moat_h1_err_name(MOAT_H1_ERR_COUNT), "unknown");
}

static void test_list_next(void **state)
{
    struct moat_str v = MOAT_STR(" a ,, b\t,\"x, y\" , c=\"\\\"q,\" ,");
    const char *want[] = {"a", "b", "\"x, y\"", "c=\"\\\"q,\""};
    size_t pos = 0, i = 0;
    struct moat_str el;
    while (moat_h1_list_next(v, &pos, &el)) {
        assert_true(i < MOAT_ARRAY_LEN(want));
        assert_str(el, want[i++]);
    }
    assert_int_equal(i, 4);
    pos = 0;
    assert_false(moat_h1_list_next(MOAT_STR(" , ,\t"), &pos, &el));
    pos = 0;
    assert_false(moat_h1_list_next(MOAT_STR(""), &pos, &el));
}

static void test_cookie_next(void **state)
{
    /* OWS around pairs, names and values; empty pairs; '=' inside a value; a quoted value
     * kept with its quotes; a pair without '=' is a name with an empty value. */
    struct moat_str v = MOAT_STR(" a=1;; b = two=2 ;c=\"q\";flag; =v; e=\t");
    const char *want[][2] = {{"a", "1"},   {"b", "two=2"}, {"c", "\"q\""},
                             {"flag", ""}, {"", "v"},      {"e", ""}};
    size_t pos = 0, i = 0;
    struct moat_str n, val;
    while (moat_h1_cookie_next(v, &pos, &n, &val)) {
        assert_true(i < MOAT_ARRAY_LEN(want));
        assert_str(n, want[i][0]);
        assert_str(val, want[i][1]);
        i++;
    }
    assert_int_equal(i, 6);
    assert_int_equal(pos, v.len);
    pos = 0;
    assert_false(moat_h1_cookie_next(MOAT_STR(" ; ;\t"), &pos, &n, &val));
    pos = 0;
    assert_false(moat_h1_cookie_next(MOAT_STR(""), &pos, &n, &val));
}

static void test_reason(void **state)
{
    assert_str(moat_http_reason(200), "OK");
    assert_str(moat_http_reason(404), "Not Found");
    assert_str(moat_http_reason(431), "Request Header Fields Too Large");
    assert_str(moat_http_reason(502), "Bad Gateway");
    assert_str(moat_http_reason(599), "Unknown");
    assert_str(moat_http_reason(-1), "Unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_req_browser_get),   cmocka_unit_test(test_req_values_ows),
        cmocka_unit_test(test_req_forms),         cmocka_unit_test(test_req_versions_methods),
        cmocka_unit_test(test_req_leading_crlf),  cmocka_unit_test(test_req_flags),
        cmocka_unit_test(test_req_hosts_ok),      cmocka_unit_test(test_req_pipelined),
        cmocka_unit_test(test_req_prefixes),      cmocka_unit_test(test_req_errors),
        cmocka_unit_test(test_req_smuggling),     cmocka_unit_test(test_req_limits),
        cmocka_unit_test(test_resp_good),         cmocka_unit_test(test_resp_errors),
        cmocka_unit_test(test_chunked_good),      cmocka_unit_test(test_chunked_errors),
        cmocka_unit_test(test_chunked_keep_good), cmocka_unit_test(test_chunked_keep_errors),
        cmocka_unit_test(test_err_table),         cmocka_unit_test(test_list_next),
        cmocka_unit_test(test_cookie_next),       cmocka_unit_test(test_reason),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
