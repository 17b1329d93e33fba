/* Unit tests: "${attr}" templates (src/util/template.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "provgate/util.h"

static json_t *
attrs_fixture(void)
{
    json_t *a = json_pack("{s:s, s:s, s:i, s:b, s:f, s:n, s:[s], s:{}, s:s}",
                          "username", "alice", "given_name", "Alice",
                          "uid", 1042, "active", 1, "ratio", 0.5,
                          "nothing", "groups", "staff", "obj",
                          "name.first", "Al");
    assert_non_null(a);
    return a;
}

/* Render and compare; the result must be exactly want. */
static void
render_ok(const char *tpl, const json_t *attrs, const char *want)
{
    char *out = NULL;
    pg_err_t err;
    pg_status_t st = pg_template_render(tpl, attrs, &out, &err);

    if (st != PG_OK) {
        fail_msg("render(%s): %s: %s", tpl, pg_status_str(st), err.msg);
    }
    assert_string_equal(out, want);
    free(out);
}

static void
render_fail(const char *tpl, const json_t *attrs, pg_status_t want_st,
            const char *want_msg)
{
    char *out = (char *)"sentinel";
    pg_err_t err;

    memset(&err, 0, sizeof(err));
    assert_int_equal(pg_template_render(tpl, attrs, &out, &err), want_st);
    assert_null(out);
    if (strstr(err.msg, want_msg) == NULL) {
        fail_msg("render(%s): want \"%s\" in \"%s\"", tpl, want_msg, err.msg);
    }
}

static void
test_render_basic(void **state)
{
    json_t *a = attrs_fixture();

    (void)state;
    render_ok("${username}", a, "alice");
    render_ok("plain text", a, "plain text");
    render_ok("", a, "");
    render_ok("${given_name} <${username}@example.com>", a,
              "Alice <alice@example.com>");
    render_ok("${username}${username}", a, "alicealice");
    render_ok("${name.first}", a, "Al");               /* dotted names */
    render_ok("{username} }{ {", a, "{username} }{ {"); /* braces alone */
    json_decref(a);
}

static void
test_render_dollar(void **state)
{
    json_t *a = attrs_fixture();

    (void)state;
    render_ok("$$", a, "$");
    render_ok("cost: $$5", a, "cost: $5");
    render_ok("$${username}", a, "${username}");   /* escaped, not a placeholder */
    render_ok("$$$${username}", a, "$${username}");
    render_ok("$$${username}", a, "$alice");
    json_decref(a);
}

static void
test_render_scalars(void **state)
{
    json_t *a = attrs_fixture();

    (void)state;
    render_ok("id-${uid}", a, "id-1042");
    render_ok("${active}", a, "true");
    render_ok("${ratio}", a, "0.5");
    json_decref(a);
}

static void
test_render_missing_and_nonscalar(void **state)
{
    json_t *a = attrs_fixture();

    (void)state;
    render_fail("${email}", a, PG_ERR_NOT_FOUND, "attribute \"email\" is "
                "missing");
    render_fail("x ${nothing} y", a, PG_ERR_NOT_FOUND,
                "attribute \"nothing\" is missing");          /* null */
    render_fail("${groups}", a, PG_ERR_NOT_FOUND,
                "attribute \"groups\" is not a scalar");
    render_fail("${obj}", a, PG_ERR_NOT_FOUND,
                "attribute \"obj\" is not a scalar");
    render_fail("${username}", NULL, PG_ERR_NOT_FOUND,
                "attribute \"username\" is missing");
    render_ok("no placeholders", NULL, "no placeholders");
    json_decref(a);
}

static void
test_render_embedded_nul(void **state)
{
    json_t *a = json_object();

    (void)state;
    assert_int_equal(json_object_set_new(a, "v", json_stringn("a\0b", 3)), 0);
    render_fail("${v}", a, PG_ERR_INVALID, "NUL");
    json_decref(a);
}

