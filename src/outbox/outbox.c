/*
 * provgate core: durable provisioning outbox on Redis Streams.
 * See include/provgate/outbox.h for the API and docs/outbox.md for the
 * design. Keys (P = the client's key prefix):
 *
 *   P outbox                 stream of pending operations (consumer group)
 *   P outbox:key:<idem>      idempotency key -> current entry id (TTL)
 *   P outbox:delayed         ZSET of retries: score = due ms (Redis time),
 *                            member = the entry as JSON
 *   P outbox:dead            stream of dead letters
 *   P outbox:status:<idem>   per-operation status stream (TTL), fields
 *                            status=retry|done|failed, attempt, error, id
 *   P outbox:rate:<target>   token bucket hash {tokens, ts} (PEXPIRE)
 *   P outbox:events          stream of terminal outcomes (MAXLEN ~10000),
 *                            fields idem, status=done|failed, error: one
 *                            reader per process wakes all its waiters
 *
 * Every multi-key change is one Lua script (EVAL), so each transition
 * (enqueue, finish, promote, dead-letter moves) is atomic in Redis.
 * Scripts touch keys derived from the prefix that are not all declared in
 * KEYS: fine on a single Redis; on a cluster the prefix needs a hash tag,
 * e.g. "{pg}:" (see docs/outbox.md).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include "provgate/outbox.h"
#include "provgate/util.h"

#define OB_MAX_ARGS   40  /* finish uses 32 */
#define OB_WAIT_SLACK_MS 2000u   /* op timeout beyond a BLOCK time */
#define OB_ENTRY_FIELDS_MAX 64  /* field/value pairs read per entry */

/* ---- Lua scripts ---------------------------------------------------- */

/* Redis server time in ms as an integer string. */
#define LUA_NOW \
    "local t = redis.call('TIME')\n" \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

/*
 * KEYS: stream, key:<idem>, status:<idem>
 * ARGV: dedup ttl s, group, own consumer ("" = none), then field/value
 *       pairs (created_ms is appended).
 * -> {1, new id} or {0, existing id}, or {1, new id, entry} when the new
 *    entry was delivered to the own consumer: only when the group exists
 *    and nothing before the entry is undelivered, so the XREADGROUP ">"
 *    returns exactly this entry and no one else's.
 */
static const char LUA_ENQUEUE[] =
    "if not redis.call('SET', KEYS[2], '-', 'NX', 'EX', ARGV[1]) then\n"
    "  return {0, redis.call('GET', KEYS[2])}\n"
    "end\n"
    LUA_NOW
    "local f = {}\n"
    "for i = 4, #ARGV do f[#f + 1] = ARGV[i] end\n"
    "f[#f + 1] = 'created_ms'\n"
    "f[#f + 1] = string.format('%.0f', now)\n"
    "local id = redis.call('XADD', KEYS[1], '*', unpack(f))\n"
    "redis.call('SET', KEYS[2], id, 'KEEPTTL')\n"
    "redis.call('DEL', KEYS[3])\n"
    "if ARGV[3] ~= '' then\n"
    "  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do\n"
    "    local name, last\n"
    "    for i = 1, #g - 1, 2 do\n"
    "      if g[i] == 'name' then name = g[i + 1]\n"
    "      elseif g[i] == 'last-delivered-id' then last = g[i + 1] end\n"
    "    end\n"
    "    if name == ARGV[2] and last then\n"
    "      local nx = redis.call('XRANGE', KEYS[1], '(' .. last, '+',\n"
    "                            'COUNT', 1)\n"
    "      if #nx == 1 and nx[1][1] == id then\n"
    "        local r = redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3],\n"
    "                             'COUNT', 1, 'STREAMS', KEYS[1], '>')\n"
    "        if r and r[1] and r[1][2][1] and r[1][2][1][1] == id then\n"
    "          return {1, id, r[1][2][1]}\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return {1, id}\n";

/*
 * Finish one delivered entry.
 * KEYS: stream, delayed, dead, key:<idem>, status:<idem>
 * ARGV: group, id, mode (done|retry|dead), status ttl s, delay ms, error,
 *       attempts, retry member JSON, then the entry's field/value pairs.
 * -> {0, ''} when the entry was not pending (lost race), else
 *    {1, ''} done, {1, due ms} retry, {1, dead id} dead.
 */
static const char LUA_FINISH[] =
    "if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then\n"
    "  return {0, ''}\n"
    "end\n"
    "redis.call('XDEL', KEYS[1], ARGV[2])\n"
    "local st, res = 'done', ''\n"
    "if ARGV[3] == 'retry' then\n"
    LUA_NOW
    "  local due = now + tonumber(ARGV[5])\n"
    "  redis.call('ZADD', KEYS[2], due, ARGV[8])\n"
    "  st, res = 'retry', string.format('%.0f', due)\n"
    "elseif ARGV[3] == 'dead' then\n"
    LUA_NOW
    "  local f = {}\n"
    "  for i = 9, #ARGV do f[#f + 1] = ARGV[i] end\n"
    "  f[#f + 1] = 'reason'; f[#f + 1] = ARGV[6]\n"
    "  f[#f + 1] = 'orig_id'; f[#f + 1] = ARGV[2]\n"
    "  f[#f + 1] = 'dead_ms'; f[#f + 1] = string.format('%.0f', now)\n"
    "  res = redis.call('XADD', KEYS[3], '*', unpack(f))\n"
    "  redis.call('DEL', KEYS[4])\n"
    "  st = 'failed'\n"
    "end\n"
    "redis.call('XADD', KEYS[5], 'MAXLEN', '~', '32', '*', 'status', st,\n"
    "           'attempt', ARGV[7], 'error', ARGV[6], 'id', ARGV[2])\n"
    "redis.call('EXPIRE', KEYS[5], ARGV[4])\n"
    "if st == 'done' and string.sub(ARGV[10], 1, 5) == 'live:' then\n"
    "  redis.call('DEL', KEYS[4])\n"
    "end\n"
    "if st ~= 'retry' then\n"
    "  redis.call('XADD', KEYS[1] .. ':events', 'MAXLEN', '~', '10000', '*',\n"
    "             'idem', ARGV[10], 'status', st, 'error', ARGV[6])\n"
    "end\n"
    "return {1, res}\n";

/*
 * Move due retries back into the stream.
 * KEYS: stream, delayed. ARGV: key prefix ("P outbox:key:"), max count.
 * -> number moved. Undecodable members are dropped.
 */
static const char LUA_PROMOTE[] =
    LUA_NOW
    "local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now,\n"
    "                       'LIMIT', 0, tonumber(ARGV[2]))\n"
    "local n = 0\n"
    "for _, m in ipairs(due) do\n"
    "  redis.call('ZREM', KEYS[2], m)\n"
    "  local ok, e = pcall(cjson.decode, m)\n"
    "  if ok and type(e) == 'table' and type(e.idem) == 'string' then\n"
    "    local function s(v) if type(v) == 'string' then return v end\n"
    "      return '' end\n"
    "    local id = redis.call('XADD', KEYS[1], '*', 'idem', e.idem,\n"
    "      'identity', s(e.identity), 'target', s(e.target),\n"
    "      'kind', s(e.kind), 'state', s(e.state), 'attempt', s(e.attempt),\n"
    "      'last_error', s(e.last_error), 'created_ms', s(e.created_ms))\n"
    "    redis.call('SET', ARGV[1] .. e.idem, id, 'XX', 'KEEPTTL')\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "return n\n";

/*
 * Dead letter back into the outbox (attempt 0).
 * KEYS: dead, stream. ARGV: prefix ("P outbox:"), dead id, dedup ttl s.
 * -> {0} not found, {2, existing id, idem, reason} conflict,
 *    {1, new id, idem, reason}
 */
static const char LUA_DEAD_RETRY[] =
    "local r = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])\n"
    "if #r == 0 then return {0} end\n"
    "local f, h = r[1][2], {}\n"
    "for i = 1, #f, 2 do h[f[i]] = f[i + 1] end\n"
    "local idem = h.idem or ''\n"
    "local kk = ARGV[1] .. 'key:' .. idem\n"
    "if not redis.call('SET', kk, '-', 'NX', 'EX', ARGV[3]) then\n"
    "  return {2, redis.call('GET', kk), idem, h.reason or ''}\n"
    "end\n"
    "redis.call('XDEL', KEYS[1], ARGV[2])\n"
    "local id = redis.call('XADD', KEYS[2], '*', 'idem', idem,\n"
    "  'identity', h.identity or '', 'target', h.target or '',\n"
    "  'kind', h.kind or '', 'state', h.state or '', 'attempt', '0',\n"
    "  'last_error', h.reason or '', 'created_ms', h.created_ms or '0')\n"
    "redis.call('SET', kk, id, 'KEEPTTL')\n"
    "redis.call('DEL', ARGV[1] .. 'status:' .. idem)\n"
    "return {1, id, idem, h.reason or ''}\n";

/*
 * KEYS: dead. ARGV: dead id. -> {0} not found, {1, idem, reason}
 */
static const char LUA_DEAD_DISCARD[] =
    "local r = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])\n"
    "if #r == 0 then return {0} end\n"
    "local f, h = r[1][2], {}\n"
    "for i = 1, #f, 2 do h[f[i]] = f[i + 1] end\n"
    "redis.call('XDEL', KEYS[1], ARGV[1])\n"
    "return {1, h.idem or '', h.reason or ''}\n";

