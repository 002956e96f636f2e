/* test_req.c: the request model (src/proxy/req.c): a request answers through its downstream
 * in order (head, data, finish, done), waits when the downstream blocks, ends with the right
 * status when its client goes, and copies itself whole for a background fetch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#include "proxy/req.h"

/* A downstream that records the calls it gets, and can be told to block. */
static char calls[256];
static int head_status;
static size_t data_taken;
static bool block_data;
static bool finished;

static void note(const char *what)
{
    size_t n = strlen(calls);
    snprintf(calls + n, sizeof calls - n, "%s%s", n ? " " : "", what);
}

static int t_send_head(struct moat_req *r, const struct moat_resp *resp)
{
    head_status = resp->status;
    note("head");
    return MOAT_OK;
}
static ssize_t t_send_data(struct moat_req *r, const char *p, size_t n, bool more)
{
    if (!n)
        return 0;
    if (block_data) {
        note("blocked");
        return 0;
    }
    note("data");
    data_taken += n;
    return (ssize_t)n;
}
static int t_finish(struct moat_req *r, struct moat_str t)
{
    note("finish");
    finished = true;
    return MOAT_OK;
}
static void t_abort(struct moat_req *r)
{
    note("abort");
}
static void t_nop(struct moat_req *r)
{
}
static int t_body(struct moat_req *r, struct moat_str *span)
{
    *span = MOAT_STR_NULL;
    r->body_done = true;
    return MOAT_DONE;
}
static void t_consume(struct moat_req *r, size_t n)
{
}
static void t_done(struct moat_req *r)
{
    note("done");
}
static const struct moat_ds test_ds = {
    .name = "test",
    .send_head = t_send_head,
    .send_interim = t_send_head,
    .send_data = t_send_data,
    .push = t_nop,
    .finish = t_finish,
    .abort = t_abort,
    .body = t_body,
    .body_consume = t_consume,
    .done = t_done,
    .detach = t_nop,
};

struct fixture {
    struct moat_config *cfg;
    struct moat_wcfg *wc;
    struct moat_worker w;
};

static const char yaml[] = "listen: \"127.0.0.1:18080\"\n"
                           "pools:\n  p: { origins: [\"127.0.0.1:9001\"] }\n"
                           "sites:\n  - hosts: [\"*\"]\n    pool: p\n";

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof *fx);
    char err[MOAT_CONFIG_ERRLEN];
    fx->cfg = moat_config_load_string(yaml, sizeof yaml - 1, "test", err, sizeof err);
    if (!fx->cfg || moat_loop_init(&fx->w.loop) != MOAT_OK)
        return -1;
    fx->wc = calloc(1, sizeof *fx->wc);
    fx->wc->cfg = fx->cfg;
    fx->wc->users = 1;
    fx->w.wcfg = fx->wc;
    fx->w.gen = 0; /* moat_srv.generation is 0 too: no adoption */
    fx->w.bufsize = 16384;
    calls[0] = 0;
    head_status = 0;
    data_taken = 0;
    block_data = false;
    finished = false;
    *state = fx;
    return 0;
}

/* Runs what the loop defers after a batch (frees). */
static void run_defers(struct moat_worker *w)
{
    while (w->loop.defer_head) {
        struct moat_defer *d = w->loop.defer_head;
        w->loop.defer_head = d->next;
        d->fn(d);
    }
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    run_defers(&fx->w);
    assert_int_equal(fx->wc->users, 1); /* every request gave its configuration back */
    free(fx->wc);
    moat_config_release(&fx->cfg);
    moat_loop_destroy(&fx->w.loop);
    moat_req_thread_cleanup();
    moat_buf_thread_cleanup();
    free(fx);
    return 0;
}

static void test_local_answer_goes_through_the_downstream_in_order(void **state)
{
    struct fixture *fx = *state;
    struct moat_req *r = moat_req_new(&fx->w, &test_ds, NULL);
    assert_non_null(r);
    assert_int_equal(fx->wc->users, 2);
    assert_int_equal(r->state, R_NEW);
    moat_req_respond(r, 429, NULL, (struct moat_hdr[]){{MOAT_STR("Retry-After"), MOAT_STR("3")}}, 1,
                     MOAT_STR("slow down\n"));
    assert_int_equal(r->state, R_LOCAL);
    moat_req_drive(r);
    assert_string_equal(calls, "head data finish done");
    assert_int_equal(head_status, 429);
    assert_int_equal(data_taken, 10);
    assert_int_equal(r->state, R_DONE);
    assert_int_equal(fx->wc->users, 1);
    assert_int_equal(atomic_load(&fx->w.stats.req_4xx), 1);
}

