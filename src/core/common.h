/* common.h: status codes, the wire string type, small helpers every moat file uses. */
#ifndef MOAT_CORE_COMMON_H
#define MOAT_CORE_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One status set for the whole project (nginx's, trimmed). Byte parsers return >0 for bytes
 * consumed, MOAT_AGAIN for incomplete input, or an error. */
#define MOAT_OK       0
#define MOAT_ERR      (-1)
#define MOAT_AGAIN    (-2) /* needs input or is blocked; resumes later */
#define MOAT_DONE     (-3) /* a response exists / the thing is complete */
#define MOAT_DECLINED (-4) /* not mine, next please */

#define moat_likely(x)                    __builtin_expect(!!(x), 1)
#define moat_unlikely(x)                  __builtin_expect(!!(x), 0)
#define MOAT_MIN(a, b)                    ((a) < (b) ? (a) : (b))
#define MOAT_MAX(a, b)                    ((a) > (b) ? (a) : (b))
#define MOAT_ARRAY_LEN(a)                 (sizeof(a) / sizeof((a)[0]))
#define MOAT_CONTAINER_OF(p, type, field) ((type *)((char *)(p)-offsetof(type, field)))

/* Wire data: pointer and length, passed by value, never relies on NUL. */
struct moat_str {
    const char *ptr;
    size_t len;
};

#define MOAT_STR(lit) ((struct moat_str){(lit), sizeof(lit) - 1})
#define MOAT_STR_NULL ((struct moat_str){NULL, 0})

static inline struct moat_str moat_str_make(const char *p, size_t n)
{
    return (struct moat_str){p, n};
}

static inline bool moat_str_eq(struct moat_str a, struct moat_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

/* <s> moved along with the bytes it points into: if it points into <from,n>, the same place in
 * the copy at <to>; otherwise (a static string) unchanged. */
static inline struct moat_str moat_str_rebase(struct moat_str s, const char *from, size_t n,
                                              const char *to)
{
    if (s.ptr >= from && s.ptr < from + n)
        s.ptr = to + (s.ptr - from);
    return s;
}

/* ASCII case-insensitive comparison (header names, tokens). */
bool moat_str_ieq(struct moat_str a, struct moat_str b);

/* A growable text buffer for reports (metrics, status): moat_sbuf_printf appends, doubling
 * the allocation as needed (from 8 KiB when <p> is NULL); a failed allocation sets <oom> and
 * every later append is dropped. */
struct moat_sbuf {
    char *p;
    size_t n, cap;
    bool oom;
};
void moat_sbuf_printf(struct moat_sbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* ASCII case-insensitive comparison of <a> with the literal lowercase <lc>. Inline: it runs
 * for most header names of every request and response. */
static inline bool moat_str_ieq_lc(struct moat_str a, const char *lc, size_t lclen)
{
    if (a.len != lclen)
        return false;
    for (size_t i = 0; i < lclen; i++) {
        unsigned char c = (unsigned char)a.ptr[i];
        if ((unsigned char)(c | ((unsigned)(c - 'A') < 26u ? 0x20 : 0)) != (unsigned char)lc[i])
            return false;
    }
    return true;
}
#define MOAT_STR_IEQ_LIT(s, lit) moat_str_ieq_lc((s), (lit), sizeof(lit) - 1)

/* Poisoned: unbounded string functions have no place here. (System headers that declare them
 * are included above, so only our own code can trip this.) */
#pragma GCC poison strcpy strcat sprintf strtok gets

#endif
