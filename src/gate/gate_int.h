/*
 * provgate core, gate internals (not a public contract).
 *
 * A pg_gate_op is one request's asynchronous flow. It waits for at most one
 * thing at a time (a Redis reply, an HTTP response, a SCIM operation, the
 * provider's metadata, or a retry timer); each wait stores its handle in the
 * op so that pg_gate_cancel() can withdraw it. Steps are plain functions
 * that either start the next wait or finish the op.
 */
#ifndef PROVGATE_GATE_INT_H
#define PROVGATE_GATE_INT_H

#include <stdint.h>
#include <jansson.h>

#include "provgate/audit.h"
#include "provgate/config.h"
#include "provgate/connector.h"
#include "provgate/gate.h"
#include "provgate/http.h"
#include "provgate/oidc.h"
#include "provgate/outbox.h"
#include "provgate/policy.h"
#include "provgate/redis.h"
#include "provgate/scim.h"

#define PG_GATE_MAX_COOKIE   4096    /* one Cookie header value */
#define PG_GATE_MAX_ARGS     8192    /* query string of the callback */
#define PG_GATE_MAX_SESSION  (256u * 1024u) /* session JSON in Redis */
#define PG_GATE_SID_BYTES    32
#define PG_GATE_LOCK_POLL_MS 50

typedef struct pg_gate_op pg_op_t;
typedef struct pg_provider pg_provider_t;

typedef void (*pg_step_fn)(pg_op_t *op, pg_status_t st);

/* A follower of one Redis Stream (follow.c). */
typedef void (*pg_follow_entry_fn)(void *arg, const char *const *names,
                                   const char *const *values, size_t n);
typedef void (*pg_follow_state_fn)(void *arg, int live);

typedef struct pg_follow {
    pg_gate_t              *g;
    pg_redis_t             *r;              /* own connection: XREAD BLOCK */
    pg_redis_op_t          *op;
    pg_timer_t             *retry;
    char                   *stream;
    char                    last_id[64];
    int                     live;
    pg_follow_entry_fn      on_entry;
    pg_follow_state_fn      on_state;
    void                   *arg;
} pg_follow_t;

/* Per-process session cache and its revocation feed (cache.c). */
typedef struct pg_cache {
    pg_gate_t              *g;
    json_t                 *map;            /* sid -> {"until", "s"} */
    pg_follow_t             feed;           /* <prefix>revoked */
    int                     live;           /* feed established */
} pg_cache_t;

/* Per-process runtime state of one OIDC provider. */
struct pg_provider {
    pg_gate_t              *gate;
    const pg_oidc_idp_cfg_t *cfg;
    pg_oidc_meta_t          meta;
    int                     have_meta;
    uint64_t                meta_expires;   /* now_ms deadline */
    pg_jwks_t              *jwks;
    uint64_t                jwks_fetched;   /* now_ms of last fetch start */
    int                     fetching;       /* 0, 1 = meta, 2 = jwks */
    pg_http_op_t           *hop;
    pg_op_t                *waiters;        /* ops waiting for a fetch */
    pg_op_t                *waking;         /* ops whose step is about to run */
};

/*
 * The SAML SP and Single Logout context one IdP uses now (saml_meta.c),
 * reference-counted on the loop thread: a flow or a verification job
 * holds a reference while it uses sp/slo, so a metadata refresh that swaps
 * them in never frees one in use. owned: sp/slo are freed with the last
 * reference (fetched metadata); else they belong to the config.
 */
typedef struct pg_saml_bind {
    unsigned                refs;
    int                     owned;
    struct pg_saml_sp      *sp;
    struct pg_saml_slo     *slo;            /* NULL without slo_url */
} pg_saml_bind_t;

/* Per-process runtime state of one SAML IdP (saml_meta.c). */
typedef struct pg_saml_prov {
    pg_gate_t              *gate;
    const pg_idp_cfg_t     *d;
    pg_saml_bind_t         *cur;            /* NULL until good metadata */
    char                   *entity_id;      /* pinned IdP entityID */
    pg_http_op_t           *hop;            /* metadata fetch in flight */
    pg_timer_t             *timer;          /* next fetch (URL only) */
    unsigned                backoff_s;      /* last retry delay, 0 after ok */
    char                    digest[64];     /* SHA-256 of the fetched
                                               document in use, "" before */
    unsigned                swaps;          /* fetched documents applied */
} pg_saml_prov_t;

