/*
 * SAML Single Logout core (src/idp/saml/slo.c).
 *
 * The test plays the IdP in-process: LogoutRequest / LogoutResponse XML is
 * built from a template, then either DEFLATEd and signed for the
 * HTTP-Redirect binding (OpenSSL rsa-sha256 over the query octets) or
 * signed as XML (xmlsec, enveloped, exc-c14n) for HTTP-POST, with the IdP
 * fixture key or an attacker key, and mutated for each attack. Messages the
 * SP builds are taken apart and their query signature checked against the
 * SP certificate. Keys and metadata: tests/unit/fixtures/saml_slo/ (README).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <unistd.h>
#include <sys/stat.h>
#include <zlib.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <xmlsec/xmlsec.h>
#include <xmlsec/xmltree.h>
#include <xmlsec/xmldsig.h>
#include <xmlsec/templates.h>
#include <xmlsec/xmlenc.h>
#include <xmlsec/keysmngr.h>
#include <xmlsec/base64.h>
#include <xmlsec/crypto.h>

#include "provgate/saml.h"
#include "provgate/saml_slo.h"

#define NS_SAMLP "urn:oasis:names:tc:SAML:2.0:protocol"
#define NS_SAML "urn:oasis:names:tc:SAML:2.0:assertion"
#define SP_ID "https://sp.example.test/saml"
#define SP_SLO "https://sp.example.test/saml/slo"
#define IDP_ID "https://idp.example.test/saml"
#define IDP_SLO "https://idp.example.test/slo"
#define IDP_SLO_RESP "https://idp.example.test/slo/response"
#define FMT_EMAIL "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
#define SHA256_ALG "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
#define NOW 1800000000LL /* 2027-01-15T08:00:00Z */

static char g_fix[PATH_MAX];
#define PBUF (PATH_MAX + 64)
static pg_saml_sp_t *g_sp;
static pg_saml_slo_t *g_slo;

static void
fix_path(char *out, size_t n, const char *name)
{
    int w = snprintf(out, n, "%s/%s", g_fix, name);
    assert_true(w > 0 && (size_t)w < n);
}

static void
find_fixtures(void)
{
    char cand[PBUF], exe[PATH_MAX];
    struct stat sb;
    ssize_t n;
    char *slash;

    snprintf(cand, sizeof(cand), "%s", __FILE__);
    slash = strrchr(cand, '/');
    assert_non_null(slash);
    snprintf(slash, sizeof(cand) - (size_t)(slash - cand), "/fixtures/saml_slo");
    if (stat(cand, &sb) != 0) {
        n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        assert_true(n > 0);
        exe[n] = '\0';
        *strrchr(exe, '/') = '\0';
        snprintf(cand, sizeof(cand), "%s/../../tests/unit/fixtures/saml_slo", exe);
    }
    assert_non_null(realpath(cand, g_fix));
}

/* cfg for the fixture SP with the given IdP metadata file. */
static void
make_cfg(pg_saml_sp_cfg_t *cfg, char *key, char *cert, char *md,
         const char *md_name)
{
    fix_path(key, PBUF, "sp-key.pem");
    fix_path(cert, PBUF, "sp-cert.pem");
    fix_path(md, PBUF, md_name);
    memset(cfg, 0, sizeof(*cfg));
    cfg->entity_id = SP_ID;
    cfg->acs_url = "https://sp.example.test/saml/acs";
    cfg->slo_url = SP_SLO;
    cfg->key_path = key;
    cfg->cert_path = cert;
    cfg->idp_metadata_path = md;
    cfg->nameid_format = FMT_EMAIL;
}

static int
group_setup(void **state)
{
    char key[PBUF], cert[PBUF], md[PBUF];
    pg_saml_sp_cfg_t cfg;
    pg_err_t err = {{0}};

    (void)state;
    find_fixtures();
    make_cfg(&cfg, key, cert, md, "idp-metadata.xml");
    if (pg_saml_sp_new(&cfg, &g_sp, &err) != PG_OK) {
        fail_msg("pg_saml_sp_new: %s", err.msg);
    }
    if (pg_saml_slo_new(g_sp, &cfg, &g_slo, &err) != PG_OK) {
        fail_msg("pg_saml_slo_new: %s", err.msg);
    }
    return 0;
}

static int
group_teardown(void **state)
{
    (void)state;
    pg_saml_slo_free(g_slo);
    pg_saml_sp_free(g_sp);
    return 0;
}

/* ---- the test IdP: message templates ---------------------------------- */

typedef struct msg {
    int response;                 /* LogoutResponse, else LogoutRequest */
    const char *id, *version, *issuer, *issuer_fmt, *destination;
    const char *issue_instant, *not_on_or_after, *irt, *status, *sub_status;
    const char *nameid_xml;       /* full NameID element (or any subject) */
    const char *session1, *session2;
    const char *extra;            /* raw XML appended inside the root */
    const char *prefix;           /* raw text before the root (DOCTYPE) */
} msg_t;

static msg_t
req_defaults(void)
{
    msg_t m;
    memset(&m, 0, sizeof(m));
    m.id = "_idplr0123456789";
    m.version = "2.0";
    m.issuer = IDP_ID;
    m.destination = SP_SLO;
    m.issue_instant = "2027-01-15T07:59:30Z";
    m.not_on_or_after = "2027-01-15T08:04:30Z";
    m.nameid_xml = "<saml:NameID Format=\"" FMT_EMAIL "\" SPNameQualifier=\""
                   SP_ID "\">alice@corp.com</saml:NameID>";
    m.session1 = "_sess1";
    return m;
}

static msg_t
resp_defaults(const char *irt)
{
    msg_t m;
    memset(&m, 0, sizeof(m));
    m.response = 1;
    m.id = "_idplresp0123456789";
    m.version = "2.0";
    m.issuer = IDP_ID;
    m.destination = SP_SLO;
    m.issue_instant = "2027-01-15T07:59:30Z";
    m.irt = irt;
    m.status = "urn:oasis:names:tc:SAML:2.0:status:Success";
    return m;
}

/* asprintf-like into a malloc'd string. */
static char * PG_PRINTF(1, 2)
fmt(const char *f, ...)
{
    va_list ap;
    int n;
    char *s;

    va_start(ap, f);
    n = vsnprintf(NULL, 0, f, ap);
    va_end(ap);
    assert_true(n >= 0);
    s = malloc((size_t)n + 1);
    assert_non_null(s);
    va_start(ap, f);
    vsnprintf(s, (size_t)n + 1, f, ap);
    va_end(ap);
    return s;
}

static char *
render(const msg_t *m)
{
    char *attrs, *body, *issuer, *out;
    const char *root = m->response ? "LogoutResponse" : "LogoutRequest";

    attrs = fmt(" ID=\"%s\" Version=\"%s\" IssueInstant=\"%s\"%s%s%s%s%s%s%s%s%s",
                m->id, m->version, m->issue_instant,
                m->destination ? " Destination=\"" : "", m->destination ? m->destination : "",
                m->destination ? "\"" : "",
                m->not_on_or_after ? " NotOnOrAfter=\"" : "",
                m->not_on_or_after ? m->not_on_or_after : "", m->not_on_or_after ? "\"" : "",
                m->irt ? " InResponseTo=\"" : "", m->irt ? m->irt : "", m->irt ? "\"" : "");
    issuer = m->issuer == NULL ? fmt("%s", "")
             : fmt("<saml:Issuer%s%s%s>%s</saml:Issuer>",
                   m->issuer_fmt ? " Format=\"" : "", m->issuer_fmt ? m->issuer_fmt : "",
                   m->issuer_fmt ? "\"" : "", m->issuer);
    if (m->response) {
        if (m->sub_status) {
            body = fmt("<samlp:Status><samlp:StatusCode Value=\"%s\"><samlp:StatusCode Value=\"%s\"/>"
                       "</samlp:StatusCode></samlp:Status>", m->status, m->sub_status);
        } else {
            body = fmt("<samlp:Status><samlp:StatusCode Value=\"%s\"/></samlp:Status>", m->status);
        }
    } else {
        body = fmt("%s%s%s%s%s%s%s", m->nameid_xml ? m->nameid_xml : "",
                   m->session1 ? "<samlp:SessionIndex>" : "", m->session1 ? m->session1 : "",
                   m->session1 ? "</samlp:SessionIndex>" : "",
                   m->session2 ? "<samlp:SessionIndex>" : "", m->session2 ? m->session2 : "",
                   m->session2 ? "</samlp:SessionIndex>" : "");
    }
    out = fmt("%s<samlp:%s xmlns:samlp=\"" NS_SAMLP "\" xmlns:saml=\"" NS_SAML "\"%s>%s%s%s</samlp:%s>",
              m->prefix ? m->prefix : "", root, attrs, issuer, body,
              m->extra ? m->extra : "", root);
    free(attrs);
    free(body);
    free(issuer);
    return out;
}

/* ---- Redirect binding (test side) -------------------------------------- */

