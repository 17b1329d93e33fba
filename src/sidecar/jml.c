/*
 * provgate core: Join / Move / Leave from the HR export.
 * Contract and flow: include/provgate/jml.h. Keys (P = key prefix):
 *   P hr:snapshot           the last applied export (JSON, see hrfeed.h)
 *   P idx:hr:<sha256(key)>  HR key -> identity id
 *   P idx:<index>:<sha256(lower(value))>  login correlation indexes
 *   P cases                 hash: case id -> JSON (ambiguous correlation)
 *   P id:<iid>              identity hash (attrs, acct:<target>, left, ...)
 * Persons are processed one after the other; every Redis call is async.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis.h>

#include "provgate/hrfeed.h"
#include "provgate/jml.h"
#include "provgate/outbox.h"
#include "provgate/policy.h"
#include "provgate/util.h"

#define PG_JML_SNAPSHOT_MAX (256u * 1024u * 1024u)
#define PG_JML_RULES_MAX    8
#define PG_JML_EVENT_ID_MAX 128
#define PG_JML_EVENT_TTL_S  "604800"   /* event ids remembered 7 days */
#define PG_JML_CASES_MAX    1000       /* cases listed at most */

/*
 * Correlate one HR record. ARGV: prefix, hr hash, candidate iid, nrules,
 * then (index, value hash) pairs ("" hash = no value). An admin's decision
 * on a correlation case (P hrpin:<hr hash>: an identity id, or "*new*"
 * for a new identity, replaced by its id here) overrides every index.
 * -> {"case", "iid1\niid2..."} or {"ok", iid, created, attrs|"", accts}
 * where accts is the identity's target names, "\n"-joined.
 */
static const char pg_jml_corr_lua[] =
    "local p = ARGV[1] "
    "local ids, seen = {}, {} "
    "local function add(v) "
    "  if v and not seen[v] then seen[v] = true; ids[#ids + 1] = v end "
    "end "
    "local hrk = p .. 'idx:hr:' .. ARGV[2] "
    "local pink = p .. 'hrpin:' .. ARGV[2] "
    "local pin = redis.call('GET', pink) "
    "local n = tonumber(ARGV[4]) "
    "if pin then "
    "  if pin ~= '*new*' then add(pin) end "
    "else "
    "  add(redis.call('GET', hrk)) "
    "  for i = 0, n - 1 do "
    "    local h = ARGV[6 + 2 * i] "
    "    if h ~= '' then add(redis.call('GET', p .. 'idx:' .. ARGV[5 + 2 * i] "
    "                                   .. ':' .. h)) end "
    "  end "
    "end "
    "if #ids > 1 then return {'case', table.concat(ids, '\\n')} end "
    "local iid = ids[1] or ARGV[3] "
    "local created = ids[1] == nil and '1' or '0' "
    "if pin then redis.call('SET', pink, iid) end "
    "redis.call('SET', hrk, iid) "
    "for i = 0, n - 1 do "
    "  local h = ARGV[6 + 2 * i] "
    "  if h ~= '' then redis.call('SET', p .. 'idx:' .. ARGV[5 + 2 * i] .. "
    "                             ':' .. h, iid, 'NX') end "
    "end "
    "local k = p .. 'id:' .. iid "
    "redis.call('HDEL', k, 'left') "
    "local attrs = redis.call('HGET', k, 'attrs') or '' "
    "local acc = {} "
    "for _, f in ipairs(redis.call('HKEYS', k)) do "
    "  if string.sub(f, 1, 5) == 'acct:' then acc[#acc + 1] = string.sub(f, 6) end "
    "end "
    "return {'ok', iid, created, attrs, table.concat(acc, '\\n')}";

/*
 * Resolve a correlation case. ARGV: prefix, case id, hr hash, pin ("" to
 * dismiss: nothing pinned). -> 1, or 0 when the case is gone (another
 * sidecar or admin resolved it).
 */
static const char pg_jml_pin_lua[] =
    "local p = ARGV[1] "
    "if redis.call('HEXISTS', p .. 'cases', ARGV[2]) == 0 then return 0 end "
    "if ARGV[4] ~= '' then redis.call('SET', p .. 'hrpin:' .. ARGV[3], "
    "                                 ARGV[4]) end "
    "redis.call('HDEL', p .. 'cases', ARGV[2]) "
    "return 1";

/*
 * A leaver. ARGV: prefix, hr hash, now. Ends every session of the identity
 * and notifies the gateways (P revoked, field iid).
 * -> {} (unknown person) or {iid, attrs|"", accts, sessions ended}
 */
static const char pg_jml_leave_lua[] =
    "local p = ARGV[1] "
    "local iid = redis.call('GET', p .. 'idx:hr:' .. ARGV[2]) "
    "if not iid then return {} end "
    "local k = p .. 'id:' .. iid "
    "local n = 0 "
    "for _, sid in ipairs(redis.call('SMEMBERS', p .. 'idsess:' .. iid)) do "
    "  n = n + redis.call('DEL', p .. 'sess:' .. sid) "
    "  redis.call('HDEL', p .. 'sessowner', sid) "
    "end "
    "redis.call('DEL', p .. 'idsess:' .. iid) "
    "redis.call('XADD', p .. 'revoked', 'MAXLEN', '~', '100000', '*', "
    "           'iid', iid) "
    "redis.call('HSET', k, 'left', ARGV[3]) "
    "local acc = {} "
    "for _, f in ipairs(redis.call('HKEYS', k)) do "
    "  if string.sub(f, 1, 5) == 'acct:' then acc[#acc + 1] = string.sub(f, 6) end "
    "end "
    "return {iid, redis.call('HGET', k, 'attrs') or '', "
    "        table.concat(acc, '\\n'), tostring(n)}";

