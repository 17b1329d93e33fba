/* Unit tests: src/connectors/csv/csv.c (delimited-text connector). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>
#include "provgate/csvconn.h"
#include "provgate/loop.h"

/* ---- fixture: a loop and a temp dir --------------------------------- */

typedef struct fx {
    pg_loop_t *loop;
    const pg_host_t *host;
    char dir[64];
    char path[128];
    pg_connector_t *c;
} fx_t;

static int
setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    assert_int_equal(pg_loop_new(&f->loop), PG_OK);
    pg_loop_set_log_level(f->loop, PG_LOG_ERROR);
    f->host = pg_loop_host(f->loop);
    snprintf(f->dir, sizeof(f->dir), "/tmp/pgt-csv-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/accounts.csv", f->dir);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    fx_t *f = *state;
    DIR *d = opendir(f->dir);
    struct dirent *e;
    char p[512];

    pg_connector_free(f->c);
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
            snprintf(p, sizeof(p), "%s/%s", f->dir, e->d_name);
            unlink(p);
        }
    }
    if (d != NULL) {
        closedir(d);
    }
    rmdir(f->dir);
    pg_loop_free(f->loop);
    free(f);
    return 0;
}

/* Create the connector from a JSON config text; "path" is f->path. */
static void
open_conn(fx_t *f, const char *cfgtxt)
{
    json_t *cfg;
    pg_err_t err;

    cfg = json_loads(cfgtxt, 0, NULL);
    assert_non_null(cfg);
    json_object_set_new(cfg, "path", json_string(f->path));
    err.msg[0] = '\0';
    pg_connector_free(f->c);
    f->c = NULL;
    if (pg_csv_connector_new(f->host, "legacy", cfg, &f->c, &err) != PG_OK) {
        fail_msg("config refused: %s", err.msg);
    }
    json_decref(cfg);
}

#define STD_CFG "{\"columns\":[\"key\",\"mail\",\"name\"," \
                "\"active\",\"groups\"]}"

static char *
slurp(const char *path)
{
    char *buf = NULL;
    size_t len;
    pg_err_t err;

    if (pg_read_file(path, 1u << 20, 0, &buf, &len, &err) != PG_OK) {
        return NULL;
    }
    return buf;
}

static void
spit(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");

    assert_non_null(fp);
    assert_int_equal(fputs(text, fp) >= 0, 1);
    assert_int_equal(fclose(fp), 0);
}

/* Number of directory entries besides . and .. and the writer lock
 * file (temp files would count). */
static int
dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;

    assert_non_null(d);
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0
            && strcmp(e->d_name, ".accounts.csv.lock") != 0) {
            n++;
        }
    }
    closedir(d);
    return n;
}

/* ---- running operations --------------------------------------------- */

typedef struct res {
    int called;
    pg_status_t st;
    pg_conn_outcome_t outcome;
    char id[PG_CONN_KEY_MAX + 1];
    char changes[512];
    int retryable;
    char error[PG_CONN_ERROR_MAX];
    int done;
} res_t;

static void
op_cb(void *arg, pg_status_t st, const pg_conn_result_t *r)
{
    res_t *o = arg;
    char *ch;

    o->called++;
    o->st = st;
    assert_non_null(r);
    o->outcome = r->outcome;
    snprintf(o->id, sizeof(o->id), "%s", r->id);
    o->retryable = r->retryable;
    snprintf(o->error, sizeof(o->error), "%s", r->error);
    o->changes[0] = '\0';
    if (r->changes != NULL) {
        ch = json_dumps(r->changes, JSON_COMPACT);
        assert_non_null(ch);
        snprintf(o->changes, sizeof(o->changes), "%s", ch);
        free(ch);
    }
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
    assert_int_equal(o.called, 0); /* never from inside the start call */
    assert_int_equal(pg_loop_run(f->loop, &o.done, 2000), PG_OK);
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
    a.attrs = attrs;
    a.groups = groups;
    a.ngroups = ng;
    a.active = active;
    return a;
}

/* list() collecting into a JSON array of {key,active,attrs,groups}. */
typedef struct lst {
    json_t *rows;
    int pages;
    int stop_after;
    int done;
    pg_status_t st;
    char error[256];
} lst_t;

static int
page_cb(void *arg, const pg_listed_account_t *accts, size_t n)
{
    lst_t *l = arg;
    size_t i, j;

    assert_true(n > 0 && n <= PG_CONN_PAGE_MAX);
    l->pages++;
    for (i = 0; i < n; i++) {
        json_t *g = json_array();
        for (j = 0; j < accts[i].ngroups; j++) {
            json_array_append_new(g, json_string(accts[i].groups[j]));
        }
        json_array_append_new(l->rows,
                              json_pack("{s:s,s:s,s:b,s:O,s:o}",
                                        "key", accts[i].key,
                                        "id", accts[i].id,
                                        "active", accts[i].active,
                                        "attrs", accts[i].attrs,
                                        "groups", g));
    }
    return l->stop_after > 0 && l->pages >= l->stop_after;
}

