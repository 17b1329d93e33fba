/* Unit tests: src/connectors/manual/manual.c against a private
 * redis-server. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "provgate/loop.h"
#include "provgate/manualconn.h"
#include "provgate/redis.h"
#include "helpers/procs.h"

static pgt_redis_t g_srv;

typedef struct fx {
    pg_loop_t *loop;
    const pg_host_t *host;
    pg_redis_t *r;
    pg_connector_t *c;
} fx_t;

static void
q(const char *cmd, char *out, size_t outsz)
{
    assert_int_equal(pgt_redis_query(&g_srv, cmd, out, outsz), 0);
}

/* First reply line of cmd must be want. */
static void
expect_q(const char *cmd, const char *want)
{
    char buf[256];

    q(cmd, buf, sizeof(buf));
    if (strcmp(buf, want) != 0) {
        fail_msg("%s: got \"%s\", want \"%s\"", cmd, buf, want);
    }
}

static void
open_conn(fx_t *f, const char *cfgtxt)
{
    json_t *cfg = json_loads(cfgtxt, 0, NULL);
    pg_err_t err;

    assert_non_null(cfg);
    pg_connector_free(f->c);
    f->c = NULL;
    err.msg[0] = '\0';
    if (pg_manual_connector_new(f->host, f->r, "t1:", "mainframe", cfg, &f->c,
                                &err) != PG_OK) {
        fail_msg("config refused: %s", err.msg);
    }
    json_decref(cfg);
}

static int
setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    pg_redis_config_t rc;
    char buf[64];

    assert_non_null(f);
    q("FLUSHALL", buf, sizeof(buf));
    assert_string_equal(buf, "+OK");
    assert_int_equal(pg_loop_new(&f->loop), PG_OK);
    pg_loop_set_log_level(f->loop, PG_LOG_ERROR);
    f->host = pg_loop_host(f->loop);
    memset(&rc, 0, sizeof(rc));
    rc.host = "127.0.0.1";
    rc.port = g_srv.port;
    rc.command_timeout_ms = 2000;
    rc.connect_timeout_ms = 500;
    assert_int_equal(pg_redis_new(f->host, &rc, &f->r), PG_OK);
    open_conn(f, "{\"type\":\"manual\",\"instructions\":\"Use the RACF "
                 "panel.\"}");
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    fx_t *f = *state;

    pg_connector_free(f->c);
    pg_redis_free(f->r);
    pg_loop_free(f->loop);
    free(f);
    return 0;
}

/* ---- operations ----------------------------------------------------- */

typedef struct res {
    int called;
    pg_status_t st;
    pg_conn_outcome_t outcome;
    char id[PG_CONN_KEY_MAX + 1];
    int retryable;
    char error[PG_CONN_ERROR_MAX];
    int done;
} res_t;

static void
op_cb(void *arg, pg_status_t st, const pg_conn_result_t *r)
{
    res_t *o = arg;

    o->called++;
    o->st = st;
    assert_non_null(r);
    o->outcome = r->outcome;
    snprintf(o->id, sizeof(o->id), "%s", r->id);
    o->retryable = r->retryable;
    snprintf(o->error, sizeof(o->error), "%s", r->error);
    o->done = 1;
}

enum { ENSURE, DISABLE, REMOVE };

static res_t
run_op(fx_t *f, int which, const pg_account_t *a)
{
    res_t o;
    pg_status_t st;

    memset(&o, 0, sizeof(o));
    if (which == ENSURE) {
        st = pg_conn_ensure(f->c, a, op_cb, &o, NULL);
    } else if (which == DISABLE) {
        st = pg_conn_disable(f->c, a, op_cb, &o, NULL);
    } else {
        st = pg_conn_remove(f->c, a, op_cb, &o, NULL);
    }
    assert_int_equal(st, PG_OK);
    assert_int_equal(o.called, 0);
    assert_int_equal(pg_loop_run(f->loop, &o.done, 4000), PG_OK);
    assert_int_equal(o.called, 1);
    return o;
}

