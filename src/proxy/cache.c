/* cache.c: the cache's part of a request: the cache phase (key, lookup, collapsing onto a
 * fetch in flight, Vary variants, stale-while-revalidate), filling an object from the
 * origin's response, revalidation, invalidation, stale-if-error. Answering from an object
 * (hits and collapsed waiters, streamed as the writer appends) is cache_serve.c's.
 *
 * The store (src/cache/store.c) is shared by all workers; an object written on one worker
 * may be read on another. A reader subscribes to the object; the writer's thread calls the
 * reader's callback with the object locked, and the callback only posts a wake-up to the
 * reader's own loop (at most one outstanding per connection), where the reader reads. */
#include <errno.h>
#include <strings.h>
#include <sys/uio.h>

#include "cache/policy.h"
#include "cache/store.h"
#include "proxy/pipeline.h"
#include "proxy/cache-int.h"
#include "proxy/server.h"

static struct moat_cache_policy_cfg policy_cfg(const struct moat_config *cfg)
{
    struct moat_cache_policy_cfg p;
    moat_cache_policy_cfg_default(&p);
    p.heuristic_max = (int64_t)(cfg->cache.heuristic_max_ms / 1000);
    return p;
}

/* --- keys --------------------------------------------------------------------------------- */

static int cmp_param(const void *a, const void *b)
{
    const struct moat_str *x = a, *y = b;
    size_t n = MOAT_MIN(x->len, y->len);
    int d = memcmp(x->ptr, y->ptr, n);
    return d ? d : (x->len < y->len ? -1 : x->len > y->len);
}

/* Writes the parameters of <q> sorted (cache rule key.query: sort), so ?b=2&a=1 and ?a=1&b=2
 * share an object. Returns the bytes written (q.len at most). */
static size_t sorted_query(struct moat_str q, char *out)
{
    struct moat_str p[64];
    size_t n = 0, i = 0;
    while (i <= q.len && n < MOAT_ARRAY_LEN(p)) {
        size_t j = i;
        while (j < q.len && q.ptr[j] != '&')
            j++;
        if (j > i)
            p[n++] = moat_str_make(q.ptr + i, j - i);
        i = j + 1;
    }
    if (i <= q.len) { /* more than 64 parameters: keep the order as sent */
        memcpy(out, q.ptr, q.len);
        return q.len;
    }
    qsort(p, n, sizeof p[0], cmp_param);
    size_t o = 0;
    for (size_t k = 0; k < n; k++) {
        if (k)
            out[o++] = '&';
        memcpy(out + o, p[k].ptr, p[k].len);
        o += p[k].len;
    }
    return o;
}

struct keyw {
    char *p;
    size_t n, cap;
    bool over;
};

static void kw_put(struct keyw *w, const char *s, size_t len)
{
    if (w->over || w->cap - w->n < len) {
        w->over = true;
        return;
    }
    memcpy(w->p + w->n, s, len);
    w->n += len;
}

/* Starts one part: "\n" <tag> ":" <name>. Its values follow as "=" v1 <sep> v2 ... */
static void kw_part(struct keyw *w, const char *tag, struct moat_str name)
{
    kw_put(w, tag, 3);
    kw_put(w, name.ptr, name.len);
}

static void kw_value(struct keyw *w, bool *any, char sep, struct moat_str v)
{
    kw_put(w, *any ? &sep : "=", 1);
    kw_put(w, v.ptr, v.len);
    *any = true;
}

/* The rule's key.headers and key.cookies after the URL part at *<n>: "\nh:" name "=" value
 * per header (several lines of one name joined by ",", which RFC 9110 5.3 makes the same
 * field), "\nc:" name "=" value per cookie (several cookies of that name joined by ";",
 * which no cookie value can hold), and a bare "\nh:" name / "\nc:" name when the request
 * has none, so an absent field and an empty one are two keys. A request target never holds
 * "\n", so no URL's key looks like a keyed one; a part starts with a letter where a Vary
 * variant's generation ("\n" digits "\n") starts with a digit; and the names are in the key,
 * so a reload that changes the list never mixes objects keyed on other fields. The cost is
 * one pass over the request's fields per name: lists are short (MOAT_KEY_FIELDS_MAX).
 * Returns false when the key does not fit. */
static bool key_fields(struct moat_req *r, size_t *n)
{
    const struct moat_cfg_rule *rule = r->rule;
    struct keyw w = {r->c.key, *n, sizeof r->c.key, false};
    for (size_t f = 0; f < rule->nkey_headers; f++) {
        bool any = false;
        kw_part(&w, "\nh:", rule->key_headers[f]);
        for (size_t i = 0; i < r->nhdrs; i++)
            if (moat_str_ieq(r->hdrs[i].name, rule->key_headers[f]))
                kw_value(&w, &any, ',', r->hdrs[i].value);
    }
    for (size_t f = 0; f < rule->nkey_cookies; f++) {
        bool any = false;
        kw_part(&w, "\nc:", rule->key_cookies[f]);
        for (size_t i = 0; i < r->nhdrs; i++) {
            if (!MOAT_STR_IEQ_LIT(r->hdrs[i].name, "cookie"))
                continue;
            size_t pos = 0;
            struct moat_str cn, cv;
            while (moat_h1_cookie_next(r->hdrs[i].value, &pos, &cn, &cv))
                if (moat_str_eq(cn, rule->key_cookies[f]))
                    kw_value(&w, &any, ';', cv);
        }
    }
    if (w.over)
        return false;
    *n = w.n;
    /* From now on a URL purge must look for keyed objects too (handle_purge in admin.c).
     * Sticky: keyed objects outlive a reload that drops the rule. */
    if (!atomic_load(&moat_srv.cache_keyed))
        atomic_store(&moat_srv.cache_keyed, true);
    return true;
}

