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

#include <stdint.h>
#include <jansson.h>
#include "provgate/config.h"
#include "provgate/host.h"
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
                                "group_unknown", "mapping_failed",
                                "username_taken" */
    char detail[256];        /* human detail, no secrets */
    /* Added for pg_scim_run(); all valid only while the callback runs
     * (owned by the op; take a reference to keep them). */
    json_t *resource;        /* GET/REPLACE/MODIFY/DEACTIVATE/DISCOVER:
                                the resource returned, or NULL */
    json_t *resources;       /* LIST: array of every resource collected */
    size_t total_results;    /* LIST: totalResults reported by the server */
    const char *etag;        /* version of resource (ETag or meta.version) */
    unsigned retries;        /* delayed retries made (429/5xx/transport) */
    int reread;              /* a 412 made the op re-read and write again */
    unsigned collisions;     /* usernames skipped as other people's (the
                                account got candidate number collisions) */
} pg_scim_result_t;

/* Longest username collision handling builds (bytes). */
#define PG_SCIM_USERNAME_MAX 256

typedef void (*pg_scim_cb)(void *arg, const pg_scim_result_t *res);

/* Called for every HTTP call: method, path relative to base, status (0 if
 * none), transport status and elapsed ms. */
typedef void (*pg_scim_call_cb)(void *arg, const char *method,
                                const char *path, long status,
                                pg_status_t st, unsigned ms);

/* ---- discovery, retries, dialect (options shared by every call) ----- */

/*
 * Capabilities read from GET /ServiceProviderConfig, /ResourceTypes and
 * /Schemas (in that order, once). The caller keeps one per target
 * (zero-initialised, plain memory: nothing to free) and passes it in
 * pg_scim_options_t.caps: the first op that finds loaded == 0 reads the
 * documents and fills it in; later ops reuse it. The caller owns it and
 * must not free it while an op that uses it is running. A server without
 * an endpoint (any non-200, or an unusable body for the last two) gets
 * the defaults: patch 1, everything else 0, loaded 1; extensions and
 * attribute names as mapped.
 */
#define PG_SCIM_CAPS_EXT_MAX   8     /* User schema extensions kept */
#define PG_SCIM_CAPS_NAME_MAX  128   /* bytes of one URN / name + NUL */
#define PG_SCIM_CAPS_ATTR_MAX  160   /* User attribute names kept */

typedef struct pg_scim_caps {
    int loaded;
    int patch;               /* patch.supported */
    int etag;                /* etag.supported */
    int bulk;                /* bulk.supported */
    int filter;              /* filter.supported */
    int sort;                /* sort.supported */
    unsigned max_results;    /* filter.maxResults (0 = not stated) */
    unsigned bulk_max_ops;   /* bulk.maxOperations (0 = not stated) */
    unsigned bulk_max_payload; /* bulk.maxPayloadSize bytes (0 = not
                                  stated) */
    /* GET /ResourceTypes (discovery, after /ServiceProviderConfig): the
     * schema extensions the User resource type lists. types_loaded 0 (no
     * usable answer): extensions are sent as mapped. */
    int types_loaded;
    unsigned next;
    char ext[PG_SCIM_CAPS_EXT_MAX][PG_SCIM_CAPS_NAME_MAX];
    /* GET /Schemas: the User schema's attribute names as the server
     * spells them ("userName", "name.givenName": top level and one level
     * of sub-attributes). schemas_loaded 0: names are sent as mapped. */
    int schemas_loaded;
    unsigned nattr;
    char attr[PG_SCIM_CAPS_ATTR_MAX][PG_SCIM_CAPS_NAME_MAX / 2];
} pg_scim_caps_t;

/* Delayed retries of one call on 429, 5xx (except 501/505) and transport
 * errors. max_attempts counts every attempt of a call including the first;
 * 0 or 1 = off (the default). base_ms default 200, max_ms default 10000;
 * a Retry-After longer than max_ms is not retried (fails). */
typedef struct pg_scim_retry {
    unsigned max_attempts;   /* hard cap 10 */
    unsigned base_ms;
    unsigned max_ms;
} pg_scim_retry_t;

