/*
 * provgate core: the expiry job (include/provgate/expiry.h).
 *
 * pg_expiry_decide() is pure (unit-tested on its own). The runner is one
 * asynchronous state machine: at most one Redis command or outbox enqueue
 * is in flight at any time, so cancelling is one handle each.
 *
 *   config   CONFIG GET/SET notify-keyspace-events (once, at start)
 *   scan     SCAN <cursor> MATCH <p>id:* COUNT 200
 *   identity EVAL (see pg_expiry_lua): live sessions, last_session_end,
 *            the identity hash
 *   actions  per decided action: enqueue, audit, mark (HSET)
 *   end      report, arm the timer for the earliest due time (capped at
 *            expiry.sweep_s)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis.h>

#include "provgate/expiry.h"
#include "provgate/outbox.h"
#include "provgate/util.h"

#define PG_EXPIRY_SCAN_COUNT   "200"
#define PG_EXPIRY_KEY_MAX      1024      /* identity key / event key cap */
#define PG_EXPIRY_ENTS_MAX     (256 * 1024) /* ents:<app> JSON cap */
#define PG_EXPIRY_NOTIFY_MS    200       /* sweep delay after a session end */
#define PG_EXPIRY_MIN_DELAY_MS 1000      /* earliest re-sweep after a sweep */
#define PG_EXPIRY_TIMEOUT_MS   5000      /* per Redis command */
#define PG_EXPIRY_RETRY_MS     2000      /* next run after a Redis failure */
#define PG_EXPIRY_ONCE_TTL_S   (7u * 86400u) /* fixed idempotency keys */

/*
 * One identity, atomically: drop ended sessions from the index, count the
 * live ones, keep last_session_end (removed while a session is live; set
 * to now when none is and the recorded one is older than the newest
 * jit_at:* or missing) and return {live, HGETALL}. {-1, {}} when the key
 * is not an identity hash.
 * Ended sessions also leave the owner index <p>sessowner.
 * KEYS: <p>id:<iid>, <p>idsess:<iid>, <p>sessowner; ARGV: prefix, now.
 */
static const char pg_expiry_lua[] =
    "local k, s, p, now = KEYS[1], KEYS[2], ARGV[1], ARGV[2] "
    "if redis.call('TYPE', k).ok ~= 'hash' then return {-1, {}} end "
    "local live = 0 "
    "for _, sid in ipairs(redis.call('SMEMBERS', s)) do "
    "  if redis.call('EXISTS', p .. 'sess:' .. sid) == 1 then "
    "    live = live + 1 "
    "  else redis.call('SREM', s, sid) redis.call('HDEL', KEYS[3], sid) end "
    "end "
    "local h = redis.call('HGETALL', k) "
    "if live > 0 then "
    "  if redis.call('HDEL', k, 'last_session_end') > 0 then "
    "    h = redis.call('HGETALL', k) end "
    "else "
    "  local last, newest = nil, -1 "
    "  for i = 1, #h, 2 do "
    "    if h[i] == 'last_session_end' then last = tonumber(h[i + 1]) end "
    "    if string.sub(h[i], 1, 7) == 'jit_at:' then "
    "      local v = tonumber(h[i + 1]) "
    "      if v ~= nil and v > newest then newest = v end "
    "    end "
    "  end "
    "  if newest >= 0 and (last == nil or last < newest) then "
    "    redis.call('HSET', k, 'last_session_end', now) "
    "    h = redis.call('HGETALL', k) "
    "  end "
    "end "
    "return {live, h}";

/*
 * The identities of ended sessions (from notifications): HGET and HDEL
 * each sid in <p>sessowner (written by the gateway at login). Returns
 * {number of sids without an owner, {iid, ...}}.
 * KEYS: <p>sessowner; ARGV: sids.
 */
static const char pg_expiry_owners_lua[] =
    "local out, missing = {}, 0 "
    "for _, sid in ipairs(ARGV) do "
    "  local iid = redis.call('HGET', KEYS[1], sid) "
    "  if iid then "
    "    redis.call('HDEL', KEYS[1], sid) "
    "    table.insert(out, iid) "
    "  else missing = missing + 1 end "
    "end "
    "return {missing, out}";

#define PG_EXPIRY_PENDING_MAX  4096      /* sids waiting for a targeted check */
#define PG_EXPIRY_DUE_MAX      100000    /* identities remembered as due */

/* ---- the decision ------------------------------------------------------ */

static void
pg_expiry_due(int64_t *next_due, int64_t t)
{
    if (*next_due == 0 || t < *next_due) {
        *next_due = t;
    }
}

/* The jit lifetime of an entitlement item, or 0; divided by the test-only
 * expiry.test_time_divisor (never below 1 s). */
static int64_t
pg_expiry_lifetime(const pg_config_t *cfg, const json_t *item)
{
    json_int_t v = json_integer_value(json_object_get(item, "jit_lifetime_s"));
    int64_t d = cfg->expiry_test_divisor > 1
                    ? (int64_t) cfg->expiry_test_divisor : 1;

    if (v <= 0) {
        return 0;
    }
    return (int64_t) v / d > 0 ? (int64_t) v / d : 1;
}

/* Append {"target", "event", "kind", "entitlements", "removed", "mark"}
 * (keep and removed are stolen). */
