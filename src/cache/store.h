/* store.h: the shared in-memory cache store: sharded table, streaming objects, SIEVE eviction.
 *
 * One store is shared by all worker threads. Threads meet only here:
 *   - the table is split in shards, each with its own mutex (held for a lookup, an insert,
 *     an unlink: a few hundred nanoseconds, never across I/O or callbacks);
 *   - objects are refcounted; every pointer handed out holds one reference, released with
 *     moat_cache_obj_release(&obj);
 *   - an object has one writer (the request that missed) and any number of readers that may
 *     attach while it is still being written, and read the body as it arrives.
 *
 * Object life: PENDING (created by a miss, no head yet) -> STREAMING (head set, body being
 * appended) -> COMPLETE (immutable from then on). Or, at any point before COMPLETE:
 * -> PASS (the writer found the response uncacheable: waiters go to the origin themselves,
 *    and the key stays marked "hit-for-pass" for a while) or -> ABORTED (the origin failed;
 *    readers that already sent bytes must cut their client response). */
#ifndef MOAT_CACHE_STORE_H
#define MOAT_CACHE_STORE_H

#include "cache/policy.h"
#include "core/common.h"
#include "http/h1.h"

struct moat_cache_store;
struct moat_cache_obj;

struct moat_cache_store_cfg {
    size_t max_bytes;  /* budget for everything linked in the table: objects, heads,
                          bodies, allocator rounding, bucket arrays (default 512 MiB) */
    size_t max_object; /* largest body accepted (default max_bytes / 16) */
    unsigned shards;   /* power of two, 1..4096 (default 256) */
};

/* Creates a store; <cfg> may be NULL for defaults; zero fields take their default. Returns
 * NULL on allocation failure. */
struct moat_cache_store *moat_cache_store_new(const struct moat_cache_store_cfg *cfg);

/* Frees the store and every object still linked. All references handed out must have been
 * released before (checked in debug builds). */
void moat_cache_store_free(struct moat_cache_store *st);

/* The 64-bit XXH3 hash the store uses for <key>. */
uint64_t moat_cache_key_hash(struct moat_str key);

/* ---- Lookup and collapsed forwarding --------------------------------------------------- */

enum moat_cache_lookup {
    MOAT_CACHE_HIT = 0,   /* *obj is an existing object (any state but ABORTED): a reader */
    MOAT_CACHE_MISS,      /* *obj is a new PENDING object and the caller its only writer */
    MOAT_CACHE_PASS,      /* the key is marked hit-for-pass: go to the origin, do not
                             store, do not wait; *obj is NULL */
    MOAT_CACHE_NOT_FOUND, /* (moat_cache_lookup only) nothing there; *obj is NULL */
};

/* Looks <key> up and, if nothing usable is there, inserts a new PENDING object for it, in
 * one step under the shard lock: of N concurrent callers for one key exactly one gets
 * MOAT_CACHE_MISS (the writer), the others MOAT_CACHE_HIT on that same object (collapsed
 * forwarding). The writer must end the object with moat_cache_obj_complete, _abort or
 * _abandon: an object left PENDING/STREAMING is never evicted and its waiters wait
 * forever. An expired hit-for-pass marker is replaced by a new object. <now> is Unix
 * seconds. On HIT and MISS *<obj> holds a reference the caller must release. Returns
 * MOAT_ERR (and *obj NULL) when memory runs out. */
int moat_cache_lookup_or_insert(struct moat_cache_store *st, struct moat_str key, int64_t now,
                                struct moat_cache_obj **obj);

/* Looks <key> up without inserting (only-if-cached, purge checks, tests). Returns
 * MOAT_CACHE_HIT with a reference, MOAT_CACHE_PASS or MOAT_CACHE_NOT_FOUND. Counts a hit or
 * a miss like moat_cache_lookup_or_insert. */
int moat_cache_lookup(struct moat_cache_store *st, struct moat_str key, int64_t now,
                      struct moat_cache_obj **obj);

#define MOAT_CACHE_R_DEFERRED 0x1u /* link the new object only when its head is set */

/* Replaces <old> (a stale object the caller holds) by a new PENDING object for the same
 * key, for revalidation. Collapsing again: if the key no longer maps to <old> because
 * another request already replaced it, that newer object is returned as MOAT_CACHE_HIT and
 * the caller attaches to it as a reader. Otherwise the caller gets MOAT_CACHE_MISS and a
 * new object to write. With MOAT_CACHE_R_DEFERRED the new object is not linked until
 * moat_cache_obj_set_head, so lookups keep finding <old> meanwhile: that is the
 * stale-while-revalidate background refresh (use moat_cache_obj_claim_refresh first so
 * only one request starts it). <old> is neither released nor modified. */
