/*
 * Unit tests for the SCIM connector (src/connectors/scim/scim.c).
 *
 * Most tests run pg_scim_ensure() against the real SCIM peer
 * (tests/peers/scim-server.mjs: SCIMMY + express), started once for the
 * group with node on a free port (--port 0, port read from its "ready"
 * line) and a temp data file, and reset through /_admin/clear before each
 * test. What the connector sent is checked in the peer's request log
 * (/_admin/state). If node or the peer is missing the group setup fails:
 * nothing is skipped.
 *
 * Cases the real peer cannot produce (malformed JSON, a non-JSON body,
 * several accounts matching, a filter with a double quote, which SCIMMY's
 * filter lexer cannot parse) use a tiny scripted HTTP server forked by the
 * test itself (scripted_start()).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <curl/curl.h>
#include <jansson.h>

#include "provgate/http.h"
#include "provgate/loop.h"
#include "provgate/scim.h"
#include "provgate/util.h"

#define TOKEN "t0ken-for-scim-tests-1234"
#define RUN_TIMEOUT_MS 10000

/* ---- the peer -------------------------------------------------------- */

static struct {
    pid_t pid;
    int stdin_fd;              /* peer exits when this closes */
    int port;
    char dir[PATH_MAX];
    char base[128];            /* http://127.0.0.1:P/scim/v2 */
    char root[PATH_MAX];       /* repository root */
    pg_loop_t *loop;
    pg_http_t *http;
} G = { .pid = -1, .stdin_fd = -1 };

/* Repository root: the test binary is <root>/build/<dir>/test_scim. */
static int
find_root(char *out, size_t outsz)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    int i;

    if (n <= 0) {
        return -1;
    }
    exe[n] = '\0';
    for (i = 0; i < 3; i++) {
        char *slash = strrchr(exe, '/');

        if (slash == NULL) {
            return -1;
        }
        *slash = '\0';
    }
    if ((size_t)snprintf(out, outsz, "%s", exe) >= outsz) {
        return -1;
    }
    return 0;
}

/* Read from fd until a line "ready ... port=N" (or EOF / timeout). */
static int
wait_ready(int fd, int timeout_ms)
{
    char buf[4096];
    size_t len = 0;

    for (;;) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        char *port;
        ssize_t r;

        if (poll(&p, 1, timeout_ms) <= 0) {
            return -1;
        }
        r = read(fd, buf + len, sizeof(buf) - 1 - len);
        if (r <= 0) {
            return -1;
        }
        len += (size_t)r;
        buf[len] = '\0';
        if (strstr(buf, "ready") != NULL &&
            (port = strstr(buf, "port=")) != NULL &&
            strchr(port, '\n') != NULL) {
            return (int)strtol(port + 5, NULL, 10);
        }
        if (len == sizeof(buf) - 1) {
            return -1;
        }
    }
}

static int
peer_start(void)
{
    char script[PATH_MAX + 64], data[PATH_MAX + 16];
    int out[2], in[2];

    if (find_root(G.root, sizeof(G.root)) != 0) {
        return -1;
    }
    snprintf(script, sizeof(script), "%s/tests/peers/scim-server.mjs", G.root);
    if (access(script, R_OK) != 0) {
        fprintf(stderr, "test_scim: missing SCIM peer %s\n", script);
        return -1;
    }
    snprintf(G.dir, sizeof(G.dir), "/tmp/pg-test-scim-XXXXXX");
    if (mkdtemp(G.dir) == NULL) {
        return -1;
    }
    snprintf(data, sizeof(data), "%s/scim.json", G.dir);
    if (pipe(out) != 0 || pipe(in) != 0) {
        return -1;
    }
    G.pid = fork();
    if (G.pid < 0) {
        return -1;
    }
    if (G.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(out[1], 1);
        dup2(in[0], 0);
        close(out[0]);
        close(out[1]);
        close(in[0]);
        close(in[1]);
        execlp("node", "node", script, "--port", "0", "--data", data,
               "--token", TOKEN, "--groups", "staff,engineering",
               "--exit-on-stdin-close", "--quiet", (char *)NULL);
        fprintf(stderr, "test_scim: cannot run node: %s\n", strerror(errno));
        _exit(127);
    }
    close(out[1]);
    close(in[0]);
    G.stdin_fd = in[1];
    G.port = wait_ready(out[0], 20000);
    close(out[0]);
    if (G.port <= 0) {
        fprintf(stderr, "test_scim: SCIM peer did not become ready "
                        "(is node installed and tests/peers npm-installed?)\n");
        return -1;
    }
    snprintf(G.base, sizeof(G.base), "http://127.0.0.1:%d/scim/v2", G.port);
    return 0;
}

static void
peer_stop(void)
{
    char cmd[PATH_MAX + 16];

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
        /* Only our own mkdtemp directory. */
        snprintf(cmd, sizeof(cmd), "%s/scim.json", G.dir);
        unlink(cmd);
        rmdir(G.dir);
    }
}

/* ---- blocking HTTP for the test side (libcurl easy; tests may block) -- */

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

/* method on http://127.0.0.1:<port><path>; returns status, *out the parsed
 * JSON body (may be NULL). SCIM paths get the bearer token. */
static long
peer_call(const char *method, const char *path, const char *body,
          json_t **out)
{
    char url[512];
    sink_t s = { NULL, 0 };
    struct curl_slist *h = NULL;
    CURL *c = curl_easy_init();
    long status = 0;

    assert_non_null(c);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", G.port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    if (strncmp(path, "/scim/", 6) == 0) {
        h = curl_slist_append(h, "Authorization: Bearer " TOKEN);
        h = curl_slist_append(h, "Content-Type: application/scim+json");
    } else {
        h = curl_slist_append(h, "Content-Type: application/json");
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    }
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (out != NULL) {
        *out = s.buf != NULL ? json_loads(s.buf, 0, NULL) : NULL;
    }
    free(s.buf);
    return status;
}

static void
peer_faults(const char *json)
{
    assert_int_equal(peer_call("POST", "/_admin/faults", json, NULL), 200);
}

static json_t *
peer_state(void)
{
    json_t *st = NULL;

    assert_int_equal(peer_call("GET", "/_admin/state", NULL, &st), 200);
    assert_non_null(st);
    return st;
}

/* Number of logged requests with this method and exact path (path
 * relative to the SCIM base) or, when prefix, path starting with it. */
static int
count_requests(const json_t *state, const char *method, const char *path,
               int prefix)
{
    char full[256];
    json_t *r;
    size_t i;
    int n = 0;

    snprintf(full, sizeof(full), "/scim/v2%s", path);
    json_array_foreach(json_object_get(state, "requests"), i, r) {
        const char *m = json_string_value(json_object_get(r, "method"));
        const char *p = json_string_value(json_object_get(r, "path"));

        if (m == NULL || p == NULL || strcmp(m, method) != 0) {
            continue;
        }
        if (prefix ? strncmp(p, full, strlen(full)) == 0
                   : strcmp(p, full) == 0) {
            n++;
        }
    }
    return n;
}

/* The last logged request with this method (borrowed from state). */
static json_t *
last_request(const json_t *state, const char *method)
{
    json_t *r, *last = NULL;
    size_t i;

    json_array_foreach(json_object_get(state, "requests"), i, r) {
        const char *m = json_string_value(json_object_get(r, "method"));

        if (m != NULL && strcmp(m, method) == 0) {
            last = r;
        }
    }
    return last;
}

/* The stored user with this userName (borrowed from state) or NULL. */
static json_t *
state_user(const json_t *state, const char *username)
{
    json_t *u;
    size_t i;

    json_array_foreach(json_object_get(state, "users"), i, u) {
        const char *n = json_string_value(json_object_get(u, "userName"));

        if (n != NULL && strcmp(n, username) == 0) {
            return u;
        }
    }
    return NULL;
}

/* 1 when stored group gname has member id. */
static int
state_group_has(const json_t *state, const char *gname, const char *id)
{
    json_t *g, *m;
    size_t i, j;

    json_array_foreach(json_object_get(state, "groups"), i, g) {
        const char *n = json_string_value(json_object_get(g, "displayName"));

        if (n == NULL || strcmp(n, gname) != 0) {
            continue;
        }
        json_array_foreach(json_object_get(g, "members"), j, m) {
            const char *v = json_string_value(json_object_get(m, "value"));

            if (v != NULL && strcmp(v, id) == 0) {
                return 1;
            }
        }
    }
    return 0;
}

/* ---- running the connector ------------------------------------------- */

typedef struct run run_t;
typedef void (*hook_fn)(run_t *r, int n, const char *method,
                        const char *path, long status);

struct run {
    int done;
    int cb_count;
    pg_status_t st;
    char reason[40];
    char detail[256];
    char account_id[256];
    int has_account;
    int created, adopted, updated;
    unsigned groups_added;
    long http_status;
    int ncalls;
    char calls[32][256];       /* "METHOD path status" */
    pg_status_t call_st[32];
    int cancel_at;             /* cancel from on_call at this call (1-based) */
    int cancelled;
    pg_scim_op_t *op;
    hook_fn hook;
    /* pg_scim_run() results */
    json_t *resource;          /* reference taken in on_result */
    size_t nresources, total;
    char etag[128];
    int has_etag;
    unsigned retries;
    int reread;
};

static void
on_result(void *arg, const pg_scim_result_t *res)
{
    run_t *r = arg;

    r->cb_count++;
    r->done = 1;
    r->st = res->st;
    snprintf(r->reason, sizeof(r->reason), "%s",
             res->reason != NULL ? res->reason : "(null)");
    snprintf(r->detail, sizeof(r->detail), "%s", res->detail);
    r->has_account = res->account_id != NULL;
    snprintf(r->account_id, sizeof(r->account_id), "%s",
             res->account_id != NULL ? res->account_id : "");
    r->created = res->created;
    r->adopted = res->adopted;
    r->updated = res->updated;
    r->groups_added = res->groups_added;
    r->http_status = res->http_status;
    r->resource = res->resource != NULL ? json_incref(res->resource) : NULL;
    r->nresources = json_array_size(res->resources);
    r->total = res->total_results;
    r->has_etag = res->etag != NULL;
    snprintf(r->etag, sizeof(r->etag), "%s",
             res->etag != NULL ? res->etag : "");
    r->retries = res->retries;
    r->reread = res->reread;
}

static void
on_call(void *arg, const char *method, const char *path, long status,
        pg_status_t st, unsigned ms)
{
    run_t *r = arg;

    (void)ms;
    if (r->ncalls < 32) {
        snprintf(r->calls[r->ncalls], sizeof(r->calls[0]), "%s %s %ld",
                 method, path, status);
        r->call_st[r->ncalls] = st;
    }
    r->ncalls++;
    if (r->hook != NULL) {
        r->hook(r, r->ncalls, method, path, status);
    }
    if (r->cancel_at == r->ncalls) {
        pg_scim_cancel(r->op);
        r->cancelled = 1;
    }
}

/* Identity attributes used by most tests. */
static json_t *
identity(const char *username, const char *given)
{
    json_t *a = json_pack("{s:s, s:s, s:s, s:s}", "username", username,
                          "given", given, "family", "Liddell", "email",
                          "alice@example.org");

    assert_non_null(a);
    return a;
}

static pg_attr_map_t MAP[5];
static pg_target_cfg_t T;

static void
target_init(const char *base)
{
    memset(MAP, 0, sizeof(MAP));
    MAP[0].scim_path = (char *)"userName";
    MAP[0].tpl = (char *)"${username}";
    MAP[1].scim_path = (char *)"name.givenName";
    MAP[1].tpl = (char *)"${given}";
    MAP[2].scim_path = (char *)"name.familyName";
    MAP[2].tpl = (char *)"${family}";
    MAP[3].scim_path = (char *)"emails";
    MAP[3].tpl = (char *)"${email}";
    MAP[4].scim_path = (char *)"active";
    MAP[4].literal = json_true();
    memset(&T, 0, sizeof(T));
    T.name = (char *)"app";
    T.type = PG_TARGET_SCIM;
    T.base_url = (char *)base;
    T.auth = PG_AUTH_BEARER;
    T.bearer_token = (char *)TOKEN;
    T.timeout_ms = 3000;
    T.connect_timeout_ms = 1000;
    T.attrs = MAP;
    T.nattrs = 5;
    T.username_attr = (char *)"userName";
}

static json_t *
desired_for(const char *username, const char *given)
{
    json_t *attrs = identity(username, given), *user = NULL;
    pg_err_t err;

    assert_int_equal(pg_scim_build_user(&T, attrs, &user, &err), PG_OK);
    json_decref(attrs);
    return user;
}

/* Run one ensure to completion on the shared loop. */
static void
run_ensure(run_t *r, const json_t *desired, const char *known_id,
           const char *const *groups)
{
    pg_scim_request_t req;

    memset(&req, 0, sizeof(req));
    req.target = &T;
    req.desired = desired;
    req.known_id = known_id;
    req.groups = groups;
    req.on_call = on_call;
    assert_int_equal(pg_scim_ensure(G.http, &req, on_result, r, &r->op),
                     PG_OK);
    assert_non_null(r->op);
    assert_int_equal(r->cb_count, 0); /* never from inside ensure */
    assert_int_equal(pg_loop_run(G.loop, &r->done, RUN_TIMEOUT_MS), PG_OK);
    assert_int_equal(r->cb_count, 1);
}

/* Run the loop for ms without expecting completion. */
static void
spin(unsigned ms)
{
    int never = 0;

    assert_int_equal(pg_loop_run(G.loop, &never, ms), PG_ERR_TIMEOUT);
}

/* ---- group setup ------------------------------------------------------ */

static int
group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
        return -1;
    }
    if (peer_start() != 0) {
        peer_stop();
        return -1;
    }
    if (pg_loop_new(&G.loop) != PG_OK ||
        pg_http_new(pg_loop_host(G.loop), &G.http) != PG_OK) {
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
    peer_stop();
    curl_global_cleanup();
    return 0;
}

static int
test_setup(void **state)
{
    (void)state;
    target_init(G.base);
    assert_int_equal(peer_call("POST", "/_admin/clear", "{}", NULL), 200);
    return 0;
}

/* ---- pure functions ---------------------------------------------------- */

static void
test_filter_escape(void **state)
{
    char *e;

    (void)state;
    e = pg_scim_filter_escape("plain");
    assert_string_equal(e, "plain");
    free(e);
    e = pg_scim_filter_escape("o\"brien\\x\"");
    assert_string_equal(e, "o\\\"brien\\\\x\\\"");
    free(e);
    e = pg_scim_filter_escape("");
    assert_string_equal(e, "");
    free(e);
    assert_null(pg_scim_filter_escape(NULL));
}