/*
 * Token bucket. KEYS: bucket. ARGV: capacity, refill tokens/s, n.
 * -> {allowed 0|1, wait ms, whole tokens left}
 */
static const char LUA_RATE[] =
    LUA_NOW
    "local cap, rate, n = tonumber(ARGV[1]), tonumber(ARGV[2]),\n"
    "                     tonumber(ARGV[3])\n"
    "local h = redis.call('HMGET', KEYS[1], 'tokens', 'ts')\n"
    "local tokens, ts = tonumber(h[1]), tonumber(h[2])\n"
    "if tokens == nil or ts == nil then tokens, ts = cap, now end\n"
    "if now > ts then\n"
    "  tokens = math.min(cap, tokens + (now - ts) * rate / 1000)\n"
    "  ts = now\n"
    "end\n"
    "local allowed, wait = 0, 0\n"
    "if tokens >= n then\n"
    "  tokens = tokens - n\n"
    "  allowed = 1\n"
    "else\n"
    "  wait = math.ceil((n - tokens) * 1000 / rate)\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),\n"
    "           'ts', string.format('%.0f', ts))\n"
    "redis.call('PEXPIRE', KEYS[1], math.ceil(cap * 1000 / rate) + 1000)\n"
    "return {allowed, wait, math.floor(tokens)}\n";

/* ---- argv builder --------------------------------------------------- */

/* A bounded argv for one command; numbers are formatted into nums[]. */
typedef struct argvb {
    const char *v[OB_MAX_ARGS];
    size_t l[OB_MAX_ARGS];
    int n;
    int overflow;
    char nums[8][24];
    int nn;
} argvb_t;

/* Append s[0..len) (not copied: must live until the command is sent). */
static void
ab_add(argvb_t *a, const char *s, size_t len)
{
    if (a->n >= OB_MAX_ARGS) {
        a->overflow = 1;
        return;
    }
    a->v[a->n] = s;
    a->l[a->n] = len;
    a->n++;
}

static void
ab_str(argvb_t *a, const char *s)
{
    ab_add(a, s, strlen(s));
}

/* Append a decimal number (formatted into a->nums). */
static void
ab_num(argvb_t *a, uint64_t v)
{
    int k;

    if (a->nn >= 8) {
        a->overflow = 1;
        return;
    }
    k = snprintf(a->nums[a->nn], sizeof(a->nums[0]), "%llu",
                 (unsigned long long)v);
    ab_add(a, a->nums[a->nn], (size_t)k);
    a->nn++;
}

/* Send the built command. PG_ERR_INTERNAL if the builder overflowed. */
static pg_status_t
ab_send(pg_redis_t *r, argvb_t *a, unsigned timeout_ms, pg_redis_cb cb,
        void *arg, pg_redis_op_t **op)
{
    if (a->overflow) {
        return PG_ERR_INTERNAL;
    }
    return pg_redis_command(r, a->n, a->v, a->l, timeout_ms, cb, arg, op);
}

/* "EVAL script numkeys" prefix. */
static void
ab_eval(argvb_t *a, const char *script, size_t slen, unsigned nkeys)
{
    memset(a, 0, sizeof(*a));
    ab_add(a, "EVAL", 4);
    ab_add(a, script, slen);
    ab_num(a, nkeys);
}

/* malloc'd P outbox<mid><tail>; NULL on OOM. */
static char *
mkkey(const pg_redis_t *r, const char *mid, const char *tail)
{
    const char *p = pg_redis_prefix(r);
    size_t n = strlen(p) + 6 + strlen(mid) + strlen(tail) + 1;
    char *k = malloc(n);

    if (k != NULL) {
        snprintf(k, n, "%soutbox%s%s", p, mid, tail);
    }
    return k;
}

/* ---- validation and reply helpers ----------------------------------- */

/* 1 when s is a usable idempotency key: [A-Za-z0-9._:@-], 1..128 chars. */
static int
idem_ok(const char *s)
{
    size_t i, n = s ? strlen(s) : 0;

    if (n == 0 || n > PG_OUTBOX_IDEM_MAX) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' ||
              ch == ':' || ch == '@' || ch == '-')) {
            return 0;
        }
    }
    return 1;
}

/* 1 when s looks like a stream id "ms-seq" (digits, one '-'), capped. */
static int
id_ok(const char *s)
{
    size_t i, n = s ? strlen(s) : 0;
    int dash = 0;

    if (n < 3 || n > PG_OUTBOX_ID_MAX) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (s[i] == '-') {
            if (dash++ || i == 0 || i == n - 1) {
                return 0;
            }
        } else if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
    }
    return dash == 1;
}

/* 1 when s is a bounded, non-empty text field. */
static int
field_ok(const char *s)
{
    return s != NULL && s[0] != '\0' && strlen(s) <= PG_OUTBOX_FIELD_MAX;
}

/* String-ish element of a reply (string or status); NULL otherwise. */
static const redisReply *
rep_str(const redisReply *r)
{
    if (r != NULL && (r->type == REDIS_REPLY_STRING ||
                      r->type == REDIS_REPLY_STATUS) && r->str != NULL) {
        return r;
    }
    return NULL;
}

/* Copy a string reply (capped at cap bytes) into a malloc'd string. */
static pg_status_t
rep_dup(const redisReply *r, size_t cap, char **out)
{
    *out = NULL;
    if (rep_str(r) == NULL) {
        return PG_ERR_INVALID;
    }
    if (r->len > cap) {
        return PG_ERR_TOO_LARGE;
    }
    *out = malloc(r->len + 1);
    if (*out == NULL) {
        return PG_ERR_NOMEM;
    }
    memcpy(*out, r->str, r->len);
    (*out)[r->len] = '\0';
    return PG_OK;
}

/* Copy a string reply into a fixed buffer; PG_ERR_TOO_LARGE if it does
 * not fit (outsz includes the NUL). */
static pg_status_t
rep_copy(const redisReply *r, char *out, size_t outsz)
{
    if (rep_str(r) == NULL) {
        return PG_ERR_INVALID;
    }
    if (r->len >= outsz) {
        return PG_ERR_TOO_LARGE;
    }
    memcpy(out, r->str, r->len);
    out[r->len] = '\0';
    return PG_OK;
}

/* Reply integer (integer reply, or a decimal string). -1 if neither. */
static long long
rep_int(const redisReply *r)
{
    uint64_t v;

    if (r == NULL) {
        return -1;
    }
    if (r->type == REDIS_REPLY_INTEGER) {
        return r->integer;
    }
    if (rep_str(r) && pg_parse_u64(r->str, r->len, &v) == PG_OK &&
        v < (uint64_t)INT64_MAX) {
        return (long long)v;
    }
    return -1;
}

static int
rep_is(const redisReply *r, const char *s)
{
    size_t n = strlen(s);
    return rep_str(r) && r->len == n && memcmp(r->str, s, n) == 0;
}

/* ---- entries -------------------------------------------------------- */

/* An entry with owned strings (every pointer NULL or malloc'd). */
typedef struct ent {
    char *id, *idem, *identity, *target, *kind, *state, *last_error;
    char *reason, *orig_id;
    unsigned attempt;
    uint64_t created_ms, dead_ms;
    int reclaimed;
    int own;
} ent_t;

static void
ent_clear(ent_t *e)
{
    free(e->id);
    free(e->idem);
    free(e->identity);
    free(e->target);
    free(e->kind);
    free(e->state);
    free(e->last_error);
    free(e->reason);
    free(e->orig_id);
    memset(e, 0, sizeof(*e));
}

/* The read-only view of e handed to callers ("" for absent strings). */
static void
ent_view(const ent_t *e, pg_outbox_entry_t *v)
{
#define S(x) ((x) != NULL ? (x) : "")
    v->id = S(e->id);
    v->idem = S(e->idem);
    v->identity = S(e->identity);
    v->target = S(e->target);
    v->kind = S(e->kind);
    v->state = S(e->state);
    v->attempt = e->attempt;
    v->last_error = S(e->last_error);
    v->created_ms = e->created_ms;
    v->reclaimed = e->reclaimed;
    v->own = e->own;
    v->reason = S(e->reason);
    v->orig_id = S(e->orig_id);
    v->dead_ms = e->dead_ms;
#undef S
}

/* Decimal field -> u64 (0 when malformed). */
static uint64_t
rep_u64(const redisReply *r)
{
    uint64_t v = 0;

    if (rep_str(r) == NULL || pg_parse_u64(r->str, r->len, &v) != PG_OK) {
        return 0;
    }
    return v;
}

/*
 * Parse one stream entry reply [id, [f, v, ...]] into e (cleared first).
 * Unknown fields are ignored; every value is capped (PG_ERR_TOO_LARGE).
 * PG_ERR_INVALID when the shape is wrong or the id/idem is missing;
 * e->id is set whenever the id itself was readable (so the caller can
 * still finish a malformed entry).
 */
