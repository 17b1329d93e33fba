/*
 * provgate core: policy files and the birthright engine.
 *
 * A policy set is an immutable array of compiled policies loaded from one or
 * more JSON files (format: include/provgate/policy.h, docs/policies.md).
 * Conditions are compiled into a small tree at load (regexes compiled with
 * regcomp), so pg_policy_decide() only walks the tree: it never allocates
 * per condition, never fails on odd attribute values, and is read-only on
 * the set (safe to share between requests of one process).
 *
 * Limits: 64 files, 1024 policies, 64 grants per policy, 256 entitlements
 * per grant, 64 children per all/any, 256 values per "in", conditions
 * nested at most 16 deep, regex source 512 bytes, explanation text 512
 * bytes per policy (truncated with "...").
 */
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "provgate/config.h"
#include "provgate/policy.h"

#define MAX_FILES 64u
#define MAX_POLICIES 1024u
#define MAX_GRANTS 64u
#define MAX_ENTS 256u
#define MAX_KIDS 64u
#define MAX_IN 256u
#define MAX_DEPTH 16u
#define MAX_REGEX 512u
#define MAX_VALUE 256u
#define WHY_MAX 512u

#define TRY(x) do { st = (x); if (st != PG_OK) { return st; } } while (0)

typedef enum {
    C_ALL, C_ANY, C_NOT, C_GROUP, C_EQ, C_IN, C_EXISTS, C_PREFIX, C_REGEX
} cond_kind_t;

typedef struct cond {
    cond_kind_t kind;
    char *attr;            /* attribute name for the attr operators */
    char *str;             /* eq/prefix value, regex source, group name */
    char **list;           /* "in" values (NULL-terminated) */
    int exists;            /* "exists" wanted value */
    regex_t re;
    int re_ok;             /* re is compiled and must be regfree'd */
    struct cond **kids;    /* all/any children, or the single "not" child */
    size_t nkids;
} cond_t;

typedef struct ent {
    char *type;
    char *value;
} ent_t;

typedef struct grant {
    char *target;
    ent_t *ents;
    size_t nents;
} grant_t;

typedef struct policy {
    char *id;
    char *kind;
    char *file;            /* file it came from (for messages) */
    char *description;
    cond_t *who;
    grant_t *grants;
    size_t ngrants;
} policy_t;

struct pg_policy_set {
    policy_t *p;
    size_t n;
    size_t cap;
};

/* ---- freeing --------------------------------------------------------- */

/* Free a condition tree (NULL and half-built trees are fine). */
static void
cond_free(cond_t *c)
{
    size_t i;

    if (c == NULL) {
        return;
    }
    for (i = 0; i < c->nkids; i++) {
        cond_free(c->kids[i]);
    }
    free(c->kids);
    free(c->attr);
    free(c->str);
    pg_strv_free(c->list);
    if (c->re_ok) {
        regfree(&c->re);
    }
    free(c);
}

/* Free what one policy owns (not the slot itself). */
static void
policy_clear(policy_t *p)
{
    size_t i, j;

    free(p->id);
    free(p->kind);
    free(p->file);
    free(p->description);
    cond_free(p->who);
    for (i = 0; i < p->ngrants; i++) {
        for (j = 0; j < p->grants[i].nents; j++) {
            free(p->grants[i].ents[j].type);
            free(p->grants[i].ents[j].value);
        }
        free(p->grants[i].ents);
        free(p->grants[i].target);
    }
    free(p->grants);
}

/* Release the set and everything it owns. NULL is fine. */
void
pg_policy_free(pg_policy_set_t *ps)
{
    size_t i;

    if (ps == NULL) {
        return;
    }
    for (i = 0; i < ps->n; i++) {
        policy_clear(&ps->p[i]);
    }
    free(ps->p);
    free(ps);
}

/* Number of loaded policies (0 for NULL). */
size_t
pg_policy_count(const pg_policy_set_t *ps)
{
    return ps != NULL ? ps->n : 0;
}

/* ---- loading --------------------------------------------------------- */

/* "<base><suffix>" into buf (truncated, always NUL-terminated). */
static void
subpath(char *buf, size_t n, const char *base, const char *suffix)
{
    size_t bl = strnlen(base, n - 1), sl = strlen(suffix);

    memcpy(buf, base, bl);
    if (sl > n - 1 - bl) {
        sl = n - 1 - bl;
    }
    memcpy(buf + bl, suffix, sl);
    buf[bl + sl] = '\0';
}

/* "<base><name>[i]" into buf. */
static void
subpath_idx(char *buf, size_t n, const char *base, const char *name, size_t i)
{
    char suf[64];
    int r = snprintf(suf, sizeof(suf), "%s[%zu]", name, i);

    (void)r;
    subpath(buf, n, base, suf);
}

