/* fuzz_dash.c: the dashboard's two parsers of peer input, the Cookie field (the session
 * cookie's value) and the login form (application/x-www-form-urlencoded), must accept or
 * refuse anything without reading or writing out of bounds, and what they return must lie
 * inside the input (the cookie) or fit the buffer with its NUL (the form). */
#define _GNU_SOURCE 1
#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "admin/dash.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 16 * 1024)
        return 0;
    struct moat_str in = moat_str_make((const char *)data, size);
    struct moat_str v;
    if (moat_dash_cookie_value(in, &v)) {
        assert(v.ptr >= in.ptr && v.ptr + v.len <= in.ptr + in.len);
        assert(v.ptr - in.ptr >= (ptrdiff_t)strlen("moat_admin="));
        assert(!memcmp(v.ptr - strlen("moat_admin="), "moat_admin=", strlen("moat_admin=")));
        assert(!memchr(v.ptr, ';', v.len));
    }
    char out[64];
    memset(out, 'x', sizeof out);
    if (moat_dash_form_field(in, "token", out, sizeof out)) {
        size_t n = strnlen(out, sizeof out);
        assert(n < sizeof out);
        assert(n <= size);
    }
    return 0;
}
