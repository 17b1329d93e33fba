/*
 * provgate connectors: the manual connector ("manual").
 *
 * ensure/disable/remove turn a desired change into a work item for a human
 * (include/provgate/manualconn.h has the Redis layout). Each operation is
 * ONE Lua script, so deciding "already done / already queued / new item"
 * and writing the item, its status, the open index and the per-account
 * pending pointer is atomic even with several gateways and the sidecar
 * running the same target.
 *
 * Item lifecycle:
 *   open ----mark_done----> done      (the account's recorded state
 *     |                               changes; the next identical
 *     |                               operation reports the item's outcome
 *     |                               once, then UNCHANGED)
 *     +------reject-------> rejected  (identical operations fail with
 *     |                               PG_ERR_DENIED until the desired
 *     |                               state changes)
 *     +--newer change-----> superseded (a different desired change for
 *                                      the same account replaced it)
 *
 * The item id is derived from target + op + key + desired state (sorted
 * keys), so a repeated ensure never queues a second item; a done item whose
 * state is no longer the recorded one (changed since) is re-opened with the
 * same id when that desired state comes back.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <hiredis/hiredis.h>

#include "provgate/manualconn.h"

#define MAN_INSTR_MAX    2048
#define MAN_DESC_MAX     (256u * 1024u)  /* item JSON cap */
#define MAN_SCAN_COUNT   "200"
#define MAN_SUMMARY_MAX  1024

enum { K_ITEMS, K_STATUS, K_OPEN, K_PENDING, K_ACCTS, K_N };
enum { OP_ENSURE, OP_DISABLE, OP_REMOVE, OP_LIST, OP_LIST_OPEN, OP_RESOLVE };

typedef struct manual_conn {
    pg_connector_t base;       /* must be first */
    pg_redis_t *redis;         /* borrowed */
    char *keys[K_N];
    char *instructions;        /* or NULL */
    unsigned max_open;
    unsigned timeout_ms;
    pg_conn_req_t *reqs;
} manual_conn_t;

struct pg_conn_req {
    manual_conn_t *c;
    int op;
    pg_redis_op_t *rop;
    char key[PG_CONN_KEY_MAX + 1];
    pg_conn_cb cb;
    pg_conn_page_cb page;
    pg_conn_done_cb done;
    pg_manual_items_cb items_cb;
    pg_manual_done_cb resolve_cb;
    void *arg;
    uint64_t since_ms;
    char cursor[32];
    json_t *seen;              /* list: keys delivered (HSCAN may repeat) */
    int in_cb;
    int cancelled;
    pg_conn_req_t *prev, *next;
};

static const pg_connector_vt_t manual_vt;

/* ---- Lua ------------------------------------------------------------ */

/* KEYS: items status open pending accts.
 * ARGV: id desc key now op max_open.
 * Reply: {tag, extra}: queued <outcome> | done <outcome> | unchanged |
 * absent | rejected <by> <note> | full. */
static const char lua_apply[] =
    "local id, desc, key = ARGV[1], ARGV[2], ARGV[3]\n"
    "local now, op, maxopen = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])\n"
    "local rec = redis.call('HGET', KEYS[5], key)\n"
    "local r = nil\n"
    "if rec then r = cjson.decode(rec) end\n"
    "local function supersede()\n"
    "  local p = redis.call('HGET', KEYS[4], key)\n"
    "  if p and p ~= id then\n"
    "    local ps = redis.call('HGET', KEYS[2], p)\n"
    "    if ps then\n"
    "      local s = cjson.decode(ps)\n"
    "      if s.status == 'open' then\n"
    "        s.status = 'superseded'; s.done_at = now; s.superseded_by = id\n"
    "        redis.call('HSET', KEYS[2], p, cjson.encode(s))\n"
    "      end\n"
    "    end\n"
    "    redis.call('ZREM', KEYS[3], p)\n"
    "    redis.call('HDEL', KEYS[4], key)\n"
    "  end\n"
    "end\n"
    "local st = redis.call('HGET', KEYS[2], id)\n"
    "if st then\n"
    "  local s = cjson.decode(st)\n"
    "  if s.status == 'open' then return {'queued', s.outcome} end\n"
    "  if s.status == 'rejected' then\n"
    "    return {'rejected', s.by or '', s.note or ''}\n"
    "  end\n"
    "  if s.status == 'done' and r and r.item == id then\n"
    "    if not s.acked then\n"
    "      s.acked = true\n"
    "      redis.call('HSET', KEYS[2], id, cjson.encode(s))\n"
    "      return {'done', s.outcome}\n"
    "    end\n"
    "    return {'unchanged', ''}\n"
    "  end\n"
    "end\n"
    "if op == 'remove' and not r then supersede(); return {'absent', ''} end\n"
    "if op == 'disable' then\n"
    "  if not r then supersede(); return {'absent', ''} end\n"
    "  if r.active == false then return {'unchanged', ''} end\n"
    "end\n"
    "if redis.call('ZCARD', KEYS[3]) >= maxopen then return {'full', ''} end\n"
    "local outcome = 'removed'\n"
    "if op == 'ensure' then\n"
    "  if r then outcome = 'updated' else outcome = 'created' end\n"
    "elseif op == 'disable' then outcome = 'disabled' end\n"
    "supersede()\n"
    "redis.call('HSET', KEYS[1], id, desc)\n"
    "redis.call('HSET', KEYS[2], id,\n"
    "  cjson.encode({status = 'open', outcome = outcome, at = now}))\n"
    "redis.call('ZADD', KEYS[3], now, id)\n"
    "redis.call('HSET', KEYS[4], key, id)\n"
    "return {'queued', outcome}\n";

