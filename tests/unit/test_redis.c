/* Unit tests: src/event/redis.c against a private redis-server. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>
#include "provgate/loop.h"
#include "provgate/redis.h"
#include "helpers/procs.h"

static pgt_redis_t g_srv;      /* shared server for non-destructive tests */
static int g_in_command;       /* set around pg_redis_command() calls */

typedef struct res {
    int called;
    int called_inside;         /* cb ran while pg_redis_command was active */
    pg_status_t st;
    int type;
    long long integer;
    char str[256];
    size_t len;
    uint64_t at_ms;
    int *done;                 /* set when called */
} res_t;

static void
res_cb(void *arg, pg_status_t st, const struct redisReply *reply)
{
    res_t *r = arg;

    r->called++;
    r->called_inside |= g_in_command;
    r->st = st;
    r->at_ms = pgt_now_ms();
    r->type = -1;
    if (reply != NULL) {
        r->type = reply->type;
        r->integer = reply->integer;
        if (reply->str != NULL) {
            r->len = reply->len < sizeof(r->str) ? reply->len : sizeof(r->str) - 1;
            memcpy(r->str, reply->str, r->len);
            r->str[r->len] = '\0';
        }
    } else {
        assert_int_not_equal(st, PG_OK);
    }
    if (r->done != NULL) {
        *r->done = 1;
    }
}

/* Issue a command with argv strings (NUL-terminated). */
static pg_status_t
cmd(pg_redis_t *r, res_t *res, unsigned timeout_ms, pg_redis_op_t **op,
    int argc, const char **argv)
{
    pg_status_t st;

    g_in_command = 1;
    st = pg_redis_command(r, argc, argv, NULL, timeout_ms, res_cb, res, op);
    g_in_command = 0;
    return st;
}

static pg_redis_config_t
cfg_for(const pgt_redis_t *srv)
{
    pg_redis_config_t c;

    memset(&c, 0, sizeof(c));
    c.host = "127.0.0.1";
    c.port = srv->port;
    c.connect_timeout_ms = 1000;
    c.command_timeout_ms = 1000;
    return c;
}

typedef struct fixture {
    pg_loop_t *loop;
    const pg_host_t *host;
    pg_redis_t *r;
} fixture_t;

static void
fx_open(fixture_t *fx, const pg_redis_config_t *c)
{
    assert_int_equal(pg_loop_new(&fx->loop), PG_OK);
    pg_loop_set_log_level(fx->loop, PG_LOG_ERROR);
    fx->host = pg_loop_host(fx->loop);
    assert_int_equal(pg_redis_new(fx->host, c, &fx->r), PG_OK);
}

static void
fx_close(fixture_t *fx)
{
    pg_redis_free(fx->r);
    pg_loop_free(fx->loop);
}

