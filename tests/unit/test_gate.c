/*
 * Unit tests of the gate's request flows on the poll loop host, without
 * nginx: synchronous answers, ops parked on a provider fetch, and
 * cancellation from inside another op's callback.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <zlib.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "provgate/config.h"
#include "provgate/gate.h"
#include "provgate/loop.h"
#include "helpers/procs.h"

typedef struct {
    char dir[256];
    pgt_http_server_t http;
    pg_config_t *cfg;
    pg_loop_t *loop;
    pg_gate_t *gate;
} env_t;

typedef struct call {
    int calls;
    pg_gate_result_t *res;
    pg_gate_op_t *op;
    struct call *other;         /* cancel this one from our callback */
    int *done;
} call_t;

static void
write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int
setup(void **state)
{
    env_t *e = calloc(1, sizeof(*e));
    char cfg[2048], path[512];
    pg_err_t err = { "" };

    assert_non_null(e);
    snprintf(e->dir, sizeof(e->dir), "/tmp/pg-gate-XXXXXX");
    assert_non_null(mkdtemp(e->dir));
    assert_int_equal(pgt_http_server_start(&e->http), 0);
    write_file(e->dir, "session.key",
               "0123456789abcdef0123456789abcdef0123456789abcdef");
    write_file(e->dir, "policies.json",
               "{\"policies\": [{\"id\": \"all\", \"kind\": \"birthright\","
               " \"who\": {\"all\": []}, \"grants\": [{\"target\": \"app\","
               " \"entitlements\": []}]}]}");
    /* discovery answers slowly and with something that is not a discovery
     * document; Redis is not running (nothing listens on port 1) */
    snprintf(cfg, sizeof(cfg),
             "{\"redis\": {\"host\": \"127.0.0.1\", \"port\": 1},"
             " \"session\": {\"key_file\": \"session.key\", \"cache_ms\": 0},"
             " \"audit\": {\"file\": \"audit.jsonl\"},"
             " \"idps\": {\"main\": {\"type\": \"oidc\","
             "   \"issuer\": \"http://127.0.0.1:%d\","
             "   \"discovery_url\": \"http://127.0.0.1:%d/delay/300\","
             "   \"client_id\": \"c\", \"client_secret\": \"s\","
             "   \"redirect_uri\": \"http://127.0.0.1:8080/cb\","
             "   \"scopes\": [\"openid\"]}},"
             " \"targets\": {\"app\": {\"type\": \"scim\","
             "   \"base_url\": \"http://127.0.0.1:%d/scim\","
             "   \"auth\": {\"type\": \"none\"},"
             "   \"attributes\": {\"userName\": \"${username}\"}}},"
             " \"policy_files\": [\"policies.json\"]}",
             e->http.port, e->http.port, e->http.port);
    write_file(e->dir, "provgate.json", cfg);
    snprintf(path, sizeof(path), "%s/provgate.json", e->dir);
    assert_int_equal(pg_config_load(path, &e->cfg, &err), PG_OK);
    assert_int_equal(pg_loop_new(&e->loop), PG_OK);
    pg_loop_set_log_level(e->loop, PG_LOG_ERROR);
    assert_int_equal(pg_gate_new(e->cfg, pg_loop_host(e->loop), &e->gate,
                                 &err), PG_OK);
    *state = e;
    return 0;
}

static int
teardown(void **state)
{
    env_t *e = *state;
    char cmd[600];

    pg_gate_free(e->gate);
    pg_loop_free(e->loop);
    pg_config_free(e->cfg);
    pgt_http_server_stop(&e->http);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->dir);
    assert_int_equal(system(cmd), 0);
    free(e);
    return 0;
}

static void
on_result(void *arg, pg_gate_result_t *res)
{
    call_t *c = arg;

    c->calls++;
    c->res = res;
    c->op = NULL;
    if (c->other != NULL && c->other->op != NULL) {
        /* the first op to be answered withdraws its sibling, as nginx
         * does when closing a connection finalizes sibling streams */
        pg_gate_cancel(c->other->op);
        c->other->op = NULL;
    }
    (*c->done)++;
}

