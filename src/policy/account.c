/*
 * provgate core: account rules (attribute mapping, transforms, username
 * templates with collision handling, required attributes, initial state).
 *
 * A rule is compiled once at load (regexes with regcomp, lookup tables
 * sorted for binary search, templates split into literal and attribute
 * parts) and is read-only afterwards. Values are computed in fixed
 * buffers of PG_ACCT_VALUE_MAX bytes: a value is either a string or
 * missing (with the cause kept for the refusal reason). Transforms work
 * on bytes; lower/upper change ASCII letters only and pass every other
 * byte (UTF-8 sequences) through; substring counts UTF-8 characters.
 *
 * Limits: 64 attributes per rule, 16 transforms per expression, 16
 * parts per concat or template, concat nested 4 deep, template and
 * regex source 512 bytes, literals and lookup keys/values 256 bytes,
 * 1024 lookup entries, username max_length 1-256, max_tries 1-10000.
 */
#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "provgate/config.h"
#include "provgate/policy.h"
#include "account.h"

#define A_MAX_ATTRS 64u
#define A_MAX_XF 16u
#define A_MAX_PARTS 16u
#define A_MAX_DEPTH 4u
#define A_MAX_SRC 512u
#define A_MAX_LIT 256u
#define A_MAX_TABLE 1024u

#define TRY(x) do { st = (x); if (st != PG_OK) { return st; } } while (0)

typedef enum { X_LOWER, X_UPPER, X_TRIM, X_SUBSTR, X_REPLACE, X_DEFAULT,
               X_LOOKUP } xkind_t;

typedef struct xform {
    xkind_t k;
    size_t start, len;     /* X_SUBSTR, in characters */
    int has_len;
    regex_t re;            /* X_REPLACE */
    int re_ok;
    char *with;            /* X_REPLACE replacement ("\1" groups) */
    char *def;             /* X_DEFAULT value, X_LOOKUP default or NULL */
    char **keys, **vals;   /* X_LOOKUP, sorted by key */
    size_t nkv;
} xform_t;

typedef enum { E_ATTR, E_VALUE, E_CONCAT } ekind_t;

typedef struct expr {
    ekind_t k;
    char *s;               /* E_ATTR: attribute name; E_VALUE: literal */
    struct expr *parts;    /* E_CONCAT (also a compiled template) */
    size_t nparts;
    xform_t *xf;
    size_t nxf;
} expr_t;

struct pg_acct_rule {
    char *target;
    char *initial_state;   /* "active" or "disabled" */
    char **names;          /* account attribute names */
    expr_t *ex;            /* their expressions */
    size_t n;
    int has_user;
    expr_t user;
    unsigned start, max_tries, max_len;
    size_t *req;           /* required: indexes into names */
    size_t nreq;
};

/* A computed value: a string of n bytes, or missing (cause says why). */
typedef struct aval {
    char b[PG_ACCT_VALUE_MAX + 1];
    size_t n;
    int missing;
    const char *cause;     /* static text or an attribute name (rule) */
    int cause_attr;        /* 1: cause is an identity attribute name */
} aval_t;

/* ---- freeing --------------------------------------------------------- */

/* Free what an expression owns (not e itself); e is zeroed. NULL is fine. */
static void
expr_clear(expr_t *e)
{
    size_t i;

    if (e == NULL) {
        return;
    }
    free(e->s);
    for (i = 0; i < e->nparts; i++) {
        expr_clear(&e->parts[i]);
    }
    free(e->parts);
    for (i = 0; i < e->nxf; i++) {
        xform_t *x = &e->xf[i];
        size_t j;
        if (x->re_ok) {
            regfree(&x->re);
        }
        free(x->with);
        free(x->def);
        for (j = 0; j < x->nkv; j++) {
            free(x->keys[j]);
            free(x->vals[j]);
        }
        free(x->keys);
        free(x->vals);
    }
    free(e->xf);
    memset(e, 0, sizeof(*e));
}

/* Release a rule and everything it owns. NULL is fine. */
void
pg_acct_free(pg_acct_rule_t *r)
{
    size_t i;

    if (r == NULL) {
        return;
    }
    free(r->target);
    free(r->initial_state);
    for (i = 0; i < r->n; i++) {
        free(r->names[i]);
        expr_clear(&r->ex[i]);
    }
    free(r->names);
    free(r->ex);
    expr_clear(&r->user);
    free(r->req);
    free(r);
}

/* The rule's target (owned by the rule). */
const char *
pg_acct_target(const pg_acct_rule_t *r)
{
    return r->target;
}

/* ---- parsing --------------------------------------------------------- */

/* "<base><suffix>" into buf (truncated, always NUL-terminated). */
static void
apath(char *buf, size_t n, const char *base, const char *suffix)
{
    size_t bl = strnlen(base, n - 1), sl = strlen(suffix);

    memmove(buf, base, bl);   /* base may be buf itself */
    if (sl > n - 1 - bl) {
        sl = n - 1 - bl;
    }
    memcpy(buf + bl, suffix, sl);
    buf[bl + sl] = '\0';
}

/* "<base><name>[i]" into buf. */
static void
apath_idx(char *buf, size_t n, const char *base, const char *name, size_t i)
{
    char suf[64];
    int r = snprintf(suf, sizeof(suf), "%.40s[%zu]", name, i);

    (void)r;
    apath(buf, n, base, suf);
}