static pg_status_t
pg_expiry_add(json_t *actions, const char *target, const char *event,
              const char *kind, json_t *keep, json_t *removed, json_t *mark)
{
    json_t *a = json_pack("{s:s, s:s, s:s, s:o, s:o, s:o}", "target", target,
                          "event", event, "kind", kind, "entitlements",
                          keep != NULL ? keep : json_array(), "removed",
                          removed != NULL ? removed : json_array(), "mark",
                          mark != NULL ? mark : json_object());

    if (a == NULL || json_array_append_new(actions, a) != 0) {
        return PG_ERR_NOMEM;
    }
    return PG_OK;
}

/* The decision for one target with an account (see expiry.h). */
static pg_status_t
pg_expiry_target(const pg_config_t *cfg, const pg_target_cfg_t *t,
                 const json_t *fields, long live, int64_t now,
                 json_t *actions, int64_t *next_due)
{
    char name[320];
    const char *raw;
    json_t *ents = NULL, *keep, *removed, *it, *mark;
    json_error_t jerr;
    int64_t jit_at, used, deprov_at, end, base, due;
    size_t i;
    pg_status_t st = PG_OK;

    snprintf(name, sizeof(name), "ents:%s", t->name);
    raw = json_string_value(json_object_get(fields, name));
    if (raw != NULL && strlen(raw) <= PG_EXPIRY_ENTS_MAX) {
        ents = json_loads(raw, 0, &jerr);
    }
    if (!json_is_array(ents)) {
        json_decref(ents);
        ents = json_array();
        if (ents == NULL) {
            return PG_ERR_NOMEM;
        }
    }
    jit_at = pg_field_int(fields, "jit_at", t->name);
    used = pg_field_int(fields, "used", t->name);
    deprov_at = pg_field_int(fields, "deprov_at", t->name);
    end = pg_field_int(fields, "last_session_end", NULL);
    base = jit_at > used ? jit_at : used;

    /* 1. the last session ended: only accounts a login provisioned */
    if (t->deprov_action != PG_DEPROV_NONE && live == 0 && jit_at >= 0
        && end >= 0 && deprov_at < end) {
        due = end + (int64_t) t->deprov_grace_s;
        if (now < due) {
            pg_expiry_due(next_due, due);
        } else {
            keep = json_array();
            removed = json_array();
            mark = json_object();
            snprintf(name, sizeof(name), "deprov_at:%s", t->name);
            json_object_set_new(mark, name, json_sprintf("%lld",
                                                         (long long) now));
            json_array_foreach(ents, i, it) {
                if (t->deprov_action == PG_DEPROV_DISABLE
                    || pg_expiry_lifetime(cfg, it) > 0) {
                    json_array_append(removed, it);
                } else {
                    json_array_append(keep, it);
                }
            }
            st = pg_expiry_add(actions, t->name, "deprovision.session_end",
                               t->deprov_action == PG_DEPROV_DISABLE
                                   ? "disable"
                                   : (json_array_size(removed) > 0
                                          ? "ensure" : "none"),
                               keep, removed, mark);
            json_decref(ents);
            return st;
        }
    }
    if (json_array_size(ents) == 0) {
        json_decref(ents);
        return PG_OK;
    }
    /* 2. not used for inactivity_s: revoke everything in the app */
    if (t->inactivity_s > 0) {
        if (base < 0) {
            /* never seen in use: the clock starts now */
            mark = json_object();
            snprintf(name, sizeof(name), "used:%s", t->name);
            json_object_set_new(mark, name, json_sprintf("%lld",
                                                         (long long) now));
            pg_expiry_due(next_due, now + (int64_t) t->inactivity_s);
            st = pg_expiry_add(actions, t->name, "expiry.baseline", "none",
                               NULL, NULL, mark);
            json_decref(ents);
            return st;
        }
        due = base + (int64_t) t->inactivity_s;
        if (now >= due) {
            st = pg_expiry_add(actions, t->name, "deprovision.inactive",
                               "ensure", json_array(), json_incref(ents),
                               NULL);
            json_decref(ents);
            return st;
        }
        pg_expiry_due(next_due, due);
    }
    /* 3. jit grants past their lifetime (counted from grant or last use) */
    if (base >= 0) {
        keep = json_array();
        removed = json_array();
        json_array_foreach(ents, i, it) {
            int64_t life = pg_expiry_lifetime(cfg, it);

            if (life > 0 && now >= base + life) {
                json_array_append(removed, it);
            } else {
                if (life > 0) {
                    pg_expiry_due(next_due, base + life);
                }
                json_array_append(keep, it);
            }
        }
        if (json_array_size(removed) > 0) {
            st = pg_expiry_add(actions, t->name, "deprovision.grant_expired",
                               "ensure", keep, removed, NULL);
        } else {
            json_decref(keep);
            json_decref(removed);
        }
    }
    json_decref(ents);
    return st;
}

/*
 * Leave retention of one target with an account (t->delete_after_s > 0)
 * for a leaver (left = the "left" field, unix s): once left + delete_after_s
 * has passed and no deletion was queued for this leave yet (the mark
 * retained:<target> < left), one "delete" action that carries "left" (the
 * runner derives a fixed idempotency key from iid, target and left, so
 * that two sidecars, or a crash between the enqueue and the mark, never
 * queue it twice). Otherwise only *next_due. A rehire removes "left"
 * (jml.c): no action then.
 */