static void
test_build_user(void **state)
{
    pg_attr_map_t m[7];
    pg_target_cfg_t t;
    json_t *attrs, *user = NULL, *want;
    pg_err_t err;

    (void)state;
    memset(m, 0, sizeof(m));
    memset(&t, 0, sizeof(t));
    m[0].scim_path = (char *)"userName";
    m[0].tpl = (char *)"${username}";
    m[1].scim_path = (char *)"name.givenName";
    m[1].tpl = (char *)"${given}";
    m[2].scim_path = (char *)"emails";
    m[2].tpl = (char *)"${email}";
    m[3].scim_path = (char *)"phoneNumbers";
    m[3].tpl = (char *)"${phone}";           /* missing: skipped */
    m[4].scim_path = (char *)"active";
    m[4].literal = json_true();
    m[5].scim_path = (char *)"urn:ietf:params:scim:schemas:extension:"
                             "enterprise:2.0:User:manager.value";
    m[5].tpl = (char *)"mgr-${given}";
    m[6].scim_path = (char *)"x.nested.deep";
    m[6].literal = json_pack("{s:i}", "n", 3);
    t.attrs = m;
    t.nattrs = 7;
    t.username_attr = (char *)"userName";

    attrs = json_pack("{s:s, s:s, s:s}", "username", "alice", "given",
                      "Alice", "email", "alice@example.org");
    assert_int_equal(pg_scim_build_user(&t, attrs, &user, &err), PG_OK);
    want = json_loads(
        "{\"schemas\": [\"urn:ietf:params:scim:schemas:core:2.0:User\","
        "  \"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User\"],"
        " \"userName\": \"alice\","
        " \"name\": {\"givenName\": \"Alice\"},"
        " \"emails\": [{\"value\": \"alice@example.org\", \"type\": \"work\","
        "              \"primary\": true}],"
        " \"active\": true,"
        " \"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User\":"
        "   {\"manager\": {\"value\": \"mgr-Alice\"}},"
        " \"x\": {\"nested\": {\"deep\": {\"n\": 3}}}}", 0, NULL);
    assert_non_null(want);
    if (!json_equal(user, want)) {
        char *s = json_dumps(user, JSON_SORT_KEYS);

        fprintf(stderr, "got %s\n", s);
        free(s);
        fail();
    }
    /* The literal is copied, not shared. */
    assert_true(json_object_get(json_object_get(json_object_get(user, "x"),
                                                "nested"), "deep") !=
                m[6].literal);
    json_decref(want);
    json_decref(user);

    /* An account rule laid over the mapping: a path it names replaces
     * that mapping (the username too), others are added, emails keeps
     * the multi-valued shape; a non-string value is refused. */
    {
        json_t *ov = json_pack(
            "{s:s, s:s, s:s, s:s}", "userName", "adoe", "name.givenName",
            "Ada", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:"
            "User:department", "ENG", "emails", "ada@example.org");

        assert_int_equal(pg_scim_build_user_with(&t, attrs, ov, &user, &err),
                         PG_OK);
        assert_string_equal(json_string_value(json_object_get(user,
                                                              "userName")),
                            "adoe");
        assert_string_equal(json_string_value(json_object_get(
                                json_object_get(user, "name"), "givenName")),
                            "Ada");
        assert_string_equal(json_string_value(json_object_get(
                                json_object_get(user,
                                    "urn:ietf:params:scim:schemas:extension:"
                                    "enterprise:2.0:User"), "department")),
                            "ENG");
        assert_string_equal(json_string_value(json_object_get(json_array_get(
                                json_object_get(user, "emails"), 0),
                                "value")), "ada@example.org");
        /* the rest of the mapping is untouched */
        assert_true(json_is_true(json_object_get(user, "active")));
        json_decref(user);
        json_object_set_new(ov, "title", json_integer(3));
        assert_int_equal(pg_scim_build_user_with(&t, attrs, ov, &user, &err),
                         PG_ERR_INVALID);
        assert_null(user);
        assert_non_null(strstr(err.msg, "title"));
        json_decref(ov);
    }

    /* Phone present: same multi-valued shape as emails. */
    json_object_set_new(attrs, "phone", json_string("+1 555"));
    assert_int_equal(pg_scim_build_user(&t, attrs, &user, &err), PG_OK);
    want = json_pack("[{s:s, s:s, s:b}]", "value", "+1 555", "type", "work",
                     "primary", 1);
    assert_true(json_equal(json_object_get(user, "phoneNumbers"), want));
    json_decref(want);
    json_decref(user);

    /* userName's attribute missing: mapping_failed, nothing returned. */
    json_object_del(attrs, "username");
    user = (json_t *)1;
    assert_int_equal(pg_scim_build_user(&t, attrs, &user, &err),
                     PG_ERR_INVALID);
    assert_null(user);
    assert_true(strncmp(err.msg, "mapping_failed", 14) == 0);
    json_object_set_new(attrs, "username", json_string("alice"));

    /* A custom username attribute is required the same way. */
    t.username_attr = (char *)"x.nested.deep";
    assert_int_equal(pg_scim_build_user(&t, attrs, &user, &err),
                     PG_ERR_INVALID); /* not a string */
    assert_null(user);
    t.username_attr = (char *)"userName";

    /* Two mappings for one path, and a path through a scalar. */
    m[4].scim_path = (char *)"userName";
    assert_int_equal(pg_scim_build_user(&t, attrs, &user, &err),
                     PG_ERR_INVALID);
    assert_null(user);
    m[4].scim_path = (char *)"userName.sub";
    assert_int_equal(pg_scim_build_user(&t, attrs, &user, &err),
                     PG_ERR_INVALID);
    m[4].scim_path = (char *)"meta.created";
    assert_int_equal(pg_scim_build_user(&t, attrs, &user, &err),
                     PG_ERR_INVALID);
    m[4].scim_path = (char *)"name..x";
    assert_int_equal(pg_scim_build_user(&t, attrs, &user, &err),
                     PG_ERR_INVALID);
    assert_true(strncmp(err.msg, "mapping_failed", 14) == 0);

    /* No userName mapping at all. */
    t.attrs = m + 1;
    t.nattrs = 2;
    assert_int_equal(pg_scim_build_user(&t, attrs, &user, &err),
                     PG_ERR_INVALID);
    assert_null(user);

    json_decref(m[4].literal);
    json_decref(m[6].literal);
    json_decref(attrs);
}

static void
test_ensure_rejects_bad_request(void **state)
{
    pg_scim_request_t req;
    pg_scim_op_t *op = (pg_scim_op_t *)1;
    json_t *d = json_pack("{s:s}", "displayName", "x");
    run_t r;

    (void)state;
    memset(&r, 0, sizeof(r));
    memset(&req, 0, sizeof(req));
    req.target = &T;
    req.desired = d;
    /* No userName in desired. */
    assert_int_equal(pg_scim_ensure(G.http, &req, on_result, &r, &op),
                     PG_ERR_INVALID);
    assert_null(op);
    json_object_set_new(d, "userName", json_string("x"));
    /* Token with a CR/LF would smuggle headers. */
    T.bearer_token = (char *)"abc\r\nX-Evil: 1";
    assert_int_equal(pg_scim_ensure(G.http, &req, on_result, &r, &op),
                     PG_ERR_INVALID);
    assert_int_equal(r.cb_count, 0);
    json_decref(d);
}

/* ---- against the real SCIM peer ---------------------------------------- */

static void
test_create_then_returning(void **state)
{
    const char *groups[] = { "staff", NULL };
    json_t *d = desired_for("alice", "Alice"), *st, *u;
    char id[256];
    run_t r1, r2, r3;

    (void)state;
    memset(&r1, 0, sizeof(r1));
    run_ensure(&r1, d, NULL, groups);
    assert_int_equal(r1.st, PG_OK);
    assert_string_equal(r1.reason, "ok");
    assert_true(r1.has_account && r1.account_id[0] != '\0');
    assert_int_equal(r1.created, 1);
    assert_int_equal(r1.adopted, 0);
    assert_int_equal(r1.updated, 0);
    assert_int_equal(r1.groups_added, 1);
    assert_int_equal(r1.http_status, 200);
    /* lookup, create, group lookup, group patch; one on_call each */
    assert_int_equal(r1.ncalls, 4);
    assert_string_equal(r1.calls[0],
                        "GET /Users?filter=userName%20eq%20%22alice%22 200");
    assert_string_equal(r1.calls[1], "POST /Users 201");
    assert_true(strncmp(r1.calls[2], "GET /Groups?filter=displayName", 30)
                == 0);
    assert_true(strncmp(r1.calls[3], "PATCH /Groups/", 14) == 0);
    snprintf(id, sizeof(id), "%s", r1.account_id);

    st = peer_state();
    u = state_user(st, "alice");
    assert_non_null(u);
    assert_string_equal(json_string_value(json_object_get(u, "id")), id);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(u, "name"), "givenName")),
                        "Alice");
    assert_true(json_is_true(json_object_get(u, "active")));
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(u, "emails"), 0),
                            "value")),
                        "alice@example.org");
    assert_true(state_group_has(st, "staff", id));
    /* The POST carried the mapped user; the bearer token was required. */
    assert_string_equal(json_string_value(json_object_get(json_object_get(
                            last_request(st, "POST"), "body"), "userName")),
                        "alice");
    json_decref(st);

    /* Returning user without a remembered id: no POST, no PATCH. */
    assert_int_equal(peer_call("POST", "/_admin/reset-log", "{}", NULL), 200);
    memset(&r2, 0, sizeof(r2));
    run_ensure(&r2, d, NULL, groups);
    assert_int_equal(r2.st, PG_OK);
    assert_string_equal(r2.account_id, id);
    assert_int_equal(r2.created, 0);
    assert_int_equal(r2.adopted, 1);
    assert_int_equal(r2.updated, 0);
    assert_int_equal(r2.groups_added, 0);
    st = peer_state();
    assert_int_equal(count_requests(st, "POST", "", 1), 0);
    assert_int_equal(count_requests(st, "PATCH", "", 1), 0);
    assert_int_equal(count_requests(st, "GET", "/Users", 0), 1);
    json_decref(st);

    /* Returning user with the remembered id: GET /Users/<id> only. */
    assert_int_equal(peer_call("POST", "/_admin/reset-log", "{}", NULL), 200);
    memset(&r3, 0, sizeof(r3));
    run_ensure(&r3, d, id, groups);
    assert_int_equal(r3.st, PG_OK);
    assert_string_equal(r3.account_id, id);
    assert_int_equal(r3.created + r3.adopted + r3.updated, 0);
    assert_true(strncmp(r3.calls[0], "GET /Users/", 11) == 0);
    assert_non_null(strstr(r3.calls[0], id));
    st = peer_state();
    assert_int_equal(count_requests(st, "GET", "/Users", 0), 0);
    assert_int_equal(count_requests(st, "POST", "", 1), 0);
    assert_int_equal(count_requests(st, "PATCH", "", 1), 0);
    json_decref(st);
    json_decref(d);
}

static void
test_stale_known_id_falls_back(void **state)
{
    json_t *d = desired_for("bob", "Bob");
    run_t r;

    (void)state;
    memset(&r, 0, sizeof(r));
    run_ensure(&r, d, "no-such-id", NULL);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.created, 1);
    assert_int_equal(r.ncalls, 3);
    assert_string_equal(r.calls[0], "GET /Users/no-such-id 404");
    assert_string_equal(r.calls[1],
                        "GET /Users?filter=userName%20eq%20%22bob%22 200");
    assert_string_equal(r.calls[2], "POST /Users 201");
    json_decref(d);
}

static void
test_attribute_change_patches_once(void **state)
{
    json_t *d1 = desired_for("carol", "Carol"), *d2, *st, *patch, *ops, *u;
    run_t r1, r2, r3;

    (void)state;
    memset(&r1, 0, sizeof(r1));
    run_ensure(&r1, d1, NULL, NULL);
    assert_int_equal(r1.created, 1);
    assert_int_equal(peer_call("POST", "/_admin/reset-log", "{}", NULL), 200);

    d2 = desired_for("carol", "Caroline");
    memset(&r2, 0, sizeof(r2));
    run_ensure(&r2, d2, r1.account_id, NULL);
    assert_int_equal(r2.st, PG_OK);
    assert_int_equal(r2.updated, 1);
    assert_int_equal(r2.created, 0);
    st = peer_state();
    assert_int_equal(count_requests(st, "PATCH", "/Users/", 1), 1);
    assert_int_equal(count_requests(st, "POST", "", 1), 0);
    patch = json_object_get(last_request(st, "PATCH"), "body");
    assert_string_equal(json_string_value(json_array_get(
                            json_object_get(patch, "schemas"), 0)),
                        "urn:ietf:params:scim:api:messages:2.0:PatchOp");
    ops = json_object_get(patch, "Operations");
    /* Only "name" changed: emails, active, userName are not sent. */
    assert_int_equal(json_array_size(ops), 1);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(ops, 0), "op")), "replace");
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(ops, 0), "path")), "name");
    u = state_user(st, "carol");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(u, "name"), "givenName")),
                        "Caroline");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(u, "name"), "familyName")),
                        "Liddell");
    json_decref(st);

    /* Converged: the same desired state again makes no PATCH. */
    assert_int_equal(peer_call("POST", "/_admin/reset-log", "{}", NULL), 200);
    memset(&r3, 0, sizeof(r3));
    run_ensure(&r3, d2, r1.account_id, NULL);
    assert_int_equal(r3.st, PG_OK);
    assert_int_equal(r3.updated, 0);
    st = peer_state();
    assert_int_equal(count_requests(st, "PATCH", "", 1), 0);
    json_decref(st);
    json_decref(d1);
    json_decref(d2);
}

static void
test_adopt_existing(void **state)
{
    json_t *d = desired_for("dave", "Dave"), *st, *pre = NULL, *ops;
    const char *pre_id;
    run_t r;

    (void)state;
    /* An account created directly in the target, with an old email. */
    assert_int_equal(peer_call("POST", "/scim/v2/Users",
                               "{\"schemas\":[\"urn:ietf:params:scim:schemas:"
                               "core:2.0:User\"],\"userName\":\"Dave\","
                               "\"name\":{\"givenName\":\"Dave\","
                               "\"familyName\":\"Liddell\"},\"active\":true,"
                               "\"emails\":[{\"value\":\"old@example.org\","
                               "\"type\":\"work\",\"primary\":true}]}",
                               &pre), 201);
    pre_id = json_string_value(json_object_get(pre, "id"));
    assert_non_null(pre_id);
    assert_int_equal(peer_call("POST", "/_admin/reset-log", "{}", NULL), 200);

    memset(&r, 0, sizeof(r));
    run_ensure(&r, d, NULL, NULL);
    assert_int_equal(r.st, PG_OK);
    assert_string_equal(r.account_id, pre_id);
    assert_int_equal(r.adopted, 1);
    assert_int_equal(r.created, 0);
    assert_int_equal(r.updated, 1);
    st = peer_state();
    assert_int_equal(count_requests(st, "POST", "/Users", 0), 0);
    ops = json_object_get(json_object_get(last_request(st, "PATCH"), "body"),
                          "Operations");
    /* userName differs only in case (caseExact=false on the server, it
     * came back as "Dave"), so userName is replaced and so are emails. */
    assert_int_equal(json_array_size(ops), 2);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(ops, 0), "path")), "userName");
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(ops, 1), "path")), "emails");
    json_decref(st);
    json_decref(pre);
    json_decref(d);
}

/* Hook: right after the first lookup (0 results), someone else creates the
 * account, so our POST gets a genuine 409 from the server. */
static void
race_create(run_t *r, int n, const char *method, const char *path,
            long status)
{
    (void)r;
    (void)path;
    if (n == 1 && strcmp(method, "GET") == 0 && status == 200) {
        assert_int_equal(peer_call("POST", "/scim/v2/Users",
                                   "{\"schemas\":[\"urn:ietf:params:scim:"
                                   "schemas:core:2.0:User\"],"
                                   "\"userName\":\"erin\"}", NULL), 201);
    }
}

