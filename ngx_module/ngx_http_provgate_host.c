/*
 * ngx_http_provgate_module: the core's event interface (pg_host_t) on nginx.
 *
 * A watch is an nginx connection made with ngx_get_connection() for a file
 * descriptor owned by hiredis or libcurl; its read/write events are added
 * level-triggered. A timer is a plain ngx_event_t in nginx's timer tree,
 * marked cancelable so that it never delays a graceful worker exit.
 *
 * Re-entrancy: the core may close a watch or timer from inside its own
 * handler (hiredis and curl both do). Closing then only marks it; the
 * wrapper frees it after the handler returns.
 */
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#if (NGX_THREADS)
#include <ngx_thread_pool.h>
#endif

#include "ngx_http_provgate.h"


struct pg_watch {
    ngx_connection_t    *c;
    pg_io_handler_t      handler;
    void                *arg;
    unsigned             events;
    unsigned             entered:1;
    unsigned             closed:1;
};


struct pg_timer {
    ngx_event_t          ev;
    pg_timer_handler_t   handler;
    void                *arg;
    unsigned             entered:1;
    unsigned             closed:1;
};


static ngx_log_t  *ngx_http_provgate_log;

#if (NGX_THREADS)
static ngx_thread_pool_t  *ngx_http_provgate_tp;

typedef struct {
    void   (*fn)(void *arg);
    void   (*done)(void *arg);
    void    *arg;
} ngx_http_provgate_job_t;
#endif


static void
ngx_http_provgate_host_log(void *ctx, pg_log_level_t level, const char *msg)
{
    ngx_uint_t  lvl;

    switch (level) {
    case PG_LOG_ERROR:
        lvl = NGX_LOG_ERR;
        break;
    case PG_LOG_WARN:
        lvl = NGX_LOG_WARN;
        break;
    case PG_LOG_INFO:
        lvl = NGX_LOG_INFO;
        break;
    default:
        lvl = NGX_LOG_DEBUG;
        break;
    }

    ngx_log_error(lvl, ngx_http_provgate_log, 0, "provgate: %s", msg);
}


/*
 * Remove interest in one direction. hiredis may close its socket before it
 * drops the watch; the kernel has then removed the fd from epoll already,
 * and NGX_CLOSE_EVENT tells nginx not to call epoll_ctl() on a closed
 * descriptor. libcurl drops watches on sockets it keeps open for reuse:
 * those need a real delete.
 */
static ngx_int_t
ngx_http_provgate_del(ngx_event_t *ev, ngx_int_t event)
{
    ngx_connection_t  *c = ev->data;
    ngx_uint_t         flags;

    flags = (fcntl(c->fd, F_GETFD) == -1 && ngx_errno == NGX_EBADF)
            ? NGX_CLOSE_EVENT : 0;

    return ngx_del_event(ev, event, flags);
}


static void
ngx_http_provgate_watch_free(pg_watch_t *w)
{
    ngx_connection_t  *c = w->c;

    if (c->read->active) {
        (void) ngx_http_provgate_del(c->read, NGX_READ_EVENT);
    }
    if (c->write->active) {
        (void) ngx_http_provgate_del(c->write, NGX_WRITE_EVENT);
    }
    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }
    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;
    ngx_free(w);
}


static void
ngx_http_provgate_watch_event(ngx_event_t *ev)
{
    ngx_connection_t  *c = ev->data;
    pg_watch_t        *w = c->data;
    unsigned           what;

    if (w == NULL || w->closed) {
        return;
    }

    what = ev->write ? PG_EV_WRITE : PG_EV_READ;
    if ((w->events & what) == 0) {
        return;
    }

    w->entered = 1;
    w->handler(w->arg, c->fd, what);
    w->entered = 0;

    if (w->closed) {
        ngx_http_provgate_watch_free(w);
    }
}


