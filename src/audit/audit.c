/*
 * provgate core: structured audit events (see include/provgate/audit.h).
 *
 * One event = one JSON object, serialized once, then:
 *  - appended to the audit file with a single write(2) on an O_APPEND
 *    descriptor, so lines from several worker processes never interleave;
 *  - XADDed to the Redis stream <prefix><stream> with MAXLEN ~ <cap>,
 *    fire-and-forget: the reply is only looked at to log a warning.
 *
 * Limits: a line is at most PG_AUDIT_MAX_LINE bytes including the newline;
 * bigger events lose their largest extra fields first and get
 * "truncated": true. The header strings (instance, type, outcome, reason)
 * are cut at PG_AUDIT_MAX_HDR bytes each, so the fixed part always fits.
 * At most PG_AUDIT_MAX_PENDING XADDs wait for a reply at once; beyond that
 * events go to the file only (with a warning).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <hiredis/hiredis.h>
#include "provgate/audit.h"
#include "provgate/util.h"

#define PG_AUDIT_MAX_LINE (64u * 1024u)
#define PG_AUDIT_MAX_HDR 256u
#define PG_AUDIT_MAX_PENDING 4096u
#define PG_AUDIT_DEFAULT_STREAM "audit"
#define PG_AUDIT_DEFAULT_MAXLEN 1000000u
#define PG_AUDIT_ID_BYTES 19 /* 19 random bytes -> 26 base64url chars */

typedef struct pg_audit_xadd {
    pg_audit_t *a;
    pg_redis_op_t *op;
    struct pg_audit_xadd *prev, *next;
} pg_audit_xadd_t;

struct pg_audit {
    const pg_host_t *host;     /* borrowed; outlives the audit */
    pg_redis_t *redis;         /* borrowed; may be NULL */
    char *instance;
    char *file;                /* NULL: no file */
    char *stream_key;          /* <prefix><stream>, NULL without redis */
    char maxlen[24];           /* decimal stream cap for XADD */
    int fd;                    /* -1 when no file or not open */
    pg_audit_xadd_t *pending;  /* XADDs waiting for a reply */
    unsigned npending;
};

/* Keys whose values are never written (case-insensitive substrings). */
static const char *const secret_substrings[] = {
    "token", "secret", "password", "assertion", "cookie", "authorization",
    NULL
};

/* Names of the members every event starts with; fields cannot replace them. */
static const char *const header_keys[] = {
    "ts", "id", "instance", "type", "outcome", "reason", "truncated", NULL
};

/* 1 when the lower-cased key contains needle (ASCII, case-insensitive). */
static int
key_contains(const char *key, const char *needle)
{
    size_t klen = strlen(key), nlen = strlen(needle), i;

    if (nlen > klen) {
        return 0;
    }
    for (i = 0; i + nlen <= klen; i++) {
        if (strncasecmp(key + i, needle, nlen) == 0) {
            return 1;
        }
    }
    return 0;
}

/* 1 when a member named key must be dropped from audit output. */
static int
key_is_secret(const char *key)
{
    size_t i;

    if (strcasecmp(key, "code") == 0) {
        return 1;
    }
    for (i = 0; secret_substrings[i] != NULL; i++) {
        if (key_contains(key, secret_substrings[i])) {
            return 1;
        }
    }
    return 0;
}

/*
 * Remove every object member whose key looks like a secret, recursing into
 * objects and arrays at any depth. Modifies v in place (values shared with
 * other JSON trees are modified for them too). NULL is a no-op. Recursion
 * depth is bounded by jansson's own parse depth limit for parsed input;
 * built trees are trusted to be reasonable.
 */
void
pg_audit_scrub(json_t *v)
{
    const char *key;
    json_t *val, *tmp;
    size_t i;

    if (v == NULL) {
        return;
    }
    if (json_is_object(v)) {
        json_object_foreach_safe(v, tmp, key, val) {
            if (key_is_secret(key)) {
                json_object_del(v, key);
            } else {
                pg_audit_scrub(val);
            }
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, val) {
            pg_audit_scrub(val);
        }
    }
}

/* Open (or reopen) the audit file. Returns the new fd or -1 with errno. */
static int
audit_open_file(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
}

/*
 * Create an audit emitter. host (for warnings) and redis (may be NULL) are
 * borrowed and must outlive the emitter; cfg and instance are copied.
 * instance NULL means the host name. The file, when configured, is opened
 * here; failure to open it is PG_ERR_IO with the path and errno in err.
 * *out is freed with pg_audit_free().
 */
