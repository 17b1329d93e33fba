/*
 * SAML SP validation core (src/idp/saml/sp.c).
 *
 * Responses are built in-process from an XML template, signed with xmlsec
 * (RSA-SHA256, exc-c14n, enveloped) by the IdP fixture key or by an
 * attacker key, optionally encrypted to the SP certificate (AES-128-CBC +
 * RSA-OAEP), then mutated for each attack and posted as a form body.
 * Keys and metadata: tests/unit/fixtures/saml/ (see README there).
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
#include <cmocka.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <xmlsec/xmlsec.h>
#include <xmlsec/xmltree.h>
#include <xmlsec/xmldsig.h>
#include <xmlsec/xmlenc.h>
#include <xmlsec/templates.h>
#include <xmlsec/base64.h>
#include <xmlsec/crypto.h>

#include "provgate/saml.h"

#define NS_SAMLP "urn:oasis:names:tc:SAML:2.0:protocol"
#define NS_SAML "urn:oasis:names:tc:SAML:2.0:assertion"
#define SP_ID "https://sp.example.test/saml"
#define ACS "https://sp.example.test/saml/acs"
#define IDP_ID "https://idp.example.test/saml"
#define REQ_ID "_req0123456789abcdef"
#define NOW 1800000000LL /* 2027-01-15T08:00:00Z */

static char g_fix[PATH_MAX];
#define PBUF (PATH_MAX + 64)
static pg_saml_sp_t *g_sp;       /* default policy */
static pg_saml_sp_t *g_sp_strict; /* unsolicited allowed, both signatures required */

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
    snprintf(slash, sizeof(cand) - (size_t)(slash - cand), "/fixtures/saml");
    if (stat(cand, &sb) != 0) {
        n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        assert_true(n > 0);
        exe[n] = '\0';
        *strrchr(exe, '/') = '\0';
        snprintf(cand, sizeof(cand), "%s/../../tests/unit/fixtures/saml", exe);
    }
    assert_non_null(realpath(cand, g_fix));
}

static pg_saml_sp_t *
make_sp(int unsol, int req_assert, int req_resp, int sign_req)
{
    char key[PBUF], cert[PBUF], md[PBUF];
    pg_saml_sp_cfg_t cfg = {0};
    pg_saml_sp_t *sp = NULL;
    pg_err_t err = {{0}};

    fix_path(key, sizeof(key), "sp-key.pem");
    fix_path(cert, sizeof(cert), "sp-cert.pem");
    fix_path(md, sizeof(md), "idp-metadata.xml");
    cfg.entity_id = SP_ID;
    cfg.acs_url = ACS;
    cfg.slo_url = "https://sp.example.test/saml/slo";
    cfg.key_path = key;
    cfg.cert_path = cert;
    cfg.idp_metadata_path = md;
    cfg.nameid_format = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress";
    cfg.allow_unsolicited = unsol;
    cfg.require_signed_assertion = req_assert;
    cfg.require_signed_response = req_resp;
    cfg.sign_authn_request = sign_req;
    if (pg_saml_sp_new(&cfg, &sp, &err) != PG_OK) {
        fail_msg("pg_saml_sp_new: %s", err.msg);
    }
    return sp;
}

static int
group_setup(void **state)
{
    (void)state;
    find_fixtures();
    g_sp = make_sp(0, 0, 0, 0);
    g_sp_strict = make_sp(1, 1, 1, 1);
    return 0;
}

static int
group_teardown(void **state)
{
    (void)state;
    pg_saml_sp_free(g_sp);
    pg_saml_sp_free(g_sp_strict);
    return 0;
}

/* ---- response builder ------------------------------------------------- */

typedef struct opts {
    const char *resp_issuer, *assert_issuer, *audience, *recipient;
    const char *destination, *nameid, *status, *resp_irt, *scd_irt;
    const char *not_before, *not_on_or_after, *scd_noa;
    int sign_assert, sign_resp, encrypt;
    const char *key;       /* "idp" or "other" */
    int embed_cert;
} opts_t;

static opts_t
defaults(void)
{
    opts_t o;
    memset(&o, 0, sizeof(o));
    o.resp_issuer = IDP_ID;
    o.assert_issuer = IDP_ID;
    o.audience = SP_ID;
    o.recipient = ACS;
    o.destination = ACS;
    o.nameid = "alice@corp.com";
    o.status = "urn:oasis:names:tc:SAML:2.0:status:Success";
    o.resp_irt = REQ_ID;
    o.scd_irt = REQ_ID;
    o.not_before = "2027-01-15T07:59:00Z";
    o.not_on_or_after = "2027-01-15T08:05:00Z";
    o.scd_noa = "2027-01-15T08:04:00Z";
    o.sign_assert = 1;
    o.key = "idp";
    return o;
}

static xmlDocPtr
build_doc(const opts_t *o)
{
    char buf[8192], rirt[128] = "", sirt[128] = "";
    int n;
    xmlDocPtr d;

    if (o->resp_irt) snprintf(rirt, sizeof(rirt), " InResponseTo=\"%s\"", o->resp_irt);
    if (o->scd_irt) snprintf(sirt, sizeof(sirt), " InResponseTo=\"%s\"", o->scd_irt);
    n = snprintf(buf, sizeof(buf),
        "<samlp:Response xmlns:samlp=\"" NS_SAMLP "\" xmlns:saml=\"" NS_SAML "\""
        " ID=\"_resp1\" Version=\"2.0\" IssueInstant=\"2027-01-15T08:00:00Z\""
        " Destination=\"%s\"%s>"
        "<saml:Issuer>%s</saml:Issuer>"
        "<samlp:Status><samlp:StatusCode Value=\"%s\"/></samlp:Status>"
        "<saml:Assertion xmlns:saml=\"" NS_SAML "\" ID=\"_assert1\" Version=\"2.0\" IssueInstant=\"2027-01-15T08:00:00Z\">"
        "<saml:Issuer>%s</saml:Issuer>"
        "<saml:Subject><saml:NameID Format=\"urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress\""
        " NameQualifier=\"urn:test:idp-q\" SPNameQualifier=\"urn:test:sp-q\">%s</saml:NameID>"
        "<saml:SubjectConfirmation Method=\"urn:oasis:names:tc:SAML:2.0:cm:bearer\">"
        "<saml:SubjectConfirmationData Recipient=\"%s\" NotOnOrAfter=\"%s\"%s/>"
        "</saml:SubjectConfirmation></saml:Subject>"
        "<saml:Conditions NotBefore=\"%s\" NotOnOrAfter=\"%s\"><saml:AudienceRestriction>"
        "<saml:Audience>%s</saml:Audience></saml:AudienceRestriction></saml:Conditions>"
        "<saml:AuthnStatement AuthnInstant=\"2027-01-15T08:00:00Z\" SessionIndex=\"_sess1\">"
        "<saml:AuthnContext><saml:AuthnContextClassRef>urn:oasis:names:tc:SAML:2.0:ac:classes:"
        "PasswordProtectedTransport</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement>"
        "<saml:AttributeStatement><saml:Attribute Name=\"groups\">"
        "<saml:AttributeValue>admins</saml:AttributeValue><saml:AttributeValue>devs</saml:AttributeValue>"
        "</saml:Attribute><saml:Attribute Name=\"mail\"><saml:AttributeValue>alice@corp.com"
        "</saml:AttributeValue></saml:Attribute></saml:AttributeStatement>"
        "</saml:Assertion></samlp:Response>",
        o->destination, rirt, o->resp_issuer, o->status, o->assert_issuer,
        o->nameid, o->recipient, o->scd_noa, sirt, o->not_before,
        o->not_on_or_after, o->audience);
    assert_true(n > 0 && (size_t)n < sizeof(buf));
    d = xmlReadMemory(buf, n, "t.xml", NULL, 0);
    assert_non_null(d);
    return d;
}

