/*
 * provgatectl: the provgate command line.
 *
 * Admin commands (status, import, events, reconcile against the sidecar's
 * HTTP API; requests, dlq against the gateway's admin API) are described
 * in docs/provgatectl.md and in the "admin API client" part below; exit
 * status there: 0 ok, 1 refused or failed, 2 usage, 3 cannot connect.
 *
 * Offline policy commands:
 *   provgatectl policy check FILE...
 *   provgatectl policy explain --identity IDENTITY.json [--app APP]
 *                              [--now YYYY-MM-DD] FILE...
 *
 * "check" loads the files together (roles may be defined in one file and
 * used in another) and prints "<file>: <json path>: <reason>" on error.
 * "explain" prints the decision of the policy engine for one identity as
 * JSON; nothing is provisioned and no network is used. Targets are not
 * checked against a configuration (no configuration is read).
 *
 * Exit status (policy): 0 ok, 1 policy or identity error, 2 usage error.
 * Build: see docs/policies.md ("provgatectl").
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <curl/curl.h>
#include <jansson.h>
#include "provgate/policy.h"
#include "provgate/util.h"

#define IDENTITY_MAX (1024u * 1024u)   /* identity file cap */

static const char POLICY_USAGE[] =
    "usage: provgatectl policy check FILE...\n"
    "       provgatectl policy explain --identity IDENTITY.json [--app APP]\n"
    "                                  [--now YYYY-MM-DD] FILE...\n"
    "       provgatectl policy (check|explain) --help\n";

static const char CHECK_HELP[] =
    "usage: provgatectl policy check FILE...\n"
    "\n"
    "Load the policy files together and validate them: JSON syntax, unknown\n"
    "fields, types, undefined roles, role include cycles, regexes, dates.\n"
    "On success prints one summary line and exits 0; on the first error\n"
    "prints \"<file>: <json path>: <reason>\" to stderr and exits 1.\n"
    "Targets are not checked against a configuration.\n";

static const char EXPLAIN_HELP[] =
    "usage: provgatectl policy explain --identity IDENTITY.json [--app APP]\n"
    "                                  [--now YYYY-MM-DD] FILE...\n"
    "\n"
    "Print, as JSON, what the policy engine decides for one identity:\n"
    "entitlements, denied items, pending approvals, jit grants, SoD findings,\n"
    "roles and the explanation of every rule. Nothing is provisioned.\n"
    "\n"
    "  --identity F  a JSON object of identity attributes (the claims; \"groups\"\n"
    "                an array of group names; \"roles\" explicit business roles)\n"
    "  --app APP     decide for this target (the app being accessed; jit\n"
    "                entitlements of APP are granted). Without it: every target.\n"
    "  --now DATE    evaluate as of DATE (UTC midnight) instead of now\n";

/* Parse YYYY-MM-DD into a UTC time_t at midnight; 0 on success. */
static int
parse_now(const char *s, time_t *out)
{
    struct tm tm;
    char *end;

    memset(&tm, 0, sizeof(tm));
    end = strptime(s, "%Y-%m-%d", &tm);
    if (end == NULL || *end != '\0') {
        return -1;
    }
    *out = timegm(&tm);
    return 0;
}

/* provgatectl policy check FILE... */
static int
cmd_check(int argc, char **argv)
{
    pg_policy_set_t *ps = NULL;
    pg_err_t err;
    int i;

    for (i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(CHECK_HELP, stdout);
            return 0;
        }
    }
    if (argc < 1) {
        fputs(CHECK_HELP, stderr);
        return 2;
    }
    memset(&err, 0, sizeof(err));
    if (pg_policy_load(argv, NULL, &ps, &err) != PG_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    printf("ok: %d file%s, %zu polic%s, %zu role%s\n", argc,
           argc == 1 ? "" : "s", pg_policy_count(ps),
           pg_policy_count(ps) == 1 ? "y" : "ies", pg_policy_role_count(ps),
           pg_policy_role_count(ps) == 1 ? "" : "s");
    pg_policy_free(ps);
    return 0;
}

/* provgatectl policy explain ... */
static int
cmd_explain(int argc, char **argv)
{
    const char *identity = NULL, *app = NULL;
    pg_policy_set_t *ps = NULL;
    pg_decision_t d;
    json_error_t jerr;
    json_t *attrs, *out;
    pg_err_t err;
    time_t now = time(NULL);
    char *text = NULL, *dump;
    size_t len = 0;
    int i, nfiles = 0, rc = 1;
    char **files;

    files = calloc((size_t)argc + 1, sizeof(*files));
    if (files == NULL) {
        fputs("out of memory\n", stderr);
        return 1;
    }
    for (i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(EXPLAIN_HELP, stdout);
            free(files);
            return 0;
        } else if (strcmp(argv[i], "--identity") == 0 && i + 1 < argc) {
            identity = argv[++i];
        } else if (strcmp(argv[i], "--app") == 0 && i + 1 < argc) {
            app = argv[++i];
        } else if (strcmp(argv[i], "--now") == 0 && i + 1 < argc) {
            if (parse_now(argv[++i], &now) != 0) {
                fprintf(stderr, "--now: expected YYYY-MM-DD\n");
                free(files);
                return 2;
            }
        } else if (strncmp(argv[i], "--", 2) == 0) {
            fprintf(stderr, "unknown or incomplete option %s\n%s", argv[i],
                    EXPLAIN_HELP);
            free(files);
            return 2;
        } else {
            files[nfiles++] = argv[i];
        }
    }
    if (identity == NULL || nfiles == 0) {
        fputs(EXPLAIN_HELP, stderr);
        free(files);
        return 2;
    }
    memset(&err, 0, sizeof(err));
    if (pg_read_file(identity, IDENTITY_MAX, 0, &text, &len, &err) != PG_OK) {
        fprintf(stderr, "%s: %s\n", identity, err.msg);
        free(files);
        return 1;
    }
    attrs = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!json_is_object(attrs)) {
        fprintf(stderr, "%s:%d:%d: %s\n", identity, jerr.line, jerr.column,
                attrs == NULL ? jerr.text : "must be a JSON object");
        json_decref(attrs);
        free(files);
        return 1;
    }
    if (pg_policy_load(files, NULL, &ps, &err) != PG_OK) {
        fprintf(stderr, "%s\n", err.msg);
        json_decref(attrs);
        free(files);
        return 1;
    }
    if (pg_policy_decide_at(ps, attrs, app, now, &d) != PG_OK) {
        fputs("decision failed (out of memory)\n", stderr);
    } else {
        out = json_pack("{s:s?, s:b, s:O, s:O, s:O, s:O, s:O, s:O, s:O?, "
                        "s:O}",
                        "app", app, "has_account", d.has_account,
                        "entitlements", d.entitlements, "denied", d.denied,
                        "pending_approval", d.pending_approval, "jit", d.jit,
                        "sod_findings", d.sod_findings, "roles", d.roles,
                        "accounts", d.accounts,
                        "explanation", d.explanation);
        dump = out != NULL ? json_dumps(out, JSON_INDENT(2) |
                                        JSON_PRESERVE_ORDER) : NULL;
        if (dump != NULL) {
            printf("%s\n", dump);
            rc = 0;
        }
        free(dump);
        json_decref(out);
        pg_decision_clear(&d);
    }
    pg_policy_free(ps);
    json_decref(attrs);
    free(files);
    return rc;
}

/* provgatectl policy ...: argv[1] is "policy"; exit status as main's. */
static int
cmd_policy(int argc, char **argv)
{
    if (argc < 3) {
        fputs(POLICY_USAGE, stderr);
        return 2;
    }
    if (strcmp(argv[2], "check") == 0) {
        return cmd_check(argc - 3, argv + 3);
    }
    if (strcmp(argv[2], "explain") == 0) {
        return cmd_explain(argc - 3, argv + 3);
    }
    if (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0) {
        fputs(POLICY_USAGE, stdout);
        return 0;
    }
    fputs(POLICY_USAGE, stderr);
    return 2;
}


/* ==== admin API client =================================================
 * The commands below talk to the sidecar's HTTP admin API (provgated
 * --listen, docs/sidecar.md, docs/reconciliation.md) and to the gateway's
 * admin API (the provgate_admin location, docs/admin-api.md) with libcurl
 * easy (blocking; one request at a time). Bodies are JSON (jansson).
 * Exit status: 0 ok, 1 refused or failed, 2 usage, 3 cannot connect.
 * docs/provgatectl.md
 */
#define EX_OK      0
#define EX_FAIL    1
#define EX_USAGE   2
#define EX_CONNECT 3

#define RESP_MAX   (8u * 1024u * 1024u)  /* response body cap */
#define TOKEN_MAX  4096u                 /* admin token / session cookie */
#define EVENT_MAX  (64u * 1024u)         /* provgated's POST /events cap */
#define ERRBODY_MAX 1024u                /* API error body shown, bytes */
#define POLL_MS    250                   /* status polling interval */
#define DEFAULT_SIDECAR "http://127.0.0.1:9180"   /* provgated --listen */
#define DEFAULT_TIMEOUT_S 30L

/* Global options; strings borrowed from argv or the environment. */
typedef struct {
    const char *sidecar;         /* sidecar base URL */
    const char *gateway;         /* provgate_admin location URL, or NULL */
    const char *token_file;      /* --token-file, or NULL */
    const char *session_file;    /* --session-file, or NULL */
    int json;                    /* --json: print the API's JSON */
    long timeout_s;              /* per request, and for --wait polling */
} ctl_t;

/* A response body: malloc'd, NUL-terminated, at most RESP_MAX bytes. */
typedef struct {
    char *data;
    size_t len, cap;
    int overflow;                /* the peer sent more than RESP_MAX */
} resp_t;

