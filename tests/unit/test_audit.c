/*
 * Unit tests for the audit emitter (src/audit/audit.c).
 *
 * File output is checked line by line (valid JSON, required members,
 * scrubbing, truncation, rotation, two processes appending at once).
 * Redis output goes to a real redis-server started by the test on a free
 * 127.0.0.1 port in a temp dir (pgt_redis_start from helpers/procs.h) and
 * is read back with XRANGE (blocking hiredis on the test side only).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ctype.h>
#include <dirent.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "provgate/audit.h"
#include "provgate/loop.h"
#include "provgate/redis.h"
#include "helpers/procs.h"

static struct {
    char dir[PATH_MAX];
    pgt_redis_t redis;         /* tests/unit/helpers/procs.h */
    pg_loop_t *loop;
    pg_host_t host;            /* the loop's host with our log capture */
    char warnings[8192];
} G;

/* ---- helpers ------------------------------------------------------------ */

static void
capture_log(void *ctx, pg_log_level_t level, const char *msg)
{
    size_t len = strlen(G.warnings);

    (void)ctx;
    if (level <= PG_LOG_WARN) {
        snprintf(G.warnings + len, sizeof(G.warnings) - len, "%s\n", msg);
    }
}

/* Blocking test-side Redis command (argv form). Caller frees the reply. */
static redisReply *
rcmd(int argc, const char **argv)
{
    redisContext *c = redisConnect("127.0.0.1", G.redis.port);
    redisReply *r;

    assert_non_null(c);
    assert_int_equal(c->err, 0);
    r = redisCommandArgv(c, argc, argv, NULL);
    redisFree(c);
    assert_non_null(r);
    return r;
}

static long long
xlen(const char *key)
{
    const char *argv[] = { "XLEN", key };
    redisReply *r = rcmd(2, argv);
    long long n;

    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    n = r->integer;
    freeReplyObject(r);
    return n;
}

static void
spin(unsigned ms)
{
    int never = 0;

    assert_int_equal(pg_loop_run(G.loop, &never, ms), PG_ERR_TIMEOUT);
}

/* Path of a file in the temp dir. */
static void
tmp_path(char *out, size_t outsz, const char *name)
{
    snprintf(out, outsz, "%s/%s", G.dir, name);
}

/* Whole file as a malloc'd string. */
static char *
slurp(const char *path, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    if (len_out != NULL) {
        *len_out = (size_t)n;
    }
    return buf;
}

/* Parse every line of the file into a JSON array of objects; each line
 * must end with '\n' and be one valid JSON object. */
static json_t *
read_lines(const char *path)
{
    size_t len;
    char *buf = slurp(path, &len), *p = buf, *nl;
    json_t *arr = json_array();

    while (p < buf + len) {
        json_error_t e;
        json_t *j;

        nl = memchr(p, '\n', (size_t)(buf + len - p));
        assert_non_null(nl); /* every line complete */
        j = json_loadb(p, (size_t)(nl - p), 0, &e);
        if (!json_is_object(j)) {
            fprintf(stderr, "bad line: %.*s (%s)\n", (int)(nl - p), p,
                    e.text);
            fail();
        }
        json_array_append_new(arr, j);
        p = nl + 1;
    }
    free(buf);
    return arr;
}

static pg_audit_t *
audit_file(const char *name, pg_redis_t *redis, const char *stream,
           unsigned maxlen)
{
    char path[PATH_MAX + 64];
    pg_audit_cfg_t cfg;
    pg_audit_t *a = NULL;
    pg_err_t err;

    memset(&cfg, 0, sizeof(cfg));
    if (name != NULL) {
        tmp_path(path, sizeof(path), name);
        cfg.file = path;
    }
    cfg.stream = (char *)stream;
    cfg.stream_maxlen = maxlen;
    assert_int_equal(pg_audit_new(&G.host, &cfg, "inst-1", redis, &a, &err),
                     PG_OK);
    assert_non_null(a);
    return a;
}

