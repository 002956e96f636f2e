/* server.h: the running server: worker threads, the current configuration, reload and drain.
 * main.c and the admin API drive it through these calls. */
#ifndef MOAT_PROXY_SERVER_H
#define MOAT_PROXY_SERVER_H

#include <pthread.h>
#include <stdatomic.h>

#include "config/config.h"
#include "proxy/stats.h"

struct moat_worker;
struct moat_cache_store;

struct moat_server {
    pthread_mutex_t cfg_lock;    /* guards cfg swaps (rare) */
    struct moat_config *cfg;     /* current snapshot (one reference held here) */
    _Atomic uint64_t generation; /* bumped on each install; workers poll it */
    struct moat_worker *workers;
    unsigned nworkers;
    uint64_t started_us; /* wall clock */
    _Atomic uint64_t reloads_ok, reloads_failed;
    _Atomic int draining;
    _Atomic unsigned workers_running;
    struct moat_cache_store *cache; /* shared by all workers, outlives reloads; NULL
                                       when the cache is off at start */
    _Atomic bool cache_keyed;       /* some cache key had key.headers / key.cookies
                                       parts since start: a URL purge must look for
                                       "url\n..." keys too (sticky) */
};

extern struct moat_server moat_srv;

/* Builds what <cfg> needs at run time beyond the snapshot (its TLS contexts: certificates
 * and keys are loaded and checked here). MOAT_OK, or MOAT_ERR with <err> naming the file
 * and the reason; <cfg> is then unusable (release it). */
int moat_server_prepare(struct moat_config *cfg, char *err, size_t errlen);

/* Installs <cfg> as the first configuration (takes the reference), opens the listeners of
 * every worker and starts the worker threads. Returns MOAT_OK, or MOAT_ERR with <err>. */
int moat_server_start(struct moat_config *cfg, char *err, size_t errlen);

/* Installs <cfg> (takes the reference) as the current configuration: new requests use it,
 * requests in flight finish with theirs. Settings that need a restart (listen, workers,
 * admin.listen) are kept from the running configuration and a warning is logged. */
void moat_server_install(struct moat_config *cfg);

/* Loads <path>, validates and installs it. MOAT_OK, or MOAT_ERR with the reason in <err>
 * ("FILE:LINE:COL: ...") and the running configuration untouched. */
int moat_server_reload(const char *path, char *err, size_t errlen);

/* Returns the current configuration with a reference the caller must release. */
struct moat_config *moat_server_config(void);

/* Starts a graceful drain: listeners close, idle connections close, requests in flight
 * finish (no more keep-alive) until <timeout_ms>, then what is left is closed. */
void moat_server_drain(uint64_t timeout_ms);
/* Waits for every worker thread to end. */
void moat_server_join(void);

/* Sums every worker's counters into <out>. */
void moat_server_stats(struct moat_stats *out);

#endif
