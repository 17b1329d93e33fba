/*
 * provgate core: access requests (approvals) and the admin API.
 *
 * Access requests. When a decision has items awaiting approval for the app
 * being accessed, each becomes a request record (idempotent: one record per
 * identity + item while it is pending or approved):
 *
 *   <p>req:<rid>        hash: rid, iid, user, target, type, value, policy,
 *                       approvers (JSON), state (pending | approved |
 *                       denied | expired), created, expires_at (unix s),
 *                       decided_by, decided_at, note
 *   <p>reqs:pending     ZSET rid -> expires_at
 *   <p>approved:<iid>   SET of {"target","type","value"} (compact JSON,
 *                       sorted keys): what approvers granted. Decisions
 *                       see it as the identity attribute "approved", so
 *                       the engine grants those items (and SoD still
 *                       applies to them).
 *
 * rid = base64url(sha256(iid \n target \n type \n value)), first 22 chars.
 * A denied request is not asked again while its record lives (30 days
 * after its expiry); an expired one is asked again at the next login.
 * A person without any granted account in the app sees an "awaiting
 * approval" page (202), not an error.
 *
 * Admin API (provgate_admin location; JSON only; the session cookie is the
 * credential, so a browser signed in through provgate can use it):
 *
 *   GET  <loc>/requests                 pending requests (admins: all;
 *                                       approvers: the ones they decide)
 *   POST <loc>/requests/<rid>/approve   approve (admin or approver): the
 *                                       grant is recorded and the account
 *                                       is provisioned through the outbox
 *   POST <loc>/requests/<rid>/deny
 *   GET  <loc>/dead                     dead-lettered operations (admins)
 *   POST <loc>/dead/<id>/retry|discard  (admins)
 *   GET  <loc>/work/<target>            open work items of a "manual"
 *                                       target (admins)
 *   POST <loc>/work/<target>/<id>/done|reject   resolve one (admins); done
 *                                       makes the account provisioned
 *
 * Admins hold the business or technical role named by "admin.role" in the
 * provgate config (default "provgate-admin") in a policy decision over all
 * targets. Every call, allowed or refused, is audited.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis.h>

#include "provgate/manualconn.h"
#include "provgate/util.h"
#include "gate_int.h"

#define PG_RID_LEN        22
#define PG_REQ_RETAIN_S   (30 * 86400)   /* decided requests kept this long */
#define PG_ADMIN_LIST_MAX 1000

enum { PG_ADM_LIST = 1, PG_ADM_APPROVE, PG_ADM_DENY, PG_ADM_DEAD,
       PG_ADM_DEAD_RETRY, PG_ADM_DEAD_DISCARD, PG_ADM_WORK, PG_ADM_WORK_DONE,
       PG_ADM_WORK_REJECT };

#define PG_ADMIN_WORK_MAX 200   /* work items listed per call */

/*
 * Upsert request records. KEYS: reqs:pending. ARGV: prefix, now, retain,
 * then per item: rid, iid, user, target, type, value, policy, approvers,
 * expires_at. -> array of the rids created now.
 */
static const char pg_req_upsert_lua[] =
    "local out = {} "
    "for i = 4, #ARGV, 9 do "
    "  local k = ARGV[1] .. 'req:' .. ARGV[i] "
    "  local st = redis.call('HGET', k, 'state') "
    "  if st ~= 'pending' and st ~= 'approved' and st ~= 'denied' then "
    "    redis.call('DEL', k) "
    "    redis.call('HSET', k, 'rid', ARGV[i], 'iid', ARGV[i+1], "
    "      'user', ARGV[i+2], 'target', ARGV[i+3], 'type', ARGV[i+4], "
    "      'value', ARGV[i+5], 'policy', ARGV[i+6], 'approvers', ARGV[i+7], "
    "      'expires_at', ARGV[i+8], 'created', ARGV[2], 'state', 'pending') "
    "    redis.call('EXPIREAT', k, tonumber(ARGV[i+8]) + tonumber(ARGV[3])) "
    "    redis.call('ZADD', KEYS[1], ARGV[i+8], ARGV[i]) "
    "    out[#out + 1] = ARGV[i] "
    "  end "
    "end "
    "return out";

/*
 * List requests (pending ones expire lazily here). KEYS: reqs:pending.
 * ARGV: prefix, now, max. -> JSON text: [{hash fields}, ...] plus the
 * rids that expired now in "expired".
 */
static const char pg_req_list_lua[] =
    "local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1) "
    "local out, exp = {}, {} "
    "for _, id in ipairs(ids) do "
    "  local k = ARGV[1] .. 'req:' .. id "
    "  local f = redis.call('HGETALL', k) "
    "  if #f == 0 then redis.call('ZREM', KEYS[1], id) else "
    "    local h = {} "
    "    for j = 1, #f, 2 do h[f[j]] = f[j + 1] end "
    "    if h.state == 'pending' and tonumber(h.expires_at) <= tonumber(ARGV[2]) then "
    "      redis.call('HSET', k, 'state', 'expired') "
    "      redis.call('ZREM', KEYS[1], id) "
    "      exp[#exp + 1] = id "
    "    elseif h.state == 'pending' then out[#out + 1] = h end "
    "  end "
    "end "
    "return cjson.encode({requests = out, expired = exp})";

