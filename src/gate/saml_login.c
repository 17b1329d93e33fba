/*
 * provgate core: SAML 2.0 SP-initiated login (HTTP-Redirect AuthnRequest).
 *
 * The AuthnRequest is built (and signed when configured) by the lasso SP
 * of the provider. RelayState is an opaque random reference, never the
 * return URL: the pending login {idp, app, return_to, request_id} is stored
 * under it in Redis (SET NX EX state_ttl_s) and the reference is bound to
 * this browser by a sealed state cookie, exactly like OIDC's state.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>

#include <hiredis.h>

#include "provgate/saml.h"
#include "provgate/util.h"
#include "gate_int.h"

#define PG_RELAY_BYTES 18      /* 24 base64url characters */

static void
pg_saml_login_saved(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    const pg_config_t *cfg = op->g->cfg;
    const pg_idp_cfg_t *d = pg_config_idp(cfg, op->idp);
    pg_gate_result_t *res = op->res;
    char sealed[512], name[128], *cookie;

    op->res = NULL;
    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_STATUS) {
        pg_gate_result_free(res);
        pg_op_deny(op, 503, "login.start", "identity_store_unavailable",
                   "The sign-in service cannot store your sign-in right now. "
                   "Please try again shortly.", NULL);
        return;
    }
    if (pg_seal(cfg->session.key, "state", op->state, strlen(op->state),
                sealed, sizeof(sealed)) != PG_OK) {
        pg_gate_result_free(res);
        pg_op_finish(op, NULL);
        return;
    }
    snprintf(name, sizeof(name), "%s%.16s", op->g->state_cookie_prefix,
             op->state);
    /* the IdP answers with a cross-site POST: Lax would not come back */
    cookie = pg_cookie_line_ss(cfg, name, sealed, (long) d->saml.state_ttl_s,
                               "None");
    st = pg_result_cookie(res, cookie);
    free(cookie);
    if (st == PG_OK) {
        st = pg_login_choice_cookie(op, res);
    }
    if (st != PG_OK) {
        pg_gate_result_free(res);
        pg_op_finish(op, NULL);
        return;
    }
    pg_op_audit(op, "login.start", "info", "redirect_to_idp", NULL, NULL);
    pg_op_finish(op, res);
}

/*
 * Start a SAML login for op (browser request, no valid session) with the
 * SAML provider d: AuthnRequest, pending-login record, redirect.
 */
void
pg_saml_login_start(pg_op_t *op, const pg_idp_cfg_t *d)
{
    char relay[48], ttl[32], *url = NULL, *reqid = NULL, *json, *key;
    const char *argv[6];
    pg_err_t err = { "" };
    json_t *rec;
    pg_status_t st;
    pg_saml_bind_t *b;

    b = pg_saml_bind_get(op->g, d->name);
    if (b == NULL) {
        /* idp_metadata_url and no good metadata fetched yet */
        pg_op_deny(op, 503, "login.start", "idp_unavailable",
                   "Sign-in with this identity provider is not available "
                   "yet: its metadata could not be loaded. Please try again "
                   "shortly.", NULL);
        return;
    }
    if (pg_random_token(PG_RELAY_BYTES, relay, sizeof(relay)) != PG_OK) {
        pg_saml_bind_put(b);
        pg_op_finish(op, NULL);
        return;
    }
    st = pg_saml_authn_request(b->sp, relay, &url, &reqid, &err);
    pg_saml_bind_put(b);
    if (st != PG_OK) {
        json_t *f = json_pack("{s:s}", "detail", err.msg);

        pg_op_deny(op, 503, "login.start", "idp_unavailable",
                   "Sign-in with this identity provider cannot start.", f);
        return;
    }
    op->state = strdup(relay);
    op->res = pg_result_new(PG_RES_REDIRECT, 302);
    rec = json_pack("{s:s, s:s?, s:s, s:s, s:I}", "idp", op->idp, "app",
                    op->app, "return_to", op->return_to ? op->return_to : "/",
                    "request_id", reqid, "created", (json_int_t) time(NULL));
    json = rec != NULL ? json_dumps(rec, JSON_COMPACT) : NULL;
    json_decref(rec);
    key = pg_key(op->g, "saml:relay:", relay);
    free(reqid);
    if (op->state == NULL || op->res == NULL || json == NULL || key == NULL) {
        free(url);
        free(json);
        free(key);
        pg_op_finish(op, NULL);
        return;
    }
    op->res->location = url;
    snprintf(ttl, sizeof(ttl), "%u", d->saml.state_ttl_s);
    argv[0] = "SET"; argv[1] = key; argv[2] = json; argv[3] = "EX";
    argv[4] = ttl; argv[5] = "NX";
    st = pg_op_redis(op, pg_saml_login_saved, 6, argv, NULL);
    free(json);
    free(key);
    if (st != PG_OK) {
        pg_saml_login_saved(op, st);
    }
}