static pg_status_t
ent_parse(const redisReply *el, ent_t *e)
{
    const redisReply *f;
    pg_status_t st = PG_OK;
    size_t i;

    memset(e, 0, sizeof(*e));
    if (el == NULL || el->type != REDIS_REPLY_ARRAY || el->elements != 2) {
        return PG_ERR_INVALID;
    }
    if (rep_str(el->element[0]) == NULL ||
        el->element[0]->len > PG_OUTBOX_ID_MAX) {
        return PG_ERR_INVALID;
    }
    st = rep_dup(el->element[0], PG_OUTBOX_ID_MAX, &e->id);
    if (st != PG_OK) {
        return st;
    }
    f = el->element[1];
    if (f == NULL || f->type != REDIS_REPLY_ARRAY || f->elements % 2 != 0 ||
        f->elements > 2 * OB_ENTRY_FIELDS_MAX) {
        return PG_ERR_INVALID;
    }
    for (i = 0; i + 1 < f->elements && st == PG_OK; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        char **dst = NULL;
        size_t cap = PG_OUTBOX_FIELD_MAX;

        if (rep_str(k) == NULL || rep_str(v) == NULL) {
            return PG_ERR_INVALID;
        }
        if (rep_is(k, "idem")) {
            dst = &e->idem;
            cap = PG_OUTBOX_IDEM_MAX;
        } else if (rep_is(k, "identity")) {
            dst = &e->identity;
        } else if (rep_is(k, "target")) {
            dst = &e->target;
        } else if (rep_is(k, "kind")) {
            dst = &e->kind;
        } else if (rep_is(k, "state")) {
            dst = &e->state;
            cap = PG_OUTBOX_STATE_MAX;
        } else if (rep_is(k, "last_error")) {
            dst = &e->last_error;
        } else if (rep_is(k, "reason")) {
            dst = &e->reason;
        } else if (rep_is(k, "orig_id")) {
            dst = &e->orig_id;
            cap = PG_OUTBOX_ID_MAX;
        } else if (rep_is(k, "attempt")) {
            uint64_t a = rep_u64(v);
            e->attempt = a > 1000000 ? 1000000 : (unsigned)a;
        } else if (rep_is(k, "created_ms")) {
            e->created_ms = rep_u64(v);
        } else if (rep_is(k, "dead_ms")) {
            e->dead_ms = rep_u64(v);
        }
        if (dst != NULL) {
            free(*dst);
            *dst = NULL;
            st = rep_dup(v, cap, dst);
        }
    }
    if (st == PG_OK && (e->idem == NULL || !idem_ok(e->idem))) {
        st = PG_ERR_INVALID;
    }
    return st;
}

/* ---- requests ------------------------------------------------------- */

enum { RQ_ENQUEUE, RQ_WAIT, RQ_LIST, RQ_DEAD_RETRY, RQ_DISCARD, RQ_RATE };

struct pg_outbox_req {
    int kind;
    pg_redis_t *r;
    pg_redis_op_t *op;
    void *arg;
    union {
        pg_outbox_enqueue_cb enqueue;
        pg_outbox_wait_cb wait;
        pg_outbox_list_cb list;
        pg_outbox_move_cb move;
        pg_outbox_rate_cb rate;
    } cb;
    char idem[PG_OUTBOX_IDEM_MAX + 1];
    char id[PG_OUTBOX_ID_MAX + 1];  /* dead id, or wait: last status id */
    /* wait */
    const pg_host_t *host;
    char *key;
    uint64_t deadline;
    unsigned attempts;
    char error[PG_OUTBOX_FIELD_MAX + 1];
    /* enqueue with op->own: the consumer (NULL once it was freed) */
    pg_outbox_consumer_t *own;
    pg_outbox_req_t *own_prev, *own_next;   /* own->own_reqs */
};

static void own_detach(pg_outbox_req_t *q);
static pg_outbox_job_t *own_take(pg_outbox_consumer_t *c, pg_redis_t *fr,
                                 const redisReply *el);
static void own_dispatch(pg_outbox_consumer_t *c, pg_outbox_job_t *j);
static void own_enter(pg_outbox_consumer_t *c);
static void own_leave(pg_outbox_consumer_t *c);
static void own_attach(pg_outbox_consumer_t *c, pg_outbox_req_t *q);
static const char *own_group(const pg_outbox_consumer_t *c);
static const char *own_name(const pg_outbox_consumer_t *c);

static void
req_free(pg_outbox_req_t *q)
{
    own_detach(q);
    free(q->key);
    free(q);
}

static pg_outbox_req_t *
req_new(int kind, pg_redis_t *r, void *arg)
{
    pg_outbox_req_t *q = calloc(1, sizeof(*q));

    if (q != NULL) {
        q->kind = kind;
        q->r = r;
        q->arg = arg;
    }
    return q;
}

/* Cancel: the redis op is un-subscribed, the callback never runs. */
void
pg_outbox_cancel(pg_outbox_req_t *req)
{
    if (req == NULL) {
        return;
    }
    pg_redis_cancel(req->op);
    req_free(req);
}

/* Send a built command for q; on failure q is freed. */
static pg_status_t
req_send(pg_outbox_req_t *q, argvb_t *a, unsigned timeout_ms, pg_redis_cb cb,
         pg_outbox_req_t **req_out)
{
    pg_status_t st = ab_send(q->r, a, timeout_ms, cb, q, &q->op);

    if (st != PG_OK) {
        req_free(q);
        q = NULL;
    }
    if (req_out != NULL) {
        *req_out = q;
    }
    return st;
}

/* Status of a reply: transport status, or PG_ERR_REDIS on an error reply,
 * logging nothing (callers report the status). */
static pg_status_t
reply_status(pg_status_t st, const redisReply *rep)
{
    if (st != PG_OK) {
        return st;
    }
    if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
        return PG_ERR_REDIS;
    }
    return PG_OK;
}

/* ---- idempotency key and enqueue ------------------------------------ */

/* Canonical compact JSON of v with sorted keys (malloc'd), capped. */
static pg_status_t
state_dump(const json_t *v, char **out)
{
    char *s;

    *out = NULL;
    if (v == NULL) {
        return PG_ERR_INVALID;
    }
    s = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    if (s == NULL) {
        return PG_ERR_NOMEM;
    }
    if (strlen(s) > PG_OUTBOX_STATE_MAX) {
        free(s);
        return PG_ERR_TOO_LARGE;
    }
    *out = s;
    return PG_OK;
}

/* Validate op; *state_out gets its canonical state JSON (caller frees). */
static pg_status_t
op_check(const pg_outbox_op_t *op, char **state_out)
{
    *state_out = NULL;
    if (op == NULL || !field_ok(op->identity) || !field_ok(op->target) ||
        !field_ok(op->kind)) {
        return PG_ERR_INVALID;
    }
    if (op->idem != NULL && op->idem[0] != '\0' && !idem_ok(op->idem)) {
        return PG_ERR_INVALID;
    }
    return state_dump(op->state, state_out);
}

/* Write the key for op with state already canonical. */
static pg_status_t
idem_make(const pg_outbox_op_t *op, const char *state, char *out,
          size_t outsz)
{
    size_t a, b, c, d, n;
    char *buf;
    pg_status_t st;

    if (op->idem != NULL && op->idem[0] != '\0') {
        n = strlen(op->idem);
        if (n + 1 > outsz) {
            return PG_ERR_TOO_LARGE;
        }
        memcpy(out, op->idem, n + 1);
        return PG_OK;
    }
    a = strlen(op->identity);
    b = strlen(op->target);
    c = strlen(op->kind);
    d = strlen(state);
    n = a + b + c + d + 3;
    buf = malloc(n);
    if (buf == NULL) {
        return PG_ERR_NOMEM;
    }
    memcpy(buf, op->identity, a);
    buf[a] = '\n';
    memcpy(buf + a + 1, op->target, b);
    buf[a + 1 + b] = '\n';
    memcpy(buf + a + b + 2, op->kind, c);
    buf[a + b + c + 2] = '\n';
    memcpy(buf + a + b + c + 3, state, d);
    if (op->release_when_done) {
        /* "live:" keys deduplicate only while the operation is pending */
        if (outsz < 6) {
            free(buf);
            return PG_ERR_TOO_LARGE;
        }
        memcpy(out, "live:", 5);
        st = pg_sha256_b64url(buf, n, out + 5, outsz - 5);
    } else {
        st = pg_sha256_b64url(buf, n, out, outsz);
    }
    free(buf);
    return st;
}

/*
 * See outbox.h. out receives the caller-given key or the derived one
 * (43 chars); PG_ERR_INVALID for a bad op, PG_ERR_TOO_LARGE for a short out.
 */
pg_status_t
pg_outbox_idem(const pg_outbox_op_t *op, char *out, size_t outsz)
{
    char *state;
    pg_status_t st;

    if (out == NULL || outsz == 0) {
        return PG_ERR_INVALID;
    }
    out[0] = '\0';
    st = op_check(op, &state);
    if (st == PG_OK) {
        st = idem_make(op, state, out, outsz);
    }
    free(state);
    return st;
}

/*
 * The enqueue script's reply. With a third element the entry was
 * delivered to q->own: it becomes a job of that consumer (linked before
 * the caller's callback, so a consumer freed inside the callback cleans it
 * up and the entry stays pending for a reclaim), and the handler gets it
 * after the callback returned.
 */
