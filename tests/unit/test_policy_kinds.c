/*
 * Unit tests: the policy kinds beyond birthright (src/policy): role-based
 * (rules, explicit roles, hierarchy, cycles, undefined references),
 * segregation of duties (prevent/detect, exemptions and their expiry),
 * approval requests, jit entitlements, numeric and date comparisons, the
 * all-targets decision and move semantics (pg_policy_move).
 *
 * The example files in policies/examples/ are loaded as they ship; small
 * inline files written to a private temp dir cover load errors.
 */
#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include "provgate/config.h"
#include "provgate/policy.h"

static char g_root[PATH_MAX];   /* repository root */
static char g_tmp[PATH_MAX];

static void fmt(char *out, size_t n, const char *f, ...) PG_PRINTF(3, 4);
static void
fmt(char *out, size_t n, const char *f, ...)
{
    va_list ap;
    int r;

    va_start(ap, f);
    r = vsnprintf(out, n, f, ap);
    va_end(ap);
    assert_true(r >= 0 && (size_t)r < n);
}

static int
is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* The repository root: from __FILE__, else from the binary's location. */
static void
find_root(void)
{
    char cand[PATH_MAX], src[PATH_MAX], exe[PATH_MAX], pe[PATH_MAX];
    ssize_t n;

    fmt(src, sizeof(src), "%s", __FILE__);
    *strrchr(src, '/') = '\0';
    fmt(cand, sizeof(cand), "%s/../..", src);
    fmt(pe, sizeof(pe), "%s/policies/examples", cand);
    if (!is_dir(pe)) {
        n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        assert_true(n > 0);
        exe[n] = '\0';
        *strrchr(exe, '/') = '\0';
        fmt(cand, sizeof(cand), "%s/../..", exe);
    }
    assert_non_null(realpath(cand, g_root));
}

static int
rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int
setup(void **state)
{
    (void)state;
    fmt(g_tmp, sizeof(g_tmp), "/tmp/pg_test_policy_kinds.XXXXXX");
    if (mkdtemp(g_tmp) == NULL) {
        return -1;
    }
    find_root();
    return 0;
}