static void
test_conflict_then_adopt(void **state)
{
    json_t *d = desired_for("erin", "Erin"), *st;
    run_t r;

    (void)state;
    memset(&r, 0, sizeof(r));
    r.hook = race_create;
    run_ensure(&r, d, NULL, NULL);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.created, 0);
    assert_int_equal(r.adopted, 1);
    assert_int_equal(r.updated, 1); /* the racer's account lacked attributes */
    assert_int_equal(r.ncalls, 4);
    assert_string_equal(r.calls[1], "POST /Users 409");
    assert_string_equal(r.calls[2],
                        "GET /Users?filter=userName%20eq%20%22erin%22 200");
    assert_true(strncmp(r.calls[3], "PATCH /Users/", 13) == 0);
    st = peer_state();
    assert_string_equal(json_string_value(json_object_get(
                            state_user(st, "erin"), "id")), r.account_id);
    assert_string_equal(json_string_value(json_object_get(json_object_get(
                            state_user(st, "erin"), "name"), "givenName")),
                        "Erin");
    json_decref(st);
    json_decref(d);
}

static void
test_conflict_without_account(void **state)
{
    json_t *d = desired_for("frank", "Frank"), *st;
    run_t r;

    (void)state;
    /* 409 injected on every POST: look up once more, then give up. */
    peer_faults("{\"fail_status\":409,\"fail_count\":5,"
                "\"fail_method\":\"POST\"}");
    memset(&r, 0, sizeof(r));
    run_ensure(&r, d, NULL, NULL);
    assert_int_equal(r.st, PG_ERR_CONFLICT);
    assert_string_equal(r.reason, "target_rejected");
    assert_int_equal(r.ncalls, 3); /* GET, POST 409, GET; no second POST */
    st = peer_state();
    assert_int_equal(count_requests(st, "POST", "/Users", 0), 1);
    json_decref(st);
    json_decref(d);
}

static void
test_groups_added_once(void **state)
{
    const char *groups[] = { "staff", "engineering", NULL };
    json_t *d = desired_for("gina", "Gina"), *st;
    run_t r1, r2;

    (void)state;
    memset(&r1, 0, sizeof(r1));
    run_ensure(&r1, d, NULL, groups);
    assert_int_equal(r1.st, PG_OK);
    assert_int_equal(r1.groups_added, 2);
    st = peer_state();
    assert_true(state_group_has(st, "staff", r1.account_id));
    assert_true(state_group_has(st, "engineering", r1.account_id));
    assert_int_equal(count_requests(st, "PATCH", "/Groups/", 1), 2);
    json_decref(st);

    assert_int_equal(peer_call("POST", "/_admin/reset-log", "{}", NULL), 200);
    memset(&r2, 0, sizeof(r2));
    run_ensure(&r2, d, r1.account_id, groups);
    assert_int_equal(r2.st, PG_OK);
    assert_int_equal(r2.groups_added, 0);
    st = peer_state();
    assert_int_equal(count_requests(st, "PATCH", "", 1), 0);
    assert_int_equal(count_requests(st, "POST", "", 1), 0);
    assert_int_equal(count_requests(st, "GET", "/Groups", 0), 2);
    json_decref(st);
    json_decref(d);
}

static void
test_group_unknown(void **state)
{
    const char *groups[] = { "staff", "no-such-group", NULL };
    json_t *d = desired_for("hank", "Hank"), *st;
    run_t r;

    (void)state;
    memset(&r, 0, sizeof(r));
    run_ensure(&r, d, NULL, groups);
    assert_int_equal(r.st, PG_ERR_NOT_FOUND);
    assert_string_equal(r.reason, "group_unknown");
    assert_non_null(strstr(r.detail, "no-such-group"));
    /* The account itself was made and is reported. */
    assert_int_equal(r.created, 1);
    assert_true(r.account_id[0] != '\0');
    assert_int_equal(r.groups_added, 1);
    st = peer_state();
    assert_int_equal(count_requests(st, "POST", "/Groups", 0), 0);
    json_decref(st);
    json_decref(d);
}

static void
test_group_created_when_allowed(void **state)
{
    const char *groups[] = { "new-team", NULL };
    json_t *d = desired_for("iris", "Iris"), *st;
    run_t r1, r2;

    (void)state;
    T.create_missing_groups = 1;
    memset(&r1, 0, sizeof(r1));
    run_ensure(&r1, d, NULL, groups);
    assert_int_equal(r1.st, PG_OK);
    assert_int_equal(r1.groups_added, 1);
    st = peer_state();
    assert_int_equal(count_requests(st, "POST", "/Groups", 0), 1);
    assert_true(state_group_has(st, "new-team", r1.account_id));
    json_decref(st);

    memset(&r2, 0, sizeof(r2));
    run_ensure(&r2, d, r1.account_id, groups);
    assert_int_equal(r2.st, PG_OK);
    assert_int_equal(r2.groups_added, 0);
    st = peer_state();
    assert_int_equal(count_requests(st, "POST", "/Groups", 0), 1);
    json_decref(st);
    json_decref(d);
}

static void
test_server_error_unavailable(void **state)
{
    json_t *d = desired_for("jack", "Jack");
    run_t r;

    (void)state;
    peer_faults("{\"fail_status\":500,\"fail_count\":1}");
    memset(&r, 0, sizeof(r));
    run_ensure(&r, d, NULL, NULL);
    assert_int_equal(r.st, PG_ERR_HTTP);
    assert_string_equal(r.reason, "target_unavailable");
    assert_int_equal(r.http_status, 500);
    assert_int_equal(r.ncalls, 1); /* no retry loop */
    assert_non_null(strstr(r.detail, "500"));

    peer_faults("{\"fail_status\":429,\"fail_count\":1,\"retry_after\":1}");
    memset(&r, 0, sizeof(r));
    run_ensure(&r, d, NULL, NULL);
    assert_string_equal(r.reason, "target_unavailable");
    assert_int_equal(r.http_status, 429);
    json_decref(d);
}

static void
test_rejected_with_scim_detail(void **state)
{
    json_t *d = desired_for("kate", "Kate");
    run_t r;

    (void)state;
    /* A real 400 from SCIMMY: "active" must be a boolean. */
    json_object_set_new(d, "active", json_string("yes"));
    memset(&r, 0, sizeof(r));
    run_ensure(&r, d, NULL, NULL);
    assert_int_equal(r.st, PG_ERR_HTTP);
    assert_string_equal(r.reason, "target_rejected");
    assert_int_equal(r.http_status, 400);
    assert_non_null(strstr(r.detail, "POST /Users: HTTP 400"));
    assert_non_null(strstr(r.detail, "invalidValue"));
    assert_non_null(strstr(r.detail, "active"));
    json_decref(d);
}

static void
test_timeout(void **state)
{
    json_t *d = desired_for("liam", "Liam");
    run_t r;

    (void)state;
    peer_faults("{\"latency_ms\":1500}");
    T.timeout_ms = 300;
    memset(&r, 0, sizeof(r));
    run_ensure(&r, d, NULL, NULL);
    assert_int_equal(r.st, PG_ERR_TIMEOUT);
    assert_string_equal(r.reason, "target_timeout");
    assert_int_equal(r.ncalls, 1);
    assert_int_equal(r.call_st[0], PG_ERR_TIMEOUT);
    assert_non_null(strstr(r.calls[0], " 0")); /* no status */
    json_decref(d);
}

static void
test_wrong_token_auth(void **state)
{
    json_t *d = desired_for("mia", "Mia");
    run_t r;

    (void)state;
    T.bearer_token = (char *)"wrong-secret-token-value";
    memset(&r, 0, sizeof(r));
    run_ensure(&r, d, NULL, NULL);
    assert_int_equal(r.st, PG_ERR_DENIED);
    assert_string_equal(r.reason, "target_auth");
    assert_int_equal(r.http_status, 401);
    assert_null(strstr(r.detail, "wrong-secret-token-value"));
    json_decref(d);
}

static void
test_connection_refused(void **state)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    char base[128];
    json_t *d = desired_for("nina", "Nina");
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    run_t r;

    (void)state;
    /* A port that was free a moment ago and has no listener. */
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    snprintf(base, sizeof(base), "http://127.0.0.1:%d/scim/v2",
             ntohs(sa.sin_port));
    T.base_url = base;
    memset(&r, 0, sizeof(r));
    run_ensure(&r, d, NULL, NULL);
    assert_int_equal(r.st, PG_ERR_IO);
    assert_string_equal(r.reason, "target_unavailable");
    assert_int_equal(r.http_status, 0);
    json_decref(d);
}

static void
test_cancel_in_flight(void **state)
{
    json_t *d = desired_for("olga", "Olga");
    pg_scim_request_t req;
    run_t r, r2;

    (void)state;
    peer_faults("{\"latency_ms\":400}");
    memset(&r, 0, sizeof(r));
    memset(&req, 0, sizeof(req));
    req.target = &T;
    req.desired = d;
    req.on_call = on_call;
    assert_int_equal(pg_scim_ensure(G.http, &req, on_result, &r, &r.op),
                     PG_OK);
    spin(100);
    assert_int_equal(r.ncalls, 0);
    pg_scim_cancel(r.op);
    spin(700);
    assert_int_equal(r.cb_count, 0);
    assert_int_equal(r.ncalls, 0);

    /* The HTTP client is still fine afterwards. */
    peer_faults("{}");
    memset(&r2, 0, sizeof(r2));
    run_ensure(&r2, d, NULL, NULL);
    assert_int_equal(r2.st, PG_OK);
    json_decref(d);
}

static void
test_cancel_at_every_step(void **state)
{
    const char *groups[] = { "staff", NULL };
    json_t *d = desired_for("pete", "Pete");
    int k;

    (void)state;
    /* Full flow is 4 calls: lookup, create, group lookup, group patch.
     * Cancel from inside on_call after each of them. */
    for (k = 1; k <= 4; k++) {
        pg_scim_request_t req;
        run_t r;

        assert_int_equal(peer_call("POST", "/_admin/clear", "{}", NULL), 200);
        memset(&r, 0, sizeof(r));
        memset(&req, 0, sizeof(req));
        req.target = &T;
        req.desired = d;
        req.groups = groups;
        req.on_call = on_call;
        r.cancel_at = k;
        assert_int_equal(pg_scim_ensure(G.http, &req, on_result, &r, &r.op),
                         PG_OK);
        assert_int_equal(pg_loop_run(G.loop, &r.cancelled, RUN_TIMEOUT_MS),
                         PG_OK);
        spin(150);
        assert_int_equal(r.cb_count, 0);
        assert_int_equal(r.ncalls, k); /* nothing started after cancel */
    }
    json_decref(d);
}

static void
test_backslash_username_roundtrip(void **state)
{
    json_t *d = desired_for("dom\\bob", "Bob"), *st, *req;
    run_t r1, r2;

    (void)state;
    memset(&r1, 0, sizeof(r1));
    run_ensure(&r1, d, NULL, NULL);
    assert_int_equal(r1.st, PG_OK);
    assert_int_equal(r1.created, 1);
    assert_string_equal(r1.calls[0], "GET /Users?filter=userName%20eq%20"
                                     "%22dom%5C%5Cbob%22 200");
    memset(&r2, 0, sizeof(r2));
    run_ensure(&r2, d, NULL, NULL);
    assert_int_equal(r2.st, PG_OK);
    assert_int_equal(r2.adopted, 1);
    assert_string_equal(r2.account_id, r1.account_id);
    st = peer_state();
    assert_int_equal(count_requests(st, "POST", "/Users", 0), 1);
    req = last_request(st, "GET");
    assert_string_equal(json_string_value(json_object_get(req, "url")),
                        "/scim/v2/Users?filter=userName%20eq%20"
                        "%22dom%5C%5Cbob%22");
    json_decref(st);
    json_decref(d);
}

/* ---- scripted HTTP server (cases the real peer cannot produce) -------- */

typedef struct {
    int status;
    const char *ctype;
    const char *body;
} canned_t;

typedef struct {
    pid_t pid;
    int port;
    int log_fd;                /* read end: request heads, "--" after each */
} scripted_t;

/* Read one HTTP request (headers + Content-Length body) from fd; write its
 * request line and headers (CRLF-terminated) and "--\n" to logfd. */
static int
scripted_read_request(int fd, int logfd)
{
    char buf[65536];
    size_t len = 0;
    char *end, *cl;
    size_t need;

    for (;;) {
        ssize_t r = read(fd, buf + len, sizeof(buf) - 1 - len);

        if (r <= 0) {
            return -1;
        }
        len += (size_t)r;
        buf[len] = '\0';
        if ((end = strstr(buf, "\r\n\r\n")) != NULL) {
            break;
        }
        if (len == sizeof(buf) - 1) {
            return -1;
        }
    }
    need = (size_t)(end + 4 - buf);
    cl = strcasestr(buf, "\r\ncontent-length:");
    if (cl != NULL && cl < end) {
        need += (size_t)strtoul(cl + 17, NULL, 10);
    }
    while (len < need && len < sizeof(buf) - 1) {
        ssize_t r = read(fd, buf + len, sizeof(buf) - 1 - len);

        if (r <= 0) {
            return -1;
        }
        len += (size_t)r;
    }
    /* The request line and headers, then a separator line. */
    if (write(logfd, buf, (size_t)(end + 2 - buf)) < 0 ||
        write(logfd, "--\n", 3) < 0) {
        return -1;
    }
    return 0;
}

/* Fork a server that answers the given responses in order, one per
 * connection (Connection: close), then exits. */
static void
scripted_start(scripted_t *s, const canned_t *resp, size_t n)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1, logp[2];

    assert_true(lfd >= 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 16), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
    s->port = ntohs(sa.sin_port);
    assert_int_equal(pipe(logp), 0);
    s->pid = fork();
    assert_true(s->pid >= 0);
    if (s->pid == 0) {
        size_t i;

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(logp[0]);
        for (i = 0; i < n; i++) {
            char head[512];
            int c = accept(lfd, NULL, NULL);
            size_t blen = strlen(resp[i].body);
            int hl;

            if (c < 0 || scripted_read_request(c, logp[1]) != 0) {
                _exit(1);
            }
            hl = snprintf(head, sizeof(head),
                          "HTTP/1.1 %d X\r\nContent-Type: %s\r\n"
                          "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                          resp[i].status, resp[i].ctype, blen);
            if (write(c, head, (size_t)hl) < 0 ||
                write(c, resp[i].body, blen) < 0) {
                _exit(1);
            }
            shutdown(c, SHUT_WR);
            close(c);
        }
        _exit(0);
    }
    close(lfd);
    close(logp[1]);
    s->log_fd = logp[0];
}

/* Stop the server; *log gets the request heads (malloc'd). */
static void
scripted_stop(scripted_t *s, char **log)
{
    char buf[32768];
    size_t len = 0;
    ssize_t r;

    kill(s->pid, SIGTERM);
    waitpid(s->pid, NULL, 0);
    while ((r = read(s->log_fd, buf + len, sizeof(buf) - 1 - len)) > 0) {
        len += (size_t)r;
    }
    buf[len] = '\0';
    close(s->log_fd);
    *log = strdup(buf);
}

static void
scripted_base(const scripted_t *s, char *out, size_t outsz)
{
    snprintf(out, outsz, "http://127.0.0.1:%d/scim/v2", s->port);
}

#define EMPTY_LIST "{\"schemas\":[\"urn:ietf:params:scim:api:messages:2.0:" \
                   "ListResponse\"],\"totalResults\":0,\"Resources\":[]}"

static void
run_scripted(const canned_t *resp, size_t n, const json_t *d, run_t *r,
             char **log)
{
    scripted_t s;
    char base[128];

    scripted_start(&s, resp, n);
    scripted_base(&s, base, sizeof(base));
    T.base_url = base;
    memset(r, 0, sizeof(*r));
    run_ensure(r, d, NULL, NULL);
    scripted_stop(&s, log);
}