/*
 * Decide a request. KEYS: req:<rid>, reqs:pending. ARGV: prefix, decision
 * (approved|denied), by, now, note. -> {0, why} or {1, JSON of the hash}.
 */
static const char pg_req_decide_lua[] =
    "local f = redis.call('HGETALL', KEYS[1]) "
    "if #f == 0 then return {0, 'not_found'} end "
    "local h = {} "
    "for j = 1, #f, 2 do h[f[j]] = f[j + 1] end "
    "if h.state ~= 'pending' then return {0, 'not_pending:' .. h.state} end "
    "if tonumber(h.expires_at) <= tonumber(ARGV[4]) then "
    "  redis.call('HSET', KEYS[1], 'state', 'expired') "
    "  redis.call('ZREM', KEYS[2], h.rid) "
    "  return {0, 'expired'} "
    "end "
    "redis.call('HSET', KEYS[1], 'state', ARGV[2], 'decided_by', ARGV[3], "
    "  'decided_at', ARGV[4], 'note', ARGV[5]) "
    "redis.call('ZREM', KEYS[2], h.rid) "
    "h.state = ARGV[2]; h.decided_by = ARGV[3]; h.decided_at = ARGV[4] "
    "if ARGV[2] == 'approved' then "
    "  redis.call('SADD', ARGV[1] .. 'approved:' .. h.iid, "
    "    cjson.encode({target = h.target, type = h.type, value = h.value})) "
    "end "
    "return {1, cjson.encode(h)}";

/* ---- helpers ---------------------------------------------------------- */

/* A JSON result (owned by the caller); NULL on OOM. j is consumed. */
static pg_gate_result_t *
pg_json_result(int status, json_t *j)
{
    pg_gate_result_t *res = pg_result_new(PG_RES_PAGE, status);
    char *body = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;

    json_decref(j);
    if (res == NULL || body == NULL) {
        free(body);
        pg_gate_result_free(res);
        return NULL;
    }
    res->body = body;
    res->body_len = strlen(body);
    res->content_type = "application/json";
    res->no_store = 1;
    return res;
}

static void
pg_admin_reply(pg_op_t *op, int status, json_t *j)
{
    pg_op_finish(op, pg_json_result(status, j));
}

static void
pg_admin_error(pg_op_t *op, int status, const char *reason, json_t *fields)
{
    char id[PG_AUDIT_ID_LEN] = "";

    pg_op_audit(op, "admin.request", status >= 500 ? "failure" : "denied",
                reason, fields, id);
    pg_admin_reply(op, status, json_pack("{s:s, s:s}", "error", reason,
                                         "reference", id));
}

/* rid of an item (see the top of the file); out >= PG_RID_LEN + 1. */
static pg_status_t
pg_req_id(const char *iid, const json_t *item, char *out)
{
    const char *t = json_string_value(json_object_get(item, "target"));
    const char *ty = json_string_value(json_object_get(item, "type"));
    const char *v = json_string_value(json_object_get(item, "value"));
    char *buf = NULL, dig[64];
    int n;
    pg_status_t st;

    if (t == NULL || ty == NULL || v == NULL) {
        return PG_ERR_INVALID;
    }
    n = asprintf(&buf, "%s\n%s\n%s\n%s", iid, t, ty, v);
    if (n < 0) {
        return PG_ERR_NOMEM;
    }
    st = pg_sha256_b64url(buf, (size_t) n, dig, sizeof(dig));
    free(buf);
    if (st == PG_OK) {
        memcpy(out, dig, PG_RID_LEN);
        out[PG_RID_LEN] = '\0';
    }
    return st;
}

/* "2026-12-04T10:00:00Z" -> unix seconds (0 when unparsable). */
static long long
pg_iso_to_unix(const char *s)
{
    struct tm tm;
    const char *end;

    memset(&tm, 0, sizeof(tm));
    if (s == NULL || (end = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm)) == NULL
        || *end != '\0') {
        return 0;
    }
    return (long long) timegm(&tm);
}

/* ---- at login ---------------------------------------------------------- */

static void
pg_req_approved_read(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    pg_step_fn next = op->req_next;
    json_t *arr;
    size_t i;

    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        pg_op_deny(op, 503, "policy.decision", "identity_store_unavailable",
                   "Your access could not be evaluated.", NULL);
        return;
    }
    arr = json_array();
    for (i = 0; arr != NULL && i < reply->elements && i < 1024; i++) {
        const redisReply *e = reply->element[i];
        json_error_t jerr;
        json_t *o;

        if (e->type != REDIS_REPLY_STRING || e->len > 4096) {
            continue;
        }
        o = json_loadb(e->str, e->len, 0, &jerr);
        if (json_is_object(o)) {
            json_array_append_new(arr, o);
        } else {
            json_decref(o);
        }
    }
    json_decref(op->approved);
    op->approved = arr;
    next(op, PG_OK);
}

/* Read the identity's approved grants into op->approved, then next. */
void
pg_req_load_approved(pg_op_t *op, pg_step_fn next)
{
    op->req_next = next;
    pg_op_key(op, pg_req_approved_read, "SMEMBERS", "approved:", op->iid);
}

