/*
 * Unit tests: reconciliation compare logic, config and report CSV
 * (src/sidecar/recon.c, include/provgate/recon.h). Pure: no I/O.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>
#include "provgate/recon.h"

static json_t *
J(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, 0, &e);

    if (v == NULL) {
        fail_msg("bad JSON in test: %s (%s)", e.text, text);
    }
    return v;
}

/* Run the compare on JSON texts; the caller frees the findings. */
static json_t *
cmp(const char *accounts, const char *identities, int full)
{
    json_t *a = J(accounts), *i = J(identities), *out = NULL;

    assert_int_equal(pg_recon_compare(a, i, full, &out), PG_OK);
    json_decref(a);
    json_decref(i);
    assert_non_null(out);
    return out;
}

/* The only finding of kind in f (fails when there are 0 or several). */
static json_t *
only(json_t *f, const char *kind)
{
    json_t *x, *hit = NULL;
    size_t i;
    int n = 0;

    json_array_foreach(f, i, x) {
        if (strcmp(json_string_value(json_object_get(x, "kind")), kind) == 0) {
            hit = x;
            n++;
        }
    }
    assert_int_equal(n, 1);
    return hit;
}

static const char *
str(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));

    assert_non_null(s);
    return s;
}

/* Alice: linked, granted, everything as desired. */
#define ALICE_IDENT \
    "{\"iid\":\"i-alice\",\"acct\":\"uuid-a\",\"key\":\"alice\"," \
    "\"ents\":[\"staff\"],\"desired\":{\"attrs\":{\"mail\":\"a@x\"," \
    "\"cn\":\"Alice A\"},\"groups\":[\"staff\"]}}"
#define ALICE_ACCT \
    "{\"key\":\"alice\",\"id\":\"uuid-a\",\"attrs\":{\"mail\":[\"a@x\"]," \
    "\"cn\":\"Alice A\"},\"groups\":[\"staff\"],\"active\":true}"

static void
test_in_sync_gives_nothing(void **state)
{
    json_t *f = cmp("[" ALICE_ACCT "]", "[" ALICE_IDENT "]", 1);

    (void) state;
    assert_int_equal(json_array_size(f), 0);
    json_decref(f);
}

static void
test_rogue_unlinked_and_no_identity(void **state)
{
    json_t *f, *x;

    (void) state;
    /* mallory: no identity at all; bob: correlates by key to an identity
     * that has no link (created by hand) */
    f = cmp("[" ALICE_ACCT ",{\"key\":\"mallory\",\"id\":\"uuid-m\"},"
            "{\"key\":\"bob\",\"id\":\"uuid-b\"}]",
            "[" ALICE_IDENT ",{\"iid\":\"i-bob\",\"key\":\"bob\","
            "\"desired\":{\"attrs\":{},\"groups\":[]}}]", 1);
    assert_int_equal(json_array_size(f), 2);
    x = json_array_get(f, 0);
    assert_string_equal(str(x, "kind"), "rogue");
    assert_string_equal(str(x, "reason"), "no_identity");
    assert_string_equal(str(x, "account"), "mallory");
    assert_string_equal(str(x, "account_id"), "uuid-m");
    assert_null(json_object_get(x, "candidate"));
    x = json_array_get(f, 1);
    assert_string_equal(str(x, "kind"), "rogue");
    assert_string_equal(str(x, "reason"), "unlinked");
    assert_string_equal(str(x, "candidate"), "i-bob");
    json_decref(f);
}

