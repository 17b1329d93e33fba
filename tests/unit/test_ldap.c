/*
 * Unit tests for the LDAP connector (src/connectors/ldap/ldap.c).
 *
 * Every test runs against a REAL slapd (/usr/sbin/slapd) started once for
 * the group: a slapd.conf written into a temp dir (mdb backend, the core,
 * cosine, inetorgperson and nis schemas, rootdn cn=admin,dc=example,dc=org),
 * listening on ldap://127.0.0.1:<free port>, in the foreground with the
 * "stats" log level, its stderr going to slapd.log in the temp dir. Tests
 * read that log to see exactly which operations and attributes the
 * connector sent (e.g. "MOD attr=mail"), and check the directory itself
 * with ldapsearch (ldap-utils). The tree is seeded with ou=people,
 * ou=groups (groupOfNames staff and eng, each with a placeholder member),
 * ou=disabled. slapd is killed at the end (and dies with the test).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <jansson.h>

#include "provgate/connector.h"
#include "provgate/ldapconn.h"
#include "provgate/loop.h"
#include "provgate/util.h"
#include "helpers/procs.h"

#define SUFFIX   "dc=example,dc=org"
#define ROOTDN   "cn=admin," SUFFIX
#define ROOTPW   "s3cret-root"
#define PEOPLE   "ou=people," SUFFIX
#define GROUPS   "ou=groups," SUFFIX
#define DISABLED "ou=disabled," SUFFIX
#define RUN_MS   10000

static struct {
    pid_t pid;
    int port;
    int tls_port;              /* ldaps:// listener */
    char dir[256];
    char url[64];
    char surl[64];             /* ldaps://127.0.0.1:<tls_port> */
    char log[300];
    pg_loop_t *loop;
    int in_start;              /* a start call is running */
} G = { .pid = -1 };

/* ---- slapd ------------------------------------------------------------ */

static int
write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    if (f == NULL) {
        return -1;
    }
    fputs(text, f);
    return fclose(f) == 0 ? 0 : -1;
}

/* 1 when something accepts TCP connections on 127.0.0.1:port. */
static int
port_open(int port)
{
    struct sockaddr_in sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0), r;

    if (fd < 0) {
        return 0;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t) port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    r = connect(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0;
    close(fd);
    return r;
}

