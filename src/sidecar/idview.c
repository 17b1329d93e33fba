/*
 * provgate core: a read-only view of identities (include/provgate/idview.h).
 *
 *   lookup   one EVAL (pg_idview_get_lua): resolve the index keys, refuse
 *            when they name several identities, then the identity hash,
 *            the number of live sessions and its pending access requests
 *   listing  SCAN <p>id:* one page, then one EVAL (pg_idview_list_lua) for
 *            the summaries of that page's identities
 * Both scripts only read.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis.h>

#include "provgate/idview.h"
#include "provgate/util.h"

#define PG_IDVIEW_TIMEOUT_MS 5000
#define PG_IDVIEW_ATTRS_MAX  (256 * 1024)   /* attrs / ents JSON cap */
#define PG_IDVIEW_KEYS_MAX   16             /* index keys of one lookup */

/*
 * ARGV: prefix, mode ("id" | "idx"), max requests, then the iid (mode id)
 * or the index keys without the prefix (mode idx).
 * -> {"none"} | {"ambiguous", {iid, ...}} |
 *    {"ok", iid, HGETALL, live, {{rid, target, type, value, state,
 *     expires_at, created}, ...}}
 */
static const char pg_idview_get_lua[] =
    "local p = ARGV[1] "
    "local ids, seen = {}, {} "
    "if ARGV[2] == 'id' then ids[1] = ARGV[4] else "
    "  for i = 4, #ARGV do "
    "    local v = redis.call('GET', p .. ARGV[i]) "
    "    if v and not seen[v] then seen[v] = true; ids[#ids + 1] = v end "
    "  end "
    "end "
    "if #ids == 0 then return {'none'} end "
    "if #ids > 1 then table.sort(ids) return {'ambiguous', ids} end "
    "local iid = ids[1] "
    "local k = p .. 'id:' .. iid "
    "if redis.call('TYPE', k).ok ~= 'hash' then return {'none'} end "
    "local live = 0 "
    "for _, sid in ipairs(redis.call('SMEMBERS', p .. 'idsess:' .. iid)) do "
    "  if redis.call('EXISTS', p .. 'sess:' .. sid) == 1 then "
    "    live = live + 1 end "
    "end "
    "local reqs = {} "
    "for _, rid in ipairs(redis.call('ZRANGE', p .. 'reqs:pending', 0, "
    "                                tonumber(ARGV[3]) - 1)) do "
    "  local f = redis.call('HMGET', p .. 'req:' .. rid, 'iid', 'target', "
    "                       'type', 'value', 'state', 'expires_at', "
    "                       'created') "
    "  if f[1] == iid then "
    "    reqs[#reqs + 1] = {rid, f[2] or '', f[3] or '', f[4] or '', "
    "                       f[5] or '', f[6] or '', f[7] or ''} "
    "  end "
    "end "
    "return {'ok', iid, redis.call('HGETALL', k), live, reqs}";

/*
 * KEYS: identity keys of one SCAN page. ARGV: prefix length, left_only.
 * -> flat {iid, left or "", created or "", attrs or "", ...} of the hashes
 * (sub-keys such as id:<iid>:x are skipped).
 */
static const char pg_idview_list_lua[] =
    "local out = {} "
    "local n = tonumber(ARGV[1]) + 4 "
    "for _, k in ipairs(KEYS) do "
    "  local iid = string.sub(k, n) "
    "  if iid ~= '' and not string.find(iid, ':', 1, true) "
    "     and redis.call('TYPE', k).ok == 'hash' then "
    "    local f = redis.call('HMGET', k, 'left', 'created', 'attrs') "
    "    if ARGV[2] ~= '1' or f[1] then "
    "      out[#out + 1] = iid; out[#out + 1] = f[1] or ''; "
    "      out[#out + 1] = f[2] or ''; out[#out + 1] = f[3] or '' "
    "    end "
    "  end "
    "end "
    "return out";

struct pg_idview_req {
    pg_redis_t *r;
    const pg_config_t *cfg;
    pg_idview_cb cb;
    void *arg;
    pg_redis_op_t *rop;
    int left_only;
    unsigned limit;
    char cursor[32];           /* listing: the cursor SCAN returned */
};

/* ---- pure helpers ------------------------------------------------------ */

