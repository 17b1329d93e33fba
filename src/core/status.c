/* provgate core: status names and host logging helpers. */
#include <stdio.h>
#include "provgate/host.h"

const char *
pg_status_str(pg_status_t s)
{
    switch (s) {
    case PG_OK: return "ok";
    case PG_ERR_NOMEM: return "nomem";
    case PG_ERR_INVALID: return "invalid";
    case PG_ERR_TOO_LARGE: return "too_large";
    case PG_ERR_NOT_FOUND: return "not_found";
    case PG_ERR_CONFLICT: return "conflict";
    case PG_ERR_TIMEOUT: return "timeout";
    case PG_ERR_IO: return "io";
    case PG_ERR_REDIS: return "redis";
    case PG_ERR_HTTP: return "http";
    case PG_ERR_CRYPTO: return "crypto";
    case PG_ERR_DENIED: return "denied";
    case PG_ERR_REPLAY: return "replay";
    case PG_ERR_CANCELLED: return "cancelled";
    case PG_ERR_CONFIG: return "config";
    case PG_ERR_BUSY: return "busy";
    case PG_ERR_INTERNAL: return "internal";
    }
    return "unknown";
}

/*
 * Format one log line (capped at 2 KiB, truncated beyond) and hand it to
 * the host. A NULL host or a host without log is a silent no-op.
 */
void
pg_log(const pg_host_t *host, pg_log_level_t level, const char *fmt, ...)
{
    char buf[2048];
    va_list ap;

    if (host == NULL || host->log == NULL) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    host->log(host->ctx, level, buf);
}