static void
on_enqueue(void *arg, pg_status_t st, const struct redisReply *rep)
{
    pg_outbox_req_t *q = arg;
    pg_outbox_consumer_t *c = q->own;
    pg_outbox_job_t *j = NULL;
    pg_outbox_enqueued_t res;

    q->op = NULL;
    st = reply_status(st, rep);
    if (st == PG_OK && (rep->type != REDIS_REPLY_ARRAY ||
                        (rep->elements != 2 && rep->elements != 3) ||
                        rep_int(rep->element[0]) < 0 ||
                        rep_copy(rep->element[1], q->id, sizeof(q->id)) != PG_OK)) {
        st = PG_ERR_INVALID;
    }
    if (c != NULL) {
        own_enter(c);
        if (st == PG_OK && rep->elements == 3) {
            /* NULL (OOM, consumer stopping): stays pending, reclaimed */
            j = own_take(c, q->r, rep->element[2]);
        }
    }
    if (st != PG_OK) {
        q->cb.enqueue(q->arg, st, NULL);
    } else {
        res.id = q->id;
        res.idem = q->idem;
        res.created = rep_int(rep->element[0]) == 1;
        res.own = j != NULL;
        q->cb.enqueue(q->arg, PG_OK, &res);
    }
    req_free(q);
    if (c != NULL) {
        if (j != NULL) {
            own_dispatch(c, j);
        }
        own_leave(c);
    }
}

/*
 * See outbox.h. The state JSON is canonicalised (sorted keys, compact);
 * strings in op are copied before return.
 */
pg_status_t
pg_outbox_enqueue(pg_redis_t *r, const pg_outbox_op_t *op,
                  unsigned timeout_ms, pg_outbox_enqueue_cb cb, void *arg,
                  char *idem_out, pg_outbox_req_t **req_out)
{
    pg_outbox_req_t *q;
    char *state = NULL, *kstream = NULL, *kkey = NULL, *kstatus = NULL;
    argvb_t a;
    pg_status_t st;

    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (idem_out != NULL) {
        idem_out[0] = '\0';
    }
    if (r == NULL || cb == NULL) {
        return PG_ERR_INVALID;
    }
    st = op_check(op, &state);
    if (st != PG_OK) {
        return st;
    }
    q = req_new(RQ_ENQUEUE, r, arg);
    if (q == NULL) {
        free(state);
        return PG_ERR_NOMEM;
    }
    q->cb.enqueue = cb;
    st = idem_make(op, state, q->idem, sizeof(q->idem));
    if (st == PG_OK) {
        kstream = mkkey(r, "", "");
        kkey = mkkey(r, ":key:", q->idem);
        kstatus = mkkey(r, ":status:", q->idem);
        if (kstream == NULL || kkey == NULL || kstatus == NULL) {
            st = PG_ERR_NOMEM;
        }
    }
    if (st == PG_OK) {
        ab_eval(&a, LUA_ENQUEUE, sizeof(LUA_ENQUEUE) - 1, 3);
        ab_str(&a, kstream);
        ab_str(&a, kkey);
        ab_str(&a, kstatus);
        ab_num(&a, op->dedup_ttl_s ? op->dedup_ttl_s : 86400);
        ab_str(&a, op->own != NULL ? own_group(op->own) : "");
        ab_str(&a, op->own != NULL ? own_name(op->own) : "");
        ab_str(&a, "idem");
        ab_str(&a, q->idem);
        ab_str(&a, "identity");
        ab_str(&a, op->identity);
        ab_str(&a, "target");
        ab_str(&a, op->target);
        ab_str(&a, "kind");
        ab_str(&a, op->kind);
        ab_str(&a, "state");
        ab_str(&a, state);
        ab_str(&a, "attempt");
        ab_str(&a, "0");
        ab_str(&a, "last_error");
        ab_str(&a, "");
        if (idem_out != NULL) {
            memcpy(idem_out, q->idem, strlen(q->idem) + 1);
        }
        if (op->own != NULL) {
            own_attach(op->own, q);
        }
        st = req_send(q, &a, timeout_ms, on_enqueue, req_out);
        q = NULL; /* freed by req_send on failure */
    }
    if (q != NULL) {
        req_free(q);
    }
    if (st != PG_OK && idem_out != NULL) {
        idem_out[0] = '\0';
    }
    free(state);
    free(kstream);
    free(kkey);
    free(kstatus);
    return st;
}

/* ---- waiting -------------------------------------------------------- */

static pg_status_t wait_read(pg_outbox_req_t *q);

static void
wait_finish(pg_outbox_req_t *q, pg_status_t st, pg_outbox_state_t state)
{
    pg_outbox_status_t s;

    s.state = state;
    s.attempts = q->attempts;
    s.error = q->error;
    q->cb.wait(q->arg, st, (st == PG_OK || st == PG_ERR_TIMEOUT) ? &s : NULL);
    req_free(q);
}

/* Copy a bounded string reply into q->error (truncating). */
static void
wait_set_error(pg_outbox_req_t *q, const redisReply *v)
{
    size_t n = 0;

    if (rep_str(v) != NULL) {
        n = v->len < sizeof(q->error) - 1 ? v->len : sizeof(q->error) - 1;
        memcpy(q->error, v->str, n);
    }
    q->error[n] = '\0';
}

static void
on_wait(void *arg, pg_status_t st, const struct redisReply *rep)
{
    pg_outbox_req_t *q = arg;
    const redisReply *entries;
    size_t i;

    q->op = NULL;
    st = reply_status(st, rep);
    if (st != PG_OK) {
        wait_finish(q, st, PG_OUTBOX_PENDING);
        return;
    }
    if (rep->type == REDIS_REPLY_NIL) {
        /* BLOCK ran out: try again if budget is left (clock skew). */
        if (q->host->now_ms(q->host->ctx) >= q->deadline) {
            wait_finish(q, PG_ERR_TIMEOUT, PG_OUTBOX_PENDING);
        } else if (wait_read(q) != PG_OK) {
            wait_finish(q, PG_ERR_NOMEM, PG_OUTBOX_PENDING);
        }
        return;
    }
    /* [[key, [[id, [f, v, ...]], ...]]] */
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 1 ||
        rep->element[0]->type != REDIS_REPLY_ARRAY ||
        rep->element[0]->elements != 2 ||
        rep->element[0]->element[1]->type != REDIS_REPLY_ARRAY) {
        wait_finish(q, PG_ERR_INVALID, PG_OUTBOX_PENDING);
        return;
    }
    entries = rep->element[0]->element[1];
    for (i = 0; i < entries->elements; i++) {
        const redisReply *el = entries->element[i], *f;
        pg_outbox_state_t state = PG_OUTBOX_PENDING;
        size_t j;

        if (el->type != REDIS_REPLY_ARRAY || el->elements != 2 ||
            rep_copy(el->element[0], q->id, sizeof(q->id)) != PG_OK ||
            el->element[1]->type != REDIS_REPLY_ARRAY) {
            wait_finish(q, PG_ERR_INVALID, PG_OUTBOX_PENDING);
            return;
        }
        f = el->element[1];
        for (j = 0; j + 1 < f->elements; j += 2) {
            if (rep_is(f->element[j], "status")) {
                if (rep_is(f->element[j + 1], "done")) {
                    state = PG_OUTBOX_DONE;
                } else if (rep_is(f->element[j + 1], "failed")) {
                    state = PG_OUTBOX_FAILED;
                }
            } else if (rep_is(f->element[j], "attempt")) {
                uint64_t v = rep_u64(f->element[j + 1]);
                q->attempts = v > 1000000 ? 1000000 : (unsigned)v;
            } else if (rep_is(f->element[j], "error")) {
                wait_set_error(q, f->element[j + 1]);
            }
        }
        if (state != PG_OUTBOX_PENDING) {
            wait_finish(q, PG_OK, state);
            return;
        }
    }
    if (q->host->now_ms(q->host->ctx) >= q->deadline) {
        wait_finish(q, PG_ERR_TIMEOUT, PG_OUTBOX_PENDING);
    } else if (wait_read(q) != PG_OK) {
        wait_finish(q, PG_ERR_NOMEM, PG_OUTBOX_PENDING);
    }
}

/* One XREAD BLOCK for the rest of the budget, after q->id. */
static pg_status_t
wait_read(pg_outbox_req_t *q)
{
    uint64_t now = q->host->now_ms(q->host->ctx);
    uint64_t left = q->deadline > now ? q->deadline - now : 1;
    argvb_t a;

    memset(&a, 0, sizeof(a));
    ab_str(&a, "XREAD");
    ab_str(&a, "COUNT");
    ab_str(&a, "16");
    ab_str(&a, "BLOCK");
    ab_num(&a, left);
    ab_str(&a, "STREAMS");
    ab_str(&a, q->key);
    ab_str(&a, q->id);
    return ab_send(q->r, &a, (unsigned)left + OB_WAIT_SLACK_MS, on_wait, q,
                   &q->op);
}

/* See outbox.h. */
pg_status_t
pg_outbox_wait(const pg_host_t *host, pg_redis_t *rb, const char *idem,
               unsigned budget_ms, pg_outbox_wait_cb cb, void *arg,
               pg_outbox_req_t **req_out)
{
    pg_outbox_req_t *q;
    pg_status_t st;

    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (host == NULL || rb == NULL || cb == NULL || !idem_ok(idem) ||
        budget_ms == 0) {
        return PG_ERR_INVALID;
    }
    q = req_new(RQ_WAIT, rb, arg);
    if (q == NULL) {
        return PG_ERR_NOMEM;
    }
    q->cb.wait = cb;
    q->host = host;
    q->deadline = host->now_ms(host->ctx) + budget_ms;
    memcpy(q->idem, idem, strlen(idem) + 1);
    memcpy(q->id, "0-0", 4);
    q->key = mkkey(rb, ":status:", idem);
    if (q->key == NULL) {
        req_free(q);
        return PG_ERR_NOMEM;
    }
    st = wait_read(q);
    if (st != PG_OK) {
        req_free(q);
        return st;
    }
    if (req_out != NULL) {
        *req_out = q;
    }
    return PG_OK;
}

