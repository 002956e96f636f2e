/* config.c: YAML to a typed, validated, immutable snapshot, driven by one table per map. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libfyaml.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config-int.h"

/* ------------------------------------------------------------------------------------------
 * The snapshot's memory.
 *
 * Everything a snapshot owns lives in one arena of chunks that is freed in one go. That makes
 * release trivially complete and makes every error path leak-free by construction: a failed
 * load frees the arena it had started, whatever it had allocated. The cost is that nothing
 * inside a snapshot can be freed on its own, which is what immutability asks for anyway.
 * ------------------------------------------------------------------------------------------ */

struct chunk {
    struct chunk *next;
    size_t used, cap;
    max_align_t data[];
};

/* The site lookup index: exact names and "*.suffix" names (stored as ".suffix"), each sorted
 * for binary search. line/col/site are kept for the duplicate check at load time. */
struct host_ent {
    const char *name;
    size_t len;
    const struct moat_cfg_site *site;
    int line, col;
    size_t site_idx;
};

/* The public struct sits inside a private box that holds what callers must not see. */
struct cfg_box {
    struct chunk *chunks;
    struct host_ent *exact, *suffix;
    size_t nexact, nsuffix;
    const struct moat_cfg_site *star;
    struct moat_config cfg;
};

static struct cfg_box *box_of(const struct moat_config *c)
{
    return MOAT_CONTAINER_OF(c, struct cfg_box, cfg);
}

