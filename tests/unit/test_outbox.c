/* Unit tests: src/outbox/outbox.c against private redis-servers. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <jansson.h>
#include "provgate/loop.h"
#include "provgate/outbox.h"
#include "provgate/redis.h"
#include "helpers/procs.h"

static pgt_redis_t g_srv;
static pgt_redis_t g_aof;      /* AOF server of test_aof_restart */

/* ---- fixture: a loop, three clients (plain, waiter, consumer) --------- */

typedef struct fx {
    pg_loop_t *loop;
    const pg_host_t *host;
    pg_redis_t *r;     /* enqueue / dead letters / rate */
    pg_redis_t *r2;    /* a second "gateway" */
    pg_redis_t *rw;    /* blocking waits */
    pg_redis_t *rc;    /* consumer A */
    pg_redis_t *rc2;   /* consumer B */
} fx_t;

static pg_redis_t *
client(fx_t *f, const pgt_redis_t *srv)
{
    pg_redis_config_t c;
    pg_redis_t *r = NULL;

    memset(&c, 0, sizeof(c));
    c.host = "127.0.0.1";
    c.port = srv->port;
    c.command_timeout_ms = 2000;
    assert_int_equal(pg_redis_new(f->host, &c, &r), PG_OK);
    return r;
}

static void
fx_open(fx_t *f, const pgt_redis_t *srv)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(pg_loop_new(&f->loop), PG_OK);
    pg_loop_set_log_level(f->loop, PG_LOG_ERROR);
    f->host = pg_loop_host(f->loop);
    f->r = client(f, srv);
    f->r2 = client(f, srv);
    f->rw = client(f, srv);
    f->rc = client(f, srv);
    f->rc2 = client(f, srv);
}

static void
fx_close(fx_t *f)
{
    pg_redis_free(f->r);
    pg_redis_free(f->r2);
    pg_redis_free(f->rw);
    pg_redis_free(f->rc);
    pg_redis_free(f->rc2);
    pg_loop_free(f->loop);
}

/* Run the loop for ms (no completion flag). */
static void
spin(fx_t *f, unsigned ms)
{
    int never = 0;
    assert_int_equal(pg_loop_run(f->loop, &never, ms), PG_ERR_TIMEOUT);
}

/* First reply line of an inline command against srv. */
static void
q(const pgt_redis_t *srv, const char *cmd, char *out, size_t outsz)
{
    assert_int_equal(pgt_redis_query(srv, cmd, out, outsz), 0);
}

static void
flush(const pgt_redis_t *srv)
{
    char buf[64];
    q(srv, "FLUSHALL", buf, sizeof(buf));
    assert_string_equal(buf, "+OK");
}

/* ---- enqueue helpers ------------------------------------------------ */

typedef struct enq_res {
    int called;
    pg_status_t st;
    int created;
    int own;
    char id[PG_OUTBOX_ID_MAX + 1];
    char idem[PG_OUTBOX_IDEM_MAX + 1];
    int *done;
    pg_outbox_consumer_t **free_c;  /* free this consumer in the callback */
} enq_res_t;

static int g_enq_calls;        /* enqueue callbacks so far */

static void
enq_cb(void *arg, pg_status_t st, const pg_outbox_enqueued_t *res)
{
    enq_res_t *e = arg;

    e->called++;
    e->st = st;
    if (st == PG_OK) {
        assert_non_null(res);
        e->created = res->created;
        e->own = res->own;
        snprintf(e->id, sizeof(e->id), "%s", res->id);
        snprintf(e->idem, sizeof(e->idem), "%s", res->idem);
    } else {
        assert_null(res);
    }
    g_enq_calls++;
    if (e->free_c != NULL) {
        pg_outbox_consumer_free(*e->free_c);
        *e->free_c = NULL;
    }
    if (e->done != NULL) {
        (*e->done)++;
    }
}

static pg_outbox_op_t
mkop(const char *identity, const char *target, json_t *state)
{
    pg_outbox_op_t op;

    memset(&op, 0, sizeof(op));
    op.identity = identity;
    op.target = target;
    op.kind = "upsert";
    op.state = state;
    return op;
}

/* Enqueue and run to completion; the status is not checked. */
static enq_res_t
enqueue_raw(fx_t *f, const pg_outbox_op_t *op)
{
    enq_res_t e;
    int done = 0;

    memset(&e, 0, sizeof(e));
    e.done = &done;
    assert_int_equal(pg_outbox_enqueue(f->r, op, 0, enq_cb, &e, NULL, NULL),
                     PG_OK);
    assert_int_equal(pg_loop_run(f->loop, &done, 3000), PG_OK);
    e.done = NULL;
    return e;
}

/* Enqueue and run to completion; must succeed. */
static enq_res_t
enqueue1(fx_t *f, const pg_outbox_op_t *op)
{
    enq_res_t e;
    int done = 0;
    char idem[PG_OUTBOX_IDEM_MAX + 1];

    memset(&e, 0, sizeof(e));
    e.done = &done;
    assert_int_equal(pg_outbox_enqueue(f->r, op, 0, enq_cb, &e, idem, NULL),
                     PG_OK);
    assert_int_equal(e.called, 0); /* never inside the call */
    assert_int_equal(pg_loop_run(f->loop, &done, 3000), PG_OK);
    assert_int_equal(e.st, PG_OK);
    assert_string_equal(e.idem, idem);
    e.done = NULL;
    return e;
}

/* ---- consumer handler ----------------------------------------------- */

#define MAXCALLS 32

typedef struct call {
    char id[PG_OUTBOX_ID_MAX + 1];
    char idem[PG_OUTBOX_IDEM_MAX + 1];
    char identity[64];
    char state[256];
    char last_error[128];
    unsigned attempt;
    int reclaimed;
    int own;
    int enq_seen;                  /* g_enq_calls when the handler ran */
    uint64_t at_ms;
} call_t;

typedef struct handler {
    int ncalls;
    call_t calls[MAXCALLS];
    /* results[i] for call i; beyond nresults: DONE */
    pg_outbox_result_t results[MAXCALLS];
    int nresults;
    const char *error;
    int hold;                      /* keep jobs, never finish */
    pg_outbox_job_t *held[MAXCALLS];
    int nheld;
} handler_t;

static void
handler_cb(void *arg, pg_outbox_job_t *job, const pg_outbox_entry_t *e)
{
    handler_t *h = arg;
    call_t *c;
    pg_outbox_result_t res = PG_OUTBOX_RESULT_DONE;

    assert_true(h->ncalls < MAXCALLS);
    c = &h->calls[h->ncalls];
    snprintf(c->id, sizeof(c->id), "%s", e->id);
    snprintf(c->idem, sizeof(c->idem), "%s", e->idem);
    snprintf(c->identity, sizeof(c->identity), "%s", e->identity);
    snprintf(c->state, sizeof(c->state), "%s", e->state);
    snprintf(c->last_error, sizeof(c->last_error), "%s", e->last_error);
    c->attempt = e->attempt;
    c->reclaimed = e->reclaimed;
    c->own = e->own;
    c->enq_seen = g_enq_calls;
    c->at_ms = pgt_now_ms();
    assert_true(e->created_ms > 0);
    if (h->hold) {
        h->held[h->nheld++] = job;
        h->ncalls++;
        return;
    }
    if (h->ncalls < h->nresults) {
        res = h->results[h->ncalls];
    }
    h->ncalls++;
    pg_outbox_job_done(job, res, res == PG_OUTBOX_RESULT_DONE ? NULL : h->error);
}

