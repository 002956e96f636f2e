/* test_log.c: unit tests for JSON escaping, the buffered access-log writer and the error log
 * (src/core/log.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"

/* --- moat_json_escape ---------------------------------------------------------------------- */

static void check_escape(const char *in, size_t inlen, const char *want)
{
    char out[512];
    memset(out, '#', sizeof out);
    size_t n = moat_json_escape(out, sizeof out, moat_str_make(in, inlen));
    if (n != strlen(want) || memcmp(out, want, n) != 0) {
        print_error("escape: got \"%.*s\" (%zu), want \"%s\"\n", (int)n, out, n, want);
        fail();
    }
    assert_int_equal(out[n], '#'); /* nothing written past what it reports */
}
#define ESC(lit, want) check_escape((lit), sizeof(lit) - 1, (want))

static void test_escape_plain(void **state)
{
    (void)state;
    ESC("", "");
    ESC("GET", "GET");
    ESC("/a/b?c=d&e=f%20g", "/a/b?c=d&e=f%20g");
    ESC("~ !#$'()*+,-./:;<=>?@[]^_`{|}", "~ !#$'()*+,-./:;<=>?@[]^_`{|}");
}

static void test_escape_quote_and_backslash(void **state)
{
    (void)state;
    ESC("\"", "\\\"");
    ESC("\\", "\\\\");
    ESC("a\"b\\c", "a\\\"b\\\\c");
    ESC("\"\"\\\\", "\\\"\\\"\\\\\\\\");
}

static void test_escape_control_bytes(void **state)
{
    (void)state;
    /* Every control byte as \u00XX (lowercase hex), including those JSON has short forms
     * for: one rule, and a log line can never be split by a raw newline. */
    ESC("\n", "\\u000a");
    ESC("\r\n", "\\u000d\\u000a");
    ESC("\t", "\\u0009");
    ESC("\x01\x1f", "\\u0001\\u001f");
    ESC("\x7f", "\\u007f"); /* DEL too */
    char nul[3] = {'a', 0, 'b'};
    check_escape(nul, 3, "a\\u0000b"); /* NUL inside the span is data, not an end */
}

static void test_escape_high_bytes(void **state)
{
    (void)state;
    /* Bytes >= 0x80 are escaped one by one as \u00XX: the line stays valid JSON whatever the
     * peer sent (invalid UTF-8 included), at the price of UTF-8 text reading back as Latin-1
     * code points ("é" = C3 A9 becomes "\u00c3\u00a9"). */
    ESC("\x80", "\\u0080");
    ESC("\xff", "\\u00ff");
    ESC("\xc3\xa9", "\\u00c3\\u00a9");
    ESC("a\xfe"
        "b",
        "a\\u00feb");
}

static void test_escape_every_byte(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        char in = (char)c, out[8];
        size_t n = moat_json_escape(out, sizeof out, moat_str_make(&in, 1));
        if (c == '"' || c == '\\') {
            assert_int_equal(n, 2);
            assert_int_equal(out[0], '\\');
            assert_int_equal(out[1], c);
        } else if (c < 0x20 || c >= 0x7f) {
            char want[7];
            snprintf(want, sizeof want, "\\u%04x", c);
            assert_int_equal(n, 6);
            assert_memory_equal(out, want, 6);
        } else {
            assert_int_equal(n, 1);
            assert_int_equal(out[0], c);
        }
    }
}

static void test_escape_truncates_at_room(void **state)
{
    (void)state;
    char out[16];
    memset(out, '#', sizeof out);
    /* Plain bytes: exactly <room> written and reported. */
    size_t n = moat_json_escape(out, 5, MOAT_STR("abcdefgh"));
    assert_int_equal(n, 5);
    assert_memory_equal(out, "abcde", 5);
    assert_int_equal(out[5], '#');
    /* Exactly fitting is not truncation. */
    memset(out, '#', sizeof out);
    n = moat_json_escape(out, 8, MOAT_STR("abcdefgh"));
    assert_int_equal(n, 8);
    assert_int_equal(out[8], '#');
    n = moat_json_escape(out, 6, MOAT_STR("\n"));
    assert_int_equal(n, 6);
    /* Room 0: nothing written. */
    memset(out, '#', sizeof out);
    n = moat_json_escape(out, 0, MOAT_STR("abc"));
    assert_int_equal(n, 0);
    assert_int_equal(out[0], '#');
    n = moat_json_escape(out, 0, MOAT_STR(""));
    assert_int_equal(n, 0);
}

