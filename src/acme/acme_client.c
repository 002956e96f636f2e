/* acme_client.c: the ACME client (RFC 8555) on its own thread: the account, one order per site
 * (the site's hosts as the certificate's names), the HTTP-01 / TLS-ALPN-01 challenges answered
 * by moat's listeners through the store, finalization with a CSR, the download, installation
 * in the store (served from the next handshake, no reload) and on disk, renewal, and retries
 * with exponential backoff and jitter.
 *
 * Blocking I/O on a thread of its own keeps the workers' loops free of it: an order is a dozen
 * sequential requests with polling in between, seconds to minutes of waiting, which is simple
 * as straight-line code and would be a state machine of callbacks on an event loop. The thread
 * reads the configuration in use at each round, so a reload that adds or removes ACME sites
 * takes effect at the next round (moat_acme_kick starts one at once).
 *
 * Storage (tls.acme.storage, created 0700; files 0600):
 *   account.key           the account's ECDSA P-256 key (PEM)
 *   <first host>.crt      the site's certificate chain (PEM, leaf first)
 *   <first host>.key      its ECDSA P-256 key (PEM)
 *   lock                  flock(2)ed while an order runs: several moat nodes sharing the
 *                         directory (NFS with locks, a shared volume) do not order the same
 *                         certificate twice; the one that waited finds the new files. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "acme/acme-http.h"
#include "acme/acme-int.h"
#include "core/log.h"

#define POLL_MAX 120 /* authorizations and orders are polled at most this many times */

static struct {
    pthread_t thread;
    bool running;
    pthread_mutex_t lock; /* guards stop, kicked (with cond) */
    pthread_cond_t cond;
    bool stop, kicked;
    struct moat_config *(*current)(void);
} th = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

/* One order's working state (ACME thread only). */
struct acme_run {
    const struct moat_cfg_acme *cfg;
    SSL_CTX *ctx;
    json_t *dir;
    EVP_PKEY *account;
    char kid[1024];
    char nonce[256];
    char thumb[64];
    long retry_after;
    char err[512];
};

static int fail(struct acme_run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct acme_run *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof r->err, fmt, ap);
    va_end(ap);
    return MOAT_ERR;
}

static bool stopping(void)
{
    pthread_mutex_lock(&th.lock);
    bool s = th.stop;
    pthread_mutex_unlock(&th.lock);
    return s;
}

/* Sleeps <ms> or until stopped/kicked. Returns true when stopping. */
static bool nap(uint64_t ms, bool wake_on_kick)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L)
        ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&th.lock);
    while (!th.stop && !(wake_on_kick && th.kicked))
        if (pthread_cond_timedwait(&th.cond, &th.lock, &ts) == ETIMEDOUT)
            break;
    if (wake_on_kick)
        th.kicked = false;
    bool s = th.stop;
    pthread_mutex_unlock(&th.lock);
    return s;
}

/* --- storage -------------------------------------------------------------------------------- */

static void spath(char *out, size_t n, const char *dir, const char *name, const char *ext)
{
    snprintf(out, n, "%s/%s%s", dir, name, ext);
}

/* Writes <data> to <path> atomically (a temporary file renamed), mode 0600. */
static int write_file(const char *path, const char *data, size_t len)
{
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return MOAT_ERR;
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w <= 0) {
            close(fd);
            unlink(tmp);
            return MOAT_ERR;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return MOAT_ERR;
    }
    return MOAT_OK;
}

static char *key_pem(EVP_PKEY *pk, size_t *len)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL;
    if (b && PEM_write_bio_PrivateKey(b, pk, NULL, NULL, 0, NULL, NULL)) {
        char *p;
        long n = BIO_get_mem_data(b, &p);
        if (n > 0 && (out = malloc((size_t)n)))
            memcpy(out, p, (size_t)n), *len = (size_t)n;
    }
    BIO_free(b);
    return out;
}

static EVP_PKEY *read_key(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    EVP_PKEY *pk = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    ERR_clear_error();
    return pk;
}

static int ensure_dir(const char *dir)
{
    if (mkdir(dir, 0700) == 0 || errno == EEXIST)
        return MOAT_OK;
    return MOAT_ERR;
}

/* A certificate chain and key as parsed from PEM. */
struct chain {
    X509 *x;
    STACK_OF(X509) * rest;
    EVP_PKEY *pk;
};

static void chain_clear(struct chain *c)
{
    X509_free(c->x);
    sk_X509_pop_free(c->rest, X509_free);
    EVP_PKEY_free(c->pk);
    memset(c, 0, sizeof *c);
}