/* 1 when s is 1..max bytes of [A-Za-z0-9] or characters of extra. */
static int
word_ok(const char *s, size_t max, const char *extra)
{
    size_t i;

    if (s == NULL || s[0] == '\0') {
        return 0;
    }
    for (i = 0; s[i] != '\0'; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i >= max) {
            return 0;
        }
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c >= '0' && c <= '9') || strchr(extra, c) != NULL)) {
            return 0;
        }
    }
    return 1;
}

static pg_status_t parse_cond(const json_t *o, const char *path,
                              unsigned depth, cond_t **out, pg_err_t *err);

/* all / any: a (non-empty for any) array of conditions. */
static pg_status_t
parse_kids(cond_t *c, const json_t *o, const char *path, const char *key,
           unsigned depth, pg_err_t *err)
{
    static const char *const all_keys[] = {"all", NULL};
    static const char *const any_keys[] = {"any", NULL};
    char kp[PG_ERR_MSG_MAX], ep[PG_ERR_MSG_MAX];
    const json_t *a = json_object_get(o, key);
    size_t i, n;
    pg_status_t st;

    TRY(pg_cfg_keys(o, path, c->kind == C_ALL ? all_keys : any_keys, err));
    subpath(kp, sizeof(kp), path, c->kind == C_ALL ? ".all" : ".any");
    if (!json_is_array(a)) {
        pg_err_set(err, "%s: must be an array of conditions", kp);
        return PG_ERR_CONFIG;
    }
    n = json_array_size(a);
    if (n > MAX_KIDS) {
        pg_err_set(err, "%s: more than %u conditions", kp, MAX_KIDS);
        return PG_ERR_CONFIG;
    }
    if (n == 0 && c->kind == C_ANY) {
        pg_err_set(err, "%s: must not be empty (it would never match)", kp);
        return PG_ERR_CONFIG;
    }
    c->kids = calloc(n > 0 ? n : 1, sizeof(*c->kids));
    if (c->kids == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < n; i++) {
        subpath_idx(ep, sizeof(ep), path, c->kind == C_ALL ? ".all" : ".any",
                    i);
        c->nkids = i + 1;   /* a half-built child is freed with c */
        TRY(parse_cond(json_array_get(a, i), ep, depth + 1, &c->kids[i],
                       err));
    }
    return PG_OK;
}

/* Reject POSIX back-references ("\1".."\9"): slow and never needed here. */
static int
has_backref(const char *re)
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