static pg_account_t
mkacct(const char *key, json_t *attrs, const char *const *groups, size_t ng,
       int active)
{
    pg_account_t a;

    memset(&a, 0, sizeof(a));
    a.key = key;
    a.identity = "id-42";
    a.attrs = attrs;
    a.groups = groups;
    a.ngroups = ng;
    a.active = active;
    return a;
}

/* Open items: a copy of the array (caller decrefs). */
typedef struct items_res {
    int done;
    pg_status_t st;
    json_t *items;
    char error[256];
} items_res_t;

static void
items_cb(void *arg, pg_status_t st, const json_t *items, const char *error)
{
    items_res_t *ir = arg;

    ir->st = st;
    ir->items = items != NULL ? json_deep_copy(items) : NULL;
    snprintf(ir->error, sizeof(ir->error), "%s", error != NULL ? error : "");
    ir->done = 1;
}

static json_t *
open_items(fx_t *f)
{
    items_res_t ir;

    memset(&ir, 0, sizeof(ir));
    assert_int_equal(pg_manual_list_open(f->c, 100, items_cb, &ir, NULL),
                     PG_OK);
    assert_int_equal(ir.done, 0);
    assert_int_equal(pg_loop_run(f->loop, &ir.done, 4000), PG_OK);
    assert_int_equal(ir.st, PG_OK);
    assert_non_null(ir.items);
    return ir.items;
}

typedef struct rs {
    int done;
    pg_status_t st;
    char error[256];
} rs_t;

static void
resolve_cb(void *arg, pg_status_t st, const char *error)
{
    rs_t *r = arg;

    r->st = st;
    snprintf(r->error, sizeof(r->error), "%s", error != NULL ? error : "");
    r->done = 1;
}

static pg_status_t
resolve(fx_t *f, const char *id, int done, const char *note)
{
    rs_t r;

    memset(&r, 0, sizeof(r));
    if (done) {
        assert_int_equal(pg_manual_mark_done(f->c, id, "operator", note,
                                             resolve_cb, &r, NULL), PG_OK);
    } else {
        assert_int_equal(pg_manual_reject(f->c, id, "operator", note,
                                          resolve_cb, &r, NULL), PG_OK);
    }
    assert_int_equal(r.done, 0);
    assert_int_equal(pg_loop_run(f->loop, &r.done, 4000), PG_OK);
    return r.st;
}

/* list() into a JSON array of {key, active, attrs, groups, modified}. */
typedef struct lst {
    json_t *rows;
    int done;
    pg_status_t st;
} lst_t;

static int
page_cb(void *arg, const pg_listed_account_t *accts, size_t n)
{
    lst_t *l = arg;
    size_t i, j;

    for (i = 0; i < n; i++) {
        json_t *g = json_array();
        for (j = 0; j < accts[i].ngroups; j++) {
            json_array_append_new(g, json_string(accts[i].groups[j]));
        }
        assert_non_null(accts[i].attrs);
        json_array_append_new(l->rows,
                              json_pack("{s:s,s:b,s:O,s:o,s:b}",
                                        "key", accts[i].key,
                                        "active", accts[i].active,
                                        "attrs", accts[i].attrs,
                                        "groups", g,
                                        "modified",
                                        accts[i].modified_ms > 0));
    }
    return 0;
}

static void
done_cb(void *arg, pg_status_t st, const char *error)
{
    lst_t *l = arg;

    (void) error;
    l->st = st;
    l->done = 1;
}

static json_t *
list_done(fx_t *f, uint64_t since)
{
    lst_t l;

    memset(&l, 0, sizeof(l));
    l.rows = json_array();
    assert_int_equal(pg_conn_list(f->c, since, page_cb, done_cb, &l, NULL),
                     PG_OK);
    assert_int_equal(pg_loop_run(f->loop, &l.done, 4000), PG_OK);
    assert_int_equal(l.st, PG_OK);
    return l.rows;
}

