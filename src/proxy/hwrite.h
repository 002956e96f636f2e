/* hwrite.h: writing an HTTP/1 head into a bounded buffer: bounded appends, and copying
 * the kept field lines of a parsed head in runs (internal to src/proxy/). */
#ifndef MOAT_PROXY_HWRITE_H
#define MOAT_PROXY_HWRITE_H

#include "http/h1.h"

struct out {
    char *p;
    size_t n, cap;
    bool overflow; /* something did not fit: the head is refused whole */
};

static inline void put(struct out *o, const char *s, size_t n)
{
    if (n == 0)
        return;
    if (moat_unlikely(o->n + n > o->cap)) {
        o->overflow = true;
        return;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
}
#define PUTL(o, lit) put((o), (lit), sizeof(lit) - 1)
static inline void puts_(struct out *o, struct moat_str s)
{
    put(o, s.ptr, s.len);
}

static inline void put_u64(struct out *o, uint64_t v)
{
    char tmp[24];
    int i = (int)sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(o, tmp + i, sizeof tmp - (size_t)i);
}

static inline void put_field(struct out *o, const struct moat_hdr *h)
{
    puts_(o, h->name);
    PUTL(o, ": ");
    puts_(o, h->value);
    PUTL(o, "\r\n");
}

/* Header lines kept unchanged are copied in runs when the fields lie one after the other as
 * HTTP/1 lines (a request head's copy, the origin's response head, a stored head block):
 * consecutive kept lines are one contiguous span, copied with one memcpy instead of four
 * small copies per field. A run ends at a field moat drops or rewrites. */
struct run {
    const char *start, *end;
};

/* End of the line holding <h> (just after its LF): validated by the parser, so only optional
 * whitespace, CR and LF follow the value. */
static inline const char *line_end(const struct moat_hdr *h)
{
    const char *p = h->value.len ? h->value.ptr + h->value.len : h->name.ptr + h->name.len + 1;
    while (*p != '\n')
        p++;
    return p + 1;
}

/* Adds <h> to the current run (<h1>: the fields are HTTP/1 lines; otherwise <h> is written
 * at once, field by field). */
static inline void run_add(struct run *rn, struct out *o, const struct moat_hdr *h, bool h1)
{
    if (!h1) {
        put_field(o, h);
        return;
    }
    const char *e = line_end(h);
    if (rn->start && rn->end == h->name.ptr) {
        rn->end = e;
        return;
    }
    if (rn->start)
        put(o, rn->start, (size_t)(rn->end - rn->start));
    rn->start = h->name.ptr;
    rn->end = e;
}

static inline void run_flush(struct run *rn, struct out *o)
{
    if (rn->start)
        put(o, rn->start, (size_t)(rn->end - rn->start));
    rn->start = rn->end = NULL;
}

#endif