/* The scheme ("http://" or "https://", so the objects of the two are kept apart unless the
 * site's https.same_cache says they are the same: then "http://" for both) + host
 * (lowercase, port as sent) + path and query as sent, then the rule's key.headers /
 * key.cookies parts (key_fields). Returns false when the key does not fit (such requests
 * bypass). */
static bool build_key(struct moat_req *r)
{
    char *k = r->c.key;
    struct moat_str sch = r->site && r->site->https_same_cache ? MOAT_STR("http") : r->scheme;
    size_t cap = sizeof r->c.key, n = sch.len + 3;
    memcpy(k, sch.ptr, sch.len);
    memcpy(k + sch.len, "://", 3);
    if (r->authority.len + n >= cap)
        return false;
    for (size_t i = 0; i < r->authority.len; i++) {
        char ch = r->authority.ptr[i];
        k[n++] = (ch >= 'A' && ch <= 'Z') ? (char)(ch | 0x20) : ch;
    }
    struct moat_str a = r->target, b = MOAT_STR_NULL;
    unsigned kq = r->rule ? r->rule->key_query : MOAT_KEY_QUERY_ALL;
    if ((r->flags & MOAT_H1_F_ABSOLUTE) || kq != MOAT_KEY_QUERY_ALL) {
        a = r->path;
        if (r->query.len && kq != MOAT_KEY_QUERY_IGNORE)
            b = r->query;
    }
    if (n + a.len + (b.len ? b.len + 1 : 0) > cap)
        return false;
    memcpy(k + n, a.ptr, a.len);
    n += a.len;
    if (b.len) {
        k[n++] = '?';
        if (kq == MOAT_KEY_QUERY_SORT)
            n += sorted_query(b, k + n);
        else {
            memcpy(k + n, b.ptr, b.len);
            n += b.len;
        }
    }
    r->c.keyurl = (uint16_t)n;
    const struct moat_cfg_rule *rule = r->rule;
    bool fits = !rule || (!rule->nkey_headers && !rule->nkey_cookies) || key_fields(r, &n);
    r->c.keylen = (uint16_t)(fits ? n : r->c.keyurl); /* the URL alone, for invalidation */
    return fits;
}

/* --- the phase ----------------------------------------------------------------------------- */

/* Range and If-Range, kept for when the answer comes from the cache (they point into the
 * request's own copy of its head). */
static void note_range(struct moat_req *r)
{
    const struct moat_hdr *rg = moat_h1_find(r->hdrs, r->nhdrs, MOAT_STR("range"));
    const struct moat_hdr *ir = moat_h1_find(r->hdrs, r->nhdrs, MOAT_STR("if-range"));
    r->c.range = rg ? rg->value : MOAT_STR_NULL;
    r->c.if_range = ir ? ir->value : MOAT_STR_NULL;
}

/* Purges the key <k,n> and the same URL in the other scheme: an unsafe request over https
 * changes what http answers too (and the reverse), whatever the keys keep apart. */
static void purge_both(const char *k, size_t n)
{
    moat_cache_purge_key(moat_srv.cache, moat_str_make(k, n), 0);
    char other[sizeof((struct moat_rcache *)0)->key + 1];
    if (n > 8 && !memcmp(k, "https://", 8)) {
        memcpy(other, "http://", 7);
        memcpy(other + 7, k + 8, n - 8);
        moat_cache_purge_key(moat_srv.cache, moat_str_make(other, n - 1), 0);
    } else if (n > 7 && !memcmp(k, "http://", 7) && n + 1 <= sizeof other) {
        memcpy(other, "https://", 8);
        memcpy(other + 8, k + 7, n - 7);
        moat_cache_purge_key(moat_srv.cache, moat_str_make(other, n + 1), 0);
    }
}

