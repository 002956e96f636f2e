/* TLS handshake load generator: tls_load -p PORT [options]
 *
 * Keeps CONNS connections busy for SECONDS. Each connection: TCP connect to HOST:PORT, a TLS
 * handshake, one `GET PATH` with `Connection: close`, the whole response read (Content-Length
 * or until the server closes), close; then the slot starts over with a new connection.
 *
 *   (default)  every handshake is a full one: no session is ever offered, and the client's own
 *              session cache is off. This is the point of this client: wrk and h2load reuse
 *              sessions when they reconnect, so "Connection: close" with them measures
 *              resumed handshakes, not full ones.
 *   --resume   one full handshake first (not counted), then every connection offers the
 *              session saved from it (a TLS 1.3 ticket, read after the first response).
 *   --plain    no TLS at all (the same connect / GET / close cycle): the reference row.
 *
 * Every handshake is checked with SSL_session_reused(), so the output proves which kind it
 * measured: "full" and "resumed" counts. The offer: TLS 1.2 and 1.3 like a browser
 * (--tls13 or --tls12 for one only; a server pinned to TLS 1.3 negotiates 1.3 either way, and
 * HAProxy 2.6 serves its RSA certificate to a TLS-1.3-only ClientHello even when it has an
 * ECDSA one: it looks for an ECDSA-capable cipher among the TLS 1.2 ones), --ciphersuites
 * (TLS 1.3, default TLS_AES_256_GCM_SHA384), --ciphers (TLS 1.2, default
 * ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384),
 * --groups (default X25519:P-256: the key share sent is X25519's, the first; P-256 is listed
 * because HAProxy picks its ECDSA P-256 certificate only for a client that lists that curve,
 * as browsers do), --sigalgs (e.g. rsa_pss_rsae_sha256:rsa_pkcs1_sha256 to get an
 * RSA certificate from a server that has ECDSA and RSA ones). The server's certificate is not
 * verified (the client's cost stays what the handshake itself needs; the server's
 * CertificateVerify signature is still checked by TLS 1.3).
 *
 * Prints a human line on stderr and, on stdout, one `WRKJSON {...}` line with wrk's fields
 * (bench/lua/report.lua: requests, duration_us, bytes, errors by kind, latency percentiles
 * of the whole connect-to-last-byte cycle) plus handshakes, full, resumed, protocol, cipher,
 * group, key_type, key_bits of the first completed handshake, so bench/run.sh treats it like
 * a wrk run. Errors: connect (connect or SO_ERROR), read (handshake or read failed, early
 * close), write, status (not 2xx/3xx), timeouts (a cycle longer than --timeout).
 *
 * Built by bench/run.sh: cc -O2 -o tls_load tls_load.c -lssl -lcrypto. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum state { S_IDLE, S_CONNECT, S_HANDSHAKE, S_WRITE, S_READ };

struct conn {
    int fd;
    enum state st;
    SSL *ssl;
    double t0;
    size_t sent;
    char buf[16384]; /* the response head, and a scratch area for the body */
    size_t len;
    long need;   /* bytes of the whole response once the head is known; -1 unknown */
    size_t got;  /* bytes of the response read so far */
    int status;
};

static struct {
    const char *host, *sni, *path, *ciphersuites, *ciphers, *groups, *sigalgs;
    int port, conns, resume, plain, only; /* only: 0 = TLS 1.2 and 1.3, else that version */
    double seconds, timeout;
} opt = {"127.0.0.1", "bench.test", "/1k", "TLS_AES_256_GCM_SHA384",
         "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384", "X25519:P-256", NULL,
         0, 32, 0, 0, 0, 4.0, 5.0};

static struct {
    uint64_t requests, bytes, full, resumed, connect_err, read_err, write_err, status_err,
        timeouts;
    uint32_t *lat; /* µs per completed cycle */
    size_t nlat, cap;
    char protocol[32], cipher[64], group[32], key_type[16];
    int key_bits, have_info;
} res;

static SSL_CTX *ctx;
static SSL_SESSION *saved;
static struct sockaddr_in addr;
static char request[1024];
static size_t request_len;
static int ep;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "tls_load: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(2);
}

