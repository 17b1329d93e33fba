/*
 * provgate core: a small poll(2)-based event loop implementing pg_host_t.
 *
 * Used by the unit tests and by command-line tools. Single-threaded.
 * The nginx module provides its own pg_host_t on nginx events instead.
 */
#ifndef PROVGATE_LOOP_H
#define PROVGATE_LOOP_H

#include "provgate/host.h"

typedef struct pg_loop pg_loop_t;

PG_MUST_USE pg_status_t pg_loop_new(pg_loop_t **out);
void pg_loop_free(pg_loop_t *l);

/* The host interface backed by this loop; valid until pg_loop_free(). */
const pg_host_t *pg_loop_host(pg_loop_t *l);

/*
 * Run until *done becomes non-zero or timeout_ms passes. Returns PG_OK when
 * *done was set, PG_ERR_TIMEOUT otherwise.
 */
PG_MUST_USE pg_status_t pg_loop_run(pg_loop_t *l, const int *done,
                                    unsigned timeout_ms);

/* Minimum log level printed to stderr (default PG_LOG_WARN). */
void pg_loop_set_log_level(pg_loop_t *l, pg_log_level_t level);

#endif
