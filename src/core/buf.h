/* buf.h: byte buffers with a read and a write position, recycled through per-thread lists. */
#ifndef MOAT_CORE_BUF_H
#define MOAT_CORE_BUF_H

#include <stdint.h>

#include "core/common.h"

struct moat_buf {
    char *base; /* NULL until moat_buf_get */
    uint32_t cap;
    uint32_t rpos; /* next byte to consume */
    uint32_t wpos; /* next byte to fill */
};

/* Gives <b> storage of at least <cap> bytes (up to 2 KiB: from mcache.c's size classes, and
 * b->cap may be more than asked; larger: from this thread's free list when it has one of
 * that size). Returns MOAT_OK or MOAT_ERR (out of memory; <b> stays empty). */
int moat_buf_get(struct moat_buf *b, uint32_t cap);
/* Gives the empty <b> storage of <cap> bytes instead of what it has. Returns MOAT_OK, or
 * MOAT_ERR when memory runs out (then <b> keeps its storage). */
int moat_buf_swap_empty(struct moat_buf *b, uint32_t cap);
/* Returns <b>'s storage to this thread's free list (bounded) and clears <b>. */
void moat_buf_put(struct moat_buf *b);
/* Frees this thread's cached buffers (at thread exit). */
void moat_buf_thread_cleanup(void);

static inline uint32_t moat_buf_len(const struct moat_buf *b)
{
    return b->wpos - b->rpos;
}
static inline uint32_t moat_buf_room(const struct moat_buf *b)
{
    return b->cap - b->wpos;
}
static inline char *moat_buf_rptr(const struct moat_buf *b)
{
    return b->base + b->rpos;
}
static inline char *moat_buf_wptr(const struct moat_buf *b)
{
    return b->base + b->wpos;
}
static inline void moat_buf_consume(struct moat_buf *b, uint32_t n)
{
    b->rpos += n;
    if (b->rpos == b->wpos)
        b->rpos = b->wpos = 0;
}
/* Moves unread bytes to the start so the room at the end is as large as it can be. */
static inline void moat_buf_compact(struct moat_buf *b)
{
    if (b->rpos == 0)
        return;
    uint32_t n = b->wpos - b->rpos;
    if (n)
        memmove(b->base, b->base + b->rpos, n);
    b->rpos = 0;
    b->wpos = n;
}
/* Appends <n> bytes; the caller has checked the room. */
static inline void moat_buf_append(struct moat_buf *b, const void *p, uint32_t n)
{
    memcpy(b->base + b->wpos, p, n);
    b->wpos += n;
}

#endif