static void watch(struct conn *c, uint32_t events, int op)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(ep, op, c->fd, &ev) < 0)
        die("epoll_ctl");
}

static void finish(struct conn *c)
{
    if (c->ssl) {
        /* No close_notify is sent (it would cost the client a write per connection, and
         * the server has sent its own after `Connection: close`). Without this flag
         * SSL_free() would take the unfinished shutdown for a failure and mark the session
         * not resumable -- the one session that --resume offers on every connection. */
        SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(c->ssl);
    }
    c->ssl = NULL;
    if (c->fd >= 0)
        close(c->fd); /* closing removes it from the epoll set */
    c->fd = -1;
    c->st = S_IDLE;
}

static void record_info(SSL *ssl)
{
    if (res.have_info || !ssl)
        return;
    res.have_info = 1;
    snprintf(res.protocol, sizeof res.protocol, "%s", SSL_get_version(ssl));
    snprintf(res.cipher, sizeof res.cipher, "%s", SSL_get_cipher_name(ssl));
    int nid = SSL_get_negotiated_group(ssl);
    const char *g = nid ? OBJ_nid2sn(nid) : NULL;
    snprintf(res.group, sizeof res.group, "%s", g ? g : "-");
    X509 *peer = SSL_get1_peer_certificate(ssl);
    if (peer) {
        EVP_PKEY *pk = X509_get0_pubkey(peer);
        int id = pk ? EVP_PKEY_get_base_id(pk) : 0;
        snprintf(res.key_type, sizeof res.key_type, "%s",
                 id == EVP_PKEY_EC ? "EC" : id == EVP_PKEY_RSA ? "RSA" : "other");
        res.key_bits = pk ? EVP_PKEY_get_bits(pk) : 0;
        X509_free(peer);
    }
}

static void start(struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->t0 = now();
    c->len = c->got = c->sent = 0;
    c->need = -1;
    c->status = 0;
    c->ssl = NULL;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        res.connect_err++;
        close(c->fd);
        c->fd = -1;
        c->st = S_IDLE;
        return;
    }
    c->st = S_CONNECT;
    watch(c, EPOLLOUT, EPOLL_CTL_ADD);
}

/* Parses the head once it is complete: status and Content-Length. */
static void parse_head(struct conn *c)
{
    char *he = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!he || c->status)
        return;
    size_t hl = he - c->buf + 4;
    if (c->len > 12 && memcmp(c->buf, "HTTP/1.", 7) == 0)
        c->status = atoi(c->buf + 9);
    else
        c->status = -1;
    for (char *p = c->buf; p < he;) {
        char *eol = memmem(p, he + 2 - p, "\r\n", 2);
        if (!eol)
            break;
        if (eol - p > 15 && strncasecmp(p, "content-length:", 15) == 0)
            c->need = (long)hl + atol(p + 15);
        p = eol + 2;
    }
}

static void done_ok(struct conn *c)
{
    double t = now() - c->t0;
    if (c->status < 200 || c->status >= 400)
        res.status_err++;
    res.requests++;
    res.bytes += c->got;
    if (res.nlat == res.cap) {
        res.cap = res.cap ? res.cap * 2 : 65536;
        res.lat = realloc(res.lat, res.cap * sizeof *res.lat);
        if (!res.lat)
            die("out of memory");
    }
    res.lat[res.nlat++] = (uint32_t)(t * 1e6);
    if (opt.resume && !saved && c->ssl) {
        SSL_SESSION *s = SSL_get1_session(c->ssl);
        if (s && SSL_SESSION_is_resumable(s))
            saved = s;
        else if (s)
            SSL_SESSION_free(s);
    }
    finish(c);
}