static void
test_orphaned_left_and_not_entitled(void **state)
{
    json_t *f, *x;

    (void) state;
    f = cmp("[{\"key\":\"carol\",\"id\":\"uuid-c\",\"active\":true},"
            "{\"key\":\"dave\",\"id\":\"uuid-d\"},"
            "{\"key\":\"erin\",\"id\":\"uuid-e\",\"active\":false},"
            "{\"key\":\"fred\",\"id\":\"uuid-f\"}]",
            "[{\"iid\":\"i-carol\",\"acct\":\"uuid-c\",\"left\":true,"
            "\"key\":\"carol\"},"
            "{\"iid\":\"i-dave\",\"acct\":\"uuid-d\",\"key\":\"dave\","
            "\"desired\":null},"
            "{\"iid\":\"i-erin\",\"acct\":\"uuid-e\",\"left\":true},"
            "{\"iid\":\"i-fred\",\"left\":true,\"key\":\"fred\"}]", 1);
    /* erin is left but already disabled: nothing */
    assert_int_equal(json_array_size(f), 3);
    x = json_array_get(f, 0);
    assert_string_equal(str(x, "kind"), "orphaned");
    assert_string_equal(str(x, "reason"), "identity_left");
    assert_string_equal(str(x, "identity"), "i-carol");
    x = json_array_get(f, 1);
    assert_string_equal(str(x, "kind"), "orphaned");
    assert_string_equal(str(x, "reason"), "not_entitled");
    assert_string_equal(str(x, "identity"), "i-dave");
    /* unlinked, but the key belongs to a left identity */
    x = json_array_get(f, 2);
    assert_string_equal(str(x, "kind"), "orphaned");
    assert_string_equal(str(x, "identity"), "i-fred");
    json_decref(f);
}

static void
test_missing_full_only(void **state)
{
    const char *ids = "[" ALICE_IDENT ",{\"iid\":\"i-gina\",\"key\":\"gina\","
                      "\"acct\":\"uuid-g\",\"desired\":{\"attrs\":{},"
                      "\"groups\":[]}},{\"iid\":\"i-hal\",\"key\":\"hal\","
                      "\"desired\":{\"attrs\":{},\"groups\":[]}},"
                      "{\"iid\":\"i-ivy\",\"key\":\"ivy\",\"desired\":null},"
                      "{\"iid\":\"i-jo\",\"key\":\"jo\",\"left\":true}]";
    json_t *f, *x;

    (void) state;
    f = cmp("[" ALICE_ACCT "]", ids, 1);
    assert_int_equal(json_array_size(f), 2);
    x = json_array_get(f, 0);
    assert_string_equal(str(x, "kind"), "missing");
    assert_string_equal(str(x, "identity"), "i-gina");
    assert_string_equal(str(x, "reason"), "account_gone");
    assert_string_equal(str(x, "account"), "gina");
    x = json_array_get(f, 1);
    assert_string_equal(str(x, "identity"), "i-hal");
    assert_string_equal(str(x, "reason"), "not_created");
    json_decref(f);
    /* incremental: unlisted accounts are not missing */
    f = cmp("[" ALICE_ACCT "]", ids, 0);
    assert_int_equal(json_array_size(f), 0);
    json_decref(f);
}

static void
test_drift_attributes_groups_and_disabled(void **state)
{
    json_t *f, *x, *d;

    (void) state;
    f = cmp("[{\"key\":\"alice\",\"id\":\"uuid-a\",\"attrs\":{\"mail\":"
            "\"hacked@x\"},\"groups\":[\"staff\",\"admins\"],"
            "\"active\":false}]", "[" ALICE_IDENT "]", 1);
    assert_int_equal(json_array_size(f), 3);
    x = json_array_get(f, 0);
    assert_string_equal(str(x, "kind"), "drift");
    assert_string_equal(str(x, "reason"), "disabled");
    x = json_array_get(f, 1);
    assert_string_equal(str(x, "reason"), "attributes");
    d = json_object_get(x, "attrs");
    assert_int_equal(json_array_size(d), 2);
    /* jansson objects iterate in insertion order: mail, cn */
    assert_string_equal(str(json_array_get(d, 0), "attr"), "mail");
    assert_string_equal(str(json_array_get(d, 0), "desired"), "a@x");
    assert_string_equal(str(json_array_get(d, 0), "actual"), "hacked@x");
    assert_string_equal(str(json_array_get(d, 1), "attr"), "cn");
    assert_true(json_is_null(json_object_get(json_array_get(d, 1), "actual"))
                || json_object_get(json_array_get(d, 1), "actual") == NULL);
    /* admins: neither granted nor recorded -> rogue entitlement */
    x = json_array_get(f, 2);
    assert_string_equal(str(x, "kind"), "rogue");
    assert_string_equal(str(x, "reason"), "entitlements");
    assert_int_equal(json_array_size(json_object_get(x, "extra_groups")), 1);
    assert_string_equal(json_string_value(json_array_get(
        json_object_get(x, "extra_groups"), 0)), "admins");
    json_decref(f);
}

