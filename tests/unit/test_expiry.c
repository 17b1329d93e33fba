/* Unit tests: src/sidecar/expiry.c (decisions, and the sweep against a
 * private redis-server). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <hiredis.h>
#include <jansson.h>
#include "provgate/audit.h"
#include "provgate/config.h"
#include "provgate/expiry.h"
#include "provgate/loop.h"
#include "provgate/redis.h"
#include "helpers/procs.h"

static pgt_redis_t g_srv;

/* A configuration with two targets: "app" (session end, disable, grace
 * 60 s) and "wiki" (remove_jit, grace 0, inactivity 100 s). */
static pg_target_cfg_t g_targets[2];
static pg_config_t g_cfg;

static void
cfg_reset(void)
{
    memset(g_targets, 0, sizeof(g_targets));
    memset(&g_cfg, 0, sizeof(g_cfg));
    g_targets[0].name = (char *) "app";
    g_targets[0].deprov_action = PG_DEPROV_DISABLE;
    g_targets[0].deprov_grace_s = 60;
    g_targets[1].name = (char *) "wiki";
    g_targets[1].deprov_action = PG_DEPROV_REMOVE_JIT;
    g_targets[1].deprov_grace_s = 0;
    g_targets[1].inactivity_s = 100;
    g_cfg.targets = g_targets;
    g_cfg.ntargets = 2;
    g_cfg.expiry_sweep_s = 60;
    g_cfg.outbox.dedup_ttl_s = 600;
}

static json_t *
fields(const char *json)
{
    json_error_t e;
    json_t *f = json_loads(json, 0, &e);

    assert_non_null(f);
    return f;
}

static json_t *
decide(const char *json, long live, int64_t now, int64_t *due)
{
    json_t *f = fields(json), *a = NULL;

    assert_int_equal(pg_expiry_decide(&g_cfg, f, live, now, &a, due), PG_OK);
    json_decref(f);
    assert_true(json_is_array(a));
    return a;
}

static const char *
sget(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));

    assert_non_null(v);
    return v;
}

/* ---- decisions ------------------------------------------------------ */

static void
test_session_end_disable(void **state)
{
    const char *f = "{\"acct:app\": \"A1\", \"ents:app\": "
                    "\"[{\\\"type\\\":\\\"group\\\",\\\"value\\\":\\\"staff\\\"}]\", "
                    "\"jit_at:app\": \"100\", \"last_session_end\": \"200\"}";
    json_t *a, *x;
    int64_t due = 0;

    (void) state;
    cfg_reset();
    /* within the grace period: nothing yet, due at end + grace */
    a = decide(f, 0, 259, &due);
    assert_int_equal(json_array_size(a), 0);
    assert_int_equal(due, 260);
    json_decref(a);
    /* grace passed: disable, remembered as deprov_at:app */
    a = decide(f, 0, 260, &due);
    assert_int_equal(json_array_size(a), 1);
    x = json_array_get(a, 0);
    assert_string_equal(sget(x, "target"), "app");
    assert_string_equal(sget(x, "event"), "deprovision.session_end");
    assert_string_equal(sget(x, "kind"), "disable");
    assert_int_equal(json_array_size(json_object_get(x, "entitlements")), 0);
    assert_int_equal(json_array_size(json_object_get(x, "removed")), 1);
    assert_string_equal(sget(json_object_get(x, "mark"), "deprov_at:app"),
                        "260");
    json_decref(a);
    /* a live session: nothing */
    a = decide(f, 1, 1000, &due);
    assert_int_equal(json_array_size(a), 0);
    json_decref(a);
}