/* KEYS: items status open pending accts.
 * ARGV: id by note now verdict("done"|"rejected").
 * Reply: {tag, extra}: ok | notfound | conflict <status>. */
static const char lua_resolve[] =
    "local id, by, note = ARGV[1], ARGV[2], ARGV[3]\n"
    "local now, verdict = tonumber(ARGV[4]), ARGV[5]\n"
    "local st = redis.call('HGET', KEYS[2], id)\n"
    "if not st then return {'notfound', ''} end\n"
    "local s = cjson.decode(st)\n"
    "if s.status ~= 'open' then return {'conflict', s.status} end\n"
    "local d = cjson.decode(redis.call('HGET', KEYS[1], id))\n"
    "s.status = verdict; s.by = by; s.note = note; s.done_at = now\n"
    "s.acked = false\n"
    "redis.call('HSET', KEYS[2], id, cjson.encode(s))\n"
    "redis.call('ZREM', KEYS[3], id)\n"
    "if redis.call('HGET', KEYS[4], d.key) == id then\n"
    "  redis.call('HDEL', KEYS[4], d.key)\n"
    "end\n"
    "if verdict == 'done' then\n"
    "  if d.op == 'ensure' then\n"
    "    redis.call('HSET', KEYS[5], d.key, cjson.encode({item = id,\n"
    "      base = id, active = d.desired.active, done_at = now, by = by}))\n"
    "  elseif d.op == 'disable' then\n"
    "    local rec = redis.call('HGET', KEYS[5], d.key)\n"
    "    local base = nil\n"
    "    if rec then base = cjson.decode(rec).base end\n"
    "    redis.call('HSET', KEYS[5], d.key, cjson.encode({item = id,\n"
    "      base = base, active = false, done_at = now, by = by}))\n"
    "  else\n"
    "    redis.call('HDEL', KEYS[5], d.key)\n"
    "  end\n"
    "end\n"
    "return {'ok', ''}\n";

/* KEYS: items status open. ARGV: limit. Reply: id, item, status, ... */
static const char lua_open[] =
    "local ids = redis.call('ZRANGE', KEYS[3], 0, tonumber(ARGV[1]) - 1)\n"
    "local out = {}\n"
    "for _, id in ipairs(ids) do\n"
    "  out[#out + 1] = id\n"
    "  out[#out + 1] = redis.call('HGET', KEYS[1], id) or ''\n"
    "  out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''\n"
    "end\n"
    "return out\n";

/* KEYS: items accts. ARGV: cursor count.
 * Reply: cursor, then key, record, item (or '') per account. */
static const char lua_scan[] =
    "local r = redis.call('HSCAN', KEYS[2], ARGV[1], 'COUNT', ARGV[2])\n"
    "local out = {r[1]}\n"
    "local kv = r[2]\n"
    "for i = 1, #kv, 2 do\n"
    "  local rec = cjson.decode(kv[i + 1])\n"
    "  local d = false\n"
    "  if rec.base then d = redis.call('HGET', KEYS[1], rec.base) end\n"
    "  out[#out + 1] = kv[i]\n"
    "  out[#out + 1] = kv[i + 1]\n"
    "  out[#out + 1] = d or ''\n"
    "end\n"
    "return out\n";

/* ---- helpers -------------------------------------------------------- */

/* Wall-clock milliseconds (item timestamps are for humans and list()). */
static uint64_t
wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

/* qsort comparator of C strings. */
static int
str_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *) a, *(const char *const *) b);
}

/* Sorted, de-duplicated JSON array of the n strings v (NULL on OOM or a
 * NULL/empty item). */
static json_t *
sorted_set(const char *const *v, size_t n)
{
    const char **tmp;
    json_t *arr = json_array();
    size_t i;

    if (arr == NULL) {
        return NULL;
    }
    if (n == 0) {
        return arr;
    }
    if (v == NULL || n > 100000) {
        json_decref(arr);
        return NULL;
    }
    tmp = malloc(n * sizeof(*tmp));
    if (tmp == NULL) {
        json_decref(arr);
        return NULL;
    }
    for (i = 0; i < n; i++) {
        if (v[i] == NULL || v[i][0] == '\0') {
            free(tmp);
            json_decref(arr);
            return NULL;
        }
        tmp[i] = v[i];
    }
    qsort(tmp, n, sizeof(*tmp), str_cmp);
    for (i = 0; i < n; i++) {
        if ((i == 0 || strcmp(tmp[i], tmp[i - 1]) != 0)
            && json_array_append_new(arr, json_string(tmp[i])) != 0) {
            free(tmp);
            json_decref(arr);
            return NULL;
        }
    }
    free(tmp);
    return arr;
}

/* "ensure", "disable" or "remove". */
static const char *
op_name(int op)
{
    return op == OP_ENSURE ? "ensure" : op == OP_DISABLE ? "disable"
                                                         : "remove";
}

/* The desired-state object of an operation (new reference or NULL). */
static json_t *
desired_of(int op, const pg_account_t *a)
{
    json_t *d, *g, *rv, *attrs;

    if (op == OP_DISABLE) {
        return json_pack("{s:b}", "active", 0);
    }
    if (op == OP_REMOVE) {
        return json_object();
    }
    if (a->attrs != NULL && !json_is_object(a->attrs)) {
        return NULL;
    }
    g = sorted_set(a->groups, a->ngroups);
    rv = sorted_set(a->revoke, a->nrevoke);
    attrs = a->attrs != NULL ? json_deep_copy(a->attrs) : json_object();
    if (g == NULL || rv == NULL || attrs == NULL) {
        json_decref(g);
        json_decref(rv);
        json_decref(attrs);
        return NULL;
    }
    d = json_pack("{s:o,s:o,s:o,s:b}", "attrs", attrs, "groups", g,
                  "revoke", rv, "active", a->active ? 1 : 0);
    return d;
}

