/*
 * Unit tests: policy loading and the birthright engine (src/policy).
 *
 * Operator semantics are tested with small inline policy files written to
 * a private temp dir; the realistic files in tests/unit/fixtures/policy/
 * cover multi-file loading, dedup across policies and explanations.
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
#include <unistd.h>
#include <cmocka.h>
#include "provgate/config.h"
#include "provgate/policy.h"

static char g_fix[PATH_MAX];   /* tests/unit/fixtures/policy */
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

static void
find_fixtures(void)
{
    char cand[PATH_MAX], src[PATH_MAX], exe[PATH_MAX];
    const char *env = getenv("PG_TEST_FIXTURES");
    ssize_t n;

    if (env != NULL) {
        fmt(cand, sizeof(cand), "%s/policy", env);
    } else {
        fmt(src, sizeof(src), "%s", __FILE__);
        *strrchr(src, '/') = '\0';
        fmt(cand, sizeof(cand), "%s/fixtures/policy", src);
        if (!is_dir(cand)) {
            n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
            assert_true(n > 0);
            exe[n] = '\0';
            *strrchr(exe, '/') = '\0';
            fmt(cand, sizeof(cand), "%s/../../tests/unit/fixtures/policy", exe);
        }
    }
    assert_non_null(realpath(cand, g_fix));
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
    fmt(g_tmp, sizeof(g_tmp), "/tmp/pg_test_policy.XXXXXX");
    if (mkdtemp(g_tmp) == NULL) {
        return -1;
    }
    find_fixtures();
    return 0;
}