static int
teardown(void **state)
{
    (void)state;
    return nftw(g_tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* UTC midnight of "YYYY-MM-DD". */
static time_t
day(const char *ymd)
{
    struct tm tm;

    memset(&tm, 0, sizeof(tm));
    assert_non_null(strptime(ymd, "%Y-%m-%d", &tm));
    return timegm(&tm);
}

/* Load policies/examples/<a> (and <b> when not NULL); fails on error. */
static pg_policy_set_t *
load_examples(const char *a, const char *b)
{
    char pa[PATH_MAX], pb[PATH_MAX];
    char *files[3] = {pa, NULL, NULL};
    pg_policy_set_t *ps = NULL;
    pg_err_t err;

    fmt(pa, sizeof(pa), "%s/policies/examples/%s", g_root, a);
    if (b != NULL) {
        fmt(pb, sizeof(pb), "%s/policies/examples/%s", g_root, b);
        files[1] = pb;
    }
    if (pg_policy_load(files, NULL, &ps, &err) != PG_OK) {
        fail_msg("load: %s", err.msg);
    }
    return ps;
}

/* Write text to <tmp>/<name>; path receives the full path. */
static void
write_tmp(const char *name, const char *text, char *path, size_t n)
{
    FILE *f;

    fmt(path, n, "%s/%s", g_tmp, name);
    f = fopen(path, "w");
    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
}

/* Load inline text; return the status, err filled. */
static pg_status_t
load_text(const char *text, pg_policy_set_t **ps, pg_err_t *err,
          char *path, size_t pathn)
{
    char *files[2];

    write_tmp("inline.json", text, path, pathn);
    files[0] = path;
    files[1] = NULL;
    memset(err, 0, sizeof(*err));
    return pg_policy_load(files, NULL, ps, err);
}

/* Decide for attrs (JSON text) in target at date ymd. */
static void
decide(const pg_policy_set_t *ps, const char *attrs_json, const char *target,
       const char *ymd, pg_decision_t *d)
{
    json_error_t je;
    json_t *attrs = json_loads(attrs_json, 0, &je);

    if (attrs == NULL) {
        fail_msg("bad attrs %s: %s", attrs_json, je.text);
    }
    assert_int_equal(pg_policy_decide_at(ps, attrs, target, day(ymd), d),
                     PG_OK);
    json_decref(attrs);
}

/* The element of arr with type/value (and target when not NULL), or NULL. */
static json_t *
find_item(const json_t *arr, const char *target, const char *value)
{
    size_t i;
    json_t *e;

    json_array_foreach(arr, i, e) {
        const char *t = json_string_value(json_object_get(e, "target"));
        const char *v = json_string_value(json_object_get(e, "value"));
        if (v != NULL && strcmp(v, value) == 0 &&
            (target == NULL || (t != NULL && strcmp(t, target) == 0))) {
            return e;
        }
    }
    return NULL;
}

/* The explanation entry of a policy or role id, or NULL. */
static json_t *
find_expl(const pg_decision_t *d, const char *key, const char *id)
{
    size_t i;
    json_t *e;

    json_array_foreach(d->explanation, i, e) {
        const char *v = json_string_value(json_object_get(e, key));
        if (v != NULL && strcmp(v, id) == 0) {
            return e;
        }
    }
    return NULL;
}

static const char *
sget(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    if (s == NULL) {
        fail_msg("no string member %s", k);
    }
    return s;
}

/* Sorted, comma-joined values of an item array (for compact asserts). */
static void
values(const json_t *arr, char *out, size_t n)
{
    const char *v[64];
    size_t i, j, cnt = json_array_size(arr), o = 0;

    assert_true(cnt <= 64);
    for (i = 0; i < cnt; i++) {
        v[i] = sget(json_array_get(arr, i), "value");
    }
    for (i = 1; i < cnt; i++) {
        for (j = i; j > 0 && strcmp(v[j - 1], v[j]) > 0; j--) {
            const char *t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    }
    out[0] = '\0';
    for (i = 0; i < cnt; i++) {
        int r = snprintf(out + o, n - o, "%s%s", i ? "," : "", v[i]);
        assert_true(r >= 0 && (size_t)r < n - o);
        o += (size_t)r;
    }
}

#define ASSERT_VALUES(arr, want) do {               \
        char got_[1024];                            \
        values((arr), got_, sizeof(got_));          \
        assert_string_equal(got_, (want));          \
    } while (0)

/* ---- comparisons ----------------------------------------------------- */

#define CMP_POLICY(who) \
    "{\"policies\": [{\"id\": \"p\", \"kind\": \"birthright\", \"who\": " \
    who ", \"grants\": [{\"target\": \"t\", \"entitlements\": " \
    "[{\"type\": \"group\", \"value\": \"g\"}]}]}]}"

/* 1 when the single policy of ps matches attrs at ymd. */
static int
matches(const pg_policy_set_t *ps, const char *attrs, const char *ymd,
        char *why, size_t whyn)
{
    pg_decision_t d;
    const json_t *e;
    int m;

    decide(ps, attrs, "t", ymd, &d);
    e = find_expl(&d, "policy", "p");
    assert_non_null(e);
    m = strcmp(sget(e, "result"), "match") == 0;
    assert_int_equal(d.has_account, m);
    assert_int_equal(json_array_size(d.entitlements), m ? 1 : 0);
    if (why != NULL) {
        fmt(why, whyn, "%s", sget(e, "why"));
    }
    pg_decision_clear(&d);
    return m;
}

static void
test_numeric_comparisons(void **state)
{
    static const struct {
        const char *who, *attrs;
        int want;
    } cases[] = {
        {"{\"attr\": \"n\", \"gt\": 2}", "{\"n\": 3}", 1},
        {"{\"attr\": \"n\", \"gt\": 2}", "{\"n\": 2}", 0},
        {"{\"attr\": \"n\", \"ge\": 2}", "{\"n\": 2}", 1},
        {"{\"attr\": \"n\", \"ge\": 2}", "{\"n\": 1.5}", 0},
        {"{\"attr\": \"n\", \"lt\": 2}", "{\"n\": 1.5}", 1},
        {"{\"attr\": \"n\", \"lt\": 2}", "{\"n\": 2}", 0},
        {"{\"attr\": \"n\", \"le\": 2}", "{\"n\": 2}", 1},
        {"{\"attr\": \"n\", \"le\": -1}", "{\"n\": 0}", 0},
        /* numeric strings compare as numbers; others never match */
        {"{\"attr\": \"n\", \"gt\": 9}", "{\"n\": \"10\"}", 1},
        {"{\"attr\": \"n\", \"gt\": 9}", "{\"n\": \"10x\"}", 0},
        {"{\"attr\": \"n\", \"lt\": 9}", "{\"n\": \"\"}", 0},
        {"{\"attr\": \"n\", \"lt\": 9}", "{\"n\": true}", 0},
        {"{\"attr\": \"n\", \"lt\": 9}", "{\"n\": null}", 0},
        {"{\"attr\": \"n\", \"lt\": 9}", "{}", 0},
        {"{\"attr\": \"n\", \"lt\": 9}", "{\"n\": {\"a\": 1}}", 0},
        /* arrays: any element */
        {"{\"attr\": \"n\", \"gt\": 5}", "{\"n\": [1, \"x\", 7]}", 1},
        {"{\"attr\": \"n\", \"gt\": 5}", "{\"n\": [1, 2]}", 0},
        /* not(missing < 9) matches: missing is a defined case */
        {"{\"not\": {\"attr\": \"n\", \"lt\": 9}}", "{}", 1},
    };
    char text[1024], path[PATH_MAX], why[512];
    pg_policy_set_t *ps;
    pg_err_t err;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fmt(text, sizeof(text), CMP_POLICY("%s"), cases[i].who);
        if (load_text(text, &ps, &err, path, sizeof(path)) != PG_OK) {
            fail_msg("case %zu: %s", i, err.msg);
        }
        if (matches(ps, cases[i].attrs, "2026-11-27", why, sizeof(why)) !=
            cases[i].want) {
            fail_msg("case %zu (%s vs %s): want %d, why: %s", i,
                     cases[i].who, cases[i].attrs, cases[i].want, why);
        }
        pg_policy_free(ps);
    }
    /* explanations */
    assert_int_equal(load_text(CMP_POLICY("{\"attr\": \"grade\", \"ge\": 7}"),
                               &ps, &err, path, sizeof(path)), PG_OK);
    assert_int_equal(matches(ps, "{\"grade\": 6}", "2026-11-27", why,
                             sizeof(why)), 0);
    assert_string_equal(why, "grade 6 is not >= 7");
    assert_int_equal(matches(ps, "{\"grade\": 7}", "2026-11-27", why,
                             sizeof(why)), 1);
    assert_string_equal(why, "grade 7 >= 7");
    assert_int_equal(matches(ps, "{}", "2026-11-27", why, sizeof(why)), 0);
    assert_string_equal(why, "grade is missing");
    pg_policy_free(ps);
}

static void
test_date_comparisons(void **state)
{
    char path[PATH_MAX], why[512];
    pg_policy_set_t *ps;
    pg_err_t err;

    (void)state;
    /* a literal date */
    assert_int_equal(load_text(CMP_POLICY("{\"attr\": \"end\", \"lt\": "
                                          "\"2027-01-01\"}"),
                               &ps, &err, path, sizeof(path)), PG_OK);
    assert_int_equal(matches(ps, "{\"end\": \"2026-12-31\"}", "2026-11-27",
                             why, sizeof(why)), 1);
    assert_string_equal(why, "end \"2026-12-31\" < 2027-01-01");
    assert_int_equal(matches(ps, "{\"end\": \"2027-01-01\"}", "2026-11-27",
                             NULL, 0), 0);
    /* ISO timestamps use their date part */
    assert_int_equal(matches(ps, "{\"end\": \"2026-12-31T23:59:59Z\"}",
                             "2026-11-27", NULL, 0), 1);
    /* invalid dates and other types never match */
    assert_int_equal(matches(ps, "{\"end\": \"2026-02-30\"}", "2026-11-27",
                             NULL, 0), 0);
    assert_int_equal(matches(ps, "{\"end\": \"2026-1-01\"}", "2026-11-27",
                             NULL, 0), 0);
    assert_int_equal(matches(ps, "{\"end\": 20261231}", "2026-11-27", NULL,
                             0), 0);
    assert_int_equal(matches(ps, "{\"end\": \"2026-12-31x\"}", "2026-11-27",
                             NULL, 0), 0);
    pg_policy_free(ps);

    /* "today" moves with the decision time; the contract end day itself
     * still counts as active */
    assert_int_equal(load_text(CMP_POLICY("{\"attr\": \"end\", \"ge\": "
                                          "\"today\"}"),
                               &ps, &err, path, sizeof(path)), PG_OK);
    assert_int_equal(matches(ps, "{\"end\": \"2026-11-27\"}", "2026-11-27",
                             why, sizeof(why)), 1);
    assert_string_equal(why, "end \"2026-11-27\" >= today 2026-11-27");
    assert_int_equal(matches(ps, "{\"end\": \"2026-11-27\"}", "2026-11-28",
                             why, sizeof(why)), 0);
    assert_string_equal(why, "end \"2026-11-27\" is not >= today 2026-11-28");
    /* leap day */
    assert_int_equal(matches(ps, "{\"end\": \"2028-02-29\"}", "2028-02-29",
                             NULL, 0), 1);
    assert_int_equal(matches(ps, "{\"end\": \"2027-02-29\"}", "2026-01-01",
                             NULL, 0), 0);
    pg_policy_free(ps);

    /* the shipped contractor example: start <= today <= end, clearance */
    ps = load_examples("contractors.json", NULL);
    {
        pg_decision_t d;
        decide(ps, "{\"employee_type\": \"contractor\", \"contract_start\": "
               "\"2026-01-01\", \"contract_end\": \"2026-12-31\", "
               "\"clearance\": 3}", "wiki", "2026-11-27", &d);
        assert_int_equal(d.has_account, 1);
        ASSERT_VALUES(d.entitlements, "CONTRACTORS");
        pg_decision_clear(&d);
        decide(ps, "{\"employee_type\": \"contractor\", \"contract_start\": "
               "\"2026-01-01\", \"contract_end\": \"2026-12-31\", "
               "\"clearance\": 3}", "wiki", "2027-01-01", &d);
        assert_int_equal(d.has_account, 0);
        assert_string_equal(sget(find_expl(&d, "policy",
                                           "active-contractors"), "why"),
                            "contract_end \"2026-12-31\" is not >= today "
                            "2027-01-01");
        pg_decision_clear(&d);
    }
    pg_policy_free(ps);
}

/* ---- roles ----------------------------------------------------------- */

static void
test_roles_by_rule(void **state)
{
    pg_policy_set_t *ps = load_examples("roles.json", NULL);
    pg_decision_t d;
    json_t *e;

    (void)state;
    assert_int_equal(pg_policy_count(ps), 2);
    assert_int_equal(pg_policy_role_count(ps), 8);
    /* Teller -> Check and Update Balances -> corebank entitlements */
    decide(ps, "{\"title\": \"Teller\"}", "corebank", "2026-11-27", &d);
    assert_int_equal(d.has_account, 1);
    ASSERT_VALUES(d.entitlements, "account-read,balance-update");
    e = find_item(d.entitlements, "corebank", "balance-update");
    assert_string_equal(sget(e, "policy"), "tellers-by-title");
    assert_string_equal(sget(e, "via"),
                        "Teller > check-and-update-balances");
    /* read-accounts is included by the technical role */
    e = find_item(d.entitlements, "corebank", "account-read");
    assert_string_equal(sget(e, "via"), "Teller > read-accounts");
    assert_string_equal(sget(find_expl(&d, "policy", "tellers-by-title"),
                             "why"),
                        "title \"Teller\" == \"Teller\"; assigns business "
                        "role \"Teller\"");
    assert_string_equal(sget(find_expl(&d, "role",
                                       "check-and-update-balances"), "why"),
                        "included by business role \"Teller\"");
    assert_string_equal(sget(find_expl(&d, "role", "Teller"), "result"),
                        "held");
    pg_decision_clear(&d);

    /* the same person in the wiki gets the branch space only */
    decide(ps, "{\"title\": \"Teller\"}", "wiki", "2026-11-27", &d);
    assert_int_equal(d.has_account, 1);
    ASSERT_VALUES(d.entitlements, "BRANCH");
    pg_decision_clear(&d);

    /* business role hierarchy: Branch Manager includes Teller; the rule
     * also needs grade >= 7 */
    decide(ps, "{\"title\": \"Branch Manager\", \"grade\": 7}", "corebank",
           "2026-11-27", &d);
    ASSERT_VALUES(d.entitlements,
                  "account-read,balance-update,overdraft-approve");
    e = find_item(d.roles, NULL, "x");
    assert_null(e);
    assert_int_equal(json_array_size(d.roles), 6);
    pg_decision_clear(&d);
    decide(ps, "{\"title\": \"Branch Manager\", \"grade\": \"6\"}",
           "corebank", "2026-11-27", &d);
    assert_int_equal(d.has_account, 0);
    assert_int_equal(json_array_size(d.entitlements), 0);
    assert_int_equal(json_array_size(d.roles), 0);
    pg_decision_clear(&d);

    /* nobody: nothing, no crash on missing attributes */
    decide(ps, "{}", "corebank", "2026-11-27", &d);
    assert_int_equal(d.has_account, 0);
    assert_int_equal(json_array_size(d.entitlements), 0);
    pg_decision_clear(&d);
    pg_policy_free(ps);
}

static void
test_roles_explicit(void **state)
{
    pg_policy_set_t *ps = load_examples("roles.json", NULL);
    pg_decision_t d;
    json_t *e;

    (void)state;
    /* explicit business roles; a technical role and an unknown name are
     * ignored (and explained) */
    decide(ps, "{\"roles\": [\"Loan Officer\", \"create-loans\", "
           "\"Astronaut\", 7]}", "corebank", "2026-11-27", &d);
    ASSERT_VALUES(d.entitlements, "loan-create");
    e = find_item(d.entitlements, "corebank", "loan-create");
    assert_string_equal(sget(e, "policy"), "attribute:roles");
    assert_string_equal(sget(e, "via"), "Loan Officer > create-loans");
    e = find_expl(&d, "role", "create-loans");
    assert_string_equal(sget(e, "result"), "ignored");
    assert_string_equal(sget(e, "why"), "attribute roles names "
                        "\"create-loans\", a technical role (only business "
                        "roles can be assigned)");
    e = find_expl(&d, "role", "Astronaut");
    assert_string_equal(sget(e, "result"), "ignored");
    assert_string_equal(sget(e, "why"), "attribute roles names "
                        "\"Astronaut\", which is not a defined role");
    pg_decision_clear(&d);
    /* a single string works too */
    decide(ps, "{\"roles\": \"Teller\"}", "corebank", "2026-11-27", &d);
    ASSERT_VALUES(d.entitlements, "account-read,balance-update");
    pg_decision_clear(&d);
    pg_policy_free(ps);
}

/* Load-time reference errors, each with file, JSON path and reason. */
static const struct {
    const char *text;
    const char *expect;   /* after "<file>: " */
} bad_refs[] = {
    {"{\"roles\": [{\"id\": \"A\", \"type\": \"business\", \"includes\": "
     "[\"B\"]}, {\"id\": \"B\", \"type\": \"business\", \"includes\": "
     "[\"C\"]}, {\"id\": \"C\", \"type\": \"business\", \"includes\": "
     "[\"A\"]}]}",
     "$.roles[2].includes[0]: role include cycle: A -> B -> C -> A"},
    {"{\"roles\": [{\"id\": \"t\", \"type\": \"technical\", \"includes\": "
     "[\"t\"]}]}",
     "$.roles[0].includes[0]: role include cycle: t -> t"},
    {"{\"roles\": [{\"id\": \"A\", \"type\": \"business\", \"includes\": "
     "[\"nope\"]}]}",
     "$.roles[0].includes[0]: undefined role \"nope\""},
    {"{\"policies\": [{\"id\": \"p\", \"kind\": \"role\", \"who\": {\"all\": "
     "[]}, \"roles\": [\"ghost\"]}]}",
     "$.policies[0].roles[0]: undefined role \"ghost\""},
    {"{\"roles\": [{\"id\": \"t\", \"type\": \"technical\"}], \"policies\": "
     "[{\"id\": \"p\", \"kind\": \"role\", \"who\": {\"all\": []}, "
     "\"roles\": [\"t\"]}]}",
     "$.policies[0].roles[0]: role \"t\" is technical; only business roles "
     "can be assigned"},
    {"{\"policies\": [{\"id\": \"s\", \"kind\": \"sod\", \"conflict\": "
     "[{\"role\": \"x\"}, {\"role\": \"y\"}], \"action\": \"detect\"}]}",
     "$.policies[0].conflict[0].role: undefined role \"x\""},
    {"{\"roles\": [{\"id\": \"B\", \"type\": \"business\", \"includes\": "
     "[\"t\"]}, {\"id\": \"t\", \"type\": \"technical\", \"includes\": "
     "[\"B\"]}]}",
     "$.roles[1].includes[0]: technical role \"t\" cannot include business "
     "role \"B\""},
    {"{\"roles\": [{\"id\": \"B\", \"type\": \"business\", \"grants\": "
     "[{\"target\": \"x\"}], \"includes\": [\"B\"]}]}",
     "$.roles[0].grants: a business role grants through technical roles"},
    {"{\"roles\": [{\"id\": \"B\", \"type\": \"business\"}]}",
     "$.roles[0].includes: a business role must include at least one role"},
    {"{\"roles\": [{\"id\": \"B\", \"type\": \"boss\"}]}",
     "$.roles[0].type: must be \"business\" or \"technical\""},
    {"{\"roles\": [{\"id\": \"t\", \"type\": \"technical\"}, {\"id\": \"t\", "
     "\"type\": \"technical\"}]}",
     "$.roles[1].id: duplicate role id \"t\""},
    {"{\"roles\": [{\"id\": \"t\", \"type\": \"technical\", \"perms\": 1}]}",
     "$.roles[0].perms: unknown field"},
    {"{\"roles\": {}}", "$.roles: must be an array"},
};

static void
test_role_reference_errors(void **state)
{
    char path[PATH_MAX], want[1024];
    pg_policy_set_t *ps;
    pg_err_t err;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad_refs) / sizeof(bad_refs[0]); i++) {
        ps = (pg_policy_set_t *)1;
        if (load_text(bad_refs[i].text, &ps, &err, path, sizeof(path)) !=
            PG_ERR_CONFIG) {
            fail_msg("bad ref %zu loaded", i);
        }
        assert_null(ps);
        fmt(want, sizeof(want), "%s: %s", path, bad_refs[i].expect);
        if (strncmp(err.msg, want, strlen(want)) != 0) {
            fail_msg("bad ref %zu:\n  want prefix: %s\n  got:         %s", i,
                     want, err.msg);
        }
    }
}

