/* errors.h: the ways an exchange can fail, declared once (X-macro): the name logged in the
 * access log's "error" field and used as the metric label, the status answered when no
 * response has started, whether a balancer may retry it on another origin, who caused it,
 * and the text of the local answer. Parse errors of request heads have their own table
 * (enum moat_h1_err in src/http/h1.h). */
#ifndef MOAT_PROXY_ERRORS_H
#define MOAT_PROXY_ERRORS_H

#include <stdbool.h>

enum moat_err_src { MOAT_ERR_SRC_ORIGIN, MOAT_ERR_SRC_CLIENT };

/* X(id, name, status, retryable, source, answer)
 * retryable: nothing reached the origin's application, so another origin may be tried (a
 * failed connect, a TLS handshake that failed, a reused keep-alive connection closed as we
 * sent). A timeout waiting for the response or a bad response is not: the origin may have
 * acted on the request. */
#define MOAT_XERRS(X)                                                                              \
    X(CONNECT, "connect", 502, true, ORIGIN, "origin unreachable or failed\n")                     \
    X(TIMEOUT, "timeout", 504, false, ORIGIN, "origin timed out\n")                                \
    X(RESET, "reset", 502, false, ORIGIN, "origin unreachable or failed\n")                        \
    X(BAD_RESPONSE, "bad_response", 502, false, ORIGIN, "origin unreachable or failed\n")          \
    X(TRUNCATED, "truncated", 502, false, ORIGIN, "origin unreachable or failed\n")                \
    X(TLS, "tls", 502, true, ORIGIN, "TLS with the origin failed\n")                               \
    X(TLS_VERIFY, "tls_verify", 502, true, ORIGIN, "origin certificate not trusted\n")             \
    X(CLIENT_GONE, "client_gone", 499, false, CLIENT, "")                                          \
    X(CLIENT_TIMEOUT, "client_timeout", 408, false, CLIENT, "request head not received in time\n")

enum moat_xerr {
    MOAT_XERR_NONE = 0,
#define MOAT_XERR_ENUM(id, name, status, retry, src, answer) MOAT_XERR_##id,
    MOAT_XERRS(MOAT_XERR_ENUM)
#undef MOAT_XERR_ENUM
        MOAT_XERR_COUNT
};

struct moat_xerr_def {
    const char *name;
    int status;
    bool retryable;
    enum moat_err_src src;
    const char *answer;
};

/* Indexed by enum moat_xerr (entry 0, NONE, is all zero). */
extern const struct moat_xerr_def moat_xerr_defs[MOAT_XERR_COUNT];

static inline const char *moat_xerr_name(enum moat_xerr e)
{
    return e > MOAT_XERR_NONE && e < MOAT_XERR_COUNT ? moat_xerr_defs[e].name : NULL;
}

#endif