static void
browser_req(pg_gate_req_t *req)
{
    memset(req, 0, sizeof(*req));
    req->idp = "main";
    req->app = "app";
    req->method = "GET";
    req->uri = "/x";
    req->uri_len = 2;
    req->wants_html = 1;
    req->client_ip = "127.0.0.1";
}

/* An API client without a session is answered at once: 401 JSON. */
static void
test_api_without_session_is_sync_401(void **state)
{
    env_t *e = *state;
    pg_gate_req_t req;
    pg_gate_op_t *op = NULL;
    pg_gate_result_t *res = NULL;
    int done = 0;
    call_t c = { 0, NULL, NULL, NULL, &done };

    browser_req(&req);
    req.wants_html = 0;
    assert_int_equal(pg_gate_access(e->gate, &req, on_result, &c, &op, &res),
                     PG_OK);
    assert_null(op);
    assert_non_null(res);
    assert_int_equal(res->kind, PG_RES_PAGE);
    assert_int_equal(res->status, 401);
    assert_non_null(strstr(res->body, "\"login_required\""));
    assert_int_equal(c.calls, 0);
    pg_gate_result_free(res);
}

/* pg_gate_access on a request for a location with several IdPs, answered
 * without waiting: the result (the caller frees it). */
static pg_gate_result_t *
choice_access(env_t *e, const char *uri, const char *cookie)
{
    static const char *const idps[] = { "main", "other" };
    const char *cookies[1] = { cookie };
    pg_gate_req_t req;
    pg_gate_op_t *op = NULL;
    pg_gate_result_t *res = NULL;
    int done = 0;
    call_t c = { 0, NULL, NULL, NULL, &done };

    browser_req(&req);
    req.idp = NULL;
    req.idps = idps;
    req.nidps = 2;
    req.uri = uri;
    req.uri_len = strlen(uri);
    req.cookies = cookies;
    req.ncookies = cookie != NULL ? 1 : 0;
    assert_int_equal(pg_gate_access(e->gate, &req, on_result, &c, &op, &res),
                     PG_OK);
    assert_null(op);
    assert_non_null(res);
    assert_int_equal(c.calls, 0);
    return res;
}

/* Several IdPs: no session and no valid choice is the chooser page, with
 * every value escaped; a choice by parameter starts that IdP's login (here
 * "other" has no provider: 503 idp_not_configured, which proves it was
 * chosen); a name not in the list, or a remembered one that is not, is
 * the chooser again. */
static void
test_idp_chooser_page(void **state)
{
    env_t *e = *state;
    pg_gate_result_t *res;

    res = choice_access(e, "/x?a=\"1\"<b>", NULL);
    assert_int_equal(res->kind, PG_RES_PAGE);
    assert_int_equal(res->status, 200);
    assert_true(res->no_store);
    assert_string_equal(res->content_type, "text/html; charset=utf-8");
    assert_non_null(strstr(res->body, "<a href=\"/x?a=&quot;1&quot;&lt;b&gt;"
                                      "&amp;provgate_idp=main\" "
                                      "data-idp=\"main\">main</a>"));
    assert_non_null(strstr(res->body, "provgate_idp=other\""));
    assert_null(strstr(res->body, "<b>"));
    assert_int_equal(res->nset_cookies, 0);
    pg_gate_result_free(res);

    res = choice_access(e, "/x?provgate_idp=other", NULL);
    assert_int_equal(res->status, 503);
    assert_non_null(strstr(res->body, "idp_not_configured"));
    pg_gate_result_free(res);

    res = choice_access(e, "/x?provgate_idp=nope", "provgate_session_idp=other");
    assert_int_equal(res->status, 200);
    assert_non_null(strstr(res->body, "id=\"idp-choice\""));
    pg_gate_result_free(res);

    res = choice_access(e, "/x", "provgate_session_idp=nope");
    assert_int_equal(res->status, 200);
    assert_non_null(strstr(res->body, "id=\"idp-choice\""));
    pg_gate_result_free(res);

    res = choice_access(e, "/x", "provgate_session_idp=other");
    assert_int_equal(res->status, 503);
    pg_gate_result_free(res);
}