static xmlNode *
child(xmlNode *n, const char *ns, const char *name)
{
    xmlNode *c;
    for (c = n->children; c; c = c->next) {
        if (c->type == XML_ELEMENT_NODE && c->ns &&
            !strcmp((const char *)c->ns->href, ns) && !strcmp((const char *)c->name, name)) {
            return c;
        }
    }
    return NULL;
}

static xmlNode *
assertion_of(xmlDocPtr d)
{
    return child(xmlDocGetRootElement(d), NS_SAML, "Assertion");
}

static void
sign_node(xmlDocPtr d, xmlNode *el, const char *who, int embed)
{
    char key[PBUF], cert[PBUF], uri[64];
    xmlNode *sig, *ref, *issuer;
    xmlSecDSigCtxPtr ctx;
    const xmlChar *ids[] = {BAD_CAST "ID", NULL};

    snprintf(key, sizeof(key), "%s/%s-key.pem", g_fix, who);
    snprintf(cert, sizeof(cert), "%s/%s-cert.pem", g_fix, who);
    {
        xmlChar *id = xmlGetProp(el, BAD_CAST "ID");
        assert_non_null(id);
        snprintf(uri, sizeof(uri), "#%s", (const char *)id);
        xmlFree(id);
    }
    sig = xmlSecTmplSignatureCreate(d, xmlSecTransformExclC14NId,
                                    xmlSecTransformRsaSha256Id, NULL);
    assert_non_null(sig);
    issuer = child(el, NS_SAML, "Issuer");
    assert_non_null(issuer);
    assert_non_null(xmlAddNextSibling(issuer, sig));
    ref = xmlSecTmplSignatureAddReference(sig, xmlSecTransformSha256Id, NULL,
                                          BAD_CAST uri, NULL);
    assert_non_null(ref);
    assert_non_null(xmlSecTmplReferenceAddTransform(ref, xmlSecTransformEnvelopedId));
    assert_non_null(xmlSecTmplReferenceAddTransform(ref, xmlSecTransformExclC14NId));
    if (embed) {
        xmlNode *ki = xmlSecTmplSignatureEnsureKeyInfo(sig, NULL);
        assert_non_null(xmlSecTmplKeyInfoAddX509Data(ki));
    }
    xmlSecAddIDs(d, xmlDocGetRootElement(d), ids);
    ctx = xmlSecDSigCtxCreate(NULL);
    assert_non_null(ctx);
    ctx->signKey = xmlSecCryptoAppKeyLoad(key, xmlSecKeyDataFormatPem, NULL, NULL, NULL);
    assert_non_null(ctx->signKey);
    assert_int_equal(xmlSecCryptoAppKeyCertLoad(ctx->signKey, cert, xmlSecKeyDataFormatPem), 0);
    assert_int_equal(xmlSecDSigCtxSign(ctx, sig), 0);
    xmlSecDSigCtxDestroy(ctx);
}

/* Replace the Assertion by saml:EncryptedAssertion for the SP cert. */
static void
encrypt_assertion(xmlDocPtr d)
{
    char cert[PBUF];
    xmlNode *as = assertion_of(d), *tmpl, *ki, *ek, *ea;
    xmlSecKeysMngrPtr mngr;
    xmlSecEncCtxPtr ctx;
    xmlSecKeyPtr pub;
    xmlNsPtr ns;

    fix_path(cert, sizeof(cert), "sp-cert.pem");
    tmpl = xmlSecTmplEncDataCreate(d, xmlSecTransformAes128CbcId, NULL,
                                   BAD_CAST "http://www.w3.org/2001/04/xmlenc#Element", NULL, NULL);
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
    ea = xmlNewNode(NULL, BAD_CAST "EncryptedAssertion");
    ns = xmlSearchNsByHref(d, xmlDocGetRootElement(d), BAD_CAST NS_SAML);
    xmlSetNs(ea, ns);
    assert_non_null(xmlAddPrevSibling(as, ea));
    assert_int_equal(xmlSecEncCtxXmlEncrypt(ctx, tmpl, as), 0);
    /* tmpl now replaces the assertion in the tree; move it into ea */
    xmlUnlinkNode(tmpl);
    xmlAddChild(ea, tmpl);
    xmlSecEncCtxDestroy(ctx);
    xmlSecKeysMngrDestroy(mngr);
}

typedef void (*mutate_fn)(xmlDocPtr d);

static xmlDocPtr
signed_doc(const opts_t *o)
{
    xmlDocPtr d = build_doc(o);
    if (o->sign_assert) {
        sign_node(d, assertion_of(d), o->key, o->embed_cert);
    }
    if (o->encrypt) {
        encrypt_assertion(d);
    }
    if (o->sign_resp) {
        sign_node(d, xmlDocGetRootElement(d), o->key, o->embed_cert);
    }
    return d;
}

/* Serialise, base64, form-encode. Caller frees. */
static char *
form_of_xml(const char *xml, size_t n)
{
    xmlChar *b64 = xmlSecBase64Encode((const xmlSecByte *)xml, (xmlSecSize)n, 0);
    char *enc = pg_urlencode((const char *)b64, strlen((const char *)b64));
    size_t len = strlen(enc) + 64;
    char *body = malloc(len);
    snprintf(body, len, "SAMLResponse=%s&RelayState=rs42", enc);
    xmlFree(b64);
    free(enc);
    return body;
}

static char *
form_of_doc(xmlDocPtr d)
{
    xmlChar *mem = NULL;
    int size = 0;
    char *body;
    xmlDocDumpMemory(d, &mem, &size);
    body = form_of_xml((const char *)mem, (size_t)size);
    xmlFree(mem);
    return body;
}

/* Run the ACS check; returns the status, *reason set. */
static pg_status_t
run(pg_saml_sp_t *sp, const opts_t *o, mutate_fn m, const char *irt,
    int64_t now, pg_saml_assertion_t *out, const char **reason)
{
    xmlDocPtr d = signed_doc(o);
    char *body;
    pg_saml_expect_t exp = {irt, now};
    pg_err_t err = {{0}};
    pg_status_t st;

    if (m) {
        m(d);
    }
    body = form_of_doc(d);
    xmlFreeDoc(d);
    st = pg_saml_acs_validate(sp, body, strlen(body), &exp, out, reason, &err);
    free(body);
    return st;
}

static void
expect_refused(const opts_t *o, mutate_fn m, const char *want)
{
    pg_saml_assertion_t a;
    const char *reason = NULL;
    pg_status_t st = run(g_sp, o, m, REQ_ID, NOW, &a, &reason);
    assert_int_not_equal(st, PG_OK);
    assert_non_null(reason);
    assert_string_equal(reason, want);
    assert_null(a.name_id);
    assert_null(a.attributes);
}