static void
test_quote_in_username_filter(void **state)
{
    static const canned_t resp[] = {
        { 200, "application/scim+json", EMPTY_LIST },
        { 201, "application/scim+json",
          "{\"id\":\"u1\",\"userName\":\"o\\\"brien\\\\x\"}" },
    };
    json_t *d = desired_for("o\"brien\\x", "O");
    char *log = NULL;
    run_t r;

    (void)state;
    run_scripted(resp, 2, d, &r, &log);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.created, 1);
    assert_string_equal(r.account_id, "u1");
    /* userName eq "o\"brien\\x", URL-encoded */
    assert_non_null(strstr(log, "GET /scim/v2/Users?filter=userName%20eq%20"
                                "%22o%5C%22brien%5C%5Cx%22 HTTP/1.1\r\n"));
    assert_non_null(strstr(log, "POST /scim/v2/Users HTTP/1.1\r\n"));
    free(log);
    json_decref(d);
}

static void
test_bad_responses(void **state)
{
    static const canned_t malformed[] = {
        { 200, "application/scim+json", "{\"totalResults\": 1, \"Resou" },
    };
    static const canned_t html[] = {
        { 200, "text/html", "<html>login page</html>" },
    };
    static const canned_t shape[] = {
        { 200, "application/scim+json", "{\"totalResults\":\"one\"}" },
    };
    static const canned_t ambiguous[] = {
        { 200, "application/scim+json",
          "{\"totalResults\":2,"
          "\"Resources\":[{\"id\":\"a\"},{\"id\":\"b\"}]}" },
    };
    static const canned_t no_id[] = {
        { 200, "application/scim+json", EMPTY_LIST },
        { 201, "application/scim+json", "{\"userName\":\"q\"}" },
    };
    static const canned_t echo_token[] = {
        { 400, "application/scim+json",
          "{\"status\":\"400\",\"scimType\":\"invalidSyntax\","
          "\"detail\":\"bad header Bearer " TOKEN "\"}" },
    };
    json_t *d = desired_for("quinn", "Q");
    char *log = NULL;
    run_t r;

    (void)state;
    run_scripted(malformed, 1, d, &r, &log);
    assert_int_equal(r.st, PG_ERR_INVALID);
    assert_string_equal(r.reason, "bad_response");
    free(log);

    run_scripted(html, 1, d, &r, &log);
    assert_string_equal(r.reason, "bad_response");
    free(log);

    run_scripted(shape, 1, d, &r, &log);
    assert_string_equal(r.reason, "bad_response");
    free(log);

    run_scripted(ambiguous, 1, d, &r, &log);
    assert_string_equal(r.reason, "bad_response");
    assert_non_null(strstr(r.detail, "ambiguous"));
    free(log);

    run_scripted(no_id, 2, d, &r, &log);
    assert_string_equal(r.reason, "bad_response");
    assert_int_equal(r.has_account, 0);
    free(log);

    /* A peer echoing the bearer token: the detail never carries it. */
    run_scripted(echo_token, 1, d, &r, &log);
    assert_string_equal(r.reason, "target_rejected");
    assert_non_null(strstr(r.detail, "invalidSyntax"));
    assert_null(strstr(r.detail, TOKEN));
    free(log);
    json_decref(d);
}

static void
test_response_over_cap(void **state)
{
    canned_t big[1];
    json_t *d = desired_for("rita", "R");
    size_t n = PG_SCIM_MAX_RESPONSE + 100, i;
    char *body = malloc(n + 1), *log = NULL;
    run_t r;

    (void)state;
    assert_non_null(body);
    /* A syntactically fine but oversized list. */
    memcpy(body, "{\"x\":\"", 6);
    for (i = 6; i < n - 2; i++) {
        body[i] = 'a';
    }
    body[n - 2] = '"';
    body[n - 1] = '}';
    body[n] = '\0';
    big[0].status = 200;
    big[0].ctype = "application/scim+json";
    big[0].body = body;
    run_scripted(big, 1, d, &r, &log);
    assert_string_equal(r.reason, "bad_response");
    assert_int_equal(r.st, PG_ERR_TOO_LARGE);
    free(log);
    free(body);
    json_decref(d);
}

static void
test_group_paths_scripted(void **state)
{
    const char *groups[] = { "staff", NULL };
    json_t *d = desired_for("sam", "Sam"), *u = json_deep_copy(d);
    char *user, list[4096], *log = NULL;
    scripted_t s;
    char base[128];
    run_t r;

    (void)state;
    /* The account exists and is up to date. */
    json_object_set_new(u, "id", json_string("u1"));
    user = json_dumps(u, JSON_COMPACT);
    snprintf(list, sizeof(list),
             "{\"totalResults\":1,\"Resources\":[%s]}", user);
    {
        /* members not returned by the filter query: asked for, present. */
        const canned_t a[] = {
            { 200, "application/scim+json", list },
            { 200, "application/scim+json",
              "{\"totalResults\":1,\"Resources\":[{\"id\":\"g1\","
              "\"displayName\":\"staff\"}]}" },
            { 200, "application/scim+json",
              "{\"id\":\"g1\",\"members\":[{\"value\":\"u1\"}]}" },
        };
        /* ... absent: PATCH add (204, empty body). */
        const canned_t b[] = {
            a[0], a[1],
            { 200, "application/scim+json", "{\"id\":\"g1\"}" },
            { 204, "application/scim+json", "" },
        };
        /* Group created by someone else between lookup and POST. */
        const canned_t c[] = {
            a[0],
            { 200, "application/scim+json", EMPTY_LIST },
            { 409, "application/scim+json",
              "{\"status\":\"409\",\"scimType\":\"uniqueness\"}" },
            { 200, "application/scim+json",
              "{\"totalResults\":1,\"Resources\":[{\"id\":\"g7\","
              "\"displayName\":\"staff\",\"members\":[]}]}" },
            { 200, "application/scim+json", "{\"id\":\"g7\"}" },
        };
        const struct {
            const canned_t *resp;
            size_t n;
            int create;
            unsigned added;
            const char *last;
        } cases[] = {
            { a, 3, 0, 0, "GET /Groups/g1?attributes=members 200" },
            { b, 4, 0, 1, "PATCH /Groups/g1 204" },
            { c, 5, 1, 1, "PATCH /Groups/g7 200" },
        };
        size_t i;

        for (i = 0; i < 3; i++) {
            pg_scim_request_t req;

            scripted_start(&s, cases[i].resp, cases[i].n);
            scripted_base(&s, base, sizeof(base));
            T.base_url = base;
            T.create_missing_groups = cases[i].create;
            memset(&r, 0, sizeof(r));
            memset(&req, 0, sizeof(req));
            req.target = &T;
            req.desired = d;
            req.groups = groups;
            req.on_call = on_call;
            assert_int_equal(pg_scim_ensure(G.http, &req, on_result, &r,
                                            &r.op), PG_OK);
            assert_int_equal(pg_loop_run(G.loop, &r.done, RUN_TIMEOUT_MS),
                             PG_OK);
            scripted_stop(&s, &log);
            assert_int_equal(r.st, PG_OK);
            assert_int_equal(r.adopted, 1);
            assert_int_equal(r.updated, 0);
            assert_int_equal(r.groups_added, cases[i].added);
            assert_int_equal(r.ncalls, (int)cases[i].n);
            assert_string_equal(r.calls[r.ncalls - 1], cases[i].last);
            free(log);
        }
    }
    free(user);
    json_decref(u);
    json_decref(d);
}

/* Case-insensitive search for a header line in a request head log. */
static int
log_has_header(const char *log, const char *line)
{
    char want[512];

    snprintf(want, sizeof(want), "\r\n%s\r\n", line);
    return strcasestr(log, want) != NULL;
}

static void
test_request_headers(void **state)
{
    static const canned_t resp[] = {
        { 200, "application/scim+json", EMPTY_LIST },
        { 201, "application/scim+json", "{\"id\":\"u9\"}" },
    };
    json_t *d = desired_for("sam", "Sam");
    char *log = NULL, *post;
    run_t r;

    (void)state;
    /* Bearer: SCIM media type both ways, token in Authorization. */
    run_scripted(resp, 2, d, &r, &log);
    assert_int_equal(r.st, PG_OK);
    assert_true(log_has_header(log, "Accept: application/scim+json"));
    assert_true(log_has_header(log, "Authorization: Bearer " TOKEN));
    post = strstr(log, "POST /scim/v2/Users");
    assert_non_null(post);
    assert_true(log_has_header(post, "Content-Type: application/scim+json"));
    free(log);

    /* Basic: user/pass from the target ("u:p" is "dTpw"), no bearer. */
    T.auth = PG_AUTH_BASIC;
    T.bearer_token = NULL;
    T.basic_user = (char *)"u";
    T.basic_pass = (char *)"p";
    run_scripted(resp, 2, d, &r, &log);
    assert_int_equal(r.st, PG_OK);
    assert_true(log_has_header(log, "Authorization: Basic dTpw"));
    assert_null(strcasestr(log, "Bearer"));
    free(log);
    json_decref(d);
}

/* ---- pg_scim_classify (pure) ------------------------------------------ */

static void
test_classify(void **state)
{
    pg_scim_retry_t rp = { 4, 100, 1000 };
    unsigned d = 12345, d2 = 0;

    (void)state;
    assert_int_equal(pg_scim_classify(200, PG_OK, NULL, NULL, 1, &rp, 7, 0,
                                      &d), PG_SCIM_ACT_OK);
    assert_int_equal(d, 0);
    assert_int_equal(pg_scim_classify(204, PG_OK, NULL, NULL, 1, NULL, 0, 0,
                                      NULL), PG_SCIM_ACT_OK);
    /* 409: uniqueness (or no scimType) is adoptable, others are not. */
    assert_int_equal(pg_scim_classify(409, PG_OK, "uniqueness", NULL, 1,
                                      NULL, 0, 0, NULL), PG_SCIM_ACT_ADOPT);
    assert_int_equal(pg_scim_classify(409, PG_OK, NULL, NULL, 1, NULL, 0, 0,
                                      NULL), PG_SCIM_ACT_ADOPT);
    assert_int_equal(pg_scim_classify(409, PG_OK, "mutability", NULL, 1,
                                      NULL, 0, 0, NULL), PG_SCIM_ACT_FAIL);
    assert_int_equal(pg_scim_classify(412, PG_OK, NULL, NULL, 1, &rp, 0, 0,
                                      NULL), PG_SCIM_ACT_REREAD_RETRY);
    /* Client errors never retry, even with a policy. */
    assert_int_equal(pg_scim_classify(400, PG_OK, "invalidValue", NULL, 1,
                                      &rp, 0, 0, NULL), PG_SCIM_ACT_FAIL);
    assert_int_equal(pg_scim_classify(401, PG_OK, NULL, NULL, 1, &rp, 0, 0,
                                      NULL), PG_SCIM_ACT_FAIL);
    assert_int_equal(pg_scim_classify(403, PG_OK, NULL, NULL, 1, &rp, 0, 0,
                                      NULL), PG_SCIM_ACT_FAIL);
    assert_int_equal(pg_scim_classify(404, PG_OK, NULL, NULL, 1, &rp, 0, 0,
                                      NULL), PG_SCIM_ACT_FAIL);
    assert_int_equal(pg_scim_classify(501, PG_OK, NULL, NULL, 1, &rp, 0, 0,
                                      NULL), PG_SCIM_ACT_FAIL);
    assert_int_equal(pg_scim_classify(302, PG_OK, NULL, NULL, 1, &rp, 0, 0,
                                      NULL), PG_SCIM_ACT_FAIL);
    /* Retryable outcomes fail without a policy (the default). */
    assert_int_equal(pg_scim_classify(503, PG_OK, NULL, NULL, 1, NULL, 0, 0,
                                      NULL), PG_SCIM_ACT_FAIL);
    /* Exponential backoff with jitter: attempt n -> [b/2, b], b =
     * min(max, base << (n-1)). */
    assert_int_equal(pg_scim_classify(503, PG_OK, NULL, NULL, 1, &rp, 0, 0,
                                      &d), PG_SCIM_ACT_RETRY_AFTER);
    assert_int_equal(d, 50);
    assert_int_equal(pg_scim_classify(429, PG_OK, NULL, NULL, 1, &rp, 50, 0,
                                      &d), PG_SCIM_ACT_RETRY_AFTER);
    assert_int_equal(d, 100);
    assert_int_equal(pg_scim_classify(500, PG_OK, NULL, NULL, 3, &rp,
                                      123456789u, 0, &d),
                     PG_SCIM_ACT_RETRY_AFTER);
    assert_true(d >= 200 && d <= 400);
    assert_int_equal(pg_scim_classify(500, PG_OK, NULL, NULL, 3, &rp,
                                      987654321u, 0, &d2),
                     PG_SCIM_ACT_RETRY_AFTER);
    assert_true(d2 >= 200 && d2 <= 400);
    assert_int_not_equal(d, d2); /* jitter depends on the random input */
    /* Attempts exhausted. */
    assert_int_equal(pg_scim_classify(503, PG_OK, NULL, NULL, 4, &rp, 0, 0,
                                      &d), PG_SCIM_ACT_FAIL);
    /* Cap: max_ms bounds the backoff. */
    rp.max_attempts = 10;
    assert_int_equal(pg_scim_classify(503, PG_OK, NULL, NULL, 9, &rp,
                                      0xffffffffu, 0, &d),
                     PG_SCIM_ACT_RETRY_AFTER);
    assert_true(d >= 500 && d <= 1000);
    /* Transport errors: connect/reset and timeouts retry, others fail. */
    assert_int_equal(pg_scim_classify(0, PG_ERR_IO, NULL, NULL, 1, &rp, 0, 0,
                                      &d), PG_SCIM_ACT_RETRY_AFTER);
    assert_int_equal(pg_scim_classify(0, PG_ERR_TIMEOUT, NULL, NULL, 1, &rp,
                                      0, 0, &d), PG_SCIM_ACT_RETRY_AFTER);
    assert_int_equal(pg_scim_classify(0, PG_ERR_TOO_LARGE, NULL, NULL, 1,
                                      &rp, 0, 0, &d), PG_SCIM_ACT_FAIL);
    /* Retry-After: seconds, honoured when longer than the backoff. */
    rp.max_ms = 5000;
    assert_int_equal(pg_scim_classify(429, PG_OK, NULL, "2", 1, &rp, 0, 0,
                                      &d), PG_SCIM_ACT_RETRY_AFTER);
    assert_int_equal(d, 2000);
    /* ... longer than max_ms: cannot be honoured, fail. */
    assert_int_equal(pg_scim_classify(429, PG_OK, NULL, "120", 1, &rp, 0, 0,
                                      &d), PG_SCIM_ACT_FAIL);
    /* ... an HTTP date 3 s after now (Sun, 06 Nov 1994 08:49:37 GMT is
     * 784111777). */
    assert_int_equal(pg_scim_classify(503, PG_OK, NULL,
                                      "Sun, 06 Nov 1994 08:49:40 GMT", 1, &rp,
                                      0, 784111777, &d),
                     PG_SCIM_ACT_RETRY_AFTER);
    assert_int_equal(d, 3000);
    /* ... garbage is ignored (plain backoff). */
    assert_int_equal(pg_scim_classify(503, PG_OK, NULL, "soon", 1, &rp, 0, 0,
                                      &d), PG_SCIM_ACT_RETRY_AFTER);
    assert_int_equal(d, 50);
}

/* ---- pg_scim_run ------------------------------------------------------- */

static pg_scim_caps_t CAPS;
#define SCIM_ENTERPRISE \
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
static pg_scim_options_t OPTS;