static void
check_header(const json_t *ev)
{
    const char *ts = json_string_value(json_object_get(ev, "ts"));
    const char *id = json_string_value(json_object_get(ev, "id"));
    size_t i;

    assert_non_null(ts);
    /* 2024-01-02T03:04:05.678Z */
    assert_int_equal(strlen(ts), 24);
    for (i = 0; i < 24; i++) {
        char c = ts[i];

        switch (i) {
        case 4: case 7: assert_int_equal(c, '-'); break;
        case 10: assert_int_equal(c, 'T'); break;
        case 13: case 16: assert_int_equal(c, ':'); break;
        case 19: assert_int_equal(c, '.'); break;
        case 23: assert_int_equal(c, 'Z'); break;
        default: assert_true(isdigit((unsigned char)c));
        }
    }
    assert_non_null(id);
    assert_int_equal(strlen(id), PG_AUDIT_ID_LEN - 1);
    for (i = 0; id[i] != '\0'; i++) {
        assert_true(isalnum((unsigned char)id[i]) || id[i] == '-' ||
                    id[i] == '_');
    }
    assert_string_equal(json_string_value(json_object_get(ev, "instance")),
                        "inst-1");
    assert_true(json_is_string(json_object_get(ev, "type")));
    assert_true(json_is_string(json_object_get(ev, "outcome")));
    assert_non_null(json_object_get(ev, "reason"));
}

/* ---- setup ------------------------------------------------------------ */

static int
group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    umask(022);
    snprintf(G.dir, sizeof(G.dir), "/tmp/pg-test-audit-XXXXXX");
    if (mkdtemp(G.dir) == NULL) {
        return -1;
    }
    if (pgt_redis_start(&G.redis, NULL) != 0) {
        fprintf(stderr, "test_audit: redis-server did not start\n");
        return -1;
    }
    if (pg_loop_new(&G.loop) != PG_OK) {
        return -1;
    }
    G.host = *pg_loop_host(G.loop);
    G.host.log = capture_log;
    return 0;
}

static int
group_teardown(void **state)
{
    char path[PATH_MAX + 300];
    struct dirent *de;
    DIR *d;

    (void)state;
    pg_loop_free(G.loop);
    pgt_redis_stop(&G.redis);
    /* Our own mkdtemp directory only; it holds plain files. */
    d = opendir(G.dir);
    if (d != NULL) {
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
                continue;
            }
            snprintf(path, sizeof(path), "%s/%s", G.dir, de->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(G.dir);
    return 0;
}

static int
test_setup(void **state)
{
    (void)state;
    G.warnings[0] = '\0';
    return 0;
}

/* ---- tests ------------------------------------------------------------ */

static void
test_file_lines(void **state)
{
    char path[PATH_MAX + 64], id1[PG_AUDIT_ID_LEN], id2[PG_AUDIT_ID_LEN];
    pg_audit_t *a = audit_file("lines.log", NULL, NULL, 0);
    json_t *lines, *ev;
    struct stat sb;
    char *raw;

    (void)state;
    pg_audit_emit(a, "login.success", "success", "ok",
                  json_pack("{s:s, s:i, s:{s:[s,s]}}", "user", "alice",
                            "n", 7, "claims", "groups", "staff", "eng"),
                  id1);
    pg_audit_emit(a, "login.failure", "failure", NULL, NULL, id2);
    /* Fields cannot overwrite the header; non-objects are kept aside. */
    pg_audit_emit(a, "policy.decision", "denied", "policy",
                  json_pack("{s:s, s:s, s:s}", "id", "forged", "ts", "x",
                            "policy", "p1"), NULL);
    pg_audit_emit(a, "provision.call", "info", "r", json_string("plain"),
                  NULL);
    assert_string_not_equal(id1, id2);
    pg_audit_free(a);

    tmp_path(path, sizeof(path), "lines.log");
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0640); /* umask 022 set in setup */
    raw = slurp(path, NULL);
    assert_true(strncmp(raw, "{\"ts\":\"", 7) == 0); /* ts first */
    free(raw);
    lines = read_lines(path);
    assert_int_equal(json_array_size(lines), 4);

    ev = json_array_get(lines, 0);
    check_header(ev);
    assert_string_equal(json_string_value(json_object_get(ev, "id")), id1);
    assert_string_equal(json_string_value(json_object_get(ev, "type")),
                        "login.success");
    assert_string_equal(json_string_value(json_object_get(ev, "outcome")),
                        "success");
    assert_string_equal(json_string_value(json_object_get(ev, "reason")), "ok");
    assert_string_equal(json_string_value(json_object_get(ev, "user")),
                        "alice");
    assert_int_equal(json_integer_value(json_object_get(ev, "n")), 7);

    ev = json_array_get(lines, 1);
    check_header(ev);
    assert_string_equal(json_string_value(json_object_get(ev, "id")), id2);
    assert_true(json_is_null(json_object_get(ev, "reason")));

    ev = json_array_get(lines, 2);
    check_header(ev);
    assert_string_not_equal(json_string_value(json_object_get(ev, "id")),
                            "forged");
    assert_string_equal(json_string_value(json_object_get(ev, "policy")),
                        "p1");

    ev = json_array_get(lines, 3);
    assert_string_equal(json_string_value(json_object_get(ev, "fields")),
                        "plain");
    json_decref(lines);
}