static pg_outbox_config_t
fast_cfg(const char *name)
{
    pg_outbox_config_t c;

    memset(&c, 0, sizeof(c));
    c.consumer = name;
    c.block_ms = 50;
    c.claim_idle_ms = 200;
    c.max_attempts = 4;
    c.backoff_base_ms = 80;
    c.backoff_max_ms = 400;
    c.status_ttl_s = 60;
    c.error_pause_ms = 50;
    return c;
}

/* Run until the consumer's stats satisfy done+dead >= n or ms passes. */
static void
run_until_finished(fx_t *f, pg_outbox_consumer_t *c, uint64_t n, unsigned ms)
{
    uint64_t end = pgt_now_ms() + ms;
    pg_outbox_stats_t s;

    for (;;) {
        pg_outbox_consumer_stats(c, &s);
        if (s.done + s.dead >= n || pgt_now_ms() >= end) {
            break;
        }
        spin(f, 10);
    }
    /* let the finish replies arrive */
    spin(f, 30);
}

/* ---- wait helper ---------------------------------------------------- */

typedef struct wait_res {
    int called;
    pg_status_t st;
    pg_outbox_state_t state;
    unsigned attempts;
    char error[256];
    uint64_t at_ms;
    int *done;
} wait_res_t;

static void
wait_cb(void *arg, pg_status_t st, const pg_outbox_status_t *s)
{
    wait_res_t *w = arg;

    w->called++;
    w->st = st;
    w->at_ms = pgt_now_ms();
    if (s != NULL) {
        w->state = s->state;
        w->attempts = s->attempts;
        snprintf(w->error, sizeof(w->error), "%s", s->error);
    }
    if (w->done != NULL) {
        *w->done = 1;
    }
}

/* ---- tests ---------------------------------------------------------- */

static void
test_idem_key(void **state)
{
    json_t *a = json_pack("{s:s,s:i}", "mail", "a@x", "n", 1);
    json_t *b = json_pack("{s:i,s:s}", "n", 1, "mail", "a@x");
    json_t *c = json_pack("{s:s,s:i}", "mail", "a@x", "n", 2);
    pg_outbox_op_t op;
    char k1[64], k2[64], k3[64], k4[PG_OUTBOX_IDEM_MAX + 1];

    (void)state;
    op = mkop("u1", "scim:hr", a);
    assert_int_equal(pg_outbox_idem(&op, k1, sizeof(k1)), PG_OK);
    assert_int_equal(strlen(k1), 43);
    op.state = b; /* same state, other key order: same key */
    assert_int_equal(pg_outbox_idem(&op, k2, sizeof(k2)), PG_OK);
    assert_string_equal(k1, k2);
    op.state = c; /* other state */
    assert_int_equal(pg_outbox_idem(&op, k3, sizeof(k3)), PG_OK);
    assert_string_not_equal(k1, k3);
    op.state = a;
    op.target = "scim:crm"; /* other target */
    assert_int_equal(pg_outbox_idem(&op, k3, sizeof(k3)), PG_OK);
    assert_string_not_equal(k1, k3);
    op.idem = "login:42";
    assert_int_equal(pg_outbox_idem(&op, k4, sizeof(k4)), PG_OK);
    assert_string_equal(k4, "login:42");
    op.idem = "bad key with spaces";
    assert_int_equal(pg_outbox_idem(&op, k4, sizeof(k4)), PG_ERR_INVALID);
    op.idem = NULL;
    op.identity = "";
    assert_int_equal(pg_outbox_idem(&op, k4, sizeof(k4)), PG_ERR_INVALID);
    op.identity = "u1";
    assert_int_equal(pg_outbox_idem(&op, k4, 10), PG_ERR_TOO_LARGE);
    json_decref(a);
    json_decref(b);
    json_decref(c);
}

/* Two gateways enqueue the same operations concurrently: one entry each. */
static void
test_enqueue_idempotent_concurrent(void **state)
{
    enum { N = 10 };
    fx_t f;
    json_t *st[N];
    enq_res_t ra[N], rb[N];
    int done = 0, i, created = 0;
    char buf[64];

    (void)state;
    flush(&g_srv);
    fx_open(&f, &g_srv);
    for (i = 0; i < N; i++) {
        pg_outbox_op_t op;
        char ident[16];

        snprintf(ident, sizeof(ident), "user%d", i);
        st[i] = json_pack("{s:s,s:[s]}", "mail", ident, "groups", "staff");
        op = mkop(ident, "scim:hr", st[i]);
        memset(&ra[i], 0, sizeof(ra[i]));
        memset(&rb[i], 0, sizeof(rb[i]));
        ra[i].done = rb[i].done = &done;
        /* Interleaved on two connections: both scripts race in Redis. */
        assert_int_equal(pg_outbox_enqueue(f.r, &op, 0, enq_cb, &ra[i], NULL,
                                           NULL), PG_OK);
        assert_int_equal(pg_outbox_enqueue(f.r2, &op, 0, enq_cb, &rb[i], NULL,
                                           NULL), PG_OK);
    }
    while (done < 2 * N) {
        spin(&f, 5);
    }
    for (i = 0; i < N; i++) {
        assert_int_equal(ra[i].st, PG_OK);
        assert_int_equal(rb[i].st, PG_OK);
        /* exactly one of the two created it; both see the same id */
        assert_int_equal(ra[i].created + rb[i].created, 1);
        assert_string_equal(ra[i].id, rb[i].id);
        assert_string_equal(ra[i].idem, rb[i].idem);
        created += ra[i].created + rb[i].created;
    }
    assert_int_equal(created, N);
    q(&g_srv, "XLEN pg:outbox", buf, sizeof(buf));
    assert_string_equal(buf, ":10");

    /* A third, later enqueue of the same op is also deduplicated. */
    {
        pg_outbox_op_t op = mkop("user3", "scim:hr", st[3]);
        enq_res_t e = enqueue1(&f, &op);
        assert_int_equal(e.created, 0);
        assert_string_equal(e.id, ra[3].id);
    }
    q(&g_srv, "XLEN pg:outbox", buf, sizeof(buf));
    assert_string_equal(buf, ":10");
    for (i = 0; i < N; i++) {
        json_decref(st[i]);
    }
    fx_close(&f);
}