static void *arena_alloc(struct cfg_box *b, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    if (n == 0)
        n = sizeof(max_align_t);
    struct chunk *c = b->chunks;
    if (!c || c->cap - c->used < n) {
        size_t cap = MOAT_MAX(n, (size_t)4096);
        c = malloc(sizeof(*c) + cap);
        if (!c)
            return NULL;
        c->cap = cap;
        c->used = 0;
        c->next = b->chunks;
        b->chunks = c;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

static char *arena_strndup(struct cfg_box *b, const char *s, size_t n)
{
    char *p = arena_alloc(b, n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static void box_free(struct cfg_box *b)
{
    if (!b)
        return;
    for (struct chunk *c = b->chunks, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(b);
}

/* ------------------------------------------------------------------------------------------
 * Load context, key paths and error reporting.
 * ------------------------------------------------------------------------------------------ */

struct ld {
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
};

static size_t path_push(struct ld *ld, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static size_t path_push(struct ld *ld, const char *fmt, ...)
{
    size_t old = ld->pathlen;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(ld->path + old, sizeof(ld->path) - old, fmt, ap);
    va_end(ap);
    if (n > 0)
        ld->pathlen = MOAT_MIN(old + (size_t)n, sizeof(ld->path) - 1);
    return old;
}

static void path_pop(struct ld *ld, size_t old)
{
    ld->pathlen = old;
    ld->path[old] = '\0';
}

/* libfyaml 0.7 exports no node start mark, but it does compute one when it reports about a
 * node. With the diagnostic object in collect mode, reporting an empty note and reading the
 * collected entry back gives the node's 1-based line and column without any output. Only
 * error paths and the duplicate-host check pay for this. */
static void node_pos(struct ld *ld, struct fy_node *n, int *line, int *col)
{
    *line = *col = 1;
    /* A key given without a value ("via:") has an empty scalar without a token and so
     * without a position: point at the key instead. */
    if (n && fy_node_get_type(n) == FYNT_SCALAR && !fy_node_get_scalar_token(n))
        n = ld->cur_key;
    if (!n || !ld->diag)
        return;
    fy_diag_reset_error(ld->diag);
    fy_diag_node_report(ld->diag, n, FYET_ERROR, "%s", "position");
    void *it = NULL;
    struct fy_diag_error *e, *last = NULL;
    while ((e = fy_diag_errors_iterate(ld->diag, &it)) != NULL)
        last = e;
    if (last && last->line > 0 && last->column > 0) {
        *line = last->line;
        *col = last->column;
    }
    fy_diag_reset_error(ld->diag);
    /* libfyaml marks a quoted scalar at its first character; the node starts at the quote,
     * which is always right before it. */
    enum fy_node_style st = fy_node_get_style(n);
    if ((st == FYNS_SINGLE_QUOTED || st == FYNS_DOUBLE_QUOTED) && *col > 1)
        (*col)--;
}

/* Records the first error only: later ones are usually consequences of it. */
static int fail(struct ld *ld, struct fy_node *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct ld *ld, struct fy_node *n, const char *fmt, ...)
{
    if (ld->failed)
        return MOAT_ERR;
    ld->failed = true;
    char msg[MOAT_CONFIG_ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    const char *sep = ld->pathlen ? ": " : "";
    if (ld->quick || !ld->name) {
        snprintf(ld->err, ld->errlen, "moat: %s%s%s", ld->path, sep, msg);
    } else {
        int line, col;
        node_pos(ld, n, &line, &col);
        snprintf(ld->err, ld->errlen, "%s:%d:%d: %s%s%s", ld->name, line, col, ld->path, sep, msg);
    }
    return MOAT_ERR;
}

static int oom(struct ld *ld)
{
    return fail(ld, NULL, "out of memory");
}

/* ------------------------------------------------------------------------------------------
 * Node helpers.
 * ------------------------------------------------------------------------------------------ */

static struct fy_node *deref(struct fy_node *n)
{
    if (n && fy_node_is_alias(n))
        return fy_node_resolve_alias(n);
    return n;
}

/* YAML's null: an empty plain value, "~" or "null". */
static bool is_null(struct fy_node *n)
{
    if (!n)
        return true;
    if (fy_node_get_type(n) != FYNT_SCALAR || fy_node_get_style(n) != FYNS_PLAIN)
        return false;
    size_t len;
    const char *s = fy_node_get_scalar(n, &len);
    return len == 0 || (len == 1 && s[0] == '~') ||
           (len == 4 && (!memcmp(s, "null", 4) || !memcmp(s, "Null", 4) || !memcmp(s, "NULL", 4)));
}

static const char *what(struct fy_node *n)
{
    if (is_null(n))
        return "nothing";
    switch (fy_node_get_type(n)) {
    case FYNT_MAPPING:
        return "a map";
    case FYNT_SEQUENCE:
        return "a list";
    default:
        return "a single value";
    }
}

/* Copies scalar <n> into <buf> as a C string. Refuses non-scalars, embedded NULs and text
 * longer than the buffer, each with a message naming what was found. */
static int scalar(struct ld *ld, struct fy_node *n, char *buf, size_t bufsz, const char *want)
{
    if (!n || fy_node_get_type(n) != FYNT_SCALAR || is_null(n))
        return fail(ld, n, "expected %s, got %s", want, what(n));
    size_t len;
    const char *s = fy_node_get_scalar(n, &len);
    if (!s || len >= bufsz)
        return fail(ld, n, "value too long (at most %zu bytes)", bufsz - 1);
    if (memchr(s, '\0', len))
        return fail(ld, n, "value contains a NUL byte");
    memcpy(buf, s, len);
    buf[len] = '\0';
    return MOAT_OK;
}

/* Finds <key>'s value in <map> by plain comparison (libfyaml's lookup would parse <key> as
 * YAML first). */
static struct fy_node *map_lookup(struct fy_node *map, const char *key)
{
    if (!map || fy_node_get_type(map) != FYNT_MAPPING)
        return NULL;
    void *it = NULL;
    struct fy_node_pair *p;
    size_t kl = strlen(key);
    while ((p = fy_node_mapping_iterate(map, &it)) != NULL) {
        struct fy_node *kn = deref(fy_node_pair_key(p));
        size_t len;
        const char *s =
            kn && fy_node_get_type(kn) == FYNT_SCALAR ? fy_node_get_scalar(kn, &len) : NULL;
        if (s && len == kl && memcmp(s, key, kl) == 0)
            return deref(fy_node_pair_value(p));
    }
    return NULL;
}

static void store_uint(void *p, size_t width, uint64_t v)
{
    switch (width) {
    case 1: {
        uint8_t x = (uint8_t)v;
        memcpy(p, &x, 1);
        break;
    }
    case 2: {
        uint16_t x = (uint16_t)v;
        memcpy(p, &x, 2);
        break;
    }
    case 4: {
        uint32_t x = (uint32_t)v;
        memcpy(p, &x, 4);
        break;
    }
    default:
        memcpy(p, &v, 8);
        break;
    }
}

/* "500ms", "90s", "5m", "1h", "1d": the largest unit that divides evenly. */
static void fmt_duration(char *buf, size_t n, uint64_t ms)
{
    static const struct {
        const char *u;
        uint64_t ms;
    } u[] = {{"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(u); i++)
        if (ms && ms % u[i].ms == 0) {
            snprintf(buf, n, "%llu%s", (unsigned long long)(ms / u[i].ms), u[i].u);
            return;
        }
    snprintf(buf, n, "%llums", (unsigned long long)ms);
}

static void fmt_size(char *buf, size_t n, uint64_t v)
{
    static const char *u[] = {"TiB", "GiB", "MiB", "KiB"};
    for (size_t i = 0; i < MOAT_ARRAY_LEN(u); i++) {
        uint64_t m = (uint64_t)1 << (10 * (4 - i));
        if (v && v % m == 0) {
            snprintf(buf, n, "%llu%s", (unsigned long long)(v / m), u[i]);
            return;
        }
    }
    snprintf(buf, n, "%llu", (unsigned long long)v);
}

/* Relative paths in a config file resolve against the file's directory, so a config and its
 * token file can move together; from a string (tests, quick mode) they stay as written. */
static char *resolve_path(struct ld *ld, const char *p)
{
    if (p[0] == '/' || !ld->basedir) {
        return arena_strndup(ld->box, p, strlen(p));
    }
    size_t n = strlen(ld->basedir) + 1 + strlen(p);
    char *out = arena_alloc(ld->box, n + 1);
    if (out)
        snprintf(out, n + 1, "%s/%s", ld->basedir, p);
    return out;
}

/* ------------------------------------------------------------------------------------------
 * The tables.
 * ------------------------------------------------------------------------------------------ */

enum key_type { KT_DURATION, KT_SIZE, KT_UINT, KT_STRING, KT_ENUM, KT_MAP, KT_CUSTOM };

#define K_REQUIRED      0x1u /* must be present */
#define K_REQUIRED_FILE 0x2u /* must be present in a file (not in quick mode) */
#define K_PRESENCE      0x4u /* KT_MAP: absent means "feature off": no defaults applied */

struct key;
struct table;
/* Parses <n> (already dereferenced; NULL when the key was given without a value) for <k>
 * into <base>. */
typedef int key_fn(struct ld *ld, const struct key *k, struct fy_node *n, void *base);
/* Runs after a table's keys were parsed, for checks across keys; <map> may be NULL. */
typedef int table_post_fn(struct ld *ld, struct fy_node *map, void *base);

struct key {
    const char *name;
    enum key_type type;
    size_t off, width;
    const char *def; /* default as YAML text; NULL = none */
    uint64_t min, max;
    const char *const *names; /* KT_ENUM: names; the index is the stored value */
    const struct table *sub;  /* KT_MAP, or the element table of a KT_CUSTOM list/map */
    const char *sub_sep;      /* how docs join sub keys: ".", ".*.", "[]." */
    key_fn *fn;
    const char *tname; /* type name for docs (KT_CUSTOM) */
    unsigned flags;
    const char *doc;
};

struct table {
    const struct key *keys;
    size_t n;
    table_post_fn *post;
};

#define AT(type, field) .off = offsetof(type, field), .width = sizeof(((type *)0)->field)
#define TABLE(k, p)                                                                                \
    {                                                                                              \
        k, MOAT_ARRAY_LEN(k), p                                                                    \
    }
#define MAX_KEYS 16

static int walk(struct ld *ld, const struct table *t, struct fy_node *map, void *base,
                bool defaults_only);

/* --- value parsers for the generic types ------------------------------------------------ */

static int parse_uint_text(struct ld *ld, const struct key *k, struct fy_node *n, const char *s,
                           uint64_t *v)
{
    const char *p = s;
    uint64_t x = 0;
    bool ok = isdigit((unsigned char)*p);
    for (; ok && isdigit((unsigned char)*p); p++) {
        if (x > (UINT64_MAX - 9) / 10) {
            ok = false;
            break;
        }
        x = x * 10 + (uint64_t)(*p - '0');
    }
    if (!ok || *p || x < k->min || x > k->max)
        return fail(ld, n, "\"%s\" is not a whole number from %llu to %llu", s,
                    (unsigned long long)k->min, (unsigned long long)k->max);
    *v = x;
    return MOAT_OK;
}

static int parse_value(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    char buf[4096], lo[32], hi[32];
    uint64_t v;
    void *field = (char *)base + k->off;

    switch (k->type) {
    case KT_MAP:
        return walk(ld, k->sub, n, base, false);
    case KT_CUSTOM:
        return k->fn(ld, k, n, base);
    case KT_DURATION:
        if (scalar(ld, n, buf, sizeof(buf), "a duration") != MOAT_OK)
            return MOAT_ERR;
        if (moat_parse_duration_ms(buf, &v) != MOAT_OK)
            return fail(ld, n, "\"%s\" is not a duration (use e.g. 500ms, 10s, 5m)", buf);
        if (v < k->min || v > k->max) {
            fmt_duration(lo, sizeof(lo), k->min);
            fmt_duration(hi, sizeof(hi), k->max);
            return fail(ld, n, "%s is out of range (%s to %s)", buf, k->min ? lo : "0", hi);
        }
        store_uint(field, k->width, v);
        return MOAT_OK;
    case KT_SIZE:
        if (scalar(ld, n, buf, sizeof(buf), "a size") != MOAT_OK)
            return MOAT_ERR;
        if (moat_parse_size(buf, &v) != MOAT_OK)
            return fail(ld, n, "\"%s\" is not a size (use e.g. 512, 16KiB, 8MiB)", buf);
        if (v < k->min || v > k->max) {
            fmt_size(lo, sizeof(lo), k->min);
            fmt_size(hi, sizeof(hi), k->max);
            return fail(ld, n, "%s is out of range (%s to %s)", buf, lo, hi);
        }
        store_uint(field, k->width, v);
        return MOAT_OK;
    case KT_UINT:
        if (scalar(ld, n, buf, sizeof(buf), "a whole number") != MOAT_OK)
            return MOAT_ERR;
        if (parse_uint_text(ld, k, n, buf, &v) != MOAT_OK)
            return MOAT_ERR;
        store_uint(field, k->width, v);
        return MOAT_OK;
    case KT_STRING: {
        if (scalar(ld, n, buf, sizeof(buf), "a string") != MOAT_OK)
            return MOAT_ERR;
        char *s = arena_strndup(ld->box, buf, strlen(buf));
        if (!s)
            return oom(ld);
        memcpy(field, &s, sizeof(s));
        return MOAT_OK;
    }
    case KT_ENUM: {
        if (scalar(ld, n, buf, sizeof(buf), "one of the listed words") != MOAT_OK)
            return MOAT_ERR;
        char list[256];
        size_t used = 0;
        for (size_t i = 0; k->names[i]; i++) {
            if (strcmp(buf, k->names[i]) == 0) {
                store_uint(field, k->width, i);
                return MOAT_OK;
            }
            used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%s", i ? ", " : "",
                                     k->names[i]);
            used = MOAT_MIN(used, sizeof(list) - 1);
        }
        return fail(ld, n, "\"%s\" is not one of: %s", buf, list);
    }
    }
    return MOAT_ERR;
}

/* Builds a one-node document from default text <def> and parses it like user input, so a
 * default is spelled exactly as a user would write it and shown as such in the docs. */
static int apply_default(struct ld *ld, const struct key *k, void *base)
{
    struct fy_parse_cfg pc = {.flags = FYPCF_QUIET, .diag = ld->diag};
    struct fy_document *d = fy_document_build_from_string(&pc, k->def, strlen(k->def));
    if (!d)
        return fail(ld, NULL, "internal error: bad default \"%s\"", k->def);
    int rc = parse_value(ld, k, deref(fy_document_root(d)), base);
    fy_document_destroy(d);
    return rc;
}

/* Edit distance for "did you mean" hints; keys are short, so the O(n*m) table is cheap. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[64];
    if (la >= 63 || lb >= 63)
        return 99;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            row[j] = MOAT_MIN(MOAT_MIN(row[j] + 1, row[j - 1] + 1), diag + cost);
            diag = up;
        }
    }
    return row[lb];
}

static int unknown_key(struct ld *ld, const struct table *t, struct fy_node *kn, const char *name)
{
    if (strcmp(name, "<<") == 0)
        return fail(ld, kn, "merge keys (<<) are not supported; repeat the keys instead");
    size_t best = 99, bi = 0;
    for (size_t i = 0; i < t->n; i++) {
        size_t d = edit_distance(name, t->keys[i].name);
        if (d < best) {
            best = d;
            bi = i;
        }
    }
    size_t old = path_push(ld, "%s%s", ld->pathlen ? "." : "", name);
    int rc;
    if (best <= 2 && best < strlen(name)) {
        rc = fail(ld, kn, "unknown key (did you mean \"%s\"?)", t->keys[bi].name);
    } else {
        char list[384];
        size_t used = 0;
        for (size_t i = 0; i < t->n; i++) {
            used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%s", i ? ", " : "",
                                     t->keys[i].name);
            used = MOAT_MIN(used, sizeof(list) - 1);
        }
        rc = fail(ld, kn, "unknown key (known here: %s)", list);
    }
    path_pop(ld, old);
    return rc;
}

/* The generic map walker: rejects unknown and duplicate keys in document order, then parses
 * each row in table order (so later rows can rely on earlier ones, e.g. sites on pools),
 * applying defaults for absent keys. With <defaults_only>, <map> is ignored and required keys
 * are not enforced (used to fill a struct the caller completes itself). */
static int walk(struct ld *ld, const struct table *t, struct fy_node *map, void *base,
                bool defaults_only)
{
    struct fy_node *keyn[MAX_KEYS] = {0}, *valn[MAX_KEYS] = {0};
    bool present[MAX_KEYS] = {0};
    struct fy_node *at = defaults_only ? NULL : map; /* where "missing key" errors point */

    if (defaults_only || is_null(map))
        map = NULL;
    if (map && fy_node_get_type(map) != FYNT_MAPPING)
        return fail(ld, map, "expected a map of keys, got %s", what(map));
    if (map) {
        void *it = NULL;
        struct fy_node_pair *p;
        while ((p = fy_node_mapping_iterate(map, &it)) != NULL) {
            struct fy_node *kn = deref(fy_node_pair_key(p));
            char name[128];
            if (scalar(ld, kn, name, sizeof(name), "a key name") != MOAT_OK)
                return MOAT_ERR;
            size_t i;
            for (i = 0; i < t->n; i++)
                if (strcmp(name, t->keys[i].name) == 0)
                    break;
            if (i == t->n)
                return unknown_key(ld, t, kn, name);
            if (present[i]) {
                int l, c;
                node_pos(ld, keyn[i], &l, &c);
                size_t old = path_push(ld, "%s%s", ld->pathlen ? "." : "", name);
                fail(ld, kn, "duplicate key (first given at line %d, column %d)", l, c);
                path_pop(ld, old);
                return MOAT_ERR;
            }
            present[i] = true;
            keyn[i] = kn;
            struct fy_node *raw = fy_node_pair_value(p);
            valn[i] = deref(raw);
            if (raw && !valn[i])
                return fail(ld, raw, "the alias cannot be resolved");
        }
    }

    for (size_t i = 0; i < t->n; i++) {
        const struct key *k = &t->keys[i];
        size_t old = path_push(ld, "%s%s", ld->pathlen ? "." : "", k->name);
        int rc = MOAT_OK;
        if (present[i]) {
            /* A key without a value ("admin:") points errors at the key itself. */
            struct fy_node *v = valn[i] ? valn[i] : keyn[i];
            ld->cur_key = keyn[i];
            if (k->type == KT_MAP)
                rc = walk(ld, k->sub, v, base, false);
            else if (is_null(valn[i]))
                rc = fail(ld, v, "no value given");
            else
                rc = parse_value(ld, k, v, base);
        } else if (!defaults_only &&
                   ((k->flags & K_REQUIRED) || ((k->flags & K_REQUIRED_FILE) && !ld->quick))) {
            rc = fail(ld, at, "required key is missing");
        } else if ((k->flags & K_PRESENCE) == 0 && k->def) {
            rc = apply_default(ld, k, base);
        } else if (k->type == KT_MAP && (k->flags & K_PRESENCE) == 0) {
            rc = walk(ld, k->sub, NULL, base, defaults_only);
        }
        path_pop(ld, old);
        if (rc != MOAT_OK)
            return rc;
    }
    if (t->post && !defaults_only)
        return t->post(ld, map ? map : at, base);
    return MOAT_OK;
}

/* --- custom parsers ----------------------------------------------------------------------- */

/* Iterates a "string or list of strings" value: calls <each> per element with its node. */
typedef int elem_fn(struct ld *ld, struct fy_node *n, size_t idx, void *ud);
static int each_string(struct ld *ld, struct fy_node *n, size_t *count, elem_fn *each, void *ud,
                       bool allow_empty)
{
    if (is_null(n)) {
        if (!allow_empty)
            return fail(ld, n, "expected a value or a list, got nothing");
        *count = 0;
        return MOAT_OK;
    }
    if (fy_node_get_type(n) == FYNT_SCALAR) {
        *count = 1;
        return each ? each(ld, n, 0, ud) : MOAT_OK;
    }
    if (fy_node_get_type(n) != FYNT_SEQUENCE)
        return fail(ld, n, "expected a value or a list of values, got %s", what(n));
    size_t cnt = (size_t)MOAT_MAX(fy_node_sequence_item_count(n), 0);
    if (cnt == 0 && !allow_empty)
        return fail(ld, n, "the list must not be empty");
    *count = cnt;
    if (!each)
        return MOAT_OK;
    void *it = NULL;
    struct fy_node *e;
    size_t i = 0;
    while ((e = fy_node_sequence_iterate(n, &it)) != NULL) {
        size_t old = path_push(ld, "[%zu]", i);
        int rc = each(ld, deref(e), i, ud);
        path_pop(ld, old);
        if (rc != MOAT_OK)
            return rc;
        i++;
    }
    return MOAT_OK;
}

static int parse_addr_node(struct ld *ld, struct fy_node *n, struct moat_addr *out, char *host,
                           size_t hostlen, unsigned *port)
{
    char buf[300], msg[256];
    if (scalar(ld, n, buf, sizeof(buf), "an address (HOST:PORT)") != MOAT_OK)
        return MOAT_ERR;
    if (moat_addr_parse_ex(buf, out, host, hostlen, port, msg, sizeof(msg)) != MOAT_OK)
        return fail(ld, n, "%s", msg);
    return MOAT_OK;
}

static int listen_elem(struct ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    struct moat_config *c = ud;
    if (parse_addr_node(ld, n, &c->listen[idx].addr, NULL, 0, NULL) != MOAT_OK)
        return MOAT_ERR;
    for (size_t i = 0; i < idx; i++)
        if (strcmp(c->listen[i].addr.text, c->listen[idx].addr.text) == 0)
            return fail(ld, n, "%s is listed twice", c->listen[idx].addr.text);
    return MOAT_OK;
}

static int k_listen(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    size_t cnt;
    if (each_string(ld, n, &cnt, NULL, NULL, false) != MOAT_OK)
        return MOAT_ERR;
    c->listen = arena_alloc(ld->box, cnt * sizeof(*c->listen));
    if (!c->listen)
        return oom(ld);
    c->nlisten = cnt;
    return each_string(ld, n, &cnt, listen_elem, c, false);
}

static int k_workers(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    char buf[64];
    if (scalar(ld, n, buf, sizeof(buf), "auto or a number of workers") != MOAT_OK)
        return MOAT_ERR;
    if (strcmp(buf, "auto") == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        c->workers = (unsigned)(cpus < 1 ? 1 : cpus > 256 ? 256 : cpus);
        return MOAT_OK;
    }
    uint64_t v;
    if (parse_uint_text(ld, k, n, buf, &v) != MOAT_OK)
        return MOAT_ERR;
    c->workers = (unsigned)v;
    return MOAT_OK;
}

static int k_demo_origin(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    if (parse_addr_node(ld, n, &c->demo.listen, NULL, 0, NULL) != MOAT_OK)
        return MOAT_ERR;
    c->demo.enabled = true;
    return MOAT_OK;
}

static int k_admin_listen(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    return parse_addr_node(ld, n, &c->admin.listen, NULL, 0, NULL);
}

/* The token is read at load time so that a missing or empty token file fails the load (and a
 * reload keeps the old config) instead of failing every admin request later. */
static int k_token_file(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    char buf[1024], tok[4097];
    if (scalar(ld, n, buf, sizeof(buf), "a file path") != MOAT_OK)
        return MOAT_ERR;
    char *path = resolve_path(ld, buf);
    if (!path)
        return oom(ld);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(ld, n, "cannot read \"%s\": %s", path, strerror(errno));
    ssize_t got = read(fd, tok, sizeof(tok) - 1);
    int e = errno;
    close(fd);
    if (got < 0)
        return fail(ld, n, "cannot read \"%s\": %s", path, strerror(e));
    if ((size_t)got == sizeof(tok) - 1)
        return fail(ld, n, "\"%s\" is too large for a token (at most 4096 bytes)", path);
    size_t len = (size_t)got;
    while (len && isspace((unsigned char)tok[len - 1]))
        len--;
    if (len == 0)
        return fail(ld, n, "\"%s\" is empty; put the bearer token in it", path);
    for (size_t i = 0; i < len; i++)
        if (tok[i] <= ' ' || tok[i] == 0x7f)
            return fail(ld, n, "the token in \"%s\" contains a space or control byte", path);
    c->admin.token = arena_strndup(ld->box, tok, len);
    return c->admin.token ? MOAT_OK : oom(ld);
}

static int admin_post(struct ld *ld, struct fy_node *map, void *base)
{
    struct moat_config *c = base;
    c->admin.enabled = true;
    if (!c->admin.token && !moat_addr_is_loopback(&c->admin.listen)) {
        struct fy_node *ln = map_lookup(map, "listen");
        size_t old = path_push(ld, ".listen");
        fail(ld, ln ? ln : map,
             "%s is not a loopback address, so the admin API needs a token: set "
             "admin.token_file",
             c->admin.listen.text);
        path_pop(ld, old);
        return MOAT_ERR;
    }
    return MOAT_OK;
}

static int limits_post(struct ld *ld, struct fy_node *map, void *base)
{
    struct moat_config *c = base;
    if (c->h1.request_line > c->h1.head_bytes) {
        struct fy_node *n = map_lookup(map, "request_line");
        size_t old = path_push(ld, ".request_line");
        fail(ld, n ? n : map, "must not exceed limits.header_bytes (%zu > %zu)", c->h1.request_line,
             c->h1.head_bytes);
        path_pop(ld, old);
        return MOAT_ERR;
    }
    return MOAT_OK;
}

static int trusted_elem(struct ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    struct moat_config *c = ud;
    char buf[128], msg[256];
    if (scalar(ld, n, buf, sizeof(buf), "a CIDR block") != MOAT_OK)
        return MOAT_ERR;
    if (moat_cidr_parse(buf, &c->trusted[idx], msg, sizeof(msg)) != MOAT_OK)
        return fail(ld, n, "%s", msg);
    return MOAT_OK;
}

static int k_trusted(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    size_t cnt;
    if (each_string(ld, n, &cnt, NULL, NULL, true) != MOAT_OK)
        return MOAT_ERR;
    if (cnt) {
        c->trusted = arena_alloc(ld->box, cnt * sizeof(*c->trusted));
        if (!c->trusted)
            return oom(ld);
    }
    c->ntrusted = cnt;
    return each_string(ld, n, &cnt, trusted_elem, c, true);
}

static int forward_elem(struct ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    static const struct {
        const char *name;
        unsigned bit;
    } fields[] = {{"x-forwarded-for", MOAT_FWD_XFF},
                  {"x-forwarded-proto", MOAT_FWD_XFP},
                  {"forwarded", MOAT_FWD_FORWARDED}};
    struct moat_config *c = ud;
    char buf[64];
    if (scalar(ld, n, buf, sizeof(buf), "a header name") != MOAT_OK)
        return MOAT_ERR;
    if (!strcasecmp(buf, "via"))
        return fail(ld, n, "Via is always sent (RFC 9110 7.6.3); `via:` names moat in it");
    for (size_t i = 0; i < MOAT_ARRAY_LEN(fields); i++) {
        if (strcasecmp(buf, fields[i].name))
            continue;
        if (c->fwd_fields & fields[i].bit)
            return fail(ld, n, "\"%s\" is listed twice", buf);
        c->fwd_fields |= fields[i].bit;
        return MOAT_OK;
    }
    return fail(ld, n,
                "unknown forwarding header \"%s\" (expected x-forwarded-for, "
                "x-forwarded-proto or forwarded)",
                buf);
}

static int k_forward(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    size_t cnt;
    c->fwd_fields = 0;
    return each_string(ld, n, &cnt, forward_elem, c, true);
}

/* A token (RFC 9110 5.6.2): what a header field name, a cookie name or Via's pseudonym must
 * be to go on the wire as is. */
static bool is_token(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s))
            return false;
    return true;
}

/* Via's pseudonym goes into a header as is, so it must be a token. */
static int k_via(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    char buf[65];
    if (scalar(ld, n, buf, sizeof(buf), "a name") != MOAT_OK)
        return MOAT_ERR;
    if (!is_token(buf))
        return fail(ld, n, "\"%s\" must be a single word (letters, digits, -._)", buf);
    c->via_name = arena_strndup(ld->box, buf, strlen(buf));
    return c->via_name ? MOAT_OK : oom(ld);
}

static int log_target(struct ld *ld, struct fy_node *n, char **out, bool allow_off)
{
    char buf[1024];
    if (scalar(ld, n, buf, sizeof(buf), "a file path, stderr or stdout") != MOAT_OK)
        return MOAT_ERR;
    if (strcmp(buf, "off") == 0) {
        if (!allow_off)
            return fail(ld, n, "the error log cannot be turned off (use stderr or a path)");
        *out = NULL;
        return MOAT_OK;
    }
    if (strcmp(buf, "stderr") == 0 || strcmp(buf, "stdout") == 0)
        *out = arena_strndup(ld->box, buf, strlen(buf));
    else
        *out = resolve_path(ld, buf);
    return *out ? MOAT_OK : oom(ld);
}

static int k_access_log(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    return log_target(ld, n, &((struct moat_config *)base)->access_log, true);
}

static int k_error_log(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    return log_target(ld, n, &((struct moat_config *)base)->error_log, false);
}

/* --- pools and origins -------------------------------------------------------------------- */

/* Host and authority are kept ready-made for the Host header (host_header: origin). */
static int fill_origin_names(struct ld *ld, struct moat_cfg_origin *o, const char *host,
                             unsigned port)
{
    char auth[320];
    if (port == 80)
        snprintf(auth, sizeof(auth), "%s", host);
    else
        snprintf(auth, sizeof(auth), "%s:%u", host, port);
    o->host = arena_strndup(ld->box, host, strlen(host));
    o->authority = arena_strndup(ld->box, auth, strlen(auth));
    return o->host && o->authority ? MOAT_OK : oom(ld);
}

static int set_origin_addr(struct ld *ld, struct fy_node *n, struct moat_cfg_origin *o)
{
    char host[300];
    unsigned port;
    if (parse_addr_node(ld, n, &o->addr, host, sizeof(host), &port) != MOAT_OK)
        return MOAT_ERR;
    return fill_origin_names(ld, o, host, port);
}

static int k_origin_addr(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    return set_origin_addr(ld, n, base);
}

static const struct key origin_keys[] = {
    {.name = "addr",
     .type = KT_CUSTOM,
     .fn = k_origin_addr,
     .tname = "address",
     .flags = K_REQUIRED,
     .doc = "HOST:PORT of the origin (required); names resolve at load"},
    {.name = "weight",
     .type = KT_UINT,
     AT(struct moat_cfg_origin, weight),
     .def = "1",
     .min = 1,
     .max = 1000,
     .doc = "share of requests relative to the pool's other origins"},
};
static const struct table origin_table = TABLE(origin_keys, NULL);

static int origin_elem(struct ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    struct moat_cfg_pool *p = ud;
    struct moat_cfg_origin *o = &p->origins[idx];
    if (fy_node_get_type(n) == FYNT_MAPPING)
        return walk(ld, &origin_table, n, o, false);
    if (fy_node_get_type(n) != FYNT_SCALAR || is_null(n))
        return fail(ld, n, "expected \"HOST:PORT\" or { addr: HOST:PORT, weight: N }, got %s",
                    what(n));
    if (walk(ld, &origin_table, NULL, o, true) != MOAT_OK)
        return MOAT_ERR;
    return set_origin_addr(ld, n, o);
}

static int k_origins(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_pool *p = base;
    if (is_null(n) || fy_node_get_type(n) != FYNT_SEQUENCE)
        return fail(ld, n, "expected a list of origins, got %s", what(n));
    size_t cnt;
    if (each_string(ld, n, &cnt, NULL, NULL, false) != MOAT_OK)
        return MOAT_ERR;
    p->origins = arena_alloc(ld->box, cnt * sizeof(*p->origins));
    if (!p->origins)
        return oom(ld);
    p->norigins = cnt;
    return each_string(ld, n, &cnt, origin_elem, p, false);
}

static const char *const host_header_names[] = {"client", "origin", NULL};

static const struct key pool_keys[] = {
    {.name = "origins",
     .type = KT_CUSTOM,
     .fn = k_origins,
     .sub = &origin_table,
     .sub_sep = "[].",
     .tname = "list of address or {addr, weight}",
     .flags = K_REQUIRED,
     .doc = "the origins of the pool (required, not empty)"},
    {.name = "keepalive",
     .type = KT_UINT,
     AT(struct moat_cfg_pool, keepalive),
     .def = "256",
     .min = 0,
     .max = 10000,
     .doc = "idle connections kept per origin per worker"},
    {.name = "connect_timeout",
     .type = KT_DURATION,
     AT(struct moat_cfg_pool, connect_timeout_ms),
     .def = "5s",
     .min = 1,
     .max = 86400000,
     .doc = "time to establish a connection"},
    {.name = "first_byte_timeout",
     .type = KT_DURATION,
     AT(struct moat_cfg_pool, first_byte_timeout_ms),
     .def = "60s",
     .min = 1,
     .max = 86400000,
     .doc = "request sent to response head received"},
    {.name = "idle_timeout",
     .type = KT_DURATION,
     AT(struct moat_cfg_pool, idle_timeout_ms),
     .def = "60s",
     .min = 1,
     .max = 86400000,
     .doc = "no bytes either way while a body is in flight"},
    {.name = "keepalive_timeout",
     .type = KT_DURATION,
     AT(struct moat_cfg_pool, keepalive_timeout_ms),
     .def = "30s",
     .min = 1,
     .max = 86400000,
     .doc = "how long an idle pooled connection is kept"},
    {.name = "host_header",
     .type = KT_ENUM,
     AT(struct moat_cfg_pool, host_from_origin),
     .def = "client",
     .names = host_header_names,
     .doc = "Host sent upstream: the client's (client) or the origin's host (origin)"},
};
static const struct table pool_table = TABLE(pool_keys, NULL);

/* Pool names key runtime state (health, counters) across reloads and appear in metrics, so
 * they are restricted to a safe, stable alphabet. */
static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-' && s[i] != '.')
            return false;
    return true;
}

static int k_pools(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    if (is_null(n))
        return MOAT_OK;
    if (fy_node_get_type(n) != FYNT_MAPPING)
        return fail(ld, n, "expected a map of pool names to pools, got %s", what(n));
    size_t cnt = (size_t)MOAT_MAX(fy_node_mapping_item_count(n), 0);
    c->pools = arena_alloc(ld->box, MOAT_MAX(cnt, (size_t)1) * sizeof(*c->pools));
    struct fy_node **keys = arena_alloc(ld->box, MOAT_MAX(cnt, (size_t)1) * sizeof(*keys));
    if (!c->pools || !keys)
        return oom(ld);
    void *it = NULL;
    struct fy_node_pair *pr;
    while ((pr = fy_node_mapping_iterate(n, &it)) != NULL) {
        struct fy_node *kn = deref(fy_node_pair_key(pr));
        char name[128];
        if (scalar(ld, kn, name, sizeof(name), "a pool name") != MOAT_OK)
            return MOAT_ERR;
        size_t old = path_push(ld, ".%s", name);
        if (!valid_name(name)) {
            fail(ld, kn, "a pool name is 1 to 64 letters, digits, '-', '_' or '.'");
            path_pop(ld, old);
            return MOAT_ERR;
        }
        for (size_t i = 0; i < c->npools; i++) {
            if (strcmp(c->pools[i].name, name) == 0) {
                int l, col;
                node_pos(ld, keys[i], &l, &col);
                fail(ld, kn, "duplicate pool name (first defined at line %d, column %d)", l, col);
                path_pop(ld, old);
                return MOAT_ERR;
            }
        }
        struct moat_cfg_pool *p = &c->pools[c->npools];
        keys[c->npools] = kn;
        c->npools++;
        p->name = arena_strndup(ld->box, name, strlen(name));
        struct fy_node *v = deref(fy_node_pair_value(pr));
        ld->cur_key = kn;
        int rc = p->name ? MOAT_OK : oom(ld);
        if (rc == MOAT_OK && is_null(v))
            rc = fail(ld, v ? v : kn, "a pool needs at least origins: [HOST:PORT]");
        if (rc == MOAT_OK)
            rc = walk(ld, &pool_table, v, p, false);
        path_pop(ld, old);
        if (rc != MOAT_OK)
            return rc;
    }
    return MOAT_OK;
}

/* --- sites ---------------------------------------------------------------------------------- */

struct site_ctx {
    struct moat_config *c;
    struct moat_cfg_site *site;
    size_t site_idx;
    struct host_ent *ents; /* all hosts of all sites, filled as parsed */
    size_t nents;
};

static bool valid_site_host(const char *h)
{
    if (strcmp(h, "*") == 0)
        return true;
    if (h[0] == '*') {
        if (h[1] != '.' || !h[2])
            return false;
        h += 2;
    }
    if (h[0] == '[') { /* IPv6 literal as it appears in Host */
        size_t n = strlen(h);
        if (n < 3 || h[n - 1] != ']')
            return false;
        for (size_t i = 1; i + 1 < n; i++)
            if (!isxdigit((unsigned char)h[i]) && h[i] != ':' && h[i] != '.')
                return false;
        return true;
    }
    if (!*h || *h == '.' || *h == '-' || strlen(h) > 253)
        return false;
    for (; *h; h++)
        if (!isalnum((unsigned char)*h) && *h != '-' && *h != '.' && *h != '_')
            return false;
    return true;
}

static int host_elem(struct ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    struct site_ctx *sc = ud;
    char buf[300];
    if (scalar(ld, n, buf, sizeof(buf), "a host name") != MOAT_OK)
        return MOAT_ERR;
    size_t len = strlen(buf);
    for (size_t i = 0; i < len; i++)
        buf[i] = (char)tolower((unsigned char)buf[i]);
    if (len > 1 && buf[len - 1] == '.') /* "example.com." is "example.com" */
        buf[--len] = '\0';
    if (!valid_site_host(buf)) {
        if (buf[0] != '[' && strchr(buf, ':'))
            return fail(ld, n, "\"%s\": hosts are names without a port", buf);
        return fail(ld, n, "\"%s\" is not a host name (use e.g. shop.example, *.shop.example or *)",
                    buf);
    }
    char *s = arena_strndup(ld->box, buf, len);
    if (!s)
        return oom(ld);
    sc->site->hosts[idx] = s;
    struct host_ent *e = &sc->ents[sc->nents++];
    e->name = s;
    e->len = len;
    e->site_idx = sc->site_idx;
    node_pos(ld, n, &e->line, &e->col);
    return MOAT_OK;
}

static int k_hosts(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    struct site_ctx *sc = base;
    size_t cnt;
    if (each_string(ld, n, &cnt, NULL, NULL, false) != MOAT_OK)
        return MOAT_ERR;
    sc->site->hosts = arena_alloc(ld->box, cnt * sizeof(char *));
    struct host_ent *ne = arena_alloc(ld->box, (sc->nents + cnt) * sizeof(*ne));
    if (!sc->site->hosts || !ne)
        return oom(ld);
    /* The entry array grows per site; the arena keeps the old copy, which costs a little
     * memory at load time but keeps the allocator trivial. */
    if (sc->nents)
        memcpy(ne, sc->ents, sc->nents * sizeof(*ne));
    sc->ents = ne;
    sc->site->nhosts = cnt;
    return each_string(ld, n, &cnt, host_elem, sc, false);
}

static int k_site_pool(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    struct site_ctx *sc = base;
    char name[128], list[256];
    if (scalar(ld, n, name, sizeof(name), "a pool name") != MOAT_OK)
        return MOAT_ERR;
    size_t used = 0;
    list[0] = '\0';
    for (size_t i = 0; i < sc->c->npools; i++) {
        if (strcmp(sc->c->pools[i].name, name) == 0) {
            sc->site->pool = &sc->c->pools[i];
            return MOAT_OK;
        }
        used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%s", i ? ", " : "",
                                 sc->c->pools[i].name);
        used = MOAT_MIN(used, sizeof(list) - 1);
    }
    if (sc->c->npools == 0)
        return fail(ld, n, "no pool named \"%s\" (no pools are defined)", name);
    return fail(ld, n, "no pool named \"%s\" (defined: %s)", name, list);
}

/* --- cache rules (sites[].rules) ------------------------------------------------------- */

struct rule_ctx {
    struct moat_cfg_rule *r;
};

static int k_rule_methods(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    static const char *const names[] = {"",       "GET",     "HEAD",  "POST",    "PUT",
                                        "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"};
    struct moat_cfg_rule *r = base;
    size_t cnt;
    if (each_string(ld, n, &cnt, NULL, NULL, false) != MOAT_OK)
        return MOAT_ERR;
    struct fy_node *one = fy_node_get_type(n) == FYNT_SCALAR ? n : NULL;
    void *it = NULL;
    for (size_t i = 0; i < cnt; i++) {
        struct fy_node *e = one ? one : deref(fy_node_sequence_iterate(n, &it));
        char buf[16];
        if (scalar(ld, e, buf, sizeof buf, "a method name") != MOAT_OK)
            return MOAT_ERR;
        size_t m = 1;
        while (m < MOAT_ARRAY_LEN(names) && strcmp(buf, names[m]))
            m++;
        if (m == MOAT_ARRAY_LEN(names))
            return fail(ld, e,
                        "\"%s\" is not a method moat matches on (GET, HEAD, POST, PUT, "
                        "DELETE, OPTIONS, PATCH, TRACE)",
                        buf);
        r->methods |= 1u << m;
    }
    return MOAT_OK;
}

static int k_rule_path(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_rule *r = base;
    char buf[1024];
    if (scalar(ld, n, buf, sizeof buf, "a path glob") != MOAT_OK)
        return MOAT_ERR;
    if (buf[0] != '/' && buf[0] != '*')
        return fail(ld, n, "\"%s\" must start with / or * (it matches the request path)", buf);
    r->path = arena_strndup(ld->box, buf, strlen(buf));
    return r->path ? MOAT_OK : oom(ld);
}

/* match.header / match.cookie: a name that is not a token could never match (a typo would
 * silently turn the rule off), so it is refused like key.headers / key.cookies. */
static int rule_token(struct ld *ld, struct fy_node *n, char **out, const char *what_)
{
    char buf[128];
    if (scalar(ld, n, buf, sizeof buf, what_) != MOAT_OK)
        return MOAT_ERR;
    if (!is_token(buf))
        return fail(ld, n, "\"%s\" is not %s (letters, digits and !#$%%&'*+-.^_`|~)", buf, what_);
    *out = arena_strndup(ld->box, buf, strlen(buf));
    return *out ? MOAT_OK : oom(ld);
}

static int k_rule_header(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    return rule_token(ld, n, &((struct moat_cfg_rule *)base)->header, "a header field name");
}

static int k_rule_cookie(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    return rule_token(ld, n, &((struct moat_cfg_rule *)base)->cookie, "a cookie name");
}

static const struct key rule_match_keys[] = {
    {.name = "path",
     .type = KT_CUSTOM,
     .fn = k_rule_path,
     .tname = "glob",
     .doc = "the request path matches this glob (* any run of bytes, ? one byte)"},
    {.name = "methods",
     .type = KT_CUSTOM,
     .fn = k_rule_methods,
     .tname = "method or list",
     .doc = "the request method is one of these"},
    {.name = "query",
     .type = KT_STRING,
     AT(struct moat_cfg_rule, query),
     .doc = "the query string has this parameter"},
    {.name = "header",
     .type = KT_CUSTOM,
     .fn = k_rule_header,
     .tname = "header field name",
     .doc = "the request has this header field"},
    {.name = "cookie",
     .type = KT_CUSTOM,
     .fn = k_rule_cookie,
     .tname = "cookie name",
     .doc = "the request has this cookie"},
};
static const struct table rule_match_table = TABLE(rule_match_keys, NULL);

static const char *const cache_mode_names[] = {"standard", "bypass", "everything", NULL};
static const char *const key_query_names[] = {"all", "ignore", "sort", NULL};
static const char *const origin_no_cache_names[] = {"respect", "ignore", NULL};
static const char *const set_cookie_names[] = {"refuse", "strip", NULL};

/* key.headers / key.cookies: names that go into cache keys, so they must be exactly what can
 * appear on the wire: a header field name or a cookie name is a token (RFC 9110 5.1,
 * RFC 6265 4.1.1). Header names are case-insensitive and kept lowercase; cookie names are
 * case-sensitive and kept as given. A name listed twice would only lengthen every key. */
struct key_names_ctx {
    struct moat_str *names;
    uint8_t *n;
    bool header;
};

static int key_name_elem(struct ld *ld, struct fy_node *n, size_t idx, void *ud)
{
    struct key_names_ctx *kc = ud;
    const char *what_ = kc->header ? "a header field name" : "a cookie name";
    char buf[128];
    if (scalar(ld, n, buf, sizeof buf, what_) != MOAT_OK)
        return MOAT_ERR;
    if (!is_token(buf))
        return fail(ld, n, "\"%s\" is not %s (letters, digits and !#$%%&'*+-.^_`|~)", buf, what_);
    size_t len = strlen(buf);
    if (kc->header)
        for (size_t i = 0; i < len; i++)
            buf[i] = (char)tolower((unsigned char)buf[i]);
    for (size_t i = 0; i < idx; i++)
        if (kc->names[i].len == len && !memcmp(kc->names[i].ptr, buf, len))
            return fail(ld, n, "\"%s\" is listed twice%s", buf,
                        kc->header ? " (header names ignore case)" : "");
    char *s = arena_strndup(ld->box, buf, len);
    if (!s)
        return oom(ld);
    kc->names[idx] = moat_str_make(s, len);
    *kc->n = (uint8_t)(idx + 1);
    return MOAT_OK;
}

static int key_names(struct ld *ld, struct fy_node *n, struct key_names_ctx *kc)
{
    size_t cnt;
    if (each_string(ld, n, &cnt, NULL, NULL, true) != MOAT_OK)
        return MOAT_ERR;
    if (cnt > MOAT_KEY_FIELDS_MAX)
        return fail(ld, n, "at most %d %s (got %zu)", MOAT_KEY_FIELDS_MAX,
                    kc->header ? "header fields" : "cookies", cnt);
    return each_string(ld, n, &cnt, key_name_elem, kc, true);
}

static int k_key_headers(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_rule *r = base;
    struct key_names_ctx kc = {r->key_headers, &r->nkey_headers, true};
    return key_names(ld, n, &kc);
}

static int k_key_cookies(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    struct moat_cfg_rule *r = base;
    struct key_names_ctx kc = {r->key_cookies, &r->nkey_cookies, false};
    return key_names(ld, n, &kc);
}

static const struct key rule_key_keys[] = {
    {.name = "query",
     .type = KT_ENUM,
     AT(struct moat_cfg_rule, key_query),
     .def = "all",
     .names = key_query_names,
     .doc = "the query string in the cache key: as sent, ignored, or parameters sorted"},
    {.name = "headers",
     .type = KT_CUSTOM,
     .fn = k_key_headers,
     .tname = "header name or list (at most 8)",
     .doc = "request header fields whose values are part of the cache key"},
    {.name = "cookies",
     .type = KT_CUSTOM,
     .fn = k_key_cookies,
     .tname = "cookie name or list (at most 8)",
     .doc = "cookies whose values are part of the cache key"},
};
static const struct table rule_key_table = TABLE(rule_key_keys, NULL);

static const struct key rule_keys[] = {
    {.name = "match",
     .type = KT_MAP,
     .sub = &rule_match_table,
     .sub_sep = ".",
     .doc = "conditions, all of which must hold (none: every request)"},
    {.name = "cache",
     .type = KT_ENUM,
     AT(struct moat_cfg_rule, mode),
     .def = "standard",
     .names = cache_mode_names,
     .doc = "standard (obey the origin), bypass, or everything (store whatever the origin says)"},
    {.name = "edge_ttl",
     .type = KT_DURATION,
     AT(struct moat_cfg_rule, edge_ttl_ms),
     .def = "0",
     .min = 0,
     .max = 365 * 86400000ull,
     .doc = "how long moat keeps answers fresh, overriding the origin (0: the origin's)"},
    {.name = "browser_ttl",
     .type = KT_DURATION,
     AT(struct moat_cfg_rule, browser_ttl_ms),
     .def = "0",
     .min = 0,
     .max = 365 * 86400000ull,
     .doc = "Cache-Control: max-age that clients see (0: the origin's Cache-Control)"},
    {.name = "stale_if_error",
     .type = KT_DURATION,
     AT(struct moat_cfg_rule, stale_if_error_ms),
     .def = "0",
     .min = 0,
     .max = 365 * 86400000ull,
     .doc = "serve a stale copy this long past its freshness when the origin fails"},
    {.name = "origin_no_cache",
     .type = KT_ENUM,
     AT(struct moat_cfg_rule, origin_no_cache),
     .def = "respect",
     .names = origin_no_cache_names,
     .doc = "the origin's Cache-Control: no-cache: revalidate on every use (respect), or "
            "serve for the answer's lifetime (ignore)"},
    {.name = "set_cookie",
     .type = KT_ENUM,
     AT(struct moat_cfg_rule, set_cookie),
     .def = "refuse",
     .names = set_cookie_names,
     .doc = "a response with Set-Cookie: never stored (refuse), or stored without its "
            "Set-Cookie fields (strip)"},
    {.name = "key",
     .type = KT_MAP,
     .sub = &rule_key_table,
     .sub_sep = ".",
     .doc = "cache key options"},
};
static const struct table rule_table = TABLE(rule_keys, NULL);

static int k_rules(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    struct site_ctx *sc = base;
    if (is_null(n) || fy_node_get_type(n) != FYNT_SEQUENCE)
        return fail(ld, n, "expected a list of rules, got %s", what(n));
    size_t cnt = (size_t)MOAT_MAX(fy_node_sequence_item_count(n), 0);
    sc->site->rules = arena_alloc(ld->box, (cnt ? cnt : 1) * sizeof(*sc->site->rules));
    if (!sc->site->rules)
        return oom(ld);
    memset(sc->site->rules, 0, (cnt ? cnt : 1) * sizeof(*sc->site->rules));
    void *it = NULL;
    struct fy_node *e;
    size_t i = 0;
    while ((e = fy_node_sequence_iterate(n, &it)) != NULL) {
        size_t old = path_push(ld, "[%zu]", i);
        struct fy_node *v = deref(e);
        int rc;
        if (is_null(v) || fy_node_get_type(v) != FYNT_MAPPING)
            rc = fail(ld, v, "expected a rule ({ match: {...}, cache: ... }), got %s", what(v));
        else
            rc = walk(ld, &rule_table, v, &sc->site->rules[i], false);
        path_pop(ld, old);
        if (rc != MOAT_OK)
            return rc;
        i++;
    }
    sc->site->nrules = i;
    return MOAT_OK;
}

static const struct key site_keys[] = {
    {.name = "hosts",
     .type = KT_CUSTOM,
     .fn = k_hosts,
     .tname = "host name or list",
     .flags = K_REQUIRED,
     .doc = "names this site answers: exact, \"*.suffix\" or \"*\" (required)"},
    {.name = "pool",
     .type = KT_CUSTOM,
     .fn = k_site_pool,
     .tname = "pool name",
     .flags = K_REQUIRED,
     .doc = "the pool requests for this site go to (required)"},
    {.name = "rules",
     .type = KT_CUSTOM,
     .fn = k_rules,
     .sub = &rule_table,
     .sub_sep = "[].",
     .tname = "list of rules",
     .doc = "cache rules; the first whose match fits a request applies"},
};
static const struct table site_table = TABLE(site_keys, NULL);

static int cmp_ent(const void *a, const void *b)
{
    const struct host_ent *x = a, *y = b;
    int r = memcmp(x->name, y->name, MOAT_MIN(x->len, y->len));
    if (r)
        return r;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    /* Equal names: document order, so the duplicate reported is the later one. */
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return x->col < y->col ? -1 : x->col > y->col;
}

/* Splits the parsed hosts into the exact and suffix indexes and refuses a host given twice:
 * with first-match semantics the second one could never be reached. */
static int build_site_index(struct ld *ld, struct fy_node *sites_node, struct host_ent *ents,
                            size_t n)
{
    struct cfg_box *b = ld->box;
    struct moat_config *c = &b->cfg;
    qsort(ents, n, sizeof(*ents), cmp_ent);
    for (size_t i = 1; i < n; i++) {
        if (ents[i].len == ents[i - 1].len &&
            !memcmp(ents[i].name, ents[i - 1].name, ents[i].len)) {
            char msg[MOAT_CONFIG_ERRLEN];
            snprintf(msg, sizeof(msg),
                     "%s:%d:%d: sites[%zu].hosts: \"%s\" is already used by sites[%zu] (line "
                     "%d, column %d)",
                     ld->name ? ld->name : "moat", ents[i].line, ents[i].col, ents[i].site_idx,
                     ents[i].name, ents[i - 1].site_idx, ents[i - 1].line, ents[i - 1].col);
            ld->failed = true;
            snprintf(ld->err, ld->errlen, "%s", msg);
            return MOAT_ERR;
        }
    }
    for (size_t i = 0; i < n; i++) {
        ents[i].site = &c->sites[ents[i].site_idx];
        if (ents[i].len == 1 && ents[i].name[0] == '*')
            b->star = ents[i].site;
        else if (ents[i].name[0] == '*')
            b->nsuffix++;
        else
            b->nexact++;
    }
    b->exact = arena_alloc(b, MOAT_MAX(b->nexact, (size_t)1) * sizeof(*b->exact));
    b->suffix = arena_alloc(b, MOAT_MAX(b->nsuffix, (size_t)1) * sizeof(*b->suffix));
    if (!b->exact || !b->suffix)
        return oom(ld);
    size_t ne = 0, ns = 0;
    for (size_t i = 0; i < n; i++) {
        if (ents[i].len == 1 && ents[i].name[0] == '*')
            continue;
        if (ents[i].name[0] == '*') {
            b->suffix[ns] = ents[i];
            b->suffix[ns].name++; /* keep ".example.com" */
            b->suffix[ns].len--;
            ns++;
        } else {
            b->exact[ne++] = ents[i];
        }
    }
    (void)sites_node;
    return MOAT_OK;
}

static int k_sites(struct ld *ld, const struct key *k, struct fy_node *n, void *base)
{
    struct moat_config *c = base;
    if (is_null(n) || fy_node_get_type(n) != FYNT_SEQUENCE)
        return fail(ld, n, "expected a list of sites, got %s", what(n));
    size_t cnt = (size_t)MOAT_MAX(fy_node_sequence_item_count(n), 0);
    if (cnt == 0)
        return fail(ld, n, "at least one site is needed");
    c->sites = arena_alloc(ld->box, cnt * sizeof(*c->sites));
    if (!c->sites)
        return oom(ld);
    struct site_ctx sc = {.c = c};
    void *it = NULL;
    struct fy_node *e;
    while ((e = fy_node_sequence_iterate(n, &it)) != NULL) {
        sc.site = &c->sites[sc.site_idx];
        size_t old = path_push(ld, "[%zu]", sc.site_idx);
        struct fy_node *v = deref(e);
        int rc = MOAT_OK;
        if (is_null(v) || fy_node_get_type(v) != FYNT_MAPPING)
            rc = fail(ld, v, "expected a site ({ hosts: [...], pool: NAME }), got %s", what(v));
        else
            rc = walk(ld, &site_table, v, &sc, false);
        path_pop(ld, old);
        if (rc != MOAT_OK)
            return rc;
        sc.site_idx++;
        c->nsites = sc.site_idx;
    }
    return build_site_index(ld, n, sc.ents, sc.nents);
}

/* --- the top-level tables --------------------------------------------------------------- */

static const struct key admin_keys[] = {
    {.name = "listen",
     .type = KT_CUSTOM,
     .fn = k_admin_listen,
     .tname = "address",
     .flags = K_REQUIRED,
     .doc = "HOST:PORT of the admin API (required when admin is set)"},
    {.name = "token_file",
     .type = KT_CUSTOM,
     .fn = k_token_file,
     .tname = "path",
     .doc = "file holding the bearer token; required unless listen is loopback"},
};
static const struct table admin_table = TABLE(admin_keys, admin_post);

#define KiB 1024ull
#define MiB (1024ull * 1024)

static const struct key limits_keys[] = {
    {.name = "request_line",
     .type = KT_SIZE,
     AT(struct moat_config, h1.request_line),
     .def = "8KiB",
     .min = 256,
     .max = MiB,
     .doc = "longest request line (414 beyond)"},
    {.name = "header_bytes",
     .type = KT_SIZE,
     AT(struct moat_config, h1.head_bytes),
     .def = "16KiB",
     .min = KiB,
     .max = 4 * MiB,
     .doc = "largest request head, request line included (431 beyond)"},
    {.name = "header_count",
     .type = KT_UINT,
     AT(struct moat_config, h1.max_headers),
     .def = "100",
     .min = 1,
     .max = 10000,
     .doc = "most header fields in a request (431 beyond)"},
    {.name = "body_bytes",
     .type = KT_SIZE,
     AT(struct moat_config, max_body_bytes),
     .def = "0",
     .min = 0,
     .max = UINT64_MAX,
     .doc = "largest request body, 0 = unlimited (413 beyond)"},
    {.name = "body_buffer",
     .type = KT_SIZE,
     AT(struct moat_config, body_buffer),
     .def = "64KiB",
     .min = 16 * KiB,
     .max = 16 * MiB,
     .doc = "read buffer for a body larger than the head buffer, per transfer in progress"},
    {.name = "connections",
     .type = KT_UINT,
     AT(struct moat_config, max_connections),
     .def = "10000",
     .min = 1,
     .max = 1000000,
     .doc = "open client connections per worker"},
};
static const struct table limits_table = TABLE(limits_keys, limits_post);

#define DAY_MS 86400000ull

static const struct key timeouts_keys[] = {
    {.name = "client_header",
     .type = KT_DURATION,
     AT(struct moat_config, client_header_timeout_ms),
     .def = "10s",
     .min = 1,
     .max = DAY_MS,
     .doc = "time for a client to send a whole request head"},
    {.name = "client_body",
     .type = KT_DURATION,
     AT(struct moat_config, client_body_timeout_ms),
     .def = "60s",
     .min = 1,
     .max = DAY_MS,
     .doc = "longest pause between two body reads"},
    {.name = "keepalive",
     .type = KT_DURATION,
     AT(struct moat_config, client_idle_timeout_ms),
     .def = "60s",
     .min = 1,
     .max = DAY_MS,
     .doc = "idle time between requests on a connection"},
    {.name = "send",
     .type = KT_DURATION,
     AT(struct moat_config, send_timeout_ms),
     .def = "60s",
     .min = 1,
     .max = DAY_MS,
     .doc = "longest time without progress writing to a client"},
    {.name = "drain",
     .type = KT_DURATION,
     AT(struct moat_config, drain_timeout_ms),
     .def = "30s",
     .min = 0,
     .max = DAY_MS,
     .doc = "on SIGTERM, time given to requests in flight (0 = close at once)"},
};
static const struct table timeouts_table = TABLE(timeouts_keys, NULL);

static const char *const level_names[] = {"debug", "info", "warn", "error", NULL};

static const struct key log_keys[] = {
    {.name = "access",
     .type = KT_CUSTOM,
     .fn = k_access_log,
     .tname = "path|stderr|stdout|off",
     .def = "off",
     .doc = "where access log lines go"},
    {.name = "error",
     .type = KT_CUSTOM,
     .fn = k_error_log,
     .tname = "path|stderr|stdout",
     .def = "stderr",
     .doc = "where error and info messages go"},
    {.name = "level",
     .type = KT_ENUM,
     AT(struct moat_config, log_level),
     .def = "info",
     .names = level_names,
     .doc = "least severe level written"},
};
static const struct table log_table = TABLE(log_keys, NULL);

static const char *const bool_names[] = {"false", "true", NULL};

static const struct key cache_keys[] = {
    {.name = "enabled",
     .type = KT_ENUM,
     AT(struct moat_config, cache.enabled),
     .def = "true",
     .names = bool_names,
     .doc = "look up and store GET/HEAD responses (RFC 9111 semantics)"},
    {.name = "memory",
     .type = KT_SIZE,
     AT(struct moat_config, cache.memory),
     .def = "512MiB",
     .min = MiB,
     .max = UINT64_MAX,
     .doc = "bytes the cache may hold, objects and tables included (read at start)"},
    {.name = "max_object",
     .type = KT_SIZE,
     AT(struct moat_config, cache.max_object),
     .def = "32MiB",
     .min = 1,
     .max = UINT64_MAX,
     .doc = "largest body stored; larger responses pass through uncached"},
    {.name = "pass_ttl",
     .type = KT_DURATION,
     AT(struct moat_config, cache.pass_ttl_ms),
     .def = "2m",
     .min = 0,
     .max = DAY_MS,
     .doc = "how long an uncacheable URL goes straight to the origin (hit-for-pass)"},
    {.name = "heuristic_max",
     .type = KT_DURATION,
     AT(struct moat_config, cache.heuristic_max_ms),
     .def = "1d",
     .min = 0,
     .max = 365 * DAY_MS,
     .doc = "cap on heuristic freshness (10% of the age of Last-Modified)"},
    {.name = "targeted_field",
     .type = KT_STRING,
     AT(struct moat_config, cache.targeted_field),
     .def = "Moat-Cache-Control",
     .doc = "moat's own targeted Cache-Control field (RFC 9213); wins over CDN-Cache-Control"},
    {.name = "static_ttl",
     .type = KT_DURATION,
     AT(struct moat_config, cache.static_ttl_ms),
     .def = "2h",
     .min = 0,
     .max = 365 * DAY_MS,
     .doc = "freshness for static file types (css, js, images, fonts...) whose origin gives "
            "none, when no rule matches; 0 = off (quick mode)"},
    {.name = "normalize_accept_encoding",
     .type = KT_ENUM,
     AT(struct moat_config, cache.normalize_ae),
     .def = "true",
     .names = bool_names,
     .doc = "cached requests send the origin a canonical Accept-Encoding (gzip, br, zstd or "
            "identity), so Vary: Accept-Encoding makes few variants"},
};
static const struct table cache_table = TABLE(cache_keys, NULL);

/* Table order is parse order: pools come before sites, which refer to them. */
static const struct key tuning_keys[] = {
    {.name = "batch_wait_us",
     .type = KT_UINT,
     AT(struct moat_config, batch_wait_us),
     .def = "20",
     .min = 0,
     .max = 1000,
     .doc = "while a worker is busy, pause this long (microseconds) to collect events instead "
            "of sleeping until each one; 0 = off"},
};
static const struct table tuning_table = TABLE(tuning_keys, NULL);

static const struct key root_keys[] = {
    {.name = "listen",
     .type = KT_CUSTOM,
     .fn = k_listen,
     .tname = "address or list",
     .def = "[\"0.0.0.0:8080\"]",
     .doc = "HOST:PORT addresses clients connect to"},
    {.name = "workers",
     .type = KT_CUSTOM,
     .fn = k_workers,
     .tname = "auto or 1..256",
     .def = "auto",
     .min = 1,
     .max = 256,
     .doc = "worker threads; auto = one per online CPU"},
    {.name = "demo_origin",
     .type = KT_CUSTOM,
     .fn = k_demo_origin,
     .tname = "address",
     .doc = "start moat's built-in demo site on HOST:PORT (off when absent)"},
    {.name = "admin",
     .type = KT_MAP,
     .sub = &admin_table,
     .sub_sep = ".",
     .flags = K_PRESENCE,
     .doc = "the admin API; off when absent"},
    {.name = "limits",
     .type = KT_MAP,
     .sub = &limits_table,
     .sub_sep = ".",
     .doc = "bounds on what a client may send"},
    {.name = "timeouts",
     .type = KT_MAP,
     .sub = &timeouts_table,
     .sub_sep = ".",
     .doc = "client-side timeouts"},
    {.name = "trusted_proxies",
     .type = KT_CUSTOM,
     .fn = k_trusted,
     .tname = "CIDR or list",
     .def = "[]",
     .doc = "peers whose X-Forwarded-For is kept and extended"},
    {.name = "forward_headers",
     .type = KT_CUSTOM,
     .fn = k_forward,
     .tname = "list of header names",
     .def = "[x-forwarded-for, x-forwarded-proto, forwarded]",
     .doc = "the forwarding fields moat sets on requests to origins"},
    {.name = "via",
     .type = KT_CUSTOM,
     .fn = k_via,
     .tname = "token",
     .def = "moat",
     .doc = "the pseudonym moat adds to the Via header"},
    {.name = "log", .type = KT_MAP, .sub = &log_table, .sub_sep = ".", .doc = "logging"},
    {.name = "cache",
     .type = KT_MAP,
     .sub = &cache_table,
     .sub_sep = ".",
     .doc = "the shared in-memory HTTP cache"},
    {.name = "pools",
     .type = KT_CUSTOM,
     .fn = k_pools,
     .sub = &pool_table,
     .sub_sep = ".*.",
     .tname = "map of name to pool",
     .doc = "named groups of origins"},
    {.name = "sites",
     .type = KT_CUSTOM,
     .fn = k_sites,
     .sub = &site_table,
     .sub_sep = "[].",
     .tname = "list of sites",
     .flags = K_REQUIRED_FILE,
     .doc = "which pool serves which Host; first match as described (required)"},
    {.name = "tuning",
     .type = KT_MAP,
     .sub = &tuning_table,
     .sub_sep = ".",
     .doc = "event-loop knobs"},
};
static const struct table root_table = TABLE(root_keys, NULL);

_Static_assert(MOAT_ARRAY_LEN(root_keys) <= MAX_KEYS, "raise MAX_KEYS");
_Static_assert(MOAT_ARRAY_LEN(pool_keys) <= MAX_KEYS, "raise MAX_KEYS");

/* ------------------------------------------------------------------------------------------
 * Loading.
 * ------------------------------------------------------------------------------------------ */

static void diag_discard(struct fy_diag *diag, void *user, const char *buf, size_t len)
{
    (void)diag, (void)user, (void)buf, (void)len;
}

static struct fy_diag *diag_new(void)
{
    struct fy_diag_cfg dc;
    fy_diag_cfg_default(&dc);
    dc.fp = NULL;
    dc.output_fn = diag_discard;
    dc.colorize = false;
    struct fy_diag *d = fy_diag_create(&dc);
    if (d)
        fy_diag_set_collect_errors(d, true);
    return d;
}

/* True if <s> holds nothing but blank lines and comments: libfyaml builds no document for
 * it, which must read as "all defaults", not as a syntax error. */
static bool blank_yaml(const char *s, size_t n)
{
    bool comment = false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\n')
            comment = false;
        else if (comment)
            continue;
        else if (s[i] == '#')
            comment = true;
        else if (!isspace((unsigned char)s[i]))
            return false;
    }
    return true;
}

static struct cfg_box *box_new(void)
{
    struct cfg_box *b = calloc(1, sizeof(*b));
    if (b)
        atomic_init(&b->cfg.refs, 1);
    return b;
}

static struct moat_config *load_common(const char *yaml, size_t len, const char *name,
                                       const char *path, const char *basedir, char *err,
                                       size_t errlen)
{
    struct ld ld = {
        .name = name ? name : "config", .basedir = basedir, .err = err, .errlen = errlen};
    struct fy_document *doc = NULL;
    ld.box = box_new();
    ld.diag = diag_new();
    if (!ld.box || !ld.diag) {
        snprintf(err, errlen, "moat: out of memory");
        goto out;
    }
    /* YAML directives (%YAML, %TAG) have no use in a moat config, and libfyaml 0.7.12 loops
     * forever on some malformed ones (found by tests/fuzz/fuzz_config.c: "%1\xf6.\n@").
     * Refuse a line that starts with '%' before the parser sees it; a NUL byte too, which
     * no text config has. */
    for (size_t i = 0, line = 1; i < len; i++) {
        /* Line starts: after LF, CR, NEL (C2 85), LS/PS (E2 80 A8/A9), as YAML counts them. */
        bool bol =
            i == 0 || yaml[i - 1] == '\n' || yaml[i - 1] == '\r' ||
            (i >= 2 && (unsigned char)yaml[i - 2] == 0xc2 && (unsigned char)yaml[i - 1] == 0x85) ||
            (i >= 3 && (unsigned char)yaml[i - 3] == 0xe2 && (unsigned char)yaml[i - 2] == 0x80 &&
             ((unsigned char)yaml[i - 1] == 0xa8 || (unsigned char)yaml[i - 1] == 0xa9));
        if (yaml[i] == '%' && bol) {
            snprintf(err, errlen, "%s:%zu:1: YAML directives (%%...) are not supported", ld.name,
                     line);
            ld.failed = true;
            goto out;
        }
        if (yaml[i] == '\0') {
            snprintf(err, errlen, "%s:%zu:1: a NUL byte: this is not a text file", ld.name, line);
            ld.failed = true;
            goto out;
        }
        if (yaml[i] == '\n')
            line++;
    }
    struct fy_parse_cfg pc = {.flags = FYPCF_QUIET | FYPCF_ALLOW_DUPLICATE_KEYS, .diag = ld.diag};
    doc = fy_document_build_from_string(&pc, yaml, len);
    if (!doc) {
        void *it = NULL;
        struct fy_diag_error *e = fy_diag_errors_iterate(ld.diag, &it);
        if (e) {
            snprintf(err, errlen, "%s:%d:%d: invalid YAML: %s", ld.name, MOAT_MAX(e->line, 1),
                     MOAT_MAX(e->column, 1), e->msg ? e->msg : "syntax error");
            ld.failed = true;
            goto out;
        }
        if (!blank_yaml(yaml, len)) {
            snprintf(err, errlen, "%s: invalid YAML", ld.name);
            ld.failed = true;
            goto out;
        }
    }
    struct fy_node *root = doc ? deref(fy_document_root(doc)) : NULL;
    if (root && !is_null(root) && fy_node_get_type(root) != FYNT_MAPPING) {
        fail(&ld, root, "the top level must be a map of keys (listen, pools, sites, ...), got %s",
             what(root));
        goto out;
    }
    if (walk(&ld, &root_table, root, &ld.box->cfg, false) != MOAT_OK)
        goto out;
    if (path && !(ld.box->cfg.path = arena_strndup(ld.box, path, strlen(path))))
        oom(&ld);
out:
    if (doc)
        fy_document_destroy(doc);
    if (ld.diag)
        fy_diag_destroy(ld.diag);
    if (ld.failed || !ld.box) {
        box_free(ld.box);
        return NULL;
    }
    return &ld.box->cfg;
}

struct moat_config *moat_config_load_string(const char *yaml, size_t len, const char *name,
                                            char *err, size_t errlen)
{
    return load_common(yaml, len, name, NULL, NULL, err, errlen);
}

#define MAX_CONFIG_BYTES (16u << 20)

struct moat_config *moat_config_load(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "moat: cannot read %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > (off_t)MAX_CONFIG_BYTES) {
        snprintf(err, errlen, "moat: %s: %s", path,
                 S_ISREG(st.st_mode) ? "larger than 16 MiB" : "not a regular file");
        close(fd);
        return NULL;
    }
    size_t size = (size_t)st.st_size, got = 0;
    char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        snprintf(err, errlen, "moat: out of memory");
        return NULL;
    }
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            snprintf(err, errlen, "moat: cannot read %s: %s", path,
                     r < 0 ? strerror(errno) : "file shrank while reading");
            free(buf);
            close(fd);
            return NULL;
        }
        got += (size_t)r;
    }
    close(fd);
    buf[size] = '\0';

    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (slash && (size_t)(slash - path) < sizeof(dir)) {
        size_t dn = slash == path ? 1 : (size_t)(slash - path);
        memcpy(dir, path, dn);
        dir[dn] = '\0';
    } else {
        snprintf(dir, sizeof(dir), ".");
    }
    struct moat_config *c = load_common(buf, size, path, path, dir, err, errlen);
    free(buf);
    return c;
}