static void
test_session_end_only_once_and_only_jit(void **state)
{
    json_t *a;

    (void) state;
    cfg_reset();
    /* already acted on after this end */
    a = decide("{\"acct:app\": \"A1\", \"jit_at:app\": \"100\", "
               "\"last_session_end\": \"200\", \"deprov_at:app\": \"260\"}",
               0, 5000, NULL);
    assert_int_equal(json_array_size(a), 0);
    json_decref(a);
    /* an account no login provisioned (no jit_at): left alone */
    a = decide("{\"acct:app\": \"A1\", \"last_session_end\": \"200\"}", 0,
               5000, NULL);
    assert_int_equal(json_array_size(a), 0);
    json_decref(a);
    /* no account in the target: nothing */
    a = decide("{\"jit_at:app\": \"100\", \"last_session_end\": \"200\"}", 0,
               5000, NULL);
    assert_int_equal(json_array_size(a), 0);
    json_decref(a);
    /* target without the setting: nothing */
    g_targets[0].deprov_action = PG_DEPROV_NONE;
    a = decide("{\"acct:app\": \"A1\", \"jit_at:app\": \"100\", "
               "\"last_session_end\": \"200\"}", 0, 5000, NULL);
    assert_int_equal(json_array_size(a), 0);
    json_decref(a);
}

static void
test_session_end_remove_jit(void **state)
{
    json_t *a, *x;

    (void) state;
    cfg_reset();
    a = decide("{\"acct:wiki\": \"W\", \"jit_at:wiki\": \"100\", "
               "\"used:wiki\": \"150\", \"last_session_end\": \"200\", "
               "\"ents:wiki\": \"[{\\\"type\\\":\\\"group\\\",\\\"value\\\":"
               "\\\"readers\\\"},{\\\"type\\\":\\\"group\\\",\\\"value\\\":"
               "\\\"editors\\\",\\\"jit_lifetime_s\\\":3600}]\"}",
               0, 200, NULL);
    assert_int_equal(json_array_size(a), 1);
    x = json_array_get(a, 0);
    assert_string_equal(sget(x, "kind"), "ensure");
    assert_string_equal(sget(x, "event"), "deprovision.session_end");
    assert_int_equal(json_array_size(json_object_get(x, "entitlements")), 1);
    assert_string_equal(sget(json_array_get(json_object_get(x, "entitlements"),
                                            0), "value"), "readers");
    assert_string_equal(sget(json_array_get(json_object_get(x, "removed"), 0),
                             "value"), "editors");
    json_decref(a);
    /* no jit items: only remembered (kind none) */
    a = decide("{\"acct:wiki\": \"W\", \"jit_at:wiki\": \"100\", "
               "\"used:wiki\": \"150\", \"last_session_end\": \"200\", "
               "\"ents:wiki\": \"[]\"}", 0, 200, NULL);
    assert_int_equal(json_array_size(a), 1);
    assert_string_equal(sget(json_array_get(a, 0), "kind"), "none");
    assert_non_null(json_object_get(json_object_get(json_array_get(a, 0),
                                                    "mark"), "deprov_at:wiki"));
    json_decref(a);
}

static void
test_grant_expired(void **state)
{
    const char *f = "{\"acct:app\": \"A\", \"jit_at:app\": \"100\", "
                    "\"used:app\": \"500\", \"ents:app\": "
                    "\"[{\\\"type\\\":\\\"group\\\",\\\"value\\\":\\\"staff\\\"},"
                    "{\\\"type\\\":\\\"group\\\",\\\"value\\\":\\\"ops\\\","
                    "\\\"jit_lifetime_s\\\":1000}]\"}";
    json_t *a, *x;
    int64_t due = 0;

    (void) state;
    cfg_reset();
    /* the lifetime counts from the last use (500), not the grant (100) */
    a = decide(f, 1, 1499, &due);
    assert_int_equal(json_array_size(a), 0);
    assert_int_equal(due, 1500);
    json_decref(a);
    a = decide(f, 1, 1500, &due);
    assert_int_equal(json_array_size(a), 1);
    x = json_array_get(a, 0);
    assert_string_equal(sget(x, "event"), "deprovision.grant_expired");
    assert_string_equal(sget(x, "kind"), "ensure");
    assert_int_equal(json_array_size(json_object_get(x, "entitlements")), 1);
    assert_string_equal(sget(json_array_get(json_object_get(x, "entitlements"),
                                            0), "value"), "staff");
    assert_string_equal(sget(json_array_get(json_object_get(x, "removed"), 0),
                             "value"), "ops");
    assert_int_equal(json_object_size(json_object_get(x, "mark")), 0);
    json_decref(a);
    /* the test-only divisor shortens lifetimes: 1000 / 10 = 100 s */
    g_cfg.expiry_test_divisor = 10;
    a = decide(f, 1, 599, &due);
    assert_int_equal(json_array_size(a), 0);
    assert_int_equal(due, 600);
    json_decref(a);
    a = decide(f, 1, 600, &due);
    assert_int_equal(json_array_size(a), 1);
    json_decref(a);
}

