/*
 * Unit tests for the generic REST connector (src/connectors/rest/rest.c).
 *
 * The target is the real json-server 0.17.4 (tests/peers/node_modules),
 * started once for the group on 127.0.0.1 on a free port, in a temp
 * directory holding a copy of tests/peers/rest-target/db.json (json-server
 * rewrites its db file). tests/peers/rest-target/middleware.cjs only adds
 * bearer auth and fault switches (/_admin/faults) and logs the raw request
 * targets (/_admin/log); the resources behave as json-server does. Each
 * test resets the log and faults and uses its own account keys; what the
 * connector did is checked in json-server's data over plain HTTP.
 * If node or json-server is missing the group setup fails: nothing is
 * skipped.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <curl/curl.h>
#include <jansson.h>

#include "helpers/procs.h"
#include "provgate/connector.h"
#include "provgate/http.h"
#include "provgate/loop.h"
#include "provgate/rest.h"
#include "provgate/util.h"

#define TOKEN "rest-target-token"
#define BASIC_USER "prov"
#define BASIC_PASS "basic-Pa55-secret"
#define RUN_TIMEOUT_MS 10000

static struct {
    pid_t pid;
    int stdin_fd;              /* json-server exits when this closes */
    int port;
    char dir[PATH_MAX];
    char root[PATH_MAX];
    char base[64];
    pg_loop_t *loop;
    pg_http_t *http;
} G = { .pid = -1, .stdin_fd = -1 };

/* ---- the target -------------------------------------------------------- */

/* Repository root: the test binary is <root>/<build>/<dir>/test_rest,
 * or any build dir outside: then try the current directory. */
static int
find_root(char *out, size_t outsz)
{
    char exe[PATH_MAX], probe[PATH_MAX + 64];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    int i;

    if (n > 0) {
        exe[n] = '\0';
        for (i = 0; i < 3; i++) {
            char *slash = strrchr(exe, '/');

            if (slash == NULL) {
                break;
            }
            *slash = '\0';
            snprintf(probe, sizeof(probe), "%s/tests/peers/rest-target", exe);
            if (access(probe, R_OK) == 0) {
                snprintf(out, outsz, "%s", exe);
                return 0;
            }
        }
    }
    if (getcwd(exe, sizeof(exe)) == NULL) {
        return -1;
    }
    snprintf(probe, sizeof(probe), "%s/tests/peers/rest-target", exe);
    if (access(probe, R_OK) != 0) {
        return -1;
    }
    snprintf(out, outsz, "%s", exe);
    return 0;
}

static int
copy_file(const char *from, const char *to)
{
    char buf[8192];
    int in = open(from, O_RDONLY), out;
    ssize_t r;

    if (in < 0) {
        return -1;
    }
    out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (out < 0) {
        close(in);
        return -1;
    }
    while ((r = read(in, buf, sizeof(buf))) > 0) {
        if (write(out, buf, (size_t)r) != r) {
            r = -1;
            break;
        }
    }
    close(in);
    close(out);
    return r < 0 ? -1 : 0;
}

/* ---- blocking HTTP for the test side (libcurl easy) ------------------- */

typedef struct {
    char *buf;
    size_t len;
} sink_t;

static size_t
sink_write(char *p, size_t sz, size_t n, void *arg)
{
    sink_t *s = arg;
    size_t add = sz * n;
    char *nb = realloc(s->buf, s->len + add + 1);

    if (nb == NULL) {
        return 0;
    }
    memcpy(nb + s->len, p, add);
    s->buf = nb;
    s->len += add;
    s->buf[s->len] = '\0';
    return add;
}

/* method on the target; returns the status (0 if no answer), *out the
 * parsed JSON body (may be NULL). auth: send the bearer token. */
static long
target_call(const char *method, const char *path, const char *body,
            int auth, json_t **out)
{
    char url[512];
    sink_t s = { NULL, 0 };
    struct curl_slist *h = NULL;
    CURL *c = curl_easy_init();
    long status = 0;

    if (out != NULL) {
        *out = NULL;
    }
    if (c == NULL) {
        return 0;
    }
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", G.port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    h = curl_slist_append(h, "Content-Type: application/json");
    if (auth) {
        h = curl_slist_append(h, "Authorization: Bearer " TOKEN);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    }
    if (curl_easy_perform(c) == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    }
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (out != NULL && s.buf != NULL) {
        *out = json_loads(s.buf, JSON_DECODE_ANY, NULL);
    }
    free(s.buf);
    return status;
}

static int
target_start(void)
{
    char bin[PATH_MAX + 64], mw[PATH_MAX + 64], seed[PATH_MAX + 64];
    char db[PATH_MAX + 16], port[16];
    int in[2], devnull;
    uint64_t until;

    if (find_root(G.root, sizeof(G.root)) != 0) {
        fprintf(stderr, "test_rest: cannot find tests/peers/rest-target\n");
        return -1;
    }
    snprintf(bin, sizeof(bin), "%s/tests/peers/node_modules/.bin/json-server",
             G.root);
    snprintf(mw, sizeof(mw), "%s/tests/peers/rest-target/middleware.cjs",
             G.root);
    snprintf(seed, sizeof(seed), "%s/tests/peers/rest-target/db.json",
             G.root);
    if (access(bin, X_OK) != 0) {
        fprintf(stderr, "test_rest: missing %s (npm install in tests/peers)\n",
                bin);
        return -1;
    }
    snprintf(G.dir, sizeof(G.dir), "/tmp/pg-test-rest-XXXXXX");
    if (mkdtemp(G.dir) == NULL) {
        G.dir[0] = '\0';
        return -1;
    }
    snprintf(db, sizeof(db), "%s/db.json", G.dir);
    if (copy_file(seed, db) != 0) {
        return -1;
    }
    G.port = pgt_free_port();
    if (G.port <= 0 || pipe(in) != 0) {
        return -1;
    }
    snprintf(port, sizeof(port), "%d", G.port);
    G.pid = fork();
    if (G.pid < 0) {
        return -1;
    }
    if (G.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(in[0], 0);
        close(in[0]);
        close(in[1]);
        devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) {
            dup2(devnull, 1);
        }
        if (chdir(G.dir) != 0) {
            _exit(126);
        }
        setenv("REST_TARGET_TOKEN", TOKEN, 1);
        setenv("REST_TARGET_BASIC", BASIC_USER ":" BASIC_PASS, 1);
        setenv("REST_TARGET_EXIT_ON_STDIN_CLOSE", "1", 1);
        execl(bin, bin, db, "--host", "127.0.0.1", "--port", port,
              "--quiet", "--no-gzip", "--no-cors", "--middlewares", mw,
              (char *)NULL);
        fprintf(stderr, "test_rest: cannot run json-server: %s\n",
                strerror(errno));
        _exit(127);
    }
    close(in[0]);
    G.stdin_fd = in[1];
    snprintf(G.base, sizeof(G.base), "http://127.0.0.1:%d", G.port);
    until = pgt_now_ms() + 20000;
    while (pgt_now_ms() < until) {
        if (target_call("GET", "/_admin/log", NULL, 0, NULL) == 200) {
            return 0;
        }
        if (waitpid(G.pid, NULL, WNOHANG) == G.pid) {
            G.pid = -1;
            break;
        }
        pgt_sleep_ms(100);
    }
    fprintf(stderr, "test_rest: json-server did not become ready\n");
    return -1;
}

static void
target_stop(void)
{
    if (G.pid > 0) {
        kill(G.pid, SIGTERM);
        waitpid(G.pid, NULL, 0);
        G.pid = -1;
    }
    if (G.stdin_fd >= 0) {
        close(G.stdin_fd);
        G.stdin_fd = -1;
    }
    if (G.dir[0] != '\0') {
        /* only our own mkdtemp directory and what json-server wrote */
        DIR *d = opendir(G.dir);
        struct dirent *e;
        char p[PATH_MAX + 300];

        while (d != NULL && (e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
                continue;
            }
            snprintf(p, sizeof(p), "%s/%s", G.dir, e->d_name);
            unlink(p);
        }
        if (d != NULL) {
            closedir(d);
        }
        rmdir(G.dir);
        G.dir[0] = '\0';
    }
}

