/*
 * SAML 2.0 SP: configuration, AuthnRequest (HTTP-Redirect), SP metadata,
 * capped inflate, and the ACS response validation.
 *
 * Division of labour with lasso 2.8.1:
 *  - lasso: LassoServer/LassoProvider from our metadata and the IdP
 *    metadata, AuthnRequest encoding and query signing, and XML-DSig
 *    verification of a signed element against the IdP metadata key only
 *    (lasso_provider_verify_signature: one Reference whose URI is the
 *    element's own ID; no KeyInfo key lookup because no CA chain is set).
 *  - here: size caps, DOCTYPE refusal, safe parse, structure (one
 *    Response, one Assertion, Signature placement, unique IDs, Reference
 *    URI and transform allow-list), decryption of EncryptedAssertion with
 *    xmlsec using only the SP key (its plaintext goes through the same
 *    caps and DOCTYPE refusal), signature policy and every semantic check
 *    of SAML Profiles 4.1.4.3 / Core 2.5.
 */
/* Plain C casts for lasso's GObject macros: provgate links liblasso only
 * (no direct gobject/glib/zlib link), see docs/saml.md. */
#define G_DISABLE_CAST_CHECKS 1
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <xmlsec/xmlsec.h>
#include <xmlsec/xmltree.h>
#include <xmlsec/xmlenc.h>
#include <xmlsec/keys.h>
#include <xmlsec/keysmngr.h>
#include <xmlsec/crypto.h>

#include <lasso/lasso.h>
#include <lasso/xml/saml-2.0/samlp2_authn_request.h>
#include <lasso/xml/saml-2.0/samlp2_name_id_policy.h>

#include "provgate/saml.h"
#include "saml_int.h"

#define STATUS_SUCCESS "urn:oasis:names:tc:SAML:2.0:status:Success"
#define CM_BEARER "urn:oasis:names:tc:SAML:2.0:cm:bearer"
#define NAMEID_ENTITY "urn:oasis:names:tc:SAML:2.0:nameid-format:entity"
#define MAX_RELAY_STATE 1024u

struct pg_saml_sp {
    char *entity_id;
    char *acs_url;
    char *slo_url;
    char *nameid_format;
    char *idp_entity_id;
    char *sp_cert_b64;      /* certificate body for our metadata */
    char *key_pem;
    size_t key_pem_len;
    int sign_authn_request;
    int require_signed_assertion;
    int require_signed_response;
    int allow_unsolicited;
    unsigned skew;
    LassoServer *server;    /* our SP, with the IdP as its only provider */
    LassoProvider *idp;     /* borrowed from server */
};

/* ---- lasso init ------------------------------------------------------- */

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_init_rc = -1;

/* pthread_once body: lasso_init() (libxml2, xmlsec, crypto) exactly once. */
static void
saml_init_once(void)
{
    g_init_rc = lasso_init();
}

/* Initialise lasso once for the process; PG_ERR_INTERNAL if it failed. */
static pg_status_t
saml_init(pg_err_t *err)
{
    if (pthread_once(&g_once, saml_init_once) != 0 || g_init_rc != 0) {
        pg_err_set(err, "lasso_init failed");
        return PG_ERR_INTERNAL;
    }
    return PG_OK;
}

/* ---- small string builder --------------------------------------------- */

typedef struct sb {
    char *buf;
    size_t len, cap;
    int oom;
} sb_t;

/* Append n bytes, keeping buf NUL-terminated; on OOM sets b->oom and
 * ignores every later append. The caller frees b->buf. */
static void
sb_addn(sb_t *b, const char *s, size_t n)
{
    if (b->oom) {
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t ncap = b->cap ? b->cap : 256;
        char *nb;
        while (ncap < b->len + n + 1) {
            ncap *= 2;
        }
        nb = realloc(b->buf, ncap);
        if (nb == NULL) {
            b->oom = 1;
            return;
        }
        b->buf = nb;
        b->cap = ncap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = '\0';
}

/* Append a NUL-terminated string (see sb_addn). */
static void
sb_add(sb_t *b, const char *s)
{
    sb_addn(b, s, strlen(s));
}

/* Append s with the five XML special characters escaped. */
static void
sb_add_xml(sb_t *b, const char *s)
{
    for (; *s != '\0'; s++) {
        switch (*s) {
        case '&': sb_add(b, "&amp;"); break;
        case '<': sb_add(b, "&lt;"); break;
        case '>': sb_add(b, "&gt;"); break;
        case '"': sb_add(b, "&quot;"); break;
        case '\'': sb_add(b, "&apos;"); break;
        default: sb_addn(b, s, 1); break;
        }
    }
}

/* ---- base64 (standard alphabet, whitespace tolerated) ------------------ */



/* ---- form body -------------------------------------------------------- */


/*
 * Find key in an application/x-www-form-urlencoded body and decode its
 * value ('+' and %XX) into a malloc'd string of at most cap bytes.
 * PG_ERR_NOT_FOUND when absent, PG_ERR_INVALID when malformed, duplicated
 * or containing NUL.
 */
static pg_status_t
form_param(const char *body, size_t len, const char *key, size_t cap,
           char **out)
{
    size_t klen = strlen(key), i = 0;
    const char *val = NULL;
    size_t vlen = 0;

    *out = NULL;
    while (i < len) {
        size_t end = i;
        while (end < len && body[end] != '&') {
            end++;
        }
        if (end - i > klen && memcmp(body + i, key, klen) == 0 &&
            body[i + klen] == '=') {
            if (val != NULL) {
                return PG_ERR_INVALID; /* duplicated parameter */
            }
            val = body + i + klen + 1;
            vlen = end - (i + klen + 1);
        }
        i = end + 1;
    }
    if (val == NULL) {
        return PG_ERR_NOT_FOUND;
    }
    if (vlen > cap * 3) {
        return PG_ERR_TOO_LARGE;
    }
    {
        char *o = malloc(vlen + 1);
        size_t j, olen = 0;
        if (o == NULL) {
            return PG_ERR_NOMEM;
        }
        for (j = 0; j < vlen; j++) {
            unsigned char c = (unsigned char)val[j];
            if (c == '+') {
                c = ' ';
            } else if (c == '%') {
                int h, l;
                if (j + 2 >= vlen) {
                    free(o);
                    return PG_ERR_INVALID;
                }
                h = pg_sx_hexval((unsigned char)val[j + 1]);
                l = pg_sx_hexval((unsigned char)val[j + 2]);
                if (h < 0 || l < 0) {
                    free(o);
                    return PG_ERR_INVALID;
                }
                c = (unsigned char)(h * 16 + l);
                j += 2;
            }
            if (c == '\0') {
                free(o);
                return PG_ERR_INVALID;
            }
            o[olen++] = (char)c;
        }
        o[olen] = '\0';
        if (olen > cap) {
            free(o);
            return PG_ERR_TOO_LARGE;
        }
        *out = o;
    }
    return PG_OK;
}

/* ---- safe XML --------------------------------------------------------- */


/* Parse already pre-scanned bytes: no network, no entity substitution,
 * no DTD loading, encoding declarations ignored (UTF-8 forced). */
static xmlDocPtr
xml_parse(const unsigned char *p, size_t n)
{
    xmlDocPtr doc;

    if (n > INT32_MAX) {
        return NULL;
    }
    doc = xmlReadMemory((const char *)p, (int)n, "saml.xml", "UTF-8",
                        XML_PARSE_NONET | XML_PARSE_IGNORE_ENC |
                        XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (doc == NULL) {
        return NULL;
    }
    if (doc->intSubset != NULL || doc->extSubset != NULL ||
        xmlDocGetRootElement(doc) == NULL) {
        xmlFreeDoc(doc);
        return NULL;
    }
    return doc;
}





/*
 * Text of an element that may hold only text and CDATA children: a
 * comment, processing instruction, entity reference or child element makes
 * it unacceptable (returns NULL with *bad set) so that
 * "admin@corp.com<!---->.evil.com" can never be read as a prefix. The
 * result is malloc'd.
 */
static char *
pure_text(xmlNode *n, int *bad)
{
    xmlNode *c;
    sb_t b = {0};

    *bad = 0;
    for (c = n->children; c != NULL; c = c->next) {
        if (c->type != XML_TEXT_NODE && c->type != XML_CDATA_SECTION_NODE) {
            *bad = 1;
            free(b.buf);
            return NULL;
        }
        if (c->content != NULL) {
            sb_add(&b, (const char *)c->content);
        }
    }
    if (b.oom) {
        free(b.buf);
        return NULL;
    }
    if (b.buf == NULL) {
        return strdup("");
    }
    return b.buf;
}

/* Trimmed text compare for Issuer/Audience-like values. */
static int
text_equals(xmlNode *n, const char *want)
{
    int bad;
    char *t = pure_text(n, &bad);
    const char *s;
    size_t len;
    int eq;

    if (t == NULL) {
        return 0;
    }
    s = t;
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') {
        s++;
    }
    len = strlen(s);
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t' ||
                       s[len - 1] == '\r' || s[len - 1] == '\n')) {
        len--;
    }
    eq = len == strlen(want) && memcmp(s, want, len) == 0;
    free(t);
    return eq;
}

