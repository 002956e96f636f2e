/* stats.h: every counter moat exports, declared once (X-macro). Each row generates a field in
 * struct moat_stats, a Prometheus sample (name, labels, help) and the metrics docs. Counters are
 * per worker thread, written only by their thread (relaxed stores, no RMW), summed when read. */
#ifndef MOAT_PROXY_STATS_H
#define MOAT_PROXY_STATS_H

#include <stdatomic.h>
#include <stdint.h>

#include "http/h1.h"
#include "proxy/errors.h"
#include "tls/tls.h"

/* HTTP/2 (h2conn.c): connections and streams, resets and GOAWAYs by reason. */
#define MOAT_H2_STATS(X)                                                                           \
    X(h2_conn_total, "moat_http2_connections_total", "", "counter",                                \
      "Client connections that spoke HTTP/2 (ALPN h2 or h2c)")                                     \
    X(h2_conn_active, "moat_http2_connections_active", "", "gauge",                                \
      "HTTP/2 client connections open now")                                                        \
    X(h2_streams, "moat_http2_streams_total", "", "counter", "HTTP/2 requests (streams) started")  \
    X(h2_streams_active, "moat_http2_streams_active", "", "gauge", "HTTP/2 streams open now")      \
    X(h2_buffered, "moat_http2_buffered_bytes", "", "gauge",                                       \
      "Response bytes HTTP/2 streams hold copied for their clients' windows (cache hits hold "     \
      "references to the stored object instead)")                                                  \
    X(h2_rst_recv, "moat_http2_resets_received_total", "", "counter",                              \
      "RST_STREAM frames received from clients")                                                   \
    X(h2_rst_protocol, "moat_http2_resets_sent_total", "reason=\"protocol\"", "counter",           \
      "RST_STREAM frames sent, by reason (malformed stream, refused, cancelled, ...)")             \
    X(h2_rst_refused, "moat_http2_resets_sent_total", "reason=\"refused\"", "counter", "")         \
    X(h2_rst_cancel, "moat_http2_resets_sent_total", "reason=\"cancel\"", "counter", "")           \
    X(h2_rst_internal, "moat_http2_resets_sent_total", "reason=\"internal\"", "counter", "")       \
    X(h2_rst_flow, "moat_http2_resets_sent_total", "reason=\"flow_control\"", "counter", "")       \
    X(h2_rst_no_error, "moat_http2_resets_sent_total", "reason=\"no_error\"", "counter", "")       \
    X(h2_rst_other, "moat_http2_resets_sent_total", "reason=\"other\"", "counter", "")             \
    X(h2_ga_drain, "moat_http2_goaways_total", "reason=\"drain\"", "counter",                      \
      "GOAWAY frames sent, by reason")                                                             \
    X(h2_ga_idle, "moat_http2_goaways_total", "reason=\"idle\"", "counter", "")                    \
    X(h2_ga_header, "moat_http2_goaways_total", "reason=\"header_timeout\"", "counter", "")        \
    X(h2_ga_stall, "moat_http2_goaways_total", "reason=\"stall\"", "counter", "")                  \
    X(h2_ga_rapid_reset, "moat_http2_goaways_total", "reason=\"rapid_reset\"", "counter", "")      \
    X(h2_ga_control, "moat_http2_goaways_total", "reason=\"control_flood\"", "counter", "")        \
    X(h2_ga_empty, "moat_http2_goaways_total", "reason=\"empty_data\"", "counter", "")             \
    X(h2_ga_calm, "moat_http2_goaways_total", "reason=\"flood\"", "counter", "")                   \
    X(h2_ga_protocol, "moat_http2_goaways_total", "reason=\"protocol\"", "counter", "")            \
    X(h2_ga_other, "moat_http2_goaways_total", "reason=\"other\"", "counter", "")                  \
    X(h2_hdr_too_large, "moat_http2_header_lists_too_large_total", "", "counter",                  \
      "HTTP/2 requests whose header list exceeded http2.max_header_list (431)")