/* Roles defined in one file may be used in another; errors name the file
 * that holds the reference. */
static void
test_roles_across_files(void **state)
{
    char a[PATH_MAX], b[PATH_MAX], want[1024];
    char *files[3] = {a, b, NULL};
    pg_policy_set_t *ps = NULL;
    pg_decision_t d;
    pg_err_t err;
    json_t *attrs;

    (void)state;
    write_tmp("roles.json", "{\"roles\": [{\"id\": \"Ops\", \"type\": "
              "\"business\", \"includes\": [\"shell\"]}, {\"id\": \"shell\", "
              "\"type\": \"technical\", \"grants\": [{\"target\": \"demoapp\", "
              "\"entitlements\": [{\"type\": \"group\", \"value\": "
              "\"shell\"}]}]}]}", a, sizeof(a));
    write_tmp("use.json", "{\"policies\": [{\"id\": \"ops\", \"kind\": "
              "\"role\", \"who\": {\"group\": \"ops\"}, \"roles\": "
              "[\"Ops\"]}]}", b, sizeof(b));
    assert_int_equal(pg_policy_load(files, NULL, &ps, &err), PG_OK);
    attrs = json_pack("{s:[s]}", "groups", "ops");
    assert_int_equal(pg_policy_decide(ps, attrs, "demoapp", &d), PG_OK);
    ASSERT_VALUES(d.entitlements, "shell");
    pg_decision_clear(&d);
    json_decref(attrs);
    pg_policy_free(ps);

    /* without the roles file the reference is undefined, in use.json */
    files[0] = b;
    files[1] = NULL;
    ps = (pg_policy_set_t *)1;
    assert_int_equal(pg_policy_load(files, NULL, &ps, &err), PG_ERR_CONFIG);
    assert_null(ps);
    fmt(want, sizeof(want), "%s: $.policies[0].roles[0]: undefined role "
        "\"Ops\"", b);
    assert_string_equal(err.msg, want);
}

/* ---- segregation of duties ------------------------------------------- */

static void
test_sod_prevent_roles(void **state)
{
    pg_policy_set_t *ps = load_examples("sod.json", NULL);
    pg_decision_t d;
    json_t *f, *e;

    (void)state;
    /* one of the two roles: fine */
    decide(ps, "{\"uid\": \"u1\", \"roles\": [\"Payables Clerk\"]}", "erp",
           "2026-11-27", &d);
    ASSERT_VALUES(d.entitlements, "vendor-create");
    assert_int_equal(json_array_size(d.sod_findings), 0);
    assert_string_equal(sget(find_expl(&d, "policy",
                                       "sod-vendor-vs-payment"), "result"),
                        "no_conflict");
    pg_decision_clear(&d);

    /* both: prevent removes both business roles and their entitlements */
    decide(ps, "{\"uid\": \"u1\", \"roles\": [\"Payables Clerk\", "
           "\"Payments Approver\"]}", "erp", "2026-11-27", &d);
    assert_int_equal(json_array_size(d.entitlements), 0);
    assert_int_equal(json_array_size(d.sod_findings), 1);
    f = json_array_get(d.sod_findings, 0);
    assert_string_equal(sget(f, "policy"), "sod-vendor-vs-payment");
    assert_string_equal(sget(f, "action"), "prevent");
    assert_string_equal(sget(f, "result"), "prevented");
    assert_int_equal(json_array_size(json_object_get(f, "items")), 2);
    assert_null(json_object_get(f, "exemption"));
    e = find_expl(&d, "policy", "sod-vendor-vs-payment");
    assert_string_equal(sget(e, "result"), "prevented");
    assert_non_null(strstr(sget(e, "why"), "business role \"Payables "
                           "Clerk\" removed"));
    assert_string_equal(sget(find_expl(&d, "role", "Payments Approver"),
                             "result"), "denied");
    assert_int_equal(json_array_size(d.roles), 2);
    assert_string_equal(sget(json_array_get(d.roles, 0), "state"),
                        "denied");
    pg_decision_clear(&d);
    pg_policy_free(ps);
}

static void
test_sod_exemption_and_expiry(void **state)
{
    pg_policy_set_t *ps = load_examples("sod.json", NULL);
    pg_decision_t d;
    json_t *f, *x;

    (void)state;
    /* the cfo is exempted until 2027-06-30 (inclusive) */
    decide(ps, "{\"uid\": \"cfo\", \"roles\": [\"Payables Clerk\", "
           "\"Payments Approver\"]}", "erp", "2027-06-30", &d);
    ASSERT_VALUES(d.entitlements, "payment-approve,vendor-create");
    f = json_array_get(d.sod_findings, 0);
    assert_string_equal(sget(f, "result"), "exempted");
    x = json_object_get(f, "exemption");
    assert_string_equal(sget(x, "owner"), "audit-committee");
    assert_string_equal(sget(x, "expires"), "2027-06-30");
    assert_string_equal(sget(x, "reason"), "interim cover while hiring");
    assert_non_null(strstr(sget(find_expl(&d, "policy",
                                          "sod-vendor-vs-payment"), "why"),
                           "exempted (owner \"audit-committee\", expires "
                           "2027-06-30)"));
    pg_decision_clear(&d);

    /* the day after, the exemption has expired: prevented, and reported */
    decide(ps, "{\"uid\": \"cfo\", \"roles\": [\"Payables Clerk\", "
           "\"Payments Approver\"]}", "erp", "2027-07-01", &d);
    assert_int_equal(json_array_size(d.entitlements), 0);
    f = json_array_get(d.sod_findings, 0);
    assert_string_equal(sget(f, "result"), "prevented");
    assert_null(json_object_get(f, "exemption"));
    x = json_object_get(f, "expired_exemption");
    assert_string_equal(sget(x, "expires"), "2027-06-30");
    assert_non_null(strstr(sget(find_expl(&d, "policy",
                                          "sod-vendor-vs-payment"), "why"),
                           "exemption by \"audit-committee\" expired on "
                           "2027-06-30"));
    pg_decision_clear(&d);

    /* old-cfo's exemption expired in 2025 */
    decide(ps, "{\"uid\": \"old-cfo\", \"roles\": [\"Payables Clerk\", "
           "\"Payments Approver\"]}", "erp", "2026-11-27", &d);
    assert_int_equal(json_array_size(d.entitlements), 0);
    assert_string_equal(sget(json_array_get(d.sod_findings, 0), "result"),
                        "prevented");
    pg_decision_clear(&d);
    pg_policy_free(ps);
}

static void
test_sod_detect(void **state)
{
    pg_policy_set_t *ps = load_examples("sod.json", NULL);
    pg_decision_t d;
    json_t *f;

    (void)state;
    /* journal-post (finance birthright) + audit-all: allowed, reported */
    decide(ps, "{\"department\": \"Finance\", \"groups\": "
           "[\"internal-audit\"]}", "erp", "2026-11-27", &d);
    ASSERT_VALUES(d.entitlements, "audit-all,journal-post,ledger-read");
    assert_int_equal(json_array_size(d.denied), 0);
    assert_int_equal(json_array_size(d.sod_findings), 1);
    f = json_array_get(d.sod_findings, 0);
    assert_string_equal(sget(f, "policy"), "sod-post-and-audit");
    assert_string_equal(sget(f, "action"), "detect");
    assert_string_equal(sget(f, "result"), "detected");
    assert_string_equal(sget(find_expl(&d, "policy", "sod-post-and-audit"),
                             "result"), "detected");
    pg_decision_clear(&d);
    /* only one of them: no finding */
    decide(ps, "{\"department\": \"Finance\"}", "erp", "2026-11-27", &d);
    assert_int_equal(json_array_size(d.sod_findings), 0);
    assert_string_equal(sget(find_expl(&d, "policy", "sod-post-and-audit"),
                             "result"), "no_conflict");
    pg_decision_clear(&d);
    pg_policy_free(ps);
}