static EVP_PKEY *
load_key(const char *who)
{
    char path[PBUF], name[64];
    FILE *f;
    EVP_PKEY *k;

    snprintf(name, sizeof(name), "%s-key.pem", who);
    fix_path(path, sizeof(path), name);
    f = fopen(path, "r");
    assert_non_null(f);
    k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(k);
    return k;
}

static char *
deflate_b64(const char *xml, size_t n)
{
    z_stream zs;
    uLong bound;
    unsigned char *buf;
    xmlChar *b64;
    char *out;

    memset(&zs, 0, sizeof(zs));
    assert_int_equal(deflateInit2(&zs, 9, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    bound = deflateBound(&zs, (uLong)n);
    buf = malloc(bound);
    assert_non_null(buf);
    zs.next_in = (Bytef *)(uintptr_t)xml;
    zs.avail_in = (uInt)n;
    zs.next_out = buf;
    zs.avail_out = (uInt)bound;
    assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
    b64 = xmlSecBase64Encode(buf, (xmlSecSize)zs.total_out, 0);
    deflateEnd(&zs);
    free(buf);
    out = strdup((const char *)b64);
    xmlFree(b64);
    return out;
}

static char *
sign_b64(const char *who, const EVP_MD *md, const char *data)
{
    EVP_PKEY *k = load_key(who);
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned char sig[1024];
    size_t sl = sizeof(sig);
    xmlChar *b64;
    char *out;

    assert_int_equal(EVP_DigestSignInit(c, NULL, md, NULL, k), 1);
    assert_int_equal(EVP_DigestSign(c, sig, &sl, (const unsigned char *)data, strlen(data)), 1);
    EVP_MD_CTX_free(c);
    EVP_PKEY_free(k);
    b64 = xmlSecBase64Encode(sig, (xmlSecSize)sl, 0);
    out = pg_urlencode((const char *)b64, strlen((const char *)b64));
    xmlFree(b64);
    return out;
}

/*
 * Redirect query for xml: param=..[&RelayState=relay]&SigAlg=..&Signature=..
 * signed by `who` ("idp", "idp2", "other") with sigalg/md, or unsigned
 * when who is NULL.
 */
static char *
query_ex(const char *param, const char *xml, const char *relay, const char *who,
         const char *sigalg, const EVP_MD *md)
{
    char *b64 = deflate_b64(xml, strlen(xml));
    char *enc = pg_urlencode(b64, strlen(b64));
    char *rs = relay ? pg_urlencode(relay, strlen(relay)) : NULL;
    char *alg = pg_urlencode(sigalg, strlen(sigalg));
    char *signed_part, *sig, *q;

    free(b64);
    if (who == NULL) {
        q = fmt("%s=%s%s%s", param, enc, rs ? "&RelayState=" : "", rs ? rs : "");
    } else {
        signed_part = fmt("%s=%s%s%s&SigAlg=%s", param, enc, rs ? "&RelayState=" : "",
                          rs ? rs : "", alg);
        sig = sign_b64(who, md, signed_part);
        q = fmt("%s&Signature=%s", signed_part, sig);
        free(signed_part);
        free(sig);
    }
    free(enc);
    free(rs);
    free(alg);
    return q;
}

static char *
query_of(const char *param, const msg_t *m, const char *relay, const char *who)
{
    char *xml = render(m);
    char *q = query_ex(param, xml, relay, who, SHA256_ALG, EVP_sha256());
    free(xml);
    return q;
}

/* ---- POST binding (test side) ------------------------------------------ */

static xmlNode *
child(xmlNode *n, const char *ns, const char *name)
{
    xmlNode *c;
    for (c = n ? n->children : NULL; c; c = c->next) {
        if (c->type == XML_ELEMENT_NODE && c->ns &&
            !strcmp((const char *)c->ns->href, ns) && !strcmp((const char *)c->name, name)) {
            return c;
        }
    }
    return NULL;
}

/* Sign the root of xml (enveloped, exc-c14n, rsa-sha256, after Issuer)
 * with `who`'s key and return the serialised document. ref_uri NULL means
 * "#" + root ID. */
static char *
xml_sign(const char *xml, const char *who, const char *ref_uri)
{
    char key[PBUF], name[64], uri[128];
    xmlDocPtr d = xmlReadMemory(xml, (int)strlen(xml), "t.xml", NULL, 0);
    xmlNode *root, *sig, *ref, *issuer;
    xmlSecDSigCtxPtr ctx;
    const xmlChar *ids[] = {BAD_CAST "ID", NULL};
    xmlChar *mem = NULL, *id;
    int size = 0;
    char *out;

    assert_non_null(d);
    root = xmlDocGetRootElement(d);
    id = xmlGetProp(root, BAD_CAST "ID");
    snprintf(uri, sizeof(uri), "#%s", ref_uri ? ref_uri : (const char *)id);
    xmlFree(id);
    sig = xmlSecTmplSignatureCreate(d, xmlSecTransformExclC14NId,
                                    xmlSecTransformRsaSha256Id, NULL);
    issuer = child(root, NS_SAML, "Issuer");
    if (issuer != NULL) {
        assert_non_null(xmlAddNextSibling(issuer, sig));
    } else if (root->children != NULL) {
        assert_non_null(xmlAddPrevSibling(root->children, sig));
    } else {
        assert_non_null(xmlAddChild(root, sig));
    }
    ref = xmlSecTmplSignatureAddReference(sig, xmlSecTransformSha256Id, NULL, BAD_CAST uri, NULL);
    assert_non_null(xmlSecTmplReferenceAddTransform(ref, xmlSecTransformEnvelopedId));
    assert_non_null(xmlSecTmplReferenceAddTransform(ref, xmlSecTransformExclC14NId));
    xmlSecAddIDs(d, root, ids);
    snprintf(name, sizeof(name), "%s-key.pem", who);
    fix_path(key, sizeof(key), name);
    ctx = xmlSecDSigCtxCreate(NULL);
    ctx->signKey = xmlSecCryptoAppKeyLoad(key, xmlSecKeyDataFormatPem, NULL, NULL, NULL);
    assert_non_null(ctx->signKey);
    assert_int_equal(xmlSecDSigCtxSign(ctx, sig), 0);
    xmlSecDSigCtxDestroy(ctx);
    xmlDocDumpMemory(d, &mem, &size);
    xmlFreeDoc(d);
    out = strdup((const char *)mem);
    xmlFree(mem);
    return out;
}

static char *
post_body(const char *param, const char *xml, const char *relay)
{
    xmlChar *b64 = xmlSecBase64Encode((const xmlSecByte *)xml, (xmlSecSize)strlen(xml), 64);
    char *enc = pg_urlencode((const char *)b64, strlen((const char *)b64));
    char *body = fmt("%s=%s%s%s", param, enc, relay ? "&RelayState=" : "", relay ? relay : "");
    xmlFree(b64);
    free(enc);
    return body;
}

static char *
post_of(const char *param, const msg_t *m, const char *who)
{
    char *xml = render(m), *sx, *b;
    if (who == NULL) {
        b = post_body(param, xml, "rs9");
        free(xml);
        return b;
    }
    sx = xml_sign(xml, who, NULL);
    free(xml);
    b = post_body(param, sx, "rs9");
    free(sx);
    return b;
}

/* ---- verification helpers ---------------------------------------------- */

static pg_status_t
vreq(pg_saml_binding_t b, const char *in, const char **reason,
     pg_saml_logout_request_in_t *out)
{
    pg_err_t err = {{0}};
    pg_status_t st = pg_saml_logout_request_verify(g_slo, b, in, strlen(in), NOW,
                                                   out, reason, &err);
    if (st != PG_OK) {
        assert_non_null(*reason);
        assert_null(out->id);
        assert_null(out->name_id);
        /* the detail never carries the message */
        assert_null(strstr(err.msg, "alice@corp.com"));
        assert_null(strstr(err.msg, "<"));
    }
    return st;
}

static void
expect_req(pg_saml_binding_t b, const char *in, const char *want_reason)
{
    const char *reason = NULL;
    pg_saml_logout_request_in_t out;
    pg_status_t st = vreq(b, in, &reason, &out);
    if (st == PG_OK) {
        pg_saml_logout_request_in_clear(&out);
        fail_msg("accepted; wanted %s", want_reason);
    }
    assert_string_equal(reason, want_reason);
}

static void
expect_req_msg(const msg_t *m, const char *want_reason)
{
    char *q = query_of("SAMLRequest", m, "rs1", "idp");
    char *p = post_of("SAMLRequest", m, "idp");
    expect_req(PG_SAML_BINDING_REDIRECT, q, want_reason);
    expect_req(PG_SAML_BINDING_POST, p, want_reason);
    free(q);
    free(p);
}

static pg_status_t
vresp(pg_saml_binding_t b, const char *in, const char **reason,
      pg_saml_logout_result_t *out)
{
    pg_err_t err = {{0}};
    pg_status_t st = pg_saml_logout_response_verify(g_slo, b, in, strlen(in), NOW,
                                                    out, reason, &err);
    if (st != PG_OK) {
        assert_non_null(*reason);
        assert_null(strstr(err.msg, "<"));
        if (strcmp(*reason, "status_not_success") != 0) {
            assert_null(out->in_response_to);
        }
    }
    return st;
}

static void
expect_resp(pg_saml_binding_t b, const char *in, const char *want_reason)
{
    const char *reason = NULL;
    pg_saml_logout_result_t out;
    pg_status_t st = vresp(b, in, &reason, &out);
    pg_saml_logout_result_clear(&out);
    if (st == PG_OK) {
        fail_msg("accepted; wanted %s", want_reason);
    }
    assert_string_equal(reason, want_reason);
}

static void
expect_resp_msg(const msg_t *m, const char *want_reason)
{
    char *q = query_of("SAMLResponse", m, NULL, "idp");
    char *p = post_of("SAMLResponse", m, "idp");
    expect_resp(PG_SAML_BINDING_REDIRECT, q, want_reason);
    expect_resp(PG_SAML_BINDING_POST, p, want_reason);
    free(q);
    free(p);
}

/* ---- SP-built messages, taken apart ------------------------------------ */

typedef struct parsed_url {
    char *base, *msg_param, *xml, *relay, *sigalg;
    int sig_ok;
} parsed_url_t;

static char *
raw_param(const char *q, const char *key)
{
    size_t kl = strlen(key);
    const char *p = q;
    while (p && *p) {
        const char *end = strchr(p, '&');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > kl && !strncmp(p, key, kl) && p[kl] == '=') {
            return strndup(p + kl + 1, len - kl - 1);
        }
        p = end ? end + 1 : NULL;
    }
    return NULL;
}

/* Standard base64 decode (no whitespace) with OpenSSL; returns length. */
static int
b64dec(const char *in, unsigned char *out, size_t outsz)
{
    size_t n = strlen(in);
    int len;

    assert_true(n / 4 * 3 <= outsz);
    len = EVP_DecodeBlock(out, (const unsigned char *)in, (int)n);
    assert_true(len >= 0);
    if (n > 0 && in[n - 1] == '=') len--;
    if (n > 1 && in[n - 2] == '=') len--;
    return len;
}

/* Split a Redirect URL we built; check its signature with the SP cert. */
static void
parse_url(const char *url, const char *param, parsed_url_t *o)
{
    const char *qm = strchr(url, '?');
    char *raw, *dec, *sigp, *signed_part, *algraw, *rsraw, *inflated = NULL;
    unsigned char *bin;
    size_t il = 0;
    char cert[PBUF];
    FILE *f;
    X509 *x;
    EVP_PKEY *pk;
    EVP_MD_CTX *c;
    unsigned char sig[1024];
    int sl;

    memset(o, 0, sizeof(*o));
    assert_non_null(qm);
    o->base = strndup(url, (size_t)(qm - url));
    raw = raw_param(qm + 1, param);
    assert_non_null(raw);
    dec = pg_urldecode(raw, strlen(raw));
    assert_non_null(dec);
    bin = malloc(strlen(dec) + 4);
    sl = b64dec(dec, bin, strlen(dec) + 4);
    assert_true(sl > 0);
    assert_int_equal(pg_saml_inflate(bin, (size_t)sl, &inflated, &il), PG_OK);
    o->xml = inflated;
    free(bin);
    free(dec);
    algraw = raw_param(qm + 1, "SigAlg");
    assert_non_null(algraw);
    o->sigalg = pg_urldecode(algraw, strlen(algraw));
    rsraw = raw_param(qm + 1, "RelayState");
    if (rsraw) {
        o->relay = pg_urldecode(rsraw, strlen(rsraw));
    }
    signed_part = fmt("%s=%s%s%s&SigAlg=%s", param, raw, rsraw ? "&RelayState=" : "",
                      rsraw ? rsraw : "", algraw);
    /* the signature must be the last parameter, after exactly this prefix */
    assert_int_equal(strncmp(qm + 1, signed_part, strlen(signed_part)), 0);
    sigp = raw_param(qm + 1, "Signature");
    assert_non_null(sigp);
    dec = pg_urldecode(sigp, strlen(sigp));
    sl = b64dec(dec, sig, sizeof(sig));
    assert_true(sl > 0);
    fix_path(cert, sizeof(cert), "sp-cert.pem");
    f = fopen(cert, "r");
    x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    pk = X509_get_pubkey(x);
    c = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestVerifyInit(c, NULL, EVP_sha256(), NULL, pk), 1);
    o->sig_ok = EVP_DigestVerify(c, sig, (size_t)sl, (const unsigned char *)signed_part,
                                 strlen(signed_part)) == 1;
    EVP_MD_CTX_free(c);
    EVP_PKEY_free(pk);
    X509_free(x);
    free(dec);
    free(sigp);
    free(signed_part);
    free(algraw);
    free(rsraw);
    free(raw);
}

