/*
 * provgate core: just-in-time provisioning of one app at login.
 *
 *   decide   pg_policy_decide(attrs, app): no account granted -> 403
 *   lock     SET <p>lock:prov:<iid>:<app> <token> NX PX (4 * the
 *            target's call budget + 1000, pg_prov_lease_ms); while held by
 *            another login of the same person, poll every 50 ms (no
 *            blocking) until it is free or the target's time budget is
 *            spent. So two concurrent first logins of one person run the
 *            target calls one after the other: the second finds the
 *            account the first made (by its remembered id or by userName)
 *            and never POSTs again.
 *   ensure   pg_scim_ensure (lookup, create/adopt, PATCH, groups)
 *   record   HSET <p>id:<iid> acct:<app> <id> ents:<app> <json>
 *   unlock   compare-and-delete (Lua), so an expired lease taken over by
 *            someone else is never released by us.
 * Every HTTP call, the decision and the outcome are audited.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis.h>

#include "provgate/util.h"
#include "gate_int.h"

static const char pg_unlock_lua[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('DEL', KEYS[1]) else return 0 end";

static void pg_prov_try_lock(pg_op_t *op, pg_status_t st);

/*
 * The per-person lease of one provisioning run of target t, in ms: it
 * outlives the longest ensure (a few target calls, each with its
 * retries: call_budget_ms) and no more, so that after a crash the next
 * holder waits at most this long. Targets without a call budget (connector
 * targets) use timeout_ms per call.
 */
static uint64_t
pg_prov_lease_ms(const pg_target_cfg_t *t)
{
    uint64_t call = t->call_budget_ms ? t->call_budget_ms : t->timeout_ms;

    return 4 * call + 1000;
}

static void
pg_ignore_reply(void *arg, pg_status_t st, const redisReply *reply)
{
    (void) arg;
    (void) st;
    (void) reply;
}

/* Release our lease if we hold one; fire and forget (it expires anyway).
 * Also called when an op is cancelled or freed mid-flight. */
void
pg_prov_unlock(pg_op_t *op)
{
    const char *argv[5];

    if (op->lock_key == NULL || op->lock_token == NULL) {
        return;
    }
    argv[0] = "EVAL"; argv[1] = pg_unlock_lua; argv[2] = "1";
    argv[3] = op->lock_key; argv[4] = op->lock_token;
    if (pg_redis_command(op->g->redis, 5, argv, NULL, 0, pg_ignore_reply,
                         NULL, NULL) != PG_OK) {
        pg_log(op->g->host, PG_LOG_WARN, "could not release %s",
               op->lock_key);
    }
    free(op->lock_token);
    op->lock_token = NULL;
}

static int
pg_scim_status(const char *reason)
{
    if (strcmp(reason, "target_timeout") == 0) {
        return 504;
    }
    if (strcmp(reason, "target_unavailable") == 0) {
        return 503;
    }
    return 502;
}

static void
pg_prov_recorded(pg_op_t *op, pg_status_t st)
{
    json_t *f;
    pg_step_fn next = op->after_provision;

    pg_prov_unlock(op);
    f = json_pack("{s:s, s:s?, s:b, s:b, s:b, s:i}", "target", op->app,
                  "account", op->scim.account_id, "created", op->scim.created,
                  "adopted", op->scim.adopted, "updated", op->scim.updated,
                  "groups_added", (int) op->scim.groups_added);
    if (f != NULL && op->scim.collisions > 0) {
        /* the rule's username was someone else's: say which one was used */
        json_object_set_new(f, "username_collisions",
                            json_integer(op->scim.collisions));
    }
    pg_op_audit(op, "provision.account", "success", "ok", f, NULL);
    next(op, PG_OK);
}

static void
pg_prov_scim_call(void *arg, const char *method, const char *path,
                  long status, pg_status_t st, unsigned ms)
{
    pg_op_t *op = arg;
    json_t *f = json_pack("{s:s, s:s, s:s, s:i, s:s, s:i}", "target", op->app,
                          "method", method, "path", path, "http_status",
                          (int) status, "transport", pg_status_str(st),
                          "ms", (int) ms);

    pg_op_audit(op, "provision.call",
                st == PG_OK && status < 400 ? "success" : "failure",
                st == PG_OK ? "http" : pg_status_str(st), f, NULL);
}