static void
test_scrub_depth(void **state)
{
    json_t *v = json_loads(
        "{\"user\":\"alice\",\"access_token\":\"S1\",\"Client_Secret\":\"S2\","
        " \"nested\":{\"PASSWORD\":\"S3\",\"keep\":1,"
        "   \"list\":[{\"SAMLAssertion\":\"S4\",\"ok\":true},"
        "            [{\"set-cookie\":\"S5\"}]]},"
        " \"headers\":{\"Authorization\":\"S6\",\"accept\":\"json\"},"
        " \"code\":\"S7\",\"CODE\":\"S8\",\"zipcode\":\"z\","
        " \"code_challenge_method\":\"S256\",\"reason_code\":\"rc\","
        " \"id_token_hint\":{\"deep\":\"S9\"}}", 0, NULL);
    json_t *want = json_loads(
        "{\"user\":\"alice\","
        " \"nested\":{\"keep\":1,\"list\":[{\"ok\":true},[{}]]},"
        " \"headers\":{\"accept\":\"json\"},"
        " \"zipcode\":\"z\",\"code_challenge_method\":\"S256\","
        " \"reason_code\":\"rc\"}", 0, NULL);
    char path[PATH_MAX + 64], *raw;
    pg_audit_t *a;

    (void)state;
    assert_non_null(v);
    assert_non_null(want);
    pg_audit_scrub(v);
    if (!json_equal(v, want)) {
        char *s = json_dumps(v, JSON_SORT_KEYS);

        fprintf(stderr, "scrubbed: %s\n", s);
        free(s);
        fail();
    }
    pg_audit_scrub(NULL);
    json_decref(v);
    json_decref(want);

    /* Through emit: no secret value reaches the file. */
    a = audit_file("scrub.log", NULL, NULL, 0);
    pg_audit_emit(a, "login.success", "success", NULL,
                  json_pack("{s:s, s:{s:s, s:[{s:s}]}}", "refresh_token",
                            "SECRET-A", "oidc", "code", "SECRET-B",
                            "x", "session_cookie", "SECRET-C"), NULL);
    pg_audit_free(a);
    tmp_path(path, sizeof(path), "scrub.log");
    raw = slurp(path, NULL);
    assert_null(strstr(raw, "SECRET"));
    assert_non_null(strstr(raw, "\"oidc\":{\"x\":[{}]}"));
    free(raw);
}