static void
parsed_free(parsed_url_t *o)
{
    free(o->base);
    free(o->msg_param);
    free(o->xml);
    free(o->relay);
    free(o->sigalg);
}

static char *
prop(xmlNode *n, const char *name)
{
    xmlChar *v = xmlGetProp(n, BAD_CAST name);
    char *s = v ? strdup((const char *)v) : NULL;
    xmlFree(v);
    return s;
}

static void
assert_prop(xmlNode *n, const char *name, const char *want)
{
    char *v = prop(n, name);
    if (want == NULL) {
        assert_null(v);
    } else {
        assert_non_null(v);
        assert_string_equal(v, want);
    }
    free(v);
}

static void
assert_text(xmlNode *n, const char *want)
{
    xmlChar *t;
    assert_non_null(n);
    t = xmlNodeGetContent(n);
    assert_string_equal((const char *)t, want);
    xmlFree(t);
}

/* ======================================================================= */
/* SP-initiated: the LogoutRequest we build                                */

static void
test_build_logout_request(void **state)
{
    pg_saml_logout_subject_t who = {
        "alice&<\"x\"@corp.com", FMT_EMAIL, SP_ID, "idp-q", "_sess<1>"};
    char *url = NULL, *id = NULL;
    pg_err_t err = {{0}};
    parsed_url_t p;
    xmlDocPtr d;
    xmlNode *root, *nid;

    (void)state;
    assert_int_equal(pg_saml_logout_request(g_slo, &who, "back/to?x=1&y", NOW,
                                            &url, &id, &err), PG_OK);
    assert_non_null(id);
    assert_int_equal(strlen(id), 41);
    assert_string_equal(pg_saml_slo_idp_url(g_slo), IDP_SLO);
    parse_url(url, "SAMLRequest", &p);
    assert_string_equal(p.base, IDP_SLO);
    assert_true(p.sig_ok);
    assert_string_equal(p.sigalg, SHA256_ALG);
    assert_string_equal(p.relay, "back/to?x=1&y");
    d = xmlReadMemory(p.xml, (int)strlen(p.xml), "r.xml", NULL, XML_PARSE_NONET);
    assert_non_null(d);
    root = xmlDocGetRootElement(d);
    assert_string_equal((const char *)root->name, "LogoutRequest");
    assert_string_equal((const char *)root->ns->href, NS_SAMLP);
    assert_prop(root, "ID", id);
    assert_prop(root, "Version", "2.0");
    assert_prop(root, "Destination", IDP_SLO);
    assert_prop(root, "IssueInstant", "2027-01-15T08:00:00Z");
    assert_prop(root, "NotOnOrAfter", "2027-01-15T08:05:00Z");
    assert_text(child(root, NS_SAML, "Issuer"), SP_ID);
    nid = child(root, NS_SAML, "NameID");
    assert_text(nid, "alice&<\"x\"@corp.com");
    assert_prop(nid, "Format", FMT_EMAIL);
    assert_prop(nid, "SPNameQualifier", SP_ID);
    assert_prop(nid, "NameQualifier", "idp-q");
    assert_text(child(root, NS_SAMLP, "SessionIndex"), "_sess<1>");
    xmlFreeDoc(d);
    parsed_free(&p);
    free(url);
    free(id);

    /* fresh IDs; optional parts left out */
    {
        pg_saml_logout_subject_t w2 = {"bob", NULL, NULL, NULL, NULL};
        char *url2 = NULL, *id2 = NULL, *url3 = NULL, *id3 = NULL;
        assert_int_equal(pg_saml_logout_request(g_slo, &w2, NULL, NOW, &url2, &id2, &err), PG_OK);
        assert_int_equal(pg_saml_logout_request(g_slo, &w2, NULL, NOW, &url3, &id3, &err), PG_OK);
        assert_string_not_equal(id2, id3);
        parse_url(url2, "SAMLRequest", &p);
        assert_true(p.sig_ok);
        assert_null(p.relay);
        assert_null(strstr(p.xml, "SessionIndex"));
        assert_null(strstr(p.xml, "Format="));
        assert_non_null(strstr(p.xml, ">bob</saml:NameID>"));
        parsed_free(&p);
        free(url2); free(id2); free(url3); free(id3);
    }
}