/*
 * id = base64url(SHA-256(canonical {target, op, key, desired})). The
 * canonical form is jansson's compact dump with sorted keys (recursively).
 */
static pg_status_t
item_id(const manual_conn_t *c, int op, const char *key, const json_t *desired,
        char *out, size_t outsz)
{
    json_t *h = json_pack("{s:s,s:s,s:s,s:O}", "target", c->base.name, "op",
                          op_name(op), "key", key, "desired", desired);
    char *txt;
    pg_status_t st;

    if (h == NULL) {
        return PG_ERR_NOMEM;
    }
    txt = json_dumps(h, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(h);
    if (txt == NULL) {
        return PG_ERR_NOMEM;
    }
    st = pg_sha256_b64url(txt, strlen(txt), out, outsz);
    free(txt);
    return st;
}

/* Append printf output to a fixed buffer, keeping it NUL-terminated. */
static void PG_PRINTF(3, 4)
bprintf(char *buf, size_t sz, const char *fmt, ...)
{
    size_t len = strlen(buf);
    va_list ap;

    if (len + 1 >= sz) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(buf + len, sz - len, fmt, ap);
    va_end(ap);
}

/* One line telling the human what to do. */
static void
summary_of(const manual_conn_t *c, int op, const pg_account_t *a,
           const json_t *desired, char *buf, size_t sz)
{
    const char *k;
    json_t *v;
    size_t i, n = 0;

    buf[0] = '\0';
    if (op == OP_DISABLE) {
        bprintf(buf, sz, "Disable account \"%s\" on %s.", a->key,
                c->base.name);
        return;
    }
    if (op == OP_REMOVE) {
        bprintf(buf, sz, "Delete account \"%s\" from %s.", a->key,
                c->base.name);
        return;
    }
    bprintf(buf, sz, "Create or update account \"%s\" on %s (%s)", a->key,
            c->base.name, a->active ? "enabled" : "disabled");
    json_object_foreach((json_t *) json_object_get(desired, "attrs"), k, v) {
        bprintf(buf, sz, "%s%s", n++ == 0 ? "; set " : ", ", k);
    }
    json_array_foreach(json_object_get(desired, "groups"), i, v) {
        bprintf(buf, sz, "%s%s", i == 0 ? "; add to " : ", ",
                json_string_value(v));
    }
    json_array_foreach(json_object_get(desired, "revoke"), i, v) {
        bprintf(buf, sz, "%s%s", i == 0 ? "; remove from " : ", ",
                json_string_value(v));
    }
    bprintf(buf, sz, ".");
    if (strlen(buf) + 1 >= sz && sz > 4) {
        memcpy(buf + sz - 4, "...", 4);
    }
}

/* ---- request lifecycle ---------------------------------------------- */

/* Allocate a request and link it to c (NULL on OOM). */
static pg_conn_req_t *
req_new(manual_conn_t *c, int op, void *arg)
{
    pg_conn_req_t *r = calloc(1, sizeof(*r));

    if (r == NULL) {
        return NULL;
    }
    r->c = c;
    r->op = op;
    r->arg = arg;
    r->next = c->reqs;
    if (c->reqs != NULL) {
        c->reqs->prev = r;
    }
    c->reqs = r;
    return r;
}

/* Unlink r and free it (its Redis op must be done or cancelled). */
static void
req_free(pg_conn_req_t *r)
{
    manual_conn_t *c = r->c;

    if (r->prev != NULL) {
        r->prev->next = r->next;
    } else if (c->reqs == r) {
        c->reqs = r->next;
    }
    if (r->next != NULL) {
        r->next->prev = r->prev;
    }
    json_decref(r->seen);
    free(r);
}

static void on_reply(void *arg, pg_status_t st, const redisReply *reply);

/* EVAL script with the given keys (indices into c->keys) and args. */
static pg_status_t
eval(pg_conn_req_t *r, const char *script, const int *kidx, int nkeys,
     const char *const *args, const size_t *arglens, int nargs)
{
    const char *argv[16];
    size_t lens[16];
    char nk[8];
    int i, n = 0;

    snprintf(nk, sizeof(nk), "%d", nkeys);
    argv[n] = "EVAL";
    lens[n++] = 4;
    argv[n] = script;
    lens[n++] = strlen(script);
    argv[n] = nk;
    lens[n++] = strlen(nk);
    for (i = 0; i < nkeys; i++) {
        argv[n] = r->c->keys[kidx[i]];
        lens[n++] = strlen(r->c->keys[kidx[i]]);
    }
    for (i = 0; i < nargs; i++) {
        argv[n] = args[i];
        lens[n++] = arglens != NULL ? arglens[i] : strlen(args[i]);
    }
    return pg_redis_command(r->c->redis, n, argv, lens, r->c->timeout_ms,
                            on_reply, r, &r->rop);
}

static const int all_keys[] = { K_ITEMS, K_STATUS, K_OPEN, K_PENDING,
                                K_ACCTS };

/* Reply element i as a C string ("" when absent or not a string). */
static const char *
el(const redisReply *rep, size_t i)
{
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || i >= rep->elements
        || rep->element[i]->type != REDIS_REPLY_STRING) {
        return "";
    }
    return rep->element[i]->str;
}