int moat_cache_replace(struct moat_cache_store *st, struct moat_cache_obj *old, int64_t now,
                       unsigned flags, struct moat_cache_obj **obj);

/* True for exactly one caller per object until moat_cache_obj_unclaim_refresh: the request
 * that will refresh a stale object in the background (RFC 5861 stale-while-revalidate). */
bool moat_cache_obj_claim_refresh(struct moat_cache_obj *obj);
void moat_cache_obj_unclaim_refresh(struct moat_cache_obj *obj);

/* Takes one more reference on <obj>. */
struct moat_cache_obj *moat_cache_obj_ref(struct moat_cache_obj *obj);

/* Drops the caller's reference and clears *<obj>. The last reference frees the object
 * (an evicted or purged object lives on while readers still hold it). NULL is fine. */
void moat_cache_obj_release(struct moat_cache_obj **obj);

/* ---- The writer's side ----------------------------------------------------------------- */

/* Sets the response head of a PENDING object: <status>, the end-to-end header fields
 * <hdrs,n> (hop-by-hop fields, those named in Connection and Age are left out; the block
 * is kept in wire form "Name: value\r\n"...; Content-Length is dropped too, see
 * moat_cache_obj_expected_len), the policy metadata <meta> and <tags> (cache
 * tags for purge by tag, separated by spaces or commas; may be empty). The head is
 * immutable from then on; the object goes STREAMING and waiters are called. Returns MOAT_OK,
 * MOAT_DECLINED if the head would exceed 64 KiB - 1 (abandon the object), MOAT_ERR on
 * allocation failure (abort it). */
int moat_cache_obj_set_head(struct moat_cache_obj *obj, int status, const struct moat_hdr *hdrs,
                            size_t n, const struct moat_cache_meta *meta, struct moat_str tags);

/* Announces the expected body size (Content-Length) so the body is kept in one exactly
 * sized chunk. Optional; call before the first append. */
void moat_cache_obj_size_hint(struct moat_cache_obj *obj, uint64_t bytes);

/* Appends body bytes <data,len> and wakes the waiters. Returns MOAT_OK; MOAT_DECLINED when
 * the body would exceed cfg.max_object (the object is then aborted: readers are told, the
 * writer goes on alone); MOAT_ERR on allocation failure (same: aborted). */
int moat_cache_obj_append(struct moat_cache_obj *obj, const void *data, size_t len);

/* Marks the body complete: the object becomes immutable and waiters are called. */
void moat_cache_obj_complete(struct moat_cache_obj *obj);

/* The origin failed mid-way: unlinks the object, marks it ABORTED, calls the waiters. */
void moat_cache_obj_abort(struct moat_cache_obj *obj);

/* The response is not cacheable: waiters are told to go to the origin themselves (state
 * PASS). With <pass_ttl> > 0 the key stays marked hit-for-pass until now + pass_ttl, so
 * later requests go straight to the origin instead of queueing on a writer (Varnish's
 * hit-for-pass); with 0 the object is simply unlinked. */
void moat_cache_obj_abandon(struct moat_cache_obj *obj, int64_t now, int64_t pass_ttl);

/* Gives a PENDING <obj> (the writer got a 304 from the origin) the body of <src>, a
 * COMPLETE object, without copying it: <obj> keeps a reference on <src>'s chunks. Then
 * call moat_cache_obj_set_head (merged headers, fresh metadata) and
 * moat_cache_obj_complete; appends are refused. Returns MOAT_OK, or MOAT_ERR if <src> is
 * not COMPLETE or <obj> is not a fresh PENDING object (then abort <obj>). */
int moat_cache_obj_adopt_body(struct moat_cache_obj *obj, struct moat_cache_obj *src);

/* ---- The readers' side ----------------------------------------------------------------- */

enum moat_cache_obj_state {
    MOAT_CACHE_OBJ_PENDING = 0,
    MOAT_CACHE_OBJ_STREAMING,
    MOAT_CACHE_OBJ_COMPLETE,
    MOAT_CACHE_OBJ_PASS,
    MOAT_CACHE_OBJ_ABORTED,
};

