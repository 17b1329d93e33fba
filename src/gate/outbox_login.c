/*
 * provgate core: provisioning at login through the durable outbox.
 *
 * A login never talks to a target directly when the target's delivery is
 * "outbox" (the default). It writes the desired state to the outbox stream
 * (pg_outbox_enqueue: idempotent, so concurrent logins of one person with
 * the same desired state share ONE operation) and waits for the outcome:
 *
 *   enqueue   {iid, app, attrs, entitlements} -> idem (derived key)
 *   wait      the op is listed in g->ob_waiters; the per-process follower
 *             of <prefix>outbox:events wakes it the moment any consumer
 *             (this worker, another worker, another gateway, the sidecar)
 *             finishes the operation; a poll of the per-operation status
 *             stream every second (every 100 ms while the follower is
 *             down) is the safety net; nothing blocks.
 *   done      -> op->after_provision (session, forward)
 *   failed    -> 502 page (the operation is in the dead-letter stream)
 *   budget    target.wait_ms passed: "on_slow": "block" -> a 503 "your
 *             account is being prepared" page that refreshes (Retry-After
 *             for APIs); "proceed" -> forward now, finish in the background.
 *
 * Every worker also runs an outbox consumer (outbox.consume, default on):
 * it applies each delivered operation with the same code a direct login
 * uses (pg_provision_apply: per-person lease, SCIM ensure, move-semantics
 * revocation, record) in a headless op, and reports done / retry (target
 * unavailable or slow, Redis down) / fail (anything permanent). A worker
 * killed mid-operation leaves the entry pending; another consumer reclaims
 * it after outbox.claim_idle_ms and applies it again, which is idempotent
 * (desired state + remembered account id + lease).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis.h>

#include "provgate/util.h"
#include "gate_int.h"

#define PG_OB_POLL_LIVE_MS   1000   /* safety poll while the feed is live */
#define PG_OB_POLL_DOWN_MS   100    /* poll while the feed is down */
#define PG_OB_ENQUEUE_MS     2000   /* Redis budget of the enqueue */
#define PG_OB_REFRESH_S      3      /* "being prepared" page refresh */

static void
pg_ob_hold(pg_gate_t *g, int delta)
{
    if (g->host->hold != NULL) {
        g->host->hold(g->host->ctx, delta);
    }
}

/* An operation being applied by this process's consumer (op != NULL; NULL
 * once it finished). */
typedef struct pg_ob_job {
    pg_gate_t              *g;
    pg_outbox_job_t        *job;
    pg_op_t                *op;             /* NULL once it finished */
    struct pg_ob_job       *next;
    uint64_t                rate_since;     /* first token request (ms) */
} pg_ob_job_t;

static void pg_ob_check(pg_op_t *op, pg_status_t st);

/* ---- waiting logins -------------------------------------------------- */

void
pg_ob_unlist(pg_op_t *op)
{
    pg_op_t **pp;

    if (!op->ob_listed) {
        return;
    }
    for (pp = &op->g->ob_waiters; *pp != NULL; pp = &(*pp)->ob_next) {
        if (*pp == op) {
            *pp = op->ob_next;
            break;
        }
    }
    op->ob_next = NULL;
    op->ob_listed = 0;
}

static void
pg_ob_list(pg_op_t *op)
{
    if (op->ob_listed) {
        return;
    }
    op->ob_next = op->g->ob_waiters;
    op->g->ob_waiters = op;
    op->ob_listed = 1;
}

static void
pg_ob_account_read(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();

    if (st == PG_OK && reply != NULL && reply->type == REDIS_REPLY_STRING
        && reply->len < 256) {
        free(op->scim.account_id);
        op->scim.account_id = strndup(reply->str, reply->len);
        op->have_scim = op->scim.account_id != NULL;
    }
    /* the account exists either way: the id only enriches the session */
    op->after_provision(op, PG_OK);
}

