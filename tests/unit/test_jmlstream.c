/*
 * Unit tests: a Redis Stream entry into a JML event
 * (pg_jmlstream_parse_entry, src/sidecar/jmlstream.c). The replies are
 * built by hand in the shape hiredis gives for XREADGROUP/XAUTOCLAIM:
 * [id, [field, value, ...]].
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>
#include "provgate/jmlstream.h"

/* A hand-built entry: storage for up to 4 fields/values. */
typedef struct fake_entry {
    redisReply top, id, fields, fv[4];
    redisReply *top_el[2], *fv_el[4];
} fake_entry_t;

/* Set r to a string reply over s (n bytes; s must outlive r). */
static void
str_reply(redisReply *r, const char *s, size_t n)
{
    memset(r, 0, sizeof(*r));
    r->type = REDIS_REPLY_STRING;
    r->str = (char *) s;
    r->len = n;
}

/* Build [id, [kv[0], kv[1], ...]] with nkv strings (nkv < 0: nil fields). */
static const redisReply *
entry(fake_entry_t *e, const char *id, const char *const *kv, int nkv)
{
    int i;

    memset(e, 0, sizeof(*e));
    str_reply(&e->id, id, strlen(id));
    e->top.type = REDIS_REPLY_ARRAY;
    e->top.elements = 2;
    e->top.element = e->top_el;
    e->top_el[0] = &e->id;
    e->top_el[1] = &e->fields;
    if (nkv < 0) {
        e->fields.type = REDIS_REPLY_NIL;
        return &e->top;
    }
    e->fields.type = REDIS_REPLY_ARRAY;
    e->fields.elements = (size_t) nkv;
    e->fields.element = e->fv_el;
    for (i = 0; i < nkv && i < 4; i++) {
        str_reply(&e->fv[i], kv[i], strlen(kv[i]));
        e->fv_el[i] = &e->fv[i];
    }
    return &e->top;
}

/* Expect PG_ERR_INVALID with a reason starting with want; id as given. */
static void
expect_bad(const redisReply *r, size_t max, const char *want_id,
           const char *want)
{
    char id[64];
    json_t *ev = (json_t *) 1;
    pg_err_t err = { "" };

    assert_int_equal(pg_jmlstream_parse_entry(r, max, id, sizeof(id), &ev,
                                              &err), PG_ERR_INVALID);
    assert_null(ev);
    assert_string_equal(id, want_id);
    if (strncmp(err.msg, want, strlen(want)) != 0) {
        fail_msg("want prefix: %s\ngot:         %s", want, err.msg);
    }
}

/* A valid entry: the id and the event object come out. */
static void
test_valid_entry(void **state)
{
    static const char *const kv[] = {
        "event", "{\"id\":\"e-1\",\"type\":\"join\",\"key\":\"42\","
                 "\"attributes\":{\"email\":\"a@example.com\"}}"
    };
    fake_entry_t e;
    char id[64];
    json_t *ev = NULL;
    pg_err_t err = { "" };

    (void) state;
    assert_int_equal(pg_jmlstream_parse_entry(entry(&e, "1700000000000-3",
                                                    kv, 2),
                                              65536, id, sizeof(id), &ev,
                                              &err), PG_OK);
    assert_string_equal(id, "1700000000000-3");
    assert_non_null(ev);
    assert_string_equal(json_string_value(json_object_get(ev, "type")),
                        "join");
    assert_string_equal(json_string_value(json_object_get(ev, "id")), "e-1");
    json_decref(ev);
}

/* Malformed entries: a reason, never the payload; the id when readable. */
static void
test_malformed_entries(void **state)
{
    static const char *const notjson[] = {"event", "{\"id\": secret-token"};
    static const char *const array[] = {"event", "[1,2]"};
    static const char *const dup[] = {"event", "{\"id\":\"a\",\"id\":\"b\"}"};
    static const char *const other[] = {"payload", "{}"};
    static const char *const extra[] = {"event", "{}", "trace", "x"};
    static const char *const big[] = {"event", "{\"id\":\"0123456789\"}"};
    fake_entry_t e;
    char id[64];
    json_t *ev = NULL;
    pg_err_t err = { "" };

    (void) state;
    expect_bad(entry(&e, "1-1", notjson, 2), 65536, "1-1",
               "event: not JSON (line 1, column");
    assert_int_equal(pg_jmlstream_parse_entry(entry(&e, "1-1", notjson, 2),
                                              65536, id, sizeof(id), &ev,
                                              &err), PG_ERR_INVALID);
    assert_null(strstr(err.msg, "secret"));
    expect_bad(entry(&e, "1-2", array, 2), 65536, "1-2",
               "event: must be a JSON object");
    expect_bad(entry(&e, "1-3", dup, 2), 65536, "1-3", "event: not JSON");
    expect_bad(entry(&e, "1-4", other, 2), 65536, "1-4",
               "entry: must have exactly one field, \"event\"");
    expect_bad(entry(&e, "1-5", extra, 4), 65536, "1-5",
               "entry: must have exactly one field, \"event\"");
    expect_bad(entry(&e, "1-6", NULL, 0), 65536, "1-6",
               "entry: must have exactly one field, \"event\"");
    expect_bad(entry(&e, "1-7", big, 2), 10, "1-7",
               "event: larger than 10 bytes");
    /* exactly at the cap is fine */
    assert_int_equal(pg_jmlstream_parse_entry(entry(&e, "1-8", big, 2),
                                              strlen(big[1]), id, sizeof(id),
                                              &ev, &err), PG_OK);
    json_decref(ev);
    expect_bad(entry(&e, "1-9", NULL, -1), 65536, "1-9",
               "entry: deleted before it was read");
    /* no usable id: nothing can be acknowledged */
    expect_bad(entry(&e, "x-1", big, 2), 65536, "", "entry: unexpected");
    expect_bad(entry(&e, "11", big, 2), 65536, "", "entry: unexpected");
    expect_bad(NULL, 65536, "", "entry: unexpected");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_entry),
        cmocka_unit_test(test_malformed_entries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
