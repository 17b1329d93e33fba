/*
 * provgate core: OpenID Connect login (authorization code + PKCE S256).
 *
 * Start: state, nonce and PKCE verifier are random (32 bytes each), stored
 * in Redis under the state with a short TTL (SET NX EX), and the state is
 * bound to this browser by a sealed state cookie.
 *
 * Callback: the state must be in one of this browser's state cookies, is
 * consumed with GETDEL (single use), and gives back nonce, verifier, the
 * validated return path and the app. Then: RFC 9207 "iss" check, token
 * request, our own ID token validation (one rate-limited JWKS refresh on an
 * unknown kid), correlation, policy + provisioning, and only then a new
 * session with a fresh id (no fixation).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis.h>

#include "provgate/util.h"
#include "gate_int.h"

#define PG_TOKEN_BYTES 32
#define PG_TOKEN_LEN   44   /* base64url of 32 bytes + NUL */

static void pg_cb_provider(pg_op_t *op, pg_status_t st);
static void pg_cb_correlated(pg_op_t *op, pg_status_t st);
static void pg_cb_validate(pg_op_t *op);

/* ---- start ----------------------------------------------------------- */

static void
pg_login_saved(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    pg_gate_result_t *res;
    char challenge[64], sealed[512], name[128];
    char *url = NULL, *cookie;

    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_STATUS) {
        pg_op_deny(op, 503, "login.start", "identity_store_unavailable",
                   "The sign-in service cannot store your sign-in right now. "
                   "Please try again shortly.", NULL);
        return;
    }
    if (pg_sha256_b64url(op->verifier, strlen(op->verifier), challenge,
                         sizeof(challenge)) != PG_OK
        || pg_oidc_auth_url(&op->prov->meta, op->prov->cfg, op->state,
                            op->nonce, challenge, &url) != PG_OK
        || pg_seal(op->g->cfg->session.key, "state", op->state,
                   strlen(op->state), sealed, sizeof(sealed)) != PG_OK) {
        free(url);
        pg_op_fail(op, 503, "internal_error", "Sign-in could not start.",
                   NULL);
        return;
    }
    res = pg_result_new(PG_RES_REDIRECT, 302);
    if (res == NULL) {
        free(url);
        pg_op_finish(op, NULL);
        return;
    }
    res->location = url;
    snprintf(name, sizeof(name), "%s%.16s", op->g->state_cookie_prefix,
             op->state);
    cookie = pg_cookie_line(op->g->cfg, name, sealed,
                            (long) op->prov->cfg->state_ttl_s);
    if (pg_result_cookie(res, cookie) != PG_OK) {
        free(cookie);
        pg_gate_result_free(res);
        pg_op_finish(op, NULL);
        return;
    }
    free(cookie);
    if (pg_login_choice_cookie(op, res) != PG_OK) {
        pg_gate_result_free(res);
        pg_op_finish(op, NULL);
        return;
    }
    pg_op_audit(op, "login.start", "info", "redirect_to_idp", NULL, NULL);
    pg_op_finish(op, res);
}

