/*
 * Fuzz target: the HR export parser and the change detection of
 * include/provgate/hrfeed.h.
 *
 * Input: one flag byte, then two CSV exports separated by the first 0xFF
 * byte (the second is optional). Flag bits: 0 delimiter ';' (else ','),
 * 1 no header (fixed column list), 2 quote '\'' (else '"'), 3 force,
 * 4 strict limits (max_malformed_pct 5, max_leave_pct 10, 3 errors).
 * The first export is imported into an empty snapshot, the second is
 * diffed against that. Properties (abort on violation):
 *  - every record is either accepted or counted bad: nrows + nbad ==
 *    nrecords; nerrors <= min(nbad, cap) and errors are sorted by line;
 *  - rows are sorted by key with no duplicate; held keys are sorted;
 *  - every previous person is exactly one of leave / move / unchanged /
 *    held; every row is exactly one of join / move / unchanged /
 *    terminated leave / terminated_absent; the next snapshot has
 *    joins + moves + unchanged + held people and loads back;
 *  - a refused diff happens only without force;
 *  - the same inputs give the same next snapshot twice.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "provgate/hrfeed.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static pg_hrfeed_cfg_t *
make_cfg(unsigned flags)
{
    json_t *j = json_pack("{s:s,s:{s:s,s:s,s:s},s:s,s:[s],s:i,s:i,s:i,s:i}",
                          "key_column", "id",
                          "attributes", "id", "employee_id", "name", "name",
                          "dept", "department",
                          "termination_column", "end",
                          "required_columns", "name",
                          "max_malformed_pct", (flags & 16) ? 5 : 100,
                          "max_leave_pct", (flags & 16) ? 10 : 100,
                          "max_errors_reported", (flags & 16) ? 3 : 100,
                          "max_file_bytes", 1 << 20);
    pg_hrfeed_cfg_t *cfg = NULL;
    pg_err_t err;

    if (j == NULL) {
        abort();
    }
    json_object_set_new(j, "delimiter", json_string((flags & 1) ? ";" : ","));
    json_object_set_new(j, "quote", json_string((flags & 4) ? "'" : "\""));
    if (flags & 2) {
        json_object_set_new(j, "header", json_false());
        json_object_set_new(j, "columns",
                            json_pack("[s,s,s,s]", "id", "name", "dept",
                                      "end"));
    }
    if (pg_hrfeed_cfg_parse(j, "$.fuzz", &cfg, &err) != PG_OK) {
        abort();
    }
    json_decref(j);
    return cfg;
}

static void
check_parsed(const pg_hrfeed_cfg_t *cfg, const pg_hrfeed_parsed_t *p)
{
    size_t i;

    if (p->nrows + p->nbad != p->nrecords || p->nerrors > p->nbad ||
        p->nerrors > cfg->max_errors_reported) {
        abort();
    }
    for (i = 1; i < p->nerrors; i++) {
        if (p->errors[i - 1].line > p->errors[i].line) {
            abort();
        }
    }
    for (i = 0; i < p->nerrors; i++) {
        if (p->errors[i].line == 0 ||
            memchr(p->errors[i].reason, '\0', PG_HRFEED_REASON_MAX) == NULL) {
            abort();
        }
    }
    for (i = 1; i < p->nrows; i++) {
        if (strcmp(p->rows[i - 1].key, p->rows[i].key) >= 0) {
            abort();
        }
    }
    for (i = 1; i < p->nheld; i++) {
        if (strcmp(p->held[i - 1], p->held[i]) >= 0) {
            abort();
        }
    }
}

static void
check_diff(const pg_hrfeed_parsed_t *p, const json_t *prev,
           const pg_hrfeed_diff_t *d)
{
    size_t i, term_leaves = 0, np = prev ? json_object_size(prev) : 0;
    json_t *back = NULL;
    char *s;
    pg_err_t err;

    for (i = 0; i < d->nleaves; i++) {
        term_leaves += d->leaves[i].reason == PG_HRFEED_LEAVE_TERMINATED;
        if (i > 0 && strcmp(d->leaves[i - 1].key, d->leaves[i].key) >= 0) {
            abort();
        }
    }
    for (i = 0; i < d->nmoves; i++) {
        if (d->moves[i].nchanges == 0) {
            abort();
        }
    }
    if (d->nleaves + d->nmoves + d->unchanged + d->held != np ||
        d->njoins + d->nmoves + d->unchanged + term_leaves +
                d->terminated_absent != p->nrows ||
        json_object_size(d->next) !=
            d->njoins + d->nmoves + d->unchanged + d->held) {
        abort();
    }
    s = json_dumps(d->next, JSON_COMPACT);
    if (s == NULL ||
        pg_hrfeed_snapshot_parse(s, strlen(s), 1u << 24, &back, &err) !=
            PG_OK ||
        !json_equal(back, d->next)) {
        abort();
    }
    free(s);
    json_decref(back);
}

/* Parse and diff one export; returns the next snapshot (new reference)
 * or NULL when refused or rejected. */
static json_t *
run(const pg_hrfeed_cfg_t *cfg, const char *buf, size_t len,
    const json_t *prev, int force)
{
    pg_hrfeed_parsed_t *p = NULL;
    pg_hrfeed_diff_t *d = NULL, *d2 = NULL;
    pg_err_t err;
    pg_status_t st;
    json_t *next = NULL;

    st = pg_hrfeed_parse(cfg, buf, len, &p, &err);
    if (st != PG_OK && st != PG_ERR_DENIED) {
        if (p != NULL) {
            abort();
        }
        return NULL;
    }
    if (p == NULL || (st == PG_ERR_DENIED) != (p->refused == 1)) {
        abort();
    }
    check_parsed(cfg, p);
    st = pg_hrfeed_diff(cfg, prev, p, "2026-11-27", force, &d, &err);
    if (p->refused) {
        if (st != PG_ERR_DENIED || d != NULL) {
            abort();
        }
        pg_hrfeed_parsed_free(p);
        return NULL;
    }
    if (st != PG_OK && st != PG_ERR_DENIED) {
        abort();
    }
    if (d == NULL || (st == PG_ERR_DENIED && (force || !d->refused))) {
        abort();
    }
    check_diff(p, prev, d);
    if (pg_hrfeed_diff(cfg, prev, p, "2026-11-27", force, &d2, &err) != st ||
        !json_equal(d->next, d2->next) || d->nleaves != d2->nleaves) {
        abort();
    }
    if (st == PG_OK) {
        next = json_incref(d->next);
    }
    pg_hrfeed_diff_free(d);
    pg_hrfeed_diff_free(d2);
    pg_hrfeed_parsed_free(p);
    return next;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pg_hrfeed_cfg_t *cfg;
    const char *a, *sep;
    size_t alen;
    json_t *prev;

    if (size < 1 || size > (1u << 20)) {
        return 0;
    }
    cfg = make_cfg(data[0]);
    a = (const char *)data + 1;
    alen = size - 1;
    sep = memchr(a, 0xff, alen);
    prev = run(cfg, a, sep ? (size_t)(sep - a) : alen, NULL, 1);
    if (sep != NULL && prev != NULL) {
        json_t *n = run(cfg, sep + 1, alen - (size_t)(sep - a) - 1, prev,
                        (data[0] & 8) != 0);
        json_decref(n);
    }
    json_decref(prev);
    pg_hrfeed_cfg_free(cfg);
    return 0;
}