static const char USAGE[] =
    "usage: provgatectl [GLOBAL OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "Commands (each accepts -h/--help):\n"
    "  status                          sidecar health and key metrics\n"
    "  import [--force] [--wait]       start an HR import (sidecar)\n"
    "  import status                   the last import's summary\n"
    "  events send FILE|-              send one JML event (POST /events)\n"
    "  reconcile start --target T [--full|--incremental] [--no-wait]\n"
    "  reconcile status [--target T]   last reports, the run in flight\n"
    "  reconcile findings --target T   findings of T's last report\n"
    "  requests list|approve ID|deny ID   access requests (gateway)\n"
    "  dlq list|retry ID|discard ID    outbox dead letters (gateway)\n"
    "  work list T|done T ID|reject T ID  manual work items of target T\n"
    "                                  (gateway)\n"
    "  identity show ID | --hr-key K | --email E | --sub S [--iss I]\n"
    "  identity list [--left] [--limit N]  identities (sidecar)\n"
    "  cases list|link ID --identity IID|new ID|dismiss ID\n"
    "                                  correlation cases (sidecar)\n"
    "  policy check|explain ...        offline policy tools\n"
    "\n"
    "Global options (before or after the command):\n"
    "  --sidecar URL       provgated admin API (default " DEFAULT_SIDECAR ")\n"
    "  --gateway URL       the gateway's provgate_admin location, e.g.\n"
    "                      https://gw.example.com/provgate/admin/\n"
    "                      (or PROVGATE_GATEWAY)\n"
    "  --token-file FILE   sidecar admin token (provgated --admin-token-file);\n"
    "                      otherwise the PROVGATE_ADMIN_TOKEN variable\n"
    "  --session-file FILE gateway session cookie, \"NAME=VALUE\" (the\n"
    "                      gateway admin API accepts only a provgate session);\n"
    "                      otherwise the PROVGATE_SESSION_COOKIE variable\n"
    "  --json              print the API's JSON instead of text\n"
    "  --timeout S         per request and for waits, seconds (default 30)\n"
    "\n"
    "Exit status: 0 ok, 1 refused or failed (HTTP status and the API's error\n"
    "body on stderr), 2 usage error, 3 cannot connect.\n";

static const char STATUS_HELP[] =
    "usage: provgatectl [--sidecar URL] [--json] status\n"
    "\n"
    "GET /healthz, /metrics, /import and /reconcile of the sidecar and print\n"
    "its health (Redis up or down), configuration reloads, the last import\n"
    "and the reconciliation runs. Exit 0 when healthy, 1 when the sidecar\n"
    "answers unhealthy (Redis down), 3 when it cannot be reached.\n";

static const char IMPORT_HELP[] =
    "usage: provgatectl [--sidecar URL] [--token-file F] import [--force]\n"
    "                   [--wait]\n"
    "       provgatectl [--sidecar URL] import status\n"
    "\n"
    "import: POST /import (admin token): the sidecar imports its configured\n"
    "HR export (hr_source.file) now. There is no upload endpoint: a FILE\n"
    "argument is refused; write the export where the sidecar reads it.\n"
    "  --force  import even when a guard (max_leave_pct, ...) would refuse\n"
    "  --wait   poll GET /import until a new summary appears (progress on a\n"
    "           terminal) and exit 1 unless its status is \"ok\". A\n"
    "           re-import of an unchanged file gives the same summary, which\n"
    "           cannot be told apart: --wait then ends at --timeout.\n"
    "import status: GET /import, the last import's (or event's) summary.\n";

static const char EVENTS_HELP[] =
    "usage: provgatectl [--sidecar URL] [--token-file F] events send FILE|-\n"
    "\n"
    "POST /events: one JML event (a JSON object, at most 64 KiB) read from\n"
    "FILE or standard input. While the sidecar is busy (503, Retry-After)\n"
    "the event is sent again until --timeout. A malformed event: exit 1\n"
    "with the API's detail.\n";

static const char RECONCILE_HELP[] =
    "usage: provgatectl [--sidecar URL] [--token-file F] reconcile start\n"
    "                   --target T [--full|--incremental] [--no-wait]\n"
    "       provgatectl [--sidecar URL] reconcile status [--target T]\n"
    "       provgatectl [--sidecar URL] reconcile findings --target T\n"
    "\n"
    "start: POST /reconcile?target=T (admin token); a full run unless\n"
    "--incremental. Then, unless --no-wait, polls GET /reconcile until the\n"
    "run's report is there (a progress bar on a terminal; plain lines on\n"
    "stderr otherwise or with --json) and prints it; exit 1 unless its\n"
    "status is \"ok\". One run at a time: another one in flight is 409.\n"
    "status: the run in flight, run/failure counts and each target's last\n"
    "report (with --target: that report).\n"
    "findings: the findings of T's last report, one a line (--json: the\n"
    "findings array).\n";

static const char REQUESTS_HELP[] =
    "usage: provgatectl --gateway URL [--session-file F] requests list\n"
    "       provgatectl --gateway URL [--session-file F] requests approve ID\n"
    "       provgatectl --gateway URL [--session-file F] requests deny ID\n"
    "\n"
    "The gateway's admin API (GET requests, POST requests/ID/approve|deny).\n"
    "It authenticates by the provgate session cookie only (an admin or an\n"
    "approver signed in through provgate); pass it with --session-file or\n"
    "PROVGATE_SESSION_COOKIE as NAME=VALUE. The API records no reason for a\n"
    "denial, so there is no --reason.\n";

static const char DLQ_HELP[] =
    "usage: provgatectl --gateway URL [--session-file F] dlq list\n"
    "       provgatectl --gateway URL [--session-file F] dlq retry ID\n"
    "       provgatectl --gateway URL [--session-file F] dlq discard ID\n"
    "\n"
    "Dead-lettered outbox operations through the gateway's admin API\n"
    "(GET dead, POST dead/ID/retry|discard; admins only; session cookie as\n"
    "for \"requests\").\n";

static const char WORK_HELP[] =
    "usage: provgatectl --gateway URL [--session-file F] work list TARGET\n"
    "       provgatectl --gateway URL [--session-file F] work done TARGET ID\n"
    "       provgatectl --gateway URL [--session-file F] work reject TARGET ID\n"
    "\n"
    "Work items of a \"manual\" target (a system without an interface: a\n"
    "human does the change) through the gateway's admin API (GET\n"
    "work/TARGET, POST work/TARGET/ID/done|reject; admins only; session\n"
    "cookie as for \"requests\"). done: the account counts as provisioned;\n"
    "reject: closed without effect.\n";

static const char IDENTITY_HELP[] =
    "usage: provgatectl [--sidecar URL] [--token-file F] identity show ID\n"
    "       provgatectl ... identity show --hr-key K | --email E |\n"
    "                   --sub S [--iss I]\n"
    "       provgatectl ... identity list [--left] [--limit N]\n"
    "\n"
    "show: GET /identities/ID or GET /identities?hr_key=K|email=E|sub=S\n"
    "(admin token; audited as admin.read): the identity's state (active or\n"
    "left, and since when), attributes, accounts per target (id, username,\n"
    "state, entitlements), jit grants with their expiry, the number of live\n"
    "sessions and open access requests. Never session ids or tokens.\n"
    "--email looks in every correlation index fed by an email, --sub under\n"
    "every configured OpenID Connect issuer (or only --iss I). Unknown: exit\n"
    "1 (HTTP 404). Several identities match: exit 1 (HTTP 409) with the\n"
    "candidate ids.\n"
    "list: GET /identities page by page (SCAN): id, state, leave time,\n"
    "username, email, HR key; --left only leavers; --limit N (1-100000,\n"
    "default 100) at most N identities. The order is Redis' (unsorted).\n";

static const char CASES_HELP[] =
    "usage: provgatectl [--sidecar URL] [--token-file F] cases list\n"
    "       provgatectl ... cases link ID --identity IID\n"
    "       provgatectl ... cases new ID\n"
    "       provgatectl ... cases dismiss ID\n"
    "\n"
    "Correlation cases: HR records that two identities matched (GET\n"
    "/cases, admin token). link: the record belongs to candidate IID; new:\n"
    "it is somebody else (a new identity); both pin the HR key and apply\n"
    "the record at once. dismiss: forget the case. Unknown case: exit 1\n"
    "(HTTP 404); an IID that is not a candidate: exit 1 (HTTP 400); an\n"
    "import running: exit 1 (HTTP 503, try again).\n";

/* 1 when argv (argc entries) holds -h or --help. */
static int
has_help(int argc, char **argv)
{
    int i;

    for (i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            return 1;
        }
    }
    return 0;
}

/*
 * Print "provgatectl: <msg>" (its one "%s" replaced by arg, NULL: nothing;
 * msg is not a printf format) and the help text to stderr; EX_USAGE.
 */
static int
usage_error(const char *help, const char *msg, const char *arg)
{
    const char *at = strstr(msg, "%s");

    fputs("provgatectl: ", stderr);
    if (at == NULL) {
        fputs(msg, stderr);
    } else {
        fwrite(msg, 1, (size_t) (at - msg), stderr);
        fputs(arg != NULL ? arg : "", stderr);
        fputs(at + 2, stderr);
    }
    fputs("\n", stderr);
    fputs(help, stderr);
    return EX_USAGE;
}

/* curl write callback: append to the resp_t, refusing past RESP_MAX. */
static size_t
resp_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
    resp_t *r = ud;
    size_t n = size * nmemb, ncap;
    char *nd;

    if (n > RESP_MAX - r->len) {
        r->overflow = 1;
        return 0;
    }
    if (r->len + n + 1 > r->cap) {
        ncap = r->cap != 0 ? r->cap : 4096;
        while (ncap < r->len + n + 1) {
            ncap *= 2;
        }
        if (ncap > RESP_MAX + 1) {
            ncap = RESP_MAX + 1;
        }
        nd = realloc(r->data, ncap);
        if (nd == NULL) {
            return 0;
        }
        r->data = nd;
        r->cap = ncap;
    }
    memcpy(r->data + r->len, ptr, n);
    r->len += n;
    r->data[r->len] = '\0';
    return n;
}

/* Free a response body and reset it. */
static void
resp_clear(resp_t *r)
{
    free(r->data);
    memset(r, 0, sizeof(*r));
}

