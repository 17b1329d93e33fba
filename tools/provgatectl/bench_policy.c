/*
 * bench_policy: policy evaluation at scale (issue 4: 10,000 rules and
 * 1,000 roles; target <= 10 us per decision).
 *
 * It writes a synthetic policy file to a private temp dir, loads it, and
 * times two paths over a rotating set of identities:
 *   fast   pg_policy_decide_fast(): no JSON, no explanation, caller buffers
 *   full   pg_policy_decide_at(): JSON decision with the explanation of
 *          every one of the 10,000 rules
 * Times are process CPU time (stable on a shared machine).
 * Allocations are counted by interposing malloc/calloc/realloc/free (every
 * allocation of the process, including jansson's and the C library's).
 *
 * usage: bench_policy [FAST_ITERATIONS [FULL_ITERATIONS [light]]]
 * "light" identities have no role (no matching title, no "roles"
 * attribute) and no approval group: birthright and SoD rules only.
 * Build: see docs/policies.md ("Benchmark").
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "provgate/policy.h"

/* ---- allocation counter (glibc's allocator underneath) --------------- */

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t m);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);

static unsigned long long g_allocs;

void *malloc(size_t n);
void *calloc(size_t n, size_t m);
void *realloc(void *p, size_t n);
void free(void *p);

void *
malloc(size_t n)
{
    g_allocs++;
    return __libc_malloc(n);
}

void *
calloc(size_t n, size_t m)
{
    g_allocs++;
    return __libc_calloc(n, m);
}

void *
realloc(void *p, size_t n)
{
    g_allocs++;
    return __libc_realloc(p, n);
}

void
free(void *p)
{
    __libc_free(p);
}

/* ---- generation ------------------------------------------------------ */

#define NPOL 10000
#define NROLES 1000
#define NTARGETS 20
#define NIDENT 64

static double
now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);   /* CPU time: the machine is shared */
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * The synthetic set: 500 technical roles (chains of 10 includes), 500
 * business roles (hierarchies of 5, each with 2 technical roles);
 * 10,000 policies: 7,300 birthright (department eq + grade ge), 1,500
 * role (title in), 800 approval (group, manager approver), 100 role SoD
 * and 200 entitlement SoD (prevent/detect, who absent = everyone), and
 * 100 birthright without an equality key (80 prefix + gt, found through
 * the prefix index since the index learnt prefixes; 20 regex, evaluated
 * for everyone, behind the literal prefilter and the per-decision memo).
 */