/* ---- dead letters --------------------------------------------------- */

#define OB_LIST_MAX 1000u

static void
on_list(void *arg, pg_status_t st, const struct redisReply *rep)
{
    pg_outbox_req_t *q = arg;
    ent_t *ents = NULL;
    pg_outbox_entry_t *views = NULL;
    size_t i, n = 0;

    q->op = NULL;
    st = reply_status(st, rep);
    if (st == PG_OK && (rep->type != REDIS_REPLY_ARRAY ||
                        rep->elements > OB_LIST_MAX)) {
        st = PG_ERR_INVALID;
    }
    if (st == PG_OK && rep->elements > 0) {
        ents = calloc(rep->elements, sizeof(*ents));
        views = calloc(rep->elements, sizeof(*views));
        if (ents == NULL || views == NULL) {
            st = PG_ERR_NOMEM;
        }
        for (i = 0; st == PG_OK && i < rep->elements; i++) {
            st = ent_parse(rep->element[i], &ents[i]);
            n = i + 1;
            if (st == PG_OK) {
                ent_view(&ents[i], &views[i]);
            }
        }
    }
    if (st == PG_OK) {
        q->cb.list(q->arg, PG_OK, views, n);
    } else {
        q->cb.list(q->arg, st, NULL, 0);
    }
    for (i = 0; i < n; i++) {
        ent_clear(&ents[i]);
    }
    free(ents);
    free(views);
    req_free(q);
}

/* See outbox.h. */
pg_status_t
pg_outbox_dead_list(pg_redis_t *r, const char *start, unsigned count,
                    pg_outbox_list_cb cb, void *arg,
                    pg_outbox_req_t **req_out)
{
    pg_outbox_req_t *q;
    char *kdead;
    argvb_t a;
    pg_status_t st;

    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (start == NULL || start[0] == '\0') {
        start = "-";
    }
    if (r == NULL || cb == NULL || count == 0 || count > OB_LIST_MAX ||
        (strcmp(start, "-") != 0 && !id_ok(start))) {
        return PG_ERR_INVALID;
    }
    q = req_new(RQ_LIST, r, arg);
    kdead = mkkey(r, ":dead", "");
    if (q == NULL || kdead == NULL) {
        free(q);
        free(kdead);
        return PG_ERR_NOMEM;
    }
    q->cb.list = cb;
    memset(&a, 0, sizeof(a));
    ab_str(&a, "XRANGE");
    ab_str(&a, kdead);
    ab_str(&a, start);
    ab_str(&a, "+");
    ab_str(&a, "COUNT");
    ab_num(&a, count);
    st = req_send(q, &a, 0, on_list, req_out);
    free(kdead);
    return st;
}

static void
on_move(void *arg, pg_status_t st, const struct redisReply *rep)
{
    pg_outbox_req_t *q = arg;
    pg_outbox_move_t m;
    char to[PG_OUTBOX_ID_MAX + 1] = "";
    char idem[PG_OUTBOX_IDEM_MAX + 1] = "";
    char reason[PG_OUTBOX_FIELD_MAX + 1] = "";
    long long code = -1;
    size_t base = q->kind == RQ_DEAD_RETRY ? 2 : 1;

    q->op = NULL;
    st = reply_status(st, rep);
    if (st == PG_OK) {
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 ||
            (code = rep_int(rep->element[0])) < 0) {
            st = PG_ERR_INVALID;
        } else if (code == 0) {
            st = PG_ERR_NOT_FOUND;
        } else if (rep->elements != base + 2 ||
                   rep_copy(rep->element[base], idem, sizeof(idem)) != PG_OK ||
                   rep_copy(rep->element[base + 1], reason,
                            sizeof(reason)) != PG_OK ||
                   (base == 2 &&
                    rep_copy(rep->element[1], to, sizeof(to)) != PG_OK)) {
            st = PG_ERR_INVALID;
        } else if (code == 2) {
            st = PG_ERR_CONFLICT;
        }
    }
    m.from_id = q->id;
    m.to_id = to;
    m.idem = idem;
    m.reason = reason;
    /* On conflict, m tells which live entry blocks the move. */
    q->cb.move(q->arg, st,
               (st == PG_OK || st == PG_ERR_CONFLICT) ? &m : NULL);
    req_free(q);
}

/* Shared front half of dead_retry / dead_discard. */
static pg_status_t
dead_move(pg_redis_t *r, int kind, const char *id, unsigned ttl,
          pg_outbox_move_cb cb, void *arg, pg_outbox_req_t **req_out)
{
    pg_outbox_req_t *q;
    char *kdead, *kstream, *kbase;
    argvb_t a;
    pg_status_t st;

    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (r == NULL || cb == NULL || !id_ok(id)) {
        return PG_ERR_INVALID;
    }
    q = req_new(kind, r, arg);
    kdead = mkkey(r, ":dead", "");
    kstream = mkkey(r, "", "");
    kbase = mkkey(r, ":", "");
    if (q == NULL || kdead == NULL || kstream == NULL || kbase == NULL) {
        free(q);
        free(kdead);
        free(kstream);
        free(kbase);
        return PG_ERR_NOMEM;
    }
    q->cb.move = cb;
    memcpy(q->id, id, strlen(id) + 1);
    if (kind == RQ_DEAD_RETRY) {
        ab_eval(&a, LUA_DEAD_RETRY, sizeof(LUA_DEAD_RETRY) - 1, 2);
        ab_str(&a, kdead);
        ab_str(&a, kstream);
        ab_str(&a, kbase);
        ab_str(&a, q->id);
        ab_num(&a, ttl ? ttl : 86400);
    } else {
        ab_eval(&a, LUA_DEAD_DISCARD, sizeof(LUA_DEAD_DISCARD) - 1, 1);
        ab_str(&a, kdead);
        ab_str(&a, q->id);
    }
    st = req_send(q, &a, 0, on_move, req_out);
    free(kdead);
    free(kstream);
    free(kbase);
    return st;
}

/* See outbox.h. */
pg_status_t
pg_outbox_dead_retry(pg_redis_t *r, const char *id, unsigned dedup_ttl_s,
                     pg_outbox_move_cb cb, void *arg,
                     pg_outbox_req_t **req_out)
{
    return dead_move(r, RQ_DEAD_RETRY, id, dedup_ttl_s, cb, arg, req_out);
}

/* See outbox.h. */
pg_status_t
pg_outbox_dead_discard(pg_redis_t *r, const char *id, pg_outbox_move_cb cb,
                       void *arg, pg_outbox_req_t **req_out)
{
    return dead_move(r, RQ_DISCARD, id, 0, cb, arg, req_out);
}

/* ---- rate limiting -------------------------------------------------- */

static void
on_rate(void *arg, pg_status_t st, const struct redisReply *rep)
{
    pg_outbox_req_t *q = arg;
    pg_outbox_rate_t res;
    long long al, w, rem;

    q->op = NULL;
    st = reply_status(st, rep);
    if (st == PG_OK) {
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 ||
            (al = rep_int(rep->element[0])) < 0 ||
            (w = rep_int(rep->element[1])) < 0 ||
            (rem = rep_int(rep->element[2])) < 0) {
            st = PG_ERR_INVALID;
        } else {
            res.allowed = al == 1;
            res.wait_ms = (uint64_t)w;
            res.remaining = rem > UINT32_MAX ? UINT32_MAX : (unsigned)rem;
        }
    }
    q->cb.rate(q->arg, st, st == PG_OK ? &res : NULL);
    req_free(q);
}

/* See outbox.h. */
pg_status_t
pg_outbox_rate_take(pg_redis_t *r, const char *target, unsigned capacity,
                    unsigned refill_per_s, unsigned n, pg_outbox_rate_cb cb,
                    void *arg, pg_outbox_req_t **req_out)
{
    pg_outbox_req_t *q;
    char *key;
    argvb_t a;
    pg_status_t st;

    if (req_out != NULL) {
        *req_out = NULL;
    }
    if (r == NULL || cb == NULL || !field_ok(target) || capacity == 0 ||
        refill_per_s == 0 || n == 0 || n > capacity) {
        return PG_ERR_INVALID;
    }
    q = req_new(RQ_RATE, r, arg);
    key = mkkey(r, ":rate:", target);
    if (q == NULL || key == NULL) {
        free(q);
        free(key);
        return PG_ERR_NOMEM;
    }
    q->cb.rate = cb;
    ab_eval(&a, LUA_RATE, sizeof(LUA_RATE) - 1, 1);
    ab_str(&a, key);
    ab_num(&a, capacity);
    ab_num(&a, refill_per_s);
    ab_num(&a, n);
    st = req_send(q, &a, 0, on_rate, req_out);
    free(key);
    return st;
}

/* ---- consumer ------------------------------------------------------- */

enum { JOB_NEW, JOB_HANDLER, JOB_FINISHING };

struct pg_outbox_job {
    pg_outbox_consumer_t *c;        /* NULL once orphaned */
    pg_outbox_job_t *prev, *next;   /* c->jobs */
    int state;
    int malformed;
    ent_t ent;
    pg_redis_op_t *op;              /* finish script */
    int own;                        /* delivered by an enqueue: not part of
                                       the batch (c->pending) */
    pg_redis_t *fr;                 /* client for the finish script: the
                                       enqueue's (c->r may be blocked in
                                       XREADGROUP), or c->r */
};