static void
done_cb(void *arg, pg_status_t st, const char *error)
{
    lst_t *l = arg;

    l->st = st;
    snprintf(l->error, sizeof(l->error), "%s", error != NULL ? error : "");
    l->done = 1;
}

static lst_t
run_list(fx_t *f, int stop_after)
{
    lst_t l;

    memset(&l, 0, sizeof(l));
    l.rows = json_array();
    l.stop_after = stop_after;
    assert_int_equal(pg_conn_list(f->c, 0, page_cb, done_cb, &l, NULL),
                     PG_OK);
    assert_int_equal(l.done, 0);
    assert_int_equal(pg_loop_run(f->loop, &l.done, 5000), PG_OK);
    return l;
}

/* ---- tests ---------------------------------------------------------- */

static void
expect_cfg_error(fx_t *f, const char *cfgtxt, const char *msgpart)
{
    json_t *cfg = json_loads(cfgtxt, 0, NULL);
    pg_connector_t *c = (pg_connector_t *) 0x1;
    pg_err_t err;

    assert_non_null(cfg);
    err.msg[0] = '\0';
    assert_int_equal(pg_csv_connector_new(f->host, "t", cfg, &c, &err),
                     PG_ERR_CONFIG);
    assert_null(c);
    if (strstr(err.msg, msgpart) == NULL) {
        fail_msg("error \"%s\" lacks \"%s\"", err.msg, msgpart);
    }
    json_decref(cfg);
}

static void
test_config_errors(void **state)
{
    fx_t *f = *state;

    expect_cfg_error(f, "{\"path\":\"/tmp/x.csv\",\"columns\":[\"key\"],"
                        "\"bogus\":1}", "connector.bogus: unknown");
    expect_cfg_error(f, "{\"columns\":[\"key\"]}", "connector.path: required");
    expect_cfg_error(f, "{\"path\":\"rel.csv\",\"columns\":[\"key\"]}",
                     "connector.path:");
    expect_cfg_error(f, "{\"path\":\"/tmp/\",\"columns\":[\"key\"]}",
                     "connector.path:");
    expect_cfg_error(f, "{\"path\":\"/tmp/x.csv\"}",
                     "connector.columns: required");
    expect_cfg_error(f, "{\"path\":\"/tmp/x.csv\",\"columns\":[\"mail\"]}",
                     "connector.columns: must contain \"key\"");
    expect_cfg_error(f, "{\"path\":\"/tmp/x.csv\",\"columns\":[\"key\",7]}",
                     "connector.columns[1]:");
    expect_cfg_error(f, "{\"path\":\"/tmp/x.csv\",\"columns\":[\"key\","
                        "\"mail\",\"mail\"]}",
                     "connector.columns[2]: duplicate");
    expect_cfg_error(f, "{\"path\":\"/tmp/x.csv\",\"columns\":[\"key\"],"
                        "\"delimiter\":\";;\"}", "connector.delimiter:");
    expect_cfg_error(f, "{\"path\":\"/tmp/x.csv\",\"columns\":[\"key\"],"
                        "\"delimiter\":\"\\\"\"}", "connector.delimiter:");
    expect_cfg_error(f, "{\"path\":\"/tmp/x.csv\",\"columns\":[\"key\"],"
                        "\"mode\":\"0999\"}", "connector.mode:");
    expect_cfg_error(f, "{\"path\":\"/tmp/x.csv\",\"columns\":[\"key\"],"
                        "\"mode\":\"01777\"}", "connector.mode:");
    expect_cfg_error(f, "{\"path\":\"/tmp/x.csv\",\"columns\":[\"key\"],"
                        "\"header\":\"yes\"}", "connector.header:");
    expect_cfg_error(f, "{\"path\":\"/tmp/x.csv\",\"columns\":[\"key\"],"
                        "\"max_rows\":0}", "connector.max_rows:");
    expect_cfg_error(f, "{\"path\":\"/tmp/x.csv\",\"columns\":[\"key\"],"
                        "\"formula_guard\":\"maybe\"}",
                     "connector.formula_guard:");
    expect_cfg_error(f, "{\"path\":\"/tmp/x.csv\",\"columns\":[\"key\"],"
                        "\"line_end\":\"cr\"}", "connector.line_end:");
    expect_cfg_error(f, "{\"path\":\"/tmp/x.csv\",\"columns\":[\"key\","
                        "\"groups\"],\"groups_separator\":\",\"}",
                     "connector.groups_separator:");
    expect_cfg_error(f, "{\"path\":\"/tmp/x.csv\",\"columns\":[\"key\"],"
                        "\"type\":\"ldap\"}", "connector.type:");
    expect_cfg_error(f, "{\"path\":\"/tmp/x.csv\",\"columns\":[\"key\"],"
                        "\"lock\":1}", "connector.lock:");
    expect_cfg_error(f, "{\"path\":\"/tmp/x.csv\",\"columns\":[\"key\"],"
                        "\"max_bytes\":10}", "connector.max_bytes:");
    expect_cfg_error(f, "[1]", "targets.t.connector: must be an object");
    expect_cfg_error(f, "{\"path\":\"/tmp/x.csv\",\"columns\":[\"key\","
                        "\"a\",\"a\"]}",
                     "targets.t.connector.columns[2]: duplicate column");
    {
        json_t *cfg = json_pack("{s:s,s:[s]}", "path", "x", "columns", "key");
        pg_connector_t *c = NULL;
        pg_err_t err;
        assert_int_equal(pg_csv_connector_new_at(
                             f->host, "t", cfg, "sidecar.targets[3].connector",
                             &c, &err), PG_ERR_CONFIG);
        assert_null(c);
        assert_string_equal(err.msg, "sidecar.targets[3].connector.path: must "
                            "be an absolute file path of at most 3072 bytes");
        json_decref(cfg);
    }

    /* a good one, with caps derived from the columns */
    open_conn(f, STD_CFG);
    assert_string_equal(f->c->vt->type, "csv");
    assert_int_equal(f->c->caps, PG_CONN_CAP_LIST | PG_CONN_CAP_GROUPS
                                 | PG_CONN_CAP_DISABLE);
    open_conn(f, "{\"columns\":[\"key\"]}");
    assert_int_equal(f->c->caps, PG_CONN_CAP_LIST);
}

