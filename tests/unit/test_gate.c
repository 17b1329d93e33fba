/*
 * Unit tests of the gate's request flows on the poll loop host, without
 * nginx: synchronous answers, ops parked on a provider fetch, and
 * cancellation from inside another op's callback.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "provgate/config.h"
#include "provgate/gate.h"
#include "provgate/loop.h"
#include "helpers/procs.h"

typedef struct {
    char dir[256];
    pgt_http_server_t http;
    pg_config_t *cfg;
    pg_loop_t *loop;
    pg_gate_t *gate;
} env_t;

typedef struct call {
    int calls;
    pg_gate_result_t *res;
    pg_gate_op_t *op;
    struct call *other;         /* cancel this one from our callback */
    int *done;
} call_t;

static void
write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int
setup(void **state)
{
    env_t *e = calloc(1, sizeof(*e));
    char cfg[2048], path[512];
    pg_err_t err = { "" };

    assert_non_null(e);
    snprintf(e->dir, sizeof(e->dir), "/tmp/pg-gate-XXXXXX");
    assert_non_null(mkdtemp(e->dir));
    assert_int_equal(pgt_http_server_start(&e->http), 0);
    write_file(e->dir, "session.key",
               "0123456789abcdef0123456789abcdef0123456789abcdef");
    write_file(e->dir, "policies.json",
               "{\"policies\": [{\"id\": \"all\", \"kind\": \"birthright\","
               " \"who\": {\"all\": []}, \"grants\": [{\"target\": \"app\","
               " \"entitlements\": []}]}]}");
    /* discovery answers slowly and with something that is not a discovery
     * document; Redis is not running (nothing listens on port 1) */
    snprintf(cfg, sizeof(cfg),
             "{\"redis\": {\"host\": \"127.0.0.1\", \"port\": 1},"
             " \"session\": {\"key_file\": \"session.key\", \"cache_ms\": 0},"
             " \"audit\": {\"file\": \"audit.jsonl\"},"
             " \"idps\": {\"main\": {\"type\": \"oidc\","
             "   \"issuer\": \"http://127.0.0.1:%d\","
             "   \"discovery_url\": \"http://127.0.0.1:%d/delay/300\","
             "   \"client_id\": \"c\", \"client_secret\": \"s\","
             "   \"redirect_uri\": \"http://127.0.0.1:8080/cb\","
             "   \"scopes\": [\"openid\"]}},"
             " \"targets\": {\"app\": {\"type\": \"scim\","
             "   \"base_url\": \"http://127.0.0.1:%d/scim\","
             "   \"auth\": {\"type\": \"none\"},"
             "   \"attributes\": {\"userName\": \"${username}\"}}},"
             " \"policy_files\": [\"policies.json\"]}",
             e->http.port, e->http.port, e->http.port);
    write_file(e->dir, "provgate.json", cfg);
    snprintf(path, sizeof(path), "%s/provgate.json", e->dir);
    assert_int_equal(pg_config_load(path, &e->cfg, &err), PG_OK);
    assert_int_equal(pg_loop_new(&e->loop), PG_OK);
    pg_loop_set_log_level(e->loop, PG_LOG_ERROR);
    assert_int_equal(pg_gate_new(e->cfg, pg_loop_host(e->loop), &e->gate,
                                 &err), PG_OK);
    *state = e;
    return 0;
}

static int
teardown(void **state)
{
    env_t *e = *state;
    char cmd[600];

    pg_gate_free(e->gate);
    pg_loop_free(e->loop);
    pg_config_free(e->cfg);
    pgt_http_server_stop(&e->http);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->dir);
    assert_int_equal(system(cmd), 0);
    free(e);
    return 0;
}

static void
on_result(void *arg, pg_gate_result_t *res)
{
    call_t *c = arg;

    c->calls++;
    c->res = res;
    c->op = NULL;
    if (c->other != NULL && c->other->op != NULL) {
        /* the first op to be answered withdraws its sibling, as nginx
         * does when closing a connection finalizes sibling streams */
        pg_gate_cancel(c->other->op);
        c->other->op = NULL;
    }
    (*c->done)++;
}

static void
browser_req(pg_gate_req_t *req)
{
    memset(req, 0, sizeof(*req));
    req->idp = "main";
    req->app = "app";
    req->method = "GET";
    req->uri = "/x";
    req->uri_len = 2;
    req->wants_html = 1;
    req->client_ip = "127.0.0.1";
}