/* base + "/" + path with one slash between them; malloc'd or NULL. */
static char *
join_url(const char *base, const char *path)
{
    size_t bl = strlen(base), pl, n;
    char *u;

    while (bl > 0 && base[bl - 1] == '/') {
        bl--;
    }
    while (*path == '/') {
        path++;
    }
    pl = strlen(path);
    n = bl + 1 + pl + 1;
    u = malloc(n);
    if (u != NULL) {
        memcpy(u, base, bl);
        u[bl] = '/';
        memcpy(u + bl + 1, path, pl);
        u[bl + 1 + pl] = '\0';
    }
    return u;
}

/*
 * A secret for a request header: the first line of file, or else the
 * environment variable env. Returns a malloc'd "<prefix><secret>" (the
 * caller wipes and frees it with secret_free), NULL with *rc set when
 * there is none (EX_USAGE if required) or it is unusable (EX_FAIL: empty,
 * too long, control characters). The secret is never printed.
 */
static char *
secret_header(const char *file, const char *env, const char *prefix,
              int required, const char *what, int *rc)
{
    char *text = NULL, *h;
    const char *v;
    size_t len = 0, i, pl = strlen(prefix);
    pg_err_t err;

    *rc = EX_OK;
    memset(&err, 0, sizeof(err));
    if (file != NULL) {
        if (pg_read_file(file, TOKEN_MAX, 1, &text, &len, &err) != PG_OK) {
            fprintf(stderr, "provgatectl: %s: %s\n", file, err.msg);
            *rc = EX_FAIL;
            return NULL;
        }
        v = text;
    } else {
        v = getenv(env);
        if (v == NULL || *v == '\0') {
            if (required) {
                fprintf(stderr, "provgatectl: %s needed: --%s FILE or %s\n",
                        what, strcmp(env, "PROVGATE_ADMIN_TOKEN") == 0
                                  ? "token-file" : "session-file", env);
                *rc = EX_USAGE;
            }
            return NULL;
        }
        len = strlen(v);
    }
    for (i = 0; i < len; i++) {
        if ((unsigned char) v[i] < 0x20 || v[i] == 0x7f) {
            break;
        }
    }
    if (len == 0 || i != len || len > TOKEN_MAX) {
        fprintf(stderr, "provgatectl: the %s is empty, too long or holds "
                "control characters\n", what);
        if (text != NULL) {
            explicit_bzero(text, len);
        }
        free(text);
        *rc = EX_FAIL;
        return NULL;
    }
    h = malloc(pl + len + 1);
    if (h != NULL) {
        memcpy(h, prefix, pl);
        memcpy(h + pl, v, len);
        h[pl + len] = '\0';
    } else {
        *rc = EX_FAIL;
    }
    if (text != NULL) {
        explicit_bzero(text, len);
    }
    free(text);
    return h;
}

/* Wipe and free a header made by secret_header (NULL is fine). */
static void
secret_free(char *h)
{
    if (h != NULL) {
        explicit_bzero(h, strlen(h));
        free(h);
    }
}

/*
 * One HTTP request. method "GET" or "POST"; url is the full URL; auth is
 * a header line (borrowed, never printed) or NULL; body/blen the POST body
 * (NULL: empty). On EX_OK an HTTP answer was received: *status is its
 * status (any) and out holds its body (the caller frees it with
 * resp_clear). EX_CONNECT: the peer could not be reached (message
 * printed); EX_FAIL: another transport failure or a body over RESP_MAX.
 * Only http and https, no redirects followed, --timeout for the whole
 * request.
 */
static int
http_do(const ctl_t *c, const char *method, const char *url,
        const char *auth, const char *body, size_t blen, long *status,
        resp_t *out)
{
    char ebuf[CURL_ERROR_SIZE];
    struct curl_slist *hdrs = NULL, *t;
    curl_off_t conn = 0;
    CURL *h;
    CURLcode cc;
    int rc = EX_OK;

    *status = 0;
    memset(out, 0, sizeof(*out));
    ebuf[0] = '\0';
    h = curl_easy_init();
    if (h == NULL) {
        fputs("provgatectl: curl_easy_init failed\n", stderr);
        return EX_FAIL;
    }
    t = curl_slist_append(hdrs, "Accept: application/json");
    hdrs = t != NULL ? t : hdrs;
    if (auth != NULL && t != NULL) {
        t = curl_slist_append(hdrs, auth);
        hdrs = t != NULL ? t : hdrs;
    }
    if (body != NULL && t != NULL) {
        t = curl_slist_append(hdrs, "Content-Type: application/json");
        hdrs = t != NULL ? t : hdrs;
    }
    if (t == NULL) {
        fputs("provgatectl: out of memory\n", stderr);
        curl_slist_free_all(hdrs);
        curl_easy_cleanup(h);
        return EX_FAIL;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, c->timeout_s);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT,
                     c->timeout_s < 10 ? c->timeout_s : 10L);
    curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) RESP_MAX);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "provgatectl");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, resp_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, ebuf);
    if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body != NULL ? body : "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t) (body != NULL ? blen : 0));
    }
    cc = curl_easy_perform(h);
    if (cc == CURLE_OK) {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    } else if (out->overflow || cc == CURLE_FILESIZE_EXCEEDED) {
        fprintf(stderr, "provgatectl: %s: response larger than %u bytes\n",
                url, RESP_MAX);
        rc = EX_FAIL;
    } else {
        (void) curl_easy_getinfo(h, CURLINFO_CONNECT_TIME_T, &conn);
        fprintf(stderr, "provgatectl: %s: %s\n", url,
                ebuf[0] != '\0' ? ebuf : curl_easy_strerror(cc));
        rc = (cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST
              || cc == CURLE_COULDNT_RESOLVE_PROXY
              || (cc == CURLE_OPERATION_TIMEDOUT && conn == 0))
                 ? EX_CONNECT : EX_FAIL;
    }
    if (rc != EX_OK) {
        resp_clear(out);
    } else if (out->data == NULL) {
        out->data = calloc(1, 1);
        if (out->data == NULL) {
            rc = EX_FAIL;
        }
    }
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    return rc;
}

/*
 * Report a refused request: "provgatectl: WHAT: HTTP <status>: <body>" on
 * stderr (the body cut at ERRBODY_MAX bytes, control characters shown as
 * '?'). Returns EX_FAIL.
 */
static int
api_error(const char *what, long status, const resp_t *r)
{
    size_t i, n = r->len < ERRBODY_MAX ? r->len : ERRBODY_MAX;

    fprintf(stderr, "provgatectl: %s: HTTP %ld", what, status);
    if (n > 0) {
        fputs(": ", stderr);
        for (i = 0; i < n; i++) {
            unsigned char ch = (unsigned char) r->data[i];

            fputc(ch < 0x20 || ch == 0x7f ? '?' : ch, stderr);
        }
        if (n < r->len) {
            fputs("...", stderr);
        }
    }
    fputc('\n', stderr);
    return EX_FAIL;
}

/* Parse a JSON body; NULL (message printed) when it is not JSON. */
static json_t *
parse_body(const char *what, const resp_t *r)
{
    json_error_t jerr;
    json_t *j = json_loadb(r->data, r->len, 0, &jerr);

    if (j == NULL) {
        fprintf(stderr, "provgatectl: %s: the answer is not JSON: %s\n", what,
                jerr.text);
    }
    return j;
}

/* Print a JSON value indented on stdout; 0 or EX_FAIL. */
static int
print_json(const json_t *j)
{
    char *t = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER
                            | JSON_ENCODE_ANY);

    if (t == NULL) {
        fputs("provgatectl: out of memory\n", stderr);
        return EX_FAIL;
    }
    printf("%s\n", t);
    free(t);
    return EX_OK;
}

/* Print the body of a response as received, newline-terminated. */
static void
print_raw(const resp_t *r)
{
    fwrite(r->data, 1, r->len, stdout);
    if (r->len == 0 || r->data[r->len - 1] != '\n') {
        fputc('\n', stdout);
    }
}

/* A JSON value as short text ("-" for missing) into buf (bufsz > 1). */
static const char *
jtext(const json_t *v, char *buf, size_t bufsz)
{
    if (json_is_string(v)) {
        return json_string_value(v);
    }
    if (json_is_integer(v)) {
        snprintf(buf, bufsz, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf;
    }
    if (json_is_real(v)) {
        snprintf(buf, bufsz, "%g", json_real_value(v));
        return buf;
    }
    if (json_is_boolean(v)) {
        return json_is_true(v) ? "true" : "false";
    }
    return "-";
}

/*
 * GET (or POST with body) base+path into *out and parse nothing: the
 * common "one call" helper. Returns http_do's code; *status as there.
 */
static int
call(const ctl_t *c, const char *method, const char *base, const char *path,
     const char *auth, const char *body, size_t blen, long *status,
     resp_t *out)
{
    char *url = join_url(base, path);
    int rc;

    if (url == NULL) {
        fputs("provgatectl: out of memory\n", stderr);
        return EX_FAIL;
    }
    rc = http_do(c, method, url, auth, body, blen, status, out);
    free(url);
    return rc;
}

/* ---- progress ----------------------------------------------------------
 * Long jobs poll a status endpoint. On a terminal (stderr a TTY, no
 * --json) an indeterminate bar is redrawn with '\r'; otherwise plain
 * lines: one at the start, one every 5 s, one at the end. All on stderr.
 */
typedef struct {
    int tty;
    const char *label;           /* borrowed */
    struct timespec t0;
    unsigned ticks;
    double last_line;            /* seconds of the last plain line */
} progress_t;

/* Seconds since p->t0. */
static double
progress_elapsed(const progress_t *p)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double) (now.tv_sec - p->t0.tv_sec)
           + (double) (now.tv_nsec - p->t0.tv_nsec) / 1e9;
}

/* Start: label is borrowed for the lifetime of p. */
static void
progress_start(progress_t *p, const ctl_t *c, const char *label)
{
    memset(p, 0, sizeof(*p));
    p->tty = !c->json && isatty(STDERR_FILENO);
    p->label = label;
    clock_gettime(CLOCK_MONOTONIC, &p->t0);
    if (!p->tty) {
        fprintf(stderr, "%s: started\n", label);
    }
}

