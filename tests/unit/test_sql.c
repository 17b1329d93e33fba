/*
 * Unit tests for the SQL connector (src/connectors/sql/sql.c) against a
 * REAL PostgreSQL 15 started by the test itself.
 *
 * Group setup: initdb into a new temp dir (as the "postgres" user, or
 * "nobody", when the test runs as root: initdb refuses root), a pg_hba.conf
 * with trust for everyone except role "pwuser" (scram password over TCP),
 * postgres on 127.0.0.1 at a free port with its unix socket in the temp
 * dir, then the worked-example schema of docs/connectors-sql.md. The test
 * side uses blocking libpq (PQexec) on its own admin connection; that is
 * fine in tests and never done in src/. Everything is killed and removed
 * at the end. If PostgreSQL is missing, the group setup fails: nothing is
 * skipped.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "provgate/loop.h"
#include "provgate/sqlconn.h"
#include "helpers/procs.h"

#define PGBIN "/usr/lib/postgresql/15/bin"
#define RUN_TIMEOUT_MS 10000

static struct {
    char dir[256];
    char data[300];
    int port;
    pid_t pid;
    uid_t uid;
    gid_t gid;
    int drop;                  /* run the server as uid/gid */
    PGconn *admin;
    pg_loop_t *loop;
    char conninfo[256];
} G = { .pid = -1 };

/* ---- the server ------------------------------------------------------ */

/* In a forked child: become the unprivileged user when running as root. */
static void
child_drop(const char *logpath)
{
    int fd;

    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (G.drop) {
        if (setgroups(0, NULL) != 0 || setgid(G.gid) != 0
            || setuid(G.uid) != 0) {
            _exit(126);
        }
    }
    fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
}

static int
run_initdb(void)
{
    char log[400];
    pid_t pid;
    int status;

    snprintf(log, sizeof(log), "%s/initdb.log", G.dir);
    pid = fork();
    if (pid < 0) {
        return -1;
    }
    if (pid == 0) {
        child_drop(log);
        execl(PGBIN "/initdb", "initdb", "-D", G.data, "-A", "trust",
              "-U", "pgadmin", "--no-sync", "-E", "UTF8", "--no-locale",
              (char *)NULL);
        _exit(127);
    }
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)
        || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "test_sql: initdb failed (see %s)\n", log);
        return -1;
    }
    return 0;
}

static int
write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    if (f == NULL) {
        return -1;
    }
    fputs(text, f);
    if (fclose(f) != 0) {
        return -1;
    }
    if (G.drop && chown(path, G.uid, G.gid) != 0) {
        return -1;
    }
    return 0;
}

/* Start postgres on G.port and wait until it accepts connections. */
static int
server_start(void)
{
    char log[400], port[16], ping[200];
    uint64_t end;

    snprintf(log, sizeof(log), "%s/postgres.log", G.dir);
    snprintf(port, sizeof(port), "%d", G.port);
    G.pid = fork();
    if (G.pid < 0) {
        return -1;
    }
    if (G.pid == 0) {
        child_drop(log);
        execl(PGBIN "/postgres", "postgres", "-D", G.data, "-p", port,
              "-k", G.dir, "-h", "127.0.0.1", "-c", "fsync=off",
              "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
              "-c", "max_connections=40", "-c", "shared_buffers=16MB",
              (char *)NULL);
        _exit(127);
    }
    snprintf(ping, sizeof(ping),
             "host=127.0.0.1 port=%d dbname=postgres user=pgadmin "
             "connect_timeout=2", G.port);
    end = pgt_now_ms() + 15000;
    while (pgt_now_ms() < end) {
        int status;
        if (waitpid(G.pid, &status, WNOHANG) == G.pid) {
            G.pid = -1;
            fprintf(stderr, "test_sql: postgres exited (see %s)\n", log);
            return -1;
        }
        if (PQping(ping) == PQPING_OK) {
            return 0;
        }
        pgt_sleep_ms(30);
    }
    return -1;
}

/* Fast shutdown (SIGINT: sessions are terminated) and wait. */
static void
server_stop(void)
{
    if (G.pid > 0) {
        kill(G.pid, SIGINT);
        waitpid(G.pid, NULL, 0);
        G.pid = -1;
    }
}

/* Blocking admin query; asserts success; returns the first value of the
 * first row (static buffer) or "". */
