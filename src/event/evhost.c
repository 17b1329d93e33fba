/*
 * provgate: pg_host_t on libevent 2.1 (see include/provgate/evhost.h).
 *
 * Design:
 *  - Every watch owns one struct event on its fd. The interest mask maps
 *    to EV_READ/EV_WRITE plus EV_PERSIST; changing it is event_del +
 *    event_assign + event_add (the same sequence hiredis' libevent adapter
 *    uses from inside callbacks). An empty mask leaves the event deleted,
 *    so HUP/ERR on the fd is not reported (as with pg_loop).
 *  - Every timer owns one non-persistent evtimer; arm = evtimer_add
 *    (libevent reschedules a pending timer), disarm = evtimer_del.
 *  - Open watches and timers sit on doubly linked lists so that
 *    pg_evhost_free() can release what owners left open.
 *  - Close safety (the ENTERED/DELETED pattern): a trampoline sets
 *    in_handler around the user handler. close() always event_del()s at
 *    once -- libevent then removes the event from its active queue too, so
 *    no handler runs after close, even for an event already reported in
 *    the current iteration. If the object's own handler is running, the
 *    free is deferred to the trampoline after the handler returns;
 *    otherwise the object is freed immediately.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/time.h>
#include <event2/event.h>
#include "provgate/evhost.h"

struct pg_watch {
    pg_evhost_t *h;
    struct event *ev;
    int fd;
    unsigned events;            /* interest mask PG_EV_* */
    pg_io_handler_t handler;
    void *arg;
    int in_handler;
    int closed;
    struct pg_watch *prev, *next;
};

struct pg_timer {
    pg_evhost_t *h;
    struct event *ev;
    pg_timer_handler_t handler;
    void *arg;
    int in_handler;
    int closed;
    struct pg_timer *prev, *next;
};

struct pg_evhost {
    pg_host_t host;
    struct event_base *base;
    int own_base;
    pg_log_level_t log_level;
    pg_evhost_log_fn log_fn;    /* NULL: stderr */
    void *log_arg;
    int running;                /* inside pg_evhost_run */
    unsigned dispatching;       /* handlers currently on the stack */
    struct pg_watch *watches;
    struct pg_timer *timers;
};

/* ---- clock and logging ---------------------------------------------- */

/* CLOCK_MONOTONIC in milliseconds. */
static uint64_t
mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t
host_now_ms(void *ctx)
{
    (void)ctx;
    return mono_ms();
}

/* Filter by level, then hand the line to the sink (default: stderr). */
static void
host_log(void *ctx, pg_log_level_t level, const char *msg)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    pg_evhost_t *h = ctx;

    if (level > h->log_level) {
        return;
    }
    if (h->log_fn != NULL) {
        h->log_fn(h->log_arg, level, msg);
        return;
    }
    fprintf(stderr, "provgate [%s] %s\n",
            (unsigned)level < 4 ? names[level] : "?", msg);
}

/* ---- watches -------------------------------------------------------- */

/* Unlink and release a watch whose event is already deleted. */
static void
watch_free(struct pg_watch *w)
{
    event_free(w->ev);
    free(w);
}

/* libevent callback: translate the mask, run the handler, reap if closed. */
static void
watch_trampoline(evutil_socket_t fd, short what, void *arg)
{
    struct pg_watch *w = arg;
    unsigned ev = 0;

    (void)fd;
    if (w->closed) {
        return; /* cannot happen: closed watches are event_del'ed */
    }
    if (what & EV_READ) {
        ev |= PG_EV_READ;
    }
    if (what & EV_WRITE) {
        ev |= PG_EV_WRITE;
    }
    ev &= w->events;
    if (ev == 0) {
        return;
    }
    w->in_handler = 1;
    w->h->dispatching++;
    w->handler(w->arg, w->fd, ev);
    w->h->dispatching--;
    w->in_handler = 0;
    if (w->closed) {
        watch_free(w);
    }
}

/* Allocate a watch with an empty interest mask; NULL on OOM or fd < 0. */
static pg_watch_t *
host_watch_open(void *ctx, int fd, pg_io_handler_t handler, void *arg)
{
    pg_evhost_t *h = ctx;
    struct pg_watch *w;

    if (fd < 0 || handler == NULL) {
        return NULL;
    }
    w = calloc(1, sizeof(*w));
    if (w == NULL) {
        return NULL;
    }
    w->ev = event_new(h->base, fd, EV_PERSIST, watch_trampoline, w);
    if (w->ev == NULL) {
        free(w);
        return NULL;
    }
    w->h = h;
    w->fd = fd;
    w->handler = handler;
    w->arg = arg;
    w->next = h->watches;
    if (h->watches != NULL) {
        h->watches->prev = w;
    }
    h->watches = w;
    return w;
}

