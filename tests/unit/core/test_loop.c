/* test_loop.c: unit tests for the event loop (src/core/loop.c): the timer heap driven by hand,
 * cross-thread posts, deferred work, events for objects closed earlier in the same batch, and
 * batching under load (nap_us).
 *
 * loop.c is included to reach run_timers() and the heap; every symbol it defines is then
 * defined here, so the linker never pulls loop.o out of libmoat.a. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>
#include <fcntl.h>

#include "core/loop.c"

/* --- helpers ----------------------------------------------------------------------------- */

/* Checks the heap invariants: slots match positions, parents are not later than children, a
 * queued key is never later than its timer's deadline. */
static void check_heap(const struct moat_loop *loop)
{
    for (uint32_t i = 0; i < loop->nheap; i++) {
        const struct moat_timer *t = loop->heap[i];
        assert_int_equal(t->slot, i + 1);
        assert_true(t->deadline == 0 || t->key <= t->deadline);
        if (i > 0)
            assert_true(loop->heap[(i - 1) / 2]->key <= t->key);
    }
}

struct rec {
    struct moat_timer t;
    uint64_t want;     /* deadline we expect it to fire at */
    uint64_t fired_at; /* loop->now_ms when it fired, 0 = never */
    unsigned fires;
};

static uint64_t *order;
static size_t norder;

static void rec_cb(struct moat_loop *loop, struct moat_timer *t)
{
    struct rec *r = MOAT_CONTAINER_OF(t, struct rec, t);
    assert_false(moat_timer_armed(t)); /* disarmed before the callback runs */
    assert_int_equal(t->slot, 0);
    r->fired_at = loop->now_ms;
    r->fires++;
    if (order)
        order[norder++] = loop->now_ms;
}

static int setup(void **state)
{
    struct moat_loop *loop = calloc(1, sizeof *loop);
    assert_non_null(loop);
    assert_int_equal(moat_loop_init(loop), MOAT_OK);
    loop->now_ms = 1000000; /* the tests drive the clock from here */
    *state = loop;
    order = NULL;
    norder = 0;
    return 0;
}

static int teardown(void **state)
{
    struct moat_loop *loop = *state;
    moat_loop_destroy(loop);
    free(loop);
    free(order);
    order = NULL;
    return 0;
}

/* Advances the clock one millisecond at a time up to <until>, running timers at each. */
static void advance(struct moat_loop *loop, uint64_t until)
{
    while (loop->now_ms < until) {
        loop->now_ms++;
        run_timers(loop);
        check_heap(loop);
    }
}

/* --- timers ------------------------------------------------------------------------------ */

static void test_timers_fire_in_deadline_order(void **state)
{
    struct moat_loop *loop = *state;
    enum { N = 2000 }; /* several times the initial heap capacity: exercises growth */
    struct rec *rs = calloc(N, sizeof *rs);
    order = calloc(N, sizeof *order);
    assert_non_null(rs);
    assert_non_null(order);
    srand(12345);
    uint64_t start = loop->now_ms, last = 0;
    for (int i = 0; i < N; i++) {
        uint64_t ms = (uint64_t)(rand() % 5000) + 1;
        rs[i].t.cb = rec_cb;
        rs[i].want = start + ms;
        moat_timer_set(loop, &rs[i].t, ms);
        assert_true(moat_timer_armed(&rs[i].t));
        if (rs[i].want > last)
            last = rs[i].want;
    }
    assert_int_equal(loop->nheap, N);
    check_heap(loop);
    /* Nothing is due yet: the runner says how long to sleep (capped at 60 s). */
    int wait = run_timers(loop);
    assert_true(wait >= 1 && wait <= 5000);
    advance(loop, last);
    assert_int_equal(norder, N);
    for (size_t i = 1; i < norder; i++)
        assert_true(order[i - 1] <= order[i]);
    for (int i = 0; i < N; i++) {
        assert_int_equal(rs[i].fires, 1);
        assert_int_equal(rs[i].fired_at, rs[i].want); /* not a millisecond early or late */
    }
    assert_int_equal(loop->nheap, 0);
    assert_int_equal(run_timers(loop), -1); /* nothing armed: wait for I/O forever */
    free(rs);
}

