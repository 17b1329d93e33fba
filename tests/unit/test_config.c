/*
 * Unit tests: configuration loader (src/config), pg_read_file (src/util/file.c).
 *
 * Good configurations come from tests/unit/fixtures/config/. Bad ones are
 * made from a valid base configuration in a private temp dir by applying
 * small patches, so each case changes exactly one thing; every case
 * asserts the exact "<file>: <json path>: " prefix and the reason text.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include <openssl/evp.h>
#include "provgate/config.h"
#include "provgate/policy.h"
#include "provgate/saml.h"

static char g_fix[PATH_MAX];   /* tests/unit/fixtures/config (absolute) */
static char g_root[PATH_MAX];  /* repository root (absolute) */
static char g_tmp[PATH_MAX];   /* private temp dir of this run */

/* ---- helpers ---------------------------------------------------------- */

/* snprintf that fails the test on truncation. */
static void fmt(char *out, size_t n, const char *f, ...) PG_PRINTF(3, 4);
static void
fmt(char *out, size_t n, const char *f, ...)
{
    va_list ap;
    int r;

    va_start(ap, f);
    r = vsnprintf(out, n, f, ap);
    va_end(ap);
    assert_true(r >= 0 && (size_t)r < n);
}

static int
is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* Locate the fixtures: $PG_TEST_FIXTURES, next to this source file, or
 * relative to the binary (build/unit/test_config or build/unit-asan/...). */
static void
find_fixtures(void)
{
    char cand[PATH_MAX], exe[PATH_MAX];
    const char *env = getenv("PG_TEST_FIXTURES");
    ssize_t n;

    if (env != NULL) {
        fmt(cand, sizeof(cand), "%s/config", env);
    } else {
        char src[PATH_MAX];
        fmt(src, sizeof(src), "%s", __FILE__);
        *strrchr(src, '/') = '\0';
        fmt(cand, sizeof(cand), "%s/fixtures/config", src);
        if (!is_dir(cand)) {
            n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
            assert_true(n > 0);
            exe[n] = '\0';
            *strrchr(exe, '/') = '\0';
            fmt(cand, sizeof(cand), "%s/../../tests/unit/fixtures/config",
                     exe);
        }
    }
    assert_non_null(realpath(cand, g_fix));
    fmt(cand, sizeof(cand), "%s/../../../..", g_fix);
    assert_non_null(realpath(cand, g_root));
}