/* attrs + {"approved": op->approved} for a decision (new reference). */
json_t *
pg_req_decision_attrs(const pg_op_t *op)
{
    json_t *a = json_copy(op->attrs);

    if (a != NULL && op->approved != NULL) {
        json_object_set(a, "approved", op->approved);
    }
    return a;
}

static void
pg_req_recorded(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    pg_step_fn next = op->req_next;
    size_t i;

    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        pg_op_deny(op, 503, "access.request", "identity_store_unavailable",
                   "Your access request could not be recorded.", NULL);
        return;
    }
    for (i = 0; i < reply->elements; i++) {
        if (reply->element[i]->type == REDIS_REPLY_STRING) {
            json_t *f = json_pack("{s:s%}", "request",
                                  reply->element[i]->str,
                                  reply->element[i]->len);
            pg_op_audit(op, "access.request", "pending", "approval_required",
                        f, NULL);
        }
    }
    next(op, PG_OK);
}

/*
 * Record a request for every item of op->decision.pending_approval in
 * op->app (idempotent), then next(op, PG_OK). No pending items: next at
 * once.
 */
void
pg_req_record(pg_op_t *op, pg_step_fn next)
{
    const char **argv;
    char (*rids)[PG_RID_LEN + 1];
    char (*exps)[24];
    char **apv;
    char now[24], retain[24];
    size_t i, n = 0, cnt = json_array_size(op->decision.pending_approval);
    int argc = 0;
    json_t *it;
    char *key;
    const char *user = json_string_value(json_object_get(op->attrs,
                                         op->g->cfg->headers.user_attr));
    pg_status_t st;

    op->req_next = next;
    if (cnt == 0) {
        next(op, PG_OK);
        return;
    }
    if (cnt > 64) {
        cnt = 64;
    }
    argv = calloc(7 + 9 * cnt, sizeof(char *));
    rids = calloc(cnt, sizeof(*rids));
    exps = calloc(cnt, sizeof(*exps));
    apv = calloc(cnt, sizeof(char *));
    key = pg_key(op->g, "reqs:pending", NULL);
    if (argv == NULL || rids == NULL || exps == NULL || apv == NULL
        || key == NULL) {
        st = PG_ERR_NOMEM;
        goto done;
    }
    snprintf(now, sizeof(now), "%lld", (long long) time(NULL));
    snprintf(retain, sizeof(retain), "%d", PG_REQ_RETAIN_S);
    argv[argc++] = "EVAL";
    argv[argc++] = pg_req_upsert_lua;
    argv[argc++] = "1";
    argv[argc++] = key;
    argv[argc++] = op->g->cfg->redis.key_prefix;
    argv[argc++] = now;
    argv[argc++] = retain;
    json_array_foreach(op->decision.pending_approval, i, it) {
        const char *t = json_string_value(json_object_get(it, "target"));
        long long exp = pg_iso_to_unix(json_string_value(
                                         json_object_get(it, "expires_at")));

        if (n >= cnt || t == NULL || op->app == NULL || strcmp(t, op->app) != 0
            || exp == 0 || pg_req_id(op->iid, it, rids[n]) != PG_OK) {
            continue;
        }
        snprintf(exps[n], sizeof(exps[n]), "%lld", exp);
        apv[n] = json_dumps(json_object_get(it, "approvers"), JSON_COMPACT);
        argv[argc++] = rids[n];
        argv[argc++] = op->iid;
        argv[argc++] = user != NULL ? user : "";
        argv[argc++] = t;
        argv[argc++] = json_string_value(json_object_get(it, "type"));
        argv[argc++] = json_string_value(json_object_get(it, "value"));
        argv[argc++] = json_string_value(json_object_get(it, "policy"))
                           ? json_string_value(json_object_get(it, "policy"))
                           : "";
        argv[argc++] = apv[n] != NULL ? apv[n] : "{}";
        argv[argc++] = exps[n];
        n++;
    }
    if (n == 0) {
        st = PG_OK;
        free(argv);
        argv = NULL;
        goto done_next;
    }
    st = pg_op_redis(op, pg_req_recorded, argc, argv, NULL);
done:
    if (st != PG_OK) {
        free(argv);
        argv = NULL;
        for (i = 0; apv != NULL && i < cnt; i++) {
            free(apv[i]);
        }
        free(apv);
        free(rids);
        free(exps);
        free(key);
        pg_op_deny(op, 503, "access.request", "internal_error",
                   "Your access request could not be recorded.", NULL);
        return;
    }
done_next:
    for (i = 0; apv != NULL && i < cnt; i++) {
        free(apv[i]);
    }
    free(argv);
    free(apv);
    free(rids);
    free(exps);
    free(key);
    if (n == 0) {
        next(op, PG_OK);
    }
}

/* The page a person sees when every item of this app awaits approval. */
void
pg_req_awaiting_page(pg_op_t *op)
{
    char id[PG_AUDIT_ID_LEN] = "";
    json_t *f = json_pack("{s:s, s:O}", "target", op->app, "pending",
                          op->decision.pending_approval);
    pg_gate_result_t *res;

    pg_op_audit(op, "access.pending", "deferred", "awaiting_approval", f, id);
    res = pg_page_retry(202, op->wants_html, "awaiting_approval",
                        "Your access to this application has been requested "
                        "and is awaiting approval. You will be able to sign "
                        "in once an approver has accepted it.", id, NULL, 0);
    pg_op_finish(op, res);
}