/* Run one pg_scim_run() op to completion. */
static void
run_op(run_t *r, const pg_scim_op_request_t *req0)
{
    pg_scim_op_request_t req = *req0;

    memset(r, 0, sizeof(*r));
    req.target = &T;
    req.on_call = on_call;
    assert_int_equal(pg_scim_run(G.http, &req, on_result, r, &r->op), PG_OK);
    assert_non_null(r->op);
    assert_int_equal(r->cb_count, 0);
    assert_int_equal(pg_loop_run(G.loop, &r->done, RUN_TIMEOUT_MS), PG_OK);
    assert_int_equal(r->cb_count, 1);
}

static void
run_free(run_t *r)
{
    json_decref(r->resource);
    r->resource = NULL;
}

/* Create user <name> through ensure; its id into id. */
static void
make_user(const char *name, const char *const *groups, char *id, size_t idsz)
{
    json_t *d = desired_for(name, "Given");
    run_t r;

    memset(&r, 0, sizeof(r));
    run_ensure(&r, d, NULL, groups);
    assert_int_equal(r.st, PG_OK);
    snprintf(id, idsz, "%s", r.account_id);
    json_decref(d);
}

static void
test_run_rejects_bad_request(void **state)
{
    pg_scim_op_request_t req;
    pg_scim_op_t *op = (pg_scim_op_t *)1;
    run_t r;

    (void)state;
    memset(&r, 0, sizeof(r));
    memset(&req, 0, sizeof(req));
    req.target = &T;
    req.kind = PG_SCIM_OP_GET;          /* no id */
    assert_int_equal(pg_scim_run(G.http, &req, on_result, &r, &op),
                     PG_ERR_INVALID);
    assert_null(op);
    req.kind = PG_SCIM_OP_MODIFY;       /* no operations */
    req.id = "x";
    assert_int_equal(pg_scim_run(G.http, &req, on_result, &r, &op),
                     PG_ERR_INVALID);
    req.kind = PG_SCIM_OP_LIST;         /* filter attribute not allowed */
    req.filter_attr = "password";
    req.filter_value = "x";
    assert_int_equal(pg_scim_run(G.http, &req, on_result, &r, &op),
                     PG_ERR_INVALID);
    req.kind = PG_SCIM_OP_DELETE;       /* If-Match with CR/LF */
    req.filter_attr = NULL;
    req.if_match = "W/\"a\"\r\nX-Evil: 1";
    assert_int_equal(pg_scim_run(G.http, &req, on_result, &r, &op),
                     PG_ERR_INVALID);
    req.if_match = NULL;                /* retries without a host */
    memset(&OPTS, 0, sizeof(OPTS));
    OPTS.retry.max_attempts = 3;
    req.opts = &OPTS;
    assert_int_equal(pg_scim_run(G.http, &req, on_result, &r, &op),
                     PG_ERR_INVALID);
    req.opts = NULL;
    req.kind = PG_SCIM_OP_DISCOVER;     /* nowhere to put the caps */
    assert_int_equal(pg_scim_run(G.http, &req, on_result, &r, &op),
                     PG_ERR_INVALID);
    assert_int_equal(r.cb_count, 0);
}

static void
test_get_modify_deactivate_delete(void **state)
{
    pg_scim_op_request_t req;
    json_t *ops, *st, *u, *b;
    char id[256];
    run_t r;

    (void)state;
    make_user("carol", NULL, id, sizeof(id));

    memset(&req, 0, sizeof(req));
    req.kind = PG_SCIM_OP_GET;
    req.id = id;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    assert_string_equal(json_string_value(json_object_get(r.resource,
                                                          "userName")),
                        "carol");
    assert_true(r.has_etag && strncmp(r.etag, "W/\"", 3) == 0);
    assert_string_equal(r.calls[0] + strlen(r.calls[0]) - 3, "200");
    run_free(&r);

    /* MODIFY: replace a nested attribute and add a phone number. */
    ops = json_pack("[{s:s, s:s, s:s}, {s:s, s:s, s:[{s:s, s:s}]}]",
                    "op", "replace", "path", "name.givenName", "value",
                    "Caroline", "op", "add", "path", "phoneNumbers", "value",
                    "value", "+1 555", "type", "work");
    req.kind = PG_SCIM_OP_MODIFY;
    req.operations = ops;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(r.resource, "name"),
                            "givenName")), "Caroline");
    run_free(&r);
    json_decref(ops);
    st = peer_state();
    u = state_user(st, "carol");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(u, "name"), "givenName")),
                        "Caroline");
    assert_string_equal(json_string_value(json_object_get(json_array_get(
                            json_object_get(u, "phoneNumbers"), 0), "value")),
                        "+1 555");
    b = json_object_get(last_request(st, "PATCH"), "body");
    assert_string_equal(json_string_value(json_array_get(
                            json_object_get(b, "schemas"), 0)),
                        "urn:ietf:params:scim:api:messages:2.0:PatchOp");
    json_decref(st);

    /* DEACTIVATE: one PATCH replace active=false. */
    req.kind = PG_SCIM_OP_DEACTIVATE;
    req.operations = NULL;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.ncalls, 1);
    run_free(&r);
    st = peer_state();
    assert_true(json_is_false(json_object_get(state_user(st, "carol"),
                                              "active")));
    b = json_array_get(json_object_get(json_object_get(
                           last_request(st, "PATCH"), "body"), "Operations"),
                       0);
    assert_string_equal(json_string_value(json_object_get(b, "path")),
                        "active");
    assert_true(json_is_false(json_object_get(b, "value")));
    json_decref(st);

    /* DELETE, then the account is gone: GET and DELETE say not_found. */
    req.kind = PG_SCIM_OP_DELETE;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.http_status, 204);
    st = peer_state();
    assert_null(state_user(st, "carol"));
    json_decref(st);
    run_op(&r, &req);
    assert_int_equal(r.st, PG_ERR_NOT_FOUND);
    assert_string_equal(r.reason, "not_found");
    req.kind = PG_SCIM_OP_GET;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_ERR_NOT_FOUND);
    assert_string_equal(r.reason, "not_found");
}

static void
test_replace_put(void **state)
{
    pg_scim_op_request_t req;
    json_t *res, *st, *u;
    char id[256];
    run_t r;

    (void)state;
    make_user("dave", NULL, id, sizeof(id));
    res = json_pack("{s:[s], s:s, s:{s:s}, s:b}", "schemas",
                    "urn:ietf:params:scim:schemas:core:2.0:User", "userName",
                    "dave", "name", "familyName", "Jones", "active", 1);
    memset(&req, 0, sizeof(req));
    req.kind = PG_SCIM_OP_REPLACE;
    req.id = id;
    req.resource = res;
    run_op(&r, &req);
    json_decref(res);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.ncalls, 1);
    assert_true(strncmp(r.calls[0], "PUT /Users/", 11) == 0);
    run_free(&r);
    st = peer_state();
    u = state_user(st, "dave");
    /* PUT replaced the whole resource: the old emails and givenName are
     * gone. */
    assert_null(json_object_get(u, "emails"));
    assert_null(json_object_get(json_object_get(u, "name"), "givenName"));
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(u, "name"), "familyName")),
                        "Jones");
    json_decref(st);
}

static void
test_list_pagination_and_filters(void **state)
{
    static const char *names[] = { "u1", "u2", "u3", "u4", "u5" };
    pg_scim_op_request_t req;
    char id[256];
    json_t *st;
    size_t i;
    run_t r;

    (void)state;
    for (i = 0; i < 5; i++) {
        make_user(names[i], NULL, id, sizeof(id));
    }
    assert_int_equal(peer_call("POST", "/_admin/reset-log", "{}", NULL), 200);
    memset(&req, 0, sizeof(req));
    req.kind = PG_SCIM_OP_LIST;
    req.page_size = 2;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.nresources, 5);
    assert_int_equal(r.total, 5);
    assert_int_equal(r.ncalls, 3);
    assert_string_equal(r.calls[0], "GET /Users?startIndex=1&count=2 200");
    assert_string_equal(r.calls[1], "GET /Users?startIndex=3&count=2 200");
    assert_string_equal(r.calls[2], "GET /Users?startIndex=5&count=2 200");

    /* Hard cap: more than max_results is an error, not a truncation. */
    req.max_results = 3;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_ERR_TOO_LARGE);
    assert_string_equal(r.reason, "too_many");

    /* Filters: escaped, URL-encoded, case-insensitive on the server. */
    req.max_results = 0;
    req.filter_attr = "userName";
    req.filter_value = "U3";
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.nresources, 1);
    assert_string_equal(r.calls[0], "GET /Users?startIndex=1&count=2"
                        "&filter=userName%20eq%20%22U3%22 200");
    req.filter_attr = "emails.value";
    req.filter_value = "alice@example.org";
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.nresources, 5);
    req.filter_attr = "externalId";
    req.filter_value = "none";
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.nresources, 0);
    assert_int_equal(r.ncalls, 1);
    st = peer_state();
    assert_int_equal(count_requests(st, "GET", "/Users", 0), 3 + 2 + 1 + 3 + 1);
    json_decref(st);
}

/* The reconciliation view of a User: key, id, mapped attributes (nested,
 * multi-valued, extension), groups, active, lastModified (pure). */
static void
test_user_account_mapping(void **state)
{
    static pg_attr_map_t map[5];
    pg_target_cfg_t t;
    json_t *u, *a, *want;

    (void)state;
    memset(map, 0, sizeof(map));
    map[0].scim_path = (char *)"userName";
    map[0].tpl = (char *)"${username}";
    map[1].scim_path = (char *)"name.givenName";
    map[1].tpl = (char *)"${given}";
    map[2].scim_path = (char *)"emails";
    map[2].tpl = (char *)"${email}";
    map[3].scim_path = (char *)
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department";
    map[3].tpl = (char *)"${department}";
    map[4].scim_path = (char *)"title";
    map[4].tpl = (char *)"${title}";
    memset(&t, 0, sizeof(t));
    t.name = (char *)"app";
    t.type = PG_TARGET_SCIM;
    t.attrs = map;
    t.nattrs = 5;
    t.username_attr = (char *)"userName";

    u = json_loads("{\"id\": \"u-1\", \"userName\": \"nora\","
                   " \"name\": {\"GivenName\": \"Nora\"},"
                   " \"emails\": [{\"value\": \"n@x.org\", \"primary\": true},"
                   "              {\"value\": \"n2@x.org\"}],"
                   " \"urn:ietf:params:scim:schemas:extension:enterprise:2.0:"
                   "User\": {\"department\": \"ENG\"},"
                   " \"active\": false,"
                   " \"groups\": [{\"value\": \"g1\", \"display\": \"staff\"},"
                   "              {\"value\": \"g2\"}],"
                   " \"meta\": {\"lastModified\": \"2026-11-27T22:15:53.939Z\"}}",
                   0, NULL);
    assert_non_null(u);
    assert_int_equal(pg_scim_user_account(&t, u, &a), PG_OK);
    assert_string_equal(json_string_value(json_object_get(a, "key")), "nora");
    assert_string_equal(json_string_value(json_object_get(a, "id")), "u-1");
    want = json_loads("{\"name.givenName\": \"Nora\", \"emails\": "
                      "[\"n@x.org\", \"n2@x.org\"], \"urn:ietf:params:scim:"
                      "schemas:extension:enterprise:2.0:User:department\": "
                      "\"ENG\"}", 0, NULL);
    assert_true(json_equal(json_object_get(a, "attrs"), want));
    json_decref(want);
    /* title is absent on the User: left out, never invented */
    assert_null(json_object_get(json_object_get(a, "attrs"), "title"));
    assert_null(json_object_get(json_object_get(a, "attrs"), "userName"));
    want = json_loads("[\"staff\", \"g2\"]", 0, NULL);
    assert_true(json_equal(json_object_get(a, "groups"), want));
    json_decref(want);
    assert_true(json_is_false(json_object_get(a, "active")));
    assert_int_equal(json_integer_value(json_object_get(a, "modified_ms")),
                     1795817753939LL);
    json_decref(a);

    /* active absent = true; no groups = []; an offset timestamp */
    json_object_del(u, "active");
    json_object_del(u, "groups");
    json_object_set_new(json_object_get(u, "meta"), "lastModified",
                        json_string("2026-11-27T23:15:53+01:00"));
    assert_int_equal(pg_scim_user_account(&t, u, &a), PG_OK);
    assert_true(json_is_true(json_object_get(a, "active")));
    assert_int_equal(json_array_size(json_object_get(a, "groups")), 0);
    assert_int_equal(json_integer_value(json_object_get(a, "modified_ms")),
                     1795817753000LL);
    json_decref(a);

    /* a nested username attribute */
    t.username_attr = (char *)"name.givenName";
    assert_int_equal(pg_scim_user_account(&t, u, &a), PG_OK);
    assert_string_equal(json_string_value(json_object_get(a, "key")), "Nora");
    assert_non_null(json_object_get(json_object_get(a, "attrs"), "userName"));
    json_decref(a);
    t.username_attr = (char *)"userName";

    /* no usable id or username: refused, never guessed */
    json_object_set_new(u, "id", json_integer(7));
    a = (json_t *)1;
    assert_int_equal(pg_scim_user_account(&t, u, &a), PG_ERR_INVALID);
    assert_null(a);
    json_object_set_new(u, "id", json_string("u-1"));
    json_object_del(u, "userName");
    assert_int_equal(pg_scim_user_account(&t, u, &a), PG_ERR_INVALID);
    json_decref(u);
}

typedef struct pages {
    size_t npages, nres, total;
    size_t stop_at;            /* return 1 on this page (1-based), 0: never */
    char names[16][32];
} pages_t;

static int
on_page(void *arg, const json_t *res, size_t total)
{
    pages_t *p = arg;
    json_t *e;
    size_t i;

    p->npages++;
    p->total = total;
    json_array_foreach(res, i, e) {
        if (p->nres < 16) {
            snprintf(p->names[p->nres], sizeof(p->names[0]), "%s",
                     json_string_value(json_object_get(e, "userName")));
        }
        p->nres++;
    }
    return p->stop_at != 0 && p->npages == p->stop_at;
}

/* LIST with a page callback: every page delivered as it comes, nothing
 * accumulated; the callback can stop; meta.lastModified filter. */
static void
test_list_page_callback_and_since(void **state)
{
    static const char *names[] = { "p1", "p2", "p3", "p4", "p5" };
    pg_scim_op_request_t req;
    char id[256], expect[256];
    struct timespec ts;
    uint64_t since;
    pages_t pg;
    size_t i;
    run_t r;

    (void)state;
    for (i = 0; i < 5; i++) {
        make_user(names[i], NULL, id, sizeof(id));
    }
    assert_int_equal(peer_call("POST", "/_admin/reset-log", "{}", NULL), 200);
    memset(&pg, 0, sizeof(pg));
    memset(&req, 0, sizeof(req));
    req.kind = PG_SCIM_OP_LIST;
    req.page_size = 2;
    req.page_cb = on_page;
    req.page_arg = &pg;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(pg.npages, 3);
    assert_int_equal(pg.nres, 5);
    assert_int_equal(pg.total, 5);
    assert_int_equal(r.nresources, 0);      /* nothing accumulated */
    assert_int_equal(r.ncalls, 3);
    assert_string_equal(r.calls[2], "GET /Users?startIndex=5&count=2 200");
    for (i = 0; i < 5; i++) {
        assert_string_equal(pg.names[i], names[i]);
    }

    /* the callback stops the listing: no further page is asked for */
    memset(&pg, 0, sizeof(pg));
    pg.stop_at = 2;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_ERR_CANCELLED);
    assert_string_equal(r.reason, "stopped");
    assert_int_equal(pg.npages, 2);
    assert_int_equal(r.ncalls, 2);

    /* the stream cap: more than max_results is an error */
    memset(&pg, 0, sizeof(pg));
    req.max_results = 3;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_ERR_TOO_LARGE);
    assert_string_equal(r.reason, "too_many");
    assert_int_equal(pg.npages, 1);
    req.max_results = 0;

    /* modified since: only the user changed at or after the time */
    usleep(20000);
    clock_gettime(CLOCK_REALTIME, &ts);
    since = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    make_user("p6", NULL, id, sizeof(id));
    memset(&pg, 0, sizeof(pg));
    req.modified_since_ms = since;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(pg.nres, 1);
    assert_string_equal(pg.names[0], "p6");
    {
        time_t secs = (time_t)((since - 1) / 1000u);
        struct tm tm;
        char t0[32];

        gmtime_r(&secs, &tm);
        strftime(t0, sizeof(t0), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(expect, sizeof(expect), "GET /Users?startIndex=1&count=2"
                 "&filter=meta.lastModified%%20gt%%20%%22%s.%03uZ%%22 200",
                 t0, (unsigned)((since - 1) % 1000u));
    }
    assert_string_equal(r.calls[0], expect);
    /* not together with an attribute filter */
    req.filter_attr = "userName";
    req.filter_value = "p6";
    memset(&r, 0, sizeof(r));
    req.target = &T;
    assert_int_equal(pg_scim_run(G.http, &req, on_result, &r, &r.op),
                     PG_ERR_INVALID);
}

