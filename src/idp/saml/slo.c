/*
 * SAML 2.0 Single Logout, SP side: LogoutRequest / LogoutResponse build
 * (HTTP-Redirect, signed) and verification (HTTP-Redirect and HTTP-POST).
 *
 * Division of labour:
 *  - OpenSSL: rsa-sha256 signatures over the Redirect query string
 *    (Bindings 3.4.4.1), both ways.
 *  - xmlsec1-openssl: the enveloped XML signature of a POST message,
 *    verified with a key taken from the IdP metadata only (signKey preset,
 *    no keys manager: KeyInfo in the message is never used), reference
 *    URIs limited to the same document, transforms to an allow-list.
 *  - here: size caps, DOCTYPE refusal, safe parse, structure (one root
 *    message, unique IDs, Signature placement, Reference = root ID) and
 *    every semantic check (Issuer, Destination, times, InResponseTo,
 *    Status, NameID); EncryptedID decryption with the SP key only.
 * lasso is not used: its LassoLogout needs the session/identity dumps and
 * the LassoServer that sp.c keeps private, and leaves the same checks to
 * the caller anyway. The small helpers below (builder, base64, form and
 * XML utilities, EncryptedID decryption) are compact re-implementations
 * of the static ones in sp.c, which this file may not touch.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/valid.h>
#include <xmlsec/xmlsec.h>
#include <xmlsec/xmltree.h>
#include <xmlsec/xmldsig.h>
#include <xmlsec/xmlenc.h>
#include <xmlsec/keys.h>
#include <xmlsec/transforms.h>
#include <xmlsec/crypto.h>

#include "provgate/saml_slo.h"
#include "saml_int.h"

#define NAMEID_ENTITY "urn:oasis:names:tc:SAML:2.0:nameid-format:entity"
#define BINDING_REDIRECT "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
#define SIGALG_RSA_SHA256 "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
#define SIGALG_RSA_SHA512 "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512"
#define MAX_RELAY_IN   PG_SAML_SLO_MAX_RELAY_IN
#define MAX_SUBJECT    1024u  /* each pg_saml_logout_subject_t string */
#define MAX_STATUS_URI 256u
#define MAX_SIG_BYTES  1024u  /* RSA-8192 */

struct pg_saml_slo {
    char *entity_id;       /* ours */
    char *slo_url;         /* ours: Destination of every incoming message */
    char *idp_entity_id;
    char *idp_slo_url;     /* Redirect Location */
    char *idp_slo_resp_url; /* Redirect ResponseLocation, else Location */
    unsigned skew;
    EVP_PKEY *sp_key;      /* RSA private key */
    xmlSecKeyPtr sp_xkey;  /* the same key for xmlsec (EncryptedID) */
    EVP_PKEY *idp_pk[PG_SAML_SLO_MAX_IDP_KEYS];
    xmlSecKeyPtr idp_xk[PG_SAML_SLO_MAX_IDP_KEYS];
    size_t n_keys;
};

/* ---- small string builder --------------------------------------------- */

typedef struct sb {
    char *buf;
    size_t len, cap;
    int oom;
} sb_t;

/* Append n bytes, keeping buf NUL-terminated; on OOM sets b->oom and
 * ignores later appends. The caller frees b->buf. */
