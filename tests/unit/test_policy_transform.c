/*
 * Unit tests: account rules of policy files (src/policy/account.c):
 * every attribute transform (lower/upper with UTF-8 passthrough, trim,
 * concat, template, substring bounds in characters, regex replace with
 * groups, default, lookup table with and without default), missing and
 * empty attributes, required attributes (refusal on both decision paths),
 * username templates and collision candidates, initial state, the
 * all-targets view, the shipped example and load errors (file + JSON
 * path).
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

static char g_root[PATH_MAX];
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
    char src[PATH_MAX], cand[PATH_MAX];

    (void)state;
    fmt(g_tmp, sizeof(g_tmp), "/tmp/pg_test_policy_transform.XXXXXX");
    if (mkdtemp(g_tmp) == NULL) {
        return -1;
    }
    fmt(src, sizeof(src), "%s", __FILE__);
    *strrchr(src, '/') = '\0';
    fmt(cand, sizeof(cand), "%s/../..", src);
    return realpath(cand, g_root) != NULL ? 0 : -1;
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
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
}

/* Load one inline file; returns the status, err filled. */
static pg_status_t
load_text(const char *text, pg_policy_set_t **ps, pg_err_t *err,
          char *path, size_t pathn)
{
    char *files[2];

    write_tmp("inline.json", text, path, pathn);
    files[0] = path;
    files[1] = NULL;
    memset(err, 0, sizeof(*err));
    *ps = NULL;
    return pg_policy_load(files, NULL, ps, err);
}

/* Load text that must be valid. */
static pg_policy_set_t *
must_load(const char *text)
{
    char path[PATH_MAX];
    pg_policy_set_t *ps;
    pg_err_t err;

    if (load_text(text, &ps, &err, path, sizeof(path)) != PG_OK) {
        fail_msg("load: %s", err.msg);
    }
    return ps;
}

/* The account object of target t in decision d for attrs (JSON text). */
static json_t *
account_of(const pg_policy_set_t *ps, const char *attrs_json, const char *t,
           pg_decision_t *d)
{
    json_t *attrs = json_loads(attrs_json, 0, NULL);

    assert_non_null(attrs);
    assert_int_equal(pg_policy_decide_at(ps, attrs, t, 1795000000, d), PG_OK);
    json_decref(attrs);
    return json_object_get(d->accounts, t);
}

/* accounts.<t>.attributes.<name> as a string, or NULL when not set. */
static const char *
attr_of(const json_t *acct, const char *name)
{
    return json_string_value(json_object_get(json_object_get(acct,
                                                             "attributes"),
                                             name));
}

/* A file with one birthright for target "t" (everyone) and rule body. */
static void
rule_file(char *out, size_t n, const char *rule)
{
    fmt(out, n, "{\"accounts\": [{\"target\": \"t\", %s}], \"policies\": "
        "[{\"id\": \"all\", \"kind\": \"birthright\", \"who\": {\"all\": []}, "
        "\"grants\": [{\"target\": \"t\"}]}]}", rule);
}