static const char *
item_str(const json_t *items, size_t i, const char *k)
{
    return json_string_value(json_object_get(json_array_get(items, i), k));
}

/* ---- tests ---------------------------------------------------------- */

static void
cfg_err(fx_t *f, const char *txt, const char *part)
{
    json_t *cfg = json_loads(txt, 0, NULL);
    pg_connector_t *c = NULL;
    pg_err_t err;

    assert_non_null(cfg);
    err.msg[0] = '\0';
    assert_int_equal(pg_manual_connector_new(f->host, f->r, NULL, "x", cfg,
                                             &c, &err), PG_ERR_CONFIG);
    assert_null(c);
    if (strstr(err.msg, part) == NULL) {
        fail_msg("\"%s\" lacks \"%s\"", err.msg, part);
    }
    json_decref(cfg);
}

static void
test_config(void **state)
{
    fx_t *f = *state;
    char big[2200 + 64];

    cfg_err(f, "{\"nope\":1}", "connector.nope:");
    cfg_err(f, "{\"type\":\"csv\"}", "connector.type:");
    cfg_err(f, "{\"max_open\":0}", "connector.max_open:");
    cfg_err(f, "{\"timeout_ms\":\"5\"}", "connector.timeout_ms:");
    cfg_err(f, "{\"instructions\":7}", "connector.instructions:");
    memset(big, 0, sizeof(big));
    memcpy(big, "{\"instructions\":\"", 17);
    memset(big + 17, 'a', 2100);
    memcpy(big + 17 + 2100, "\"}", 2);
    cfg_err(f, big, "targets.x.connector.instructions: at most");
    {
        json_t *cfg = json_pack("{s:i}", "max_open", 0);
        pg_connector_t *c = NULL;
        pg_err_t err;
        assert_int_equal(pg_manual_connector_new_at(f->host, f->r, NULL, "x",
                                                    cfg, "t[0].connector", &c,
                                                    &err), PG_ERR_CONFIG);
        assert_null(c);
        assert_non_null(strstr(err.msg, "t[0].connector.max_open:"));
        json_decref(cfg);
        /* a name that would break the key layout */
        cfg = json_object();
        assert_int_equal(pg_manual_connector_new(f->host, f->r, NULL, "a:b",
                                                 cfg, &c, &err),
                         PG_ERR_INVALID);
        json_decref(cfg);
    }
    assert_string_equal(f->c->vt->type, "manual");
    assert_true(f->c->caps & PG_CONN_CAP_LIST);
}

