/* series.h: the dashboard's history, a ring of per-second samples (requests and bytes by
 * cache outcome), so a page opened mid-incident sees the minutes before it. */
#ifndef MOAT_ADMIN_SERIES_H
#define MOAT_ADMIN_SERIES_H

#include "core/common.h"
#include "proxy/dashrec.h"

struct moat_series_pt {
    uint64_t t; /* Unix second the sample covers */
    uint32_t req[MOAT_DASH_NCLASS];
    uint64_t bytes[MOAT_DASH_NCLASS];
};

/* A fixed-capacity ring: pushing onto a full one drops the oldest sample. */
struct moat_series {
    struct moat_series_pt *pts;
    size_t cap, head, n; /* head: where the next push goes */
};

/* Allocates room for <cap> samples (> 0). MOAT_OK or MOAT_ERR (no memory). */
int moat_series_init(struct moat_series *s, size_t cap);
void moat_series_free(struct moat_series *s);
/* Appends <pt> as the newest sample. */
void moat_series_push(struct moat_series *s, const struct moat_series_pt *pt);
/* The <i>th sample, oldest first (i < s->n). */
const struct moat_series_pt *moat_series_at(const struct moat_series *s, size_t i);

#endif