/* Start slapd on G.port with G.dir (config already written). */
static int
slapd_spawn(void)
{
    char conf[PATH_MAX + 16], hurl[160];
    uint64_t t0;
    int logfd;

    snprintf(conf, sizeof(conf), "%s/slapd.conf", G.dir);
    snprintf(hurl, sizeof(hurl), "ldap://127.0.0.1:%d/ ldaps://127.0.0.1:%d/",
             G.port, G.tls_port);
    logfd = open(G.log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (logfd < 0) {
        return -1;
    }
    G.pid = fork();
    if (G.pid < 0) {
        close(logfd);
        return -1;
    }
    if (G.pid == 0) {
        int nul = open("/dev/null", O_RDWR);

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(nul, 0);
        dup2(nul, 1);
        dup2(logfd, 2);
        execl("/usr/sbin/slapd", "slapd", "-f", conf, "-h", hurl, "-d",
              "256", (char *) NULL);
        _exit(127);
    }
    close(logfd);
    t0 = pgt_now_ms();
    while (pgt_now_ms() - t0 < 10000) {
        int status;

        if (waitpid(G.pid, &status, WNOHANG) == G.pid) {
            G.pid = -1;
            return -1;
        }
        if (port_open(G.port) && port_open(G.tls_port)) {
            return 0;
        }
        pgt_sleep_ms(20);
    }
    return -1;
}

static void
slapd_kill(void)
{
    if (G.pid > 0) {
        kill(G.pid, SIGKILL);
        waitpid(G.pid, NULL, 0);
        G.pid = -1;
    }
}

/* Process state letter of pid from /proc (0 if unknown). */
static char
proc_state(pid_t pid)
{
    char path[64], buf[512], *p;
    FILE *f;
    size_t n;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
    f = fopen(path, "r");
    if (f == NULL) {
        return 0;
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    p = strrchr(buf, ')');
    return p != NULL && p[1] == ' ' ? p[2] : 0;
}

/* SIGSTOP slapd and wait until it is really stopped. */
static void
slapd_pause(void)
{
    uint64_t t0 = pgt_now_ms();

    kill(G.pid, SIGSTOP);
    while (proc_state(G.pid) != 'T' && pgt_now_ms() - t0 < 2000) {
        pgt_sleep_ms(2);
    }
    assert_int_equal(proc_state(G.pid), 'T');
}

static void
slapd_resume(void)
{
    if (G.pid > 0) {
        kill(G.pid, SIGCONT);
    }
}

/* Run a shell command, feeding input (may be NULL); 0 on exit status 0. */
static int
run_in(const char *cmd, const char *input)
{
    FILE *p = popen(cmd, "w");

    if (p == NULL) {
        return -1;
    }
    if (input != NULL) {
        fputs(input, p);
    }
    return pclose(p) == 0 ? 0 : -1;
}

/* Output of a shell command (malloc'd, caller frees). */
static char *
run_out(const char *cmd)
{
    FILE *p = popen(cmd, "r");
    size_t len = 0, cap = 65536;
    char *buf = malloc(cap);
    size_t r;

    assert_non_null(p);
    assert_non_null(buf);
    while ((r = fread(buf + len, 1, cap - 1 - len, p)) > 0) {
        len += r;
        if (len + 1 >= cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    buf[len] = '\0';
    pclose(p);
    return buf;
}

static int
ldif_apply(const char *ldif)
{
    char cmd[512];

    snprintf(cmd, sizeof(cmd), "ldapmodify -a -x -H %s -D '" ROOTDN "' -w '"
             ROOTPW "' >/dev/null 2>&1", G.url);
    return run_in(cmd, ldif);
}

/* ldapsearch as root: LDIF of base/filter/attrs (malloc'd). */
static char *
search(const char *base, const char *filter, const char *attrs)
{
    char cmd[1024];

    snprintf(cmd, sizeof(cmd), "ldapsearch -LLL -o ldif-wrap=no -x -H %s "
             "-D '" ROOTDN "' -w '" ROOTPW "' -b '%s' '%s' %s 2>/dev/null",
             G.url, base, filter, attrs != NULL ? attrs : "");
    return run_out(cmd);
}

/* Number of entries in an LDIF text. */
static int
count_dn(const char *ldif)
{
    int n = 0;
    const char *p = ldif;

    while ((p = strstr(p, "dn: ")) != NULL) {
        if (p == ldif || p[-1] == '\n') {
            n++;
        }
        p += 4;
    }
    return n;
}

static int
has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    const char *p = text;

    while ((p = strstr(p, line)) != NULL) {
        if ((p == text || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0')) {
            return 1;
        }
        p++;
    }
    return 0;
}

static void
assert_line(const char *text, const char *line)
{
    if (!has_line(text, line)) {
        fail_msg("missing line \"%s\" in:\n%s", line, text);
    }
}

/* Size of slapd.log now (a mark for log_since). */
static long
log_mark(void)
{
    struct stat st;

    return stat(G.log, &st) == 0 ? (long) st.st_size : 0;
}

/* Text appended to slapd.log after mark (malloc'd). */
static char *
log_since(long mark)
{
    FILE *f = fopen(G.log, "r");
    long end;
    char *buf;
    size_t r;

    assert_non_null(f);
    pgt_sleep_ms(30);   /* slapd writes its stats line after replying */
    fseek(f, 0, SEEK_END);
    end = ftell(f);
    if (end < mark) {
        mark = 0;
    }
    buf = malloc((size_t) (end - mark) + 1);
    assert_non_null(buf);
    fseek(f, mark, SEEK_SET);
    r = fread(buf, 1, (size_t) (end - mark), f);
    buf[r] = '\0';
    fclose(f);
    return buf;
}

/* Count occurrences of needle in hay. */
static int
count_str(const char *hay, const char *needle)
{
    int n = 0;
    const char *p = hay;

    while ((p = strstr(p, needle)) != NULL) {
        n++;
        p += strlen(needle);
    }
    return n;
}

static const char seed_ldif[] =
    "dn: " SUFFIX "\n"
    "objectClass: dcObject\nobjectClass: organization\n"
    "dc: example\no: Example\n\n"
    "dn: " PEOPLE "\nobjectClass: organizationalUnit\nou: people\n\n"
    "dn: " GROUPS "\nobjectClass: organizationalUnit\nou: groups\n\n"
    "dn: " DISABLED "\nobjectClass: organizationalUnit\nou: disabled\n\n"
    "dn: cn=staff," GROUPS "\nobjectClass: groupOfNames\ncn: staff\n"
    "member: cn=placeholder," SUFFIX "\n\n"
    "dn: cn=eng," GROUPS "\nobjectClass: groupOfNames\ncn: eng\n"
    "member: cn=placeholder," SUFFIX "\n\n";

static int
group_setup(void **state)
{
    char path[PATH_MAX + 32], conf[8192];
    char cmd[PATH_MAX + 64];

    (void) state;
    signal(SIGPIPE, SIG_IGN);
    if (access("/usr/sbin/slapd", X_OK) != 0) {
        fprintf(stderr, "test_ldap: /usr/sbin/slapd is missing\n");
        return -1;
    }
    snprintf(G.dir, sizeof(G.dir), "/tmp/pg-test-ldap-XXXXXX");
    if (mkdtemp(G.dir) == NULL) {
        return -1;
    }
    snprintf(path, sizeof(path), "%s/db", G.dir);
    if (mkdir(path, 0700) != 0) {
        return -1;
    }
    snprintf(G.log, sizeof(G.log), "%s/slapd.log", G.dir);
    /* a throw-away CA-less self-signed certificate for 127.0.0.1, and a
     * second one that is not trusted */
    snprintf(cmd, sizeof(cmd), "cd %s && for n in server other; do "
             "openssl req -x509 -newkey rsa:2048 -nodes -keyout $n.key "
             "-out $n.pem -days 2 -subj /CN=127.0.0.1 "
             "-addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1 || exit 1; "
             "done", G.dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "test_ldap: openssl failed\n");
        return -1;
    }
    snprintf(conf, sizeof(conf),
             "include /etc/ldap/schema/core.schema\n"
             "include /etc/ldap/schema/cosine.schema\n"
             "include /etc/ldap/schema/inetorgperson.schema\n"
             "include /etc/ldap/schema/nis.schema\n"
             "pidfile %s/slapd.pid\n"
             "argsfile %s/slapd.args\n"
             "TLSCertificateFile %s/server.pem\n"
             "TLSCertificateKeyFile %s/server.key\n"
             "modulepath /usr/lib/ldap\n"
             "moduleload back_mdb\n"
             "database mdb\n"
             "maxsize 33554432\n"
             "suffix \"" SUFFIX "\"\n"
             "rootdn \"" ROOTDN "\"\n"
             "rootpw " ROOTPW "\n"
             "directory %s/db\n"
             "index objectClass eq\n"
             "index uid eq\n", G.dir, G.dir, G.dir, G.dir, G.dir);
    snprintf(path, sizeof(path), "%s/slapd.conf", G.dir);
    if (write_file(path, conf) != 0) {
        return -1;
    }
    G.port = pgt_free_port();
    do {
        G.tls_port = pgt_free_port();
    } while (G.tls_port == G.port);
    snprintf(G.url, sizeof(G.url), "ldap://127.0.0.1:%d", G.port);
    snprintf(G.surl, sizeof(G.surl), "ldaps://127.0.0.1:%d", G.tls_port);
    if (slapd_spawn() != 0) {
        snprintf(cmd, sizeof(cmd), "cat %s/slapd.log >&2", G.dir);
        (void) system(cmd);
        fprintf(stderr, "test_ldap: slapd did not start\n");
        return -1;
    }
    if (ldif_apply(seed_ldif) != 0) {
        fprintf(stderr, "test_ldap: seeding failed\n");
        return -1;
    }
    return 0;
}

static int
group_teardown(void **state)
{
    char cmd[PATH_MAX + 32];

    (void) state;
    slapd_kill();
    if (strncmp(G.dir, "/tmp/pg-test-ldap-", 18) == 0) {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", G.dir);
        (void) system(cmd);
    }
    return 0;
}

static int
test_setup(void **state)
{
    (void) state;
    assert_int_equal(pg_loop_new(&G.loop), PG_OK);
    return 0;
}

static int
test_teardown(void **state)
{
    (void) state;
    slapd_resume();   /* never leave it stopped after a failure */
    pg_loop_free(G.loop);
    G.loop = NULL;
    return 0;
}

/* ---- connector helpers ---------------------------------------------- */

/* The base config (attribute-mode disable, groups); extra merged in. */
static json_t *
base_cfg(const char *extra_json)
{
    json_t *cfg = json_pack(
        "{s:s, s:s, s:s, s:s, s:i, s:i, s:{s:s}, s:{s:s, s:s, s:s}}",
        "url", G.url, "bind_dn", ROOTDN, "bind_password", ROOTPW,
        "base_dn", PEOPLE, "timeout_ms", 3000, "page_size", 2,
        "groups", "base_dn", GROUPS,
        "disable", "mode", "attribute", "attribute", "employeeType",
        "value", "disabled");

    assert_non_null(cfg);
    if (extra_json != NULL) {
        json_error_t je;
        json_t *x = json_loads(extra_json, 0, &je);

        assert_non_null(x);
        const char *k;
        json_t *v;
        void *tmp;

        assert_int_equal(json_object_update(cfg, x), 0);
        json_decref(x);
        /* null drops a key */
        json_object_foreach_safe(cfg, tmp, k, v) {
            if (json_is_null(v)) {
                json_object_del(cfg, k);
            }
        }
    }
    return cfg;
}

static pg_connector_t *
mk(const char *extra_json)
{
    json_t *cfg = base_cfg(extra_json);
    pg_connector_t *c = NULL;
    pg_err_t err;
    pg_status_t st;

    err.msg[0] = '\0';
    st = pg_ldap_connector_new(pg_loop_host(G.loop), "dir", cfg, &c, &err);
    if (st != PG_OK) {
        fail_msg("config: %s", err.msg);
    }
    json_decref(cfg);
    return c;
}

typedef struct res {
    int calls;
    pg_status_t st;
    pg_conn_outcome_t outcome;
    int retryable;
    char error[PG_CONN_ERROR_MAX];
    char id[256];
    json_t *changes;
} res_t;

static void
on_res(void *arg, pg_status_t st, const pg_conn_result_t *r)
{
    res_t *res = arg;

    assert_false(G.in_start);   /* never from inside the start call */
    res->calls++;
    res->st = st;
    res->outcome = r->outcome;
    res->retryable = r->retryable;
    snprintf(res->error, sizeof(res->error), "%s", r->error);
    snprintf(res->id, sizeof(res->id), "%s", r->id);
    json_decref(res->changes);
    res->changes = r->changes != NULL ? json_deep_copy(r->changes) : NULL;
}

static void
res_clear(res_t *r)
{
    json_decref(r->changes);
    memset(r, 0, sizeof(*r));
}

typedef enum { DO_ENSURE, DO_DISABLE, DO_REMOVE } do_t;

/* Run one operation to completion; returns the callback status. */
static pg_status_t
run_op(pg_connector_t *c, do_t what, const pg_account_t *a, res_t *r)
{
    pg_conn_req_t *req = NULL;
    pg_status_t st;

    res_clear(r);
    G.in_start = 1;
    switch (what) {
    case DO_ENSURE:
        st = pg_conn_ensure(c, a, on_res, r, &req);
        break;
    case DO_DISABLE:
        st = pg_conn_disable(c, a, on_res, r, &req);
        break;
    default:
        st = pg_conn_remove(c, a, on_res, r, &req);
        break;
    }
    G.in_start = 0;
    assert_int_equal(st, PG_OK);
    assert_non_null(req);
    assert_int_equal(pg_loop_run(G.loop, &r->calls, RUN_MS), PG_OK);
    assert_int_equal(r->calls, 1);
    return r->st;
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

/* An account with attrs from JSON text. */
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
J(const char *text)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);

    assert_non_null(j);
    return j;
}

/* ---- tests ------------------------------------------------------------ */

static void
test_escape(void **state)
{
    char out[128];

    (void) state;
    assert_int_equal(pg_ldap_filter_escape("*)(uid=*", 8, out, sizeof(out)),
                     PG_OK);
    assert_string_equal(out, "\\2a\\29\\28uid=\\2a");
    assert_int_equal(pg_ldap_filter_escape("a\\b\0c", 5, out, sizeof(out)),
                     PG_OK);
    assert_string_equal(out, "a\\5cb\\00c");
    assert_int_equal(pg_ldap_filter_escape("plain", 5, out, 5),
                     PG_ERR_TOO_LARGE);
    assert_int_equal(pg_ldap_filter_escape("plain", 5, out, 6), PG_OK);
    assert_int_equal(pg_ldap_dn_escape("a,b+c=d", 7, out, sizeof(out)), PG_OK);
    assert_string_equal(out, "a\\,b\\+c\\=d");
    assert_int_equal(pg_ldap_dn_escape("#x ", 3, out, sizeof(out)), PG_OK);
    assert_string_equal(out, "\\#x\\ ");
    assert_int_equal(pg_ldap_dn_escape(" \"<>;\\", 6, out, sizeof(out)),
                     PG_OK);
    assert_string_equal(out, "\\ \\\"\\<\\>\\;\\\\");
    assert_int_equal(pg_ldap_dn_escape("abc", 3, out, 3), PG_ERR_TOO_LARGE);
}

static void
test_config_errors(void **state)
{
    static const struct {
        const char *json;
        const char *msg;
    } cases[] = {
        { "{}", "connector.url: required" },
        { "{\"url\":\"http://x\",\"base_dn\":\"dc=x\"}", "connector.url:" },
        { "{\"url\":\"ldap://127.0.0.1\"}", "connector.base_dn: required" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"not a dn\"}",
          "connector.base_dn: not a valid DN" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\",\"bogus\":1}",
          "connector.bogus: unknown" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"bind_dn\":\"cn=a,dc=x\"}", "connector.bind_password: required" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"bind_dn\":\"cn=a,dc=x\",\"bind_password\":\"p\","
          "\"bind_password_file\":\"/etc/hostname\"}",
          "connector.bind_password_file: not with bind_password" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"bind_dn\":\"cn=a,dc=x\","
          "\"bind_password_file\":\"/nonexistent/pw\"}",
          "connector.bind_password_file:" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"page_size\":0}", "connector.page_size: must be between" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"page_size\":1001}", "connector.page_size: must be between" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"timeout_ms\":\"5\"}", "connector.timeout_ms: must be an integer" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"starttls\":1}", "connector.starttls: must be true or false" },
        { "{\"url\":\"ldaps://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"starttls\":true}", "connector.starttls: not with an ldaps://" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"tls_ca_file\":\"/nonexistent/ca.pem\"}",
          "connector.tls_ca_file: cannot read" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"rdn_attr\":\"u id\"}", "connector.rdn_attr: not an attribute" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"object_classes\":[]}", "connector.object_classes:" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"object_classes\":[\"top\",\"a)(b\"]}",
          "connector.object_classes[1]:" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"groups\":{}}", "connector.groups.base_dn: required" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"groups\":{\"base_dn\":\"dc=x\",\"x\":1}}",
          "connector.groups.x: unknown" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"groups\":{\"base_dn\":\"dc=x\",\"object_class\":\"posixGroup\"}}",
          "connector.groups.object_class: must be" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"groups\":{\"base_dn\":\"dc=x\",\"member_attr\":\"memberUid\"}}",
          "connector.groups.member_attr: must be" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"disable\":{\"mode\":\"freeze\"}}",
          "connector.disable.mode: must be" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"disable\":{\"mode\":\"attribute\",\"attribute\":\"a\"}}",
          "connector.disable.value: required" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"disable\":{\"mode\":\"move\"}}",
          "connector.disable.disabled_ou: required" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"ou=p,dc=x\","
          "\"disable\":{\"mode\":\"move\",\"disabled_ou\":\"dc=x\"}}",
          "connector.disable.disabled_ou: must not contain base_dn" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"disable\":{\"mode\":\"move\",\"disabled_ou\":\"ou=d\","
          "\"value\":\"x\"}}", "connector.disable: attribute/value only" },
        { "{\"url\":\"ldap://127.0.0.1\",\"base_dn\":\"dc=x\","
          "\"type\":\"scim\"}", "connector.type: must be \"ldap\"" },
    };
    size_t i;

    (void) state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_error_t je;
        json_t *cfg = json_loads(cases[i].json, 0, &je);
        pg_connector_t *c = (pg_connector_t *) 1;
        pg_err_t err;

        assert_non_null(cfg);
        err.msg[0] = '\0';
        assert_int_equal(pg_ldap_connector_new(pg_loop_host(G.loop), "t", cfg,
                                               &c, &err), PG_ERR_CONFIG);
        assert_null(c);
        if (strncmp(err.msg, cases[i].msg, strlen(cases[i].msg)) != 0) {
            fail_msg("case %zu: got \"%s\", want \"%s...\"", i, err.msg,
                     cases[i].msg);
        }
        json_decref(cfg);
    }
}

static void
test_config_ok_and_caps(void **state)
{
    char pwf[PATH_MAX + 16];
    pg_connector_t *c;
    json_t *cfg;
    pg_err_t err;

    (void) state;
    c = mk(NULL);
    assert_string_equal(c->vt->type, "ldap");
    assert_string_equal(c->name, "dir");
    assert_int_equal(c->caps, PG_CONN_CAP_LIST | PG_CONN_CAP_INCREMENTAL
                     | PG_CONN_CAP_GROUPS | PG_CONN_CAP_DISABLE);
    pg_connector_free(c);

    /* password from a file; no groups, no disable */
    snprintf(pwf, sizeof(pwf), "%s/pw", G.dir);
    assert_int_equal(write_file(pwf, ROOTPW "\n"), 0);
    cfg = json_pack("{s:s, s:s, s:s, s:s, s:s}", "type", "ldap", "url", G.url,
                    "bind_dn", ROOTDN, "bind_password_file", pwf,
                    "base_dn", PEOPLE);
    assert_int_equal(pg_ldap_connector_new(pg_loop_host(G.loop), "f", cfg, &c,
                                           &err), PG_OK);
    json_decref(cfg);
    assert_int_equal(c->caps, PG_CONN_CAP_LIST | PG_CONN_CAP_INCREMENTAL);
    {
        /* the file password binds: a list of people works */
        res_t r;
        pg_account_t a = mkacct("nobody-here", NULL);

        memset(&r, 0, sizeof(r));
        /* disable is not configured: refused synchronously */
        G.in_start = 1;
        assert_int_equal(pg_conn_disable(c, &a, on_res, &r, NULL),
                         PG_ERR_INVALID);
        G.in_start = 0;
        assert_int_equal(run_op(c, DO_REMOVE, &a, &r), PG_OK);
        assert_int_equal(r.outcome, PG_CONN_REMOVED);
        res_clear(&r);
    }
    pg_connector_free(c);
}

static void
test_create_unchanged_update(void **state)
{
    pg_connector_t *c = mk(NULL);
    json_t *attrs = J("{\"cn\":\"Alice Liddell\",\"sn\":\"Liddell\","
                      "\"mail\":\"alice@example.org\","
                      "\"telephoneNumber\":[\"+1 555 0100\",\"+1 555 0101\"],"
                      "\"employeeNumber\":42}");
    pg_account_t a = mkacct("alice", attrs);
    res_t r;
    char *out, *log;
    long mark;

    (void) state;
    memset(&r, 0, sizeof(r));
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    assert_true(strlen(r.id) > 0);   /* entryUUID (or DN) */
    out = search(PEOPLE, "(uid=alice)", "cn sn mail telephoneNumber "
                 "employeeNumber objectClass");
    assert_int_equal(count_dn(out), 1);
    assert_line(out, "dn: uid=alice," PEOPLE);
    assert_line(out, "cn: Alice Liddell");
    assert_line(out, "sn: Liddell");
    assert_line(out, "mail: alice@example.org");
    assert_line(out, "telephoneNumber: +1 555 0100");
    assert_line(out, "telephoneNumber: +1 555 0101");
    assert_line(out, "employeeNumber: 42");
    assert_line(out, "objectClass: inetOrgPerson");
    free(out);

    /* again: nothing written */
    mark = log_mark();
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);
    assert_int_equal(json_array_size(r.changes), 0);
    log = log_since(mark);
    assert_int_equal(count_str(log, " MOD "), 0);
    assert_int_equal(count_str(log, " ADD "), 0);
    assert_true(count_str(log, " SRCH ") >= 1);
    free(log);

    /* same multi-valued set in another order: still unchanged */
    json_object_set_new(attrs, "telephoneNumber",
                        J("[\"+1 555 0101\",\"+1 555 0100\"]"));
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);

    /* one attribute changes: exactly that one is modified */
    json_object_set_new(attrs, "mail", json_string("alice@wonderland.org"));
    mark = log_mark();
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UPDATED);
    assert_int_equal(json_array_size(r.changes), 1);
    assert_true(changes_has(&r, "mail"));
    log = log_since(mark);
    assert_int_equal(count_str(log, " MOD dn="), 1);
    assert_int_equal(count_str(log, " MOD attr="), 1);
    assert_non_null(strstr(log, " MOD attr=mail\n"));
    free(log);
    out = search(PEOPLE, "(uid=alice)", "mail cn");
    assert_line(out, "mail: alice@wonderland.org");
    assert_line(out, "cn: Alice Liddell");
    free(out);

    /* an attribute set to null is removed */
    json_object_set_new(attrs, "employeeNumber", json_null());
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UPDATED);
    assert_true(changes_has(&r, "employeeNumber"));
    out = search(PEOPLE, "(uid=alice)", "employeeNumber");
    assert_null(strstr(out, "employeeNumber:"));
    free(out);

    /* the server refusing the data: INVALID, not retryable */
    json_object_set_new(attrs, "noSuchAttributeHere", json_string("x"));
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_ERR_INVALID);
    assert_false(r.retryable);
    assert_non_null(strstr(r.error, "ldap"));

    res_clear(&r);
    json_decref(attrs);
    pg_connector_free(c);
}

