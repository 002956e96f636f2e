/* test_pipeline.c: pins the request phases (src/proxy/pipeline.h) and checks what the phases
 * that exist today do: route (Host -> site, 421) and balance (weighted round-robin).
 *
 * The order is part of moat's design: if you reorder, add or rename a phase, this test fails
 * on purpose. Update it together with the phase chart in docs/architecture.md (the test checks
 * the chart's marker line too). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#include "proxy/pipeline.h"

static const char *const want_names[] = {"shield", "route", "cache", "balance"};

static void test_phase_order_is_pinned(void **state)
{
    (void)state;
    assert_int_equal(MOAT_PH_COUNT, 4);
    assert_int_equal(MOAT_PH_SHIELD, 0);
    assert_int_equal(MOAT_PH_ROUTE, 1);
    assert_int_equal(MOAT_PH_CACHE, 2);
    assert_int_equal(MOAT_PH_BALANCE, 3);
    assert_int_equal(MOAT_ARRAY_LEN(moat_phases), MOAT_PH_COUNT);
    for (size_t i = 0; i < MOAT_PH_COUNT; i++) {
        assert_int_equal(moat_phases[i].id, i); /* each row sits at its own index */
        assert_string_equal(moat_phases[i].name, want_names[i]);
        assert_non_null(moat_phases[i].fn);
        for (size_t j = 0; j < i; j++)
            assert_ptr_not_equal(moat_phases[i].fn, moat_phases[j].fn);
    }
}

static void test_docs_chart_matches(void **state)
{
    (void)state;
    /* docs/architecture.md carries the order on a marker line next to its chart:
     *   <!-- phases: shield route cache balance -->
     * Tests run from the repository root (make unit); MOAT_SRCDIR overrides. */
    const char *dir = getenv("MOAT_SRCDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/docs/architecture.md", dir ? dir : ".");
    FILE *f = fopen(path, "r");
    if (!f) {
        print_message("(%s not found: run from the repository root or set MOAT_SRCDIR)\n", path);
        skip();
    }
    char want[256];
    size_t n = (size_t)snprintf(want, sizeof want, "<!-- phases:");
    for (size_t i = 0; i < MOAT_PH_COUNT; i++)
        n += (size_t)snprintf(want + n, sizeof want - n, " %s", moat_phases[i].name);
    snprintf(want + n, sizeof want - n, " -->");
    char line[1024];
    bool found = false;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, want, strlen(want)))
            found = true;
    fclose(f);
    if (!found) {
        print_error("docs/architecture.md has no line \"%s\": update the chart there\n", want);
        fail();
    }
}

/* --- the phases at work on a hand-built request ------------------------------------------- */

/* A downstream that encodes heads with the HTTP/1.1 encoder into <out>, as h1conn.c does,
 * and takes every body byte. */
static struct moat_buf test_out;

static int t_send_head(struct moat_req *r, const struct moat_resp *resp)
{
    if (moat_buf_ensure(&test_out, 16384) != MOAT_OK)
        return MOAT_ERR;
    return moat_resp_h1(r, resp, MOAT_STR_NULL, true, false, &test_out);
}
static ssize_t t_send_data(struct moat_req *r, const char *p, size_t n, bool more)
{
    return (ssize_t)n;
}
static int t_finish(struct moat_req *r, struct moat_str t)
{
    return MOAT_OK;
}
static void t_nop(struct moat_req *r)
{
}
static int t_body(struct moat_req *r, struct moat_str *span)
{
    *span = MOAT_STR_NULL;
    return MOAT_DONE;
}
static void t_consume(struct moat_req *r, size_t n)
{
}
static const struct moat_ds test_ds = {
    .name = "test",
    .send_head = t_send_head,
    .send_interim = t_send_head,
    .send_data = t_send_data,
    .push = t_nop,
    .finish = t_finish,
    .abort = t_nop,
    .body = t_body,
    .body_consume = t_consume,
    .done = t_nop,
    .detach = t_nop,
};

static const char yaml[] = "listen: \"127.0.0.1:18080\"\n"
                           "workers: 1\n"
                           "pools:\n"
                           "  shop:\n"
                           "    origins:\n"
                           "      - \"127.0.0.1:9001\"\n"
                           "      - { addr: \"127.0.0.1:9002\", weight: 3 }\n"
                           "  blog:\n"
                           "    origins: [\"127.0.0.1:9003\"]\n"
                           "sites:\n"
                           "  - hosts: [\"shop.example\", \"*.shop.example\"]\n"
                           "    pool: shop\n"
                           "  - hosts: [\"blog.example\"]\n"
                           "    pool: blog\n";

