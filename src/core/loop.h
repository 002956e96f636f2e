/* loop.h: one epoll event loop per thread, with a timer heap and a cross-thread post queue. */
#ifndef MOAT_CORE_LOOP_H
#define MOAT_CORE_LOOP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/epoll.h>

#include "core/common.h"

struct moat_loop;
struct moat_io;
struct moat_timer;

/* Called on the loop's thread with the epoll event bits that fired for <io>. */
typedef void (*moat_io_cb)(struct moat_loop *loop, struct moat_io *io, uint32_t events);
/* Called on the loop's thread when <t> expires; <t> is no longer armed. */
typedef void (*moat_timer_cb)(struct moat_loop *loop, struct moat_timer *t);
/* A function posted to run on a loop's thread. */
typedef void (*moat_post_fn)(struct moat_loop *loop, void *arg);

/* A file descriptor registered with a loop. Embed it in the owner and recover the owner with
 * MOAT_CONTAINER_OF in the callback. */
struct moat_io {
    int fd;
    moat_io_cb cb;
};

/* A one-shot timer. Embed it; zero-initialise, then set <cb>. Re-arming with a later deadline
 * is O(1) (the heap keeps the earlier key and the expiry path re-queues it), so per-I/O
 * timeout resets cost nothing on the hot path. */
struct moat_timer {
    uint64_t deadline; /* ms, monotonic; 0 = not armed */
    uint64_t key;      /* the deadline the heap is ordered by (<= deadline) */
    uint32_t slot;     /* index in the heap + 1; 0 = not in the heap */
    moat_timer_cb cb;
};

struct moat_post;

/* Work deferred to the end of the current batch of events: owners free connections through
 * this so an event for the same object later in the batch never touches freed memory
 * (the owner also sets its io.fd to -1, which makes the loop skip such events). */
struct moat_defer {
    struct moat_defer *next;
    void (*fn)(struct moat_defer *d);
};

struct moat_loop {
    int epfd;
    int evfd; /* eventfd for cross-thread posts */
    struct moat_io evio;
    bool stop;
    uint64_t now_ms; /* cached monotonic time in ms, updated each iteration */
    struct moat_timer **heap;
    uint32_t nheap, capheap;
    pthread_mutex_t post_lock;
    struct moat_post *post_head, *post_tail;
    struct moat_defer *defer_head;
    void *data; /* owner's pointer (the worker) */
    /* Batching under load (the owner sets these; 0 / NULL = off). See moat_loop_run. */
    uint32_t nap_us;   /* pause before polling again while busy */
    uint64_t slack_ns; /* the thread's timer slack as last set (0 = never set) */
    unsigned nap_skip; /* blocking wake-ups left before the next nap is tried */
    _Atomic uint64_t *c_wakeups, *c_naps, *c_events; /* counters to bump, if set */
};

/* Initialises <loop>. Returns MOAT_OK or MOAT_ERR (errno set). */
int moat_loop_init(struct moat_loop *loop);
void moat_loop_destroy(struct moat_loop *loop);

/* Registers <io> (fd and cb set) for <events> (EPOLLIN/EPOLLOUT/EPOLLET/EPOLLRDHUP...).
 * Returns MOAT_OK or MOAT_ERR. */
int moat_loop_add(struct moat_loop *loop, struct moat_io *io, uint32_t events);
int moat_loop_mod(struct moat_loop *loop, struct moat_io *io, uint32_t events);
/* Unregisters <io>; closing the fd does that too. */
void moat_loop_del(struct moat_loop *loop, struct moat_io *io);

/* Arms <t> to fire <ms> from the loop's current time (re-arms if armed). */
void moat_timer_set(struct moat_loop *loop, struct moat_timer *t, uint64_t ms);
void moat_timer_stop(struct moat_loop *loop, struct moat_timer *t);
static inline bool moat_timer_armed(const struct moat_timer *t)
{
    return t->deadline != 0;
}

/* Runs <fn>(<arg>) on <loop>'s thread soon. Safe from any thread. Returns MOAT_ERR only when
 * out of memory, and then <fn> is never called. */
int moat_loop_post(struct moat_loop *loop, moat_post_fn fn, void *arg);

/* Runs <d>->fn(<d>) after the current batch of events (loop thread). */
static inline void moat_loop_defer(struct moat_loop *loop, struct moat_defer *d)
{
    d->next = loop->defer_head;
    loop->defer_head = d;
}

/* Runs until moat_loop_stop(). With <nap_us> set, a loop that finds work does not go back to
 * epoll_wait() to sleep until the next event, which costs a wake-up (an IPI from the core
 * whose packet arrived) per event or two under load: while busy, it pauses <nap_us>
 * microseconds after each batch (a timer sleep: no socket wakes it) and then polls without
 * blocking, so that events come in batches; after a batch of MOAT_NAP_FULL events or more it
 * polls again at once. It keeps pausing as long as every pause collects something: a pause
 * costs about what the blocking wake-up it replaces does, so one event per pause already
 * pays, and the wake-ups it saves are paid on the other cores. A pause that collects nothing
 * means the load is not there: the loop blocks again, without pauses for the next
 * MOAT_NAP_IDLE_SKIP wake-ups. An idle or lightly loaded loop so pays almost nothing (an event
 * arriving during a pause waits for it). */
void moat_loop_run(struct moat_loop *loop);
#define MOAT_NAP_FULL      32 /* a batch this big polls again at once, without a pause */
#define MOAT_NAP_IDLE_SKIP 16 /* blocking wake-ups without pauses after an empty pause */
/* Asks the loop to return from moat_loop_run after the current iteration (loop thread). */
void moat_loop_stop(struct moat_loop *loop);

/* Monotonic milliseconds now (coarse clock: cheap, ~4 ms resolution). */
uint64_t moat_now_ms(void);
/* Wall-clock time in microseconds since the epoch. */
uint64_t moat_wall_us(void);
/* Wall-clock seconds since the epoch from the coarse clock (a few ms behind at most, a third
 * of the cost): for Date, Age and freshness, which count whole seconds. */
int64_t moat_wall_s(void);

#endif