void moat_pcache_invalidate(struct moat_req *r, const struct moat_h1_resp *q)
{
    if (!r->c.invalidate || !moat_srv.cache || q->status < 200 || q->status >= 400)
        return;
    r->c.invalidate = false;
    purge_both(r->c.key, r->c.keylen);
    /* A rule with key.headers / key.cookies: the object keyed with this request's own values
     * went above; the unkeyed URL goes too. Objects keyed with other clients' values stay
     * (finding them is a scan of the whole store, not a worker's job: POST /purge does it). */
    if (r->c.keyurl < r->c.keylen)
        purge_both(r->c.key, r->c.keyurl);
    /* Location and Content-Location too, when they name this host (RFC 9111 4.4). */
    size_t pre = r->c.key[4] == 's' ? 8 : 7; /* "https://" or "http://" */
    const char *slash = memchr(r->c.key + pre, '/', r->c.keyurl - pre);
    size_t hostlen = slash ? (size_t)(slash - r->c.key) : r->c.keyurl; /* "scheme://host" */
    static const char *const names[2] = {"location", "content-location"};
    for (int i = 0; i < 2; i++) {
        const struct moat_hdr *h =
            moat_h1_find(q->hdrs, q->nhdrs, moat_str_make(names[i], strlen(names[i])));
        if (!h || !h->value.len)
            continue;
        char key[sizeof r->c.key];
        struct moat_str v = h->value;
        if (v.ptr[0] == '/' && (v.len < 2 || v.ptr[1] != '/') && hostlen + v.len < sizeof key) {
            memcpy(key, r->c.key, hostlen);
            memcpy(key + hostlen, v.ptr, v.len);
            purge_both(key, hostlen + v.len);
        } else if (v.len > hostlen && !strncasecmp(v.ptr, r->c.key, hostlen) &&
                   (v.ptr[hostlen] == '/' || v.ptr[hostlen] == '?')) {
            memcpy(key, r->c.key, hostlen); /* lowercase scheme and host */
            memcpy(key + hostlen, v.ptr + hostlen, v.len - hostlen);
            purge_both(key, v.len);
        }
    }
}

/* --- Vary: an index under the primary key, variants under key \n gen \n fields ---------- */

static _Atomic uint64_t vary_gen = 1;

/* The stored Vary lines of an index object, and its generation. Returns false when <h> is
 * not an index (no Vary, or no generation: a variant's own head). */
static bool index_spec(const struct moat_cache_head *h, struct moat_hdr *vary, size_t cap,
                       size_t *nvary, struct moat_str *gen)
{
    size_t pos = 0, n = 0;
    struct moat_hdr l;
    *gen = MOAT_STR_NULL;
    while (moat_cache_head_next(h, &pos, &l)) {
        if (MOAT_STR_IEQ_LIT(l.name, "vary") && n < cap)
            vary[n++] = l;
        else if (MOAT_STR_IEQ_LIT(l.name, "moat-vary-gen"))
            *gen = l.value;
    }
    *nvary = n;
    return n && gen->len;
}

/* Appends "\n" gen "\n" normalized-fields to the key in r->c.key. False when it won't fit. */
static bool variant_key(struct moat_req *r, const struct moat_hdr *vary, size_t nvary,
                        struct moat_str gen, const struct moat_hdr *req, size_t nreq)
{
    size_t k = r->c.keylen;
    if (k + gen.len + 2 >= sizeof r->c.key)
        return false;
    r->c.key[k++] = '\n';
    memcpy(r->c.key + k, gen.ptr, gen.len);
    k += gen.len;
    r->c.key[k++] = '\n';
    size_t len = 0;
    uint64_t hash;
    /* The Accept-Encoding the origin was (or will be) sent, not the client's own. */
    struct moat_str ae = moat_cache_ae_value(r->c.ae);
    if (moat_cache_vary_key(vary, nvary, req, nreq, r->c.ae_norm ? &ae : NULL, r->c.key + k,
                            sizeof r->c.key - k, &len, &hash) != MOAT_OK)
        return false;
    r->c.keylen = (uint16_t)(k + len);
    return true;
}

static int lookup_flow(struct moat_req *r, int64_t now);

/* <idx> (a reference we hold, r->c.obj) is a fresh index: look the request's variant up. */
int moat_pcache_to_variant(struct moat_req *r, int64_t now)
{
    struct moat_hdr vary[16];
    size_t nvary;
    struct moat_str gen;
    const struct moat_cache_head *h = moat_cache_obj_head(r->c.obj);
    bool ok = index_spec(h, vary, MOAT_ARRAY_LEN(vary), &nvary, &gen) &&
              variant_key(r, vary, nvary, gen, r->hdrs, r->nhdrs);
    moat_pcache_unsubscribe(r);
    moat_cache_obj_release(&r->c.obj);
    if (!ok) {
        r->c.status = "fwd=uri-miss";
        return MOAT_DECLINED;
    }
    r->c.variant = true;
    return lookup_flow(r, now);
}

int moat_pcache_request(struct moat_req *r)
{
    const struct moat_config *cfg = r->wcfg->cfg;
    struct moat_cache_store *st = moat_srv.cache;
    r->c.fresh_lookup = true; /* the request's own fields decide, until it is forwarded */
    if (!cfg->cache.enabled || !st)
        return MOAT_DECLINED;
    if (r->meth != MOAT_M_GET && r->meth != MOAT_M_HEAD) {
        r->c.status = "fwd=bypass";
        /* RFC 9111 4.4: an unsafe method's success invalidates the target URI. */
        r->c.invalidate =
            r->meth != MOAT_M_OPTIONS && r->meth != MOAT_M_TRACE && (build_key(r) || r->c.keyurl);
        return MOAT_DECLINED;
    }
    if (r->rule && r->rule->mode == MOAT_CACHE_MODE_BYPASS) {
        r->c.status = "fwd=bypass; detail=rule";
        return MOAT_DECLINED;
    }
    if (r->upgrade || !build_key(r)) {
        r->c.status = "fwd=bypass";
        return MOAT_DECLINED;
    }
    if (cfg->cache.normalize_ae) {
        /* Without this, Vary: Accept-Encoding makes one variant per browser's spelling of
         * the same few codings. The origin is sent the canonical value (headers.c) and the
         * variant key is made from it, so a stored variant always answers what the origin
         * was asked (RFC 9111 4.1); and the canonical set is never wider than the client's,
         * so whatever coding comes back, the client accepts it. */
        r->c.ae_norm = true;
        r->c.ae = (uint8_t)moat_cache_ae_accepted(r->hdrs, r->nhdrs);
    }
    moat_cache_cc_request(&r->c.creq, r->hdrs, r->nhdrs);
    r->c.has_auth = moat_h1_find(r->hdrs, r->nhdrs, MOAT_STR("authorization")) != NULL;
    int64_t now = moat_pcache_now();
    r->c.req_time = now;
    note_range(r);
    return lookup_flow(r, now);
}