/* A server that ignores startIndex answers the first page again: the
 * LIST fails with bad_response instead of reading it as more Users. */
static void
test_list_ignored_start_index(void **state)
{
    static const canned_t resp[] = {
        { 200, "application/scim+json",
          "{\"totalResults\":4,\"Resources\":[{\"id\":\"a\","
          "\"userName\":\"a\"},{\"id\":\"b\",\"userName\":\"b\"}]}" },
        { 200, "application/scim+json",
          "{\"totalResults\":4,\"Resources\":[{\"id\":\"a\","
          "\"userName\":\"a\"},{\"id\":\"b\",\"userName\":\"b\"}]}" },
    };
    pg_scim_op_request_t req;
    scripted_t s;
    char base[128], *log = NULL;
    pages_t pg;
    run_t r;

    (void)state;
    scripted_start(&s, resp, 2);
    scripted_base(&s, base, sizeof(base));
    T.base_url = base;
    memset(&pg, 0, sizeof(pg));
    memset(&req, 0, sizeof(req));
    req.kind = PG_SCIM_OP_LIST;
    req.page_size = 2;
    req.page_cb = on_page;
    req.page_arg = &pg;
    run_op(&r, &req);
    scripted_stop(&s, &log);
    assert_int_equal(r.st, PG_ERR_INVALID);
    assert_string_equal(r.reason, "bad_response");
    assert_non_null(strstr(r.detail, "ignores startIndex"));
    assert_int_equal(pg.npages, 1);      /* the repeat was not delivered */
    assert_non_null(strstr(log, "GET /scim/v2/Users?startIndex=3&count=2 "));
    free(log);
}

static void
test_discovery_cached(void **state)
{
    pg_scim_op_request_t req;
    char id[256];
    json_t *st;
    run_t r;

    (void)state;
    make_user("erin", NULL, id, sizeof(id));
    assert_int_equal(peer_call("POST", "/_admin/reset-log", "{}", NULL), 200);
    memset(&CAPS, 0, sizeof(CAPS));
    memset(&OPTS, 0, sizeof(OPTS));
    OPTS.caps = &CAPS;
    memset(&req, 0, sizeof(req));
    req.kind = PG_SCIM_OP_GET;
    req.id = id;
    req.opts = &OPTS;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.ncalls, 4);
    assert_string_equal(r.calls[0], "GET /ServiceProviderConfig 200");
    assert_string_equal(r.calls[1], "GET /ResourceTypes 200");
    assert_string_equal(r.calls[2], "GET /Schemas 200");
    run_free(&r);
    assert_int_equal(CAPS.loaded, 1);
    assert_int_equal(CAPS.patch, 1);
    assert_int_equal(CAPS.etag, 0);
    assert_int_equal(CAPS.filter, 1);
    assert_int_equal(CAPS.bulk, 1);
    assert_int_equal(CAPS.max_results, 200);
    assert_int_equal(CAPS.bulk_max_ops, 1000);
    assert_int_equal(CAPS.bulk_max_payload, 1048576);
    /* /ResourceTypes: the User type lists the enterprise extension */
    assert_int_equal(CAPS.types_loaded, 1);
    assert_int_equal(CAPS.next, 1);
    assert_string_equal(CAPS.ext[0], SCIM_ENTERPRISE);
    /* /Schemas: the core User attributes and their sub-attributes */
    assert_int_equal(CAPS.schemas_loaded, 1);
    assert_true(CAPS.nattr > 30);
    assert_string_equal(CAPS.attr[0], "userName");
    {
        unsigned i, given = 0;

        for (i = 0; i < CAPS.nattr; i++) {
            given += strcmp(CAPS.attr[i], "name.givenName") == 0;
        }
        assert_int_equal(given, 1);
    }
    /* Cached: the next op does not read it again. */
    run_op(&r, &req);
    assert_int_equal(r.ncalls, 1);
    run_free(&r);
    st = peer_state();
    assert_int_equal(count_requests(st, "GET", "/ServiceProviderConfig", 0),
                     1);
    json_decref(st);

    /* LIST page size is capped by filter.maxResults. */
    assert_int_equal(peer_call("POST", "/_admin/config",
                               "{\"filter_max_results\": 1}", NULL), 200);
    memset(&CAPS, 0, sizeof(CAPS));
    req.kind = PG_SCIM_OP_DISCOVER;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    assert_non_null(json_object_get(r.resource, "patch"));
    run_free(&r);
    assert_int_equal(CAPS.max_results, 1);
    req.kind = PG_SCIM_OP_LIST;
    req.page_size = 50;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    assert_string_equal(r.calls[0], "GET /Users?startIndex=1&count=1 200");
}

/* PATCH switched off and ETags on: reads, then PUT with If-Match. */
static void
test_put_fallback_with_etag(void **state)
{
    const char *groups[] = { "staff", NULL };
    pg_scim_op_request_t req;
    json_t *st, *u, *put;
    char id[256], ver[128];
    run_t r;

    (void)state;
    make_user("frank", groups, id, sizeof(id));
    assert_int_equal(peer_call("POST", "/_admin/config",
                               "{\"patch\": false, \"etag\": true}", NULL),
                     200);
    assert_int_equal(peer_call("POST", "/_admin/reset-log", "{}", NULL), 200);
    st = peer_state();
    snprintf(ver, sizeof(ver), "%s", json_string_value(json_object_get(
                 json_object_get(state_user(st, "frank"), "meta"),
                 "version")));
    json_decref(st);

    memset(&CAPS, 0, sizeof(CAPS));
    memset(&OPTS, 0, sizeof(OPTS));
    OPTS.caps = &CAPS;
    memset(&req, 0, sizeof(req));
    req.kind = PG_SCIM_OP_DEACTIVATE;
    req.id = id;
    req.opts = &OPTS;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    run_free(&r);
    assert_int_equal(CAPS.patch, 0);
    assert_int_equal(CAPS.etag, 1);
    assert_int_equal(r.ncalls, 5);
    assert_string_equal(r.calls[0], "GET /ServiceProviderConfig 200");
    assert_true(strncmp(r.calls[3], "GET /Users/", 11) == 0);
    assert_true(strncmp(r.calls[4], "PUT /Users/", 11) == 0);
    st = peer_state();
    u = state_user(st, "frank");
    assert_true(json_is_false(json_object_get(u, "active")));
    /* Everything else survived the PUT. */
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(u, "name"), "givenName")),
                        "Given");
    put = last_request(st, "PUT");
    assert_string_equal(json_string_value(json_object_get(put, "if_match")),
                        ver);
    assert_null(json_object_get(json_object_get(put, "body"), "meta"));
    assert_int_equal(count_requests(st, "PATCH", "", 1), 0);
    json_decref(st);

    /* Group member removal by PUT of the group without the member. */
    req.kind = PG_SCIM_OP_GROUP_REMOVE;
    st = peer_state();
    {
        json_t *g;
        size_t i;

        json_array_foreach(json_object_get(st, "groups"), i, g) {
            if (strcmp(json_string_value(json_object_get(g, "displayName")),
                       "staff") == 0) {
                snprintf(ver, sizeof(ver), "%s", json_string_value(
                             json_object_get(g, "id")));
            }
        }
    }
    json_decref(st);
    req.id = ver;
    req.member_id = id;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    run_free(&r);
    assert_true(strncmp(r.calls[1], "PUT /Groups/", 12) == 0);
    st = peer_state();
    assert_false(state_group_has(st, "staff", id));
    json_decref(st);

    /* An explicit stale If-Match is the caller's precondition: no
     * re-read, the 412 is reported. */
    req.kind = PG_SCIM_OP_REPLACE;
    req.id = id;
    req.if_match = "W/\"stale\"";
    req.resource = json_pack("{s:[s], s:s}", "schemas",
                             "urn:ietf:params:scim:schemas:core:2.0:User",
                             "userName", "frank");
    run_op(&r, &req);
    json_decref((json_t *)req.resource);
    assert_int_equal(r.st, PG_ERR_CONFLICT);
    assert_string_equal(r.reason, "target_rejected");
    assert_int_equal(r.http_status, 412);
    assert_int_equal(r.ncalls, 1);
}

/* 412 on a write without an explicit version: read again, write again. */
static void
test_412_rereads_once(void **state)
{
    pg_scim_op_request_t req;
    json_t *ops, *st;
    char id[256];
    run_t r;

    (void)state;
    make_user("gina", NULL, id, sizeof(id));
    peer_faults("{\"fail_status\": 412, \"fail_method\": \"PATCH\"}");
    ops = json_pack("[{s:s, s:s, s:s}]", "op", "replace", "path", "title",
                    "value", "Boss");
    memset(&req, 0, sizeof(req));
    req.kind = PG_SCIM_OP_MODIFY;
    req.id = id;
    req.operations = ops;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.reread, 1);
    assert_int_equal(r.ncalls, 3); /* PATCH 412, GET, PATCH */
    assert_string_equal(r.calls[0] + strlen(r.calls[0]) - 3, "412");
    assert_true(strncmp(r.calls[1], "GET /Users/", 11) == 0);
    assert_true(strncmp(r.calls[2], "PATCH /Users/", 13) == 0);
    run_free(&r);
    /* Twice in a row: reported. */
    peer_faults("{\"fail_status\": 412, \"fail_method\": \"PATCH\", "
                "\"fail_count\": 2}");
    run_op(&r, &req);
    assert_int_equal(r.st, PG_ERR_CONFLICT);
    assert_int_equal(r.http_status, 412);
    json_decref(ops);
    st = peer_state();
    assert_string_equal(json_string_value(json_object_get(
                            state_user(st, "gina"), "title")), "Boss");
    json_decref(st);
}

/* ensure: 412 on the user PATCH re-reads and PATCHes again; with ETags
 * advertised the PATCH carries If-Match. */
static void
test_ensure_412_and_if_match(void **state)
{
    json_t *d1 = desired_for("hank", "Hank"), *d2 = desired_for("hank", "H");
    pg_scim_request_t req;
    json_t *st, *p;
    char ver[128];
    run_t r;

    (void)state;
    memset(&r, 0, sizeof(r));
    run_ensure(&r, d1, NULL, NULL);
    assert_int_equal(r.st, PG_OK);
    peer_faults("{\"fail_status\": 412, \"fail_method\": \"PATCH\"}");
    memset(&r, 0, sizeof(r));
    run_ensure(&r, d2, NULL, NULL);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.updated, 1);
    assert_int_equal(r.reread, 1);
    assert_int_equal(r.ncalls, 4); /* lookup, PATCH 412, GET, PATCH */
    assert_true(strncmp(r.calls[2], "GET /Users/", 11) == 0);
    assert_true(strncmp(r.calls[3], "PATCH /Users/", 13) == 0);

    /* ETags on: PATCH with If-Match = the version read. */
    assert_int_equal(peer_call("POST", "/_admin/config",
                               "{\"etag\": true}", NULL), 200);
    st = peer_state();
    snprintf(ver, sizeof(ver), "%s", json_string_value(json_object_get(
                 json_object_get(state_user(st, "hank"), "meta"),
                 "version")));
    json_decref(st);
    memset(&CAPS, 0, sizeof(CAPS));
    memset(&OPTS, 0, sizeof(OPTS));
    OPTS.caps = &CAPS;
    memset(&req, 0, sizeof(req));
    req.target = &T;
    req.desired = d1;
    req.on_call = on_call;
    req.opts = &OPTS;
    memset(&r, 0, sizeof(r));
    assert_int_equal(pg_scim_ensure(G.http, &req, on_result, &r, &r.op),
                     PG_OK);
    assert_int_equal(pg_loop_run(G.loop, &r.done, RUN_TIMEOUT_MS), PG_OK);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.updated, 1);
    assert_string_equal(r.calls[0], "GET /ServiceProviderConfig 200");
    st = peer_state();
    p = last_request(st, "PATCH");
    assert_string_equal(json_string_value(json_object_get(p, "if_match")),
                        ver);
    assert_int_equal(json_integer_value(json_object_get(p, "status")), 200);
    json_decref(st);

    /* PATCH off: the ensure update becomes a PUT of the whole account. */
    assert_int_equal(peer_call("POST", "/_admin/config",
                               "{\"patch\": false}", NULL), 200);
    memset(&CAPS, 0, sizeof(CAPS));
    req.desired = d2;
    memset(&r, 0, sizeof(r));
    assert_int_equal(pg_scim_ensure(G.http, &req, on_result, &r, &r.op),
                     PG_OK);
    assert_int_equal(pg_loop_run(G.loop, &r.done, RUN_TIMEOUT_MS), PG_OK);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.updated, 1);
    /* SPC, ResourceTypes, Schemas, lookup, PUT */
    assert_true(strncmp(r.calls[4], "PUT /Users/", 11) == 0);
    st = peer_state();
    assert_string_equal(json_string_value(json_object_get(json_object_get(
                            state_user(st, "hank"), "name"), "givenName")),
                        "H");
    assert_string_equal(json_string_value(json_object_get(json_array_get(
                            json_object_get(state_user(st, "hank"), "emails"),
                            0), "value")), "alice@example.org");
    json_decref(st);
    json_decref(d1);
    json_decref(d2);
}

