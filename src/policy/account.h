/*
 * provgate core (private to src/policy): account rules of policy files.
 *
 * An account rule says how the account of one target is built from the
 * identity: account attributes (data mapping with transforms), a
 * username template with collision handling, required attributes and
 * the initial state. The format is in docs/policies.md ("Accounts").
 * policy.c parses the top-level "accounts" array with pg_acct_parse()
 * and calls the evaluators from its decisions.
 */
#ifndef PROVGATE_POLICY_ACCOUNT_H
#define PROVGATE_POLICY_ACCOUNT_H

#include <jansson.h>
#include "provgate/status.h"
#include "provgate/util.h"

struct pg_config;

/* Largest account attribute value (bytes); longer results are refused. */
#define PG_ACCT_VALUE_MAX 1024u

typedef struct pg_acct_rule pg_acct_rule_t;

/*
 * Compile the account rule o at JSON path (e.g. "$.accounts[0]"). The
 * target must exist in cfg when cfg is not NULL. On PG_OK *out is owned
 * by the caller (pg_acct_free). On failure *out is NULL and err reads
 * "<path>...: <reason>" (no file name); PG_ERR_CONFIG or PG_ERR_NOMEM.
 */
PG_MUST_USE pg_status_t pg_acct_parse(const json_t *o, const char *path,
                                      const struct pg_config *cfg,
                                      pg_acct_rule_t **out, pg_err_t *err);
void pg_acct_free(pg_acct_rule_t *r);

/* The rule's target name (owned by the rule). */
const char *pg_acct_target(const pg_acct_rule_t *r);

/*
 * Check the rule's required attributes and username for identity attrs
 * without allocating (regexec() of a "replace" transform may allocate
 * inside the C library). Returns 1 when the account can be created;
 * otherwise 0 with the refusal reason in why[0..whycap) (truncated,
 * NUL-terminated). Attribute values are computed in fixed buffers of
 * PG_ACCT_VALUE_MAX bytes on the stack (about 8 KiB of stack in all).
 */
int pg_acct_check(const pg_acct_rule_t *r, const json_t *attrs, char *why,
                  size_t whycap);

/*
 * The account for identity attrs as JSON (*out owned by the caller):
 * {"target", "result": "ok"|"refused", "initial_state", "attributes",
 *  "username"?, "username_collision"?: {"start","max_tries","max_length"},
 *  "reason"?}. *ok is 1 when the account can be created; why receives a
 * short explanation (the refusal reason, or what was built).
 * PG_ERR_NOMEM on allocation failure.
 */
PG_MUST_USE pg_status_t pg_acct_build(const pg_acct_rule_t *r,
                                      const json_t *attrs, json_t **out,
                                      int *ok, char *why, size_t whycap);

#endif