/* prevent on granted entitlements withholds all of the combination. */
static void
test_sod_prevent_granted_entitlements(void **state)
{
    static const char text[] =
        "{\"policies\": ["
        "{\"id\": \"a\", \"kind\": \"birthright\", \"who\": {\"all\": []},"
        " \"grants\": [{\"target\": \"t\", \"entitlements\": ["
        "{\"type\": \"g\", \"value\": \"x\"}, {\"type\": \"g\", \"value\": "
        "\"keep\"}]}]},"
        "{\"id\": \"b\", \"kind\": \"birthright\", \"who\": {\"attr\": "
        "\"dept\", \"eq\": \"ops\"}, \"grants\": [{\"target\": \"u\", "
        "\"entitlements\": [{\"type\": \"g\", \"value\": \"y\"}]}]},"
        "{\"id\": \"s\", \"kind\": \"sod\", \"who\": {\"not\": {\"attr\": "
        "\"uid\", \"eq\": \"root\"}}, \"conflict\": ["
        "{\"target\": \"t\", \"type\": \"g\", \"value\": \"x\"},"
        "{\"target\": \"u\", \"type\": \"g\", \"value\": \"y\"}],"
        " \"action\": \"prevent\"}]}";
    char path[PATH_MAX];
    pg_policy_set_t *ps;
    pg_decision_t d;
    pg_err_t err;
    json_t *e;

    (void)state;
    assert_int_equal(load_text(text, &ps, &err, path, sizeof(path)), PG_OK);
    /* the conflict spans two targets: seen from either one */
    decide(ps, "{\"dept\": \"ops\"}", "t", "2026-11-27", &d);
    ASSERT_VALUES(d.entitlements, "keep");
    assert_int_equal(d.has_account, 1);
    ASSERT_VALUES(d.denied, "x");
    e = json_array_get(d.denied, 0);
    assert_string_equal(sget(e, "denied_by"), "s");
    assert_string_equal(sget(e, "policy"), "a");
    assert_string_equal(sget(e, "reason"),
                        "toxic combination (segregation of duties)");
    pg_decision_clear(&d);
    decide(ps, "{\"dept\": \"ops\"}", "u", "2026-11-27", &d);
    assert_int_equal(json_array_size(d.entitlements), 0);
    ASSERT_VALUES(d.denied, "y");
    pg_decision_clear(&d);
    /* the rule does not apply to root: both granted */
    decide(ps, "{\"dept\": \"ops\", \"uid\": \"root\"}", NULL, "2026-11-27",
           &d);
    ASSERT_VALUES(d.entitlements, "keep,x,y");
    assert_int_equal(json_array_size(d.sod_findings), 0);
    assert_string_equal(sget(find_expl(&d, "policy", "s"), "result"),
                        "no_match");
    pg_decision_clear(&d);
    pg_policy_free(ps);
}

/* ---- approval -------------------------------------------------------- */

static void
test_approval_items(void **state)
{
    pg_policy_set_t *ps = load_examples("approval.json", NULL);
    pg_decision_t d;
    json_t *e, *a;

    (void)state;
    /* Finance with a manager: payroll-read and treasury pending */
    decide(ps, "{\"department\": \"Finance\", \"manager\": \"mgr7\"}", "erp",
           "2026-11-27", &d);
    assert_int_equal(json_array_size(d.entitlements), 0);
    assert_int_equal(d.has_account, 0);   /* pending grants no account */
    ASSERT_VALUES(d.pending_approval, "payroll-read,treasury");
    e = find_item(d.pending_approval, "erp", "payroll-read");
    assert_string_equal(sget(e, "policy"), "finance-payroll-access");
    a = json_object_get(e, "approvers");
    assert_string_equal(sget(a, "kind"), "manager");
    assert_string_equal(sget(a, "attr"), "manager");
    assert_string_equal(sget(a, "id"), "mgr7");
    assert_int_equal(json_integer_value(json_object_get(e, "expires_s")),
                     604800);
    assert_string_equal(sget(e, "expires_at"), "2026-12-04T00:00:00Z");
    e = find_item(d.pending_approval, "erp", "treasury");
    a = json_object_get(e, "approvers");
    assert_string_equal(sget(a, "kind"), "users");
    assert_int_equal(json_array_size(json_object_get(a, "users")), 2);
    assert_string_equal(json_string_value(json_array_get(
                            json_object_get(a, "users"), 1)), "treasurer");
    assert_string_equal(sget(find_expl(&d, "policy",
                                       "finance-payroll-access"), "result"),
                        "match");
    pg_decision_clear(&d);

    /* group approvers, request expiry of one day */
    decide(ps, "{\"groups\": [\"dba\"]}", "erp", "2026-11-27", &d);
    e = find_item(d.pending_approval, "erp", "db-admin");
    assert_non_null(e);
    a = json_object_get(e, "approvers");
    assert_string_equal(sget(a, "kind"), "group");
    assert_string_equal(sget(a, "group"), "change-board");
    assert_string_equal(sget(e, "expires_at"), "2026-11-28T00:00:00Z");
    pg_decision_clear(&d);

    /* no manager attribute: the request cannot be routed, it is denied */
    decide(ps, "{\"department\": \"Finance\", \"manager\": \"\"}", "erp",
           "2026-11-27", &d);
    ASSERT_VALUES(d.pending_approval, "treasury");
    ASSERT_VALUES(d.denied, "payroll-read");
    assert_string_equal(sget(json_array_get(d.denied, 0), "reason"),
                        "no approver: manager attribute missing");
    assert_non_null(strstr(sget(find_expl(&d, "policy",
                                          "finance-payroll-access"), "why"),
                           "no approver: attribute \"manager\" is missing"));
    pg_decision_clear(&d);
    pg_policy_free(ps);
}

/* A pending request that would complete a toxic combination is refused;
 * what is already granted stays. An entitlement already granted is not
 * requested again. */
static void
test_approval_and_sod(void **state)
{
    static const char text[] =
        "{\"policies\": ["
        "{\"id\": \"base\", \"kind\": \"birthright\", \"who\": {\"all\": []},"
        " \"grants\": [{\"target\": \"erp\", \"entitlements\": ["
        "{\"type\": \"role\", \"value\": \"treasury\"}]}]},"
        "{\"id\": \"ask\", \"kind\": \"approval\", \"who\": {\"all\": []},"
        " \"grants\": [{\"target\": \"erp\", \"entitlements\": ["
        "{\"type\": \"role\", \"value\": \"treasury\"}]}],"
        " \"approvers\": {\"users\": [\"cfo\"]}}]}";
    pg_policy_set_t *ps = load_examples("approval.json", NULL);
    char path[PATH_MAX];
    pg_decision_t d;
    pg_err_t err;
    json_t *e;

    (void)state;
    decide(ps, "{\"department\": \"Finance\", \"title\": \"Accountant\", "
           "\"manager\": \"m\"}", "erp", "2026-11-27", &d);
    ASSERT_VALUES(d.entitlements, "journal-post");
    ASSERT_VALUES(d.pending_approval, "treasury");
    ASSERT_VALUES(d.denied, "payroll-read");
    e = json_array_get(d.denied, 0);
    assert_string_equal(sget(e, "denied_by"), "sod-payroll-vs-journal");
    assert_string_equal(sget(e, "reason"),
                        "request would complete a toxic combination");
    assert_string_equal(sget(json_array_get(d.sod_findings, 0), "result"),
                        "prevented");
    pg_decision_clear(&d);
    pg_policy_free(ps);

    assert_int_equal(load_text(text, &ps, &err, path, sizeof(path)), PG_OK);
    decide(ps, "{}", "erp", "2026-11-27", &d);
    ASSERT_VALUES(d.entitlements, "treasury");
    assert_int_equal(json_array_size(d.pending_approval), 0);
    assert_non_null(strstr(sget(find_expl(&d, "policy", "ask"), "why"),
                           "\"treasury\" already granted by \"base\""));
    pg_decision_clear(&d);
    pg_policy_free(ps);
}

/* ---- jit ------------------------------------------------------------- */

static void
test_jit_scope_and_lifetime(void **state)
{
    pg_policy_set_t *ps = load_examples("jit.json", NULL);
    pg_decision_t d;
    json_t *e;

    (void)state;
    /* reaching the ops console: prod-shell is granted for an hour */
    decide(ps, "{\"department\": \"engineering\"}", "opsconsole",
           "2026-11-27", &d);
    ASSERT_VALUES(d.entitlements, "prod-shell,viewers");
    e = find_item(d.entitlements, "opsconsole", "prod-shell");
    assert_int_equal(json_integer_value(json_object_get(e,
                                                        "jit_lifetime_s")),
                     3600);
    assert_null(json_object_get(find_item(d.entitlements, "opsconsole",
                                          "viewers"), "jit_lifetime_s"));
    assert_int_equal(json_array_size(d.jit), 1);
    e = json_array_get(d.jit, 0);
    assert_string_equal(sget(e, "value"), "prod-shell");
    assert_int_equal(json_integer_value(json_object_get(e, "lifetime_s")),
                     3600);
    pg_decision_clear(&d);

    /* reaching the wiki: prod-shell is not granted (deferred) */
    decide(ps, "{\"department\": \"engineering\"}", "wiki", "2026-11-27",
           &d);
    ASSERT_VALUES(d.entitlements, "ENG");
    assert_int_equal(json_array_size(d.jit), 0);
    assert_string_equal(sget(find_expl(&d, "policy", "engineers"), "why"),
                        "department \"engineering\" == \"engineering\"; jit "
                        "\"prod-shell\" deferred until \"opsconsole\" is "
                        "accessed");
    pg_decision_clear(&d);

    /* admin view (every target): jit is never granted */
    decide(ps, "{\"department\": \"engineering\"}", NULL, "2026-11-27", &d);
    ASSERT_VALUES(d.entitlements, "ENG,viewers");
    assert_int_equal(d.has_account, 0);
    assert_int_equal(json_array_size(d.jit), 0);
    pg_decision_clear(&d);
    pg_policy_free(ps);
}

/* ---- load errors of the new kinds ------------------------------------ */

#define POL(body) "{\"policies\": [{\"id\": \"p\", " body "}]}"
#define GR "\"grants\": [{\"target\": \"t\", \"entitlements\": " \
           "[{\"type\": \"g\", \"value\": \"v\"}]}]"
#define WHO "\"who\": {\"all\": []}"
#define CONF "\"conflict\": [{\"role\": \"a\"}, {\"role\": \"b\"}]"