static pg_watch_t *
ngx_http_provgate_watch_open(void *ctx, int fd, pg_io_handler_t h, void *arg)
{
    pg_watch_t        *w;
    ngx_connection_t  *c;

    w = ngx_calloc(sizeof(pg_watch_t), ngx_http_provgate_log);
    if (w == NULL) {
        return NULL;
    }

    c = ngx_get_connection(fd, ngx_http_provgate_log);
    if (c == NULL) {
        ngx_free(w);
        return NULL;
    }

    c->data = w;
    c->read->handler = ngx_http_provgate_watch_event;
    c->write->handler = ngx_http_provgate_watch_event;
    c->read->log = ngx_http_provgate_log;
    c->write->log = ngx_http_provgate_log;

    w->c = c;
    w->handler = h;
    w->arg = arg;

    return w;
}


static int
ngx_http_provgate_watch_update(pg_watch_t *w, unsigned events)
{
    ngx_connection_t  *c = w->c;

    if ((events & PG_EV_READ) && !c->read->active) {
        if (ngx_add_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
            return -1;
        }
    } else if (!(events & PG_EV_READ) && c->read->active) {
        if (ngx_http_provgate_del(c->read, NGX_READ_EVENT) != NGX_OK) {
            return -1;
        }
    }

    if ((events & PG_EV_WRITE) && !c->write->active) {
        if (ngx_add_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
            return -1;
        }
    } else if (!(events & PG_EV_WRITE) && c->write->active) {
        if (ngx_http_provgate_del(c->write, NGX_WRITE_EVENT) != NGX_OK) {
            return -1;
        }
    }

    w->events = events;
    return 0;
}


static void
ngx_http_provgate_watch_close(pg_watch_t *w)
{
    if (w == NULL || w->closed) {
        return;
    }

    w->closed = 1;
    w->events = 0;

    if (!w->entered) {
        ngx_http_provgate_watch_free(w);
        return;
    }

    /*
     * Closed inside its own handler: the connection is freed when the
     * handler returns, but the interest goes now, because the owner may
     * watch the same descriptor again at once (libpq re-opens its watch
     * after each connect step): epoll would refuse a second registration.
     */
    if (w->c->read->active) {
        (void) ngx_http_provgate_del(w->c->read, NGX_READ_EVENT);
    }
    if (w->c->write->active) {
        (void) ngx_http_provgate_del(w->c->write, NGX_WRITE_EVENT);
    }
}


static void
ngx_http_provgate_timer_event(ngx_event_t *ev)
{
    pg_timer_t  *t = ev->data;

    if (t->closed) {
        return;
    }

    t->entered = 1;
    t->handler(t->arg);
    t->entered = 0;

    if (t->closed) {
        if (t->ev.timer_set) {
            ngx_del_timer(&t->ev);
        }
        ngx_free(t);
    }
}


static pg_timer_t *
ngx_http_provgate_timer_open(void *ctx, pg_timer_handler_t h, void *arg)
{
    pg_timer_t  *t;

    t = ngx_calloc(sizeof(pg_timer_t), ngx_http_provgate_log);
    if (t == NULL) {
        return NULL;
    }

    t->ev.handler = ngx_http_provgate_timer_event;
    t->ev.data = t;
    t->ev.log = ngx_http_provgate_log;
    t->ev.cancelable = 1;
    t->handler = h;
    t->arg = arg;

    return t;
}


static void
ngx_http_provgate_timer_arm(pg_timer_t *t, uint64_t ms)
{
    if (t->closed) {
        return;
    }
    ngx_add_timer(&t->ev, (ngx_msec_t) ms);
}


static void
ngx_http_provgate_timer_disarm(pg_timer_t *t)
{
    if (t->ev.timer_set) {
        ngx_del_timer(&t->ev);
    }
}


static void
ngx_http_provgate_timer_close(pg_timer_t *t)
{
    if (t == NULL || t->closed) {
        return;
    }

    t->closed = 1;

    if (t->ev.timer_set) {
        ngx_del_timer(&t->ev);
    }

    if (!t->entered) {
        ngx_free(t);
    }
}


static uint64_t
ngx_http_provgate_now_ms(void *ctx)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}


#if (NGX_THREADS)

static void
ngx_http_provgate_job_run(void *data, ngx_log_t *log)
{
    ngx_http_provgate_job_t  *job = data;

    job->fn(job->arg);
}


