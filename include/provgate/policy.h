/*
 * provgate core: policies (who gets which account and entitlements).
 *
 * Policy files are JSON: {"policies": [ {...}, ... ]}. This first version
 * evaluates "birthright" policies; the format is the full engine's
 * (docs/policies.md): every policy has an "id", a "kind", a "who"
 * condition and "grants".
 *
 *   "who": {"attr": "department", "in": ["eng", "sales"]}
 *          {"attr": "employee_type", "eq": "employee"}
 *          {"attr": "email", "exists": true}
 *          {"group": "staff"}                (member of the identity's groups)
 *          {"all": [...]} {"any": [...]} {"not": {...}}
 *   "grants": [{"target": "demoapp",
 *               "entitlements": [{"type": "group", "value": "staff"}]}]
 *
 * A missing attribute never matches eq/in/group and matches
 * {"exists": false}; it never crashes.
 */
#ifndef PROVGATE_POLICY_H
#define PROVGATE_POLICY_H

#include <jansson.h>
#include "provgate/status.h"
#include "provgate/util.h"

struct pg_config;

typedef struct pg_policy_set pg_policy_set_t;

/*
 * Load and validate policy files. Targets referenced by grants must exist
 * in cfg (cfg may be NULL to skip that check, e.g. for a lone file check).
 * Errors read "<file>: <json path>: <reason>".
 */
PG_MUST_USE pg_status_t pg_policy_load(char *const *files,
                                       const struct pg_config *cfg,
                                       pg_policy_set_t **out, pg_err_t *err);
void pg_policy_free(pg_policy_set_t *ps);
size_t pg_policy_count(const pg_policy_set_t *ps);

typedef struct pg_decision {
    int has_account;        /* some policy grants an account in the target */
    json_t *entitlements;   /* [{"type","value","policy"}], deduplicated */
    json_t *explanation;    /* [{"policy","kind","result","why"}] */
} pg_decision_t;

/*
 * Decide what identity attrs (a JSON object; "groups" an array of strings)
 * get in target. out is filled; release with pg_decision_clear().
 */
PG_MUST_USE pg_status_t pg_policy_decide(const pg_policy_set_t *ps,
                                         const json_t *attrs,
                                         const char *target,
                                         pg_decision_t *out);
void pg_decision_clear(pg_decision_t *d);

#endif
