/*
 * provgate core: SAML 2.0 Single Logout in the gateway (docs/saml-slo.md).
 *
 * SP-initiated: provgate_logout ends the local session first (access.c),
 * then pg_saml_logout_redirect() sends the browser to the IdP with a signed
 * LogoutRequest whose ID is kept once in Redis (pg:saml:logout:<id>, SET
 * NX EX 300). The IdP's LogoutResponse comes back to the SLO endpoint,
 * is verified and consumes that ID with GETDEL: unknown or replayed
 * responses are refused.
 *
 * IdP-initiated: a signed LogoutRequest at the SLO endpoint is verified,
 * its ID enters the replay cache (pg:saml:seen-lr:<sha256(id)>, SET NX
 * EXAT replay_until), and one Lua script ends every session of that
 * NameID (pg:saml:nameid:<idp>:<sha256(name_id)>, limited to the given
 * SessionIndex values) and tells every gateway's session cache through
 * pg:revoked. The answer is our signed LogoutResponse redirect. No session
 * cookie is needed (the request is cross-site).
 *
 * Verification runs on the host's thread pool when there is one (the
 * pg_saml_slo_t is read-only and thread-safe). Every outcome is audited
 * with a stable reason code, never with the message itself; Redis errors
 * give a 503 page (fail closed).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis.h>

#include "provgate/saml_slo.h"
#include "provgate/util.h"
#include "gate_int.h"

#define PG_SLO_PENDING_TTL  "300"   /* >= PG_SAML_SLO_MAX_AGE + skew */
#define PG_SLO_MAX_ID       128u    /* our request ids are "_" + 40 hex */

/* A reference to what SAML IdP idp uses now when it has Single Logout
 * (slo_url, and metadata loaded), else NULL. The caller drops it with
 * pg_saml_bind_put(). */
static pg_saml_bind_t *
pg_slo_bind(pg_gate_t *g, const char *idp)
{
    pg_saml_bind_t *b = idp != NULL ? pg_saml_bind_get(g, idp) : NULL;

    if (b != NULL && b->slo == NULL) {
        pg_saml_bind_put(b);
        return NULL;
    }
    return b;
}

/*
 * "<prefix>saml:nameid:<idp>:<sha256-b64url(name_id)>" as a malloc'd
 * string (caller frees), NULL on OOM. The NameID is hashed: keys stay
 * short and hold no personal data.
 */
char *
pg_saml_nameid_key(pg_gate_t *g, const char *idp, const char *name_id)
{
    char dig[64], *tail = NULL, *key;

    if (idp == NULL || name_id == NULL
        || pg_sha256_b64url(name_id, strlen(name_id), dig, sizeof(dig))
           != PG_OK
        || asprintf(&tail, "%s:%s", idp, dig) < 0) {
        return NULL;
    }
    key = pg_key(g, "saml:nameid:", tail);
    free(tail);
    return key;
}

/* 1 when id can be used in a Redis key as is: our own request ids. */
static int
pg_slo_id_ok(const char *id)
{
    size_t i, n = id != NULL ? strlen(id) : 0;

    if (n == 0 || n > PG_SLO_MAX_ID) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        char c = id[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '_' || c == '-')) {
            return 0;
        }
    }
    return 1;
}

/* A small HTML page result (title, text); NULL on OOM. Cookies: clear the
 * session cookie as well (harmless when there is none). */
