/*
 * provgate core: the gateway's request decisions, host-independent.
 *
 * The nginx module (or any other host) hands each request to the gate and
 * gets back one result: allow (with trusted identity headers), redirect or
 * an error/info page, plus cookies to set. The gate does all protocol work
 * (OIDC login, session, correlation, policy, provisioning, audit) over the
 * non-blocking clients in pg_redis/pg_http, so the host only has to suspend
 * the request and resume it when the callback runs.
 *
 * Callback contract: a start function returns PG_OK with *op_out set and
 * calls cb exactly once later from the event loop, or returns PG_OK with
 * *op_out == NULL after filling *sync_res (answered without I/O), or fails
 * (nothing is called). pg_gate_cancel() guarantees cb is never called.
 * Results are owned by the caller: pg_gate_result_free().
 */
#ifndef PROVGATE_GATE_H
#define PROVGATE_GATE_H

#include <stddef.h>
#include "provgate/config.h"
#include "provgate/host.h"

typedef struct pg_gate pg_gate_t;
typedef struct pg_gate_op pg_gate_op_t;

typedef enum {
    PG_RES_ALLOW = 1,   /* forward upstream with headers[] set */
    PG_RES_REDIRECT,    /* status 302/303 to location */
    PG_RES_PAGE         /* status with a body (HTML or JSON) */
} pg_res_kind_t;

typedef struct pg_kv {
    char *name;
    char *value;        /* already free of CR/LF/NUL */
} pg_kv_t;

#define PG_GATE_MAX_SET_COOKIES 4

typedef struct pg_gate_result {
    pg_res_kind_t kind;
    int status;
    char *location;                 /* REDIRECT */
    char *body;                     /* PAGE */
    size_t body_len;
    const char *content_type;       /* static string */
    pg_kv_t *headers;               /* ALLOW: identity headers to add; one
                                       allocation with its strings */
    size_t nheaders;
    char *set_cookies[PG_GATE_MAX_SET_COOKIES]; /* full Set-Cookie values */
    size_t nset_cookies;
    int no_store;                   /* send Cache-Control: no-store */
    unsigned retry_after_s;         /* PAGE: send Retry-After when > 0 */
} pg_gate_result_t;

/* What the host knows about the request. Strings need not be NUL-terminated
 * beyond their lengths; the gate copies what it keeps. */
/* Several IdPs on one location (IdP discovery, docs/architecture.md):
 * the most a location may list, the query parameter that carries the
 * user's choice and the longest value of it (or of the remembering cookie
 * "<session cookie>_idp") that is looked at. */
#define PG_GATE_MAX_IDPS        32
#define PG_IDP_CHOICE_PARAM     "provgate_idp"
#define PG_IDP_CHOICE_MAX       64
#define PG_IDP_CHOICE_MAX_AGE_S (90L * 24 * 3600)

typedef struct pg_gate_req {
    const char *idp;                /* provgate oidc:<idp>, or NULL */
    const char *const *idps;        /* provgate with several IdPs
                                       (oidc:a saml:b ...): the location's
                                       list, nidps >= 2, and idp is NULL; a
                                       session of any of them is accepted,
                                       a login lets the user choose */
    size_t nidps;
    const char *app;                /* provgate_app target, or NULL */
    const char *method;
    const char *uri;                /* path + "?" + args as received */
    size_t uri_len;
    const char *args;               /* query string without '?' */
    size_t args_len;
    const char *const *cookies;     /* raw Cookie header values */
    size_t ncookies;
    int wants_html;                 /* Accept allows text/html, GET/HEAD */
    const char *client_ip;
    const char *request_id;         /* host's request id, for audit */
    const char *body;               /* request body (SAML ACS), or NULL */
    size_t body_len;
} pg_gate_req_t;

typedef void (*pg_gate_cb)(void *arg, pg_gate_result_t *res);

/* Create the per-process gate: Redis and HTTP clients, audit, caches.
 * cfg must outlive the gate. */
PG_MUST_USE pg_status_t pg_gate_new(const pg_config_t *cfg,
                                    const pg_host_t *host, pg_gate_t **out,
                                    pg_err_t *err);

/* pg_gate_new() flags (pg_gate_new_with). */
#define PG_GATE_NO_LOGIN 0x1u   /* a process that serves no sign-in (the
                                   sidecar): SAML IdP metadata URLs are not
                                   fetched; every SAML sign-in, ACS and SLO
                                   step answers 503 idp_unavailable */

/* pg_gate_new() with PG_GATE_* flags. */
PG_MUST_USE pg_status_t pg_gate_new_with(const pg_config_t *cfg,
                                         const pg_host_t *host,
                                         unsigned flags, pg_gate_t **out,
                                         pg_err_t *err);
void pg_gate_free(pg_gate_t *g);

/* A protected location: valid session -> ALLOW; none -> start login.
 * With req->idps (several IdPs): a session of any of them is ALLOW; none
 * -> the login of the chosen IdP, or the 200 chooser page (pg_idp_choice). */
