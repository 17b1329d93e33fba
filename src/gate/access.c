/*
 * provgate core: protected requests and logout.
 *
 * A protected request needs a session cookie that unseals (AES-GCM; a
 * tampered value is "no session") and a live session record in Redis.
 * When the location's app is not yet in the session, the person is
 * provisioned there first (policy, then the target) and the session is
 * updated. Then the trusted identity headers are returned.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis.h>

#include "provgate/util.h"
#include "gate_int.h"

#define PG_HEADER_MAX 4096

/* Append the strings of a JSON array, comma-separated, to buf (NUL-
 * terminated, truncated at bufsz-1). Returns buf. */
static const char *
pg_join(const json_t *arr, char *buf, size_t bufsz)
{
    size_t i, len = 0, l;
    json_t *v;

    buf[0] = '\0';
    json_array_foreach(arr, i, v) {
        if (!json_is_string(v)) {
            continue;
        }
        l = json_string_length(v);
        if (len + (len > 0) + l + 1 > bufsz) {
            break;
        }
        if (len > 0) {
            buf[len++] = ',';
        }
        memcpy(buf + len, json_string_value(v), l);
        len += l;
        buf[len] = '\0';
    }
    return buf;
}

/*
 * Fill res->headers from a session record: user (attrs[user_attr]), email,
 * groups (comma-joined), entitlements of app (comma-joined), identity id.
 * Every value is cleaned of control bytes and capped at 4 KiB. The array
 * and all its strings are one allocation (this runs on every request);
 * pg_gate_result_free() releases it with one free().
 */
pg_status_t
pg_session_headers(pg_gate_t *g, const json_t *sess, const char *app,
                   pg_gate_result_t *res)
{
    const pg_headers_cfg_t *h = &g->cfg->headers;
    const json_t *attrs = json_object_get(sess, "attrs");
    const json_t *v;
    const char *names[5], *raw[5];
    char vals[5][PG_HEADER_MAX], joined[2][PG_HEADER_MAX];
    size_t n = 0, i, total = 0, nl, vl;
    char *block, *p;
    pg_kv_t *kv;

    v = json_object_get(attrs, h->user_attr);
    if (!json_is_string(v)) {
        v = json_object_get(attrs, "email");
    }
    if (json_is_string(v)) {
        names[n] = h->user; raw[n++] = json_string_value(v);
    }
    v = json_object_get(attrs, "email");
    if (json_is_string(v)) {
        names[n] = h->email; raw[n++] = json_string_value(v);
    }
    v = json_object_get(attrs, "groups");
    if (json_is_array(v)) {
        names[n] = h->groups; raw[n++] = pg_join(v, joined[0], PG_HEADER_MAX);
    }
    if (app != NULL) {
        v = json_object_get(json_object_get(json_object_get(sess, "apps"),
                                            app), "ents");
        if (json_is_array(v)) {
            names[n] = h->entitlements;
            raw[n++] = pg_join(v, joined[1], PG_HEADER_MAX);
        }
    }
    v = json_object_get(sess, "iid");
    if (json_is_string(v)) {
        names[n] = h->identity; raw[n++] = json_string_value(v);
    }

    for (i = 0; i < n; i++) {
        pg_header_value_clean(raw[i], strlen(raw[i]), vals[i], PG_HEADER_MAX);
        total += strlen(names[i]) + 1 + strlen(vals[i]) + 1;
    }
    block = malloc(n * sizeof(pg_kv_t) + total + 1);
    if (block == NULL) {
        return PG_ERR_NOMEM;
    }
    kv = (pg_kv_t *) (void *) block;
    p = block + n * sizeof(pg_kv_t);
    for (i = 0; i < n; i++) {
        nl = strlen(names[i]);
        vl = strlen(vals[i]);
        kv[i].name = p;
        memcpy(p, names[i], nl + 1);
        p += nl + 1;
        kv[i].value = p;
        memcpy(p, vals[i], vl + 1);
        p += vl + 1;
    }
    free(res->headers);
    res->headers = kv;
    res->nheaders = n;
    return PG_OK;
}