static pg_gate_result_t *
pg_slo_page(const pg_config_t *cfg, const char *title, const char *text)
{
    pg_gate_result_t *res = pg_result_new(PG_RES_PAGE, 200);
    char *cookie;

    if (res == NULL) {
        return NULL;
    }
    /* title and text are static strings of this file: no escaping needed */
    if (asprintf(&res->body,
                 "<!DOCTYPE html>\n<html lang=\"en\"><head><meta "
                 "charset=\"utf-8\"><title>%s</title></head><body>"
                 "<h1 id=\"signed-out\">%s</h1><p>%s</p></body></html>\n",
                 title, title, text) < 0) {
        res->body = NULL;
        pg_gate_result_free(res);
        return NULL;
    }
    res->body_len = strlen(res->body);
    res->content_type = "text/html; charset=utf-8";
    cookie = pg_cookie_line(cfg, cfg->session.cookie_name, "", 0);
    if (pg_result_cookie(res, cookie) != PG_OK) {
        free(cookie);
        pg_gate_result_free(res);
        return NULL;
    }
    free(cookie);
    return res;
}

/* ---- SP-initiated: to the IdP ----------------------------------------- */

/* The pending request id is stored (or not): send the browser to the IdP
 * with op->res, or 503 when Redis could not keep it. */
static void
pg_slo_pending_saved(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    pg_gate_result_t *res = op->res;
    json_t *f;

    op->res = NULL;
    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_STATUS) {
        /* the local session is gone already; only the IdP is not told */
        pg_gate_result_free(res);
        f = json_pack("{s:s}", "saml_slo", "sp_initiated");
        pg_op_deny(op, 503, "logout.failure", "identity_store_unavailable",
                   "You were signed out here, but the sign-out at your "
                   "identity provider cannot start right now.", f);
        return;
    }
    f = json_pack("{s:s}", "saml_slo", "sp_initiated");
    pg_op_audit(op, "logout.start", "info", "redirect_to_idp", f, NULL);
    pg_op_finish(op, res);
}

/*
 * SP-initiated Single Logout after the local logout (access.c). Uses
 * op->session (the ended session's record: "idp", "saml") and op->iid.
 * Returns 0 when this is not a SAML session of an IdP with SLO, or when
 * our LogoutRequest cannot be built (audited; the caller shows its plain
 * "signed out" page); 1 when it took over the op (which then finishes
 * with the redirect, or a 503 page). The pending record
 * pg:saml:logout:<id> holds {idp, iid, created}, never the NameID.
 */
int
pg_saml_logout_redirect(pg_op_t *op)
{
    const pg_config_t *cfg = op->g->cfg;
    const json_t *saml = json_object_get(op->session, "saml");
    const char *idp = json_string_value(json_object_get(op->session, "idp"));
    pg_saml_bind_t *bind;
    pg_saml_logout_subject_t who;
    pg_err_t err = { "" };
    char *url = NULL, *reqid = NULL, *json = NULL, *key = NULL, *cookie;
    const char *argv[6];
    pg_status_t st;
    json_t *rec, *f;

    if (!json_is_object(saml)) {
        return 0;
    }
    memset(&who, 0, sizeof(who));
    who.name_id = json_string_value(json_object_get(saml, "name_id"));
    who.name_id_format = json_string_value(json_object_get(saml, "format"));
    who.name_qualifier = json_string_value(json_object_get(saml,
                                                           "name_qualifier"));
    who.sp_name_qualifier = json_string_value(
        json_object_get(saml, "sp_name_qualifier"));
    who.session_index = json_string_value(json_object_get(saml,
                                                          "session_index"));
    if (who.name_id == NULL) {
        return 0;
    }
    bind = pg_slo_bind(op->g, idp);
    if (bind == NULL) {
        return 0;   /* no SLO, or no IdP metadata yet: local sign-out */
    }
    free(op->idp);
    op->idp = strdup(idp);
    st = pg_saml_logout_request(bind->slo, &who, NULL, (int64_t) time(NULL),
                                &url, &reqid, &err);
    pg_saml_bind_put(bind);
    if (st != PG_OK || op->idp == NULL) {
        free(url);
        free(reqid);
        f = json_pack("{s:s, s:s}", "saml_slo", "sp_initiated", "detail",
                      err.msg);
        pg_op_audit(op, "logout.failure", "failure", "request_failed", f,
                    NULL);
        return 0;   /* signed out locally: the plain "signed out" page */
    }
    rec = json_pack("{s:s, s:s?, s:I}", "idp", idp, "iid", op->iid,
                    "created", (json_int_t) time(NULL));
    json = rec != NULL ? json_dumps(rec, JSON_COMPACT) : NULL;
    json_decref(rec);
    key = pg_key(op->g, "saml:logout:", reqid);
    free(reqid);
    op->res = pg_result_new(PG_RES_REDIRECT, 302);
    cookie = pg_cookie_line(cfg, cfg->session.cookie_name, "", 0);
    if (json == NULL || key == NULL || op->res == NULL
        || pg_result_cookie(op->res, cookie) != PG_OK) {
        free(cookie);
        free(url);
        free(json);
        free(key);
        pg_op_finish(op, NULL);
        return 1;
    }
    free(cookie);
    op->res->location = url;
    argv[0] = "SET"; argv[1] = key; argv[2] = json; argv[3] = "NX";
    argv[4] = "EX"; argv[5] = PG_SLO_PENDING_TTL;
    st = pg_op_redis(op, pg_slo_pending_saved, 6, argv, NULL);
    free(json);
    free(key);
    if (st != PG_OK) {
        pg_slo_pending_saved(op, st);
    }
    return 1;
}

