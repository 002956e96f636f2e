/* worker.c: worker threads (one epoll loop each, own SO_REUSEPORT listeners), the current
 * configuration and how workers adopt a new one, graceful drain, and counter sums. */
#include <errno.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "acme/acme.h"
#include "cache/store.h"
#include "core/mcache.h"
#include "proxy/req.h"
#include "proxy/server.h"
#include "lb/lb.h"
#include "tls/tls.h"

struct moat_server moat_srv = {.cfg_lock = PTHREAD_MUTEX_INITIALIZER};

static uint64_t drain_timeout_ms;

/* --- counters ------------------------------------------------------------------------------- */

void moat_stats_observe(struct moat_stats *st, uint64_t us)
{
    static const uint64_t le_us[MOAT_HIST_BUCKETS - 1] = {1000,    5000,    10000,   25000,
                                                          50000,   100000,  250000,  500000,
                                                          1000000, 2500000, 5000000, 10000000};
    unsigned i = 0;
    while (i < MOAT_HIST_BUCKETS - 1 && us > le_us[i])
        i++;
    MOAT_STAT_INC(st, dur_bucket[i]);
    MOAT_STAT_ADD(st, dur_sum_us, us);
    MOAT_STAT_INC(st, dur_count);
}

void moat_server_stats(struct moat_stats *out)
{
    memset(out, 0, sizeof *out);
    for (unsigned i = 0; i < moat_srv.nworkers; i++) {
        const struct moat_stats *s = &moat_srv.workers[i].stats;
#define SUM(f)                                                                                     \
    atomic_store_explicit(&out->f,                                                                 \
                          atomic_load_explicit(&out->f, memory_order_relaxed) +                    \
                              atomic_load_explicit(&s->f, memory_order_relaxed),                   \
                          memory_order_relaxed);
#define SUM_ROW(f, m, l, t, h) SUM(f)
        MOAT_STATS(SUM_ROW)
        for (int k = 0; k < MOAT_H1_ERR_COUNT; k++)
            SUM(bad_parse[k])
        for (int k = 0; k < MOAT_XERR_COUNT; k++)
            SUM(xerr[k])
#define SUM_TLS(f, m, l, t, h) SUM(tls.f)
        MOAT_TLS_STATS(SUM_TLS)
#undef SUM_TLS
        for (int k = 0; k < MOAT_HIST_BUCKETS; k++)
            SUM(dur_bucket[k])
        SUM(dur_sum_us)
        SUM(dur_count)
#undef SUM_ROW
#undef SUM
    }
}

/* --- configuration as a worker sees it ------------------------------------------------------ */

static void wcfg_free(struct moat_wcfg *wc)
{
    if (wc->omap) {
        for (size_t i = 0; i < wc->cfg->npools; i++)
            free(wc->omap[i]);
        free(wc->omap);
    }
    free(wc->rr);
    free(wc->wsum);
    moat_config_release(&wc->cfg);
    free(wc);
}

static struct moat_wcfg *wcfg_build(struct moat_worker *w, struct moat_config *cfg)
{
    struct moat_wcfg *wc = calloc(1, sizeof *wc);
    if (!wc)
        return NULL;
    moat_config_ref(cfg);
    wc->cfg = cfg;
    wc->users = 1;
    wc->omap = calloc(cfg->npools ? cfg->npools : 1, sizeof *wc->omap);
    wc->rr = calloc(cfg->npools ? cfg->npools : 1, sizeof *wc->rr);
    wc->wsum = calloc(cfg->npools ? cfg->npools : 1, sizeof *wc->wsum);
    if (!wc->omap || !wc->rr || !wc->wsum)
        goto fail;
    if (cfg->nsites == 1 && cfg->sites[0].nhosts == 1 && !strcmp(cfg->sites[0].hosts[0], "*"))
        wc->only_site = &cfg->sites[0]; /* quick mode and one-site configs: no lookup */
    for (size_t p = 0; p < cfg->npools; p++) {
        const struct moat_cfg_pool *pool = &cfg->pools[p];
        wc->omap[p] = calloc(pool->norigins ? pool->norigins : 1, sizeof *wc->omap[p]);
        if (!wc->omap[p])
            goto fail;
        /* Start each worker at a different origin so N workers don't all hit origin 0. */
        wc->rr[p] = w->id;
        for (size_t o = 0; o < pool->norigins; o++) {
            wc->omap[p][o] = moat_up_pool_find(w, &pool->origins[o].addr,
                                               moat_up_tls_key(pool, &pool->origins[o]));
            if (!wc->omap[p][o])
                goto fail;
            wc->wsum[p] += pool->origins[o].weight ? pool->origins[o].weight : 1;
        }
        if (!wc->wsum[p])
            wc->wsum[p] = 1;
    }
    return wc;
fail:
    wcfg_free(wc);
    return NULL;
}

