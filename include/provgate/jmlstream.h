/*
 * provgate core: Join / Move / Leave events from a Redis Stream (the
 * sidecar's second event input next to POST /events; docs/sidecar.md
 * "Events from a Redis Stream"). Host-independent: runs on any pg_host_t.
 *
 * Other systems XADD entries with one field "event" holding the JSON event
 * of pg_jml_event() to <p><hr_source.event_stream.stream>. Every sidecar
 * reads the stream as one consumer of a shared group, so each entry is
 * delivered to one sidecar; pg_jml_event's idempotency by event id makes a
 * redelivery (or the same event added twice) harmless.
 *
 * The loop (one entry at a time, one Redis command in flight):
 *   XGROUP CREATE ... MKSTREAM (BUSYGROUP is fine)
 *   XREADGROUP ... STREAMS s 0   this consumer's own pending entries
 *                                (after a restart), once
 *   XAUTOCLAIM ... claim_idle_ms entries of dead consumers
 *   XREADGROUP ... BLOCK ... >   new entries
 * An entry is applied with pg_jml_event(); once its callback reports
 * PG_OK (applied or a duplicate) it is XACKed. PG_ERR_BUSY: the same
 * entry is tried again shortly. A malformed or invalid entry is copied to
 * <stream>:dead ({"entry", "reason", "event_id"?, "type"?}; never the
 * payload) and XACKed in one script, audited (jml.event denied) and
 * counted. A Redis error pauses the loop, then the same step is retried.
 *
 * The client passed in must be used by nothing else: XREADGROUP BLOCK
 * holds its connection for up to block_ms.
 */
#ifndef PROVGATE_JMLSTREAM_H
#define PROVGATE_JMLSTREAM_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "provgate/audit.h"
#include "provgate/config.h"
#include "provgate/host.h"
#include "provgate/jml.h"
#include "provgate/redis.h"

struct redisReply;

typedef struct pg_jmlstream pg_jmlstream_t;

typedef struct pg_jmlstream_stats {
    uint64_t applied;          /* events applied (callback PG_OK) */
    uint64_t duplicate;        /* event ids applied before */
    uint64_t invalid;          /* dead-lettered entries */
    uint64_t retried;          /* busy or failed applies tried again */
    uint64_t redis_errors;     /* loop pauses after a Redis error */
} pg_jmlstream_stats_t;

/*
 * A consumer for cfg->jml_stream named consumer (1-200 bytes of A-Z a-z
 * 0-9 - _ . : @ [ ]; stable across restarts of one sidecar, so its own
 * pending entries are found again). cfg, host, redis (dedicated, see
 * above), jml and audit are borrowed. While an event is being applied,
 * jml holds a callback into the consumer: free jml first (pg_jml_free
 * never calls back), then the consumer. PG_ERR_INVALID with err for a bad
 * name or a config without an event stream; PG_ERR_NOMEM.
 */
PG_MUST_USE pg_status_t pg_jmlstream_new(const pg_config_t *cfg,
                                         const pg_host_t *host,
                                         pg_redis_t *redis, pg_jml_t *jml,
                                         pg_audit_t *audit,
                                         const char *consumer,
                                         pg_jmlstream_t **out, pg_err_t *err);

/* Start the loop (from the event loop, never blocking). PG_ERR_NOMEM. */
PG_MUST_USE pg_status_t pg_jmlstream_start(pg_jmlstream_t *s);

/*
 * Stop fetching (SIGTERM): the read in flight is cancelled; an event being
 * applied may still finish and be XACKed, otherwise it stays pending and
 * is read again by this consumer after a restart or reclaimed by another
 * one after claim_idle_ms. Idempotent.
 */
void pg_jmlstream_stop(pg_jmlstream_t *s);

/* Cancel everything; no callback runs afterwards. NULL is fine. */
void pg_jmlstream_free(pg_jmlstream_t *s);

/* "starting", "pending", "claiming", "reading", "applying", "paused",
 * "stopped" (for /healthz). Never NULL. */
const char *pg_jmlstream_state(const pg_jmlstream_t *s);

/* A copy of the counters. */
void pg_jmlstream_get_stats(const pg_jmlstream_t *s,
                            pg_jmlstream_stats_t *out);

/*
 * Pure: one stream entry as returned by XREADGROUP/XAUTOCLAIM,
 * [id, [field, value, ...]], into its id (copied into id, idsz >= 64)
 * and the parsed event (*event, owned by the caller). The entry must have
 * exactly one field, "event", of at most max_bytes holding a JSON object
 * (duplicate keys refused). Returns PG_OK; PG_ERR_INVALID with a reason
 * in err that never quotes the payload (id is still set when readable,
 * else ""); *event is NULL on any error.
 */
PG_MUST_USE pg_status_t pg_jmlstream_parse_entry(
    const struct redisReply *entry, size_t max_bytes, char *id, size_t idsz,
    json_t **event, pg_err_t *err);

#endif