/* ---- the SLO endpoint: verification ----------------------------------- */

/*
 * One verification on a host thread (or inline). The job owns copies of
 * everything it reads; a detached job (the request went away) frees
 * itself when done.
 */
typedef struct pg_slo_job {
    pg_op_t                    *op;         /* NULL once detached */
    pg_saml_bind_t             *bind;       /* our reference: bind->slo */
    pg_saml_binding_t           binding;
    int                         is_response;
    char                       *input;
    size_t                      len;
    int64_t                     now;
    pg_status_t                 st;
    const char                 *reason;
    pg_err_t                    err;
    pg_saml_logout_result_t     resp;
    pg_saml_logout_request_in_t req;
} pg_slo_job_t;

/* Free a job and everything it owns. */
static void
pg_slo_job_free(pg_slo_job_t *j)
{
    pg_saml_logout_result_clear(&j->resp);
    pg_saml_logout_request_in_clear(&j->req);
    pg_saml_bind_put(j->bind);
    free(j->input);
    free(j);
}

/* The op goes away while its job runs: the job frees itself when done. */
void
pg_saml_slo_detach(pg_op_t *op)
{
    if (op->slo_job != NULL) {
        op->slo_job->op = NULL;
        op->slo_job = NULL;
    }
}

/* Runs on a host thread (or inline): touches only the job's own data and
 * the read-only SLO context. */
static void
pg_slo_job_run(void *arg)
{
    pg_slo_job_t *j = arg;

    j->reason = "malformed";
    if (j->is_response) {
        j->st = pg_saml_logout_response_verify(j->bind->slo, j->binding,
                                               j->input, j->len, j->now,
                                               &j->resp, &j->reason,
                                               &j->err);
    } else {
        j->st = pg_saml_logout_request_verify(j->bind->slo, j->binding,
                                              j->input, j->len, j->now,
                                              &j->req, &j->reason, &j->err);
    }
}

/* ---- the SLO endpoint: the IdP's LogoutResponse ----------------------- */

/* GETDEL of the pending request answered: found -> signed out (fully, or
 * partially when op->state holds the IdP's failure status); missing ->
 * unknown or replayed response. */
