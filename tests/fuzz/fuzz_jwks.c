/*
 * Fuzz target: pg_jwks_parse. When a document parses, the key set is used
 * to validate a fixed ES256 token (signed by the key of fuzz_idtoken.c) and
 * freed. Properties (abort on violation): a parsed set has 1..64 keys; a
 * failed parse returns no set.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "provgate/oidc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* {"iss":"https://idp.example","sub":"u1","aud":"client-1","exp":1700000300,
 *  "iat":1699999990,"nonce":"nonce-1"} signed ES256, kid "fuzz-ec1". */
static const char fixed_token[] =
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImZ1enotZWMxIn0."
    "eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlIiwic3ViIjoidTEiLCJhdWQiOiJjbGllbnQt"
    "MSIsImV4cCI6MTcwMDAwMDMwMCwiaWF0IjoxNjk5OTk5OTkwLCJub25jZSI6Im5vbmNlLTEi"
    "fQ._2BfrlmPPbwfcaTS9B3ZjF5zjgbjSnwuG69xWLQAxVlHJO7-MCPqbgX7WxYAc8sKR-bwRR"
    "3bTcbwmEq4Zk32Sw";

static const char *const fuzz_algs[] = {"ES256", "ES384", "ES512", "RS256",
                                        "PS256", "EdDSA", NULL};

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pg_jwks_t *j = (pg_jwks_t *)&j;
    pg_err_t err;
    pg_status_t st;

    st = pg_jwks_parse((const char *)data, size, &j, &err);
    if (st != PG_OK) {
        if (j != NULL) {
            abort();
        }
        return 0;
    }
    if (j == NULL || pg_jwks_count(j) == 0 || pg_jwks_count(j) > 64) {
        abort();
    }
    {
        pg_idtoken_expect_t exp;
        json_t *claims = NULL;
        const char *reason = NULL;

        memset(&exp, 0, sizeof(exp));
        exp.issuer = "https://idp.example";
        exp.client_id = "client-1";
        exp.nonce = "nonce-1";
        exp.algs = fuzz_algs;
        exp.now = 1700000000;
        exp.clock_skew_s = 60;
        exp.max_age_s = 600;
        st = pg_idtoken_validate(fixed_token, strlen(fixed_token), j, &exp,
                                 &claims, &reason, &err);
        if (st == PG_OK) {
            json_decref(claims);
        } else if (claims != NULL) {
            abort();
        }
    }
    pg_jwks_free(j);
    return 0;
}
