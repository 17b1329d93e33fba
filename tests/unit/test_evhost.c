/*
 * Unit tests: src/event/evhost.c (pg_host_t on libevent), and the async
 * Redis client (src/event/redis.c) running over it against a private
 * redis-server. Link with `pkg-config --libs libevent`.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include "provgate/evhost.h"
#include "provgate/redis.h"
#include "helpers/procs.h"

/* ---- timers ---------------------------------------------------------- */

typedef struct tc {
    const pg_host_t *host;
    pg_timer_t *self;
    pg_timer_t *other;          /* closed by this handler when set */
    int id;
    int calls;
    int rearm_left;
    int *order;                 /* shared record of ids, in firing order */
    int *norder;
    int *done;
} tc_t;

static void
on_timer(void *arg)
{
    tc_t *t = arg;

    t->calls++;
    if (t->order != NULL && *t->norder < 16) {
        t->order[(*t->norder)++] = t->id;
    }
    if (t->done != NULL) {
        *t->done = 1;
    }
}

static void
test_timer_order_one_shot(void **state)
{
    pg_evhost_t *eh;
    const pg_host_t *h;
    const uint64_t ms[4] = {40, 10, 25, 15};
    tc_t c[4];
    pg_timer_t *t[4];
    int order[16], n = 0, done = 0, i;
    uint64_t start;

    (void)state;
    assert_int_equal(pg_evhost_new(NULL, &eh), PG_OK);
    h = pg_evhost_host(eh);
    start = h->now_ms(h->ctx);
    for (i = 0; i < 4; i++) {
        memset(&c[i], 0, sizeof(c[i]));
        c[i].id = (int)ms[i];
        c[i].order = order;
        c[i].norder = &n;
        t[i] = h->timer_open(h->ctx, on_timer, &c[i]);
        assert_non_null(t[i]);
        h->timer_arm(t[i], ms[i]);
    }
    c[0].done = &done;
    assert_int_equal(pg_evhost_run(eh, &done, 2000), PG_OK);
    assert_true(h->now_ms(h->ctx) - start >= 40);
    assert_int_equal(n, 4);
    assert_int_equal(order[0], 10);
    assert_int_equal(order[1], 15);
    assert_int_equal(order[2], 25);
    assert_int_equal(order[3], 40);
    /* one-shot: nothing fires again */
    done = 0;
    assert_int_equal(pg_evhost_run(eh, &done, 60), PG_ERR_TIMEOUT);
    for (i = 0; i < 4; i++) {
        assert_int_equal(c[i].calls, 1);
        h->timer_close(t[i]);
    }
    pg_evhost_free(eh);
}

static void
test_timer_disarm_rearm(void **state)
{
    pg_evhost_t *eh;
    const pg_host_t *h;
    tc_t a, b, e;
    pg_timer_t *ta, *tb, *te;
    int done = 0;

    (void)state;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&e, 0, sizeof(e));
    assert_int_equal(pg_evhost_new(NULL, &eh), PG_OK);
    h = pg_evhost_host(eh);
    ta = h->timer_open(h->ctx, on_timer, &a);
    tb = h->timer_open(h->ctx, on_timer, &b);
    te = h->timer_open(h->ctx, on_timer, &e);
    e.done = &done;
    h->timer_arm(ta, 10);
    h->timer_disarm(ta);        /* never fires */
    h->timer_arm(tb, 1000);
    h->timer_arm(tb, 5);        /* re-arm moves the deadline */
    h->timer_arm(te, 60);
    assert_int_equal(pg_evhost_run(eh, &done, 2000), PG_OK);
    assert_int_equal(a.calls, 0);
    assert_int_equal(b.calls, 1);
    assert_int_equal(e.calls, 1);
    h->timer_close(ta);
    h->timer_close(tb);
    h->timer_close(te);
    pg_evhost_free(eh);
}

/* Closes itself and another timer; then pokes its closed self. */
static void
on_timer_closing(void *arg)
{
    tc_t *t = arg;

    t->calls++;
    t->host->timer_close(t->self);
    if (t->other != NULL) {
        t->host->timer_close(t->other);
    }
    /* harmless on a closed timer; freed only after we return (ASan) */
    t->host->timer_arm(t->self, 1);
    t->host->timer_disarm(t->self);
    if (t->done != NULL) {
        *t->done = 1;
    }
}