/*
 * Replace the interest mask. Takes effect for the next readiness check.
 * -1 when the watch is closed or libevent refuses (the watch is then left
 * with an empty mask).
 */
static int
host_watch_update(pg_watch_t *w, unsigned events)
{
    short what = EV_PERSIST;

    if (w == NULL || w->closed) {
        return -1;
    }
    events &= PG_EV_READ | PG_EV_WRITE;
    if (events == w->events) {
        return 0;
    }
    event_del(w->ev);
    w->events = 0;
    if (events == 0) {
        return 0;
    }
    if (events & PG_EV_READ) {
        what |= EV_READ;
    }
    if (events & PG_EV_WRITE) {
        what |= EV_WRITE;
    }
    if (event_assign(w->ev, w->h->base, w->fd, what, watch_trampoline, w)
            != 0 ||
        event_add(w->ev, NULL) != 0) {
        return -1;
    }
    w->events = events;
    return 0;
}

/* Stop watching (never called again); free now or after own handler. */
static void
host_watch_close(pg_watch_t *w)
{
    pg_evhost_t *h;

    if (w == NULL || w->closed) {
        return;
    }
    h = w->h;
    w->closed = 1;
    w->events = 0;
    event_del(w->ev);
    if (w->prev != NULL) {
        w->prev->next = w->next;
    } else {
        h->watches = w->next;
    }
    if (w->next != NULL) {
        w->next->prev = w->prev;
    }
    w->prev = w->next = NULL;
    if (!w->in_handler) {
        watch_free(w);
    }
}

/* ---- timers --------------------------------------------------------- */

static void
timer_free(struct pg_timer *t)
{
    event_free(t->ev);
    free(t);
}

/* libevent callback: run the one-shot handler, reap if it closed us. */
static void
timer_trampoline(evutil_socket_t fd, short what, void *arg)
{
    struct pg_timer *t = arg;

    (void)fd;
    (void)what;
    if (t->closed) {
        return;
    }
    t->in_handler = 1;
    t->h->dispatching++;
    t->handler(t->arg);
    t->h->dispatching--;
    t->in_handler = 0;
    if (t->closed) {
        timer_free(t);
    }
}

static pg_timer_t *
host_timer_open(void *ctx, pg_timer_handler_t handler, void *arg)
{
    pg_evhost_t *h = ctx;
    struct pg_timer *t;

    if (handler == NULL) {
        return NULL;
    }
    t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return NULL;
    }
    t->ev = evtimer_new(h->base, timer_trampoline, t);
    if (t->ev == NULL) {
        free(t);
        return NULL;
    }
    t->h = h;
    t->handler = handler;
    t->arg = arg;
    t->next = h->timers;
    if (h->timers != NULL) {
        h->timers->prev = t;
    }
    h->timers = t;
    return t;
}

/*
 * (Re-)arm to fire once after ms milliseconds (capped at ~24 days so the
 * timeval cannot overflow). A libevent failure is logged (the interface
 * cannot report it) and leaves the timer disarmed.
 */
static void
host_timer_arm(pg_timer_t *t, uint64_t ms)
{
    struct timeval tv;

    if (t == NULL || t->closed) {
        return;
    }
    if (ms > (uint64_t)INT32_MAX) {
        ms = (uint64_t)INT32_MAX;
    }
    tv.tv_sec = (time_t)(ms / 1000u);
    tv.tv_usec = (suseconds_t)((ms % 1000u) * 1000u);
    if (evtimer_add(t->ev, &tv) != 0) {
        evtimer_del(t->ev);
        host_log(t->h, PG_LOG_ERROR, "evhost: evtimer_add failed");
    }
}

static void
host_timer_disarm(pg_timer_t *t)
{
    if (t == NULL || t->closed) {
        return;
    }
    evtimer_del(t->ev);
}

/* Disarm and release; deferred while the timer's own handler runs. */
static void
host_timer_close(pg_timer_t *t)
{
    pg_evhost_t *h;

    if (t == NULL || t->closed) {
        return;
    }
    h = t->h;
    evtimer_del(t->ev);
    t->closed = 1;
    if (t->prev != NULL) {
        t->prev->next = t->next;
    } else {
        h->timers = t->next;
    }
    if (t->next != NULL) {
        t->next->prev = t->prev;
    }
    t->prev = t->next = NULL;
    if (!t->in_handler) {
        timer_free(t);
    }
}

/* ---- host object ---------------------------------------------------- */