/* Delivery, ack, status, and a login waiting for its own operation. */
static void
test_deliver_ack_wait(void **state)
{
    fx_t f;
    handler_t h;
    pg_outbox_config_t cfg = fast_cfg("w1");
    pg_outbox_consumer_t *c = NULL;
    pg_outbox_stats_t s;
    json_t *js = json_pack("{s:s}", "mail", "a@x");
    pg_outbox_op_t op = mkop("alice", "scim:hr", js);
    enq_res_t e;
    wait_res_t w, w2;
    int wdone = 0;
    char buf[128];
    uint64_t t0;

    (void)state;
    flush(&g_srv);
    fx_open(&f, &g_srv);
    memset(&h, 0, sizeof(h));
    e = enqueue1(&f, &op);
    assert_int_equal(e.created, 1);

    /* The login waits before any worker runs: nothing yet. */
    memset(&w, 0, sizeof(w));
    w.done = &wdone;
    t0 = pgt_now_ms();
    assert_int_equal(pg_outbox_wait(f.host, f.rw, e.idem, 2000, wait_cb, &w,
                                    NULL), PG_OK);
    spin(&f, 100);
    assert_int_equal(w.called, 0);

    /* A worker starts: delivered once, acked, and the waiter wakes up. */
    assert_int_equal(pg_outbox_consumer_new(f.host, f.rc, &cfg, handler_cb, &h,
                                            &c), PG_OK);
    assert_int_equal(pg_loop_run(f.loop, &wdone, 3000), PG_OK);
    assert_true(pgt_now_ms() - t0 < 1500);
    assert_int_equal(w.st, PG_OK);
    assert_int_equal(w.state, PG_OUTBOX_DONE);
    assert_int_equal(w.attempts, 1);
    assert_int_equal(h.ncalls, 1);
    assert_string_equal(h.calls[0].id, e.id);
    assert_string_equal(h.calls[0].idem, e.idem);
    assert_string_equal(h.calls[0].identity, "alice");
    assert_string_equal(h.calls[0].state, "{\"mail\":\"a@x\"}");
    assert_int_equal(h.calls[0].attempt, 0);
    assert_int_equal(h.calls[0].reclaimed, 0);

    spin(&f, 120); /* more cycles: never delivered again */
    assert_int_equal(h.ncalls, 1);
    pg_outbox_consumer_stats(c, &s);
    assert_int_equal(s.delivered, 1);
    assert_int_equal(s.done, 1);
    q(&g_srv, "XLEN pg:outbox", buf, sizeof(buf));
    assert_string_equal(buf, ":0");
    q(&g_srv, "XPENDING pg:outbox provgate", buf, sizeof(buf));
    assert_string_equal(buf, "*4"); /* summary array... */
    {
        char cnt[32];
        q(&g_srv, "EVAL \"return redis.call('XPENDING',KEYS[1],'provgate')[1]\" 1 pg:outbox",
          cnt, sizeof(cnt));
        assert_string_equal(cnt, ":0");
    }

    /* A waiter that starts after completion is answered at once. */
    memset(&w2, 0, sizeof(w2));
    wdone = 0;
    w2.done = &wdone;
    t0 = pgt_now_ms();
    assert_int_equal(pg_outbox_wait(f.host, f.rw, e.idem, 2000, wait_cb, &w2,
                                    NULL), PG_OK);
    assert_int_equal(pg_loop_run(f.loop, &wdone, 3000), PG_OK);
    assert_true(pgt_now_ms() - t0 < 500);
    assert_int_equal(w2.state, PG_OUTBOX_DONE);

    /* Re-enqueueing the completed op is deduplicated (no second apply). */
    e = enqueue1(&f, &op);
    assert_int_equal(e.created, 0);
    spin(&f, 150);
    assert_int_equal(h.ncalls, 1);

    pg_outbox_consumer_free(c);
    json_decref(js);
    fx_close(&f);
}

/* Number of entries pending in the group (XPENDING summary count). */
static long
pel_count(void)
{
    char cnt[32];

    q(&g_srv, "EVAL \"return redis.call('XPENDING',KEYS[1],'provgate')[1]\" 1 pg:outbox",
      cnt, sizeof(cnt));
    assert_int_equal(cnt[0], ':');
    return strtol(cnt + 1, NULL, 10);
}

/*
 * pg_outbox_op_t.own: with two consumers blocked in XREADGROUP, every
 * entry enqueued with own = A is delivered to A by the enqueue itself
 * (never to B), A's handler runs right after the enqueue callback, and
 * the finish goes over the enqueue's client (A's own client is blocked
 * for 3 s, the waiter is answered well before). With an undelivered entry
 * before it, an own enqueue is not delivered by the enqueue (the script
 * would take someone else's entry); both are read normally. A consumer
 * freed inside the enqueue callback leaves the entry pending.
 */
static void
test_own_delivery(void **state)
{
    fx_t f;
    handler_t ha, hb;
    pg_outbox_config_t ca = fast_cfg("a"), cb = fast_cfg("b");
    pg_outbox_consumer_t *a = NULL, *b = NULL;
    pg_outbox_stats_t s;
    char ident[32], buf[256];
    wait_res_t w;
    int i, wdone;

    (void)state;
    flush(&g_srv);
    fx_open(&f, &g_srv);
    memset(&ha, 0, sizeof(ha));
    memset(&hb, 0, sizeof(hb));
    ca.block_ms = cb.block_ms = 3000;
    assert_int_equal(pg_outbox_consumer_new(f.host, f.rc, &ca, handler_cb, &ha,
                                            &a), PG_OK);
    assert_int_equal(pg_outbox_consumer_new(f.host, f.rc2, &cb, handler_cb, &hb,
                                            &b), PG_OK);
    spin(&f, 200);   /* group created, both blocked in XREADGROUP */

    for (i = 0; i < 10; i++) {
        json_t *js = json_pack("{s:i}", "n", i);
        pg_outbox_op_t op;
        enq_res_t e;
        uint64_t t0 = pgt_now_ms();

        snprintf(ident, sizeof(ident), "own%d", i);
        op = mkop(ident, "scim:hr", js);
        op.own = a;
        e = enqueue1(&f, &op);
        assert_int_equal(e.created, 1);
        assert_int_equal(e.own, 1);
        /* handled in the same turn, after the enqueue callback */
        assert_int_equal(ha.ncalls, i + 1);
        assert_string_equal(ha.calls[i].id, e.id);
        assert_string_equal(ha.calls[i].identity, ident);
        assert_int_equal(ha.calls[i].own, 1);
        assert_int_equal(ha.calls[i].enq_seen, g_enq_calls);
        memset(&w, 0, sizeof(w));
        wdone = 0;
        w.done = &wdone;
        assert_int_equal(pg_outbox_wait(f.host, f.rw, e.idem, 2000, wait_cb,
                                        &w, NULL), PG_OK);
        assert_int_equal(pg_loop_run(f.loop, &wdone, 3000), PG_OK);
        assert_int_equal(w.state, PG_OUTBOX_DONE);
        assert_true(pgt_now_ms() - t0 < 1000);
        json_decref(js);
    }
    spin(&f, 100);
    assert_int_equal(hb.ncalls, 0);
    assert_int_equal(ha.ncalls, 10);
    pg_outbox_consumer_stats(a, &s);
    assert_int_equal(s.own, 10);
    assert_int_equal(s.delivered, 10);
    assert_int_equal(s.done, 10);
    assert_int_equal(s.lost_race, 0);
    q(&g_srv, "XLEN pg:outbox", buf, sizeof(buf));
    assert_string_equal(buf, ":0");
    assert_int_equal(pel_count(), 0);

    /* An own job applied for longer than claim_idle_ms: the consumer's
     * loop keeps running (own jobs are not part of a batch) and its
     * XAUTOCLAIM sees the entry idle, but never hands it out again while
     * the job runs. */
    {
        json_t *js = json_pack("{s:s}", "n", "slow");
        pg_outbox_op_t op = mkop("own-slow", "scim:hr", js);
        enq_res_t e;

        pg_outbox_consumer_free(a);
        pg_outbox_consumer_free(b);
        a = b = NULL;
        pg_redis_free(f.rc);
        pg_redis_free(f.rc2);
        f.rc = client(&f, &g_srv);
        f.rc2 = client(&f, &g_srv);
        ca.block_ms = 50;          /* claim_idle_ms 200: many cycles */
        ha.hold = 1;
        assert_int_equal(pg_outbox_consumer_new(f.host, f.rc, &ca, handler_cb,
                                                &ha, &a), PG_OK);
        spin(&f, 100);
        op.own = a;
        e = enqueue1(&f, &op);
        assert_int_equal(e.own, 1);
        assert_int_equal(ha.ncalls, 11);
        spin(&f, 900);             /* > 4 x claim_idle_ms */
        assert_int_equal(ha.ncalls, 11);
        assert_int_equal(pel_count(), 1);
        ha.hold = 0;
        pg_outbox_job_done(ha.held[--ha.nheld], PG_OUTBOX_RESULT_DONE, NULL);
        spin(&f, 200);
        assert_int_equal(pel_count(), 0);
        assert_int_equal(ha.ncalls, 11);
        pg_outbox_consumer_stats(a, &s);
        assert_int_equal(s.reclaimed, 0);
        assert_int_equal(s.done, 1);
        json_decref(js);
        pg_outbox_consumer_free(a);
        a = NULL;
        ha.ncalls = 10;            /* the numbering below continues at 10 */
    }

    /* A backlog: an entry nobody has read yet. The own enqueue after it
     * must not deliver anything itself. */
    pg_outbox_consumer_free(a);
    pg_outbox_consumer_free(b);
    a = b = NULL;
    /* their XREADGROUP BLOCKs would still take entries: new connections */
    pg_redis_free(f.rc);
    pg_redis_free(f.rc2);
    f.rc = client(&f, &g_srv);
    f.rc2 = client(&f, &g_srv);
    spin(&f, 50);
    q(&g_srv, "XADD pg:outbox * idem backlog1 identity x target scim:hr "
      "kind upsert state {} attempt 0 last_error \"\" created_ms 1", buf,
      sizeof(buf));
    ca.block_ms = 50;
    assert_int_equal(pg_outbox_consumer_new(f.host, f.rc, &ca, handler_cb, &ha,
                                            &a), PG_OK);
    {
        json_t *js = json_pack("{s:s}", "n", "after-backlog");
        pg_outbox_op_t op = mkop("own-late", "scim:hr", js);
        enq_res_t e;

        op.own = a;
        e = enqueue1(&f, &op);
        assert_int_equal(e.created, 1);
        assert_int_equal(e.own, 0);
        run_until_finished(&f, a, 2, 3000);
        assert_int_equal(ha.ncalls, 12);
        assert_string_equal(ha.calls[10].idem, "backlog1");
        assert_int_equal(ha.calls[10].own, 0);
        assert_string_equal(ha.calls[11].identity, "own-late");
        assert_int_equal(ha.calls[11].own, 0);
        json_decref(js);
    }
    pg_outbox_consumer_stats(a, &s);
    assert_int_equal(s.own, 0);
    assert_int_equal(s.done, 2);

    /* The consumer is freed inside the enqueue callback: no handler call,
     * the entry stays pending (in a's list) for a reclaim. */
    {
        json_t *js = json_pack("{s:s}", "n", "freed");
        pg_outbox_op_t op = mkop("own-freed", "scim:hr", js);
        enq_res_t e;
        int done = 0;

        pg_outbox_consumer_free(a);
        ca.block_ms = 3000;
        a = NULL;
        pg_redis_free(f.rc);
        f.rc = client(&f, &g_srv);
        assert_int_equal(pg_outbox_consumer_new(f.host, f.rc, &ca, handler_cb,
                                                &ha, &a), PG_OK);
        spin(&f, 100);
        op.own = a;
        memset(&e, 0, sizeof(e));
        e.done = &done;
        e.free_c = &a;
        assert_int_equal(pg_outbox_enqueue(f.r, &op, 0, enq_cb, &e, NULL,
                                           NULL), PG_OK);
        assert_int_equal(pg_loop_run(f.loop, &done, 3000), PG_OK);
        assert_int_equal(e.own, 1);
        assert_null(a);
        spin(&f, 100);
        assert_int_equal(ha.ncalls, 12);
        assert_int_equal(pel_count(), 1);
        json_decref(js);
    }
    fx_close(&f);
}