/* ---- tests ------------------------------------------------------------ */

static void
check_alice(const pg_saml_assertion_t *a)
{
    json_t *g;
    assert_string_equal(a->name_id, "alice@corp.com");
    assert_string_equal(a->name_id_format, "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress");
    /* kept for Single Logout, whose NameID must match the one issued */
    assert_string_equal(a->name_qualifier, "urn:test:idp-q");
    assert_string_equal(a->sp_name_qualifier, "urn:test:sp-q");
    assert_string_equal(a->assertion_id, "_assert1");
    assert_string_equal(a->issuer, IDP_ID);
    assert_string_equal(a->session_index, "_sess1");
    assert_string_equal(a->relay_state, "rs42");
    /* the earliest of Conditions (08:05) and bearer (08:04) NotOnOrAfter */
    assert_int_equal(a->not_on_or_after, NOW + 240);
    g = json_object_get(a->attributes, "groups");
    assert_int_equal(json_array_size(g), 2);
    assert_string_equal(json_string_value(json_array_get(g, 0)), "admins");
    assert_string_equal(json_string_value(json_array_get(g, 1)), "devs");
    assert_string_equal(json_string_value(json_array_get(
        json_object_get(a->attributes, "mail"), 0)), "alice@corp.com");
}

static void
test_valid_signed_assertion(void **s)
{
    opts_t o = defaults();
    pg_saml_assertion_t a;
    const char *reason = NULL;
    (void)s;
    assert_int_equal(run(g_sp, &o, NULL, REQ_ID, NOW, &a, &reason), PG_OK);
    check_alice(&a);
    assert_string_equal(a.in_response_to, REQ_ID);
    pg_saml_assertion_clear(&a);
}

static void
test_valid_signed_response_only(void **s)
{
    opts_t o = defaults();
    pg_saml_assertion_t a;
    const char *reason = NULL;
    (void)s;
    o.sign_assert = 0;
    o.sign_resp = 1;
    assert_int_equal(run(g_sp, &o, NULL, REQ_ID, NOW, &a, &reason), PG_OK);
    check_alice(&a);
    pg_saml_assertion_clear(&a);
}

static void
test_clock_skew_tolerated(void **s)
{
    opts_t o = defaults();
    pg_saml_assertion_t a;
    const char *reason = NULL;
    (void)s;
    /* 30 s after the bearer NotOnOrAfter, within the 60 s default skew */
    assert_int_equal(run(g_sp, &o, NULL, REQ_ID, NOW + 270, &a, &reason), PG_OK);
    pg_saml_assertion_clear(&a);
    /* 30 s before NotBefore */
    assert_int_equal(run(g_sp, &o, NULL, REQ_ID, NOW - 90, &a, &reason), PG_OK);
    pg_saml_assertion_clear(&a);
}

static void
test_unsigned(void **s)
{
    opts_t o = defaults();
    (void)s;
    o.sign_assert = 0;
    expect_refused(&o, NULL, "unsigned");
}

static void
mut_strip_sig(xmlDocPtr d)
{
    xmlNode *as = assertion_of(d);
    xmlNode *sig = child(as, "http://www.w3.org/2000/09/xmldsig#", "Signature");
    assert_non_null(sig);
    xmlUnlinkNode(sig);
    xmlFreeNode(sig);
}

static void
test_stripped_signature(void **s)
{
    opts_t o = defaults();
    (void)s;
    expect_refused(&o, mut_strip_sig, "unsigned");
}

static void
mut_empty_sigvalue(xmlDocPtr d)
{
    xmlNode *sig = child(assertion_of(d), "http://www.w3.org/2000/09/xmldsig#", "Signature");
    xmlNode *sv = child(sig, "http://www.w3.org/2000/09/xmldsig#", "SignatureValue");
    assert_non_null(sv);
    xmlNodeSetContent(sv, BAD_CAST "");
}

static void
test_empty_signature_value(void **s)
{
    opts_t o = defaults();
    (void)s;
    expect_refused(&o, mut_empty_sigvalue, "bad_signature");
}

static void
mut_tamper_nameid(xmlDocPtr d)
{
    xmlNode *subj = child(assertion_of(d), NS_SAML, "Subject");
    xmlNodeSetContent(child(subj, NS_SAML, "NameID"), BAD_CAST "admin@corp.com");
}

static void
test_tampered_after_signing(void **s)
{
    opts_t o = defaults();
    (void)s;
    expect_refused(&o, mut_tamper_nameid, "bad_signature");
    o.sign_assert = 0;
    o.sign_resp = 1;
    expect_refused(&o, mut_tamper_nameid, "bad_signature");
}

static void
test_other_key(void **s)
{
    opts_t o = defaults();
    (void)s;
    o.key = "other";
    expect_refused(&o, NULL, "bad_signature");
}

static void
test_other_key_embedded_cert(void **s)
{
    opts_t o = defaults();
    (void)s;
    o.key = "other";
    o.embed_cert = 1;
    expect_refused(&o, NULL, "bad_signature");
    o.sign_assert = 0;
    o.sign_resp = 1;
    expect_refused(&o, NULL, "bad_signature");
}

/* XSW1: evil Response outside, the signed Response copied into the
 * Signature's ds:Object. */
static void
mut_xsw1(xmlDocPtr d)
{
    xmlNode *root = xmlDocGetRootElement(d);
    xmlNode *copy = xmlDocCopyNode(root, d, 1);
    xmlNode *sig = child(root, "http://www.w3.org/2000/09/xmldsig#", "Signature");
    xmlNode *obj = xmlNewChild(sig, sig->ns, BAD_CAST "Object", NULL);
    xmlAddChild(obj, copy);
    xmlSetProp(root, BAD_CAST "ID", BAD_CAST "_evil");
    mut_tamper_nameid(d);
}

/* XSW2: the signed Response copied as a sibling before the Signature. */
static void
mut_xsw2(xmlDocPtr d)
{
    xmlNode *root = xmlDocGetRootElement(d);
    xmlNode *copy = xmlDocCopyNode(root, d, 1);
    xmlNode *sig = child(root, "http://www.w3.org/2000/09/xmldsig#", "Signature");
    xmlAddPrevSibling(sig, copy);
    xmlSetProp(root, BAD_CAST "ID", BAD_CAST "_evil");
    mut_tamper_nameid(d);
}

/* XSW3: unsigned evil assertion inserted before the signed one. */
static void
mut_xsw3(xmlDocPtr d)
{
    xmlNode *as = assertion_of(d);
    xmlNode *evil = xmlDocCopyNode(as, d, 1);
    xmlNode *sig = child(evil, "http://www.w3.org/2000/09/xmldsig#", "Signature");
    xmlUnlinkNode(sig);
    xmlFreeNode(sig);
    xmlSetProp(evil, BAD_CAST "ID", BAD_CAST "_evil");
    xmlAddPrevSibling(as, evil);
    xmlNodeSetContent(child(child(evil, NS_SAML, "Subject"), NS_SAML, "NameID"),
                      BAD_CAST "admin@corp.com");
}