static void
write_file(const char *dir, const char *name, const char *data, size_t n)
{
    char p[PATH_MAX];
    FILE *f;

    fmt(p, sizeof(p), "%s/%s", dir, name);
    f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static void
write_str(const char *dir, const char *name, const char *s)
{
    write_file(dir, name, s, strlen(s));
}

static void
copy_file(const char *from, const char *dir, const char *name)
{
    char *data = NULL;
    size_t n = 0;
    pg_err_t e;

    assert_int_equal(pg_read_file(from, 1u << 20, 0, &data, &n, &e), PG_OK);
    write_file(dir, name, data, n);
    free(data);
}

static int
rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int
setup_tmp(void **state)
{
    (void)state;
    fmt(g_tmp, sizeof(g_tmp), "/tmp/pg_test_config.XXXXXX");
    if (mkdtemp(g_tmp) == NULL) {
        return -1;
    }
    find_fixtures();
    return 0;
}

static int
teardown_tmp(void **state)
{
    (void)state;
    return nftw(g_tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- the valid base configuration for bad-config cases --------------- */

static const char base_json[] =
    "{"
    " \"session\": {\"key_file\": \"k.key\"},"
    " \"idps\": {\"corp\": {\"type\": \"oidc\","
    "   \"issuer\": \"https://idp.example\", \"client_id\": \"gw\","
    "   \"client_secret\": \"s3\","
    "   \"redirect_uri\": \"https://app.example/cb\"}},"
    " \"targets\": {\"app\": {\"type\": \"scim\","
    "   \"base_url\": \"https://app.example/scim/v2\","
    "   \"auth\": {\"type\": \"bearer\", \"token\": \"t0k\"},"
    "   \"attributes\": {\"userName\": \"${username}\","
    "                  \"emails\": \"${email}\"}}},"
    " \"policy_files\": [\"p.json\"]"
    "}";

static const char base_policy[] =
    "{\"policies\": [{\"id\": \"all\", \"kind\": \"birthright\","
    " \"who\": {\"all\": []}, \"grants\": [{\"target\": \"app\"}]}]}";

/* Fresh case directory with the base files; returns its config path. */
static void
prepare_case_dir(char *dir, size_t dn, char *cfgpath, size_t cn, int idx)
{
    fmt(dir, dn, "%s/case%d", g_tmp, idx);
    assert_int_equal(mkdir(dir, 0700), 0);
    write_str(dir, "k.key", "0123456789abcdef0123456789abcdef-session-key");
    write_str(dir, "short.key", "0123456789abcdef0123456789abcde");
    write_str(dir, "secret.txt", "file-secret\n");
    write_str(dir, "empty.txt", "\n");
    write_str(dir, "p.json", base_policy);
    fmt(cfgpath, cn, "%s/c.json", dir);
}

/*
 * Apply a patch: path is '/'-separated object keys (created as needed);
 * value is JSON text (any type) or NULL to delete the member.
 */
static void
apply_patch(json_t *root, const char *path, const char *value)
{
    char buf[512], *save = NULL, *tok, *next;
    json_t *cur = root, *v;
    json_error_t je;

    fmt(buf, sizeof(buf), "%s", path);
    tok = strtok_r(buf, "/", &save);
    while (tok != NULL) {
        next = strtok_r(NULL, "/", &save);
        if (next == NULL) {
            if (value == NULL) {
                json_object_del(cur, tok);
            } else {
                v = json_loads(value, JSON_DECODE_ANY, &je);
                if (v == NULL) {
                    fail_msg("bad patch value %s: %s", value, je.text);
                }
                assert_int_equal(json_object_set_new(cur, tok, v), 0);
            }
            return;
        }
        v = json_object_get(cur, tok);
        if (v == NULL) {
            v = json_object();
            assert_int_equal(json_object_set_new(cur, tok, v), 0);
        }
        cur = v;
        tok = next;
    }
}

/* 201 bytes: one over the display_name cap */
#define DN10 "0123456789"
#define DN201 DN10 DN10 DN10 DN10 DN10 DN10 DN10 DN10 DN10 DN10 \
              DN10 DN10 DN10 DN10 DN10 DN10 DN10 DN10 DN10 DN10 "x"

typedef struct bad_case {
    const char *patches[6];   /* path, value, path, value, ...; NULL ends */
    int del_mask;             /* bit i: patch i deletes (value ignored) */
    int in_policy;            /* message is prefixed by p.json, not c.json */
    const char *expect;       /* "<json path>: <reason substring>" */
} bad_case_t;

#define DEL 1
static const bad_case_t bad_cases[] = {
    /* unknown fields */
    {{"bogus", "1"}, 0, 0, "$.bogus: unknown field"},
    /* the IdP choice page's label */
    {{"idps/corp/display_name", "\"\""}, 0, 0,
     "$.idps.corp.display_name: "},
    {{"idps/corp/display_name", "7"}, 0, 0, "$.idps.corp.display_name: "},
    {{"idps/corp/display_name", "\"a\\nb\""}, 0, 0,
     "$.idps.corp.display_name: must not contain control characters"},
    {{"idps/corp/display_name", "\"" DN201 "\""}, 0, 0,
     "$.idps.corp.display_name: longer than 200 bytes"},
    {{"idps/corp/scope", "[\"openid\"]"}, 0, 0,
     "$.idps.corp.scope: unknown field"},
    {{"targets/app/auth/tokn", "\"x\""}, 0, 0,
     "$.targets.app.auth.tokn: unknown field"},
    {{"redis/hostname", "\"x\""}, 0, 0, "$.redis.hostname: unknown field"},
    {{"identity/correlation", "[{\"claim\":\"email\",\"index\":\"e\","
      "\"verify\":true}]"}, 0, 0,
     "$.identity.correlation[0].verify: unknown field"},
    {{"outbox/retries", "3"}, 0, 0, "$.outbox.retries: unknown field"},
    /* outbox delivery */
    {{"targets/app/delivery", "\"later\""}, 0, 0,
     "$.targets.app.delivery: must be \"outbox\" or \"direct\""},
    {{"targets/app/on_slow", "\"wait\""}, 0, 0,
     "$.targets.app.on_slow: must be \"block\" or \"proceed\""},
    {{"targets/app/wait_ms", "700000"}, 0, 0,
     "$.targets.app.wait_ms: must be between 0 and 600000"},
    {{"outbox/dedup_ttl_s", "7200"}, 0, 0,
     "$.outbox.dedup_ttl_s: must not exceed status_ttl_s (3600)"},
    {{"outbox/backoff_base_ms", "5000", "outbox/backoff_max_ms", "1000"}, 0, 0,
     "$.outbox.backoff_base_ms: must not exceed backoff_max_ms (1000)"},
    {{"outbox/consume", "1"}, 0, 0, "$.outbox.consume: must be true or false"},
    /* SCIM discovery and dialect */
    {{"targets/app/discovery", "\"yes\""}, 0, 0,
     "$.targets.app.discovery: must be true or false"},
    {{"targets/app/dialect", "[]"}, 0, 0,
     "$.targets.app.dialect: must be an object"},
    {{"targets/app/dialect", "{\"put\": true}"}, 0, 0,
     "$.targets.app.dialect.put: unknown field"},
    {{"targets/app/dialect", "{\"member_remove\": \"path\"}"}, 0, 0,
     "$.targets.app.dialect.member_remove: must be \"filter\" or \"value\""},
    {{"targets/app/bulk", "true"}, 0, 0,
     "$.targets.app.bulk: needs \"discovery\": true"},
    {{"targets/app/bulk", "1"}, 0, 0, "$.targets.app.bulk: must be true or false"},
    {{"hr_source", "{\"file\": \"hr.csv\", \"lease_s\": 2, \"feed\": "
      "{\"key_column\": \"id\", \"attributes\": {\"m\": \"email\"}}}"},
     0, 0, "$.hr_source.lease_s: must be between 3 and 3600"},
    {{"hr_source", "{\"file\": \"hr.csv\", \"drop_dir\": \".\", \"feed\": "
      "{\"key_column\": \"id\", \"attributes\": {\"m\": \"email\"}}}"},
     0, 0, "$.hr_source: set exactly one of \"file\""},
    {{"hr_source", "{\"feed\": {\"key_column\": \"id\", \"attributes\": "
      "{\"m\": \"email\"}}}"},
     0, 0, "$.hr_source: set exactly one of \"file\""},
    {{"hr_source", "{\"drop_dir\": \"k.key\", \"feed\": {\"key_column\": "
      "\"id\", \"attributes\": {\"m\": \"email\"}}}"},
     0, 0, "$.hr_source.drop_dir: not a directory"},
    /* SCIM retries */
    {{"targets/app/retry", "3"}, 0, 0, "$.targets.app.retry: must be an object"},
    {{"targets/app/retry", "{\"attempts\": 3}"}, 0, 0,
     "$.targets.app.retry.attempts: unknown field"},
    {{"targets/app/retry", "{\"max_attempts\": 11}"}, 0, 0,
     "$.targets.app.retry.max_attempts: must be between 1 and 10"},
    {{"targets/app/retry", "{\"base_ms\": 500, \"max_ms\": 100}"}, 0, 0,
     "$.targets.app.retry.max_ms: must not be below base_ms (500)"},
    /* OAuth 2.0 client credentials */
    {{"targets/app/auth", "{\"type\": \"oauth2\", \"client_id\": \"c\","
      " \"client_secret\": \"s\"}"}, 0, 0,
     "$.targets.app.auth.token_url: missing required field"},
    {{"targets/app/auth", "{\"type\": \"oauth2\", \"token_url\": "
      "\"https://as.example/token\", \"client_secret\": \"s\"}"}, 0, 0,
     "$.targets.app.auth.client_id: missing required field"},
    {{"targets/app/auth", "{\"type\": \"oauth2\", \"token_url\": "
      "\"https://as.example/token\", \"client_id\": \"c\"}"}, 0, 0,
     "$.targets.app.auth.client_secret: missing required field"},
    {{"targets/app/auth", "{\"type\": \"oauth2\", \"token_url\": "
      "\"ftp://as.example/token\", \"client_id\": \"c\", "
      "\"client_secret\": \"s\"}"}, 0, 0,
     "$.targets.app.auth.token_url: "},
    {{"targets/app/auth", "{\"type\": \"oauth2\", \"token_url\": "
      "\"https://as.example/token\", \"client_id\": \"c\", "
      "\"client_secret\": \"s\", \"token\": \"t\"}"}, 0, 0,
     "$.targets.app.auth.token: unknown field"},
    {{"targets/app/auth", "{\"type\": \"oauth2\", \"token_url\": "
      "\"https://as.example/token\", \"client_id\": \"c\", "
      "\"client_secret\": \"s\", \"skew_s\": 4000}"}, 0, 0,
     "$.targets.app.auth.skew_s: must be between 0 and 3600"},
    /* per-target rate limit */
    {{"targets/app/rate_limit", "5"}, 0, 0,
     "$.targets.app.rate_limit: must be an object {\"capacity\", \"per_s\"}"},
    {{"targets/app/rate_limit", "{\"capacity\": 5}"}, 0, 0,
     "$.targets.app.rate_limit.per_s: required"},
    {{"targets/app/rate_limit", "{\"capacity\": 0, \"per_s\": 5}"}, 0, 0,
     "$.targets.app.rate_limit.capacity: must be between 1 and 100000"},
    {{"targets/app/rate_limit", "{\"capacity\": 5, \"per_s\": 5, "
      "\"burst\": 1}"}, 0, 0,
     "$.targets.app.rate_limit.burst: unknown field"},
    {{"targets/app/rate_limit", "{\"capacity\": 5, \"per_s\": 5}",
      "targets/app/delivery", "\"direct\""}, 0, 0,
     "$.targets.app.rate_limit: only applies to \"delivery\": \"outbox\""},
    /* expiry (sidecar) */
    {{"targets/app/deprovision_on_session_end", "{\"action\": \"delete\"}"},
     0, 0, "$.targets.app.deprovision_on_session_end.action: must be "
     "\"disable\" or \"remove_jit\""},
    {{"targets/app/deprovision_on_session_end", "{\"grace\": 5}"}, 0, 0,
     "$.targets.app.deprovision_on_session_end.grace: unknown field"},
    {{"targets/app/deprovision_on_session_end", "true"}, 0, 0,
     "$.targets.app.deprovision_on_session_end: must be an object"},
    {{"targets/app/inactivity_days", "2", "targets/app/inactivity_s", "5"},
     0, 0, "$.targets.app.inactivity_s: not together with inactivity_days"},
    {{"targets/app/delete_after_days", "2", "targets/app/delete_after_s",
      "5"}, 0, 0,
     "$.targets.app.delete_after_s: not together with delete_after_days"},
    {{"targets/app/delete_after_days", "3651"}, 0, 0,
     "$.targets.app.delete_after_days: must be between 0 and 3650"},
    {{"targets/app/delete_after_s", "\"30\""}, 0, 0,
     "$.targets.app.delete_after_s: must be an integer"},
    {{"expiry/sweep_s", "0"}, 0, 0,
     "$.expiry.sweep_s: must be between 1 and 86400"},
    {{"expiry/every", "5"}, 0, 0, "$.expiry.every: unknown field"},
    /* wrong types */
    {{"redis/host", "5"}, 0, 0, "$.redis.host: must be a string"},
    {{"redis/port", "\"6379\""}, 0, 0, "$.redis.port: must be an integer"},
    {{"targets/app/timeout_ms", "1.5"}, 0, 0,
     "$.targets.app.timeout_ms: must be an integer"},
    {{"session/cookie_secure", "\"yes\""}, 0, 0,
     "$.session.cookie_secure: must be true or false"},
    {{"idps/corp/scopes", "\"openid\""}, 0, 0,
     "$.idps.corp.scopes: must be an array of strings"},
    {{"idps/corp/scopes", "[\"openid\", 7]"}, 0, 0,
     "$.idps.corp.scopes[1]: must be a string"},
    {{"audit", "[]"}, 0, 0, "$.audit: must be an object"},
    {{"idps/corp/claims_request", "\"{}\""}, 0, 0,
     "$.idps.corp.claims_request: must be an object"},
    {{"redis/key_prefix", "\"\""}, 0, 0,
     "$.redis.key_prefix: must not be empty"},
    {{"idps/corp/client_id", "\"a\\nb\""}, 0, 0,
     "$.idps.corp.client_id: must not contain control characters"},
    /* numbers out of range */
    {{"redis/port", "70000"}, 0, 0,
     "$.redis.port: must be between 1 and 65535"},
    {{"redis/port", "-1"}, 0, 0, "$.redis.port: must be between 1 and 65535"},
    {{"session/ttl_s", "0"}, 0, 0,
     "$.session.ttl_s: must be between 1 and 2592000"},
    {{"idps/corp/clock_skew_s", "100000"}, 0, 0,
     "$.idps.corp.clock_skew_s: must be between 0 and 600"},
    {{"targets/app/connect_timeout_ms", "9000", "targets/app/timeout_ms",
      "8000"}, 0, 0,
     "$.targets.app.connect_timeout_ms: must not exceed timeout_ms"},
    /* missing required */
    {{"idps/corp/issuer", NULL}, DEL, 0,
     "$.idps.corp.issuer: missing required field"},
    {{"idps/corp/client_id", NULL}, DEL, 0,
     "$.idps.corp.client_id: missing required field"},
    {{"idps/corp/redirect_uri", NULL}, DEL, 0,
     "$.idps.corp.redirect_uri: missing required field"},
    {{"idps/corp/type", NULL}, DEL, 0,
     "$.idps.corp.type: missing required field"},
    {{"session", NULL}, DEL, 0, "$.session: missing required section"},
    {{"session/key_file", NULL}, DEL, 0,
     "$.session.key_file: missing required field"},
    {{"idps", NULL}, DEL, 0, "$.idps: missing required section"},
    {{"idps", "{}"}, 0, 0, "$.idps: must define 1 to 32"},
    {{"targets/app/auth", NULL}, DEL, 0,
     "$.targets.app.auth: missing required field"},
    {{"targets/app/base_url", NULL}, DEL, 0,
     "$.targets.app.base_url: missing required field"},
    {{"identity/correlation", "[{\"claim\":\"email\"}]"}, 0, 0,
     "$.identity.correlation[0].index: missing required field"},
    /* URLs */
    {{"idps/corp/redirect_uri", "\"/provgate/callback\""}, 0, 0,
     "$.idps.corp.redirect_uri: must be an absolute http:// or https:// URL"},
    {{"targets/app/base_url", "\"ftp://app.example/scim\""}, 0, 0,
     "$.targets.app.base_url: must be an absolute http:// or https:// URL"},
    {{"idps/corp/issuer", "\"https://\""}, 0, 0,
     "$.idps.corp.issuer: URL has no host"},
    {{"targets/app/base_url", "\"https://u:p@app.example/scim\""}, 0, 0,
     "$.targets.app.base_url: URL must not contain credentials"},
    {{"idps/corp/redirect_uri", "\"https://app.example/cb#frag\""}, 0, 0,
     "$.idps.corp.redirect_uri: URL must not contain a fragment"},
    {{"targets/app/base_url", "\"https://app.example:99999/scim\""}, 0, 0,
     "$.targets.app.base_url: URL has an invalid port"},
    {{"idps/corp/post_logout_redirect_uri", "\"https://a b/\""}, 0, 0,
     "$.idps.corp.post_logout_redirect_uri: URL must not contain spaces"},
    /* algorithms and scopes */
    {{"idps/corp/allowed_algs", "[\"RS256\", \"none\"]"}, 0, 0,
     "$.idps.corp.allowed_algs[1]: alg \"none\" is not allowed"},
    {{"idps/corp/allowed_algs", "[\"HS256\"]"}, 0, 0,
     "$.idps.corp.allowed_algs[0]: symmetric alg \"HS256\" is not allowed"},
    {{"idps/corp/allowed_algs", "[\"RS1\"]"}, 0, 0,
     "$.idps.corp.allowed_algs[0]: unsupported alg \"RS1\""},
    {{"idps/corp/allowed_algs", "[]"}, 0, 0,
     "$.idps.corp.allowed_algs: must not be empty"},
    {{"idps/corp/scopes", "[\"email\", \"profile\"]"}, 0, 0,
     "$.idps.corp.scopes: must contain \"openid\""},
    {{"idps/corp/scopes", "[\"openid\", \"a b\"]"}, 0, 0,
     "$.idps.corp.scopes[1]: a scope must not contain spaces"},
    {{"idps/corp/token_auth", "\"private_key_jwt\""}, 0, 0,
     "$.idps.corp.token_auth: must be \"client_secret_basic\" or"},
    /* types of idps / targets / auth */
    /* an OIDC object relabelled "saml": its OIDC-only fields are unknown */
    {{"idps/corp/type", "\"saml\""}, 0, 0,
     "$.idps.corp.issuer: unknown field"},
    {{"targets/app/type", "\"nis\""}, 0, 0,
     "$.targets.app.type: unknown type \"nis\" (expected scim, rest, ldap, "
     "sql, csv or manual)"},
    /* a SCIM target relabelled "sql": its SCIM-only fields are unknown */
    {{"targets/app/type", "\"sql\""}, 0, 0,
     "$.targets.app.base_url: unknown field"},
    {{"targets/db", "{\"type\": \"sql\", \"key\": \"login\", "
      "\"attributes\": {\"login\": \"${username}\"}}"}, 0, 0,
     "$.targets.db.connector: required (an object)"},
    {{"targets/db", "{\"type\": \"sql\", \"connector\": {}, \"key\": "
      "\"login\", \"attributes\": {\"mail\": \"${email}\"}}"}, 0, 0,
     "$.targets.db.key: \"login\" must be one of the attributes"},
    {{"targets/db", "{\"type\": \"sql\", \"connector\": {}, \"key\": "
      "\"login\", \"leave\": \"forget\", \"attributes\": "
      "{\"login\": \"${username}\"}}"}, 0, 0,
     "$.targets.db.leave: must be \"disable\" or \"delete\""},
    {{"targets/db", "{\"type\": \"sql\", \"connector\": {}, \"key\": "
      "\"login\", \"leave\": \"delete\", \"delete_after_days\": 30, "
      "\"attributes\": {\"login\": \"${username}\"}}"}, 0, 0,
     "$.targets.db.delete_after_days: only with \"leave\": \"disable\" "
     "(with \"delete\" the account is deleted at the leave)"},
    {{"targets/db", "{\"type\": \"sql\", \"connector\": {\"bogus\": 1}, "
      "\"key\": \"login\", \"attributes\": {\"login\": "
      "\"${username}\"}}"}, 0, 0,
     "$.targets.db.connector.bogus: unknown field"},
    /* reconciliation: SCIM targets take a "reconcile" object too */
    {{"targets/app/reconcile", "{\"page_size\": 0}"}, 0, 0,
     "$.targets.app.reconcile.page_size: must be an integer in 1..1000"},
    {{"targets/app/reconcile", "{\"drift\": \"adopt\"}"}, 0, 0,
     "$.targets.app.reconcile.drift: \"adopt\" is only valid for rogue"},
    {{"targets/db", "{\"type\": \"sql\", \"connector\": {}, \"key\": "
      "\"login\", \"reconcile\": {\"page_size\": 50}, \"attributes\": "
      "{\"login\": \"${username}\"}}"}, 0, 0,
     "$.targets.db.reconcile.page_size: only for SCIM targets"},
    {{"targets/app/reconcile", "{\"groups\": \"members\"}"}, 0, 0,
     "$.targets.app.reconcile.groups: must be \"user_attribute\" or "
     "\"group_members\""},
    {{"targets/db", "{\"type\": \"rest\", \"connector\": {}, \"key\": "
      "\"login\", \"delivery\": \"direct\", \"attributes\": "
      "{\"login\": \"${username}\"}}"}, 0, 0,
     "$.targets.db.delivery: rest targets are always provisioned"},
    {{"targets/app/auth", "{\"type\": \"oauth\"}"}, 0, 0,
     "$.targets.app.auth.type: must be \"bearer\", \"basic\", \"oauth2\" "
     "or \"none\""},
    {{"targets/app/auth", "{\"type\": \"basic\", \"username\": \"u\"}"}, 0, 0,
     "$.targets.app.auth.password: missing required field (or "
     "\"password_file\")"},
    {{"targets/app/auth", "{\"type\": \"none\", \"token\": \"x\"}"}, 0, 0,
     "$.targets.app.auth.token: unknown field"},
    /* secrets */
    {{"idps/corp/client_secret_file", "\"secret.txt\""}, 0, 0,
     "$.idps.corp.client_secret: set only one of \"client_secret\" and "
     "\"client_secret_file\""},
    {{"idps/corp/client_secret", NULL}, DEL, 0,
     "$.idps.corp.client_secret: missing required field (or "
     "\"client_secret_file\")"},
    {{"idps/corp/client_secret", NULL, "idps/corp/client_secret_file",
      "\"empty.txt\""}, DEL, 0,
     "$.idps.corp.client_secret_file: secret file is empty"},
    {{"targets/app/auth", "{\"type\": \"bearer\", \"token\": \"a\","
      " \"token_file\": \"secret.txt\"}"}, 0, 0,
     "$.targets.app.auth.token: set only one of"},
    {{"redis/password", "\"x\"", "redis/password_file", "\"secret.txt\""},
     0, 0, "$.redis.password: set only one of"},
    /* session key file */
    {{"session/key_file", "\"short.key\""}, 0, 0,
     "$.session.key_file: key file must hold at least 32 bytes of secret "
     "(has 31)"},
    {{"session/key_file", "\".\""}, 0, 0,
     "$.session.key_file: cannot read \""},
    {{"session/cookie_name", "\"__Host-s\"", "session/cookie_domain",
      "\"example.com\""}, 0, 0,
     "$.session.cookie_name: a \"__Host-\" cookie needs"},
    {{"session/cookie_name", "\"a;b\""}, 0, 0,
     "$.session.cookie_name: must be 1-64 characters of"},
    {{"session/cookie_path", "\"app\""}, 0, 0,
     "$.session.cookie_path: must start with '/'"},
    /* templates and attributes */
    {{"targets/app/attributes/userName", "\"${username\""}, 0, 0,
     "$.targets.app.attributes.userName: invalid template: unterminated "
     "\"${\" at offset 0"},
    {{"targets/app/attributes/displayName", "\"US$ ${name}\""}, 0, 0,
     "$.targets.app.attributes.displayName: invalid template: '$' at "
     "offset 2"},
    {{"targets/app/attributes/title", "null"}, 0, 0,
     "$.targets.app.attributes.title: must not be null"},
    {{"targets/app/attributes/name.givenName", "\"${given_name}\"",
      "targets/app/attributes/name", "\"x\""}, 0, 0,
     "$.targets.app.attributes.name: conflicts with \"name.givenName\""},
    {{"targets/app/attributes", "{\"emails\": \"${email}\"}"}, 0, 0,
     "$.targets.app.attributes: must map \"userName\" (the username_attr)"},
    {{"targets/app/attributes", "{}"}, 0, 0,
     "$.targets.app.attributes: must map 1 to 128 attributes"},
    {{"targets/app/client_cert", "\"secret.txt\""}, 0, 0,
     "$.targets.app.client_key: required when client_cert is set"},
    {{"targets/app/ca_file", "\"nope.pem\""}, 0, 0,
     "$.targets.app.ca_file: cannot read \""},
    /* headers, identity, names */
    {{"headers/user", "\"Authorization\""}, 0, 0,
     "$.headers.user: \"Authorization\" is a reserved HTTP header"},
    {{"headers/email", "\"x-provgate-user\""}, 0, 0,
     "$.headers.email: same header name as $.headers.user"},
    {{"headers/groups", "\"X_Groups\""}, 0, 0,
     "$.headers.groups: must be 1-64 characters of A-Z a-z 0-9 -"},
    {{"headers/user_attr", "\"login\""}, 0, 0,
     "$.headers.user_attr: attribute \"login\" is not mapped in "
     "$.identity.claims"},
    {{"identity/claims", "{\"username\": \"sub\", \"groups\": \"g\"}"}, 0, 0,
     "$.identity.claims.groups: \"groups\" is reserved"},
    {{"identity/claims", "{\"username\": \"a..b\"}"}, 0, 0,
     "$.identity.claims.username: claim path must be"},
    {{"idps/bad name", "{}"}, 0, 0, "$.idps: names must be 1-64 characters"},
    {{"instance", "\"gw 1\""}, 0, 0, "$.instance: must be 1-64 characters"},
    {{"policy_files", "\"p.json\""}, 0, 0,
     "$.policy_files: must be an array of strings"},
    /* hr_source.event_stream (the sidecar's Redis Stream of JML events) */
    {{"hr_source", "{\"file\": \"hr.csv\", \"feed\": {\"key_column\": \"id\", \"attributes\": {\"mail\": \"email\"}}}",
      "hr_source/event_stream", "{\"enabled\": true, \"streem\": \"x\"}"}, 0, 0,
     "$.hr_source.event_stream.streem: unknown field"},
    {{"hr_source", "{\"file\": \"hr.csv\", \"feed\": {\"key_column\": \"id\", \"attributes\": {\"mail\": \"email\"}}}",
      "hr_source/event_stream", "[]"}, 0, 0,
     "$.hr_source.event_stream: must be an object"},
    {{"hr_source", "{\"file\": \"hr.csv\", \"feed\": {\"key_column\": \"id\", \"attributes\": {\"mail\": \"email\"}}}",
      "hr_source/event_stream", "{\"enabled\": 1}"}, 0, 0,
     "$.hr_source.event_stream.enabled: must be true or false"},
    {{"hr_source", "{\"file\": \"hr.csv\", \"feed\": {\"key_column\": \"id\", \"attributes\": {\"mail\": \"email\"}}}",
      "hr_source/event_stream", "{\"stream\": \"jml events\"}"}, 0, 0,
     "$.hr_source.event_stream.stream: must be 1-128 of A-Z a-z 0-9 - _ . :"},
    {{"hr_source", "{\"file\": \"hr.csv\", \"feed\": {\"key_column\": \"id\", \"attributes\": {\"mail\": \"email\"}}}",
      "hr_source/event_stream", "{\"group\": \"\"}"}, 0, 0,
     "$.hr_source.event_stream.group: "},
    {{"hr_source", "{\"file\": \"hr.csv\", \"feed\": {\"key_column\": \"id\", \"attributes\": {\"mail\": \"email\"}}}",
      "hr_source/event_stream", "{\"block_ms\": 0}"}, 0, 0,
     "$.hr_source.event_stream.block_ms: must be between 10 and 30000"},
    {{"hr_source", "{\"file\": \"hr.csv\", \"feed\": {\"key_column\": \"id\", \"attributes\": {\"mail\": \"email\"}}}",
      "hr_source/event_stream", "{\"claim_idle_ms\": 50}"}, 0, 0,
     "$.hr_source.event_stream.claim_idle_ms: must be between 100 and 86400000"},
    {{"hr_source", "{\"file\": \"hr.csv\", \"feed\": {\"key_column\": \"id\", \"attributes\": {\"mail\": \"email\"}}}",
      "hr_source/event_stream", "{\"max_event_bytes\": 2000000}"}, 0, 0,
     "$.hr_source.event_stream.max_event_bytes: must be between 256 and 1048576"},
    /* policy files (messages name the policy file) */
    {{"targets/other", "{\"type\":\"scim\",\"base_url\":\"http://h/s\","
      "\"auth\":{\"type\":\"none\"}}", "policy_files", "[\"p.json\", "
      "\"p.json\"]"}, 0, 1,
     "$.policies[0].id: duplicate policy id \"all\""},
};

/* Run one bad case and check "<file>: <expect>" exactly at the start. */
static void
run_bad_case(int idx, const bad_case_t *bc)
{
    char dir[PATH_MAX], cfgpath[PATH_MAX], want[PG_ERR_MSG_MAX * 2];
    pg_config_t *cfg = (pg_config_t *)1;
    json_error_t je;
    json_t *root;
    pg_err_t err;
    pg_status_t st;
    int i;

    prepare_case_dir(dir, sizeof(dir), cfgpath, sizeof(cfgpath), idx);
    root = json_loads(base_json, 0, &je);
    assert_non_null(root);
    for (i = 0; i < 6 && bc->patches[i] != NULL; i += 2) {
        apply_patch(root, bc->patches[i],
                    (bc->del_mask & (1 << (i / 2))) ? NULL
                                                     : bc->patches[i + 1]);
    }
    assert_int_equal(json_dump_file(root, cfgpath, JSON_INDENT(2)), 0);
    json_decref(root);

    memset(&err, 0, sizeof(err));
    st = pg_config_load(cfgpath, &cfg, &err);
    if (st != PG_ERR_CONFIG) {
        fail_msg("case %d (%s): expected PG_ERR_CONFIG, got %s", idx,
                 bc->expect, pg_status_str(st));
    }
    assert_null(cfg);
    fmt(want, sizeof(want), "%s/%s: %s", dir,
             bc->in_policy ? "p.json" : "c.json", bc->expect);
    if (strncmp(err.msg, want, strlen(want)) != 0) {
        fail_msg("case %d:\n  want prefix: %s\n  got:         %s", idx, want,
                 err.msg);
    }
}

/* The expiry settings of a target and the "expiry" section, parsed. */
static void
test_expiry_settings(void **state)
{
    char dir[PATH_MAX], cfgpath[PATH_MAX];
    pg_config_t *cfg = NULL;
    json_error_t je;
    json_t *root;
    pg_err_t err;

    (void)state;
    prepare_case_dir(dir, sizeof(dir), cfgpath, sizeof(cfgpath), 7001);
    root = json_loads(base_json, 0, &je);
    assert_non_null(root);
    apply_patch(root, "targets/app/deprovision_on_session_end",
                "{\"grace_s\": 30, \"action\": \"remove_jit\"}");
    apply_patch(root, "targets/app/inactivity_days", "2");
    apply_patch(root, "targets/app/delete_after_days", "30");
    apply_patch(root, "expiry", "{\"sweep_s\": 5, \"test_time_divisor\": 60}");
    assert_int_equal(json_dump_file(root, cfgpath, JSON_INDENT(2)), 0);
    json_decref(root);
    memset(&err, 0, sizeof(err));
    if (pg_config_load(cfgpath, &cfg, &err) != PG_OK) {
        fail_msg("%s", err.msg);
    }
    assert_int_equal(pg_config_target(cfg, "app")->deprov_action,
                     PG_DEPROV_REMOVE_JIT);
    assert_int_equal(pg_config_target(cfg, "app")->deprov_grace_s, 30);
    assert_int_equal(pg_config_target(cfg, "app")->inactivity_s, 2 * 86400);
    assert_int_equal(pg_config_target(cfg, "app")->delete_after_s,
                     30 * 86400);
    assert_int_equal(cfg->expiry_sweep_s, 5);
    assert_int_equal(cfg->expiry_test_divisor, 60);
    pg_config_free(cfg);
    /* action defaults to disable, grace_s to 900 */
    root = json_loads(base_json, 0, &je);
    assert_non_null(root);
    apply_patch(root, "targets/app/deprovision_on_session_end", "{}");
    apply_patch(root, "targets/app/inactivity_s", "7");
    apply_patch(root, "targets/app/delete_after_s", "4");
    assert_int_equal(json_dump_file(root, cfgpath, JSON_INDENT(2)), 0);
    json_decref(root);
    if (pg_config_load(cfgpath, &cfg, &err) != PG_OK) {
        fail_msg("%s", err.msg);
    }
    assert_int_equal(pg_config_target(cfg, "app")->deprov_action,
                     PG_DEPROV_DISABLE);
    assert_int_equal(pg_config_target(cfg, "app")->deprov_grace_s, 900);
    assert_int_equal(pg_config_target(cfg, "app")->inactivity_s, 7);
    assert_int_equal(pg_config_target(cfg, "app")->delete_after_s, 4);
    pg_config_free(cfg);
}

/* A SCIM target's "retry" and "auth": {"type": "oauth2"}: defaults, the
 * values as configured, the derived call budget, a secret from a file. */
static void
test_scim_retry_oauth_settings(void **state)
{
    char dir[PATH_MAX], cfgpath[PATH_MAX];
    pg_config_t *cfg = NULL;
    const pg_target_cfg_t *t;
    json_error_t je;
    json_t *root;
    pg_err_t err;

    (void)state;
    prepare_case_dir(dir, sizeof(dir), cfgpath, sizeof(cfgpath), 7003);
    /* defaults: one attempt, budget = timeout_ms */
    root = json_loads(base_json, 0, &je);
    assert_non_null(root);
    assert_int_equal(json_dump_file(root, cfgpath, JSON_INDENT(2)), 0);
    json_decref(root);
    memset(&err, 0, sizeof(err));
    if (pg_config_load(cfgpath, &cfg, &err) != PG_OK) {
        fail_msg("%s", err.msg);
    }
    t = pg_config_target(cfg, "app");
    assert_int_equal(t->retry_attempts, 1);
    assert_int_equal(t->retry_base_ms, 200);
    assert_int_equal(t->retry_max_ms, 10000);
    assert_int_equal(t->call_budget_ms, 5000);
    assert_int_equal(t->auth, PG_AUTH_BEARER);
    assert_null(t->oauth_token_url);
    pg_config_free(cfg);

    root = json_loads(base_json, 0, &je);
    assert_non_null(root);
    apply_patch(root, "targets/app/retry",
                "{\"max_attempts\": 3, \"base_ms\": 50, \"max_ms\": 400}");
    apply_patch(root, "targets/app/timeout_ms", "1000");
    apply_patch(root, "targets/app/auth",
                "{\"type\": \"oauth2\", \"token_url\": "
                "\"https://as.example/oauth/token?tenant=1\", "
                "\"client_id\": \"gw-client\", "
                "\"client_secret_file\": \"secret.txt\", "
                "\"scope\": \"scim.write scim.read\", \"skew_s\": 5}");
    assert_int_equal(json_dump_file(root, cfgpath, JSON_INDENT(2)), 0);
    json_decref(root);
    if (pg_config_load(cfgpath, &cfg, &err) != PG_OK) {
        fail_msg("%s", err.msg);
    }
    t = pg_config_target(cfg, "app");
    assert_int_equal(t->retry_attempts, 3);
    assert_int_equal(t->retry_base_ms, 50);
    assert_int_equal(t->retry_max_ms, 400);
    /* 3 attempts of 1000 ms + 2 waits of at most 400 ms */
    assert_int_equal(t->call_budget_ms, 3800);
    assert_int_equal(t->auth, PG_AUTH_OAUTH2);
    assert_string_equal(t->oauth_token_url,
                        "https://as.example/oauth/token?tenant=1");
    assert_string_equal(t->oauth_client_id, "gw-client");
    assert_string_equal(t->oauth_client_secret, "file-secret");
    assert_string_equal(t->oauth_scope, "scim.write scim.read");
    assert_int_equal(t->oauth_skew_s, 5);
    assert_null(t->bearer_token);
    pg_config_free(cfg);
}

/* hr_source.event_stream: the defaults, and the values as configured. */
static void
test_event_stream_settings(void **state)
{
    char dir[PATH_MAX], cfgpath[PATH_MAX];
    pg_config_t *cfg = NULL;
    json_error_t je;
    json_t *root;
    pg_err_t err;

    (void)state;
    prepare_case_dir(dir, sizeof(dir), cfgpath, sizeof(cfgpath), 7101);
    /* no hr_source at all: the stream is off, the defaults are set */
    root = json_loads(base_json, 0, &je);
    assert_non_null(root);
    assert_int_equal(json_dump_file(root, cfgpath, JSON_INDENT(2)), 0);
    json_decref(root);
    memset(&err, 0, sizeof(err));
    if (pg_config_load(cfgpath, &cfg, &err) != PG_OK) {
        fail_msg("%s", err.msg);
    }
    assert_int_equal(cfg->jml_stream.enabled, 0);
    assert_int_equal(cfg->hr_lease_s, 30);
    assert_string_equal(cfg->jml_stream.stream, "jml:events");
    assert_string_equal(cfg->jml_stream.group, "provgated");
    assert_int_equal(cfg->jml_stream.block_ms, 1000);
    assert_int_equal(cfg->jml_stream.claim_idle_ms, 60000);
    assert_int_equal(cfg->jml_stream.max_event_bytes, 65536);
    pg_config_free(cfg);
    cfg = NULL;
    /* every field set */
    root = json_loads(base_json, 0, &je);
    assert_non_null(root);
    apply_patch(root, "hr_source", "{\"file\": \"hr.csv\", \"lease_s\": 5, "
                "\"feed\": "
                "{\"key_column\": \"id\", \"attributes\": {\"mail\": "
                "\"email\"}}, \"event_stream\": {\"enabled\": true, "
                "\"stream\": \"hr:jml-events.v1\", \"group\": \"sidecars\", "
                "\"block_ms\": 250, \"claim_idle_ms\": 5000, "
                "\"max_event_bytes\": 4096}}");
    assert_int_equal(json_dump_file(root, cfgpath, JSON_INDENT(2)), 0);
    json_decref(root);
    if (pg_config_load(cfgpath, &cfg, &err) != PG_OK) {
        fail_msg("%s", err.msg);
    }
    assert_int_equal(cfg->jml_stream.enabled, 1);
    assert_int_equal(cfg->hr_lease_s, 5);
    assert_string_equal(cfg->jml_stream.stream, "hr:jml-events.v1");
    assert_string_equal(cfg->jml_stream.group, "sidecars");
    assert_int_equal(cfg->jml_stream.block_ms, 250);
    assert_int_equal(cfg->jml_stream.claim_idle_ms, 5000);
    assert_int_equal(cfg->jml_stream.max_event_bytes, 4096);
    pg_config_free(cfg);
}

/* display_name: the IdP's name by default, else the configured text (any
 * characters but control bytes, kept as written: pages escape it). */
static void
test_idp_display_name(void **state)
{
    char dir[PATH_MAX], cfgpath[PATH_MAX];
    pg_config_t *cfg = NULL;
    json_error_t je;
    json_t *root;
    pg_err_t err;

    (void)state;
    prepare_case_dir(dir, sizeof(dir), cfgpath, sizeof(cfgpath), 7002);
    write_str(dir, "c.json", base_json);
    memset(&err, 0, sizeof(err));
    if (pg_config_load(cfgpath, &cfg, &err) != PG_OK) {
        fail_msg("%s", err.msg);
    }
    assert_string_equal(pg_config_idp(cfg, "corp")->display_name, "corp");
    pg_config_free(cfg);
    root = json_loads(base_json, 0, &je);
    assert_non_null(root);
    apply_patch(root, "idps/corp/display_name",
                "\"Corp <Staff> & \\\"Partners\\\"\"");
    assert_int_equal(json_dump_file(root, cfgpath, JSON_INDENT(2)), 0);
    json_decref(root);
    if (pg_config_load(cfgpath, &cfg, &err) != PG_OK) {
        fail_msg("%s", err.msg);
    }
    assert_string_equal(pg_config_idp(cfg, "corp")->display_name,
                        "Corp <Staff> & \"Partners\"");
    pg_config_free(cfg);
}

/* A SAML identity provider: the SP is built at load from the test keys and
 * IdP metadata (tests/unit/fixtures/saml); mistakes fail with their path. */
static const char saml_json[] =
    "{"
    " \"session\": {\"key_file\": \"k.key\"},"
    " \"idps\": {\"corp\": {\"type\": \"saml\","
    "   \"sp_entity_id\": \"https://gw.example/saml\","
    "   \"acs_url\": \"https://gw.example/saml/acs\","
    "   \"sp_key_file\": \"%s/saml/sp-key.pem\","
    "   \"sp_cert_file\": \"%s/saml/sp-cert.pem\","
    "   \"idp_metadata_file\": \"%s/saml/%s\"%s}},"
    " \"targets\": {\"app\": {\"type\": \"scim\","
    "   \"base_url\": \"https://app.example/scim/v2\","
    "   \"auth\": {\"type\": \"none\"},"
    "   \"attributes\": {\"userName\": \"${username}\"}}},"
    " \"policy_files\": [\"p.json\"]"
    "}";

static pg_status_t
load_saml(int idx, const char *metadata, const char *extra, pg_config_t **cfg,
          pg_err_t *err)
{
    char dir[PATH_MAX], cfgpath[PATH_MAX], fix[PATH_MAX], text[4096];

    prepare_case_dir(dir, sizeof(dir), cfgpath, sizeof(cfgpath), idx);
    fmt(fix, sizeof(fix), "%s/..", g_fix);
    fmt(text, sizeof(text), saml_json, fix, fix, fix, metadata, extra);
    write_str(dir, "c.json", text);
    return pg_config_load(cfgpath, cfg, err);
}

static void
test_saml_idp(void **state)
{
    pg_config_t *cfg = NULL;
    pg_err_t err = { "" };
    const pg_idp_cfg_t *idp;

    (void)state;
    if (load_saml(900, "idp-metadata.xml", "", &cfg, &err) != PG_OK) {
        fail_msg("saml config rejected: %s", err.msg);
    }
    idp = pg_config_idp(cfg, "corp");
    assert_non_null(idp);
    assert_int_equal(idp->type, PG_IDP_SAML);
    assert_non_null(idp->saml.sp);
    assert_int_equal(idp->saml.require_signed_assertion, 1);
    assert_int_equal(idp->saml.allow_unsolicited, 0);
    assert_int_equal(idp->saml.clock_skew_s, 60);
    pg_config_free(cfg);

    /* the IdP metadata must be SAML metadata: a PEM key is not */
    assert_int_equal(load_saml(901, "sp-key.pem", "", &cfg, &err),
                     PG_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "$.idps.corp: "));
    assert_int_equal(load_saml(902, "missing.xml", "", &cfg, &err),
                     PG_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "$.idps.corp.idp_metadata_file"));
    assert_int_equal(load_saml(903, "idp-metadata.xml",
                               ", \"require_signed_assertion\": false", &cfg,
                               &err), PG_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "at least one of require_signed"));
    assert_int_equal(load_saml(904, "idp-metadata.xml",
                               ", \"client_id\": \"x\"", &cfg, &err),
                     PG_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "$.idps.corp.client_id: unknown field"));
}