/* {"attr": name, <one operator>: value}. */
static pg_status_t
parse_attr_cond(cond_t *c, const json_t *o, const char *path, pg_err_t *err)
{
    static const char *const keys[] = {"attr", "eq", "in", "exists",
                                       "prefix", "regex", NULL};
    static const char *const ops[] = {"eq", "in", "exists", "prefix",
                                      "regex", NULL};
    char kp[PG_ERR_MSG_MAX];
    const char *op = NULL;
    const json_t *v;
    size_t i, nops = 0;
    pg_status_t st;

    TRY(pg_cfg_keys(o, path, keys, err));
    TRY(pg_cfg_str(o, path, "attr", 1, NULL, &c->attr, err));
    if (!word_ok(c->attr, 128, "_.-")) {
        pg_err_set(err, "%s.attr: must be 1-128 characters of "
                   "A-Z a-z 0-9 _ . -", path);
        return PG_ERR_CONFIG;
    }
    for (i = 0; ops[i] != NULL; i++) {
        if (json_object_get(o, ops[i]) != NULL) {
            op = ops[i];
            nops++;
        }
    }
    if (nops != 1) {
        pg_err_set(err, "%s: needs exactly one operator of eq, in, exists, "
                   "prefix, regex (has %zu)", path, nops);
        return PG_ERR_CONFIG;
    }
    v = json_object_get(o, op);
    subpath(kp, sizeof(kp), path, ".");
    subpath(kp, sizeof(kp), kp, op);
    if (strcmp(op, "exists") == 0) {
        c->kind = C_EXISTS;
        return pg_cfg_bool(o, path, "exists", 0, &c->exists, err);
    }
    if (strcmp(op, "in") == 0) {
        c->kind = C_IN;
        if (json_is_array(v) && json_array_size(v) == 0) {
            pg_err_set(err, "%s: must not be empty", kp);
            return PG_ERR_CONFIG;
        }
        if (json_is_array(v) && json_array_size(v) > MAX_IN) {
            pg_err_set(err, "%s: more than %u values", kp, MAX_IN);
            return PG_ERR_CONFIG;
        }
        /* pg_cfg_strv caps at 64; check elements ourselves up to MAX_IN. */
        if (!json_is_array(v)) {
            pg_err_set(err, "%s: must be an array of strings", kp);
            return PG_ERR_CONFIG;
        }
        c->list = calloc(json_array_size(v) + 1, sizeof(*c->list));
        if (c->list == NULL) {
            return PG_ERR_NOMEM;
        }
        for (i = 0; i < json_array_size(v); i++) {
            const json_t *e = json_array_get(v, i);
            if (!json_is_string(e) || json_string_length(e) > MAX_VALUE ||
                memchr(json_string_value(e), '\0', json_string_length(e))) {
                pg_err_set(err, "%s[%zu]: must be a string of at most %u "
                           "bytes", kp, i, MAX_VALUE);
                return PG_ERR_CONFIG;
            }
            c->list[i] = strdup(json_string_value(e));
            if (c->list[i] == NULL) {
                return PG_ERR_NOMEM;
            }
        }
        return PG_OK;
    }
    c->kind = strcmp(op, "eq") == 0 ? C_EQ
              : strcmp(op, "prefix") == 0 ? C_PREFIX : C_REGEX;
    if (c->kind == C_EQ && json_is_string(v) && json_string_length(v) == 0) {
        /* Equality with "" is legal: the attribute is present but empty. */
        c->str = strdup("");
        return c->str != NULL ? PG_OK : PG_ERR_NOMEM;
    }
    TRY(pg_cfg_str(o, path, op, 1, NULL, &c->str, err));
    if (strlen(c->str) > (c->kind == C_REGEX ? MAX_REGEX : MAX_VALUE)) {
        pg_err_set(err, "%s: longer than %u bytes", kp,
                   c->kind == C_REGEX ? MAX_REGEX : MAX_VALUE);
        return PG_ERR_CONFIG;
    }
    if (c->kind == C_REGEX) {
        char msg[128];
        int rc;
        if (has_backref(c->str)) {
            pg_err_set(err, "%s: back-references are not supported", kp);
            return PG_ERR_CONFIG;
        }
        rc = regcomp(&c->re, c->str, REG_EXTENDED | REG_NOSUB);
        if (rc != 0) {
            regerror(rc, &c->re, msg, sizeof(msg));
            regfree(&c->re);
            pg_err_set(err, "%s: invalid regular expression: %s", kp, msg);
            return PG_ERR_CONFIG;
        }
        c->re_ok = 1;
    }
    return PG_OK;
}

/*
 * Compile one condition object at path (depth counts from 1 at "who").
 * *out is owned by the caller (cond_free) even on failure.
 */
static pg_status_t
parse_cond(const json_t *o, const char *path, unsigned depth, cond_t **out,
           pg_err_t *err)
{
    static const char *const heads[] = {"all", "any", "not", "group", "attr",
                                        NULL};
    static const char *const known[] = {"all", "any", "not", "group", "attr",
                                        "eq", "in", "exists", "prefix",
                                        "regex", NULL};
    static const char *const not_keys[] = {"not", NULL};
    static const char *const group_keys[] = {"group", NULL};
    char kp[PG_ERR_MSG_MAX];
    const char *head = NULL;
    size_t i, nheads = 0;
    cond_t *c;
    pg_status_t st;

    *out = NULL;
    if (depth > MAX_DEPTH) {
        pg_err_set(err, "%s: conditions nested deeper than %u levels", path,
                   MAX_DEPTH);
        return PG_ERR_CONFIG;
    }
    if (!json_is_object(o)) {
        pg_err_set(err, "%s: a condition must be an object", path);
        return PG_ERR_CONFIG;
    }
    for (i = 0; heads[i] != NULL; i++) {
        if (json_object_get(o, heads[i]) != NULL) {
            head = heads[i];
            nheads++;
        }
    }
    if (nheads != 1) {
        /* Report a stray member first: it is the likelier mistake. */
        if (nheads == 0) {
            TRY(pg_cfg_keys(o, path, known, err));
        }
        pg_err_set(err, "%s: a condition needs exactly one of attr, group, "
                   "all, any, not", path);
        return PG_ERR_CONFIG;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return PG_ERR_NOMEM;
    }
    *out = c;
    if (strcmp(head, "all") == 0 || strcmp(head, "any") == 0) {
        c->kind = head[1] == 'l' ? C_ALL : C_ANY;
        return parse_kids(c, o, path, head, depth, err);
    }
    if (strcmp(head, "not") == 0) {
        c->kind = C_NOT;
        TRY(pg_cfg_keys(o, path, not_keys, err));
        c->kids = calloc(1, sizeof(*c->kids));
        if (c->kids == NULL) {
            return PG_ERR_NOMEM;
        }
        c->nkids = 1;
        subpath(kp, sizeof(kp), path, ".not");
        return parse_cond(json_object_get(o, "not"), kp, depth + 1,
                          &c->kids[0], err);
    }
    if (strcmp(head, "group") == 0) {
        c->kind = C_GROUP;
        TRY(pg_cfg_keys(o, path, group_keys, err));
        TRY(pg_cfg_str(o, path, "group", 1, NULL, &c->str, err));
        if (strlen(c->str) > MAX_VALUE) {
            pg_err_set(err, "%s.group: longer than %u bytes", path,
                       MAX_VALUE);
            return PG_ERR_CONFIG;
        }
        return PG_OK;
    }
    return parse_attr_cond(c, o, path, err);
}