static pg_status_t
pg_expiry_retention(const pg_target_cfg_t *t, const json_t *fields,
                    int64_t left, int64_t now, json_t *actions,
                    int64_t *next_due)
{
    int64_t due = left + (int64_t) t->delete_after_s, done;
    char name[320];
    json_t *mark, *a;

    done = pg_field_int(fields, "retained", t->name);
    if (done >= left) {
        return PG_OK;   /* this leave's deletion is queued already */
    }
    if (now < due) {
        pg_expiry_due(next_due, due);
        return PG_OK;
    }
    mark = json_object();
    snprintf(name, sizeof(name), "retained:%s", t->name);
    if (mark == NULL
        || json_object_set_new(mark, name,
                               json_sprintf("%lld", (long long) left)) != 0
        || pg_expiry_add(actions, t->name, "jml.retention", "delete", NULL,
                         NULL, mark) != PG_OK) {
        json_decref(mark);
        return PG_ERR_NOMEM;
    }
    a = json_array_get(actions, json_array_size(actions) - 1);
    if (json_object_set_new(a, "left", json_integer((json_int_t) left)) != 0
        || json_object_set_new(a, "delete_after_s",
                               json_integer((json_int_t) t->delete_after_s))
           != 0) {
        return PG_ERR_NOMEM;
    }
    return PG_OK;
}

pg_status_t
pg_expiry_decide(const pg_config_t *cfg, const json_t *fields, long live,
                 int64_t now, json_t **actions, int64_t *next_due)
{
    json_t *out;
    int64_t due = 0, left;
    size_t i;
    char name[320];
    pg_status_t st = PG_OK;

    if (actions == NULL) {
        return PG_ERR_INVALID;
    }
    *actions = NULL;
    if (next_due != NULL) {
        *next_due = 0;
    }
    if (cfg == NULL || !json_is_object(fields)) {
        return PG_ERR_INVALID;
    }
    out = json_array();
    if (out == NULL) {
        return PG_ERR_NOMEM;
    }
    left = pg_field_int(fields, "left", NULL);
    for (i = 0; st == PG_OK && i < cfg->ntargets; i++) {
        const pg_target_cfg_t *t = &cfg->targets[i];

        snprintf(name, sizeof(name), "acct:%s", t->name);
        if (!json_is_string(json_object_get(fields, name))) {
            continue;   /* no account there */
        }
        if (t->delete_after_s > 0 && left >= 0) {
            /* a leaver: the account was disabled at the leave; only the
             * deletion after the retention is left to do */
            st = pg_expiry_retention(t, fields, left, now, out, &due);
            continue;
        }
        st = pg_expiry_target(cfg, t, fields, live, now, out, &due);
    }
    if (st != PG_OK) {
        json_decref(out);
        return st;
    }
    *actions = out;
    if (next_due != NULL) {
        *next_due = due;
    }
    return PG_OK;
}

/* ---- the runner ---------------------------------------------------------- */

struct pg_expiry {
    const pg_config_t  *cfg;
    const pg_host_t    *host;
    pg_redis_t         *redis;
    pg_audit_t         *audit;
    pg_expiry_cb        cb;
    void               *arg;
    pg_timer_t         *timer;
    pg_redis_op_t      *rop;            /* the command in flight */
    pg_outbox_req_t    *oreq;           /* or the enqueue in flight */
    int                 started;
    int                 running;        /* a sweep is under way */
    int                 again;          /* sweep again right after it */
    char                cursor[32];
    char               *pattern;        /* <p>id:* (glob-escaped prefix) */
    json_t             *keys;           /* this SCAN batch */
    size_t              ki;
    char               *key;            /* the identity being handled */
    const char         *iid;            /* points into key */
    json_t             *fields;
    json_t             *actions;
    size_t              ai;
    unsigned            n_ids, n_ops, n_errors;
    int                 full;           /* the running sweep is a full one */
    int                 want_full;      /* next run: a full sweep */
    uint64_t            next_full_ms;   /* host clock of the next full sweep */
    json_t             *pending;        /* sids of ended sessions to check */
    json_t             *due;            /* iid -> unix s when it falls due */
    char               *owners;         /* <p>sessowner */
};

static void pg_expiry_scan(pg_expiry_t *x);
static int pg_expiry_session_rules(const pg_config_t *cfg);
static void pg_expiry_next_identity(pg_expiry_t *x);
static void pg_expiry_next_action(pg_expiry_t *x);

static void
pg_expiry_arm(pg_expiry_t *x, uint64_t ms)
{
    if (x->timer != NULL) {
        x->host->timer_arm(x->timer, ms);
    }
}

static void
pg_expiry_clear_identity(pg_expiry_t *x)
{
    free(x->key);
    x->key = NULL;
    x->iid = NULL;
    json_decref(x->fields);
    x->fields = NULL;
    json_decref(x->actions);
    x->actions = NULL;
    x->ai = 0;
}

