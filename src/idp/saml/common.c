/*
 * provgate core: small SAML/XML helpers shared by the SP (sp.c) and Single
 * Logout (slo.c). Private to src/idp/saml (saml_int.h). Pure functions.
 */
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>

#include <libxml/tree.h>

#include "saml_int.h"

/* Value of a hex digit, -1 for anything else. */
int
pg_sx_hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/*
 * Refuse input that a parser could treat as anything but plain UTF-8
 * elements: NUL bytes (UTF-16/32), and every "<!" that does not open a
 * comment or a CDATA section (DOCTYPE, ENTITY, ELEMENT, ATTLIST, in any
 * case). Runs before any XML parser sees the bytes. 1 when acceptable.
 */
int
pg_sx_prescan_ok(const unsigned char *p, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (p[i] == '\0') {
            return 0;
        }
        if (p[i] == '<' && i + 1 < n && p[i + 1] == '!') {
            if (i + 3 < n && p[i + 2] == '-' && p[i + 3] == '-') {
                continue;
            }
            if (n - i >= 9 && memcmp(p + i, "<![CDATA[", 9) == 0) {
                continue;
            }
            return 0;
        }
    }
    return 1;
}

/* 1 when n is an element with namespace URI ns and local name name. */
int
pg_sx_is_el(const xmlNode *n, const char *ns, const char *name)
{
    return n != NULL && n->type == XML_ELEMENT_NODE && n->ns != NULL &&
           n->ns->href != NULL && strcmp((const char *)n->ns->href, ns) == 0 &&
           strcmp((const char *)n->name, name) == 0;
}

/* First child element ns:name of n (borrowed), or NULL. */
xmlNode *
pg_sx_first_child(xmlNode *n, const char *ns, const char *name)
{
    xmlNode *c;
    for (c = n ? n->children : NULL; c != NULL; c = c->next) {
        if (pg_sx_is_el(c, ns, name)) {
            return c;
        }
    }
    return NULL;
}

/* Number of child elements ns:name of n (0 when n is NULL). */
size_t
pg_sx_count_children(xmlNode *n, const char *ns, const char *name)
{
    xmlNode *c;
    size_t k = 0;
    for (c = n ? n->children : NULL; c != NULL; c = c->next) {
        if (pg_sx_is_el(c, ns, name)) {
            k++;
        }
    }
    return k;
}

/* Parse exactly n decimal digits; 0 on success, -1 otherwise. */
int
pg_sx_digits(const char *s, int n, int *out)
{
    int i, v = 0;
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

/* xs:dateTime in UTC: YYYY-MM-DDThh:mm:ss[.fraction](Z|+00:00|-00:00). */
int
pg_sx_parse_time(const char *s, int64_t *out)
{
    struct tm tm;
    int y, mo, d, h, mi, se;
    const char *p;
    time_t t;

    if (s == NULL || strlen(s) < 20 || s[4] != '-' || s[7] != '-' ||
        s[10] != 'T' || s[13] != ':' || s[16] != ':') {
        return -1;
    }
    if (pg_sx_digits(s, 4, &y) || pg_sx_digits(s + 5, 2, &mo) || pg_sx_digits(s + 8, 2, &d) ||
        pg_sx_digits(s + 11, 2, &h) || pg_sx_digits(s + 14, 2, &mi) ||
        pg_sx_digits(s + 17, 2, &se)) {
        return -1;
    }
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 ||
        se > 60 || y < 1970) {
        return -1;
    }
    p = s + 19;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9') {
            return -1;
        }
        while (*p >= '0' && *p <= '9') {
            p++;
        }
    }
    if (!(strcmp(p, "Z") == 0 || strcmp(p, "+00:00") == 0 ||
          strcmp(p, "-00:00") == 0)) {
        return -1;
    }
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = se;
    t = timegm(&tm);
    if (t == (time_t)-1) {
        return -1;
    }
    *out = (int64_t)t;
    return 0;
}

