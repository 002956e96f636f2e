/* cache_serve.c: answering a request from a cache object: a hit, a 304 or a Range of it, or
 * a fetch in flight that the request collapsed onto, streamed through the request's
 * downstream as the writer appends.
 *
 * The store (src/cache/store.c) is shared by all workers; an object written on one worker
 * may be read on another. A reader subscribes to the object; the writer's thread calls the
 * reader's callback with the object locked, and the callback only posts a wake-up to the
 * reader's own loop (at most one outstanding per request), where the reader reads. */
#include "cache/policy.h"
#include "cache/store.h"
#include "proxy/cache-int.h"
#include "proxy/pipeline.h"
#include "proxy/server.h"

int64_t moat_pcache_now(void)
{
    return moat_wall_s();
}

/* --- wake-ups across threads ------------------------------------------------------------- */

static void wake_post(struct moat_loop *loop, void *arg)
{
    struct moat_req *r = arg;
    (void)loop;
    atomic_store(&r->wake_pending, false);
    if (r->zombie) {
        moat_req_free_zombie(r);
        return;
    }
    if (r->state != R_DONE)
        moat_req_drive(r);
}

/* Runs on the writer's thread with the object locked: post, nothing else. */
static void wake_cb(void *arg)
{
    struct moat_req *r = arg;
    if (!atomic_exchange(&r->wake_pending, true))
        if (moat_loop_post(&r->w->loop, wake_post, r) != MOAT_OK)
            atomic_store(&r->wake_pending, false); /* lost: the send timeout ends it */
}

/* --- reading side --------------------------------------------------------------------------- */

void moat_pcache_unsubscribe(struct moat_req *r)
{
    moat_cache_obj_unsubscribe(&r->c.wait);
}

/* Subscribes once: linking the same waiter twice would make a cycle in the object's list.
 * Returns MOAT_OK (subscribed now or before) or MOAT_DONE (the object is final). */
static int subscribe(struct moat_req *r)
{
    if (atomic_load(&r->c.wait.obj) != NULL)
        return MOAT_OK;
    return moat_cache_obj_subscribe(r->c.obj, &r->c.wait);
}

/* Starts answering <c> from r->c.obj (a reader's reference). */
int moat_pcache_serve_from(struct moat_req *r, const char *status)
{
    r->c.status = status;
    r->c.head_done = false;
    memset(&r->c.cur, 0, sizeof r->c.cur);
    memset(&r->respf, 0, sizeof r->respf);
    r->c.span = MOAT_STR_NULL;
    r->c.wait.cb = wake_cb;
    r->c.wait.arg = r;
    r->state = R_CACHE;
    return MOAT_DONE;
}

/* The cached answer's head: the stored fields (a clean block: hop-by-hop fields were left
 * out when it was stored), Age, Cache-Status, and the framing the downstream derives from
 * the length: known (a complete object, or the writer's Content-Length) or streaming. */
static int queue_head(struct moat_req *r, const struct moat_cache_head *h, int status, bool body)
{
    int64_t now = moat_pcache_now();
    int64_t age = moat_cache_current_age(&h->meta, now);
    if (age < 0)
        age = 0;
    struct moat_hdr f[64];
    struct moat_resp rs = {
        .status = status,
        .via_minor = 1,
        .age = age,
        .cache_status = r->c.status,
        .cache_ttl = -1,
        .no_body = !body,
        .keep_cl = status != 304, /* a HEAD's Content-Length is the object's */
        .length = moat_cache_obj_expected_len(r->c.obj),
    };
    if (r->rule && r->rule->browser_ttl_ms) {
        /* The rule's browser_ttl replaces the stored Cache-Control (moat_resp_keep): the
         * fields go one by one. */
        size_t pos = 0, n = 0;
        struct moat_hdr l;
        while (n < MOAT_ARRAY_LEN(f) && moat_cache_head_next(h, &pos, &l))
            f[n++] = l;
        rs.fields = f;
        rs.nfields = n;
        rs.fields_h1 = true;
        rs.origin = true;
    } else {
        rs.block = moat_cache_head_block(h);
    }
    if (!strcmp(r->c.status, "hit")) {
        int64_t ttl = (int64_t)h->meta.lifetime - age;
        rs.cache_ttl = ttl > 0 ? ttl : 0;
    }
    if (status == 206) {
        rs.content_range = moat_str_make(r->c.range_hdr, strlen(r->c.range_hdr));
        rs.length = r->c.range_left;
    } else if (status == 304) {
        rs.length = MOAT_LEN_UNKNOWN; /* a 304 has no body and states no length */
        rs.no_body = true;
    }
    r->status = status;
    if (r->ds->send_head(r, &rs) != MOAT_OK)
        return MOAT_ERR;
    r->head_sent = true;
    return MOAT_OK;
}

