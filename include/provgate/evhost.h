/*
 * provgate: a pg_host_t (include/provgate/host.h) on libevent 2.1.
 *
 * Used by the sidecar daemon (sidecar/provgated.c), which also runs its
 * HTTP listener and signal handling on the same struct event_base.
 *
 *  - Watches are libevent events with EV_PERSIST (level-triggered on every
 *    libevent backend used on Linux: epoll without EV_ET, poll, select).
 *  - Timers are one-shot evtimers. Timers with different deadlines fire in
 *    deadline order; the order of timers with the very same deadline is
 *    libevent's (not guaranteed to be the arm order, unlike pg_loop).
 *  - watch_close()/timer_close() inside the object's own handler only mark
 *    it closed (event_del at once, so no further call); the memory is
 *    freed when that handler returns. Closed anywhere else: freed at once.
 *
 * Linking: code using this header needs `pkg-config --libs libevent`.
 */
#ifndef PROVGATE_EVHOST_H
#define PROVGATE_EVHOST_H

#include "provgate/host.h"

struct event_base;
typedef struct pg_evhost pg_evhost_t;

/* Where log lines go: called with lines at or above the configured level. */
typedef void (*pg_evhost_log_fn)(void *arg, pg_log_level_t level,
                                 const char *msg);

/*
 * Create a host on base. base NULL: a new event_base is created and owned
 * (freed by pg_evhost_free), with EVENT_BASE_FLAG_PRECISE_TIMER (libevent's
 * default coarse clock fires timers up to ~4 ms early); otherwise base is
 * borrowed and must outlive the host (create it with that flag too). Ignores SIGPIPE for the process (hiredis writes with write(2)).
 */
PG_MUST_USE pg_status_t pg_evhost_new(struct event_base *base,
                                      pg_evhost_t **out);

/*
 * Free the host and every watch/timer still open (their owners must not
 * use them afterwards). Never closes file descriptors. Must not be called
 * from inside a handler of this host. NULL: no-op.
 */
void pg_evhost_free(pg_evhost_t *h);

/* The host interface; valid until pg_evhost_free(). NULL for NULL. */
const pg_host_t *pg_evhost_host(pg_evhost_t *h);

/* The event_base the host runs on (owned or borrowed). */
struct event_base *pg_evhost_base(pg_evhost_t *h);

/* Minimum level passed to the log sink (default PG_LOG_WARN). */
void pg_evhost_set_log_level(pg_evhost_t *h, pg_log_level_t level);

/*
 * Replace the log sink (default: "provgate [level] msg" lines on stderr).
 * fn NULL restores the default. arg is borrowed.
 */
void pg_evhost_set_logger(pg_evhost_t *h, pg_evhost_log_fn fn, void *arg);

/*
 * Run the event_base until *done becomes non-zero (checked after every
 * loop iteration) or timeout_ms passes. PG_OK when *done was set,
 * PG_ERR_TIMEOUT otherwise, PG_ERR_BUSY when called from inside a handler,
 * PG_ERR_IO when libevent fails. For tests and tools; the daemon calls
 * event_base_dispatch() itself.
 */
PG_MUST_USE pg_status_t pg_evhost_run(pg_evhost_t *h, const int *done,
                                      unsigned timeout_ms);

#endif