/* Run one command to completion; returns its result. */
static res_t
run1(fixture_t *fx, unsigned timeout_ms, int argc, const char **argv)
{
    res_t res;
    int done = 0;

    memset(&res, 0, sizeof(res));
    res.done = &done;
    assert_int_equal(cmd(fx->r, &res, timeout_ms, NULL, argc, argv), PG_OK);
    assert_int_equal(res.called, 0);
    assert_int_equal(pg_loop_run(fx->loop, &done, 5000), PG_OK);
    assert_int_equal(res.called, 1);
    assert_int_equal(res.called_inside, 0);
    return res;
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

static void
test_set_get_roundtrip(void **state)
{
    fixture_t fx;
    pg_redis_config_t c = cfg_for(&g_srv);
    const char *set_argv[] = {"SET", "pg:test:k1", "v\0x"};
    const size_t set_len[] = {3, 10, 3};
    const char *get_argv[] = {"GET", "pg:test:k1"};
    res_t res;
    int done = 0;

    (void)state;
    fx_open(&fx, &c);
    assert_string_equal(pg_redis_prefix(fx.r), "pg:");
    assert_int_equal(pg_redis_connected(fx.r), 0); /* lazy */

    /* Binary-safe value through argvlen. */
    memset(&res, 0, sizeof(res));
    res.done = &done;
    assert_int_equal(pg_redis_command(fx.r, 3, set_argv, set_len, 0, res_cb,
                                      &res, NULL), PG_OK);
    assert_int_equal(res.called, 0);
    assert_int_equal(pg_loop_run(fx.loop, &done, 5000), PG_OK);
    assert_int_equal(res.st, PG_OK);
    assert_int_equal(res.type, REDIS_REPLY_STATUS);
    assert_string_equal(res.str, "OK");
    assert_int_equal(pg_redis_connected(fx.r), 1);

    res = run1(&fx, 0, 2, get_argv);
    assert_int_equal(res.st, PG_OK);
    assert_int_equal(res.type, REDIS_REPLY_STRING);
    assert_int_equal(res.len, 3);
    assert_memory_equal(res.str, "v\0x", 3);

    /* Missing key: nil reply with PG_OK. */
    {
        const char *argv[] = {"GET", "pg:test:missing"};
        res = run1(&fx, 0, 2, argv);
        assert_int_equal(res.st, PG_OK);
        assert_int_equal(res.type, REDIS_REPLY_NIL);
    }
    fx_close(&fx);
}

static void
test_pipeline_1000(void **state)
{
    enum { N = 1000 };
    fixture_t fx;
    pg_redis_config_t c = cfg_for(&g_srv);
    static res_t res[N];
    const char *del[] = {"DEL", "pg:test:ctr"};
    const char *incr[] = {"INCR", "pg:test:ctr"};
    int done = 0, i;

    (void)state;
    fx_open(&fx, &c);
    (void)run1(&fx, 0, 2, del);
    memset(res, 0, sizeof(res));
    for (i = 0; i < N; i++) {
        assert_int_equal(cmd(fx.r, &res[i], 5000, NULL, 2, incr), PG_OK);
    }
    res[N - 1].done = &done;
    for (i = 0; i < N; i++) {
        assert_int_equal(res[i].called, 0);
    }
    assert_int_equal(pg_loop_run(fx.loop, &done, 10000), PG_OK);
    for (i = 0; i < N; i++) {
        assert_int_equal(res[i].called, 1);
        assert_int_equal(res[i].st, PG_OK);
        assert_int_equal(res[i].type, REDIS_REPLY_INTEGER);
        /* INCR results prove both execution and callback order. */
        assert_int_equal(res[i].integer, i + 1);
        if (i > 0) {
            assert_true(res[i].at_ms >= res[i - 1].at_ms);
        }
    }
    fx_close(&fx);
}

static void
test_error_reply_is_ok(void **state)
{
    fixture_t fx;
    pg_redis_config_t c = cfg_for(&g_srv);
    const char *set[] = {"SET", "pg:test:str", "notanumber"};
    const char *incr[] = {"INCR", "pg:test:str"};
    const char *bogus[] = {"NOSUCHCOMMAND", "x"};
    res_t res;

    (void)state;
    fx_open(&fx, &c);
    (void)run1(&fx, 0, 3, set);
    res = run1(&fx, 0, 2, incr);
    assert_int_equal(res.st, PG_OK);
    assert_int_equal(res.type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(res.str, "not an integer"));
    res = run1(&fx, 0, 2, bogus);
    assert_int_equal(res.st, PG_OK);
    assert_int_equal(res.type, REDIS_REPLY_ERROR);
    /* The connection survives error replies. */
    assert_int_equal(pg_redis_connected(fx.r), 1);
    fx_close(&fx);
}

static void
test_timeout_then_recovery(void **state)
{
    pgt_redis_t srv;
    fixture_t fx;
    pg_redis_config_t c;
    const char *ping[] = {"PING"};
    res_t a, b, res;
    int done = 0;
    uint64_t t0;

    (void)state;
    assert_int_equal(pgt_redis_start(&srv, NULL), 0);
    c = cfg_for(&srv);
    fx_open(&fx, &c);
    res = run1(&fx, 0, 1, ping);
    assert_int_equal(res.st, PG_OK);
    assert_string_equal(res.str, "PONG");

    pgt_redis_pause(&srv);
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    b.done = &done;
    t0 = pgt_now_ms();
    assert_int_equal(cmd(fx.r, &a, 200, NULL, 1, ping), PG_OK);
    assert_int_equal(cmd(fx.r, &b, 5000, NULL, 1, ping), PG_OK);
    assert_int_equal(pg_loop_run(fx.loop, &done, 3000), PG_OK);
    /* a times out quickly; b is failed with the dropped connection. */
    assert_int_equal(a.called, 1);
    assert_int_equal(a.st, PG_ERR_TIMEOUT);
    assert_true(a.at_ms - t0 >= 190);
    assert_true(a.at_ms - t0 < 1000);
    assert_int_equal(b.called, 1);
    assert_int_equal(b.st, PG_ERR_REDIS);
    assert_true(b.at_ms - t0 < 1000);
    assert_int_equal(pg_redis_connected(fx.r), 0);
    assert_int_equal(a.called_inside + b.called_inside, 0);

    /* Still stopped: the next command reconnects and times out again. */
    res = run1(&fx, 150, 1, ping);
    assert_int_equal(res.st, PG_ERR_TIMEOUT);

    pgt_redis_resume(&srv);
    t0 = pgt_now_ms();
    res = run1(&fx, 1000, 1, ping);
    assert_int_equal(res.st, PG_OK);
    assert_string_equal(res.str, "PONG");
    assert_true(pgt_now_ms() - t0 < 1000);
    assert_int_equal(pg_redis_connected(fx.r), 1);
    fx_close(&fx);
    pgt_redis_stop(&srv);
}

static void
test_server_down_async(void **state)
{
    fixture_t fx;
    pg_redis_config_t c;
    const char *ping[] = {"PING"};
    res_t a, b;
    int done = 0;
    uint64_t t0;

    (void)state;
    memset(&c, 0, sizeof(c));
    c.host = "127.0.0.1";
    c.port = pgt_free_port(); /* nobody listens */
    assert_true(c.port > 0);
    fx_open(&fx, &c);
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    t0 = pgt_now_ms();
    assert_int_equal(cmd(fx.r, &a, 0, NULL, 1, ping), PG_OK);
    /* Within the back-off window: also queued for async failure. */
    assert_int_equal(cmd(fx.r, &b, 0, NULL, 1, ping), PG_OK);
    assert_int_equal(a.called, 0);
    assert_int_equal(b.called, 0);
    b.done = &done;
    assert_int_equal(pg_loop_run(fx.loop, &done, 2000), PG_OK);
    assert_int_equal(a.called, 1);
    assert_int_equal(a.st, PG_ERR_REDIS);
    assert_int_equal(b.called, 1);
    assert_int_equal(b.st, PG_ERR_REDIS);
    assert_int_equal(a.called_inside + b.called_inside, 0);
    assert_true(a.at_ms <= b.at_ms);      /* in order */
    assert_true(b.at_ms - t0 < 200);      /* fast, not a timeout */
    assert_int_equal(pg_redis_connected(fx.r), 0);
    fx_close(&fx);
}

static void
test_reconnect_after_restart(void **state)
{
    pgt_redis_t srv;
    fixture_t fx;
    pg_redis_config_t c;
    const char *set[] = {"SET", "pg:test:r", "1"};
    const char *ping[] = {"PING"};
    res_t res;
    uint64_t t0;
    int ok = 0, attempts = 0, failures = 0;

    (void)state;
    assert_int_equal(pgt_redis_start(&srv, NULL), 0);
    c = cfg_for(&srv);
    fx_open(&fx, &c);
    res = run1(&fx, 0, 3, set);
    assert_int_equal(res.st, PG_OK);

    pgt_redis_kill(&srv);
    /* Lost connection: fails with PG_ERR_REDIS (EOF or refused). */
    res = run1(&fx, 0, 1, ping);
    assert_int_equal(res.st, PG_ERR_REDIS);
    res = run1(&fx, 0, 1, ping);
    assert_int_equal(res.st, PG_ERR_REDIS);

    assert_int_equal(pgt_redis_restart(&srv), 0);
    t0 = pgt_now_ms();
    while (!ok && pgt_now_ms() - t0 < 3000) {
        res = run1(&fx, 500, 1, ping);
        attempts++;
        if (res.st == PG_OK) {
            ok = 1;
        } else {
            int d = 0;
            failures++;
            assert_int_equal(res.st, PG_ERR_REDIS);
            assert_int_equal(pg_loop_run(fx.loop, &d, 20), PG_ERR_TIMEOUT);
        }
    }
    assert_true(ok);
    /* Back-off is ~250 ms: recovery must be quick. */
    assert_true(pgt_now_ms() - t0 < 1000);
    assert_string_equal(res.str, "PONG");
    assert_int_equal(pg_redis_connected(fx.r), 1);
    fx_close(&fx);
    pgt_redis_stop(&srv);
}

/* Cancels another op from inside its callback. */
typedef struct canceller {
    res_t res;
    pg_redis_op_t *victim;
} canceller_t;

static void
cancel_other_cb(void *arg, pg_status_t st, const struct redisReply *reply)
{
    canceller_t *c = arg;

    res_cb(&c->res, st, reply);
    pg_redis_cancel(c->victim);
}

static void
test_cancel(void **state)
{
    fixture_t fx;
    pg_redis_config_t c = cfg_for(&g_srv);
    const char *ping[] = {"PING"};
    res_t victim, after, v2;
    canceller_t killer;
    pg_redis_op_t *op = NULL;
    int done = 0;

    (void)state;
    fx_open(&fx, &c);

    /* Cancel right after issuing; a later command still completes. */
    memset(&victim, 0, sizeof(victim));
    memset(&after, 0, sizeof(after));
    after.done = &done;
    assert_int_equal(cmd(fx.r, &victim, 0, &op, 1, ping), PG_OK);
    assert_non_null(op);
    pg_redis_cancel(op);
    assert_int_equal(cmd(fx.r, &after, 0, NULL, 1, ping), PG_OK);
    assert_int_equal(pg_loop_run(fx.loop, &done, 5000), PG_OK);
    assert_int_equal(after.st, PG_OK);
    assert_int_equal(victim.called, 0);

    /* Cancel a pipelined op from inside the previous op's callback (its
     * reply is typically in the same read buffer). */
    memset(&killer, 0, sizeof(killer));
    memset(&v2, 0, sizeof(v2));
    memset(&after, 0, sizeof(after));
    done = 0;
    after.done = &done;
    g_in_command = 1;
    assert_int_equal(pg_redis_command(fx.r, 1, ping, NULL, 0, cancel_other_cb,
                                      &killer, NULL), PG_OK);
    g_in_command = 0;
    assert_int_equal(cmd(fx.r, &v2, 0, &killer.victim, 1, ping), PG_OK);
    assert_int_equal(cmd(fx.r, &after, 0, NULL, 1, ping), PG_OK);
    assert_int_equal(pg_loop_run(fx.loop, &done, 5000), PG_OK);
    assert_int_equal(killer.res.called, 1);
    assert_int_equal(v2.called, 0);
    assert_int_equal(after.called, 1);
    assert_int_equal(after.st, PG_OK);

    /* Let more loop time pass: the cancelled ones never show up. */
    done = 0;
    assert_int_equal(pg_loop_run(fx.loop, &done, 100), PG_ERR_TIMEOUT);
    assert_int_equal(victim.called, 0);
    assert_int_equal(v2.called, 0);
    fx_close(&fx);

    /* Cancel an op queued for asynchronous failure (server down). */
    {
        pg_redis_config_t dc;
        res_t q, q2;

        memset(&dc, 0, sizeof(dc));
        dc.port = pgt_free_port();
        fx_open(&fx, &dc);
        memset(&q, 0, sizeof(q));
        memset(&q2, 0, sizeof(q2));
        done = 0;
        q2.done = &done;
        assert_int_equal(cmd(fx.r, &q, 0, &op, 1, ping), PG_OK);
        assert_int_equal(cmd(fx.r, &q2, 0, NULL, 1, ping), PG_OK);
        pg_redis_cancel(op);
        assert_int_equal(pg_loop_run(fx.loop, &done, 2000), PG_OK);
        assert_int_equal(q.called, 0);
        assert_int_equal(q2.st, PG_ERR_REDIS);
        fx_close(&fx);
    }
}

/* Frees the client from inside a callback. */
typedef struct freer {
    res_t res;
    pg_redis_t *r;
} freer_t;

static void
free_client_cb(void *arg, pg_status_t st, const struct redisReply *reply)
{
    freer_t *f = arg;
    const char *ping[] = {"PING"};
    res_t dummy;

    res_cb(&f->res, st, reply);
    pg_redis_free(f->r);
    /* After free started, new commands are refused (no callback). */
    memset(&dummy, 0, sizeof(dummy));
    assert_int_equal(pg_redis_command(f->r, 1, ping, NULL, 0, res_cb, &dummy,
                                      NULL), PG_ERR_CANCELLED);
}

static void
test_free_with_pending(void **state)
{
    fixture_t fx;
    pg_redis_config_t c = cfg_for(&g_srv);
    const char *ping[] = {"PING"};
    res_t res[10];
    freer_t f;
    int i, done = 0;

    (void)state;
    /* Free right after queueing: every cb is CANCELLED, inside free. */
    fx_open(&fx, &c);
    memset(res, 0, sizeof(res));
    for (i = 0; i < 10; i++) {
        assert_int_equal(cmd(fx.r, &res[i], 0, NULL, 1, ping), PG_OK);
    }
    pg_redis_free(fx.r);
    for (i = 0; i < 10; i++) {
        assert_int_equal(res[i].called, 1);
        assert_int_equal(res[i].st, PG_ERR_CANCELLED);
    }
    /* Nothing fires afterwards (the loop still runs its own timers). */
    assert_int_equal(pg_loop_run(fx.loop, &done, 100), PG_ERR_TIMEOUT);
    for (i = 0; i < 10; i++) {
        assert_int_equal(res[i].called, 1);
    }
    pg_loop_free(fx.loop);

    /* Free from inside the first callback while others are pending. */
    fx_open(&fx, &c);
    memset(&f, 0, sizeof(f));
    memset(res, 0, sizeof(res));
    f.r = fx.r;
    f.res.done = &done;
    done = 0;
    assert_int_equal(pg_redis_command(fx.r, 1, ping, NULL, 0, free_client_cb,
                                      &f, NULL), PG_OK);
    for (i = 0; i < 10; i++) {
        assert_int_equal(cmd(fx.r, &res[i], 0, NULL, 1, ping), PG_OK);
    }
    assert_int_equal(pg_loop_run(fx.loop, &done, 5000), PG_OK);
    assert_int_equal(f.res.st, PG_OK);
    for (i = 0; i < 10; i++) {
        assert_int_equal(res[i].called, 1);
        assert_int_equal(res[i].st, PG_ERR_CANCELLED);
    }
    done = 0;
    assert_int_equal(pg_loop_run(fx.loop, &done, 100), PG_ERR_TIMEOUT);
    pg_loop_free(fx.loop);
}

static void
test_auth_select_unix(void **state)
{
    static const char *const extra[] = {
        "--requirepass", "s3cret",
        "--user", "alice", "on", ">alicepw", "~*", "&*", "+@all",
        NULL
    };
    pgt_redis_t srv;
    fixture_t fx;
    pg_redis_config_t c;
    const char *set[] = {"SET", "pg:test:db", "three"};
    const char *get[] = {"GET", "pg:test:db"};
    const char *ping[] = {"PING"};
    res_t res;

    (void)state;
    assert_int_equal(pgt_redis_start(&srv, extra), 0);

    /* Default user via requirepass, db 3. */
    c = cfg_for(&srv);
    c.password = "s3cret";
    c.db = 3;
    fx_open(&fx, &c);
    res = run1(&fx, 0, 3, set);
    assert_int_equal(res.st, PG_OK);
    assert_string_equal(res.str, "OK");
    res = run1(&fx, 0, 2, get);
    assert_string_equal(res.str, "three");
    fx_close(&fx);

    /* ACL user, db 0: the key is not there. */
    c = cfg_for(&srv);
    c.username = "alice";
    c.password = "alicepw";
    fx_open(&fx, &c);
    res = run1(&fx, 0, 2, get);
    assert_int_equal(res.st, PG_OK);
    assert_int_equal(res.type, REDIS_REPLY_NIL);
    fx_close(&fx);

    /* Unix socket, db 3. */
    c = cfg_for(&srv);
    c.unix_path = srv.sock;
    c.password = "s3cret";
    c.db = 3;
    fx_open(&fx, &c);
    res = run1(&fx, 0, 2, get);
    assert_int_equal(res.st, PG_OK);
    assert_string_equal(res.str, "three");
    fx_close(&fx);

    /* Wrong password: the handshake fails, commands fail with REDIS. */
    c = cfg_for(&srv);
    c.password = "wrong";
    fx_open(&fx, &c);
    res = run1(&fx, 0, 1, ping);
    assert_int_equal(res.st, PG_ERR_REDIS);
    assert_int_equal(pg_redis_connected(fx.r), 0);
    fx_close(&fx);

    /* No password at all: the server's error reply is passed through. */
    c = cfg_for(&srv);
    fx_open(&fx, &c);
    res = run1(&fx, 0, 2, get);
    assert_int_equal(res.st, PG_OK);
    assert_int_equal(res.type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(res.str, "NOAUTH"));
    fx_close(&fx);

    /* Connect timeout covers the handshake: stopped server, AUTH pending. */
    pgt_redis_pause(&srv);
    c = cfg_for(&srv);
    c.password = "s3cret";
    c.connect_timeout_ms = 200;
    c.command_timeout_ms = 5000;
    fx_open(&fx, &c);
    {
        uint64_t t0 = pgt_now_ms();
        res = run1(&fx, 0, 1, ping);
        assert_int_equal(res.st, PG_ERR_REDIS);
        assert_true(res.at_ms - t0 >= 190);
        assert_true(res.at_ms - t0 < 1500);
    }
    fx_close(&fx);
    pgt_redis_resume(&srv);
    pgt_redis_stop(&srv);
}

/* Calls of a command in INFO commandstats ("cmdstat_<name>:calls=N"). */
static long
cmd_calls(const char *name)
{
    const char *argv[] = {"INFO", "commandstats"};
    redisContext *rc = redisConnect("127.0.0.1", g_srv.port);
    redisReply *rep;
    char pat[64];
    const char *p;
    long n = -1;

    assert_non_null(rc);
    assert_int_equal(rc->err, 0);
    rep = redisCommandArgv(rc, 2, argv, NULL);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    snprintf(pat, sizeof(pat), "cmdstat_%s:calls=", name);
    p = strstr(rep->str, pat);
    n = p != NULL ? strtol(p + strlen(pat), NULL, 10) : 0;
    freeReplyObject(rep);
    redisFree(rc);
    return n;
}

/*
 * EVAL goes as EVALSHA after its first use on a connection; after SCRIPT
 * FLUSH the NOSCRIPT reply is answered by sending EVAL again (the caller
 * sees the script's result, never the error); a script error is still
 * delivered; a cancelled EVALSHA frees its fallback copy (ASan).
 */
static void
test_evalsha_noscript(void **state)
{
    fixture_t fx;
    pg_redis_config_t c = cfg_for(&g_srv);
    const char *ev1[] = {"EVAL", "return ARGV[1] .. KEYS[1]", "1", "k", "a"};
    const char *ev2[] = {"EVAL", "return ARGV[1] .. KEYS[1]", "1", "k", "b"};
    const char *bad[] = {"EVAL", "return redis.call('NOSUCHCMD')", "0"};
    const char *flush[] = {"SCRIPT", "FLUSH"};
    long eval0, sha0;
    res_t res, res2;
    int done = 0;
    pg_redis_op_t *op = NULL;

    (void)state;
    eval0 = cmd_calls("eval");
    sha0 = cmd_calls("evalsha");
    fx_open(&fx, &c);

    res = run1(&fx, 0, 5, ev1);
    assert_int_equal(res.type, REDIS_REPLY_STRING);
    assert_string_equal(res.str, "ak");
    res = run1(&fx, 0, 5, ev2);
    assert_int_equal(res.type, REDIS_REPLY_STRING);
    assert_string_equal(res.str, "bk");
    res = run1(&fx, 0, 5, ev1);
    assert_string_equal(res.str, "ak");
    assert_int_equal(cmd_calls("eval") - eval0, 1);
    assert_int_equal(cmd_calls("evalsha") - sha0, 2);
    assert_int_equal(pg_redis_noscript_count(fx.r), 0);

    /* The script cache is emptied: the next call still gets its result. */
    res = run1(&fx, 0, 2, flush);
    assert_int_equal(res.type, REDIS_REPLY_STATUS);
    res = run1(&fx, 0, 5, ev2);
    assert_int_equal(res.st, PG_OK);
    assert_int_equal(res.type, REDIS_REPLY_STRING);
    assert_string_equal(res.str, "bk");
    assert_int_equal(pg_redis_noscript_count(fx.r), 1);
    assert_int_equal(cmd_calls("eval") - eval0, 2);
    assert_int_equal(cmd_calls("evalsha") - sha0, 3);
    /* loaded again: EVALSHA works without a fallback */
    res = run1(&fx, 0, 5, ev1);
    assert_string_equal(res.str, "ak");
    assert_int_equal(pg_redis_noscript_count(fx.r), 1);
    assert_int_equal(cmd_calls("evalsha") - sha0, 4);

    /* Two EVALSHAs pipelined after a flush: both fall back, in order. */
    res = run1(&fx, 0, 2, flush);
    memset(&res, 0, sizeof(res));
    memset(&res2, 0, sizeof(res2));
    res2.done = &done;
    assert_int_equal(cmd(fx.r, &res, 0, NULL, 5, ev1), PG_OK);
    assert_int_equal(cmd(fx.r, &res2, 0, NULL, 5, ev2), PG_OK);
    assert_int_equal(pg_loop_run(fx.loop, &done, 5000), PG_OK);
    assert_int_equal(res.called, 1);
    assert_string_equal(res.str, "ak");
    assert_string_equal(res2.str, "bk");
    assert_true(res.at_ms <= res2.at_ms);
    assert_int_equal(pg_redis_noscript_count(fx.r), 3);

    /* A script error is the caller's, also through EVALSHA. */
    res = run1(&fx, 0, 3, bad);
    assert_int_equal(res.type, REDIS_REPLY_ERROR);
    res = run1(&fx, 0, 3, bad);
    assert_int_equal(res.type, REDIS_REPLY_ERROR);
    assert_null(strstr(res.str, "NOSCRIPT"));

    /* Cancelled while in flight as EVALSHA (after a flush, so its reply
     * is a NOSCRIPT that must not be resent): no callback, no leak. */
    res = run1(&fx, 0, 2, flush);
    memset(&res, 0, sizeof(res));
    assert_int_equal(cmd(fx.r, &res, 0, &op, 5, ev1), PG_OK);
    pg_redis_cancel(op);
    res2 = run1(&fx, 0, 5, ev2);   /* also flushed: falls back */
    assert_string_equal(res2.str, "bk");
    assert_int_equal(res.called, 0);
    fx_close(&fx);
}

static void
test_bad_args(void **state)
{
    pg_loop_t *l;
    pg_redis_t *r = NULL;
    pg_redis_config_t c;
    const char *argv[] = {"PING", NULL};
    res_t res;

    (void)state;
    assert_int_equal(pg_loop_new(&l), PG_OK);
    memset(&c, 0, sizeof(c));
    c.port = 70000;
    assert_int_equal(pg_redis_new(pg_loop_host(l), &c, &r), PG_ERR_INVALID);
    assert_null(r);
    memset(&c, 0, sizeof(c));
    c.username = "u"; /* no password */
    assert_int_equal(pg_redis_new(pg_loop_host(l), &c, &r), PG_ERR_INVALID);
    memset(&c, 0, sizeof(c));
    c.key_prefix = "app:";
    assert_int_equal(pg_redis_new(pg_loop_host(l), &c, &r), PG_OK);
    assert_string_equal(pg_redis_prefix(r), "app:");
    memset(&res, 0, sizeof(res));
    assert_int_equal(pg_redis_command(r, 0, argv, NULL, 0, res_cb, &res, NULL),
                     PG_ERR_INVALID);
    assert_int_equal(pg_redis_command(r, 2, argv, NULL, 0, res_cb, &res, NULL),
                     PG_ERR_INVALID);
    assert_int_equal(pg_redis_command(r, 1, argv, NULL, 0, NULL, &res, NULL),
                     PG_ERR_INVALID);
    assert_int_equal(res.called, 0);
    pg_redis_free(r);
    pg_loop_free(l);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_get_roundtrip),
        cmocka_unit_test(test_pipeline_1000),
        cmocka_unit_test(test_error_reply_is_ok),
        cmocka_unit_test(test_timeout_then_recovery),
        cmocka_unit_test(test_server_down_async),
        cmocka_unit_test(test_reconnect_after_restart),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_free_with_pending),
        cmocka_unit_test(test_auth_select_unix),
        cmocka_unit_test(test_evalsha_noscript),
        cmocka_unit_test(test_bad_args),
    };

    return cmocka_run_group_tests(tests, setup_server, teardown_server);
}
