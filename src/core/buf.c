/* buf.c: per-thread free lists of buffers. Buffers of the three common sizes (heads, and the
 * larger body buffers) are kept (bounded) so the request path never calls malloc in steady
 * state. */
#include "core/buf.h"

#include <stdlib.h>

#include "core/mcache.h"

#define FREE_MAX 256
#define NLISTS   3
/* Large (body) buffers are kept fewer: 32 x 64 KiB is 2 MiB per thread at most. */
/* Small buffers (an HTTP/2 request's head: a few hundred bytes, one per stream) come from the
 * size-class caches of mcache.c, sized to what they hold: the lists here keep three sizes. */
#define SMALL          2048u
#define FREE_MAX_LARGE 32
#define LARGE          (32u * 1024)

struct freelist {
    uint32_t cap;
    uint32_t n;
    char *items[FREE_MAX];
};

static _Thread_local struct freelist lists[NLISTS];

static struct freelist *list_for(uint32_t cap)
{
    for (int i = 0; i < NLISTS; i++)
        if (lists[i].cap == cap)
            return &lists[i];
    for (int i = 0; i < NLISTS; i++)
        if (lists[i].cap == 0) {
            lists[i].cap = cap;
            return &lists[i];
        }
    return NULL;
}

int moat_buf_get(struct moat_buf *b, uint32_t cap)
{
    b->rpos = b->wpos = 0;
    if (cap <= SMALL) {
        b->base = moat_mc_alloc(cap ? cap : 1);
        b->cap = b->base ? (uint32_t)moat_mc_size(b->base) : 0; /* still <= SMALL */
        return b->base ? MOAT_OK : MOAT_ERR;
    }
    struct freelist *fl = list_for(cap);
    char *p = (fl && fl->n) ? fl->items[--fl->n] : malloc(cap);
    if (!p) {
        b->base = NULL;
        b->cap = 0;
        return MOAT_ERR;
    }
    b->base = p;
    b->cap = cap;
    return MOAT_OK;
}

void moat_buf_put(struct moat_buf *b)
{
    if (!b->base)
        return;
    if (b->cap <= SMALL) {
        moat_mc_free(b->base);
        b->base = NULL;
        b->cap = b->rpos = b->wpos = 0;
        return;
    }
    struct freelist *fl = list_for(b->cap);
    if (fl && fl->n < (b->cap > LARGE ? FREE_MAX_LARGE : FREE_MAX))
        fl->items[fl->n++] = b->base;
    else
        free(b->base);
    b->base = NULL;
    b->cap = b->rpos = b->wpos = 0;
}

int moat_buf_swap_empty(struct moat_buf *b, uint32_t cap)
{
    struct moat_buf nb;
    if (moat_buf_get(&nb, cap) != MOAT_OK)
        return MOAT_ERR;
    moat_buf_put(b);
    *b = nb;
    return MOAT_OK;
}

void moat_buf_thread_cleanup(void)
{
    for (int i = 0; i < NLISTS; i++) {
        while (lists[i].n)
            free(lists[i].items[--lists[i].n]);
        lists[i].cap = 0;
    }
}
