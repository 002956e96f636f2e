/* fuzz_h2.c: libFuzzer target for the HTTP/2 input path: the client preface and then the
 * fuzzer's bytes as frames into a real HTTP/2 connection (src/proxy/h2conn.c) of a worker set up
 * as moat runs one, over a socketpair: nghttp2's framing and HPACK, then moat's callbacks,
 * request making (pseudo-headers, Host vs :authority, cookies, header limits, trailers), the
 * downstream ops and the flood budgets. The site answers locally (421 for any other host, 502
 * when the fuzzer finds "only.invalid": its origin is 127.0.0.1:9, refused on loopback), so
 * nothing leaves the machine. Every connection, stream and request must be let go by the end
 * of each input (LeakSanitizer checks the rest). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/req.h"
#include "proxy/server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct moat_worker w;

static const char config[] = "listen: [{ addr: \"127.0.0.1:1\", h2c: true }]\n"
                             "workers: 1\n"
                             "cache: { enabled: false }\n"
                             "http2: { max_concurrent_streams: 16, max_header_list: 8KiB }\n"
                             "pools: { p: { origins: [\"127.0.0.1:9\"], connect_timeout: 1s } }\n"
                             "sites: [{ hosts: [\"only.invalid\"], pool: p }]\n";

static void setup(void)
{
    char err[MOAT_CONFIG_ERRLEN];
    struct moat_config *cfg = moat_config_load_string(config, sizeof config - 1, "fuzz", err,
                                                      sizeof err);
    if (!cfg) {
        fprintf(stderr, "fuzz_h2: %s\n", err);
        abort();
    }
    moat_srv.cfg = cfg;
    atomic_store(&moat_srv.generation, 1);
    if (moat_loop_init(&w.loop) != MOAT_OK)
        abort();
    w.alog.fd = -1;
    moat_worker_wcfg_put(&w, moat_worker_wcfg_get(&w)); /* adopts the configuration */
}

static void run_deferred(void)
{
    while (w.loop.defer_head) {
        struct moat_defer *d = w.loop.defer_head;
        w.loop.defer_head = d->next;
        d->fn(d);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        setup();
        ready = true;
    }
    if (size > 64 * 1024)
        return 0;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
        return 0;
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    struct moat_h1conn *h = calloc(1, sizeof *h);
    if (!h || moat_buf_get(&h->s.in, (uint32_t)(sizeof preface + size + 16)) != MOAT_OK)
        abort();
    moat_sock_init_tcp(&h->s.sk, sv[0], NULL);
    h->w = &w;
    h->s.sk.readable = h->s.sk.writable = true;
    snprintf(h->peer_text, sizeof h->peer_text, "127.0.0.1");
    h->peer_len = 9;
    moat_buf_append(&h->s.in, preface, sizeof preface - 1);
    moat_buf_append(&h->s.in, data, (uint32_t)size);
    w.nconns++; /* as the HTTP/1 connection counted itself */
    moat_h2_takeover(h);
    w.nconns--;
    moat_buf_put(&h->s.in);
    free(h);
    run_deferred(); /* the connection's output and its streams' work */
    run_deferred();
    moat_h2_drain(&w, true); /* closes it, ending every request still on it */
    while (w.orphans)
        moat_req_abort(w.orphans);
    for (struct moat_upool *p = w.upools; p; p = p->next)
        while (p->idle) {
            struct moat_upconn *u = p->idle;
            p->idle = u->next_idle;
            p->nidle--;
            moat_up_close(u);
        }
    run_deferred();
    close(sv[1]);
    if (w.h2conns || w.nconns)
        abort();
    return 0;
}
