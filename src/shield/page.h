/* page.h: the challenge page and the page that explains a refused answer. */
#ifndef MOAT_SHIELD_PAGE_H
#define MOAT_SHIELD_PAGE_H

#include <stdbool.h>
#include <stddef.h>

#define MOAT_SHIELD_PAGE_ANSWER "/.moat/challenge"
/* Big enough for either page. */
#define MOAT_SHIELD_PAGE_MAX 16384

/* Writes the challenge page for the challenge <token> at <difficulty> bits, which returns to
 * <to> once solved, showing <message> (may be NULL: none) and starting at once unless
 * <autostart> is false (then a button starts it: a cookie was refused, and a loop of solving
 * and refusing must not happen). Returns its length, 0 when it does not fit <cap>. */
size_t moat_shield_page(char *out, size_t cap, const char *token, unsigned difficulty,
                        const char *to, const char *message, bool autostart);
/* Writes the page that says why an answer was refused, <why>, with a link back to <to>. */
size_t moat_shield_refused_page(char *out, size_t cap, const char *why, const char *to);

#endif