/* Quick mode builds the snapshot from the same tables (so defaults are the documented ones)
 * and fills in the one pool and site by hand. */
struct moat_config *moat_config_quick(const char *origin_url, const char *listen, char *err,
                                      size_t errlen)
{
    struct ld ld = {.quick = true, .err = err, .errlen = errlen};
    char hostport[300], msg[256];
    const char *u = origin_url ? origin_url : "";

    if (!strncasecmp(u, "https://", 8)) {
        snprintf(err, errlen,
                 "moat: origin %s: https origins are not supported yet (TLS to "
                 "origins comes later); use http://",
                 u);
        return NULL;
    }
    bool had_scheme = !strncasecmp(u, "http://", 7);
    if (had_scheme)
        u += 7;
    else if (strstr(u, "://")) {
        snprintf(err, errlen, "moat: origin %s: only http:// origins are supported", origin_url);
        return NULL;
    }
    size_t n = strcspn(u, "/?#");
    if (u[n] && strcmp(u + n, "/") != 0) {
        snprintf(err, errlen,
                 "moat: origin %s: a path in the origin URL is not supported; "
                 "give only http://HOST[:PORT]",
                 origin_url);
        return NULL;
    }
    if (n == 0 || n >= sizeof(hostport) - 8) {
        snprintf(err, errlen, "moat: origin \"%s\": expected http://HOST:PORT or HOST:PORT",
                 origin_url ? origin_url : "");
        return NULL;
    }
    if (memchr(u, '@', n)) {
        snprintf(err, errlen, "moat: origin %s: user info in the URL is not supported", origin_url);
        return NULL;
    }
    memcpy(hostport, u, n);
    hostport[n] = '\0';
    /* "http://host" means port 80; a bare "host" without scheme must name its port. */
    const char *rb = strrchr(hostport, ']');
    const char *colon = strrchr(hostport, ':');
    bool has_port = colon && (!rb || colon > rb);
    if (!has_port && had_scheme && (hostport[0] == '[' || !strchr(hostport, ':')))
        snprintf(hostport + n, sizeof(hostport) - n, ":80");

    ld.box = box_new();
    ld.diag = diag_new();
    if (!ld.box || !ld.diag) {
        snprintf(err, errlen, "moat: out of memory");
        goto out;
    }
    struct moat_config *c = &ld.box->cfg;
    if (walk(&ld, &root_table, NULL, c, false) != MOAT_OK)
        goto out;
    /* Quick mode obeys the origin's headers only: no default freshness for static files. */
    c->cache.static_ttl_ms = 0;
    if (listen) {
        if (moat_addr_parse(listen, &c->listen[0].addr, msg, sizeof(msg)) != MOAT_OK) {
            fail(&ld, NULL, "listen: %s", msg);
            goto out;
        }
        c->nlisten = 1;
    }
    c->pools = arena_alloc(ld.box, sizeof(*c->pools));
    c->sites = arena_alloc(ld.box, sizeof(*c->sites));
    struct moat_cfg_origin *o = arena_alloc(ld.box, sizeof(*o));
    char **hosts = arena_alloc(ld.box, sizeof(char *));
    struct host_ent *ent = arena_alloc(ld.box, sizeof(*ent));
    if (!c->pools || !c->sites || !o || !hosts || !ent) {
        oom(&ld);
        goto out;
    }
    struct moat_cfg_pool *p = &c->pools[0];
    if (walk(&ld, &pool_table, NULL, p, true) != MOAT_OK ||
        walk(&ld, &origin_table, NULL, o, true) != MOAT_OK)
        goto out;
    char host[300];
    unsigned port;
    if (moat_addr_parse_ex(hostport, &o->addr, host, sizeof(host), &port, msg, sizeof(msg)) !=
        MOAT_OK) {
        fail(&ld, NULL, "origin %s: %s", origin_url, msg);
        goto out;
    }
    if (fill_origin_names(&ld, o, host, port) != MOAT_OK)
        goto out;
    p->name = arena_strndup(ld.box, "origin", 6);
    hosts[0] = arena_strndup(ld.box, "*", 1);
    if (!p->name || !hosts[0]) {
        oom(&ld);
        goto out;
    }
    p->origins = o;
    p->norigins = 1;
    /* A quick-mode origin is usually a named site elsewhere that virtual-hosts on its own
     * name, so it gets its own Host rather than moat's listen address. */
    p->host_from_origin = true;
    c->npools = 1;
    c->sites[0].hosts = hosts;
    c->sites[0].nhosts = 1;
    c->sites[0].pool = p;
    c->nsites = 1;
    ld.box->star = &c->sites[0];
    ld.box->exact = ld.box->suffix = ent; /* never read: counts are 0 */
out:
    if (ld.diag)
        fy_diag_destroy(ld.diag);
    if (ld.failed || !ld.box || !ld.diag) {
        box_free(ld.box);
        return NULL;
    }
    return &ld.box->cfg;
}