/* Parse reply element i as JSON, refusing anything over MAN_DESC_MAX
 * bytes before parsing (the stored data is only as trusted as Redis).
 * New reference or NULL. */
static json_t *
el_json(const redisReply *rep, size_t i)
{
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || i >= rep->elements
        || rep->element[i]->type != REDIS_REPLY_STRING
        || rep->element[i]->len == 0 || rep->element[i]->len > MAN_DESC_MAX) {
        return NULL;
    }
    return json_loadb(rep->element[i]->str, rep->element[i]->len, 0, NULL);
}

/* Map transport/reply errors: status, retryable, message. */
static pg_status_t
reply_error(pg_status_t st, const redisReply *rep, char *msg, size_t msgsz)
{
    if (st != PG_OK) {
        snprintf(msg, msgsz, "redis %s", pg_status_str(st));
        return st == PG_ERR_TIMEOUT ? PG_ERR_TIMEOUT : PG_ERR_REDIS;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(msg, msgsz, "redis error: %.200s", rep->str);
        return PG_ERR_REDIS;
    }
    if (rep->type != REDIS_REPLY_ARRAY) {
        snprintf(msg, msgsz, "redis: unexpected reply");
        return PG_ERR_REDIS;
    }
    return PG_OK;
}

/* Finish an ensure/disable/remove. */
static void
finish_op(pg_conn_req_t *r, pg_status_t st, pg_conn_outcome_t outcome,
          int retryable, const char *error)
{
    pg_conn_result_t res;

    memset(&res, 0, sizeof(res));
    res.outcome = outcome;
    res.id = st == PG_OK ? r->key : "";
    res.retryable = st == PG_OK ? 0 : retryable;
    res.error = error != NULL ? error : "";
    r->cb(r->arg, st, &res);
    req_free(r);
}

/* Outcome of a stored outcome name ("created", ...). */
static pg_conn_outcome_t
outcome_of(const char *s)
{
    if (strcmp(s, "created") == 0) {
        return PG_CONN_CREATED;
    }
    if (strcmp(s, "updated") == 0) {
        return PG_CONN_UPDATED;
    }
    if (strcmp(s, "disabled") == 0) {
        return PG_CONN_DISABLED;
    }
    if (strcmp(s, "removed") == 0) {
        return PG_CONN_REMOVED;
    }
    return PG_CONN_UNCHANGED;
}

/* Reply of lua_apply: map {tag, extra} to the operation's result. */
static void
on_apply(pg_conn_req_t *r, const redisReply *rep)
{
    const char *tag = el(rep, 0);
    char msg[PG_CONN_ERROR_MAX];

    if (strcmp(tag, "queued") == 0) {
        finish_op(r, PG_OK, PG_CONN_QUEUED, 0, NULL);
    } else if (strcmp(tag, "done") == 0) {
        finish_op(r, PG_OK, outcome_of(el(rep, 1)), 0, NULL);
    } else if (strcmp(tag, "unchanged") == 0) {
        finish_op(r, PG_OK, PG_CONN_UNCHANGED, 0, NULL);
    } else if (strcmp(tag, "absent") == 0) {
        if (r->op == OP_REMOVE) {
            finish_op(r, PG_OK, PG_CONN_REMOVED, 0, NULL);
        } else {
            finish_op(r, PG_ERR_NOT_FOUND, PG_CONN_UNCHANGED, 0,
                      "no such account (never provisioned)");
        }
    } else if (strcmp(tag, "rejected") == 0) {
        snprintf(msg, sizeof(msg), "work item rejected by %.128s: %.256s",
                 el(rep, 1), el(rep, 2));
        finish_op(r, PG_ERR_DENIED, PG_CONN_UNCHANGED, 0, msg);
    } else if (strcmp(tag, "full") == 0) {
        finish_op(r, PG_ERR_BUSY, PG_CONN_UNCHANGED, 1,
                  "too many open work items");
    } else {
        finish_op(r, PG_ERR_REDIS, PG_CONN_UNCHANGED, 1,
                  "redis: unexpected script reply");
    }
}

/* Free r, then call its done callback once. */
static void
list_done(pg_conn_req_t *r, pg_status_t st, const char *error)
{
    pg_conn_done_cb done = r->done;
    void *arg = r->arg;

    req_free(r);
    done(arg, st, error);
}

static pg_status_t start_scan(pg_conn_req_t *r);

