/*
 * provgate core: the gate object, request ops and their waits, results,
 * cookies and pages.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis.h>

#include "provgate/saml.h"
#include "gate_int.h"

/* The reply/response of the wait that just ended; valid inside a step. */
static const redisReply *pg_cur_reply;
static const pg_http_response_t *pg_cur_response;

static const char *const pg_default_names[] = { NULL };

/* ---- small helpers --------------------------------------------------- */

static char *
pg_strndup_or_null(const char *s, size_t n)
{
    return s != NULL ? strndup(s, n) : NULL;
}

/*
 * "<prefix><a><b>" (b may be NULL) as a malloc'd string; NULL on OOM.
 * Keys are only ever passed to Redis through the argv API.
 */
char *
pg_key(pg_gate_t *g, const char *a, const char *b)
{
    char *out = NULL;

    if (asprintf(&out, "%s%s%s", pg_redis_prefix(g->redis), a,
                 b != NULL ? b : "") < 0) {
        return NULL;
    }
    return out;
}

/* ---- results --------------------------------------------------------- */

pg_gate_result_t *
pg_result_new(pg_res_kind_t kind, int status)
{
    pg_gate_result_t *res = calloc(1, sizeof(*res));

    if (res != NULL) {
        res->kind = kind;
        res->status = status;
        res->no_store = 1;
    }
    return res;
}

void
pg_gate_result_free(pg_gate_result_t *res)
{
    size_t i;

    if (res == NULL) {
        return;
    }
    free(res->location);
    free(res->body);
    free(res->headers); /* one block with its strings (pg_session_headers) */
    for (i = 0; i < res->nset_cookies; i++) {
        free(res->set_cookies[i]);
    }
    free(res);
}

/* Take ownership of value (a full Set-Cookie value). */
pg_status_t
pg_result_cookie(pg_gate_result_t *res, const char *value)
{
    char *copy;

    if (value == NULL) {
        return PG_ERR_NOMEM;
    }
    if (res->nset_cookies >= PG_GATE_MAX_SET_COOKIES) {
        return PG_ERR_TOO_LARGE;
    }
    copy = strdup(value);
    if (copy == NULL) {
        return PG_ERR_NOMEM;
    }
    res->set_cookies[res->nset_cookies++] = copy;
    return PG_OK;
}

/*
 * Build a Set-Cookie value: HttpOnly, SameSite=Lax, Secure when configured,
 * Path and Domain from the session config. max_age 0 deletes the cookie.
 * Returns a malloc'd string or NULL.
 */
char *
pg_cookie_line(const pg_config_t *cfg, const char *name, const char *value,
               long max_age)
{
    return pg_cookie_line_ss(cfg, name, value, max_age, "Lax");
}

/*
 * The same with an explicit SameSite. "None" (needed for a cookie that
 * must come back on the IdP's cross-site HTTP-POST to the SAML ACS) is only
 * valid with Secure, so without cookie_secure (plain-http development) the
 * attribute is left out and the browser's default applies.
 */
char *
pg_cookie_line_ss(const pg_config_t *cfg, const char *name, const char *value,
                  long max_age, const char *samesite)
{
    char *out = NULL;
    const pg_session_cfg_t *s = &cfg->session;
    int none = strcmp(samesite, "None") == 0;

    if (asprintf(&out, "%s=%s; Path=%s%s%s; Max-Age=%ld; HttpOnly%s%s%s",
                 name, value, s->cookie_path ? s->cookie_path : "/",
                 s->cookie_domain ? "; Domain=" : "",
                 s->cookie_domain ? s->cookie_domain : "", max_age,
                 (none && !s->cookie_secure) ? "" : "; SameSite=",
                 (none && !s->cookie_secure) ? "" : samesite,
                 s->cookie_secure ? "; Secure" : "") < 0) {
        return NULL;
    }
    return out;
}

/*
 * Escape text for HTML element content and attribute values (& < > " ').
 * out is always NUL-terminated; when outsz is short the output stops
 * before the first character (or entity) that does not fit. s NULL = "".
 */
void
pg_html_escape(const char *s, char *out, size_t outsz)
{
    size_t o = 0;
    const char *rep;
    size_t rl;

    for (; s != NULL && *s != '\0'; s++) {
        switch (*s) {
        case '&': rep = "&amp;"; break;
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '"': rep = "&quot;"; break;
        case '\'': rep = "&#39;"; break;
        default: rep = NULL; break;
        }
        rl = rep != NULL ? strlen(rep) : 1;
        if (o + rl + 1 >= outsz) {
            break;
        }
        if (rep != NULL) {
            memcpy(out + o, rep, rl);
        } else {
            out[o] = *s;
        }
        o += rl;
    }
    out[o] = '\0';
}

