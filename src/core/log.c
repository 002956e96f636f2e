/* log.c: error log and access log writers. */
#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static atomic_int err_fd = 2;
static atomic_int err_level = MOAT_L_INFO;

static int open_dest(const char *dest)
{
    if (!dest || !strcmp(dest, "stderr"))
        return dup(2);
    if (!strcmp(dest, "stdout"))
        return dup(1);
    return open(dest, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

int moat_log_open(const char *dest, int level)
{
    int fd = open_dest(dest);
    if (fd < 0)
        return MOAT_ERR;
    int old = atomic_exchange(&err_fd, fd);
    if (old > 2)
        close(old); /* a racing writer may lose one line to EBADF; acceptable at reload */
    atomic_store(&err_level, level);
    return MOAT_OK;
}

void moat_log_set_level(int level)
{
    atomic_store(&err_level, level);
}

void moat_log(int level, const char *fmt, ...)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    if (level < atomic_load_explicit(&err_level, memory_order_relaxed))
        return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, names[level & 3]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : MOAT_MIN((size_t)m, sizeof line - (size_t)n - 2));
    line[len++] = '\n';
    ssize_t w = write(atomic_load_explicit(&err_fd, memory_order_relaxed), line, len);
    (void)w;
}

int moat_alog_open(struct moat_alog *a, const char *dest)
{
    a->fd = -1;
    a->buf = NULL;
    a->len = a->cap = 0;
    if (!dest || !strcmp(dest, "off"))
        return MOAT_OK;
    a->fd = open_dest(dest);
    if (a->fd < 0)
        return MOAT_ERR;
    a->cap = 64 * 1024;
    a->buf = malloc(a->cap);
    if (!a->buf) {
        close(a->fd);
        a->fd = -1;
        return MOAT_ERR;
    }
    return MOAT_OK;
}

void moat_alog_flush(struct moat_alog *a)
{
    size_t off = 0;
    while (off < a->len) {
        ssize_t w = write(a->fd, a->buf + off, a->len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break; /* a full disk loses log lines, never requests */
        off += (size_t)w;
    }
    a->len = 0;
}

void moat_alog_close(struct moat_alog *a)
{
    if (a->fd >= 0) {
        moat_alog_flush(a);
        close(a->fd);
    }
    free(a->buf);
    a->fd = -1;
    a->buf = NULL;
    a->len = a->cap = 0;
}

char *moat_alog_reserve(struct moat_alog *a, size_t max)
{
    if (a->fd < 0)
        return NULL;
    if (a->cap - a->len < max)
        moat_alog_flush(a);
    if (a->cap < max)
        return NULL;
    return a->buf + a->len;
}

void moat_alog_commit(struct moat_alog *a, size_t n)
{
    a->len += n;
}

size_t moat_json_escape(char *out, size_t room, struct moat_str s)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c == '"' || c == '\\') {
            if (o + 2 > room)
                return o; /* what was written: an escape that does not fit is left out */
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c >= 0x7f) {
            if (o + 6 > room)
                return o; /* what was written: an escape that does not fit is left out */
            memcpy(out + o, "\\u00", 4);
            out[o + 4] = hex[c >> 4];
            out[o + 5] = hex[c & 15];
            o += 6;
        } else {
            if (o + 1 > room)
                return o; /* what was written: an escape that does not fit is left out */
            out[o++] = (char)c;
        }
    }
    return o;
}
