/*
 * provgate core: JML events from a Redis Stream (see jmlstream.h).
 *
 * One entry at a time: the loop sends one command, its reply decides the
 * next one. Steps (the consumer-loop pattern of src/outbox/outbox.c):
 *   group    XGROUP CREATE <s> <g> 0 MKSTREAM, once (BUSYGROUP is fine)
 *   pending  XREADGROUP ... STREAMS <s> <cursor>: this consumer's own
 *            pending entries, until none is left (once per start)
 *   claim    XAUTOCLAIM <s> <g> <c> <idle> <cursor> COUNT 1
 *   read     XREADGROUP ... COUNT 1 BLOCK <ms> STREAMS <s> >
 * then for the entry: apply (pg_jml_event) -> ack (XACK) or dead (Lua:
 * XADD <s>:dead + XACK). A failed step pauses on the timer and is retried
 * as it was; nothing is ever retried without a pause of at least
 * JS_BUSY_RETRY_MS.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>
#include "provgate/jmlstream.h"
#include "provgate/util.h"

#define JS_ID_MAX 64               /* "<ms>-<seq>" is at most 41 bytes */
#define JS_CONSUMER_MAX 200
#define JS_BUSY_RETRY_MS 200       /* another event or an import runs */
#define JS_ERROR_PAUSE_MS 1000     /* after a Redis error */
#define JS_WAIT_SLACK_MS 1000      /* client timeout over BLOCK */
#define JS_DEAD_MAXLEN "100000"    /* approximate cap of <s>:dead */

/* KEYS: stream, dead. ARGV: group, entry id, reason, event id, type,
 * consumer, maxlen. Copy to the dead stream and acknowledge, atomically. */
static const char js_dead_lua[] =
    "redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', "
    "'entry', ARGV[2], 'reason', ARGV[3], 'event_id', ARGV[4], "
    "'type', ARGV[5], 'consumer', ARGV[6])\n"
    "return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])\n";

enum {
    JS_STARTING = 0, JS_PENDING, JS_CLAIMING, JS_READING, JS_APPLYING,
    JS_PAUSED, JS_STOPPED
};

/* what the timer resumes */
enum { RS_CYCLE = 0, RS_APPLY, RS_ACK, RS_DEAD };

struct pg_jmlstream {
    const pg_config_t *cfg;
    const pg_host_t *host;
    pg_redis_t *r;
    pg_jml_t *jml;
    pg_audit_t *audit;
    char *consumer, *k_stream, *k_dead;

    pg_redis_op_t *op;             /* the loop's command in flight */
    pg_timer_t *timer;             /* pause / retry */
    int state, resume;
    int need_group, pending_done, stopping, applying;
    char pend_cursor[JS_ID_MAX];
    char claim_cursor[JS_ID_MAX];

    /* the current entry (eid[0] != '\0' while one is held) */
    char eid[JS_ID_MAX];
    json_t *ev;                    /* parsed event, or NULL */
    char reason[PG_ERR_MSG_MAX];   /* why it is dead-lettered */
    pg_jmlstream_stats_t stats;
};

static void js_cycle(pg_jmlstream_t *s);
static void js_apply(pg_jmlstream_t *s);
static void js_ack(pg_jmlstream_t *s);
static void js_dead(pg_jmlstream_t *s);

/* ---- pure helpers ------------------------------------------------------ */

/* 1 when s (n bytes) is a stream entry id: digits, one '-', digits. */
static int
js_id_ok(const char *s, size_t n)
{
    size_t i, dash = 0;

    if (n == 0 || n >= JS_ID_MAX) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (s[i] == '-') {
            dash++;
        } else if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
    }
    return dash == 1 && s[0] != '-' && s[n - 1] != '-';
}

