/*
 * provgate core: shared pieces of the connector contract
 * (include/provgate/connector.h): outcome names and the config helpers
 * every connector constructor uses, so config errors read the same.
 */
#include <string.h>

#include "provgate/config.h"
#include "provgate/connector.h"

const char *
pg_conn_outcome_str(pg_conn_outcome_t o)
{
    switch (o) {
    case PG_CONN_UNCHANGED: return "unchanged";
    case PG_CONN_CREATED:   return "created";
    case PG_CONN_UPDATED:   return "updated";
    case PG_CONN_ADOPTED:   return "adopted";
    case PG_CONN_DISABLED:  return "disabled";
    case PG_CONN_REMOVED:   return "removed";
    case PG_CONN_QUEUED:    return "queued";
    }
    return "unknown";
}

/* Contract: see connector.h. *out is borrowed from obj. */
pg_status_t
pg_conn_cfg_str(const json_t *obj, const char *path, const char *key, int req,
                const char **out, pg_err_t *err)
{
    json_t *v = json_object_get(obj, key);

    *out = NULL;
    if (v == NULL) {
        if (req) {
            pg_err_set(err, "%s.%s: required", path, key);
            return PG_ERR_CONFIG;
        }
        return PG_OK;
    }
    if (!json_is_string(v) || json_string_length(v) == 0
        || strlen(json_string_value(v)) != json_string_length(v)) {
        pg_err_set(err, "%s.%s: must be a non-empty string", path, key);
        return PG_ERR_CONFIG;
    }
    *out = json_string_value(v);
    return PG_OK;
}

/* Contract: see connector.h; the shared config helper does the work. */
pg_status_t
pg_conn_cfg_uint(const json_t *obj, const char *path, const char *key,
                 unsigned min, unsigned max, unsigned dflt, unsigned *out,
                 pg_err_t *err)
{
    pg_status_t st = pg_cfg_uint(obj, path, key, dflt, min, max, out, err);

    return st == PG_OK ? PG_OK : PG_ERR_CONFIG;
}

/* Contract: see connector.h; the shared config helper does the work. */
pg_status_t
pg_conn_cfg_known(const json_t *obj, const char *path,
                  const char *const *allowed, pg_err_t *err)
{
    if (!json_is_object(obj)) {
        pg_err_set(err, "%s: must be an object", path);
        return PG_ERR_CONFIG;
    }
    return pg_cfg_keys(obj, path, allowed, err) == PG_OK ? PG_OK
                                                         : PG_ERR_CONFIG;
}
