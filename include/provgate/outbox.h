/*
 * provgate core: durable provisioning outbox on a Redis Stream.
 *
 * Every provisioning operation is appended to <prefix>outbox BEFORE it is
 * attempted (pg_outbox_enqueue). Workers (the sidecar, or a gateway) run a
 * consumer (pg_outbox_consumer_*) in a consumer group; the caller's handler
 * applies the operation and reports done / retry / fail. The outbox counts
 * attempts, backs off (delayed ZSET <prefix>outbox:delayed), dead-letters
 * after max_attempts (<prefix>outbox:dead) and publishes a per-operation
 * status stream (<prefix>outbox:status:<idem>) that a login can wait on
 * with XREAD BLOCK (pg_outbox_wait); every terminal outcome is also
 * appended to <prefix>outbox:events (idem, status, error; MAXLEN ~10000)
 * so one follower per process can wake all its waiters. A token bucket per target
 * (pg_outbox_rate_take) is shared by every process through Redis.
 * Design, keys and guarantees: docs/outbox.md.
 *
 * Everything is asynchronous on pg_redis (argv API, Lua via EVAL). Like
 * pg_redis, no callback ever runs inside the call that started it.
 *
 * Clients: pg_outbox_wait and the consumer issue blocking reads (XREAD /
 * XREADGROUP BLOCK), which hold their connection for the block time. Give
 * each of them a pg_redis_t of its own; enqueue, rate and dead-letter calls
 * use any ordinary client.
 *
 * Requests (pg_outbox_req_t): every one-shot call returns a handle through
 * *req_out (may be NULL). pg_outbox_cancel(req) guarantees the callback is
 * not called; the handle is invalid after the callback ran or after cancel.
 * A cancelled command may still have been executed by Redis.
 */
#ifndef PROVGATE_OUTBOX_H
#define PROVGATE_OUTBOX_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "provgate/host.h"
#include "provgate/redis.h"

#define PG_OUTBOX_IDEM_MAX      128        /* idempotency key length cap */
#define PG_OUTBOX_FIELD_MAX     1024       /* identity/target/kind/error cap */
#define PG_OUTBOX_STATE_MAX     (64 * 1024) /* desired-state JSON cap */
#define PG_OUTBOX_ID_MAX        64         /* stream id text cap */

typedef struct pg_outbox_req pg_outbox_req_t;

/* One operation as stored in a stream (outbox or dead letters). All
 * strings are NUL-terminated and owned by the outbox; valid only for the
 * duration of the callback (consumer handler: until pg_outbox_job_done). */
typedef struct pg_outbox_entry {
    const char *id;          /* stream entry id */
    const char *idem;        /* idempotency key */
    const char *identity;    /* identity id */
    const char *target;      /* target system (also the rate-limit key) */
    const char *kind;        /* operation kind, e.g. "create", "update" */
    const char *state;       /* desired state, compact JSON text */
    unsigned attempt;        /* attempts already made before this delivery */
    const char *last_error;  /* error of the previous attempt, "" if none */
    uint64_t created_ms;     /* Redis server time of the first enqueue */
    int reclaimed;           /* delivered by XAUTOCLAIM (a consumer died) */
    int own;                 /* delivered by the enqueue of this process
                                (pg_outbox_op_t.own), not by a read */
    /* Dead letters only ("" / 0 otherwise): */
    const char *reason;      /* why it was dead-lettered */
    const char *orig_id;     /* its id in the outbox stream */
    uint64_t dead_ms;        /* when it was dead-lettered */
} pg_outbox_entry_t;

/* Cancel a pending request: its callback will not run; req is invalid. */
void pg_outbox_cancel(pg_outbox_req_t *req);

/* ---- enqueue --------------------------------------------------------- */

typedef struct pg_outbox_consumer pg_outbox_consumer_t;

