/* provgate core: reading small configuration and secret files. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "provgate/util.h"

/*
 * Read the whole file at path into a malloc'd, NUL-terminated buffer.
 *
 * Contract:
 *  - Only regular files are read (a FIFO, device or directory is refused, so
 *    a misconfigured path can never block). The file is opened O_NONBLOCK
 *    for that reason and read with a bounded loop.
 *  - At most cap bytes are accepted: a larger file (by fstat size, or by
 *    what read() actually returns if it grew meanwhile) is PG_ERR_TOO_LARGE.
 *  - trim: trailing '\r' and '\n' bytes are removed (for secret files
 *    written by `echo`). The returned length excludes them.
 *  - On success *out is owned by the caller (free()); *outlen (may be NULL)
 *    gets the byte count, which may include embedded NUL bytes.
 *  - On failure *out is NULL and err gets "cannot read \"<path>\": <why>"
 *    or "\"<path>\" is larger than <cap> bytes". Statuses: PG_ERR_IO,
 *    PG_ERR_TOO_LARGE, PG_ERR_INVALID (not a regular file / bad args),
 *    PG_ERR_NOMEM.
 *
 * This is a blocking read of a local file; it is meant for load time
 * (configuration, keys), never for request processing.
 */
pg_status_t
pg_read_file(const char *path, size_t cap, int trim, char **out,
             size_t *outlen, pg_err_t *err)
{
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    int fd;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    *out = NULL;
    if (outlen != NULL) {
        *outlen = 0;
    }
    if (path == NULL || *path == '\0') {
        pg_err_set(err, "cannot read file: empty path");
        return PG_ERR_INVALID;
    }
    if (cap == 0 || cap > 64u * 1024u * 1024u) {
        pg_err_set(err, "cannot read \"%s\": bad size cap", path);
        return PG_ERR_INVALID;
    }

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        pg_err_set(err, "cannot read \"%s\": %s", path, strerror(errno));
        return PG_ERR_IO;
    }
    if (fstat(fd, &st) != 0) {
        pg_err_set(err, "cannot read \"%s\": %s", path, strerror(errno));
        close(fd);
        return PG_ERR_IO;
    }
    if (!S_ISREG(st.st_mode)) {
        pg_err_set(err, "cannot read \"%s\": not a regular file", path);
        close(fd);
        return PG_ERR_INVALID;
    }
    if (st.st_size < 0 || (unsigned long long)st.st_size > cap) {
        pg_err_set(err, "\"%s\" is larger than %zu bytes", path, cap);
        close(fd);
        return PG_ERR_TOO_LARGE;
    }

    /* One spare byte to detect growth past cap, one for the NUL. */
    buf = malloc(cap + 2);
    if (buf == NULL) {
        close(fd);
        return PG_ERR_NOMEM;
    }
    for (;;) {
        ssize_t n = read(fd, buf + len, cap + 1 - len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            pg_err_set(err, "cannot read \"%s\": %s", path, strerror(errno));
            free(buf);
            close(fd);
            return PG_ERR_IO;
        }
        if (n == 0) {
            break;
        }
        len += (size_t)n;
        if (len > cap) {
            pg_err_set(err, "\"%s\" is larger than %zu bytes", path, cap);
            free(buf);
            close(fd);
            return PG_ERR_TOO_LARGE;
        }
    }
    close(fd);

    if (trim) {
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) {
            len--;
        }
    }
    buf[len] = '\0';
    *out = buf;
    if (outlen != NULL) {
        *outlen = len;
    }
    return PG_OK;
}