static void test_zero_ms_fires_on_next_run(void **state)
{
    struct moat_loop *loop = *state;
    struct rec r = {.t.cb = rec_cb};
    moat_timer_set(loop, &r.t, 0);
    assert_true(moat_timer_armed(&r.t));
    run_timers(loop);
    assert_int_equal(r.fires, 1);
    assert_int_equal(r.fired_at, loop->now_ms);
}

static void test_timeout_is_capped(void **state)
{
    struct moat_loop *loop = *state;
    struct rec r = {.t.cb = rec_cb};
    moat_timer_set(loop, &r.t, 3600 * 1000);
    assert_int_equal(run_timers(loop), 60000);
    moat_timer_stop(loop, &r.t);
}

static void test_rearm_later_is_lazy_and_fires_at_new_deadline(void **state)
{
    struct moat_loop *loop = *state;
    uint64_t t0 = loop->now_ms;
    struct rec r = {.t.cb = rec_cb}, other = {.t.cb = rec_cb};
    moat_timer_set(loop, &other.t, 300);
    moat_timer_set(loop, &r.t, 100);
    struct moat_timer **heap_before = loop->heap;
    uint32_t slot = r.t.slot;
    /* Push it out: the heap is not touched (same slot, same key), only the deadline moves. */
    moat_timer_set(loop, &r.t, 500);
    assert_int_equal(r.t.slot, slot);
    assert_ptr_equal(loop->heap, heap_before);
    assert_int_equal(r.t.key, t0 + 100);
    assert_int_equal(r.t.deadline, t0 + 500);
    check_heap(loop);
    /* The early key costs one spurious wake-up, no more: at t0+100 it is re-queued. */
    advance(loop, t0 + 100);
    assert_int_equal(r.fires, 0);
    assert_true(moat_timer_armed(&r.t));
    assert_int_equal(r.t.key, t0 + 500);
    advance(loop, t0 + 499);
    assert_int_equal(r.fires, 0);
    assert_int_equal(other.fires, 1);
    assert_int_equal(other.fired_at, t0 + 300);
    advance(loop, t0 + 500);
    assert_int_equal(r.fires, 1);
    assert_int_equal(r.fired_at, t0 + 500);
}

static void test_rearm_repeatedly_later(void **state)
{
    /* The per-I/O pattern: every read pushes the timeout out again. It must fire once, at
     * the last deadline set. */
    struct moat_loop *loop = *state;
    struct rec r = {.t.cb = rec_cb};
    moat_timer_set(loop, &r.t, 50);
    for (int i = 0; i < 200; i++) {
        advance(loop, loop->now_ms + 10);
        moat_timer_set(loop, &r.t, 50);
    }
    uint64_t want = loop->now_ms + 50;
    assert_int_equal(r.fires, 0);
    advance(loop, want + 100);
    assert_int_equal(r.fires, 1);
    assert_int_equal(r.fired_at, want);
}

static void test_rearm_earlier_moves_up(void **state)
{
    struct moat_loop *loop = *state;
    uint64_t t0 = loop->now_ms;
    struct rec rs[64];
    memset(rs, 0, sizeof rs);
    for (int i = 0; i < 64; i++) {
        rs[i].t.cb = rec_cb;
        moat_timer_set(loop, &rs[i].t, 1000 + (uint64_t)i);
    }
    struct rec *r = &rs[63]; /* the latest, somewhere deep in the heap */
    moat_timer_set(loop, &r->t, 10);
    assert_int_equal(r->t.key, t0 + 10);
    assert_ptr_equal(loop->heap[0], &r->t);
    check_heap(loop);
    advance(loop, t0 + 10);
    assert_int_equal(r->fires, 1);
    assert_int_equal(r->fired_at, t0 + 10);
    for (int i = 0; i < 63; i++)
        assert_int_equal(rs[i].fires, 0);
    advance(loop, t0 + 2000);
    for (int i = 0; i < 63; i++)
        assert_int_equal(rs[i].fired_at, t0 + 1000 + (uint64_t)i);
    assert_int_equal(r->fires, 1);
}

