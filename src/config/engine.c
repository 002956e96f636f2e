/* engine.c: the table engine: YAML maps walked by directive tables into a snapshot's arena,
 * with positioned errors, defaults, "did you mean" hints and the key reference. */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "config/config-int.h"

/* ------------------------------------------------------------------------------------------
 * The snapshot's memory.
 *
 * Everything a snapshot owns lives in one arena of chunks that is freed in one go. That makes
 * release trivially complete and makes every error path leak-free by construction: a failed
 * load frees the arena it had started, whatever it had allocated. The cost is that nothing
 * inside a snapshot can be freed on its own, which is what immutability asks for anyway.
 * ------------------------------------------------------------------------------------------ */

struct cfg_chunk {
    struct cfg_chunk *next;
    size_t used, cap;
    max_align_t data[];
};

void *cfg_alloc(struct cfg_box *b, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    if (n == 0)
        n = sizeof(max_align_t);
    struct cfg_chunk *c = b->chunks;
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

char *cfg_strndup(struct cfg_box *b, const char *s, size_t n)
{
    char *p = cfg_alloc(b, n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

void cfg_box_free(struct cfg_box *b)
{
    if (!b)
        return;
    for (struct cfg_chunk *c = b->chunks, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(b);
}

struct cfg_box *cfg_box_new(void)
{
    struct cfg_box *b = calloc(1, sizeof(*b));
    if (b)
        atomic_init(&b->cfg.refs, 1);
    return b;
}

/* ------------------------------------------------------------------------------------------
 * Load context, key paths and error reporting.
 * ------------------------------------------------------------------------------------------ */

size_t cfg_path_push(struct cfg_ld *ld, const char *fmt, ...)
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

void cfg_path_pop(struct cfg_ld *ld, size_t old)
{
    ld->pathlen = old;
    ld->path[old] = '\0';
}

/* libfyaml 0.7 exports no node start mark, but it does compute one when it reports about a
 * node. With the diagnostic object in collect mode, reporting an empty note and reading the
 * collected entry back gives the node's 1-based line and column without any output. Only
 * error paths and the duplicate-host check pay for this. */
void cfg_node_pos(struct cfg_ld *ld, struct fy_node *n, int *line, int *col)
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
int cfg_fail(struct cfg_ld *ld, struct fy_node *n, const char *fmt, ...)
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
        cfg_node_pos(ld, n, &line, &col);
        snprintf(ld->err, ld->errlen, "%s:%d:%d: %s%s%s", ld->name, line, col, ld->path, sep, msg);
    }
    return MOAT_ERR;
}

int cfg_oom(struct cfg_ld *ld)
{
    return cfg_fail(ld, NULL, "out of memory");
}

/* ------------------------------------------------------------------------------------------
 * Node helpers.
 * ------------------------------------------------------------------------------------------ */

struct fy_node *cfg_deref(struct fy_node *n)
{
    if (n && fy_node_is_alias(n))
        return fy_node_resolve_alias(n);
    return n;
}

/* YAML's null: an empty plain value, "~" or "null". */
bool cfg_is_null(struct fy_node *n)
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

const char *cfg_what(struct fy_node *n)
{
    if (cfg_is_null(n))
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
int cfg_scalar(struct cfg_ld *ld, struct fy_node *n, char *buf, size_t bufsz, const char *want)
{
    if (!n || fy_node_get_type(n) != FYNT_SCALAR || cfg_is_null(n))
        return cfg_fail(ld, n, "expected %s, got %s", want, cfg_what(n));
    size_t len;
    const char *s = fy_node_get_scalar(n, &len);
    if (!s || len >= bufsz)
        return cfg_fail(ld, n, "value too long (at most %zu bytes)", bufsz - 1);
    if (memchr(s, '\0', len))
        return cfg_fail(ld, n, "value contains a NUL byte");
    memcpy(buf, s, len);
    buf[len] = '\0';
    return MOAT_OK;
}

/* Finds <key>'s value in <map> by plain comparison (libfyaml's lookup would parse <key> as
 * YAML first). */
struct fy_node *cfg_map_lookup(struct fy_node *map, const char *key)
{
    if (!map || fy_node_get_type(map) != FYNT_MAPPING)
        return NULL;
    void *it = NULL;
    struct fy_node_pair *p;
    size_t kl = strlen(key);
    while ((p = fy_node_mapping_iterate(map, &it)) != NULL) {
        struct fy_node *kn = cfg_deref(fy_node_pair_key(p));
        size_t len;
        const char *s =
            kn && fy_node_get_type(kn) == FYNT_SCALAR ? fy_node_get_scalar(kn, &len) : NULL;
        if (s && len == kl && memcmp(s, key, kl) == 0)
            return cfg_deref(fy_node_pair_value(p));
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
char *cfg_resolve_path(struct cfg_ld *ld, const char *p)
{
    if (p[0] == '/' || !ld->basedir) {
        return cfg_strndup(ld->box, p, strlen(p));
    }
    size_t n = strlen(ld->basedir) + 1 + strlen(p);
    char *out = cfg_alloc(ld->box, n + 1);
    if (out)
        snprintf(out, n + 1, "%s/%s", ld->basedir, p);
    return out;
}

/* A token (RFC 9110 5.6.2): what a header field name, a cookie name or Via's pseudonym must
 * be to go on the wire as is. */
bool cfg_is_token(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s))
            return false;
    return true;
}

/* --- value parsers for the generic types ------------------------------------------------ */

int cfg_parse_uint_text(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n,
                        const char *s, uint64_t *v)
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
        return cfg_fail(ld, n, "\"%s\" is not a whole number from %llu to %llu", s,
                        (unsigned long long)k->min, (unsigned long long)k->max);
    *v = x;
    return MOAT_OK;
}

static int parse_value(struct cfg_ld *ld, const struct cfg_key *k, struct fy_node *n, void *base)
{
    char buf[4096], lo[32], hi[32];
    uint64_t v;
    void *field = (char *)base + k->off;

    switch (k->type) {
    case KT_MAP:
        return cfg_walk(ld, k->sub, n, base, false);
    case KT_CUSTOM:
        return k->fn(ld, k, n, base);
    case KT_DURATION:
        if (cfg_scalar(ld, n, buf, sizeof(buf), "a duration") != MOAT_OK)
            return MOAT_ERR;
        if (moat_parse_duration_ms(buf, &v) != MOAT_OK)
            return cfg_fail(ld, n, "\"%s\" is not a duration (use e.g. 500ms, 10s, 5m)", buf);
        if (v < k->min || v > k->max) {
            fmt_duration(lo, sizeof(lo), k->min);
            fmt_duration(hi, sizeof(hi), k->max);
            return cfg_fail(ld, n, "%s is out of range (%s to %s)", buf, k->min ? lo : "0", hi);
        }
        store_uint(field, k->width, v);
        return MOAT_OK;
    case KT_SIZE:
        if (cfg_scalar(ld, n, buf, sizeof(buf), "a size") != MOAT_OK)
            return MOAT_ERR;
        if (moat_parse_size(buf, &v) != MOAT_OK)
            return cfg_fail(ld, n, "\"%s\" is not a size (use e.g. 512, 16KiB, 8MiB)", buf);
        if (v < k->min || v > k->max) {
            fmt_size(lo, sizeof(lo), k->min);
            fmt_size(hi, sizeof(hi), k->max);
            return cfg_fail(ld, n, "%s is out of range (%s to %s)", buf, lo, hi);
        }
        store_uint(field, k->width, v);
        return MOAT_OK;
    case KT_UINT:
        if (cfg_scalar(ld, n, buf, sizeof(buf), "a whole number") != MOAT_OK)
            return MOAT_ERR;
        if (cfg_parse_uint_text(ld, k, n, buf, &v) != MOAT_OK)
            return MOAT_ERR;
        store_uint(field, k->width, v);
        return MOAT_OK;
    case KT_STRING: {
        if (cfg_scalar(ld, n, buf, sizeof(buf), "a string") != MOAT_OK)
            return MOAT_ERR;
        char *s = cfg_strndup(ld->box, buf, strlen(buf));
        if (!s)
            return cfg_oom(ld);
        memcpy(field, &s, sizeof(s));
        return MOAT_OK;
    }
    case KT_ENUM: {
        if (cfg_scalar(ld, n, buf, sizeof(buf), "one of the listed words") != MOAT_OK)
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
        return cfg_fail(ld, n, "\"%s\" is not one of: %s", buf, list);
    }
    }
    return MOAT_ERR;
}

/* Builds a one-node document from default text <def> and parses it like user input, so a
 * default is spelled exactly as a user would write it and shown as such in the docs. */
static int apply_default(struct cfg_ld *ld, const struct cfg_key *k, void *base)
{
    struct fy_parse_cfg pc = {.flags = FYPCF_QUIET, .diag = ld->diag};
    struct fy_document *d = fy_document_build_from_string(&pc, k->def, strlen(k->def));
    if (!d)
        return cfg_fail(ld, NULL, "internal error: bad default \"%s\"", k->def);
    int rc = parse_value(ld, k, cfg_deref(fy_document_root(d)), base);
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

static int unknown_key(struct cfg_ld *ld, const struct cfg_table *t, struct fy_node *kn,
                       const char *name)
{
    if (strcmp(name, "<<") == 0)
        return cfg_fail(ld, kn, "merge keys (<<) are not supported; repeat the keys instead");
    size_t best = 99, bi = 0;
    for (size_t i = 0; i < t->n; i++) {
        size_t d = edit_distance(name, t->keys[i].name);
        if (d < best) {
            best = d;
            bi = i;
        }
    }
    size_t old = cfg_path_push(ld, "%s%s", ld->pathlen ? "." : "", name);
    int rc;
    if (best <= 2 && best < strlen(name)) {
        rc = cfg_fail(ld, kn, "unknown key (did you mean \"%s\"?)", t->keys[bi].name);
    } else {
        char list[384];
        size_t used = 0;
        for (size_t i = 0; i < t->n; i++) {
            used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%s", i ? ", " : "",
                                     t->keys[i].name);
            used = MOAT_MIN(used, sizeof(list) - 1);
        }
        rc = cfg_fail(ld, kn, "unknown key (known here: %s)", list);
    }
    cfg_path_pop(ld, old);
    return rc;
}

/* The generic map walker: rejects unknown and duplicate keys in document order, then parses
 * each row in table order (so later rows can rely on earlier ones, e.g. sites on pools),
 * applying defaults for absent keys. With <defaults_only>, <map> is ignored and required keys
 * are not enforced (used to fill a struct the caller completes itself). */
int cfg_walk(struct cfg_ld *ld, const struct cfg_table *t, struct fy_node *map, void *base,
             bool defaults_only)
{
    struct fy_node *keyn[CFG_MAX_KEYS] = {0}, *valn[CFG_MAX_KEYS] = {0};
    bool present[CFG_MAX_KEYS] = {0};
    struct fy_node *at = defaults_only ? NULL : map; /* where "missing key" errors point */

    if (defaults_only || cfg_is_null(map))
        map = NULL;
    if (map && fy_node_get_type(map) != FYNT_MAPPING)
        return cfg_fail(ld, map, "expected a map of keys, got %s", cfg_what(map));
    if (map) {
        void *it = NULL;
        struct fy_node_pair *p;
        while ((p = fy_node_mapping_iterate(map, &it)) != NULL) {
            struct fy_node *kn = cfg_deref(fy_node_pair_key(p));
            char name[128];
            if (cfg_scalar(ld, kn, name, sizeof(name), "a key name") != MOAT_OK)
                return MOAT_ERR;
            size_t i;
            for (i = 0; i < t->n; i++)
                if (strcmp(name, t->keys[i].name) == 0)
                    break;
            if (i == t->n)
                return unknown_key(ld, t, kn, name);
            if (present[i]) {
                int l, c;
                cfg_node_pos(ld, keyn[i], &l, &c);
                size_t old = cfg_path_push(ld, "%s%s", ld->pathlen ? "." : "", name);
                cfg_fail(ld, kn, "duplicate key (first given at line %d, column %d)", l, c);
                cfg_path_pop(ld, old);
                return MOAT_ERR;
            }
            present[i] = true;
            keyn[i] = kn;
            struct fy_node *raw = fy_node_pair_value(p);
            valn[i] = cfg_deref(raw);
            if (raw && !valn[i])
                return cfg_fail(ld, raw, "the alias cannot be resolved");
        }
    }

    for (size_t i = 0; i < t->n; i++) {
        const struct cfg_key *k = &t->keys[i];
        size_t old = cfg_path_push(ld, "%s%s", ld->pathlen ? "." : "", k->name);
        int rc = MOAT_OK;
        if (present[i]) {
            /* A key without a value ("admin:") points errors at the key itself. */
            struct fy_node *v = valn[i] ? valn[i] : keyn[i];
            ld->cur_key = keyn[i];
            if (k->type == KT_MAP)
                rc = cfg_walk(ld, k->sub, v, base, false);
            else if (cfg_is_null(valn[i]))
                rc = cfg_fail(ld, v, "no value given");
            else
                rc = parse_value(ld, k, v, base);
        } else if (!defaults_only &&
                   ((k->flags & K_REQUIRED) || ((k->flags & K_REQUIRED_FILE) && !ld->quick))) {
            rc = cfg_fail(ld, at, "required key is missing");
        } else if ((k->flags & K_PRESENCE) == 0 && k->def) {
            rc = apply_default(ld, k, base);
        } else if (k->type == KT_MAP && (k->flags & K_PRESENCE) == 0) {
            rc = cfg_walk(ld, k->sub, NULL, base, defaults_only);
        }
        cfg_path_pop(ld, old);
        if (rc != MOAT_OK)
            return rc;
    }
    if (t->post && !defaults_only)
        return t->post(ld, map ? map : at, base);
    return MOAT_OK;
}

/* --- helpers for custom parsers ----------------------------------------------------------- */

/* Iterates a "string or list of strings" value: calls <each> per element with its node. */
int cfg_each_string(struct cfg_ld *ld, struct fy_node *n, size_t *count, cfg_elem_fn *each,
                    void *ud, bool allow_empty)
{
    if (cfg_is_null(n)) {
        if (!allow_empty)
            return cfg_fail(ld, n, "expected a value or a list, got nothing");
        *count = 0;
        return MOAT_OK;
    }
    if (fy_node_get_type(n) == FYNT_SCALAR) {
        *count = 1;
        return each ? each(ld, n, 0, ud) : MOAT_OK;
    }
    if (fy_node_get_type(n) != FYNT_SEQUENCE)
        return cfg_fail(ld, n, "expected a value or a list of values, got %s", cfg_what(n));
    size_t cnt = (size_t)MOAT_MAX(fy_node_sequence_item_count(n), 0);
    if (cnt == 0 && !allow_empty)
        return cfg_fail(ld, n, "the list must not be empty");
    *count = cnt;
    if (!each)
        return MOAT_OK;
    void *it = NULL;
    struct fy_node *e;
    size_t i = 0;
    while ((e = fy_node_sequence_iterate(n, &it)) != NULL) {
        size_t old = cfg_path_push(ld, "[%zu]", i);
        int rc = each(ld, cfg_deref(e), i, ud);
        cfg_path_pop(ld, old);
        if (rc != MOAT_OK)
            return rc;
        i++;
    }
    return MOAT_OK;
}

int cfg_parse_addr_node(struct cfg_ld *ld, struct fy_node *n, struct moat_addr *out, char *host,
                        size_t hostlen, unsigned *port)
{
    char buf[300], msg[256];
    if (cfg_scalar(ld, n, buf, sizeof(buf), "an address (HOST:PORT)") != MOAT_OK)
        return MOAT_ERR;
    if (moat_addr_parse_ex(buf, out, host, hostlen, port, msg, sizeof(msg)) != MOAT_OK)
        return cfg_fail(ld, n, "%s", msg);
    return MOAT_OK;
}

const char *const cfg_bool_names[] = {"false", "true", NULL};

/* ------------------------------------------------------------------------------------------
 * The key reference.
 * ------------------------------------------------------------------------------------------ */

static void key_type_name(const struct cfg_key *k, char *buf, size_t n)
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

static void keys_rec(const struct cfg_table *t, const char *prefix, moat_config_key_fn *fn,
                     void *ud)
{
    for (size_t i = 0; i < t->n; i++) {
        const struct cfg_key *k = &t->keys[i];
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
    keys_rec(&cfg_root_table, "", fn, ud);
}