static const char *
pg_status_title(int status)
{
    switch (status) {
    case 202: return "Awaiting approval";
    case 400: return "Bad sign-in request";
    case 401: return "Sign-in failed";
    case 403: return "Access denied";
    case 502: return "An upstream service answered badly";
    case 503: return "Service temporarily unavailable";
    case 504: return "An upstream service did not answer in time";
    default: return "Error";
    }
}

/*
 * The HTML document every gate page uses (error, "being prepared", IdP
 * choice): one template and stylesheet. title is raw text (escaped here,
 * capped at 255 bytes); head_html and body_html are markup the caller built
 * with every value escaped. Returns a malloc'd string; NULL on OOM.
 */
char *
pg_html_doc(const char *head_html, const char *title, const char *body_html)
{
    char t[256 * 6];
    char *body = NULL;
    char tcap[256];

    snprintf(tcap, sizeof(tcap), "%s", title != NULL ? title : "");
    pg_html_escape(tcap, t, sizeof(t));
    if (asprintf(&body,
                 "<!DOCTYPE html>\n<html lang=\"en\"><head>%s"
                 "<meta charset=\"utf-8\"><title>%s</title>"
                 "<meta name=\"viewport\" content=\"width=device-width\">"
                 "<style>body{font-family:sans-serif;max-width:40em;"
                 "margin:4em auto;padding:0 1em;color:#222}"
                 "code{background:#eee;padding:0 .3em}</style></head>"
                 "<body>%s</body></html>\n", head_html != NULL ? head_html : "",
                 t, body_html != NULL ? body_html : "") < 0) {
        return NULL;
    }
    return body;
}

/*
 * An error page: HTML for browsers, JSON otherwise. reason is a stable
 * code; event_id (may be NULL) lets an admin find the audit event. The
 * result is owned by the caller.
 */
static pg_gate_result_t *
pg_page(int status, int html, const char *reason, const char *message,
        const char *event_id)
{
    return pg_page_retry(status, html, reason, message, event_id, NULL, 0);
}

/*
 * pg_page() that also asks the client to come back: retry_after_s > 0 sets
 * res->retry_after_s (the host sends Retry-After) and, for HTML, a meta
 * refresh to refresh_url (a same-origin path the gate validated; NULL =
 * reload this page).
 */
pg_gate_result_t *
pg_page_retry(int status, int html, const char *reason, const char *message,
              const char *event_id, const char *refresh_url,
              unsigned retry_after_s)
{
    pg_gate_result_t *res = pg_result_new(PG_RES_PAGE, status);
    char t[256], m[1024], r[128], e[64], u[2048], meta[2200];
    char *body = NULL, *inner = NULL;
    int n;

    if (res == NULL) {
        return NULL;
    }
    res->retry_after_s = retry_after_s;
    meta[0] = '\0';
    if (retry_after_s > 0) {
        pg_html_escape(refresh_url != NULL ? refresh_url : "", u, sizeof(u));
        snprintf(meta, sizeof(meta),
                 "<meta http-equiv=\"refresh\" content=\"%u%s%s\">",
                 retry_after_s, u[0] != '\0' ? ";url=" : "", u);
    }
    if (html) {
        pg_html_escape(pg_status_title(status), t, sizeof(t));
        pg_html_escape(message, m, sizeof(m));
        pg_html_escape(reason, r, sizeof(r));
        pg_html_escape(event_id != NULL ? event_id : "-", e, sizeof(e));
        n = asprintf(&inner,
                     "<h1>%s</h1><p>%s</p>"
                     "<p class=\"ref\">Reason: <code id=\"reason\">%s</code>"
                     " &middot; Reference: <code id=\"ref\">%s</code></p>",
                     t, m, r, e);
        if (n >= 0) {
            body = pg_html_doc(meta, pg_status_title(status), inner);
            free(inner);
        }
        res->content_type = "text/html; charset=utf-8";
    } else {
        json_t *j = json_pack("{s:s, s:s, s:s?}", "error", reason,
                              "message", message, "reference", event_id);

        if (j != NULL && retry_after_s > 0) {
            json_object_set_new(j, "retry_after", json_integer(retry_after_s));
        }
        body = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        n = body != NULL ? (int) strlen(body) : -1;
        res->content_type = "application/json";
    }
    if (n < 0 || body == NULL) {
        free(body);
        pg_gate_result_free(res);
        return NULL;
    }
    res->body = body;
    res->body_len = strlen(body);
    return res;
}