static void
test_inactivity(void **state)
{
    const char *ents = "\"ents:wiki\": \"[{\\\"type\\\":\\\"group\\\","
                       "\\\"value\\\":\\\"readers\\\"}]\"";
    char f[512];
    json_t *a, *x;
    int64_t due = 0;

    (void) state;
    cfg_reset();
    /* never seen in use: the clock starts now (used:wiki marked) */
    snprintf(f, sizeof(f), "{\"acct:wiki\": \"W\", %s}", ents);
    a = decide(f, 1, 1000, &due);
    assert_int_equal(json_array_size(a), 1);
    x = json_array_get(a, 0);
    assert_string_equal(sget(x, "event"), "expiry.baseline");
    assert_string_equal(sget(x, "kind"), "none");
    assert_string_equal(sget(json_object_get(x, "mark"), "used:wiki"), "1000");
    assert_int_equal(due, 1100);
    json_decref(a);
    /* used at 1000: due at 1100 */
    snprintf(f, sizeof(f), "{\"acct:wiki\": \"W\", \"used:wiki\": \"1000\", "
             "%s}", ents);
    a = decide(f, 1, 1099, &due);
    assert_int_equal(json_array_size(a), 0);
    assert_int_equal(due, 1100);
    json_decref(a);
    a = decide(f, 1, 1100, &due);
    assert_int_equal(json_array_size(a), 1);
    x = json_array_get(a, 0);
    assert_string_equal(sget(x, "event"), "deprovision.inactive");
    assert_string_equal(sget(x, "kind"), "ensure");
    assert_int_equal(json_array_size(json_object_get(x, "entitlements")), 0);
    assert_int_equal(json_array_size(json_object_get(x, "removed")), 1);
    json_decref(a);
    /* nothing left to revoke: nothing */
    a = decide("{\"acct:wiki\": \"W\", \"used:wiki\": \"1\", "
               "\"ents:wiki\": \"[]\"}", 1, 100000, NULL);
    assert_int_equal(json_array_size(a), 0);
    json_decref(a);
}

/* Leave retention: nothing before left + delete_after_s (due then); a
 * delete once after it, marked retained:<app>; not again for the same
 * leave; a new leave counts again; no "left" (rehired): nothing. The other
 * rules of that target do not apply to a leaver. */