/*
 * Allocate a host on base (borrowed) or on a new base (owned) when base
 * is NULL. *out is released with pg_evhost_free().
 */
pg_status_t
pg_evhost_new(struct event_base *base, pg_evhost_t **out)
{
    pg_evhost_t *h;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    h = calloc(1, sizeof(*h));
    if (h == NULL) {
        return PG_ERR_NOMEM;
    }
    if (base == NULL) {
        /* libevent's default Linux clock is CLOCK_MONOTONIC_COARSE, which
         * lets timers fire up to a tick (~4 ms) early; ask for the
         * precise clock so "after ms" holds. */
        struct event_config *ecfg = event_config_new();

        if (ecfg != NULL) {
            event_config_set_flag(ecfg, EVENT_BASE_FLAG_PRECISE_TIMER);
            base = event_base_new_with_config(ecfg);
            event_config_free(ecfg);
        }
        if (base == NULL) {
            free(h);
            return PG_ERR_IO;
        }
        h->own_base = 1;
    }
    h->base = base;
    h->log_level = PG_LOG_WARN;
    h->host.ctx = h;
    h->host.log = host_log;
    h->host.watch_open = host_watch_open;
    h->host.watch_update = host_watch_update;
    h->host.watch_close = host_watch_close;
    h->host.timer_open = host_timer_open;
    h->host.timer_arm = host_timer_arm;
    h->host.timer_disarm = host_timer_disarm;
    h->host.timer_close = host_timer_close;
    h->host.now_ms = host_now_ms;
    signal(SIGPIPE, SIG_IGN);
    *out = h;
    return PG_OK;
}

/* Release every open watch/timer, then the base when owned. */
void
pg_evhost_free(pg_evhost_t *h)
{
    if (h == NULL) {
        return;
    }
    while (h->watches != NULL) {
        host_watch_close(h->watches);
    }
    while (h->timers != NULL) {
        host_timer_close(h->timers);
    }
    if (h->own_base) {
        event_base_free(h->base);
    }
    free(h);
}

const pg_host_t *
pg_evhost_host(pg_evhost_t *h)
{
    return h != NULL ? &h->host : NULL;
}

struct event_base *
pg_evhost_base(pg_evhost_t *h)
{
    return h != NULL ? h->base : NULL;
}

void
pg_evhost_set_log_level(pg_evhost_t *h, pg_log_level_t level)
{
    if (h != NULL) {
        h->log_level = level;
    }
}

void
pg_evhost_set_logger(pg_evhost_t *h, pg_evhost_log_fn fn, void *arg)
{
    if (h != NULL) {
        h->log_fn = fn;
        h->log_arg = fn != NULL ? arg : NULL;
    }
}

/* Wake-up timer of pg_evhost_run: only makes EVLOOP_ONCE return. */
static void
run_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

/*
 * Iterate (EVLOOP_ONCE) until *done or the deadline. A private evtimer
 * guarantees that every iteration returns by the deadline even when no
 * other event is registered.
 */
pg_status_t
pg_evhost_run(pg_evhost_t *h, const int *done, unsigned timeout_ms)
{
    struct event *wake;
    struct timeval tv;
    uint64_t end;
    pg_status_t st = PG_OK;

    if (h == NULL || done == NULL) {
        return PG_ERR_INVALID;
    }
    if (h->running || h->dispatching > 0) {
        return PG_ERR_BUSY;
    }
    wake = evtimer_new(h->base, run_deadline, NULL);
    if (wake == NULL) {
        return PG_ERR_NOMEM;
    }
    tv.tv_sec = (time_t)(timeout_ms / 1000u);
    tv.tv_usec = (suseconds_t)((timeout_ms % 1000u) * 1000u);
    if (evtimer_add(wake, &tv) != 0) {
        event_free(wake);
        return PG_ERR_IO;
    }
    h->running = 1;
    end = mono_ms() + timeout_ms;
    while (!*done) {
        uint64_t now = mono_ms();

        if (now >= end) {
            st = PG_ERR_TIMEOUT;
            break;
        }
        if (!evtimer_pending(wake, NULL)) {
            /* fired a little early (clock rounding): wait for the rest */
            tv.tv_sec = (time_t)((end - now) / 1000u);
            tv.tv_usec = (suseconds_t)(((end - now) % 1000u) * 1000u);
            if (evtimer_add(wake, &tv) != 0) {
                st = PG_ERR_IO;
                break;
            }
        }
        if (event_base_loop(h->base, EVLOOP_ONCE) < 0) {
            st = PG_ERR_IO;
            break;
        }
    }
    h->running = 0;
    event_free(wake);
    return st;
}