static void
test_group_remove_dialects(void **state)
{
    const char *groups[] = { "staff", "engineering", NULL };
    pg_scim_op_request_t req;
    json_t *st, *g, *b, *o;
    char id[256], staff[128] = "", eng[128] = "";
    size_t i;
    run_t r;

    (void)state;
    make_user("ivy", groups, id, sizeof(id));
    st = peer_state();
    json_array_foreach(json_object_get(st, "groups"), i, g) {
        const char *n = json_string_value(json_object_get(g, "displayName"));

        snprintf(strcmp(n, "staff") == 0 ? staff : eng, 128, "%s",
                 json_string_value(json_object_get(g, "id")));
    }
    assert_true(state_group_has(st, "staff", id));
    assert_true(state_group_has(st, "engineering", id));
    json_decref(st);
    memset(&OPTS, 0, sizeof(OPTS));
    memset(&req, 0, sizeof(req));
    req.kind = PG_SCIM_OP_GROUP_REMOVE;
    req.id = staff;
    req.member_id = id;
    req.opts = &OPTS;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    run_free(&r);
    st = peer_state();
    assert_false(state_group_has(st, "staff", id));
    assert_true(state_group_has(st, "engineering", id));
    o = json_array_get(json_object_get(json_object_get(
                           last_request(st, "PATCH"), "body"), "Operations"),
                       0);
    assert_string_equal(json_string_value(json_object_get(o, "op")),
                        "remove");
    b = json_object_get(o, "path");
    assert_true(strncmp(json_string_value(b), "members[value eq \"", 18)
                == 0);
    assert_null(json_object_get(o, "value"));
    json_decref(st);

    /* The value-array dialect (for servers that expect it). SCIMMY
     * accepts the request but ignores the value of a "remove" (RFC 7644
     * only defines the filter form), so only the request is checked. */
    OPTS.dialect.member_remove_value = 1;
    req.id = eng;
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.ncalls, 1);
    run_free(&r);
    st = peer_state();
    assert_true(strncmp(json_string_value(json_object_get(
                    last_request(st, "PATCH"), "path")),
                        "/scim/v2/Groups/", 16) == 0);
    assert_non_null(strstr(json_string_value(json_object_get(
                        last_request(st, "PATCH"), "path")), eng));
    o = json_array_get(json_object_get(json_object_get(
                           last_request(st, "PATCH"), "body"), "Operations"),
                       0);
    assert_string_equal(json_string_value(json_object_get(o, "path")),
                        "members");
    assert_string_equal(json_string_value(json_object_get(json_array_get(
                            json_object_get(o, "value"), 0), "value")), id);
    json_decref(st);
}

static void
test_retry_backoff(void **state)
{
    pg_scim_op_request_t req;
    json_t *d = desired_for("jack", "Jack");
    pg_scim_request_t ereq;
    int i;
    char id[256];
    json_t *st;
    run_t r;

    (void)state;
    make_user("jack", NULL, id, sizeof(id));
    memset(&OPTS, 0, sizeof(OPTS));
    OPTS.host = pg_loop_host(G.loop);
    OPTS.retry.max_attempts = 3;
    OPTS.retry.base_ms = 20;
    OPTS.retry.max_ms = 200;
    memset(&req, 0, sizeof(req));
    req.kind = PG_SCIM_OP_GET;
    req.id = id;
    req.opts = &OPTS;

    /* Two 503s, then success. */
    peer_faults("{\"fail_status\": 503, \"fail_count\": 2}");
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.retries, 2);
    assert_int_equal(r.ncalls, 3);
    assert_string_equal(r.calls[0] + strlen(r.calls[0]) - 3, "503");
    assert_string_equal(r.calls[2] + strlen(r.calls[2]) - 3, "200");
    run_free(&r);

    /* Three failures: attempts exhausted, reported. */
    peer_faults("{\"fail_status\": 500, \"fail_count\": 3}");
    run_op(&r, &req);
    assert_int_equal(r.st, PG_ERR_HTTP);
    assert_string_equal(r.reason, "target_unavailable");
    assert_int_equal(r.ncalls, 3);

    /* Connection resets count too (libcurl itself may retry a reused
     * connection once, hence two resets and at least one retry here). */
    peer_faults("{\"reset\": true, \"fail_count\": 2}");
    run_op(&r, &req);
    assert_int_equal(r.st, PG_OK);
    assert_true(r.retries >= 1 && r.retries <= 2);
    run_free(&r);

    /* Retry-After beyond max_ms: not retried. */
    peer_faults("{\"fail_status\": 429, \"retry_after\": 5}");
    run_op(&r, &req);
    assert_int_equal(r.st, PG_ERR_HTTP);
    assert_int_equal(r.ncalls, 1);

    /* 400 is never retried. */
    peer_faults("{\"fail_status\": 400}");
    run_op(&r, &req);
    assert_int_equal(r.st, PG_ERR_HTTP);
    assert_string_equal(r.reason, "target_rejected");
    assert_int_equal(r.ncalls, 1);

    /* ensure with retries: a 500 on the lookup is retried. */
    peer_faults("{\"fail_status\": 500, \"fail_method\": \"GET\"}");
    memset(&ereq, 0, sizeof(ereq));
    ereq.target = &T;
    ereq.desired = d;
    ereq.on_call = on_call;
    ereq.opts = &OPTS;
    memset(&r, 0, sizeof(r));
    assert_int_equal(pg_scim_ensure(G.http, &ereq, on_result, &r, &r.op),
                     PG_OK);
    assert_int_equal(pg_loop_run(G.loop, &r.done, RUN_TIMEOUT_MS), PG_OK);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.adopted, 1);
    assert_int_equal(r.retries, 1);
    /* ... and without opts (the gateway's default) it is not. */
    peer_faults("{\"fail_status\": 500, \"fail_method\": \"GET\"}");
    memset(&r, 0, sizeof(r));
    run_ensure(&r, d, NULL, NULL);
    assert_int_equal(r.st, PG_ERR_HTTP);
    assert_int_equal(r.ncalls, 1);

    /* Cancel while waiting for the retry timer: no callback, no leak. */
    OPTS.retry.base_ms = 200;
    peer_faults("{\"fail_status\": 503}");
    memset(&r, 0, sizeof(r));
    req.target = &T;
    req.on_call = on_call;
    assert_int_equal(pg_scim_run(G.http, &req, on_result, &r, &r.op), PG_OK);
    for (i = 0; i < 300 && r.ncalls == 0; i++) {
        spin(10);
    }
    assert_int_equal(r.ncalls, 1);
    pg_scim_cancel(r.op);
    spin(300);
    assert_int_equal(r.cb_count, 0);
    st = peer_state();
    /* 503,503,200 + 500 x3 + reset,reset,200 + 429 + 400 + the cancelled
     * op's single 503: nothing was sent after the cancel. */
    assert_int_equal(count_requests(st, "GET", "/Users/", 1), 12);
    json_decref(st);
    json_decref(d);
}

/* OAuth 2.0 client credentials against the peer's token endpoint. */
static void
test_oauth_client_credentials(void **state)
{
    pg_scim_oauth_cfg_t oc;
    pg_scim_oauth_t *oauth = NULL;
    pg_scim_op_request_t req;
    char url[160], id[256];
    json_t *info = NULL;
    run_t r1, r2, r3;

    (void)state;
    make_user("kim", NULL, id, sizeof(id));
    assert_int_equal(peer_call("POST", "/_admin/oauth",
                               "{\"client_id\": \"prov gate\", "
                               "\"client_secret\": \"s3cr:t\", "
                               "\"latency_ms\": 100}", NULL), 200);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/oauth/token", G.port);
    memset(&oc, 0, sizeof(oc));
    oc.token_url = url;
    oc.client_id = "prov gate";
    oc.client_secret = "s3cr:t";
    oc.scope = "scim.write";
    assert_int_equal(pg_scim_oauth_new(&oc, &oauth), PG_OK);
    memset(&OPTS, 0, sizeof(OPTS));
    OPTS.oauth = oauth;
    /* The static token must not be what authenticates. */
    T.bearer_token = (char *)"wrong-static-token";

    /* Two ops started together share one token fetch. */
    memset(&req, 0, sizeof(req));
    req.kind = PG_SCIM_OP_GET;
    req.id = id;
    req.target = &T;
    req.on_call = on_call;
    req.opts = &OPTS;
    memset(&r1, 0, sizeof(r1));
    memset(&r2, 0, sizeof(r2));
    assert_int_equal(pg_scim_run(G.http, &req, on_result, &r1, &r1.op),
                     PG_OK);
    assert_int_equal(pg_scim_run(G.http, &req, on_result, &r2, &r2.op),
                     PG_OK);
    assert_int_equal(r1.cb_count + r2.cb_count, 0);
    assert_int_equal(pg_loop_run(G.loop, &r1.done, RUN_TIMEOUT_MS), PG_OK);
    assert_int_equal(pg_loop_run(G.loop, &r2.done, RUN_TIMEOUT_MS), PG_OK);
    assert_int_equal(r1.st, PG_OK);
    assert_int_equal(r2.st, PG_OK);
    run_free(&r1);
    run_free(&r2);
    assert_int_equal(peer_call("GET", "/_admin/oauth", NULL, &info), 200);
    assert_int_equal(json_integer_value(json_object_get(info,
                                                        "token_requests")), 1);
    assert_string_equal(json_string_value(json_object_get(info,
                                                          "last_scope")),
                        "scim.write");
    assert_string_equal(json_string_value(json_object_get(info,
                                                          "last_auth")),
                        "basic");
    json_decref(info);

    /* Cached: a later op does not fetch again. */
    run_op(&r3, &req);
    assert_int_equal(r3.st, PG_OK);
    run_free(&r3);
    assert_int_equal(peer_call("GET", "/_admin/oauth", NULL, &info), 200);
    assert_int_equal(json_integer_value(json_object_get(info,
                                                        "token_requests")), 1);
    json_decref(info);
    pg_scim_oauth_free(oauth);

    /* expires_in within the skew: every op fetches a fresh token. */
    assert_int_equal(peer_call("POST", "/_admin/oauth",
                               "{\"client_id\": \"prov gate\", "
                               "\"client_secret\": \"s3cr:t\", "
                               "\"expires_in\": 20}", NULL), 200);
    oc.skew_s = 30;
    assert_int_equal(pg_scim_oauth_new(&oc, &oauth), PG_OK);
    OPTS.oauth = oauth;
    run_op(&r3, &req);
    assert_int_equal(r3.st, PG_OK);
    run_free(&r3);
    run_op(&r3, &req);
    assert_int_equal(r3.st, PG_OK);
    run_free(&r3);
    assert_int_equal(peer_call("GET", "/_admin/oauth", NULL, &info), 200);
    assert_int_equal(json_integer_value(json_object_get(info,
                                                        "token_requests")), 2);
    json_decref(info);

    /* Wrong secret: the waiting op fails with target_auth, no SCIM call. */
    pg_scim_oauth_free(oauth);
    oc.client_secret = "nope";
    assert_int_equal(pg_scim_oauth_new(&oc, &oauth), PG_OK);
    OPTS.oauth = oauth;
    run_op(&r3, &req);
    assert_int_equal(r3.st, PG_ERR_DENIED);
    assert_string_equal(r3.reason, "target_auth");
    assert_int_equal(r3.ncalls, 0);

    /* Cancel while waiting for the token: no callback. */
    pg_scim_oauth_free(oauth);
    oc.client_secret = "s3cr:t";
    assert_int_equal(pg_scim_oauth_new(&oc, &oauth), PG_OK);
    OPTS.oauth = oauth;
    memset(&r1, 0, sizeof(r1));
    assert_int_equal(pg_scim_run(G.http, &req, on_result, &r1, &r1.op),
                     PG_OK);
    pg_scim_cancel(r1.op);
    spin(50);
    assert_int_equal(r1.cb_count, 0);
    /* The cache still works for the next op. */
    run_op(&r3, &req);
    assert_int_equal(r3.st, PG_OK);
    run_free(&r3);
    pg_scim_oauth_free(oauth);
}

/* dialect.no_extensions: the enterprise extension is not sent. */
static void
test_dialect_no_extensions(void **state)
{
    const char *ent = "urn:ietf:params:scim:schemas:extension:enterprise:"
                      "2.0:User";
    pg_scim_request_t req;
    json_t *d, *st, *body;
    run_t r;

    (void)state;
    d = json_pack("{s:[s, s], s:s, s:{s:s}}", "schemas",
                  "urn:ietf:params:scim:schemas:core:2.0:User", ent,
                  "userName", "lena", ent, "department", "R&D");
    assert_non_null(d);
    memset(&OPTS, 0, sizeof(OPTS));
    OPTS.dialect.no_extensions = 1;
    memset(&req, 0, sizeof(req));
    req.target = &T;
    req.desired = d;
    req.on_call = on_call;
    req.opts = &OPTS;
    memset(&r, 0, sizeof(r));
    assert_int_equal(pg_scim_ensure(G.http, &req, on_result, &r, &r.op),
                     PG_OK);
    assert_int_equal(pg_loop_run(G.loop, &r.done, RUN_TIMEOUT_MS), PG_OK);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.created, 1);
    st = peer_state();
    body = json_object_get(last_request(st, "POST"), "body");
    assert_null(json_object_get(body, ent));
    assert_int_equal(json_array_size(json_object_get(body, "schemas")), 1);
    assert_null(json_object_get(state_user(st, "lena"), ent));
    json_decref(st);
    /* The caller's desired object is untouched (the op works on a copy). */
    assert_non_null(json_object_get(d, ent));

    /* Without the dialect the extension goes out and is stored. */
    assert_int_equal(peer_call("POST", "/_admin/clear", "{}", NULL), 200);
    memset(&r, 0, sizeof(r));
    run_ensure(&r, d, NULL, NULL);
    assert_int_equal(r.st, PG_OK);
    st = peer_state();
    assert_string_equal(json_string_value(json_object_get(json_object_get(
                            state_user(st, "lena"), ent), "department")),
                        "R&D");
    json_decref(st);
    json_decref(d);
}

/* Group membership on a target without PATCH (discovered): the ensure
 * adds the member with a PUT of the group as read, keeping the members it
 * had; no PATCH is sent. */
static void
test_group_add_by_put(void **state)
{
    const char *staff[] = { "staff", NULL };
    const char *both[] = { "staff", "engineering", NULL };
    pg_scim_request_t req;
    json_t *d1, *d2, *st, *put, *r;
    char olga[256], pete[256];
    size_t i;
    run_t run;

    (void)state;
    d1 = desired_for("olga", "Olga");
    d2 = desired_for("pete", "Pete");
    memset(&run, 0, sizeof(run));
    run_ensure(&run, d1, NULL, staff);          /* PATCH add, as before */
    assert_int_equal(run.st, PG_OK);
    snprintf(olga, sizeof(olga), "%s", run.account_id);
    assert_int_equal(peer_call("POST", "/_admin/config",
                               "{\"patch\": false}", NULL), 200);
    assert_int_equal(peer_call("POST", "/_admin/reset-log", "{}", NULL), 200);
    memset(&CAPS, 0, sizeof(CAPS));
    memset(&OPTS, 0, sizeof(OPTS));
    OPTS.caps = &CAPS;
    memset(&req, 0, sizeof(req));
    req.target = &T;
    req.desired = d2;
    req.groups = both;
    req.on_call = on_call;
    req.opts = &OPTS;
    memset(&run, 0, sizeof(run));
    assert_int_equal(pg_scim_ensure(G.http, &req, on_result, &run, &run.op),
                     PG_OK);
    assert_int_equal(pg_loop_run(G.loop, &run.done, RUN_TIMEOUT_MS), PG_OK);
    assert_int_equal(run.st, PG_OK);
    assert_int_equal(run.created, 1);
    assert_int_equal(run.groups_added, 2);
    assert_int_equal(CAPS.loaded, 1);
    assert_int_equal(CAPS.patch, 0);
    snprintf(pete, sizeof(pete), "%s", run.account_id);
    st = peer_state();
    assert_null(last_request(st, "PATCH"));
    put = last_request(st, "PUT");
    assert_non_null(put);
    assert_non_null(strstr(json_string_value(json_object_get(put, "path")),
                           "/Groups/"));
    assert_null(json_object_get(json_object_get(put, "body"), "meta"));
    assert_non_null(json_object_get(json_object_get(put, "body"),
                                    "displayName"));
    json_array_foreach(json_object_get(st, "requests"), i, r) {
        const char *m = json_string_value(json_object_get(r, "method"));

        assert_true(m == NULL || strcmp(m, "PATCH") != 0);
    }
    assert_true(state_group_has(st, "staff", olga));   /* kept */
    assert_true(state_group_has(st, "staff", pete));
    assert_true(state_group_has(st, "engineering", pete));
    assert_false(state_group_has(st, "engineering", olga));
    json_decref(st);
    json_decref(d1);
    json_decref(d2);
}

