/* loop.c: epoll event loop, timer min-heap, cross-thread post queue. */
#include "core/loop.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

struct moat_post {
    struct moat_post *next;
    moat_post_fn fn;
    void *arg;
};

uint64_t moat_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t moat_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int64_t moat_wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return (int64_t)ts.tv_sec;
}

static void drain_posts(struct moat_loop *loop, struct moat_io *io, uint32_t events)
{
    uint64_t v;
    (void)events;
    while (read(io->fd, &v, sizeof v) > 0)
        ;
    pthread_mutex_lock(&loop->post_lock);
    struct moat_post *p = loop->post_head;
    loop->post_head = loop->post_tail = NULL;
    pthread_mutex_unlock(&loop->post_lock);
    while (p) {
        struct moat_post *next = p->next;
        p->fn(loop, p->arg);
        free(p);
        p = next;
    }
}

int moat_loop_init(struct moat_loop *loop)
{
    memset(loop, 0, sizeof *loop);
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epfd < 0)
        return MOAT_ERR;
    loop->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (loop->evfd < 0) {
        close(loop->epfd);
        return MOAT_ERR;
    }
    pthread_mutex_init(&loop->post_lock, NULL);
    loop->evio.fd = loop->evfd;
    loop->evio.cb = drain_posts;
    loop->now_ms = moat_now_ms();
    if (moat_loop_add(loop, &loop->evio, EPOLLIN) != MOAT_OK) {
        moat_loop_destroy(loop);
        return MOAT_ERR;
    }
    return MOAT_OK;
}

void moat_loop_destroy(struct moat_loop *loop)
{
    struct moat_post *p = loop->post_head;
    while (p) {
        struct moat_post *next = p->next;
        free(p);
        p = next;
    }
    loop->post_head = loop->post_tail = NULL;
    if (loop->evfd >= 0)
        close(loop->evfd);
    if (loop->epfd >= 0)
        close(loop->epfd);
    loop->evfd = loop->epfd = -1;
    free(loop->heap);
    loop->heap = NULL;
    pthread_mutex_destroy(&loop->post_lock);
}

int moat_loop_add(struct moat_loop *loop, struct moat_io *io, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = io};
    return epoll_ctl(loop->epfd, EPOLL_CTL_ADD, io->fd, &ev) == 0 ? MOAT_OK : MOAT_ERR;
}

int moat_loop_mod(struct moat_loop *loop, struct moat_io *io, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = io};
    return epoll_ctl(loop->epfd, EPOLL_CTL_MOD, io->fd, &ev) == 0 ? MOAT_OK : MOAT_ERR;
}

void moat_loop_del(struct moat_loop *loop, struct moat_io *io)
{
    epoll_ctl(loop->epfd, EPOLL_CTL_DEL, io->fd, NULL);
}

/* --- timer heap: a binary min-heap on key, slots 1-based so 0 means "not queued" ---------- */

static void heap_place(struct moat_loop *loop, uint32_t i, struct moat_timer *t)
{
    loop->heap[i] = t;
    t->slot = i + 1;
}

static void sift_up(struct moat_loop *loop, uint32_t i)
{
    struct moat_timer *t = loop->heap[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (loop->heap[parent]->key <= t->key)
            break;
        heap_place(loop, i, loop->heap[parent]);
        i = parent;
    }
    heap_place(loop, i, t);
}

static void sift_down(struct moat_loop *loop, uint32_t i)
{
    struct moat_timer *t = loop->heap[i];
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        uint64_t mk = t->key;
        if (l < loop->nheap && loop->heap[l]->key < mk) {
            m = l;
            mk = loop->heap[l]->key;
        }
        if (r < loop->nheap && loop->heap[r]->key < mk)
            m = r;
        if (m == i)
            break;
        heap_place(loop, i, loop->heap[m]);
        i = m;
    }
    heap_place(loop, i, t);
}

static void heap_remove(struct moat_loop *loop, struct moat_timer *t)
{
    uint32_t i = t->slot - 1;
    t->slot = 0;
    loop->nheap--;
    if (i == loop->nheap)
        return;
    struct moat_timer *last = loop->heap[loop->nheap];
    heap_place(loop, i, last);
    if (i > 0 && loop->heap[(i - 1) / 2]->key > last->key)
        sift_up(loop, i);
    else
        sift_down(loop, i);
}

static void heap_push(struct moat_loop *loop, struct moat_timer *t)
{
    if (loop->nheap == loop->capheap) {
        uint32_t ncap = loop->capheap ? loop->capheap * 2 : 256;
        struct moat_timer **nh = realloc(loop->heap, ncap * sizeof *nh);
        if (!nh)
            abort(); /* a few KB per thousand connections; out of memory here is fatal */
        loop->heap = nh;
        loop->capheap = ncap;
    }
    loop->heap[loop->nheap] = t;
    t->slot = ++loop->nheap;
    sift_up(loop, loop->nheap - 1);
}

void moat_timer_set(struct moat_loop *loop, struct moat_timer *t, uint64_t ms)
{
    uint64_t d = loop->now_ms + ms;
    if (d == 0)
        d = 1;
    t->deadline = d;
    if (t->slot) {
        /* Later than the queued key: leave the heap alone; expiry re-queues. This makes the
         * common "activity pushes the timeout out" case O(1). */
        if (d >= t->key)
            return;
        t->key = d;
        sift_up(loop, t->slot - 1);
        return;
    }
    t->key = d;
    heap_push(loop, t);
}