/* One poll happened: redraw the bar or print a line every 5 s. */
static void
progress_update(progress_t *p)
{
    char bar[21];
    double s = progress_elapsed(p);
    unsigned pos, i;

    p->ticks++;
    if (p->tty) {
        pos = p->ticks % 34;
        pos = pos < 17 ? pos : 33 - pos;      /* bounce 0..16 */
        for (i = 0; i < 20; i++) {
            bar[i] = i >= pos && i < pos + 4 ? '=' : ' ';
        }
        bar[20] = '\0';
        fprintf(stderr, "\r%s [%s] %6.1fs", p->label, bar, s);
        fflush(stderr);
    } else if (s - p->last_line >= 5.0) {
        p->last_line = s;
        fprintf(stderr, "%s: running (%.0fs)\n", p->label, s);
    }
}

/* End with an outcome word ("done", "failed", "timed out"). */
static void
progress_end(progress_t *p, const char *outcome)
{
    if (p->tty) {
        fputs("\r\033[K", stderr);
    }
    fprintf(stderr, "%s: %s (%.1fs)\n", p->label, outcome,
            progress_elapsed(p));
}

/* Sleep POLL_MS milliseconds. */
static void
poll_sleep(void)
{
    struct timespec ts = { 0, POLL_MS * 1000000L };

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- status ----------------------------------------------------------- */

/* Prometheus text -> {"name": number} for the provgated_* and process_*
 * samples without labels. Returns a new object or NULL. */
static json_t *
parse_metrics(const resp_t *r)
{
    json_t *o = json_object();
    const char *p = r->data, *end = r->data + r->len, *nl, *sp;
    char name[128], num[64];
    size_t nlen, vlen;
    double v;
    char *e;

    while (o != NULL && p < end) {
        nl = memchr(p, '\n', (size_t) (end - p));
        if (nl == NULL) {
            nl = end;
        }
        sp = memchr(p, ' ', (size_t) (nl - p));
        if (*p != '#' && sp != NULL && memchr(p, '{', (size_t) (sp - p))
                                            == NULL) {
            nlen = (size_t) (sp - p);
            vlen = (size_t) (nl - sp - 1);
            if (nlen < sizeof(name) && vlen > 0 && vlen < sizeof(num)) {
                memcpy(name, p, nlen);
                name[nlen] = '\0';
                memcpy(num, sp + 1, vlen);
                num[vlen] = '\0';
                errno = 0;
                v = strtod(num, &e);
                if (errno == 0 && *e == '\0') {
                    json_object_set_new(o, name, json_real(v));
                }
            }
        }
        p = nl + 1;
    }
    return o;
}

/* provgatectl status */
static int
cmd_status(const ctl_t *c, int argc, char **argv)
{
    resp_t r;
    long st;
    json_t *health = NULL, *metrics = NULL, *imp = NULL, *rec = NULL, *out;
    int rc, healthy;
    char b1[64];

    if (has_help(argc, argv)) {
        fputs(STATUS_HELP, stdout);
        return EX_OK;
    }
    if (argc > 0) {
        return usage_error(STATUS_HELP, "status: unexpected argument %s",
                           argv[0]);
    }
    rc = call(c, "GET", c->sidecar, "/healthz", NULL, NULL, 0, &st, &r);
    if (rc != EX_OK) {
        return rc;
    }
    if (st != 200 && st != 503) {
        rc = api_error("GET /healthz", st, &r);
        resp_clear(&r);
        return rc;
    }
    healthy = st == 200;
    health = parse_body("GET /healthz", &r);
    resp_clear(&r);
    if (call(c, "GET", c->sidecar, "/metrics", NULL, NULL, 0, &st, &r)
        == EX_OK) {
        metrics = st == 200 ? parse_metrics(&r) : NULL;
        resp_clear(&r);
    }
    if (call(c, "GET", c->sidecar, "/import", NULL, NULL, 0, &st, &r)
        == EX_OK) {
        imp = st == 200 ? json_loadb(r.data, r.len, 0, NULL) : NULL;
        resp_clear(&r);
    }
    if (call(c, "GET", c->sidecar, "/reconcile", NULL, NULL, 0, &st, &r)
        == EX_OK) {
        rec = st == 200 ? json_loadb(r.data, r.len, 0, NULL) : NULL;
        resp_clear(&r);
    }
    if (c->json) {
        out = json_pack("{s:s, s:O?, s:O?, s:O?, s:O?}", "sidecar",
                        c->sidecar, "health", health, "metrics", metrics,
                        "import", imp, "reconcile", rec);
        rc = out != NULL ? print_json(out) : EX_FAIL;
        json_decref(out);
    } else {
        printf("sidecar     %s\n", c->sidecar);
        printf("health      %s\n", healthy ? "ok" : "unavailable");
        printf("redis       %s\n",
               jtext(json_object_get(health, "redis"), b1, sizeof(b1)));
        if (metrics != NULL) {
            printf("reloads     %.0f (failed %.0f)\n",
                   json_real_value(json_object_get(
                       metrics, "provgated_config_reloads_total")),
                   json_real_value(json_object_get(
                       metrics, "provgated_config_reload_failures_total")));
            if (json_object_get(metrics, "process_start_time_seconds")) {
                printf("uptime      %.0fs\n", (double) time(NULL)
                       - json_real_value(json_object_get(
                           metrics, "process_start_time_seconds")));
            }
        }
        if (json_is_object(imp) && json_object_size(imp) > 0) {
            const char *k;
            json_t *v;

            printf("last import");
            json_object_foreach(imp, k, v) {
                if (!json_is_object(v) && !json_is_array(v)) {
                    printf(" %s=%s", k, jtext(v, b1, sizeof(b1)));
                }
            }
            printf("\n");
        } else {
            printf("last import none\n");
        }
        if (json_is_object(rec)) {
            printf("reconcile   running=%s runs=%s",
                   jtext(json_object_get(rec, "running"), b1, sizeof(b1)),
                   jtext(json_object_get(rec, "runs"), b1, sizeof(b1)));
            printf(" failures=%s\n",
                   jtext(json_object_get(rec, "failures"), b1, sizeof(b1)));
        }
        rc = EX_OK;
    }
    json_decref(health);
    json_decref(metrics);
    json_decref(imp);
    json_decref(rec);
    if (rc == EX_OK && !healthy) {
        fprintf(stderr, "provgatectl: the sidecar is unhealthy (HTTP 503)\n");
        rc = EX_FAIL;
    }
    return rc;
}

/* ---- import ----------------------------------------------------------- */

/* GET path of the sidecar into *out when it answers 200; else the error is
 * printed and the exit code returned. */
static int
get_ok(const ctl_t *c, const char *path, resp_t *out)
{
    long st;
    int rc = call(c, "GET", c->sidecar, path, NULL, NULL, 0, &st, out);
    char what[300];

    if (rc == EX_OK && st != 200) {
        snprintf(what, sizeof(what), "GET %s", path);
        rc = api_error(what, st, out);
        resp_clear(out);
    }
    return rc;
}

/* Print an import summary: raw with --json, else "key=value" pairs. */
static void
print_summary(const ctl_t *c, const resp_t *r)
{
    json_t *j, *v;
    const char *k;
    char b[64];

    if (c->json) {
        print_raw(r);
        return;
    }
    j = json_loadb(r->data, r->len, 0, NULL);
    if (!json_is_object(j) || json_object_size(j) == 0) {
        printf("no import yet\n");
    } else {
        json_object_foreach(j, k, v) {
            if (json_is_array(v) || json_is_object(v)) {
                char *t = json_dumps(v, JSON_COMPACT);

                printf("%-12s %s\n", k, t != NULL ? t : "?");
                free(t);
            } else {
                printf("%-12s %s\n", k, jtext(v, b, sizeof(b)));
            }
        }
    }
    json_decref(j);
}

/* provgatectl import [--force] [--wait] | import status */
static int
cmd_import(const ctl_t *c, int argc, char **argv)
{
    int force = 0, wait = 0, i, rc;
    char *auth, *before = NULL;
    resp_t r;
    long st;
    progress_t p;
    double limit = (double) c->timeout_s;

    if (has_help(argc, argv)) {
        fputs(IMPORT_HELP, stdout);
        return EX_OK;
    }
    if (argc >= 1 && strcmp(argv[0], "status") == 0) {
        if (argc > 1) {
            return usage_error(IMPORT_HELP, "import status: unexpected "
                               "argument %s", argv[1]);
        }
        rc = get_ok(c, "/import", &r);
        if (rc == EX_OK) {
            print_summary(c, &r);
            resp_clear(&r);
        }
        return rc;
    }
    for (i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--force") == 0) {
            force = 1;
        } else if (strcmp(argv[i], "--wait") == 0) {
            wait = 1;
        } else if (argv[i][0] == '-') {
            return usage_error(IMPORT_HELP, "import: unknown option %s",
                               argv[i]);
        } else {
            return usage_error(IMPORT_HELP, "import: %s: the sidecar has no "
                               "upload endpoint; it imports its configured "
                               "hr_source.file", argv[i]);
        }
    }
    auth = secret_header(c->token_file, "PROVGATE_ADMIN_TOKEN",
                         "Authorization: Bearer ", 1, "admin token", &rc);
    if (auth == NULL) {
        return rc;
    }
    if (wait) {
        rc = get_ok(c, "/import", &r);
        if (rc != EX_OK) {
            secret_free(auth);
            return rc;
        }
        before = r.data;      /* owned from here */
        r.data = NULL;
    }
    rc = call(c, "POST", c->sidecar, force ? "/import?force=1" : "/import",
              auth, NULL, 0, &st, &r);
    secret_free(auth);
    if (rc == EX_OK && st != 202) {
        rc = api_error("POST /import", st, &r);
    }
    resp_clear(&r);
    if (rc != EX_OK || !wait) {
        if (rc == EX_OK && !c->json) {
            printf("import started%s\n", force ? " (forced)" : "");
        } else if (rc == EX_OK) {
            printf("{\"started\": true}\n");
        }
        free(before);
        return rc;
    }
    progress_start(&p, c, "import");
    for (;;) {
        poll_sleep();
        progress_update(&p);
        rc = get_ok(c, "/import", &r);
        if (rc != EX_OK) {
            progress_end(&p, "failed");
            break;
        }
        if (strcmp(r.data, before) != 0) {
            json_t *j = json_loadb(r.data, r.len, 0, NULL);
            const char *s = json_string_value(json_object_get(j, "status"));

            rc = s != NULL && strcmp(s, "ok") == 0 ? EX_OK : EX_FAIL;
            progress_end(&p, rc == EX_OK ? "done" : "failed");
            print_summary(c, &r);
            json_decref(j);
            resp_clear(&r);
            break;
        }
        resp_clear(&r);
        if (progress_elapsed(&p) >= limit) {
            progress_end(&p, "timed out");
            fprintf(stderr, "provgatectl: no new import summary within %lds "
                    "(an unchanged file gives the same summary)\n",
                    c->timeout_s);
            rc = EX_FAIL;
            break;
        }
    }
    free(before);
    return rc;
}