static void
pg_slo_response_consumed(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    const pg_config_t *cfg = op->g->cfg;
    json_t *rec = NULL, *f;
    json_error_t jerr;
    int partial = op->state != NULL;   /* status_not_success */
    const char *iid;

    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        f = json_pack("{s:s}", "saml_slo", "sp_initiated");
        pg_op_deny(op, 503, "logout.failure", "identity_store_unavailable",
                   "The sign-out service is unavailable. Please try again "
                   "shortly.", f);
        return;
    }
    if (reply->type != REDIS_REPLY_STRING) {
        f = json_pack("{s:s}", "saml_slo", "sp_initiated");
        pg_op_deny(op, 400, "logout.failure", "unknown_request",
                   "This sign-out answer does not match a sign-out started "
                   "here, or it was already used.", f);
        return;
    }
    rec = json_loadb(reply->str, reply->len, 0, &jerr);
    iid = json_string_value(json_object_get(rec, "iid"));
    if (iid != NULL && op->iid == NULL) {
        op->iid = strdup(iid);
    }
    json_decref(rec);
    f = json_pack("{s:s}", "saml_slo", "sp_initiated");
    if (partial) {
        json_object_set_new(f, "idp_status", json_string(op->state));
        pg_op_audit(op, "logout.failure", "failure", "status_not_success", f,
                    NULL);
        pg_op_finish(op, pg_slo_page(cfg, "Signed out",
                     "You have been signed out here. Your identity provider "
                     "reports that not every sign-out succeeded there; close "
                     "the browser to be sure."));
        return;
    }
    pg_op_audit(op, "logout.success", "success", "ok", f, NULL);
    pg_op_finish(op, pg_slo_page(cfg, "Signed out",
                                 "You have been signed out."));
}

/* A LogoutResponse was verified (j, still owned by the caller): refuse
 * it, or consume its InResponseTo once. */
static void
pg_slo_response_verified(pg_op_t *op, pg_slo_job_t *j)
{
    const char *reason = j->reason != NULL ? j->reason : "malformed";
    int authentic = j->st == PG_OK
                    || (reason != NULL && strcmp(reason, "status_not_success")
                                          == 0 && j->resp.in_response_to);
    json_t *f;

    if (!authentic) {
        f = json_pack("{s:s, s:s}", "saml_slo", "sp_initiated", "detail",
                      j->err.msg);
        pg_op_deny(op, j->st == PG_ERR_TOO_LARGE ? 413 : 400,
                   "logout.failure", reason,
                   "The identity provider's sign-out answer could not be "
                   "verified.", f);
        return;
    }
    if (!pg_slo_id_ok(j->resp.in_response_to)) {
        f = json_pack("{s:s}", "saml_slo", "sp_initiated");
        pg_op_deny(op, 400, "logout.failure", "unknown_request",
                   "This sign-out answer does not match a sign-out started "
                   "here, or it was already used.", f);
        return;
    }
    if (j->st != PG_OK) {
        op->state = strdup(j->resp.status != NULL ? j->resp.status
                                                  : "unknown");
        if (op->state == NULL) {
            pg_op_finish(op, NULL);
            return;
        }
    }
    /* single use: both Success and a failure status consume it */
    pg_op_key(op, pg_slo_response_consumed, "GETDEL", "saml:logout:",
              j->resp.in_response_to);
}

/* ---- the SLO endpoint: the IdP's LogoutRequest ------------------------ */

/*
 * End every session of one NameID at this IdP (optionally only those with
 * one of the SessionIndex values): delete the session, drop it from the
 * per-identity and NameID indexes, and announce it on the revocation feed.
 * KEYS: the NameID index, the revocation stream. ARGV: key prefix, idp,
 * name_id, SessionIndex values... Returns {sid, iid, sid, iid, ...}.
 */