pg_status_t
pg_audit_new(const pg_host_t *host, const pg_audit_cfg_t *cfg,
             const char *instance, pg_redis_t *redis, pg_audit_t **out,
             pg_err_t *err)
{
    pg_audit_t *a;
    char hostname[256];
    const char *stream, *prefix;
    size_t plen, slen;
    unsigned cap;

    if (out == NULL || cfg == NULL) {
        pg_err_set(err, "audit: missing configuration");
        return PG_ERR_INVALID;
    }
    *out = NULL;
    a = calloc(1, sizeof(*a));
    if (a == NULL) {
        return PG_ERR_NOMEM;
    }
    a->fd = -1;
    a->host = host;
    a->redis = redis;

    if (instance == NULL) {
        if (gethostname(hostname, sizeof(hostname)) != 0) {
            memcpy(hostname, "unknown", sizeof("unknown"));
        }
        hostname[sizeof(hostname) - 1] = '\0';
        instance = hostname;
    }
    a->instance = strdup(instance);
    if (a->instance == NULL) {
        goto nomem;
    }

    if (cfg->file != NULL && cfg->file[0] != '\0') {
        a->file = strdup(cfg->file);
        if (a->file == NULL) {
            goto nomem;
        }
        a->fd = audit_open_file(a->file);
        if (a->fd < 0) {
            pg_err_set(err, "audit: cannot open %s: %s", a->file,
                       strerror(errno));
            pg_audit_free(a);
            return PG_ERR_IO;
        }
    }

    if (redis != NULL) {
        stream = (cfg->stream != NULL && cfg->stream[0] != '\0')
                     ? cfg->stream : PG_AUDIT_DEFAULT_STREAM;
        prefix = pg_redis_prefix(redis);
        plen = strlen(prefix);
        slen = strlen(stream);
        a->stream_key = malloc(plen + slen + 1);
        if (a->stream_key == NULL) {
            goto nomem;
        }
        memcpy(a->stream_key, prefix, plen);
        memcpy(a->stream_key + plen, stream, slen + 1);
        cap = cfg->stream_maxlen != 0 ? cfg->stream_maxlen
                                      : PG_AUDIT_DEFAULT_MAXLEN;
        snprintf(a->maxlen, sizeof(a->maxlen), "%u", cap);
    }
    *out = a;
    return PG_OK;

nomem:
    pg_audit_free(a);
    return PG_ERR_NOMEM;
}

/*
 * Reopen the audit file (after log rotation moved it away). The new file
 * is opened before the old descriptor is closed, so on failure the old one
 * stays in use and PG_ERR_IO is returned. Without a file: PG_OK, no-op.
 */
pg_status_t
pg_audit_reopen(pg_audit_t *a, pg_err_t *err)
{
    int fd;

    if (a == NULL || a->file == NULL) {
        return PG_OK;
    }
    fd = audit_open_file(a->file);
    if (fd < 0) {
        pg_err_set(err, "audit: cannot reopen %s: %s", a->file,
                   strerror(errno));
        return PG_ERR_IO;
    }
    if (a->fd >= 0) {
        close(a->fd);
    }
    a->fd = fd;
    return PG_OK;
}

/* Unlink a pending XADD record from its emitter and free it. */
static void
xadd_release(pg_audit_xadd_t *x)
{
    pg_audit_t *a = x->a;

    if (x->prev != NULL) {
        x->prev->next = x->next;
    } else {
        a->pending = x->next;
    }
    if (x->next != NULL) {
        x->next->prev = x->prev;
    }
    a->npending--;
    free(x);
}

/*
 * Free the emitter: XADDs still waiting are cancelled (the events already
 * went out or not; nobody waits for them), the file is closed. NULL: no-op.
 */
void
pg_audit_free(pg_audit_t *a)
{
    if (a == NULL) {
        return;
    }
    while (a->pending != NULL) {
        pg_audit_xadd_t *x = a->pending;

        pg_redis_cancel(x->op);
        xadd_release(x);
    }
    if (a->fd >= 0) {
        close(a->fd);
    }
    free(a->instance);
    free(a->file);
    free(a->stream_key);
    free(a);
}