/* The group names in a JSON array of entitlements ({type, value}). */
static int
pg_has_group(const json_t *ents, const char *name)
{
    size_t i;
    json_t *e;

    json_array_foreach(ents, i, e) {
        const char *t = json_string_value(json_object_get(e, "type"));
        const char *v = json_string_value(json_object_get(e, "value"));

        if (t != NULL && v != NULL && strcmp(t, "group") == 0
            && strcmp(v, name) == 0) {
            return 1;
        }
    }
    return 0;
}

static void pg_prov_record(pg_op_t *op);
static void pg_prov_revoke_next(pg_op_t *op);

static void
pg_prov_revoked(void *arg, const pg_scim_result_t *r)
{
    pg_op_t *op = arg;
    const char *name = json_string_value(json_array_get(op->revoke,
                                                         op->revoke_next - 1));
    json_t *f;

    op->sop = NULL;
    f = json_pack("{s:s, s:s, s:s, s:s?}", "target", op->app, "group",
                  name ? name : "", "account", op->scim.account_id,
                  "reason", r->reason);
    pg_op_audit(op, "provision.revoke", r->st == PG_OK ? "success" : "failure",
                r->st == PG_OK ? "no_longer_justified" : r->reason, f, NULL);
    pg_prov_revoke_next(op);
}

/*
 * The SCIM options of op's target into *o: discovery (the process's caps
 * cache of that target), dialect switches, retries and the oauth2 token
 * cache (the process's, per target). NULL when the target sets none of
 * them: the client then keeps its original behaviour (no
 * discovery, PATCH, no If-Match). o is owned by the caller and only needs
 * to live for the pg_scim_* call (it is copied; the caps are borrowed
 * from the gate, which outlives every op).
 */
static const pg_scim_options_t *
pg_prov_scim_opts(pg_op_t *op, pg_scim_options_t *o)
{
    const pg_target_cfg_t *t = op->target;
    size_t i = (size_t) (t - op->g->cfg->targets);

    pg_scim_oauth_t *oauth = NULL;

    if (op->g->scim_oauth != NULL && i < op->g->cfg->ntargets) {
        oauth = op->g->scim_oauth[i];
    }
    if (!t->scim_discovery && !t->scim_force_put && !t->scim_no_etag
        && !t->scim_member_remove_value && !t->scim_no_extensions
        && oauth == NULL && t->retry_attempts <= 1 && !t->scim_bulk) {
        return NULL;
    }
    memset(o, 0, sizeof(*o));
    o->host = op->g->host;
    o->oauth = oauth;
    if (t->retry_attempts > 1) {
        o->retry.max_attempts = t->retry_attempts;
        o->retry.base_ms = t->retry_base_ms;
        o->retry.max_ms = t->retry_max_ms;
    }
    if (t->scim_discovery && op->g->scim_caps != NULL
        && i < op->g->cfg->ntargets) {
        o->caps = &op->g->scim_caps[i];
    }
    o->dialect.force_put = t->scim_force_put;
    o->dialect.no_etag = t->scim_no_etag;
    o->dialect.member_remove_value = t->scim_member_remove_value;
    o->dialect.no_extensions = t->scim_no_extensions;
    o->bulk = t->scim_bulk;
    return o;
}

static void
pg_prov_group_found(void *arg, const pg_scim_result_t *r)
{
    pg_op_t *op = arg;
    pg_scim_op_request_t req;
    pg_scim_options_t sopts;
    const char *gid = NULL;

    op->sop = NULL;
    if (r->st == PG_OK && json_array_size(r->resources) == 1) {
        gid = json_string_value(json_object_get(json_array_get(r->resources,
                                                                0), "id"));
    }
    if (gid == NULL) {
        /* the group is gone from the target: nothing to remove */
        pg_prov_revoke_next(op);
        return;
    }
    memset(&req, 0, sizeof(req));
    req.kind = PG_SCIM_OP_GROUP_REMOVE;
    req.target = op->target;
    req.groups = 1;
    req.id = gid;
    req.member_id = op->scim.account_id;
    req.on_call = pg_prov_scim_call;
    req.opts = pg_prov_scim_opts(op, &sopts);
    if (pg_scim_run(op->g->http, &req, pg_prov_revoked, op, &op->sop)
        != PG_OK) {
        op->sop = NULL;
        pg_prov_revoke_next(op);
    }
}

/*
 * Move semantics: a group granted at an earlier login that today's
 * decision no longer justifies is removed from the account (one at a time:
 * find the group by displayName, then remove the member). Access common to
 * the old and the new function is untouched. A failed removal is audited
 * and does not block the login.
 */