/* Release our lease (compare-and-delete). KEYS: lock. ARGV: token. */
static const char pg_jml_unlock_lua[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('DEL', KEYS[1]) else return 0 end";

/* Renew our lease (compare-and-PEXPIRE). KEYS: lock. ARGV: token, ms.
 * 1: renewed; 0: it is not ours any more. */
static const char pg_jml_renew_lua[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";

/* The import/event lease: one sidecar at a time applies HR changes, so
 * several instances never apply one export twice. It is short and renewed
 * every third of it while held, so that a sidecar killed in the middle
 * of an import holds up the others (or its own restart) for at most
 * PG_JML_LEASE_MS; released at the end. */
/* hr_source.lease_s (default 30 s) in ms, and its renewal period */
#define PG_JML_LEASE_MS(j) ((uint64_t) (j)->cfg->hr_lease_s * 1000u)
#define PG_JML_RENEW_MS(j) (PG_JML_LEASE_MS(j) / 3u)

typedef struct pg_jml_rule {
    char *attr;                /* identity attribute (e.g. "email") */
    char *index;               /* login correlation index (e.g. "email") */
} pg_jml_rule_t;

enum { PG_JML_JOIN = 0, PG_JML_MOVE, PG_JML_LEAVE, PG_JML_DONE };

struct pg_jml {
    const pg_config_t *cfg;
    const pg_host_t *host;
    pg_redis_t *r;
    pg_audit_t *audit;
    pg_hrfeed_cfg_t *feed;
    char *file;
    unsigned poll_s;
    pg_jml_rule_t rules[PG_JML_RULES_MAX];
    size_t nrules;

    /* the running import */
    int busy;
    int force;
    pg_jml_cb cb;
    void *arg;
    char *path;
    pg_hrfeed_parsed_t *parsed;
    pg_hrfeed_diff_t *diff;
    json_t *summary;
    int phase;
    size_t idx;
    size_t tgt;
    char iid[64];
    json_t *attrs;             /* the person's merged attributes */
    char *accts;               /* "\n"-joined targets with an account */
    pg_redis_op_t *rop;
    pg_outbox_req_t *oreq;
    pg_timer_t *kick;
    pg_timer_t *renew;         /* renews the lease while it is held */
    pg_redis_op_t *renew_op;
    unsigned long ops, cases;
    char lease[48];            /* token of our <p>lock:jml lease, or "" */
    int event_mode;            /* one JML event: no snapshot to commit */
    json_t *event;             /* the event being applied */
    /* pg_jml_case: an admin's decision on a correlation case */
    int case_mode;
    char case_id[32];
    char case_action[16];      /* "link", "new" or "dismiss" */
    char case_identity[136];
    char case_hash[64];        /* sha256 of the case's HR key */
    /* pg_jml_cases: one listing at a time */
    pg_redis_op_t *list_op;
    pg_jml_cases_cb list_cb;
    void *list_arg;
};

static void pg_jml_next_person(pg_jml_t *j);
static void pg_jml_next_target(pg_jml_t *j);
static void pg_jml_finish(pg_jml_t *j, pg_status_t st, const char *why);
static void pg_jml_event_go(pg_jml_t *j);
static void pg_jml_case_go(pg_jml_t *j);
static int pg_jml_id_ok(const char *s);
static void pg_jml_lease(pg_jml_t *j);
static void pg_jml_renew(void *arg);

static void
pg_jml_audit(pg_jml_t *j, const char *type, const char *outcome,
             const char *reason, json_t *fields)
{
    pg_audit_emit(j->audit, type, outcome, reason, fields, NULL);
}

/* ---- config ----------------------------------------------------------- */

pg_status_t
pg_jml_new(const pg_config_t *cfg, const pg_host_t *host, pg_redis_t *redis,
           pg_audit_t *audit, pg_jml_t **out, pg_err_t *err)
{
    const json_t *src = cfg->hr_source;
    pg_jml_t *j;
    json_t *rule;
    size_t i;
    pg_status_t st;

    *out = NULL;
    if (src == NULL) {
        pg_err_set(err, "$.hr_source: not configured");
        return PG_ERR_NOT_FOUND;
    }
    j = calloc(1, sizeof(*j));
    if (j == NULL) {
        return PG_ERR_NOMEM;
    }
    j->cfg = cfg;
    j->host = host;
    j->r = redis;
    j->audit = audit;
    j->file = cfg->hr_file != NULL ? strdup(cfg->hr_file) : NULL;
    j->poll_s = cfg->hr_poll_s;
    st = pg_hrfeed_cfg_parse(json_object_get(src, "feed"), "$.hr_source.feed",
                             &j->feed, err);
    json_array_foreach(json_object_get(src, "correlation"), i, rule) {
        if (st != PG_OK || i >= PG_JML_RULES_MAX) {
            break;
        }
        j->rules[i].attr = strdup(json_string_value(json_object_get(rule,
                                                                    "attr")));
        j->rules[i].index = strdup(json_string_value(json_object_get(rule,
                                                                     "index")));
        j->nrules = i + 1;
        if (j->rules[i].attr == NULL || j->rules[i].index == NULL) {
            st = PG_ERR_NOMEM;
        }
    }
    if (st == PG_OK && cfg->hr_file != NULL && j->file == NULL) {
        st = PG_ERR_NOMEM;
    }
    if (st != PG_OK) {
        pg_jml_free(j);
        return st;
    }
    *out = j;
    return PG_OK;
}

static void
pg_jml_ignore(void *arg, pg_status_t st, const redisReply *reply)
{
    (void) arg;
    (void) st;
    (void) reply;
}

static void
pg_jml_reset(pg_jml_t *j)
{
    if (j->renew_op != NULL) {
        pg_redis_cancel(j->renew_op);
        j->renew_op = NULL;
    }
    if (j->renew != NULL) {
        j->host->timer_close(j->renew);
        j->renew = NULL;
    }
    if (j->lease[0] != '\0') {
        char k[256];
        const char *argv[5];

        snprintf(k, sizeof(k), "%slock:jml", j->cfg->redis.key_prefix);
        argv[0] = "EVAL"; argv[1] = pg_jml_unlock_lua; argv[2] = "1";
        argv[3] = k; argv[4] = j->lease;
        if (pg_redis_command(j->r, 5, argv, NULL, 0, pg_jml_ignore, NULL,
                             NULL) != PG_OK) {
            pg_log(j->host, PG_LOG_WARN, "jml: lease not released (expires)");
        }
        j->lease[0] = '\0';
    }
    if (j->rop != NULL) {
        pg_redis_cancel(j->rop);
        j->rop = NULL;
    }
    if (j->oreq != NULL) {
        pg_outbox_cancel(j->oreq);
        j->oreq = NULL;
    }
    if (j->kick != NULL) {
        j->host->timer_close(j->kick);
        j->kick = NULL;
    }
    pg_hrfeed_parsed_free(j->parsed);
    j->parsed = NULL;
    pg_hrfeed_diff_free(j->diff);
    j->diff = NULL;
    json_decref(j->summary);
    j->summary = NULL;
    json_decref(j->attrs);
    j->attrs = NULL;
    free(j->accts);
    j->accts = NULL;
    free(j->path);
    j->path = NULL;
    json_decref(j->event);
    j->event = NULL;
    j->event_mode = 0;
    j->case_mode = 0;
    j->busy = 0;
}

void
pg_jml_free(pg_jml_t *j)
{
    size_t i;

    if (j == NULL) {
        return;
    }
    pg_jml_reset(j);
    if (j->list_op != NULL) {
        pg_redis_cancel(j->list_op);     /* its callback is not called */
        j->list_op = NULL;
    }
    pg_hrfeed_cfg_free(j->feed);
    for (i = 0; i < j->nrules; i++) {
        free(j->rules[i].attr);
        free(j->rules[i].index);
    }
    free(j->file);
    free(j);
}

const char *
pg_jml_file(const pg_jml_t *j)
{
    return j->file;
}

unsigned
pg_jml_poll_s(const pg_jml_t *j)
{
    return j->poll_s;
}

/* ---- helpers ---------------------------------------------------------- */

static char *
pg_jml_key(const pg_jml_t *j, const char *a, const char *b)
{
    char *k = NULL;

    if (asprintf(&k, "%s%s%s", j->cfg->redis.key_prefix, a, b ? b : "") < 0) {
        return NULL;
    }
    return k;
}

/* sha256 (base64url) of s, lower-cased first when lower. */
static pg_status_t
pg_jml_hash(const char *s, int lower, char *out, size_t outsz)
{
    size_t n = strlen(s), i;
    char *c = malloc(n + 1);
    pg_status_t st;

    if (c == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < n; i++) {
        c[i] = lower ? (char) tolower((unsigned char) s[i]) : s[i];
    }
    c[n] = '\0';
    st = pg_sha256_b64url(c, n, out, outsz);
    free(c);
    return st;
}

static int
pg_jml_has_acct(const pg_jml_t *j, const char *target)
{
    const char *p = j->accts;
    size_t n = strlen(target);

    while (p != NULL && *p != '\0') {
        const char *e = strchr(p, '\n');
        size_t l = e != NULL ? (size_t) (e - p) : strlen(p);

        if (l == n && memcmp(p, target, n) == 0) {
            return 1;
        }
        p = e != NULL ? e + 1 : NULL;
    }
    return 0;
}

/* The key and attributes of the current person. */
static void
pg_jml_current(const pg_jml_t *j, const char **key, json_t **attrs)
{
    const pg_hrfeed_diff_t *d = j->diff;

    *key = NULL;
    *attrs = NULL;
    if (j->phase == PG_JML_JOIN && j->idx < d->njoins) {
        *key = d->joins[j->idx].key;
        *attrs = d->joins[j->idx].attrs;
    } else if (j->phase == PG_JML_MOVE && j->idx < d->nmoves) {
        *key = d->moves[j->idx].key;
        *attrs = d->moves[j->idx].attrs;
    } else if (j->phase == PG_JML_LEAVE && j->idx < d->nleaves) {
        *key = d->leaves[j->idx].key;
        *attrs = d->leaves[j->idx].attrs;
    }
}

static const char *
pg_jml_phase_name(int phase)
{
    return phase == PG_JML_JOIN ? "join" : phase == PG_JML_MOVE ? "move"
                                                                : "leave";
}

/* ---- per target: decide and enqueue ------------------------------------ */

static void
pg_jml_enqueued(void *arg, pg_status_t st, const pg_outbox_enqueued_t *res)
{
    pg_jml_t *j = arg;

    j->oreq = NULL;
    if (st != PG_OK) {
        pg_jml_finish(j, st, "enqueue failed");
        return;
    }
    (void) res;
    j->ops++;
    j->tgt++;
    pg_jml_next_target(j);
}

/* Enqueue kind ("ensure", "disable", "delete") for target t. */
static void
pg_jml_enqueue(pg_jml_t *j, const pg_target_cfg_t *t, const char *kind,
               const json_t *ents)
{
    pg_outbox_op_t o;
    json_t *state, *f;
    const char *key;
    json_t *hr;
    pg_status_t st;

    state = json_pack("{s:s, s:s, s:O, s:O}", "iid", j->iid, "app", t->name,
                      "attrs", j->attrs, "entitlements", ents);
    if (state == NULL) {
        pg_jml_finish(j, PG_ERR_NOMEM, "out of memory");
        return;
    }
    memset(&o, 0, sizeof(o));
    o.identity = j->iid;
    o.target = t->name;
    o.kind = kind;
    o.state = state;
    o.dedup_ttl_s = j->cfg->outbox.dedup_ttl_s;
    o.release_when_done = 1;
    pg_jml_current(j, &key, &hr);
    f = json_pack("{s:s, s:s, s:s, s:s, s:O}", "identity", j->iid, "hr_key",
                  key ? key : "", "target", t->name, "operation", kind,
                  "entitlements", ents);
    pg_jml_audit(j, "jml.operation", "success", pg_jml_phase_name(j->phase),
                 f);
    st = pg_outbox_enqueue(j->r, &o, 5000, pg_jml_enqueued, j, NULL,
                           &j->oreq);
    json_decref(state);
    if (st != PG_OK) {
        j->oreq = NULL;
        pg_jml_finish(j, st, "enqueue failed");
    }
}

static void
pg_jml_next_target(pg_jml_t *j)
{
    const pg_config_t *cfg = j->cfg;

    while (j->tgt < cfg->ntargets) {
        const pg_target_cfg_t *t = &cfg->targets[j->tgt];
        pg_decision_t d;
        json_t *empty;

        if (j->phase == PG_JML_LEAVE) {
            if (pg_jml_has_acct(j, t->name)) {
                empty = json_array();
                pg_jml_enqueue(j, t, t->leave_delete ? "delete" : "disable",
                               empty);
                json_decref(empty);
                return;
            }
            j->tgt++;
            continue;
        }
        memset(&d, 0, sizeof(d));
        if (pg_policy_decide(cfg->policies, j->attrs, t->name, &d) != PG_OK) {
            pg_decision_clear(&d);
            pg_jml_finish(j, PG_ERR_INTERNAL, "policy evaluation failed");
            return;
        }
        pg_jml_audit(j, "policy.decision", d.has_account ? "success"
                                                         : "denied",
                     d.has_account ? "granted" : "not_entitled",
                     json_pack("{s:s, s:s, s:b, s:O?, s:O?}", "identity",
                               j->iid, "target", t->name, "granted",
                               d.has_account, "entitlements", d.entitlements,
                               "explanation", d.explanation));
        if (d.has_account) {
            pg_jml_enqueue(j, t, "ensure", d.entitlements);
            pg_decision_clear(&d);
            return;
        }
        pg_decision_clear(&d);
        if (pg_jml_has_acct(j, t->name)) {
            /* moved out of every policy for this target */
            empty = json_array();
            pg_jml_enqueue(j, t, t->leave_delete ? "delete" : "disable",
                           empty);
            json_decref(empty);
            return;
        }
        j->tgt++;
    }
    /* this person is done */
    j->idx++;
    pg_jml_next_person(j);
}

/* ---- per person ------------------------------------------------------- */

static void
pg_jml_attrs_saved(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_jml_t *j = arg;

    j->rop = NULL;
    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        pg_jml_finish(j, PG_ERR_REDIS, "cannot store identity attributes");
        return;
    }
    j->tgt = 0;
    pg_jml_next_target(j);
}

/* The case id of an HR key: "c" + 22 characters of its sha256 hash (the
 * same key always gives the same case: a later import updates it). */
static pg_status_t
pg_jml_case_id(const char *key, char *out, size_t outsz)
{
    char hash[64];

    if (outsz < 24 || pg_jml_hash(key, 0, hash, sizeof(hash)) != PG_OK) {
        return PG_ERR_NOMEM;
    }
    out[0] = 'c';
    memcpy(out + 1, hash, 22);
    out[23] = '\0';
    return PG_OK;
}

static void
pg_jml_case_stored(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_jml_t *j = arg;

    j->rop = NULL;
    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        pg_jml_finish(j, PG_ERR_REDIS, "cannot store the correlation case");
        return;
    }
    j->idx++;
    pg_jml_next_person(j);
}

