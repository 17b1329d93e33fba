/*
 * provgate core: non-blocking Redis client on the host event interface.
 *
 * hiredis async runs on top of pg_host_t watches; every command has its own
 * timeout timer. Commands go through the argv API only (no format strings).
 *
 * Callback contract:
 *  - cb is called exactly once per successful pg_redis_command(), unless the
 *    op is cancelled first; it is never called from inside pg_redis_command()
 *    itself (always from the event loop), so callers need no re-entrancy care.
 *  - st == PG_OK means a reply arrived: reply is non-NULL and may be of type
 *    REDIS_REPLY_ERROR (the caller decides). reply is valid only during cb.
 *  - st != PG_OK (PG_ERR_TIMEOUT, PG_ERR_REDIS for down/disconnected) means no
 *    reply; reply is NULL.
 *  - After a timeout the connection is dropped (all pending ops fail with
 *    PG_ERR_REDIS) and the next command reconnects, so a hung server never
 *    keeps a queue growing.
 *  - pg_redis_cancel(op): cb will not be called; op is invalid afterwards.
 *    Cancelling after cb was called is a bug (the op is gone then).
 */
#ifndef PROVGATE_REDIS_H
#define PROVGATE_REDIS_H

#include <stddef.h>
#include <stdint.h>
#include "provgate/host.h"

struct redisReply;

typedef struct pg_redis_config {
    char *host;                  /* default "127.0.0.1" */
    int port;                    /* default 6379 */
    char *unix_path;             /* optional; wins over host/port */
    char *username;              /* optional (ACL) */
    char *password;              /* optional */
    int db;                      /* default 0 */
    unsigned connect_timeout_ms; /* default 1000 */
    unsigned command_timeout_ms; /* default 1000 */
    char *key_prefix;            /* default "pg:" */
} pg_redis_config_t;

typedef struct pg_redis pg_redis_t;
typedef struct pg_redis_op pg_redis_op_t;

typedef void (*pg_redis_cb)(void *arg, pg_status_t st,
                            const struct redisReply *reply);

/* Create a client; it connects lazily on the first command. cfg is copied. */
PG_MUST_USE pg_status_t pg_redis_new(const pg_host_t *host,
                                     const pg_redis_config_t *cfg,
                                     pg_redis_t **out);

/* Disconnect; every pending op's cb is called with PG_ERR_CANCELLED. */
void pg_redis_free(pg_redis_t *r);

/*
 * Send one command. argv/argvlen are copied before return. timeout_ms 0
 * means the configured command timeout. *op_out (may be NULL) receives a
 * handle usable with pg_redis_cancel() until cb runs.
 */
PG_MUST_USE pg_status_t pg_redis_command(pg_redis_t *r, int argc,
                                         const char **argv,
                                         const size_t *argvlen,
                                         unsigned timeout_ms,
                                         pg_redis_cb cb, void *arg,
                                         pg_redis_op_t **op_out);

void pg_redis_cancel(pg_redis_op_t *op);

/*
 * Scripts: a command "EVAL <script> <numkeys> ..." is sent as EVALSHA once
 * this connection has sent that script as EVAL (first use per connection
 * loads it). A NOSCRIPT reply (SCRIPT FLUSH, failover) is never seen by
 * the caller: the same command is sent again as EVAL on the same
 * connection. Up to 32 distinct scripts of at most 64 KiB are cached per
 * client (by content); others always go as EVAL. Not for EVAL inside
 * MULTI/EXEC (the NOSCRIPT would be inside EXEC's reply; nothing here uses
 * transactions). This counts the NOSCRIPT fallbacks so far (for tests and
 * stats).
 */
uint64_t pg_redis_noscript_count(const pg_redis_t *r);

/* The configured key prefix, e.g. "pg:". Never NULL. */
const char *pg_redis_prefix(const pg_redis_t *r);

/* 1 while a connection is established. */
int pg_redis_connected(const pg_redis_t *r);

#endif