static void
test_create_update_unchanged(void **state)
{
    fx_t *f = *state;
    const char *g1[] = { "staff", "admins" };
    const char *g2[] = { "dev" };
    const char *rv[] = { "admins" };
    json_t *attrs = json_pack("{s:s,s:s,s:s}", "mail", "a@x.org", "name",
                              "Alice", "unmapped", "ignored");
    pg_account_t a = mkacct("alice", attrs, g1, 2, 1);
    struct stat s1, s2;
    res_t o;
    char *txt;

    open_conn(f, "{\"columns\":[\"key\",\"mail\",\"name\","
                 "\"active\",\"groups\"],\"mode\":\"0600\"}");
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.st, PG_OK);
    assert_int_equal(o.outcome, PG_CONN_CREATED);
    assert_string_equal(o.id, "alice");
    txt = slurp(f->path);
    assert_non_null(txt);
    assert_string_equal(txt, "key,mail,name,active,groups\n"
                             "alice,a@x.org,Alice,true,admins;staff\n");
    free(txt);
    assert_int_equal(stat(f->path, &s1), 0);
    assert_int_equal(s1.st_mode & 0777, 0600);

    /* identical desired state: UNCHANGED and the file is not rewritten */
    usleep(20000);
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.st, PG_OK);
    assert_int_equal(o.outcome, PG_CONN_UNCHANGED);
    assert_int_equal(stat(f->path, &s2), 0);
    assert_int_equal(s1.st_ino, s2.st_ino);
    assert_int_equal(s1.st_mtim.tv_sec, s2.st_mtim.tv_sec);
    assert_int_equal(s1.st_mtim.tv_nsec, s2.st_mtim.tv_nsec);

    /* a second account, then a change of one attribute of the first */
    {
        pg_account_t b = mkacct("bob", NULL, NULL, 0, 1);
        o = run_op(f, ENSURE, &b);
        assert_int_equal(o.outcome, PG_CONN_CREATED);
    }
    json_object_set_new(attrs, "mail", json_string("alice@x.org"));
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.st, PG_OK);
    assert_int_equal(o.outcome, PG_CONN_UPDATED);
    assert_string_equal(o.changes, "[\"mail\"]");
    txt = slurp(f->path);
    assert_string_equal(txt, "key,mail,name,active,groups\n"
                             "alice,alice@x.org,Alice,true,admins;staff\n"
                             "bob,,,true,\n");
    free(txt);

    /* memberships: add one, revoke one, keep the unmanaged one */
    {
        a.groups = g2;
        a.ngroups = 1;
        a.revoke = rv;
        a.nrevoke = 1;
        o = run_op(f, ENSURE, &a);
        assert_int_equal(o.outcome, PG_CONN_UPDATED);
        assert_string_equal(o.changes, "[\"admins\",\"dev\"]");
        txt = slurp(f->path);
        assert_string_equal(txt, "key,mail,name,active,groups\n"
                                 "alice,alice@x.org,Alice,true,dev;staff\n"
                                 "bob,,,true,\n");
        free(txt);
        o = run_op(f, ENSURE, &a);
        assert_int_equal(o.outcome, PG_CONN_UNCHANGED);
    }

    /* a hand-reordered groups cell is the same set: still UNCHANGED */
    spit(f->path, "key,mail,name,active,groups\n"
                  "alice,alice@x.org,Alice,1,staff;dev\n"
                  "bob,,,true,\n");
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_UNCHANGED);

    /* ensure with active=0 updates the active column */
    a.active = 0;
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_UPDATED);
    assert_string_equal(o.changes, "[\"active\"]");
    json_decref(attrs);
}