static const char pg_slo_end_script[] =
    "local sids = redis.call('SMEMBERS', KEYS[1]) "
    "local want, nwant, out = {}, #ARGV - 3, {} "
    "for i = 4, #ARGV do want[ARGV[i]] = true end "
    "for _, sid in ipairs(sids) do "
    "  local sk = ARGV[1] .. 'sess:' .. sid "
    "  local raw = redis.call('GET', sk) "
    "  if not raw then "
    "    redis.call('SREM', KEYS[1], sid) "
    "  else "
    "    local ok, s = pcall(cjson.decode, raw) "
    "    if ok and type(s) == 'table' and s.idp == ARGV[2] "
    "       and type(s.saml) == 'table' and s.saml.name_id == ARGV[3] "
    "       and (nwant == 0 or (type(s.saml.session_index) == 'string' "
    "                           and want[s.saml.session_index])) then "
    "      redis.call('DEL', sk) "
    "      redis.call('SREM', KEYS[1], sid) "
    "      local iid = '' "
    "      if type(s.iid) == 'string' then iid = s.iid end "
    "      if iid ~= '' then "
    "        redis.call('SREM', ARGV[1] .. 'idsess:' .. iid, sid) "
    "      end "
    "      redis.call('XADD', KEYS[2], 'MAXLEN', '~', '100000', '*', "
    "                 'sid', sid) "
    "      table.insert(out, sid) "
    "      table.insert(out, iid) "
    "    end "
    "  end "
    "end "
    "return out";

/* Answer the IdP: our signed LogoutResponse (Redirect). */
static void
pg_slo_answer(pg_op_t *op, const char *status, const char *sub_status)
{
    pg_saml_bind_t *bind = pg_slo_bind(op->g, op->idp);
    const char *relay = json_string_value(json_object_get(op->session,
                                                          "relay"));
    const char *id = json_string_value(json_object_get(op->session, "id"));
    pg_gate_result_t *res;
    pg_err_t err = { "" };
    char *url = NULL;
    json_t *f;

    if (bind == NULL || id == NULL
        || pg_saml_logout_response(bind->slo, id, status, sub_status, relay,
                                   (int64_t) time(NULL), &url, &err)
           != PG_OK) {
        pg_saml_bind_put(bind);
        f = json_pack("{s:s, s:s}", "saml_slo", "idp_initiated", "detail",
                      err.msg);
        pg_op_deny(op, 503, "logout.failure", "response_failed",
                   "The sign-out was done here, but the answer to your "
                   "identity provider could not be built.", f);
        return;
    }
    pg_saml_bind_put(bind);
    res = pg_result_new(PG_RES_REDIRECT, 302);
    if (res == NULL) {
        free(url);
        pg_op_finish(op, NULL);
        return;
    }
    res->location = url;
    pg_op_finish(op, res);
}

/* The end-sessions script answered {sid, iid, ...}: audit each ended
 * session, drop it from this process's cache, answer the IdP. */
static void
pg_slo_sessions_ended(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    json_t *f;
    size_t i, n = 0;

    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        f = json_pack("{s:s}", "saml_slo", "idp_initiated");
        pg_op_deny(op, 503, "logout.failure", "identity_store_unavailable",
                   "The sign-out service is unavailable. Please try again "
                   "shortly.", f);
        return;
    }
    for (i = 0; i + 1 < reply->elements; i += 2) {
        const redisReply *sid = reply->element[i];
        const redisReply *iid = reply->element[i + 1];

        if (sid->type != REDIS_REPLY_STRING || iid->type != REDIS_REPLY_STRING) {
            continue;
        }
        /* this process's cache at once; the others through pg:revoked */
        pg_cache_del(&op->g->cache, sid->str);
        f = json_pack("{s:s, s:s}", "cause", "saml_slo", "saml_slo",
                      "idp_initiated");
        if (f != NULL && iid->len > 0) {
            json_object_set_new(f, "identity", json_stringn(iid->str,
                                                            iid->len));
        }
        pg_op_audit(op, "session.end", "success", "saml_slo", f, NULL);
        n++;
    }
    f = json_pack("{s:s, s:I}", "saml_slo", "idp_initiated",
                  "sessions_ended", (json_int_t) n);
    pg_op_audit(op, "logout.success", "success", n > 0 ? "ok" : "no_session",
                f, NULL);
    pg_slo_answer(op, NULL, NULL);
}