static void
test_truncation(void **state)
{
    char path[PATH_MAX + 64];
    size_t len;
    char *big = malloc(100 * 1024 + 1), *raw;
    pg_audit_t *a = audit_file("big.log", NULL, NULL, 0);
    json_t *lines, *ev;

    (void)state;
    assert_non_null(big);
    memset(big, 'x', 100 * 1024);
    big[100 * 1024] = '\0';
    pg_audit_emit(a, "provision.call", "failure", "bad_response",
                  json_pack("{s:s, s:s, s:s}", "small", "kept", "huge", big,
                            "after", "kept too"), NULL);
    pg_audit_emit(a, "x", "info", NULL, json_pack("{s:s}", "k", "v"), NULL);
    pg_audit_free(a);
    free(big);

    tmp_path(path, sizeof(path), "big.log");
    raw = slurp(path, &len);
    assert_true(strchr(raw, '\n') - raw + 1 <= 64 * 1024);
    free(raw);
    lines = read_lines(path);
    assert_int_equal(json_array_size(lines), 2);
    ev = json_array_get(lines, 0);
    check_header(ev);
    assert_true(json_is_true(json_object_get(ev, "truncated")));
    assert_null(json_object_get(ev, "huge"));
    assert_string_equal(json_string_value(json_object_get(ev, "small")),
                        "kept");
    assert_string_equal(json_string_value(json_object_get(ev, "after")),
                        "kept too");
    assert_null(json_object_get(json_array_get(lines, 1), "truncated"));
    json_decref(lines);
}

static void
test_reopen(void **state)
{
    char path[PATH_MAX + 64], moved[PATH_MAX + 64];
    pg_audit_t *a = audit_file("rot.log", NULL, NULL, 0);
    json_t *lines;
    pg_err_t err;

    (void)state;
    tmp_path(path, sizeof(path), "rot.log");
    tmp_path(moved, sizeof(moved), "rot.log.1");
    pg_audit_emit(a, "a", "info", NULL, NULL, NULL);
    assert_int_equal(rename(path, moved), 0);
    pg_audit_emit(a, "b", "info", NULL, NULL, NULL); /* still the old file */
    assert_int_equal(pg_audit_reopen(a, &err), PG_OK);
    pg_audit_emit(a, "c", "info", NULL, NULL, NULL);
    pg_audit_free(a);

    lines = read_lines(moved);
    assert_int_equal(json_array_size(lines), 2);
    json_decref(lines);
    lines = read_lines(path);
    assert_int_equal(json_array_size(lines), 1);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(lines, 0), "type")), "c");
    json_decref(lines);
}

static void
test_open_failure(void **state)
{
    pg_audit_cfg_t cfg;
    pg_audit_t *a = (pg_audit_t *)1;
    pg_err_t err;

    (void)state;
    memset(&cfg, 0, sizeof(cfg));
    cfg.file = (char *)"/nonexistent-dir-for-provgate/audit.log";
    assert_int_equal(pg_audit_new(&G.host, &cfg, "i", NULL, &a, &err),
                     PG_ERR_IO);
    assert_null(a);
    assert_non_null(strstr(err.msg, "/nonexistent-dir-for-provgate"));

    /* No file and no Redis: emitting is harmless, id still produced. */
    cfg.file = NULL;
    assert_int_equal(pg_audit_new(&G.host, &cfg, NULL, NULL, &a, &err), PG_OK);
    {
        char id[PG_AUDIT_ID_LEN];

        pg_audit_emit(a, "x", "info", NULL, json_object(), id);
        assert_int_equal(strlen(id), PG_AUDIT_ID_LEN - 1);
    }
    pg_audit_free(a);
    pg_audit_free(NULL);
}

static pg_redis_t *
redis_client(int port)
{
    pg_redis_config_t rc;
    pg_redis_t *r = NULL;

    memset(&rc, 0, sizeof(rc));
    rc.host = (char *)"127.0.0.1";
    rc.port = port;
    rc.connect_timeout_ms = 500;
    rc.command_timeout_ms = 1000;
    rc.key_prefix = (char *)"pgtest:";
    assert_int_equal(pg_redis_new(&G.host, &rc, &r), PG_OK);
    return r;
}