static void
test_disable_remove(void **state)
{
    fx_t *f = *state;
    pg_account_t a = mkacct("carol", NULL, NULL, 0, 1);
    pg_account_t x = mkacct("nobody", NULL, NULL, 0, 1);
    struct stat s1, s2;
    res_t o;
    char *txt;

    open_conn(f, STD_CFG);
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_CREATED);
    o = run_op(f, DISABLE, &a);
    assert_int_equal(o.st, PG_OK);
    assert_int_equal(o.outcome, PG_CONN_DISABLED);
    txt = slurp(f->path);
    assert_string_equal(txt, "key,mail,name,active,groups\ncarol,,,false,\n");
    free(txt);
    assert_int_equal(stat(f->path, &s1), 0);
    o = run_op(f, DISABLE, &a);
    assert_int_equal(o.st, PG_OK);
    assert_int_equal(o.outcome, PG_CONN_UNCHANGED);
    assert_int_equal(stat(f->path, &s2), 0);
    assert_int_equal(s1.st_ino, s2.st_ino);

    o = run_op(f, DISABLE, &x);
    assert_int_equal(o.st, PG_ERR_NOT_FOUND);
    assert_int_equal(o.retryable, 0);
    assert_string_equal(o.id, "");

    o = run_op(f, REMOVE, &a);
    assert_int_equal(o.st, PG_OK);
    assert_int_equal(o.outcome, PG_CONN_REMOVED);
    txt = slurp(f->path);
    assert_string_equal(txt, "key,mail,name,active,groups\n");
    free(txt);
    assert_int_equal(stat(f->path, &s1), 0);
    o = run_op(f, REMOVE, &a);       /* missing: success, no rewrite */
    assert_int_equal(o.st, PG_OK);
    assert_int_equal(o.outcome, PG_CONN_REMOVED);
    assert_int_equal(stat(f->path, &s2), 0);
    assert_int_equal(s1.st_ino, s2.st_ino);

    /* without an active column, disable is refused in the callback */
    open_conn(f, "{\"columns\":[\"key\",\"mail\",\"name\"],"
                 "\"header\":false}");
    spit(f->path, "carol,c@x,Carol\n");
    o = run_op(f, DISABLE, &a);
    assert_int_equal(o.st, PG_ERR_INVALID);
    assert_non_null(strstr(o.error, "active"));
}

static void
test_quoting_roundtrip(void **state)
{
    fx_t *f = *state;
    json_t *attrs = json_pack("{s:s,s:s}", "mail", "a,b \"q\"\nline2",
                              "name", "semi;colon, and \"quotes\"");
    const char *g[] = { "g,1", "plain" };
    pg_account_t a = mkacct("d,ave", attrs, g, 2, 1);
    lst_t l;
    res_t o;
    char *txt;
    json_t *row;

    open_conn(f, "{\"columns\":[\"key\",\"mail\",\"name\","
                 "\"active\",\"groups\"],\"line_end\":\"crlf\"}");
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_CREATED);
    txt = slurp(f->path);
    assert_string_equal(txt, "key,mail,name,active,groups\r\n"
                             "\"d,ave\",\"a,b \"\"q\"\"\nline2\","
                             "\"semi;colon, and \"\"quotes\"\"\",true,"
                             "\"g,1;plain\"\r\n");
    free(txt);
    /* the same state read back: no change */
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_UNCHANGED);

    l = run_list(f, 0);
    assert_int_equal(l.st, PG_OK);
    assert_int_equal(json_array_size(l.rows), 1);
    row = json_array_get(l.rows, 0);
    assert_string_equal(json_string_value(json_object_get(row, "key")),
                        "d,ave");
    assert_string_equal(json_string_value(json_object_get(row, "id")),
                        "d,ave");
    assert_true(json_equal(json_object_get(row, "attrs"), attrs));
    assert_string_equal(json_string_value(json_array_get(
                            json_object_get(row, "groups"), 0)), "g,1");
    json_decref(l.rows);

    /* tab delimiter, no header */
    open_conn(f, "{\"columns\":[\"key\",\"name\"],"
                 "\"delimiter\":\"\\t\",\"header\":false}");
    unlink(f->path);
    {
        json_t *at = json_pack("{s:s}", "name", "tab\there");
        pg_account_t b = mkacct("eve", at, NULL, 0, 1);
        o = run_op(f, ENSURE, &b);
        assert_int_equal(o.outcome, PG_CONN_CREATED);
        txt = slurp(f->path);
        assert_string_equal(txt, "eve\t\"tab\there\"\n");
        free(txt);
        json_decref(at);
    }
    json_decref(attrs);
}