static void
pg_usage_ignore(void *arg, pg_status_t st, const redisReply *reply)
{
    (void) arg;
    (void) st;
    (void) reply;
}

/* FNV-1a over sid, a separator and app. */
static uint64_t
pg_usage_hash(const char *sid, const char *app)
{
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p;

    for (p = (const unsigned char *) sid; *p != '\0'; p++) {
        h = (h ^ *p) * 1099511628211ull;
    }
    h = (h ^ 0xffu) * 1099511628211ull;
    for (p = (const unsigned char *) app; *p != '\0'; p++) {
        h = (h ^ *p) * 1099511628211ull;
    }
    return h | 1u;   /* never 0: 0 marks an empty slot */
}

/*
 * Record that the session's identity used app now (the inactivity rule
 * and the jit "unless used recently" rule of src/sidecar/expiry.c read
 * used:<app>). At most one write a minute per (session, app) in this
 * process: a 256-slot table keyed by a hash of both; a collision only
 * costs an extra write. The write is fire and forget: a lost mark only
 * makes the sweep see an older last use.
 */
void
pg_usage_mark(pg_gate_t *g, const char *sid, const json_t *sess,
              const char *app)
{
    const char *iid = json_string_value(json_object_get(sess, "iid"));
    const char *argv[4];
    char field[160], now_s[32], *key;
    uint64_t h;
    int64_t now = (int64_t) time(NULL);
    size_t slot;

    if (sid == NULL || app == NULL || iid == NULL || strlen(app) > 128) {
        return;
    }
    h = pg_usage_hash(sid, app);
    slot = (size_t) (h % (sizeof(g->usage) / sizeof(g->usage[0])));
    if (g->usage[slot].h == h && now - g->usage[slot].at < 60
        && now >= g->usage[slot].at) {
        return;
    }
    key = pg_key(g, "id:", iid);
    if (key == NULL) {
        return;
    }
    snprintf(field, sizeof(field), "used:%s", app);
    snprintf(now_s, sizeof(now_s), "%lld", (long long) now);
    argv[0] = "HSET"; argv[1] = key; argv[2] = field; argv[3] = now_s;
    if (pg_redis_command(g->redis, 4, argv, NULL, 0, pg_usage_ignore, NULL,
                         NULL) == PG_OK) {
        g->usage[slot].h = h;
        g->usage[slot].at = now;
    }
    free(key);
}

static void
pg_access_allow(pg_op_t *op)
{
    pg_gate_result_t *res = pg_result_new(PG_RES_ALLOW, 200);

    if (res == NULL
        || pg_session_headers(op->g, op->session, op->app, res) != PG_OK) {
        pg_gate_result_free(res);
        pg_op_finish(op, NULL);
        return;
    }
    res->no_store = 0;
    pg_usage_mark(op->g, op->sid, op->session, op->app);
    pg_op_finish(op, res);
}

static void
pg_access_updated(pg_op_t *op, pg_status_t st)
{
    if (st == PG_OK) {
        pg_cache_put(&op->g->cache, op->sid, op->session, (int64_t) time(NULL));
    } else {
        pg_cache_del(&op->g->cache, op->sid);
    }
    /* the account exists either way; a lost update only means the next
     * request provisions again, which is idempotent */
    pg_access_allow(op);
}

/* Entitlement values of a decision, as a JSON array of strings. */
static json_t *
pg_ent_values(const pg_decision_t *d)
{
    json_t *out = json_array();
    size_t i;
    json_t *e;

    if (out == NULL || d->entitlements == NULL) {
        return out;
    }
    json_array_foreach(d->entitlements, i, e) {
        json_t *v = json_object_get(e, "value");
        if (json_is_string(v)) {
            json_array_append(out, v);
        }
    }
    return out;
}