static const char XF_RULE[] =
    "\"attributes\": {"
    "\"low\": {\"attr\": \"email\", \"transforms\": [\"lower\"]},"
    "\"up\": {\"attr\": \"city\", \"transforms\": [\"upper\"]},"
    "\"low8\": {\"attr\": \"school\", \"transforms\": [\"lower\"]},"
    "\"trimmed\": {\"attr\": \"padded\", \"transforms\": [\"trim\"]},"
    "\"full\": {\"concat\": [{\"attr\": \"given_name\"}, {\"value\": \" \"},"
    " {\"attr\": \"family_name\"}]},"
    "\"tpl\": {\"template\": \"${given_name}.${family_name}@x.example $$1\","
    " \"transforms\": [\"lower\"]},"
    "\"first\": {\"attr\": \"given_name\", \"transforms\": [{\"substring\":"
    " {\"start\": 0, \"length\": 1}}]},"
    "\"mid\": {\"attr\": \"given_name\", \"transforms\": [{\"substring\":"
    " {\"start\": 1, \"length\": 2}}]},"
    "\"rest\": {\"attr\": \"given_name\", \"transforms\": [{\"substring\":"
    " {\"start\": 3}}]},"
    "\"past\": {\"attr\": \"given_name\", \"transforms\": [{\"substring\":"
    " {\"start\": 40, \"length\": 2}}]},"
    "\"long\": {\"attr\": \"given_name\", \"transforms\": [{\"substring\":"
    " {\"start\": 0, \"length\": 99}}]},"
    "\"phone\": {\"attr\": \"phone\", \"transforms\": [{\"replace\": {"
    "\"regex\": \"^\\\\(([0-9]{3})\\\\) ?([0-9]{3})-([0-9]{4})$\","
    " \"with\": \"+1-\\\\1-\\\\2-\\\\3\"}}]},"
    "\"clean\": {\"attr\": \"nick\", \"transforms\": [\"lower\", {\"replace\":"
    " {\"regex\": \"[^a-z]\", \"with\": \"\"}}]},"
    "\"empties\": {\"value\": \"ab\", \"transforms\": [{\"replace\":"
    " {\"regex\": \"x*\", \"with\": \"-\"}}]},"
    "\"afterm\": {\"value\": \"ab\", \"transforms\": [{\"replace\":"
    " {\"regex\": \"b*\", \"with\": \"-\"}}]},"
    "\"bs\": {\"value\": \"a.b\", \"transforms\": [{\"replace\":"
    " {\"regex\": \"[.]\", \"with\": \"\\\\\\\\\"}}]},"
    "\"title\": {\"attr\": \"title\", \"transforms\": [{\"default\": "
    "\"Staff\"}]},"
    "\"dept\": {\"attr\": \"department\", \"transforms\": [{\"lookup\": {"
    "\"table\": {\"engineering\": \"ENG\", \"sales\": \"SLS\"}, \"default\":"
    " \"OTHER\"}}]},"
    "\"strict\": {\"attr\": \"department\", \"transforms\": [{\"lookup\": {"
    "\"table\": {\"engineering\": \"ENG\"}}}]},"
    "\"num\": {\"concat\": [{\"value\": \"E-\"}, {\"attr\": \"employee_id\"}]},"
    "\"flag\": {\"attr\": \"active\"},"
    "\"nothing\": {\"attr\": \"absent\", \"transforms\": [\"lower\", "
    "\"trim\"]},"
    "\"halfmissing\": {\"template\": \"${given_name}-${absent}\"}"
    "}";