/* See jmlstream.h. */
pg_status_t
pg_jmlstream_parse_entry(const redisReply *entry, size_t max_bytes,
                         char *id, size_t idsz, json_t **event,
                         pg_err_t *err)
{
    const redisReply *f, *k, *v;
    json_error_t jerr;
    json_t *ev;

    *event = NULL;
    if (idsz > 0) {
        id[0] = '\0';
    }
    if (entry == NULL || entry->type != REDIS_REPLY_ARRAY
        || entry->elements != 2 || entry->element[0] == NULL
        || entry->element[0]->type != REDIS_REPLY_STRING
        || !js_id_ok(entry->element[0]->str, entry->element[0]->len)
        || entry->element[0]->len >= idsz) {
        pg_err_set(err, "entry: unexpected reply shape");
        return PG_ERR_INVALID;
    }
    memcpy(id, entry->element[0]->str, entry->element[0]->len);
    id[entry->element[0]->len] = '\0';
    f = entry->element[1];
    if (f == NULL || f->type == REDIS_REPLY_NIL) {
        pg_err_set(err, "entry: deleted before it was read");
        return PG_ERR_INVALID;
    }
    if (f->type != REDIS_REPLY_ARRAY || f->elements != 2
        || (k = f->element[0]) == NULL || k->type != REDIS_REPLY_STRING
        || k->len != 5 || memcmp(k->str, "event", 5) != 0
        || (v = f->element[1]) == NULL || v->type != REDIS_REPLY_STRING) {
        pg_err_set(err, "entry: must have exactly one field, \"event\"");
        return PG_ERR_INVALID;
    }
    if (v->len > max_bytes) {
        pg_err_set(err, "event: larger than %zu bytes", max_bytes);
        return PG_ERR_INVALID;
    }
    /* the parser's message may quote the payload: only its position */
    ev = json_loadb(v->str, v->len, JSON_REJECT_DUPLICATES, &jerr);
    if (ev == NULL) {
        pg_err_set(err, "event: not JSON (line %d, column %d)", jerr.line,
                   jerr.column);
        return PG_ERR_INVALID;
    }
    if (!json_is_object(ev)) {
        json_decref(ev);
        pg_err_set(err, "event: must be a JSON object");
        return PG_ERR_INVALID;
    }
    *event = ev;
    return PG_OK;
}

/* 1 when the consumer name is 1..JS_CONSUMER_MAX safe bytes. */
static int
js_name_ok(const char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++) {
        unsigned char c = (unsigned char) s[i];

        if (i >= JS_CONSUMER_MAX
            || !((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
                 || (c >= '0' && c <= '9') || strchr("-_.:@[]", c) != NULL)) {
            return 0;
        }
    }
    return i > 0;
}

/* PG_OK when a reply arrived and is not a Redis error. */
static pg_status_t
js_reply_st(pg_status_t st, const redisReply *rep)
{
    if (st != PG_OK) {
        return st;
    }
    return rep == NULL || rep->type == REDIS_REPLY_ERROR ? PG_ERR_REDIS
                                                         : PG_OK;
}

/* ---- life cycle --------------------------------------------------------- */

/* malloc'd "<prefix><a><b>", or NULL. */
static char *
js_key(const char *prefix, const char *a, const char *b)
{
    size_t n = strlen(prefix) + strlen(a) + strlen(b) + 1;
    char *k = malloc(n);

    if (k != NULL) {
        snprintf(k, n, "%s%s%s", prefix, a, b);
    }
    return k;
}

static void js_on_timer(void *arg);