/* A tampered cookie on an API request: still 401, never an error. */
static void
test_tampered_cookie_is_no_session(void **state)
{
    env_t *e = *state;
    pg_gate_req_t req;
    pg_gate_op_t *op = NULL;
    pg_gate_result_t *res = NULL;
    const char *cookies[] = { "a=b; provgate_session=v1.AAAAtampered; c=d" };
    int done = 0;
    call_t c = { 0, NULL, NULL, NULL, &done };

    browser_req(&req);
    req.wants_html = 0;
    req.cookies = cookies;
    req.ncookies = 1;
    assert_int_equal(pg_gate_access(e->gate, &req, on_result, &c, &op, &res),
                     PG_OK);
    assert_null(op);
    assert_non_null(res);
    assert_int_equal(res->status, 401);
    pg_gate_result_free(res);
}

/*
 * Two browsers park on the same discovery fetch; it fails (not a discovery
 * document), both are woken, and the first answered cancels the other.
 * The cancelled one must never be called (and, under ASan, never touched
 * after it is freed).
 */
static void
test_cancel_sibling_while_waking(void **state)
{
    env_t *e = *state;
    pg_gate_req_t req;
    pg_gate_result_t *sync = NULL;
    int done = 0;
    call_t a = { 0, NULL, NULL, NULL, &done };
    call_t b = { 0, NULL, NULL, NULL, &done };

    a.other = &b;
    b.other = &a;
    browser_req(&req);
    assert_int_equal(pg_gate_access(e->gate, &req, on_result, &a, &a.op,
                                    &sync), PG_OK);
    assert_null(sync);
    assert_non_null(a.op);
    assert_int_equal(pg_gate_access(e->gate, &req, on_result, &b, &b.op,
                                    &sync), PG_OK);
    assert_null(sync);
    assert_non_null(b.op);

    assert_int_equal(pg_loop_run(e->loop, &done, 5000), PG_OK);
    /* give a wrongly surviving callback the chance to run */
    assert_int_equal(pg_loop_run(e->loop, &(int){ 0 }, 300), PG_ERR_TIMEOUT);

    assert_int_equal(a.calls + b.calls, 1);
    {
        call_t *answered = a.calls ? &a : &b;

        assert_int_equal(answered->res->status, 503);
        assert_non_null(strstr(answered->res->body, "idp_unavailable"));
        pg_gate_result_free(answered->res);
    }
}

/* A parked op cancelled before the fetch ends is never called; the other
 * one still gets its answer. */
static void
test_cancel_parked_op(void **state)
{
    env_t *e = *state;
    pg_gate_req_t req;
    pg_gate_result_t *sync = NULL;
    int done = 0;
    call_t a = { 0, NULL, NULL, NULL, &done };
    call_t b = { 0, NULL, NULL, NULL, &done };

    browser_req(&req);
    assert_int_equal(pg_gate_access(e->gate, &req, on_result, &a, &a.op,
                                    &sync), PG_OK);
    assert_int_equal(pg_gate_access(e->gate, &req, on_result, &b, &b.op,
                                    &sync), PG_OK);
    pg_gate_cancel(a.op);
    a.op = NULL;

    assert_int_equal(pg_loop_run(e->loop, &done, 5000), PG_OK);
    assert_int_equal(pg_loop_run(e->loop, &(int){ 0 }, 300), PG_ERR_TIMEOUT);
    assert_int_equal(a.calls, 0);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.res->status, 503);
    pg_gate_result_free(b.res);
}

/* ---- SAML Single Logout endpoint (Redis down: fail closed) ------------ */

#define SLO_URL "https://gw.example/saml/slo"

/* The SLO fixtures (tests/unit/fixtures/saml_slo), as an absolute path. */
static void
slo_fixtures(char *out)
{
    char cand[PATH_MAX], *slash;

    snprintf(cand, sizeof(cand), "%s", __FILE__);
    slash = strrchr(cand, '/');
    assert_non_null(slash);
    snprintf(slash, sizeof(cand) - (size_t) (slash - cand),
             "/fixtures/saml_slo");
    if (realpath(cand, out) == NULL) {
        assert_non_null(realpath("tests/unit/fixtures/saml_slo", out));
    }
}