/* Ensure with opts.bulk on a target that supports Bulk (discovered): the
 * group membership PATCHes go in POST /Bulk requests, at most
 * bulk.maxOperations each; a failed Bulk falls back to one PATCH per
 * group. */
static void
test_group_add_by_bulk(void **state)
{
    const char *both[] = { "staff", "engineering", NULL };
    pg_scim_request_t req;
    json_t *d, *st, *b;
    run_t run;
    int pass;

    (void)state;
    for (pass = 0; pass < 3; pass++) {
        /* 0: one Bulk of 2; 1: maxOperations 1, two Bulks; 2: Bulk
         * answers 500, one PATCH per group */
        static const char *const names[] = { "bulka", "bulkb", "bulkc" };

        d = desired_for(names[pass], "Bulk");
        if (pass == 1) {
            assert_int_equal(peer_call("POST", "/_admin/config",
                                       "{\"bulk_max_operations\": 1}", NULL),
                             200);
        }
        if (pass == 2) {
            assert_int_equal(peer_call("POST", "/_admin/faults",
                                       "{\"fail_status\": 500, "
                                       "\"fail_paths\": \"/Bulk$\"}", NULL),
                             200);
        }
        assert_int_equal(peer_call("POST", "/_admin/reset-log", "{}", NULL),
                         200);
        memset(&CAPS, 0, sizeof(CAPS));
        memset(&OPTS, 0, sizeof(OPTS));
        OPTS.caps = &CAPS;
        OPTS.bulk = 1;
        memset(&req, 0, sizeof(req));
        req.target = &T;
        req.desired = d;
        req.groups = both;
        req.on_call = on_call;
        req.opts = &OPTS;
        memset(&run, 0, sizeof(run));
        assert_int_equal(pg_scim_ensure(G.http, &req, on_result, &run,
                                        &run.op), PG_OK);
        assert_int_equal(pg_loop_run(G.loop, &run.done, RUN_TIMEOUT_MS),
                         PG_OK);
        assert_int_equal(run.st, PG_OK);
        assert_int_equal(run.created, 1);
        assert_int_equal(run.groups_added, 2);
        st = peer_state();
        assert_true(state_group_has(st, "staff", run.account_id));
        assert_true(state_group_has(st, "engineering", run.account_id));
        if (pass == 0) {
            assert_int_equal(count_requests(st, "POST", "/Bulk", 0), 1);
            assert_int_equal(count_requests(st, "PATCH", "/Groups/", 1), 0);
            b = last_request(st, "POST");
            assert_int_equal(json_array_size(json_object_get(
                                 json_object_get(b, "body"), "Operations")),
                             2);
            assert_string_equal(json_string_value(json_object_get(
                                    json_array_get(json_object_get(
                                        json_object_get(b, "body"),
                                        "Operations"), 0), "method")),
                                "PATCH");
        } else if (pass == 1) {
            assert_int_equal(CAPS.bulk_max_ops, 1);
            assert_int_equal(count_requests(st, "POST", "/Bulk", 0), 2);
            assert_int_equal(count_requests(st, "PATCH", "/Groups/", 1), 0);
        } else {
            assert_int_equal(count_requests(st, "POST", "/Bulk", 0), 1);
            assert_int_equal(count_requests(st, "PATCH", "/Groups/", 1), 2);
        }
        json_decref(st);
        json_decref(d);
    }
}

/* Discovery adapts the desired User: an extension the User resource type
 * does not list is not sent; attribute names are sent as /Schemas spells
 * them. (Caps filled here as a server without the extension would.) */
static void
test_adapt_to_discovered_schema(void **state)
{
    pg_scim_request_t req;
    json_t *d, *st, *post, *body;
    run_t run;

    (void)state;
    d = desired_for("schemy", "Schemy");
    json_object_set_new(d, "displayname", json_string("Sch Emy"));
    json_object_set_new(d, SCIM_ENTERPRISE,
                        json_pack("{s:s}", "department", "R&D"));
    json_array_append_new(json_object_get(d, "schemas"),
                          json_string(SCIM_ENTERPRISE));
    json_object_set_new(json_object_get(d, "name"), "GIVENNAME",
                        json_string("Sch"));
    json_object_del(json_object_get(d, "name"), "givenName");
    memset(&CAPS, 0, sizeof(CAPS));
    CAPS.loaded = 1;
    CAPS.patch = 1;
    CAPS.types_loaded = 1;            /* User type without extensions */
    CAPS.schemas_loaded = 1;
    snprintf(CAPS.attr[0], sizeof(CAPS.attr[0]), "userName");
    snprintf(CAPS.attr[1], sizeof(CAPS.attr[1]), "displayName");
    snprintf(CAPS.attr[2], sizeof(CAPS.attr[2]), "name");
    snprintf(CAPS.attr[3], sizeof(CAPS.attr[3]), "name.givenName");
    CAPS.nattr = 4;
    memset(&OPTS, 0, sizeof(OPTS));
    OPTS.caps = &CAPS;
    assert_int_equal(peer_call("POST", "/_admin/reset-log", "{}", NULL), 200);
    memset(&req, 0, sizeof(req));
    req.target = &T;
    req.desired = d;
    req.on_call = on_call;
    req.opts = &OPTS;
    memset(&run, 0, sizeof(run));
    assert_int_equal(pg_scim_ensure(G.http, &req, on_result, &run, &run.op),
                     PG_OK);
    assert_int_equal(pg_loop_run(G.loop, &run.done, RUN_TIMEOUT_MS), PG_OK);
    assert_int_equal(run.st, PG_OK);
    assert_int_equal(run.created, 1);
    st = peer_state();
    post = last_request(st, "POST");
    body = json_object_get(post, "body");
    assert_null(json_object_get(body, SCIM_ENTERPRISE));
    assert_int_equal(json_array_size(json_object_get(body, "schemas")), 1);
    assert_null(json_object_get(body, "displayname"));
    assert_string_equal(json_string_value(json_object_get(body,
                                                          "displayName")),
                        "Sch Emy");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(body, "name"), "givenName")),
                        "Sch");
    assert_null(json_object_get(json_object_get(body, "name"), "GIVENNAME"));
    assert_non_null(state_user(st, "schemy"));
    json_decref(st);
    json_decref(d);
}

/* Group add by PUT with ETags: a 412 (another member was added since the
 * group was read) re-reads the whole group once and PUTs again with its
 * new version, keeping the other member. */
static void
test_group_put_412_rereads(void **state)
{
    const char *groups[] = { "staff", NULL };
    json_t *d = desired_for("sam", "Sam"), *u = json_deep_copy(d);
    char *user, list[4096], *log = NULL;
    pg_scim_request_t req;
    scripted_t s;
    char base[128];
    run_t r;

    (void)state;
    json_object_set_new(u, "id", json_string("u1"));
    user = json_dumps(u, JSON_COMPACT);
    snprintf(list, sizeof(list),
             "{\"totalResults\":1,\"Resources\":[%s]}", user);
    {
        const canned_t a[] = {
            { 200, "application/scim+json", list },
            { 200, "application/scim+json",
              "{\"totalResults\":1,\"Resources\":[{\"id\":\"g1\","
              "\"displayName\":\"staff\",\"members\":[],"
              "\"meta\":{\"version\":\"W/\\\"1\\\"\"}}]}" },
            { 412, "application/scim+json", "{\"status\":\"412\"}" },
            { 200, "application/scim+json",
              "{\"id\":\"g1\",\"displayName\":\"staff\","
              "\"members\":[{\"value\":\"other\"}],"
              "\"meta\":{\"version\":\"W/\\\"2\\\"\"}}" },
            { 200, "application/scim+json",
              "{\"id\":\"g1\",\"displayName\":\"staff\"}" },
        };

        scripted_start(&s, a, 5);
    }
    scripted_base(&s, base, sizeof(base));
    T.base_url = base;
    memset(&CAPS, 0, sizeof(CAPS));
    CAPS.loaded = 1;      /* as if discovered: ETags, no PATCH */
    CAPS.etag = 1;
    memset(&OPTS, 0, sizeof(OPTS));
    OPTS.caps = &CAPS;
    memset(&r, 0, sizeof(r));
    memset(&req, 0, sizeof(req));
    req.target = &T;
    req.desired = d;
    req.groups = groups;
    req.on_call = on_call;
    req.opts = &OPTS;
    assert_int_equal(pg_scim_ensure(G.http, &req, on_result, &r, &r.op),
                     PG_OK);
    assert_int_equal(pg_loop_run(G.loop, &r.done, RUN_TIMEOUT_MS), PG_OK);
    scripted_stop(&s, &log);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.groups_added, 1);
    assert_int_equal(r.ncalls, 5);
    assert_string_equal(r.calls[2], "PUT /Groups/g1 412");
    assert_string_equal(r.calls[3], "GET /Groups/g1 200");
    assert_string_equal(r.calls[4], "PUT /Groups/g1 200");
    assert_true(log_has_header(log, "If-Match: W/\"1\""));
    assert_true(log_has_header(log, "If-Match: W/\"2\""));
    free(log);
    free(user);
    json_decref(u);
    json_decref(d);
}

/* MODIFY without PATCH support: the operations are applied locally to the
 * resource read and the result is PUT. */
static void
test_put_fallback_applies_ops(void **state)
{
    pg_scim_op_request_t req;
    json_t *ops, *st, *u, *e;
    char id[256];
    run_t r;

    (void)state;
    make_user("mona", NULL, id, sizeof(id));
    assert_int_equal(peer_call("POST", "/_admin/config",
                               "{\"patch\": false}", NULL), 200);
    ops = json_pack("[{s:s, s:s, s:s},"           /* nested, odd case */
                    " {s:s, s:s, s:[{s:s, s:s}]},"  /* add to emails */
                    " {s:s, s:{s:s}},"              /* no path */
                    " {s:s, s:s},"                  /* remove by filter */
                    " {s:s, s:s}]",                 /* remove attribute */
                    "op", "Replace", "path", "NAME.givenName", "value", "Mo",
                    "op", "add", "path", "emails", "value", "value",
                    "mona@home.example", "type", "home",
                    "op", "add", "value", "title", "Chief",
                    "op", "remove", "path",
                    "emails[value eq \"alice@example.org\"]",
                    "op", "remove", "path", "name.familyName");
    assert_non_null(ops);
    memset(&CAPS, 0, sizeof(CAPS));
    memset(&OPTS, 0, sizeof(OPTS));
    OPTS.caps = &CAPS;
    memset(&req, 0, sizeof(req));
    req.kind = PG_SCIM_OP_MODIFY;
    req.id = id;
    req.operations = ops;
    req.opts = &OPTS;
    run_op(&r, &req);
    json_decref(ops);
    assert_int_equal(r.st, PG_OK);
    run_free(&r);
    st = peer_state();
    assert_int_equal(count_requests(st, "PATCH", "", 1), 0);
    assert_int_equal(count_requests(st, "PUT", "/Users/", 1), 1);
    u = state_user(st, "mona");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(u, "name"), "givenName")), "Mo");
    assert_null(json_object_get(json_object_get(u, "name"), "familyName"));
    assert_string_equal(json_string_value(json_object_get(u, "title")),
                        "Chief");
    e = json_object_get(u, "emails");
    assert_int_equal(json_array_size(e), 1);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(e, 0), "value")),
                        "mona@home.example");
    json_decref(st);

    /* A filter the fallback cannot apply: "unsupported", nothing written. */
    assert_int_equal(peer_call("POST", "/_admin/reset-log", "{}", NULL), 200);
    ops = json_pack("[{s:s, s:s, s:s}]", "op", "replace", "path",
                    "emails[type eq \"home\"].value", "value", "x@y.z");
    req.operations = ops;
    run_op(&r, &req);
    json_decref(ops);
    assert_int_equal(r.st, PG_ERR_INVALID);
    assert_string_equal(r.reason, "unsupported");
    st = peer_state();
    assert_int_equal(count_requests(st, "PUT", "", 1), 0);
    assert_int_equal(count_requests(st, "GET", "/Users/", 1), 1);
    json_decref(st);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_filter_escape),
        cmocka_unit_test(test_build_user),
        cmocka_unit_test_setup(test_ensure_rejects_bad_request, test_setup),
        cmocka_unit_test_setup(test_create_then_returning, test_setup),
        cmocka_unit_test_setup(test_stale_known_id_falls_back, test_setup),
        cmocka_unit_test_setup(test_attribute_change_patches_once, test_setup),
        cmocka_unit_test_setup(test_adopt_existing, test_setup),
        cmocka_unit_test_setup(test_conflict_then_adopt, test_setup),
        cmocka_unit_test_setup(test_conflict_without_account, test_setup),
        cmocka_unit_test_setup(test_groups_added_once, test_setup),
        cmocka_unit_test_setup(test_group_unknown, test_setup),
        cmocka_unit_test_setup(test_group_created_when_allowed, test_setup),
        cmocka_unit_test_setup(test_server_error_unavailable, test_setup),
        cmocka_unit_test_setup(test_rejected_with_scim_detail, test_setup),
        cmocka_unit_test_setup(test_timeout, test_setup),
        cmocka_unit_test_setup(test_wrong_token_auth, test_setup),
        cmocka_unit_test_setup(test_connection_refused, test_setup),
        cmocka_unit_test_setup(test_cancel_in_flight, test_setup),
        cmocka_unit_test_setup(test_cancel_at_every_step, test_setup),
        cmocka_unit_test_setup(test_backslash_username_roundtrip, test_setup),
        cmocka_unit_test_setup(test_quote_in_username_filter, test_setup),
        cmocka_unit_test_setup(test_bad_responses, test_setup),
        cmocka_unit_test_setup(test_response_over_cap, test_setup),
        cmocka_unit_test_setup(test_request_headers, test_setup),
        cmocka_unit_test_setup(test_group_paths_scripted, test_setup),
        cmocka_unit_test(test_classify),
        cmocka_unit_test_setup(test_run_rejects_bad_request, test_setup),
        cmocka_unit_test_setup(test_get_modify_deactivate_delete, test_setup),
        cmocka_unit_test_setup(test_replace_put, test_setup),
        cmocka_unit_test_setup(test_list_pagination_and_filters, test_setup),
        cmocka_unit_test_setup(test_discovery_cached, test_setup),
        cmocka_unit_test_setup(test_group_add_by_bulk, test_setup),
        cmocka_unit_test_setup(test_adapt_to_discovered_schema, test_setup),
        cmocka_unit_test_setup(test_put_fallback_with_etag, test_setup),
        cmocka_unit_test_setup(test_412_rereads_once, test_setup),
        cmocka_unit_test_setup(test_ensure_412_and_if_match, test_setup),
        cmocka_unit_test_setup(test_group_remove_dialects, test_setup),
        cmocka_unit_test_setup(test_retry_backoff, test_setup),
        cmocka_unit_test_setup(test_oauth_client_credentials, test_setup),
        cmocka_unit_test_setup(test_dialect_no_extensions, test_setup),
        cmocka_unit_test_setup(test_put_fallback_applies_ops, test_setup),
        cmocka_unit_test_setup(test_group_add_by_put, test_setup),
        cmocka_unit_test_setup(test_group_put_412_rereads, test_setup),
        cmocka_unit_test(test_user_account_mapping),
        cmocka_unit_test_setup(test_list_page_callback_and_since, test_setup),
        cmocka_unit_test_setup(test_list_ignored_start_index, test_setup),
    };

    return cmocka_run_group_tests_name("scim", tests, group_setup,
                                       group_teardown);
}