/* Advances <c> as far as it goes without blocking: it then waits for epoll, or is done. */
static void step(struct conn *c)
{
    for (;;) {
        switch (c->st) {
        case S_IDLE:
            return;
        case S_CONNECT: {
            int err = 0;
            socklen_t l = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
            if (err) {
                res.connect_err++;
                finish(c);
                return;
            }
            if (opt.plain) {
                c->st = S_WRITE;
                continue;
            }
            c->ssl = SSL_new(ctx);
            if (!c->ssl)
                die("SSL_new");
            SSL_set_fd(c->ssl, c->fd);
            if (opt.sni && *opt.sni)
                SSL_set_tlsext_host_name(c->ssl, opt.sni);
            if (saved)
                SSL_set_session(c->ssl, saved);
            c->st = S_HANDSHAKE;
            continue;
        }
        case S_HANDSHAKE: {
            int r = SSL_connect(c->ssl);
            if (r == 1) {
                if (SSL_session_reused(c->ssl))
                    res.resumed++;
                else
                    res.full++;
                record_info(c->ssl);
                c->st = S_WRITE;
                continue;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ) {
                watch(c, EPOLLIN, EPOLL_CTL_MOD);
                return;
            }
            if (e == SSL_ERROR_WANT_WRITE) {
                watch(c, EPOLLOUT, EPOLL_CTL_MOD);
                return;
            }
            if (res.read_err < 3) {
                fprintf(stderr, "tls_load: handshake failed (SSL error %d)\n", e);
                ERR_print_errors_fp(stderr);
            }
            ERR_clear_error();
            res.read_err++;
            finish(c);
            return;
        }
        case S_WRITE: {
            ssize_t n;
            if (opt.plain) {
                n = write(c->fd, request + c->sent, request_len - c->sent);
                if (n < 0 && errno == EAGAIN) {
                    watch(c, EPOLLOUT, EPOLL_CTL_MOD);
                    return;
                }
            } else {
                int r = SSL_write(c->ssl, request + c->sent, (int)(request_len - c->sent));
                n = r;
                if (r <= 0) {
                    int e = SSL_get_error(c->ssl, r);
                    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                        watch(c, e == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN, EPOLL_CTL_MOD);
                        return;
                    }
                    n = -1;
                    ERR_clear_error();
                }
            }
            if (n < 0) {
                res.write_err++;
                finish(c);
                return;
            }
            c->sent += n;
            if (c->sent < request_len)
                continue;
            c->st = S_READ;
            watch(c, EPOLLIN, EPOLL_CTL_MOD);
            continue;
        }
        case S_READ: {
            /* The head goes to buf; once it is parsed the body is read over it. */
            size_t off = c->status ? 0 : c->len;
            size_t room = sizeof c->buf - off;
            if (room == 0) { /* a head larger than the buffer: not what a bench serves */
                res.read_err++;
                finish(c);
                return;
            }
            ssize_t n;
            if (opt.plain) {
                n = read(c->fd, c->buf + off, room);
                if (n < 0 && errno == EAGAIN) {
                    watch(c, EPOLLIN, EPOLL_CTL_MOD);
                    return;
                }
            } else {
                int r = SSL_read(c->ssl, c->buf + off, (int)room);
                n = r;
                if (r <= 0) {
                    int e = SSL_get_error(c->ssl, r);
                    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                        watch(c, e == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN, EPOLL_CTL_MOD);
                        return;
                    }
                    n = e == SSL_ERROR_ZERO_RETURN ? 0 : -1;
                    ERR_clear_error();
                }
            }
            if (n < 0) {
                res.read_err++;
                finish(c);
                return;
            }
            if (n == 0) { /* the server closed: complete if the length was unknown */
                if (c->status > 0 && c->need < 0)
                    done_ok(c);
                else {
                    res.read_err++;
                    finish(c);
                }
                return;
            }
            c->got += n;
            if (!c->status) {
                c->len += n;
                parse_head(c);
            }
            if (c->status && c->need >= 0 && (long)c->got >= c->need) {
                done_ok(c);
                return;
            }
            continue;
        }
        }
    }
}

/* --resume: one exchange to get a session. A TLS 1.3 ticket arrives after the handshake,
 * so done_ok() takes the session once the response is read, before it frees the SSL. */
