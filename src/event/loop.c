/*
 * provgate core: a small poll(2)-based, single-threaded event loop that
 * implements pg_host_t (include/provgate/host.h) for unit tests and tools.
 *
 * Design:
 *  - Watches live on a doubly linked list. Each iteration builds a pollfd
 *    array from the open watches whose interest mask is non-zero, polls,
 *    then dispatches. Only watches that were part of that poll are
 *    dispatched; a watch opened during dispatch waits for the next poll.
 *    poll(2) is level-triggered, so a ready fd keeps being reported.
 *  - Timers live in a binary min-heap keyed by (deadline, arm sequence),
 *    so timers with the same deadline fire in the order they were armed.
 *    Expired timers are first moved to a "due" batch and then fired; a
 *    timer armed (even with 0 ms) from inside a handler fires on the next
 *    iteration at the earliest, so a self-re-arming timer cannot starve I/O.
 *  - watch_close()/timer_close() never free immediately: the object is
 *    flagged closed (so it is never dispatched again) and parked on a
 *    zombie list that is freed at the end of the iteration, when no handler
 *    is running. This makes closing inside the own handler (or closing a
 *    watch that is still in the current poll result) safe.
 *  - pg_loop_new() sets SIGPIPE to SIG_IGN for the process, as nginx does:
 *    hiredis writes with write(2) and a peer reset must not kill the host.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "provgate/loop.h"

struct pg_watch {
    pg_loop_t *loop;
    int fd;
    unsigned events;            /* interest mask PG_EV_* */
    pg_io_handler_t handler;
    void *arg;
    int closed;
    struct pg_watch *prev, *next; /* open list, or zombie list (next only) */
};

enum { TIMER_IDLE = 0, TIMER_IN_HEAP, TIMER_DUE };

struct pg_timer {
    pg_loop_t *loop;
    pg_timer_handler_t handler;
    void *arg;
    uint64_t deadline;
    uint64_t seq;               /* arm order, tie-breaker */
    size_t heap_idx;            /* valid while state == TIMER_IN_HEAP */
    int state;
    int closed;
    struct pg_timer *prev, *next; /* list of all open timers */
    struct pg_timer *zombie_next;
};

struct pg_loop {
    pg_host_t host;
    pg_log_level_t log_level;
    int running;                /* inside pg_loop_run (no nesting) */

    struct pg_watch *watches;   /* open watches */
    size_t nwatches;
    struct pg_watch *wzombies;  /* closed, freed at end of iteration */

    struct pg_timer **heap;
    size_t heap_len, heap_cap;
    uint64_t seq;
    struct pg_timer *timers;    /* every open timer (armed or not) */
    struct pg_timer *tzombies;

    struct pg_timer **due;      /* batch being fired this iteration */
    size_t due_cap;

    struct pollfd *pfds;        /* poll arrays, grown on demand */
    struct pg_watch **pws;
    size_t poll_cap;
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

/* Print one line to stderr when level is at or above the configured one. */
static void
host_log(void *ctx, pg_log_level_t level, const char *msg)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    pg_loop_t *l = ctx;

    if (level > l->log_level) {
        return;
    }
    fprintf(stderr, "provgate [%s] %s\n",
            (unsigned)level < 4 ? names[level] : "?", msg);
}

/* ---- watches -------------------------------------------------------- */

/* Allocate a watch with an empty interest mask; NULL on OOM or fd < 0. */
static pg_watch_t *
host_watch_open(void *ctx, int fd, pg_io_handler_t h, void *arg)
{
    pg_loop_t *l = ctx;
    struct pg_watch *w;

    if (fd < 0 || h == NULL) {
        return NULL;
    }
    w = calloc(1, sizeof(*w));
    if (w == NULL) {
        return NULL;
    }
    w->loop = l;
    w->fd = fd;
    w->handler = h;
    w->arg = arg;
    w->next = l->watches;
    if (l->watches != NULL) {
        l->watches->prev = w;
    }
    l->watches = w;
    l->nwatches++;
    return w;
}

/* Replace the interest mask; takes effect at the next poll. */
static int
host_watch_update(pg_watch_t *w, unsigned events)
{
    if (w == NULL || w->closed) {
        return -1;
    }
    w->events = events & (PG_EV_READ | PG_EV_WRITE);
    return 0;
}