static int
teardown(void **state)
{
    (void)state;
    return nftw(g_tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Write text to <tmp>/<name>; path receives the full path. */
static void
write_tmp(const char *name, const char *text, char *path, size_t n)
{
    FILE *f;

    fmt(path, n, "%s/%s", g_tmp, name);
    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* A fake configuration holding just target names (for reference checks). */
static char t_demo[] = "demoapp", t_wiki[] = "wiki";
static pg_target_cfg_t g_targets[2];
static pg_config_t g_cfg;

static const pg_config_t *
fake_cfg(void)
{
    memset(g_targets, 0, sizeof(g_targets));
    memset(&g_cfg, 0, sizeof(g_cfg));
    g_targets[0].name = t_demo;
    g_targets[1].name = t_wiki;
    g_cfg.targets = g_targets;
    g_cfg.ntargets = 2;
    return &g_cfg;
}

/* Load one inline file of policies; fails the test on error. */
static pg_policy_set_t *
load_text(const char *text)
{
    char path[PATH_MAX];
    char *files[2];
    pg_policy_set_t *ps = NULL;
    pg_err_t err;

    write_tmp("inline.json", text, path, sizeof(path));
    files[0] = path;
    files[1] = NULL;
    if (pg_policy_load(files, fake_cfg(), &ps, &err) != PG_OK) {
        fail_msg("load: %s", err.msg);
    }
    return ps;
}

/* One birthright policy "p" for demoapp granting group "g" when who. */
static pg_policy_set_t *
load_who(const char *who)
{
    char text[4096];

    fmt(text, sizeof(text),
        "{\"policies\": [{\"id\": \"p\", \"kind\": \"birthright\", "
        "\"who\": %s, \"grants\": [{\"target\": \"demoapp\", "
        "\"entitlements\": [{\"type\": \"group\", \"value\": \"g\"}]}]}]}",
        who);
    return load_text(text);
}

/* Decide for attrs (JSON text) and return match (1/0); why gets the text. */
static int
decide_who(const pg_policy_set_t *ps, const char *attrs_json, char *why,
           size_t whyn)
{
    json_error_t je;
    json_t *attrs = json_loads(attrs_json, 0, &je);
    pg_decision_t d;
    const json_t *e;
    int match;

    if (attrs == NULL) {
        fail_msg("bad attrs %s: %s", attrs_json, je.text);
    }
    assert_int_equal(pg_policy_decide(ps, attrs, "demoapp", &d), PG_OK);
    assert_int_equal(json_array_size(d.explanation), pg_policy_count(ps));
    e = json_array_get(d.explanation, 0);
    assert_string_equal(json_string_value(json_object_get(e, "policy")), "p");
    assert_string_equal(json_string_value(json_object_get(e, "kind")),
                        "birthright");
    match = strcmp(json_string_value(json_object_get(e, "result")),
                   "match") == 0;
    if (!match) {
        assert_string_equal(json_string_value(json_object_get(e, "result")),
                            "no_match");
    }
    /* the decision agrees with the explanation */
    assert_int_equal(d.has_account, match);
    assert_int_equal(json_array_size(d.entitlements), match ? 1 : 0);
    fmt(why, whyn, "%s", json_string_value(json_object_get(e, "why")));
    pg_decision_clear(&d);
    json_decref(attrs);
    return match;
}

/* Expect a result and an exact explanation. */
static void
expect(const pg_policy_set_t *ps, const char *attrs, int want,
       const char *want_why)
{
    char why[1024];
    int got = decide_who(ps, attrs, why, sizeof(why));

    if (got != want || strcmp(why, want_why) != 0) {
        fail_msg("attrs %s:\n  want %s \"%s\"\n  got  %s \"%s\"", attrs,
                 want ? "match" : "no_match", want_why,
                 got ? "match" : "no_match", why);
    }
}

/* ---- operators ------------------------------------------------------- */

static void
test_eq(void **state)
{
    pg_policy_set_t *ps = load_who("{\"attr\": \"department\", \"eq\": \"eng\"}");

    (void)state;
    expect(ps, "{\"department\": \"eng\"}", 1, "department \"eng\" == \"eng\"");
    expect(ps, "{\"department\": \"sales\"}", 0,
           "department \"sales\" != \"eng\"");
    expect(ps, "{\"department\": \"Eng\"}", 0,
           "department \"Eng\" != \"eng\"");              /* case-sensitive */
    expect(ps, "{}", 0, "department is missing");
    expect(ps, "{\"department\": null}", 0, "department is missing");
    /* arrays match if any element matches */
    expect(ps, "{\"department\": [\"ops\", \"eng\"]}", 1,
           "department [\"ops\",\"eng\"] == \"eng\"");
    expect(ps, "{\"department\": [\"ops\"]}", 0,
           "department [\"ops\"] != \"eng\"");
    expect(ps, "{\"department\": []}", 0, "department [] != \"eng\"");
    /* only strings: no coercion of numbers, booleans or objects */
    expect(ps, "{\"department\": 7}", 0, "department 7 != \"eng\"");
    expect(ps, "{\"department\": {\"eng\": 1}}", 0,
           "department {\"eng\":1} != \"eng\"");
    expect(ps, "{\"department\": [1, {\"a\": \"eng\"}, [\"eng\"]]}", 0,
           "department [1,{\"a\":\"eng\"},[\"eng\"]] != \"eng\"");
    pg_policy_free(ps);

    /* eq "" matches an empty string only */
    ps = load_who("{\"attr\": \"x\", \"eq\": \"\"}");
    expect(ps, "{\"x\": \"\"}", 1, "x \"\" == \"\"");
    expect(ps, "{\"x\": \"a\"}", 0, "x \"a\" != \"\"");
    pg_policy_free(ps);
}

static void
test_in(void **state)
{
    pg_policy_set_t *ps = load_who("{\"attr\": \"department\", \"in\": [\"eng\"]}");

    (void)state;
    expect(ps, "{\"department\": \"sales\"}", 0,
           "department \"sales\" not in [eng]");
    expect(ps, "{\"department\": \"eng\"}", 1, "department \"eng\" in [eng]");
    expect(ps, "{\"dept\": \"eng\"}", 0, "department is missing");
    pg_policy_free(ps);

    ps = load_who("{\"attr\": \"d\", \"in\": [\"a\", \"b\", \"c\"]}");
    expect(ps, "{\"d\": \"c\"}", 1, "d \"c\" in [a, b, c]");
    expect(ps, "{\"d\": [\"x\", \"b\"]}", 1, "d [\"x\",\"b\"] in [a, b, c]");
    expect(ps, "{\"d\": [\"x\", \"y\"]}", 0,
           "d [\"x\",\"y\"] not in [a, b, c]");
    expect(ps, "{\"d\": \"ab\"}", 0, "d \"ab\" not in [a, b, c]");
    pg_policy_free(ps);
}

static void
test_exists(void **state)
{
    pg_policy_set_t *ps = load_who("{\"attr\": \"phone\", \"exists\": true}");

    (void)state;
    expect(ps, "{\"phone\": \"+1 555\"}", 1, "phone exists");
    expect(ps, "{\"phone\": 5}", 1, "phone exists");
    expect(ps, "{\"phone\": [\"a\"]}", 1, "phone exists");
    expect(ps, "{}", 0, "phone is missing or empty");
    expect(ps, "{\"phone\": null}", 0, "phone is missing or empty");
    expect(ps, "{\"phone\": \"\"}", 0, "phone is missing or empty");
    expect(ps, "{\"phone\": []}", 0, "phone is missing or empty");
    pg_policy_free(ps);

    ps = load_who("{\"attr\": \"manager\", \"exists\": false}");
    expect(ps, "{}", 1, "manager is missing or empty");
    expect(ps, "{\"manager\": \"bob\"}", 0, "manager exists");
    pg_policy_free(ps);
}

static void
test_prefix(void **state)
{
    pg_policy_set_t *ps = load_who("{\"attr\": \"title\", \"prefix\": \"VP \"}");

    (void)state;
    expect(ps, "{\"title\": \"VP Sales\"}", 1,
           "title \"VP Sales\" starts with \"VP \"");
    expect(ps, "{\"title\": \"SVP Sales\"}", 0,
           "title \"SVP Sales\" does not start with \"VP \"");
    expect(ps, "{\"title\": \"VP\"}", 0,
           "title \"VP\" does not start with \"VP \"");
    expect(ps, "{\"title\": [\"Dir\", \"VP Ops\"]}", 1,
           "title [\"Dir\",\"VP Ops\"] starts with \"VP \"");
    expect(ps, "{}", 0, "title is missing");
    pg_policy_free(ps);
}

static void
test_regex(void **state)
{
    pg_policy_set_t *ps = load_who(
        "{\"attr\": \"email\", \"regex\": \"^[a-z.]+@corp\\\\.example$\"}");

    (void)state;
    expect(ps, "{\"email\": \"ann.lee@corp.example\"}", 1,
           "email \"ann.lee@corp.example\" matches /^[a-z.]+@corp\\.example$/");
    expect(ps, "{\"email\": \"ann@corpXexample\"}", 0,
           "email \"ann@corpXexample\" does not match "
           "/^[a-z.]+@corp\\.example$/");
    expect(ps, "{\"email\": \"x@corp.example.evil\"}", 0,
           "email \"x@corp.example.evil\" does not match "
           "/^[a-z.]+@corp\\.example$/");
    expect(ps, "{\"email\": [\"Bad@x\", \"ok@corp.example\"]}", 1,
           "email [\"Bad@x\",\"ok@corp.example\"] matches "
           "/^[a-z.]+@corp\\.example$/");
    expect(ps, "{}", 0, "email is missing");
    pg_policy_free(ps);

    /* unanchored POSIX ERE finds a substring; alternation works */
    ps = load_who("{\"attr\": \"cc\", \"regex\": \"(DE|AT)-[0-9]{2}\"}");
    expect(ps, "{\"cc\": \"x-AT-12-y\"}", 1,
           "cc \"x-AT-12-y\" matches /(DE|AT)-[0-9]{2}/");
    expect(ps, "{\"cc\": \"FR-12\"}", 0,
           "cc \"FR-12\" does not match /(DE|AT)-[0-9]{2}/");
    pg_policy_free(ps);
}

static void
test_group(void **state)
{
    pg_policy_set_t *ps = load_who("{\"group\": \"staff\"}");

    (void)state;
    expect(ps, "{\"groups\": [\"a\", \"staff\"]}", 1,
           "member of group \"staff\"");
    expect(ps, "{\"groups\": [\"a\", \"Staff\"]}", 0,
           "not a member of group \"staff\"");
    expect(ps, "{\"groups\": []}", 0, "not a member of group \"staff\"");
    expect(ps, "{}", 0, "not a member of group \"staff\"");
    expect(ps, "{\"groups\": {\"staff\": true}}", 0,
           "not a member of group \"staff\"");
    expect(ps, "{\"groups\": [1, null, \"staff\"]}", 1,
           "member of group \"staff\"");
    expect(ps, "{\"staff\": \"staff\"}", 0,
           "not a member of group \"staff\"");
    pg_policy_free(ps);
}

static void
test_all_any_not(void **state)
{
    pg_policy_set_t *ps;

    (void)state;
    ps = load_who("{\"all\": [{\"attr\": \"a\", \"eq\": \"1\"}, "
                  "{\"attr\": \"b\", \"eq\": \"2\"}]}");
    expect(ps, "{\"a\": \"1\", \"b\": \"2\"}", 1,
           "a \"1\" == \"1\" and b \"2\" == \"2\"");
    expect(ps, "{\"a\": \"1\", \"b\": \"3\"}", 0, "b \"3\" != \"2\"");
    expect(ps, "{\"a\": \"0\", \"b\": \"3\"}", 0, "a \"0\" != \"1\"");
    pg_policy_free(ps);

    ps = load_who("{\"any\": [{\"attr\": \"a\", \"eq\": \"1\"}, "
                  "{\"group\": \"g\"}]}");
    expect(ps, "{\"a\": \"0\", \"groups\": [\"g\"]}", 1,
           "member of group \"g\"");
    expect(ps, "{\"a\": \"1\"}", 1, "a \"1\" == \"1\"");
    expect(ps, "{\"a\": \"0\"}", 0,
           "none of any: a \"0\" != \"1\"; not a member of group \"g\"");
    pg_policy_free(ps);

    ps = load_who("{\"not\": {\"attr\": \"type\", \"in\": [\"contractor\"]}}");
    expect(ps, "{\"type\": \"employee\"}", 1,
           "type \"employee\" not in [contractor]");
    expect(ps, "{}", 1, "type is missing");
    expect(ps, "{\"type\": \"contractor\"}", 0,
           "excluded by not: type \"contractor\" in [contractor]");
    pg_policy_free(ps);

    /* everyone */
    ps = load_who("{\"all\": []}");
    expect(ps, "{}", 1, "everyone (empty \"all\")");
    pg_policy_free(ps);

    /* composed: employees of eng or ops, not interns, or any admin */
    ps = load_who(
        "{\"any\": ["
        "  {\"all\": ["
        "    {\"attr\": \"dept\", \"in\": [\"eng\", \"ops\"]},"
        "    {\"not\": {\"attr\": \"title\", \"prefix\": \"Intern\"}}]},"
        "  {\"group\": \"admins\"}]}");
    expect(ps, "{\"dept\": \"ops\", \"title\": \"SRE\"}", 1,
           "dept \"ops\" in [eng, ops] and title \"SRE\" does not start "
           "with \"Intern\"");
    expect(ps, "{\"dept\": \"ops\", \"title\": \"Intern II\"}", 0,
           "none of any: excluded by not: title \"Intern II\" starts with "
           "\"Intern\"; not a member of group \"admins\"");
    expect(ps, "{\"dept\": \"ops\", \"title\": \"Intern\", "
           "\"groups\": [\"admins\"]}", 1, "member of group \"admins\"");
    /* not over a missing attribute */
    expect(ps, "{\"dept\": \"eng\"}", 1,
           "dept \"eng\" in [eng, ops] and title is missing");
    pg_policy_free(ps);

    /* double negation */
    ps = load_who("{\"not\": {\"not\": {\"group\": \"x\"}}}");
    expect(ps, "{\"groups\": [\"x\"]}", 1, "member of group \"x\"");
    expect(ps, "{}", 0, "not a member of group \"x\"");
    pg_policy_free(ps);
}

/* Nesting: 16 levels load, 17 do not. */
static void
test_depth_cap(void **state)
{
    char who[2048], text[4096], path[PATH_MAX], *files[2];
    pg_policy_set_t *ps = NULL;
    pg_err_t err;
    size_t i, o;
    int depth;

    (void)state;
    for (depth = 16; depth <= 17; depth++) {
        o = 0;
        for (i = 1; i < (size_t)depth; i++) {
            memcpy(who + o, "{\"not\": ", 8);
            o += 8;
        }
        memcpy(who + o, "{\"group\": \"g\"}", 14);
        o += 14;
        for (i = 1; i < (size_t)depth; i++) {
            who[o++] = '}';
        }
        who[o] = '\0';
        fmt(text, sizeof(text),
            "{\"policies\": [{\"id\": \"deep\", \"kind\": \"birthright\", "
            "\"who\": %s, \"grants\": [{\"target\": \"demoapp\"}]}]}", who);
        write_tmp("deep.json", text, path, sizeof(path));
        files[0] = path;
        files[1] = NULL;
        if (depth == 16) {
            assert_int_equal(pg_policy_load(files, NULL, &ps, &err), PG_OK);
            assert_int_equal(pg_policy_count(ps), 1);
            pg_policy_free(ps);
        } else {
            assert_int_equal(pg_policy_load(files, NULL, &ps, &err),
                             PG_ERR_CONFIG);
            assert_null(ps);
            assert_non_null(strstr(err.msg, ": $.policies[0].who.not.not.not"
                                   ".not.not.not.not.not.not.not.not.not.not"
                                   ".not.not.not: conditions nested deeper "
                                   "than 16 levels"));
        }
    }
}

/* ---- decisions over the fixture files -------------------------------- */

static pg_policy_set_t *
load_fixtures(void)
{
    char a[PATH_MAX], b[PATH_MAX];
    char *files[3];
    pg_policy_set_t *ps = NULL;
    pg_err_t err;

    fmt(a, sizeof(a), "%s/company.json", g_fix);
    fmt(b, sizeof(b), "%s/more.json", g_fix);
    files[0] = a;
    files[1] = b;
    files[2] = NULL;
    if (pg_policy_load(files, fake_cfg(), &ps, &err) != PG_OK) {
        fail_msg("fixtures: %s", err.msg);
    }
    assert_int_equal(pg_policy_count(ps), 5);
    return ps;
}

static const char *
ent_field(const pg_decision_t *d, size_t i, const char *k)
{
    return json_string_value(json_object_get(json_array_get(d->entitlements,
                                                            i), k));
}

static const char *
ex_field(const pg_decision_t *d, size_t i, const char *k)
{
    return json_string_value(json_object_get(json_array_get(d->explanation,
                                                            i), k));
}

static void
test_dedup_first_policy_wins(void **state)
{
    pg_policy_set_t *ps = load_fixtures();
    json_t *attrs;
    pg_decision_t d;

    (void)state;
    attrs = json_pack("{s:s, s:s, s:s, s:[s], s:s}", "employee_type",
                      "employee", "department", "platform", "email",
                      "ann@corp.example", "groups", "it-admins", "level",
                      "L8");
    assert_int_equal(pg_policy_decide(ps, attrs, "demoapp", &d), PG_OK);
    assert_int_equal(d.has_account, 1);
    /* staff (employees), engineering (engineering; its staff is a dup),
     * admin (admins), leaders (leaders; its admin is a dup) */
    assert_int_equal(json_array_size(d.entitlements), 4);
    assert_string_equal(ent_field(&d, 0, "type"), "group");
    assert_string_equal(ent_field(&d, 0, "value"), "staff");
    assert_string_equal(ent_field(&d, 0, "policy"), "employees");
    assert_string_equal(ent_field(&d, 1, "value"), "engineering");
    assert_string_equal(ent_field(&d, 1, "policy"), "engineering");
    assert_string_equal(ent_field(&d, 2, "type"), "role");
    assert_string_equal(ent_field(&d, 2, "value"), "admin");
    assert_string_equal(ent_field(&d, 2, "policy"), "admins");
    assert_string_equal(ent_field(&d, 3, "value"), "leaders");
    assert_string_equal(ent_field(&d, 3, "policy"), "leaders");
    /* one explanation per policy, in load order */
    assert_int_equal(json_array_size(d.explanation), 5);
    assert_string_equal(ex_field(&d, 0, "policy"), "employees");
    assert_string_equal(ex_field(&d, 1, "policy"), "engineering");
    assert_string_equal(ex_field(&d, 2, "policy"), "admins");
    assert_string_equal(ex_field(&d, 3, "policy"), "corp-mail");
    assert_string_equal(ex_field(&d, 4, "policy"), "leaders");
    assert_string_equal(ex_field(&d, 3, "result"), "match");
    assert_string_equal(ex_field(&d, 3, "why"),
                        "email \"ann@corp.example\" matches "
                        "/^[a-z0-9.]+@corp\\.example$/ and employee_type "
                        "\"employee\" not in [contractor, intern]; grants "
                        "nothing in target \"demoapp\"");
    assert_string_equal(ex_field(&d, 4, "why"), "level \"L8\" in [L7, L8]");
    pg_decision_clear(&d);
    assert_null(d.entitlements);
    assert_null(d.explanation);

    /* same identity, other target: only wiki grants */
    assert_int_equal(pg_policy_decide(ps, attrs, "wiki", &d), PG_OK);
    assert_int_equal(d.has_account, 1);
    assert_int_equal(json_array_size(d.entitlements), 1);
    assert_string_equal(ent_field(&d, 0, "type"), "space");
    assert_string_equal(ent_field(&d, 0, "value"), "ENG");
    assert_string_equal(ex_field(&d, 0, "why"),
                        "employee_type \"employee\" == \"employee\"; grants "
                        "nothing in target \"wiki\"");
    pg_decision_clear(&d);
    json_decref(attrs);
    pg_policy_free(ps);
}

static void
test_same_value_other_type_is_distinct(void **state)
{
    pg_policy_set_t *ps = load_text(
        "{\"policies\": [{\"id\": \"p\", \"kind\": \"birthright\","
        " \"who\": {\"all\": []}, \"grants\": ["
        "  {\"target\": \"demoapp\", \"entitlements\": ["
        "    {\"type\": \"group\", \"value\": \"x\"},"
        "    {\"type\": \"role\", \"value\": \"x\"},"
        "    {\"type\": \"group\", \"value\": \"x\"}]},"
        "  {\"target\": \"demoapp\", \"entitlements\": ["
        "    {\"type\": \"group\", \"value\": \"x\"}]}]}]}");
    json_t *attrs = json_object();
    pg_decision_t d;

    (void)state;
    assert_int_equal(pg_policy_decide(ps, attrs, "demoapp", &d), PG_OK);
    assert_int_equal(json_array_size(d.entitlements), 2);
    assert_string_equal(ent_field(&d, 0, "type"), "group");
    assert_string_equal(ent_field(&d, 1, "type"), "role");
    pg_decision_clear(&d);
    json_decref(attrs);
    pg_policy_free(ps);
}

static void
test_no_match_no_account(void **state)
{
    pg_policy_set_t *ps = load_fixtures();
    json_t *attrs = json_pack("{s:s, s:s}", "employee_type", "contractor",
                              "email", "c@corp.example");
    pg_decision_t d;

    (void)state;
    assert_int_equal(pg_policy_decide(ps, attrs, "demoapp", &d), PG_OK);
    assert_int_equal(d.has_account, 0);
    assert_int_equal(json_array_size(d.entitlements), 0);
    assert_string_equal(ex_field(&d, 0, "result"), "no_match");
    assert_string_equal(ex_field(&d, 0, "why"),
                        "employee_type \"contractor\" != \"employee\"");
    assert_string_equal(ex_field(&d, 1, "why"),
                        "employee_type \"contractor\" != \"employee\"");
    assert_string_equal(ex_field(&d, 2, "why"),
                        "not a member of group \"it-admins\"");
    /* no_match for a policy not granting in this target says so too */
    assert_string_equal(ex_field(&d, 3, "why"),
                        "excluded by not: employee_type \"contractor\" in "
                        "[contractor, intern]; grants nothing in target "
                        "\"demoapp\"");
    assert_string_equal(ex_field(&d, 4, "why"),
                        "none of any: title is missing; level is missing");
    pg_decision_clear(&d);

    /* unknown target: nothing granted, every policy explained */
    assert_int_equal(pg_policy_decide(ps, attrs, "elsewhere", &d), PG_OK);
    assert_int_equal(d.has_account, 0);
    assert_int_equal(json_array_size(d.explanation), 5);
    pg_decision_clear(&d);
    json_decref(attrs);
    pg_policy_free(ps);
}

static void
test_decide_arguments(void **state)
{
    pg_policy_set_t *ps = load_fixtures(), *empty = NULL;
    json_t *arr = json_array(), *obj = json_object();
    pg_decision_t d;
    pg_err_t err;

    (void)state;
    assert_int_equal(pg_policy_decide(ps, arr, "demoapp", &d), PG_ERR_INVALID);
    assert_null(d.entitlements);
    assert_int_equal(pg_policy_decide(ps, NULL, "demoapp", &d),
                     PG_ERR_INVALID);
    assert_int_equal(pg_policy_decide(ps, obj, NULL, &d), PG_ERR_INVALID);
    assert_int_equal(pg_policy_decide(ps, obj, "demoapp", NULL),
                     PG_ERR_INVALID);
    pg_decision_clear(&d);
    pg_decision_clear(NULL);
    /* NULL set and empty set decide "nothing" */
    assert_int_equal(pg_policy_decide(NULL, obj, "demoapp", &d), PG_OK);
    assert_int_equal(d.has_account, 0);
    assert_int_equal(json_array_size(d.entitlements), 0);
    assert_int_equal(json_array_size(d.explanation), 0);
    pg_decision_clear(&d);
    assert_int_equal(pg_policy_load(NULL, NULL, &empty, &err), PG_OK);
    assert_int_equal(pg_policy_count(empty), 0);
    assert_int_equal(pg_policy_count(NULL), 0);
    pg_policy_free(empty);
    pg_policy_free(NULL);
    json_decref(arr);
    json_decref(obj);
    pg_policy_free(ps);
}

/* ---- load errors ----------------------------------------------------- */

typedef struct bad_policy {
    const char *text;
    const char *expect;   /* after "<file>: " (or "<file>" for syntax) */
} bad_policy_t;

#define P1(who, grants) \
    "{\"policies\": [{\"id\": \"p\", \"kind\": \"birthright\", \"who\": " \
    who ", \"grants\": " grants "}]}"
#define G "[{\"target\": \"demoapp\"}]"

static const bad_policy_t bad_policies[] = {
    {"{\"policies\": [\n {\"id\": \"p\",}\n]}", ":2:13: "},
    {"{\"policies\": [], \"policies\": []}", ":1:27: duplicate object key"},
    {"{\"rules\": []}", ": $.rules: unknown field"},
    {"{}", ": $.policies: missing required field"},
    {"{\"policies\": {}}", ": $.policies: must be an array"},
    {"{\"policies\": [7]}", ": $.policies[0]: must be an object"},
    {"{\"policies\": [{\"id\": \"p\", \"kind\": \"birthright\", \"who\": "
     "{\"all\": []}, \"grants\": " G ", \"priority\": 1}]}",
     ": $.policies[0].priority: unknown field"},
    {"{\"policies\": [{\"kind\": \"birthright\", \"who\": {\"all\": []}, "
     "\"grants\": " G "}]}", ": $.policies[0].id: missing required field"},
    {"{\"policies\": [{\"id\": \"a b\", \"kind\": \"birthright\", \"who\": "
     "{\"all\": []}, \"grants\": " G "}]}",
     ": $.policies[0].id: must be 1-128 characters"},
    {"{\"policies\": [{\"id\": \"p\", \"who\": {\"all\": []}, \"grants\": "
     G "}]}", ": $.policies[0].kind: missing required field"},
    {"{\"policies\": [{\"id\": \"a\", \"kind\": \"birthright\", \"who\": "
     "{\"all\": []}, \"grants\": " G "}, {\"id\": \"b\", \"kind\": "
     "\"time-bound\", \"who\": {\"all\": []}, \"grants\": " G "}]}",
     ": $.policies[1].kind: unknown kind \"time-bound\" (supported: "
     "birthright, role, sod, approval)"},
    {"{\"policies\": [{\"id\": \"a\", \"kind\": \"birthright\", \"who\": "
     "{\"all\": []}, \"grants\": " G "}, {\"id\": \"a\", \"kind\": "
     "\"birthright\", \"who\": {\"all\": []}, \"grants\": " G "}]}",
     ": $.policies[1].id: duplicate policy id \"a\" (first defined in "},
    {"{\"policies\": [{\"id\": \"p\", \"kind\": \"birthright\", \"grants\": "
     G "}]}", ": $.policies[0].who: missing required field"},
    {"{\"policies\": [{\"id\": \"p\", \"kind\": \"birthright\", \"who\": "
     "{\"all\": []}, \"description\": 5, \"grants\": " G "}]}",
     ": $.policies[0].description: must be a string"},
    /* conditions */
    {P1("[]", G), ": $.policies[0].who: a condition must be an object"},
    {P1("{}", G), ": $.policies[0].who: a condition needs exactly one of "
     "attr, group, all, any, not"},
    {P1("{\"attr\": \"a\", \"group\": \"g\"}", G),
     ": $.policies[0].who: a condition needs exactly one of"},
    {P1("{\"attribute\": \"a\", \"eq\": \"x\"}", G),
     ": $.policies[0].who.attribute: unknown field"},
    {P1("{\"attr\": \"a\"}", G), ": $.policies[0].who: needs exactly one "
     "operator of eq, in, exists, prefix, regex, lt, le, gt, ge (has 0)"},
    {P1("{\"attr\": \"a\", \"eq\": \"x\", \"prefix\": \"y\"}", G),
     ": $.policies[0].who: needs exactly one operator of eq, in, exists, "
     "prefix, regex, lt, le, gt, ge (has 2)"},
    {P1("{\"attr\": \"a\", \"ne\": \"x\"}", G),
     ": $.policies[0].who.ne: unknown field"},
    {P1("{\"attr\": \"a b\", \"eq\": \"x\"}", G),
     ": $.policies[0].who.attr: must be 1-128 characters"},
    {P1("{\"attr\": \"a\", \"eq\": 5}", G),
     ": $.policies[0].who.eq: must be a string"},
    {P1("{\"attr\": \"a\", \"in\": \"x\"}", G),
     ": $.policies[0].who.in: must be an array of strings"},
    {P1("{\"attr\": \"a\", \"in\": []}", G),
     ": $.policies[0].who.in: must not be empty"},
    {P1("{\"attr\": \"a\", \"in\": [\"x\", 1]}", G),
     ": $.policies[0].who.in[1]: must be a string"},
    {P1("{\"attr\": \"a\", \"exists\": \"yes\"}", G),
     ": $.policies[0].who.exists: must be true or false"},
    {P1("{\"attr\": \"a\", \"prefix\": \"\"}", G),
     ": $.policies[0].who.prefix: must not be empty"},
    {P1("{\"attr\": \"a\", \"regex\": \"(unclosed\"}", G),
     ": $.policies[0].who.regex: invalid regular expression: "},
    {P1("{\"attr\": \"a\", \"regex\": \"(a)\\\\1\"}", G),
     ": $.policies[0].who.regex: back-references are not supported"},
    {P1("{\"group\": 1}", G), ": $.policies[0].who.group: must be a string"},
    {P1("{\"group\": \"g\", \"x\": 1}", G),
     ": $.policies[0].who.x: unknown field"},
    {P1("{\"all\": {}}", G),
     ": $.policies[0].who.all: must be an array of conditions"},
    {P1("{\"any\": []}", G),
     ": $.policies[0].who.any: must not be empty (it would never match)"},
    {P1("{\"all\": [{\"group\": \"a\"}, {\"any\": [{\"attr\": \"x\"}]}]}", G),
     ": $.policies[0].who.all[1].any[0]: needs exactly one operator"},
    {P1("{\"not\": [{\"group\": \"a\"}]}", G),
     ": $.policies[0].who.not: a condition must be an object"},
    {P1("{\"not\": {\"group\": \"a\"}, \"all\": []}", G),
     ": $.policies[0].who: a condition needs exactly one of"},
    /* grants */
    {P1("{\"all\": []}", "[]"), ": $.policies[0].grants: must hold 1 to 64"},
    {P1("{\"all\": []}", "{}"), ": $.policies[0].grants: must be an array"},
    {"{\"policies\": [{\"id\": \"p\", \"kind\": \"birthright\", \"who\": "
     "{\"all\": []}}]}", ": $.policies[0].grants: missing required field"},
    {P1("{\"all\": []}", "[{\"entitlements\": []}]"),
     ": $.policies[0].grants[0].target: missing required field"},
    {P1("{\"all\": []}", "[{\"target\": \"crm\"}]"),
     ": $.policies[0].grants[0].target: unknown target \"crm\""},
    {P1("{\"all\": []}", "[{\"target\": \"demoapp\", \"account\": true}]"),
     ": $.policies[0].grants[0].account: unknown field"},
    {P1("{\"all\": []}", "[{\"target\": \"demoapp\", \"entitlements\": "
        "{}}]"), ": $.policies[0].grants[0].entitlements: must be an array"},
    {P1("{\"all\": []}", "[{\"target\": \"demoapp\", \"entitlements\": "
        "[{\"type\": \"group\"}]}]"),
     ": $.policies[0].grants[0].entitlements[0].value: missing required "
     "field"},
    {P1("{\"all\": []}", "[{\"target\": \"demoapp\", \"entitlements\": "
        "[{\"type\": \"a b\", \"value\": \"x\"}]}]"),
     ": $.policies[0].grants[0].entitlements[0].type: must be 1-64 "
     "characters"},
    {P1("{\"all\": []}", "[{\"target\": \"demoapp\", \"entitlements\": "
        "[{\"type\": \"group\", \"value\": \"x\", \"scope\": 1}]}]"),
     ": $.policies[0].grants[0].entitlements[0].scope: unknown field"},
};

static void
test_load_errors(void **state)
{
    char path[PATH_MAX], want[1024], *files[2];
    pg_policy_set_t *ps;
    pg_err_t err;
    size_t i, n = sizeof(bad_policies) / sizeof(bad_policies[0]);

    (void)state;
    for (i = 0; i < n; i++) {
        write_tmp("bad.json", bad_policies[i].text, path, sizeof(path));
        files[0] = path;
        files[1] = NULL;
        ps = (pg_policy_set_t *)1;
        memset(&err, 0, sizeof(err));
        if (pg_policy_load(files, fake_cfg(), &ps, &err) != PG_ERR_CONFIG) {
            fail_msg("bad policy %zu loaded", i);
        }
        assert_null(ps);
        fmt(want, sizeof(want), "%s%s", path, bad_policies[i].expect);
        if (strncmp(err.msg, want, strlen(want)) != 0) {
            fail_msg("bad policy %zu:\n  want prefix: %s\n  got:         %s",
                     i, want, err.msg);
        }
    }
}

/* Targets are only checked when a configuration is given. */
static void
test_targets_checked_only_with_cfg(void **state)
{
    char path[PATH_MAX], *files[2];
    pg_policy_set_t *ps = NULL;
    pg_err_t err;

    (void)state;
    write_tmp("crm.json", P1("{\"all\": []}", "[{\"target\": \"crm\"}]"), path,
              sizeof(path));
    files[0] = path;
    files[1] = NULL;
    assert_int_equal(pg_policy_load(files, NULL, &ps, &err), PG_OK);
    assert_int_equal(pg_policy_count(ps), 1);
    pg_policy_free(ps);
    assert_int_equal(pg_policy_load(files, fake_cfg(), &ps, &err),
                     PG_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "unknown target \"crm\""));
}

static void
test_duplicate_id_across_files(void **state)
{
    char a[PATH_MAX], b[PATH_MAX], want[2048], *files[3];
    pg_policy_set_t *ps = NULL;
    pg_err_t err;

    (void)state;
    fmt(a, sizeof(a), "%s/company.json", g_fix);
    fmt(b, sizeof(b), "%s/dup-id.json", g_fix);
    files[0] = a;
    files[1] = b;
    files[2] = NULL;
    assert_int_equal(pg_policy_load(files, fake_cfg(), &ps, &err),
                     PG_ERR_CONFIG);
    assert_null(ps);
    fmt(want, sizeof(want), "%s: $.policies[0].id: duplicate policy id "
        "\"employees\" (first defined in %s)", b, a);
    assert_string_equal(err.msg, want);

    /* a missing file is reported with its name */
    fmt(b, sizeof(b), "%s/nope.json", g_tmp);
    assert_int_equal(pg_policy_load(files, NULL, &ps, &err), PG_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "No such file or directory"));
    assert_memory_equal(err.msg, b, strlen(b));
}

/* Long values are truncated in explanations, never overflowing. */
static void
test_explanation_is_bounded(void **state)
{
    pg_policy_set_t *ps = load_who("{\"attr\": \"a\", \"eq\": \"x\"}");
    char big[3000];
    json_t *attrs;
    pg_decision_t d;
    const char *why;

    (void)state;
    memset(big, 'y', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    attrs = json_pack("{s:s}", "a", big);
    assert_int_equal(pg_policy_decide(ps, attrs, "demoapp", &d), PG_OK);
    assert_int_equal(d.has_account, 0);
    why = ex_field(&d, 0, "why");
    assert_true(strlen(why) < 200);
    assert_memory_equal(why, "a \"yyy", 6);
    assert_non_null(strstr(why, "...") );
    assert_non_null(strstr(why, " != \"x\""));
    pg_decision_clear(&d);
    json_decref(attrs);
    pg_policy_free(ps);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_eq),
        cmocka_unit_test(test_in),
        cmocka_unit_test(test_exists),
        cmocka_unit_test(test_prefix),
        cmocka_unit_test(test_regex),
        cmocka_unit_test(test_group),
        cmocka_unit_test(test_all_any_not),
        cmocka_unit_test(test_depth_cap),
        cmocka_unit_test(test_dedup_first_policy_wins),
        cmocka_unit_test(test_same_value_other_type_is_distinct),
        cmocka_unit_test(test_no_match_no_account),
        cmocka_unit_test(test_decide_arguments),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_targets_checked_only_with_cfg),
        cmocka_unit_test(test_duplicate_id_across_files),
        cmocka_unit_test(test_explanation_is_bounded),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
