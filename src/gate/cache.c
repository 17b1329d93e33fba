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

/* Drop every entry (the feed was interrupted: we may have missed some). */
static void
pg_cache_flush(pg_cache_t *c)
{
    if (c->map != NULL) {
        json_object_clear(c->map);
    }
}

static void
pg_cache_feed_state(void *arg, int live)
{
    pg_cache_t *c = arg;

    if (live && !c->live) {
        pg_log(c->g->host, PG_LOG_INFO, "session cache enabled (%u ms)",
               c->g->cfg->session.cache_ms);
    } else if (!live && c->live) {
        pg_log(c->g->host, PG_LOG_WARN, "session cache disabled until the "
               "revocation feed is back");
    }
    /* a (re)start may have missed revocations: start empty */
    pg_cache_flush(c);
    c->live = live;
}

/* One revocation: evict the sid, or every session of the identity. */
static void
pg_cache_feed_entry(void *arg, const char *const *names,
                    const char *const *values, size_t n)
{
    pg_cache_t *c = arg;
    size_t i;

    for (i = 0; i < n; i++) {
        if (strcmp(names[i], "sid") == 0) {
            json_object_del(c->map, values[i]);
        } else if (strcmp(names[i], "iid") == 0) {
            const char *sid;
            json_t *ent;
            void *tmp;

            json_object_foreach_safe(c->map, tmp, sid, ent) {
                const char *iid = json_string_value(json_object_get(
                    json_object_get(ent, "s"), "iid"));
                if (iid != NULL && strcmp(iid, values[i]) == 0) {
                    json_object_del(c->map, sid);
                }
            }
        }
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
    if (c->map == NULL) {
        return PG_ERR_NOMEM;
    }
    return pg_follow_start(&c->feed, g, "revoked", pg_cache_feed_entry,
                           pg_cache_feed_state, c);
}

void
pg_cache_free(pg_cache_t *c)
{
    pg_follow_stop(&c->feed);
    json_decref(c->map);
    c->map = NULL;
    c->live = 0;
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