static void
test_retention(void **state)
{
    const char *f = "{\"acct:app\": \"A1\", \"attrs\": \"{}\", "
                    "\"jit_at:app\": \"100\", \"last_session_end\": \"100\", "
                    "\"left\": \"1000\"}";
    json_t *a, *x;
    int64_t due = 0;

    (void) state;
    cfg_reset();
    g_targets[0].delete_after_s = 500;
    a = decide(f, 0, 1499, &due);
    assert_int_equal(json_array_size(a), 0);   /* no session-end disable */
    assert_int_equal(due, 1500);
    json_decref(a);
    a = decide(f, 0, 1500, &due);
    assert_int_equal(json_array_size(a), 1);
    x = json_array_get(a, 0);
    assert_string_equal(sget(x, "target"), "app");
    assert_string_equal(sget(x, "event"), "jml.retention");
    assert_string_equal(sget(x, "kind"), "delete");
    assert_int_equal(json_integer_value(json_object_get(x, "left")), 1000);
    assert_int_equal(json_integer_value(json_object_get(x,
                                                        "delete_after_s")),
                     500);
    assert_string_equal(sget(json_object_get(x, "mark"), "retained:app"),
                        "1000");
    json_decref(a);
    /* queued for this leave already */
    a = decide("{\"acct:app\": \"A1\", \"left\": \"1000\", "
               "\"retained:app\": \"1000\"}", 0, 5000, &due);
    assert_int_equal(json_array_size(a), 0);
    assert_int_equal(due, 0);
    json_decref(a);
    /* rehired and left again later: a new retention period */
    a = decide("{\"acct:app\": \"A1\", \"left\": \"3000\", "
               "\"retained:app\": \"1000\"}", 0, 3100, &due);
    assert_int_equal(json_array_size(a), 0);
    assert_int_equal(due, 3500);
    json_decref(a);
    a = decide("{\"acct:app\": \"A1\", \"left\": \"3000\", "
               "\"retained:app\": \"1000\"}", 0, 3500, &due);
    assert_int_equal(json_array_size(a), 1);
    json_decref(a);
    /* rehired (no "left"): never deleted; the usual rules apply again */
    a = decide("{\"acct:app\": \"A1\", \"jit_at:app\": \"100\", "
               "\"last_session_end\": \"100\"}", 0, 99999, &due);
    assert_int_equal(json_array_size(a), 1);
    assert_string_equal(sget(json_array_get(a, 0), "kind"), "disable");
    json_decref(a);
    /* no account there, or a malformed leave time: nothing */
    a = decide("{\"left\": \"1000\"}", 0, 99999, &due);
    assert_int_equal(json_array_size(a), 0);
    json_decref(a);
    a = decide("{\"acct:app\": \"A1\", \"left\": \"x1\"}", 0, 99999, &due);
    assert_int_equal(json_array_size(a), 0);
    json_decref(a);
    /* a target without retention is not deleted */
    g_targets[0].delete_after_s = 0;
    a = decide("{\"acct:app\": \"A1\", \"left\": \"1000\"}", 0, 99999,
               &due);
    assert_int_equal(json_array_size(a), 0);
    json_decref(a);
}

static void
test_malformed_and_invalid(void **state)
{
    json_t *a = NULL, *f;

    (void) state;
    cfg_reset();
    /* garbage numbers and JSON: never acted on, never a crash */
    a = decide("{\"acct:app\": \"A\", \"jit_at:app\": \"12x\", "
               "\"last_session_end\": \"-5\", \"ents:app\": \"[{\"}", 0,
               100000, NULL);
    assert_int_equal(json_array_size(a), 0);
    json_decref(a);
    a = decide("{\"acct:app\": \"A\", \"jit_at:app\": \"1\", \"ents:app\": "
               "\"[{\\\"value\\\":\\\"x\\\",\\\"jit_lifetime_s\\\":\\\"5\\\"}]\"}",
               1, 100000, NULL);
    assert_int_equal(json_array_size(a), 0);
    json_decref(a);
    f = json_array();
    assert_int_equal(pg_expiry_decide(&g_cfg, f, 0, 1, &a, NULL),
                     PG_ERR_INVALID);
    assert_null(a);
    assert_int_equal(pg_expiry_decide(NULL, f, 0, 1, &a, NULL),
                     PG_ERR_INVALID);
    assert_int_equal(pg_expiry_decide(&g_cfg, f, 0, 1, NULL, NULL),
                     PG_ERR_INVALID);
    json_decref(f);
}

/* ---- the sweep against Redis --------------------------------------- */

typedef struct sweep_fx {
    pg_loop_t *loop;
    const pg_host_t *host;
    pg_redis_t *r;
    pg_audit_t *audit;
    pg_expiry_t *x;
    redisContext *c;      /* blocking test client */
    int sweeps;
    int ops;
    char mode[16];        /* of the last run */
    int ids;              /* identities looked at in the last run */
} sweep_fx_t;

static void
on_sweep(void *arg, pg_status_t st, const json_t *summary)
{
    sweep_fx_t *f = arg;

    assert_int_equal(st, PG_OK);
    f->sweeps++;
    f->ops += (int) json_integer_value(json_object_get(summary, "operations"));
    f->ids = (int) json_integer_value(json_object_get(summary, "identities"));
    snprintf(f->mode, sizeof(f->mode), "%s",
             json_string_value(json_object_get(summary, "mode")));
}

static redisReply *
cmd(sweep_fx_t *f, int argc, const char **argv)
{
    redisReply *r = redisCommandArgv(f->c, argc, argv, NULL);

    assert_non_null(r);
    assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
    return r;
}