/* The operation reached its outcome (or the budget ran out). */
static void
pg_ob_outcome(pg_op_t *op)
{
    const pg_host_t *h = op->g->host;
    json_t *f;
    char field[160];

    pg_ob_unlist(op);
    f = json_pack("{s:s, s:s, s:I}", "target", op->app, "idem", op->ob_idem,
                  "waited_ms",
                  (json_int_t) (h->now_ms(h->ctx) - op->started_ms));
    if (op->ob_outcome == 1) {
        json_decref(f);
        if (op->have_scim) {
            /* applied by this process: the account id came with it */
            op->after_provision(op, PG_OK);
            return;
        }
        snprintf(field, sizeof(field), "acct:%s", op->app);
        {
            char *key = pg_key(op->g, "id:", op->iid);
            const char *argv[3];
            pg_status_t st;

            if (key == NULL) {
                op->after_provision(op, PG_OK);
                return;
            }
            argv[0] = "HGET"; argv[1] = key; argv[2] = field;
            st = pg_op_redis(op, pg_ob_account_read, 3, argv, NULL);
            free(key);
            if (st != PG_OK) {
                op->after_provision(op, PG_OK);
            }
        }
        return;
    }
    if (op->ob_outcome == 2) {
        if (f != NULL) {
            json_object_set_new(f, "error", json_string(op->ob_error));
        }
        pg_op_deny(op, 502, "provision.account", "provisioning_failed",
                   "Your account in this application could not be prepared. "
                   "The administrators have been told.", f);
        return;
    }
    /* still pending after the budget */
    if (f != NULL && op->ob_error[0] != '\0') {
        json_object_set_new(f, "last_error", json_string(op->ob_error));
    }
    if (op->target->proceed_when_slow) {
        pg_op_audit(op, "provision.deferred", "success", "proceed", f, NULL);
        op->after_provision(op, PG_OK);
        return;
    }
    {
        char id[PG_AUDIT_ID_LEN] = "";
        const char *back = op->flow == PG_FLOW_ACCESS ? op->uri
                                                       : op->return_to;

        pg_op_audit(op, "provision.pending", "deferred", "account_pending", f,
                    id);
        pg_op_finish(op, pg_page_retry(
            503, op->wants_html, "account_pending",
            "Your account in this application is being prepared. This page "
            "will retry in a few seconds.", id, back != NULL ? back : "/",
            PG_OB_REFRESH_S));
    }
}

/* Read the newest status of the operation (a non-blocking XREVRANGE). */
static void
pg_ob_status(pg_op_t *op, pg_status_t st)
{
    const redisReply *reply = pg_op_reply();
    const pg_host_t *h = op->g->host;
    uint64_t now, wait;
    size_t i;

    if (op->ob_outcome == 0 && st == PG_OK && reply != NULL
        && reply->type == REDIS_REPLY_ARRAY && reply->elements == 1) {
        const redisReply *ent = reply->element[0];

        if (ent->type == REDIS_REPLY_ARRAY && ent->elements == 2
            && ent->element[1]->type == REDIS_REPLY_ARRAY) {
            const redisReply *fv = ent->element[1];

            for (i = 0; i + 1 < fv->elements; i += 2) {
                const redisReply *k = fv->element[i], *v = fv->element[i + 1];

                if (k->type != REDIS_REPLY_STRING
                    || v->type != REDIS_REPLY_STRING) {
                    continue;
                }
                if (k->len == 6 && memcmp(k->str, "status", 6) == 0) {
                    if (v->len == 4 && memcmp(v->str, "done", 4) == 0) {
                        op->ob_outcome = 1;
                        op->ob_wake = "poll";
                    } else if (v->len == 6 && memcmp(v->str, "failed", 6) == 0) {
                        op->ob_outcome = 2;
                        op->ob_wake = "poll";
                    }
                } else if (k->len == 5 && memcmp(k->str, "error", 5) == 0) {
                    size_t n = v->len < sizeof(op->ob_error) - 1
                                   ? v->len : sizeof(op->ob_error) - 1;
                    memcpy(op->ob_error, v->str, n);
                    op->ob_error[n] = '\0';
                }
            }
        }
    }
    now = h->now_ms(h->ctx);
    if (op->ob_outcome != 0 || now >= op->ob_deadline) {
        pg_ob_outcome(op);
        return;
    }
    /* Redis errors are retried here until the budget is spent */
    wait = op->g->ob_events.live ? PG_OB_POLL_LIVE_MS : PG_OB_POLL_DOWN_MS;
    if (wait > op->ob_deadline - now) {
        wait = op->ob_deadline - now;
    }
    if (pg_op_sleep(op, pg_ob_check, wait) != PG_OK) {
        pg_op_finish(op, NULL);
    }
}