/* XSW4: evil assertion wraps the signed one. */
static void
mut_xsw4(xmlDocPtr d)
{
    xmlNode *as = assertion_of(d);
    xmlNode *evil = xmlDocCopyNode(as, d, 1);
    xmlNode *sig = child(evil, "http://www.w3.org/2000/09/xmldsig#", "Signature");
    xmlUnlinkNode(sig);
    xmlFreeNode(sig);
    xmlSetProp(evil, BAD_CAST "ID", BAD_CAST "_evil");
    xmlNodeSetContent(child(child(evil, NS_SAML, "Subject"), NS_SAML, "NameID"),
                      BAD_CAST "admin@corp.com");
    xmlReplaceNode(as, evil);
    xmlAddChild(evil, as);
}

/* XSW7: signed assertion hidden in samlp:Extensions, evil one in its place. */
static void
mut_xsw7(xmlDocPtr d)
{
    xmlNode *root = xmlDocGetRootElement(d);
    xmlNode *as = assertion_of(d);
    xmlNode *evil = xmlDocCopyNode(as, d, 1);
    xmlNode *ext = xmlNewNode(root->ns, BAD_CAST "Extensions");
    xmlNode *sig = child(evil, "http://www.w3.org/2000/09/xmldsig#", "Signature");
    xmlUnlinkNode(sig);
    xmlFreeNode(sig);
    xmlSetProp(evil, BAD_CAST "ID", BAD_CAST "_evil");
    xmlNodeSetContent(child(child(evil, NS_SAML, "Subject"), NS_SAML, "NameID"),
                      BAD_CAST "admin@corp.com");
    xmlReplaceNode(as, evil);
    xmlAddChild(ext, as);
    xmlAddNextSibling(child(root, NS_SAML, "Issuer"), ext);
}

/* XSW8: evil assertion with the same ID; the signed one moved into the
 * evil assertion's Signature/Object. */
static void
mut_xsw8(xmlDocPtr d)
{
    xmlNode *as = assertion_of(d);
    xmlNode *evil = xmlDocCopyNode(as, d, 1);
    xmlNode *sig = child(evil, "http://www.w3.org/2000/09/xmldsig#", "Signature");
    xmlNode *obj = xmlNewChild(sig, sig->ns, BAD_CAST "Object", NULL);
    xmlNodeSetContent(child(child(evil, NS_SAML, "Subject"), NS_SAML, "NameID"),
                      BAD_CAST "admin@corp.com");
    xmlReplaceNode(as, evil);
    xmlAddChild(obj, as);
}


/* XSW5: evil assertion (unsigned, its own ID) in place; the signed one
 * appended after it as a sibling. */
static void
mut_xsw5(xmlDocPtr d)
{
    xmlNode *as = assertion_of(d);
    xmlNode *evil = xmlDocCopyNode(as, d, 1);
    xmlNode *sig = child(evil, "http://www.w3.org/2000/09/xmldsig#", "Signature");
    xmlUnlinkNode(sig);
    xmlFreeNode(sig);
    xmlSetProp(evil, BAD_CAST "ID", BAD_CAST "_evil");
    xmlNodeSetContent(child(child(evil, NS_SAML, "Subject"), NS_SAML, "NameID"),
                      BAD_CAST "admin@corp.com");
    xmlAddNextSibling(as, evil);
}

/* XSW6: evil assertion carries the original Signature, the signed
 * assertion moved inside that Signature's ds:Object. */
static void
mut_xsw6(xmlDocPtr d)
{
    xmlNode *as = assertion_of(d);
    xmlNode *evil = xmlDocCopyNode(as, d, 1);
    xmlNode *sig = child(evil, "http://www.w3.org/2000/09/xmldsig#", "Signature");
    xmlNode *obj = xmlNewChild(sig, sig->ns, BAD_CAST "Object", NULL);
    xmlNode *inner;
    xmlSetProp(evil, BAD_CAST "ID", BAD_CAST "_evil");
    xmlNodeSetContent(child(child(evil, NS_SAML, "Subject"), NS_SAML, "NameID"),
                      BAD_CAST "admin@corp.com");
    xmlReplaceNode(as, evil);
    inner = child(as, "http://www.w3.org/2000/09/xmldsig#", "Signature");
    xmlUnlinkNode(inner);
    xmlFreeNode(inner);
    xmlAddChild(obj, as);
}

/* A look-alike <x:Assertion> in a foreign namespace before the real one
 * (lasso finds elements by local name). */
static void
mut_foreign_assertion(xmlDocPtr d)
{
    xmlNode *as = assertion_of(d);
    xmlNode *fake = xmlNewNode(NULL, BAD_CAST "Assertion");
    xmlNsPtr ns = xmlNewNs(fake, BAD_CAST "urn:evil", BAD_CAST "x");
    xmlSetNs(fake, ns);
    xmlAddPrevSibling(as, fake);
}

/* Reference pointing at the Response instead of the enclosing Assertion. */
static void
mut_ref_elsewhere(xmlDocPtr d)
{
    xmlNode *sig = child(assertion_of(d), "http://www.w3.org/2000/09/xmldsig#", "Signature");
    xmlNode *si = child(sig, "http://www.w3.org/2000/09/xmldsig#", "SignedInfo");
    xmlNode *ref = child(si, "http://www.w3.org/2000/09/xmldsig#", "Reference");
    xmlSetProp(ref, BAD_CAST "URI", BAD_CAST "#_resp1");
}

/* An XSLT transform added to the Reference. */
static void
mut_xslt_transform(xmlDocPtr d)
{
    const char *dsn = "http://www.w3.org/2000/09/xmldsig#";
    xmlNode *sig = child(assertion_of(d), dsn, "Signature");
    xmlNode *ref = child(child(sig, dsn, "SignedInfo"), dsn, "Reference");
    xmlNode *trs = child(ref, dsn, "Transforms");
    xmlNode *t = xmlNewChild(trs, trs->ns, BAD_CAST "Transform", NULL);
    xmlSetProp(t, BAD_CAST "Algorithm", BAD_CAST "http://www.w3.org/TR/1999/REC-xslt-19991116");
}

static void
test_xsw(void **s)
{
    opts_t o = defaults();
    (void)s;
    expect_refused(&o, mut_xsw3, "assertion_count");
    expect_refused(&o, mut_xsw4, "assertion_count");
    expect_refused(&o, mut_xsw5, "assertion_count");
    expect_refused(&o, mut_xsw6, "assertion_count");
    expect_refused(&o, mut_xsw7, "assertion_count");
    expect_refused(&o, mut_foreign_assertion, "assertion_count");
    /* same ID twice */
    expect_refused(&o, mut_xsw8, "duplicate_id");
    o.sign_assert = 0;
    o.sign_resp = 1;
    /* the wrapped copy repeats the signed IDs */
    expect_refused(&o, mut_xsw1, "duplicate_id");
    expect_refused(&o, mut_xsw2, "duplicate_id");
}

static void
test_bad_reference(void **s)
{
    opts_t o = defaults();
    (void)s;
    expect_refused(&o, mut_ref_elsewhere, "bad_reference");
    expect_refused(&o, mut_xslt_transform, "bad_reference");
}

/* EncryptedKey beside EncryptedData (the form lasso and Shibboleth emit)
 * instead of inside its KeyInfo. */
