/* Unit tests: src/event/loop.c (poll-based pg_host_t). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include "provgate/loop.h"
#include "helpers/procs.h"

typedef struct trec {
    int order[16];
    int n;
} trec_t;

typedef struct tctx {
    trec_t *rec;
    int id;
    const pg_host_t *host;
    pg_timer_t *self;
    pg_timer_t *other;   /* closed or disarmed by this handler */
    int rearm_left;      /* re-arm self this many times */
    int calls;
    int *done;
} tctx_t;

static void
record_timer(void *arg)
{
    tctx_t *t = arg;

    t->calls++;
    if (t->rec != NULL && t->rec->n < 16) {
        t->rec->order[t->rec->n++] = t->id;
    }
    if (t->done != NULL) {
        *t->done = 1;
    }
}

static void
test_timer_order(void **state)
{
    pg_loop_t *l;
    const pg_host_t *h;
    trec_t rec = {{0}, 0};
    tctx_t c[5];
    pg_timer_t *t[5];
    const uint64_t ms[5] = {30, 10, 20, 15, 15};
    int done = 0, i;
    uint64_t start;

    (void)state;
    assert_int_equal(pg_loop_new(&l), PG_OK);
    h = pg_loop_host(l);
    start = h->now_ms(h->ctx);
    for (i = 0; i < 5; i++) {
        memset(&c[i], 0, sizeof(c[i]));
        c[i].rec = &rec;
        c[i].id = (int)ms[i] * 10 + i;
        t[i] = h->timer_open(h->ctx, record_timer, &c[i]);
        assert_non_null(t[i]);
        h->timer_arm(t[i], ms[i]);
    }
    c[0].done = &done; /* the 30 ms timer is last */
    assert_int_equal(pg_loop_run(l, &done, 2000), PG_OK);
    assert_true(h->now_ms(h->ctx) - start >= 30);
    assert_int_equal(rec.n, 5);
    assert_int_equal(rec.order[0], 101);  /* 10 ms */
    assert_int_equal(rec.order[1], 153);  /* 15 ms, armed first */
    assert_int_equal(rec.order[2], 154);  /* 15 ms, armed second */
    assert_int_equal(rec.order[3], 202);  /* 20 ms */
    assert_int_equal(rec.order[4], 300);  /* 30 ms */
    for (i = 0; i < 5; i++) {
        assert_int_equal(c[i].calls, 1); /* one-shot */
        h->timer_close(t[i]);
    }
    pg_loop_free(l);
}

static void
test_timer_disarm_rearm(void **state)
{
    pg_loop_t *l;
    const pg_host_t *h;
    tctx_t a, b, end;
    pg_timer_t *ta, *tb, *te;
    int done = 0;

    (void)state;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&end, 0, sizeof(end));
    assert_int_equal(pg_loop_new(&l), PG_OK);
    h = pg_loop_host(l);
    ta = h->timer_open(h->ctx, record_timer, &a);
    tb = h->timer_open(h->ctx, record_timer, &b);
    te = h->timer_open(h->ctx, record_timer, &end);
    end.done = &done;
    h->timer_arm(ta, 10);
    h->timer_disarm(ta);          /* never fires */
    h->timer_arm(tb, 500);
    h->timer_arm(tb, 5);          /* re-arm moves the deadline earlier */
    h->timer_arm(te, 60);
    assert_int_equal(pg_loop_run(l, &done, 2000), PG_OK);
    assert_int_equal(a.calls, 0);
    assert_int_equal(b.calls, 1);
    assert_int_equal(end.calls, 1);
    h->timer_close(ta);
    h->timer_close(tb);
    h->timer_close(te);
    pg_loop_free(l);
}

/* Closes itself, and closes/disarms another timer due in the same batch. */
static void
closing_timer(void *arg)
{
    tctx_t *t = arg;

    t->calls++;
    t->host->timer_close(t->self);
    if (t->other != NULL) {
        t->host->timer_close(t->other);
    }
    /* Touching our own (closed) timer must still be harmless. */
    t->host->timer_disarm(t->self);
    if (t->done != NULL) {
        *t->done = 1;
    }
}

static void
test_timer_close_in_handler(void **state)
{
    pg_loop_t *l;
    const pg_host_t *h;
    tctx_t a, b;
    int done = 0;

    (void)state;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    assert_int_equal(pg_loop_new(&l), PG_OK);
    h = pg_loop_host(l);
    a.host = b.host = h;
    a.self = h->timer_open(h->ctx, closing_timer, &a);
    b.self = h->timer_open(h->ctx, closing_timer, &b);
    a.other = b.self;
    a.done = &done;
    /* Same deadline: a was armed first, so it runs first and closes b. */
    h->timer_arm(a.self, 5);
    h->timer_arm(b.self, 5);
    assert_int_equal(pg_loop_run(l, &done, 2000), PG_OK);
    done = 0;
    assert_int_equal(pg_loop_run(l, &done, 50), PG_ERR_TIMEOUT);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 0);
    pg_loop_free(l);
}