/* Add apps[app] = {account, ents} to a session record. */
pg_status_t
pg_session_add_app(pg_op_t *op, json_t *sess)
{
    json_t *apps = json_object_get(sess, "apps");
    json_t *entry;

    if (op->app == NULL) {
        return PG_OK;
    }
    if (!json_is_object(apps)) {
        apps = json_object();
        if (apps == NULL || json_object_set_new(sess, "apps", apps) != 0) {
            return PG_ERR_NOMEM;
        }
    }
    entry = json_pack("{s:s?, s:o}", "account",
                      op->have_scim ? op->scim.account_id : NULL,
                      "ents", pg_ent_values(&op->decision));
    if (entry == NULL || json_object_set_new(apps, op->app, entry) != 0) {
        return PG_ERR_NOMEM;
    }
    return PG_OK;
}

static void
pg_access_provisioned(pg_op_t *op, pg_status_t st)
{
    char *json, *key;
    const char *argv[5];

    if (pg_session_add_app(op, op->session) != PG_OK
        || (json = json_dumps(op->session, JSON_COMPACT)) == NULL) {
        pg_op_finish(op, NULL);
        return;
    }
    key = pg_key(op->g, "sess:", op->sid);
    if (key == NULL) {
        free(json);
        pg_op_finish(op, NULL);
        return;
    }
    argv[0] = "SET"; argv[1] = key; argv[2] = json; argv[3] = "KEEPTTL";
    argv[4] = "XX";
    st = pg_op_redis(op, pg_access_updated, 5, argv, NULL);
    free(json);
    free(key);
    if (st != PG_OK) {
        pg_access_allow(op);
    }
}

static void
pg_access_session(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    json_error_t jerr;
    json_t *sess, *iid, *idp;

    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        pg_op_deny(op, 503, "access.denied", "identity_store_unavailable",
                   "The sign-in service is unavailable. Please try again "
                   "shortly.", NULL);
        return;
    }
    if (reply->type != REDIS_REPLY_STRING) {
        /* expired or ended: sign in again */
        pg_login_start(op);
        return;
    }
    if (reply->len > PG_GATE_MAX_SESSION
        || (sess = json_loadb(reply->str, reply->len, 0, &jerr)) == NULL) {
        pg_op_deny(op, 503, "access.denied", "session_corrupt",
                   "Your session cannot be read. Please sign in again.",
                   NULL);
        return;
    }
    op->session = sess;
    iid = json_object_get(sess, "iid");
    idp = json_object_get(sess, "idp");
    if (!json_is_string(iid) || !json_is_string(idp)) {
        pg_op_deny(op, 503, "access.denied", "session_corrupt",
                   "Your session cannot be read. Please sign in again.",
                   NULL);
        return;
    }
    if (!pg_op_idp_allowed(op, json_string_value(idp))) {
        /* signed in with a provider this location does not accept */
        json_decref(op->session);
        op->session = NULL;
        pg_login_start(op);
        return;
    }
    if (op->app != NULL
        && json_object_get(json_object_get(sess, "apps"), op->app) == NULL) {
        op->iid = strdup(json_string_value(iid));
        op->attrs = json_incref(json_object_get(sess, "attrs"));
        if (op->iid == NULL || !json_is_object(op->attrs)) {
            pg_op_finish(op, NULL);
            return;
        }
        op->after_provision = pg_access_provisioned;
        pg_provision_start(op);
        return;
    }
    pg_cache_put(&op->g->cache, op->sid, sess, (int64_t) time(NULL));
    pg_access_allow(op);
}

void
pg_access_start(pg_op_t *op)
{
    op->prov = pg_provider_find(op->g, op->idp);
    if (op->sid == NULL || op->sid[0] == '\0') {
        if (op->sid != NULL) {
            pg_op_audit(op, "session.invalid", "denied", "cookie_invalid",
                        NULL, NULL);
        }
        pg_login_start(op);
        return;
    }
    /* not answerable from the cache (pg_access_fast): read Redis, which
     * also refreshes the cache */
    pg_op_key(op, pg_access_session, "GET", "sess:", op->sid);
}

/* ---- logout ---------------------------------------------------------- */