/*
 * Two identities match the HR record key (attributes hr, borrowed):
 * store a correlation case in P cases (case id -> {"id", "hr_key", "kind",
 * "candidates", "attributes", "created", "source"}) for an admin
 * (pg_jml_case), audit jml.case deferred, then go on with the next
 * person. Nothing is applied for this one.
 */
static void
pg_jml_case_store(pg_jml_t *j, const char *key, const json_t *hr,
                  const char *ids, size_t idslen)
{
    char cid[32], *k, *text, *list = strndup(ids, idslen), *save = NULL;
    const char *argv[4];
    json_t *cands = json_array(), *c;
    pg_status_t st;

    if (list == NULL || cands == NULL
        || pg_jml_case_id(key, cid, sizeof(cid)) != PG_OK) {
        free(list);
        json_decref(cands);
        pg_jml_finish(j, PG_ERR_NOMEM, "out of memory");
        return;
    }
    for (k = strtok_r(list, "\n", &save); k != NULL;
         k = strtok_r(NULL, "\n", &save)) {
        json_array_append_new(cands, json_string(k));
    }
    free(list);
    c = json_pack("{s:s, s:s, s:s, s:o, s:O, s:I, s:s}", "id", cid,
                  "hr_key", key, "kind", pg_jml_phase_name(j->phase),
                  "candidates", cands, "attributes", hr,
                  "created", (json_int_t) time(NULL),
                  "source", j->event_mode ? "event" : "import");
    pg_jml_audit(j, "jml.case", "deferred", "ambiguous_correlation",
                 c != NULL ? json_pack("{s:s, s:s, s:s, s:O}", "case", cid,
                                       "hr_key", key, "kind",
                                       pg_jml_phase_name(j->phase),
                                       "candidates",
                                       json_object_get(c, "candidates"))
                           : NULL);
    text = c != NULL ? json_dumps(c, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(c);
    k = pg_jml_key(j, "cases", NULL);
    if (text == NULL || k == NULL) {
        free(text);
        free(k);
        pg_jml_finish(j, PG_ERR_NOMEM, "out of memory");
        return;
    }
    argv[0] = "HSET"; argv[1] = k; argv[2] = cid; argv[3] = text;
    st = pg_redis_command(j->r, 4, argv, NULL, 0, pg_jml_case_stored, j,
                          &j->rop);
    free(text);
    free(k);
    if (st != PG_OK) {
        j->rop = NULL;
        pg_jml_finish(j, st, "cannot store the correlation case");
    }
}

static void
pg_jml_correlated(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_jml_t *j = arg;
    const char *key;
    json_t *hr, *f;
    char *enc = NULL, *idk = NULL, now[24];
    const char *argv[8];

    j->rop = NULL;
    pg_jml_current(j, &key, &hr);
    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements < 2) {
        pg_jml_finish(j, PG_ERR_REDIS, "correlation failed");
        return;
    }
    if (strcmp(reply->element[0]->str, "case") == 0) {
        /* two identities match this record: an admin decides */
        j->cases++;
        pg_jml_case_store(j, key, hr, reply->element[1]->str,
                          reply->element[1]->len);
        return;
    }
    if (reply->elements != 5 || reply->element[1]->len >= sizeof(j->iid)) {
        pg_jml_finish(j, PG_ERR_REDIS, "correlation failed");
        return;
    }
    memcpy(j->iid, reply->element[1]->str, reply->element[1]->len);
    j->iid[reply->element[1]->len] = '\0';
    json_decref(j->attrs);
    j->attrs = NULL;
    if (reply->element[3]->len > 0 && reply->element[3]->len < 256 * 1024) {
        json_error_t jerr;
        j->attrs = json_loadb(reply->element[3]->str, reply->element[3]->len,
                              0, &jerr);
    }
    if (!json_is_object(j->attrs)) {
        json_decref(j->attrs);
        j->attrs = json_object();
    }
    /* the authoritative source wins for the attributes it carries */
    if (j->attrs == NULL || json_object_update(j->attrs, hr) != 0) {
        pg_jml_finish(j, PG_ERR_NOMEM, "out of memory");
        return;
    }
    json_object_set_new(j->attrs, "identity_id", json_string(j->iid));
    json_object_set_new(j->attrs, "hr_key", json_string(key));
    free(j->accts);
    j->accts = strndup(reply->element[4]->str, reply->element[4]->len);
    f = json_pack("{s:s, s:s, s:b}", "hr_key", key, "identity", j->iid,
                  "new_identity", reply->element[2]->str[0] == '1');
    if (j->phase == PG_JML_MOVE && f != NULL) {
        const pg_hrfeed_move_t *m = &j->diff->moves[j->idx];
        json_t *ch = json_array();
        size_t i;

        for (i = 0; ch != NULL && i < m->nchanges; i++) {
            json_array_append_new(ch, json_pack("{s:s, s:s?, s:s?}", "attr",
                                                m->changes[i].attr, "old",
                                                m->changes[i].old_value, "new",
                                                m->changes[i].new_value));
        }
        json_object_set_new(f, "changes", ch);
    }
    pg_jml_audit(j, j->phase == PG_JML_JOIN ? "jml.join" : "jml.move",
                 "success", reply->element[2]->str[0] == '1'
                                ? "new_identity" : "existing_identity", f);
    enc = json_dumps(j->attrs, JSON_COMPACT | JSON_SORT_KEYS);
    idk = pg_jml_key(j, "id:", j->iid);
    snprintf(now, sizeof(now), "%lld", (long long) time(NULL));
    if (enc == NULL || idk == NULL || j->accts == NULL) {
        free(enc);
        free(idk);
        pg_jml_finish(j, PG_ERR_NOMEM, "out of memory");
        return;
    }
    argv[0] = "HSET"; argv[1] = idk; argv[2] = "attrs"; argv[3] = enc;
    argv[4] = "updated"; argv[5] = now; argv[6] = "source"; argv[7] = "hr";
    st = pg_redis_command(j->r, 8, argv, NULL, 0, pg_jml_attrs_saved, j,
                          &j->rop);
    free(enc);
    free(idk);
    if (st != PG_OK) {
        j->rop = NULL;
        pg_jml_finish(j, st, "cannot store identity attributes");
    }
}