/* ---- Assertion Consumer Service ---------------------------------------- */

static void
pg_saml_acs_fresh(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();

    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        pg_op_deny(op, 503, "login.failure", "identity_store_unavailable",
                   "The sign-in service is unavailable.", NULL);
        return;
    }
    if (reply->type == REDIS_REPLY_NIL) {
        /* this assertion ID was accepted before */
        pg_op_deny(op, 400, "login.failure", "replay",
                   "This sign-in answer was already used. Please start "
                   "again.", NULL);
        return;
    }
    pg_login_claims_ready(op);
}

/*
 * SAML attributes become claims (one value -> a string, several -> an
 * array), so that the same "identity.claims" mapping serves both
 * protocols; "sub" is the NameID and "iss" the IdP entity id.
 */
static json_t *
pg_saml_claims(const pg_saml_assertion_t *a)
{
    json_t *claims = json_object(), *vals;
    const char *name;

    if (claims == NULL) {
        return NULL;
    }
    json_object_foreach(a->attributes, name, vals) {
        if (json_array_size(vals) == 1) {
            json_object_set(claims, name, json_array_get(vals, 0));
        } else if (json_is_array(vals)) {
            json_object_set(claims, name, vals);
        }
    }
    json_object_set_new(claims, "sub", json_string(a->name_id));
    json_object_set_new(claims, "iss", json_string(a->issuer));
    return claims;
}

/*
 * One verification, run on a host thread when the host can (nginx's thread
 * pool) so the ~1 ms of XML and RSA work never stalls the event loop. The
 * job owns copies of everything it reads; if the request goes away while
 * it runs, the op only detaches and the job frees itself when done. lasso
 * loads the IdP key lazily, so verifications are serialised per process.
 * The job holds a reference to the SP it verifies with (taken and dropped
 * on the loop thread), so a metadata refresh never frees it meanwhile.
 */
typedef struct pg_saml_job {
    pg_op_t                *op;             /* NULL once detached */
    const pg_saml_idp_cfg_t *saml;
    pg_saml_bind_t         *bind;           /* our reference */
    char                   *body;
    size_t                  body_len;
    char                   *request_id;
    int64_t                 now;
    pg_status_t             st;
    const char             *reason;
    pg_err_t                err;
    pg_saml_assertion_t     a;
    long                    us;
    int                     threaded;
} pg_saml_job_t;

static pthread_mutex_t pg_saml_lock = PTHREAD_MUTEX_INITIALIZER;

static void
pg_saml_job_free(pg_saml_job_t *j)
{
    pg_saml_assertion_clear(&j->a);
    pg_saml_bind_put(j->bind);
    free(j->body);
    free(j->request_id);
    free(j);
}

void
pg_saml_job_detach(pg_op_t *op)
{
    if (op->job != NULL) {
        op->job->op = NULL;
        op->job = NULL;
    }
}