static int chain_parse(BIO *b, struct chain *c)
{
    c->x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    c->rest = sk_X509_new_null();
    if (!c->x || !c->rest)
        return MOAT_ERR;
    X509 *ca;
    while ((ca = PEM_read_bio_X509(b, NULL, NULL, NULL)))
        if (!sk_X509_push(c->rest, ca)) {
            X509_free(ca);
            return MOAT_ERR;
        }
    ERR_clear_error();
    return MOAT_OK;
}

static int64_t asn1_unix(const ASN1_TIME *t)
{
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return (int64_t)timegm(&tm);
}

/* Does <x> name every one of <s>'s hosts? */
static bool covers(X509 *x, const struct acme_site *s)
{
    for (size_t i = 0; i < s->nnames; i++)
        if (X509_check_host(x, s->names[i], 0, X509_CHECK_FLAG_NO_WILDCARDS, NULL) != 1)
            return false;
    return true;
}

/* Puts <c> into <s> (taking its objects) under the store's lock. */
static void install(struct acme_site *s, struct chain *c)
{
    pthread_mutex_lock(&acme_store.lock);
    X509_free(s->x);
    EVP_PKEY_free(s->pk);
    sk_X509_pop_free(s->chain, X509_free);
    s->x = c->x;
    s->pk = c->pk;
    s->chain = c->rest;
    s->not_before = asn1_unix(X509_get0_notBefore(c->x));
    s->not_after = asn1_unix(X509_get0_notAfter(c->x));
    acme_ocsp_clear(s); /* the response was about the old certificate */
    pthread_mutex_unlock(&acme_store.lock);
    memset(c, 0, sizeof *c);
}

/* Loads <s>'s files from <dir> when they hold a certificate for all its names that is newer
 * than the one installed. Returns true when one was installed. */
static bool load_stored(const char *dir, struct acme_site *s)
{
    char cp[1100], kp[1100];
    spath(cp, sizeof cp, dir, s->names[0], ".crt");
    spath(kp, sizeof kp, dir, s->names[0], ".key");
    BIO *b = BIO_new_file(cp, "r");
    if (!b) {
        ERR_clear_error();
        return false;
    }
    struct chain c = {0};
    bool ok = chain_parse(b, &c) == MOAT_OK && (c.pk = read_key(kp)) &&
              X509_check_private_key(c.x, c.pk) == 1 && covers(c.x, s);
    BIO_free(b);
    ERR_clear_error();
    if (ok) {
        int64_t na = asn1_unix(X509_get0_notAfter(c.x));
        pthread_mutex_lock(&acme_store.lock);
        ok = !s->x || na > s->not_after;
        pthread_mutex_unlock(&acme_store.lock);
    } else if (c.x)
        moat_log_warn("acme: %s: %s does not hold a usable certificate for %s with its key; "
                      "ignored",
                      s->names[0], cp, s->joined);
    if (ok) {
        install(s, &c);
        acme_ocsp_load(dir, s);
    }
    chain_clear(&c);
    return ok;
}

/* --- the protocol --------------------------------------------------------------------------- */

static const char *dir_url(struct acme_run *r, const char *name)
{
    const char *u = json_string_value(json_object_get(r->dir, name));
    return u ? u : "";
}

/* The problem document's detail (RFC 7807), or the status. */
static void problem(struct acme_run *r, const char *what, const struct acme_resp *rs)
{
    json_t *j = rs->body ? json_loads(rs->body, 0, NULL) : NULL;
    const char *type = json_string_value(json_object_get(j, "type"));
    const char *detail = json_string_value(json_object_get(j, "detail"));
    fail(r, "%s: HTTP %d%s%s%s%s", what, rs->status, type ? " " : "", type ? type : "",
         detail ? ": " : "", detail ? detail : "");
    if (rs->retry_after > 0)
        r->retry_after = rs->retry_after;
    json_decref(j);
}

static int get_nonce(struct acme_run *r)
{
    if (r->nonce[0])
        return MOAT_OK;
    struct acme_resp rs;
    if (acme_http(r->ctx, "HEAD", dir_url(r, "newNonce"), NULL, NULL, 0, r->cfg->timeout_ms, &rs,
                  r->err, sizeof r->err) != MOAT_OK)
        return MOAT_ERR;
    snprintf(r->nonce, sizeof r->nonce, "%s", rs.nonce);
    acme_resp_clear(&rs);
    return r->nonce[0] ? MOAT_OK : fail(r, "newNonce: no Replay-Nonce");
}

/* A signed POST of <payload> (NULL: POST-as-GET) to <url>; one retry on badNonce (RFC 8555
 * 6.5). With <use_jwk> the account's key is sent instead of its URL (newAccount). */
