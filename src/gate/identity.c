/*
 * provgate core: identity attributes and correlation.
 *
 * Attributes come from the verified claims per the "identity.claims" map.
 * Correlation maps (issuer, subject) to one identity id, atomically, in one
 * Lua script: an existing link wins; otherwise a configured rule may link
 * the login to an existing identity by an index (for example a verified
 * email); otherwise the candidate id becomes a new identity. Because the
 * script runs atomically in Redis, two concurrent first logins of one
 * person always get the same identity id.
 *
 * Keys: <p>idx:sub:<sha256(iss "\n" sub)>, <p>idx:<index>:<sha256(value)>
 * (values lower-cased), <p>id:<iid> (hash: attrs, created, updated, iss,
 * sub, acct:<app>, ents:<app>).
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis.h>

#include "provgate/util.h"
#include "gate_int.h"

#define PG_MAX_GROUPS 256
#define PG_MAX_CORR   8

static const char pg_correlate_lua[] =
    "local id = redis.call('GET', KEYS[1]) "
    "local how = 'existing' "
    "if not id then "
    "  for i = 2, #KEYS do "
    "    local v = redis.call('GET', KEYS[i]) "
    "    if v then id = v how = 'correlated' break end "
    "  end "
    "  if not id then id = ARGV[1] how = 'created' end "
    "  redis.call('SET', KEYS[1], id) "
    "end "
    "for i = 2, #KEYS do redis.call('SETNX', KEYS[i], id) end "
    "local k = ARGV[2] .. id "
    "redis.call('HSET', k, 'attrs', ARGV[3], 'updated', ARGV[4]) "
    "redis.call('HSETNX', k, 'created', ARGV[4]) "
    "redis.call('HSETNX', k, 'iss', ARGV[5]) "
    "redis.call('HSETNX', k, 'sub', ARGV[6]) "
    "return {id, how}";

/* Value at a dotted path inside claims (borrowed), or NULL. */
static json_t *
pg_claim_at(const json_t *claims, const char *path)
{
    char buf[256];
    char *seg, *save = NULL;
    json_t *cur = (json_t *) claims;

    if (json_object_get(claims, path) != NULL) {
        return json_object_get(claims, path);
    }
    if (strlen(path) >= sizeof(buf)) {
        return NULL;
    }
    memcpy(buf, path, strlen(path) + 1);
    for (seg = strtok_r(buf, ".", &save); seg != NULL && cur != NULL;
         seg = strtok_r(NULL, ".", &save)) {
        cur = json_object_get(cur, seg);
    }
    return cur;
}

/*
 * Build identity attributes from verified claims. Scalars and arrays of
 * scalars are copied; objects are skipped. "groups" comes from the
 * configured groups claim (an array of strings, or one string), capped at
 * PG_MAX_GROUPS entries. "subject" and "issuer" are always set.
 * *out is a new reference.
 */
pg_status_t
pg_identity_attrs(const pg_config_t *cfg, const json_t *claims, json_t **out)
{
    json_t *attrs = json_object();
    json_t *v, *groups, *g;
    size_t i;

    if (attrs == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < cfg->nclaims; i++) {
        v = pg_claim_at(claims, cfg->claims[i].claim);
        if (v != NULL && !json_is_object(v) && !json_is_null(v)) {
            json_object_set(attrs, cfg->claims[i].attr, v);
        }
    }
    groups = json_array();
    v = cfg->groups_claim ? pg_claim_at(claims, cfg->groups_claim) : NULL;
    if (json_is_string(v)) {
        json_array_append(groups, v);
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, g) {
            if (json_is_string(g) && json_array_size(groups) < PG_MAX_GROUPS) {
                json_array_append(groups, g);
            }
        }
    }
    json_object_set_new(attrs, "groups", groups);
    json_object_set(attrs, "subject", json_object_get(claims, "sub"));
    json_object_set(attrs, "issuer", json_object_get(claims, "iss"));
    if (!json_is_string(json_object_get(attrs, "subject"))) {
        json_decref(attrs);
        return PG_ERR_INVALID;
    }
    *out = attrs;
    return PG_OK;
}