static void
rearming_timer(void *arg)
{
    tctx_t *t = arg;

    t->calls++;
    if (t->rearm_left-- > 0) {
        t->host->timer_arm(t->self, 0);
    } else if (t->done != NULL) {
        *t->done = 1;
    }
}

typedef struct wctx {
    const pg_host_t *host;
    pg_watch_t *self;
    pg_watch_t *other;
    int fd;
    int calls;
    unsigned last_events;
    int close_self;
    int drain;           /* read everything when called */
    int *done;
    int done_after;
} wctx_t;

static void
watch_handler(void *arg, int fd, unsigned events)
{
    wctx_t *w = arg;

    assert_int_equal(fd, w->fd);
    w->calls++;
    w->last_events = events;
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
    }
    if (w->done != NULL && w->calls >= w->done_after) {
        *w->done = 1;
    }
}

/* A 0 ms self-re-arming timer must not starve I/O dispatch. */
static void
test_zero_timer_no_starvation(void **state)
{
    pg_loop_t *l;
    const pg_host_t *h;
    tctx_t t;
    wctx_t w;
    int sv[2], done = 0;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(pg_loop_new(&l), PG_OK);
    h = pg_loop_host(l);
    memset(&t, 0, sizeof(t));
    memset(&w, 0, sizeof(w));
    t.host = h;
    t.rearm_left = 1000000;
    t.self = h->timer_open(h->ctx, rearming_timer, &t);
    h->timer_arm(t.self, 0);
    w.host = h;
    w.fd = sv[0];
    w.done = &done;
    w.done_after = 1;
    w.self = h->watch_open(h->ctx, sv[0], watch_handler, &w);
    assert_non_null(w.self);
    assert_int_equal(h->watch_update(w.self, PG_EV_WRITE), 0);
    assert_int_equal(pg_loop_run(l, &done, 1000), PG_OK);
    assert_int_equal(w.calls, 1);
    assert_true(t.calls >= 1 && t.calls <= 2);
    h->watch_close(w.self);
    h->timer_close(t.self);
    pg_loop_free(l);
    close(sv[0]);
    close(sv[1]);
}

static void
test_level_triggered(void **state)
{
    pg_loop_t *l;
    const pg_host_t *h;
    wctx_t w;
    int sv[2], done = 0;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    assert_int_equal(pg_loop_new(&l), PG_OK);
    h = pg_loop_host(l);
    memset(&w, 0, sizeof(w));
    w.host = h;
    w.fd = sv[0];
    w.self = h->watch_open(h->ctx, sv[0], watch_handler, &w);
    assert_non_null(w.self);

    /* Empty interest: nothing is reported even though data is waiting. */
    assert_int_equal(write(sv[1], "abc", 3), 3);
    assert_int_equal(pg_loop_run(l, &done, 50), PG_ERR_TIMEOUT);
    assert_int_equal(w.calls, 0);

    /* Read interest, data not consumed: called on every iteration. */
    assert_int_equal(h->watch_update(w.self, PG_EV_READ), 0);
    w.done = &done;
    w.done_after = 5;
    assert_int_equal(pg_loop_run(l, &done, 1000), PG_OK);
    assert_int_equal(w.calls, 5);
    assert_int_equal(w.last_events, PG_EV_READ);

    /* Consumed: no more calls. */
    w.drain = 1;
    w.done = NULL;
    done = 0;
    assert_int_equal(pg_loop_run(l, &done, 100), PG_ERR_TIMEOUT);
    assert_int_equal(w.calls, 6);

    /* Write interest on an always-writable socket: repeated calls. */
    w.drain = 0;
    w.calls = 0;
    w.done = &done;
    w.done_after = 3;
    done = 0;
    assert_int_equal(h->watch_update(w.self, PG_EV_WRITE), 0);
    assert_int_equal(pg_loop_run(l, &done, 1000), PG_OK);
    assert_int_equal(w.calls, 3);
    assert_int_equal(w.last_events, PG_EV_WRITE);

    /* Both: events reports both. */
    assert_int_equal(write(sv[1], "x", 1), 1);
    assert_int_equal(h->watch_update(w.self, PG_EV_READ | PG_EV_WRITE), 0);
    w.calls = 0;
    w.done_after = 1;
    done = 0;
    assert_int_equal(pg_loop_run(l, &done, 1000), PG_OK);
    assert_int_equal(w.last_events, PG_EV_READ | PG_EV_WRITE);

    /* Back to 0: silence. */
    assert_int_equal(h->watch_update(w.self, 0), 0);
    w.calls = 0;
    w.done = NULL;
    done = 0;
    assert_int_equal(pg_loop_run(l, &done, 50), PG_ERR_TIMEOUT);
    assert_int_equal(w.calls, 0);

    /* Peer closed: a read watch gets READ (EOF/HUP) */
    close(sv[1]);
    w.drain = 1;
    w.done = &done;
    w.done_after = 1;
    done = 0;
    assert_int_equal(h->watch_update(w.self, PG_EV_READ), 0);
    assert_int_equal(pg_loop_run(l, &done, 1000), PG_OK);
    assert_true(w.last_events & PG_EV_READ);

    h->watch_close(w.self);
    pg_loop_free(l);
    close(sv[0]);
}