/* <c> holds the refresh claim on the stale <obj>: make it the writer of the object that
 * replaces <obj> once its head is in (lookups find <obj> until then). Takes its own reference
 * on <obj> (kept for the validators and stale-if-error). Returns false, claim released, when
 * another request replaced <obj> meanwhile: then nothing is to be fetched. */
static bool start_refresh(struct moat_req *r, struct moat_cache_obj *obj, int64_t now)
{
    struct moat_cache_obj *nobj = NULL;
    int rc = moat_cache_replace(moat_srv.cache, obj, now, MOAT_CACHE_R_DEFERRED, &nobj);
    if (rc != MOAT_CACHE_MISS) {
        moat_cache_obj_release(&nobj);
        moat_cache_obj_unclaim_refresh(obj);
        return false;
    }
    MOAT_STAT_INC(&r->w->stats, cache_miss);
    r->c.claimed = true;
    r->c.stale = moat_cache_obj_ref(obj);
    r->c.obj = nobj;
    r->c.writer = true;
    r->c.status = "fwd=stale";
    return true;
}

/* Looks the key in r->c.key up and decides: answer from the cache (MOAT_DONE), or go to the
 * origin (MOAT_DECLINED), maybe as the writer of r->c.obj. */
static int lookup_flow(struct moat_req *r, int64_t now)
{
    struct moat_worker *w = r->w;
    struct moat_cache_store *st = moat_srv.cache;
    struct moat_str key = moat_str_make(r->c.key, r->c.keylen);
    struct moat_cache_obj *obj = NULL;
    int rc = r->is_head ? moat_cache_lookup(st, key, now, &obj)
                        : moat_cache_lookup_or_insert(st, key, now, &obj);
    if (rc == MOAT_ERR || rc == MOAT_CACHE_NOT_FOUND) {
        r->c.status = "fwd=uri-miss";
        return MOAT_DECLINED;
    }
    if (rc == MOAT_CACHE_PASS) {
        MOAT_STAT_INC(&w->stats, cache_pass);
        r->c.status = "fwd=bypass";
        return MOAT_DECLINED;
    }
    if (rc == MOAT_CACHE_MISS) {
        MOAT_STAT_INC(&w->stats, cache_miss);
        r->c.obj = obj;
        r->c.writer = true;
        r->c.status = "fwd=uri-miss";
        return MOAT_DECLINED;
    }
    /* A hit: an object complete or in flight. */
    r->c.obj = obj;
    enum moat_cache_obj_state os = moat_cache_obj_state(obj);
    if (os == MOAT_CACHE_OBJ_PENDING || os == MOAT_CACHE_OBJ_STREAMING) {
        MOAT_STAT_INC(&w->stats, cache_collapsed);
        return moat_pcache_serve_from(r, "fwd=uri-miss; collapsed");
    }
    if (os != MOAT_CACHE_OBJ_COMPLETE) { /* PASS/ABORTED seen through a race: just fetch */
        moat_cache_obj_release(&r->c.obj);
        r->c.status = "fwd=uri-miss";
        return MOAT_DECLINED;
    }
    const struct moat_cache_head *oh = moat_cache_obj_head(obj);
    bool index = !r->c.variant && oh->vary_len;
    enum moat_cache_fresh f = moat_cache_obj_decide(obj, &r->c.creq, now);
    if (index && (f == MOAT_CACHE_FRESH || f == MOAT_CACHE_STALE_OK || f == MOAT_CACHE_STALE_SWR))
        return moat_pcache_to_variant(r, now);
    switch (index ? MOAT_CACHE_MUST_FORWARD : f) {
    case MOAT_CACHE_FRESH:
    case MOAT_CACHE_STALE_OK:
        MOAT_STAT_INC(&w->stats, cache_hit);
        return moat_pcache_serve_from(r, "hit");
    case MOAT_CACHE_ONLY_IF_CACHED:
        moat_cache_obj_release(&r->c.obj);
        moat_local_response(r, 504, "not in cache (only-if-cached)\n");
        return MOAT_DONE;
    case MOAT_CACHE_STALE_SWR:
        /* RFC 5861 3: served stale at once, and one request (the one that claims the
         * refresh) starts a background fetch that replaces the object once its head is in.
         * The fetch runs on a detached copy of this request, so nobody waits for it. */
        if (!r->is_head && moat_cache_obj_claim_refresh(obj)) {
            struct moat_req *b = moat_req_spawn(r);
            if (!b) {
                /* A request with a body (or no memory for the copy): this one refreshes in
                 * the foreground; everybody else is still served stale meanwhile. */
                r->c.obj = NULL;
                bool writer = start_refresh(r, obj, now);
                if (writer) {
                    moat_cache_obj_release(&obj);
                    return MOAT_DECLINED;
                }
                r->c.obj = obj;
            } else {
                bool go = start_refresh(b, obj, now);
                if (go)
                    MOAT_STAT_INC(&w->stats, cache_bg_refresh);
                moat_req_spawn_start(b, go);
            }
        }
        MOAT_STAT_INC(&w->stats, cache_stale);
        return moat_pcache_serve_from(r, "hit; detail=stale-while-revalidate");
    default:
        break;
    }
    /* Stale (or must revalidate): fetch anew, collapsing with other refetches, and keep the
     * stale copy for stale-if-error and its validators for a conditional refetch. A stale
     * Vary index is not kept: it has no body to fall back on. */
    r->c.stale = index ? NULL : obj;
    r->c.obj = NULL;
    if (r->is_head) {
        if (index)
            moat_cache_obj_release(&obj);
        r->c.status = "fwd=stale";
        return MOAT_DECLINED;
    }
    struct moat_cache_obj *fresh = NULL;
    rc = moat_cache_replace(st, obj, now, 0, &fresh);
    if (index)
        moat_cache_obj_release(&obj);
    if (rc == MOAT_CACHE_MISS) {
        MOAT_STAT_INC(&w->stats, cache_miss);
        r->c.obj = fresh;
        r->c.writer = true;
        r->c.status = "fwd=stale";
        return MOAT_DECLINED;
    }
    if (rc == MOAT_CACHE_HIT) {
        MOAT_STAT_INC(&w->stats, cache_collapsed);
        r->c.obj = fresh;
        return moat_pcache_serve_from(r, "fwd=stale; collapsed");
    }
    r->c.status = "fwd=stale";
    return MOAT_DECLINED;
}

