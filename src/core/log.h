/* log.h: the error log (levelled lines) and the buffered JSON-lines access log writer. */
#ifndef MOAT_CORE_LOG_H
#define MOAT_CORE_LOG_H

#include <stdarg.h>

#include "core/common.h"

enum { MOAT_L_DEBUG, MOAT_L_INFO, MOAT_L_WARN, MOAT_L_ERROR };

/* Opens the error log: "stderr" or a path (appended). Thread-safe to call moat_log after.
 * Returns MOAT_OK or MOAT_ERR. Calling it again swaps the destination (reload). */
int moat_log_open(const char *dest, int level);
void moat_log_set_level(int level);
/* Writes one line "TIME LEVEL message" with a single write(2). */
void moat_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define moat_log_debug(...) moat_log(MOAT_L_DEBUG, __VA_ARGS__)
#define moat_log_info(...)  moat_log(MOAT_L_INFO, __VA_ARGS__)
#define moat_log_warn(...)  moat_log(MOAT_L_WARN, __VA_ARGS__)
#define moat_log_error(...) moat_log(MOAT_L_ERROR, __VA_ARGS__)

/* A per-thread buffered appender for the access log. Lines are gathered and written with one
 * write(2) when the buffer is nearly full or on flush (the worker flushes every 100 ms), so a
 * request costs no syscall for logging. */
struct moat_alog {
    int fd; /* -1 = off */
    char *buf;
    size_t len, cap;
};

/* Opens <dest> ("stderr", "stdout", a path; NULL/"off" disables). MOAT_OK or MOAT_ERR. */
int moat_alog_open(struct moat_alog *a, const char *dest);
void moat_alog_close(struct moat_alog *a);
/* Room for one line of at most <max> bytes; write into it then call moat_alog_commit. NULL
 * if logging is off. */
char *moat_alog_reserve(struct moat_alog *a, size_t max);
void moat_alog_commit(struct moat_alog *a, size_t n);
void moat_alog_flush(struct moat_alog *a);

/* Appends <s> JSON-escaped (without quotes) to <out> of room <room>; returns the bytes
 * written. When the room runs out the rest is left out, never half an escape. */
size_t moat_json_escape(char *out, size_t room, struct moat_str s);

#endif
