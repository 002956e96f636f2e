/* Flash-crowd client: flash_client PORT PATH CLIENTS BODY_FILE
 *
 * Opens CLIENTS connections to 127.0.0.1:PORT (all established before anything is sent), then
 * writes `GET PATH` (Connection: close) on all of them at once and reads every response with
 * epoll. A response is complete when its Content-Length body (or its chunked body up to the
 * last chunk) has arrived. Prints one line per connection on stdout:
 *   STATUS <TAB> CACHE-STATUS or - <TAB> BODY_BYTES <TAB> SAME_AS_BODY_FILE(1/0) <TAB> SECONDS
 * SECONDS counted from the moment the first request was written; STATUS 0 = error/no answer.
 * The Python version (flash_client.py) costs ~0.6 s of client CPU for 1,000 x 64 KiB on one
 * core, more than the thing measured; this one receives into one buffer per connection and
 * parses once at the end. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
    int fd, done;
    char *buf;
    size_t len, cap;
    long need; /* total bytes expected once headers are known, -1 unknown, -2 chunked */
    double t;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* header value (case-insensitive name) in the head [buf, end) or NULL; copies into out */
static int header(const char *buf, const char *end, const char *name, char *out, size_t outsz) {
    size_t n = strlen(name);
    for (const char *p = buf; p < end; ) {
        const char *eol = memmem(p, end - p, "\r\n", 2);
        if (!eol) eol = end;
        if ((size_t)(eol - p) > n && strncasecmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1;
            while (v < eol && *v == ' ') v++;
            size_t l = eol - v < (long)outsz - 1 ? (size_t)(eol - v) : outsz - 1;
            memcpy(out, v, l);
            out[l] = 0;
            return 1;
        }
        p = eol + 2;
    }
    return 0;
}

/* decode a chunked body in place; returns its length or -1 if incomplete/bad */
static long dechunk(char *p, size_t len) {
    size_t r = 0, w = 0;
    for (;;) {
        char *eol = memmem(p + r, len - r, "\r\n", 2);
        if (!eol) return -1;
        long sz = strtol(p + r, NULL, 16);
        r = eol - p + 2;
        if (sz == 0) return (long)w;
        if (r + sz + 2 > len) return -1;
        memmove(p + w, p + r, sz);
        w += sz;
        r += sz + 2;
    }
}

static void check_complete(struct conn *c, double t) {
    char *he = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!he) return;
    size_t hl = he - c->buf + 4;
    if (c->need == -1) {
        char v[64];
        if (header(c->buf, he, "Content-Length", v, sizeof v)) c->need = (long)hl + atol(v);
        else if (header(c->buf, he, "Transfer-Encoding", v, sizeof v) && strcasestr(v, "chunked")) c->need = -2;
        else c->need = -3; /* until EOF */
    }
    if (c->need >= 0 && c->len >= (size_t)c->need) { c->done = 1; c->t = t; }
    if (c->need == -2 && c->len >= hl + 5 && memcmp(c->buf + c->len - 5, "0\r\n\r\n", 5) == 0) {
        c->done = 1; c->t = t;
    }
}

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: flash_client PORT PATH CLIENTS BODY_FILE\n"); return 2; }
    int port = atoi(argv[1]), n = atoi(argv[3]);
    const char *path = argv[2];
    FILE *bf = fopen(argv[4], "rb");
    if (!bf) { perror(argv[4]); return 2; }
    static char want[1 << 20];
    size_t wantlen = fread(want, 1, sizeof want, bf);
    fclose(bf);

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < (rlim_t)n + 64) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    struct conn *cs = calloc(n, sizeof *cs);
    int ep = epoll_create1(0);
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            fprintf(stderr, "connect %d: %s\n", i, strerror(errno));
            if (fd >= 0) close(fd);
            cs[i].fd = -1;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(fd, F_SETFL, O_NONBLOCK);
        cs[i].fd = fd;
        cs[i].cap = wantlen + 4096;
        cs[i].buf = malloc(cs[i].cap);
        cs[i].need = -1;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    usleep(200000); /* let the server accept them all */
    char req[2048];
    int rl2 = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n", path);
    double t0 = now();
    int open_ = 0;
    for (int i = 0; i < n; i++) {
        if (cs[i].fd < 0) continue;
        if (write(cs[i].fd, req, rl2) != rl2) { close(cs[i].fd); cs[i].fd = -1; continue; }
        open_++;
    }
    struct epoll_event evs[256];
    double deadline = t0 + 60;
    while (open_ > 0 && now() < deadline) {
        int k = epoll_wait(ep, evs, 256, 1000);
        double t = now();
        for (int e = 0; e < k; e++) {
            struct conn *c = &cs[evs[e].data.u32];
            for (;;) {
                if (c->cap - c->len < 65536) { c->cap = c->cap * 2 + 65536; c->buf = realloc(c->buf, c->cap); }
                ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
                if (r > 0) { c->len += r; continue; }
                if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
                /* EOF or error */
                if (!c->done && c->need == -3) { c->done = 1; c->t = t; }
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                open_--;
                break;
            }
            if (!c->done) check_complete(c, t);
            if (c->done && c->fd >= 0) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                open_--;
            }
        }
    }
    for (int i = 0; i < n; i++) {
        struct conn *c = &cs[i];
        int status = 0;
        char cstat[256] = "-";
        long blen = 0;
        int same = 0;
        if (c->done && c->len > 12 && memcmp(c->buf, "HTTP/1.", 7) == 0) {
            status = atoi(c->buf + 9);
            char *he = memmem(c->buf, c->len, "\r\n\r\n", 4);
            header(c->buf, he, "Cache-Status", cstat, sizeof cstat);
            size_t hl = he - c->buf + 4;
            if (c->need == -2) blen = dechunk(c->buf + hl, c->len - hl);
            else blen = (long)(c->len - hl);
            same = blen == (long)wantlen && memcmp(c->buf + hl, want, wantlen) == 0;
        }
        for (char *p = cstat; *p; p++) if (*p == '\t') *p = ' ';
        printf("%d\t%s\t%ld\t%d\t%.6f\n", status, cstat, blen, same, c->done ? c->t - t0 : -1.0);
    }
    return 0;
}
