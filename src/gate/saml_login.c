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
    cookie = pg_cookie_line(cfg, name, sealed, (long) d->saml.state_ttl_s);
    st = pg_result_cookie(res, cookie);
    free(cookie);
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

    if (pg_random_token(PG_RELAY_BYTES, relay, sizeof(relay)) != PG_OK) {
        pg_op_finish(op, NULL);
        return;
    }
    st = pg_saml_authn_request(d->saml.sp, relay, &url, &reqid, &err);
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
