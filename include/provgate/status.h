/*
 * provgate core: the one status type.
 *
 * Every fallible core function returns pg_status_t and is marked PG_MUST_USE,
 * so a caller that ignores a failure does not compile warning-free.
 * PG_OK is 0; everything else is a failure with a stable reason.
 */
#ifndef PROVGATE_STATUS_H
#define PROVGATE_STATUS_H

#if defined(__GNUC__) || defined(__clang__)
#define PG_MUST_USE __attribute__((warn_unused_result))
#define PG_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define PG_MUST_USE
#define PG_PRINTF(f, a)
#endif

typedef enum pg_status {
    PG_OK = 0,
    PG_ERR_NOMEM,      /* allocation failed */
    PG_ERR_INVALID,    /* malformed or unacceptable input */
    PG_ERR_TOO_LARGE,  /* input over a hard size cap */
    PG_ERR_NOT_FOUND,  /* looked-up item does not exist */
    PG_ERR_CONFLICT,   /* already exists / lost a race */
    PG_ERR_TIMEOUT,    /* an operation ran out of its time budget */
    PG_ERR_IO,         /* socket, file or transport failure */
    PG_ERR_REDIS,      /* Redis unavailable or replied with an error */
    PG_ERR_HTTP,       /* a peer answered with an unexpected HTTP status */
    PG_ERR_CRYPTO,     /* signature, MAC or AEAD verification failed */
    PG_ERR_DENIED,     /* a check or a policy refused */
    PG_ERR_REPLAY,     /* single-use item seen twice */
    PG_ERR_CANCELLED,  /* the owner cancelled the operation */
    PG_ERR_CONFIG,     /* configuration error */
    PG_ERR_BUSY,       /* resource held by someone else, retry later */
    PG_ERR_INTERNAL    /* a bug: should never happen */
} pg_status_t;

/* Stable lower-case name of a status ("ok", "timeout", ...). Never NULL. */
const char *pg_status_str(pg_status_t s);

#endif