static void
test_bad_requests(void **state)
{
    pg_connector_t *c = mk(NULL);
    pg_connector_t *ng = mk("{\"groups\":null}");
    char longkey[PG_CONN_KEY_MAX + 2];
    const char *gl[] = { "staff" };
    static const char *const bad_attrs[] = {
        "{\"bad name\":\"x\"}",
        "{\"objectClass\":\"top\"}",
        "{\"cn\":{\"nested\":1}}",
        "{\"cn\":[[\"x\"]]}",
    };
    pg_account_t a;
    res_t r;
    size_t i;

    (void) state;
    memset(&r, 0, sizeof(r));
    memset(longkey, 'k', sizeof(longkey) - 1);
    longkey[sizeof(longkey) - 1] = '\0';
    G.in_start = 1;
    a = mkacct(NULL, NULL);
    assert_int_equal(pg_conn_ensure(c, &a, on_res, &r, NULL), PG_ERR_INVALID);
    a = mkacct("", NULL);
    assert_int_equal(pg_conn_ensure(c, &a, on_res, &r, NULL), PG_ERR_INVALID);
    a = mkacct(longkey, NULL);
    assert_int_equal(pg_conn_ensure(c, &a, on_res, &r, NULL), PG_ERR_INVALID);
    assert_int_equal(pg_conn_remove(c, &a, on_res, &r, NULL), PG_ERR_INVALID);
    for (i = 0; i < sizeof(bad_attrs) / sizeof(bad_attrs[0]); i++) {
        json_t *x = J(bad_attrs[i]);

        a = mkacct("bad", x);
        assert_int_equal(pg_conn_ensure(c, &a, on_res, &r, NULL),
                         PG_ERR_INVALID);
        json_decref(x);
    }
    /* value over PG_LDAP_VALUE_MAX; all values over PG_LDAP_REQUEST_MAX */
    {
        size_t big = PG_LDAP_VALUE_MAX + 1, k;
        char *v = malloc(big + 1);
        json_t *x, *arr;

        assert_non_null(v);
        memset(v, 'v', big);
        v[big] = '\0';
        x = json_pack("{s:s}", "description", v);
        a = mkacct("bad", x);
        assert_int_equal(pg_conn_ensure(c, &a, on_res, &r, NULL),
                         PG_ERR_INVALID);
        json_decref(x);
        v[60000] = '\0';
        arr = json_array();
        for (k = 0; k < 5; k++) {
            v[0] = (char) ('a' + k);     /* distinct values */
            json_array_append_new(arr, json_string(v));
        }
        x = json_pack("{s:o}", "description", arr);
        a = mkacct("bad", x);
        assert_int_equal(pg_conn_ensure(c, &a, on_res, &r, NULL),
                         PG_ERR_TOO_LARGE);
        json_decref(x);
        free(v);
    }
    /* groups wanted but not configured (groups: null drops them) */
    a = mkacct("bad", NULL);
    a.groups = gl;
    a.ngroups = 1;
    G.in_start = 0;
    G.in_start = 1;
    assert_int_equal(pg_conn_ensure(ng, &a, on_res, &r, NULL),
                     PG_ERR_INVALID);
    G.in_start = 0;
    assert_int_equal(pg_loop_run(G.loop, &r.calls, 200), PG_ERR_TIMEOUT);
    assert_int_equal(r.calls, 0);
    pg_connector_free(ng);
    pg_connector_free(c);
}

