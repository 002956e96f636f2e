/* monitor.c: active health checks, off the request path: one thread with its own event loop
 * probes every origin of every pool that names a monitor (tcp: a connection; http: a GET and
 * its status and body), on a timer per origin, with non-blocking sockets. Verdicts go to the
 * origins' atomics (up, rtt, counters), which workers read; no worker ever waits on a probe.
 *
 * fall and rise are counted per origin: an up origin goes down after <fall> failures in a row,
 * a down one comes back after <rise> passes in a row (and clears a passive ejection). */
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lb/lb-int.h"

#define PROBE_BUF (64 * 1024)

struct probe {
    struct moat_lb_origin *o;
    struct moat_timer tick; /* the next check */
    struct moat_timer tmo;  /* the current check's timeout */
    struct moat_io io;      /* fd -1 between checks */
    bool connected, sent;
    uint64_t start_us;
    /* what the current check looks for (copied: the snapshot may go while it runs) */
    unsigned type;
    uint16_t lo[MOAT_MON_EXPECT_MAX], hi[MOAT_MON_EXPECT_MAX];
    unsigned nexpect, fall, rise;
    uint64_t interval_ms;
    char want[256];
    bool want_body;
    char req[1024];
    size_t reqlen, reqsent;
    char *buf;
    size_t len;
};

static struct {
    pthread_t th;
    struct moat_loop loop;
    bool started;
    struct moat_config *cfg; /* the configuration the monitors follow (monitor thread) */
    struct moat_timer autoscale;
} mon;

static void autoscale_cb(struct moat_loop *loop, struct moat_timer *t)
{
    lb_autoscale_tick(mon.cfg);
    moat_timer_set(loop, t, AUTOSCALE_TICK_MS);
}

static void set_error(struct moat_lb_origin *o, const char *msg)
{
    pthread_mutex_lock(&lb_reg.lock);
    snprintf(o->last_error, sizeof o->last_error, "%s", msg);
    pthread_mutex_unlock(&lb_reg.lock);
}

void moat_lb_last_error(const struct moat_lb_origin *o, char *buf, size_t len)
{
    /* Called with the registry lock held (moat_lb_each_origin). */
    snprintf(buf, len, "%s", o->last_error);
}

static const struct moat_cfg_pool *pool_cfg(const struct moat_config *c, const char *name)
{
    for (size_t i = 0; c && i < c->npools; i++)
        if (strcmp(c->pools[i].name, name) == 0)
            return &c->pools[i];
    return NULL;
}

static void end_io(struct probe *p)
{
    if (p->io.fd >= 0) {
        moat_loop_del(&mon.loop, &p->io);
        close(p->io.fd);
        p->io.fd = -1;
    }
    moat_timer_stop(&mon.loop, &p->tmo);
}

static void verdict(struct probe *p, bool ok, const char *err)
{
    struct moat_lb_origin *o = p->o;
    uint64_t dur = moat_wall_us() - p->start_us;
    end_io(p);
    atomic_fetch_add(&o->check_us_sum, dur);
    atomic_store(&o->last_check_ms, moat_wall_us() / 1000);
    if (ok) {
        atomic_fetch_add(&o->checks_ok, 1);
        uint64_t old = atomic_load(&o->rtt_us);
        atomic_store(&o->rtt_us, old ? (old * 7 + dur) / 8 : MOAT_MAX(dur, 1));
        o->mon_fail = 0;
        o->mon_pass++;
        if (!atomic_load(&o->up) && o->mon_pass >= p->rise) {
            atomic_store(&o->up_since_ms, moat_now_ms());
            atomic_store(&o->ejected_until_ms, 0);
            atomic_store(&o->fail_streak, 0);
            atomic_store(&o->up, 1);
            atomic_fetch_add(&o->transitions, 1);
            moat_log_info("origin %s (pool %s) is up after %u passing checks", o->o.addr.text,
                          o->pool, o->mon_pass);
        } else if (atomic_load(&o->ejected_until_ms) > moat_now_ms() && o->mon_pass >= p->rise) {
            /* An ejected origin returns through the monitor, not only after the period. */
            atomic_store(&o->ejected_until_ms, 0);
            atomic_store(&o->up_since_ms, moat_now_ms());
        }
        set_error(o, "");
    } else {
        atomic_fetch_add(&o->checks_failed, 1);
        o->mon_pass = 0;
        o->mon_fail++;
        set_error(o, err);
        if (atomic_load(&o->up) && o->mon_fail >= p->fall) {
            atomic_store(&o->up, 0);
            atomic_fetch_add(&o->transitions, 1);
            moat_log_warn("origin %s (pool %s) is down after %u failed checks: %s", o->o.addr.text,
                          o->pool, o->mon_fail, err);
        }
    }
    moat_timer_set(&mon.loop, &p->tick, p->interval_ms);
}