/* IdP-initiated responses name no request, so the ACS path tells which
 * provider they are for: two providers with allow_unsolicited may not share
 * one acs_url path (a query does not make it another path); with one of them
 * solicited-only, or with their own ACS paths, the load succeeds. */
static void
test_saml_unsolicited_acs(void **state)
{
    static const char second[] =
        ", \"allow_unsolicited\": %s},"
        " \"corp2\": {\"type\": \"saml\","
        "   \"sp_entity_id\": \"https://gw.example/saml2\","
        "   \"acs_url\": \"%s\","
        "   \"sp_key_file\": \"%s/../saml/sp-key.pem\","
        "   \"sp_cert_file\": \"%s/../saml/sp-cert.pem\","
        "   \"idp_metadata_file\": \"%s/../saml/idp-metadata.xml\","
        "   \"allow_unsolicited\": %s";
    pg_config_t *cfg = NULL;
    pg_err_t err = { "" };
    char extra[2048];

    (void)state;
    fmt(extra, sizeof(extra), second, "true",
        "https://gw.example/saml/acs?idp=2", g_fix, g_fix, g_fix, "true");
    assert_int_equal(load_saml(930, "idp-metadata.xml", extra, &cfg, &err),
                     PG_ERR_CONFIG);
    assert_non_null(strstr(err.msg, ".allow_unsolicited: "));
    assert_non_null(strstr(err.msg, "also accepts IdP-initiated"));

    fmt(extra, sizeof(extra), second, "true", "https://gw.example/saml/acs",
        g_fix, g_fix, g_fix, "false");
    if (load_saml(931, "idp-metadata.xml", extra, &cfg, &err) != PG_OK) {
        fail_msg("one unsolicited provider per ACS refused: %s", err.msg);
    }
    assert_int_equal(pg_config_idp(cfg, "corp")->saml.allow_unsolicited, 1);
    pg_config_free(cfg);

    fmt(extra, sizeof(extra), second, "true", "https://gw.example/saml/acs2",
        g_fix, g_fix, g_fix, "true");
    if (load_saml(932, "idp-metadata.xml", extra, &cfg, &err) != PG_OK) {
        fail_msg("two ACS paths refused: %s", err.msg);
    }
    pg_config_free(cfg);
}