static int post(struct acme_run *r, const char *url, const char *payload, bool use_jwk,
                struct acme_resp *rs)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (get_nonce(r) != MOAT_OK)
            return MOAT_ERR;
        char *jws = moat_acme_jws(r->account, use_jwk ? NULL : r->kid, r->nonce, url, payload);
        r->nonce[0] = '\0';
        if (!jws)
            return fail(r, "cannot sign the request to %.200s", url);
        int rc = acme_http(r->ctx, "POST", url, "application/jose+json", jws, strlen(jws),
                           r->cfg->timeout_ms, rs, r->err, sizeof r->err);
        free(jws);
        if (rc != MOAT_OK)
            return MOAT_ERR;
        snprintf(r->nonce, sizeof r->nonce, "%s", rs->nonce);
        if (rs->status == 400 && rs->body && strstr(rs->body, "badNonce") && attempt == 0) {
            acme_resp_clear(rs);
            continue;
        }
        return MOAT_OK;
    }
    return MOAT_ERR;
}

/* POSTs and parses a JSON answer with a 2xx status; else the problem is the error. */
static json_t *post_json(struct acme_run *r, const char *what, const char *url, const char *payload,
                         bool use_jwk, char *location, size_t loclen)
{
    struct acme_resp rs;
    if (post(r, url, payload, use_jwk, &rs) != MOAT_OK) {
        char e[512];
        snprintf(e, sizeof e, "%s", r->err);
        fail(r, "%s: %s", what, e);
        return NULL;
    }
    json_t *j = NULL;
    if (rs.status / 100 != 2) {
        problem(r, what, &rs);
    } else if (!(j = json_loads(rs.body, 0, NULL)) || !json_is_object(j)) {
        json_decref(j);
        j = NULL;
        fail(r, "%s: the answer is not a JSON object", what);
    } else if (location)
        snprintf(location, loclen, "%s", rs.location);
    acme_resp_clear(&rs);
    return j;
}

static int directory(struct acme_run *r)
{
    struct acme_resp rs;
    if (acme_http(r->ctx, "GET", r->cfg->directory, NULL, NULL, 0, r->cfg->timeout_ms, &rs, r->err,
                  sizeof r->err) != MOAT_OK)
        return MOAT_ERR;
    int rc = MOAT_OK;
    if (rs.status != 200)
        problem(r, "directory", &rs), rc = MOAT_ERR;
    else if (!(r->dir = json_loads(rs.body, 0, NULL)) || !json_is_object(r->dir) ||
             !*dir_url(r, "newNonce") || !*dir_url(r, "newAccount") || !*dir_url(r, "newOrder"))
        rc = fail(r, "directory: %s is not an ACME directory", r->cfg->directory);
    acme_resp_clear(&rs);
    return rc;
}

static int account(struct acme_run *r)
{
    char kp[1100];
    spath(kp, sizeof kp, r->cfg->storage, "account", ".key");
    /* A key that exists but cannot be read is an error, never replaced: it is the account. */
    if (!(r->account = read_key(kp)) && access(kp, F_OK) == 0)
        return fail(r, "account key: %s cannot be read as a PEM private key (fix or remove it)",
                    kp);
    if (!r->account) {
        size_t len = 0;
        char *pem = NULL;
        if (!(r->account = moat_acme_key_new()) || !(pem = key_pem(r->account, &len)) ||
            write_file(kp, pem, len) != MOAT_OK) {
            free(pem);
            return fail(r, "account key: cannot write %s: %s", kp, strerror(errno));
        }
        free(pem);
        moat_log_info("acme: new account key in %s", kp);
    }
    if (moat_acme_thumbprint(r->account, r->thumb, sizeof r->thumb) != MOAT_OK)
        return fail(r, "account key: %s is not an ECDSA P-256 key", kp);
    /* newAccount with a known key returns the existing account (200) and its URL: no need
     * to keep the URL on disk. */
    json_t *p = json_pack("{s:b}", "termsOfServiceAgreed", 1);
    if (r->cfg->email) {
        char mail[300];
        snprintf(mail, sizeof mail, "mailto:%s", r->cfg->email);
        json_object_set_new(p, "contact", json_pack("[s]", mail));
    }
    char *ps = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    json_t *j =
        post_json(r, "newAccount", dir_url(r, "newAccount"), ps, true, r->kid, sizeof r->kid);
    free(ps);
    if (!j)
        return MOAT_ERR;
    const char *st = json_string_value(json_object_get(j, "status"));
    int rc = !r->kid[0]                       ? fail(r, "newAccount: no Location")
             : st && strcmp(st, "valid") != 0 ? fail(r, "newAccount: the account is %s", st)
                                              : MOAT_OK;
    json_decref(j);
    return rc;
}