static void
test_queue_done_provisioned(void **state)
{
    fx_t *f = *state;
    const char *g[] = { "payroll", "clerks", "payroll" };
    json_t *attrs = json_pack("{s:s,s:s}", "mail", "a@x.org", "name",
                              "Alice");
    pg_account_t a = mkacct("alice", attrs, g, 3, 1);
    char id[64];
    json_t *items, *rows, *it;
    res_t o;

    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.st, PG_OK);
    assert_int_equal(o.outcome, PG_CONN_QUEUED);
    assert_string_equal(o.id, "alice");

    /* the work item says what, for whom and why */
    assert_int_equal(pg_manual_item_id(f->c, "ensure", &a, id, sizeof(id)),
                     PG_OK);
    assert_int_equal(strlen(id), 43);
    items = open_items(f);
    assert_int_equal(json_array_size(items), 1);
    it = json_array_get(items, 0);
    assert_string_equal(item_str(items, 0, "id"), id);
    assert_string_equal(item_str(items, 0, "target"), "mainframe");
    assert_string_equal(item_str(items, 0, "op"), "ensure");
    assert_string_equal(item_str(items, 0, "key"), "alice");
    assert_string_equal(item_str(items, 0, "identity"), "id-42");
    assert_string_equal(item_str(items, 0, "status"), "open");
    assert_string_equal(item_str(items, 0, "outcome"), "created");
    assert_string_equal(item_str(items, 0, "instructions"),
                        "Use the RACF panel.");
    assert_non_null(strstr(item_str(items, 0, "summary"),
                           "Create or update account \"alice\" on "
                           "mainframe (enabled); set mail, name; add to "
                           "clerks, payroll."));
    assert_true(json_integer_value(json_object_get(it, "created_ms"))
                > 1700000000000LL);
    assert_true(json_equal(json_object_get(json_object_get(it, "desired"),
                                           "attrs"), attrs));
    {
        char *gs = json_dumps(json_object_get(json_object_get(it, "desired"),
                                              "groups"), JSON_COMPACT);
        assert_string_equal(gs, "[\"clerks\",\"payroll\"]");
        free(gs);
    }
    json_decref(items);
    expect_q("HLEN t1:manual:mainframe:items", ":1");
    expect_q("ZCARD t1:manual:mainframe:open", ":1");

    /* the same desired change again: no second item */
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_QUEUED);
    {
        /* groups in another order, duplicates: the same desired state */
        const char *g2[] = { "clerks", "payroll" };
        pg_account_t a2 = mkacct("alice", attrs, g2, 2, 1);
        a2.identity = "someone-else";
        o = run_op(f, ENSURE, &a2);
        assert_int_equal(o.outcome, PG_CONN_QUEUED);
    }
    expect_q("HLEN t1:manual:mainframe:items", ":1");
    expect_q("ZCARD t1:manual:mainframe:open", ":1");
    rows = list_done(f, 0);
    assert_int_equal(json_array_size(rows), 0);   /* not provisioned yet */
    json_decref(rows);

    /* a human marks it done: provisioned, reported once as created */
    assert_int_equal(resolve(f, id, 1, "created by hand"), PG_OK);
    items = open_items(f);
    assert_int_equal(json_array_size(items), 0);
    json_decref(items);
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.st, PG_OK);
    assert_int_equal(o.outcome, PG_CONN_CREATED);
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_UNCHANGED);
    expect_q("ZCARD t1:manual:mainframe:open", ":0");

    rows = list_done(f, 0);
    assert_int_equal(json_array_size(rows), 1);
    it = json_array_get(rows, 0);
    assert_string_equal(json_string_value(json_object_get(it, "key")),
                        "alice");
    assert_true(json_is_true(json_object_get(it, "active")));
    assert_true(json_is_true(json_object_get(it, "modified")));
    assert_true(json_equal(json_object_get(it, "attrs"), attrs));
    assert_int_equal(json_array_size(json_object_get(it, "groups")), 2);
    json_decref(rows);
    /* incremental: nothing resolved in the far future */
    rows = list_done(f, 4102444800000ULL);
    assert_int_equal(json_array_size(rows), 0);
    json_decref(rows);

    /* resolving twice or an unknown item */
    assert_int_equal(resolve(f, id, 1, NULL), PG_ERR_CONFLICT);
    assert_int_equal(resolve(f, "no-such-item", 1, NULL), PG_ERR_NOT_FOUND);
    json_decref(attrs);
}