static void
test_watch_close_in_handler(void **state)
{
    pg_loop_t *l;
    const pg_host_t *h;
    wctx_t a, b;
    tctx_t end;
    pg_timer_t *te;
    int sv[2], done = 0;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    assert_int_equal(pg_loop_new(&l), PG_OK);
    h = pg_loop_host(l);
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&end, 0, sizeof(end));
    a.host = b.host = h;
    a.fd = b.fd = sv[0];
    /* Two watches on the same readable fd; whichever runs first closes
     * itself and the other: exactly one handler call in total, ever. */
    a.self = h->watch_open(h->ctx, sv[0], watch_handler, &a);
    b.self = h->watch_open(h->ctx, sv[0], watch_handler, &b);
    a.other = b.self;
    b.other = a.self;
    a.close_self = b.close_self = 1;
    assert_int_equal(h->watch_update(a.self, PG_EV_READ), 0);
    assert_int_equal(h->watch_update(b.self, PG_EV_READ), 0);
    assert_int_equal(write(sv[1], "data", 4), 4); /* never drained */
    te = h->timer_open(h->ctx, record_timer, &end);
    end.done = &done;
    h->timer_arm(te, 100);
    assert_int_equal(pg_loop_run(l, &done, 2000), PG_OK);
    assert_int_equal(a.calls + b.calls, 1);
    h->timer_close(te);
    pg_loop_free(l);
    close(sv[0]);
    close(sv[1]);
}

/* A watch opened during dispatch only runs after the next poll. */
typedef struct opener {
    const pg_host_t *host;
    wctx_t *child;
    int calls;
} opener_t;

static void
opener_handler(void *arg, int fd, unsigned events)
{
    opener_t *o = arg;

    (void)events;
    o->calls++;
    if (o->child->self == NULL) {
        o->child->self = o->host->watch_open(o->host->ctx, fd, watch_handler,
                                             o->child);
        assert_int_equal(o->host->watch_update(o->child->self, PG_EV_WRITE), 0);
        assert_int_equal(o->child->calls, 0);
    }
}

static void
test_watch_open_in_handler(void **state)
{
    pg_loop_t *l;
    const pg_host_t *h;
    opener_t o;
    wctx_t child;
    pg_watch_t *w;
    int sv[2], done = 0;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(pg_loop_new(&l), PG_OK);
    h = pg_loop_host(l);
    memset(&o, 0, sizeof(o));
    memset(&child, 0, sizeof(child));
    o.host = h;
    o.child = &child;
    child.host = h;
    child.fd = sv[0];
    child.done = &done;
    child.done_after = 2;
    w = h->watch_open(h->ctx, sv[0], opener_handler, &o);
    assert_int_equal(h->watch_update(w, PG_EV_WRITE), 0);
    assert_int_equal(pg_loop_run(l, &done, 1000), PG_OK);
    assert_int_equal(child.calls, 2);
    assert_int_equal(o.calls, 3); /* child not dispatched in its birth iteration */
    h->watch_close(w);
    h->watch_close(child.self);
    pg_loop_free(l);
    close(sv[0]);
    close(sv[1]);
}

static void
test_now_and_run_timeout(void **state)
{
    pg_loop_t *l;
    const pg_host_t *h;
    uint64_t a, b;
    int done = 0;

    (void)state;
    assert_int_equal(pg_loop_new(&l), PG_OK);
    h = pg_loop_host(l);
    a = h->now_ms(h->ctx);
    assert_int_equal(pg_loop_run(l, &done, 80), PG_ERR_TIMEOUT);
    b = h->now_ms(h->ctx);
    assert_true(b - a >= 80);
    assert_true(b - a < 1000);
    done = 1;
    assert_int_equal(pg_loop_run(l, &done, 5000), PG_OK);
    assert_true(h->now_ms(h->ctx) - b < 50);
    pg_loop_free(l);
}

/* Closing a still-armed timer and a still-open watch at free: no leak. */
static void
test_free_with_open_objects(void **state)
{
    pg_loop_t *l;
    const pg_host_t *h;
    tctx_t t;
    wctx_t w;
    int sv[2];

    (void)state;
    memset(&t, 0, sizeof(t));
    memset(&w, 0, sizeof(w));
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(pg_loop_new(&l), PG_OK);
    h = pg_loop_host(l);
    h->timer_arm(h->timer_open(h->ctx, record_timer, &t), 10);
    (void)h->timer_open(h->ctx, record_timer, &t);
    assert_non_null(h->watch_open(h->ctx, sv[0], watch_handler, &w));
    pg_loop_free(l);
    assert_int_equal(t.calls, 0);
    close(sv[0]);
    close(sv[1]);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timer_order),
        cmocka_unit_test(test_timer_disarm_rearm),
        cmocka_unit_test(test_timer_close_in_handler),
        cmocka_unit_test(test_zero_timer_no_starvation),
        cmocka_unit_test(test_level_triggered),
        cmocka_unit_test(test_watch_close_in_handler),
        cmocka_unit_test(test_watch_open_in_handler),
        cmocka_unit_test(test_now_and_run_timeout),
        cmocka_unit_test(test_free_with_open_objects),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