static const char *
q(const char *sql)
{
    static char buf[4096];
    PGresult *r = PQexec(G.admin, sql);
    ExecStatusType st = PQresultStatus(r);

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        fprintf(stderr, "test_sql: admin query failed: %s\n%s\n", sql,
                PQresultErrorMessage(r));
        PQclear(r);
        fail();
    }
    buf[0] = '\0';
    if (st == PGRES_TUPLES_OK && PQntuples(r) > 0 && PQnfields(r) > 0
        && !PQgetisnull(r, 0, 0)) {
        snprintf(buf, sizeof(buf), "%s", PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    return buf;
}

/* Like q() with one text parameter. */
static const char *
q1(const char *sql, const char *p1)
{
    static char buf[4096];
    const char *vals[1] = { p1 };
    PGresult *r = PQexecParams(G.admin, sql, 1, NULL, vals, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        fprintf(stderr, "test_sql: admin query failed: %s\n%s\n", sql,
                PQresultErrorMessage(r));
        PQclear(r);
        fail();
    }
    buf[0] = '\0';
    if (st == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0)) {
        snprintf(buf, sizeof(buf), "%s", PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    return buf;
}

static int
admin_connect(void)
{
    char ci[200];

    snprintf(ci, sizeof(ci), "host=127.0.0.1 port=%d dbname=postgres "
             "user=pgadmin", G.port);
    G.admin = PQconnectdb(ci);
    return PQstatus(G.admin) == CONNECTION_OK ? 0 : -1;
}

static const char *SCHEMA =
    "CREATE TABLE accounts ("
    "  id bigserial PRIMARY KEY,"
    "  key text NOT NULL UNIQUE,"
    "  display_name text,"
    "  email text,"
    "  department varchar(64),"
    "  active boolean NOT NULL DEFAULT true,"
    "  updated_at timestamptz NOT NULL DEFAULT clock_timestamp());"
    "CREATE TABLE account_groups ("
    "  account_key text NOT NULL REFERENCES accounts(key)"
    "    ON DELETE CASCADE ON UPDATE CASCADE,"
    "  group_name text NOT NULL,"
    "  PRIMARY KEY (account_key, group_name));"
    "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$"
    "  BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END $$;"
    "CREATE TRIGGER accounts_touch BEFORE UPDATE ON accounts"
    "  FOR EACH ROW EXECUTE FUNCTION touch();"
    /* test only: what ran against accounts */
    "CREATE TABLE audit_log (op text, key text);"
    "CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$"
    "  BEGIN INSERT INTO audit_log VALUES (TG_OP, coalesce(NEW.key, OLD.key));"
    "  RETURN NULL; END $$;"
    "CREATE TRIGGER accounts_audit AFTER INSERT OR UPDATE OR DELETE"
    "  ON accounts FOR EACH ROW EXECUTE FUNCTION audit();"
    /* test only: a lookup that sleeps inside the statement's snapshot */
    "CREATE FUNCTION slow_lookup(k text) RETURNS SETOF accounts"
    "  LANGUAGE plpgsql STABLE AS $$ BEGIN PERFORM pg_sleep(0.4);"
    "  RETURN QUERY SELECT * FROM accounts WHERE key = k; END $$;"
    "CREATE ROLE pwuser LOGIN PASSWORD 'right-pw';"
    "GRANT SELECT, INSERT, UPDATE ON accounts, account_groups TO pwuser;"
    "GRANT USAGE ON SEQUENCE accounts_id_seq TO pwuser;"
    "GRANT INSERT ON audit_log TO pwuser;";

static int
group_setup(void **state)
{
    char tmpl[] = "/tmp/pgt-sql-XXXXXX", hba[400];
    struct passwd *pw;

    (void)state;
    if (access(PGBIN "/postgres", X_OK) != 0) {
        fprintf(stderr, "test_sql: PostgreSQL 15 not found in " PGBIN "\n");
        return -1;
    }
    if (mkdtemp(tmpl) == NULL) {
        return -1;
    }
    snprintf(G.dir, sizeof(G.dir), "%s", tmpl);
    snprintf(G.data, sizeof(G.data), "%s/data", G.dir);
    if (geteuid() == 0) {
        pw = getpwnam("postgres");
        if (pw == NULL) {
            pw = getpwnam("nobody");
        }
        if (pw == NULL) {
            return -1;
        }
        G.uid = pw->pw_uid;
        G.gid = pw->pw_gid;
        G.drop = 1;
        if (chown(G.dir, G.uid, G.gid) != 0) {
            return -1;
        }
    }
    if (run_initdb() != 0) {
        return -1;
    }
    snprintf(hba, sizeof(hba), "%s/pg_hba.conf", G.data);
    if (write_file(hba,
                   "local all all trust\n"
                   "host all pwuser 127.0.0.1/32 scram-sha-256\n"
                   "host all all 127.0.0.1/32 trust\n") != 0) {
        return -1;
    }
    for (int attempt = 0; attempt < 5; attempt++) {
        G.port = pgt_free_port();
        if (G.port != 0 && server_start() == 0) {
            break;
        }
        server_stop();
        G.port = 0;
    }
    if (G.port == 0 || admin_connect() != 0) {
        return -1;
    }
    {
        PGresult *r = PQexec(G.admin, SCHEMA);
        int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok) {
            fprintf(stderr, "test_sql: schema: %s\n", PQresultErrorMessage(r));
        }
        PQclear(r);
        if (!ok) {
            return -1;
        }
    }
    snprintf(G.conninfo, sizeof(G.conninfo),
             "host=127.0.0.1 port=%d dbname=postgres user=pgadmin", G.port);
    return pg_loop_new(&G.loop) == PG_OK ? 0 : -1;
}

static int
group_teardown(void **state)
{
    char cmd[600];

    (void)state;
    if (G.admin != NULL) {
        PQfinish(G.admin);
        G.admin = NULL;
    }
    server_stop();
    pg_loop_free(G.loop);
    if (G.dir[0] != '\0' && strncmp(G.dir, "/tmp/pgt-sql-", 13) == 0) {
        /* Only our own mkdtemp directory. */
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", G.dir);
        if (system(cmd) != 0) {
            fprintf(stderr, "test_sql: could not remove %s\n", G.dir);
        }
    }
    return 0;
}

/* Empty the tables before each test. */
static int
test_setup(void **state)
{
    (void)state;
    if (G.admin == NULL || PQstatus(G.admin) != CONNECTION_OK) {
        PQfinish(G.admin);
        if (admin_connect() != 0) {
            return -1;
        }
    }
    q("TRUNCATE accounts, account_groups, audit_log RESTART IDENTITY");
    return 0;
}

/* ---- connector config ------------------------------------------------ */

#define LIST_SQL                                                            \
    "SELECT a.id, a.key, a.display_name, a.email, a.department, a.active,"  \
    " a.updated_at AS modified,"                                            \
    " (SELECT coalesce(json_agg(g.group_name ORDER BY g.group_name), '[]')" \
    "    FROM account_groups g WHERE g.account_key = a.key) AS groups"     \
    " FROM accounts a WHERE a.key > :after AND a.updated_at >= :since"      \
    " ORDER BY a.key LIMIT :limit"

/* The base config (a new reference). The lookup has a literal ':key', a
 * block comment, a line comment and a cast, all of which must survive
 * the named-parameter translation untouched. */
static json_t *
base_cfg(void)
{
    json_t *cfg = json_pack(
        "{s:s, s:s, s:i, s:{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, "
        "s:s}}",
        "type", "sql",
        "conninfo", G.conninfo,
        "timeout_ms", 5000,
        "statements",
        "lookup",
        "SELECT id, key, display_name, email, department, active,"
        " updated_at AS modified, ':key' AS lit /* :bogus */,"
        " $$:nope$$::text AS dollar"
        " FROM accounts WHERE key = :key::text -- :nope",
        "create",
        "INSERT INTO accounts (key, display_name, email, department, active)"
        " VALUES (:key, :attr.display_name, :attr.email, :attr.department,"
        " :active)",
        "update",
        "UPDATE accounts SET display_name = :attr.display_name,"
        " email = :attr.email, department = :attr.department"
        " WHERE key = :key",
        "disable", "UPDATE accounts SET active = false WHERE key = :key",
        "enable", "UPDATE accounts SET active = true WHERE key = :key",
        "delete", "DELETE FROM accounts WHERE key = :key",
        "list", LIST_SQL,
        "group_list",
        "SELECT group_name AS \"group\" FROM account_groups"
        " WHERE account_key = :key",
        "group_add",
        "INSERT INTO account_groups (account_key, group_name)"
        " VALUES (:key, :group) ON CONFLICT DO NOTHING",
        "group_remove",
        "DELETE FROM account_groups WHERE account_key = :key"
        " AND group_name = :group");

    assert_non_null(cfg);
    return cfg;
}

static pg_connector_t *
mk(json_t *cfg)
{
    pg_connector_t *c = NULL;
    pg_err_t err;

    err.msg[0] = '\0';
    if (pg_sql_connector_new(pg_loop_host(G.loop), "app", cfg, &c, &err)
        != PG_OK) {
        fprintf(stderr, "test_sql: config: %s\n", err.msg);
        fail();
    }
    json_decref(cfg);
    return c;
}

/* Expect a config error whose message contains want. */
static void
expect_cfg_error(json_t *cfg, const char *want)
{
    pg_connector_t *c = NULL;
    pg_err_t err;

    err.msg[0] = '\0';
    assert_int_equal(pg_sql_connector_new(pg_loop_host(G.loop), "app", cfg,
                                          &c, &err), PG_ERR_CONFIG);
    assert_null(c);
    if (strstr(err.msg, want) == NULL) {
        fprintf(stderr, "test_sql: error \"%s\" lacks \"%s\"\n", err.msg,
                want);
        fail();
    }
    json_decref(cfg);
}

static void
set_stmt(json_t *cfg, const char *name, const char *sql)
{
    json_t *sts = json_object_get(cfg, "statements");

    if (sql == NULL) {
        json_object_del(sts, name);
    } else {
        json_object_set_new(sts, name, json_string(sql));
    }
}

/* ---- running operations ---------------------------------------------- */

typedef struct {
    int done;
    int cb_count;
    pg_status_t st;
    pg_conn_outcome_t outcome;
    int retryable;
    char id[300];
    char error[600];
    json_t *changes;
} res_t;

static void
on_res(void *arg, pg_status_t st, const pg_conn_result_t *res)
{
    res_t *r = arg;

    r->cb_count++;
    r->done = 1;
    r->st = st;
    r->outcome = res->outcome;
    r->retryable = res->retryable;
    snprintf(r->id, sizeof(r->id), "%s", res->id != NULL ? res->id : "(null)");
    snprintf(r->error, sizeof(r->error), "%s",
             res->error != NULL ? res->error : "(null)");
    json_decref(r->changes);
    r->changes = res->changes != NULL ? json_deep_copy(res->changes) : NULL;
}

enum { OPE, OPD, OPR };

/* Start op, check no callback ran inside the start call, run the loop
 * until the callback, check it ran exactly once. */
static res_t
run_op(pg_connector_t *c, int op, const pg_account_t *a)
{
    res_t r;
    pg_status_t st;
    int never = 0;

    memset(&r, 0, sizeof(r));
    st = op == OPE ? pg_conn_ensure(c, a, on_res, &r, NULL)
         : op == OPD ? pg_conn_disable(c, a, on_res, &r, NULL)
                     : pg_conn_remove(c, a, on_res, &r, NULL);
    assert_int_equal(st, PG_OK);
    assert_int_equal(r.cb_count, 0);
    assert_int_equal(pg_loop_run(G.loop, &r.done, RUN_TIMEOUT_MS), PG_OK);
    /* nothing more arrives later */
    assert_int_equal(pg_loop_run(G.loop, &never, 20), PG_ERR_TIMEOUT);
    assert_int_equal(r.cb_count, 1);
    return r;
}

static void
res_clear(res_t *r)
{
    json_decref(r->changes);
    r->changes = NULL;
}

/* An account with display_name/email/department attributes. */
static pg_account_t
mkacct(const char *key, json_t *attrs)
{
    pg_account_t a;

    memset(&a, 0, sizeof(a));
    a.key = key;
    a.attrs = attrs;
    a.active = 1;
    return a;
}

static json_t *
attrs3(const char *dn, const char *email, const char *dept)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "display_name", dn,
                          "email", email, "department", dept,
                          "lit", ":key");
    assert_non_null(o);
    return o;
}

