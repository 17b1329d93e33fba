/* Unit tests: src/event/http.c against a scripted local HTTP server. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "provgate/loop.h"
#include "provgate/http.h"
#include "helpers/procs.h"

static pgt_http_server_t g_srv;
static int g_in_start;         /* set around pg_http_start() */

#define NHDR 4

typedef struct res {
    int called;
    int called_inside;
    pg_status_t st;
    long status;
    char *body;
    size_t body_len;
    const char *want[NHDR];    /* response headers to capture */
    char got[NHDR][256];
    int present[NHDR];
    uint64_t at_ms;
    int *done;
    int *count;                /* incremented per call (shared) */
} res_t;

static void
res_reset(res_t *r)
{
    free(r->body);
    memset(r, 0, sizeof(*r));
}

static void
res_cb(void *arg, pg_status_t st, const pg_http_response_t *resp)
{
    res_t *r = arg;
    int i;

    r->called++;
    r->called_inside |= g_in_start;
    r->st = st;
    r->at_ms = pgt_now_ms();
    if (st == PG_OK) {
        assert_non_null(resp);
        assert_non_null(resp->body);
        assert_int_equal(resp->body[resp->body_len], '\0');
        r->status = resp->status;
        r->body = malloc(resp->body_len + 1);
        assert_non_null(r->body);
        memcpy(r->body, resp->body, resp->body_len + 1);
        r->body_len = resp->body_len;
        for (i = 0; i < NHDR && r->want[i] != NULL; i++) {
            const char *v = pg_http_response_header(resp, r->want[i]);
            r->present[i] = v != NULL;
            if (v != NULL) {
                snprintf(r->got[i], sizeof(r->got[i]), "%s", v);
            }
        }
    } else {
        assert_null(resp);
    }
    if (r->done != NULL) {
        *r->done = 1;
    }
    if (r->count != NULL) {
        ++*r->count;
    }
}

typedef struct fixture {
    pg_loop_t *loop;
    pg_http_t *h;
} fixture_t;

static void
fx_open(fixture_t *fx)
{
    assert_int_equal(pg_loop_new(&fx->loop), PG_OK);
    pg_loop_set_log_level(fx->loop, PG_LOG_ERROR);
    assert_int_equal(pg_http_new(pg_loop_host(fx->loop), &fx->h), PG_OK);
}

static void
fx_close(fixture_t *fx)
{
    pg_http_free(fx->h);
    pg_loop_free(fx->loop);
}

static void
url_for(char *out, size_t n, int port, const char *path)
{
    snprintf(out, n, "http://127.0.0.1:%d%s", port, path);
}

static pg_status_t
start(fixture_t *fx, const pg_http_request_t *req, res_t *res,
      pg_http_op_t **op)
{
    pg_status_t st;

    g_in_start = 1;
    st = pg_http_start(fx->h, req, res_cb, res, op);
    g_in_start = 0;
    return st;
}

/* Run one request to completion; res must be reset by the caller. */
static void
run1(fixture_t *fx, const pg_http_request_t *req, res_t *res)
{
    int done = 0;

    res->done = &done;
    assert_int_equal(start(fx, req, res, NULL), PG_OK);
    assert_int_equal(res->called, 0);
    assert_int_equal(pg_loop_run(fx->loop, &done, 10000), PG_OK);
    assert_int_equal(res->called, 1);
    assert_int_equal(res->called_inside, 0);
    res->done = NULL;
}

static int
setup_server(void **state)
{
    (void)state;
    unsetenv("http_proxy");
    unsetenv("HTTP_PROXY");
    unsetenv("https_proxy");
    unsetenv("HTTPS_PROXY");
    unsetenv("all_proxy");
    unsetenv("ALL_PROXY");
    return pgt_http_server_start(&g_srv);
}

static int
teardown_server(void **state)
{
    (void)state;
    pgt_http_server_stop(&g_srv);
    return 0;
}