/* Runs on a host thread (or inline): only the job's own data. */
static void
pg_saml_job_run(void *arg)
{
    pg_saml_job_t *j = arg;
    pg_saml_expect_t exp;
    struct timespec t0, t1;

    memset(&exp, 0, sizeof(exp));
    exp.in_response_to = j->request_id;
    exp.now = j->now;
    j->reason = "malformed";
    pthread_mutex_lock(&pg_saml_lock);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    j->st = pg_saml_acs_validate(j->bind->sp, j->body, j->body_len, &exp,
                                 &j->a, &j->reason, &j->err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pthread_mutex_unlock(&pg_saml_lock);
    j->us = (long) ((t1.tv_sec - t0.tv_sec) * 1000000L
                    + (t1.tv_nsec - t0.tv_nsec) / 1000);
}

/* Back on the loop: continue the login with the verified assertion. */
static void
pg_saml_job_done(void *arg)
{
    pg_saml_job_t *j = arg;
    pg_op_t *op = j->op;
    const pg_config_t *cfg;
    char dig[64], ttl[32], *key;
    const char *argv[6];
    int64_t left;
    pg_status_t st;
    json_t *f;

    if (op == NULL) {           /* the request went away meanwhile */
        pg_saml_job_free(j);
        return;
    }
    op->job = NULL;
    cfg = op->g->cfg;
    op->verify_us = j->us;
    op->verify_offloaded = j->threaded;
    if (j->st != PG_OK) {
        f = json_pack("{s:s}", "detail", j->err.msg);
        st = j->st;
        {
            const char *reason = j->reason ? j->reason : "malformed";

            pg_op_deny(op, st == PG_ERR_TOO_LARGE ? 413 : 401,
                       "login.failure", reason,
                       "The identity provider's answer could not be "
                       "verified. Please sign in again.", f);
        }
        pg_saml_job_free(j);
        return;
    }
    op->claims = pg_saml_claims(&j->a);
    /* what Single Logout needs later, stored with the session */
    op->saml_subject = json_object();
    if (op->saml_subject != NULL) {
        json_object_set_new(op->saml_subject, "name_id",
                            json_string(j->a.name_id));
        if (j->a.name_id_format != NULL) {
            json_object_set_new(op->saml_subject, "format",
                                json_string(j->a.name_id_format));
        }
        if (j->a.name_qualifier != NULL) {
            json_object_set_new(op->saml_subject, "name_qualifier",
                                json_string(j->a.name_qualifier));
        }
        if (j->a.sp_name_qualifier != NULL) {
            json_object_set_new(op->saml_subject, "sp_name_qualifier",
                                json_string(j->a.sp_name_qualifier));
        }
        if (j->a.session_index != NULL) {
            json_object_set_new(op->saml_subject, "session_index",
                                json_string(j->a.session_index));
        }
    }
    left = j->a.not_on_or_after > j->now ? j->a.not_on_or_after - j->now : 0;
    left += j->saml->clock_skew_s + 1;
    st = pg_sha256_b64url(j->a.assertion_id, strlen(j->a.assertion_id), dig,
                          sizeof(dig));
    pg_saml_job_free(j);
    if (op->claims == NULL || st != PG_OK
        || pg_identity_attrs(cfg, op->claims, &op->attrs) != PG_OK) {
        pg_op_deny(op, 401, "login.failure", "claims_unusable",
                   "Your identity could not be read from the sign-in.", NULL);
        return;
    }
    /* replay cache: each assertion ID is accepted once while valid */
    key = pg_key(op->g, "saml:seen:", dig);
    if (key == NULL) {
        pg_op_finish(op, NULL);
        return;
    }
    snprintf(ttl, sizeof(ttl), "%lld", (long long) left);
    argv[0] = "SET"; argv[1] = key; argv[2] = "1"; argv[3] = "EX";
    argv[4] = ttl; argv[5] = "NX";
    st = pg_op_redis(op, pg_saml_acs_fresh, 6, argv, NULL);
    free(key);
    if (st != PG_OK) {
        pg_saml_acs_fresh(op, st);
    }
}

static void pg_saml_acs_verify(pg_op_t *op, const pg_idp_cfg_t *d,
                               const char *reqid);

static void
pg_saml_acs_state(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    const pg_config_t *cfg = op->g->cfg;
    const char *idp = NULL, *app = NULL, *ret = NULL, *reqid = NULL;
    const pg_idp_cfg_t *d;
    json_error_t jerr;
    json_t *rec;

    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        pg_op_deny(op, 503, "login.failure", "identity_store_unavailable",
                   "The sign-in service is unavailable.", NULL);
        return;
    }
    if (reply->type != REDIS_REPLY_STRING) {
        pg_op_deny(op, 400, "login.failure", "state_unknown",
                   "This sign-in has expired or was already used. Please "
                   "start again.", NULL);
        return;
    }
    rec = json_loadb(reply->str, reply->len, 0, &jerr);
    if (rec == NULL
        || json_unpack(rec, "{s:s, s?s, s:s, s:s}", "idp", &idp, "app", &app,
                       "return_to", &ret, "request_id", &reqid) != 0) {
        json_decref(rec);
        pg_op_deny(op, 400, "login.failure", "state_corrupt",
                   "This sign-in cannot be completed.", NULL);
        return;
    }
    free(op->idp);
    free(op->app);
    op->idp = strdup(idp);
    op->app = app ? strdup(app) : NULL;
    op->return_to = strdup(pg_return_path_ok(ret, strlen(ret)) ? ret : "/");
    op->target = op->app ? pg_config_target(cfg, op->app) : NULL;
    d = pg_config_idp(cfg, idp);
    if (op->idp == NULL || op->return_to == NULL || d == NULL
        || d->type != PG_IDP_SAML || (op->app != NULL && op->target == NULL)) {
        json_decref(rec);
        pg_op_deny(op, 400, "login.failure", "state_stale_config",
                   "This sign-in was started with another configuration.",
                   NULL);
        return;
    }
    pg_saml_acs_verify(op, d, reqid);
    json_decref(rec);
}