struct pg_gate {
    const pg_config_t      *cfg;
    const pg_host_t        *host;
    pg_redis_t             *redis;
    pg_http_t              *http;
    pg_audit_t             *audit;
    pg_provider_t          *providers;      /* one per OIDC idp, cfg order */
    size_t                  nproviders;
    pg_saml_prov_t         *saml;           /* one per SAML idp, cfg order */
    size_t                  nsaml;
    const char             *header_names[6];
    pg_cache_t              cache;
    char                   *state_cookie_prefix; /* "<cookie>_st_" */
    char                   *idp_cookie_name; /* "<cookie>_idp": the
                                                remembered IdP choice */
    unsigned                flags;          /* PG_GATE_* (gate.h) */
    pg_scim_caps_t         *scim_caps;      /* per target (cfg order): the
                                               /ServiceProviderConfig read
                                               once by this process */
    pg_scim_oauth_t       **scim_oauth;     /* per target (cfg order): the
                                               client-credentials token
                                               cache of an "oauth2" target,
                                               else NULL */

    /* the provisioning outbox (outbox_login.c) */
    pg_redis_t             *ob_redis;       /* consumer: XREADGROUP BLOCK */
    pg_outbox_consumer_t   *ob_consumer;
    char                    ob_name[320];   /* its name "<instance>:<pid>",
                                               "" without a consumer */
    pg_follow_t             ob_events;      /* <prefix>outbox:events */
    int                     ob_following;
    pg_op_t                *ob_waiters;     /* logins waiting for an outcome */
    struct pg_ob_job       *ob_jobs;        /* operations being applied */
    pg_connector_t        **conns;          /* per target (cfg order); NULL
                                               for SCIM targets */

    /* last-use marks (access.c pg_usage_mark): hash of (sid, app) -> when
     * this process last wrote used:<app>; a collision costs one write */
    struct { uint64_t h; int64_t at; } usage[256];
};

enum { PG_FLOW_ACCESS = 1, PG_FLOW_CALLBACK, PG_FLOW_LOGOUT, PG_FLOW_SAML_ACS,
       PG_FLOW_OUTBOX, PG_FLOW_ADMIN, PG_FLOW_SAML_SLO };

struct pg_gate_op {
    pg_gate_t              *g;
    int                     flow;
    pg_gate_cb              cb;
    void                   *arg;

    /* at most one pending wait */
    pg_redis_op_t          *rop;
    pg_http_op_t           *hop;
    pg_scim_op_t           *sop;
    pg_timer_t             *timer;
    pg_provider_t          *waiting_on;     /* provider waiter list */
    pg_op_t                *wnext;
    pg_step_fn              next;           /* step to run when wait ends */

    /* the request */
    char                   *idp;
    char                  **idps;           /* the location's IdPs when it
                                               has several (idp NULL until
                                               the user chose one) */
    size_t                  nidps;
    const char             *idp_via;        /* "parameter" / "cookie": how
                                               idp was chosen (audited) */
    char                  **raw_cookies;    /* the Cookie header values,
                                               kept only with idps (the
                                               remembered choice) */
    size_t                  nraw_cookies;
    char                   *choice_cookie;  /* Set-Cookie remembering the
                                               choice, for the login's
                                               redirect (choice.c) */
    char                   *app;
    char                   *uri;
    char                   *args;
    char                   *client_ip;
    char                   *request_id;
    char                   *body;           /* SAML ACS form body */
    size_t                  body_len;
    int                     wants_html;
    char                   *sid;            /* from a valid session cookie */
    char                  **state_cookies;  /* unsealed state values */
    size_t                  nstate_cookies;
    char                   *state_cookie_names[PG_GATE_MAX_SET_COOKIES];
    size_t                  nstate_cookie_names;

    pg_provider_t          *prov;
    const pg_target_cfg_t  *target;

    /* flow data */
    char                   *state;
    char                   *code;
    char                   *nonce;
    char                   *verifier;
    char                   *return_to;
    char                   *id_token;
    json_t                 *claims;
    json_t                 *attrs;
    json_t                 *session;        /* session record being built */
    char                   *iid;
    const char             *corr_how;
    int                     jwks_retried;
    pg_decision_t           decision;
    char                   *lock_key;
    char                   *lock_token;
    uint64_t                lock_deadline;
    char                   *known_account;
    json_t                 *prev_ents;      /* ents:<app> before this login */
    json_t                 *revoke;         /* group names to remove (move) */
    size_t                  revoke_next;
    pg_scim_result_t        scim;           /* copy of the SCIM outcome */
    int                     have_scim;
    pg_step_fn              after_provision;
    pg_step_fn              after_correlate;
    long                    verify_us;      /* SAML: time in pg_saml_acs_validate */
    int                     verify_offloaded; /* it ran on a host thread */
    struct pg_saml_job     *job;            /* SAML verification in flight */
    json_t                 *saml_subject;   /* SAML login: {name_id, format,
                                               session_index} for SLO */
    struct pg_slo_job      *slo_job;        /* SLO verification in flight */
    int                     slo_post;       /* SLO message by HTTP-POST */
    uint64_t                started_ms;
    uint64_t                prov_start_us;  /* pg_provision_start (monotonic
                                               us), 0 before; audited as
                                               login.success provision_us */