/* A grant's "entitlements" (optional, at most 256) into g. */
static pg_status_t
parse_ents(grant_t *g, const json_t *a, const char *path, pg_err_t *err)
{
    static const char *const keys[] = {"type", "value", NULL};
    char ep[PG_ERR_MSG_MAX];
    size_t i, n;
    pg_status_t st;

    if (a == NULL) {
        return PG_OK;
    }
    if (!json_is_array(a)) {
        pg_err_set(err, "%s.entitlements: must be an array", path);
        return PG_ERR_CONFIG;
    }
    n = json_array_size(a);
    if (n > MAX_ENTS) {
        pg_err_set(err, "%s.entitlements: more than %u entries", path,
                   MAX_ENTS);
        return PG_ERR_CONFIG;
    }
    g->ents = calloc(n > 0 ? n : 1, sizeof(*g->ents));
    if (g->ents == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < n; i++) {
        const json_t *e = json_array_get(a, i);
        ent_t *t = &g->ents[i];
        subpath_idx(ep, sizeof(ep), path, ".entitlements", i);
        g->nents = i + 1;
        TRY(pg_cfg_keys(e, ep, keys, err));
        TRY(pg_cfg_str(e, ep, "type", 1, NULL, &t->type, err));
        if (!word_ok(t->type, 64, "_.:-")) {
            pg_err_set(err, "%s.type: must be 1-64 characters of "
                       "A-Z a-z 0-9 _ . : -", ep);
            return PG_ERR_CONFIG;
        }
        TRY(pg_cfg_str(e, ep, "value", 1, NULL, &t->value, err));
        if (strlen(t->value) > MAX_VALUE) {
            pg_err_set(err, "%s.value: longer than %u bytes", ep, MAX_VALUE);
            return PG_ERR_CONFIG;
        }
    }
    return PG_OK;
}

/*
 * "grants" (required, 1..64) into p; targets must exist in cfg when
 * cfg is given.
 */
static pg_status_t
parse_grants(policy_t *p, const json_t *a, const char *path,
             const struct pg_config *cfg, pg_err_t *err)
{
    static const char *const keys[] = {"target", "entitlements", NULL};
    char gp[PG_ERR_MSG_MAX];
    size_t i, n;
    pg_status_t st;

    if (a == NULL) {
        pg_err_set(err, "%s.grants: missing required field", path);
        return PG_ERR_CONFIG;
    }
    if (!json_is_array(a)) {
        pg_err_set(err, "%s.grants: must be an array", path);
        return PG_ERR_CONFIG;
    }
    n = json_array_size(a);
    if (n == 0 || n > MAX_GRANTS) {
        pg_err_set(err, "%s.grants: must hold 1 to %u grants", path,
                   MAX_GRANTS);
        return PG_ERR_CONFIG;
    }
    p->grants = calloc(n, sizeof(*p->grants));
    if (p->grants == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < n; i++) {
        const json_t *g = json_array_get(a, i);
        grant_t *gr = &p->grants[i];
        subpath_idx(gp, sizeof(gp), path, ".grants", i);
        p->ngrants = i + 1;
        TRY(pg_cfg_keys(g, gp, keys, err));
        TRY(pg_cfg_str(g, gp, "target", 1, NULL, &gr->target, err));
        if (cfg != NULL && pg_config_target(cfg, gr->target) == NULL) {
            if (word_ok(gr->target, 64, "_-")) {
                pg_err_set(err, "%s.target: unknown target \"%s\"", gp,
                           gr->target);
            } else {
                pg_err_set(err, "%s.target: unknown target", gp);
            }
            return PG_ERR_CONFIG;
        }
        TRY(parse_ents(gr, json_object_get(g, "entitlements"), gp, err));
    }
    return PG_OK;
}

/* The policy with this id among ps->p[0..n), or NULL. */
static const policy_t *
find_policy(const pg_policy_set_t *ps, const char *id)
{
    size_t i;

    for (i = 0; i < ps->n; i++) {
        if (strcmp(ps->p[i].id, id) == 0) {
            return &ps->p[i];
        }
    }
    return NULL;
}