/* --- the writing side ----------------------------------------------------------------------- */

bool moat_pcache_strip(const struct moat_req *r, struct moat_str n)
{
    const struct moat_config *cfg = r->wcfg->cfg;
    if (!cfg->cache.enabled)
        return false;
    switch (n.len) {
    case 9:
        return MOAT_STR_IEQ_LIT(n, "cache-tag");
    case 13:
        return MOAT_STR_IEQ_LIT(n, "surrogate-key");
    case 17:
        return MOAT_STR_IEQ_LIT(n, "cdn-cache-control");
    }
    /* Checked for every response header: strnlen stops at the header's length. */
    const char *t = cfg->cache.targeted_field;
    return t && strnlen(t, n.len + 1) == n.len && moat_str_ieq(n, moat_str_make(t, n.len));
}

/* What the matching rule changes in the origin's directives before moat decides on them:
 * "cache: everything" drops no-store, private and no-cache; "origin_no_cache: ignore" drops
 * no-cache (with or without a field list) only, so the answer is fresh for its lifetime
 * instead of revalidated on every use (RFC 9111 5.2.2.4). The client still sees them. Used
 * on a fresh answer and on a 304's merged headers alike, or a revalidation would bring the
 * directive back. */
static void rule_cc(const struct moat_cfg_rule *rule, struct moat_cache_cc *cc)
{
    if (rule && rule->mode == MOAT_CACHE_MODE_EVERYTHING)
        cc->flags &= ~(uint32_t)(MOAT_CC_NO_STORE | MOAT_CC_PRIVATE | MOAT_CC_NO_CACHE);
    if (rule && rule->origin_no_cache == MOAT_ORIGIN_NO_CACHE_IGNORE)
        cc->flags &= ~(uint32_t)(MOAT_CC_NO_CACHE | MOAT_CC_NO_CACHE_FIELDS);
}

/* Rules and defaults adjust the freshness the origin's fields <hdrs,n> (with <cc>) gave
 * <meta>: an edge TTL replaces its lifetime; "everything" and static file types without
 * freshness get a default one; a rule's stale_if_error extends the grace. Applied to every
 * stored head, a 304's refreshed one included. */
static void rule_meta(const struct moat_req *r, const struct moat_cache_cc *cc,
                      const struct moat_hdr *hdrs, size_t n, struct moat_cache_meta *meta)
{
    const struct moat_cfg_rule *rule = r->rule;
    bool everything = rule && rule->mode == MOAT_CACHE_MODE_EVERYTHING;
    if (rule && rule->edge_ttl_ms)
        meta->lifetime = (int32_t)MOAT_MIN(rule->edge_ttl_ms / 1000, (uint64_t)INT32_MAX);
    else if ((everything || r->static_default) && cc->max_age < 0 && cc->s_maxage < 0 &&
             !(meta->flags & MOAT_META_HEURISTIC) && !moat_h1_find(hdrs, n, MOAT_STR("expires"))) {
        uint64_t ms = r->wcfg->cfg->cache.static_ttl_ms;
        uint64_t d = ms ? ms : 7200000u;
        meta->lifetime = (int32_t)MOAT_MIN(d / 1000, (uint64_t)INT32_MAX);
    }
    if (everything)
        meta->flags &= ~(uint32_t)MOAT_META_NO_CACHE;
    if (rule && rule->stale_if_error_ms)
        meta->sie = (int32_t)MOAT_MAX(
            (uint64_t)meta->sie, MOAT_MIN(rule->stale_if_error_ms / 1000, (uint64_t)INT32_MAX));
}

