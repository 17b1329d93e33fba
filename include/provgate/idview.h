/*
 * provgate core: a read-only view of identities for the sidecar's admin
 * API (GET /identities, docs/sidecar.md "Identities"). Host-independent,
 * asynchronous on pg_redis (one EVAL per lookup, SCAN + one EVAL per page
 * of a listing); no callback runs inside the call that started it.
 *
 * What is shown comes from <p>id:<iid> through a whitelist of fields
 * (attrs, created, updated, source, iss, sub, left, acct:*, ents:*,
 * jit_at:*, used:*, deprov_at:*, retained:*, last_session_end); anything
 * else on the hash is never copied, and session ids, tokens and cookie
 * material are never read (live sessions are only counted).
 */
#ifndef PROVGATE_IDVIEW_H
#define PROVGATE_IDVIEW_H

#include <stdint.h>
#include <jansson.h>
#include "provgate/config.h"
#include "provgate/redis.h"
#include "provgate/status.h"

#define PG_IDVIEW_VALUE_MAX   1024   /* a lookup value (key, email, sub) */
#define PG_IDVIEW_IID_MAX     128    /* an identity id */
#define PG_IDVIEW_LIST_MAX    1000   /* identities per listing page */
#define PG_IDVIEW_REQS_MAX    1000   /* pending access requests examined */

typedef enum {
    PG_IDVIEW_BY_ID = 0,       /* the identity id itself */
    PG_IDVIEW_BY_HR_KEY,       /* <p>idx:hr:<sha256(key)> */
    PG_IDVIEW_BY_EMAIL,        /* every correlation index fed by an email */
    PG_IDVIEW_BY_SUB           /* <p>idx:sub:<sha256(iss \n sub)> per issuer */
} pg_idview_by_t;

/*
 * The index keys (without the key prefix) a lookup reads, as a new JSON
 * array of strings in *keys (caller owns):
 *   BY_HR_KEY  "idx:hr:" sha256(value)
 *   BY_EMAIL   "idx:<index>:" sha256(lower(value)) for every distinct index
 *              of a gateway correlation rule on the claim "email" and of an
 *              hr_source.correlation rule on the attribute "email" (the
 *              index "email" when there is none)
 *   BY_SUB     "idx:sub:" sha256(iss \n value) for iss, or when iss is NULL
 *              for every distinct OIDC issuer configured (SAML entity ids
 *              come from metadata: pass iss for them)
 * BY_ID: PG_ERR_INVALID. value: 1..PG_IDVIEW_VALUE_MAX bytes, else
 * PG_ERR_INVALID with err. Errors: PG_ERR_INVALID, PG_ERR_NOMEM.
 */
PG_MUST_USE pg_status_t pg_idview_keys(const pg_config_t *cfg,
                                       pg_idview_by_t by, const char *value,
                                       const char *iss, json_t **keys,
                                       pg_err_t *err);

/* 1 when s is an acceptable identity id (1..PG_IDVIEW_IID_MAX of
 * A-Z a-z 0-9 - _ .). */
int pg_idview_iid_ok(const char *s);

/*
 * The view of one identity (pure). fields: its hash as a JSON object of
 * strings (borrowed); live: live sessions; requests: array of pending
 * access requests {"id", "target", "type", "value", "state", "expires_at",
 * "created"} (borrowed, may be NULL); now: unix s. *out (caller owns):
 *   {"id", "state": "active" | "left", "left_at": s | null, "created",
 *    "updated", "source", "login": {"issuer", "subject"} | null,
 *    "attributes": {...},
 *    "accounts": {target: {"id", "username" | null, "state": "active" |
 *       "disabled" | "deleted", "entitlements": [...],
 *       "provisioned_by_login_at": s | null, "last_used": s | null,
 *       "configured": bool}},
 *    "jit": [{"target", "type", "value", "lifetime_s", "granted_at",
 *             "expires_at"}],
 *    "sessions": {"live": n}, "access_requests": [...]}
 * Account state is what provgate last set: "deleted" once the leave
 * retention queued the deletion, "disabled" for a leaver or after a
 * session-end disable, else "active". Errors: PG_ERR_INVALID, PG_ERR_NOMEM.
 */
PG_MUST_USE pg_status_t pg_idview_render(const pg_config_t *cfg,
                                         const char *iid,
                                         const json_t *fields, long live,
                                         const json_t *requests, int64_t now,
                                         json_t **out);

typedef struct pg_idview_req pg_idview_req_t;

/*
 * Result of a lookup or a listing page. st: PG_OK with result (borrowed:
 * the view, or the page {"identities": [{"id", "state", "left_at",
 * "created", "username", "email", "hr_key"}], "cursor": "0" when done});
 * PG_ERR_NOT_FOUND (result NULL); PG_ERR_CONFLICT with result
 * {"candidates": [iid, ...]} when the lookup matched several identities;
 * PG_ERR_REDIS / PG_ERR_TIMEOUT / PG_ERR_NOMEM.
 */
typedef void (*pg_idview_cb)(void *arg, pg_status_t st, const json_t *result);

/*
 * Look one identity up (BY_ID: value is the iid, checked with
 * pg_idview_iid_ok). Synchronous errors (no callback): PG_ERR_INVALID with
 * err, PG_ERR_NOMEM, PG_ERR_REDIS. *req_out (may be NULL) can be cancelled
 * until cb runs. cfg and r must outlive the request.
 */
PG_MUST_USE pg_status_t pg_idview_get(pg_redis_t *r, const pg_config_t *cfg,
                                      pg_idview_by_t by, const char *value,
                                      const char *iss, pg_idview_cb cb,
                                      void *arg, pg_idview_req_t **req_out,
                                      pg_err_t *err);

/*
 * One page of identities: SCAN <cursor> MATCH <p>id:* COUNT limit, then
 * their summary (only leavers when left_only). A page may hold fewer than
 * limit (even none) while cursor is not "0": go on with the returned
 * cursor. cursor: decimal digits, at most 20 ("0" to start); limit
 * 1..PG_IDVIEW_LIST_MAX. Errors as pg_idview_get.
 */
PG_MUST_USE pg_status_t pg_idview_list(pg_redis_t *r, const pg_config_t *cfg,
                                       const char *cursor, unsigned limit,
                                       int left_only, pg_idview_cb cb,
                                       void *arg, pg_idview_req_t **req_out,
                                       pg_err_t *err);

/* Cancel: its callback will not run; req is invalid afterwards. */
void pg_idview_cancel(pg_idview_req_t *req);

#endif