static void
pg_login_meta(pg_op_t *op, pg_status_t st)
{
    int parked = 0;
    json_t *rec;
    char *json, *key;
    char state[PG_TOKEN_LEN], nonce[PG_TOKEN_LEN], verifier[PG_TOKEN_LEN];
    char ttl[32];
    const char *argv[6];

    if (st == PG_OK) {
        st = pg_provider_ready(op, 0, 0, pg_login_meta, &parked);
        if (st == PG_OK && parked) {
            return;
        }
    }
    if (st != PG_OK) {
        pg_op_deny(op, 503, "login.start", "idp_unavailable",
                   "The identity provider cannot be reached. Please try "
                   "again shortly.", NULL);
        return;
    }

    if (pg_random_token(PG_TOKEN_BYTES, state, sizeof(state)) != PG_OK
        || pg_random_token(PG_TOKEN_BYTES, nonce, sizeof(nonce)) != PG_OK
        || pg_random_token(PG_TOKEN_BYTES, verifier, sizeof(verifier))
           != PG_OK) {
        pg_op_fail(op, 503, "internal_error", "Sign-in could not start.",
                   NULL);
        return;
    }
    op->state = strdup(state);
    op->nonce = strdup(nonce);
    op->verifier = strdup(verifier);
    if (op->return_to == NULL) {
        op->return_to = strdup("/");
    }
    rec = json_pack("{s:s, s:s?, s:s, s:s, s:s, s:I}", "idp", op->idp,
                    "app", op->app, "nonce", nonce, "verifier", verifier,
                    "return_to", op->return_to ? op->return_to : "/",
                    "created", (json_int_t) time(NULL));
    json = rec != NULL ? json_dumps(rec, JSON_COMPACT) : NULL;
    json_decref(rec);
    key = pg_key(op->g, "state:", state);
    if (op->state == NULL || op->nonce == NULL || op->verifier == NULL
        || json == NULL || key == NULL) {
        free(json);
        free(key);
        pg_op_finish(op, NULL);
        return;
    }
    snprintf(ttl, sizeof(ttl), "%u", op->prov->cfg->state_ttl_s);
    argv[0] = "SET"; argv[1] = key; argv[2] = json; argv[3] = "EX";
    argv[4] = ttl; argv[5] = "NX";
    st = pg_op_redis(op, pg_login_saved, 6, argv, NULL);
    free(json);
    free(key);
    if (st != PG_OK) {
        pg_op_deny(op, 503, "login.start", "identity_store_unavailable",
                   "The sign-in service is unavailable.", NULL);
    }
}

/*
 * No valid session on a protected location. Browsers (GET/HEAD wanting
 * HTML) are sent to the provider; API clients get 401. On a location with
 * several IdPs the user's choice (parameter or remembered cookie) picks
 * the provider first, or the chooser page is the answer (choice.c).
 */
void
pg_login_start(pg_op_t *op)
{
    if (!op->wants_html) {
        pg_op_deny(op, 401, "access.denied", "login_required",
                   "Authentication is required.", NULL);
        return;
    }
    if (op->idp == NULL && op->nidps > 0) {
        if (pg_login_choose(op)) {
            return;     /* the chooser page (or an error) was the answer */
        }
    }
    if (op->uri != NULL && pg_return_path_ok(op->uri, strlen(op->uri))
        && op->return_to == NULL) {
        op->return_to = strdup(op->uri);
    }
    {
        const pg_idp_cfg_t *d = pg_config_idp(op->g->cfg, op->idp);

        if (d != NULL && d->type == PG_IDP_SAML) {
            pg_saml_login_start(op, d);
            return;
        }
    }
    if (op->prov == NULL) {
        op->prov = pg_provider_find(op->g, op->idp);
    }
    if (op->prov == NULL) {
        pg_op_fail(op, 503, "idp_not_configured",
                   "This location names an unknown identity provider.", NULL);
        return;
    }
    pg_login_meta(op, PG_OK);
}

/* ---- callback -------------------------------------------------------- */

static void
pg_cb_session_indexed(pg_op_t *op, pg_status_t st)
{
    pg_gate_result_t *res = op->res;
    json_t *f;

    op->res = NULL;
    /* the per-identity session index is best effort; the session exists */
    f = json_pack("{s:s, s:s?, s:b, s:b}", "correlation",
                  op->corr_how ? op->corr_how : "existing",
                  "account", op->have_scim ? op->scim.account_id : NULL,
                  "account_created", op->have_scim && op->scim.created,
                  "account_updated", op->have_scim && op->scim.updated);
    if (f != NULL && op->verify_us > 0) {
        json_object_set_new(f, "saml_verify_us", json_integer(op->verify_us));
        json_object_set_new(f, "saml_verify_offloaded",
                            json_boolean(op->verify_offloaded));
    }
    if (f != NULL && op->ob_wake != NULL) {
        /* outbox delivery: how this login learnt of the outcome */
        json_object_set_new(f, "outbox_wake", json_string(op->ob_wake));
    }
    if (f != NULL && op->prov_start_us > 0) {
        /* policy decision + provisioning (direct, or the outbox wait) */
        json_object_set_new(f, "provision_us",
                            json_integer((json_int_t) (pg_mono_us()
                                                       - op->prov_start_us)));
    }
    pg_op_audit(op, "login.success", "success", "ok", f, NULL);
    pg_op_finish(op, res);
}

