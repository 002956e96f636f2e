/* main.c: command line, signals, start, reload, drain and stop. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <strings.h>
#include <unistd.h>

#include "admin/admin.h"
#include "core/log.h"
#include "proxy/server.h"
#include "tls/tls.h"

#ifndef MOAT_VERSION
#define MOAT_VERSION "0.1.0"
#endif

static const char usage[] =
    "usage: moat [-c FILE] [-t]\n"
    "       moat --origin URL [--listen HOST:PORT] [--workers N]\n"
    "\n"
    "  -c, --config FILE   run the YAML configuration FILE (default: the embedded demo)\n"
    "  -t, --test          check the configuration and exit: 0 if good, 1 with\n"
    "                      FILE:LINE:COL: what is wrong\n"
    "      --origin URL    quick mode: proxy everything to URL (http://host[:port] or\n"
    "                      https://host[:port])\n"
    "      --listen ADDR   quick mode: listen on ADDR (default 127.0.0.1:8080)\n"
    "      --workers N     worker threads (default: one per core)\n"
    "      --no-cache      quick mode: do not cache (by default quick mode caches what\n"
    "                      the origin's headers allow, RFC 9111)\n"
    "  -v, --version       print the version\n"
    "  -h, --help          this text\n"
    "\n"
    "Signals: SIGHUP reloads the configuration file; SIGTERM or SIGINT drains and exits.\n"
    "Docs: README.md, docs/configuration.md, docs/architecture.md\n";

struct control {
    struct moat_loop loop;
    struct moat_io sigio;
    struct moat_timer wait;
    const char *config_path;
    struct moat_httpd *admin, *demo;
    bool stopping;
};

static void wait_workers(struct moat_loop *loop, struct moat_timer *t)
{
    if (atomic_load(&moat_srv.workers_running) == 0) {
        moat_loop_stop(loop);
        return;
    }
    moat_timer_set(loop, t, 50);
}

static void on_signal(struct moat_loop *loop, struct moat_io *io, uint32_t ev)
{
    struct control *ctl = MOAT_CONTAINER_OF(io, struct control, sigio);
    (void)ev;
    struct signalfd_siginfo si;
    while (read(io->fd, &si, sizeof si) == sizeof si) {
        if (si.ssi_signo == SIGHUP) {
            char err[MOAT_CONFIG_ERRLEN];
            moat_server_reload(ctl->config_path, err, sizeof err);
        } else if (!ctl->stopping) {
            ctl->stopping = true;
            struct moat_config *cfg = moat_server_config();
            moat_log_info("signal %u: draining (up to %llu ms)", si.ssi_signo,
                          (unsigned long long)cfg->drain_timeout_ms);
            moat_server_drain(cfg->drain_timeout_ms);
            moat_config_release(&cfg);
            moat_timer_set(loop, &ctl->wait, 50);
        }
    }
}

/* moat -t: the names of the sites served over TLS that no certificate covers (they get the
 * default certificate, which a browser refuses). A warning, not an error: the site may be
 * reached over plain http only, or behind a name the operator knows about. */
struct name_check {
    const char *host;
    bool covered;
};

static bool cert_name_covers(const char *pat, size_t plen, const char *host)
{
    size_t hl = strlen(host);
    if (plen == hl && !strncasecmp(pat, host, hl))
        return true; /* the same name (a site's "*.example.com" needs that very wildcard) */
    if (host[0] != '*' && plen > 2 && pat[0] == '*' && pat[1] == '.') { /* one label */
        const char *dot = strchr(host, '.');
        return dot && dot != host && strlen(dot) == plen - 1 &&
               !strncasecmp(dot, pat + 1, plen - 1);
    }
    return false;
}

static void name_check_cert(const struct moat_tls_cert_info *ci, void *ud)
{
    struct name_check *nc = ud;
    for (const char *p = ci->names; p && *p && !nc->covered;) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ", ");
        if (n && cert_name_covers(p, n, nc->host))
            nc->covered = true;
        p += n;
    }
}