static void
faults(const char *json)
{
    assert_int_equal(target_call("POST", "/_admin/faults", json, 0, NULL),
                     200);
}

/* Requests logged by the middleware (new reference). */
static json_t *
target_log(void)
{
    json_t *l = NULL;

    assert_int_equal(target_call("GET", "/_admin/log", NULL, 0, &l), 200);
    assert_non_null(l);
    return l;
}

/* Logged requests with this method whose raw URL starts with prefix. */
static int
count_logged(const char *method, const char *prefix)
{
    json_t *l = target_log(), *r;
    size_t i;
    int n = 0;

    json_array_foreach(json_object_get(l, "requests"), i, r) {
        const char *m = json_string_value(json_object_get(r, "method"));
        const char *u = json_string_value(json_object_get(r, "url"));

        if (m != NULL && u != NULL && strcmp(m, method) == 0
            && strncmp(u, prefix, strlen(prefix)) == 0) {
            n++;
        }
    }
    json_decref(l);
    return n;
}

/* 1 when a request with exactly this method and raw URL was logged. */
static int
logged(const char *method, const char *url)
{
    json_t *l = target_log(), *r;
    size_t i;
    int found = 0;

    json_array_foreach(json_object_get(l, "requests"), i, r) {
        const char *m = json_string_value(json_object_get(r, "method"));
        const char *u = json_string_value(json_object_get(r, "url"));

        if (m != NULL && u != NULL && strcmp(m, method) == 0
            && strcmp(u, url) == 0) {
            found = 1;
        }
    }
    json_decref(l);
    return found;
}

/* The users json-server stores with this username (new reference). */
static json_t *
db_users(const char *username)
{
    char path[256];
    char *e = pg_urlencode(username, strlen(username));
    json_t *a = NULL;

    assert_non_null(e);
    snprintf(path, sizeof(path), "/users?username=%s", e);
    free(e);
    assert_int_equal(target_call("GET", path, NULL, 1, &a), 200);
    assert_true(json_is_array(a));
    return a;
}

/* ---- connector config ------------------------------------------------ */

static const char *BASE_CFG =
    "{"
    " \"type\": \"rest\","
    " \"auth\": {\"type\": \"bearer\", \"token\": \"" TOKEN "\"},"
    " \"timeout_ms\": 3000,"
    " \"operations\": {"
    "  \"lookup\": {\"path\": \"/users?username={key}\", \"id_path\": \"id\","
    "    \"error_path\": \"error\","
    "    \"headers\": {\"X-Provgate-Key\": \"{key}\"},"
    "    \"map\": {\"key\": \"username\", \"active\": \"active\","
    "             \"attrs\": {\"email\": \"email\", \"name\": \"name\"}}},"
    "  \"create\": {\"path\": \"/users\", \"id_path\": \"id\","
    "    \"error_path\": \"error\","
    "    \"body\": {\"username\": \"${key}\", \"email\": \"${attrs.email}\","
    "      \"name\": \"${attrs.name}\", \"active\": \"${active}\","
    "      \"modified\": \"${attrs.modified}\", \"groups\": \"${groups}\","
    "      \"note\": \"created for ${key} ($$0)\"}},"
    "  \"update\": {\"path\": \"/users/{id}\", \"error_path\": \"error\","
    "    \"body\": {\"email\": \"${attrs.email}\", \"name\": \"${attrs.name}\","
    "      \"active\": \"${active}\"}},"
    "  \"disable\": {\"method\": \"PATCH\", \"path\": \"/users/{id}\","
    "    \"body\": {\"active\": false}},"
    "  \"delete\": {\"path\": \"/users/{id}\"},"
    "  \"list\": {\"path\": \"/users\","
    "    \"paging\": {\"type\": \"page\", \"param\": \"_page\","
    "                 \"size_param\": \"_limit\", \"size\": 2},"
    "    \"since\": {\"param\": \"modified_gte\"},"
    "    \"map\": {\"key\": \"username\", \"id\": \"id\", \"active\": \"active\","
    "             \"modified\": \"modified\", \"attrs\": {\"email\": \"email\"}}}"
    " }"
    "}";

/* Key-as-id collection: path placeholders carry the key itself. */
static const char *ACCT_CFG =
    "{"
    " \"auth\": {\"type\": \"bearer\", \"token\": \"" TOKEN "\"},"
    " \"operations\": {"
    "  \"lookup\": {\"path\": \"/accounts/{key}\", \"id_path\": \"id\","
    "    \"not_found_status\": [404], \"map\": {\"attrs\": {\"mail\": \"mail\"}}},"
    "  \"create\": {\"path\": \"/accounts\", \"id_path\": \"id\","
    "    \"body\": {\"id\": \"${key}\", \"mail\": \"${attrs.mail}\"}},"
    "  \"update\": {\"method\": \"PUT\", \"path\": \"/accounts/{id}\","
    "    \"body\": {\"mail\": \"${attrs.mail}\"}},"
    "  \"delete\": {\"path\": \"/accounts/{id}\"}"
    " }"
    "}";

/* Parse a config text and set base_url to the running target. */
static json_t *
cfg_load(const char *text)
{
    json_error_t je;
    json_t *c = json_loads(text, 0, &je);

    if (c == NULL) {
        fprintf(stderr, "bad test config: %s (line %d col %d)\n", je.text,
                je.line, je.column);
    }
    assert_non_null(c);
    assert_int_equal(json_object_set_new(c, "base_url", json_string(G.base)),
                     0);
    return c;
}

/* Set (value non-NULL, reference stolen) or delete the member at dotted
 * path inside cfg; intermediate objects must exist. */
static void
cfg_set(json_t *cfg, const char *dotted, json_t *value)
{
    char buf[256], *p, *dot;
    json_t *o = cfg;

    snprintf(buf, sizeof(buf), "%s", dotted);
    p = buf;
    while ((dot = strchr(p, '.')) != NULL) {
        *dot = '\0';
        o = json_object_get(o, p);
        assert_non_null(o);
        p = dot + 1;
    }
    if (value == NULL) {
        json_object_del(o, p);
    } else {
        assert_int_equal(json_object_set_new(o, p, value), 0);
    }
}

static pg_connector_t *
conn_new(json_t *cfg)
{
    pg_connector_t *c = NULL;
    pg_err_t err;

    err.msg[0] = '\0';
    if (pg_rest_connector_new(pg_loop_host(G.loop), G.http, "app", cfg, &c,
                              &err) != PG_OK) {
        fprintf(stderr, "config error: %s\n", err.msg);
    }
    assert_non_null(c);
    json_decref(cfg);
    return c;
}

/* ---- running operations ----------------------------------------------- */

typedef struct res {
    int done;
    int calls;
    pg_status_t st;
    pg_conn_outcome_t oc;
    char id[PG_CONN_KEY_MAX + 1];
    char changes[256];
    int retryable;
    uint64_t retry_after_ms;
    char error[PG_CONN_ERROR_MAX + 1];
} res_t;

static void
on_result(void *arg, pg_status_t st, const pg_conn_result_t *res)
{
    res_t *r = arg;
    json_t *v;
    size_t i;

    r->calls++;
    r->done = 1;
    r->st = st;
    r->oc = res->outcome;
    snprintf(r->id, sizeof(r->id), "%s", res->id != NULL ? res->id : "(null)");
    r->changes[0] = '\0';
    json_array_foreach(res->changes, i, v) {
        size_t l = strlen(r->changes);

        snprintf(r->changes + l, sizeof(r->changes) - l, "%s%s",
                 i > 0 ? "," : "", json_string_value(v));
    }
    r->retryable = res->retryable;
    r->retry_after_ms = res->retry_after_ms;
    snprintf(r->error, sizeof(r->error), "%s",
             res->error != NULL ? res->error : "(null)");
}