static void
test_xadd_stream(void **state)
{
    pg_redis_t *r = redis_client(G.redis.port);
    pg_audit_t *a = audit_file("stream.log", r, "audit", 0);
    char id1[PG_AUDIT_ID_LEN], id2[PG_AUDIT_ID_LEN];
    const char *argv[] = { "XRANGE", "pgtest:audit", "-", "+" };
    redisReply *rep;
    json_t *ev;
    size_t i;
    int tries;

    (void)state;
    pg_audit_emit(a, "login.success", "success", "ok",
                  json_pack("{s:s, s:s}", "user", "alice", "password",
                            "hunter2"), id1);
    pg_audit_emit(a, "login.failure", "failure", "idp_error", NULL, id2);
    for (tries = 0; tries < 40 && xlen("pgtest:audit") < 2; tries++) {
        spin(50);
    }
    assert_int_equal(xlen("pgtest:audit"), 2);

    rep = rcmd(4, argv);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->elements, 2);
    for (i = 0; i < 2; i++) {
        redisReply *entry = rep->element[i], *kv = entry->element[1];

        assert_int_equal(kv->elements, 2);
        assert_string_equal(kv->element[0]->str, "event");
        ev = json_loads(kv->element[1]->str, 0, NULL);
        assert_non_null(ev);
        check_header(ev);
        assert_string_equal(json_string_value(json_object_get(ev, "id")),
                            i == 0 ? id1 : id2);
        assert_null(json_object_get(ev, "password"));
        json_decref(ev);
    }
    assert_null(strstr(rep->element[0]->element[1]->element[1]->str,
                       "hunter2"));
    freeReplyObject(rep);
    assert_string_equal(G.warnings, "");

    pg_audit_free(a);
    pg_redis_free(r);
}

static void
test_xadd_maxlen(void **state)
{
    pg_redis_t *r = redis_client(G.redis.port);
    pg_audit_t *a = audit_file(NULL, r, "capped", 10);
    int i, tries;

    (void)state;
    for (i = 0; i < 400; i++) {
        pg_audit_emit(a, "x", "info", NULL, json_pack("{s:i}", "i", i), NULL);
    }
    /* Wait until the last one landed (its field i == 399). */
    for (tries = 0; tries < 100; tries++) {
        const char *argv[] = { "XREVRANGE", "pgtest:capped", "+", "-",
                               "COUNT", "1" };
        redisReply *rep = rcmd(6, argv);
        int last = -1;

        if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 1) {
            json_t *ev = json_loads(
                rep->element[0]->element[1]->element[1]->str, 0, NULL);

            last = (int)json_integer_value(json_object_get(ev, "i"));
            json_decref(ev);
        }
        freeReplyObject(rep);
        if (last == 399) {
            break;
        }
        spin(50);
    }
    assert_true(tries < 100);
    /* MAXLEN ~ 10: trimmed in whole stream nodes, well below 400. */
    assert_true(xlen("pgtest:capped") < 400);
    assert_true(xlen("pgtest:capped") >= 10);
    pg_audit_free(a);
    pg_redis_free(r);
}

static void
test_redis_down_file_still_written(void **state)
{
    int dead = pgt_free_port();
    pg_redis_t *r = redis_client(dead);
    pg_audit_t *a = audit_file("down.log", r, "audit", 0);
    char path[PATH_MAX + 64], id[PG_AUDIT_ID_LEN];
    json_t *lines;
    int tries;

    (void)state;
    pg_audit_emit(a, "login.success", "success", NULL,
                  json_pack("{s:s}", "user", "bob"), id);
    /* The file has the line right away, before the loop even runs. */
    tmp_path(path, sizeof(path), "down.log");
    lines = read_lines(path);
    assert_int_equal(json_array_size(lines), 1);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(lines, 0), "id")), id);
    json_decref(lines);
    for (tries = 0; tries < 60 && strstr(G.warnings, "XADD") == NULL;
         tries++) {
        spin(50);
    }
    assert_non_null(strstr(G.warnings, "audit: XADD"));
    pg_audit_free(a);
    pg_redis_free(r);
}

