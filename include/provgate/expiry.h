/*
 * provgate core: deprovisioning that nobody has to remember (the sidecar's
 * expiry job). Host-independent: runs on any pg_host_t.
 *
 * Three rules, all of them through the durable outbox and the audit stream:
 *
 *   session end   a target with "deprovision_on_session_end": when the last
 *                 session of an identity has ended (expiry, logout, SAML
 *                 SLO, a JML kill) and grace_s passed, the account the
 *                 gateway provisioned just in time there (field
 *                 jit_at:<app> on <p>id:<iid>) is disabled ("disable") or
 *                 only its jit entitlements are removed ("remove_jit": an
 *                 "ensure" without them). Audit: deprovision.session_end.
 *   jit lifetime  a granted jit entitlement (an item of ents:<app> with
 *                 "jit_lifetime_s") expires lifetime seconds after the
 *                 later of its grant (jit_at:<app>) and the last use of
 *                 the app (used:<app>, written by the gateway at most once
 *                 a minute per session); expired items are removed with an
 *                 "ensure". Audit: deprovision.grant_expired.
 *   inactivity    a target with "inactivity_days" (or "inactivity_s"):
 *                 when the app was not used for that long (the later of
 *                 jit_at:<app> and used:<app>; when neither exists the
 *                 clock starts at the first sweep that sees the account),
 *                 every entitlement in it is revoked (an "ensure" with
 *                 none; the account stays). Audit: deprovision.inactive.
 *   retention     a target with "delete_after_days" (or "delete_after_s"):
 *                 a leaver's account (disabled at the leave; the leave
 *                 time is the field "left", removed by a rehire) is deleted
 *                 ("delete") once the retention has passed, once per leave
 *                 (mark retained:<app> = left; a fixed idempotency key
 *                 derived from iid, target and left). The other rules do
 *                 not apply to such a target while the person has left.
 *                 Audit: jml.retention.
 *
 * Detection: per identity an atomic Lua script drops ended sessions from
 * <p>idsess:<iid> (and <p>sessowner), counts the live ones and keeps
 * last_session_end (set when none is live and the recorded one is older
 * than every jit_at:*, removed while one is live). It runs
 *   - for every identity (a full sweep: SCAN <p>id:*) every
 *     "expiry.sweep_s", so nothing is missed while the sidecar was down;
 *   - for the owners of ended sessions (a targeted run) within 200 ms of a
 *     session key expiring or being deleted (pg_expiry_notify, fed from
 *     Redis keyspace notifications by the host; the owner is found in
 *     <p>sessowner, sid -> iid, written by the gateway at login; an
 *     unknown owner makes the next run a full sweep);
 *   - for identities whose next deadline (grace end, grant expiry,
 *     inactivity) has come (a targeted run; the deadlines are kept in
 *     memory and rebuilt by every full sweep).
 * Decided operations are remembered (deprov_at:<app>) so a session end is
 * acted on once.
 *
 * Everything is asynchronous on pg_redis; no callback runs inside the call
 * that started it.
 */
#ifndef PROVGATE_EXPIRY_H
#define PROVGATE_EXPIRY_H

#include <stdint.h>
#include <jansson.h>
#include "provgate/audit.h"
#include "provgate/config.h"
#include "provgate/host.h"
#include "provgate/redis.h"

/*
 * The pure decision for one identity. fields is its <p>id:<iid> hash as a
 * JSON object of strings (borrowed); live is its number of live sessions;
 * now is unix seconds. On PG_OK *actions (caller owns, json_decref) is an
 * array of
 *   {"target", "event": "deprovision.session_end" | "deprovision.
 *    grant_expired" | "deprovision.inactive" | "expiry.baseline" |
 *    "jml.retention", "kind": "disable" | "ensure" | "delete" | "none",
 *    "left" and "delete_after_s" (integers, "jml.retention" only),
 *    "entitlements": [...] (the
 *    desired state), "removed": [...], "mark": {field: value} (fields to
 *    set on the identity once the operation is queued)}
 * at most one per target, and *next_due (may be NULL) is the earliest
 * future unix time at which something may fall due (0 = nothing).
 * Malformed fields are ignored (never acted on). Errors: PG_ERR_INVALID,
 * PG_ERR_NOMEM.
 */
PG_MUST_USE pg_status_t pg_expiry_decide(const pg_config_t *cfg,
                                         const json_t *fields, long live,
                                         int64_t now, json_t **actions,
                                         int64_t *next_due);

typedef struct pg_expiry pg_expiry_t;

/* A run finished: summary (borrowed) {"mode": "full" | "targeted",
 * "identities", "operations", "errors"}; st PG_OK unless Redis failed
 * midway. */
typedef void (*pg_expiry_cb)(void *arg, pg_status_t st, const json_t *summary);

/*
 * A runner for cfg. redis and audit are borrowed and must outlive it.
 * Nothing runs until pg_expiry_start(). cb (may be NULL) is told about
 * every finished sweep.
 */
PG_MUST_USE pg_status_t pg_expiry_new(const pg_config_t *cfg,
                                      const pg_host_t *host, pg_redis_t *redis,
                                      pg_audit_t *audit, pg_expiry_cb cb,
                                      void *arg, pg_expiry_t **out);
/* Cancel everything in flight (queued operations stay queued). */
void pg_expiry_free(pg_expiry_t *x);

/*
 * Enable the keyspace notifications the host subscribes to (CONFIG GET
 * notify-keyspace-events, then CONFIG SET adding "Egx" when missing; a
 * server that refuses CONFIG is logged and the periodic sweep still
 * works; skipped when no target has "deprovision_on_session_end"), then
 * sweep at once and every cfg->expiry_sweep_s.
 */
PG_MUST_USE pg_status_t pg_expiry_start(pg_expiry_t *x);

/* A full sweep now (or right after the running run). */
void pg_expiry_kick(pg_expiry_t *x);

/*
 * A key expired or was deleted (the message of __keyevent@<db>__:expired
 * or :del). A session key (<p>sess:*) schedules a targeted run for its
 * owner within 200 ms (at most 4096 waiting; beyond that a full sweep);
 * other keys, keys over 1 KiB, and everything when no target has
 * "deprovision_on_session_end" are ignored.
 */
void pg_expiry_notify(pg_expiry_t *x, const char *key);

/* The keyspace-notification channels the host should SUBSCRIBE to for
 * Redis database db, written into two buffers of size >= 48. */
void pg_expiry_channels(int db, char *expired, char *deleted, size_t sz);

#endif