/* Every transform on present values. */
static void
test_transforms(void **state)
{
    char text[8192];
    pg_policy_set_t *ps;
    pg_decision_t d;
    const json_t *a;

    (void)state;
    rule_file(text, sizeof(text), XF_RULE);
    ps = must_load(text);
    a = account_of(ps,
                   "{\"email\": \"John.DOE@Corp.Example\", \"city\": "
                   "\"stra\\u00dfe \\u00e9t\\u00e9 abc\", \"school\": "
                   "\"\\u00c9COLE Z\", \"padded\": \" \\t x y \\n\", "
                   "\"given_name\": \"J\\u00fcrgen\", \"family_name\": "
                   "\"Doe\", \"phone\": \"(555) 123-4567\", \"nick\": "
                   "\"J.o-E 2\", \"title\": \"Engineer\", \"department\": "
                   "\"engineering\", \"employee_id\": 42, \"active\": true}",
                   "t", &d);
    assert_non_null(a);
    assert_string_equal(json_string_value(json_object_get(a, "result")),
                        "ok");
    assert_string_equal(attr_of(a, "low"), "john.doe@corp.example");
    /* ASCII letters change; UTF-8 sequences (sharp s, e acute) pass */
    assert_string_equal(attr_of(a, "up"),
                        "STRA\xc3\x9f" "E \xc3\xa9T\xc3\xa9 ABC");
    assert_string_equal(attr_of(a, "low8"), "\xc3\x89" "cole z");
    assert_string_equal(attr_of(a, "trimmed"), "x y");
    assert_string_equal(attr_of(a, "full"), "J\xc3\xbcrgen Doe");
    assert_string_equal(attr_of(a, "tpl"),
                        "j\xc3\xbcrgen.doe@x.example $1");
    /* substring counts characters: never splits the u-umlaut */
    assert_string_equal(attr_of(a, "first"), "J");
    assert_string_equal(attr_of(a, "mid"), "\xc3\xbcr");
    assert_string_equal(attr_of(a, "rest"), "gen");
    assert_string_equal(attr_of(a, "past"), "");
    assert_string_equal(attr_of(a, "long"), "J\xc3\xbcrgen");
    assert_string_equal(attr_of(a, "phone"), "+1-555-123-4567");
    assert_string_equal(attr_of(a, "clean"), "joe");
    assert_string_equal(attr_of(a, "empties"), "-a-b-");
    assert_string_equal(attr_of(a, "afterm"), "-a-");
    assert_string_equal(attr_of(a, "bs"), "a\\b");
    assert_string_equal(attr_of(a, "title"), "Engineer");
    assert_string_equal(attr_of(a, "dept"), "ENG");
    assert_string_equal(attr_of(a, "strict"), "ENG");
    assert_string_equal(attr_of(a, "num"), "E-42");
    assert_string_equal(attr_of(a, "flag"), "true");
    /* missing attribute: not set, even through transforms and templates */
    assert_null(attr_of(a, "nothing"));
    assert_null(attr_of(a, "halfmissing"));
    pg_decision_clear(&d);
    pg_policy_free(ps);
}

/* Missing and empty values: default, lookup default, no match. */
static void
test_missing_and_empty(void **state)
{
    char text[8192];
    pg_policy_set_t *ps;
    pg_decision_t d;
    const json_t *a;

    (void)state;
    rule_file(text, sizeof(text), XF_RULE);
    ps = must_load(text);
    /* title missing, department unknown */
    a = account_of(ps, "{\"department\": \"legal\", \"given_name\": \"\"}",
                   "t", &d);
    assert_string_equal(attr_of(a, "title"), "Staff");
    assert_string_equal(attr_of(a, "dept"), "OTHER");
    assert_null(attr_of(a, "strict"));   /* no entry, no default */
    assert_string_equal(attr_of(a, "first"), "");   /* empty stays empty */
    assert_null(attr_of(a, "full"));     /* family_name missing */
    assert_null(attr_of(a, "low"));
    assert_null(attr_of(a, "num"));
    pg_decision_clear(&d);
    /* title empty takes the default too; department missing -> default;
     * values that are not text (null, array, object) are missing */
    a = account_of(ps, "{\"title\": \"\", \"email\": null, \"city\": "
                   "[\"x\"], \"school\": {\"a\": 1}}", "t", &d);
    assert_string_equal(attr_of(a, "title"), "Staff");
    assert_string_equal(attr_of(a, "dept"), "OTHER");
    assert_null(attr_of(a, "low"));
    assert_null(attr_of(a, "up"));
    assert_null(attr_of(a, "low8"));
    pg_decision_clear(&d);
    pg_policy_free(ps);
}