static void
pg_jml_left(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_jml_t *j = arg;
    const char *key;
    json_t *hr, *f;

    j->rop = NULL;
    pg_jml_current(j, &key, &hr);
    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        pg_jml_finish(j, PG_ERR_REDIS, "leave failed");
        return;
    }
    if (reply->elements != 4) {
        pg_jml_audit(j, "jml.leave", "success", "no_identity",
                     json_pack("{s:s}", "hr_key", key));
        j->idx++;
        pg_jml_next_person(j);
        return;
    }
    snprintf(j->iid, sizeof(j->iid), "%.*s", (int) reply->element[0]->len,
             reply->element[0]->str);
    json_decref(j->attrs);
    j->attrs = NULL;
    if (reply->element[1]->len > 0 && reply->element[1]->len < 256 * 1024) {
        json_error_t jerr;
        j->attrs = json_loadb(reply->element[1]->str, reply->element[1]->len,
                              0, &jerr);
    }
    if (!json_is_object(j->attrs)) {
        json_decref(j->attrs);
        j->attrs = json_deep_copy(hr);
    }
    free(j->accts);
    j->accts = strndup(reply->element[2]->str, reply->element[2]->len);
    f = json_pack("{s:s, s:s, s:s, s:s%}", "hr_key", key, "identity", j->iid,
                  "reason", j->diff->leaves[j->idx].reason
                                == PG_HRFEED_LEAVE_TERMINATED
                                ? "terminated" : "gone",
                  "sessions_ended", reply->element[3]->str,
                  reply->element[3]->len);
    pg_jml_audit(j, "jml.leave", "success", "left", f);
    pg_jml_audit(j, "session.end", "success", "leave",
                 json_pack("{s:s}", "identity", j->iid));
    if (j->attrs == NULL || j->accts == NULL) {
        pg_jml_finish(j, PG_ERR_NOMEM, "out of memory");
        return;
    }
    j->tgt = 0;
    pg_jml_next_target(j);
}

static void
pg_jml_commit_done(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_jml_t *j = arg;

    j->rop = NULL;
    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        pg_jml_finish(j, PG_ERR_REDIS, "cannot store the snapshot");
        return;
    }
    pg_jml_finish(j, PG_OK, NULL);
}