static void
pg_prov_revoke_next(pg_op_t *op)
{
    pg_scim_op_request_t req;
    pg_scim_options_t sopts;
    const char *name;

    if (op->revoke == NULL) {
        size_t i;
        json_t *e;

        op->revoke = json_array();
        json_array_foreach(op->prev_ents, i, e) {
            const char *t = json_string_value(json_object_get(e, "type"));
            const char *v = json_string_value(json_object_get(e, "value"));

            if (op->revoke != NULL && t != NULL && v != NULL
                && strcmp(t, "group") == 0
                && !pg_has_group(op->decision.entitlements, v)) {
                json_array_append_new(op->revoke, json_string(v));
            }
        }
    }
    name = json_string_value(json_array_get(op->revoke, op->revoke_next));
    if (name == NULL) {
        pg_prov_record(op);
        return;
    }
    op->revoke_next++;
    memset(&req, 0, sizeof(req));
    req.kind = PG_SCIM_OP_LIST;
    req.target = op->target;
    req.groups = 1;
    req.filter_attr = "displayName";
    req.filter_value = name;
    req.max_results = 10;
    req.on_call = pg_prov_scim_call;
    req.opts = pg_prov_scim_opts(op, &sopts);
    if (pg_scim_run(op->g->http, &req, pg_prov_group_found, op, &op->sop)
        != PG_OK) {
        op->sop = NULL;
        pg_prov_revoke_next(op);
    }
}

static void
pg_prov_scim_done(void *arg, const pg_scim_result_t *r)
{
    pg_op_t *op = arg;
    json_t *f;

    op->sop = NULL;
    op->scim = *r;
    op->scim.account_id = r->account_id ? strdup(r->account_id) : NULL;
    op->have_scim = 1;

    if (r->st != PG_OK || op->scim.account_id == NULL) {
        pg_prov_unlock(op);
        f = json_pack("{s:s, s:s, s:i}", "target", op->app, "detail",
                      r->detail, "http_status", (int) r->http_status);
        pg_op_deny(op, pg_scim_status(r->reason), "provision.account",
                   r->reason,
                   "Your account in this application could not be prepared. "
                   "Please try again later.", f);
        return;
    }

    pg_prov_revoke_next(op);
}

/* Record the account id and the granted entitlements on the identity. */
static void
pg_prov_record(pg_op_t *op)
{
    char *ents_json, *key;
    const char *argv[8];
    char now_s[32];
    int argc = 6;
    pg_status_t st;

    ents_json = op->decision.entitlements
                    ? json_dumps(op->decision.entitlements, JSON_COMPACT)
                    : strdup("[]");
    key = pg_key(op->g, "id:", op->iid);
    if (ents_json == NULL || key == NULL) {
        free(ents_json);
        free(key);
        pg_prov_unlock(op);
        pg_op_finish(op, NULL);
        return;
    }
    {
        char f1[160], f2[160];

        char f3[160];

        snprintf(f1, sizeof(f1), "acct:%s", op->app);
        snprintf(f2, sizeof(f2), "ents:%s", op->app);
        argv[0] = "HSET"; argv[1] = key; argv[2] = f1;
        argv[3] = op->scim.account_id; argv[4] = f2; argv[5] = ents_json;
        if (op->deprovision == 0
            && (op->flow != PG_FLOW_OUTBOX || op->from_login)) {
            /* provisioned just in time by a login: the grant time of its
             * jit entitlements and the mark session-end deprovisioning
             * looks for (src/sidecar/expiry.c) */
            snprintf(f3, sizeof(f3), "jit_at:%s", op->app);
            snprintf(now_s, sizeof(now_s), "%lld", (long long) time(NULL));
            argv[6] = f3; argv[7] = now_s;
            argc = 8;
        }
        st = pg_op_redis(op, pg_prov_recorded, argc, argv, NULL);
    }
    free(ents_json);
    free(key);
    if (st != PG_OK) {
        pg_prov_recorded(op, st);
    }
}

/* ---- connector targets (connector.h) and deprovisioning ------------- */

/* The entitlement values of a JSON array of {type, value} (borrowed). */
static const char **
pg_ent_vec(const json_t *ents, size_t *n)
{
    const char **v = calloc(json_array_size(ents) + 1, sizeof(char *));
    size_t i;
    json_t *e;

    *n = 0;
    if (v == NULL) {
        return NULL;
    }
    json_array_foreach(ents, i, e) {
        const char *val = json_string_value(json_object_get(e, "value"));
        if (val != NULL) {
            v[(*n)++] = val;
        }
    }
    return v;
}