/*
 * "live:" keys (release_when_done) deduplicate only while the operation is
 * pending: a concurrent enqueue joins it, a later one (after done) makes a
 * new operation. Every terminal outcome lands on pg:outbox:events.
 */
static void
test_live_key_and_events(void **state)
{
    fx_t f;
    handler_t h;
    pg_outbox_config_t cfg = fast_cfg("w1");
    pg_outbox_consumer_t *c = NULL;
    json_t *js = json_pack("{s:s}", "grp", "eng");
    pg_outbox_op_t op = mkop("bob", "scim:app", js);
    enq_res_t e1, e2, e3;
    char buf[256], idem[PG_OUTBOX_IDEM_MAX + 1];

    (void)state;
    flush(&g_srv);
    fx_open(&f, &g_srv);
    memset(&h, 0, sizeof(h));
    op.release_when_done = 1;
    assert_int_equal(pg_outbox_idem(&op, idem, sizeof(idem)), PG_OK);
    assert_memory_equal(idem, "live:", 5);
    assert_int_equal(strlen(idem), 5 + 43);

    e1 = enqueue1(&f, &op);
    e2 = enqueue1(&f, &op);           /* while pending: joins */
    assert_int_equal(e1.created, 1);
    assert_int_equal(e2.created, 0);
    assert_string_equal(e1.id, e2.id);
    assert_string_equal(e1.idem, idem);

    assert_int_equal(pg_outbox_consumer_new(f.host, f.rc, &cfg, handler_cb, &h,
                                            &c), PG_OK);
    spin(&f, 300);
    assert_int_equal(h.ncalls, 1);
    /* released: the key is gone, and the outcome is on the events stream */
    snprintf(buf, sizeof(buf), "EXISTS pg:outbox:key:%s", idem);
    {
        char out[32];
        q(&g_srv, buf, out, sizeof(out));
        assert_string_equal(out, ":0");
    }
    {
        char out[32], cmd[512];

        snprintf(cmd, sizeof(cmd),
                 "EVAL \"local r = redis.call('XRANGE', KEYS[1], '-', '+') "
                 "if #r == 1 and r[1][2][2] == ARGV[1] and r[1][2][4] == "
                 "'done' then return 1 end return 0\" 1 pg:outbox:events %s",
                 idem);
        q(&g_srv, cmd, out, sizeof(out));
        assert_string_equal(out, ":1");
    }

    /* the same desired state later: a new operation, applied again */
    e3 = enqueue1(&f, &op);
    assert_int_equal(e3.created, 1);
    assert_string_not_equal(e3.id, e1.id);
    spin(&f, 300);
    assert_int_equal(h.ncalls, 2);

    /* a plain key is NOT released (HR event ids stay deduplicated) */
    op.release_when_done = 0;
    e1 = enqueue1(&f, &op);
    spin(&f, 300);
    assert_int_equal(h.ncalls, 3);
    e2 = enqueue1(&f, &op);
    assert_int_equal(e2.created, 0);
    spin(&f, 200);
    assert_int_equal(h.ncalls, 3);

    pg_outbox_consumer_free(c);
    json_decref(js);
    fx_close(&f);
}