static void check_site_names(const struct moat_config *cfg)
{
    bool tls = false;
    for (size_t i = 0; i < cfg->nlisten; i++)
        tls |= cfg->listen[i].tls;
    if (!tls || !cfg->rt)
        return;
    for (size_t s = 0; s < cfg->nsites; s++) {
        if (cfg->sites[s].tls_acme) /* its certificate comes from tls.acme */
            continue;
        for (size_t h = 0; h < cfg->sites[s].nhosts; h++) {
            const char *host = cfg->sites[s].hosts[h];
            if (!strcmp(host, "*"))
                continue;
            struct name_check nc = {host, false};
            moat_tls_each_cert(cfg, name_check_cert, &nc);
            if (!nc.covered)
                fprintf(stderr,
                        "moat: warning: sites[%zu].hosts: %s has no certificate in "
                        "tls.certificates; clients asking for it get the default one\n",
                        s, host);
        }
    }
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"test", no_argument, NULL, 't'},
                                         {"origin", required_argument, NULL, 'o'},
                                         {"listen", required_argument, NULL, 'l'},
                                         {"workers", required_argument, NULL, 'w'},
                                         {"version", no_argument, NULL, 'v'},
                                         {"no-cache", no_argument, NULL, 'n'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *path = NULL, *origin = NULL, *listen_addr = NULL;
    bool test = false, no_cache = false;
    long workers = -1;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:tvh", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            test = true;
            break;
        case 'o':
            origin = optarg;
            break;
        case 'l':
            listen_addr = optarg;
            break;
        case 'w': {
            char *end;
            workers = strtol(optarg, &end, 10);
            if (*end || workers < 1 || workers > 256) {
                fprintf(stderr, "moat: --workers wants 1..256\n");
                return 2;
            }
            break;
        }
        case 'n':
            no_cache = true;
            break;
        case 'v':
            printf("moat %s\n", MOAT_VERSION);
            return 0;
        case 'h':
            fputs(usage, stdout);
            return 0;
        default:
            fputs(usage, stderr);
            return 2;
        }
    }
    if (optind < argc || (path && origin) || (listen_addr && !origin) || (no_cache && !origin)) {
        fputs(usage, stderr);
        return 2;
    }

    char err[MOAT_CONFIG_ERRLEN];
    struct moat_config *cfg;
    if (origin)
        cfg = moat_config_quick(origin, listen_addr ? listen_addr : "127.0.0.1:8080", err,
                                sizeof err);
    else if (path)
        cfg = moat_config_load(path, err, sizeof err);
    else
        cfg = moat_config_load_string(moat_config_default_yaml, strlen(moat_config_default_yaml),
                                      "(embedded default)", err, sizeof err);
    if (cfg && moat_server_prepare(cfg, err, sizeof err) != MOAT_OK)
        moat_config_release(&cfg);
    if (!cfg) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (test) {
        check_site_names(cfg);
        printf("moat: configuration %s is good\n", path ? path : "(embedded default)");
        moat_config_release(&cfg);
        return 0;
    }
    if (workers > 0)
        cfg->workers = (unsigned)workers;
    if (no_cache)
        cfg->cache.enabled = false;
    if (moat_log_open(cfg->error_log, (int)cfg->log_level) != MOAT_OK) {
        fprintf(stderr, "moat: cannot open error log %s: %s\n", cfg->error_log, strerror(errno));
        return 1;
    }

    /* Signals go to the control loop only: block them before any thread starts so the
     * workers inherit the mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    static struct control ctl;
    if (moat_loop_init(&ctl.loop) != MOAT_OK) {
        fprintf(stderr, "moat: epoll: %s\n", strerror(errno));
        return 1;
    }
    ctl.config_path = path;
    ctl.wait.cb = wait_workers;
    ctl.sigio.fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    ctl.sigio.cb = on_signal;
    moat_loop_add(&ctl.loop, &ctl.sigio, EPOLLIN);

    bool admin = cfg->admin.enabled, demo = cfg->demo.enabled;
    struct moat_addr admin_addr = cfg->admin.listen, demo_addr = cfg->demo.listen;
    (void)admin_addr;
    if (demo && !(ctl.demo = moat_demo_start(&ctl.loop, &demo_addr, err, sizeof err))) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (admin && !(ctl.admin = moat_admin_start(&ctl.loop, cfg, path, err, sizeof err))) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    struct moat_config *boot = cfg;
    moat_config_ref(boot);
    if (moat_server_start(cfg, err, sizeof err) != MOAT_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (demo)
        fprintf(stderr, "moat: demo origin on http://%s/\n", boot->demo.listen.text);
    if (admin && boot->admin.dashboard)
        fprintf(stderr, "moat: dashboard on http://%s/\n", boot->admin.listen.text);
    if (admin)
        fprintf(stderr, "moat: admin API on http://%s/status\n", boot->admin.listen.text);
    moat_config_release(&boot);

    moat_loop_run(&ctl.loop);

    moat_server_join();
    moat_admin_stop(ctl.admin);
    moat_httpd_stop(ctl.demo);
    close(ctl.sigio.fd);
    moat_loop_destroy(&ctl.loop);
    moat_log_info("stopped");
    return 0;
}