/* Gives up the object being fetched (aborting it if we write it) and makes the stale copy
 * the object to answer from, releasing the refresh claim on it. */
static void fall_back_to_stale(struct moat_req *r)
{
    if (r->c.obj) {
        moat_pcache_unsubscribe(r);
        if (r->c.writer)
            moat_cache_obj_abort(r->c.obj);
        moat_cache_obj_release(&r->c.obj);
    }
    r->c.writer = false;
    if (r->c.claimed)
        moat_cache_obj_unclaim_refresh(r->c.stale);
    r->c.claimed = false;
    r->c.obj = r->c.stale;
    r->c.stale = NULL;
}

/* The origin answered our conditional refetch with 304: the stale object's body is still
 * good. RFC 9111 4.3.4: the stored header fields are updated with those of the 304, the
 * freshness is computed anew, and the client is answered from the refreshed object. The new
 * object shares the old one's body (no copy). */
static void revalidated(struct moat_req *r, const struct moat_h1_resp *q,
                        const struct moat_cache_policy_cfg *pc)
{
    const struct moat_config *cfg = r->wcfg->cfg;
    const struct moat_cache_head *old = moat_cache_obj_head(r->c.stale);
    struct moat_hdr merged[256];
    size_t n = 0, pos = 0;
    struct moat_hdr h;
    /* A 304 without Date confirms the body now: the refreshed copy is dated now (as the
     * first answer would have been, had it carried no Date), not with the stored Date, which
     * would make its age count from the first fetch. */
    bool date304 = moat_h1_find(q->hdrs, q->nhdrs, MOAT_STR("date")) != NULL;
    char date[MOAT_HTTP_DATE_LEN + 1];
    while (n + 1 < MOAT_ARRAY_LEN(merged) && moat_cache_head_next(old, &pos, &h)) {
        if (!date304 && MOAT_STR_IEQ_LIT(h.name, "date"))
            continue;
        if (!moat_h1_find(q->hdrs, q->nhdrs, h.name))
            merged[n++] = h;
    }
    if (!date304) {
        size_t dn = moat_http_date_format(moat_pcache_now(), date);
        merged[n++] = (struct moat_hdr){MOAT_STR("Date"), moat_str_make(date, dn)};
    }
    struct moat_str tags = moat_cache_head_tags(old);
    for (size_t i = 0; i < q->nhdrs && n < MOAT_ARRAY_LEN(merged); i++) {
        struct moat_str nm = q->hdrs[i].name;
        /* A Set-Cookie on a 304 was meant for the client that asked: never into the shared
         * copy (a stored 200 with Set-Cookie is refused or stripped the same way). */
        if (moat_pcache_strip(r, nm) || MOAT_STR_IEQ_LIT(nm, "via") ||
            MOAT_STR_IEQ_LIT(nm, "content-length") || MOAT_STR_IEQ_LIT(nm, "set-cookie"))
            continue;
        merged[n++] = q->hdrs[i];
    }
    struct moat_cache_cc cc;
    const char *tf = cfg->cache.targeted_field;
    moat_cache_cc_response(&cc, merged, n, tf ? moat_str_make(tf, strlen(tf)) : MOAT_STR_NULL);
    rule_cc(r->rule, &cc);
    struct moat_cache_meta meta;
    int64_t now = moat_pcache_now();
    moat_cache_meta_init(&meta, pc, old->status, &cc, merged, n, r->c.req_time, now);
    rule_meta(r, &cc, merged, n, &meta);
    if (moat_cache_obj_adopt_body(r->c.obj, r->c.stale) != MOAT_OK ||
        moat_cache_obj_set_head(r->c.obj, old->status, merged, n, &meta, tags) != MOAT_OK) {
        /* Out of memory: the stale copy is still what the origin just confirmed. */
        fall_back_to_stale(r);
        r->c.revalidated = true;
        return;
    }
    moat_cache_obj_complete(r->c.obj);
    r->c.writer = false;
    r->c.revalidated = true;
}

void moat_pcache_serve_revalidated(struct moat_req *r)
{
    if (r->c.claimed && r->c.stale)
        moat_cache_obj_unclaim_refresh(r->c.stale);
    r->c.claimed = false;
    moat_cache_obj_release(&r->c.stale);
    r->c.revalidated = false;
    moat_pcache_serve_from(r, "fwd=stale; fwd-status=304; stored");
}

/* The writer of a primary key got an answer with Vary: the primary object becomes an index
 * (the Vary lines and a fresh generation, no body, the response's freshness) and the writer
 * goes on as the writer of its own variant. On return r->c.obj is the variant object, or
 * NULL when nothing is to be stored. */