static void
test_changed_state_new_item(void **state)
{
    fx_t *f = *state;
    json_t *attrs = json_pack("{s:s}", "mail", "b@x.org");
    pg_account_t a = mkacct("bob", attrs, NULL, 0, 1);
    char id1[64], id2[64], id3[64];
    json_t *items;
    res_t o;

    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_QUEUED);
    assert_int_equal(pg_manual_item_id(f->c, "ensure", &a, id1, sizeof(id1)),
                     PG_OK);
    assert_int_equal(resolve(f, id1, 1, NULL), PG_OK);
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_CREATED);

    /* a changed attribute: a new item, an update */
    json_object_set_new(attrs, "mail", json_string("bob@x.org"));
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_QUEUED);
    assert_int_equal(pg_manual_item_id(f->c, "ensure", &a, id2, sizeof(id2)),
                     PG_OK);
    assert_string_not_equal(id1, id2);
    items = open_items(f);
    assert_int_equal(json_array_size(items), 1);
    assert_string_equal(item_str(items, 0, "id"), id2);
    assert_string_equal(item_str(items, 0, "outcome"), "updated");
    json_decref(items);
    expect_q("HLEN t1:manual:mainframe:items", ":2");

    /* changed again before anyone acted: the older item is superseded */
    json_object_set_new(attrs, "mail", json_string("robert@x.org"));
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_QUEUED);
    assert_int_equal(pg_manual_item_id(f->c, "ensure", &a, id3, sizeof(id3)),
                     PG_OK);
    items = open_items(f);
    assert_int_equal(json_array_size(items), 1);
    assert_string_equal(item_str(items, 0, "id"), id3);
    json_decref(items);
    assert_int_equal(resolve(f, id2, 1, NULL), PG_ERR_CONFLICT);
    assert_int_equal(resolve(f, id3, 1, NULL), PG_OK);
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_UPDATED);

    /* back to the first state: the done item of back then is re-opened */
    json_object_set_new(attrs, "mail", json_string("b@x.org"));
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_QUEUED);
    items = open_items(f);
    assert_int_equal(json_array_size(items), 1);
    assert_string_equal(item_str(items, 0, "id"), id1);
    json_decref(items);
    json_decref(attrs);
}

static void
test_disable_remove_reject(void **state)
{
    fx_t *f = *state;
    pg_account_t a = mkacct("carol", NULL, NULL, 0, 1);
    pg_account_t x = mkacct("nobody", NULL, NULL, 0, 1);
    char id[64];
    json_t *items, *rows, *at;
    res_t o;

    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_QUEUED);
    assert_int_equal(pg_manual_item_id(f->c, "ensure", &a, id, sizeof(id)),
                     PG_OK);
    assert_int_equal(resolve(f, id, 1, NULL), PG_OK);

    /* disable: an item, then provisioned once done */
    o = run_op(f, DISABLE, &a);
    assert_int_equal(o.st, PG_OK);
    assert_int_equal(o.outcome, PG_CONN_QUEUED);
    items = open_items(f);
    assert_int_equal(json_array_size(items), 1);
    assert_string_equal(item_str(items, 0, "op"), "disable");
    assert_string_equal(item_str(items, 0, "outcome"), "disabled");
    assert_non_null(strstr(item_str(items, 0, "summary"),
                           "Disable account \"carol\""));
    assert_int_equal(resolve(f, item_str(items, 0, "id"), 1, "locked"),
                     PG_OK);
    json_decref(items);
    o = run_op(f, DISABLE, &a);
    assert_int_equal(o.outcome, PG_CONN_DISABLED);
    o = run_op(f, DISABLE, &a);
    assert_int_equal(o.outcome, PG_CONN_UNCHANGED);
    rows = list_done(f, 0);
    assert_int_equal(json_array_size(rows), 1);
    assert_false(json_is_true(json_object_get(json_array_get(rows, 0),
                                              "active")));
    json_decref(rows);

    /* disable of an account never provisioned */
    o = run_op(f, DISABLE, &x);
    assert_int_equal(o.st, PG_ERR_NOT_FOUND);
    assert_int_equal(o.retryable, 0);

    /* re-enable (the old ensure state) is a new work item */
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_QUEUED);
    /* rejected: the same change is refused until it changes */
    assert_int_equal(resolve(f, id, 0, "no licence left"), PG_OK);
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.st, PG_ERR_DENIED);
    assert_int_equal(o.retryable, 0);
    assert_non_null(strstr(o.error, "no licence left"));
    assert_int_equal(resolve(f, id, 1, NULL), PG_ERR_CONFLICT);

    /* remove: queued, then removed once done; gone from list() */
    o = run_op(f, REMOVE, &a);
    assert_int_equal(o.outcome, PG_CONN_QUEUED);
    items = open_items(f);
    assert_int_equal(json_array_size(items), 1);
    assert_string_equal(item_str(items, 0, "op"), "remove");
    assert_int_equal(resolve(f, item_str(items, 0, "id"), 1, NULL), PG_OK);
    json_decref(items);
    o = run_op(f, REMOVE, &a);
    assert_int_equal(o.st, PG_OK);
    assert_int_equal(o.outcome, PG_CONN_REMOVED);
    rows = list_done(f, 0);
    assert_int_equal(json_array_size(rows), 0);
    json_decref(rows);
    /* removing a missing account succeeds without any item */
    o = run_op(f, REMOVE, &x);
    assert_int_equal(o.outcome, PG_CONN_REMOVED);
    items = open_items(f);
    assert_int_equal(json_array_size(items), 0);
    json_decref(items);

    /* a leaver whose account was never created: the pending create is
     * withdrawn (superseded), disable reports NOT_FOUND */
    o = run_op(f, ENSURE, &x);
    assert_int_equal(o.outcome, PG_CONN_QUEUED);
    assert_int_equal(pg_manual_item_id(f->c, "ensure", &x, id, sizeof(id)),
                     PG_OK);
    o = run_op(f, DISABLE, &x);
    assert_int_equal(o.st, PG_ERR_NOT_FOUND);
    items = open_items(f);
    assert_int_equal(json_array_size(items), 0);
    json_decref(items);
    assert_int_equal(resolve(f, id, 1, NULL), PG_ERR_CONFLICT);
    /* the same for remove */
    at = json_pack("{s:s}", "mail", "n@x");
    x.attrs = at;
    o = run_op(f, ENSURE, &x);
    assert_int_equal(o.outcome, PG_CONN_QUEUED);
    o = run_op(f, REMOVE, &x);
    assert_int_equal(o.st, PG_OK);
    assert_int_equal(o.outcome, PG_CONN_REMOVED);
    items = open_items(f);
    assert_int_equal(json_array_size(items), 0);
    json_decref(items);
    json_decref(at);
}