/* 1 when s is 1..max bytes of [A-Za-z0-9] or characters of extra. */
static int
aword_ok(const char *s, size_t len, size_t max, const char *extra)
{
    size_t i;

    if (len == 0 || len > max) {
        return 0;
    }
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c >= '0' && c <= '9') || (c != 0 && strchr(extra, c)))) {
            return 0;
        }
    }
    return 1;
}

/*
 * A string JSON value v at path (which names it) into a malloc'd copy:
 * at most max bytes, no NUL byte, empty only when may_be_empty.
 */
static pg_status_t
str_dup(const json_t *v, const char *path, size_t max, int may_be_empty,
        char **out, pg_err_t *err)
{
    size_t n;

    *out = NULL;
    if (!json_is_string(v)) {
        pg_err_set(err, "%s: must be a string", path);
        return PG_ERR_CONFIG;
    }
    n = json_string_length(v);
    if (n == 0 && !may_be_empty) {
        pg_err_set(err, "%s: must not be empty", path);
        return PG_ERR_CONFIG;
    }
    if (n > max || memchr(json_string_value(v), '\0', n) != NULL) {
        pg_err_set(err, "%s: must be a string of at most %zu bytes without "
                   "NUL", path, max);
        return PG_ERR_CONFIG;
    }
    *out = strdup(json_string_value(v));
    return *out != NULL ? PG_OK : PG_ERR_NOMEM;
}

/* Reject POSIX back-references ("\1".."\9") in a pattern. */
static int
re_has_backref(const char *re)
{
    size_t i;

    for (i = 0; re[i] != '\0'; i++) {
        if (re[i] == '\\') {
            if (re[i + 1] >= '1' && re[i + 1] <= '9') {
                return 1;
            }
            if (re[i + 1] != '\0') {
                i++;
            }
        }
    }
    return 0;
}

/* The keys being sorted (qsort has no context argument; load time only). */
static char **g_keys;

/* Order lookup entry indexes by key (qsort callback). */
static int
kv_cmp(const void *a, const void *b)
{
    return strcmp(g_keys[*(const size_t *)a], g_keys[*(const size_t *)b]);
}

/* {"replace": {"regex": re, "with": text}} */
static pg_status_t
parse_replace(xform_t *x, const json_t *o, const char *path, pg_err_t *err)
{
    static const char *const keys[] = {"regex", "with", NULL};
    char kp[PG_ERR_MSG_MAX], msg[128], *src = NULL;
    size_t i;
    int rc;
    pg_status_t st;

    if (!json_is_object(o)) {
        pg_err_set(err, "%s: must be {\"regex\": ..., \"with\": ...}", path);
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_keys(o, path, keys, err));
    apath(kp, sizeof(kp), path, ".regex");
    if (json_object_get(o, "regex") == NULL) {
        pg_err_set(err, "%s: missing required field", kp);
        return PG_ERR_CONFIG;
    }
    TRY(str_dup(json_object_get(o, "regex"), kp, A_MAX_SRC, 0, &src, err));
    if (re_has_backref(src)) {
        free(src);
        pg_err_set(err, "%s: back-references are not supported", kp);
        return PG_ERR_CONFIG;
    }
    rc = regcomp(&x->re, src, REG_EXTENDED);
    free(src);
    if (rc != 0) {
        regerror(rc, &x->re, msg, sizeof(msg));
        regfree(&x->re);
        pg_err_set(err, "%s: invalid regular expression: %s", kp, msg);
        return PG_ERR_CONFIG;
    }
    x->re_ok = 1;
    apath(kp, sizeof(kp), path, ".with");
    if (json_object_get(o, "with") == NULL) {
        pg_err_set(err, "%s: missing required field", kp);
        return PG_ERR_CONFIG;
    }
    TRY(str_dup(json_object_get(o, "with"), kp, A_MAX_LIT, 1, &x->with,
                err));
    for (i = 0; x->with[i] != '\0'; i++) {
        if (x->with[i] != '\\') {
            continue;
        }
        if (x->with[i + 1] >= '0' && x->with[i + 1] <= '9') {
            if ((size_t)(x->with[i + 1] - '0') > x->re.re_nsub) {
                pg_err_set(err, "%s: \\%c refers to a group the regex does "
                           "not have (it has %zu)", kp, x->with[i + 1],
                           x->re.re_nsub);
                return PG_ERR_CONFIG;
            }
            i++;
        } else if (x->with[i + 1] == '\\') {
            i++;
        } else {
            pg_err_set(err, "%s: a backslash must be followed by a digit "
                       "(group) or a backslash", kp);
            return PG_ERR_CONFIG;
        }
    }
    return PG_OK;
}