/* Value of a standard base64 character, -1 for anything else. */
int
pg_sx_b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/*
 * Decode standard base64 (CR/LF/space/tab skipped, '=' only at the end)
 * into a malloc'd NUL-terminated buffer of at most cap bytes:
 * PG_ERR_TOO_LARGE beyond (checked before allocating), PG_ERR_INVALID on
 * a bad character. The caller frees *out.
 */
pg_status_t
pg_sx_b64_decode(const char *in, size_t n, size_t cap, unsigned char **out,
           size_t *outlen)
{
    unsigned char *o;
    size_t i, olen = 0;
    uint32_t acc = 0;
    int bits = 0, pad = 0;

    *out = NULL;
    *outlen = 0;
    if (n / 4 * 3 > cap + 3) {
        return PG_ERR_TOO_LARGE;
    }
    o = malloc(n / 4 * 3 + 4);
    if (o == NULL) {
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        int v;
        if (c == ' ' || c == '\r' || c == '\n' || c == '\t') {
            continue;
        }
        if (c == '=') {
            pad++;
            continue;
        }
        v = pg_sx_b64val(c);
        if (v < 0 || pad > 0) {
            free(o);
            return PG_ERR_INVALID;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[olen++] = (unsigned char)(acc >> bits);
        }
    }
    if (pad > 2 || bits >= 6 || olen > cap) {
        free(o);
        return olen > cap ? PG_ERR_TOO_LARGE : PG_ERR_INVALID;
    }
    o[olen] = '\0';
    *out = o;
    *outlen = olen;
    return PG_OK;
}

/* Attribute without namespace: borrowed text or NULL. */
const char *
pg_sx_attr(xmlNode *n, const char *name)
{
    xmlAttr *a;
    for (a = n ? n->properties : NULL; a != NULL; a = a->next) {
        if (a->ns == NULL && strcmp((const char *)a->name, name) == 0 &&
            a->children != NULL && a->children->type == XML_TEXT_NODE &&
            a->children->next == NULL) {
            return (const char *)a->children->content;
        }
    }
    return NULL;
}

/*
 * The Signature child of el must sign exactly el: one Reference whose URI
 * is "#" + el's ID, and only enveloped-signature / C14N transforms (no
 * XPath, no XSLT). 1 when acceptable.
 */
int
pg_sx_reference_ok(xmlNode *el, xmlNode *sig)
{
    xmlNode *si = pg_sx_first_child(sig, NS_DS, "SignedInfo");
    xmlNode *ref, *tr, *t;
    const char *id = pg_sx_attr(el, "ID"), *uri;

    if (si == NULL || id == NULL || pg_sx_count_children(si, NS_DS, "Reference") != 1) {
        return 0;
    }
    ref = pg_sx_first_child(si, NS_DS, "Reference");
    uri = pg_sx_attr(ref, "URI");
    if (uri == NULL || uri[0] != '#' || strcmp(uri + 1, id) != 0) {
        return 0;
    }
    tr = pg_sx_first_child(ref, NS_DS, "Transforms");
    for (t = tr ? tr->children : NULL; t != NULL; t = t->next) {
        const char *alg;
        if (t->type != XML_ELEMENT_NODE) {
            continue;
        }
        alg = pg_sx_attr(t, "Algorithm");
        if (!pg_sx_is_el(t, NS_DS, "Transform") || alg == NULL) {
            return 0;
        }
        if (strcmp(alg, "http://www.w3.org/2000/09/xmldsig#enveloped-signature") &&
            strcmp(alg, "http://www.w3.org/2001/10/xml-exc-c14n#") &&
            strcmp(alg, "http://www.w3.org/2001/10/xml-exc-c14n#WithComments") &&
            strcmp(alg, "http://www.w3.org/TR/2001/REC-xml-c14n-20010315") &&
            strcmp(alg, "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments")) {
            return 0;
        }
    }
    return 1;
}