static void
mut_enckey_sibling(xmlDocPtr d)
{
    const char *xe = "http://www.w3.org/2001/04/xmlenc#";
    xmlNode *ea = child(xmlDocGetRootElement(d), NS_SAML, "EncryptedAssertion");
    xmlNode *ed = child(ea, xe, "EncryptedData");
    xmlNode *ki = child(ed, "http://www.w3.org/2000/09/xmldsig#", "KeyInfo");
    xmlNode *ek = child(ki, xe, "EncryptedKey");
    xmlUnlinkNode(ek);
    xmlAddChild(ea, ek);
}

static void
test_encrypted_key_sibling(void **s)
{
    opts_t o = defaults();
    pg_saml_assertion_t a;
    const char *reason = NULL;
    (void)s;
    o.encrypt = 1;
    assert_int_equal(run(g_sp, &o, mut_enckey_sibling, REQ_ID, NOW, &a, &reason), PG_OK);
    check_alice(&a);
    pg_saml_assertion_clear(&a);
}

static void
mut_two_assertions(xmlDocPtr d)
{
    xmlNode *as = assertion_of(d);
    xmlNode *two = xmlDocCopyNode(as, d, 1);
    xmlSetProp(two, BAD_CAST "ID", BAD_CAST "_assert2");
    xmlAddNextSibling(as, two);
}

static void
test_two_assertions(void **s)
{
    opts_t o = defaults();
    (void)s;
    o.sign_assert = 0;
    o.sign_resp = 1;
    /* a second assertion added after the IdP signed the Response: the
     * Response signature check (before the count) already refuses it; the
     * fully signed case is test_two_assertions_signed. */
    expect_refused(&o, mut_two_assertions, "bad_signature");
}

static void
test_two_assertions_signed(void **s)
{
    /* Both assertions validly signed by the IdP and the Response too. */
    opts_t o = defaults();
    xmlDocPtr d = build_doc(&o);
    xmlNode *as = assertion_of(d), *two;
    pg_saml_assertion_t a;
    pg_saml_expect_t exp = {REQ_ID, NOW};
    pg_err_t err = {{0}};
    const char *reason = NULL;
    char *body;
    (void)s;
    two = xmlDocCopyNode(as, d, 1);
    xmlSetProp(two, BAD_CAST "ID", BAD_CAST "_assert2");
    xmlAddNextSibling(as, two);
    sign_node(d, as, "idp", 0);
    sign_node(d, two, "idp", 0);
    sign_node(d, xmlDocGetRootElement(d), "idp", 0);
    body = form_of_doc(d);
    xmlFreeDoc(d);
    assert_int_equal(pg_saml_acs_validate(g_sp, body, strlen(body), &exp, &a,
                                          &reason, &err), PG_ERR_DENIED);
    assert_string_equal(reason, "assertion_count");
    free(body);
}

static void
test_wrong_issuer(void **s)
{
    opts_t o = defaults();
    (void)s;
    o.assert_issuer = "https://evil.example.test/saml";
    expect_refused(&o, NULL, "bad_issuer");
    o = defaults();
    o.resp_issuer = "https://evil.example.test/saml";
    expect_refused(&o, NULL, "bad_issuer");
}

static void
test_wrong_audience(void **s)
{
    opts_t o = defaults();
    (void)s;
    o.audience = "https://other-sp.example.test/saml";
    expect_refused(&o, NULL, "bad_audience");
}

static void
test_wrong_recipient(void **s)
{
    opts_t o = defaults();
    (void)s;
    o.recipient = "https://evil.example.test/acs";
    expect_refused(&o, NULL, "bad_recipient");
}

static void
test_wrong_destination(void **s)
{
    opts_t o = defaults();
    (void)s;
    o.destination = "https://evil.example.test/acs";
    expect_refused(&o, NULL, "bad_destination");
}

static void
test_expired(void **s)
{
    opts_t o = defaults();
    pg_saml_assertion_t a;
    const char *reason = NULL;
    (void)s;
    assert_int_equal(run(g_sp, &o, NULL, REQ_ID, NOW + 3600, &a, &reason), PG_ERR_DENIED);
    assert_string_equal(reason, "expired");
    /* Conditions NotOnOrAfter earlier than the bearer's */
    o.not_on_or_after = "2027-01-15T07:58:00Z";
    expect_refused(&o, NULL, "expired");
}

static void
test_not_yet_valid(void **s)
{
    opts_t o = defaults();
    pg_saml_assertion_t a;
    const char *reason = NULL;
    (void)s;
    assert_int_equal(run(g_sp, &o, NULL, REQ_ID, NOW - 600, &a, &reason), PG_ERR_DENIED);
    assert_string_equal(reason, "not_yet_valid");
}

static void
test_in_response_to_mismatch(void **s)
{
    opts_t o = defaults();
    pg_saml_assertion_t a;
    const char *reason = NULL;
    (void)s;
    assert_int_equal(run(g_sp, &o, NULL, "_another_request", NOW, &a, &reason),
                     PG_ERR_DENIED);
    assert_string_equal(reason, "in_response_to_mismatch");
    /* Response-level matches, bearer confirmation does not */
    o.scd_irt = "_another_request";
    expect_refused(&o, NULL, "in_response_to_mismatch");
    /* solicited response without any InResponseTo in the confirmation */
    o.scd_irt = NULL;
    expect_refused(&o, NULL, "in_response_to_mismatch");
}

static void
test_unsolicited(void **s)
{
    opts_t o = defaults();
    pg_saml_assertion_t a;
    const char *reason = NULL;
    (void)s;
    o.resp_irt = NULL;
    o.scd_irt = NULL;
    /* refused by default */
    assert_int_equal(run(g_sp, &o, NULL, NULL, NOW, &a, &reason), PG_ERR_DENIED);
    assert_string_equal(reason, "unsolicited");
    /* allowed by the strict SP (which also needs both signatures) */
    o.sign_resp = 1;
    assert_int_equal(run(g_sp_strict, &o, NULL, NULL, NOW, &a, &reason), PG_OK);
    assert_string_equal(a.name_id, "alice@corp.com");
    assert_null(a.in_response_to);
    pg_saml_assertion_clear(&a);
    /* a response to some request we never stored is not "unsolicited" */
    o = defaults();
    o.sign_resp = 1;
    assert_int_equal(run(g_sp_strict, &o, NULL, NULL, NOW, &a, &reason), PG_ERR_DENIED);
    assert_string_equal(reason, "in_response_to_mismatch");
}

static void
test_signature_policy(void **s)
{
    opts_t o = defaults();
    pg_saml_assertion_t a;
    const char *reason = NULL;
    (void)s;
    /* strict SP: assertion-only signature is not enough */
    assert_int_equal(run(g_sp_strict, &o, NULL, REQ_ID, NOW, &a, &reason), PG_ERR_DENIED);
    assert_string_equal(reason, "response_unsigned");
    o.sign_assert = 0;
    o.sign_resp = 1;
    assert_int_equal(run(g_sp_strict, &o, NULL, REQ_ID, NOW, &a, &reason), PG_ERR_DENIED);
    assert_string_equal(reason, "assertion_unsigned");
    o.sign_assert = 1;
    assert_int_equal(run(g_sp_strict, &o, NULL, REQ_ID, NOW, &a, &reason), PG_OK);
    check_alice(&a);
    pg_saml_assertion_clear(&a);
}