/* The same SAML IdP with its metadata fields given by the caller. */
static const char saml_url_json[] =
    "{"
    " \"session\": {\"key_file\": \"k.key\"},"
    " \"idps\": {\"corp\": {\"type\": \"saml\","
    "   \"sp_entity_id\": \"https://gw.example/saml\","
    "   \"acs_url\": \"https://gw.example/saml/acs\","
    "   \"sp_key_file\": \"%s/saml/sp-key.pem\","
    "   \"sp_cert_file\": \"%s/saml/sp-cert.pem\"%s}},"
    " \"targets\": {\"app\": {\"type\": \"scim\","
    "   \"base_url\": \"https://app.example/scim/v2\","
    "   \"auth\": {\"type\": \"none\"},"
    "   \"attributes\": {\"userName\": \"${username}\"}}},"
    " \"policy_files\": [\"p.json\"]"
    "}";

static pg_status_t
load_saml_url(int idx, const char *extra, pg_config_t **cfg, pg_err_t *err)
{
    char dir[PATH_MAX], cfgpath[PATH_MAX], fix[PATH_MAX], text[4096];

    prepare_case_dir(dir, sizeof(dir), cfgpath, sizeof(cfgpath), idx);
    fmt(fix, sizeof(fix), "%s/..", g_fix);
    fmt(text, sizeof(text), saml_url_json, fix, fix, extra);
    write_str(dir, "c.json", text);
    *cfg = NULL;
    return pg_config_load(cfgpath, cfg, err);
}