/* ---- events ----------------------------------------------------------- */

/* Read all of stdin, at most cap bytes, into a malloc'd buffer. */
static int
read_stdin(size_t cap, char **out, size_t *outlen)
{
    char *buf = malloc(cap + 1);
    size_t len = 0, n;

    if (buf == NULL) {
        return -1;
    }
    while ((n = fread(buf + len, 1, cap + 1 - len, stdin)) > 0) {
        len += n;
        if (len > cap) {
            free(buf);
            return -2;
        }
    }
    if (ferror(stdin)) {
        free(buf);
        return -1;
    }
    buf[len] = '\0';
    *out = buf;
    *outlen = len;
    return 0;
}

/* provgatectl events send FILE|- */
static int
cmd_events(const ctl_t *c, int argc, char **argv)
{
    char *body = NULL, *auth;
    size_t len = 0;
    pg_err_t err;
    resp_t r;
    long st;
    int rc, n;
    progress_t p;

    if (has_help(argc, argv)) {
        fputs(EVENTS_HELP, stdout);
        return EX_OK;
    }
    if (argc != 2 || strcmp(argv[0], "send") != 0) {
        return usage_error(EVENTS_HELP, "events: expected \"send FILE|-\"%s",
                           NULL);
    }
    memset(&err, 0, sizeof(err));
    if (strcmp(argv[1], "-") == 0) {
        n = read_stdin(EVENT_MAX, &body, &len);
        if (n != 0) {
            fprintf(stderr, "provgatectl: standard input: %s\n",
                    n == -2 ? "larger than 64 KiB" : "read error");
            return EX_FAIL;
        }
    } else if (pg_read_file(argv[1], EVENT_MAX, 0, &body, &len, &err)
               != PG_OK) {
        fprintf(stderr, "provgatectl: %s: %s\n", argv[1], err.msg);
        return EX_FAIL;
    }
    auth = secret_header(c->token_file, "PROVGATE_ADMIN_TOKEN",
                         "Authorization: Bearer ", 1, "admin token", &rc);
    if (auth == NULL) {
        free(body);
        return rc;
    }
    memset(&p, 0, sizeof(p));
    clock_gettime(CLOCK_MONOTONIC, &p.t0);
    for (;;) {
        rc = call(c, "POST", c->sidecar, "/events", auth, body, len, &st, &r);
        if (rc != EX_OK) {
            break;
        }
        if (st == 503 && progress_elapsed(&p) < (double) c->timeout_s) {
            resp_clear(&r);
            poll_sleep();             /* busy: Retry-After 1 */
            poll_sleep();
            poll_sleep();
            poll_sleep();
            continue;
        }
        if (st != 202) {
            rc = api_error("POST /events", st, &r);
        } else if (c->json) {
            print_raw(&r);
        } else {
            printf("event accepted\n");
        }
        resp_clear(&r);
        break;
    }
    secret_free(auth);
    free(body);
    return rc;
}

/* ---- reconcile -------------------------------------------------------- */

/* "/reconcile?target=<escaped T>[&mode=incremental]" (malloc'd) or NULL. */
static char *
recon_path(const char *target, int incremental)
{
    char *esc, *p;
    size_t n;

    if (target == NULL) {
        return strdup("/reconcile");
    }
    esc = curl_easy_escape(NULL, target, 0);
    if (esc == NULL) {
        return NULL;
    }
    n = strlen("/reconcile?target=") + strlen(esc)
        + strlen("&mode=incremental") + 1;
    p = malloc(n);
    if (p != NULL) {
        snprintf(p, n, "/reconcile?target=%s%s", esc,
                 incremental ? "&mode=incremental" : "");
    }
    curl_free(esc);
    return p;
}

/* One report as text: header lines and the counts. */
static void
print_report(const char *target, const json_t *rep)
{
    const char *k;
    json_t *v;
    char b[64];

    printf("%s: status=%s", target,
           jtext(json_object_get(rep, "status"), b, sizeof(b)));
    printf(" mode=%s", jtext(json_object_get(rep, "mode"), b, sizeof(b)));
    printf(" run=%s", jtext(json_object_get(rep, "run"), b, sizeof(b)));
    printf(" accounts=%s",
           jtext(json_object_get(rep, "accounts"), b, sizeof(b)));
    printf(" identities=%s\n",
           jtext(json_object_get(rep, "identities"), b, sizeof(b)));
    if (json_is_string(json_object_get(rep, "error"))) {
        printf("  error: %s\n",
               json_string_value(json_object_get(rep, "error")));
    }
    printf("  findings:");
    json_object_foreach((json_t *) json_object_get(rep, "counts"), k, v) {
        printf(" %s=%s", k, jtext(v, b, sizeof(b)));
    }
    printf("\n  actions:");
    json_object_foreach((json_t *) json_object_get(rep, "actions"), k, v) {
        printf(" %s=%s", k, jtext(v, b, sizeof(b)));
    }
    printf("\n");
}

/* The "run" of T's last report in a GET /reconcile body (malloc'd "" when
 * none). */
static char *
last_run(const json_t *all, const char *target)
{
    const char *r = json_string_value(json_object_get(
        json_object_get(json_object_get(all, "reports"), target), "run"));

    return strdup(r != NULL ? r : "");
}

/* reconcile start: POST, then (unless no_wait) poll until the report. */
static int
recon_start(const ctl_t *c, const char *target, int incremental, int no_wait)
{
    char *auth, *path, *before = NULL, *now;
    resp_t r;
    long st;
    json_t *all, *rep;
    progress_t p;
    char label[300];
    const char *s, *running;
    int rc;

    auth = secret_header(c->token_file, "PROVGATE_ADMIN_TOKEN",
                         "Authorization: Bearer ", 1, "admin token", &rc);
    if (auth == NULL) {
        return rc;
    }
    rc = get_ok(c, "/reconcile", &r);
    if (rc != EX_OK) {
        secret_free(auth);
        return rc;
    }
    all = parse_body("GET /reconcile", &r);
    resp_clear(&r);
    before = all != NULL ? last_run(all, target) : NULL;
    json_decref(all);
    path = recon_path(target, incremental);
    if (before == NULL || path == NULL) {
        secret_free(auth);
        free(before);
        free(path);
        return EX_FAIL;
    }
    rc = call(c, "POST", c->sidecar, path, auth, NULL, 0, &st, &r);
    secret_free(auth);
    free(path);
    if (rc == EX_OK && st != 202) {
        rc = api_error("POST /reconcile", st, &r);
    }
    resp_clear(&r);
    if (rc != EX_OK || no_wait) {
        if (rc == EX_OK) {
            printf(c->json ? "{\"started\": true}\n"
                           : "reconciliation started\n");
        }
        free(before);
        return rc;
    }
    snprintf(label, sizeof(label), "reconcile %s", target);
    progress_start(&p, c, label);
    for (;;) {
        poll_sleep();
        progress_update(&p);
        rc = get_ok(c, "/reconcile", &r);
        if (rc != EX_OK) {
            progress_end(&p, "failed");
            break;
        }
        all = json_loadb(r.data, r.len, 0, NULL);
        resp_clear(&r);
        running = json_string_value(json_object_get(all, "running"));
        now = all != NULL ? last_run(all, target) : NULL;
        if (now != NULL && (running == NULL || strcmp(running, target) != 0)
            && strcmp(now, before) != 0) {
            rep = json_object_get(json_object_get(all, "reports"), target);
            s = json_string_value(json_object_get(rep, "status"));
            rc = s != NULL && strcmp(s, "ok") == 0 ? EX_OK : EX_FAIL;
            progress_end(&p, rc == EX_OK ? "done" : "failed");
            if (c->json) {
                (void) print_json(rep);
            } else {
                print_report(target, rep);
            }
            free(now);
            json_decref(all);
            break;
        }
        free(now);
        json_decref(all);
        if (progress_elapsed(&p) >= (double) c->timeout_s) {
            progress_end(&p, "timed out");
            fprintf(stderr, "provgatectl: no report within %lds (the run "
                    "goes on; see \"reconcile status\")\n", c->timeout_s);
            rc = EX_FAIL;
            break;
        }
    }
    free(before);
    return rc;
}