static void
test_status_not_success(void **s)
{
    opts_t o = defaults();
    (void)s;
    o.status = "urn:oasis:names:tc:SAML:2.0:status:Requester";
    expect_refused(&o, NULL, "status_not_success");
}

static void
try_xml(const char *xml, pg_status_t want_st, const char *want)
{
    char *body = form_of_xml(xml, strlen(xml));
    pg_saml_expect_t exp = {REQ_ID, NOW};
    pg_saml_assertion_t a;
    pg_err_t err = {{0}};
    const char *reason = NULL;
    assert_int_equal(pg_saml_acs_validate(g_sp, body, strlen(body), &exp, &a,
                                          &reason, &err), want_st);
    assert_string_equal(reason, want);
    free(body);
}

static void
test_doctype_xxe_entities(void **s)
{
    (void)s;
    try_xml("<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>"
            "<samlp:Response xmlns:samlp=\"" NS_SAMLP "\">&x;</samlp:Response>",
            PG_ERR_DENIED, "doctype");
    try_xml("<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;\">]>"
            "<r>&lol2;</r>", PG_ERR_DENIED, "doctype");
    try_xml("<r/><!doctype r>", PG_ERR_DENIED, "doctype");
    /* UTF-16 smuggling */
    {
        static const char u16[] = "<\0!\0D\0O\0C\0";
        char *body = form_of_xml(u16, sizeof(u16) - 1);
        pg_saml_expect_t exp = {REQ_ID, NOW};
        pg_saml_assertion_t a;
        const char *reason = NULL;
        pg_err_t err;
        assert_int_equal(pg_saml_acs_validate(g_sp, body, strlen(body), &exp, &a,
                                              &reason, &err), PG_ERR_DENIED);
        assert_string_equal(reason, "doctype");
        free(body);
    }
    try_xml("<samlp:Response", PG_ERR_INVALID, "malformed");
    try_xml("<samlp:LogoutRequest xmlns:samlp=\"" NS_SAMLP "\" ID=\"_x\"/>",
            PG_ERR_DENIED, "not_response");
}

static void
test_form_body(void **s)
{
    pg_saml_expect_t exp = {REQ_ID, NOW};
    pg_saml_assertion_t a;
    pg_err_t err;
    const char *reason = NULL;
    static const char dup[] = "SAMLResponse=PHIvPg%3D%3D&SAMLResponse=PHIvPg%3D%3D";
    static const char none[] = "RelayState=x";
    static const char badb64[] = "SAMLResponse=PH*vPg%3D%3D";
    (void)s;
    assert_int_equal(pg_saml_acs_validate(g_sp, dup, strlen(dup), &exp, &a, &reason, &err),
                     PG_ERR_INVALID);
    assert_string_equal(reason, "malformed");
    assert_int_equal(pg_saml_acs_validate(g_sp, none, strlen(none), &exp, &a, &reason, &err),
                     PG_ERR_INVALID);
    assert_string_equal(reason, "malformed");
    assert_int_equal(pg_saml_acs_validate(g_sp, badb64, strlen(badb64), &exp, &a, &reason, &err),
                     PG_ERR_INVALID);
    assert_string_equal(reason, "malformed");
}

static void
test_oversized_body(void **s)
{
    size_t n = PG_SAML_MAX_POST_BODY + 1;
    char *body = malloc(n + 1);
    pg_saml_expect_t exp = {REQ_ID, NOW};
    pg_saml_assertion_t a;
    pg_err_t err;
    const char *reason = NULL;
    (void)s;
    memcpy(body, "SAMLResponse=", 13);
    memset(body + 13, 'A', n - 13);
    body[n] = '\0';
    assert_int_equal(pg_saml_acs_validate(g_sp, body, n, &exp, &a, &reason, &err),
                     PG_ERR_TOO_LARGE);
    assert_string_equal(reason, "too_large");
    /* under the body cap but decoding beyond the XML cap */
    n = PG_SAML_MAX_POST_BODY - 16;
    body[n] = '\0';
    assert_int_equal(pg_saml_acs_validate(g_sp, body, n, &exp, &a, &reason, &err),
                     PG_ERR_TOO_LARGE);
    assert_string_equal(reason, "too_large");
    free(body);
}

static void
test_comment_in_nameid(void **s)
{
    opts_t o = defaults();
    (void)s;
    /* signed as is by the IdP: the IdP registered "admin@corp.com.evil.com" */
    o.nameid = "admin@corp.com<!---->.evil.com";
    expect_refused(&o, NULL, "nameid_not_text");
    o.sign_assert = 0;
    o.sign_resp = 1;
    expect_refused(&o, NULL, "nameid_not_text");
}

static void
test_encrypted_signed_ok(void **s)
{
    opts_t o = defaults();
    pg_saml_assertion_t a;
    const char *reason = NULL;
    (void)s;
    o.encrypt = 1;
    assert_int_equal(run(g_sp, &o, NULL, REQ_ID, NOW, &a, &reason), PG_OK);
    check_alice(&a);
    pg_saml_assertion_clear(&a);
    /* and inside a signed response, for the strict SP */
    o.sign_resp = 1;
    assert_int_equal(run(g_sp_strict, &o, NULL, REQ_ID, NOW, &a, &reason), PG_OK);
    check_alice(&a);
    pg_saml_assertion_clear(&a);
}

static void
test_encrypted_unsigned_refused(void **s)
{
    opts_t o = defaults();
    (void)s;
    o.encrypt = 1;
    o.sign_assert = 0;
    o.sign_resp = 1; /* a response signature does not make up for it */
    expect_refused(&o, NULL, "encrypted_unsigned");
}

static void
test_authn_request(void **s)
{
    char *url = NULL, *id = NULL, *q, *raw, *xml = NULL;
    size_t rawlen = 0, xlen = 0;
    pg_err_t err = {{0}};
    (void)s;
    assert_int_equal(pg_saml_authn_request(g_sp, "rs-1", &url, &id, &err), PG_OK);
    assert_non_null(strstr(url, "https://idp.example.test/sso?"));
    assert_non_null(strstr(url, "RelayState=rs-1"));
    assert_null(strstr(url, "Signature="));
    assert_true(id[0] == '_' || strlen(id) > 8);
    q = pg_query_param(strchr(url, '?') + 1, strlen(strchr(url, '?') + 1), "SAMLRequest");
    assert_non_null(q);
    raw = strdup(q);
    {
        xmlSecSize n = 0;
        assert_int_equal(xmlSecBase64DecodeInPlace(BAD_CAST raw, &n), 0);
        assert_true(n > 0);
        rawlen = (size_t)n;
    }
    assert_int_equal(pg_saml_inflate(raw, rawlen, &xml, &xlen), PG_OK);
    assert_non_null(strstr(xml, id));
    assert_non_null(strstr(xml, ACS));
    assert_non_null(strstr(xml, SP_ID));
    free(xml);
    free(raw);
    free(q);
    free(url);
    free(id);
    /* signed variant */
    assert_int_equal(pg_saml_authn_request(g_sp_strict, NULL, &url, &id, &err), PG_OK);
    assert_non_null(strstr(url, "&Signature="));
    assert_non_null(strstr(url, "SigAlg="));
    free(url);
    free(id);
}