/* idp_metadata_url: an SP-only object at load (SP metadata works, no IdP
 * yet, no SLO context even with slo_url); neither source, a bad URL or
 * URL-only options without a URL are refused with their path. */
static void
test_saml_metadata_url(void **state)
{
    pg_config_t *cfg = NULL;
    pg_err_t err = { "" };
    const pg_idp_cfg_t *idp;
    char extra[PATH_MAX + 256];

    (void)state;
    if (load_saml_url(920, ", \"idp_metadata_url\": "
                      "\"https://idp.example/metadata\", \"slo_url\": "
                      "\"https://gw.example/saml/slo\"", &cfg, &err)
        != PG_OK) {
        fail_msg("saml url config rejected: %s", err.msg);
    }
    idp = pg_config_idp(cfg, "corp");
    assert_non_null(idp->saml.sp);
    assert_false(pg_saml_sp_has_idp(idp->saml.sp));
    assert_null(idp->saml.slo);
    assert_string_equal(idp->saml.idp_metadata_url,
                        "https://idp.example/metadata");
    assert_int_equal(idp->saml.metadata_refresh_s, 3600);
    assert_int_equal(idp->saml.http_timeout_ms, 3000);
    pg_config_free(cfg);

    /* both: the file is the bootstrap copy, checked at load */
    fmt(extra, sizeof(extra), ", \"idp_metadata_url\": "
        "\"http://127.0.0.1:9/md\", \"metadata_refresh_s\": 5, "
        "\"idp_metadata_file\": \"%s/../saml/idp-metadata.xml\"", g_fix);
    if (load_saml_url(921, extra, &cfg, &err) != PG_OK) {
        fail_msg("saml file+url config rejected: %s", err.msg);
    }
    idp = pg_config_idp(cfg, "corp");
    assert_true(pg_saml_sp_has_idp(idp->saml.sp));
    assert_int_equal(idp->saml.metadata_refresh_s, 5);
    pg_config_free(cfg);

    assert_int_equal(load_saml_url(922, "", &cfg, &err), PG_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "$.idps.corp: one of idp_metadata_file "
                                    "and idp_metadata_url is required"));
    assert_int_equal(load_saml_url(923, ", \"idp_metadata_url\": "
                                   "\"ftp://idp.example/md\"", &cfg, &err),
                     PG_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "$.idps.corp.idp_metadata_url: must be "
                                    "an absolute http"));
    assert_int_equal(load_saml_url(924, ", \"idp_metadata_url\": "
                                   "\"metadata.xml\"", &cfg, &err),
                     PG_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "$.idps.corp.idp_metadata_url"));
    assert_int_equal(load_saml_url(925, ", \"idp_metadata_url\": "
                                   "\"https://idp.example/md\", "
                                   "\"metadata_refresh_s\": 0", &cfg, &err),
                     PG_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "$.idps.corp.metadata_refresh_s"));
    fmt(extra, sizeof(extra), ", \"metadata_refresh_s\": 60, "
        "\"idp_metadata_file\": \"%s/../saml/idp-metadata.xml\"", g_fix);
    assert_int_equal(load_saml_url(926, extra, &cfg, &err), PG_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "$.idps.corp.metadata_refresh_s: only "
                                    "meaningful with idp_metadata_url"));
    assert_null(cfg);
}

/* slo_url builds the Single Logout context at load; an IdP metadata without
 * an HTTP-Redirect SingleLogoutService fails the load with a clear message
 * (nginx -t), and without slo_url there is no SLO context at all. */
static void
test_saml_slo(void **state)
{
    pg_config_t *cfg = NULL;
    pg_err_t err = { "" };
    const pg_idp_cfg_t *idp;

    (void)state;
    if (load_saml(910, "../saml_slo/idp-metadata.xml",
                  ", \"slo_url\": \"https://gw.example/saml/slo\"", &cfg,
                  &err) != PG_OK) {
        fail_msg("saml slo config rejected: %s", err.msg);
    }
    idp = pg_config_idp(cfg, "corp");
    assert_non_null(idp);
    assert_non_null(idp->saml.slo);
    assert_string_equal(idp->saml.slo_url, "https://gw.example/saml/slo");
    pg_config_free(cfg);
    cfg = NULL;

    if (load_saml(911, "../saml_slo/idp-metadata.xml", "", &cfg, &err)
        != PG_OK) {
        fail_msg("saml config rejected: %s", err.msg);
    }
    assert_null(pg_config_idp(cfg, "corp")->saml.slo);
    pg_config_free(cfg);
    cfg = NULL;

    err.msg[0] = '\0';
    assert_int_equal(load_saml(912, "../saml_slo/idp-metadata-noslo.xml",
                               ", \"slo_url\": \"https://gw.example/saml/slo\"",
                               &cfg, &err), PG_ERR_CONFIG);
    assert_null(cfg);
    assert_non_null(strstr(err.msg, "$.idps.corp/slo_url: Single Logout"));
    assert_non_null(strstr(err.msg, "idp-metadata-noslo.xml"));
}