static const struct {
    const char *text;
    const char *expect;
} bad_kinds[] = {
    {POL("\"kind\": \"role\", " WHO ", " GR),
     "$.policies[0].grants: unknown field"},
    {POL("\"kind\": \"role\", " WHO), "$.policies[0].roles: missing "
     "required field"},
    {POL("\"kind\": \"role\", " WHO ", \"roles\": []"),
     "$.policies[0].roles: must hold 1 to 256 role ids"},
    {POL("\"kind\": \"sod\", \"action\": \"prevent\""),
     "$.policies[0].conflict: missing required field"},
    {POL("\"kind\": \"sod\", \"conflict\": [{\"role\": \"a\"}], "
         "\"action\": \"prevent\""),
     "$.policies[0].conflict: must be an array of 2 to 16"},
    {POL("\"kind\": \"sod\", " CONF ", \"action\": \"block\""),
     "$.policies[0].action: must be \"prevent\" or \"detect\""},
    {POL("\"kind\": \"sod\", " CONF),
     "$.policies[0].action: missing required field"},
    {POL("\"kind\": \"sod\", \"conflict\": [{\"role\": \"a\"}, "
         "{\"target\": \"t\", \"type\": \"g\", \"value\": \"v\"}], "
         "\"action\": \"detect\""),
     "$.policies[0].conflict[1]: a conflict lists only roles or only "
     "entitlements"},
    {POL("\"kind\": \"sod\", \"conflict\": [{\"role\": \"a\", \"x\": 1}, "
         "{\"role\": \"b\"}], \"action\": \"detect\""),
     "$.policies[0].conflict[0].x: unknown field"},
    {POL("\"kind\": \"sod\", \"conflict\": [{\"target\": \"t\", \"type\": "
         "\"g\"}, {\"role\": \"b\"}], \"action\": \"detect\""),
     "$.policies[0].conflict[0].value: missing required field"},
    {POL("\"kind\": \"sod\", " CONF ", \"action\": \"detect\", "
         "\"exemptions\": [{\"who\": {\"all\": []}, \"expires\": "
         "\"2027-01-01\"}]"),
     "$.policies[0].exemptions[0].owner: missing required field"},
    {POL("\"kind\": \"sod\", " CONF ", \"action\": \"detect\", "
         "\"exemptions\": [{\"who\": {\"all\": []}, \"owner\": \"o\", "
         "\"expires\": \"2027-02-29\"}]"),
     "$.policies[0].exemptions[0].expires: must be a date \"YYYY-MM-DD\""},
    {POL("\"kind\": \"sod\", " CONF ", \"action\": \"detect\", "
         "\"exemptions\": [{\"owner\": \"o\", \"expires\": \"2027-01-01\"}]"),
     "$.policies[0].exemptions[0].who: missing required field"},
    {POL("\"kind\": \"approval\", " WHO ", " GR),
     "$.policies[0].approvers: missing required field"},
    {POL("\"kind\": \"approval\", " WHO ", " GR ", \"approvers\": {}"),
     "$.policies[0].approvers: needs exactly one of manager_attr, group, "
     "users (has 0)"},
    {POL("\"kind\": \"approval\", " WHO ", " GR ", \"approvers\": "
         "{\"group\": \"a\", \"users\": [\"b\"]}"),
     "$.policies[0].approvers: needs exactly one of manager_attr, group, "
     "users (has 2)"},
    {POL("\"kind\": \"approval\", " WHO ", " GR ", \"approvers\": "
         "{\"users\": []}"),
     "$.policies[0].approvers.users: must not be empty"},
    {POL("\"kind\": \"approval\", " WHO ", " GR ", \"approvers\": "
         "{\"team\": \"x\"}"),
     "$.policies[0].approvers.team: unknown field"},
    {POL("\"kind\": \"approval\", " WHO ", " GR ", \"approvers\": "
         "{\"group\": \"x\"}, \"request_expires_s\": 60"),
     "$.policies[0].request_expires_s: "},
    {POL("\"kind\": \"birthright\", " WHO ", \"grants\": [{\"target\": "
         "\"t\", \"entitlements\": [{\"type\": \"g\", \"value\": \"v\", "
         "\"jit\": {\"scope\": \"global\", \"lifetime_s\": 600}}]}]"),
     "$.policies[0].grants[0].entitlements[0].jit.scope: must be \"app\""},
    {POL("\"kind\": \"birthright\", " WHO ", \"grants\": [{\"target\": "
         "\"t\", \"entitlements\": [{\"type\": \"g\", \"value\": \"v\", "
         "\"jit\": {\"scope\": \"app\"}}]}]"),
     "$.policies[0].grants[0].entitlements[0].jit.lifetime_s: missing "
     "required field"},
    {POL("\"kind\": \"birthright\", " WHO ", \"grants\": [{\"target\": "
         "\"t\", \"entitlements\": [{\"type\": \"g\", \"value\": \"v\", "
         "\"jit\": {\"scope\": \"app\", \"lifetime_s\": 5}}]}]"),
     "$.policies[0].grants[0].entitlements[0].jit.lifetime_s: "},
    {POL("\"kind\": \"birthright\", " WHO ", \"grants\": [{\"target\": "
         "\"t\", \"entitlements\": [{\"type\": \"g\", \"value\": \"v\", "
         "\"jit\": true}]}]"),
     "$.policies[0].grants[0].entitlements[0].jit: must be an object"},
    {POL("\"kind\": \"birthright\", \"who\": {\"attr\": \"d\", \"lt\": "
         "\"soon\"}, " GR),
     "$.policies[0].who.lt: must be a number, a date \"YYYY-MM-DD\" or "
     "\"today\""},
    {POL("\"kind\": \"birthright\", \"who\": {\"attr\": \"d\", \"ge\": "
         "\"2026-13-01\"}, " GR),
     "$.policies[0].who.ge: must be a number, a date"},
    {POL("\"kind\": \"birthright\", \"who\": {\"attr\": \"d\", \"ge\": "
         "[1]}, " GR),
     "$.policies[0].who.ge: must be a number"},
    {POL("\"kind\": \"birthright\", \"who\": {\"attr\": \"d\", \"ge\": 1, "
         "\"lt\": 5}, " GR),
     "$.policies[0].who: needs exactly one operator of eq, in, exists, "
     "prefix, regex, lt, le, gt, ge (has 2)"},
};

static void
test_kind_load_errors(void **state)
{
    char path[PATH_MAX], want[1024];
    pg_policy_set_t *ps;
    pg_err_t err;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad_kinds) / sizeof(bad_kinds[0]); i++) {
        ps = (pg_policy_set_t *)1;
        if (load_text(bad_kinds[i].text, &ps, &err, path, sizeof(path)) !=
            PG_ERR_CONFIG) {
            fail_msg("bad kind %zu loaded", i);
        }
        assert_null(ps);
        fmt(want, sizeof(want), "%s: %s", path, bad_kinds[i].expect);
        if (strncmp(err.msg, want, strlen(want)) != 0) {
            fail_msg("bad kind %zu:\n  want prefix: %s\n  got:         %s",
                     i, want, err.msg);
        }
    }
}

/* SoD entitlement targets are checked against the configuration. */
static void
test_sod_targets_checked(void **state)
{
    static char t_erp[] = "erp";
    pg_target_cfg_t tg[1];
    pg_config_t cfg;
    char path[PATH_MAX], want[1024];
    char *files[2] = {path, NULL};
    pg_policy_set_t *ps;
    pg_err_t err;

    (void)state;
    memset(tg, 0, sizeof(tg));
    memset(&cfg, 0, sizeof(cfg));
    tg[0].name = t_erp;
    cfg.targets = tg;
    cfg.ntargets = 1;
    write_tmp("t.json", POL("\"kind\": \"sod\", \"conflict\": ["
              "{\"target\": \"erp\", \"type\": \"g\", \"value\": \"a\"}, "
              "{\"target\": \"crm\", \"type\": \"g\", \"value\": \"b\"}], "
              "\"action\": \"detect\""), path, sizeof(path));
    ps = (pg_policy_set_t *)1;
    assert_int_equal(pg_policy_load(files, &cfg, &ps, &err), PG_ERR_CONFIG);
    fmt(want, sizeof(want), "%s: $.policies[0].conflict[1].target: unknown "
        "target \"crm\"", path);
    assert_string_equal(err.msg, want);
    assert_int_equal(pg_policy_load(files, NULL, &ps, &err), PG_OK);
    pg_policy_free(ps);
}

/* ---- every example together; odd identities never crash -------------- */

static void
test_all_examples_together(void **state)
{
    static const char *const names[] = {"roles.json", "sod.json",
                                        "approval.json", "jit.json",
                                        "move.json", "contractors.json"};
    static const char *const idents[] = {
        "{}", "{\"roles\": null}", "{\"roles\": {}}", "{\"groups\": 5}",
        "{\"grade\": \"x\", \"contract_end\": 7, \"manager\": 1}",
        "{\"title\": \"Teller\", \"department\": \"Finance\", \"roles\": "
        "[\"Payables Clerk\", \"Payments Approver\", \"Branch Manager\"]}",
    };
    char paths[7][PATH_MAX];
    char *files[8];
    pg_policy_set_t *ps = NULL;
    pg_decision_t d;
    pg_err_t err;
    json_t *attrs;
    size_t i, j;

    (void)state;
    for (i = 0; i < 6; i++) {
        fmt(paths[i], sizeof(paths[i]), "%s/policies/examples/%s", g_root,
            names[i]);
        files[i] = paths[i];
    }
    fmt(paths[6], sizeof(paths[6]), "%s/policies/birthright.json", g_root);
    files[6] = paths[6];
    files[7] = NULL;
    if (pg_policy_load(files, NULL, &ps, &err) != PG_OK) {
        fail_msg("%s", err.msg);
    }
    assert_int_equal(pg_policy_role_count(ps), 12);
    for (i = 0; i < sizeof(idents) / sizeof(idents[0]); i++) {
        attrs = json_loads(idents[i], 0, NULL);
        assert_non_null(attrs);
        for (j = 0; j < 3; j++) {
            static const char *const tg[] = {"erp", "corebank", NULL};
            assert_int_equal(pg_policy_decide_at(ps, attrs, tg[j],
                                                 day("2026-11-27"), &d),
                             PG_OK);
            /* one explanation entry per policy at least */
            assert_true(json_array_size(d.explanation) >=
                        pg_policy_count(ps));
            pg_decision_clear(&d);
        }
        json_decref(attrs);
    }
    pg_policy_free(ps);
}

/* ---- move semantics -------------------------------------------------- */