/* Per-target dialect quirks (see docs/connectors.md). */
typedef struct pg_scim_dialect {
    int member_remove_value; /* 0: {"op":"remove","path":"members[value eq
                                \"<id>\"]"}; 1: {"op":"remove","path":
                                "members","value":[{"value":"<id>"}]} */
    int force_put;           /* never PATCH: GET, change, PUT */
    int no_etag;             /* never send If-Match even if supported */
    int no_extensions;       /* ensure: drop schema extension attributes
                                ("urn:..." keys and their schemas entries)
                                for targets without extension support */
} pg_scim_dialect_t;

/*
 * OAuth 2.0 client credentials (RFC 6749 4.4) token cache, one per target,
 * created and freed by the caller. Ops using it (opts.oauth) send
 * "Authorization: Bearer <access_token>" instead of the target's own
 * auth. The token is fetched on first use (POST token_url,
 * grant_type=client_credentials[&scope=..], client id/secret with HTTP
 * basic, both form-urlencoded) through the op's pg_http, kept until
 * expires_in - skew_s, then fetched again. While a fetch runs, every op
 * that needs the token waits for that one fetch (never blocking). A 401
 * from the target drops the cached token. A failed fetch fails the waiting
 * ops with "target_auth" (token endpoint said 400/401) or
 * "target_unavailable". Free only when no op uses it (an in-flight fetch
 * is cancelled). Token responses are capped at 64 KiB, tokens at 8 KiB.
 */
typedef struct pg_scim_oauth pg_scim_oauth_t;

typedef struct pg_scim_oauth_cfg {
    const char *token_url;
    const char *client_id;
    const char *client_secret;
    const char *scope;       /* optional */
    unsigned skew_s;         /* default 30 */
    unsigned timeout_ms;     /* token call; 0 = pg_http default */
    pg_http_tls_t tls;       /* for the token endpoint (strings
                                borrowed: must outlive the cache) */
} pg_scim_oauth_cfg_t;

/* cfg strings are copied. PG_ERR_INVALID without url/id/secret or with
 * control bytes in them. */
PG_MUST_USE pg_status_t pg_scim_oauth_new(const pg_scim_oauth_cfg_t *cfg,
                                          pg_scim_oauth_t **out);
void pg_scim_oauth_free(pg_scim_oauth_t *o);

typedef struct pg_scim_options {
    const pg_host_t *host;   /* timers for retries; required when
                                retry.max_attempts > 1 */
    pg_scim_oauth_t *oauth;  /* token cache (caller-owned) or NULL */
    pg_scim_retry_t retry;
    pg_scim_caps_t *caps;    /* per-target cache (caller-owned) or NULL:
                                no discovery, PATCH assumed, no If-Match */
    pg_scim_dialect_t dialect;
    int bulk;                /* ensure: send the group membership PATCHes
                                in POST /Bulk requests when caps say the
                                target supports Bulk (needs caps); any
                                failed operation falls back to one PATCH
                                per group */
} pg_scim_options_t;

typedef struct pg_scim_request {
    const pg_target_cfg_t *target;
    const json_t *desired;          /* SCIM User from pg_scim_build_user() */
    const char *known_id;           /* account id remembered, or NULL */
    const char *const *groups;      /* group displayNames, NULL-terminated */
    pg_scim_call_cb on_call;        /* may be NULL */
    /* Added: NULL = the original behaviour (no discovery, no If-Match, no
     * retries; a 412 on the user PATCH still re-reads once). Copied. */
    const pg_scim_options_t *opts;
    /* Username collisions (a policy account rule's "username_collision";
     * docs/policies.md). collision_tries 0 = off: an account found by the
     * username is adopted. Otherwise, without known_id, an account found
     * under the username is adopted only when it is this person's: the
     * desired User has an externalId and the account's equals it. Another
     * person's account makes the next candidate of
     * pg_policy_username_candidate(username, collision_start,
     * collision_tries, collision_max_len, k) the username (k = 1, 2, ...),
     * looked up and created in turn; after collision_tries candidates the
     * operation fails with reason "username_taken". Only a top-level
     * username_attr ("userName") is renamed; a nested one turns this off. */
    unsigned collision_tries;
    unsigned collision_start;
    unsigned collision_max_len;
    /* An account rule's "initial_state": "disabled": a new account is
     * created with "active": false, and "active" is left out of every
     * update, so that enabling it (a person, an approval) sticks. */
    int create_disabled;
} pg_scim_request_t;