/* Unlink from the open list and park on the zombie list (freed later). */
static void
host_watch_close(pg_watch_t *w)
{
    pg_loop_t *l;

    if (w == NULL || w->closed) {
        return;
    }
    l = w->loop;
    w->closed = 1;
    w->events = 0;
    if (w->prev != NULL) {
        w->prev->next = w->next;
    } else {
        l->watches = w->next;
    }
    if (w->next != NULL) {
        w->next->prev = w->prev;
    }
    l->nwatches--;
    w->prev = NULL;
    w->next = l->wzombies;
    l->wzombies = w;
}

/* ---- timer heap ----------------------------------------------------- */

static int
timer_before(const struct pg_timer *a, const struct pg_timer *b)
{
    if (a->deadline != b->deadline) {
        return a->deadline < b->deadline;
    }
    return a->seq < b->seq;
}

static void
heap_set(pg_loop_t *l, size_t i, struct pg_timer *t)
{
    l->heap[i] = t;
    t->heap_idx = i;
}

static void
heap_up(pg_loop_t *l, size_t i)
{
    struct pg_timer *t = l->heap[i];

    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!timer_before(t, l->heap[p])) {
            break;
        }
        heap_set(l, i, l->heap[p]);
        i = p;
    }
    heap_set(l, i, t);
}

static void
heap_down(pg_loop_t *l, size_t i)
{
    struct pg_timer *t = l->heap[i];

    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= l->heap_len) {
            break;
        }
        if (c + 1 < l->heap_len && timer_before(l->heap[c + 1], l->heap[c])) {
            c++;
        }
        if (!timer_before(l->heap[c], t)) {
            break;
        }
        heap_set(l, i, l->heap[c]);
        i = c;
    }
    heap_set(l, i, t);
}

/* Remove t (state TIMER_IN_HEAP) from the heap. */
static void
heap_remove(pg_loop_t *l, struct pg_timer *t)
{
    size_t i = t->heap_idx;
    struct pg_timer *last;

    l->heap_len--;
    last = l->heap[l->heap_len];
    if (i != l->heap_len) {
        heap_set(l, i, last);
        heap_up(l, i);
        heap_down(l, last->heap_idx);
    }
    t->state = TIMER_IDLE;
}

/* Insert t into the heap. 0 on success, -1 on OOM. */
static int
heap_push(pg_loop_t *l, struct pg_timer *t)
{
    if (l->heap_len == l->heap_cap) {
        size_t ncap = l->heap_cap ? l->heap_cap * 2 : 64;
        struct pg_timer **nh = realloc(l->heap, ncap * sizeof(*nh));
        if (nh == NULL) {
            return -1;
        }
        l->heap = nh;
        l->heap_cap = ncap;
    }
    l->heap_len++;
    heap_set(l, l->heap_len - 1, t);
    heap_up(l, l->heap_len - 1);
    t->state = TIMER_IN_HEAP;
    return 0;
}

/* ---- timers (host interface) ---------------------------------------- */

static pg_timer_t *
host_timer_open(void *ctx, pg_timer_handler_t h, void *arg)
{
    struct pg_timer *t;

    if (h == NULL) {
        return NULL;
    }
    t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return NULL;
    }
    t->loop = ctx;
    t->handler = h;
    t->arg = arg;
    t->next = t->loop->timers;
    if (t->next != NULL) {
        t->next->prev = t;
    }
    t->loop->timers = t;
    return t;
}

static void
host_timer_disarm(pg_timer_t *t)
{
    if (t == NULL) {
        return;
    }
    if (t->state == TIMER_IN_HEAP) {
        heap_remove(t->loop, t);
    }
    t->state = TIMER_IDLE;
}

/*
 * (Re-)arm to fire once ms milliseconds from now. The heap grows on
 * demand; should that allocation fail the timer stays disarmed and an
 * error is logged (the interface has no way to report it).
 */