static void
test_base_config_is_valid(void **state)
{
    char dir[PATH_MAX], cfgpath[PATH_MAX];
    pg_config_t *cfg = NULL;
    pg_err_t err;

    (void)state;
    prepare_case_dir(dir, sizeof(dir), cfgpath, sizeof(cfgpath), 999);
    write_str(dir, "c.json", base_json);
    if (pg_config_load(cfgpath, &cfg, &err) != PG_OK) {
        fail_msg("base config rejected: %s", err.msg);
    }
    assert_int_equal(cfg->ntargets, 1);
    assert_int_equal(pg_policy_count(cfg->policies), 1);
    pg_config_free(cfg);
}

static void
test_bad_configs(void **state)
{
    size_t i, n = sizeof(bad_cases) / sizeof(bad_cases[0]);

    (void)state;
    assert_true(n >= 25);
    for (i = 0; i < n; i++) {
        run_bad_case((int)i, &bad_cases[i]);
    }
}

/* Raw text cases: syntax errors carry line and column. */
static void
load_raw_expect(const char *name, const char *text, const char *suffix)
{
    char path[PATH_MAX], want[PG_ERR_MSG_MAX * 2];
    pg_config_t *cfg = NULL;
    pg_err_t err;

    write_str(g_tmp, name, text);
    fmt(path, sizeof(path), "%s/%s", g_tmp, name);
    assert_int_equal(pg_config_load(path, &cfg, &err), PG_ERR_CONFIG);
    assert_null(cfg);
    fmt(want, sizeof(want), "%s%s", path, suffix);
    if (strncmp(err.msg, want, strlen(want)) != 0) {
        fail_msg("want prefix: %s\ngot:         %s", want, err.msg);
    }
}

static void
test_syntax_errors(void **state)
{
    (void)state;
    /* the stray "x" is line 3, column 12 */
    load_raw_expect("syn1.json", "{\n  \"instance\": \"gw1\",\n  \"redis\": x\n}",
                    ":3:12: invalid token near 'x'");
    /* missing closing brace: end of input on line 2 */
    load_raw_expect("syn2.json", "{\n  \"instance\": \"gw1\"\n",
                    ":3:0: '}' expected near end of file");
    /* duplicate keys are rejected by the parser, with their position */
    load_raw_expect("dup.json",
                    "{\"instance\": \"a\",\n \"instance\": \"b\"}",
                    ":2:11: duplicate object key near '\"instance\"'");
    load_raw_expect("top.json", "[1, 2]", ": $: must be an object");
    load_raw_expect("empty.json", "", ":1:0: ");
}

static void
test_missing_and_huge_files(void **state)
{
    char path[PATH_MAX];
    pg_config_t *cfg = NULL;
    pg_err_t err;
    int fd;

    (void)state;
    fmt(path, sizeof(path), "%s/does-not-exist.json", g_tmp);
    assert_int_equal(pg_config_load(path, &cfg, &err), PG_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "No such file or directory"));
    assert_null(cfg);

    fmt(path, sizeof(path), "%s/huge.json", g_tmp);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, PG_CONFIG_MAX_FILE + 1), 0);
    close(fd);
    assert_int_equal(pg_config_load(path, &cfg, &err), PG_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "is larger than 4194304 bytes"));

    assert_int_equal(pg_config_load("", &cfg, &err), PG_ERR_CONFIG);
    assert_int_equal(pg_config_load(NULL, &cfg, &err), PG_ERR_CONFIG);
    assert_int_equal(pg_config_load(path, NULL, &err), PG_ERR_INVALID);
}

static void
test_policy_errors_via_config(void **state)
{
    char dir[PATH_MAX], cfgpath[PATH_MAX], want[PG_ERR_MSG_MAX * 2];
    pg_config_t *cfg = NULL;
    pg_err_t err;

    (void)state;
    prepare_case_dir(dir, sizeof(dir), cfgpath, sizeof(cfgpath), 1001);
    write_str(dir, "c.json", base_json);

    /* grant to a target that does not exist */
    write_str(dir, "p.json",
              "{\"policies\": [{\"id\": \"x\", \"kind\": \"birthright\","
              " \"who\": {\"all\": []}, \"grants\": [{\"target\": \"nope\"}]}]}");
    assert_int_equal(pg_config_load(cfgpath, &cfg, &err), PG_ERR_CONFIG);
    fmt(want, sizeof(want), "%s/p.json: $.policies[0].grants[0].target: "
             "unknown target \"nope\"", dir);
    assert_string_equal(err.msg, want);

    /* policy file missing */
    fmt(want, sizeof(want), "%s/p.json", dir);
    assert_int_equal(remove(want), 0);
    assert_int_equal(pg_config_load(cfgpath, &cfg, &err), PG_ERR_CONFIG);
    fmt(want, sizeof(want), "%s/p.json: cannot read \"%s/p.json\": No "
             "such file or directory", dir, dir);
    assert_string_equal(err.msg, want);

    /* syntax error inside a policy file */
    write_str(dir, "p.json", "{\"policies\": [\n  {\"id\": }\n]}");
    assert_int_equal(pg_config_load(cfgpath, &cfg, &err), PG_ERR_CONFIG);
    fmt(want, sizeof(want), "%s/p.json:2:10: ", dir);
    assert_memory_equal(err.msg, want, strlen(want));
    assert_null(cfg);
}

/* ---- good configurations -------------------------------------------- */

static void
fix(char *out, size_t n, const char *rel)
{
    fmt(out, n, "%s/%s", g_fix, rel);
}

static void
test_full_config(void **state)
{
    char path[PATH_MAX], want[PATH_MAX];
    unsigned char md[32];
    unsigned mdlen = 0;
    char *key = NULL;
    size_t keylen = 0;
    pg_config_t *cfg = NULL;
    const pg_idp_cfg_t *idp;
    const pg_oidc_idp_cfg_t *o;
    const pg_target_cfg_t *t;
    pg_err_t err;
    size_t i;

    (void)state;
    fix(path, sizeof(path), "full.json");
    if (pg_config_load(path, &cfg, &err) != PG_OK) {
        fail_msg("full.json: %s", err.msg);
    }
    assert_string_equal(cfg->file, path);
    assert_string_equal(cfg->instance, "gw-test-1");

    /* redis */
    assert_string_equal(cfg->redis.host, "10.0.0.5");
    assert_int_equal(cfg->redis.port, 6380);
    fix(want, sizeof(want), "run/redis.sock");
    assert_string_equal(cfg->redis.unix_path, want);
    assert_string_equal(cfg->redis.username, "provgate");
    assert_string_equal(cfg->redis.password, "redis-pw-from-file");
    assert_int_equal(cfg->redis.db, 3);
    assert_int_equal(cfg->redis.connect_timeout_ms, 250);
    assert_int_equal(cfg->redis.command_timeout_ms, 750);
    assert_string_equal(cfg->redis.key_prefix, "pgt:");

    /* session: key is SHA-256 of the raw key file content */
    assert_string_equal(cfg->session.cookie_name, "__Host-pg");
    assert_int_equal(cfg->session.cookie_secure, 1);
    assert_null(cfg->session.cookie_domain);
    assert_string_equal(cfg->session.cookie_path, "/");
    assert_int_equal(cfg->session.ttl_s, 3600);
    assert_int_equal(cfg->session.cache_ms, 500);
    fix(want, sizeof(want), "keys/session.key");
    assert_int_equal(pg_read_file(want, 4096, 0, &key, &keylen, &err), PG_OK);
    assert_int_equal(EVP_Digest(key, keylen, md, &mdlen, EVP_sha256(), NULL),
                     1);
    free(key);
    assert_memory_equal(cfg->session.key, md, 32);

    /* audit, headers */
    fix(want, sizeof(want), "log/audit.jsonl");
    assert_string_equal(cfg->audit.file, want);
    assert_string_equal(cfg->audit.stream, "audit-test");
    assert_int_equal(cfg->audit.stream_maxlen, 5000);
    assert_string_equal(cfg->headers.user, "X-Remote-User");
    assert_string_equal(cfg->headers.email, "X-Remote-Email");
    assert_string_equal(cfg->headers.groups, "X-Remote-Groups");
    assert_string_equal(cfg->headers.entitlements, "X-Remote-Entitlements");
    assert_string_equal(cfg->headers.identity, "X-Remote-Identity");
    assert_string_equal(cfg->headers.user_attr, "login");

    /* idps */
    assert_int_equal(cfg->nidps, 2);
    idp = pg_config_idp(cfg, "corp");
    assert_non_null(idp);
    assert_int_equal(idp->type, PG_IDP_OIDC);
    assert_string_equal(idp->name, "corp");
    o = &idp->oidc;
    assert_string_equal(o->name, "corp");
    assert_string_equal(o->issuer, "https://idp.example.test/realms/corp/");
    assert_string_equal(o->discovery_url, "https://idp.example.test/realms/"
                        "corp/.well-known/openid-configuration");
    assert_string_equal(o->client_id, "provgate");
    assert_string_equal(o->client_secret, "oidc-client-secret-from-file");
    assert_int_equal(o->token_auth, PG_TOKEN_AUTH_POST);
    assert_string_equal(o->redirect_uri,
                        "https://app.example.test/provgate/callback");
    assert_string_equal(o->scopes[0], "openid");
    assert_string_equal(o->scopes[3], "groups");
    assert_null(o->scopes[4]);
    assert_string_equal(o->allowed_algs[0], "RS256");
    assert_string_equal(o->allowed_algs[1], "ES256");
    assert_string_equal(o->allowed_algs[2], "EdDSA");
    assert_null(o->allowed_algs[3]);
    assert_string_equal(o->claims_request,
                        "{\"id_token\":{\"acr\":null},\"userinfo\":{\"email\":"
                        "{\"essential\":true}}}");
    assert_string_equal(o->post_logout_redirect_uri,
                        "https://app.example.test/bye");
    assert_int_equal(o->clock_skew_s, 30);
    assert_int_equal(o->state_ttl_s, 120);
    assert_int_equal(o->http_timeout_ms, 2000);
    assert_int_equal(o->jwks_refresh_min_s, 5);
    assert_int_equal(o->metadata_ttl_s, 600);
    assert_int_equal(o->max_auth_age_s, 300);
    fix(want, sizeof(want), "keys/ca.pem");
    assert_string_equal(o->tls.ca_file, want);
    assert_int_equal(o->tls.insecure_skip_verify, 0);

    o = &pg_config_idp(cfg, "backup")->oidc;
    assert_string_equal(o->discovery_url,
                        "http://127.0.0.1:8081/custom/discovery");
    assert_string_equal(o->client_secret, "inline-secret");
    assert_int_equal(o->token_auth, PG_TOKEN_AUTH_BASIC);
    assert_int_equal(o->tls.insecure_skip_verify, 1);
    assert_null(o->tls.ca_file);
    assert_null(o->claims_request);
    assert_null(o->post_logout_redirect_uri);
    assert_null(pg_config_idp(cfg, "nope"));
    assert_null(pg_config_idp(cfg, NULL));
    assert_null(pg_config_idp(NULL, "corp"));

    /* targets */
    assert_int_equal(cfg->ntargets, 3);
    t = pg_config_target(cfg, "demoapp");
    assert_non_null(t);
    assert_int_equal(t->type, PG_TARGET_SCIM);
    assert_string_equal(t->base_url, "https://scim.example.test/scim/v2");
    assert_int_equal(t->auth, PG_AUTH_BEARER);
    assert_string_equal(t->bearer_token, "scim-bearer-token-from-file");
    assert_int_equal(t->timeout_ms, 4000);
    assert_int_equal(t->connect_timeout_ms, 800);
    assert_non_null(t->tls.ca_file);
    assert_null(t->tls.client_cert);
    assert_string_equal(t->username_attr, "userName");
    assert_int_equal(t->create_missing_groups, 1);
    assert_int_equal(t->scim_discovery, 1);
    assert_int_equal(t->scim_force_put, 0);
    assert_int_equal(t->scim_no_etag, 1);
    assert_int_equal(t->scim_member_remove_value, 1);
    assert_int_equal(t->scim_no_extensions, 0);
    assert_int_equal(t->rate_capacity, 20);
    assert_int_equal(t->rate_per_s, 10);
    assert_int_equal(t->nattrs, 7);
    for (i = 0; i < t->nattrs; i++) {
        const pg_attr_map_t *m = &t->attrs[i];
        if (strcmp(m->scim_path, "userName") == 0) {
            assert_string_equal(m->tpl, "${login}");
            assert_null(m->literal);
        } else if (strcmp(m->scim_path, "displayName") == 0) {
            assert_string_equal(m->tpl, "${given_name} ${family_name} ($$)");
        } else if (strcmp(m->scim_path, "active") == 0) {
            assert_null(m->tpl);
            assert_true(json_is_true(m->literal));
        } else if (strcmp(m->scim_path, "urn:example:ext:level") == 0) {
            assert_null(m->tpl);
            assert_int_equal(json_integer_value(m->literal), 42);
        }
    }
    assert_string_equal(t->attrs[1].scim_path, "name.givenName");

    t = pg_config_target(cfg, "wiki");
    assert_int_equal(t->auth, PG_AUTH_BASIC);
    assert_string_equal(t->basic_user, "svc");
    assert_string_equal(t->basic_pass, "wiki-pw");
    assert_string_equal(t->base_url, "http://127.0.0.1:9000/scim");
    assert_int_equal(t->timeout_ms, 5000);
    assert_int_equal(t->connect_timeout_ms, 1000);
    assert_int_equal(t->create_missing_groups, 0);
    assert_int_equal(t->nattrs, 1);                       /* default map */
    assert_string_equal(t->attrs[0].scim_path, "userName");
    assert_string_equal(t->attrs[0].tpl, "${username}");

    t = pg_config_target(cfg, "open");
    assert_int_equal(t->auth, PG_AUTH_NONE);
    assert_null(t->bearer_token);
    assert_string_equal(t->base_url, "http://[::1]:9001");
    assert_string_equal(t->username_attr, "externalId");
    assert_null(pg_config_target(cfg, "nope"));

    /* identity */
    assert_int_equal(cfg->nclaims, 6);
    assert_string_equal(cfg->claims[0].attr, "login");
    assert_string_equal(cfg->claims[0].claim, "preferred_username");
    assert_string_equal(cfg->claims[4].attr, "department");
    assert_string_equal(cfg->claims[4].claim, "org.department");
    assert_string_equal(cfg->groups_claim, "roles");
    assert_int_equal(cfg->ncorr, 2);
    assert_string_equal(cfg->corr[0].claim, "email");
    assert_string_equal(cfg->corr[0].verified_claim, "email_verified");
    assert_string_equal(cfg->corr[0].index, "email");
    assert_null(cfg->corr[1].verified_claim);
    assert_string_equal(cfg->corr[1].index, "employee-id");

    /* policies from two relative files */
    assert_int_equal(pg_policy_count(cfg->policies), 2);
    pg_config_free(cfg);
}

