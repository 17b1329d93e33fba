/*
 * provgate core: reconciliation of one target (docs/reconciliation.md).
 *
 * A run lists every account of the target (connector list(); incremental
 * with since_ms when the connector has PG_CONN_CAP_INCREMENTAL; a SCIM
 * target: GET /Users page by page, mapped by pg_scim_user_account(),
 * incremental with filter=meta.lastModified gt ... when its
 * ServiceProviderConfig says filter.supported, else full with a "note") and
 * compares it with the desired state computed from the Redis identities
 * (<p>id:<iid>: attrs, left, acct:<target>, ents:<target>) and the policy
 * engine (pg_policy_decide + the target's attribute mapping). Findings:
 *
 *   orphaned  an active account linked to an identity that has left or is
 *             no longer granted the target; or an unlinked account whose
 *             key only correlates to a left identity
 *   rogue     an account linked to no identity (created outside provgate;
 *             "candidate" names the identity whose mapped key matches, if
 *             any), or groups on a linked account that provgate neither
 *             granted nor recorded (rogue entitlements)
 *   missing   an identity granted the target with no account listed (full
 *             runs only)
 *   drift     a linked account whose attributes differ from the mapped
 *             desired attributes, that lacks granted groups, or that is
 *             disabled although granted
 *   sod       a toxic combination the policy engine reports for the
 *             identity (not exempted) whose entitlements of this target
 *             are all present on the account
 *
 * Each kind has an action from the target's "reconcile" object: report,
 * revert (enqueue "ensure" of the desired state; for orphaned: "disable"),
 * adopt (rogue with a candidate: HSET acct:<target>), disable (enqueue
 * "disable"). Enqueued actions go through the durable outbox, so they are
 * retried and deduplicated. Every finding and action is audited
 * (recon.finding, recon.action); a run ends with a report (JSON, and CSV
 * when a report directory is configured).
 */
#ifndef PROVGATE_RECON_H
#define PROVGATE_RECON_H

#include <jansson.h>
#include "provgate/audit.h"
#include "provgate/config.h"
#include "provgate/host.h"
#include "provgate/redis.h"

#define PG_RECON_MAX_ACCOUNTS  1000000u  /* accounts listed per run, cap */
#define PG_RECON_MAX_IDENTITIES 1000000u /* identities scanned per run */

typedef enum pg_recon_kind {
    PG_RECON_ORPHANED = 0,
    PG_RECON_ROGUE,
    PG_RECON_MISSING,
    PG_RECON_DRIFT,
    PG_RECON_SOD,
    PG_RECON_NKINDS
} pg_recon_kind_t;

typedef enum pg_recon_action {
    PG_RECON_REPORT = 0,
    PG_RECON_REVERT,
    PG_RECON_ADOPT,
    PG_RECON_DISABLE
} pg_recon_action_t;

/* A target's "reconcile" object, parsed. */
typedef struct pg_recon_cfg {
    pg_recon_action_t action[PG_RECON_NKINDS];   /* default: report */
    unsigned schedule_s;       /* 0 = no scheduled runs; else 1..604800 */
    unsigned page_size;        /* SCIM targets: Users per LIST page,
                                  1..PG_RECON_PAGE_MAX; 0 = not set (the
                                  default PG_RECON_PAGE_DEFAULT) */
    int groups_from_members;   /* SCIM targets: "groups": "group_members"
                                  (1): memberships from listing /Groups'
                                  members; "user_attribute" (0, default):
                                  from each User's "groups" */
} pg_recon_cfg_t;

#define PG_RECON_PAGE_DEFAULT 100u  /* SCIM LIST page size by default */
#define PG_RECON_PAGE_MAX    1000u  /* reconcile.page_size cap */

/*
 * Parse and validate a "reconcile" object at JSON path path:
 * {"orphaned"|"rogue"|"missing"|"drift"|"sod": action, "schedule_s": N,
 * "page_size": N (1..PG_RECON_PAGE_MAX), "groups": "user_attribute" |
 * "group_members"}. adopt is only valid for rogue. (page_size and groups
 * are for SCIM targets: pg_recon_new and the config loader refuse them on
 * connector targets, which list with their connector's own settings.) Unknown keys are errors. obj NULL gives
 * the defaults. PG_ERR_CONFIG with "<path>.<key>: <reason>" in err.
 */