enum moat_cache_obj_state moat_cache_obj_state(const struct moat_cache_obj *obj);

/* The stored head, valid once the state is STREAMING or COMPLETE (NULL before), immutable
 * and owned by the object. Compact on purpose (72 bytes plus the block): offsets instead of
 * pointers; use the accessors below. */
struct moat_cache_head {
    struct moat_cache_meta meta;
    uint64_t tag_bloom; /* internal: 2 bits per tag for purge by tag */
    uint32_t block_len;
    uint16_t status;
    uint16_t etag_off, etag_len; /* ETag value inside data, etag_len 0 if none */
    uint16_t vary_off, vary_len; /* first Vary value inside data, vary_len 0 if none */
    uint16_t tags_len;           /* tags follow the block */
    char data[];                 /* block ("Name: value\r\n" lines), then tags */
};

/* The header block, ready to write after a status line. */
static inline struct moat_str moat_cache_head_block(const struct moat_cache_head *h)
{
    return moat_str_make(h->data, h->block_len);
}
static inline struct moat_str moat_cache_head_etag(const struct moat_cache_head *h)
{
    return moat_str_make(h->data + h->etag_off, h->etag_len);
}
static inline struct moat_str moat_cache_head_vary(const struct moat_cache_head *h)
{
    return moat_str_make(h->data + h->vary_off, h->vary_len);
}
/* The tags, normalized: separated by single spaces. */
static inline struct moat_str moat_cache_head_tags(const struct moat_cache_head *h)
{
    return moat_str_make(h->data + h->block_len, h->tags_len);
}

/* The object's head, NULL while PENDING. */
const struct moat_cache_head *moat_cache_obj_head(const struct moat_cache_obj *obj);

/* Iterates the header lines of <head>: start with *<pos> = 0. */
bool moat_cache_head_next(const struct moat_cache_head *head, size_t *pos, struct moat_hdr *out);

/* The object's key (as inserted). */
struct moat_str moat_cache_obj_key(const struct moat_cache_obj *obj);

/* Body bytes available now (grows while STREAMING; final once COMPLETE). */
uint64_t moat_cache_obj_body_len(const struct moat_cache_obj *obj);

/* The final body length if known: the body length once COMPLETE, else the size hint
 * (Content-Length) the writer gave, else UINT64_MAX (stream it chunked). Content-Length is
 * not kept in the head block: the integrator frames the reply itself. */
uint64_t moat_cache_obj_expected_len(const struct moat_cache_obj *obj);

/* True when the object was soft-purged: moat_cache_obj_decide treats it as stale. */
bool moat_cache_obj_soft_purged(const struct moat_cache_obj *obj);

/* moat_cache_decide on the object's metadata, with a soft purge taken into account. The
 * object must have a head. */
enum moat_cache_fresh moat_cache_obj_decide(const struct moat_cache_obj *obj,
                                            const struct moat_cache_cc *req, int64_t now);

/* A reader's position in the body. Zero it to start at byte 0, or use
 * moat_cache_cursor_seek for a range. */
struct moat_cache_cursor {
    const void *chunk; /* internal */
    size_t off;        /* internal: offset in chunk */
    uint64_t pos;      /* bytes consumed so far */
};

/* Positions <cur> at body offset <pos> (must be <= moat_cache_obj_body_len). */
void moat_cache_cursor_seek(const struct moat_cache_obj *obj, struct moat_cache_cursor *cur,
                            uint64_t pos);

/* Returns the next span of available body bytes at <cur> in *<out> (pointing into the
 * object: valid while the caller holds its reference) and advances <cur>; *<out> is empty
 * when the reader has caught up with the writer. Lock-free: readers never block writers. */
void moat_cache_obj_read(const struct moat_cache_obj *obj, struct moat_cache_cursor *cur,
                         struct moat_str *out);

/* A subscription to an object's progress. Caller-owned (embed it in the request); the
 * store only links it. */
typedef void moat_cache_wake_fn(void *arg);

struct moat_cache_waiter {
    struct moat_cache_waiter *prev, *next; /* internal */
    _Atomic(struct moat_cache_obj *) obj;  /* internal: non-NULL while subscribed */
    moat_cache_wake_fn *cb;
    void *arg;
};