/* Retry with exponential backoff; attempts counted; then success. */
static void
test_retry_backoff(void **state)
{
    fx_t f;
    handler_t h;
    pg_outbox_config_t cfg = fast_cfg("w1");
    pg_outbox_consumer_t *c = NULL;
    pg_outbox_stats_t s;
    json_t *js = json_pack("{s:s}", "mail", "b@x");
    pg_outbox_op_t op = mkop("bob", "scim:hr", js);
    enq_res_t e;
    wait_res_t w;
    int wdone = 0;
    char buf[64];

    (void)state;
    flush(&g_srv);
    fx_open(&f, &g_srv);
    memset(&h, 0, sizeof(h));
    cfg.max_attempts = 5;
    cfg.backoff_base_ms = 100;
    cfg.backoff_max_ms = 1000;
    h.results[0] = PG_OUTBOX_RESULT_RETRY;
    h.results[1] = PG_OUTBOX_RESULT_RETRY;
    h.results[2] = PG_OUTBOX_RESULT_RETRY;
    h.nresults = 3;
    h.error = "HTTP 503";
    e = enqueue1(&f, &op);

    memset(&w, 0, sizeof(w));
    w.done = &wdone;
    assert_int_equal(pg_outbox_wait(f.host, f.rw, e.idem, 3000, wait_cb, &w,
                                    NULL), PG_OK);
    assert_int_equal(pg_outbox_consumer_new(f.host, f.rc, &cfg, handler_cb, &h,
                                            &c), PG_OK);
    assert_int_equal(pg_loop_run(f.loop, &wdone, 4000), PG_OK);
    assert_int_equal(w.st, PG_OK);
    assert_int_equal(w.state, PG_OUTBOX_DONE);
    assert_int_equal(w.attempts, 4);

    assert_int_equal(h.ncalls, 4);
    assert_int_equal(h.calls[0].attempt, 0);
    assert_string_equal(h.calls[0].last_error, "");
    assert_int_equal(h.calls[1].attempt, 1);
    assert_string_equal(h.calls[1].last_error, "HTTP 503");
    assert_int_equal(h.calls[2].attempt, 2);
    assert_int_equal(h.calls[3].attempt, 3);
    /* Same operation throughout (idempotency key kept, new stream ids). */
    assert_string_equal(h.calls[1].idem, e.idem);
    assert_string_equal(h.calls[2].idem, e.idem);
    assert_string_not_equal(h.calls[1].id, h.calls[0].id);
    /* Backoff doubles: d = 100, 200, 400 with jitter in [d/2, d], plus
     * at most one BLOCK (50 ms) until the due retry is moved back. */
    assert_true(h.calls[1].at_ms - h.calls[0].at_ms >= 50);
    assert_true(h.calls[2].at_ms - h.calls[1].at_ms >= 100);
    assert_true(h.calls[3].at_ms - h.calls[2].at_ms >= 200);
    assert_true(h.calls[3].at_ms - h.calls[2].at_ms < 400 + 300);

    pg_outbox_consumer_stats(c, &s);
    assert_int_equal(s.retried, 3);
    assert_int_equal(s.done, 1);
    assert_int_equal(s.promoted, 3);
    spin(&f, 50);
    q(&g_srv, "ZCARD pg:outbox:delayed", buf, sizeof(buf));
    assert_string_equal(buf, ":0");
    q(&g_srv, "XLEN pg:outbox", buf, sizeof(buf));
    assert_string_equal(buf, ":0");
    pg_outbox_consumer_free(c);
    json_decref(js);
    fx_close(&f);
}

typedef struct list_res {
    int called;
    pg_status_t st;
    size_t n;
    char ids[8][PG_OUTBOX_ID_MAX + 1];
    char reasons[8][128];
    char idems[8][PG_OUTBOX_IDEM_MAX + 1];
    char identity[8][64];
    unsigned attempt[8];
    int done;
} list_res_t;

static void
list_cb(void *arg, pg_status_t st, const pg_outbox_entry_t *ents, size_t n)
{
    list_res_t *l = arg;
    size_t i;

    l->called++;
    l->st = st;
    l->n = n;
    for (i = 0; i < n && i < 8; i++) {
        snprintf(l->ids[i], sizeof(l->ids[i]), "%s", ents[i].id);
        snprintf(l->reasons[i], sizeof(l->reasons[i]), "%s", ents[i].reason);
        snprintf(l->idems[i], sizeof(l->idems[i]), "%s", ents[i].idem);
        snprintf(l->identity[i], sizeof(l->identity[i]), "%s",
                 ents[i].identity);
        l->attempt[i] = ents[i].attempt;
        assert_true(ents[i].dead_ms > 0);
        assert_true(ents[i].orig_id[0] != '\0');
    }
    l->done = 1;
}

static list_res_t
dead_list(fx_t *f)
{
    list_res_t l;

    memset(&l, 0, sizeof(l));
    assert_int_equal(pg_outbox_dead_list(f->r, NULL, 100, list_cb, &l, NULL),
                     PG_OK);
    assert_int_equal(pg_loop_run(f->loop, &l.done, 3000), PG_OK);
    assert_int_equal(l.st, PG_OK);
    return l;
}

typedef struct move_res {
    int called;
    pg_status_t st;
    char from[PG_OUTBOX_ID_MAX + 1], to[PG_OUTBOX_ID_MAX + 1];
    char idem[PG_OUTBOX_IDEM_MAX + 1], reason[128];
    int done;
} move_res_t;

static void
move_cb(void *arg, pg_status_t st, const pg_outbox_move_t *m)
{
    move_res_t *r = arg;

    r->called++;
    r->st = st;
    if (m != NULL) {
        snprintf(r->from, sizeof(r->from), "%s", m->from_id);
        snprintf(r->to, sizeof(r->to), "%s", m->to_id);
        snprintf(r->idem, sizeof(r->idem), "%s", m->idem);
        snprintf(r->reason, sizeof(r->reason), "%s", m->reason);
    }
    r->done = 1;
}