/* When the timer should fire next (ms from now). */
static uint64_t
pg_expiry_delay(pg_expiry_t *x)
{
    uint64_t now_ms = x->host->now_ms(x->host->ctx), delay;
    int64_t now = (int64_t) time(NULL), first = 0;
    const char *k;
    json_t *v;

    if (x->want_full || x->again || json_array_size(x->pending) > 0) {
        return PG_EXPIRY_NOTIFY_MS;
    }
    delay = x->next_full_ms > now_ms ? x->next_full_ms - now_ms : 0;
    json_object_foreach(x->due, k, v) {
        int64_t d = (int64_t) json_integer_value(v);

        if (first == 0 || d < first) {
            first = d;
        }
    }
    if (first > 0) {
        uint64_t d = first > now ? (uint64_t) (first - now) * 1000u : 0;

        if (d < PG_EXPIRY_MIN_DELAY_MS) {
            d = PG_EXPIRY_MIN_DELAY_MS;
        }
        if (d < delay) {
            delay = d;
        }
    }
    return delay;
}

/* The run ended (st PG_OK, or the error that cut it short). */
static void
pg_expiry_end(pg_expiry_t *x, pg_status_t st)
{
    json_t *summary;

    pg_expiry_clear_identity(x);
    json_decref(x->keys);
    x->keys = NULL;
    x->running = 0;
    x->again = 0;
    if (st != PG_OK) {
        pg_log(x->host, PG_LOG_WARN, "expiry: sweep cut short: %s",
               pg_status_str(st));
        if (x->full) {
            x->want_full = 1;   /* try again soon, not in sweep_s */
        }
    }
    {
        uint64_t delay = pg_expiry_delay(x);

        /* Redis trouble: do not hammer it (or the log) */
        if (st != PG_OK && delay < PG_EXPIRY_RETRY_MS) {
            delay = PG_EXPIRY_RETRY_MS;
        }
        pg_expiry_arm(x, delay);
    }
    if (x->cb != NULL) {
        summary = json_pack("{s:s, s:i, s:i, s:i}", "mode",
                            x->full ? "full" : "targeted", "identities",
                            (int) x->n_ids, "operations", (int) x->n_ops,
                            "errors", (int) x->n_errors);
        x->cb(x->arg, st, summary);
        json_decref(summary);
    }
}

/* Marks were written (or failed: the next sweep decides again). */
static void
pg_expiry_marked(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_expiry_t *x = arg;

    x->rop = NULL;
    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        x->n_errors++;
    }
    x->ai++;
    pg_expiry_next_action(x);
}

/* HSET the action's "mark" fields on the identity, then the next one. */
static void
pg_expiry_mark(pg_expiry_t *x, const json_t *mark)
{
    const char *argv[2 + 2 * 8];
    const char *k;
    json_t *v;
    int argc = 2;

    argv[0] = "HSET";
    argv[1] = x->key;
    json_object_foreach((json_t *) mark, k, v) {
        if (argc + 2 > (int) (sizeof(argv) / sizeof(argv[0]))
            || !json_is_string(v)) {
            continue;
        }
        argv[argc++] = k;
        argv[argc++] = json_string_value(v);
    }
    if (argc == 2 || pg_redis_command(x->redis, argc, argv, NULL,
                                      PG_EXPIRY_TIMEOUT_MS, pg_expiry_marked,
                                      x, &x->rop) != PG_OK) {
        x->rop = NULL;
        x->ai++;
        pg_expiry_next_action(x);
    }
}

static void
pg_expiry_enqueued(void *arg, pg_status_t st, const pg_outbox_enqueued_t *res)
{
    pg_expiry_t *x = arg;
    json_t *a = json_array_get(x->actions, x->ai), *f;
    const char *event = json_string_value(json_object_get(a, "event"));

    x->oreq = NULL;
    f = json_pack("{s:s, s:s, s:s, s:O, s:O}", "identity", x->iid, "target",
                  json_string_value(json_object_get(a, "target")),
                  "operation", json_string_value(json_object_get(a, "kind")),
                  "removed", json_object_get(a, "removed"), "entitlements",
                  json_object_get(a, "entitlements"));
    if (st != PG_OK) {
        x->n_errors++;
        if (f != NULL) {
            json_object_set_new(f, "error", json_string(pg_status_str(st)));
        }
        pg_audit_emit(x->audit, event, "failure", "enqueue_failed", f, NULL);
        x->ai++;
        pg_expiry_next_action(x);
        return;
    }
    if (f != NULL) {
        json_object_set_new(f, "idem", json_string(res->idem));
        json_object_set_new(f, "entry", json_string(res->id));
        if (json_object_get(a, "left") != NULL) {
            json_object_set(f, "left", json_object_get(a, "left"));
            json_object_set(f, "delete_after_s",
                            json_object_get(a, "delete_after_s"));
        }
    }
    x->n_ops++;
    pg_audit_emit(x->audit, event, "success",
                  res->created ? "enqueued" : "joined_pending", f, NULL);
    pg_expiry_mark(x, json_object_get(a, "mark"));
}