typedef enum { DO_ENSURE, DO_DISABLE, DO_REMOVE } what_t;

/* Start one operation and run the loop until its callback ran. */
static void
run_op(pg_connector_t *c, what_t what, const pg_account_t *a, res_t *r)
{
    pg_conn_req_t *req = NULL;
    pg_status_t st;

    memset(r, 0, sizeof(*r));
    st = what == DO_ENSURE    ? pg_conn_ensure(c, a, on_result, r, &req)
         : what == DO_DISABLE ? pg_conn_disable(c, a, on_result, r, &req)
                              : pg_conn_remove(c, a, on_result, r, &req);
    assert_int_equal(st, PG_OK);
    assert_non_null(req);
    assert_int_equal(r->calls, 0);   /* never from inside the start call */
    assert_int_equal(pg_loop_run(G.loop, &r->done, RUN_TIMEOUT_MS), PG_OK);
    assert_int_equal(r->calls, 1);
}

static void
spin(unsigned ms)
{
    int never = 0;

    assert_int_equal(pg_loop_run(G.loop, &never, ms), PG_ERR_TIMEOUT);
}

/* An account with email/name attributes; attrs is borrowed. */
static pg_account_t
account(const char *key, json_t *attrs, int active)
{
    static const char *const grps[] = { "staff", "eng/ops" };

    pg_account_t a;

    memset(&a, 0, sizeof(a));
    a.key = key;
    a.attrs = attrs;
    a.active = active;
    a.groups = grps;
    a.ngroups = 2;
    return a;
}

/* ---- group setup ------------------------------------------------------- */

static int
group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
        return -1;
    }
    if (target_start() != 0) {
        target_stop();
        return -1;
    }
    if (pg_loop_new(&G.loop) != PG_OK
        || pg_http_new(pg_loop_host(G.loop), &G.http) != PG_OK) {
        return -1;
    }
    return 0;
}

static int
group_teardown(void **state)
{
    (void)state;
    pg_http_free(G.http);
    pg_loop_free(G.loop);
    target_stop();
    curl_global_cleanup();
    return 0;
}

static int
test_setup(void **state)
{
    (void)state;
    assert_int_equal(target_call("POST", "/_admin/reset", "{}", 0, NULL),
                     200);
    return 0;
}

/* ---- list ---- */

typedef struct lst {
    int done;
    int done_calls;
    pg_status_t st;
    char error[PG_CONN_ERROR_MAX + 1];
    int pages;
    size_t max_n;
    size_t n;
    char keys[64][64];
    char emails[64][64];
    uint64_t modified[64];
    int active[64];
    int stop_after;            /* return non-zero after this many pages */
    int cancel_in_page;
    pg_connector_t *c;
    pg_conn_req_t *req;
    const char *groups_of;     /* record the groups of this key */
    char groups_seen[256];
} lst_t;

static int
on_page(void *arg, const pg_listed_account_t *accts, size_t n)
{
    lst_t *l = arg;
    size_t i;

    l->pages++;
    if (n > l->max_n) {
        l->max_n = n;
    }
    for (i = 0; i < n && l->n < 64; i++, l->n++) {
        const char *e = json_string_value(json_object_get(accts[i].attrs,
                                                          "email"));

        snprintf(l->keys[l->n], sizeof(l->keys[0]), "%s", accts[i].key);
        snprintf(l->emails[l->n], sizeof(l->emails[0]), "%s",
                 e != NULL ? e : "");
        l->modified[l->n] = accts[i].modified_ms;
        l->active[l->n] = accts[i].active;
        if (l->groups_of != NULL && strcmp(accts[i].key, l->groups_of) == 0) {
            size_t g;

            for (g = 0; g < accts[i].ngroups; g++) {
                size_t len = strlen(l->groups_seen);

                snprintf(l->groups_seen + len, sizeof(l->groups_seen) - len,
                         "%s%s", g > 0 ? "," : "", accts[i].groups[g]);
            }
        }
    }
    if (l->cancel_in_page) {
        pg_conn_cancel(l->c, l->req);
        l->done = 1;
        return 0;
    }
    return l->stop_after > 0 && l->pages >= l->stop_after;
}

static void
on_list_done(void *arg, pg_status_t st, const char *error)
{
    lst_t *l = arg;

    l->done = 1;
    l->done_calls++;
    l->st = st;
    snprintf(l->error, sizeof(l->error), "%s", error != NULL ? error : "");
}

static void
run_list(pg_connector_t *c, uint64_t since, lst_t *l)
{
    assert_int_equal(pg_conn_list(c, since, on_page, on_list_done, l,
                                  &l->req), PG_OK);
    assert_int_equal(l->pages + l->done_calls, 0);
    assert_int_equal(pg_loop_run(G.loop, &l->done, RUN_TIMEOUT_MS), PG_OK);
}

static int
has_key(const lst_t *l, const char *k)
{
    size_t i;

    for (i = 0; i < l->n; i++) {
        if (strcmp(l->keys[i], k) == 0) {
            return (int)i + 1;
        }
    }
    return 0;
}

/* ---- tests ------------------------------------------------------------- */

typedef struct cfg_case {
    const char *path;          /* dotted member to set/delete */
    const char *value;         /* JSON text, or NULL to delete */
    const char *want;          /* expected start of the error message */
} cfg_case_t;