/* See jmlstream.h. */
pg_status_t
pg_jmlstream_new(const pg_config_t *cfg, const pg_host_t *host,
                 pg_redis_t *redis, pg_jml_t *jml, pg_audit_t *audit,
                 const char *consumer, pg_jmlstream_t **out, pg_err_t *err)
{
    pg_jmlstream_t *s;

    *out = NULL;
    if (consumer == NULL || !js_name_ok(consumer)) {
        pg_err_set(err, "event stream: consumer name must be 1-%d of A-Z "
                   "a-z 0-9 - _ . : @ [ ]", JS_CONSUMER_MAX);
        return PG_ERR_INVALID;
    }
    if (cfg->jml_stream.stream == NULL || cfg->jml_stream.group == NULL) {
        pg_err_set(err, "event stream: not configured");
        return PG_ERR_INVALID;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return PG_ERR_NOMEM;
    }
    s->cfg = cfg;
    s->host = host;
    s->r = redis;
    s->jml = jml;
    s->audit = audit;
    s->consumer = strdup(consumer);
    s->k_stream = js_key(pg_redis_prefix(redis), cfg->jml_stream.stream, "");
    s->k_dead = js_key(pg_redis_prefix(redis), cfg->jml_stream.stream,
                       ":dead");
    s->timer = host->timer_open(host->ctx, js_on_timer, s);
    if (s->consumer == NULL || s->k_stream == NULL || s->k_dead == NULL
        || s->timer == NULL) {
        pg_jmlstream_free(s);
        return PG_ERR_NOMEM;
    }
    s->need_group = 1;
    s->state = JS_STARTING;
    snprintf(s->pend_cursor, sizeof(s->pend_cursor), "0");
    snprintf(s->claim_cursor, sizeof(s->claim_cursor), "0-0");
    *out = s;
    return PG_OK;
}

/* See jmlstream.h. */
pg_status_t
pg_jmlstream_start(pg_jmlstream_t *s)
{
    s->stopping = 0;
    s->state = JS_STARTING;
    s->host->timer_arm(s->timer, 0);
    return PG_OK;
}

/* Forget the current entry (it stays pending unless it was acked). */
static void
js_drop(pg_jmlstream_t *s)
{
    s->eid[0] = '\0';
    json_decref(s->ev);
    s->ev = NULL;
    s->reason[0] = '\0';
}

/* See jmlstream.h. */
void
pg_jmlstream_stop(pg_jmlstream_t *s)
{
    if (s == NULL || s->stopping) {
        return;
    }
    s->stopping = 1;
    s->host->timer_disarm(s->timer);
    if (s->op != NULL && (s->state == JS_STARTING || s->state == JS_PENDING
                          || s->state == JS_CLAIMING
                          || s->state == JS_READING)) {
        /* a fetch: whatever it would deliver stays in the stream */
        pg_redis_cancel(s->op);
        s->op = NULL;
    }
    if (s->op == NULL && !s->applying) {
        js_drop(s);   /* a paused entry stays pending: reclaimed later */
        s->state = JS_STOPPED;
    }
}

/* See jmlstream.h. */
void
pg_jmlstream_free(pg_jmlstream_t *s)
{
    if (s == NULL) {
        return;
    }
    if (s->op != NULL) {
        pg_redis_cancel(s->op);
    }
    if (s->timer != NULL) {
        s->host->timer_close(s->timer);
    }
    js_drop(s);
    free(s->consumer);
    free(s->k_stream);
    free(s->k_dead);
    free(s);
}

/* See jmlstream.h. */
const char *
pg_jmlstream_state(const pg_jmlstream_t *s)
{
    static const char *const names[] = {
        "starting", "pending", "claiming", "reading", "applying", "paused",
        "stopped"
    };

    if (s == NULL || s->state < 0 || s->state > JS_STOPPED) {
        return "stopped";
    }
    return names[s->state];
}

/* See jmlstream.h. */
void
pg_jmlstream_get_stats(const pg_jmlstream_t *s, pg_jmlstream_stats_t *out)
{
    *out = s->stats;
}

/* ---- the loop ------------------------------------------------------------ */

/* Wait ms, then resume with what (the current entry is kept). */
static void
js_pause(pg_jmlstream_t *s, int what, unsigned ms)
{
    if (s->stopping) {
        js_drop(s);
        s->state = JS_STOPPED;
        return;
    }
    s->state = JS_PAUSED;
    s->resume = what;
    s->host->timer_arm(s->timer, ms);
}