static int
changes_has(const res_t *r, const char *name)
{
    size_t i;
    json_t *v;

    json_array_foreach(r->changes, i, v) {
        if (strcmp(json_string_value(v), name) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Decimal text to a number (tests: asserts it parses). */
static long long
num(const char *s)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(s, &end, 10);
    assert_true(errno == 0 && end != s && *end == '\0');
    return v;
}

static int
count_int(const char *sql, const char *p1)
{
    return (int)num(p1 != NULL ? q1(sql, p1) : q(sql));
}

/* ---- tests ----------------------------------------------------------- */

static void
test_config_errors(void **state)
{
    json_t *cfg;
    pg_connector_t *c;

    (void)state;
    cfg = base_cfg();
    json_object_set_new(cfg, "bogus", json_true());
    expect_cfg_error(cfg, "connector.bogus: unknown");

    cfg = base_cfg();
    set_stmt(cfg, "update", "UPDATE accounts SET email = :mail WHERE key = :key");
    expect_cfg_error(cfg, "connector.statements.update: unknown parameter :mail");

    cfg = base_cfg();
    set_stmt(cfg, "lookup", "SELECT key FROM accounts WHERE key = :group");
    expect_cfg_error(cfg, "connector.statements.lookup: parameter :group is "
                          "not available");

    cfg = base_cfg();
    set_stmt(cfg, "delete", NULL);
    expect_cfg_error(cfg, "connector.statements.delete: required");

    cfg = base_cfg();
    set_stmt(cfg, "enable", NULL);
    expect_cfg_error(cfg, "connector.statements.enable: required");

    cfg = base_cfg();
    json_object_set_new(json_object_get(cfg, "statements"), "rename",
                        json_string("SELECT 1"));
    expect_cfg_error(cfg, "connector.statements.rename: unknown");

    cfg = base_cfg();
    set_stmt(cfg, "delete", "DELETE FROM accounts WHERE key = $1");
    expect_cfg_error(cfg, "connector.statements.delete: positional");

    cfg = base_cfg();
    set_stmt(cfg, "list", "SELECT key FROM accounts ORDER BY key LIMIT :limit");
    expect_cfg_error(cfg, "connector.statements.list: must use :after");

    cfg = base_cfg();
    set_stmt(cfg, "disable", "UPDATE accounts SET active = false");
    expect_cfg_error(cfg, "connector.statements.disable: must use :key or :id");

    cfg = base_cfg();
    set_stmt(cfg, "group_remove", NULL);
    expect_cfg_error(cfg, "connector.statements.group_remove: required with");

    cfg = base_cfg();
    set_stmt(cfg, "update", "UPDATE accounts SET email = ':x WHERE key = :key");
    expect_cfg_error(cfg, "connector.statements.update: unterminated string");

    cfg = base_cfg();
    set_stmt(cfg, "update", "UPDATE accounts SET email = :attr WHERE key = :key");
    expect_cfg_error(cfg, "connector.statements.update: :attr must be");

    cfg = base_cfg();
    json_object_set_new(cfg, "host", json_string("127.0.0.1"));
    expect_cfg_error(cfg, "connector.host: not allowed with conninfo");

    cfg = base_cfg();
    json_object_set_new(cfg, "conninfo", json_string("host=x bogusopt=1"));
    expect_cfg_error(cfg, "connector.conninfo: not a valid");

    cfg = base_cfg();
    json_object_set_new(cfg, "timeout_ms", json_integer(1));
    expect_cfg_error(cfg, "connector.timeout_ms: ");

    cfg = base_cfg();
    json_object_set_new(cfg, "page_size", json_integer(PG_CONN_PAGE_MAX + 1));
    expect_cfg_error(cfg, "connector.page_size: ");

    cfg = base_cfg();
    json_object_set_new(cfg, "type", json_string("ldap"));
    expect_cfg_error(cfg, "connector.type: must be \"sql\"");

    cfg = base_cfg();
    json_object_del(cfg, "conninfo");
    json_object_set_new(cfg, "password_file", json_string("/nonexistent/pw"));
    json_object_set_new(cfg, "host", json_string("127.0.0.1"));
    expect_cfg_error(cfg, "connector.password_file:");

    /* The valid base: caps say list, incremental, groups, disable. */
    c = mk(base_cfg());
    assert_string_equal(c->vt->type, "sql");
    assert_int_equal(c->caps, PG_CONN_CAP_LIST | PG_CONN_CAP_INCREMENTAL
                              | PG_CONN_CAP_GROUPS | PG_CONN_CAP_DISABLE);
    pg_connector_free(c);

    /* Without group statements and :since: no GROUPS, no INCREMENTAL. */
    cfg = base_cfg();
    set_stmt(cfg, "group_list", NULL);
    set_stmt(cfg, "group_add", NULL);
    set_stmt(cfg, "group_remove", NULL);
    set_stmt(cfg, "list", "SELECT key FROM accounts WHERE key > :after"
                          " ORDER BY key LIMIT :limit");
    c = mk(cfg);
    assert_int_equal(c->caps, PG_CONN_CAP_LIST | PG_CONN_CAP_DISABLE);
    pg_connector_free(c);
}

static void
test_create_unchanged_update(void **state)
{
    pg_connector_t *c = mk(base_cfg());
    json_t *at = attrs3("Alice A", "alice@example.org", "R&D");
    pg_account_t a = mkacct("alice", at);
    res_t r;
    char id[64];

    (void)state;
    r = run_op(c, OPE, &a);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    snprintf(id, sizeof(id), "%s", q("SELECT id FROM accounts WHERE key = 'alice'"));
    assert_string_equal(r.id, id);
    assert_string_equal(q("SELECT display_name || '|' || email || '|' || "
                          "department || '|' || active FROM accounts"),
                        "Alice A|alice@example.org|R&D|true");
    res_clear(&r);

    /* Again: nothing to do. The lookup's literal ':key' equals attribute
     * lit, so the translation left the literal alone. */
    r = run_op(c, OPE, &a);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);
    assert_null(r.changes);
    assert_string_equal(r.id, id);
    assert_int_equal(count_int("SELECT count(*) FROM accounts", NULL), 1);
    assert_int_equal(count_int("SELECT count(*) FROM audit_log WHERE op = "
                               "'UPDATE'", NULL), 0);

    /* Change one attribute: exactly one UPDATE, changes = ["email"]. */
    json_object_set_new(at, "email", json_string("alice@new.example.org"));
    r = run_op(c, OPE, &a);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UPDATED);
    assert_int_equal(json_array_size(r.changes), 1);
    assert_true(changes_has(&r, "email"));
    assert_string_equal(q("SELECT email FROM accounts"),
                        "alice@new.example.org");
    assert_int_equal(count_int("SELECT count(*) FROM audit_log WHERE op = "
                               "'UPDATE'", NULL), 1);
    res_clear(&r);

    r = run_op(c, OPE, &a);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);
    assert_int_equal(count_int("SELECT count(*) FROM audit_log WHERE op = "
                               "'UPDATE'", NULL), 1);
    res_clear(&r);

    /* The known id alone is not what the lookup uses; a given id is kept
     * in the request but the row's id wins. */
    a.id = "999";
    r = run_op(c, OPE, &a);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);
    assert_string_equal(r.id, id);
    res_clear(&r);

    json_decref(at);
    pg_connector_free(c);
}