static void
test_formula_injection(void **state)
{
    fx_t *f = *state;
    json_t *attrs = json_pack("{s:s,s:s}", "mail", "=HYPERLINK(\"x\")",
                              "name", "'+1");
    pg_account_t a = mkacct("@evil", attrs, NULL, 0, 1);
    lst_t l;
    res_t o;
    char *txt;
    json_t *row;

    open_conn(f, STD_CFG);
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_CREATED);
    txt = slurp(f->path);
    /* every dangerous cell starts with an apostrophe in the file */
    assert_string_equal(txt, "key,mail,name,active,groups\n"
                             "'@evil,\"'=HYPERLINK(\"\"x\"\")\",''+1,true,\n");
    free(txt);
    /* and reads back as the original values */
    l = run_list(f, 0);
    assert_int_equal(l.st, PG_OK);
    row = json_array_get(l.rows, 0);
    assert_string_equal(json_string_value(json_object_get(row, "key")),
                        "@evil");
    assert_true(json_equal(json_object_get(row, "attrs"), attrs));
    json_decref(l.rows);
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_UNCHANGED);

    /* refuse mode: nothing written */
    unlink(f->path);
    open_conn(f, "{\"columns\":[\"key\",\"mail\"],"
                 "\"formula_guard\":\"refuse\"}");
    a.key = "mallory";
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.st, PG_ERR_INVALID);
    assert_int_equal(o.retryable, 0);
    assert_non_null(strstr(o.error, "formula"));
    assert_int_equal(access(f->path, F_OK), -1);
    json_decref(attrs);
}

static void
test_atomic_replace(void **state)
{
    fx_t *f = *state;
    char old[160];
    json_t *attrs = json_pack("{s:s}", "mail", "v1");
    pg_account_t a = mkacct("frank", attrs, NULL, 0, 1);
    struct stat s1, s2;
    res_t o;
    char *txt;

    open_conn(f, STD_CFG);
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_CREATED);
    assert_int_equal(dir_entries(f->dir), 1);   /* no temp file left */
    assert_int_equal(stat(f->path, &s1), 0);
    assert_int_equal(s1.st_mode & 0777, 0640);  /* default mode */

    /* A reader holding the old file (a hard link stands in for an open
     * descriptor) keeps seeing the complete old version: the new one is a
     * different inode renamed over the name, never written in place. */
    snprintf(old, sizeof(old), "%s/old-link", f->dir);
    assert_int_equal(link(f->path, old), 0);
    json_object_set_new(attrs, "mail", json_string("v2"));
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_UPDATED);
    assert_int_equal(stat(f->path, &s2), 0);
    assert_true(s1.st_ino != s2.st_ino);
    txt = slurp(old);
    assert_string_equal(txt, "key,mail,name,active,groups\n"
                             "frank,v1,,true,\n");
    free(txt);
    txt = slurp(f->path);
    assert_string_equal(txt, "key,mail,name,active,groups\n"
                             "frank,v2,,true,\n");
    free(txt);
    assert_int_equal(dir_entries(f->dir), 2);   /* file + our link only */
    unlink(old);

    /* A write that cannot complete (the directory is gone) reports a
     * retryable I/O error and leaves no partial file behind. */
    {
        char sub[160];
        snprintf(sub, sizeof(sub), "%s/gone", f->dir);
        assert_int_equal(mkdir(sub, 0700), 0);
        snprintf(f->path, sizeof(f->path), "%s/gone/x.csv", f->dir);
        open_conn(f, STD_CFG);
        assert_int_equal(rmdir(sub), 0);
        o = run_op(f, ENSURE, &a);
        assert_int_equal(o.st, PG_ERR_IO);
        assert_int_equal(o.retryable, 1);
        assert_non_null(strstr(o.error, "gone"));
        assert_int_equal(dir_entries(f->dir), 1);
    }
    json_decref(attrs);
}

/*
 * A reader process polls the file while 40 large updates are written: each
 * read must be one complete version (all versions have the same length
 * and end), never missing, short or mixed.
 */
