/*
 * provgate core: policy files and the policy engine.
 *
 * A policy set is an immutable structure loaded from one or more JSON
 * files (format: include/provgate/policy.h, docs/policies.md): policies of
 * four kinds (birthright, role, sod, approval) and business/technical
 * roles. Loading parses and validates every file, then resolves role
 * references across files (undefined names and include cycles are
 * errors), and compiles lookups for the hot path: attribute names
 * interned to integers, a who-index from (attribute, value) and
 * (attribute, prefix) to the policies that need it, a literal prefilter
 * and a shared result slot per distinct regex, interned entitlement ids,
 * roles sorted by id, the role include closure as a bit matrix, per
 * target the roles that grant there and the roles/entitlements SoD rules
 * name, and every role's grants as one flat list. Conditions are
 * compiled into a small tree (regexes with regcomp). Account rules (the
 * top-level "accounts") are compiled by account.c.
 *
 * Two decision paths share one evaluator (eval_state_t):
 *  - pg_policy_decide[_at]() evaluates every policy and builds JSON with
 *    the explanation of every rule (allocates; for login and admin views);
 *  - pg_policy_decide_fast() evaluates only the index's candidates, builds
 *    no text and no JSON, only the items of the target decided and those
 *    an SoD rule names, and writes into caller buffers and a scratch
 *    area (no allocation except inside regexec()). test_fast_differential
 *    (tests/unit/test_policy_kinds.c) checks it against the full path.
 * Both are read-only on the set (safe to share between requests).
 *
 * Limits: 64 files, 16384 policies, 4096 roles, 64 grants per policy or
 * role, 256 entitlements per grant, 256 role references per list, 16
 * elements per conflict, 64 exemptions, 64 children per all/any, 256
 * values per "in", conditions nested at most 16 deep, regex source 512
 * bytes, explanation text 512 bytes per entry (truncated with "...").
 */
#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "provgate/config.h"
#include "provgate/policy.h"
#include "account.h"

#define MAX_FILES 64u
#define MAX_POLICIES 16384u
#define MAX_ROLES 4096u
#define MAX_REFS 256u
#define MAX_SOD_ITEMS 16u
#define MAX_EXEMPT 64u
#define MAX_LIFETIME 31536000u
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
    C_ALL, C_ANY, C_NOT, C_GROUP, C_EQ, C_IN, C_EXISTS, C_PREFIX, C_REGEX,
    C_LT, C_LE, C_GT, C_GE
} cond_kind_t;

/* Operand of lt/le/gt/ge. */
typedef enum { OP_NUM, OP_DATE, OP_TODAY } operand_t;

typedef struct cond {
    cond_kind_t kind;
    char *attr;            /* attribute name for the attr operators */
    char *str;             /* eq/prefix value, regex source, group name */
    char **list;           /* "in" values (NULL-terminated) */
    int exists;            /* "exists" wanted value */
    operand_t opnd;        /* lt/le/gt/ge: number, date or "today" */
    double num;            /* OP_NUM operand */
    long day;              /* OP_DATE operand, days since 1970-01-01 */
    regex_t re;
    int re_ok;             /* re is compiled and must be regfree'd */
    uint32_t aid;          /* interned attribute (attr operators, group) */
    size_t slen;           /* strlen(str) (prefix) */
    char *lit;             /* regex: a literal every match contains, or
                              NULL (a memmem() prefilter before regexec) */
    size_t litlen;
    uint32_t memo;         /* regex: result slot + 1 shared by every regex
                              condition with the same attribute and source
                              (fast path: one regexec per decision) */
    struct cond **kids;    /* all/any children, or the single "not" child */
    size_t nkids;
} cond_t;

typedef struct ent {
    char *type;
    char *value;
    unsigned jit_lifetime;   /* > 0: jit entitlement, scope "app" */
    uint32_t eid;            /* interned (target, type, value) */
} ent_t;

typedef struct grant {
    char *target;
    const char *tcanon;    /* canonical copy of target (pointer equality) */
    size_t tix;            /* index of tcanon in set->tnames */
    ent_t *ents;
    size_t nents;
} grant_t;

typedef enum { K_BIRTHRIGHT, K_ROLE, K_SOD, K_APPROVAL } kind_t;

/* A by-name reference to a role, resolved after all files are loaded. */
typedef struct ref {
    char *name;
    char *path;            /* JSON path of the reference (for messages) */
    size_t idx;            /* resolved index into set->roles */
} ref_t;

/* One element of a toxic combination: a role or an entitlement. */
typedef struct sod_item {
    int is_role;
    ref_t role;            /* is_role */
    char *target;          /* !is_role */
    char *type;
    char *value;
    uint32_t eid;          /* !is_role: interned (target, type, value) */
} sod_item_t;

typedef struct exempt {
    cond_t *who;
    char *owner;
    char *reason;
    long expires;          /* last valid day, days since 1970-01-01 */
    char expires_s[11];    /* "YYYY-MM-DD" */
} exempt_t;

typedef enum { A_MANAGER, A_GROUP, A_USERS } appr_kind_t;

typedef struct policy {
    char *id;
    char *kind;
    kind_t k;
    char *file;            /* file it came from (for messages) */
    char *description;
    cond_t *who;
    grant_t *grants;
    size_t ngrants;
    ref_t *roles;          /* K_ROLE: business roles assigned */
    size_t nroles;
    sod_item_t *items;     /* K_SOD: the toxic combination */
    size_t nitems;
    int prevent;           /* K_SOD: 1 prevent, 0 detect */
    exempt_t *ex;
    size_t nex;
    appr_kind_t ak;        /* K_APPROVAL */
    char *appr;            /* manager attribute name or group */
    char **users;          /* A_USERS list (NULL-terminated) */
    unsigned expires_s;    /* request lifetime */
    const cond_t *key;     /* the who-index key of who (NULL: none); a
                              policy found through it satisfies it */
} policy_t;

typedef struct role {
    char *id;
    int business;          /* 1 business, 0 technical */
    char *file;
    char *path;
    char *description;
    ref_t *inc;            /* included roles */
    size_t ninc;
    grant_t *grants;       /* technical roles only */
    size_t ngrants;
} role_t;

struct pg_policy_set {
    policy_t *p;
    size_t n;
    size_t cap;
    role_t *r;
    size_t nr;
    size_t rcap;
    /* compiled at load for pg_policy_decide_fast() */
    size_t *rsorted;       /* role indices sorted by id (binary search) */
    struct ix_ent *ix;     /* (attr, value) -> policies whose who needs it */
    size_t nix;
    uint32_t *slots;       /* open addressing: ix index + 1, 0 empty */
    size_t nslots;         /* power of two */
    uint32_t *ixattrs;     /* distinct attributes with eq/in/group keys */
    size_t nixattrs;
    uint32_t *pxattrs;     /* distinct attributes with prefix keys */
    size_t *pxmax;         /*   and their longest prefix */
    size_t npxattrs;
    const char **anames;   /* interned attribute names (aid -> name) */
    size_t nattrs;
    uint32_t *aslots;      /* open addressing: aid + 1, 0 empty */
    size_t naslots;        /* power of two */
    uint32_t groups_aid;   /* aid of "groups" (always interned) */
    size_t nmemo;          /* distinct (attribute, regex) pairs */
    uint64_t *always;      /* policies without an index key (bitmap) */
    size_t nwords;
    size_t neids;          /* distinct (target, type, value) */
    uint32_t *idslots;     /* policy ids (index + 1), for duplicates */
    const char **tnames;   /* distinct grant targets (canonical strings) */
    uint32_t *sod_roff;    /* SoD rules by their first role: CSR offsets */
    uint32_t *sod_rlist;   /*   (nr + 1 offsets) and policy indices */
    uint32_t *sod_eoff;    /* SoD rules by their first entitlement (eid) */
    uint32_t *sod_elist;
    size_t ntnames;
    size_t nidslots;
    uint64_t *reach;       /* nr rows of rwords: roles reachable from a role
                              through includes (itself included) */
    unsigned char *pkind;  /* per policy: its kind_t (compact) */
    struct rgent *rg;      /* every role's grants, flattened (CSR) */
    uint32_t *rg_off;      /*   nr + 1 offsets into rg */
    const cond_t **pwho;   /* per policy: its who (compact) */
    const cond_t **pkey;   /*   and its who-index key, or NULL */
    pg_acct_rule_t **acct; /* account rules ("accounts"), load order */
    char **acct_file;      /*   and the file each came from */
    size_t nacct, acctcap;
    const pg_acct_rule_t **tacct; /* per tnames index: its rule or NULL */
    uint64_t *sodeids;     /* eids listed in an SoD conflict (bitmap) */
    uint64_t *sodroles;    /* roles granting such an eid (rwords) */
    uint64_t *troles;      /* ntnames rows of rwords: roles with a grant
                              in that target */
    size_t rwords;
};

/* One entry of a role's compact grant list (fast path). */
struct rgent {
    const struct ent *e;   /* NULL: a grant without entitlements */
    uint32_t eid;
    uint32_t tix;          /* target index in tnames */
    unsigned char sod;     /* eid is named by an SoD conflict */
    unsigned char jit;
};

/* One posting list of the who-index. */
struct ix_ent {
    uint32_t aid;          /* interned attribute */
    int prefix;            /* 1: a prefix key, 0: an equality key */
    const char *val;       /* owned by the condition */
    size_t vlen;           /* strlen(val) */
    uint32_t *list;        /* ascending policy indices */
    size_t n, cap;
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
    free(c->lit);
    pg_strv_free(c->list);
    if (c->re_ok) {
        regfree(&c->re);
    }
    free(c);
}

/* Free an array of n grants (and the array). */
static void
grants_free(grant_t *g, size_t n)
{
    size_t i, j;

    for (i = 0; i < n; i++) {
        for (j = 0; j < g[i].nents; j++) {
            free(g[i].ents[j].type);
            free(g[i].ents[j].value);
        }
        free(g[i].ents);
        free(g[i].target);
    }
    free(g);
}

/* Free an array of n references (and the array). */
static void
refs_free(ref_t *r, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        free(r[i].name);
        free(r[i].path);
    }
    free(r);
}

/* Free what one policy owns (not the slot itself). */
static void
policy_clear(policy_t *p)
{
    size_t i;

    free(p->id);
    free(p->kind);
    free(p->file);
    free(p->description);
    cond_free(p->who);
    grants_free(p->grants, p->ngrants);
    refs_free(p->roles, p->nroles);
    for (i = 0; i < p->nitems; i++) {
        free(p->items[i].role.name);
        free(p->items[i].role.path);
        free(p->items[i].target);
        free(p->items[i].type);
        free(p->items[i].value);
    }
    free(p->items);
    for (i = 0; i < p->nex; i++) {
        cond_free(p->ex[i].who);
        free(p->ex[i].owner);
        free(p->ex[i].reason);
    }
    free(p->ex);
    free(p->appr);
    pg_strv_free(p->users);
}

/* Free what one role owns (not the slot itself). */
static void
role_clear(role_t *r)
{
    free(r->id);
    free(r->file);
    free(r->path);
    free(r->description);
    refs_free(r->inc, r->ninc);
    grants_free(r->grants, r->ngrants);
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
    for (i = 0; i < ps->nr; i++) {
        role_clear(&ps->r[i]);
    }
    for (i = 0; i < ps->nix; i++) {
        free(ps->ix[i].list);
    }
    free(ps->ix);
    free(ps->slots);
    free(ps->ixattrs);
    free(ps->pxattrs);
    free(ps->pxmax);
    free(ps->anames);
    free(ps->aslots);
    free(ps->always);
    free(ps->rsorted);
    free(ps->reach);
    free(ps->sodeids);
    free(ps->pkind);
    free(ps->pwho);
    free(ps->rg);
    free(ps->rg_off);
    free(ps->pkey);
    for (i = 0; i < ps->nacct; i++) {
        pg_acct_free(ps->acct[i]);
        free(ps->acct_file[i]);
    }
    free(ps->acct);
    free(ps->acct_file);
    free(ps->tacct);
    free(ps->sodroles);
    free(ps->troles);
    free(ps->idslots);
    free(ps->tnames);
    free(ps->sod_roff);
    free(ps->sod_rlist);
    free(ps->sod_eoff);
    free(ps->sod_elist);
    free(ps->p);
    free(ps->r);
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

/* End the current literal run: keep it in best when longer. */
static void
lit_end(char *run, size_t *rn, char *best, size_t *bn)
{
    if (*rn > *bn) {
        memcpy(best, run, *rn);
        *bn = *rn;
    }
    *rn = 0;
}

/*
 * The longest run of bytes that every match of the POSIX extended regex
 * re must contain, as a malloc'd string, or NULL (no such run, a "|"
 * anywhere, or out of memory: the run is only a prefilter). Conservative:
 * runs inside (), after [] or ".", and any escape other than escaped
 * punctuation end a run; an atom followed by "*", "?" or "{" is dropped
 * (back to the start of its UTF-8 character); "+" keeps the atom but
 * ends the run. re is at most MAX_REGEX bytes. Load time only.
 */
static char *
regex_literal(const char *re)
{
    char run[MAX_REGEX + 1], best[MAX_REGEX + 1], *out;
    size_t rn = 0, bn = 0, i = 0, last = 0;
    int depth = 0, c;

    if (strlen(re) > MAX_REGEX || strchr(re, '|') != NULL) {
        return NULL;
    }
    while (re[i] != '\0') {
        c = (unsigned char)re[i];
        if (c == '\\') {
            if (re[i + 1] != '\0' &&
                strchr(".[]()*+?{}^$\\/-", re[i + 1]) != NULL) {
                if (depth == 0) {
                    last = rn;
                    run[rn++] = re[i + 1];
                }
                i += 2;
            } else {
                lit_end(run, &rn, best, &bn);
                i += re[i + 1] != '\0' ? 2 : 1;
            }
            continue;
        }
        if (c == '*' || c == '?' || c == '{') {
            if (rn > 0) {
                rn = last;   /* the atom is optional */
            }
            lit_end(run, &rn, best, &bn);
            if (c == '{') {
                while (re[i] != '\0' && re[i] != '}') {
                    i++;
                }
            }
            if (re[i] != '\0') {
                i++;
            }
            continue;
        }
        if (c == '+') {
            lit_end(run, &rn, best, &bn);
            i++;
            continue;
        }
        if (c == '[') {
            lit_end(run, &rn, best, &bn);
            i++;
            if (re[i] == '^') {
                i++;
            }
            if (re[i] == ']') {
                i++;
            }
            while (re[i] != '\0' && re[i] != ']') {
                if (re[i] == '[' && (re[i + 1] == ':' || re[i + 1] == '=' ||
                                     re[i + 1] == '.')) {
                    char e = re[i + 1];
                    i += 2;
                    while (re[i] != '\0' && !(re[i] == e && re[i + 1] == ']')) {
                        i++;
                    }
                    if (re[i] != '\0') {
                        i += 2;
                    }
                    continue;
                }
                i++;
            }
            if (re[i] != '\0') {
                i++;
            }
            continue;
        }
        if (c == '(' || c == ')' || c == '.' || c == '^' || c == '$' ||
            c == '}' || c == ']') {
            lit_end(run, &rn, best, &bn);
            depth += c == '(' ? 1 : c == ')' && depth > 0 ? -1 : 0;
            i++;
            continue;
        }
        if (depth == 0) {
            if ((c & 0xC0) != 0x80) {
                last = rn;   /* start of this character */
            }
            run[rn++] = (char)c;
        }
        i++;
    }
    lit_end(run, &rn, best, &bn);
    if (bn == 0) {
        return NULL;
    }
    out = malloc(bn + 1);
    if (out != NULL) {
        memcpy(out, best, bn);
        out[bn] = '\0';
    }
    return out;
}

/* Days since 1970-01-01 of a valid proleptic Gregorian date. */
static long
days_from_civil(long y, unsigned m, unsigned d)
{
    long era, yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (long)(m + (m > 2 ? -3 : 9)) + 2) / 5 + (long)d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/*
 * Parse "YYYY-MM-DD" at the start of s into days since 1970-01-01.
 * With whole set the string must end there; otherwise it may continue
 * with "T..." (an ISO timestamp, whose time part is ignored). Returns 1
 * on success, 0 for anything else (including 2026-02-30).
 */
static int
parse_date(const char *s, int whole, long *out)
{
    static const unsigned mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30,
                                     31, 30, 31};
    unsigned y = 0, m, d, i;
    int leap;

    for (i = 0; i < 10; i++) {
        if (i == 4 || i == 7) {
            if (s[i] != '-') {
                return 0;
            }
        } else if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
    }
    if (!(s[10] == '\0' || (!whole && s[10] == 'T'))) {
        return 0;
    }
    for (i = 0; i < 4; i++) {
        y = y * 10 + (unsigned)(s[i] - '0');
    }
    m = (unsigned)(s[5] - '0') * 10 + (unsigned)(s[6] - '0');
    d = (unsigned)(s[8] - '0') * 10 + (unsigned)(s[9] - '0');
    if (m < 1 || m > 12 || d < 1 || d > mdays[m - 1]) {
        return 0;
    }
    leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (m == 2 && d == 29 && !leap) {
        return 0;
    }
    *out = days_from_civil((long)y, m, d);
    return 1;
}