PG_MUST_USE pg_status_t pg_gate_access(pg_gate_t *g, const pg_gate_req_t *req,
                                       pg_gate_cb cb, void *arg,
                                       pg_gate_op_t **op_out,
                                       pg_gate_result_t **sync_res);

/* The OIDC redirect URI (provgate_callback). */
PG_MUST_USE pg_status_t pg_gate_callback(pg_gate_t *g,
                                         const pg_gate_req_t *req,
                                         pg_gate_cb cb, void *arg,
                                         pg_gate_op_t **op_out,
                                         pg_gate_result_t **sync_res);

/* provgate_logout: end the session, then RP-initiated logout if possible. */
PG_MUST_USE pg_status_t pg_gate_logout(pg_gate_t *g, const pg_gate_req_t *req,
                                       pg_gate_cb cb, void *arg,
                                       pg_gate_op_t **op_out,
                                       pg_gate_result_t **sync_res);

/* The SAML Assertion Consumer Service (provgate_saml_acs): req->body is
 * the HTTP-POST form body (SAMLResponse, RelayState). */
PG_MUST_USE pg_status_t pg_gate_saml_acs(pg_gate_t *g, const pg_gate_req_t *req,
                                         pg_gate_cb cb, void *arg,
                                         pg_gate_op_t **op_out,
                                         pg_gate_result_t **sync_res);

/* The SAML Single Logout endpoint (provgate_saml_slo <idp>; the IdP's
 * slo_url): req->idp is that IdP; GET carries a Redirect-binding
 * SAMLRequest/SAMLResponse in req->args (raw, as received), POST an
 * HTTP-POST form in req->body. No session cookie is needed. See
 * docs/saml-slo.md. */
PG_MUST_USE pg_status_t pg_gate_saml_slo(pg_gate_t *g, const pg_gate_req_t *req,
                                         pg_gate_cb cb, void *arg,
                                         pg_gate_op_t **op_out,
                                         pg_gate_result_t **sync_res);

/* The admin API (provgate_admin): access requests (list, approve, deny)
 * and the outbox's dead letters (list, retry, discard); JSON in and out,
 * authenticated by the session cookie, authorised by config admin.role or
 * by being a request's approver. req->method "POST" for the actions.
 * Routes: docs/admin-api.md. */
PG_MUST_USE pg_status_t pg_gate_admin(pg_gate_t *g, const pg_gate_req_t *req,
                                      pg_gate_cb cb, void *arg,
                                      pg_gate_op_t **op_out,
                                      pg_gate_result_t **sync_res);

/* How the IdP of a login on a location with several IdPs was chosen. */
typedef enum {
    PG_IDP_CHOOSE = 0,              /* nothing valid: show the chooser */
    PG_IDP_CHOSEN_PARAM,            /* ?provgate_idp=<name> */
    PG_IDP_CHOSEN_COOKIE            /* the remembered choice */
} pg_idp_choice_t;

/*
 * The IdP choice of a browser request without a session on a location that
 * allows idps[0..nidps) (pure; the gate's login uses it).
 *
 * uri[0..uri_len) is the request target as received ("path?query").
 * A provgate_idp parameter decides when present: a value naming one of
 * idps (at most PG_IDP_CHOICE_MAX bytes) chooses it; anything else (empty,
 * "*", an IdP not allowed here, a repeated or malformed parameter) asks
 * for the chooser, even when a choice is remembered. Without the
 * parameter, the first value of cookie cookie_name (in the raw Cookie
 * header values cookies[0..ncookies), each capped like the session cookie)
 * that names one of idps chooses it; else the chooser.
 *
 * *chosen points into idps (never into the request) or is NULL;
 * *return_uri (may be NULL: not wanted) is a malloc'd copy of uri without
 * any provgate_idp parameter, or NULL when uri is over 8 KiB. Returns
 * PG_ERR_NOMEM (outputs cleared) on OOM, else PG_OK.
 */
PG_MUST_USE pg_status_t pg_idp_choice(const char *const *idps, size_t nidps,
                                      const char *uri, size_t uri_len,
                                      const char *cookie_name,
                                      const char *const *cookies,
                                      size_t ncookies, pg_idp_choice_t *how,
                                      const char **chosen, char **return_uri);

void pg_gate_cancel(pg_gate_op_t *op);
void pg_gate_result_free(pg_gate_result_t *res);

/* The header names the gate sets; the host strips client copies of them
 * (NULL-terminated, valid for the gate's life). */
const char *const *pg_gate_header_names(const pg_gate_t *g);

/* The SP metadata of SAML identity provider idp, as a 200 result with
 * Content-Type application/samlmetadata+xml; NULL when idp is not a SAML
 * provider or on OOM. Needs no gate (it is built from the config). */
pg_gate_result_t *pg_gate_saml_metadata(const pg_config_t *cfg,
                                        const char *idp);

/* A page result for errors the host detects itself (e.g. no gate). */
pg_gate_result_t *pg_gate_error_page(int status, const char *reason,
                                     const char *message);

#endif