/* The replay cache answered: a replay is refused, a fresh request ends
 * the NameID's sessions (op->session holds id, name_id, relay and the
 * SessionIndex values copied from the verified request). */
static void
pg_slo_request_fresh(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    const char *argv[8 + PG_SAML_SLO_MAX_SESSIONS];
    const json_t *sidx = json_object_get(op->session, "session_index");
    const char *nid = json_string_value(json_object_get(op->session,
                                                        "name_id"));
    char *ikey, *revoked;
    json_t *f, *v;
    size_t i;
    int n = 0;

    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        f = json_pack("{s:s}", "saml_slo", "idp_initiated");
        pg_op_deny(op, 503, "logout.failure", "identity_store_unavailable",
                   "The sign-out service is unavailable. Please try again "
                   "shortly.", f);
        return;
    }
    if (reply->type == REDIS_REPLY_NIL) {
        f = json_pack("{s:s}", "saml_slo", "idp_initiated");
        pg_op_deny(op, 400, "logout.failure", "replay",
                   "This sign-out request was already used.", f);
        return;
    }
    ikey = pg_saml_nameid_key(op->g, op->idp, nid);
    revoked = pg_key(op->g, "revoked", NULL);
    if (ikey == NULL || revoked == NULL) {
        free(ikey);
        free(revoked);
        pg_op_finish(op, NULL);
        return;
    }
    argv[n++] = "EVAL";
    argv[n++] = pg_slo_end_script;
    argv[n++] = "2";
    argv[n++] = ikey;
    argv[n++] = revoked;
    argv[n++] = pg_redis_prefix(op->g->redis);
    argv[n++] = op->idp;
    argv[n++] = nid;
    json_array_foreach(sidx, i, v) {
        if (i < PG_SAML_SLO_MAX_SESSIONS && json_is_string(v)) {
            argv[n++] = json_string_value(v);
        }
    }
    st = pg_op_redis(op, pg_slo_sessions_ended, n, argv, NULL);
    free(ikey);
    free(revoked);
    if (st != PG_OK) {
        pg_slo_sessions_ended(op, st);
    }
}

/* A LogoutRequest was verified (j, still owned by the caller): refuse it
 * (audited with the reason), or enter its ID in the replay cache until
 * replay_until. */
static void
pg_slo_request_verified(pg_op_t *op, pg_slo_job_t *j)
{
    const char *reason = j->reason != NULL ? j->reason : "malformed";
    char dig[64], at[32], *key;
    const char *argv[6];
    json_t *f, *sidx;
    size_t i;
    pg_status_t st;

    if (j->st != PG_OK) {
        f = json_pack("{s:s, s:s}", "saml_slo", "idp_initiated", "detail",
                      j->err.msg);
        pg_op_deny(op, j->st == PG_ERR_TOO_LARGE ? 413 : 400,
                   "logout.failure", reason,
                   strcmp(reason, "unsigned") == 0
                   ? "This sign-out request is not signed by your identity "
                     "provider and was refused."
                   : "This sign-out request could not be verified and was "
                     "refused.", f);
        return;
    }
    /* keep what the next steps need (op->session is this flow's scratch) */
    sidx = json_array();
    for (i = 0; sidx != NULL && i < j->req.n_session_index; i++) {
        json_array_append_new(sidx, json_string(j->req.session_index[i]));
    }
    op->session = json_pack("{s:s, s:s, s:s?, s:o?}", "id", j->req.id,
                            "name_id", j->req.name_id, "relay",
                            j->req.relay_state, "session_index", sidx);
    if (op->session == NULL
        || pg_sha256_b64url(j->req.id, strlen(j->req.id), dig, sizeof(dig))
           != PG_OK
        || (key = pg_key(op->g, "saml:seen-lr:", dig)) == NULL) {
        pg_op_finish(op, NULL);
        return;
    }
    snprintf(at, sizeof(at), "%lld", (long long) j->req.replay_until);
    argv[0] = "SET"; argv[1] = key; argv[2] = "1"; argv[3] = "NX";
    argv[4] = "EXAT"; argv[5] = at;
    st = pg_op_redis(op, pg_slo_request_fresh, 6, argv, NULL);
    free(key);
    if (st != PG_OK) {
        pg_slo_request_fresh(op, st);
    }
}

