/* test_tls.c: unit tests for the TLS module (src/tls/): contexts, SNI, ALPN, resumption by
 * tickets and by the session cache, ticket key rotation, client verification and mutual TLS,
 * handshake failure counters, and the transport's contract (readiness flags, pending bytes,
 * one syscall per record burst).
 *
 * A test CA and certificates are made with the openssl CLI in a mkdtemp directory at start.
 * Each test drives real sockets (TCP on 127.0.0.1, non-blocking) through a real edge-triggered
 * epoll that feeds moat_sock_events(): a transport that clears a flag it should not, or leaves
 * one set that it should clear, stalls the loop or trips an assertion.
 *
 * tls_ctx.c is included to reach the ticket key ring; its symbols are then defined here, so the
 * linker never pulls tls_ctx.o out of libmoat.a. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tls/tls_ctx.c"

/* --- test material -------------------------------------------------------------------------- */

static char dir[] = "/tmp/moat-tls-XXXXXX";

static const char *path(const char *name)
{
    static char buf[16][256];
    static unsigned k;
    char *p = buf[k++ % 16];
    snprintf(p, 256, "%s/%s", dir, name);
    return p;
}

static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...)
{
    char cmd[2048];
    int n = snprintf(cmd, sizeof cmd, "cd %s && (", dir);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd + n, sizeof cmd - (size_t)n, fmt, ap);
    va_end(ap);
    size_t l = strlen(cmd);
    snprintf(cmd + l, sizeof cmd - l, ") >/dev/null 2>&1");
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "failed: %s\n", cmd);
    return rc;
}