/* See idview.h. */
int
pg_idview_iid_ok(const char *s)
{
    size_t n;

    if (s == NULL) {
        return 0;
    }
    for (n = 0; s[n] != '\0'; n++) {
        unsigned char c = (unsigned char) s[n];

        if (!(isalnum(c) || c == '-' || c == '_' || c == '.')
            || n >= PG_IDVIEW_IID_MAX) {
            return 0;
        }
    }
    return n > 0;
}

/* "idx:<index>:" base64url(sha256(a [\n b])) appended to keys; a lower-cased
 * first when lower. */
static pg_status_t
pg_idview_add_key(json_t *keys, const char *index, const char *a,
                  const char *b, int lower)
{
    char *buf, h[64];
    size_t la = strlen(a), lb = b != NULL ? strlen(b) : 0, i, n;
    json_t *k;
    pg_status_t st;

    buf = malloc(la + lb + 2);
    if (buf == NULL) {
        return PG_ERR_NOMEM;
    }
    memcpy(buf, a, la);
    n = la;
    if (b != NULL) {
        buf[n++] = '\n';
        memcpy(buf + n, b, lb);
        n += lb;
    }
    for (i = 0; lower && i < n; i++) {
        buf[i] = (char) tolower((unsigned char) buf[i]);
    }
    st = pg_sha256_b64url(buf, n, h, sizeof(h));
    free(buf);
    if (st != PG_OK) {
        return st;
    }
    k = json_sprintf("idx:%s:%s", index, h);
    for (i = 0; k != NULL && i < json_array_size(keys); i++) {
        if (json_equal(json_array_get(keys, i), k)) {
            json_decref(k);
            return PG_OK;   /* once */
        }
    }
    if (k == NULL || json_array_size(keys) >= PG_IDVIEW_KEYS_MAX
        || json_array_append_new(keys, k) != 0) {
        return k == NULL ? PG_ERR_NOMEM : PG_ERR_TOO_LARGE;
    }
    return PG_OK;
}

/* See idview.h. At most PG_IDVIEW_KEYS_MAX keys (PG_ERR_TOO_LARGE). */
pg_status_t
pg_idview_keys(const pg_config_t *cfg, pg_idview_by_t by, const char *value,
               const char *iss, json_t **keys, pg_err_t *err)
{
    json_t *out, *rule;
    size_t i;
    pg_status_t st = PG_OK;

    if (keys == NULL) {
        return PG_ERR_INVALID;
    }
    *keys = NULL;
    if (cfg == NULL || by == PG_IDVIEW_BY_ID) {
        return PG_ERR_INVALID;
    }
    if (value == NULL || value[0] == '\0'
        || strlen(value) > PG_IDVIEW_VALUE_MAX
        || (iss != NULL && (iss[0] == '\0'
                            || strlen(iss) > PG_IDVIEW_VALUE_MAX))) {
        pg_err_set(err, "the lookup value must be 1-%d bytes",
                   PG_IDVIEW_VALUE_MAX);
        return PG_ERR_INVALID;
    }
    out = json_array();
    if (out == NULL) {
        return PG_ERR_NOMEM;
    }
    if (by == PG_IDVIEW_BY_HR_KEY) {
        st = pg_idview_add_key(out, "hr", value, NULL, 0);
    } else if (by == PG_IDVIEW_BY_EMAIL) {
        for (i = 0; st == PG_OK && i < cfg->ncorr; i++) {
            if (strcmp(cfg->corr[i].claim, "email") == 0) {
                st = pg_idview_add_key(out, cfg->corr[i].index, value, NULL,
                                       1);
            }
        }
        json_array_foreach(json_object_get(cfg->hr_source, "correlation"), i,
                           rule) {
            const char *attr = json_string_value(json_object_get(rule,
                                                                 "attr"));
            const char *index = json_string_value(json_object_get(rule,
                                                                  "index"));

            if (st == PG_OK && attr != NULL && index != NULL
                && strcmp(attr, "email") == 0) {
                st = pg_idview_add_key(out, index, value, NULL, 1);
            }
        }
        if (st == PG_OK && json_array_size(out) == 0) {
            st = pg_idview_add_key(out, "email", value, NULL, 1);
        }
    } else if (iss != NULL) {
        st = pg_idview_add_key(out, "sub", iss, value, 0);
    } else {
        for (i = 0; st == PG_OK && i < cfg->nidps; i++) {
            if (cfg->idps[i].type == PG_IDP_OIDC
                && cfg->idps[i].oidc.issuer != NULL) {
                st = pg_idview_add_key(out, "sub", cfg->idps[i].oidc.issuer,
                                       value, 0);
            }
        }
        if (st == PG_OK && json_array_size(out) == 0) {
            pg_err_set(err, "no OpenID Connect issuer configured: give iss");
            st = PG_ERR_INVALID;
        }
    }
    if (st != PG_OK) {
        json_decref(out);
        return st;
    }
    *keys = out;
    return PG_OK;
}