/* {"lookup": {"table": {k: v, ...}, "default": v?}} */
static pg_status_t
parse_lookup(xform_t *x, const json_t *o, const char *path, pg_err_t *err)
{
    static const char *const keys[] = {"table", "default", NULL};
    char kp[PG_ERR_MSG_MAX], ep[PG_ERR_MSG_MAX];
    const json_t *t, *v;
    const char *k;
    size_t n, i, *ord;
    char **sk, **sv;
    pg_status_t st;

    if (!json_is_object(o)) {
        pg_err_set(err, "%s: must be {\"table\": {...}, \"default\": ...}",
                   path);
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_keys(o, path, keys, err));
    apath(kp, sizeof(kp), path, ".table");
    t = json_object_get(o, "table");
    if (t == NULL) {
        pg_err_set(err, "%s: missing required field", kp);
        return PG_ERR_CONFIG;
    }
    if (!json_is_object(t) || json_object_size(t) == 0 ||
        json_object_size(t) > A_MAX_TABLE) {
        pg_err_set(err, "%s: must be an object of 1 to %u string entries",
                   kp, A_MAX_TABLE);
        return PG_ERR_CONFIG;
    }
    if (json_object_get(o, "default") != NULL) {
        apath(ep, sizeof(ep), path, ".default");
        TRY(str_dup(json_object_get(o, "default"), ep, A_MAX_LIT, 1, &x->def,
                    err));
    }
    n = json_object_size(t);
    x->keys = calloc(n, sizeof(*x->keys));
    x->vals = calloc(n, sizeof(*x->vals));
    if (x->keys == NULL || x->vals == NULL) {
        return PG_ERR_NOMEM;
    }
    json_object_foreach((json_t *)t, k, v) {
        size_t kl = strlen(k);
        char suf[80];
        int r = snprintf(suf, sizeof(suf), "[\"%.64s\"]", k);
        (void)r;
        apath(ep, sizeof(ep), kp, suf);
        if (kl > A_MAX_LIT) {
            pg_err_set(err, "%s: key longer than %u bytes", kp, A_MAX_LIT);
            return PG_ERR_CONFIG;
        }
        x->keys[x->nkv] = strdup(k);
        x->nkv++;
        if (x->keys[x->nkv - 1] == NULL) {
            return PG_ERR_NOMEM;
        }
        TRY(str_dup(v, ep, A_MAX_LIT, 1, &x->vals[x->nkv - 1], err));
    }
    /* sort (key, value) pairs by key for binary search */
    ord = calloc(n, sizeof(*ord));
    sk = calloc(n, sizeof(*sk));
    sv = calloc(n, sizeof(*sv));
    if (ord == NULL || sk == NULL || sv == NULL) {
        free(ord);
        free(sk);
        free(sv);
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < n; i++) {
        ord[i] = i;
    }
    g_keys = x->keys;
    qsort(ord, n, sizeof(*ord), kv_cmp);
    g_keys = NULL;
    for (i = 0; i < n; i++) {
        sk[i] = x->keys[ord[i]];
        sv[i] = x->vals[ord[i]];
    }
    free(x->keys);
    free(x->vals);
    free(ord);
    x->keys = sk;
    x->vals = sv;
    return PG_OK;
}

/* One transform: "lower" | "upper" | "trim" | {one of the operators}. */
static pg_status_t
parse_xform(xform_t *x, const json_t *o, const char *path, pg_err_t *err)
{
    static const char *const sub_keys[] = {"start", "length", NULL};
    static const char *const ops[] = {"substring", "replace", "default",
                                      "lookup", NULL};
    char kp[PG_ERR_MSG_MAX];
    const char *op = NULL;
    const json_t *v;
    size_t i;
    pg_status_t st;

    if (json_is_string(o)) {
        const char *s = json_string_value(o);
        if (strcmp(s, "lower") == 0 || strcmp(s, "upper") == 0 ||
            strcmp(s, "trim") == 0) {
            x->k = s[0] == 'l' ? X_LOWER : s[0] == 'u' ? X_UPPER : X_TRIM;
            return PG_OK;
        }
    }
    if (!json_is_object(o) || json_object_size(o) != 1) {
        pg_err_set(err, "%s: unknown transform (supported: \"lower\", "
                   "\"upper\", \"trim\", {\"substring\"}, {\"replace\"}, "
                   "{\"default\"}, {\"lookup\"})", path);
        return PG_ERR_CONFIG;
    }
    for (i = 0; ops[i] != NULL; i++) {
        if (json_object_get(o, ops[i]) != NULL) {
            op = ops[i];
        }
    }
    if (op == NULL) {
        pg_err_set(err, "%s: unknown transform (supported: \"lower\", "
                   "\"upper\", \"trim\", {\"substring\"}, {\"replace\"}, "
                   "{\"default\"}, {\"lookup\"})", path);
        return PG_ERR_CONFIG;
    }
    v = json_object_get(o, op);
    apath(kp, sizeof(kp), path, ".");
    apath(kp, sizeof(kp), kp, op);
    if (strcmp(op, "substring") == 0) {
        unsigned u;
        x->k = X_SUBSTR;
        if (!json_is_object(v)) {
            pg_err_set(err, "%s: must be {\"start\": N, \"length\": M}", kp);
            return PG_ERR_CONFIG;
        }
        TRY(pg_cfg_keys(v, kp, sub_keys, err));
        TRY(pg_cfg_uint(v, kp, "start", 0, 0, PG_ACCT_VALUE_MAX, &u, err));
        x->start = u;
        if (json_object_get(v, "length") != NULL) {
            TRY(pg_cfg_uint(v, kp, "length", 0, 0, PG_ACCT_VALUE_MAX, &u,
                            err));
            x->len = u;
            x->has_len = 1;
        }
        return PG_OK;
    }
    if (strcmp(op, "replace") == 0) {
        x->k = X_REPLACE;
        return parse_replace(x, v, kp, err);
    }
    if (strcmp(op, "default") == 0) {
        x->k = X_DEFAULT;
        return str_dup(v, kp, A_MAX_LIT, 1, &x->def, err);
    }
    x->k = X_LOOKUP;
    return parse_lookup(x, v, kp, err);
}

/*
 * Compile a "template": literal text with "${attr}" placeholders ("$$" is
 * a literal "$") into concat parts of e.
 */