/* Queue the operation of action x->ai (or only mark, kind "none"). */
static void
pg_expiry_next_action(pg_expiry_t *x)
{
    json_t *a = json_array_get(x->actions, x->ai), *attrs = NULL, *state;
    const char *kind, *target, *raw;
    char idem[PG_OUTBOX_IDEM_MAX + 1];
    json_error_t jerr;
    pg_outbox_op_t o;
    pg_status_t st;

    if (a == NULL) {
        pg_expiry_clear_identity(x);
        x->ki++;
        pg_expiry_next_identity(x);
        return;
    }
    kind = json_string_value(json_object_get(a, "kind"));
    target = json_string_value(json_object_get(a, "target"));
    if (strcmp(kind, "none") == 0) {
        pg_expiry_mark(x, json_object_get(a, "mark"));
        return;
    }
    raw = json_string_value(json_object_get(x->fields, "attrs"));
    if (raw != NULL && strlen(raw) <= PG_OUTBOX_STATE_MAX) {
        attrs = json_loads(raw, 0, &jerr);
    }
    if (!json_is_object(attrs)) {
        /* the account cannot be rendered without attributes */
        json_decref(attrs);
        x->n_errors++;
        pg_audit_emit(x->audit,
                      json_string_value(json_object_get(a, "event")),
                      "failure", "identity_without_attrs",
                      json_pack("{s:s, s:s}", "identity", x->iid, "target",
                                target), NULL);
        x->ai++;
        pg_expiry_next_action(x);
        return;
    }
    state = json_pack("{s:s, s:s, s:o, s:O}", "iid", x->iid, "app", target,
                      "attrs", attrs, "entitlements",
                      json_object_get(a, "entitlements"));
    memset(&o, 0, sizeof(o));
    o.identity = x->iid;
    o.target = target;
    o.kind = kind;
    o.state = state;
    o.dedup_ttl_s = x->cfg->outbox.dedup_ttl_s;
    o.release_when_done = 1;
    if (json_is_integer(json_object_get(a, "left"))) {
        /* leave retention, once per leave: a fixed key that stays after
         * the operation is done, so no sidecar ever queues it again */
        char seed[600], h[64];
        int n = snprintf(seed, sizeof(seed), "%s\n%s\n%lld", x->iid, target,
                         (long long) json_integer_value(
                             json_object_get(a, "left")));

        if (n < 0 || (size_t) n >= sizeof(seed)
            || pg_sha256_b64url(seed, (size_t) n, h, sizeof(h)) != PG_OK
            || (size_t) snprintf(idem, sizeof(idem), "retain:%s", h)
               >= sizeof(idem)) {
            json_decref(state);
            state = NULL;
        }
        o.idem = idem;
        o.release_when_done = 0;
        o.dedup_ttl_s = PG_EXPIRY_ONCE_TTL_S;
    }
    st = state != NULL ? pg_outbox_enqueue(x->redis, &o, PG_EXPIRY_TIMEOUT_MS,
                                           pg_expiry_enqueued, x, NULL,
                                           &x->oreq)
                       : PG_ERR_NOMEM;
    json_decref(state);
    if (st != PG_OK) {
        x->oreq = NULL;
        x->n_errors++;
        x->ai++;
        pg_expiry_next_action(x);
    }
}

static void
pg_expiry_identity_read(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_expiry_t *x = arg;
    const redisReply *h;
    long long live;
    size_t i;

    x->rop = NULL;
    if (st != PG_OK || reply == NULL) {
        pg_expiry_end(x, st != PG_OK ? st : PG_ERR_REDIS);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2
        || reply->element[0]->type != REDIS_REPLY_INTEGER
        || reply->element[1]->type != REDIS_REPLY_ARRAY) {
        x->n_errors++;
        goto next;
    }
    live = reply->element[0]->integer;
    if (live < 0) {
        goto next;   /* not an identity hash */
    }
    h = reply->element[1];
    x->fields = json_object();
    if (x->fields == NULL) {
        pg_expiry_end(x, PG_ERR_NOMEM);
        return;
    }
    for (i = 0; i + 1 < h->elements; i += 2) {
        const redisReply *k = h->element[i], *v = h->element[i + 1];
        char name[320];

        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING
            || k->len >= sizeof(name) || memchr(k->str, '\0', k->len)) {
            continue;
        }
        memcpy(name, k->str, k->len);
        name[k->len] = '\0';
        json_object_set_new(x->fields, name,
                            json_stringn_nocheck(v->str, v->len));
    }
    x->n_ids++;
    {
        int64_t due = 0;

        if (pg_expiry_decide(x->cfg, x->fields, (long) live,
                             (int64_t) time(NULL), &x->actions, &due)
            != PG_OK) {
            x->n_errors++;
            goto next;
        }
        if (due > 0 && (json_object_size(x->due) < PG_EXPIRY_DUE_MAX
                        || json_object_get(x->due, x->iid) != NULL)) {
            json_object_set_new(x->due, x->iid, json_integer(due));
        } else if (due == 0) {
            json_object_del(x->due, x->iid);
        }
    }
    x->ai = 0;
    pg_expiry_next_action(x);
    return;
next:
    pg_expiry_clear_identity(x);
    x->ki++;
    pg_expiry_next_identity(x);
}