/* Parse policies[i] at path into a new slot of ps. Messages lack the file. */
static pg_status_t
parse_policy(pg_policy_set_t *ps, const json_t *o, const char *path,
             const char *file, const struct pg_config *cfg, pg_err_t *err)
{
    static const char *const keys[] = {"id", "kind", "description", "who",
                                       "grants", NULL};
    char wp[PG_ERR_MSG_MAX];
    const policy_t *dup;
    policy_t *p;
    pg_status_t st;

    if (ps->n >= MAX_POLICIES) {
        pg_err_set(err, "%s: more than %u policies in total", path,
                   MAX_POLICIES);
        return PG_ERR_CONFIG;
    }
    if (ps->n == ps->cap) {
        size_t nc = ps->cap == 0 ? 16 : ps->cap * 2;
        policy_t *np = realloc(ps->p, nc * sizeof(*np));
        if (np == NULL) {
            return PG_ERR_NOMEM;
        }
        ps->p = np;
        ps->cap = nc;
    }
    TRY(pg_cfg_keys(o, path, keys, err));
    p = &ps->p[ps->n];
    memset(p, 0, sizeof(*p));
    ps->n++;   /* from here on the slot is owned by ps (freed with it) */
    p->file = strdup(file);
    if (p->file == NULL) {
        return PG_ERR_NOMEM;
    }
    TRY(pg_cfg_str(o, path, "id", 1, NULL, &p->id, err));
    if (!word_ok(p->id, 128, "_.:-")) {
        pg_err_set(err, "%s.id: must be 1-128 characters of "
                   "A-Z a-z 0-9 _ . : -", path);
        return PG_ERR_CONFIG;
    }
    ps->n--;   /* hide the new slot from the duplicate search */
    dup = find_policy(ps, p->id);
    ps->n++;
    if (dup != NULL) {
        pg_err_set(err, "%s.id: duplicate policy id \"%s\" (first defined "
                   "in %s)", path, p->id, dup->file);
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_str(o, path, "kind", 1, NULL, &p->kind, err));
    if (strcmp(p->kind, "birthright") != 0) {
        if (word_ok(p->kind, 32, "_-")) {
            pg_err_set(err, "%s.kind: kind \"%s\" is not supported yet "
                       "(supported: \"birthright\")", path, p->kind);
        } else {
            pg_err_set(err, "%s.kind: unsupported kind (supported: "
                       "\"birthright\")", path);
        }
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_str(o, path, "description", 0, NULL, &p->description, err));
    subpath(wp, sizeof(wp), path, ".who");
    if (json_object_get(o, "who") == NULL) {
        pg_err_set(err, "%s: missing required field (use {\"all\": []} to "
                   "match everyone)", wp);
        return PG_ERR_CONFIG;
    }
    TRY(parse_cond(json_object_get(o, "who"), wp, 1, &p->who, err));
    return parse_grants(p, json_object_get(o, "grants"), path, cfg, err);
}

/* Prefix err->msg with "<file>: ". */
static void
prefix_file(pg_err_t *err, const char *file)
{
    char tmp[PG_ERR_MSG_MAX];
    size_t fl, ml, cap = PG_ERR_MSG_MAX - 1, o;

    if (err == NULL) {
        return;
    }
    ml = strnlen(err->msg, cap);
    memcpy(tmp, err->msg, ml);
    fl = strnlen(file, cap);
    memcpy(err->msg, file, fl);
    o = fl;
    if (cap - o >= 2) {
        memcpy(err->msg + o, ": ", 2);
        o += 2;
    }
    if (ml > cap - o) {
        ml = cap - o;
    }
    memcpy(err->msg + o, tmp, ml);
    err->msg[o + ml] = '\0';
}

/*
 * Read, parse and append the policies of one file to ps; on failure
 * err is "<file>: ..." and the caller frees ps.
 */
static pg_status_t
load_file(pg_policy_set_t *ps, const char *file, const struct pg_config *cfg,
          pg_err_t *err)
{
    static const char *const keys[] = {"policies", NULL};
    char pp[64];
    json_error_t jerr;
    pg_err_t ferr;
    json_t *root, *a;
    char *text = NULL;
    size_t len = 0, i;
    pg_status_t st;

    st = pg_read_file(file, PG_CONFIG_MAX_FILE, 0, &text, &len, &ferr);
    if (st != PG_OK) {
        pg_err_set(err, "%s: %s", file, ferr.msg);
        return st == PG_ERR_NOMEM ? st : PG_ERR_CONFIG;
    }
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (root == NULL) {
        pg_err_set(err, "%s:%d:%d: %s", file, jerr.line, jerr.column,
                   jerr.text);
        return PG_ERR_CONFIG;
    }
    st = pg_cfg_keys(root, "$", keys, err);
    if (st == PG_OK) {
        a = json_object_get(root, "policies");
        if (a == NULL) {
            pg_err_set(err, "$.policies: missing required field");
            st = PG_ERR_CONFIG;
        } else if (!json_is_array(a)) {
            pg_err_set(err, "$.policies: must be an array");
            st = PG_ERR_CONFIG;
        } else {
            for (i = 0; i < json_array_size(a) && st == PG_OK; i++) {
                int r = snprintf(pp, sizeof(pp), "$.policies[%zu]", i);
                (void)r;
                st = parse_policy(ps, json_array_get(a, i), pp, file, cfg,
                                  err);
            }
        }
    }
    json_decref(root);
    if (st != PG_OK) {
        if (st == PG_ERR_NOMEM) {
            pg_err_set(err, "out of memory");
        } else {
            st = PG_ERR_CONFIG;
        }
        prefix_file(err, file);
    }
    return st;
}