static void
gen(FILE *f)
{
    int i;

    fputs("{\"roles\": [\n", f);
    for (i = 0; i < 500; i++) {
        fprintf(f, "{\"id\": \"T-%d\", \"type\": \"technical\", ", i);
        if (i % 10 != 9) {
            fprintf(f, "\"includes\": [\"T-%d\"], ", i + 1);
        }
        fprintf(f, "\"grants\": [{\"target\": \"app-%d\", \"entitlements\": "
                "[{\"type\": \"group\", \"value\": \"t-%d\"}]}]},\n",
                i % NTARGETS, i);
    }
    for (i = 0; i < 500; i++) {
        fprintf(f, "{\"id\": \"B-%d\", \"type\": \"business\", \"includes\": "
                "[\"T-%d\", \"T-%d\"%s", i, i, (i * 7) % 500,
                i % 5 != 4 ? ", " : "");
        if (i % 5 != 4) {
            fprintf(f, "\"B-%d\"", i + 1);
        }
        fprintf(f, "]}%s\n", i == 499 ? "" : ",");
    }
    fputs("],\n\"policies\": [\n", f);
    for (i = 0; i < NPOL; i++) {
        const char *sep = i == NPOL - 1 ? "" : ",";
        if (i < 7300) {
            fprintf(f, "{\"id\": \"br-%d\", \"kind\": \"birthright\", \"who\": "
                    "{\"all\": [{\"attr\": \"department\", \"eq\": "
                    "\"dept-%d\"}, {\"attr\": \"grade\", \"ge\": %d}]}, "
                    "\"grants\": [{\"target\": \"app-%d\", \"entitlements\": "
                    "[{\"type\": \"group\", \"value\": \"g-%d\"}]}]}%s\n", i,
                    i % 400, i % 8, i % NTARGETS, i, sep);
        } else if (i < 8800) {
            fprintf(f, "{\"id\": \"rl-%d\", \"kind\": \"role\", \"who\": "
                    "{\"attr\": \"title\", \"in\": [\"title-%d\", "
                    "\"title-%d\"]}, \"roles\": [\"B-%d\"]}%s\n", i, i % 300,
                    (i + 7) % 300, i % 500, sep);
        } else if (i < 9600) {
            fprintf(f, "{\"id\": \"ap-%d\", \"kind\": \"approval\", \"who\": "
                    "{\"group\": \"grp-%d\"}, \"grants\": [{\"target\": "
                    "\"app-%d\", \"entitlements\": [{\"type\": \"group\", "
                    "\"value\": \"appr-%d\"}]}], \"approvers\": "
                    "{\"manager_attr\": \"manager\"}}%s\n", i, i % 200,
                    i % NTARGETS, i, sep);
        } else if (i < 9700) {
            fprintf(f, "{\"id\": \"sr-%d\", \"kind\": \"sod\", \"conflict\": "
                    "[{\"role\": \"B-%d\"}, {\"role\": \"T-%d\"}], "
                    "\"action\": \"%s\"}%s\n", i, i % 500, (i * 3) % 500,
                    i % 2 ? "prevent" : "detect", sep);
        } else if (i < 9900) {
            fprintf(f, "{\"id\": \"se-%d\", \"kind\": \"sod\", \"conflict\": "
                    "[{\"target\": \"app-%d\", \"type\": \"group\", "
                    "\"value\": \"g-%d\"}, {\"target\": \"app-%d\", \"type\": "
                    "\"group\", \"value\": \"t-%d\"}], \"action\": \"%s\"}%s\n",
                    i, i % NTARGETS, i % 7300, (i % 500) % NTARGETS, i % 500,
                    i % 2 ? "prevent" : "detect", sep);
        } else if (i < 9980) {
            fprintf(f, "{\"id\": \"un-%d\", \"kind\": \"birthright\", \"who\": "
                    "{\"all\": [{\"attr\": \"cost_center\", \"prefix\": "
                    "\"cc-%d\"}, {\"attr\": \"grade\", \"gt\": 5}]}, "
                    "\"grants\": [{\"target\": \"app-%d\", \"entitlements\": "
                    "[{\"type\": \"group\", \"value\": \"u-%d\"}]}]}%s\n", i,
                    i % 10, i % NTARGETS, i, sep);
        } else {
            fprintf(f, "{\"id\": \"rx-%d\", \"kind\": \"birthright\", \"who\": "
                    "{\"attr\": \"email\", \"regex\": \"^[a-z]+%d@corp\\\\.example$\"}, "
                    "\"grants\": [{\"target\": \"app-%d\"}]}%s\n", i, i % 10,
                    i % NTARGETS, sep);
        }
    }
    fputs("]}\n", f);
}