#define CMD(f, ...) do { \
        const char *av_[] = { __VA_ARGS__ }; \
        freeReplyObject(cmd((f), (int) (sizeof(av_) / sizeof(av_[0])), av_)); \
    } while (0)

/* A string reply ("" for nil) into out. */
static void
get(sweep_fx_t *f, char *out, size_t sz, int argc, const char **argv)
{
    redisReply *r = cmd(f, argc, argv);

    out[0] = '\0';
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) {
        snprintf(out, sz, "%s", r->str);
    } else if (r->type == REDIS_REPLY_INTEGER) {
        snprintf(out, sz, "%lld", r->integer);
    }
    freeReplyObject(r);
}

static void
sweep_open(sweep_fx_t *f)
{
    pg_redis_config_t rc;
    pg_audit_cfg_t ac;
    pg_err_t err = { "" };

    memset(f, 0, sizeof(*f));
    assert_int_equal(pg_loop_new(&f->loop), PG_OK);
    pg_loop_set_log_level(f->loop, PG_LOG_ERROR);
    f->host = pg_loop_host(f->loop);
    memset(&rc, 0, sizeof(rc));
    rc.host = "127.0.0.1";
    rc.port = g_srv.port;
    rc.command_timeout_ms = 2000;
    rc.key_prefix = "pg:";
    assert_int_equal(pg_redis_new(f->host, &rc, &f->r), PG_OK);
    memset(&ac, 0, sizeof(ac));
    ac.stream = "audit";
    ac.stream_maxlen = 1000;
    assert_int_equal(pg_audit_new(f->host, &ac, "test", f->r, &f->audit,
                                  &err), PG_OK);
    f->c = redisConnect("127.0.0.1", g_srv.port);
    assert_non_null(f->c);
    assert_int_equal(f->c->err, 0);
    CMD(f, "FLUSHALL");
    CMD(f, "CONFIG", "SET", "notify-keyspace-events", "");
}

static void
sweep_close(sweep_fx_t *f)
{
    pg_expiry_free(f->x);
    pg_audit_free(f->audit);
    pg_redis_free(f->r);
    pg_loop_free(f->loop);
    redisFree(f->c);
}

/* Run the loop until the number of finished sweeps reaches n. */
static void
wait_sweeps(sweep_fx_t *f, int n)
{
    uint64_t end = pgt_now_ms() + 5000;
    int never = 0;

    while (f->sweeps < n && pgt_now_ms() < end) {
        assert_int_equal(pg_loop_run(f->loop, &never, 20), PG_ERR_TIMEOUT);
    }
    assert_true(f->sweeps >= n);
    /* let the audit XADDs land */
    assert_int_equal(pg_loop_run(f->loop, &never, 50), PG_ERR_TIMEOUT);
}

static int
audit_has(sweep_fx_t *f, const char *type)
{
    const char *argv[] = { "XRANGE", "pg:audit", "-", "+" };
    redisReply *r = cmd(f, 4, argv);
    size_t i, j;
    int n = 0;

    for (i = 0; i < r->elements; i++) {
        const redisReply *fv = r->element[i]->element[1];

        for (j = 0; j < fv->elements; j++) {
            if (strstr(fv->element[j]->str, type) != NULL) {
                n++;
                break;
            }
        }
    }
    freeReplyObject(r);
    return n;
}