/* Dead letters: after N attempts, FAIL at once; list, retry, discard. */
static void
test_dead_letter(void **state)
{
    fx_t f;
    handler_t h;
    pg_outbox_config_t cfg = fast_cfg("w1");
    pg_outbox_consumer_t *c = NULL;
    pg_outbox_stats_t s;
    json_t *js1 = json_pack("{s:s}", "mail", "c@x");
    json_t *js2 = json_pack("{s:s}", "mail", "d@x");
    pg_outbox_op_t op1 = mkop("carol", "scim:hr", js1);
    pg_outbox_op_t op2 = mkop("dave", "scim:crm", js2);
    enq_res_t e1, e2;
    wait_res_t w;
    list_res_t l;
    move_res_t m;
    int wdone = 0, i;
    char buf[64];

    (void)state;
    flush(&g_srv);
    fx_open(&f, &g_srv);
    cfg.max_attempts = 3;
    cfg.backoff_base_ms = 20;
    cfg.backoff_max_ms = 40;
    memset(&h, 0, sizeof(h));
    /* carol: always retry; dave (2nd delivered): fail permanently. */
    e1 = enqueue1(&f, &op1);
    e2 = enqueue1(&f, &op2);
    h.results[0] = PG_OUTBOX_RESULT_RETRY;
    h.results[1] = PG_OUTBOX_RESULT_FAIL;
    h.results[2] = PG_OUTBOX_RESULT_RETRY;
    h.results[3] = PG_OUTBOX_RESULT_RETRY;
    h.nresults = 4;
    h.error = "boom";
    memset(&w, 0, sizeof(w));
    w.done = &wdone;
    assert_int_equal(pg_outbox_wait(f.host, f.rw, e1.idem, 3000, wait_cb, &w,
                                    NULL), PG_OK);
    assert_int_equal(pg_outbox_consumer_new(f.host, f.rc, &cfg, handler_cb, &h,
                                            &c), PG_OK);
    assert_int_equal(pg_loop_run(f.loop, &wdone, 4000), PG_OK);
    assert_int_equal(w.state, PG_OUTBOX_FAILED);
    assert_int_equal(w.attempts, 3);
    assert_string_equal(w.error, "max attempts (3): boom");
    run_until_finished(&f, c, 2, 2000);
    assert_int_equal(h.ncalls, 4); /* carol 3x, dave 1x: never more */
    spin(&f, 150);
    assert_int_equal(h.ncalls, 4);
    pg_outbox_consumer_stats(c, &s);
    assert_int_equal(s.dead, 2);
    assert_int_equal(s.retried, 2);

    l = dead_list(&f);
    assert_int_equal(l.n, 2);
    for (i = 0; i < 2; i++) {
        if (strcmp(l.idems[i], e1.idem) == 0) {
            assert_string_equal(l.reasons[i], "max attempts (3): boom");
            assert_string_equal(l.identity[i], "carol");
            assert_int_equal(l.attempt[i], 3);
        } else {
            assert_string_equal(l.idems[i], e2.idem);
            assert_string_equal(l.reasons[i], "boom");
            assert_int_equal(l.attempt[i], 1);
        }
    }
    q(&g_srv, "XLEN pg:outbox", buf, sizeof(buf));
    assert_string_equal(buf, ":0");

    /* Retry carol's dead letter: back in the outbox with attempt 0 and
     * applied (handler now says DONE). */
    i = strcmp(l.idems[0], e1.idem) == 0 ? 0 : 1;
    memset(&m, 0, sizeof(m));
    assert_int_equal(pg_outbox_dead_retry(f.r, l.ids[i], 0, move_cb, &m, NULL),
                     PG_OK);
    assert_int_equal(pg_loop_run(f.loop, &m.done, 3000), PG_OK);
    assert_int_equal(m.st, PG_OK);
    assert_string_equal(m.from, l.ids[i]);
    assert_string_equal(m.idem, e1.idem);
    assert_string_equal(m.reason, "max attempts (3): boom");
    assert_true(m.to[0] != '\0');
    run_until_finished(&f, c, 3, 2000);
    assert_int_equal(h.ncalls, 5);
    assert_string_equal(h.calls[4].id, m.to);
    assert_int_equal(h.calls[4].attempt, 0);
    assert_string_equal(h.calls[4].last_error, "max attempts (3): boom");

    /* Retrying it again: gone from the dead letters. */
    memset(&m, 0, sizeof(m));
    assert_int_equal(pg_outbox_dead_retry(f.r, l.ids[i], 0, move_cb, &m, NULL),
                     PG_OK);
    assert_int_equal(pg_loop_run(f.loop, &m.done, 3000), PG_OK);
    assert_int_equal(m.st, PG_ERR_NOT_FOUND);

    /* dave: a new enqueue is allowed after dead-lettering (new entry), so
     * retrying the old dead letter now conflicts and keeps it. */
    pg_outbox_consumer_free(c);
    c = NULL;
    {
        enq_res_t again = enqueue1(&f, &op2);
        assert_int_equal(again.created, 1);
        memset(&m, 0, sizeof(m));
        assert_int_equal(pg_outbox_dead_retry(f.r, l.ids[1 - i], 0, move_cb,
                                              &m, NULL), PG_OK);
        assert_int_equal(pg_loop_run(f.loop, &m.done, 3000), PG_OK);
        assert_int_equal(m.st, PG_ERR_CONFLICT);
        assert_string_equal(m.to, again.id);
    }
    /* Discard it: returns what was discarded, for the audit log. */
    memset(&m, 0, sizeof(m));
    assert_int_equal(pg_outbox_dead_discard(f.r, l.ids[1 - i], move_cb, &m,
                                            NULL), PG_OK);
    assert_int_equal(pg_loop_run(f.loop, &m.done, 3000), PG_OK);
    assert_int_equal(m.st, PG_OK);
    assert_string_equal(m.idem, e2.idem);
    assert_string_equal(m.reason, "boom");
    assert_string_equal(m.to, "");
    l = dead_list(&f);
    assert_int_equal(l.n, 0);
    memset(&m, 0, sizeof(m));
    assert_int_equal(pg_outbox_dead_discard(f.r, l.ids[0][0] ? l.ids[0] : "1-0",
                                            move_cb, &m, NULL), PG_OK);
    assert_int_equal(pg_loop_run(f.loop, &m.done, 3000), PG_OK);
    assert_int_equal(m.st, PG_ERR_NOT_FOUND);

    json_decref(js1);
    json_decref(js2);
    fx_close(&f);
}

/* A consumer dies holding entries (never acks): another reclaims them. */
static void
test_reclaim_dead_consumer(void **state)
{
    fx_t f;
    handler_t ha, hb;
    pg_outbox_config_t ca = fast_cfg("worker-a"), cb = fast_cfg("worker-b");
    pg_outbox_consumer_t *a = NULL, *b = NULL;
    pg_outbox_stats_t s;
    json_t *js = json_pack("{s:s}", "mail", "e@x");
    pg_outbox_op_t op = mkop("erin", "scim:hr", js);
    enq_res_t e;
    int i;
    char buf[64];

    (void)state;
    flush(&g_srv);
    fx_open(&f, &g_srv);
    memset(&ha, 0, sizeof(ha));
    memset(&hb, 0, sizeof(hb));
    ha.hold = 1;
    e = enqueue1(&f, &op);
    assert_int_equal(pg_outbox_consumer_new(f.host, f.rc, &ca, handler_cb, &ha,
                                            &a), PG_OK);
    for (i = 0; i < 100 && ha.ncalls == 0; i++) {
        spin(&f, 10);
    }
    assert_int_equal(ha.ncalls, 1);
    /* A "dies": it stops without ever finishing the job. */
    pg_outbox_consumer_free(a);

    /* B starts at once: the entry is not idle long enough yet. */
    assert_int_equal(pg_outbox_consumer_new(f.host, f.rc2, &cb, handler_cb, &hb,
                                            &b), PG_OK);
    spin(&f, 100);
    assert_int_equal(hb.ncalls, 0);
    /* After claim_idle_ms (200) it is reclaimed and applied once. */
    run_until_finished(&f, b, 1, 2000);
    assert_int_equal(hb.ncalls, 1);
    assert_string_equal(hb.calls[0].id, e.id);
    assert_int_equal(hb.calls[0].reclaimed, 1);
    pg_outbox_consumer_stats(b, &s);
    assert_int_equal(s.reclaimed, 1);
    assert_int_equal(s.done, 1);

    /* The dead worker's late job_done does not touch Redis (orphan). */
    pg_outbox_job_done(ha.held[0], PG_OUTBOX_RESULT_FAIL, "late");
    spin(&f, 150);
    assert_int_equal(hb.ncalls, 1);
    q(&g_srv, "XLEN pg:outbox:dead", buf, sizeof(buf));
    assert_string_equal(buf, ":0");
    q(&g_srv, "XLEN pg:outbox", buf, sizeof(buf));
    assert_string_equal(buf, ":0");
    pg_outbox_consumer_free(b);
    json_decref(js);
    fx_close(&f);
}

/* Remove the AOF directory redis-server 7 creates (pgt_redis_stop only
 * removes the files it knows). */
static void
rm_aof(const pgt_redis_t *srv)
{
    char d[400], p[700];
    DIR *dir;
    struct dirent *de;

    snprintf(d, sizeof(d), "%s/appendonlydir", srv->dir);
    dir = opendir(d);
    if (dir == NULL) {
        return;
    }
    while ((de = readdir(dir)) != NULL) {
        if (de->d_name[0] == '.') {
            continue;
        }
        snprintf(p, sizeof(p), "%s/%s", d, de->d_name);
        unlink(p);
    }
    closedir(dir);
    rmdir(d);
}