/* 1 when some target deprovisions on session end: only then is the
 * session owner index (<p>sessowner) kept, since only the sidecar's
 * expiry job empties it. */
static int
pg_login_track_owner(const pg_config_t *cfg)
{
    size_t i;

    for (i = 0; i < cfg->ntargets; i++) {
        if (cfg->targets[i].deprov_action != PG_DEPROV_NONE) {
            return 1;
        }
    }
    return 0;
}

static void
pg_cb_session_saved(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    const char *argv[7];
    char *key, *owners;

    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_STATUS) {
        pg_gate_result_free(op->res);
        op->res = NULL;
        pg_op_deny(op, 503, "login.failure", "identity_store_unavailable",
                   "Your session could not be stored. Please try again.",
                   NULL);
        return;
    }
    key = pg_key(op->g, "idsess:", op->iid);
    owners = pg_key(op->g, "sessowner", NULL);
    if (key == NULL || owners == NULL) {
        free(key);
        free(owners);
        pg_cb_session_indexed(op, PG_ERR_NOMEM);
        return;
    }
    if (pg_login_track_owner(op->g->cfg)) {
        /* the identity's session index, and sid -> iid for the sidecar's
         * expiry job (it learns of an ended session only by its key name;
         * it removes the entry when the session ends) */
        argv[0] = "EVAL";
        argv[1] = "redis.call('SADD', KEYS[1], ARGV[1]) "
                  "redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) return 1";
        argv[2] = "2"; argv[3] = key; argv[4] = owners; argv[5] = op->sid;
        argv[6] = op->iid;
        st = pg_op_redis(op, pg_cb_session_indexed, 7, argv, NULL);
    } else {
        argv[0] = "SADD"; argv[1] = key; argv[2] = op->sid;
        st = pg_op_redis(op, pg_cb_session_indexed, 3, argv, NULL);
    }
    free(key);
    free(owners);
    if (st != PG_OK) {
        pg_cb_session_indexed(op, st);
    }
}