static void test_rearm_earlier_after_lazy_later(void **state)
{
    /* Later (lazy: key stays), then earlier than the original key: the key must drop. */
    struct moat_loop *loop = *state;
    uint64_t t0 = loop->now_ms;
    struct rec r = {.t.cb = rec_cb};
    moat_timer_set(loop, &r.t, 100);
    moat_timer_set(loop, &r.t, 900);
    moat_timer_set(loop, &r.t, 40);
    assert_int_equal(r.t.key, t0 + 40);
    assert_int_equal(r.t.deadline, t0 + 40);
    advance(loop, t0 + 1000);
    assert_int_equal(r.fires, 1);
    assert_int_equal(r.fired_at, t0 + 40);
    /* Later, then earlier but still after the original key: fires at the last deadline. */
    t0 = loop->now_ms;
    moat_timer_set(loop, &r.t, 100);
    moat_timer_set(loop, &r.t, 900);
    moat_timer_set(loop, &r.t, 300);
    advance(loop, t0 + 1000);
    assert_int_equal(r.fires, 2);
    assert_int_equal(r.fired_at, t0 + 300);
}

static void test_stop_removes(void **state)
{
    struct moat_loop *loop = *state;
    uint64_t t0 = loop->now_ms;
    struct rec rs[100];
    memset(rs, 0, sizeof rs);
    for (int i = 0; i < 100; i++) {
        rs[i].t.cb = rec_cb;
        moat_timer_set(loop, &rs[i].t, (uint64_t)((i * 37) % 100) + 1);
    }
    /* Stop every third one, from all over the heap, including the root. */
    struct moat_timer *root = loop->heap[0];
    moat_timer_stop(loop, root);
    for (int i = 0; i < 100; i += 3) {
        moat_timer_stop(loop, &rs[i].t);
        assert_false(moat_timer_armed(&rs[i].t));
        assert_int_equal(rs[i].t.slot, 0);
        check_heap(loop);
    }
    /* Stopping twice, or a timer never armed, is harmless. */
    moat_timer_stop(loop, &rs[0].t);
    struct rec never = {.t.cb = rec_cb};
    moat_timer_stop(loop, &never.t);
    advance(loop, t0 + 200);
    for (int i = 0; i < 100; i++) {
        bool stopped = i % 3 == 0 || &rs[i].t == root;
        assert_int_equal(rs[i].fires, stopped ? 0 : 1);
    }
    assert_int_equal(loop->nheap, 0);
}

static void test_stop_after_lazy_rearm(void **state)
{
    struct moat_loop *loop = *state;
    uint64_t t0 = loop->now_ms;
    struct rec r = {.t.cb = rec_cb};
    moat_timer_set(loop, &r.t, 10);
    moat_timer_set(loop, &r.t, 500);
    moat_timer_stop(loop, &r.t);
    assert_int_equal(loop->nheap, 0);
    advance(loop, t0 + 1000);
    assert_int_equal(r.fires, 0);
    /* And it can be armed again afterwards. */
    moat_timer_set(loop, &r.t, 5);
    advance(loop, loop->now_ms + 5);
    assert_int_equal(r.fires, 1);
}

struct periodic {
    struct moat_timer t;
    unsigned fires, max;
    uint64_t last;
};

static void periodic_cb(struct moat_loop *loop, struct moat_timer *t)
{
    struct periodic *p = MOAT_CONTAINER_OF(t, struct periodic, t);
    p->fires++;
    p->last = loop->now_ms;
    if (p->fires < p->max)
        moat_timer_set(loop, t, 10); /* re-arm from inside the callback */
}

