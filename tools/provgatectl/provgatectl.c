/*
 * provgatectl: offline administration commands over the provgate core.
 *
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
 * Exit status: 0 ok, 1 policy or identity error, 2 usage error.
 * Build: see docs/policies.md ("provgatectl").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "provgate/policy.h"
#include "provgate/util.h"

#define IDENTITY_MAX (1024u * 1024u)   /* identity file cap */

static const char USAGE[] =
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

int
main(int argc, char **argv)
{
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 ||
                      strcmp(argv[1], "-h") == 0)) {
        fputs(USAGE, stdout);
        return 0;
    }
    if (argc < 3 || strcmp(argv[1], "policy") != 0) {
        fputs(USAGE, stderr);
        return 2;
    }
    if (strcmp(argv[2], "check") == 0) {
        return cmd_check(argc - 3, argv + 3);
    }
    if (strcmp(argv[2], "explain") == 0) {
        return cmd_explain(argc - 3, argv + 3);
    }
    if (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0) {
        fputs(USAGE, stdout);
        return 0;
    }
    fputs(USAGE, stderr);
    return 2;
}