pg_gate_result_t *
pg_gate_saml_metadata(const pg_config_t *cfg, const char *idp)
{
    const pg_idp_cfg_t *d = pg_config_idp(cfg, idp);
    pg_gate_result_t *res;
    char *xml = NULL;

    if (d == NULL || d->type != PG_IDP_SAML || d->saml.sp == NULL
        || pg_saml_sp_metadata(d->saml.sp, &xml) != PG_OK) {
        return NULL;
    }
    res = pg_result_new(PG_RES_PAGE, 200);
    if (res == NULL) {
        free(xml);
        return NULL;
    }
    res->body = xml;
    res->body_len = strlen(xml);
    res->content_type = "application/samlmetadata+xml";
    res->no_store = 0;
    return res;
}

pg_gate_result_t *
pg_gate_error_page(int status, const char *reason, const char *message)
{
    return pg_page(status, 1, reason, message, NULL);
}

/* ---- ops ------------------------------------------------------------- */

/*
 * Iterate the "name=value" pairs of one Cookie header value: returns 1 with
 * name and value (not NUL-terminated) and advances *p, or 0 at the end.
 * Pairs without '=' are skipped. The caller has capped the header length.
 */
int
pg_cookie_next(const char **p, const char **k, size_t *klen, const char **v,
               size_t *vlen)
{
    while (*p != NULL && **p != '\0') {
        const char *s = *p, *end, *eq;
        size_t len;

        while (*s == ' ' || *s == '\t') {
            s++;
        }
        end = strchr(s, ';');
        len = end ? (size_t) (end - s) : strlen(s);
        *p = end ? end + 1 : NULL;
        eq = memchr(s, '=', len);
        if (eq == NULL) {
            continue;
        }
        *k = s;
        *klen = (size_t) (eq - s);
        *v = eq + 1;
        *vlen = len - *klen - 1;
        return 1;
    }
    return 0;
}

/*
 * 1 when a session of IdP idp (NULL: unknown) may be used on req's
 * location: the location names no IdP, idp is its IdP, or one of its IdPs.
 */
