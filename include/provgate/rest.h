/*
 * provgate core: the generic REST connector (targets without SCIM).
 *
 * Implements the uniform contract of include/provgate/connector.h over
 * per-operation HTTP request templates (lookup, create, update, disable,
 * delete, list) read from the target's "connector" JSON object. Every
 * template is compiled and checked at construction, so a bad one fails at
 * config load with PG_ERR_CONFIG and "targets.<name>.connector.<path>:
 * <reason>" in err. The full reference of the keys is
 * docs/connectors-rest.md.
 *
 * Semantics (see connector.h):
 *  ensure  lookup -> create when missing (CREATED), else compare the
 *          attributes the lookup can read back (lookup.map) and update only
 *          what differs (UPDATED, res->changes) or nothing (UNCHANGED).
 *  disable lookup -> not found: PG_ERR_NOT_FOUND; already inactive (when
 *          lookup.map.active is set): UNCHANGED; else disable (DISABLED).
 *  remove  lookup -> not found: REMOVED without a request; else delete;
 *          a 404 (delete.not_found_status) is REMOVED too.
 *  list    pages (page number, offset or cursor), each mapped back to
 *          pg_listed_account_t by list.map.
 * The connector never retries by itself: a failed operation reports
 * retryable and retry_after_ms (from Retry-After) and the caller decides.
 * All HTTP goes through the borrowed pg_http_t (non-blocking libcurl
 * multi); every response body is capped (max_response).
 */
#ifndef PROVGATE_REST_H
#define PROVGATE_REST_H

#include <jansson.h>
#include "provgate/connector.h"
#include "provgate/host.h"
#include "provgate/http.h"
#include "provgate/util.h"

#define PG_REST_MAX_RESPONSE_DEFAULT (1024u * 1024u)   /* 1 MiB */
#define PG_REST_MAX_RESPONSE_MAX     (32u * 1024u * 1024u)
#define PG_REST_SECRET_MAX           8192u            /* token/password */

/*
 * Create a REST connector from cfg (the target's "connector" object).
 * host: the event loop's host (borrowed, must outlive the connector).
 * http: borrowed, must outlive the connector and every request.
 * name: the target name (copied into c->name; used in error paths).
 * cfg: borrowed; everything needed is copied (token/password files are
 * read now). On success *out is the connector (free with
 * pg_connector_free()); on failure *out is NULL and err says
 * "<json path>: <reason>" (never a secret): PG_ERR_CONFIG for every
 * configuration error, PG_ERR_NOMEM, PG_ERR_INVALID for NULL arguments.
 */
PG_MUST_USE pg_status_t pg_rest_connector_new(const pg_host_t *host,
                                              pg_http_t *http,
                                              const char *name,
                                              const json_t *cfg,
                                              pg_connector_t **out,
                                              pg_err_t *err);

/*
 * The same, with the JSON path of cfg for error messages given by the
 * caller (e.g. "targets.crm.connector" or "connectors[2]"; at most 256
 * bytes, copied). pg_rest_connector_new() uses
 * "targets.<name>.connector".
 */
PG_MUST_USE pg_status_t pg_rest_connector_new_at(const pg_host_t *host,
                                                 pg_http_t *http,
                                                 const char *name,
                                                 const json_t *cfg,
                                                 const char *path,
                                                 pg_connector_t **out,
                                                 pg_err_t *err);

#endif