static pg_status_t
parse_template(expr_t *e, const char *t, const char *path, pg_err_t *err)
{
    size_t i = 0, n = strlen(t);
    char lit[A_MAX_SRC + 1];
    size_t ln = 0;

    e->k = E_CONCAT;
    e->parts = calloc(A_MAX_PARTS, sizeof(*e->parts));
    if (e->parts == NULL) {
        return PG_ERR_NOMEM;
    }
    while (i <= n) {
        int flush = i == n || (t[i] == '$' && t[i + 1] == '{');
        if (flush && ln > 0) {
            if (e->nparts == A_MAX_PARTS) {
                goto too_many;
            }
            e->parts[e->nparts].k = E_VALUE;
            e->parts[e->nparts].s = strndup(lit, ln);
            if (e->parts[e->nparts++].s == NULL) {
                return PG_ERR_NOMEM;
            }
            ln = 0;
        }
        if (i == n) {
            break;
        }
        if (t[i] == '$' && t[i + 1] == '$') {
            lit[ln++] = '$';
            i += 2;
        } else if (t[i] == '$' && t[i + 1] == '{') {
            const char *end = strchr(t + i + 2, '}');
            size_t nl;
            if (end == NULL) {
                pg_err_set(err, "%s: unterminated \"${\" at byte %zu", path,
                           i);
                return PG_ERR_CONFIG;
            }
            nl = (size_t)(end - (t + i + 2));
            if (!aword_ok(t + i + 2, nl, 128, "_.-")) {
                pg_err_set(err, "%s: placeholder at byte %zu must name an "
                           "attribute (1-128 of A-Z a-z 0-9 _ . -)", path, i);
                return PG_ERR_CONFIG;
            }
            if (e->nparts == A_MAX_PARTS) {
                goto too_many;
            }
            e->parts[e->nparts].k = E_ATTR;
            e->parts[e->nparts].s = strndup(t + i + 2, nl);
            if (e->parts[e->nparts++].s == NULL) {
                return PG_ERR_NOMEM;
            }
            i += nl + 3;
        } else if (t[i] == '$') {
            pg_err_set(err, "%s: a lone \"$\" at byte %zu (write \"$$\" for "
                       "a literal \"$\")", path, i);
            return PG_ERR_CONFIG;
        } else {
            lit[ln++] = t[i++];
        }
    }
    if (e->nparts == 0) {
        pg_err_set(err, "%s: must not be empty", path);
        return PG_ERR_CONFIG;
    }
    return PG_OK;
too_many:
    pg_err_set(err, "%s: more than %u parts", path, A_MAX_PARTS);
    return PG_ERR_CONFIG;
}

static pg_status_t parse_expr(expr_t *e, const json_t *o, const char *path,
                              unsigned depth, const char *const *extra,
                              pg_err_t *err);

/*
 * An expression: exactly one source of "attr", "value", "concat",
 * "template", and optional "transforms"; extra lists further allowed
 * members (the username's).
 */
static pg_status_t
parse_expr(expr_t *e, const json_t *o, const char *path, unsigned depth,
           const char *const *extra, pg_err_t *err)
{
    static const char *const srcs[] = {"attr", "value", "concat", "template",
                                       NULL};
    const char *keys[16];
    char kp[PG_ERR_MSG_MAX], ep[PG_ERR_MSG_MAX];
    const char *src = NULL;
    const json_t *a;
    size_t i, n = 0, nsrc = 0;
    pg_status_t st;

    if (!json_is_object(o)) {
        pg_err_set(err, "%s: must be an object with one of attr, value, "
                   "concat, template", path);
        return PG_ERR_CONFIG;
    }
    for (i = 0; srcs[i] != NULL; i++) {
        keys[n++] = srcs[i];
        if (json_object_get(o, srcs[i]) != NULL) {
            src = srcs[i];
            nsrc++;
        }
    }
    keys[n++] = "transforms";
    for (i = 0; extra != NULL && extra[i] != NULL && n < 15; i++) {
        keys[n++] = extra[i];
    }
    keys[n] = NULL;
    TRY(pg_cfg_keys(o, path, keys, err));
    if (nsrc != 1) {
        pg_err_set(err, "%s: needs exactly one of attr, value, concat, "
                   "template (has %zu)", path, nsrc);
        return PG_ERR_CONFIG;
    }
    apath(kp, sizeof(kp), path, ".");
    apath(kp, sizeof(kp), kp, src);
    a = json_object_get(o, src);
    if (strcmp(src, "attr") == 0) {
        e->k = E_ATTR;
        TRY(str_dup(a, kp, 128, 0, &e->s, err));
        if (!aword_ok(e->s, strlen(e->s), 128, "_.-")) {
            pg_err_set(err, "%s: must be 1-128 characters of "
                       "A-Z a-z 0-9 _ . -", kp);
            return PG_ERR_CONFIG;
        }
    } else if (strcmp(src, "value") == 0) {
        e->k = E_VALUE;
        TRY(str_dup(a, kp, A_MAX_LIT, 1, &e->s, err));
    } else if (strcmp(src, "template") == 0) {
        char *t = NULL;
        TRY(str_dup(a, kp, A_MAX_SRC, 0, &t, err));
        st = parse_template(e, t, kp, err);
        free(t);
        if (st != PG_OK) {
            return st;
        }
    } else {
        e->k = E_CONCAT;
        if (depth >= A_MAX_DEPTH) {
            pg_err_set(err, "%s: concat nested deeper than %u levels", kp,
                       A_MAX_DEPTH);
            return PG_ERR_CONFIG;
        }
        if (!json_is_array(a) || json_array_size(a) == 0 ||
            json_array_size(a) > A_MAX_PARTS) {
            pg_err_set(err, "%s: must be an array of 1 to %u expressions",
                       kp, A_MAX_PARTS);
            return PG_ERR_CONFIG;
        }
        e->parts = calloc(json_array_size(a), sizeof(*e->parts));
        if (e->parts == NULL) {
            return PG_ERR_NOMEM;
        }
        for (i = 0; i < json_array_size(a); i++) {
            apath_idx(ep, sizeof(ep), path, ".concat", i);
            e->nparts = i + 1;
            TRY(parse_expr(&e->parts[i], json_array_get(a, i), ep, depth + 1,
                           NULL, err));
        }
    }
    a = json_object_get(o, "transforms");
    if (a == NULL) {
        return PG_OK;
    }
    apath(kp, sizeof(kp), path, ".transforms");
    if (!json_is_array(a) || json_array_size(a) > A_MAX_XF) {
        pg_err_set(err, "%s: must be an array of at most %u transforms", kp,
                   A_MAX_XF);
        return PG_ERR_CONFIG;
    }
    e->xf = calloc(json_array_size(a) + 1, sizeof(*e->xf));
    if (e->xf == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < json_array_size(a); i++) {
        apath_idx(ep, sizeof(ep), path, ".transforms", i);
        e->nxf = i + 1;
        TRY(parse_xform(&e->xf[i], json_array_get(a, i), ep, err));
    }
    return PG_OK;
}