/* provgatectl reconcile start|status|findings */
static int
cmd_reconcile(const ctl_t *c, int argc, char **argv)
{
    const char *target = NULL, *sub;
    int incremental = 0, no_wait = 0, i, rc;
    char *path;
    resp_t r;
    json_t *j, *f;
    size_t k;
    char b[5][64];

    if (has_help(argc, argv)) {
        fputs(RECONCILE_HELP, stdout);
        return EX_OK;
    }
    if (argc < 1) {
        return usage_error(RECONCILE_HELP, "reconcile: expected start, "
                           "status or findings%s", NULL);
    }
    sub = argv[0];
    if (strcmp(sub, "start") != 0 && strcmp(sub, "status") != 0
        && strcmp(sub, "findings") != 0) {
        return usage_error(RECONCILE_HELP, "reconcile: unknown subcommand %s",
                           sub);
    }
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--target") == 0 && i + 1 < argc) {
            target = argv[++i];
        } else if (strcmp(argv[i], "--full") == 0
                   && strcmp(sub, "start") == 0) {
            incremental = 0;
        } else if (strcmp(argv[i], "--incremental") == 0
                   && strcmp(sub, "start") == 0) {
            incremental = 1;
        } else if (strcmp(argv[i], "--no-wait") == 0
                   && strcmp(sub, "start") == 0) {
            no_wait = 1;
        } else {
            return usage_error(RECONCILE_HELP, "reconcile: unknown or "
                               "incomplete argument %s", argv[i]);
        }
    }
    if (target == NULL && strcmp(sub, "status") != 0) {
        return usage_error(RECONCILE_HELP, "reconcile %s: --target T is "
                           "required", sub);
    }
    if (target != NULL && (*target == '\0' || strlen(target) > 255)) {
        return usage_error(RECONCILE_HELP, "reconcile: bad target name%s",
                           NULL);
    }
    if (strcmp(sub, "start") == 0) {
        return recon_start(c, target, incremental, no_wait);
    }
    path = recon_path(target, 0);
    if (path == NULL) {
        return EX_FAIL;
    }
    rc = get_ok(c, path, &r);
    free(path);
    if (rc != EX_OK) {
        return rc;
    }
    j = parse_body("GET /reconcile", &r);
    if (j == NULL) {
        resp_clear(&r);
        return EX_FAIL;
    }
    if (strcmp(sub, "status") == 0) {
        if (c->json) {
            print_raw(&r);
        } else if (target != NULL) {
            print_report(target, j);
        } else {
            const char *t;
            json_t *rep;

            printf("running: %s  runs: %s  failures: %s\n",
                   jtext(json_object_get(j, "running"), b[0], sizeof(b[0])),
                   jtext(json_object_get(j, "runs"), b[1], sizeof(b[1])),
                   jtext(json_object_get(j, "failures"), b[2], sizeof(b[2])));
            json_object_foreach(json_object_get(j, "reports"), t, rep) {
                print_report(t, rep);
            }
        }
    } else {
        f = json_object_get(j, "findings");
        if (c->json) {
            rc = print_json(f != NULL ? f : json_array());
        } else {
            printf("KIND\tREASON\tACCOUNT\tACTION\tOUTCOME\n");
            for (k = 0; k < json_array_size(f); k++) {
                json_t *x = json_array_get(f, k);

                printf("%s\t%s\t%s\t%s\t%s\n",
                       jtext(json_object_get(x, "kind"), b[0], 64),
                       jtext(json_object_get(x, "reason"), b[1], 64),
                       jtext(json_object_get(x, "account"), b[2], 64),
                       jtext(json_object_get(x, "action"), b[3], 64),
                       jtext(json_object_get(x, "action_outcome"), b[4], 64));
            }
        }
    }
    json_decref(j);
    resp_clear(&r);
    return rc;
}

/* ---- gateway admin API: requests, dlq ------------------------------------ */

/* 1 when id is 1..64 of [A-Za-z0-9_-] (what the admin API routes). */
static int
valid_id(const char *id)
{
    size_t n = strlen(id), i;

    if (n == 0 || n > 64) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        char ch = id[i];

        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z')
              || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_')) {
            return 0;
        }
    }
    return 1;
}

/*
 * requests/dlq: coll is "requests" or "dead"; argv[0] the subcommand.
 * list -> GET coll; ACTION ID -> POST coll/ID/ACTION. The session cookie
 * (optional: without it the API answers 401 login_required) is sent as
 * "Cookie:".
 */
static int
gateway_cmd(const ctl_t *c, const char *help, const char *coll,
            const char *act1, const char *act2, int argc, char **argv)
{
    char *cookie, path[256];
    resp_t r;
    long st;
    json_t *j, *x;
    size_t k;
    int rc, list;
    char b[6][64];

    if (has_help(argc, argv)) {
        fputs(help, stdout);
        return EX_OK;
    }
    list = argc == 1 && strcmp(argv[0], "list") == 0;
    if (!list && !(argc == 2 && (strcmp(argv[0], act1) == 0
                                 || strcmp(argv[0], act2) == 0))) {
        return usage_error(help, "unknown or incomplete command%s", NULL);
    }
    if (!list && !valid_id(argv[1])) {
        return usage_error(help, "%s: an ID is 1-64 of A-Z a-z 0-9 _ -",
                           argv[1]);
    }
    if (c->gateway == NULL) {
        return usage_error(help, "--gateway URL (or PROVGATE_GATEWAY) is "
                           "required%s", NULL);
    }
    cookie = secret_header(c->session_file, "PROVGATE_SESSION_COOKIE",
                           "Cookie: ", 0, "session cookie", &rc);
    if (cookie == NULL && rc != EX_OK) {
        return rc;
    }
    if (list) {
        snprintf(path, sizeof(path), "%s", coll);
    } else {
        snprintf(path, sizeof(path), "%s/%s/%s", coll, argv[1], argv[0]);
    }
    rc = call(c, list ? "GET" : "POST", c->gateway, path, cookie, NULL, 0,
              &st, &r);
    secret_free(cookie);
    if (rc != EX_OK) {
        return rc;
    }
    if (st != 200) {
        char what[272];

        snprintf(what, sizeof(what), "%s %s", list ? "GET" : "POST", path);
        rc = api_error(what, st, &r);
        resp_clear(&r);
        return rc;
    }
    if (c->json) {
        print_raw(&r);
        resp_clear(&r);
        return EX_OK;
    }
    j = parse_body(path, &r);
    resp_clear(&r);
    if (j == NULL) {
        return EX_FAIL;
    }
    if (!list) {
        printf("%s: %s\n", argv[1], argv[0]);
    } else if (strcmp(coll, "requests") == 0) {
        printf("RID\tUSER\tTARGET\tITEM\tSTATE\tEXPIRES_AT\n");
        for (k = 0; k < json_array_size(json_object_get(j, coll)); k++) {
            x = json_array_get(json_object_get(j, coll), k);
            printf("%s\t%s\t%s\t", jtext(json_object_get(x, "rid"), b[0], 64),
                   jtext(json_object_get(x, "user"), b[1], 64),
                   jtext(json_object_get(x, "target"), b[2], 64));
            printf("%s:%s\t%s\t%s\n",
                   jtext(json_object_get(x, "type"), b[0], 64),
                   jtext(json_object_get(x, "value"), b[1], 64),
                   jtext(json_object_get(x, "state"), b[2], 64),
                   jtext(json_object_get(x, "expires_at"), b[3], 64));
        }
    } else if (strncmp(coll, "work/", 5) == 0) {
        json_t *items = json_object_get(j, "items");

        printf("ID\tKEY\tOP\tOUTCOME\tSUMMARY\n");
        for (k = 0; k < json_array_size(items); k++) {
            char sum[256];

            x = json_array_get(items, k);
            printf("%s\t%s\t%s\t%s\t%s\n",
                   jtext(json_object_get(x, "id"), b[0], 64),
                   jtext(json_object_get(x, "key"), b[1], 64),
                   jtext(json_object_get(x, "op"), b[2], 64),
                   jtext(json_object_get(x, "outcome"), b[3], 64),
                   jtext(json_object_get(x, "summary"), sum, sizeof(sum)));
        }
    } else {
        printf("ID\tIDENTITY\tTARGET\tKIND\tATTEMPTS\tREASON\n");
        for (k = 0; k < json_array_size(json_object_get(j, coll)); k++) {
            x = json_array_get(json_object_get(j, coll), k);
            printf("%s\t%s\t%s\t%s\t%s\t%s\n",
                   jtext(json_object_get(x, "id"), b[0], 64),
                   jtext(json_object_get(x, "identity"), b[1], 64),
                   jtext(json_object_get(x, "target"), b[2], 64),
                   jtext(json_object_get(x, "kind"), b[3], 64),
                   jtext(json_object_get(x, "attempts"), b[4], 64),
                   jtext(json_object_get(x, "reason"), b[5], 64));
        }
    }
    json_decref(j);
    return EX_OK;
}

/*
 * provgatectl work list T | done T ID | reject T ID: the gateway's work/T
 * endpoints, through gateway_cmd with the target folded into the path.
 */
static int
cmd_work(const ctl_t *c, int argc, char **argv)
{
    char coll[96];
    char *sub[2];

    if (has_help(argc, argv)) {
        fputs(WORK_HELP, stdout);
        return EX_OK;
    }
    if (argc < 2 || !valid_id(argv[1])
        || !((argc == 2 && strcmp(argv[0], "list") == 0)
             || (argc == 3 && (strcmp(argv[0], "done") == 0
                               || strcmp(argv[0], "reject") == 0)))) {
        return usage_error(WORK_HELP, "work: expected \"list TARGET\" or "
                           "\"done|reject TARGET ID\"%s", NULL);
    }
    snprintf(coll, sizeof(coll), "work/%s", argv[1]);
    sub[0] = argv[0];
    sub[1] = argc == 3 ? argv[2] : NULL;
    return gateway_cmd(c, WORK_HELP, coll, "done", "reject", argc - 1, sub);
}

/* ---- identity --------------------------------------------------------- */