static void
ngx_http_provgate_job_done(ngx_event_t *ev)
{
    ngx_thread_task_t        *task = ev->data;
    ngx_http_provgate_job_t  *job = task->ctx;

    job->done(job->arg);
    ngx_free(task);
}


/*
 * Offload to nginx's "default" thread pool (added at configuration time):
 * fn runs on a pool thread, done back on this worker's event loop when
 * nginx handles the task's completion event.
 */
static int
ngx_http_provgate_offload(void *ctx, void (*fn)(void *arg),
    void (*done)(void *arg), void *arg)
{
    ngx_thread_task_t        *task;
    ngx_http_provgate_job_t  *job;

    if (ngx_http_provgate_tp == NULL) {
        return -1;
    }

    task = ngx_calloc(sizeof(ngx_thread_task_t)
                      + sizeof(ngx_http_provgate_job_t),
                      ngx_http_provgate_log);
    if (task == NULL) {
        return -1;
    }

    job = (ngx_http_provgate_job_t *) (task + 1);
    job->fn = fn;
    job->done = done;
    job->arg = arg;

    task->ctx = job;
    task->handler = ngx_http_provgate_job_run;
    task->event.handler = ngx_http_provgate_job_done;
    task->event.data = task;
    task->event.log = ngx_http_provgate_log;

    if (ngx_thread_task_post(ngx_http_provgate_tp, task) != NGX_OK) {
        ngx_free(task);
        return -1;
    }

    return 0;
}

#endif


/*
 * hold(): while background work that must finish runs (an outbox operation
 * being applied), a non-cancelable timer keeps a gracefully quitting worker
 * alive; it re-arms itself every second until the count drops to zero.
 */
static ngx_uint_t   ngx_http_provgate_holds;
static ngx_event_t  ngx_http_provgate_hold_ev;


static void
ngx_http_provgate_hold_event(ngx_event_t *ev)
{
    if (ngx_http_provgate_holds > 0) {
        ngx_add_timer(ev, 1000);
    }
}


static void
ngx_http_provgate_hold(void *ctx, int delta)
{
    if (delta > 0) {
        ngx_http_provgate_holds++;

    } else if (ngx_http_provgate_holds > 0) {
        ngx_http_provgate_holds--;
    }

    if (ngx_http_provgate_holds > 0 && !ngx_http_provgate_hold_ev.timer_set) {
        ngx_http_provgate_hold_ev.handler = ngx_http_provgate_hold_event;
        ngx_http_provgate_hold_ev.log = ngx_http_provgate_log;
        ngx_http_provgate_hold_ev.cancelable = 0;
        ngx_add_timer(&ngx_http_provgate_hold_ev, 1000);

    } else if (ngx_http_provgate_holds == 0
               && ngx_http_provgate_hold_ev.timer_set)
    {
        ngx_del_timer(&ngx_http_provgate_hold_ev);
    }
}


static int
ngx_http_provgate_exiting(void *ctx)
{
    return ngx_exiting || ngx_quit || ngx_terminate;
}


static pg_host_t  ngx_http_provgate_host_ops = {
    NULL,
    ngx_http_provgate_host_log,
    ngx_http_provgate_watch_open,
    ngx_http_provgate_watch_update,
    ngx_http_provgate_watch_close,
    ngx_http_provgate_timer_open,
    ngx_http_provgate_timer_arm,
    ngx_http_provgate_timer_disarm,
    ngx_http_provgate_timer_close,
    ngx_http_provgate_now_ms,
#if (NGX_THREADS)
    ngx_http_provgate_offload,
#else
    NULL,
#endif
    ngx_http_provgate_hold,
    ngx_http_provgate_exiting
};


const pg_host_t *
ngx_http_provgate_host(ngx_cycle_t *cycle)
{
#if (NGX_THREADS)
    ngx_str_t  name = ngx_string("default");

    ngx_http_provgate_tp = ngx_thread_pool_get(cycle, &name);
#endif

    ngx_http_provgate_log = cycle->log;
    return &ngx_http_provgate_host_ops;
}