static void
test_get_post_patch_echo(void **state)
{
    fixture_t fx;
    pg_http_request_t req;
    res_t res;
    char url[128];
    const char *hdrs[] = {"X-A: 1", "X-Other: two words"};
    const char *jhdr[] = {"Content-Type: application/json"};

    (void)state;
    fx_open(&fx);
    url_for(url, sizeof(url), g_srv.port, "/echo");

    /* GET with headers. */
    memset(&req, 0, sizeof(req));
    memset(&res, 0, sizeof(res));
    req.method = "GET";
    req.url = url;
    req.headers = hdrs;
    req.nheaders = 2;
    res.want[0] = "X-Echo-Method";
    run1(&fx, &req, &res);
    assert_int_equal(res.st, PG_OK);
    assert_int_equal(res.status, 200);
    assert_string_equal(res.got[0], "GET");
    assert_true(strncmp(res.body, "GET /echo\n", 10) == 0);
    assert_non_null(strstr(res.body, "\r\nX-A: 1\r\n"));
    assert_non_null(strstr(res.body, "X-Other: two words"));
    assert_null(strstr(res.body, "Content-Length"));
    res_reset(&res);

    /* POST with a JSON body and basic auth. */
    memset(&req, 0, sizeof(req));
    req.method = "POST";
    req.url = url;
    req.headers = jhdr;
    req.nheaders = 1;
    req.body = "{\"a\":1}";
    req.body_len = 7;
    req.basic_user = "user";
    req.basic_pass = "pa:ss";
    res.want[0] = "X-Echo-Method";
    run1(&fx, &req, &res);
    assert_int_equal(res.st, PG_OK);
    assert_int_equal(res.status, 200);
    assert_string_equal(res.got[0], "POST");
    assert_true(strncmp(res.body, "POST /echo\n", 11) == 0);
    assert_non_null(strstr(res.body, "Content-Type: application/json"));
    assert_non_null(strstr(res.body, "Content-Length: 7"));
    /* base64("user:pa:ss") */
    assert_non_null(strstr(res.body, "Authorization: Basic dXNlcjpwYTpzcw=="));
    assert_null(strstr(res.body, "Expect:"));
    assert_true(res.body_len > 8);
    assert_string_equal(res.body + res.body_len - 8, "\n{\"a\":1}");
    res_reset(&res);

    /* PATCH with a binary body (embedded NUL). */
    memset(&req, 0, sizeof(req));
    req.method = "PATCH";
    req.url = url;
    req.body = "a\0b";
    req.body_len = 3;
    res.want[0] = "X-Echo-Method";
    run1(&fx, &req, &res);
    assert_int_equal(res.st, PG_OK);
    assert_string_equal(res.got[0], "PATCH");
    assert_true(strncmp(res.body, "PATCH /echo\n", 12) == 0);
    assert_non_null(strstr(res.body, "Content-Length: 3"));
    assert_memory_equal(res.body + res.body_len - 4, "\na\0b", 4);
    res_reset(&res);

    /* DELETE without body; method defaults to GET when NULL. */
    memset(&req, 0, sizeof(req));
    req.method = "DELETE";
    req.url = url;
    res.want[0] = "X-Echo-Method";
    run1(&fx, &req, &res);
    assert_string_equal(res.got[0], "DELETE");
    res_reset(&res);
    req.method = NULL;
    res.want[0] = "X-Echo-Method";
    run1(&fx, &req, &res);
    assert_string_equal(res.got[0], "GET");
    res_reset(&res);
    fx_close(&fx);
}

/*
 * Easy handles are reused (reset) across requests to a target that closes
 * every connection (this server always answers "Connection: close"):
 * every request still gets a fresh connection and none of a previous
 * request's method, body, headers or credentials leaks into the next.
 * Sequential requests need one handle; 8 at once need 8, kept for later.
 */