static void
pg_ob_check(pg_op_t *op, pg_status_t st)
{
    char *key, *name = NULL;
    const char *argv[6];

    (void) st;
    if (asprintf(&name, "outbox:status:%s", op->ob_idem) < 0) {
        pg_op_finish(op, NULL);
        return;
    }
    key = pg_key(op->g, name, NULL);
    free(name);
    if (key == NULL) {
        pg_op_finish(op, NULL);
        return;
    }
    argv[0] = "XREVRANGE"; argv[1] = key; argv[2] = "+"; argv[3] = "-";
    argv[4] = "COUNT"; argv[5] = "1";
    st = pg_op_redis(op, pg_ob_status, 6, argv, NULL);
    free(key);
    if (st != PG_OK) {
        pg_ob_status(op, st);
    }
}

/* The follower saw a terminal outcome: wake every login waiting for it. */
static void
pg_ob_event(void *arg, const char *const *names, const char *const *values,
            size_t n)
{
    pg_gate_t *g = arg;
    const char *idem = NULL, *status = NULL, *error = "";
    pg_op_t *op;
    size_t i;

    for (i = 0; i < n; i++) {
        if (strcmp(names[i], "idem") == 0) {
            idem = values[i];
        } else if (strcmp(names[i], "status") == 0) {
            status = values[i];
        } else if (strcmp(names[i], "error") == 0) {
            error = values[i];
        }
    }
    if (idem == NULL || status == NULL) {
        return;
    }
again:
    for (op = g->ob_waiters; op != NULL; op = op->ob_next) {
        if (op->ob_outcome != 0 || strcmp(op->ob_idem, idem) != 0) {
            continue;
        }
        op->ob_outcome = strcmp(status, "done") == 0 ? 1 : 2;
        op->ob_wake = "event";
        snprintf(op->ob_error, sizeof(op->ob_error), "%s", error);
        if (op->timer != NULL) {
            /* sleeping between polls: wake now (a status read in flight
             * sees ob_outcome when it returns). Finishing an op may change
             * the list: start over (woken ops are unlisted). */
            g->host->timer_close(op->timer);
            op->timer = NULL;
            op->next = NULL;
            pg_ob_outcome(op);
            goto again;
        }
    }
}

/*
 * This process's consumer applied operation idem (account account_id,
 * may be NULL): wake the logins of this process waiting for it at once,
 * without the round trip through <prefix>outbox:events, and hand them the
 * account id (no HGET). The finish script is on its way; should it fail,
 * the entry stays pending and is applied again (idempotent) later, which
 * does not change that the account exists now. Failures still arrive
 * through the follower (only the finish script dead-letters).
 */
static void
pg_ob_wake_local(pg_gate_t *g, const char *idem, const char *account_id)
{
    pg_op_t *op;

again:
    for (op = g->ob_waiters; op != NULL; op = op->ob_next) {
        if (op->ob_outcome != 0 || op->ob_idem == NULL
            || strcmp(op->ob_idem, idem) != 0) {
            continue;
        }
        op->ob_outcome = 1;
        op->ob_wake = "local";
        op->ob_error[0] = '\0';
        if (account_id != NULL && !op->have_scim) {
            free(op->scim.account_id);
            op->scim.account_id = strdup(account_id);
            op->have_scim = op->scim.account_id != NULL;
        }
        if (op->timer != NULL) {
            /* as in pg_ob_event: a status read in flight sees ob_outcome
             * when it returns; woken ops are unlisted, so start over */
            g->host->timer_close(op->timer);
            op->timer = NULL;
            op->next = NULL;
            pg_ob_outcome(op);
            goto again;
        }
    }
}