/* The answer so far: decided (true, with *ok) or not yet. */
static bool judge(struct probe *p, bool eof, bool *ok, char *err, size_t errlen)
{
    p->buf[p->len] = '\0';
    const char *eoh = strstr(p->buf, "\r\n\r\n");
    if (!eoh && !eof && p->len < PROBE_BUF)
        return false;
    unsigned status = 0;
    if (sscanf(p->buf, "HTTP/1.%*1[01] %3u", &status) != 1) {
        snprintf(err, errlen, p->len ? "not an HTTP response" : "closed without an answer");
        *ok = false;
        return true;
    }
    bool in = false;
    for (unsigned i = 0; i < p->nexpect && !in; i++)
        in = status >= p->lo[i] && status <= p->hi[i];
    if (!in) {
        snprintf(err, errlen, "status %u", status);
        *ok = false;
        return true;
    }
    if (!p->want_body) {
        *ok = true;
        return true;
    }
    if (eoh && strstr(eoh + 4, p->want)) {
        *ok = true;
        return true;
    }
    if (!eof && p->len < PROBE_BUF)
        return false;
    snprintf(err, errlen, "status %u but the body lacks \"%.60s\"", status, p->want);
    *ok = false;
    return true;
}

static void probe_io(struct moat_loop *loop, struct moat_io *io, uint32_t ev)
{
    struct probe *p = MOAT_CONTAINER_OF(io, struct probe, io);
    char err[96];
    if (!p->connected) {
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        if (soerr || (ev & (EPOLLERR | EPOLLHUP))) {
            snprintf(err, sizeof err, "connect: %s", strerror(soerr ? soerr : ECONNREFUSED));
            verdict(p, false, err);
            return;
        }
        if (!(ev & EPOLLOUT))
            return;
        p->connected = true;
        if (p->type == MOAT_MON_TCP) {
            verdict(p, true, NULL);
            return;
        }
    }
    if (!p->sent) {
        ssize_t n = send(io->fd, p->req + p->reqsent, p->reqlen - p->reqsent, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN) {
            snprintf(err, sizeof err, "send: %s", strerror(errno));
            verdict(p, false, err);
            return;
        }
        if (n > 0)
            p->reqsent += (size_t)n;
        if (p->reqsent < p->reqlen)
            return;
        p->sent = true;
        moat_loop_mod(&mon.loop, io, EPOLLIN | EPOLLRDHUP);
    }
    for (;;) {
        if (p->len >= PROBE_BUF)
            break;
        ssize_t n = recv(io->fd, p->buf + p->len, PROBE_BUF - p->len, 0);
        if (n > 0) {
            p->len += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            bool ok;
            if (judge(p, false, &ok, err, sizeof err))
                verdict(p, ok, err);
            return;
        }
        break; /* EOF or an error: judge what came */
    }
    bool ok;
    judge(p, true, &ok, err, sizeof err);
    verdict(p, ok, err);
}

static void probe_timeout(struct moat_loop *loop, struct moat_timer *t)
{
    struct probe *p = MOAT_CONTAINER_OF(t, struct probe, tmo);
    verdict(p, false, p->connected ? "timeout waiting for the answer" : "connect timeout");
}

static void probe_free(struct probe *p)
{
    end_io(p);
    moat_timer_stop(&mon.loop, &p->tick);
    p->o->probe = NULL;
    free(p->buf);
    free(p);
}

/* Starts a check as the pool's monitor says now; drops the probe when the origin no longer
 * has a monitor (it is then up, as origins without one are). */
