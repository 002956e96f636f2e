/* config-int.h: what the config module's files share (the table engine, the loader state, the
 * snapshot's memory, the tables of each area); not part of the contract.
 *
 * The module is one engine and one file of directive tables per area:
 *   engine.c      the loader state, the arena, error positions, the generic key types and the
 *                 walker that drives a table over a YAML map, defaults, "did you mean", the
 *                 key reference (moat_config_keys)
 *   cfg_server.c  listen, workers, demo_origin, admin, limits, timeouts, forwarding, log, tuning
 *   cfg_cache.c   cache
 *   cfg_pools.c   pools and their origins
 *   cfg_sites.c   sites, their hosts, https, upgrades and cache rules
 *   cfg_tls.c     tls (the server side) and pools.*.tls (TLS to origins)
 *   load.c        the root table, loading (file, string, quick mode), lifetime, lookups
 *   parse_util.c  the value parsers (durations, sizes, addresses, CIDRs)
 * A new area adds its own table file and one row in the root table (load.c). Names shared
 * between files carry the cfg_ prefix; everything else stays static in its file. */
#ifndef MOAT_CONFIG_CONFIG_INT_H
#define MOAT_CONFIG_CONFIG_INT_H

#include <libfyaml.h>

#include "config/config.h"

/* moat_addr_parse, also returning the host part as written (lowercased, IPv6 in brackets,
 * "0.0.0.0" for ":PORT") in <host> of <hostlen> bytes, and the port in *<port>. */
int moat_addr_parse_ex(const char *text, struct moat_addr *out, char *host, size_t hostlen,
                       unsigned *port, char *err, size_t errlen);

/* True if <a> is a loopback address (127.0.0.0/8, ::1, v4-mapped 127/8). */
bool moat_addr_is_loopback(const struct moat_addr *a);

/* ------------------------------------------------------------------------------------------
 * The snapshot's memory (engine.c).
 * ------------------------------------------------------------------------------------------ */

struct cfg_chunk;

/* The site lookup index: exact names and "*.suffix" names (stored as ".suffix"), each sorted
 * for binary search. line/col/site are kept for the duplicate check at load time. */
struct cfg_host_ent {
    const char *name;
    size_t len;
    const struct moat_cfg_site *site;
    int line, col;
    size_t site_idx;
};

/* The public struct sits inside a private box that holds what callers must not see. */
struct cfg_box {
    struct cfg_chunk *chunks;
    struct cfg_host_ent *exact, *suffix;
    size_t nexact, nsuffix;
    const struct moat_cfg_site *star;
    struct moat_config cfg;
};

static inline struct cfg_box *cfg_box_of(const struct moat_config *c)
{
    return MOAT_CONTAINER_OF(c, struct cfg_box, cfg);
}

/* A new, empty box whose snapshot holds one reference; NULL when out of memory. */
struct cfg_box *cfg_box_new(void);
/* Frees <b> and everything allocated in it; NULL is a no-op. */
void cfg_box_free(struct cfg_box *b);
/* <n> zeroed bytes (aligned for any type) that live as long as <b>; NULL when out of memory. */
void *cfg_alloc(struct cfg_box *b, size_t n);
/* A NUL-terminated copy of <n> bytes of <s> in <b>; NULL when out of memory. */
char *cfg_strndup(struct cfg_box *b, const char *s, size_t n);

/* ------------------------------------------------------------------------------------------
 * The loader state, key paths and errors (engine.c).
 * ------------------------------------------------------------------------------------------ */

struct cfg_ld {
    struct cfg_box *box;
    const char *name;    /* file name used in error positions */
    const char *basedir; /* relative paths resolve against it; NULL = as written */
    char *err;
    size_t errlen;
    bool failed;
    bool quick;
    struct fy_diag *diag;
    struct fy_node *cur_key; /* the key whose value is being parsed, for empty values */
    char path[512];          /* the dotted key path being parsed, for messages */
    size_t pathlen;
    void *ctx; /* an area's own state while its rows parse (sites: the host index) */
};

/* Appends to the key path ("%s%s" with a "." when not at the start, or "[%zu]"); returns the
 * old length for cfg_path_pop. */