typedef struct pg_outbox_op {
    const char *idem;        /* optional; NULL/"" = derived (see below) */
    const char *identity;    /* required, <= PG_OUTBOX_FIELD_MAX */
    const char *target;      /* required, <= PG_OUTBOX_FIELD_MAX */
    const char *kind;        /* required, <= PG_OUTBOX_FIELD_MAX */
    const json_t *state;     /* required desired state (any JSON value) */
    unsigned dedup_ttl_s;    /* lifetime of the idempotency key; 0 = 86400 */
    int release_when_done;   /* derived key gets the "live:" prefix: it
                                deduplicates only while the operation is
                                pending and is released when it is done, so
                                the same desired state can be applied again
                                later (a login after A -> B -> A). Any key
                                that starts with "live:" behaves so. */
    pg_outbox_consumer_t *own;  /* optional: a consumer of this process.
                                When the entry is created now and every
                                earlier entry of the stream has already been
                                delivered, the same script delivers it to
                                this consumer (XREADGROUP, so it is in its
                                pending list like any delivery) and its
                                handler is called right after the enqueue
                                callback: the process that enqueued applies
                                it without waiting for a read. Otherwise
                                (backlog, no group yet, consumer freed
                                meanwhile) the entry is delivered as usual.
                                The consumer must outlive the request or
                                be freed normally (it detaches). */
} pg_outbox_op_t;

typedef struct pg_outbox_enqueued {
    const char *id;          /* the entry id (new or existing) */
    const char *idem;
    int created;             /* 1 = appended now, 0 = an entry existed */
    int own;                 /* 1 = delivered to op->own: its handler is
                                called with it after this callback */
} pg_outbox_enqueued_t;

typedef void (*pg_outbox_enqueue_cb)(void *arg, pg_status_t st,
                                     const pg_outbox_enqueued_t *res);

/*
 * Compute the derived idempotency key of op into out (outsz >= 44):
 * base64url(sha256(identity \n target \n kind \n state)) where state is
 * serialized with sorted keys, so equal desired states give equal keys;
 * prefixed with "live:" when op->release_when_done (outsz >= 49).
 * A caller-given op->idem is validated ([A-Za-z0-9._:@-], 1..128 chars)
 * and copied instead (outsz >= PG_OUTBOX_IDEM_MAX + 1).
 */
PG_MUST_USE pg_status_t pg_outbox_idem(const pg_outbox_op_t *op, char *out,
                                       size_t outsz);

/*
 * Append op to <prefix>outbox unless an entry with the same idempotency key
 * exists (atomic Lua: SET NX <prefix>outbox:key:<idem> + XADD). idem_out
 * (may be NULL; size >= PG_OUTBOX_IDEM_MAX + 1) receives the key at once so
 * the caller can pg_outbox_wait() for it. cb: PG_OK with res, or the error
 * (PG_ERR_REDIS, PG_ERR_TIMEOUT). Synchronous errors: PG_ERR_INVALID,
 * PG_ERR_TOO_LARGE, PG_ERR_NOMEM (no callback then).
 */
PG_MUST_USE pg_status_t pg_outbox_enqueue(pg_redis_t *r,
                                          const pg_outbox_op_t *op,
                                          unsigned timeout_ms,
                                          pg_outbox_enqueue_cb cb, void *arg,
                                          char *idem_out,
                                          pg_outbox_req_t **req_out);

/* ---- waiting for completion ----------------------------------------- */

typedef enum pg_outbox_state {
    PG_OUTBOX_PENDING = 0,   /* no terminal status yet */
    PG_OUTBOX_DONE,          /* handler reported success */
    PG_OUTBOX_FAILED         /* dead-lettered (fail or attempts exhausted) */
} pg_outbox_state_t;

typedef struct pg_outbox_status {
    pg_outbox_state_t state;
    unsigned attempts;       /* attempts made so far */
    const char *error;       /* last error, "" if none */
} pg_outbox_status_t;

typedef void (*pg_outbox_wait_cb)(void *arg, pg_status_t st,
                                  const pg_outbox_status_t *s);