static void
test_timer_close_in_handler(void **state)
{
    pg_evhost_t *eh;
    const pg_host_t *h;
    tc_t a, b;
    int done = 0;

    (void)state;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    assert_int_equal(pg_evhost_new(NULL, &eh), PG_OK);
    h = pg_evhost_host(eh);
    a.host = b.host = h;
    a.self = h->timer_open(h->ctx, on_timer_closing, &a);
    b.self = h->timer_open(h->ctx, on_timer_closing, &b);
    /* Both due in the same iteration; whichever runs first closes the
     * other, so exactly one handler runs, ever. */
    a.other = b.self;
    b.other = a.self;
    a.done = b.done = &done;
    h->timer_arm(a.self, 5);
    h->timer_arm(b.self, 5);
    assert_int_equal(pg_evhost_run(eh, &done, 2000), PG_OK);
    done = 0;
    assert_int_equal(pg_evhost_run(eh, &done, 60), PG_ERR_TIMEOUT);
    assert_int_equal(a.calls + b.calls, 1);
    pg_evhost_free(eh);
}

static void
on_timer_rearm(void *arg)
{
    tc_t *t = arg;

    t->calls++;
    if (t->rearm_left-- > 0) {
        t->host->timer_arm(t->self, 0);
    }
}

/* ---- watches --------------------------------------------------------- */

typedef struct wc {
    const pg_host_t *host;
    pg_watch_t *self;
    pg_watch_t *other;
    int fd;
    int calls;
    unsigned last;
    int drain;
    int close_self;
    int *done;
    int done_after;
} wc_t;

static void
on_io(void *arg, int fd, unsigned events)
{
    wc_t *w = arg;

    assert_int_equal(fd, w->fd);
    w->calls++;
    w->last = events;
    if (w->drain) {
        char buf[64];
        while (read(fd, buf, sizeof(buf)) > 0) {
        }
    }
    if (w->other != NULL) {
        w->host->watch_close(w->other);
        w->other = NULL;
    }
    if (w->close_self) {
        w->host->watch_close(w->self);
        /* closed inside own handler: updates fail, memory still valid */
        assert_int_equal(w->host->watch_update(w->self, PG_EV_READ), -1);
    }
    if (w->done != NULL && w->calls >= w->done_after) {
        *w->done = 1;
    }
}

/* A self-re-arming 0 ms timer must not starve I/O. */
static void
test_zero_timer_no_starvation(void **state)
{
    pg_evhost_t *eh;
    const pg_host_t *h;
    tc_t t;
    wc_t w;
    int sv[2], done = 0;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(pg_evhost_new(NULL, &eh), PG_OK);
    h = pg_evhost_host(eh);
    memset(&t, 0, sizeof(t));
    memset(&w, 0, sizeof(w));
    t.host = h;
    t.rearm_left = 1000000;
    t.self = h->timer_open(h->ctx, on_timer_rearm, &t);
    h->timer_arm(t.self, 0);
    w.host = h;
    w.fd = sv[0];
    w.done = &done;
    w.done_after = 1;
    w.self = h->watch_open(h->ctx, sv[0], on_io, &w);
    assert_non_null(w.self);
    assert_int_equal(h->watch_update(w.self, PG_EV_WRITE), 0);
    assert_int_equal(pg_evhost_run(eh, &done, 1000), PG_OK);
    assert_int_equal(w.calls, 1);
    assert_true(t.calls >= 1 && t.calls <= 3);
    h->watch_close(w.self);
    h->timer_close(t.self);
    pg_evhost_free(eh);
    close(sv[0]);
    close(sv[1]);
}

