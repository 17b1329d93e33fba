/*
 * provgate core: policies (who gets which account and entitlements).
 *
 * Policy files are JSON: {"policies": [ {...}, ... ], "roles": [...]}.
 * Every policy has an "id", a "kind" and a "who" condition; the kinds are
 * "birthright" (who -> grants), "role" (who -> business roles, which map
 * through technical roles to grants), "sod" (toxic combinations, prevent
 * or detect, exemptions with owner and expiry) and "approval" (grants that
 * become pending requests). Entitlements may be "jit". The complete
 * reference is docs/policies.md.
 *
 *   "who": {"attr": "department", "in": ["eng", "sales"]}
 *          {"attr": "employee_type", "eq": "employee"}
 *          {"attr": "email", "exists": true}
 *          {"attr": "contract_end", "ge": "today"}   (also lt/le/gt; numbers,
 *                                                     "YYYY-MM-DD", "today")
 *          {"group": "staff"}                (member of the identity's groups)
 *          {"all": [...]} {"any": [...]} {"not": {...}}
 *   "grants": [{"target": "demoapp",
 *               "entitlements": [{"type": "group", "value": "staff"}]}]
 *
 * A missing attribute never matches eq/in/group/lt/le/gt/ge and matches
 * {"exists": false}; it never crashes.
 *
 * A file may also hold "accounts": per target, how the account is built
 * (attributes mapped with transforms, a username template with collision
 * handling, required attributes, initial state); see pg_decision_t
 * "accounts" and pg_policy_username_candidate() below.
 */
#ifndef PROVGATE_POLICY_H
#define PROVGATE_POLICY_H

#include <jansson.h>
#include <time.h>
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

/* Number of loaded roles (business and technical; 0 for NULL). */
size_t pg_policy_role_count(const pg_policy_set_t *ps);

/*
 * A decision. The first three members are the birthright engine's; the
 * rest were added with the role/sod/approval/jit kinds (docs/policies.md).
 * Every item carries "target", "type", "value" and "policy" (the policy
 * that justifies it, or "attribute:roles"); items from roles add "via":
 * "<business role> > <technical role>".
 */