static void
test_entitlement_drift_and_recorded_groups(void **state)
{
    json_t *f, *x;

    (void) state;
    /* granted eng, not on the account: drift; "legacy" was recorded by
     * provgate earlier (ents): not rogue */
    f = cmp("[{\"key\":\"k\",\"id\":\"u\",\"attrs\":{},\"groups\":"
            "[\"legacy\"]}]",
            "[{\"iid\":\"i\",\"acct\":\"u\",\"key\":\"k\",\"ents\":"
            "[\"legacy\"],\"desired\":{\"attrs\":{},\"groups\":[\"eng\"]}}]",
            1);
    x = only(f, "drift");
    assert_string_equal(str(x, "reason"), "entitlements");
    assert_string_equal(json_string_value(json_array_get(
        json_object_get(x, "missing_groups"), 0)), "eng");
    assert_int_equal(json_array_size(f), 1);
    json_decref(f);
}

static void
test_value_normalisation(void **state)
{
    json_t *f;

    (void) state;
    /* booleans vs LDAP "TRUE", numbers vs strings, multi-valued as sets,
     * empty desired vs absent */
    f = cmp("[{\"key\":\"k\",\"id\":\"u\",\"attrs\":{\"flag\":\"TRUE\","
            "\"n\":\"42\",\"multi\":[\"b\",\"a\"]},\"groups\":[]}]",
            "[{\"iid\":\"i\",\"acct\":\"u\",\"key\":\"k\",\"desired\":"
            "{\"attrs\":{\"flag\":true,\"n\":42,\"multi\":[\"a\",\"b\"],"
            "\"empty\":\"\"},\"groups\":[]}}]", 1);
    assert_int_equal(json_array_size(f), 0);
    json_decref(f);
    /* but a different multi-valued set is drift */
    f = cmp("[{\"key\":\"k\",\"id\":\"u\",\"attrs\":{\"multi\":[\"a\"]}}]",
            "[{\"iid\":\"i\",\"acct\":\"u\",\"key\":\"k\",\"desired\":"
            "{\"attrs\":{\"multi\":[\"a\",\"b\"]},\"groups\":[]}}]", 1);
    assert_string_equal(str(only(f, "drift"), "reason"), "attributes");
    json_decref(f);
}

static void
test_link_by_key_when_id_unknown(void **state)
{
    json_t *f;

    (void) state;
    /* a connector that records the key as the account id (SQL "-") */
    f = cmp("[{\"key\":\"k\",\"id\":\"17\",\"attrs\":{}}]",
            "[{\"iid\":\"i\",\"acct\":\"k\",\"key\":\"k\",\"desired\":"
            "{\"attrs\":{},\"groups\":[]}}]", 1);
    assert_int_equal(json_array_size(f), 0);
    json_decref(f);
}

static void
test_link_recorded_in_another_form(void **state)
{
    json_t *f, *x;

    (void) state;
    /* LDAP: the DN was recorded at creation, list() gives the entryUUID;
     * no listed account carries the DN, so the mapped key links it */
    f = cmp("[{\"key\":\"k\",\"id\":\"uuid-k\",\"attrs\":{\"mail\":\"bad\"}}]",
            "[{\"iid\":\"i\",\"acct\":\"uid=k,ou=p\",\"key\":\"k\","
            "\"desired\":{\"attrs\":{\"mail\":\"ok\"},\"groups\":[]}}]", 1);
    x = only(f, "drift");
    assert_string_equal(str(x, "identity"), "i");
    assert_int_equal(json_array_size(f), 1);
    json_decref(f);
    /* but when the recorded account is listed, a second account with the
     * identity's key is a rogue duplicate */
    f = cmp("[{\"key\":\"k\",\"id\":\"uuid-k\"},{\"key\":\"old\","
            "\"id\":\"uuid-old\"}]",
            "[{\"iid\":\"i\",\"acct\":\"uuid-old\",\"key\":\"k\","
            "\"desired\":{\"attrs\":{},\"groups\":[]}}]", 1);
    x = only(f, "rogue");
    assert_string_equal(str(x, "account"), "k");
    assert_string_equal(str(x, "reason"), "unlinked");
    assert_string_equal(str(x, "candidate"), "i");
    json_decref(f);
}