/* A Redis step failed: log it, count it, pause, retry the same step. */
static void
js_error(pg_jmlstream_t *s, const char *step, pg_status_t st,
         const redisReply *rep, int what)
{
    s->stats.redis_errors++;
    pg_log(s->host, PG_LOG_WARN, "jml stream %s: %s: %s%s%.200s", s->k_stream,
           step, pg_status_str(st),
           rep != NULL && rep->type == REDIS_REPLY_ERROR && rep->str != NULL
               ? ": " : "",
           rep != NULL && rep->type == REDIS_REPLY_ERROR && rep->str != NULL
               ? rep->str : "");
    js_pause(s, what, JS_ERROR_PAUSE_MS);
}

static void
js_on_timer(void *arg)
{
    pg_jmlstream_t *s = arg;

    if (s->stopping) {
        js_drop(s);
        s->state = JS_STOPPED;
        return;
    }
    switch (s->resume) {
    case RS_APPLY:
        js_apply(s);
        break;
    case RS_ACK:
        js_ack(s);
        break;
    case RS_DEAD:
        js_dead(s);
        break;
    default:
        js_cycle(s);
        break;
    }
}

/* Send argv as the loop's command; a failure to send pauses. */
static void
js_send(pg_jmlstream_t *s, const char *step, int argc, const char **argv,
        unsigned timeout_ms, pg_redis_cb cb, int what)
{
    pg_status_t st = pg_redis_command(s->r, argc, argv, NULL, timeout_ms, cb,
                                      s, &s->op);

    if (st != PG_OK) {
        s->op = NULL;
        js_error(s, step, st, NULL, what);
    }
}

/* Take one entry from a reply: parse, then apply or dead-letter. */
static void
js_take(pg_jmlstream_t *s, const redisReply *entry)
{
    pg_err_t err = { "" };
    json_t *ev = NULL;

    js_drop(s);
    if (pg_jmlstream_parse_entry(entry, s->cfg->jml_stream.max_event_bytes,
                                 s->eid, sizeof(s->eid), &ev, &err)
        != PG_OK) {
        if (s->eid[0] == '\0') {
            /* nothing to acknowledge: cannot happen with a sane server */
            pg_log(s->host, PG_LOG_ERROR, "jml stream %s: %s", s->k_stream,
                   err.msg);
            js_pause(s, RS_CYCLE, JS_ERROR_PAUSE_MS);
            return;
        }
        snprintf(s->reason, sizeof(s->reason), "%s", err.msg);
        js_dead(s);
        return;
    }
    s->ev = ev;
    js_apply(s);
}

/* pg_jml_event finished with the current entry's event. */
static void
js_on_applied(void *arg, pg_status_t st, const json_t *summary)
{
    pg_jmlstream_t *s = arg;

    s->applying = 0;
    if (st == PG_OK) {
        if (json_is_true(json_object_get(summary, "duplicate"))) {
            s->stats.duplicate++;
        } else {
            s->stats.applied++;
        }
        js_ack(s);
        return;
    }
    /* not applied (Redis down, lease lost): the same entry again; on a
     * stop it stays pending and is read again later */
    s->stats.retried++;
    pg_log(s->host, PG_LOG_WARN, "jml stream %s: entry %s not applied (%s), "
           "retrying", s->k_stream, s->eid, pg_status_str(st));
    js_pause(s, RS_APPLY, st == PG_ERR_BUSY ? JS_BUSY_RETRY_MS
                                            : JS_ERROR_PAUSE_MS);
}