/* Back on the loop with the verification result. */
static void
pg_slo_job_done(void *arg)
{
    pg_slo_job_t *j = arg;
    pg_op_t *op = j->op;

    if (op == NULL) {
        pg_slo_job_free(j);
        return;
    }
    op->slo_job = NULL;
    if (j->is_response) {
        pg_slo_response_verified(op, j);
    } else {
        pg_slo_request_verified(op, j);
    }
    pg_slo_job_free(j);
}

/*
 * The provgate_saml_slo endpoint. Which message it is comes from the
 * parameter name only (SAMLResponse present -> response); the verifier
 * enforces that exactly one of the two is there.
 */
void
pg_saml_slo_start(pg_op_t *op)
{
    const pg_host_t *h = op->g->host;
    const pg_idp_cfg_t *d = op->idp != NULL ? pg_config_idp(op->g->cfg,
                                                            op->idp) : NULL;
    pg_saml_bind_t *bind;
    const char *in = op->slo_post ? op->body : op->args;
    size_t len = op->slo_post ? op->body_len : (op->args ? strlen(op->args)
                                                          : 0);
    char *resp;
    pg_slo_job_t *j;
    json_t *f;

    op->wants_html = 1;     /* always a browser sent by the IdP */
    if (d == NULL || d->type != PG_IDP_SAML || d->saml.slo_url == NULL) {
        pg_op_fail(op, 404, "slo_not_configured",
                   "Single Logout is not configured for this identity "
                   "provider.", NULL);
        return;
    }
    if (in == NULL || len == 0) {
        f = json_pack("{s:s}", "saml_slo", "unknown");
        pg_op_deny(op, 400, "logout.failure", "bad_slo",
                   "This sign-out message is empty.", f);
        return;
    }
    if (len > (op->slo_post ? PG_SAML_MAX_POST_BODY : PG_SAML_SLO_MAX_QUERY)) {
        f = json_pack("{s:s}", "saml_slo", "unknown");
        pg_op_deny(op, 413, "logout.failure", "too_large",
                   "This sign-out message is too large.", f);
        return;
    }
    bind = pg_slo_bind(op->g, op->idp);
    if (bind == NULL) {
        /* idp_metadata_url and no good metadata fetched yet */
        f = json_pack("{s:s}", "saml_slo", "unknown");
        pg_op_deny(op, 503, "logout.failure", "idp_unavailable",
                   "Sign-out with this identity provider is not available "
                   "right now: its metadata could not be loaded.", f);
        return;
    }
    resp = pg_query_param(in, len, "SAMLResponse");
    j = calloc(1, sizeof(*j));
    if (j == NULL || (j->input = malloc(len + 1)) == NULL) {
        pg_saml_bind_put(bind);
        free(resp);
        free(j);
        pg_op_finish(op, NULL);
        return;
    }
    j->is_response = resp != NULL;
    free(resp);
    memcpy(j->input, in, len);
    j->input[len] = '\0';
    j->len = len;
    j->bind = bind;
    j->binding = op->slo_post ? PG_SAML_BINDING_POST : PG_SAML_BINDING_REDIRECT;
    j->now = (int64_t) time(NULL);
    j->op = op;
    op->slo_job = j;
    if (h->offload == NULL
        || h->offload(h->ctx, pg_slo_job_run, pg_slo_job_done, j) != 0) {
        pg_slo_job_run(j);
        pg_slo_job_done(j);
    }
}