static void
test_free_with_pending(void **state)
{
    pg_redis_t *r = redis_client(G.redis.port);
    pg_audit_t *a = audit_file(NULL, r, "pending", 0);
    int i;

    (void)state;
    for (i = 0; i < 20; i++) {
        pg_audit_emit(a, "x", "info", NULL, NULL, NULL);
    }
    /* Freed before any reply: pending XADDs are cancelled, no callback
     * reaches the freed emitter (ASan would catch it). */
    pg_audit_free(a);
    spin(300);
    /* And the other order: the client goes first, then the emitter. */
    a = audit_file(NULL, r, "pending", 0);
    pg_audit_emit(a, "y", "info", NULL, NULL, NULL);
    pg_redis_free(r);
    pg_audit_free(a);
    spin(100);
    assert_null(strstr(G.warnings, "XADD"));
}

static void
test_two_processes(void **state)
{
    enum { PER_CHILD = 400 };
    char path[PATH_MAX + 64];
    pid_t kids[2];
    json_t *lines, *ev;
    int counts[2] = { 0, 0 }, k, i, status;
    size_t j;

    (void)state;
    tmp_path(path, sizeof(path), "multi.log");
    for (k = 0; k < 2; k++) {
        kids[k] = fork();
        assert_true(kids[k] >= 0);
        if (kids[k] == 0) {
            pg_audit_t *a = audit_file("multi.log", NULL, NULL, 0);
            char *pad = malloc(9000);

            if (pad == NULL) {
                _exit(1);
            }
            for (i = 0; i < PER_CHILD; i++) {
                size_t n = (size_t)(i * 37 + k * 101) % 8000 + 1;

                memset(pad, 'a' + k, n);
                pad[n] = '\0';
                pg_audit_emit(a, "x", "info", NULL,
                              json_pack("{s:i, s:i, s:s}", "child", k, "seq",
                                        i, "pad", pad), NULL);
            }
            free(pad);
            pg_audit_free(a);
            _exit(0);
        }
    }
    for (k = 0; k < 2; k++) {
        assert_int_equal(waitpid(kids[k], &status, 0), kids[k]);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    lines = read_lines(path); /* fails on any torn or mixed line */
    assert_int_equal(json_array_size(lines), 2 * PER_CHILD);
    json_array_foreach(lines, j, ev) {
        int c = (int)json_integer_value(json_object_get(ev, "child"));
        const char *pad = json_string_value(json_object_get(ev, "pad"));
        size_t p;

        assert_true(c == 0 || c == 1);
        assert_int_equal(json_integer_value(json_object_get(ev, "seq")),
                         counts[c]); /* each child's lines in order */
        for (p = 0; pad[p] != '\0'; p++) {
            assert_int_equal(pad[p], 'a' + c);
        }
        counts[c]++;
    }
    assert_int_equal(counts[0], PER_CHILD);
    assert_int_equal(counts[1], PER_CHILD);
    json_decref(lines);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_file_lines, test_setup),
        cmocka_unit_test_setup(test_scrub_depth, test_setup),
        cmocka_unit_test_setup(test_truncation, test_setup),
        cmocka_unit_test_setup(test_reopen, test_setup),
        cmocka_unit_test_setup(test_open_failure, test_setup),
        cmocka_unit_test_setup(test_xadd_stream, test_setup),
        cmocka_unit_test_setup(test_xadd_maxlen, test_setup),
        cmocka_unit_test_setup(test_redis_down_file_still_written, test_setup),
        cmocka_unit_test_setup(test_free_with_pending, test_setup),
        cmocka_unit_test_setup(test_two_processes, test_setup),
    };

    return cmocka_run_group_tests_name("audit", tests, group_setup,
                                       group_teardown);
}