static void
test_easy_reuse(void **state)
{
    fixture_t fx;
    pg_http_request_t req;
    res_t res, par[8];
    char url[128];
    const char *hdrs[] = {"X-Secret-Header: s1", "Content-Type: application/json"};
    uint64_t created = 0, reused = 0;
    int i, count = 0;

    (void)state;
    fx_open(&fx);
    url_for(url, sizeof(url), g_srv.port, "/echo");
    for (i = 0; i < 30; i++) {
        memset(&req, 0, sizeof(req));
        memset(&res, 0, sizeof(res));
        req.url = url;
        res.want[0] = "X-Echo-Method";
        if (i % 3 == 0) {
            req.method = "POST";
            req.headers = hdrs;
            req.nheaders = 2;
            req.body = "{\"b\":2}";
            req.body_len = 7;
            req.basic_user = "u";
            req.basic_pass = "p";
        } else if (i % 3 == 1) {
            req.method = "GET";
        } else {
            req.method = "DELETE";
        }
        run1(&fx, &req, &res);
        assert_int_equal(res.st, PG_OK);
        assert_int_equal(res.status, 200);
        assert_string_equal(res.got[0], req.method);
        if (i % 3 == 0) {
            assert_non_null(strstr(res.body, "X-Secret-Header: s1"));
            assert_non_null(strstr(res.body, "Authorization: Basic dTpw"));
            assert_string_equal(res.body + res.body_len - 8, "\n{\"b\":2}");
        } else {
            assert_null(strstr(res.body, "X-Secret-Header"));
            assert_null(strstr(res.body, "Authorization"));
            assert_null(strstr(res.body, "Content-Length"));
            assert_null(strstr(res.body, "{\"b\":2}"));
        }
        res_reset(&res);
    }
    pg_http_easy_stats(fx.h, &created, &reused);
    assert_int_equal(created, 1);
    assert_int_equal(reused, 29);

    /* 8 at once: 7 more handles, all pooled afterwards */
    for (i = 0; i < 8; i++) {
        memset(&par[i], 0, sizeof(par[i]));
        par[i].count = &count;
        memset(&req, 0, sizeof(req));
        req.url = url;
        assert_int_equal(start(&fx, &req, &par[i], NULL), PG_OK);
    }
    {
        uint64_t end = pgt_now_ms() + 10000;

        while (count < 8 && pgt_now_ms() < end) {
            int never = 0;
            pg_status_t st = pg_loop_run(fx.loop, &never, 20);
            assert_true(st == PG_OK || st == PG_ERR_TIMEOUT);
        }
        assert_int_equal(count, 8);
    }
    for (i = 0; i < 8; i++) {
        assert_int_equal(par[i].st, PG_OK);
        assert_int_equal(par[i].status, 200);
        res_reset(&par[i]);
    }
    pg_http_easy_stats(fx.h, &created, &reused);
    assert_int_equal(created, 8);
    assert_int_equal(reused, 30);
    for (i = 0; i < 8; i++) {
        memset(&req, 0, sizeof(req));
        memset(&res, 0, sizeof(res));
        req.url = url;
        run1(&fx, &req, &res);
        assert_int_equal(res.status, 200);
        res_reset(&res);
    }
    pg_http_easy_stats(fx.h, &created, &reused);
    assert_int_equal(created, 8);
    assert_int_equal(reused, 38);
    fx_close(&fx);
}

static void
test_statuses_pass_through(void **state)
{
    static const long codes[] = {201, 204, 301, 400, 404, 409, 500, 503};
    fixture_t fx;
    pg_http_request_t req;
    res_t res;
    char url[128], path[32];
    size_t i;

    (void)state;
    fx_open(&fx);
    for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        snprintf(path, sizeof(path), "/status/%ld", codes[i]);
        url_for(url, sizeof(url), g_srv.port, path);
        memset(&req, 0, sizeof(req));
        memset(&res, 0, sizeof(res));
        req.url = url;
        run1(&fx, &req, &res);
        assert_int_equal(res.st, PG_OK);
        assert_int_equal(res.status, codes[i]);
        if (codes[i] != 204) {
            char want[32];
            snprintf(want, sizeof(want), "status %ld", codes[i]);
            assert_string_equal(res.body, want);
        }
        res_reset(&res);
    }
    fx_close(&fx);
}