static void
test_level_triggered(void **state)
{
    pg_evhost_t *eh;
    const pg_host_t *h;
    wc_t w;
    int sv[2], done = 0;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv),
                     0);
    assert_int_equal(pg_evhost_new(NULL, &eh), PG_OK);
    h = pg_evhost_host(eh);
    memset(&w, 0, sizeof(w));
    w.host = h;
    w.fd = sv[0];
    w.self = h->watch_open(h->ctx, sv[0], on_io, &w);
    assert_non_null(w.self);
    assert_null(h->watch_open(h->ctx, -1, on_io, &w));

    /* empty interest: silent although data waits */
    assert_int_equal(write(sv[1], "abc", 3), 3);
    assert_int_equal(pg_evhost_run(eh, &done, 50), PG_ERR_TIMEOUT);
    assert_int_equal(w.calls, 0);

    /* READ, data left unread: reported again on every iteration */
    assert_int_equal(h->watch_update(w.self, PG_EV_READ), 0);
    w.done = &done;
    w.done_after = 5;
    assert_int_equal(pg_evhost_run(eh, &done, 1000), PG_OK);
    assert_int_equal(w.calls, 5);
    assert_int_equal(w.last, PG_EV_READ);

    /* drained: exactly one more call, then silence */
    w.drain = 1;
    w.done = NULL;
    done = 0;
    assert_int_equal(pg_evhost_run(eh, &done, 100), PG_ERR_TIMEOUT);
    assert_int_equal(w.calls, 6);

    /* WRITE on an always-writable socket: repeated */
    w.drain = 0;
    w.calls = 0;
    w.done = &done;
    w.done_after = 3;
    done = 0;
    assert_int_equal(h->watch_update(w.self, PG_EV_WRITE), 0);
    assert_int_equal(pg_evhost_run(eh, &done, 1000), PG_OK);
    assert_int_equal(w.calls, 3);
    assert_int_equal(w.last, PG_EV_WRITE);

    /* both ready: both reported in one call */
    assert_int_equal(write(sv[1], "x", 1), 1);
    assert_int_equal(h->watch_update(w.self, PG_EV_READ | PG_EV_WRITE), 0);
    w.done_after = 1;
    w.calls = 0;
    done = 0;
    assert_int_equal(pg_evhost_run(eh, &done, 1000), PG_OK);
    assert_int_equal(w.last, PG_EV_READ | PG_EV_WRITE);

    /* back to 0: silence */
    assert_int_equal(h->watch_update(w.self, 0), 0);
    w.calls = 0;
    w.done = NULL;
    done = 0;
    assert_int_equal(pg_evhost_run(eh, &done, 50), PG_ERR_TIMEOUT);
    assert_int_equal(w.calls, 0);

    /* peer closed: READ reports EOF */
    close(sv[1]);
    w.drain = 1;
    w.done = &done;
    w.done_after = 1;
    done = 0;
    assert_int_equal(h->watch_update(w.self, PG_EV_READ), 0);
    assert_int_equal(pg_evhost_run(eh, &done, 1000), PG_OK);
    assert_true(w.last & PG_EV_READ);

    h->watch_close(w.self);
    pg_evhost_free(eh);
    close(sv[0]);
}

/* Two watches on one readable fd, each closing itself and the other in its
 * handler: exactly one call in total, ever (no handler after close), and no
 * use after free (ASan build). */
static void
test_watch_close_in_handler(void **state)
{
    pg_evhost_t *eh;
    const pg_host_t *h;
    wc_t a, b;
    tc_t e;
    pg_timer_t *te;
    int sv[2], done = 0;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv),
                     0);
    assert_int_equal(pg_evhost_new(NULL, &eh), PG_OK);
    h = pg_evhost_host(eh);
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&e, 0, sizeof(e));
    a.host = b.host = h;
    a.fd = b.fd = sv[0];
    a.self = h->watch_open(h->ctx, sv[0], on_io, &a);
    b.self = h->watch_open(h->ctx, sv[0], on_io, &b);
    assert_non_null(a.self);
    assert_non_null(b.self);
    a.other = b.self;
    b.other = a.self;
    a.close_self = b.close_self = 1;
    assert_int_equal(h->watch_update(a.self, PG_EV_READ), 0);
    assert_int_equal(h->watch_update(b.self, PG_EV_READ), 0);
    assert_int_equal(write(sv[1], "data", 4), 4); /* never drained */
    te = h->timer_open(h->ctx, on_timer, &e);
    e.done = &done;
    h->timer_arm(te, 100);
    assert_int_equal(pg_evhost_run(eh, &done, 2000), PG_OK);
    assert_int_equal(a.calls + b.calls, 1);
    h->timer_close(te);
    pg_evhost_free(eh);
    close(sv[0]);
    close(sv[1]);
}