/*
 * Verify op's POSTed response against provider d, expecting InResponseTo
 * reqid (NULL: an IdP-initiated response, which must carry none). The
 * work runs on a host thread when the host offers one; the login goes on
 * in pg_saml_job_done. reqid is copied.
 */
static void
pg_saml_acs_verify(pg_op_t *op, const pg_idp_cfg_t *d, const char *reqid)
{
    const pg_host_t *h = op->g->host;
    pg_saml_job_t *j;

    j = calloc(1, sizeof(*j));
    if (j != NULL) {
        j->bind = pg_saml_bind_get(op->g, op->idp);
    }
    if (j != NULL && j->bind == NULL) {
        pg_saml_job_free(j);
        pg_op_deny(op, 503, "login.failure", "idp_unavailable",
                   "Sign-in with this identity provider is not available "
                   "right now: its metadata could not be loaded. Please try "
                   "again shortly.", NULL);
        return;
    }
    if (j != NULL) {
        j->saml = &d->saml;
        j->body = malloc(op->body_len + 1);
        j->request_id = reqid != NULL ? strdup(reqid) : NULL;
        j->now = (int64_t) time(NULL);
    }
    if (j == NULL || j->body == NULL
        || (reqid != NULL && j->request_id == NULL)) {
        if (j != NULL) {
            pg_saml_job_free(j);
        }
        pg_op_finish(op, NULL);
        return;
    }
    memcpy(j->body, op->body, op->body_len);
    j->body[op->body_len] = '\0';
    j->body_len = op->body_len;
    j->op = op;
    op->job = j;
    j->threaded = 1;
    if (h->offload == NULL
        || h->offload(h->ctx, pg_saml_job_run, pg_saml_job_done, j) != 0) {
        /* no thread pool: verify here, then continue */
        j->threaded = 0;
        pg_saml_job_run(j);
        pg_saml_job_done(j);
    }
}

#define PG_SAML_RELAY_MAX 80      /* our own references are 24 chars */
#define PG_SAML_IDP_RELAY_MAX 1024 /* an IdP-initiated RelayState path */