/* X(field, metric, labels, type, help) */
#define MOAT_STATS(X)                                                                              \
    X(req_1xx, "moat_requests_total", "class=\"1xx\"", "counter",                                  \
      "Requests answered, by status class")                                                        \
    X(req_2xx, "moat_requests_total", "class=\"2xx\"", "counter", "")                              \
    X(req_3xx, "moat_requests_total", "class=\"3xx\"", "counter", "")                              \
    X(req_4xx, "moat_requests_total", "class=\"4xx\"", "counter", "")                              \
    X(req_5xx, "moat_requests_total", "class=\"5xx\"", "counter", "")                              \
    X(req_bytes, "moat_request_bytes_total", "", "counter", "Bytes received from clients")         \
    X(resp_bytes, "moat_response_bytes_total", "", "counter", "Bytes sent to clients")             \
    X(conn_active, "moat_connections_active", "", "gauge", "Client connections open now")          \
    X(conn_total, "moat_connections_total", "", "counter", "Client connections accepted")          \
    X(conn_rejected, "moat_connections_rejected_total", "", "counter",                             \
      "Connections closed at accept because limits.connections was reached")                       \
    X(conn_reclaimed, "moat_connections_reclaimed_total", "", "counter",                           \
      "Connections waiting for a request closed to make room at limits.connections")               \
    X(up_conn_opened, "moat_upstream_connections_opened_total", "", "counter",                     \
      "New connections to origins")                                                                \
    X(up_conn_reused, "moat_upstream_connections_reused_total", "", "counter",                     \
      "Requests sent on a pooled keep-alive connection")                                           \
    X(up_retries, "moat_upstream_retries_total", "", "counter",                                    \
      "Requests retried on a fresh connection after a reused one failed")                          \
    X(bad_expect, "moat_bad_requests_total", "reason=\"expectation_failed\"", "counter",           \
      "Requests refused before reaching an origin, by reason")                                     \
    X(bad_body_too_large, "moat_bad_requests_total", "reason=\"body_too_large\"", "counter", "")   \
    X(bad_no_site, "moat_bad_requests_total", "reason=\"no_site\"", "counter", "")                 \
    X(bad_timeout, "moat_bad_requests_total", "reason=\"client_timeout\"", "counter", "")          \
    X(cache_hit, "moat_cache_hits_total", "", "counter", "Responses served fresh from the cache")  \
    X(cache_miss, "moat_cache_misses_total", "", "counter",                                        \
      "Requests that fetched from the origin to fill the cache (misses and stale refetches)")      \
    X(cache_collapsed, "moat_cache_collapsed_total", "", "counter",                                \
      "Requests that waited for another request's fetch of the same object")                       \
    X(cache_stale, "moat_cache_stale_total", "", "counter",                                        \
      "Stale responses served (stale-while-revalidate, stale-if-error)")                           \
    X(cache_bg_refresh, "moat_cache_background_refreshes_total", "", "counter",                    \
      "Stale objects refreshed by a background fetch (stale-while-revalidate)")                    \
    X(cache_detached, "moat_cache_detached_fetches_total", "", "counter",                          \
      "Cache fills that went on after their client left, to finish the object")                    \
    X(cache_pass, "moat_cache_passes_total", "", "counter",                                        \
      "Cacheable-method requests sent to the origin without the cache (hit-for-pass)")             \
    X(cache_not_modified, "moat_cache_not_modified_total", "", "counter",                          \
      "Conditional requests answered 304 from the cache")                                          \
    X(loop_wakeups, "moat_loop_wakeups_total", "", "counter",                                      \
      "Blocking epoll_wait calls that returned events")                                            \
    X(loop_naps, "moat_loop_naps_total", "", "counter",                                            \
      "Pauses of tuning.batch_wait_us taken by a busy worker to collect events")                   \
    X(loop_events, "moat_loop_events_total", "", "counter",                                        \
      "Socket events handled by the workers' event loops")                                         \
    MOAT_H2_STATS(X)

/* le: 1ms 5ms 10ms 25ms 50ms 100ms 250ms 500ms 1s 2.5s 5s 10s +Inf */
#define MOAT_HIST_BUCKETS 13

struct moat_stats {
#define MOAT_STATS_FIELD(f, m, l, t, h) _Atomic uint64_t f;
    MOAT_STATS(MOAT_STATS_FIELD)
#undef MOAT_STATS_FIELD
    _Atomic uint64_t bad_parse[MOAT_H1_ERR_COUNT]; /* by moat_h1_err */
    _Atomic uint64_t xerr[MOAT_XERR_COUNT];        /* by moat_xerr (origin failures:
                                                      moat_upstream_errors_total{kind}) */
    struct moat_tls_stats tls;
    _Atomic uint64_t dur_bucket[MOAT_HIST_BUCKETS];
    _Atomic uint64_t dur_sum_us;
    _Atomic uint64_t dur_count;
};

/* Single-writer increment: a relaxed load and store, no locked instruction. */
#define MOAT_STAT_ADD(st, field, n)                                                                \
    atomic_store_explicit(&(st)->field,                                                            \
                          atomic_load_explicit(&(st)->field, memory_order_relaxed) + (n),          \
                          memory_order_relaxed)
#define MOAT_STAT_INC(st, field) MOAT_STAT_ADD(st, field, 1)

/* Records one request of <us> microseconds in the latency histogram. */
void moat_stats_observe(struct moat_stats *st, uint64_t us);

#endif