static void
test_list_many_and_cap(void **state)
{
    fx_t *f = *state;
    char key[32];
    char id[64];
    json_t *rows;
    res_t o;
    int i;

    for (i = 0; i < 300; i++) {
        pg_account_t a;
        snprintf(key, sizeof(key), "user%03d", i);
        a = mkacct(key, NULL, NULL, 0, 1);
        o = run_op(f, ENSURE, &a);
        assert_int_equal(o.outcome, PG_CONN_QUEUED);
        assert_int_equal(pg_manual_item_id(f->c, "ensure", &a, id,
                                           sizeof(id)), PG_OK);
        assert_int_equal(resolve(f, id, 1, NULL), PG_OK);
    }
    rows = list_done(f, 0);    /* several HSCAN rounds (listpack > 128) */
    assert_int_equal(json_array_size(rows), 300);
    json_decref(rows);

    /* max_open: beyond it new items are refused, retryable */
    open_conn(f, "{\"max_open\":2}");
    for (i = 0; i < 3; i++) {
        pg_account_t a;
        snprintf(key, sizeof(key), "new%d", i);
        a = mkacct(key, NULL, NULL, 0, 1);
        o = run_op(f, ENSURE, &a);
        if (i < 2) {
            assert_int_equal(o.outcome, PG_CONN_QUEUED);
        } else {
            assert_int_equal(o.st, PG_ERR_BUSY);
            assert_int_equal(o.retryable, 1);
        }
    }
}