/* Hand the current event to pg_jml_event. */
static void
js_apply(pg_jmlstream_t *s)
{
    pg_err_t err = { "" };
    pg_status_t st;

    if (s->stopping) {
        js_drop(s);   /* not started: stays pending */
        s->state = JS_STOPPED;
        return;
    }
    s->state = JS_APPLYING;
    st = pg_jml_event(s->jml, s->ev, js_on_applied, s, &err);
    if (st == PG_OK) {
        s->applying = 1;
    } else if (st == PG_ERR_INVALID) {
        snprintf(s->reason, sizeof(s->reason), "%s", err.msg);
        js_dead(s);
    } else {
        /* PG_ERR_BUSY: an import or a webhook event runs; NOMEM */
        s->stats.retried++;
        js_pause(s, RS_APPLY, st == PG_ERR_BUSY ? JS_BUSY_RETRY_MS
                                                : JS_ERROR_PAUSE_MS);
    }
}

static void
js_on_ack(void *arg, pg_status_t st, const redisReply *rep)
{
    pg_jmlstream_t *s = arg;

    s->op = NULL;
    if (st == PG_ERR_CANCELLED) {
        return;
    }
    st = js_reply_st(st, rep);
    if (st != PG_OK) {
        /* unacknowledged, the entry would be applied again later (and be
         * a duplicate then); try the XACK again first */
        js_error(s, "XACK", st, rep, RS_ACK);
        return;
    }
    js_drop(s);
    js_cycle(s);
}

static void
js_ack(pg_jmlstream_t *s)
{
    const char *argv[4];

    argv[0] = "XACK";
    argv[1] = s->k_stream;
    argv[2] = s->cfg->jml_stream.group;
    argv[3] = s->eid;
    js_send(s, "XACK", 4, argv, 0, js_on_ack, RS_ACK);
}

static void
js_on_dead(void *arg, pg_status_t st, const redisReply *rep)
{
    pg_jmlstream_t *s = arg;
    const char *evid;

    s->op = NULL;
    if (st == PG_ERR_CANCELLED) {
        return;
    }
    st = js_reply_st(st, rep);
    if (st != PG_OK) {
        js_error(s, "dead letter", st, rep, RS_DEAD);
        return;
    }
    s->stats.invalid++;
    evid = json_string_value(json_object_get(s->ev, "id"));
    if (evid != NULL && strlen(evid) > 128) {
        evid = NULL;
    }
    pg_log(s->host, PG_LOG_WARN, "jml stream %s: entry %s dead-lettered: %s",
           s->k_stream, s->eid, s->reason);
    pg_audit_emit(s->audit, "jml.event", "denied", "invalid_event",
                  json_pack("{s:s, s:s, s:s, s:s?}", "source", "stream",
                            "entry", s->eid, "detail", s->reason,
                            "event", evid),
                  NULL);
    js_drop(s);
    js_cycle(s);
}

/* Copy the current entry's id and reason to <s>:dead and XACK it. The
 * payload is not copied (it stays in <s> until trimmed). */
static void
js_dead(pg_jmlstream_t *s)
{
    const char *evid = json_string_value(json_object_get(s->ev, "id"));
    const char *type = json_string_value(json_object_get(s->ev, "type"));
    const char *argv[12];

    if (evid == NULL || strlen(evid) > 128) {
        evid = "";
    }
    if (type == NULL || strlen(type) > 16) {
        type = "";
    }
    s->state = JS_APPLYING;
    argv[0] = "EVAL";
    argv[1] = js_dead_lua;
    argv[2] = "2";
    argv[3] = s->k_stream;
    argv[4] = s->k_dead;
    argv[5] = s->cfg->jml_stream.group;
    argv[6] = s->eid;
    argv[7] = s->reason;
    argv[8] = evid;
    argv[9] = type;
    argv[10] = s->consumer;
    argv[11] = JS_DEAD_MAXLEN;
    js_send(s, "dead letter", 12, argv, 0, js_on_dead, RS_DEAD);
}

/* XREADGROUP reply: nil, or [[stream, [entry, ...]]]. The first entry or
 * NULL; *bad = 1 when the shape is unexpected. */