static void
test_groups(void **state)
{
    pg_connector_t *c = mk(base_cfg());
    json_t *at = attrs3("Bob", "bob@example.org", "Ops");
    pg_account_t a = mkacct("bob", at);
    const char *g1[] = { "staff", "eng" };
    const char *g2[] = { "staff" };
    const char *rv[] = { "eng", "never-had" };
    res_t r;

    (void)state;
    r = run_op(c, OPE, &a);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    res_clear(&r);
    /* A membership provgate does not manage. */
    q("INSERT INTO account_groups VALUES ('bob', 'manual')");

    a.groups = g1;
    a.ngroups = 2;
    r = run_op(c, OPE, &a);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UPDATED);
    assert_true(changes_has(&r, "staff"));
    assert_true(changes_has(&r, "eng"));
    assert_int_equal(json_array_size(r.changes), 2);
    assert_string_equal(q("SELECT string_agg(group_name, ',' ORDER BY "
                          "group_name) FROM account_groups"),
                        "eng,manual,staff");
    res_clear(&r);

    r = run_op(c, OPE, &a);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);
    res_clear(&r);

    a.groups = g2;
    a.ngroups = 1;
    a.revoke = rv;
    a.nrevoke = 2;
    r = run_op(c, OPE, &a);
    assert_int_equal(r.outcome, PG_CONN_UPDATED);
    assert_int_equal(json_array_size(r.changes), 1);
    assert_true(changes_has(&r, "eng"));
    assert_string_equal(q("SELECT string_agg(group_name, ',' ORDER BY "
                          "group_name) FROM account_groups"),
                        "manual,staff");
    res_clear(&r);

    r = run_op(c, OPE, &a);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);
    res_clear(&r);

    /* A new account gets its groups with the create. */
    {
        pg_account_t b = mkacct("carol", at);
        b.groups = g1;
        b.ngroups = 2;
        r = run_op(c, OPE, &b);
        assert_int_equal(r.outcome, PG_CONN_CREATED);
        assert_int_equal(count_int("SELECT count(*) FROM account_groups "
                                   "WHERE account_key = $1", "carol"), 2);
        res_clear(&r);
    }
    json_decref(at);
    pg_connector_free(c);
}

static void
test_disable_enable(void **state)
{
    pg_connector_t *c = mk(base_cfg());
    json_t *at = attrs3("Dan", "dan@example.org", "Ops");
    pg_account_t a = mkacct("dan", at);
    res_t r;

    (void)state;
    r = run_op(c, OPE, &a);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    res_clear(&r);

    /* ensure with active = 0 disables. */
    a.active = 0;
    r = run_op(c, OPE, &a);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.outcome, PG_CONN_DISABLED);
    assert_true(changes_has(&r, "active"));
    assert_string_equal(q("SELECT active FROM accounts"), "f");
    res_clear(&r);

    /* disable() of a disabled account succeeds without writing. */
    r = run_op(c, OPD, &a);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);
    assert_int_equal(count_int("SELECT count(*) FROM audit_log WHERE op = "
                               "'UPDATE'", NULL), 1);
    res_clear(&r);

    /* ensure active again enables. */
    a.active = 1;
    r = run_op(c, OPE, &a);
    assert_int_equal(r.outcome, PG_CONN_UPDATED);
    assert_true(changes_has(&r, "active"));
    assert_string_equal(q("SELECT active FROM accounts"), "t");
    res_clear(&r);

    r = run_op(c, OPD, &a);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.outcome, PG_CONN_DISABLED);
    assert_string_equal(q("SELECT active FROM accounts"), "f");
    res_clear(&r);

    /* Unknown account: NOT_FOUND. */
    {
        pg_account_t u = mkacct("nobody-here", NULL);
        r = run_op(c, OPD, &u);
        assert_int_equal(r.st, PG_ERR_NOT_FOUND);
        assert_int_equal(r.retryable, 0);
        res_clear(&r);
    }
    /* A new disabled account is created disabled. */
    {
        pg_account_t e = mkacct("erin", at);
        e.active = 0;
        r = run_op(c, OPE, &e);
        assert_int_equal(r.outcome, PG_CONN_CREATED);
        assert_string_equal(q1("SELECT active FROM accounts WHERE key = $1",
                               "erin"), "f");
        res_clear(&r);
    }
    json_decref(at);
    pg_connector_free(c);
}

static void
test_remove_twice(void **state)
{
    pg_connector_t *c = mk(base_cfg());
    json_t *at = attrs3("Fay", "fay@example.org", "HR");
    pg_account_t a = mkacct("fay", at);
    const char *g[] = { "staff" };
    res_t r;

    (void)state;
    a.groups = g;
    a.ngroups = 1;
    r = run_op(c, OPE, &a);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    res_clear(&r);
    r = run_op(c, OPR, &a);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.outcome, PG_CONN_REMOVED);
    assert_int_equal(count_int("SELECT count(*) FROM accounts", NULL), 0);
    assert_int_equal(count_int("SELECT count(*) FROM account_groups", NULL),
                     0);
    res_clear(&r);
    r = run_op(c, OPR, &a);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.outcome, PG_CONN_REMOVED);
    res_clear(&r);
    json_decref(at);
    pg_connector_free(c);
}