static void
test_timeouts(void **state)
{
    fixture_t fx;
    pg_http_request_t req;
    res_t res;
    char url[128];
    uint64_t t0;

    (void)state;
    fx_open(&fx);

    /* Server answers too late. */
    url_for(url, sizeof(url), g_srv.port, "/delay/3000");
    memset(&req, 0, sizeof(req));
    memset(&res, 0, sizeof(res));
    req.url = url;
    req.timeout_ms = 300;
    t0 = pgt_now_ms();
    run1(&fx, &req, &res);
    assert_int_equal(res.st, PG_ERR_TIMEOUT);
    assert_true(res.at_ms - t0 >= 290);
    assert_true(res.at_ms - t0 < 1500);
    res_reset(&res);

    /* Data keeps trickling but the whole transfer is over budget. */
    url_for(url, sizeof(url), g_srv.port, "/trickle/100/50");
    req.url = url;
    req.timeout_ms = 400;
    t0 = pgt_now_ms();
    run1(&fx, &req, &res);
    assert_int_equal(res.st, PG_ERR_TIMEOUT);
    assert_true(res.at_ms - t0 < 1500);
    res_reset(&res);

    /* A short trickle within budget completes. */
    url_for(url, sizeof(url), g_srv.port, "/trickle/5/20");
    req.url = url;
    req.timeout_ms = 3000;
    run1(&fx, &req, &res);
    assert_int_equal(res.st, PG_OK);
    assert_string_equal(res.body, "ttttt");
    res_reset(&res);
    fx_close(&fx);
}

static void
test_io_errors(void **state)
{
    fixture_t fx;
    pg_http_request_t req;
    res_t res;
    char url[128];
    uint64_t t0;

    (void)state;
    fx_open(&fx);
    /* Connection refused. */
    url_for(url, sizeof(url), pgt_free_port(), "/");
    memset(&req, 0, sizeof(req));
    memset(&res, 0, sizeof(res));
    req.url = url;
    t0 = pgt_now_ms();
    run1(&fx, &req, &res);
    assert_int_equal(res.st, PG_ERR_IO);
    assert_true(res.at_ms - t0 < 1000);
    res_reset(&res);

    /* Server closes without answering. */
    url_for(url, sizeof(url), g_srv.port, "/close");
    req.url = url;
    run1(&fx, &req, &res);
    assert_int_equal(res.st, PG_ERR_IO);
    res_reset(&res);
    fx_close(&fx);
}

static void
test_response_cap(void **state)
{
    fixture_t fx;
    pg_http_request_t req;
    res_t res;
    char url[128];

    (void)state;
    fx_open(&fx);
    memset(&req, 0, sizeof(req));
    memset(&res, 0, sizeof(res));

    /* Announced length over the cap. */
    url_for(url, sizeof(url), g_srv.port, "/huge/100000");
    req.url = url;
    req.max_response = 1000;
    run1(&fx, &req, &res);
    assert_int_equal(res.st, PG_ERR_TOO_LARGE);
    res_reset(&res);

    /* No length announced: the write callback enforces the cap. */
    url_for(url, sizeof(url), g_srv.port, "/stream/100000");
    req.url = url;
    run1(&fx, &req, &res);
    assert_int_equal(res.st, PG_ERR_TOO_LARGE);
    res_reset(&res);

    /* Exactly at the cap is fine (both kinds). */
    url_for(url, sizeof(url), g_srv.port, "/huge/1000");
    req.url = url;
    run1(&fx, &req, &res);
    assert_int_equal(res.st, PG_OK);
    assert_int_equal(res.body_len, 1000);
    assert_int_equal(res.body[999], 'x');
    res_reset(&res);
    url_for(url, sizeof(url), g_srv.port, "/stream/1000");
    req.url = url;
    run1(&fx, &req, &res);
    assert_int_equal(res.st, PG_OK);
    assert_int_equal(res.body_len, 1000);
    res_reset(&res);

    /* Default cap (1 MiB): a 2 MiB body is refused, 300 KB is fine. */
    req.max_response = 0;
    url_for(url, sizeof(url), g_srv.port, "/stream/2097152");
    req.url = url;
    run1(&fx, &req, &res);
    assert_int_equal(res.st, PG_ERR_TOO_LARGE);
    res_reset(&res);
    url_for(url, sizeof(url), g_srv.port, "/huge/300000");
    req.url = url;
    run1(&fx, &req, &res);
    assert_int_equal(res.st, PG_OK);
    assert_int_equal(res.body_len, 300000);
    res_reset(&res);
    fx_close(&fx);
}