static void
test_build_logout_request_limits(void **state)
{
    pg_saml_logout_subject_t who = {"alice", NULL, NULL, NULL, NULL};
    pg_saml_logout_subject_t none = {NULL, NULL, NULL, NULL, NULL};
    char rs[100], big[1100];
    char *url = (char *)1, *id = (char *)1;
    pg_err_t err = {{0}};

    (void)state;
    memset(rs, 'r', sizeof(rs) - 1);
    rs[sizeof(rs) - 1] = '\0';
    assert_int_equal(pg_saml_logout_request(g_slo, &who, rs, NOW, &url, &id, &err),
                     PG_ERR_TOO_LARGE);
    assert_null(url);
    assert_null(id);
    rs[PG_SAML_SLO_MAX_RELAY] = '\0';
    assert_int_equal(pg_saml_logout_request(g_slo, &who, rs, NOW, &url, &id, &err), PG_OK);
    free(url);
    free(id);
    memset(big, 'n', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    who.name_id = big;
    assert_int_equal(pg_saml_logout_request(g_slo, &who, NULL, NOW, &url, &id, &err),
                     PG_ERR_TOO_LARGE);
    assert_int_equal(pg_saml_logout_request(g_slo, &none, NULL, NOW, &url, &id, &err),
                     PG_ERR_INVALID);
    /* control characters cannot be written as XML 1.0 */
    who.name_id = "alice\x01@corp.com";
    assert_int_equal(pg_saml_logout_request(g_slo, &who, NULL, NOW, &url, &id, &err),
                     PG_ERR_INVALID);
    who.name_id = "alice";
    who.session_index = "_s\x1b";
    assert_int_equal(pg_saml_logout_request(g_slo, &who, NULL, NOW, &url, &id, &err),
                     PG_ERR_INVALID);
    assert_null(url);
    assert_null(id);
}

/* SP-initiated round trip: our request id comes back as InResponseTo. */
static void
test_logout_response_roundtrip(void **state)
{
    pg_saml_logout_subject_t who = {"alice@corp.com", FMT_EMAIL, SP_ID, NULL, "_sess1"};
    char *url = NULL, *id = NULL, *q, *p;
    pg_err_t err = {{0}};
    pg_saml_logout_result_t out;
    const char *reason = NULL;
    msg_t m;

    (void)state;
    assert_int_equal(pg_saml_logout_request(g_slo, &who, "rs1", NOW, &url, &id, &err), PG_OK);
    m = resp_defaults(id);
    q = query_of("SAMLResponse", &m, "rs1", "idp");
    assert_int_equal(vresp(PG_SAML_BINDING_REDIRECT, q, &reason, &out), PG_OK);
    assert_string_equal(out.in_response_to, id);
    assert_string_equal(out.id, "_idplresp0123456789");
    assert_string_equal(out.status, PG_SAML_STATUS_SUCCESS);
    assert_null(out.sub_status);
    assert_string_equal(out.relay_state, "rs1");
    pg_saml_logout_result_clear(&out);
    p = post_of("SAMLResponse", &m, "idp");
    assert_int_equal(vresp(PG_SAML_BINDING_POST, p, &reason, &out), PG_OK);
    assert_string_equal(out.in_response_to, id);
    assert_string_equal(out.relay_state, "rs9");
    pg_saml_logout_result_clear(&out);
    /* an entity-format Issuer and a second-level status are fine */
    m.issuer_fmt = "urn:oasis:names:tc:SAML:2.0:nameid-format:entity";
    m.sub_status = PG_SAML_STATUS_PARTIAL;
    free(q);
    q = query_of("SAMLResponse", &m, NULL, "idp");
    assert_int_equal(vresp(PG_SAML_BINDING_REDIRECT, q, &reason, &out), PG_OK);
    assert_string_equal(out.sub_status, PG_SAML_STATUS_PARTIAL);
    assert_null(out.relay_state);
    pg_saml_logout_result_clear(&out);
    free(q);
    free(p);
    free(url);
    free(id);
}

static void
test_response_status_not_success(void **state)
{
    msg_t m = resp_defaults("_ourreq1");
    char *q;
    pg_saml_logout_result_t out;
    const char *reason = NULL;

    (void)state;
    m.status = PG_SAML_STATUS_RESPONDER;
    m.sub_status = PG_SAML_STATUS_PARTIAL;
    q = query_of("SAMLResponse", &m, NULL, "idp");
    assert_int_equal(vresp(PG_SAML_BINDING_REDIRECT, q, &reason, &out), PG_ERR_DENIED);
    assert_string_equal(reason, "status_not_success");
    /* authentic: the pending request can still be consumed */
    assert_string_equal(out.in_response_to, "_ourreq1");
    assert_string_equal(out.status, PG_SAML_STATUS_RESPONDER);
    pg_saml_logout_result_clear(&out);
    free(q);
    expect_resp_msg(&m, "status_not_success");
    /* no StatusCode at all */
    {
        char *xml = render(&m), *cut = strstr(xml, "<samlp:Status>"), *end;
        end = strstr(xml, "</samlp:Status>") + strlen("</samlp:Status>");
        memmove(cut, end, strlen(end) + 1);
        q = query_ex("SAMLResponse", xml, NULL, "idp", SHA256_ALG, EVP_sha256());
        expect_resp(PG_SAML_BINDING_REDIRECT, q, "status_not_success");
        free(q);
        free(xml);
    }
}

static void
test_response_checks(void **state)
{
    msg_t m;

    (void)state;
    m = resp_defaults(NULL);
    expect_resp_msg(&m, "no_in_response_to");
    m = resp_defaults("_r1");
    m.issuer = "https://evil.example.test/saml";
    expect_resp_msg(&m, "bad_issuer");
    m = resp_defaults("_r1");
    m.issuer = NULL;
    expect_resp_msg(&m, "bad_issuer");
    m = resp_defaults("_r1");
    m.issuer_fmt = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified";
    expect_resp_msg(&m, "bad_issuer");
    m = resp_defaults("_r1");
    m.destination = "https://sp.example.test/saml/other";
    expect_resp_msg(&m, "bad_destination");
    m = resp_defaults("_r1");
    m.destination = NULL;
    expect_resp_msg(&m, "bad_destination");
    m = resp_defaults("_r1");
    m.issue_instant = "2027-01-15T07:53:00Z"; /* 7 min old: > 300 s + 60 s */
    expect_resp_msg(&m, "expired");
    m = resp_defaults("_r1");
    m.issue_instant = "2027-01-15T08:02:00Z";
    expect_resp_msg(&m, "not_yet_valid");
    m = resp_defaults("_r1");
    m.issue_instant = "2027-01-15 08:00:00";
    expect_resp_msg(&m, "bad_time");
    m = resp_defaults("_r1");
    m.version = "1.1";
    expect_resp_msg(&m, "bad_version");
    /* a LogoutRequest where a response is expected */
    m = req_defaults();
    {
        char *q = query_of("SAMLResponse", &m, NULL, "idp");
        expect_resp(PG_SAML_BINDING_REDIRECT, q, "not_logout_response");
        free(q);
    }
    /* within skew: accepted */
    m = resp_defaults("_r1");
    m.issue_instant = "2027-01-15T08:00:50Z";
    {
        char *q = query_of("SAMLResponse", &m, NULL, "idp");
        pg_saml_logout_result_t out;
        const char *reason;
        assert_int_equal(vresp(PG_SAML_BINDING_REDIRECT, q, &reason, &out), PG_OK);
        pg_saml_logout_result_clear(&out);
        free(q);
    }
}

/* ======================================================================= */
/* IdP-initiated: the LogoutRequest we receive                             */

static void
test_request_valid_both_bindings(void **state)
{
    msg_t m = req_defaults();
    char *q, *p;
    pg_saml_logout_request_in_t out;
    const char *reason = NULL;

    (void)state;
    m.session2 = "_sess2";
    q = query_of("SAMLRequest", &m, "relay-1", "idp");
    assert_int_equal(vreq(PG_SAML_BINDING_REDIRECT, q, &reason, &out), PG_OK);
    assert_string_equal(out.id, "_idplr0123456789");
    assert_string_equal(out.name_id, "alice@corp.com");
    assert_string_equal(out.name_id_format, FMT_EMAIL);
    assert_string_equal(out.sp_name_qualifier, SP_ID);
    assert_null(out.name_qualifier);
    assert_int_equal(out.n_session_index, 2);
    assert_string_equal(out.session_index[0], "_sess1");
    assert_string_equal(out.session_index[1], "_sess2");
    assert_string_equal(out.relay_state, "relay-1");
    assert_int_equal(out.issue_instant, NOW - 30);
    /* min(IssueInstant + max age + skew, NotOnOrAfter + skew) */
    assert_int_equal(out.replay_until, NOW - 30 + 300 + 60);
    pg_saml_logout_request_in_clear(&out);
    p = post_of("SAMLRequest", &m, "idp");
    assert_int_equal(vreq(PG_SAML_BINDING_POST, p, &reason, &out), PG_OK);
    assert_string_equal(out.name_id, "alice@corp.com");
    assert_string_equal(out.relay_state, "rs9");
    assert_int_equal(out.n_session_index, 2);
    pg_saml_logout_request_in_clear(&out);
    free(q);
    free(p);
    /* no SessionIndex, no NotOnOrAfter: all sessions, replay by age */
    m = req_defaults();
    m.session1 = NULL;
    m.not_on_or_after = "2027-01-15T08:01:00Z";
    q = query_of("SAMLRequest", &m, NULL, "idp");
    assert_int_equal(vreq(PG_SAML_BINDING_REDIRECT, q, &reason, &out), PG_OK);
    assert_int_equal(out.n_session_index, 0);
    assert_null(out.relay_state);
    assert_int_equal(out.replay_until, NOW + 60 + 60);
    pg_saml_logout_request_in_clear(&out);
    free(q);
}

static void
test_request_unsigned(void **state)
{
    msg_t m = req_defaults();
    char *q = query_of("SAMLRequest", &m, "rs", NULL);
    char *p = post_of("SAMLRequest", &m, NULL);

    (void)state;
    expect_req(PG_SAML_BINDING_REDIRECT, q, "unsigned");
    expect_req(PG_SAML_BINDING_POST, p, "unsigned");
    free(q);
    free(p);
    m = resp_defaults("_r1");
    q = query_of("SAMLResponse", &m, NULL, NULL);
    p = post_of("SAMLResponse", &m, NULL);
    expect_resp(PG_SAML_BINDING_REDIRECT, q, "unsigned");
    expect_resp(PG_SAML_BINDING_POST, p, "unsigned");
    free(q);
    free(p);
}

/* Signature removed from a correctly signed message. */
static void
test_signature_stripped(void **state)
{
    msg_t m = req_defaults();
    char *q = query_of("SAMLRequest", &m, "rs", "idp");
    char *s = strstr(q, "&Signature="), *xml, *sx, *a, *b, *p;

    (void)state;
    /* Redirect: Signature dropped, SigAlg kept */
    *s = '\0';
    expect_req(PG_SAML_BINDING_REDIRECT, q, "unsigned");
    /* Redirect: Signature emptied */
    {
        char *q2 = fmt("%s&Signature=", q);
        expect_req(PG_SAML_BINDING_REDIRECT, q2, "bad_signature");
        free(q2);
    }
    free(q);
    /* POST: ds:Signature element cut out of a signed document */
    xml = render(&m);
    sx = xml_sign(xml, "idp", NULL);
    a = strstr(sx, "<Signature");
    b = strstr(sx, "</Signature>");
    assert_non_null(a);
    assert_non_null(b);
    b += strlen("</Signature>");
    memmove(a, b, strlen(b) + 1);
    p = post_body("SAMLRequest", sx, NULL);
    expect_req(PG_SAML_BINDING_POST, p, "unsigned");
    free(p);
    free(sx);
    free(xml);
}

static void
test_wrong_key(void **state)
{
    msg_t m = req_defaults();
    char *q = query_of("SAMLRequest", &m, "rs", "other");
    char *p = post_of("SAMLRequest", &m, "other");

    (void)state;
    /* "other" is the IdP's *encryption* key in the metadata: never trusted
     * for signatures */
    expect_req(PG_SAML_BINDING_REDIRECT, q, "bad_signature");
    expect_req(PG_SAML_BINDING_POST, p, "bad_signature");
    free(q);
    free(p);
    m = resp_defaults("_r1");
    q = query_of("SAMLResponse", &m, NULL, "idp2");
    p = post_of("SAMLResponse", &m, "idp2");
    expect_resp(PG_SAML_BINDING_REDIRECT, q, "bad_signature");
    expect_resp(PG_SAML_BINDING_POST, p, "bad_signature");
    free(q);
    free(p);
}

/* Any change to a signed query parameter breaks the signature. */
static void
test_tampered_query(void **state)
{
    msg_t m = req_defaults(), m2;
    char *q = query_of("SAMLRequest", &m, "rs1", "idp"), *q2, *s, *evil, *e2, *enc;

    (void)state;
    /* RelayState changed */
    q2 = strdup(q);
    s = strstr(q2, "RelayState=rs1");
    assert_non_null(s);
    s[strlen("RelayState=rs")] = '2';
    expect_req(PG_SAML_BINDING_REDIRECT, q2, "bad_signature");
    free(q2);
    /* RelayState dropped */
    q2 = strdup(q);
    s = strstr(q2, "&RelayState=rs1");
    memmove(s, s + strlen("&RelayState=rs1"), strlen(s + strlen("&RelayState=rs1")) + 1);
    expect_req(PG_SAML_BINDING_REDIRECT, q2, "bad_signature");
    free(q2);
    /* SAMLRequest swapped for another (valid) message */
    m2 = req_defaults();
    m2.nameid_xml = "<saml:NameID>admin@corp.com</saml:NameID>";
    evil = render(&m2);
    e2 = deflate_b64(evil, strlen(evil));
    enc = pg_urlencode(e2, strlen(e2));
    s = strstr(q, "&RelayState=");
    q2 = fmt("SAMLRequest=%s%s", enc, s);
    expect_req(PG_SAML_BINDING_REDIRECT, q2, "bad_signature");
    free(q2);
    free(evil);
    free(e2);
    free(enc);
    /* SigAlg switched to rsa-sha512 (signature made with sha256) */
    q2 = strdup(q);
    s = strstr(q2, "rsa-sha256");
    assert_non_null(s);
    memcpy(s, "rsa-sha512", 10);
    expect_req(PG_SAML_BINDING_REDIRECT, q2, "bad_signature");
    free(q2);
    /* XML edited after signing (POST) */
    {
        char *xml = render(&m), *sx = xml_sign(xml, "idp", NULL), *p;
        s = strstr(sx, "alice@corp.com");
        assert_non_null(s);
        s[0] = 'm';
        p = post_body("SAMLRequest", sx, NULL);
        expect_req(PG_SAML_BINDING_POST, p, "bad_signature");
        free(p);
        free(sx);
        free(xml);
    }
    free(q);
}

static void
test_sig_alg(void **state)
{
    msg_t m = req_defaults();
    char *xml = render(&m), *q;
    pg_saml_logout_request_in_t out;
    const char *reason = NULL;

    (void)state;
    q = query_ex("SAMLRequest", xml, NULL, "idp",
                 "http://www.w3.org/2000/09/xmldsig#rsa-sha1", EVP_sha1());
    expect_req(PG_SAML_BINDING_REDIRECT, q, "bad_sig_alg");
    free(q);
    q = query_ex("SAMLRequest", xml, NULL, "idp",
                 "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512", EVP_sha512());
    assert_int_equal(vreq(PG_SAML_BINDING_REDIRECT, q, &reason, &out), PG_OK);
    pg_saml_logout_request_in_clear(&out);
    free(q);
    free(xml);
}

static void
test_request_checks(void **state)
{
    msg_t m;

    (void)state;
    m = req_defaults();
    m.issuer = "https://evil.example.test/saml";
    expect_req_msg(&m, "bad_issuer");
    m = req_defaults();
    m.issuer = NULL;
    expect_req_msg(&m, "bad_issuer");
    m = req_defaults();
    m.destination = "https://other-sp.example.test/saml/slo";
    expect_req_msg(&m, "bad_destination");
    m = req_defaults();
    m.destination = NULL;
    expect_req_msg(&m, "bad_destination");
    m = req_defaults();
    m.issue_instant = "2027-01-15T07:53:59Z";
    m.not_on_or_after = NULL;
    expect_req_msg(&m, "expired");
    m = req_defaults();
    m.not_on_or_after = "2027-01-15T07:58:59Z"; /* passed, even with skew */
    expect_req_msg(&m, "expired");
    m = req_defaults();
    m.not_on_or_after = "tomorrow";
    expect_req_msg(&m, "bad_time");
    m = req_defaults();
    m.issue_instant = "2027-01-15T08:01:01Z";
    expect_req_msg(&m, "not_yet_valid");
    m = req_defaults();
    m.version = "1.0";
    expect_req_msg(&m, "bad_version");
    m = req_defaults();
    m.nameid_xml = NULL;
    expect_req_msg(&m, "no_nameid");
    m = req_defaults();
    m.nameid_xml = "<saml:NameID></saml:NameID>";
    expect_req_msg(&m, "no_nameid");
    m = req_defaults();
    m.nameid_xml = "<saml:NameID>a@corp.com</saml:NameID><saml:NameID>b@corp.com</saml:NameID>";
    expect_req_msg(&m, "no_nameid");
    m = req_defaults();
    m.nameid_xml = "<saml:NameID>admin@corp.com<!---->.evil.com</saml:NameID>";
    expect_req_msg(&m, "nameid_not_text");
    m = req_defaults();
    m.nameid_xml = "<saml:EncryptedID><x/></saml:EncryptedID>";
    expect_req_msg(&m, "decrypt_failed");
    m = req_defaults();
    m.nameid_xml = "<saml:BaseID NameQualifier=\"q\"/>";
    expect_req_msg(&m, "base_id_unsupported");
    m = req_defaults();
    m.nameid_xml = "<saml:NameID>a@corp.com</saml:NameID><saml:EncryptedID><x/></saml:EncryptedID>";
    expect_req_msg(&m, "no_nameid");
    m = req_defaults();
    m.extra = "<samlp:SessionIndex>2</samlp:SessionIndex><samlp:SessionIndex>3</samlp:SessionIndex>"
              "<samlp:SessionIndex>4</samlp:SessionIndex><samlp:SessionIndex>5</samlp:SessionIndex>"
              "<samlp:SessionIndex>6</samlp:SessionIndex><samlp:SessionIndex>7</samlp:SessionIndex>"
              "<samlp:SessionIndex>8</samlp:SessionIndex><samlp:SessionIndex>9</samlp:SessionIndex>"
              "<samlp:SessionIndex>a</samlp:SessionIndex><samlp:SessionIndex>b</samlp:SessionIndex>"
              "<samlp:SessionIndex>c</samlp:SessionIndex><samlp:SessionIndex>d</samlp:SessionIndex>"
              "<samlp:SessionIndex>e</samlp:SessionIndex><samlp:SessionIndex>f</samlp:SessionIndex>"
              "<samlp:SessionIndex>g</samlp:SessionIndex><samlp:SessionIndex>h</samlp:SessionIndex>";
    expect_req_msg(&m, "too_many_sessions");
    m = req_defaults();
    m.extra = "<samlp:Extensions><x ID=\"_idplr0123456789\"/></samlp:Extensions>";
    expect_req_msg(&m, "duplicate_id");
    /* a response where a request is expected */
    m = resp_defaults("_x");
    {
        char *q = query_of("SAMLRequest", &m, NULL, "idp");
        expect_req(PG_SAML_BINDING_REDIRECT, q, "not_logout_request");
        free(q);
    }
}

static void
test_doctype_xxe(void **state)
{
    static const char *const prefixes[] = {
        "<!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>",
        "<!doctype samlp:LogoutRequest>",
        "<?xml version=\"1.0\"?><!ENTITY x \"y\">",
    };
    size_t i;
    msg_t m;

    (void)state;
    for (i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++) {
        char *xml, *q, *p;
        m = req_defaults();
        m.prefix = prefixes[i];
        xml = render(&m);
        /* validly signed Redirect: only the DOCTYPE check can refuse */
        q = query_ex("SAMLRequest", xml, NULL, "idp", SHA256_ALG, EVP_sha256());
        expect_req(PG_SAML_BINDING_REDIRECT, q, "doctype");
        p = post_body("SAMLRequest", xml, NULL);
        expect_req(PG_SAML_BINDING_POST, p, "doctype");
        free(q);
        free(p);
        free(xml);
    }
    /* DOCTYPE placed into a signed POST document after signing */
    m = resp_defaults("_r1");
    {
        char *xml = render(&m), *sx = xml_sign(xml, "idp", NULL), *x2, *p;
        char *root = strstr(sx, "<samlp:LogoutResponse");
        assert_non_null(root);
        x2 = fmt("<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>%s", root);
        p = post_body("SAMLResponse", x2, NULL);
        expect_resp(PG_SAML_BINDING_POST, p, "doctype");
        free(p);
        free(x2);
        free(sx);
        free(xml);
    }
}

static void
test_oversized(void **state)
{
    char *big, *p, *xml, *q;
    size_t n;
    msg_t m = req_defaults();

    (void)state;
    /* Redirect query over its cap */
    n = PG_SAML_SLO_MAX_QUERY + 1;
    big = malloc(n + 1);
    memset(big, 'A', n);
    memcpy(big, "SAMLRequest=", 12);
    big[n] = '\0';
    expect_req(PG_SAML_BINDING_REDIRECT, big, "too_large");
    free(big);
    /* POST body over its cap */
    n = PG_SAML_MAX_POST_BODY + 1;
    big = malloc(n + 1);
    memset(big, 'A', n);
    memcpy(big, "SAMLRequest=", 12);
    big[n] = '\0';
    expect_req(PG_SAML_BINDING_POST, big, "too_large");
    free(big);
    /* POST decoded XML over PG_SAML_MAX_XML, body under its cap */
    n = PG_SAML_MAX_XML + 1024;
    big = malloc(n + 1);
    memset(big, ' ', n);
    big[n] = '\0';
    m.extra = big;
    xml = render(&m);
    p = post_body("SAMLRequest", xml, NULL);
    assert_true(strlen(p) <= PG_SAML_MAX_POST_BODY);
    expect_req(PG_SAML_BINDING_POST, p, "too_large");
    free(p);
    free(xml);
    free(big);
    /* RelayState over 1 KiB */
    big = malloc(1100);
    memset(big, 'r', 1099);
    big[1099] = '\0';
    m.extra = NULL;
    q = query_of("SAMLRequest", &m, big, "idp");
    expect_req(PG_SAML_BINDING_REDIRECT, q, "too_large");
    free(q);
    free(big);
}

/* A validly signed Redirect message that inflates past the cap. */
static void
test_deflate_bomb(void **state)
{
    size_t n = 4u * 1024u * 1024u;
    char *pad = malloc(n + 8), *xml, *q;
    msg_t m = req_defaults();

    (void)state;
    memcpy(pad, "<!--", 4);
    memset(pad + 4, 'A', n);
    memcpy(pad + 4 + n, "-->", 4);
    m.extra = pad;
    xml = render(&m);
    q = query_ex("SAMLRequest", xml, NULL, "idp", SHA256_ALG, EVP_sha256());
    assert_true(strlen(q) <= PG_SAML_SLO_MAX_QUERY);
    expect_req(PG_SAML_BINDING_REDIRECT, q, "too_large");
    free(q);
    free(xml);
    free(pad);
}

static void
test_xml_signature_structure(void **state)
{
    msg_t m = req_defaults();
    char *xml, *sx, *p, *q, *wrapped, *inner, *s;

    (void)state;
    /* Reference to another element than the root */
    m.extra = "<samlp:Extensions><x xmlns=\"urn:x\" ID=\"_other\"/></samlp:Extensions>";
    xml = render(&m);
    sx = xml_sign(xml, "idp", "_other");
    p = post_body("SAMLRequest", sx, NULL);
    expect_req(PG_SAML_BINDING_POST, p, "bad_reference");
    free(p);
    free(sx);
    free(xml);
    /* XSW: a forged request wrapping the signed one in Extensions */
    m = req_defaults();
    xml = render(&m);
    sx = xml_sign(xml, "idp", NULL);
    inner = strstr(sx, "<samlp:LogoutRequest");
    wrapped = fmt("<samlp:LogoutRequest xmlns:samlp=\"" NS_SAMLP "\" xmlns:saml=\"" NS_SAML "\""
                  " ID=\"_evil\" Version=\"2.0\" IssueInstant=\"2027-01-15T07:59:30Z\""
                  " Destination=\"" SP_SLO "\"><saml:Issuer>" IDP_ID "</saml:Issuer>"
                  "<saml:NameID>admin@corp.com</saml:NameID>"
                  "<samlp:Extensions>%s</samlp:Extensions></samlp:LogoutRequest>", inner);
    p = post_body("SAMLRequest", wrapped, NULL);
    expect_req(PG_SAML_BINDING_POST, p, "not_logout_request");
    free(p);
    free(wrapped);
    /* the signed one's Signature moved onto a forged root with its ID */
    s = strstr(sx, "<Signature");
    {
        char *end = strstr(sx, "</Signature>") + strlen("</Signature>");
        char *sigxml = strndup(s, (size_t)(end - s));
        wrapped = fmt("<samlp:LogoutRequest xmlns:samlp=\"" NS_SAMLP "\" xmlns:saml=\"" NS_SAML "\""
                      " ID=\"_idplr0123456789\" Version=\"2.0\" IssueInstant=\"2027-01-15T07:59:30Z\""
                      " Destination=\"" SP_SLO "\"><saml:Issuer>" IDP_ID "</saml:Issuer>%s"
                      "<saml:NameID>admin@corp.com</saml:NameID></samlp:LogoutRequest>", sigxml);
        p = post_body("SAMLRequest", wrapped, NULL);
        expect_req(PG_SAML_BINDING_POST, p, "bad_signature");
        free(p);
        free(wrapped);
        /* an XML signature inside a Redirect message is refused */
        q = query_ex("SAMLRequest", sx, NULL, "idp", SHA256_ALG, EVP_sha256());
        expect_req(PG_SAML_BINDING_REDIRECT, q, "bad_signature_placement");
        free(q);
        free(sigxml);
    }
    free(sx);
    free(xml);
}

static void
test_malformed_params(void **state)
{
    msg_t m = req_defaults();
    char *q = query_of("SAMLRequest", &m, "rs", "idp"), *q2;

    (void)state;
    q2 = fmt("%s&SAMLRequest=AAAA", q);
    expect_req(PG_SAML_BINDING_REDIRECT, q2, "malformed");
    free(q2);
    q2 = fmt("%s&RelayState=again", q);
    expect_req(PG_SAML_BINDING_REDIRECT, q2, "malformed");
    free(q2);
    q2 = fmt("%s&SAMLResponse=AAAA", q);
    expect_req(PG_SAML_BINDING_REDIRECT, q2, "malformed");
    free(q2);
    expect_req(PG_SAML_BINDING_REDIRECT, "", "malformed");
    expect_req(PG_SAML_BINDING_POST, "SAMLRequest=%%%", "malformed");
    expect_req(PG_SAML_BINDING_POST, "SAMLRequest=!!!!", "malformed");
    expect_req(PG_SAML_BINDING_POST, "SAMLRequest=PGE%2B", "malformed");
    expect_req((pg_saml_binding_t)7, q, "malformed");
    /* unknown extra parameters are ignored (not signed, never read) */
    q2 = fmt("%s&utm=1", q);
    {
        pg_saml_logout_request_in_t out;
        const char *reason;
        assert_int_equal(vreq(PG_SAML_BINDING_REDIRECT, q2, &reason, &out), PG_OK);
        pg_saml_logout_request_in_clear(&out);
    }
    free(q2);
    free(q);
}

/* ---- EncryptedID (test side) ------------------------------------------- */

/* Replace the first saml:NameID of xml by a saml:EncryptedID for `who`'s
 * certificate (AES-128-CBC + RSA-OAEP, EncryptedKey inside KeyInfo).
 * inner, when set, is encrypted instead of the NameID (raw XML). */
static char *
encrypt_nameid(const char *xml, const char *who, const char *inner)
{
    char cert[PBUF], name[64];
    xmlDocPtr d = xmlReadMemory(xml, (int)strlen(xml), "t.xml", NULL, 0);
    xmlNode *root, *nid, *tmpl, *ki, *ek, *eid;
    xmlSecKeysMngrPtr mngr;
    xmlSecEncCtxPtr ctx;
    xmlSecKeyPtr pub;
    xmlChar *mem = NULL;
    int size = 0;
    char *out;

    assert_non_null(d);
    root = xmlDocGetRootElement(d);
    nid = child(root, NS_SAML, "NameID");
    assert_non_null(nid);
    snprintf(name, sizeof(name), "%s-cert.pem", who);
    fix_path(cert, sizeof(cert), name);
    tmpl = xmlSecTmplEncDataCreate(d, xmlSecTransformAes128CbcId, NULL,
                                   inner ? BAD_CAST "http://www.w3.org/2001/04/xmlenc#Content"
                                         : BAD_CAST "http://www.w3.org/2001/04/xmlenc#Element",
                                   NULL, NULL);
    assert_non_null(tmpl);
    assert_non_null(xmlSecTmplEncDataEnsureCipherValue(tmpl));
    ki = xmlSecTmplEncDataEnsureKeyInfo(tmpl, NULL);
    ek = xmlSecTmplKeyInfoAddEncryptedKey(ki, xmlSecTransformRsaOaepId, NULL, NULL, NULL);
    assert_non_null(ek);
    assert_non_null(xmlSecTmplEncDataEnsureCipherValue(ek));
    mngr = xmlSecKeysMngrCreate();
    assert_int_equal(xmlSecCryptoAppDefaultKeysMngrInit(mngr), 0);
    pub = xmlSecCryptoAppKeyLoad(cert, xmlSecKeyDataFormatCertPem, NULL, NULL, NULL);
    assert_non_null(pub);
    assert_int_equal(xmlSecCryptoAppDefaultKeysMngrAdoptKey(mngr, pub), 0);
    ctx = xmlSecEncCtxCreate(mngr);
    ctx->encKey = xmlSecKeyGenerate(xmlSecKeyDataAesId, 128, xmlSecKeyDataTypeSession);
    assert_non_null(ctx->encKey);
    eid = xmlNewNode(xmlSearchNsByHref(d, root, BAD_CAST NS_SAML), BAD_CAST "EncryptedID");
    assert_non_null(xmlAddPrevSibling(nid, eid));
    if (inner) {
        assert_int_equal(xmlSecEncCtxBinaryEncrypt(ctx, tmpl, (const xmlSecByte *)inner,
                                                   (xmlSecSize)strlen(inner)), 0);
        xmlUnlinkNode(nid);
        xmlFreeNode(nid);
        xmlAddChild(eid, tmpl);
    } else {
        /* a standalone copy carries its own namespace declaration */
        xmlNewNs(nid, BAD_CAST NS_SAML, BAD_CAST "saml");
        assert_int_equal(xmlSecEncCtxXmlEncrypt(ctx, tmpl, nid), 0);
        xmlUnlinkNode(tmpl);
        xmlAddChild(eid, tmpl);
    }
    xmlSecEncCtxDestroy(ctx);
    xmlSecKeysMngrDestroy(mngr);
    xmlDocDumpMemory(d, &mem, &size);
    xmlFreeDoc(d);
    out = strdup((const char *)mem);
    xmlFree(mem);
    return out;
}

static void
test_encrypted_id(void **state)
{
    msg_t m = req_defaults();
    char *xml = render(&m), *enc, *q, *sx, *p;
    pg_saml_logout_request_in_t out;
    const char *reason = NULL;

    (void)state;
    enc = encrypt_nameid(xml, "sp", NULL);
    assert_null(strstr(enc, "alice@corp.com"));
    assert_non_null(strstr(enc, "EncryptedID"));
    q = query_ex("SAMLRequest", enc, NULL, "idp", SHA256_ALG, EVP_sha256());
    assert_int_equal(vreq(PG_SAML_BINDING_REDIRECT, q, &reason, &out), PG_OK);
    assert_string_equal(out.name_id, "alice@corp.com");
    assert_string_equal(out.name_id_format, FMT_EMAIL);
    assert_string_equal(out.sp_name_qualifier, SP_ID);
    assert_int_equal(out.n_session_index, 1);
    pg_saml_logout_request_in_clear(&out);
    free(q);
    sx = xml_sign(enc, "idp", NULL);
    p = post_body("SAMLRequest", sx, NULL);
    assert_int_equal(vreq(PG_SAML_BINDING_POST, p, &reason, &out), PG_OK);
    assert_string_equal(out.name_id, "alice@corp.com");
    pg_saml_logout_request_in_clear(&out);
    free(p);
    free(sx);
    free(enc);
    /* encrypted for someone else: signed, but we cannot read it */
    enc = encrypt_nameid(xml, "other", NULL);
    q = query_ex("SAMLRequest", enc, NULL, "idp", SHA256_ALG, EVP_sha256());
    expect_req(PG_SAML_BINDING_REDIRECT, q, "decrypt_failed");
    free(q);
    free(enc);
    /* the plaintext is not one NameID: a DOCTYPE, a comment, two elements */
    {
        static const char *const inners[] = {
            "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>"
            "<saml:NameID xmlns:saml=\"" NS_SAML "\">&e;</saml:NameID>",
            "<saml:NameID xmlns:saml=\"" NS_SAML "\">admin@corp.com<!---->.evil</saml:NameID>",
            "<saml:NameID xmlns:saml=\"" NS_SAML "\">a</saml:NameID><x/>",
            "<saml:Assertion xmlns:saml=\"" NS_SAML "\">a</saml:Assertion>",
        };
        size_t i;
        for (i = 0; i < sizeof(inners) / sizeof(inners[0]); i++) {
            enc = encrypt_nameid(xml, "sp", inners[i]);
            q = query_ex("SAMLRequest", enc, NULL, "idp", SHA256_ALG, EVP_sha256());
            expect_req(PG_SAML_BINDING_REDIRECT, q, "decrypt_failed");
            free(q);
            free(enc);
        }
        /* the control: the same path with a good plaintext works */
        enc = encrypt_nameid(xml, "sp", "<saml:NameID xmlns:saml=\"" NS_SAML "\">bob</saml:NameID>");
        q = query_ex("SAMLRequest", enc, NULL, "idp", SHA256_ALG, EVP_sha256());
        assert_int_equal(vreq(PG_SAML_BINDING_REDIRECT, q, &reason, &out), PG_OK);
        assert_string_equal(out.name_id, "bob");
        pg_saml_logout_request_in_clear(&out);
        free(q);
        free(enc);
    }
    free(xml);
}

/* ======================================================================= */
/* IdP-initiated: our LogoutResponse                                       */

static void
test_build_logout_response(void **state)
{
    char *url = NULL;
    pg_err_t err = {{0}};
    parsed_url_t p;
    xmlDocPtr d;
    xmlNode *root, *sc;

    (void)state;
    assert_int_equal(pg_saml_logout_response(g_slo, "_idplr0123456789", NULL, NULL,
                                             "relay-1", NOW, &url, &err), PG_OK);
    parse_url(url, "SAMLResponse", &p);
    assert_true(p.sig_ok);
    assert_string_equal(p.base, IDP_SLO_RESP); /* ResponseLocation */
    assert_string_equal(p.relay, "relay-1");
    d = xmlReadMemory(p.xml, (int)strlen(p.xml), "r.xml", NULL, XML_PARSE_NONET);
    root = xmlDocGetRootElement(d);
    assert_string_equal((const char *)root->name, "LogoutResponse");
    assert_prop(root, "InResponseTo", "_idplr0123456789");
    assert_prop(root, "Destination", IDP_SLO_RESP);
    assert_prop(root, "IssueInstant", "2027-01-15T08:00:00Z");
    assert_text(child(root, NS_SAML, "Issuer"), SP_ID);
    sc = child(child(root, NS_SAMLP, "Status"), NS_SAMLP, "StatusCode");
    assert_prop(sc, "Value", PG_SAML_STATUS_SUCCESS);
    assert_null(child(sc, NS_SAMLP, "StatusCode"));
    xmlFreeDoc(d);
    parsed_free(&p);
    free(url);

    assert_int_equal(pg_saml_logout_response(g_slo, "_r<&>", PG_SAML_STATUS_RESPONDER,
                                             PG_SAML_STATUS_PARTIAL, NULL, NOW, &url, &err),
                     PG_OK);
    parse_url(url, "SAMLResponse", &p);
    assert_true(p.sig_ok);
    assert_null(p.relay);
    d = xmlReadMemory(p.xml, (int)strlen(p.xml), "r.xml", NULL, XML_PARSE_NONET);
    root = xmlDocGetRootElement(d);
    assert_prop(root, "InResponseTo", "_r<&>");
    sc = child(child(root, NS_SAMLP, "Status"), NS_SAMLP, "StatusCode");
    assert_prop(sc, "Value", PG_SAML_STATUS_RESPONDER);
    assert_prop(child(sc, NS_SAMLP, "StatusCode"), "Value", PG_SAML_STATUS_PARTIAL);
    xmlFreeDoc(d);
    parsed_free(&p);
    free(url);

    url = (char *)1;
    assert_int_equal(pg_saml_logout_response(g_slo, NULL, NULL, NULL, NULL, NOW, &url, &err),
                     PG_ERR_INVALID);
    assert_null(url);
    assert_int_equal(pg_saml_logout_response(g_slo, "_r", "not a uri\"/>", NULL, NULL, NOW,
                                             &url, &err), PG_ERR_INVALID);
    assert_int_equal(pg_saml_logout_response(g_slo, "_r", NULL, "x\"y:z", NULL, NOW,
                                             &url, &err), PG_ERR_INVALID);
    assert_int_equal(pg_saml_logout_response(g_slo, "_r\x02", NULL, NULL, NULL, NOW,
                                             &url, &err), PG_ERR_INVALID);
    assert_null(url);
}

/* ======================================================================= */
/* configuration                                                           */

static void
test_config(void **state)
{
    char key[PBUF], cert[PBUF], md[PBUF];
    pg_saml_sp_cfg_t cfg;
    pg_saml_slo_t *slo = NULL;
    pg_err_t err = {{0}};

    (void)state;
    make_cfg(&cfg, key, cert, md, "idp-metadata-noslo.xml");
    assert_int_equal(pg_saml_slo_new(g_sp, &cfg, &slo, &err), PG_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "SingleLogoutService"));
    assert_null(slo);
    make_cfg(&cfg, key, cert, md, "idp-metadata.xml");
    cfg.slo_url = NULL;
    assert_int_equal(pg_saml_slo_new(g_sp, &cfg, &slo, &err), PG_ERR_CONFIG);
    make_cfg(&cfg, key, cert, md, "idp-metadata.xml");
    assert_int_equal(pg_saml_slo_new(NULL, &cfg, &slo, &err), PG_ERR_CONFIG);
    fix_path(key, PBUF, "sp-cert.pem"); /* not a private key */
    assert_int_equal(pg_saml_slo_new(g_sp, &cfg, &slo, &err), PG_ERR_CONFIG);
    assert_null(slo);
}