static void
test_sweep_session_end(void **state)
{
    sweep_fx_t f;
    char buf[256], now_s[32];
    const char *xr[] = { "XRANGE", "pg:outbox", "-", "+" };
    redisReply *r;

    (void) state;
    cfg_reset();
    g_targets[0].deprov_grace_s = 0;
    sweep_open(&f);
    snprintf(now_s, sizeof(now_s), "%lld", (long long) time(NULL) - 10);
    CMD(&f, "HSET", "pg:id:u1", "attrs", "{\"username\":\"u1\"}", "acct:app",
        "A1", "ents:app", "[{\"type\":\"group\",\"value\":\"staff\"}]",
        "jit_at:app", now_s);
    CMD(&f, "SADD", "pg:idsess:u1", "live1", "dead1");
    CMD(&f, "HSET", "pg:sessowner", "live1", "u1", "dead1", "u1");
    CMD(&f, "SET", "pg:sess:live1", "{}", "EX", "100");
    /* an identity without accounts and a non-identity key: ignored */
    CMD(&f, "HSET", "pg:id:u2", "attrs", "{}");
    CMD(&f, "SET", "pg:id:u3", "not a hash");
    assert_int_equal(pg_expiry_new(&g_cfg, f.host, f.r, f.audit, on_sweep, &f,
                                   &f.x), PG_OK);
    assert_int_equal(pg_expiry_start(f.x), PG_OK);
    wait_sweeps(&f, 1);
    assert_string_equal(f.mode, "full");
    assert_int_equal(f.ids, 2);   /* u1 and u2; u3 is not a hash */
    /* keyspace notifications were enabled for the subscriber */
    {
        const char *av[] = { "CONFIG", "GET", "notify-keyspace-events" };
        redisReply *cr = cmd(&f, 3, av);

        assert_int_equal(cr->elements, 2);
        assert_non_null(strchr(cr->element[1]->str, 'E'));
        assert_non_null(strchr(cr->element[1]->str, 'x'));
        assert_non_null(strchr(cr->element[1]->str, 'g'));
        freeReplyObject(cr);
    }
    /* a live session: nothing queued; the dead sid left the index */
    assert_int_equal(f.ops, 0);
    {
        const char *av[] = { "SISMEMBER", "pg:idsess:u1", "dead1" };
        get(&f, buf, sizeof(buf), 3, av);
        assert_string_equal(buf, "0");
    }
    {
        /* and the owner index */
        const char *av[] = { "HEXISTS", "pg:sessowner", "dead1" };
        get(&f, buf, sizeof(buf), 3, av);
        assert_string_equal(buf, "0");
    }
    {
        const char *av[] = { "HEXISTS", "pg:id:u1", "last_session_end" };
        get(&f, buf, sizeof(buf), 3, av);
        assert_string_equal(buf, "0");
    }
    /* the last session ends; the notification schedules a sweep */
    CMD(&f, "DEL", "pg:sess:live1");
    pg_expiry_notify(f.x, "other:sess:x");     /* foreign prefix: ignored */
    pg_expiry_notify(f.x, "pg:sess:live1");
    wait_sweeps(&f, 2);
    /* only the owner of the ended session was looked at */
    assert_string_equal(f.mode, "targeted");
    assert_int_equal(f.ids, 1);
    assert_int_equal(f.ops, 1);
    {
        const char *av[] = { "HEXISTS", "pg:sessowner", "live1" };
        get(&f, buf, sizeof(buf), 3, av);
        assert_string_equal(buf, "0");
    }
    r = cmd(&f, 4, xr);
    assert_int_equal(r->elements, 1);
    {
        const redisReply *fv = r->element[0]->element[1];
        size_t j;
        int kind_ok = 0, id_ok = 0;

        for (j = 0; j + 1 < fv->elements; j += 2) {
            if (strcmp(fv->element[j]->str, "kind") == 0) {
                kind_ok = strcmp(fv->element[j + 1]->str, "disable") == 0;
            }
            if (strcmp(fv->element[j]->str, "identity") == 0) {
                id_ok = strcmp(fv->element[j + 1]->str, "u1") == 0;
            }
        }
        assert_true(kind_ok);
        assert_true(id_ok);
    }
    freeReplyObject(r);
    {
        const char *av[] = { "HEXISTS", "pg:id:u1", "deprov_at:app" };
        get(&f, buf, sizeof(buf), 3, av);
        assert_string_equal(buf, "1");
    }
    assert_int_equal(audit_has(&f, "deprovision.session_end"), 1);
    /* acted on once: another (full) sweep queues nothing */
    pg_expiry_kick(f.x);
    wait_sweeps(&f, 3);
    assert_string_equal(f.mode, "full");
    assert_int_equal(f.ops, 1);
    /* a session nobody recorded an owner for: a full sweep */
    pg_expiry_notify(f.x, "pg:sess:unknown");
    wait_sweeps(&f, 4);
    assert_string_equal(f.mode, "targeted");
    wait_sweeps(&f, 5);
    assert_string_equal(f.mode, "full");
    assert_int_equal(f.ops, 1);
    sweep_close(&f);
}