static void
test_response_headers(void **state)
{
    fixture_t fx;
    pg_http_request_t req;
    res_t res;
    char url[128];

    (void)state;
    fx_open(&fx);
    memset(&req, 0, sizeof(req));
    memset(&res, 0, sizeof(res));
    url_for(url, sizeof(url), g_srv.port, "/headers");
    req.url = url;
    res.want[0] = "x-test";
    res.want[1] = "CONTENT-TYPE";
    res.want[2] = "X-Lower";
    res.want[3] = "X-Missing";
    run1(&fx, &req, &res);
    assert_int_equal(res.st, PG_OK);
    assert_string_equal(res.got[0], "two");   /* last one wins */
    assert_string_equal(res.got[1], "text/plain; charset=utf-8");
    assert_string_equal(res.got[2], "yes");   /* trimmed */
    assert_int_equal(res.present[3], 0);
    res_reset(&res);

    /* 40 extra headers are within the caps. */
    url_for(url, sizeof(url), g_srv.port, "/manyheaders/40");
    req.url = url;
    res.want[0] = "X-H39";
    res.want[1] = "x-h0";
    run1(&fx, &req, &res);
    assert_int_equal(res.st, PG_OK);
    assert_string_equal(res.got[0], "v39");
    assert_string_equal(res.got[1], "v0");
    res_reset(&res);

    /* 100 headers exceed the 64-header cap. */
    url_for(url, sizeof(url), g_srv.port, "/manyheaders/100");
    req.url = url;
    run1(&fx, &req, &res);
    assert_int_equal(res.st, PG_ERR_TOO_LARGE);
    res_reset(&res);
    fx_close(&fx);
}

typedef struct canceller {
    res_t res;
    pg_http_op_t *victim;
} canceller_t;

static void
cancel_other_cb(void *arg, pg_status_t st, const pg_http_response_t *resp)
{
    canceller_t *c = arg;

    res_cb(&c->res, st, resp);
    pg_http_cancel(c->victim);
}

static void
test_cancel(void **state)
{
    fixture_t fx;
    pg_http_request_t req, slow;
    res_t victim, other, v2, bad;
    canceller_t killer;
    pg_http_op_t *op = NULL;
    char url[128], slow_url[128], bad_url[] = "no scheme here";
    int done = 0;

    (void)state;
    fx_open(&fx);
    url_for(slow_url, sizeof(slow_url), g_srv.port, "/delay/300");
    memset(&slow, 0, sizeof(slow));
    slow.url = slow_url;

    /* Cancel right after start; a parallel request still completes. */
    memset(&victim, 0, sizeof(victim));
    memset(&other, 0, sizeof(other));
    assert_int_equal(start(&fx, &slow, &victim, &op), PG_OK);
    assert_non_null(op);
    other.done = &done;
    assert_int_equal(start(&fx, &slow, &other, NULL), PG_OK);
    pg_http_cancel(op);
    assert_int_equal(pg_loop_run(fx.loop, &done, 5000), PG_OK);
    assert_int_equal(other.st, PG_OK);
    assert_int_equal(victim.called, 0);

    /* Cancel an in-flight op from inside another op's callback. */
    memset(&killer, 0, sizeof(killer));
    memset(&v2, 0, sizeof(v2));
    url_for(url, sizeof(url), g_srv.port, "/status/200");
    memset(&req, 0, sizeof(req));
    req.url = url;
    done = 0;
    killer.res.done = &done;
    assert_int_equal(start(&fx, &slow, &v2, &killer.victim), PG_OK);
    assert_int_equal(pg_http_start(fx.h, &req, cancel_other_cb, &killer, NULL),
                     PG_OK);
    assert_int_equal(pg_loop_run(fx.loop, &done, 5000), PG_OK);
    assert_int_equal(killer.res.st, PG_OK);
    done = 0;
    assert_int_equal(pg_loop_run(fx.loop, &done, 600), PG_ERR_TIMEOUT);
    assert_int_equal(v2.called, 0);
    res_reset(&killer.res);

    /* Cancel an op whose (async) invalid-URL failure is pending. */
    memset(&bad, 0, sizeof(bad));
    memset(&req, 0, sizeof(req));
    req.url = bad_url;
    assert_int_equal(start(&fx, &req, &bad, &op), PG_OK);
    pg_http_cancel(op);
    done = 0;
    assert_int_equal(pg_loop_run(fx.loop, &done, 100), PG_ERR_TIMEOUT);
    assert_int_equal(bad.called, 0);

    /* Cancel a finished-but-undelivered op from inside an earlier op's
     * cb: two invalid-URL failures are delivered in the same batch. */
    memset(&killer, 0, sizeof(killer));
    memset(&bad, 0, sizeof(bad));
    memset(&req, 0, sizeof(req));
    req.url = bad_url;
    done = 0;
    killer.res.done = &done;
    g_in_start = 1;
    assert_int_equal(pg_http_start(fx.h, &req, cancel_other_cb, &killer, NULL),
                     PG_OK);
    g_in_start = 0;
    assert_int_equal(start(&fx, &req, &bad, &killer.victim), PG_OK);
    assert_int_equal(pg_loop_run(fx.loop, &done, 1000), PG_OK);
    assert_int_equal(killer.res.called, 1);
    assert_int_equal(killer.res.called_inside, 0);
    assert_int_equal(killer.res.st, PG_ERR_INVALID);
    done = 0;
    assert_int_equal(pg_loop_run(fx.loop, &done, 100), PG_ERR_TIMEOUT);
    assert_int_equal(bad.called, 0);

    res_reset(&other);
    fx_close(&fx);
}