/* Unix seconds as "YYYY-MM-DDTHH:MM:SSZ" into buf, or "-". */
static const char *
utc_text(const json_t *v, char *buf, size_t bufsz)
{
    time_t t;
    struct tm tm;

    if (!json_is_integer(v) || bufsz < 21) {
        return "-";
    }
    t = (time_t) json_integer_value(v);
    if (gmtime_r(&t, &tm) == NULL
        || strftime(buf, bufsz, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
        return "-";
    }
    return buf;
}

/* "/identities?<name>=<escaped value>[&iss=<escaped>]" or
 * "/identities/<escaped id>" (name NULL); malloc'd or NULL. */
static char *
identity_path(const char *name, const char *value, const char *iss)
{
    char *esc = curl_easy_escape(NULL, value, 0);
    char *ie = iss != NULL ? curl_easy_escape(NULL, iss, 0) : NULL;
    char *p = NULL;
    size_t n;

    if (esc != NULL && (iss == NULL || ie != NULL)) {
        n = strlen(esc) + (ie != NULL ? strlen(ie) : 0) + 64;
        p = malloc(n);
        if (p != NULL && name == NULL) {
            snprintf(p, n, "/identities/%s", esc);
        } else if (p != NULL) {
            snprintf(p, n, "/identities?%s=%s%s%s", name, esc,
                     ie != NULL ? "&iss=" : "", ie != NULL ? ie : "");
        }
    }
    curl_free(esc);
    curl_free(ie);
    return p;
}

/* The identity view as text. */
static void
print_identity(const json_t *v)
{
    char b[4][64];
    const char *k;
    json_t *x, *a, *it;
    size_t i, j;

    printf("identity    %s\n", jtext(json_object_get(v, "id"), b[0], 64));
    if (strcmp(jtext(json_object_get(v, "state"), b[0], 64), "left") == 0) {
        printf("state       left since %s\n",
               utc_text(json_object_get(v, "left_at"), b[1], 64));
    } else {
        printf("state       active\n");
    }
    printf("hr_key      %s\n", jtext(json_object_get(json_object_get(v,
                                     "attributes"), "hr_key"), b[0], 64));
    printf("source      %s\n", jtext(json_object_get(v, "source"), b[0], 64));
    printf("created     %s\n", utc_text(json_object_get(v, "created"), b[0],
                                        64));
    printf("updated     %s\n", utc_text(json_object_get(v, "updated"), b[0],
                                        64));
    x = json_object_get(v, "login");
    if (json_is_object(x)) {
        printf("login       %s %s\n",
               jtext(json_object_get(x, "issuer"), b[0], 64),
               jtext(json_object_get(x, "subject"), b[1], 64));
    }
    printf("sessions    %s live\n",
           jtext(json_object_get(json_object_get(v, "sessions"), "live"),
                 b[0], 64));
    printf("attributes\n");
    json_object_foreach(json_object_get(v, "attributes"), k, x) {
        if (json_is_array(x)) {
            printf("  %-20s", k);
            json_array_foreach(x, i, it) {
                printf("%s%s", i > 0 ? "," : "", jtext(it, b[0], 64));
            }
            printf("\n");
        } else {
            printf("  %-20s%s\n", k, jtext(x, b[0], 64));
        }
    }
    printf("accounts    TARGET\tID\tUSERNAME\tSTATE\tENTITLEMENTS\n");
    json_object_foreach(json_object_get(v, "accounts"), k, a) {
        printf("  %s\t%s\t%s\t%s\t", k,
               jtext(json_object_get(a, "id"), b[0], 64),
               jtext(json_object_get(a, "username"), b[1], 64),
               jtext(json_object_get(a, "state"), b[2], 64));
        j = 0;
        json_array_foreach(json_object_get(a, "entitlements"), i, it) {
            printf("%s%s", j++ > 0 ? "," : "",
                   jtext(json_object_get(it, "value"), b[0], 64));
        }
        printf("%s\n", j == 0 ? "-" : "");
    }
    printf("jit         TARGET\tTYPE\tVALUE\tEXPIRES_AT\n");
    json_array_foreach(json_object_get(v, "jit"), i, it) {
        printf("  %s\t%s\t%s\t%s\n",
               jtext(json_object_get(it, "target"), b[0], 64),
               jtext(json_object_get(it, "type"), b[1], 64),
               jtext(json_object_get(it, "value"), b[2], 64),
               utc_text(json_object_get(it, "expires_at"), b[3], 64));
    }
    printf("requests    ID\tTARGET\tTYPE\tVALUE\tSTATE\tEXPIRES_AT\n");
    json_array_foreach(json_object_get(v, "access_requests"), i, it) {
        printf("  %s\t%s\t%s\t%s\t%s\t", jtext(json_object_get(it, "id"),
                                               b[0], 64),
               jtext(json_object_get(it, "target"), b[1], 64),
               jtext(json_object_get(it, "type"), b[2], 64),
               jtext(json_object_get(it, "value"), b[3], 64),
               jtext(json_object_get(it, "state"), b[0], 64));
        printf("%s\n", utc_text(json_object_get(it, "expires_at"), b[1], 64));
    }
}

static int
identity_show(const ctl_t *c, const char *auth, int argc, char **argv)
{
    const char *name = NULL, *value = NULL, *iss = NULL;
    char *path, *what;
    json_t *j;
    resp_t r;
    long st;
    int i, rc;

    for (i = 0; i < argc; i++) {
        const char *n = NULL;

        if (strcmp(argv[i], "--hr-key") == 0) {
            n = "hr_key";
        } else if (strcmp(argv[i], "--email") == 0) {
            n = "email";
        } else if (strcmp(argv[i], "--sub") == 0) {
            n = "sub";
        } else if (strcmp(argv[i], "--iss") == 0 && i + 1 < argc
                   && iss == NULL) {
            iss = argv[++i];
            continue;
        } else if (value != NULL || strncmp(argv[i], "--", 2) == 0
                   || (argv[i][0] == '-' && !valid_id(argv[i]))) {
            /* identity ids are base64url: one may start with '-' */
            return usage_error(IDENTITY_HELP, "identity show: unexpected %s",
                               argv[i]);
        } else {
            value = argv[i];
            continue;
        }
        if (value != NULL || i + 1 >= argc) {
            return usage_error(IDENTITY_HELP, "identity show: %s needs a "
                               "value (and only one lookup)", argv[i]);
        }
        name = n;
        value = argv[++i];
    }
    if (value == NULL || value[0] == '\0'
        || (iss != NULL && (name == NULL || strcmp(name, "sub") != 0))) {
        return usage_error(IDENTITY_HELP, "identity show: expected ID, "
                           "--hr-key K, --email E or --sub S [--iss I]%s",
                           NULL);
    }
    if (name == NULL && !valid_id(value)) {
        return usage_error(IDENTITY_HELP, "identity show: bad ID %s", value);
    }
    path = identity_path(name, value, iss);
    if (path == NULL) {
        fputs("provgatectl: out of memory\n", stderr);
        return EX_FAIL;
    }
    rc = call(c, "GET", c->sidecar, path, auth, NULL, 0, &st, &r);
    if (rc == EX_OK) {
        if (asprintf(&what, "GET %s", path) < 0) {
            what = NULL;
        }
        if (st != 200) {
            rc = api_error(what != NULL ? what : "GET /identities", st, &r);
        } else if ((j = parse_body("GET /identities", &r)) == NULL) {
            rc = EX_FAIL;
        } else {
            rc = c->json ? print_json(j) : (print_identity(j), EX_OK);
            json_decref(j);
        }
        free(what);
        resp_clear(&r);
    }
    free(path);
    return rc;
}

static int
identity_list(const ctl_t *c, const char *auth, int argc, char **argv)
{
    long limit = 100, got = 0, st;
    int left = 0, i, rc = EX_OK;
    char cursor[32] = "0", path[128], b[4][64];
    char *end;
    json_t *all = json_array(), *j, *it;
    resp_t r;
    size_t k;

    for (i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--left") == 0) {
            left = 1;
        } else if (strcmp(argv[i], "--limit") == 0 && i + 1 < argc) {
            errno = 0;
            limit = strtol(argv[++i], &end, 10);
            if (errno != 0 || end == argv[i] || *end != '\0' || limit < 1
                || limit > 100000) {
                json_decref(all);
                return usage_error(IDENTITY_HELP, "identity list: --limit: "
                                   "1..100000%s", NULL);
            }
        } else {
            json_decref(all);
            return usage_error(IDENTITY_HELP, "identity list: unexpected %s",
                               argv[i]);
        }
    }
    if (all == NULL) {
        return EX_FAIL;
    }
    do {
        long want = limit - got > 1000 ? 1000 : limit - got;
        const char *nc;

        snprintf(path, sizeof(path), "/identities?limit=%ld&cursor=%s%s",
                 want, cursor, left ? "&left=1" : "");
        rc = call(c, "GET", c->sidecar, path, auth, NULL, 0, &st, &r);
        if (rc != EX_OK) {
            break;
        }
        if (st != 200) {
            rc = api_error("GET /identities", st, &r);
            resp_clear(&r);
            break;
        }
        j = parse_body("GET /identities", &r);
        resp_clear(&r);
        nc = json_string_value(json_object_get(j, "cursor"));
        if (j == NULL || nc == NULL || strlen(nc) >= sizeof(cursor)) {
            json_decref(j);
            rc = EX_FAIL;
            break;
        }
        json_array_foreach(json_object_get(j, "identities"), k, it) {
            if (got < limit) {
                json_array_append(all, it);
                got++;
            }
        }
        snprintf(cursor, sizeof(cursor), "%s", nc);
        json_decref(j);
    } while (got < limit && strcmp(cursor, "0") != 0);
    if (rc == EX_OK && c->json) {
        j = json_pack("{s:O}", "identities", all);
        rc = j != NULL ? print_json(j) : EX_FAIL;
        json_decref(j);
    } else if (rc == EX_OK) {
        printf("ID\tSTATE\tLEFT_AT\tUSERNAME\tEMAIL\tHR_KEY\n");
        json_array_foreach(all, k, it) {
            printf("%s\t%s\t%s\t", jtext(json_object_get(it, "id"), b[0], 64),
                   jtext(json_object_get(it, "state"), b[1], 64),
                   utc_text(json_object_get(it, "left_at"), b[2], 64));
            printf("%s\t%s\t%s\n",
                   jtext(json_object_get(it, "username"), b[0], 64),
                   jtext(json_object_get(it, "email"), b[1], 64),
                   jtext(json_object_get(it, "hr_key"), b[2], 64));
        }
    }
    json_decref(all);
    return rc;
}

/* provgatectl identity show ... | list ...: the sidecar's GET /identities
 * (admin token). */
static int
cmd_identity(const ctl_t *c, int argc, char **argv)
{
    char *auth;
    int rc;

    if (has_help(argc, argv)) {
        fputs(IDENTITY_HELP, stdout);
        return EX_OK;
    }
    if (argc < 1 || (strcmp(argv[0], "show") != 0
                     && strcmp(argv[0], "list") != 0)) {
        return usage_error(IDENTITY_HELP, "identity: expected \"show\" or "
                           "\"list\"%s", NULL);
    }
    if (strcmp(argv[0], "show") == 0 && argc < 2) {
        return usage_error(IDENTITY_HELP, "identity show: expected ID, "
                           "--hr-key K, --email E or --sub S%s", NULL);
    }
    auth = secret_header(c->token_file, "PROVGATE_ADMIN_TOKEN",
                         "Authorization: Bearer ", 1, "admin token", &rc);
    if (auth == NULL) {
        return rc;
    }
    rc = strcmp(argv[0], "show") == 0
             ? identity_show(c, auth, argc - 1, argv + 1)
             : identity_list(c, auth, argc - 1, argv + 1);
    secret_free(auth);
    return rc;
}