static void
pg_cb_provisioned(pg_op_t *op, pg_status_t st)
{
    char sid[PG_TOKEN_LEN], sealed[512], ttl[32];
    char *json = NULL, *key = NULL, *cookie;
    const char *argv[5], *nid;
    size_t i;
    json_t *sess;
    pg_gate_result_t *res;
    const pg_config_t *cfg = op->g->cfg;

    if (pg_random_token(PG_GATE_SID_BYTES, sid, sizeof(sid)) != PG_OK) {
        pg_op_fail(op, 503, "internal_error", "No session id.", NULL);
        return;
    }
    free(op->sid);
    op->sid = strdup(sid);
    sess = json_pack("{s:s, s:s, s:O, s:O, s:O, s:{}, s:I, s:I, s:s?}",
                     "iid", op->iid, "idp", op->idp,
                     "iss", json_object_get(op->claims, "iss"),
                     "sub", json_object_get(op->claims, "sub"),
                     "attrs", op->attrs, "apps",
                     "created", (json_int_t) time(NULL),
                     "exp", (json_int_t) time(NULL) + cfg->session.ttl_s,
                     "id_token", op->id_token);
    if (sess == NULL || op->sid == NULL
        || pg_session_add_app(op, sess) != PG_OK
        || (op->saml_subject != NULL
            && json_object_set(sess, "saml", op->saml_subject) != 0)) {
        json_decref(sess);
        pg_op_finish(op, NULL);
        return;
    }
    json = json_dumps(sess, JSON_COMPACT);
    json_decref(sess);
    key = pg_key(op->g, "sess:", sid);
    res = pg_result_new(PG_RES_REDIRECT, 302);
    if (json == NULL || key == NULL || res == NULL
        || pg_seal(cfg->session.key, "session", sid, strlen(sid), sealed,
                   sizeof(sealed)) != PG_OK) {
        free(json);
        free(key);
        pg_gate_result_free(res);
        pg_op_finish(op, NULL);
        return;
    }
    res->location = strdup(op->return_to ? op->return_to : "/");
    cookie = pg_cookie_line(cfg, cfg->session.cookie_name, sealed,
                            (long) cfg->session.ttl_s);
    st = pg_result_cookie(res, cookie);
    free(cookie);
    for (i = 0; st == PG_OK && i < op->nstate_cookie_names; i++) {
        /* clear this browser's state cookies: the login is done */
        if (res->nset_cookies >= PG_GATE_MAX_SET_COOKIES) {
            break;
        }
        cookie = pg_cookie_line(cfg, op->state_cookie_names[i], "", 0);
        st = pg_result_cookie(res, cookie);
        free(cookie);
    }
    if (res->location == NULL || st != PG_OK) {
        free(json);
        free(key);
        pg_gate_result_free(res);
        pg_op_finish(op, NULL);
        return;
    }
    op->res = res;

    snprintf(ttl, sizeof(ttl), "%u", cfg->session.ttl_s);
    nid = json_string_value(json_object_get(op->saml_subject, "name_id"));
    if (nid != NULL) {
        /* SAML: the session and the NameID -> sessions index for
         * IdP-initiated logout (saml_slo.c) in one atomic step; the index
         * lives as long as the newest session in it */
        char *ikey = pg_saml_nameid_key(op->g, op->idp, nid);
        const char *ev[8];

        if (ikey == NULL) {
            free(json);
            free(key);
            pg_op_finish(op, NULL);
            return;
        }
        ev[0] = "EVAL";
        ev[1] = "redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) "
                "redis.call('SADD', KEYS[2], ARGV[3]) "
                "redis.call('EXPIRE', KEYS[2], ARGV[2]) "
                "return redis.status_reply('OK')";
        ev[2] = "2"; ev[3] = key; ev[4] = ikey; ev[5] = json; ev[6] = ttl;
        ev[7] = op->sid;
        st = pg_op_redis(op, pg_cb_session_saved, 8, ev, NULL);
        free(ikey);
    } else {
        argv[0] = "SET"; argv[1] = key; argv[2] = json; argv[3] = "EX";
        argv[4] = ttl;
        st = pg_op_redis(op, pg_cb_session_saved, 5, argv, NULL);
    }
    free(json);
    free(key);
    if (st != PG_OK) {
        pg_cb_session_saved(op, st);
    }
}

/* Claims are in op->claims and op->attrs: correlate, provision, session.
 * Shared by the OIDC callback and the SAML ACS. */
void
pg_login_claims_ready(pg_op_t *op)
{
    pg_identity_correlate(op, pg_cb_correlated);
}

static void
pg_cb_correlated(pg_op_t *op, pg_status_t st)
{
    if (op->app != NULL) {
        op->after_provision = pg_cb_provisioned;
        pg_provision_start(op);
        return;
    }
    pg_cb_provisioned(op, PG_OK);
}

static void
pg_cb_jwks_refreshed(pg_op_t *op, pg_status_t st)
{
    if (st != PG_OK) {
        pg_op_deny(op, 503, "login.failure", "idp_unavailable",
                   "The identity provider's keys cannot be loaded.", NULL);
        return;
    }
    pg_cb_validate(op);
}

