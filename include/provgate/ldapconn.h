/*
 * provgate connectors: the LDAP connector (OpenLDAP libldap, async API).
 *
 * Accounts are entries under base_dn found by (&(objectClass=<first
 * object class>)(<key_attr>=<key>)). ensure() adds a missing entry or
 * modifies only the attributes whose values differ, then adds missing
 * group memberships (groups) and removes revoked ones (revoke) by
 * modifying the group entries (member / uniqueMember). disable() sets a
 * marker attribute or moves the entry to disabled_ou (modrdn with
 * newSuperior, rewriting the group memberships to the new DN). remove()
 * drops the memberships and deletes the entry. list() walks base_dn (and
 * disabled_ou) with the paged-results control (RFC 2696), optionally only
 * entries with modifyTimestamp >= since_ms.
 *
 * Never blocking: one connection per connector, opened asynchronously
 * (ldap_initialize + LDAP_OPT_CONNECT_ASYNC, a simple bind through
 * ldap_sasl_bind), its descriptor watched through pg_host_t; every request
 * is sent with the msgid API and results are collected with ldap_result()
 * and a zero timeout when the descriptor is readable. Operations run
 * concurrently on that connection; a dropped connection fails what was in
 * flight (PG_ERR_IO, retryable; an operation that lost its connection is
 * first restarted once on a fresh connection, which is safe since every
 * operation is idempotent) and the next operation reconnects.
 * Caveats (libldap): host names are resolved synchronously (use an IP
 * address), and the TLS handshake of ldaps:// / StartTLS is run by libldap
 * itself, bounded by the network timeout.
 *
 * Config (the target's "connector" object, every other key refused): see
 * docs/connectors-ldap.md for every key and an example.
 */
#ifndef PROVGATE_LDAPCONN_H
#define PROVGATE_LDAPCONN_H

#include <stddef.h>
#include <jansson.h>
#include "provgate/connector.h"

#define PG_LDAP_VALUE_MAX     65536   /* bytes of one attribute value */
#define PG_LDAP_VALUES_MAX    1000    /* values of one attribute */
#define PG_LDAP_ATTRS_MAX     256     /* attributes of one account */
#define PG_LDAP_GROUPS_MAX    1000    /* groups / revoke entries, and
                                         memberships of one account */
#define PG_LDAP_MEMBERS_MAX   200000  /* memberships read by one list() */
#define PG_LDAP_DN_MAX        2048    /* bytes of a DN we build */
#define PG_LDAP_MESSAGE_MAX   (16u * 1024u * 1024u) /* bytes of one LDAP
                                         message received (libldap cap) */
#define PG_LDAP_REQUEST_MAX   (256u * 1024u) /* bytes of all desired
                                         attribute values of one account */

/*
 * Create an LDAP connector for target name from cfg. On success *out is
 * owned by the caller (pg_connector_free()); cfg is not kept (a password
 * read from bind_password_file is copied and wiped on free). No
 * connection is made here: the first operation connects. On a bad config:
 * PG_ERR_CONFIG and err = "connector.<path>: <reason>". host must provide
 * watches and timers.
 */
PG_MUST_USE pg_status_t pg_ldap_connector_new(const pg_host_t *host,
                                              const char *name,
                                              const json_t *cfg,
                                              pg_connector_t **out,
                                              pg_err_t *err);

/*
 * RFC 4515 escaping of an assertion value for a search filter: '*', '(',
 * ')', '\' and NUL (and every byte < 0x20 or >= 0x7f) become \XX. Writes
 * a NUL-terminated string to out; PG_ERR_TOO_LARGE if outsz is short.
 */
PG_MUST_USE pg_status_t pg_ldap_filter_escape(const char *in, size_t n,
                                              char *out, size_t outsz);

/*
 * RFC 4514 escaping of an attribute value for a DN: ',', '+', '"', '\',
 * '<', '>', ';', '=' get a backslash, as do a leading '#' or space and a
 * trailing space; NUL and control bytes become \XX. NUL-terminated output;
 * PG_ERR_TOO_LARGE if outsz is short.
 */
PG_MUST_USE pg_status_t pg_ldap_dn_escape(const char *in, size_t n,
                                          char *out, size_t outsz);

#endif