/* Parse a whole decimal number (strtod syntax, finite); 1 on success. */
static int
parse_num(const char *s, double *out)
{
    char *end;
    double v;

    if (s[0] == '\0' || strlen(s) > 64) {
        return 0;
    }
    v = strtod(s, &end);
    if (*end != '\0' || v != v || v > 1e308 || v < -1e308) {
        return 0;
    }
    *out = v;
    return 1;
}

/* Operand of lt/le/gt/ge: a number, "YYYY-MM-DD" or "today". */
static pg_status_t
parse_cmp(cond_t *c, const json_t *v, const char *kp, pg_err_t *err)
{
    if (json_is_number(v)) {
        c->opnd = OP_NUM;
        c->num = json_number_value(v);
        return PG_OK;
    }
    if (json_is_string(v) && strcmp(json_string_value(v), "today") == 0) {
        c->opnd = OP_TODAY;
        return PG_OK;
    }
    if (json_is_string(v) && json_string_length(v) == 10 &&
        parse_date(json_string_value(v), 1, &c->day)) {
        c->opnd = OP_DATE;
        return PG_OK;
    }
    pg_err_set(err, "%s: must be a number, a date \"YYYY-MM-DD\" or "
               "\"today\"", kp);
    return PG_ERR_CONFIG;
}

