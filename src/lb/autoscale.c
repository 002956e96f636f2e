/* autoscale.c: the scaling hook (pools.*.autoscale). On the monitor thread, every
 * AUTOSCALE_TICK_MS, each pool with a hook compares its requests in flight per usable origin
 * with `above` and `below`; when the figure stays beyond one of them for `for`, the command
 * runs with the pool's name and scale_out or scale_in as arguments and the figures as JSON on
 * stdin, then nothing runs for `cooldown`. The command is started with posix_spawn and never
 * waited for on the spot: children are reaped on later ticks, so a slow script holds up
 * neither the monitors nor any worker. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lb/lb-int.h"

extern char **environ;

/* Children not reaped yet (monitor thread only); only these are waited for. */
#define KIDS_MAX 64
static pid_t kids[KIDS_MAX];
static size_t nkids;

static void reap(void)
{
    for (size_t i = 0; i < nkids;) {
        if (waitpid(kids[i], NULL, WNOHANG) != 0) {
            kids[i] = kids[--nkids];
            continue;
        }
        i++;
    }
}

static void run(const struct moat_cfg_pool *pc, struct lb_pool *lp, const char *action,
                size_t usable, size_t members, uint64_t inflight)
{
    json_t *j = json_pack(
        "{s:s, s:s, s:I, s:I, s:I, s:f, s:I, s:I}", "pool", lp->name, "action", action, "origins",
        (json_int_t)members, "usable", (json_int_t)usable, "in_flight", (json_int_t)inflight,
        "per_origin", usable ? (double)inflight / (double)usable : (double)inflight, "above",
        (json_int_t)pc->autoscale.above, "below", (json_int_t)pc->autoscale.below);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    int fds[2];
    if (!text || pipe2(fds, O_CLOEXEC) != 0) {
        free(text);
        moat_log_error("autoscale: pool %s: cannot run %s: %s", lp->name, pc->autoscale.exec,
                       strerror(errno));
        return;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[0], 0);
    char *argv[] = {pc->autoscale.exec, lp->name, (char *)action, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, pc->autoscale.exec, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[0]);
    if (rc != 0) {
        moat_log_error("autoscale: pool %s: cannot run %s: %s", lp->name, pc->autoscale.exec,
                       strerror(rc));
    } else {
        /* The figures are a few hundred bytes: the pipe takes them without blocking. */
        size_t len = strlen(text);
        /* SIGPIPE is ignored process-wide (main.c): a script that exits unread is EPIPE. */
        if (write(fds[1], text, len) != (ssize_t)len || write(fds[1], "\n", 1) != 1)
            moat_log_warn("autoscale: pool %s: %s did not read its input", lp->name,
                          pc->autoscale.exec);
        moat_log_info("autoscale: pool %s: %s (%s, pid %d)", lp->name, action, text, (int)pid);
        if (nkids < KIDS_MAX)
            kids[nkids++] = pid;
    }
    close(fds[1]);
    free(text);
}

void lb_autoscale_tick(const struct moat_config *c)
{
    reap();
    uint64_t now = moat_now_ms();
    for (size_t i = 0; c && i < c->npools; i++) {
        const struct moat_cfg_pool *pc = &c->pools[i];
        if (!pc->autoscale.exec)
            continue;
        pthread_mutex_lock(&lb_reg.lock);
        struct lb_pool *lp = lb_pool_get(pc->name);
        pthread_mutex_unlock(&lb_reg.lock);
        const struct lb_members *m = lp ? atomic_load(&lp->m) : NULL;
        if (!m)
            continue;
        size_t usable = lb_pool_usable(m, now);
        uint64_t inflight = 0;
        for (size_t k = 0; k < m->n; k++)
            inflight += atomic_load_explicit(&m->o[k]->inflight, memory_order_relaxed);
        /* per usable origin, compared without dividing: inflight > above * usable */
        uint64_t u = usable ? usable : 1;
        bool above = inflight > (uint64_t)pc->autoscale.above * u;
        bool below = pc->autoscale.below && inflight < (uint64_t)pc->autoscale.below * u;
        lp->above_since_ms = above ? (lp->above_since_ms ? lp->above_since_ms : now) : 0;
        lp->below_since_ms = below ? (lp->below_since_ms ? lp->below_since_ms : now) : 0;
        if (lp->fired_ms && now < lp->fired_ms + pc->autoscale.cooldown_ms)
            continue;
        const char *action = NULL;
        if (lp->above_since_ms && now >= lp->above_since_ms + pc->autoscale.for_ms) {
            action = "scale_out";
            atomic_fetch_add(&lp->scale_out, 1);
        } else if (lp->below_since_ms && now >= lp->below_since_ms + pc->autoscale.for_ms) {
            action = "scale_in";
            atomic_fetch_add(&lp->scale_in, 1);
        }
        if (!action)
            continue;
        lp->fired_ms = now;
        lp->above_since_ms = lp->below_since_ms = 0;
        run(pc, lp, action, usable, m->n, inflight);
    }
}