/* A time (unix s) as a new JSON integer, or null when t < 0. */
static json_t *
pg_idview_time(int64_t t)
{
    return t >= 0 ? json_integer((json_int_t) t) : json_null();
}

/* A JSON field of the hash (object or array per want_array), or NULL. */
static json_t *
pg_idview_json(const json_t *fields, const char *name, int want_array)
{
    const char *raw = json_string_value(json_object_get(fields, name));
    json_error_t jerr;
    json_t *v;

    if (raw == NULL || strlen(raw) > PG_IDVIEW_ATTRS_MAX) {
        return NULL;
    }
    v = json_loads(raw, 0, &jerr);
    if (want_array ? !json_is_array(v) : !json_is_object(v)) {
        json_decref(v);
        return NULL;
    }
    return v;
}

/* The account's username in target t: its key attribute's template
 * rendered with the identity's attributes; NULL when it cannot be. */
static json_t *
pg_idview_username(const pg_target_cfg_t *t, const json_t *attrs)
{
    size_t i;
    char *out = NULL;
    pg_err_t err = { "" };
    json_t *v;

    if (t == NULL || t->username_attr == NULL || attrs == NULL) {
        return json_null();
    }
    for (i = 0; i < t->nattrs; i++) {
        if (t->attrs[i].tpl != NULL
            && strcmp(t->attrs[i].scim_path, t->username_attr) == 0) {
            if (pg_template_render(t->attrs[i].tpl, attrs, &out, &err)
                != PG_OK) {
                return json_null();
            }
            v = json_string(out);
            free(out);
            return v != NULL ? v : json_null();
        }
    }
    return json_null();
}

/* The jit lifetime of an entitlement (expiry.c's rule, with the test-only
 * divisor), or 0. */
static int64_t
pg_idview_lifetime(const pg_config_t *cfg, const json_t *item)
{
    json_int_t v = json_integer_value(json_object_get(item, "jit_lifetime_s"));
    int64_t d = cfg->expiry_test_divisor > 1
                    ? (int64_t) cfg->expiry_test_divisor : 1;

    if (v <= 0) {
        return 0;
    }
    return (int64_t) v / d > 0 ? (int64_t) v / d : 1;
}

/* One account: {"id", "username", "state", ...}; jit items to jit. */
static json_t *
pg_idview_account(const pg_config_t *cfg, const char *target,
                  const char *acct, const json_t *fields,
                  const json_t *attrs, int left, json_t *jit)
{
    const pg_target_cfg_t *t = pg_config_target(cfg, target);
    json_t *ents, *a, *it;
    char name[320];
    int64_t jit_at = pg_field_int(fields, "jit_at", target);
    int64_t used = pg_field_int(fields, "used", target);
    int64_t deprov = pg_field_int(fields, "deprov_at", target);
    int64_t retained = pg_field_int(fields, "retained", target);
    int64_t base = jit_at > used ? jit_at : used;
    const char *state = "active";
    size_t i;

    snprintf(name, sizeof(name), "ents:%s", target);
    ents = pg_idview_json(fields, name, 1);
    if (ents == NULL) {
        ents = json_array();
    }
    if (left && retained >= 0
        && retained == pg_field_int(fields, "left", NULL)) {
        state = "deleted";
    } else if (left || (t != NULL && t->deprov_action == PG_DEPROV_DISABLE
                        && deprov >= 0 && deprov >= jit_at)) {
        state = "disabled";
    }
    a = json_pack("{s:s, s:o, s:s, s:o, s:o, s:o, s:b}", "id", acct,
                  "username", pg_idview_username(t, attrs), "state", state,
                  "entitlements", ents != NULL ? json_incref(ents)
                                               : json_array(),
                  "provisioned_by_login_at", pg_idview_time(jit_at),
                  "last_used", pg_idview_time(used), "configured",
                  t != NULL);
    json_array_foreach(ents, i, it) {
        int64_t life = pg_idview_lifetime(cfg, it);

        if (life > 0 && base >= 0) {
            json_array_append_new(jit, json_pack(
                "{s:s, s:O?, s:O?, s:I, s:I, s:I}", "target", target,
                "type", json_object_get(it, "type"), "value",
                json_object_get(it, "value"), "lifetime_s",
                (json_int_t) life, "granted_at", (json_int_t) jit_at,
                "expires_at", (json_int_t) (base + life)));
        }
    }
    json_decref(ents);
    return a;
}

