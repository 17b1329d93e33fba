/*
 * provgate core: per-process session cache with a revocation feed.
 *
 * A protected request normally costs one Redis GET and one JSON parse. With
 * session.cache_ms > 0 each process keeps parsed sessions for at most
 * cache_ms (and never past the session's own expiry), so most requests are
 * answered without any I/O.
 *
 * A cache must never keep a revoked session alive. Every revocation
 * (logout here, a leaver or an admin kill in the sidecar) is appended to the
 * stream <prefix>revoked (fields "sid" or "iid") in the same Lua script that
 * deletes the session. Each process follows that stream on its own Redis
 * connection with XREAD BLOCK, starting from the id that XREVRANGE gave
 * when the feed started, so no revocation after that point can be missed;
 * each one evicts at once.
 *
 * The cache is trusted only while the feed is live. Any feed error (Redis
 * down, timeout, bad reply) flushes the cache and disables it until the feed
 * has been re-established, and every request then reads Redis again. So a
 * revocation takes effect within the feed's latency (milliseconds), and
 * the cache never serves a session that Redis could not confirm.
 */
#include <stdlib.h>
#include <string.h>

#include <hiredis.h>

#include "gate_int.h"

#define PG_CACHE_MAX         50000   /* entries per process */
#define PG_FEED_BLOCK_MS     "10000"
#define PG_FEED_TIMEOUT_MS   15000   /* > the BLOCK time */
#define PG_FEED_RETRY_MS     250
#define PG_FEED_BATCH        "512"

static void pg_feed_start(pg_cache_t *c);
static void pg_feed_read(pg_cache_t *c);

static void
pg_feed_retry(void *arg)
{
    pg_feed_start(arg);
}

/* Drop every entry (the feed was interrupted: we may have missed some). */
static void
pg_cache_flush(pg_cache_t *c)
{
    if (c->map != NULL) {
        json_object_clear(c->map);
    }
}

static void
pg_feed_fail(pg_cache_t *c, const char *why)
{
    const pg_host_t *h = c->g->host;

    if (c->live) {
        pg_log(h, PG_LOG_WARN, "session cache disabled: revocation feed %s",
               why);
    }
    c->live = 0;
    pg_cache_flush(c);
    if (c->retry == NULL) {
        c->retry = h->timer_open(h->ctx, pg_feed_retry, c);
    }
    if (c->retry != NULL) {
        h->timer_arm(c->retry, PG_FEED_RETRY_MS);
    }
}

/* Apply one XREAD reply: evict every revoked sid / identity. */
static void
pg_feed_apply(pg_cache_t *c, const redisReply *reply)
{
    size_t s, e, f;

    /* [[stream, [[id, [field, value, ...]], ...]]] */
    for (s = 0; s < reply->elements; s++) {
        const redisReply *stream = reply->element[s];
        const redisReply *entries;

        if (stream->type != REDIS_REPLY_ARRAY || stream->elements != 2
            || stream->element[1]->type != REDIS_REPLY_ARRAY) {
            continue;
        }
        entries = stream->element[1];
        for (e = 0; e < entries->elements; e++) {
            const redisReply *ent = entries->element[e];
            const redisReply *fields;

            if (ent->type != REDIS_REPLY_ARRAY || ent->elements != 2
                || ent->element[0]->type != REDIS_REPLY_STRING
                || ent->element[1]->type != REDIS_REPLY_ARRAY
                || ent->element[0]->len >= sizeof(c->last_id)) {
                continue;
            }
            memcpy(c->last_id, ent->element[0]->str, ent->element[0]->len);
            c->last_id[ent->element[0]->len] = '\0';
            fields = ent->element[1];
            for (f = 0; f + 1 < fields->elements; f += 2) {
                const redisReply *k = fields->element[f];
                const redisReply *v = fields->element[f + 1];
                char val[256];

                if (k->type != REDIS_REPLY_STRING
                    || v->type != REDIS_REPLY_STRING || v->len >= sizeof(val)) {
                    continue;
                }
                memcpy(val, v->str, v->len);
                val[v->len] = '\0';
                if (k->len == 3 && memcmp(k->str, "sid", 3) == 0) {
                    json_object_del(c->map, val);
                } else if (k->len == 3 && memcmp(k->str, "iid", 3) == 0) {
                    const char *sid;
                    json_t *ent2;
                    void *tmp;

                    json_object_foreach_safe(c->map, tmp, sid, ent2) {
                        const char *iid = json_string_value(json_object_get(
                            json_object_get(ent2, "s"), "iid"));
                        if (iid != NULL && strcmp(iid, val) == 0) {
                            json_object_del(c->map, sid);
                        }
                    }
                }
            }
        }
    }
}

static void
pg_feed_read_done(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_cache_t *c = arg;

    c->op = NULL;
    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        pg_feed_fail(c, st != PG_OK ? pg_status_str(st) : "error reply");
        return;
    }
    if (reply->type == REDIS_REPLY_ARRAY) {
        pg_feed_apply(c, reply);
    }
    /* NIL: the BLOCK time passed without revocations */
    pg_feed_read(c);
}