static void
pg_expiry_next_identity(pg_expiry_t *x)
{
    const char *prefix = pg_redis_prefix(x->redis);
    size_t plen = strlen(prefix);
    const char *k;
    char *idsess = NULL, now_s[32];
    const char *argv[8];
    pg_status_t st;

    for (;;) {
        if (x->ki >= json_array_size(x->keys)) {
            if (strcmp(x->cursor, "0") == 0) {
                pg_expiry_end(x, PG_OK);
            } else {
                pg_expiry_scan(x);
            }
            return;
        }
        k = json_string_value(json_array_get(x->keys, x->ki));
        /* <p>id:<iid>, iid without ':' (no sub-keys) */
        if (k != NULL && strncmp(k, prefix, plen) == 0
            && strncmp(k + plen, "id:", 3) == 0 && k[plen + 3] != '\0'
            && strchr(k + plen + 3, ':') == NULL) {
            break;
        }
        x->ki++;
    }
    x->key = strdup(k);
    if (x->key == NULL
        || asprintf(&idsess, "%sidsess:%s", prefix, k + plen + 3) < 0) {
        idsess = NULL;
        pg_expiry_end(x, PG_ERR_NOMEM);
        return;
    }
    x->iid = x->key + plen + 3;
    snprintf(now_s, sizeof(now_s), "%lld", (long long) time(NULL));
    argv[0] = "EVAL"; argv[1] = pg_expiry_lua; argv[2] = "3";
    argv[3] = x->key; argv[4] = idsess; argv[5] = x->owners;
    argv[6] = prefix; argv[7] = now_s;
    st = pg_redis_command(x->redis, 8, argv, NULL, PG_EXPIRY_TIMEOUT_MS,
                          pg_expiry_identity_read, x, &x->rop);
    free(idsess);
    if (st != PG_OK) {
        x->rop = NULL;
        pg_expiry_end(x, st);
    }
}

static void
pg_expiry_scanned(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_expiry_t *x = arg;
    const redisReply *c, *ks;
    size_t i;

    x->rop = NULL;
    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 2) {
        pg_expiry_end(x, st != PG_OK ? st : PG_ERR_REDIS);
        return;
    }
    c = reply->element[0];
    ks = reply->element[1];
    if (c->type != REDIS_REPLY_STRING || c->len == 0
        || c->len >= sizeof(x->cursor) || ks->type != REDIS_REPLY_ARRAY) {
        pg_expiry_end(x, PG_ERR_REDIS);
        return;
    }
    memcpy(x->cursor, c->str, c->len);
    x->cursor[c->len] = '\0';
    json_decref(x->keys);
    x->keys = json_array();
    if (x->keys == NULL) {
        pg_expiry_end(x, PG_ERR_NOMEM);
        return;
    }
    for (i = 0; i < ks->elements; i++) {
        const redisReply *k = ks->element[i];

        if (k->type == REDIS_REPLY_STRING && k->len < PG_EXPIRY_KEY_MAX
            && memchr(k->str, '\0', k->len) == NULL) {
            json_array_append_new(x->keys, json_stringn(k->str, k->len));
        }
    }
    x->ki = 0;
    pg_expiry_next_identity(x);
}

static void
pg_expiry_scan(pg_expiry_t *x)
{
    const char *argv[6];

    argv[0] = "SCAN"; argv[1] = x->cursor; argv[2] = "MATCH";
    argv[3] = x->pattern; argv[4] = "COUNT"; argv[5] = PG_EXPIRY_SCAN_COUNT;
    if (pg_redis_command(x->redis, 6, argv, NULL, PG_EXPIRY_TIMEOUT_MS,
                         pg_expiry_scanned, x, &x->rop) != PG_OK) {
        x->rop = NULL;
        pg_expiry_end(x, PG_ERR_REDIS);
    }
}

/* A full sweep: every identity (SCAN); rebuilds the due list. */
static void
pg_expiry_sweep_begin(pg_expiry_t *x)
{
    x->running = 1;
    x->full = 1;
    x->want_full = 0;
    x->again = 0;
    x->n_ids = x->n_ops = x->n_errors = 0;
    x->next_full_ms = x->host->now_ms(x->host->ctx)
                      + (uint64_t) x->cfg->expiry_sweep_s * 1000u;
    json_array_clear(x->pending);   /* covered by this sweep */
    json_object_clear(x->due);
    snprintf(x->cursor, sizeof(x->cursor), "0");
    json_decref(x->keys);
    x->keys = NULL;
    pg_expiry_scan(x);
}

/* Add "<p>id:<iid>" to x->keys once. */
static void
pg_expiry_add_key(pg_expiry_t *x, const char *iid, size_t len)
{
    const char *prefix = pg_redis_prefix(x->redis);
    char *k = NULL;
    size_t i;

    if (len == 0 || len > 256 || memchr(iid, ':', len) != NULL
        || memchr(iid, '\0', len) != NULL
        || asprintf(&k, "%sid:%.*s", prefix, (int) len, iid) < 0) {
        return;
    }
    for (i = 0; i < json_array_size(x->keys); i++) {
        if (strcmp(json_string_value(json_array_get(x->keys, i)), k) == 0) {
            free(k);
            return;
        }
    }
    json_array_append_new(x->keys, json_string(k));
    free(k);
}