static void make_index(struct moat_req *r, const struct moat_h1_resp *q,
                       const struct moat_cache_cc *cc, const struct moat_cache_policy_cfg *pc,
                       int64_t now)
{
    struct moat_cache_store *st = moat_srv.cache;
    struct moat_hdr idx[17];
    size_t n = 0;
    for (size_t i = 0; i < q->nhdrs && n < 16; i++)
        if (MOAT_STR_IEQ_LIT(q->hdrs[i].name, "vary"))
            idx[n++] = q->hdrs[i];
    char genbuf[24];
    int gl =
        snprintf(genbuf, sizeof genbuf, "%llu", (unsigned long long)atomic_fetch_add(&vary_gen, 1));
    struct moat_str gen = moat_str_make(genbuf, (size_t)gl);
    idx[n++] = (struct moat_hdr){MOAT_STR("Moat-Vary-Gen"), gen};
    struct moat_cache_meta meta;
    moat_cache_meta_init(&meta, pc, q->status, cc, q->hdrs, q->nhdrs, r->c.req_time, now);
    struct moat_cache_obj *v = NULL;
    int rc = MOAT_ERR;
    /* The variant first, then the index: waiters woken by the index must find this
     * variant already being written, or they would fetch it a second time. */
    if (variant_key(r, idx, n - 1, gen, r->hdrs, r->nhdrs))
        rc = moat_cache_lookup_or_insert(st, moat_str_make(r->c.key, r->c.keylen), now, &v);
    if ((rc != MOAT_CACHE_MISS && rc != MOAT_CACHE_HIT) ||
        moat_cache_obj_set_head(r->c.obj, q->status, idx, n, &meta, MOAT_STR_NULL) != MOAT_OK) {
        if (v && rc == MOAT_CACHE_MISS)
            moat_cache_obj_abandon(v, now, 0);
        moat_cache_obj_release(&v);
        moat_cache_obj_abandon(r->c.obj, now, 0);
        moat_cache_obj_release(&r->c.obj);
        r->c.writer = false;
        return;
    }
    moat_cache_obj_complete(r->c.obj);
    moat_cache_obj_release(&r->c.obj);
    if (rc == MOAT_CACHE_MISS) {
        r->c.obj = v;
        r->c.variant = true;
        return;
    }
    moat_cache_obj_release(&v); /* someone writes this variant already: pass through */
    r->c.writer = false;
}

