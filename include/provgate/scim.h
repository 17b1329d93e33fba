/*
 * provgate core: SCIM 2.0 client connector (RFC 7643/7644), asynchronous.
 *
 * pg_scim_ensure() drives a small state machine over pg_http:
 *   lookup  GET  /Users?filter=userName eq "<v>"   (or GET /Users/<known id>)
 *   create  POST /Users           when absent; on 409 look up again, adopt
 *   update  PATCH /Users/<id>     "replace" for each top-level attribute
 *                                 whose desired value differs
 *   groups  GET /Groups?filter=displayName eq "<g>", then
 *           PATCH /Groups/<gid> "add" members for each missing membership
 * All JSON is built with jansson; filter values are escaped (\" and \\).
 * Every HTTP call is reported through on_call for auditing.
 */
#ifndef PROVGATE_SCIM_H
#define PROVGATE_SCIM_H

#include <jansson.h>
#include "provgate/config.h"
#include "provgate/http.h"

#define PG_SCIM_MAX_RESPONSE (1024u * 1024u)

typedef struct pg_scim_op pg_scim_op_t;

typedef struct pg_scim_result {
    pg_status_t st;
    char *account_id;        /* target's id of the account (malloc'd) or NULL */
    int created;             /* POST made the account */
    int adopted;             /* an existing account was linked */
    int updated;             /* a PATCH changed attributes */
    unsigned groups_added;   /* memberships added */
    long http_status;        /* last HTTP status seen (0 if none) */
    const char *reason;      /* stable code: "ok", "target_unavailable",
                                "target_timeout", "target_rejected",
                                "target_auth", "bad_response",
                                "group_unknown", "mapping_failed" */
    char detail[256];        /* human detail, no secrets */
} pg_scim_result_t;

typedef void (*pg_scim_cb)(void *arg, const pg_scim_result_t *res);

/* Called for every HTTP call: method, path relative to base, status (0 if
 * none), transport status and elapsed ms. */
typedef void (*pg_scim_call_cb)(void *arg, const char *method,
                                const char *path, long status,
                                pg_status_t st, unsigned ms);

typedef struct pg_scim_request {
    const pg_target_cfg_t *target;
    const json_t *desired;          /* SCIM User from pg_scim_build_user() */
    const char *known_id;           /* account id remembered, or NULL */
    const char *const *groups;      /* group displayNames, NULL-terminated */
    pg_scim_call_cb on_call;        /* may be NULL */
} pg_scim_request_t;

/* Build the desired SCIM User from the target's mapping and identity
 * attributes ("name.givenName" paths become nested objects; "emails" may be
 * a template: it becomes [{"value": v, "type": "work", "primary": true}]). */
PG_MUST_USE pg_status_t pg_scim_build_user(const pg_target_cfg_t *t,
                                           const json_t *attrs, json_t **out,
                                           pg_err_t *err);

/* Start; cb runs exactly once (never inside this call) unless cancelled.
 * req is copied. */
PG_MUST_USE pg_status_t pg_scim_ensure(pg_http_t *http,
                                       const pg_scim_request_t *req,
                                       pg_scim_cb cb, void *arg,
                                       pg_scim_op_t **op_out);
void pg_scim_cancel(pg_scim_op_t *op);

/* Escape a value for a SCIM filter string literal; malloc'd. */
char *pg_scim_filter_escape(const char *v);

#endif