/* Required attributes: refusal with a reason, on both decision paths. */
static void
test_required_refusal(void **state)
{
    char text[4096];
    pg_policy_set_t *ps;
    pg_policy_scratch_t *sc;
    pg_decision_t d;
    pg_item_t items[8];
    pg_fast_decision_t fd;
    const json_t *a, *e;
    json_t *attrs;
    size_t i;
    int seen = 0;

    (void)state;
    rule_file(text, sizeof(text),
              "\"required\": [\"mail\", \"dept\"], \"attributes\": {"
              "\"mail\": {\"attr\": \"email\", \"transforms\": [\"trim\"]},"
              "\"dept\": {\"attr\": \"department\", \"transforms\": "
              "[{\"lookup\": {\"table\": {\"eng\": \"ENG\"}}}]},"
              "\"opt\": {\"attr\": \"nickname\"}}");
    ps = must_load(text);
    assert_int_equal(pg_policy_scratch_new(ps, &sc), PG_OK);

    a = account_of(ps, "{\"department\": \"eng\"}", "t", &d);
    assert_int_equal(d.has_account, 0);
    assert_string_equal(json_string_value(json_object_get(a, "result")),
                        "refused");
    assert_string_equal(json_string_value(json_object_get(a, "reason")),
                        "required attribute \"mail\" cannot be built: "
                        "identity attribute \"email\" is missing");
    json_array_foreach(d.explanation, i, e) {
        if (json_object_get(e, "account") != NULL) {
            seen = 1;
            assert_string_equal(json_string_value(json_object_get(e,
                                "result")), "refused");
            assert_non_null(strstr(json_string_value(json_object_get(e,
                                   "why")), "\"email\" is missing"));
        }
    }
    assert_true(seen);
    pg_decision_clear(&d);

    /* an unmapped lookup value is refused too, with its own reason */
    a = account_of(ps, "{\"email\": \"a@b\", \"department\": \"legal\"}",
                   "t", &d);
    assert_int_equal(d.has_account, 0);
    assert_string_equal(json_string_value(json_object_get(a, "reason")),
                        "required attribute \"dept\" cannot be built: the "
                        "lookup table has no entry for the value");
    pg_decision_clear(&d);

    /* an empty string is present (required means "can be built") */
    a = account_of(ps, "{\"email\": \"  \", \"department\": \"eng\"}", "t",
                   &d);
    assert_int_equal(d.has_account, 1);
    assert_string_equal(attr_of(a, "mail"), "");
    pg_decision_clear(&d);

    a = account_of(ps, "{\"email\": \"a@b\", \"department\": \"eng\"}", "t",
                   &d);
    assert_int_equal(d.has_account, 1);
    assert_string_equal(json_string_value(json_object_get(a, "result")),
                        "ok");
    assert_null(json_object_get(a, "reason"));
    assert_null(attr_of(a, "opt"));   /* optional and missing */
    pg_decision_clear(&d);

    /* the fast path refuses the same accounts */
    attrs = json_pack("{s:s}", "department", "eng");
    assert_int_equal(pg_policy_decide_fast(ps, sc, attrs, "t", 0, items, 8,
                                           &fd), PG_OK);
    assert_int_equal(fd.has_account, 0);
    json_object_set_new(attrs, "email", json_string("a@b"));
    assert_int_equal(pg_policy_decide_fast(ps, sc, attrs, "t", 0, items, 8,
                                           &fd), PG_OK);
    assert_int_equal(fd.has_account, 1);
    json_decref(attrs);

    /* pg_policy_account: the same account object for whoever builds it,
     * refused or not; no rule for another target gives NULL */
    {
        json_t *acct = (json_t *)1, *in = json_loads(
            "{\"email\": \"a@b\", \"department\": \"eng\"}", 0, NULL);

        assert_int_equal(pg_policy_account(ps, in, "t", &acct), PG_OK);
        assert_non_null(acct);
        assert_string_equal(json_string_value(json_object_get(acct,
                            "result")), "ok");
        assert_string_equal(attr_of(acct, "dept"), "ENG");
        json_decref(acct);
        json_object_del(in, "email");
        assert_int_equal(pg_policy_account(ps, in, "t", &acct), PG_OK);
        assert_string_equal(json_string_value(json_object_get(acct,
                            "result")), "refused");
        json_decref(acct);
        assert_int_equal(pg_policy_account(ps, in, "other", &acct), PG_OK);
        assert_null(acct);
        assert_int_equal(pg_policy_account(ps, in, NULL, &acct),
                         PG_ERR_INVALID);
        json_decref(in);
    }
    pg_policy_scratch_free(sc);
    pg_policy_free(ps);
}