static void
pg_correlated(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    pg_step_fn next = op->after_correlate;
    const redisReply *id, *how;

    op->after_correlate = NULL;
    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 2
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[1]->type != REDIS_REPLY_STRING) {
        pg_op_deny(op, 503, "login.failure", "identity_store_unavailable",
                   "Your identity could not be recorded. Please try again.",
                   NULL);
        return;
    }
    id = reply->element[0];
    how = reply->element[1];
    op->iid = strndup(id->str, id->len);
    op->corr_how = strncmp(how->str, "created", how->len) == 0 ? "created"
                   : strncmp(how->str, "correlated", how->len) == 0
                       ? "correlated" : "existing";
    if (op->iid == NULL) {
        pg_op_finish(op, NULL);
        return;
    }
    json_object_set_new(op->attrs, "identity_id", json_string(op->iid));
    if (strcmp(op->corr_how, "existing") != 0) {
        json_t *f = json_pack("{s:s}", "how", op->corr_how);
        pg_op_audit(op, "identity.correlation", "success", op->corr_how, f,
                    NULL);
    }
    next(op, PG_OK);
}

/* Hash "a\nb" (b may be NULL) into a base64url digest in out[64]. */
static pg_status_t
pg_digest(const char *a, const char *b, int lower, char out[64])
{
    char buf[1024];
    size_t la = strlen(a), lb = b ? strlen(b) : 0, i;

    if (la + lb + 2 > sizeof(buf)) {
        return PG_ERR_TOO_LARGE;
    }
    memcpy(buf, a, la);
    if (b != NULL) {
        buf[la] = '\n';
        memcpy(buf + la + 1, b, lb);
        la += lb + 1;
    }
    if (lower) {
        for (i = 0; i < la; i++) {
            buf[i] = (char) tolower((unsigned char) buf[i]);
        }
    }
    return pg_sha256_b64url(buf, la, out, 64);
}

void
pg_identity_correlate(pg_op_t *op, pg_step_fn next)
{
    const pg_config_t *cfg = op->g->cfg;
    const char *iss = json_string_value(json_object_get(op->claims, "iss"));
    const char *sub = json_string_value(json_object_get(op->claims, "sub"));
    char *keys[1 + PG_MAX_CORR];
    const char *argv[4 + 1 + PG_MAX_CORR + 6];
    char dig[64], cand[48], nkeys[16], now[32], *attrs_json, *idprefix;
    size_t nk = 0, i;
    int n = 0;
    pg_status_t st;

    memset(keys, 0, sizeof(keys));
    if (iss == NULL || sub == NULL || pg_digest(iss, sub, 0, dig) != PG_OK) {
        pg_op_deny(op, 401, "login.failure", "sub_missing",
                   "Your identity could not be read from the sign-in.", NULL);
        return;
    }
    keys[nk++] = pg_key(op->g, "idx:sub:", dig);
    for (i = 0; i < cfg->ncorr && nk < 1 + PG_MAX_CORR; i++) {
        const pg_corr_rule_t *r = &cfg->corr[i];
        const char *v = json_string_value(json_object_get(op->claims,
                                                          r->claim));
        char name[160];

        if (v == NULL || v[0] == '\0') {
            continue;
        }
        if (r->verified_claim != NULL
            && !json_is_true(json_object_get(op->claims, r->verified_claim))) {
            continue; /* an unverified value never links identities */
        }
        if (pg_digest(v, NULL, 1, dig) != PG_OK) {
            continue;
        }
        snprintf(name, sizeof(name), "idx:%s:", r->index);
        keys[nk++] = pg_key(op->g, name, dig);
    }
    attrs_json = json_dumps(op->attrs, JSON_COMPACT | JSON_SORT_KEYS);
    idprefix = pg_key(op->g, "id:", NULL);
    if (pg_random_token(16, cand, sizeof(cand)) != PG_OK || attrs_json == NULL
        || idprefix == NULL) {
        goto oom;
    }
    for (i = 0; i < nk; i++) {
        if (keys[i] == NULL) {
            goto oom;
        }
    }
    snprintf(nkeys, sizeof(nkeys), "%zu", nk);
    snprintf(now, sizeof(now), "%lld", (long long) time(NULL));
    argv[n++] = "EVAL";
    argv[n++] = pg_correlate_lua;
    argv[n++] = nkeys;
    for (i = 0; i < nk; i++) {
        argv[n++] = keys[i];
    }
    argv[n++] = cand;
    argv[n++] = idprefix;
    argv[n++] = attrs_json;
    argv[n++] = now;
    argv[n++] = iss;
    argv[n++] = sub;
    op->after_correlate = next;
    st = pg_op_redis(op, pg_correlated, n, argv, NULL);
    for (i = 0; i < nk; i++) {
        free(keys[i]);
    }
    free(attrs_json);
    free(idprefix);
    if (st != PG_OK) {
        pg_correlated(op, st);
    }
    return;

oom:
    for (i = 0; i < nk; i++) {
        free(keys[i]);
    }
    free(attrs_json);
    free(idprefix);
    pg_op_finish(op, NULL);
}