/* See idview.h. Only the whitelisted fields are read; attrs / ents JSON
 * over PG_IDVIEW_ATTRS_MAX or malformed count as absent. */
pg_status_t
pg_idview_render(const pg_config_t *cfg, const char *iid,
                 const json_t *fields, long live, const json_t *requests,
                 int64_t now, json_t **out)
{
    json_t *v, *attrs, *accounts, *jit, *login = NULL, *f;
    const char *k, *iss, *sub;
    int64_t left;

    (void) now;
    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    if (cfg == NULL || iid == NULL || !json_is_object(fields)) {
        return PG_ERR_INVALID;
    }
    left = pg_field_int(fields, "left", NULL);
    attrs = pg_idview_json(fields, "attrs", 0);
    accounts = json_object();
    jit = json_array();
    if (attrs == NULL) {
        attrs = json_object();
    }
    if (attrs == NULL || accounts == NULL || jit == NULL) {
        json_decref(attrs);
        json_decref(accounts);
        json_decref(jit);
        return PG_ERR_NOMEM;
    }
    json_object_foreach((json_t *) fields, k, f) {
        if (strncmp(k, "acct:", 5) == 0 && k[5] != '\0'
            && json_is_string(f)) {
            json_t *a = pg_idview_account(cfg, k + 5, json_string_value(f),
                                          fields, attrs, left >= 0, jit);

            if (a == NULL || json_object_set_new(accounts, k + 5, a) != 0) {
                json_decref(attrs);
                json_decref(accounts);
                json_decref(jit);
                return PG_ERR_NOMEM;
            }
        }
    }
    iss = json_string_value(json_object_get(fields, "iss"));
    sub = json_string_value(json_object_get(fields, "sub"));
    if (iss != NULL && sub != NULL) {
        login = json_pack("{s:s, s:s}", "issuer", iss, "subject", sub);
    }
    v = json_pack("{s:s, s:s, s:o, s:o, s:o, s:s?, s:o, s:o, s:o, s:o, "
                  "s:{s:i}, s:o}",
                  "id", iid, "state", left >= 0 ? "left" : "active",
                  "left_at", pg_idview_time(left),
                  "created",
                  pg_idview_time(pg_field_int(fields, "created", NULL)),
                  "updated",
                  pg_idview_time(pg_field_int(fields, "updated", NULL)),
                  "source", json_string_value(json_object_get(fields,
                                                              "source")),
                  "login", login != NULL ? login : json_null(),
                  "attributes", attrs, "accounts", accounts, "jit", jit,
                  "sessions", "live", (int) live,
                  "access_requests", requests != NULL
                                         ? json_incref((json_t *) requests)
                                         : json_array());
    if (v == NULL) {
        return PG_ERR_NOMEM;
    }
    *out = v;
    return PG_OK;
}

/* ---- asynchronous part ------------------------------------------------- */

/* Free the request, then report (result borrowed by cb only). */
static void
pg_idview_done(pg_idview_req_t *q, pg_status_t st, const json_t *result)
{
    pg_idview_cb cb = q->cb;
    void *arg = q->arg;

    free(q);
    cb(arg, st, result);
}

/* A reply element as a NUL-terminated copy in a JSON string (bounded). */
static json_t *
pg_idview_str(const redisReply *e)
{
    if (e == NULL || e->type != REDIS_REPLY_STRING
        || e->len > PG_IDVIEW_ATTRS_MAX
        || memchr(e->str, '\0', e->len) != NULL) {
        return NULL;
    }
    return json_stringn_nocheck(e->str, e->len);
}

/* The lookup script answered: none / ambiguous / the identity (see
 * pg_idview_get_lua); hash values over PG_IDVIEW_ATTRS_MAX or holding NUL
 * bytes are dropped, the rest goes through pg_idview_render. */
