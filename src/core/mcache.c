/* mcache.c: per-thread free lists by size class (see mcache.h). Classes go 16, 24, 32, 48,
 * 64, 96, ... 49152, 65536 bytes: two per power of two, so a block wastes at most a third. */
#include "core/mcache.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NCLASS   25
#define BIG      UINT32_MAX
#define HDR      16u
#define MIN_FREE 4u

struct hdr {
    size_t size;  /* usable bytes */
    uint32_t cls; /* class index, or BIG */
    uint32_t pad;
};

struct cls_list {
    void *head;
    uint32_t n;
};

static _Thread_local struct cls_list lists[NCLASS];

static size_t class_size(unsigned i)
{
    return i & 1 ? (size_t)3 << (i / 2 + 3) : (size_t)1 << (i / 2 + 4);
}

static unsigned class_of(size_t n)
{
    if (n <= 16)
        return 0;
    unsigned b =
        64u - (unsigned)__builtin_clzll((unsigned long long)(n - 1)); /* 2^(b-1) < n <= 2^b */
    return n <= ((size_t)3 << (b - 2)) ? 2 * b - 9 : 2 * b - 8;
}

static uint32_t class_keep(unsigned i)
{
    uint32_t k = (uint32_t)(MOAT_MC_CLASS_BYTES / class_size(i));
    return k < MIN_FREE ? MIN_FREE : k;
}

void *moat_mc_alloc(size_t n)
{
    if (n > MOAT_MC_MAX) {
        if (n > SIZE_MAX - HDR)
            return NULL;
        struct hdr *h = malloc(HDR + n);
        if (!h)
            return NULL;
        h->size = n, h->cls = BIG;
        return (char *)h + HDR;
    }
    unsigned i = class_of(n);
    struct cls_list *l = &lists[i];
    if (l->head) {
        void *p = l->head;
        memcpy(&l->head, p, sizeof(void *));
        l->n--;
        return p;
    }
    struct hdr *h = malloc(HDR + class_size(i));
    if (!h)
        return NULL;
    h->size = class_size(i), h->cls = i;
    return (char *)h + HDR;
}

void *moat_mc_calloc(size_t nmemb, size_t size)
{
    if (size && nmemb > SIZE_MAX / size)
        return NULL;
    void *p = moat_mc_alloc(nmemb * size);
    if (p)
        memset(p, 0, nmemb * size);
    return p;
}

size_t moat_mc_size(const void *p)
{
    const struct hdr *h = (const struct hdr *)((const char *)p - HDR);
    return h->size;
}

void moat_mc_free(void *p)
{
    if (!p)
        return;
    struct hdr *h = (struct hdr *)((char *)p - HDR);
    if (h->cls == BIG) {
        free(h);
        return;
    }
    struct cls_list *l = &lists[h->cls];
    if (l->n >= class_keep(h->cls)) {
        free(h);
        return;
    }
    memcpy(p, &l->head, sizeof(void *));
    l->head = p;
    l->n++;
}

void *moat_mc_realloc(void *p, size_t n)
{
    if (!p)
        return moat_mc_alloc(n);
    size_t have = moat_mc_size(p);
    if (n <= have && (n > MOAT_MC_MAX || class_of(n) == class_of(have)))
        return p;
    void *q = moat_mc_alloc(n);
    if (!q)
        return NULL;
    memcpy(q, p, have < n ? have : n);
    moat_mc_free(p);
    return q;
}

void moat_mc_thread_cleanup(void)
{
    for (unsigned i = 0; i < NCLASS; i++) {
        while (lists[i].head) {
            void *p = lists[i].head;
            memcpy(&lists[i].head, p, sizeof(void *));
            free((char *)p - HDR);
        }
        lists[i].n = 0;
    }
}