/* ---- admin API -------------------------------------------------------- */

/* 1 when the caller (op->admin_attrs) may decide request h. */
static int
pg_is_approver(const pg_op_t *op, const json_t *h)
{
    const json_t *attrs = op->admin_attrs;
    const char *user = json_string_value(json_object_get(attrs,
                                         op->g->cfg->headers.user_attr));
    json_error_t jerr;
    json_t *a;
    const char *kind;
    int ok = 0;
    size_t i;

    if (op->admin_is_admin) {
        return 1;
    }
    a = json_loads(json_string_value(json_object_get(h, "approvers"))
                       ? json_string_value(json_object_get(h, "approvers"))
                       : "{}", 0, &jerr);
    kind = json_string_value(json_object_get(a, "kind"));
    if (kind == NULL || user == NULL) {
        json_decref(a);
        return 0;
    }
    if (strcmp(kind, "manager") == 0) {
        const char *id = json_string_value(json_object_get(a, "id"));
        ok = id != NULL && strcmp(id, user) == 0;
    } else if (strcmp(kind, "users") == 0) {
        json_t *u;
        json_array_foreach(json_object_get(a, "users"), i, u) {
            if (json_is_string(u) && strcmp(json_string_value(u), user) == 0) {
                ok = 1;
            }
        }
    } else if (strcmp(kind, "group") == 0) {
        const char *g = json_string_value(json_object_get(a, "group"));
        json_t *m;
        json_array_foreach(json_object_get(attrs, "groups"), i, m) {
            if (g != NULL && json_is_string(m)
                && strcmp(json_string_value(m), g) == 0) {
                ok = 1;
            }
        }
    }
    /* nobody approves their own request */
    if (ok && op->admin_iid != NULL) {
        const char *iid = json_string_value(json_object_get(h, "iid"));
        ok = iid == NULL || strcmp(iid, op->admin_iid) != 0;
    }
    json_decref(a);
    return ok;
}

static void
pg_admin_listed(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    json_error_t jerr;
    json_t *all, *out, *h;
    size_t i;

    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_STRING) {
        pg_admin_error(op, 503, "identity_store_unavailable", NULL);
        return;
    }
    all = json_loadb(reply->str, reply->len, 0, &jerr);
    out = json_array();
    if (all == NULL || out == NULL) {
        json_decref(all);
        json_decref(out);
        pg_op_finish(op, NULL);
        return;
    }
    json_array_foreach(json_object_get(all, "expired"), i, h) {
        json_t *f = json_pack("{s:O}", "request", h);
        pg_op_audit(op, "approval.decision", "expired", "request_expired", f,
                    NULL);
    }
    json_array_foreach(json_object_get(all, "requests"), i, h) {
        if (pg_is_approver(op, h)) {
            json_t *c = json_copy(h);
            json_t *a = json_loads(json_string_value(json_object_get(
                            h, "approvers")) ? json_string_value(
                            json_object_get(h, "approvers")) : "{}", 0, &jerr);
            if (c != NULL) {
                json_object_set_new(c, "approvers", a != NULL ? a : json_null());
                json_array_append_new(out, c);
            } else {
                json_decref(a);
            }
        }
    }
    json_decref(all);
    pg_op_audit(op, "admin.request", "success", "list_requests",
                json_pack("{s:i}", "count", (int) json_array_size(out)), NULL);
    pg_admin_reply(op, 200, json_pack("{s:o}", "requests", out));
}

static void
pg_admin_enqueued(void *arg, pg_status_t st, const pg_outbox_enqueued_t *res)
{
    pg_op_t *op = arg;
    json_t *body = op->admin_result;

    op->obreq = NULL;
    op->admin_result = NULL;
    if (st == PG_OK && body != NULL) {
        json_object_set_new(body, "provisioning",
                            json_pack("{s:s, s:s, s:s}", "target", op->app,
                                      "idem", res->idem, "entry", res->id));
        pg_op_audit(op, "provision.queued", "success", "approved",
                    json_pack("{s:s, s:s}", "target", op->app, "idem",
                              res->idem), NULL);
    } else if (body != NULL) {
        json_object_set_new(body, "provisioning",
                            json_pack("{s:s}", "error", pg_status_str(st)));
    }
    pg_admin_reply(op, 200, body);
}