/* LSB-first bit writer for a hand-built DEFLATE stream (RFC 1951). */
typedef struct bw { unsigned char *p; size_t bit; } bw_t;

static void
put_bits(bw_t *w, unsigned v, int n)
{
    int i;
    for (i = 0; i < n; i++) {
        if ((v >> i) & 1u) w->p[w->bit / 8] |= (unsigned char)(1u << (w->bit % 8));
        w->bit++;
    }
}

/* Huffman codes are sent MSB-first. */
static void
put_code(bw_t *w, unsigned code, int n)
{
    int i;
    for (i = n - 1; i >= 0; i--) put_bits(w, (code >> i) & 1u, 1);
}

/* One fixed-Huffman block: literal 'A', then `copies` matches of length
 * 258 at distance 1, then end of block. Output 1 + 258 * copies bytes. */
static size_t
make_bomb(unsigned char *buf, size_t cap, size_t copies)
{
    bw_t w = {buf, 0};
    size_t i;
    memset(buf, 0, cap);
    put_bits(&w, 1, 1);            /* BFINAL */
    put_bits(&w, 1, 2);            /* BTYPE = 01 fixed */
    put_code(&w, 0x30 + 'A', 8);   /* literal 0..143: 00110000 + v */
    for (i = 0; i < copies; i++) {
        put_code(&w, 0xC5, 8);     /* length code 285 = 258: 11000101 */
        put_code(&w, 0, 5);        /* distance code 0 = 1 */
    }
    put_code(&w, 0, 7);            /* end of block (256): 0000000 */
    assert_true(w.bit / 8 + 1 <= cap);
    return w.bit / 8 + 1;
}

static void
test_inflate_bomb(void **s)
{
    unsigned char *comp = malloc(16384);
    char *out = NULL;
    size_t clen, outlen = 0, i;
    (void)s;
    /* small stream: 1 + 258*10 bytes of 'A' */
    clen = make_bomb(comp, 16384, 10);
    assert_int_equal(pg_saml_inflate(comp, clen, &out, &outlen), PG_OK);
    assert_int_equal(outlen, 2581);
    for (i = 0; i < outlen; i++) assert_int_equal(out[i], 'A');
    assert_int_equal(out[outlen], '\0');
    free(out);
    /* ~1 MiB from 6.5 KiB: refused at the cap, never expanded */
    clen = make_bomb(comp, 16384, 4000);
    assert_int_equal(pg_saml_inflate(comp, clen, &out, &outlen), PG_ERR_TOO_LARGE);
    assert_null(out);
    assert_int_equal(pg_saml_inflate("garbage!", 8, &out, &outlen), PG_ERR_INVALID);
    assert_null(out);
    /* truncated stream */
    clen = make_bomb(comp, 16384, 10);
    assert_int_equal(pg_saml_inflate(comp, clen / 2, &out, &outlen), PG_ERR_INVALID);
    free(comp);
}

static void
test_sp_metadata(void **s)
{
    char *xml = NULL;
    xmlDocPtr d;
    xmlNode *root, *spsso;
    (void)s;
    assert_int_equal(pg_saml_sp_metadata(g_sp_strict, &xml), PG_OK);
    d = xmlReadMemory(xml, (int)strlen(xml), "md.xml", NULL, XML_PARSE_NONET);
    assert_non_null(d);
    root = xmlDocGetRootElement(d);
    assert_string_equal((const char *)root->name, "EntityDescriptor");
    {
        xmlChar *eid = xmlGetProp(root, BAD_CAST "entityID");
        assert_non_null(eid);
        assert_string_equal((const char *)eid, SP_ID);
        xmlFree(eid);
    }
    spsso = child(root, "urn:oasis:names:tc:SAML:2.0:metadata", "SPSSODescriptor");
    assert_non_null(spsso);
    assert_non_null(strstr(xml, "AuthnRequestsSigned=\"true\""));
    assert_non_null(strstr(xml, "Location=\"" ACS "\""));
    assert_non_null(strstr(xml, "HTTP-POST"));
    assert_non_null(strstr(xml, "use=\"encryption\""));
    assert_string_equal(pg_saml_sp_idp_entity_id(g_sp), IDP_ID);
    xmlFreeDoc(d);
    free(xml);
}

static void
test_bad_config(void **s)
{
    pg_saml_sp_cfg_t cfg = {0};
    pg_saml_sp_t *sp = NULL;
    pg_err_t err = {{0}};
    char key[PBUF];
    (void)s;
    assert_int_equal(pg_saml_sp_new(&cfg, &sp, &err), PG_ERR_CONFIG);
    fix_path(key, sizeof(key), "sp-key.pem");
    cfg.entity_id = SP_ID;
    cfg.acs_url = ACS;
    cfg.key_path = key;
    cfg.cert_path = key; /* no certificate in it */
    cfg.idp_metadata_path = key;
    assert_int_not_equal(pg_saml_sp_new(&cfg, &sp, &err), PG_OK);
    assert_null(sp);
}

/* The fixture IdP metadata, NUL-terminated, malloc'd. */
static char *
read_idp_md(size_t *len)
{
    char md[PBUF], *buf = NULL;
    pg_err_t err = {{0}};

    fix_path(md, sizeof(md), "idp-metadata.xml");
    assert_int_equal(pg_read_file(md, PG_SAML_MAX_METADATA, 0, &buf, len,
                                  &err), PG_OK);
    return buf;
}

/* s with the first occurrence of from replaced by to (malloc'd). */
static char *
replace1(const char *s, const char *from, const char *to)
{
    const char *at = strstr(s, from);
    size_t n;
    char *r;

    assert_non_null(at);
    n = strlen(s) - strlen(from) + strlen(to) + 1;
    r = malloc(n);
    assert_non_null(r);
    snprintf(r, n, "%.*s%s%s", (int)(at - s), s, to, at + strlen(from));
    return r;
}

static pg_status_t
md_check(const char *md, const char *want, char **eid)
{
    pg_err_t err = {{0}};

    return pg_saml_idp_metadata_check(md, strlen(md), want, eid, &err);
}