static void
test_unknown_desired_state_is_not_guessed(void **state)
{
    json_t *f;

    (void) state;
    /* the mapping could not be rendered: neither orphaned nor drift */
    f = cmp("[{\"key\":\"k\",\"id\":\"u\",\"attrs\":{\"mail\":\"x\"}}]",
            "[{\"iid\":\"i\",\"acct\":\"u\",\"desired\":null,"
            "\"render_error\":\"unknown attribute\"}]", 1);
    assert_int_equal(json_array_size(f), 0);
    json_decref(f);
}

static void
test_sod_present_on_target(void **state)
{
    json_t *f, *x;

    (void) state;
    f = cmp("[{\"key\":\"k\",\"id\":\"u\",\"attrs\":{},\"groups\":"
            "[\"pay\",\"vendor\"]},{\"key\":\"k2\",\"id\":\"u2\",\"attrs\":"
            "{},\"groups\":[\"pay\"]}]",
            "[{\"iid\":\"i\",\"acct\":\"u\",\"key\":\"k\",\"desired\":"
            "{\"attrs\":{},\"groups\":[\"pay\",\"vendor\"]},\"sod\":"
            "[{\"policy\":\"sod-1\",\"values\":[\"pay\",\"vendor\"]}]},"
            "{\"iid\":\"i2\",\"acct\":\"u2\",\"key\":\"k2\",\"desired\":"
            "{\"attrs\":{},\"groups\":[\"pay\"]},\"sod\":"
            "[{\"policy\":\"sod-1\",\"values\":[\"pay\",\"vendor\"]}]}]", 1);
    /* i2 holds only half of the combination on the target */
    x = only(f, "sod");
    assert_string_equal(str(x, "identity"), "i");
    assert_string_equal(str(x, "policy"), "sod-1");
    assert_int_equal(json_array_size(f), 1);
    json_decref(f);
}

static void
test_bad_input_and_counts(void **state)
{
    json_t *o = json_object(), *a = json_array(), *out = NULL, *f, *c;

    (void) state;
    assert_int_equal(pg_recon_compare(o, a, 1, &out), PG_ERR_INVALID);
    assert_null(out);
    assert_int_equal(pg_recon_compare(a, o, 1, &out), PG_ERR_INVALID);
    json_decref(o);
    json_decref(a);
    f = cmp("[{\"key\":\"x\"},{\"key\":\"y\"},{\"id\":\"nokey\"}]",
            "[{\"iid\":\"m\",\"key\":\"zz\",\"desired\":{\"attrs\":{},"
            "\"groups\":[]}}]", 1);
    c = pg_recon_counts(f);
    assert_int_equal(json_integer_value(json_object_get(c, "rogue")), 2);
    assert_int_equal(json_integer_value(json_object_get(c, "missing")), 1);
    assert_int_equal(json_integer_value(json_object_get(c, "orphaned")), 0);
    assert_int_equal(json_integer_value(json_object_get(c, "drift")), 0);
    assert_int_equal(json_integer_value(json_object_get(c, "sod")), 0);
    json_decref(c);
    json_decref(f);
}