typedef struct pg_decision {
    int has_account;        /* some policy grants an account in the target */
    json_t *entitlements;   /* granted items, deduplicated by (target,type,
                               value); jit ones add "jit_lifetime_s" */
    json_t *explanation;    /* [{"policy"|"role","kind","result","why"}] */
    json_t *denied;         /* items refused: + "denied_by", "reason" */
    json_t *sod_findings;   /* [{"policy","action","result","items",
                               "exemption"?, "expired_exemption"?}] */
    json_t *pending_approval; /* items awaiting approval: + "approvers",
                               "expires_s", "expires_at" */
    json_t *jit;            /* granted jit items: + "lifetime_s" */
    json_t *roles;          /* [{"role","type","state","via"}] */
    /* Added with account rules (top-level "accounts", docs/policies.md):
     * {"<target>": {"target", "result": "ok"|"refused", "initial_state",
     * "attributes", "username"?, "username_collision"?, "reason"?}} for
     * each target that has an account rule and where the identity gets
     * an account. A refused account (a required attribute or the
     * username cannot be built) sets has_account to 0 for that target
     * and adds an explanation entry {"account", "kind": "account",
     * "result": "refused", "why"}. */
    json_t *accounts;
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

/*
 * pg_policy_decide() at a given time (dates, exemption expiry, request
 * expiry use now; "today" is now's UTC date). target NULL decides for
 * every target at once (admin view): items of all targets are listed,
 * jit items are not granted (no app is being accessed) and has_account
 * is 0. Same ownership and errors as pg_policy_decide().
 */
PG_MUST_USE pg_status_t pg_policy_decide_at(const pg_policy_set_t *ps,
                                            const json_t *attrs,
                                            const char *target, time_t now,
                                            pg_decision_t *out);

/*
 * The allocation-free hot path. pg_policy_decide_fast() makes the same
 * decision as pg_policy_decide_at() (same items, states and has_account)
 * but builds no JSON and no explanation: it fills caller-provided items
 * and uses a scratch area made once per set (and per thread). Policies
 * are pre-selected through an index compiled at load (eq/in/group
 * conditions that "who" requires), so only policies that can match are
 * evaluated. Strings in items point into the set: valid until
 * pg_policy_free(). Note: a "regex" condition calls regexec(), which may
 * allocate inside the C library.
 */
typedef enum pg_item_state {
    PG_ITEM_GRANTED = 0,
    PG_ITEM_PENDING = 1,    /* waits for approval */
    PG_ITEM_DENIED = 2      /* refused (SoD prevent, or no approver) */
} pg_item_state_t;

typedef struct pg_item {
    const char *target;
    const char *type;
    const char *value;
    const char *policy;     /* policy id that justifies it, or
                               "attribute:roles" */
    const char *via_role;   /* technical role it comes from, or NULL */
    const char *denied_by;  /* PG_ITEM_DENIED: policy id */
    pg_item_state_t state;
    unsigned jit_lifetime_s;     /* > 0: a granted jit entitlement */
    unsigned request_expires_s;  /* PG_ITEM_PENDING: request lifetime */
} pg_item_t;

typedef struct pg_fast_decision {
    int has_account;
    size_t nitems;          /* items written (those of target) */
    size_t nfindings;       /* SoD findings (prevented/detected/exempted) */
} pg_fast_decision_t;

typedef struct pg_policy_scratch pg_policy_scratch_t;

/* Scratch for ps (one malloc'd block set; free with the function below). */
PG_MUST_USE pg_status_t pg_policy_scratch_new(const pg_policy_set_t *ps,
                                              pg_policy_scratch_t **out);
void pg_policy_scratch_free(pg_policy_scratch_t *sc);

/*
 * Decide into items[0..cap) (target must not be NULL). Errors:
 * PG_ERR_INVALID (bad arguments, scratch of another set),
 * PG_ERR_TOO_LARGE (more than cap items in target, or more than 1024
 * items in all: the target's plus the other targets' items that appear
 * in an SoD conflict, the only ones the fast path builds). A refused
 * account (account rule of the target: a required attribute or the
 * username cannot be built) gives has_account 0, as on the JSON path.
 */
PG_MUST_USE pg_status_t pg_policy_decide_fast(const pg_policy_set_t *ps,
                                              pg_policy_scratch_t *sc,
                                              const json_t *attrs,
                                              const char *target, time_t now,
                                              pg_item_t *items, size_t cap,
                                              pg_fast_decision_t *out);

/*
 * The account rule of target built for identity attrs, for whoever
 * creates the account once a decision granted it: *out is the same object
 * as a decision's accounts.<target> ({"target", "result": "ok"|"refused",
 * "initial_state", "attributes", "username"?, "username_collision"?,
 * "reason"?}), owned by the caller, or NULL when target has no account
 * rule (or ps is NULL). Whether a policy grants the account is not looked
 * at here. PG_ERR_INVALID for a NULL target or non-object attrs;
 * PG_ERR_NOMEM.
 */
PG_MUST_USE pg_status_t pg_policy_account(const pg_policy_set_t *ps,
                                          const json_t *attrs,
                                          const char *target, json_t **out);

/*
 * Username candidates for an account rule's "username" (collision
 * handling): attempt 0 is base itself ("jdoe"), attempt k >= 1 is base
 * followed by the decimal number start + k - 1 ("jdoe2", "jdoe3", ...
 * with start 2). base is cut at a UTF-8 character boundary so that the
 * candidate fits max_len bytes. The caller tries attempt 0, 1, ... until
 * the target has no account with that name. Writes a NUL-terminated
 * string into buf[0..cap). Pure, no allocation. Errors: PG_ERR_NOT_FOUND
 * (attempt >= max_tries: give up), PG_ERR_INVALID (NULL or empty base,
 * cap 0, max_len 0), PG_ERR_TOO_LARGE (cap too small, or max_len leaves
 * no room for base). The rule's start, max_tries and max_length are in
 * the decision's accounts.<target>.username_collision.
 */
PG_MUST_USE pg_status_t pg_policy_username_candidate(const char *base,
                                                     unsigned start,
                                                     unsigned max_tries,
                                                     unsigned max_len,
                                                     unsigned attempt,
                                                     char *buf, size_t cap);

/*
 * Move semantics: what to change in a target when the desired state is
 * recomputed. prev is the previously granted entitlements, next the new
 * ones (both arrays of objects with "type" and "value", e.g. two
 * decisions' "entitlements"; other members are ignored, and so are
 * elements without string type/value). Items are matched by (type,
 * value) and, when both have a string "target", by target too.
 *   add    in next, not in prev (the next element, copied)
 *   remove in prev, not in next (the prev element, copied)
 *   keep   in both (the next element, copied)
 * Pure: prev and next are not modified. On PG_OK the caller owns out
 * (pg_move_clear). Errors: PG_ERR_INVALID (not arrays), PG_ERR_NOMEM.
 */
typedef struct pg_move {
    json_t *add;
    json_t *remove;
    json_t *keep;
} pg_move_t;

PG_MUST_USE pg_status_t pg_policy_move(const json_t *prev, const json_t *next,
                                       pg_move_t *out);
void pg_move_clear(pg_move_t *m);

#endif