static void test_callback_rearms_itself(void **state)
{
    struct moat_loop *loop = *state;
    uint64_t t0 = loop->now_ms;
    struct periodic p = {.t.cb = periodic_cb, .max = 25};
    moat_timer_set(loop, &p.t, 10);
    advance(loop, t0 + 1000);
    assert_int_equal(p.fires, 25);
    assert_int_equal(p.last, t0 + 250);
    assert_false(moat_timer_armed(&p.t));
}

struct pair {
    struct moat_timer a, b;
    unsigned afires, bfires;
};

static void pair_a_cb(struct moat_loop *loop, struct moat_timer *t)
{
    struct pair *p = MOAT_CONTAINER_OF(t, struct pair, a);
    p->afires++;
    moat_timer_stop(loop, &p->b); /* due at the same time, but stopped before it runs */
}

static void pair_b_cb(struct moat_loop *loop, struct moat_timer *t)
{
    struct pair *p = MOAT_CONTAINER_OF(t, struct pair, b);
    (void)loop;
    p->bfires++;
}

static void test_callback_stops_another_due_timer(void **state)
{
    struct moat_loop *loop = *state;
    struct pair p = {.a.cb = pair_a_cb, .b.cb = pair_b_cb};
    moat_timer_set(loop, &p.a, 5);
    moat_timer_set(loop, &p.b, 6);
    advance(loop, loop->now_ms + 10);
    assert_int_equal(p.afires, 1);
    assert_int_equal(p.bfires, 0);
}

/* --- moat_loop_run: posts, defers, stale events ---------------------------------------------- */

static void fail_after(struct moat_loop *loop, struct moat_timer *t)
{
    (void)loop;
    (void)t;
    fail_msg("the loop did not stop in time");
}

static void arm_watchdog(struct moat_loop *loop, struct moat_timer *t)
{
    memset(t, 0, sizeof *t);
    t->cb = fail_after;
    loop->now_ms = moat_now_ms(); /* back to the real clock for moat_loop_run */
    moat_timer_set(loop, t, 5000);
}

struct post_ctx {
    pthread_t loop_thread;
    pthread_t ran_on;
    int ran;
    struct moat_loop *loop;
};

static void posted_fn(struct moat_loop *loop, void *arg)
{
    struct post_ctx *p = arg;
    p->ran_on = pthread_self();
    p->ran++;
    moat_loop_stop(loop);
}

static void *poster(void *arg)
{
    struct post_ctx *p = arg;
    usleep(20000); /* let the loop block in epoll_wait first */
    if (moat_loop_post(p->loop, posted_fn, p) != MOAT_OK)
        abort();
    return NULL;
}

static void test_post_runs_on_loop_thread(void **state)
{
    struct moat_loop *loop = *state;
    struct moat_timer wd;
    arm_watchdog(loop, &wd);
    struct post_ctx p = {.loop_thread = pthread_self(), .loop = loop};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, poster, &p), 0);
    moat_loop_run(loop);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(p.ran, 1);
    assert_true(pthread_equal(p.ran_on, p.loop_thread));
    moat_timer_stop(loop, &wd);
}

enum { POSTERS = 4, POSTS_EACH = 5000 };

struct many_ctx {
    struct moat_loop *loop;
    pthread_t loop_thread;
    int last[POSTERS]; /* last sequence number seen per poster: FIFO per poster */
    int total;
    bool wrong_thread, out_of_order;
};

struct many_arg {
    struct many_ctx *ctx;
    int poster;
    int seq;
};