/*
 * The policy's account rule for op's target (docs/policies.md "Accounts"),
 * as attribute overrides: *out becomes {"<attribute>": "<value>", ...}
 * with the rule's attributes and, when the rule builds a username, the
 * target's account key (username_attr, default "userName") set to it;
 * NULL when the target has no account rule. When the rule refuses the
 * account for op->attrs (a required attribute or the username cannot be
 * built), PG_ERR_DENIED with the reason in err. *out is the caller's.
 */
typedef struct pg_prov_coll {
    unsigned start, tries, max_len;     /* tries 0: no collision handling */
    int create_disabled;                /* initial_state "disabled" */
} pg_prov_coll_t;

static pg_status_t
pg_prov_account(pg_op_t *op, json_t **out, pg_prov_coll_t *coll,
                pg_err_t *err)
{
    const pg_target_cfg_t *t = op->target;
    json_t *acct = NULL, *o, *c;
    const char *key, *result;
    pg_status_t st;

    *out = NULL;
    if (coll != NULL) {
        memset(coll, 0, sizeof(*coll));
    }
    st = pg_policy_account(op->g->cfg->policies, op->attrs, op->app, &acct);
    if (st != PG_OK || acct == NULL) {
        return st;
    }
    result = json_string_value(json_object_get(acct, "result"));
    if (result == NULL || strcmp(result, "ok") != 0) {
        const char *why = json_string_value(json_object_get(acct, "reason"));

        pg_err_set(err, "%s", why != NULL ? why : "the account is refused");
        json_decref(acct);
        return PG_ERR_DENIED;
    }
    o = json_copy(json_object_get(acct, "attributes"));
    if (o == NULL) {
        o = json_object();
    }
    key = t->username_attr != NULL && t->username_attr[0] != '\0'
              ? t->username_attr : "userName";
    if (o == NULL
        || (json_is_string(json_object_get(acct, "username"))
            && json_object_set(o, key, json_object_get(acct, "username"))
                   != 0)) {
        json_decref(o);
        json_decref(acct);
        return PG_ERR_NOMEM;
    }
    if (coll != NULL) {
        const char *is = json_string_value(json_object_get(acct,
                                                           "initial_state"));

        coll->create_disabled = is != NULL && strcmp(is, "disabled") == 0;
    }
    c = json_object_get(acct, "username_collision");
    if (coll != NULL && json_is_string(json_object_get(acct, "username"))
        && json_is_object(c)) {
        coll->start = (unsigned) json_integer_value(json_object_get(c,
                                                                  "start"));
        coll->tries = (unsigned) json_integer_value(json_object_get(c,
                                                        "max_tries"));
        coll->max_len = (unsigned) json_integer_value(json_object_get(c,
                                                        "max_length"));
    }
    json_decref(acct);
    *out = o;
    return PG_OK;
}

/* An account the account rule refuses: a clear, permanent refusal. */
static void
pg_prov_refused(pg_op_t *op, const pg_err_t *err)
{
    json_t *f = json_pack("{s:s, s:s}", "target", op->app, "detail",
                          err->msg);

    pg_prov_unlock(op);
    pg_op_deny(op, 403, "provision.account", "account_refused",
               "Your account in this application cannot be created: some "
               "of your identity data it needs is missing.", f);
}

/* Render the target's attribute mapping for op->attrs, with the policy's
 * account rule laid over it, into *out (an object) and the account key.
 * PG_ERR_DENIED when the account rule refuses the account; PG_ERR_NOT_FOUND
 * etc. with err set. */