static void
pg_idview_got(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_idview_req_t *q = arg;
    const redisReply *h, *rq;
    json_t *fields = NULL, *reqs = NULL, *view = NULL, *res;
    char iid[PG_IDVIEW_IID_MAX + 1];
    size_t i;

    q->rop = NULL;
    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements < 1
        || reply->element[0]->type != REDIS_REPLY_STRING) {
        pg_idview_done(q, st != PG_OK ? st : PG_ERR_REDIS, NULL);
        return;
    }
    if (strcmp(reply->element[0]->str, "none") == 0) {
        pg_idview_done(q, PG_ERR_NOT_FOUND, NULL);
        return;
    }
    if (strcmp(reply->element[0]->str, "ambiguous") == 0
        && reply->elements == 2
        && reply->element[1]->type == REDIS_REPLY_ARRAY) {
        json_t *c = json_array();

        for (i = 0; c != NULL && i < reply->element[1]->elements; i++) {
            json_t *s = pg_idview_str(reply->element[1]->element[i]);

            if (s != NULL) {
                json_array_append_new(c, s);
            }
        }
        res = json_pack("{s:o}", "candidates", c != NULL ? c : json_array());
        pg_idview_done(q, res != NULL ? PG_ERR_CONFLICT : PG_ERR_NOMEM, res);
        json_decref(res);
        return;
    }
    if (reply->elements != 5 || reply->element[1]->type != REDIS_REPLY_STRING
        || reply->element[1]->len > PG_IDVIEW_IID_MAX
        || reply->element[2]->type != REDIS_REPLY_ARRAY
        || reply->element[3]->type != REDIS_REPLY_INTEGER
        || reply->element[4]->type != REDIS_REPLY_ARRAY) {
        pg_idview_done(q, PG_ERR_REDIS, NULL);
        return;
    }
    memcpy(iid, reply->element[1]->str, reply->element[1]->len);
    iid[reply->element[1]->len] = '\0';
    h = reply->element[2];
    fields = json_object();
    reqs = json_array();
    for (i = 0; fields != NULL && i + 1 < h->elements; i += 2) {
        const redisReply *k = h->element[i];
        json_t *v = pg_idview_str(h->element[i + 1]);
        char name[320];

        if (v == NULL || k->type != REDIS_REPLY_STRING
            || k->len >= sizeof(name) || memchr(k->str, '\0', k->len)) {
            json_decref(v);
            continue;
        }
        memcpy(name, k->str, k->len);
        name[k->len] = '\0';
        json_object_set_new(fields, name, v);
    }
    rq = reply->element[4];
    for (i = 0; reqs != NULL && i < rq->elements; i++) {
        const redisReply *e = rq->element[i];
        json_t *o;
        char *end;
        long long exp, cr;

        if (e->type != REDIS_REPLY_ARRAY || e->elements != 7) {
            continue;
        }
        o = json_pack("{s:o?, s:o?, s:o?, s:o?, s:o?}", "id",
                      pg_idview_str(e->element[0]), "target",
                      pg_idview_str(e->element[1]), "type",
                      pg_idview_str(e->element[2]), "value",
                      pg_idview_str(e->element[3]), "state",
                      pg_idview_str(e->element[4]));
        exp = e->element[5]->type == REDIS_REPLY_STRING
                  ? strtoll(e->element[5]->str, &end, 10) : 0;
        cr = e->element[6]->type == REDIS_REPLY_STRING
                 ? strtoll(e->element[6]->str, &end, 10) : 0;
        if (o != NULL) {
            json_object_set_new(o, "expires_at", json_integer(exp));
            json_object_set_new(o, "created", json_integer(cr));
            json_array_append_new(reqs, o);
        }
    }
    st = fields != NULL && reqs != NULL
             ? pg_idview_render(q->cfg, iid, fields,
                                (long) reply->element[3]->integer, reqs,
                                (int64_t) time(NULL), &view)
             : PG_ERR_NOMEM;
    json_decref(fields);
    json_decref(reqs);
    pg_idview_done(q, st, view);
    json_decref(view);
}