/* The rule body; *r is freed by the caller on failure. */
static pg_status_t
parse_rule(pg_acct_rule_t *r, const json_t *o, const char *path,
           const struct pg_config *cfg, pg_err_t *err)
{
    static const char *const keys[] = {"target", "description",
                                       "initial_state", "attributes",
                                       "username", "required", NULL};
    static const char *const ukeys[] = {"collision", "max_length", NULL};
    static const char *const ckeys[] = {"start", "max_tries", NULL};
    char kp[PG_ERR_MSG_MAX], ep[PG_ERR_MSG_MAX];
    const json_t *a, *v;
    const char *k;
    size_t i, j;
    pg_status_t st;

    if (!json_is_object(o)) {
        pg_err_set(err, "%s: must be an object", path);
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_keys(o, path, keys, err));
    TRY(pg_cfg_str(o, path, "target", 1, NULL, &r->target, err));
    if (cfg != NULL && pg_config_target(cfg, r->target) == NULL) {
        if (aword_ok(r->target, strlen(r->target), 64, "_-")) {
            pg_err_set(err, "%s.target: unknown target \"%s\"", path,
                       r->target);
        } else {
            pg_err_set(err, "%s.target: unknown target", path);
        }
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_str(o, path, "initial_state", 0, "active", &r->initial_state,
                   err));
    if (strcmp(r->initial_state, "active") != 0 &&
        strcmp(r->initial_state, "disabled") != 0) {
        pg_err_set(err, "%s.initial_state: must be \"active\" or "
                   "\"disabled\"", path);
        return PG_ERR_CONFIG;
    }
    a = json_object_get(o, "attributes");
    if (a != NULL) {
        apath(kp, sizeof(kp), path, ".attributes");
        if (!json_is_object(a) || json_object_size(a) > A_MAX_ATTRS) {
            pg_err_set(err, "%s: must be an object of at most %u attributes",
                       kp, A_MAX_ATTRS);
            return PG_ERR_CONFIG;
        }
        r->names = calloc(json_object_size(a) + 1, sizeof(*r->names));
        r->ex = calloc(json_object_size(a) + 1, sizeof(*r->ex));
        if (r->names == NULL || r->ex == NULL) {
            return PG_ERR_NOMEM;
        }
        json_object_foreach((json_t *)a, k, v) {
            if (!aword_ok(k, strlen(k), 128, "_.:-")) {
                pg_err_set(err, "%s: attribute names are 1-128 characters "
                           "of A-Z a-z 0-9 _ . : -", kp);
                return PG_ERR_CONFIG;
            }
            apath(ep, sizeof(ep), kp, ".");
            apath(ep, sizeof(ep), ep, k);
            r->names[r->n] = strdup(k);
            r->n++;
            if (r->names[r->n - 1] == NULL) {
                return PG_ERR_NOMEM;
            }
            TRY(parse_expr(&r->ex[r->n - 1], v, ep, 1, NULL, err));
        }
    }
    a = json_object_get(o, "username");
    r->start = 2;
    r->max_tries = 100;
    r->max_len = 64;
    if (a != NULL) {
        apath(kp, sizeof(kp), path, ".username");
        TRY(parse_expr(&r->user, a, kp, 1, ukeys, err));
        r->has_user = 1;
        TRY(pg_cfg_uint(a, kp, "max_length", 64, 1, 256, &r->max_len, err));
        v = json_object_get(a, "collision");
        if (v != NULL) {
            apath(ep, sizeof(ep), kp, ".collision");
            if (!json_is_object(v)) {
                pg_err_set(err, "%s: must be an object", ep);
                return PG_ERR_CONFIG;
            }
            TRY(pg_cfg_keys(v, ep, ckeys, err));
            TRY(pg_cfg_uint(v, ep, "start", 2, 0, 1000000, &r->start, err));
            TRY(pg_cfg_uint(v, ep, "max_tries", 100, 1, 10000, &r->max_tries,
                            err));
        }
    }
    a = json_object_get(o, "required");
    if (a != NULL) {
        apath(kp, sizeof(kp), path, ".required");
        if (!json_is_array(a) || json_array_size(a) > A_MAX_ATTRS) {
            pg_err_set(err, "%s: must be an array of at most %u attribute "
                       "names", kp, A_MAX_ATTRS);
            return PG_ERR_CONFIG;
        }
        r->req = calloc(json_array_size(a) + 1, sizeof(*r->req));
        if (r->req == NULL) {
            return PG_ERR_NOMEM;
        }
        for (i = 0; i < json_array_size(a); i++) {
            const json_t *e = json_array_get(a, i);
            apath_idx(ep, sizeof(ep), path, ".required", i);
            if (!json_is_string(e)) {
                pg_err_set(err, "%s: must be an attribute name", ep);
                return PG_ERR_CONFIG;
            }
            for (j = 0; j < r->n; j++) {
                if (strcmp(r->names[j], json_string_value(e)) == 0) {
                    break;
                }
            }
            if (j == r->n) {
                if (aword_ok(json_string_value(e), json_string_length(e),
                             128, "_.:-")) {
                    pg_err_set(err, "%s: \"%s\" is not one of this account's "
                               "attributes", ep, json_string_value(e));
                } else {
                    pg_err_set(err, "%s: not one of this account's "
                               "attributes", ep);
                }
                return PG_ERR_CONFIG;
            }
            r->req[r->nreq++] = j;
        }
    }
    return PG_OK;
}