/* Username: template, transforms, max length; the collision function. */
static void
test_username(void **state)
{
    char text[4096], b[64];
    pg_policy_set_t *ps;
    pg_decision_t d;
    const json_t *a, *c;

    (void)state;
    rule_file(text, sizeof(text),
              "\"username\": {\"concat\": [{\"attr\": \"given_name\", "
              "\"transforms\": [{\"substring\": {\"start\": 0, \"length\": "
              "1}}]}, {\"attr\": \"family_name\"}], \"transforms\": "
              "[\"lower\", {\"replace\": {\"regex\": \"[^a-z0-9]\", "
              "\"with\": \"\"}}], \"max_length\": 8, \"collision\": "
              "{\"start\": 2, \"max_tries\": 4}}");
    ps = must_load(text);
    a = account_of(ps, "{\"given_name\": \"John\", \"family_name\": "
                   "\"Doe\"}", "t", &d);
    assert_string_equal(json_string_value(json_object_get(a, "username")),
                        "jdoe");
    c = json_object_get(a, "username_collision");
    assert_int_equal(json_integer_value(json_object_get(c, "start")), 2);
    assert_int_equal(json_integer_value(json_object_get(c, "max_tries")), 4);
    assert_int_equal(json_integer_value(json_object_get(c, "max_length")),
                     8);
    pg_decision_clear(&d);
    /* cut to max_length */
    a = account_of(ps, "{\"given_name\": \"Ann\", \"family_name\": "
                   "\"O'Sullivan-Smith\"}", "t", &d);
    assert_string_equal(json_string_value(json_object_get(a, "username")),
                        "aosulliv");
    pg_decision_clear(&d);
    /* a username that cannot be built refuses the account */
    a = account_of(ps, "{\"given_name\": \"Ann\"}", "t", &d);
    assert_int_equal(d.has_account, 0);
    assert_string_equal(json_string_value(json_object_get(a, "reason")),
                        "username cannot be built: identity attribute "
                        "\"family_name\" is missing");
    pg_decision_clear(&d);
    a = account_of(ps, "{\"given_name\": \"!\", \"family_name\": \"?\"}",
                   "t", &d);
    assert_int_equal(d.has_account, 0);
    assert_non_null(strstr(json_string_value(json_object_get(a, "reason")),
                           "empty name"));
    pg_decision_clear(&d);
    pg_policy_free(ps);

    /* collision candidates: jdoe, jdoe2, jdoe3, then give up */
    assert_int_equal(pg_policy_username_candidate("jdoe", 2, 3, 64, 0, b,
                                                  sizeof(b)), PG_OK);
    assert_string_equal(b, "jdoe");
    assert_int_equal(pg_policy_username_candidate("jdoe", 2, 3, 64, 1, b,
                                                  sizeof(b)), PG_OK);
    assert_string_equal(b, "jdoe2");
    assert_int_equal(pg_policy_username_candidate("jdoe", 2, 3, 64, 2, b,
                                                  sizeof(b)), PG_OK);
    assert_string_equal(b, "jdoe3");
    assert_int_equal(pg_policy_username_candidate("jdoe", 2, 3, 64, 3, b,
                                                  sizeof(b)),
                     PG_ERR_NOT_FOUND);
    /* another start */
    assert_int_equal(pg_policy_username_candidate("jdoe", 1, 100, 64, 1, b,
                                                  sizeof(b)), PG_OK);
    assert_string_equal(b, "jdoe1");
    assert_int_equal(pg_policy_username_candidate("jdoe", 1, 100, 64, 12, b,
                                                  sizeof(b)), PG_OK);
    assert_string_equal(b, "jdoe12");
    /* the base is cut so the suffix fits max_len */
    assert_int_equal(pg_policy_username_candidate("abcdefgh", 2, 100, 8, 0,
                                                  b, sizeof(b)), PG_OK);
    assert_string_equal(b, "abcdefgh");
    assert_int_equal(pg_policy_username_candidate("abcdefgh", 2, 100, 8, 9,
                                                  b, sizeof(b)), PG_OK);
    assert_string_equal(b, "abcdef10");
    /* never in the middle of a UTF-8 character */
    assert_int_equal(pg_policy_username_candidate("ab\xc3\xbc", 2, 100, 4,
                                                  1, b, sizeof(b)), PG_OK);
    assert_string_equal(b, "ab2");
    /* errors */
    assert_int_equal(pg_policy_username_candidate("", 2, 3, 64, 0, b,
                                                  sizeof(b)), PG_ERR_INVALID);
    assert_int_equal(pg_policy_username_candidate(NULL, 2, 3, 64, 0, b,
                                                  sizeof(b)), PG_ERR_INVALID);
    assert_int_equal(pg_policy_username_candidate("jdoe", 2, 3, 64, 1, b, 5),
                     PG_ERR_TOO_LARGE);
    assert_int_equal(pg_policy_username_candidate("jdoe", 2, 3, 64, 1, b, 6),
                     PG_OK);
    assert_int_equal(pg_policy_username_candidate("jdoe", 10, 3, 2, 1, b,
                                                  sizeof(b)),
                     PG_ERR_TOO_LARGE);
}