/* Fetched metadata (gate refresh): the IdP metadata as a buffer and no key
 * file, the key comes from the SP; an SP without IdP metadata is refused. */
static void
test_config_buffer(void **state)
{
    char key[PBUF], cert[PBUF], md[PBUF], *buf = NULL, *url = NULL,
         *id = NULL;
    pg_saml_sp_cfg_t cfg;
    pg_saml_sp_t *sp = NULL, *bare = NULL;
    pg_saml_slo_t *slo = NULL;
    pg_saml_logout_subject_t who;
    pg_err_t err = {{0}};
    size_t len = 0;

    (void)state;
    make_cfg(&cfg, key, cert, md, "idp-metadata.xml");
    assert_int_equal(pg_read_file(md, PG_SAML_MAX_METADATA, 0, &buf, &len,
                                  &err), PG_OK);
    cfg.idp_metadata_path = NULL;
    assert_int_equal(pg_saml_sp_new(&cfg, &bare, &err), PG_OK);
    /* SP-only: no IdP entity, no SLO context */
    assert_int_equal(pg_saml_slo_new(bare, &cfg, &slo, &err), PG_ERR_CONFIG);
    assert_null(slo);
    assert_int_equal(pg_saml_sp_rebind(bare, buf, len, &sp, &err), PG_OK);
    cfg.key_path = NULL;
    cfg.idp_metadata = buf;
    cfg.idp_metadata_len = len;
    if (pg_saml_slo_new(sp, &cfg, &slo, &err) != PG_OK) {
        fail_msg("pg_saml_slo_new from a buffer: %s", err.msg);
    }
    memset(&who, 0, sizeof(who));
    who.name_id = "alice@example.com";
    assert_int_equal(pg_saml_logout_request(slo, &who, NULL, NOW, &url, &id,
                                            &err), PG_OK);
    assert_non_null(strstr(url, "SAMLRequest="));
    assert_non_null(strstr(url, "Signature="));
    free(url);
    free(id);
    pg_saml_slo_free(slo);
    pg_saml_sp_free(sp);
    pg_saml_sp_free(bare);
    free(buf);
}

