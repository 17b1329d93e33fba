/*
 * provgate core: Join / Move / Leave from an authoritative HR export
 * (the sidecar's batch source). Host-independent: runs on any pg_host_t.
 *
 * One import:
 *   read      the export (pg_read_file, capped by the feed's max_file_bytes)
 *   diff      against <p>hr:snapshot (pg_hrfeed_diff: malformed rows are
 *             reported with their line and skipped; a mass leave or too many
 *             bad rows refuse the whole file, nothing is applied)
 *   join/move correlate the HR key to ONE identity (atomic Lua): by
 *             <p>idx:hr:<sha256(key)>, and by the login correlation indexes
 *             (e.g. a verified email), so a person who already logged in is
 *             not duplicated; two different identities matching one record
 *             become a correlation case (<p>cases) for an admin, never a
 *             guess. The HR attributes are merged into the identity's.
 *             Then for every target: the policy decision; granted ->
 *             an "ensure" operation in the outbox; no longer granted but an
 *             account exists -> "disable" (or "delete" per target).
 *   leave     every target where the identity has an account -> "disable"
 *             (or "delete"); every session of the identity is ended at
 *             once (sessions deleted, pg:revoked notified: gateways refuse
 *             the next request) and the identity is marked as left.
 *   commit    the new snapshot is stored only after every operation was
 *             enqueued, so an import cut short is simply run again: the
 *             outbox deduplicates pending operations and applying desired
 *             state twice changes nothing.
 * Every step is audited (jml.join / jml.move / jml.leave / jml.case /
 * jml.import).
 */
#ifndef PROVGATE_JML_H
#define PROVGATE_JML_H

#include <jansson.h>
#include "provgate/audit.h"
#include "provgate/config.h"
#include "provgate/host.h"
#include "provgate/redis.h"

typedef struct pg_jml pg_jml_t;

/*
 * A JML runner for cfg's "hr_source" (see docs/sidecar.md). redis and
 * audit are borrowed. PG_ERR_CONFIG with err when the feed config is bad;
 * PG_ERR_NOT_FOUND when cfg has no "hr_source".
 */
PG_MUST_USE pg_status_t pg_jml_new(const pg_config_t *cfg,
                                   const pg_host_t *host, pg_redis_t *redis,
                                   pg_audit_t *audit, pg_jml_t **out,
                                   pg_err_t *err);
void pg_jml_free(pg_jml_t *j);

/*
 * Called once per import with a summary object (borrowed):
 * {"file", "joins", "moves", "leaves", "unchanged", "cases", "errors":
 *  [{"line", "reason"}], "operations", "refused"?: reason}.
 * st is PG_OK when the import was applied (snapshot committed).
 */
typedef void (*pg_jml_cb)(void *arg, pg_status_t st, const json_t *summary);

/*
 * Import the export at path (or the configured file when path is NULL) as
 * of today. Only one import runs at a time (PG_ERR_BUSY). force = 1
 * overrides the mass-leave guard. Synchronous errors: PG_ERR_BUSY,
 * PG_ERR_NOMEM, PG_ERR_INVALID (path NULL with hr_source.drop_dir: the
 * caller picks the file); everything else is reported through cb (never
 * inside this call).
 */
PG_MUST_USE pg_status_t pg_jml_import(pg_jml_t *j, const char *path,
                                      int force, pg_jml_cb cb, void *arg);

/*
 * Apply one Join/Move/Leave event from another system (the sidecar's
 * webhook): {"id": "<event id>", "type": "join"|"move"|"leave", "key":
 * "<HR key>", "attributes": {"<attr>": "<string>", ...}} (attributes
 * optional for a leave). The same steps as an import run for that one
 * person (correlation, decisions, outbox operations; a leave ends every
 * session), without touching the HR snapshot. Idempotent by event id:
 * <p>jml:event:<id> is set (7 days) once every operation is enqueued; an
 * id seen before reports {"duplicate": true} and changes nothing. A crash
 * in between leaves the id unset, so the sender's retry applies the event
 * again, which the outbox and desired-state operations make harmless.
 * Synchronous errors: PG_ERR_INVALID (err says which field),
 * PG_ERR_BUSY (an import or event is running: retry), PG_ERR_NOMEM.
 */
PG_MUST_USE pg_status_t pg_jml_event(pg_jml_t *j, const json_t *event,
                                     pg_jml_cb cb, void *arg, pg_err_t *err);

/*
 * An admin's decision on a correlation case (an HR record that two
 * identities matched: stored in P cases, see docs/sidecar.md):
 *   "link"    the record belongs to identity (one of the case's
 *             candidates);
 *   "new"     it is somebody else: a new identity;
 *   "dismiss" forget the case (nothing applied; the record is looked at
 *             again when it changes).
 * link/new pin the HR key to that identity (P hrpin:<hash>, which then
 * overrides every correlation index) and apply the record at once as a
 * join, like an event. Runs as a job (PG_ERR_BUSY while an import or event
 * runs; waits for the JML lease). Synchronous PG_ERR_INVALID for a bad
 * case id, action or identity (err says which); in cb PG_ERR_NOT_FOUND
 * for an unknown case, PG_ERR_INVALID when identity is not a candidate.
 * Audited as jml.case (linked, new_identity, dismissed).
 */
PG_MUST_USE pg_status_t pg_jml_case(pg_jml_t *j, const char *case_id,
                                    const char *action, const char *identity,
                                    pg_jml_cb cb, void *arg, pg_err_t *err);

/* The open correlation cases (at most 1000), each {"id", "hr_key",
 * "kind", "candidates", "attributes", "created", "source"}: cases is a
 * JSON array borrowed for the callback (NULL on error). */
typedef void (*pg_jml_cases_cb)(void *arg, pg_status_t st,
                                const json_t *cases);

/* One listing at a time (PG_ERR_BUSY); cb is never called from inside. */
PG_MUST_USE pg_status_t pg_jml_cases(pg_jml_t *j, pg_jml_cases_cb cb,
                                     void *arg);

/* The configured export path and poll interval (seconds; 0 = no polling). */
const char *pg_jml_file(const pg_jml_t *j);   /* NULL with drop_dir */
unsigned pg_jml_poll_s(const pg_jml_t *j);

#endif