struct fixture {
    struct moat_config *cfg;
    struct moat_worker w;
    struct moat_wcfg wc;
    struct moat_upool up[3];
    struct moat_upool *omap_shop[2], *omap_blog[1];
    struct moat_upool **omap[2];
    unsigned rr[2], wsum[2];
    struct moat_req r;
};

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof *fx);
    char err[MOAT_CONFIG_ERRLEN];
    fx->cfg = moat_config_load_string(yaml, sizeof yaml - 1, "test", err, sizeof err);
    if (!fx->cfg) {
        fprintf(stderr, "%s\n", err);
        free(fx);
        return -1;
    }
    /* What worker.c's wcfg_build makes: [pool][origin] -> upool, rr position, weight sum. */
    size_t shop = 0, blog = 1;
    if (strcmp(fx->cfg->pools[0].name, "shop")) {
        shop = 1;
        blog = 0;
    }
    fx->omap_shop[0] = &fx->up[0];
    fx->omap_shop[1] = &fx->up[1];
    fx->omap_blog[0] = &fx->up[2];
    fx->omap[shop] = fx->omap_shop;
    fx->omap[blog] = fx->omap_blog;
    fx->wsum[shop] = 4;
    fx->wsum[blog] = 1;
    fx->wc = (struct moat_wcfg){
        .cfg = fx->cfg, .users = 1, .omap = fx->omap, .rr = fx->rr, .wsum = fx->wsum};
    fx->w.wcfg = &fx->wc;
    fx->w.bufsize = 16384;
    fx->r.w = &fx->w;
    fx->r.wcfg = &fx->wc;
    fx->r.ds = &test_ds;
    fx->r.state = R_NEW;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    moat_buf_put(&test_out);
    moat_buf_put(&fx->r.lbody); /* the local answer's body: the request never ran to its end */
    moat_config_release(&fx->cfg);
    moat_buf_thread_cleanup();
    free(fx);
    return 0;
}

static int run(struct fixture *fx, const char *host)
{
    fx->r.authority = moat_str_make(host, strlen(host));
    fx->r.site = NULL;
    fx->r.upool = NULL;
    return moat_pipeline_request(&fx->r);
}

static void test_route_picks_site_by_host(void **state)
{
    struct fixture *fx = *state;
    assert_int_equal(run(fx, "shop.example"), MOAT_OK);
    assert_non_null(fx->r.site);
    assert_string_equal(fx->r.site->pool->name, "shop");
    assert_true(fx->r.upool == &fx->up[0] || fx->r.upool == &fx->up[1]);
    /* The port is not part of the name; case does not matter; wildcards match subdomains. */
    assert_int_equal(run(fx, "SHOP.example:8080"), MOAT_OK);
    assert_string_equal(fx->r.site->pool->name, "shop");
    assert_int_equal(run(fx, "www.shop.example"), MOAT_OK);
    assert_string_equal(fx->r.site->pool->name, "shop");
    assert_int_equal(run(fx, "blog.example:80"), MOAT_OK);
    assert_string_equal(fx->r.site->pool->name, "blog");
    assert_ptr_equal(fx->r.upool, &fx->up[2]);
    assert_ptr_equal(fx->r.origin, &fx->r.site->pool->origins[0]);
    assert_int_equal(fx->r.state, R_NEW); /* nothing answered */
    assert_null(test_out.base);
}

static void test_unknown_host_is_421(void **state)
{
    struct fixture *fx = *state;
    assert_int_equal(run(fx, "other.example"), MOAT_DONE);
    assert_null(fx->r.upool); /* balance never ran */
    assert_int_equal(fx->r.status, 421);
    assert_int_equal(atomic_load(&fx->w.stats.bad_no_site), 1);
    assert_int_equal(fx->r.state, R_LOCAL);
    assert_false(fx->r.close); /* keep-alive: the head was fine */
    const char *want = "HTTP/1.1 421 Misdirected Request\r\n";
    assert_true(moat_buf_len(&test_out) > strlen(want));
    assert_memory_equal(moat_buf_rptr(&test_out), want, strlen(want));
}

static void test_route_ipv6_literal_host(void **state)
{
    struct fixture *fx = *state;
    /* "[::1]:8080" is stripped to "[::1]", which no site serves. */
    assert_int_equal(run(fx, "[::1]:8080"), MOAT_DONE);
    assert_int_equal(fx->r.status, 421);
}

static void test_balance_weighted_round_robin(void **state)
{
    struct fixture *fx = *state;
    unsigned hits[2] = {0, 0};
    for (int i = 0; i < 400; i++) {
        assert_int_equal(run(fx, "shop.example"), MOAT_OK);
        if (fx->r.upool == &fx->up[0])
            hits[0]++;
        else if (fx->r.upool == &fx->up[1])
            hits[1]++;
        else
            fail_msg("upool outside the shop pool");
    }
    /* Weights 1 and 3: exactly a quarter and three quarters over whole rounds. */
    assert_int_equal(hits[0], 100);
    assert_int_equal(hits[1], 300);
}

int main(void)
{
    const struct CMUnitTest pinned[] = {
        cmocka_unit_test(test_phase_order_is_pinned),
        cmocka_unit_test(test_docs_chart_matches),
    };
    const struct CMUnitTest phases[] = {
        cmocka_unit_test_setup_teardown(test_route_picks_site_by_host, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_host_is_421, setup, teardown),
        cmocka_unit_test_setup_teardown(test_route_ipv6_literal_host, setup, teardown),
        cmocka_unit_test_setup_teardown(test_balance_weighted_round_robin, setup, teardown),
    };
    int rc = cmocka_run_group_tests_name("phase order", pinned, NULL, NULL);
    rc |= cmocka_run_group_tests_name("phases", phases, NULL, NULL);
    return rc;
}