/* Adds a challenge to the store (what the listeners answer from now on). */
static int chal_add(struct acme_run *r, unsigned type, const char *token, const char *name,
                    const char *keyauth)
{
    struct acme_chal c = {.type = type};
    snprintf(c.token, sizeof c.token, "%s", token);
    snprintf(c.keyauth, sizeof c.keyauth, "%s", keyauth);
    snprintf(c.name, sizeof c.name, "%s", name);
    if (type == MOAT_ACME_TLSALPN01) {
        if (!(c.pk = moat_acme_key_new()) || !(c.x = moat_acme_alpn_cert(c.pk, name, keyauth))) {
            EVP_PKEY_free(c.pk);
            return fail(r, "%s: cannot build the tls-alpn-01 certificate", name);
        }
    }
    pthread_mutex_lock(&acme_store.lock);
    bool room = acme_store.nchal < ACME_MAX_CHAL;
    if (room)
        acme_store.chal[acme_store.nchal++] = c;
    if (type == MOAT_ACME_TLSALPN01)
        atomic_store(&acme_store.alpn_pending, true);
    pthread_mutex_unlock(&acme_store.lock);
    if (!room) {
        X509_free(c.x);
        EVP_PKEY_free(c.pk);
        return fail(r, "too many challenges at once");
    }
    return MOAT_OK;
}

static void chal_clear(void)
{
    pthread_mutex_lock(&acme_store.lock);
    for (size_t i = 0; i < acme_store.nchal; i++) {
        X509_free(acme_store.chal[i].x);
        EVP_PKEY_free(acme_store.chal[i].pk);
    }
    acme_store.nchal = 0;
    atomic_store(&acme_store.alpn_pending, false);
    pthread_mutex_unlock(&acme_store.lock);
}

/* Polls <url> (POST-as-GET) until its status leaves <waiting> (a list of statuses). Returns
 * the final object, or NULL (r->err). */
static json_t *poll_until(struct acme_run *r, const char *what, const char *url,
                          const char *const *waiting)
{
    for (int i = 0; i < POLL_MAX; i++) {
        json_t *j = post_json(r, what, url, NULL, false, NULL, 0);
        if (!j)
            return NULL;
        const char *st = json_string_value(json_object_get(j, "status"));
        bool wait = false;
        for (const char *const *w = waiting; st && *w; w++)
            wait |= !strcmp(st, *w);
        if (!wait)
            return j;
        json_decref(j);
        uint64_t ms = r->retry_after > 0 ? (uint64_t)MOAT_MIN(r->retry_after, 10) * 1000 : 500;
        r->retry_after = 0;
        if (nap(ms, false))
            return fail(r, "%s: stopping", what), NULL;
    }
    fail(r, "%s: still pending after %d polls", what, POLL_MAX);
    return NULL;
}

/* Answers one authorization: the preferred challenge type offered, made ready, then
 * triggered and polled. */