/* Approved: decide again for the requester and provision the target. */
static void
pg_admin_attrs_read(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    json_error_t jerr;
    json_t *attrs, *state;
    pg_outbox_op_t o;
    char idem[PG_OUTBOX_IDEM_MAX + 1];

    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_STRING
        || reply->len > PG_GATE_MAX_SESSION
        || (attrs = json_loadb(reply->str, reply->len, 0, &jerr)) == NULL) {
        /* recorded; provisioned at the requester's next login */
        json_t *r = op->admin_result;

        op->admin_result = NULL;     /* the op is freed by the reply */
        pg_admin_reply(op, 200, r);
        return;
    }
    json_object_set_new(attrs, "identity_id", json_string(op->iid));
    json_decref(op->attrs);
    op->attrs = attrs;
    {
        json_t *da = pg_req_decision_attrs(op);

        pg_decision_clear(&op->decision);
        st = da != NULL ? pg_policy_decide(op->g->cfg->policies, da, op->app,
                                           &op->decision)
                        : PG_ERR_NOMEM;
        json_decref(da);
    }
    if (st != PG_OK || !op->decision.has_account
        || pg_config_target(op->g->cfg, op->app) == NULL
        || !pg_config_target(op->g->cfg, op->app)->via_outbox) {
        json_object_set_new(op->admin_result, "provisioning",
                            json_pack("{s:s}", "status",
                                      "at the next sign-in"));
        json_t *r = op->admin_result;

        op->admin_result = NULL;     /* the op is freed by the reply */
        pg_admin_reply(op, 200, r);
        return;
    }
    state = json_pack("{s:s, s:s, s:O, s:O}", "iid", op->iid, "app", op->app,
                      "attrs", op->attrs, "entitlements",
                      op->decision.entitlements);
    memset(&o, 0, sizeof(o));
    o.identity = op->iid;
    o.target = op->app;
    o.kind = "ensure";
    o.state = state;
    o.dedup_ttl_s = op->g->cfg->outbox.dedup_ttl_s;
    o.release_when_done = 1;
    st = state != NULL ? pg_outbox_enqueue(op->g->redis, &o, 2000,
                                           pg_admin_enqueued, op, idem,
                                           &op->obreq)
                       : PG_ERR_NOMEM;
    json_decref(state);
    if (st != PG_OK) {
        op->obreq = NULL;
        pg_admin_enqueued(op, st, NULL);
    }
}

static void
pg_admin_approved_loaded(pg_op_t *op, pg_status_t st)
{
    char *key = pg_key(op->g, "id:", op->iid);
    const char *argv[3];

    if (key == NULL) {
        pg_op_finish(op, NULL);
        return;
    }
    argv[0] = "HGET"; argv[1] = key; argv[2] = "attrs";
    st = pg_op_redis(op, pg_admin_attrs_read, 3, argv, NULL);
    free(key);
    if (st != PG_OK) {
        pg_admin_attrs_read(op, st);
    }
}

static void
pg_admin_decided(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    json_error_t jerr;
    json_t *h, *f;
    int approve = op->admin_route == PG_ADM_APPROVE;

    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 2
        || reply->element[1]->type != REDIS_REPLY_STRING) {
        pg_admin_error(op, 503, "identity_store_unavailable", NULL);
        return;
    }
    if (reply->element[0]->integer != 1) {
        const char *why = reply->element[1]->str;

        pg_admin_error(op, strcmp(why, "not_found") == 0 ? 404 : 409,
                       strncmp(why, "not_pending", 11) == 0 ? "not_pending"
                                                            : why,
                       json_pack("{s:s}", "request", op->admin_rid));
        return;
    }
    h = json_loadb(reply->element[1]->str, reply->element[1]->len, 0, &jerr);
    if (h == NULL) {
        pg_op_finish(op, NULL);
        return;
    }
    f = json_pack("{s:s, s:O?, s:O?, s:O?, s:O?}", "request", op->admin_rid,
                  "requester", json_object_get(h, "iid"),
                  "target", json_object_get(h, "target"),
                  "entitlement", json_object_get(h, "value"),
                  "decided_by", json_object_get(h, "decided_by"));
    pg_op_audit(op, "approval.decision", approve ? "approved" : "denied",
                approve ? "approved" : "denied", f, NULL);
    {
        json_error_t e2;
        const char *as = json_string_value(json_object_get(h, "approvers"));
        json_t *a = as != NULL ? json_loads(as, 0, &e2) : NULL;

        if (a != NULL) {
            json_object_set_new(h, "approvers", a);
        }
    }
    op->admin_result = json_pack("{s:o}", "request", h);
    if (!approve || op->admin_result == NULL) {
        json_t *r = op->admin_result;

        op->admin_result = NULL;     /* the op is freed by the reply */
        pg_admin_reply(op, 200, r);
        return;
    }
    /* the requester's identity and target, for provisioning */
    free(op->iid);
    free(op->app);
    op->iid = strdup(json_string_value(json_object_get(h, "iid")));
    op->app = strdup(json_string_value(json_object_get(h, "target")));
    if (op->iid == NULL || op->app == NULL) {
        pg_op_finish(op, NULL);
        return;
    }
    pg_req_load_approved(op, pg_admin_approved_loaded);
}