struct pg_outbox_consumer {
    const pg_host_t *host;
    pg_redis_t *r;
    pg_outbox_handler handler;
    void *arg;
    char *group, *consumer;
    unsigned batch, block_ms, claim_idle_ms, max_attempts;
    unsigned backoff_base_ms, backoff_max_ms, status_ttl_s, error_pause_ms;
    int (*needed)(void *arg);
    char *k_stream, *k_delayed, *k_dead, *k_keybase;

    pg_redis_op_t *op;              /* the loop's current command */
    pg_timer_t *timer;              /* pause / next cycle */
    int need_group;
    char cursor[PG_OUTBOX_ID_MAX + 1];   /* XAUTOCLAIM cursor */
    pg_outbox_job_t *jobs;          /* jobs of the current batch */
    unsigned pending;               /* jobs of the batch not yet finished */
    pg_outbox_req_t *own_reqs;      /* enqueues delivering to this one */
    int depth, freeing;
    pg_outbox_stats_t stats;
};

#define OB_EXIT_RECHECK_MS 200      /* idle re-check while exiting */

static void cycle(pg_outbox_consumer_t *c);
static void c_schedule(pg_outbox_consumer_t *c, unsigned ms);
static void step_claim(pg_outbox_consumer_t *c);
static void step_read(pg_outbox_consumer_t *c);

static void
job_unlink(pg_outbox_job_t *j)
{
    pg_outbox_consumer_t *c = j->c;

    if (j->prev != NULL) {
        j->prev->next = j->next;
    } else if (c != NULL && c->jobs == j) {
        c->jobs = j->next;
    }
    if (j->next != NULL) {
        j->next->prev = j->prev;
    }
    j->prev = j->next = NULL;
}

static void
job_free(pg_outbox_job_t *j)
{
    ent_clear(&j->ent);
    free(j);
}

/* A job of c is over (finished or dropped): free it; the last one of a
 * batch lets the loop continue. */
static void
job_end(pg_outbox_job_t *j)
{
    pg_outbox_consumer_t *c = j->c;
    int own = j->own;

    job_unlink(j);
    job_free(j);
    if (!own && --c->pending == 0 && !c->freeing) {
        c_schedule(c, 0);
    }
}

static void
consumer_destroy(pg_outbox_consumer_t *c)
{
    free(c->group);
    free(c->consumer);
    free(c->k_stream);
    free(c->k_delayed);
    free(c->k_dead);
    free(c->k_keybase);
    free(c);
}

static void
c_enter(pg_outbox_consumer_t *c)
{
    c->depth++;
}

/* Leave a frame; frees c when a free was requested and nothing is on the
 * stack any more. c must not be used afterwards by the caller. */
static void
c_leave(pg_outbox_consumer_t *c)
{
    if (--c->depth == 0 && c->freeing) {
        consumer_destroy(c);
    }
}

/* Schedule the loop to continue after ms (0: next loop iteration). */
static void
c_schedule(pg_outbox_consumer_t *c, unsigned ms)
{
    c->host->timer_arm(c->timer, ms);
}

/* A Redis error in the loop: log, count, pause, re-check the group. */
static void
c_error(pg_outbox_consumer_t *c, const char *what, pg_status_t st,
        const redisReply *rep)
{
    c->stats.redis_errors++;
    if (rep != NULL && rep->type == REDIS_REPLY_ERROR && rep->str != NULL) {
        pg_log(c->host, PG_LOG_WARN, "outbox: %s: %.200s", what, rep->str);
        if (strncmp(rep->str, "NOGROUP", 7) == 0) {
            c->need_group = 1;
        }
    } else {
        pg_log(c->host, PG_LOG_WARN, "outbox: %s: %s", what,
               pg_status_str(st));
        c->need_group = 1; /* Redis may have restarted empty */
    }
    c_schedule(c, c->error_pause_ms);
}

static void
on_timer(void *arg)
{
    pg_outbox_consumer_t *c = arg;

    c_enter(c);
    if (!c->freeing) {
        cycle(c);
    }
    c_leave(c);
}

/* Backoff before attempt number `attempts` + 1: full jitter in [d/2, d]. */
static unsigned
backoff_ms(const pg_outbox_consumer_t *c, unsigned attempts)
{
    uint64_t d = c->backoff_base_ms;
    uint32_t rnd = 0;
    unsigned i;

    for (i = 1; i < attempts && d < c->backoff_max_ms; i++) {
        d *= 2;
    }
    if (d > c->backoff_max_ms) {
        d = c->backoff_max_ms;
    }
    if (pg_random(&rnd, sizeof(rnd)) != PG_OK) {
        rnd = 0;
    }
    return (unsigned)(d / 2 + rnd % (d - d / 2 + 1));
}

/* The finish script's reply for job j. */
static void
on_finish(void *arg, pg_status_t st, const struct redisReply *rep)
{
    pg_outbox_job_t *j = arg;
    pg_outbox_consumer_t *c = j->c;

    j->op = NULL;
    c_enter(c);
    st = reply_status(st, rep);
    if (st == PG_OK && (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
                        rep_int(rep->element[0]) < 0)) {
        st = PG_ERR_INVALID;
    }
    if (st != PG_OK) {
        /* Not acked: it stays pending and is reclaimed after idle time. */
        c->stats.redis_errors++;
        pg_log(c->host, PG_LOG_WARN, "outbox: finishing %s failed: %s",
               j->ent.id ? j->ent.id : "?", pg_status_str(st));
    } else if (rep_int(rep->element[0]) == 0) {
        c->stats.lost_race++;
    }
    job_end(j);
    c_leave(c);
}

/* JSON member for the delayed ZSET (all values strings). */
static char *
retry_member(const ent_t *e, unsigned attempts, const char *error)
{
    json_t *o = json_object();
    char num[24], created[24];
    char *s = NULL;

    if (o == NULL) {
        return NULL;
    }
    snprintf(num, sizeof(num), "%u", attempts);
    snprintf(created, sizeof(created), "%llu",
             (unsigned long long)e->created_ms);
    if (json_object_set_new(o, "idem", json_string(e->idem)) == 0 &&
        json_object_set_new(o, "identity",
                            json_string(e->identity ? e->identity : "")) == 0 &&
        json_object_set_new(o, "target",
                            json_string(e->target ? e->target : "")) == 0 &&
        json_object_set_new(o, "kind",
                            json_string(e->kind ? e->kind : "")) == 0 &&
        json_object_set_new(o, "state",
                            json_string(e->state ? e->state : "")) == 0 &&
        json_object_set_new(o, "attempt", json_string(num)) == 0 &&
        json_object_set_new(o, "last_error", json_string(error)) == 0 &&
        json_object_set_new(o, "created_ms", json_string(created)) == 0 &&
        json_object_set_new(o, "retry_of", json_string(e->id)) == 0) {
        s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    }
    json_decref(o);
    return s;
}

/* Copy error into a bounded, valid-UTF-8-agnostic buffer (truncated). */
static void
copy_error(char *dst, size_t dstsz, const char *error)
{
    size_t n = error ? strlen(error) : 0;

    if (n >= dstsz) {
        n = dstsz - 1;
    }
    if (n > 0) {
        memcpy(dst, error, n);
    }
    dst[n] = '\0';
}

/*
 * Issue the finish script for j (state JOB_FINISHING). On a send failure
 * the job is dropped like a failed finish (the entry stays pending).
 */