/* Deliver accounts of one HSCAN reply in pages; then continue or finish. */
static void
on_scan(pg_conn_req_t *r, const redisReply *rep)
{
    size_t n = rep->elements, i, cnt = 0, j;
    pg_listed_account_t *accts = NULL;
    json_t **recs = NULL, **descs = NULL;
    const char ***groups = NULL;
    pg_status_t st = PG_OK;
    int stop = 0;
    const char *cur = el(rep, 0);

    if (n < 1 || (n - 1) % 3 != 0 || strlen(cur) >= sizeof(r->cursor)) {
        list_done(r, PG_ERR_REDIS, "redis: unexpected scan reply");
        return;
    }
    snprintf(r->cursor, sizeof(r->cursor), "%s", cur);
    n = (n - 1) / 3;
    if (n > 0) {
        accts = calloc(n, sizeof(*accts));
        recs = calloc(n, sizeof(*recs));
        descs = calloc(n, sizeof(*descs));
        groups = calloc(n, sizeof(*groups));
        if (accts == NULL || recs == NULL || descs == NULL || groups == NULL) {
            st = PG_ERR_NOMEM;
            goto out;
        }
    }
    for (i = 0; i < n; i++) {
        const char *key = el(rep, 1 + 3 * i);
        json_t *dd, *ga, *g;
        uint64_t at;
        size_t k;

        if (key[0] == '\0' || strlen(key) > PG_CONN_KEY_MAX
            || json_object_get(r->seen, key) != NULL) {
            continue;   /* bad, or already listed by an earlier round */
        }
        if (json_object_set_new(r->seen, key, json_true()) != 0) {
            st = PG_ERR_NOMEM;
            goto out;
        }
        recs[cnt] = el_json(rep, 2 + 3 * i);
        if (recs[cnt] == NULL || !json_is_object(recs[cnt])) {
            json_decref(recs[cnt]);
            recs[cnt] = NULL;
            continue;   /* not ours: skip */
        }
        at = (uint64_t) json_number_value(json_object_get(recs[cnt],
                                                          "done_at"));
        if (r->since_ms > 0 && at < r->since_ms) {
            json_decref(recs[cnt]);
            recs[cnt] = NULL;
            continue;
        }
        descs[cnt] = el_json(rep, 3 + 3 * i);
        dd = json_object_get(descs[cnt], "desired");
        accts[cnt].key = key;
        accts[cnt].id = key;
        accts[cnt].active = json_is_true(json_object_get(recs[cnt],
                                                         "active"));
        accts[cnt].modified_ms = at;
        accts[cnt].attrs = json_object_get(dd, "attrs");
        if (!json_is_object(accts[cnt].attrs)) {
            /* an empty object owned by the record */
            json_object_set_new(recs[cnt], "__attrs", json_object());
            accts[cnt].attrs = json_object_get(recs[cnt], "__attrs");
        }
        ga = json_object_get(dd, "groups");
        if (json_array_size(ga) > 0) {
            groups[cnt] = calloc(json_array_size(ga), sizeof(char *));
            if (groups[cnt] == NULL) {
                st = PG_ERR_NOMEM;
                cnt++;
                goto out;
            }
            json_array_foreach(ga, k, g) {
                if (json_is_string(g)) {
                    groups[cnt][accts[cnt].ngroups++] = json_string_value(g);
                }
            }
            accts[cnt].groups = groups[cnt];
        }
        cnt++;
    }
    for (j = 0; j < cnt && !stop && !r->cancelled; j += PG_CONN_PAGE_MAX) {
        size_t m = cnt - j > PG_CONN_PAGE_MAX ? PG_CONN_PAGE_MAX : cnt - j;
        r->in_cb = 1;
        stop = r->page(r->arg, accts + j, m);
        r->in_cb = 0;
    }

out:
    for (i = 0; i < cnt; i++) {
        json_decref(recs[i]);
        json_decref(descs[i]);
        free((void *) groups[i]);
    }
    free(accts);
    free(recs);
    free(descs);
    free(groups);
    if (r->cancelled) {
        req_free(r);
        return;
    }
    if (st != PG_OK) {
        list_done(r, st, "out of memory");
        return;
    }
    if (stop) {
        list_done(r, PG_ERR_CANCELLED, "stopped by the caller");
        return;
    }
    if (strcmp(r->cursor, "0") == 0) {
        list_done(r, PG_OK, NULL);
        return;
    }
    st = start_scan(r);
    if (st != PG_OK) {
        list_done(r, st, "cannot send the next scan");
    }
}

/* Reply of lua_open: build the JSON array of open items. */
static void
on_open_items(pg_conn_req_t *r, const redisReply *rep)
{
    json_t *arr = json_array();
    size_t i;
    pg_manual_items_cb cb = r->items_cb;
    void *arg = r->arg;

    if (arr == NULL || rep->elements % 3 != 0) {
        json_decref(arr);
        req_free(r);
        cb(arg, arr == NULL ? PG_ERR_NOMEM : PG_ERR_REDIS, NULL,
           "unexpected reply");
        return;
    }
    for (i = 0; i + 2 < rep->elements; i += 3) {
        json_t *item = el_json(rep, i + 1);
        json_t *s = el_json(rep, i + 2);
        if (!json_is_object(item)) {
            json_decref(item);
            json_decref(s);
            continue;
        }
        json_object_set_new(item, "id", json_string(el(rep, i)));
        json_object_set(item, "status", json_object_get(s, "status"));
        json_object_set(item, "outcome", json_object_get(s, "outcome"));
        json_decref(s);
        json_array_append_new(arr, item);
    }
    req_free(r);
    cb(arg, PG_OK, arr, NULL);
    json_decref(arr);
}

/* Reply of lua_resolve: PG_OK, NOT_FOUND or CONFLICT. */
static void
on_resolve(pg_conn_req_t *r, const redisReply *rep)
{
    const char *tag = el(rep, 0);
    pg_manual_done_cb cb = r->resolve_cb;
    void *arg = r->arg;
    char msg[128];
    pg_status_t st;

    if (strcmp(tag, "ok") == 0) {
        st = PG_OK;
        msg[0] = '\0';
    } else if (strcmp(tag, "notfound") == 0) {
        st = PG_ERR_NOT_FOUND;
        snprintf(msg, sizeof(msg), "no such work item");
    } else if (strcmp(tag, "conflict") == 0) {
        st = PG_ERR_CONFLICT;
        snprintf(msg, sizeof(msg), "work item is %.32s, not open",
                 el(rep, 1));
    } else {
        st = PG_ERR_REDIS;
        snprintf(msg, sizeof(msg), "redis: unexpected script reply");
    }
    req_free(r);
    cb(arg, st, st == PG_OK ? NULL : msg);
}

