/* tls_micro.c: what the TLS transport's choices cost, server side only, in user-space
 * instructions (callgrind counts only what runs inside the srv_* wrappers: moat_tls_accept,
 * handshake, read, writev, close). One variant per run:
 *   exch_release exch_norelease  a request (100 B) and a head + 1 KiB response on keep-alive,
 *                                with and without SSL_MODE_RELEASE_BUFFERS
 *   rec1 rec2                    head + 1 KiB as one record (writev) or two (MOAT_SOCK_MORE)
 *   full1 full2 res1 res2        TLS 1.3 full ECDSA P-256 / resumed handshakes, 1 or 2 tickets
 *   rsa tls12                    TLS 1.3 full RSA-2048; TLS 1.2 full ECDSA
 *   idle                         heap bytes per idle connection, RELEASE_BUFFERS on and off
 * Client and server run in this thread over loopback TCP. bench/micro/tls_micro.sh builds it,
 * runs every variant at N and 2N operations under callgrind and prints the difference per
 * operation (setup cancels out). Syscalls count as one instruction each; how many there are is
 * pinned by tests/unit/tls/test_tls.c (one read(2) and one send(2) per exchange). */
#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tls/tls-int.h"

static char dir[] = "/tmp/moat-tls-micro-XXXXXX";

static const char *path(const char *name)
{
    static char buf[8][256];
    static unsigned k;
    char *p = buf[k++ % 8];
    snprintf(p, 256, "%s/%s", dir, name);
    return p;
}

static void run(const char *cmd)
{
    char b[1024];
    snprintf(b, sizeof b, "cd %s && (%s) >/dev/null 2>&1", dir, cmd);
    if (system(b) != 0) {
        fprintf(stderr, "failed: %s\n", b);
        exit(1);
    }
}

static void certs(void)
{
    if (!mkdtemp(dir))
        exit(1);
    run("printf 'basicConstraints=critical,CA:TRUE\\nkeyUsage=critical,keyCertSign\\n' > ca.ext && "
        "printf 'subjectAltName=DNS:shop.test\\n' > leaf.ext && "
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key && "
        "openssl req -new -key ca.key -subj /CN=ca -out ca.csr && "
        "openssl x509 -req -in ca.csr -signkey ca.key -days 3 -extfile ca.ext -out ca.pem && "
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.key && "
        "openssl req -new -key ec.key -subj /CN=shop.test -out ec.csr && "
        "openssl x509 -req -in ec.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3 "
        "-extfile leaf.ext -out ec.pem && "
        "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key && "
        "openssl req -new -key rsa.key -subj /CN=shop.test -out rsa.csr && "
        "openssl x509 -req -in rsa.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3 "
        "-extfile leaf.ext -out rsa.pem");
}

/* The server's calls: callgrind collects inside these only (--toggle-collect=srv_*). */
__attribute__((noinline)) int srv_accept(struct moat_sock *s, struct moat_tls_stats *st);
__attribute__((noinline)) int srv_accept(struct moat_sock *s, struct moat_tls_stats *st)
{
    extern struct moat_config scfg;
    return moat_tls_accept(&scfg, s, st);
}
__attribute__((noinline)) int srv_handshake(struct moat_sock *s);
__attribute__((noinline)) int srv_handshake(struct moat_sock *s)
{
    return moat_sock_handshake(s);
}
__attribute__((noinline)) ssize_t srv_read(struct moat_sock *s, void *b, size_t n);
__attribute__((noinline)) ssize_t srv_read(struct moat_sock *s, void *b, size_t n)
{
    return moat_sock_read(s, b, n);
}
__attribute__((noinline)) ssize_t srv_writev(struct moat_sock *s, const struct iovec *v, int n,
                                             unsigned f);
__attribute__((noinline)) ssize_t srv_writev(struct moat_sock *s, const struct iovec *v, int n,
                                             unsigned f)
{
    return moat_sock_writev(s, v, n, f);
}
__attribute__((noinline)) void srv_close(struct moat_sock *s);
__attribute__((noinline)) void srv_close(struct moat_sock *s)
{
    moat_sock_close(s);
}

struct pair {
    struct moat_sock srv, cli;
};

static int lfd;
static struct sockaddr_in laddr;

static void listen_once(void)
{
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    laddr = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof laddr;
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&laddr, sizeof laddr) || listen(lfd, 1024) ||
        getsockname(lfd, (struct sockaddr *)&laddr, &l))
        exit(1);
}

static void pair_open(struct pair *p)
{
    int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (connect(c, (struct sockaddr *)&laddr, sizeof laddr) && errno != EINPROGRESS)
        exit(1);
    int s = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    moat_sock_init_tcp(&p->srv, s, NULL);
    moat_sock_init_tcp(&p->cli, c, NULL);
}

