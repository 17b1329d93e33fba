/*
 * provgate core: private helpers shared by the files of src/config (not a contract;
 * only the configuration loader includes this).
 */
#ifndef PROVGATE_CONFIG_INTERNAL_H
#define PROVGATE_CONFIG_INTERNAL_H

#include <stddef.h>
#include <jansson.h>
#include "provgate/config.h"

#define PG_CFG_MAX_STR 8192u            /* any configuration string */
#define PG_CFG_MAX_SECRET (64u * 1024u) /* secret / key files */
#define PG_CFG_MAX_LIST 64u             /* any string array */
#define PG_CFG_MAX_URL 2048u

/*
 * Directory that relative paths are resolved against (thread-local). The
 * loader sets it to the absolute directory of the configuration file for
 * the duration of pg_config_load() and clears it (NULL) afterwards; when
 * NULL, relative paths are resolved against the current directory.
 * dir is borrowed, not copied: it must outlive its use.
 */
void pg_cfg_set_base_dir(const char *dir);

/*
 * Resolve p against the base directory: absolute paths are copied,
 * relative ones become "<base>/<p>". *out is malloc'd. PG_ERR_NOMEM,
 * PG_ERR_TOO_LARGE (over PATH_MAX) or PG_OK.
 */
PG_MUST_USE pg_status_t pg_cfg_resolve(const char *p, char **out);

/* Optional/required file path member, resolved with pg_cfg_resolve(). */
PG_MUST_USE pg_status_t pg_cfg_path(const json_t *obj, const char *path,
                                    const char *key, int required, char **out,
                                    pg_err_t *err);

/* Build "<path>.<key>" into buf (truncated to n). */
void pg_cfg_join(char *buf, size_t n, const char *path, const char *key);

/* Flags for pg_cfg_url_check(). */
#define PG_URL_NO_QUERY    0x1u
#define PG_URL_NO_FRAGMENT 0x2u

/*
 * Check that url is an absolute http:// or https:// URL with a non-empty
 * host, optional numeric port 1-65535, no userinfo, no whitespace or
 * control bytes, at most PG_CFG_MAX_URL bytes. On failure the reason
 * (without path) is in err and PG_ERR_CONFIG is returned.
 */
PG_MUST_USE pg_status_t pg_cfg_url_check(const char *url, unsigned flags,
                                         pg_err_t *err);

/* 1 when s is 1..max bytes of [A-Za-z0-9] plus the characters in extra. */
int pg_cfg_word_ok(const char *s, size_t max, const char *extra);

#endif