/* Every config error is PG_ERR_CONFIG with the JSON path. */
static void
test_config_errors(void **state)
{
    static const cfg_case_t cases[] = {
        { "bogus", "1", "targets.app.connector.bogus: unknown" },
        { "type", "\"scim\"", "targets.app.connector.type: must be" },
        { "base_url", NULL, "targets.app.connector.base_url: required" },
        { "base_url", "\"ftp://x\"", "targets.app.connector.base_url: must" },
        { "base_url", "\"http://h/p?q=1\"", "targets.app.connector.base_url:" },
        { "timeout_ms", "5", "targets.app.connector.timeout_ms: must be" },
        { "auth", NULL, "targets.app.connector.auth: required" },
        { "auth.type", "\"magic\"", "targets.app.connector.auth.type: must" },
        { "auth.token_file", "\"/nonexistent/tok\"",
          "targets.app.connector.auth: set exactly one" },
        { "auth.extra", "1", "targets.app.connector.auth.extra: unknown" },
        { "tls", "{\"client_cert\": \"/dev/null\"}",
          "targets.app.connector.tls: set both" },
        { "tls", "{\"ca_file\": \"/nonexistent/ca.pem\"}",
          "targets.app.connector.tls.ca_file: cannot read" },
        { "tls", "{\"cafile\": \"/c.pem\"}",
          "targets.app.connector.tls.cafile: unknown" },
        { "operations.lookup", NULL,
          "targets.app.connector.operations.lookup: required" },
        { "operations.create", NULL,
          "targets.app.connector.operations.create: required" },
        { "operations.rename", "{}",
          "targets.app.connector.operations.rename: unknown" },
        { "operations.create.nope", "1",
          "targets.app.connector.operations.create.nope: unknown" },
        { "operations.create.map", "{}",
          "targets.app.connector.operations.create.map: unknown" },
        { "operations.lookup.path", "\"/users/{bogus}\"",
          "targets.app.connector.operations.lookup.path: unknown placeholder" },
        { "operations.lookup.path", "\"/users/{key\"",
          "targets.app.connector.operations.lookup.path: unterminated" },
        { "operations.lookup.path", "\"users\"",
          "targets.app.connector.operations.lookup.path: must start" },
        { "operations.lookup.path", "\"/users/{groups}\"",
          "targets.app.connector.operations.lookup.path: \"groups\"" },
        { "operations.lookup.id_path", "\"items[x]\"",
          "targets.app.connector.operations.lookup.id_path: bad index" },
        { "operations.lookup.id_path", NULL,
          "targets.app.connector.operations.lookup.id_path: required" },
        { "operations.lookup.map.key", "\"a..b\"",
          "targets.app.connector.operations.lookup.map.key: empty name" },
        { "operations.lookup.map.attrs", "{\"email\": 3}",
          "targets.app.connector.operations.lookup.map.attrs.email: must be" },
        { "operations.lookup.success_status", "[\"abc\"]",
          "targets.app.connector.operations.lookup.success_status[0]: must" },
        { "operations.lookup.method", "\"GE T\"",
          "targets.app.connector.operations.lookup.method: must be" },
        { "operations.create.body", "{\"a\": [\"${attrs.}\"]}",
          "targets.app.connector.operations.create.body: unknown placeholder" },
        { "operations.create.body", "{\"a\": \"cost $5\"}",
          "targets.app.connector.operations.create.body: lone '$'" },
        { "operations.create.body", "{\"a\": \"${groups} x\"}",
          "targets.app.connector.operations.create.body: \"groups\"" },
        { "operations.create.headers", "{\"X-A\": \"a\\r\\nb\"}",
          "targets.app.connector.operations.create.headers.X-A: control" },
        { "operations.create.headers", "{\"Bad Name\": \"x\"}",
          "targets.app.connector.operations.create.headers.Bad Name: bad" },
        { "operations.create.headers", "{\"authorization\": \"x\"}",
          "targets.app.connector.operations.create.headers.authorization: "
          "set by auth" },
        { "operations.list.map", NULL,
          "targets.app.connector.operations.list.map: required" },
        { "operations.list.map.id", NULL,
          "targets.app.connector.operations.list.map.id: required" },
        { "operations.list.paging.type", "\"weird\"",
          "targets.app.connector.operations.list.paging.type: must" },
        { "operations.list.paging.size", "5000",
          "targets.app.connector.operations.list.paging.size: must be" },
        { "operations.list.since.format", "\"days\"",
          "targets.app.connector.operations.list.since.format: must" },
        { "operations.delete.paging", "{}",
          "targets.app.connector.operations.delete.paging: unknown" },
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *cfg = cfg_load(BASE_CFG);
        pg_connector_t *c = (pg_connector_t *)&c;
        pg_err_t err;
        pg_status_t st;

        if (cases[i].value != NULL) {
            json_t *v = json_loads(cases[i].value, JSON_DECODE_ANY, NULL);

            assert_non_null(v);
            cfg_set(cfg, cases[i].path, v);
        } else {
            cfg_set(cfg, cases[i].path, NULL);
        }
        memset(&err, 0, sizeof(err));
        st = pg_rest_connector_new(pg_loop_host(G.loop), G.http, "app", cfg,
                                   &c, &err);
        if (st != PG_ERR_CONFIG
            || strncmp(err.msg, cases[i].want, strlen(cases[i].want)) != 0) {
            fprintf(stderr, "case %zu (%s): got %s \"%s\"\n", i,
                    cases[i].path, pg_status_str(st), err.msg);
        }
        assert_int_equal(st, PG_ERR_CONFIG);
        assert_null(c);
        assert_memory_equal(err.msg, cases[i].want, strlen(cases[i].want));
        /* never a secret in an error */
        assert_null(strstr(err.msg, TOKEN));
        json_decref(cfg);
    }
}

/* A valid config: type, caps; the token file is read (and trimmed). */
static void
test_config_ok_and_caps(void **state)
{
    char tokfile[PATH_MAX + 16];
    json_t *cfg = cfg_load(BASE_CFG);
    pg_connector_t *c;
    FILE *f;
    res_t r;
    pg_account_t a = account("seed-user", NULL, 1);

    (void)state;
    c = conn_new(json_incref(cfg));
    assert_string_equal(c->vt->type, "rest");
    assert_string_equal(c->name, "app");
    assert_int_equal(c->caps, PG_CONN_CAP_LIST | PG_CONN_CAP_INCREMENTAL
                                  | PG_CONN_CAP_DISABLE);
    pg_connector_free(c);

    /* the caller may name the JSON path used in errors */
    {
        json_t *bad = cfg_load(BASE_CFG);
        pg_connector_t *none = NULL;
        pg_err_t err;

        cfg_set(bad, "operations.lookup.path", json_string("/u/{nope}"));
        assert_int_equal(pg_rest_connector_new_at(pg_loop_host(G.loop),
                                                  G.http, "app", bad,
                                                  "connectors[3]", &none,
                                                  &err), PG_ERR_CONFIG);
        assert_null(none);
        assert_memory_equal(err.msg, "connectors[3].operations.lookup.path:",
                            strlen("connectors[3].operations.lookup.path:"));
        json_decref(bad);
    }

    /* token from a file (with a trailing newline) works against the target */
    snprintf(tokfile, sizeof(tokfile), "%s/token", G.dir);
    f = fopen(tokfile, "w");
    assert_non_null(f);
    fputs(TOKEN "\n", f);
    fclose(f);
    cfg_set(cfg, "auth", json_pack("{s:s, s:s}", "type", "bearer",
                                   "token_file", tokfile));
    cfg_set(cfg, "operations.list", NULL);
    cfg_set(cfg, "operations.disable", NULL);
    cfg_set(cfg, "operations.update", NULL);
    cfg_set(cfg, "operations.delete", NULL);
    c = conn_new(cfg);
    assert_int_equal(c->caps, 0);
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.oc, PG_CONN_UNCHANGED);
    assert_string_equal(r.id, "1");
    /* no delete/disable configured: refused synchronously */
    {
        pg_conn_req_t *req = (pg_conn_req_t *)&req;

        assert_int_equal(pg_conn_remove(c, &a, on_result, &r, &req),
                         PG_ERR_INVALID);
        assert_null(req);
        assert_int_equal(pg_conn_disable(c, &a, on_result, &r, &req),
                         PG_ERR_INVALID);
    }
    pg_connector_free(c);
    unlink(tokfile);
}

/* create, then ensure again: UNCHANGED and still exactly one record. */
static void
test_create_then_unchanged(void **state)
{
    pg_connector_t *c = conn_new(cfg_load(BASE_CFG));
    json_t *attrs = json_pack("{s:s, s:s, s:i}", "email", "alice@example.org",
                              "name", "Alice Liddell", "unmapped", 5);
    pg_account_t a = account("alice", attrs, 1);
    json_t *users, *u;
    char id[PG_CONN_KEY_MAX + 1];
    res_t r;

    (void)state;
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.oc, PG_CONN_CREATED);
    assert_string_not_equal(r.id, "");
    snprintf(id, sizeof(id), "%s", r.id);
    users = db_users("alice");
    assert_int_equal(json_array_size(users), 1);
    u = json_array_get(users, 0);
    assert_string_equal(json_string_value(json_object_get(u, "email")),
                        "alice@example.org");
    /* typed values: active is a JSON boolean, absent attrs are left out */
    assert_true(json_is_true(json_object_get(u, "active")));
    assert_null(json_object_get(u, "modified"));
    assert_null(json_object_get(u, "unmapped"));
    /* "${groups}": a JSON array of the desired groups */
    assert_int_equal(json_array_size(json_object_get(u, "groups")), 2);
    assert_string_equal(json_string_value(json_array_get(
                            json_object_get(u, "groups"), 1)), "eng/ops");
    assert_string_equal(json_string_value(json_object_get(u, "note")),
                        "created for alice ($0)");
    json_decref(users);
    assert_true(logged("GET", "/users?username=alice"));
    assert_int_equal(count_logged("POST", "/users"), 1);

    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.oc, PG_CONN_UNCHANGED);
    assert_string_equal(r.id, id);
    assert_string_equal(r.changes, "");
    users = db_users("alice");
    assert_int_equal(json_array_size(users), 1);
    json_decref(users);
    assert_int_equal(count_logged("POST", "/users"), 1);
    assert_int_equal(count_logged("PATCH", "/users"), 0);
    /* two lookups and the test's own two reads */
    assert_int_equal(count_logged("GET", "/users?username=alice"), 4);
    json_decref(attrs);
    pg_connector_free(c);
}