static void
check_fail(const char *tpl, pg_status_t want_st, const char *want_msg)
{
    pg_err_t err;
    char *out = NULL;

    memset(&err, 0, sizeof(err));
    assert_int_equal(pg_template_check(tpl, &err), want_st);
    if (strstr(err.msg, want_msg) == NULL) {
        fail_msg("check(%s): want \"%s\" in \"%s\"", tpl, want_msg, err.msg);
    }
    /* render rejects the same templates with the same status */
    memset(&err, 0, sizeof(err));
    assert_int_equal(pg_template_render(tpl, NULL, &out, &err), want_st);
    assert_null(out);
    assert_non_null(strstr(err.msg, want_msg));
}

static void
test_check_syntax(void **state)
{
    pg_err_t err;

    (void)state;
    assert_int_equal(pg_template_check("${a}-${b.c}_${D-9} $$ text", &err),
                     PG_OK);
    assert_int_equal(pg_template_check("", &err), PG_OK);
    check_fail("${username", PG_ERR_INVALID,
               "unterminated \"${\" at offset 0");
    check_fail("abc ${", PG_ERR_INVALID, "unterminated \"${\" at offset 4");
    check_fail("${a${b}", PG_ERR_INVALID, "unterminated \"${\" at offset 0");
    check_fail("${}", PG_ERR_INVALID, "empty placeholder");
    check_fail("${user name}", PG_ERR_INVALID,
               "invalid character in placeholder name at offset 6");
    check_fail("${a/b}", PG_ERR_INVALID, "invalid character");
    check_fail("$username", PG_ERR_INVALID, "'$' at offset 0");
    check_fail("price 5$", PG_ERR_INVALID, "'$' at offset 7");
    check_fail("$$$", PG_ERR_INVALID, "'$' at offset 2");
    check_fail(NULL, PG_ERR_INVALID, "NULL");
}

static void
test_limits(void **state)
{
    char *tpl, *out = NULL, name[200];
    json_t *a;
    pg_err_t err;

    (void)state;
    /* template text over 4 KiB */
    tpl = malloc(4098);
    assert_non_null(tpl);
    memset(tpl, 'x', 4097);
    tpl[4097] = '\0';
    assert_int_equal(pg_template_check(tpl, &err), PG_ERR_TOO_LARGE);
    assert_int_equal(pg_template_render(tpl, NULL, &out, &err),
                     PG_ERR_TOO_LARGE);
    /* exactly 4096 bytes of output is fine */
    tpl[4096] = '\0';
    assert_int_equal(pg_template_render(tpl, NULL, &out, &err), PG_OK);
    assert_int_equal(strlen(out), 4096);
    free(out);
    free(tpl);

    /* a short template whose expansion exceeds 4 KiB */
    tpl = malloc(4000);
    assert_non_null(tpl);
    memset(tpl, 'v', 3000);
    tpl[3000] = '\0';
    a = json_pack("{s:s}", "big", tpl);
    render_fail("${big}${big}", a, PG_ERR_TOO_LARGE, "longer than 4096");
    render_ok("${big}", a, tpl);
    json_decref(a);
    free(tpl);

    /* placeholder names are capped at 128 bytes */
    memset(name, 'n', sizeof(name));
    memcpy(name, "${", 2);
    name[2 + 129] = '}';
    name[2 + 130] = '\0';
    assert_int_equal(pg_template_check(name, &err), PG_ERR_INVALID);
    assert_non_null(strstr(err.msg, "longer than 128"));
    name[2 + 128] = '}';
    name[2 + 129] = '\0';
    assert_int_equal(pg_template_check(name, &err), PG_OK);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_basic),
        cmocka_unit_test(test_render_dollar),
        cmocka_unit_test(test_render_scalars),
        cmocka_unit_test(test_render_missing_and_nonscalar),
        cmocka_unit_test(test_render_embedded_nul),
        cmocka_unit_test(test_check_syntax),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