static void
pg_feed_read(pg_cache_t *c)
{
    const char *argv[8];

    argv[0] = "XREAD"; argv[1] = "COUNT"; argv[2] = PG_FEED_BATCH;
    argv[3] = "BLOCK"; argv[4] = PG_FEED_BLOCK_MS; argv[5] = "STREAMS";
    argv[6] = c->stream; argv[7] = c->last_id;
    if (pg_redis_command(c->feed, 8, argv, NULL, PG_FEED_TIMEOUT_MS,
                         pg_feed_read_done, c, &c->op) != PG_OK) {
        c->op = NULL;
        pg_feed_fail(c, "could not send");
    }
}

static void
pg_feed_started(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_cache_t *c = arg;
    const redisReply *ent;

    c->op = NULL;
    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        pg_feed_fail(c, st != PG_OK ? pg_status_str(st) : "bad reply");
        return;
    }
    memcpy(c->last_id, "0-0", 4);
    if (reply->elements == 1) {
        ent = reply->element[0];
        if (ent->type == REDIS_REPLY_ARRAY && ent->elements == 2
            && ent->element[0]->type == REDIS_REPLY_STRING
            && ent->element[0]->len < sizeof(c->last_id)) {
            memcpy(c->last_id, ent->element[0]->str, ent->element[0]->len);
            c->last_id[ent->element[0]->len] = '\0';
        }
    }
    /* every revocation after last_id will reach us: trust the cache */
    if (!c->live) {
        pg_log(c->g->host, PG_LOG_INFO, "session cache enabled (%u ms)",
               c->g->cfg->session.cache_ms);
    }
    c->live = 1;
    pg_feed_read(c);
}

static void
pg_feed_start(pg_cache_t *c)
{
    const char *argv[6];

    pg_cache_flush(c);
    argv[0] = "XREVRANGE"; argv[1] = c->stream; argv[2] = "+"; argv[3] = "-";
    argv[4] = "COUNT"; argv[5] = "1";
    if (pg_redis_command(c->feed, 6, argv, NULL, 0, pg_feed_started, c,
                         &c->op) != PG_OK) {
        c->op = NULL;
        pg_feed_fail(c, "could not send");
    }
}

/*
 * Set up the cache of gate g (no-op when session.cache_ms is 0). The feed
 * uses its own Redis connection because XREAD BLOCK holds it.
 */
pg_status_t
pg_cache_init(pg_gate_t *g)
{
    pg_cache_t *c = &g->cache;

    memset(c, 0, sizeof(*c));
    c->g = g;
    if (g->cfg->session.cache_ms == 0) {
        return PG_OK;
    }
    c->map = json_object();
    c->stream = pg_key(g, "revoked", NULL);
    if (c->map == NULL || c->stream == NULL
        || pg_redis_new(g->host, &g->cfg->redis, &c->feed) != PG_OK) {
        return PG_ERR_NOMEM;
    }
    pg_feed_start(c);
    return PG_OK;
}

void
pg_cache_free(pg_cache_t *c)
{
    if (c->op != NULL) {
        pg_redis_cancel(c->op);
        c->op = NULL;
    }
    if (c->retry != NULL) {
        c->g->host->timer_close(c->retry);
        c->retry = NULL;
    }
    pg_redis_free(c->feed);
    c->feed = NULL;
    json_decref(c->map);
    c->map = NULL;
    free(c->stream);
    c->stream = NULL;
}

/* A cached session (borrowed) if the feed is live and it has not expired. */
const json_t *
pg_cache_get(pg_cache_t *c, const char *sid)
{
    json_t *ent;
    const pg_host_t *h;

    if (c->map == NULL || !c->live) {
        return NULL;
    }
    ent = json_object_get(c->map, sid);
    if (ent == NULL) {
        return NULL;
    }
    h = c->g->host;
    if ((uint64_t) json_integer_value(json_object_get(ent, "until"))
        <= h->now_ms(h->ctx)) {
        json_object_del(c->map, sid);
        return NULL;
    }
    return json_object_get(ent, "s");
}

/*
 * Remember sess (a new reference is taken) for sid until cache_ms from now,
 * but not past the session's "exp" (unix seconds). Only while the feed is
 * live; when full, expired entries are swept, then everything is dropped.
 */
void
pg_cache_put(pg_cache_t *c, const char *sid, json_t *sess, int64_t now_s)
{
    const pg_host_t *h;
    uint64_t now, until;
    json_int_t exp;
    json_t *ent;

    if (c->map == NULL || !c->live) {
        return;
    }
    h = c->g->host;
    now = h->now_ms(h->ctx);
    until = now + c->g->cfg->session.cache_ms;
    exp = json_integer_value(json_object_get(sess, "exp"));
    if (exp <= now_s) {
        return;
    }
    if ((uint64_t) (exp - now_s) * 1000 < until - now) {
        until = now + (uint64_t) (exp - now_s) * 1000;
    }
    if (json_object_size(c->map) >= PG_CACHE_MAX) {
        const char *k;
        json_t *v;
        void *tmp;

        json_object_foreach_safe(c->map, tmp, k, v) {
            if ((uint64_t) json_integer_value(json_object_get(v, "until"))
                <= now) {
                json_object_del(c->map, k);
            }
        }
        if (json_object_size(c->map) >= PG_CACHE_MAX) {
            pg_cache_flush(c);
        }
    }
    ent = json_pack("{s:I, s:O}", "until", (json_int_t) until, "s", sess);
    if (ent != NULL) {
        json_object_set_new(c->map, sid, ent);
    }
}

void
pg_cache_del(pg_cache_t *c, const char *sid)
{
    if (c->map != NULL) {
        json_object_del(c->map, sid);
    }
}