/* Compile one account rule; see account.h. */
pg_status_t
pg_acct_parse(const json_t *o, const char *path, const struct pg_config *cfg,
              pg_acct_rule_t **out, pg_err_t *err)
{
    pg_acct_rule_t *r;
    pg_status_t st;

    *out = NULL;
    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return PG_ERR_NOMEM;
    }
    st = parse_rule(r, o, path, cfg, err);
    if (st != PG_OK) {
        pg_acct_free(r);
        return st;
    }
    *out = r;
    return PG_OK;
}

/* ---- evaluation ------------------------------------------------------ */

/* Make v missing with a cause. */
static void
av_missing(aval_t *v, const char *cause, int is_attr)
{
    v->n = 0;
    v->b[0] = '\0';
    v->missing = 1;
    v->cause = cause;
    v->cause_attr = is_attr;
}

/* v = s[0..n) (missing, "too long", when n exceeds the cap). */
static void
av_set(aval_t *v, const char *s, size_t n)
{
    if (n > PG_ACCT_VALUE_MAX) {
        av_missing(v, "the value is longer than 1024 bytes", 0);
        return;
    }
    memmove(v->b, s, n);
    v->b[n] = '\0';
    v->n = n;
    v->missing = 0;
}

/* Append s[0..n) to v; 0 when it would exceed the cap. */
static int
av_put(aval_t *v, const char *s, size_t n)
{
    if (n > PG_ACCT_VALUE_MAX - v->n) {
        return 0;
    }
    memcpy(v->b + v->n, s, n);
    v->n += n;
    v->b[v->n] = '\0';
    return 1;
}

/* Length of the UTF-8 character at s (1 for invalid or truncated bytes). */
static size_t
u8len(const unsigned char *s, size_t avail)
{
    size_t n, i;

    if (s[0] < 0x80) {
        return 1;
    }
    n = s[0] >= 0xF0 && s[0] <= 0xF4 ? 4 : s[0] >= 0xE0 ? 3
        : s[0] >= 0xC2 && s[0] < 0xE0 ? 2 : 1;
    if (n > avail) {
        return 1;
    }
    for (i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            return 1;
        }
    }
    return n;
}

/* An identity attribute's value as text: string, number or boolean. */
static void
eval_attr(aval_t *v, const char *name, const json_t *attrs)
{
    const json_t *j = json_object_get(attrs, name);
    char num[64];
    int r;

    if (json_is_string(j)) {
        if (memchr(json_string_value(j), '\0', json_string_length(j))) {
            av_missing(v, name, 1);   /* NUL inside: not usable text */
            return;
        }
        av_set(v, json_string_value(j), json_string_length(j));
        return;
    }
    if (json_is_integer(j)) {
        r = snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
                     json_integer_value(j));
    } else if (json_is_real(j)) {
        r = snprintf(num, sizeof(num), "%.17g", json_real_value(j));
    } else if (json_is_boolean(j)) {
        r = snprintf(num, sizeof(num), "%s", json_is_true(j) ? "true"
                                                            : "false");
    } else {
        av_missing(v, name, 1);
        return;
    }
    av_set(v, num, r > 0 && (size_t)r < sizeof(num) ? (size_t)r : 0);
}