void moat_worker_wcfg_put(struct moat_worker *w, struct moat_wcfg *wc)
{
    (void)w;
    if (--wc->users == 0)
        wcfg_free(wc);
}

static void worker_adopt(struct moat_worker *w)
{
    pthread_mutex_lock(&moat_srv.cfg_lock);
    struct moat_config *cfg = moat_srv.cfg;
    uint64_t gen = atomic_load(&moat_srv.generation);
    moat_config_ref(cfg);
    pthread_mutex_unlock(&moat_srv.cfg_lock);
    struct moat_wcfg *wc = wcfg_build(w, cfg);
    moat_config_release(&cfg);
    if (!wc)
        return; /* out of memory: keep serving with the old one, try again next request */
    struct moat_wcfg *old = w->wcfg;
    w->wcfg = wc;
    w->gen = gen;
    uint32_t bs = (uint32_t)MOAT_MAX((size_t)16384, wc->cfg->h1.head_bytes + 2048);
    w->bufsize = (bs + 4095u) & ~4095u;
    w->body_bufsize = (uint32_t)MOAT_MAX((uint64_t)w->bufsize, wc->cfg->body_buffer);
    if (w->rhdrs_cap < wc->cfg->h1.max_headers) {
        struct moat_hdr *nh = realloc(w->rhdrs, wc->cfg->h1.max_headers * sizeof *nh);
        if (nh) {
            w->rhdrs = nh;
            w->rhdrs_cap = wc->cfg->h1.max_headers;
        }
    }
    w->loop.nap_us = wc->cfg->batch_wait_us;
    const char *dest = wc->cfg->access_log;
    if ((dest == NULL) != (w->alog_dest == NULL) || (dest && strcmp(dest, w->alog_dest))) {
        moat_alog_close(&w->alog);
        if (moat_alog_open(&w->alog, dest) != MOAT_OK)
            moat_log_error("worker %u: cannot open access log %s: %s", w->id, dest,
                           strerror(errno));
        free(w->alog_dest);
        w->alog_dest = dest ? strdup(dest) : NULL;
    }
    if (old)
        moat_worker_wcfg_put(w, old);
}

struct moat_wcfg *moat_worker_wcfg_get(struct moat_worker *w)
{
    if (moat_unlikely(atomic_load_explicit(&moat_srv.generation, memory_order_acquire) != w->gen))
        worker_adopt(w);
    w->wcfg->users++;
    return w->wcfg;
}

/* --- listeners ------------------------------------------------------------------------------ */