/* See idview.h: one EVAL of pg_idview_get_lua. */
pg_status_t
pg_idview_get(pg_redis_t *r, const pg_config_t *cfg, pg_idview_by_t by,
              const char *value, const char *iss, pg_idview_cb cb, void *arg,
              pg_idview_req_t **req_out, pg_err_t *err)
{
    pg_idview_req_t *q;
    json_t *keys = NULL;
    const char *argv[6 + PG_IDVIEW_KEYS_MAX];
    char maxreq[16];
    int argc = 0;
    size_t i;
    pg_status_t st;

    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (r == NULL || cfg == NULL || cb == NULL) {
        return PG_ERR_INVALID;
    }
    if (by == PG_IDVIEW_BY_ID) {
        if (!pg_idview_iid_ok(value)) {
            pg_err_set(err, "an identity id is 1-%d of A-Z a-z 0-9 - _ .",
                       PG_IDVIEW_IID_MAX);
            return PG_ERR_INVALID;
        }
    } else {
        st = pg_idview_keys(cfg, by, value, iss, &keys, err);
        if (st != PG_OK) {
            return st;
        }
    }
    q = calloc(1, sizeof(*q));
    if (q == NULL) {
        json_decref(keys);
        return PG_ERR_NOMEM;
    }
    q->r = r;
    q->cfg = cfg;
    q->cb = cb;
    q->arg = arg;
    snprintf(maxreq, sizeof(maxreq), "%d", PG_IDVIEW_REQS_MAX);
    argv[argc++] = "EVAL";
    argv[argc++] = pg_idview_get_lua;
    argv[argc++] = "0";
    argv[argc++] = pg_redis_prefix(r);
    argv[argc++] = by == PG_IDVIEW_BY_ID ? "id" : "idx";
    argv[argc++] = maxreq;
    if (by == PG_IDVIEW_BY_ID) {
        argv[argc++] = value;
    }
    for (i = 0; i < json_array_size(keys) && i < PG_IDVIEW_KEYS_MAX; i++) {
        argv[argc++] = json_string_value(json_array_get(keys, i));
    }
    st = pg_redis_command(r, argc, argv, NULL, PG_IDVIEW_TIMEOUT_MS,
                          pg_idview_got, q, &q->rop);
    json_decref(keys);
    if (st != PG_OK) {
        free(q);
        return PG_ERR_REDIS;
    }
    if (req_out != NULL) {
        *req_out = q;
    }
    return PG_OK;
}

/* The summaries of one page arrived. */
static void
pg_idview_listed(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_idview_req_t *q = arg;
    json_t *list, *page;
    size_t i;

    q->rop = NULL;
    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        pg_idview_done(q, st != PG_OK ? st : PG_ERR_REDIS, NULL);
        return;
    }
    list = json_array();
    for (i = 0; list != NULL && i + 3 < reply->elements; i += 4) {
        json_t *iid = pg_idview_str(reply->element[i]);
        json_t *lf = pg_idview_str(reply->element[i + 1]);
        json_t *cr = pg_idview_str(reply->element[i + 2]);
        json_t *at = pg_idview_str(reply->element[i + 3]);
        json_t *f = json_object(), *attrs, *o;
        int64_t left, created;

        if (f != NULL) {
            json_object_set(f, "left", lf != NULL ? lf : json_null());
            json_object_set(f, "created", cr != NULL ? cr : json_null());
            json_object_set(f, "attrs", at != NULL ? at : json_null());
        }
        left = pg_field_int(f, "left", NULL);
        created = pg_field_int(f, "created", NULL);
        attrs = pg_idview_json(f, "attrs", 0);
        o = iid != NULL
                ? json_pack("{s:O, s:s, s:o, s:o, s:O?, s:O?, s:O?}", "id",
                            iid, "state", left >= 0 ? "left" : "active",
                            "left_at", pg_idview_time(left), "created",
                            pg_idview_time(created), "username",
                            json_object_get(attrs, "username"), "email",
                            json_object_get(attrs, "email"), "hr_key",
                            json_object_get(attrs, "hr_key"))
                : NULL;
        if (o != NULL) {
            json_array_append_new(list, o);
        }
        json_decref(attrs);
        json_decref(f);
        json_decref(iid);
        json_decref(lf);
        json_decref(cr);
        json_decref(at);
    }
    page = list != NULL ? json_pack("{s:o, s:s}", "identities", list,
                                    "cursor", q->cursor)
                        : NULL;
    pg_idview_done(q, page != NULL ? PG_OK : PG_ERR_NOMEM, page);
    json_decref(page);
}