int
main(int argc, char **argv)
{
    char dir[] = "/tmp/pg_bench_policy.XXXXXX", path[128];
    char *files[2] = {path, NULL};
    long fast_n = argc > 1 ? strtol(argv[1], NULL, 10) : 200000;
    long full_n = argc > 2 ? strtol(argv[2], NULL, 10) : 100;
    int light = argc > 3 && strcmp(argv[3], "light") == 0;
    json_t *ids[NIDENT];
    char targets[NIDENT][16];
    pg_policy_set_t *ps = NULL;
    pg_policy_scratch_t *sc = NULL;
    pg_item_t items[256];
    pg_fast_decision_t fd;
    pg_decision_t d;
    pg_err_t err;
    unsigned long long a0, granted = 0;
    double t0, t1;
    long i;
    FILE *f;
    int r;

    if (fast_n <= 0 || full_n <= 0 || mkdtemp(dir) == NULL) {
        fprintf(stderr, "usage: bench_policy [FAST_N [FULL_N [light]]]\n");
        return 2;
    }
    r = snprintf(path, sizeof(path), "%s/bench.json", dir);
    (void)r;
    f = fopen(path, "w");
    if (f == NULL) {
        perror(path);
        return 1;
    }
    gen(f);
    fclose(f);
    t0 = now_s();
    if (pg_policy_load(files, NULL, &ps, &err) != PG_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    t1 = now_s();
    unlink(path);
    rmdir(dir);
    printf("policies %zu, roles %zu, load %.1f ms\n", pg_policy_count(ps),
           pg_policy_role_count(ps), (t1 - t0) * 1e3);
    for (i = 0; i < NIDENT; i++) {
        /* vary the identities: department, title, groups, roles */
        char dept[32], title[32], g1[32], g2[32], role[32];
        int k = (int)i * 37;
        ids[i] = json_pack("{s:s, s:i, s:s, s:[s, s], s:s, s:s, s:s, s:[s]}",
                           "department",
                           (snprintf(dept, sizeof(dept), "dept-%d", k % 400),
                            dept),
                           "grade", k % 10,
                           "title",
                           (snprintf(title, sizeof(title), "title-%d",
                                     k % 300), title),
                           "groups",
                           (snprintf(g1, sizeof(g1), "grp-%d", k % 200), g1),
                           (snprintf(g2, sizeof(g2), "grp-%d", (k + 1) % 200),
                            g2),
                           "manager", "boss", "cost_center", "cc-1",
                           "email", "user3@corp.example", "roles",
                           (snprintf(role, sizeof(role), "B-%d", k % 500),
                            role));
        r = snprintf(targets[i], sizeof(targets[i]), "app-%d",
                     (int)(i % NTARGETS));
        if (ids[i] == NULL) {
            return 1;
        }
        if (light) {
            json_object_del(ids[i], "roles");
            json_object_set_new(ids[i], "title", json_string("none"));
            json_object_set_new(ids[i], "groups", json_array());
        }
    }

    if (pg_policy_scratch_new(ps, &sc) != PG_OK) {
        return 1;
    }
    /* warm-up */
    for (i = 0; i < NIDENT; i++) {
        if (pg_policy_decide_fast(ps, sc, ids[i], targets[i], time(NULL),
                                  items, 256, &fd) != PG_OK) {
            fprintf(stderr, "fast decision failed\n");
            return 1;
        }
    }
    a0 = g_allocs;
    t0 = now_s();
    for (i = 0; i < fast_n; i++) {
        if (pg_policy_decide_fast(ps, sc, ids[i % NIDENT],
                                  targets[i % NIDENT], 1795000000, items, 256,
                                  &fd) != PG_OK) {
            fprintf(stderr, "fast decision failed\n");
            return 1;
        }
        granted += fd.nitems;
    }
    t1 = now_s();
    printf("fast: %ld decisions, %.0f decisions/s, %.2f us/decision, "
           "%.3f allocations/decision, %.1f items/decision\n", fast_n,
           (double)fast_n / (t1 - t0), (t1 - t0) * 1e6 / (double)fast_n,
           (double)(g_allocs - a0) / (double)fast_n,
           (double)granted / (double)fast_n);
    {
        /* what the synthetic identities hold, across every target */
        double items_all = 0, roles_held = 0;
        for (i = 0; i < NIDENT; i++) {
            if (pg_policy_decide_at(ps, ids[i], NULL, 1795000000, &d) !=
                PG_OK) {
                return 1;
            }
            items_all += (double)json_array_size(d.entitlements) +
                         (double)json_array_size(d.pending_approval) +
                         (double)json_array_size(d.denied);
            roles_held += (double)json_array_size(d.roles);
            pg_decision_clear(&d);
        }
        printf("per identity: %.1f items across all targets, %.1f roles "
               "effective or denied\n", items_all / NIDENT,
               roles_held / NIDENT);
    }
    a0 = g_allocs;
    t0 = now_s();
    for (i = 0; i < full_n; i++) {
        if (pg_policy_decide_at(ps, ids[i % NIDENT], targets[i % NIDENT],
                                1795000000, &d) != PG_OK) {
            fprintf(stderr, "full decision failed\n");
            return 1;
        }
        pg_decision_clear(&d);
    }
    t1 = now_s();
    printf("full (JSON + explanation of every rule): %ld decisions, "
           "%.0f decisions/s, %.1f us/decision, %.0f allocations/decision\n",
           full_n, (double)full_n / (t1 - t0),
           (t1 - t0) * 1e6 / (double)full_n,
           (double)(g_allocs - a0) / (double)full_n);
    for (i = 0; i < NIDENT; i++) {
        json_decref(ids[i]);
    }
    pg_policy_scratch_free(sc);
    pg_policy_free(ps);
    return 0;
}