static void on_accept(struct moat_loop *loop, struct moat_io *io, uint32_t ev)
{
    struct moat_listener *l = MOAT_CONTAINER_OF(io, struct moat_listener, io);
    struct moat_worker *w = l->w;
    (void)loop;
    (void)ev;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(io->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE)
                moat_log_warn("accept: %s", strerror(errno));
            return;
        }
        unsigned max = w->wcfg->cfg->max_connections;
        if (w->nconns >= max) {
            /* give the places of connections that only wait for a request to newcomers,
             * a sixteenth of the limit at a time (moat_h1_reclaim) */
            MOAT_STAT_ADD(&w->stats, conn_reclaimed, moat_h1_reclaim(w, MOAT_MAX(max / 16, 32u)));
            if (w->nconns >= max) {
                MOAT_STAT_INC(&w->stats, conn_rejected);
                close(fd);
                continue;
            }
        }
        /* A client that reads slowly or not at all (the slow-read attack: a window of a few
         * hundred bytes, a few bytes read every few seconds) would otherwise get its whole
         * response queued in the kernel, which grows the send buffer to tcp_wmem's maximum
         * (4 MiB) in small segments: a thousand such clients took 1.1 GB of socket memory
         * here, enough to push every TCP socket of the host into memory pressure. With
         * TCP_NOTSENT_LOWAT a write takes only this much beyond what the window lets go. */
        int lowat = (int)w->wcfg->cfg->send_queue;
        if (lowat)
            setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof lowat);
        moat_h1_accept(w, fd, &ss, l->tls, l->h2c);
    }
    /* More may wait: the listener is level-triggered, so epoll reports it again next turn;
     * the cap keeps one busy listener from starving established connections. */
}

/* Every worker binds its own socket with SO_REUSEPORT, which would also let a second moat
 * (or anything else using the option) share the port silently. A probe bind without it,
 * before the workers bind, refuses to start on an address another process listens on. */
static int probe_free(const struct moat_addr *a, char *err, size_t errlen)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return MOAT_OK; /* the real bind reports it */
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (a->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    int rc = bind(fd, (const struct sockaddr *)&a->ss, a->len);
    int e = errno;
    close(fd);
    if (rc < 0 && e == EADDRINUSE) {
        snprintf(err, errlen, "moat: cannot listen on %s: address already in use", a->text);
        return MOAT_ERR;
    }
    return MOAT_OK;
}

static int open_listener(const struct moat_addr *a, char *err, size_t errlen)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto fail;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (a->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0 || listen(fd, 4096) < 0)
        goto fail;
    /* No quick ACK for a new connection's first segment (the request): the response, sent
     * at once, carries the ACK, so each connection costs one packet less on both ends, as
     * HAProxy does for HTTP listeners. Set after listen(), which resets the ACK state;
     * accepted sockets inherit it. */
    int zero = 0;
    setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof zero);
    /* And no accept until the request's first bytes are in (nginx's `listen ... deferred`):
     * a client speaks first in HTTP, so the accept finds them there and serves the request
     * at once, without a read that finds nothing, an epoll_ctl and a second wake-up per
     * connection. A client that connects and stays silent is handed over after about a
     * second, when the kernel's SYN-ACK retransmission gets its ACK again. */
    int one_second = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &one_second, sizeof one_second);
    return fd;
fail:
    snprintf(err, errlen, "moat: cannot listen on %s: %s", a->text, strerror(errno));
    if (fd >= 0)
        close(fd);
    return -1;
}

/* --- worker thread -------------------------------------------------------------------------- */

static void close_listeners(struct moat_worker *w)
{
    for (size_t i = 0; i < w->nlisteners; i++) {
        if (w->listeners[i].io.fd >= 0) {
            moat_loop_del(&w->loop, &w->listeners[i].io);
            close(w->listeners[i].io.fd);
            w->listeners[i].io.fd = -1;
        }
    }
}