static void
pg_jml_next_person(pg_jml_t *j)
{
    const pg_hrfeed_diff_t *d = j->diff;
    const char *key;
    json_t *hr;
    char hash[64], cand[48], now[24], nr[8];
    char hashes[PG_JML_RULES_MAX][64];
    const char *argv[8 + 2 * PG_JML_RULES_MAX];
    char *snap;
    size_t i;
    int argc = 0;
    pg_status_t st;

    for (;;) {
        size_t n = j->phase == PG_JML_JOIN ? d->njoins
                   : j->phase == PG_JML_MOVE ? d->nmoves
                   : j->phase == PG_JML_LEAVE ? d->nleaves : 0;

        if (j->phase == PG_JML_DONE) {
            break;
        }
        if (j->idx < n) {
            break;
        }
        j->phase++;
        j->idx = 0;
    }
    if (j->phase == PG_JML_DONE && j->event_mode) {
        /* every operation is enqueued: only now is the event "seen", so
         * a crash before this point lets the sender's retry apply it */
        argv[0] = "SET"; argv[1] = j->path; argv[2] = "1";
        argv[3] = "EX"; argv[4] = PG_JML_EVENT_TTL_S;
        st = pg_redis_command(j->r, 5, argv, NULL, 0, pg_jml_commit_done, j,
                              &j->rop);
        if (st != PG_OK) {
            j->rop = NULL;
            pg_jml_finish(j, st, "cannot record the event");
        }
        return;
    }
    if (j->phase == PG_JML_DONE) {
        /* everything is enqueued: commit the snapshot */
        char *k = pg_jml_key(j, "hr:snapshot", NULL);

        snap = json_dumps(d->next, JSON_COMPACT | JSON_SORT_KEYS);
        if (k == NULL || snap == NULL) {
            free(k);
            free(snap);
            pg_jml_finish(j, PG_ERR_NOMEM, "out of memory");
            return;
        }
        argv[0] = "SET"; argv[1] = k; argv[2] = snap;
        st = pg_redis_command(j->r, 3, argv, NULL, 0, pg_jml_commit_done, j,
                              &j->rop);
        free(k);
        free(snap);
        if (st != PG_OK) {
            j->rop = NULL;
            pg_jml_finish(j, st, "cannot store the snapshot");
        }
        return;
    }
    pg_jml_current(j, &key, &hr);
    if (pg_jml_hash(key, 0, hash, sizeof(hash)) != PG_OK) {
        pg_jml_finish(j, PG_ERR_NOMEM, "out of memory");
        return;
    }
    snprintf(now, sizeof(now), "%lld", (long long) time(NULL));
    if (j->phase == PG_JML_LEAVE) {
        argv[0] = "EVAL"; argv[1] = pg_jml_leave_lua; argv[2] = "0";
        argv[3] = j->cfg->redis.key_prefix; argv[4] = hash; argv[5] = now;
        st = pg_redis_command(j->r, 6, argv, NULL, 0, pg_jml_left, j,
                              &j->rop);
    } else {
        if (pg_random_token(16, cand, sizeof(cand)) != PG_OK) {
            pg_jml_finish(j, PG_ERR_INTERNAL, "no randomness");
            return;
        }
        snprintf(nr, sizeof(nr), "%zu", j->nrules);
        argv[argc++] = "EVAL"; argv[argc++] = pg_jml_corr_lua;
        argv[argc++] = "0"; argv[argc++] = j->cfg->redis.key_prefix;
        argv[argc++] = hash; argv[argc++] = cand; argv[argc++] = nr;
        for (i = 0; i < j->nrules; i++) {
            const char *v = json_string_value(json_object_get(hr,
                                              j->rules[i].attr));

            hashes[i][0] = '\0';
            if (v != NULL && v[0] != '\0'
                && pg_jml_hash(v, 1, hashes[i], sizeof(hashes[i])) != PG_OK) {
                pg_jml_finish(j, PG_ERR_NOMEM, "out of memory");
                return;
            }
            argv[argc++] = j->rules[i].index;
            argv[argc++] = hashes[i];
        }
        st = pg_redis_command(j->r, argc, argv, NULL, 0, pg_jml_correlated, j,
                              &j->rop);
    }
    if (st != PG_OK) {
        j->rop = NULL;
        pg_jml_finish(j, st, "Redis unavailable");
    }
}

/* ---- the import ------------------------------------------------------- */

static void
pg_jml_finish(pg_jml_t *j, pg_status_t st, const char *why)
{
    pg_jml_cb cb = j->cb;
    void *arg = j->arg;
    json_t *s = j->summary;

    j->summary = NULL;
    if (s != NULL) {
        json_object_set_new(s, "operations", json_integer((json_int_t) j->ops));
        json_object_set_new(s, "cases", json_integer((json_int_t) j->cases));
        if (st != PG_OK) {
            json_object_set_new(s, "refused", json_string(why ? why : "error"));
        }
    }
    pg_jml_audit(j, j->event_mode ? "jml.event" : "jml.import",
                 st == PG_OK ? "success" : "failure",
                 st == PG_OK ? "applied" : pg_status_str(st),
                 s != NULL ? json_deep_copy(s) : NULL);
    pg_jml_reset(j);
    cb(arg, st, s);
    json_decref(s);
}

static void
pg_jml_snapshot_read(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_jml_t *j = arg;
    json_t *prev = NULL, *errs;
    char today[16];
    time_t now = time(NULL);
    struct tm tm;
    pg_err_t err = { "" };
    size_t i;

    j->rop = NULL;
    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        pg_jml_finish(j, PG_ERR_REDIS, "Redis unavailable");
        return;
    }
    if (reply->type == REDIS_REPLY_STRING
        && pg_hrfeed_snapshot_parse(reply->str, reply->len,
                                    PG_JML_SNAPSHOT_MAX, &prev, &err)
           != PG_OK) {
        pg_jml_finish(j, PG_ERR_INVALID, err.msg);
        return;
    }
    gmtime_r(&now, &tm);
    strftime(today, sizeof(today), "%Y-%m-%d", &tm);
    st = pg_hrfeed_diff(j->feed, prev, j->parsed, today, j->force, &j->diff,
                        &err);
    json_decref(prev);
    errs = json_array();
    for (i = 0; errs != NULL && i < j->parsed->nerrors; i++) {
        json_array_append_new(errs, json_pack("{s:I, s:s}", "line",
                                  (json_int_t) j->parsed->errors[i].line,
                                  "reason", j->parsed->errors[i].reason));
    }
    json_object_set_new(j->summary, "errors", errs);
    json_object_set_new(j->summary, "malformed",
                        json_integer((json_int_t) j->parsed->nbad));
    if (j->diff != NULL) {
        json_object_set_new(j->summary, "joins",
                            json_integer((json_int_t) j->diff->njoins));
        json_object_set_new(j->summary, "moves",
                            json_integer((json_int_t) j->diff->nmoves));
        json_object_set_new(j->summary, "leaves",
                            json_integer((json_int_t) j->diff->nleaves));
        json_object_set_new(j->summary, "unchanged",
                            json_integer((json_int_t) j->diff->unchanged));
    }
    if (st != PG_OK) {
        pg_jml_finish(j, st, err.msg[0] ? err.msg : "refused");
        return;
    }
    j->phase = PG_JML_JOIN;
    j->idx = 0;
    pg_jml_next_person(j);
}