/* ------------------------------------------------------------------------------------------
 * Snapshot lifetime and lookups.
 * ------------------------------------------------------------------------------------------ */

void moat_config_ref(struct moat_config *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void moat_config_release(struct moat_config **cp)
{
    struct moat_config *c = *cp;
    *cp = NULL;
    if (!c)
        return;
    /* acq_rel: the last releaser must see every other thread's reads finished before it
     * frees (the usual refcount pairing, as in the kernel's refcount_dec_and_test). */
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) {
        if (c->rt_free)
            c->rt_free(c->rt);
        box_free(box_of(c));
    }
}

static const struct host_ent *find_ent(const struct host_ent *v, size_t n, const char *s,
                                       size_t len)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = memcmp(v[mid].name, s, MOAT_MIN(v[mid].len, len));
        if (r == 0)
            r = v[mid].len < len ? -1 : v[mid].len > len;
        if (r == 0)
            return &v[mid];
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* O(labels * log hosts): one binary search for the exact name, then one per dot from the left,
 * so the first suffix found is the longest. A per-request linear scan over every site's hosts
 * would be simpler but grows with the number of sites. */
const struct moat_cfg_site *moat_config_site(const struct moat_config *c, struct moat_str host)
{
    const struct cfg_box *b = box_of(c);
    char buf[256];
    size_t len = host.len;
    if (len && host.ptr[len - 1] == '.')
        len--;
    if (len == 0 || len >= sizeof(buf))
        return b->star;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)host.ptr[i];
        buf[i] = (char)((ch >= 'A' && ch <= 'Z') ? ch | 0x20 : ch);
    }
    const struct host_ent *e = find_ent(b->exact, b->nexact, buf, len);
    if (e)
        return e->site;
    for (size_t i = 1; i < len; i++) {
        if (buf[i] != '.')
            continue;
        e = find_ent(b->suffix, b->nsuffix, buf + i, len - i);
        if (e)
            return e->site;
    }
    return b->star;
}