/* ---- time ------------------------------------------------------------- */



/* ---- SP construction -------------------------------------------------- */

/* strdup that maps NULL to NULL. */
static char *
dupstr(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Base64 body of the first PEM certificate, without header and newlines. */
static char *
pem_cert_body(const char *pem)
{
    const char *b = strstr(pem, "-----BEGIN CERTIFICATE-----");
    const char *e;
    sb_t o = {0};

    if (b == NULL) {
        return NULL;
    }
    b += strlen("-----BEGIN CERTIFICATE-----");
    e = strstr(b, "-----END CERTIFICATE-----");
    if (e == NULL) {
        return NULL;
    }
    for (; b < e; b++) {
        if (pg_sx_b64val((unsigned char)*b) >= 0 || *b == '=') {
            sb_addn(&o, b, 1);
        }
    }
    if (o.oom || o.buf == NULL) {
        free(o.buf);
        return NULL;
    }
    return o.buf;
}

/* Build our metadata document (also fed to lasso as the server's own). */
static char *
build_sp_metadata(const pg_saml_sp_t *sp)
{
    sb_t b = {0};
    static const char *const uses[] = {"signing", "encryption"};
    size_t i;

    sb_add(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<md:EntityDescriptor xmlns:md=\"" NS_MD "\" "
               "xmlns:ds=\"" NS_DS "\" entityID=\"");
    sb_add_xml(&b, sp->entity_id);
    sb_add(&b, "\">\n  <md:SPSSODescriptor AuthnRequestsSigned=\"");
    sb_add(&b, sp->sign_authn_request ? "true" : "false");
    sb_add(&b, "\" WantAssertionsSigned=\"");
    sb_add(&b, sp->require_signed_assertion ? "true" : "false");
    sb_add(&b, "\" protocolSupportEnumeration=\"" NS_SAMLP "\">\n");
    for (i = 0; i < 2; i++) {
        sb_add(&b, "    <md:KeyDescriptor use=\"");
        sb_add(&b, uses[i]);
        sb_add(&b, "\"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>");
        sb_add(&b, sp->sp_cert_b64);
        sb_add(&b, "</ds:X509Certificate></ds:X509Data></ds:KeyInfo>"
                   "</md:KeyDescriptor>\n");
    }
    if (sp->slo_url != NULL) {
        sb_add(&b, "    <md:SingleLogoutService Binding=\"urn:oasis:names:tc:"
                   "SAML:2.0:bindings:HTTP-Redirect\" Location=\"");
        sb_add_xml(&b, sp->slo_url);
        sb_add(&b, "\"/>\n");
    }
    if (sp->nameid_format != NULL) {
        sb_add(&b, "    <md:NameIDFormat>");
        sb_add_xml(&b, sp->nameid_format);
        sb_add(&b, "</md:NameIDFormat>\n");
    }
    sb_add(&b, "    <md:AssertionConsumerService index=\"0\" isDefault=\"true\" "
               "Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\" "
               "Location=\"");
    sb_add_xml(&b, sp->acs_url);
    sb_add(&b, "\"/>\n  </md:SPSSODescriptor>\n</md:EntityDescriptor>\n");
    if (b.oom) {
        free(b.buf);
        return NULL;
    }
    return b.buf;
}

/* Free an SP (NULL is fine); the key copy is wiped first. */
void
pg_saml_sp_free(pg_saml_sp_t *sp)
{
    if (sp == NULL) {
        return;
    }
    if (sp->server != NULL) {
        lasso_server_destroy(sp->server);
    }
    free(sp->entity_id);
    free(sp->acs_url);
    free(sp->slo_url);
    free(sp->nameid_format);
    free(sp->idp_entity_id);
    free(sp->sp_cert_b64);
    if (sp->key_pem != NULL) {
        memset(sp->key_pem, 0, sp->key_pem_len);
        free(sp->key_pem);
    }
    free(sp);
}

/* See saml.h. */
const char *
pg_saml_sp_idp_entity_id(const pg_saml_sp_t *sp)
{
    return sp->idp_entity_id;
}

/* 1 when the IDPSSODescriptor idp has a KeyDescriptor for signing (no
 * "use", or use="signing") with a non-empty ds:X509Certificate. */
static int
idp_has_signing_key(xmlNode *idp)
{
    xmlNode *c, *cert;
    const char *use;
    char *txt;
    int bad, ok;

    for (c = idp->children; c != NULL; c = c->next) {
        if (!pg_sx_is_el(c, NS_MD, "KeyDescriptor")) {
            continue;
        }
        use = pg_sx_attr(c, "use");
        if (use != NULL && strcmp(use, "signing") != 0) {
            continue;
        }
        cert = pg_sx_first_child(pg_sx_first_child(pg_sx_first_child(c,
                   NS_DS, "KeyInfo"), NS_DS, "X509Data"), NS_DS,
                   "X509Certificate");
        if (cert == NULL) {
            continue;
        }
        txt = pure_text(cert, &bad);
        ok = txt != NULL && strspn(txt, " \t\r\n") < strlen(txt);
        free(txt);
        if (ok) {
            return 1;
        }
    }
    return 0;
}

/* See saml.h. Cap, pre-scan (DOCTYPE/NUL), safe parse, then the shape:
 * root md:EntityDescriptor with a non-empty entityID (equal to
 * want_entity_id when given) and an IDPSSODescriptor with a signing key. */
pg_status_t
pg_saml_idp_metadata_check(const char *md, size_t len,
                           const char *want_entity_id, char **entity_id,
                           pg_err_t *err)
{
    xmlDocPtr doc;
    xmlNode *root, *idp;
    const char *eid;
    pg_status_t st = PG_OK;

    if (entity_id != NULL) {
        *entity_id = NULL;
    }
    if (md == NULL || len == 0) {
        pg_err_set(err, "IdP metadata: empty");
        return PG_ERR_INVALID;
    }
    if (len > PG_SAML_MAX_METADATA) {
        pg_err_set(err, "IdP metadata: larger than %u bytes",
                   PG_SAML_MAX_METADATA);
        return PG_ERR_TOO_LARGE;
    }
    if (!pg_sx_prescan_ok((const unsigned char *)md, len)) {
        pg_err_set(err, "IdP metadata: DOCTYPE or NUL refused");
        return PG_ERR_INVALID;
    }
    doc = xml_parse((const unsigned char *)md, len);
    if (doc == NULL) {
        pg_err_set(err, "IdP metadata: not well-formed XML");
        return PG_ERR_INVALID;
    }
    root = xmlDocGetRootElement(doc);
    eid = pg_sx_attr(root, "entityID");
    idp = pg_sx_is_el(root, NS_MD, "EntityDescriptor")
              ? pg_sx_first_child(root, NS_MD, "IDPSSODescriptor") : NULL;
    if (idp == NULL || eid == NULL || eid[0] == '\0') {
        pg_err_set(err, "IdP metadata: need one md:EntityDescriptor with an "
                        "IDPSSODescriptor and an entityID");
        st = PG_ERR_INVALID;
    } else if (strlen(eid) > 1024) {
        pg_err_set(err, "IdP metadata: entityID longer than 1024 bytes");
        st = PG_ERR_INVALID;
    } else if (want_entity_id != NULL && strcmp(eid, want_entity_id) != 0) {
        pg_err_set(err, "IdP metadata: entityID \"%.200s\" is not the "
                   "expected \"%.200s\"", eid, want_entity_id);
        st = PG_ERR_DENIED;
    } else if (!idp_has_signing_key(idp)) {
        pg_err_set(err, "IdP metadata: the IDPSSODescriptor has no signing "
                        "key (KeyDescriptor with an X509Certificate)");
        st = PG_ERR_INVALID;
    } else if (entity_id != NULL) {
        *entity_id = strdup(eid);
        st = *entity_id != NULL ? PG_OK : PG_ERR_NOMEM;
    }
    xmlFreeDoc(doc);
    return st;
}

/* Give sp its IdP: check md, build our metadata, then the lasso server with
 * our key and (when md is non-NULL) the IdP as its only provider. Without
 * md the SP describes itself only (pg_saml_sp_has_idp() is 0). */
static pg_status_t
sp_finish(pg_saml_sp_t *sp, const char *md, size_t md_len, pg_err_t *err)
{
    char *spmd;
    pg_status_t st;
    int rc;

    if (md != NULL) {
        st = pg_saml_idp_metadata_check(md, md_len, NULL, &sp->idp_entity_id,
                                        err);
        if (st != PG_OK) {
            return st == PG_ERR_NOMEM ? st : PG_ERR_CONFIG;
        }
    }
    spmd = build_sp_metadata(sp);
    if (spmd == NULL) {
        return PG_ERR_NOMEM;
    }
    /* No certificate for lasso: it only signs Redirect queries (no
     * KeyInfo), and given one, lasso 2.8.1 first tries it as a file name
     * and leaks a BIO in xmlsec on every signed request. Our metadata
     * carries the certificate instead. */
    sp->server = lasso_server_new_from_buffers(spmd, sp->key_pem, NULL, NULL);
    free(spmd);
    if (sp->server == NULL) {
        pg_err_set(err, "saml: lasso rejected the SP key/certificate");
        return PG_ERR_CONFIG;
    }
    if (md == NULL) {
        return PG_OK;
    }
    rc = lasso_server_add_provider_from_buffer(sp->server,
                                               LASSO_PROVIDER_ROLE_IDP, md,
                                               NULL, NULL);
    if (rc != 0) {
        pg_err_set(err, "saml: lasso rejected the IdP metadata: %s",
                   lasso_strerror(rc));
        return PG_ERR_CONFIG;
    }
    sp->idp = lasso_server_get_provider(sp->server, sp->idp_entity_id);
    if (sp->idp == NULL) {
        pg_err_set(err, "saml: IdP %s not registered", sp->idp_entity_id);
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/* See saml.h. Reads the key, certificate and (when a path and no buffer is
 * given) the IdP metadata file, all capped, then sp_finish(). */
pg_status_t
pg_saml_sp_new(const pg_saml_sp_cfg_t *cfg, pg_saml_sp_t **out, pg_err_t *err)
{
    pg_saml_sp_t *sp;
    char *cert = NULL, *md = NULL;
    const char *mdp = NULL;
    size_t cert_len = 0, md_len = 0;
    pg_status_t st;

    *out = NULL;
    if (cfg == NULL || cfg->entity_id == NULL || cfg->acs_url == NULL ||
        cfg->key_path == NULL || cfg->cert_path == NULL) {
        pg_err_set(err, "saml: entity_id, acs_url, key and cert are "
                        "required");
        return PG_ERR_CONFIG;
    }
    st = saml_init(err);
    if (st != PG_OK) {
        return st;
    }
    sp = calloc(1, sizeof(*sp));
    if (sp == NULL) {
        return PG_ERR_NOMEM;
    }
    sp->entity_id = dupstr(cfg->entity_id);
    sp->acs_url = dupstr(cfg->acs_url);
    sp->slo_url = dupstr(cfg->slo_url);
    sp->nameid_format = dupstr(cfg->nameid_format);
    sp->sign_authn_request = cfg->sign_authn_request;
    sp->require_signed_assertion = cfg->require_signed_assertion;
    sp->require_signed_response = cfg->require_signed_response;
    sp->allow_unsolicited = cfg->allow_unsolicited;
    sp->skew = cfg->clock_skew_s ? cfg->clock_skew_s : PG_SAML_DEFAULT_SKEW;
    if (sp->entity_id == NULL || sp->acs_url == NULL ||
        (cfg->slo_url && !sp->slo_url) ||
        (cfg->nameid_format && !sp->nameid_format)) {
        st = PG_ERR_NOMEM;
        goto fail;
    }
    st = pg_read_file(cfg->key_path, PG_SAML_MAX_PEM, 0, &sp->key_pem,
                      &sp->key_pem_len, err);
    if (st != PG_OK) {
        goto fail;
    }
    st = pg_read_file(cfg->cert_path, PG_SAML_MAX_PEM, 0, &cert, &cert_len,
                      err);
    if (st != PG_OK) {
        goto fail;
    }
    if (cfg->idp_metadata != NULL) {
        mdp = cfg->idp_metadata;
        md_len = cfg->idp_metadata_len;
    } else if (cfg->idp_metadata_path != NULL) {
        st = pg_read_file(cfg->idp_metadata_path, PG_SAML_MAX_METADATA, 0,
                          &md, &md_len, err);
        if (st != PG_OK) {
            goto fail;
        }
        mdp = md;
    }
    sp->sp_cert_b64 = pem_cert_body(cert);
    if (sp->sp_cert_b64 == NULL) {
        pg_err_set(err, "saml: %s holds no PEM certificate", cfg->cert_path);
        st = PG_ERR_CONFIG;
        goto fail;
    }
    st = sp_finish(sp, mdp, md_len, err);
    if (st != PG_OK) {
        goto fail;
    }
    free(cert);
    free(md);
    *out = sp;
    return PG_OK;
fail:
    free(cert);
    free(md);
    pg_saml_sp_free(sp);
    return st;
}

/* See saml.h: copies of base's settings, key and certificate (no file is
 * read), then sp_finish() with md. */
pg_status_t
pg_saml_sp_rebind(const pg_saml_sp_t *base, const char *md, size_t md_len,
                  pg_saml_sp_t **out, pg_err_t *err)
{
    pg_saml_sp_t *sp;
    pg_status_t st;

    *out = NULL;
    if (base == NULL || md == NULL) {
        pg_err_set(err, "saml: SP and IdP metadata are required");
        return PG_ERR_INVALID;
    }
    sp = calloc(1, sizeof(*sp));
    if (sp == NULL) {
        return PG_ERR_NOMEM;
    }
    sp->entity_id = dupstr(base->entity_id);
    sp->acs_url = dupstr(base->acs_url);
    sp->slo_url = dupstr(base->slo_url);
    sp->nameid_format = dupstr(base->nameid_format);
    sp->sp_cert_b64 = dupstr(base->sp_cert_b64);
    sp->key_pem = malloc(base->key_pem_len + 1);
    sp->sign_authn_request = base->sign_authn_request;
    sp->require_signed_assertion = base->require_signed_assertion;
    sp->require_signed_response = base->require_signed_response;
    sp->allow_unsolicited = base->allow_unsolicited;
    sp->skew = base->skew;
    if (sp->entity_id == NULL || sp->acs_url == NULL ||
        (base->slo_url && !sp->slo_url) ||
        (base->nameid_format && !sp->nameid_format) ||
        sp->sp_cert_b64 == NULL || sp->key_pem == NULL) {
        pg_saml_sp_free(sp);
        return PG_ERR_NOMEM;
    }
    memcpy(sp->key_pem, base->key_pem, base->key_pem_len);
    sp->key_pem[base->key_pem_len] = '\0';
    sp->key_pem_len = base->key_pem_len;
    st = sp_finish(sp, md, md_len, err);
    if (st != PG_OK) {
        pg_saml_sp_free(sp);
        return st;
    }
    *out = sp;
    return PG_OK;
}

/* See saml.h. */
int
pg_saml_sp_has_idp(const pg_saml_sp_t *sp)
{
    return sp != NULL && sp->idp != NULL;
}

/* See saml_int.h: the SP key PEM (owned by sp). */
const char *
pg_saml_sp_key_pem(const pg_saml_sp_t *sp, size_t *len)
{
    *len = sp->key_pem_len;
    return sp->key_pem;
}

/* See saml.h: the same document lasso was given; *xml is malloc'd. */
pg_status_t
pg_saml_sp_metadata(const pg_saml_sp_t *sp, char **xml)
{
    *xml = build_sp_metadata(sp);
    return *xml ? PG_OK : PG_ERR_NOMEM;
}

/* ---- AuthnRequest ----------------------------------------------------- */

/* See saml.h. A fresh LassoLogin per call: NameIDPolicy (configured
 * format, AllowCreate), ProtocolBinding HTTP-POST, our ACS URL; the
 * query is signed when configured (signature hint FORCE, else FORBID). */
pg_status_t
pg_saml_authn_request(pg_saml_sp_t *sp, const char *relay_state,
                      char **redirect_url, char **request_id, pg_err_t *err)
{
    LassoLogin *login;
    LassoProfile *prof;
    LassoSamlp2AuthnRequest *req;
    const char *id;
    int rc;
    pg_status_t st = PG_OK;

    *redirect_url = NULL;
    *request_id = NULL;
    if (relay_state != NULL && strlen(relay_state) > 80) {
        pg_err_set(err, "saml: RelayState over 80 bytes");
        return PG_ERR_TOO_LARGE;
    }
    if (sp->idp == NULL) {
        pg_err_set(err, "saml: no IdP metadata yet");
        return PG_ERR_NOT_FOUND;
    }
    login = lasso_login_new(sp->server);
    if (login == NULL) {
        return PG_ERR_NOMEM;
    }
    prof = LASSO_PROFILE(login);
    rc = lasso_login_init_authn_request(login, sp->idp_entity_id,
                                        LASSO_HTTP_METHOD_REDIRECT);
    if (rc != 0) {
        pg_err_set(err, "saml: init_authn_request: %s", lasso_strerror(rc));
        st = PG_ERR_CONFIG;
        goto out;
    }
    req = LASSO_SAMLP2_AUTHN_REQUEST(prof->request);
    if (req->NameIDPolicy == NULL) {
        req->NameIDPolicy =
            LASSO_SAMLP2_NAME_ID_POLICY(lasso_samlp2_name_id_policy_new());
    }
    free(req->NameIDPolicy->Format);
    req->NameIDPolicy->Format = strdup(
        sp->nameid_format ? sp->nameid_format
                          : "urn:oasis:names:tc:SAML:2.0:nameid-format:"
                            "unspecified");
    req->NameIDPolicy->AllowCreate = TRUE;
    free(req->ProtocolBinding);
    req->ProtocolBinding = strdup(LASSO_SAML2_METADATA_BINDING_POST);
    free(req->AssertionConsumerServiceURL);
    req->AssertionConsumerServiceURL = strdup(sp->acs_url);
    lasso_profile_set_signature_hint(prof, sp->sign_authn_request
                                               ? LASSO_PROFILE_SIGNATURE_HINT_FORCE
                                               : LASSO_PROFILE_SIGNATURE_HINT_FORBID);
    if (relay_state != NULL) {
        free(prof->msg_relayState);
        prof->msg_relayState = strdup(relay_state);
    }
    rc = lasso_login_build_authn_request_msg(login);
    if (rc != 0 || prof->msg_url == NULL) {
        pg_err_set(err, "saml: build_authn_request_msg: %s",
                   lasso_strerror(rc));
        st = PG_ERR_INTERNAL;
        goto out;
    }
    id = LASSO_SAMLP2_REQUEST_ABSTRACT(req)->ID;
    *redirect_url = strdup(prof->msg_url);
    *request_id = id ? strdup(id) : NULL;
    if (*redirect_url == NULL || *request_id == NULL) {
        free(*redirect_url);
        free(*request_id);
        *redirect_url = NULL;
        *request_id = NULL;
        st = PG_ERR_NOMEM;
    }
out:
    lasso_login_destroy(login);
    return st;
}

/* ---- inflate with a cap ----------------------------------------------- */

/* See saml.h: one inflate() call into a PG_SAML_MAX_INFLATED + 1 buffer;
 * input is capped at the same size. */
pg_status_t
pg_saml_inflate(const void *in, size_t len, char **out, size_t *outlen)
{
    z_stream zs;
    unsigned char *buf;
    int rc;

    *out = NULL;
    *outlen = 0;
    if (len > PG_SAML_MAX_INFLATED) {
        return PG_ERR_TOO_LARGE;
    }
    buf = malloc(PG_SAML_MAX_INFLATED + 1);
    if (buf == NULL) {
        return PG_ERR_NOMEM;
    }
    memset(&zs, 0, sizeof(zs));
    if (inflateInit2(&zs, -15) != Z_OK) {
        free(buf);
        return PG_ERR_NOMEM;
    }
    zs.next_in = (Bytef *)(uintptr_t)in;
    zs.avail_in = (uInt)len;
    zs.next_out = buf;
    /* One byte of room beyond the cap tells "exactly at cap" from "over";
     * zlib never writes past avail_out, so a bomb stops here. */
    zs.avail_out = PG_SAML_MAX_INFLATED + 1;
    rc = inflate(&zs, Z_FINISH);
    inflateEnd(&zs);
    if (rc != Z_STREAM_END || zs.total_out > PG_SAML_MAX_INFLATED) {
        free(buf);
        return (zs.avail_out == 0 || zs.total_out > PG_SAML_MAX_INFLATED)
                   ? PG_ERR_TOO_LARGE : PG_ERR_INVALID;
    }
    buf[zs.total_out] = '\0';
    *out = (char *)buf;
    *outlen = zs.total_out;
    return PG_OK;
}

/* ---- ACS validation --------------------------------------------------- */

/* Free every member and zero *a (NULL is fine). */
void
pg_saml_assertion_clear(pg_saml_assertion_t *a)
{
    if (a == NULL) {
        return;
    }
    free(a->name_id);
    free(a->name_id_format);
    free(a->name_qualifier);
    free(a->sp_name_qualifier);
    free(a->assertion_id);
    free(a->issuer);
    free(a->session_index);
    free(a->relay_state);
    free(a->in_response_to);
    json_decref(a->attributes);
    memset(a, 0, sizeof(*a));
}

typedef struct acs_ctx {
    pg_saml_sp_t *sp;
    const pg_saml_expect_t *exp;
    const char **reason;
    pg_err_t *err;
} acs_ctx_t;

/* Record a refusal: *reason = the stable code, err = detail; returns st. */
static pg_status_t
refuse(acs_ctx_t *c, pg_status_t st, const char *reason, const char *detail)
{
    *c->reason = reason;
    pg_err_set(c->err, "saml: %s: %s", reason, detail);
    return st;
}

/* Walk the whole tree: count Responses, Assertions (plain and encrypted),
 * check every ds:Signature's placement and collect ID uniqueness. */
typedef struct walk {
    size_t responses, assertions, bad_sig, dup_id;
    xmlHashTablePtr ids;
} walk_t;

/* Recursive over n and its siblings (depth bounded by libxml2's default
 * 256-level limit): fills the counters of w. */
static void
walk_tree(xmlNode *n, walk_t *w)
{
    for (; n != NULL; n = n->next) {
        xmlAttr *a;
        if (n->type != XML_ELEMENT_NODE) {
            continue;
        }
        /* Counted by local name in any namespace: lasso looks elements
         * up by name only, so a look-alike in another namespace must not
         * exist either. */
        if (strcmp((const char *)n->name, "Response") == 0) {
            w->responses++;
        }
        if (strcmp((const char *)n->name, "Assertion") == 0 ||
            strcmp((const char *)n->name, "EncryptedAssertion") == 0) {
            w->assertions++;
        }
        if (strcmp((const char *)n->name, "Signature") == 0) {
            xmlNode *p = n->parent;
            if (!pg_sx_is_el(n, NS_DS, "Signature") ||
                !(pg_sx_is_el(p, NS_SAMLP, "Response") ||
                  pg_sx_is_el(p, NS_SAML, "Assertion")) ||
                pg_sx_count_children(p, NS_DS, "Signature") != 1) {
                w->bad_sig++;
            }
        }
        for (a = n->properties; a != NULL; a = a->next) {
            if (a->children != NULL && a->children->content != NULL &&
                (xmlStrcasecmp(a->name, BAD_CAST "ID") == 0)) {
                if (xmlHashAddEntry(w->ids, a->children->content, n) != 0) {
                    w->dup_id++;
                }
            }
        }
        walk_tree(n->children, w);
    }
}


/*
 * Have lasso verify an enveloped signature against the IdP metadata key
 * only. `xml` is a complete document (NUL-terminated): lasso verifies the
 * root's Signature child, or, when the root has none, the Signature of
 * the root's child named "Assertion" (lasso_provider_verify_signature).
 * The caller has already made sure which element that is (one Assertion,
 * placement, Reference URI). 0 when valid.
 */
static int
lasso_verify_xml(pg_saml_sp_t *sp, const char *xml)
{
    return lasso_provider_verify_signature(sp->idp, xml, "ID",
                                           LASSO_MESSAGE_FORMAT_XML);
}

/* Map an xenc EncryptionMethod to the xmlsec symmetric key data class. */
static xmlSecKeyDataId
sym_key_id(xmlNode *ed)
{
    xmlNode *em = pg_sx_first_child(ed, NS_XENC, "EncryptionMethod");
    const char *alg = pg_sx_attr(em, "Algorithm");

    if (alg == NULL) {
        return xmlSecKeyDataIdUnknown;
    }
    if (strstr(alg, "aes128") || strstr(alg, "aes192") || strstr(alg, "aes256")) {
        return xmlSecKeyDataAesId;
    }
    if (strstr(alg, "tripledes-cbc")) {
        return xmlSecKeyDataDesId;
    }
    return xmlSecKeyDataIdUnknown;
}

/*
 * Decrypt an EncryptedAssertion with the SP private key only: the one
 * EncryptedKey (inside EncryptedData/KeyInfo or beside EncryptedData) is
 * unwrapped with our RSA key set directly on the context, so KeyInfo,
 * RetrievalMethod and key names are never followed. The plaintext is
 * returned malloc'd (capped at PG_SAML_MAX_XML).
 */
static pg_status_t
decrypt_assertion(pg_saml_sp_t *sp, xmlNode *ea, unsigned char **pt,
                  size_t *ptlen)
{
    xmlNode *ed, *ki, *ek = NULL;
    xmlSecKeyPtr rsa = NULL, sym = NULL;
    xmlSecEncCtxPtr c1 = NULL, c2 = NULL;
    xmlSecBufferPtr kb, res;
    xmlSecKeyDataId kid;
    pg_status_t st = PG_ERR_CRYPTO;
    size_t nek = 0;

    *pt = NULL;
    if (pg_sx_count_children(ea, NS_XENC, "EncryptedData") != 1) {
        return PG_ERR_INVALID;
    }
    ed = pg_sx_first_child(ea, NS_XENC, "EncryptedData");
    ki = pg_sx_first_child(ed, NS_DS, "KeyInfo");
    nek = pg_sx_count_children(ki, NS_XENC, "EncryptedKey") +
          pg_sx_count_children(ea, NS_XENC, "EncryptedKey");
    if (nek != 1) {
        return PG_ERR_INVALID;
    }
    ek = pg_sx_first_child(ki, NS_XENC, "EncryptedKey");
    if (ek == NULL) {
        ek = pg_sx_first_child(ea, NS_XENC, "EncryptedKey");
    }
    kid = sym_key_id(ed);
    if (kid == xmlSecKeyDataIdUnknown) {
        return PG_ERR_INVALID;
    }
    rsa = xmlSecCryptoAppKeyLoadMemory((const xmlSecByte *)sp->key_pem,
                                       (xmlSecSize)sp->key_pem_len,
                                       xmlSecKeyDataFormatPem, NULL, NULL,
                                       NULL);
    if (rsa == NULL) {
        return PG_ERR_INTERNAL;
    }
    c1 = xmlSecEncCtxCreate(NULL);
    c2 = xmlSecEncCtxCreate(NULL);
    if (c1 == NULL || c2 == NULL) {
        st = PG_ERR_NOMEM;
        goto out;
    }
    c1->mode = xmlEncCtxModeEncryptedKey;
    c1->encKey = rsa;
    rsa = NULL;
    c1->transformCtx.enabledUris = xmlSecTransformUriTypeEmpty;
    c2->transformCtx.enabledUris = xmlSecTransformUriTypeEmpty;
    kb = xmlSecEncCtxDecryptToBuffer(c1, ek);
    if (kb == NULL || xmlSecBufferGetSize(kb) == 0) {
        goto out;
    }
    sym = xmlSecKeyReadMemory(kid, xmlSecBufferGetData(kb),
                                    xmlSecBufferGetSize(kb));
    if (sym == NULL) {
        goto out;
    }
    c2->encKey = sym;
    sym = NULL;
    res = xmlSecEncCtxDecryptToBuffer(c2, ed);
    if (res == NULL) {
        goto out;
    }
    if (xmlSecBufferGetSize(res) > PG_SAML_MAX_XML) {
        st = PG_ERR_TOO_LARGE;
        goto out;
    }
    *ptlen = xmlSecBufferGetSize(res);
    *pt = malloc(*ptlen + 1);
    if (*pt == NULL) {
        st = PG_ERR_NOMEM;
        goto out;
    }
    memcpy(*pt, xmlSecBufferGetData(res), *ptlen);
    (*pt)[*ptlen] = '\0';
    st = PG_OK;
out:
    if (rsa) xmlSecKeyDestroy(rsa);
    if (sym) xmlSecKeyDestroy(sym);
    if (c1) xmlSecEncCtxDestroy(c1);
    if (c2) xmlSecEncCtxDestroy(c2);
    return st;
}

/* Issuer element check: present (when required), entity format, equal to
 * the IdP entity id. */
static int
issuer_ok(pg_saml_sp_t *sp, xmlNode *parent, int required)
{
    xmlNode *is = pg_sx_first_child(parent, NS_SAML, "Issuer");
    const char *fmt;

    if (pg_sx_count_children(parent, NS_SAML, "Issuer") > 1) {
        return 0;
    }
    if (is == NULL) {
        return !required;
    }
    fmt = pg_sx_attr(is, "Format");
    if (fmt != NULL && strcmp(fmt, NAMEID_ENTITY) != 0) {
        return 0;
    }
    return text_equals(is, sp->idp_entity_id);
}

/* Conditions (Core 2.5): time window with skew, every AudienceRestriction
 * must name us (at least one required), unknown conditions refused. */
static pg_status_t
check_conditions(acs_ctx_t *c, xmlNode *as, int64_t *noa)
{
    xmlNode *cond = pg_sx_first_child(as, NS_SAML, "Conditions"), *k;
    const char *s;
    int64_t t, now = c->exp->now, skew = (int64_t)c->sp->skew;
    size_t nar = 0;

    if (cond == NULL || pg_sx_count_children(as, NS_SAML, "Conditions") != 1) {
        return refuse(c, PG_ERR_DENIED, "no_audience", "no Conditions");
    }
    if ((s = pg_sx_attr(cond, "NotBefore")) != NULL) {
        if (pg_sx_parse_time(s, &t) != 0) {
            return refuse(c, PG_ERR_DENIED, "bad_time", "Conditions NotBefore");
        }
        if (now + skew < t) {
            return refuse(c, PG_ERR_DENIED, "not_yet_valid", "Conditions NotBefore");
        }
    }
    if ((s = pg_sx_attr(cond, "NotOnOrAfter")) != NULL) {
        if (pg_sx_parse_time(s, &t) != 0) {
            return refuse(c, PG_ERR_DENIED, "bad_time", "Conditions NotOnOrAfter");
        }
        if (now - skew >= t) {
            return refuse(c, PG_ERR_DENIED, "expired", "Conditions NotOnOrAfter");
        }
        if (*noa == 0 || t < *noa) {
            *noa = t;
        }
    }
    for (k = cond->children; k != NULL; k = k->next) {
        if (k->type != XML_ELEMENT_NODE) {
            continue;
        }
        if (pg_sx_is_el(k, NS_SAML, "AudienceRestriction")) {
            xmlNode *au;
            int found = 0;
            nar++;
            for (au = k->children; au != NULL; au = au->next) {
                if (pg_sx_is_el(au, NS_SAML, "Audience") &&
                    text_equals(au, c->sp->entity_id)) {
                    found = 1;
                }
            }
            if (!found) {
                return refuse(c, PG_ERR_DENIED, "bad_audience",
                              "an AudienceRestriction does not name us");
            }
        } else if (pg_sx_is_el(k, NS_SAML, "OneTimeUse") ||
                   pg_sx_is_el(k, NS_SAML, "ProxyRestriction")) {
            continue; /* one-time use is the replay cache's job */
        } else {
            return refuse(c, PG_ERR_DENIED, "unknown_condition",
                          (const char *)k->name);
        }
    }
    if (nar == 0) {
        return refuse(c, PG_ERR_DENIED, "no_audience", "no AudienceRestriction");
    }
    return PG_OK;
}

/* One bearer SubjectConfirmationData against Recipient, time and
 * InResponseTo. NULL when acceptable, else the reason. */
static const char *
check_scd(acs_ctx_t *c, xmlNode *scd, int64_t *noa)
{
    const char *s, *irt;
    int64_t t, now = c->exp->now, skew = (int64_t)c->sp->skew;

    if (scd == NULL) {
        return "no_bearer";
    }
    s = pg_sx_attr(scd, "Recipient");
    if (s == NULL || strcmp(s, c->sp->acs_url) != 0) {
        return "bad_recipient";
    }
    s = pg_sx_attr(scd, "NotOnOrAfter");
    if (s == NULL || pg_sx_parse_time(s, &t) != 0) {
        return "bad_time";
    }
    if (now - skew >= t) {
        return "expired";
    }
    if ((s = pg_sx_attr(scd, "NotBefore")) != NULL) {
        int64_t nb;
        if (pg_sx_parse_time(s, &nb) != 0) {
            return "bad_time";
        }
        if (now + skew < nb) {
            return "not_yet_valid";
        }
    }
    irt = pg_sx_attr(scd, "InResponseTo");
    if (c->exp->in_response_to != NULL) {
        if (irt == NULL || strcmp(irt, c->exp->in_response_to) != 0) {
            return "in_response_to_mismatch";
        }
    } else if (irt != NULL) {
        return "in_response_to_mismatch";
    }
    if (*noa == 0 || t < *noa) {
        *noa = t;
    }
    return NULL;
}

/* Subject: NameID (pure text) and at least one acceptable bearer
 * confirmation. */
static pg_status_t
check_subject(acs_ctx_t *c, xmlNode *as, pg_saml_assertion_t *o)
{
    xmlNode *subj = pg_sx_first_child(as, NS_SAML, "Subject"), *nid, *sc;
    const char *first_bad = NULL;
    int bad, ok = 0;
    int64_t noa = 0;

    if (subj == NULL || pg_sx_count_children(as, NS_SAML, "Subject") != 1) {
        return refuse(c, PG_ERR_DENIED, "no_nameid", "no Subject");
    }
    nid = pg_sx_first_child(subj, NS_SAML, "NameID");
    if (nid == NULL || pg_sx_count_children(subj, NS_SAML, "NameID") != 1) {
        return refuse(c, PG_ERR_DENIED, "no_nameid", "need exactly one NameID");
    }
    o->name_id = pure_text(nid, &bad);
    if (bad) {
        return refuse(c, PG_ERR_DENIED, "nameid_not_text",
                      "NameID holds a comment or markup");
    }
    if (o->name_id == NULL) {
        return PG_ERR_NOMEM;
    }
    if (o->name_id[0] == '\0') {
        return refuse(c, PG_ERR_DENIED, "no_nameid", "empty NameID");
    }
    /* Format and the qualifiers go back into a Single Logout request's
     * NameID, which must match the one issued */
    if ((pg_sx_attr(nid, "Format") != NULL
         && (o->name_id_format = strdup(pg_sx_attr(nid, "Format"))) == NULL)
        || (pg_sx_attr(nid, "NameQualifier") != NULL
            && (o->name_qualifier = strdup(pg_sx_attr(nid, "NameQualifier")))
               == NULL)
        || (pg_sx_attr(nid, "SPNameQualifier") != NULL
            && (o->sp_name_qualifier
                = strdup(pg_sx_attr(nid, "SPNameQualifier"))) == NULL)) {
        return PG_ERR_NOMEM;
    }
    for (sc = subj->children; sc != NULL; sc = sc->next) {
        const char *m, *why;
        int64_t t = 0;
        if (!pg_sx_is_el(sc, NS_SAML, "SubjectConfirmation")) {
            continue;
        }
        m = pg_sx_attr(sc, "Method");
        if (m == NULL || strcmp(m, CM_BEARER) != 0) {
            continue;
        }
        why = check_scd(c, pg_sx_first_child(sc, NS_SAML, "SubjectConfirmationData"), &t);
        if (why == NULL) {
            ok = 1;
            if (noa == 0 || t < noa) {
                noa = t;
            }
        } else if (first_bad == NULL) {
            first_bad = why;
        }
    }
    if (!ok) {
        if (first_bad == NULL) {
            first_bad = "no_bearer";
        }
        return refuse(c, PG_ERR_DENIED, first_bad, "bearer SubjectConfirmation");
    }
    o->not_on_or_after = noa;
    return PG_OK;
}

/* AuthnStatement (SessionIndex, SessionNotOnOrAfter) and attributes. */
static pg_status_t
check_statements(acs_ctx_t *c, xmlNode *as, pg_saml_assertion_t *o)
{
    xmlNode *an = pg_sx_first_child(as, NS_SAML, "AuthnStatement"), *st, *at;
    const char *s;

    if (an == NULL) {
        return refuse(c, PG_ERR_DENIED, "no_authn_statement", "no AuthnStatement");
    }
    if ((s = pg_sx_attr(an, "SessionNotOnOrAfter")) != NULL) {
        int64_t t;
        if (pg_sx_parse_time(s, &t) != 0) {
            return refuse(c, PG_ERR_DENIED, "bad_time", "SessionNotOnOrAfter");
        }
        if (c->exp->now - (int64_t)c->sp->skew >= t) {
            return refuse(c, PG_ERR_DENIED, "session_expired",
                          "SessionNotOnOrAfter passed");
        }
    }
    if ((s = pg_sx_attr(an, "SessionIndex")) != NULL) {
        o->session_index = strdup(s);
        if (o->session_index == NULL) {
            return PG_ERR_NOMEM;
        }
    }
    o->attributes = json_object();
    if (o->attributes == NULL) {
        return PG_ERR_NOMEM;
    }
    for (st = as->children; st != NULL; st = st->next) {
        if (!pg_sx_is_el(st, NS_SAML, "AttributeStatement")) {
            continue;
        }
        for (at = st->children; at != NULL; at = at->next) {
            const char *name;
            json_t *arr;
            xmlNode *v;
            if (at->type != XML_ELEMENT_NODE) {
                continue;
            }
            if (!pg_sx_is_el(at, NS_SAML, "Attribute")) {
                return refuse(c, PG_ERR_DENIED, "bad_attribute",
                              "EncryptedAttribute or unknown element");
            }
            name = pg_sx_attr(at, "Name");
            if (name == NULL || name[0] == '\0') {
                return refuse(c, PG_ERR_DENIED, "bad_attribute", "no Name");
            }
            arr = json_object_get(o->attributes, name);
            if (arr == NULL) {
                arr = json_array();
                if (arr == NULL || json_object_set_new(o->attributes, name, arr)) {
                    return PG_ERR_NOMEM;
                }
            }
            for (v = at->children; v != NULL; v = v->next) {
                int bad;
                char *txt;
                if (!pg_sx_is_el(v, NS_SAML, "AttributeValue")) {
                    continue;
                }
                txt = pure_text(v, &bad);
                if (bad) {
                    return refuse(c, PG_ERR_DENIED, "bad_attribute",
                                  "AttributeValue holds a comment or markup");
                }
                if (txt == NULL || json_array_append_new(arr, json_string(txt))) {
                    free(txt);
                    return PG_ERR_NOMEM;
                }
                free(txt);
            }
        }
    }
    return PG_OK;
}

/* Every check on the one assertion, from the verified tree only. */
static pg_status_t
check_assertion(acs_ctx_t *c, xmlNode *as, pg_saml_assertion_t *o)
{
    const char *id = pg_sx_attr(as, "ID"), *ver = pg_sx_attr(as, "Version");
    pg_status_t st;
    int64_t noa;

    if (ver == NULL || strcmp(ver, "2.0") != 0) {
        return refuse(c, PG_ERR_DENIED, "bad_version", "Assertion Version");
    }
    if (id == NULL || id[0] == '\0') {
        return refuse(c, PG_ERR_INVALID, "malformed", "Assertion without ID");
    }
    if (!issuer_ok(c->sp, as, 1)) {
        return refuse(c, PG_ERR_DENIED, "bad_issuer", "Assertion Issuer");
    }
    o->assertion_id = strdup(id);
    o->issuer = strdup(c->sp->idp_entity_id);
    if (o->assertion_id == NULL || o->issuer == NULL) {
        return PG_ERR_NOMEM;
    }
    st = check_subject(c, as, o);
    if (st != PG_OK) {
        return st;
    }
    noa = o->not_on_or_after;
    st = check_conditions(c, as, &noa);
    if (st != PG_OK) {
        return st;
    }
    o->not_on_or_after = noa;
    return check_statements(c, as, o);
}

/* Verify the enveloped signature of el if it has one, with `xml` being a
 * document in which lasso will pick exactly el (see lasso_verify_xml):
 * 1 verified, 0 none, -1 refused (reason set). */
static int
verify_if_signed(acs_ctx_t *c, xmlNode *el, const char *xml)
{
    xmlNode *sig = pg_sx_first_child(el, NS_DS, "Signature");
    int rc;

    if (sig == NULL) {
        return 0;
    }
    if (!pg_sx_reference_ok(el, sig)) {
        (void)refuse(c, PG_ERR_CRYPTO, "bad_reference",
                     "Reference must be the signed element's own ID");
        return -1;
    }
    rc = lasso_verify_xml(c->sp, xml);
    if (rc != 0) {
        (void)refuse(c, PG_ERR_CRYPTO, "bad_signature", lasso_strerror(rc));
        return -1;
    }
    return 1;
}

/* Parse + structural checks shared by the response and a decrypted
 * assertion. Returns the doc or NULL with reason set. */
static xmlDocPtr
parse_checked(acs_ctx_t *c, const unsigned char *x, size_t n, walk_t *w,
              pg_status_t *st)
{
    xmlDocPtr doc;

    if (!pg_sx_prescan_ok(x, n)) {
        *st = refuse(c, PG_ERR_DENIED, "doctype", "DOCTYPE/declaration or NUL");
        return NULL;
    }
    doc = xml_parse(x, n);
    if (doc == NULL) {
        *st = refuse(c, PG_ERR_INVALID, "malformed", "not well-formed XML");
        return NULL;
    }
    memset(w, 0, sizeof(*w));
    w->ids = xmlHashCreate(16);
    if (w->ids == NULL) {
        xmlFreeDoc(doc);
        *st = PG_ERR_NOMEM;
        return NULL;
    }
    walk_tree(xmlDocGetRootElement(doc), w);
    xmlHashFree(w->ids, NULL);
    w->ids = NULL;
    if (w->dup_id) {
        *st = refuse(c, PG_ERR_DENIED, "duplicate_id", "an ID appears twice");
    } else if (w->bad_sig) {
        *st = refuse(c, PG_ERR_DENIED, "bad_signature_placement",
                     "Signature outside Response/Assertion or repeated");
    } else {
        *st = PG_OK;
        return doc;
    }
    xmlFreeDoc(doc);
    return NULL;
}

/* The whole ACS check, in the order given in docs/saml.md. Fills o as it
 * goes; the caller clears o on failure. */
static pg_status_t
acs_validate(acs_ctx_t *c, const char *body, size_t len,
             pg_saml_assertion_t *o)
{
    char *b64 = NULL;
    unsigned char *xml = NULL, *pt = NULL;
    size_t xlen = 0, ptlen = 0;
    xmlDocPtr doc = NULL, adoc = NULL;
    xmlNode *root, *as, *ea, *stn;
    walk_t w;
    pg_status_t st;
    const char *s;
    int rsig, asig, encrypted;

    if (len > PG_SAML_MAX_POST_BODY) {
        return refuse(c, PG_ERR_TOO_LARGE, "too_large", "POST body over cap");
    }
    st = form_param(body, len, "SAMLResponse", PG_SAML_MAX_POST_BODY, &b64);
    if (st == PG_ERR_NOMEM) {
        return st;
    }
    if (st != PG_OK) {
        return refuse(c, PG_ERR_INVALID, "malformed", "no single SAMLResponse");
    }
    st = form_param(body, len, "RelayState", MAX_RELAY_STATE, &o->relay_state);
    if (st == PG_ERR_NOMEM) {
        goto out;
    }
    if (st != PG_OK && st != PG_ERR_NOT_FOUND) {
        st = refuse(c, PG_ERR_INVALID, "malformed", "RelayState");
        goto out;
    }
    st = pg_sx_b64_decode(b64, strlen(b64), PG_SAML_MAX_XML, &xml, &xlen);
    if (st == PG_ERR_TOO_LARGE) {
        st = refuse(c, st, "too_large", "decoded response over cap");
        goto out;
    }
    if (st != PG_OK) {
        st = st == PG_ERR_NOMEM ? st
                                : refuse(c, PG_ERR_INVALID, "malformed", "base64");
        goto out;
    }
    doc = parse_checked(c, xml, xlen, &w, &st);
    if (doc == NULL) {
        goto out;
    }
    root = xmlDocGetRootElement(doc);
    if (!pg_sx_is_el(root, NS_SAMLP, "Response") || w.responses != 1) {
        st = refuse(c, PG_ERR_DENIED, "not_response",
                    "root must be the only samlp:Response");
        goto out;
    }
    if ((s = pg_sx_attr(root, "Version")) == NULL || strcmp(s, "2.0") != 0) {
        st = refuse(c, PG_ERR_DENIED, "bad_version", "Response Version");
        goto out;
    }
    if (pg_sx_attr(root, "ID") == NULL) {
        st = refuse(c, PG_ERR_INVALID, "malformed", "Response without ID");
        goto out;
    }
    /* Response signature first: everything after reads a verified tree
     * (or an assertion verified on its own below). */
    rsig = verify_if_signed(c, root, (const char *)xml);
    if (rsig < 0) {
        st = PG_ERR_CRYPTO;
        goto out;
    }
    if (!issuer_ok(c->sp, root, 0)) {
        st = refuse(c, PG_ERR_DENIED, "bad_issuer", "Response Issuer");
        goto out;
    }
    stn = pg_sx_first_child(pg_sx_first_child(root, NS_SAMLP, "Status"), NS_SAMLP,
                      "StatusCode");
    if (stn == NULL || (s = pg_sx_attr(stn, "Value")) == NULL ||
        strcmp(s, STATUS_SUCCESS) != 0) {
        st = refuse(c, PG_ERR_DENIED, "status_not_success",
                    s ? s : "no StatusCode");
        goto out;
    }
    if ((s = pg_sx_attr(root, "Destination")) == NULL ||
        strcmp(s, c->sp->acs_url) != 0) {
        st = refuse(c, PG_ERR_DENIED, "bad_destination", "Response Destination");
        goto out;
    }
    s = pg_sx_attr(root, "InResponseTo");
    if (c->exp->in_response_to == NULL) {
        if (!c->sp->allow_unsolicited) {
            st = refuse(c, PG_ERR_DENIED, "unsolicited",
                        "no stored request and unsolicited not allowed");
            goto out;
        }
        if (s != NULL) {
            st = refuse(c, PG_ERR_DENIED, "in_response_to_mismatch",
                        "InResponseTo for an unknown request");
            goto out;
        }
    } else if (s == NULL || strcmp(s, c->exp->in_response_to) != 0) {
        st = refuse(c, PG_ERR_DENIED, "in_response_to_mismatch",
                    "Response InResponseTo");
        goto out;
    }
    if (w.assertions != 1) {
        st = refuse(c, PG_ERR_DENIED, "assertion_count",
                    "exactly one assertion required");
        goto out;
    }
    as = pg_sx_first_child(root, NS_SAML, "Assertion");
    ea = pg_sx_first_child(root, NS_SAML, "EncryptedAssertion");
    if (as == NULL && ea == NULL) {
        st = refuse(c, PG_ERR_DENIED, "assertion_count",
                    "the assertion is not a child of the Response");
        goto out;
    }
    encrypted = ea != NULL;
    if (encrypted) {
        walk_t w2;
        xmlNode *aroot;
        st = decrypt_assertion(c->sp, ea, &pt, &ptlen);
        if (st == PG_ERR_NOMEM) {
            goto out;
        }
        if (st != PG_OK) {
            st = refuse(c, st == PG_ERR_TOO_LARGE ? st : PG_ERR_CRYPTO,
                        st == PG_ERR_TOO_LARGE ? "too_large" : "decrypt_failed",
                        "EncryptedAssertion");
            goto out;
        }
        adoc = parse_checked(c, pt, ptlen, &w2, &st);
        if (adoc == NULL) {
            /* One reason for every failure after decryption, so that the
             * audit trail cannot serve as a CBC padding/parse oracle. */
            if (st != PG_ERR_NOMEM) {
                st = refuse(c, PG_ERR_CRYPTO, "decrypt_failed",
                            "decrypted content refused");
            }
            goto out;
        }
        aroot = xmlDocGetRootElement(adoc);
        if (!pg_sx_is_el(aroot, NS_SAML, "Assertion") || w2.assertions != 1 ||
            w2.responses != 0) {
            st = refuse(c, PG_ERR_DENIED, "assertion_count",
                        "decrypted content is not one Assertion");
            goto out;
        }
        as = aroot;
    }
    if (encrypted) {
        asig = verify_if_signed(c, as, (const char *)pt);
    } else if (pg_sx_first_child(as, NS_DS, "Signature") == NULL) {
        asig = 0;
    } else {
        /* A standalone copy of the Assertion: xmlDocCopyNode re-declares
         * the in-scope prefixes it uses on the new root with the same
         * prefixes, so the exclusive canonical form is unchanged. (No
         * xmlReconciliateNs: it renames default namespaces.) */
        xmlDocPtr d2 = xmlNewDoc(BAD_CAST "1.0");
        xmlNode *cp = d2 ? xmlDocCopyNode(as, d2, 1) : NULL;
        xmlChar *mem = NULL;
        int size = 0;
        if (cp == NULL) {
            if (d2) xmlFreeDoc(d2);
            st = PG_ERR_NOMEM;
            goto out;
        }
        xmlDocSetRootElement(d2, cp);
        xmlDocDumpMemory(d2, &mem, &size);
        xmlFreeDoc(d2);
        if (mem == NULL) {
            st = PG_ERR_NOMEM;
            goto out;
        }
        asig = verify_if_signed(c, as, (const char *)mem);
        xmlFree(mem);
    }
    if (asig < 0) {
        st = PG_ERR_CRYPTO;
        goto out;
    }
    if (encrypted && asig != 1) {
        st = refuse(c, PG_ERR_DENIED, "encrypted_unsigned",
                    "an encrypted assertion must be signed itself");
        goto out;
    }
    if (rsig != 1 && asig != 1) {
        st = refuse(c, PG_ERR_DENIED, "unsigned", "neither Response nor Assertion signed");
        goto out;
    }
    if (c->sp->require_signed_response && rsig != 1) {
        st = refuse(c, PG_ERR_DENIED, "response_unsigned", "Response not signed");
        goto out;
    }
    if (c->sp->require_signed_assertion && asig != 1) {
        st = refuse(c, PG_ERR_DENIED, "assertion_unsigned", "Assertion not signed");
        goto out;
    }
    /* Identity is read only from `as`, which is either inside the verified
     * Response (the only Response, the only Assertion) or verified itself. */
    st = check_assertion(c, as, o);
    if (st != PG_OK) {
        goto out;
    }
    s = pg_sx_attr(root, "InResponseTo");
    if (s == NULL) {
        /* Solicited responses carry it in the bearer confirmation, which
         * check_scd already compared. */
        s = c->exp->in_response_to;
    }
    if (s != NULL) {
        o->in_response_to = strdup(s);
        if (o->in_response_to == NULL) {
            st = PG_ERR_NOMEM;
            goto out;
        }
    }
    st = PG_OK;
out:
    free(b64);
    free(xml);
    free(pt);
    if (adoc) xmlFreeDoc(adoc);
    if (doc) xmlFreeDoc(doc);
    return st;
}

/* See saml.h. */
pg_status_t
pg_saml_acs_validate(pg_saml_sp_t *sp, const char *post_body, size_t len,
                     const pg_saml_expect_t *exp, pg_saml_assertion_t *out,
                     const char **reason, pg_err_t *err)
{
    acs_ctx_t c = {sp, exp, reason, err};
    pg_status_t st;

    memset(out, 0, sizeof(*out));
    *reason = NULL;
    if (sp == NULL || post_body == NULL || exp == NULL) {
        *reason = "malformed";
        return PG_ERR_INVALID;
    }
    if (sp->idp == NULL) {
        *reason = "idp_unavailable";
        pg_err_set(err, "saml: no IdP metadata yet");
        return PG_ERR_DENIED;
    }
    st = acs_validate(&c, post_body, len, out);
    if (st != PG_OK) {
        pg_saml_assertion_clear(out);
        if (*reason == NULL) {
            *reason = st == PG_ERR_NOMEM ? "internal" : "malformed";
        }
    }
    return st;
}