static void
test_idp_metadata_check(void **s)
{
    size_t len = 0;
    char *md = read_idp_md(&len), *eid = NULL, *bad, *big;
    pg_err_t err = {{0}};
    (void)s;

    assert_int_equal(md_check(md, NULL, &eid), PG_OK);
    assert_string_equal(eid, IDP_ID);
    free(eid);
    assert_int_equal(md_check(md, IDP_ID, NULL), PG_OK);
    /* another entity than the pinned one */
    assert_int_equal(md_check(md, "https://evil.example.test/saml", &eid),
                     PG_ERR_DENIED);
    assert_null(eid);
    /* a DOCTYPE (XXE / billion laughs) is refused before parsing */
    bad = replace1(md, "<md:EntityDescriptor",
                   "<!DOCTYPE md [<!ENTITY x \"y\">]><md:EntityDescriptor");
    assert_int_equal(pg_saml_idp_metadata_check(bad, strlen(bad), NULL, &eid,
                                                &err), PG_ERR_INVALID);
    assert_non_null(strstr(err.msg, "DOCTYPE"));
    free(bad);
    /* a NUL byte inside */
    assert_int_equal(pg_saml_idp_metadata_check(md, len + 1, NULL, NULL,
                                                &err), PG_ERR_INVALID);
    /* over the cap, even when well-formed (a long comment) */
    big = malloc(PG_SAML_MAX_METADATA + len + 16);
    assert_non_null(big);
    memcpy(big, md, len);
    memcpy(big + len, "<!--", 4);
    memset(big + len + 4, 'a', PG_SAML_MAX_METADATA);
    memcpy(big + len + 4 + PG_SAML_MAX_METADATA, "-->", 4);
    assert_int_equal(md_check(big, NULL, NULL), PG_ERR_TOO_LARGE);
    free(big);
    /* no signing key: only an encryption KeyDescriptor */
    bad = replace1(md, "use=\"signing\"", "use=\"encryption\"");
    assert_int_equal(pg_saml_idp_metadata_check(bad, strlen(bad), NULL, NULL,
                                                &err), PG_ERR_INVALID);
    assert_non_null(strstr(err.msg, "signing key"));
    free(bad);
    /* an empty certificate is no key either */
    {
        const char *c0 = strstr(md, "<ds:X509Certificate>");
        const char *c1 = strstr(md, "</ds:X509Certificate>");
        size_t n;

        assert_non_null(c0);
        assert_non_null(c1);
        c0 += strlen("<ds:X509Certificate>");
        n = (size_t)(c0 - md) + strlen(c1) + 1;
        bad = malloc(n);
        assert_non_null(bad);
        snprintf(bad, n, "%.*s%s", (int)(c0 - md), md, c1);
        assert_int_equal(md_check(bad, NULL, NULL), PG_ERR_INVALID);
        free(bad);
    }
    /* no IDPSSODescriptor (an SP's metadata) */
    bad = replace1(md, "IDPSSODescriptor", "SPSSODescriptor");
    {
        char *bad2 = replace1(bad, "/md:IDPSSODescriptor",
                              "/md:SPSSODescriptor");
        assert_int_equal(md_check(bad2, NULL, NULL), PG_ERR_INVALID);
        free(bad2);
    }
    free(bad);
    /* not well-formed, empty */
    assert_int_equal(md_check("<md:EntityDescriptor", NULL, NULL),
                     PG_ERR_INVALID);
    assert_int_equal(md_check("", NULL, NULL), PG_ERR_INVALID);
    free(md);
}

static void
test_sp_only_then_rebind(void **s)
{
    char key[PBUF], cert[PBUF], *md, *xml = NULL, *url = NULL, *id = NULL;
    pg_saml_sp_cfg_t cfg = {0};
    pg_saml_sp_t *sp = NULL, *full = NULL;
    pg_saml_assertion_t a;
    const char *reason = NULL;
    pg_err_t err = {{0}};
    opts_t o = defaults();
    size_t len = 0;
    (void)s;

    fix_path(key, sizeof(key), "sp-key.pem");
    fix_path(cert, sizeof(cert), "sp-cert.pem");
    cfg.entity_id = SP_ID;
    cfg.acs_url = ACS;
    cfg.key_path = key;
    cfg.cert_path = cert;
    cfg.require_signed_assertion = 1;
    /* no IdP metadata: the SP describes itself, cannot log in */
    assert_int_equal(pg_saml_sp_new(&cfg, &sp, &err), PG_OK);
    assert_false(pg_saml_sp_has_idp(sp));
    assert_null(pg_saml_sp_idp_entity_id(sp));
    assert_int_equal(pg_saml_sp_metadata(sp, &xml), PG_OK);
    assert_non_null(strstr(xml, "entityID=\"" SP_ID "\""));
    free(xml);
    assert_int_equal(pg_saml_authn_request(sp, "r", &url, &id, &err),
                     PG_ERR_NOT_FOUND);
    assert_null(url);
    assert_int_not_equal(run(sp, &o, NULL, REQ_ID, NOW, &a, &reason), PG_OK);
    assert_string_equal(reason, "idp_unavailable");
    /* fetched metadata (a buffer) gives a full SP from the same settings */
    md = read_idp_md(&len);
    assert_int_equal(pg_saml_sp_rebind(sp, md, len, &full, &err), PG_OK);
    assert_true(pg_saml_sp_has_idp(full));
    assert_string_equal(pg_saml_sp_idp_entity_id(full), IDP_ID);
    assert_int_equal(pg_saml_authn_request(full, "r", &url, &id, &err), PG_OK);
    free(url);
    free(id);
    assert_int_equal(run(full, &o, NULL, REQ_ID, NOW, &a, &reason), PG_OK);
    check_alice(&a);
    pg_saml_assertion_clear(&a);
    pg_saml_sp_free(sp);    /* the rebound SP owns its copies */
    assert_int_equal(pg_saml_authn_request(full, "r", &url, &id, &err), PG_OK);
    free(url);
    free(id);
    pg_saml_sp_free(full);
    /* a refused document makes no SP */
    assert_int_equal(pg_saml_sp_new(&cfg, &sp, &err), PG_OK);
    assert_int_equal(pg_saml_sp_rebind(sp, "<x/>", 4, &full, &err),
                     PG_ERR_CONFIG);
    assert_null(full);
    /* the same buffer through pg_saml_sp_new */
    cfg.idp_metadata = md;
    cfg.idp_metadata_len = len;
    assert_int_equal(pg_saml_sp_new(&cfg, &full, &err), PG_OK);
    assert_string_equal(pg_saml_sp_idp_entity_id(full), IDP_ID);
    pg_saml_sp_free(full);
    pg_saml_sp_free(sp);
    free(md);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_signed_assertion),
        cmocka_unit_test(test_valid_signed_response_only),
        cmocka_unit_test(test_clock_skew_tolerated),
        cmocka_unit_test(test_unsigned),
        cmocka_unit_test(test_stripped_signature),
        cmocka_unit_test(test_empty_signature_value),
        cmocka_unit_test(test_tampered_after_signing),
        cmocka_unit_test(test_other_key),
        cmocka_unit_test(test_other_key_embedded_cert),
        cmocka_unit_test(test_xsw),
        cmocka_unit_test(test_bad_reference),
        cmocka_unit_test(test_encrypted_key_sibling),
        cmocka_unit_test(test_two_assertions),
        cmocka_unit_test(test_two_assertions_signed),
        cmocka_unit_test(test_wrong_issuer),
        cmocka_unit_test(test_wrong_audience),
        cmocka_unit_test(test_wrong_recipient),
        cmocka_unit_test(test_wrong_destination),
        cmocka_unit_test(test_expired),
        cmocka_unit_test(test_not_yet_valid),
        cmocka_unit_test(test_in_response_to_mismatch),
        cmocka_unit_test(test_unsolicited),
        cmocka_unit_test(test_signature_policy),
        cmocka_unit_test(test_status_not_success),
        cmocka_unit_test(test_doctype_xxe_entities),
        cmocka_unit_test(test_oversized_body),
        cmocka_unit_test(test_form_body),
        cmocka_unit_test(test_comment_in_nameid),
        cmocka_unit_test(test_encrypted_signed_ok),
        cmocka_unit_test(test_encrypted_unsigned_refused),
        cmocka_unit_test(test_authn_request),
        cmocka_unit_test(test_inflate_bomb),
        cmocka_unit_test(test_sp_metadata),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_idp_metadata_check),
        cmocka_unit_test(test_sp_only_then_rebind),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