/* initial_state, defaults, the all-targets view, no rule, no account. */
static void
test_initial_state_and_views(void **state)
{
    static const char text[] =
        "{\"accounts\": ["
        "{\"target\": \"a\", \"initial_state\": \"disabled\", "
        "\"attributes\": {\"m\": {\"attr\": \"email\"}}},"
        "{\"target\": \"b\"},"
        "{\"target\": \"c\", \"required\": [\"m\"], \"attributes\": "
        "{\"m\": {\"attr\": \"email\"}}}],"
        "\"policies\": [{\"id\": \"p\", \"kind\": \"birthright\", \"who\": "
        "{\"all\": []}, \"grants\": [{\"target\": \"a\"}, {\"target\": "
        "\"b\"}, {\"target\": \"c\"}, {\"target\": \"d\"}]},"
        "{\"id\": \"q\", \"kind\": \"birthright\", \"who\": {\"attr\": "
        "\"x\", \"eq\": \"y\"}, \"grants\": [{\"target\": \"e\"}]}]}";
    pg_policy_set_t *ps = must_load(text);
    pg_decision_t d;
    json_t *attrs = json_pack("{s:s}", "email", "u@x");
    const json_t *a;

    (void)state;
    a = account_of(ps, "{\"email\": \"u@x\"}", "a", &d);
    assert_string_equal(json_string_value(json_object_get(a,
                        "initial_state")), "disabled");
    assert_string_equal(attr_of(a, "m"), "u@x");
    assert_int_equal(json_object_size(d.accounts), 1);
    pg_decision_clear(&d);
    a = account_of(ps, "{}", "b", &d);
    assert_string_equal(json_string_value(json_object_get(a,
                        "initial_state")), "active");
    assert_int_equal(json_object_size(json_object_get(a, "attributes")), 0);
    assert_null(json_object_get(a, "username"));
    pg_decision_clear(&d);
    /* no rule for d: no accounts entry, has_account unchanged */
    assert_null(account_of(ps, "{}", "d", &d));
    assert_int_equal(d.has_account, 1);
    pg_decision_clear(&d);
    /* no account in e: no rule evaluated */
    assert_null(account_of(ps, "{}", "e", &d));
    pg_decision_clear(&d);
    /* every target: a, b, c listed (c refused without email) */
    assert_int_equal(pg_policy_decide_at(ps, attrs, NULL, 0, &d), PG_OK);
    assert_int_equal(json_object_size(d.accounts), 3);
    assert_string_equal(json_string_value(json_object_get(json_object_get(
        d.accounts, "c"), "result")), "ok");
    pg_decision_clear(&d);
    json_object_del(attrs, "email");
    assert_int_equal(pg_policy_decide_at(ps, attrs, NULL, 0, &d), PG_OK);
    assert_string_equal(json_string_value(json_object_get(json_object_get(
        d.accounts, "c"), "result")), "refused");
    pg_decision_clear(&d);
    json_decref(attrs);
    pg_policy_free(ps);
}