static void test_escape_never_splits_an_escape(void **state)
{
    (void)state;
    /* An escape that does not fit is left out whole, never cut in half (a half "\u00" would
     * break the JSON line), nothing is written past the room, and the count returned is
     * exactly what was written. */
    char out[16];
    for (size_t room = 0; room <= 8; room++) {
        memset(out, '#', sizeof out);
        size_t n = moat_json_escape(out, room, MOAT_STR("ab\n"));
        assert_int_equal(n, room >= 8 ? 8 : MOAT_MIN(room, (size_t)2));
        assert_int_equal(out[room], '#');
        /* Where the escape did not fit, its first byte must not be there. */
        if (room < 8 && room >= 2)
            assert_int_not_equal(out[2], '\\');
        if (room >= 2)
            assert_memory_equal(out, "ab", 2);
    }
    for (size_t room = 0; room <= 3; room++) {
        memset(out, '#', sizeof out);
        moat_json_escape(out, room, MOAT_STR("a\""));
        assert_int_equal(out[room], '#');
        if (room == 2)
            assert_int_equal(out[1], '#'); /* "\\\"" needs 2: not started */
    }
}

/* --- the access-log writer --------------------------------------------------------------- */

static char tmpdir[64];

static int setup_dir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/moat-test-log-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_dir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    size_t k;
    while (buf && (k = fread(buf + n, 1, cap - n, f)) > 0) {
        n += k;
        if (n == cap) {
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                free(buf);
                buf = NULL;
            }
            buf = nb;
        }
    }
    fclose(f);
    if (buf)
        buf[n] = 0;
    *len = n;
    return buf;
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

static void test_alog_off(void **state)
{
    (void)state;
    struct moat_alog a;
    assert_int_equal(moat_alog_open(&a, NULL), MOAT_OK);
    assert_int_equal(a.fd, -1);
    assert_null(moat_alog_reserve(&a, 100));
    moat_alog_close(&a);
    assert_int_equal(moat_alog_open(&a, "off"), MOAT_OK);
    assert_int_equal(a.fd, -1);
    assert_null(moat_alog_reserve(&a, 100));
    moat_alog_flush(&a); /* harmless when off */
    moat_alog_close(&a);
}

static void test_alog_open_fails_cleanly(void **state)
{
    (void)state;
    struct moat_alog a;
    assert_int_equal(moat_alog_open(&a, "/nonexistent-dir/x/access.log"), MOAT_ERR);
    assert_int_equal(a.fd, -1);
    assert_null(a.buf);
    assert_null(moat_alog_reserve(&a, 10));
    moat_alog_close(&a);
}

static void test_alog_reserve_commit_flush(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/a.log", tmpdir);
    struct moat_alog a;
    assert_int_equal(moat_alog_open(&a, path), MOAT_OK);
    assert_true(a.fd >= 0);
    char *p = moat_alog_reserve(&a, 256);
    assert_non_null(p);
    memcpy(p, "{\"n\":1}\n", 8);
    moat_alog_commit(&a, 8);
    p = moat_alog_reserve(&a, 256);
    assert_non_null(p);
    memcpy(p, "{\"n\":2}\n", 8);
    moat_alog_commit(&a, 8);
    /* Buffered: no syscall per line, nothing in the file until a flush. */
    assert_int_equal(file_size(path), 0);
    moat_alog_flush(&a);
    assert_int_equal(a.len, 0);
    size_t len;
    char *got = read_file(path, &len);
    assert_non_null(got);
    assert_string_equal(got, "{\"n\":1}\n{\"n\":2}\n");
    free(got);
    /* A reservation that is not committed writes nothing. */
    p = moat_alog_reserve(&a, 256);
    memcpy(p, "junk", 4);
    moat_alog_flush(&a);
    assert_int_equal(file_size(path), 16);
    /* More than the whole buffer can never be reserved. */
    assert_null(moat_alog_reserve(&a, a.cap + 1));
    /* Close flushes what is pending. */
    p = moat_alog_reserve(&a, 16);
    memcpy(p, "last\n", 5);
    moat_alog_commit(&a, 5);
    moat_alog_close(&a);
    assert_int_equal(a.fd, -1);
    assert_null(a.buf);
    got = read_file(path, &len);
    assert_string_equal(got, "{\"n\":1}\n{\"n\":2}\nlast\n");
    free(got);
}