static void
pg_cb_validate(pg_op_t *op)
{
    pg_idtoken_expect_t exp;
    const char *reason = "malformed";
    pg_err_t err = { "" };
    json_t *claims = NULL, *f;
    pg_status_t st;
    int parked = 0;
    const pg_oidc_idp_cfg_t *c = op->prov->cfg;

    memset(&exp, 0, sizeof(exp));
    exp.issuer = c->issuer;
    exp.client_id = c->client_id;
    exp.nonce = op->nonce;
    exp.algs = (const char *const *) c->allowed_algs;
    exp.now = (int64_t) time(NULL);
    exp.clock_skew_s = c->clock_skew_s;
    exp.max_age_s = c->max_auth_age_s;

    st = pg_idtoken_validate(op->id_token, strlen(op->id_token),
                             op->prov->jwks, &exp, &claims, &reason, &err);
    if (st == PG_ERR_NOT_FOUND && !op->jwks_retried) {
        op->jwks_retried = 1;
        st = pg_provider_ready(op, 1, 1, pg_cb_jwks_refreshed, &parked);
        if (st == PG_OK && parked) {
            return;
        }
        if (st == PG_OK) {
            pg_cb_validate(op);
            return;
        }
        /* PG_ERR_BUSY: refreshed too recently; the kid stays unknown */
    }
    if (claims == NULL || st != PG_OK) {
        f = json_pack("{s:s}", "detail", err.msg);
        pg_op_deny(op, 401, "login.failure", reason,
                   "The identity provider's answer could not be verified. "
                   "Please sign in again.", f);
        return;
    }
    op->claims = claims;
    st = pg_identity_attrs(op->g->cfg, claims, &op->attrs);
    if (st != PG_OK) {
        pg_op_deny(op, 401, "login.failure", "claims_unusable",
                   "Your identity could not be read from the sign-in.", NULL);
        return;
    }
    pg_identity_correlate(op, pg_cb_correlated);
}

static void
pg_cb_token(pg_op_t *op, pg_status_t st)
{
    const pg_http_response_t *resp = pg_op_response();
    pg_err_t err = { "" };
    json_t *f;

    if (st != PG_OK) {
        pg_op_deny(op, st == PG_ERR_TIMEOUT ? 504 : 503, "login.failure",
                   st == PG_ERR_TIMEOUT ? "idp_timeout" : "idp_unavailable",
                   "The identity provider did not answer. Please try again.",
                   NULL);
        return;
    }
    st = pg_oidc_token_response(resp->status, resp->body, resp->body_len,
                                &op->id_token, &err);
    if (st != PG_OK) {
        f = json_pack("{s:s, s:i}", "detail", err.msg, "http_status",
                      (int) resp->status);
        pg_op_deny(op, resp->status >= 500 ? 502 : 401, "login.failure",
                   "token_error",
                   "The identity provider refused the sign-in. Please sign "
                   "in again.", f);
        return;
    }
    pg_cb_validate(op);
}

static void
pg_cb_provider(pg_op_t *op, pg_status_t st)
{
    int parked = 0;
    char *body = NULL, *auth = NULL;
    const char *headers[3];
    size_t nh = 0;
    pg_http_request_t req;
    const pg_oidc_idp_cfg_t *c = op->prov->cfg;

    if (st == PG_OK) {
        st = pg_provider_ready(op, 1, 0, pg_cb_provider, &parked);
        if (st == PG_OK && parked) {
            return;
        }
    }
    if (st != PG_OK) {
        pg_op_deny(op, 503, "login.failure", "idp_unavailable",
                   "The identity provider cannot be reached.", NULL);
        return;
    }
    if (pg_oidc_token_request(c, op->code, op->verifier, &body, &auth)
        != PG_OK) {
        pg_op_finish(op, NULL);
        return;
    }
    headers[nh++] = "Content-Type: application/x-www-form-urlencoded";
    headers[nh++] = "Accept: application/json";
    if (auth != NULL) {
        headers[nh++] = auth;
    }
    memset(&req, 0, sizeof(req));
    req.method = "POST";
    req.url = op->prov->meta.token_endpoint;
    req.headers = headers;
    req.nheaders = nh;
    req.body = body;
    req.body_len = strlen(body);
    req.timeout_ms = c->http_timeout_ms;
    req.connect_timeout_ms = c->http_timeout_ms;
    req.max_response = PG_OIDC_MAX_TOKEN_RESPONSE;
    req.tls = c->tls;
    st = pg_op_http(op, pg_cb_token, &req);
    free(body);
    free(auth);
    if (st != PG_OK) {
        pg_cb_token(op, st);
    }
}