static void
pg_ob_feed_state(void *arg, int live)
{
    (void) arg;
    (void) live;   /* waiters poll faster while it is down */
}

static void
pg_ob_enqueued(void *arg, pg_status_t st, const pg_outbox_enqueued_t *res)
{
    pg_op_t *op = arg;
    const pg_host_t *h = op->g->host;
    json_t *f;

    op->obreq = NULL;
    if (st != PG_OK) {
        f = json_pack("{s:s, s:s}", "target", op->app, "detail",
                      pg_status_str(st));
        pg_op_deny(op, 503, "provision.account", "identity_store_unavailable",
                   "The provisioning service is unavailable. Please try "
                   "again shortly.", f);
        return;
    }
    f = json_pack("{s:s, s:s, s:s, s:b, s:b}", "target", op->app, "idem",
                  op->ob_idem, "entry", res->id, "new", res->created,
                  "own", res->own);
    if (f != NULL && op->g->ob_name[0] != '\0') {
        json_object_set_new(f, "consumer", json_string(op->g->ob_name));
    }
    pg_op_audit(op, "provision.queued", "success",
                res->created ? "enqueued" : "joined_pending", f, NULL);
    op->ob_deadline = h->now_ms(h->ctx) + op->target->wait_ms;
    pg_ob_list(op);
    pg_ob_check(op, PG_OK);
}

void
pg_ob_provision(pg_op_t *op)
{
    pg_gate_t *g = op->g;
    pg_outbox_op_t o;
    char idem[PG_OUTBOX_IDEM_MAX + 1];
    json_t *state;
    pg_status_t st;

    /* "via": "login" marks a just-in-time provisioning: the consumer
     * records jit_at:<app> (the expiry sweep's grant time) */
    state = json_pack("{s:s, s:s, s:O, s:o, s:s}", "iid", op->iid,
                      "app", op->app, "attrs", op->attrs, "entitlements",
                      op->decision.entitlements != NULL
                          ? json_incref(op->decision.entitlements)
                          : json_array(), "via", "login");
    if (state == NULL) {
        pg_op_finish(op, NULL);
        return;
    }
    memset(&o, 0, sizeof(o));
    o.identity = op->iid;
    o.target = op->app;
    o.kind = "ensure";
    o.state = state;
    o.dedup_ttl_s = g->cfg->outbox.dedup_ttl_s;
    o.release_when_done = 1;   /* a later login applies (and checks) again */
    /* this worker's consumer applies it itself when nothing else waits
     * (no hop to whichever worker's XREADGROUP would read it) */
    o.own = g->ob_consumer;
    st = pg_outbox_enqueue(g->redis, &o, PG_OB_ENQUEUE_MS, pg_ob_enqueued, op,
                           idem, &op->obreq);
    json_decref(state);
    if (st != PG_OK) {
        op->obreq = NULL;
        pg_op_deny(op, 503, "provision.account", "enqueue_failed",
                   "Provisioning could not start.", NULL);
        return;
    }
    op->ob_idem = strdup(idem);
    if (op->ob_idem == NULL) {
        pg_outbox_cancel(op->obreq);
        op->obreq = NULL;
        pg_op_finish(op, NULL);
    }
}

/* ---- the consumer ---------------------------------------------------- */

pg_connector_t *
pg_gate_connector(pg_gate_t *g, const pg_target_cfg_t *t)
{
    size_t i = (size_t) (t - g->cfg->targets);

    return g->conns != NULL && i < g->cfg->ntargets ? g->conns[i] : NULL;
}

static void
pg_ob_job_unlink(pg_ob_job_t *j)
{
    pg_ob_job_t **pp;

    for (pp = &j->g->ob_jobs; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == j) {
            *pp = j->next;
            break;
        }
    }
}