/* XADD reply: only failures matter (logged as a warning). */
static void
xadd_done(void *arg, pg_status_t st, const struct redisReply *reply)
{
    pg_audit_xadd_t *x = arg;
    pg_audit_t *a = x->a;

    if (st == PG_ERR_CANCELLED) {
        /* The Redis client is being freed; nothing to report. */
    } else if (st != PG_OK) {
        pg_log(a->host, PG_LOG_WARN, "audit: XADD to %s failed: %s",
               a->stream_key, pg_status_str(st));
    } else if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        pg_log(a->host, PG_LOG_WARN, "audit: XADD to %s failed: %.*s",
               a->stream_key, (int)(reply->len > 200 ? 200 : reply->len),
               reply->str != NULL ? reply->str : "");
    }
    xadd_release(x);
}

/* Current UTC time as RFC 3339 with milliseconds: 2024-01-02T03:04:05.678Z */
static void
audit_timestamp(char *out, size_t outsz)
{
    struct timespec ts;
    struct tm tm;
    char base[32];

    if (clock_gettime(CLOCK_REALTIME, &ts) != 0 ||
        gmtime_r(&ts.tv_sec, &tm) == NULL ||
        strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm) == 0) {
        snprintf(out, outsz, "1970-01-01T00:00:00.000Z");
        return;
    }
    snprintf(out, outsz, "%s.%03ldZ", base, (long)(ts.tv_nsec / 1000000L));
}

/* A header string, cut at PG_AUDIT_MAX_HDR bytes (on a byte boundary that
 * may split a UTF-8 sequence: jansson then rejects it, so back off to a
 * character start). NULL s gives JSON null. */
static json_t *
header_string(const char *s)
{
    json_t *v;
    size_t n;

    if (s == NULL) {
        return json_null();
    }
    n = strlen(s);
    if (n > PG_AUDIT_MAX_HDR) {
        n = PG_AUDIT_MAX_HDR;
        while (n > 0 && ((unsigned char)s[n] & 0xC0u) == 0x80u) {
            n--;
        }
    }
    v = json_stringn(s, n);
    return v != NULL ? v : json_string("(invalid utf-8)");
}

