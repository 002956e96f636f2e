/* dash.h: the live dashboard on the admin listener: its page (embedded), the token login, and
 * GET /events, a server-sent-events stream of one JSON snapshot per second. The snapshot is
 * built once per second on the control thread, whatever the number of open pages, and the
 * same bytes are queued on every stream. */
#ifndef MOAT_ADMIN_DASH_H
#define MOAT_ADMIN_DASH_H

#include "admin/httpd.h"

struct moat_dash;

/* Starts the once-a-second snapshot on <loop> (the 15-minute history fills from now on)
 * with <cfg>'s admin settings; <token> is the admin token (NULL: no login). NULL when
 * admin.dashboard is false or on no memory. */
struct moat_dash *moat_dash_start(struct moat_loop *loop, const struct moat_config *cfg,
                                  const char *token);
/* Stops the timer and frees <d>. Call after the admin listener stopped (its streams are
 * then closed). NULL is fine. */
void moat_dash_stop(struct moat_dash *d);

/* True when <r> carries the dashboard's session cookie (the login's proof of the token). */
bool moat_dash_cookie_ok(const struct moat_dash *d, const struct moat_h1_req *r);

/* Finds the session cookie in the Cookie field value <v>: true with its value in <out>
 * (pointing into <v>). Exposed for the fuzzer (tests/fuzz/fuzz_dash.c). */
bool moat_dash_cookie_value(struct moat_str v, struct moat_str *out);

/* Decodes field <name> of the application/x-www-form-urlencoded <s> ('+' and %XX decoded)
 * into <out>, NUL-terminated. False when absent, when it does not fit <cap> (> 0) bytes with
 * its NUL, or when it decodes to a NUL byte. Exposed for the fuzzer. */
bool moat_dash_form_field(struct moat_str s, const char *name, char *out, size_t cap);

/* Answers the dashboard's own paths (/, /dashboard, /login, /logout, /dash/..., /events):
 * returns true with <resp> filled (or streaming), false if <req> is not one of them.
 * <authed>: the request passed the admin token check (bearer or cookie). */
bool moat_dash_handle(struct moat_dash *d, const struct moat_httpd_req *req, bool authed,
                      struct moat_httpd_resp *resp);

/* Tells the dashboard how the last reload through the admin API went (<msg>: the error). */
void moat_dash_note_reload(struct moat_dash *d, bool ok, const char *msg);

/* Appends the dashboard's Prometheus rows (snapshots built, streams open) to <out> (at most
 * <cap> bytes, NUL-terminated). Returns the length written. */
size_t moat_dash_metrics(char *out, size_t cap);

#endif