static int authorize(struct acme_run *r, const char *url)
{
    json_t *a = post_json(r, "authorization", url, NULL, false, NULL, 0);
    if (!a)
        return MOAT_ERR;
    const char *st = json_string_value(json_object_get(a, "status"));
    const char *name =
        json_string_value(json_object_get(json_object_get(a, "identifier"), "value"));
    int rc = MOAT_ERR;
    if (st && !strcmp(st, "valid")) {
        rc = MOAT_OK;
        goto out;
    }
    if (!name || !st || strcmp(st, "pending")) {
        fail(r, "authorization for %s is %s", name ? name : "?", st ? st : "without status");
        goto out;
    }
    unsigned want[2];
    bool alpn_first = r->cfg->tls_alpn_first;
    want[0] = alpn_first ? MOAT_ACME_TLSALPN01 : MOAT_ACME_HTTP01;
    want[1] = alpn_first ? MOAT_ACME_HTTP01 : MOAT_ACME_TLSALPN01;
    json_t *chosen = NULL;
    unsigned type = 0;
    for (int k = 0; k < 2 && !chosen; k++) {
        if (!(r->cfg->challenges & want[k]))
            continue;
        const char *tname = want[k] == MOAT_ACME_HTTP01 ? "http-01" : "tls-alpn-01";
        size_t i;
        json_t *c;
        json_array_foreach(json_object_get(a, "challenges"), i, c)
        {
            const char *t = json_string_value(json_object_get(c, "type"));
            if (t && !strcmp(t, tname)) {
                chosen = c;
                type = want[k];
                break;
            }
        }
    }
    if (!chosen) {
        fail(r, "%s: the CA offers none of the challenges in tls.acme.challenges", name);
        goto out;
    }
    const char *token = json_string_value(json_object_get(chosen, "token"));
    const char *curl = json_string_value(json_object_get(chosen, "url"));
    if (!token || !curl || strlen(token) > 100 ||
        strspn(token, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                      "abcdefghijklmnopqrstuvwxyz"
                      "0123456789-_") != strlen(token)) {
        fail(r, "%s: the challenge has no usable token or url", name);
        goto out;
    }
    char keyauth[256];
    snprintf(keyauth, sizeof keyauth, "%s.%s", token, r->thumb);
    if (chal_add(r, type, token, name, keyauth) != MOAT_OK)
        goto out;
    moat_log_info("acme: %s: answering %s", name,
                  type == MOAT_ACME_HTTP01 ? "http-01" : "tls-alpn-01");
    json_t *c = post_json(r, "challenge", curl, "{}", false, NULL, 0);
    if (!c)
        goto out;
    json_decref(c);
    static const char *const waiting[] = {"pending", "processing", NULL};
    json_t *fin = poll_until(r, "authorization", url, waiting);
    if (!fin)
        goto out;
    st = json_string_value(json_object_get(fin, "status"));
    if (st && !strcmp(st, "valid")) {
        rc = MOAT_OK;
    } else {
        /* The reason is in the challenge's error (RFC 8555 7.1.5). */
        const char *detail = NULL;
        size_t i;
        json_t *ch;
        json_array_foreach(json_object_get(fin, "challenges"), i, ch)
        {
            const char *d =
                json_string_value(json_object_get(json_object_get(ch, "error"), "detail"));
            if (d)
                detail = d;
        }
        fail(r, "%s: authorization %s%s%s", name, st ? st : "failed", detail ? ": " : "",
             detail ? detail : "");
    }
    json_decref(fin);
out:
    json_decref(a);
    return rc;
}

/* One whole order for <s>: on success the new certificate is installed and written. */
static int order(struct acme_run *r, struct acme_site *s)
{
    json_t *ids = json_array();
    for (size_t i = 0; i < s->nnames; i++)
        json_array_append_new(ids, json_pack("{s:s, s:s}", "type", "dns", "value", s->names[i]));
    json_t *p = json_pack("{s:o}", "identifiers", ids);
    char *ps = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    char ourl[2048] = "";
    json_t *o = post_json(r, "newOrder", dir_url(r, "newOrder"), ps, false, ourl, sizeof ourl);
    free(ps);
    if (!o)
        return MOAT_ERR;
    int rc = MOAT_ERR;
    unsigned char *der = NULL;
    EVP_PKEY *pk = NULL;
    json_t *fin = NULL;
    struct chain c = {0};
    BIO *b = NULL;
    char *kpem = NULL;
    const char *finalize = json_string_value(json_object_get(o, "finalize"));
    if (!ourl[0] || !finalize) {
        fail(r, "newOrder: no order URL or finalize URL");
        goto out;
    }
    size_t i;
    json_t *az;
    json_array_foreach(json_object_get(o, "authorizations"), i, az)
    {
        const char *u = json_string_value(az);
        if (!u || authorize(r, u) != MOAT_OK)
            goto out;
    }
    if (!(pk = moat_acme_key_new())) {
        fail(r, "cannot make a certificate key");
        goto out;
    }
    long dl = moat_acme_csr(pk, s->names, s->nnames, &der);
    char *csr = dl > 0 ? malloc((size_t)dl * 4 / 3 + 8) : NULL;
    if (!csr || moat_acme_b64url(der, (size_t)dl, csr, (size_t)dl * 4 / 3 + 8) < 0) {
        free(csr);
        fail(r, "cannot build the CSR");
        goto out;
    }
    json_t *fp = json_pack("{s:s}", "csr", csr);
    free(csr);
    char *fps = json_dumps(fp, JSON_COMPACT);
    json_decref(fp);
    json_t *f = post_json(r, "finalize", finalize, fps, false, NULL, 0);
    free(fps);
    if (!f)
        goto out;
    json_decref(f);
    static const char *const waiting[] = {"pending", "ready", "processing", NULL};
    if (!(fin = poll_until(r, "order", ourl, waiting)))
        goto out;
    const char *st = json_string_value(json_object_get(fin, "status"));
    const char *curl = json_string_value(json_object_get(fin, "certificate"));
    if (!st || strcmp(st, "valid") || !curl) {
        fail(r, "order is %s", st ? st : "without status");
        goto out;
    }
    struct acme_resp rs;
    if (post(r, curl, NULL, false, &rs) != MOAT_OK) {
        char e[512];
        snprintf(e, sizeof e, "%s", r->err);
        fail(r, "certificate: %s", e);
        goto out;
    }
    if (rs.status != 200) {
        problem(r, "certificate", &rs);
        acme_resp_clear(&rs);
        goto out;
    }
    b = BIO_new_mem_buf(rs.body, (int)rs.blen);
    bool parsed = b && chain_parse(b, &c) == MOAT_OK;
    char cp[1100], kp[1100];
    spath(cp, sizeof cp, r->cfg->storage, s->names[0], ".crt");
    spath(kp, sizeof kp, r->cfg->storage, s->names[0], ".key");
    size_t klen = 0;
    if (!parsed || X509_check_private_key(c.x, pk) != 1 || !covers(c.x, s)) {
        fail(r, "certificate: the CA's answer is not a chain for our key and names");
    } else if (!(kpem = key_pem(pk, &klen)) || write_file(kp, kpem, klen) != MOAT_OK ||
               write_file(cp, rs.body, rs.blen) != MOAT_OK) {
        fail(r, "cannot write %s / %s: %s", cp, kp, strerror(errno));
    } else {
        c.pk = pk;
        pk = NULL;
        install(s, &c);
        rc = MOAT_OK;
    }
    acme_resp_clear(&rs);
out:
    ERR_clear_error();
    BIO_free(b);
    free(kpem);
    chain_clear(&c);
    EVP_PKEY_free(pk);
    OPENSSL_free(der);
    json_decref(fin);
    json_decref(o);
    chal_clear();
    return rc;
}

