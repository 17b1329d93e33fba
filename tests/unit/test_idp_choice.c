/*
 * Unit tests of the pure helpers behind several IdPs on one location:
 * removing the provgate_idp parameter from a request target
 * (pg_query_strip_param) and deciding the choice (pg_idp_choice).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "provgate/gate.h"
#include "provgate/util.h"

/* pg_query_strip_param on a NUL-terminated uri; *removed into *n. */
static char *
strip(const char *uri, size_t *n)
{
    return pg_query_strip_param(uri, strlen(uri), "provgate_idp", n);
}

static void
expect_strip(const char *uri, const char *want, size_t want_removed)
{
    size_t n = 99;
    char *out = strip(uri, &n);

    assert_non_null(out);
    if (strcmp(out, want) != 0 || n != want_removed) {
        fail_msg("strip(%s) = %s (%zu removed), want %s (%zu)", uri, out, n,
                 want, want_removed);
    }
    free(out);
}

static void
test_strip_param(void **state)
{
    (void)state;
    expect_strip("/app/x", "/app/x", 0);
    expect_strip("/app/x?", "/app/x", 0);
    expect_strip("/app/x?provgate_idp=main", "/app/x", 1);
    expect_strip("/app/x?a=1&provgate_idp=main", "/app/x?a=1", 1);
    expect_strip("/app/x?provgate_idp=main&a=1", "/app/x?a=1", 1);
    expect_strip("/app/x?a=1&provgate_idp=main&b=%2F2", "/app/x?a=1&b=%2F2",
                 1);
    /* no value, empty value, repeated, and an encoded name all go */
    expect_strip("/x?provgate_idp", "/x", 1);
    expect_strip("/x?provgate_idp=&y", "/x?y", 1);
    expect_strip("/x?provgate_idp=a&provgate_idp=b", "/x", 2);
    expect_strip("/x?provgate%5Fidp=a&z=1", "/x?z=1", 1);
    /* other names that only look alike stay */
    expect_strip("/x?provgate_idpx=1&xprovgate_idp=2",
                 "/x?provgate_idpx=1&xprovgate_idp=2", 0);
    expect_strip("/x?a=provgate_idp", "/x?a=provgate_idp", 0);
    /* empty segments are dropped; undecodable names are kept verbatim */
    expect_strip("/x?a=1&&provgate_idp=m&", "/x?a=1", 1);
    expect_strip("/x?%zz=1&provgate_idp=m", "/x?%zz=1", 1);
    /* only n bytes are read */
    {
        size_t n = 0;
        char *out = pg_query_strip_param("/x?a=1&provgate_idp=m", 6,
                                         "provgate_idp", &n);

        assert_non_null(out);
        assert_string_equal(out, "/x?a=1");
        assert_int_equal(n, 0);
        free(out);
    }
}

static void
test_strip_limits(void **state)
{
    char *big = malloc(8 * 1024 + 2);

    (void)state;
    assert_non_null(big);
    memset(big, 'a', 8 * 1024 + 1);
    big[0] = '/';
    big[8 * 1024 + 1] = '\0';
    assert_null(pg_query_strip_param(big, strlen(big), "provgate_idp", NULL));
    big[8 * 1024] = '\0';
    {
        char *out = pg_query_strip_param(big, strlen(big), "provgate_idp",
                                         NULL);
        assert_non_null(out);
        assert_string_equal(out, big);
        free(out);
    }
    free(big);
    assert_null(pg_query_strip_param(NULL, 0, "provgate_idp", NULL));
}

static const char *const IDPS[] = { "main", "corp" };

typedef struct {
    pg_idp_choice_t how;
    const char *chosen;
    char *ret;
} choice_t;

static choice_t
choose(const char *uri, const char *cookie)
{
    choice_t c;
    const char *cookies[1] = { cookie };

    assert_int_equal(pg_idp_choice(IDPS, 2, uri, uri ? strlen(uri) : 0,
                                   "provgate_session_idp", cookies,
                                   cookie != NULL ? 1 : 0, &c.how, &c.chosen,
                                   &c.ret), PG_OK);
    return c;
}