static pg_status_t
pg_prov_render(pg_op_t *op, json_t **out, const char **key, pg_err_t *err)
{
    const pg_target_cfg_t *t = op->target;
    json_t *o = json_object();
    size_t i;
    pg_status_t st = PG_OK;

    *out = NULL;
    *key = NULL;
    if (o == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; st == PG_OK && i < t->nattrs; i++) {
        const pg_attr_map_t *m = &t->attrs[i];

        if (m->tpl != NULL) {
            char *v = NULL;

            st = pg_template_render(m->tpl, op->attrs, &v, err);
            if (st == PG_OK) {
                json_object_set_new(o, m->scim_path, json_string(v));
                free(v);
            }
        } else {
            json_object_set(o, m->scim_path, m->literal);
        }
    }
    if (st == PG_OK) {
        /* the policy's account rule overrides and adds attributes */
        json_t *acct = NULL, *v;
        const char *k;

        st = pg_prov_account(op, &acct, NULL, err);
        json_object_foreach(acct, k, v) {
            if (st == PG_OK && json_object_set(o, k, v) != 0) {
                st = PG_ERR_NOMEM;
            }
        }
        json_decref(acct);
    }
    if (st != PG_OK) {
        json_decref(o);
        return st;
    }
    *key = json_string_value(json_object_get(o, t->username_attr));
    if (*key == NULL || (*key)[0] == '\0') {
        pg_err_set(err, "the account key \"%s\" is empty", t->username_attr);
        json_decref(o);
        return PG_ERR_INVALID;
    }
    *out = o;
    return PG_OK;
}

/* A connector answered ensure/disable/remove. */
static void
pg_prov_conn_done(void *arg, pg_status_t st, const pg_conn_result_t *r)
{
    pg_op_t *op = arg;
    json_t *f;

    op->creq = NULL;
    f = json_pack("{s:s, s:s, s:s, s:s?, s:O?}", "target", op->app,
                  "connector", op->target->type_name, "outcome",
                  st == PG_OK ? pg_conn_outcome_str(r->outcome)
                              : pg_status_str(st),
                  "account", r != NULL && r->id != NULL && r->id[0] != '\0'
                                 ? r->id : NULL,
                  "changes", r != NULL ? r->changes : NULL);
    if (st != PG_OK) {
        pg_prov_unlock(op);
        if (f != NULL && r != NULL && r->error != NULL) {
            json_object_set_new(f, "detail", json_string(r->error));
        }
        /* retryable -> 503 (the outbox retries), permanent -> 502 */
        pg_op_deny(op, r != NULL && r->retryable ? 503 : 502,
                   "provision.account",
                   r != NULL && r->retryable ? "target_unavailable"
                                             : "target_rejected",
                   "Your account in this application could not be prepared.",
                   f);
        return;
    }
    op->have_scim = 1;
    op->scim.created = r->outcome == PG_CONN_CREATED;
    op->scim.adopted = r->outcome == PG_CONN_ADOPTED;
    op->scim.updated = r->outcome == PG_CONN_UPDATED;
    free(op->scim.account_id);
    op->scim.account_id = strdup(r->id != NULL && r->id[0] != '\0'
                                     ? r->id
                                     : (op->known_account != NULL
                                            ? op->known_account : "-"));
    pg_op_audit(op, op->deprovision ? "provision.deprovision"
                                    : "provision.account",
                "success", pg_conn_outcome_str(r->outcome), f, NULL);
    if (op->scim.account_id == NULL) {
        pg_prov_unlock(op);
        pg_op_finish(op, NULL);
        return;
    }
    pg_prov_record(op);
}