size_t cfg_path_push(struct cfg_ld *ld, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cfg_path_pop(struct cfg_ld *ld, size_t old);

/* The 1-based line and column of <n> (of the key being parsed when <n> is an empty value);
 * 1:1 when unknown. */
void cfg_node_pos(struct cfg_ld *ld, struct fy_node *n, int *line, int *col);

/* Records "NAME:LINE:COL: PATH: message" for <n> (or "moat: PATH: message" in quick mode)
 * unless an error was recorded already: the first error wins, later ones are usually its
 * consequences. Returns MOAT_ERR, so parsers can `return cfg_fail(...)`. */
int cfg_fail(struct cfg_ld *ld, struct fy_node *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int cfg_oom(struct cfg_ld *ld);

/* ------------------------------------------------------------------------------------------
 * Node helpers (engine.c).
 * ------------------------------------------------------------------------------------------ */

/* <n> with an alias resolved (NULL when it cannot be). */
struct fy_node *cfg_deref(struct fy_node *n);
/* YAML's null: an empty plain value, "~" or "null" (and NULL). */
bool cfg_is_null(struct fy_node *n);
/* "nothing", "a map", "a list" or "a single value", for messages. */
const char *cfg_what(struct fy_node *n);
/* Copies scalar <n> into <buf> as a C string; refuses (cfg_fail) non-scalars, NULs and text
 * longer than <bufsz> - 1, naming <want> ("a duration") in the message. */
int cfg_scalar(struct cfg_ld *ld, struct fy_node *n, char *buf, size_t bufsz, const char *want);
/* <key>'s value in <map> (aliases resolved), or NULL. */
struct fy_node *cfg_map_lookup(struct fy_node *map, const char *key);
/* <p> against the config file's directory when relative, copied into the snapshot; NULL when
 * out of memory. */
char *cfg_resolve_path(struct cfg_ld *ld, const char *p);
/* True if <s> is a non-empty HTTP token (RFC 9110 5.6.2). */
bool cfg_is_token(const char *s);
/* Parses scalar <n> as an address (moat_addr_parse_ex), with an error on <n>. */
int cfg_parse_addr_node(struct cfg_ld *ld, struct fy_node *n, struct moat_addr *out, char *host,
                        size_t hostlen, unsigned *port);

/* Iterates a "value or list of values": calls <each> (when not NULL) per element with its
 * node, the key path extended by "[i]" for a list; sets *<count>. An empty list (or no value)
 * is an error unless <allow_empty>. Call once with <each> NULL to count and size. */
typedef int cfg_elem_fn(struct cfg_ld *ld, struct fy_node *n, size_t idx, void *ud);
int cfg_each_string(struct cfg_ld *ld, struct fy_node *n, size_t *count, cfg_elem_fn *each,
                    void *ud, bool allow_empty);

/* ------------------------------------------------------------------------------------------
 * The tables (engine.c walks them; each area file defines its own).
 *
 * A table is the list of keys of one YAML map, one row per key: its name, its type, where the
 * value goes (offset and width in the struct the walker was given), its default written as a
 * user would write it, its range, and its one-line doc. The same rows drive parsing, defaults
 * and the reference in docs/configuration.md (moat_config_keys).
 * ------------------------------------------------------------------------------------------ */

enum cfg_key_type { KT_DURATION, KT_SIZE, KT_UINT, KT_STRING, KT_ENUM, KT_MAP, KT_CUSTOM };

#define K_REQUIRED      0x1u /* must be present */
#define K_REQUIRED_FILE 0x2u /* must be present in a file (not in quick mode) */
#define K_PRESENCE      0x4u /* KT_MAP: absent means "feature off": no defaults applied */

struct cfg_key;
struct cfg_table;
/* Parses <n> (already dereferenced; NULL when the key was given without a value) for <k>
 * into <base>. */
typedef int cfg_key_fn(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base);
/* Runs after a table's keys were parsed, for checks across keys; <map> may be NULL. */
typedef int cfg_post_fn(struct cfg_ld *ld, struct fy_node *map, void *base);

struct cfg_key {
    const char *name;
    enum cfg_key_type type;
    size_t off, width;
    const char *def; /* default as YAML text; NULL = none */
    uint64_t min, max;
    const char *const *names;    /* KT_ENUM: names; the index is the stored value */
    const struct cfg_table *sub; /* KT_MAP, or the element table of a KT_CUSTOM list/map */
    const char *sub_sep;         /* how docs join sub keys: ".", ".*.", "[]." */
    cfg_key_fn *fn;
    const char *tname; /* type name for docs (KT_CUSTOM) */
    unsigned flags;
    const char *doc;
};

struct cfg_table {
    const struct cfg_key *keys;
    size_t n;
    cfg_post_fn *post;
};

#define CFG_AT(type, field) .off = offsetof(type, field), .width = sizeof(((type *)0)->field)
#define CFG_TABLE(k, p)                                                                            \
    {                                                                                              \
        k, MOAT_ARRAY_LEN(k), p                                                                    \
    }
/* The most keys a table may have (the walker keeps per-key state on the stack); tables assert
 * it next to their definition. */
#define CFG_MAX_KEYS 32

#define KiB    1024ull
#define MiB    (1024ull * 1024)
#define DAY_MS 86400000ull

/* The generic map walker: rejects unknown and duplicate keys in document order, then parses
 * each row in table order (so later rows can rely on earlier ones, e.g. sites on pools),
 * applying defaults for absent keys, then runs the table's post check. With <defaults_only>,
 * <map> is ignored and required keys are not enforced (used to fill a struct the caller
 * completes itself). MOAT_OK, or MOAT_ERR with the error recorded in <ld>. */
int cfg_walk(struct cfg_ld *ld, const struct cfg_table *t, struct fy_node *map, void *base,
             bool defaults_only);

/* Parses <s> as a whole number within <k>'s min..max, with an error on <n>. */
int cfg_parse_uint_text(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n,
                        const char *s, uint64_t *v);

/* {"false", "true", NULL}: booleans are KT_ENUM rows over these names. */
extern const char *const cfg_bool_names[];

/* The tables and custom parsers each file offers the others. */
extern const struct cfg_table cfg_root_table;     /* load.c */
extern const struct cfg_table cfg_listen_table;   /* cfg_server.c */
extern const struct cfg_table cfg_admin_table;    /* cfg_server.c */
extern const struct cfg_table cfg_limits_table;   /* cfg_server.c */
extern const struct cfg_table cfg_timeouts_table; /* cfg_server.c */
extern const struct cfg_table cfg_log_table;      /* cfg_server.c */
extern const struct cfg_table cfg_tuning_table;   /* cfg_server.c */
extern const struct cfg_table cfg_cache_table;    /* cfg_cache.c */
extern const struct cfg_table cfg_pool_table;     /* cfg_pools.c */
extern const struct cfg_table cfg_origin_table;   /* cfg_pools.c */
extern const struct cfg_table cfg_site_table;     /* cfg_sites.c */
extern const struct cfg_table cfg_tls_table;      /* cfg_tls.c */
extern const struct cfg_table cfg_http2_table;    /* cfg_http2.c */
extern const struct cfg_table cfg_pool_tls_table; /* cfg_tls.c */
extern const struct cfg_table cfg_acme_table;     /* cfg_acme.c */

cfg_key_fn cfg_k_listen, cfg_k_workers, cfg_k_demo_origin, cfg_k_trusted, cfg_k_forward,
    cfg_k_via;             /* cfg_server.c */
cfg_key_fn cfg_k_pools;    /* cfg_pools.c */
cfg_key_fn cfg_k_monitors, cfg_k_lbs, cfg_k_pool_monitor, cfg_k_hash_key,
    cfg_k_site_lb;         /* cfg_lb.c */
extern const struct cfg_table cfg_monitor_table;   /* cfg_lb.c */
extern const struct cfg_table cfg_lb_table;        /* cfg_lb.c */
extern const struct cfg_table cfg_pool_queue_table;   /* cfg_lb.c */
extern const struct cfg_table cfg_pool_passive_table; /* cfg_lb.c */
extern const char *const cfg_balance_names[];      /* cfg_lb.c */
extern const struct cfg_table cfg_pool_autoscale_table; /* cfg_lb.c */
extern const struct cfg_table cfg_site_wroom_table;     /* cfg_lb.c */
cfg_key_fn cfg_k_autoscale_exec;                    /* cfg_lb.c */
cfg_key_fn cfg_k_sites;    /* cfg_sites.c */
cfg_key_fn cfg_k_pool_tls; /* cfg_tls.c */
cfg_key_fn cfg_k_site_tls; /* cfg_acme.c */
cfg_key_fn cfg_k_rule_path, cfg_k_rule_methods, cfg_k_rule_header,
    cfg_k_rule_cookie;            /* cfg_sites.c: rules[].match rows, shared with the shield */
cfg_key_fn cfg_k_challenge_exempt; /* cfg_shield.c */
extern const char *const cfg_under_attack_names[]; /* cfg_shield.c */
extern const struct cfg_table cfg_shield_table;    /* cfg_shield.c */

/* Sets <o>'s host and authority (the Host value for host_header: origin) from <host> and
 * <port>, leaving out <default_port> (80 for http, 443 for https) (cfg_pools.c). */
int cfg_fill_origin_names(struct cfg_ld *ld, struct moat_cfg_origin *o, const char *host,
                          unsigned port, unsigned default_port);

/* Turns TLS to a pool's origins on with every pools.*.tls default (verify, the system
 * store): what `tls: true` and an https:// quick-mode origin mean (cfg_tls.c). */
int cfg_pool_tls_on(struct cfg_ld *ld, struct moat_cfg_pool_tls *t);

#endif