/* A changed attribute is UPDATED (only the changed name reported); the
 * active flag is compared too. */
static void
test_attribute_change_updated(void **state)
{
    pg_connector_t *c = conn_new(cfg_load(BASE_CFG));
    json_t *attrs = json_pack("{s:s, s:s}", "email", "bob@example.org",
                              "name", "Bob");
    pg_account_t a = account("bob", attrs, 1);
    json_t *users;
    char id[PG_CONN_KEY_MAX + 1], url[PG_CONN_KEY_MAX + 16];
    res_t r;

    (void)state;
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.oc, PG_CONN_CREATED);
    snprintf(id, sizeof(id), "%s", r.id);

    json_object_set_new(attrs, "email", json_string("bob@new.example.org"));
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.oc, PG_CONN_UPDATED);
    assert_string_equal(r.changes, "email");
    assert_string_equal(r.id, id);
    snprintf(url, sizeof(url), "/users/%s", id);
    assert_true(logged("PATCH", url));
    users = db_users("bob");
    assert_int_equal(json_array_size(users), 1);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(users, 0), "email")),
                        "bob@new.example.org");
    json_decref(users);

    /* same again: nothing to do */
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.oc, PG_CONN_UNCHANGED);
    assert_int_equal(count_logged("PATCH", "/users/"), 1);

    /* desired inactive */
    a.active = 0;
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.oc, PG_CONN_UPDATED);
    assert_string_equal(r.changes, "active");
    users = db_users("bob");
    assert_true(json_is_false(json_object_get(json_array_get(users, 0),
                                              "active")));
    json_decref(users);
    json_decref(attrs);
    pg_connector_free(c);
}

/* disable: DISABLED, then UNCHANGED; unknown account: NOT_FOUND. */
static void
test_disable(void **state)
{
    pg_connector_t *c = conn_new(cfg_load(BASE_CFG));
    json_t *attrs = json_pack("{s:s}", "email", "carl@example.org");
    pg_account_t a = account("carl", attrs, 1);
    pg_account_t ghost = account("ghost-user", NULL, 1);
    json_t *users;
    res_t r;

    (void)state;
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.oc, PG_CONN_CREATED);
    run_op(c, DO_DISABLE, &a, &r);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.oc, PG_CONN_DISABLED);
    users = db_users("carl");
    assert_true(json_is_false(json_object_get(json_array_get(users, 0),
                                              "active")));
    /* the disable body is fixed: the email stays */
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(users, 0), "email")),
                        "carl@example.org");
    json_decref(users);
    assert_int_equal(count_logged("PATCH", "/users/"), 1);

    run_op(c, DO_DISABLE, &a, &r);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.oc, PG_CONN_UNCHANGED);
    assert_int_equal(count_logged("PATCH", "/users/"), 1);

    run_op(c, DO_DISABLE, &ghost, &r);
    assert_int_equal(r.st, PG_ERR_NOT_FOUND);
    assert_int_equal(r.retryable, 0);
    json_decref(attrs);
    pg_connector_free(c);
}

/* Without a disable template, disable runs update with active = false. */
static void
test_disable_via_update(void **state)
{
    json_t *cfg = cfg_load(BASE_CFG);
    pg_connector_t *c;
    json_t *attrs = json_pack("{s:s}", "email", "dora@example.org");
    pg_account_t a = account("dora", attrs, 1);
    json_t *users;
    res_t r;

    (void)state;
    cfg_set(cfg, "operations.disable", NULL);
    c = conn_new(cfg);
    assert_true(c->caps & PG_CONN_CAP_DISABLE);
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.oc, PG_CONN_CREATED);
    run_op(c, DO_DISABLE, &a, &r);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.oc, PG_CONN_DISABLED);
    users = db_users("dora");
    assert_true(json_is_false(json_object_get(json_array_get(users, 0),
                                              "active")));
    json_decref(users);
    json_decref(attrs);
    pg_connector_free(c);
}

/* Memberships with lookup.map.groups: desired ones are added, revoked
 * ones removed, unmanaged ones kept; the listing shows them. */
static void
test_groups_merge(void **state)
{
    static const char *const want[] = { "staff", "new-g" };
    static const char *const revoke[] = { "eng/ops" };
    json_t *cfg = cfg_load(BASE_CFG);
    pg_connector_t *c;
    pg_account_t a = account("gwen", NULL, 1);
    json_t *users, *g;
    char path[300];
    lst_t *l = calloc(1, sizeof(*l));
    res_t r;
    int idx;

    (void)state;
    assert_non_null(l);
    cfg_set(cfg, "operations.lookup.map.groups", json_string("groups"));
    cfg_set(cfg, "operations.update.body.groups", json_string("${groups}"));
    cfg_set(cfg, "operations.list.map.groups", json_string("groups"));
    c = conn_new(cfg);
    assert_true(c->caps & PG_CONN_CAP_GROUPS);
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.oc, PG_CONN_CREATED);
    snprintf(path, sizeof(path), "/users/%s", r.id);
    assert_int_equal(target_call("PATCH", path, "{\"groups\": [\"staff\", "
                                 "\"eng/ops\", \"unmanaged\"]}", 1, NULL),
                     200);
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.oc, PG_CONN_UNCHANGED);

    a.groups = want;
    a.ngroups = 2;
    a.revoke = revoke;
    a.nrevoke = 1;
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.oc, PG_CONN_UPDATED);
    assert_string_equal(r.changes, "groups");
    users = db_users("gwen");
    g = json_object_get(json_array_get(users, 0), "groups");
    assert_int_equal(json_array_size(g), 3);
    assert_string_equal(json_string_value(json_array_get(g, 0)), "staff");
    assert_string_equal(json_string_value(json_array_get(g, 1)), "unmanaged");
    assert_string_equal(json_string_value(json_array_get(g, 2)), "new-g");
    json_decref(users);

    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.oc, PG_CONN_UNCHANGED);

    l->groups_of = "gwen";
    run_list(c, 0, l);
    assert_int_equal(l->st, PG_OK);
    idx = has_key(l, "gwen");
    assert_true(idx > 0);
    assert_string_equal(l->groups_seen, "staff,unmanaged,new-g");
    free(l);
    pg_connector_free(c);

    /* disable through update (no disable template) keeps memberships */
    cfg = cfg_load(BASE_CFG);
    cfg_set(cfg, "operations.lookup.map.groups", json_string("groups"));
    cfg_set(cfg, "operations.update.body.groups", json_string("${groups}"));
    cfg_set(cfg, "operations.disable", NULL);
    c = conn_new(cfg);
    a.groups = NULL;
    a.ngroups = 0;
    run_op(c, DO_DISABLE, &a, &r);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.oc, PG_CONN_DISABLED);
    users = db_users("gwen");
    assert_true(json_is_false(json_object_get(json_array_get(users, 0),
                                              "active")));
    assert_int_equal(json_array_size(json_object_get(json_array_get(users, 0),
                                                     "groups")), 3);
    json_decref(users);
    pg_connector_free(c);
}

/* Two records with the same key: the lookup refuses to guess. */
static void
test_lookup_ambiguous(void **state)
{
    pg_connector_t *c = conn_new(cfg_load(BASE_CFG));
    pg_account_t a = account("twin", NULL, 1);
    res_t r;

    (void)state;
    assert_int_equal(target_call("POST", "/users", "{\"username\": \"twin\"}",
                                 1, NULL), 201);
    assert_int_equal(target_call("POST", "/users", "{\"username\": \"twin\"}",
                                 1, NULL), 201);
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_ERR_CONFLICT);
    assert_string_equal(r.error, "lookup: 2 accounts match the key");
    assert_int_equal(count_logged("PATCH", "/users"), 0);
    pg_connector_free(c);
}

