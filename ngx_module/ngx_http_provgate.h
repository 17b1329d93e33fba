/*
 * ngx_http_provgate_module: declarations shared by the glue files.
 */
#ifndef NGX_HTTP_PROVGATE_H
#define NGX_HTTP_PROVGATE_H

#include <ngx_config.h>
#include <ngx_core.h>

#include "provgate/host.h"

/* The pg_host_t of this worker, backed by nginx events and timers. */
const pg_host_t *ngx_http_provgate_host(ngx_cycle_t *cycle);

#endif