/* --- rounds --------------------------------------------------------------------------------- */

static void site_free(struct acme_site *s)
{
    for (size_t i = 0; i < s->nnames; i++)
        free(s->names[i]);
    free(s->names);
    free(s->joined);
    X509_free(s->x);
    EVP_PKEY_free(s->pk);
    sk_X509_pop_free(s->chain, X509_free);
    free(s->ocsp.der);
    free(s);
}

/* Makes the store's sites those of <cfg> (same first host and names: kept with their
 * certificate; new: added; gone: dropped). */
static void sync_sites(const struct moat_config *cfg)
{
    pthread_mutex_lock(&acme_store.lock);
    for (size_t i = 0; i < acme_store.nsites; i++)
        acme_store.sites[i]->wanted = false;
    acme_store.renew_before_ms = cfg->tls.acme.renew_before_ms;
    for (size_t i = 0; i < cfg->nsites && cfg->tls.acme.enabled; i++) {
        const struct moat_cfg_site *cs = &cfg->sites[i];
        if (!cs->tls_acme || !cs->nhosts)
            continue;
        struct acme_site *s = NULL;
        for (size_t k = 0; k < acme_store.nsites && !s; k++) {
            struct acme_site *t = acme_store.sites[k];
            bool same = t->nnames == cs->nhosts;
            for (size_t j = 0; same && j < t->nnames; j++)
                same = !strcmp(t->names[j], cs->hosts[j]);
            if (same)
                s = t;
        }
        if (!s) {
            struct acme_site **v = realloc(acme_store.sites, (acme_store.nsites + 1) * sizeof *v);
            s = calloc(1, sizeof *s);
            if (!v || !s || !(s->names = calloc(cs->nhosts, sizeof *s->names))) {
                if (v)
                    acme_store.sites = v;
                free(s);
                continue;
            }
            acme_store.sites = v;
            size_t jl = 1;
            for (size_t j = 0; j < cs->nhosts; j++) {
                s->names[j] = strdup(cs->hosts[j]);
                jl += strlen(cs->hosts[j]) + 1;
            }
            s->nnames = cs->nhosts;
            char *jp = s->joined = calloc(1, jl);
            for (size_t j = 0; jp && j < cs->nhosts; j++) {
                size_t hl = strlen(cs->hosts[j]);
                if (j)
                    *jp++ = ',';
                memcpy(jp, cs->hosts[j], hl + 1);
                jp += hl;
            }
            acme_store.sites[acme_store.nsites++] = s;
        }
        s->wanted = true;
    }
    size_t k = 0;
    for (size_t i = 0; i < acme_store.nsites; i++) {
        if (acme_store.sites[i]->wanted)
            acme_store.sites[k++] = acme_store.sites[i];
        else
            site_free(acme_store.sites[i]);
    }
    acme_store.nsites = k;
    atomic_store_explicit(&acme_store.active, k > 0, memory_order_release);
    pthread_mutex_unlock(&acme_store.lock);
}