static void
test_minimal_defaults(void **state)
{
    char path[PATH_MAX], host[256];
    pg_config_t *cfg = NULL;
    const pg_oidc_idp_cfg_t *o;
    pg_err_t err;

    (void)state;
    fix(path, sizeof(path), "minimal.json");
    if (pg_config_load(path, &cfg, &err) != PG_OK) {
        fail_msg("minimal.json: %s", err.msg);
    }
    assert_int_equal(gethostname(host, sizeof(host)), 0);
    host[64] = '\0';
    assert_string_equal(cfg->instance, host);

    assert_string_equal(cfg->redis.host, "127.0.0.1");
    assert_int_equal(cfg->redis.port, 6379);
    assert_null(cfg->redis.unix_path);
    assert_null(cfg->redis.username);
    assert_null(cfg->redis.password);
    assert_int_equal(cfg->redis.db, 0);
    assert_int_equal(cfg->redis.connect_timeout_ms, 1000);
    assert_int_equal(cfg->redis.command_timeout_ms, 1000);
    /* the outbox is on by default, with the documented defaults */
    assert_int_equal(cfg->outbox.consume, 1);
    assert_int_equal(cfg->outbox.claim_idle_ms, 30000);
    assert_int_equal(cfg->outbox.max_attempts, 5);
    assert_int_equal(cfg->outbox.dedup_ttl_s, 600);
    assert_int_equal(cfg->outbox.status_ttl_s, 3600);
    if (cfg->ntargets > 0) {
        assert_int_equal(cfg->targets[0].via_outbox, 1);
        assert_int_equal(cfg->targets[0].proceed_when_slow, 0);
        assert_int_equal(cfg->targets[0].rate_capacity, 0);   /* no limit */
        assert_int_equal(cfg->targets[0].scim_discovery, 0);
        assert_int_equal(cfg->targets[0].scim_force_put, 0);
        assert_int_equal(cfg->targets[0].scim_member_remove_value, 0);
        assert_int_equal(cfg->targets[0].rate_per_s, 0);
        assert_int_equal(cfg->targets[0].wait_ms,
                         2 * cfg->targets[0].timeout_ms + 1000);
        /* expiry is off unless configured */
        assert_int_equal(cfg->targets[0].deprov_action, PG_DEPROV_NONE);
        assert_int_equal(cfg->targets[0].inactivity_s, 0);
    }
    assert_int_equal(cfg->expiry_sweep_s, 60);
    assert_int_equal(cfg->expiry_test_divisor, 1);
    assert_string_equal(cfg->redis.key_prefix, "pg:");

    assert_string_equal(cfg->session.cookie_name, "provgate_session");
    assert_int_equal(cfg->session.cookie_secure, 1);
    assert_null(cfg->session.cookie_domain);
    assert_string_equal(cfg->session.cookie_path, "/");
    assert_int_equal(cfg->session.ttl_s, 28800);
    assert_int_equal(cfg->session.cache_ms, 5000);

    assert_null(cfg->audit.file);
    assert_string_equal(cfg->audit.stream, "audit");
    assert_int_equal(cfg->audit.stream_maxlen, 1000000);

    assert_string_equal(cfg->headers.user, "X-Provgate-User");
    assert_string_equal(cfg->headers.email, "X-Provgate-Email");
    assert_string_equal(cfg->headers.groups, "X-Provgate-Groups");
    assert_string_equal(cfg->headers.entitlements, "X-Provgate-Entitlements");
    assert_string_equal(cfg->headers.identity, "X-Provgate-Identity");
    assert_string_equal(cfg->headers.user_attr, "username");

    assert_int_equal(cfg->nidps, 1);
    o = &cfg->idps[0].oidc;
    assert_string_equal(o->discovery_url, "https://idp.example.test/"
                        ".well-known/openid-configuration");
    assert_int_equal(o->token_auth, PG_TOKEN_AUTH_BASIC);
    assert_string_equal(o->scopes[0], "openid");
    assert_string_equal(o->scopes[1], "email");
    assert_string_equal(o->scopes[2], "profile");
    assert_null(o->scopes[3]);
    assert_string_equal(o->allowed_algs[0], "RS256");
    assert_null(o->allowed_algs[1]);
    assert_null(o->claims_request);
    assert_int_equal(o->clock_skew_s, 60);
    assert_int_equal(o->state_ttl_s, 300);
    assert_int_equal(o->http_timeout_ms, 3000);
    assert_int_equal(o->jwks_refresh_min_s, 10);
    assert_int_equal(o->metadata_ttl_s, 3600);
    assert_int_equal(o->max_auth_age_s, 600);
    assert_null(o->tls.ca_file);
    assert_int_equal(o->tls.insecure_skip_verify, 0);

    assert_int_equal(cfg->ntargets, 0);
    assert_int_equal(cfg->nclaims, 5);
    assert_string_equal(cfg->claims[0].attr, "username");
    assert_string_equal(cfg->claims[0].claim, "preferred_username");
    assert_string_equal(cfg->claims[1].attr, "email");
    assert_string_equal(cfg->claims[2].attr, "given_name");
    assert_string_equal(cfg->claims[3].attr, "family_name");
    assert_string_equal(cfg->claims[4].attr, "name");
    assert_string_equal(cfg->groups_claim, "groups");
    assert_int_equal(cfg->ncorr, 0);
    assert_non_null(cfg->policies);
    assert_int_equal(pg_policy_count(cfg->policies), 0);
    pg_config_free(cfg);
    pg_config_free(NULL);
}

/* Relative paths resolve against the config's directory, not the cwd. */
static void
test_relative_paths_independent_of_cwd(void **state)
{
    char cwd[PATH_MAX], rel[PATH_MAX];
    pg_config_t *cfg = NULL;
    pg_err_t err;

    (void)state;
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(g_fix), 0);
    /* a bare file name: its directory is the cwd */
    assert_int_equal(pg_config_load("full.json", &cfg, &err), PG_OK);
    fmt(rel, sizeof(rel), "%s/keys/ca.pem", g_fix);
    assert_string_equal(cfg->idps[0].oidc.tls.ca_file, rel);
    pg_config_free(cfg);
    /* from elsewhere, through a relative path with ".." */
    assert_int_equal(chdir(g_fix), 0);
    assert_int_equal(chdir("keys"), 0);
    assert_int_equal(pg_config_load("../full.json", &cfg, &err), PG_OK);
    assert_string_equal(cfg->idps[0].oidc.tls.ca_file, rel);
    assert_string_equal(cfg->redis.password, "redis-pw-from-file");
    pg_config_free(cfg);
    assert_int_equal(chdir(cwd), 0);
}