    /* outbox delivery (outbox_login.c) */
    pg_outbox_req_t        *obreq;          /* enqueue in flight */
    char                   *ob_idem;        /* the operation waited for */
    pg_op_t                *ob_next;        /* g->ob_waiters link */
    int                     ob_listed;
    int                     ob_outcome;     /* 0 pending, 1 done, 2 failed */
    char                    ob_error[256];  /* last error reported */
    uint64_t                ob_deadline;
    int                     ob_own;         /* consumer op: delivered by this
                                               process's own enqueue */
    const char             *ob_wake;        /* how the outcome arrived:
                                               "local" (applied by this
                                               process), "event", "poll" */

    /* connector targets and deprovisioning (provision.c) */
    pg_conn_req_t          *creq;           /* connector call in flight */
    pg_connector_t         *creq_conn;
    int                     deprovision;    /* 0 ensure, 1 disable, 2 delete */
    int                     from_login;     /* an outbox op a login queued:
                                               record jit_at:<app> */

    /* approvals and the admin API (admin.c) */
    json_t                 *approved;       /* the identity's approved grants */
    pg_step_fn              req_next;
    json_t                 *admin_attrs;    /* the caller's attributes */
    char                   *admin_iid;      /* the caller's identity */
    int                     admin_is_admin; /* holds admin.role */
    int                     admin_route;
    char                   *admin_rid;      /* request / dead-letter /
                                               work item id */
    const pg_target_cfg_t  *admin_target;   /* work items: the target */
    json_t                 *admin_result;

    pg_gate_result_t       *res;
};

/* ---- gate.c ---------------------------------------------------------- */
/* Monotonic clock in microseconds (for durations in audit records). */
uint64_t pg_mono_us(void);

/* known_sid: the session id the caller already unsealed ("" for a cookie
 * that did not unseal), or NULL to parse the session cookie here. */
pg_op_t *pg_op_new(pg_gate_t *g, int flow, const pg_gate_req_t *req,
                   pg_gate_cb cb, void *arg, const char *known_sid);
void pg_op_free(pg_op_t *op);
/* Deliver res to the host and free op. */
void pg_op_finish(pg_op_t *op, pg_gate_result_t *res);
/* Finish with an error page (audited by the caller). */
void pg_op_fail(pg_op_t *op, int status, const char *reason,
                const char *message, const char *event_id);
/* Audit helper: adds flow context (idp, app, client ip, identity). */
void pg_op_audit(pg_op_t *op, const char *type, const char *outcome,
                 const char *reason, json_t *fields, char id_out[PG_AUDIT_ID_LEN]);
/* Audit then fail. */
void pg_op_deny(pg_op_t *op, int status, const char *type, const char *reason,
                const char *message, json_t *fields);

/* lens may be NULL: every argv[i] is then a NUL-terminated string. */
PG_MUST_USE pg_status_t pg_op_redis(pg_op_t *op, pg_step_fn next, int argc,
                                    const char **argv, const size_t *lens);
void pg_op_key(pg_op_t *op, pg_step_fn next, const char *cmd,
               const char *prefix, const char *id);
/* The reply of the last Redis step (valid inside the step only). */
const struct redisReply *pg_op_reply(void);
PG_MUST_USE pg_status_t pg_op_http(pg_op_t *op, pg_step_fn next,
                                   const pg_http_request_t *req);
/* The response of the last HTTP step (valid inside the step only). */
const pg_http_response_t *pg_op_response(void);
PG_MUST_USE pg_status_t pg_op_sleep(pg_op_t *op, pg_step_fn next,
                                    uint64_t ms);

/* An error page that asks the client to come back (see gate.c). */
pg_gate_result_t *pg_page_retry(int status, int html, const char *reason,
                                const char *message, const char *event_id,
                                const char *refresh_url,
                                unsigned retry_after_s);

/* One "name=value" pair of a Cookie header value (not NUL-terminated);
 * 1 and *p advanced, or 0 at the end. The caller caps the header. */