/* The owners of the pending sids are known: check those identities. */
static void
pg_expiry_owners_read(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_expiry_t *x = arg;
    const redisReply *ids;
    size_t i;

    x->rop = NULL;
    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 2
        || reply->element[0]->type != REDIS_REPLY_INTEGER
        || reply->element[1]->type != REDIS_REPLY_ARRAY) {
        x->want_full = 1;
        pg_expiry_end(x, st != PG_OK ? st : PG_ERR_REDIS);
        return;
    }
    if (reply->element[0]->integer > 0) {
        /* sessions without a recorded owner (older gateways): look at
         * everybody */
        x->want_full = 1;
    }
    ids = reply->element[1];
    for (i = 0; i < ids->elements; i++) {
        if (ids->element[i]->type == REDIS_REPLY_STRING) {
            pg_expiry_add_key(x, ids->element[i]->str, ids->element[i]->len);
        }
    }
    x->ki = 0;
    pg_expiry_next_identity(x);
}

/* A targeted run: identities that fell due, and the owners of ended
 * sessions. */
static void
pg_expiry_targeted_begin(pg_expiry_t *x)
{
    int64_t now = (int64_t) time(NULL);
    const char *k, **argv;
    json_t *v;
    void *tmp;
    size_t i, n;

    x->running = 1;
    x->full = 0;
    x->again = 0;
    x->n_ids = x->n_ops = x->n_errors = 0;
    snprintf(x->cursor, sizeof(x->cursor), "0");   /* no SCAN */
    json_decref(x->keys);
    x->keys = json_array();
    if (x->keys == NULL) {
        pg_expiry_end(x, PG_ERR_NOMEM);
        return;
    }
    json_object_foreach_safe(x->due, tmp, k, v) {
        if ((int64_t) json_integer_value(v) <= now) {
            pg_expiry_add_key(x, k, strlen(k));
            json_object_del(x->due, k);
        }
    }
    n = json_array_size(x->pending);
    if (n == 0) {
        x->ki = 0;
        pg_expiry_next_identity(x);
        return;
    }
    argv = calloc(n + 4, sizeof(char *));
    if (argv == NULL) {
        pg_expiry_end(x, PG_ERR_NOMEM);
        return;
    }
    argv[0] = "EVAL";
    argv[1] = pg_expiry_owners_lua;
    argv[2] = "1";
    argv[3] = x->owners;
    for (i = 0; i < n; i++) {
        argv[4 + i] = json_string_value(json_array_get(x->pending, i));
    }
    /* argv holds pointers into x->pending: pg_redis copies them */
    if (pg_redis_command(x->redis, (int) (n + 4), argv, NULL,
                         PG_EXPIRY_TIMEOUT_MS, pg_expiry_owners_read, x,
                         &x->rop) != PG_OK) {
        x->rop = NULL;
        free(argv);
        x->want_full = 1;
        pg_expiry_end(x, PG_ERR_REDIS);
        return;
    }
    free(argv);
    json_array_clear(x->pending);
}

static void
pg_expiry_on_timer(void *arg)
{
    pg_expiry_t *x = arg;

    if (x->running || x->rop != NULL || x->oreq != NULL) {
        x->again = 1;
        return;
    }
    if (x->want_full
        || x->host->now_ms(x->host->ctx) >= x->next_full_ms) {
        pg_expiry_sweep_begin(x);
        return;
    }
    pg_expiry_targeted_begin(x);
}

static void
pg_expiry_config_set(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_expiry_t *x = arg;

    x->rop = NULL;
    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        pg_log(x->host, PG_LOG_WARN, "expiry: cannot enable keyspace "
               "notifications (%s): session ends are found by the sweep "
               "every %u s; set notify-keyspace-events Egx in redis.conf",
               reply != NULL && reply->type == REDIS_REPLY_ERROR
                   ? reply->str : pg_status_str(st),
               x->cfg->expiry_sweep_s);
    }
    pg_expiry_sweep_begin(x);
}

/* Merge "Egx" into the current flags; SET only when something is missing. */
static void
pg_expiry_config_got(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_expiry_t *x = arg;
    char flags[64] = "";
    size_t n = 0;
    const char *argv[4];

    x->rop = NULL;
    if (st == PG_OK && reply != NULL && reply->type == REDIS_REPLY_ARRAY
        && reply->elements == 2
        && reply->element[1]->type == REDIS_REPLY_STRING
        && reply->element[1]->len < 32) {
        memcpy(flags, reply->element[1]->str, reply->element[1]->len);
        n = reply->element[1]->len;
        flags[n] = '\0';
    } else {
        pg_expiry_config_set(x, st == PG_OK ? PG_ERR_REDIS : st, reply);
        return;
    }
    if (strchr(flags, 'E') != NULL
        && (strchr(flags, 'A') != NULL
            || (strchr(flags, 'g') != NULL && strchr(flags, 'x') != NULL))) {
        pg_expiry_sweep_begin(x);
        return;
    }
    if (strchr(flags, 'E') == NULL) {
        flags[n++] = 'E';
    }
    if (strchr(flags, 'A') == NULL && strchr(flags, 'g') == NULL) {
        flags[n++] = 'g';
    }
    if (strchr(flags, 'A') == NULL && strchr(flags, 'x') == NULL) {
        flags[n++] = 'x';
    }
    flags[n] = '\0';
    argv[0] = "CONFIG"; argv[1] = "SET"; argv[2] = "notify-keyspace-events";
    argv[3] = flags;
    if (pg_redis_command(x->redis, 4, argv, NULL, PG_EXPIRY_TIMEOUT_MS,
                         pg_expiry_config_set, x, &x->rop) != PG_OK) {
        x->rop = NULL;
        pg_expiry_sweep_begin(x);
    }
}