/* Ensure (or disable/delete) the account in a connector target. */
static void
pg_prov_conn_ensure(pg_op_t *op)
{
    pg_connector_t *c = pg_gate_connector(op->g, op->target);
    pg_account_t a;
    pg_err_t err = { "" };
    json_t *attrs = NULL, *f;
    const char *key = NULL, **groups = NULL, **revoke = NULL;
    size_t ng = 0, nr = 0, i;
    json_t *e, *rv = json_array();
    pg_status_t st;

    if (c == NULL || rv == NULL) {
        json_decref(rv);
        pg_prov_unlock(op);
        pg_op_deny(op, 503, "provision.account", "connector_unavailable",
                   "Provisioning is not available for this application.",
                   NULL);
        return;
    }
    st = pg_prov_render(op, &attrs, &key, &err);
    if (st == PG_ERR_DENIED) {
        json_decref(rv);
        pg_prov_refused(op, &err);
        return;
    }
    if (st != PG_OK) {
        json_decref(rv);
        pg_prov_unlock(op);
        f = json_pack("{s:s, s:s}", "target", op->app, "detail", err.msg);
        pg_op_deny(op, 502, "provision.account", "mapping_failed",
                   "Your account cannot be built from your identity data.", f);
        return;
    }
    /* move semantics: what an earlier decision granted and this one does
     * not is revoked; nothing else is touched */
    json_array_foreach(op->prev_ents, i, e) {
        const char *v = json_string_value(json_object_get(e, "value"));
        size_t j;
        json_t *n;
        int keep = 0;

        json_array_foreach(op->decision.entitlements, j, n) {
            const char *nv = json_string_value(json_object_get(n, "value"));
            if (v != NULL && nv != NULL && strcmp(v, nv) == 0) {
                keep = 1;
            }
        }
        if (v != NULL && !keep) {
            json_array_append(rv, e);
        }
    }
    groups = pg_ent_vec(op->deprovision ? NULL : op->decision.entitlements,
                        &ng);
    revoke = pg_ent_vec(rv, &nr);
    memset(&a, 0, sizeof(a));
    a.key = key;
    a.id = op->known_account;
    a.identity = op->iid;
    a.attrs = attrs;
    a.groups = groups;
    a.ngroups = ng;
    a.revoke = revoke;
    a.nrevoke = nr;
    a.active = op->deprovision == 0;
    if (groups == NULL || revoke == NULL) {
        st = PG_ERR_NOMEM;
    } else if ((op->creq_conn = c), op->deprovision == 2) {
        st = pg_conn_remove(c, &a, pg_prov_conn_done, op, &op->creq);
    } else if (op->deprovision == 1) {
        st = pg_conn_disable(c, &a, pg_prov_conn_done, op, &op->creq);
    } else {
        st = pg_conn_ensure(c, &a, pg_prov_conn_done, op, &op->creq);
    }
    free(groups);
    free(revoke);
    json_decref(attrs);
    json_decref(rv);
    if (st != PG_OK) {
        op->creq = NULL;
        pg_prov_unlock(op);
        pg_op_deny(op, 502, "provision.account", "connector_refused",
                   "Provisioning could not start.", NULL);
    }
}

/* Leave on a SCIM target: deactivate (active=false) or delete. */
static void
pg_prov_scim_deprov_done(void *arg, const pg_scim_result_t *r)
{
    pg_op_t *op = arg;
    json_t *f;

    op->sop = NULL;
    f = json_pack("{s:s, s:s?, s:s, s:s}", "target", op->app, "account",
                  op->known_account, "action",
                  op->deprovision == 2 ? "delete" : "disable", "detail",
                  r->detail);
    if (r->st != PG_OK && r->st != PG_ERR_NOT_FOUND) {
        pg_prov_unlock(op);
        pg_op_deny(op, pg_scim_status(r->reason), "provision.deprovision",
                   r->reason, "The account could not be disabled.", f);
        return;
    }
    pg_op_audit(op, "provision.deprovision", "success",
                r->st == PG_OK ? (op->deprovision == 2 ? "deleted"
                                                       : "disabled")
                               : "already_gone", f, NULL);
    op->have_scim = 1;
    free(op->scim.account_id);
    op->scim.account_id = strdup(op->known_account);
    if (op->scim.account_id == NULL) {
        pg_prov_unlock(op);
        pg_op_finish(op, NULL);
        return;
    }
    pg_prov_record(op);
}

static void
pg_prov_scim_deprovision(pg_op_t *op)
{
    pg_scim_op_request_t req;
    pg_scim_options_t sopts;

    if (op->known_account == NULL) {
        /* never provisioned there: nothing to do */
        pg_prov_unlock(op);
        pg_op_audit(op, "provision.deprovision", "success", "no_account",
                    json_pack("{s:s}", "target", op->app), NULL);
        op->after_provision(op, PG_OK);
        return;
    }
    memset(&req, 0, sizeof(req));
    req.kind = op->deprovision == 2 ? PG_SCIM_OP_DELETE
                                    : PG_SCIM_OP_DEACTIVATE;
    req.target = op->target;
    req.id = op->known_account;
    req.on_call = pg_prov_scim_call;
    req.opts = pg_prov_scim_opts(op, &sopts);
    if (pg_scim_run(op->g->http, &req, pg_prov_scim_deprov_done, op,
                    &op->sop) != PG_OK) {
        op->sop = NULL;
        pg_prov_unlock(op);
        pg_op_deny(op, 503, "provision.deprovision", "internal_error",
                   "Deprovisioning could not start.", NULL);
    }
}

