/*
 * provgate core, SAML internals (not a public contract): the small XML and
 * time helpers that sp.c (the SP) and slo.c (Single Logout) share,
 * implemented in common.c. All pure; inputs are already size-capped by the
 * callers.
 */
#ifndef PROVGATE_SAML_INT_H
#define PROVGATE_SAML_INT_H

#include <stddef.h>
#include <stdint.h>
#include <libxml/tree.h>
#include "provgate/status.h"

#define NS_SAMLP "urn:oasis:names:tc:SAML:2.0:protocol"
#define NS_SAML  "urn:oasis:names:tc:SAML:2.0:assertion"
#define NS_DS    "http://www.w3.org/2000/09/xmldsig#"
#define NS_XENC  "http://www.w3.org/2001/04/xmlenc#"
#define NS_MD    "urn:oasis:names:tc:SAML:2.0:metadata"

/* Value of a hex digit, -1 for anything else. */
int pg_sx_hexval(unsigned char c);

/* 1 when p[0..n) may be handed to the XML parser: no NUL bytes and no
 * "<!" other than a comment or CDATA (no DOCTYPE, ENTITY, ...). */
int pg_sx_prescan_ok(const unsigned char *p, size_t n);

/* 1 when n is an element name in namespace ns. */
int pg_sx_is_el(const xmlNode *n, const char *ns, const char *name);

/* The first child element ns:name of n, or NULL. */
xmlNode *pg_sx_first_child(xmlNode *n, const char *ns, const char *name);

/* How many child elements ns:name n has. */
size_t pg_sx_count_children(xmlNode *n, const char *ns, const char *name);

/* n decimal digits of s into *out; 0 on success, -1 otherwise. */
int pg_sx_digits(const char *s, int n, int *out);

/* xs:dateTime in UTC into Unix seconds; 0 on success, -1 otherwise. */
int pg_sx_parse_time(const char *s, int64_t *out);

/* Value of a standard base64 character, -1 for anything else. */
int pg_sx_b64val(unsigned char c);

/* Standard base64 (whitespace skipped, '=' only at the end) into a
 * malloc'd NUL-terminated buffer of at most cap bytes (PG_ERR_TOO_LARGE,
 * checked before allocating; PG_ERR_INVALID on a bad character). The
 * caller frees *out. */
PG_MUST_USE pg_status_t pg_sx_b64_decode(const char *in, size_t n, size_t cap,
                                         unsigned char **out, size_t *outlen);

/* The value of attribute name of n when it is one plain text node, or
 * NULL (borrowed from the tree). */
const char *pg_sx_attr(xmlNode *n, const char *name);

/* 1 when ds:Signature sig of element el has exactly one Reference, to
 * el's own ID, with only the allowed transforms. */
int pg_sx_reference_ok(xmlNode *el, xmlNode *sig);

struct pg_saml_sp;

/* The SP's private key as PEM (NUL-terminated, owned by sp, *len bytes):
 * Single Logout signs with the same key without reading the file again. */
const char *pg_saml_sp_key_pem(const struct pg_saml_sp *sp, size_t *len);

#endif