static void
test_concurrent_reader(void **state)
{
    fx_t *f = *state;
    static char big[200001];
    char mail[16];
    json_t *attrs;
    pg_account_t a;
    size_t want;
    pid_t pid;
    int i, status;
    res_t o;

    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    attrs = json_pack("{s:s,s:s}", "mail", "v000", "name", big);
    a = mkacct("kim", attrs, NULL, 0, 1);
    open_conn(f, STD_CFG);
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_CREATED);
    want = strlen("key,mail,name,active,groups\n") + strlen("kim,v000,")
           + strlen(big) + strlen(",true,\n");

    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        static char buf[300000];
        uint64_t end = 0;
        unsigned reads = 0;
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        end = (uint64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + 700;
        for (;;) {
            FILE *fp = fopen(f->path, "rb");
            size_t n;
            if (fp == NULL) {
                _exit(2);              /* the name must never be missing */
            }
            n = fread(buf, 1, sizeof(buf), fp);
            fclose(fp);
            if (n != want || memcmp(buf, "key,mail,name,active,groups\nkim,v",
                                    33) != 0
                || memcmp(buf + n - 7, ",true,\n", 7) != 0) {
                _exit(3);              /* a partial or mixed version */
            }
            reads++;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            if ((uint64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000 > end) {
                break;
            }
        }
        _exit(reads > 10 ? 0 : 4);
    }
    for (i = 1; i <= 40; i++) {
        snprintf(mail, sizeof(mail), "v%03d", i);
        json_object_set_new(attrs, "mail", json_string(mail));
        o = run_op(f, ENSURE, &a);
        assert_int_equal(o.outcome, PG_CONN_UPDATED);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(dir_entries(f->dir), 1);
    json_decref(attrs);
}

static void
test_list_pages_and_stop(void **state)
{
    fx_t *f = *state;
    FILE *fp;
    lst_t l;
    int i;

    open_conn(f, STD_CFG);
    /* missing file: an empty list */
    l = run_list(f, 0);
    assert_int_equal(l.st, PG_OK);
    assert_int_equal(l.pages, 0);
    json_decref(l.rows);

    fp = fopen(f->path, "w");
    assert_non_null(fp);
    fprintf(fp, "key,mail,name,active,groups\n");
    for (i = 0; i < 2500; i++) {
        fprintf(fp, "u%04d,u%d@x,User %d,%s,%s\n", i, i, i,
                i % 2 ? "false" : "true", i % 3 ? "a;b" : "");
    }
    assert_int_equal(fclose(fp), 0);
    l = run_list(f, 0);
    assert_int_equal(l.st, PG_OK);
    assert_int_equal(l.pages, 3);
    assert_int_equal(json_array_size(l.rows), 2500);
    {
        json_t *r = json_array_get(l.rows, 7);
        assert_string_equal(json_string_value(json_object_get(r, "key")),
                            "u0007");
        assert_false(json_is_true(json_object_get(r, "active")));
        assert_int_equal(json_array_size(json_object_get(r, "groups")), 2);
        assert_string_equal(json_string_value(json_object_get(
                                json_object_get(r, "attrs"), "name")),
                            "User 7");
        r = json_array_get(l.rows, 9);
        assert_int_equal(json_array_size(json_object_get(r, "groups")), 0);
    }
    json_decref(l.rows);

    /* a page callback returning non-zero stops with PG_ERR_CANCELLED */
    l = run_list(f, 1);
    assert_int_equal(l.st, PG_ERR_CANCELLED);
    assert_int_equal(l.pages, 1);
    json_decref(l.rows);
}

static void
expect_malformed(fx_t *f, const char *text, pg_status_t want,
                 const char *msgpart)
{
    pg_account_t a = mkacct("zed", NULL, NULL, 0, 1);
    struct stat s1, s2;
    res_t o;
    lst_t l;

    spit(f->path, text);
    assert_int_equal(stat(f->path, &s1), 0);
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.st, want);
    assert_int_equal(o.retryable, 0);
    if (strstr(o.error, msgpart) == NULL) {
        fail_msg("error \"%s\" lacks \"%s\"", o.error, msgpart);
    }
    /* the broken file is left alone */
    assert_int_equal(stat(f->path, &s2), 0);
    assert_int_equal(s1.st_ino, s2.st_ino);
    l = run_list(f, 0);
    assert_int_equal(l.st, want);
    assert_int_equal(l.pages, 0);
    if (strstr(l.error, msgpart) == NULL) {
        fail_msg("list error \"%s\" lacks \"%s\"", l.error, msgpart);
    }
    json_decref(l.rows);
}

static void
test_malformed_file(void **state)
{
    fx_t *f = *state;

    open_conn(f, "{\"columns\":[\"key\",\"mail\",\"active\"],"
                 "\"max_rows\":3}");
    expect_malformed(f, "key,mail,active\na,\"x\ny\",true\nb,\"open,true\n",
                     PG_ERR_INVALID, "line 4: unterminated quoted field");
    expect_malformed(f, "key,mail,active\na,b,true\nc,d\n", PG_ERR_INVALID,
                     "line 3: 2 fields, expected 3");
    expect_malformed(f, "key,mail,active\na,b,true,x\n", PG_ERR_INVALID,
                     "line 2: more than 3 fields");
    expect_malformed(f, "key,mail,active\na,b\"c,true\n", PG_ERR_INVALID,
                     "line 2: quote inside an unquoted field");
    expect_malformed(f, "key,mail,active\na,\"b\"c,true\n", PG_ERR_INVALID,
                     "line 2: unexpected character after closing quote");
    expect_malformed(f, "key,mail,active\na,b,maybe\n", PG_ERR_INVALID,
                     "line 2: bad active value");
    expect_malformed(f, "key,mail,active\na,b,true\n\"x\ny\",c,true\n"
                        "a,z,true\n", PG_ERR_INVALID,
                     "line 5: duplicate key \"a\"");
    expect_malformed(f, "key,email,active\n", PG_ERR_INVALID,
                     "line 1: header does not match");
    expect_malformed(f, "key,mail,active\na,b,true\n,c,true\n",
                     PG_ERR_INVALID, "line 3: empty key");
    expect_malformed(f, "key,mail,active\na,\rb,true\n", PG_ERR_INVALID,
                     "line 2: bare carriage return");
    expect_malformed(f, "key,mail,active\na,,true\nb,,true\nc,,true\n"
                        "d,,true\n", PG_ERR_TOO_LARGE,
                     "line 5: more than max_rows (3)");
    /* a UTF-8 byte order mark in front of the header is accepted */
    spit(f->path, "\xEF\xBB\xBFkey,mail,active\na,b,true\n");
    {
        pg_account_t a = mkacct("a", NULL, NULL, 0, 1);
        res_t o = run_op(f, ENSURE, &a);
        assert_int_equal(o.st, PG_OK);
        assert_int_equal(o.outcome, PG_CONN_UNCHANGED);
    }
    /* the error names the file */
    expect_malformed(f, "key,mail,active\na,b\n", PG_ERR_INVALID,
                     "accounts.csv: line 2");
}