/* Build the desired SCIM User from the target's mapping and identity
 * attributes ("name.givenName" paths become nested objects; "emails" may be
 * a template: it becomes [{"value": v, "type": "work", "primary": true}]). */
PG_MUST_USE pg_status_t pg_scim_build_user(const pg_target_cfg_t *t,
                                           const json_t *attrs, json_t **out,
                                           pg_err_t *err);

/*
 * pg_scim_build_user() with a policy account rule laid over the target's
 * mapping: overrides (NULL: none) is an object of attribute path ->
 * string, e.g. {"userName": "jdoe", "name.givenName": "John",
 * "urn:...:enterprise:2.0:User:department": "ENG"}. A path it names
 * replaces the target mapping of exactly that path; other paths are
 * added. A non-string value, or two spellings of one path, is
 * PG_ERR_INVALID with "mapping_failed: ...". Borrowed arguments only.
 */
PG_MUST_USE pg_status_t pg_scim_build_user_with(const pg_target_cfg_t *t,
                                                const json_t *attrs,
                                                const json_t *overrides,
                                                json_t **out, pg_err_t *err);

/* Start; cb runs exactly once (never inside this call) unless cancelled.
 * req is copied. */
PG_MUST_USE pg_status_t pg_scim_ensure(pg_http_t *http,
                                       const pg_scim_request_t *req,
                                       pg_scim_cb cb, void *arg,
                                       pg_scim_op_t **op_out);
void pg_scim_cancel(pg_scim_op_t *op);

/* Escape a value for a SCIM filter string literal; malloc'd. */
char *pg_scim_filter_escape(const char *v);

/* ---- single operations (pg_scim_run) ------------------------------- */

typedef enum pg_scim_kind {
    PG_SCIM_OP_GET = 1,      /* GET /<coll>/<id> */
    PG_SCIM_OP_REPLACE,      /* PUT /<coll>/<id> with resource */
    PG_SCIM_OP_MODIFY,       /* PATCH /<coll>/<id> with operations
                                (PUT of the changed resource when PATCH is
                                not supported or dialect.force_put) */
    PG_SCIM_OP_DELETE,       /* DELETE /<coll>/<id> */
    PG_SCIM_OP_DEACTIVATE,   /* MODIFY: replace active=false */
    PG_SCIM_OP_GROUP_REMOVE, /* MODIFY /Groups/<id>: remove member_id */
    PG_SCIM_OP_LIST,         /* GET /<coll>?startIndex&count[&filter],
                                every page, accumulated */
    PG_SCIM_OP_DISCOVER      /* GET /ServiceProviderConfig into opts->caps */
} pg_scim_kind_t;

#define PG_SCIM_LIST_MAX 10000u   /* hard cap of pg_scim_op_request.max_results */
#define PG_SCIM_LIST_STREAM_MAX 1000000u /* the same with a page_cb */

/*
 * LIST page callback (pg_scim_op_request.page_cb): resources is one page's
 * "Resources" array (every element an object; borrowed, valid only during
 * the call), total the server's totalResults. Return 0 to go on, non-zero
 * to stop: the op then finishes with PG_ERR_CANCELLED, reason "stopped".
 * It must not cancel the op it is called for.
 */
typedef int (*pg_scim_page_cb)(void *arg, const json_t *resources,
                               size_t total);