void moat_timer_stop(struct moat_loop *loop, struct moat_timer *t)
{
    t->deadline = 0;
    if (t->slot)
        heap_remove(loop, t);
}

static int run_timers(struct moat_loop *loop)
{
    while (loop->nheap > 0) {
        struct moat_timer *t = loop->heap[0];
        if (t->key > loop->now_ms)
            return (int)MOAT_MIN(t->key - loop->now_ms, 60000u);
        heap_remove(loop, t);
        if (t->deadline > loop->now_ms) {
            t->key = t->deadline; /* pushed out since queued: re-queue at the real time */
            heap_push(loop, t);
            continue;
        }
        t->deadline = 0;
        t->cb(loop, t);
    }
    return -1;
}

int moat_loop_post(struct moat_loop *loop, moat_post_fn fn, void *arg)
{
    struct moat_post *p = malloc(sizeof *p);
    if (!p)
        return MOAT_ERR;
    p->next = NULL;
    p->fn = fn;
    p->arg = arg;
    pthread_mutex_lock(&loop->post_lock);
    if (loop->post_tail)
        loop->post_tail->next = p;
    else
        loop->post_head = p;
    loop->post_tail = p;
    pthread_mutex_unlock(&loop->post_lock);
    uint64_t one = 1;
    ssize_t w = write(loop->evfd, &one, sizeof one);
    (void)w; /* EAGAIN means the counter is already non-zero: a wake-up is pending */
    return MOAT_OK;
}

void moat_loop_stop(struct moat_loop *loop)
{
    loop->stop = true;
}

static void run_deferred(struct moat_loop *loop)
{
    while (loop->defer_head) {
        struct moat_defer *d = loop->defer_head;
        loop->defer_head = d->next;
        d->fn(d);
    }
}

static void dispatch(struct moat_loop *loop, const struct epoll_event *evs, int n)
{
    loop->now_ms = moat_now_ms();
    for (int i = 0; i < n; i++) {
        struct moat_io *io = evs[i].data.ptr;
        if (io->fd >= 0)
            io->cb(loop, io, evs[i].events);
    }
    run_deferred(loop);
}

/* Single-writer counters: a relaxed load and store, no locked instruction. */
static inline void bump(_Atomic uint64_t *c, uint64_t n)
{
    if (c)
        atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                              memory_order_relaxed);
}

/* Sleeps <us> microseconds. The thread's timer slack (50 us by default) would stretch a
 * pause this short several times over: it is cut to a tenth of the pause (1 us at least). */
static void nap(struct moat_loop *loop, uint32_t us)
{
    uint64_t slack = MOAT_MAX((uint64_t)us * 100u, 1000u);
    if (loop->slack_ns != slack) {
        prctl(PR_SET_TIMERSLACK, (unsigned long)slack, 0, 0, 0);
        loop->slack_ns = slack;
    }
    struct timespec ts = {.tv_sec = us / 1000000u, .tv_nsec = (long)(us % 1000000u) * 1000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

void moat_loop_run(struct moat_loop *loop)
{
    struct epoll_event evs[256];
    bool busy = false;  /* polling without blocking: nap_us is set and events keep coming */
    bool pause = false; /* busy: pause before the next poll (the last batch was not full) */
    loop->stop = false;
    while (!loop->stop) {
        loop->now_ms = moat_now_ms();
        int timeout = run_timers(loop);
        /* Work timers deferred runs now too (an HTTP/2 connection's output queued by a
         * timeout), not after the next event, which may never come. */
        if (loop->defer_head) {
            run_deferred(loop);
            timeout = 0; /* it may have armed timers or made events: look again at once */
        }
        if (loop->stop)
            break;
        if (busy && !loop->nap_us)
            busy = false; /* turned off by a reload */
        bool napped = busy && pause;
        if (napped)
            nap(loop, loop->nap_us);
        int n = epoll_wait(loop->epfd, evs, (int)MOAT_ARRAY_LEN(evs), busy ? 0 : timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (napped)
            bump(loop->c_naps, 1);
        else if (!busy && n > 0)
            bump(loop->c_wakeups, 1);
        if (n > 0) {
            bump(loop->c_events, (uint64_t)n);
            dispatch(loop, evs, n);
        }
        if (!loop->nap_us)
            continue;
        if (!busy) {
            /* Woken by an event (or a timer): batch from now on, unless a recent try
             * showed there was not the load for it. */
            if (n == 0)
                continue;
            if (loop->nap_skip) {
                loop->nap_skip--;
                continue;
            }
            busy = true;
        } else if (napped && n == 0) {
            /* Nothing came in a pause: sleep until something does, and let the next few
             * wake-ups block without a pause (light load pays a pause per
             * MOAT_NAP_IDLE_SKIP + 1 wake-ups, not one each). */
            busy = false;
            loop->nap_skip = MOAT_NAP_IDLE_SKIP;
            continue;
        }
        pause = n < MOAT_NAP_FULL; /* a full batch: more is surely waiting */
    }
}