/* A 60 KB value and a 4 x 60 KB multi-valued attribute go through
 * (bigger than a default socket send buffer) and read back identical. */
static void
test_large_values(void **state)
{
    pg_connector_t *c = mk(NULL);
    char *v = malloc(60001), *out, *line;
    json_t *attrs, *arr;
    pg_account_t a;
    res_t r;
    int k;

    (void) state;
    memset(&r, 0, sizeof(r));
    assert_non_null(v);
    memset(v, 'x', 60000);
    v[60000] = '\0';
    arr = json_array();
    for (k = 0; k < 4; k++) {
        v[0] = (char) ('a' + k);
        json_array_append_new(arr, json_string(v));
    }
    attrs = json_pack("{s:s, s:s, s:o}", "cn", "Big", "sn", "B",
                      "description", arr);
    a = mkacct("big", attrs);
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);
    out = search(PEOPLE, "(uid=big)", "description");
    assert_int_equal(count_str(out, "description: "), 4);
    line = strstr(out, "description: b");
    assert_non_null(line);
    assert_int_equal(strcspn(line + 13, "\n"), 60000);
    free(out);
    assert_int_equal(run_op(c, DO_REMOVE, &a, &r), PG_OK);
    res_clear(&r);
    json_decref(attrs);
    free(v);
    pg_connector_free(c);
}