static void tick(struct moat_loop *loop, struct moat_timer *t)
{
    struct moat_worker *w = MOAT_CONTAINER_OF(t, struct moat_worker, tick);
    if (w->alog.len)
        moat_alog_flush(&w->alog);
    if (atomic_load(&moat_srv.generation) != w->gen)
        worker_adopt(w); /* so idle workers release old snapshots too */
    if (atomic_load(&moat_srv.draining) && !w->draining) {
        w->draining = true;
        w->drain_deadline = loop->now_ms + drain_timeout_ms;
        close_listeners(w);
    }
    if (w->draining) {
        struct moat_h1conn *c = w->conns;
        bool late = loop->now_ms >= w->drain_deadline;
        while (c) {
            struct moat_h1conn *next = c->next;
            if (late)
                moat_h1_close_any(c);
            else
                moat_h1_close_idle(c);
            c = next;
        }
        moat_h2_drain(w, late);
        while (late && w->orphans)
            moat_req_abort(w->orphans);
        if (w->nconns == 0 && w->norphans == 0) {
            moat_loop_stop(loop);
            return;
        }
    }
    moat_timer_set(loop, t, 100);
}

static void *worker_main(void *arg)
{
    struct moat_worker *w = arg;
    moat_timer_set(&w->loop, &w->tick, 100);
    moat_loop_run(&w->loop);
    /* Drained: close what is left and free per-thread state. */
    close_listeners(w);
    while (w->conns)
        moat_h1_close_any(w->conns);
    moat_h2_drain(w, true);
    while (w->orphans)
        moat_req_abort(w->orphans);
    for (struct moat_upool *p = w->upools; p; p = p->next)
        while (p->idle) {
            struct moat_upconn *u = p->idle;
            p->idle = u->next_idle;
            p->nidle--;
            moat_up_close(u);
        }
    while (w->loop.defer_head) {
        struct moat_defer *d = w->loop.defer_head;
        w->loop.defer_head = d->next;
        d->fn(d);
    }
    moat_alog_close(&w->alog);
    moat_req_thread_cleanup();
    moat_lb_thread_cleanup();
    moat_buf_thread_cleanup();
    moat_mc_thread_cleanup();
    atomic_fetch_sub(&moat_srv.workers_running, 1);
    return NULL;
}

/* A snapshot that asks for TLS is only used with its TLS runtime (cfg->rt, from src/tls/):
 * without one, its listeners and origins would carry in plain text what was meant to be
 * encrypted. moat_server_prepare builds it; this guards start against a caller that did
 * not. */
static int need_tls_runtime(const struct moat_config *cfg, char *err, size_t errlen)
{
    if (!moat_config_wants_tls(cfg) || cfg->rt)
        return MOAT_OK;
    snprintf(err, errlen,
             "moat: the configuration asks for TLS (a listener with tls: true or a pool with "
             "tls) but its TLS contexts were not built");
    return MOAT_ERR;
}

int moat_server_prepare(struct moat_config *cfg, char *err, size_t errlen)
{
    if (moat_tls_build(cfg, err, errlen) != MOAT_OK)
        return MOAT_ERR;
    if (moat_lb_prepare(cfg, err, errlen) != MOAT_OK)
        return MOAT_ERR;
    return need_tls_runtime(cfg, err, errlen);
}

