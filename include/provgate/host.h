/*
 * provgate core: what the host (nginx module, sidecar, tests) provides.
 *
 * The core never includes nginx headers and never blocks. It does all I/O
 * through this small interface: logging, readiness watches on file
 * descriptors and one-shot timers, all driven by the host's event loop.
 *
 * Contract for every host implementation:
 *  - Watches are level-triggered: while the fd is ready for an event in the
 *    interest mask, the handler keeps being called on each loop iteration.
 *  - watch_close() and timer_close() may be called from inside the handler
 *    of the same watch/timer; the host must defer freeing until the handler
 *    returns (the ENTERED/DELETED guards of hiredis adapters/libevent.h).
 *  - watch_close() never closes the fd; the owner of the fd does.
 *  - Handlers run on the loop thread only. No handler is called after close.
 *  - now_ms() is monotonic milliseconds.
 *
 * Memory: the core allocates with malloc/free (as do jansson, hiredis and
 * libcurl); it owns what it allocates and frees it in the matching *_free().
 */
#ifndef PROVGATE_HOST_H
#define PROVGATE_HOST_H

#include <stdarg.h>
#include <stdint.h>
#include "provgate/status.h"

typedef enum pg_log_level {
    PG_LOG_ERROR = 0,
    PG_LOG_WARN,
    PG_LOG_INFO,
    PG_LOG_DEBUG
} pg_log_level_t;

#define PG_EV_READ  0x1u
#define PG_EV_WRITE 0x2u

typedef struct pg_watch pg_watch_t; /* defined by the host */
typedef struct pg_timer pg_timer_t; /* defined by the host */

/* Called when fd is ready; events is a mask of PG_EV_READ|PG_EV_WRITE. */
typedef void (*pg_io_handler_t)(void *arg, int fd, unsigned events);
typedef void (*pg_timer_handler_t)(void *arg);

typedef struct pg_host {
    void *ctx;

    /* Log one line (no trailing newline). Must not block for long. */
    void (*log)(void *ctx, pg_log_level_t level, const char *msg);

    /* Start watching fd with an empty interest mask. NULL on failure. */
    pg_watch_t *(*watch_open)(void *ctx, int fd, pg_io_handler_t h, void *arg);
    /* Replace the interest mask (0, READ, WRITE or both). 0 on success. */
    int (*watch_update)(pg_watch_t *w, unsigned events);
    /* Stop watching and release the watch. Safe inside its own handler. */
    void (*watch_close)(pg_watch_t *w);

    /* Create a disarmed one-shot timer. NULL on failure. */
    pg_timer_t *(*timer_open)(void *ctx, pg_timer_handler_t h, void *arg);
    /* Arm (or re-arm) to fire once after ms milliseconds. */
    void (*timer_arm)(pg_timer_t *t, uint64_t ms);
    void (*timer_disarm)(pg_timer_t *t);
    /* Disarm and release. Safe inside its own handler. */
    void (*timer_close)(pg_timer_t *t);

    /* Monotonic clock in milliseconds. */
    uint64_t (*now_ms)(void *ctx);

    /*
     * Optional (may be NULL): run fn(arg) on a worker thread, then
     * done(arg) on the loop thread. For CPU-heavy work that must not stall
     * the event loop (SAML signature verification). fn must touch nothing
     * but arg. Returns 0 when queued; on failure (or when NULL) the caller
     * runs fn inline. done always runs, exactly once, after fn.
     */
    int (*offload)(void *ctx, void (*fn)(void *arg), void (*done)(void *arg),
                   void *arg);

    /*
     * Optional (may be NULL): keep the process alive while work that must
     * not be cut off is running (delta +1 when it starts, -1 when it ends).
     * nginx: a gracefully quitting worker stays until the count is 0.
     */
    void (*hold)(void *ctx, int delta);

    /* Optional (may be NULL): non-zero once the process is shutting down,
     * so no new background work should be taken on. */
    int (*exiting)(void *ctx);
} pg_host_t;

/* printf-style logging through host->log; lines are capped at 2 KiB. */
void pg_log(const pg_host_t *host, pg_log_level_t level, const char *fmt, ...)
    PG_PRINTF(3, 4);

#endif