static void
job_finish(pg_outbox_job_t *j, pg_outbox_result_t res, const char *error)
{
    pg_outbox_consumer_t *c = j->c;
    const ent_t *e = &j->ent;
    char err[PG_OUTBOX_FIELD_MAX + 1];
    char reason[PG_OUTBOX_FIELD_MAX + 1];
    char *kkey = NULL, *kstatus = NULL, *member = NULL;
    const char *idem = e->idem ? e->idem : "_malformed";
    const char *mode = "done";
    unsigned attempts = e->attempt + 1, delay = 0;
    char num[24];
    argvb_t a;
    pg_status_t st = PG_ERR_NOMEM;

    j->state = JOB_FINISHING;
    copy_error(err, sizeof(err), error);
    reason[0] = '\0';
    if (j->malformed) {
        res = PG_OUTBOX_RESULT_FAIL;
        copy_error(err, sizeof(err), "malformed entry");
    }
    if (res == PG_OUTBOX_RESULT_RETRY && attempts >= c->max_attempts) {
        snprintf(reason, sizeof(reason), "max attempts (%u): %.900s", attempts,
                 err);
        mode = "dead";
    } else if (res == PG_OUTBOX_RESULT_RETRY) {
        mode = "retry";
        delay = backoff_ms(c, attempts);
        member = retry_member(e, attempts, err);
        if (member == NULL) {
            /* Not representable as JSON (invalid UTF-8) or OOM: a retry
             * could never be scheduled, so do not loop on it. */
            snprintf(reason, sizeof(reason), "cannot schedule retry: %.900s",
                     err);
            mode = "dead";
        }
    } else if (res == PG_OUTBOX_RESULT_FAIL) {
        copy_error(reason, sizeof(reason), err);
        mode = "dead";
    }
    kkey = mkkey(c->r, ":key:", idem);
    kstatus = mkkey(c->r, ":status:", idem);
    if (kkey == NULL || kstatus == NULL) {
        goto fail;
    }
    snprintf(num, sizeof(num), "%u", attempts);
    ab_eval(&a, LUA_FINISH, sizeof(LUA_FINISH) - 1, 5);
    ab_str(&a, c->k_stream);
    ab_str(&a, c->k_delayed);
    ab_str(&a, c->k_dead);
    ab_str(&a, kkey);
    ab_str(&a, kstatus);
    ab_str(&a, c->group);
    ab_str(&a, e->id);
    ab_str(&a, mode);
    ab_num(&a, c->status_ttl_s);
    ab_num(&a, delay);
    ab_str(&a, mode[0] == 'd' && mode[1] == 'e' ? reason : err);
    ab_str(&a, num);
    ab_str(&a, member ? member : "");
    /* Fields of the dead letter (ignored for done/retry). */
    ab_str(&a, "idem");
    ab_str(&a, idem);
    ab_str(&a, "identity");
    ab_str(&a, e->identity ? e->identity : "");
    ab_str(&a, "target");
    ab_str(&a, e->target ? e->target : "");
    ab_str(&a, "kind");
    ab_str(&a, e->kind ? e->kind : "");
    ab_str(&a, "state");
    ab_str(&a, e->state ? e->state : "");
    ab_str(&a, "attempt");
    ab_str(&a, num);
    ab_str(&a, "last_error");
    ab_str(&a, err);
    ab_str(&a, "created_ms");
    ab_num(&a, e->created_ms);
    st = ab_send(j->fr != NULL ? j->fr : c->r, &a, 0, on_finish, j, &j->op);
    if (st == PG_OK) {
        if (mode[0] == 'd' && mode[1] == 'o') {
            c->stats.done++;
        } else if (mode[0] == 'r') {
            c->stats.retried++;
        } else {
            c->stats.dead++;
        }
    }
fail:
    free(kkey);
    free(kstatus);
    free(member);
    if (st != PG_OK) {
        c->stats.redis_errors++;
        pg_log(c->host, PG_LOG_WARN, "outbox: cannot finish %s: %s",
               e->id ? e->id : "?", pg_status_str(st));
        job_end(j);
    }
}

/* See outbox.h. */
void
pg_outbox_job_done(pg_outbox_job_t *job, pg_outbox_result_t res,
                   const char *error)
{
    pg_outbox_consumer_t *c;

    if (job == NULL) {
        return;
    }
    c = job->c;
    if (c == NULL) {
        /* The consumer was freed: leave the entry pending. */
        job_free(job);
        return;
    }
    if (job->state != JOB_HANDLER) {
        pg_log(c->host, PG_LOG_ERROR, "outbox: job finished twice");
        return;
    }
    c_enter(c);
    job_finish(job, res, error);
    c_leave(c);
}

/* Give one job (state JOB_NEW, linked) to the handler, or dead-letter it
 * when malformed. */
static void
job_hand_out(pg_outbox_consumer_t *c, pg_outbox_job_t *j)
{
    pg_outbox_entry_t v;

    j->state = JOB_HANDLER;
    if (j->malformed) {
        job_finish(j, PG_OUTBOX_RESULT_FAIL, "malformed entry");
        return;
    }
    ent_view(&j->ent, &v);
    c->stats.delivered++;
    if (j->ent.reclaimed) {
        c->stats.reclaimed++;
    }
    if (j->own) {
        c->stats.own++;
    }
    c->handler(c->arg, j, &v);
}

/* ---- own deliveries (pg_outbox_op_t.own) ----------------------------- */

/* c's group name (owned by c), for the enqueue script's XREADGROUP. */
static const char *
own_group(const pg_outbox_consumer_t *c)
{
    return c->group;
}

/* c's consumer name (owned by c), for the enqueue script's XREADGROUP. */
static const char *
own_name(const pg_outbox_consumer_t *c)
{
    return c->consumer;
}

/* Enter a frame of c from the enqueue reply (c stays allocated until the
 * matching own_leave, even if freed meanwhile). */
static void
own_enter(pg_outbox_consumer_t *c)
{
    c_enter(c);
}

/* Leave that frame; c may be gone afterwards. */
static void
own_leave(pg_outbox_consumer_t *c)
{
    c_leave(c);
}

/* Track q as an enqueue that may deliver to c (detached on c's free). */
static void
own_attach(pg_outbox_consumer_t *c, pg_outbox_req_t *q)
{
    if (c->freeing) {
        return;
    }
    q->own = c;
    q->own_prev = NULL;
    q->own_next = c->own_reqs;
    if (c->own_reqs != NULL) {
        c->own_reqs->own_prev = q;
    }
    c->own_reqs = q;
}

/* Forget q's consumer (q done, or the consumer is being freed). */
static void
own_detach(pg_outbox_req_t *q)
{
    pg_outbox_consumer_t *c = q->own;

    if (c == NULL) {
        return;
    }
    if (q->own_prev != NULL) {
        q->own_prev->own_next = q->own_next;
    } else {
        c->own_reqs = q->own_next;
    }
    if (q->own_next != NULL) {
        q->own_next->own_prev = q->own_prev;
    }
    q->own = NULL;
    q->own_prev = q->own_next = NULL;
}

/*
 * The entry el ([id, [f, v, ...]]) was delivered to c by an enqueue on fr:
 * make it a job of c (linked, not counted in the batch), finished through
 * fr. NULL when c is stopping or out of memory, or el has no readable id:
 * the entry stays in c's pending list and is reclaimed after idle time.
 */
static pg_outbox_job_t *
own_take(pg_outbox_consumer_t *c, pg_redis_t *fr, const redisReply *el)
{
    pg_outbox_job_t *j;

    if (c->freeing) {
        return NULL;
    }
    j = calloc(1, sizeof(*j));
    if (j == NULL) {
        return NULL;
    }
    if (ent_parse(el, &j->ent) != PG_OK) {
        if (j->ent.id == NULL || !id_ok(j->ent.id)) {
            job_free(j);
            return NULL;
        }
        j->malformed = 1;
    }
    j->c = c;
    j->own = 1;
    j->ent.own = 1;
    j->fr = fr;
    j->next = c->jobs;
    if (c->jobs != NULL) {
        c->jobs->prev = j;
    }
    c->jobs = j;
    return j;
}

/* Hand an own job to the handler unless c was freed meanwhile (then
 * pg_outbox_consumer_free already dropped it). */
static void
own_dispatch(pg_outbox_consumer_t *c, pg_outbox_job_t *j)
{
    if (!c->freeing) {
        job_hand_out(c, j);
    }
}

/* 1 when an entry with this id is a job of c right now. */
static int
job_busy(const pg_outbox_consumer_t *c, const char *id)
{
    const pg_outbox_job_t *j;

    for (j = c->jobs; j != NULL && id != NULL; j = j->next) {
        if (j->ent.id != NULL && strcmp(j->ent.id, id) == 0) {
            return 1;
        }
    }
    return 0;
}

/*
 * Turn an entries array into jobs and hand them to the handler. An empty
 * array continues the loop. Entries that cannot be parsed are
 * dead-lettered without calling the handler (if their id was readable).
 */
static void
dispatch(pg_outbox_consumer_t *c, const redisReply *arr, int reclaimed)
{
    pg_outbox_job_t *first = NULL, *last = NULL, *j, *next;
    size_t i;

    for (i = 0; i < arr->elements; i++) {
        const redisReply *el = arr->element[i];

        if (el == NULL || el->type == REDIS_REPLY_NIL) {
            continue; /* deleted meanwhile (XAUTOCLAIM before 7.0) */
        }
        j = calloc(1, sizeof(*j));
        if (j == NULL) {
            break; /* the rest stays pending and is reclaimed later */
        }
        if (ent_parse(el, &j->ent) != PG_OK) {
            if (j->ent.id == NULL || !id_ok(j->ent.id)) {
                job_free(j);
                continue;
            }
            j->malformed = 1;
        }
        j->ent.reclaimed = reclaimed;
        if (reclaimed && job_busy(c, j->ent.id)) {
            /* ours and still being applied (an own delivery keeps the loop
             * running): XAUTOCLAIM only renewed its idle time */
            job_free(j);
            continue;
        }
        j->c = c;
        j->prev = last;
        if (last != NULL) {
            last->next = j;
        } else {
            first = j;
        }
        last = j;
        c->pending++;
    }
    if (first == NULL) {
        c_schedule(c, 0);
        return;
    }
    last->next = c->jobs;
    if (c->jobs != NULL) {
        c->jobs->prev = last;
    }
    c->jobs = first;
    /* Hand out. next is read before the handler runs: the handler may
     * finish j (freeing it) but never frees other jobs, except through
     * pg_outbox_consumer_free, which we detect with c->freeing. */
    for (j = first; j != NULL && !c->freeing; j = next) {
        next = (j == last) ? NULL : j->next;
        job_hand_out(c, j);
    }
}

static void
on_read(void *arg, pg_status_t st, const struct redisReply *rep)
{
    pg_outbox_consumer_t *c = arg;

    c->op = NULL;
    c_enter(c);
    st = reply_status(st, rep);
    if (st != PG_OK) {
        c_error(c, "XREADGROUP", st, rep);
    } else if (rep->type == REDIS_REPLY_NIL) {
        cycle(c);
    } else if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 1 ||
               rep->element[0]->type != REDIS_REPLY_ARRAY ||
               rep->element[0]->elements != 2 ||
               rep->element[0]->element[1]->type != REDIS_REPLY_ARRAY) {
        c_error(c, "XREADGROUP: unexpected reply", PG_ERR_INVALID, NULL);
    } else {
        dispatch(c, rep->element[0]->element[1], 0);
    }
    c_leave(c);
}

