/* Unit tests: src/sidecar/idview.c, the pure parts (lookup keys, the view
 * of one identity: whitelisted fields only, account states, jit expiry). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "provgate/config.h"
#include "provgate/idview.h"
#include "provgate/util.h"

static pg_target_cfg_t g_targets[2];
static pg_attr_map_t g_app_attrs[2], g_db_attrs[1];
static pg_idp_cfg_t g_idps[3];
static pg_corr_rule_t g_corr[2];
static pg_config_t g_cfg;

/* "app" (SCIM, userName <- ${username}, session-end disable) and "db"
 * (connector keyed by login <- ${username}); a gateway rule on the email
 * (index "email") and one on employee_number; HR rules on the email
 * (indexes "hr_email" and "email" again); three OIDC IdPs, two with the
 * same issuer. */
static void
cfg_reset(void)
{
    json_error_t je;

    json_decref(g_cfg.hr_source);
    memset(g_targets, 0, sizeof(g_targets));
    memset(&g_cfg, 0, sizeof(g_cfg));
    g_app_attrs[0].scim_path = (char *) "userName";
    g_app_attrs[0].tpl = (char *) "${username}";
    g_app_attrs[1].scim_path = (char *) "displayName";
    g_app_attrs[1].tpl = (char *) "${name}";
    g_db_attrs[0].scim_path = (char *) "login";
    g_db_attrs[0].tpl = (char *) "${username}";
    g_targets[0].name = (char *) "app";
    g_targets[0].type = PG_TARGET_SCIM;
    g_targets[0].attrs = g_app_attrs;
    g_targets[0].nattrs = 2;
    g_targets[0].username_attr = (char *) "userName";
    g_targets[0].deprov_action = PG_DEPROV_DISABLE;
    g_targets[1].name = (char *) "db";
    g_targets[1].type = PG_TARGET_CONNECTOR;
    g_targets[1].attrs = g_db_attrs;
    g_targets[1].nattrs = 1;
    g_targets[1].username_attr = (char *) "login";
    g_cfg.targets = g_targets;
    g_cfg.ntargets = 2;
    g_corr[0].claim = (char *) "email";
    g_corr[0].index = (char *) "email";
    g_corr[1].claim = (char *) "employee_number";
    g_corr[1].index = (char *) "empno";
    g_cfg.corr = g_corr;
    g_cfg.ncorr = 2;
    memset(g_idps, 0, sizeof(g_idps));
    g_idps[0].type = PG_IDP_OIDC;
    g_idps[0].oidc.issuer = (char *) "https://a";
    g_idps[1].type = PG_IDP_OIDC;
    g_idps[1].oidc.issuer = (char *) "https://b";
    g_idps[2].type = PG_IDP_OIDC;
    g_idps[2].oidc.issuer = (char *) "https://a";
    g_cfg.idps = g_idps;
    g_cfg.nidps = 3;
    g_cfg.expiry_test_divisor = 1;
    g_cfg.hr_source = json_loads("{\"correlation\": ["
                                 "{\"attr\": \"email\", \"index\": \"hr_email\"},"
                                 "{\"attr\": \"email\", \"index\": \"email\"},"
                                 "{\"attr\": \"employee_number\", "
                                 "\"index\": \"empno\"}]}", 0, &je);
    assert_non_null(g_cfg.hr_source);
}

/* "idx:<index>:" sha256(s) as the module computes it. */
static void
expect_key(const json_t *keys, size_t i, const char *index, const char *s)
{
    char h[64], want[128];

    assert_int_equal(pg_sha256_b64url(s, strlen(s), h, sizeof(h)), PG_OK);
    snprintf(want, sizeof(want), "idx:%s:%s", index, h);
    assert_string_equal(json_string_value(json_array_get(keys, i)), want);
}