static void
pg_prov_known(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    pg_scim_request_t req;
    pg_scim_options_t sopts;
    pg_err_t err = { "" };
    json_t *desired = NULL, *acct = NULL, *e, *f;
    pg_prov_coll_t coll;
    const char **groups;
    size_t i, n = 0;

    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        pg_prov_unlock(op);
        pg_op_deny(op, 503, "provision.account", "identity_store_unavailable",
                   "The provisioning service is unavailable.", NULL);
        return;
    }
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2) {
        const redisReply *id = reply->element[0], *ents = reply->element[1];
        json_error_t jerr;

        if (id->type == REDIS_REPLY_STRING) {
            op->known_account = strndup(id->str, id->len);
        }
        if (ents->type == REDIS_REPLY_STRING && ents->len < 256 * 1024) {
            op->prev_ents = json_loadb(ents->str, ents->len, 0, &jerr);
        }
    }
    if (op->target->type == PG_TARGET_CONNECTOR) {
        pg_prov_conn_ensure(op);
        return;
    }
    if (op->deprovision != 0) {
        pg_prov_scim_deprovision(op);
        return;
    }
    st = pg_prov_account(op, &acct, &coll, &err);
    if (st == PG_ERR_DENIED) {
        pg_prov_refused(op, &err);
        return;
    }
    if (st != PG_OK
        || pg_scim_build_user_with(op->target, op->attrs, acct, &desired,
                                   &err) != PG_OK) {
        json_decref(acct);
        pg_prov_unlock(op);
        f = json_pack("{s:s, s:s}", "target", op->app, "detail", err.msg);
        pg_op_deny(op, 502, "provision.account", "mapping_failed",
                   "Your account cannot be built from your identity data.", f);
        return;
    }
    json_decref(acct);
    groups = calloc(json_array_size(op->decision.entitlements) + 1,
                    sizeof(char *));
    if (groups == NULL) {
        json_decref(desired);
        pg_prov_unlock(op);
        pg_op_finish(op, NULL);
        return;
    }
    json_array_foreach(op->decision.entitlements, i, e) {
        const char *type = json_string_value(json_object_get(e, "type"));
        const char *value = json_string_value(json_object_get(e, "value"));

        if (type != NULL && value != NULL && strcmp(type, "group") == 0) {
            groups[n++] = value;
        }
    }
    memset(&req, 0, sizeof(req));
    req.target = op->target;
    req.desired = desired;
    req.known_id = op->known_account;
    req.groups = groups;
    req.on_call = pg_prov_scim_call;
    req.opts = pg_prov_scim_opts(op, &sopts);
    req.collision_tries = coll.tries;
    req.collision_start = coll.start;
    req.collision_max_len = coll.max_len;
    req.create_disabled = coll.create_disabled;
    st = pg_scim_ensure(op->g->http, &req, pg_prov_scim_done, op, &op->sop);
    json_decref(desired);
    free(groups);
    if (st != PG_OK) {
        pg_prov_unlock(op);
        pg_op_deny(op, 503, "provision.account", "internal_error",
                   "Provisioning could not start.", NULL);
    }
}

static void
pg_prov_locked(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    const pg_host_t *h = op->g->host;
    char *key;
    const char *argv[4];
    char field[160];

    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        free(op->lock_token);
        op->lock_token = NULL;
        pg_op_deny(op, 503, "provision.account", "identity_store_unavailable",
                   "The provisioning service is unavailable.", NULL);
        return;
    }
    if (reply->type == REDIS_REPLY_NIL) {
        /* another login of this person is provisioning: wait our turn */
        if (h->now_ms(h->ctx) >= op->lock_deadline) {
            free(op->lock_token);
            op->lock_token = NULL;
            pg_op_deny(op, 503, "provision.account", "provisioning_busy",
                       "Your account is still being prepared. Please try "
                       "again in a moment.", NULL);
            return;
        }
        if (pg_op_sleep(op, pg_prov_try_lock, PG_GATE_LOCK_POLL_MS) != PG_OK) {
            pg_op_finish(op, NULL);
        }
        return;
    }
    key = pg_key(op->g, "id:", op->iid);
    if (key == NULL) {
        pg_prov_unlock(op);
        pg_op_finish(op, NULL);
        return;
    }
    {
        char field2[160];

        snprintf(field, sizeof(field), "acct:%s", op->app);
        snprintf(field2, sizeof(field2), "ents:%s", op->app);
        argv[0] = "HMGET"; argv[1] = key; argv[2] = field; argv[3] = field2;
        st = pg_op_redis(op, pg_prov_known, 4, argv, NULL);
    }
    free(key);
    if (st != PG_OK) {
        pg_prov_known(op, st);
    }
}