/*
 * Load files (NULL-terminated; NULL means none) into a new set. cfg, when
 * not NULL, is used to check that every grant's target exists. On PG_OK
 * *out owns the set (pg_policy_free). On failure *out is NULL and err has
 * "<file>: <json path>: <reason>" (or "<file>:<line>:<col>: ..." for JSON
 * syntax); status PG_ERR_CONFIG or PG_ERR_NOMEM.
 */
pg_status_t
pg_policy_load(char *const *files, const struct pg_config *cfg,
               pg_policy_set_t **out, pg_err_t *err)
{
    pg_policy_set_t *ps;
    size_t i;
    pg_status_t st;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    ps = calloc(1, sizeof(*ps));
    if (ps == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; files != NULL && files[i] != NULL; i++) {
        if (i >= MAX_FILES) {
            pg_err_set(err, "%s: more than %u policy files", files[i],
                       MAX_FILES);
            pg_policy_free(ps);
            return PG_ERR_CONFIG;
        }
        st = load_file(ps, files[i], cfg, err);
        if (st != PG_OK) {
            pg_policy_free(ps);
            return st;
        }
    }
    *out = ps;
    return PG_OK;
}

/* ---- evaluation ------------------------------------------------------ */

/* Bounded explanation text; overflow ends it with "...". */
typedef struct why {
    char b[WHY_MAX];
    size_t n;
    int full;
} why_t;

/*
 * Append n bytes; past the cap the text ends with "..." (cut at a UTF-8
 * character boundary) and further appends are ignored.
 */
static void
why_put(why_t *w, const char *s, size_t n)
{
    if (w->full) {
        return;
    }
    if (n > sizeof(w->b) - 4 - w->n) {
        n = sizeof(w->b) - 4 - w->n;
        /* never cut a UTF-8 sequence: back up to a lead byte */
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) {
            n--;
        }
        memcpy(w->b + w->n, s, n);
        w->n += n;
        memcpy(w->b + w->n, "...", 3);
        w->n += 3;
        w->full = 1;
    } else {
        memcpy(w->b + w->n, s, n);
        w->n += n;
    }
    w->b[w->n] = '\0';
}

/* Append a NUL-terminated string. */
static void
why_str(why_t *w, const char *s)
{
    why_put(w, s, strlen(s));
}

/* Append a JSON value as text (strings quoted and escaped), capped. */
static void
why_json(why_t *w, const json_t *v)
{
    char *t = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT |
                         JSON_ENSURE_ASCII);
    size_t n;

    if (t == NULL) {
        why_str(w, "?");
        return;
    }
    n = strlen(t);
    if (n > 96) {
        why_put(w, t, 93);
        why_str(w, "...");
    } else {
        why_put(w, t, n);
    }
    free(t);
}

/* Append a string as a JSON string literal. */
static void
why_quoted(why_t *w, const char *s)
{
    json_t *j = json_string(s);

    if (j == NULL) {
        why_str(w, "\"?\"");
        return;
    }
    why_json(w, j);
    json_decref(j);
}

/* Append another explanation (and its truncation state). */
static void
why_copy(why_t *dst, const why_t *src)
{
    why_put(dst, src->b, src->n);
    if (src->full) {
        dst->full = 1;
    }
}

/* The operator's test against one string value. */
static int
str_test(const cond_t *c, const char *s)
{
    size_t i;

    switch (c->kind) {
    case C_EQ:
        return strcmp(s, c->str) == 0;
    case C_PREFIX:
        return strncmp(s, c->str, strlen(c->str)) == 0;
    case C_REGEX:
        return regexec(&c->re, s, 0, NULL, 0) == 0;
    case C_IN:
        for (i = 0; c->list[i] != NULL; i++) {
            if (strcmp(s, c->list[i]) == 0) {
                return 1;
            }
        }
        return 0;
    default:
        return 0;
    }
}