/* groups in which key is a member (names, space-separated order-free) */
static int
is_member(const char *group, const char *member_dn)
{
    char filter[512], base[256];
    char *out;
    int n;

    snprintf(base, sizeof(base), "cn=%s," GROUPS, group);
    snprintf(filter, sizeof(filter), "(member=%s)", member_dn);
    out = search(base, filter, "cn");
    n = count_dn(out);
    free(out);
    return n;
}

static void
test_groups_add_revoke(void **state)
{
    pg_connector_t *c = mk(NULL);
    json_t *attrs = J("{\"cn\":\"Bob\",\"sn\":\"B\"}");
    const char *both[] = { "staff", "eng" };
    const char *staff[] = { "staff" };
    const char *eng[] = { "eng" };
    const char *nope[] = { "no-such-group" };
    pg_account_t a = mkacct("bob", attrs);
    res_t r;
    long mark;
    char *log;

    (void) state;
    memset(&r, 0, sizeof(r));
    a.groups = both;
    a.ngroups = 2;
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    assert_true(changes_has(&r, "staff"));
    assert_true(changes_has(&r, "eng"));
    assert_int_equal(is_member("staff", "uid=bob," PEOPLE), 1);
    assert_int_equal(is_member("eng", "uid=bob," PEOPLE), 1);

    /* again: no group is written */
    mark = log_mark();
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);
    log = log_since(mark);
    assert_int_equal(count_str(log, " MOD "), 0);
    free(log);

    /* revoke eng, keep staff */
    a.groups = staff;
    a.ngroups = 1;
    a.revoke = eng;
    a.nrevoke = 1;
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UPDATED);
    assert_true(changes_has(&r, "eng"));
    assert_false(changes_has(&r, "staff"));
    assert_int_equal(is_member("staff", "uid=bob," PEOPLE), 1);
    assert_int_equal(is_member("eng", "uid=bob," PEOPLE), 0);
    /* the placeholder member is untouched (not managed) */
    assert_int_equal(is_member("eng", "cn=placeholder," SUFFIX), 1);

    /* revoking again: nothing to do */
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);

    /* an unknown group is an error naming it */
    a.groups = nope;
    a.ngroups = 1;
    a.revoke = NULL;
    a.nrevoke = 0;
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_ERR_INVALID);
    assert_non_null(strstr(r.error, "no-such-group"));
    assert_false(r.retryable);

    res_clear(&r);
    json_decref(attrs);
    pg_connector_free(c);
}

static void
test_disable_attribute(void **state)
{
    pg_connector_t *c = mk(NULL);
    json_t *attrs = J("{\"cn\":\"Carol\",\"sn\":\"C\"}");
    pg_account_t a = mkacct("carol", attrs);
    pg_account_t ghost = mkacct("ghost-user", NULL);
    res_t r;
    char *out;
    long mark;
    char *log;

    (void) state;
    memset(&r, 0, sizeof(r));
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    assert_int_equal(run_op(c, DO_DISABLE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_DISABLED);
    out = search(PEOPLE, "(uid=carol)", "employeeType");
    assert_line(out, "employeeType: disabled");
    free(out);

    /* idempotent: nothing written the second time */
    mark = log_mark();
    assert_int_equal(run_op(c, DO_DISABLE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);
    log = log_since(mark);
    assert_int_equal(count_str(log, " MOD "), 0);
    free(log);

    /* ensure with active=0 of a disabled account: unchanged */
    a.active = 0;
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);

    /* re-enabled by ensure(active=1): the marker goes */
    a.active = 1;
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UPDATED);
    assert_true(changes_has(&r, "active"));
    out = search(PEOPLE, "(uid=carol)", "employeeType cn");
    assert_null(strstr(out, "employeeType"));
    assert_line(out, "cn: Carol");
    free(out);

    /* ensure(active=0) disables too */
    a.active = 0;
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UPDATED);
    out = search(PEOPLE, "(uid=carol)", "employeeType");
    assert_line(out, "employeeType: disabled");
    free(out);

    /* unknown account */
    assert_int_equal(run_op(c, DO_DISABLE, &ghost, &r), PG_ERR_NOT_FOUND);
    assert_false(r.retryable);

    res_clear(&r);
    json_decref(attrs);
    pg_connector_free(c);
}

static void
test_disable_move(void **state)
{
    pg_connector_t *c = mk("{\"disable\":{\"mode\":\"move\","
                           "\"disabled_ou\":\"" DISABLED "\"}}");
    json_t *attrs = J("{\"cn\":\"Dave\",\"sn\":\"D\"}");
    const char *staff[] = { "staff" };
    pg_account_t a = mkacct("dave", attrs);
    res_t r;
    char *out;

    (void) state;
    memset(&r, 0, sizeof(r));
    a.groups = staff;
    a.ngroups = 1;
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    assert_int_equal(is_member("staff", "uid=dave," PEOPLE), 1);

    assert_int_equal(run_op(c, DO_DISABLE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_DISABLED);
    out = search(SUFFIX, "(uid=dave)", "1.1");
    assert_int_equal(count_dn(out), 1);
    assert_line(out, "dn: uid=dave," DISABLED);
    free(out);
    /* the membership follows the entry */
    assert_int_equal(is_member("staff", "uid=dave," PEOPLE), 0);
    assert_int_equal(is_member("staff", "uid=dave," DISABLED), 1);

    /* idempotent */
    assert_int_equal(run_op(c, DO_DISABLE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);

    /* ensure of the disabled account (active=0) finds it there */
    a.active = 0;
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);

    /* re-enable: moved back */
    a.active = 1;
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UPDATED);
    assert_true(changes_has(&r, "active"));
    out = search(SUFFIX, "(uid=dave)", "1.1");
    assert_int_equal(count_dn(out), 1);
    assert_line(out, "dn: uid=dave," PEOPLE);
    free(out);
    assert_int_equal(is_member("staff", "uid=dave," PEOPLE), 1);
    assert_int_equal(is_member("staff", "uid=dave," DISABLED), 0);

    /* created disabled: lands in disabled_ou directly */
    {
        pg_account_t b = mkacct("dora", attrs);

        b.active = 0;
        assert_int_equal(run_op(c, DO_ENSURE, &b, &r), PG_OK);
        assert_int_equal(r.outcome, PG_CONN_CREATED);
        out = search(SUFFIX, "(uid=dora)", "1.1");
        assert_line(out, "dn: uid=dora," DISABLED);
        free(out);
        assert_int_equal(run_op(c, DO_REMOVE, &b, &r), PG_OK);
        assert_int_equal(r.outcome, PG_CONN_REMOVED);
        out = search(SUFFIX, "(uid=dora)", "1.1");
        assert_int_equal(count_dn(out), 0);
        free(out);
    }
    res_clear(&r);
    json_decref(attrs);
    pg_connector_free(c);
}