static void
pg_cb_state(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    json_t *rec;
    json_error_t jerr;
    const char *idp = NULL, *app = NULL, *nonce = NULL, *verifier = NULL;
    const char *ret = NULL;
    char *iss;

    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        pg_op_deny(op, 503, "login.failure", "identity_store_unavailable",
                   "The sign-in service is unavailable.", NULL);
        return;
    }
    if (reply->type != REDIS_REPLY_STRING) {
        pg_op_deny(op, 400, "login.failure", "state_unknown",
                   "This sign-in link has expired or was already used. "
                   "Please start again.", NULL);
        return;
    }
    rec = json_loadb(reply->str, reply->len, 0, &jerr);
    if (rec == NULL
        || json_unpack(rec, "{s:s, s?s, s:s, s:s, s:s}", "idp", &idp, "app",
                       &app, "nonce", &nonce, "verifier", &verifier,
                       "return_to", &ret) != 0) {
        json_decref(rec);
        pg_op_deny(op, 400, "login.failure", "state_corrupt",
                   "This sign-in cannot be completed.", NULL);
        return;
    }
    free(op->idp);
    free(op->app);
    op->idp = strdup(idp);
    op->app = app ? strdup(app) : NULL;
    op->nonce = strdup(nonce);
    op->verifier = strdup(verifier);
    op->return_to = strdup(pg_return_path_ok(ret, strlen(ret)) ? ret : "/");
    json_decref(rec);
    if (op->idp == NULL || op->nonce == NULL || op->verifier == NULL
        || op->return_to == NULL) {
        pg_op_finish(op, NULL);
        return;
    }
    op->target = op->app ? pg_config_target(op->g->cfg, op->app) : NULL;
    op->prov = pg_provider_find(op->g, op->idp);
    if (op->prov == NULL || (op->app != NULL && op->target == NULL)) {
        pg_op_deny(op, 400, "login.failure", "state_stale_config",
                   "This sign-in was started with another configuration.",
                   NULL);
        return;
    }
    /* RFC 9207: when the provider names itself, it must be ours */
    iss = pg_query_param(op->args, strlen(op->args), "iss");
    if (iss != NULL && strcmp(iss, op->prov->cfg->issuer) != 0) {
        free(iss);
        pg_op_deny(op, 400, "login.failure", "bad_iss_param",
                   "The sign-in answer came from an unexpected provider.",
                   NULL);
        return;
    }
    free(iss);
    pg_cb_provider(op, PG_OK);
}

void
pg_callback_start(pg_op_t *op)
{
    char *error;
    size_t i;
    int bound = 0;
    json_t *f;

    if (op->args == NULL || strlen(op->args) > PG_GATE_MAX_ARGS) {
        pg_op_deny(op, 400, "login.failure", "bad_callback",
                   "This sign-in answer is malformed.", NULL);
        return;
    }
    error = pg_query_param(op->args, strlen(op->args), "error");
    if (error != NULL) {
        char clean[64];

        pg_header_value_clean(error, strlen(error), clean, sizeof(clean));
        free(error);
        f = json_pack("{s:s}", "idp_error", clean);
        pg_op_deny(op, 401, "login.failure", "idp_error",
                   "The identity provider did not sign you in.", f);
        return;
    }
    op->state = pg_query_param(op->args, strlen(op->args), "state");
    op->code = pg_query_param(op->args, strlen(op->args), "code");
    if (op->state == NULL || op->code == NULL || op->state[0] == '\0'
        || op->code[0] == '\0' || strlen(op->state) > 128
        || strlen(op->code) > 2048) {
        pg_op_deny(op, 400, "login.failure", "bad_callback",
                   "This sign-in answer is incomplete.", NULL);
        return;
    }
    for (i = 0; i < op->nstate_cookies; i++) {
        if (pg_ct_equal(op->state_cookies[i], strlen(op->state_cookies[i]),
                        op->state, strlen(op->state))) {
            bound = 1;
        }
    }
    if (!bound) {
        pg_op_deny(op, 400, "login.failure", "state_not_bound",
                   "This sign-in was not started in this browser. Please "
                   "start again.", NULL);
        return;
    }
    pg_op_key(op, pg_cb_state, "GETDEL", "state:", op->state);
}
