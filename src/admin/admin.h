/* admin.h: the admin API (status, reload, metrics) and moat's built-in demo origin. */
#ifndef MOAT_ADMIN_ADMIN_H
#define MOAT_ADMIN_ADMIN_H

#include "admin/httpd.h"

/* Starts the admin API on <cfg>'s admin.listen, answering on <loop>. <config_path> is what
 * POST /reload loads (NULL: reload is refused). NULL with <err> on failure. */
struct moat_httpd *moat_admin_start(struct moat_loop *loop, const struct moat_config *cfg,
                                    const char *config_path, char *err, size_t errlen);

/* Stops the admin API and frees what moat_admin_start allocated. */
void moat_admin_stop(struct moat_httpd *s);

/* Writes the Prometheus text exposition of every counter into a malloc'd string. */
char *moat_metrics_render(size_t *len);

/* Starts the built-in demo origin on <addr>. */
struct moat_httpd *moat_demo_start(struct moat_loop *loop, const struct moat_addr *addr, char *err,
                                   size_t errlen);

#endif