static void test_alog_appends_to_existing(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/append.log", tmpdir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "old\n", 4), 4);
    close(fd);
    struct moat_alog a;
    assert_int_equal(moat_alog_open(&a, path), MOAT_OK);
    char *p = moat_alog_reserve(&a, 8);
    memcpy(p, "new\n", 4);
    moat_alog_commit(&a, 4);
    moat_alog_close(&a);
    size_t len;
    char *got = read_file(path, &len);
    assert_string_equal(got, "old\nnew\n");
    free(got);
}

/* Writes <n> numbered lines of varying length through <a>; after every reservation that
 * caused a flush the file must end on a line boundary. */
static void write_lines(struct moat_alog *a, const char *path, int who, int n)
{
    for (int i = 0; i < n; i++) {
        char *p = moat_alog_reserve(a, 2048);
        if (!p)
            abort();
        int pad = (i * 131 + who * 17) % 1500;
        int k = snprintf(p, 2048, "{\"w\":%d,\"i\":%d,\"pad\":\"", who, i);
        memset(p + k, 'a' + (char)(i % 26), (size_t)pad);
        k += pad;
        k += snprintf(p + k, 2048 - (size_t)k, "\"}\n");
        moat_alog_commit(a, (size_t)k);
        if (path && a->len == (size_t)k && i > 0) {
            /* The reservation just flushed: what is in the file is whole lines. */
            size_t len;
            char *got = read_file(path, &len);
            if (!got || len == 0 || got[len - 1] != '\n')
                abort();
            free(got);
        }
    }
}

static void check_lines(const char *path, int writers, int per_writer)
{
    size_t len;
    char *got = read_file(path, &len);
    assert_non_null(got);
    int *next = calloc((size_t)writers, sizeof *next);
    int lines = 0;
    char *line = got;
    while (line < got + len) {
        char *nl = memchr(line, '\n', (size_t)(got + len - line));
        assert_non_null(nl); /* the file ends with a whole line */
        int w = -1, i = -1, off = 0;
        assert_int_equal(sscanf(line, "{\"w\":%d,\"i\":%d,\"pad\":\"%n", &w, &i, &off), 2);
        assert_true(w >= 0 && w < writers);
        assert_int_equal(i, next[w]); /* each writer's lines in order, none lost or torn */
        next[w]++;
        int pad = (i * 131 + w * 17) % 1500;
        for (int k = 0; k < pad; k++)
            assert_int_equal(line[off + k], 'a' + (char)(i % 26));
        assert_memory_equal(line + off + pad, "\"}", 2);
        assert_ptr_equal(line + off + pad + 2, nl);
        lines++;
        line = nl + 1;
    }
    assert_int_equal(lines, writers * per_writer);
    free(next);
    free(got);
}

static void test_alog_flushes_whole_lines_when_full(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/full.log", tmpdir);
    struct moat_alog a;
    assert_int_equal(moat_alog_open(&a, path), MOAT_OK);
    write_lines(&a, path, 0, 500); /* ~400 KB: several buffer-full flushes */
    assert_true(file_size(path) > 0);
    moat_alog_close(&a);
    check_lines(path, 1, 500);
}

