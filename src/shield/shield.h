/* shield.h: rate limits, connection limits, access rules and the under-attack browser
 * challenge (docs/shield.md). The shield phase of the pipeline calls moat_shield_request; the
 * rest are hooks at accept, at the origin, at the end of a request, and for the admin API. */
#ifndef MOAT_SHIELD_SHIELD_H
#define MOAT_SHIELD_SHIELD_H

#include <jansson.h>

#include "proxy/req.h"
#include "shield/limit.h"

/* The path the challenge page posts its answer to (POST or GET, the answer in the query:
 * c=<challenge>&n=<nonce>&to=<the page first asked for>). */
#define MOAT_SHIELD_ANSWER_PATH "/.moat/challenge"

/* The shield phase for <r> on <site> (NULL: no site matches; only global rules apply):
 * access rules, then rate limits, then the challenge. MOAT_DECLINED (go on) or MOAT_DONE (an
 * answer is under way: 403, 429, the challenge page, a dropped connection, the answer
 * endpoint's redirect). Writes no log line per refused request; counts instead. */
int moat_shield_request(struct moat_req *r, const struct moat_cfg_site *site);

/* True when the shield has nothing to do under <cfg>: no rule, no site that may challenge, no
 * admin override or block. The pipeline then skips the phase, site lookup included. */
bool moat_shield_idle(const struct moat_config *cfg);

/* <r> is about to go to the origin: charges the budget of a count: origin rate limit. */
void moat_shield_origin(struct moat_req *r);

/* <r> is over: feeds the origin's answers to its site's auto mode. */
void moat_shield_account(const struct moat_req *r);

/* Connection limits at accept: may a new connection from (v4-mapped) <ip> open under
 * <cfg>? True: it is counted and moat_shield_conn_close must follow when it closes. */
bool moat_shield_conn_open(const struct moat_config *cfg, const uint8_t ip[16]);
void moat_shield_conn_close(const uint8_t ip[16]);

/* The shield's metrics in Prometheus text (malloc'd, *<len> bytes), NULL when out of memory. */
char *moat_shield_metrics(size_t *len);

/* The shield's part of /status: per-site under-attack state, admin overrides, the table. */
json_t *moat_shield_status(const struct moat_config *cfg);

/* The admin API: sets the under-attack mode of the site serving <host> to <mode> ("on",
 * "off", "auto", or "config": back to what the configuration says). MOAT_OK, or MOAT_ERR
 * with <err> filled. The setting survives reloads (it is keyed by the site's first host). */
int moat_shield_set_mode(const struct moat_config *cfg, const char *host, const char *mode,
                         char *err, size_t errlen);

/* The admin API: refuses (403) every request from <cidr> ("10.0.0.0/8", "2001:db8::/32", an
 * address) for <for_ms>, before any access rule; at most 1024 blocks. Setting a block again
 * changes its duration. MOAT_OK, or MOAT_ERR with <err> filled. */
int moat_shield_block(const char *cidr, uint64_t for_ms, char *err, size_t errlen);
/* Lifts the block of exactly <cidr>. MOAT_OK, or MOAT_ERR (not blocked, not a CIDR). */
int moat_shield_unblock(const char *cidr, char *err, size_t errlen);
/* The busiest rate-limit keys now (at most <n>, at most 100): how far each is ahead of its
 * budget, and what it is (client address, header or cookie value) when it was refused
 * lately. A JSON array, busiest first. */
json_t *moat_shield_top(size_t n);

#endif
