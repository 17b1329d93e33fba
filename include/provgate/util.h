/*
 * provgate core: small, bounded utilities shared by every concern.
 */
#ifndef PROVGATE_UTIL_H
#define PROVGATE_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "provgate/status.h"

/* ---- errors with a message ------------------------------------------- */

#define PG_ERR_MSG_MAX 512
typedef struct pg_err {
    char msg[PG_ERR_MSG_MAX];
} pg_err_t;

/* Format into e->msg (truncated at PG_ERR_MSG_MAX). e may be NULL. */
void pg_err_set(pg_err_t *e, const char *fmt, ...) PG_PRINTF(2, 3);

/* ---- randomness and encodings ---------------------------------------- */

/* Fill buf with n bytes from the OS CSPRNG (getrandom). */
PG_MUST_USE pg_status_t pg_random(void *buf, size_t n);

/*
 * Random token: nbytes of randomness, base64url without padding, written
 * to out (NUL-terminated). outsz must be >= pg_b64url_len(nbytes) + 1.
 */
PG_MUST_USE pg_status_t pg_random_token(size_t nbytes, char *out, size_t outsz);

/* Length of the unpadded base64url encoding of n bytes. */
size_t pg_b64url_len(size_t n);

/* Encode n bytes; out gets a NUL-terminated string. PG_ERR_TOO_LARGE if
 * outsz is short. */
PG_MUST_USE pg_status_t pg_b64url_encode(const void *in, size_t n, char *out,
                                         size_t outsz);

/* Decode unpadded (or padded) base64url; rejects any other character.
 * *outlen receives the byte count. PG_ERR_TOO_LARGE if outsz is short. */
PG_MUST_USE pg_status_t pg_b64url_decode(const char *in, size_t n, void *out,
                                         size_t outsz, size_t *outlen);

/* SHA-256 of data, base64url-encoded (43 chars + NUL; outsz >= 44).
 * Used for PKCE S256 challenges and for hashing secrets into keys. */
PG_MUST_USE pg_status_t pg_sha256_b64url(const void *data, size_t n,
                                         char *out, size_t outsz);

/* Constant-time comparison; 1 when equal (lengths must match too). */
int pg_ct_equal(const void *a, size_t alen, const void *b, size_t blen);

/* ---- sealed values (cookies) ----------------------------------------- */

#define PG_SEAL_KEY_LEN 32
#define PG_SEAL_MAX_PLAINTEXT 2048

/*
 * AES-256-GCM seal: out = "v1." + base64url(nonce(12) | ciphertext | tag(16)).
 * aad binds the value to a purpose (e.g. the cookie name), never secret.
 * plaintext is capped at PG_SEAL_MAX_PLAINTEXT.
 */
PG_MUST_USE pg_status_t pg_seal(const uint8_t key[PG_SEAL_KEY_LEN],
                                const char *aad, const void *pt, size_t ptlen,
                                char *out, size_t outsz);

/* Reverse of pg_seal. Any tampering, wrong key, wrong aad or bad shape is
 * PG_ERR_CRYPTO / PG_ERR_INVALID; out is then untouched garbage. */
PG_MUST_USE pg_status_t pg_unseal(const uint8_t key[PG_SEAL_KEY_LEN],
                                  const char *aad, const char *in, size_t inlen,
                                  void *out, size_t outsz, size_t *outlen);

/* ---- web input checks ------------------------------------------------ */

/*
 * 1 when s is a safe same-origin return path: starts with a single '/',
 * not "//" or "/\", no backslash anywhere, no scheme, no CR/LF/NUL or other
 * control bytes, at most 2048 bytes. Everything else is 0.
 */
int pg_return_path_ok(const char *s, size_t n);

/*
 * The path of an absolute URL ("scheme://authority/path?query#frag"): a
 * pointer into url at the path's first byte and its length in *len, which
 * stops before '?' or '#'. A URL without a path gives "/" (length 1). url
 * is borrowed and must be NUL-terminated; never NULL is returned.
 */
const char *pg_url_path(const char *url, size_t *len);

/*
 * Copy a value for an HTTP header, dropping every byte < 0x20 and 0x7f
 * (CR, LF, NUL, ...). Output is NUL-terminated and truncated to outsz-1.
 * Returns the output length.
 */
size_t pg_header_value_clean(const char *in, size_t n, char *out, size_t outsz);

/*
 * Compare header names the way provgate strips spoofed identity headers:
 * ASCII case-insensitive, and '_' equals '-'. 1 when they match.
 */
int pg_header_name_eq(const char *a, size_t alen, const char *b, size_t blen);

/* Parse a decimal unsigned integer with full-string and overflow checks. */
PG_MUST_USE pg_status_t pg_parse_u64(const char *s, size_t n, uint64_t *out);

/* URL-encode (RFC 3986 unreserved kept) into a malloc'd string; NULL on OOM. */
char *pg_urlencode(const char *s, size_t n);

/* Decode %XX and '+' (form/query) into a malloc'd NUL-terminated string;
 * NULL on malformed input or OOM. Caps input at 8 KiB. */
char *pg_urldecode(const char *s, size_t n);

/* Find key=value in a query string or form body (&-separated). Returns a
 * malloc'd decoded value or NULL when absent or malformed. */
char *pg_query_param(const char *query, size_t n, const char *key);

/* uri[0..n) ("path?query") without every parameter named key, malloc'd;
 * *removed (may be NULL) counts the parameters removed. Empty segments and
 * an empty '?' are dropped. NULL on OOM or input over 8 KiB. */
char *pg_query_strip_param(const char *uri, size_t n, const char *key,
                           size_t *removed);

/* ---- templates ------------------------------------------------------- */

/*
 * Render "${attr}" placeholders against a JSON object of attributes.
 * "$$" is a literal '$'. A string value is inserted as is, numbers and
 * booleans as their JSON text; a missing attribute or a non-scalar value
 * gives PG_ERR_NOT_FOUND with the attribute name in err. Output is a
 * malloc'd string capped at 4 KiB (PG_ERR_TOO_LARGE beyond).
 */
PG_MUST_USE pg_status_t pg_template_render(const char *tpl, const json_t *attrs,
                                           char **out, pg_err_t *err);

/* Validate template syntax only (for config load). */
PG_MUST_USE pg_status_t pg_template_check(const char *tpl, pg_err_t *err);

/*
 * A non-negative decimal integer stored as a string member of fields (a
 * Redis hash read into a JSON object): fields[name], or with target
 * fields["<name>:<target>"] (name + target under 320 bytes). -1 when
 * absent, not a string of digits, or out of range.
 */
int64_t pg_field_int(const json_t *fields, const char *name,
                     const char *target);

/* ---- files ----------------------------------------------------------- */

/* Read a whole small file (cap bytes max) into a malloc'd NUL-terminated
 * buffer. Trailing CR/LF are trimmed when trim is set. */
PG_MUST_USE pg_status_t pg_read_file(const char *path, size_t cap, int trim,
                                     char **out, size_t *outlen, pg_err_t *err);

#endif