static bool needs_order(const struct acme_site *s, int64_t now, uint64_t renew_before_ms)
{
    return !s->x || s->not_after - (int64_t)(renew_before_ms / 1000) <= now;
}

/* The wait after the <n>th failure in a row: retry_min doubled per failure up to retry_max,
 * then 0.75x to 1.25x of that at random, so that nodes and sites that failed together do
 * not retry together. */
uint64_t acme_backoff_ms(const struct moat_cfg_acme *a, unsigned n)
{
    uint64_t w = a->retry_min_ms;
    for (unsigned i = 1; i < n && w < a->retry_max_ms; i++)
        w *= 2;
    w = MOAT_MIN(w, a->retry_max_ms);
    uint32_t rnd = 0;
    if (RAND_bytes((unsigned char *)&rnd, sizeof rnd) != 1)
        rnd = (uint32_t)time(NULL);
    return w * 3 / 4 + (w / 2) * (rnd % 1001) / 1000;
}

static void set_result(struct acme_site *s, const char *err, int64_t next)
{
    pthread_mutex_lock(&acme_store.lock);
    if (err) {
        snprintf(s->last_error, sizeof s->last_error, "%s", err);
        s->last_error_at = (int64_t)time(NULL);
        s->failures++;
    } else {
        s->last_error[0] = '\0';
        s->failures = 0;
        s->issued++;
    }
    s->next_attempt = next;
    pthread_mutex_unlock(&acme_store.lock);
}

/* One site's turn: another node's fresh files, else an order under the storage lock. */
static void site_round(struct acme_run *r, struct acme_site *s, int lockfd)
{
    const struct moat_cfg_acme *a = r->cfg;
    int64_t now = (int64_t)time(NULL);
    if (lockfd >= 0 && flock(lockfd, LOCK_EX | LOCK_NB) != 0) {
        pthread_mutex_lock(&acme_store.lock);
        s->next_attempt = now + 5; /* another node orders; look again soon */
        pthread_mutex_unlock(&acme_store.lock);
        return;
    }
    if (load_stored(a->storage, s) && !needs_order(s, now, a->renew_before_ms)) {
        moat_log_info("acme: %s: certificate from %s (another node renewed it)", s->names[0],
                      a->storage);
        set_result(s, NULL, now + (int64_t)(a->check_interval_ms / 1000));
    } else {
        moat_log_info("acme: %s: ordering a certificate for %s", s->names[0], s->joined);
        r->err[0] = '\0';
        r->retry_after = 0;
        int rc = (r->dir || directory(r) == MOAT_OK) && (r->kid[0] || account(r) == MOAT_OK)
                     ? order(r, s)
                     : MOAT_ERR;
        now = (int64_t)time(NULL);
        if (rc == MOAT_OK) {
            moat_log_info("acme: %s: new certificate installed, valid until %lld", s->names[0],
                          (long long)s->not_after);
            set_result(s, NULL, now + (int64_t)(a->check_interval_ms / 1000));
        } else {
            uint64_t w = acme_backoff_ms(a, s->failures + 1);
            if (r->retry_after > 0) /* rate limited: never sooner than the CA asks */
                w = MOAT_MAX(w, (uint64_t)r->retry_after * 1000);
            moat_log_error("acme: %s: order failed (%u in a row; next try in %llus%s): %s",
                           s->names[0], s->failures + 1, (unsigned long long)((w + 999) / 1000),
                           s->x ? "; the current certificate is still served" : "", r->err);
            set_result(s, r->err, now + (int64_t)((w + 999) / 1000));
            /* The next order starts from the directory again: the CA may have moved on. */
            json_decref(r->dir);
            r->dir = NULL;
            r->kid[0] = r->nonce[0] = '\0';
            EVP_PKEY_free(r->account);
            r->account = NULL;
        }
    }
    if (lockfd >= 0)
        flock(lockfd, LOCK_UN);
}

