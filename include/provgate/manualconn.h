/*
 * provgate connectors: the manual connector ("manual").
 *
 * For a system without an API: ensure/disable/remove do not touch the
 * target, they create a WORK ITEM for a human (what to do, for whom, why)
 * in Redis. The account counts as provisioned only once a human marked the
 * item done; until then the operation reports PG_CONN_QUEUED.
 *
 * Redis layout (P = prefix, T = target name), all changes by EVAL Lua:
 *   P manual:T:items    hash  item id -> item JSON (immutable description)
 *   P manual:T:status   hash  item id -> {"status":"open"|"done"|"rejected"|
 *                             "superseded","outcome","at","by","note",
 *                             "done_at","acked"}
 *   P manual:T:open     zset  open item ids scored by creation time (ms)
 *   P manual:T:pending  hash  account key -> its newest open item id
 *   P manual:T:accts    hash  account key -> recorded state of a done item
 *                             {"item","base","active","done_at","by"}
 *
 * Item id: base64url(SHA-256) of the canonical (sorted keys, compact) JSON
 * {target, op, key, desired}, so the same desired change for the same
 * account maps to the same item and is never queued twice.
 *
 * Config (the target's "connector" object, every other key refused):
 *   "type":         "manual" (accepted, not required)
 *   "instructions": text shown to the human in every item (optional,
 *                   at most 2048 bytes)
 *   "max_open":     1..1000000 open items per target, default 10000
 *                   (beyond: PG_ERR_BUSY, retryable)
 *   "timeout_ms":   0..60000 per Redis command, default 0 (client default)
 */
#ifndef PROVGATE_MANUALCONN_H
#define PROVGATE_MANUALCONN_H

#include <jansson.h>
#include "provgate/connector.h"
#include "provgate/redis.h"

#define PG_MANUAL_ID_MAX       64     /* item id length cap (43 today) */
#define PG_MANUAL_NOTE_MAX     1024   /* by / note length cap */
#define PG_MANUAL_LIST_MAX     1000   /* open items per admin listing */

/*
 * Create a manual connector for target name. redis is borrowed (must
 * outlive the connector); prefix is copied (NULL: pg_redis_prefix(redis)).
 * On success *out is owned by the caller (pg_connector_free()). On a bad
 * config: PG_ERR_CONFIG and err = "targets.<name>.connector.<key>:
 * <reason>". The target name must not contain ':', braces or spaces
 * (it is part of Redis keys): PG_ERR_INVALID.
 */
PG_MUST_USE pg_status_t pg_manual_connector_new(const pg_host_t *host,
                                                pg_redis_t *redis,
                                                const char *prefix,
                                                const char *name,
                                                const json_t *cfg,
                                                pg_connector_t **out,
                                                pg_err_t *err);

/* The same, with the JSON path of cfg for error messages given by the
 * caller. */
PG_MUST_USE pg_status_t pg_manual_connector_new_at(const pg_host_t *host,
                                                   pg_redis_t *redis,
                                                   const char *prefix,
                                                   const char *name,
                                                   const json_t *cfg,
                                                   const char *path,
                                                   pg_connector_t **out,
                                                   pg_err_t *err);

/*
 * Admin: list up to limit (1..PG_MANUAL_LIST_MAX) open items, oldest
 * first. cb gets a JSON array of item objects
 *   {"id","target","op","key","identity","desired":{...},"summary",
 *    "instructions","created_ms","status":"open","outcome"}
 * (items is borrowed: valid only during cb; NULL on error, with error set).
 * Called exactly once, from the loop; *req_out (may be NULL) can be
 * cancelled with pg_conn_cancel(). c must be a manual connector.
 */
typedef void (*pg_manual_items_cb)(void *arg, pg_status_t st,
                                   const json_t *items, const char *error);
PG_MUST_USE pg_status_t pg_manual_list_open(pg_connector_t *c, size_t limit,
                                            pg_manual_items_cb cb, void *arg,
                                            pg_conn_req_t **req_out);

/*
 * Admin: resolve an open item. pg_manual_mark_done records the item's
 * desired state as the account's state on the target (so ensure reports
 * it as provisioned); pg_manual_reject closes it without effect (the same
 * desired change then fails with PG_ERR_DENIED until it changes). by (who,
 * required) and note (may be NULL) are capped at PG_MANUAL_NOTE_MAX.
 * cb statuses: PG_OK; PG_ERR_NOT_FOUND (no such item); PG_ERR_CONFLICT
 * (item not open: already done, rejected or superseded); PG_ERR_REDIS /
 * PG_ERR_TIMEOUT. Same calling rules as pg_manual_list_open().
 */
typedef void (*pg_manual_done_cb)(void *arg, pg_status_t st,
                                  const char *error);
PG_MUST_USE pg_status_t pg_manual_mark_done(pg_connector_t *c,
                                            const char *item_id,
                                            const char *by, const char *note,
                                            pg_manual_done_cb cb, void *arg,
                                            pg_conn_req_t **req_out);
PG_MUST_USE pg_status_t pg_manual_reject(pg_connector_t *c,
                                         const char *item_id, const char *by,
                                         const char *note,
                                         pg_manual_done_cb cb, void *arg,
                                         pg_conn_req_t **req_out);

/*
 * The item id a desired change maps to (op "ensure", "disable" or
 * "remove"), for tests and admin tools: out gets 43 chars + NUL
 * (outsz >= 44). PG_ERR_INVALID for a bad account.
 */
PG_MUST_USE pg_status_t pg_manual_item_id(const pg_connector_t *c,
                                          const char *op,
                                          const pg_account_t *a, char *out,
                                          size_t outsz);

#endif