static void
pg_prov_try_lock(pg_op_t *op, pg_status_t st)
{
    const char *argv[6];
    char ttl[32];

    /* the lease outlives the longest ensure (a few target calls), and no
     * more: after a crash the next holder waits at most this long */
    snprintf(ttl, sizeof(ttl), "%llu",
             (unsigned long long) pg_prov_lease_ms(op->target));
    argv[0] = "SET"; argv[1] = op->lock_key; argv[2] = op->lock_token;
    argv[3] = "NX"; argv[4] = "PX"; argv[5] = ttl;
    st = pg_op_redis(op, pg_prov_locked, 6, argv, NULL);
    if (st != PG_OK) {
        pg_prov_locked(op, st);
    }
}

static void
pg_prov_go(pg_op_t *op, pg_status_t st)
{
    (void) st;
    if (op->target->via_outbox) {
        pg_ob_provision(op);
        return;
    }
    pg_provision_apply(op);
}

static void
pg_prov_awaiting(pg_op_t *op, pg_status_t st)
{
    (void) st;
    pg_req_awaiting_page(op);
}

/* 1 when the decision has an item awaiting approval in app. */
static int
pg_pending_in(const pg_decision_t *d, const char *app)
{
    size_t i;
    json_t *it;

    json_array_foreach(d->pending_approval, i, it) {
        const char *t = json_string_value(json_object_get(it, "target"));
        if (t != NULL && strcmp(t, app) == 0) {
            return 1;
        }
    }
    return 0;
}

/* The identity's approved grants are in op->approved: decide. */
static void
pg_prov_decide(pg_op_t *op, pg_status_t st)
{
    json_t *f, *attrs = pg_req_decision_attrs(op);

    pg_decision_clear(&op->decision);
    st = attrs != NULL ? pg_policy_decide(op->g->cfg->policies, attrs,
                                          op->app, &op->decision)
                       : PG_ERR_NOMEM;
    json_decref(attrs);
    if (st != PG_OK) {
        pg_op_deny(op, 503, "policy.decision", "policy_error",
                   "Your access could not be evaluated.", NULL);
        return;
    }
    f = json_pack("{s:s, s:b, s:O?, s:O?, s:O?, s:O?, s:O?, s:O?}", "target",
                  op->app, "granted", op->decision.has_account,
                  "entitlements", op->decision.entitlements,
                  "denied", op->decision.denied,
                  "sod_findings", op->decision.sod_findings,
                  "pending_approval", op->decision.pending_approval,
                  "jit", op->decision.jit,
                  "explanation", op->decision.explanation);
    if (!op->decision.has_account) {
        if (pg_pending_in(&op->decision, op->app)) {
            /* nothing granted yet, but requested: not an error */
            pg_op_audit(op, "policy.decision", "deferred",
                        "awaiting_approval", f, NULL);
            pg_req_record(op, pg_prov_awaiting);
            return;
        }
        pg_op_deny(op, 403, "policy.decision", "not_entitled",
                   "No policy gives you access to this application. Ask "
                   "your manager or the application owner for access.", f);
        return;
    }
    pg_op_audit(op, "policy.decision", "success", "granted", f, NULL);
    /* granted items go ahead; pending ones become requests */
    pg_req_record(op, pg_prov_go);
}

void
pg_provision_start(pg_op_t *op)
{
    op->prov_start_us = pg_mono_us();
    if (op->target == NULL) {
        pg_op_deny(op, 403, "policy.decision", "unknown_app",
                   "This application is not configured.", NULL);
        return;
    }
    pg_req_load_approved(op, pg_prov_decide);
}

/*
 * Take the per-(identity, app) lease, then ensure the account. op->iid,
 * op->attrs, op->target and op->decision are set. Ends in
 * op->after_provision(op, PG_OK) or a denial.
 */
void
pg_provision_apply(pg_op_t *op)
{
    const pg_host_t *h = op->g->host;
    char token[48], *name = NULL;

    if (pg_random_token(18, token, sizeof(token)) != PG_OK
        || asprintf(&name, "lock:prov:%s:", op->iid) < 0) {
        pg_op_finish(op, NULL);
        return;
    }
    op->lock_key = pg_key(op->g, name, op->app);
    free(name);
    op->lock_token = strdup(token);
    if (op->lock_key == NULL || op->lock_token == NULL) {
        pg_op_finish(op, NULL);
        return;
    }
    /* wait for a concurrent login at most about as long as it may take */
    op->lock_deadline = h->now_ms(h->ctx) + pg_prov_lease_ms(op->target);
    pg_prov_try_lock(op, PG_OK);
}