/* Every Redis reply of this connector: errors first, then by op. */
static void
on_reply(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_conn_req_t *r = arg;
    char msg[PG_CONN_ERROR_MAX];
    pg_status_t est;

    r->rop = NULL;
    est = reply_error(st, reply, msg, sizeof(msg));
    if (est != PG_OK) {
        pg_log(r->c->base.host, PG_LOG_WARN, "manual target %s: %s",
               r->c->base.name, msg);
        switch (r->op) {
        case OP_LIST:
            list_done(r, est, msg);
            return;
        case OP_LIST_OPEN: {
            pg_manual_items_cb cb = r->items_cb;
            void *a = r->arg;
            req_free(r);
            cb(a, est, NULL, msg);
            return;
        }
        case OP_RESOLVE: {
            pg_manual_done_cb cb = r->resolve_cb;
            void *a = r->arg;
            req_free(r);
            cb(a, est, msg);
            return;
        }
        default:
            finish_op(r, est, PG_CONN_UNCHANGED, 1, msg);
            return;
        }
    }
    switch (r->op) {
    case OP_LIST:
        on_scan(r, reply);
        break;
    case OP_LIST_OPEN:
        on_open_items(r, reply);
        break;
    case OP_RESOLVE:
        on_resolve(r, reply);
        break;
    default:
        on_apply(r, reply);
        break;
    }
}

/* ---- vtable --------------------------------------------------------- */

/* 1 for a non-empty account key of at most PG_CONN_KEY_MAX bytes. */
static int
key_ok(const char *k)
{
    return k != NULL && k[0] != '\0' && strlen(k) <= PG_CONN_KEY_MAX;
}