/* A gate with SAML IdP "corp" (slo_url set) and IdP "noslo" (without),
 * and Redis not running. */
static int
setup_slo(void **state)
{
    env_t *e = calloc(1, sizeof(*e));
    char cfg[65536], path[512], fix[PATH_MAX];
    pg_err_t err = { "" };

    assert_non_null(e);
    slo_fixtures(fix);
    snprintf(e->dir, sizeof(e->dir), "/tmp/pg-gate-XXXXXX");
    assert_non_null(mkdtemp(e->dir));
    write_file(e->dir, "session.key",
               "0123456789abcdef0123456789abcdef0123456789abcdef");
    write_file(e->dir, "policies.json",
               "{\"policies\": [{\"id\": \"all\", \"kind\": \"birthright\","
               " \"who\": {\"all\": []}, \"grants\": [{\"target\": \"app\","
               " \"entitlements\": []}]}]}");
    snprintf(cfg, sizeof(cfg),
             "{\"redis\": {\"host\": \"127.0.0.1\", \"port\": 1},"
             " \"session\": {\"key_file\": \"session.key\", \"cache_ms\": 0},"
             " \"audit\": {\"file\": \"audit.jsonl\"},"
             " \"idps\": {\"corp\": {\"type\": \"saml\","
             "   \"sp_entity_id\": \"https://gw.example/saml\","
             "   \"acs_url\": \"https://gw.example/saml/acs\","
             "   \"slo_url\": \"" SLO_URL "\","
             "   \"sp_key_file\": \"%s/sp-key.pem\","
             "   \"sp_cert_file\": \"%s/sp-cert.pem\","
             "   \"idp_metadata_file\": \"%s/idp-metadata.xml\"},"
             "  \"noslo\": {\"type\": \"saml\","
             "   \"sp_entity_id\": \"https://gw.example/saml\","
             "   \"acs_url\": \"https://gw.example/saml/acs\","
             "   \"sp_key_file\": \"%s/sp-key.pem\","
             "   \"sp_cert_file\": \"%s/sp-cert.pem\","
             "   \"idp_metadata_file\": \"%s/idp-metadata.xml\"},"
             "  \"byurl\": {\"type\": \"saml\","
             "   \"sp_entity_id\": \"https://gw.example/saml-url\","
             "   \"acs_url\": \"https://gw.example/saml/acs\","
             "   \"slo_url\": \"" SLO_URL "\","
             "   \"sp_key_file\": \"%s/sp-key.pem\","
             "   \"sp_cert_file\": \"%s/sp-cert.pem\","
             "   \"idp_metadata_url\": \"http://127.0.0.1:1/md\"}},"
             " \"targets\": {\"app\": {\"type\": \"scim\","
             "   \"base_url\": \"http://127.0.0.1:1/scim\","
             "   \"auth\": {\"type\": \"none\"},"
             "   \"attributes\": {\"userName\": \"${username}\"}}},"
             " \"policy_files\": [\"policies.json\"]}",
             fix, fix, fix, fix, fix, fix, fix, fix);
    write_file(e->dir, "provgate.json", cfg);
    snprintf(path, sizeof(path), "%s/provgate.json", e->dir);
    if (pg_config_load(path, &e->cfg, &err) != PG_OK) {
        fail_msg("config: %s", err.msg);
    }
    assert_int_equal(pg_loop_new(&e->loop), PG_OK);
    pg_loop_set_log_level(e->loop, PG_LOG_ERROR);
    assert_int_equal(pg_gate_new(e->cfg, pg_loop_host(e->loop), &e->gate,
                                 &err), PG_OK);
    *state = e;
    return 0;
}

static int
teardown_slo(void **state)
{
    env_t *e = *state;
    char cmd[600];

    pg_gate_free(e->gate);
    pg_loop_free(e->loop);
    pg_config_free(e->cfg);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->dir);
    assert_int_equal(system(cmd), 0);
    free(e);
    return 0;
}