static void
test_run_timeout_and_busy(void **state)
{
    pg_evhost_t *eh;
    const pg_host_t *h;
    uint64_t a, b;
    int done = 0;

    (void)state;
    assert_int_equal(pg_evhost_new(NULL, &eh), PG_OK);
    h = pg_evhost_host(eh);
    a = h->now_ms(h->ctx);
    assert_int_equal(pg_evhost_run(eh, &done, 80), PG_ERR_TIMEOUT);
    b = h->now_ms(h->ctx);
    assert_true(b - a >= 80);
    assert_true(b - a < 1000);
    done = 1;
    assert_int_equal(pg_evhost_run(eh, &done, 5000), PG_OK);
    assert_true(h->now_ms(h->ctx) - b < 50);
    assert_int_equal(pg_evhost_run(NULL, &done, 10), PG_ERR_INVALID);
    pg_evhost_free(eh);
}

typedef struct nest {
    pg_evhost_t *eh;
    pg_status_t st;
    int done;
} nest_t;

static void
on_nested_run(void *arg)
{
    nest_t *n = arg;
    int never = 0;

    n->st = pg_evhost_run(n->eh, &never, 10);
    n->done = 1;
}

static void
test_nested_run_is_busy(void **state)
{
    pg_evhost_t *eh;
    const pg_host_t *h;
    nest_t n;
    pg_timer_t *t;

    (void)state;
    assert_int_equal(pg_evhost_new(NULL, &eh), PG_OK);
    h = pg_evhost_host(eh);
    memset(&n, 0, sizeof(n));
    n.eh = eh;
    n.st = PG_OK;
    t = h->timer_open(h->ctx, on_nested_run, &n);
    h->timer_arm(t, 1);
    assert_int_equal(pg_evhost_run(eh, &n.done, 1000), PG_OK);
    assert_int_equal(n.st, PG_ERR_BUSY);
    h->timer_close(t);
    pg_evhost_free(eh);
}

/* Objects left open are released by pg_evhost_free (ASan: no leak); a
 * borrowed base survives and stays usable. */
static void
test_free_open_objects_borrowed_base(void **state)
{
    struct event_base *base;
    pg_evhost_t *eh;
    const pg_host_t *h;
    tc_t t;
    wc_t w;
    int sv[2];

    (void)state;
    memset(&t, 0, sizeof(t));
    memset(&w, 0, sizeof(w));
    base = event_base_new();
    assert_non_null(base);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(pg_evhost_new(base, &eh), PG_OK);
    assert_ptr_equal(pg_evhost_base(eh), base);
    h = pg_evhost_host(eh);
    h->timer_arm(h->timer_open(h->ctx, on_timer, &t), 10);
    assert_non_null(h->timer_open(h->ctx, on_timer, &t));
    w.fd = sv[0];
    w.self = h->watch_open(h->ctx, sv[0], on_io, &w);
    assert_int_equal(h->watch_update(w.self, PG_EV_WRITE), 0);
    pg_evhost_free(eh);
    /* nothing of ours is left registered on the base */
    assert_int_equal(event_base_loop(base, EVLOOP_NONBLOCK), 1);
    assert_int_equal(t.calls, 0);
    assert_int_equal(w.calls, 0);
    event_base_free(base);
    close(sv[0]);
    close(sv[1]);
}

typedef struct logrec {
    int n;
    pg_log_level_t level;
    char msg[128];
} logrec_t;

static void
log_sink(void *arg, pg_log_level_t level, const char *msg)
{
    logrec_t *r = arg;

    r->n++;
    r->level = level;
    snprintf(r->msg, sizeof(r->msg), "%s", msg);
}

static void
test_logger_and_level(void **state)
{
    pg_evhost_t *eh;
    const pg_host_t *h;
    logrec_t r;

    (void)state;
    memset(&r, 0, sizeof(r));
    assert_int_equal(pg_evhost_new(NULL, &eh), PG_OK);
    h = pg_evhost_host(eh);
    pg_evhost_set_logger(eh, log_sink, &r);
    pg_log(h, PG_LOG_INFO, "hidden %d", 1);     /* default level WARN */
    assert_int_equal(r.n, 0);
    pg_log(h, PG_LOG_WARN, "shown %d", 2);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.level, PG_LOG_WARN);
    assert_string_equal(r.msg, "shown 2");
    pg_evhost_set_log_level(eh, PG_LOG_DEBUG);
    pg_log(h, PG_LOG_DEBUG, "debug");
    assert_int_equal(r.n, 2);
    assert_string_equal(r.msg, "debug");
    pg_evhost_set_log_level(eh, PG_LOG_ERROR);
    pg_log(h, PG_LOG_WARN, "dropped");
    assert_int_equal(r.n, 2);
    pg_evhost_free(eh);
}