static void
test_move_accounting_to_strategy(void **state)
{
    pg_policy_set_t *ps = load_examples("move.json", NULL);
    pg_decision_t before, after;
    pg_move_t m;
    json_t *prev_copy;

    (void)state;
    decide(ps, "{\"employee_type\": \"employee\", \"department\": "
           "\"Accounting\"}", "demoapp", "2026-11-27", &before);
    ASSERT_VALUES(before.entitlements, "intranet,invoices,ledger,staff");
    decide(ps, "{\"employee_type\": \"employee\", \"department\": "
           "\"Corporate Strategy\"}", "demoapp", "2026-11-27", &after);
    ASSERT_VALUES(after.entitlements, "intranet,staff,strategy-docs");
    prev_copy = json_deep_copy(before.entitlements);

    assert_int_equal(pg_policy_move(before.entitlements, after.entitlements,
                                    &m), PG_OK);
    ASSERT_VALUES(m.add, "strategy-docs");
    ASSERT_VALUES(m.remove, "invoices,ledger");
    ASSERT_VALUES(m.keep, "intranet,staff");   /* birthright stays */
    /* keep carries the new justification */
    assert_string_equal(sget(json_array_get(m.keep, 0), "policy"),
                        "all-employees");
    /* pure: the inputs are unchanged */
    assert_true(json_equal(prev_copy, before.entitlements));
    pg_move_clear(&m);
    pg_move_clear(&m);   /* idempotent */

    /* leaving: everything goes; joining: everything comes */
    {
        json_t *none = json_array();
        assert_int_equal(pg_policy_move(before.entitlements, none, &m),
                         PG_OK);
        ASSERT_VALUES(m.remove, "intranet,invoices,ledger,staff");
        assert_int_equal(json_array_size(m.add), 0);
        assert_int_equal(json_array_size(m.keep), 0);
        pg_move_clear(&m);
        assert_int_equal(pg_policy_move(none, after.entitlements, &m),
                         PG_OK);
        ASSERT_VALUES(m.add, "intranet,staff,strategy-docs");
        pg_move_clear(&m);
        json_decref(none);
    }
    json_decref(prev_copy);
    pg_decision_clear(&before);
    pg_decision_clear(&after);
    pg_policy_free(ps);
}

static void
test_move_edge_cases(void **state)
{
    json_t *prev, *next;
    pg_move_t m;

    (void)state;
    /* type matters; target matters when both have one; malformed elements
     * are skipped; duplicates collapse */
    prev = json_loads("[{\"type\": \"group\", \"value\": \"a\"},"
                      " {\"type\": \"role\", \"value\": \"b\"},"
                      " {\"target\": \"x\", \"type\": \"g\", \"value\": "
                      "\"c\"}, 7, {\"value\": \"d\"}]", 0, NULL);
    next = json_loads("[{\"type\": \"group\", \"value\": \"a\"},"
                      " {\"type\": \"group\", \"value\": \"a\"},"
                      " {\"type\": \"group\", \"value\": \"b\"},"
                      " {\"target\": \"y\", \"type\": \"g\", \"value\": "
                      "\"c\"}, null]", 0, NULL);
    assert_non_null(prev);
    assert_non_null(next);
    assert_int_equal(pg_policy_move(prev, next, &m), PG_OK);
    ASSERT_VALUES(m.keep, "a");
    ASSERT_VALUES(m.add, "b,c");
    ASSERT_VALUES(m.remove, "b,c");
    assert_string_equal(sget(json_array_get(m.add, 1), "target"), "y");
    assert_string_equal(sget(json_array_get(m.remove, 0), "type"), "role");
    pg_move_clear(&m);
    /* arguments */
    assert_int_equal(pg_policy_move(NULL, next, &m), PG_ERR_INVALID);
    assert_null(m.add);
    assert_int_equal(pg_policy_move(prev, json_object_get(next, "x"), &m),
                     PG_ERR_INVALID);
    assert_int_equal(pg_policy_move(prev, next, NULL), PG_ERR_INVALID);
    json_decref(prev);
    json_decref(next);
}

/* The decision API: arguments and the all-targets view. */
static void
test_decide_at_arguments(void **state)
{
    pg_policy_set_t *ps = load_examples("roles.json", NULL);
    pg_decision_t d;
    json_t *attrs = json_pack("{s:s}", "title", "Teller");

    (void)state;
    assert_int_equal(pg_policy_decide_at(ps, NULL, "x", 0, &d),
                     PG_ERR_INVALID);
    assert_null(d.entitlements);
    assert_int_equal(pg_policy_decide_at(ps, attrs, "x", 0, NULL),
                     PG_ERR_INVALID);
    /* target NULL is accepted by decide_at, refused by decide */
    assert_int_equal(pg_policy_decide(ps, attrs, NULL, &d), PG_ERR_INVALID);
    assert_int_equal(pg_policy_decide_at(ps, attrs, NULL, day("2026-11-27"),
                                         &d), PG_OK);
    ASSERT_VALUES(d.entitlements, "BRANCH,account-read,balance-update");
    assert_int_equal(d.has_account, 0);
    assert_non_null(find_item(d.entitlements, "wiki", "BRANCH"));
    pg_decision_clear(&d);
    /* no set: nothing, but every array exists */
    assert_int_equal(pg_policy_decide_at(NULL, attrs, "x", 0, &d), PG_OK);
    assert_int_equal(json_array_size(d.entitlements), 0);
    assert_non_null(d.denied);
    assert_non_null(d.pending_approval);
    assert_non_null(d.sod_findings);
    assert_non_null(d.jit);
    assert_non_null(d.roles);
    pg_decision_clear(&d);
    pg_decision_clear(&d);
    json_decref(attrs);
    pg_policy_free(ps);
}


/* ---- the allocation-free path agrees with the JSON path -------------- */

/* Items of state st as a sorted "target/type/value" list. */
static void
fast_list(const pg_item_t *it, size_t n, pg_item_state_t st, json_t *out)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (it[i].state == st) {
            assert_int_equal(json_array_append_new(out, json_pack(
                "{s:s, s:s, s:s, s:s}", "target", it[i].target, "type",
                it[i].type, "value", it[i].value, "policy", it[i].policy)),
                0);
        }
    }
}

/* The same fields of a decision array. */
static json_t *
json_list(const json_t *arr)
{
    json_t *out = json_array(), *e;
    size_t i;

    json_array_foreach(arr, i, e) {
        assert_int_equal(json_array_append_new(out, json_pack(
            "{s:O, s:O, s:O, s:O}", "target", json_object_get(e, "target"),
            "type", json_object_get(e, "type"), "value",
            json_object_get(e, "value"), "policy",
            json_object_get(e, "policy"))), 0);
    }
    return out;
}

static void
test_fast_path_agrees(void **state)
{
    static const char *const names[] = {"roles.json", "sod.json",
                                        "approval.json", "jit.json",
                                        "move.json", "contractors.json"};
    static const char *const idents[] = {
        "{}",
        "{\"title\": \"Teller\", \"department\": \"Finance\"}",
        "{\"title\": \"Branch Manager\", \"grade\": 9, \"roles\": "
        "[\"Loan Officer\"]}",
        "{\"uid\": \"cfo\", \"roles\": [\"Payables Clerk\", "
        "\"Payments Approver\"]}",
        "{\"uid\": \"u\", \"roles\": [\"Payables Clerk\", "
        "\"Payments Approver\"]}",
        "{\"department\": \"Finance\", \"title\": \"Accountant\", "
        "\"manager\": \"m\", \"groups\": [\"internal-audit\", \"dba\"]}",
        "{\"department\": \"Finance\"}",
        "{\"department\": \"engineering\", \"employee_type\": \"employee\"}",
        "{\"employee_type\": \"employee\", \"department\": \"Accounting\"}",
        "{\"employee_type\": \"contractor\", \"contract_start\": "
        "\"2026-01-01\", \"contract_end\": \"2026-12-31\", \"clearance\": 3}",
    };
    static const char *const targets[] = {"erp", "corebank", "wiki",
                                          "opsconsole", "demoapp"};
    char paths[7][PATH_MAX];
    char *files[8];
    pg_policy_set_t *ps = NULL;
    pg_policy_scratch_t *sc = NULL, *other = NULL;
    pg_item_t items[64];
    pg_fast_decision_t fd;
    pg_decision_t d;
    pg_err_t err;
    size_t i, j, k;
    json_t *attrs;

    (void)state;
    for (i = 0; i < 6; i++) {
        fmt(paths[i], sizeof(paths[i]), "%s/policies/examples/%s", g_root,
            names[i]);
        files[i] = paths[i];
    }
    fmt(paths[6], sizeof(paths[6]), "%s/policies/birthright.json", g_root);
    files[6] = paths[6];
    files[7] = NULL;
    assert_int_equal(pg_policy_load(files, NULL, &ps, &err), PG_OK);
    assert_int_equal(pg_policy_scratch_new(ps, &sc), PG_OK);
    for (i = 0; i < sizeof(idents) / sizeof(idents[0]); i++) {
        attrs = json_loads(idents[i], 0, NULL);
        assert_non_null(attrs);
        for (j = 0; j < sizeof(targets) / sizeof(targets[0]); j++) {
            static const pg_item_state_t sts[] = {PG_ITEM_GRANTED,
                                                  PG_ITEM_PENDING,
                                                  PG_ITEM_DENIED};
            const json_t *arrs[3];
            time_t now = day("2026-11-27");
            assert_int_equal(pg_policy_decide_at(ps, attrs, targets[j], now,
                                                 &d), PG_OK);
            assert_int_equal(pg_policy_decide_fast(ps, sc, attrs, targets[j],
                                                   now, items, 64, &fd),
                             PG_OK);
            assert_int_equal(fd.has_account, d.has_account);
            assert_int_equal(fd.nfindings, json_array_size(d.sod_findings));
            arrs[0] = d.entitlements;
            arrs[1] = d.pending_approval;
            arrs[2] = d.denied;
            for (k = 0; k < 3; k++) {
                json_t *a = json_array(), *b = json_list(arrs[k]);
                fast_list(items, fd.nitems, sts[k], a);
                if (!json_equal(a, b)) {
                    char *x = json_dumps(a, JSON_COMPACT);
                    char *y = json_dumps(b, JSON_COMPACT);
                    fail_msg("ident %zu target %s state %zu:\n fast %s\n "
                             "json %s", i, targets[j], k, x, y);
                }
                json_decref(a);
                json_decref(b);
            }
            /* jit lifetimes agree too */
            for (k = 0; k < fd.nitems; k++) {
                json_t *e = find_item(d.entitlements, items[k].target,
                                      items[k].value);
                if (items[k].jit_lifetime_s > 0) {
                    assert_int_equal(json_integer_value(json_object_get(
                        e, "jit_lifetime_s")), items[k].jit_lifetime_s);
                }
            }
            pg_decision_clear(&d);
        }
        json_decref(attrs);
    }
    /* arguments, capacity, scratch of another set */
    attrs = json_loads("{\"title\": \"Teller\"}", 0, NULL);
    assert_int_equal(pg_policy_decide_fast(ps, sc, attrs, "corebank", 0,
                                           items, 1, &fd), PG_ERR_TOO_LARGE);
    assert_int_equal(pg_policy_decide_fast(ps, sc, attrs, "corebank", 0,
                                           items, 2, &fd), PG_OK);
    assert_int_equal(fd.nitems, 2);
    assert_string_equal(items[0].via_role, "check-and-update-balances");
    assert_int_equal(pg_policy_decide_fast(ps, sc, attrs, NULL, 0, items, 2,
                                           &fd), PG_ERR_INVALID);
    assert_int_equal(pg_policy_decide_fast(ps, sc, NULL, "x", 0, items, 2,
                                           &fd), PG_ERR_INVALID);
    {
        pg_policy_set_t *ps2 = load_examples("jit.json", NULL);
        assert_int_equal(pg_policy_scratch_new(ps2, &other), PG_OK);
        assert_int_equal(pg_policy_decide_fast(ps, other, attrs, "x", 0,
                                               items, 2, &fd),
                         PG_ERR_INVALID);
        pg_policy_scratch_free(other);
        pg_policy_free(ps2);
    }
    assert_int_equal(pg_policy_scratch_new(NULL, &other), PG_ERR_INVALID);
    json_decref(attrs);
    pg_policy_scratch_free(sc);
    pg_policy_free(ps);
}