/* The shipped example: policies/examples/accounts.json. */
static void
test_example_file(void **state)
{
    char path[PATH_MAX];
    char *files[2] = {path, NULL};
    pg_policy_set_t *ps = NULL;
    pg_decision_t d;
    pg_err_t err;
    json_t *attrs;
    const json_t *a;

    (void)state;
    fmt(path, sizeof(path), "%s/policies/examples/accounts.json", g_root);
    assert_int_equal(pg_policy_load(files, NULL, &ps, &err), PG_OK);
    attrs = json_loads("{\"employee_type\": \"employee\", \"given_name\": "
                       "\"John\", \"family_name\": \"Doe\", \"email\": "
                       "\" John.Doe@Corp.Example \", \"department\": "
                       "\"engineering\", \"phone\": \"(555) 123-4567\", "
                       "\"employee_id\": 42}", 0, NULL);
    assert_int_equal(pg_policy_decide_at(ps, attrs, "mailhost", 0, &d),
                     PG_OK);
    assert_int_equal(d.has_account, 1);
    a = json_object_get(d.accounts, "mailhost");
    assert_string_equal(json_string_value(json_object_get(a, "username")),
                        "jdoe");
    assert_string_equal(json_string_value(json_object_get(a,
                        "initial_state")), "disabled");
    assert_string_equal(attr_of(a, "mail"), "john.doe@corp.example");
    assert_string_equal(attr_of(a, "displayName"), "John Doe");
    assert_string_equal(attr_of(a, "department"), "ENG");
    assert_string_equal(attr_of(a, "title"), "Staff");
    assert_string_equal(attr_of(a, "phone"), "+1-555-123-4567");
    assert_string_equal(attr_of(a, "employeeNumber"), "E-42");
    pg_decision_clear(&d);
    json_object_del(attrs, "email");
    assert_int_equal(pg_policy_decide_at(ps, attrs, "mailhost", 0, &d),
                     PG_OK);
    assert_int_equal(d.has_account, 0);
    pg_decision_clear(&d);
    json_decref(attrs);
    pg_policy_free(ps);
}