static void
test_keys(void **state)
{
    json_t *k = NULL;
    pg_err_t err = { "" };
    char big[PG_IDVIEW_VALUE_MAX + 2];

    (void) state;
    cfg_reset();
    assert_int_equal(pg_idview_keys(&g_cfg, PG_IDVIEW_BY_HR_KEY, "1001", NULL,
                                    &k, &err), PG_OK);
    assert_int_equal(json_array_size(k), 1);
    expect_key(k, 0, "hr", "1001");
    json_decref(k);
    /* email: every index fed by an email, once each, lower-cased value */
    assert_int_equal(pg_idview_keys(&g_cfg, PG_IDVIEW_BY_EMAIL,
                                    "Ann@Example.COM", NULL, &k, &err), PG_OK);
    assert_int_equal(json_array_size(k), 2);
    expect_key(k, 0, "email", "ann@example.com");
    expect_key(k, 1, "hr_email", "ann@example.com");
    json_decref(k);
    /* sub: per distinct issuer, or only the one given */
    assert_int_equal(pg_idview_keys(&g_cfg, PG_IDVIEW_BY_SUB, "s1", NULL, &k,
                                    &err), PG_OK);
    assert_int_equal(json_array_size(k), 2);
    expect_key(k, 0, "sub", "https://a\ns1");
    expect_key(k, 1, "sub", "https://b\ns1");
    json_decref(k);
    assert_int_equal(pg_idview_keys(&g_cfg, PG_IDVIEW_BY_SUB, "s1",
                                    "https://saml.example", &k, &err), PG_OK);
    assert_int_equal(json_array_size(k), 1);
    expect_key(k, 0, "sub", "https://saml.example\ns1");
    json_decref(k);
    /* bad values */
    assert_int_equal(pg_idview_keys(&g_cfg, PG_IDVIEW_BY_EMAIL, "", NULL, &k,
                                    &err), PG_ERR_INVALID);
    assert_null(k);
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(pg_idview_keys(&g_cfg, PG_IDVIEW_BY_HR_KEY, big, NULL,
                                    &k, &err), PG_ERR_INVALID);
    assert_int_equal(pg_idview_keys(&g_cfg, PG_IDVIEW_BY_ID, "x", NULL, &k,
                                    &err), PG_ERR_INVALID);
    g_cfg.nidps = 0;
    assert_int_equal(pg_idview_keys(&g_cfg, PG_IDVIEW_BY_SUB, "s1", NULL, &k,
                                    &err), PG_ERR_INVALID);
    assert_non_null(strstr(err.msg, "iss"));
    /* no rule on the email: the index "email" */
    g_cfg.ncorr = 0;
    json_object_del(g_cfg.hr_source, "correlation");
    assert_int_equal(pg_idview_keys(&g_cfg, PG_IDVIEW_BY_EMAIL, "a@b", NULL,
                                    &k, &err), PG_OK);
    assert_int_equal(json_array_size(k), 1);
    expect_key(k, 0, "email", "a@b");
    json_decref(k);
    json_decref(g_cfg.hr_source);
    g_cfg.hr_source = NULL;
}

static void
test_iid_ok(void **state)
{
    char big[PG_IDVIEW_IID_MAX + 2];

    (void) state;
    assert_true(pg_idview_iid_ok("Ab-_.9"));
    assert_false(pg_idview_iid_ok(""));
    assert_false(pg_idview_iid_ok("a:b"));
    assert_false(pg_idview_iid_ok("a/b"));
    assert_false(pg_idview_iid_ok("a%2f"));
    assert_false(pg_idview_iid_ok(NULL));
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_false(pg_idview_iid_ok(big));
    big[PG_IDVIEW_IID_MAX] = '\0';
    assert_true(pg_idview_iid_ok(big));
}

static json_t *
render(const char *fields, long live, const char *reqs)
{
    json_error_t je;
    json_t *f = json_loads(fields, 0, &je), *r = NULL, *v = NULL;

    assert_non_null(f);
    if (reqs != NULL) {
        r = json_loads(reqs, 0, &je);
        assert_non_null(r);
    }
    assert_int_equal(pg_idview_render(&g_cfg, "iid1", f, live, r, 5000, &v),
                     PG_OK);
    json_decref(f);
    json_decref(r);
    return v;
}

