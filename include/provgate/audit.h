/*
 * provgate core: structured audit events.
 *
 * Each event is one JSON object: {"ts","id","instance","type","outcome",
 * "reason", ...fields}. It is appended as one line to the audit file (one
 * write(2) with O_APPEND, so lines from several workers never interleave)
 * and XADDed to the Redis stream <prefix><stream> (MAXLEN ~ cap) without
 * waiting. If Redis is down the file still gets the event and a warning is
 * logged. Values under keys that look like secrets ("token", "secret",
 * "password", "assertion", "code", "cookie", "authorization") are removed
 * before anything is written, at any depth.
 */
#ifndef PROVGATE_AUDIT_H
#define PROVGATE_AUDIT_H

#include <jansson.h>
#include "provgate/host.h"
#include "provgate/config.h"
#include "provgate/redis.h"

#define PG_AUDIT_ID_LEN 27   /* random event id length, plus NUL */

typedef struct pg_audit pg_audit_t;

/* redis may be NULL (file only). The audit file is opened here. */
PG_MUST_USE pg_status_t pg_audit_new(const pg_host_t *host,
                                     const pg_audit_cfg_t *cfg,
                                     const char *instance, pg_redis_t *redis,
                                     pg_audit_t **out, pg_err_t *err);
void pg_audit_free(pg_audit_t *a);

/*
 * Emit one event. type: "login.success", "login.failure", "policy.decision",
 * "provision.call", ...; outcome: "success" | "failure" | "denied" | "info";
 * reason: stable reason code (may be NULL). fields is stolen (may be NULL).
 * id_out (may be NULL) receives the event id, shown to users on error
 * pages so an admin can find the event.
 */
void pg_audit_emit(pg_audit_t *a, const char *type, const char *outcome,
                   const char *reason, json_t *fields,
                   char id_out[PG_AUDIT_ID_LEN]);

/*
 * Reopen the audit file (log rotation). The new file is opened before the
 * old descriptor is closed; on failure (PG_ERR_IO, err says why) the old
 * descriptor stays in use. No file configured: PG_OK.
 */
PG_MUST_USE pg_status_t pg_audit_reopen(pg_audit_t *a, pg_err_t *err);

/* Remove secret-looking members in place (exposed for tests). */
void pg_audit_scrub(json_t *v);

#endif