/* The shipped example config and the demo policy load together. */
static void
test_example_config(void **state)
{
    char dir[PATH_MAX], src[PATH_MAX], path[PATH_MAX];
    pg_config_t *cfg = NULL;
    pg_decision_t d;
    json_t *attrs;
    pg_err_t err;

    (void)state;
    fmt(dir, sizeof(dir), "%s/example", g_tmp);
    assert_int_equal(mkdir(dir, 0700), 0);
    fmt(path, sizeof(path), "%s/keys", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    fmt(path, sizeof(path), "%s/policies", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    write_str(dir, "keys/session.key", "example-session-key-of-at-least-32-bytes");
    write_str(dir, "keys/oidc-client-secret", "oidc-secret\n");
    write_str(dir, "keys/demoapp-scim-token", "scim-token\n");
    write_str(dir, "keys/redis-password", "redis-pw\n");
    fmt(src, sizeof(src), "%s/docs/examples/provgate.json", g_root);
    copy_file(src, dir, "provgate.json");
    fmt(src, sizeof(src), "%s/policies/birthright.json", g_root);
    copy_file(src, dir, "policies/birthright.json");

    fmt(path, sizeof(path), "%s/provgate.json", dir);
    if (pg_config_load(path, &cfg, &err) != PG_OK) {
        fail_msg("example: %s", err.msg);
    }
    assert_string_equal(cfg->instance, "gw1");
    assert_int_equal(pg_policy_count(cfg->policies), 2);

    attrs = json_pack("{s:s, s:s}", "employee_type", "employee",
                      "department", "engineering");
    assert_int_equal(pg_policy_decide(cfg->policies, attrs, "demoapp", &d),
                     PG_OK);
    assert_int_equal(d.has_account, 1);
    assert_int_equal(json_array_size(d.entitlements), 2);
    assert_string_equal(json_string_value(json_object_get(
        json_array_get(d.entitlements, 0), "value")), "staff");
    assert_string_equal(json_string_value(json_object_get(
        json_array_get(d.entitlements, 1), "value")), "engineering");
    pg_decision_clear(&d);
    json_decref(attrs);

    attrs = json_pack("{s:s, s:s}", "employee_type", "contractor",
                      "department", "engineering");
    assert_int_equal(pg_policy_decide(cfg->policies, attrs, "demoapp", &d),
                     PG_OK);
    assert_int_equal(d.has_account, 0);
    assert_int_equal(json_array_size(d.entitlements), 0);
    pg_decision_clear(&d);
    json_decref(attrs);
    pg_config_free(cfg);
}

/* ---- pg_cfg_* helpers used directly ---------------------------------- */

static void
test_cfg_helpers(void **state)
{
    static const char *const allowed[] = {"a", "b", NULL};
    static const char *const def[] = {"x", "y", NULL};
    json_t *o = json_pack("{s:s, s:i, s:b, s:[s,s], s:s}", "a", "hello",
                          "b", 7, "flag", 1, "list", "p", "q", "empty", "");
    char *s = NULL, **v = NULL, cwd[PATH_MAX];
    unsigned u = 0;
    int b = -1;
    pg_err_t err;

    (void)state;
    assert_int_equal(pg_cfg_keys(o, "$.t", allowed, &err), PG_ERR_CONFIG);
    assert_string_equal(err.msg, "$.t.flag: unknown field");
    assert_int_equal(pg_cfg_keys(json_array_get(o, 0), "$.t", allowed, &err),
                     PG_ERR_CONFIG);
    assert_string_equal(err.msg, "$.t: must be an object");

    assert_int_equal(pg_cfg_str(o, "$.t", "a", 1, NULL, &s, &err), PG_OK);
    assert_string_equal(s, "hello");
    free(s);
    assert_int_equal(pg_cfg_str(o, "$.t", "zz", 0, "dflt", &s, &err), PG_OK);
    assert_string_equal(s, "dflt");
    free(s);
    assert_int_equal(pg_cfg_str(o, "$.t", "zz", 0, NULL, &s, &err), PG_OK);
    assert_null(s);
    assert_int_equal(pg_cfg_str(o, "$.t", "zz", 1, NULL, &s, &err),
                     PG_ERR_CONFIG);
    assert_string_equal(err.msg, "$.t.zz: missing required field");
    assert_int_equal(pg_cfg_str(o, "$.t", "b", 1, NULL, &s, &err),
                     PG_ERR_CONFIG);
    assert_string_equal(err.msg, "$.t.b: must be a string");
    assert_null(s);
    assert_int_equal(pg_cfg_str(o, "$.t", "empty", 0, NULL, &s, &err),
                     PG_ERR_CONFIG);
    assert_string_equal(err.msg, "$.t.empty: must not be empty");

    assert_int_equal(pg_cfg_uint(o, "$.t", "b", 1, 0, 10, &u, &err), PG_OK);
    assert_int_equal(u, 7);
    assert_int_equal(pg_cfg_uint(o, "$.t", "zz", 99, 0, 10, &u, &err), PG_OK);
    assert_int_equal(u, 99);
    assert_int_equal(pg_cfg_uint(o, "$.t", "b", 1, 8, 10, &u, &err),
                     PG_ERR_CONFIG);
    assert_string_equal(err.msg, "$.t.b: must be between 8 and 10");
    assert_int_equal(pg_cfg_uint(o, "$.t", "a", 1, 0, 10, &u, &err),
                     PG_ERR_CONFIG);
    assert_string_equal(err.msg, "$.t.a: must be an integer");

    assert_int_equal(pg_cfg_bool(o, "$.t", "flag", 0, &b, &err), PG_OK);
    assert_int_equal(b, 1);
    assert_int_equal(pg_cfg_bool(o, "$.t", "zz", 0, &b, &err), PG_OK);
    assert_int_equal(b, 0);
    assert_int_equal(pg_cfg_bool(o, "$.t", "b", 0, &b, &err), PG_ERR_CONFIG);
    assert_string_equal(err.msg, "$.t.b: must be true or false");

    assert_int_equal(pg_cfg_strv(o, "$.t", "list", def, &v, &err), PG_OK);
    assert_string_equal(v[0], "p");
    assert_string_equal(v[1], "q");
    assert_null(v[2]);
    pg_strv_free(v);
    assert_int_equal(pg_cfg_strv(o, "$.t", "zz", def, &v, &err), PG_OK);
    assert_string_equal(v[0], "x");
    assert_string_equal(v[1], "y");
    assert_null(v[2]);
    assert_ptr_not_equal(v[0], def[0]);   /* a copy */
    pg_strv_free(v);
    assert_int_equal(pg_cfg_strv(o, "$.t", "zz", NULL, &v, &err), PG_OK);
    assert_null(v);
    pg_strv_free(NULL);

    /* secrets: relative to cwd outside pg_config_load */
    json_decref(o);
    o = json_pack("{s:s}", "pw_file", "keys/client_secret");
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(g_fix), 0);
    assert_int_equal(pg_cfg_secret(o, "$.s", "pw", 1, &s, &err), PG_OK);
    assert_string_equal(s, "oidc-client-secret-from-file");   /* CRLF trimmed */
    free(s);
    json_decref(o);
    o = json_pack("{s:s}", "other", "x");
    assert_int_equal(pg_cfg_secret(o, "$.s", "pw", 0, &s, &err), PG_OK);
    assert_null(s);
    json_decref(o);
    o = json_pack("{s:s}", "pw_file", "keys/nope");
    assert_int_equal(pg_cfg_secret(o, "$.s", "pw", 1, &s, &err),
                     PG_ERR_CONFIG);
    assert_string_equal(err.msg, "$.s.pw_file: cannot read \"keys/nope\": No "
                        "such file or directory");
    json_decref(o);
    assert_int_equal(chdir(cwd), 0);
}

/* ---- pg_read_file ---------------------------------------------------- */

static void
test_read_file(void **state)
{
    char path[PATH_MAX], *buf = NULL;
    size_t n = 0;
    pg_err_t err;

    (void)state;
    write_file(g_tmp, "rf.bin", "ab\0cd\r\n\n", 8);
    fmt(path, sizeof(path), "%s/rf.bin", g_tmp);
    assert_int_equal(pg_read_file(path, 100, 0, &buf, &n, &err), PG_OK);
    assert_int_equal(n, 8);
    assert_memory_equal(buf, "ab\0cd\r\n\n", 8);
    assert_int_equal(buf[8], '\0');
    free(buf);
    assert_int_equal(pg_read_file(path, 100, 1, &buf, &n, &err), PG_OK);
    assert_int_equal(n, 5);
    assert_memory_equal(buf, "ab\0cd", 6);
    free(buf);
    /* exactly at the cap is fine, one over is not */
    assert_int_equal(pg_read_file(path, 8, 0, &buf, NULL, &err), PG_OK);
    free(buf);
    assert_int_equal(pg_read_file(path, 7, 0, &buf, &n, &err),
                     PG_ERR_TOO_LARGE);
    assert_null(buf);
    assert_non_null(strstr(err.msg, "is larger than 7 bytes"));
    /* directories and FIFOs are refused without blocking */
    assert_int_equal(pg_read_file(g_tmp, 100, 0, &buf, &n, &err),
                     PG_ERR_INVALID);
    assert_non_null(strstr(err.msg, "not a regular file"));
    fmt(path, sizeof(path), "%s/fifo", g_tmp);
    assert_int_equal(mkfifo(path, 0600), 0);
    assert_int_equal(pg_read_file(path, 100, 0, &buf, &n, &err),
                     PG_ERR_INVALID);
    fmt(path, sizeof(path), "%s/missing", g_tmp);
    assert_int_equal(pg_read_file(path, 100, 0, &buf, &n, &err), PG_ERR_IO);
    assert_non_null(strstr(err.msg, "No such file or directory"));
    /* empty file */
    write_file(g_tmp, "empty.bin", "", 0);
    fmt(path, sizeof(path), "%s/empty.bin", g_tmp);
    assert_int_equal(pg_read_file(path, 100, 1, &buf, &n, &err), PG_OK);
    assert_int_equal(n, 0);
    assert_string_equal(buf, "");
    free(buf);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base_config_is_valid),
        cmocka_unit_test(test_saml_idp),
        cmocka_unit_test(test_saml_unsolicited_acs),
        cmocka_unit_test(test_saml_slo),
        cmocka_unit_test(test_saml_metadata_url),
        cmocka_unit_test(test_bad_configs),
        cmocka_unit_test(test_expiry_settings),
        cmocka_unit_test(test_scim_retry_oauth_settings),
        cmocka_unit_test(test_event_stream_settings),
        cmocka_unit_test(test_idp_display_name),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_missing_and_huge_files),
        cmocka_unit_test(test_policy_errors_via_config),
        cmocka_unit_test(test_full_config),
        cmocka_unit_test(test_minimal_defaults),
        cmocka_unit_test(test_relative_paths_independent_of_cwd),
        cmocka_unit_test(test_example_config),
        cmocka_unit_test(test_cfg_helpers),
        cmocka_unit_test(test_read_file),
    };
    return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