static void
test_choice_parameter(void **state)
{
    choice_t c;

    (void)state;
    c = choose("/m/page?a=1&provgate_idp=corp", NULL);
    assert_int_equal(c.how, PG_IDP_CHOSEN_PARAM);
    assert_ptr_equal(c.chosen, IDPS[1]);  /* from the list, not the request */
    assert_string_equal(c.ret, "/m/page?a=1");
    free(c.ret);

    /* the parameter wins over the cookie */
    c = choose("/m/?provgate_idp=main", "provgate_session_idp=corp");
    assert_int_equal(c.how, PG_IDP_CHOSEN_PARAM);
    assert_ptr_equal(c.chosen, IDPS[0]);
    assert_string_equal(c.ret, "/m/");
    free(c.ret);

    /* "*", empty, a name not allowed here, a repeated or malformed value,
     * an over-long value: the chooser, even with a remembered choice */
    {
        static const char *const asks[] = {
            "/m/?provgate_idp=*", "/m/?provgate_idp=", "/m/?provgate_idp",
            "/m/?provgate_idp=rogue", "/m/?provgate_idp=Main",
            "/m/?provgate_idp=main&provgate_idp=corp",
            "/m/?provgate_idp=ma%zzin", "/m/?provgate_idp=main%00",
            "/m/?provgate_idp=main%20",
            "/m/?provgate_idp=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            "aaaaaaaaaaaaaaaaaaaaaaaaaaa",
        };
        size_t i;

        for (i = 0; i < sizeof(asks) / sizeof(asks[0]); i++) {
            c = choose(asks[i], "provgate_session_idp=corp");
            if (c.how != PG_IDP_CHOOSE || c.chosen != NULL) {
                fail_msg("%s: chose %s", asks[i], c.chosen);
            }
            assert_string_equal(c.ret, "/m/");
            free(c.ret);
        }
    }
    /* an encoded value naming an allowed IdP is that IdP */
    c = choose("/m/?provgate_idp=%6Dain", NULL);
    assert_int_equal(c.how, PG_IDP_CHOSEN_PARAM);
    assert_ptr_equal(c.chosen, IDPS[0]);
    free(c.ret);
}

static void
test_choice_cookie(void **state)
{
    choice_t c;

    (void)state;
    c = choose("/m/x?y=1", "a=b; provgate_session_idp=corp; c=d");
    assert_int_equal(c.how, PG_IDP_CHOSEN_COOKIE);
    assert_ptr_equal(c.chosen, IDPS[1]);
    assert_string_equal(c.ret, "/m/x?y=1");
    free(c.ret);

    /* a remembered IdP not allowed here, or another cookie's name: none */
    {
        static const char *const bad[] = {
            "provgate_session_idp=rogue", "provgate_session_idpx=main",
            "xprovgate_session_idp=main", "provgate_session_idp=main2",
            "provgate_session_idp=", "provgate_session_idp",
        };
        size_t i;

        for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            c = choose("/m/", bad[i]);
            if (c.how != PG_IDP_CHOOSE || c.chosen != NULL) {
                fail_msg("%s: chose %s", bad[i], c.chosen);
            }
            free(c.ret);
        }
    }
    /* the first allowed one of several */
    c = choose("/m/", "provgate_session_idp=rogue; provgate_session_idp=main");
    assert_int_equal(c.how, PG_IDP_CHOSEN_COOKIE);
    assert_ptr_equal(c.chosen, IDPS[0]);
    free(c.ret);

    /* no cookie, no parameter: the chooser */
    c = choose("/m/", NULL);
    assert_int_equal(c.how, PG_IDP_CHOOSE);
    assert_null(c.chosen);
    assert_string_equal(c.ret, "/m/");
    free(c.ret);
}

static void
test_choice_limits(void **state)
{
    pg_idp_choice_t how;
    const char *chosen = (const char *)1;
    char *ret = (char *)1;
    char *big = malloc(9000);

    (void)state;
    assert_non_null(big);
    memset(big, 'a', 8999);
    big[0] = '/';
    big[8999] = '\0';
    /* an over-long target: no parameter is read, no return URI */
    assert_int_equal(pg_idp_choice(IDPS, 2, big, strlen(big), NULL, NULL, 0,
                                   &how, &chosen, &ret), PG_OK);
    assert_int_equal(how, PG_IDP_CHOOSE);
    assert_null(chosen);
    assert_null(ret);
    free(big);
    /* return_uri is optional */
    assert_int_equal(pg_idp_choice(IDPS, 2, "/?provgate_idp=main", 19, NULL,
                                   NULL, 0, &how, &chosen, NULL), PG_OK);
    assert_int_equal(how, PG_IDP_CHOSEN_PARAM);
    assert_ptr_equal(chosen, IDPS[0]);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strip_param),
        cmocka_unit_test(test_strip_limits),
        cmocka_unit_test(test_choice_parameter),
        cmocka_unit_test(test_choice_cookie),
        cmocka_unit_test(test_choice_limits),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