/* The request was read: check the caller may decide it, then decide. */
static void
pg_admin_req_read(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    json_t *h;
    size_t i;
    char *key, *pend, now[24];
    const char *argv[10];
    const char *by = json_string_value(json_object_get(op->admin_attrs,
                                       op->g->cfg->headers.user_attr));

    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        pg_admin_error(op, 503, "identity_store_unavailable", NULL);
        return;
    }
    if (reply->elements == 0) {
        pg_admin_error(op, 404, "not_found",
                       json_pack("{s:s}", "request", op->admin_rid));
        return;
    }
    h = json_object();
    for (i = 0; h != NULL && i + 1 < reply->elements; i += 2) {
        const redisReply *k = reply->element[i], *v = reply->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING) {
            char name[64];
            if (k->len < sizeof(name)) {
                memcpy(name, k->str, k->len);
                name[k->len] = '\0';
                json_object_set_new(h, name, json_stringn(v->str, v->len));
            }
        }
    }
    if (h == NULL || !pg_is_approver(op, h)) {
        json_decref(h);
        pg_admin_error(op, 403, "not_an_approver",
                       json_pack("{s:s}", "request", op->admin_rid));
        return;
    }
    json_decref(h);
    key = pg_key(op->g, "req:", op->admin_rid);
    pend = pg_key(op->g, "reqs:pending", NULL);
    if (key == NULL || pend == NULL) {
        free(key);
        free(pend);
        pg_op_finish(op, NULL);
        return;
    }
    snprintf(now, sizeof(now), "%lld", (long long) time(NULL));
    argv[0] = "EVAL"; argv[1] = pg_req_decide_lua; argv[2] = "2";
    argv[3] = key; argv[4] = pend; argv[5] = op->g->cfg->redis.key_prefix;
    argv[6] = op->admin_route == PG_ADM_APPROVE ? "approved" : "denied";
    argv[7] = by != NULL ? by : (op->admin_iid ? op->admin_iid : "?");
    argv[8] = now;
    argv[9] = "";
    st = pg_op_redis(op, pg_admin_decided, 10, argv, NULL);
    free(key);
    free(pend);
    if (st != PG_OK) {
        pg_admin_decided(op, st);
    }
}

static void
pg_admin_dead_listed(void *arg, pg_status_t st,
                     const pg_outbox_entry_t *entries, size_t n)
{
    pg_op_t *op = arg;
    json_t *out = json_array();
    size_t i;

    op->obreq = NULL;
    if (st != PG_OK || out == NULL) {
        json_decref(out);
        pg_admin_error(op, 503, "identity_store_unavailable", NULL);
        return;
    }
    for (i = 0; i < n; i++) {
        const pg_outbox_entry_t *e = &entries[i];
        json_error_t jerr;
        json_t *state = json_loads(e->state, 0, &jerr);

        json_array_append_new(out, json_pack(
            "{s:s, s:s, s:s, s:s, s:s, s:o?, s:I, s:s, s:s, s:I, s:I}",
            "id", e->id, "idem", e->idem, "identity", e->identity,
            "target", e->target, "kind", e->kind, "state", state,
            "attempts", (json_int_t) e->attempt, "reason", e->reason,
            "orig_id", e->orig_id, "created_ms", (json_int_t) e->created_ms,
            "dead_ms", (json_int_t) e->dead_ms));
    }
    pg_op_audit(op, "admin.request", "success", "list_dead",
                json_pack("{s:i}", "count", (int) n), NULL);
    pg_admin_reply(op, 200, json_pack("{s:o}", "dead", out));
}

static void
pg_admin_dead_moved(void *arg, pg_status_t st, const pg_outbox_move_t *m)
{
    pg_op_t *op = arg;
    int retry = op->admin_route == PG_ADM_DEAD_RETRY;
    json_t *f;

    op->obreq = NULL;
    if (st == PG_ERR_NOT_FOUND || st == PG_ERR_CONFLICT) {
        pg_admin_error(op, st == PG_ERR_NOT_FOUND ? 404 : 409,
                       st == PG_ERR_NOT_FOUND ? "not_found" : "conflict",
                       json_pack("{s:s}", "dead", op->admin_rid));
        return;
    }
    if (st != PG_OK) {
        pg_admin_error(op, 503, "identity_store_unavailable", NULL);
        return;
    }
    f = json_pack("{s:s, s:s, s:s, s:s}", "dead", m->from_id, "to",
                  m->to_id, "idem", m->idem, "reason", m->reason);
    pg_op_audit(op, "outbox.dead", "success", retry ? "retried" : "discarded",
                json_incref(f), NULL);
    pg_admin_reply(op, 200, f);
}

/* 1 when s is an id of the admin API: 1+ of A-Z a-z 0-9 - _. */
static int
pg_admin_id_ok(const char *s)
{
    const char *p;

    for (p = s; *p != '\0'; p++) {
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z')
              || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_')) {
            return 0;
        }
    }
    return p != s;
}

/* Open work items of a manual target were read. */
static void
pg_admin_work_listed(void *arg, pg_status_t st, const json_t *items,
                     const char *error)
{
    pg_op_t *op = arg;

    op->creq = NULL;
    op->creq_conn = NULL;
    if (st != PG_OK) {
        pg_admin_error(op, 503, "target_unavailable",
                       json_pack("{s:s}", "detail",
                                 error != NULL ? error : pg_status_str(st)));
        return;
    }
    pg_op_audit(op, "admin.request", "success", "list_work",
                json_pack("{s:s, s:i}", "target", op->admin_target->name,
                          "count", (int) json_array_size(items)), NULL);
    pg_admin_reply(op, 200, json_pack("{s:s, s:O}", "target",
                                      op->admin_target->name, "items",
                                      items));
}