/* remove: REMOVED; again: REMOVED without a DELETE. */
static void
test_remove(void **state)
{
    pg_connector_t *c = conn_new(cfg_load(BASE_CFG));
    json_t *attrs = json_pack("{s:s}", "email", "erin@example.org");
    pg_account_t a = account("erin", attrs, 1);
    json_t *users;
    res_t r;

    (void)state;
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.oc, PG_CONN_CREATED);
    run_op(c, DO_REMOVE, &a, &r);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.oc, PG_CONN_REMOVED);
    users = db_users("erin");
    assert_int_equal(json_array_size(users), 0);
    json_decref(users);
    assert_int_equal(count_logged("DELETE", "/users/"), 1);

    run_op(c, DO_REMOVE, &a, &r);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.oc, PG_CONN_REMOVED);
    assert_int_equal(count_logged("DELETE", "/users/"), 1);
    json_decref(attrs);
    pg_connector_free(c);
}

/* Paging across several pages; early stop; incremental since. */
static void
test_list_paging(void **state)
{
    pg_connector_t *c = conn_new(cfg_load(BASE_CFG));
    static const char *const names[] = { "list-1", "list-2", "list-3",
                                         "list-4", "list-5" };
    json_t *all = NULL;
    lst_t *l = calloc(1, sizeof(*l));
    size_t i, total;
    int idx;
    res_t r;

    (void)state;
    assert_non_null(l);
    for (i = 0; i < 5; i++) {
        json_t *attrs = json_pack("{s:s}", "email", names[i]);
        pg_account_t a = account(names[i], attrs, i != 2);

        run_op(c, DO_ENSURE, &a, &r);
        assert_int_equal(r.oc, PG_CONN_CREATED);
        json_decref(attrs);
    }
    assert_int_equal(target_call("GET", "/users", NULL, 1, &all), 200);
    total = json_array_size(all);
    json_decref(all);
    assert_true(total >= 6);

    run_list(c, 0, l);
    assert_int_equal(l->done_calls, 1);
    assert_int_equal(l->st, PG_OK);
    assert_int_equal(l->n, total);
    assert_true(l->max_n <= 2);
    assert_int_equal(l->pages, (int)((total + 1) / 2));
    assert_true(logged("GET", "/users?_page=1&_limit=2"));
    assert_true(logged("GET", "/users?_page=2&_limit=2"));
    assert_true(logged("GET", "/users?_page=3&_limit=2"));
    for (i = 0; i < 5; i++) {
        idx = has_key(l, names[i]);
        assert_true(idx > 0);
        assert_string_equal(l->emails[idx - 1], names[i]);
        assert_int_equal(l->active[idx - 1], i != 2);
    }
    idx = has_key(l, "seed-user");
    assert_true(idx > 0);
    assert_int_equal(l->modified[idx - 1], 1700000000000ull);

    /* the page callback stops the listing */
    memset(l, 0, sizeof(*l));
    l->stop_after = 1;
    test_setup(NULL);
    run_list(c, 0, l);
    assert_int_equal(l->pages, 1);
    assert_int_equal(l->done_calls, 1);
    assert_int_equal(l->st, PG_ERR_CANCELLED);
    assert_int_equal(count_logged("GET", "/users?_page="), 1);

    /* cancel from inside the page callback: done never runs */
    memset(l, 0, sizeof(*l));
    l->cancel_in_page = 1;
    l->c = c;
    run_list(c, 0, l);
    spin(200);
    assert_int_equal(l->pages, 1);
    assert_int_equal(l->done_calls, 0);

    /* incremental: only records modified at or after since_ms */
    memset(l, 0, sizeof(*l));
    test_setup(NULL);
    run_list(c, 1700000000000ull, l);
    assert_int_equal(l->st, PG_OK);
    assert_int_equal(l->n, 1);
    assert_string_equal(l->keys[0], "seed-user");
    assert_true(logged("GET",
                       "/users?_page=1&_limit=2&modified_gte=1700000000000"));
    free(l);
    pg_connector_free(c);
}

/* Offset paging and an items_path inside a wrapper object are covered
 * with json-server's _start/_limit slicing. */
static void
test_list_offset(void **state)
{
    json_t *cfg = cfg_load(BASE_CFG);
    pg_connector_t *c;
    json_t *all = NULL;
    lst_t *l = calloc(1, sizeof(*l));

    (void)state;
    assert_non_null(l);
    cfg_set(cfg, "operations.list.paging",
            json_pack("{s:s, s:s, s:s, s:i}", "type", "offset", "param",
                      "_start", "size_param", "_limit", "size", 3));
    c = conn_new(cfg);
    assert_int_equal(target_call("GET", "/users", NULL, 1, &all), 200);
    run_list(c, 0, l);
    assert_int_equal(l->st, PG_OK);
    assert_int_equal(l->n, json_array_size(all));
    assert_true(logged("GET", "/users?_start=0&_limit=3"));
    assert_true(logged("GET", "/users?_start=3&_limit=3"));
    json_decref(all);
    free(l);
    pg_connector_free(c);
}

/* Cursor paging: json-server has no cursors, so the "cursor" is the id
 * of the last record of a page and the next page asks for id_gte=<it>
 * (pages overlap by one record). A cursor that does not advance fails. */
static void
test_list_cursor(void **state)
{
    json_t *cfg = cfg_load(BASE_CFG);
    pg_connector_t *c;
    json_t *all = NULL, *u;
    lst_t *l = calloc(1, sizeof(*l));
    char url[96];
    size_t i;

    (void)state;
    assert_non_null(l);
    cfg_set(cfg, "operations.list.path", json_string("/users?_sort=id"));
    cfg_set(cfg, "operations.list.paging",
            json_pack("{s:s, s:s, s:s, s:i, s:s}", "type", "cursor", "param",
                      "id_gte", "size_param", "_limit", "size", 3,
                      "cursor_path", "[2].id"));
    c = conn_new(json_incref(cfg));
    assert_int_equal(target_call("GET", "/users?_sort=id", NULL, 1, &all),
                     200);
    assert_true(json_array_size(all) >= 4);
    run_list(c, 0, l);
    assert_int_equal(l->st, PG_OK);
    assert_true(l->pages >= 2);
    json_array_foreach(all, i, u) {
        assert_true(has_key(l, json_string_value(json_object_get(u,
                                                                 "username"))));
    }
    assert_true(logged("GET", "/users?_sort=id&_limit=3"));
    snprintf(url, sizeof(url), "/users?_sort=id&id_gte=%" JSON_INTEGER_FORMAT
             "&_limit=3",
             json_integer_value(json_object_get(json_array_get(all, 2), "id")));
    assert_true(logged("GET", url));
    json_decref(all);
    pg_connector_free(c);

    /* the cursor of a one-record page is that record again: no progress */
    memset(l, 0, sizeof(*l));
    cfg_set(cfg, "operations.list.paging",
            json_pack("{s:s, s:s, s:s, s:i, s:s}", "type", "cursor", "param",
                      "id_gte", "size_param", "_limit", "size", 1,
                      "cursor_path", "[0].id"));
    c = conn_new(cfg);
    run_list(c, 0, l);
    assert_int_equal(l->st, PG_ERR_HTTP);
    assert_string_equal(l->error, "list: the cursor did not advance");
    free(l);
    pg_connector_free(c);
}

/* No bearer token: 401 -> DENIED, not retryable, target's message. A
 * wrong token never shows up in the error. */