static const redisReply *
js_first_entry(const redisReply *rep, int *bad)
{
    const redisReply *arr;

    *bad = 0;
    if (rep->type == REDIS_REPLY_NIL) {
        return NULL;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 1
        || rep->element[0]->type != REDIS_REPLY_ARRAY
        || rep->element[0]->elements != 2
        || rep->element[0]->element[1]->type != REDIS_REPLY_ARRAY) {
        *bad = 1;
        return NULL;
    }
    arr = rep->element[0]->element[1];
    return arr->elements > 0 ? arr->element[0] : NULL;
}

static void
js_on_read(void *arg, pg_status_t st, const redisReply *rep)
{
    pg_jmlstream_t *s = arg;
    const redisReply *e;
    int bad;

    s->op = NULL;
    if (st == PG_ERR_CANCELLED) {
        return;
    }
    st = js_reply_st(st, rep);
    if (st != PG_OK) {
        js_error(s, "XREADGROUP", st, rep, RS_CYCLE);
        return;
    }
    e = js_first_entry(rep, &bad);
    if (bad) {
        js_error(s, "XREADGROUP: unexpected reply", PG_ERR_INVALID, NULL,
                 RS_CYCLE);
    } else if (e == NULL) {
        js_cycle(s);      /* BLOCK ran out: look for abandoned entries */
    } else {
        js_take(s, e);
    }
}

static void
js_step_read(pg_jmlstream_t *s)
{
    char block[16];
    const char *argv[11];

    snprintf(block, sizeof(block), "%u", s->cfg->jml_stream.block_ms);
    argv[0] = "XREADGROUP";
    argv[1] = "GROUP";
    argv[2] = s->cfg->jml_stream.group;
    argv[3] = s->consumer;
    argv[4] = "COUNT";
    argv[5] = "1";
    argv[6] = "BLOCK";
    argv[7] = block;
    argv[8] = "STREAMS";
    argv[9] = s->k_stream;
    argv[10] = ">";
    s->state = JS_READING;
    js_send(s, "XREADGROUP", 11, argv,
            s->cfg->jml_stream.block_ms + JS_WAIT_SLACK_MS, js_on_read,
            RS_CYCLE);
}

static void
js_on_pending(void *arg, pg_status_t st, const redisReply *rep)
{
    pg_jmlstream_t *s = arg;
    const redisReply *e;
    int bad;

    s->op = NULL;
    if (st == PG_ERR_CANCELLED) {
        return;
    }
    st = js_reply_st(st, rep);
    if (st != PG_OK) {
        js_error(s, "XREADGROUP (pending)", st, rep, RS_CYCLE);
        return;
    }
    e = js_first_entry(rep, &bad);
    if (bad) {
        js_error(s, "XREADGROUP (pending): unexpected reply", PG_ERR_INVALID,
                 NULL, RS_CYCLE);
        return;
    }
    if (e == NULL) {
        s->pending_done = 1;
        js_cycle(s);
        return;
    }
    /* move the cursor past it, so even an entry that cannot be acked
     * does not hold this step forever */
    if (e->type == REDIS_REPLY_ARRAY && e->elements >= 1
        && e->element[0]->type == REDIS_REPLY_STRING
        && js_id_ok(e->element[0]->str, e->element[0]->len)) {
        memcpy(s->pend_cursor, e->element[0]->str, e->element[0]->len);
        s->pend_cursor[e->element[0]->len] = '\0';
    } else {
        s->pending_done = 1;
    }
    js_take(s, e);
}

/* This consumer's own pending entries (left by a previous run). */
static void
js_step_pending(pg_jmlstream_t *s)
{
    const char *argv[9];

    argv[0] = "XREADGROUP";
    argv[1] = "GROUP";
    argv[2] = s->cfg->jml_stream.group;
    argv[3] = s->consumer;
    argv[4] = "COUNT";
    argv[5] = "1";
    argv[6] = "STREAMS";
    argv[7] = s->k_stream;
    argv[8] = s->pend_cursor;
    s->state = JS_PENDING;
    js_send(s, "XREADGROUP (pending)", 9, argv, 0, js_on_pending, RS_CYCLE);
}