/* {"attr": name, <one operator>: value}. */
static pg_status_t
parse_attr_cond(cond_t *c, const json_t *o, const char *path, pg_err_t *err)
{
    static const char *const keys[] = {"attr", "eq", "in", "exists",
                                       "prefix", "regex", "lt", "le", "gt",
                                       "ge", NULL};
    static const char *const ops[] = {"eq", "in", "exists", "prefix",
                                      "regex", "lt", "le", "gt", "ge", NULL};
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
                   "prefix, regex, lt, le, gt, ge (has %zu)", path, nops);
        return PG_ERR_CONFIG;
    }
    v = json_object_get(o, op);
    subpath(kp, sizeof(kp), path, ".");
    subpath(kp, sizeof(kp), kp, op);
    if (op[0] == 'l' || op[0] == 'g') {
        c->kind = op[0] == 'l' ? (op[1] == 't' ? C_LT : C_LE)
                               : (op[1] == 't' ? C_GT : C_GE);
        return parse_cmp(c, v, kp, err);
    }
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
        c->lit = regex_literal(c->str);
        c->litlen = c->lit != NULL ? strlen(c->lit) : 0;
    }
    c->slen = strlen(c->str);
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
                                        "regex", "lt", "le", "gt", "ge",
                                        NULL};
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
    static const char *const keys[] = {"type", "value", "jit", NULL};
    static const char *const jit_keys[] = {"scope", "lifetime_s", NULL};
    char ep[PG_ERR_MSG_MAX], jp[PG_ERR_MSG_MAX];
    char *scope = NULL;
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
        if (json_object_get(e, "jit") != NULL) {
            const json_t *j = json_object_get(e, "jit");
            subpath(jp, sizeof(jp), ep, ".jit");
            if (!json_is_object(j)) {
                pg_err_set(err, "%s: must be an object", jp);
                return PG_ERR_CONFIG;
            }
            TRY(pg_cfg_keys(j, jp, jit_keys, err));
            TRY(pg_cfg_str(j, jp, "scope", 1, NULL, &scope, err));
            if (strcmp(scope, "app") != 0) {
                free(scope);
                pg_err_set(err, "%s.scope: must be \"app\" (the target "
                           "being accessed)", jp);
                return PG_ERR_CONFIG;
            }
            free(scope);
            scope = NULL;
            if (json_object_get(j, "lifetime_s") == NULL) {
                pg_err_set(err, "%s.lifetime_s: missing required field", jp);
                return PG_ERR_CONFIG;
            }
            TRY(pg_cfg_uint(j, jp, "lifetime_s", 0, 60, MAX_LIFETIME,
                            &t->jit_lifetime, err));
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

/* FNV-1a of a NUL-terminated string. */
static uint32_t
str_hash(const char *s)
{
    uint32_t h = 2166136261u;

    for (; *s != '\0'; s++) {
        h = (h ^ (unsigned char)*s) * 16777619u;
    }
    return h;
}

/*
 * *dup = the earlier policy with the id of policy `self`, or NULL after
 * adding self to the id table (load time; grows the table as needed).
 * PG_ERR_NOMEM when the table cannot grow.
 */
static pg_status_t
find_policy(pg_policy_set_t *ps, size_t self, const policy_t **dup)
{
    const char *id = ps->p[self].id;
    size_t m, k, i;
    uint32_t v;

    if (2 * (self + 1) + 16 > ps->nidslots) {
        size_t ns = ps->nidslots == 0 ? 64 : ps->nidslots * 2;
        uint32_t *nt;
        while (ns < 2 * (self + 1) + 16) {
            ns *= 2;
        }
        nt = calloc(ns, sizeof(*nt));
        if (nt == NULL) {
            return PG_ERR_NOMEM;
        }
        free(ps->idslots);
        ps->idslots = nt;
        ps->nidslots = ns;
        for (i = 0; i < self; i++) {
            k = str_hash(ps->p[i].id) & (ns - 1);
            while (nt[k] != 0) {
                k = (k + 1) & (ns - 1);
            }
            nt[k] = (uint32_t)(i + 1);
        }
    }
    *dup = NULL;
    m = ps->nidslots - 1;
    k = str_hash(id) & m;
    while ((v = ps->idslots[k]) != 0) {
        if (strcmp(ps->p[v - 1].id, id) == 0) {
            *dup = &ps->p[v - 1];
            return PG_OK;
        }
        k = (k + 1) & m;
    }
    ps->idslots[k] = (uint32_t)(self + 1);
    return PG_OK;
}

/* A reference to a role by name at path (string member key of o). */
static pg_status_t
parse_ref(ref_t *r, const json_t *v, const char *path, pg_err_t *err)
{
    if (!json_is_string(v) || !word_ok(json_string_value(v), 128, "_.:- ")) {
        pg_err_set(err, "%s: must be a role id (1-128 characters of "
                   "A-Z a-z 0-9 _ . : - and space)", path);
        return PG_ERR_CONFIG;
    }
    r->name = strdup(json_string_value(v));
    r->path = strdup(path);
    return r->name != NULL && r->path != NULL ? PG_OK : PG_ERR_NOMEM;
}

/* An array of role references (1..MAX_REFS unless may_be_empty). */
static pg_status_t
parse_refs(ref_t **out, size_t *n, const json_t *a, const char *path,
           int may_be_empty, pg_err_t *err)
{
    char ep[PG_ERR_MSG_MAX];
    size_t i, cnt;
    pg_status_t st;

    if (!json_is_array(a)) {
        pg_err_set(err, "%s: must be an array of role ids", path);
        return PG_ERR_CONFIG;
    }
    cnt = json_array_size(a);
    if ((cnt == 0 && !may_be_empty) || cnt > MAX_REFS) {
        pg_err_set(err, "%s: must hold %u to %u role ids", path,
                   may_be_empty ? 0u : 1u, MAX_REFS);
        return PG_ERR_CONFIG;
    }
    *out = calloc(cnt > 0 ? cnt : 1, sizeof(**out));
    if (*out == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < cnt; i++) {
        subpath_idx(ep, sizeof(ep), path, "", i);
        *n = i + 1;
        TRY(parse_ref(&(*out)[i], json_array_get(a, i), ep, err));
    }
    return PG_OK;
}

/* The SoD "conflict": 2..16 roles or entitlements. */
static pg_status_t
parse_conflict(policy_t *p, const json_t *o, const char *path,
               const struct pg_config *cfg, pg_err_t *err)
{
    static const char *const role_keys[] = {"role", NULL};
    static const char *const ent_keys[] = {"target", "type", "value", NULL};
    const json_t *a = json_object_get(o, "conflict");
    char ep[PG_ERR_MSG_MAX], kp[PG_ERR_MSG_MAX];
    size_t i, n;
    pg_status_t st;

    subpath(kp, sizeof(kp), path, ".conflict");
    if (a == NULL) {
        pg_err_set(err, "%s: missing required field", kp);
        return PG_ERR_CONFIG;
    }
    if (!json_is_array(a) || json_array_size(a) < 2 ||
        json_array_size(a) > MAX_SOD_ITEMS) {
        pg_err_set(err, "%s: must be an array of 2 to %u roles or "
                   "entitlements", kp, MAX_SOD_ITEMS);
        return PG_ERR_CONFIG;
    }
    n = json_array_size(a);
    p->items = calloc(n, sizeof(*p->items));
    if (p->items == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < n; i++) {
        const json_t *e = json_array_get(a, i);
        sod_item_t *it = &p->items[i];
        subpath_idx(ep, sizeof(ep), path, ".conflict", i);
        p->nitems = i + 1;
        if (!json_is_object(e)) {
            pg_err_set(err, "%s: must be {\"role\": id} or {\"target\", "
                       "\"type\", \"value\"}", ep);
            return PG_ERR_CONFIG;
        }
        if (json_object_get(e, "role") != NULL) {
            it->is_role = 1;
            TRY(pg_cfg_keys(e, ep, role_keys, err));
            subpath(kp, sizeof(kp), ep, ".role");
            TRY(parse_ref(&it->role, json_object_get(e, "role"), kp, err));
            continue;
        }
        TRY(pg_cfg_keys(e, ep, ent_keys, err));
        TRY(pg_cfg_str(e, ep, "target", 1, NULL, &it->target, err));
        if (cfg != NULL && pg_config_target(cfg, it->target) == NULL) {
            pg_err_set(err, "%s.target: unknown target%s%s%s", ep,
                       word_ok(it->target, 64, "_-") ? " \"" : "",
                       word_ok(it->target, 64, "_-") ? it->target : "",
                       word_ok(it->target, 64, "_-") ? "\"" : "");
            return PG_ERR_CONFIG;
        }
        TRY(pg_cfg_str(e, ep, "type", 1, NULL, &it->type, err));
        TRY(pg_cfg_str(e, ep, "value", 1, NULL, &it->value, err));
        if (strlen(it->value) > MAX_VALUE || strlen(it->type) > 64) {
            pg_err_set(err, "%s: type or value too long", ep);
            return PG_ERR_CONFIG;
        }
    }
    for (i = 1; i < n; i++) {
        if (p->items[i].is_role != p->items[0].is_role) {
            subpath_idx(ep, sizeof(ep), path, ".conflict", i);
            pg_err_set(err, "%s: a conflict lists only roles or only "
                       "entitlements, not both", ep);
            return PG_ERR_CONFIG;
        }
    }
    return PG_OK;
}

/* SoD "exemptions": [{"who", "owner", "expires", "reason"}]. */
static pg_status_t
parse_exemptions(policy_t *p, const json_t *a, const char *path,
                 pg_err_t *err)
{
    static const char *const keys[] = {"who", "owner", "expires", "reason",
                                       NULL};
    char ep[PG_ERR_MSG_MAX], kp[PG_ERR_MSG_MAX];
    char *date = NULL;
    size_t i, n;
    pg_status_t st;

    if (a == NULL) {
        return PG_OK;
    }
    subpath(kp, sizeof(kp), path, ".exemptions");
    if (!json_is_array(a) || json_array_size(a) > MAX_EXEMPT) {
        pg_err_set(err, "%s: must be an array of at most %u exemptions", kp,
                   MAX_EXEMPT);
        return PG_ERR_CONFIG;
    }
    n = json_array_size(a);
    p->ex = calloc(n > 0 ? n : 1, sizeof(*p->ex));
    if (p->ex == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < n; i++) {
        const json_t *e = json_array_get(a, i);
        exempt_t *x = &p->ex[i];
        subpath_idx(ep, sizeof(ep), path, ".exemptions", i);
        p->nex = i + 1;
        TRY(pg_cfg_keys(e, ep, keys, err));
        subpath(kp, sizeof(kp), ep, ".who");
        if (json_object_get(e, "who") == NULL) {
            pg_err_set(err, "%s: missing required field", kp);
            return PG_ERR_CONFIG;
        }
        TRY(parse_cond(json_object_get(e, "who"), kp, 1, &x->who, err));
        TRY(pg_cfg_str(e, ep, "owner", 1, NULL, &x->owner, err));
        TRY(pg_cfg_str(e, ep, "reason", 0, NULL, &x->reason, err));
        TRY(pg_cfg_str(e, ep, "expires", 1, NULL, &date, err));
        if (strlen(date) != 10 || !parse_date(date, 1, &x->expires)) {
            free(date);
            pg_err_set(err, "%s.expires: must be a date \"YYYY-MM-DD\"", ep);
            return PG_ERR_CONFIG;
        }
        memcpy(x->expires_s, date, 11);
        free(date);
        date = NULL;
    }
    return PG_OK;
}

/* Approval "approvers": exactly one of manager_attr, group, users. */
static pg_status_t
parse_approvers(policy_t *p, const json_t *o, const char *path,
                pg_err_t *err)
{
    static const char *const keys[] = {"manager_attr", "group", "users",
                                       NULL};
    const json_t *a = json_object_get(o, "approvers");
    char kp[PG_ERR_MSG_MAX];
    size_t n = 0;
    pg_status_t st;

    subpath(kp, sizeof(kp), path, ".approvers");
    if (a == NULL) {
        pg_err_set(err, "%s: missing required field", kp);
        return PG_ERR_CONFIG;
    }
    if (!json_is_object(a)) {
        pg_err_set(err, "%s: must be an object", kp);
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_keys(a, kp, keys, err));
    n = (json_object_get(a, "manager_attr") != NULL) +
        (json_object_get(a, "group") != NULL) +
        (json_object_get(a, "users") != NULL);
    if (n != 1) {
        pg_err_set(err, "%s: needs exactly one of manager_attr, group, "
                   "users (has %zu)", kp, n);
        return PG_ERR_CONFIG;
    }
    if (json_object_get(a, "users") != NULL) {
        p->ak = A_USERS;
        TRY(pg_cfg_strv(a, kp, "users", NULL, &p->users, err));
        if (p->users == NULL || p->users[0] == NULL) {
            pg_err_set(err, "%s.users: must not be empty", kp);
            return PG_ERR_CONFIG;
        }
        return PG_OK;
    }
    p->ak = json_object_get(a, "group") != NULL ? A_GROUP : A_MANAGER;
    TRY(pg_cfg_str(a, kp, p->ak == A_GROUP ? "group" : "manager_attr", 1,
                   NULL, &p->appr, err));
    if (strlen(p->appr) > MAX_VALUE) {
        pg_err_set(err, "%s: name longer than %u bytes", kp, MAX_VALUE);
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/* Parse policies[i] at path into a new slot of ps. Messages lack the file. */
static pg_status_t
parse_policy(pg_policy_set_t *ps, const json_t *o, const char *path,
             const char *file, const struct pg_config *cfg, pg_err_t *err)
{
    static const char *const kinds[] = {"birthright", "role", "sod",
                                        "approval", NULL};
    static const char *const k_birth[] = {"id", "kind", "description", "who",
                                          "grants", NULL};
    static const char *const k_role[] = {"id", "kind", "description", "who",
                                         "roles", NULL};
    static const char *const k_sod[] = {"id", "kind", "description", "who",
                                        "conflict", "action", "exemptions",
                                        NULL};
    static const char *const k_appr[] = {"id", "kind", "description", "who",
                                         "grants", "approvers",
                                         "request_expires_s", NULL};
    static const char *const *const kkeys[] = {k_birth, k_role, k_sod,
                                               k_appr};
    char wp[PG_ERR_MSG_MAX];
    const policy_t *dup;
    char *action = NULL;
    policy_t *p;
    size_t k;
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
    if (!json_is_object(o)) {
        pg_err_set(err, "%s: must be an object", path);
        return PG_ERR_CONFIG;
    }
    p = &ps->p[ps->n];
    memset(p, 0, sizeof(*p));
    ps->n++;   /* from here on the slot is owned by ps (freed with it) */
    p->file = strdup(file);
    if (p->file == NULL) {
        return PG_ERR_NOMEM;
    }
    TRY(pg_cfg_str(o, path, "kind", 1, NULL, &p->kind, err));
    for (k = 0; kinds[k] != NULL; k++) {
        if (strcmp(p->kind, kinds[k]) == 0) {
            break;
        }
    }
    if (kinds[k] == NULL) {
        if (word_ok(p->kind, 32, "_-")) {
            pg_err_set(err, "%s.kind: unknown kind \"%s\" (supported: "
                       "birthright, role, sod, approval)", path, p->kind);
        } else {
            pg_err_set(err, "%s.kind: unknown kind (supported: "
                       "birthright, role, sod, approval)", path);
        }
        return PG_ERR_CONFIG;
    }
    p->k = (kind_t)k;
    TRY(pg_cfg_keys(o, path, kkeys[k], err));
    TRY(pg_cfg_str(o, path, "id", 1, NULL, &p->id, err));
    if (!word_ok(p->id, 128, "_.:-")) {
        pg_err_set(err, "%s.id: must be 1-128 characters of "
                   "A-Z a-z 0-9 _ . : -", path);
        return PG_ERR_CONFIG;
    }
    TRY(find_policy(ps, ps->n - 1, &dup));
    if (dup != NULL) {
        pg_err_set(err, "%s.id: duplicate policy id \"%s\" (first defined "
                   "in %s)", path, p->id, dup->file);
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_str(o, path, "description", 0, NULL, &p->description, err));
    subpath(wp, sizeof(wp), path, ".who");
    if (json_object_get(o, "who") == NULL) {
        if (p->k != K_SOD) {
            pg_err_set(err, "%s: missing required field (use {\"all\": []} "
                       "to match everyone)", wp);
            return PG_ERR_CONFIG;
        }
        p->who = calloc(1, sizeof(*p->who));   /* empty all: everyone */
        if (p->who == NULL) {
            return PG_ERR_NOMEM;
        }
        p->who->kind = C_ALL;
    } else {
        TRY(parse_cond(json_object_get(o, "who"), wp, 1, &p->who, err));
    }
    switch (p->k) {
    case K_BIRTHRIGHT:
        return parse_grants(p, json_object_get(o, "grants"), path, cfg, err);
    case K_ROLE:
        subpath(wp, sizeof(wp), path, ".roles");
        if (json_object_get(o, "roles") == NULL) {
            pg_err_set(err, "%s: missing required field", wp);
            return PG_ERR_CONFIG;
        }
        return parse_refs(&p->roles, &p->nroles, json_object_get(o, "roles"),
                          wp, 0, err);
    case K_SOD:
        TRY(parse_conflict(p, o, path, cfg, err));
        TRY(pg_cfg_str(o, path, "action", 1, NULL, &action, err));
        if (strcmp(action, "prevent") != 0 && strcmp(action, "detect") != 0) {
            free(action);
            pg_err_set(err, "%s.action: must be \"prevent\" or \"detect\"",
                       path);
            return PG_ERR_CONFIG;
        }
        p->prevent = action[0] == 'p';
        free(action);
        return parse_exemptions(p, json_object_get(o, "exemptions"), path,
                                err);
    case K_APPROVAL:
        TRY(parse_grants(p, json_object_get(o, "grants"), path, cfg, err));
        TRY(parse_approvers(p, o, path, err));
        return pg_cfg_uint(o, path, "request_expires_s", 604800, 3600,
                           7776000, &p->expires_s, err);
    }
    return PG_ERR_INTERNAL;
}

/* The role with this id among ps->r[0..n), or NULL. */
static role_t *
find_role(const pg_policy_set_t *ps, const char *id, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (strcmp(ps->r[i].id, id) == 0) {
            return &ps->r[i];
        }
    }
    return NULL;
}

/* Parse roles[i] at path into a new slot of ps. Messages lack the file. */
static pg_status_t
parse_role(pg_policy_set_t *ps, const json_t *o, const char *path,
           const char *file, const struct pg_config *cfg, pg_err_t *err)
{
    static const char *const keys[] = {"id", "type", "description",
                                       "includes", "grants", NULL};
    char kp[PG_ERR_MSG_MAX];
    char *type = NULL;
    const role_t *dup;
    role_t *r;
    pg_status_t st;

    if (ps->nr >= MAX_ROLES) {
        pg_err_set(err, "%s: more than %u roles in total", path, MAX_ROLES);
        return PG_ERR_CONFIG;
    }
    if (ps->nr == ps->rcap) {
        size_t nc = ps->rcap == 0 ? 16 : ps->rcap * 2;
        role_t *nr = realloc(ps->r, nc * sizeof(*nr));
        if (nr == NULL) {
            return PG_ERR_NOMEM;
        }
        ps->r = nr;
        ps->rcap = nc;
    }
    TRY(pg_cfg_keys(o, path, keys, err));
    r = &ps->r[ps->nr];
    memset(r, 0, sizeof(*r));
    ps->nr++;
    r->file = strdup(file);
    r->path = strdup(path);
    if (r->file == NULL || r->path == NULL) {
        return PG_ERR_NOMEM;
    }
    TRY(pg_cfg_str(o, path, "id", 1, NULL, &r->id, err));
    if (!word_ok(r->id, 128, "_.:- ")) {
        pg_err_set(err, "%s.id: must be 1-128 characters of "
                   "A-Z a-z 0-9 _ . : - and space", path);
        return PG_ERR_CONFIG;
    }
    dup = find_role(ps, r->id, ps->nr - 1);
    if (dup != NULL) {
        pg_err_set(err, "%s.id: duplicate role id \"%s\" (first defined "
                   "in %s)", path, r->id, dup->file);
        return PG_ERR_CONFIG;
    }
    TRY(pg_cfg_str(o, path, "type", 1, NULL, &type, err));
    if (strcmp(type, "business") != 0 && strcmp(type, "technical") != 0) {
        free(type);
        pg_err_set(err, "%s.type: must be \"business\" or \"technical\"",
                   path);
        return PG_ERR_CONFIG;
    }
    r->business = type[0] == 'b';
    free(type);
    TRY(pg_cfg_str(o, path, "description", 0, NULL, &r->description, err));
    if (json_object_get(o, "includes") != NULL) {
        subpath(kp, sizeof(kp), path, ".includes");
        TRY(parse_refs(&r->inc, &r->ninc, json_object_get(o, "includes"), kp,
                       1, err));
    }
    if (json_object_get(o, "grants") != NULL) {
        if (r->business) {
            pg_err_set(err, "%s.grants: a business role grants through "
                       "technical roles (use \"includes\")", path);
            return PG_ERR_CONFIG;
        }
        policy_t tmp;
        memset(&tmp, 0, sizeof(tmp));
        st = parse_grants(&tmp, json_object_get(o, "grants"), path, cfg, err);
        r->grants = tmp.grants;
        r->ngrants = tmp.ngrants;
        if (st != PG_OK) {
            return st;
        }
    }
    if (r->business && r->ninc == 0) {
        pg_err_set(err, "%s.includes: a business role must include at least "
                   "one role", path);
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/* ---- compiled lookups ----------------------------------------------- */

static const pg_policy_set_t *g_sort_ps;   /* qsort has no context arg */

/* Order role indices by id (qsort callback). */
static int
role_cmp(const void *a, const void *b)
{
    return strcmp(g_sort_ps->r[*(const size_t *)a].id,
                  g_sort_ps->r[*(const size_t *)b].id);
}

/* Build ps->rsorted (role indices by id). Load time only. */
static pg_status_t
sort_roles(pg_policy_set_t *ps)
{
    size_t i;

    ps->rsorted = calloc(ps->nr + 1, sizeof(*ps->rsorted));
    if (ps->rsorted == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < ps->nr; i++) {
        ps->rsorted[i] = i;
    }
    g_sort_ps = ps;
    qsort(ps->rsorted, ps->nr, sizeof(*ps->rsorted), role_cmp);
    g_sort_ps = NULL;
    return PG_OK;
}

/* The role with this id (binary search over rsorted), or NULL. */
static const role_t *
role_by_id(const pg_policy_set_t *ps, const char *id)
{
    size_t lo = 0, hi = ps->nr;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(ps->r[ps->rsorted[mid]].id, id);
        if (c == 0) {
            return &ps->r[ps->rsorted[mid]];
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

/* FNV-1a of attr, a separator byte and val. */
static uint32_t
ix_hash(const char *attr, const char *val, size_t vlen)
{
    uint32_t h = 2166136261u;
    size_t i;

    for (i = 0; attr[i] != '\0'; i++) {
        h = (h ^ (unsigned char)attr[i]) * 16777619u;
    }
    h = (h ^ 0xffu) * 16777619u;
    for (i = 0; i < vlen; i++) {
        h = (h ^ (unsigned char)val[i]) * 16777619u;
    }
    return h;
}

/* FNV-1a state after an attribute id and the key kind (prefix or not). */
static uint32_t
key_hash_init(uint32_t aid, int prefix)
{
    uint32_t h = 2166136261u;
    unsigned i;

    for (i = 0; i < 4; i++) {
        h = (h ^ ((aid >> (8 * i)) & 0xffu)) * 16777619u;
    }
    return (h ^ (prefix ? 0xfeu : 0xffu)) * 16777619u;
}

/* FNV-1a step: h followed by byte c. */
static inline uint32_t
key_hash_step(uint32_t h, unsigned char c)
{
    return (h ^ c) * 16777619u;
}

/* FNV-1a of n bytes (attribute names). */
static uint32_t
mem_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    size_t i;

    for (i = 0; i < n; i++) {
        h = key_hash_step(h, (unsigned char)s[i]);
    }
    return h;
}

/*
 * The posting list with hash h for (aid, prefix, val[0..vlen)), or NULL.
 * No allocation.
 */
static const struct ix_ent *
ix_find(const pg_policy_set_t *ps, uint32_t h, uint32_t aid, int prefix,
        const char *val, size_t vlen)
{
    size_t m = ps->nslots - 1, k;
    uint32_t s;

    if (ps->nslots == 0) {
        return NULL;
    }
    k = h & m;
    while ((s = ps->slots[k]) != 0) {
        const struct ix_ent *e = &ps->ix[s - 1];
        if (e->aid == aid && e->prefix == prefix && e->vlen == vlen &&
            memcmp(e->val, val, vlen) == 0) {
            return e;
        }
        k = (k + 1) & m;
    }
    return NULL;
}

/*
 * A condition that must hold for c to hold and that the index can
 * answer, itself or inside (nested) "all": with prefix 0 an eq, in or
 * group; with prefix 1 a prefix. NULL when there is none.
 */
static const cond_t *
key_cond_kind(const cond_t *c, int prefix)
{
    size_t i;

    if (!prefix &&
        (c->kind == C_EQ || c->kind == C_IN || c->kind == C_GROUP)) {
        return c;
    }
    if (prefix && c->kind == C_PREFIX) {
        return c;
    }
    if (c->kind == C_ALL) {
        for (i = 0; i < c->nkids; i++) {
            const cond_t *k = key_cond_kind(c->kids[i], prefix);
            if (k != NULL) {
                return k;
            }
        }
    }
    return NULL;
}

/*
 * The index key of a "who": an equality (eq/in/group) when there is
 * one, else a prefix; NULL when there is neither (the policy is always
 * a candidate).
 */
static const cond_t *
key_cond(const cond_t *c)
{
    const cond_t *k = key_cond_kind(c, 0);

    return k != NULL ? k : key_cond_kind(c, 1);
}

/* Add aid to the distinct list a[0..*n) unless present. */
static size_t
aid_list_add(uint32_t *a, size_t *n, uint32_t aid)
{
    size_t j;

    for (j = 0; j < *n; j++) {
        if (a[j] == aid) {
            return j;
        }
    }
    a[(*n)++] = aid;
    return j;
}

/* Add policy pi to the posting list of (aid, prefix, val). */
static pg_status_t
ix_add(pg_policy_set_t *ps, uint32_t aid, int prefix, const char *val,
       uint32_t pi)
{
    size_t m = ps->nslots - 1, k, vlen = strlen(val), i;
    uint32_t h = key_hash_init(aid, prefix), s;
    struct ix_ent *e;

    for (i = 0; i < vlen; i++) {
        h = key_hash_step(h, (unsigned char)val[i]);
    }
    k = h & m;
    while ((s = ps->slots[k]) != 0) {
        e = &ps->ix[s - 1];
        if (e->aid == aid && e->prefix == prefix && strcmp(e->val, val) == 0) {
            break;
        }
        k = (k + 1) & m;
    }
    if (s == 0) {
        e = &ps->ix[ps->nix++];
        memset(e, 0, sizeof(*e));
        e->aid = aid;
        e->prefix = prefix;
        e->val = val;
        e->vlen = vlen;
        ps->slots[k] = (uint32_t)ps->nix;
        if (prefix) {
            size_t j = aid_list_add(ps->pxattrs, &ps->npxattrs, aid);
            if (vlen > ps->pxmax[j]) {
                ps->pxmax[j] = vlen;
            }
        } else {
            (void)aid_list_add(ps->ixattrs, &ps->nixattrs, aid);
        }
    } else {
        e = &ps->ix[s - 1];
    }
    if (e->n > 0 && e->list[e->n - 1] == pi) {
        return PG_OK;   /* "in" listing a value twice */
    }
    if (e->n == e->cap) {
        size_t nc = e->cap == 0 ? 4 : e->cap * 2;
        uint32_t *nl = realloc(e->list, nc * sizeof(*nl));
        if (nl == NULL) {
            return PG_ERR_NOMEM;
        }
        e->list = nl;
        e->cap = nc;
    }
    e->list[e->n++] = pi;
    return PG_OK;
}

/* The aid of attribute name[0..n), or UINT32_MAX. No allocation. */
static uint32_t
attr_find(const pg_policy_set_t *ps, const char *name, size_t n)
{
    size_t m = ps->naslots - 1, k;
    uint32_t s;

    if (ps->naslots == 0) {
        return UINT32_MAX;
    }
    k = mem_hash(name, n) & m;
    while ((s = ps->aslots[k]) != 0) {
        const char *a = ps->anames[s - 1];
        if (strncmp(a, name, n) == 0 && a[n] == '\0') {
            return s - 1;
        }
        k = (k + 1) & m;
    }
    return UINT32_MAX;
}

/* The aid of name, added when new (the table is sized beforehand). */
static uint32_t
attr_add(pg_policy_set_t *ps, const char *name)
{
    size_t n = strlen(name), m = ps->naslots - 1, k;
    uint32_t a = attr_find(ps, name, n);

    if (a != UINT32_MAX) {
        return a;
    }
    k = mem_hash(name, n) & m;
    while (ps->aslots[k] != 0) {
        k = (k + 1) & m;
    }
    ps->anames[ps->nattrs] = name;
    ps->aslots[k] = (uint32_t)++ps->nattrs;
    return (uint32_t)(ps->nattrs - 1);
}

/*
 * Walk a condition tree: with ps NULL count attribute operands into *cnt,
 * else give each attribute operand (and group test) its aid.
 */
static void
cond_attrs(pg_policy_set_t *ps, cond_t *c, size_t *cnt)
{
    size_t i;

    if (c == NULL) {
        return;
    }
    for (i = 0; i < c->nkids; i++) {
        cond_attrs(ps, c->kids[i], cnt);
    }
    if (c->attr == NULL && c->kind != C_GROUP) {
        return;
    }
    if (ps == NULL) {
        (*cnt)++;
    } else {
        c->aid = c->kind == C_GROUP ? ps->groups_aid : attr_add(ps, c->attr);
    }
}

/* Give c's regex conditions (and its children's) their memo slot. */
static void
memo_walk(pg_policy_set_t *ps, cond_t *c, cond_t **tab, size_t m)
{
    size_t i, k;

    if (c == NULL) {
        return;
    }
    for (i = 0; i < c->nkids; i++) {
        memo_walk(ps, c->kids[i], tab, m);
    }
    if (c->kind != C_REGEX) {
        return;
    }
    k = (mem_hash(c->str, strlen(c->str)) ^ c->aid) & m;
    while (tab[k] != NULL) {
        if (tab[k]->aid == c->aid && strcmp(tab[k]->str, c->str) == 0) {
            c->memo = tab[k]->memo;
            return;
        }
        k = (k + 1) & m;
    }
    tab[k] = c;
    c->memo = (uint32_t)++ps->nmemo;
}

/*
 * Share one result slot among regex conditions with the same attribute
 * and source (cnt bounds their number). Load time only.
 */
static pg_status_t
memo_regexes(pg_policy_set_t *ps, size_t cnt)
{
    size_t i, j, ns = 16;
    cond_t **tab;

    while (ns < 2 * cnt + 16) {
        ns *= 2;
    }
    tab = calloc(ns, sizeof(*tab));
    if (tab == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < ps->n; i++) {
        memo_walk(ps, ps->p[i].who, tab, ns - 1);
        for (j = 0; j < ps->p[i].nex; j++) {
            memo_walk(ps, ps->p[i].ex[j].who, tab, ns - 1);
        }
    }
    free(tab);
    return PG_OK;
}

/*
 * Intern every attribute name the conditions test (and "groups") into
 * small integers: a decision looks each identity attribute up once and
 * conditions read their value by index. Load time only.
 */
static pg_status_t
intern_attrs(pg_policy_set_t *ps)
{
    size_t i, j, cnt = 1, ns = 16;

    for (i = 0; i < ps->n; i++) {
        cond_attrs(NULL, ps->p[i].who, &cnt);
        for (j = 0; j < ps->p[i].nex; j++) {
            cond_attrs(NULL, ps->p[i].ex[j].who, &cnt);
        }
    }
    while (ns < 2 * cnt + 16) {
        ns *= 2;
    }
    ps->anames = calloc(cnt + 1, sizeof(*ps->anames));
    ps->aslots = calloc(ns, sizeof(*ps->aslots));
    if (ps->anames == NULL || ps->aslots == NULL) {
        return PG_ERR_NOMEM;
    }
    ps->naslots = ns;
    ps->groups_aid = attr_add(ps, "groups");
    for (i = 0; i < ps->n; i++) {
        cond_attrs(ps, ps->p[i].who, NULL);
        for (j = 0; j < ps->p[i].nex; j++) {
            cond_attrs(ps, ps->p[i].ex[j].who, NULL);
        }
    }
    return memo_regexes(ps, cnt);
}

/*
 * vals[aid] = attrs' value of every interned attribute (NULL when
 * absent). One pass over attrs' members; no allocation. A member name
 * with an embedded NUL never matches (as with json_object_get()).
 */
static void
attr_fill(const pg_policy_set_t *ps, const json_t *attrs,
          const json_t **vals)
{
    void *it = json_object_iter((json_t *)attrs);

    memset(vals, 0, (ps->nattrs + 1) * sizeof(*vals));
    while (it != NULL) {
        const char *key = json_object_iter_key(it);
        size_t kl = json_object_iter_key_len(it);
        uint32_t a = attr_find(ps, key, kl);
        if (a != UINT32_MAX && memchr(key, '\0', kl) == NULL) {
            vals[a] = json_object_iter_value(it);
        }
        it = json_object_iter_next((json_t *)attrs, it);
    }
}

/* Interning table entry (load time only). */
typedef struct itab {
    const char *t, *ty, *v;
    uint32_t id;
    int used;
} itab_t;

/* The id of (t, ty, v) in tab (mask m), added when new. */
static uint32_t
intern(itab_t *tab, size_t m, pg_policy_set_t *ps, const char *t,
       const char *ty, const char *v)
{
    uint32_t h = ix_hash(t, ty, strlen(ty));
    size_t k, i;

    for (i = 0; v[i] != '\0'; i++) {
        h = (h ^ (unsigned char)v[i]) * 16777619u;
    }
    k = h & m;
    while (tab[k].used) {
        if (strcmp(tab[k].v, v) == 0 && strcmp(tab[k].ty, ty) == 0 &&
            strcmp(tab[k].t, t) == 0) {
            return tab[k].id;
        }
        k = (k + 1) & m;
    }
    tab[k].used = 1;
    tab[k].t = t;
    tab[k].ty = ty;
    tab[k].v = v;
    tab[k].id = (uint32_t)ps->neids++;
    return tab[k].id;
}

/* The canonical target string for name, or NULL. */
static const char *
target_canon(const pg_policy_set_t *ps, const char *name)
{
    size_t i;

    for (i = 0; i < ps->ntnames; i++) {
        if (strcmp(ps->tnames[i], name) == 0) {
            return ps->tnames[i];
        }
    }
    return NULL;
}

/* Intern the entitlements (and targets) of grants g[0..n). */
static void
intern_grants(itab_t *tab, size_t m, pg_policy_set_t *ps, grant_t *g,
              size_t n)
{
    size_t i, j;

    for (i = 0; i < n; i++) {
        g[i].tcanon = target_canon(ps, g[i].target);
        if (g[i].tcanon == NULL) {
            g[i].tcanon = g[i].target;
            ps->tnames[ps->ntnames++] = g[i].target;
        }
        for (g[i].tix = 0; ps->tnames[g[i].tix] != g[i].tcanon; g[i].tix++) {
        }
        for (j = 0; j < g[i].nents; j++) {
            g[i].ents[j].eid = intern(tab, m, ps, g[i].target,
                                      g[i].ents[j].type, g[i].ents[j].value);
        }
    }
}

/*
 * Give every distinct (target, type, value) of grants and SoD conflicts a
 * small integer, so a decision finds an item by array index instead of by
 * comparing strings. Load time only.
 */
static pg_status_t
intern_all(pg_policy_set_t *ps)
{
    size_t i, j, cnt = 0, ns = 16;
    itab_t *tab;

    for (i = 0; i < ps->n; i++) {
        for (j = 0; j < ps->p[i].ngrants; j++) {
            cnt += ps->p[i].grants[j].nents + 1;
        }
        cnt += ps->p[i].nitems;
    }
    for (i = 0; i < ps->nr; i++) {
        for (j = 0; j < ps->r[i].ngrants; j++) {
            cnt += ps->r[i].grants[j].nents + 1;
        }
    }
    while (ns < 2 * cnt + 16) {
        ns *= 2;
    }
    tab = calloc(ns, sizeof(*tab));
    ps->tnames = calloc(cnt + 1, sizeof(*ps->tnames));
    if (tab == NULL || ps->tnames == NULL) {
        free(tab);
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < ps->n; i++) {
        policy_t *p = &ps->p[i];
        intern_grants(tab, ns - 1, ps, p->grants, p->ngrants);
        for (j = 0; j < p->nitems; j++) {
            if (!p->items[j].is_role) {
                p->items[j].eid = intern(tab, ns - 1, ps, p->items[j].target,
                                         p->items[j].type,
                                         p->items[j].value);
            }
        }
    }
    for (i = 0; i < ps->nr; i++) {
        intern_grants(tab, ns - 1, ps, ps->r[i].grants, ps->r[i].ngrants);
    }
    free(tab);
    return PG_OK;
}

/* Set in row the roles reachable from role i (row may be i's own row). */
static void
reach_fill(const pg_policy_set_t *ps, size_t i, uint64_t *row)
{
    size_t j;

    if ((row[i / 64] >> (i % 64)) & 1u) {
        return;
    }
    row[i / 64] |= (uint64_t)1 << (i % 64);
    for (j = 0; j < ps->r[i].ninc; j++) {
        reach_fill(ps, ps->r[i].inc[j].idx, row);
    }
}

/*
 * The include closure of every role as a bit matrix (SoD prevent asks
 * "does business role b lead to role t"). Needs resolved, acyclic
 * includes. Load time only; nr * nr / 8 bytes (2 MiB at 4096 roles).
 */
static pg_status_t
build_reach(pg_policy_set_t *ps)
{
    size_t i;

    ps->rwords = (ps->nr + 63) / 64 + 1;
    ps->reach = calloc(ps->nr * ps->rwords + 1, sizeof(*ps->reach));
    if (ps->reach == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < ps->nr; i++) {
        reach_fill(ps, i, &ps->reach[i * ps->rwords]);
    }
    return PG_OK;
}

/*
 * Index SoD rules by the first element of their conflict (a rule can only
 * fire when that element is held), as two CSR arrays: by role index and
 * by interned entitlement id. Lists are ascending (load order). Needs
 * resolved roles and interned ids. Load time only.
 */
static pg_status_t
build_sod_index(pg_policy_set_t *ps)
{
    size_t i, nrl = 0, nel = 0;
    uint32_t *rfill, *efill;

    ps->sod_roff = calloc(ps->nr + 2, sizeof(*ps->sod_roff));
    ps->sod_eoff = calloc(ps->neids + 2, sizeof(*ps->sod_eoff));
    if (ps->sod_roff == NULL || ps->sod_eoff == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < ps->n; i++) {
        const policy_t *p = &ps->p[i];
        if (p->k != K_SOD) {
            continue;
        }
        if (p->items[0].is_role) {
            ps->sod_roff[p->items[0].role.idx + 1]++;
            nrl++;
        } else {
            ps->sod_eoff[p->items[0].eid + 1]++;
            nel++;
        }
    }
    for (i = 0; i < ps->nr; i++) {
        ps->sod_roff[i + 1] += ps->sod_roff[i];
    }
    for (i = 0; i < ps->neids; i++) {
        ps->sod_eoff[i + 1] += ps->sod_eoff[i];
    }
    ps->sod_rlist = calloc(nrl + 1, sizeof(*ps->sod_rlist));
    ps->sod_elist = calloc(nel + 1, sizeof(*ps->sod_elist));
    rfill = calloc(ps->nr + 1, sizeof(*rfill));
    efill = calloc(ps->neids + 1, sizeof(*efill));
    if (ps->sod_rlist == NULL || ps->sod_elist == NULL || rfill == NULL ||
        efill == NULL) {
        free(rfill);
        free(efill);
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < ps->n; i++) {
        const policy_t *p = &ps->p[i];
        if (p->k != K_SOD) {
            continue;
        }
        if (p->items[0].is_role) {
            size_t r = p->items[0].role.idx;
            ps->sod_rlist[ps->sod_roff[r] + rfill[r]++] = (uint32_t)i;
        } else {
            size_t e = p->items[0].eid;
            ps->sod_elist[ps->sod_eoff[e] + efill[e]++] = (uint32_t)i;
        }
    }
    free(rfill);
    free(efill);
    return PG_OK;
}

/*
 * Compile the who-index: every policy whose "who" needs an eq/in/group
 * test is listed under each (attribute, value) that can satisfy it; else
 * one that needs a prefix test is listed under (attribute, prefix); the
 * others go to the "always" bitmap. pg_policy_decide_fast() then only
 * evaluates policies that can match. Needs interned attributes. Load
 * time only.
 */
static pg_status_t
build_index(pg_policy_set_t *ps)
{
    size_t i, j, keys = 0, ns = 16;
    pg_status_t st;

    for (i = 0; i < ps->n; i++) {
        const cond_t *k = key_cond(ps->p[i].who);
        if (k != NULL && k->kind == C_IN) {
            for (j = 0; k->list[j] != NULL; j++) {
                keys++;
            }
        } else if (k != NULL) {
            keys++;
        }
    }
    while (ns < 2 * keys + 16) {
        ns *= 2;
    }
    ps->nwords = (ps->n + 63) / 64 + 1;
    ps->always = calloc(ps->nwords, sizeof(*ps->always));
    ps->slots = calloc(ns, sizeof(*ps->slots));
    ps->ix = calloc(keys + 1, sizeof(*ps->ix));
    ps->ixattrs = calloc(keys + 1, sizeof(*ps->ixattrs));
    ps->pxattrs = calloc(keys + 1, sizeof(*ps->pxattrs));
    ps->pxmax = calloc(keys + 1, sizeof(*ps->pxmax));
    if (ps->always == NULL || ps->slots == NULL || ps->ix == NULL ||
        ps->ixattrs == NULL || ps->pxattrs == NULL || ps->pxmax == NULL) {
        return PG_ERR_NOMEM;
    }
    ps->nslots = ns;
    for (i = 0; i < ps->n; i++) {
        const cond_t *k = key_cond(ps->p[i].who);
        if (ps->p[i].k == K_SOD) {
            continue;   /* found through sod_roff/sod_eoff instead */
        }
        ps->p[i].key = k;
        if (k == NULL) {
            ps->always[i / 64] |= (uint64_t)1 << (i % 64);
        } else if (k->kind == C_IN) {
            for (j = 0; k->list[j] != NULL; j++) {
                TRY(ix_add(ps, k->aid, 0, k->list[j], (uint32_t)i));
            }
        } else {
            TRY(ix_add(ps, k->aid, k->kind == C_PREFIX, k->str,
                       (uint32_t)i));
        }
    }
    return PG_OK;
}

/* 1 when entitlement eid is an element of some SoD conflict. */
static int
sod_eid(const pg_policy_set_t *ps, uint32_t eid)
{
    return (ps->sodeids[eid / 64] >> (eid % 64)) & 1u;
}

/*
 * For the fast path, which reports one target: which entitlements take
 * part in SoD conflicts, which roles grant one, and which roles have a
 * grant in each target. Needs interned ids and targets. Load time only.
 */
static pg_status_t
build_relevance(pg_policy_set_t *ps)
{
    size_t i, j, k, t;

    ps->pkind = calloc(ps->n + 1, 1);
    ps->pwho = calloc(ps->n + 1, sizeof(*ps->pwho));
    ps->pkey = calloc(ps->n + 1, sizeof(*ps->pkey));
    ps->tacct = calloc(ps->ntnames + 1, sizeof(*ps->tacct));
    if (ps->pkind == NULL || ps->tacct == NULL || ps->pwho == NULL ||
        ps->pkey == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < ps->nacct; i++) {
        for (t = 0; t < ps->ntnames; t++) {
            if (strcmp(ps->tnames[t], pg_acct_target(ps->acct[i])) == 0) {
                ps->tacct[t] = ps->acct[i];
            }
        }
    }
    for (i = 0; i < ps->n; i++) {
        ps->pkind[i] = (unsigned char)ps->p[i].k;
        ps->pwho[i] = ps->p[i].who;
        ps->pkey[i] = ps->p[i].key;
    }
    ps->sodeids = calloc(ps->neids / 64 + 2, sizeof(*ps->sodeids));
    ps->sodroles = calloc(ps->rwords + 1, sizeof(*ps->sodroles));
    ps->troles = calloc(ps->ntnames * ps->rwords + 1, sizeof(*ps->troles));
    if (ps->sodeids == NULL || ps->sodroles == NULL || ps->troles == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < ps->n; i++) {
        for (j = 0; j < ps->p[i].nitems; j++) {
            const sod_item_t *it = &ps->p[i].items[j];
            if (!it->is_role) {
                ps->sodeids[it->eid / 64] |= (uint64_t)1 << (it->eid % 64);
            }
        }
    }
    for (i = 0, k = 0; i < ps->nr; i++) {
        for (j = 0; j < ps->r[i].ngrants; j++) {
            k += ps->r[i].grants[j].nents > 0 ? ps->r[i].grants[j].nents : 1;
        }
    }
    ps->rg = calloc(k + 1, sizeof(*ps->rg));
    ps->rg_off = calloc(ps->nr + 2, sizeof(*ps->rg_off));
    if (ps->rg == NULL || ps->rg_off == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0, k = 0; i < ps->nr; i++) {
        ps->rg_off[i] = (uint32_t)k;
        for (j = 0; j < ps->r[i].ngrants; j++) {
            const grant_t *g = &ps->r[i].grants[j];
            size_t e;
            if (g->nents == 0) {
                ps->rg[k].tix = (uint32_t)g->tix;
                k++;
            }
            for (e = 0; e < g->nents; e++) {
                ps->rg[k].e = &g->ents[e];
                ps->rg[k].eid = g->ents[e].eid;
                ps->rg[k].tix = (uint32_t)g->tix;
                ps->rg[k].sod = (unsigned char)sod_eid(ps, g->ents[e].eid);
                ps->rg[k].jit = g->ents[e].jit_lifetime > 0;
                k++;
            }
        }
    }
    ps->rg_off[ps->nr] = (uint32_t)k;
    for (i = 0; i < ps->nr; i++) {
        const role_t *r = &ps->r[i];
        uint64_t bit = (uint64_t)1 << (i % 64);
        for (j = 0; j < r->ngrants; j++) {
            for (t = 0; t < ps->ntnames; t++) {
                if (ps->tnames[t] == r->grants[j].tcanon) {
                    ps->troles[t * ps->rwords + i / 64] |= bit;
                }
            }
            for (k = 0; k < r->grants[j].nents; k++) {
                if (sod_eid(ps, r->grants[j].ents[k].eid)) {
                    ps->sodroles[i / 64] |= bit;
                }
            }
        }
    }
    return PG_OK;
}

/* Resolve one reference to a role index; err is "<file>: <path>: ...". */
static pg_status_t
resolve_ref(const pg_policy_set_t *ps, ref_t *ref, const char *file,
            int want_business, pg_err_t *err)
{
    const role_t *r = role_by_id(ps, ref->name);

    if (r == NULL) {
        pg_err_set(err, "%s: %s: undefined role \"%s\"", file, ref->path,
                   ref->name);
        return PG_ERR_CONFIG;
    }
    if (want_business && !r->business) {
        pg_err_set(err, "%s: %s: role \"%s\" is technical; only business "
                   "roles can be assigned", file, ref->path, ref->name);
        return PG_ERR_CONFIG;
    }
    ref->idx = (size_t)(r - ps->r);
    return PG_OK;
}

/*
 * Depth-first search for an include cycle from role i. color: 0 unseen,
 * 1 on the stack, 2 done. stack holds the current path (for the message).
 */
static pg_status_t
find_cycle(const pg_policy_set_t *ps, size_t i, unsigned char *color,
           size_t *stack, size_t depth, pg_err_t *err)
{
    const role_t *r = &ps->r[i];
    size_t j, k;
    pg_status_t st;

    color[i] = 1;
    stack[depth] = i;
    for (j = 0; j < r->ninc; j++) {
        size_t t = r->inc[j].idx;
        if (color[t] == 1) {
            char chain[PG_ERR_MSG_MAX];
            size_t o = 0, from = 0;
            for (k = 0; k <= depth; k++) {
                if (stack[k] == t) {
                    from = k;
                }
            }
            chain[0] = '\0';
            for (k = from; k <= depth; k++) {
                int w = snprintf(chain + o, sizeof(chain) - o, "%s -> ",
                                 ps->r[stack[k]].id);
                if (w < 0 || (size_t)w >= sizeof(chain) - o) {
                    break;
                }
                o += (size_t)w;
            }
            pg_err_set(err, "%s: %s: role include cycle: %s%s", r->file,
                       r->inc[j].path, chain, ps->r[t].id);
            return PG_ERR_CONFIG;
        }
        if (color[t] == 0) {
            TRY(find_cycle(ps, t, color, stack, depth + 1, err));
        }
    }
    color[i] = 2;
    return PG_OK;
}

/*
 * After all files: resolve every role reference, check that technical
 * roles include only technical roles, and reject include cycles.
 */
static pg_status_t
resolve_all(pg_policy_set_t *ps, pg_err_t *err)
{
    unsigned char *color;
    size_t *stack, i, j;
    pg_status_t st = PG_OK;

    for (i = 0; i < ps->nr; i++) {
        role_t *r = &ps->r[i];
        for (j = 0; j < r->ninc; j++) {
            TRY(resolve_ref(ps, &r->inc[j], r->file, 0, err));
            if (!r->business && ps->r[r->inc[j].idx].business) {
                pg_err_set(err, "%s: %s: technical role \"%s\" cannot "
                           "include business role \"%s\"", r->file,
                           r->inc[j].path, r->id, r->inc[j].name);
                return PG_ERR_CONFIG;
            }
        }
    }
    for (i = 0; i < ps->n; i++) {
        policy_t *p = &ps->p[i];
        for (j = 0; j < p->nroles; j++) {
            TRY(resolve_ref(ps, &p->roles[j], p->file, 1, err));
        }
        for (j = 0; j < p->nitems; j++) {
            if (p->items[j].is_role) {
                TRY(resolve_ref(ps, &p->items[j].role, p->file, 0, err));
            }
        }
    }
    color = calloc(ps->nr + 1, 1);
    stack = calloc(ps->nr + 1, sizeof(*stack));
    if (color == NULL || stack == NULL) {
        free(color);
        free(stack);
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < ps->nr && st == PG_OK; i++) {
        if (color[i] == 0) {
            st = find_cycle(ps, i, color, stack, 0, err);
        }
    }
    free(color);
    free(stack);
    return st;
}

/*
 * Compile account rule o (at path, from file) into ps; one rule per
 * target across all files. Messages lack the file.
 */
static pg_status_t
add_account(pg_policy_set_t *ps, const json_t *o, const char *path,
            const char *file, const struct pg_config *cfg, pg_err_t *err)
{
    pg_acct_rule_t *r = NULL;
    size_t i;
    pg_status_t st;

    if (ps->nacct >= MAX_POLICIES) {
        pg_err_set(err, "%s: more than %u account rules", path, MAX_POLICIES);
        return PG_ERR_CONFIG;
    }
    if (ps->nacct == ps->acctcap) {
        size_t nc = ps->acctcap == 0 ? 8 : ps->acctcap * 2;
        pg_acct_rule_t **na = realloc(ps->acct, nc * sizeof(*na));
        char **nf;
        if (na == NULL) {
            return PG_ERR_NOMEM;
        }
        ps->acct = na;
        nf = realloc(ps->acct_file, nc * sizeof(*nf));
        if (nf == NULL) {
            return PG_ERR_NOMEM;
        }
        ps->acct_file = nf;
        ps->acctcap = nc;
    }
    TRY(pg_acct_parse(o, path, cfg, &r, err));
    for (i = 0; i < ps->nacct; i++) {
        if (strcmp(pg_acct_target(ps->acct[i]), pg_acct_target(r)) == 0) {
            pg_err_set(err, "%s.target: a second account rule for target "
                       "\"%s\" (first defined in %s)", path,
                       pg_acct_target(r), ps->acct_file[i]);
            pg_acct_free(r);
            return PG_ERR_CONFIG;
        }
    }
    ps->acct_file[ps->nacct] = strdup(file);
    if (ps->acct_file[ps->nacct] == NULL) {
        pg_acct_free(r);
        return PG_ERR_NOMEM;
    }
    ps->acct[ps->nacct++] = r;
    return PG_OK;
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
    static const char *const keys[] = {"policies", "roles", "accounts",
                                       NULL};
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
    a = json_object_get(root, "roles");
    if (st == PG_OK && a != NULL) {
        if (!json_is_array(a)) {
            pg_err_set(err, "$.roles: must be an array");
            st = PG_ERR_CONFIG;
        }
        for (i = 0; st == PG_OK && i < json_array_size(a); i++) {
            int r = snprintf(pp, sizeof(pp), "$.roles[%zu]", i);
            (void)r;
            st = parse_role(ps, json_array_get(a, i), pp, file, cfg, err);
        }
    }
    a = json_object_get(root, "accounts");
    if (st == PG_OK && a != NULL) {
        if (!json_is_array(a)) {
            pg_err_set(err, "$.accounts: must be an array");
            st = PG_ERR_CONFIG;
        }
        for (i = 0; st == PG_OK && i < json_array_size(a); i++) {
            int r = snprintf(pp, sizeof(pp), "$.accounts[%zu]", i);
            (void)r;
            st = add_account(ps, json_array_get(a, i), pp, file, cfg, err);
        }
    }
    if (st == PG_OK) {
        a = json_object_get(root, "policies");
        if (a == NULL && (json_object_get(root, "roles") != NULL ||
                          json_object_get(root, "accounts") != NULL)) {
            /* a file of roles and/or account rules only */
        } else if (a == NULL) {
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
    st = sort_roles(ps);
    if (st == PG_OK) {
        st = resolve_all(ps, err);
    }
    if (st == PG_OK) {
        st = intern_attrs(ps);
    }
    if (st == PG_OK) {
        st = build_index(ps);
    }
    if (st == PG_OK) {
        st = intern_all(ps);
    }
    if (st == PG_OK) {
        st = build_reach(ps);
    }
    if (st == PG_OK) {
        st = build_sod_index(ps);
    }
    if (st == PG_OK) {
        st = build_relevance(ps);
    }
    if (st != PG_OK) {
        if (st == PG_ERR_NOMEM) {
            pg_err_set(err, "out of memory");
        }
        pg_policy_free(ps);
        return st;
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

/* An empty explanation in *b when want, else NULL (no text is built). */
static why_t *
why_init(int want, why_t *b)
{
    if (!want) {
        return NULL;
    }
    b->b[0] = '\0';
    b->n = 0;
    b->full = 0;
    return b;
}

/*
 * Append n bytes; past the cap the text ends with "..." (cut at a UTF-8
 * character boundary) and further appends are ignored.
 */
static void
why_put(why_t *w, const char *s, size_t n)
{
    if (w == NULL || w->full) {
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
    char *t;
    size_t n;

    if (w == NULL) {
        return;
    }
    t = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_ENSURE_ASCII);
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
    json_t *j;

    if (w == NULL) {
        return;
    }
    j = json_string(s);
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
    if (dst == NULL || src == NULL) {
        return;
    }
    why_put(dst, src->b, src->n);
    if (src->full) {
        dst->full = 1;
    }
}

/* The operator's test against one string value s of len bytes. */
static int
str_test(const cond_t *c, const char *s, size_t len)
{
    size_t i;

    switch (c->kind) {
    case C_EQ:
        return strcmp(s, c->str) == 0;
    case C_PREFIX:
        return len >= c->slen && memcmp(s, c->str, c->slen) == 0;
    case C_REGEX:
        /* every match contains c->lit: skip regexec when it is absent */
        if (c->lit != NULL && memmem(s, len, c->lit, c->litlen) == NULL) {
            return 0;
        }
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
        return str_test(c, json_string_value(v), json_string_length(v));
    }
    if (json_is_array(v)) {
        json_array_foreach(v, i, e) {
            if (json_is_string(e) &&
                str_test(c, json_string_value(e), json_string_length(e))) {
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

/* 1 when g is in gs, attrs.groups (array of strings, or one string). */
static int
in_group(const json_t *gs, const char *g)
{
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

/* What a condition is evaluated against. */
typedef struct ctx {
    const json_t *attrs;
    const json_t **vals;   /* per interned attribute: attrs' value or NULL */
    const json_t *groups;  /* attrs.groups or NULL */
    long today;            /* days since 1970-01-01 (UTC) */
    const struct cond *known;  /* fast path: a condition known to hold
                                  (the index key that found the policy) */
    uint32_t *memo_gen;    /* fast path: per regex slot, the decision its
                              result is from (NULL: no memo) */
    unsigned char *memo_val;
    uint32_t gen;          /* this decision's number */
} ctx_t;

/* Append "YYYY-MM-DD" for days since 1970-01-01. */
static void
why_day(why_t *w, long days)
{
    char b[32];
    long z = days + 719468, era, doe, yoe, y, doy, mp, d, m;
    int r;

    if (w == NULL) {
        return;
    }
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = z - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    y = yoe + era * 400;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    d = doy - (153 * mp + 2) / 5 + 1;
    m = mp < 10 ? mp + 3 : mp - 9;
    y += m <= 2;
    r = snprintf(b, sizeof(b), "%04ld-%02ld-%02ld", y, m, d);
    why_put(w, b, r > 0 && (size_t)r < sizeof(b) ? (size_t)r : 0);
}

/*
 * lt/le/gt/ge of one value: a JSON number or numeric string for a number
 * operand; a "YYYY-MM-DD[T...]" string for a date operand. Anything else
 * does not match.
 */
static int
cmp_test(const cond_t *c, const json_t *v, long today)
{
    double a, b;
    long da;

    if (c->opnd == OP_NUM) {
        if (json_is_number(v)) {
            a = json_number_value(v);
        } else if (!json_is_string(v) ||
                   !parse_num(json_string_value(v), &a)) {
            return 0;
        }
        b = c->num;
    } else {
        if (!json_is_string(v) || json_string_length(v) < 10 ||
            !parse_date(json_string_value(v), 0, &da)) {
            return 0;
        }
        a = (double)da;
        b = (double)(c->opnd == OP_TODAY ? today : c->day);
    }
    switch (c->kind) {
    case C_LT:
        return a < b;
    case C_LE:
        return a <= b;
    case C_GT:
        return a > b;
    case C_GE:
        return a >= b;
    default:
        return 0;
    }
}

/* cmp_test over a value or any element of an array. */
static int
cmp_value(const cond_t *c, const json_t *v, long today)
{
    size_t i;
    json_t *e;

    if (json_is_array(v)) {
        json_array_foreach(v, i, e) {
            if (cmp_test(c, e, today)) {
                return 1;
            }
        }
        return 0;
    }
    return cmp_test(c, v, today);
}

/* Describe a leaf attribute test: "<attr> <value> <verb> <operand>". */
static void
why_leaf(why_t *w, const cond_t *c, const json_t *v, int ok, long today)
{
    static const char *const yes[] = {" < ", " <= ", " > ", " >= "};
    static const char *const no[] = {" is not < ", " is not <= ",
                                     " is not > ", " is not >= "};
    char num[64];
    size_t i;
    int r;

    if (w == NULL) {
        return;
    }
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
    case C_LT:
    case C_LE:
    case C_GT:
    case C_GE:
        why_str(w, ok ? yes[c->kind - C_LT] : no[c->kind - C_LT]);
        if (c->opnd == OP_NUM) {
            r = snprintf(num, sizeof(num), "%.15g", c->num);
            why_put(w, num, r > 0 && (size_t)r < sizeof(num) ? (size_t)r
                                                             : 0);
        } else {
            if (c->opnd == OP_TODAY) {
                why_str(w, "today ");
            }
            why_day(w, c->opnd == OP_TODAY ? today : c->day);
        }
        break;
    default:
        break;
    }
}

/*
 * Evaluate c against the context; w receives why the result is what it
 * is. Never fails: odd or missing values simply do not match.
 */
static int
eval(const cond_t *c, const ctx_t *x, why_t *w)
{
    const json_t *v;
    size_t i;
    int r;

    if (c == x->known) {
        return 1;   /* only set without explanation (w is NULL) */
    }
    switch (c->kind) {
    case C_ALL:
        if (c->nkids == 0) {
            why_str(w, "everyone (empty \"all\")");
            return 1;
        }
        for (i = 0; i < c->nkids; i++) {
            why_t kb, *k = why_init(w != NULL, &kb);
            if (!eval(c->kids[i], x, k)) {
                if (w != NULL) {
                    w->n = 0;
                    w->full = 0;
                    w->b[0] = '\0';
                }
                why_copy(w, k);
                return 0;
            }
            if (i > 0) {
                why_str(w, " and ");
            }
            why_copy(w, k);
        }
        return 1;
    case C_ANY: {
        why_t accb, *acc = why_init(w != NULL, &accb);
        for (i = 0; i < c->nkids; i++) {
            why_t kb, *k = why_init(w != NULL, &kb);
            if (eval(c->kids[i], x, k)) {
                why_copy(w, k);
                return 1;
            }
            if (i > 0) {
                why_str(acc, "; ");
            }
            why_copy(acc, k);
        }
        why_str(w, "none of any: ");
        why_copy(w, acc);
        return 0;
    }
    case C_NOT: {
        why_t kb, *k = why_init(w != NULL, &kb);
        if (c->kids[0]->kind == C_NOT) {
            /* not(not(x)) is x, explained as x */
            return eval(c->kids[0]->kids[0], x, w);
        }
        r = eval(c->kids[0], x, k);
        if (r) {
            why_str(w, "excluded by not: ");
        }
        why_copy(w, k);
        return !r;
    }
    case C_GROUP:
        r = in_group(x->groups, c->str);
        why_str(w, r ? "member of group " : "not a member of group ");
        why_quoted(w, c->str);
        return r;
    case C_EXISTS:
        v = x->vals[c->aid];
        r = value_present(v);
        why_str(w, c->attr);
        why_str(w, r ? " exists" : " is missing or empty");
        return c->exists ? r : !r;
    case C_REGEX:
        v = x->vals[c->aid];
        if (x->memo_gen != NULL && c->memo != 0) {
            uint32_t k = c->memo - 1;
            if (x->memo_gen[k] != x->gen) {
                x->memo_val[k] = (unsigned char)(v != NULL &&
                                                 value_test(c, v));
                x->memo_gen[k] = x->gen;
            }
            r = x->memo_val[k];
        } else {
            r = v != NULL && value_test(c, v);
        }
        why_leaf(w, c, v, r, x->today);
        return r;
    case C_EQ:
    case C_IN:
    case C_PREFIX:
        v = x->vals[c->aid];
        r = v != NULL && value_test(c, v);
        why_leaf(w, c, v, r, x->today);
        return r;
    case C_LT:
    case C_LE:
    case C_GT:
    case C_GE:
        v = x->vals[c->aid];
        r = v != NULL && cmp_value(c, v, x->today);
        why_leaf(w, c, v, r, x->today);
        return r;
    }
    return 0;
}

/* ---- the decision ---------------------------------------------------- */

struct eval_state;
static int eval_who(struct eval_state *es, const policy_t *p, why_t *w);

typedef enum { S_GRANTED, S_PENDING, S_DENIED } istate_t;

/* One (target, type, value) of the desired state, with its provenance. */
typedef struct item {
    const char *target;
    const ent_t *e;
    istate_t state;
    const char *source;        /* policy id, or "attribute:roles" */
    const role_t *brole;       /* business role it came through, or NULL */
    const role_t *trole;       /* technical role that grants it, or NULL */
    const policy_t *appr;      /* approval policy (pending items) */
    const policy_t *denier;    /* SoD policy that denied it */
    const char *reason;        /* denial reason (static text) */
} item_t;

/* Evaluation scratch for one decision (owned by pg_policy_decide_at). */
typedef struct eval_state {
    const pg_policy_set_t *ps;
    ctx_t x;
    const char *target;        /* NULL: every target */
    const char *tcanon;        /* canonical target, NULL if no grant has it */
    size_t tidx;               /* its index in ps->tnames, or SIZE_MAX */
    unsigned char *tacc;       /* full path: per tnames index, the identity
                                  gets an account there */
    time_t now;
    item_t *it;
    size_t n, cap;
    unsigned char *held;       /* per role: business role assigned */
    const char **held_src;     /* per role: who assigned it */
    unsigned char *rdenied;    /* per role: removed by SoD prevent */
    size_t *via;               /* per role: business role it came through */
    uint32_t *slot_of;         /* per eid: item index + 1, 0 none */
    uint64_t *effbits;         /* per role: effective after expansion
                                  (rwords words; see EFF) */
    uint64_t *heldbits;        /* held[] as a bitmap (rwords words) */
    uint64_t *sodbits;         /* fast path: SoD candidates (nwords) */
    uint32_t *sodcand;         /* fast path: SoD candidates, ascending */
    size_t nsodcand;
    int quiet;                 /* fast path: no explanation, no JSON */
    const uint32_t *cand;      /* candidate policies (ascending), or NULL
                                  for every policy */
    size_t ncand;
    size_t cap_fixed;          /* items live in scratch: no realloc */
    size_t nfindings;
    pg_decision_t *d;
} eval_state_t;

static const char SRC_ATTR[] = "attribute:roles";

/* 1 when role i is effective (after the last expand_all). */
#define EFF(es, i) (((es)->effbits[(i) / 64] >> ((i) % 64)) & 1u)

/*
 * Evaluate p's who. On the fast path p came from the who-index, so its
 * key condition holds and is not tested again; the full path evaluates
 * (and explains) everything.
 */
static int
eval_who(eval_state_t *es, const policy_t *p, why_t *w)
{
    int r;

    if (es->cand == NULL || w != NULL) {
        return eval(p->who, &es->x, w);
    }
    es->x.known = p->key;
    r = eval(p->who, &es->x, NULL);
    es->x.known = NULL;
    return r;
}

/*
 * Fast path: evaluate the who of the i-th candidate from the compact
 * per-policy arrays (no policy_t access), skipping its index key; the
 * who of a later candidate is prefetched.
 */
static int
eval_hot(eval_state_t *es, size_t i)
{
    const pg_policy_set_t *ps = es->ps;
    size_t pi = es->cand[i];
    int r;

    if (i + 4 < es->ncand) {
        __builtin_prefetch(ps->pwho[es->cand[i + 4]]);
    }
    es->x.known = ps->pkey[pi];
    r = eval(ps->pwho[pi], &es->x, NULL);
    es->x.known = NULL;
    return r;
}

/* Number of policies to consider (candidates on the fast path). */
static size_t
ncand(const eval_state_t *es)
{
    return es->cand != NULL ? es->ncand : es->ps->n;
}

/* The i-th policy to consider. */
static size_t
cand(const eval_state_t *es, size_t i)
{
    return es->cand != NULL ? es->cand[i] : i;
}

#define WHYB(w) ((w) != NULL ? (w)->b : "")

/* The item of interned entitlement eid, or NULL. */
static item_t *
item_find(eval_state_t *es, uint32_t eid)
{
    uint32_t k = es->slot_of[eid];

    return k != 0 ? &es->it[k - 1] : NULL;
}

/* Append a new item (zeroed but for the key); NULL when out of memory. */
static item_t *
item_add(eval_state_t *es, const char *target, const ent_t *e)
{
    item_t *t;

    if (es->n == es->cap) {
        size_t nc = es->cap == 0 ? 32 : es->cap * 2;
        if (es->cap_fixed) {
            return NULL;   /* scratch full: the caller reports TOO_LARGE */
        }
        item_t *ni = realloc(es->it, nc * sizeof(*ni));
        if (ni == NULL) {
            return NULL;
        }
        es->it = ni;
        es->cap = nc;
    }
    t = &es->it[es->n++];
    memset(t, 0, sizeof(*t));
    t->target = target;
    t->e = e;
    es->slot_of[e->eid] = (uint32_t)es->n;
    return t;
}

/* Append {"policy"|"role", "kind", "result", "why"} to the explanation. */
static pg_status_t
explain(eval_state_t *es, const char *idkey, const char *id, const char *kind,
        const char *result, const char *why)
{
    json_t *ex;

    if (es->quiet) {
        return PG_OK;
    }
    ex = json_pack("{s:s, s:s, s:s, s:s}", idkey, id, "kind", kind,
                   "result", result, "why", why);
    if (ex == NULL || json_array_append_new(es->d->explanation, ex) != 0) {
        return PG_ERR_NOMEM;
    }
    return PG_OK;
}

/*
 * Grant the entitlements of grants g[0..n) (a birthright policy or a
 * technical role). jit entitlements are granted only when the target
 * being decided is the grant's target; otherwise w notes the deferral.
 * Sets *in_target when one grant is for es->target.
 */
static pg_status_t
grant_all(eval_state_t *es, const grant_t *g, size_t n, const char *source,
          const role_t *brole, const role_t *trole, why_t *w, int *in_target)
{
    size_t i, j;
    item_t *t;

    *in_target = 0;
    for (i = 0; i < n; i++) {
        int here = es->tcanon != NULL && g[i].tcanon == es->tcanon;
        if (es->tacc != NULL) {
            es->tacc[g[i].tix] = 1;
        }
        if (here) {
            *in_target = 1;
            es->d->has_account = 1;
        }
        for (j = 0; j < g[i].nents; j++) {
            const ent_t *e = &g[i].ents[j];
            if (es->quiet && !here && !sod_eid(es->ps, e->eid)) {
                continue;   /* fast path: never reported, never in SoD */
            }
            if (e->jit_lifetime > 0 && !here) {
                why_str(w, "; jit ");
                why_quoted(w, e->value);
                why_str(w, " deferred until ");
                why_quoted(w, g[i].target);
                why_str(w, " is accessed");
                continue;
            }
            t = item_find(es, e->eid);
            if (t != NULL) {
                if (t->state == S_PENDING) {
                    /* now justified without approval */
                    t->state = S_GRANTED;
                    t->source = source;
                    t->brole = brole;
                    t->trole = trole;
                    t->appr = NULL;
                }
                continue;
            }
            t = item_add(es, g[i].tcanon, e);
            if (t == NULL) {
                return PG_ERR_NOMEM;
            }
            t->state = S_GRANTED;
            t->source = source;
            t->brole = brole;
            t->trole = trole;
        }
    }
    return PG_OK;
}

/*
 * 1 when the identity attribute "approved" (an array of {"target", "type",
 * "value"} objects: the grants approvers accepted, see src/gate/admin.c)
 * holds e of target. A missing or malformed attribute approves nothing.
 */
static int
approved_item(const json_t *attrs, const char *target, const ent_t *e)
{
    const json_t *a = json_object_get(attrs, "approved");
    const json_t *o;
    size_t i;

    json_array_foreach(a, i, o) {
        const char *t = json_string_value(json_object_get(o, "target"));
        const char *ty = json_string_value(json_object_get(o, "type"));
        const char *v = json_string_value(json_object_get(o, "value"));

        if (t != NULL && ty != NULL && v != NULL && strcmp(t, target) == 0
            && strcmp(ty, e->type) == 0 && strcmp(v, e->value) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Role assignment: explicit "roles" attribute, then role policies. */
static pg_status_t
assign_roles(eval_state_t *es)
{
    const pg_policy_set_t *ps = es->ps;
    const json_t *ra = json_object_get(es->x.attrs, "roles");
    size_t i, j, cnt;
    pg_status_t st;

    cnt = json_is_array(ra) ? json_array_size(ra) : json_is_string(ra);
    for (i = 0; i < cnt && i < MAX_REFS; i++) {
        const json_t *v = json_is_array(ra) ? json_array_get(ra, i) : ra;
        const role_t *r;
        if (!json_is_string(v)) {
            continue;
        }
        r = role_by_id(ps, json_string_value(v));
        if (r == NULL || !r->business) {
            why_t wb, *w = why_init(!es->quiet, &wb);
            why_str(w, "attribute roles names ");
            why_quoted(w, json_string_value(v));
            why_str(w, r == NULL ? ", which is not a defined role"
                                  : ", a technical role (only business "
                                    "roles can be assigned)");
            TRY(explain(es, "role", json_string_length(v) <= MAX_VALUE
                                    ? json_string_value(v) : "?",
                        "business_role", "ignored", WHYB(w)));
            continue;
        }
        if (!es->held[r - ps->r]) {
            size_t k = (size_t)(r - ps->r);
            es->held[k] = 1;
            es->heldbits[k / 64] |= (uint64_t)1 << (k % 64);
            es->held_src[r - ps->r] = SRC_ATTR;
        }
    }
    for (i = 0; i < ncand(es); i++) {
        const policy_t *p;
        why_t wb, *w = why_init(!es->quiet, &wb);
        int m;
        if (ps->pkind[cand(es, i)] != K_ROLE) {
            continue;   /* a compact array: no policy_t cache miss */
        }
        if (es->quiet && !eval_hot(es, i)) {
            continue;   /* fast path: no match, nothing to record */
        }
        p = &ps->p[cand(es, i)];
        m = es->quiet || eval_who(es, p, w);
        if (m) {
            why_str(w, "; assigns business role");
            why_str(w, p->nroles > 1 ? "s " : " ");
            for (j = 0; j < p->nroles; j++) {
                size_t k = p->roles[j].idx;
                if (j > 0) {
                    why_str(w, ", ");
                }
                why_quoted(w, ps->r[k].id);
                if (!es->held[k]) {
                    es->held[k] = 1;
                    es->heldbits[k / 64] |= (uint64_t)1 << (k % 64);
                    es->held_src[k] = p->id;
                }
            }
        }
        TRY(explain(es, "policy", p->id, "role", m ? "match" : "no_match",
                    WHYB(w)));
    }
    return PG_OK;
}

/*
 * Recompute effbits and via[] from the held, not denied business
 * roles: the union of their include closures; a role's via is the first
 * (lowest index) business role that reaches it.
 */
static void
expand_all(eval_state_t *es)
{
    const pg_policy_set_t *ps = es->ps;
    size_t b, w, hw;

    memset(es->effbits, 0, ps->rwords * sizeof(*es->effbits));
    for (hw = 0; hw < ps->rwords; hw++) {
        uint64_t hb = es->heldbits[hw];
        while (hb != 0) {
            const uint64_t *row;
            b = hw * 64 + (size_t)__builtin_ctzll(hb);
            hb &= hb - 1;
            if (es->rdenied[b]) {
                continue;
            }
            row = &ps->reach[b * ps->rwords];
            for (w = 0; w < ps->rwords; w++) {
                uint64_t nb = row[w] & ~es->effbits[w];
                es->effbits[w] |= nb;
                while (nb != 0) {
                    size_t t = w * 64 + (size_t)__builtin_ctzll(nb);
                    es->via[t] = b;
                    nb &= nb - 1;
                }
            }
        }
    }
}

/* 1 when role b reaches role t through includes (or is t). */
static int
reaches(const pg_policy_set_t *ps, size_t b, size_t t)
{
    return (ps->reach[b * ps->rwords + t / 64] >> (t % 64)) & 1u;
}

/* A JSON description of a conflict element. */
static json_t *
sod_item_json(const pg_policy_set_t *ps, const sod_item_t *it)
{
    if (it->is_role) {
        return json_pack("{s:s}", "role", ps->r[it->role.idx].id);
    }
    return json_pack("{s:s, s:s, s:s}", "target", it->target, "type",
                     it->type, "value", it->value);
}

/*
 * The exemption of p that applies to this identity today, or NULL;
 * *expired receives an exemption that matches but has expired (if any).
 */
static const exempt_t *
exemption(eval_state_t *es, const policy_t *p, const exempt_t **expired)
{
    size_t i;

    *expired = NULL;
    for (i = 0; i < p->nex; i++) {
        if (!eval(p->ex[i].who, &es->x, NULL)) {
            continue;
        }
        if (p->ex[i].expires >= es->x.today) {
            return &p->ex[i];
        }
        if (*expired == NULL) {
            *expired = &p->ex[i];
        }
    }
    return NULL;
}

/* Record a finding {"policy","action","result","items",...}. */
static pg_status_t
add_finding(eval_state_t *es, const policy_t *p, const char *result,
            const exempt_t *ex, const exempt_t *expired)
{
    json_t *f, *items;
    size_t i;

    es->nfindings++;
    if (es->quiet) {
        return PG_OK;
    }
    items = json_array();
    if (items == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < p->nitems; i++) {
        if (json_array_append_new(items, sod_item_json(es->ps, &p->items[i]))
            != 0) {
            json_decref(items);
            return PG_ERR_NOMEM;
        }
    }
    f = json_pack("{s:s, s:s, s:s, s:o}", "policy", p->id, "action",
                  p->prevent ? "prevent" : "detect", "result", result,
                  "items", items);
    if (f == NULL) {
        return PG_ERR_NOMEM;
    }
    if (ex != NULL &&
        json_object_set_new(f, "exemption",
                            json_pack("{s:s, s:s, s:s?}", "owner", ex->owner,
                                      "expires", ex->expires_s, "reason",
                                      ex->reason)) != 0) {
        json_decref(f);
        return PG_ERR_NOMEM;
    }
    if (expired != NULL &&
        json_object_set_new(f, "expired_exemption",
                            json_pack("{s:s, s:s}", "owner", expired->owner,
                                      "expires", expired->expires_s)) != 0) {
        json_decref(f);
        return PG_ERR_NOMEM;
    }
    if (json_array_append_new(es->d->sod_findings, f) != 0) {
        return PG_ERR_NOMEM;
    }
    return PG_OK;
}

/*
 * Outcome text of a conflict that is present: exempted, prevented or
 * detected; records the finding and the explanation's why.
 */
static pg_status_t
sod_outcome(eval_state_t *es, const policy_t *p, why_t *w,
            const char **result, int *enforce)
{
    const exempt_t *expired, *ex = exemption(es, p, &expired);

    if (ex != NULL) {
        *result = "exempted";
        *enforce = 0;
        why_str(w, "; toxic combination held; exempted (owner ");
        why_quoted(w, ex->owner);
        why_str(w, ", expires ");
        why_str(w, ex->expires_s);
        why_str(w, ")");
    } else {
        *result = p->prevent ? "prevented" : "detected";
        *enforce = p->prevent;
        why_str(w, p->prevent ? "; toxic combination prevented"
                              : "; toxic combination detected (allowed)");
        if (expired != NULL) {
            why_str(w, "; exemption by ");
            why_quoted(w, expired->owner);
            why_str(w, " expired on ");
            why_str(w, expired->expires_s);
        }
    }
    return add_finding(es, p, *result, ex, expired);
}

/* Order uint32_t values (qsort callback). */
static int
u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

    return x < y ? -1 : x > y;
}

/*
 * Fast path: the SoD rules whose first element is held (effective roles
 * when roles is set, else current items), ascending, into es->sodcand.
 * A superset of the rules that can fire: holdings only shrink later.
 */
static void
sod_candidates(eval_state_t *es, int roles)
{
    const pg_policy_set_t *ps = es->ps;
    size_t i, k, w, n = 0;

    /* each rule is listed under exactly one element, and every role and
     * every item is visited once: the list has no duplicates */
    if (roles) {
        for (w = 0; w < ps->rwords; w++) {
            uint64_t eb = es->effbits[w];
            while (eb != 0) {
                i = w * 64 + (size_t)__builtin_ctzll(eb);
                eb &= eb - 1;
                for (k = ps->sod_roff[i]; k < ps->sod_roff[i + 1]; k++) {
                    es->sodcand[n++] = ps->sod_rlist[k];
                }
            }
        }
    } else {
        for (i = 0; i < es->n; i++) {
            uint32_t e = es->it[i].e->eid;
            for (k = ps->sod_eoff[e]; k < ps->sod_eoff[e + 1]; k++) {
                es->sodcand[n++] = ps->sod_elist[k];
            }
        }
    }
    if (n > 64) {
        qsort(es->sodcand, n, sizeof(*es->sodcand), u32_cmp);
    } else {
        for (i = 1; i < n; i++) {   /* insertion sort: load order */
            uint32_t v = es->sodcand[i];
            for (k = i; k > 0 && es->sodcand[k - 1] > v; k--) {
                es->sodcand[k] = es->sodcand[k - 1];
            }
            es->sodcand[k] = v;
        }
    }
    es->nsodcand = n;
}

/* Number of SoD rules to consider (all candidates on the full path). */
static size_t
nsod(const eval_state_t *es)
{
    return es->quiet ? es->nsodcand : ncand(es);
}

/* The i-th SoD rule to consider. */
static size_t
sodc(const eval_state_t *es, size_t i)
{
    return es->quiet ? es->sodcand[i] : cand(es, i);
}

/* Role conflicts: on prevent, the business roles behind them are removed. */
static pg_status_t
sod_roles(eval_state_t *es)
{
    const pg_policy_set_t *ps = es->ps;
    size_t i, j, b;
    int dirty = 1;
    pg_status_t st;

    if (es->quiet) {
        expand_all(es);
        dirty = 0;
        sod_candidates(es, 1);
    }
    for (i = 0; i < nsod(es); i++) {
        const policy_t *p = &ps->p[sodc(es, i)];
        const char *result = "no_conflict";
        why_t wb, *w = why_init(!es->quiet, &wb);
        int all = 1, enforce = 0;
        if (p->k != K_SOD || !p->items[0].is_role) {
            continue;
        }
        if (dirty) {
            expand_all(es);
            dirty = 0;
        }
        if (es->quiet) {
            /* nothing to report or enforce unless the whole combination
             * is held: test that before who (a cheaper test) */
            for (j = 0; j < p->nitems && all; j++) {
                all = EFF(es, p->items[j].role.idx);
            }
            if (!all) {
                continue;
            }
        }
        if (!eval(p->who, &es->x, w)) {
            TRY(explain(es, "policy", p->id, "sod", "no_match", WHYB(w)));
            continue;
        }
        for (j = 0; j < p->nitems && all; j++) {
            all = EFF(es, p->items[j].role.idx);
        }
        if (all) {
            TRY(sod_outcome(es, p, w, &result, &enforce));
        } else {
            why_str(w, "; combination not held");
        }
        for (j = 0; enforce && j < p->nitems; j++) {
            for (b = 0; b < ps->nr; b++) {
                if ((b % 64) == 0 && es->heldbits[b / 64] == 0) {
                    b += 63;   /* no held role in this word */
                    continue;
                }
                if (es->held[b] && !es->rdenied[b] &&
                    reaches(ps, b, p->items[j].role.idx)) {
                    es->rdenied[b] = 1;
                    dirty = 1;
                    why_str(w, "; business role ");
                    why_quoted(w, ps->r[b].id);
                    why_str(w, " removed");
                }
            }
        }
        TRY(explain(es, "policy", p->id, "sod", result, WHYB(w)));
    }
    if (dirty) {
        expand_all(es);
    }
    return PG_OK;
}

/* Entitlement conflicts over granted and pending items (every target). */
static pg_status_t
sod_ents(eval_state_t *es)
{
    const pg_policy_set_t *ps = es->ps;
    item_t *found[MAX_SOD_ITEMS];
    size_t i, j;
    pg_status_t st;

    if (es->quiet) {
        sod_candidates(es, 0);
    }
    for (i = 0; i < nsod(es); i++) {
        const policy_t *p = &ps->p[sodc(es, i)];
        const char *result = "no_conflict";
        why_t wb, *w = why_init(!es->quiet, &wb);
        int all = 1, enforce = 0, pending = 0;
        if (p->k != K_SOD || p->items[0].is_role) {
            continue;
        }
        if (es->quiet && item_find(es, p->items[0].eid) == NULL) {
            continue;   /* cannot be held: nothing to report or enforce */
        }
        if (!eval(p->who, &es->x, w)) {
            TRY(explain(es, "policy", p->id, "sod", "no_match", WHYB(w)));
            continue;
        }
        for (j = 0; j < p->nitems && all; j++) {
            const sod_item_t *s = &p->items[j];
            found[j] = item_find(es, s->eid);
            all = found[j] != NULL && found[j]->state != S_DENIED;
            pending |= all && found[j]->state == S_PENDING;
        }
        if (all) {
            TRY(sod_outcome(es, p, w, &result, &enforce));
        } else {
            why_str(w, "; combination not held");
        }
        for (j = 0; enforce && j < p->nitems; j++) {
            /* a pending request that completes the combination is refused;
             * if everything is already granted, all of it is withheld */
            if (!pending || found[j]->state == S_PENDING) {
                found[j]->state = S_DENIED;
                found[j]->denier = p;
                found[j]->reason = pending
                    ? "request would complete a toxic combination"
                    : "toxic combination (segregation of duties)";
            }
        }
        TRY(explain(es, "policy", p->id, "sod", result, WHYB(w)));
    }
    return PG_OK;
}

/* Approval policies: their entitlements become pending (or denied). */
static pg_status_t
approvals(eval_state_t *es)
{
    const pg_policy_set_t *ps = es->ps;
    size_t i, g, j;
    pg_status_t st;

    for (i = 0; i < ncand(es); i++) {
        const policy_t *p;
        why_t wb, *w = why_init(!es->quiet, &wb);
        int m;
        const json_t *mgr = NULL;
        if (ps->pkind[cand(es, i)] != K_APPROVAL) {
            continue;   /* a compact array: no policy_t cache miss */
        }
        if (es->quiet && !eval_hot(es, i)) {
            continue;   /* fast path: no match, nothing to record */
        }
        p = &ps->p[cand(es, i)];
        m = es->quiet || eval_who(es, p, w);
        if (m && p->ak == A_MANAGER) {
            mgr = json_object_get(es->x.attrs, p->appr);
            if (!json_is_string(mgr) || json_string_length(mgr) == 0) {
                mgr = NULL;
                why_str(w, "; no approver: attribute ");
                why_quoted(w, p->appr);
                why_str(w, " is missing, requests denied");
            }
        }
        for (g = 0; m && g < p->ngrants; g++) {
            for (j = 0; j < p->grants[g].nents; j++) {
                const ent_t *e = &p->grants[g].ents[j];
                item_t *t;
                if (es->quiet && p->grants[g].tcanon != es->tcanon &&
                    !sod_eid(ps, e->eid)) {
                    continue;   /* fast path: never reported */
                }
                t = item_find(es, e->eid);
                if (t != NULL) {
                    why_str(w, "; ");
                    why_quoted(w, e->value);
                    why_str(w, " already granted by ");
                    why_quoted(w, t->source);
                    continue;
                }
                t = item_add(es, p->grants[g].tcanon, e);
                if (t == NULL) {
                    return PG_ERR_NOMEM;
                }
                t->source = p->id;
                t->appr = p;
                if (approved_item(es->x.attrs, p->grants[g].target, e)) {
                    /* an approver accepted this request: granted (SoD
                     * rules, applied later, still see it) */
                    t->state = S_GRANTED;
                    if (es->tcanon != NULL
                        && p->grants[g].tcanon == es->tcanon) {
                        es->d->has_account = 1;
                    }
                    why_str(w, "; ");
                    why_quoted(w, e->value);
                    why_str(w, " approved");
                } else if (p->ak == A_MANAGER && mgr == NULL) {
                    t->state = S_DENIED;
                    t->denier = p;
                    t->reason = "no approver: manager attribute missing";
                } else {
                    t->state = S_PENDING;
                }
            }
        }
        TRY(explain(es, "policy", p->id, "approval",
                    m ? "match" : "no_match", WHYB(w)));
    }
    return PG_OK;
}

/* "YYYY-MM-DDTHH:MM:SSZ" of t into b (at least 21 bytes). */
static void
iso_time(char *b, size_t n, time_t t)
{
    struct tm tm;

    if (gmtime_r(&t, &tm) == NULL ||
        strftime(b, n, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
        b[0] = '\0';
    }
}

/* Approvers of a pending item as JSON. */
static json_t *
approvers_json(const eval_state_t *es, const policy_t *p)
{
    json_t *a, *u;
    size_t i;

    switch (p->ak) {
    case A_MANAGER:
        return json_pack("{s:s, s:s, s:O}", "kind", "manager", "attr",
                         p->appr, "id",
                         json_object_get(es->x.attrs, p->appr));
    case A_GROUP:
        return json_pack("{s:s, s:s}", "kind", "group", "group", p->appr);
    case A_USERS:
        u = json_array();
        for (i = 0; u != NULL && p->users[i] != NULL; i++) {
            if (json_array_append_new(u, json_string(p->users[i])) != 0) {
                json_decref(u);
                return NULL;
            }
        }
        a = json_pack("{s:s, s:o}", "kind", "users", "users", u);
        return a;
    }
    return NULL;
}

/* Move the items into the decision's arrays (filtered to the target). */
static pg_status_t
emit(eval_state_t *es)
{
    pg_decision_t *d = es->d;
    char exp[40];
    size_t i;

    for (i = 0; i < es->n; i++) {
        const item_t *t = &es->it[i];
        json_t *o;
        if (es->target != NULL && t->target != es->tcanon) {
            continue;
        }
        o = json_pack("{s:s, s:s, s:s, s:s}", "target", t->target, "type",
                      t->e->type, "value", t->e->value, "policy", t->source);
        if (o == NULL) {
            return PG_ERR_NOMEM;
        }
        if (t->brole != NULL) {
            char via[300];
            int r = snprintf(via, sizeof(via), "%s > %s", t->brole->id,
                             t->trole->id);
            (void)r;
            if (json_object_set_new(o, "via", json_string(via)) != 0) {
                json_decref(o);
                return PG_ERR_NOMEM;
            }
        }
        if (t->state == S_GRANTED) {
            if (t->e->jit_lifetime > 0) {
                json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:I}", "target",
                                      t->target, "type", t->e->type, "value",
                                      t->e->value, "policy", t->source,
                                      "lifetime_s",
                                      (json_int_t)t->e->jit_lifetime);
                if (j == NULL || json_array_append_new(d->jit, j) != 0 ||
                    json_object_set_new(o, "jit_lifetime_s",
                                        json_integer(t->e->jit_lifetime))) {
                    json_decref(o);
                    return PG_ERR_NOMEM;
                }
            }
            if (json_array_append_new(d->entitlements, o) != 0) {
                return PG_ERR_NOMEM;
            }
        } else if (t->state == S_PENDING) {
            iso_time(exp, sizeof(exp),
                     es->now + (time_t)t->appr->expires_s);
            if (json_object_set_new(o, "approvers",
                                    approvers_json(es, t->appr)) != 0 ||
                json_object_set_new(o, "expires_s",
                                    json_integer(t->appr->expires_s)) != 0 ||
                json_object_set_new(o, "expires_at", json_string(exp)) != 0 ||
                json_array_append_new(d->pending_approval, o) != 0) {
                return PG_ERR_NOMEM;
            }
        } else {
            if (json_object_set_new(o, "denied_by",
                                    json_string(t->denier->id)) != 0 ||
                json_object_set_new(o, "reason", json_string(t->reason)) != 0
                || json_array_append_new(d->denied, o) != 0) {
                return PG_ERR_NOMEM;
            }
        }
    }
    for (i = 0; i < es->ps->nr; i++) {
        json_t *o;
        const role_t *r = &es->ps->r[i];
        if (!EFF(es, i) && !(es->held[i] && es->rdenied[i])) {
            continue;
        }
        o = json_pack("{s:s, s:s, s:s, s:s}", "role", r->id, "type",
                      r->business ? "business" : "technical", "state",
                      EFF(es, i) ? "held" : "denied", "via",
                      es->held[i] ? es->held_src[i] : es->ps->r[es->via[i]].id);
        if (o == NULL || json_array_append_new(d->roles, o) != 0) {
            return PG_ERR_NOMEM;
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

/* Birthright policies, in load order. */
static pg_status_t
birthrights(eval_state_t *es)
{
    const pg_policy_set_t *ps = es->ps;
    size_t i;
    pg_status_t st;

    for (i = 0; i < ncand(es); i++) {
        const policy_t *p;
        why_t wb, *w = why_init(!es->quiet, &wb);
        int match, granted = 0;
        if (ps->pkind[cand(es, i)] != K_BIRTHRIGHT) {
            continue;   /* a compact array: no policy_t cache miss */
        }
        if (es->quiet && !eval_hot(es, i)) {
            continue;   /* fast path: no match, nothing to record */
        }
        p = &ps->p[cand(es, i)];
        match = es->quiet || eval_who(es, p, w);
        if (match) {
            TRY(grant_all(es, p->grants, p->ngrants, p->id, NULL, NULL, w,
                          &granted));
        } else if (es->target != NULL && !es->quiet) {
            granted = grants_target(p, es->target);
        }
        if (!granted && es->target != NULL) {
            why_str(w, "; grants nothing in target ");
            why_quoted(w, es->target);
        }
        TRY(explain(es, "policy", p->id, p->kind,
                    match ? "match" : "no_match", WHYB(w)));
    }
    return PG_OK;
}

/*
 * Word w of the roles whose grants can matter: every role on the full
 * path; on the fast path the roles with a grant in the target decided or
 * with an entitlement that some SoD rule lists (the others only add
 * items to other targets, which are never reported).
 */
static uint64_t
relevant(const eval_state_t *es, size_t w)
{
    const pg_policy_set_t *ps = es->ps;

    if (!es->quiet) {
        return ~(uint64_t)0;
    }
    return ps->sodroles[w] |
           (es->tidx != SIZE_MAX ? ps->troles[es->tidx * ps->rwords + w] : 0);
}

/*
 * Fast path: grant_all() for effective role i from the compact grant list
 * (no role_t, grant_t or ent_t access): only items of the target and
 * items an SoD rule names are built; a grant in the target gives the
 * account.
 */
static pg_status_t
role_grants_fast(eval_state_t *es, size_t i)
{
    const pg_policy_set_t *ps = es->ps;
    size_t k;
    item_t *t;

    for (k = ps->rg_off[i]; k < ps->rg_off[i + 1]; k++) {
        const struct rgent *g = &ps->rg[k];
        int here = g->tix == es->tidx;
        if (here) {
            es->d->has_account = 1;
        }
        if (g->e == NULL || (!here && (!g->sod || g->jit))) {
            continue;   /* account only, or never seen by this decision */
        }
        t = item_find(es, g->eid);
        if (t != NULL) {
            if (t->state == S_PENDING) {
                t->state = S_GRANTED;
                t->source = es->held_src[es->via[i]];
                t->brole = &ps->r[es->via[i]];
                t->trole = &ps->r[i];
                t->appr = NULL;
            }
            continue;
        }
        t = item_add(es, ps->tnames[g->tix], g->e);
        if (t == NULL) {
            return PG_ERR_NOMEM;
        }
        t->state = S_GRANTED;
        t->source = es->held_src[es->via[i]];
        t->brole = &ps->r[es->via[i]];
        t->trole = &ps->r[i];
    }
    return PG_OK;
}

/* Grants of the effective technical roles, with their explanation. */
static pg_status_t
role_grants(eval_state_t *es)
{
    const pg_policy_set_t *ps = es->ps;
    size_t i;
    pg_status_t st;

    size_t wd;

    if (es->quiet) {
        /* the effective, relevant roles, ascending; nothing to explain */
        for (wd = 0; wd < ps->rwords; wd++) {
            uint64_t bits = es->effbits[wd] & relevant(es, wd);
            while (bits != 0) {
                TRY(role_grants_fast(es, wd * 64 +
                                         (size_t)__builtin_ctzll(bits)));
                bits &= bits - 1;
            }
        }
        return PG_OK;
    }
    for (i = 0; i < ps->nr; i++) {
        const role_t *r;
        const role_t *b;
        why_t wb, *w;
        int in_target = 0;
        if ((i % 64) == 0 && es->effbits[i / 64] == 0) {
            i += 63;   /* no effective role in this word */
            continue;
        }
        if (!EFF(es, i)) {
            continue;
        }
        r = &ps->r[i];
        b = &ps->r[es->via[i]];
        w = why_init(!es->quiet, &wb);
        if (es->held[i]) {
            why_str(w, es->held_src[i] == SRC_ATTR
                    ? "assigned by attribute roles" : "assigned by policy ");
            if (es->held_src[i] != SRC_ATTR) {
                why_quoted(w, es->held_src[i]);
            }
        } else {
            why_str(w, "included by business role ");
            why_quoted(w, b->id);
        }
        TRY(grant_all(es, r->grants, r->ngrants, es->held_src[es->via[i]],
                      b, r, w, &in_target));
        TRY(explain(es, "role", r->id,
                    r->business ? "business_role" : "technical_role", "held",
                    WHYB(w)));
    }
    for (i = 0; i < ps->nr; i++) {
        if ((i % 64) == 0 && es->heldbits[i / 64] == 0) {
            i += 63;   /* no held role in this word */
            continue;
        }
        if (es->held[i] && es->rdenied[i]) {
            TRY(explain(es, "role", ps->r[i].id, "business_role", "denied",
                        "removed by a segregation-of-duties rule"));
        }
    }
    return PG_OK;
}

/*
 * Account rules: for the target decided (when it gets an account), or
 * for every target with an account (target NULL), build the account into
 * d->accounts and explain it. A refused account clears has_account.
 */
static pg_status_t
accounts(eval_state_t *es)
{
    const pg_policy_set_t *ps = es->ps;
    char why[WHY_MAX];
    size_t i, t;
    pg_status_t st;

    for (i = 0; i < ps->nacct; i++) {
        const pg_acct_rule_t *r = ps->acct[i];
        const char *tn = pg_acct_target(r);
        json_t *o = NULL;
        int ok = 0, gets = 0;
        if (es->target != NULL) {
            gets = strcmp(es->target, tn) == 0 && es->d->has_account;
        } else {
            for (t = 0; t < ps->ntnames; t++) {
                if (es->tacc[t] && ps->tacct[t] == r) {
                    gets = 1;
                }
            }
        }
        if (!gets) {
            continue;
        }
        TRY(pg_acct_build(r, es->x.attrs, &o, &ok, why, sizeof(why)));
        if (json_object_set_new(es->d->accounts, tn, o) != 0) {
            return PG_ERR_NOMEM;
        }
        if (!ok && es->target != NULL) {
            es->d->has_account = 0;
        }
        TRY(explain(es, "account", tn, "account", ok ? "ok" : "refused",
                    why));
    }
    return PG_OK;
}

/* See policy.h. */
pg_status_t
pg_policy_account(const pg_policy_set_t *ps, const json_t *attrs,
                  const char *target, json_t **out)
{
    char why[WHY_MAX];
    size_t i;
    int ok = 0;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    if (ps == NULL || target == NULL || !json_is_object(attrs)) {
        return ps == NULL ? PG_OK : PG_ERR_INVALID;
    }
    for (i = 0; i < ps->nacct; i++) {
        if (strcmp(pg_acct_target(ps->acct[i]), target) == 0) {
            return pg_acct_build(ps->acct[i], attrs, out, &ok, why,
                                 sizeof(why));
        }
    }
    return PG_OK;
}

/*
 * Decide at time now (see policy.h). The order is fixed: birthright,
 * role assignment, role SoD, role grants, approval requests, entitlement
 * SoD; then the items of target (all targets when target is NULL) are
 * written to out.
 */
pg_status_t
pg_policy_decide_at(const pg_policy_set_t *ps, const json_t *attrs,
                    const char *target, time_t now, pg_decision_t *out)
{
    eval_state_t es;
    size_t nr;
    pg_status_t st = PG_OK;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    memset(out, 0, sizeof(*out));
    if (!json_is_object(attrs)) {
        return PG_ERR_INVALID;
    }
    memset(&es, 0, sizeof(es));
    es.ps = ps;
    es.x.attrs = attrs;
    es.x.today = (long)(now >= 0 ? now / 86400 : (now - 86399) / 86400);
    es.target = target;
    es.tcanon = ps != NULL && target != NULL ? target_canon(ps, target)
                                             : NULL;
    es.now = now;
    es.d = out;
    out->entitlements = json_array();
    out->explanation = json_array();
    out->denied = json_array();
    out->sod_findings = json_array();
    out->pending_approval = json_array();
    out->jit = json_array();
    out->roles = json_array();
    out->accounts = json_object();
    nr = ps != NULL ? ps->nr : 0;
    es.tacc = calloc((ps != NULL ? ps->ntnames : 0) + 1, 1);
    es.held = calloc(nr + 1, 1);
    es.rdenied = calloc(nr + 1, 1);
    es.held_src = calloc(nr + 1, sizeof(*es.held_src));
    es.via = calloc(nr + 1, sizeof(*es.via));
    es.slot_of = calloc((ps != NULL ? ps->neids : 0) + 1,
                        sizeof(*es.slot_of));
    es.effbits = calloc((ps != NULL ? ps->rwords : 0) + 1,
                        sizeof(*es.effbits));
    es.x.vals = calloc((ps != NULL ? ps->nattrs : 0) + 1,
                       sizeof(*es.x.vals));
    es.heldbits = calloc((ps != NULL ? ps->rwords : 0) + 1,
                         sizeof(*es.heldbits));
    if (es.tacc == NULL || out->accounts == NULL || es.heldbits == NULL ||
        es.x.vals == NULL || es.slot_of == NULL || es.effbits == NULL ||
        out->entitlements == NULL || out->explanation == NULL ||
        out->denied == NULL || out->sod_findings == NULL ||
        out->pending_approval == NULL || out->jit == NULL ||
        out->roles == NULL || es.held == NULL || es.rdenied == NULL ||
        es.held_src == NULL || es.via == NULL) {
        st = PG_ERR_NOMEM;
        goto done;
    }
    if (ps == NULL) {
        goto done;
    }
    attr_fill(ps, attrs, es.x.vals);
    es.x.groups = es.x.vals[ps->groups_aid];
    st = birthrights(&es);
    if (st == PG_OK) {
        st = assign_roles(&es);
    }
    if (st == PG_OK) {
        st = sod_roles(&es);
    }
    if (st == PG_OK) {
        st = role_grants(&es);
    }
    if (st == PG_OK) {
        st = approvals(&es);
    }
    if (st == PG_OK) {
        st = sod_ents(&es);
    }
    if (st == PG_OK) {
        st = accounts(&es);
    }
    if (st == PG_OK) {
        st = emit(&es);
    }
done:
    free(es.it);
    free(es.held);
    free(es.rdenied);
    free(es.held_src);
    free(es.via);
    free(es.slot_of);
    free(es.effbits);
    free((void *)es.x.vals);
    free(es.heldbits);
    free(es.tacc);
    if (st != PG_OK) {
        pg_decision_clear(out);
    }
    return st;
}

/*
 * Decide for one identity and target now (see policy.h). target must not
 * be NULL here; pg_policy_decide_at() takes NULL for every target.
 */
pg_status_t
pg_policy_decide(const pg_policy_set_t *ps, const json_t *attrs,
                 const char *target, pg_decision_t *out)
{
    if (out != NULL) {
        memset(out, 0, sizeof(*out));
    }
    if (target == NULL) {
        return PG_ERR_INVALID;
    }
    return pg_policy_decide_at(ps, attrs, target, time(NULL), out);
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
    json_decref(d->denied);
    json_decref(d->sod_findings);
    json_decref(d->pending_approval);
    json_decref(d->jit);
    json_decref(d->roles);
    json_decref(d->accounts);
    memset(d, 0, sizeof(*d));
}

/* Number of loaded roles (0 for NULL). */
size_t
pg_policy_role_count(const pg_policy_set_t *ps)
{
    return ps != NULL ? ps->nr : 0;
}

/* ---- the allocation-free path ---------------------------------------- */

#define FAST_MAX_ITEMS 1024u

struct pg_policy_scratch {
    const pg_policy_set_t *ps;
    item_t it[FAST_MAX_ITEMS];
    unsigned char *held, *rdenied;
    const char **held_src;
    size_t *via;
    uint64_t *bits;
    uint32_t *cand;
    uint32_t *slot_of;
    uint64_t *effbits;
    uint64_t *heldbits;
    uint64_t *sodbits;
    uint32_t *sodcand;
    const json_t **vals;       /* per interned attribute */
    uint32_t *memo_gen;        /* per regex slot (see ctx_t) */
    unsigned char *memo_val;
    uint32_t gen;
};

/* Release a scratch area. NULL is fine. */
void
pg_policy_scratch_free(pg_policy_scratch_t *sc)
{
    if (sc == NULL) {
        return;
    }
    free(sc->held);
    free(sc->rdenied);
    free(sc->held_src);
    free(sc->via);
    free(sc->bits);
    free(sc->cand);
    free(sc->slot_of);
    free(sc->effbits);
    free(sc->heldbits);
    free(sc->sodbits);
    free(sc->sodcand);
    free(sc->vals);
    free(sc->memo_gen);
    free(sc->memo_val);
    free(sc);
}

/* Allocate the scratch for ps; *out owned by the caller. */
pg_status_t
pg_policy_scratch_new(const pg_policy_set_t *ps, pg_policy_scratch_t **out)
{
    pg_policy_scratch_t *sc;
    size_t nr;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    if (ps == NULL) {
        return PG_ERR_INVALID;
    }
    nr = ps->nr + 1;
    sc = calloc(1, sizeof(*sc));
    if (sc == NULL) {
        return PG_ERR_NOMEM;
    }
    sc->ps = ps;
    sc->held = calloc(nr, 1);
    sc->rdenied = calloc(nr, 1);
    sc->held_src = calloc(nr, sizeof(*sc->held_src));
    sc->via = calloc(nr, sizeof(*sc->via));
    sc->bits = calloc(ps->nwords, sizeof(*sc->bits));
    sc->cand = calloc(ps->n + 1, sizeof(*sc->cand));
    sc->slot_of = calloc(ps->neids + 1, sizeof(*sc->slot_of));
    sc->effbits = calloc(ps->rwords + 1, sizeof(*sc->effbits));
    sc->sodbits = calloc(ps->nwords, sizeof(*sc->sodbits));
    sc->sodcand = calloc(ps->n + 1, sizeof(*sc->sodcand));
    sc->vals = calloc(ps->nattrs + 1, sizeof(*sc->vals));
    sc->heldbits = calloc(ps->rwords + 1, sizeof(*sc->heldbits));
    sc->memo_gen = calloc(ps->nmemo + 1, sizeof(*sc->memo_gen));
    sc->memo_val = calloc(ps->nmemo + 1, 1);
    if (sc->memo_gen == NULL || sc->memo_val == NULL ||
        sc->heldbits == NULL || sc->vals == NULL || sc->sodbits == NULL || sc->sodcand == NULL || sc->slot_of == NULL || sc->effbits == NULL || sc->held == NULL || sc->rdenied == NULL ||
        sc->held_src == NULL || sc->via == NULL || sc->bits == NULL ||
        sc->cand == NULL) {
        pg_policy_scratch_free(sc);
        return PG_ERR_NOMEM;
    }
    *out = sc;
    return PG_OK;
}

/* Set in bits the policies of posting list e (NULL is fine). */
static void
mark_list(uint64_t *bits, const struct ix_ent *e)
{
    size_t i;

    for (i = 0; e != NULL && i < e->n; i++) {
        bits[e->list[i] / 64] |= (uint64_t)1 << (e->list[i] % 64);
    }
}

/*
 * Set the bits of the policies listed for (aid, string value v): its
 * equality key, or with prefix set every prefix key of it up to max
 * bytes. Values compare as C strings (up to an embedded NUL), as the
 * evaluator does.
 */
static void
mark(const pg_policy_set_t *ps, uint64_t *bits, uint32_t aid, int prefix,
     size_t max, const json_t *v)
{
    const char *s;
    size_t len, i;
    uint32_t h;

    if (!json_is_string(v)) {
        return;
    }
    s = json_string_value(v);
    len = strnlen(s, json_string_length(v));
    h = key_hash_init(aid, prefix);
    if (!prefix) {
        for (i = 0; i < len; i++) {
            h = key_hash_step(h, (unsigned char)s[i]);
        }
        mark_list(bits, ix_find(ps, h, aid, 0, s, len));
        return;
    }
    for (i = 0; i < len && i < max; i++) {
        h = key_hash_step(h, (unsigned char)s[i]);
        mark_list(bits, ix_find(ps, h, aid, 1, s, i + 1));
    }
}

/* mark() over a value or every element of an array value. */
static void
mark_value(const pg_policy_set_t *ps, uint64_t *bits, uint32_t aid,
           int prefix, size_t max, const json_t *v)
{
    size_t j;
    const json_t *e;

    if (json_is_array(v)) {
        json_array_foreach(v, j, e) {
            mark(ps, bits, aid, prefix, max, e);
        }
    } else {
        mark(ps, bits, aid, prefix, max, v);
    }
}

/* The candidate policies for vals, ascending, into sc->cand. */
static size_t
candidates(const pg_policy_set_t *ps, pg_policy_scratch_t *sc,
           const json_t **vals)
{
    size_t i, n = 0;

    memcpy(sc->bits, ps->always, ps->nwords * sizeof(*sc->bits));
    for (i = 0; i < ps->nixattrs; i++) {
        mark_value(ps, sc->bits, ps->ixattrs[i], 0, 0,
                   vals[ps->ixattrs[i]]);
    }
    for (i = 0; i < ps->npxattrs; i++) {
        mark_value(ps, sc->bits, ps->pxattrs[i], 1, ps->pxmax[i],
                   vals[ps->pxattrs[i]]);
    }
    for (i = 0; i < ps->nwords; i++) {
        uint64_t w = sc->bits[i];
        while (w != 0) {
            unsigned b = (unsigned)__builtin_ctzll(w);
            sc->cand[n++] = (uint32_t)(i * 64 + b);
            w &= w - 1;
        }
    }
    return n;
}

/* Decide without allocating; see policy.h. */
pg_status_t
pg_policy_decide_fast(const pg_policy_set_t *ps, pg_policy_scratch_t *sc,
                      const json_t *attrs, const char *target, time_t now,
                      pg_item_t *items, size_t cap, pg_fast_decision_t *out)
{
    pg_decision_t dummy;
    eval_state_t es;
    size_t i;
    pg_status_t st;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    memset(out, 0, sizeof(*out));
    if (ps == NULL || sc == NULL || sc->ps != ps || !json_is_object(attrs) ||
        target == NULL || (items == NULL && cap > 0)) {
        return PG_ERR_INVALID;
    }
    memset(&dummy, 0, sizeof(dummy));
    memset(&es, 0, sizeof(es));
    for (i = 0; i < ps->rwords; i++) {
        uint64_t hb = sc->heldbits[i];   /* the previous decision's roles */
        while (hb != 0) {
            size_t b = i * 64 + (size_t)__builtin_ctzll(hb);
            sc->held[b] = 0;
            sc->rdenied[b] = 0;
            hb &= hb - 1;
        }
        sc->heldbits[i] = 0;
    }
    es.ps = ps;
    es.x.attrs = attrs;
    es.x.today = (long)(now >= 0 ? now / 86400 : (now - 86399) / 86400);
    es.target = target;
    es.tcanon = target_canon(ps, target);
    es.tidx = SIZE_MAX;
    for (i = 0; es.tcanon != NULL && i < ps->ntnames; i++) {
        if (ps->tnames[i] == es.tcanon) {
            es.tidx = i;
        }
    }
    es.now = now;
    es.d = &dummy;
    es.quiet = 1;
    es.it = sc->it;
    es.cap = FAST_MAX_ITEMS;
    es.cap_fixed = 1;
    es.held = sc->held;
    es.rdenied = sc->rdenied;
    es.held_src = sc->held_src;
    es.via = sc->via;
    es.slot_of = sc->slot_of;
    es.effbits = sc->effbits;
    es.heldbits = sc->heldbits;
    es.sodbits = sc->sodbits;
    es.sodcand = sc->sodcand;
    attr_fill(ps, attrs, sc->vals);
    es.x.vals = sc->vals;
    if (++sc->gen == 0) {   /* wrapped: forget every memo */
        memset(sc->memo_gen, 0, (ps->nmemo + 1) * sizeof(*sc->memo_gen));
        sc->gen = 1;
    }
    es.x.memo_gen = sc->memo_gen;
    es.x.memo_val = sc->memo_val;
    es.x.gen = sc->gen;
    es.x.groups = sc->vals[ps->groups_aid];
    es.ncand = candidates(ps, sc, sc->vals);
    es.cand = sc->cand;
    st = birthrights(&es);
    if (st == PG_OK) {
        st = assign_roles(&es);
    }
    if (st == PG_OK) {
        st = sod_roles(&es);
    }
    if (st == PG_OK) {
        st = role_grants(&es);
    }
    if (st == PG_OK) {
        st = approvals(&es);
    }
    if (st == PG_OK) {
        st = sod_ents(&es);
    }
    if (st == PG_ERR_NOMEM && es.n == es.cap) {
        st = PG_ERR_TOO_LARGE;
    }
    for (i = 0; i < es.n; i++) {
        sc->slot_of[es.it[i].e->eid] = 0;   /* leave the scratch clean */
    }
    if (st != PG_OK) {
        return st;
    }
    for (i = 0; i < es.n; i++) {
        const item_t *t = &es.it[i];
        pg_item_t *o;
        if (t->target != es.tcanon) {
            continue;
        }
        if (out->nitems == cap) {
            out->nitems = 0;
            return PG_ERR_TOO_LARGE;
        }
        o = &items[out->nitems++];
        o->target = t->target;
        o->type = t->e->type;
        o->value = t->e->value;
        o->policy = t->source;
        o->via_role = t->trole != NULL ? t->trole->id : NULL;
        o->denied_by = t->state == S_DENIED ? t->denier->id : NULL;
        o->state = t->state == S_GRANTED ? PG_ITEM_GRANTED
                   : t->state == S_PENDING ? PG_ITEM_PENDING
                                           : PG_ITEM_DENIED;
        o->jit_lifetime_s = t->state == S_GRANTED ? t->e->jit_lifetime : 0;
        o->request_expires_s = t->state == S_PENDING ? t->appr->expires_s
                                                     : 0;
    }
    out->has_account = dummy.has_account;
    if (out->has_account && es.tidx != SIZE_MAX && ps->tacct[es.tidx] != NULL) {
        char why[8];
        /* a required attribute or the username cannot be built */
        out->has_account = pg_acct_check(ps->tacct[es.tidx], attrs, why,
                                         sizeof(why));
    }
    out->nfindings = es.nfindings;
    return PG_OK;
}