/* ---- pg_redis over the libevent host --------------------------------- */

static pgt_redis_t g_srv;

typedef struct rres {
    int called;
    pg_status_t st;
    int type;
    long long integer;
    char str[64];
    size_t len;
    int *done;
} rres_t;

static void
on_reply(void *arg, pg_status_t st, const struct redisReply *reply)
{
    rres_t *r = arg;

    r->called++;
    r->st = st;
    r->type = -1;
    if (reply != NULL) {
        r->type = reply->type;
        r->integer = reply->integer;
        if (reply->str != NULL) {
            r->len = reply->len < sizeof(r->str) ? reply->len
                                                 : sizeof(r->str) - 1;
            memcpy(r->str, reply->str, r->len);
            r->str[r->len] = '\0';
        }
    }
    if (r->done != NULL) {
        *r->done = 1;
    }
}

static pg_redis_config_t
redis_cfg(void)
{
    pg_redis_config_t c;

    memset(&c, 0, sizeof(c));
    c.host = "127.0.0.1";
    c.port = g_srv.port;
    c.connect_timeout_ms = 1000;
    c.command_timeout_ms = 2000;
    return c;
}

/* One command to completion over the evhost. */
static rres_t
redis_run1(pg_evhost_t *eh, pg_redis_t *r, int argc, const char **argv,
           const size_t *lens)
{
    rres_t res;
    int done = 0;

    memset(&res, 0, sizeof(res));
    res.done = &done;
    assert_int_equal(pg_redis_command(r, argc, argv, lens, 0, on_reply, &res,
                                      NULL), PG_OK);
    assert_int_equal(res.called, 0);  /* never from inside the call */
    assert_int_equal(pg_evhost_run(eh, &done, 5000), PG_OK);
    assert_int_equal(res.called, 1);
    return res;
}

static void
test_redis_set_get(void **state)
{
    pg_evhost_t *eh;
    pg_redis_t *r;
    pg_redis_config_t c = redis_cfg();
    const char *set[] = {"SET", "pg:evhost:k", "va\0lue"};
    const size_t setlen[] = {3, 11, 6};
    const char *get[] = {"GET", "pg:evhost:k"};
    rres_t res;

    (void)state;
    assert_int_equal(pg_evhost_new(NULL, &eh), PG_OK);
    pg_evhost_set_log_level(eh, PG_LOG_ERROR);
    assert_int_equal(pg_redis_new(pg_evhost_host(eh), &c, &r), PG_OK);
    assert_int_equal(pg_redis_connected(r), 0);
    res = redis_run1(eh, r, 3, set, setlen);
    assert_int_equal(res.st, PG_OK);
    assert_int_equal(res.type, REDIS_REPLY_STATUS);
    assert_string_equal(res.str, "OK");
    assert_int_equal(pg_redis_connected(r), 1);
    res = redis_run1(eh, r, 2, get, NULL);
    assert_int_equal(res.st, PG_OK);
    assert_int_equal(res.type, REDIS_REPLY_STRING);
    assert_int_equal(res.len, 6);
    assert_memory_equal(res.str, "va\0lue", 6);
    pg_redis_free(r);
    pg_evhost_free(eh);
}