static void
js_on_claim(void *arg, pg_status_t st, const redisReply *rep)
{
    pg_jmlstream_t *s = arg;
    const redisReply *c, *arr;

    s->op = NULL;
    if (st == PG_ERR_CANCELLED) {
        return;
    }
    st = js_reply_st(st, rep);
    if (st != PG_OK) {
        js_error(s, "XAUTOCLAIM", st, rep, RS_CYCLE);
        return;
    }
    /* [next cursor, [entry, ...], [deleted id, ...] (Redis 7)] */
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 2
        || (c = rep->element[0])->type != REDIS_REPLY_STRING
        || !js_id_ok(c->str, c->len)
        || (arr = rep->element[1])->type != REDIS_REPLY_ARRAY) {
        snprintf(s->claim_cursor, sizeof(s->claim_cursor), "0-0");
        js_error(s, "XAUTOCLAIM: unexpected reply", PG_ERR_INVALID, NULL,
                 RS_CYCLE);
        return;
    }
    memcpy(s->claim_cursor, c->str, c->len);
    s->claim_cursor[c->len] = '\0';
    if (arr->elements > 0 && arr->element[0]->type != REDIS_REPLY_NIL) {
        pg_log(s->host, PG_LOG_INFO, "jml stream %s: reclaimed an idle entry",
               s->k_stream);
        js_take(s, arr->element[0]);
    } else if (strcmp(s->claim_cursor, "0-0") != 0) {
        js_cycle(s);      /* more of the pending list to scan */
    } else {
        js_step_read(s);
    }
}

/* Entries another (dead) consumer left idle for claim_idle_ms. */
static void
js_step_claim(pg_jmlstream_t *s)
{
    char idle[16];
    const char *argv[8];

    snprintf(idle, sizeof(idle), "%u", s->cfg->jml_stream.claim_idle_ms);
    argv[0] = "XAUTOCLAIM";
    argv[1] = s->k_stream;
    argv[2] = s->cfg->jml_stream.group;
    argv[3] = s->consumer;
    argv[4] = idle;
    argv[5] = s->claim_cursor;
    argv[6] = "COUNT";
    argv[7] = "1";
    s->state = JS_CLAIMING;
    js_send(s, "XAUTOCLAIM", 8, argv, 0, js_on_claim, RS_CYCLE);
}

static void
js_on_group(void *arg, pg_status_t st, const redisReply *rep)
{
    pg_jmlstream_t *s = arg;

    s->op = NULL;
    if (st == PG_ERR_CANCELLED) {
        return;
    }
    if (st == PG_OK && rep != NULL && rep->type == REDIS_REPLY_ERROR
        && rep->str != NULL && strncmp(rep->str, "BUSYGROUP", 9) == 0) {
        rep = NULL;       /* the group exists already: fine */
    } else {
        st = js_reply_st(st, rep);
    }
    if (st != PG_OK) {
        js_error(s, "XGROUP CREATE", st, rep, RS_CYCLE);
        return;
    }
    s->need_group = 0;
    js_cycle(s);
}

/* One loop iteration: [group] -> [own pending, once] -> claim -> read. */
static void
js_cycle(pg_jmlstream_t *s)
{
    const char *argv[6];

    if (s->stopping) {
        js_drop(s);
        s->state = JS_STOPPED;
        return;
    }
    if (s->op != NULL || s->applying) {
        return;
    }
    if (s->need_group) {
        argv[0] = "XGROUP";
        argv[1] = "CREATE";
        argv[2] = s->k_stream;
        argv[3] = s->cfg->jml_stream.group;
        argv[4] = "0";
        argv[5] = "MKSTREAM";
        s->state = JS_STARTING;
        js_send(s, "XGROUP CREATE", 6, argv, 0, js_on_group, RS_CYCLE);
    } else if (!s->pending_done) {
        js_step_pending(s);
    } else {
        js_step_claim(s);
    }
}