static void
step_read(pg_outbox_consumer_t *c)
{
    argvb_t a;

    memset(&a, 0, sizeof(a));
    ab_str(&a, "XREADGROUP");
    ab_str(&a, "GROUP");
    ab_str(&a, c->group);
    ab_str(&a, c->consumer);
    ab_str(&a, "COUNT");
    ab_num(&a, c->batch);
    ab_str(&a, "BLOCK");
    ab_num(&a, c->block_ms);
    ab_str(&a, "STREAMS");
    ab_str(&a, c->k_stream);
    ab_str(&a, ">");
    if (ab_send(c->r, &a, c->block_ms + OB_WAIT_SLACK_MS, on_read, c,
                &c->op) != PG_OK) {
        c_error(c, "XREADGROUP", PG_ERR_NOMEM, NULL);
    }
}

static void
on_claim(void *arg, pg_status_t st, const struct redisReply *rep)
{
    pg_outbox_consumer_t *c = arg;

    c->op = NULL;
    c_enter(c);
    st = reply_status(st, rep);
    if (st != PG_OK) {
        c_error(c, "XAUTOCLAIM", st, rep);
    } else if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 2 ||
               rep->element[1]->type != REDIS_REPLY_ARRAY ||
               rep_copy(rep->element[0], c->cursor, sizeof(c->cursor)) != PG_OK) {
        memcpy(c->cursor, "0-0", 4);
        c_error(c, "XAUTOCLAIM: unexpected reply", PG_ERR_INVALID, NULL);
    } else if (rep->element[1]->elements > 0) {
        dispatch(c, rep->element[1], 1);
    } else {
        step_read(c);
    }
    c_leave(c);
}

static void
step_claim(pg_outbox_consumer_t *c)
{
    argvb_t a;

    memset(&a, 0, sizeof(a));
    ab_str(&a, "XAUTOCLAIM");
    ab_str(&a, c->k_stream);
    ab_str(&a, c->group);
    ab_str(&a, c->consumer);
    ab_num(&a, c->claim_idle_ms);
    ab_str(&a, c->cursor);
    ab_str(&a, "COUNT");
    ab_num(&a, c->batch);
    if (ab_send(c->r, &a, 0, on_claim, c, &c->op) != PG_OK) {
        c_error(c, "XAUTOCLAIM", PG_ERR_NOMEM, NULL);
    }
}

static void
on_promote(void *arg, pg_status_t st, const struct redisReply *rep)
{
    pg_outbox_consumer_t *c = arg;
    long long n;

    c->op = NULL;
    c_enter(c);
    st = reply_status(st, rep);
    if (st != PG_OK) {
        c_error(c, "promote", st, rep);
    } else if ((n = rep_int(rep)) < 0) {
        c_error(c, "promote: unexpected reply", PG_ERR_INVALID, NULL);
    } else {
        c->stats.promoted += (uint64_t)n;
        step_claim(c);
    }
    c_leave(c);
}

static void
step_promote(pg_outbox_consumer_t *c)
{
    argvb_t a;

    ab_eval(&a, LUA_PROMOTE, sizeof(LUA_PROMOTE) - 1, 2);
    ab_str(&a, c->k_stream);
    ab_str(&a, c->k_delayed);
    ab_str(&a, c->k_keybase);
    ab_num(&a, 100);
    if (ab_send(c->r, &a, 0, on_promote, c, &c->op) != PG_OK) {
        c_error(c, "promote", PG_ERR_NOMEM, NULL);
    }
}

static void
on_group(void *arg, pg_status_t st, const struct redisReply *rep)
{
    pg_outbox_consumer_t *c = arg;

    c->op = NULL;
    c_enter(c);
    if (st == PG_OK && rep != NULL && rep->type == REDIS_REPLY_ERROR &&
        rep->str != NULL && strncmp(rep->str, "BUSYGROUP", 9) == 0) {
        rep = NULL; /* exists already: fine */
    } else {
        st = reply_status(st, rep);
    }
    if (st != PG_OK) {
        c_error(c, "XGROUP CREATE", st, rep);
    } else {
        c->need_group = 0;
        step_promote(c);
    }
    c_leave(c);
}

/* One loop iteration: [group] -> promote -> claim -> read. */
static void
cycle(pg_outbox_consumer_t *c)
{
    argvb_t a;

    if (c->op != NULL || c->pending > 0) {
        return; /* a step or a batch is in progress */
    }
    if (c->host->exiting != NULL && c->host->exiting(c->host->ctx)
        && (c->needed == NULL || !c->needed(c->arg))) {
        /* shutting down and nobody here needs more: fetch nothing (what
         * was delivered is applied by the handler; an entry left pending
         * would stall until the lease lapses). Look again shortly, in
         * case a request of this process starts waiting. */
        if (c->needed != NULL) {
            c_schedule(c, OB_EXIT_RECHECK_MS);
        }
        return;
    }
    if (!c->need_group) {
        step_promote(c);
        return;
    }
    memset(&a, 0, sizeof(a));
    ab_str(&a, "XGROUP");
    ab_str(&a, "CREATE");
    ab_str(&a, c->k_stream);
    ab_str(&a, c->group);
    ab_str(&a, "0");
    ab_str(&a, "MKSTREAM");
    if (ab_send(c->r, &a, 0, on_group, c, &c->op) != PG_OK) {
        c_error(c, "XGROUP CREATE", PG_ERR_NOMEM, NULL);
    }
}

/* See outbox.h. */
pg_status_t
pg_outbox_consumer_new(const pg_host_t *host, pg_redis_t *rb,
                       const pg_outbox_config_t *cfg,
                       pg_outbox_handler handler, void *arg,
                       pg_outbox_consumer_t **out)
{
    pg_outbox_consumer_t *c;
    const char *group;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    if (host == NULL || rb == NULL || cfg == NULL || handler == NULL ||
        !idem_ok(cfg->consumer) || cfg->batch > 1000) {
        return PG_ERR_INVALID;
    }
    group = cfg->group ? cfg->group : "provgate";
    if (!idem_ok(group)) {
        return PG_ERR_INVALID;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return PG_ERR_NOMEM;
    }
    c->host = host;
    c->r = rb;
    c->handler = handler;
    c->arg = arg;
    c->batch = cfg->batch ? cfg->batch : 16;
    c->block_ms = cfg->block_ms ? cfg->block_ms : 1000;
    c->claim_idle_ms = cfg->claim_idle_ms ? cfg->claim_idle_ms : 30000;
    c->max_attempts = cfg->max_attempts ? cfg->max_attempts : 5;
    c->backoff_base_ms = cfg->backoff_base_ms ? cfg->backoff_base_ms : 1000;
    c->backoff_max_ms = cfg->backoff_max_ms ? cfg->backoff_max_ms : 300000;
    if (c->backoff_max_ms < c->backoff_base_ms) {
        c->backoff_max_ms = c->backoff_base_ms;
    }
    c->status_ttl_s = cfg->status_ttl_s ? cfg->status_ttl_s : 3600;
    c->error_pause_ms = cfg->error_pause_ms ? cfg->error_pause_ms : 250;
    c->needed = cfg->needed;
    c->need_group = 1;
    memcpy(c->cursor, "0-0", 4);
    c->group = strdup(group);
    c->consumer = strdup(cfg->consumer);
    c->k_stream = mkkey(rb, "", "");
    c->k_delayed = mkkey(rb, ":delayed", "");
    c->k_dead = mkkey(rb, ":dead", "");
    c->k_keybase = mkkey(rb, ":key:", "");
    c->timer = host->timer_open(host->ctx, on_timer, c);
    if (c->group == NULL || c->consumer == NULL || c->k_stream == NULL ||
        c->k_delayed == NULL || c->k_dead == NULL || c->k_keybase == NULL ||
        c->timer == NULL) {
        if (c->timer != NULL) {
            host->timer_close(c->timer);
        }
        consumer_destroy(c);
        return PG_ERR_NOMEM;
    }
    c_schedule(c, 0);
    *out = c;
    return PG_OK;
}

/* See outbox.h. Safe from inside the handler or any consumer callback. */
void
pg_outbox_consumer_free(pg_outbox_consumer_t *c)
{
    pg_outbox_job_t *j, *next;

    if (c == NULL || c->freeing) {
        return;
    }
    c_enter(c);
    c->freeing = 1;
    pg_redis_cancel(c->op);
    c->op = NULL;
    c->host->timer_close(c->timer);
    c->timer = NULL;
    for (j = c->jobs; j != NULL; j = next) {
        next = j->next;
        j->prev = j->next = NULL;
        if (j->state == JOB_HANDLER) {
            j->c = NULL; /* orphan: freed by pg_outbox_job_done */
        } else {
            pg_redis_cancel(j->op);
            job_free(j);
        }
    }
    c->jobs = NULL;
    c->pending = 0;
    while (c->own_reqs != NULL) {
        own_detach(c->own_reqs);
    }
    c_leave(c);
}

/* See outbox.h. */
void
pg_outbox_consumer_stats(const pg_outbox_consumer_t *c,
                         pg_outbox_stats_t *out)
{
    if (out == NULL) {
        return;
    }
    memset(out, 0, sizeof(*out));
    if (c != NULL) {
        *out = c->stats;
    }
}
