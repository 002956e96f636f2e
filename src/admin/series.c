/* series.c: the history ring. Written and read on the control thread only. */
#include "admin/series.h"

int moat_series_init(struct moat_series *s, size_t cap)
{
    *s = (struct moat_series){0};
    if (!cap)
        return MOAT_ERR;
    s->pts = calloc(cap, sizeof *s->pts);
    if (!s->pts)
        return MOAT_ERR;
    s->cap = cap;
    return MOAT_OK;
}

void moat_series_free(struct moat_series *s)
{
    free(s->pts);
    *s = (struct moat_series){0};
}

void moat_series_push(struct moat_series *s, const struct moat_series_pt *pt)
{
    s->pts[s->head] = *pt;
    s->head = (s->head + 1) % s->cap;
    if (s->n < s->cap)
        s->n++;
}

const struct moat_series_pt *moat_series_at(const struct moat_series *s, size_t i)
{
    size_t oldest = (s->head + s->cap - s->n) % s->cap;
    return &s->pts[(oldest + i) % s->cap];
}