/*
 * The provider whose IdP-initiated responses are accepted at this ACS: the
 * SAML provider with allow_unsolicited whose acs_url has the path of uri
 * (the request's path and query as received). The configuration refuses
 * two such providers on one acs_url, so there is at most one. NULL when
 * none. Borrowed from cfg.
 */
static const pg_idp_cfg_t *
pg_saml_unsolicited_idp(const pg_config_t *cfg, const char *uri)
{
    size_t i, plen, alen;
    const char *p;

    if (uri == NULL) {
        return NULL;
    }
    plen = strcspn(uri, "?");
    for (i = 0; i < cfg->nidps; i++) {
        const pg_idp_cfg_t *d = &cfg->idps[i];

        if (d->type != PG_IDP_SAML || !d->saml.allow_unsolicited) {
            continue;
        }
        p = pg_url_path(d->saml.acs_url, &alen);
        if (alen == plen && memcmp(p, uri, plen) == 0) {
            return d;
        }
    }
    return NULL;
}

/*
 * An IdP-initiated response at an ACS whose provider d allows them: no
 * stored request, so it must carry no InResponseTo (pg_saml_acs_validate
 * checks that), the replay cache still applies, and the person lands on
 * relay when it is a same-origin path, else on "/". Every other check is
 * the same as for a solicited response. relay may be NULL; it is copied.
 */
static void
pg_saml_acs_unsolicited(pg_op_t *op, const pg_idp_cfg_t *d, const char *relay)
{
    int ok = relay != NULL && strlen(relay) <= PG_SAML_IDP_RELAY_MAX
             && pg_return_path_ok(relay, strlen(relay));

    free(op->idp);
    free(op->app);
    op->app = NULL;
    op->target = NULL;
    op->idp = strdup(d->name);
    op->return_to = strdup(ok ? relay : "/");
    if (op->idp == NULL || op->return_to == NULL) {
        pg_op_finish(op, NULL);
        return;
    }
    pg_op_audit(op, "login.start", "info", "idp_initiated", NULL, NULL);
    pg_saml_acs_verify(op, d, NULL);
}

/*
 * HTTP-POST to the ACS. A solicited response's RelayState must be one this
 * browser was given (sealed state cookie) and is consumed with GETDEL,
 * which makes a second POST of the same response fail even in parallel.
 * Anything else is IdP-initiated: refused unless the provider of this ACS
 * URL has allow_unsolicited.
 */
void
pg_saml_acs_start(pg_op_t *op)
{
    const pg_idp_cfg_t *d;
    char *relay;
    size_t i;
    int bound = 0;

    op->wants_html = 1; /* always a browser's auto-submitted form */
    if (op->body == NULL || op->body_len == 0) {
        pg_op_deny(op, 400, "login.failure", "bad_acs",
                   "This sign-in answer is empty.", NULL);
        return;
    }
    relay = pg_query_param(op->body, op->body_len, "RelayState");
    if (relay != NULL && relay[0] != '\0'
        && strlen(relay) <= PG_SAML_RELAY_MAX) {
        for (i = 0; i < op->nstate_cookies; i++) {
            if (pg_ct_equal(op->state_cookies[i],
                            strlen(op->state_cookies[i]), relay,
                            strlen(relay))) {
                bound = 1;
            }
        }
    }
    if (!bound) {
        d = pg_saml_unsolicited_idp(op->g->cfg, op->uri);
        if (d != NULL) {
            pg_saml_acs_unsolicited(op, d, relay);
            free(relay);
            return;
        }
        if (relay == NULL || relay[0] == '\0'
            || strlen(relay) > PG_SAML_RELAY_MAX) {
            free(relay);
            pg_op_deny(op, 400, "login.failure", "unsolicited",
                       "This sign-in was not started here. Please start "
                       "from the application.", NULL);
            return;
        }
        free(relay);
        pg_op_deny(op, 400, "login.failure", "state_not_bound",
                   "This sign-in was not started in this browser. Please "
                   "start again.", NULL);
        return;
    }
    op->state = relay;
    pg_op_key(op, pg_saml_acs_state, "GETDEL", "saml:relay:", relay);
}