static void
test_concurrent_50(void **state)
{
    enum { N = 50, DELAY = 300 };
    fixture_t fx;
    pg_http_request_t req;
    static res_t res[N];
    char url[128];
    int count = 0, done = 0, i;
    uint64_t t0, elapsed;

    (void)state;
    fx_open(&fx);
    url_for(url, sizeof(url), g_srv.port, "/delay/300");
    memset(&req, 0, sizeof(req));
    req.url = url;
    memset(res, 0, sizeof(res));
    t0 = pgt_now_ms();
    for (i = 0; i < N; i++) {
        res[i].count = &count;
        assert_int_equal(start(&fx, &req, &res[i], NULL), PG_OK);
    }
    while (count < N && pgt_now_ms() - t0 < 20000) {
        done = 0;
        assert_int_not_equal(pg_loop_run(fx.loop, &done, 50), PG_ERR_BUSY);
    }
    elapsed = pgt_now_ms() - t0;
    assert_int_equal(count, N);
    for (i = 0; i < N; i++) {
        assert_int_equal(res[i].called, 1);
        assert_int_equal(res[i].st, PG_OK);
        assert_int_equal(res[i].status, 200);
        assert_string_equal(res[i].body, "delayed");
        res_reset(&res[i]);
    }
    /* Concurrent: about one delay, certainly not 50 of them. */
    assert_true(elapsed >= DELAY);
    assert_true(elapsed < 10 * DELAY);
    fx_close(&fx);
}

static void
test_invalid_url_async(void **state)
{
    static const char *const bad[] = {
        "not a url", "ftp://127.0.0.1/", "file:///etc/passwd", "", "http://",
    };
    fixture_t fx;
    pg_http_request_t req;
    res_t res;
    size_t i;

    (void)state;
    fx_open(&fx);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&req, 0, sizeof(req));
        memset(&res, 0, sizeof(res));
        req.url = bad[i];
        run1(&fx, &req, &res);  /* asserts: not called inside start */
        assert_int_equal(res.st, PG_ERR_INVALID);
    }
    fx_close(&fx);
}

static void
test_sync_invalid_args(void **state)
{
    fixture_t fx;
    pg_http_request_t req;
    res_t res;
    char url[128];
    const char *crlf[] = {"X-A: 1\r\nX-Injected: 1"};
    int done = 0;

    (void)state;
    fx_open(&fx);
    url_for(url, sizeof(url), g_srv.port, "/echo");
    memset(&res, 0, sizeof(res));
    memset(&req, 0, sizeof(req));
    req.url = url;
    req.headers = crlf;
    req.nheaders = 1;
    assert_int_equal(start(&fx, &req, &res, NULL), PG_ERR_INVALID);
    memset(&req, 0, sizeof(req));
    req.url = url;
    req.method = "GE T";
    assert_int_equal(start(&fx, &req, &res, NULL), PG_ERR_INVALID);
    req.method = "GET";
    req.body_len = 5; /* without body */
    assert_int_equal(start(&fx, &req, &res, NULL), PG_ERR_INVALID);
    assert_int_equal(pg_http_start(fx.h, NULL, res_cb, &res, NULL),
                     PG_ERR_INVALID);
    assert_int_equal(pg_loop_run(fx.loop, &done, 50), PG_ERR_TIMEOUT);
    assert_int_equal(res.called, 0);
    fx_close(&fx);
}