typedef struct pg_scim_op_request {
    pg_scim_kind_t kind;
    const pg_target_cfg_t *target;
    int groups;                 /* 1: /Groups, 0: /Users (GROUP_REMOVE: 1) */
    const char *id;             /* resource id (group id for GROUP_REMOVE) */
    const char *member_id;      /* GROUP_REMOVE: the member to remove */
    const json_t *resource;     /* REPLACE: the full resource */
    const json_t *operations;   /* MODIFY: PatchOp "Operations" array */
    const char *if_match;       /* explicit version for writes, or NULL */
    const char *filter_attr;    /* LIST: userName, externalId, emails.value
                                   (displayName for groups), or NULL */
    const char *filter_value;
    unsigned page_size;         /* LIST: default 100, max caps.max_results */
    unsigned max_results;       /* LIST: default 1000, at most
                                   PG_SCIM_LIST_MAX (PG_SCIM_LIST_STREAM_MAX
                                   with page_cb); more -> "too_many" */
    pg_scim_page_cb page_cb;    /* LIST: NULL = accumulate every resource
                                   in res.resources; else each page goes to
                                   page_cb(page_arg, ...) as it arrives and
                                   nothing is kept (one page in memory,
                                   capped at PG_SCIM_MAX_RESPONSE bytes) */
    void *page_arg;
    uint64_t modified_since_ms; /* LIST: > 0 adds filter=meta.lastModified
                                   gt "<since - 1 ms, RFC 3339 UTC>", i.e.
                                   resources modified at or after
                                   modified_since_ms; not together with
                                   filter_attr (PG_ERR_INVALID) */
    pg_scim_call_cb on_call;    /* may be NULL */
    const pg_scim_options_t *opts; /* may be NULL; copied (caps borrowed) */
} pg_scim_op_request_t;

/* Start one operation; the callback contract is that of pg_scim_ensure()
 * (cb exactly once, never inside this call, unless pg_scim_cancel()).
 * Extra reason codes: "not_found" (404 on the resource, PG_ERR_NOT_FOUND),
 * "too_many" (LIST over max_results, PG_ERR_TOO_LARGE), "unsupported"
 * (a MODIFY the PUT fallback cannot apply locally, PG_ERR_INVALID). */
PG_MUST_USE pg_status_t pg_scim_run(pg_http_t *http,
                                    const pg_scim_op_request_t *req,
                                    pg_scim_cb cb, void *arg,
                                    pg_scim_op_t **op_out);

/*
 * The reconciliation view of one SCIM User resource (pure; borrowed
 * arguments). *out (caller owns) = {"key": the value at t->username_attr,
 * "id", "attrs": {path: value} for every other mapped path of t (the same
 * names as t->attrs[].scim_path, "urn:...:User:attr" extension paths
 * included; a multi-valued complex attribute such as emails becomes the
 * array of its "value"s; absent attributes are left out), "groups": the
 * "display" (else "value") of each "groups" entry, "active": the User's
 * active (true when absent), "modified_ms": meta.lastModified in ms (0 when
 * absent or unparsable)}. PG_ERR_INVALID when the User has no string id or
 * no string value at username_attr (or either is over 1024 bytes),
 * PG_ERR_NOMEM.
 */
PG_MUST_USE pg_status_t pg_scim_user_account(const pg_target_cfg_t *t,
                                             const json_t *user,
                                             json_t **out);

/* ---- error classification (pure) ------------------------------------ */

typedef enum pg_scim_action {
    PG_SCIM_ACT_OK = 0,          /* 2xx */
    PG_SCIM_ACT_ADOPT,           /* 409 (uniqueness or no scimType) */
    PG_SCIM_ACT_REREAD_RETRY,    /* 412: read the resource again, rewrite */
    PG_SCIM_ACT_RETRY_AFTER,     /* wait *delay_ms and send again */
    PG_SCIM_ACT_FAIL             /* give up */
} pg_scim_action_t;

/*
 * Classify the outcome of one call. transport != PG_OK means no response
 * (status ignored): PG_ERR_IO/PG_ERR_TIMEOUT are retryable, others fail.
 * scim_type: the SCIM error's scimType or NULL. retry_after: the raw header
 * (delta-seconds or an IMF-fixdate, compared with now_unix) or NULL.
 * attempt: attempts already made (>= 1). retry NULL or max_attempts <= 1:
 * retryable outcomes FAIL. rnd: random bits for the jitter. The delay is
 * max(Retry-After, jittered exponential backoff: half of
 * min(max_ms, base_ms << (attempt-1)) plus a random part of the other
 * half); a Retry-After over max_ms FAILs. delay_ms may be NULL.
 */
pg_scim_action_t pg_scim_classify(long status, pg_status_t transport,
                                  const char *scim_type,
                                  const char *retry_after, unsigned attempt,
                                  const pg_scim_retry_t *retry, uint32_t rnd,
                                  int64_t now_unix, unsigned *delay_ms);

#endif