struct writer_arg {
    const char *path;
    int who;
};

static void *writer(void *arg)
{
    struct writer_arg *wa = arg;
    struct moat_alog a;
    if (moat_alog_open(&a, wa->path) != MOAT_OK)
        abort();
    write_lines(&a, NULL, wa->who, 3000);
    moat_alog_close(&a);
    return NULL;
}

static void test_alog_threads_share_a_file(void **state)
{
    (void)state;
    /* One writer per worker thread, one file: O_APPEND and one write(2) per batch of whole
     * lines keep lines from interleaving. */
    char path[128];
    snprintf(path, sizeof path, "%s/shared.log", tmpdir);
    enum { W = 4 };
    pthread_t ts[W];
    struct writer_arg args[W];
    for (int i = 0; i < W; i++) {
        args[i] = (struct writer_arg){path, i};
        assert_int_equal(pthread_create(&ts[i], NULL, writer, &args[i]), 0);
    }
    for (int i = 0; i < W; i++)
        assert_int_equal(pthread_join(ts[i], NULL), 0);
    check_lines(path, W, 3000);
}

/* --- the error log --------------------------------------------------------------------------- */

static void test_error_log_lines_and_level(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/error.log", tmpdir);
    assert_int_equal(moat_log_open(path, MOAT_L_INFO), MOAT_OK);
    moat_log_debug("hidden %d", 1);
    moat_log_info("hello %s", "world");
    moat_log_warn("careful");
    moat_log_set_level(MOAT_L_ERROR);
    moat_log_warn("hidden too");
    moat_log_error("bad %d", 42);
    /* A message longer than the line buffer is cut, still one line ending in a newline. */
    char big[4096];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    moat_log_error("%s", big);
    assert_int_equal(moat_log_open("stderr", MOAT_L_INFO), MOAT_OK);

    size_t len;
    char *got = read_file(path, &len);
    assert_non_null(got);
    assert_null(strstr(got, "hidden"));
    const char *want[] = {"info hello world", "warn careful", "error bad 42", "error xxx"};
    char *line = got;
    for (size_t i = 0; i < MOAT_ARRAY_LEN(want); i++) {
        char *nl = strchr(line, '\n');
        assert_non_null(nl);
        /* "YYYY-MM-DDTHH:MM:SS.mmmZ " then the level and the message. */
        assert_true(nl - line > 25);
        assert_int_equal(line[4], '-');
        assert_int_equal(line[10], 'T');
        assert_int_equal(line[23], 'Z');
        assert_int_equal(line[24], ' ');
        assert_memory_equal(line + 25, want[i], strlen(want[i]));
        if (i == 3)
            assert_true(nl - line < 2048);
        line = nl + 1;
    }
    assert_int_equal(*line, 0);
    free(got);
}

int main(void)
{
    const struct CMUnitTest escape[] = {
        cmocka_unit_test(test_escape_plain),
        cmocka_unit_test(test_escape_quote_and_backslash),
        cmocka_unit_test(test_escape_control_bytes),
        cmocka_unit_test(test_escape_high_bytes),
        cmocka_unit_test(test_escape_every_byte),
        cmocka_unit_test(test_escape_truncates_at_room),
        cmocka_unit_test(test_escape_never_splits_an_escape),
    };
    const struct CMUnitTest files[] = {
        cmocka_unit_test(test_alog_off),
        cmocka_unit_test(test_alog_open_fails_cleanly),
        cmocka_unit_test(test_alog_reserve_commit_flush),
        cmocka_unit_test(test_alog_appends_to_existing),
        cmocka_unit_test(test_alog_flushes_whole_lines_when_full),
        cmocka_unit_test(test_alog_threads_share_a_file),
        cmocka_unit_test(test_error_log_lines_and_level),
    };
    int rc = cmocka_run_group_tests_name("json_escape", escape, NULL, NULL);
    rc |= cmocka_run_group_tests_name("logs", files, setup_dir, teardown_dir);
    return rc;
}