static void
test_bearer_missing_denied(void **state)
{
    json_t *cfg = cfg_load(BASE_CFG);
    pg_connector_t *c;
    pg_account_t a = account("frank", NULL, 1);
    res_t r;

    (void)state;
    cfg_set(cfg, "auth", json_pack("{s:s}", "type", "none"));
    c = conn_new(cfg);
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_ERR_DENIED);
    assert_int_equal(r.retryable, 0);
    assert_string_equal(r.error, "lookup: HTTP 401: missing or bad bearer "
                                 "token");
    assert_int_equal(count_logged("POST", "/users"), 0);
    pg_connector_free(c);

    cfg = cfg_load(BASE_CFG);
    cfg_set(cfg, "auth", json_pack("{s:s, s:s}", "type", "bearer", "token",
                                   "wrong-SECRET-4711"));
    c = conn_new(cfg);
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_ERR_DENIED);
    assert_null(strstr(r.error, "SECRET"));
    pg_connector_free(c);
}

/* HTTP basic: right password (inline and from a file) works, a wrong one
 * is DENIED and never shows up in the error. */
static void
test_basic_auth(void **state)
{
    char pwfile[PATH_MAX + 16];
    json_t *cfg = cfg_load(BASE_CFG);
    pg_connector_t *c;
    pg_account_t a = account("seed-user", NULL, 1);
    FILE *f;
    res_t r;

    (void)state;
    cfg_set(cfg, "auth", json_pack("{s:s, s:s, s:s}", "type", "basic", "user",
                                   BASIC_USER, "password", BASIC_PASS));
    c = conn_new(cfg);
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.oc, PG_CONN_UNCHANGED);
    pg_connector_free(c);

    snprintf(pwfile, sizeof(pwfile), "%s/pw", G.dir);
    f = fopen(pwfile, "w");
    assert_non_null(f);
    fputs(BASIC_PASS "\n", f);
    fclose(f);
    cfg = cfg_load(BASE_CFG);
    cfg_set(cfg, "auth", json_pack("{s:s, s:s, s:s}", "type", "basic", "user",
                                   BASIC_USER, "password_file", pwfile));
    c = conn_new(cfg);
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_OK);
    pg_connector_free(c);
    unlink(pwfile);

    cfg = cfg_load(BASE_CFG);
    cfg_set(cfg, "auth", json_pack("{s:s, s:s, s:s}", "type", "basic", "user",
                                   BASIC_USER, "password", "wrong-SECRET-pw"));
    c = conn_new(cfg);
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_ERR_DENIED);
    assert_int_equal(r.retryable, 0);
    assert_null(strstr(r.error, "SECRET"));
    pg_connector_free(c);
}

/* 429 with Retry-After: BUSY, retryable, retry_after_ms. */
static void
test_429_retry_after(void **state)
{
    pg_connector_t *c = conn_new(cfg_load(BASE_CFG));
    pg_account_t a = account("gina", NULL, 1);
    res_t r;

    (void)state;
    faults("{\"status\": 429, \"retry_after\": \"7\", \"count\": 1}");
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_ERR_BUSY);
    assert_int_equal(r.retryable, 1);
    assert_int_equal(r.retry_after_ms, 7000);
    assert_int_equal(count_logged("POST", "/users"), 0);

    /* the fault is used up: the retry works */
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.oc, PG_CONN_CREATED);
    pg_connector_free(c);
}

/* Retry-After as an HTTP date. */
static void
test_retry_after_date(void **state)
{
    pg_connector_t *c = conn_new(cfg_load(BASE_CFG));
    pg_account_t a = account("gina2", NULL, 1);
    char date[64], fault[160];
    time_t when = time(NULL) + 30;
    struct tm tm;
    res_t r;

    (void)state;
    gmtime_r(&when, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    snprintf(fault, sizeof(fault),
             "{\"status\": 503, \"retry_after\": \"%s\"}", date);
    faults(fault);
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_ERR_BUSY);
    assert_int_equal(r.retryable, 1);
    assert_true(r.retry_after_ms >= 27000 && r.retry_after_ms <= 31000);
    pg_connector_free(c);
}

/* Nested JSON paths ("profile.mails[0]", items_path) read back what the
 * create body wrote: a second ensure is UNCHANGED, a change UPDATED. */
static void
test_nested_paths(void **state)
{
    static const char *cfgtext =
        "{"
        " \"auth\": {\"type\": \"bearer\", \"token\": \"" TOKEN "\"},"
        " \"operations\": {"
        "  \"lookup\": {\"path\": \"/accounts?id={key}\","
        "    \"id_path\": \"id\", \"map\": {\"key\": \"id\","
        "    \"attrs\": {\"mail\": \"profile.mails[0]\","
        "                \"tags\": \"profile.tags\"}}},"
        "  \"create\": {\"path\": \"/accounts\", \"id_path\": \"id\","
        "    \"body\": {\"id\": \"${key}\", \"profile\": {"
        "      \"mails\": [\"${attrs.mail}\"], \"tags\": \"${attrs.tags}\"}}},"
        "  \"update\": {\"path\": \"/accounts/{id}\","
        "    \"body\": {\"profile\": {"
        "      \"mails\": [\"${attrs.mail}\"], \"tags\": \"${attrs.tags}\"}}}"
        " }"
        "}";
    pg_connector_t *c = conn_new(cfg_load(cfgtext));
    json_t *attrs = json_pack("{s:s, s:[s,s]}", "mail", "n@example.org",
                              "tags", "a", "b");
    pg_account_t a = account("nested-1", attrs, 1);
    json_t *rec = NULL;
    res_t r;

    (void)state;
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.oc, PG_CONN_CREATED);
    assert_string_equal(r.id, "nested-1");
    /* multi-valued: order does not matter */
    json_object_set_new(attrs, "tags", json_pack("[s,s]", "b", "a"));
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.oc, PG_CONN_UNCHANGED);
    json_object_set_new(attrs, "tags", json_pack("[s,s,s]", "b", "a", "c"));
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.oc, PG_CONN_UPDATED);
    assert_string_equal(r.changes, "tags");
    assert_int_equal(target_call("GET", "/accounts/nested-1", NULL, 1, &rec),
                     200);
    assert_int_equal(json_array_size(json_object_get(
                         json_object_get(rec, "profile"), "tags")), 3);
    assert_string_equal(json_string_value(json_array_get(json_object_get(
                            json_object_get(rec, "profile"), "mails"), 0)),
                        "n@example.org");
    json_decref(rec);
    json_decref(attrs);
    pg_connector_free(c);
}

/* 500 on create: retryable, nothing created; next ensure creates. */
static void
test_500_retryable(void **state)
{
    pg_connector_t *c = conn_new(cfg_load(BASE_CFG));
    pg_account_t a = account("hank", NULL, 1);
    json_t *users;
    res_t r;

    (void)state;
    faults("{\"status\": 500, \"method\": \"POST\"}");
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_ERR_BUSY);
    assert_int_equal(r.retryable, 1);
    assert_int_equal(r.retry_after_ms, 0);
    assert_string_equal(r.error, "create: HTTP 500: injected 500");
    users = db_users("hank");
    assert_int_equal(json_array_size(users), 0);
    json_decref(users);

    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.oc, PG_CONN_CREATED);
    users = db_users("hank");
    assert_int_equal(json_array_size(users), 1);
    json_decref(users);
    pg_connector_free(c);
}

/* A target slower than timeout_ms: TIMEOUT, retryable, on time. */
static void
test_timeout(void **state)
{
    json_t *cfg = cfg_load(BASE_CFG);
    pg_connector_t *c;
    pg_account_t a = account("ivan", NULL, 1);
    uint64_t t0;
    res_t r;

    (void)state;
    cfg_set(cfg, "timeout_ms", json_integer(300));
    c = conn_new(cfg);
    faults("{\"delay_ms\": 2000}");
    t0 = pgt_now_ms();
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_ERR_TIMEOUT);
    assert_int_equal(r.retryable, 1);
    assert_true(pgt_now_ms() - t0 < 1500);
    pg_connector_free(c);
}