/* Build the item for op on a, and EVAL lua_apply. */
static pg_status_t
manual_op(pg_connector_t *base, int op, const pg_account_t *a, pg_conn_cb cb,
          void *arg, pg_conn_req_t **req_out)
{
    manual_conn_t *c = (manual_conn_t *) base;
    json_t *desired, *item;
    char id[64], now[24], maxo[16];
    char summary[MAN_SUMMARY_MAX];
    char *desc;
    pg_conn_req_t *r;
    pg_status_t st;
    uint64_t t = wall_ms();

    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (a == NULL || cb == NULL || !key_ok(a->key)) {
        return PG_ERR_INVALID;
    }
    desired = desired_of(op, a);
    if (desired == NULL) {
        return PG_ERR_INVALID;
    }
    st = item_id(c, op, a->key, desired, id, sizeof(id));
    if (st != PG_OK) {
        json_decref(desired);
        return st;
    }
    summary_of(c, op, a, desired, summary, sizeof(summary));
    item = json_pack("{s:s,s:s,s:s,s:s?,s:o,s:s,s:s?,s:I}",
                     "target", c->base.name, "op", op_name(op),
                     "key", a->key, "identity", a->identity,
                     "desired", desired, "summary", summary,
                     "instructions", c->instructions,
                     "created_ms", (json_int_t) t);
    if (item == NULL) {
        return PG_ERR_NOMEM;
    }
    desc = json_dumps(item, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(item);
    if (desc == NULL) {
        return PG_ERR_NOMEM;
    }
    if (strlen(desc) > MAN_DESC_MAX) {
        free(desc);
        return PG_ERR_TOO_LARGE;
    }
    r = req_new(c, op, arg);
    if (r == NULL) {
        free(desc);
        return PG_ERR_NOMEM;
    }
    r->cb = cb;
    snprintf(r->key, sizeof(r->key), "%s", a->key);
    snprintf(now, sizeof(now), "%llu", (unsigned long long) t);
    snprintf(maxo, sizeof(maxo), "%u", c->max_open);
    {
        const char *args[] = { id, desc, a->key, now, op_name(op), maxo };
        st = eval(r, lua_apply, all_keys, K_N, args, NULL, 6);
    }
    free(desc);
    if (st != PG_OK) {
        req_free(r);
        return st;
    }
    if (req_out != NULL) {
        *req_out = r;
    }
    return PG_OK;
}

/* vtable ensure (see connector.h and manualconn.h). */
static pg_status_t
manual_ensure(pg_connector_t *c, const pg_account_t *a, pg_conn_cb cb,
              void *arg, pg_conn_req_t **req_out)
{
    return manual_op(c, OP_ENSURE, a, cb, arg, req_out);
}

/* vtable disable. */
static pg_status_t
manual_disable(pg_connector_t *c, const pg_account_t *a, pg_conn_cb cb,
               void *arg, pg_conn_req_t **req_out)
{
    return manual_op(c, OP_DISABLE, a, cb, arg, req_out);
}

/* vtable remove. */
static pg_status_t
manual_remove(pg_connector_t *c, const pg_account_t *a, pg_conn_cb cb,
              void *arg, pg_conn_req_t **req_out)
{
    return manual_op(c, OP_REMOVE, a, cb, arg, req_out);
}

/* Send the next HSCAN round (lua_scan) from r->cursor. */
static pg_status_t
start_scan(pg_conn_req_t *r)
{
    static const int keys[] = { K_ITEMS, K_ACCTS };
    const char *args[] = { r->cursor, MAN_SCAN_COUNT };

    return eval(r, lua_scan, keys, 2, args, NULL, 2);
}

/* list(): the accounts whose work items are done (the recorded state);
 * since_ms > 0 keeps those resolved at or after since_ms (wall clock). */
static pg_status_t
manual_list(pg_connector_t *base, uint64_t since_ms, pg_conn_page_cb page,
            pg_conn_done_cb done, void *arg, pg_conn_req_t **req_out)
{
    pg_conn_req_t *r;
    pg_status_t st;

    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (page == NULL || done == NULL) {
        return PG_ERR_INVALID;
    }
    r = req_new((manual_conn_t *) base, OP_LIST, arg);
    if (r == NULL) {
        return PG_ERR_NOMEM;
    }
    r->page = page;
    r->done = done;
    r->since_ms = since_ms;
    r->seen = json_object();
    if (r->seen == NULL) {
        req_free(r);
        return PG_ERR_NOMEM;
    }
    snprintf(r->cursor, sizeof(r->cursor), "0");
    st = start_scan(r);
    if (st != PG_OK) {
        req_free(r);
        return st;
    }
    if (req_out != NULL) {
        *req_out = r;
    }
    return PG_OK;
}

/* cancel(): no callback runs afterwards; safe inside a page callback. */
static void
manual_cancel(pg_conn_req_t *r)
{
    if (r == NULL) {
        return;
    }
    if (r->in_cb) {
        r->cancelled = 1;
        return;
    }
    if (r->rop != NULL) {
        pg_redis_cancel(r->rop);
    }
    req_free(r);
}

/* vtable free: cancels pending Redis ops (no callbacks). */
static void
manual_free(pg_connector_t *base)
{
    manual_conn_t *c = (manual_conn_t *) base;
    int i;

    while (c->reqs != NULL) {
        if (c->reqs->rop != NULL) {
            pg_redis_cancel(c->reqs->rop);
        }
        req_free(c->reqs);
    }
    for (i = 0; i < K_N; i++) {
        free(c->keys[i]);
    }
    free(c->instructions);
    free(c->base.name);
    free(c);
}

static const pg_connector_vt_t manual_vt = {
    "manual", manual_ensure, manual_disable, manual_remove, manual_list,
    manual_cancel, manual_free
};

/* ---- admin ---------------------------------------------------------- */

/* Contract: see manualconn.h. */
pg_status_t
pg_manual_list_open(pg_connector_t *base, size_t limit, pg_manual_items_cb cb,
                    void *arg, pg_conn_req_t **req_out)
{
    static const int keys[] = { K_ITEMS, K_STATUS, K_OPEN };
    pg_conn_req_t *r;
    char lim[16];
    const char *args[1];
    pg_status_t st;

    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (base == NULL || base->vt != &manual_vt || cb == NULL || limit == 0
        || limit > PG_MANUAL_LIST_MAX) {
        return PG_ERR_INVALID;
    }
    r = req_new((manual_conn_t *) base, OP_LIST_OPEN, arg);
    if (r == NULL) {
        return PG_ERR_NOMEM;
    }
    r->items_cb = cb;
    snprintf(lim, sizeof(lim), "%zu", limit);
    args[0] = lim;
    st = eval(r, lua_open, keys, 3, args, NULL, 1);
    if (st != PG_OK) {
        req_free(r);
        return st;
    }
    if (req_out != NULL) {
        *req_out = r;
    }
    return PG_OK;
}

/* Shared body of mark_done / reject (verdict "done" / "rejected"). */
static pg_status_t
resolve(pg_connector_t *base, const char *item_id, const char *by,
        const char *note, const char *verdict, pg_manual_done_cb cb,
        void *arg, pg_conn_req_t **req_out)
{
    pg_conn_req_t *r;
    char now[24];
    pg_status_t st;

    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (note == NULL) {
        note = "";
    }
    if (base == NULL || base->vt != &manual_vt || cb == NULL
        || item_id == NULL || item_id[0] == '\0'
        || strlen(item_id) > PG_MANUAL_ID_MAX || by == NULL || by[0] == '\0'
        || strlen(by) > PG_MANUAL_NOTE_MAX
        || strlen(note) > PG_MANUAL_NOTE_MAX) {
        return PG_ERR_INVALID;
    }
    r = req_new((manual_conn_t *) base, OP_RESOLVE, arg);
    if (r == NULL) {
        return PG_ERR_NOMEM;
    }
    r->resolve_cb = cb;
    snprintf(now, sizeof(now), "%llu", (unsigned long long) wall_ms());
    {
        const char *args[] = { item_id, by, note, now, verdict };
        st = eval(r, lua_resolve, all_keys, K_N, args, NULL, 5);
    }
    if (st != PG_OK) {
        req_free(r);
        return st;
    }
    if (req_out != NULL) {
        *req_out = r;
    }
    return PG_OK;
}

/* Contract: see manualconn.h. */
pg_status_t
pg_manual_mark_done(pg_connector_t *c, const char *item_id, const char *by,
                    const char *note, pg_manual_done_cb cb, void *arg,
                    pg_conn_req_t **req_out)
{
    return resolve(c, item_id, by, note, "done", cb, arg, req_out);
}

/* Contract: see manualconn.h. */
pg_status_t
pg_manual_reject(pg_connector_t *c, const char *item_id, const char *by,
                 const char *note, pg_manual_done_cb cb, void *arg,
                 pg_conn_req_t **req_out)
{
    return resolve(c, item_id, by, note, "rejected", cb, arg, req_out);
}

/* Contract: see manualconn.h. */
pg_status_t
pg_manual_item_id(const pg_connector_t *base, const char *op,
                  const pg_account_t *a, char *out, size_t outsz)
{
    int o;
    json_t *d;
    pg_status_t st;

    if (base == NULL || base->vt != &manual_vt || op == NULL || a == NULL
        || !key_ok(a->key) || out == NULL) {
        return PG_ERR_INVALID;
    }
    if (strcmp(op, "ensure") == 0) {
        o = OP_ENSURE;
    } else if (strcmp(op, "disable") == 0) {
        o = OP_DISABLE;
    } else if (strcmp(op, "remove") == 0) {
        o = OP_REMOVE;
    } else {
        return PG_ERR_INVALID;
    }
    d = desired_of(o, a);
    if (d == NULL) {
        return PG_ERR_INVALID;
    }
    st = item_id((const manual_conn_t *) base, o, a->key, d, out, outsz);
    json_decref(d);
    return st;
}

/* ---- constructor ---------------------------------------------------- */

/*
 * Errors are built as "connector.<key>: ..." / "connector: ..."; replace
 * that leading "connector" by the caller's JSON path (e.g.
 * "targets.payroll.connector"). Truncated at PG_ERR_MSG_MAX.
 */
static void
err_at(pg_err_t *err, const char *path)
{
    char tmp[PG_ERR_MSG_MAX];

    if (err == NULL || path == NULL || strncmp(err->msg, "connector", 9) != 0
        || (err->msg[9] != '.' && err->msg[9] != ':')) {
        return;
    }
    snprintf(tmp, sizeof(tmp), "%s", err->msg + 9);
    pg_err_set(err, "%s%s", path, tmp);
}

/* The constructor proper; errors name the path "connector". */
static pg_status_t
manual_new(const pg_host_t *host, pg_redis_t *redis, const char *prefix,
           const char *name, const json_t *cfg, pg_connector_t **out,
           pg_err_t *err)
{
    static const char *const allowed[] = {
        "type", "instructions", "max_open", "timeout_ms", NULL
    };
    static const char *const sfx[K_N] = {
        "items", "status", "open", "pending", "accts"
    };
    manual_conn_t *c;
    const char *s;
    pg_status_t st;
    int i;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    if (host == NULL || redis == NULL || name == NULL || name[0] == '\0'
        || strlen(name) > 128 || strpbrk(name, ":{} \r\n") != NULL) {
        pg_err_set(err, "connector: host, redis and a target name without "
                   "':', braces or spaces are required");
        return PG_ERR_INVALID;
    }
    if (prefix == NULL) {
        prefix = pg_redis_prefix(redis);
    }
    st = pg_conn_cfg_known(cfg, "connector", allowed, err);
    if (st != PG_OK) {
        return st;
    }
    st = pg_conn_cfg_str(cfg, "connector", "type", 0, &s, err);
    if (st != PG_OK) {
        return st;
    }
    if (s != NULL && strcmp(s, "manual") != 0) {
        pg_err_set(err, "connector.type: must be \"manual\"");
        return PG_ERR_CONFIG;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return PG_ERR_NOMEM;
    }
    c->base.vt = &manual_vt;
    c->base.host = host;
    c->base.caps = PG_CONN_CAP_LIST | PG_CONN_CAP_INCREMENTAL
                   | PG_CONN_CAP_GROUPS | PG_CONN_CAP_DISABLE;
    c->redis = redis;
    c->base.name = strdup(name);
    if (c->base.name == NULL) {
        goto nomem;
    }
    st = pg_conn_cfg_str(cfg, "connector", "instructions", 0, &s, err);
    if (st == PG_OK && s != NULL && strlen(s) > MAN_INSTR_MAX) {
        pg_err_set(err, "connector.instructions: at most %d bytes",
                   MAN_INSTR_MAX);
        st = PG_ERR_CONFIG;
    }
    if (st == PG_OK && s != NULL) {
        c->instructions = strdup(s);
        if (c->instructions == NULL) {
            goto nomem;
        }
    }
    if (st == PG_OK) {
        st = pg_conn_cfg_uint(cfg, "connector", "max_open", 1, 1000000, 10000,
                              &c->max_open, err);
    }
    if (st == PG_OK) {
        st = pg_conn_cfg_uint(cfg, "connector", "timeout_ms", 0, 60000, 0,
                              &c->timeout_ms, err);
    }
    if (st != PG_OK) {
        manual_free(&c->base);
        return st;
    }
    for (i = 0; i < K_N; i++) {
        size_t n = strlen(prefix) + strlen(name) + 32;
        c->keys[i] = malloc(n);
        if (c->keys[i] == NULL) {
            goto nomem;
        }
        snprintf(c->keys[i], n, "%smanual:%s:%s", prefix, name, sfx[i]);
    }
    *out = &c->base;
    return PG_OK;

nomem:
    pg_err_set(err, "connector: out of memory");
    manual_free(&c->base);
    return PG_ERR_NOMEM;
}

/* Contract: see manualconn.h. */
pg_status_t
pg_manual_connector_new_at(const pg_host_t *host, pg_redis_t *redis,
                           const char *prefix, const char *name,
                           const json_t *cfg, const char *path,
                           pg_connector_t **out, pg_err_t *err)
{
    pg_status_t st = manual_new(host, redis, prefix, name, cfg, out, err);

    if (st != PG_OK) {
        err_at(err, path);
    }
    return st;
}

/* Contract: see manualconn.h. */
pg_status_t
pg_manual_connector_new(const pg_host_t *host, pg_redis_t *redis,
                        const char *prefix, const char *name,
                        const json_t *cfg, pg_connector_t **out,
                        pg_err_t *err)
{
    char path[PG_ERR_MSG_MAX];

    snprintf(path, sizeof(path), "targets.%.200s.connector",
             name != NULL ? name : "?");
    return pg_manual_connector_new_at(host, redis, prefix, name, cfg, path,
                                      out, err);
}