bool moat_config_trusted(const struct moat_config *c, const uint8_t addr[16])
{
    for (size_t i = 0; i < c->ntrusted; i++)
        if (moat_cidr_match(&c->trusted[i], addr))
            return true;
    return false;
}

/* ------------------------------------------------------------------------------------------
 * The key reference.
 * ------------------------------------------------------------------------------------------ */

static void key_type_name(const struct key *k, char *buf, size_t n)
{
    char lo[32], hi[32];
    switch (k->type) {
    case KT_DURATION:
        fmt_duration(lo, sizeof(lo), k->min);
        fmt_duration(hi, sizeof(hi), k->max);
        snprintf(buf, n, "duration (%s..%s)", k->min ? lo : "0", hi);
        break;
    case KT_SIZE:
        fmt_size(lo, sizeof(lo), k->min);
        if (k->max == UINT64_MAX)
            snprintf(buf, n, "size");
        else {
            fmt_size(hi, sizeof(hi), k->max);
            snprintf(buf, n, "size (%s..%s)", lo, hi);
        }
        break;
    case KT_UINT:
        snprintf(buf, n, "integer (%llu..%llu)", (unsigned long long)k->min,
                 (unsigned long long)k->max);
        break;
    case KT_STRING:
        snprintf(buf, n, "string");
        break;
    case KT_ENUM: {
        size_t used = 0;
        for (size_t i = 0; k->names[i] && used < n; i++)
            used += (size_t)snprintf(buf + used, n - used, "%s%s", i ? "|" : "", k->names[i]);
        break;
    }
    case KT_MAP:
        snprintf(buf, n, "map");
        break;
    case KT_CUSTOM:
        snprintf(buf, n, "%s", k->tname);
        break;
    }
}

static void keys_rec(const struct table *t, const char *prefix, moat_config_key_fn *fn, void *ud)
{
    for (size_t i = 0; i < t->n; i++) {
        const struct key *k = &t->keys[i];
        char path[256], type[128];
        snprintf(path, sizeof(path), "%s%s", prefix, k->name);
        key_type_name(k, type, sizeof(type));
        fn(path, type, k->def, k->doc, ud);
        if (k->sub) {
            char sub[320];
            snprintf(sub, sizeof(sub), "%s%s", path, k->sub_sep ? k->sub_sep : ".");
            keys_rec(k->sub, sub, fn, ud);
        }
    }
}

void moat_config_keys(moat_config_key_fn *fn, void *ud)
{
    keys_rec(&root_table, "", fn, ud);
}