static void pg_jml_event_kick(void *arg);

/* Take <p>lock:jml, then go on with the import or the event; another
 * holder: PG_ERR_BUSY (the import is tried again at the next poll, the
 * event's sender retries). */
static void pg_jml_start(void *arg);

static void
pg_jml_leased(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_jml_t *j = arg;

    j->rop = NULL;
    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        j->lease[0] = '\0';
        pg_jml_finish(j, PG_ERR_REDIS, "Redis unavailable");
        return;
    }
    if (reply->type == REDIS_REPLY_NIL) {
        /* another sidecar is applying HR changes right now */
        j->lease[0] = '\0';
        if (j->event_mode) {
            /* an accepted event is never dropped: wait for the lease */
            j->kick = j->host->timer_open(j->host->ctx, pg_jml_event_kick,
                                          j);
            if (j->kick != NULL) {
                j->host->timer_arm(j->kick, 200);
                return;
            }
        }
        pg_jml_finish(j, PG_ERR_BUSY, "another sidecar is importing");
        return;
    }
    /* ours: keep it while the work runs */
    j->renew = j->host->timer_open(j->host->ctx, pg_jml_renew, j);
    if (j->renew != NULL) {
        j->host->timer_arm(j->renew, PG_JML_RENEW_MS(j));
    }
    if (j->case_mode) {
        pg_jml_case_go(j);
    } else if (j->event_mode) {
        pg_jml_event_go(j);
    } else {
        pg_jml_start(j);
    }
}

static void
pg_jml_renewed(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_jml_t *j = arg;

    j->renew_op = NULL;
    if (st == PG_OK && reply != NULL && reply->type == REDIS_REPLY_INTEGER
        && reply->integer == 0) {
        /* expired meanwhile (Redis was away too long): another sidecar may
         * apply the same changes; the operations are idempotent */
        pg_log(j->host, PG_LOG_WARN, "jml: the lease was lost while "
               "applying HR changes");
    }
    if (j->renew != NULL) {
        j->host->timer_arm(j->renew, PG_JML_RENEW_MS(j));
    }
}

/* Every PG_JML_RENEW_MS(j) while the lease is ours: extend it. */
static void
pg_jml_renew(void *arg)
{
    pg_jml_t *j = arg;
    char k[256], ms[16];
    const char *argv[6];

    if (j->lease[0] == '\0' || j->renew_op != NULL) {
        return;
    }
    snprintf(k, sizeof(k), "%slock:jml", j->cfg->redis.key_prefix);
    snprintf(ms, sizeof(ms), "%llu", (unsigned long long) PG_JML_LEASE_MS(j));
    argv[0] = "EVAL"; argv[1] = pg_jml_renew_lua; argv[2] = "1";
    argv[3] = k; argv[4] = j->lease; argv[5] = ms;
    if (pg_redis_command(j->r, 6, argv, NULL, 0, pg_jml_renewed, j,
                         &j->renew_op) != PG_OK) {
        j->renew_op = NULL;
        j->host->timer_arm(j->renew, PG_JML_RENEW_MS(j));
    }
}

static void
pg_jml_lease(pg_jml_t *j)
{
    char k[256], ms[24];
    const char *argv[6];
    pg_status_t st;

    if (pg_random_token(18, j->lease, sizeof(j->lease)) != PG_OK) {
        j->lease[0] = '\0';
        pg_jml_finish(j, PG_ERR_INTERNAL, "no randomness");
        return;
    }
    snprintf(k, sizeof(k), "%slock:jml", j->cfg->redis.key_prefix);
    argv[0] = "SET"; argv[1] = k; argv[2] = j->lease; argv[3] = "NX";
    snprintf(ms, sizeof(ms), "%llu", (unsigned long long) PG_JML_LEASE_MS(j));
    argv[4] = "PX"; argv[5] = ms;
    st = pg_redis_command(j->r, 6, argv, NULL, 0, pg_jml_leased, j, &j->rop);
    if (st != PG_OK) {
        j->rop = NULL;
        j->lease[0] = '\0';
        pg_jml_finish(j, st, "Redis unavailable");
    }
}

static void
pg_jml_start(void *arg)
{
    pg_jml_t *j = arg;
    char *buf = NULL, *k;
    size_t len = 0;
    pg_err_t err = { "" };
    const char *argv[2];
    pg_status_t st;

    j->host->timer_close(j->kick);
    j->kick = NULL;
    if (j->lease[0] == '\0') {
        pg_jml_lease(j);
        return;
    }
    /* a local file read: bounded, and the sidecar is not a request path */
    st = pg_read_file(j->path, j->feed->max_file_bytes, 0, &buf, &len, &err);
    if (st != PG_OK) {
        pg_jml_finish(j, st, err.msg[0] ? err.msg : "cannot read the file");
        return;
    }
    st = pg_hrfeed_parse(j->feed, buf, len, &j->parsed, &err);
    free(buf);
    if (st != PG_OK && j->parsed == NULL) {
        pg_jml_finish(j, st, err.msg[0] ? err.msg : "cannot parse the file");
        return;
    }
    k = pg_jml_key(j, "hr:snapshot", NULL);
    if (k == NULL) {
        pg_jml_finish(j, PG_ERR_NOMEM, "out of memory");
        return;
    }
    argv[0] = "GET";
    argv[1] = k;
    st = pg_redis_command(j->r, 2, argv, NULL, 0, pg_jml_snapshot_read, j,
                          &j->rop);
    free(k);
    if (st != PG_OK) {
        j->rop = NULL;
        pg_jml_finish(j, st, "Redis unavailable");
    }
}

/*
 * Mark j busy with a job (an import, an event or a case decision) that
 * reports to cb(arg) and zero its counters. The caller has set up the
 * job's state; j->kick, when set, is armed to start it from the loop.
 */
static void
pg_jml_begin(pg_jml_t *j, pg_jml_cb cb, void *arg)
{
    j->busy = 1;
    j->cb = cb;
    j->arg = arg;
    j->ops = 0;
    j->cases = 0;
    if (j->kick != NULL) {
        j->host->timer_arm(j->kick, 0);
    }
}

pg_status_t
pg_jml_import(pg_jml_t *j, const char *path, int force, pg_jml_cb cb,
              void *arg)
{
    if (j->busy) {
        return PG_ERR_BUSY;
    }
    if (path == NULL && j->file == NULL) {
        return PG_ERR_INVALID;       /* drop_dir: the caller names the file */
    }
    j->path = strdup(path != NULL ? path : j->file);
    j->summary = json_pack("{s:s}", "file", path != NULL ? path : j->file);
    j->kick = j->host->timer_open(j->host->ctx, pg_jml_start, j);
    if (j->path == NULL || j->summary == NULL || j->kick == NULL) {
        pg_jml_reset(j);
        return PG_ERR_NOMEM;
    }
    j->force = force;
    pg_jml_begin(j, cb, arg);
    return PG_OK;
}

/* ---- correlation cases (an admin decides) ----------------------------- */