/* A string operator over a value: a string, or any string element. */
static int
value_test(const cond_t *c, const json_t *v)
{
    size_t i;
    json_t *e;

    if (json_is_string(v)) {
        return str_test(c, json_string_value(v));
    }
    if (json_is_array(v)) {
        json_array_foreach(v, i, e) {
            if (json_is_string(e) && str_test(c, json_string_value(e))) {
                return 1;
            }
        }
    }
    return 0;
}

/* Present: not absent, not null, not "" and not []. */
static int
value_present(const json_t *v)
{
    if (v == NULL || json_is_null(v)) {
        return 0;
    }
    if (json_is_string(v) && json_string_length(v) == 0) {
        return 0;
    }
    if (json_is_array(v) && json_array_size(v) == 0) {
        return 0;
    }
    return 1;
}

/* 1 when g is in attrs.groups (array of strings, or one string). */
static int
in_group(const json_t *attrs, const char *g)
{
    const json_t *gs = json_object_get(attrs, "groups");
    size_t i;
    json_t *e;

    if (json_is_string(gs)) {
        return strcmp(json_string_value(gs), g) == 0;
    }
    if (!json_is_array(gs)) {
        return 0;
    }
    json_array_foreach(gs, i, e) {
        if (json_is_string(e) && strcmp(json_string_value(e), g) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Describe a leaf attribute test: "<attr> <value> <verb> <operand>". */
static void
why_leaf(why_t *w, const cond_t *c, const json_t *v, int ok)
{
    size_t i;

    why_str(w, c->attr);
    if (v == NULL || json_is_null(v)) {
        why_str(w, " is missing");
        return;
    }
    why_str(w, " ");
    why_json(w, v);
    switch (c->kind) {
    case C_EQ:
        why_str(w, ok ? " == " : " != ");
        why_quoted(w, c->str);
        break;
    case C_PREFIX:
        why_str(w, ok ? " starts with " : " does not start with ");
        why_quoted(w, c->str);
        break;
    case C_REGEX:
        why_str(w, ok ? " matches /" : " does not match /");
        why_str(w, c->str);
        why_str(w, "/");
        break;
    case C_IN:
        why_str(w, ok ? " in [" : " not in [");
        for (i = 0; c->list[i] != NULL; i++) {
            if (i > 0) {
                why_str(w, ", ");
            }
            why_str(w, c->list[i]);
        }
        why_str(w, "]");
        break;
    default:
        break;
    }
}

/*
 * Evaluate c against attrs; w receives why the result is what it is.
 * Never fails: odd or missing values simply do not match.
 */
static int
eval(const cond_t *c, const json_t *attrs, why_t *w)
{
    const json_t *v;
    size_t i;
    int r;

    switch (c->kind) {
    case C_ALL:
        if (c->nkids == 0) {
            why_str(w, "everyone (empty \"all\")");
            return 1;
        }
        for (i = 0; i < c->nkids; i++) {
            why_t k = {{0}, 0, 0};
            if (!eval(c->kids[i], attrs, &k)) {
                w->n = 0;
                w->full = 0;
                why_copy(w, &k);
                return 0;
            }
            if (i > 0) {
                why_str(w, " and ");
            }
            why_copy(w, &k);
        }
        return 1;
    case C_ANY: {
        why_t acc = {{0}, 0, 0};
        for (i = 0; i < c->nkids; i++) {
            why_t k = {{0}, 0, 0};
            if (eval(c->kids[i], attrs, &k)) {
                why_copy(w, &k);
                return 1;
            }
            if (i > 0) {
                why_str(&acc, "; ");
            }
            why_copy(&acc, &k);
        }
        why_str(w, "none of any: ");
        why_copy(w, &acc);
        return 0;
    }
    case C_NOT: {
        why_t k = {{0}, 0, 0};
        if (c->kids[0]->kind == C_NOT) {
            /* not(not(x)) is x, explained as x */
            return eval(c->kids[0]->kids[0], attrs, w);
        }
        r = eval(c->kids[0], attrs, &k);
        if (r) {
            why_str(w, "excluded by not: ");
        }
        why_copy(w, &k);
        return !r;
    }
    case C_GROUP:
        r = in_group(attrs, c->str);
        why_str(w, r ? "member of group " : "not a member of group ");
        why_quoted(w, c->str);
        return r;
    case C_EXISTS:
        v = json_object_get(attrs, c->attr);
        r = value_present(v);
        why_str(w, c->attr);
        why_str(w, r ? " exists" : " is missing or empty");
        return c->exists ? r : !r;
    case C_EQ:
    case C_IN:
    case C_PREFIX:
    case C_REGEX:
        v = json_object_get(attrs, c->attr);
        r = v != NULL && value_test(c, v);
        why_leaf(w, c, v, r);
        return r;
    }
    return 0;
}

/* Add one entitlement unless (type, value) was granted before. */
static pg_status_t
add_ent(pg_decision_t *d, json_t *seen, const ent_t *e, const char *policy)
{
    char key[2 * 300];
    json_t *o;
    size_t tl = strlen(e->type), vl = strlen(e->value);

    if (tl + 1 + vl >= sizeof(key)) {
        return PG_ERR_INTERNAL;   /* load caps make this impossible */
    }
    memcpy(key, e->type, tl);
    key[tl] = '\n';               /* neither part can hold a control byte */
    memcpy(key + tl + 1, e->value, vl + 1);
    if (json_object_get(seen, key) != NULL) {
        return PG_OK;
    }
    if (json_object_set_new(seen, key, json_true()) != 0) {
        return PG_ERR_NOMEM;
    }
    o = json_pack("{s:s, s:s, s:s}", "type", e->type, "value", e->value,
                  "policy", policy);
    if (o == NULL || json_array_append_new(d->entitlements, o) != 0) {
        return PG_ERR_NOMEM;
    }
    return PG_OK;
}

/* Grants of p in target and their entitlements; sets has_account. */
static pg_status_t
apply_grants(const policy_t *p, const char *target, pg_decision_t *d,
             json_t *seen, int *granted)
{
    size_t i, j;
    pg_status_t st;

    *granted = 0;
    for (i = 0; i < p->ngrants; i++) {
        const grant_t *g = &p->grants[i];
        if (strcmp(g->target, target) != 0) {
            continue;
        }
        *granted = 1;
        d->has_account = 1;
        for (j = 0; j < g->nents; j++) {
            TRY(add_ent(d, seen, &g->ents[j], p->id));
        }
    }
    return PG_OK;
}

/* 1 when p has at least one grant for target. */
static int
grants_target(const policy_t *p, const char *target)
{
    size_t i;

    for (i = 0; i < p->ngrants; i++) {
        if (strcmp(p->grants[i].target, target) == 0) {
            return 1;
        }
    }
    return 0;
}

/*
 * Decide for one identity and target. attrs must be a JSON object (its
 * "groups" member, an array of strings, feeds the group operator). ps may
 * be NULL (no policies: nothing granted).
 *
 * out is always initialised; on PG_OK it holds:
 *  has_account   1 when a matching policy grants anything in target
 *  entitlements  [{"type","value","policy"}], first granting policy wins
 *  explanation   one {"policy","kind","result","why"} per policy, in load
 *                order; result is "match" or "no_match"
 * The caller releases it with pg_decision_clear() (also after failure).
 * Errors: PG_ERR_INVALID (bad arguments), PG_ERR_NOMEM.
 */
pg_status_t
pg_policy_decide(const pg_policy_set_t *ps, const json_t *attrs,
                 const char *target, pg_decision_t *out)
{
    json_t *seen = NULL, *ex;
    size_t i;
    pg_status_t st = PG_OK;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    memset(out, 0, sizeof(*out));
    if (!json_is_object(attrs) || target == NULL) {
        return PG_ERR_INVALID;
    }
    out->entitlements = json_array();
    out->explanation = json_array();
    seen = json_object();
    if (out->entitlements == NULL || out->explanation == NULL ||
        seen == NULL) {
        st = PG_ERR_NOMEM;
        goto done;
    }
    for (i = 0; ps != NULL && i < ps->n; i++) {
        const policy_t *p = &ps->p[i];
        why_t w = {{0}, 0, 0};
        int match, granted = 0;

        match = eval(p->who, attrs, &w);
        if (match) {
            st = apply_grants(p, target, out, seen, &granted);
            if (st != PG_OK) {
                goto done;
            }
            if (!granted) {
                why_str(&w, "; grants nothing in target ");
                why_quoted(&w, target);
            }
        } else if (!grants_target(p, target)) {
            why_str(&w, "; grants nothing in target ");
            why_quoted(&w, target);
        }
        ex = json_pack("{s:s, s:s, s:s, s:s}", "policy", p->id, "kind",
                       p->kind, "result", match ? "match" : "no_match",
                       "why", w.b);
        if (ex == NULL || json_array_append_new(out->explanation, ex) != 0) {
            st = PG_ERR_NOMEM;
            goto done;
        }
    }
done:
    json_decref(seen);
    if (st != PG_OK) {
        pg_decision_clear(out);
    }
    return st;
}

/* Release what a decision holds; safe on a zeroed or cleared decision. */
void
pg_decision_clear(pg_decision_t *d)
{
    if (d == NULL) {
        return;
    }
    json_decref(d->entitlements);
    json_decref(d->explanation);
    memset(d, 0, sizeof(*d));
}
