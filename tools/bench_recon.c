/*
 * bench_recon: throughput of a no-op reconciliation compare (every account
 * in sync with its identity), in accounts per second.
 *
 *   bench_recon [N]      (default 100000 accounts and identities)
 *
 * Measures pg_recon_compare() only (the CPU part of a run): building the
 * inputs is not timed. Each account has 4 attributes and 2 groups; each
 * identity is linked by account id and has the same desired state, so the
 * result must be 0 findings (checked). Built by `make` (build/bench_recon)
 * and run by `make bench`; the whole run (identity scan, policy decisions,
 * the connector's list) is timed by tools/bench_recon_e2e.mjs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <jansson.h>
#include "provgate/recon.h"

static double
now_s(clockid_t clk)
{
    struct timespec ts;

    clock_gettime(clk, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

int
main(int argc, char **argv)
{
    unsigned long n = 100000, i;
    json_t *accts = json_array(), *ids = json_array(), *out = NULL;
    char key[32], id[32], mail[64];
    double t0, t1, c0, c1;
    char *end;

    if (argc > 1) {
        n = strtoul(argv[1], &end, 10);
        if (*end != '\0' || n == 0 || n > 5000000) {
            fprintf(stderr, "usage: bench_recon [N in 1..5000000]\n");
            return 2;
        }
    }
    for (i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "user%07lu", i);
        snprintf(id, sizeof(id), "%lu", i + 1);
        snprintf(mail, sizeof(mail), "user%07lu@example.com", i);
        json_array_append_new(accts, json_pack(
            "{s:s, s:s, s:{s:s, s:s, s:s, s:[s]}, s:[s, s], s:b}", "key", key,
            "id", id, "attrs", "email", mail, "display_name", key,
            "department", "eng", "multi", "a", "groups", "staff",
            "eng-tools", "active", 1));
        json_array_append_new(ids, json_pack(
            "{s:s, s:s, s:s, s:[s, s], s:{s:{s:s, s:s, s:s, s:[s]}, "
            "s:[s, s]}}", "iid", id, "acct", id, "key", key, "ents", "staff",
            "eng-tools", "desired", "attrs", "email", mail, "display_name",
            key, "department", "eng", "multi", "a", "groups", "staff",
            "eng-tools"));
    }
    t0 = now_s(CLOCK_MONOTONIC);
    c0 = now_s(CLOCK_PROCESS_CPUTIME_ID);
    if (pg_recon_compare(accts, ids, 1, &out) != PG_OK) {
        fprintf(stderr, "compare failed\n");
        return 1;
    }
    t1 = now_s(CLOCK_MONOTONIC);
    c1 = now_s(CLOCK_PROCESS_CPUTIME_ID);
    if (json_array_size(out) != 0) {
        fprintf(stderr, "expected no findings, got %zu\n",
                json_array_size(out));
        return 1;
    }
    printf("no-op reconciliation compare: %lu accounts in %.3f s wall "
           "(%.0f accounts/s), %.3f s CPU (%.0f accounts/s per core)\n", n,
           t1 - t0, (double) n / (t1 - t0), c1 - c0,
           (double) n / (c1 - c0));
    json_decref(out);
    json_decref(accts);
    json_decref(ids);
    return 0;
}