/* SCAN answered: summarize the identity keys of this page. */
static void
pg_idview_scanned(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_idview_req_t *q = arg;
    const redisReply *c, *ks;
    const char **argv;
    char plen[24], *empty;
    size_t i;
    int argc = 0;

    q->rop = NULL;
    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 2
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[0]->len == 0
        || reply->element[0]->len >= sizeof(q->cursor)
        || reply->element[1]->type != REDIS_REPLY_ARRAY) {
        pg_idview_done(q, st != PG_OK ? st : PG_ERR_REDIS, NULL);
        return;
    }
    c = reply->element[0];
    ks = reply->element[1];
    memcpy(q->cursor, c->str, c->len);
    q->cursor[c->len] = '\0';
    argv = calloc(ks->elements + 6, sizeof(char *));
    if (argv == NULL) {
        pg_idview_done(q, PG_ERR_NOMEM, NULL);
        return;
    }
    snprintf(plen, sizeof(plen), "%zu", strlen(pg_redis_prefix(q->r)));
    empty = NULL;
    argv[argc++] = "EVAL";
    argv[argc++] = pg_idview_list_lua;
    argv[argc++] = NULL;   /* numkeys, below */
    for (i = 0; i < ks->elements; i++) {
        if (ks->element[i]->type == REDIS_REPLY_STRING
            && ks->element[i]->len < 1024
            && memchr(ks->element[i]->str, '\0', ks->element[i]->len)
               == NULL) {
            argv[argc++] = ks->element[i]->str;
        }
    }
    if (asprintf(&empty, "%d", argc - 3) < 0) {
        free(argv);
        pg_idview_done(q, PG_ERR_NOMEM, NULL);
        return;
    }
    argv[2] = empty;
    argv[argc++] = plen;
    argv[argc++] = q->left_only ? "1" : "0";
    /* argv points into reply: pg_redis copies it before returning */
    st = pg_redis_command(q->r, argc, argv, NULL, PG_IDVIEW_TIMEOUT_MS,
                          pg_idview_listed, q, &q->rop);
    free(argv);
    free(empty);
    if (st != PG_OK) {
        q->rop = NULL;
        pg_idview_done(q, PG_ERR_REDIS, NULL);
    }
}

/* See idview.h: SCAN, then pg_idview_scanned. */
pg_status_t
pg_idview_list(pg_redis_t *r, const pg_config_t *cfg, const char *cursor,
               unsigned limit, int left_only, pg_idview_cb cb, void *arg,
               pg_idview_req_t **req_out, pg_err_t *err)
{
    pg_idview_req_t *q;
    const char *prefix, *argv[6];
    char *pattern, count[16];
    size_t i, n = 0, plen;
    pg_status_t st;

    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (r == NULL || cfg == NULL || cb == NULL) {
        return PG_ERR_INVALID;
    }
    if (cursor == NULL || cursor[0] == '\0' || strlen(cursor) > 20
        || strspn(cursor, "0123456789") != strlen(cursor)) {
        pg_err_set(err, "cursor: decimal digits (\"0\" to start)");
        return PG_ERR_INVALID;
    }
    if (limit < 1 || limit > PG_IDVIEW_LIST_MAX) {
        pg_err_set(err, "limit: 1-%d", PG_IDVIEW_LIST_MAX);
        return PG_ERR_INVALID;
    }
    prefix = pg_redis_prefix(r);
    plen = strlen(prefix);
    pattern = malloc(2 * plen + 5);
    q = calloc(1, sizeof(*q));
    if (pattern == NULL || q == NULL) {
        free(pattern);
        free(q);
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < plen; i++) {
        if (strchr("*?[]\\", prefix[i]) != NULL) {
            pattern[n++] = '\\';
        }
        pattern[n++] = prefix[i];
    }
    memcpy(pattern + n, "id:*", 5);
    q->r = r;
    q->cfg = cfg;
    q->cb = cb;
    q->arg = arg;
    q->left_only = left_only;
    q->limit = limit;
    snprintf(count, sizeof(count), "%u", limit);
    argv[0] = "SCAN"; argv[1] = cursor; argv[2] = "MATCH";
    argv[3] = pattern; argv[4] = "COUNT"; argv[5] = count;
    st = pg_redis_command(r, 6, argv, NULL, PG_IDVIEW_TIMEOUT_MS,
                          pg_idview_scanned, q, &q->rop);
    free(pattern);
    if (st != PG_OK) {
        free(q);
        return PG_ERR_REDIS;
    }
    if (req_out != NULL) {
        *req_out = q;
    }
    return PG_OK;
}

/* See idview.h. */
void
pg_idview_cancel(pg_idview_req_t *req)
{
    if (req == NULL) {
        return;
    }
    if (req->rop != NULL) {
        pg_redis_cancel(req->rop);
    }
    free(req);
}