static void
test_caps_and_cancel(void **state)
{
    fx_t *f = *state;
    pg_account_t a = mkacct("gina", NULL, NULL, 0, 1);
    pg_account_t bad = mkacct("", NULL, NULL, 0, 1);
    const char *g[] = { "x;y" };
    pg_account_t badg = mkacct("gina", NULL, g, 1, 1);
    pg_conn_req_t *req = NULL;
    res_t o;
    int never = 0;

    open_conn(f, "{\"columns\":[\"key\",\"groups\"],"
                 "\"max_rows\":1}");
    /* synchronous refusals call nothing */
    memset(&o, 0, sizeof(o));
    assert_int_equal(pg_conn_ensure(f->c, &bad, op_cb, &o, NULL),
                     PG_ERR_INVALID);
    assert_int_equal(pg_conn_ensure(f->c, &badg, op_cb, &o, NULL),
                     PG_ERR_INVALID);

    /* cancel before the loop runs: no callback, nothing written */
    assert_int_equal(pg_conn_ensure(f->c, &a, op_cb, &o, &req), PG_OK);
    assert_non_null(req);
    pg_conn_cancel(f->c, req);
    assert_int_equal(pg_loop_run(f->loop, &never, 50), PG_ERR_TIMEOUT);
    assert_int_equal(o.called, 0);
    assert_int_equal(access(f->path, F_OK), -1);

    /* max_rows caps the accounts a write may produce */
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_CREATED);
    a.key = "hank";
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.st, PG_ERR_TOO_LARGE);
    assert_non_null(strstr(o.error, "max_rows"));

    /* requests left pending are released by pg_connector_free */
    assert_int_equal(pg_conn_ensure(f->c, &a, op_cb, &o, NULL), PG_OK);
}

/* Batch test: callbacks record their order; one may cancel another. */
typedef struct bres {
    res_t r;
    int order;
    int *counter;
    pg_connector_t *c;
    pg_conn_req_t *cancel;     /* cancel this one from the callback */
} bres_t;

static void
batch_cb(void *arg, pg_status_t st, const pg_conn_result_t *r)
{
    bres_t *b = arg;

    op_cb(&b->r, st, r);
    b->order = ++(*b->counter);
    if (b->cancel != NULL) {
        pg_conn_cancel(b->c, b->cancel);
        b->cancel = NULL;
    }
}

/*
 * Operations started together run as one batch in start order: each sees
 * the effect of the ones before it, a failing one changes nothing, the
 * file is read and written once, callbacks come in start order.
 */