int moat_server_start(struct moat_config *cfg, char *err, size_t errlen)
{
    if (need_tls_runtime(cfg, err, errlen) != MOAT_OK)
        return MOAT_ERR;
    moat_srv.cfg = cfg;
    atomic_store(&moat_srv.generation, 1);
    cfg->generation = 1;
    if (cfg->lb_rt)
        moat_lb_install(cfg);
    moat_srv.started_us = moat_wall_us();
    unsigned n = cfg->workers ? cfg->workers : 1;
    moat_srv.workers = calloc(n, sizeof *moat_srv.workers);
    if (!moat_srv.workers) {
        snprintf(err, errlen, "moat: out of memory");
        return MOAT_ERR;
    }
    moat_srv.nworkers = n;
    /* The cache is created whether or not it is enabled now (memory is only used as objects
     * arrive), so a reload can turn it on; its size is read here, at start. */
    struct moat_cache_store_cfg scfg = {.max_bytes = cfg->cache.memory,
                                        .max_object = cfg->cache.max_object};
    moat_srv.cache = moat_cache_store_new(&scfg);
    if (!moat_srv.cache) {
        snprintf(err, errlen, "moat: cannot create the cache (out of memory)");
        return MOAT_ERR;
    }
    for (size_t k = 0; k < cfg->nlisten; k++)
        if (probe_free(&cfg->listen[k].addr, err, errlen) != MOAT_OK)
            return MOAT_ERR;
    for (unsigned i = 0; i < n; i++) {
        struct moat_worker *w = &moat_srv.workers[i];
        w->id = i;
        w->alog.fd = -1;
        if (moat_loop_init(&w->loop) != MOAT_OK) {
            snprintf(err, errlen, "moat: epoll: %s", strerror(errno));
            return MOAT_ERR;
        }
        w->loop.data = w;
        w->loop.c_wakeups = &w->stats.loop_wakeups;
        w->loop.c_naps = &w->stats.loop_naps;
        w->loop.c_events = &w->stats.loop_events;
        w->tick.cb = tick;
        worker_adopt(w);
        if (!w->wcfg) {
            snprintf(err, errlen, "moat: out of memory");
            return MOAT_ERR;
        }
        w->listeners = calloc(cfg->nlisten, sizeof *w->listeners);
        w->nlisteners = cfg->nlisten;
        for (size_t k = 0; k < cfg->nlisten; k++) {
            int fd = open_listener(&cfg->listen[k].addr, err, errlen);
            if (fd < 0)
                return MOAT_ERR;
            if (i == 0) /* the line scripts wait for: printed as soon as the port accepts */
                fprintf(stderr, "moat: listening on %s\n", cfg->listen[k].addr.text);
            w->listeners[k].io.fd = fd;
            w->listeners[k].io.cb = on_accept;
            w->listeners[k].w = w;
            w->listeners[k].tls = cfg->listen[k].tls;
            w->listeners[k].h2c = cfg->listen[k].h2c;
            const struct sockaddr_storage *ss = &cfg->listen[k].addr.ss;
            w->listeners[k].port = ss->ss_family == AF_INET6
                                       ? ntohs(((const struct sockaddr_in6 *)ss)->sin6_port)
                                       : ntohs(((const struct sockaddr_in *)ss)->sin_port);
            moat_loop_add(&w->loop, &w->listeners[k].io, EPOLLIN);
        }
    }
    for (size_t k = 0; k < cfg->nlisten; k++)
        moat_log_info("listening on %s (%u workers)", cfg->listen[k].addr.text, n);
    /* ACME: the stored certificates are in the store before the first handshake. */
    if (moat_acme_start(cfg, moat_server_config, err, errlen) != MOAT_OK)
        return MOAT_ERR;
    for (unsigned i = 0; i < n; i++) {
        atomic_fetch_add(&moat_srv.workers_running, 1);
        if (pthread_create(&moat_srv.workers[i].thread, NULL, worker_main, &moat_srv.workers[i])) {
            snprintf(err, errlen, "moat: cannot start worker thread");
            return MOAT_ERR;
        }
    }
    return MOAT_OK;
}

static bool addrs_equal(const struct moat_cfg_listen *a, size_t na, const struct moat_cfg_listen *b,
                        size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (strcmp(a[i].addr.text, b[i].addr.text) || a[i].tls != b[i].tls || a[i].h2c != b[i].h2c)
            return false;
    return true;
}

void moat_server_install(struct moat_config *cfg)
{
    pthread_mutex_lock(&moat_srv.cfg_lock);
    struct moat_config *old = moat_srv.cfg;
    if (!addrs_equal(old->listen, old->nlisten, cfg->listen, cfg->nlisten))
        moat_log_warn("reload: listen addresses changed; this needs a restart (kept the old)");
    if (old->cache.memory != cfg->cache.memory)
        moat_log_warn("reload: cache.memory changed; this needs a restart (kept the old)");
    if (old->workers != cfg->workers)
        moat_log_warn("reload: workers changed; this needs a restart (kept %u)", old->workers);
    if (old->admin.enabled != cfg->admin.enabled ||
        (cfg->admin.enabled && strcmp(old->admin.listen.text, cfg->admin.listen.text)))
        moat_log_warn("reload: admin.listen changed; this needs a restart (kept the old)");
    uint64_t gen = atomic_load(&moat_srv.generation) + 1;
    cfg->generation = gen;
    moat_srv.cfg = cfg;
    atomic_store_explicit(&moat_srv.generation, gen, memory_order_release);
    if (cfg->lb_rt)
        moat_lb_install(cfg);
    pthread_mutex_unlock(&moat_srv.cfg_lock);
    moat_config_release(&old);
    moat_acme_kick(); /* ACME sites may have changed */
}