static void
test_cfg_parse(void **state)
{
    pg_recon_cfg_t rc;
    pg_err_t err = { "" };
    json_t *o;

    (void) state;
    assert_int_equal(pg_recon_cfg_parse(NULL, "$.r", &rc, &err), PG_OK);
    assert_int_equal(rc.action[PG_RECON_DRIFT], PG_RECON_REPORT);
    assert_int_equal(rc.schedule_s, 0);
    o = J("{\"orphaned\":\"disable\",\"rogue\":\"adopt\",\"missing\":"
          "\"revert\",\"drift\":\"revert\",\"sod\":\"report\","
          "\"schedule_s\":3600}");
    assert_int_equal(pg_recon_cfg_parse(o, "$.r", &rc, &err), PG_OK);
    assert_int_equal(rc.action[PG_RECON_ORPHANED], PG_RECON_DISABLE);
    assert_int_equal(rc.action[PG_RECON_ROGUE], PG_RECON_ADOPT);
    assert_int_equal(rc.action[PG_RECON_MISSING], PG_RECON_REVERT);
    assert_int_equal(rc.schedule_s, 3600);
    json_decref(o);
    o = J("{\"drift\":\"adopt\"}");
    assert_int_equal(pg_recon_cfg_parse(o, "$.r", &rc, &err), PG_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "$.r.drift"));
    json_decref(o);
    o = J("{\"drift\":\"fix\"}");
    assert_int_equal(pg_recon_cfg_parse(o, "$.r", &rc, &err), PG_ERR_CONFIG);
    json_decref(o);
    o = J("{\"bogus\":\"report\"}");
    assert_int_equal(pg_recon_cfg_parse(o, "$.r", &rc, &err), PG_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "unknown field"));
    json_decref(o);
    o = J("{\"schedule_s\":604801}");
    assert_int_equal(pg_recon_cfg_parse(o, "$.r", &rc, &err), PG_ERR_CONFIG);
    json_decref(o);
    o = J("{\"schedule_s\":-1}");
    assert_int_equal(pg_recon_cfg_parse(o, "$.r", &rc, &err), PG_ERR_CONFIG);
    json_decref(o);
    o = J("[]");
    assert_int_equal(pg_recon_cfg_parse(o, "$.r", &rc, &err), PG_ERR_CONFIG);
    json_decref(o);
    /* page_size (SCIM targets): 1..PG_RECON_PAGE_MAX, 0 = the default */
    assert_int_equal(pg_recon_cfg_parse(NULL, "$.r", &rc, &err), PG_OK);
    assert_int_equal(rc.page_size, 0);
    o = J("{\"page_size\":250}");
    assert_int_equal(pg_recon_cfg_parse(o, "$.r", &rc, &err), PG_OK);
    assert_int_equal(rc.page_size, 250);
    json_decref(o);
    o = J("{\"page_size\":1001}");
    assert_int_equal(pg_recon_cfg_parse(o, "$.r", &rc, &err), PG_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "$.r.page_size: must be an integer in "
                                    "1..1000"));
    json_decref(o);
    o = J("{\"page_size\":0}");
    assert_int_equal(pg_recon_cfg_parse(o, "$.r", &rc, &err), PG_ERR_CONFIG);
    json_decref(o);
    o = J("{\"page_size\":\"10\"}");
    assert_int_equal(pg_recon_cfg_parse(o, "$.r", &rc, &err), PG_ERR_CONFIG);
    json_decref(o);
    assert_string_equal(pg_recon_kind_str(PG_RECON_SOD), "sod");
    assert_string_equal(pg_recon_action_str(PG_RECON_REVERT), "revert");
}

static void
test_csv(void **state)
{
    json_t *rep = J("{\"findings\":[{\"kind\":\"drift\",\"reason\":"
                    "\"attributes\",\"account\":\"a,b\",\"identity\":\"i\","
                    "\"action\":\"report\",\"action_outcome\":\"reported\","
                    "\"attrs\":[{\"attr\":\"cn\"}]},{\"kind\":\"rogue\","
                    "\"reason\":\"no_identity\",\"account\":\"=cmd()\"}]}");
    char *csv = pg_recon_csv(rep);

    (void) state;
    assert_non_null(csv);
    assert_string_equal(csv,
        "kind,reason,account,account_id,identity,action,action_outcome,"
        "detail\r\n"
        "drift,attributes,\"a,b\",,i,report,reported,"
        "\"{\"\"attrs\"\":[{\"\"attr\"\":\"\"cn\"\"}]}\"\r\n"
        "rogue,no_identity,\"'=cmd()\",,,,,\r\n");
    free(csv);
    json_decref(rep);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_in_sync_gives_nothing),
        cmocka_unit_test(test_rogue_unlinked_and_no_identity),
        cmocka_unit_test(test_orphaned_left_and_not_entitled),
        cmocka_unit_test(test_missing_full_only),
        cmocka_unit_test(test_drift_attributes_groups_and_disabled),
        cmocka_unit_test(test_entitlement_drift_and_recorded_groups),
        cmocka_unit_test(test_value_normalisation),
        cmocka_unit_test(test_link_by_key_when_id_unknown),
        cmocka_unit_test(test_link_recorded_in_another_form),
        cmocka_unit_test(test_unknown_desired_state_is_not_guessed),
        cmocka_unit_test(test_sod_present_on_target),
        cmocka_unit_test(test_bad_input_and_counts),
        cmocka_unit_test(test_cfg_parse),
        cmocka_unit_test(test_csv),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