static void many_fn(struct moat_loop *loop, void *arg)
{
    struct many_arg *a = arg;
    struct many_ctx *m = a->ctx;
    if (!pthread_equal(pthread_self(), m->loop_thread))
        m->wrong_thread = true;
    if (a->seq != m->last[a->poster] + 1)
        m->out_of_order = true;
    m->last[a->poster] = a->seq;
    free(a);
    if (++m->total == POSTERS * POSTS_EACH)
        moat_loop_stop(loop);
}

struct poster_arg {
    struct many_ctx *ctx;
    int id;
};

static void *many_poster(void *arg)
{
    struct poster_arg *pa = arg;
    for (int i = 0; i < POSTS_EACH; i++) {
        struct many_arg *a = malloc(sizeof *a);
        if (!a)
            abort();
        *a = (struct many_arg){pa->ctx, pa->id, i};
        if (moat_loop_post(pa->ctx->loop, many_fn, a) != MOAT_OK)
            abort();
    }
    return NULL;
}

static void test_posts_from_many_threads(void **state)
{
    struct moat_loop *loop = *state;
    struct moat_timer wd;
    arm_watchdog(loop, &wd);
    struct many_ctx m = {.loop = loop, .loop_thread = pthread_self()};
    for (int i = 0; i < POSTERS; i++)
        m.last[i] = -1;
    pthread_t ts[POSTERS];
    struct poster_arg pas[POSTERS];
    for (int i = 0; i < POSTERS; i++) {
        pas[i] = (struct poster_arg){&m, i};
        assert_int_equal(pthread_create(&ts[i], NULL, many_poster, &pas[i]), 0);
    }
    moat_loop_run(loop);
    for (int i = 0; i < POSTERS; i++)
        assert_int_equal(pthread_join(ts[i], NULL), 0);
    assert_int_equal(m.total, POSTERS * POSTS_EACH);
    assert_false(m.wrong_thread);
    assert_false(m.out_of_order);
    moat_timer_stop(loop, &wd);
}

static void test_destroy_frees_pending_posts(void **state)
{
    /* Posts never run (the loop never ran) are freed by destroy; ASan checks the leak. */
    struct moat_loop *loop = *state;
    int ran = 0;
    for (int i = 0; i < 10; i++)
        assert_int_equal(moat_loop_post(loop, posted_fn, &ran), MOAT_OK);
    assert_int_equal(ran, 0);
}

/* Two pipes made readable before the loop runs, so both events come in one batch. */
struct ev {
    struct moat_io io;
    int wfd;
    struct ev *other;
    struct moat_defer defer;
    int calls;
    bool defer_ran_when_called;
};

static int deferred_runs;
static bool in_batch_after_defer;
static struct ev *evs_all[2];

static void defer_fn(struct moat_defer *d)
{
    struct ev *e = MOAT_CONTAINER_OF(d, struct ev, defer);
    deferred_runs++;
    /* Every event of the batch has been handled before any deferred work runs. */
    for (int i = 0; i < 2; i++)
        if (evs_all[i]->io.fd >= 0 && evs_all[i]->calls == 0)
            in_batch_after_defer = true;
    (void)e;
}

static void stop_cb(struct moat_loop *loop, struct moat_timer *t)
{
    (void)t;
    moat_loop_stop(loop);
}

static void ev_defer_cb(struct moat_loop *loop, struct moat_io *io, uint32_t events)
{
    struct ev *e = MOAT_CONTAINER_OF(io, struct ev, io);
    (void)events;
    char b[16];
    while (read(io->fd, b, sizeof b) > 0)
        ;
    e->calls++;
    e->defer_ran_when_called = deferred_runs > 0;
    moat_loop_defer(loop, &e->defer);
    moat_loop_stop(loop); /* the loop finishes the batch and its deferred work first */
}

static void ev_read_cb(struct moat_loop *loop, struct moat_io *io, uint32_t events)
{
    struct ev *e = MOAT_CONTAINER_OF(io, struct ev, io);
    (void)loop;
    (void)events;
    char b[16];
    while (read(io->fd, b, sizeof b) > 0)
        ;
    e->calls++;
}