static int
pg_req_idp_allowed(const pg_gate_req_t *req, const char *idp)
{
    size_t i;

    if (req->idp == NULL && req->nidps == 0) {
        return 1;
    }
    if (idp == NULL) {
        return 0;
    }
    if (req->idp != NULL) {
        return strcmp(idp, req->idp) == 0;
    }
    for (i = 0; i < req->nidps && req->idps != NULL; i++) {
        if (req->idps[i] != NULL && strcmp(idp, req->idps[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

/*
 * The fast path of a protected request: a valid session cookie whose
 * session is in this process's cache (trusted only while the revocation
 * feed is live) and complete for this location. Builds the ALLOW result
 * without creating an op; NULL means "take the normal path".
 */
static pg_gate_result_t *
pg_access_fast(pg_gate_t *g, const pg_gate_req_t *req, char *sid,
               size_t sidsz, int *seen)
{
    const pg_config_t *cfg = g->cfg;
    size_t i, nlen = strlen(cfg->session.cookie_name);
    const json_t *sess = NULL;
    const char *idp;
    pg_gate_result_t *res;

    *seen = 0;
    for (i = 0; i < req->ncookies && *seen == 0; i++) {
        const char *p = req->cookies[i], *k, *v;
        size_t klen, vlen, outlen = 0;

        if (strnlen(p, PG_GATE_MAX_COOKIE + 1) > PG_GATE_MAX_COOKIE) {
            continue;
        }
        while (pg_cookie_next(&p, &k, &klen, &v, &vlen)) {
            if (klen != nlen || memcmp(k, cfg->session.cookie_name, nlen) != 0) {
                continue;
            }
            if (pg_unseal(cfg->session.key, "session", v, vlen, sid,
                          sidsz - 1, &outlen) != PG_OK) {
                sid[0] = '\0';
                *seen = -1;   /* the normal path audits the bad cookie */
                return NULL;
            }
            sid[outlen] = '\0';
            *seen = 1;
            sess = pg_cache_get(&g->cache, sid);
            break;
        }
    }
    if (sess == NULL) {
        return NULL;
    }
    idp = json_string_value(json_object_get(sess, "idp"));
    if (!pg_req_idp_allowed(req, idp)
        || (req->app != NULL
            && json_object_get(json_object_get(sess, "apps"), req->app)
               == NULL)) {
        return NULL;
    }
    res = pg_result_new(PG_RES_ALLOW, 200);
    if (res == NULL || pg_session_headers(g, sess, req->app, res) != PG_OK) {
        pg_gate_result_free(res);
        return NULL;
    }
    res->no_store = 0;
    pg_usage_mark(g, sid, sess, req->app);
    return res;
}

/*
 * A new op with copies of what it needs from req. Cookies are parsed here:
 * the session cookie is unsealed into op->sid (a tampered or foreign value
 * simply means no session) and state cookies are unsealed into
 * op->state_cookies. NULL on OOM.
 */
pg_op_t *
pg_op_new(pg_gate_t *g, int flow, const pg_gate_req_t *req, pg_gate_cb cb,
          void *arg, const char *known_sid)
{
    pg_op_t *op = calloc(1, sizeof(*op));
    const pg_config_t *cfg = g->cfg;
    size_t i, nlen = strlen(cfg->session.cookie_name);
    size_t plen = strlen(g->state_cookie_prefix);

    if (op == NULL) {
        return NULL;
    }
    op->g = g;
    op->flow = flow;
    op->cb = cb;
    op->arg = arg;
    op->started_ms = g->host->now_ms(g->host->ctx);
    op->wants_html = req->wants_html;
    op->idp = req->idp ? strdup(req->idp) : NULL;
    op->app = req->app ? strdup(req->app) : NULL;
    op->uri = pg_strndup_or_null(req->uri, req->uri_len);
    op->args = pg_strndup_or_null(req->args, req->args_len);
    op->client_ip = req->client_ip ? strdup(req->client_ip) : NULL;
    op->request_id = req->request_id ? strdup(req->request_id) : NULL;
    if (req->idp == NULL && req->nidps > 0 && req->idps != NULL) {
        if (req->nidps > PG_GATE_MAX_IDPS) {
            pg_op_free(op);
            return NULL;
        }
        op->idps = calloc(req->nidps, sizeof(char *));
        if (op->idps == NULL) {
            pg_op_free(op);
            return NULL;
        }
        for (i = 0; i < req->nidps; i++) {
            op->idps[i] = strdup(req->idps[i]);
            if (op->idps[i] == NULL) {
                pg_op_free(op);
                return NULL;
            }
            op->nidps = i + 1;
        }
        /* the remembered choice is read from these if a login starts */
        if (req->ncookies > 0) {
            op->raw_cookies = calloc(req->ncookies, sizeof(char *));
            if (op->raw_cookies == NULL) {
                pg_op_free(op);
                return NULL;
            }
            for (i = 0; i < req->ncookies; i++) {
                op->raw_cookies[i] = strndup(req->cookies[i],
                                             PG_GATE_MAX_COOKIE + 1);
                if (op->raw_cookies[i] == NULL) {
                    pg_op_free(op);
                    return NULL;
                }
                op->nraw_cookies = i + 1;
            }
        }
    }
    if (req->body != NULL) {
        op->body = malloc(req->body_len + 1);
        if (op->body == NULL) {
            pg_op_free(op);
            return NULL;
        }
        memcpy(op->body, req->body, req->body_len);
        op->body[req->body_len] = '\0';
        op->body_len = req->body_len;
    }
    if ((req->idp && !op->idp) || (req->app && !op->app)
        || (req->uri && !op->uri) || (req->args && !op->args)
        || (req->client_ip && !op->client_ip)
        || (req->request_id && !op->request_id)) {
        pg_op_free(op);
        return NULL;
    }
    if (op->app != NULL) {
        op->target = pg_config_target(cfg, op->app);
    }
    if (known_sid != NULL) {
        /* already unsealed by pg_access_fast(): not twice per request */
        op->sid = strdup(known_sid);
        if (op->sid == NULL) {
            pg_op_free(op);
            return NULL;
        }
    }

    for (i = 0; i < req->ncookies; i++) {
        const char *p = req->cookies[i], *k, *v;
        size_t klen, vlen;
        char buf[512];
        size_t outlen = 0;

        if (strnlen(p, PG_GATE_MAX_COOKIE + 1) > PG_GATE_MAX_COOKIE) {
            continue; /* over the cap: ignored, as if absent */
        }
        while (pg_cookie_next(&p, &k, &klen, &v, &vlen)) {
            if (klen == nlen && memcmp(k, cfg->session.cookie_name, nlen) == 0
                && op->sid == NULL) {
                if (pg_unseal(cfg->session.key, "session", v, vlen, buf,
                              sizeof(buf) - 1, &outlen) == PG_OK) {
                    buf[outlen] = '\0';
                    op->sid = strdup(buf);
                } else {
                    op->sid = strdup(""); /* present but invalid */
                }
            } else if (klen > plen && memcmp(k, g->state_cookie_prefix, plen) == 0
                       && op->nstate_cookies < 8) {
                char **nv;

                if (op->nstate_cookie_names < PG_GATE_MAX_SET_COOKIES - 1) {
                    op->state_cookie_names[op->nstate_cookie_names] =
                        strndup(k, klen);
                    if (op->state_cookie_names[op->nstate_cookie_names]) {
                        op->nstate_cookie_names++;
                    }
                }
                if (pg_unseal(cfg->session.key, "state", v, vlen, buf,
                              sizeof(buf) - 1, &outlen) == PG_OK) {
                    buf[outlen] = '\0';
                    nv = realloc(op->state_cookies,
                                 (op->nstate_cookies + 1) * sizeof(char *));
                    if (nv != NULL) {
                        op->state_cookies = nv;
                        nv[op->nstate_cookies] = strdup(buf);
                        if (nv[op->nstate_cookies] != NULL) {
                            op->nstate_cookies++;
                        }
                    }
                }
            }
        }
    }
    return op;
}

void
pg_op_free(pg_op_t *op)
{
    size_t i;

    if (op == NULL) {
        return;
    }
    if (op->rop != NULL) {
        pg_redis_cancel(op->rop);
    }
    if (op->hop != NULL) {
        pg_http_cancel(op->hop);
    }
    if (op->sop != NULL) {
        pg_scim_cancel(op->sop);
    }
    if (op->creq != NULL && op->creq_conn != NULL) {
        pg_conn_cancel(op->creq_conn, op->creq);
    }
    if (op->timer != NULL) {
        op->g->host->timer_close(op->timer);
    }
    if (op->waiting_on != NULL) {
        pg_provider_unpark(op);
    }
    if (op->obreq != NULL) {
        pg_outbox_cancel(op->obreq);
    }
    pg_ob_unlist(op);
    free(op->ob_idem);
    json_decref(op->approved);
    json_decref(op->admin_attrs);
    free(op->admin_iid);
    free(op->admin_rid);
    json_decref(op->admin_result);
    pg_prov_unlock(op);
    pg_saml_job_detach(op);
    pg_saml_slo_detach(op);
    json_decref(op->saml_subject);
    free(op->idp);
    for (i = 0; i < op->nidps; i++) {
        free(op->idps[i]);
    }
    free(op->idps);
    for (i = 0; i < op->nraw_cookies; i++) {
        free(op->raw_cookies[i]);
    }
    free(op->raw_cookies);
    free(op->choice_cookie);
    free(op->app);
    free(op->uri);
    free(op->args);
    free(op->client_ip);
    free(op->request_id);
    free(op->body);
    free(op->sid);
    for (i = 0; i < op->nstate_cookies; i++) {
        free(op->state_cookies[i]);
    }
    free(op->state_cookies);
    for (i = 0; i < op->nstate_cookie_names; i++) {
        free(op->state_cookie_names[i]);
    }
    free(op->state);
    free(op->code);
    free(op->nonce);
    free(op->verifier);
    free(op->return_to);
    free(op->id_token);
    json_decref(op->claims);
    json_decref(op->attrs);
    json_decref(op->session);
    free(op->iid);
    pg_decision_clear(&op->decision);
    free(op->lock_key);
    free(op->lock_token);
    free(op->known_account);
    json_decref(op->prev_ents);
    json_decref(op->revoke);
    free(op->scim.account_id);
    pg_gate_result_free(op->res);
    free(op);
}

void
pg_op_finish(pg_op_t *op, pg_gate_result_t *res)
{
    pg_gate_cb cb = op->cb;
    void *arg = op->arg;

    if (res == NULL) {
        res = pg_page(503, op->wants_html, "out_of_memory",
                      "The gateway is overloaded. Please try again.", NULL);
    }
    pg_op_free(op);
    cb(arg, res);
}

void
pg_op_fail(pg_op_t *op, int status, const char *reason, const char *message,
           const char *event_id)
{
    pg_op_finish(op, pg_page(status, op->wants_html, reason, message,
                             event_id));
}

void
pg_op_audit(pg_op_t *op, const char *type, const char *outcome,
            const char *reason, json_t *fields, char id_out[PG_AUDIT_ID_LEN])
{
    if (fields == NULL) {
        fields = json_object();
    }
    if (fields != NULL) {
        if (op->idp) json_object_set_new(fields, "idp", json_string(op->idp));
        if (op->idp_via) {
            json_object_set_new(fields, "idp_choice",
                                json_string(op->idp_via));
        }
        if (op->app) json_object_set_new(fields, "app", json_string(op->app));
        if (op->client_ip) {
            json_object_set_new(fields, "client_ip", json_string(op->client_ip));
        }
        if (op->iid) json_object_set_new(fields, "identity", json_string(op->iid));
        if (op->request_id) {
            json_object_set_new(fields, "request_id", json_string(op->request_id));
        }
        if (op->flow == PG_FLOW_OUTBOX && op->g->ob_name[0] != '\0') {
            /* which worker applied it, and whether its own login's
             * enqueue handed it over (outbox.own) */
            json_object_set_new(fields, "consumer",
                                json_string(op->g->ob_name));
            json_object_set_new(fields, "own", json_boolean(op->ob_own));
        }
        if (op->claims != NULL) {
            json_t *sub = json_object_get(op->claims, "sub");
            if (json_is_string(sub)) {
                json_object_set(fields, "subject", sub);
            }
        }
    }
    pg_audit_emit(op->g->audit, type, outcome, reason, fields, id_out);
}

void
pg_op_deny(pg_op_t *op, int status, const char *type, const char *reason,
           const char *message, json_t *fields)
{
    char id[PG_AUDIT_ID_LEN] = "";

    pg_op_audit(op, type, status >= 500 ? "failure" : "denied", reason, fields,
                id);
    pg_op_fail(op, status, reason, message, id);
}

/* Monotonic clock in microseconds; 0 if the clock cannot be read. */
uint64_t
pg_mono_us(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        return 0;
    }
    return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

/* ---- waits ----------------------------------------------------------- */

static void
pg_op_redis_done(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_op_t *op = arg;
    pg_step_fn next = op->next;

    op->rop = NULL;
    op->next = NULL;
    pg_cur_reply = reply;
    next(op, st);
    pg_cur_reply = NULL;
}

pg_status_t
pg_op_redis(pg_op_t *op, pg_step_fn next, int argc, const char **argv,
            const size_t *lens)
{
    pg_status_t st;

    op->next = next;
    st = pg_redis_command(op->g->redis, argc, argv, lens, 0, pg_op_redis_done,
                          op, &op->rop);
    if (st != PG_OK) {
        op->next = NULL;
        op->rop = NULL;
    }
    return st;
}

/*
 * "<cmd> <prefix><id>" (GET, GETDEL, ...), then next(op, st). On a send
 * failure next runs at once with the status; on OOM the op finishes.
 */
void
pg_op_key(pg_op_t *op, pg_step_fn next, const char *cmd, const char *prefix,
          const char *id)
{
    char *key = pg_key(op->g, prefix, id);
    const char *argv[2];
    pg_status_t st;

    if (key == NULL) {
        pg_op_finish(op, NULL);
        return;
    }
    argv[0] = cmd;
    argv[1] = key;
    st = pg_op_redis(op, next, 2, argv, NULL);
    free(key);
    if (st != PG_OK) {
        next(op, st);
    }
}

const struct redisReply *
pg_op_reply(void)
{
    return pg_cur_reply;
}

static void
pg_op_http_done(void *arg, pg_status_t st, const pg_http_response_t *resp)
{
    pg_op_t *op = arg;
    pg_step_fn next = op->next;

    op->hop = NULL;
    op->next = NULL;
    pg_cur_response = resp;
    next(op, st);
    pg_cur_response = NULL;
}

pg_status_t
pg_op_http(pg_op_t *op, pg_step_fn next, const pg_http_request_t *req)
{
    pg_status_t st;

    op->next = next;
    st = pg_http_start(op->g->http, req, pg_op_http_done, op, &op->hop);
    if (st != PG_OK) {
        op->next = NULL;
        op->hop = NULL;
    }
    return st;
}

const pg_http_response_t *
pg_op_response(void)
{
    return pg_cur_response;
}

static void
pg_op_timer_done(void *arg)
{
    pg_op_t *op = arg;
    pg_step_fn next = op->next;

    op->g->host->timer_close(op->timer);
    op->timer = NULL;
    op->next = NULL;
    next(op, PG_OK);
}

pg_status_t
pg_op_sleep(pg_op_t *op, pg_step_fn next, uint64_t ms)
{
    const pg_host_t *h = op->g->host;

    op->timer = h->timer_open(h->ctx, pg_op_timer_done, op);
    if (op->timer == NULL) {
        return PG_ERR_NOMEM;
    }
    op->next = next;
    h->timer_arm(op->timer, ms);
    return PG_OK;
}

/* ---- public entry points --------------------------------------------- */

pg_status_t
pg_gate_new(const pg_config_t *cfg, const pg_host_t *host, pg_gate_t **out,
            pg_err_t *err)
{
    return pg_gate_new_with(cfg, host, 0, out, err);
}

pg_status_t
pg_gate_new_with(const pg_config_t *cfg, const pg_host_t *host,
                 unsigned flags, pg_gate_t **out, pg_err_t *err)
{
    pg_gate_t *g = calloc(1, sizeof(*g));
    pg_status_t st;
    size_t i, n = 0;

    if (g == NULL) {
        return PG_ERR_NOMEM;
    }
    g->cfg = cfg;
    g->host = host;
    g->flags = flags;
    if (cfg->ntargets > 0) {
        g->scim_caps = calloc(cfg->ntargets, sizeof(*g->scim_caps));
        g->scim_oauth = calloc(cfg->ntargets, sizeof(*g->scim_oauth));
        if (g->scim_caps == NULL || g->scim_oauth == NULL) {
            free(g->scim_caps);
            free(g->scim_oauth);
            free(g);
            return PG_ERR_NOMEM;
        }
    }
    for (i = 0; i < cfg->ntargets; i++) {
        const pg_target_cfg_t *t = &cfg->targets[i];
        pg_scim_oauth_cfg_t oc;

        if (t->type != PG_TARGET_SCIM || t->auth != PG_AUTH_OAUTH2) {
            continue;
        }
        memset(&oc, 0, sizeof(oc));
        oc.token_url = t->oauth_token_url;
        oc.client_id = t->oauth_client_id;
        oc.client_secret = t->oauth_client_secret;
        oc.scope = t->oauth_scope;
        oc.skew_s = t->oauth_skew_s;
        oc.timeout_ms = t->timeout_ms;
        oc.tls = t->tls;           /* borrowed from cfg, which outlives g */
        st = pg_scim_oauth_new(&oc, &g->scim_oauth[i]);
        if (st != PG_OK) {
            pg_err_set(err, "target %s: oauth2 token cache: %s", t->name,
                       pg_status_str(st));
            goto fail;
        }
    }

    st = pg_redis_new(host, &cfg->redis, &g->redis);
    if (st != PG_OK) {
        pg_err_set(err, "redis client: %s", pg_status_str(st));
        goto fail;
    }
    st = pg_http_new(host, &g->http);
    if (st != PG_OK) {
        pg_err_set(err, "http client: %s", pg_status_str(st));
        goto fail;
    }
    st = pg_audit_new(host, &cfg->audit, cfg->instance, g->redis, &g->audit,
                      err);
    if (st != PG_OK) {
        goto fail;
    }
    st = pg_cache_init(g);
    if (st != PG_OK) {
        pg_err_set(err, "session cache: %s", pg_status_str(st));
        goto fail;
    }
    st = pg_ob_init(g, err);
    if (st != PG_OK) {
        goto fail;
    }
    if (asprintf(&g->state_cookie_prefix, "%s_st_",
                 cfg->session.cookie_name) < 0) {
        g->state_cookie_prefix = NULL;
        st = PG_ERR_NOMEM;
        goto fail;
    }
    if (asprintf(&g->idp_cookie_name, "%s_idp",
                 cfg->session.cookie_name) < 0) {
        g->idp_cookie_name = NULL;
        st = PG_ERR_NOMEM;
        goto fail;
    }
    g->providers = calloc(cfg->nidps ? cfg->nidps : 1, sizeof(pg_provider_t));
    if (g->providers == NULL) {
        st = PG_ERR_NOMEM;
        goto fail;
    }
    for (i = 0; i < cfg->nidps; i++) {
        if (cfg->idps[i].type != PG_IDP_OIDC) {
            continue;
        }
        g->providers[n].gate = g;
        g->providers[n].cfg = &cfg->idps[i].oidc;
        n++;
    }
    g->nproviders = n;
    st = pg_saml_meta_init(g, err);
    if (st != PG_OK) {
        goto fail;
    }

    g->header_names[0] = cfg->headers.user;
    g->header_names[1] = cfg->headers.email;
    g->header_names[2] = cfg->headers.groups;
    g->header_names[3] = cfg->headers.entitlements;
    g->header_names[4] = cfg->headers.identity;
    g->header_names[5] = NULL;

    *out = g;
    return PG_OK;

fail:
    pg_gate_free(g);
    return st != PG_OK ? st : PG_ERR_INTERNAL;
}

void
pg_gate_free(pg_gate_t *g)
{
    size_t i;

    if (g == NULL) {
        return;
    }
    for (i = 0; i < g->nproviders; i++) {
        pg_provider_clear(&g->providers[i]);
    }
    free(g->providers);
    pg_saml_meta_free(g);
    pg_ob_free(g);
    pg_cache_free(&g->cache);
    pg_audit_free(g->audit);
    /* token caches first: an in-flight token fetch is cancelled on g->http */
    for (i = 0; g->scim_oauth != NULL && i < g->cfg->ntargets; i++) {
        pg_scim_oauth_free(g->scim_oauth[i]);
    }
    pg_http_free(g->http);
    pg_redis_free(g->redis);
    free(g->state_cookie_prefix);
    free(g->idp_cookie_name);
    free(g->scim_caps);
    free(g->scim_oauth);
    free(g);
}

const char *const *
pg_gate_header_names(const pg_gate_t *g)
{
    return g != NULL ? g->header_names : pg_default_names;
}

/*
 * Common start: make the op and run the flow's first step with a local
 * callback. If the flow finished without waiting (e.g. a missing cookie on
 * an API request), the result is handed back synchronously in *sync_res;
 * otherwise the op now waits and will call the host's cb exactly once.
 */
typedef struct {
    pg_gate_result_t *res;
    int done;
} pg_sync_t;

static void
pg_sync_cb(void *arg, pg_gate_result_t *res)
{
    pg_sync_t *s = arg;

    s->res = res;
    s->done = 1;
}

static pg_status_t
pg_gate_run(pg_gate_t *g, int flow, const pg_gate_req_t *req, pg_gate_cb cb,
            void *arg, pg_gate_op_t **op_out, pg_gate_result_t **sync_res)
{
    pg_op_t *op;
    pg_sync_t sync = { NULL, 0 };
    char sid[512];
    int seen = 0;

    *op_out = NULL;
    *sync_res = NULL;

    if (flow == PG_FLOW_ACCESS) {
        *sync_res = pg_access_fast(g, req, sid, sizeof(sid), &seen);
        if (*sync_res != NULL) {
            return PG_OK;
        }
    }

    op = pg_op_new(g, flow, req, pg_sync_cb, &sync, seen ? sid : NULL);
    if (op == NULL) {
        return PG_ERR_NOMEM;
    }

    switch (flow) {
    case PG_FLOW_ACCESS:
        pg_access_start(op);
        break;
    case PG_FLOW_CALLBACK:
        pg_callback_start(op);
        break;
    case PG_FLOW_ADMIN:
        pg_admin_start(op, req->method != NULL
                               && strcmp(req->method, "POST") == 0);
        break;
    case PG_FLOW_SAML_ACS:
        pg_saml_acs_start(op);
        break;
    case PG_FLOW_SAML_SLO:
        op->slo_post = req->method != NULL && strcmp(req->method, "POST") == 0;
        pg_saml_slo_start(op);
        break;
    default:
        pg_logout_start(op);
        break;
    }

    if (sync.done) {
        /* answered without waiting; op is already freed */
        *sync_res = sync.res;
        return PG_OK;
    }

    /* waiting: from now on results go to the host's callback */
    op->cb = cb;
    op->arg = arg;
    *op_out = op;
    return PG_OK;
}

pg_status_t
pg_gate_access(pg_gate_t *g, const pg_gate_req_t *req, pg_gate_cb cb,
               void *arg, pg_gate_op_t **op_out, pg_gate_result_t **sync_res)
{
    return pg_gate_run(g, PG_FLOW_ACCESS, req, cb, arg, op_out, sync_res);
}

pg_status_t
pg_gate_callback(pg_gate_t *g, const pg_gate_req_t *req, pg_gate_cb cb,
                 void *arg, pg_gate_op_t **op_out, pg_gate_result_t **sync_res)
{
    return pg_gate_run(g, PG_FLOW_CALLBACK, req, cb, arg, op_out, sync_res);
}

pg_status_t
pg_gate_saml_acs(pg_gate_t *g, const pg_gate_req_t *req, pg_gate_cb cb,
                 void *arg, pg_gate_op_t **op_out, pg_gate_result_t **sync_res)
{
    return pg_gate_run(g, PG_FLOW_SAML_ACS, req, cb, arg, op_out, sync_res);
}

pg_status_t
pg_gate_saml_slo(pg_gate_t *g, const pg_gate_req_t *req, pg_gate_cb cb,
                 void *arg, pg_gate_op_t **op_out, pg_gate_result_t **sync_res)
{
    return pg_gate_run(g, PG_FLOW_SAML_SLO, req, cb, arg, op_out, sync_res);
}

pg_status_t
pg_gate_logout(pg_gate_t *g, const pg_gate_req_t *req, pg_gate_cb cb,
               void *arg, pg_gate_op_t **op_out, pg_gate_result_t **sync_res)
{
    return pg_gate_run(g, PG_FLOW_LOGOUT, req, cb, arg, op_out, sync_res);
}

pg_status_t
pg_gate_admin(pg_gate_t *g, const pg_gate_req_t *req, pg_gate_cb cb,
              void *arg, pg_gate_op_t **op_out, pg_gate_result_t **sync_res)
{
    return pg_gate_run(g, PG_FLOW_ADMIN, req, cb, arg, op_out, sync_res);
}

/* Withdraw whatever the op waits for; its callback will never run. */
void
pg_gate_cancel(pg_gate_op_t *op)
{
    pg_op_free(op);
}