/*
 * Wait up to budget_ms for the operation idem to reach a terminal state,
 * with XREAD BLOCK on <prefix>outbox:status:<idem> (read from the start,
 * so a completion before the wait began is seen at once; no polling).
 * host supplies the clock for the budget across several reads.
 * rb must be a client dedicated to blocking reads (waits on one client are
 * served one after the other by Redis).
 * cb: PG_OK with s->state DONE or FAILED; PG_ERR_TIMEOUT when the budget
 * ran out (s non-NULL: PENDING with attempts/error of the last retry seen);
 * PG_ERR_REDIS / PG_ERR_INVALID (bad reply) with s NULL.
 */
PG_MUST_USE pg_status_t pg_outbox_wait(const pg_host_t *host,
                                       pg_redis_t *rb, const char *idem,
                                       unsigned budget_ms,
                                       pg_outbox_wait_cb cb, void *arg,
                                       pg_outbox_req_t **req_out);

/* ---- consumer -------------------------------------------------------- */

typedef enum pg_outbox_result {
    PG_OUTBOX_RESULT_DONE = 0,  /* applied: XACK, status "done" */
    PG_OUTBOX_RESULT_RETRY,     /* transient: back off, or dead at the max */
    PG_OUTBOX_RESULT_FAIL       /* permanent: dead-letter now */
} pg_outbox_result_t;

typedef struct pg_outbox_job pg_outbox_job_t;

/*
 * Called once per delivered entry. The handler applies the operation
 * (possibly asynchronously) and must call pg_outbox_job_done(job, ...)
 * exactly once, from inside the handler or later. e is valid until then.
 */
typedef void (*pg_outbox_handler)(void *arg, pg_outbox_job_t *job,
                                  const pg_outbox_entry_t *e);

typedef struct pg_outbox_config {
    const char *group;        /* consumer group; default "provgate" */
    const char *consumer;     /* required: unique per worker process */
    unsigned batch;           /* entries per read; default 16, max 1000 */
    unsigned block_ms;        /* XREADGROUP BLOCK; default 1000 (this also
                                 bounds how late a due retry is moved) */
    unsigned claim_idle_ms;   /* reclaim entries idle this long; 30000 */
    unsigned max_attempts;    /* dead-letter after this many; default 5 */
    unsigned backoff_base_ms; /* first retry delay; default 1000 */
    unsigned backoff_max_ms;  /* cap; default 300000 */
    unsigned status_ttl_s;    /* status stream lifetime; default 3600 */
    unsigned error_pause_ms;  /* pause after a Redis error; default 250 */
    /* Optional: once host->exiting() says the process is shutting down,
     * the consumer fetches more only while needed(arg) (the handler's arg)
     * returns non-zero, e.g. while requests of this process still wait for
     * operations; otherwise it idles, checking again every 200 ms. NULL:
     * it stops fetching at once. Entries already delivered are always
     * handed to the handler. */
    int (*needed)(void *arg);
} pg_outbox_config_t;


/*
 * Create a consumer on rb (a client used only by this consumer: it blocks
 * in XREADGROUP) and start it: it creates the group (MKSTREAM) if needed
 * and loops: move due retries -> XAUTOCLAIM stuck entries -> XREADGROUP ->
 * handler for each entry of the batch -> finish each (Lua) -> repeat.
 * cfg is copied. Redis errors are logged and the loop resumes after
 * error_pause_ms.
 */
PG_MUST_USE pg_status_t pg_outbox_consumer_new(const pg_host_t *host,
                                               pg_redis_t *rb,
                                               const pg_outbox_config_t *cfg,
                                               pg_outbox_handler handler,
                                               void *arg,
                                               pg_outbox_consumer_t **out);

/*
 * Stop and free (call before freeing rb). Jobs still in the handler stay
 * valid: their pg_outbox_job_done() then frees them without touching
 * Redis, so their entries stay pending and are reclaimed later.
 */
void pg_outbox_consumer_free(pg_outbox_consumer_t *c);