/* Percent-encode standard base64 of n bytes into a malloc'd string. */
static char *
b64_pct(const unsigned char *in, size_t n)
{
    char *b = malloc(4 * ((n + 2) / 3) + 1), *out, *o;
    size_t i;

    assert_non_null(b);
    EVP_EncodeBlock((unsigned char *) b, in, (int) n);
    out = malloc(3 * strlen(b) + 1);
    assert_non_null(out);
    for (i = 0, o = out; b[i] != '\0'; i++) {
        if (b[i] == '+' || b[i] == '/' || b[i] == '=') {
            o += snprintf(o, 4, "%%%02X", (unsigned char) b[i]);
        } else {
            *o++ = b[i];
        }
    }
    *o = '\0';
    free(b);
    return out;
}

/* A Redirect-binding LogoutRequest from the fixture IdP for NameID
 * sam@example.com, signed with the IdP key (signed != 0) or not. */
static char *
slo_query(int is_signed)
{
    char xml[1024], fix[PATH_MAX], kp[PATH_MAX + 16], now[32], *msg, *q;
    unsigned char def[1024], sig[512];
    static const char alg[] =
        "http%3A%2F%2Fwww.w3.org%2F2001%2F04%2Fxmldsig-more%23rsa-sha256";
    z_stream z;
    time_t t = time(NULL);
    struct tm tm;
    size_t qn, sl = sizeof(sig);
    EVP_PKEY *k;
    EVP_MD_CTX *md;
    FILE *f;
    char *s64;

    gmtime_r(&t, &tm);
    strftime(now, sizeof(now), "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(xml, sizeof(xml),
             "<samlp:LogoutRequest xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:"
             "protocol\" xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\""
             " ID=\"_gate%ld\" Version=\"2.0\" IssueInstant=\"%s\" "
             "Destination=\"" SLO_URL "\"><saml:Issuer>https://idp.example."
             "test/saml</saml:Issuer><saml:NameID>sam@example.com</saml:"
             "NameID></samlp:LogoutRequest>", (long) t, now);
    memset(&z, 0, sizeof(z));
    assert_int_equal(deflateInit2(&z, 9, Z_DEFLATED, -15, 8,
                                  Z_DEFAULT_STRATEGY), Z_OK);
    z.next_in = (unsigned char *) xml;
    z.avail_in = (unsigned) strlen(xml);
    z.next_out = def;
    z.avail_out = sizeof(def);
    assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
    msg = b64_pct(def, z.total_out);
    deflateEnd(&z);
    qn = strlen(msg) + sizeof(alg) + 1200;
    q = malloc(qn);
    assert_non_null(q);
    if (!is_signed) {
        snprintf(q, qn, "SAMLRequest=%s", msg);
        free(msg);
        return q;
    }
    snprintf(q, qn, "SAMLRequest=%s&SigAlg=%s", msg, alg);
    free(msg);
    slo_fixtures(fix);
    snprintf(kp, sizeof(kp), "%s/idp-key.pem", fix);
    f = fopen(kp, "r");
    assert_non_null(f);
    k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(k);
    md = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, k), 1);
    assert_int_equal(EVP_DigestSign(md, sig, &sl, (unsigned char *) q,
                                    strlen(q)), 1);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(k);
    s64 = b64_pct(sig, sl);
    snprintf(q + strlen(q), qn - strlen(q), "&Signature=%s", s64);
    free(s64);
    return q;
}

/* Run one SLO request to its answer (sync or through the loop). */
static pg_gate_result_t *
slo_call(env_t *e, const char *idp, const char *args)
{
    pg_gate_req_t req;
    pg_gate_result_t *res = NULL;
    int done = 0;
    call_t c = { 0, NULL, NULL, NULL, &done };

    memset(&req, 0, sizeof(req));
    req.idp = idp;
    req.method = "GET";
    req.uri = "/saml/slo";
    req.uri_len = 9;
    req.args = args;
    req.args_len = args != NULL ? strlen(args) : 0;
    req.client_ip = "127.0.0.1";
    assert_int_equal(pg_gate_saml_slo(e->gate, &req, on_result, &c, &c.op,
                                      &res), PG_OK);
    if (res == NULL) {
        assert_non_null(c.op);
        assert_int_equal(pg_loop_run(e->loop, &done, 5000), PG_OK);
        assert_int_equal(c.calls, 1);
        res = c.res;
    }
    assert_non_null(res);
    return res;
}

