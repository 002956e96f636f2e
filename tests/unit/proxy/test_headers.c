/* test_headers.c: unit tests for the forwarded trailer sections (src/proxy/headers.c,
 * moat_fwd_trailers): which fields are left out, and the room bound. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#include "proxy/proxy-t.h"

static size_t fwd(const char *section, char *out, size_t room)
{
    return moat_fwd_trailers(moat_str_make(section, strlen(section)), out, room);
}

static void test_trailers_filtered(void **state)
{
    (void)state;
    /* what RFC 9110 6.5.1 keeps out of trailers, and moat's own forwarding fields, in any
     * case; everything else, empty values and odd spacing included, goes through as sent */
    static const char in[] = "X-Checksum: abc\r\n"
                             "Content-Length: 5\r\ncontent-length:5\r\nTRANSFER-ENCODING: x\r\n"
                             "Host: x\r\nTrailer: a\r\nConnection: close\r\nKeep-Alive: 1\r\n"
                             "Proxy-Connection: x\r\nTE: trailers\r\nUpgrade: h2c\r\n"
                             "Content-Type: text/x\r\nContent-Encoding: gzip\r\n"
                             "Content-Range: bytes 0-1/2\r\nCache-Control: no-store\r\n"
                             "Expect: 100-continue\r\nRange: bytes=0-\r\n"
                             "Authorization: Basic eDp5\r\nSet-Cookie: a=b\r\nCookie: c=d\r\n"
                             "X-Forwarded-For: 1.2.3.4\r\nVia: 1.1 evil\r\n"
                             "Server-Timing: db;dur=53\r\n"
                             "X-Empty:\r\n"
                             "X-Spaced: \t v \t\r\n"
                             "Content-Lengthy: 1\r\n";
    static const char want[] = "X-Checksum: abc\r\nServer-Timing: db;dur=53\r\nX-Empty:\r\n"
                               "X-Spaced: \t v \t\r\nContent-Lengthy: 1\r\n";
    char out[1024];
    size_t n = fwd(in, out, sizeof out);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(out, want, n);
    /* nothing allowed, or nothing at all: nothing */
    assert_int_equal(fwd("Host: a\r\nTE: b\r\n", out, sizeof out), 0);
    assert_int_equal(fwd("", out, sizeof out), 0);
}

static void test_trailers_room(void **state)
{
    (void)state;
    /* a line that does not fit is left out whole, a later one that fits still goes */
    char out[32];
    memset(out, '#', sizeof out);
    size_t n = fwd("A: 1\r\nB: 0123456789abcdef\r\nC: 2\r\n", out, 12);
    assert_int_equal(n, 12);
    assert_memory_equal(out, "A: 1\r\nC: 2\r\n", 12);
    assert_int_equal(out[12], '#');
    assert_int_equal(fwd("A: 1\r\n", out, 5), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trailers_filtered),
        cmocka_unit_test(test_trailers_room),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