static void
pg_jml_case_pinned(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_jml_t *j = arg;
    json_t *f;

    j->rop = NULL;
    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_INTEGER) {
        pg_jml_finish(j, PG_ERR_REDIS, "cannot resolve the case");
        return;
    }
    if (reply->integer == 0) {
        pg_jml_finish(j, PG_ERR_NOT_FOUND, "no such case (resolved meanwhile)");
        return;
    }
    f = json_pack("{s:s, s:s, s:s?}", "case", j->case_id, "hr_key",
                  j->diff->joins[0].key, "identity",
                  strcmp(j->case_action, "link") == 0 ? j->case_identity
                                                      : NULL);
    pg_jml_audit(j, "jml.case", "success",
                 strcmp(j->case_action, "link") == 0 ? "linked"
                 : strcmp(j->case_action, "new") == 0 ? "new_identity"
                                                       : "dismissed", f);
    if (strcmp(j->case_action, "dismiss") == 0) {
        pg_jml_finish(j, PG_OK, NULL);
        return;
    }
    /* apply the record now, as a join: the pin decides the identity */
    j->phase = PG_JML_JOIN;
    j->idx = 0;
    pg_jml_next_person(j);
}

static void
pg_jml_case_read(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_jml_t *j = arg;
    json_t *c = NULL, *cands, *attrs, *v;
    const char *key, *k, *argv[7];
    pg_hrfeed_diff_t *d;
    json_error_t jerr;
    size_t i;
    int ok = 0;

    j->rop = NULL;
    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        pg_jml_finish(j, PG_ERR_REDIS, "cannot read the case");
        return;
    }
    if (reply->type != REDIS_REPLY_STRING) {
        pg_jml_finish(j, PG_ERR_NOT_FOUND, "no such case");
        return;
    }
    c = json_loadb(reply->str, reply->len, 0, &jerr);
    key = json_string_value(json_object_get(c, "hr_key"));
    cands = json_object_get(c, "candidates");
    attrs = json_object_get(c, "attributes");
    if (key == NULL || !json_is_array(cands) || !json_is_object(attrs)) {
        json_decref(c);
        pg_jml_finish(j, PG_ERR_INVALID, "malformed case");
        return;
    }
    json_array_foreach(cands, i, v) {
        if (json_is_string(v)
            && strcmp(json_string_value(v), j->case_identity) == 0) {
            ok = 1;
        }
    }
    if (strcmp(j->case_action, "link") == 0 && !ok) {
        json_decref(c);
        pg_jml_finish(j, PG_ERR_INVALID, "identity is not a candidate");
        return;
    }
    json_object_foreach(attrs, k, v) {
        if (!json_is_string(v)) {
            json_decref(c);
            pg_jml_finish(j, PG_ERR_INVALID, "malformed case");
            return;
        }
    }
    /* the job's one person: a join of the record */
    d = calloc(1, sizeof(*d));
    if (d != NULL && (d->joins = calloc(1, sizeof(*d->joins))) != NULL) {
        d->njoins = 1;
        d->joins[0].key = strdup(key);
        d->joins[0].attrs = json_deep_copy(attrs);
    }
    json_object_set_new(j->summary, "hr_key", json_string(key));
    json_decref(c);
    if (d == NULL || d->joins == NULL || d->joins[0].key == NULL
        || d->joins[0].attrs == NULL
        || pg_jml_hash(d->joins[0].key, 0, j->case_hash,
                       sizeof(j->case_hash)) != PG_OK) {
        pg_hrfeed_diff_free(d);
        pg_jml_finish(j, PG_ERR_NOMEM, "out of memory");
        return;
    }
    j->diff = d;
    argv[0] = "EVAL"; argv[1] = pg_jml_pin_lua; argv[2] = "0";
    argv[3] = j->cfg->redis.key_prefix; argv[4] = j->case_id;
    argv[5] = j->case_hash;
    argv[6] = strcmp(j->case_action, "link") == 0 ? j->case_identity
              : strcmp(j->case_action, "new") == 0 ? "*new*" : "";
    st = pg_redis_command(j->r, 7, argv, NULL, 0, pg_jml_case_pinned, j,
                          &j->rop);
    if (st != PG_OK) {
        j->rop = NULL;
        pg_jml_finish(j, st, "Redis unavailable");
    }
}

/* With the lease: read the case. */
static void
pg_jml_case_go(pg_jml_t *j)
{
    char *k = pg_jml_key(j, "cases", NULL);
    const char *argv[3];
    pg_status_t st;

    if (k == NULL) {
        pg_jml_finish(j, PG_ERR_NOMEM, "out of memory");
        return;
    }
    argv[0] = "HGET"; argv[1] = k; argv[2] = j->case_id;
    st = pg_redis_command(j->r, 3, argv, NULL, 0, pg_jml_case_read, j,
                          &j->rop);
    free(k);
    if (st != PG_OK) {
        j->rop = NULL;
        pg_jml_finish(j, st, "Redis unavailable");
    }
}

pg_status_t
pg_jml_case(pg_jml_t *j, const char *case_id, const char *action,
            const char *identity, pg_jml_cb cb, void *arg, pg_err_t *err)
{
    char now[24];
    size_t i, n = case_id != NULL ? strlen(case_id) : 0;

    if (j->busy) {
        return PG_ERR_BUSY;
    }
    if (n != 23 || case_id[0] != 'c') {
        pg_err_set(err, "case: not a case id");
        return PG_ERR_INVALID;
    }
    for (i = 1; i < n; i++) {
        if (!isalnum((unsigned char) case_id[i]) && case_id[i] != '-'
            && case_id[i] != '_') {
            pg_err_set(err, "case: not a case id");
            return PG_ERR_INVALID;
        }
    }
    if (action == NULL || (strcmp(action, "link") != 0
                           && strcmp(action, "new") != 0
                           && strcmp(action, "dismiss") != 0)) {
        pg_err_set(err, "action: must be \"link\", \"new\" or \"dismiss\"");
        return PG_ERR_INVALID;
    }
    if (strcmp(action, "link") == 0
        && (identity == NULL || !pg_jml_id_ok(identity)
            || strlen(identity) >= sizeof(j->case_identity))) {
        pg_err_set(err, "identity: required with \"link\" (an identity id)");
        return PG_ERR_INVALID;
    }
    memcpy(j->case_id, case_id, n + 1);
    snprintf(j->case_action, sizeof(j->case_action), "%s", action);
    snprintf(j->case_identity, sizeof(j->case_identity), "%s",
             identity != NULL && strcmp(action, "link") == 0 ? identity : "");
    snprintf(now, sizeof(now), "%lld", (long long) time(NULL));
    /* the join's "event" marker: an id of its own, remembered like one */
    if (asprintf(&j->path, "%sjml:event:case-%s-%s", j->cfg->redis.key_prefix,
                 case_id, now) < 0) {
        j->path = NULL;
        return PG_ERR_NOMEM;
    }
    j->summary = json_pack("{s:s, s:s}", "case", case_id, "action", action);
    j->kick = j->host->timer_open(j->host->ctx, pg_jml_event_kick, j);
    if (j->summary == NULL || j->kick == NULL) {
        pg_jml_reset(j);
        return PG_ERR_NOMEM;
    }
    j->event_mode = 1;
    j->case_mode = 1;
    pg_jml_begin(j, cb, arg);
    return PG_OK;
}