/* 1 when key is one of the fixed header members. */
static int
is_header_key(const char *key)
{
    size_t i;

    for (i = 0; header_keys[i] != NULL; i++) {
        if (strcmp(key, header_keys[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

/*
 * Serialize ev as one compact line. When it is longer than the line cap,
 * drop the largest non-header member, mark "truncated": true and retry.
 * Returns a malloc'd string (no newline) or NULL on OOM / impossible fit.
 */
static char *
serialize_capped(json_t *ev)
{
    const size_t flags = JSON_COMPACT | JSON_ENSURE_ASCII | JSON_PRESERVE_ORDER;
    char *s;

    for (;;) {
        const char *key, *big_key = NULL;
        json_t *val;
        size_t big = 0;

        s = json_dumps(ev, flags);
        if (s == NULL) {
            return NULL;
        }
        if (strlen(s) + 1 <= PG_AUDIT_MAX_LINE) {
            return s;
        }
        free(s);
        json_object_foreach(ev, key, val) {
            size_t sz;

            if (is_header_key(key)) {
                continue;
            }
            sz = json_dumpb(val, NULL, 0, flags | JSON_ENCODE_ANY) +
                 strlen(key);
            if (big_key == NULL || sz > big) {
                big_key = key;
                big = sz;
            }
        }
        if (big_key == NULL) {
            return NULL; /* cannot happen: headers are capped */
        }
        json_object_del(ev, big_key);
        if (json_object_set_new(ev, "truncated", json_true()) != 0) {
            return NULL;
        }
    }
}

/* Append one line to the audit file with a single write(2). */
static void
audit_write_file(pg_audit_t *a, const char *line, size_t len)
{
    ssize_t w;

    do {
        w = write(a->fd, line, len);
    } while (w < 0 && errno == EINTR);
    if (w < 0) {
        pg_log(a->host, PG_LOG_WARN, "audit: write to %s failed: %s", a->file,
               strerror(errno));
    } else if ((size_t)w != len) {
        pg_log(a->host, PG_LOG_WARN, "audit: short write to %s (%zd of %zu)",
               a->file, w, len);
    }
}

/* Queue XADD <key> MAXLEN ~ <cap> * event <json>; never waits. The
 * arguments are copied by pg_redis_command(), json stays the caller's. */
static void
audit_xadd(pg_audit_t *a, const char *json, size_t len)
{
    const char *argv[8];
    size_t argvlen[8];
    pg_audit_xadd_t *x;
    pg_status_t st;
    int i;

    if (a->npending >= PG_AUDIT_MAX_PENDING) {
        pg_log(a->host, PG_LOG_WARN,
               "audit: %u XADDs pending, event not sent to Redis",
               a->npending);
        return;
    }
    x = calloc(1, sizeof(*x));
    if (x == NULL) {
        pg_log(a->host, PG_LOG_WARN, "audit: out of memory for XADD");
        return;
    }
    x->a = a;
    argv[0] = "XADD";
    argv[1] = a->stream_key;
    argv[2] = "MAXLEN";
    argv[3] = "~";
    argv[4] = a->maxlen;
    argv[5] = "*";
    argv[6] = "event";
    for (i = 0; i < 7; i++) {
        argvlen[i] = strlen(argv[i]);
    }
    argv[7] = json;
    argvlen[7] = len;
    st = pg_redis_command(a->redis, 8, argv, argvlen, 0, xadd_done, x,
                          &x->op);
    if (st != PG_OK) {
        pg_log(a->host, PG_LOG_WARN, "audit: XADD to %s not sent: %s",
               a->stream_key, pg_status_str(st));
        free(x);
        return;
    }
    x->next = a->pending;
    if (a->pending != NULL) {
        a->pending->prev = x;
    }
    a->pending = x;
    a->npending++;
}

/*
 * Emit one event (see audit.h). fields is stolen (may be NULL); its
 * secret-looking members are removed at any depth and its members follow
 * the header members; a field named like a header member is dropped.
 * id_out (may be NULL) always receives the event id, even when writing
 * failed. Failures are logged as warnings; nothing is returned.
 */
void
pg_audit_emit(pg_audit_t *a, const char *type, const char *outcome,
              const char *reason, json_t *fields, char id_out[PG_AUDIT_ID_LEN])
{
    char id[PG_AUDIT_ID_LEN];
    char ts[64];
    json_t *ev = NULL;
    const char *key;
    json_t *val;
    char *line = NULL;
    size_t len;

    if (pg_random_token(PG_AUDIT_ID_BYTES, id, sizeof(id)) != PG_OK) {
        memset(id, '0', PG_AUDIT_ID_LEN - 1);
        id[PG_AUDIT_ID_LEN - 1] = '\0';
    }
    if (id_out != NULL) {
        memcpy(id_out, id, PG_AUDIT_ID_LEN);
    }
    if (a == NULL) {
        json_decref(fields);
        return;
    }
    audit_timestamp(ts, sizeof(ts));

    ev = json_object();
    if (ev == NULL ||
        json_object_set_new(ev, "ts", json_string(ts)) != 0 ||
        json_object_set_new(ev, "id", json_string(id)) != 0 ||
        json_object_set_new(ev, "instance", header_string(a->instance)) != 0 ||
        json_object_set_new(ev, "type", header_string(type)) != 0 ||
        json_object_set_new(ev, "outcome", header_string(outcome)) != 0 ||
        json_object_set_new(ev, "reason", header_string(reason)) != 0) {
        goto fail;
    }
    if (json_is_object(fields)) {
        pg_audit_scrub(fields);
        json_object_foreach(fields, key, val) {
            if (is_header_key(key)) {
                continue;
            }
            if (json_object_set(ev, key, val) != 0) {
                goto fail;
            }
        }
    } else if (fields != NULL) {
        /* Not an object: keep it under "fields" after scrubbing. */
        pg_audit_scrub(fields);
        if (json_object_set(ev, "fields", fields) != 0) {
            goto fail;
        }
    }
    json_decref(fields);
    fields = NULL;

    line = serialize_capped(ev);
    if (line == NULL) {
        goto fail;
    }
    len = strlen(line);
    if (a->redis != NULL) {
        audit_xadd(a, line, len);
    }
    if (a->fd >= 0) {
        /* serialize_capped left room for the newline. */
        char *nl = realloc(line, len + 2);

        if (nl == NULL) {
            goto fail;
        }
        line = nl;
        line[len] = '\n';
        line[len + 1] = '\0';
        audit_write_file(a, line, len + 1);
    }
    free(line);
    json_decref(ev);
    return;

fail:
    pg_log(a->host, PG_LOG_WARN, "audit: cannot build event %s (%s)", id,
           type != NULL ? type : "?");
    free(line);
    json_decref(fields);
    json_decref(ev);
}
