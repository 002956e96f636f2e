/* resolve.c: origins given by name, re-resolved (pools.*.resolve). An autoscaling group behind
 * one name: every address the name resolves to becomes a member origin of the pool (with the
 * name's Host), a new address joins (ramping under slow_start), an address that is gone
 * leaves the member list and its requests in flight finish.
 *
 * Resolution blocks (getaddrinfo), so it has a thread of its own: never a worker, and not the
 * monitors' loop either, whose checks must keep their rhythm whatever the DNS does. A failed
 * or empty answer keeps the last set: a DNS hiccup must not empty a pool.
 *
 * MOAT_RESOLVE_HOSTS=FILE (the environment) makes the resolver read FILE, in /etc/hosts
 * format, instead of asking DNS: a documented override for tests and for trying a change
 * before it is published. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "lb/lb-int.h"

static struct {
    pthread_t th;
    bool started;
} res;

static bool literal(const char *host)
{
    unsigned char b[16];
    char buf[300];
    size_t n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        snprintf(buf, sizeof buf, "%.*s", (int)(n - 2), host + 1);
        return inet_pton(AF_INET6, buf, b) == 1;
    }
    return inet_pton(AF_INET, host, b) == 1 || inet_pton(AF_INET6, host, b) == 1;
}

static uint16_t port_of(const struct moat_addr *a)
{
    if (a->ss.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
    return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
}

static void add_addr(struct lb_dns *d, const struct sockaddr *sa, uint16_t port)
{
    if (d->n >= LB_DNS_MAX)
        return;
    struct moat_addr a;
    memset(&a, 0, sizeof a);
    char num[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&a.ss;
        memcpy(s4, sa, sizeof *s4);
        s4->sin_port = htons(port);
        a.len = sizeof *s4;
        inet_ntop(AF_INET, &s4->sin_addr, num, sizeof num);
        snprintf(a.text, sizeof a.text, "%s:%u", num, port);
    } else if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a.ss;
        memcpy(s6, sa, sizeof *s6);
        s6->sin6_port = htons(port);
        a.len = sizeof *s6;
        inet_ntop(AF_INET6, &s6->sin6_addr, num, sizeof num);
        snprintf(a.text, sizeof a.text, "[%s]:%u", num, port);
    } else {
        return;
    }
    for (size_t i = 0; i < d->n; i++)
        if (strcmp(d->a[i].text, a.text) == 0)
            return;
    d->a[d->n++] = a;
}

/* MOAT_RESOLVE_HOSTS: "ADDR NAME [NAME...]" lines, '#' comments. */
static void from_file(const char *path, const char *host, uint16_t port, struct lb_dns *d)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *save = NULL, *addr = strtok_r(line, " \t\r\n", &save);
        if (!addr)
            continue;
        for (char *nm = strtok_r(NULL, " \t\r\n", &save); nm;
             nm = strtok_r(NULL, " \t\r\n", &save)) {
            if (strcasecmp(nm, host) != 0)
                continue;
            struct sockaddr_in s4 = {.sin_family = AF_INET};
            struct sockaddr_in6 s6 = {.sin6_family = AF_INET6};
            if (inet_pton(AF_INET, addr, &s4.sin_addr) == 1)
                add_addr(d, (struct sockaddr *)&s4, port);
            else if (inet_pton(AF_INET6, addr, &s6.sin6_addr) == 1)
                add_addr(d, (struct sockaddr *)&s6, port);
        }
    }
    fclose(f);
}

static void lookup(const char *host, uint16_t port, struct lb_dns *d)
{
    d->n = 0;
    const char *file = getenv("MOAT_RESOLVE_HOSTS");
    if (file && *file) {
        from_file(file, host, port, d);
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    if (getaddrinfo(host, NULL, &hints, &ai) != 0)
        return;
    for (struct addrinfo *p = ai; p; p = p->ai_next)
        add_addr(d, p->ai_addr, port);
    freeaddrinfo(ai);
}

static bool same(const struct lb_dns *a, const struct lb_dns *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++) {
        bool found = false;
        for (size_t j = 0; j < b->n && !found; j++)
            found = strcmp(a->a[i].text, b->a[j].text) == 0;
        if (!found)
            return false;
    }
    return true;
}

/* One pass: every pool due for it resolves its named origins (outside the lock), then
 * publishes a new member list if an answer changed. */
static void pass(void)
{
    pthread_mutex_lock(&lb_reg.lock);
    struct moat_config *c = lb_reg.cur;
    if (c)
        moat_config_ref(c);
    pthread_mutex_unlock(&lb_reg.lock);
    uint64_t now = moat_now_ms();
    bool changed_any = false;
    for (size_t i = 0; c && i < c->npools; i++) {
        const struct moat_cfg_pool *pc = &c->pools[i];
        if (!pc->resolve_ms)
            continue;
        pthread_mutex_lock(&lb_reg.lock);
        struct lb_pool *lp = lb_pool_get(pc->name);
        bool due = lp && now >= lp->resolved_ms + pc->resolve_ms;
        if (due)
            lp->resolved_ms = now;
        pthread_mutex_unlock(&lb_reg.lock);
        if (!due)
            continue;
        bool changed = false;
        for (size_t k = 0; k < pc->norigins; k++) {
            const struct moat_cfg_origin *o = &pc->origins[k];
            if (!o->host || literal(o->host))
                continue;
            struct lb_dns d;
            memset(&d, 0, sizeof d);
            snprintf(d.text, sizeof d.text, "%s", o->addr.text);
            lookup(o->host, port_of(&o->addr), &d);
            if (!d.n)
                continue; /* keep the last answer */
            pthread_mutex_lock(&lb_reg.lock);
            struct lb_dns *cur = NULL;
            for (size_t j = 0; j < lp->ndns && !cur; j++)
                if (strcmp(lp->dns[j].text, d.text) == 0)
                    cur = &lp->dns[j];
            if (!cur && lp->ndns < LB_MAX_ADDED) {
                cur = &lp->dns[lp->ndns++];
                cur->n = 0;
            }
            if (cur && !same(cur, &d)) {
                moat_log_info("pool %s: %s now resolves to %zu address%s", lp->name, d.text, d.n,
                              d.n == 1 ? "" : "es");
                *cur = d;
                changed = true;
            }
            pthread_mutex_unlock(&lb_reg.lock);
        }
        if (changed) {
            pthread_mutex_lock(&lb_reg.lock);
            /* Rebuilt against the installed configuration's pool, which may be newer. */
            const struct moat_config *ic = lb_reg.cur;
            for (size_t j = 0; ic && j < ic->npools; j++)
                if (strcmp(ic->pools[j].name, lp->name) == 0)
                    lb_pool_rebuild(lp, &ic->pools[j]);
            pthread_mutex_unlock(&lb_reg.lock);
            changed_any = true;
        }
    }
    moat_config_release(&c);
    if (changed_any)
        lb_monitor_sync();
}

static void *res_main(void *arg)
{
    for (;;) {
        pass();
        usleep(100 * 1000);
    }
    return NULL;
}

void lb_resolver_start(const struct moat_config *c)
{
    bool want = false;
    for (size_t i = 0; i < c->npools && !want; i++)
        want = c->pools[i].resolve_ms > 0;
    if (!want || res.started)
        return;
    if (pthread_create(&res.th, NULL, res_main, NULL) != 0) {
        moat_log_error("resolver: cannot start its thread: %s", strerror(errno));
        return;
    }
    pthread_detach(res.th);
    pthread_setname_np(res.th, "moat-resolver");
    res.started = true;
}