/* Substitute every match of x->re in v by x->with (groups \0-\9). */
static void
xf_replace(const xform_t *x, aval_t *v)
{
    aval_t o;
    regmatch_t m[10];
    size_t off = 0, i;
    int after = 0;   /* the previous match was not empty and ended here */

    o.n = 0;
    o.b[0] = '\0';
    o.missing = 0;
    while (off <= v->n) {
        if (regexec(&x->re, v->b + off, 10, m, off > 0 ? REG_NOTBOL : 0)
            != 0) {
            break;
        }
        if (!av_put(&o, v->b + off, (size_t)m[0].rm_so)) {
            goto too_long;
        }
        if (after && m[0].rm_so == 0 && m[0].rm_eo == 0) {
            /* no empty match right after a match (as sed): "b*" on "ab"
             * gives "-a-", not "-a--" */
            after = 0;
            if (off >= v->n) {
                off = v->n + 1;
                break;
            }
            i = u8len((const unsigned char *)v->b + off, v->n - off);
            if (!av_put(&o, v->b + off, i)) {
                goto too_long;
            }
            off += i;
            continue;
        }
        after = m[0].rm_eo > m[0].rm_so;
        for (i = 0; x->with[i] != '\0'; i++) {
            if (x->with[i] == '\\' && x->with[i + 1] >= '0' &&
                x->with[i + 1] <= '9') {
                const regmatch_t *g = &m[x->with[i + 1] - '0'];
                if (g->rm_so >= 0 &&
                    !av_put(&o, v->b + off + g->rm_so,
                            (size_t)(g->rm_eo - g->rm_so))) {
                    goto too_long;
                }
                i++;
            } else {
                if (x->with[i] == '\\') {
                    i++;   /* "\\" is one backslash (checked at load) */
                }
                if (!av_put(&o, &x->with[i], 1)) {
                    goto too_long;
                }
            }
        }
        if (m[0].rm_eo == m[0].rm_so) {
            /* empty match: copy one character and move past it */
            size_t c;
            if (off + (size_t)m[0].rm_eo >= v->n) {
                off = v->n + 1;
                break;
            }
            c = u8len((const unsigned char *)v->b + off + m[0].rm_eo,
                      v->n - off - (size_t)m[0].rm_eo);
            if (!av_put(&o, v->b + off + m[0].rm_eo, c)) {
                goto too_long;
            }
            off += (size_t)m[0].rm_eo + c;
        } else {
            off += (size_t)m[0].rm_eo;
        }
    }
    if (off < v->n && !av_put(&o, v->b + off, v->n - off)) {
        goto too_long;
    }
    av_set(v, o.b, o.n);
    return;
too_long:
    av_missing(v, "the value is longer than 1024 bytes", 0);
}