/* Subscribes <w> (cb and arg set by the caller) to <obj>: <w->cb>(<w->arg>) is then called
 * after each change: head set, bytes appended, complete, abort, pass. The callback runs on
 * the writer's thread WITH THE OBJECT'S LOCK HELD: it must be short and thread-safe and
 * must not call any moat_cache_* function (it would deadlock); the intended callback
 * posts a note to the reader's own event loop (eventfd, pipe, lock-free mailbox) and the
 * reader then reads/inspects from its own thread. Holding the lock is what makes
 * unsubscribing safe: once moat_cache_obj_unsubscribe returns, the callback is neither
 * running nor going to run, so the reader may free <w>.
 * Subscribe before reading (subscribe, then read what is there, then wait) and no wake-up
 * can be lost. Returns MOAT_OK (subscribed), or MOAT_DONE when the object is already in a
 * final state (COMPLETE, PASS, ABORTED): nothing is linked and the callback is never
 * called. Final states unlink all waiters after their last call, so unsubscribing then is
 * a harmless no-op. */
int moat_cache_obj_subscribe(struct moat_cache_obj *obj, struct moat_cache_waiter *w);

/* Unsubscribes <w> if subscribed (idempotent). Always call it before freeing <w> and
 * before releasing the reference on the object, even after a final state: that is the
 * synchronization point that guarantees the writer no longer touches <w>. */
void moat_cache_obj_unsubscribe(struct moat_cache_waiter *w);

/* ---- Purge ----------------------------------------------------------------------------- */

/* Hard purge unlinks objects (readers holding them finish normally); soft purge keeps them
 * but marks them stale, so they can still serve stale-while-revalidate / stale-if-error
 * and get revalidated (Fastly's soft purge). Hit-for-pass markers are always removed. */
#define MOAT_CACHE_PURGE_SOFT 0x1u

/* Purges one exact key. Returns MOAT_OK if something was there, MOAT_DECLINED if not. */
int moat_cache_purge_key(struct moat_cache_store *st, struct moat_str key, unsigned flags);

enum moat_cache_purge_kind {
    MOAT_CACHE_PURGE_PREFIX, /* every key starting with arg */
    MOAT_CACHE_PURGE_TAG,    /* every object tagged arg */
    MOAT_CACHE_PURGE_ALL,
};

/* An incremental purge. Set kind, arg and flags and zero the rest; arg must stay valid
 * until the purge is done. */
struct moat_cache_purge {
    enum moat_cache_purge_kind kind;
    struct moat_str arg;
    unsigned flags;    /* MOAT_CACHE_PURGE_SOFT */
    unsigned shard;    /* internal cursor */
    size_t bucket;     /* internal cursor */
    uint64_t purged;   /* objects purged so far */
    uint64_t examined; /* objects examined so far (each step adds at most about budget) */
};

/* Runs <p> for at most about <budget> objects examined, holding one shard lock at a time
 * (so a million-object purge never stalls lookups for long: call it from a timer until it
 * is done). Returns MOAT_AGAIN while there is more to do, MOAT_OK when finished. Objects
 * inserted while a purge runs may or may not be visited; every object present when it
 * started is. Do not call it back to back: a thread that does is CPU-bound for the whole
 * purge, and a worker on the same core then waits out whole scheduler time slices; let
 * the thread rest between calls (src/admin/admin.c, purge_task: a timer paces the slices). */
int moat_cache_purge_step(struct moat_cache_store *st, struct moat_cache_purge *p, size_t budget);

/* ---- Counters -------------------------------------------------------------------------- */

struct moat_cache_stats {
    uint64_t objects;     /* linked objects (including PENDING and hit-for-pass markers) */
    uint64_t bytes;       /* bytes charged for linked objects and tables (vs max_bytes) */
    uint64_t bytes_alloc; /* all bytes allocated, including unlinked objects still held */
    uint64_t hits;        /* lookups that found an object */
    uint64_t misses;      /* lookups that found nothing (and inserted, for _or_insert) */
    uint64_t passes;      /* lookups that found a hit-for-pass marker */
    uint64_t inserts;     /* objects created */
    uint64_t evictions;   /* objects unlinked by the eviction policy */
    uint64_t purged;      /* objects unlinked or marked by purges */
    uint64_t aborted;     /* objects aborted (origin failure, too large, no memory) */
};

/* Sums the counters (takes each shard lock briefly). */
void moat_cache_store_stats(struct moat_cache_store *st, struct moat_cache_stats *out);

/* Per-object memory for a given key and body: for reports and tests. */
size_t moat_cache_obj_charge(const struct moat_cache_obj *obj);

#endif