/* Keys with '/', spaces, '+' and '%' are percent-encoded in paths and
 * queries, and round-trip through the target. */
static void
test_percent_encoding(void **state)
{
    pg_connector_t *c = conn_new(cfg_load(ACCT_CFG));
    pg_connector_t *u = conn_new(cfg_load(BASE_CFG));
    const char *key = "team/a b+c%";
    json_t *attrs = json_pack("{s:s}", "mail", "t@example.org");
    pg_account_t a = account(key, attrs, 1);
    json_t *rec = NULL, *users;
    res_t r;

    (void)state;
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.oc, PG_CONN_CREATED);
    assert_string_equal(r.id, key);
    assert_true(logged("GET", "/accounts/team%2Fa%20b%2Bc%25"));
    assert_int_equal(target_call("GET", "/accounts/team%2Fa%20b%2Bc%25", NULL,
                                 1, &rec), 200);
    assert_string_equal(json_string_value(json_object_get(rec, "id")), key);
    json_decref(rec);

    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.oc, PG_CONN_UNCHANGED);

    json_object_set_new(attrs, "mail", json_string("t2@example.org"));
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.oc, PG_CONN_UPDATED);
    assert_true(logged("PUT", "/accounts/team%2Fa%20b%2Bc%25"));

    run_op(c, DO_REMOVE, &a, &r);
    assert_int_equal(r.oc, PG_CONN_REMOVED);
    assert_int_equal(target_call("GET", "/accounts/team%2Fa%20b%2Bc%25", NULL,
                                 1, NULL), 404);

    /* in a query string, and in a header the raw value (no CR/LF) */
    run_op(u, DO_ENSURE, &a, &r);
    assert_int_equal(r.oc, PG_CONN_CREATED);
    assert_true(logged("GET", "/users?username=team%2Fa%20b%2Bc%25"));
    users = db_users(key);
    assert_int_equal(json_array_size(users), 1);
    json_decref(users);
    json_decref(attrs);
    pg_connector_free(c);
    pg_connector_free(u);
}

/* Header values with CR/LF are refused when rendered (nothing sent). */
static void
test_header_crlf_refused(void **state)
{
    json_t *cfg = cfg_load(BASE_CFG);
    pg_connector_t *c;
    json_t *attrs = json_pack("{s:s}", "name", "x\r\nX-Evil: 1");
    pg_account_t a = account("jack", attrs, 1);
    pg_conn_req_t *req = NULL;
    res_t r;

    (void)state;
    cfg_set(cfg, "operations.lookup.headers",
            json_pack("{s:s}", "X-Name", "{attrs.name}"));
    c = conn_new(cfg);
    memset(&r, 0, sizeof(r));
    assert_int_equal(pg_conn_ensure(c, &a, on_result, &r, &req),
                     PG_ERR_INVALID);
    assert_null(req);
    spin(100);
    assert_int_equal(r.calls, 0);
    assert_int_equal(count_logged("GET", "/users"), 0);
    json_decref(attrs);
    pg_connector_free(c);
}

/* A response over max_response fails (TOO_LARGE), not retryable. */
static void
test_response_cap(void **state)
{
    json_t *cfg = cfg_load(BASE_CFG);
    pg_connector_t *c, *big = conn_new(cfg_load(BASE_CFG));
    char name[3000];
    json_t *attrs;
    pg_account_t a;
    res_t r;

    (void)state;
    memset(name, 'n', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    attrs = json_pack("{s:s}", "name", name);
    a = account("kate", attrs, 1);
    run_op(big, DO_ENSURE, &a, &r);
    assert_int_equal(r.oc, PG_CONN_CREATED);
    cfg_set(cfg, "max_response", json_integer(1024));
    c = conn_new(cfg);
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_ERR_TOO_LARGE);
    assert_int_equal(r.retryable, 0);
    json_decref(attrs);
    pg_connector_free(c);
    pg_connector_free(big);
}

/* Cancel before completion: the callback never runs; cancel right after
 * start and while the target is slow. */
static void
test_cancel(void **state)
{
    pg_connector_t *c = conn_new(cfg_load(BASE_CFG));
    pg_account_t a = account("liam", NULL, 1);
    pg_conn_req_t *req = NULL;
    lst_t *l = calloc(1, sizeof(*l));
    json_t *users;
    res_t r;

    (void)state;
    assert_non_null(l);
    memset(&r, 0, sizeof(r));
    assert_int_equal(pg_conn_ensure(c, &a, on_result, &r, &req), PG_OK);
    pg_conn_cancel(c, req);
    spin(300);
    assert_int_equal(r.calls, 0);

    faults("{\"delay_ms\": 400, \"count\": 5}");
    assert_int_equal(pg_conn_ensure(c, &a, on_result, &r, &req), PG_OK);
    spin(100);
    pg_conn_cancel(c, req);
    spin(800);
    assert_int_equal(r.calls, 0);
    users = db_users("liam");
    assert_int_equal(json_array_size(users), 0);
    json_decref(users);

    assert_int_equal(pg_conn_remove(c, &a, on_result, &r, &req), PG_OK);
    pg_conn_cancel(c, req);
    assert_int_equal(pg_conn_list(c, 0, on_page, on_list_done, l, &req),
                     PG_OK);
    pg_conn_cancel(c, req);
    spin(600);
    assert_int_equal(r.calls, 0);
    assert_int_equal(l->pages + l->done_calls, 0);
    free(l);
    pg_connector_free(c);
}

/* Connection refused: IO, retryable. */
static void
test_connection_refused(void **state)
{
    json_t *cfg = cfg_load(BASE_CFG);
    pg_connector_t *c;
    pg_account_t a = account("mona", NULL, 1);
    char url[64];
    res_t r;

    (void)state;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", pgt_free_port());
    cfg_set(cfg, "base_url", json_string(url));
    c = conn_new(cfg);
    run_op(c, DO_ENSURE, &a, &r);
    assert_int_equal(r.st, PG_ERR_IO);
    assert_int_equal(r.retryable, 1);
    pg_connector_free(c);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_config_errors, test_setup),
        cmocka_unit_test_setup(test_config_ok_and_caps, test_setup),
        cmocka_unit_test_setup(test_create_then_unchanged, test_setup),
        cmocka_unit_test_setup(test_attribute_change_updated, test_setup),
        cmocka_unit_test_setup(test_disable, test_setup),
        cmocka_unit_test_setup(test_disable_via_update, test_setup),
        cmocka_unit_test_setup(test_groups_merge, test_setup),
        cmocka_unit_test_setup(test_lookup_ambiguous, test_setup),
        cmocka_unit_test_setup(test_remove, test_setup),
        cmocka_unit_test_setup(test_list_paging, test_setup),
        cmocka_unit_test_setup(test_list_offset, test_setup),
        cmocka_unit_test_setup(test_list_cursor, test_setup),
        cmocka_unit_test_setup(test_bearer_missing_denied, test_setup),
        cmocka_unit_test_setup(test_basic_auth, test_setup),
        cmocka_unit_test_setup(test_429_retry_after, test_setup),
        cmocka_unit_test_setup(test_retry_after_date, test_setup),
        cmocka_unit_test_setup(test_nested_paths, test_setup),
        cmocka_unit_test_setup(test_500_retryable, test_setup),
        cmocka_unit_test_setup(test_timeout, test_setup),
        cmocka_unit_test_setup(test_percent_encoding, test_setup),
        cmocka_unit_test_setup(test_header_crlf_refused, test_setup),
        cmocka_unit_test_setup(test_response_cap, test_setup),
        cmocka_unit_test_setup(test_cancel, test_setup),
        cmocka_unit_test_setup(test_connection_refused, test_setup),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