/* Level-triggered driving is enough here: the flags are set before each call. */
static void ready(struct pair *p)
{
    p->srv.readable = p->srv.writable = p->cli.readable = p->cli.writable = true;
}

static void handshake(struct pair *p)
{
    int rs = MOAT_AGAIN, rc = MOAT_AGAIN;
    for (int i = 0; i < 1000 && (rs == MOAT_AGAIN || rc == MOAT_AGAIN); i++) {
        ready(p);
        if (rc == MOAT_AGAIN)
            rc = moat_sock_handshake(&p->cli);
        ready(p);
        if (rs == MOAT_AGAIN)
            rs = srv_handshake(&p->srv);
    }
    if (rs != MOAT_OK || rc != MOAT_OK) {
        fprintf(stderr, "handshake failed: %s / %s\n", p->srv.err_reason, p->cli.err_reason);
        exit(1);
    }
}

static char head[200], body[1024], req[100], buf[65536];

/* One request and a head + 1 KiB response. */
static void exchange(struct pair *p)
{
    ready(p);
    if (moat_sock_write(&p->cli, req, sizeof req) != sizeof req)
        exit(2);
    ssize_t n;
    do {
        ready(p);
        n = srv_read(&p->srv, buf, sizeof buf);
    } while (n == MOAT_AGAIN);
    if (n != sizeof req)
        exit(3);
    struct iovec iov[2] = {{head, sizeof head}, {body, sizeof body}};
    ready(p);
    if (srv_writev(&p->srv, iov, 2, 0) != sizeof head + sizeof body)
        exit(4);
    size_t got = 0;
    while (got < sizeof head + sizeof body) {
        ready(p);
        n = moat_sock_read(&p->cli, buf, sizeof buf);
        if (n > 0)
            got += (size_t)n;
        else if (n != MOAT_AGAIN)
            exit(5);
    }
}

static void pair_close(struct pair *p)
{
    srv_close(&p->srv);
    moat_sock_close(&p->cli);
}

struct moat_config scfg;
static struct moat_config ccfg;
static struct moat_cfg_pool pool;
static struct moat_cfg_origin origin = {.host = (char *)"shop.test"};
static struct moat_cfg_cert cert[2];

static void build(int which) /* 0: ECDSA, 1: RSA */
{
    if (scfg.rt_free)
        scfg.rt_free(scfg.rt);
    memset(&scfg, 0, sizeof scfg);
    cert[0] = (struct moat_cfg_cert){(char *)path(which ? "rsa.pem" : "ec.pem"),
                                     (char *)path(which ? "rsa.key" : "ec.key")};
    scfg.tls = (struct moat_cfg_tls){.certs = cert,
                                     .ncerts = 1,
                                     .session_tickets = true,
                                     .session_cache = 20480,
                                     .ticket_rotation_ms = 3600000,
                                     .session_timeout_ms = 3600000};
    char err[512];
    if (moat_tls_build(&scfg, err, sizeof err) != MOAT_OK) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    if (!ccfg.rt) {
        pool = (struct moat_cfg_pool){.name = (char *)"o",
                                      .origins = &origin,
                                      .norigins = 1,
                                      .tls = {.enabled = true, .verify = false}};
        ccfg.pools = &pool;
        ccfg.npools = 1;
        if (moat_tls_build(&ccfg, err, sizeof err) != MOAT_OK)
            exit(1);
    }
}

static void srv_mode(bool release)
{
    struct tls_server *srv = ((struct moat_tls_rt *)scfg.rt)->srv;
    for (size_t i = 0; i < srv->nctxs; i++)
        if (release)
            SSL_CTX_set_mode(srv->ctxs[i], SSL_MODE_RELEASE_BUFFERS);
        else
            SSL_CTX_clear_mode(srv->ctxs[i], SSL_MODE_RELEASE_BUFFERS);
}

static void srv_tickets(size_t n)
{
    struct tls_server *srv = ((struct moat_tls_rt *)scfg.rt)->srv;
    for (size_t i = 0; i < srv->nctxs; i++)
        SSL_CTX_set_num_tickets(srv->ctxs[i], n);
}

static void forget_session(void)
{
    struct tls_origin *o = tls_client_origin(pool.tls_client, "shop.test");
    SSL_SESSION_free(o->sess);
    o->sess = NULL;
}