int pg_cookie_next(const char **p, const char **k, size_t *klen,
                   const char **v, size_t *vlen);
/* Escape s for HTML text and attribute values into out (always NUL-
 * terminated; truncated at an entity boundary when outsz is short). */
void pg_html_escape(const char *s, char *out, size_t outsz);
/* The gate's HTML page shell (the error page template and CSS) around
 * head_html (extra <head> markup, may be ""), title (raw text, escaped
 * here, capped at 255 bytes) and body_html (trusted markup: escape every
 * value in it). malloc'd; NULL on OOM. */
char *pg_html_doc(const char *head_html, const char *title,
                  const char *body_html);

/* "<prefix><a><b>" into a malloc'd key. */
char *pg_key(pg_gate_t *g, const char *a, const char *b);

pg_gate_result_t *pg_result_new(pg_res_kind_t kind, int status);
PG_MUST_USE pg_status_t pg_result_cookie(pg_gate_result_t *res,
                                         const char *value);
char *pg_cookie_line_ss(const pg_config_t *cfg, const char *name,
                        const char *value, long max_age,
                        const char *samesite);
char *pg_cookie_line(const pg_config_t *cfg, const char *name,
                     const char *value, long max_age);

/* ---- follow.c -------------------------------------------------------- */
PG_MUST_USE pg_status_t pg_follow_start(pg_follow_t *f, pg_gate_t *g,
                                        const char *suffix,
                                        pg_follow_entry_fn on_entry,
                                        pg_follow_state_fn on_state,
                                        void *arg);
void pg_follow_stop(pg_follow_t *f);

/* ---- access.c: last use per (identity, app), for expiry ------------- */
/* Fire-and-forget HSET <p>id:<iid> used:<app> <unix s>, at most once a
 * minute per (session, app) in this process. sess is borrowed. */
void pg_usage_mark(pg_gate_t *g, const char *sid, const json_t *sess,
                   const char *app);

/* ---- cache.c --------------------------------------------------------- */
PG_MUST_USE pg_status_t pg_cache_init(pg_gate_t *g);
void pg_cache_free(pg_cache_t *c);
const json_t *pg_cache_get(pg_cache_t *c, const char *sid);
void pg_cache_put(pg_cache_t *c, const char *sid, json_t *sess, int64_t now_s);
void pg_cache_del(pg_cache_t *c, const char *sid);

/* ---- provider.c ------------------------------------------------------ */
pg_provider_t *pg_provider_find(pg_gate_t *g, const char *idp);
/* PG_OK when metadata (and JWKS when need_jwks) are ready now; otherwise
 * the op is parked and next runs when the fetch ends (with its status). */
PG_MUST_USE pg_status_t pg_provider_ready(pg_op_t *op, int need_jwks,
                                          int force_jwks, pg_step_fn next,
                                          int *parked);
void pg_provider_unpark(pg_op_t *op);
void pg_provider_clear(pg_provider_t *p);

/* ---- saml_meta.c ----------------------------------------------------- */
/* Per-process SAML IdP state: the config's SP/SLO for a metadata file;
 * with idp_metadata_url the first fetch is armed (never blocks). */
PG_MUST_USE pg_status_t pg_saml_meta_init(pg_gate_t *g, pg_err_t *err);
/* Cancel fetches and drop this process's references (jobs still running
 * keep theirs). */
void pg_saml_meta_free(pg_gate_t *g);
/* A new reference to the SP/SLO idp uses now, or NULL when idp is not a
 * SAML IdP of this process or has no good metadata yet (answer 503
 * idp_unavailable). Loop thread only; pair with pg_saml_bind_put(). */
pg_saml_bind_t *pg_saml_bind_get(pg_gate_t *g, const char *idp);
void pg_saml_bind_put(pg_saml_bind_t *b);

/* ---- saml_login.c ---------------------------------------------------- */
void pg_saml_login_start(pg_op_t *op, const pg_idp_cfg_t *d);
void pg_saml_acs_start(pg_op_t *op);
/* Detach an op from its SAML verification job (op is going away). */
void pg_saml_job_detach(pg_op_t *op);

/* ---- saml_slo.c ------------------------------------------------------ */
/* The provgate_saml_slo endpoint: the IdP's LogoutResponse (end of an
 * SP-initiated logout) or LogoutRequest (IdP-initiated), Redirect binding
 * in op->args, HTTP-POST in op->body (op->slo_post). */