static void
pg_jml_cases_read(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_jml_t *j = arg;
    pg_jml_cases_cb cb = j->list_cb;
    json_t *out = NULL, *c;
    json_error_t jerr;
    size_t i;

    j->list_op = NULL;
    j->list_cb = NULL;
    if (st == PG_OK && (reply == NULL || reply->type != REDIS_REPLY_ARRAY)) {
        st = PG_ERR_REDIS;
    }
    if (st == PG_OK) {
        out = json_array();
        for (i = 0; out != NULL && i + 1 < reply->elements
                    && i / 2 < PG_JML_CASES_MAX; i += 2) {
            c = json_loadb(reply->element[i + 1]->str,
                           reply->element[i + 1]->len, 0, &jerr);
            if (json_is_object(c)) {
                json_array_append_new(out, c);
            } else {
                json_decref(c);
            }
        }
        if (out == NULL) {
            st = PG_ERR_NOMEM;
        }
    }
    cb(j->list_arg, st, out);
    json_decref(out);
}

pg_status_t
pg_jml_cases(pg_jml_t *j, pg_jml_cases_cb cb, void *arg)
{
    char *k;
    const char *argv[2];
    pg_status_t st;

    if (j->list_op != NULL) {
        return PG_ERR_BUSY;
    }
    k = pg_jml_key(j, "cases", NULL);
    if (k == NULL) {
        return PG_ERR_NOMEM;
    }
    j->list_cb = cb;
    j->list_arg = arg;
    argv[0] = "HGETALL"; argv[1] = k;
    st = pg_redis_command(j->r, 2, argv, NULL, 0, pg_jml_cases_read, j,
                          &j->list_op);
    free(k);
    if (st != PG_OK) {
        j->list_op = NULL;
        j->list_cb = NULL;
    }
    return st;
}

/* ---- events (webhook, stream) ------------------------------------------ */

static void pg_jml_event_kick(void *arg);


static void
pg_jml_event_seen(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_jml_t *j = arg;

    j->rop = NULL;
    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        pg_jml_finish(j, PG_ERR_REDIS, "Redis unavailable");
        return;
    }
    if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 1) {
        /* this event id was applied before: idempotent, nothing to do */
        json_object_set_new(j->summary, "duplicate", json_true());
        pg_jml_finish(j, PG_OK, NULL);
        return;
    }
    j->phase = j->diff->nleaves > 0 ? PG_JML_LEAVE
               : j->diff->nmoves > 0 ? PG_JML_MOVE : PG_JML_JOIN;
    j->idx = 0;
    pg_jml_next_person(j);
}

static int
pg_jml_id_ok(const char *s)
{
    size_t n = 0;

    for (; s[n] != '\0'; n++) {
        unsigned char c = (unsigned char) s[n];
        if (!(isalnum(c) || c == '-' || c == '_' || c == '.' || c == ':')) {
            return 0;
        }
    }
    return n > 0 && n <= PG_JML_EVENT_ID_MAX;
}

/*
 * Apply one JML event (see jml.h). Validation errors are synchronous
 * (PG_ERR_INVALID with err); the rest is reported through cb like an
 * import (summary: {"event", "type", "key", "duplicate"?, ...}).
 */
pg_status_t
pg_jml_event(pg_jml_t *j, const json_t *ev, pg_jml_cb cb, void *arg,
             pg_err_t *err)
{
    const char *id = json_string_value(json_object_get(ev, "id"));
    const char *type = json_string_value(json_object_get(ev, "type"));
    const char *key = json_string_value(json_object_get(ev, "key"));
    json_t *attrs = json_object_get(ev, "attributes");
    const char *k;
    json_t *v;
    pg_hrfeed_diff_t *d;
    char *seen;

    if (j->busy) {
        return PG_ERR_BUSY;
    }
    if (!json_is_object(ev) || id == NULL || !pg_jml_id_ok(id)) {
        pg_err_set(err, "id: required, 1-%d of A-Z a-z 0-9 - _ . :",
                   PG_JML_EVENT_ID_MAX);
        return PG_ERR_INVALID;
    }
    if (type == NULL || (strcmp(type, "join") != 0 && strcmp(type, "move") != 0
                         && strcmp(type, "leave") != 0)) {
        pg_err_set(err, "type: must be \"join\", \"move\" or \"leave\"");
        return PG_ERR_INVALID;
    }
    if (key == NULL || key[0] == '\0' || strlen(key) > 256) {
        pg_err_set(err, "key: required, 1-256 characters");
        return PG_ERR_INVALID;
    }
    if (attrs == NULL && strcmp(type, "leave") == 0) {
        attrs = NULL;
    } else if (!json_is_object(attrs) || json_object_size(attrs) > 256) {
        pg_err_set(err, "attributes: required object (at most 256 members)");
        return PG_ERR_INVALID;
    }
    json_object_foreach(attrs, k, v) {
        if (!json_is_string(v) || json_string_length(v) > 4096) {
            pg_err_set(err, "attributes.%.64s: must be a string (at most 4 "
                       "KiB)", k);
            return PG_ERR_INVALID;
        }
    }
    d = calloc(1, sizeof(*d));
    if (d == NULL) {
        return PG_ERR_NOMEM;
    }
    if (strcmp(type, "leave") == 0) {
        d->leaves = calloc(1, sizeof(*d->leaves));
        if (d->leaves != NULL) {
            d->nleaves = 1;
            d->leaves[0].key = strdup(key);
            d->leaves[0].attrs = attrs != NULL ? json_deep_copy(attrs)
                                               : json_object();
            d->leaves[0].reason = PG_HRFEED_LEAVE_GONE;
        }
    } else {
        /* a move and a join are the same work: correlate, merge, decide */
        d->joins = calloc(1, sizeof(*d->joins));
        if (d->joins != NULL) {
            d->njoins = 1;
            d->joins[0].key = strdup(key);
            d->joins[0].attrs = json_deep_copy(attrs);
        }
    }
    seen = pg_jml_key(j, "jml:event:", id);
    j->summary = json_pack("{s:s, s:s, s:s}", "event", id, "type", type,
                           "key", key);
    j->kick = NULL;
    if (seen == NULL || j->summary == NULL
        || (d->njoins == 0 && d->nleaves == 0)
        || (d->njoins == 1 && (d->joins[0].key == NULL
                               || d->joins[0].attrs == NULL))
        || (d->nleaves == 1 && (d->leaves[0].key == NULL
                                || d->leaves[0].attrs == NULL))) {
        free(seen);
        pg_hrfeed_diff_free(d);
        json_decref(j->summary);
        j->summary = NULL;
        return PG_ERR_NOMEM;
    }
    j->diff = d;
    j->event = json_deep_copy(ev);
    j->event_mode = 1;
    j->path = seen;
    /* one applier at a time across sidecars, then the id check */
    j->kick = j->host->timer_open(j->host->ctx, pg_jml_event_kick, j);
    if (j->kick == NULL) {
        pg_jml_reset(j);
        return PG_ERR_NOMEM;
    }
    pg_jml_begin(j, cb, arg);
    return PG_OK;
}

/* Idempotent by event id: recorded once applied (see jml.h). */
static void
pg_jml_event_go(pg_jml_t *j)
{
    const char *argv[2];
    pg_status_t st;

    argv[0] = "EXISTS"; argv[1] = j->path;
    st = pg_redis_command(j->r, 2, argv, NULL, 0, pg_jml_event_seen, j,
                          &j->rop);
    if (st != PG_OK) {
        j->rop = NULL;
        pg_jml_finish(j, st, "Redis unavailable");
    }
}

static void
pg_jml_event_kick(void *arg)
{
    pg_jml_t *j = arg;

    j->host->timer_close(j->kick);
    j->kick = NULL;
    pg_jml_lease(j);
}