int moat_server_reload(const char *path, char *err, size_t errlen)
{
    if (!path) {
        snprintf(err, errlen, "moat: running without a configuration file; nothing to reload");
        atomic_fetch_add(&moat_srv.reloads_failed, 1);
        return MOAT_ERR;
    }
    struct moat_config *cfg = moat_config_load(path, err, errlen);
    if (cfg && moat_server_prepare(cfg, err, errlen) != MOAT_OK)
        moat_config_release(&cfg);
    if (cfg && cfg->tls.ncerts == 0 && !cfg->tls.acme.enabled && moat_srv.nworkers) {
        /* The listeners stay as they were started (listen needs a restart): TLS ones need
         * certificates from the new snapshot too. */
        const struct moat_worker *w0 = &moat_srv.workers[0];
        for (size_t k = 0; k < w0->nlisteners; k++) {
            if (w0->listeners[k].tls) {
                snprintf(err, errlen,
                         "%s: tls.certificates: the TLS listener on port %u is still open (a "
                         "change of listen takes a restart) and needs certificates",
                         path, (unsigned)w0->listeners[k].port);
                moat_config_release(&cfg);
                break;
            }
        }
    }
    if (!cfg) {
        atomic_fetch_add(&moat_srv.reloads_failed, 1);
        moat_log_error("reload refused, still running generation %llu: %s",
                       (unsigned long long)atomic_load(&moat_srv.generation), err);
        return MOAT_ERR;
    }
    if (moat_log_open(cfg->error_log, (int)cfg->log_level) != MOAT_OK)
        moat_log_warn("reload: cannot open error log %s", cfg->error_log);
    moat_server_install(cfg);
    atomic_fetch_add(&moat_srv.reloads_ok, 1);
    moat_log_info("configuration reloaded from %s: generation %llu", path,
                  (unsigned long long)atomic_load(&moat_srv.generation));
    return MOAT_OK;
}

struct moat_config *moat_server_config(void)
{
    pthread_mutex_lock(&moat_srv.cfg_lock);
    struct moat_config *c = moat_srv.cfg;
    moat_config_ref(c);
    pthread_mutex_unlock(&moat_srv.cfg_lock);
    return c;
}

void moat_server_drain(uint64_t timeout_ms)
{
    drain_timeout_ms = timeout_ms;
    atomic_store(&moat_srv.draining, 1);
}

void moat_server_join(void)
{
    moat_acme_stop();
    for (unsigned i = 0; i < moat_srv.nworkers; i++) {
        pthread_join(moat_srv.workers[i].thread, NULL);
        struct moat_worker *w = &moat_srv.workers[i];
        if (w->wcfg)
            moat_worker_wcfg_put(w, w->wcfg);
        w->wcfg = NULL;
        while (w->upools) {
            struct moat_upool *p = w->upools;
            w->upools = p->next;
            free(p);
        }
        free(w->listeners);
        free(w->alog_dest);
        free(w->rhdrs);
        moat_loop_destroy(&w->loop);
    }
    free(moat_srv.workers);
    moat_srv.workers = NULL;
    moat_srv.nworkers = 0;
    if (moat_srv.cache)
        moat_cache_store_free(moat_srv.cache);
    moat_srv.cache = NULL;
    moat_config_release(&moat_srv.cfg);
}
