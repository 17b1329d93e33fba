/*
 * provgate core: move semantics (pg_policy_move, include/provgate/policy.h).
 *
 * A pure set difference over entitlement items keyed by (target, type,
 * value). Quadratic in the number of items, which are bounded by the
 * policy limits (a person holds tens, not thousands, of entitlements).
 */
#include <string.h>
#include "provgate/policy.h"

/* 1 when a and b name the same entitlement (see pg_policy_move). */
static int
same_item(const json_t *a, const json_t *b)
{
    const json_t *ta = json_object_get(a, "target");
    const json_t *tb = json_object_get(b, "target");

    if (!json_equal(json_object_get(a, "type"), json_object_get(b, "type")) ||
        !json_equal(json_object_get(a, "value"),
                    json_object_get(b, "value"))) {
        return 0;
    }
    if (json_is_string(ta) && json_is_string(tb)) {
        return json_equal(ta, tb);
    }
    return 1;
}

/* 1 when e has string "type" and "value". */
static int
well_formed(const json_t *e)
{
    return json_is_object(e) && json_is_string(json_object_get(e, "type")) &&
           json_is_string(json_object_get(e, "value"));
}

/* The index of the element of arr equal to e (same_item), or -1. */
static long
index_of(const json_t *arr, const json_t *e)
{
    size_t i;
    const json_t *x;

    json_array_foreach(arr, i, x) {
        if (well_formed(x) && same_item(x, e)) {
            return (long)i;
        }
    }
    return -1;
}

/* Append a deep copy of e to arr (at most once per equal item). */
static int
append_copy(json_t *arr, const json_t *e)
{
    if (index_of(arr, e) >= 0) {
        return 0;
    }
    return json_array_append_new(arr, json_deep_copy(e));
}

/* Compute {add, remove, keep}; see policy.h for the contract. */
pg_status_t
pg_policy_move(const json_t *prev, const json_t *next, pg_move_t *out)
{
    size_t i;
    const json_t *e;
    int bad = 0;

    if (out == NULL) {
        return PG_ERR_INVALID;
    }
    memset(out, 0, sizeof(*out));
    if (!json_is_array(prev) || !json_is_array(next)) {
        return PG_ERR_INVALID;
    }
    out->add = json_array();
    out->remove = json_array();
    out->keep = json_array();
    if (out->add == NULL || out->remove == NULL || out->keep == NULL) {
        pg_move_clear(out);
        return PG_ERR_NOMEM;
    }
    json_array_foreach(next, i, e) {
        if (!well_formed(e)) {
            continue;
        }
        bad |= append_copy(index_of(prev, e) >= 0 ? out->keep : out->add, e);
    }
    json_array_foreach(prev, i, e) {
        if (well_formed(e) && index_of(next, e) < 0) {
            bad |= append_copy(out->remove, e);
        }
    }
    if (bad) {
        pg_move_clear(out);
        return PG_ERR_NOMEM;
    }
    return PG_OK;
}

/* Release a move result; safe on a zeroed or cleared one. */
void
pg_move_clear(pg_move_t *m)
{
    if (m == NULL) {
        return;
    }
    json_decref(m->add);
    json_decref(m->remove);
    json_decref(m->keep);
    memset(m, 0, sizeof(*m));
}