static void probe_tick(struct moat_loop *loop, struct moat_timer *t)
{
    struct probe *p = MOAT_CONTAINER_OF(t, struct probe, tick);
    struct moat_lb_origin *o = p->o;
    const struct moat_cfg_pool *pc = pool_cfg(mon.cfg, o->pool);
    if (!pc || !pc->monitor || !atomic_load(&o->member)) {
        atomic_store(&o->up, 1);
        o->mon_pass = o->mon_fail = 0;
        probe_free(p);
        return;
    }
    const struct moat_cfg_monitor *m = pc->monitor;
    p->type = m->type;
    p->nexpect = m->nexpect;
    memcpy(p->lo, m->expect_lo, sizeof p->lo);
    memcpy(p->hi, m->expect_hi, sizeof p->hi);
    if (!p->nexpect) {
        p->nexpect = 1;
        p->lo[0] = 200;
        p->hi[0] = 399;
    }
    p->fall = m->fall;
    p->rise = m->rise;
    p->interval_ms = m->interval_ms;
    p->want_body = m->body != NULL;
    snprintf(p->want, sizeof p->want, "%s", m->body ? m->body : "");
    int n = snprintf(p->req, sizeof p->req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: moat-monitor\r\n"
                     "Connection: close\r\n\r\n",
                     m->path ? m->path : "/", m->host ? m->host : o->o.authority);
    p->reqlen = n > 0 ? MOAT_MIN((size_t)n, sizeof p->req - 1) : 0;
    p->reqsent = 0;
    p->len = 0;
    p->connected = p->sent = false;
    p->start_us = moat_wall_us();
    int fd = socket(o->o.addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    char err[96];
    if (fd < 0) {
        snprintf(err, sizeof err, "socket: %s", strerror(errno));
        verdict(p, false, err);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (const struct sockaddr *)&o->o.addr.ss, o->o.addr.len) < 0 &&
        errno != EINPROGRESS) {
        snprintf(err, sizeof err, "connect: %s", strerror(errno));
        close(fd);
        verdict(p, false, err);
        return;
    }
    p->io.fd = fd;
    p->io.cb = probe_io;
    if (moat_loop_add(&mon.loop, &p->io, EPOLLIN | EPOLLOUT | EPOLLRDHUP) != MOAT_OK) {
        close(fd);
        p->io.fd = -1;
        verdict(p, false, "epoll");
        return;
    }
    moat_timer_set(&mon.loop, &p->tmo, m->timeout_ms);
}

/* On the monitor thread: follow the installed configuration; probe every member origin of a
 * pool with a monitor that has no probe yet (its first check soon, spread over 100 ms). */
static void sync_cb(struct moat_loop *loop, void *arg)
{
    pthread_mutex_lock(&lb_reg.lock);
    struct moat_config *c = lb_reg.cur;
    if (c)
        moat_config_ref(c);
    struct moat_config *old = mon.cfg;
    mon.cfg = c;
    for (size_t i = 0; c && i < c->npools; i++) {
        if (!c->pools[i].monitor)
            continue;
        struct lb_pool *lp = lb_pool_get(c->pools[i].name);
        const struct lb_members *m = lp ? atomic_load(&lp->m) : NULL;
        for (size_t j = 0; m && j < m->n; j++) {
            struct moat_lb_origin *o = m->o[j];
            if (o->probe)
                continue;
            struct probe *p = calloc(1, sizeof *p);
            char *buf = malloc(PROBE_BUF + 1);
            if (!p || !buf) {
                free(p);
                free(buf);
                continue;
            }
            p->o = o;
            p->buf = buf;
            p->io.fd = -1;
            p->tick.cb = probe_tick;
            p->tmo.cb = probe_timeout;
            o->probe = p;
            moat_timer_set(&mon.loop, &p->tick, lb_rand() % 100);
        }
    }
    pthread_mutex_unlock(&lb_reg.lock);
    moat_config_release(&old);
    bool want = false;
    for (size_t i = 0; c && i < c->npools && !want; i++)
        want = c->pools[i].autoscale.exec != NULL;
    mon.autoscale.cb = autoscale_cb;
    if (want && !moat_timer_armed(&mon.autoscale))
        moat_timer_set(&mon.loop, &mon.autoscale, AUTOSCALE_TICK_MS);
}

static void *mon_main(void *arg)
{
    moat_loop_run(&mon.loop);
    return NULL;
}

void lb_monitor_sync(void)
{
    if (!mon.started) {
        if (moat_loop_init(&mon.loop) != MOAT_OK) {
            moat_log_error("monitors: cannot start their event loop: %s", strerror(errno));
            return;
        }
        if (pthread_create(&mon.th, NULL, mon_main, NULL) != 0) {
            moat_log_error("monitors: cannot start their thread");
            return;
        }
        pthread_setname_np(mon.th, "moat-monitor");
        mon.started = true;
    }
    moat_loop_post(&mon.loop, sync_cb, NULL);
}

static void stop_cb(struct moat_loop *loop, void *arg)
{
    moat_loop_stop(loop);
}

void moat_lb_shutdown(void)
{
    if (!mon.started)
        return;
    moat_loop_post(&mon.loop, stop_cb, NULL);
    pthread_join(mon.th, NULL);
    mon.started = false;
}
