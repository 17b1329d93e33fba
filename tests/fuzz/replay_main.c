/*
 * Plain driver for fuzz targets: replays files through
 * LLVMFuzzerTestOneInput so that corpora run under gcc + ASan/UBSan without
 * libFuzzer. Arguments are files or directories (every regular file in a
 * directory, in name order, not recursive); arguments starting with '-'
 * are libFuzzer flags and ignored, so one command line fits both. Exit status 0 when every input
 * ran; a crash aborts the process (the sanitizers report it). Inputs over
 * 16 MiB are refused as an error.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define REPLAY_MAX_INPUT (16u * 1024u * 1024u)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

/* Read path into a malloc'd buffer; 0 on success. */
static int
read_all(const char *path, uint8_t **out, size_t *outlen)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;

    if (f == NULL) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    for (;;) {
        size_t n;
        if (len == cap) {
            uint8_t *nb;
            cap = cap ? cap * 2 : 4096;
            if (cap > REPLAY_MAX_INPUT + 1) {
                cap = REPLAY_MAX_INPUT + 1;
            }
            if (len == cap) {
                fprintf(stderr, "replay: %s: input too large\n", path);
                free(buf);
                fclose(f);
                return -1;
            }
            nb = realloc(buf, cap);
            if (nb == NULL) {
                free(buf);
                fclose(f);
                return -1;
            }
            buf = nb;
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            break;
        }
    }
    if (ferror(f)) {
        fprintf(stderr, "replay: %s: read error\n", path);
        free(buf);
        fclose(f);
        return -1;
    }
    fclose(f);
    *out = buf;
    *outlen = len;
    return 0;
}

static int
run_file(const char *path, size_t *count)
{
    uint8_t *buf = NULL;
    size_t len = 0;

    if (read_all(path, &buf, &len) != 0) {
        return -1;
    }
    /* An exact-size copy, so ASan sees reads one past the end. */
    {
        uint8_t *exact = malloc(len ? len : 1);
        if (exact == NULL) {
            free(buf);
            return -1;
        }
        if (len > 0) {
            memcpy(exact, buf, len);
        }
        free(buf);
        LLVMFuzzerTestOneInput(exact, len);
        free(exact);
    }
    (*count)++;
    return 0;
}

static int
cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int
run_dir(const char *dir, size_t *count)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char **names = NULL;
    size_t n = 0, cap = 0, i;
    int rc = 0;

    if (d == NULL) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') {
            continue;
        }
        if (n == cap) {
            char **nn;
            cap = cap ? cap * 2 : 64;
            nn = realloc(names, cap * sizeof(*names));
            if (nn == NULL) {
                rc = -1;
                break;
            }
            names = nn;
        }
        names[n] = strdup(de->d_name);
        if (names[n] == NULL) {
            rc = -1;
            break;
        }
        n++;
    }
    closedir(d);
    if (n > 0) {
        qsort(names, n, sizeof(*names), cmp_names);
    }
    for (i = 0; i < n; i++) {
        char path[4096];
        struct stat st;
        int w = snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        if (rc == 0 && w > 0 && (size_t)w < sizeof(path) &&
            stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            if (run_file(path, count) != 0) {
                rc = -1;
            }
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

int
main(int argc, char **argv)
{
    size_t count = 0;
    int i, rc = 0;

    if (LLVMFuzzerInitialize != NULL) {
        LLVMFuzzerInitialize(&argc, &argv);
    }
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
        return 2;
    }
    for (i = 1; i < argc; i++) {
        struct stat st;
        if (argv[i][0] == '-') {
            continue;   /* libFuzzer-style flag (e.g. -runs=0): ignored */
        }
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            rc = 1;
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            if (run_dir(argv[i], &count) != 0) {
                rc = 1;
            }
        } else if (run_file(argv[i], &count) != 0) {
            rc = 1;
        }
    }
    printf("replayed %zu input(s)\n", count);
    return rc;
}