/* A work item was resolved (or could not be). */
static void
pg_admin_work_resolved(void *arg, pg_status_t st, const char *error)
{
    pg_op_t *op = arg;
    int done = op->admin_route == PG_ADM_WORK_DONE;
    json_t *f;

    op->creq = NULL;
    op->creq_conn = NULL;
    if (st == PG_ERR_NOT_FOUND || st == PG_ERR_CONFLICT) {
        pg_admin_error(op, st == PG_ERR_NOT_FOUND ? 404 : 409,
                       st == PG_ERR_NOT_FOUND ? "not_found" : "not_open",
                       json_pack("{s:s}", "item", op->admin_rid));
        return;
    }
    if (st != PG_OK) {
        pg_admin_error(op, 503, "target_unavailable",
                       json_pack("{s:s}", "detail",
                                 error != NULL ? error : pg_status_str(st)));
        return;
    }
    f = json_pack("{s:s, s:s, s:s, s:s}", "target", op->admin_target->name,
                  "item", op->admin_rid, "status",
                  done ? "done" : "rejected", "by", op->admin_iid);
    pg_op_audit(op, "manual.item", "success", done ? "done" : "rejected",
                json_incref(f), NULL);
    pg_admin_reply(op, 200, f);
}

/* GET work/<target>, POST work/<target>/<id>/done|reject (admins). */
static void
pg_admin_work(pg_op_t *op)
{
    pg_connector_t *c = pg_gate_connector(op->g, op->admin_target);
    pg_status_t st;

    if (c == NULL || op->admin_target->type_name == NULL
        || strcmp(op->admin_target->type_name, "manual") != 0) {
        pg_admin_error(op, 404, "not_a_manual_target",
                       json_pack("{s:s}", "target", op->admin_target->name));
        return;
    }
    op->creq_conn = c;
    if (op->admin_route == PG_ADM_WORK) {
        st = pg_manual_list_open(c, PG_ADMIN_WORK_MAX, pg_admin_work_listed,
                                 op, &op->creq);
    } else if (op->admin_route == PG_ADM_WORK_DONE) {
        st = pg_manual_mark_done(c, op->admin_rid, op->admin_iid, NULL,
                                 pg_admin_work_resolved, op, &op->creq);
    } else {
        st = pg_manual_reject(c, op->admin_rid, op->admin_iid, NULL,
                              pg_admin_work_resolved, op, &op->creq);
    }
    if (st != PG_OK) {
        op->creq = NULL;
        op->creq_conn = NULL;
        pg_admin_error(op, st == PG_ERR_INVALID ? 400 : 503,
                       st == PG_ERR_INVALID ? "bad_id" : "internal_error",
                       NULL);
    }
}

/* The route of op->uri below the admin location; sets op->admin_rid. */
static int
pg_admin_route(pg_op_t *op, int post)
{
    char path[512], *seg[8], *p, *save = NULL;
    size_t n = 0, len;
    const char *q;

    if (op->uri == NULL) {
        return 0;
    }
    q = strchr(op->uri, '?');
    len = q != NULL ? (size_t) (q - op->uri) : strlen(op->uri);
    if (len >= sizeof(path)) {
        return 0;
    }
    memcpy(path, op->uri, len);
    path[len] = '\0';
    for (p = strtok_r(path, "/", &save); p != NULL && n < 8;
         p = strtok_r(NULL, "/", &save)) {
        seg[n++] = p;
    }
    if (n >= 1 && !post && strcmp(seg[n - 1], "requests") == 0) {
        return PG_ADM_LIST;
    }
    if (n >= 1 && !post && strcmp(seg[n - 1], "dead") == 0) {
        return PG_ADM_DEAD;
    }
    if (n >= 2 && !post && strcmp(seg[n - 2], "work") == 0) {
        op->admin_target = pg_config_target(op->g->cfg, seg[n - 1]);
        return op->admin_target != NULL ? PG_ADM_WORK : 0;
    }
    if (n >= 4 && post && strcmp(seg[n - 4], "work") == 0
        && strlen(seg[n - 2]) <= 64 && pg_admin_id_ok(seg[n - 2])) {
        int kind = strcmp(seg[n - 1], "done") == 0 ? PG_ADM_WORK_DONE
                   : strcmp(seg[n - 1], "reject") == 0 ? PG_ADM_WORK_REJECT
                   : 0;

        op->admin_target = pg_config_target(op->g->cfg, seg[n - 3]);
        if (kind == 0 || op->admin_target == NULL) {
            return 0;
        }
        op->admin_rid = strdup(seg[n - 2]);
        return op->admin_rid != NULL ? kind : 0;
    }
    if (n >= 3 && post && strlen(seg[n - 2]) <= 64) {
        int kind = 0;

        if (strcmp(seg[n - 3], "requests") == 0) {
            kind = strcmp(seg[n - 1], "approve") == 0 ? PG_ADM_APPROVE
                   : strcmp(seg[n - 1], "deny") == 0 ? PG_ADM_DENY : 0;
        } else if (strcmp(seg[n - 3], "dead") == 0) {
            kind = strcmp(seg[n - 1], "retry") == 0 ? PG_ADM_DEAD_RETRY
                   : strcmp(seg[n - 1], "discard") == 0 ? PG_ADM_DEAD_DISCARD
                   : 0;
        }
        if (kind != 0 && !pg_admin_id_ok(seg[n - 2])) {
            kind = 0;
        }
        if (kind != 0) {
            op->admin_rid = strdup(seg[n - 2]);
            return op->admin_rid != NULL ? kind : 0;
        }
    }
    return 0;
}