static void
sb_addn(sb_t *b, const char *s, size_t n)
{
    if (b->oom) {
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t ncap = b->cap ? b->cap : 512;
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

/* Append a NUL-terminated string. */
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

/* Append s URL-encoded (RFC 3986 unreserved kept); sets oom on failure. */
static void
sb_add_url(sb_t *b, const char *s, size_t n)
{
    char *e = pg_urlencode(s, n);
    if (e == NULL) {
        b->oom = 1;
        return;
    }
    sb_add(b, e);
    free(e);
}

/* ---- encodings --------------------------------------------------------- */



/* Standard base64 of n bytes, no line breaks; malloc'd or NULL (OOM). */
static char *
b64_encode(const unsigned char *in, size_t n)
{
    char *o;

    if (n > (size_t)INT32_MAX / 2) {
        return NULL;
    }
    o = malloc((n + 2) / 3 * 4 + 1);
    if (o == NULL) {
        return NULL;
    }
    (void)EVP_EncodeBlock((unsigned char *)o, in, (int)n);
    return o;
}


/*
 * Decode a form/query value ('+' is a space, %XX) into a malloc'd
 * NUL-terminated string of at most cap bytes. PG_ERR_TOO_LARGE when the
 * encoded input could exceed cap (checked first), PG_ERR_INVALID on a bad
 * escape or a NUL byte.
 */
static pg_status_t
pct_decode(const char *v, size_t n, size_t cap, char **out)
{
    char *o;
    size_t j, olen = 0;

    *out = NULL;
    if (n > cap * 3) {
        return PG_ERR_TOO_LARGE;
    }
    o = malloc(n + 1);
    if (o == NULL) {
        return PG_ERR_NOMEM;
    }
    for (j = 0; j < n; j++) {
        unsigned char c = (unsigned char)v[j];
        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            int h, l;
            if (j + 2 >= n) {
                free(o);
                return PG_ERR_INVALID;
            }
            h = pg_sx_hexval((unsigned char)v[j + 1]);
            l = pg_sx_hexval((unsigned char)v[j + 2]);
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
    return PG_OK;
}

/* ---- query / form parameters ------------------------------------------ */

/* One known parameter: raw (still encoded) value and how often it came. */
typedef struct qparam {
    const char *raw;
    size_t len;
    unsigned count;
} qparam_t;

typedef struct qparams {
    qparam_t msg, other_msg, relay, sigalg, sig;
} qparams_t;

/*
 * Split an &-separated query/form string and note the raw values of the
 * message parameter (msg_name), the other SAML message parameter,
 * RelayState, SigAlg and Signature. Other parameters are ignored (they
 * are not covered by the signature and never read).
 */
static void
split_params(const char *s, size_t n, const char *msg_name, qparams_t *q)
{
    size_t i = 0;
    const char *other = strcmp(msg_name, "SAMLRequest") == 0 ? "SAMLResponse"
                                                             : "SAMLRequest";

    memset(q, 0, sizeof(*q));
    while (i < n) {
        size_t end = i, eq;
        qparam_t *p = NULL;
        while (end < n && s[end] != '&') {
            end++;
        }
        for (eq = i; eq < end && s[eq] != '='; eq++) {
        }
        if (eq < end) {
            size_t klen = eq - i;
#define KEY_IS(k) (klen == strlen(k) && memcmp(s + i, k, klen) == 0)
            if (KEY_IS(msg_name)) {
                p = &q->msg;
            } else if (KEY_IS(other)) {
                p = &q->other_msg;
            } else if (KEY_IS("RelayState")) {
                p = &q->relay;
            } else if (KEY_IS("SigAlg")) {
                p = &q->sigalg;
            } else if (KEY_IS("Signature")) {
                p = &q->sig;
            }
#undef KEY_IS
            if (p != NULL) {
                p->raw = s + eq + 1;
                p->len = end - eq - 1;
                p->count++;
            }
        }
        i = end + 1;
    }
}

/* ---- safe XML ---------------------------------------------------------- */


/* Parse pre-scanned bytes: no network, no entities, no DTD, UTF-8 forced.
 * NULL when not well-formed or a DTD subset exists. */
static xmlDocPtr
xml_parse(const unsigned char *p, size_t n)
{
    xmlDocPtr doc;

    if (n > INT32_MAX) {
        return NULL;
    }
    doc = xmlReadMemory((const char *)p, (int)n, "slo.xml", "UTF-8",
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





/* Text of an element holding only text/CDATA children, malloc'd; with a
 * comment, PI, entity reference or child element *bad is set and NULL is
 * returned (never a truncated prefix). NULL without *bad: OOM. */
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
    return b.buf ? b.buf : strdup("");
}

/* 1 when the element's pure text, trimmed of XML whitespace, equals want. */
static int
text_equals(xmlNode *n, const char *want)
{
    int bad, eq;
    char *t = pure_text(n, &bad);
    const char *s;
    size_t len;

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

/* ---- time -------------------------------------------------------------- */



/* Format unix seconds as "YYYY-MM-DDThh:mm:ssZ" into out (>= 21 bytes). */
static int
fmt_time(int64_t t, char *out, size_t n)
{
    struct tm tm;
    time_t tt = (time_t)t;

    if (t < 0 || gmtime_r(&tt, &tm) == NULL ||
        strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
        return -1;
    }
    return 0;
}

/* A fresh message ID: "_" + 40 hex digits (160 random bits). */
static pg_status_t
new_id(char out[42])
{
    unsigned char r[20];
    static const char hex[] = "0123456789abcdef";
    size_t i;
    pg_status_t st = pg_random(r, sizeof(r));

    if (st != PG_OK) {
        return st;
    }
    out[0] = '_';
    for (i = 0; i < sizeof(r); i++) {
        out[1 + 2 * i] = hex[r[i] >> 4];
        out[2 + 2 * i] = hex[r[i] & 15];
    }
    out[41] = '\0';
    return PG_OK;
}

/* ---- construction ------------------------------------------------------ */

/* Free everything (NULL is fine). */
void
pg_saml_slo_free(pg_saml_slo_t *slo)
{
    size_t i;

    if (slo == NULL) {
        return;
    }
    free(slo->entity_id);
    free(slo->slo_url);
    free(slo->idp_entity_id);
    free(slo->idp_slo_url);
    free(slo->idp_slo_resp_url);
    EVP_PKEY_free(slo->sp_key);
    if (slo->sp_xkey != NULL) {
        xmlSecKeyDestroy(slo->sp_xkey);
    }
    for (i = 0; i < slo->n_keys; i++) {
        EVP_PKEY_free(slo->idp_pk[i]);
        if (slo->idp_xk[i] != NULL) {
            xmlSecKeyDestroy(slo->idp_xk[i]);
        }
    }
    free(slo);
}

/* See saml_slo.h. */
const char *
pg_saml_slo_idp_url(const pg_saml_slo_t *slo)
{
    return slo->idp_slo_url;
}

/* Add one base64 X509Certificate from the metadata as an IdP verification
 * key (OpenSSL public key + xmlsec key). PG_ERR_CONFIG when unusable. */
static pg_status_t
add_idp_cert(pg_saml_slo_t *slo, xmlNode *certel, pg_err_t *err)
{
    int bad;
    char *txt = pure_text(certel, &bad);
    unsigned char *der = NULL;
    const unsigned char *p;
    size_t dlen = 0;
    X509 *x = NULL;
    pg_status_t st;

    if (txt == NULL) {
        pg_err_set(err, "IdP metadata: X509Certificate is not text");
        return bad ? PG_ERR_CONFIG : PG_ERR_NOMEM;
    }
    st = pg_sx_b64_decode(txt, strlen(txt), PG_SAML_MAX_PEM, &der, &dlen);
    free(txt);
    if (st != PG_OK) {
        pg_err_set(err, "IdP metadata: X509Certificate is not base64");
        return st == PG_ERR_NOMEM ? st : PG_ERR_CONFIG;
    }
    p = der;
    x = d2i_X509(NULL, &p, (long)dlen);
    if (x == NULL) {
        free(der);
        pg_err_set(err, "IdP metadata: X509Certificate does not parse");
        return PG_ERR_CONFIG;
    }
    slo->idp_pk[slo->n_keys] = X509_get_pubkey(x);
    X509_free(x);
    slo->idp_xk[slo->n_keys] =
        xmlSecCryptoAppKeyLoadMemory(der, (xmlSecSize)dlen,
                                     xmlSecKeyDataFormatCertDer, NULL, NULL,
                                     NULL);
    free(der);
    slo->n_keys++;
    if (slo->idp_pk[slo->n_keys - 1] == NULL ||
        slo->idp_xk[slo->n_keys - 1] == NULL ||
        EVP_PKEY_base_id(slo->idp_pk[slo->n_keys - 1]) != EVP_PKEY_RSA) {
        pg_err_set(err, "IdP metadata: signing key unusable (RSA required)");
        return PG_ERR_CONFIG;
    }
    return PG_OK;
}

/* Read the IdP metadata: signing certificates and the Redirect SLO. */
static pg_status_t
load_idp_metadata(pg_saml_slo_t *slo, const char *md, size_t len,
                  pg_err_t *err)
{
    xmlDocPtr doc;
    xmlNode *root, *idp, *c;
    pg_status_t st = PG_OK;

    if (!pg_sx_prescan_ok((const unsigned char *)md, len)) {
        pg_err_set(err, "IdP metadata: DOCTYPE or NUL refused");
        return PG_ERR_CONFIG;
    }
    doc = xml_parse((const unsigned char *)md, len);
    if (doc == NULL) {
        pg_err_set(err, "IdP metadata: not well-formed XML");
        return PG_ERR_CONFIG;
    }
    root = xmlDocGetRootElement(doc);
    idp = pg_sx_is_el(root, NS_MD, "EntityDescriptor")
              ? pg_sx_first_child(root, NS_MD, "IDPSSODescriptor") : NULL;
    if (idp == NULL || pg_sx_attr(root, "entityID") == NULL ||
        strcmp(pg_sx_attr(root, "entityID"), slo->idp_entity_id) != 0) {
        pg_err_set(err, "IdP metadata: not the SP's IdP EntityDescriptor");
        st = PG_ERR_CONFIG;
        goto out;
    }
    for (c = idp->children; c != NULL && st == PG_OK; c = c->next) {
        if (pg_sx_is_el(c, NS_MD, "KeyDescriptor")) {
            const char *use = pg_sx_attr(c, "use");
            xmlNode *cert = pg_sx_first_child(pg_sx_first_child(pg_sx_first_child(c, NS_DS,
                "KeyInfo"), NS_DS, "X509Data"), NS_DS, "X509Certificate");
            if ((use != NULL && strcmp(use, "signing") != 0) || cert == NULL ||
                slo->n_keys >= PG_SAML_SLO_MAX_IDP_KEYS) {
                continue;
            }
            st = add_idp_cert(slo, cert, err);
        } else if (pg_sx_is_el(c, NS_MD, "SingleLogoutService") &&
                   slo->idp_slo_url == NULL) {
            const char *b = pg_sx_attr(c, "Binding"), *loc = pg_sx_attr(c, "Location");
            const char *rloc = pg_sx_attr(c, "ResponseLocation");
            if (b == NULL || strcmp(b, BINDING_REDIRECT) != 0 || loc == NULL ||
                loc[0] == '\0') {
                continue;
            }
            slo->idp_slo_url = strdup(loc);
            slo->idp_slo_resp_url = strdup(rloc && rloc[0] ? rloc : loc);
            if (slo->idp_slo_url == NULL || slo->idp_slo_resp_url == NULL) {
                st = PG_ERR_NOMEM;
            }
        }
    }
    if (st == PG_OK && slo->n_keys == 0) {
        pg_err_set(err, "IdP metadata: no signing certificate");
        st = PG_ERR_CONFIG;
    }
    if (st == PG_OK && slo->idp_slo_url == NULL) {
        pg_err_set(err, "IdP metadata: no HTTP-Redirect SingleLogoutService");
        st = PG_ERR_CONFIG;
    }
out:
    xmlFreeDoc(doc);
    return st;
}

/* See saml_slo.h. */
pg_status_t
pg_saml_slo_new(const pg_saml_sp_t *sp, const pg_saml_sp_cfg_t *cfg,
                pg_saml_slo_t **out, pg_err_t *err)
{
    pg_saml_slo_t *slo;
    char *md = NULL, *kbuf = NULL;
    const char *key, *mdp;
    size_t klen = 0, mdlen = 0;
    BIO *bio;
    pg_status_t st;

    *out = NULL;
    if (sp == NULL || !pg_saml_sp_has_idp(sp) || cfg == NULL ||
        cfg->entity_id == NULL || cfg->slo_url == NULL ||
        cfg->slo_url[0] == '\0' ||
        (cfg->idp_metadata == NULL && cfg->idp_metadata_path == NULL)) {
        pg_err_set(err, "saml slo: SP with its IdP, entity_id, slo_url and "
                        "IdP metadata are required");
        return PG_ERR_CONFIG;
    }
    slo = calloc(1, sizeof(*slo));
    if (slo == NULL) {
        return PG_ERR_NOMEM;
    }
    slo->skew = cfg->clock_skew_s ? cfg->clock_skew_s : PG_SAML_DEFAULT_SKEW;
    slo->entity_id = strdup(cfg->entity_id);
    slo->slo_url = strdup(cfg->slo_url);
    slo->idp_entity_id = strdup(pg_saml_sp_idp_entity_id(sp));
    if (slo->entity_id == NULL || slo->slo_url == NULL ||
        slo->idp_entity_id == NULL) {
        st = PG_ERR_NOMEM;
        goto fail;
    }
    if (cfg->key_path != NULL) {
        st = pg_read_file(cfg->key_path, PG_SAML_MAX_PEM, 0, &kbuf, &klen,
                          err);
        if (st != PG_OK) {
            goto fail;
        }
        key = kbuf;
    } else {
        /* the SP's key, already read and checked by pg_saml_sp_new() */
        key = pg_saml_sp_key_pem(sp, &klen);
    }
    bio = BIO_new_mem_buf(key, (int)klen);
    if (bio == NULL) {
        st = PG_ERR_NOMEM;
        goto fail;
    }
    slo->sp_key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (slo->sp_key == NULL || EVP_PKEY_base_id(slo->sp_key) != EVP_PKEY_RSA) {
        pg_err_set(err, "saml slo: %s is not an RSA private key (PEM)",
                   cfg->key_path != NULL ? cfg->key_path : "the SP key");
        st = PG_ERR_CONFIG;
        goto fail;
    }
    slo->sp_xkey = xmlSecCryptoAppKeyLoadMemory((const xmlSecByte *)key,
                                                (xmlSecSize)klen,
                                                xmlSecKeyDataFormatPem, NULL,
                                                NULL, NULL);
    if (slo->sp_xkey == NULL) {
        pg_err_set(err, "saml slo: xmlsec cannot load %s",
                   cfg->key_path != NULL ? cfg->key_path : "the SP key");
        st = PG_ERR_CONFIG;
        goto fail;
    }
    if (cfg->idp_metadata != NULL) {
        mdp = cfg->idp_metadata;
        mdlen = cfg->idp_metadata_len;
    } else {
        st = pg_read_file(cfg->idp_metadata_path, PG_SAML_MAX_METADATA, 0,
                          &md, &mdlen, err);
        if (st != PG_OK) {
            goto fail;
        }
        mdp = md;
    }
    st = load_idp_metadata(slo, mdp, mdlen, err);
    if (st != PG_OK) {
        goto fail;
    }
    if (kbuf != NULL) {
        memset(kbuf, 0, klen);
        free(kbuf);
    }
    free(md);
    *out = slo;
    return PG_OK;
fail:
    if (kbuf != NULL) {
        memset(kbuf, 0, klen);
        free(kbuf);
    }
    free(md);
    pg_saml_slo_free(slo);
    return st;
}

/* ---- building Redirect messages --------------------------------------- */

/* Raw DEFLATE (no zlib header) of n bytes; *out malloc'd. */
static pg_status_t
deflate_raw(const char *in, size_t n, unsigned char **out, size_t *outlen)
{
    z_stream zs;
    uLong bound;
    unsigned char *buf;
    int rc;

    *out = NULL;
    memset(&zs, 0, sizeof(zs));
    if (deflateInit2(&zs, Z_BEST_COMPRESSION, Z_DEFLATED, -15, 8,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
        return PG_ERR_NOMEM;
    }
    bound = deflateBound(&zs, (uLong)n);
    buf = malloc(bound);
    if (buf == NULL) {
        deflateEnd(&zs);
        return PG_ERR_NOMEM;
    }
    zs.next_in = (Bytef *)(uintptr_t)in;
    zs.avail_in = (uInt)n;
    zs.next_out = buf;
    zs.avail_out = (uInt)bound;
    rc = deflate(&zs, Z_FINISH);
    *outlen = zs.total_out;
    deflateEnd(&zs);
    if (rc != Z_STREAM_END) {
        free(buf);
        return PG_ERR_INTERNAL;
    }
    *out = buf;
    return PG_OK;
}

/*
 * Turn a message into a signed HTTP-Redirect URL (Bindings 3.4.4):
 * dest?{param}=enc(b64(deflate(xml)))[&RelayState=enc(rs)]&SigAlg=enc(alg)
 * &Signature=enc(b64(rsa-sha256(everything before "&Signature")))
 */
static pg_status_t
build_redirect(const pg_saml_slo_t *slo, const char *dest, const char *param,
             const char *xml, const char *relay_state, char **url)
{
    unsigned char *z = NULL, *sig = NULL;
    size_t zlen = 0, siglen = 0;
    char *b64 = NULL, *sigb64 = NULL;
    sb_t q = {0}, u = {0};
    EVP_MD_CTX *md = NULL;
    pg_status_t st;

    *url = NULL;
    st = deflate_raw(xml, strlen(xml), &z, &zlen);
    if (st != PG_OK) {
        return st;
    }
    b64 = b64_encode(z, zlen);
    free(z);
    if (b64 == NULL) {
        return PG_ERR_NOMEM;
    }
    sb_add(&q, param);
    sb_add(&q, "=");
    sb_add_url(&q, b64, strlen(b64));
    if (relay_state != NULL) {
        sb_add(&q, "&RelayState=");
        sb_add_url(&q, relay_state, strlen(relay_state));
    }
    sb_add(&q, "&SigAlg=");
    sb_add_url(&q, SIGALG_RSA_SHA256, strlen(SIGALG_RSA_SHA256));
    if (q.oom) {
        st = PG_ERR_NOMEM;
        goto out;
    }
    md = EVP_MD_CTX_new();
    if (md == NULL ||
        EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, slo->sp_key) != 1 ||
        EVP_DigestSign(md, NULL, &siglen, (const unsigned char *)q.buf,
                       q.len) != 1 ||
        (sig = malloc(siglen)) == NULL ||
        EVP_DigestSign(md, sig, &siglen, (const unsigned char *)q.buf,
                       q.len) != 1) {
        st = sig == NULL && md != NULL ? PG_ERR_NOMEM : PG_ERR_CRYPTO;
        goto out;
    }
    sigb64 = b64_encode(sig, siglen);
    if (sigb64 == NULL) {
        st = PG_ERR_NOMEM;
        goto out;
    }
    sb_add(&q, "&Signature=");
    sb_add_url(&q, sigb64, strlen(sigb64));
    sb_add(&u, dest);
    sb_add(&u, strchr(dest, '?') ? "&" : "?");
    if (q.buf != NULL) {
        sb_add(&u, q.buf);
    }
    if (q.oom || u.oom) {
        free(u.buf);
        st = PG_ERR_NOMEM;
        goto out;
    }
    *url = u.buf;
    st = PG_OK;
out:
    EVP_MD_CTX_free(md);
    free(sig);
    free(sigb64);
    free(b64);
    free(q.buf);
    return st;
}

/* Length check for an optional caller string. */
static int
too_long(const char *s, size_t cap)
{
    return s != NULL && strlen(s) > cap;
}

/* 1 when an optional caller string may go into XML text or an attribute
 * (after escaping): no C0 control byte other than TAB, LF, CR, no DEL. */
static int
xml_chars_ok(const char *s)
{
    for (; s != NULL && *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7f) {
            return 0;
        }
    }
    return 1;
}

/* See saml_slo.h. */
pg_status_t
pg_saml_logout_request(const pg_saml_slo_t *slo,
                       const pg_saml_logout_subject_t *who,
                       const char *relay_state, int64_t now,
                       char **redirect_url, char **request_id, pg_err_t *err)
{
    char id[42], t_now[32], t_noa[32];
    sb_t b = {0};
    pg_status_t st;

    *redirect_url = NULL;
    *request_id = NULL;
    if (who == NULL || who->name_id == NULL || who->name_id[0] == '\0') {
        pg_err_set(err, "saml slo: a NameID is required");
        return PG_ERR_INVALID;
    }
    if (too_long(relay_state, PG_SAML_SLO_MAX_RELAY)) {
        pg_err_set(err, "saml slo: RelayState over %u bytes",
                   PG_SAML_SLO_MAX_RELAY);
        return PG_ERR_TOO_LARGE;
    }
    if (too_long(who->name_id, MAX_SUBJECT) ||
        too_long(who->name_id_format, MAX_SUBJECT) ||
        too_long(who->sp_name_qualifier, MAX_SUBJECT) ||
        too_long(who->name_qualifier, MAX_SUBJECT) ||
        too_long(who->session_index, MAX_SUBJECT)) {
        pg_err_set(err, "saml slo: subject value over %u bytes", MAX_SUBJECT);
        return PG_ERR_TOO_LARGE;
    }
    if (!xml_chars_ok(who->name_id) || !xml_chars_ok(who->name_id_format) ||
        !xml_chars_ok(who->sp_name_qualifier) ||
        !xml_chars_ok(who->name_qualifier) ||
        !xml_chars_ok(who->session_index)) {
        pg_err_set(err, "saml slo: control character in a subject value");
        return PG_ERR_INVALID;
    }
    if (fmt_time(now, t_now, sizeof(t_now)) != 0 ||
        fmt_time(now + PG_SAML_SLO_MAX_AGE, t_noa, sizeof(t_noa)) != 0) {
        pg_err_set(err, "saml slo: bad clock");
        return PG_ERR_INVALID;
    }
    st = new_id(id);
    if (st != PG_OK) {
        return st;
    }
    sb_add(&b, "<samlp:LogoutRequest xmlns:samlp=\"" NS_SAMLP "\" "
               "xmlns:saml=\"" NS_SAML "\" ID=\"");
    sb_add(&b, id);
    sb_add(&b, "\" Version=\"2.0\" IssueInstant=\"");
    sb_add(&b, t_now);
    sb_add(&b, "\" NotOnOrAfter=\"");
    sb_add(&b, t_noa);
    sb_add(&b, "\" Destination=\"");
    sb_add_xml(&b, slo->idp_slo_url);
    sb_add(&b, "\"><saml:Issuer>");
    sb_add_xml(&b, slo->entity_id);
    sb_add(&b, "</saml:Issuer><saml:NameID");
    if (who->name_qualifier != NULL) {
        sb_add(&b, " NameQualifier=\"");
        sb_add_xml(&b, who->name_qualifier);
        sb_add(&b, "\"");
    }
    if (who->sp_name_qualifier != NULL) {
        sb_add(&b, " SPNameQualifier=\"");
        sb_add_xml(&b, who->sp_name_qualifier);
        sb_add(&b, "\"");
    }
    if (who->name_id_format != NULL) {
        sb_add(&b, " Format=\"");
        sb_add_xml(&b, who->name_id_format);
        sb_add(&b, "\"");
    }
    sb_add(&b, ">");
    sb_add_xml(&b, who->name_id);
    sb_add(&b, "</saml:NameID>");
    if (who->session_index != NULL) {
        sb_add(&b, "<samlp:SessionIndex>");
        sb_add_xml(&b, who->session_index);
        sb_add(&b, "</samlp:SessionIndex>");
    }
    sb_add(&b, "</samlp:LogoutRequest>");
    if (b.oom) {
        free(b.buf);
        return PG_ERR_NOMEM;
    }
    st = build_redirect(slo, slo->idp_slo_url, "SAMLRequest", b.buf,
                      relay_state, redirect_url);
    free(b.buf);
    if (st != PG_OK) {
        pg_err_set(err, "saml slo: building the LogoutRequest: %s",
                   pg_status_str(st));
        return st;
    }
    *request_id = strdup(id);
    if (*request_id == NULL) {
        free(*redirect_url);
        *redirect_url = NULL;
        return PG_ERR_NOMEM;
    }
    return PG_OK;
}

/* 1 when s looks like an absolute URI usable as a StatusCode Value. */
static int
status_uri_ok(const char *s)
{
    const char *c = s ? strchr(s, ':') : NULL;
    size_t i;

    if (c == NULL || c == s || strlen(s) > MAX_STATUS_URI) {
        return 0;
    }
    for (i = 0; s[i] != '\0'; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '<' || ch == '>' || ch == '"' ||
            ch == '&' || ch == '\'') {
            return 0;
        }
    }
    return 1;
}

/* See saml_slo.h. */
pg_status_t
pg_saml_logout_response(const pg_saml_slo_t *slo, const char *in_response_to,
                        const char *status, const char *sub_status,
                        const char *relay_state, int64_t now,
                        char **redirect_url, pg_err_t *err)
{
    char id[42], t_now[32];
    sb_t b = {0};
    pg_status_t st;

    *redirect_url = NULL;
    if (in_response_to == NULL || in_response_to[0] == '\0' ||
        strlen(in_response_to) > MAX_SUBJECT || !xml_chars_ok(in_response_to)) {
        pg_err_set(err, "saml slo: InResponseTo required (at most %u bytes)",
                   MAX_SUBJECT);
        return PG_ERR_INVALID;
    }
    if (status == NULL) {
        status = PG_SAML_STATUS_SUCCESS;
    }
    if (!status_uri_ok(status) || (sub_status && !status_uri_ok(sub_status))) {
        pg_err_set(err, "saml slo: status must be an absolute URI");
        return PG_ERR_INVALID;
    }
    if (too_long(relay_state, MAX_RELAY_IN)) {
        pg_err_set(err, "saml slo: RelayState over %u bytes", MAX_RELAY_IN);
        return PG_ERR_TOO_LARGE;
    }
    if (fmt_time(now, t_now, sizeof(t_now)) != 0) {
        pg_err_set(err, "saml slo: bad clock");
        return PG_ERR_INVALID;
    }
    st = new_id(id);
    if (st != PG_OK) {
        return st;
    }
    sb_add(&b, "<samlp:LogoutResponse xmlns:samlp=\"" NS_SAMLP "\" "
               "xmlns:saml=\"" NS_SAML "\" ID=\"");
    sb_add(&b, id);
    sb_add(&b, "\" Version=\"2.0\" IssueInstant=\"");
    sb_add(&b, t_now);
    sb_add(&b, "\" Destination=\"");
    sb_add_xml(&b, slo->idp_slo_resp_url);
    sb_add(&b, "\" InResponseTo=\"");
    sb_add_xml(&b, in_response_to);
    sb_add(&b, "\"><saml:Issuer>");
    sb_add_xml(&b, slo->entity_id);
    sb_add(&b, "</saml:Issuer><samlp:Status><samlp:StatusCode Value=\"");
    sb_add(&b, status);
    if (sub_status != NULL) {
        sb_add(&b, "\"><samlp:StatusCode Value=\"");
        sb_add(&b, sub_status);
        sb_add(&b, "\"/></samlp:StatusCode>");
    } else {
        sb_add(&b, "\"/>");
    }
    sb_add(&b, "</samlp:Status></samlp:LogoutResponse>");
    if (b.oom) {
        free(b.buf);
        return PG_ERR_NOMEM;
    }
    st = build_redirect(slo, slo->idp_slo_resp_url, "SAMLResponse", b.buf,
                      relay_state, redirect_url);
    free(b.buf);
    if (st != PG_OK) {
        pg_err_set(err, "saml slo: building the LogoutResponse: %s",
                   pg_status_str(st));
    }
    return st;
}

/* ---- verification ------------------------------------------------------ */

typedef struct vctx {
    const pg_saml_slo_t *slo;
    const char **reason;
    pg_err_t *err;
    int64_t now;
    /* decoded message */
    unsigned char *xml;
    size_t xlen;
    char *relay_state;
    xmlDocPtr doc;
    xmlNode *root;
    int64_t issue_instant, valid_until;
} vctx_t;

/* Record a refusal (stable code + detail, never message content). */
static pg_status_t
refuse(vctx_t *c, pg_status_t st, const char *reason, const char *detail)
{
    *c->reason = reason;
    pg_err_set(c->err, "saml slo: %s: %s", reason, detail);
    return st;
}

/* Map a decoding status to a refusal. */
static pg_status_t
refuse_decode(vctx_t *c, pg_status_t st, const char *what)
{
    if (st == PG_ERR_NOMEM) {
        return st;
    }
    if (st == PG_ERR_TOO_LARGE) {
        return refuse(c, st, "too_large", what);
    }
    return refuse(c, PG_ERR_INVALID, "malformed", what);
}

/*
 * Verify the Redirect query signature (Bindings 3.4.4.1) over the octets
 * "{msg}=raw[&RelayState=raw]&SigAlg=raw" exactly as received, with the
 * IdP metadata keys only. PG_OK when one key verifies.
 */
static pg_status_t
verify_query_sig(vctx_t *c, const char *msg_name, const qparams_t *q)
{
    char *alg = NULL, *sigtxt = NULL;
    unsigned char *sig = NULL;
    size_t siglen = 0, i;
    const EVP_MD *md;
    sb_t o = {0};
    pg_status_t st;
    int ok = 0;

    if (q->sigalg.count == 0 && q->sig.count == 0) {
        return refuse(c, PG_ERR_DENIED, "unsigned", "no SigAlg/Signature");
    }
    if (q->sigalg.count != 1 || q->sig.count != 1) {
        return refuse(c, PG_ERR_DENIED, "unsigned",
                      "need exactly one SigAlg and one Signature");
    }
    st = pct_decode(q->sigalg.raw, q->sigalg.len, 256, &alg);
    if (st != PG_OK) {
        return refuse_decode(c, st, "SigAlg");
    }
    if (strcmp(alg, SIGALG_RSA_SHA256) == 0) {
        md = EVP_sha256();
    } else if (strcmp(alg, SIGALG_RSA_SHA512) == 0) {
        md = EVP_sha512();
    } else {
        free(alg);
        return refuse(c, PG_ERR_CRYPTO, "bad_sig_alg",
                      "SigAlg must be rsa-sha256 or rsa-sha512");
    }
    free(alg);
    st = pct_decode(q->sig.raw, q->sig.len, MAX_SIG_BYTES * 2, &sigtxt);
    if (st != PG_OK) {
        return refuse_decode(c, st, "Signature");
    }
    st = pg_sx_b64_decode(sigtxt, strlen(sigtxt), MAX_SIG_BYTES, &sig, &siglen);
    free(sigtxt);
    if (st != PG_OK) {
        return refuse_decode(c, st, "Signature base64");
    }
    sb_add(&o, msg_name);
    sb_add(&o, "=");
    sb_addn(&o, q->msg.raw, q->msg.len);
    if (q->relay.count == 1) {
        sb_add(&o, "&RelayState=");
        sb_addn(&o, q->relay.raw, q->relay.len);
    }
    sb_add(&o, "&SigAlg=");
    sb_addn(&o, q->sigalg.raw, q->sigalg.len);
    if (o.oom) {
        free(sig);
        free(o.buf);
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < c->slo->n_keys && !ok; i++) {
        EVP_MD_CTX *m = EVP_MD_CTX_new();
        if (m == NULL) {
            break;
        }
        if (EVP_DigestVerifyInit(m, NULL, md, NULL, c->slo->idp_pk[i]) == 1 &&
            EVP_DigestVerify(m, sig, siglen, (const unsigned char *)o.buf,
                             o.len) == 1) {
            ok = 1;
        }
        EVP_MD_CTX_free(m);
    }
    free(sig);
    free(o.buf);
    if (!ok) {
        return refuse(c, PG_ERR_CRYPTO, "bad_signature",
                      "query signature does not verify with the IdP key");
    }
    return PG_OK;
}

/*
 * Decode the message of either binding into c->xml / c->relay_state;
 * for Redirect the query signature is verified here (before inflating
 * and parsing: an unauthenticated message is never parsed).
 */
static pg_status_t
decode_message(vctx_t *c, pg_saml_binding_t binding, const char *msg_name,
               const char *in, size_t len, int *query_signed)
{
    qparams_t q;
    char *val = NULL;
    unsigned char *raw = NULL;
    size_t rlen = 0;
    pg_status_t st;

    *query_signed = 0;
    if (binding == PG_SAML_BINDING_REDIRECT) {
        if (len > PG_SAML_SLO_MAX_QUERY) {
            return refuse(c, PG_ERR_TOO_LARGE, "too_large", "query over cap");
        }
    } else if (binding == PG_SAML_BINDING_POST) {
        if (len > PG_SAML_MAX_POST_BODY) {
            return refuse(c, PG_ERR_TOO_LARGE, "too_large", "body over cap");
        }
    } else {
        return refuse(c, PG_ERR_INVALID, "malformed", "unknown binding");
    }
    if (memchr(in, '\0', len) != NULL) {
        return refuse(c, PG_ERR_INVALID, "malformed", "NUL in input");
    }
    split_params(in, len, msg_name, &q);
    if (q.msg.count != 1 || q.other_msg.count != 0 || q.relay.count > 1 ||
        q.sigalg.count > 1 || q.sig.count > 1) {
        return refuse(c, PG_ERR_INVALID, "malformed",
                      "need exactly one message parameter, no duplicates");
    }
    if (q.relay.count == 1) {
        st = pct_decode(q.relay.raw, q.relay.len, MAX_RELAY_IN,
                        &c->relay_state);
        if (st != PG_OK) {
            return refuse_decode(c, st, "RelayState");
        }
    }
    if (binding == PG_SAML_BINDING_REDIRECT) {
        st = verify_query_sig(c, msg_name, &q);
        if (st != PG_OK) {
            return st;
        }
        *query_signed = 1;
        st = pct_decode(q.msg.raw, q.msg.len, PG_SAML_SLO_MAX_QUERY, &val);
        if (st != PG_OK) {
            return refuse_decode(c, st, "message parameter");
        }
        st = pg_sx_b64_decode(val, strlen(val), PG_SAML_MAX_INFLATED, &raw, &rlen);
        free(val);
        if (st != PG_OK) {
            return refuse_decode(c, st, "message base64");
        }
        {
            char *inf = NULL;
            size_t ilen = 0;
            st = pg_saml_inflate(raw, rlen, &inf, &ilen);
            free(raw);
            if (st != PG_OK) {
                return refuse_decode(c, st, "inflate");
            }
            c->xml = (unsigned char *)inf;
            c->xlen = ilen;
        }
    } else {
        st = pct_decode(q.msg.raw, q.msg.len, PG_SAML_MAX_POST_BODY, &val);
        if (st != PG_OK) {
            return refuse_decode(c, st, "message parameter");
        }
        st = pg_sx_b64_decode(val, strlen(val), PG_SAML_MAX_XML, &c->xml, &c->xlen);
        free(val);
        if (st != PG_OK) {
            return refuse_decode(c, st, "message base64");
        }
    }
    return PG_OK;
}

typedef struct walk {
    size_t roots, sigs, bad_sig, dup_id;
    xmlHashTablePtr ids;
} walk_t;

/* Count elements named like the message root (any namespace), check
 * Signature placement (only one ds:Signature, a child of the root) and ID
 * uniqueness over the whole tree. */
static void
walk_tree(xmlNode *n, xmlNode *root, const char *root_name, walk_t *w)
{
    for (; n != NULL; n = n->next) {
        xmlAttr *a;
        if (n->type != XML_ELEMENT_NODE) {
            continue;
        }
        if (strcmp((const char *)n->name, root_name) == 0) {
            w->roots++;
        }
        if (strcmp((const char *)n->name, "Signature") == 0) {
            w->sigs++;
            if (!pg_sx_is_el(n, NS_DS, "Signature") || n->parent != root) {
                w->bad_sig++;
            }
        }
        for (a = n->properties; a != NULL; a = a->next) {
            if (a->children != NULL && a->children->content != NULL &&
                xmlStrcasecmp(a->name, BAD_CAST "ID") == 0 &&
                xmlHashAddEntry(w->ids, a->children->content, n) != 0) {
                w->dup_id++;
            }
        }
        walk_tree(n->children, root, root_name, w);
    }
}


/* Allow-list the transforms of one xmlsec DSig context. 0 on success. */
static int
dsig_restrict(xmlSecDSigCtxPtr d)
{
    int rc = 0;

    d->enabledReferenceUris = xmlSecTransformUriTypeSameDocument;
    rc |= xmlSecDSigCtxEnableReferenceTransform(d, xmlSecTransformEnvelopedId);
    rc |= xmlSecDSigCtxEnableReferenceTransform(d, xmlSecTransformExclC14NId);
    rc |= xmlSecDSigCtxEnableReferenceTransform(d, xmlSecTransformExclC14NWithCommentsId);
    rc |= xmlSecDSigCtxEnableReferenceTransform(d, xmlSecTransformInclC14NId);
    rc |= xmlSecDSigCtxEnableReferenceTransform(d, xmlSecTransformInclC14NWithCommentsId);
    rc |= xmlSecDSigCtxEnableReferenceTransform(d, xmlSecTransformSha256Id);
    rc |= xmlSecDSigCtxEnableReferenceTransform(d, xmlSecTransformSha512Id);
    rc |= xmlSecDSigCtxEnableSignatureTransform(d, xmlSecTransformExclC14NId);
    rc |= xmlSecDSigCtxEnableSignatureTransform(d, xmlSecTransformExclC14NWithCommentsId);
    rc |= xmlSecDSigCtxEnableSignatureTransform(d, xmlSecTransformInclC14NId);
    rc |= xmlSecDSigCtxEnableSignatureTransform(d, xmlSecTransformInclC14NWithCommentsId);
    rc |= xmlSecDSigCtxEnableSignatureTransform(d, xmlSecTransformRsaSha256Id);
    rc |= xmlSecDSigCtxEnableSignatureTransform(d, xmlSecTransformRsaSha512Id);
    return rc;
}

/*
 * Verify the root's enveloped XML signature (POST binding) with each IdP
 * metadata key in turn: signKey preset and no keys manager, so KeyInfo is
 * never used; only the root's ID is registered as an ID, so the one
 * Reference can resolve to nothing but the root.
 */
static pg_status_t
verify_xml_sig(vctx_t *c, xmlNode *sig)
{
    xmlAttrPtr ida = xmlHasProp(c->root, BAD_CAST "ID");
    size_t i;
    int ok = 0;

    if (!pg_sx_reference_ok(c->root, sig)) {
        return refuse(c, PG_ERR_CRYPTO, "bad_reference",
                      "Reference must be the root's own ID");
    }
    if (ida == NULL || ida->children == NULL ||
        xmlAddID(NULL, c->doc, ida->children->content, ida) == NULL) {
        return refuse(c, PG_ERR_CRYPTO, "bad_reference", "root ID");
    }
    for (i = 0; i < c->slo->n_keys && !ok; i++) {
        xmlSecDSigCtxPtr d = xmlSecDSigCtxCreate(NULL);
        if (d == NULL) {
            return PG_ERR_NOMEM;
        }
        d->signKey = xmlSecKeyDuplicate(c->slo->idp_xk[i]);
        if (d->signKey != NULL && dsig_restrict(d) == 0 &&
            xmlSecDSigCtxVerify(d, sig) == 0 &&
            d->status == xmlSecDSigStatusSucceeded &&
            xmlSecPtrListGetSize(&d->signedInfoReferences) == 1) {
            ok = 1;
        }
        xmlSecDSigCtxDestroy(d);
    }
    if (!ok) {
        return refuse(c, PG_ERR_CRYPTO, "bad_signature",
                      "XML signature does not verify with the IdP key");
    }
    return PG_OK;
}

/*
 * Everything common to LogoutRequest and LogoutResponse: decode, prescan,
 * parse, structure, signature (required), Version, Issuer, Destination,
 * IssueInstant. Leaves c->doc/c->root set on PG_OK.
 */
static pg_status_t
verify_common(vctx_t *c, pg_saml_binding_t binding, const char *msg_name,
              const char *root_name, const char *wrong_root_reason,
              const char *in, size_t len)
{
    walk_t w;
    xmlNode *sig;
    const char *s;
    int query_signed = 0;
    pg_status_t st;
    int64_t t, skew = (int64_t)c->slo->skew;

    if (in == NULL) {
        return refuse(c, PG_ERR_INVALID, "malformed", "no input");
    }
    st = decode_message(c, binding, msg_name, in, len, &query_signed);
    if (st != PG_OK) {
        return st;
    }
    if (c->xlen > PG_SAML_MAX_XML) {
        return refuse(c, PG_ERR_TOO_LARGE, "too_large", "message XML over cap");
    }
    if (!pg_sx_prescan_ok(c->xml, c->xlen)) {
        return refuse(c, PG_ERR_DENIED, "doctype", "DOCTYPE/declaration or NUL");
    }
    c->doc = xml_parse(c->xml, c->xlen);
    if (c->doc == NULL) {
        return refuse(c, PG_ERR_INVALID, "malformed", "not well-formed XML");
    }
    c->root = xmlDocGetRootElement(c->doc);
    memset(&w, 0, sizeof(w));
    w.ids = xmlHashCreate(16);
    if (w.ids == NULL) {
        return PG_ERR_NOMEM;
    }
    walk_tree(c->root, c->root, root_name, &w);
    xmlHashFree(w.ids, NULL);
    if (!pg_sx_is_el(c->root, NS_SAMLP, root_name) || w.roots != 1) {
        return refuse(c, PG_ERR_DENIED, wrong_root_reason,
                      "root must be the only message element");
    }
    if ((s = pg_sx_attr(c->root, "Version")) == NULL || strcmp(s, "2.0") != 0) {
        return refuse(c, PG_ERR_DENIED, "bad_version", "Version");
    }
    if ((s = pg_sx_attr(c->root, "ID")) == NULL || s[0] == '\0') {
        return refuse(c, PG_ERR_INVALID, "malformed", "no ID");
    }
    if (w.dup_id) {
        return refuse(c, PG_ERR_DENIED, "duplicate_id", "an ID appears twice");
    }
    /* Redirect: any XML signature must have been removed (Bindings
     * 3.4.4.1); POST: at most one, directly under the root. */
    if (w.bad_sig || (query_signed && w.sigs != 0) || w.sigs > 1) {
        return refuse(c, PG_ERR_DENIED, "bad_signature_placement",
                      "Signature misplaced, repeated or inside a Redirect message");
    }
    if (!query_signed) {
        sig = pg_sx_first_child(c->root, NS_DS, "Signature");
        if (sig == NULL) {
            return refuse(c, PG_ERR_DENIED, "unsigned", "no XML signature");
        }
        st = verify_xml_sig(c, sig);
        if (st != PG_OK) {
            return st;
        }
    }
    /* From here on the tree is authenticated. */
    {
        xmlNode *is = pg_sx_first_child(c->root, NS_SAML, "Issuer");
        const char *fmt = pg_sx_attr(is, "Format");
        if (is == NULL || pg_sx_count_children(c->root, NS_SAML, "Issuer") != 1 ||
            (fmt != NULL && strcmp(fmt, NAMEID_ENTITY) != 0) ||
            !text_equals(is, c->slo->idp_entity_id)) {
            return refuse(c, PG_ERR_DENIED, "bad_issuer", "Issuer");
        }
    }
    if ((s = pg_sx_attr(c->root, "Destination")) == NULL ||
        strcmp(s, c->slo->slo_url) != 0) {
        return refuse(c, PG_ERR_DENIED, "bad_destination", "Destination");
    }
    if (pg_sx_parse_time(pg_sx_attr(c->root, "IssueInstant"), &t) != 0) {
        return refuse(c, PG_ERR_DENIED, "bad_time", "IssueInstant");
    }
    if (t > c->now + skew) {
        return refuse(c, PG_ERR_DENIED, "not_yet_valid", "IssueInstant in the future");
    }
    if (t + (int64_t)PG_SAML_SLO_MAX_AGE + skew <= c->now) {
        return refuse(c, PG_ERR_DENIED, "expired", "IssueInstant too old");
    }
    c->issue_instant = t;
    c->valid_until = t + (int64_t)PG_SAML_SLO_MAX_AGE + skew;
    return PG_OK;
}

/* Release what verify_common allocated. */
static void
vctx_done(vctx_t *c)
{
    if (c->doc != NULL) {
        xmlFreeDoc(c->doc);
    }
    free(c->xml);
    free(c->relay_state);
    c->doc = NULL;
    c->xml = NULL;
    c->relay_state = NULL;
}

/* Free every member and zero *r (NULL is fine). */
void
pg_saml_logout_result_clear(pg_saml_logout_result_t *r)
{
    if (r == NULL) {
        return;
    }
    free(r->id);
    free(r->in_response_to);
    free(r->status);
    free(r->sub_status);
    free(r->relay_state);
    memset(r, 0, sizeof(*r));
}

/* strdup of an optional value; 0 on success (also for NULL), -1 on OOM. */
static int
dup_opt(const char *s, char **out)
{
    *out = NULL;
    if (s == NULL) {
        return 0;
    }
    *out = strdup(s);
    return *out ? 0 : -1;
}

/* See saml_slo.h. */
pg_status_t
pg_saml_logout_response_verify(const pg_saml_slo_t *slo,
                               pg_saml_binding_t binding, const char *input,
                               size_t len, int64_t now,
                               pg_saml_logout_result_t *out,
                               const char **reason, pg_err_t *err)
{
    vctx_t c;
    xmlNode *sc, *sub;
    const char *irt, *code, *subcode = NULL;
    pg_status_t st;

    memset(out, 0, sizeof(*out));
    memset(&c, 0, sizeof(c));
    *reason = NULL;
    c.slo = slo;
    c.reason = reason;
    c.err = err;
    c.now = now;
    if (slo == NULL) {
        *reason = "malformed";
        return PG_ERR_INVALID;
    }
    st = verify_common(&c, binding, "SAMLResponse", "LogoutResponse",
                       "not_logout_response", input, len);
    if (st != PG_OK) {
        goto out;
    }
    irt = pg_sx_attr(c.root, "InResponseTo");
    if (irt == NULL || irt[0] == '\0') {
        st = refuse(&c, PG_ERR_DENIED, "no_in_response_to", "InResponseTo");
        goto out;
    }
    sc = pg_sx_first_child(pg_sx_first_child(c.root, NS_SAMLP, "Status"), NS_SAMLP,
                     "StatusCode");
    code = pg_sx_attr(sc, "Value");
    if (code == NULL) {
        st = refuse(&c, PG_ERR_DENIED, "status_not_success", "no StatusCode");
        goto out;
    }
    sub = pg_sx_first_child(sc, NS_SAMLP, "StatusCode");
    if (sub != NULL) {
        subcode = pg_sx_attr(sub, "Value");
    }
    if (dup_opt(pg_sx_attr(c.root, "ID"), &out->id) || dup_opt(irt, &out->in_response_to) ||
        dup_opt(code, &out->status) || dup_opt(subcode, &out->sub_status) ||
        dup_opt(c.relay_state, &out->relay_state)) {
        st = PG_ERR_NOMEM;
        goto out;
    }
    if (strcmp(code, PG_SAML_STATUS_SUCCESS) != 0) {
        /* Authentic answer, but not a success: *out stays filled. */
        st = refuse(&c, PG_ERR_DENIED, "status_not_success", "StatusCode");
        vctx_done(&c);
        return st;
    }
    st = PG_OK;
out:
    vctx_done(&c);
    if (st != PG_OK) {
        pg_saml_logout_result_clear(out);
        if (*reason == NULL) {
            *reason = st == PG_ERR_NOMEM ? "internal" : "malformed";
        }
    }
    return st;
}

/* Free every member and zero *r (NULL is fine). */
void
pg_saml_logout_request_in_clear(pg_saml_logout_request_in_t *r)
{
    size_t i;

    if (r == NULL) {
        return;
    }
    free(r->id);
    free(r->name_id);
    free(r->name_id_format);
    free(r->sp_name_qualifier);
    free(r->name_qualifier);
    for (i = 0; i < r->n_session_index && i < PG_SAML_SLO_MAX_SESSIONS; i++) {
        free(r->session_index[i]);
    }
    free(r->relay_state);
    memset(r, 0, sizeof(*r));
}

/* Symmetric key class of an xenc:EncryptedData (AES only). */
static xmlSecKeyDataId
sym_key_id(xmlNode *ed)
{
    const char *alg = pg_sx_attr(pg_sx_first_child(ed, NS_XENC, "EncryptionMethod"),
                           "Algorithm");

    if (alg != NULL && (strstr(alg, "#aes128-") || strstr(alg, "#aes192-") ||
                        strstr(alg, "#aes256-"))) {
        return xmlSecKeyDataAesId;
    }
    return xmlSecKeyDataIdUnknown;
}

/*
 * Decrypt a saml:EncryptedID with the SP private key only (set directly
 * on the contexts: KeyInfo, RetrievalMethod and key names are never
 * followed, no URIs): one xenc:EncryptedData and one xenc:EncryptedKey
 * (inside its KeyInfo or beside it). The plaintext, malloc'd and
 * NUL-terminated, is capped at PG_SAML_MAX_INFLATED.
 */
static pg_status_t
decrypt_id(const pg_saml_slo_t *slo, xmlNode *eid, unsigned char **pt,
           size_t *ptlen)
{
    xmlNode *ed, *ki, *ek;
    xmlSecKeyPtr sym = NULL;
    xmlSecEncCtxPtr c1 = NULL, c2 = NULL;
    xmlSecBufferPtr kb, res;
    xmlSecKeyDataId kid;
    pg_status_t st = PG_ERR_CRYPTO;

    *pt = NULL;
    if (pg_sx_count_children(eid, NS_XENC, "EncryptedData") != 1) {
        return PG_ERR_INVALID;
    }
    ed = pg_sx_first_child(eid, NS_XENC, "EncryptedData");
    ki = pg_sx_first_child(ed, NS_DS, "KeyInfo");
    if (pg_sx_count_children(ki, NS_XENC, "EncryptedKey") +
        pg_sx_count_children(eid, NS_XENC, "EncryptedKey") != 1) {
        return PG_ERR_INVALID;
    }
    ek = pg_sx_first_child(ki, NS_XENC, "EncryptedKey");
    if (ek == NULL) {
        ek = pg_sx_first_child(eid, NS_XENC, "EncryptedKey");
    }
    kid = sym_key_id(ed);
    if (kid == xmlSecKeyDataIdUnknown) {
        return PG_ERR_INVALID;
    }
    c1 = xmlSecEncCtxCreate(NULL);
    c2 = xmlSecEncCtxCreate(NULL);
    if (c1 == NULL || c2 == NULL) {
        st = PG_ERR_NOMEM;
        goto out;
    }
    c1->mode = xmlEncCtxModeEncryptedKey;
    c1->encKey = xmlSecKeyDuplicate(slo->sp_xkey);
    if (c1->encKey == NULL) {
        st = PG_ERR_NOMEM;
        goto out;
    }
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
    if (xmlSecBufferGetSize(res) > PG_SAML_MAX_INFLATED) {
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
    if (sym != NULL) {
        xmlSecKeyDestroy(sym);
    }
    if (c1 != NULL) {
        xmlSecEncCtxDestroy(c1);
    }
    if (c2 != NULL) {
        xmlSecEncCtxDestroy(c2);
    }
    return st;
}

/* Copy NameID value and attributes into out (nid from a verified tree or
 * from a decrypted EncryptedID). */
static pg_status_t
take_nameid(vctx_t *c, xmlNode *nid, pg_saml_logout_request_in_t *out)
{
    int bad;

    out->name_id = pure_text(nid, &bad);
    if (bad) {
        return refuse(c, PG_ERR_DENIED, "nameid_not_text",
                      "NameID holds a comment or markup");
    }
    if (out->name_id == NULL) {
        return PG_ERR_NOMEM;
    }
    if (out->name_id[0] == '\0') {
        return refuse(c, PG_ERR_DENIED, "no_nameid", "empty NameID");
    }
    if (dup_opt(pg_sx_attr(nid, "Format"), &out->name_id_format) ||
        dup_opt(pg_sx_attr(nid, "SPNameQualifier"), &out->sp_name_qualifier) ||
        dup_opt(pg_sx_attr(nid, "NameQualifier"), &out->name_qualifier)) {
        return PG_ERR_NOMEM;
    }
    return PG_OK;
}

/*
 * The EncryptedID of a verified LogoutRequest: decrypted with our key, the
 * plaintext goes through the DOCTYPE refusal and the safe parser and must
 * be exactly one saml:NameID. Every failure is "decrypt_failed" (no
 * padding/parse oracle).
 */
static pg_status_t
encrypted_nameid(vctx_t *c, xmlNode *eid, pg_saml_logout_request_in_t *out)
{
    unsigned char *pt = NULL;
    size_t ptlen = 0;
    xmlDocPtr d;
    xmlNode *n;
    pg_status_t st = decrypt_id(c->slo, eid, &pt, &ptlen);

    if (st == PG_ERR_NOMEM) {
        return st;
    }
    if (st != PG_OK) {
        return refuse(c, PG_ERR_CRYPTO, "decrypt_failed", "EncryptedID");
    }
    d = pg_sx_prescan_ok(pt, ptlen) ? xml_parse(pt, ptlen) : NULL;
    free(pt);
    n = d ? xmlDocGetRootElement(d) : NULL;
    if (!pg_sx_is_el(n, NS_SAML, "NameID") || n->children == NULL ||
        n->children->next != NULL || n->children->type != XML_TEXT_NODE) {
        if (d != NULL) {
            xmlFreeDoc(d);
        }
        return refuse(c, PG_ERR_CRYPTO, "decrypt_failed",
                      "decrypted content is not one NameID");
    }
    st = take_nameid(c, n, out);
    xmlFreeDoc(d);
    return st;
}

/* NameID and SessionIndex of a verified LogoutRequest into out. */
static pg_status_t
request_subject(vctx_t *c, pg_saml_logout_request_in_t *out)
{
    xmlNode *nid, *k;
    int bad;

    pg_status_t st;
    size_t nn = pg_sx_count_children(c->root, NS_SAML, "NameID"),
           ne = pg_sx_count_children(c->root, NS_SAML, "EncryptedID");

    if (pg_sx_first_child(c->root, NS_SAML, "BaseID") != NULL) {
        return refuse(c, PG_ERR_DENIED, "base_id_unsupported",
                      "BaseID is not accepted");
    }
    if (nn + ne != 1) {
        return refuse(c, PG_ERR_DENIED, "no_nameid",
                      "need exactly one NameID or EncryptedID");
    }
    if (ne == 1) {
        st = encrypted_nameid(c, pg_sx_first_child(c->root, NS_SAML, "EncryptedID"),
                              out);
    } else {
        nid = pg_sx_first_child(c->root, NS_SAML, "NameID");
        st = take_nameid(c, nid, out);
    }
    if (st != PG_OK) {
        return st;
    }
    for (k = c->root->children; k != NULL; k = k->next) {
        char *txt;
        if (!pg_sx_is_el(k, NS_SAMLP, "SessionIndex")) {
            continue;
        }
        if (out->n_session_index >= PG_SAML_SLO_MAX_SESSIONS) {
            return refuse(c, PG_ERR_DENIED, "too_many_sessions",
                          "too many SessionIndex elements");
        }
        txt = pure_text(k, &bad);
        if (bad) {
            return refuse(c, PG_ERR_DENIED, "malformed",
                          "SessionIndex holds markup");
        }
        if (txt == NULL) {
            return PG_ERR_NOMEM;
        }
        out->session_index[out->n_session_index++] = txt;
    }
    return PG_OK;
}

/* See saml_slo.h. */
pg_status_t
pg_saml_logout_request_verify(const pg_saml_slo_t *slo,
                              pg_saml_binding_t binding, const char *input,
                              size_t len, int64_t now,
                              pg_saml_logout_request_in_t *out,
                              const char **reason, pg_err_t *err)
{
    vctx_t c;
    const char *s;
    int64_t t;
    pg_status_t st;

    memset(out, 0, sizeof(*out));
    memset(&c, 0, sizeof(c));
    *reason = NULL;
    c.slo = slo;
    c.reason = reason;
    c.err = err;
    c.now = now;
    if (slo == NULL) {
        *reason = "malformed";
        return PG_ERR_INVALID;
    }
    st = verify_common(&c, binding, "SAMLRequest", "LogoutRequest",
                       "not_logout_request", input, len);
    if (st != PG_OK) {
        goto out;
    }
    out->replay_until = c.valid_until;
    if ((s = pg_sx_attr(c.root, "NotOnOrAfter")) != NULL) {
        if (pg_sx_parse_time(s, &t) != 0) {
            st = refuse(&c, PG_ERR_DENIED, "bad_time", "NotOnOrAfter");
            goto out;
        }
        if (now - (int64_t)slo->skew >= t) {
            st = refuse(&c, PG_ERR_DENIED, "expired", "NotOnOrAfter passed");
            goto out;
        }
        if (t + (int64_t)slo->skew < out->replay_until) {
            out->replay_until = t + (int64_t)slo->skew;
        }
    }
    st = request_subject(&c, out);
    if (st != PG_OK) {
        goto out;
    }
    out->issue_instant = c.issue_instant;
    if (dup_opt(pg_sx_attr(c.root, "ID"), &out->id) ||
        dup_opt(c.relay_state, &out->relay_state)) {
        st = PG_ERR_NOMEM;
        goto out;
    }
    st = PG_OK;
out:
    vctx_done(&c);
    if (st != PG_OK) {
        pg_saml_logout_request_in_clear(out);
        if (*reason == NULL) {
            *reason = st == PG_ERR_NOMEM ? "internal" : "malformed";
        }
    }
    return st;
}