static void
test_injection_key_literal(void **state)
{
    static const char *evil = "o'brien'; DROP TABLE accounts; --";
    pg_connector_t *c = mk(base_cfg());
    json_t *at = attrs3("Robert'); DROP TABLE account_groups;--",
                        "x@example.org", "$1 :key");
    pg_account_t a = mkacct(evil, at);
    const char *g[] = { "g'; DELETE FROM accounts; --" };
    res_t r;

    (void)state;
    a.groups = g;
    a.ngroups = 1;
    r = run_op(c, OPE, &a);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    assert_int_equal(count_int("SELECT count(*) FROM accounts WHERE key = $1",
                               evil), 1);
    assert_string_equal(q1("SELECT display_name FROM accounts WHERE key = $1",
                           evil), "Robert'); DROP TABLE account_groups;--");
    assert_string_equal(q1("SELECT department FROM accounts WHERE key = $1",
                           evil), "$1 :key");
    assert_string_equal(q1("SELECT group_name FROM account_groups WHERE "
                           "account_key = $1", evil),
                        "g'; DELETE FROM accounts; --");
    assert_string_equal(q("SELECT to_regclass('accounts')::text"), "accounts");
    res_clear(&r);
    r = run_op(c, OPE, &a);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);
    res_clear(&r);
    json_decref(at);
    pg_connector_free(c);
}

typedef struct {
    int done;
    pg_status_t st;
    char error[600];
    int pages;
    int stop_after;            /* return 1 at this page (0 = never) */
    json_t *keys;              /* array of listed keys */
    json_t *seen;              /* key -> {attrs, groups, active, modified} */
} lres_t;

static int
on_page(void *arg, const pg_listed_account_t *accts, size_t n)
{
    lres_t *l = arg;
    size_t i, j;

    l->pages++;
    assert_true(n > 0 && n <= PG_CONN_PAGE_MAX);
    for (i = 0; i < n; i++) {
        json_t *g = json_array();
        for (j = 0; j < accts[i].ngroups; j++) {
            json_array_append_new(g, json_string(accts[i].groups[j]));
        }
        json_array_append_new(l->keys, json_string(accts[i].key));
        json_object_set_new(l->seen, accts[i].key,
                            json_pack("{s:O, s:o, s:b, s:I, s:s}",
                                      "attrs", accts[i].attrs, "groups", g,
                                      "active", accts[i].active,
                                      "modified",
                                      (json_int_t)accts[i].modified_ms,
                                      "id", accts[i].id));
    }
    return l->stop_after != 0 && l->pages >= l->stop_after;
}

static void
on_list_done(void *arg, pg_status_t st, const char *error)
{
    lres_t *l = arg;

    l->done++;
    l->st = st;
    snprintf(l->error, sizeof(l->error), "%s", error);
}

static void
run_list(pg_connector_t *c, uint64_t since, lres_t *l)
{
    int never = 0;

    l->done = 0;
    l->pages = 0;
    json_decref(l->keys);
    json_decref(l->seen);
    l->keys = json_array();
    l->seen = json_object();
    assert_int_equal(pg_conn_list(c, since, on_page, on_list_done, l, NULL),
                     PG_OK);
    assert_int_equal(l->done, 0);
    assert_int_equal(l->pages, 0);
    assert_int_equal(pg_loop_run(G.loop, &l->done, RUN_TIMEOUT_MS), PG_OK);
    assert_int_equal(pg_loop_run(G.loop, &never, 20), PG_ERR_TIMEOUT);
    assert_int_equal(l->done, 1);
}

static void
test_list_paging_and_since(void **state)
{
    json_t *cfg = base_cfg();
    pg_connector_t *c;
    lres_t l;
    char key[16];
    const char *order;
    json_t *u;
    uint64_t since;
    int i;

    (void)state;
    memset(&l, 0, sizeof(l));
    json_object_set_new(cfg, "page_size", json_integer(2));
    c = mk(cfg);
    for (i = 6; i >= 0; i--) {     /* inserted out of order */
        snprintf(key, sizeof(key), "user%d", i);
        q1("INSERT INTO accounts (key, display_name, email) "
           "VALUES ($1, 'U ' || $1, $1 || '@example.org')", key);
    }
    q("INSERT INTO account_groups VALUES ('user3', 'staff'), "
      "('user3', 'eng')");
    q("UPDATE accounts SET active = false WHERE key = 'user5'");

    run_list(c, 0, &l);
    assert_int_equal(l.st, PG_OK);
    assert_string_equal(l.error, "");
    assert_int_equal(l.pages, 4);          /* 2+2+2+1 */
    assert_int_equal(json_array_size(l.keys), 7);
    for (i = 0; i < 7; i++) {
        snprintf(key, sizeof(key), "user%d", i);
        assert_string_equal(json_string_value(json_array_get(l.keys,
                                                             (size_t)i)),
                            key);
    }
    u = json_object_get(l.seen, "user3");
    assert_string_equal(json_string_value(json_object_get(
        json_object_get(u, "attrs"), "email")), "user3@example.org");
    assert_null(json_object_get(json_object_get(u, "attrs"), "department"));
    assert_null(json_object_get(json_object_get(u, "attrs"), "key"));
    order = json_dumps(json_object_get(u, "groups"), JSON_COMPACT);
    assert_string_equal(order, "[\"eng\",\"staff\"]");
    free((void *)order);
    assert_true(json_is_true(json_object_get(u, "active")));
    assert_true(json_is_false(json_object_get(json_object_get(l.seen, "user5"),
                                              "active")));
    /* modified is the row's updated_at in ms, close to the DB clock */
    {
        json_int_t m = json_integer_value(json_object_get(u, "modified"));
        json_int_t db = num(q("SELECT (extract(epoch FROM updated_at) * "
                                "1000)::bigint FROM accounts "
                                "WHERE key = 'user3'"));
        assert_true(m > 0);
        assert_true(m - db <= 1 && db - m <= 1);
    }
    assert_string_equal(json_string_value(json_object_get(u, "id")),
                        q("SELECT id FROM accounts WHERE key = 'user3'"));

    /* Incremental: only rows changed at or after since. */
    pgt_sleep_ms(20);
    since = (uint64_t)num(q("SELECT (extract(epoch FROM clock_timestamp())"
                              " * 1000)::bigint"));
    pgt_sleep_ms(20);
    q("UPDATE accounts SET email = 'new' WHERE key IN ('user1', 'user6')");
    run_list(c, since, &l);
    assert_int_equal(l.st, PG_OK);
    assert_int_equal(json_array_size(l.keys), 2);
    assert_string_equal(json_string_value(json_array_get(l.keys, 0)), "user1");
    assert_string_equal(json_string_value(json_array_get(l.keys, 1)), "user6");

    /* A page callback that stops: done with PG_ERR_CANCELLED. */
    l.stop_after = 2;
    run_list(c, 0, &l);
    assert_int_equal(l.st, PG_ERR_CANCELLED);
    assert_int_equal(l.pages, 2);

    /* Empty listing: done(PG_OK), no page. */
    l.stop_after = 0;
    run_list(c, (uint64_t)num(q("SELECT (extract(epoch FROM "
                                  "clock_timestamp()) * 1000)::bigint"))
                 + 60000, &l);
    assert_int_equal(l.st, PG_OK);
    assert_int_equal(l.pages, 0);

    json_decref(l.keys);
    json_decref(l.seen);
    pg_connector_free(c);

    /* A list statement that does not advance is stopped, not looped. */
    cfg = base_cfg();
    json_object_set_new(cfg, "page_size", json_integer(2));
    set_stmt(cfg, "list", "SELECT key FROM accounts WHERE CAST(:after AS text)"
                          " IS NOT NULL"
                          " ORDER BY key LIMIT :limit");
    c = mk(cfg);
    memset(&l, 0, sizeof(l));
    run_list(c, 0, &l);
    assert_int_equal(l.st, PG_ERR_INVALID);
    assert_non_null(strstr(l.error, "does not advance"));
    assert_int_equal(l.pages, 1);
    json_decref(l.keys);
    json_decref(l.seen);
    pg_connector_free(c);
}