typedef struct freer {
    res_t res;
    pg_http_t *h;
} freer_t;

static void
free_client_cb(void *arg, pg_status_t st, const pg_http_response_t *resp)
{
    freer_t *f = arg;
    pg_http_request_t req;
    res_t dummy;

    res_cb(&f->res, st, resp);
    pg_http_free(f->h);
    memset(&req, 0, sizeof(req));
    memset(&dummy, 0, sizeof(dummy));
    req.url = "http://127.0.0.1:1/";
    assert_int_equal(pg_http_start(f->h, &req, res_cb, &dummy, NULL),
                     PG_ERR_CANCELLED);
}

static void
test_free_with_pending(void **state)
{
    fixture_t fx;
    pg_http_request_t req, fast;
    res_t res[3];
    freer_t f;
    char url[128], fast_url[128];
    int i, done = 0;

    (void)state;
    url_for(url, sizeof(url), g_srv.port, "/delay/1000");
    memset(&req, 0, sizeof(req));
    req.url = url;

    /* Free with transfers in flight (and one not even started). */
    fx_open(&fx);
    memset(res, 0, sizeof(res));
    for (i = 0; i < 3; i++) {
        assert_int_equal(start(&fx, &req, &res[i], NULL), PG_OK);
    }
    done = 0;
    assert_int_equal(pg_loop_run(fx.loop, &done, 100), PG_ERR_TIMEOUT);
    pg_http_free(fx.h);
    for (i = 0; i < 3; i++) {
        assert_int_equal(res[i].called, 1);
        assert_int_equal(res[i].st, PG_ERR_CANCELLED);
    }
    assert_int_equal(pg_loop_run(fx.loop, &done, 100), PG_ERR_TIMEOUT);
    pg_loop_free(fx.loop);

    /* Free from inside a callback while others are in flight. */
    fx_open(&fx);
    memset(res, 0, sizeof(res));
    memset(&f, 0, sizeof(f));
    f.h = fx.h;
    f.res.done = &done;
    url_for(fast_url, sizeof(fast_url), g_srv.port, "/status/200");
    memset(&fast, 0, sizeof(fast));
    fast.url = fast_url;
    for (i = 0; i < 3; i++) {
        assert_int_equal(start(&fx, &req, &res[i], NULL), PG_OK);
    }
    assert_int_equal(pg_http_start(fx.h, &fast, free_client_cb, &f, NULL),
                     PG_OK);
    done = 0;
    assert_int_equal(pg_loop_run(fx.loop, &done, 5000), PG_OK);
    assert_int_equal(f.res.st, PG_OK);
    for (i = 0; i < 3; i++) {
        assert_int_equal(res[i].called, 1);
        assert_int_equal(res[i].st, PG_ERR_CANCELLED);
    }
    done = 0;
    assert_int_equal(pg_loop_run(fx.loop, &done, 100), PG_ERR_TIMEOUT);
    res_reset(&f.res);
    pg_loop_free(fx.loop);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_post_patch_echo),
        cmocka_unit_test(test_easy_reuse),
        cmocka_unit_test(test_statuses_pass_through),
        cmocka_unit_test(test_timeouts),
        cmocka_unit_test(test_io_errors),
        cmocka_unit_test(test_response_cap),
        cmocka_unit_test(test_response_headers),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_concurrent_50),
        cmocka_unit_test(test_invalid_url_async),
        cmocka_unit_test(test_sync_invalid_args),
        cmocka_unit_test(test_free_with_pending),
    };

    return cmocka_run_group_tests(tests, setup_server, teardown_server);
}
