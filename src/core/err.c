/* provgate core: error messages. */
#include <stdarg.h>
#include <stdio.h>
#include "provgate/util.h"

/* Format into e->msg, truncating at PG_ERR_MSG_MAX-1 bytes. NULL e: no-op. */
void
pg_err_set(pg_err_t *e, const char *fmt, ...)
{
    va_list ap;

    if (e == NULL) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
}