static void
test_redis_down(void **state)
{
    fx_t *f = *state;
    pg_account_t a = mkacct("dora", NULL, NULL, 0, 1);
    items_res_t ir;
    rs_t r;
    lst_t l;
    res_t o;

    pgt_redis_kill(&g_srv);
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.st, PG_ERR_REDIS);
    assert_int_equal(o.retryable, 1);
    assert_string_equal(o.id, "");
    assert_true(o.error[0] != '\0');

    memset(&ir, 0, sizeof(ir));
    assert_int_equal(pg_manual_list_open(f->c, 10, items_cb, &ir, NULL),
                     PG_OK);
    assert_int_equal(pg_loop_run(f->loop, &ir.done, 4000), PG_OK);
    assert_int_equal(ir.st, PG_ERR_REDIS);
    assert_null(ir.items);

    memset(&r, 0, sizeof(r));
    assert_int_equal(pg_manual_mark_done(f->c, "x", "op", NULL, resolve_cb,
                                         &r, NULL), PG_OK);
    assert_int_equal(pg_loop_run(f->loop, &r.done, 4000), PG_OK);
    assert_int_equal(r.st, PG_ERR_REDIS);

    memset(&l, 0, sizeof(l));
    l.rows = json_array();
    assert_int_equal(pg_conn_list(f->c, 0, page_cb, done_cb, &l, NULL),
                     PG_OK);
    assert_int_equal(pg_loop_run(f->loop, &l.done, 4000), PG_OK);
    assert_int_equal(l.st, PG_ERR_REDIS);
    json_decref(l.rows);

    /* back up: the retry works */
    assert_int_equal(pgt_redis_restart(&g_srv), 0);
    {
        uint64_t until = pgt_now_ms() + 5000;
        do {
            o = run_op(f, ENSURE, &a);
        } while (o.st != PG_OK && pgt_now_ms() < until);
    }
    assert_int_equal(o.st, PG_OK);
    assert_int_equal(o.outcome, PG_CONN_QUEUED);
}

static void
test_redis_timeout(void **state)
{
    fx_t *f = *state;
    pg_account_t a = mkacct("fred", NULL, NULL, 0, 1);
    res_t o;

    open_conn(f, "{\"timeout_ms\":200}");
    pgt_redis_pause(&g_srv);
    o = run_op(f, ENSURE, &a);
    pgt_redis_resume(&g_srv);
    assert_int_equal(o.st, PG_ERR_TIMEOUT);
    assert_int_equal(o.retryable, 1);
    /* the next attempt reconnects and queues the item */
    {
        uint64_t until = pgt_now_ms() + 5000;
        do {
            o = run_op(f, ENSURE, &a);
        } while (o.st != PG_OK && pgt_now_ms() < until);
    }
    assert_int_equal(o.st, PG_OK);
    assert_int_equal(o.outcome, PG_CONN_QUEUED);
}

static void
test_cancel_and_args(void **state)
{
    fx_t *f = *state;
    pg_account_t a = mkacct("erin", NULL, NULL, 0, 1);
    pg_account_t bad = mkacct("", NULL, NULL, 0, 1);
    pg_conn_req_t *req = NULL;
    res_t o;
    int never = 0;
    char id[64];

    memset(&o, 0, sizeof(o));
    assert_int_equal(pg_conn_ensure(f->c, &bad, op_cb, &o, NULL),
                     PG_ERR_INVALID);
    assert_int_equal(pg_manual_list_open(f->c, 0, items_cb, NULL, NULL),
                     PG_ERR_INVALID);
    assert_int_equal(pg_manual_mark_done(f->c, "x", "", NULL, resolve_cb,
                                         NULL, NULL), PG_ERR_INVALID);
    assert_int_equal(pg_manual_item_id(f->c, "frobnicate", &a, id,
                                       sizeof(id)), PG_ERR_INVALID);

    assert_int_equal(pg_conn_ensure(f->c, &a, op_cb, &o, &req), PG_OK);
    assert_non_null(req);
    pg_conn_cancel(f->c, req);
    assert_int_equal(pg_loop_run(f->loop, &never, 100), PG_ERR_TIMEOUT);
    assert_int_equal(o.called, 0);
    /* pending requests are released by pg_connector_free */
    assert_int_equal(pg_conn_ensure(f->c, &a, op_cb, &o, NULL), PG_OK);
}

static int
group_setup(void **state)
{
    (void) state;
    return pgt_redis_start(&g_srv, NULL);
}

static int
group_teardown(void **state)
{
    (void) state;
    pgt_redis_stop(&g_srv);
    return 0;
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_done_provisioned, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_changed_state_new_item, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_disable_remove_reject, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_list_many_and_cap, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancel_and_args, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_redis_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_down, setup, teardown),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
