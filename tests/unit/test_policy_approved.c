/*
 * Unit tests: approved access requests in decisions (src/policy/policy.c
 * approved_item). An approver's acceptance reaches the engine as the
 * identity attribute "approved"; the item is then granted, counts for the
 * account, and segregation-of-duties rules still apply to it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <jansson.h>

#include "provgate/policy.h"

static const char POLICY[] =
    "{\"policies\": ["
    " {\"id\": \"payroll\", \"kind\": \"approval\","
    "  \"who\": {\"attr\": \"department\", \"eq\": \"finance\"},"
    "  \"grants\": [{\"target\": \"erp\", \"entitlements\": ["
    "    {\"type\": \"role\", \"value\": \"payroll\"},"
    "    {\"type\": \"role\", \"value\": \"issue-payment\"}]}],"
    "  \"approvers\": {\"group\": \"approvers\"}},"
    " {\"id\": \"vendors\", \"kind\": \"birthright\","
    "  \"who\": {\"attr\": \"department\", \"eq\": \"finance\"},"
    "  \"grants\": [{\"target\": \"erp\", \"entitlements\": ["
    "    {\"type\": \"role\", \"value\": \"create-vendor\"}]}]},"
    " {\"id\": \"sod-pay\", \"kind\": \"sod\", \"action\": \"prevent\","
    "  \"conflict\": ["
    "    {\"target\": \"erp\", \"type\": \"role\", \"value\": \"create-vendor\"},"
    "    {\"target\": \"erp\", \"type\": \"role\", \"value\": \"issue-payment\"}]}"
    "]}";

static pg_policy_set_t *
load(void)
{
    char path[] = "/tmp/pg-approved-XXXXXX";
    int fd = mkstemp(path);
    char *files[2] = { path, NULL };
    pg_policy_set_t *ps = NULL;
    pg_err_t err = { "" };

    assert_true(fd >= 0);
    assert_int_equal(write(fd, POLICY, sizeof(POLICY) - 1),
                     (ssize_t) (sizeof(POLICY) - 1));
    close(fd);
    assert_int_equal(pg_policy_load(files, NULL, &ps, &err), PG_OK);
    unlink(path);
    return ps;
}

static int
has_value(const json_t *arr, const char *value)
{
    size_t i;
    json_t *e;

    json_array_foreach(arr, i, e) {
        const char *v = json_string_value(json_object_get(e, "value"));
        if (v != NULL && strcmp(v, value) == 0) {
            return 1;
        }
    }
    return 0;
}

static void
decide(pg_policy_set_t *ps, const char *attrs, pg_decision_t *d)
{
    json_error_t jerr;
    json_t *a = json_loads(attrs, 0, &jerr);

    assert_non_null(a);
    memset(d, 0, sizeof(*d));
    assert_int_equal(pg_policy_decide(ps, a, "erp", d), PG_OK);
    json_decref(a);
}

static void
test_pending_until_approved(void **state)
{
    pg_policy_set_t *ps = load();
    pg_decision_t d;

    (void) state;
    decide(ps, "{\"department\": \"finance\"}", &d);
    assert_true(has_value(d.pending_approval, "payroll"));
    assert_false(has_value(d.entitlements, "payroll"));
    pg_decision_clear(&d);

    /* approved: granted, and no longer pending */
    decide(ps, "{\"department\": \"finance\", \"approved\": ["
               "{\"target\": \"erp\", \"type\": \"role\", "
               "\"value\": \"payroll\"}]}", &d);
    assert_true(has_value(d.entitlements, "payroll"));
    assert_false(has_value(d.pending_approval, "payroll"));
    assert_true(d.has_account);
    pg_decision_clear(&d);

    /* an approval for another target, type or value approves nothing */
    decide(ps, "{\"department\": \"finance\", \"approved\": ["
               "{\"target\": \"crm\", \"type\": \"role\", \"value\": \"payroll\"},"
               "{\"target\": \"erp\", \"type\": \"group\", \"value\": \"payroll\"},"
               "{\"target\": \"erp\", \"type\": \"role\", \"value\": \"payrol\"},"
               "\"erp/role/payroll\"]}", &d);
    assert_false(has_value(d.entitlements, "payroll"));
    assert_true(has_value(d.pending_approval, "payroll"));
    pg_decision_clear(&d);

    /* an approval of someone the policy no longer selects grants nothing */
    decide(ps, "{\"department\": \"sales\", \"approved\": ["
               "{\"target\": \"erp\", \"type\": \"role\", "
               "\"value\": \"payroll\"}]}", &d);
    assert_false(has_value(d.entitlements, "payroll"));
    assert_false(d.has_account);
    pg_decision_clear(&d);
    pg_policy_free(ps);
}

static void
test_approved_still_subject_to_sod(void **state)
{
    pg_policy_set_t *ps = load();
    pg_decision_t d;

    (void) state;
    decide(ps, "{\"department\": \"finance\", \"approved\": ["
               "{\"target\": \"erp\", \"type\": \"role\", "
               "\"value\": \"issue-payment\"}]}", &d);
    /* create-vendor (birthright) + issue-payment (approved) is toxic */
    assert_false(has_value(d.entitlements, "create-vendor")
                 && has_value(d.entitlements, "issue-payment"));
    assert_true(json_array_size(d.sod_findings) >= 1);
    pg_decision_clear(&d);
    pg_policy_free(ps);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pending_until_approved),
        cmocka_unit_test(test_approved_still_subject_to_sod),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