/* The headless op finished: ALLOW = applied; a page = failed. */
static void
pg_ob_job_finished(void *arg, pg_gate_result_t *res)
{
    pg_ob_job_t *j = arg;
    pg_outbox_result_t r = PG_OUTBOX_RESULT_DONE;
    char reason[128] = "";

    j->op = NULL;
    if (res == NULL || res->kind != PG_RES_ALLOW) {
        json_error_t jerr;
        json_t *body = res != NULL && res->body != NULL
                           ? json_loads(res->body, 0, &jerr) : NULL;
        const char *e = json_string_value(json_object_get(body, "error"));

        snprintf(reason, sizeof(reason), "%s", e != NULL ? e : "failed");
        json_decref(body);
        /* unavailable, slow or busy: worth another attempt */
        r = res != NULL && res->status != 503 && res->status != 504
                ? PG_OUTBOX_RESULT_FAIL : PG_OUTBOX_RESULT_RETRY;
    }
    pg_gate_result_free(res);
    pg_ob_job_unlink(j);
    pg_outbox_job_done(j->job, r, reason[0] != '\0' ? reason : NULL);
    pg_ob_hold(j->g, -1);
    free(j);
}

static void
pg_ob_job_applied(pg_op_t *op, pg_status_t st)
{
    (void) st;
    if (op->request_id != NULL && op->deprovision == 0) {
        pg_ob_wake_local(op->g, op->request_id,
                         op->have_scim ? op->scim.account_id : NULL);
    }
    pg_op_finish(op, pg_result_new(PG_RES_ALLOW, 200));
}

/* ---- per-target rate limit ------------------------------------------ */

#define PG_OB_RATE_WAIT_MAX_MS 5000 /* longest single wait for a token */

static void pg_ob_rate_take(pg_op_t *op, pg_status_t st);

/*
 * The bucket answered. Allowed: apply the operation. Not allowed: sleep
 * wait_ms (at least 1, at most PG_OB_RATE_WAIT_MAX_MS) on the op's timer
 * and ask again; the outbox entry stays pending and its attempt count is
 * unchanged. The job (and with it the consumer's batch) is held while it
 * waits, at most outbox.claim_idle_ms / 2 in all, so that no other
 * consumer reclaims the entry meanwhile; past that, and on a Redis error,
 * the op finishes with a 503 and the outbox retries it with its backoff
 * (that counts as an attempt).
 */
static void
pg_ob_rate_taken(void *arg, pg_status_t st, const pg_outbox_rate_t *res)
{
    pg_op_t *op = arg;
    pg_ob_job_t *j = op->arg;
    const pg_host_t *h = op->g->host;
    uint64_t now, wait, held_max;

    op->obreq = NULL;
    if (st != PG_OK || res == NULL) {
        pg_op_deny(op, 503, "provision.account", "rate_limiter_unavailable",
                   "The rate limiter of the target could not be read.",
                   json_pack("{s:s, s:s}", "target", op->app, "detail",
                             pg_status_str(st)));
        return;
    }
    if (res->allowed) {
        pg_provision_apply(op);
        return;
    }
    now = h->now_ms(h->ctx);
    held_max = op->g->cfg->outbox.claim_idle_ms / 2;
    wait = res->wait_ms < 1 ? 1 : res->wait_ms;
    if (wait > PG_OB_RATE_WAIT_MAX_MS) {
        wait = PG_OB_RATE_WAIT_MAX_MS;
    }
    if (now + wait - j->rate_since > held_max) {
        pg_op_deny(op, 503, "provision.account", "rate_limited",
                   "The target's rate limit is exhausted.",
                   json_pack("{s:s, s:I}", "target", op->app, "wait_ms",
                             (json_int_t) res->wait_ms));
        return;
    }
    if (pg_op_sleep(op, pg_ob_rate_take, wait) != PG_OK) {
        pg_op_finish(op, NULL);
    }
}