static void test_blocked_downstream_waits_then_resumes(void **state)
{
    struct fixture *fx = *state;
    struct moat_req *r = moat_req_new(&fx->w, &test_ds, NULL);
    block_data = true;
    moat_local_response(r, 503, "busy\n");
    moat_req_drive(r);
    assert_string_equal(calls, "head blocked");
    assert_int_equal(r->state, R_LOCAL); /* waiting for the downstream */
    block_data = false;
    moat_req_drive(r); /* the downstream became writable */
    assert_string_equal(calls, "head blocked data finish done");
    assert_int_equal(r->state, R_DONE);
}

static void test_client_gone_before_an_answer_is_499(void **state)
{
    struct fixture *fx = *state;
    struct moat_req *r = moat_req_new(&fx->w, &test_ds, NULL);
    moat_req_client_gone(r);
    assert_int_equal(r->state, R_DONE);
    assert_int_equal(r->status, 499);
    assert_int_equal(r->xerr, MOAT_XERR_CLIENT_GONE);
    assert_string_equal(calls, ""); /* the downstream left: it hears nothing more */
    assert_int_equal(fx->w.norphans, 0);
}

static void test_spawn_copies_and_owns_the_head(void **state)
{
    struct fixture *fx = *state;
    struct moat_req *r = moat_req_new(&fx->w, &test_ds, NULL);
    static const char head[] = "GET /a?b=1 HTTP/1.1\r\nHost: shop.example\r\nX-A: 1\r\n\r\n";
    assert_int_equal(moat_buf_get(&r->hbuf, 16384), MOAT_OK);
    memcpy(r->hbuf.base, head, sizeof head - 1);
    char *base = r->hbuf.base;
    r->hdrs = (struct moat_hdr *)(void *)(base + 256);
    r->hbuf.wpos = 256 + 2 * sizeof(struct moat_hdr);
    r->hdrs[0] = (struct moat_hdr){moat_str_make(base + 21, 4), moat_str_make(base + 27, 12)};
    r->hdrs[1] = (struct moat_hdr){moat_str_make(base + 41, 3), moat_str_make(base + 46, 1)};
    r->nhdrs = 2;
    r->method = moat_str_make(base, 3);
    r->target = moat_str_make(base + 4, 6);
    r->path = moat_str_make(base + 4, 2);
    r->query = moat_str_make(base + 7, 3);
    r->authority = r->hdrs[0].value;
    r->meth = MOAT_M_GET;
    r->minor = 1;
    r->c.keylen = 5;
    memcpy(r->c.key, "k/a?b", 5);
    struct moat_req *b = moat_req_spawn(r);
    assert_non_null(b);
    assert_ptr_equal(b->ds, &moat_ds_sink);
    assert_true(b->bg);
    assert_ptr_equal(b->wcfg, r->wcfg);
    assert_true(b->method.ptr >= b->hbuf.base && b->method.ptr < b->hbuf.base + b->hbuf.cap);
    assert_memory_equal(b->target.ptr, "/a?b=1", 6);
    assert_memory_equal(b->query.ptr, "b=1", 3);
    assert_memory_equal(b->authority.ptr, "shop.example", 12);
    assert_int_equal(b->nhdrs, 2);
    assert_memory_equal(b->hdrs[1].name.ptr, "X-A", 3);
    assert_ptr_not_equal(b->hdrs[1].name.ptr, r->hdrs[1].name.ptr);
    assert_memory_equal(b->c.key, "k/a?b", 5);
    /* the original can go: the copy does not point into it */
    memset(r->hbuf.base, 'x', 64);
    assert_memory_equal(b->target.ptr, "/a?b=1", 6);
    moat_req_spawn_start(b, false); /* dropped unstarted */
    moat_req_client_gone(r);
    /* a request with a body is not copied */
    struct moat_req *r2 = moat_req_new(&fx->w, &test_ds, NULL);
    r2->body_len = 10;
    assert_null(moat_req_spawn(r2));
    moat_req_client_gone(r2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_local_answer_goes_through_the_downstream_in_order,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_blocked_downstream_waits_then_resumes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_client_gone_before_an_answer_is_499, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spawn_copies_and_owns_the_head, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