static void
test_sweep_grant_expired(void **state)
{
    sweep_fx_t f;
    char old[32], buf[64];
    const char *xr[] = { "XRANGE", "pg:outbox", "-", "+" };
    redisReply *r;
    json_t *st;
    json_error_t jerr;
    size_t j;

    (void) state;
    cfg_reset();
    g_targets[0].deprov_action = PG_DEPROV_NONE;
    sweep_open(&f);
    snprintf(old, sizeof(old), "%lld", (long long) time(NULL) - 30);
    CMD(&f, "HSET", "pg:id:u9", "attrs", "{\"username\":\"u9\"}", "acct:app",
        "A9", "ents:app",
        "[{\"type\":\"group\",\"value\":\"staff\"},"
        "{\"type\":\"group\",\"value\":\"oncall\",\"jit_lifetime_s\":20}]",
        "jit_at:app", old);
    assert_int_equal(pg_expiry_new(&g_cfg, f.host, f.r, f.audit, on_sweep, &f,
                                   &f.x), PG_OK);
    assert_int_equal(pg_expiry_start(f.x), PG_OK);
    wait_sweeps(&f, 1);
    assert_int_equal(f.ops, 1);
    r = cmd(&f, 4, xr);
    assert_int_equal(r->elements, 1);
    st = NULL;
    for (j = 0; j + 1 < r->element[0]->element[1]->elements; j += 2) {
        const redisReply *fv = r->element[0]->element[1];

        if (strcmp(fv->element[j]->str, "kind") == 0) {
            assert_string_equal(fv->element[j + 1]->str, "ensure");
        }
        if (strcmp(fv->element[j]->str, "state") == 0) {
            st = json_loads(fv->element[j + 1]->str, 0, &jerr);
        }
    }
    freeReplyObject(r);
    assert_non_null(st);
    assert_string_equal(json_string_value(json_object_get(st, "iid")), "u9");
    assert_string_equal(json_string_value(json_object_get(st, "app")), "app");
    assert_int_equal(json_array_size(json_object_get(st, "entitlements")), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(
        json_object_get(st, "entitlements"), 0), "value")), "staff");
    json_decref(st);
    assert_int_equal(audit_has(&f, "deprovision.grant_expired"), 1);
    /* recently used: a fresh use keeps the grant (no second operation
     * once the pending one is done and the state is re-recorded) */
    snprintf(buf, sizeof(buf), "%lld", (long long) time(NULL));
    CMD(&f, "HSET", "pg:id:u9", "used:app", buf);
    CMD(&f, "DEL", "pg:outbox");
    CMD(&f, "EVAL", "for _, k in ipairs(redis.call('KEYS', 'pg:outbox:key:*'))"
        " do redis.call('DEL', k) end return 1", "0");
    pg_expiry_kick(f.x);
    wait_sweeps(&f, 2);
    assert_int_equal(f.ops, 1);
    sweep_close(&f);
}

/* Something that falls due later is looked at then, by itself. */
static void
test_sweep_due_later(void **state)
{
    sweep_fx_t f;
    char old[32];

    (void) state;
    cfg_reset();
    g_targets[0].deprov_grace_s = 1;
    sweep_open(&f);
    snprintf(old, sizeof(old), "%lld", (long long) time(NULL) - 5);
    CMD(&f, "HSET", "pg:id:u7", "attrs", "{\"username\":\"u7\"}", "acct:app",
        "A7", "jit_at:app", old);
    CMD(&f, "HSET", "pg:id:u8", "attrs", "{}");
    assert_int_equal(pg_expiry_new(&g_cfg, f.host, f.r, f.audit, on_sweep, &f,
                                   &f.x), PG_OK);
    assert_int_equal(pg_expiry_start(f.x), PG_OK);
    /* no live session: the end is recorded now, due in grace_s */
    wait_sweeps(&f, 1);
    assert_string_equal(f.mode, "full");
    assert_int_equal(f.ops, 0);
    wait_sweeps(&f, 2);
    assert_string_equal(f.mode, "targeted");
    assert_int_equal(f.ids, 1);
    assert_int_equal(f.ops, 1);
    assert_int_equal(audit_has(&f, "deprovision.session_end"), 1);
    sweep_close(&f);
}