/* Take one token of the target's bucket (shared by every process). */
static void
pg_ob_rate_take(pg_op_t *op, pg_status_t st)
{
    const pg_target_cfg_t *t = op->target;

    (void) st;
    st = pg_outbox_rate_take(op->g->redis, t->name, t->rate_capacity,
                             t->rate_per_s, 1, pg_ob_rate_taken, op,
                             &op->obreq);
    if (st != PG_OK) {
        op->obreq = NULL;
        pg_op_deny(op, 503, "provision.account", "rate_limiter_unavailable",
                   "The rate limiter of the target could not be asked.",
                   NULL);
    }
}

/*
 * While the process quits, its consumer keeps fetching only for logins of
 * this process that still wait for an operation (with several workers it
 * may be theirs; after a reload the new workers take the rest). Non-zero
 * while any waits.
 */
static int
pg_ob_needed(void *arg)
{
    const pg_gate_t *g = arg;

    return g->ob_waiters != NULL;
}

/* One delivered operation: rebuild the decision and apply it. */
static void
pg_ob_handle(void *arg, pg_outbox_job_t *job, const pg_outbox_entry_t *e)
{
    pg_gate_t *g = arg;
    pg_gate_req_t req;
    pg_ob_job_t *j;
    json_error_t jerr;
    json_t *state;
    const char *iid, *app;
    json_t *attrs, *ents;

    /* Applied even while the process is exiting: the consumer then fetches
     * only for logins of this process still waiting (pg_ob_needed), but an
     * entry already delivered is this process's to finish (hold() keeps it
     * alive); set aside, it would wait for the lease to lapse while
     * someone's login waits for it. */
    state = json_loads(e->state, 0, &jerr);
    iid = json_string_value(json_object_get(state, "iid"));
    app = json_string_value(json_object_get(state, "app"));
    attrs = json_object_get(state, "attrs");
    ents = json_object_get(state, "entitlements");
    if (iid == NULL || app == NULL || !json_is_object(attrs)
        || !json_is_array(ents)) {
        json_decref(state);
        pg_outbox_job_done(job, PG_OUTBOX_RESULT_FAIL, "malformed state");
        return;
    }
    if (pg_config_target(g->cfg, app) == NULL) {
        json_decref(state);
        pg_outbox_job_done(job, PG_OUTBOX_RESULT_FAIL, "unknown target");
        return;
    }
    j = calloc(1, sizeof(*j));
    if (j == NULL) {
        json_decref(state);
        pg_outbox_job_done(job, PG_OUTBOX_RESULT_RETRY, "out of memory");
        return;
    }
    j->g = g;
    j->job = job;
    memset(&req, 0, sizeof(req));
    req.app = app;
    req.method = "OUTBOX";
    req.request_id = e->idem;
    j->op = pg_op_new(g, PG_FLOW_OUTBOX, &req, pg_ob_job_finished, j, NULL);
    if (j->op == NULL || (j->op->iid = strdup(iid)) == NULL) {
        pg_op_free(j->op);
        free(j);
        json_decref(state);
        pg_outbox_job_done(job, PG_OUTBOX_RESULT_RETRY, "out of memory");
        return;
    }
    j->op->attrs = json_incref(attrs);
    {
        const char *via = json_string_value(json_object_get(state, "via"));

        j->op->from_login = via != NULL && strcmp(via, "login") == 0;
    }
    if (strcmp(e->kind, "disable") == 0 || strcmp(e->kind, "delete") == 0) {
        /* a leave: nothing is granted any more */
        j->op->deprovision = e->kind[1] == 'i' ? 1 : 2;
        j->op->decision.entitlements = json_array();
    } else {
        j->op->decision.entitlements = json_incref(ents);
    }
    j->op->decision.has_account = 1;
    j->op->ob_own = e->own;
    j->op->after_provision = pg_ob_job_applied;
    json_decref(state);
    j->next = g->ob_jobs;
    g->ob_jobs = j;
    pg_ob_hold(g, +1);
    if (e->reclaimed || e->attempt > 0) {
        pg_log(g->host, PG_LOG_INFO, "outbox: applying %s again (attempt %u%s)",
               e->idem, e->attempt + 1, e->reclaimed ? ", reclaimed" : "");
    }
    if (j->op->target != NULL && j->op->target->rate_capacity > 0) {
        j->rate_since = g->host->now_ms(g->host->ctx);
        pg_ob_rate_take(j->op, PG_OK);
        return;
    }
    pg_provision_apply(j->op);
}