/* <n> handshakes, each with one exchange (the client reads its ticket with the response). */
static void bench_hs(int n, bool resume, const char *sigalgs)
{
    struct moat_tls_stats sst = {0};
    forget_session();
    for (int i = 0; i < n + 1; i++) {
        if (!resume)
            forget_session();
        struct pair p;
        pair_open(&p);
        if (srv_accept(&p.srv, &sst) != MOAT_OK ||
            moat_tls_connect(&pool, "shop.test", &p.cli, NULL) != MOAT_OK)
            exit(1);
        if (sigalgs)
            SSL_set1_sigalgs_list(((struct tls_conn *)p.cli.tls)->ssl, sigalgs);
        handshake(&p);
        exchange(&p);
        pair_close(&p);
    }
    uint64_t res = atomic_load(&sst.tls_hs_resumed);
    if (resume ? res < (uint64_t)n : res != 0) {
        fprintf(stderr, "resumed %llu of %d\n", (unsigned long long)res, n);
        exit(1);
    }
}

static void bench_exchange(int n)
{
    struct pair p;
    pair_open(&p);
    srv_accept(&p.srv, NULL);
    moat_tls_connect(&pool, "shop.test", &p.cli, NULL);
    handshake(&p);
    exchange(&p);
    for (int i = 0; i < n; i++)
        exchange(&p);
    pair_close(&p);
}

/* Heap bytes per idle connection pair (server and client, after a handshake and one exchange).
 * The client's mode stays as it is, so the difference between two runs that change only the
 * server's is the server's. */
static double bench_idle_bytes(int n)
{
    struct pair *ps = calloc((size_t)n, sizeof *ps);
    forget_session();
    for (int i = 0; i < n; i++)
        pair_open(&ps[i]);
    size_t before = mallinfo2().uordblks;
    for (int i = 0; i < n; i++) {
        moat_tls_connect(&pool, "shop.test", &ps[i].cli, NULL);
        moat_tls_accept(&scfg, &ps[i].srv, NULL);
        handshake(&ps[i]);
        exchange(&ps[i]);
        forget_session(); /* each its own full handshake */
    }
    size_t after = mallinfo2().uordblks;
    for (int i = 0; i < n; i++)
        pair_close(&ps[i]);
    free(ps);
    return (double)(after - before) / n;
}

/* <n> responses of a head and a 1 KiB body: one record (writev of both) or two (the head held
 * by MOAT_SOCK_MORE, then the body: one send(2) either way). */
static void bench_records(int n, bool two)
{
    struct pair p;
    pair_open(&p);
    srv_accept(&p.srv, NULL);
    moat_tls_connect(&pool, "shop.test", &p.cli, NULL);
    handshake(&p);
    exchange(&p);
    struct iovec iov[2] = {{head, sizeof head}, {body, sizeof body}};
    for (int i = 0; i < n; i++) {
        ready(&p);
        if (two) {
            srv_writev(&p.srv, iov, 1, MOAT_SOCK_MORE);
            srv_writev(&p.srv, iov + 1, 1, 0);
        } else
            srv_writev(&p.srv, iov, 2, 0);
        size_t got = 0;
        while (got < sizeof head + sizeof body) {
            ready(&p);
            ssize_t r = moat_sock_read(&p.cli, buf, sizeof buf);
            if (r > 0)
                got += (size_t)r;
        }
    }
    pair_close(&p);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: tls_micro VARIANT N\n");
        return 2;
    }
    const char *v = argv[1];
    int n = atoi(argv[2]);
    certs();
    listen_once();
    memset(head, 'h', sizeof head);
    memset(body, 'b', sizeof body);
    memset(req, 'r', sizeof req);
    build(strcmp(v, "rsa") == 0);
    if (!strcmp(v, "exch_release"))
        bench_exchange(n);
    else if (!strcmp(v, "exch_norelease")) {
        srv_mode(false);
        bench_exchange(n);
    } else if (!strcmp(v, "rec1") || !strcmp(v, "rec2"))
        bench_records(n, v[3] == '2');
    else if (!strcmp(v, "full1") || !strcmp(v, "full2") || !strcmp(v, "rsa")) {
        srv_tickets(v[4] == '2' ? 2 : 1);
        bench_hs(n, false, NULL);
    } else if (!strcmp(v, "res1") || !strcmp(v, "res2")) {
        srv_tickets(v[3] == '2' ? 2 : 1);
        bench_hs(n, true, NULL);
    } else if (!strcmp(v, "tls12")) {
        SSL_CTX_set_max_proto_version(((struct moat_tls_rt *)scfg.rt)->srv->ctxs[0],
                                      TLS1_2_VERSION);
        bench_hs(n, false, NULL);
    } else if (!strcmp(v, "idle")) {
        srv_mode(false);
        double off = bench_idle_bytes(n);
        srv_mode(true);
        double on = bench_idle_bytes(n);
        printf("heap per idle connection pair (server + client, %d pairs): server "
               "RELEASE_BUFFERS on %.0f B, off %.0f B: the server's buffers are %.0f B\n",
               n, on, off, off - on);
    } else {
        fprintf(stderr, "unknown variant %s\n", v);
        return 2;
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    (void)!system(cmd);
    return 0;
}