static void
on_fail(void *arg, pg_status_t st, const json_t *summary)
{
    int *n = arg;

    (void) summary;
    assert_int_not_equal(st, PG_OK);
    (*n)++;
}

/* Redis down: the run reports the failure and the next one waits 2 s. */
static void
test_redis_down(void **state)
{
    pg_loop_t *loop = NULL;
    pg_redis_config_t rc;
    pg_redis_t *r = NULL;
    pg_expiry_t *x = NULL;
    int runs = 0, never = 0;

    (void) state;
    cfg_reset();
    assert_int_equal(pg_loop_new(&loop), PG_OK);
    pg_loop_set_log_level(loop, PG_LOG_ERROR);
    memset(&rc, 0, sizeof(rc));
    rc.host = "127.0.0.1";
    rc.port = pgt_free_port();
    rc.connect_timeout_ms = 200;
    rc.command_timeout_ms = 200;
    assert_int_equal(pg_redis_new(pg_loop_host(loop), &rc, &r), PG_OK);
    /* audit is not reached: nothing is decided without Redis */
    assert_int_equal(pg_expiry_new(&g_cfg, pg_loop_host(loop), r, NULL,
                                   on_fail, &runs, &x), PG_OK);
    assert_int_equal(pg_expiry_start(x), PG_OK);
    assert_int_equal(pg_loop_run(loop, &never, 1500), PG_ERR_TIMEOUT);
    assert_int_equal(runs, 1);
    pg_expiry_kick(x);   /* an explicit kick still runs at once */
    assert_int_equal(pg_loop_run(loop, &never, 500), PG_ERR_TIMEOUT);
    assert_int_equal(runs, 2);
    pg_expiry_free(x);
    pg_redis_free(r);
    pg_loop_free(loop);
}

/* No session-end rule: notifications are neither enabled nor used. */
static void
test_no_session_rules(void **state)
{
    sweep_fx_t f;
    char buf[64];
    int never = 0;

    (void) state;
    cfg_reset();
    g_targets[0].deprov_action = PG_DEPROV_NONE;
    g_targets[1].deprov_action = PG_DEPROV_NONE;
    sweep_open(&f);
    assert_int_equal(pg_expiry_new(&g_cfg, f.host, f.r, f.audit, on_sweep, &f,
                                   &f.x), PG_OK);
    assert_int_equal(pg_expiry_start(f.x), PG_OK);
    wait_sweeps(&f, 1);
    {
        const char *av[] = { "CONFIG", "GET", "notify-keyspace-events" };
        redisReply *cr = cmd(&f, 3, av);

        assert_int_equal(cr->elements, 2);
        snprintf(buf, sizeof(buf), "%s", cr->element[1]->str);
        freeReplyObject(cr);
    }
    assert_string_equal(buf, "");
    pg_expiry_notify(f.x, "pg:sess:abc");
    assert_int_equal(pg_loop_run(f.loop, &never, 500), PG_ERR_TIMEOUT);
    assert_int_equal(f.sweeps, 1);
    sweep_close(&f);
}

static int
setup(void **state)
{
    (void) state;
    return pgt_redis_start(&g_srv, NULL);
}

static int
teardown(void **state)
{
    (void) state;
    pgt_redis_stop(&g_srv);
    return 0;
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_session_end_disable),
        cmocka_unit_test(test_session_end_only_once_and_only_jit),
        cmocka_unit_test(test_session_end_remove_jit),
        cmocka_unit_test(test_grant_expired),
        cmocka_unit_test(test_inactivity),
        cmocka_unit_test(test_malformed_and_invalid),
        cmocka_unit_test(test_retention),
        cmocka_unit_test(test_sweep_session_end),
        cmocka_unit_test(test_sweep_grant_expired),
        cmocka_unit_test(test_sweep_due_later),
        cmocka_unit_test(test_redis_down),
        cmocka_unit_test(test_no_session_rules),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