static void
host_timer_arm(pg_timer_t *t, uint64_t ms)
{
    pg_loop_t *l;
    uint64_t now;

    if (t == NULL || t->closed) {
        return;
    }
    l = t->loop;
    host_timer_disarm(t);
    now = mono_ms();
    t->deadline = ms > UINT64_MAX - now ? UINT64_MAX : now + ms;
    t->seq = ++l->seq;
    if (heap_push(l, t) != 0) {
        t->state = TIMER_IDLE;
        host_log(l, PG_LOG_ERROR, "loop: timer heap allocation failed");
    }
}

static void
host_timer_close(pg_timer_t *t)
{
    pg_loop_t *l;

    if (t == NULL || t->closed) {
        return;
    }
    l = t->loop;
    host_timer_disarm(t);
    t->closed = 1;
    if (t->prev != NULL) {
        t->prev->next = t->next;
    } else {
        l->timers = t->next;
    }
    if (t->next != NULL) {
        t->next->prev = t->prev;
    }
    t->prev = t->next = NULL;
    t->zombie_next = l->tzombies;
    l->tzombies = t;
}

/* ---- loop ----------------------------------------------------------- */

/* Free every closed watch and timer. Only called when no handler runs. */
static void
reap_zombies(pg_loop_t *l)
{
    while (l->wzombies != NULL) {
        struct pg_watch *w = l->wzombies;
        l->wzombies = w->next;
        free(w);
    }
    while (l->tzombies != NULL) {
        struct pg_timer *t = l->tzombies;
        l->tzombies = t->zombie_next;
        free(t);
    }
}

/*
 * Allocate a loop. The returned loop owns every watch and timer opened
 * through its host; pg_loop_free() releases them all.
 */
pg_status_t
pg_loop_new(pg_loop_t **out)
{
    pg_loop_t *l;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    l = calloc(1, sizeof(*l));
    if (l == NULL) {
        return PG_ERR_NOMEM;
    }
    l->log_level = PG_LOG_WARN;
    l->host.ctx = l;
    l->host.log = host_log;
    l->host.watch_open = host_watch_open;
    l->host.watch_update = host_watch_update;
    l->host.watch_close = host_watch_close;
    l->host.timer_open = host_timer_open;
    l->host.timer_arm = host_timer_arm;
    l->host.timer_disarm = host_timer_disarm;
    l->host.timer_close = host_timer_close;
    l->host.now_ms = host_now_ms;
    signal(SIGPIPE, SIG_IGN);
    *out = l;
    return PG_OK;
}

/*
 * Free the loop and every watch/timer still open (their owners must not
 * use them afterwards). Never closes file descriptors. Must not be called
 * from inside a handler.
 */
void
pg_loop_free(pg_loop_t *l)
{
    if (l == NULL) {
        return;
    }
    while (l->watches != NULL) {
        host_watch_close(l->watches);
    }
    while (l->timers != NULL) {
        host_timer_close(l->timers);
    }
    reap_zombies(l);
    free(l->heap);
    free(l->due);
    free(l->pfds);
    free(l->pws);
    free(l);
}

/* The loop's host interface (owned by the loop; NULL for a NULL loop). */
const pg_host_t *
pg_loop_host(pg_loop_t *l)
{
    return l ? &l->host : NULL;
}

/* Print messages of `level` and more severe (lower values) to stderr. */
void
pg_loop_set_log_level(pg_loop_t *l, pg_log_level_t level)
{
    if (l != NULL) {
        l->log_level = level;
    }
}

/* Make room for n poll entries. 0 on success. */
static int
poll_reserve(pg_loop_t *l, size_t n)
{
    struct pollfd *np;
    struct pg_watch **nw;
    size_t ncap;

    if (n <= l->poll_cap) {
        return 0;
    }
    ncap = l->poll_cap ? l->poll_cap : 16;
    while (ncap < n) {
        ncap *= 2;
    }
    np = realloc(l->pfds, ncap * sizeof(*np));
    if (np == NULL) {
        return -1;
    }
    l->pfds = np;
    nw = realloc(l->pws, ncap * sizeof(*nw));
    if (nw == NULL) {
        return -1;
    }
    l->pws = nw;
    l->poll_cap = ncap;
    return 0;
}