/* Apply one transform to v. */
static void
xf_apply(const xform_t *x, aval_t *v)
{
    size_t i, a, b, c;

    if (v->missing && x->k != X_DEFAULT && x->k != X_LOOKUP) {
        return;   /* missing stays missing */
    }
    switch (x->k) {
    case X_LOWER:
    case X_UPPER:
        for (i = 0; i < v->n; i++) {
            unsigned char ch = (unsigned char)v->b[i];
            if (x->k == X_LOWER && ch >= 'A' && ch <= 'Z') {
                v->b[i] = (char)(ch + 32);
            } else if (x->k == X_UPPER && ch >= 'a' && ch <= 'z') {
                v->b[i] = (char)(ch - 32);
            }
        }
        return;
    case X_TRIM:
        a = 0;
        b = v->n;
        while (a < b && strchr(" \t\r\n\f\v", v->b[a]) != NULL) {
            a++;
        }
        while (b > a && strchr(" \t\r\n\f\v", v->b[b - 1]) != NULL) {
            b--;
        }
        av_set(v, v->b + a, b - a);
        return;
    case X_SUBSTR:
        a = 0;
        for (c = 0; c < x->start && a < v->n; c++) {
            a += u8len((const unsigned char *)v->b + a, v->n - a);
        }
        b = a;
        for (c = 0; (!x->has_len || c < x->len) && b < v->n; c++) {
            b += u8len((const unsigned char *)v->b + b, v->n - b);
        }
        av_set(v, v->b + a, b - a);
        return;
    case X_REPLACE:
        xf_replace(x, v);
        return;
    case X_DEFAULT:
        if (v->missing || v->n == 0) {
            av_set(v, x->def, strlen(x->def));
        }
        return;
    case X_LOOKUP:
        if (!v->missing) {
            size_t lo = 0, hi = x->nkv;
            while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int r = strcmp(x->keys[mid], v->b);
                if (r == 0) {
                    av_set(v, x->vals[mid], strlen(x->vals[mid]));
                    return;
                }
                if (r < 0) {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
        }
        if (x->def != NULL) {
            av_set(v, x->def, strlen(x->def));
        } else if (!v->missing) {
            av_missing(v, "the lookup table has no entry for the value", 0);
        }
        return;
    }
}

/* Evaluate e for attrs into v (missing on any missing part). */
static void
eval_expr(const expr_t *e, const json_t *attrs, aval_t *v)
{
    size_t i;

    switch (e->k) {
    case E_ATTR:
        eval_attr(v, e->s, attrs);
        break;
    case E_VALUE:
        av_set(v, e->s, strlen(e->s));
        break;
    case E_CONCAT:
        v->n = 0;
        v->b[0] = '\0';
        v->missing = 0;
        for (i = 0; i < e->nparts; i++) {
            aval_t p;
            eval_expr(&e->parts[i], attrs, &p);
            if (p.missing) {
                *v = p;
                break;
            }
            if (!av_put(v, p.b, p.n)) {
                av_missing(v, "the value is longer than 1024 bytes", 0);
                break;
            }
        }
        break;
    }
    for (i = 0; i < e->nxf; i++) {
        xf_apply(&e->xf[i], v);
    }
}

/* "<what> is missing: <cause>" into why. */
static void
refusal(char *why, size_t cap, const char *what, const char *name,
        const aval_t *v)
{
    int r;

    if (cap == 0) {
        return;
    }
    r = snprintf(why, cap, "%s%s%s cannot be built: %s%s%s", what,
                 name != NULL ? " " : "", name != NULL ? name : "",
                 v->cause_attr ? "identity attribute \"" : "",
                 v->cause != NULL ? v->cause : "missing",
                 v->cause_attr ? "\" is missing" : "");
    (void)r;
}

/* Check required attributes and the username; see account.h. */
int
pg_acct_check(const pg_acct_rule_t *r, const json_t *attrs, char *why,
              size_t whycap)
{
    aval_t v;
    size_t i;

    if (whycap > 0) {
        why[0] = '\0';
    }
    for (i = 0; i < r->nreq; i++) {
        eval_expr(&r->ex[r->req[i]], attrs, &v);
        if (v.missing) {
            char nm[160];
            int k = snprintf(nm, sizeof(nm), "\"%s\"", r->names[r->req[i]]);
            (void)k;
            refusal(why, whycap, "required attribute", nm, &v);
            return 0;
        }
    }
    if (r->has_user) {
        char first[260];
        eval_expr(&r->user, attrs, &v);
        if (!v.missing &&
            pg_policy_username_candidate(v.b, r->start, r->max_tries,
                                         r->max_len, 0, first, sizeof(first))
            != PG_OK) {
            v.missing = 1;
            v.cause = v.n == 0 ? "the template gives an empty name"
                               : "max_length cuts off the first character";
            v.cause_attr = 0;
        }
        if (v.missing) {
            refusal(why, whycap, "username", NULL, &v);
            return 0;
        }
    }
    return 1;
}

/* Build the account JSON; see account.h. */
pg_status_t
pg_acct_build(const pg_acct_rule_t *r, const json_t *attrs, json_t **out,
              int *ok, char *why, size_t whycap)
{
    json_t *o, *a;
    aval_t v;
    size_t i;
    char name[PG_ACCT_VALUE_MAX + 1];

    *out = NULL;
    *ok = pg_acct_check(r, attrs, why, whycap);
    o = json_pack("{s:s, s:s, s:s}", "target", r->target, "result",
                  *ok ? "ok" : "refused", "initial_state", r->initial_state);
    if (o == NULL) {
        return PG_ERR_NOMEM;
    }
    if (!*ok) {
        if (json_object_set_new(o, "reason", json_string(why)) != 0) {
            json_decref(o);
            return PG_ERR_NOMEM;
        }
        *out = o;
        return PG_OK;
    }
    a = json_object();
    if (a == NULL || json_object_set_new(o, "attributes", a) != 0) {
        json_decref(o);
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < r->n; i++) {
        eval_expr(&r->ex[i], attrs, &v);
        if (v.missing) {
            continue;   /* optional and missing: not set */
        }
        if (json_object_set_new(a, r->names[i], json_stringn(v.b, v.n))
            != 0) {
            json_decref(o);
            return PG_ERR_NOMEM;
        }
    }
    if (r->has_user) {
        eval_expr(&r->user, attrs, &v);
        if (pg_policy_username_candidate(v.b, r->start, r->max_tries,
                                         r->max_len, 0, name, sizeof(name))
            != PG_OK ||
            json_object_set_new(o, "username", json_string(name)) != 0 ||
            json_object_set_new(o, "username_collision",
                                json_pack("{s:I, s:I, s:I}", "start",
                                          (json_int_t)r->start, "max_tries",
                                          (json_int_t)r->max_tries,
                                          "max_length",
                                          (json_int_t)r->max_len)) != 0) {
            json_decref(o);
            return PG_ERR_NOMEM;
        }
        if (whycap > 0) {
            int k = snprintf(why, whycap, "username \"%s\", %zu attribute%s",
                             name, json_object_size(a),
                             json_object_size(a) == 1 ? "" : "s");
            (void)k;
        }
    } else if (whycap > 0) {
        int k = snprintf(why, whycap, "%zu attribute%s", json_object_size(a),
                         json_object_size(a) == 1 ? "" : "s");
        (void)k;
    }
    *out = o;
    return PG_OK;
}

/*
 * Username candidate number attempt (see policy.h): attempt 0 is base,
 * attempt k >= 1 is base with the decimal suffix start + k - 1; base is
 * cut (at a UTF-8 character boundary) so the whole fits max_len bytes.
 */
pg_status_t
pg_policy_username_candidate(const char *base, unsigned start,
                             unsigned max_tries, unsigned max_len,
                             unsigned attempt, char *buf, size_t cap)
{
    char suf[24];
    size_t bl, sl = 0;
    int r;

    if (base == NULL || buf == NULL || cap == 0 || max_len == 0 ||
        base[0] == '\0') {
        return PG_ERR_INVALID;
    }
    if (attempt >= max_tries) {
        return PG_ERR_NOT_FOUND;   /* every candidate was taken */
    }
    if (attempt > 0) {
        r = snprintf(suf, sizeof(suf), "%llu",
                     (unsigned long long)start + attempt - 1);
        if (r <= 0 || (size_t)r >= sizeof(suf)) {
            return PG_ERR_INTERNAL;
        }
        sl = (size_t)r;
    }
    if (sl >= max_len) {
        return PG_ERR_TOO_LARGE;   /* no room for any of base */
    }
    bl = strlen(base);
    if (bl > max_len - sl) {
        bl = max_len - sl;
        /* never cut a UTF-8 sequence: back up to a lead byte */
        while (bl > 0 && ((unsigned char)base[bl] & 0xC0) == 0x80) {
            bl--;
        }
        if (bl == 0) {
            return PG_ERR_TOO_LARGE;
        }
    }
    if (bl + sl + 1 > cap) {
        return PG_ERR_TOO_LARGE;
    }
    memcpy(buf, base, bl);
    memcpy(buf + bl, suf, sl);
    buf[bl + sl] = '\0';
    return PG_OK;
}