static void
test_batch_order(void **state)
{
    fx_t *f = *state;
    json_t *bad = json_pack("{s:{s:i}}", "mail", "x", 1);
    json_t *good = json_pack("{s:s}", "mail", "m@x");
    pg_account_t a = mkacct("lea", good, NULL, 0, 1);
    pg_account_t abad = mkacct("lea", bad, NULL, 0, 1);
    pg_account_t m = mkacct("max", NULL, NULL, 0, 1);
    pg_conn_req_t *reqs[7];
    bres_t b[7];
    int counter = 0, i, total = 0;
    char *txt;

    open_conn(f, STD_CFG);
    memset(b, 0, sizeof(b));
    for (i = 0; i < 7; i++) {
        b[i].counter = &counter;
        b[i].c = f->c;
    }
    assert_int_equal(pg_conn_ensure(f->c, &a, batch_cb, &b[0], &reqs[0]),
                     PG_OK);
    assert_int_equal(pg_conn_ensure(f->c, &a, batch_cb, &b[1], &reqs[1]),
                     PG_OK);
    assert_int_equal(pg_conn_ensure(f->c, &abad, batch_cb, &b[2], &reqs[2]),
                     PG_OK);
    assert_int_equal(pg_conn_disable(f->c, &a, batch_cb, &b[3], &reqs[3]),
                     PG_OK);
    assert_int_equal(pg_conn_ensure(f->c, &m, batch_cb, &b[4], &reqs[4]),
                     PG_OK);
    assert_int_equal(pg_conn_remove(f->c, &m, batch_cb, &b[5], &reqs[5]),
                     PG_OK);
    assert_int_equal(pg_conn_disable(f->c, &m, batch_cb, &b[6], &reqs[6]),
                     PG_OK);
    b[0].cancel = reqs[6];     /* cancelled while its result is pending */
    for (i = 0; i < 6; i++) {
        b[i].r.done = 0;
    }
    while (counter < 6) {
        int never = 0;
        assert_int_equal(pg_loop_run(f->loop, &never, 20), PG_ERR_TIMEOUT);
        assert_true(++total < 100);
    }
    for (i = 0; i < 6; i++) {
        assert_int_equal(b[i].order, i + 1);
        assert_int_equal(b[i].r.called, 1);
    }
    assert_int_equal(b[6].r.called, 0);
    assert_int_equal(b[0].r.outcome, PG_CONN_CREATED);
    assert_int_equal(b[1].r.outcome, PG_CONN_UNCHANGED);
    assert_int_equal(b[2].r.st, PG_ERR_INVALID);
    assert_int_equal(b[3].r.outcome, PG_CONN_DISABLED);
    assert_int_equal(b[4].r.outcome, PG_CONN_CREATED);
    assert_int_equal(b[5].r.outcome, PG_CONN_REMOVED);
    txt = slurp(f->path);
    assert_string_equal(txt, "key,mail,name,active,groups\n"
                             "lea,m@x,,false,\n");
    free(txt);
    assert_int_equal(dir_entries(f->dir), 1);

    /* a failing write fails every operation of the batch that changed
     * or depended on memory (retryable) */
    {
        char sub[160];
        res_t o1, o2;
        int done = 0;
        snprintf(sub, sizeof(sub), "%s/gone", f->dir);
        assert_int_equal(mkdir(sub, 0700), 0);
        snprintf(f->path, sizeof(f->path), "%s/gone/x.csv", f->dir);
        open_conn(f, "{\"columns\":[\"key\"],\"lock\":false}");
        assert_int_equal(rmdir(sub), 0);
        memset(&o1, 0, sizeof(o1));
        memset(&o2, 0, sizeof(o2));
        assert_int_equal(pg_conn_ensure(f->c, &a, op_cb, &o1, NULL), PG_OK);
        assert_int_equal(pg_conn_ensure(f->c, &m, op_cb, &o2, NULL), PG_OK);
        o2.done = 0;
        while (!(o1.done && o2.done)) {
            int never = 0;
            assert_int_equal(pg_loop_run(f->loop, &never, 20),
                             PG_ERR_TIMEOUT);
            assert_true(++done < 100);
        }
        assert_int_equal(o1.st, PG_ERR_IO);
        assert_int_equal(o2.st, PG_ERR_IO);
        assert_int_equal(o1.retryable, 1);
    }
    json_decref(bad);
    json_decref(good);
}

static void
test_writer_lock(void **state)
{
    fx_t *f = *state;
    pg_account_t a = mkacct("ivy", NULL, NULL, 0, 1);
    char lp[160];
    res_t o;
    int fd;

    open_conn(f, STD_CFG);
    /* another writer (another process in real life) holds the lock */
    snprintf(lp, sizeof(lp), "%s/.accounts.csv.lock", f->dir);
    fd = open(lp, O_RDWR | O_CREAT, 0600);
    assert_true(fd >= 0);
    assert_int_equal(flock(fd, LOCK_EX | LOCK_NB), 0);
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.st, PG_ERR_BUSY);
    assert_int_equal(o.retryable, 1);
    assert_non_null(strstr(o.error, "held by another writer"));
    assert_int_equal(access(f->path, F_OK), -1);
    /* list() reads without the lock */
    {
        lst_t l = run_list(f, 0);
        assert_int_equal(l.st, PG_OK);
        json_decref(l.rows);
    }
    /* "lock": false writes anyway */
    open_conn(f, "{\"columns\":[\"key\"],\"lock\":false}");
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.outcome, PG_CONN_CREATED);
    /* released: the locking connector works again */
    close(fd);
    open_conn(f, "{\"columns\":[\"key\"]}");
    a.key = "jack";
    o = run_op(f, ENSURE, &a);
    assert_int_equal(o.st, PG_OK);
    assert_int_equal(o.outcome, PG_CONN_CREATED);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_config_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_update_unchanged, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_disable_remove, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quoting_roundtrip, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_formula_injection, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_atomic_replace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_reader, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_list_pages_and_stop, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_malformed_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_caps_and_cancel, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_batch_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_lock, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