/* Unique violation from a concurrent insert between lookup and create:
 * the lookup sleeps inside its snapshot while the test inserts the row. */
static void
test_conflict_adopted(void **state)
{
    json_t *cfg = base_cfg();
    json_t *at = attrs3("Gus", "gus@example.org", "Ops");
    pg_account_t a = mkacct("gus", at);
    pg_connector_t *c;
    res_t r, warm;
    int never = 0;

    (void)state;
    set_stmt(cfg, "lookup", "SELECT id, key, display_name, email, department,"
                            " active FROM slow_lookup(:key)");
    c = mk(cfg);
    /* Connect first so the race window is the lookup itself. */
    {
        pg_account_t w = mkacct("warmup", at);
        warm = run_op(c, OPR, &w);
        assert_int_equal(warm.st, PG_OK);
        res_clear(&warm);
    }
    memset(&r, 0, sizeof(r));
    assert_int_equal(pg_conn_ensure(c, &a, on_res, &r, NULL), PG_OK);
    assert_int_equal(pg_loop_run(G.loop, &never, 150), PG_ERR_TIMEOUT);
    assert_int_equal(r.cb_count, 0);
    q("INSERT INTO accounts (key, display_name, email, department) "
      "VALUES ('gus', 'Gus', 'old@example.org', 'Ops')");
    assert_int_equal(pg_loop_run(G.loop, &r.done, RUN_TIMEOUT_MS), PG_OK);
    assert_int_equal(r.cb_count, 1);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.outcome, PG_CONN_ADOPTED);
    assert_true(changes_has(&r, "email"));
    assert_string_equal(r.id, q("SELECT id FROM accounts WHERE key = 'gus'"));
    assert_int_equal(count_int("SELECT count(*) FROM accounts", NULL), 1);
    assert_string_equal(q("SELECT email FROM accounts"), "gus@example.org");
    res_clear(&r);
    json_decref(at);
    pg_connector_free(c);
}

static void
test_sqlstate_mapping(void **state)
{
    pg_connector_t *c = mk(base_cfg());
    json_t *at = attrs3("Hal", "hal@example.org", "");
    pg_account_t a = mkacct("hal", at);
    char longdept[200];
    res_t r;

    (void)state;
    /* 22001 string_data_right_truncation: INVALID, not retryable. */
    memset(longdept, 'd', sizeof(longdept) - 1);
    longdept[sizeof(longdept) - 1] = '\0';
    json_object_set_new(at, "department", json_string(longdept));
    r = run_op(c, OPE, &a);
    assert_int_equal(r.st, PG_ERR_INVALID);
    assert_int_equal(r.retryable, 0);
    assert_non_null(strstr(r.error, "22001"));
    assert_non_null(strstr(r.error, "create"));
    res_clear(&r);
    assert_int_equal(count_int("SELECT count(*) FROM accounts", NULL), 0);

    /* Several rows for one key: CONFLICT. */
    pg_connector_free(c);
    {
        json_t *cfg = base_cfg();
        set_stmt(cfg, "lookup", "SELECT key FROM (VALUES (:key), (:key)) v(key)");
        c = mk(cfg);
    }
    json_object_set_new(at, "department", json_string("Ops"));
    r = run_op(c, OPE, &a);
    assert_int_equal(r.st, PG_ERR_CONFLICT);
    res_clear(&r);
    json_decref(at);
    pg_connector_free(c);
}

static void
test_auth_and_privileges(void **state)
{
    char pwfile[400];
    json_t *cfg;
    pg_connector_t *c;
    json_t *at = attrs3("Ivy", "ivy@example.org", "Ops");
    pg_account_t a = mkacct("ivy", at);
    res_t r;

    (void)state;
    snprintf(pwfile, sizeof(pwfile), "%s/pw", G.dir);

    /* Wrong password (keyword/value conninfo): DENIED, not retryable. */
    cfg = base_cfg();
    {
        char ci[300];
        snprintf(ci, sizeof(ci), "host=127.0.0.1 port=%d dbname=postgres "
                 "user=pwuser password=wrong-pw", G.port);
        json_object_set_new(cfg, "conninfo", json_string(ci));
    }
    c = mk(cfg);
    r = run_op(c, OPE, &a);
    assert_int_equal(r.st, PG_ERR_DENIED);
    assert_int_equal(r.retryable, 0);
    assert_null(strstr(r.error, "wrong-pw"));
    res_clear(&r);
    pg_connector_free(c);

    /* Discrete keys with the right password_file: works. */
    assert_int_equal(write_file(pwfile, "right-pw\n"), 0);
    cfg = base_cfg();
    json_object_del(cfg, "conninfo");
    json_object_set_new(cfg, "host", json_string("127.0.0.1"));
    json_object_set_new(cfg, "port", json_integer(G.port));
    json_object_set_new(cfg, "dbname", json_string("postgres"));
    json_object_set_new(cfg, "user", json_string("pwuser"));
    json_object_set_new(cfg, "password_file", json_string(pwfile));
    c = mk(cfg);
    r = run_op(c, OPE, &a);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    res_clear(&r);
    /* pwuser may not DELETE: 42501 -> DENIED, not retryable. */
    r = run_op(c, OPR, &a);
    assert_int_equal(r.st, PG_ERR_DENIED);
    assert_int_equal(r.retryable, 0);
    assert_non_null(strstr(r.error, "42501"));
    res_clear(&r);
    pg_connector_free(c);

    /* Same keys, wrong password file. */
    assert_int_equal(write_file(pwfile, "nope\n"), 0);
    cfg = base_cfg();
    json_object_del(cfg, "conninfo");
    json_object_set_new(cfg, "host", json_string("127.0.0.1"));
    json_object_set_new(cfg, "port", json_integer(G.port));
    json_object_set_new(cfg, "dbname", json_string("postgres"));
    json_object_set_new(cfg, "user", json_string("pwuser"));
    json_object_set_new(cfg, "password_file", json_string(pwfile));
    c = mk(cfg);
    r = run_op(c, OPD, &a);
    assert_int_equal(r.st, PG_ERR_DENIED);
    res_clear(&r);
    pg_connector_free(c);
    unlink(pwfile);
    json_decref(at);
}

static void
test_server_down_then_up(void **state)
{
    pg_connector_t *c = mk(base_cfg());
    json_t *at = attrs3("Jo", "jo@example.org", "Ops");
    pg_account_t a = mkacct("jo", at);
    res_t r;

    (void)state;
    r = run_op(c, OPE, &a);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    res_clear(&r);

    PQfinish(G.admin);
    G.admin = NULL;
    server_stop();
    r = run_op(c, OPE, &a);
    assert_int_equal(r.st, PG_ERR_IO);
    assert_int_equal(r.retryable, 1);
    res_clear(&r);
    /* still down: the reconnect fails too */
    r = run_op(c, OPD, &a);
    assert_int_equal(r.st, PG_ERR_IO);
    assert_int_equal(r.retryable, 1);
    res_clear(&r);

    assert_int_equal(server_start(), 0);
    assert_int_equal(admin_connect(), 0);
    json_object_set_new(at, "email", json_string("jo@new.example.org"));
    r = run_op(c, OPE, &a);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UPDATED);
    assert_string_equal(q("SELECT email FROM accounts"), "jo@new.example.org");
    res_clear(&r);
    json_decref(at);
    pg_connector_free(c);
}