static void
test_render_active(void **state)
{
    json_t *v, *a;
    char *dump;

    (void) state;
    cfg_reset();
    v = render("{\"attrs\": \"{\\\"username\\\":\\\"ann\\\",\\\"name\\\":\\\"Ann\\\","
               "\\\"hr_key\\\":\\\"7\\\"}\", \"created\": \"100\", "
               "\"updated\": \"200\", \"source\": \"hr\", \"iss\": \"https://a\", "
               "\"sub\": \"s1\", \"acct:app\": \"A1\", \"ents:app\": "
               "\"[{\\\"type\\\":\\\"group\\\",\\\"value\\\":\\\"staff\\\"},"
               "{\\\"type\\\":\\\"group\\\",\\\"value\\\":\\\"admins\\\","
               "\\\"jit_lifetime_s\\\":60}]\", \"jit_at:app\": \"1000\", "
               "\"used:app\": \"1500\", \"acct:db\": \"9\", "
               "\"acct:gone\": \"x\", \"secret_thing\": \"TOPSECRET\", "
               "\"session\": \"SID123\"}", 2,
               "[{\"id\": \"r1\", \"target\": \"app\", \"value\": \"payroll\"}]");
    assert_string_equal(json_string_value(json_object_get(v, "id")), "iid1");
    assert_string_equal(json_string_value(json_object_get(v, "state")),
                        "active");
    assert_true(json_is_null(json_object_get(v, "left_at")));
    assert_int_equal(json_integer_value(json_object_get(v, "created")), 100);
    assert_string_equal(json_string_value(json_object_get(v, "source")), "hr");
    assert_string_equal(json_string_value(json_object_get(
        json_object_get(v, "login"), "subject")), "s1");
    assert_int_equal(json_integer_value(json_object_get(
        json_object_get(v, "sessions"), "live")), 2);
    assert_int_equal(json_array_size(json_object_get(v, "access_requests")),
                     1);
    a = json_object_get(json_object_get(v, "accounts"), "app");
    assert_string_equal(json_string_value(json_object_get(a, "id")), "A1");
    assert_string_equal(json_string_value(json_object_get(a, "username")),
                        "ann");
    assert_string_equal(json_string_value(json_object_get(a, "state")),
                        "active");
    assert_int_equal(json_array_size(json_object_get(a, "entitlements")), 2);
    assert_int_equal(json_integer_value(json_object_get(a, "last_used")),
                     1500);
    a = json_object_get(json_object_get(v, "accounts"), "db");
    assert_string_equal(json_string_value(json_object_get(a, "username")),
                        "ann");
    assert_true(json_is_true(json_object_get(a, "configured")));
    a = json_object_get(json_object_get(v, "accounts"), "gone");
    assert_true(json_is_null(json_object_get(a, "username")));
    assert_true(json_is_false(json_object_get(a, "configured")));
    /* jit: counted from the later of the grant and the last use */
    a = json_array_get(json_object_get(v, "jit"), 0);
    assert_int_equal(json_array_size(json_object_get(v, "jit")), 1);
    assert_string_equal(json_string_value(json_object_get(a, "value")),
                        "admins");
    assert_int_equal(json_integer_value(json_object_get(a, "granted_at")),
                     1000);
    assert_int_equal(json_integer_value(json_object_get(a, "expires_at")),
                     1560);
    /* only whitelisted fields: nothing else of the hash appears */
    dump = json_dumps(v, JSON_COMPACT);
    assert_null(strstr(dump, "TOPSECRET"));
    assert_null(strstr(dump, "SID123"));
    assert_null(strstr(dump, "secret_thing"));
    free(dump);
    json_decref(v);
}

static void
test_render_states(void **state)
{
    json_t *v, *acc;

    (void) state;
    cfg_reset();
    /* a session-end disable after the last login grant */
    v = render("{\"acct:app\": \"A1\", \"jit_at:app\": \"100\", "
               "\"deprov_at:app\": \"300\"}", 0, NULL);
    acc = json_object_get(v, "accounts");
    assert_string_equal(json_string_value(json_object_get(
        json_object_get(acc, "app"), "state")), "disabled");
    assert_true(json_is_null(json_object_get(v, "login")));
    assert_int_equal(json_array_size(json_object_get(v, "access_requests")),
                     0);
    json_decref(v);
    /* a later login re-enabled it */
    v = render("{\"acct:app\": \"A1\", \"jit_at:app\": \"400\", "
               "\"deprov_at:app\": \"300\"}", 1, NULL);
    assert_string_equal(json_string_value(json_object_get(json_object_get(
        json_object_get(v, "accounts"), "app"), "state")), "active");
    json_decref(v);
    /* a leaver: disabled; once the retention deletion is queued: deleted */
    v = render("{\"left\": \"900\", \"acct:app\": \"A1\", \"acct:db\": \"9\", "
               "\"retained:db\": \"900\", \"retained:app\": \"100\"}", 0,
               NULL);
    assert_string_equal(json_string_value(json_object_get(v, "state")),
                        "left");
    assert_int_equal(json_integer_value(json_object_get(v, "left_at")), 900);
    acc = json_object_get(v, "accounts");
    assert_string_equal(json_string_value(json_object_get(
        json_object_get(acc, "app"), "state")), "disabled");
    assert_string_equal(json_string_value(json_object_get(
        json_object_get(acc, "db"), "state")), "deleted");
    json_decref(v);
    /* not an object: refused */
    {
        json_t *out = NULL, *arr = json_array();

        assert_int_equal(pg_idview_render(&g_cfg, "i", arr, 0, NULL, 0, &out),
                         PG_ERR_INVALID);
        assert_null(out);
        json_decref(arr);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_iid_ok),
        cmocka_unit_test(test_render_active),
        cmocka_unit_test(test_render_states),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);

    json_decref(g_cfg.hr_source);
    return rc;
}