/* provgatectl cases list | link ID --identity IID | new ID | dismiss ID:
 * the sidecar's /cases (admin token). */
static int
cmd_cases(const ctl_t *c, int argc, char **argv)
{
    char *auth, *esc = NULL, *ie = NULL, path[512], b[4][64];
    const char *id = NULL, *identity = NULL;
    json_t *j, *it, *v;
    size_t k, m;
    long st;
    int rc, i;
    resp_t r;

    if (has_help(argc, argv)) {
        fputs(CASES_HELP, stdout);
        return EX_OK;
    }
    if (argc < 1 || (strcmp(argv[0], "list") != 0
                     && strcmp(argv[0], "link") != 0
                     && strcmp(argv[0], "new") != 0
                     && strcmp(argv[0], "dismiss") != 0)) {
        return usage_error(CASES_HELP, "cases: expected \"list\", \"link\", "
                           "\"new\" or \"dismiss\"%s", NULL);
    }
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--identity") == 0 && i + 1 < argc) {
            identity = argv[++i];
        } else if (id == NULL && argv[i][0] != '-') {
            id = argv[i];
        } else {
            return usage_error(CASES_HELP, "cases: unexpected %s", argv[i]);
        }
    }
    if (strcmp(argv[0], "list") != 0 && id == NULL) {
        return usage_error(CASES_HELP, "cases %s: expected the case ID",
                           argv[0]);
    }
    if (strcmp(argv[0], "link") == 0 && identity == NULL) {
        return usage_error(CASES_HELP, "cases link: --identity IID is "
                           "required%s", NULL);
    }
    if ((strcmp(argv[0], "list") == 0 && id != NULL)
        || (strcmp(argv[0], "link") != 0 && identity != NULL)) {
        return usage_error(CASES_HELP, "cases %s: unexpected arguments",
                           argv[0]);
    }
    auth = secret_header(c->token_file, "PROVGATE_ADMIN_TOKEN",
                         "Authorization: Bearer ", 1, "admin token", &rc);
    if (auth == NULL) {
        return rc;
    }
    if (strcmp(argv[0], "list") == 0) {
        rc = call(c, "GET", c->sidecar, "/cases", auth, NULL, 0, &st, &r);
        secret_free(auth);
        if (rc != EX_OK) {
            return rc;
        }
        if (st != 200) {
            rc = api_error("GET /cases", st, &r);
            resp_clear(&r);
            return rc;
        }
        j = parse_body("GET /cases", &r);
        resp_clear(&r);
        if (j == NULL) {
            return EX_FAIL;
        }
        if (c->json) {
            rc = print_json(j);
        } else {
            printf("CASE\tHR_KEY\tKIND\tCANDIDATES\n");
            json_array_foreach(json_object_get(j, "cases"), k, it) {
                printf("%s\t%s\t%s\t",
                       jtext(json_object_get(it, "id"), b[0], 64),
                       jtext(json_object_get(it, "hr_key"), b[1], 64),
                       jtext(json_object_get(it, "kind"), b[2], 64));
                json_array_foreach(json_object_get(it, "candidates"), m, v) {
                    printf("%s%s", m > 0 ? "," : "", jtext(v, b[3], 64));
                }
                printf("\n");
            }
        }
        json_decref(j);
        return rc;
    }
    esc = curl_easy_escape(NULL, id, 0);
    ie = identity != NULL ? curl_easy_escape(NULL, identity, 0) : NULL;
    if (esc == NULL || (identity != NULL && ie == NULL)
        || snprintf(path, sizeof(path), "/cases/%s?action=%s%s%s", esc,
                    argv[0], ie != NULL ? "&identity=" : "",
                    ie != NULL ? ie : "") >= (int) sizeof(path)) {
        curl_free(esc);
        curl_free(ie);
        secret_free(auth);
        return usage_error(CASES_HELP, "cases: ID or IID too long%s", NULL);
    }
    curl_free(esc);
    curl_free(ie);
    rc = call(c, "POST", c->sidecar, path, auth, "{}", 2, &st, &r);
    secret_free(auth);
    if (rc != EX_OK) {
        return rc;
    }
    if (st != 202) {
        rc = api_error("POST /cases", st, &r);
        resp_clear(&r);
        return rc;
    }
    resp_clear(&r);
    if (c->json) {
        j = json_pack("{s:s, s:s, s:b}", "case", id, "action", argv[0],
                      "accepted", 1);
        rc = j != NULL ? print_json(j) : EX_FAIL;
        json_decref(j);
    } else {
        printf("case %s: %s accepted\n", id, argv[0]);
    }
    return rc;
}

/* ---- main ------------------------------------------------------------- */

/*
 * Take the global options out of argv (anywhere up to a "--"), leaving the
 * rest in order in rest[] (*nrest entries, argv strings borrowed).
 * EX_OK or EX_USAGE (message printed).
 */
static int
global_opts(int argc, char **argv, ctl_t *c, char **rest, int *nrest)
{
    static const char *const names[] = { "--sidecar", "--gateway",
                                         "--token-file", "--session-file",
                                         "--timeout" };
    const char *val;
    size_t k, nl;
    int i, n = 0, done = 0, matched;
    long t;
    char *end;

    for (i = 1; i < argc; i++) {
        matched = 0;
        if (!done && strcmp(argv[i], "--") == 0) {
            done = 1;
            continue;
        }
        if (!done && strcmp(argv[i], "--json") == 0) {
            c->json = 1;
            continue;
        }
        for (k = 0; !done && k < sizeof(names) / sizeof(names[0]); k++) {
            nl = strlen(names[k]);
            if (strncmp(argv[i], names[k], nl) != 0
                || (argv[i][nl] != '\0' && argv[i][nl] != '=')) {
                continue;
            }
            if (argv[i][nl] == '=') {
                val = argv[i] + nl + 1;
            } else if (i + 1 < argc) {
                val = argv[++i];
            } else {
                fprintf(stderr, "provgatectl: %s needs a value\n", names[k]);
                return EX_USAGE;
            }
            matched = 1;
            if (k == 0) {
                c->sidecar = val;
            } else if (k == 1) {
                c->gateway = val;
            } else if (k == 2) {
                c->token_file = val;
            } else if (k == 3) {
                c->session_file = val;
            } else {
                errno = 0;
                t = strtol(val, &end, 10);
                if (errno != 0 || end == val || *end != '\0' || t < 1
                    || t > 86400) {
                    fprintf(stderr, "provgatectl: --timeout: 1..86400 "
                            "seconds\n");
                    return EX_USAGE;
                }
                c->timeout_s = t;
            }
            break;
        }
        if (!matched) {
            rest[n++] = argv[i];
        }
    }
    *nrest = n;
    return EX_OK;
}

int
main(int argc, char **argv)
{
    ctl_t c;
    char **rest;
    int n = 0, rc;
    const char *cmd;

    if (argc >= 2 && strcmp(argv[1], "policy") == 0) {
        return cmd_policy(argc, argv);   /* offline; options of its own */
    }
    memset(&c, 0, sizeof(c));
    c.sidecar = DEFAULT_SIDECAR;
    c.gateway = getenv("PROVGATE_GATEWAY");
    c.timeout_s = DEFAULT_TIMEOUT_S;
    /* rest[0] is the program name, the command and its arguments follow */
    rest = calloc((size_t) argc + 2, sizeof(*rest));
    if (rest == NULL) {
        fputs("provgatectl: out of memory\n", stderr);
        return EX_FAIL;
    }
    rest[0] = argv[0];
    rc = global_opts(argc, argv, &c, rest + 1, &n);
    if (rc != EX_OK || n == 0) {
        if (rc == EX_OK) {
            fputs(USAGE, stderr);
        }
        free(rest);
        return rc != EX_OK ? rc : EX_USAGE;
    }
    cmd = rest[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0
        || strcmp(cmd, "help") == 0) {
        fputs(USAGE, stdout);
        free(rest);
        return EX_OK;
    }
    if (strcmp(cmd, "policy") == 0) {   /* global options before it */
        rc = cmd_policy(n + 1, rest);
        free(rest);
        return rc;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fputs("provgatectl: curl_global_init failed\n", stderr);
        free(rest);
        return EX_FAIL;
    }
    if (strcmp(cmd, "status") == 0) {
        rc = cmd_status(&c, n - 1, rest + 2);
    } else if (strcmp(cmd, "import") == 0) {
        rc = cmd_import(&c, n - 1, rest + 2);
    } else if (strcmp(cmd, "events") == 0) {
        rc = cmd_events(&c, n - 1, rest + 2);
    } else if (strcmp(cmd, "reconcile") == 0) {
        rc = cmd_reconcile(&c, n - 1, rest + 2);
    } else if (strcmp(cmd, "requests") == 0) {
        rc = gateway_cmd(&c, REQUESTS_HELP, "requests", "approve", "deny",
                         n - 1, rest + 2);
    } else if (strcmp(cmd, "dlq") == 0) {
        rc = gateway_cmd(&c, DLQ_HELP, "dead", "retry", "discard", n - 1,
                         rest + 2);
    } else if (strcmp(cmd, "work") == 0) {
        rc = cmd_work(&c, n - 1, rest + 2);
    } else if (strcmp(cmd, "identity") == 0) {
        rc = cmd_identity(&c, n - 1, rest + 2);
    } else if (strcmp(cmd, "cases") == 0) {
        rc = cmd_cases(&c, n - 1, rest + 2);
    } else {
        rc = usage_error(USAGE, "unknown command %s", cmd);
    }
    fflush(stdout);
    curl_global_cleanup();
    free(rest);
    return rc;
}