/*
 * Report the outcome of job; error (may be NULL) is recorded, capped at
 * PG_OUTBOX_FIELD_MAX. DONE acks; RETRY re-schedules with exponential
 * backoff and full jitter in [d/2, d], d = min(max, base * 2^(attempt-1)),
 * or dead-letters once attempt count reaches max_attempts; FAIL
 * dead-letters. The first finisher of an entry wins: if the entry is no
 * longer pending (another consumer reclaimed and finished it), nothing is
 * changed. job is invalid afterwards.
 */
void pg_outbox_job_done(pg_outbox_job_t *job, pg_outbox_result_t res,
                        const char *error);

typedef struct pg_outbox_stats {
    uint64_t delivered;       /* handler calls */
    uint64_t reclaimed;       /* of which via XAUTOCLAIM */
    uint64_t done, retried, dead;
    uint64_t lost_race;       /* finishes that found the entry not pending */
    uint64_t promoted;        /* due retries moved back into the stream */
    uint64_t redis_errors;
    uint64_t own;             /* of delivered: by this process's enqueue */
} pg_outbox_stats_t;

void pg_outbox_consumer_stats(const pg_outbox_consumer_t *c,
                              pg_outbox_stats_t *out);

/* ---- dead letters ---------------------------------------------------- */

/* What a dead-letter move did, for the caller's audit log. */
typedef struct pg_outbox_move {
    const char *from_id;      /* dead-letter id */
    const char *to_id;        /* new outbox id (retry), "" (discard) */
    const char *idem;
    const char *reason;       /* the dead-letter reason */
} pg_outbox_move_t;

typedef void (*pg_outbox_list_cb)(void *arg, pg_status_t st,
                                  const pg_outbox_entry_t *entries, size_t n);
typedef void (*pg_outbox_move_cb)(void *arg, pg_status_t st,
                                  const pg_outbox_move_t *m);

/* List up to count (1..1000) dead letters with id >= start ("-" or NULL:
 * from the oldest). */
PG_MUST_USE pg_status_t pg_outbox_dead_list(pg_redis_t *r, const char *start,
                                            unsigned count,
                                            pg_outbox_list_cb cb, void *arg,
                                            pg_outbox_req_t **req_out);

/* Move dead letter id back into the outbox with attempt 0 (atomic Lua).
 * cb: PG_ERR_NOT_FOUND if no such dead letter; PG_ERR_CONFLICT (dead letter
 * kept) if a live entry with the same idempotency key exists meanwhile. */
PG_MUST_USE pg_status_t pg_outbox_dead_retry(pg_redis_t *r, const char *id,
                                             unsigned dedup_ttl_s,
                                             pg_outbox_move_cb cb, void *arg,
                                             pg_outbox_req_t **req_out);

/* Delete dead letter id. cb: PG_ERR_NOT_FOUND if absent. */
PG_MUST_USE pg_status_t pg_outbox_dead_discard(pg_redis_t *r, const char *id,
                                               pg_outbox_move_cb cb, void *arg,
                                               pg_outbox_req_t **req_out);

/* ---- rate limiting --------------------------------------------------- */

typedef struct pg_outbox_rate {
    int allowed;              /* 1: n tokens taken */
    uint64_t wait_ms;         /* if not allowed: when n tokens will be there */
    unsigned remaining;       /* whole tokens left */
} pg_outbox_rate_t;

typedef void (*pg_outbox_rate_cb)(void *arg, pg_status_t st,
                                  const pg_outbox_rate_t *res);

/*
 * Token bucket <prefix>outbox:rate:<target> (atomic Lua on Redis time):
 * holds up to capacity tokens, refilled at refill_per_s tokens/second;
 * takes n tokens if available. PG_ERR_INVALID (synchronous) for n == 0,
 * n > capacity, capacity == 0 or refill_per_s == 0.
 */
PG_MUST_USE pg_status_t pg_outbox_rate_take(pg_redis_t *r, const char *target,
                                            unsigned capacity,
                                            unsigned refill_per_s, unsigned n,
                                            pg_outbox_rate_cb cb, void *arg,
                                            pg_outbox_req_t **req_out);

#endif