static void
pg_admin_dispatch(pg_op_t *op)
{
    const char *argv[7];
    char *key, now[24], max[16];
    pg_status_t st;

    switch (op->admin_route) {
    case PG_ADM_LIST:
        key = pg_key(op->g, "reqs:pending", NULL);
        if (key == NULL) {
            pg_op_finish(op, NULL);
            return;
        }
        snprintf(now, sizeof(now), "%lld", (long long) time(NULL));
        snprintf(max, sizeof(max), "%d", PG_ADMIN_LIST_MAX);
        argv[0] = "EVAL"; argv[1] = pg_req_list_lua; argv[2] = "1";
        argv[3] = key; argv[4] = op->g->cfg->redis.key_prefix; argv[5] = now;
        argv[6] = max;
        st = pg_op_redis(op, pg_admin_listed, 7, argv, NULL);
        free(key);
        if (st != PG_OK) {
            pg_admin_listed(op, st);
        }
        return;
    case PG_ADM_APPROVE:
    case PG_ADM_DENY:
        pg_op_key(op, pg_admin_req_read, "HGETALL", "req:", op->admin_rid);
        return;
    default:
        break;
    }
    if (!op->admin_is_admin) {
        pg_admin_error(op, 403, "not_an_admin", NULL);
        return;
    }
    if (op->admin_route == PG_ADM_WORK || op->admin_route == PG_ADM_WORK_DONE
        || op->admin_route == PG_ADM_WORK_REJECT) {
        pg_admin_work(op);
        return;
    }
    if (op->admin_route == PG_ADM_DEAD) {
        st = pg_outbox_dead_list(op->g->redis, "-", 100, pg_admin_dead_listed,
                                 op, &op->obreq);
    } else if (op->admin_route == PG_ADM_DEAD_RETRY) {
        st = pg_outbox_dead_retry(op->g->redis, op->admin_rid,
                                  op->g->cfg->outbox.dedup_ttl_s,
                                  pg_admin_dead_moved, op, &op->obreq);
    } else {
        st = pg_outbox_dead_discard(op->g->redis, op->admin_rid,
                                    pg_admin_dead_moved, op, &op->obreq);
    }
    if (st != PG_OK) {
        op->obreq = NULL;
        pg_admin_error(op, st == PG_ERR_INVALID ? 400 : 503,
                       st == PG_ERR_INVALID ? "bad_id" : "internal_error",
                       NULL);
    }
}

static void
pg_admin_session(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    json_error_t jerr;
    json_t *sess, *iid, *attrs, *r;
    pg_decision_t d;
    size_t i;

    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        pg_admin_error(op, 503, "identity_store_unavailable", NULL);
        return;
    }
    if (reply->type != REDIS_REPLY_STRING || reply->len > PG_GATE_MAX_SESSION
        || (sess = json_loadb(reply->str, reply->len, 0, &jerr)) == NULL) {
        pg_admin_error(op, 401, "login_required", NULL);
        return;
    }
    iid = json_object_get(sess, "iid");
    attrs = json_object_get(sess, "attrs");
    if (!json_is_string(iid) || !json_is_object(attrs)) {
        json_decref(sess);
        pg_admin_error(op, 401, "login_required", NULL);
        return;
    }
    op->admin_iid = strdup(json_string_value(iid));
    op->admin_attrs = json_incref(attrs);
    json_decref(sess);
    free(op->iid);
    op->iid = op->admin_iid != NULL ? strdup(op->admin_iid) : NULL;
    memset(&d, 0, sizeof(d));
    if (op->iid == NULL
        || pg_policy_decide_at(op->g->cfg->policies, attrs, NULL, time(NULL),
                               &d) != PG_OK) {
        pg_decision_clear(&d);
        pg_admin_error(op, 503, "policy_error", NULL);
        return;
    }
    json_array_foreach(d.roles, i, r) {
        const char *name = json_string_value(json_object_get(r, "role"));
        const char *state = json_string_value(json_object_get(r, "state"));

        if (name != NULL && state != NULL && strcmp(state, "held") == 0
            && strcmp(name, op->g->cfg->admin_role) == 0) {
            op->admin_is_admin = 1;
        }
    }
    pg_decision_clear(&d);
    pg_admin_dispatch(op);
}

/* Entry of the admin flow (gate.c). */
void
pg_admin_start(pg_op_t *op, int post)
{
    op->admin_route = pg_admin_route(op, post);
    if (op->admin_route == 0) {
        pg_admin_reply(op, 404, json_pack("{s:s}", "error", "no_such_endpoint"));
        return;
    }
    if (op->sid == NULL || op->sid[0] == '\0') {
        pg_admin_error(op, 401, "login_required", NULL);
        return;
    }
    pg_op_key(op, pg_admin_session, "GET", "sess:", op->sid);
}