static void make_pipe_ev(struct moat_loop *loop, struct ev *e, moat_io_cb cb)
{
    int fds[2];
    assert_int_equal(pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
    memset(e, 0, sizeof *e);
    e->io.fd = fds[0];
    e->io.cb = cb;
    e->wfd = fds[1];
    e->defer.fn = defer_fn;
    assert_int_equal(moat_loop_add(loop, &e->io, EPOLLIN | EPOLLET), MOAT_OK);
    assert_int_equal(write(e->wfd, "x", 1), 1);
}

static void close_ev(struct ev *e)
{
    if (e->io.fd >= 0)
        close(e->io.fd);
    close(e->wfd);
}

static void test_defer_runs_after_batch(void **state)
{
    struct moat_loop *loop = *state;
    struct moat_timer wd;
    arm_watchdog(loop, &wd);
    struct ev a, b;
    make_pipe_ev(loop, &a, ev_defer_cb);
    make_pipe_ev(loop, &b, ev_defer_cb);
    evs_all[0] = &a;
    evs_all[1] = &b;
    deferred_runs = 0;
    in_batch_after_defer = false;
    moat_loop_run(loop);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    assert_false(a.defer_ran_when_called); /* neither callback saw the other's defer run */
    assert_false(b.defer_ran_when_called);
    assert_false(in_batch_after_defer);
    assert_int_equal(deferred_runs, 2);
    assert_null(loop->defer_head);
    moat_timer_stop(loop, &wd);
    close_ev(&a);
    close_ev(&b);
}

static void ev_close_other_cb(struct moat_loop *loop, struct moat_io *io, uint32_t events)
{
    struct ev *e = MOAT_CONTAINER_OF(io, struct ev, io);
    (void)events;
    e->calls++;
    /* What conn_close does: close the peer object's fd, mark it -1, free it later. Its event,
     * already harvested in this batch, must be skipped. */
    if (e->other->io.fd >= 0) {
        close(e->other->io.fd);
        e->other->io.fd = -1;
        moat_loop_defer(loop, &e->other->defer);
    }
    moat_loop_stop(loop);
}

static void test_event_on_closed_io_is_skipped(void **state)
{
    struct moat_loop *loop = *state;
    struct moat_timer wd;
    arm_watchdog(loop, &wd);
    struct ev a, b;
    make_pipe_ev(loop, &a, ev_close_other_cb);
    make_pipe_ev(loop, &b, ev_close_other_cb);
    a.other = &b;
    b.other = &a;
    evs_all[0] = &a;
    evs_all[1] = &b;
    deferred_runs = 0;
    in_batch_after_defer = false;
    moat_loop_run(loop);
    /* Whichever ran first closed the other: exactly one callback, one deferred free. */
    assert_int_equal(a.calls + b.calls, 1);
    assert_int_equal(deferred_runs, 1);
    moat_timer_stop(loop, &wd);
    close_ev(&a);
    close_ev(&b);
}

static void test_run_wakes_for_timers(void **state)
{
    /* moat_loop_run sleeps in epoll_wait only until the next timer is due. */
    struct moat_loop *loop = *state;
    struct moat_timer wd, stop = {.cb = stop_cb};
    arm_watchdog(loop, &wd);
    moat_timer_set(loop, &stop, 30);
    uint64_t t0 = moat_now_ms();
    moat_loop_run(loop);
    uint64_t took = moat_now_ms() - t0;
    assert_true(took >= 20 && took < 2000); /* coarse clock: ~4 ms resolution */
    moat_timer_stop(loop, &wd);
}

/* --- batching under load (nap_us) ------------------------------------------------------- */

/* A level-triggered pipe that always has a byte waiting: every poll reports it again, a
 * steady load of one event per pipe per poll. The run stops after <stop_after> callbacks. */
struct load {
    struct moat_io io;
    int wfd;
};
static int load_calls, load_stop_after;
static _Atomic uint64_t n_wakeups, n_naps, n_events;

static void load_cb(struct moat_loop *loop, struct moat_io *io, uint32_t events)
{
    (void)io;
    (void)events;
    if (++load_calls == load_stop_after)
        moat_loop_stop(loop);
}

static void make_load(struct moat_loop *loop, struct load *l)
{
    int fds[2];
    assert_int_equal(pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
    l->io.fd = fds[0];
    l->io.cb = load_cb;
    l->wfd = fds[1];
    assert_int_equal(moat_loop_add(loop, &l->io, EPOLLIN), MOAT_OK);
    assert_int_equal(write(l->wfd, "x", 1), 1);
}

static void close_load(struct load *l)
{
    close(l->io.fd);
    close(l->wfd);
}

static void count_into(struct moat_loop *loop)
{
    n_wakeups = n_naps = n_events = 0;
    loop->c_wakeups = &n_wakeups;
    loop->c_naps = &n_naps;
    loop->c_events = &n_events;
    load_calls = 0;
}

static void test_nap_off_never_pauses(void **state)
{
    struct moat_loop *loop = *state;
    struct moat_timer wd;
    arm_watchdog(loop, &wd);
    struct load l[16];
    for (int i = 0; i < 16; i++)
        make_load(loop, &l[i]);
    count_into(loop);
    load_stop_after = 16 * 50;
    moat_loop_run(loop);
    assert_int_equal(n_naps, 0);
    assert_int_equal(n_events, 16 * 50);
    assert_int_equal(n_wakeups, 50); /* every batch came from a (blocking) epoll_wait */
    moat_timer_stop(loop, &wd);
    for (int i = 0; i < 16; i++)
        close_load(&l[i]);
}

static void test_nap_batches_a_steady_load(void **state)
{
    /* 16 events per poll, fewer than MOAT_NAP_FULL: after the first wake-up the loop pauses
     * before every poll and never blocks again. */
    struct moat_loop *loop = *state;
    struct moat_timer wd;
    arm_watchdog(loop, &wd);
    struct load l[16];
    for (int i = 0; i < 16; i++)
        make_load(loop, &l[i]);
    count_into(loop);
    loop->nap_us = 5;
    load_stop_after = 16 * 200;
    moat_loop_run(loop);
    assert_int_equal(n_events, 16 * 200);
    assert_int_equal(n_wakeups, 1);
    assert_int_equal(n_naps, 199);
    assert_int_equal(loop->slack_ns, 1000); /* the thread's timer slack was cut for the pauses */
    moat_timer_stop(loop, &wd);
    for (int i = 0; i < 16; i++)
        close_load(&l[i]);
}

static void test_nap_full_batches_poll_at_once(void **state)
{
    /* MOAT_NAP_FULL events in a batch: more is surely waiting, no pause before the next. */
    struct moat_loop *loop = *state;
    struct moat_timer wd;
    arm_watchdog(loop, &wd);
    struct load l[MOAT_NAP_FULL];
    for (int i = 0; i < MOAT_NAP_FULL; i++)
        make_load(loop, &l[i]);
    count_into(loop);
    loop->nap_us = 5;
    load_stop_after = MOAT_NAP_FULL * 100;
    moat_loop_run(loop);
    assert_int_equal(n_events, MOAT_NAP_FULL * 100);
    assert_int_equal(n_wakeups, 1);
    assert_int_equal(n_naps, 0);
    moat_timer_stop(loop, &wd);
    for (int i = 0; i < MOAT_NAP_FULL; i++)
        close_load(&l[i]);
}

static void test_nap_keeps_pausing_while_pauses_collect(void **state)
{
    /* One event per poll, the least a pause can collect without coming back empty: that
     * still saves a wake-up each time, so the loop never blocks again. */
    struct moat_loop *loop = *state;
    struct moat_timer wd;
    arm_watchdog(loop, &wd);
    struct load l;
    make_load(loop, &l);
    count_into(loop);
    loop->nap_us = 5;
    load_stop_after = 300;
    moat_loop_run(loop);
    assert_int_equal(n_events, 300);
    assert_int_equal(n_wakeups, 1);
    assert_int_equal(n_naps, 299);
    assert_int_equal(loop->nap_skip, 0);
    moat_timer_stop(loop, &wd);
    close_load(&l);
}

static void test_nap_sleeps_when_idle(void **state)
{
    /* One event, then nothing: one pause finds nothing and the loop blocks again until the
     * timer that ends the run (no spinning in pauses while idle). */
    struct moat_loop *loop = *state;
    struct moat_timer wd, stop = {.cb = stop_cb};
    arm_watchdog(loop, &wd);
    struct ev e;
    make_pipe_ev(loop, &e, ev_read_cb);
    count_into(loop);
    loop->nap_us = 5;
    moat_timer_set(loop, &stop, 50);
    moat_loop_run(loop);
    assert_int_equal(e.calls, 1);
    assert_int_equal(n_wakeups, 1);
    assert_int_equal(n_naps, 1);
    assert_int_equal(loop->nap_skip, MOAT_NAP_IDLE_SKIP);
    moat_timer_stop(loop, &wd);
    close_ev(&e);
}

/* Light load: a byte every millisecond, each handled long before the next comes. */
static struct ev *tick_ev;
static int ticks_left;
static void tick_cb(struct moat_loop *loop, struct moat_timer *t)
{
    assert_int_equal(write(tick_ev->wfd, "x", 1), 1);
    if (--ticks_left > 0)
        moat_timer_set(loop, t, 1);
    else
        moat_loop_stop(loop);
}

static void test_nap_light_load_pauses_rarely(void **state)
{
    /* Every pause finds nothing, so only one wake-up in MOAT_NAP_IDLE_SKIP + 1 takes one. */
    struct moat_loop *loop = *state;
    struct moat_timer wd, tick = {.cb = tick_cb};
    arm_watchdog(loop, &wd);
    struct ev e;
    make_pipe_ev(loop, &e, ev_read_cb);
    tick_ev = &e;
    count_into(loop);
    loop->nap_us = 5;
    const int n = 2 * (MOAT_NAP_IDLE_SKIP + 1) + 1;
    ticks_left = n;
    moat_timer_set(loop, &tick, 1);
    moat_loop_run(loop);
    /* make_pipe_ev's byte and those of the first n - 1 ticks (the last one stops the run),
     * one wake-up each; wake-ups 1, 1 + 17 and 1 + 2 * 17 pause */
    assert_int_equal(e.calls, n);
    assert_int_equal(n_wakeups, n);
    assert_int_equal(n_naps, 3);
    moat_timer_stop(loop, &wd);
    close_ev(&e);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_timers_fire_in_deadline_order),
        T(test_zero_ms_fires_on_next_run),
        T(test_timeout_is_capped),
        T(test_rearm_later_is_lazy_and_fires_at_new_deadline),
        T(test_rearm_repeatedly_later),
        T(test_rearm_earlier_moves_up),
        T(test_rearm_earlier_after_lazy_later),
        T(test_stop_removes),
        T(test_stop_after_lazy_rearm),
        T(test_callback_rearms_itself),
        T(test_callback_stops_another_due_timer),
        T(test_post_runs_on_loop_thread),
        T(test_posts_from_many_threads),
        T(test_destroy_frees_pending_posts),
        T(test_defer_runs_after_batch),
        T(test_event_on_closed_io_is_skipped),
        T(test_run_wakes_for_timers),
        T(test_nap_off_never_pauses),
        T(test_nap_batches_a_steady_load),
        T(test_nap_full_batches_poll_at_once),
        T(test_nap_keeps_pausing_while_pauses_collect),
        T(test_nap_sleeps_when_idle),
        T(test_nap_light_load_pauses_rarely),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