static void
test_timeout_then_reconnect(void **state)
{
    json_t *cfg = base_cfg();
    json_t *at = attrs3("Kim", "kim@example.org", "Ops");
    pg_account_t a = mkacct("kim", at);
    pg_connector_t *c;
    uint64_t t0;
    res_t r;

    (void)state;
    json_object_set_new(cfg, "timeout_ms", json_integer(300));
    set_stmt(cfg, "lookup", "SELECT CAST(:key AS text) AS key FROM pg_sleep(3)");
    c = mk(cfg);
    t0 = pgt_now_ms();
    r = run_op(c, OPE, &a);
    assert_int_equal(r.st, PG_ERR_TIMEOUT);
    assert_int_equal(r.retryable, 1);
    assert_true(pgt_now_ms() - t0 < 2000);
    res_clear(&r);
    /* The next operation reconnects and works. */
    q("INSERT INTO accounts (key) VALUES ('kim')");
    r = run_op(c, OPR, &a);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.outcome, PG_CONN_REMOVED);
    assert_int_equal(count_int("SELECT count(*) FROM accounts", NULL), 0);
    res_clear(&r);
    pg_connector_free(c);

    /* A connect that hangs (postmaster stopped with SIGSTOP: the kernel
     * accepts, nobody answers the startup packet) times out too. */
    cfg = base_cfg();
    json_object_set_new(cfg, "timeout_ms", json_integer(300));
    c = mk(cfg);
    kill(G.pid, SIGSTOP);
    t0 = pgt_now_ms();
    r = run_op(c, OPE, &a);
    kill(G.pid, SIGCONT);
    assert_int_equal(r.st, PG_ERR_TIMEOUT);
    assert_int_equal(r.retryable, 1);
    assert_true(pgt_now_ms() - t0 < 2000);
    res_clear(&r);
    r = run_op(c, OPE, &a);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    res_clear(&r);
    json_decref(at);
    pg_connector_free(c);
}

static void
test_cancel_never_calls_back(void **state)
{
    json_t *cfg = base_cfg();
    json_t *at = attrs3("Lu", "lu@example.org", "Ops");
    pg_account_t a = mkacct("lu", at), b = mkacct("mo", at);
    pg_connector_t *c;
    pg_conn_req_t *req1 = NULL, *req2 = NULL;
    res_t r1, r2, r3;
    int never = 0;

    (void)state;
    set_stmt(cfg, "lookup", "SELECT id, key, display_name, email, department,"
                            " active FROM slow_lookup(:key)");
    c = mk(cfg);
    memset(&r1, 0, sizeof(r1));
    memset(&r2, 0, sizeof(r2));

    /* Cancelled right away (still queued). */
    assert_int_equal(pg_conn_ensure(c, &a, on_res, &r1, &req1), PG_OK);
    assert_non_null(req1);
    pg_conn_cancel(c, req1);
    assert_int_equal(pg_loop_run(G.loop, &never, 200), PG_ERR_TIMEOUT);
    assert_int_equal(r1.cb_count, 0);

    /* Cancelled in flight (sleeping lookup), with one queued behind. */
    assert_int_equal(pg_conn_ensure(c, &a, on_res, &r1, &req1), PG_OK);
    assert_int_equal(pg_conn_ensure(c, &b, on_res, &r2, &req2), PG_OK);
    assert_int_equal(pg_loop_run(G.loop, &never, 150), PG_ERR_TIMEOUT);
    pg_conn_cancel(c, req1);
    assert_int_equal(pg_loop_run(G.loop, &r2.done, RUN_TIMEOUT_MS), PG_OK);
    assert_int_equal(pg_loop_run(G.loop, &never, 600), PG_ERR_TIMEOUT);
    assert_int_equal(r1.cb_count, 0);
    assert_int_equal(r2.cb_count, 1);
    assert_int_equal(r2.st, PG_OK);
    assert_int_equal(r2.outcome, PG_CONN_CREATED);
    res_clear(&r2);
    assert_int_equal(count_int("SELECT count(*) FROM accounts WHERE key = $1",
                               "lu"), 0);

    /* A queued request cancelled behind a running one. */
    memset(&r2, 0, sizeof(r2));
    memset(&r3, 0, sizeof(r3));
    assert_int_equal(pg_conn_remove(c, &b, on_res, &r3, NULL), PG_OK);
    assert_int_equal(pg_conn_ensure(c, &a, on_res, &r2, &req2), PG_OK);
    pg_conn_cancel(c, req2);
    assert_int_equal(pg_loop_run(G.loop, &r3.done, RUN_TIMEOUT_MS), PG_OK);
    assert_int_equal(pg_loop_run(G.loop, &never, 600), PG_ERR_TIMEOUT);
    assert_int_equal(r3.outcome, PG_CONN_REMOVED);
    assert_int_equal(r2.cb_count, 0);
    assert_int_equal(count_int("SELECT count(*) FROM accounts", NULL), 0);
    res_clear(&r3);

    /* Free with a request cancelled first, while a connect may be open. */
    assert_int_equal(pg_conn_ensure(c, &a, on_res, &r2, &req2), PG_OK);
    pg_conn_cancel(c, req2);
    pg_connector_free(c);
    assert_int_equal(pg_loop_run(G.loop, &never, 100), PG_ERR_TIMEOUT);
    assert_int_equal(r2.cb_count, 0);
    json_decref(at);
}

/* Freeing the connector from inside a callback is deferred safely. */
typedef struct {
    pg_connector_t *c;
    int done;
} freer_t;

static void
on_res_free(void *arg, pg_status_t st, const pg_conn_result_t *res)
{
    freer_t *f = arg;

    (void)res;
    assert_int_equal(st, PG_OK);
    pg_connector_free(f->c);
    f->done = 1;
}

static void
test_free_inside_callback(void **state)
{
    json_t *at = attrs3("Ned", "ned@example.org", "Ops");
    pg_account_t a = mkacct("ned", at);
    freer_t f;
    int never = 0;

    (void)state;
    f.c = mk(base_cfg());
    f.done = 0;
    assert_int_equal(pg_conn_ensure(f.c, &a, on_res_free, &f, NULL), PG_OK);
    assert_int_equal(pg_loop_run(G.loop, &f.done, RUN_TIMEOUT_MS), PG_OK);
    assert_int_equal(pg_loop_run(G.loop, &never, 50), PG_ERR_TIMEOUT);
    assert_int_equal(count_int("SELECT count(*) FROM accounts", NULL), 1);
    json_decref(at);
}

/* Other connection forms: a URI, the unix socket directory as host, and
 * a host list whose first entry is dead (libpq moves to a new socket
 * while connecting). */
