/*
 * provgate core: follow a Redis Stream from "now" without missing entries.
 *
 * Used by the session cache (revocations, cache.c) and by logins waiting
 * for their provisioning outcome (outbox events, outbox_login.c). The
 * follower has its own Redis connection because XREAD BLOCK holds it. It
 * starts from the newest id that XREVRANGE reports, so every entry appended
 * after the start is delivered. On any error (Redis down, timeout, bad
 * reply) it reports "not live", retries every 250 ms and reports "live"
 * again once the start succeeded; entries appended while it was down are
 * NOT replayed, so users must treat "not live" as "I may have missed
 * something" (the cache flushes; waiters poll).
 */
#include <stdlib.h>
#include <string.h>

#include <hiredis.h>

#include "gate_int.h"

#define PG_FOLLOW_BLOCK_MS   "10000"
#define PG_FOLLOW_TIMEOUT_MS 15000   /* > the BLOCK time */
#define PG_FOLLOW_RETRY_MS   250
#define PG_FOLLOW_BATCH      "512"
#define PG_FOLLOW_VALUE_MAX  1024    /* field/value length cap */

static void pg_follow_begin(pg_follow_t *f);
static void pg_follow_read(pg_follow_t *f);

static void
pg_follow_retry(void *arg)
{
    pg_follow_begin(arg);
}

static void
pg_follow_fail(pg_follow_t *f, const char *why)
{
    const pg_host_t *h = f->g->host;
    int was = f->live;

    f->live = 0;
    if (was) {
        pg_log(h, PG_LOG_WARN, "stream %s: feed lost (%s)", f->stream, why);
    }
    f->on_state(f->arg, 0);
    if (f->retry == NULL) {
        f->retry = h->timer_open(h->ctx, pg_follow_retry, f);
    }
    if (f->retry != NULL) {
        h->timer_arm(f->retry, PG_FOLLOW_RETRY_MS);
    }
}

/* Hand each entry's field/value pairs (NUL-terminated copies) to on_entry. */
static void
pg_follow_apply(pg_follow_t *f, const redisReply *reply)
{
    size_t s, e, i, n;
    const char *names[16], *values[16];
    char buf[16][2][PG_FOLLOW_VALUE_MAX];

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
                || ent->element[0]->len >= sizeof(f->last_id)) {
                continue;
            }
            memcpy(f->last_id, ent->element[0]->str, ent->element[0]->len);
            f->last_id[ent->element[0]->len] = '\0';
            fields = ent->element[1];
            n = 0;
            for (i = 0; i + 1 < fields->elements && n < 16; i += 2) {
                const redisReply *k = fields->element[i];
                const redisReply *v = fields->element[i + 1];

                if (k->type != REDIS_REPLY_STRING
                    || v->type != REDIS_REPLY_STRING
                    || k->len >= PG_FOLLOW_VALUE_MAX
                    || v->len >= PG_FOLLOW_VALUE_MAX) {
                    continue;
                }
                memcpy(buf[n][0], k->str, k->len);
                buf[n][0][k->len] = '\0';
                memcpy(buf[n][1], v->str, v->len);
                buf[n][1][v->len] = '\0';
                names[n] = buf[n][0];
                values[n] = buf[n][1];
                n++;
            }
            f->on_entry(f->arg, names, values, n);
        }
    }
}

static void
pg_follow_read_done(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_follow_t *f = arg;

    f->op = NULL;
    if (st != PG_OK || reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        pg_follow_fail(f, st != PG_OK ? pg_status_str(st) : "error reply");
        return;
    }
    if (reply->type == REDIS_REPLY_ARRAY) {
        pg_follow_apply(f, reply);
    }
    /* NIL: the BLOCK time passed without entries */
    pg_follow_read(f);
}

static void
pg_follow_read(pg_follow_t *f)
{
    const char *argv[8];

    argv[0] = "XREAD"; argv[1] = "COUNT"; argv[2] = PG_FOLLOW_BATCH;
    argv[3] = "BLOCK"; argv[4] = PG_FOLLOW_BLOCK_MS; argv[5] = "STREAMS";
    argv[6] = f->stream; argv[7] = f->last_id;
    if (pg_redis_command(f->r, 8, argv, NULL, PG_FOLLOW_TIMEOUT_MS,
                         pg_follow_read_done, f, &f->op) != PG_OK) {
        f->op = NULL;
        pg_follow_fail(f, "could not send");
    }
}

static void
pg_follow_started(void *arg, pg_status_t st, const redisReply *reply)
{
    pg_follow_t *f = arg;
    const redisReply *ent;

    f->op = NULL;
    if (st != PG_OK || reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        pg_follow_fail(f, st != PG_OK ? pg_status_str(st) : "bad reply");
        return;
    }
    memcpy(f->last_id, "0-0", 4);
    if (reply->elements == 1) {
        ent = reply->element[0];
        if (ent->type == REDIS_REPLY_ARRAY && ent->elements == 2
            && ent->element[0]->type == REDIS_REPLY_STRING
            && ent->element[0]->len < sizeof(f->last_id)) {
            memcpy(f->last_id, ent->element[0]->str, ent->element[0]->len);
            f->last_id[ent->element[0]->len] = '\0';
        }
    }
    /* every entry after last_id will reach us */
    f->live = 1;
    f->on_state(f->arg, 1);
    pg_follow_read(f);
}

static void
pg_follow_begin(pg_follow_t *f)
{
    const char *argv[6];

    argv[0] = "XREVRANGE"; argv[1] = f->stream; argv[2] = "+"; argv[3] = "-";
    argv[4] = "COUNT"; argv[5] = "1";
    if (pg_redis_command(f->r, 6, argv, NULL, 0, pg_follow_started, f,
                         &f->op) != PG_OK) {
        f->op = NULL;
        pg_follow_fail(f, "could not send");
    }
}

/*
 * Start following <prefix><suffix> on a new connection. on_entry gets each
 * entry's fields (at most 16 pairs, each string under 1 KiB; longer ones
 * are skipped); on_state(arg, live) is called on every change of liveness
 * (and on each failed retry with 0). f is owned by the caller and must stay
 * put until pg_follow_stop().
 */
pg_status_t
pg_follow_start(pg_follow_t *f, pg_gate_t *g, const char *suffix,
                pg_follow_entry_fn on_entry, pg_follow_state_fn on_state,
                void *arg)
{
    memset(f, 0, sizeof(*f));
    f->g = g;
    f->on_entry = on_entry;
    f->on_state = on_state;
    f->arg = arg;
    f->stream = pg_key(g, suffix, NULL);
    if (f->stream == NULL
        || pg_redis_new(g->host, &g->cfg->redis, &f->r) != PG_OK) {
        free(f->stream);
        f->stream = NULL;
        return PG_ERR_NOMEM;
    }
    pg_follow_begin(f);
    return PG_OK;
}

/* Stop following and release everything; no callback runs afterwards.
 * Safe on a zeroed or already stopped follower. */
void
pg_follow_stop(pg_follow_t *f)
{
    if (f->op != NULL) {
        pg_redis_cancel(f->op);
        f->op = NULL;
    }
    if (f->retry != NULL) {
        f->g->host->timer_close(f->retry);
        f->retry = NULL;
    }
    pg_redis_free(f->r);
    f->r = NULL;
    free(f->stream);
    f->stream = NULL;
    f->live = 0;
}