static void
test_remove(void **state)
{
    pg_connector_t *c = mk(NULL);
    json_t *attrs = J("{\"cn\":\"Erin\",\"sn\":\"E\"}");
    const char *staff[] = { "staff" };
    pg_account_t a = mkacct("erin", attrs);
    res_t r;
    char *out, *log;
    long mark;

    (void) state;
    memset(&r, 0, sizeof(r));
    a.groups = staff;
    a.ngroups = 1;
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    assert_int_equal(is_member("staff", "uid=erin," PEOPLE), 1);

    assert_int_equal(run_op(c, DO_REMOVE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_REMOVED);
    out = search(PEOPLE, "(uid=erin)", "1.1");
    assert_int_equal(count_dn(out), 0);
    free(out);
    assert_int_equal(is_member("staff", "uid=erin," PEOPLE), 0);

    /* missing: success, and nothing is deleted */
    mark = log_mark();
    assert_int_equal(run_op(c, DO_REMOVE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_REMOVED);
    log = log_since(mark);
    assert_int_equal(count_str(log, " DEL "), 0);
    free(log);

    res_clear(&r);
    json_decref(attrs);
    pg_connector_free(c);
}

/* ---- list ---- */

typedef struct lst {
    int done;
    pg_status_t st;
    char error[256];
    int pages;
    size_t max_n;
    json_t *seen;              /* key -> {attrs, groups, active, mod} */
    int stop_after;            /* return 1 after this many pages (0: never) */
} lst_t;

static int
on_page(void *arg, const pg_listed_account_t *accts, size_t n)
{
    lst_t *l = arg;
    size_t i, j;

    assert_false(G.in_start);
    l->pages++;
    if (n > l->max_n) {
        l->max_n = n;
    }
    for (i = 0; i < n; i++) {
        json_t *g = json_array();

        for (j = 0; j < accts[i].ngroups; j++) {
            json_array_append_new(g, json_string(accts[i].groups[j]));
        }
        assert_non_null(accts[i].id);
        json_object_set_new(l->seen, accts[i].key,
                            json_pack("{s:O, s:o, s:b, s:I}", "attrs",
                                      accts[i].attrs, "groups", g, "active",
                                      accts[i].active, "mod",
                                      (json_int_t) accts[i].modified_ms));
    }
    return l->stop_after > 0 && l->pages >= l->stop_after;
}

static void
on_done(void *arg, pg_status_t st, const char *error)
{
    lst_t *l = arg;

    assert_false(G.in_start);
    l->done++;
    l->st = st;
    snprintf(l->error, sizeof(l->error), "%s", error);
}

static void
run_list(pg_connector_t *c, uint64_t since, lst_t *l)
{
    pg_conn_req_t *req = NULL;

    int stop_after = l->stop_after;

    json_decref(l->seen);
    memset(l, 0, sizeof(*l));
    l->stop_after = stop_after;
    l->seen = json_object();
    G.in_start = 1;
    assert_int_equal(pg_conn_list(c, since, on_page, on_done, l, &req),
                     PG_OK);
    G.in_start = 0;
    assert_non_null(req);
    assert_int_equal(pg_loop_run(G.loop, &l->done, RUN_MS), PG_OK);
    assert_int_equal(l->done, 1);
}

static void
test_list_paging_incremental(void **state)
{
    pg_connector_t *c = mk(NULL);
    const char *staff[] = { "staff" };
    res_t r;
    lst_t l;
    char key[32];
    int i;
    json_t *x, *attrs;
    uint64_t since;

    (void) state;
    memset(&r, 0, sizeof(r));
    memset(&l, 0, sizeof(l));
    for (i = 0; i < 7; i++) {
        pg_account_t a;

        snprintf(key, sizeof(key), "list%d", i);
        attrs = json_pack("{s:s, s:s, s:s}", "cn", key, "sn", "L", "mail",
                          "l@example.org");
        a = mkacct(key, attrs);
        if (i == 0) {
            a.groups = staff;
            a.ngroups = 1;
        }
        if (i == 1) {
            a.active = 0;
        }
        assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
        assert_int_equal(r.outcome, PG_CONN_CREATED);
        json_decref(attrs);
    }

    run_list(c, 0, &l);
    assert_int_equal(l.st, PG_OK);
    assert_true(l.pages >= 4);          /* >= 7 accounts, 2 per page */
    assert_true(l.max_n <= 2);
    for (i = 0; i < 7; i++) {
        snprintf(key, sizeof(key), "list%d", i);
        x = json_object_get(l.seen, key);
        if (x == NULL) {
            fail_msg("%s not listed", key);
        }
        assert_string_equal(json_string_value(json_object_get(
            json_object_get(x, "attrs"), "mail")), "l@example.org");
        /* no bookkeeping or disable marker in attrs */
        assert_null(json_object_get(json_object_get(x, "attrs"),
                                    "objectClass"));
        assert_null(json_object_get(json_object_get(x, "attrs"),
                                    "employeeType"));
        assert_true(json_integer_value(json_object_get(x, "mod"))
                    > 1700000000000LL);
        assert_int_equal(json_is_true(json_object_get(x, "active")), i != 1);
        if (i == 0) {
            assert_int_equal(json_array_size(json_object_get(x, "groups")), 1);
            assert_string_equal(json_string_value(json_array_get(
                json_object_get(x, "groups"), 0)), "staff");
        } else {
            assert_int_equal(json_array_size(json_object_get(x, "groups")), 0);
        }
    }

    /* incremental: only what changed at or after since */
    pgt_sleep_ms(1100);
    since = (uint64_t) time(NULL) * 1000u;
    {
        pg_account_t a;

        attrs = json_pack("{s:s, s:s, s:s}", "cn", "list3", "sn", "L", "mail",
                          "changed@example.org");
        a = mkacct("list3", attrs);
        assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
        assert_int_equal(r.outcome, PG_CONN_UPDATED);
        json_decref(attrs);
    }
    run_list(c, since, &l);
    assert_int_equal(l.st, PG_OK);
    assert_int_equal(json_object_size(l.seen), 1);
    x = json_object_get(l.seen, "list3");
    assert_non_null(x);
    assert_string_equal(json_string_value(json_object_get(
        json_object_get(x, "attrs"), "mail")), "changed@example.org");
    assert_true((uint64_t) json_integer_value(json_object_get(x, "mod"))
                >= since);
    /* in the future: nothing */
    run_list(c, since + 3600000u, &l);
    assert_int_equal(l.st, PG_OK);
    assert_int_equal(json_object_size(l.seen), 0);

    /* the page callback stops the listing */
    l.stop_after = 1;
    run_list(c, 0, &l);
    assert_int_equal(l.st, PG_ERR_CANCELLED);
    assert_int_equal(l.pages, 1);

    json_decref(l.seen);
    res_clear(&r);
    pg_connector_free(c);
}

static void
test_filter_injection(void **state)
{
    pg_connector_t *c = mk(NULL);
    json_t *attrs = J("{\"cn\":\"Inj\",\"sn\":\"I\",\"description\":\"x\"}");
    pg_account_t a = mkacct("*)(uid=*", attrs);
    pg_account_t dn_special = mkacct("a,b+c=\"d\" ", attrs);
    res_t r;
    char *out, *log;
    long mark;

    (void) state;
    memset(&r, 0, sizeof(r));
    /* other accounts exist; a wildcard would have matched them */
    {
        pg_account_t o = mkacct("victim", attrs);

        assert_int_equal(run_op(c, DO_ENSURE, &o, &r), PG_OK);
    }
    mark = log_mark();
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    log = log_since(mark);
    assert_non_null(strstr(log, "(uid=\\2A\\29\\28uid=\\2A)"));
    free(log);
    out = search(PEOPLE, "(uid=\\2a\\29\\28uid=\\2a)", "uid");
    assert_int_equal(count_dn(out), 1);
    assert_line(out, "uid: *)(uid=*");
    free(out);
    /* the victim is untouched */
    out = search(PEOPLE, "(uid=victim)", "description");
    assert_line(out, "description: x");
    free(out);
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);
    assert_int_equal(run_op(c, DO_DISABLE, &a, &r), PG_OK);
    assert_int_equal(run_op(c, DO_REMOVE, &a, &r), PG_OK);
    out = search(PEOPLE, "(uid=victim)", "uid");
    assert_int_equal(count_dn(out), 1);
    free(out);

    /* DN special characters are escaped in the RDN */
    assert_int_equal(run_op(c, DO_ENSURE, &dn_special, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    out = search(PEOPLE, "(uid=a,b+c=\"d\" )", "uid");
    assert_int_equal(count_dn(out), 1);
    free(out);
    assert_int_equal(run_op(c, DO_ENSURE, &dn_special, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_UNCHANGED);
    assert_int_equal(run_op(c, DO_REMOVE, &dn_special, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_REMOVED);
    out = search(PEOPLE, "(uid=a,b+c=\"d\" )", "uid");
    assert_int_equal(count_dn(out), 0);
    free(out);

    res_clear(&r);
    json_decref(attrs);
    pg_connector_free(c);
}

static void
test_wrong_password(void **state)
{
    pg_connector_t *c = mk("{\"bind_password\":\"wrong\"}");
    pg_account_t a = mkacct("alice", NULL);
    res_t r;

    (void) state;
    memset(&r, 0, sizeof(r));
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_ERR_DENIED);
    assert_false(r.retryable);
    assert_non_null(strstr(r.error, "Invalid credentials"));
    assert_null(strstr(r.error, "wrong"));
    /* and again (a fresh bind each time, same answer) */
    assert_int_equal(run_op(c, DO_REMOVE, &a, &r), PG_ERR_DENIED);
    res_clear(&r);
    pg_connector_free(c);
}

static void
test_cancel(void **state)
{
    pg_connector_t *c = mk(NULL);
    json_t *attrs = J("{\"cn\":\"Frank\",\"sn\":\"F\"}");
    pg_account_t a = mkacct("frank", attrs);
    pg_conn_req_t *req = NULL;
    res_t r, r2;
    lst_t l;
    int never = 0;

    (void) state;
    memset(&r, 0, sizeof(r));
    memset(&r2, 0, sizeof(r2));
    memset(&l, 0, sizeof(l));
    /* cancelled before anything ran (not even connected) */
    assert_int_equal(pg_conn_ensure(c, &a, on_res, &r, &req), PG_OK);
    pg_conn_cancel(c, req);
    assert_int_equal(pg_loop_run(G.loop, &never, 300), PG_ERR_TIMEOUT);
    assert_int_equal(r.calls, 0);

    /* connect, then cancel while the request is in flight (slapd paused) */
    assert_int_equal(run_op(c, DO_REMOVE, &a, &r2), PG_OK);
    slapd_pause();
    assert_int_equal(pg_conn_ensure(c, &a, on_res, &r, &req), PG_OK);
    assert_int_equal(pg_loop_run(G.loop, &never, 200), PG_ERR_TIMEOUT);
    pg_conn_cancel(c, req);
    l.seen = NULL;
    G.in_start = 1;
    assert_int_equal(pg_conn_list(c, 0, on_page, on_done, &l, &req), PG_OK);
    G.in_start = 0;
    assert_int_equal(pg_loop_run(G.loop, &never, 100), PG_ERR_TIMEOUT);
    pg_conn_cancel(c, req);
    slapd_resume();
    assert_int_equal(pg_loop_run(G.loop, &never, 500), PG_ERR_TIMEOUT);
    assert_int_equal(r.calls, 0);
    assert_int_equal(l.done, 0);
    assert_int_equal(l.pages, 0);

    /* the connection still works for the next operation */
    assert_int_equal(run_op(c, DO_REMOVE, &a, &r2), PG_OK);
    assert_int_equal(r2.outcome, PG_CONN_REMOVED);
    res_clear(&r);
    res_clear(&r2);
    json_decref(attrs);
    pg_connector_free(c);
}

static void
test_timeout(void **state)
{
    pg_connector_t *c = mk("{\"timeout_ms\":300}");
    pg_account_t a = mkacct("alice", NULL);
    pg_account_t nobody = mkacct("nobody", NULL);
    res_t r;
    uint64_t t0;

    (void) state;
    memset(&r, 0, sizeof(r));
    assert_int_equal(run_op(c, DO_REMOVE, &nobody, &r), PG_OK);
    slapd_pause();
    t0 = pgt_now_ms();
    assert_int_equal(run_op(c, DO_DISABLE, &a, &r), PG_ERR_TIMEOUT);
    assert_true(r.retryable);
    assert_true(pgt_now_ms() - t0 >= 250);
    assert_true(pgt_now_ms() - t0 < 3000);
    /* a fresh connector: the TCP connect succeeds (kernel backlog), the
     * bind never answers */
    {
        pg_connector_t *c2 = mk("{\"timeout_ms\":300}");

        t0 = pgt_now_ms();
        assert_int_equal(run_op(c2, DO_ENSURE, &a, &r), PG_ERR_TIMEOUT);
        assert_true(r.retryable);
        assert_true(pgt_now_ms() - t0 >= 250);
        assert_true(pgt_now_ms() - t0 < 3000);
        pg_connector_free(c2);
    }
    slapd_resume();
    /* later operations still work (the late reply was abandoned) */
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    res_clear(&r);
    pg_connector_free(c);
}

static void
test_server_down_then_back(void **state)
{
    pg_connector_t *c = mk(NULL);
    json_t *attrs = J("{\"cn\":\"Gina\",\"sn\":\"G\"}");
    pg_account_t a = mkacct("gina", attrs);
    res_t r;
    char *out;

    (void) state;
    memset(&r, 0, sizeof(r));
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_CREATED);

    slapd_kill();
    assert_int_equal(run_op(c, DO_DISABLE, &a, &r), PG_ERR_IO);
    assert_true(r.retryable);
    assert_int_equal(run_op(c, DO_DISABLE, &a, &r), PG_ERR_IO);
    assert_true(r.retryable);

    assert_int_equal(slapd_spawn(), 0);
    assert_int_equal(run_op(c, DO_DISABLE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_DISABLED);
    out = search(PEOPLE, "(uid=gina)", "employeeType");
    assert_line(out, "employeeType: disabled");
    free(out);

    /* killed while idle on an open connection, back before the next op:
     * the next op reconnects transparently */
    slapd_kill();
    assert_int_equal(slapd_spawn(), 0);
    assert_int_equal(run_op(c, DO_REMOVE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_REMOVED);

    res_clear(&r);
    json_decref(attrs);
    pg_connector_free(c);
}

/* Page callback that cancels its own listing. */
static pg_connector_t *cancel_conn;
static pg_conn_req_t *cancel_req;

static int
on_page_cancel(void *arg, const pg_listed_account_t *accts, size_t n)
{
    lst_t *l = arg;

    (void) accts;
    (void) n;
    l->pages++;
    pg_conn_cancel(cancel_conn, cancel_req);
    return 0;
}

static void
test_cancel_in_page_callback(void **state)
{
    lst_t l;
    int never = 0;

    (void) state;
    memset(&l, 0, sizeof(l));
    cancel_conn = mk(NULL);
    assert_int_equal(pg_conn_list(cancel_conn, 0, on_page_cancel, on_done, &l,
                                  &cancel_req), PG_OK);
    assert_int_equal(pg_loop_run(G.loop, &never, 1000), PG_ERR_TIMEOUT);
    assert_int_equal(l.pages, 1);     /* no further page ... */
    assert_int_equal(l.done, 0);      /* ... and no done callback */
    pg_connector_free(cancel_conn);
}

static int conc_count, conc_all;

static void
on_res_count(void *arg, pg_status_t st, const pg_conn_result_t *r)
{
    on_res(arg, st, r);
    conc_all = ++conc_count == 8;
}

/* Many operations started together before the connection exists: all
 * wait for the one connect + bind and complete. */
static void
test_concurrent_ops(void **state)
{
    pg_connector_t *c = mk(NULL);
    json_t *attrs = J("{\"cn\":\"Conc\",\"sn\":\"C\"}");
    char keys[8][16];
    res_t r[8];
    pg_account_t a;
    int i;
    char *log;
    long mark;

    (void) state;
    memset(r, 0, sizeof(r));
    mark = log_mark();
    G.in_start = 1;
    for (i = 0; i < 8; i++) {
        snprintf(keys[i], sizeof(keys[i]), "conc%d", i);
        a = mkacct(keys[i], attrs);
        assert_int_equal(pg_conn_ensure(c, &a, on_res_count, &r[i], NULL),
                         PG_OK);
    }
    G.in_start = 0;
    conc_count = conc_all = 0;
    assert_int_equal(pg_loop_run(G.loop, &conc_all, RUN_MS), PG_OK);
    for (i = 0; i < 8; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].st, PG_OK);
        assert_int_equal(r[i].outcome, PG_CONN_CREATED);
        res_clear(&r[i]);
    }
    log = log_since(mark);
    /* one connection, one bind */
    assert_int_equal(count_str(log, " BIND dn=\"" ROOTDN "\" method="), 1);
    assert_int_equal(count_str(log, " ADD dn="), 8);
    free(log);
    json_decref(attrs);
    pg_connector_free(c);
}

/* ldaps:// and StartTLS with a verified certificate; an untrusted one
 * fails. */
static void
test_tls(void **state)
{
    char extra[PATH_MAX + 256], *log;
    pg_connector_t *c;
    json_t *attrs = J("{\"cn\":\"Tess\",\"sn\":\"T\"}");
    pg_account_t a = mkacct("tess", attrs);
    res_t r;
    long mark;

    (void) state;
    memset(&r, 0, sizeof(r));
    /* ldaps:// */
    snprintf(extra, sizeof(extra), "{\"url\":\"%s\",\"tls_ca_file\":"
             "\"%s/server.pem\"}", G.surl, G.dir);
    c = mk(extra);
    mark = log_mark();
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_CREATED);
    log = log_since(mark);
    assert_non_null(strstr(log, "TLS established"));
    assert_int_equal(count_str(log, " EXT oid="), 0);
    free(log);
    pg_connector_free(c);

    /* StartTLS on ldap:// */
    snprintf(extra, sizeof(extra), "{\"starttls\":true,\"tls_ca_file\":"
             "\"%s/server.pem\"}", G.dir);
    c = mk(extra);
    mark = log_mark();
    assert_int_equal(run_op(c, DO_REMOVE, &a, &r), PG_OK);
    assert_int_equal(r.outcome, PG_CONN_REMOVED);
    log = log_since(mark);
    assert_non_null(strstr(log, "EXT oid=1.3.6.1.4.1.1466.20037"));
    assert_non_null(strstr(log, "TLS established"));
    free(log);
    pg_connector_free(c);

    /* a certificate the CA file does not vouch for: refused */
    snprintf(extra, sizeof(extra), "{\"url\":\"%s\",\"tls_ca_file\":"
             "\"%s/other.pem\"}", G.surl, G.dir);
    c = mk(extra);
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_ERR_IO);
    assert_true(r.retryable);
    pg_connector_free(c);
    snprintf(extra, sizeof(extra), "{\"starttls\":true,\"tls_ca_file\":"
             "\"%s/other.pem\"}", G.dir);
    c = mk(extra);
    assert_int_equal(run_op(c, DO_ENSURE, &a, &r), PG_ERR_IO);
    assert_true(r.retryable);
    pg_connector_free(c);

    res_clear(&r);
    json_decref(attrs);
}

/* Free the connector from inside its own callback (deferred free). */
static pg_connector_t *free_me;

static void
on_res_free(void *arg, pg_status_t st, const pg_conn_result_t *r)
{
    on_res(arg, st, r);
    pg_connector_free(free_me);
    free_me = NULL;
}

static void
test_free_in_callback(void **state)
{
    pg_account_t a = mkacct("nobody-at-all", NULL);
    res_t r;

    (void) state;
    memset(&r, 0, sizeof(r));
    free_me = mk(NULL);
    assert_int_equal(pg_conn_remove(free_me, &a, on_res_free, &r, NULL),
                     PG_OK);
    assert_int_equal(pg_loop_run(G.loop, &r.calls, RUN_MS), PG_OK);
    assert_int_equal(r.st, PG_OK);
    assert_null(free_me);
    res_clear(&r);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape),
        cmocka_unit_test_setup_teardown(test_config_errors, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_config_ok_and_caps, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_create_unchanged_update,
                                        test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_bad_requests, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_large_values, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_groups_add_revoke, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_disable_attribute, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_disable_move, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_remove, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_list_paging_incremental,
                                        test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_filter_injection, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_wrong_password, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_cancel, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_timeout, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_free_in_callback, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_cancel_in_page_callback,
                                        test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_ops, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_tls, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_server_down_then_back,
                                        test_setup, test_teardown),
    };

    return cmocka_run_group_tests_name("ldap", tests, group_setup,
                                       group_teardown);
}