pg_status_t
pg_expiry_new(const pg_config_t *cfg, const pg_host_t *host,
              pg_redis_t *redis, pg_audit_t *audit, pg_expiry_cb cb,
              void *arg, pg_expiry_t **out)
{
    pg_expiry_t *x;
    const char *prefix;
    size_t i, n = 0, plen;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    if (cfg == NULL || host == NULL || redis == NULL) {
        return PG_ERR_INVALID;
    }
    x = calloc(1, sizeof(*x));
    if (x == NULL) {
        return PG_ERR_NOMEM;
    }
    x->cfg = cfg;
    x->host = host;
    x->redis = redis;
    x->audit = audit;
    x->cb = cb;
    x->arg = arg;
    prefix = pg_redis_prefix(redis);
    plen = strlen(prefix);
    /* the prefix with glob characters escaped, then "id:*" */
    x->pattern = malloc(2 * plen + 5);
    x->timer = host->timer_open(host->ctx, pg_expiry_on_timer, x);
    x->pending = json_array();
    x->due = json_object();
    if (asprintf(&x->owners, "%ssessowner", prefix) < 0) {
        x->owners = NULL;
    }
    if (x->pattern == NULL || x->timer == NULL || x->pending == NULL
        || x->due == NULL || x->owners == NULL) {
        pg_expiry_free(x);
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < plen; i++) {
        if (strchr("*?[]\\", prefix[i]) != NULL) {
            x->pattern[n++] = '\\';
        }
        x->pattern[n++] = prefix[i];
    }
    memcpy(x->pattern + n, "id:*", 5);
    *out = x;
    return PG_OK;
}

pg_status_t
pg_expiry_start(pg_expiry_t *x)
{
    const char *argv[3];

    if (x == NULL || x->started) {
        return PG_ERR_INVALID;
    }
    x->started = 1;
    x->running = 1;   /* the config step leads into the first sweep */
    if (!pg_expiry_session_rules(x->cfg)) {
        /* no session-end rule: notifications are not needed */
        pg_expiry_sweep_begin(x);
        return PG_OK;
    }
    argv[0] = "CONFIG"; argv[1] = "GET"; argv[2] = "notify-keyspace-events";
    if (pg_redis_command(x->redis, 3, argv, NULL, PG_EXPIRY_TIMEOUT_MS,
                         pg_expiry_config_got, x, &x->rop) != PG_OK) {
        x->rop = NULL;
        x->running = 0;
        pg_expiry_arm(x, 0);
    }
    return PG_OK;
}

void
pg_expiry_kick(pg_expiry_t *x)
{
    if (x == NULL || !x->started) {
        return;
    }
    x->want_full = 1;
    if (x->running) {
        x->again = 1;
        return;
    }
    pg_expiry_arm(x, 0);
}

/* 1 when some target deprovisions on session end (only then do session
 * ends matter, and only then does the gateway record session owners). */
static int
pg_expiry_session_rules(const pg_config_t *cfg)
{
    size_t i;

    for (i = 0; i < cfg->ntargets; i++) {
        if (cfg->targets[i].deprov_action != PG_DEPROV_NONE) {
            return 1;
        }
    }
    return 0;
}

void
pg_expiry_notify(pg_expiry_t *x, const char *key)
{
    const char *prefix, *sid;
    size_t plen;

    if (x == NULL || key == NULL || !x->started
        || !pg_expiry_session_rules(x->cfg)
        || strnlen(key, PG_EXPIRY_KEY_MAX + 1) > PG_EXPIRY_KEY_MAX) {
        return;
    }
    prefix = pg_redis_prefix(x->redis);
    plen = strlen(prefix);
    if (strncmp(key, prefix, plen) != 0 || strncmp(key + plen, "sess:", 5)
        != 0 || key[plen + 5] == '\0') {
        return;
    }
    sid = key + plen + 5;
    if (json_array_size(x->pending) >= PG_EXPIRY_PENDING_MAX) {
        x->want_full = 1;   /* a storm of session ends: sweep everybody */
    } else {
        json_array_append_new(x->pending, json_string_nocheck(sid));
    }
    if (x->running) {
        x->again = 1;
        return;
    }
    pg_expiry_arm(x, PG_EXPIRY_NOTIFY_MS);
}

void
pg_expiry_channels(int db, char *expired, char *deleted, size_t sz)
{
    snprintf(expired, sz, "__keyevent@%d__:expired", db);
    snprintf(deleted, sz, "__keyevent@%d__:del", db);
}

void
pg_expiry_free(pg_expiry_t *x)
{
    if (x == NULL) {
        return;
    }
    if (x->rop != NULL) {
        pg_redis_cancel(x->rop);
    }
    if (x->oreq != NULL) {
        pg_outbox_cancel(x->oreq);
    }
    if (x->timer != NULL) {
        x->host->timer_close(x->timer);
    }
    pg_expiry_clear_identity(x);
    json_decref(x->keys);
    json_decref(x->pending);
    json_decref(x->due);
    free(x->owners);
    free(x->pattern);
    free(x);
}
