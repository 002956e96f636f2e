/* dashrec.c: ns per moat_dashrec_record() (what every request pays for the dashboard: the
 * outcome counters, a latency bucket, three xxh3 hashes and three Space-Saving updates), on
 * a hit with a 60-byte URL, cycling over 5,000 URLs (most updates evict: the sketch's worst
 * case) and over 8 URLs (the hot-set case), at 1,000 requests a second per worker (all of
 * them go into the top-list sketches) and at a million (a sample does).
 * Build: make && gcc -std=c17 -D_GNU_SOURCE -O2 -Isrc -Ibuild/gen -o /tmp/dashrec \
 *        bench/micro/dashrec.c build/libmoat.a $(pkg-config --libs libfyaml jansson libxxhash \
 *        openssl) -pthread -lm && /tmp/dashrec */
#include <stdio.h>
#include <time.h>

#include "proxy/req.h"

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static double run(unsigned nurls, uint64_t step_us)
{
    static struct moat_dashrec d;
    static struct moat_req r;
    static char urls[5000][64];
    for (unsigned i = 0; i < nurls; i++)
        snprintf(urls[i], sizeof urls[i], "/products/shoes/running?size=42&color=blue&id=%u", i);
    r.authority = MOAT_STR("shop.example.com");
    r.c.status = "hit";
    r.status = 200;
    r.resp_bytes = 5120;
    snprintf(r.peer_text, sizeof r.peer_text, "203.0.113.7");
    const unsigned n = 5000000;
    uint64_t t = 1796671661000000ull;
    double t0 = now_ns();
    for (unsigned i = 0; i < n; i++) {
        r.target = moat_str_make(urls[i % nurls], strlen(urls[i % nurls]));
        r.t_start_us = t - 50;
        moat_dashrec_record(&d, &r, t);
        t += step_us;
    }
    return (now_ns() - t0) / n;
}

int main(void)
{
    /* 1,000 requests a second per worker: every one goes into the sketches */
    printf("1k/s,  5000 URLs: %.1f ns\n", run(5000, 1000));
    printf("1k/s,  8 URLs:    %.1f ns\n", run(8, 1000));
    /* a flood, a million a second per worker: 1 in 32 sampled */
    printf("1M/s,  5000 URLs: %.1f ns\n", run(5000, 1));
    printf("1M/s,  8 URLs:    %.1f ns\n", run(8, 1));
    return 0;
}