static void prime(void)
{
    struct conn c = {.fd = -1};
    start(&c);
    double deadline = now() + 10;
    struct epoll_event ev;
    step(&c);
    while (c.st != S_IDLE && now() < deadline)
        if (epoll_wait(ep, &ev, 1, 100) > 0)
            step(&c);
    if (c.st != S_IDLE)
        finish(&c);
    if (!saved)
        die("--resume: no resumable session from the first connection (no ticket?)");
    free(res.lat);
    memset(&res, 0, sizeof res);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void usage(void)
{
    fprintf(stderr, "usage: tls_load -p PORT [-H HOST] [-s SNI] [-P PATH] [-c CONNS] [-d SECONDS]\n"
                    "       [--resume | --plain] [--tls12 | --tls13] [--ciphersuites L] [--ciphers L]\n"
                    "       [--groups L] [--sigalgs L] [--timeout SECONDS]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"resume", no_argument, 0, 'r'},       {"plain", no_argument, 0, 'n'},
        {"tls12", no_argument, 0, '2'},        {"tls13", no_argument, 0, '3'},
        {"ciphersuites", required_argument, 0, 'S'}, {"ciphers", required_argument, 0, 'C'},
        {"groups", required_argument, 0, 'G'}, {"sigalgs", required_argument, 0, 'A'},
        {"timeout", required_argument, 0, 'T'}, {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "p:H:s:P:c:d:", longopts, NULL)) != -1) {
        switch (o) {
        case 'p': opt.port = atoi(optarg); break;
        case 'H': opt.host = optarg; break;
        case 's': opt.sni = optarg; break;
        case 'P': opt.path = optarg; break;
        case 'c': opt.conns = atoi(optarg); break;
        case 'd': opt.seconds = atof(optarg); break;
        case 'r': opt.resume = 1; break;
        case 'n': opt.plain = 1; break;
        case '2': opt.only = TLS1_2_VERSION; break;
        case '3': opt.only = TLS1_3_VERSION; break;
        case 'S': opt.ciphersuites = optarg; break;
        case 'C': opt.ciphers = optarg; break;
        case 'G': opt.groups = optarg; break;
        case 'A': opt.sigalgs = optarg; break;
        case 'T': opt.timeout = atof(optarg); break;
        default: usage();
        }
    }
    if (opt.port <= 0 || opt.conns <= 0 || opt.seconds <= 0 || (opt.resume && opt.plain))
        usage();

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons(opt.port);
    if (inet_pton(AF_INET, opt.host, &addr.sin_addr) != 1)
        die("-H must be an IPv4 address");
    request_len = snprintf(request, sizeof request,
                           "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", opt.path,
                           opt.sni && *opt.sni ? opt.sni : opt.host);

    if (!opt.plain) {
        ctx = SSL_CTX_new(TLS_client_method());
        if (!ctx)
            die("SSL_CTX_new");
        SSL_CTX_set_min_proto_version(ctx, opt.only ? opt.only : TLS1_2_VERSION);
        SSL_CTX_set_max_proto_version(ctx, opt.only ? opt.only : TLS1_3_VERSION);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        /* no client-side session cache: a session is offered only in --resume mode, and
         * then always the one saved by prime() */
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        if (opt.ciphersuites && !SSL_CTX_set_ciphersuites(ctx, opt.ciphersuites))
            die("bad --ciphersuites");
        if (opt.ciphers && !SSL_CTX_set_cipher_list(ctx, opt.ciphers))
            die("bad --ciphers");
        if (opt.groups && !SSL_CTX_set1_groups_list(ctx, opt.groups))
            die("bad --groups");
        if (opt.sigalgs && !SSL_CTX_set1_sigalgs_list(ctx, opt.sigalgs))
            die("bad --sigalgs");
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    if (opt.resume)
        prime();

    struct conn *cs = calloc(opt.conns, sizeof *cs);
    if (!cs)
        die("out of memory");
    for (int i = 0; i < opt.conns; i++)
        cs[i].fd = -1;
    struct epoll_event *evs = calloc(opt.conns, sizeof *evs);
    double t_start = now(), t_end = t_start + opt.seconds, t_check = t_start;
    for (;;) {
        double t = now();
        if (t >= t_end)
            break;
        /* Start a new cycle in every free slot before waiting. A cycle may also end within
         * step() (connect, handshake and response all there at once on loopback): then the
         * wait below must not block, or the slot would sit idle until another event. */
        int idle = 0;
        for (int i = 0; i < opt.conns; i++)
            if (cs[i].st == S_IDLE) {
                start(&cs[i]);
                step(&cs[i]);
                idle += cs[i].st == S_IDLE;
            }
        int wait_ms = idle ? 0 : (int)((t_end - t) * 1000) + 1;
        int n = epoll_wait(ep, evs, opt.conns, wait_ms);
        for (int i = 0; i < n; i++)
            step(evs[i].data.ptr);
        t = now();
        if (t - t_check > 0.1) { /* cycles past the timeout are abandoned and counted */
            t_check = t;
            for (int i = 0; i < opt.conns; i++)
                if (cs[i].st != S_IDLE && t - cs[i].t0 > opt.timeout) {
                    res.timeouts++;
                    finish(&cs[i]);
                }
        }
    }
    double elapsed = now() - t_start;
    for (int i = 0; i < opt.conns; i++)
        if (cs[i].st != S_IDLE)
            finish(&cs[i]); /* in flight at the end: not counted, like wrk */

    qsort(res.lat, res.nlat, sizeof *res.lat, cmp_u32);
#define PCT(p) (res.nlat ? res.lat[(size_t)((res.nlat - 1) * (p) / 100.0)] : 0)
    double mean = 0;
    for (size_t i = 0; i < res.nlat; i++)
        mean += res.lat[i];
    mean = res.nlat ? mean / res.nlat : 0;
    uint64_t hs = res.full + res.resumed;
    fprintf(stderr,
            "tls_load: %.2f s, %llu requests (%.0f/s), %llu handshakes: %llu full, %llu resumed; "
            "errors connect %llu read %llu write %llu status %llu timeout %llu; %s %s %s, "
            "server key %s %d; p50 %.2f ms p99 %.2f ms\n",
            elapsed, (unsigned long long)res.requests, res.requests / elapsed,
            (unsigned long long)hs, (unsigned long long)res.full,
            (unsigned long long)res.resumed, (unsigned long long)res.connect_err,
            (unsigned long long)res.read_err, (unsigned long long)res.write_err,
            (unsigned long long)res.status_err, (unsigned long long)res.timeouts,
            opt.plain ? "plain" : res.protocol, opt.plain ? "-" : res.cipher,
            opt.plain ? "-" : res.group, opt.plain ? "-" : res.key_type, res.key_bits,
            PCT(50) / 1000.0, PCT(99) / 1000.0);
    printf("WRKJSON {\"requests\":%llu,\"duration_us\":%.0f,\"bytes\":%llu,"
           "\"connect_errors\":%llu,\"read_errors\":%llu,\"write_errors\":%llu,"
           "\"status_errors\":%llu,\"timeouts\":%llu,\"p50_us\":%u,\"p90_us\":%u,\"p99_us\":%u,"
           "\"max_us\":%u,\"mean_us\":%.1f,\"client\":\"tls_load\",\"mode\":\"%s\","
           "\"handshakes\":%llu,\"full\":%llu,\"resumed\":%llu,\"protocol\":\"%s\","
           "\"cipher\":\"%s\",\"group\":\"%s\",\"key_type\":\"%s\",\"key_bits\":%d}\n",
           (unsigned long long)res.requests, elapsed * 1e6, (unsigned long long)res.bytes,
           (unsigned long long)res.connect_err, (unsigned long long)res.read_err,
           (unsigned long long)res.write_err, (unsigned long long)res.status_err,
           (unsigned long long)res.timeouts, PCT(50), PCT(90), PCT(99),
           res.nlat ? res.lat[res.nlat - 1] : 0, mean,
           opt.plain ? "plain" : opt.resume ? "resume" : "full", (unsigned long long)hs,
           (unsigned long long)res.full, (unsigned long long)res.resumed,
           opt.plain ? "" : res.protocol, opt.plain ? "" : res.cipher,
           opt.plain ? "" : res.group, opt.plain ? "" : res.key_type, res.key_bits);
    return 0;
}