static void write_file(const char *name, const char *text)
{
    FILE *f = fopen(path(name), "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

#define EC  "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256"
#define RSA "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048"

/* <name>.key (<alg>) and <name>.pem for <cn> with the extensions in <ext>, signed by <ca>. */
static int leaf(const char *name, const char *alg, const char *cn, const char *ext, const char *ca)
{
    char e[64];
    snprintf(e, sizeof e, "%s.ext", name);
    write_file(e, ext);
    return run("openssl %s -out %s.key && openssl req -new -key %s.key -subj /CN=%s -out %s.csr "
               "&& openssl x509 -req -in %s.csr -CA %s.pem -CAkey %s.key -CAcreateserial "
               "-days 30 -extfile %s.ext -out %s.pem",
               alg, name, name, cn, name, name, ca, ca, name, name);
}

#define SERVER_EXT(san)                                                                            \
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"                       \
    "extendedKeyUsage=serverAuth\nsubjectAltName=" san "\n"

static int group_setup(void **state)
{
    (void)state;
    if (!mkdtemp(dir))
        return -1;
    write_file("ca.ext", "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,"
                         "cRLSign\nsubjectKeyIdentifier=hash\n");
    int rc = 0;
    /* Two roots: ca (trusted by the tests' clients) and evil (trusted by nobody). */
    rc |= run("openssl " EC " -out ca.key && openssl req -new -key ca.key -subj /CN=moat-test-ca "
              "-out ca.csr && openssl x509 -req -in ca.csr -signkey ca.key -days 30 "
              "-extfile ca.ext -out ca.pem");
    rc |= run("openssl " EC " -out evil.key && openssl req -new -key evil.key -subj /CN=evil-ca "
              "-out evil.csr && openssl x509 -req -in evil.csr -signkey evil.key -days 30 "
              "-extfile ca.ext -out evil.pem");
    /* An intermediate under ca, which issues the wildcard (its file carries the chain). */
    rc |= run("openssl " EC " -out inter.key && openssl req -new -key inter.key "
              "-subj /CN=moat-test-intermediate -out inter.csr && openssl x509 -req -in "
              "inter.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -extfile ca.ext "
              "-out inter.pem");
    rc |= leaf("shop-ec", EC, "shop.test", SERVER_EXT("DNS:shop.test,DNS:www.shop.test"), "ca");
    rc |= leaf("shop-rsa", RSA, "shop.test", SERVER_EXT("DNS:www.shop.test,DNS:shop.test"), "ca");
    rc |= leaf("api", EC, "api.test", SERVER_EXT("DNS:*.api.test"), "inter");
    rc |= run("cat api.pem inter.pem > api-chain.pem");
    rc |= leaf("other", EC, "other.test", SERVER_EXT("DNS:other.test"), "ca");
    rc |= leaf("cn", EC, "cn.test", "basicConstraints=CA:FALSE\n", "ca");
    rc |= leaf("fake-shop", EC, "shop.test", SERVER_EXT("DNS:shop.test"), "evil");
    rc |= leaf("client", EC, "moat-client",
               "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n", "ca");
    return rc ? -1 : 0;
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    (void)!system(cmd);
    moat_buf_thread_cleanup();
    return 0;
}

/* --- configurations ------------------------------------------------------------------------- */

/* The server: shop (ECDSA, then RSA for the same names: one group), the wildcard, other. */
static struct moat_cfg_cert certs[4];
static void certs_init(void)
{
    certs[0] = (struct moat_cfg_cert){(char *)path("shop-ec.pem"), (char *)path("shop-ec.key")};
    certs[1] = (struct moat_cfg_cert){(char *)path("shop-rsa.pem"), (char *)path("shop-rsa.key")};
    certs[2] = (struct moat_cfg_cert){(char *)path("api-chain.pem"), (char *)path("api.key")};
    certs[3] = (struct moat_cfg_cert){(char *)path("other.pem"), (char *)path("other.key")};
}

static void srv_cfg(struct moat_config *cfg, unsigned protocols, bool tickets, unsigned cache)
{
    memset(cfg, 0, sizeof *cfg);
    certs_init();
    cfg->tls.certs = certs;
    cfg->tls.ncerts = 4;
    cfg->tls.protocols = protocols;
    cfg->tls.session_tickets = tickets;
    cfg->tls.session_cache = cache;
    cfg->tls.ticket_rotation_ms = 3600 * 1000;
    cfg->tls.session_timeout_ms = 3600 * 1000;
    char err[MOAT_CONFIG_ERRLEN];
    if (moat_tls_build(cfg, err, sizeof err) != MOAT_OK)
        fail_msg("%s", err);
    assert_non_null(cfg->rt);
}

struct cli_cfg {
    struct moat_config cfg;
    struct moat_cfg_pool pool;
    struct moat_cfg_origin origins[4];
};

static void cli_cfg(struct cli_cfg *cc, bool verify, const char *sni, const char *cert,
                    const char *key)
{
    memset(cc, 0, sizeof *cc);
    static const char *hosts[] = {"shop.test", "www.shop.test", "127.0.0.1", "x.api.test"};
    for (int i = 0; i < 4; i++)
        cc->origins[i].host = (char *)hosts[i];
    cc->pool = (struct moat_cfg_pool){
        .name = (char *)"origin",
        .origins = cc->origins,
        .norigins = 4,
        .tls = {.enabled = true,
                .verify = verify,
                .ca_file = (char *)path("ca.pem"),
                .sni = (char *)sni,
                .cert = (char *)cert,
                .key = (char *)key},
    };
    cc->cfg.pools = &cc->pool;
    cc->cfg.npools = 1;
    char err[MOAT_CONFIG_ERRLEN];
    if (moat_tls_build(&cc->cfg, err, sizeof err) != MOAT_OK)
        fail_msg("%s", err);
    assert_non_null(cc->pool.tls_client);
}

static void cfg_free(struct moat_config *cfg)
{
    if (cfg->rt_free)
        cfg->rt_free(cfg->rt);
    cfg->rt = NULL;
    cfg->rt_free = NULL;
}

#define ST(st, f) atomic_load(&(st).f)

/* --- sockets and the loop ------------------------------------------------------------------- */

struct side {
    struct moat_sock s;
    bool done, failed;
    bool want_r, want_w; /* what the last MOAT_AGAIN waits for */
    SSL *raw;            /* a plain OpenSSL endpoint on the same fd instead of moat's */
};

struct pair {
    int ep;
    struct side srv, cli;
};

static void pair_open(struct pair *p, int bufsize)
{
    memset(p, 0, sizeof *p);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(l >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (bufsize) {
        setsockopt(l, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
        setsockopt(l, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
        setsockopt(c, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
        setsockopt(c, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
    }
    assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(l, 8), 0);
    assert_int_equal(getsockname(l, (struct sockaddr *)&a, &al), 0);
    int rc = connect(c, (struct sockaddr *)&a, sizeof a);
    assert_true(rc == 0 || errno == EINPROGRESS);
    int s = accept4(l, NULL, NULL, SOCK_NONBLOCK);
    assert_true(s >= 0);
    close(l);
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    moat_sock_init_tcp(&p->srv.s, s, NULL);
    moat_sock_init_tcp(&p->cli.s, c, NULL);
    p->ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
    ev.data.ptr = &p->srv.s;
    epoll_ctl(p->ep, EPOLL_CTL_ADD, s, &ev);
    ev.data.ptr = &p->cli.s;
    epoll_ctl(p->ep, EPOLL_CTL_ADD, c, &ev);
}

/* Feeds epoll's edges into the sockets' flags; waits up to <ms>. Returns the events seen. */
static int pump(struct pair *p, int ms)
{
    struct epoll_event ev[8];
    int n = epoll_wait(p->ep, ev, 8, ms);
    for (int i = 0; i < n; i++)
        moat_sock_events(ev[i].data.ptr, ev[i].events);
    return n;
}

/* Waits for the edge that makes <d> readable. */
static void wait_readable(struct pair *p, struct side *d)
{
    while (!d->s.readable)
        assert_true(pump(p, 2000) > 0);
}

/* The next read on <d> that is not MOAT_AGAIN. */
static ssize_t read_next(struct pair *p, struct side *d, void *buf, size_t len)
{
    ssize_t n;
    do {
        wait_readable(p, d);
        n = moat_sock_read(&d->s, buf, len);
    } while (n == MOAT_AGAIN);
    return n;
}

static void side_close(struct side *d)
{
    if (d->raw)
        SSL_free(d->raw);
    d->raw = NULL;
    moat_sock_close(&d->s);
}

static void pair_close(struct pair *p)
{
    side_close(&p->srv);
    side_close(&p->cli);
    close(p->ep);
}

static struct tls_conn *tc(struct side *d)
{
    return d->s.tls;
}

/* A plain OpenSSL endpoint on <d>'s socket. */
static void raw_attach(struct side *d, SSL_CTX *ctx, bool server)
{
    d->raw = SSL_new(ctx);
    assert_non_null(d->raw);
    SSL_set_fd(d->raw, d->s.io.fd);
    if (server)
        SSL_set_accept_state(d->raw);
    else
        SSL_set_connect_state(d->raw);
}

static int raw_result(struct side *d, int r)
{
    int e = SSL_get_error(d->raw, r);
    if (e == SSL_ERROR_WANT_READ) {
        d->s.readable = false;
        return MOAT_AGAIN;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        d->s.writable = false;
        return MOAT_AGAIN;
    }
    ERR_clear_error();
    return MOAT_ERR;
}

/* One handshake call on <d> when what it waits for has come. Returns whether it was called. */
static bool hs_step(struct side *d)
{
    if (d->done || d->failed || d->s.io.fd < 0)
        return false;
    bool go =
        (!d->want_r && !d->want_w) || (d->want_r && d->s.readable) || (d->want_w && d->s.writable);
    if (!go)
        return false;
    int r;
    if (d->raw) {
        int x = SSL_do_handshake(d->raw);
        r = x == 1 ? MOAT_OK : raw_result(d, x);
    } else
        r = moat_sock_handshake(&d->s);
    d->want_r = d->want_w = false;
    if (r == MOAT_OK)
        d->done = true;
    else if (r == MOAT_ERR)
        d->failed = true;
    else {
        assert_int_equal(r, MOAT_AGAIN);
        d->want_r = !d->s.readable;
        d->want_w = !d->s.writable;
        assert_true(d->want_r || d->want_w); /* "blocked; a flag was cleared" */
    }
    return true;
}

static bool finished(const struct side *d)
{
    return d->done || d->failed || d->s.io.fd < 0;
}

/* Drives both handshakes to their end. A side that fails is closed, as a server would. */
static void handshake(struct pair *p)
{
    while (!finished(&p->srv) || !finished(&p->cli)) {
        bool prog = hs_step(&p->srv);
        prog |= hs_step(&p->cli);
        if (p->srv.failed && p->srv.s.io.fd >= 0 && !finished(&p->cli))
            moat_sock_close(&p->srv.s);
        if (p->cli.failed && p->cli.s.io.fd >= 0 && !finished(&p->srv))
            side_close(&p->cli);
        if (pump(p, prog ? 0 : 2000) == 0 && !prog)
            fail_msg("handshake stalled (srv %d/%d cli %d/%d)", p->srv.want_r, p->srv.want_w,
                     p->cli.want_r, p->cli.want_w);
    }
}

/* Writes all of <data> from <a> (as iovecs of irregular sizes), reads it at <b> with reads of
 * <rsz>, checks it arrived unchanged and that the flags kept the contract. Returns the number
 * of times <a> had bytes pending. */
static unsigned xfer(struct pair *p, struct side *a, struct side *b, const char *data, size_t len,
                     size_t rsz)
{
    char *dst = malloc(len + 1), *rb = malloc(rsz);
    size_t sent = 0, got = 0;
    unsigned pend = 0;
    static const size_t cut[] = {1, 7, 100, 5000, 70000, 3, 16384, 200000};
    unsigned ci = 0;
    while (got < len) {
        bool prog = false;
        if (a->s.writable && moat_sock_pending(&a->s)) {
            int r = moat_sock_flush(&a->s);
            assert_int_not_equal(r, MOAT_ERR);
            if (r == MOAT_AGAIN)
                assert_false(a->s.writable);
            prog = true;
        } else if (a->s.writable && sent < len) {
            struct iovec iov[3];
            size_t off = sent, n = 0;
            int cnt = 0;
            for (; cnt < 3 && off < len; cnt++) {
                size_t k = cut[ci++ % 8];
                k = MOAT_MIN(k, len - off);
                iov[cnt] = (struct iovec){(void *)(data + off), k};
                off += k;
                n += k;
            }
            ssize_t w = moat_sock_writev(&a->s, iov, cnt, 0);
            assert_true(w > 0 || w == MOAT_AGAIN);
            if (w == MOAT_AGAIN)
                assert_false(a->s.writable);
            else {
                sent += (size_t)w;
                if ((size_t)w < n)
                    assert_false(a->s.writable); /* a short count: the socket is full */
            }
            if (moat_sock_pending(&a->s)) {
                pend++;
                assert_false(a->s.writable);
            }
            prog = true;
        }
        if (b->s.readable) {
            ssize_t r = moat_sock_read(&b->s, rb, rsz);
            if (r > 0) {
                if (got + (size_t)r > len)
                    fail_msg("read %zd at %zu of %zu: %.*s", r, got, len, (int)r, rb);
                memcpy(dst + got, rb, (size_t)r);
                got += (size_t)r;
            } else {
                assert_int_equal(r, MOAT_AGAIN);
                assert_false(b->s.readable);
            }
            prog = true;
        }
        if (pump(p, prog ? 0 : 2000) == 0 && !prog)
            fail_msg("transfer stalled at %zu/%zu sent, %zu received", sent, len, got);
    }
    assert_memory_equal(dst, data, len);
    free(dst);
    free(rb);
    return pend;
}

/* Sends <msg> from <a> and reads it whole at <b>. */
static void say(struct pair *p, struct side *a, struct side *b, const char *msg)
{
    xfer(p, a, b, msg, strlen(msg), 65536);
}

/* A connected, handshaken pair: moat server on <scfg>, moat client of <cc> to <host>.
 * <client_max> limits the client's protocol version (0: none). */
static void open_tls(struct pair *p, struct moat_config *scfg, struct moat_tls_stats *sst,
                     struct cli_cfg *cc, const char *host, struct moat_tls_stats *cst,
                     int client_max)
{
    pair_open(p, 0);
    assert_int_equal(moat_tls_accept(scfg, &p->srv.s, sst), MOAT_OK);
    assert_int_equal(moat_tls_connect(&cc->pool, host, &p->cli.s, cst), MOAT_OK);
    if (client_max)
        SSL_set_max_proto_version(tc(&p->cli)->ssl, client_max);
    handshake(p);
}

static int peer_key_type(struct side *d)
{
    X509 *x = SSL_get0_peer_certificate(tc(d)->ssl);
    assert_non_null(x);
    return EVP_PKEY_get_base_id(X509_get0_pubkey(x));
}

/* The first DNS name of the certificate <d> was given. */
static void peer_name(struct side *d, char *out, size_t n)
{
    X509 *x = SSL_get0_peer_certificate(tc(d)->ssl);
    assert_non_null(x);
    struct cert_load L = {.x = x};
    assert_int_equal(cert_names(&L), MOAT_OK);
    snprintf(out, n, "%s", L.nnames ? L.names[0] : "");
    L.x = NULL;
    cert_load_clear(&L);
}

/* --- building ------------------------------------------------------------------------------- */

static void expect_build_error(struct moat_config *cfg, const char *want)
{
    char err[MOAT_CONFIG_ERRLEN];
    assert_int_equal(moat_tls_build(cfg, err, sizeof err), MOAT_ERR);
    if (!strstr(err, want))
        fail_msg("error \"%s\" does not contain \"%s\"", err, want);
    assert_null(cfg->rt); /* unchanged */
    assert_null(cfg->rt_free);
    assert_int_equal(ERR_peek_error(), 0);
}

static void test_build_errors(void **state)
{
    (void)state;
    struct moat_config cfg = {0};
    struct moat_cfg_cert bad[2] = {
        {(char *)path("shop-ec.pem"), (char *)path("shop-ec.key")},
        {(char *)path("other.pem"), (char *)path("api.key")}, /* someone else's key */
    };
    cfg.tls.certs = bad;
    cfg.tls.ncerts = 2;
    char want[512];
    snprintf(want, sizeof want, "tls.certificates[1].key: %s: key values mismatch",
             path("api.key"));
    expect_build_error(&cfg, want);

    bad[1] = (struct moat_cfg_cert){(char *)path("shop-ec.pem"), (char *)path("shop-rsa.key")};
    expect_build_error(&cfg, "tls.certificates[1].key: ");
    expect_build_error(&cfg, "different key types");

    bad[1] = (struct moat_cfg_cert){(char *)path("nope.pem"), (char *)path("api.key")};
    snprintf(want, sizeof want, "tls.certificates[1].cert: %s: No such file or directory",
             path("nope.pem"));
    expect_build_error(&cfg, want);

    bad[1] = (struct moat_cfg_cert){(char *)path("api.key"), (char *)path("api.key")};
    expect_build_error(&cfg, "tls.certificates[1].cert: ");
    expect_build_error(&cfg, "no start line");

    bad[1] = (struct moat_cfg_cert){(char *)path("api.pem"), (char *)path("api.pem")};
    expect_build_error(&cfg, "tls.certificates[1].key: ");

    /* The same names and key type twice: the second could never be served. */
    bad[1] = bad[0];
    expect_build_error(&cfg, "same names and key type as tls.certificates[0]");

    bad[1] = (struct moat_cfg_cert){(char *)path("other.pem"), (char *)path("other.key")};
    cfg.tls.ciphers = (char *)"NO-SUCH-CIPHER";
    expect_build_error(&cfg, "tls.ciphers: NO-SUCH-CIPHER: no cipher match");
    cfg.tls.ciphers = NULL;
    cfg.tls.groups = (char *)"P-256:nogroup";
    expect_build_error(&cfg, "tls.groups: P-256:nogroup");
    cfg.tls.groups = NULL;

    struct moat_cfg_listen l = {.tls = true};
    struct moat_config nocert = {.listen = &l, .nlisten = 1};
    expect_build_error(&nocert, "listen: a listener with tls: true needs tls.certificates");

    /* Client side: the pool's files. */
    struct moat_cfg_origin o = {.host = (char *)"shop.test"};
    struct moat_cfg_pool pool = {
        .name = (char *)"api",
        .origins = &o,
        .norigins = 1,
        .tls = {.enabled = true, .verify = true, .ca_file = (char *)path("missing-ca.pem")}};
    struct moat_config pc = {.pools = &pool, .npools = 1};
    snprintf(want, sizeof want, "pools.api.tls.ca_file: %s: No such file or directory",
             path("missing-ca.pem"));
    expect_build_error(&pc, want);
    assert_null(pool.tls_client);
    pool.tls.ca_file = (char *)path("ca.key");
    expect_build_error(&pc, "pools.api.tls.ca_file: ");
    pool.tls.ca_file = (char *)path("ca.pem");
    pool.tls.cert = (char *)path("client.pem");
    expect_build_error(&pc, "pools.api.tls.key: cert and key go together");
    pool.tls.key = (char *)path("other.key");
    snprintf(want, sizeof want, "pools.api.tls.key: %s: key values mismatch", path("other.key"));
    expect_build_error(&pc, want);

    /* A snapshot without TLS gets no runtime. */
    struct moat_config plain = {0};
    char err[64];
    assert_int_equal(moat_tls_build(&plain, err, sizeof err), MOAT_OK);
    assert_null(plain.rt);
}

struct seen {
    int n;
    char line[8][256];
};

static void each(const struct moat_tls_cert_info *ci, void *ud)
{
    struct seen *s = ud;
    assert_true(ci->not_after > ci->not_before);
    assert_true(ci->not_after > (int64_t)time(NULL));
    snprintf(s->line[s->n++], 256, "%s|%s|%s", strrchr(ci->file, '/') + 1, ci->key_type, ci->names);
}

static void test_each_cert_and_groups(void **state)
{
    (void)state;
    struct moat_config cfg;
    srv_cfg(&cfg, 0, true, 0);
    struct seen s = {0};
    moat_tls_each_cert(&cfg, each, &s);
    assert_int_equal(s.n, 4);
    assert_string_equal(s.line[0], "shop-ec.pem|ECDSA P-256|shop.test,www.shop.test");
    assert_string_equal(s.line[1], "shop-rsa.pem|RSA 2048|www.shop.test,shop.test");
    assert_string_equal(s.line[2], "api-chain.pem|ECDSA P-256|*.api.test");
    assert_string_equal(s.line[3], "other.pem|ECDSA P-256|other.test");
    /* shop's two certificates share a context: three groups for four certificates. */
    const struct moat_tls_rt *rt = cfg.rt;
    assert_int_equal(rt->srv->nctxs, 3);
    assert_ptr_equal(rt->server, rt->srv->ctxs[0]);
    assert_int_equal(rt->srv->nexact, 3); /* shop.test, www.shop.test, other.test */
    assert_int_equal(rt->srv->nwild, 1);
    assert_ptr_equal(sni_find(rt->srv, "www.shop.test", 13), rt->srv->ctxs[0]);
    assert_ptr_equal(sni_find(rt->srv, "a.api.test", 10), rt->srv->ctxs[1]);
    assert_null(sni_find(rt->srv, "api.test", 8));
    assert_null(sni_find(rt->srv, "a.b.api.test", 12));
    assert_null(sni_find(rt->srv, ".api.test", 9));
    assert_ptr_equal(sni_find(rt->srv, "other.test", 10), rt->srv->ctxs[2]);
    cfg_free(&cfg);

    /* The CN when there is no SAN. */
    struct moat_cfg_cert cn = {(char *)path("cn.pem"), (char *)path("cn.key")};
    memset(&cfg, 0, sizeof cfg);
    cfg.tls.certs = &cn;
    cfg.tls.ncerts = 1;
    char err[MOAT_CONFIG_ERRLEN];
    assert_int_equal(moat_tls_build(&cfg, err, sizeof err), MOAT_OK);
    s.n = 0;
    moat_tls_each_cert(&cfg, each, &s);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.line[0], "cn.pem|ECDSA P-256|cn.test");
    cfg_free(&cfg);
}

/* --- handshakes ----------------------------------------------------------------------------- */

static void test_handshake_alpn(void **state)
{
    (void)state;
    static const int versions[] = {TLS1_2_VERSION, TLS1_3_VERSION};
    struct moat_config scfg;
    srv_cfg(&scfg, 0, true, 100);
    struct cli_cfg cc;
    cli_cfg(&cc, true, NULL, NULL, NULL);
    for (int v = 0; v < 2; v++) {
        struct moat_tls_stats sst = {0}, cst = {0};
        struct pair p;
        open_tls(&p, &scfg, &sst, &cc, "shop.test", &cst, versions[v]);
        assert_true(p.srv.done);
        assert_true(p.cli.done);
        assert_int_equal(SSL_version(tc(&p.srv)->ssl), versions[v]);
        struct moat_str a = moat_tls_alpn(&p.srv.s);
        assert_true(moat_str_eq(a, MOAT_STR("http/1.1")));
        a = moat_tls_alpn(&p.cli.s);
        assert_true(moat_str_eq(a, MOAT_STR("http/1.1")));
        assert_false(moat_tls_resumed(&p.srv.s));
        assert_int_equal(ST(sst, tls_hs_full), 1);
        assert_int_equal(ST(sst, tls_hs_resumed), 0);
        assert_int_equal(ST(cst, tls_up_hs), 1);
        assert_string_equal(p.srv.s.tp->name, "tls");
        say(&p, &p.cli, &p.srv, "GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n");
        say(&p, &p.srv, &p.cli, "HTTP/1.1 204 No Content\r\n\r\n");
        pair_close(&p);
    }
    cfg_free(&cc.cfg);
    cfg_free(&scfg);
}

/* SNI: exact, wildcard, unknown and absent names; the client verifies the name it asked for,
 * so a wrong choice fails the handshake. */
static void test_sni(void **state)
{
    (void)state;
    struct moat_config scfg;
    srv_cfg(&scfg, 0, true, 0);
    struct cli_cfg strict, lax;
    cli_cfg(&strict, true, NULL, NULL, NULL);
    cli_cfg(&lax, false, NULL, NULL, NULL);
    const struct {
        struct cli_cfg *cc;
        const char *host, *want_cert, *want_sni;
        int sni_default;
    } cases[] = {
        {&strict, "shop.test", "shop.test", "shop.test", 0},
        {&strict, "www.shop.test", "shop.test", "www.shop.test", 0},
        {&strict, "x.api.test", "*.api.test", "x.api.test", 0},
        {&strict, "other.test", "other.test", "other.test", 0},
        {&lax, "WWW.Shop.TEST", "shop.test", "www.shop.test", 0},
        {&lax, "api.test", "shop.test", "api.test", 1},
        {&lax, "a.b.api.test", "shop.test", "a.b.api.test", 1},
        {&lax, "unknown.example", "shop.test", "unknown.example", 1},
        {&lax, "127.0.0.1", "shop.test", "", 0}, /* an address: no SNI sent */
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(cases); i++) {
        struct moat_tls_stats sst = {0}, cst = {0};
        struct pair p;
        open_tls(&p, &scfg, &sst, cases[i].cc, cases[i].host, &cst, 0);
        if (!p.cli.done)
            fail_msg("%s: %s", cases[i].host, p.cli.s.err_reason);
        assert_true(p.srv.done);
        char name[256];
        peer_name(&p.cli, name, sizeof name);
        assert_string_equal(name, cases[i].want_cert);
        struct moat_str sni = moat_tls_sni(&p.srv.s);
        assert_int_equal(sni.len, strlen(cases[i].want_sni));
        assert_memory_equal(sni.ptr, cases[i].want_sni, sni.len);
        assert_int_equal(ST(sst, tls_sni_default), cases[i].sni_default);
        pair_close(&p);
    }
    cfg_free(&strict.cfg);
    cfg_free(&lax.cfg);
    cfg_free(&scfg);
}

/* ECDSA for clients that offer ECDSA signatures, RSA for the others, same names. */
static void test_ecdsa_or_rsa(void **state)
{
    (void)state;
    static const int versions[] = {TLS1_2_VERSION, TLS1_3_VERSION};
    struct moat_config scfg;
    srv_cfg(&scfg, 0, true, 0);
    struct cli_cfg cc;
    cli_cfg(&cc, true, NULL, NULL, NULL);
    for (int v = 0; v < 2; v++)
        for (int rsa = 0; rsa < 3; rsa++) {
            struct moat_tls_stats sst = {0}, cst = {0};
            struct pair p;
            pair_open(&p, 0);
            assert_int_equal(moat_tls_accept(&scfg, &p.srv.s, &sst), MOAT_OK);
            assert_int_equal(moat_tls_connect(&cc.pool, "www.shop.test", &p.cli.s, &cst), MOAT_OK);
            SSL *ssl = tc(&p.cli)->ssl;
            SSL_set_max_proto_version(ssl, versions[v]);
            /* A full handshake each time: an OpenSSL client offering only RSA signatures
             * drops ECDSA suites, and then could not resume the previous ECDSA session. */
            SSL_set_session(ssl, NULL);
            if (rsa == 1)
                assert_true(SSL_set1_sigalgs_list(ssl, "rsa_pss_rsae_sha256:rsa_pkcs1_sha256"));
            else if (rsa == 0)
                assert_true(SSL_set1_sigalgs_list(ssl, "ecdsa_secp256r1_sha256"));
            /* rsa == 2: OpenSSL's default list, which offers both: ECDSA wins */
            handshake(&p);
            if (!p.cli.done)
                fail_msg("v%d rsa%d: %s / server: %s", v, rsa, p.cli.s.err_reason,
                         p.srv.s.err_reason);
            assert_int_equal(peer_key_type(&p.cli), rsa == 1 ? EVP_PKEY_RSA : EVP_PKEY_EC);
            pair_close(&p);
        }
    cfg_free(&cc.cfg);
    cfg_free(&scfg);
}

/* --- data ----------------------------------------------------------------------------------- */

static char *pattern(size_t n)
{
    char *d = malloc(n);
    uint32_t x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        d[i] = (char)(x >> 16);
    }
    return d;
}

/* 1 MiB each way through 4 KiB socket buffers: partial writes, pending bytes, flushes. */
static void test_big_transfer(void **state)
{
    (void)state;
    static const int versions[] = {TLS1_2_VERSION, TLS1_3_VERSION};
    struct moat_config scfg;
    srv_cfg(&scfg, 0, true, 0);
    struct cli_cfg cc;
    cli_cfg(&cc, true, NULL, NULL, NULL);
    size_t len = 1u << 20;
    char *data = pattern(len);
    for (int v = 0; v < 2; v++) {
        struct moat_tls_stats sst = {0}, cst = {0};
        struct pair p;
        pair_open(&p, 4096);
        assert_int_equal(moat_tls_accept(&scfg, &p.srv.s, &sst), MOAT_OK);
        assert_int_equal(moat_tls_connect(&cc.pool, "shop.test", &p.cli.s, &cst), MOAT_OK);
        SSL_set_max_proto_version(tc(&p.cli)->ssl, versions[v]);
        handshake(&p);
        assert_true(p.cli.done && p.srv.done);
        assert_true(xfer(&p, &p.srv, &p.cli, data, len, 7000) > 10);
        assert_true(xfer(&p, &p.cli, &p.srv, data, len, 65536) > 10);
        assert_false(moat_sock_pending(&p.srv.s));
        assert_null(tc(&p.srv)->out.base); /* the buffer went back to the free list */
        pair_close(&p);
    }
    free(data);
    cfg_free(&cc.cfg);
    cfg_free(&scfg);
}

/* The read side's flags: readable stays while OpenSSL or the socket holds bytes, and is
 * cleared exactly when both are drained, without a read(2) to learn EAGAIN. */
static void test_readable_flag(void **state)
{
    (void)state;
    struct moat_config scfg;
    srv_cfg(&scfg, 0, true, 0);
    struct cli_cfg cc;
    cli_cfg(&cc, true, NULL, NULL, NULL);
    struct moat_tls_stats sst = {0}, cst = {0};
    struct pair p;
    open_tls(&p, &scfg, &sst, &cc, "shop.test", &cst, 0);
    say(&p, &p.cli, &p.srv, "hello"); /* the client also reads nothing: fine */
    char *data = pattern(40000), buf[65536];

    /* One record (and the session ticket in front of it): one read(2), and readable is
     * cleared without a second read(2) to learn EAGAIN. */
    assert_int_equal(moat_sock_write(&p.srv.s, data, 1000), 1000);
    wait_readable(&p, &p.cli);
    uint32_t r0 = tc(&p.cli)->nread;
    assert_int_equal(moat_sock_read(&p.cli.s, buf, sizeof buf), 1000);
    assert_false(p.cli.s.readable);
    assert_int_equal(tc(&p.cli)->nread - r0, 1);
    assert_memory_equal(buf, data, 1000);
    assert_int_equal(moat_sock_read(&p.cli.s, buf, sizeof buf), MOAT_AGAIN);
    assert_int_equal(tc(&p.cli)->nread - r0, 1); /* no read(2): known drained */

    /* A read smaller than the record: readable stays while OpenSSL holds the rest. (The rest
     * then costs one read(2) that says EAGAIN: once readable was raised for OpenSSL's bytes,
     * an edge that came meanwhile cannot be told apart.) */
    assert_int_equal(moat_sock_write(&p.srv.s, data, 1000), 1000);
    wait_readable(&p, &p.cli);
    assert_int_equal(moat_sock_read(&p.cli.s, buf, 100), 100);
    assert_true(p.cli.s.readable); /* 900 bytes wait in OpenSSL */
    assert_int_equal(moat_sock_read(&p.cli.s, buf + 100, sizeof buf), 900);
    assert_false(p.cli.s.readable);
    assert_memory_equal(buf, data, 1000);

    /* Three records in the socket; a read smaller than them leaves readable set. */
    assert_int_equal(moat_sock_write(&p.srv.s, data, 40000), 40000);
    wait_readable(&p, &p.cli);
    assert_int_equal(moat_sock_read(&p.cli.s, buf, 20000), 20000);
    assert_true(p.cli.s.readable);
    assert_int_equal(moat_sock_read(&p.cli.s, buf + 20000, sizeof buf - 20000), 20000);
    assert_false(p.cli.s.readable);
    assert_memory_equal(buf, data, 40000);
    free(data);
    pair_close(&p);
    cfg_free(&cc.cfg);
    cfg_free(&scfg);
}

/* The hot path's syscalls: a 1 KiB request costs the server one read(2); a response of a head
 * and a 1 KiB body costs one send(2), as one record, with the session ticket in front. */
static void test_syscalls_and_records(void **state)
{
    (void)state;
    struct moat_config scfg;
    srv_cfg(&scfg, 0, true, 0);
    struct cli_cfg cc;
    cli_cfg(&cc, true, NULL, NULL, NULL);
    struct moat_tls_stats sst = {0}, cst = {0};
    struct pair p;
    open_tls(&p, &scfg, &sst, &cc, "shop.test", &cst, 0);
    /* The ticket waits for the first response. */
    assert_true(p.srv.s.held);
    assert_false(moat_sock_pending(&p.srv.s));
    uint32_t ticket = moat_buf_len(&tc(&p.srv)->out);
    assert_true(ticket > 100 && ticket < 1000);
    char *body = pattern(1024), head[200], buf[4096];
    memset(head, 'h', sizeof head);

    struct iovec req[2] = {{head, sizeof head}, {body, 1024}};
    assert_int_equal(moat_sock_writev(&p.cli.s, req, 2, 0), 1224);
    wait_readable(&p, &p.srv);
    uint32_t r0 = tc(&p.srv)->nread, w0 = tc(&p.srv)->nwrite;
    assert_int_equal(moat_sock_read(&p.srv.s, buf, sizeof buf), 1224);
    assert_int_equal(tc(&p.srv)->nread - r0, 1);
    assert_false(p.srv.s.readable);

    struct iovec resp[2] = {{head, sizeof head}, {body, 1024}};
    assert_int_equal(moat_sock_writev(&p.srv.s, resp, 2, 0), 1224);
    assert_int_equal(tc(&p.srv)->nwrite - w0, 1);
    assert_false(p.srv.s.held);
    /* On the wire: the ticket, then one record: 5 + 1224 + 1 (type) + 16 (tag). */
    int inq = 0;
    for (int i = 0; i < 100 && inq < (int)(ticket + 1246); i++) {
        pump(&p, 10);
        ioctl(p.cli.s.io.fd, FIONREAD, &inq);
    }
    assert_int_equal(inq, ticket + 1246);
    wait_readable(&p, &p.cli);
    assert_int_equal(moat_sock_read(&p.cli.s, buf, sizeof buf), 1224);
    assert_memory_equal(buf + 200, body, 1024);
    /* Reading the response stored the ticket for the next connection. */
    assert_non_null(tls_client_origin(cc.pool.tls_client, "shop.test")->sess);

    /* MOAT_SOCK_MORE: a small write is kept back and leaves with the next one. */
    w0 = tc(&p.srv)->nwrite;
    assert_int_equal(moat_sock_writev(&p.srv.s, resp, 1, MOAT_SOCK_MORE), 200);
    assert_int_equal(tc(&p.srv)->nwrite, w0);
    assert_true(p.srv.s.held);
    assert_false(moat_sock_pending(&p.srv.s));
    assert_int_equal(moat_sock_writev(&p.srv.s, resp + 1, 1, MOAT_SOCK_MORE), 1024);
    assert_int_equal(moat_sock_flush(&p.srv.s), MOAT_OK);
    assert_int_equal(tc(&p.srv)->nwrite - w0, 1);
    assert_false(p.srv.s.held);
    size_t got = 0;
    while (got < 1224) {
        wait_readable(&p, &p.cli);
        ssize_t n = moat_sock_read(&p.cli.s, buf + got, sizeof buf - got);
        assert_true(n > 0 || n == MOAT_AGAIN);
        if (n > 0)
            got += (size_t)n;
    }
    assert_memory_equal(buf + 200, body, 1024);
    free(body);
    pair_close(&p);
    cfg_free(&cc.cfg);
    cfg_free(&scfg);
}

/* Waits until <d>'s socket holds <want> bytes, then reads and checks <len> bytes of <data>. */
static void expect_wire(struct pair *p, struct side *d, int want, const char *data, size_t len)
{
    int inq = 0;
    for (int i = 0; i < 200 && inq < want; i++) {
        pump(p, 10);
        ioctl(d->s.io.fd, FIONREAD, &inq);
    }
    assert_int_equal(inq, want);
    char *got = malloc(len);
    size_t n = 0;
    while (n < len) {
        while (!d->s.readable)
            assert_true(pump(p, 2000) > 0);
        ssize_t r = moat_sock_read(&d->s, got + n, len - n);
        assert_true(r > 0 || r == MOAT_AGAIN);
        if (r > 0)
            n += (size_t)r;
    }
    assert_memory_equal(got, data, len);
    free(got);
}

/* Records on the wire: as few as the bytes need, and one send(2) for up to 64 KiB. TLS 1.3
 * with AES-GCM adds 22 bytes per record. */
static void test_records(void **state)
{
    (void)state;
    struct moat_config scfg;
    srv_cfg(&scfg, 0, true, 0);
    struct cli_cfg cc;
    cli_cfg(&cc, true, NULL, NULL, NULL);
    struct moat_tls_stats sst = {0}, cst = {0};
    struct pair p;
    open_tls(&p, &scfg, &sst, &cc, "shop.test", &cst, 0);
    say(&p, &p.srv, &p.cli, "ticket"); /* the held ticket goes */
    size_t big = 65536 + 40960;
    char *data = pattern(big), *exp = malloc(big);
    const struct {
        size_t head, body, records;
    } cases[] = {
        {200, 1024, 1},     /* gathered */
        {200, 40960, 3},    /* head + the body's first bytes, then 2 */
        {200, 65536, 5},    /* the head alone: as few records, no copy */
        {0, 65536, 4},      /* one iovec: as it is */
        {16000, 16000, 2},  /* 32000 bytes: 2 records either way */
        {100, 100 * 20, 1}, /* many small pieces (below): one record */
    };
    for (size_t i = 0; i < MOAT_ARRAY_LEN(cases); i++) {
        struct iovec iov[21];
        int cnt = 0;
        if (cases[i].head)
            iov[cnt++] = (struct iovec){data, cases[i].head};
        if (i == 5)
            for (int k = 0; k < 20; k++)
                iov[cnt++] = (struct iovec){data + 100 + 100 * k, 100};
        else
            iov[cnt++] = (struct iovec){data + cases[i].head, cases[i].body};
        size_t len = cases[i].head + cases[i].body;
        uint32_t w0 = tc(&p.srv)->nwrite;
        assert_int_equal(moat_sock_writev(&p.srv.s, iov, cnt, 0), (ssize_t)len);
        assert_int_equal(tc(&p.srv)->nwrite - w0, 1);
        memcpy(exp, data, len);
        expect_wire(&p, &p.cli, (int)(len + 22 * cases[i].records), exp, len);
    }
    free(data);
    free(exp);
    pair_close(&p);
    cfg_free(&cc.cfg);
    cfg_free(&scfg);
}

/* A write before the handshake ended drives it, and waits for readability when it does. */
static void test_write_before_handshake(void **state)
{
    (void)state;
    struct moat_config scfg;
    srv_cfg(&scfg, 0, true, 0);
    struct cli_cfg cc;
    cli_cfg(&cc, true, NULL, NULL, NULL);
    struct moat_tls_stats sst = {0}, cst = {0};
    struct pair p;
    pair_open(&p, 0);
    assert_int_equal(moat_tls_accept(&scfg, &p.srv.s, &sst), MOAT_OK);
    assert_int_equal(moat_tls_connect(&cc.pool, "shop.test", &p.cli.s, &cst), MOAT_OK);
    p.cli.s.writable = true;
    assert_int_equal(moat_sock_write(&p.cli.s, "early", 5), MOAT_AGAIN);
    assert_false(p.cli.s.writable);
    assert_true(p.cli.s.wr_wants_r);
    p.cli.done = true; /* the client's handshake is driven by its writes below */
    p.srv.want_r = true;
    while (!p.srv.done) {
        if (!hs_step(&p.srv))
            assert_true(pump(&p, 2000) > 0);
        if (p.cli.s.writable) { /* raised by the server's flight arriving (EPOLLIN) */
            ssize_t n = moat_sock_write(&p.cli.s, "early", 5);
            if (n == 5)
                break;
            assert_int_equal(n, MOAT_AGAIN);
        }
    }
    while (!tc(&p.cli)->hs_done || !p.srv.done) {
        hs_step(&p.srv);
        if (p.cli.s.writable && !tc(&p.cli)->hs_done)
            (void)moat_sock_write(&p.cli.s, "early", 5);
        pump(&p, 10);
    }
    char buf[16];
    wait_readable(&p, &p.srv);
    assert_int_equal(moat_sock_read(&p.srv.s, buf, sizeof buf), 5);
    assert_memory_equal(buf, "early", 5);
    pair_close(&p);
    cfg_free(&cc.cfg);
    cfg_free(&scfg);
}

/* close_notify, then FIN: the peer reads the data, then the end. */
static void test_shutdown(void **state)
{
    (void)state;
    struct moat_config scfg;
    srv_cfg(&scfg, 0, true, 0);
    struct cli_cfg cc;
    cli_cfg(&cc, true, NULL, NULL, NULL);
    struct moat_tls_stats sst = {0}, cst = {0};
    struct pair p;
    open_tls(&p, &scfg, &sst, &cc, "shop.test", &cst, 0);
    assert_int_equal(moat_sock_write(&p.srv.s, "bye", 3), 3);
    assert_int_equal(moat_sock_shutdown(&p.srv.s), MOAT_OK);
    char buf[64];
    size_t got = 0;
    ssize_t n;
    while ((n = read_next(&p, &p.cli, buf + got, sizeof buf - got)) > 0)
        got += (size_t)n;
    assert_int_equal(n, 0);
    assert_true(p.cli.s.eof);
    assert_int_equal(got, 3);
    assert_memory_equal(buf, "bye", 3);
    assert_true(SSL_get_shutdown(tc(&p.cli)->ssl) & SSL_RECEIVED_SHUTDOWN); /* not a bare FIN */
    assert_int_equal(moat_sock_read(&p.cli.s, buf, sizeof buf), 0);
    /* The client can still talk: the server reads on after its own close_notify. */
    say(&p, &p.cli, &p.srv, "half-open");
    assert_int_equal(moat_sock_shutdown(&p.cli.s), MOAT_OK);
    wait_readable(&p, &p.srv);
    assert_int_equal(moat_sock_read(&p.srv.s, buf, sizeof buf), 0);

    /* A TCP end without close_notify is an end of input too (HTTP framing judges). */
    struct pair q;
    open_tls(&q, &scfg, &sst, &cc, "shop.test", &cst, 0);
    say(&q, &q.srv, &q.cli, "x");
    shutdown(q.srv.s.io.fd, SHUT_WR);
    n = read_next(&q, &q.cli, buf, sizeof buf);
    assert_int_equal(n, 0);
    assert_true(q.cli.s.eof);
    pair_close(&q);
    pair_close(&p);
    cfg_free(&cc.cfg);
    cfg_free(&scfg);
}

/* --- resumption ----------------------------------------------------------------------------- */

/* Connects, reads a response (TLS 1.3 tickets come with it), closes; returns resumed. */
static bool connect_once(struct moat_config *scfg, struct moat_tls_stats *sst, struct cli_cfg *cc,
                         struct moat_tls_stats *cst, int version)
{
    struct pair p;
    open_tls(&p, scfg, sst, cc, "shop.test", cst, version);
    if (!p.cli.done || !p.srv.done)
        fail_msg("handshake: %s / %s", p.cli.s.err_reason, p.srv.s.err_reason);
    assert_int_equal(SSL_version(tc(&p.srv)->ssl), version);
    say(&p, &p.cli, &p.srv, "GET / HTTP/1.1\r\n\r\n");
    say(&p, &p.srv, &p.cli, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    bool r = moat_tls_resumed(&p.srv.s);
    assert_int_equal(moat_tls_resumed(&p.cli.s), r);
    pair_close(&p);
    return r;
}

static void resume_case(bool tickets, unsigned cache)
{
    static const int versions[] = {TLS1_2_VERSION, TLS1_3_VERSION};
    for (int v = 0; v < 2; v++) {
        struct moat_config scfg;
        srv_cfg(&scfg, 0, tickets, cache);
        struct cli_cfg cc;
        cli_cfg(&cc, true, NULL, NULL, NULL);
        struct moat_tls_stats sst = {0}, cst = {0};
        assert_false(connect_once(&scfg, &sst, &cc, &cst, versions[v]));
        for (int i = 0; i < 2; i++)
            if (!connect_once(&scfg, &sst, &cc, &cst, versions[v]))
                fail_msg("version %x, connection %d: not resumed", versions[v], i + 2);
        assert_int_equal(ST(sst, tls_hs_full), 1);
        assert_int_equal(ST(sst, tls_hs_resumed), 2);
        assert_int_equal(ST(cst, tls_up_hs), 1);
        assert_int_equal(ST(cst, tls_up_resumed), 2);
        cfg_free(&cc.cfg);
        cfg_free(&scfg);
    }
}

static void test_resume_by_ticket(void **state)
{
    (void)state;
    resume_case(true, 0); /* no cache: only a ticket can resume */
}

static void test_resume_by_cache(void **state)
{
    (void)state;
    resume_case(false, 100); /* no tickets (TLS 1.3: stateful tickets name cache entries) */
}

/* Neither: nothing resumes, and TLS 1.3 sends no ticket. */
static void test_no_resumption(void **state)
{
    (void)state;
    struct moat_config scfg;
    srv_cfg(&scfg, 0, false, 0);
    struct cli_cfg cc;
    cli_cfg(&cc, true, NULL, NULL, NULL);
    struct moat_tls_stats sst = {0}, cst = {0};
    assert_false(connect_once(&scfg, &sst, &cc, &cst, TLS1_3_VERSION));
    assert_null(tls_client_origin(cc.pool.tls_client, "shop.test")->sess);
    assert_false(connect_once(&scfg, &sst, &cc, &cst, TLS1_3_VERSION));
    assert_int_equal(ST(sst, tls_hs_full), 2);
    cfg_free(&cc.cfg);
    cfg_free(&scfg);
}

/* Puts a fresh copy of the session <der> in the client's slot for shop.test (an OpenSSL
 * client uses a TLS 1.3 session once: a copy is a new one). */
static void slot_set(struct cli_cfg *cc, const unsigned char *der, long len)
{
    struct tls_origin *o = tls_client_origin(cc->pool.tls_client, "shop.test");
    SSL_SESSION *sess = d2i_SSL_SESSION(NULL, &der, len);
    assert_non_null(sess);
    SSL_SESSION_free(o->sess);
    o->sess = sess;
}

static void ring_rotate_now(void)
{
    ring_rotate(atomic_load(&ring.born_ms), moat_now_ms());
}

/* A ticket under the previous key still resumes (and is renewed); two rotations later it
 * does not. Also across a reload: the keys are outside the snapshot. */
static void test_ticket_rotation(void **state)
{
    (void)state;
    static const int versions[] = {TLS1_2_VERSION, TLS1_3_VERSION};
    for (int v = 0; v < 2; v++) {
        struct moat_config scfg;
        srv_cfg(&scfg, 0, true, 0);
        struct cli_cfg cc;
        cli_cfg(&cc, true, NULL, NULL, NULL);
        struct moat_tls_stats sst = {0}, cst = {0};
        assert_false(connect_once(&scfg, &sst, &cc, &cst, versions[v]));
        SSL_SESSION *first = tls_client_origin(cc.pool.tls_client, "shop.test")->sess;
        assert_non_null(first);
        unsigned char *der = NULL;
        int derlen = i2d_SSL_SESSION(first, &der);
        assert_true(derlen > 0);

        ring_rotate_now();
        assert_true(connect_once(&scfg, &sst, &cc, &cst, versions[v]));
        SSL_SESSION *renewed = tls_client_origin(cc.pool.tls_client, "shop.test")->sess;
        assert_ptr_not_equal(renewed, first);

        /* A reload: new contexts, same keys. */
        cfg_free(&scfg);
        srv_cfg(&scfg, 0, true, 0);
        slot_set(&cc, der, derlen);
        assert_true(connect_once(&scfg, &sst, &cc, &cst, versions[v]));

        ring_rotate_now();
        slot_set(&cc, der, derlen);
        assert_false(connect_once(&scfg, &sst, &cc, &cst, versions[v]));
        OPENSSL_free(der);
        assert_int_equal(ST(sst, tls_hs_resumed), 2);
        cfg_free(&cc.cfg);
        cfg_free(&scfg);
    }
}

/* Lazy rotation: the key is replaced when older than the period, by the ticket callback. */
static void test_ticket_lazy_rotation(void **state)
{
    (void)state;
    struct moat_config scfg;
    srv_cfg(&scfg, 0, true, 0);
    struct cli_cfg cc;
    cli_cfg(&cc, true, NULL, NULL, NULL);
    struct moat_tls_stats sst = {0}, cst = {0};
    unsigned char before[16];
    memcpy(before, ring.cur.name, 16);
    ((struct moat_tls_rt *)scfg.rt)->srv->ticket_period_ms = 1;
    usleep(20 * 1000);
    assert_false(connect_once(&scfg, &sst, &cc, &cst, TLS1_3_VERSION));
    assert_memory_not_equal(before, ring.cur.name, 16);
    assert_memory_equal(before, ring.prev.name, 16);
    ((struct moat_tls_rt *)scfg.rt)->srv->ticket_period_ms = 3600 * 1000;
    assert_true(connect_once(&scfg, &sst, &cc, &cst, TLS1_3_VERSION));
    cfg_free(&cc.cfg);
    cfg_free(&scfg);
}

struct thread_arg {
    struct moat_config *scfg;
    struct cli_cfg *cc;
    struct moat_tls_stats sst, cst;
    bool resumed;
};

static void *resume_thread(void *p)
{
    struct thread_arg *a = p;
    a->resumed = connect_once(a->scfg, &a->sst, a->cc, &a->cst, TLS1_2_VERSION);
    moat_buf_thread_cleanup();
    return NULL;
}

/* A session made on one thread resumes on another: the cache is the shared context's. */
static void test_resume_across_threads(void **state)
{
    (void)state;
    struct moat_config scfg;
    srv_cfg(&scfg, 0, false, 100);
    struct cli_cfg cc;
    cli_cfg(&cc, true, NULL, NULL, NULL);
    struct thread_arg a = {.scfg = &scfg, .cc = &cc};
    assert_false(connect_once(&scfg, &a.sst, &cc, &a.cst, TLS1_2_VERSION));
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, resume_thread, &a), 0);
    pthread_join(t, NULL);
    assert_true(a.resumed);
    cfg_free(&cc.cfg);
    cfg_free(&scfg);
}

/* The snapshot goes away in the middle of a handshake (a reload): the connection still has
 * what its callbacks need (ASan would see a use after free otherwise). */
static void test_snapshot_released_mid_handshake(void **state)
{
    (void)state;
    struct moat_config scfg;
    srv_cfg(&scfg, 0, true, 100);
    struct cli_cfg cc;
    cli_cfg(&cc, true, NULL, NULL, NULL);
    struct moat_tls_stats sst = {0}, cst = {0};
    struct pair p;
    pair_open(&p, 0);
    assert_int_equal(moat_tls_accept(&scfg, &p.srv.s, &sst), MOAT_OK);
    assert_int_equal(moat_tls_connect(&cc.pool, "x.api.test", &p.cli.s, &cst), MOAT_OK);
    cfg_free(&scfg);   /* before the SNI callback runs */
    cfg_free(&cc.cfg); /* before the ticket arrives */
    handshake(&p);
    assert_true(p.srv.done && p.cli.done);
    say(&p, &p.cli, &p.srv, "ping");
    say(&p, &p.srv, &p.cli, "pong");
    assert_int_equal(ST(cst, tls_up_hs), 1);
    pair_close(&p);
}

/* --- verification and mutual TLS ------------------------------------------------------------ */

static void test_verify_failures(void **state)
{
    (void)state;
    struct moat_cfg_cert fake = {(char *)path("fake-shop.pem"), (char *)path("fake-shop.key")};
    struct moat_config scfg = {0};
    scfg.tls.certs = &fake;
    scfg.tls.ncerts = 1;
    char err[MOAT_CONFIG_ERRLEN];
    assert_int_equal(moat_tls_build(&scfg, err, sizeof err), MOAT_OK);
    struct cli_cfg cc;
    cli_cfg(&cc, true, NULL, NULL, NULL);
    struct moat_tls_stats sst = {0}, cst = {0};
    struct pair p;
    open_tls(&p, &scfg, &sst, &cc, "shop.test", &cst, 0);
    assert_true(p.cli.failed);
    assert_string_equal(p.cli.s.err_reason, "unable to get local issuer certificate");
    assert_int_equal(ST(cst, tls_up_fail_verify), 1);
    assert_int_equal(ST(cst, tls_up_hs), 0);
    assert_true(p.srv.failed); /* the client's alert */
    assert_int_equal(ST(sst, tls_fail_other), 1);
    pair_close(&p);
    cfg_free(&scfg);

    /* The right CA, the wrong name: the default certificate for an unknown name. */
    srv_cfg(&scfg, 0, true, 0);
    memset(&cst, 0, sizeof cst);
    open_tls(&p, &scfg, &sst, &cc, "nowhere.test", &cst, 0);
    assert_true(p.cli.failed);
    assert_string_equal(p.cli.s.err_reason, "hostname mismatch");
    assert_int_equal(ST(cst, tls_up_fail_verify), 1);
    pair_close(&p);
    /* An IP literal is verified as an address, which the certificate does not have. */
    memset(&cst, 0, sizeof cst);
    open_tls(&p, &scfg, &sst, &cc, "127.0.0.1", &cst, 0);
    assert_true(p.cli.failed);
    assert_string_equal(p.cli.s.err_reason, "IP address mismatch");
    pair_close(&p);
    /* pool.tls.sni names what to send and verify. */
    struct cli_cfg named;
    cli_cfg(&named, true, "www.shop.test", NULL, NULL);
    open_tls(&p, &scfg, &sst, &named, "127.0.0.1", &cst, 0);
    assert_true(p.cli.done);
    assert_true(moat_str_eq(moat_tls_sni(&p.srv.s), MOAT_STR("www.shop.test")));
    pair_close(&p);
    cfg_free(&named.cfg);
    cfg_free(&cc.cfg);
    cfg_free(&scfg);
}

/* Mutual TLS against a plain OpenSSL server that requires a client certificate. */
static void test_mutual_tls(void **state)
{
    (void)state;
    SSL_CTX *sctx = SSL_CTX_new(TLS_server_method());
    assert_int_equal(SSL_CTX_use_certificate_chain_file(sctx, path("shop-ec.pem")), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey_file(sctx, path("shop-ec.key"), SSL_FILETYPE_PEM), 1);
    assert_int_equal(SSL_CTX_load_verify_locations(sctx, path("ca.pem"), NULL), 1);
    SSL_CTX_set_verify(sctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    static const int versions[] = {TLS1_2_VERSION, TLS1_3_VERSION};
    for (int v = 0; v < 2; v++) {
        struct cli_cfg with, without;
        cli_cfg(&with, true, NULL, path("client.pem"), path("client.key"));
        cli_cfg(&without, true, NULL, NULL, NULL);
        struct moat_tls_stats cst = {0};
        struct pair p;
        pair_open(&p, 0);
        raw_attach(&p.srv, sctx, true);
        assert_int_equal(moat_tls_connect(&with.pool, "shop.test", &p.cli.s, &cst), MOAT_OK);
        SSL_set_max_proto_version(tc(&p.cli)->ssl, versions[v]);
        handshake(&p);
        assert_true(p.cli.done && p.srv.done);
        X509 *peer = SSL_get0_peer_certificate(p.srv.raw);
        assert_non_null(peer);
        char cn[64];
        X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn, sizeof cn);
        assert_string_equal(cn, "moat-client");
        pair_close(&p);

        /* Without a certificate: TLS 1.2 fails in the handshake, TLS 1.3 at the first read
         * (the client's handshake ends before the server has judged its certificate). */
        pair_open(&p, 0);
        raw_attach(&p.srv, sctx, true);
        assert_int_equal(moat_tls_connect(&without.pool, "shop.test", &p.cli.s, &cst), MOAT_OK);
        SSL_set_max_proto_version(tc(&p.cli)->ssl, versions[v]);
        handshake(&p);
        assert_true(p.srv.failed);
        if (versions[v] == TLS1_2_VERSION) {
            assert_true(p.cli.failed);
            assert_non_null(p.cli.s.err_reason);
            assert_int_equal(ST(cst, tls_up_fail_other), 1);
        } else {
            assert_true(p.cli.done);
            char buf[64];
            assert_int_equal(read_next(&p, &p.cli, buf, sizeof buf), MOAT_ERR);
            assert_string_equal(p.cli.s.err_reason, "tlsv13 alert certificate required");
        }
        pair_close(&p);
        cfg_free(&with.cfg);
        cfg_free(&without.cfg);
    }
    SSL_CTX_free(sctx);
}

/* --- handshake failures, by reason ---------------------------------------------------------- */

/* The server side of a pair whose client is <send> raw bytes then <fin>, or a raw OpenSSL
 * client of <cctx>. Returns the server's counters. */
static struct moat_tls_stats fail_case(struct moat_config *scfg, const char *send, bool fin,
                                       SSL_CTX *cctx, const char **why)
{
    struct moat_tls_stats sst = {0};
    struct pair p;
    pair_open(&p, 0);
    assert_int_equal(moat_tls_accept(scfg, &p.srv.s, &sst), MOAT_OK);
    if (cctx)
        raw_attach(&p.cli, cctx, false);
    else {
        if (send)
            assert_int_equal(write(p.cli.s.io.fd, send, strlen(send)), (ssize_t)strlen(send));
        if (fin)
            shutdown(p.cli.s.io.fd, SHUT_WR);
        p.cli.done = true;
    }
    handshake(&p);
    assert_true(p.srv.failed);
    *why = p.srv.s.err_reason;
    pair_close(&p);
    return sst;
}

static void test_handshake_failures(void **state)
{
    (void)state;
    struct moat_config scfg;
    srv_cfg(&scfg, 0, true, 0);
    const char *why;
    struct moat_tls_stats st;

    st = fail_case(&scfg, "GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n", false, NULL, &why);
    assert_int_equal(ST(st, tls_fail_protocol), 1);
    assert_string_equal(why, "http request");
    st = fail_case(&scfg, "\x01\x02\x03\x04\x05\x06\x07garbage", false, NULL, &why);
    assert_int_equal(ST(st, tls_fail_protocol), 1);
    st = fail_case(&scfg, NULL, true, NULL, &why); /* connected, then gone */
    assert_int_equal(ST(st, tls_fail_eof), 1);
    assert_string_equal(why, "connection closed during the TLS handshake");
    assert_int_equal(ST(st, tls_fail_protocol) + ST(st, tls_fail_other), 0);

    /* A client that speaks only TLS 1.2 to a TLS 1.3-only server. */
    SSL_CTX *old = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_max_proto_version(old, TLS1_2_VERSION);
    struct moat_config v13;
    srv_cfg(&v13, MOAT_TLS_V13, true, 0);
    st = fail_case(&v13, NULL, false, old, &why);
    assert_int_equal(ST(st, tls_fail_version), 1);
    cfg_free(&v13);
    /* Nothing in common: RSA key exchange only. */
    assert_true(SSL_CTX_set_cipher_list(old, "AES128-SHA"));
    st = fail_case(&scfg, NULL, false, old, &why);
    assert_int_equal(ST(st, tls_fail_no_cipher), 1);
    assert_string_equal(why, "no shared cipher");
    SSL_CTX_free(old);
    /* ALPN with nothing we speak (h2 and http/1.1 we do). */
    SSL_CTX *spdy = SSL_CTX_new(TLS_client_method());
    assert_int_equal(SSL_CTX_set_alpn_protos(spdy, (const unsigned char *)"\x08spdy/3.1", 9), 0);
    st = fail_case(&scfg, NULL, false, spdy, &why);
    assert_int_equal(ST(st, tls_fail_protocol), 1);
    SSL_CTX_free(spdy);

    /* The handshake timeout is counted once, by the caller's timer. */
    struct moat_tls_stats sst = {0};
    struct pair p;
    pair_open(&p, 0);
    assert_int_equal(moat_tls_accept(&scfg, &p.srv.s, &sst), MOAT_OK);
    moat_tls_count_timeout(&p.srv.s);
    moat_tls_count_timeout(&p.srv.s);
    assert_int_equal(ST(sst, tls_fail_timeout), 1);
    assert_string_equal(p.srv.s.err_reason, "TLS handshake timed out");
    pair_close(&p);
    cfg_free(&scfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_errors),
        cmocka_unit_test(test_each_cert_and_groups),
        cmocka_unit_test(test_handshake_alpn),
        cmocka_unit_test(test_sni),
        cmocka_unit_test(test_ecdsa_or_rsa),
        cmocka_unit_test(test_big_transfer),
        cmocka_unit_test(test_readable_flag),
        cmocka_unit_test(test_syscalls_and_records),
        cmocka_unit_test(test_records),
        cmocka_unit_test(test_write_before_handshake),
        cmocka_unit_test(test_shutdown),
        cmocka_unit_test(test_resume_by_ticket),
        cmocka_unit_test(test_resume_by_cache),
        cmocka_unit_test(test_no_resumption),
        cmocka_unit_test(test_ticket_rotation),
        cmocka_unit_test(test_ticket_lazy_rotation),
        cmocka_unit_test(test_resume_across_threads),
        cmocka_unit_test(test_snapshot_released_mid_handshake),
        cmocka_unit_test(test_verify_failures),
        cmocka_unit_test(test_mutual_tls),
        cmocka_unit_test(test_handshake_failures),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