static void
test_conninfo_forms(void **state)
{
    char ci[400];
    json_t *cfg;
    pg_connector_t *c;
    pg_account_t a = mkacct("uri-user", NULL);
    res_t r;
    int dead = pgt_free_port();

    (void)state;
    cfg = base_cfg();
    snprintf(ci, sizeof(ci), "postgresql://pgadmin@127.0.0.1:%d/postgres",
             G.port);
    json_object_set_new(cfg, "conninfo", json_string(ci));
    c = mk(cfg);
    r = run_op(c, OPE, &a);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    res_clear(&r);
    pg_connector_free(c);

    cfg = base_cfg();
    json_object_del(cfg, "conninfo");
    json_object_set_new(cfg, "host", json_string(G.dir));
    json_object_set_new(cfg, "port", json_integer(G.port));
    json_object_set_new(cfg, "dbname", json_string("postgres"));
    json_object_set_new(cfg, "user", json_string("pgadmin"));
    c = mk(cfg);
    r = run_op(c, OPR, &a);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.outcome, PG_CONN_REMOVED);
    assert_int_equal(count_int("SELECT count(*) FROM accounts", NULL), 0);
    res_clear(&r);
    pg_connector_free(c);

    assert_true(dead > 0 && dead != G.port);
    cfg = base_cfg();
    snprintf(ci, sizeof(ci), "host=127.0.0.1,127.0.0.1 port=%d,%d "
             "dbname=postgres user=pgadmin", dead, G.port);
    json_object_set_new(cfg, "conninfo", json_string(ci));
    c = mk(cfg);
    r = run_op(c, OPE, &a);
    assert_int_equal(r.st, PG_OK);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    res_clear(&r);
    pg_connector_free(c);
}

/* cancel() from inside the page callback: no more pages, no done. */
typedef struct {
    pg_connector_t *c;
    pg_conn_req_t *req;
    int pages;
    int done;
} lcancel_t;

static int
on_page_cancel(void *arg, const pg_listed_account_t *accts, size_t n)
{
    lcancel_t *l = arg;

    (void)accts;
    (void)n;
    l->pages++;
    pg_conn_cancel(l->c, l->req);
    return 0;
}

static void
on_done_count(void *arg, pg_status_t st, const char *error)
{
    lcancel_t *l = arg;

    (void)st;
    (void)error;
    l->done++;
}

static void
test_list_cancel_in_page(void **state)
{
    json_t *cfg = base_cfg();
    lcancel_t l;
    res_t r;
    int never = 0;
    pg_account_t a = mkacct("zed", NULL);

    (void)state;
    json_object_set_new(cfg, "page_size", json_integer(1));
    l.c = mk(cfg);
    l.pages = 0;
    l.done = 0;
    l.req = NULL;
    q("INSERT INTO accounts (key) VALUES ('p1'), ('p2'), ('p3')");
    assert_int_equal(pg_conn_list(l.c, 0, on_page_cancel, on_done_count, &l,
                                  &l.req), PG_OK);
    assert_non_null(l.req);
    assert_int_equal(pg_loop_run(G.loop, &never, 300), PG_ERR_TIMEOUT);
    assert_int_equal(l.pages, 1);
    assert_int_equal(l.done, 0);
    /* The connector goes on with the next request. */
    r = run_op(l.c, OPR, &a);
    assert_int_equal(r.st, PG_OK);
    res_clear(&r);
    pg_connector_free(l.c);
}

/* Bad requests fail synchronously, without a callback. */
static void
test_bad_requests(void **state)
{
    pg_connector_t *c = mk(base_cfg());
    char longkey[PG_CONN_KEY_MAX + 2];
    json_t *obj = json_pack("{s:{s:s}}", "nested", "x", "y");
    pg_account_t a = mkacct("", NULL);
    res_t r;
    int never = 0;

    (void)state;
    memset(&r, 0, sizeof(r));
    assert_int_equal(pg_conn_ensure(c, &a, on_res, &r, NULL), PG_ERR_INVALID);
    memset(longkey, 'k', sizeof(longkey) - 1);
    longkey[sizeof(longkey) - 1] = '\0';
    a.key = longkey;
    assert_int_equal(pg_conn_ensure(c, &a, on_res, &r, NULL), PG_ERR_INVALID);
    a.key = "ok";
    a.attrs = obj;
    assert_int_equal(pg_conn_ensure(c, &a, on_res, &r, NULL), PG_ERR_INVALID);
    assert_int_equal(pg_loop_run(G.loop, &never, 50), PG_ERR_TIMEOUT);
    assert_int_equal(r.cb_count, 0);
    json_decref(obj);
    pg_connector_free(c);
}

/* Multi-valued attributes: sent as a text[] literal, compared as a set. */
static void
test_array_attribute(void **state)
{
    json_t *cfg = base_cfg();
    json_t *at = json_pack("{s:[s,s,s]}", "aliases", "a\"b", "c,d", "e");
    pg_account_t a = mkacct("pat", at);
    pg_connector_t *c;
    res_t r;

    (void)state;
    q("ALTER TABLE accounts ADD COLUMN aliases text[]");
    set_stmt(cfg, "lookup", "SELECT id, key, active, aliases FROM accounts"
                            " WHERE key = :key");
    set_stmt(cfg, "create", "INSERT INTO accounts (key, aliases)"
                            " VALUES (:key, :attr.aliases)");
    set_stmt(cfg, "update", "UPDATE accounts SET aliases = :attr.aliases"
                            " WHERE key = :key");
    c = mk(cfg);
    r = run_op(c, OPE, &a);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    assert_string_equal(q("SELECT array_length(aliases, 1) || ':' || "
                          "aliases[1] || '|' || aliases[2] FROM accounts"),
                        "3:a\"b|c,d");
    res_clear(&r);
    r = run_op(c, OPE, &a);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);
    res_clear(&r);
    json_object_set_new(at, "aliases", json_pack("[s,s]", "e", "c,d"));
    r = run_op(c, OPE, &a);
    assert_int_equal(r.outcome, PG_CONN_UPDATED);
    assert_true(changes_has(&r, "aliases"));
    res_clear(&r);
    r = run_op(c, OPE, &a);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);
    res_clear(&r);
    q("ALTER TABLE accounts DROP COLUMN aliases");
    json_decref(at);
    pg_connector_free(c);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_config_errors, test_setup),
        cmocka_unit_test_setup(test_create_unchanged_update, test_setup),
        cmocka_unit_test_setup(test_groups, test_setup),
        cmocka_unit_test_setup(test_disable_enable, test_setup),
        cmocka_unit_test_setup(test_remove_twice, test_setup),
        cmocka_unit_test_setup(test_injection_key_literal, test_setup),
        cmocka_unit_test_setup(test_list_paging_and_since, test_setup),
        cmocka_unit_test_setup(test_conflict_adopted, test_setup),
        cmocka_unit_test_setup(test_sqlstate_mapping, test_setup),
        cmocka_unit_test_setup(test_auth_and_privileges, test_setup),
        cmocka_unit_test_setup(test_timeout_then_reconnect, test_setup),
        cmocka_unit_test_setup(test_cancel_never_calls_back, test_setup),
        cmocka_unit_test_setup(test_free_inside_callback, test_setup),
        cmocka_unit_test_setup(test_conninfo_forms, test_setup),
        cmocka_unit_test_setup(test_list_cancel_in_page, test_setup),
        cmocka_unit_test_setup(test_bad_requests, test_setup),
        cmocka_unit_test_setup(test_array_attribute, test_setup),
        cmocka_unit_test_setup(test_server_down_then_up, test_setup),
    };

    return cmocka_run_group_tests_name("sql", tests, group_setup,
                                       group_teardown);
}