void moat_pcache_response(struct moat_req *r, const struct moat_h1_resp *q)
{
    const struct moat_config *cfg = r->wcfg->cfg;
    if (!r->c.writer || !r->c.obj)
        return;
    struct moat_cache_cc cc;
    const char *tf = cfg->cache.targeted_field;
    struct moat_cache_policy_cfg pc = policy_cfg(cfg);
    if (q->status == 304 && r->c.stale) {
        revalidated(r, q, &pc);
        return;
    }
    moat_cache_cc_response(&cc, q->hdrs, q->nhdrs,
                           tf ? moat_str_make(tf, strlen(tf)) : MOAT_STR_NULL);
    /* "Cache everything": the origin's Cache-Control does not decide for moat. Set-Cookie
     * still does (a session must never be shared), and so does the status. */
    rule_cc(r->rule, &cc);
    bool strip_cookies = r->rule && r->rule->set_cookie == MOAT_SET_COOKIE_STRIP;
    if (strip_cookies)
        pc.flags |= MOAT_CACHE_CFG_STORE_SET_COOKIE;
    /* The request head was consumed when it was forwarded: its Authorization was noted at
     * request time (r->c.has_auth) and is checked here as moat_cache_storable would. */
    enum moat_cache_nostore why =
        moat_cache_storable(&pc, r->meth, q->status, &r->c.creq, NULL, 0, &cc, q->hdrs, q->nhdrs);
    if (why == MOAT_NOSTORE_NONE && r->c.has_auth &&
        !(cc.flags & (MOAT_CC_PUBLIC | MOAT_CC_MUST_REVALIDATE)) && cc.s_maxage < 0)
        why = MOAT_NOSTORE_AUTHORIZATION;
    bool vary = moat_h1_find(q->hdrs, q->nhdrs, MOAT_STR("vary")) != NULL;
    bool too_big = (q->flags & MOAT_H1_F_HAS_CL) && q->content_length > cfg->cache.max_object;
    int64_t now = moat_pcache_now();
    if (vary && !r->c.variant && why == MOAT_NOSTORE_NONE && !too_big &&
        r->respf.mode != FLOW_EOF) {
        make_index(r, q, &cc, &pc, now);
        if (!r->c.obj)
            return;
        vary = false; /* now writing the variant */
    }
    if (why != MOAT_NOSTORE_NONE || (vary && !r->c.variant) || too_big ||
        r->respf.mode == FLOW_EOF) {
        /* Mark the URL hit-for-pass only when the origin said "not cacheable"; an error or a
         * size limit is no reason to stop collapsing later requests. */
        bool says_no = why == MOAT_NOSTORE_NO_STORE || why == MOAT_NOSTORE_PRIVATE ||
                       why == MOAT_NOSTORE_SET_COOKIE || why == MOAT_NOSTORE_VARY_STAR ||
                       why == MOAT_NOSTORE_AUTHORIZATION || vary;
        moat_cache_obj_abandon(r->c.obj, now,
                               says_no ? (int64_t)(cfg->cache.pass_ttl_ms / 1000) : 0);
        moat_cache_obj_release(&r->c.obj);
        r->c.writer = false;
        return;
    }
    struct moat_cache_meta meta;
    moat_cache_meta_init(&meta, &pc, q->status, &cc, q->hdrs, q->nhdrs, r->c.req_time, now);
    rule_meta(r, &cc, q->hdrs, q->nhdrs, &meta);
    if (meta.lifetime <= 0 && !(meta.flags & MOAT_META_HAS_VALIDATOR) && !meta.sie && !meta.swr) {
        /* Nothing to reuse it for: stale at once, no validator, no grace. Not stored, and no
         * hit-for-pass either (the next answer may well carry freshness). */
        moat_cache_obj_abandon(r->c.obj, now, 0);
        moat_cache_obj_release(&r->c.obj);
        r->c.writer = false;
        return;
    }
    /* Stored heads leave out what moat consumes (targeted fields, tags). */
    struct moat_hdr keep[256];
    size_t nk = 0;
    struct moat_str tags = MOAT_STR_NULL;
    bool had_date = false;
    for (size_t i = 0; i < q->nhdrs && nk + 1 < MOAT_ARRAY_LEN(keep); i++) {
        struct moat_str n = q->hdrs[i].name;
        if (n.len == 4 && MOAT_STR_IEQ_LIT(n, "date"))
            had_date = true;
        if (moat_pcache_strip(r, n)) {
            if (!tags.len &&
                (MOAT_STR_IEQ_LIT(n, "cache-tag") || MOAT_STR_IEQ_LIT(n, "surrogate-key")))
                tags = q->hdrs[i].value;
            continue;
        }
        if (MOAT_STR_IEQ_LIT(n, "via"))
            continue; /* moat adds its own on every answer */
        if (strip_cookies && MOAT_STR_IEQ_LIT(n, "set-cookie"))
            continue; /* the fetching client got its cookie; the copy hands out none */
        keep[nk++] = q->hdrs[i];
    }
    /* An origin that sent no Date gets the time moat received the answer (RFC 9110 6.6.1),
     * stored with the copy: hits carry the stored Date, so every answer has one. */
    char date[MOAT_HTTP_DATE_LEN + 1];
    if (!had_date) {
        size_t dn = moat_http_date_format(now, date);
        keep[nk++] = (struct moat_hdr){MOAT_STR("Date"), moat_str_make(date, dn)};
    }
    if (moat_cache_obj_set_head(r->c.obj, q->status, keep, nk, &meta, tags) != MOAT_OK) {
        moat_cache_obj_abort(r->c.obj);
        moat_cache_obj_release(&r->c.obj);
        r->c.writer = false;
        return;
    }
    if (q->flags & MOAT_H1_F_HAS_CL)
        moat_cache_obj_size_hint(r->c.obj, q->content_length);
    r->c.status = !strcmp(r->c.status ? r->c.status : "", "fwd=stale") ? "fwd=stale; stored"
                                                                       : "fwd=uri-miss; stored";
    r->c.tap = true;
    if (r->respf.done)
        moat_cache_obj_complete(r->c.obj);
}

void moat_pcache_tap(struct moat_req *r, const char *p, uint32_t n)
{
    if (!r->c.obj || !r->c.writer)
        return;
    if (n && moat_cache_obj_append(r->c.obj, p, n) != MOAT_OK) {
        /* Too large or out of memory: the store aborted the object; go on uncached. */
        moat_cache_obj_release(&r->c.obj);
        r->c.writer = false;
        r->c.tap = false;
        return;
    }
    if (r->respf.done) {
        /* The whole body is in: complete the object now, not when our own client has it
         * all, so a request that comes meanwhile is a hit rather than a collapsed wait. */
        moat_cache_obj_complete(r->c.obj);
        r->c.tap = false;
    }
}

void moat_pcache_end(struct moat_req *r, bool ok)
{
    if (r->c.obj) {
        moat_pcache_unsubscribe(r);
        if (r->c.writer) {
            if (ok && moat_cache_obj_state(r->c.obj) == MOAT_CACHE_OBJ_STREAMING)
                moat_cache_obj_complete(r->c.obj);
            else if (moat_cache_obj_state(r->c.obj) != MOAT_CACHE_OBJ_COMPLETE)
                moat_cache_obj_abort(r->c.obj);
        }
        moat_cache_obj_release(&r->c.obj);
    }
    if (r->c.claimed && r->c.stale)
        moat_cache_obj_unclaim_refresh(r->c.stale);
    r->c.claimed = false;
    moat_cache_obj_release(&r->c.stale);
    r->c.writer = false;
    r->c.tap = false;
}

bool moat_pcache_stale_on_error(struct moat_req *r)
{
    if (!r->c.stale || r->head_sent)
        return false;
    const struct moat_cache_head *h = moat_cache_obj_head(r->c.stale);
    if (!h || !moat_cache_stale_if_error_ok(&h->meta, &r->c.creq, moat_pcache_now()))
        return false;
    fall_back_to_stale(r);
    r->c.stale_serving = true;
    MOAT_STAT_INC(&r->w->stats, cache_stale);
    moat_pcache_serve_from(r, "hit; detail=stale-if-error");
    return true;
}