/* Sets r->c.span to the next body bytes of r->c.obj to write, or marks the body done.
 * Returns 1 when there is something to write or the body is done, 0 when the reader caught
 * up with a writer still filling the object, -1 when the object was aborted or passed
 * mid-body. */
static int next_span(struct moat_req *r)
{
    struct moat_str span = MOAT_STR_NULL;
    if (r->c.range_left != 0) {
        moat_cache_obj_read(r->c.obj, &r->c.cur, &span);
        if (!span.len) {
            enum moat_cache_obj_state st = moat_cache_obj_state(r->c.obj);
            if (st == MOAT_CACHE_OBJ_ABORTED || st == MOAT_CACHE_OBJ_PASS)
                return -1;
            if (st != MOAT_CACHE_OBJ_COMPLETE)
                return 0;
            /* Re-read once: bytes may have landed between the read and the state check. */
            moat_cache_obj_read(r->c.obj, &r->c.cur, &span);
        }
        if (span.len > r->c.range_left)
            span.len = (size_t)r->c.range_left;
        if (r->c.range_left != UINT64_MAX)
            r->c.range_left -= span.len;
    }
    if (span.len) {
        r->c.span = span;
        return 1;
    }
    r->c.body_done = true;
    return 1;
}

int moat_pcache_serve(struct moat_req *r)
{
    struct moat_worker *w = r->w;
    if (!r->c.head_done) {
        /* Subscribe first, then look: a change between the two wakes us, none is lost. */
        enum moat_cache_obj_state st = moat_cache_obj_state(r->c.obj);
        if (st == MOAT_CACHE_OBJ_PENDING) {
            if (subscribe(r) == MOAT_OK) {
                st = moat_cache_obj_state(r->c.obj);
                if (st == MOAT_CACHE_OBJ_PENDING) {
                    moat_timer_set(&w->loop, &r->timer, r->site->pool->first_byte_timeout_ms);
                    return MOAT_AGAIN;
                }
            } else {
                st = moat_cache_obj_state(r->c.obj);
            }
        }
        if (st == MOAT_CACHE_OBJ_PASS || st == MOAT_CACHE_OBJ_ABORTED) {
            /* The fetch we waited for is uncacheable or failed: go to the origin ourselves
             * (as Varnish's waiting list does after a hit-for-pass). */
            moat_pcache_unsubscribe(r);
            moat_cache_obj_release(&r->c.obj);
            if (r->c.stale && moat_pcache_stale_on_error(r))
                return MOAT_OK;
            r->c.status = "fwd=uri-miss";
            if (st == MOAT_CACHE_OBJ_PASS)
                MOAT_STAT_INC(&w->stats, cache_pass);
            moat_timer_stop(&w->loop, &r->timer);
            moat_xchg_forward(r);
            return MOAT_OK;
        }
        const struct moat_cache_head *h = moat_cache_obj_head(r->c.obj);
        if (!r->c.variant && h->vary_len && r->c.fresh_lookup && !r->c.stale_serving) {
            /* We waited on a primary key whose answer turned out to vary: look our own
             * variant up now (we may collapse on the writer's variant, or fetch ours). */
            moat_timer_stop(&w->loop, &r->timer);
            int rc = moat_pcache_to_variant(r, moat_pcache_now());
            if (rc == MOAT_DONE)
                return MOAT_OK; /* answering from the cache (R_CACHE) or a local response */
            moat_xchg_forward(r);
            return MOAT_OK;
        }
        int status = h->status;
        int cond = 0;
        if (r->c.fresh_lookup && !r->c.stale_serving) {
            int64_t lm = h->meta.last_modified;
            cond = moat_cache_conditional(r->meth, r->hdrs, r->nhdrs, moat_cache_head_etag(h), lm,
                                          h->meta.date);
        }
        if (cond == 304) {
            MOAT_STAT_INC(&w->stats, cache_not_modified);
            status = 304;
        } else if (cond == 412) {
            status = 412;
        }
        r->c.fresh_lookup = false;
        bool body = !r->is_head && status != 304 && status != 412 && status != 204;
        uint64_t first = 0, last = 0, total = 0;
        int range = MOAT_RANGE_NONE;
        r->c.range_left = UINT64_MAX;
        if (status == 200 && r->c.range.len &&
            moat_cache_obj_state(r->c.obj) == MOAT_CACHE_OBJ_COMPLETE) {
            /* A single byte range of a complete object (RFC 9110 14): 206, or 416. A
             * failing If-Range, several ranges or another unit get the whole 200. */
            total = moat_cache_obj_body_len(r->c.obj);
            if (!r->c.if_range.len || moat_cache_if_range_ok(r->c.if_range, moat_cache_head_etag(h),
                                                             h->meta.last_modified))
                range = moat_cache_range_parse(r->c.range, total, &first, &last);
        }
        moat_timer_stop(&w->loop, &r->timer);
        if (range == MOAT_RANGE_UNSATISFIABLE) {
            char body416[96];
            snprintf(r->c.range_hdr, sizeof r->c.range_hdr, "bytes */%llu",
                     (unsigned long long)total);
            snprintf(body416, sizeof body416, "range not satisfiable (length %llu)\n",
                     (unsigned long long)total);
            r->c.status = "hit";
            moat_pcache_unsubscribe(r);
            moat_cache_obj_release(&r->c.obj);
            moat_local_response(r, 416, body416);
            return MOAT_OK;
        }
        if (status == 412) {
            r->c.status = "hit";
            moat_pcache_unsubscribe(r);
            moat_cache_obj_release(&r->c.obj);
            moat_local_response(r, 412, "precondition failed\n");
            return MOAT_OK;
        }
        if (range == MOAT_RANGE_OK) {
            status = 206;
            snprintf(r->c.range_hdr, sizeof r->c.range_hdr, "bytes %llu-%llu/%llu",
                     (unsigned long long)first, (unsigned long long)last,
                     (unsigned long long)total);
            r->c.range_left = last - first + 1;
            moat_cache_cursor_seek(r->c.obj, &r->c.cur, first);
        }
        if (queue_head(r, h, status, body) != MOAT_OK) {
            r->close = true;
            r->ds->abort(r);
            return MOAT_DONE;
        }
        r->c.head_done = true;
        r->c.body_done = !body;
        if (body && moat_cache_obj_state(r->c.obj) != MOAT_CACHE_OBJ_COMPLETE)
            subscribe(r);
    }
    for (int rounds = 0; rounds < 256; rounds++) {
        /* Take the next body span before writing, so the head and the first span (for a
         * small hit: the whole body) leave in one writev. */
        if (!r->c.span.len && !r->c.body_done) {
            int k = next_span(r);
            if (k < 0) {
                r->ds->abort(r);
                return MOAT_DONE; /* the origin failed mid-body: cut the response */
            }
            if (k == 0) {
                if (r->ds->send_data(r, NULL, 0, false) < 0) /* the head, if still queued */
                    return MOAT_DONE;
                moat_timer_set(&w->loop, &r->timer, r->site->pool->idle_timeout_ms);
                return MOAT_AGAIN; /* subscribed: the writer wakes us */
            }
        }
        if (r->c.span.len) {
            /* At most limits.body_buffer of body per write: one write of a whole large object
             * costs the kernel far more per byte than a few of 64 KiB (128 KiB hits: +35%
             * requests per CPU-second with the cap, bench/RESULTS.md), likely because it
             * outruns the socket's send buffer and is taken in pieces under memory pressure
             * anyway. The proxy's pump is bounded the same way by its body buffer. */
            size_t take = MOAT_MIN(r->c.span.len, (size_t)w->body_bufsize);
            ssize_t n = r->ds->send_stored ? r->ds->send_stored(r, r->c.obj, r->c.span.ptr, take)
                                           : r->ds->send_data(r, r->c.span.ptr, take, false);
            if (n < 0)
                return MOAT_DONE;
            r->c.span.ptr += n;
            r->c.span.len -= (size_t)n;
            if ((size_t)n < take)
                return MOAT_AGAIN;
            continue;
        }
        if (r->c.body_done) {
            int rc = r->ds->finish(r, MOAT_STR_NULL);
            if (rc == MOAT_AGAIN)
                return MOAT_AGAIN;
            /* The whole response is written. */
            moat_pcache_unsubscribe(r);
            moat_timer_stop(&w->loop, &r->timer);
            r->fin_done = rc == MOAT_OK;
            return MOAT_DONE;
        }
    }
    return MOAT_OK;
}
