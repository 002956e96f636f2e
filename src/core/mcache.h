/* mcache.h: per-thread caches of freed memory blocks by size class, for the small objects a
 * request makes and drops at a high rate (HTTP/2 streams, libnghttp2's own allocations, the
 * response bytes a stream holds). glibc's malloc keeps only 7 blocks per size in its thread
 * cache and nothing above 1 KiB: with a thousand streams in flight each alloc/free went to
 * the arena (20% of a worker's CPU on 1 KiB HTTP/2 hits). Here a block freed goes to its
 * class's list in the freeing thread and comes back on the next allocation of that class.
 *
 * Bounded: each class keeps at most MOAT_MC_CLASS_BYTES of free blocks (and at least 4), the
 * rest goes back to malloc; blocks above MOAT_MC_MAX go straight to malloc. Blocks are plain
 * malloc memory with a 16-byte header, so one freed on another thread is simply cached
 * there. */
#ifndef MOAT_CORE_MCACHE_H
#define MOAT_CORE_MCACHE_H

#include <stddef.h>

#define MOAT_MC_MAX         (64u * 1024) /* larger blocks are not cached */
#define MOAT_MC_CLASS_BYTES (1024u * 1024)

/* Returns at least <n> bytes (aligned for any type), or NULL. */
void *moat_mc_alloc(size_t n);
/* Same, zeroed. */
void *moat_mc_calloc(size_t nmemb, size_t size);
/* As realloc(3), on a block from moat_mc_alloc (or NULL). */
void *moat_mc_realloc(void *p, size_t n);
/* Gives back a block from moat_mc_alloc (NULL is fine). */
void moat_mc_free(void *p);
/* The usable size of a block from moat_mc_alloc. */
size_t moat_mc_size(const void *p);
/* Frees this thread's cached blocks (at thread exit). */
void moat_mc_thread_cleanup(void);

#endif