static void *thread_main(void *arg)
{
    struct acme_run r = {0};
    char ca_seen[3200] = "";
    bool have_ctx = false;
    for (;;) {
        struct moat_config *cfg = th.current();
        const struct moat_cfg_acme *a = &cfg->tls.acme;
        uint64_t wait_ms = 3600000;
        sync_sites(cfg);
        if (a->enabled) {
            r.cfg = a;
            wait_ms = a->check_interval_ms;
            /* A reload that changes the CA, its trust or the storage starts over: a new
             * context, directory and account. */
            char seen[3200];
            snprintf(seen, sizeof seen, "%s|%s|%s", a->ca_file ? a->ca_file : "", a->directory,
                     a->storage);
            if (!have_ctx || strcmp(ca_seen, seen)) {
                SSL_CTX_free(r.ctx);
                char e[512];
                r.ctx = acme_http_ctx(a->ca_file, e, sizeof e);
                if (!r.ctx)
                    moat_log_error("acme: %s", e);
                snprintf(ca_seen, sizeof ca_seen, "%s", seen);
                have_ctx = r.ctx != NULL;
                json_decref(r.dir);
                r.dir = NULL;
                r.kid[0] = r.nonce[0] = '\0';
                EVP_PKEY_free(r.account);
                r.account = NULL;
            }
            if (ensure_dir(a->storage) != MOAT_OK)
                moat_log_error("acme: storage %s: %s", a->storage, strerror(errno));
            char lp[1100];
            spath(lp, sizeof lp, a->storage, "lock", "");
            int lockfd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
            /* The sites are walked by index under no lock: only this thread changes the
             * list (sync_sites above). */
            for (size_t i = 0; i < acme_store.nsites && have_ctx && !stopping(); i++) {
                struct acme_site *s = acme_store.sites[i];
                int64_t now = (int64_t)time(NULL);
                if (needs_order(s, now, a->renew_before_ms) && s->next_attempt <= now)
                    site_round(&r, s, lockfd);
                acme_ocsp_round(a, r.ctx, s);
                int64_t due = needs_order(s, now, a->renew_before_ms)
                                  ? s->next_attempt
                                  : s->not_after - (int64_t)(a->renew_before_ms / 1000);
                int64_t odue = acme_ocsp_due(s);
                if (odue)
                    due = MOAT_MIN(due, odue);
                now = (int64_t)time(NULL);
                if (due > now)
                    wait_ms = MOAT_MIN(wait_ms, (uint64_t)(due - now) * 1000);
                else
                    wait_ms = MOAT_MIN(wait_ms, 1000);
            }
            if (lockfd >= 0)
                close(lockfd);
        }
        /* OCSP for tls.certificates, with or without tls.acme */
        int64_t sdue = acme_staples_round(cfg, r.ctx);
        if (sdue) {
            int64_t now = (int64_t)time(NULL);
            wait_ms = MOAT_MIN(wait_ms, sdue > now ? (uint64_t)(sdue - now) * 1000 : 1000);
        }
        r.cfg = NULL;
        moat_config_release(&cfg);
        if (nap(MOAT_MAX(wait_ms, 200), true))
            break;
    }
    json_decref(r.dir);
    EVP_PKEY_free(r.account);
    SSL_CTX_free(r.ctx);
    chal_clear();
    OPENSSL_thread_stop();
    return NULL;
}

int moat_acme_start(struct moat_config *cfg, struct moat_config *(*current)(void), char *err,
                    size_t errlen)
{
    if (th.running)
        return MOAT_OK;
    sync_sites(cfg);
    if (cfg->tls.acme.enabled && ensure_dir(cfg->tls.acme.storage) != MOAT_OK) {
        snprintf(err, errlen, "tls.acme.storage: %s: %s", cfg->tls.acme.storage, strerror(errno));
        return MOAT_ERR;
    }
    for (size_t i = 0; i < acme_store.nsites; i++)
        if (load_stored(cfg->tls.acme.storage, acme_store.sites[i]))
            moat_log_info("acme: %s: certificate loaded from %s (valid until %lld)",
                          acme_store.sites[i]->names[0], cfg->tls.acme.storage,
                          (long long)acme_store.sites[i]->not_after);
    th.current = current;
    th.stop = th.kicked = false;
    if (pthread_create(&th.thread, NULL, thread_main, NULL) != 0) {
        snprintf(err, errlen, "acme: cannot start its thread: %s", strerror(errno));
        return MOAT_ERR;
    }
    th.running = true;
    return MOAT_OK;
}

void moat_acme_kick(void)
{
    pthread_mutex_lock(&th.lock);
    th.kicked = true;
    pthread_cond_signal(&th.cond);
    pthread_mutex_unlock(&th.lock);
}

void moat_acme_stop(void)
{
    if (!th.running)
        return;
    pthread_mutex_lock(&th.lock);
    th.stop = true;
    pthread_cond_signal(&th.cond);
    pthread_mutex_unlock(&th.lock);
    /* The thread sees the flag between requests; one may be waiting on a slow CA (up to
     * four times tls.acme.timeout), and shutting down must not wait for it: after 2 s the
     * thread is left to the process's exit. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 2;
    if (pthread_timedjoin_np(th.thread, NULL, &ts) != 0) {
        moat_log_warn("acme: a request to the CA is still under way; not waiting for it");
        pthread_detach(th.thread);
    }
    th.running = false;
}