/* The outbox survives a kill -9 of Redis with AOF; delivered exactly once. */
static void
test_aof_restart(void **state)
{
    static const char *const extra[] = {
        "--appendonly", "yes", "--appendfsync", "always", NULL
    };
    fx_t f;
    handler_t h;
    pg_outbox_config_t cfg = fast_cfg("w1");
    pg_outbox_consumer_t *c = NULL;
    json_t *js = json_pack("{s:s}", "mail", "f@x");
    pg_outbox_op_t op = mkop("frank", "scim:hr", js);
    enq_res_t e, e2;
    char buf[64];

    (void)state;
    assert_int_equal(pgt_redis_start(&g_aof, extra), 0);
    fx_open(&f, &g_aof);
    memset(&h, 0, sizeof(h));
    e = enqueue1(&f, &op);
    assert_int_equal(e.created, 1);

    pgt_redis_kill(&g_aof);
    assert_int_equal(pgt_redis_restart(&g_aof), 0);
    q(&g_aof, "XLEN pg:outbox", buf, sizeof(buf));
    assert_string_equal(buf, ":1");
    /* The idempotency key survived too: no duplicate after the restart
     * (the first command may see the dropped connection; retry once). */
    e2 = enqueue_raw(&f, &op);
    if (e2.st != PG_OK) {
        assert_int_equal(e2.st, PG_ERR_REDIS);
        e2 = enqueue1(&f, &op);
    }
    assert_int_equal(e2.created, 0);
    assert_string_equal(e2.id, e.id);

    assert_int_equal(pg_outbox_consumer_new(f.host, f.rc, &cfg, handler_cb, &h,
                                            &c), PG_OK);
    run_until_finished(&f, c, 1, 2000);
    assert_int_equal(h.ncalls, 1);
    assert_string_equal(h.calls[0].id, e.id);
    pg_outbox_consumer_free(c);

    /* Acked before the crash: never delivered again after a restart. */
    pgt_redis_kill(&g_aof);
    assert_int_equal(pgt_redis_restart(&g_aof), 0);
    q(&g_aof, "XLEN pg:outbox", buf, sizeof(buf));
    assert_string_equal(buf, ":0");
    assert_int_equal(pg_outbox_consumer_new(f.host, f.rc, &cfg, handler_cb, &h,
                                            &c), PG_OK);
    spin(&f, 200);
    assert_int_equal(h.ncalls, 1);
    pg_outbox_consumer_free(c);

    fx_close(&f);
    json_decref(js);
}

/* Runs even when test_aof_restart fails, so no temp dir is left. */
static int
teardown_aof(void **state)
{
    (void)state;
    pgt_redis_kill(&g_aof);
    rm_aof(&g_aof);
    pgt_redis_stop(&g_aof);
    return 0;
}

typedef struct rate_res {
    int called;
    pg_status_t st;
    int allowed;
    uint64_t wait_ms;
    unsigned remaining;
    int *done;
} rate_res_t;

static void
rate_cb(void *arg, pg_status_t st, const pg_outbox_rate_t *r)
{
    rate_res_t *x = arg;

    x->called++;
    x->st = st;
    if (r != NULL) {
        x->allowed = r->allowed;
        x->wait_ms = r->wait_ms;
        x->remaining = r->remaining;
    }
    if (x->done != NULL) {
        (*x->done)++;
    }
}

/* Fire n takes alternating over two clients; returns how many allowed. */
static int
burst(fx_t *f, const char *target, int n, rate_res_t *res)
{
    int done = 0, i, allowed = 0;

    for (i = 0; i < n; i++) {
        memset(&res[i], 0, sizeof(res[i]));
        res[i].done = &done;
        assert_int_equal(pg_outbox_rate_take(i % 2 ? f->r2 : f->r, target, 10,
                                             5, 1, rate_cb, &res[i], NULL),
                         PG_OK);
    }
    while (done < n) {
        spin(f, 5);
    }
    for (i = 0; i < n; i++) {
        assert_int_equal(res[i].called, 1);
        assert_int_equal(res[i].st, PG_OK);
        if (res[i].allowed) {
            allowed++;
        } else {
            /* missing (at most) one token at 5/s: <= 200 ms */
            assert_true(res[i].wait_ms > 0);
            assert_true(res[i].wait_ms <= 200);
        }
    }
    return allowed;
}

/* Token bucket shared by two processes: capacity 10, refill 5/s. */
static void
test_rate_limit(void **state)
{
    fx_t f;
    static rate_res_t res[100];
    rate_res_t one;
    int allowed, done = 0;
    uint64_t t0;

    (void)state;
    flush(&g_srv);
    fx_open(&f, &g_srv);
    t0 = pgt_now_ms();
    allowed = burst(&f, "scim:hr", 100, res);
    /* 10 from the full bucket, plus at most what refilled meanwhile. */
    assert_true(allowed >= 10);
    assert_true(allowed <= 10 + 1 + (int)((pgt_now_ms() - t0) * 5 / 1000));
    {
        unsigned best = 0;
        int i;
        for (i = 0; i < 100; i++) {
            if (res[i].allowed && res[i].remaining > best) {
                best = res[i].remaining;
            }
        }
        assert_int_equal(best, 9); /* the first take left 9 */
    }

    /* Another target has its own bucket. */
    assert_int_equal(burst(&f, "scim:crm", 12, res) >= 10, 1);

    /* 450 ms later about two tokens came back (5/s). */
    spin(&f, 450);
    t0 = pgt_now_ms();
    allowed = burst(&f, "scim:hr", 20, res);
    assert_true(allowed >= 2);
    assert_true(allowed <= 3 + (int)((pgt_now_ms() - t0) * 5 / 1000));

    /* Taking more than one token; invalid requests. */
    memset(&one, 0, sizeof(one));
    one.done = &done;
    assert_int_equal(pg_outbox_rate_take(f.r, "x", 10, 5, 10, rate_cb, &one,
                                         NULL), PG_OK);
    while (!done) {
        spin(&f, 5);
    }
    assert_int_equal(one.allowed, 1);
    assert_int_equal(one.remaining, 0);
    done = 0;
    assert_int_equal(pg_outbox_rate_take(f.r, "x", 10, 5, 10, rate_cb, &one,
                                         NULL), PG_OK);
    while (!done) {
        spin(&f, 5);
    }
    assert_int_equal(one.allowed, 0);
    assert_true(one.wait_ms > 1800 && one.wait_ms <= 2000);
    assert_int_equal(pg_outbox_rate_take(f.r, "x", 10, 5, 11, rate_cb, &one,
                                         NULL), PG_ERR_INVALID);
    assert_int_equal(pg_outbox_rate_take(f.r, "x", 10, 0, 1, rate_cb, &one,
                                         NULL), PG_ERR_INVALID);
    assert_int_equal(pg_outbox_rate_take(f.r, "", 10, 5, 1, rate_cb, &one,
                                         NULL), PG_ERR_INVALID);
    fx_close(&f);
}