static void
pg_logout_finish(pg_op_t *op)
{
    const pg_config_t *cfg = op->g->cfg;
    pg_gate_result_t *res = NULL;
    char *cookie, *url = NULL;
    const json_t *tok = json_object_get(op->session, "id_token");
    pg_provider_t *p = NULL;
    json_t *idp = json_object_get(op->session, "idp");

    if (json_is_string(idp)) {
        p = pg_provider_find(op->g, json_string_value(idp));
    }
    if (p != NULL && p->have_meta && json_is_string(tok)
        && pg_oidc_logout_url(&p->meta, p->cfg, json_string_value(tok), NULL,
                              &url) == PG_OK) {
        res = pg_result_new(PG_RES_REDIRECT, 302);
        if (res != NULL) {
            res->location = url;
        } else {
            free(url);
        }
    } else {
        static const char html[] =
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>Signed out</title></head><body><h1>Signed out</h1>"
            "<p>You have been signed out.</p></body></html>\n";

        res = pg_result_new(PG_RES_PAGE, 200);
        if (res != NULL) {
            res->body = strdup(html);
            res->body_len = sizeof(html) - 1;
            res->content_type = "text/html; charset=utf-8";
            if (res->body == NULL) {
                pg_gate_result_free(res);
                res = NULL;
            }
        }
    }
    if (res != NULL) {
        cookie = pg_cookie_line(cfg, cfg->session.cookie_name, "", 0);
        if (pg_result_cookie(res, cookie) != PG_OK) {
            pg_gate_result_free(res);
            res = NULL;
        }
        free(cookie);
    }
    pg_op_finish(op, res);
}

static void
pg_logout_deleted(pg_op_t *op, pg_status_t st)
{
    json_t *f = json_pack("{s:s}", "cause", "logout");

    pg_op_audit(op, "session.end", st == PG_OK ? "success" : "failure",
                st == PG_OK ? "logout" : "identity_store_unavailable", f,
                NULL);
    if (pg_saml_logout_redirect(op)) {
        return;     /* SAML SLO: on to the IdP with a LogoutRequest */
    }
    pg_logout_finish(op);
}

static void
pg_logout_session(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    json_error_t jerr;
    json_t *iid;
    char *key, *idx = NULL, *revoked;
    const char *argv[10];
    int n = 0;

    if (st == PG_OK && reply != NULL && reply->type == REDIS_REPLY_STRING
        && reply->len <= PG_GATE_MAX_SESSION) {
        op->session = json_loadb(reply->str, reply->len, 0, &jerr);
    }
    iid = json_object_get(op->session, "iid");
    if (json_is_string(iid)) {
        op->iid = strdup(json_string_value(iid));
    }
    pg_cache_del(&op->g->cache, op->sid);
    key = pg_key(op->g, "sess:", op->sid);
    revoked = pg_key(op->g, "revoked", NULL);
    if (op->iid != NULL) {
        idx = pg_key(op->g, "idsess:", op->iid);
    }
    if (key == NULL || revoked == NULL) {
        free(key);
        free(revoked);
        free(idx);
        pg_logout_finish(op);
        return;
    }
    /* one atomic round trip: drop the session and its index entry, and
     * tell every process's session cache (the revocation feed) */
    argv[n++] = "EVAL";
    argv[n++] = "redis.call('DEL', KEYS[1]) "
                "redis.call('XADD', KEYS[2], 'MAXLEN', '~', '100000', '*', "
                "'sid', ARGV[1]) "
                "if KEYS[3] then redis.call('SREM', KEYS[3], ARGV[1]) end "
                "return 1";
    argv[n++] = idx ? "3" : "2";
    argv[n++] = key;
    argv[n++] = revoked;
    if (idx) {
        argv[n++] = idx;
    }
    argv[n++] = op->sid;
    st = pg_op_redis(op, pg_logout_deleted, n, argv, NULL);
    free(key);
    free(revoked);
    free(idx);
    if (st != PG_OK) {
        pg_logout_deleted(op, st);
    }
}

void
pg_logout_start(pg_op_t *op)
{
    if (op->sid == NULL || op->sid[0] == '\0') {
        pg_logout_finish(op);
        return;
    }
    pg_op_key(op, pg_logout_session, "GET", "sess:", op->sid);
}