/* Compare the two paths for one identity and target; returns granted n. */
static size_t
compare_paths(const pg_policy_set_t *ps, pg_policy_scratch_t *sc,
              const char *attrs_json, const char *target)
{
    static const pg_item_state_t sts[] = {PG_ITEM_GRANTED, PG_ITEM_PENDING,
                                          PG_ITEM_DENIED};
    pg_item_t items[64];
    pg_fast_decision_t fd;
    pg_decision_t d;
    const json_t *arrs[3];
    json_t *attrs = json_loads(attrs_json, 0, NULL);
    size_t k, n;

    assert_non_null(attrs);
    assert_int_equal(pg_policy_decide_at(ps, attrs, target, 0, &d), PG_OK);
    assert_int_equal(pg_policy_decide_fast(ps, sc, attrs, target, 0, items,
                                           64, &fd), PG_OK);
    assert_int_equal(fd.has_account, d.has_account);
    arrs[0] = d.entitlements;
    arrs[1] = d.pending_approval;
    arrs[2] = d.denied;
    for (k = 0; k < 3; k++) {
        json_t *a = json_array(), *b = json_list(arrs[k]);
        fast_list(items, fd.nitems, sts[k], a);
        if (!json_equal(a, b)) {
            fail_msg("%s in %s: paths differ", attrs_json, target);
        }
        json_decref(a);
        json_decref(b);
    }
    n = json_array_size(d.entitlements);
    pg_decision_clear(&d);
    json_decref(attrs);
    return n;
}

/* The who-index: keys inside nested all, in-lists, groups, array values;
 * conditions without a key (any, not, prefix) are always evaluated. */
static void
test_fast_index_shapes(void **state)
{
    static const char text[] =
        "{\"policies\": ["
        "{\"id\": \"nested\", \"kind\": \"birthright\", \"who\": {\"all\": ["
        "{\"attr\": \"grade\", \"gt\": 1}, {\"all\": [{\"attr\": \"d\", "
        "\"eq\": \"x\"}]}]}, \"grants\": [{\"target\": \"t\", "
        "\"entitlements\": [{\"type\": \"g\", \"value\": \"nested\"}]}]},"
        "{\"id\": \"inlist\", \"kind\": \"birthright\", \"who\": {\"attr\": "
        "\"d\", \"in\": [\"y\", \"x\", \"y\"]}, \"grants\": [{\"target\": "
        "\"t\", \"entitlements\": [{\"type\": \"g\", \"value\": "
        "\"inlist\"}]}]},"
        "{\"id\": \"grp\", \"kind\": \"birthright\", \"who\": {\"group\": "
        "\"ops\"}, \"grants\": [{\"target\": \"t\", \"entitlements\": "
        "[{\"type\": \"g\", \"value\": \"grp\"}]}]},"
        "{\"id\": \"anyof\", \"kind\": \"birthright\", \"who\": {\"any\": ["
        "{\"attr\": \"d\", \"eq\": \"z\"}, {\"group\": \"ops\"}]}, "
        "\"grants\": [{\"target\": \"t\", \"entitlements\": [{\"type\": "
        "\"g\", \"value\": \"anyof\"}]}]},"
        "{\"id\": \"neg\", \"kind\": \"birthright\", \"who\": {\"not\": "
        "{\"attr\": \"d\", \"eq\": \"x\"}}, \"grants\": [{\"target\": \"t\", "
        "\"entitlements\": [{\"type\": \"g\", \"value\": \"neg\"}]}]},"
        "{\"id\": \"emptyeq\", \"kind\": \"birthright\", \"who\": {\"attr\": "
        "\"d\", \"eq\": \"\"}, \"grants\": [{\"target\": \"t\", "
        "\"entitlements\": [{\"type\": \"g\", \"value\": \"emptyeq\"}]}]}"
        "]}";
    static const struct {
        const char *attrs;
        size_t granted;
    } cases[] = {
        {"{}", 1},                                  /* neg */
        {"{\"d\": \"x\"}", 1},                      /* inlist */
        {"{\"d\": \"x\", \"grade\": 2}", 2},        /* nested, inlist */
        {"{\"d\": [\"q\", \"x\"], \"grade\": \"5\"}", 2},
        {"{\"d\": \"y\"}", 2},                      /* inlist, neg */
        {"{\"d\": \"\"}", 2},                       /* emptyeq, neg */
        {"{\"groups\": \"ops\"}", 3},               /* grp, anyof, neg */
        {"{\"groups\": [\"a\", \"ops\"], \"d\": \"z\"}", 3},
        {"{\"groups\": [\"opsx\"], \"d\": \"xx\"}", 1},
        {"{\"d\": 5, \"groups\": {\"ops\": 1}}", 1},
    };
    char path[PATH_MAX];
    pg_policy_set_t *ps;
    pg_policy_scratch_t *sc;
    pg_err_t err;
    size_t i, n;

    (void)state;
    assert_int_equal(load_text(text, &ps, &err, path, sizeof(path)), PG_OK);
    assert_int_equal(pg_policy_scratch_new(ps, &sc), PG_OK);
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        n = compare_paths(ps, sc, cases[i].attrs, "t");
        if (n != cases[i].granted) {
            fail_msg("case %zu (%s): %zu granted, want %zu", i,
                     cases[i].attrs, n, cases[i].granted);
        }
    }
    pg_policy_scratch_free(sc);
    pg_policy_free(ps);
}

/* ---- differential test: indexed fast path vs exhaustive evaluation ---- */

static unsigned long long g_rng;

/* xorshift64*: deterministic, seeded per run (the seed is printed). */
static unsigned
rnd(unsigned n)
{
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (unsigned)((g_rng * 2685821657736338717ull) >> 33) % n;
}

static const char *const D_ATTRS[] = {"dept", "title", "cc", "email",
                                      "grade", "start"};

/* A string value of attribute a (small domains, so rules match often). */
static json_t *
rnd_str(unsigned a)
{
    char b[32];
    int r;

    switch (a) {
    case 0:
        r = snprintf(b, sizeof(b), "d%u", rnd(6));
        break;
    case 1:
        r = snprintf(b, sizeof(b), "t%u", rnd(5));
        break;
    case 2:
        /* also values equal to a prefix key ("cc-", "cc-1") */
        r = rnd(4) == 0 ? snprintf(b, sizeof(b), "cc-%.*s", (int)rnd(2), "1")
                        : snprintf(b, sizeof(b), "cc-%u%u", rnd(3), rnd(3));
        break;
    default:
        r = snprintf(b, sizeof(b), "u%u@corp%u.example", rnd(4), rnd(2));
        break;
    }
    assert_true(r > 0 && (size_t)r < sizeof(b));
    return json_string(b);
}

/* A random condition of depth at most d. */
static json_t *
rnd_cond(unsigned d)
{
    unsigned k = rnd(d > 0 ? 11 : 8), a = rnd(4), i, n;
    json_t *c, *arr;
    char g[16];
    int r;

    switch (k) {
    case 0:
        return json_pack("{s:s, s:o}", "attr", D_ATTRS[a], "eq", rnd_str(a));
    case 1:
        arr = json_array();
        n = 1 + rnd(3);
        for (i = 0; i < n; i++) {
            json_array_append_new(arr, rnd_str(a));
        }
        return json_pack("{s:s, s:o}", "attr", D_ATTRS[a], "in", arr);
    case 2:
        r = snprintf(g, sizeof(g), "g%u", rnd(5));
        assert_true(r > 0);
        return json_pack("{s:s}", "group", g);
    case 3:
        return json_pack("{s:s, s:s}", "attr", "cc", "prefix",
                         rnd(2) ? "cc-1" : "cc-");
    case 4:
        return json_pack("{s:s, s:s}", "attr", "email", "regex",
                         rnd(2) ? "^u[0-2]@corp1\\.example$"
                                : "u3@(corp0|corp1)");
    case 5:
        return json_pack("{s:s, s:i}", "attr", "grade",
                         rnd(2) ? "ge" : "lt", (int)rnd(10));
    case 6:
        return json_pack("{s:s, s:s}", "attr", "start", "le", "today");
    case 7:
        return json_pack("{s:s, s:b}", "attr", D_ATTRS[a], "exists",
                         (int)rnd(2));
    case 8:
        return json_pack("{s:o}", "not", rnd_cond(d - 1));
    default:
        arr = json_array();
        n = (k == 10 ? 1 : 0) + rnd(3);
        for (i = 0; i < n; i++) {
            json_array_append_new(arr, rnd_cond(d - 1));
        }
        c = json_pack("{s:o}", k == 9 ? "all" : "any", arr);
        if (k == 10 && n == 0) {
            json_decref(c);
            return rnd_cond(0);
        }
        return c;
    }
}

/* A grant of 1-2 entitlements in one of 3 targets. */
static json_t *
rnd_grants(void)
{
    json_t *ents = json_array();
    unsigned i, n = 1 + rnd(2);
    char t[16], v[16];
    int r;

    r = snprintf(t, sizeof(t), "app%u", rnd(3));
    assert_true(r > 0);
    for (i = 0; i < n; i++) {
        r = snprintf(v, sizeof(v), "e%u", rnd(12));
        assert_true(r > 0);
        if (rnd(6) == 0) {
            json_array_append_new(ents, json_pack(
                "{s:s, s:s, s:{s:s, s:i}}", "type", "group", "value", v,
                "jit", "scope", "app", "lifetime_s", 3600));
        } else {
            json_array_append_new(ents, json_pack("{s:s, s:s}", "type",
                                                  "group", "value", v));
        }
    }
    return json_pack("[{s:s, s:o}]", "target", t, "entitlements", ents);
}