/* An API client without a session is answered at once: 401 JSON. */
static void
test_api_without_session_is_sync_401(void **state)
{
    env_t *e = *state;
    pg_gate_req_t req;
    pg_gate_op_t *op = NULL;
    pg_gate_result_t *res = NULL;
    int done = 0;
    call_t c = { 0, NULL, NULL, NULL, &done };

    browser_req(&req);
    req.wants_html = 0;
    assert_int_equal(pg_gate_access(e->gate, &req, on_result, &c, &op, &res),
                     PG_OK);
    assert_null(op);
    assert_non_null(res);
    assert_int_equal(res->kind, PG_RES_PAGE);
    assert_int_equal(res->status, 401);
    assert_non_null(strstr(res->body, "\"login_required\""));
    assert_int_equal(c.calls, 0);
    pg_gate_result_free(res);
}

/* A tampered cookie on an API request: still 401, never an error. */
static void
test_tampered_cookie_is_no_session(void **state)
{
    env_t *e = *state;
    pg_gate_req_t req;
    pg_gate_op_t *op = NULL;
    pg_gate_result_t *res = NULL;
    const char *cookies[] = { "a=b; provgate_session=v1.AAAAtampered; c=d" };
    int done = 0;
    call_t c = { 0, NULL, NULL, NULL, &done };

    browser_req(&req);
    req.wants_html = 0;
    req.cookies = cookies;
    req.ncookies = 1;
    assert_int_equal(pg_gate_access(e->gate, &req, on_result, &c, &op, &res),
                     PG_OK);
    assert_null(op);
    assert_non_null(res);
    assert_int_equal(res->status, 401);
    pg_gate_result_free(res);
}

/*
 * Two browsers park on the same discovery fetch; it fails (not a discovery
 * document), both are woken, and the first answered cancels the other.
 * The cancelled one must never be called (and, under ASan, never touched
 * after it is freed).
 */
static void
test_cancel_sibling_while_waking(void **state)
{
    env_t *e = *state;
    pg_gate_req_t req;
    pg_gate_result_t *sync = NULL;
    int done = 0;
    call_t a = { 0, NULL, NULL, NULL, &done };
    call_t b = { 0, NULL, NULL, NULL, &done };

    a.other = &b;
    b.other = &a;
    browser_req(&req);
    assert_int_equal(pg_gate_access(e->gate, &req, on_result, &a, &a.op,
                                    &sync), PG_OK);
    assert_null(sync);
    assert_non_null(a.op);
    assert_int_equal(pg_gate_access(e->gate, &req, on_result, &b, &b.op,
                                    &sync), PG_OK);
    assert_null(sync);
    assert_non_null(b.op);

    assert_int_equal(pg_loop_run(e->loop, &done, 5000), PG_OK);
    /* give a wrongly surviving callback the chance to run */
    assert_int_equal(pg_loop_run(e->loop, &(int){ 0 }, 300), PG_ERR_TIMEOUT);

    assert_int_equal(a.calls + b.calls, 1);
    {
        call_t *answered = a.calls ? &a : &b;

        assert_int_equal(answered->res->status, 503);
        assert_non_null(strstr(answered->res->body, "idp_unavailable"));
        pg_gate_result_free(answered->res);
    }
}

/* A parked op cancelled before the fetch ends is never called; the other
 * one still gets its answer. */
static void
test_cancel_parked_op(void **state)
{
    env_t *e = *state;
    pg_gate_req_t req;
    pg_gate_result_t *sync = NULL;
    int done = 0;
    call_t a = { 0, NULL, NULL, NULL, &done };
    call_t b = { 0, NULL, NULL, NULL, &done };

    browser_req(&req);
    assert_int_equal(pg_gate_access(e->gate, &req, on_result, &a, &a.op,
                                    &sync), PG_OK);
    assert_int_equal(pg_gate_access(e->gate, &req, on_result, &b, &b.op,
                                    &sync), PG_OK);
    pg_gate_cancel(a.op);
    a.op = NULL;

    assert_int_equal(pg_loop_run(e->loop, &done, 5000), PG_OK);
    assert_int_equal(pg_loop_run(e->loop, &(int){ 0 }, 300), PG_ERR_TIMEOUT);
    assert_int_equal(a.calls, 0);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.res->status, 503);
    pg_gate_result_free(b.res);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_api_without_session_is_sync_401,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_tampered_cookie_is_no_session,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_sibling_while_waking,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_parked_op, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