/* Waiting without a completion times out on budget; cancel is silent. */
static void
test_wait_timeout_cancel(void **state)
{
    fx_t f;
    wait_res_t w, w2;
    pg_outbox_req_t *req = NULL;
    enq_res_t e;
    int done = 0;
    uint64_t t0;

    (void)state;
    flush(&g_srv);
    fx_open(&f, &g_srv);
    memset(&w, 0, sizeof(w));
    w.done = &done;
    t0 = pgt_now_ms();
    assert_int_equal(pg_outbox_wait(f.host, f.rw, "nobody", 200, wait_cb, &w,
                                    NULL), PG_OK);
    assert_int_equal(pg_loop_run(f.loop, &done, 3000), PG_OK);
    assert_int_equal(w.st, PG_ERR_TIMEOUT);
    assert_int_equal(w.state, PG_OUTBOX_PENDING);
    assert_true(w.at_ms - t0 >= 190);
    assert_true(w.at_ms - t0 < 800);

    /* Cancelled wait and cancelled enqueue: callbacks never run. */
    memset(&w2, 0, sizeof(w2));
    assert_int_equal(pg_outbox_wait(f.host, f.rw, "nobody", 100, wait_cb, &w2,
                                    &req), PG_OK);
    assert_non_null(req);
    pg_outbox_cancel(req);
    {
        json_t *js = json_pack("{}");
        pg_outbox_op_t op = mkop("x", "y", js);
        memset(&e, 0, sizeof(e));
        assert_int_equal(pg_outbox_enqueue(f.r, &op, 0, enq_cb, &e, NULL,
                                           &req), PG_OK);
        pg_outbox_cancel(req);
        json_decref(js);
    }
    spin(&f, 150);
    assert_int_equal(w2.called, 0);
    assert_int_equal(e.called, 0);

    /* Redis down: the error reaches the callbacks, asynchronously. */
    {
        pg_redis_config_t dc;
        pg_redis_t *down = NULL;
        json_t *js = json_pack("{}");
        pg_outbox_op_t op = mkop("x", "y", js);

        memset(&dc, 0, sizeof(dc));
        dc.port = pgt_free_port();
        assert_int_equal(pg_redis_new(f.host, &dc, &down), PG_OK);
        memset(&e, 0, sizeof(e));
        done = 0;
        e.done = &done;
        assert_int_equal(pg_outbox_enqueue(down, &op, 0, enq_cb, &e, NULL,
                                           NULL), PG_OK);
        assert_int_equal(e.called, 0);
        assert_int_equal(pg_loop_run(f.loop, &done, 2000), PG_OK);
        assert_int_equal(e.st, PG_ERR_REDIS);
        pg_redis_free(down);
        json_decref(js);
    }
    fx_close(&f);
}

/* Frees its consumer from inside the first handler call. */
typedef struct freeing_handler {
    pg_outbox_consumer_t *c;
    int ncalls;
    pg_outbox_job_t *job;
} freeing_handler_t;

static void
freeing_cb(void *arg, pg_outbox_job_t *job, const pg_outbox_entry_t *e)
{
    freeing_handler_t *h = arg;

    (void)e;
    h->ncalls++;
    h->job = job;
    pg_outbox_consumer_free(h->c);
    /* The job stays valid after the free; finishing it is a no-op. */
    pg_outbox_job_done(job, PG_OUTBOX_RESULT_DONE, NULL);
}

/* Freeing the consumer inside its handler, with more of the batch left. */
static void
test_free_inside_handler(void **state)
{
    fx_t f;
    freeing_handler_t h;
    pg_outbox_config_t cfg = fast_cfg("w1");
    json_t *js1 = json_pack("{s:i}", "n", 1), *js2 = json_pack("{s:i}", "n", 2);
    pg_outbox_op_t op1 = mkop("g1", "t", js1), op2 = mkop("g2", "t", js2);
    char buf[64];
    int i;

    (void)state;
    flush(&g_srv);
    fx_open(&f, &g_srv);
    (void)enqueue1(&f, &op1);
    (void)enqueue1(&f, &op2);
    memset(&h, 0, sizeof(h));
    assert_int_equal(pg_outbox_consumer_new(f.host, f.rc, &cfg, freeing_cb, &h,
                                            &h.c), PG_OK);
    for (i = 0; i < 100 && h.ncalls == 0; i++) {
        spin(&f, 10);
    }
    spin(&f, 100);
    /* Only the first entry reached the handler; nothing was acked. */
    assert_int_equal(h.ncalls, 1);
    q(&g_srv, "XLEN pg:outbox", buf, sizeof(buf));
    assert_string_equal(buf, ":2");
    q(&g_srv, "EVAL \"return redis.call('XPENDING',KEYS[1],'provgate')[1]\" 1 pg:outbox",
      buf, sizeof(buf));
    assert_string_equal(buf, ":2");
    json_decref(js1);
    json_decref(js2);
    fx_close(&f);
}

static void
test_bad_args(void **state)
{
    fx_t f;
    pg_outbox_config_t cfg;
    pg_outbox_consumer_t *c = (pg_outbox_consumer_t *)&cfg;
    json_t *js = json_pack("{}");
    pg_outbox_op_t op = mkop("x", "y", js);
    enq_res_t e;
    char idem[PG_OUTBOX_IDEM_MAX + 1];
    char *big;
    json_t *bigj;

    (void)state;
    fx_open(&f, &g_srv);
    memset(&cfg, 0, sizeof(cfg));
    assert_int_equal(pg_outbox_consumer_new(f.host, f.rc, &cfg, handler_cb,
                                            NULL, &c), PG_ERR_INVALID);
    assert_null(c);
    cfg.consumer = "has space";
    assert_int_equal(pg_outbox_consumer_new(f.host, f.rc, &cfg, handler_cb,
                                            NULL, &c), PG_ERR_INVALID);
    op.kind = NULL;
    assert_int_equal(pg_outbox_enqueue(f.r, &op, 0, enq_cb, &e, idem, NULL),
                     PG_ERR_INVALID);
    assert_string_equal(idem, "");
    op.kind = "upsert";
    op.state = NULL;
    assert_int_equal(pg_outbox_enqueue(f.r, &op, 0, enq_cb, &e, idem, NULL),
                     PG_ERR_INVALID);
    /* Desired state over the cap. */
    big = malloc(PG_OUTBOX_STATE_MAX + 10);
    assert_non_null(big);
    memset(big, 'a', PG_OUTBOX_STATE_MAX + 9);
    big[PG_OUTBOX_STATE_MAX + 9] = '\0';
    bigj = json_string(big);
    op.state = bigj;
    assert_int_equal(pg_outbox_enqueue(f.r, &op, 0, enq_cb, &e, idem, NULL),
                     PG_ERR_TOO_LARGE);
    json_decref(bigj);
    free(big);
    assert_int_equal(pg_outbox_wait(f.host, f.rw, "bad key", 100, wait_cb,
                                    NULL, NULL), PG_ERR_INVALID);
    assert_int_equal(pg_outbox_wait(f.host, f.rw, "k", 0, wait_cb, NULL, NULL),
                     PG_ERR_INVALID);
    assert_int_equal(pg_outbox_dead_retry(f.r, "notanid", 0, move_cb, NULL,
                                          NULL), PG_ERR_INVALID);
    assert_int_equal(pg_outbox_dead_discard(f.r, "1-2-3", move_cb, NULL, NULL),
                     PG_ERR_INVALID);
    assert_int_equal(pg_outbox_dead_list(f.r, "x", 10, list_cb, NULL, NULL),
                     PG_ERR_INVALID);
    assert_int_equal(pg_outbox_dead_list(f.r, NULL, 0, list_cb, NULL, NULL),
                     PG_ERR_INVALID);
    spin(&f, 20);
    json_decref(js);
    fx_close(&f);
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
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idem_key),
        cmocka_unit_test(test_enqueue_idempotent_concurrent),
        cmocka_unit_test(test_deliver_ack_wait),
        cmocka_unit_test(test_live_key_and_events),
        cmocka_unit_test(test_own_delivery),
        cmocka_unit_test(test_retry_backoff),
        cmocka_unit_test(test_dead_letter),
        cmocka_unit_test(test_reclaim_dead_consumer),
        cmocka_unit_test_teardown(test_aof_restart, teardown_aof),
        cmocka_unit_test(test_rate_limit),
        cmocka_unit_test(test_wait_timeout_cancel),
        cmocka_unit_test(test_free_inside_handler),
        cmocka_unit_test(test_bad_args),
    };

    return cmocka_run_group_tests(tests, setup_server, teardown_server);
}