/* Fire every timer due at `now`, in (deadline, arm order). */
static void
run_timers(pg_loop_t *l, uint64_t now)
{
    size_t n = 0, i;

    while (l->heap_len > 0 && l->heap[0]->deadline <= now) {
        struct pg_timer *t = l->heap[0];
        if (n == l->due_cap) {
            size_t ncap = l->due_cap ? l->due_cap * 2 : 64;
            struct pg_timer **nd = realloc(l->due, ncap * sizeof(*nd));
            if (nd == NULL) {
                break; /* the rest fires next iteration */
            }
            l->due = nd;
            l->due_cap = ncap;
        }
        heap_remove(l, t);
        t->state = TIMER_DUE;
        l->due[n++] = t;
    }
    /*
     * A handler may disarm, re-arm or close any timer in the batch; only
     * those still in state TIMER_DUE fire. Closed timers are zombies and
     * stay allocated until reap_zombies().
     */
    for (i = 0; i < n; i++) {
        struct pg_timer *t = l->due[i];
        if (t->state != TIMER_DUE || t->closed) {
            continue;
        }
        t->state = TIMER_IDLE;
        t->handler(t->arg);
    }
}

/*
 * One iteration: poll for at most wait_ms (-1 = no limit), dispatch I/O,
 * fire due timers, reap closed objects.
 */
static void
iterate(pg_loop_t *l, int wait_ms)
{
    struct pg_watch *w;
    size_t n = 0, i;
    uint64_t now;
    int rc;

    if (l->heap_len > 0) {
        uint64_t d = l->heap[0]->deadline;
        now = mono_ms();
        uint64_t tw = d > now ? d - now : 0;
        if (tw > 60000) {
            tw = 60000;
        }
        if (wait_ms < 0 || tw < (uint64_t)wait_ms) {
            wait_ms = (int)tw;
        }
    }

    if (poll_reserve(l, l->nwatches) == 0) {
        for (w = l->watches; w != NULL; w = w->next) {
            if (w->events == 0) {
                continue; /* POLLHUP would be reported even with events 0 */
            }
            l->pfds[n].fd = w->fd;
            l->pfds[n].events = (short)(((w->events & PG_EV_READ) ? POLLIN : 0)
                                | ((w->events & PG_EV_WRITE) ? POLLOUT : 0));
            l->pfds[n].revents = 0;
            l->pws[n] = w;
            n++;
        }
    } else {
        host_log(l, PG_LOG_ERROR, "loop: poll array allocation failed");
        if (wait_ms < 0 || wait_ms > 10) {
            wait_ms = 10;
        }
    }

    rc = poll(n ? l->pfds : NULL, (nfds_t)n, wait_ms);
    if (rc < 0 && errno != EINTR) {
        char msg[128];
        snprintf(msg, sizeof(msg), "loop: poll: %s", strerror(errno));
        host_log(l, PG_LOG_ERROR, msg);
    }
    for (i = 0; rc > 0 && i < n; i++) {
        short re = l->pfds[i].revents;
        unsigned ev = 0;

        w = l->pws[i];
        if (re == 0 || w->closed) {
            continue;
        }
        if (re & (POLLIN | POLLPRI | POLLHUP | POLLERR | POLLNVAL)) {
            ev |= PG_EV_READ;
        }
        if (re & (POLLOUT | POLLHUP | POLLERR | POLLNVAL)) {
            ev |= PG_EV_WRITE;
        }
        /* The interest may have changed since poll: honour the current one. */
        ev &= w->events;
        if (ev != 0) {
            w->handler(w->arg, w->fd, ev);
        }
    }

    run_timers(l, mono_ms());
    reap_zombies(l);
}

/*
 * Run until *done is non-zero (checked between iterations) or timeout_ms
 * has passed. Not re-entrant: a nested call returns PG_ERR_BUSY.
 */
pg_status_t
pg_loop_run(pg_loop_t *l, const int *done, unsigned timeout_ms)
{
    uint64_t end;

    if (l == NULL || done == NULL) {
        return PG_ERR_INVALID;
    }
    if (l->running) {
        return PG_ERR_BUSY;
    }
    l->running = 1;
    end = mono_ms() + timeout_ms;
    while (!*done) {
        uint64_t now = mono_ms();
        if (now >= end) {
            l->running = 0;
            return PG_ERR_TIMEOUT;
        }
        iterate(l, (int)(end - now > 60000 ? 60000 : end - now));
    }
    l->running = 0;
    return PG_OK;
}