static int
audit_has(env_t *e, const char *needle)
{
    char path[512], buf[65536];
    size_t n;
    FILE *f;

    snprintf(path, sizeof(path), "%s/audit.jsonl", e->dir);
    f = fopen(path, "r");
    if (f == NULL) {
        return 0;
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

/* Empty message, or an IdP without SLO: refused at once. */
static void
test_slo_empty_and_unconfigured(void **state)
{
    env_t *e = *state;
    pg_gate_result_t *res;

    res = slo_call(e, "corp", NULL);
    assert_int_equal(res->status, 400);
    assert_non_null(strstr(res->body, "bad_slo"));
    pg_gate_result_free(res);
    res = slo_call(e, "noslo", "SAMLRequest=x");
    assert_int_equal(res->status, 404);
    assert_non_null(strstr(res->body, "slo_not_configured"));
    pg_gate_result_free(res);
    res = slo_call(e, "nope", "SAMLRequest=x");
    assert_int_equal(res->status, 404);
    pg_gate_result_free(res);
}

/* A URL-only IdP whose metadata could not be fetched (nothing listens):
 * SLO answers 503 idp_unavailable (audited), never a crash; its SP
 * metadata is served all the same. */
static void
test_slo_metadata_url_unavailable(void **state)
{
    env_t *e = *state;
    pg_gate_result_t *res = slo_call(e, "byurl", "SAMLRequest=x");

    assert_int_equal(res->status, 503);
    assert_int_equal(res->kind, PG_RES_PAGE);
    assert_non_null(strstr(res->body, "idp_unavailable"));
    assert_true(audit_has(e, "\"idp_unavailable\""));
    pg_gate_result_free(res);
    res = pg_gate_saml_metadata(e->cfg, "byurl");
    assert_non_null(res);
    assert_int_equal(res->status, 200);
    assert_non_null(strstr(res->body,
                           "entityID=\"https://gw.example/saml-url\""));
    pg_gate_result_free(res);
}

/* An unsigned LogoutRequest is refused (400 "unsigned"), audited without
 * the message, before Redis is ever asked. */
static void
test_slo_unsigned_refused(void **state)
{
    env_t *e = *state;
    char *q = slo_query(0);
    pg_gate_result_t *res = slo_call(e, "corp", q);

    assert_int_equal(res->status, 400);
    assert_int_equal(res->kind, PG_RES_PAGE);
    assert_non_null(strstr(res->body, ">unsigned<"));
    assert_true(audit_has(e, "\"logout.failure\""));
    assert_true(audit_has(e, "\"unsigned\""));
    assert_false(audit_has(e, q + strlen("SAMLRequest=")));
    pg_gate_result_free(res);
    free(q);
}

/* A valid signed LogoutRequest with Redis down: 503, never a logout
 * answer to the IdP (nothing was ended). */
static void
test_slo_signed_redis_down_503(void **state)
{
    env_t *e = *state;
    char *q = slo_query(1);
    pg_gate_result_t *res = slo_call(e, "corp", q);

    assert_int_equal(res->status, 503);
    assert_int_equal(res->kind, PG_RES_PAGE);
    assert_non_null(strstr(res->body, "identity_store_unavailable"));
    assert_true(audit_has(e, "\"idp_initiated\""));
    pg_gate_result_free(res);
    free(q);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_api_without_session_is_sync_401,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_idp_chooser_page, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_tampered_cookie_is_no_session,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_sibling_while_waking,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_parked_op, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_slo_empty_and_unconfigured,
                                        setup_slo, teardown_slo),
        cmocka_unit_test_setup_teardown(test_slo_unsigned_refused,
                                        setup_slo, teardown_slo),
        cmocka_unit_test_setup_teardown(test_slo_signed_redis_down_503,
                                        setup_slo, teardown_slo),
        cmocka_unit_test_setup_teardown(test_slo_metadata_url_unavailable,
                                        setup_slo, teardown_slo),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