/* A random policy set: 12 technical and 8 business roles, n policies. */
static json_t *
rnd_set(unsigned n)
{
    json_t *roles = json_array(), *pols = json_array(), *accts;
    char id[32], a[32], b[32];
    unsigned i;
    int r;

    for (i = 0; i < 12; i++) {
        json_t *inc = json_array();
        r = snprintf(id, sizeof(id), "T%u", i);
        assert_true(r > 0);
        if (i + 1 < 12 && rnd(2)) {
            r = snprintf(a, sizeof(a), "T%u", i + 1 + rnd(11 - i));
            json_array_append_new(inc, json_string(a));
        }
        json_array_append_new(roles, json_pack(
            "{s:s, s:s, s:o, s:o}", "id", id, "type", "technical",
            "includes", inc, "grants", rnd_grants()));
    }
    for (i = 0; i < 8; i++) {
        json_t *inc = json_array();
        r = snprintf(id, sizeof(id), "B%u", i);
        r = snprintf(a, sizeof(a), "T%u", rnd(12));
        json_array_append_new(inc, json_string(a));
        if (i + 1 < 8 && rnd(2)) {
            r = snprintf(b, sizeof(b), "B%u", i + 1 + rnd(7 - i));
            json_array_append_new(inc, json_string(b));
        }
        assert_true(r > 0);
        json_array_append_new(roles, json_pack(
            "{s:s, s:s, s:o}", "id", id, "type", "business", "includes",
            inc));
    }
    for (i = 0; i < n; i++) {
        unsigned k = rnd(10);
        r = snprintf(id, sizeof(id), "p%u", i);
        assert_true(r > 0);
        if (k < 5) {
            json_array_append_new(pols, json_pack(
                "{s:s, s:s, s:o, s:o}", "id", id, "kind", "birthright",
                "who", rnd_cond(3), "grants", rnd_grants()));
        } else if (k < 7) {
            r = snprintf(a, sizeof(a), "B%u", rnd(8));
            json_array_append_new(pols, json_pack(
                "{s:s, s:s, s:o, s:[s]}", "id", id, "kind", "role", "who",
                rnd_cond(3), "roles", a));
        } else if (k < 8) {
            json_t *ap = rnd(2) ? json_pack("{s:s}", "manager_attr", "mgr")
                                : json_pack("{s:s}", "group", "approvers");
            json_array_append_new(pols, json_pack(
                "{s:s, s:s, s:o, s:o, s:o}", "id", id, "kind", "approval",
                "who", rnd_cond(2), "grants", rnd_grants(), "approvers", ap));
        } else if (k < 9) {
            r = snprintf(a, sizeof(a), "%c%u", rnd(2) ? 'B' : 'T', rnd(8));
            r = snprintf(b, sizeof(b), "T%u", rnd(12));
            assert_true(r > 0);
            json_array_append_new(pols, json_pack(
                "{s:s, s:s, s:[{s:s}, {s:s}], s:s}", "id", id, "kind", "sod",
                "conflict", "role", a, "role", b, "action",
                rnd(2) ? "prevent" : "detect"));
        } else {
            r = snprintf(a, sizeof(a), "e%u", rnd(12));
            r = snprintf(b, sizeof(b), "e%u", rnd(12));
            assert_true(r > 0);
            json_array_append_new(pols, json_pack(
                "{s:s, s:s, s:o, s:[{s:s, s:s, s:s}, {s:s, s:s, s:s}], "
                "s:s}", "id", id, "kind", "sod", "who", rnd_cond(1),
                "conflict", "target", rnd(2) ? "app0" : "app1", "type",
                "group", "value", a, "target", "app2", "type", "group",
                "value", b, "action", rnd(2) ? "prevent" : "detect"));
        }
    }
    accts = json_pack("[{s:s, s:[s], s:{s:{s:s}}}]", "target", "app1",
                      "required", "mail", "attributes", "mail", "attr",
                      "email");
    return json_pack("{s:o, s:o, s:o}", "roles", roles, "policies", pols,
                     "accounts", accts);
}

/* A random identity over the attributes the rules test. */
static json_t *
rnd_ident(void)
{
    json_t *o = json_object(), *g = json_array();
    unsigned a, i, n;
    char b[16];
    int r;

    for (a = 0; a < 4; a++) {
        if (rnd(5) == 0) {
            continue;   /* missing */
        }
        if (rnd(6) == 0) {
            json_t *arr = json_array();
            json_array_append_new(arr, rnd_str(a));
            json_array_append_new(arr, rnd_str(a));
            json_object_set_new(o, D_ATTRS[a], arr);
        } else {
            json_object_set_new(o, D_ATTRS[a], rnd_str(a));
        }
    }
    if (rnd(4) != 0) {
        json_object_set_new(o, "grade", rnd(3) ? json_integer(rnd(10))
                                               : json_string("5"));
    }
    if (rnd(2)) {
        json_object_set_new(o, "start", json_string(rnd(2) ? "2026-01-01"
                                                           : "2027-06-01"));
    }
    n = rnd(4);
    for (i = 0; i < n; i++) {
        r = snprintf(b, sizeof(b), "g%u", rnd(6));
        assert_true(r > 0);
        json_array_append_new(g, json_string(b));
    }
    json_object_set_new(o, "groups", g);
    if (rnd(3) == 0) {
        r = snprintf(b, sizeof(b), "B%u", rnd(9));   /* B8 is undefined */
        json_object_set_new(o, "roles", json_pack("[s]", b));
    }
    if (rnd(2)) {
        json_object_set_new(o, "mgr", json_string("boss"));
    }
    return o;
}

/*
 * Differential test: over randomized policy sets and identities, the
 * indexed, allocation-free path (who-index, prefix keys, regex literal
 * prefilter, skipped key conditions, role relevance per target) decides
 * exactly as the full path, which evaluates every policy. An index bug
 * shows up as a difference in items (and their order), has_account or the
 * number of SoD findings.
 */
static void
test_fast_differential(void **state)
{
    static const char *const targets[] = {"app0", "app1", "app2", "none"};
    char path[PATH_MAX];
    unsigned set, id, t;
    unsigned long long seed = (unsigned long long)time(NULL);
    size_t checked = 0, granted = 0;

    (void)state;
    if (getenv("PG_DIFF_SEED") != NULL) {
        seed = strtoull(getenv("PG_DIFF_SEED"), NULL, 10);
    }
    print_message("differential seed %llu (PG_DIFF_SEED)\n", seed);
    g_rng = seed * 2654435761ull + 1;
    for (set = 0; set < 12; set++) {
        json_t *doc = rnd_set(40 + rnd(120));
        pg_policy_set_t *ps = NULL;
        pg_policy_scratch_t *sc = NULL;
        pg_err_t err;
        char *files[2] = {path, NULL};

        fmt(path, sizeof(path), "%s/diff.json", g_tmp);
        assert_int_equal(json_dump_file(doc, path, JSON_COMPACT), 0);
        json_decref(doc);
        if (pg_policy_load(files, NULL, &ps, &err) != PG_OK) {
            fail_msg("seed %llu set %u: %s", seed, set, err.msg);
        }
        assert_int_equal(pg_policy_scratch_new(ps, &sc), PG_OK);
        for (id = 0; id < 60; id++) {
            json_t *attrs = rnd_ident();
            for (t = 0; t < 4; t++) {
                static const pg_item_state_t sts[] = {PG_ITEM_GRANTED,
                                                      PG_ITEM_PENDING,
                                                      PG_ITEM_DENIED};
                pg_item_t items[128];
                pg_fast_decision_t fd;
                pg_decision_t d;
                const json_t *arrs[3];
                time_t now = day("2026-11-27");
                size_t k;
                assert_int_equal(pg_policy_decide_at(ps, attrs, targets[t],
                                                     now, &d), PG_OK);
                assert_int_equal(pg_policy_decide_fast(ps, sc, attrs,
                                                       targets[t], now,
                                                       items, 128, &fd),
                                 PG_OK);
                arrs[0] = d.entitlements;
                arrs[1] = d.pending_approval;
                arrs[2] = d.denied;
                for (k = 0; k < 3; k++) {
                    json_t *a = json_array(), *b = json_list(arrs[k]);
                    fast_list(items, fd.nitems, sts[k], a);
                    if (!json_equal(a, b) || fd.has_account != d.has_account
                        || fd.nfindings != json_array_size(d.sod_findings)) {
                        char *x = json_dumps(a, JSON_COMPACT);
                        char *y = json_dumps(b, JSON_COMPACT);
                        char *z = json_dumps(attrs, JSON_COMPACT);
                        fail_msg("seed %llu set %u target %s identity %s:\n"
                                 " fast %s (account %d, findings %zu)\n"
                                 " full %s (account %d, findings %zu)",
                                 seed, set, targets[t], z, x, fd.has_account,
                                 fd.nfindings, y, d.has_account,
                                 json_array_size(d.sod_findings));
                    }
                    json_decref(a);
                    json_decref(b);
                }
                granted += json_array_size(d.entitlements);
                checked++;
                pg_decision_clear(&d);
            }
            json_decref(attrs);
        }
        pg_policy_scratch_free(sc);
        pg_policy_free(ps);
    }
    assert_int_equal(checked, 12 * 60 * 4);
    /* the random sets do grant things (the comparison is not vacuous) */
    assert_true(granted > checked / 2);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_numeric_comparisons),
        cmocka_unit_test(test_date_comparisons),
        cmocka_unit_test(test_roles_by_rule),
        cmocka_unit_test(test_roles_explicit),
        cmocka_unit_test(test_role_reference_errors),
        cmocka_unit_test(test_roles_across_files),
        cmocka_unit_test(test_sod_prevent_roles),
        cmocka_unit_test(test_sod_exemption_and_expiry),
        cmocka_unit_test(test_sod_detect),
        cmocka_unit_test(test_sod_prevent_granted_entitlements),
        cmocka_unit_test(test_approval_items),
        cmocka_unit_test(test_approval_and_sod),
        cmocka_unit_test(test_jit_scope_and_lifetime),
        cmocka_unit_test(test_kind_load_errors),
        cmocka_unit_test(test_sod_targets_checked),
        cmocka_unit_test(test_all_examples_together),
        cmocka_unit_test(test_move_accounting_to_strategy),
        cmocka_unit_test(test_move_edge_cases),
        cmocka_unit_test(test_decide_at_arguments),
        cmocka_unit_test(test_fast_path_agrees),
        cmocka_unit_test(test_fast_index_shapes),
        cmocka_unit_test(test_fast_differential),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