PG_MUST_USE pg_status_t pg_recon_cfg_parse(const json_t *obj,
                                           const char *path,
                                           pg_recon_cfg_t *out,
                                           pg_err_t *err);

/* Stable names ("orphaned", ..., "report", ...). Never NULL. */
const char *pg_recon_kind_str(pg_recon_kind_t k);
const char *pg_recon_action_str(pg_recon_action_t a);

/*
 * The pure comparison (no I/O). Borrowed inputs:
 *  accounts    array of {"key", "id"?, "attrs"?: {}, "groups"?: [str],
 *              "active"?: bool (default true)} as listed
 *  identities  array of {"iid", "left"?: bool, "acct"?: account id or key
 *              recorded by provgate, "ents"?: [str] recorded groups,
 *              "desired"?: null (not granted) or {"key", "attrs": {},
 *              "groups": [str]}, "sod"?: [{"policy", "values": [str]}]}
 *  full        1: every account was listed (missing is computed);
 *              0: incremental (no missing findings)
 * *out (caller owns) receives an array of findings, in account order then
 * identity order: {"kind", "reason", "account"?, "account_id"?,
 * "identity"?, "candidate"?, "attrs"?: [{"attr","desired","actual"}],
 * "missing_groups"?: [..], "extra_groups"?: [..], "policy"?, "groups"?}.
 * Errors: PG_ERR_INVALID (not arrays), PG_ERR_NOMEM.
 */
PG_MUST_USE pg_status_t pg_recon_compare(const json_t *accounts,
                                         const json_t *identities, int full,
                                         json_t **out);

/*
 * Counts of a findings array into an object {"orphaned": n, ...} (every
 * kind present, 0 when none). NULL on allocation failure. Caller owns it.
 */
json_t *pg_recon_counts(const json_t *findings);

/*
 * The CSV of a report (header "kind,reason,account,account_id,identity,
 * action,action_outcome,detail"), fields quoted per RFC 4180. malloc'd,
 * caller frees; NULL on allocation failure.
 */
char *pg_recon_csv(const json_t *report);

typedef struct pg_recon pg_recon_t;

/*
 * A reconciler for every target of cfg, connector and SCIM (it builds its
 * own connectors, SCIM capability caches and HTTP client on host). redis and audit are borrowed and
 * must outlive it. report_dir (may be NULL: reports stay in memory) is
 * where <target>-<run id>.json/.csv are written. PG_ERR_CONFIG with err
 * when a connector or a "reconcile" object is bad (page_size on a
 * connector target included).
 */
PG_MUST_USE pg_status_t pg_recon_new(const pg_config_t *cfg,
                                     const pg_host_t *host, pg_redis_t *redis,
                                     pg_audit_t *audit,
                                     const char *report_dir,
                                     pg_recon_t **out, pg_err_t *err);
void pg_recon_free(pg_recon_t *r);

/* Called once per run with the report (borrowed; deep-copy to keep it):
 * {"run", "target", "mode": "full"|"incremental", "since_ms",
 *  "started_ms", "finished_ms", "accounts", "identities", "counts": {kind:
 *  n}, "actions": {"enqueued", "adopted", "reported", "skipped",
 *  "failed"}, "findings": [finding + "action", "action_outcome"],
 *  "files"?: {"json", "csv"}, "error"?, "note"?: why the mode differs
 *  from the one asked for}. st PG_OK when the run completed. */
typedef void (*pg_recon_cb)(void *arg, pg_status_t st, const json_t *report);

/*
 * Start a run on target (a target of cfg). incremental = 1 uses
 * since_ms = the start of the last completed run of this target when the
 * connector can filter, or the SCIM target advertises filtering (else the
 * run is full). One run at a time per reconciler (PG_ERR_BUSY).
 * Synchronous errors: PG_ERR_NOT_FOUND (no such target), PG_ERR_INVALID (connector cannot list), PG_ERR_BUSY,
 * PG_ERR_NOMEM; everything else through cb (never inside this call).
 */
PG_MUST_USE pg_status_t pg_recon_run(pg_recon_t *r, const char *target,
                                     int incremental, pg_recon_cb cb,
                                     void *arg);

/* The parsed "reconcile" settings of target, or NULL if no such target.
 * Valid while r lives. */
const pg_recon_cfg_t *pg_recon_target_cfg(const pg_recon_t *r,
                                          const char *target);

#endif