void pg_saml_slo_start(pg_op_t *op);
/* Detach an op from its SLO verification job (op is going away). */
void pg_saml_slo_detach(pg_op_t *op);
/* SP-initiated logout, after the local session was ended (access.c): when
 * op->session is a SAML session of an IdP with SLO, redirect to the IdP
 * with a signed LogoutRequest and return 1 (the op is finished); else 0. */
int pg_saml_logout_redirect(pg_op_t *op);
/* "<prefix>saml:nameid:<idp>:<sha256(name_id)>" (malloc'd) or NULL. */
char *pg_saml_nameid_key(pg_gate_t *g, const char *idp, const char *name_id);

/* login.c: continue a login whose op->claims/op->attrs are set. */
void pg_login_claims_ready(pg_op_t *op);

/* ---- choice.c: several IdPs on one location ------------------------- */
/* 1 when name may sign in on op's location: its only IdP, one of its
 * IdPs, or any IdP when it names none. */
int pg_op_idp_allowed(const pg_op_t *op, const char *name);
/* A browser login on a location with several IdPs (op->idps) and no IdP
 * chosen yet: either op->idp, op->return_to (and op->choice_cookie for a
 * choice made by parameter) are set and 0 is returned, so the login goes
 * on with that IdP; or the op was finished (the chooser page, audited as
 * login.start idp_choice, or an error) and 1 is returned. */
int pg_login_choose(pg_op_t *op);
/* Add op->choice_cookie (if any) to the login's redirect res. */
PG_MUST_USE pg_status_t pg_login_choice_cookie(pg_op_t *op,
                                               pg_gate_result_t *res);

/* ---- login.c --------------------------------------------------------- */
void pg_login_start(pg_op_t *op);
void pg_callback_start(pg_op_t *op);

/* ---- access.c -------------------------------------------------------- */
void pg_access_start(pg_op_t *op);
void pg_logout_start(pg_op_t *op);
/* Record op->app's account and entitlements in a session record. */
PG_MUST_USE pg_status_t pg_session_add_app(pg_op_t *op, json_t *sess);
PG_MUST_USE pg_status_t pg_session_headers(pg_gate_t *g, const json_t *sess,
                                           const char *app,
                                           pg_gate_result_t *res);

/* ---- provision.c ----------------------------------------------------- */
/* Decide and provision op->app for op->iid/op->attrs, then run
 * op->after_provision(op, PG_OK) with op->decision and op->scim filled, or
 * finish the op with a denial/error page. */
void pg_provision_start(pg_op_t *op);
/* Apply op->decision to the target now (lease, SCIM, record): the part of
 * pg_provision_start after the decision; also the outbox job's body. */
void pg_provision_apply(pg_op_t *op);
void pg_prov_unlock(pg_op_t *op);

/* ---- admin.c --------------------------------------------------------- */
/* Read the identity's approved grants into op->approved, then next. */
void pg_req_load_approved(pg_op_t *op, pg_step_fn next);
/* op->attrs plus "approved" for a decision (new reference, NULL on OOM). */
json_t *pg_req_decision_attrs(const pg_op_t *op);
/* Record access requests for op->app's pending items, then next. */
void pg_req_record(pg_op_t *op, pg_step_fn next);
/* Finish op with the "awaiting approval" page (202). */
void pg_req_awaiting_page(pg_op_t *op);
/* The admin API (provgate_admin). */
void pg_admin_start(pg_op_t *op, int post);

/* The connector of a connector target (outbox_login.c), or NULL. */
pg_connector_t *pg_gate_connector(pg_gate_t *g, const pg_target_cfg_t *t);

/* ---- outbox_login.c -------------------------------------------------- */
/* Start the outbox consumer and the outcome feed (when a target uses the
 * outbox); stop them. */
PG_MUST_USE pg_status_t pg_ob_init(pg_gate_t *g, pg_err_t *err);
void pg_ob_free(pg_gate_t *g);
/* Enqueue op->decision for op->app, wait up to the target's wait_ms, then
 * run op->after_provision (done, or proceed mode) or finish the op with a
 * "being prepared" / failure page. */
void pg_ob_provision(pg_op_t *op);
/* Unlink a waiting op (pg_op_free). */
void pg_ob_unlist(pg_op_t *op);

/* ---- identity.c ------------------------------------------------------ */
/* Identity attributes from ID token claims, per cfg->claims. */
PG_MUST_USE pg_status_t pg_identity_attrs(const pg_config_t *cfg,
                                          const json_t *claims, json_t **out);
/* Correlate op->claims/op->attrs to one identity id (op->iid), then next. */
void pg_identity_correlate(pg_op_t *op, pg_step_fn next);

#endif