/* Key rollover: a metadata with two signing keys accepts either. */
static void
test_rollover_keys(void **state)
{
    char key[PBUF], cert[PBUF], md[PBUF];
    pg_saml_sp_cfg_t cfg;
    pg_saml_slo_t *slo = NULL, *saved = g_slo;
    pg_err_t err = {{0}};
    msg_t m = req_defaults();
    char *q1, *q2, *p2, *q3;
    pg_saml_logout_request_in_t out;
    const char *reason;

    (void)state;
    make_cfg(&cfg, key, cert, md, "idp-metadata-rollover.xml");
    if (pg_saml_slo_new(g_sp, &cfg, &slo, &err) != PG_OK) {
        fail_msg("%s", err.msg);
    }
    q1 = query_of("SAMLRequest", &m, NULL, "idp");
    q2 = query_of("SAMLRequest", &m, NULL, "idp2");
    p2 = post_of("SAMLRequest", &m, "idp2");
    q3 = query_of("SAMLRequest", &m, NULL, "other");
    g_slo = slo;
    assert_int_equal(vreq(PG_SAML_BINDING_REDIRECT, q1, &reason, &out), PG_OK);
    pg_saml_logout_request_in_clear(&out);
    assert_int_equal(vreq(PG_SAML_BINDING_REDIRECT, q2, &reason, &out), PG_OK);
    pg_saml_logout_request_in_clear(&out);
    assert_int_equal(vreq(PG_SAML_BINDING_POST, p2, &reason, &out), PG_OK);
    pg_saml_logout_request_in_clear(&out);
    expect_req(PG_SAML_BINDING_REDIRECT, q3, "bad_signature");
    g_slo = saved;
    /* the single-key SP does not know idp2 */
    expect_req(PG_SAML_BINDING_REDIRECT, q2, "bad_signature");
    pg_saml_slo_free(slo);
    free(q1);
    free(q2);
    free(p2);
    free(q3);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_logout_request),
        cmocka_unit_test(test_build_logout_request_limits),
        cmocka_unit_test(test_logout_response_roundtrip),
        cmocka_unit_test(test_response_status_not_success),
        cmocka_unit_test(test_response_checks),
        cmocka_unit_test(test_request_valid_both_bindings),
        cmocka_unit_test(test_request_unsigned),
        cmocka_unit_test(test_signature_stripped),
        cmocka_unit_test(test_wrong_key),
        cmocka_unit_test(test_tampered_query),
        cmocka_unit_test(test_sig_alg),
        cmocka_unit_test(test_request_checks),
        cmocka_unit_test(test_doctype_xxe),
        cmocka_unit_test(test_oversized),
        cmocka_unit_test(test_deflate_bomb),
        cmocka_unit_test(test_xml_signature_structure),
        cmocka_unit_test(test_malformed_params),
        cmocka_unit_test(test_encrypted_id),
        cmocka_unit_test(test_build_logout_response),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_config_buffer),
        cmocka_unit_test(test_rollover_keys),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