static void
test_redis_pipeline_1000(void **state)
{
    enum { N = 1000 };
    static rres_t res[N];
    pg_evhost_t *eh;
    pg_redis_t *r;
    pg_redis_config_t c = redis_cfg();
    const char *del[] = {"DEL", "pg:evhost:ctr"};
    const char *incr[] = {"INCR", "pg:evhost:ctr"};
    const char *get[] = {"GET", "pg:evhost:ctr"};
    rres_t one;
    int done = 0, i;

    (void)state;
    assert_int_equal(pg_evhost_new(NULL, &eh), PG_OK);
    pg_evhost_set_log_level(eh, PG_LOG_ERROR);
    assert_int_equal(pg_redis_new(pg_evhost_host(eh), &c, &r), PG_OK);
    one = redis_run1(eh, r, 2, del, NULL);
    assert_int_equal(one.st, PG_OK);
    memset(res, 0, sizeof(res));
    for (i = 0; i < N; i++) {
        assert_int_equal(pg_redis_command(r, 2, incr, NULL, 5000, on_reply,
                                          &res[i], NULL), PG_OK);
    }
    res[N - 1].done = &done;
    assert_int_equal(pg_evhost_run(eh, &done, 5000), PG_OK);
    for (i = 0; i < N; i++) {
        assert_int_equal(res[i].called, 1);
        assert_int_equal(res[i].st, PG_OK);
        assert_int_equal(res[i].type, REDIS_REPLY_INTEGER);
        assert_int_equal(res[i].integer, i + 1); /* replies in order */
    }
    one = redis_run1(eh, r, 2, get, NULL);
    assert_string_equal(one.str, "1000");
    pg_redis_free(r);
    pg_evhost_free(eh);
}

/* Server gone: the command fails (no reply); back: the client reconnects. */
static void
test_redis_down_and_back(void **state)
{
    pg_evhost_t *eh;
    pg_redis_t *r;
    pg_redis_config_t c;
    const char *ping[] = {"PING"};
    pgt_redis_t srv;
    rres_t res;
    uint64_t end;

    (void)state;
    memset(&srv, 0, sizeof(srv));
    assert_int_equal(pgt_redis_start(&srv, NULL), 0);
    memset(&c, 0, sizeof(c));
    c.host = "127.0.0.1";
    c.port = srv.port;
    c.connect_timeout_ms = 500;
    c.command_timeout_ms = 500;
    assert_int_equal(pg_evhost_new(NULL, &eh), PG_OK);
    pg_evhost_set_log_level(eh, PG_LOG_ERROR);
    assert_int_equal(pg_redis_new(pg_evhost_host(eh), &c, &r), PG_OK);
    res = redis_run1(eh, r, 1, ping, NULL);
    assert_int_equal(res.st, PG_OK);
    assert_string_equal(res.str, "PONG");

    pgt_redis_kill(&srv);
    res = redis_run1(eh, r, 1, ping, NULL);
    assert_int_not_equal(res.st, PG_OK);
    assert_int_equal(res.type, -1);

    assert_int_equal(pgt_redis_restart(&srv), 0);
    /* the client may hold back a reconnect briefly after a failure */
    end = pgt_now_ms() + 3000;
    do {
        res = redis_run1(eh, r, 1, ping, NULL);
        if (res.st == PG_OK) {
            break;
        }
        pgt_sleep_ms(50);
    } while (pgt_now_ms() < end);
    assert_int_equal(res.st, PG_OK);
    assert_string_equal(res.str, "PONG");
    pg_redis_free(r);
    pg_evhost_free(eh);
    pgt_redis_stop(&srv);
}

static int
setup_server(void **state)
{
    (void)state;
    return pgt_redis_start(&g_srv, NULL);
}

static int
teardown_server(void **state)
{
    (void)state;
    pgt_redis_stop(&g_srv);
    return 0;
}

int
main(void)
{
    const struct CMUnitTest host_tests[] = {
        cmocka_unit_test(test_timer_order_one_shot),
        cmocka_unit_test(test_timer_disarm_rearm),
        cmocka_unit_test(test_timer_close_in_handler),
        cmocka_unit_test(test_zero_timer_no_starvation),
        cmocka_unit_test(test_level_triggered),
        cmocka_unit_test(test_watch_close_in_handler),
        cmocka_unit_test(test_run_timeout_and_busy),
        cmocka_unit_test(test_nested_run_is_busy),
        cmocka_unit_test(test_free_open_objects_borrowed_base),
        cmocka_unit_test(test_logger_and_level),
    };
    const struct CMUnitTest redis_tests[] = {
        cmocka_unit_test(test_redis_set_get),
        cmocka_unit_test(test_redis_pipeline_1000),
        cmocka_unit_test(test_redis_down_and_back),
    };
    int failed;

    failed = cmocka_run_group_tests_name("evhost", host_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("evhost_redis", redis_tests,
                                          setup_server, teardown_server);
    return failed;
}