/*
 * Start the consumer and the outcome follower when any target delivers
 * through the outbox. The consumer name is "<instance>:<pid>", unique per
 * worker process.
 */
pg_status_t
pg_ob_init(pg_gate_t *g, pg_err_t *err)
{
    const pg_config_t *cfg = g->cfg;
    pg_outbox_config_t oc;
    char name[320];
    size_t i;
    int used = 0;
    pg_status_t st;

    for (i = 0; i < cfg->ntargets; i++) {
        used |= cfg->targets[i].via_outbox;
    }
    if (!used) {
        return PG_OK;
    }
    g->conns = calloc(cfg->ntargets, sizeof(pg_connector_t *));
    if (g->conns == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < cfg->ntargets; i++) {
        const pg_target_cfg_t *t = &cfg->targets[i];

        if (t->type != PG_TARGET_CONNECTOR) {
            continue;
        }
        st = pg_connector_create(g->host, g->http, g->redis,
                                 cfg->redis.key_prefix, t->name,
                                 t->type_name, t->connector, &g->conns[i],
                                 err);
        if (st != PG_OK) {
            return st;
        }
    }
    st = pg_follow_start(&g->ob_events, g, "outbox:events", pg_ob_event,
                         pg_ob_feed_state, g);
    if (st != PG_OK) {
        pg_err_set(err, "outbox events: %s", pg_status_str(st));
        return st;
    }
    g->ob_following = 1;
    if (!cfg->outbox.consume) {
        return PG_OK;
    }
    snprintf(name, sizeof(name), "%s:%ld", cfg->instance, (long) getpid());
    snprintf(g->ob_name, sizeof(g->ob_name), "%s", name);
    memset(&oc, 0, sizeof(oc));
    oc.consumer = name;
    oc.batch = cfg->outbox.batch;
    oc.claim_idle_ms = cfg->outbox.claim_idle_ms;
    oc.max_attempts = cfg->outbox.max_attempts;
    oc.backoff_base_ms = cfg->outbox.backoff_base_ms;
    oc.backoff_max_ms = cfg->outbox.backoff_max_ms;
    oc.status_ttl_s = cfg->outbox.status_ttl_s;
    oc.block_ms = 1000;
    oc.needed = pg_ob_needed;
    st = pg_redis_new(g->host, &cfg->redis, &g->ob_redis);
    if (st == PG_OK) {
        st = pg_outbox_consumer_new(g->host, g->ob_redis, &oc, pg_ob_handle,
                                    g, &g->ob_consumer);
    }
    if (st != PG_OK) {
        pg_err_set(err, "outbox consumer: %s", pg_status_str(st));
    }
    return st;
}

void
pg_ob_free(pg_gate_t *g)
{
    pg_ob_job_t *j;

    /* first the consumer: the jobs' pg_outbox_job_done then only frees
     * (their entries stay pending and are reclaimed by another consumer) */
    pg_outbox_consumer_free(g->ob_consumer);
    g->ob_consumer = NULL;
    g->ob_name[0] = '\0';
    while ((j = g->ob_jobs) != NULL) {
        g->ob_jobs = j->next;
        if (j->op != NULL) {
            pg_op_free(j->op);
            pg_ob_hold(g, -1);
        }
        pg_outbox_job_done(j->job, PG_OUTBOX_RESULT_RETRY, "shutdown");
        free(j);
    }
    pg_redis_free(g->ob_redis);
    g->ob_redis = NULL;
    for (size_t i = 0; g->conns != NULL && i < g->cfg->ntargets; i++) {
        pg_connector_free(g->conns[i]);
    }
    free(g->conns);
    g->conns = NULL;
    if (g->ob_following) {
        pg_follow_stop(&g->ob_events);
        g->ob_following = 0;
    }
}