/* Load errors name the file and the JSON path. */
static void
test_load_errors(void **state)
{
    static const struct {
        const char *rule;
        const char *msg;
    } cases[] = {
        {"\"attributes\": {\"a\": {\"attr\": \"x\", \"transforms\": "
         "[{\"replace\": {\"regex\": \"(\", \"with\": \"\"}}]}}",
         "$.accounts[0].attributes.a.transforms[0].replace.regex: invalid "
         "regular expression"},
        {"\"attributes\": {\"a\": {\"attr\": \"x\", \"transforms\": "
         "[\"capitalize\"]}}",
         "$.accounts[0].attributes.a.transforms[0]: unknown transform"},
        {"\"attributes\": {\"a\": {\"attr\": \"x\", \"transforms\": "
         "[{\"reverse\": true}]}}",
         "$.accounts[0].attributes.a.transforms[0]: unknown transform"},
        {"\"attributes\": {\"a\": {\"attr\": \"x\", \"transforms\": "
         "[{\"lookup\": {\"table\": {\"k\": 1}}}]}}",
         "$.accounts[0].attributes.a.transforms[0].lookup.table[\"k\"]: "
         "must be a string"},
        {"\"attributes\": {\"a\": {\"attr\": \"x\", \"transforms\": "
         "[{\"lookup\": {\"table\": {}}}]}}",
         "$.accounts[0].attributes.a.transforms[0].lookup.table: must be an "
         "object of 1 to 1024 string entries"},
        {"\"attributes\": {\"a\": {\"attr\": \"x\", \"transforms\": "
         "[{\"lookup\": {\"table\": {\"k\": \"v\"}, \"else\": \"v\"}}]}}",
         "$.accounts[0].attributes.a.transforms[0].lookup.else: unknown "
         "field"},
        {"\"attributes\": {\"a\": {\"attr\": \"x\", \"transforms\": "
         "[{\"replace\": {\"regex\": \"(a)\", \"with\": \"\\\\2\"}}]}}",
         "$.accounts[0].attributes.a.transforms[0].replace.with: \\2 refers "
         "to a group the regex does not have (it has 1)"},
        {"\"attributes\": {\"a\": {\"attr\": \"x\", \"transforms\": "
         "[{\"substring\": {\"start\": -1}}]}}",
         "$.accounts[0].attributes.a.transforms[0].substring.start"},
        {"\"attributes\": {\"a\": {\"template\": \"${given\"}}",
         "$.accounts[0].attributes.a.template: unterminated \"${\" at byte 0"},
        {"\"attributes\": {\"a\": {\"template\": \"x$y\"}}",
         "$.accounts[0].attributes.a.template: a lone \"$\" at byte 1"},
        {"\"attributes\": {\"a\": {\"attr\": \"x\", \"value\": \"y\"}}",
         "$.accounts[0].attributes.a: needs exactly one of attr, value, "
         "concat, template (has 2)"},
        {"\"attributes\": {\"a\": {\"concat\": [{\"attr\": \"x\"}, "
         "{\"attr\": \"\"}]}}",
         "$.accounts[0].attributes.a.concat[1].attr: must not be empty"},
        {"\"required\": [\"mail\"], \"attributes\": {\"a\": {\"attr\": "
         "\"x\"}}",
         "$.accounts[0].required[0]: \"mail\" is not one of this account's "
         "attributes"},
        {"\"initial_state\": \"frozen\"",
         "$.accounts[0].initial_state: must be \"active\" or \"disabled\""},
        {"\"username\": {\"attr\": \"x\", \"collision\": {\"start\": 2, "
         "\"max_tries\": 0}}",
         "$.accounts[0].username.collision.max_tries"},
        {"\"colour\": \"red\"", "$.accounts[0].colour: unknown field"},
    };
    char text[4096], path[PATH_MAX], want[1024], pa[PATH_MAX], pb[PATH_MAX];
    char *files[3] = {pa, pb, NULL};
    pg_policy_set_t *ps;
    pg_err_t err;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rule_file(text, sizeof(text), cases[i].rule);
        assert_int_equal(load_text(text, &ps, &err, path, sizeof(path)),
                         PG_ERR_CONFIG);
        assert_null(ps);
        fmt(want, sizeof(want), "%s: %s", path, cases[i].msg);
        if (strncmp(err.msg, want, strlen(want)) != 0) {
            fail_msg("case %zu:\n got  %s\n want %s...", i, err.msg, want);
        }
    }
    /* one rule per target across files */
    write_tmp("a.json", "{\"accounts\": [{\"target\": \"t\"}]}", pa,
              sizeof(pa));
    write_tmp("b.json", "{\"accounts\": [{\"target\": \"u\"}, {\"target\": "
              "\"t\"}]}", pb, sizeof(pb));
    assert_int_equal(pg_policy_load(files, NULL, &ps, &err), PG_ERR_CONFIG);
    fmt(want, sizeof(want), "%s: $.accounts[1].target: a second account "
        "rule for target \"t\" (first defined in %s)", pb, pa);
    assert_string_equal(err.msg, want);
    /* accounts must be an array */
    assert_int_equal(load_text("{\"accounts\": {}}", &ps, &err, path,
                               sizeof(path)), PG_ERR_CONFIG);
    fmt(want, sizeof(want), "%s: $.accounts: must be an array", path);
    assert_string_equal(err.msg, want);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transforms),
        cmocka_unit_test(test_missing_and_empty),
        cmocka_unit_test(test_required_refusal),
        cmocka_unit_test(test_username),
        cmocka_unit_test(test_initial_state_and_views),
        cmocka_unit_test(test_example_file),
        cmocka_unit_test(test_load_errors),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
